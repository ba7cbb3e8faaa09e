//! Plans without a build: a rollback (switch services to kept releases),
//! an ordered restart, and start/stop/enable/disable. Same value, same
//! renderers, same executor as a deploy; the phase walk is the one
//! lifecycle planner's ([`super::lifecycle`]).

use std::collections::{BTreeMap, BTreeSet};

use super::deploy::graph::Graph;
use super::lifecycle::{
    Bounce, Lifecycle, Order, ProxyReload, Undeploy as LifeUndeploy, UnitFile, UnitWrite, Walk,
};
use super::{
    Action, ActionKind, Operation, Plan, RollbackKind, RollbackPlan, ServiceChange, ServicePlan,
    Step as ActionStep, Unbuilt, UnitChange, UnitSource,
};
use crate::config::{Config, Environment};
use crate::files::sha256_hex;
use crate::git::Rev;

/// One service to restart, optionally switched to a release first.
#[derive(Debug, Clone)]
pub(crate) struct Switch {
    pub(crate) service: String,
    /// Switch `current` to this release (a revision) before restarting.
    pub(crate) release: Option<String>,
    pub(crate) from_revision: Option<String>,
    pub(crate) reason: String,
    /// A saved unit file to put back first (the unit of the release being
    /// returned to, when the apply being undone changed it).
    pub(crate) unit_restore: Option<String>,
}

/// A service whose last apply was its first deploy, rolled back: there is
/// no release to go back to, so it goes back to nothing deployed, as the
/// automatic rollback of a first deploy does (`plan::undo`): stopped and
/// its `current` link removed, then the unit file that apply installed is
/// removed (or the one it replaced put back), then one daemon-reload.
#[derive(Debug, Clone)]
pub(crate) struct Undeploy {
    pub(crate) service: String,
    /// The release live now (the one the first deploy made live).
    pub(crate) from_revision: Option<String>,
    pub(crate) unit: UnitUndo,
}

/// What happens to the unit file of an [`Undeploy`]ed service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UnitUndo {
    /// The first deploy installed it where there was none: removed.
    Remove,
    /// The first deploy replaced this saved file: put back.
    Restore(String),
    /// moorline did not install it (an unmanaged unit): left alone.
    Keep,
}

pub(crate) struct ManualInputs<'a> {
    pub(crate) config: &'a Config,
    pub(crate) config_text: &'a str,
    pub(crate) env: &'a Environment,
    pub(crate) operation: Operation,
    pub(crate) steps: Vec<Switch>,
    pub(crate) from: Option<Rev>,
    pub(crate) to: Rev,
    pub(crate) state_sha256: Option<String>,
    /// Also restart each phase's infrastructure units, before its services.
    pub(crate) infrastructure: bool,
    /// Services taken back to nothing deployed (a rollback of their first
    /// deploy), before anything else.
    pub(crate) undeploy: Vec<Undeploy>,
}

/// Builds the plan: restart (and readiness) for every step, phase by phase
/// ([`Lifecycle`]): in start order for a restart, in reverse for a
/// rollback.
pub(crate) fn restarts(inp: ManualInputs<'_>) -> Plan {
    let config = inp.config;
    let env = inp.env;
    let index = |name: &str| config.services.iter().position(|c| c.name == name);
    let steps: BTreeMap<usize, &Switch> = inp
        .steps
        .iter()
        .filter_map(|s| index(&s.service).map(|i| (i, s)))
        .collect();
    let undeploy: BTreeMap<usize, &Undeploy> = inp
        .undeploy
        .iter()
        .filter_map(|u| index(&u.service).map(|i| (i, u)))
        .collect();
    let order = if inp.operation == Operation::Rollback {
        Order::Reverse
    } else {
        Order::Forward
    };
    let mut life = Lifecycle::new(config, order);
    life.infrastructure = inp.infrastructure;
    // First deploys undone: stopped first, so their unit's ExecStop runs
    // while the unit file is still there; the unit file goes after.
    for i in undeploy.keys() {
        let s = &config.services[*i];
        life.undeploy.push(LifeUndeploy {
            service: *i,
            reason: "its last apply was its first deploy: there is no previous release, so it stops and `current` goes".to_owned(),
            unlink: crate::release::Paths::new(&env.root, &s.name)
                .current()
                .display()
                .to_string(),
        });
    }
    // Unit files of the releases returned to go back first, with one
    // daemon-reload, before any restart.
    for (i, u) in &undeploy {
        let s = &config.services[*i];
        let (write, reason) = match &u.unit {
            UnitUndo::Keep => continue,
            UnitUndo::Remove => (
                UnitWrite::Remove,
                "its first deploy installed it where there was none",
            ),
            UnitUndo::Restore(saved) => (
                UnitWrite::Restore {
                    saved: saved.clone(),
                },
                "put back the unit file its first deploy replaced",
            ),
        };
        life.units.push(UnitFile {
            service: s.name.clone(),
            unit: s.unit_name.clone(),
            write,
            reason: reason.to_owned(),
            enable: false,
        });
    }
    for (i, step) in &steps {
        if let Some(saved) = &step.unit_restore {
            let s = &config.services[*i];
            life.units.push(UnitFile {
                service: s.name.clone(),
                unit: s.unit_name.clone(),
                write: UnitWrite::Install {
                    source: UnitSource::Saved(saved.clone()),
                },
                reason: "put back the unit file of the release returned to".to_owned(),
                enable: true,
            });
        }
    }
    for (i, step) in &steps {
        let s = &config.services[*i];
        life.walk.push(Walk {
            service: *i,
            bounce: Bounce::Restart {
                release: step
                    .release
                    .as_ref()
                    .map(|r| format!("{}/{}/releases/{r}", env.root, s.name)),
            },
            reason: step.reason.clone(),
        });
    }
    if config.proxy.is_some() && (!steps.is_empty() || !undeploy.is_empty()) {
        life.proxy = Some(ProxyReload::Upstreams {
            config_changed: Vec::new(),
        });
    }
    let mut g = Graph::default();
    life.walk(&mut g);
    let actions = g.into_actions();
    // The per-service summary, in start order.
    let mut services = Vec::new();
    let mut order_idx: Vec<usize> = (0..config.services.len()).collect();
    order_idx.sort_by_key(|i| (config.services[*i].phase_index, *i));
    for i in order_idx {
        let s = &config.services[i];
        let step = steps.get(&i);
        if let Some(u) = undeploy.get(&i) {
            services.push(ServicePlan {
                name: s.name.clone(),
                phase: s.phase.clone(),
                unit: s.unit_name.clone(),
                change: ServiceChange::Stop,
                migrate: false,
                unit_change: match (&u.unit, s.unit.is_some()) {
                    (_, false) => UnitChange::Unmanaged,
                    (UnitUndo::Keep, true) => UnitChange::Unchanged,
                    _ => UnitChange::Changed,
                },
                from_revision: u.from_revision.clone(),
                to_revision: None,
                reasons: vec!["first deploy undone: stopped, no release is live".to_owned()],
                changed_paths: Vec::new(),
                changed_count: 0,
                unit_diff: None,
            });
            continue;
        }
        services.push(ServicePlan {
            name: s.name.clone(),
            phase: s.phase.clone(),
            unit: s.unit_name.clone(),
            change: match step {
                Some(st) if st.release.is_some() => ServiceChange::Deploy,
                Some(_) => ServiceChange::Restart,
                None => ServiceChange::Unchanged,
            },
            migrate: false,
            unit_change: if s.unit.is_some() {
                UnitChange::Unchanged
            } else {
                UnitChange::Unmanaged
            },
            from_revision: step.and_then(|st| st.from_revision.clone()),
            to_revision: step
                .and_then(|st| st.release.clone().or_else(|| st.from_revision.clone())),
            reasons: step.map(|st| vec![st.reason.clone()]).unwrap_or_default(),
            changed_paths: Vec::new(),
            changed_count: 0,
            unit_diff: None,
        });
    }
    let switched: Vec<String> = inp
        .steps
        .iter()
        .filter(|s| s.release.is_some())
        .map(|s| s.service.clone())
        .collect();
    let rollback = RollbackPlan {
        kind: if switched.is_empty() {
            RollbackKind::Nothing
        } else {
            RollbackKind::CodeOnly
        },
        summary: if switched.is_empty() && !undeploy.is_empty() {
            "nothing to roll back: the services stopped are back to nothing deployed, and the next deploy is their first again".to_owned()
        } else if switched.is_empty() {
            "no release changes: nothing to roll back".to_owned()
        } else {
            format!(
                "code-only: `moorline rollback --env {}` switches {} back again",
                env.name,
                switched.join(", ")
            )
        },
        services: switched,
    };
    Unbuilt {
        operation: inp.operation,
        project: config.project.name.clone(),
        environment: env.name.clone(),
        branch: env.branch.clone(),
        from: inp.from,
        to: inp.to,
        config_sha256: sha256_hex(inp.config_text.as_bytes()),
        state_sha256: inp.state_sha256,
        services,
        actions,
        rollback,
        warnings: Vec::new(),
        salt: None,
        pass_env: env.pass_env.clone(),
    }
    .plan()
}

/// What `moorline start|stop|enable|disable` is asked to do.
pub(crate) struct ServiceOps<'a> {
    pub(crate) config: &'a Config,
    pub(crate) config_text: &'a str,
    pub(crate) env: &'a Environment,
    /// `Start`, `Stop`, `Enable` or `Disable`.
    pub(crate) operation: Operation,
    /// The services, in configuration order.
    pub(crate) services: Vec<&'a crate::config::Service>,
    /// The deployed revision (nothing changes it).
    pub(crate) live: Rev,
    pub(crate) state_sha256: Option<String>,
    /// The units `enable` and `disable` act on, in order: a service's
    /// unit, or for a blue/green service its slot instances (its
    /// template cannot be enabled itself).
    pub(crate) units: Vec<String>,
}

/// The plan of `start`, `stop`, `enable` or `disable`. Start: `start:S`
/// then `health:S` per service, phase by phase (each phase after the
/// previous one's readiness), `depends-on` ordering starts inside a phase.
/// Stop: `stop:S`, the last phase first, a service after those of its phase
/// that depend on it. Enable and disable: one action for all the units.
/// Only the services' own units; infrastructure units and the proxy are
/// not moorline's to stop.
pub(crate) fn services(inp: ServiceOps<'_>) -> Plan {
    let config = inp.config;
    let chosen: BTreeSet<&str> = inp.services.iter().map(|s| s.name.as_str()).collect();
    let verb = match inp.operation {
        Operation::Start => "start",
        Operation::Stop => "stop",
        Operation::Enable => "enable",
        _ => "disable",
    };
    let requested = format!("{verb} requested");
    let walk = |bounce: Bounce| -> Vec<Walk> {
        config
            .services
            .iter()
            .enumerate()
            .filter(|(_, s)| chosen.contains(s.name.as_str()))
            .map(|(i, _)| Walk {
                service: i,
                bounce: bounce.clone(),
                reason: requested.clone(),
            })
            .collect()
    };
    let mut g = Graph::default();
    match inp.operation {
        Operation::Start => {
            let mut life = Lifecycle::new(config, Order::Forward);
            life.walk = walk(Bounce::Start);
            life.walk(&mut g);
        }
        Operation::Stop => {
            let mut life = Lifecycle::new(config, Order::Reverse);
            life.walk = walk(Bounce::Stop);
            life.walk(&mut g);
        }
        _ => {
            let units = inp.units.clone();
            if !units.is_empty() {
                let names: Vec<&str> = inp.services.iter().map(|s| s.name.as_str()).collect();
                g.push(
                    Action {
                        id: verb.to_owned(),
                        service: None,
                        phase: None,
                        reason: format!("{requested} for {}", names.join(", ")),
                        after: Vec::new(),
                        step: if inp.operation == Operation::Enable {
                            ActionStep::Enable { units }
                        } else {
                            ActionStep::Disable { units }
                        },
                    },
                    (0, ActionKind::Enable, 0),
                );
            }
        }
    }
    let actions = g.into_actions();
    let services = config
        .services
        .iter()
        .map(|s| ServicePlan {
            name: s.name.clone(),
            phase: s.phase.clone(),
            unit: s.unit_name.clone(),
            change: match inp.operation {
                Operation::Start if chosen.contains(s.name.as_str()) => ServiceChange::Restart,
                Operation::Stop if chosen.contains(s.name.as_str()) => ServiceChange::Stop,
                _ => ServiceChange::Unchanged,
            },
            migrate: false,
            unit_change: if s.unit.is_some() {
                UnitChange::Unchanged
            } else {
                UnitChange::Unmanaged
            },
            from_revision: None,
            to_revision: None,
            reasons: if chosen.contains(s.name.as_str()) {
                vec![requested.clone()]
            } else {
                Vec::new()
            },
            changed_paths: Vec::new(),
            changed_count: 0,
            unit_diff: None,
        })
        .collect();
    Unbuilt {
        operation: inp.operation,
        project: config.project.name.clone(),
        environment: inp.env.name.clone(),
        branch: inp.env.branch.clone(),
        from: Some(inp.live.clone()),
        to: inp.live,
        config_sha256: sha256_hex(inp.config_text.as_bytes()),
        state_sha256: inp.state_sha256,
        services,
        actions,
        rollback: RollbackPlan {
            kind: RollbackKind::Nothing,
            services: Vec::new(),
            summary: format!(
                "no release changes: nothing to roll back (`moorline {}` undoes it)",
                match inp.operation {
                    Operation::Start => "stop",
                    Operation::Stop => "start",
                    Operation::Enable => "disable",
                    _ => "enable",
                }
            ),
        },
        warnings: Vec::new(),
        salt: None,
        pass_env: inp.env.pass_env.clone(),
    }
    .plan()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Three phases, a `depends-on` chain across them and two inside
    /// `core`; also the configuration of `crate::select`'s tests.
    pub(crate) fn config() -> Config {
        let text = r#"
project "p" { unit-name "p-{service}.service" }
environment "staging" { branch "main"; root "/tmp/p" }
phase "config"
phase "gateway"
phase "core"
runtime "node" { build "true" }
service "config"  { runtime "node"; port 1; phase "config" }
service "gateway" { runtime "node"; port 2; phase "gateway"; depends-on "config" }
service "auth"    { runtime "node"; port 3; phase "core" }
service "backend" { runtime "node"; port 4; phase "core"; depends-on "gateway" "auth" }
service "search"  { runtime "node"; port 5; phase "core" }
"#;
        crate::config::parse("t.kdl", text).unwrap()
    }

    fn plan(c: &Config, operation: Operation) -> Plan {
        services(ServiceOps {
            config: c,
            config_text: "",
            env: &c.environments[0],
            operation,
            services: c.services.iter().collect(),
            live: Rev {
                spec: "live".into(),
                sha: String::new(),
                summary: String::new(),
            },
            state_sha256: None,
            units: c.services.iter().map(|s| s.unit_name.clone()).collect(),
        })
    }

    fn edges(p: &Plan) -> Vec<String> {
        p.actions
            .iter()
            .map(|a| format!("{} <- {}", a.id, a.after.join(" ")))
            .collect()
    }

    /// Start: phases in order, `depends-on` inside a phase, each start
    /// gated on readiness; stop: the reverse, a dependency after its
    /// dependents.
    #[test]
    fn start_follows_phases_and_depends_on_and_stop_reverses_them() {
        let c = config();
        assert_eq!(
            edges(&plan(&c, Operation::Start)),
            [
                "start:config <- ",
                "health:config <- start:config",
                "start:gateway <- health:config",
                "health:gateway <- start:gateway",
                "start:auth <- health:gateway",
                "health:auth <- start:auth",
                "start:backend <- health:gateway health:auth",
                "health:backend <- start:backend",
                "start:search <- health:gateway",
                "health:search <- start:search",
            ]
        );
        assert_eq!(
            edges(&plan(&c, Operation::Stop)),
            [
                "stop:backend <- ",
                "stop:auth <- stop:backend",
                "stop:search <- ",
                // stop:backend is implied: stop:auth waits for it.
                "stop:gateway <- stop:auth stop:search",
                "stop:config <- stop:gateway",
            ]
        );
        let enable = plan(&c, Operation::Enable);
        assert_eq!(enable.actions.len(), 1);
        assert_eq!(
            enable.actions[0].step,
            ActionStep::Enable {
                units: c.services.iter().map(|s| s.unit_name.clone()).collect()
            }
        );
    }

    /// A rollback mixing a first deploy undone (stopped before its unit file
    /// goes) with a service switched back to a kept release: one
    /// daemon-reload covers both unit files, restarts wait for it.
    #[test]
    fn a_first_deploy_undone_stops_before_its_unit_file_goes() {
        let c = config();
        let step = |name: &str| Switch {
            service: name.into(),
            release: Some("aaa".into()),
            from_revision: Some("bbb".into()),
            reason: "back".into(),
            unit_restore: Some("/saved".into()),
        };
        let p = restarts(ManualInputs {
            config: &c,
            config_text: "",
            env: &c.environments[0],
            operation: Operation::Rollback,
            steps: vec![step("auth")],
            from: None,
            to: Rev {
                spec: "previous releases".into(),
                sha: "aaa".into(),
                summary: String::new(),
            },
            state_sha256: None,
            infrastructure: false,
            undeploy: vec![
                Undeploy {
                    service: "search".into(),
                    from_revision: Some("bbb".into()),
                    unit: UnitUndo::Remove,
                },
                Undeploy {
                    service: "config".into(),
                    from_revision: Some("bbb".into()),
                    unit: UnitUndo::Keep,
                },
            ],
        });
        assert_eq!(
            edges(&p),
            [
                "stop:config <- ",
                "stop:search <- ",
                "install-unit:auth <- ",
                "remove-unit:search <- stop:search",
                "daemon-reload <- install-unit:auth remove-unit:search",
                "restart:auth <- daemon-reload",
                "health:auth <- restart:auth",
            ]
        );
        assert_eq!(
            p.actions[0].step,
            ActionStep::Stop {
                unit: c.service("config").unwrap().unit_name.clone(),
                unlink: Some("/tmp/p/config/current".into()),
            }
        );
        let reload = p.action("daemon-reload").unwrap();
        assert_eq!(
            reload.step,
            ActionStep::DaemonReload {
                enable: vec![c.service("auth").unwrap().unit_name.clone()]
            }
        );
        let change = |n: &str| p.services.iter().find(|s| s.name == n).unwrap().change;
        assert_eq!(change("search"), ServiceChange::Stop);
        assert_eq!(change("config"), ServiceChange::Stop);
        assert_eq!(change("auth"), ServiceChange::Deploy);
        assert_eq!(change("gateway"), ServiceChange::Unchanged);
    }
}

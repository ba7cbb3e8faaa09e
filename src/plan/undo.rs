//! The automatic rollback of a failed (or interrupted) apply, as a plan: a
//! pure function of the plan that failed, its journal records and the
//! configuration. It is rendered, journaled (`rollback-begin` carries it)
//! and executed like any other plan, so an interrupted rollback resumes
//! from its own records.
//!
//! What the records say changed is undone, in the reverse of the order it
//! was done: a first-deployed service is stopped (and its `current` link
//! removed) before its unit file goes; unit files are put back (or removed
//! where there was none) with one daemon-reload; every service switched to
//! a new release goes back to its previous one (and every service restarted
//! for a changed unit file is restarted on the restored one), phase by
//! phase in reverse order, each gated on readiness; the proxy is reloaded
//! back only if the apply reloaded it.

use std::collections::{BTreeMap, BTreeSet};

use super::deploy::graph::Graph;
use super::lifecycle::Undeploy;
use super::lifecycle::{Bounce, Lifecycle, Order, ProxyReload, UnitFile, UnitWrite, Walk};
use super::{
    Operation, Plan, RollbackKind, RollbackPlan, ServiceChange, ServicePlan, Unbuilt, UnitChange,
    short,
};
use crate::config::{Config, Environment};
use crate::git::Rev;
use crate::release::Paths;

/// What an apply changed, as its journal records it: the input of its
/// undo. The journal produces it (`journal::effects`); the planner never
/// reads journal records itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Effects {
    /// Each service switched to a new release, and the release it came
    /// from (`None`: it had none, a first deploy).
    pub(crate) switched: BTreeMap<String, Option<String>>,
    /// Each unit file the apply replaced: its service, and where the file
    /// it replaced was saved (`None`: there was none).
    pub(crate) replaced: BTreeMap<String, (String, Option<String>)>,
    /// Services whose restart began.
    pub(crate) restarted: BTreeSet<String>,
    /// The apply reloaded the proxy.
    pub(crate) proxy_reloaded: bool,
    /// Services whose migrations ran.
    pub(crate) migrated: Vec<String>,
}

/// The rollback plan of `failed` (apply `apply_id`), from what it changed.
/// Empty (no actions) when nothing live changed.
pub(crate) fn build(
    failed: &Plan,
    apply_id: &str,
    effects: &Effects,
    config: &Config,
    env: &Environment,
) -> Plan {
    let Effects {
        switched,
        replaced,
        restarted,
        proxy_reloaded,
        migrated,
    } = effects;
    let unit_restored: BTreeSet<&str> = replaced.values().map(|(s, _)| s.as_str()).collect();
    let mut warnings = Vec::new();
    let mut life = Lifecycle::new(config, Order::Reverse);

    // First deploys: stopped before anything else.
    for (service, from) in switched {
        if from.is_some() {
            continue;
        }
        let Some(i) = config.services.iter().position(|s| s.name == *service) else {
            warnings.push(format!(
                "{service} is no longer in the configuration: it is not stopped"
            ));
            continue;
        };
        life.undeploy.push(Undeploy {
            service: i,
            reason: "first deploy: there is no previous release, so it stops and `current` goes"
                .to_owned(),
            unlink: Paths::new(&env.root, service)
                .current()
                .display()
                .to_string(),
        });
    }

    // Unit files back as they were, then one daemon-reload.
    for (unit, (service, saved)) in replaced {
        life.units.push(UnitFile {
            service: service.clone(),
            unit: unit.clone(),
            write: match saved {
                Some(saved) => UnitWrite::Restore {
                    saved: saved.clone(),
                },
                None => UnitWrite::Remove,
            },
            reason: match saved {
                Some(_) => "put back the unit file the apply replaced",
                None => "the apply installed it where there was none",
            }
            .to_owned(),
            enable: false,
        });
    }

    // Back to the previous releases, in the reverse of deploy order.
    for (i, s) in config.services.iter().enumerate() {
        let (reason, release) = match switched.get(&s.name) {
            Some(Some(prev)) => (
                format!("back to its previous release {}", short(prev)),
                Some(
                    Paths::new(&env.root, &s.name)
                        .release(prev)
                        .display()
                        .to_string(),
                ),
            ),
            None if restarted.contains(&s.name) && unit_restored.contains(s.name.as_str()) => {
                ("restarted on its restored unit file".to_owned(), None)
            }
            // First deploys stop instead; the rest did not change.
            Some(None) | None => continue,
        };
        life.walk.push(Walk {
            service: i,
            bounce: Bounce::Restart { release },
            reason,
        });
    }
    let back: BTreeSet<&str> = life
        .walk
        .iter()
        .map(|w| config.services[w.service].name.as_str())
        .collect();
    for (service, from) in switched {
        if from.is_some() && config.service(service).is_none() {
            warnings.push(format!(
                "{service} is no longer in the configuration: it stays on its new release"
            ));
        }
    }
    if *proxy_reloaded {
        life.proxy = Some(ProxyReload::Back);
    }
    if !migrated.is_empty() {
        warnings.push(format!(
            "the schema stays migrated: the migrations of {} ran and this rollback switches code only",
            migrated.join(", ")
        ));
    }
    let mut g = Graph::default();
    life.walk(&mut g);
    let actions = g.into_actions();

    let services = config
        .services
        .iter()
        .map(|s| {
            let name = s.name.as_str();
            let (change, to_revision, reasons) = match switched.get(name) {
                Some(Some(prev)) => (
                    ServiceChange::Deploy,
                    Some(prev.clone()),
                    vec![format!("back to its previous release {}", short(prev))],
                ),
                Some(None) => (
                    ServiceChange::Stop,
                    None,
                    vec!["first deploy undone: stopped, no release is live".to_owned()],
                ),
                None if back.contains(name) => (
                    ServiceChange::Restart,
                    None,
                    vec!["its unit file is put back".to_owned()],
                ),
                None => (ServiceChange::Unchanged, None, Vec::new()),
            };
            let unit_change = if s.unit.is_none() {
                UnitChange::Unmanaged
            } else if replaced.contains_key(s.unit_name.as_str()) {
                UnitChange::Changed
            } else {
                UnitChange::Unchanged
            };
            ServicePlan {
                name: s.name.clone(),
                phase: s.phase.clone(),
                unit: s.unit_name.clone(),
                change,
                migrate: false,
                unit_change,
                from_revision: switched.contains_key(name).then(|| failed.to.sha.clone()),
                to_revision,
                reasons,
                changed_paths: Vec::new(),
                changed_count: 0,
                unit_diff: None,
            }
        })
        .collect();
    Unbuilt {
        operation: Operation::Rollback,
        project: failed.project.clone(),
        environment: failed.environment.clone(),
        branch: failed.branch.clone(),
        // What the failed apply was deploying, never recorded as deployed
        // (the renderers name it so: `UNDO_FROM`).
        from: Some(Rev {
            spec: super::UNDO_FROM.to_owned(),
            ..failed.to.clone()
        }),
        to: Rev {
            spec: "previous releases".to_owned(),
            sha: failed
                .from
                .as_ref()
                .map(|f| f.sha.clone())
                .unwrap_or_default(),
            summary: format!("rollback of apply {apply_id}"),
        },
        config_sha256: failed.inputs.config_sha256.clone(),
        state_sha256: None,
        services,
        actions,
        rollback: RollbackPlan {
            kind: RollbackKind::Nothing,
            services: Vec::new(),
            summary: format!("undoes apply {apply_id}; it has no rollback of its own"),
        },
        warnings,
        salt: Some(("apply_id", apply_id)),
        pass_env: env.pass_env.clone(),
    }
    .plan()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{Record, effects};
    use crate::plan::{FORMAT_VERSION, Settle, Step};

    const CONFIG: &str = r#"
project "p" { unit-name "p-{service}.service" }
environment "staging" { branch "main"; root "/srv/p" }
phase "core"
phase "edge"
runtime "node" {
    build "true"
    unit { exec "/usr/bin/node" "{current}/index.js"; }
}
service "api"     { runtime "node"; port 1; phase "core" }
service "worker"  { runtime "node"; port 2; phase "core"; depends-on "api" }
service "web"     { runtime "node"; port 3; phase "edge" }
proxy "nginx" { unit "nginx.service"; check "nginx" "-t"; }
"#;

    fn config() -> Config {
        crate::config::parse("t.kdl", CONFIG).unwrap()
    }

    fn restart(s: &str) -> serde_json::Value {
        serde_json::json!({"id": format!("restart:{s}"), "kind": "restart", "service": s,
            "phase": null, "reason": "", "after": [], "unit": format!("p-{s}.service")})
    }

    fn failed(first_deploy: bool) -> Plan {
        let json = serde_json::json!({
            "format_version": FORMAT_VERSION,
            "operation": "deploy",
            "project": "p",
            "environment": "staging",
            "branch": "main",
            "from": if first_deploy {
                serde_json::Value::Null
            } else {
                serde_json::json!({"spec": "old", "sha": "aaaa", "summary": ""})
            },
            "to": {"spec": "main", "sha": "bbbb", "summary": ""},
            "first_deploy": first_deploy,
            "non_ancestor": false,
            "fingerprint": "f",
            "inputs": {"moorline_version": "0", "config_sha256": "c", "state_sha256": null,
                       "units_source": "none", "units": {}, "allow_non_ancestor": false},
            "changed_paths": 0,
            "services": [],
            "actions": [
                restart("api"), restart("worker"), restart("web"),
                {"id": "reload-proxy", "kind": "reload-proxy", "service": null, "phase": null,
                 "reason": "", "after": [], "unit": "nginx.service"}
            ],
            "rollback": {"kind": "code-only", "services": [], "summary": ""},
            "warnings": []
        });
        serde_json::from_value(json).unwrap()
    }

    fn started(action: &str) -> Record {
        Record::Started {
            action: action.to_owned(),
            at_ms: None,
        }
    }

    fn succeeded(action: &str) -> Record {
        Record::Succeeded {
            action: action.to_owned(),
            note: None,
            at_ms: None,
        }
    }

    fn switch(service: &str, from: Option<&str>) -> Record {
        Record::Switch {
            service: service.to_owned(),
            from: from.map(str::to_owned),
            to: "bbbb".to_owned(),
        }
    }

    fn replace(service: &str, saved: Option<&str>) -> Record {
        Record::UnitReplace {
            service: service.to_owned(),
            unit: format!("p-{service}.service"),
            saved: saved.map(str::to_owned),
        }
    }

    /// The undo of `failed` after `records`, through the journal's effects.
    fn undo(failed: &Plan, records: &[Record], c: &Config) -> Plan {
        build(
            failed,
            "1",
            &effects(failed, records),
            c,
            &c.environments[0],
        )
    }

    fn ids(p: &Plan) -> Vec<(String, Vec<String>)> {
        p.actions
            .iter()
            .map(|a| (a.id.clone(), a.after.clone()))
            .collect()
    }

    fn pair(id: &str, after: &[&str]) -> (String, Vec<String>) {
        (
            id.to_owned(),
            after.iter().map(|s| (*s).to_owned()).collect(),
        )
    }

    /// A first deploy that failed in its second phase: every service
    /// started is stopped (and loses `current`) before its unit file is
    /// removed; nothing is restarted; the proxy was not reloaded.
    #[test]
    fn a_first_deploy_stops_before_it_removes_unit_files() {
        let c = config();
        let records = [
            replace("api", None),
            replace("worker", None),
            replace("web", None),
            succeeded("daemon-reload"),
            started("restart:api"),
            switch("api", None),
            succeeded("restart:api"),
            started("restart:web"),
            switch("web", None),
        ];
        let p = undo(&failed(true), &records, &c);
        assert_eq!(
            ids(&p),
            [
                pair("stop:api", &[]),
                pair("stop:web", &[]),
                pair("remove-unit:api", &["stop:api"]),
                pair("remove-unit:worker", &[]),
                pair("remove-unit:web", &["stop:web"]),
                pair(
                    "daemon-reload",
                    &["remove-unit:api", "remove-unit:worker", "remove-unit:web"]
                ),
            ]
        );
        assert_eq!(
            p.action("stop:api").unwrap().step,
            Step::Stop {
                unit: "p-api.service".to_owned(),
                unlink: Some("/srv/p/api/current".to_owned()),
            }
        );
        assert_eq!(p.operation, Operation::Rollback);
        let api = p.services.iter().find(|s| s.name == "api").unwrap();
        assert_eq!(api.change, ServiceChange::Stop);
        // The plan survives its JSON form (it is journaled).
        let back: Plan = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
        assert_eq!(back, p);
    }

    /// A deploy whose unit file of api changed and whose proxy reloaded
    /// before web failed its readiness: the unit file is put back, then the
    /// last phase goes back first, dependents before what they depend on,
    /// each gated on readiness; the proxy is reloaded back last.
    #[test]
    fn a_deploy_goes_back_in_reverse_phase_order_and_reloads_the_proxy_it_reloaded() {
        let c = config();
        let records = [
            replace("api", Some("/state/units/1/p-api.service")),
            succeeded("daemon-reload"),
            started("restart:api"),
            switch("api", Some("aaaa")),
            started("restart:worker"),
            switch("worker", Some("aaaa")),
            started("restart:web"),
            switch("web", Some("aaaa")),
            started("reload-proxy"),
            succeeded("reload-proxy"),
            Record::Failed {
                action: "health:web".to_owned(),
                error: "no".to_owned(),
            },
        ];
        let p = undo(&failed(false), &records, &c);
        assert_eq!(
            ids(&p),
            [
                pair("restore-unit:api", &[]),
                pair("daemon-reload", &["restore-unit:api"]),
                pair("restart:web", &["daemon-reload"]),
                pair("health:web", &["restart:web"]),
                pair("restart:worker", &["health:web"]),
                pair("health:worker", &["restart:worker"]),
                pair("restart:api", &["health:web", "health:worker"]),
                pair("health:api", &["restart:api"]),
                pair("reload-proxy", &["health:api"]),
            ]
        );
        assert_eq!(
            p.action("restart:api").unwrap().step,
            Step::Restart {
                unit: "p-api.service".to_owned(),
                release: Some("/srv/p/api/releases/aaaa".to_owned()),
                settle: Settle::Probe,
            }
        );
        assert_eq!(
            p.action("restore-unit:api").unwrap().step,
            Step::RestoreUnit {
                unit: "p-api.service".to_owned(),
                saved: "/state/units/1/p-api.service".to_owned(),
            }
        );
        assert_eq!(
            p.action("reload-proxy").unwrap().step,
            Step::ReloadProxy {
                unit: "nginx.service".to_owned(),
                check: None,
            }
        );
    }

    /// The proxy check failed (so it still runs its old configuration): it
    /// is not reloaded back. A unit restored for a service that was only
    /// restarted restarts it on that unit; nothing after `rollback-begin`
    /// counts; nothing live changed gives an empty plan.
    #[test]
    fn the_proxy_is_left_alone_unless_it_was_reloaded() {
        let c = config();
        let records = [
            replace("worker", Some("/saved")),
            succeeded("daemon-reload"),
            started("restart:worker"),
            succeeded("restart:worker"),
            started("reload-proxy"),
            Record::Failed {
                action: "reload-proxy".to_owned(),
                error: "nginx -t failed".to_owned(),
            },
            Record::RollbackBegin {
                reason: "x".to_owned(),
                plan: None,
            },
            switch("api", Some("zzzz")),
        ];
        let p = undo(&failed(false), &records, &c);
        assert_eq!(
            ids(&p),
            [
                pair("restore-unit:worker", &[]),
                pair("daemon-reload", &["restore-unit:worker"]),
                pair("restart:worker", &["daemon-reload"]),
                pair("health:worker", &["restart:worker"]),
            ]
        );
        assert_eq!(
            p.action("restart:worker").unwrap().step,
            Step::Restart {
                unit: "p-worker.service".to_owned(),
                release: None,
                settle: Settle::Probe,
            }
        );
        let nothing = undo(
            &failed(false),
            &[started("build:api"), succeeded("build:api")],
            &c,
        );
        assert!(nothing.actions.is_empty());
    }
}

//! Stage 3, the phase graph: what changes what is live, after every build
//! and migration (a "built" barrier where it saves edges). Unit files are
//! installed and systemd re-reads them once; then, phase by phase, each
//! affected service restarts and its health is checked, `depends-on`
//! ordering restarts inside a phase and a "ready" barrier standing between
//! phases where it saves edges; the proxy reloads last.

use std::collections::{BTreeMap, BTreeSet};

use super::affected::Affected;
use super::graph::{Graph, barrier, needs_barrier};
use super::prepare::Prepared;
use super::{Inputs, count, health_action, list, release_dir, units};
use crate::plan::{Action, ActionKind, Command, Step, UnitChange, UnitSource, short};

/// Adds the installs, the daemon-reload, the restarts and health checks
/// and the proxy reload to `g`; returns the installs by service index.
pub(super) fn go_live(
    inp: &Inputs<'_>,
    affected: &BTreeMap<usize, Affected>,
    unit_changes: &BTreeMap<usize, (UnitChange, Option<String>)>,
    proxy_hits: &[&str],
    prepared: &Prepared,
    g: &mut Graph,
) -> BTreeMap<usize, usize> {
    let Inputs {
        config,
        env,
        changes,
        host,
        ..
    } = *inp;
    let to = &changes.to;
    let Prepared { builds, migrations } = prepared;
    // Whatever comes next changes what is live, so it waits for every build
    // and migration: a failed build leaves the host untouched.
    let last_prepare: Vec<usize> = {
        let mut v: Vec<usize> = builds.values().copied().collect();
        if let Some((_, m)) = migrations.last() {
            // The chain makes every migration precede the last one.
            v.retain(|b| !migrations.iter().any(|(i, _)| builds.get(i) == Some(b)));
            v.push(*m);
        }
        v
    };
    let installs_planned = unit_changes.values().filter(|(c, _)| c.installs()).count();
    let mut restarts_in_phase = vec![0usize; config.phases.len()];
    for i in affected
        .keys()
        .copied()
        .chain(
            unit_changes
                .iter()
                .filter(|(_, (c, _))| c.installs())
                .map(|(i, _)| *i),
        )
        .collect::<BTreeSet<usize>>()
    {
        restarts_in_phase[config.services[i].phase_index] += 1;
    }
    let first_consumers = if installs_planned > 0 {
        installs_planned
    } else {
        restarts_in_phase
            .iter()
            .copied()
            .find(|n| *n > 0)
            .unwrap_or(1)
    };
    let last_prepare = if needs_barrier(last_prepare.len(), first_consumers) {
        let b = g.push(
            barrier(
                "built",
                None,
                "every build and migration succeeded; nothing live has changed before this point",
            ),
            (0, ActionKind::Barrier, 0),
        );
        for p in &last_prepare {
            g.edge(*p, b);
        }
        vec![b]
    } else {
        last_prepare
    };

    // Unit installs and one daemon-reload.
    let mut installs: BTreeMap<usize, usize> = BTreeMap::new();
    for (i, (change, _)) in unit_changes {
        if !change.installs() {
            continue;
        }
        let s = &config.services[*i];
        let id = g.push(
            Action {
                id: format!("install-unit:{}", s.name),
                service: Some(s.name.clone()),
                phase: Some(s.phase.clone()),
                reason: match change {
                    UnitChange::New => "unit file is not installed yet".to_owned(),
                    UnitChange::Adopt => units::adopt_reason(s, host),
                    _ => "unit file differs from the installed one".to_owned(),
                },
                after: Vec::new(),
                step: Step::InstallUnit {
                    unit: s.unit_name.clone(),
                    source: UnitSource::Config,
                },
            },
            (s.phase_index, ActionKind::InstallUnit, *i),
        );
        for p in &last_prepare {
            g.edge(*p, id);
        }
        installs.insert(*i, id);
    }
    let reload = if installs.is_empty() {
        None
    } else {
        let units: Vec<&str> = installs
            .keys()
            .map(|i| config.services[*i].unit_name.as_str())
            .collect();
        let id = g.push(
            Action {
                id: "daemon-reload".to_owned(),
                service: None,
                phase: None,
                reason: format!(
                    "systemd must re-read {}: {}",
                    count(units.len(), "unit file", "unit files"),
                    list(&units)
                ),
                after: Vec::new(),
                step: Step::DaemonReload {
                    enable: units.iter().map(|u| (*u).to_owned()).collect(),
                },
            },
            (0, ActionKind::DaemonReload, 0),
        );
        for inst in installs.values() {
            g.edge(*inst, id);
        }
        Some(id)
    };

    // Restarts and health checks, phase by phase.
    let restarting: BTreeSet<usize> = affected.keys().chain(installs.keys()).copied().collect();
    let mut health_of: BTreeMap<usize, usize> = BTreeMap::new();
    let mut restart_of: BTreeMap<usize, usize> = BTreeMap::new();
    let mut previous_phase_health: Vec<usize> = Vec::new();
    let mut first_restart_phase = true;
    for (pi, _) in config.phases.iter().enumerate() {
        let in_phase: Vec<usize> = restarting
            .iter()
            .copied()
            .filter(|i| config.services[*i].phase_index == pi)
            .collect();
        if in_phase.is_empty() {
            continue;
        }
        for i in &in_phase {
            let s = &config.services[*i];
            let deploy = affected.contains_key(i);
            let reason = if deploy {
                format!("switch to release {}", short(&to.sha))
            } else {
                "unit file changed".to_owned()
            };
            let rid = g.push(
                Action {
                    id: format!("restart:{}", s.name),
                    service: Some(s.name.clone()),
                    phase: Some(s.phase.clone()),
                    reason,
                    after: Vec::new(),
                    step: Step::Restart {
                        unit: s.unit_name.clone(),
                        release: deploy.then(|| release_dir(env, s, &to.sha)),
                    },
                },
                (pi, ActionKind::Restart, *i),
            );
            let hid = g.push(health_action(s, Vec::new()), (pi, ActionKind::Health, *i));
            g.edge(rid, hid);
            restart_of.insert(*i, rid);
            health_of.insert(*i, hid);
            if first_restart_phase {
                if let Some(r) = reload {
                    g.edge(r, rid);
                } else {
                    for p in &last_prepare {
                        g.edge(*p, rid);
                    }
                }
            }
            for h in &previous_phase_health {
                g.edge(*h, rid);
            }
        }
        // depends-on inside the phase orders restarts.
        for i in &in_phase {
            let s = &config.services[*i];
            for d in &s.depends_on {
                if let Some(j) = in_phase.iter().find(|j| config.services[**j].name == *d)
                    && let (Some(h), Some(r)) = (health_of.get(j), restart_of.get(i))
                {
                    g.edge(*h, *r);
                }
            }
        }
        // The next phase waits for the health of this one's services that
        // nothing else in the phase waits on (the rest follow transitively).
        previous_phase_health = in_phase
            .iter()
            .filter(|i| {
                let name = &config.services[**i].name;
                !in_phase
                    .iter()
                    .any(|j| config.services[*j].depends_on.iter().any(|d| d == name))
            })
            .filter_map(|i| health_of.get(i).copied())
            .collect();
        let next_consumers = restarts_in_phase
            .iter()
            .skip(pi + 1)
            .copied()
            .find(|n| *n > 0)
            .unwrap_or(1);
        if needs_barrier(previous_phase_health.len(), next_consumers) {
            let phase = &config.phases[pi].name;
            let b = g.push(
                barrier(
                    &format!("ready:{phase}"),
                    Some(phase),
                    &format!("every restarted service of phase {phase} is ready"),
                ),
                (pi, ActionKind::Barrier, 0),
            );
            for h in &previous_phase_health {
                g.edge(*h, b);
            }
            previous_phase_health = vec![b];
        }
        first_restart_phase = false;
    }

    // The proxy reloads last, after its configuration check.
    if let Some(p) = &config.proxy
        && (!restarting.is_empty() || !proxy_hits.is_empty())
    {
        let mut why = Vec::new();
        if !restarting.is_empty() {
            let names: Vec<&str> = restarting
                .iter()
                .map(|i| config.services[*i].name.as_str())
                .collect();
            why.push(format!("upstreams restarted: {}", list(&names)));
        }
        if !proxy_hits.is_empty() {
            why.push(format!("its configuration changed: {}", list(proxy_hits)));
        }
        if let Some(c) = &p.check {
            why.push(format!("after `{}` passes", c.argv.join(" ")));
        }
        let id = g.push(
            Action {
                id: "reload-proxy".to_owned(),
                service: None,
                phase: None,
                reason: why.join("; "),
                after: Vec::new(),
                step: Step::ReloadProxy {
                    unit: p.unit.clone(),
                    check: p.check.as_ref().map(|c| Command {
                        argv: c.argv.clone(),
                        timeout_secs: c.timeout.as_secs(),
                    }),
                },
            },
            (config.phases.len(), ActionKind::ReloadProxy, 0),
        );
        if health_of.is_empty() {
            for pp in &last_prepare {
                g.edge(*pp, id);
            }
        }
        for h in &previous_phase_health {
            g.edge(*h, id);
        }
    }
    installs
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::super::prepare::prepare;
    use super::super::testing::World;
    use super::*;

    const HEAD: &str = r#"
project "p" { unit-name "p-{service}.service" }
environment "staging" { branch "main"; root "/srv/p" }
phase "core"
phase "edge"
runtime "node" {
    build "true"
    unit { exec "/usr/bin/node" "{current}/index.js"; }
}
"#;

    /// The phase graph of a deploy of every service, with `unit_changes`
    /// by service index (the rest unchanged): each action's `after` by id,
    /// the action ids in order, and the installs.
    fn go(
        services: &str,
        files: &[&str],
        changed: &[(usize, UnitChange)],
    ) -> (HashMap<String, Vec<String>>, Vec<String>, Vec<usize>) {
        let w = World::new(&format!("{HEAD}{services}"), files).redeploy();
        let n = w.config.services.len();
        let affected: BTreeMap<usize, Affected> = (0..n)
            .map(|i| {
                let a = Affected {
                    reasons: vec!["a path changed".to_owned()],
                    paths: Vec::new(),
                    migrate: Vec::new(),
                };
                (i, a)
            })
            .collect();
        let mut unit_changes: BTreeMap<usize, (UnitChange, Option<String>)> =
            (0..n).map(|i| (i, (UnitChange::Unchanged, None))).collect();
        for (i, c) in changed {
            unit_changes.insert(*i, (*c, None));
        }
        let target = w.repo.snapshot(&w.changes.to.sha).unwrap();
        let mut g = Graph::default();
        let prepared = prepare(&w.inputs(), &target, &affected, &mut g, &mut Vec::new());
        let installs = go_live(
            &w.inputs(),
            &affected,
            &unit_changes,
            &[],
            &prepared,
            &mut g,
        );
        let actions = g.ordered().unwrap();
        let order = actions.iter().map(|a| a.id.clone()).collect();
        let after = actions.into_iter().map(|a| (a.id, a.after)).collect();
        (after, order, installs.into_keys().collect())
    }

    #[test]
    fn installs_then_one_reload_then_restarts_phase_by_phase() {
        let (after, order, installs) = go(
            r#"
service "api" { runtime "node"; port 1; phase "core"; }
service "worker" { runtime "node"; port 2; phase "core"; depends-on "api"; }
service "web" { runtime "node"; port 3; phase "edge"; }
proxy "nginx" { unit "nginx.service"; check "nginx" "-t"; }
"#,
            &["services/api/a", "services/worker/a", "services/web/a"],
            &[(0, UnitChange::New)],
        );
        assert_eq!(installs, [0]);
        assert_eq!(
            after["install-unit:api"],
            ["build:api", "build:worker", "build:web"]
        );
        assert_eq!(after["daemon-reload"], ["install-unit:api"]);
        assert_eq!(after["restart:api"], ["daemon-reload"]);
        assert_eq!(after["health:api"], ["restart:api"]);
        // depends-on orders restarts inside a phase.
        assert_eq!(after["restart:worker"], ["daemon-reload", "health:api"]);
        // The next phase waits for what nothing in this one waits on.
        assert_eq!(after["restart:web"], ["health:worker"]);
        assert_eq!(after["reload-proxy"], ["health:web"]);
        assert_eq!(order.last().map(String::as_str), Some("reload-proxy"));
        assert!(!after.contains_key("built"));
        assert!(!after.contains_key("ready:core"));
    }

    #[test]
    fn barriers_stand_between_many_and_many() {
        let (after, order, installs) = go(
            r#"
service "a1" { runtime "node"; port 1; phase "core"; }
service "a2" { runtime "node"; port 2; phase "core"; }
service "a3" { runtime "node"; port 3; phase "core"; }
service "b1" { runtime "node"; port 4; phase "edge"; }
service "b2" { runtime "node"; port 5; phase "edge"; }
service "b3" { runtime "node"; port 6; phase "edge"; }
"#,
            &["services/a1/x", "services/a2/x", "services/a3/x"]
                .into_iter()
                .chain(["services/b1/x", "services/b2/x", "services/b3/x"])
                .collect::<Vec<_>>(),
            &[],
        );
        assert!(installs.is_empty());
        assert!(!after.contains_key("daemon-reload"));
        let builds: Vec<String> = ["a1", "a2", "a3", "b1", "b2", "b3"]
            .map(|s| format!("build:{s}"))
            .to_vec();
        assert_eq!(after["built"], builds);
        for s in ["a1", "a2", "a3"] {
            assert_eq!(after[&format!("restart:{s}")], ["built"]);
        }
        assert_eq!(after["ready:core"], ["health:a1", "health:a2", "health:a3"]);
        for s in ["b1", "b2", "b3"] {
            assert_eq!(after[&format!("restart:{s}")], ["ready:core"]);
        }
        // One phase follows: no barrier after the last.
        assert!(!after.contains_key("ready:edge"));
        assert_eq!(order.len(), 6 + 1 + 12 + 1);
    }
}

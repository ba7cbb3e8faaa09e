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

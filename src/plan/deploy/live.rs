//! Stage 3, the phase graph: what changes what is live, after every build
//! and migration (a "built" barrier where it saves edges). Unit files are
//! installed and systemd re-reads them once; then, phase by phase, each
//! affected service restarts and its health is checked, `depends-on`
//! ordering restarts inside a phase and a "ready" barrier standing between
//! phases where it saves edges; the proxy reloads last.

use std::collections::{BTreeMap, BTreeSet};

use super::affected::Affected;
use super::graph::Graph;
use super::prepare::Prepared;
use super::{Inputs, release_dir, units};
use crate::plan::lifecycle::{Bounce, Lifecycle, Order, ProxyReload, UnitFile, UnitWrite, Walk};
use crate::plan::{UnitChange, UnitSource, short};

/// Adds the installs, the daemon-reload, the restarts and health checks
/// and the proxy reload to `g` ([`Lifecycle`] walks the phases); returns
/// the services whose unit file it installs.
pub(super) fn go_live(
    inp: &Inputs<'_>,
    affected: &BTreeMap<usize, Affected>,
    unit_changes: &BTreeMap<usize, (UnitChange, Option<String>)>,
    proxy_hits: &[&str],
    prepared: &Prepared,
    g: &mut Graph,
) -> BTreeSet<usize> {
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
    let s_of = |i: &usize| &config.services[*i];
    let mut life = Lifecycle::new(config, Order::Forward);
    life.after = last_prepare;
    life.after_barrier = Some((
        "built",
        "every build and migration succeeded; nothing live has changed before this point",
    ));
    life.units = unit_changes
        .iter()
        .filter(|(_, (c, _))| c.installs())
        .flat_map(|(i, (change, _))| {
            let s = s_of(i);
            let unit = UnitFile {
                service: s.name.clone(),
                unit: s.unit_name.clone(),
                write: UnitWrite::Install {
                    source: UnitSource::Config,
                },
                reason: match change {
                    UnitChange::New => "unit file is not installed yet".to_owned(),
                    UnitChange::Adopt => units::adopt_reason(s, host),
                    _ => "unit file differs from the installed one".to_owned(),
                },
                // A scheduled job is started by its timer, which is what
                // is enabled.
                enable: s.schedule.is_none(),
            };
            // A scheduled service's timer goes with its unit.
            let timer = s.timer_unit().map(|t| UnitFile {
                service: s.name.clone(),
                reason: format!(
                    "timer of {}: OnCalendar={}",
                    s.unit_name,
                    s.schedule.as_ref().map_or("", |c| c.calendar.as_str())
                ),
                unit: t,
                write: UnitWrite::Install {
                    source: UnitSource::Config,
                },
                enable: true,
            });
            std::iter::once(unit).chain(timer)
        })
        .collect();
    let installs: BTreeSet<usize> = unit_changes
        .iter()
        .filter(|(_, (c, _))| c.installs())
        .map(|(i, _)| *i)
        .collect();
    let restarting: BTreeSet<usize> = affected.keys().chain(&installs).copied().collect();
    life.walk = restarting
        .iter()
        .map(|i| {
            let deploy = affected.contains_key(i);
            Walk {
                service: *i,
                bounce: Bounce::Restart {
                    release: deploy.then(|| release_dir(env, s_of(i), &to.sha)),
                },
                reason: if deploy {
                    format!("switch to release {}", short(&to.sha))
                } else {
                    "unit file changed".to_owned()
                },
            }
        })
        .collect();
    if config.proxy.is_some() && (!restarting.is_empty() || !proxy_hits.is_empty()) {
        life.proxy = Some(ProxyReload::Upstreams {
            config_changed: proxy_hits.iter().map(|h| (*h).to_owned()).collect(),
        });
    }
    life.walk(g);
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
        (after, order, installs.into_iter().collect())
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

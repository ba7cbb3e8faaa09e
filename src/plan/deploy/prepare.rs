//! Stage 3, actions per service before anything live changes: in go the
//! affected services, out come a `build` action for each (with its
//! dependency-cache note), a `migrate` action for each that migrates, the
//! environment's one `backup` before the first migration, and the chain
//! that runs migrations one after another in start order.

use std::collections::BTreeMap;

use super::affected::Affected;
use super::graph::Graph;
use super::{Inputs, release_dir};
use crate::config::FirstDeploy;
use crate::git::Snapshot;
use crate::plan::{Action, ActionKind, Command, Step, short};
use crate::template::{self, Vars};
use crate::unit;

/// The preparing actions, by index in the graph.
#[derive(Debug, Default)]
pub(super) struct Prepared {
    /// Service index → its build.
    pub(crate) builds: BTreeMap<usize, usize>,
    /// (service index, its migration), in the order they run.
    pub(crate) migrations: Vec<(usize, usize)>,
}

/// Adds the builds, migrations and backup of the affected services to `g`.
pub(super) fn prepare(
    inp: &Inputs<'_>,
    target: &Snapshot<'_>,
    affected: &BTreeMap<usize, Affected>,
    g: &mut Graph,
    notes: &mut Vec<String>,
) -> Prepared {
    let Inputs {
        config,
        env,
        changes,
        host,
        repo,
        ..
    } = *inp;
    let to = &changes.to;
    let first_deploy = changes.from.is_none();
    let state = host.state.as_ref();

    let mut builds: BTreeMap<usize, usize> = BTreeMap::new();
    let mut migrations: Vec<(usize, usize)> = Vec::new();
    for (i, a) in affected {
        let s = &config.services[*i];
        let rt = config.runtime_of(s);
        let release = release_dir(env, s, &to.sha);
        let current = unit::current_link(env, &s.name);
        let vars = Vars {
            service: Some(&s.name),
            port: s.port,
            root: Some(&env.root),
            release: Some(&release),
            current: Some(&current),
            backup: None,
        };
        let build_cmd = rt.and_then(|r| r.build.as_ref());
        let deps_note = match rt.and_then(|r| r.deps.as_ref().map(|d| (r, d))) {
            Some((r, d)) => {
                let inputs = crate::deps::input_ids(target, s, &d.inputs);
                // The release the service runs now (or, planned away from
                // the host, the revision deployed before).
                let live_rev = match state {
                    Some(st) => st.services.get(&s.name).map(|l| l.revision.clone()),
                    None => changes.from.as_ref().map(|f| f.sha.clone()),
                };
                let live_inputs = live_rev
                    .and_then(|rev| repo.snapshot(&rev).ok())
                    .map(|snap| crate::deps::input_ids(&snap, s, &d.inputs));
                let argv = crate::deps::argv(&d.command.argv, s, env);
                let key = crate::deps::plan_key(&r.name, &argv, &d.outputs, &inputs);
                let cached = host.deps_cache.as_ref().map(|c| c.contains(&key));
                Some(crate::deps::plan_note(
                    &inputs,
                    live_inputs.as_deref(),
                    cached,
                ))
            }
            None => None,
        };
        let mut reason = format!(
            "new release {} of {}: {}",
            short(&to.sha),
            s.name,
            a.reasons.join("; ")
        );
        if let Some(note) = deps_note {
            reason = format!("{reason}; {note}");
        }
        let id = g.push(
            Action {
                id: format!("build:{}", s.name),
                service: Some(s.name.clone()),
                phase: Some(s.phase.clone()),
                reason,
                after: Vec::new(),
                step: Step::Build {
                    artifact: None,
                    release: release.clone(),
                    command: build_cmd.map(|c| Command {
                        argv: template::render_all(&c.argv, &vars),
                        timeout_secs: c.timeout.as_secs(),
                    }),
                },
            },
            (s.phase_index, ActionKind::Build, *i),
        );
        builds.insert(*i, id);
        if !a.migrate.is_empty()
            && let Some(m) = rt.and_then(|r| r.migrate.as_ref())
        {
            let why = a.migrate.join("; ");
            let mid = g.push(
                Action {
                    id: format!("migrate:{}", s.name),
                    service: Some(s.name.clone()),
                    phase: Some(s.phase.clone()),
                    reason: why,
                    after: Vec::new(),
                    step: Step::Migrate {
                        release: release.clone(),
                        command: Command {
                            argv: template::render_all(&m.command.argv, &vars),
                            timeout_secs: m.command.timeout.as_secs(),
                        },
                    },
                },
                (s.phase_index, ActionKind::Migrate, *i),
            );
            g.edge(id, mid);
            migrations.push((*i, mid));
        }
    }
    // One backup before the first migration, where the environment has one
    // (and, on a first deploy, only if its backup block asks for it: the
    // database may not exist before the first migration creates it).
    let names: Vec<&str> = migrations
        .iter()
        .map(|(i, _)| config.services[*i].name.as_str())
        .collect();
    if let Some(b) = &env.backup
        && !migrations.is_empty()
        && first_deploy
        && b.first_deploy == FirstDeploy::Skip
    {
        notes.push(format!(
            "first deploy: nothing to back up yet, so no backup is taken before the migrations of {} (the backup block's first-deploy \"skip\"; write first-deploy \"backup\" if the database already holds data)",
            names.join(", ")
        ));
    } else if !migrations.is_empty()
        && let Some(b) = &env.backup
    {
        let bid = g.push(
            Action {
                id: "backup".to_owned(),
                service: None,
                phase: None,
                reason: format!(
                    "environment {} backs up the database before migrations ({} migrate{})",
                    env.name,
                    names.join(", "),
                    if names.len() == 1 { "s" } else { "" }
                ),
                after: Vec::new(),
                step: Step::Backup {
                    command: Command {
                        argv: template::render_all(
                            &b.run.argv,
                            &Vars {
                                root: Some(&env.root),
                                ..Vars::default()
                            },
                        ),
                        timeout_secs: b.run.timeout.as_secs(),
                    },
                },
            },
            (0, ActionKind::Backup, 0),
        );
        if let Some((_, first)) = migrations.first() {
            g.edge(bid, *first);
        }
    }
    // Migrations run one after another, in start order: two services'
    // migrations against one database must not interleave.
    for w in migrations.windows(2) {
        g.edge(w[0].1, w[1].1);
    }
    Prepared { builds, migrations }
}

#[cfg(test)]
mod tests {
    use super::super::testing::World;
    use super::*;

    const CONFIG: &str = r#"
project "p" { unit-name "p-{service}.service" }
environment "staging" {
    branch "main"
    root "/srv/p"
    backup { run "backup" "{root}/db.dump"; restore "restore" "{backup}"; }
}
phase "core"
runtime "node" {
    build "npm" "run" "build" "{release}"
    migrate "node" "migrate.js" if-exists="migrations/1.sql" inputs="migrations"
}
service "api" { runtime "node"; port 1; phase "core"; }
service "web" { runtime "node"; port 2; phase "core"; }
service "docs" { runtime "node"; port 3; phase "core"; }
"#;

    const FILES: &[&str] = &[
        "services/api/migrations/1.sql",
        "services/web/migrations/1.sql",
        "services/docs/index.md",
    ];

    fn affected(which: &[(usize, &[&str])]) -> BTreeMap<usize, Affected> {
        which
            .iter()
            .map(|(i, migrate)| {
                let a = Affected {
                    reasons: vec!["a path changed".to_owned()],
                    paths: Vec::new(),
                    migrate: migrate.iter().map(|m| (*m).to_owned()).collect(),
                };
                (*i, a)
            })
            .collect()
    }

    fn run(w: &World, affected: &BTreeMap<usize, Affected>) -> (Vec<Action>, Vec<String>) {
        let target = w.repo.snapshot(&w.changes.to.sha).unwrap();
        let mut g = Graph::default();
        let mut notes = Vec::new();
        prepare(&w.inputs(), &target, affected, &mut g, &mut notes);
        (g.ordered().unwrap(), notes)
    }

    #[test]
    fn a_build_per_service_and_migrations_after_one_backup_one_at_a_time() {
        let w = World::new(CONFIG, FILES).redeploy();
        let (actions, notes) = run(
            &w,
            &affected(&[
                (0, &["migration inputs changed"]),
                (1, &["restored"]),
                (2, &[]),
            ]),
        );
        assert!(notes.is_empty());
        let got: Vec<(&str, Vec<String>)> = actions
            .iter()
            .map(|a| (a.id.as_str(), a.after.clone()))
            .collect();
        let after = |ids: &[&str]| ids.iter().map(|i| (*i).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            got,
            [
                ("backup", after(&[])),
                // Ready together: builds before migrations (the kind).
                ("build:api", after(&[])),
                ("build:web", after(&[])),
                ("build:docs", after(&[])),
                ("migrate:api", after(&["backup", "build:api"])),
                ("migrate:web", after(&["build:web", "migrate:api"])),
            ]
        );
        let sha = &w.changes.to.sha;
        let Step::Build {
            release, command, ..
        } = &actions[1].step
        else {
            panic!("{:?}", actions[1].step);
        };
        assert_eq!(*release, format!("/srv/p/api/releases/{sha}"));
        assert_eq!(
            command.as_ref().unwrap().argv,
            ["npm", "run", "build", release]
        );
        assert!(
            actions[0].reason.contains("(api, web migrate)"),
            "{}",
            actions[0].reason
        );
        assert_eq!(actions[4].reason, "migration inputs changed");
        let Step::Backup { command } = &actions[0].step else {
            panic!("{:?}", actions[0].step);
        };
        assert_eq!(command.argv, ["backup", "/srv/p/db.dump"]);
    }

    #[test]
    fn a_first_deploy_skips_the_backup_and_says_so() {
        let w = World::new(CONFIG, FILES);
        let (actions, notes) = run(&w, &affected(&[(0, &["first deploy"]), (2, &[])]));
        let ids: Vec<&str> = actions.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["build:api", "build:docs", "migrate:api"]);
        assert_eq!(notes.len(), 1);
        assert!(
            notes[0].starts_with("first deploy: nothing to back up yet"),
            "{}",
            notes[0]
        );
        assert!(notes[0].contains("migrations of api"), "{}", notes[0]);
    }
}

//! Stage 1, affected services: which services a change touches, and why.
//! In go the configuration, the changed paths, the target tree and what the
//! host reports; out come, per affected service, the reasons it gets a new
//! release, the changed paths that touch it and why it migrates (if it
//! does). A service is affected by a change under its own path or a watched
//! path, by being deployed for the first time, by a live release whose
//! inputs differ from the target's, or by a database that is behind its code.

use std::collections::{BTreeMap, HashMap};

use super::{Inputs, MigrateCheck, PlanError, count, list};
use crate::config::Config;
use crate::git::{Changes, GitError, Snapshot};
use crate::plan::short;

/// Why one service is affected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Affected {
    pub(crate) reasons: Vec<String>,
    pub(crate) paths: Vec<String>,
    /// Why it migrates; empty: it does not.
    pub(crate) migrate: Vec<String>,
}

/// The changed paths that touch one service, each listed once, in the
/// order of the change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct ServiceHits<'a> {
    /// Under the service's own path.
    pub(crate) own: Vec<&'a str>,
    /// Under one of its `watch` paths.
    pub(crate) watched: Vec<&'a str>,
}

impl ServiceHits<'_> {
    pub(crate) fn is_empty(&self) -> bool {
        self.own.is_empty() && self.watched.is_empty()
    }
}

/// Which changed paths touch what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Hits<'a> {
    /// By service index of the configuration.
    pub(crate) services: Vec<ServiceHits<'a>>,
    /// Changed paths the proxy watches.
    pub(crate) proxy: Vec<&'a str>,
}

/// Matches every changed path (and, for a rename, where it came from)
/// against the services' paths and watched paths and the proxy's watched
/// paths, by directory prefix.
pub(super) fn path_hits<'a>(config: &Config, changes: &'a Changes) -> Hits<'a> {
    let mut by_prefix: HashMap<&str, Vec<(usize, bool)>> = HashMap::new();
    for (i, s) in config.services.iter().enumerate() {
        by_prefix
            .entry(s.path.as_str())
            .or_default()
            .push((i, false));
        for w in &s.watch {
            by_prefix.entry(w.as_str()).or_default().push((i, true));
        }
    }
    let mut services = vec![ServiceHits::default(); config.services.len()];
    let mut proxy: Vec<&str> = Vec::new();
    for cp in &changes.paths {
        let candidates = [Some(cp.path.as_str()), cp.from.as_deref()];
        for path in candidates.into_iter().flatten() {
            for prefix in prefixes(path) {
                if let Some(hits) = by_prefix.get(prefix) {
                    for (i, watched) in hits {
                        let h = &mut services[*i];
                        let v = if *watched { &mut h.watched } else { &mut h.own };
                        if v.last() != Some(&cp.path.as_str()) {
                            v.push(&cp.path);
                        }
                    }
                }
                if let Some(p) = &config.proxy
                    && p.watch.iter().any(|w| w == prefix)
                    && proxy.last() != Some(&cp.path.as_str())
                {
                    proxy.push(&cp.path);
                }
            }
        }
    }
    Hits { services, proxy }
}

/// The affected services by index, with their reasons; notes what the
/// host could not tell.
pub(super) fn affected_services(
    inp: &Inputs<'_>,
    target: &Snapshot<'_>,
    hits: &Hits<'_>,
    notes: &mut Vec<String>,
) -> Result<BTreeMap<usize, Affected>, PlanError> {
    let Inputs {
        config,
        changes,
        host,
        repo,
        ..
    } = *inp;
    let to = &changes.to;
    let first_deploy = changes.from.is_none();
    let state = host.state.as_ref();
    let mut live_trees: HashMap<String, Snapshot<'_>> = HashMap::new();
    let mut affected: BTreeMap<usize, Affected> = BTreeMap::new();
    for (i, s) in config.services.iter().enumerate() {
        if !target.is_dir(&s.path) {
            return Err(GitError::ServiceMissing {
                service: s.name.clone(),
                path: s.path.clone(),
                rev: to.sha.clone(),
            }
            .into());
        }
        let live = state.and_then(|st| st.services.get(&s.name));
        let mut reasons = Vec::new();
        let mut paths: Vec<String> = Vec::new();
        if first_deploy {
            reasons.push("first deploy: nothing is recorded as deployed".to_owned());
        } else if live.is_none() && state.is_some() {
            reasons.push("never deployed to this environment".to_owned());
        }
        let ServiceHits { own, watched } = &hits.services[i];
        if !own.is_empty() {
            let under = if s.is_root() {
                "in the repository".to_owned()
            } else {
                format!("under {}/", s.path)
            };
            reasons.push(format!(
                "{} {under}: {}",
                count(own.len(), "path changed", "paths changed"),
                list(own)
            ));
            paths.extend(own.iter().map(|p| (*p).to_owned()));
        }
        if !watched.is_empty() {
            reasons.push(format!(
                "watched {}: {}",
                count(watched.len(), "path changed", "paths changed"),
                list(watched)
            ));
            paths.extend(watched.iter().map(|p| (*p).to_owned()));
        }
        if let (Some(live), Some(from)) = (live, &changes.from)
            && live.revision != from.sha
            && live.revision != to.sha
        {
            // It runs a release other than the deployed revision's (its last
            // change was older, or it was rolled back by hand): compare its
            // own inputs at that release with the target.
            if !live_trees.contains_key(&live.revision) {
                live_trees.insert(live.revision.clone(), repo.snapshot(&live.revision)?);
            }
            let mut differ = Vec::new();
            if let Some(old) = live_trees.get(&live.revision) {
                for p in std::iter::once(&s.path).chain(&s.watch) {
                    if old.path_id(p) != target.path_id(p) {
                        differ.push(if s.is_root() && *p == s.path {
                            "the repository"
                        } else {
                            p.as_str()
                        });
                    }
                }
            }
            if !differ.is_empty() && hits.services[i].is_empty() {
                reasons.push(format!(
                    "its live release {} differs from {} in {}",
                    short(&live.revision),
                    short(&to.sha),
                    list(&differ)
                ));
            }
        }
        // Migrations: only where the runtime migrates and the `if-exists`
        // file exists at the target.
        let migrate_step = config
            .runtime_of(s)
            .and_then(|r| r.migrate.as_ref())
            .filter(|m| {
                m.if_exists
                    .as_ref()
                    .is_none_or(|f| target.exists(&s.join(f)))
            });
        // The database, not only git: a restore or `migrate-status` says
        // the schema of a deployed service is behind its code.
        let database_why = match (migrate_step, live) {
            (Some(_), Some(_)) => database_reasons(
                state.and_then(|st| st.database_restored.as_ref()),
                host.migrate_status.get(&s.name),
            ),
            _ => Vec::new(),
        };
        if migrate_step.is_some()
            && let Some(MigrateCheck::Unavailable(why)) = host.migrate_status.get(&s.name)
        {
            notes.push(format!(
                "{}: migrate-status could not tell whether migrations are pending ({why}); its migrations are planned from git alone",
                s.name
            ));
        }
        reasons.extend(database_why.iter().cloned());
        if reasons.is_empty() {
            continue;
        }
        let mut migrate = Vec::new();
        if let Some(m) = migrate_step {
            let inputs = s.join(&m.inputs);
            let migrate_paths: Vec<&str> = paths
                .iter()
                .filter(|p| prefixes(p).any(|pre| pre == inputs))
                .map(String::as_str)
                .collect();
            // Never deployed here: only when the host's state says so.
            // Without state (a plan between two revisions) the service
            // runs `from`, and its migrations ran with it.
            let never_deployed = state.is_some() && live.is_none();
            if !migrate_paths.is_empty() {
                migrate.push(format!(
                    "migration inputs changed: {}",
                    list(&migrate_paths)
                ));
            } else if first_deploy || never_deployed {
                migrate.push("first deploy of a service with migrations".to_owned());
            }
            migrate.extend(database_why);
        }
        affected.insert(
            i,
            Affected {
                reasons,
                paths,
                migrate,
            },
        );
    }
    Ok(affected)
}

/// Why a deployed service migrates although git may not say so: the
/// database was restored from a backup, or `migrate-status` reports
/// pending migrations.
fn database_reasons(
    restored: Option<&crate::state::DatabaseRestore>,
    status: Option<&MigrateCheck>,
) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(r) = restored {
        out.push(format!(
            "the database was restored from {}; migrations run again",
            r.describe()
        ));
    }
    if status == Some(&MigrateCheck::Pending) {
        out.push("migrate-status reports pending migrations".to_owned());
    }
    out
}

/// `a/b/c` → `a/b/c`, `a/b`, `a`.
/// `path` and every directory above it, up to the repository itself
/// ([`crate::config::ROOT_PATH`], which holds every path: a service there
/// is affected by every change).
fn prefixes(path: &str) -> impl Iterator<Item = &str> {
    let mut cur = Some(path);
    std::iter::from_fn(move || {
        let p = cur?;
        cur = match p.rsplit_once('/') {
            Some((head, _)) => Some(head),
            None if p == crate::config::ROOT_PATH => None,
            None => Some(crate::config::ROOT_PATH),
        };
        Some(p)
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::World;
    use super::*;
    use crate::git::{ChangedPath, Rev};

    const CONFIG: &str = r#"
project "p" { unit-name "p-{service}.service" }
environment "staging" { branch "main"; root "/srv/p" }
phase "core"
runtime "node" { build "true"; }
service "api" { runtime "node"; port 1; phase "core"; path "services/api"; watch "shared"; }
service "web" { runtime "node"; port 2; phase "core"; path "services/web"; }
proxy "nginx" { unit "nginx.service"; watch "deploy/nginx"; }
"#;

    fn changes(paths: &[(&str, Option<&str>)]) -> Changes {
        let rev = |sha: &str| Rev {
            spec: sha.to_owned(),
            sha: sha.to_owned(),
            summary: String::new(),
        };
        Changes {
            from: Some(rev("a")),
            to: rev("b"),
            paths: paths
                .iter()
                .map(|(path, from)| ChangedPath {
                    path: (*path).to_owned(),
                    from: from.map(str::to_owned),
                    status: if from.is_some() {
                        "renamed"
                    } else {
                        "modified"
                    }
                    .to_owned(),
                })
                .collect(),
            non_ancestor: false,
        }
    }

    #[test]
    fn changed_paths_hit_services_by_directory_and_the_proxy_by_watch() {
        let config = crate::config::parse("t.kdl", CONFIG).unwrap();
        let changes = changes(&[
            ("deploy/nginx/site.conf", None),
            // Renamed out of web: it is web's change, named by where it went.
            ("old/place.js", Some("services/web/place.js")),
            ("services/api/src/a.js", None),
            ("services/api/src/b.js", None),
            // A longer name is not a directory of web.
            ("services/webby/x.js", None),
            ("shared/lib.js", None),
        ]);
        let hits = path_hits(&config, &changes);
        assert_eq!(
            hits.services,
            [
                ServiceHits {
                    own: vec!["services/api/src/a.js", "services/api/src/b.js"],
                    watched: vec!["shared/lib.js"],
                },
                ServiceHits {
                    own: vec!["old/place.js"],
                    watched: vec![],
                },
            ]
        );
        assert_eq!(hits.proxy, ["deploy/nginx/site.conf"]);
    }

    #[test]
    fn a_change_elsewhere_hits_nothing() {
        let config = crate::config::parse("t.kdl", CONFIG).unwrap();
        let changes = changes(&[("README.md", None), ("services/webby/x.js", None)]);
        let hits = path_hits(&config, &changes);
        assert!(hits.services.iter().all(ServiceHits::is_empty));
        assert!(hits.proxy.is_empty());
    }

    #[test]
    fn path_prefixes() {
        let got: Vec<&str> = prefixes("services/backend/src/a.js").collect();
        assert_eq!(
            got,
            [
                "services/backend/src/a.js",
                "services/backend/src",
                "services/backend",
                "services",
                "."
            ]
        );
        assert_eq!(prefixes("go.mod").collect::<Vec<_>>(), ["go.mod", "."]);
        assert_eq!(prefixes(".").collect::<Vec<_>>(), ["."]);
    }

    #[test]
    fn the_database_decides_too() {
        let restored = crate::state::DatabaseRestore {
            backup: "p-e-1".into(),
            apply_id: Some("a1".into()),
            restored_at: 0,
        };
        let by_hand = crate::state::DatabaseRestore {
            apply_id: None,
            ..restored.clone()
        };
        let restore_why = "the database was restored from backup p-e-1 (taken before apply a1); migrations run again";
        let pending = "migrate-status reports pending migrations";
        let unknown = MigrateCheck::Unavailable("no release".into());
        let cases: &[(
            Option<&crate::state::DatabaseRestore>,
            Option<&MigrateCheck>,
            &[&str],
        )] = &[
            (None, None, &[]),
            (None, Some(&MigrateCheck::UpToDate), &[]),
            (None, Some(&unknown), &[]),
            (None, Some(&MigrateCheck::Pending), &[pending]),
            (Some(&restored), None, &[restore_why]),
            (
                Some(&by_hand),
                Some(&MigrateCheck::UpToDate),
                &["the database was restored from backup p-e-1; migrations run again"],
            ),
            (
                Some(&restored),
                Some(&MigrateCheck::Pending),
                &[restore_why, pending],
            ),
        ];
        for (r, st, want) in cases {
            assert_eq!(database_reasons(*r, *st), *want, "{r:?} {st:?}");
        }
    }

    const MIGRATING: &str = r#"
project "p" { unit-name "p-{service}.service" }
environment "staging" { branch "main"; root "/srv/p" }
phase "core"
runtime "node" {
    build "true"
    migrate "node" "migrate.js" if-exists="migrations/1.sql" inputs="migrations"
}
service "api" { runtime "node"; port 1; phase "core"; }
service "web" { runtime "node"; port 2; phase "core"; }
"#;

    const FILES: &[&str] = &["services/api/migrations/1.sql", "services/web/index.js"];

    fn run(w: &World) -> (BTreeMap<usize, Affected>, Vec<String>) {
        let target = w.repo.snapshot(&w.changes.to.sha).unwrap();
        let hits = path_hits(&w.config, &w.changes);
        let mut notes = Vec::new();
        let a = affected_services(&w.inputs(), &target, &hits, &mut notes).unwrap();
        (a, notes)
    }

    #[test]
    fn a_first_deploy_affects_every_service_and_migrates_where_there_are_migrations() {
        let w = World::new(MIGRATING, FILES);
        let (a, notes) = run(&w);
        assert!(notes.is_empty());
        assert_eq!(a.len(), 2);
        assert_eq!(
            a[&0].reasons,
            ["first deploy: nothing is recorded as deployed"]
        );
        assert_eq!(a[&0].migrate, ["first deploy of a service with migrations"]);
        // No `if-exists` file: its runtime's migrations are not its own.
        assert!(a[&1].migrate.is_empty());
    }

    #[test]
    fn a_change_affects_the_services_it_is_under_and_migrates_on_migration_inputs() {
        let mut w = World::new(MIGRATING, FILES).redeploy();
        w.changes.paths = changes(&[("services/api/migrations/1.sql", None)]).paths;
        let (a, notes) = run(&w);
        assert!(notes.is_empty());
        assert_eq!(a.keys().copied().collect::<Vec<_>>(), [0]);
        assert_eq!(
            a[&0].reasons,
            ["1 path changed under services/api/: services/api/migrations/1.sql"]
        );
        assert_eq!(a[&0].paths, ["services/api/migrations/1.sql"]);
        assert_eq!(
            a[&0].migrate,
            ["migration inputs changed: services/api/migrations/1.sql"]
        );
    }

    #[test]
    fn a_service_missing_from_the_target_is_an_error_and_unknown_migrations_a_note() {
        let w = World::new(MIGRATING, &["services/api/migrations/1.sql"]);
        let target = w.repo.snapshot(&w.changes.to.sha).unwrap();
        let hits = path_hits(&w.config, &w.changes);
        let err = affected_services(&w.inputs(), &target, &hits, &mut Vec::new()).unwrap_err();
        assert!(
            matches!(err, PlanError::Git(GitError::ServiceMissing { ref service, .. }) if service == "web"),
            "{err:?}"
        );

        let mut w = World::new(MIGRATING, FILES);
        w.host.migrate_status.insert(
            "api".into(),
            MigrateCheck::Unavailable("no release to run it in".into()),
        );
        let (_, notes) = run(&w);
        assert_eq!(
            notes,
            [
                "api: migrate-status could not tell whether migrations are pending (no release to run it in); its migrations are planned from git alone"
            ]
        );
    }
}

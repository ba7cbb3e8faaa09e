//! What `rollback` and `restart` act on, decided before anything runs: the
//! host state, the kept releases and the command's `--service`/`--to` go
//! in; a plan without a build comes out ([`crate::plan::manual::restarts`]):
//! which services, which kept release each goes back to (or back to
//! nothing, when the last apply was its first deploy), which unit files go
//! back with them, and what the rollback leaves of the database; or which
//! backup `rollback --database` restores. Nothing here touches a service.

use std::collections::BTreeSet;
use std::path::Path;

use miette::Diagnostic;

use crate::config::{Backup, Config, Environment};
use crate::git::Rev;
use crate::plan::manual::{self, ManualInputs, Switch};
use crate::plan::{Operation, Plan};
use crate::release::Paths;
use crate::state::{self, BackupRecord, State};
use crate::target::Target;

#[derive(Debug, thiserror::Error, Diagnostic)]
pub(crate) enum RollbackError {
    #[error("nothing to roll back in {env}: {why}")]
    #[diagnostic(
        code(moorline::rollback::nothing),
        help(
            "`moorline status --env {env}` shows what runs; --service S --to RELEASE picks a kept release explicitly"
        )
    )]
    Nothing { env: String, why: String },
    #[error("service `{service}` has no kept release {what}")]
    #[diagnostic(code(moorline::rollback::no_release), help("{kept}"))]
    NoRelease {
        service: String,
        what: String,
        /// The kept releases, listed, and how to pick one.
        kept: String,
    },
    #[error("unknown service `{name}`")]
    #[diagnostic(code(moorline::rollback::unknown_service), help("{help}"))]
    UnknownService { name: String, help: String },
    #[error("refusing without confirmation: there is no terminal to ask on")]
    #[diagnostic(
        code(moorline::rollback::unconfirmed),
        help("review what is shown above and pass --yes")
    )]
    Unconfirmed,
    #[error("the database restore failed: {0}")]
    #[diagnostic(
        code(moorline::rollback::database),
        help(
            "the backup file is untouched; check the restore command's log in the state directory's logs/"
        )
    )]
    Database(crate::backup::BackupError),
}

/// Refuses a `--service` name the configuration does not have, with a
/// did-you-mean.
pub(crate) fn check_services(config: &Config, names: &[String]) -> Result<(), RollbackError> {
    let known: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
    for n in names {
        if !known.contains(&n.as_str()) {
            let help = crate::config::error::suggest(n, &known).map_or_else(
                || format!("services: {}", known.join(", ")),
                |s| format!("did you mean `{s}`?"),
            );
            return Err(RollbackError::UnknownService {
                name: n.clone(),
                help,
            });
        }
    }
    Ok(())
}

/// A rollback chosen from the host state: its plan, and what it leaves of
/// the database (a note for after it ran).
pub(crate) struct Chosen {
    pub(crate) plan: Plan,
    pub(crate) schema: Option<String>,
}

/// The rollback of `services` (the last apply's switched services when
/// none are named) to the release before the live one, or, with `to`, to
/// the kept release that revision prefix names. `loaded` is the host state
/// read under the lock.
pub(crate) fn choose(
    t: &Target,
    loaded: &state::Loaded,
    services: &[String],
    to: Option<&str>,
) -> Result<Chosen, RollbackError> {
    let nothing = |why: &str| RollbackError::Nothing {
        env: t.env.name.clone(),
        why: why.to_owned(),
    };
    let Some(st) = &loaded.state else {
        return Err(nothing("nothing was ever deployed"));
    };
    let names: Vec<String> = if services.is_empty() {
        st.last_apply
            .as_ref()
            .map(|a| a.switched.clone())
            .unwrap_or_default()
    } else {
        services.to_vec()
    };
    if names.is_empty() {
        return Err(nothing("the last apply switched no service"));
    }
    let mut steps = Vec::new();
    let mut undeploy = Vec::new();
    for name in &names {
        let paths = Paths::new(&t.env.root, name);
        let live = paths
            .live()
            .or_else(|| st.services.get(name).map(|s| s.revision.clone()));
        if to.is_none()
            && let Some(unit) = first_deploy_undone(st, name)
        {
            undeploy.push(manual::Undeploy {
                service: name.clone(),
                from_revision: live,
                unit,
            });
            continue;
        }
        steps.push(step_back(st, name, &paths, live, to)?);
    }
    let from = st.revision.as_ref().map(|sha| Rev {
        spec: "deployed".to_owned(),
        sha: sha.clone(),
        summary: String::new(),
    });
    let to = Rev {
        spec: if steps.is_empty() {
            "nothing deployed".to_owned()
        } else {
            "previous releases".to_owned()
        },
        sha: steps
            .first()
            .and_then(|s| s.release.clone())
            .unwrap_or_default(),
        summary: format!("rollback of {}", names.join(", ")),
    };
    let mut plan = manual::restarts(ManualInputs {
        config: t.config(),
        config_text: &t.loaded.text,
        env: &t.env,
        operation: Operation::Rollback,
        steps,
        from,
        to,
        state_sha256: loaded.sha256.clone(),
        infrastructure: false,
        undeploy,
    });
    let schema = schema_after_code_rollback(st, &t.env.name);
    plan.warnings.extend(schema.clone());
    Ok(Chosen { plan, schema })
}

/// The step taking `name` (running `live`) back to a kept release: the one
/// before the live one, or the one `to` names; with the unit file the last
/// apply replaced, when going back over it.
fn step_back(
    st: &State,
    name: &str,
    paths: &Paths,
    live: Option<String>,
    to: Option<&str>,
) -> Result<Switch, RollbackError> {
    let target = match to {
        Some(prefix) => find_release(paths, prefix).ok_or_else(|| RollbackError::NoRelease {
            service: name.to_owned(),
            what: format!("matching `{prefix}`"),
            kept: kept_releases(paths),
        })?,
        None => st
            .services
            .get(name)
            .and_then(|s| s.previous.clone())
            .ok_or_else(|| RollbackError::NoRelease {
                service: name.to_owned(),
                what: "before the live one".to_owned(),
                kept: kept_releases(paths),
            })?,
    };
    if !paths.is_built(&target) {
        return Err(RollbackError::NoRelease {
            service: name.to_owned(),
            what: format!("{} (pruned or never built)", crate::plan::short(&target)),
            kept: kept_releases(paths),
        });
    }
    // Going back over the last apply: its unit file changes go back
    // too (it saved the files it replaced).
    let unit_restore = if to.is_none() {
        st.last_apply
            .as_ref()
            .filter(|a| a.switched.iter().any(|s| s == name))
            .and_then(|a| a.previous_units.get(name).cloned().flatten())
            .filter(|p| Path::new(p).is_file())
    } else {
        None
    };
    Ok(Switch {
        service: name.to_owned(),
        reason: format!(
            "back to kept release {} (from {}; no rebuild)",
            crate::plan::short(&target),
            live.as_deref().map_or("nothing", crate::plan::short)
        ),
        release: Some(target),
        from_revision: live,
        unit_restore,
    })
}

/// How many kept releases the help lists (`keep-releases` is usually 5).
const KEPT_SHOWN: usize = 10;

/// The help of a `--to` that matches no kept release: the releases there
/// are, newest first, the live one marked, and how to pick one.
fn kept_releases(paths: &Paths) -> String {
    let live = paths.live();
    let mut kept: Vec<(std::time::SystemTime, String)> = std::fs::read_dir(paths.releases())
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.') && paths.is_built(n))
                .map(|n| {
                    let at = std::fs::metadata(paths.release(&n))
                        .and_then(|m| m.modified())
                        .unwrap_or(std::time::UNIX_EPOCH);
                    (at, n)
                })
                .collect()
        })
        .unwrap_or_default();
    if kept.is_empty() {
        return "no release of it is kept on this host: a rollback needs one built by an earlier apply".to_owned();
    }
    kept.sort_by(|a, b| b.cmp(a));
    let now = std::time::SystemTime::now();
    let shown: Vec<String> = kept
        .iter()
        .take(KEPT_SHOWN)
        .map(|(at, n)| {
            let secs = now.duration_since(*at).map_or(0, |d| d.as_secs());
            let age = humantime::format_duration(std::time::Duration::from_secs(secs));
            let live = if live.as_deref() == Some(n.as_str()) {
                ", live"
            } else {
                ""
            };
            format!("{} (built {age} ago{live})", crate::plan::short(n))
        })
        .collect();
    let more = kept.len().saturating_sub(KEPT_SHOWN);
    let more = if more > 0 {
        format!(" and {more} older")
    } else {
        String::new()
    };
    format!(
        "kept releases, newest first: {}{more}; pass one (a unique prefix is enough) with --to",
        shown.join(", ")
    )
}

/// Finds a kept release by revision prefix: the only one it matches.
fn find_release(paths: &Paths, prefix: &str) -> Option<String> {
    let mut hits: Vec<String> = std::fs::read_dir(paths.releases())
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix) && !n.starts_with('.'))
        .collect();
    hits.sort();
    (hits.len() == 1).then(|| hits.remove(0))
}

/// How `service` goes back to nothing deployed, when the last apply was its
/// first deploy: it switched it and the state has no release before the
/// live one. What happens to its unit file is what that apply recorded: it
/// installed it where there was none (removed), replaced a file it saved
/// (put back), or did not touch it (left alone).
///
/// Not after a later apply failed (and was rolled back): `rollback` then
/// has no release to go back to, as before, rather than taking down what
/// the failed apply's rollback just restored.
fn first_deploy_undone(st: &State, service: &str) -> Option<manual::UnitUndo> {
    let last = st.last_apply.as_ref()?;
    if !last.switched.iter().any(|s| s == service) {
        return None;
    }
    if st
        .last_failure
        .as_ref()
        .is_some_and(|f| apply_order(&f.id) >= apply_order(&last.id))
    {
        return None;
    }
    if st.services.get(service)?.previous.is_some() {
        return None;
    }
    Some(match last.previous_units.get(service) {
        Some(None) => manual::UnitUndo::Remove,
        Some(Some(saved)) if Path::new(saved).is_file() => manual::UnitUndo::Restore(saved.clone()),
        Some(Some(_)) | None => manual::UnitUndo::Keep,
    })
}

/// When an apply began, from its id (`SECS-MICROS-PID`, see
/// [`crate::execute::new_apply_id`]); an id of another form sorts first.
fn apply_order(id: &str) -> (u64, u64) {
    let mut parts = id.split('-').map(|p| p.parse::<u64>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// What a code-only rollback leaves of the database, when the last apply
/// migrated it or it was restored: the schema does not roll back with the
/// code.
fn schema_after_code_rollback(st: &State, env: &str) -> Option<String> {
    if let Some(r) = &st.database_restored {
        return Some(format!(
            "the database was restored from {}; this rollback switches code only, and the next deploy runs the migrations again",
            r.describe()
        ));
    }
    let last = st.last_apply.as_ref().filter(|a| a.migrated)?;
    Some(match &last.backup {
        Some(b) => format!(
            "the schema stays migrated: apply {} ran migrations and this rollback switches code only; `moorline rollback --env {env} --database` restores backup {b}, taken before them (writes since then are lost)",
            last.id
        ),
        None => format!(
            "the schema stays migrated: apply {} ran migrations and this rollback switches code only; no backup was taken before them, so moorline cannot undo them",
            last.id
        ),
    })
}

/// The backup `rollback --database` restores: the one the last apply that
/// took one took, with the environment's `backup` block that restores it.
pub(crate) fn database_backup<'e>(
    env: &'e Environment,
    st: &State,
) -> Result<(&'e Backup, BackupRecord), RollbackError> {
    let nothing = |why: &str| RollbackError::Nothing {
        env: env.name.clone(),
        why: why.to_owned(),
    };
    let Some(b) = &env.backup else {
        return Err(nothing("the environment has no backup block"));
    };
    let Some(record) = st.apply_backup().cloned() else {
        return Err(nothing("no apply has taken a backup"));
    };
    Ok((b, record))
}

/// The plan of `restart`: every service (and each phase's infrastructure
/// units), or the named ones and, with `with_dependents`, the services
/// that depend on them; in dependency order, each gated on readiness,
/// without building or switching releases. `loaded` is the host state read
/// under the lock.
pub(crate) fn restart_plan(
    t: &Target,
    loaded: &state::Loaded,
    services: &[String],
    with_dependents: bool,
) -> Result<Plan, RollbackError> {
    let steps = restart_steps(t, services, with_dependents)?;
    let live = loaded
        .state
        .as_ref()
        .and_then(|s| s.revision.clone())
        .unwrap_or_default();
    let rev = Rev {
        spec: "live".to_owned(),
        sha: live,
        summary: "restart".to_owned(),
    };
    Ok(manual::restarts(ManualInputs {
        config: t.config(),
        config_text: &t.loaded.text,
        env: &t.env,
        operation: Operation::Restart,
        steps,
        from: Some(rev.clone()),
        to: rev,
        state_sha256: loaded.sha256.clone(),
        infrastructure: services.is_empty(),
        undeploy: Vec::new(),
    }))
}

/// The steps of [`restart_plan`], in configuration order; an unknown name
/// is refused with a did-you-mean.
fn restart_steps(
    t: &Target,
    services: &[String],
    with_dependents: bool,
) -> Result<Vec<Switch>, RollbackError> {
    let config = t.config();
    check_services(config, services)?;
    let mut chosen: BTreeSet<String> = services.iter().cloned().collect();
    if with_dependents {
        loop {
            let before = chosen.len();
            for s in &config.services {
                if s.depends_on.iter().any(|d| chosen.contains(d)) {
                    chosen.insert(s.name.clone());
                }
            }
            if chosen.len() == before {
                break;
            }
        }
    }
    let all = services.is_empty();
    Ok(config
        .services
        .iter()
        .filter(|s| all || chosen.contains(&s.name))
        .map(|s| Switch {
            service: s.name.clone(),
            release: None,
            from_revision: Paths::new(&t.env.root, &s.name).live(),
            unit_restore: None,
            reason: if all || services.contains(&s.name) {
                "restart requested".to_owned()
            } else {
                "depends on a restarted service".to_owned()
            },
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_deploy_is_undone_only_when_nothing_failed_after_it() {
        let record = |id: &str| state::ApplyRecord {
            id: id.into(),
            from: None,
            to: "b".into(),
            switched: vec!["backend".into()],
            previous_units: std::collections::BTreeMap::from([("backend".into(), None)]),
            backup: None,
            migrated: false,
            outcome: crate::state::ApplyOutcome::Succeeded,
        };
        let mut st = State::default();
        st.services.insert(
            "backend".into(),
            state::ServiceState {
                revision: "b".into(),
                previous: None,
                unit_sha256: None,
                unit: None,
                artifact: None,
            },
        );
        st.last_apply = Some(record("1700000000-000100-7"));
        assert_eq!(
            first_deploy_undone(&st, "backend"),
            Some(manual::UnitUndo::Remove)
        );
        assert_eq!(first_deploy_undone(&st, "web"), None, "not switched");
        st.last_failure = Some(record("1699999999-999999-8"));
        assert_eq!(
            first_deploy_undone(&st, "backend"),
            Some(manual::UnitUndo::Remove),
            "an older failure"
        );
        st.last_failure = Some(record("1700000000-000200-9"));
        assert_eq!(first_deploy_undone(&st, "backend"), None, "failed after it");
        st.last_failure = None;
        if let Some(s) = st.services.get_mut("backend") {
            s.previous = Some("a".into());
        }
        assert_eq!(first_deploy_undone(&st, "backend"), None, "has a previous");
    }

    #[test]
    fn a_code_rollback_says_what_happens_to_the_schema() {
        let apply = |migrated: bool, backup: Option<&str>| state::ApplyRecord {
            id: "a2".into(),
            from: None,
            to: "b".into(),
            switched: vec!["backend".into()],
            previous_units: std::collections::BTreeMap::new(),
            backup: backup.map(str::to_owned),
            migrated,
            outcome: crate::state::ApplyOutcome::Succeeded,
        };
        let mut st = State::default();
        assert_eq!(schema_after_code_rollback(&st, "production"), None);
        st.last_apply = Some(apply(false, None));
        assert_eq!(schema_after_code_rollback(&st, "production"), None);
        st.last_apply = Some(apply(true, Some("b1")));
        let got = schema_after_code_rollback(&st, "production").unwrap();
        assert!(
            got.starts_with("the schema stays migrated: apply a2 ran migrations"),
            "{got}"
        );
        assert!(
            got.contains("`moorline rollback --env production --database` restores backup b1"),
            "{got}"
        );
        st.last_apply = Some(apply(true, None));
        let got = schema_after_code_rollback(&st, "production").unwrap();
        assert!(got.contains("moorline cannot undo them"), "{got}");
        st.mark_restored(
            &state::BackupRecord {
                id: "b1".into(),
                path: "/x".into(),
                size: 1,
                sha256: String::new(),
                taken_at: 0,
                revision: None,
                apply_id: Some("a2".into()),
            },
            5,
        );
        let got = schema_after_code_rollback(&st, "production").unwrap();
        assert!(
            got.starts_with("the database was restored from backup b1 (taken before apply a2)"),
            "{got}"
        );
        assert!(
            got.contains("the next deploy runs the migrations again"),
            "{got}"
        );
    }
}

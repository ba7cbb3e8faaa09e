//! The state commit: what `state.json` says after a run, written from the
//! journal's records (switches, replaced units, backups). After a success
//! the services' releases and units are recorded and old releases pruned;
//! after a failure only the outcome and the backup are. Each writes on the
//! blocking pool (it fsyncs).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::journal::Record;
use crate::plan::{ActionKind, Plan};
use crate::release::{self, Paths};
use crate::state::{self, ApplyOutcome, ApplyRecord, BackupRecord, ServiceState, State};
use crate::unit;

use super::{ApplyError, Ctx};

/// [`commit_state`] on the blocking pool: the state after a successful
/// run of `plan`, and old releases pruned.
pub(super) async fn save_success(
    ctx: &Arc<Ctx>,
    plan: &Plan,
    apply_id: &str,
    records: Vec<Record>,
) -> Result<(), ApplyError> {
    let (ctx, plan, apply_id) = (Arc::clone(ctx), plan.clone(), apply_id.to_owned());
    tokio::task::spawn_blocking(move || commit_state(&ctx, &plan, &apply_id, &records))
        .await
        .map_err(|source| ApplyError::Blocking {
            what: "writing the state and pruning releases",
            source,
        })?
}

/// [`record_outcome`] on the blocking pool (it fsyncs `state.json`).
pub(super) async fn save_outcome(
    ctx: &Arc<Ctx>,
    plan: &Plan,
    apply_id: &str,
    records: &[Record],
    outcome: ApplyOutcome,
) -> Result<(), ApplyError> {
    let (ctx, plan, apply_id, records) = (
        Arc::clone(ctx),
        plan.clone(),
        apply_id.to_owned(),
        records.to_vec(),
    );
    tokio::task::spawn_blocking(move || record_outcome(&ctx, &plan, &apply_id, &records, outcome))
        .await
        .map_err(|source| ApplyError::Blocking {
            what: "writing the state",
            source,
        })?
}

/// An apply of a deploy plan that changes nothing (a revert, a commit
/// that touches no service): its target is recorded as the deployed
/// revision ([`State::record_unchanged`]), atomically and fsync'd, on the
/// blocking pool. Nothing restarts. `Ok(false)`: nothing to record (no
/// state, the target was already the deployed one, or the plan is not
/// such a plan). The caller holds the environment's lock.
pub(crate) async fn record_unchanged(
    state_dir: &std::path::Path,
    plan: &Plan,
) -> Result<bool, ApplyError> {
    if plan.operation != crate::plan::Operation::Deploy || plan.has_changes() {
        return Ok(false);
    }
    // An unfinished apply is finished (or rolled back) first: what runs
    // here is not known until then.
    if let crate::journal::Current::Begun(r) = super::current_journal(state_dir).await?
        && !r.ended()
    {
        return Err(ApplyError::Unfinished {
            env: plan.environment.clone(),
            path: state_dir
                .join(crate::journal::JOURNAL_FILE)
                .display()
                .to_string(),
        });
    }
    let (dir, project, env, to) = (
        state_dir.to_owned(),
        plan.project.clone(),
        plan.environment.clone(),
        plan.to.sha.clone(),
    );
    crate::blocking::run(
        move || {
            let Some(mut st) = state::load(&dir, &project, &env)?.state else {
                return Ok(false);
            };
            if !st.record_unchanged(&to, crate::files::now_secs()) {
                return Ok(false);
            }
            state::save(&dir, &st)?;
            Ok(true)
        },
        |source| ApplyError::Blocking {
            what: "recording the deployed revision",
            source,
        },
    )
    .await
}

/// Writes the state after a failed apply: services unchanged, the backup
/// (if any) and the outcome recorded.
fn record_outcome(
    ctx: &Ctx,
    plan: &Plan,
    apply_id: &str,
    records: &[Record],
    outcome: ApplyOutcome,
) -> Result<(), ApplyError> {
    let loaded = state::load(&ctx.state_dir, &plan.project, &plan.environment)?;
    let mut st = loaded.state.unwrap_or_else(|| empty_state(plan));
    add_backups(&mut st, records, apply_id, ctx);
    st.last_failure = Some(ApplyRecord {
        id: apply_id.to_owned(),
        from: plan.from.as_ref().map(|f| f.sha.clone()),
        to: plan.to.sha.clone(),
        switched: Vec::new(),
        previous_units: BTreeMap::new(),
        backup: last_backup(records),
        migrated: records.iter().any(|r| {
            matches!(r, Record::Succeeded { action, .. }
                if plan.action(action).is_some_and(|a| a.kind() == ActionKind::Migrate))
        }),
        outcome,
    });
    state::save(&ctx.state_dir, &st)?;
    Ok(())
}

fn empty_state(plan: &Plan) -> State {
    State {
        format_version: state::FORMAT_VERSION,
        project: plan.project.clone(),
        environment: plan.environment.clone(),
        ..State::default()
    }
}

fn last_backup(records: &[Record]) -> Option<String> {
    records.iter().rev().find_map(|r| match r {
        Record::Backup { id, .. } => Some(id.clone()),
        _ => None,
    })
}

fn add_backups(st: &mut State, records: &[Record], apply_id: &str, ctx: &Ctx) {
    for r in records {
        if let Record::Backup {
            id,
            path,
            size,
            sha256,
        } = r
            && !st.backups.iter().any(|b| b.id == *id)
        {
            st.backups.push(BackupRecord {
                id: id.clone(),
                path: path.clone(),
                size: *size,
                sha256: sha256.clone(),
                taken_at: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                revision: st.revision.clone(),
                apply_id: Some(apply_id.to_owned()),
            });
        }
    }
    if let Some(b) = &ctx.env.backup {
        crate::backup::retain(st, b.keep as usize);
    }
}

/// Writes the state after a successful apply and prunes old releases.
fn commit_state(
    ctx: &Ctx,
    plan: &Plan,
    apply_id: &str,
    records: &[Record],
) -> Result<(), ApplyError> {
    let loaded = state::load(&ctx.state_dir, &plan.project, &plan.environment)?;
    let mut st = loaded.state.unwrap_or_else(|| empty_state(plan));
    add_backups(&mut st, records, apply_id, ctx);
    let mut switched = Vec::new();
    for r in records {
        if let Record::Switch { service, from, to } = r {
            let svc = ctx.config.service(service);
            let unit_sha = svc
                .and_then(|s| unit::render(&ctx.env, s).ok().flatten())
                .map(|u| crate::files::sha256_hex(u.as_bytes()));
            let unit_name = svc
                .filter(|_| unit_sha.is_some())
                .map(|s| s.unit_name.clone());
            let previous = match from {
                Some(f) if f != to => Some(f.clone()),
                _ => st.services.get(service).and_then(|s| s.previous.clone()),
            };
            st.services.insert(
                service.clone(),
                ServiceState {
                    revision: to.clone(),
                    previous,
                    unit_sha256: unit_sha,
                    unit: unit_name,
                    artifact: crate::artifact::installed_id(
                        &Paths::new(&ctx.env.root, service).release(to),
                    ),
                },
            );
            if !switched.contains(service) {
                switched.push(service.clone());
            }
        }
    }
    let mut previous_units = BTreeMap::new();
    for r in records {
        if let Record::UnitReplace {
            service,
            unit,
            saved,
        } = r
        {
            // A scheduled service's timer file is not its unit: the state
            // records the unit (the timer is rendered from the config).
            if ctx
                .config
                .service(service)
                .is_some_and(|s| s.timer_unit().as_deref() == Some(unit.as_str()))
            {
                continue;
            }
            previous_units.insert(service.clone(), saved.clone());
            if let Some(s) = ctx.config.service(service) {
                // What is installed now: the config's unit after a deploy,
                // the saved previous one after a rollback (not the config's).
                let sha = std::fs::read(ctx.unit_dir.join(unit))
                    .ok()
                    .map(|u| crate::files::sha256_hex(&u));
                if let Some(entry) = st.services.get_mut(service) {
                    entry.unit = sha.as_ref().map(|_| s.unit_name.clone());
                    entry.unit_sha256 = sha;
                }
            }
        }
    }
    if plan.operation == crate::plan::Operation::Deploy {
        st.revision = Some(plan.to.sha.clone());
        // A deploy planned after a database restore migrated every
        // deployed service again (the state it was planned from had the
        // mark); it succeeded, so the schema matches the code.
        st.database_restored = None;
        st.rolled_back = None;
        st.record_deploy(&plan.to.sha, crate::files::now_secs());
    }
    if plan.operation == crate::plan::Operation::Rollback {
        // Services whose first deploy this rollback undid: nothing of
        // theirs is deployed any more, so the next plan deploys them first.
        let undeployed: Vec<&str> = plan
            .services
            .iter()
            .filter(|s| s.change == crate::plan::ServiceChange::Stop)
            .map(|s| s.name.as_str())
            .collect();
        for s in &undeployed {
            st.services.remove(*s);
        }
        if !undeployed.is_empty() && st.services.is_empty() {
            st.revision = None;
        }
        st.record_manual_rollback(crate::files::now_secs());
        let mut back = switched.clone();
        back.extend(undeployed.iter().map(|s| (*s).to_owned()));
        st.rolled_back = Some(state::ManualRollback::after(
            st.rolled_back.take(),
            apply_id,
            &back,
        ));
    }
    st.last_apply = Some(ApplyRecord {
        id: apply_id.to_owned(),
        from: plan.from.as_ref().map(|f| f.sha.clone()),
        to: plan.to.sha.clone(),
        switched: switched.clone(),
        previous_units,
        backup: last_backup(records),
        migrated: plan.actions.iter().any(|a| a.kind() == ActionKind::Migrate),
        outcome: ApplyOutcome::Succeeded,
    });
    state::save(&ctx.state_dir, &st)?;
    let keep = ctx.config.project.keep_releases as usize;
    for s in &switched {
        let paths = Paths::new(&ctx.env.root, s);
        if let Some(entry) = st.services.get(s) {
            let mut protect = vec![entry.revision.as_str()];
            if let Some(p) = &entry.previous {
                protect.push(p.as_str());
            }
            release::prune(&paths, keep, &protect);
        }
    }
    // Artifacts no release is installed from any more.
    crate::artifact::gc::collect_garbage(&ctx.env.root);
    Ok(())
}

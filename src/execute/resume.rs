//! Continuing after a crash: find the unfinished apply in the journal
//! (archiving one that ended, closing one whose state was committed), stop
//! the commands it left running, and check which of its journaled
//! successes are still in effect, so only those are not run again.

use std::collections::BTreeSet;
use std::path::Path;

use crate::events::Event;
use crate::journal::{Journal, JournalError, JournalOutcome, Record, Replay};
use crate::plan::{Action, Plan, Step};
use crate::process;
use crate::release::Paths;
use crate::state;
use crate::state::ApplyOutcome;

use super::journaling::{archive_ended, current_journal};
use super::perform::unit_file::unit_text;
use super::progress::{Progress, emit};
use super::{ApplyError, Ctx};

/// The actions of `plan` that `prior` (its records from an earlier
/// process) records as succeeded and whose effect is still in place,
/// each announced as verified. Anything after an action that must run
/// again runs again too.
pub(super) async fn verified(
    ctx: &Ctx,
    plan: &Plan,
    prior: &[Record],
    progress: Progress,
) -> BTreeSet<String> {
    let mut done: BTreeSet<String> = BTreeSet::new();
    let succeeded = |id: &str| {
        prior
            .iter()
            .any(|r| matches!(r, Record::Succeeded { action, .. } if action == id))
    };
    let mut invalid: BTreeSet<String> = BTreeSet::new();
    for a in &plan.actions {
        if succeeded(&a.id) {
            if still_in_effect(ctx, plan, a).await {
                done.insert(a.id.clone());
                emit(
                    progress,
                    Event::Verified,
                    &a.id,
                    "done before the interruption",
                );
            } else {
                invalid.insert(a.id.clone());
            }
        }
    }
    for a in &plan.actions {
        if a.after.iter().any(|p| invalid.contains(p)) {
            invalid.insert(a.id.clone());
            done.remove(&a.id);
        }
    }
    done
}

/// Stops the commands the interrupted apply `replay` started that still
/// run (moorline was killed while they ran), saying so.
pub(super) async fn stop_orphans(replay: &Replay) {
    let stopped = process::orphans::stop(replay.spawned(), process::orphans::STOP_GRACE).await;
    for (action, pgid) in stopped {
        eprintln!(
            "note: stopped {action} (process group {pgid}) left running by the interrupted apply"
        );
    }
}

/// The unfinished apply in the journal, if any (a journal that ended but
/// was not archived yet is archived).
pub(super) async fn unfinished(state_dir: &Path) -> Result<Option<Replay>, ApplyError> {
    let crate::journal::Current::Begun(replay) = current_journal(state_dir).await? else {
        return Ok(None);
    };
    if replay.ended() {
        archive_ended(state_dir, Some(&replay.apply_id))?;
        return Ok(None);
    }
    if state_committed(state_dir, &replay).await? {
        // Every action succeeded and the state says so; only the end record
        // is missing (a crash between the two). Nothing is left to resume,
        // and a rollback of it is a rollback of the last apply, not of an
        // unfinished one (whose state still names the old releases).
        let (dir, id) = (state_dir.to_owned(), replay.apply_id.clone());
        let path = dir.join(crate::journal::JOURNAL_FILE).display().to_string();
        tokio::task::spawn_blocking(move || {
            Journal::reopen(&dir)?.finish(JournalOutcome::Succeeded, &id)
        })
        .await
        .map_err(|source| JournalError::Task { path, source })??;
        return Ok(None);
    }
    Ok(Some(*replay))
}

/// Whether the state records `replay`'s apply as its last successful one
/// (the state is written after the last action, before the end record).
async fn state_committed(state_dir: &Path, replay: &Replay) -> Result<bool, ApplyError> {
    let (dir, plan) = (state_dir.to_owned(), replay.plan.clone());
    let id = replay.apply_id.clone();
    tokio::task::spawn_blocking(move || {
        let loaded = state::load(&dir, &plan.project, &plan.environment)?;
        Ok(loaded
            .state
            .and_then(|s| s.last_apply)
            .is_some_and(|a| a.id == id && a.outcome == ApplyOutcome::Succeeded))
    })
    .await
    .map_err(|source| ApplyError::Blocking {
        what: "reading the state",
        source,
    })?
}

/// Re-checks, on resume, that a journaled success is still in effect.
async fn still_in_effect(ctx: &Ctx, plan: &Plan, a: &Action) -> bool {
    let active = |unit: &str| {
        let (sd, unit) = (ctx.systemd.clone(), unit.to_owned());
        async move {
            sd.status(&unit)
                .await
                .is_ok_and(|s| s.active_state == crate::systemd::ActiveState::Active)
        }
    };
    let file = |unit: &str| std::fs::read(ctx.unit_dir.join(unit)).ok();
    match &a.step {
        // A release installed from an artifact is done only if it is that
        // artifact (its marker names it).
        Step::Build { artifact, .. } => a.service.as_deref().is_none_or(|s| {
            let paths = Paths::new(&ctx.env.root, s);
            paths.is_built(&plan.to.sha)
                && artifact.as_deref().is_none_or(|id| {
                    crate::artifact::installed_id(&paths.release(&plan.to.sha)).as_deref()
                        == Some(id)
                })
        }),
        Step::Restart { unit, release, .. } => {
            let live_ok = match (release, a.service.as_deref()) {
                (Some(d), Some(s)) => std::fs::read_link(Paths::new(&ctx.env.root, s).current())
                    .is_ok_and(|t| t == Path::new(d)),
                _ => true,
            };
            live_ok && active(unit).await
        }
        Step::Start { unit, .. } => active(unit).await,
        Step::Stop { unit, unlink } => {
            unlink
                .as_deref()
                .is_none_or(|l| std::fs::symlink_metadata(l).is_err())
                && !active(unit).await
        }
        Step::InstallUnit { unit, source } => {
            let want = a
                .service
                .as_deref()
                .and_then(|s| ctx.config.service(s))
                .and_then(|svc| unit_text(ctx, source, svc, unit).ok());
            want.is_some_and(|w| file(unit).is_some_and(|h| h == w.as_bytes()))
        }
        Step::RestoreUnit { unit, saved } => {
            std::fs::read(saved).is_ok_and(|w| file(unit).is_some_and(|h| h == w))
        }
        Step::RemoveUnit { unit } => file(unit).is_none(),
        // A blue/green step is done again unless its slot still runs
        // the release: each is safe to repeat (the slot is recorded).
        Step::SlotStart { release, .. } => {
            let svc = a.service.as_deref().and_then(|s| ctx.config.service(s));
            let dir =
                svc.map(|s| std::path::PathBuf::from(crate::unit::slots_dir(&ctx.env, &s.name)));
            let next = dir
                .as_ref()
                .and_then(|d| std::fs::read_to_string(d.join("next")).ok())
                .and_then(|t| t.trim().parse::<u16>().ok());
            match (svc, dir, next) {
                (Some(svc), Some(dir), Some(slot)) => {
                    let linked = release.as_deref().is_none_or(|r| {
                        std::fs::read_link(dir.join(slot.to_string()))
                            .is_ok_and(|t| t == Path::new(r))
                    });
                    linked && active(&svc.slot_unit(slot)).await
                }
                _ => false,
            }
        }
        _ => true,
    }
}

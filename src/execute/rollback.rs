//! Rollback orchestration: after a failure, close the journal (nothing
//! live changed), leave the apply for a human (`--on-failure stop`), or
//! build its rollback plan, journal it (`rollback-begin` carries the plan)
//! and execute it like any plan; the same for an unfinished apply rolled
//! back after a crash, and for a rollback that was itself interrupted.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::events::Event;
use crate::journal::{Journal, JournalOutcome, Record, Replay};
use crate::plan::{ActionKind, Plan};
use crate::state::ApplyOutcome;

use super::commit::save_outcome;
use super::journaling::{Shared, finish_journal, journal_append, read_records};
use super::progress::emit;
use super::resume::{stop_orphans, unfinished};
use super::{ApplyError, Ctx, Outcome, Report, execute};

/// The rollback of an unfinished apply, planned and not yet executed (or
/// begun and interrupted).
pub(crate) struct PendingRollback {
    replay: Replay,
    /// The rollback plan: recorded by a rollback that began, else built
    /// from the journal's records.
    pub(crate) plan: Plan,
    /// A rollback of it began already (and is continued).
    pub(crate) begun: bool,
}

impl PendingRollback {
    pub(crate) fn apply_id(&self) -> &str {
        &self.replay.apply_id
    }

    /// Whether anything live changed under the unfinished apply.
    pub(crate) fn live_changed(&self) -> bool {
        self.begun || live_changed(&self.replay.plan, &self.replay.records)
    }
}

/// The rollback of apply `apply_id` of `plan`, planned from what its
/// journal `records` say it changed.
pub(super) fn undo_plan(ctx: &Ctx, plan: &Plan, apply_id: &str, records: &[Record]) -> Plan {
    let effects = crate::journal::effects(plan, records);
    crate::plan::undo::build(plan, apply_id, &effects, &ctx.config, &ctx.env)
}

/// The rollback of the unfinished apply in the journal, to show before it
/// runs; `None` when no apply is unfinished.
pub(crate) async fn unfinished_rollback(ctx: &Ctx) -> Result<Option<PendingRollback>, ApplyError> {
    let Some(replay) = unfinished(&ctx.state_dir).await? else {
        return Ok(None);
    };
    let (plan, begun) = match rollback_begun(&replay.records) {
        Some((_, Some(plan))) => (plan, true),
        begun => (
            undo_plan(ctx, &replay.plan, &replay.apply_id, &replay.records),
            begun.is_some(),
        ),
    };
    Ok(Some(PendingRollback {
        replay,
        plan,
        begun,
    }))
}

/// Rolls back the unfinished apply (after a crash, instead of resuming
/// it) with the plan [`unfinished_rollback`] returned: journaled, then
/// executed like any plan; a rollback that began is continued from its
/// records.
pub(crate) async fn roll_back_unfinished(
    ctx: Arc<Ctx>,
    pending: PendingRollback,
) -> Result<Report, ApplyError> {
    let started = Instant::now();
    let journal: Shared = Arc::new(Mutex::new(Journal::reopen(&ctx.state_dir)?));
    let PendingRollback {
        replay,
        plan: rollback,
        begun,
    } = pending;
    stop_orphans(&replay).await;
    let report = Report::new(&replay.apply_id, Vec::new());
    if begun {
        let at = rollback_begun(&replay.records).map_or(0, |(i, _)| i + 1);
        return roll_back(
            &ctx,
            &replay.plan,
            &replay.apply_id,
            journal,
            rollback,
            Some(&replay.records[at..]),
            report,
            started,
        )
        .await;
    }
    let reason = "rollback of an interrupted apply requested".to_owned();
    if !live_changed(&replay.plan, &replay.records) {
        return finish_failed(
            &ctx,
            &replay.plan,
            &replay.apply_id,
            journal,
            &replay.records,
            report,
            reason,
            started,
        )
        .await;
    }
    journal_append(
        &journal,
        Record::RollbackBegin {
            reason,
            plan: Some(Box::new(rollback.clone())),
        },
    )
    .await?;
    emit(
        ctx.options.progress,
        Event::Rollback,
        &replay.plan.environment,
        "of the unfinished apply",
    );
    roll_back(
        &ctx,
        &replay.plan,
        &replay.apply_id,
        journal,
        rollback,
        None,
        report,
        started,
    )
    .await
}

/// Where the rollback of an apply begins in its records, and the plan it
/// recorded (journals from before rollbacks were plans have none).
pub(super) fn rollback_begun(records: &[Record]) -> Option<(usize, Option<Plan>)> {
    records.iter().enumerate().find_map(|(i, r)| match r {
        Record::RollbackBegin { plan, .. } => Some((i, plan.as_deref().cloned())),
        _ => None,
    })
}

/// Whether anything live changed, according to the journal.
/// Whether anything live changed under `plan`, according to its records:
/// a switch, a unit file replaced, or a live action of the plan started.
fn live_changed(plan: &Plan, records: &[Record]) -> bool {
    records.iter().any(|r| match r {
        Record::Switch { .. } | Record::UnitReplace { .. } => true,
        // An install-unit changes the file only after its `unit-replace`.
        Record::Started { action, .. } => plan
            .action(action)
            .is_some_and(|a| a.kind().is_live() && a.kind() != ActionKind::InstallUnit),
        _ => false,
    })
}

/// After a failure: nothing live changed (the journal is closed), the
/// apply is left for a human (`--on-failure stop`), or it is rolled back
/// by its rollback plan, journaled (`rollback-begin` carries the plan) and
/// executed like any plan.
#[allow(clippy::too_many_arguments)]
pub(super) async fn finish_failed(
    ctx: &Arc<Ctx>,
    plan: &Plan,
    apply_id: &str,
    journal: Shared,
    records: &[Record],
    mut report: Report,
    reason: String,
    started: Instant,
) -> Result<Report, ApplyError> {
    let millis = || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    if !live_changed(plan, records) {
        save_outcome(ctx, plan, apply_id, records, ApplyOutcome::Failed).await?;
        finish_journal(journal, JournalOutcome::FailedUntouched, apply_id).await?;
        report.outcome = Outcome::FailedUntouched;
        report.millis = millis();
        return Ok(report);
    }
    let rollback = undo_plan(ctx, plan, apply_id, records);
    if !ctx.options.rollback_on_failure {
        // Left open on purpose: the journal knows what was switched, so
        // `rollback` undoes exactly this apply (with the plan shown here)
        // and `apply --resume` retries it; a new apply is refused until
        // one of them is chosen.
        save_outcome(ctx, plan, apply_id, records, ApplyOutcome::Failed).await?;
        drop(journal);
        report.outcome = Outcome::NeedsAttention;
        report.rollback_plan = Some(rollback);
        report.millis = millis();
        return Ok(report);
    }
    journal_append(
        &journal,
        Record::RollbackBegin {
            reason: reason.clone(),
            plan: Some(Box::new(rollback.clone())),
        },
    )
    .await?;
    // The failure itself was printed when it happened (`FAILED`): named
    // here, not repeated.
    let because = report.failed.first().map_or_else(
        || reason.lines().next().unwrap_or_default().to_owned(),
        |(id, _)| format!("because {id} failed"),
    );
    emit(
        ctx.options.progress,
        Event::Rollback,
        &plan.environment,
        &because,
    );
    roll_back(
        ctx, plan, apply_id, journal, rollback, None, report, started,
    )
    .await
}

/// Executes `rollback`, the rollback plan of the apply `plan` (its
/// `rollback-begin` is journaled already); `prior`: its records so far,
/// when it is resumed. Rolled back, the journal ends; otherwise it stays
/// open, so `apply --resume` or `rollback` carry the rollback on.
#[allow(clippy::too_many_arguments)]
pub(super) async fn roll_back(
    ctx: &Arc<Ctx>,
    plan: &Plan,
    apply_id: &str,
    journal: Shared,
    rollback: Plan,
    prior: Option<&[Record]>,
    mut report: Report,
    started: Instant,
) -> Result<Report, ApplyError> {
    let ex = execute(ctx, &rollback, apply_id, &journal, prior, started).await?;
    let mut rolled: Vec<String> = Vec::new();
    for id in &ex.succeeded {
        if let Some(a) = rollback.action(id)
            && matches!(
                a.kind(),
                ActionKind::Health | ActionKind::Stop | ActionKind::SlotStop
            )
            && let Some(s) = &a.service
            && !rolled.contains(s)
        {
            rolled.push(s.clone());
        }
    }
    for service in &rolled {
        let detail = match rollback.services.iter().find(|s| s.name == *service) {
            Some(s) if s.change == crate::plan::ServiceChange::Stop => {
                "stopped (no previous release)".to_owned()
            }
            Some(crate::plan::ServicePlan {
                to_revision: Some(r),
                ..
            }) => format!("back to {}", crate::plan::short(r)),
            _ => "restarted on its restored unit file".to_owned(),
        };
        emit(ctx.options.progress, Event::RolledBack, service, &detail);
    }
    report.rolled_back = rolled;
    report.rollback_errors = ex
        .failed
        .iter()
        .map(|(id, e)| format!("{id}: {e}"))
        .collect();
    report.rollback_plan = Some(rollback);
    report.millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    if ex.interrupted && ex.failed.is_empty() {
        report.outcome = Outcome::Interrupted;
        return Ok(report);
    }
    let outcome = if ex.failed.is_empty() {
        Outcome::RolledBack
    } else {
        Outcome::NeedsAttention
    };
    let records = read_records(&ctx.state_dir).await?;
    save_outcome(
        ctx,
        plan,
        apply_id,
        &records,
        if outcome == Outcome::RolledBack {
            ApplyOutcome::RolledBack
        } else {
            ApplyOutcome::RollbackFailed
        },
    )
    .await?;
    if outcome == Outcome::RolledBack {
        finish_journal(journal, JournalOutcome::RolledBack, apply_id).await?;
    }
    report.outcome = outcome;
    Ok(report)
}

#[cfg(test)]
mod tests {
    /// A `rollback-begin` written before rollbacks were plans has none: it
    /// is read, and the rollback plan is then built from the records.
    #[test]
    fn an_old_rollback_begin_without_a_plan_is_read() {
        let old: crate::journal::Record =
            serde_json::from_str(r#"{"event":"rollback-begin","reason":"x failed"}"#).unwrap();
        let records = vec![
            crate::journal::Record::Started {
                action: "restart:a".into(),
                at_ms: None,
            },
            old,
        ];
        assert_eq!(
            super::rollback_begun(&records).map(|(i, p)| (i, p.is_none())),
            Some((1, true))
        );
        assert_eq!(super::rollback_begun(&records[..1]).map(|(i, _)| i), None);
    }
}

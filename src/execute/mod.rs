//! The executor: a `Plan` → effects on the host, the only stage that
//! changes anything. Actions start as soon as their predecessors succeeded
//! (builds bounded by `jobs`), in the order [`scheduler`] decides; every
//! start and outcome goes to the write-ahead journal first (`journaling`);
//! on the first failure or a signal nothing new starts and, once something
//! live changed, every switched service is rolled back (`rollback`).
//! `resume` continues a journal left by a crash without redoing work whose
//! effect is still in place. The steps themselves are in `perform`, the
//! state written after a run in `commit`, what the user sees in `progress`.
//!
//! The one executor of deploys, rollbacks (automatic or asked for),
//! restarts and start/stop/enable/disable: they differ in the plan they
//! execute, not in the loop that executes it ([`execute`]).

mod commit;
mod journaling;
mod perform;
mod progress;
mod resume;
mod rollback;
pub mod scheduler;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use miette::Diagnostic;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::config::Environment;
use crate::events::Event;
use crate::journal::{Journal, JournalError, JournalOutcome, Record, Replay};
use crate::plan::{ActionKind, Plan};
use crate::state;
use crate::systemd::Systemd;

use journaling::{
    Shared, archive_ended, current_journal, finish_journal, journal_append, millis_since,
    read_records,
};
use perform::Performed;
use progress::{emit, show_running};
use resume::{stop_orphans, unfinished};
use rollback::{finish_failed, roll_back, rollback_begun, undo_plan};
use scheduler::{Node, OnFailure, Scheduler};

pub(crate) use commit::record_unchanged;
pub(crate) use perform::ActionError;
pub(crate) use perform::build::{Build, build_release};
pub(crate) use progress::Progress;
pub(crate) use rollback::{roll_back_unfinished, unfinished_rollback};

#[derive(Debug, thiserror::Error, Diagnostic)]
pub(crate) enum ApplyError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    State(#[from] state::StateError),
    #[error("an apply of {env} is unfinished (journal {path})")]
    #[diagnostic(
        code(moorline::apply::unfinished),
        help(
            "continue it with `moorline apply --resume --env {env}`, or roll it back with `moorline rollback --env {env}`"
        )
    )]
    Unfinished { env: String, path: String },
    #[error("the configuration changed since the interrupted apply began")]
    #[diagnostic(
        code(moorline::apply::config_moved),
        help(
            "restore the configuration the apply started with (its SHA-256 is {expected}), then resume"
        )
    )]
    ConfigMoved { expected: String },
    /// Work on the blocking pool (writing the state) did not finish: it
    /// panicked, or the runtime is shutting down.
    #[error("{what} did not finish")]
    #[diagnostic(
        code(moorline::apply::blocking),
        help(
            "the journal still holds the apply: check `moorline status`, then `moorline apply --resume` or `moorline rollback`"
        )
    )]
    Blocking {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
}

pub(crate) struct Options {
    pub(crate) jobs: usize,
    pub(crate) rollback_on_failure: bool,
    pub(crate) progress: Progress,
}

/// What the executor needs from the rest of the program.
pub(crate) struct Ctx {
    pub(crate) config: Config,
    pub(crate) config_sha256: String,
    pub(crate) env: Environment,
    pub(crate) repo_dir: PathBuf,
    pub(crate) state_dir: PathBuf,
    pub(crate) unit_dir: PathBuf,
    pub(crate) systemd: Systemd,
    pub(crate) options: Options,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Outcome {
    Succeeded,
    /// Failed before anything live changed: the host is as it was.
    FailedUntouched,
    /// Failed, and every switched service is back on its previous release.
    RolledBack,
    /// Failed and left as is (`--on-failure stop`), or the rollback failed.
    NeedsAttention,
    /// Stopped by a signal; resumable.
    Interrupted,
    /// `start`, `stop`, `enable`, `disable` failed: reported, nothing to
    /// roll back.
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) apply_id: String,
    pub(crate) outcome: Outcome,
    pub(crate) succeeded: Vec<String>,
    pub(crate) failed: Vec<(String, String)>,
    pub(crate) not_run: Vec<String>,
    pub(crate) rolled_back: Vec<String>,
    pub(crate) rollback_errors: Vec<String>,
    pub(crate) millis: u64,
    /// The rollback plan: what the automatic rollback executed, or (the
    /// apply left as is) what `moorline rollback` would. Absent when
    /// nothing live changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rollback_plan: Option<Plan>,
}

impl Report {
    fn new(apply_id: &str, failed: Vec<(String, String)>) -> Self {
        Self {
            apply_id: apply_id.to_owned(),
            outcome: Outcome::FailedUntouched,
            succeeded: Vec::new(),
            failed,
            not_run: Vec::new(),
            rolled_back: Vec::new(),
            rollback_errors: Vec::new(),
            millis: 0,
            rollback_plan: None,
        }
    }

    pub(crate) fn exit_code(&self) -> i32 {
        match self.outcome {
            Outcome::Succeeded => crate::exit::OK,
            Outcome::FailedUntouched | Outcome::Failed => crate::exit::ERROR,
            Outcome::RolledBack => crate::exit::ROLLED_BACK,
            Outcome::NeedsAttention | Outcome::Interrupted => crate::exit::NEEDS_ATTENTION,
        }
    }
}

/// A new apply id: time-based, sortable, unique per host in practice.
pub(crate) fn new_apply_id() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{}-{:06}-{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id()
    )
}

/// Starts a fresh apply of `plan`.
pub(crate) async fn apply(ctx: Arc<Ctx>, plan: Plan) -> Result<Report, ApplyError> {
    if let crate::journal::Current::Begun(r) = current_journal(&ctx.state_dir).await?
        && !r.ended()
    {
        return Err(ApplyError::Unfinished {
            env: ctx.env.name.clone(),
            path: ctx
                .state_dir
                .join(crate::journal::JOURNAL_FILE)
                .display()
                .to_string(),
        });
    }
    archive_ended(&ctx.state_dir, None)?;
    let apply_id = new_apply_id();
    let journal = Journal::create(&ctx.state_dir, &apply_id, &plan)?;
    // Boxed: the run's state (the plan, the scheduler, the runner) is large,
    // and every command that applies would otherwise carry it inline.
    Box::pin(run(ctx, plan, apply_id, journal, None)).await
}

/// Continues the unfinished apply in the journal, if there is one.
pub(crate) async fn resume(ctx: Arc<Ctx>) -> Result<Option<Report>, ApplyError> {
    let Some(replay) = unfinished(&ctx.state_dir).await? else {
        return Ok(None);
    };
    if replay.plan.inputs.config_sha256 != ctx.config_sha256 {
        return Err(ApplyError::ConfigMoved {
            expected: replay.plan.inputs.config_sha256.clone(),
        });
    }
    stop_orphans(&replay).await;
    let journal = Journal::reopen(&ctx.state_dir)?;
    let plan = replay.plan.clone();
    let id = replay.apply_id.clone();
    run(ctx, plan, id, journal, Some(replay)).await.map(Some)
}

/// What executing one plan came to.
struct Executed {
    succeeded: Vec<String>,
    failed: Vec<(String, String)>,
    not_run: Vec<String>,
    interrupted: bool,
}

/// The scheduler's view of `plan`: each action's predecessors by index
/// (one the plan lacks is never satisfied), builds under the `jobs`
/// permits, and what `done` holds (a resume's verified actions) done.
fn nodes(plan: &Plan, done: &BTreeSet<String>) -> Vec<Node> {
    let after = scheduler::predecessors(plan.actions.iter().map(|a| (a.id.as_str(), &a.after[..])));
    after
        .into_iter()
        .zip(&plan.actions)
        .map(|(after, a)| Node {
            after,
            permit: a.kind() == ActionKind::Build,
            done: done.contains(&a.id),
        })
        .collect()
}

/// One run of [`execute`]: what starting an action and recording its
/// outcome need.
struct Runner<'a> {
    ctx: &'a Arc<Ctx>,
    plan: &'a Plan,
    apply_id: &'a str,
    journal: &'a Shared,
    started: Instant,
}

impl Runner<'_> {
    /// Journals the start of action `i` (durable first), shows it, and
    /// performs it on the runtime.
    async fn start(
        &self,
        i: usize,
        running: &mut JoinSet<(usize, Performed)>,
        running_since: &mut BTreeMap<String, Instant>,
    ) -> Result<(), ApplyError> {
        let Some(a) = self.plan.actions.get(i) else {
            return Ok(());
        };
        let progress = self.ctx.options.progress;
        journal_append(
            self.journal,
            Record::Started {
                action: a.id.clone(),
                at_ms: Some(millis_since(self.started)),
            },
        )
        .await?;
        emit(progress, Event::Start, &a.id, "");
        running_since.insert(a.id.clone(), Instant::now());
        show_running(progress, running_since);
        let (ctx, journal, a) = (Arc::clone(self.ctx), Arc::clone(self.journal), a.clone());
        let (to_sha, apply_id) = (self.plan.to.sha.clone(), self.apply_id.to_owned());
        running.spawn(async move {
            let res = perform::run(&ctx, &a, &to_sha, &apply_id, &journal).await;
            (i, res)
        });
        Ok(())
    }

    /// Journals and shows how action `id` ended: `Some(message)` when it
    /// failed; a journal error (its own, or the action's) stops the run.
    async fn record(&self, id: &str, res: Performed) -> Result<Option<String>, ApplyError> {
        let progress = self.ctx.options.progress;
        match res {
            Ok(note) => {
                journal_append(
                    self.journal,
                    Record::Succeeded {
                        action: id.to_owned(),
                        note: note.clone(),
                        at_ms: Some(millis_since(self.started)),
                    },
                )
                .await?;
                emit(progress, Event::Done, id, note.as_deref().unwrap_or(""));
                Ok(None)
            }
            Err((ActionError::Journal(e), _, _)) => Err(e.into()),
            Err((_, err, unit)) => {
                journal_append(
                    self.journal,
                    Record::Failed {
                        action: id.to_owned(),
                        error: err.clone(),
                    },
                )
                .await?;
                progress::emit_step(progress, Event::Failed, id, &err, unit);
                Ok(Some(err))
            }
        }
    }
}

/// Executes `plan`: every action starts as soon as its `after` actions
/// succeeded (builds bounded by `jobs`), each start and outcome journaled
/// first; on the first failure or a signal nothing new starts. `prior`:
/// this plan's records from an earlier process (a resume): an action they
/// record as succeeded is not run again if its effect is still in place.
async fn execute(
    ctx: &Arc<Ctx>,
    plan: &Plan,
    apply_id: &str,
    journal: &Shared,
    prior: Option<&[Record]>,
    started: Instant,
) -> Result<Executed, ApplyError> {
    let progress = ctx.options.progress;
    // A stop plan goes on past a unit that fails to stop (the rest is not
    // kept up by it): a failed action then orders like a finished one.
    let on_failure = if plan.operation == crate::plan::Operation::Stop {
        OnFailure::KeepGoing
    } else {
        OnFailure::Stop
    };
    // Which actions are already done (and still in effect)?
    let done = match prior {
        Some(prior) => resume::verified(ctx, plan, prior, progress).await,
        None => BTreeSet::new(),
    };
    let mut queue = Scheduler::new(&nodes(plan, &done), ctx.options.jobs, on_failure);
    let runner = Runner {
        ctx,
        plan,
        apply_id,
        journal,
        started,
    };
    let mut running: JoinSet<(usize, Performed)> = JoinSet::new();
    let mut running_since: BTreeMap<String, Instant> = BTreeMap::new();
    let mut failed: Vec<(String, String)> = Vec::new();
    let mut interrupted = false;

    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
    let mut sigterm =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();

    loop {
        while let Some(i) = queue.start_next() {
            runner.start(i, &mut running, &mut running_since).await?;
        }
        if running.is_empty() {
            break;
        }
        let joined = tokio::select! {
            j = running.join_next() => j,
            () = recv(&mut sigint) => { queue.stop(); interrupted = true; emit(progress, Event::Signal, "SIGINT", "no new action starts; running ones finish"); continue; }
            () = recv(&mut sigterm) => { queue.stop(); interrupted = true; emit(progress, Event::Signal, "SIGTERM", "no new action starts; running ones finish"); continue; }
        };
        let Some(joined) = joined else { break };
        let (i, res) = match joined {
            Ok(x) => x,
            Err(source) => {
                // A panicked or cancelled task: which action is unknown
                // here, so the run stops as after a journal error.
                return Err(ApplyError::Blocking {
                    what: "an action",
                    source,
                });
            }
        };
        let id = plan
            .actions
            .get(i)
            .map(|a| a.id.clone())
            .unwrap_or_default();
        running_since.remove(&id);
        show_running(progress, &running_since);
        match runner.record(&id, res).await? {
            None => queue.succeeded(i),
            Some(err) => {
                failed.push((id, err));
                queue.failed(i);
            }
        }
    }

    progress::finish(progress);
    let mut succeeded = Vec::new();
    let mut not_run = Vec::new();
    for (i, a) in plan.actions.iter().enumerate() {
        match queue.state(i) {
            Some(scheduler::State::Succeeded) => succeeded.push(a.id.clone()),
            Some(scheduler::State::Failed) => {}
            _ => not_run.push(a.id.clone()),
        }
    }
    Ok(Executed {
        succeeded,
        failed,
        not_run,
        interrupted,
    })
}

/// Runs `plan` as the apply `apply_id` (fresh, or resumed from `replay`):
/// an interrupted rollback goes on; otherwise the plan is executed, then
/// the state committed, or the apply ended as interrupted, failed or
/// rolled back.
async fn run(
    ctx: Arc<Ctx>,
    plan: Plan,
    apply_id: String,
    journal: Journal,
    replay: Option<Replay>,
) -> Result<Report, ApplyError> {
    let started = Instant::now();
    let journal: Shared = Arc::new(Mutex::new(journal));

    if let Some(r) = &replay
        && let Some((at, recorded)) = rollback_begun(&r.records)
    {
        // An interrupted rollback: it goes on from its own records.
        let rollback = recorded.unwrap_or_else(|| undo_plan(&ctx, &plan, &apply_id, &r.records));
        emit(
            ctx.options.progress,
            Event::Rollback,
            &plan.environment,
            "resuming an interrupted rollback",
        );
        let report = Report::new(&apply_id, Vec::new());
        return roll_back(
            &ctx,
            &plan,
            &apply_id,
            journal,
            rollback,
            Some(&r.records[at + 1..]),
            report,
            started,
        )
        .await;
    }

    let prior = replay.as_ref().map(|r| r.records.as_slice());
    let ex = execute(&ctx, &plan, &apply_id, &journal, prior, started).await?;
    let millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);

    if plan.operation.is_unit_op() && !(ex.interrupted && ex.failed.is_empty()) {
        // start/stop/enable/disable: no release changes, nothing to roll
        // back, no state to write; the journal goes to history.
        let failed = !ex.failed.is_empty();
        finish_journal(
            journal,
            if failed {
                JournalOutcome::Failed
            } else {
                JournalOutcome::Succeeded
            },
            &apply_id,
        )
        .await?;
        let mut report = Report::new(&apply_id, ex.failed);
        report.outcome = if failed {
            Outcome::Failed
        } else {
            Outcome::Succeeded
        };
        report.succeeded = ex.succeeded;
        report.not_run = ex.not_run;
        report.millis = millis;
        return Ok(report);
    }

    if ex.failed.is_empty() && !ex.interrupted {
        let records = read_records(&ctx.state_dir).await?;
        commit::save_success(&ctx, &plan, &apply_id, records).await?;
        finish_journal(journal, JournalOutcome::Succeeded, &apply_id).await?;
        let mut report = Report::new(&apply_id, ex.failed);
        report.outcome = Outcome::Succeeded;
        report.succeeded = ex.succeeded;
        report.not_run = ex.not_run;
        report.millis = millis;
        return Ok(report);
    }
    if ex.interrupted && ex.failed.is_empty() {
        let mut report = Report::new(&apply_id, ex.failed);
        report.outcome = Outcome::Interrupted;
        report.succeeded = ex.succeeded;
        report.not_run = ex.not_run;
        report.millis = millis;
        return Ok(report);
    }
    let records = read_records(&ctx.state_dir).await?;
    let reason = ex
        .failed
        .first()
        .map(|(id, e)| format!("{id} failed: {e}"))
        .unwrap_or_default();
    let mut report = Report::new(&apply_id, ex.failed);
    report.succeeded = ex.succeeded;
    report.not_run = ex.not_run;
    finish_failed(
        &ctx, &plan, &apply_id, journal, &records, report, reason, started,
    )
    .await
}

async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

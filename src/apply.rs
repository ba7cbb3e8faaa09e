//! The executor: a `Plan` → effects on the host, the only stage that
//! changes anything. Actions start as soon as their predecessors succeeded
//! (builds bounded by `jobs`); every start and outcome goes to the
//! write-ahead journal first; on the first failure nothing new starts and,
//! once something live changed, every switched service is rolled back.
//! `resume` continues a journal left by a crash without redoing work whose
//! effect is still in place.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use miette::Diagnostic;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::changes::Repo;
use crate::config::Config;
use crate::config::Environment;
use crate::config::Service;
use crate::events::{self, Event};
use crate::health;
use crate::journal::{Journal, JournalError, JournalOutcome, Record, Replay};
use crate::plan::{Action, ActionKind, Plan, Step, UnitSource};
use crate::process::{self, Run};
use crate::release::{self, Paths};
use crate::state::{self, ApplyOutcome, ApplyRecord, BackupRecord, ServiceState, State};
use crate::systemd::{SETTLE, Systemd};
use crate::template::{self, Vars};
use crate::unit;

#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum ApplyError {
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

/// How the run reports progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A live view on a terminal: finished events scroll above a spinner
    /// line naming the running actions and their elapsed time.
    Live,
    /// One line per event on standard error.
    Lines,
    /// JSON lines on standard output.
    Json,
    Quiet,
}

pub struct Options {
    pub jobs: usize,
    pub rollback_on_failure: bool,
    pub progress: Progress,
}

/// What the executor needs from the rest of the program.
pub struct Ctx {
    pub config: Config,
    pub config_sha256: String,
    pub env: Environment,
    pub repo_dir: PathBuf,
    pub state_dir: PathBuf,
    pub unit_dir: PathBuf,
    pub systemd: Systemd,
    pub options: Options,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
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
pub struct Report {
    pub apply_id: String,
    pub outcome: Outcome,
    pub succeeded: Vec<String>,
    pub failed: Vec<(String, String)>,
    pub not_run: Vec<String>,
    pub rolled_back: Vec<String>,
    pub rollback_errors: Vec<String>,
    pub millis: u64,
    /// The rollback plan: what the automatic rollback executed, or (the
    /// apply left as is) what `moorline rollback` would. Absent when
    /// nothing live changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_plan: Option<Plan>,
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

    pub fn exit_code(&self) -> i32 {
        match self.outcome {
            Outcome::Succeeded => crate::exit::OK,
            Outcome::FailedUntouched | Outcome::Failed => crate::exit::ERROR,
            Outcome::RolledBack => crate::exit::ROLLED_BACK,
            Outcome::NeedsAttention | Outcome::Interrupted => crate::exit::NEEDS_ATTENTION,
        }
    }
}

/// A new apply id: time-based, sortable, unique per host in practice.
pub fn new_apply_id() -> String {
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

/// The live view's spinner (one per process: one apply runs at a time).
static LIVE: std::sync::OnceLock<indicatif::ProgressBar> = std::sync::OnceLock::new();

fn live_bar() -> &'static indicatif::ProgressBar {
    LIVE.get_or_init(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}") {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    })
}

/// Updates the live view's line with the running actions.
fn show_running(progress: Progress, running: &BTreeMap<String, Instant>) {
    if progress != Progress::Live {
        return;
    }
    let mut names: Vec<String> = running
        .iter()
        .map(|(id, t)| format!("{id} {:.1}s", t.elapsed().as_secs_f64()))
        .collect();
    let more = names.len().saturating_sub(4);
    names.truncate(4);
    let msg = if more > 0 {
        format!("running {} (+{more})", names.join(", "))
    } else {
        format!("running {}", names.join(", "))
    };
    live_bar().set_message(msg);
}

fn emit(progress: Progress, event: fn(events::Step) -> Event, action: &str, detail: &str) {
    let event = event(events::Step {
        action: action.to_owned(),
        detail: crate::secrets::redact(detail),
    });
    match progress {
        Progress::Quiet => {}
        Progress::Live => {
            // A start shows in the bar of running actions, not as a line.
            if !matches!(event, Event::Start(_))
                && let Some(line) = event.text()
            {
                live_bar().println(line);
            }
        }
        Progress::Lines => {
            if let Some(line) = event.text() {
                eprintln!("{line}");
            }
        }
        Progress::Json => println!("{}", event.to_line()),
    }
}

type Shared = Arc<Mutex<Journal>>;

/// Journal lines of a unit shown when its restart or readiness fails.
const JOURNAL_TAIL: usize = 10;

/// Milliseconds since `t`, for the journal's `at_ms` fields.
fn millis_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Appends `r` to the journal and waits until it is durable (fsync'd):
/// the caller acts only after this returns. The write and fsync run on the
/// blocking pool, so the async workers stay free for D-Bus signals and
/// readiness deadlines; the mutex keeps records whole and in order.
async fn journal_append(j: &Shared, r: Record) -> Result<(), JournalError> {
    let writer = Arc::clone(j);
    tokio::task::spawn_blocking(move || {
        // A panic while the lock was held cannot have left a half record
        // relied upon: `append` only returns after the fsync.
        writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .append(&r)
    })
    .await
    .map_err(|source| JournalError::Task {
        // Only on this failure path is the lock taken on an async worker
        // (to name the file).
        path: j
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .path()
            .display()
            .to_string(),
        source,
    })?
}

/// The recorder of the commands `action` starts: a `spawned` journal
/// record for each (on the blocking pool, where the runner calls it), and
/// where a failure to write one is kept for the executor.
fn spawn_recorder(
    j: &Shared,
    action: &str,
) -> (process::orphans::Recorder, Arc<Mutex<Option<JournalError>>>) {
    let failed: Arc<Mutex<Option<JournalError>>> = Arc::default();
    let (j, action, slot) = (Arc::clone(j), action.to_owned(), Arc::clone(&failed));
    let recorder: process::orphans::Recorder = Arc::new(move |group| {
        let r = Record::Spawned {
            action: action.clone(),
            group: group.clone(),
        };
        let res = j
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .append(&r);
        res.map_err(|e| {
            let message = e.to_string();
            *slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
            process::orphans::RecordError::Write { message }
        })
    });
    (recorder, failed)
}

/// Stops the commands the interrupted apply `replay` started that still
/// run (moorline was killed while they ran), saying so.
async fn stop_orphans(replay: &Replay) {
    let stopped = process::orphans::stop(replay.spawned(), process::orphans::STOP_GRACE).await;
    for (action, pgid) in stopped {
        eprintln!(
            "note: stopped {action} (process group {pgid}) left running by the interrupted apply"
        );
    }
}

/// Runs blocking file-system or git work (exports, directory removal,
/// release switches, unit files) on the blocking pool, so it never holds
/// one of the runtime's two workers while jobs and probes wait on them.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ActionError> + Send + 'static,
) -> Result<T, ActionError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|source| ActionError::Task { source })?
}

/// The journal as the next command finds it; a torn one (no complete
/// begin record, e.g. the disk was full) is archived first, saying so:
/// its begin record is durable before anything acts, so nothing live
/// changed under it.
async fn current_journal(state_dir: &Path) -> Result<crate::journal::Current, JournalError> {
    let dir = state_dir.to_owned();
    let path = dir.join(crate::journal::JOURNAL_FILE).display().to_string();
    tokio::task::spawn_blocking(move || {
        let current = crate::journal::read(&dir)?;
        if matches!(current, crate::journal::Current::Torn) {
            let to = crate::journal::archive_torn(&dir)?;
            eprintln!(
                "note: the journal {} has no complete begin record (a write was cut short, e.g. the disk was full); nothing was done under it, so it was moved to {}",
                dir.join(crate::journal::JOURNAL_FILE).display(),
                to.display()
            );
            return Ok(crate::journal::Current::Absent);
        }
        Ok(current)
    })
    .await
    .map_err(|source| JournalError::Task { path, source })?
}

/// Starts a fresh apply of `plan`.
pub async fn apply(ctx: Arc<Ctx>, plan: Plan) -> Result<Report, ApplyError> {
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
    run(ctx, plan, apply_id, journal, None).await
}

/// The unfinished apply in the journal, if any (a journal that ended but
/// was not archived yet is archived).
async fn unfinished(state_dir: &Path) -> Result<Option<Replay>, ApplyError> {
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

/// Continues the unfinished apply in the journal, if there is one.
pub async fn resume(ctx: Arc<Ctx>) -> Result<Option<Report>, ApplyError> {
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

/// The rollback of an unfinished apply, planned and not yet executed (or
/// begun and interrupted).
pub struct PendingRollback {
    replay: Replay,
    /// The rollback plan: recorded by a rollback that began, else built
    /// from the journal's records.
    pub plan: Plan,
    /// A rollback of it began already (and is continued).
    pub begun: bool,
}

impl PendingRollback {
    pub fn apply_id(&self) -> &str {
        &self.replay.apply_id
    }

    /// Whether anything live changed under the unfinished apply.
    pub fn live_changed(&self) -> bool {
        self.begun || live_changed(&self.replay.plan, &self.replay.records)
    }
}

/// The rollback of the unfinished apply in the journal, to show before it
/// runs; `None` when no apply is unfinished.
pub async fn unfinished_rollback(ctx: &Ctx) -> Result<Option<PendingRollback>, ApplyError> {
    let Some(replay) = unfinished(&ctx.state_dir).await? else {
        return Ok(None);
    };
    let (plan, begun) = match rollback_begun(&replay.records) {
        Some((_, Some(plan))) => (plan, true),
        Some((_, None)) => (
            crate::plan::undo::build(
                &replay.plan,
                &replay.apply_id,
                &crate::journal::effects(&replay.plan, &replay.records),
                &ctx.config,
                &ctx.env,
            ),
            true,
        ),
        None => (
            crate::plan::undo::build(
                &replay.plan,
                &replay.apply_id,
                &crate::journal::effects(&replay.plan, &replay.records),
                &ctx.config,
                &ctx.env,
            ),
            false,
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
pub async fn roll_back_unfinished(
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

/// A journal that ended but was not moved to history (a crash between the
/// two) is history: move it there.
fn archive_ended(state_dir: &Path, apply_id: Option<&str>) -> Result<(), JournalError> {
    let stale = state_dir.join(crate::journal::JOURNAL_FILE);
    if stale.exists() {
        let hist = state_dir.join("history");
        let name = apply_id.map_or_else(|| format!("ended-{}", new_apply_id()), str::to_owned);
        let to = hist.join(format!("{name}.jsonl"));
        state::private_dir(&hist)
            .and_then(|()| std::fs::rename(&stale, &to))
            .map_err(|source| JournalError::Write {
                path: to.display().to_string(),
                source,
            })?;
    }
    Ok(())
}

/// How one action ended: its journal note, or its error with the message
/// recorded (the unit's last journal lines added).
type Performed = Result<Option<String>, (ActionError, String)>;

/// What executing one plan came to.
struct Executed {
    succeeded: Vec<String>,
    failed: Vec<(String, String)>,
    not_run: Vec<String>,
    interrupted: bool,
}

/// Executes `plan`: every action starts as soon as its `after` actions
/// succeeded (builds bounded by `jobs`), each start and outcome journaled
/// first; on the first failure or a signal nothing new starts. `prior`:
/// this plan's records from an earlier process (a resume): an action they
/// record as succeeded is not run again if its effect is still in place.
/// The one executor of deploys, rollbacks (automatic or asked for),
/// restarts and start/stop/enable/disable.
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
    let keep_going = plan.operation == crate::plan::Operation::Stop;
    // Which actions are already done (and still in effect)?
    let mut done: BTreeSet<String> = BTreeSet::new();
    if let Some(prior) = prior {
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
        // Anything after an action that must run again runs again too.
        for a in &plan.actions {
            if a.after.iter().any(|p| invalid.contains(p)) {
                invalid.insert(a.id.clone());
                done.remove(&a.id);
            }
        }
    }

    let builds = Arc::new(Semaphore::new(ctx.options.jobs.max(1)));
    let mut running: JoinSet<(String, Performed)> = JoinSet::new();
    let mut in_flight: BTreeSet<String> = BTreeSet::new();
    let mut running_since: BTreeMap<String, Instant> = BTreeMap::new();
    let mut failed: Vec<(String, String)> = Vec::new();
    let mut stopping = false;
    let mut interrupted = false;

    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
    let mut sigterm =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();

    loop {
        if !stopping {
            for a in &plan.actions {
                if done.contains(&a.id) || in_flight.contains(&a.id) {
                    continue;
                }
                if failed.iter().any(|(f, _)| *f == a.id) {
                    continue;
                }
                if !a
                    .after
                    .iter()
                    .all(|p| done.contains(p) || (keep_going && failed.iter().any(|(f, _)| f == p)))
                {
                    continue;
                }
                journal_append(
                    journal,
                    Record::Started {
                        action: a.id.clone(),
                        at_ms: Some(millis_since(started)),
                    },
                )
                .await?;
                emit(progress, Event::Start, &a.id, "");
                in_flight.insert(a.id.clone());
                running_since.insert(a.id.clone(), Instant::now());
                show_running(progress, &running_since);
                let ctx2 = Arc::clone(ctx);
                let j2 = Arc::clone(journal);
                let a2 = a.clone();
                let plan_to = plan.to.sha.clone();
                let id2 = apply_id.to_owned();
                let sem = Arc::clone(&builds);
                running.spawn(async move {
                    let _permit = if a2.kind() == ActionKind::Build {
                        sem.acquire_owned().await.ok()
                    } else {
                        None
                    };
                    let t = Instant::now();
                    let (recorder, unrecorded) = spawn_recorder(&j2, &a2.id);
                    let res = process::orphans::recorded(
                        recorder,
                        perform(&ctx2, &a2, &plan_to, &id2, &j2),
                    )
                    .await;
                    // A command whose group could not be journaled did not
                    // run; the journal error stops the apply like any.
                    let res = match unrecorded
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .take()
                    {
                        Some(e) => Err(ActionError::Journal(e)),
                        None => res,
                    };
                    let res = match res {
                        Ok(note) => {
                            let ms = t.elapsed().as_millis();
                            Ok(Some(note.map_or_else(
                                || format!("{ms} ms"),
                                |n| format!("{n} ({ms} ms)"),
                            )))
                        }
                        Err(e) => {
                            let mut msg = e.message();
                            // The unit's own words on why it did not come up.
                            if let (Some(unit), true) = (
                                a2.step.unit(),
                                matches!(
                                    a2.kind(),
                                    ActionKind::Restart | ActionKind::Health | ActionKind::Start
                                ),
                            ) {
                                let lines = crate::logs::tail(unit, JOURNAL_TAIL).await;
                                if !lines.is_empty() {
                                    msg.push_str("\nlast lines of ");
                                    msg.push_str(unit);
                                    msg.push_str("'s journal:");
                                    for l in lines {
                                        msg.push_str("\n    | ");
                                        msg.push_str(&l);
                                    }
                                }
                            }
                            Err((e, msg))
                        }
                    };
                    (a2.id.clone(), res)
                });
            }
        }
        if running.is_empty() {
            break;
        }
        let joined = tokio::select! {
            j = running.join_next() => j,
            () = recv(&mut sigint) => { stopping = true; interrupted = true; emit(progress, Event::Signal, "SIGINT", "no new action starts; running ones finish"); continue; }
            () = recv(&mut sigterm) => { stopping = true; interrupted = true; emit(progress, Event::Signal, "SIGTERM", "no new action starts; running ones finish"); continue; }
        };
        let Some(joined) = joined else { break };
        let (id, res) = match joined {
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
        in_flight.remove(&id);
        running_since.remove(&id);
        show_running(progress, &running_since);
        match res {
            Ok(note) => {
                journal_append(
                    journal,
                    Record::Succeeded {
                        action: id.clone(),
                        note: note.clone(),
                        at_ms: Some(millis_since(started)),
                    },
                )
                .await?;
                emit(progress, Event::Done, &id, note.as_deref().unwrap_or(""));
                done.insert(id);
            }
            Err((ActionError::Journal(e), _)) => return Err(e.into()),
            Err((_, err)) => {
                journal_append(
                    journal,
                    Record::Failed {
                        action: id.clone(),
                        error: err.clone(),
                    },
                )
                .await?;
                emit(progress, Event::Failed, &id, &err);
                failed.push((id, err));
                stopping = !keep_going;
            }
        }
    }

    if progress == Progress::Live {
        live_bar().finish_and_clear();
    }
    let succeeded: Vec<String> = plan
        .actions
        .iter()
        .filter(|a| done.contains(&a.id))
        .map(|a| a.id.clone())
        .collect();
    let not_run: Vec<String> = plan
        .actions
        .iter()
        .filter(|a| !done.contains(&a.id) && !failed.iter().any(|(f, _)| *f == a.id))
        .map(|a| a.id.clone())
        .collect();
    Ok(Executed {
        succeeded,
        failed,
        not_run,
        interrupted,
    })
}

/// Where the rollback of an apply begins in its records, and the plan it
/// recorded (journals from before rollbacks were plans have none).
fn rollback_begun(records: &[Record]) -> Option<(usize, Option<Plan>)> {
    records.iter().enumerate().find_map(|(i, r)| match r {
        Record::RollbackBegin { plan, .. } => Some((i, plan.as_deref().cloned())),
        _ => None,
    })
}

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
        let rollback = recorded.unwrap_or_else(|| {
            let effects = crate::journal::effects(&plan, &r.records);
            crate::plan::undo::build(&plan, &apply_id, &effects, &ctx.config, &ctx.env)
        });
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
        {
            let (ctx, plan, apply_id) = (Arc::clone(&ctx), plan.clone(), apply_id.clone());
            tokio::task::spawn_blocking(move || commit_state(&ctx, &plan, &apply_id, &records))
                .await
                .map_err(|source| ApplyError::Blocking {
                    what: "writing the state and pruning releases",
                    source,
                })??;
        }
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

/// The records of the current journal, read on the blocking pool.
async fn read_records(state_dir: &Path) -> Result<Vec<Record>, JournalError> {
    let dir = state_dir.to_owned();
    let path = dir.display().to_string();
    tokio::task::spawn_blocking(move || {
        crate::journal::read(&dir).map(crate::journal::Current::records)
    })
    .await
    .map_err(|source| JournalError::Task { path, source })?
}

/// Ends the journal with `outcome` and archives it (on the blocking pool).
async fn finish_journal(
    j: Shared,
    outcome: JournalOutcome,
    apply_id: &str,
) -> Result<(), JournalError> {
    let j = take(j)?;
    let path = j.path().display().to_string();
    let apply_id = apply_id.to_owned();
    tokio::task::spawn_blocking(move || j.finish(outcome, &apply_id))
        .await
        .map_err(|source| JournalError::Task { path, source })?
}

/// Why an action failed. Each variant has a stable code; the message
/// (with its sources) is what the journal's `failed` record and the report
/// show. [`ActionError::Journal`] is different: the journal could not be
/// written, so the run stops at once (nothing may act without a record).
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum ActionError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Journal(#[from] JournalError),
    #[error("service `{service}` is not in the configuration")]
    #[diagnostic(code(moorline::action::unknown_service))]
    UnknownService { service: String },
    #[error("{what} has no service")]
    #[diagnostic(code(moorline::action::no_service))]
    NoService { what: &'static str },
    #[error("exporting the release into {dir}: {message}")]
    #[diagnostic(code(moorline::action::export))]
    Export { dir: String, message: String },
    #[error("dependencies: {error}")]
    #[diagnostic(code(moorline::action::deps))]
    Deps { error: crate::deps::DepsError },
    #[error("{what}")]
    #[diagnostic(code(moorline::action::command))]
    Command {
        what: &'static str,
        #[source]
        source: Box<process::RunError>,
    },
    #[error("backup: {error}")]
    #[diagnostic(code(moorline::action::backup))]
    Backup { error: crate::backup::BackupError },
    #[error("{what} {path}")]
    #[diagnostic(code(moorline::action::io))]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("rendering the unit of {service}")]
    #[diagnostic(code(moorline::action::unit))]
    Unit {
        service: String,
        #[source]
        source: Box<unit::UnitError>,
    },
    #[error(
        "no unit to install for {service}: the service has no unit block, or the saved unit file is gone"
    )]
    #[diagnostic(code(moorline::action::no_unit))]
    NoUnit { service: String },
    #[error("{what} {unit}")]
    #[diagnostic(code(moorline::action::systemd))]
    Systemd {
        what: &'static str,
        unit: String,
        #[source]
        source: Box<crate::systemd::SystemdError>,
    },
    #[error("{url}: {error}")]
    #[diagnostic(code(moorline::action::not_ready))]
    NotReady { url: String, error: String },
    #[error("{unit} answered ready but did not stay up: now {state}")]
    #[diagnostic(code(moorline::action::unsettled))]
    Unsettled { unit: String, state: String },
    #[error("a blocking task failed")]
    #[diagnostic(code(moorline::action::task))]
    Task {
        #[source]
        source: tokio::task::JoinError,
    },
}

impl ActionError {
    /// The message with its chain of sources, one `: ` apart.
    pub fn message(&self) -> String {
        let mut s = self.to_string();
        let mut e = std::error::Error::source(self);
        while let Some(cause) = e {
            let text = cause.to_string();
            if !s.contains(&text) {
                s.push_str(": ");
                s.push_str(&text);
            }
            e = cause.source();
        }
        s
    }

    fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.display().to_string();
        move |source| Self::Io { what, path, source }
    }

    fn systemd(
        what: &'static str,
        unit: &str,
    ) -> impl FnOnce(crate::systemd::SystemdError) -> Self {
        let unit = unit.to_owned();
        move |source| Self::Systemd {
            what,
            unit,
            source: Box::new(source),
        }
    }
}

fn take(j: Shared) -> Result<Journal, JournalError> {
    Arc::try_unwrap(j)
        .ok()
        .and_then(|m| m.into_inner().ok())
        .ok_or_else(|| JournalError::Write {
            path: String::from("journal"),
            source: std::io::Error::other("journal still in use"),
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
async fn finish_failed(
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
    let effects = crate::journal::effects(plan, records);
    let rollback = crate::plan::undo::build(plan, apply_id, &effects, &ctx.config, &ctx.env);
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
async fn roll_back(
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
            && matches!(a.kind(), ActionKind::Health | ActionKind::Stop)
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

/// [`record_outcome`] on the blocking pool (it fsyncs `state.json`).
async fn save_outcome(
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
                .map(|u| state::sha256_hex(u.as_bytes()));
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
            previous_units.insert(service.clone(), saved.clone());
            if let Some(s) = ctx.config.service(service) {
                // What is installed now: the config's unit after a deploy,
                // the saved previous one after a rollback (not the config's).
                let sha = std::fs::read(ctx.unit_dir.join(unit))
                    .ok()
                    .map(|u| state::sha256_hex(&u));
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
        st.record_deploy(&plan.to.sha, state::now_secs());
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
        st.record_manual_rollback(state::now_secs());
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
    Ok(())
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
        Step::Build { .. } => a
            .service
            .as_deref()
            .is_none_or(|s| Paths::new(&ctx.env.root, s).is_built(&plan.to.sha)),
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
                .and_then(|svc| unit_text(ctx, source, svc).ok());
            want.is_some_and(|w| file(unit).is_some_and(|h| h == w.as_bytes()))
        }
        Step::RestoreUnit { unit, saved } => {
            std::fs::read(saved).is_ok_and(|w| file(unit).is_some_and(|h| h == w))
        }
        Step::RemoveUnit { unit } => file(unit).is_none(),
        _ => true,
    }
}

/// The environment of the commands an apply runs ([`crate::process::command_env`]).
pub(crate) fn command_env(
    ctx: &Ctx,
    service: Option<&str>,
    release_dir: Option<&str>,
) -> BTreeMap<String, String> {
    crate::process::command_env(&ctx.env, service, release_dir)
}

pub(crate) fn log_path(ctx: &Ctx, apply_id: &str, action: &str) -> PathBuf {
    ctx.state_dir
        .join("logs")
        .join(apply_id)
        .join(format!("{}.log", action.replace([':', '/'], "-")))
}

/// Performs one action; `Ok(Some(note))` adds a note to the journal.
async fn perform(
    ctx: &Ctx,
    a: &Action,
    to_sha: &str,
    apply_id: &str,
    journal: &Shared,
) -> Result<Option<String>, ActionError> {
    let service = a.service.as_deref();
    let configured = |what: &'static str| {
        let name = service.ok_or(ActionError::NoService { what })?;
        ctx.config
            .service(name)
            .ok_or_else(|| ActionError::UnknownService {
                service: name.to_owned(),
            })
    };
    match &a.step {
        Step::Build { release, command } => {
            let svc = configured("a build")?;
            let paths = Paths::new(&ctx.env.root, &svc.name);
            if paths.is_built(to_sha) {
                return Ok(Some("already built".to_owned()));
            }
            let dir = PathBuf::from(release);
            let files = export(&ctx.repo_dir, to_sha, &svc.path, &dir).await?;
            // The cache key's git reads, storing and restoring run on the
            // blocking pool.
            let provision = crate::deps::provision(ctx, svc, to_sha, &dir, apply_id).await;
            let deps = match provision {
                Some(p) => Some(
                    crate::deps::provide(p.map_err(|error| ActionError::Deps { error })?)
                        .await
                        .map_err(|error| ActionError::Deps { error })?,
                ),
                None => None,
            };
            if let Some(c) = command {
                process::run(Run {
                    argv: &c.argv,
                    dir: Some(&dir),
                    env: &command_env(ctx, Some(&svc.name), Some(release)),
                    timeout: Duration::from_secs(c.timeout_secs),
                    log: &log_path(ctx, apply_id, &a.id),
                })
                .await
                .map_err(|source| ActionError::Command {
                    what: "the build command",
                    source: Box::new(source),
                })?;
            }
            let sha = to_sha.to_owned();
            blocking(move || {
                release::mark_built(&dir, &sha).map_err(ActionError::io("marking built", &dir))
            })
            .await?;
            Ok(Some(match deps {
                Some(d) => format!("{files} files; {d}"),
                None => format!("{files} files"),
            }))
        }
        Step::Migrate { release, command } => {
            process::run(Run {
                argv: &command.argv,
                dir: Some(Path::new(release)),
                env: &command_env(ctx, service, Some(release)),
                timeout: Duration::from_secs(command.timeout_secs),
                log: &log_path(ctx, apply_id, &a.id),
            })
            .await
            .map_err(|source| ActionError::Command {
                what: "the migration",
                source: Box::new(source),
            })?;
            Ok(None)
        }
        Step::Backup { .. } => {
            let b = ctx.env.backup.as_ref().ok_or(ActionError::Backup {
                error: crate::backup::BackupError::NotConfigured,
            })?;
            let taken = crate::backup::take(
                &ctx.config.project.name,
                &ctx.env,
                &ctx.state_dir,
                b,
                apply_id,
            )
            .await
            .map_err(|error| ActionError::Backup { error })?;
            journal_append(
                journal,
                Record::Backup {
                    id: taken.id.clone(),
                    path: taken.path.clone(),
                    size: taken.size,
                    sha256: taken.sha256.clone(),
                },
            )
            .await?;
            Ok(Some(format!("{} ({} bytes)", taken.path, taken.size)))
        }
        Step::InstallUnit { unit, source } => {
            let svc = configured("install-unit")?;
            let text = unit_text(ctx, source, svc)?;
            let path = ctx.unit_dir.join(unit);
            let keep = ctx.state_dir.join("units").join(apply_id).join(unit);
            let saved = {
                let path = path.clone();
                blocking(move || match std::fs::read(&path) {
                    Ok(old) => {
                        state::write_private(&keep, &old)
                            .map_err(ActionError::io("saving the unit file as", &keep))?;
                        Ok(Some(keep.display().to_string()))
                    }
                    Err(_) => Ok(None),
                })
                .await?
            };
            journal_append(
                journal,
                Record::UnitReplace {
                    service: svc.name.clone(),
                    unit: unit.clone(),
                    saved,
                },
            )
            .await?;
            // A unit carrying inline secret values is readable by root only.
            let private = unit::carries_secrets(&text, &unit::secret_names(svc));
            blocking(move || {
                unit::install_file(&path, &text, private)
                    .map_err(ActionError::io("writing the unit file", &path))
            })
            .await?;
            Ok(None)
        }
        Step::RestoreUnit { unit, saved } => {
            let (path, saved) = (ctx.unit_dir.join(unit), PathBuf::from(saved));
            blocking(move || {
                let text = std::fs::read(&saved)
                    .map_err(ActionError::io("reading the saved unit file", &saved))?;
                state::write_private(&path, &text)
                    .map_err(ActionError::io("writing the unit file", &path))
            })
            .await?;
            Ok(None)
        }
        Step::RemoveUnit { unit } => {
            let path = ctx.unit_dir.join(unit);
            blocking(move || match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(ActionError::io("removing the unit file", &path)(e))
                }
                _ => Ok(()),
            })
            .await?;
            Ok(None)
        }
        Step::Barrier => Ok(None),
        Step::DaemonReload { enable } => {
            // The units just installed are also enabled (their [Install]
            // section), so they start at boot like the hand-made units they
            // replace; enabling reloads the manager too.
            if enable.is_empty() {
                ctx.systemd
                    .daemon_reload()
                    .await
                    .map_err(ActionError::systemd("daemon-reload of", "the manager"))?;
            } else {
                ctx.systemd
                    .enable(enable)
                    .await
                    .map_err(ActionError::systemd("enabling", &enable.join(" ")))?;
            }
            Ok(None)
        }
        Step::Restart {
            unit,
            release,
            settle,
        } => {
            if let Some(dir) = release {
                let svc = configured("a release switch")?;
                let paths = Paths::new(&ctx.env.root, &svc.name);
                let target = PathBuf::from(dir);
                let to = target
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or_else(|| ActionError::Io {
                        what: "a release directory without a name:",
                        path: dir.clone(),
                        source: std::io::ErrorKind::InvalidInput.into(),
                    })?;
                let from = paths.live();
                journal_append(
                    journal,
                    Record::Switch {
                        service: svc.name.clone(),
                        from,
                        to,
                    },
                )
                .await?;
                blocking(move || {
                    release::switch(&paths, &target)
                        .map_err(ActionError::io("switching", &paths.current()))
                })
                .await?;
            }
            restart_confirmed(&ctx.systemd, unit, settle_window(*settle)).await?;
            Ok(None)
        }
        Step::Start { unit, settle } => {
            {
                let _permit = unit_jobs().acquire().await.ok();
                ctx.systemd
                    .start(unit)
                    .await
                    .and_then(|job| job.check("start", unit))
                    .map_err(ActionError::systemd("starting", unit))?;
            }
            ctx.systemd
                .confirm_active(unit, settle_window(*settle))
                .await
                .map_err(ActionError::systemd("confirming", unit))?;
            Ok(None)
        }
        Step::Stop { unit, unlink } => {
            // A unit that is not loaded (never installed, or its file gone)
            // is stopped already.
            match ctx.systemd.stop(unit).await {
                Ok(job) => job
                    .check("stop", unit)
                    .map_err(ActionError::systemd("stopping", unit))?,
                Err(crate::systemd::SystemdError::NoSuchUnit { .. }) => {}
                Err(e) => return Err(ActionError::systemd("stopping", unit)(e)),
            }
            if let Some(link) = unlink {
                let link = PathBuf::from(link);
                blocking(move || match std::fs::remove_file(&link) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(ActionError::io("removing", &link)(e))
                    }
                    _ => Ok(()),
                })
                .await?;
            }
            Ok(None)
        }
        Step::Enable { units } => {
            ctx.systemd
                .enable(units)
                .await
                .map_err(ActionError::systemd("enabling", &units.join(" ")))?;
            Ok(None)
        }
        Step::Disable { units } => {
            ctx.systemd
                .disable(units)
                .await
                .map_err(ActionError::systemd("disabling", &units.join(" ")))?;
            Ok(None)
        }
        Step::Health {
            unit,
            url,
            timeout_secs,
        } => {
            let sd = ctx.systemd.clone();
            let invocation = sd
                .status(unit)
                .await
                .map(|s| s.invocation_id)
                .unwrap_or_default();
            let probe = health::wait_ready(url, Duration::from_secs(*timeout_secs), || {
                let sd = sd.clone();
                let unit = unit.clone();
                async move {
                    match sd.status(&unit).await {
                        Ok(s) if s.active_state.is_up() => Ok(()),
                        Ok(s) => Err(s.down(&unit)),
                        Err(_) => Ok(()),
                    }
                }
            })
            .await
            .map_err(|p| ActionError::NotReady {
                url: url.clone(),
                error: p.error.unwrap_or_else(|| "no answer".to_owned()),
            })?;
            settled(&ctx.systemd, unit, &invocation).await?;
            Ok(Some(format!("ready in {} ms", probe.millis)))
        }
        Step::ReloadProxy { unit, check } => {
            if let Some(c) = check {
                let vars = Vars {
                    root: Some(&ctx.env.root),
                    ..Vars::default()
                };
                let argv = template::render_all(&c.argv, &vars);
                process::run(Run {
                    argv: &argv,
                    dir: None,
                    env: &command_env(ctx, None, None),
                    timeout: Duration::from_secs(c.timeout_secs),
                    log: &log_path(ctx, apply_id, &a.id),
                })
                .await
                .map_err(|source| ActionError::Command {
                    what: "the proxy check",
                    source: Box::new(source),
                })?;
            }
            ctx.systemd
                .reload(unit)
                .await
                .and_then(|job| job.check("reload", unit))
                .map_err(ActionError::systemd("reloading", unit))?;
            Ok(None)
        }
    }
}

/// Exports `subdir` of the tree at `sha` into the release directory `dir`
/// (a leftover of an interrupted build is removed first), on the blocking
/// pool: a big tree takes seconds of git and file-system work. Returns the
/// number of files.
async fn export(repo_dir: &Path, sha: &str, subdir: &str, dir: &Path) -> Result<u64, ActionError> {
    let (repo_dir, sha, subdir, dir) = (
        repo_dir.to_owned(),
        sha.to_owned(),
        subdir.to_owned(),
        dir.to_owned(),
    );
    blocking(move || {
        if dir.exists() {
            // An interrupted build: start again from a fresh export. The
            // leftover is renamed aside first: a build command of a killed
            // apply may still be writing into it (its process group
            // outlives a SIGKILL of moorline), and removing a directory
            // being written to fails ("Directory not empty"). Should the
            // removal still fail, pruning removes the hidden directory later.
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let aside = dir.with_file_name(format!(".{name}.interrupted-{}", std::process::id()));
            std::fs::rename(&dir, &aside).map_err(ActionError::io("moving aside", &dir))?;
            let _ = std::fs::remove_dir_all(&aside);
        }
        let failed = |message: String| ActionError::Export {
            dir: dir.display().to_string(),
            message,
        };
        let repo = Repo::discover(&repo_dir).map_err(|e| failed(e.to_string()))?;
        repo.export(&sha, &subdir, &dir).map_err(|e| {
            failed(format!(
                "{e}: {}",
                e.source().map(ToString::to_string).unwrap_or_default()
            ))
        })
    })
    .await
}

/// Restarts a unit and confirms it stays active. A deploy's restart is
/// deliberate, not a crash loop, so the unit's start-rate counter is reset
/// first (`ResetFailedUnit` also resets the rate limit): otherwise a few
/// deploys within `StartLimitIntervalSec` (10 s by default) would hit
/// `start-limit-hit`. A unit the manager has not loaded has no counter;
/// any other failure to reset it fails the restart.
/// https://www.freedesktop.org/software/systemd/man/systemctl.html#reset-failed%20%5BPATTERN%E2%80%A6%5D
///
/// How long a restarted or started unit must stay active before its action
/// ends: a probe that follows holds it to [`SETTLE`] itself.
fn settle_window(settle: crate::plan::Settle) -> Duration {
    match settle {
        crate::plan::Settle::Probe => Duration::ZERO,
        crate::plan::Settle::Window => SETTLE,
    }
}

/// `settle`: how long the unit must then stay active before this returns.
/// A service's restart passes zero, because its readiness check that
/// follows enforces the settle window itself while it polls (`settled`),
/// so the two overlap instead of adding up in every phase.
///
/// The job itself runs under a permit of [`unit_jobs`]; the confirmation
/// does not, so a settle window never keeps another restart waiting.
pub async fn restart_confirmed(
    sd: &Systemd,
    unit: &str,
    settle: Duration,
) -> Result<(), ActionError> {
    {
        let _permit = unit_jobs().acquire().await.ok();
        match sd.reset_failed(unit).await {
            Ok(()) | Err(crate::systemd::SystemdError::NoSuchUnit { .. }) => {}
            Err(e) => return Err(ActionError::systemd("resetting the start counter of", unit)(e)),
        }
        sd.restart(unit)
            .await
            .and_then(|job| job.check("restart", unit))
            .map_err(ActionError::systemd("restarting", unit))?;
    }
    sd.confirm_active(unit, settle)
        .await
        .map_err(ActionError::systemd("confirming", unit))?;
    Ok(())
}

/// Start and restart jobs in flight at once, per core. Each job makes the
/// manager fork and exec a service that then competes for the same cores;
/// with every service of a 150-service phase submitted at once, the jobs
/// took 2 s each and the start-ups starved each other. A few per core keeps
/// the manager and the cores busy without queueing everything at once.
pub const UNIT_JOBS_PER_CORE: usize = 4;

/// The process-wide bound on start and restart jobs in flight
/// ([`UNIT_JOBS_PER_CORE`] per core). A permit is held only while one job
/// is submitted and waited for, never while waiting for another permit or
/// another action, so it cannot deadlock.
pub fn unit_jobs() -> &'static Semaphore {
    static JOBS: std::sync::OnceLock<Semaphore> = std::sync::OnceLock::new();
    JOBS.get_or_init(|| {
        Semaphore::new(
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
                * UNIT_JOBS_PER_CORE,
        )
    })
}

/// After readiness: the unit has been active for at least [`SETTLE`] since
/// it (re)started and is still the same invocation. A process that answers
/// once and then crashes (and is restarted by `Restart=`) is not ready.
async fn settled(sd: &Systemd, unit: &str, invocation: &str) -> Result<(), ActionError> {
    let st = sd
        .status(unit)
        .await
        .map_err(ActionError::systemd("reading the state of", unit))?;
    let now_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let since = Duration::from_micros(now_us.saturating_sub(st.active_enter_timestamp_us));
    if since < SETTLE {
        tokio::time::sleep(SETTLE.saturating_sub(since)).await;
    }
    let st = sd
        .status(unit)
        .await
        .map_err(ActionError::systemd("reading the state of", unit))?;
    if st.active_state != crate::systemd::ActiveState::Active
        || (!invocation.is_empty() && st.invocation_id != invocation)
    {
        return Err(ActionError::Unsettled {
            unit: unit.to_owned(),
            state: format!(
                "{} ({}, result {})",
                st.active_state, st.sub_state, st.result
            ),
        });
    }
    Ok(())
}

/// The unit file an install-unit action writes: the saved file it names
/// (the unit of a release a rollback returns to), else the service's unit
/// rendered from the configuration.
fn unit_text(ctx: &Ctx, source: &UnitSource, svc: &Service) -> Result<String, ActionError> {
    let text = match source {
        UnitSource::Saved(saved) => std::fs::read_to_string(saved).ok(),
        UnitSource::Config => unit::render(&ctx.env, svc).map_err(|source| ActionError::Unit {
            service: svc.name.clone(),
            source: Box::new(source),
        })?,
    };
    text.ok_or_else(|| ActionError::NoUnit {
        service: svc.name.clone(),
    })
}

use std::error::Error as _;

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

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

    /// A repository whose `svc/` holds `files` files; returns its HEAD.
    fn big_repo(dir: &std::path::Path, files: usize) -> String {
        let repo = git2::Repository::init(dir).unwrap();
        let svc = dir.join("svc");
        for d in 0..files / 100 {
            let sub = svc.join(format!("d{d}"));
            std::fs::create_dir_all(&sub).unwrap();
            for f in 0..100 {
                std::fs::write(
                    sub.join(format!("f{f}.txt")),
                    format!("{d}/{f}\n").repeat(64),
                )
                .unwrap();
            }
        }
        let mut index = repo.index().unwrap();
        index
            .add_all(["svc"], git2::IndexAddOption::DEFAULT, None)
            .unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let me = git2::Signature::now("t", "t@example.org").unwrap();
        repo.commit(Some("HEAD"), &me, &me, "big", &tree, &[])
            .unwrap()
            .to_string()
    }

    /// Builds export big trees while a timer runs on the same 2-worker
    /// runtime the commands use (readiness deadlines and `JobRemoved` waits
    /// are such timers and wake-ups): the timer stays on time, because the
    /// exports run on the blocking pool. Run inline on the workers, the
    /// exports held both of them and the timer was late by about one
    /// export.
    #[test]
    fn builds_do_not_hold_up_timers_on_the_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let sha = big_repo(&dir.path().join("repo"), 1500);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let stop = Arc::new(AtomicBool::new(false));
            let ticking = Arc::clone(&stop);
            let ticker = tokio::spawn(async move {
                let mut worst = Duration::ZERO;
                let mut last = Instant::now();
                while !ticking.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    worst = worst.max(last.elapsed());
                    last = Instant::now();
                }
                worst
            });
            let t = Instant::now();
            let mut builds = Vec::new();
            for i in 0..4 {
                let (repo, sha, dest) = (
                    dir.path().join("repo"),
                    sha.clone(),
                    dir.path().join(format!("release-{i}")),
                );
                builds.push(tokio::spawn(async move {
                    super::export(&repo, &sha, "svc", &dest).await
                }));
            }
            for b in builds {
                assert_eq!(b.await.unwrap().ok(), Some(1500));
            }
            let took = t.elapsed();
            stop.store(true, Ordering::SeqCst);
            let worst = ticker.await.unwrap();
            assert!(
                worst < took / 4,
                "a 5 ms timer was late by up to {worst:?} while builds ran for {took:?}"
            );
        });
    }
}

//! The executor: a `Plan` → effects on the host, the only stage that
//! changes anything. Actions start as soon as their predecessors succeeded
//! (builds bounded by `jobs`); every start and outcome goes to the
//! write-ahead journal first; on the first failure nothing new starts and,
//! once something live changed, every switched service is rolled back.
//! `resume` continues a journal left by a crash without redoing work whose
//! effect is still in place.

use std::collections::{BTreeMap, BTreeSet, HashMap};
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
use crate::health;
use crate::journal::{Journal, JournalError, Record, Replay};
use crate::plan::{Action, ActionKind, Plan, short};
use crate::process::{self, Run};
use crate::release::{self, Paths};
use crate::state::{self, ApplyRecord, BackupRecord, ServiceState, State};
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
}

impl Report {
    pub fn exit_code(&self) -> i32 {
        match self.outcome {
            Outcome::Succeeded => crate::exit::OK,
            Outcome::FailedUntouched => crate::exit::ERROR,
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

fn emit(progress: Progress, event: &str, action: &str, detail: &str) {
    let detail = &crate::secrets::redact(detail);
    match progress {
        Progress::Quiet => {}
        Progress::Live => {
            let line = if detail.is_empty() {
                format!("{event:>10} {action}")
            } else {
                format!("{event:>10} {action}: {detail}")
            };
            if event != "start" {
                live_bar().println(line);
            }
        }
        Progress::Lines => {
            if detail.is_empty() {
                eprintln!("{event:>10} {action}");
            } else {
                eprintln!("{event:>10} {action}: {detail}");
            }
        }
        Progress::Json => {
            let line = serde_json::json!({"event": event, "action": action, "detail": detail});
            println!("{line}");
        }
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

/// Runs blocking file-system or git work (exports, directory removal,
/// release switches, unit files) on the blocking pool, so it never holds
/// one of the runtime's two workers while jobs and probes wait on them.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("a blocking task failed: {e}"))?
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
    Ok(Some(*replay))
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
    let journal = Journal::reopen(&ctx.state_dir)?;
    let plan = replay.plan.clone();
    let id = replay.apply_id.clone();
    run(ctx, plan, id, journal, Some(replay)).await.map(Some)
}

/// Rolls back the unfinished apply in the journal (after a crash, instead
/// of resuming it); `None` when there is none.
pub async fn roll_back_unfinished(ctx: Arc<Ctx>) -> Result<Option<Report>, ApplyError> {
    let Some(replay) = unfinished(&ctx.state_dir).await? else {
        return Ok(None);
    };
    let journal: Shared = Arc::new(Mutex::new(Journal::reopen(&ctx.state_dir)?));
    let report = finish_failed(
        &ctx,
        &replay.plan,
        &replay.apply_id,
        journal,
        replay.records.clone(),
        Vec::new(),
        "rollback of an interrupted apply requested".to_owned(),
        Instant::now(),
    )
    .await?;
    Ok(Some(report))
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

async fn run(
    ctx: Arc<Ctx>,
    plan: Plan,
    apply_id: String,
    journal: Journal,
    replay: Option<Replay>,
) -> Result<Report, ApplyError> {
    let started = Instant::now();
    let journal: Shared = Arc::new(Mutex::new(journal));
    let progress = ctx.options.progress;

    // Which actions are already done (and still in effect)?
    let mut done: BTreeSet<String> = BTreeSet::new();
    if let Some(r) = &replay {
        if r.rollback_begun() {
            let report = finish_failed(
                &ctx,
                &plan,
                &apply_id,
                journal,
                r.records.clone(),
                Vec::new(),
                "resuming an interrupted rollback".to_owned(),
                started,
            )
            .await?;
            return Ok(report);
        }
        let mut invalid: BTreeSet<String> = BTreeSet::new();
        for a in &plan.actions {
            if r.succeeded(&a.id) {
                if still_in_effect(&ctx, &plan, a).await {
                    done.insert(a.id.clone());
                    emit(progress, "verified", &a.id, "done before the interruption");
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

    let by_id: HashMap<&str, &Action> = plan.actions.iter().map(|a| (a.id.as_str(), a)).collect();
    let builds = Arc::new(Semaphore::new(ctx.options.jobs.max(1)));
    let mut running: JoinSet<(String, Result<Option<String>, ActionError>)> = JoinSet::new();
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
                if !a.after.iter().all(|p| done.contains(p)) {
                    continue;
                }
                journal_append(
                    &journal,
                    Record::Started {
                        action: a.id.clone(),
                        at_ms: Some(millis_since(started)),
                    },
                )
                .await?;
                emit(progress, "start", &a.id, "");
                in_flight.insert(a.id.clone());
                running_since.insert(a.id.clone(), Instant::now());
                show_running(progress, &running_since);
                let ctx2 = Arc::clone(&ctx);
                let j2 = Arc::clone(&journal);
                let a2 = (*a).clone();
                let plan_to = plan.to.sha.clone();
                let id2 = apply_id.clone();
                let sem = Arc::clone(&builds);
                running.spawn(async move {
                    let _permit = if a2.kind == ActionKind::Build {
                        sem.acquire_owned().await.ok()
                    } else {
                        None
                    };
                    let t = Instant::now();
                    let mut res = perform(&ctx2, &a2, &plan_to, &id2, &j2).await;
                    if let (Err(ActionError::Failed(e)), Some(unit), true) = (
                        &mut res,
                        a2.unit.as_deref(),
                        matches!(a2.kind, ActionKind::Restart | ActionKind::Health),
                    ) {
                        let lines = crate::logs::tail(unit, JOURNAL_TAIL).await;
                        if !lines.is_empty() {
                            e.push_str("\nlast lines of ");
                            e.push_str(unit);
                            e.push_str("'s journal:");
                            for l in lines {
                                e.push_str("\n    | ");
                                e.push_str(&l);
                            }
                        }
                    }
                    let res = res.map(|note| {
                        let ms = t.elapsed().as_millis();
                        Some(note.map_or_else(|| format!("{ms} ms"), |n| format!("{n} ({ms} ms)")))
                    });
                    (a2.id.clone(), res)
                });
            }
        }
        if running.is_empty() {
            break;
        }
        let joined = tokio::select! {
            j = running.join_next() => j,
            () = recv(&mut sigint) => { stopping = true; interrupted = true; emit(progress, "signal", "SIGINT", "no new action starts; running ones finish"); continue; }
            () = recv(&mut sigterm) => { stopping = true; interrupted = true; emit(progress, "signal", "SIGTERM", "no new action starts; running ones finish"); continue; }
        };
        let Some(joined) = joined else { break };
        let (id, res) = match joined {
            Ok(x) => x,
            Err(e) => (
                String::from("?"),
                Err(ActionError::Failed(format!("task failed: {e}"))),
            ),
        };
        in_flight.remove(&id);
        running_since.remove(&id);
        show_running(progress, &running_since);
        match res {
            Ok(note) => {
                journal_append(
                    &journal,
                    Record::Succeeded {
                        action: id.clone(),
                        note: note.clone(),
                        at_ms: Some(millis_since(started)),
                    },
                )
                .await?;
                emit(progress, "done", &id, note.as_deref().unwrap_or(""));
                done.insert(id);
            }
            Err(ActionError::Journal(e)) => return Err(e.into()),
            Err(ActionError::Failed(err)) => {
                journal_append(
                    &journal,
                    Record::Failed {
                        action: id.clone(),
                        error: err.clone(),
                    },
                )
                .await?;
                emit(progress, "FAILED", &id, &err);
                failed.push((id, err));
                stopping = true;
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
    let millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);

    if failed.is_empty() && !interrupted {
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
        finish_journal(journal, "succeeded", &apply_id).await?;
        return Ok(Report {
            apply_id,
            outcome: Outcome::Succeeded,
            succeeded,
            failed,
            not_run,
            rolled_back: Vec::new(),
            rollback_errors: Vec::new(),
            millis,
        });
    }
    if interrupted && failed.is_empty() {
        return Ok(Report {
            apply_id,
            outcome: Outcome::Interrupted,
            succeeded,
            failed,
            not_run,
            rolled_back: Vec::new(),
            rollback_errors: Vec::new(),
            millis,
        });
    }
    let _ = by_id;
    let records = read_records(&ctx.state_dir).await?;
    let reason = failed
        .first()
        .map(|(id, e)| format!("{id} failed: {e}"))
        .unwrap_or_default();
    let mut report = finish_failed(
        &ctx, &plan, &apply_id, journal, records, failed, reason, started,
    )
    .await?;
    report.succeeded = succeeded;
    report.not_run = not_run;
    Ok(report)
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
async fn finish_journal(j: Shared, outcome: &str, apply_id: &str) -> Result<(), JournalError> {
    let j = take(j)?;
    let path = j.path().display().to_string();
    let (outcome, apply_id) = (outcome.to_owned(), apply_id.to_owned());
    tokio::task::spawn_blocking(move || j.finish(&outcome, &apply_id))
        .await
        .map_err(|source| JournalError::Task { path, source })?
}

/// What performing an action can end in besides success: the action
/// failed (the apply stops and rolls back), or the journal could not be
/// written (the apply stops at once: nothing may act without a record).
#[derive(Debug)]
enum ActionError {
    Failed(String),
    Journal(JournalError),
}

impl From<String> for ActionError {
    fn from(e: String) -> Self {
        Self::Failed(e)
    }
}

impl From<&str> for ActionError {
    fn from(e: &str) -> Self {
        Self::Failed(e.to_owned())
    }
}

impl From<JournalError> for ActionError {
    fn from(e: JournalError) -> Self {
        Self::Journal(e)
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
fn live_changed(records: &[Record]) -> bool {
    records.iter().any(|r| {
        matches!(r, Record::Switch { .. } | Record::UnitReplace { .. })
            || matches!(r, Record::Started { action, .. } if action == "daemon-reload"
                || action == "reload-proxy"
                || action.starts_with("restart:"))
    })
}

#[allow(clippy::too_many_arguments)]
async fn finish_failed(
    ctx: &Arc<Ctx>,
    plan: &Plan,
    apply_id: &str,
    journal: Shared,
    records: Vec<Record>,
    failed: Vec<(String, String)>,
    reason: String,
    started: Instant,
) -> Result<Report, ApplyError> {
    let progress = ctx.options.progress;
    let millis = || u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let mut report = Report {
        apply_id: apply_id.to_owned(),
        outcome: Outcome::FailedUntouched,
        succeeded: Vec::new(),
        failed,
        not_run: Vec::new(),
        rolled_back: Vec::new(),
        rollback_errors: Vec::new(),
        millis: 0,
    };
    let resuming_rollback = records
        .iter()
        .any(|r| matches!(r, Record::RollbackBegin { .. }));
    if !live_changed(&records) && !resuming_rollback {
        save_outcome(ctx, plan, apply_id, &records, "failed").await?;
        finish_journal(journal, "failed-untouched", apply_id).await?;
        report.millis = millis();
        return Ok(report);
    }
    if !ctx.options.rollback_on_failure && !resuming_rollback {
        // Left open on purpose: the journal knows what was switched, so
        // `rollback` undoes exactly this apply and `apply --resume` retries
        // it; a new apply is refused until one of them is chosen.
        save_outcome(ctx, plan, apply_id, &records, "failed").await?;
        drop(journal);
        report.outcome = Outcome::NeedsAttention;
        report.millis = millis();
        return Ok(report);
    }
    if !resuming_rollback {
        journal_append(
            &journal,
            Record::RollbackBegin {
                reason: reason.clone(),
            },
        )
        .await?;
    }
    // The failure itself was printed when it happened (`FAILED`): named
    // here, not repeated.
    let because = report.failed.first().map_or_else(
        || reason.lines().next().unwrap_or_default().to_owned(),
        |(id, _)| format!("because {id} failed"),
    );
    emit(progress, "rollback", &plan.environment, &because);
    let (rolled, errors) = rollback_from_journal(ctx, &records, &journal).await?;
    report.rolled_back = rolled;
    report.rollback_errors = errors;
    let outcome = if report.rollback_errors.is_empty() {
        Outcome::RolledBack
    } else {
        Outcome::NeedsAttention
    };
    save_outcome(
        ctx,
        plan,
        apply_id,
        &records,
        if outcome == Outcome::RolledBack {
            "rolled-back"
        } else {
            "rollback-failed"
        },
    )
    .await?;
    if outcome == Outcome::RolledBack {
        finish_journal(journal, "rolled-back", apply_id).await?;
    }
    report.outcome = outcome;
    report.millis = millis();
    Ok(report)
}

/// Undoes what the journal says changed: unit files back (and one
/// daemon-reload), then each switched service back to its previous release,
/// restarted and ready, in reverse order; the proxy reloaded if it was.
async fn rollback_from_journal(
    ctx: &Arc<Ctx>,
    records: &[Record],
    journal: &Shared,
) -> Result<(Vec<String>, Vec<String>), JournalError> {
    let progress = ctx.options.progress;
    let mut errors = Vec::new();
    let mut rolled = Vec::new();
    let mut units_restored = false;
    let mut seen_units = BTreeSet::new();
    for r in records.iter().rev() {
        if let Record::UnitReplace { unit, saved, .. } = r {
            if !seen_units.insert(unit.clone()) {
                continue;
            }
            let path = ctx.unit_dir.join(unit);
            let saved = saved.clone();
            let res = blocking(move || {
                match saved {
                    Some(saved) => {
                        std::fs::read(saved).and_then(|b| state::write_private(&path, &b))
                    }
                    None => match std::fs::remove_file(&path) {
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                        other => other,
                    },
                }
                .map_err(|e| e.to_string())
            })
            .await;
            if let Err(e) = res {
                errors.push(format!("restoring {unit}: {e}"));
            }
            units_restored = true;
        }
    }
    if units_restored && let Err(e) = ctx.systemd.daemon_reload().await {
        errors.push(format!("daemon-reload: {e}"));
    }
    let mut switched: Vec<(String, Option<String>)> = Vec::new();
    for r in records {
        if let Record::Switch { service, from, .. } = r
            && !switched.iter().any(|(s, _)| s == service)
        {
            switched.push((service.clone(), from.clone()));
        }
    }
    let already: BTreeSet<String> = records
        .iter()
        .filter_map(|r| match r {
            Record::RolledBack { service } => Some(service.clone()),
            _ => None,
        })
        .collect();
    for (service, from) in switched.iter().rev() {
        let Some(svc) = ctx.config.service(service) else {
            continue;
        };
        let paths = Paths::new(&ctx.env.root, service);
        let unit = svc.unit_name.clone();
        let res: Result<(), String> = async {
            if let Some(prev) = from {
                let (root, service, prev) = (ctx.env.root.clone(), service.clone(), prev.clone());
                blocking(move || {
                    let paths = Paths::new(&root, &service);
                    release::switch(&paths, &paths.release(&prev)).map_err(|e| e.to_string())
                })
                .await?;
                restart_confirmed(&ctx.systemd, &unit, Duration::ZERO).await?;
                let invocation = ctx
                    .systemd
                    .status(&unit)
                    .await
                    .map(|s| s.invocation_id)
                    .unwrap_or_default();
                let url = crate::plan::build::ready_url(svc);
                health::wait_ready(&url, svc.ready_timeout, || async { Ok(()) })
                    .await
                    .map_err(|p| p.error.unwrap_or_default())?;
                settled(&ctx.systemd, &unit, &invocation).await?;
            } else {
                // First deploy: there is nothing to go back to; stop it.
                // A unit that is gone (its file was removed above and the
                // manager unloaded it) is stopped already.
                match ctx.systemd.stop(&unit).await {
                    Ok(job) => job.check("stop", &unit).map_err(|e| e.to_string())?,
                    Err(crate::systemd::SystemdError::NoSuchUnit { .. }) => {}
                    Err(e) => return Err(e.to_string()),
                }
                let current = paths.current();
                blocking(move || match std::fs::remove_file(&current) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(format!("removing {}: {e}", current.display()))
                    }
                    _ => Ok(()),
                })
                .await?;
            }
            Ok(())
        }
        .await;
        match res {
            Ok(()) => {
                if !already.contains(service) {
                    journal_append(
                        journal,
                        Record::RolledBack {
                            service: service.clone(),
                        },
                    )
                    .await?;
                }
                emit(
                    progress,
                    "rolled-back",
                    service,
                    &from.as_deref().map_or_else(
                        || "stopped (no previous release)".to_owned(),
                        |f| format!("back to {}", short(f)),
                    ),
                );
                rolled.push(service.clone());
            }
            Err(e) => {
                emit(progress, "FAILED", &format!("rollback of {service}"), &e);
                errors.push(format!("{service}: {e}"));
            }
        }
    }
    // Only a proxy that was reloaded is reloaded back: when its check
    // failed, it still runs its old configuration and is left alone.
    let proxy_reloaded = records
        .iter()
        .any(|r| matches!(r, Record::Succeeded { action, .. } if action == "reload-proxy"));
    if proxy_reloaded
        && let Some(p) = &ctx.config.proxy
        && let Err(e) = ctx.systemd.reload(&p.unit).await
    {
        errors.push(format!("reloading {}: {e}", p.unit));
    }
    Ok((rolled, errors))
}

/// [`record_outcome`] on the blocking pool (it fsyncs `state.json`).
async fn save_outcome(
    ctx: &Arc<Ctx>,
    plan: &Plan,
    apply_id: &str,
    records: &[Record],
    outcome: &'static str,
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
    outcome: &str,
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
        migrated: records.iter().any(
            |r| matches!(r, Record::Succeeded { action, .. } if action.starts_with("migrate:")),
        ),
        outcome: outcome.to_owned(),
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
        if let Record::UnitReplace { service, saved, .. } = r {
            previous_units.insert(service.clone(), saved.clone());
            if let Some(s) = ctx.config.service(service) {
                let sha = unit::render(&ctx.env, s)
                    .ok()
                    .flatten()
                    .map(|u| state::sha256_hex(u.as_bytes()));
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
        st.record_manual_rollback(state::now_secs());
        st.rolled_back = Some(state::ManualRollback::after(
            st.rolled_back.take(),
            apply_id,
            &switched,
        ));
    }
    st.last_apply = Some(ApplyRecord {
        id: apply_id.to_owned(),
        from: plan.from.as_ref().map(|f| f.sha.clone()),
        to: plan.to.sha.clone(),
        switched: switched.clone(),
        previous_units,
        backup: last_backup(records),
        migrated: plan.actions.iter().any(|a| a.kind == ActionKind::Migrate),
        outcome: "succeeded".to_owned(),
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
    let Some(service) = a.service.as_deref() else {
        return true;
    };
    let paths = Paths::new(&ctx.env.root, service);
    match a.kind {
        ActionKind::Build => paths.is_built(&plan.to.sha),
        ActionKind::Restart => {
            let live_ok = a.dir.as_deref().is_none_or(|d| {
                std::fs::read_link(paths.current()).is_ok_and(|t| t == Path::new(d))
            });
            let unit = a.unit.clone().unwrap_or_default();
            live_ok
                && ctx
                    .systemd
                    .status(&unit)
                    .await
                    .is_ok_and(|s| s.active_state == "active")
        }
        ActionKind::InstallUnit => {
            let want = unit_text(ctx, a, service).ok().flatten();
            let have = a
                .unit
                .as_ref()
                .and_then(|u| std::fs::read_to_string(ctx.unit_dir.join(u)).ok());
            want.is_some() && want == have
        }
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
    match a.kind {
        ActionKind::Build => {
            let service = service.ok_or("build without a service")?;
            let svc = ctx.config.service(service).ok_or("unknown service")?;
            let paths = Paths::new(&ctx.env.root, service);
            if paths.is_built(to_sha) {
                return Ok(Some("already built".to_owned()));
            }
            let dir = paths.release(to_sha);
            let files = export(&ctx.repo_dir, to_sha, &svc.path, &dir).await?;
            // The cache key reads a few blobs from git (small, on this
            // worker); storing and restoring run on the blocking pool.
            let provision = match Repo::discover(&ctx.repo_dir) {
                Ok(repo) => crate::deps::provision(ctx, svc, &repo, to_sha, &dir, apply_id),
                Err(e) => Some(Err(e.to_string())),
            };
            let deps = match provision {
                Some(p) => Some(crate::deps::provide(p?).await?),
                None => None,
            };
            if let Some(argv) = &a.command {
                process::run(Run {
                    argv,
                    dir: Some(&dir),
                    env: &command_env(ctx, Some(service), dir.to_str()),
                    timeout: Duration::from_secs(a.timeout_secs.unwrap_or(900)),
                    log: &log_path(ctx, apply_id, &a.id),
                })
                .await
                .map_err(|e| e.to_string())?;
            }
            let sha = to_sha.to_owned();
            blocking(move || release::mark_built(&dir, &sha).map_err(|e| e.to_string())).await?;
            Ok(Some(match deps {
                Some(d) => format!("{files} files; {d}"),
                None => format!("{files} files"),
            }))
        }
        ActionKind::Migrate => {
            let argv = a.command.as_ref().ok_or("migrate without a command")?;
            let dir = a.dir.as_deref().map(Path::new);
            process::run(Run {
                argv,
                dir,
                env: &command_env(ctx, service, a.dir.as_deref()),
                timeout: Duration::from_secs(a.timeout_secs.unwrap_or(900)),
                log: &log_path(ctx, apply_id, &a.id),
            })
            .await
            .map_err(|e| e.to_string())?;
            Ok(None)
        }
        ActionKind::Backup => {
            let b = ctx
                .env
                .backup
                .as_ref()
                .ok_or("no backup block in this environment")?;
            let taken = crate::backup::take(
                &ctx.config.project.name,
                &ctx.env,
                &ctx.state_dir,
                b,
                apply_id,
            )
            .await?;
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
        ActionKind::InstallUnit => {
            let service = service.ok_or("install-unit without a service")?;
            let svc = ctx.config.service(service).ok_or("unknown service")?;
            let text = unit_text(ctx, a, service)
                .map_err(|e| e.to_string())?
                .ok_or(
                "no unit to install: the service has no unit block, or the saved unit file is gone",
            )?;
            let path = ctx.unit_dir.join(&svc.unit_name);
            let keep = ctx
                .state_dir
                .join("units")
                .join(apply_id)
                .join(&svc.unit_name);
            let saved = {
                let path = path.clone();
                blocking(move || match std::fs::read(&path) {
                    Ok(old) => {
                        state::write_private(&keep, &old)
                            .map_err(|e| format!("saving {}: {e}", path.display()))?;
                        Ok(Some(keep.display().to_string()))
                    }
                    Err(_) => Ok(None),
                })
                .await?
            };
            journal_append(
                journal,
                Record::UnitReplace {
                    service: service.to_owned(),
                    unit: svc.unit_name.clone(),
                    saved,
                },
            )
            .await?;
            // A unit carrying inline secret values is readable by root only.
            let private = unit::carries_secrets(&text, &unit::secret_names(svc));
            blocking(move || {
                unit::install_file(&path, &text, private)
                    .map_err(|e| format!("writing {}: {e}", path.display()))
            })
            .await?;
            Ok(None)
        }
        ActionKind::Barrier => Ok(None),
        ActionKind::DaemonReload => {
            // The units just installed are also enabled (their [Install]
            // section), so they start at boot like the hand-made units they
            // replace; enabling reloads the manager too.
            let installed: Vec<String> = a
                .after
                .iter()
                .filter_map(|id| id.strip_prefix("install-unit:"))
                .filter_map(|s| ctx.config.service(s))
                .map(|s| s.unit_name.clone())
                .collect();
            if installed.is_empty() {
                ctx.systemd
                    .daemon_reload()
                    .await
                    .map_err(|e| e.to_string())?;
            } else {
                ctx.systemd
                    .enable(&installed)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(None)
        }
        ActionKind::Restart => {
            let unit = a.unit.as_deref().ok_or("restart without a unit")?;
            if let Some(dir) = &a.dir {
                let service = service.ok_or("a release switch without a service")?;
                let paths = Paths::new(&ctx.env.root, service);
                let target = PathBuf::from(dir);
                let to = target
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or("bad release directory")?;
                let from = paths.live();
                journal_append(
                    journal,
                    Record::Switch {
                        service: service.to_owned(),
                        from: from.clone(),
                        to: to.clone(),
                    },
                )
                .await?;
                blocking(move || {
                    release::switch(&paths, &target)
                        .map_err(|e| format!("switching {}: {e}", paths.current().display()))
                })
                .await?;
            }
            // A service's health action settles it; a bare unit
            // (infrastructure) has no probe, so it settles here.
            let settle = if service.is_some() {
                Duration::ZERO
            } else {
                SETTLE
            };
            restart_confirmed(&ctx.systemd, unit, settle).await?;
            Ok(None)
        }
        ActionKind::Health => {
            let url = a.url.as_deref().ok_or("health without a URL")?;
            let unit = a.unit.clone().unwrap_or_default();
            let sd = ctx.systemd.clone();
            let timeout = Duration::from_secs(a.timeout_secs.unwrap_or(60));
            let invocation = sd
                .status(&unit)
                .await
                .map(|s| s.invocation_id)
                .unwrap_or_default();
            let probe = health::wait_ready(url, timeout, || {
                let sd = sd.clone();
                let unit = unit.clone();
                async move {
                    match sd.status(&unit).await {
                        Ok(s)
                            if s.active_state == "active"
                                || s.active_state == "activating"
                                || s.active_state == "reloading" =>
                        {
                            Ok(())
                        }
                        Ok(s) => Err(format!(
                            "{unit} is {} ({}, result {})",
                            s.active_state, s.sub_state, s.result
                        )),
                        Err(_) => Ok(()),
                    }
                }
            })
            .await
            .map_err(|p| format!("{url}: {}", p.error.unwrap_or_default()))?;
            if !unit.is_empty() {
                settled(&ctx.systemd, &unit, &invocation).await?;
            }
            Ok(Some(format!("ready in {} ms", probe.millis)))
        }
        ActionKind::ReloadProxy => {
            if let Some(argv) = &a.command {
                let vars = Vars {
                    root: Some(&ctx.env.root),
                    ..Vars::default()
                };
                let argv = template::render_all(argv, &vars);
                process::run(Run {
                    argv: &argv,
                    dir: None,
                    env: &command_env(ctx, None, None),
                    timeout: Duration::from_secs(a.timeout_secs.unwrap_or(60)),
                    log: &log_path(ctx, apply_id, &a.id),
                })
                .await
                .map_err(|e| format!("proxy check: {e}"))?;
            }
            let unit = a.unit.as_deref().ok_or("reload-proxy without a unit")?;
            ctx.systemd
                .reload(unit)
                .await
                .map_err(|e| e.to_string())?
                .check("reload", unit)
                .map_err(|e| e.to_string())?;
            Ok(None)
        }
    }
}

/// Exports `subdir` of the tree at `sha` into the release directory `dir`
/// (a leftover of an interrupted build is removed first), on the blocking
/// pool: a big tree takes seconds of git and file-system work. Returns the
/// number of files.
async fn export(repo_dir: &Path, sha: &str, subdir: &str, dir: &Path) -> Result<u64, String> {
    let (repo_dir, sha, subdir, dir) = (
        repo_dir.to_owned(),
        sha.to_owned(),
        subdir.to_owned(),
        dir.to_owned(),
    );
    blocking(move || {
        if dir.exists() {
            // An interrupted build: start again from a fresh export.
            std::fs::remove_dir_all(&dir)
                .map_err(|e| format!("removing {}: {e}", dir.display()))?;
        }
        let repo = Repo::discover(&repo_dir).map_err(|e| e.to_string())?;
        repo.export(&sha, &subdir, &dir).map_err(|e| {
            format!(
                "{e}: {}",
                e.source().map(ToString::to_string).unwrap_or_default()
            )
        })
    })
    .await
}

/// Restarts a unit and confirms it stays active. A deploy's restart is
/// deliberate, not a crash loop, so the unit's start-rate counter is reset
/// first (`ResetFailedUnit` also resets the rate limit): otherwise a few
/// deploys within `StartLimitIntervalSec` (10 s by default) would hit
/// `start-limit-hit`.
/// https://www.freedesktop.org/software/systemd/man/systemctl.html#reset-failed%20%5BPATTERN%E2%80%A6%5D
///
/// `settle`: how long the unit must then stay active before this returns.
/// A service's restart passes zero, because its readiness check that
/// follows enforces the settle window itself while it polls (`settled`),
/// so the two overlap instead of adding up in every phase.
///
/// The job itself runs under a permit of [`unit_jobs`]; the confirmation
/// does not, so a settle window never keeps another restart waiting.
pub async fn restart_confirmed(sd: &Systemd, unit: &str, settle: Duration) -> Result<(), String> {
    {
        let _permit = unit_jobs().acquire().await.ok();
        let _ = sd.reset_failed(unit).await;
        sd.restart(unit)
            .await
            .map_err(|e| e.to_string())?
            .check("restart", unit)
            .map_err(|e| e.to_string())?;
    }
    sd.confirm_active(unit, settle)
        .await
        .map_err(|e| e.to_string())?;
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
async fn settled(sd: &Systemd, unit: &str, invocation: &str) -> Result<(), String> {
    let st = sd.status(unit).await.map_err(|e| e.to_string())?;
    let now_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let since = Duration::from_micros(now_us.saturating_sub(st.active_enter_timestamp_us));
    if since < SETTLE {
        tokio::time::sleep(SETTLE.saturating_sub(since)).await;
    }
    let st = sd.status(unit).await.map_err(|e| e.to_string())?;
    if st.active_state != "active" || (!invocation.is_empty() && st.invocation_id != invocation) {
        return Err(format!(
            "{unit} answered ready but did not stay up: now {} ({}, result {})",
            st.active_state, st.sub_state, st.result
        ));
    }
    Ok(())
}

/// The unit file an install-unit action writes: the saved file it names in
/// `dir` (a rollback restoring the unit of a previous release), else the
/// service's unit rendered from the configuration.
fn unit_text(ctx: &Ctx, a: &Action, service: &str) -> Result<Option<String>, unit::UnitError> {
    match &a.dir {
        Some(saved) => Ok(std::fs::read_to_string(saved).ok()),
        None => match ctx.config.service(service) {
            Some(s) => unit::render(&ctx.env, s),
            None => Ok(None),
        },
    }
}

use std::error::Error as _;

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

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
                assert_eq!(b.await.unwrap(), Ok(1500));
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

//! The step performers: one function per [`Step`] kind, grouped by family
//! in this directory (build and export, migrate and backup, unit files,
//! systemd jobs, health, proxy), and [`run`], which performs one action as
//! the executor starts it: its spawned commands journaled, its outcome
//! turned into the note or the message the journal records.

pub(super) mod build;
mod cutover;
mod database;
mod health;
mod install;
mod jobs;
mod proxy;
pub(super) mod unit_file;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use miette::Diagnostic;

use crate::config::Service;
use crate::journal::JournalError;
use crate::plan::{Action, ActionKind, Step};
use crate::process;
use crate::unit;

use super::Ctx;
use super::journaling::{Shared, spawn_recorder};

/// How one action ended: its journal note, or its error with the message
/// recorded (how the unit's main process ended and its last journal lines
/// added) and, for a unit's restart, start or readiness check, the same
/// facts for the event stream.
pub(super) type Performed =
    Result<Option<String>, (ActionError, String, Option<crate::events::UnitFailure>)>;

/// What one performer sees: the action and where it runs.
struct Act<'a> {
    ctx: &'a Ctx,
    action: &'a Action,
    /// The commit the plan deploys.
    to_sha: &'a str,
    apply_id: &'a str,
    journal: &'a Shared,
}

impl Act<'_> {
    /// The action's service, from the configuration.
    fn configured(&self, what: &'static str) -> Result<&Service, ActionError> {
        let name = self
            .action
            .service
            .as_deref()
            .ok_or(ActionError::NoService { what })?;
        self.ctx
            .config
            .service(name)
            .ok_or_else(|| ActionError::UnknownService {
                service: name.to_owned(),
            })
    }

    /// The log file of the action's command.
    fn log(&self) -> PathBuf {
        log_path(self.ctx, self.apply_id, &self.action.id)
    }
}

/// Performs `a` as the executor starts it: the commands it spawns are
/// journaled (`spawned`), and the outcome becomes the note (with its
/// duration) or the message (with the unit's last journal lines) that the
/// journal records.
pub(super) async fn run(
    ctx: &Ctx,
    a: &Action,
    to_sha: &str,
    apply_id: &str,
    journal: &Shared,
) -> Performed {
    let t = Instant::now();
    let (recorder, unrecorded) = spawn_recorder(journal, &a.id);
    let act = Act {
        ctx,
        action: a,
        to_sha,
        apply_id,
        journal,
    };
    let res = process::orphans::recorded(recorder, perform(&act)).await;
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
    match res {
        Ok(note) => {
            let ms = t.elapsed().as_millis();
            Ok(Some(note.map_or_else(
                || format!("{ms} ms"),
                |n| format!("{n}; the action took {ms} ms"),
            )))
        }
        Err(e) => {
            let mut msg = e.message();
            // The unit's own words on why it did not come up.
            let mut failure = None;
            if let (Some(unit), true) = (
                a.step.unit(),
                matches!(
                    a.kind(),
                    ActionKind::Restart
                        | ActionKind::Health
                        | ActionKind::Start
                        | ActionKind::SlotStart
                        | ActionKind::SlotReady
                ),
            ) && !matches!(e, ActionError::Journal(_))
            {
                // A blue/green template runs nothing: its slot instances do.
                for unit in cutover::reported_units(&act, unit) {
                    let f = unit_failure(ctx, &unit).await;
                    // How its main process ended, and how often systemd
                    // restarted it: a crash on start says its exit status.
                    if let Some(exit) = &f.exit {
                        let _ = write!(msg, "\n{unit}: {exit}");
                    }
                    if let Some(why) = &f.journal_unavailable {
                        let _ = write!(msg, "\nno journal lines of {unit}: {why}");
                    } else {
                        let _ = write!(msg, "\nlast lines of {unit}'s journal:");
                        for l in &f.journal {
                            msg.push_str("\n    | ");
                            msg.push_str(l);
                        }
                    }
                    failure.get_or_insert(f);
                }
            }
            Err((e, msg, failure))
        }
    }
}

/// What systemd and the journal say about `unit` after its action failed.
/// A unit in a `Restart=` loop runs a new main process most of the time,
/// which has not ended yet: its exit status is read again for up to
/// [`RESTARTED_EXIT_WAIT`], until that process ends the way the last one
/// did (a crash on start ends again within a second or so).
async fn unit_failure(ctx: &Ctx, unit: &str) -> crate::events::UnitFailure {
    let deadline = Instant::now() + RESTARTED_EXIT_WAIT;
    let mut exit = ctx.systemd.main_exit(unit).await.ok().flatten();
    while exit
        .as_ref()
        .is_some_and(crate::systemd::MainExit::restarted_and_running)
        && Instant::now() < deadline
    {
        tokio::time::sleep(RESTARTED_EXIT_POLL).await;
        exit = ctx.systemd.main_exit(unit).await.ok().flatten();
    }
    let journal = crate::logs::tail(unit, JOURNAL_TAIL).await;
    let (journal, journal_unavailable) = match journal {
        Ok(lines) => (lines, None),
        Err(why) => (Vec::new(), Some(why)),
    };
    crate::events::UnitFailure {
        name: unit.to_owned(),
        exit,
        journal,
        journal_unavailable,
    }
}

/// Performs one action; `Ok(Some(note))` adds a note to the journal.
async fn perform(act: &Act<'_>) -> Result<Option<String>, ActionError> {
    match &act.action.step {
        Step::Build {
            release,
            command,
            artifact: None,
        } => build::build(act, release, command.as_ref()).await,
        Step::Build {
            release,
            artifact: Some(id),
            ..
        } => install::install(act, release, id).await,
        Step::Migrate { release, command } => database::migrate(act, release, command).await,
        Step::Backup { .. } => database::backup(act).await,
        Step::InstallUnit { unit, source } => unit_file::install(act, unit, source).await,
        Step::RestoreUnit { unit, saved } => unit_file::restore(act, unit, saved).await,
        Step::RemoveUnit { unit } => unit_file::remove(act, unit).await,
        Step::Barrier => Ok(None),
        Step::DaemonReload { enable } => jobs::daemon_reload(act, enable).await,
        Step::Restart {
            unit,
            release,
            settle,
        } => jobs::restart(act, unit, release.as_deref(), *settle).await,
        Step::Start { unit, settle } => jobs::start(act, unit, *settle).await,
        Step::Stop { unit, unlink } => jobs::stop(act, unit, unlink.as_deref()).await,
        Step::Enable { units } => jobs::enable(act, units).await,
        Step::Disable { units } => jobs::disable(act, units).await,
        Step::Health {
            unit,
            check,
            timeout_secs,
        } => health::health(act, unit, check, *timeout_secs).await,
        Step::ReloadProxy { unit, check } => proxy::reload(act, unit, check.as_ref()).await,
        Step::SlotStart {
            slots,
            upstream,
            release,
            ..
        } => cutover::start(act, *slots, upstream, release.as_deref()).await,
        Step::SlotReady {
            slots,
            url,
            timeout_secs,
            ..
        } => cutover::ready(act, *slots, url, *timeout_secs).await,
        Step::SwitchUpstream {
            unit,
            slots,
            upstream,
            check,
        } => cutover::switch(act, unit, *slots, upstream, check.as_ref()).await,
        Step::Drain { secs, .. } => cutover::drain(act, *secs).await,
        Step::SlotStop {
            slots,
            upstream,
            unlink,
            ..
        } => cutover::stop(act, *slots, upstream.as_deref(), unlink.as_deref()).await,
    }
}

/// How long a failure report waits for the restarted main process of a unit
/// in a `Restart=` loop to end ([`unit_failure`]).
const RESTARTED_EXIT_WAIT: Duration = Duration::from_secs(2);
/// How often it looks meanwhile.
const RESTARTED_EXIT_POLL: Duration = Duration::from_millis(50);

/// Journal lines of a unit shown when its restart or readiness fails.
const JOURNAL_TAIL: usize = 10;

/// Why an action failed. Each variant has a stable code; the message
/// (with its sources) is what the journal's `failed` record and the report
/// show. [`ActionError::Journal`] is different: the journal could not be
/// written, so the run stops at once (nothing may act without a record).
#[derive(Debug, thiserror::Error, Diagnostic)]
pub(crate) enum ActionError {
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
    #[error("artifact: {error}")]
    #[diagnostic(code(moorline::action::artifact))]
    Artifact {
        error: crate::artifact::ArtifactError,
    },
    #[error(
        "the release {release} is live and was not installed from artifact {id}; it is not replaced"
    )]
    #[diagnostic(code(moorline::action::live_release))]
    LiveRelease { release: String, id: String },
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
    #[error("{unit} did not stay up through the settle window: now {state}")]
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
    pub(crate) fn message(&self) -> String {
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

/// The environment of the commands an apply runs ([`crate::process::command_env`]).
fn command_env(
    ctx: &Ctx,
    service: Option<&str>,
    release_dir: Option<&str>,
) -> BTreeMap<String, String> {
    crate::process::command_env(&ctx.env, service, release_dir)
}

/// The log file of `action`'s commands in the apply `apply_id`.
fn log_path(ctx: &Ctx, apply_id: &str, action: &str) -> PathBuf {
    ctx.state_dir
        .join("logs")
        .join(apply_id)
        .join(format!("{}.log", action.replace([':', '/'], "-")))
}

//! The systemd-job steps: daemon-reload (enabling new units), restart (a
//! service's release switched first, journaled), start, stop (a link
//! removed after), enable, disable; and the process-wide bound on start
//! and restart jobs in flight ([`unit_jobs`]).

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::journal::Record;
use crate::plan::Settle;
use crate::release::{self, Paths};
use crate::systemd::{SETTLE, Systemd};

use super::super::journaling::journal_append;
use super::{Act, ActionError, blocking};

/// Reloads the manager, or enables `enable` (which reloads it too).
pub(super) async fn daemon_reload(
    act: &Act<'_>,
    enable: &[String],
) -> Result<Option<String>, ActionError> {
    let ctx = act.ctx;
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

/// Switches the service to `release` (when given, journaled first), then
/// restarts `unit` and confirms it stays up.
pub(super) async fn restart(
    act: &Act<'_>,
    unit: &str,
    release: Option<&str>,
    settle: Settle,
) -> Result<Option<String>, ActionError> {
    let ctx = act.ctx;
    if let Some(dir) = release {
        let svc = act.configured("a release switch")?;
        let paths = Paths::new(&ctx.env.root, &svc.name);
        let target = PathBuf::from(dir);
        let to = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| ActionError::Io {
                what: "a release directory without a name:",
                path: dir.to_owned(),
                source: std::io::ErrorKind::InvalidInput.into(),
            })?;
        let from = paths.live();
        journal_append(
            act.journal,
            Record::Switch {
                service: svc.name.clone(),
                from,
                to,
            },
        )
        .await?;
        blocking(move || {
            release::switch(&paths, &target).map_err(ActionError::io("switching", &paths.current()))
        })
        .await?;
    }
    restart_confirmed(&ctx.systemd, unit, settle_window(settle)).await?;
    Ok(None)
}

/// Starts `unit` and confirms it stays up.
pub(super) async fn start(
    act: &Act<'_>,
    unit: &str,
    settle: Settle,
) -> Result<Option<String>, ActionError> {
    let ctx = act.ctx;
    {
        let _permit = unit_jobs().acquire().await.ok();
        ctx.systemd
            .start(unit)
            .await
            .and_then(|job| job.check("start", unit))
            .map_err(ActionError::systemd("starting", unit))?;
    }
    ctx.systemd
        .confirm_active(unit, settle_window(settle))
        .await
        .map_err(ActionError::systemd("confirming", unit))?;
    Ok(None)
}

/// Stops `unit`, then removes `unlink` (a release link) if given.
pub(super) async fn stop(
    act: &Act<'_>,
    unit: &str,
    unlink: Option<&str>,
) -> Result<Option<String>, ActionError> {
    // A unit that is not loaded (never installed, or its file gone)
    // is stopped already.
    match act.ctx.systemd.stop(unit).await {
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

pub(super) async fn enable(act: &Act<'_>, units: &[String]) -> Result<Option<String>, ActionError> {
    act.ctx
        .systemd
        .enable(units)
        .await
        .map_err(ActionError::systemd("enabling", &units.join(" ")))?;
    Ok(None)
}

pub(super) async fn disable(
    act: &Act<'_>,
    units: &[String],
) -> Result<Option<String>, ActionError> {
    act.ctx
        .systemd
        .disable(units)
        .await
        .map_err(ActionError::systemd("disabling", &units.join(" ")))?;
    Ok(None)
}

/// How long a restarted or started unit must stay active before its action
/// ends: a probe that follows holds it to [`SETTLE`] itself.
fn settle_window(settle: Settle) -> Duration {
    match settle {
        Settle::Probe => Duration::ZERO,
        Settle::Window => SETTLE,
    }
}

/// Restarts a unit and confirms it stays active. A deploy's restart is
/// deliberate, not a crash loop, so the unit's start-rate counter is reset
/// first (`ResetFailedUnit` also resets the rate limit): otherwise a few
/// deploys within `StartLimitIntervalSec` (10 s by default) would hit
/// `start-limit-hit`. A unit the manager has not loaded has no counter;
/// any other failure to reset it fails the restart.
/// https://www.freedesktop.org/software/systemd/man/systemctl.html#reset-failed%20%5BPATTERN%E2%80%A6%5D
///
/// `settle`: how long the unit must then stay active before this returns.
/// A service's restart passes zero, because its readiness check that
/// follows enforces the settle window itself while it polls (`settled`),
/// so the two overlap instead of adding up in every phase.
///
/// The job itself runs under a permit of [`unit_jobs`]; the confirmation
/// does not, so a settle window never keeps another restart waiting.
pub(crate) async fn restart_confirmed(
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
pub(crate) const UNIT_JOBS_PER_CORE: usize = 4;

/// The process-wide bound on start and restart jobs in flight
/// ([`UNIT_JOBS_PER_CORE`] per core). A permit is held only while one job
/// is submitted and waited for, never while waiting for another permit or
/// another action, so it cannot deadlock.
pub(crate) fn unit_jobs() -> &'static Semaphore {
    static JOBS: std::sync::OnceLock<Semaphore> = std::sync::OnceLock::new();
    JOBS.get_or_init(|| {
        Semaphore::new(
            std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
                * UNIT_JOBS_PER_CORE,
        )
    })
}

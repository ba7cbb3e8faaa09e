//! `moorline status`: the host (systemd over D-Bus, `current` symlinks, installed unit files,
//! `state.json`, each service's readiness (HTTP, TCP, its exec command, or its unit's state),
//! optionally each runtime's `migrate-status` command)
//! goes in, one [`Status`] value comes out; rendering it ([`text`], [`json`]) is separate and
//! pure. Nothing here changes the host.
//!
//! # JSON (`--format json`), format version 1
//!
//! ```text
//! {
//!   "format_version": 1,
//!   "project": "pakashop", "environment": "staging", "branch": "main",
//!   "branch_tip": "<sha>" | null,          // tip of the environment's branch
//!   "deployed": "<sha>" | null,            // state.json's revision (last complete apply)
//!   "drift": [Drift],                      // environment-level drift (never deployed, behind branch, tip failed here)
//!   "phases": [{
//!     "name": "core",
//!     "units": [Unit],                     // the phase's infrastructure units
//!     "services": [{
//!       "name", "unit", "phase",
//!       "load_state", "active_state", "sub_state", "result",
//!       "since": "<RFC 3339>" | null,      // ActiveEnterTimestamp
//!       "since_us": <µs since epoch>,      // 0 = never active
//!       "unit_file_state": "enabled" | "disabled" | "" | ...,
//!       "release": {"revision", "short", "age_secs": <u64> | null} | null,
//!       "artifact": "sha256:<hex>" | null, // the artifact the live release was installed from
//!       "liveness": Probe, "readiness": Probe,
//!       "migrations": {"state": "up-to-date"|"pending"|"failed", "command": [..],
//!                      "exit_code": <i32> | null, "output": "..."} | null,
//!       "drift": [Drift],
//!       "healthy": bool                    // active, live, ready, no drift, migrations not pending
//!     }]
//!   }],
//!   "proxy": Unit | null,
//!   "summary": {"services", "healthy", "unhealthy", "drifted"},
//!   "ok": bool                             // what `--check` tests (with or without --fail-behind)
//! }
//! Unit  = {"unit", "active_state", "sub_state", "ok"}
//! Probe = {"url", "status": <u16> | null, "ok", "millis", "error": "..." | null}
//!         url: the HTTP URL, "tcp://127.0.0.1:PORT", the exec argv joined by spaces,
//!         or "systemd: UNIT (ready \"notify\"|\"none\")"
//! Drift = {"kind", "detail"}, kind one of: unit-file-edited, unit-file-outdated,
//!         unit-file-missing, current-mismatch, not-active, no-release,
//!         never-deployed, behind-branch, rolled-back, failed-here (the
//!         last three fail `--check` only with `--fail-behind`),
//!         unfinished-apply, artifact-mismatch
//! ```
//!
//! Probes and D-Bus reads for all services run concurrently, so a status of 19 services takes
//! about as long as the slowest single probe.

use miette::Diagnostic;
use serde::Serialize;

use crate::health::Probe;
use crate::systemd::{ActiveState, SystemdError};

mod drift;
mod gather;
mod render;

pub(crate) use gather::gather;
pub(crate) use render::{is_ok, json, now_us, text};

/// Version of the JSON shape above; bumped on any incompatible change.
pub(crate) const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error, Diagnostic)]
pub(crate) enum StatusError {
    #[error("cannot read the state of {unit} from systemd")]
    #[diagnostic(
        code(moorline::status::systemd),
        help("check that the service manager is reachable (--systemd system|user)")
    )]
    Systemd {
        unit: String,
        #[source]
        source: SystemdError,
    },
    #[error("a status task failed: {0}")]
    #[diagnostic(
        code(moorline::status::task),
        help("this is a bug in moorline; please report it")
    )]
    Task(String),
}

/// Why something counts as drifted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum DriftKind {
    /// The installed unit file's SHA-256 differs from what moorline installed (state).
    UnitFileEdited,
    /// The installed unit file differs from what the current configuration renders.
    UnitFileOutdated,
    /// The configuration declares the unit, but no unit file is installed.
    UnitFileMissing,
    /// `current` does not point at the release the state records.
    CurrentMismatch,
    /// The unit is not active.
    NotActive,
    /// The state records the service, but `current` is missing.
    NoRelease,
    /// Nothing was ever deployed (no state.json, or the service is not in it).
    NeverDeployed,
    /// The environment's branch has commits that are not deployed.
    BehindBranch,
    /// Services were rolled back by hand since the last deploy (the state
    /// records it): they run releases older than the deployed revision.
    RolledBack,
    /// An apply's journal is still open: it failed and was left for a
    /// human (`--on-failure stop`, a rollback that could not finish) or was
    /// interrupted; every other apply is refused until it is settled.
    UnfinishedApply,
    /// The branch tip (or a commit with the same tree) failed on this
    /// environment, or was rolled back by hand here, and no deploy of it
    /// succeeded since (the state records it): deploying it again is asked
    /// about. Reported only, like `behind-branch`.
    FailedHere,
    /// The live release was installed from an artifact, and its files no
    /// longer match the artifact's manifest (a file edited, added,
    /// removed or chmodded by hand), or cannot be checked against it.
    ArtifactMismatch,
}

impl DriftKind {
    /// Whether `status --check` fails on it without `--fail-behind`: what
    /// an operator must act on. Running behind the branch (between a merge
    /// and its deploy, or after a deliberate rollback) is reported only.
    pub(crate) fn fails_check(self) -> bool {
        !matches!(
            self,
            Self::BehindBranch | Self::RolledBack | Self::FailedHere
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Drift {
    pub(crate) kind: DriftKind,
    pub(crate) detail: String,
}

/// A unit reported by its active state only (infrastructure units, the proxy).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct UnitState {
    pub(crate) unit: String,
    pub(crate) active_state: ActiveState,
    pub(crate) sub_state: String,
    pub(crate) ok: bool,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Release {
    pub(crate) revision: String,
    pub(crate) short: String,
    /// Seconds since the release directory was last modified (built).
    pub(crate) age_secs: Option<u64>,
}

pub(crate) use crate::migrations::{MigrationState, Migrations};

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServiceStatus {
    pub(crate) name: String,
    pub(crate) unit: String,
    pub(crate) phase: String,
    pub(crate) load_state: String,
    pub(crate) active_state: ActiveState,
    pub(crate) sub_state: String,
    pub(crate) result: String,
    pub(crate) since: Option<String>,
    pub(crate) since_us: u64,
    pub(crate) unit_file_state: String,
    pub(crate) release: Option<Release>,
    /// The artifact the live release was installed from; `None`: built
    /// on this host.
    pub(crate) artifact: Option<String>,
    pub(crate) liveness: Probe,
    pub(crate) readiness: Probe,
    pub(crate) migrations: Option<Migrations>,
    pub(crate) drift: Vec<Drift>,
    pub(crate) healthy: bool,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct PhaseStatus {
    pub(crate) name: String,
    pub(crate) units: Vec<UnitState>,
    pub(crate) services: Vec<ServiceStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Summary {
    pub(crate) services: usize,
    pub(crate) healthy: usize,
    pub(crate) unhealthy: usize,
    pub(crate) drifted: usize,
}

/// Everything `moorline status` reports.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Status {
    pub(crate) format_version: u32,
    pub(crate) project: String,
    pub(crate) environment: String,
    pub(crate) branch: String,
    pub(crate) branch_tip: Option<String>,
    pub(crate) deployed: Option<String>,
    pub(crate) drift: Vec<Drift>,
    pub(crate) phases: Vec<PhaseStatus>,
    pub(crate) proxy: Option<UnitState>,
    pub(crate) summary: Summary,
    /// Every service healthy, every unit active, no environment drift
    /// that fails the check (behind the branch and rolled back by hand
    /// count only with `fail_behind`).
    pub(crate) ok: bool,
}

/// What to gather besides the always-on checks.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Options {
    pub(crate) migrations: bool,
    /// `--fail-behind`: being behind the branch, or rolled back by hand,
    /// fails the check too.
    pub(crate) fail_behind: bool,
}

fn short(sha: &str) -> &str {
    crate::plan::short(sha)
}

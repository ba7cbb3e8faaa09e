//! The one D-Bus boundary to `org.freedesktop.systemd1`: unit names and job requests go in,
//! job results ([`JobResult`]) and unit snapshots ([`UnitStatus`]) come out; every call is
//! bounded by a named timeout, every property read goes to the manager (nothing is cached),
//! and a job is only reported finished once systemd's own `JobRemoved` signal for that very
//! job has arrived — or, when the bus connection was lost while waiting, once the unit's state
//! read over a new connection proves how the job ended (see [`Systemd`] on reconnecting).
//!
//! The D-Bus API used here is documented in `org.freedesktop.systemd1(5)`
//! (<https://www.freedesktop.org/software/systemd/man/latest/org.freedesktop.systemd1.html>).

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_core::Stream;
use miette::Diagnostic;
use serde::Serialize;
use thiserror::Error;
use zbus::proxy::CacheProperties;
use zbus::{Connection, OwnedObjectPath};

/// How long establishing a bus connection (socket connect, authentication, `Hello`, and our
/// `Subscribe`) may take. A healthy local bus answers in milliseconds; this only bounds a hung
/// or wedged broker so that `moorline` fails with a diagnostic instead of hanging.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The reply timeout for every single method call. This is the default of sd-bus (and thus of
/// `systemctl`), 25 s (`BUS_DEFAULT_TIMEOUT` in systemd's sources); a `daemon-reload` on a big
/// host is the slowest call we make and stays well inside it.
pub(crate) const METHOD_TIMEOUT: Duration = Duration::from_secs(25);

/// How long to wait for the `JobRemoved` signal of a submitted job.
///
/// systemd enforces its own limits on every job: a start gives up after `TimeoutStartSec=` and a
/// stop after `TimeoutStopSec=` (both default to `DefaultTimeoutStartSec=`/
/// `DefaultTimeoutStopSec=` = 90 s, see `systemd-system.conf(5)`), and a restart is a stop
/// followed by a start. So for units with default timeouts systemd itself finishes the job
/// within 180 s; this deadline sits just above that and only guards against a lost signal or a
/// hung manager. Units with longer configured timeouts need [`Systemd::with_job_timeout`].
pub(crate) const JOB_TIMEOUT: Duration = Duration::from_secs(190);

/// The settle window [`Systemd::confirm_active`] waits after a start/restart job.
///
/// For `Type=simple` (and `exec`) services systemd reports the start job `done` as soon as the
/// process has been forked (`systemd.service(5)`: "systemd will consider the unit started
/// immediately after the main service process has been forked off"), even when the binary exits
/// at once; the unit only turns `failed` when the `SIGCHLD` is processed, measured at a few
/// milliseconds on a trivial service. 300 ms is two orders of magnitude above that, so an
/// instant crash (bad flag, missing config, port in use) is reliably seen, while it stays far
/// below the `sleep 2` of the old bash deploy. It is deliberately not a health check: a service
/// that crashes after seconds needs a readiness protocol (`Type=notify`) or a probe, not a
/// longer sleep. The executor overlaps this window with a service's readiness polling (the
/// health action waits out whatever remains of it, then re-checks the unit and its
/// InvocationID), so a phase costs max(settle, readiness), not their sum.
pub const SETTLE: Duration = Duration::from_millis(300);

/// How long one operation may spend reconnecting after the bus connection was lost.
///
/// A broker restart (`systemctl restart dbus` on a package upgrade, dbus-broker or dbus-daemon)
/// takes a few seconds on a busy host; measured here on a private user manager: after the
/// `dbus-daemon` was killed (SIGTERM or SIGKILL) or restarted through `dbus.service`, the first
/// new connection (which socket-activates a new broker through `dbus.socket`) could call
/// `org.freedesktop.systemd1` after 45–75 ms, so the manager re-registers on the new broker
/// at once. 30 s covers a slow restart under load many times over, yet fails an operation
/// whose bus stays away long before a human would give up on it.
pub(crate) const RECONNECT_BUDGET: Duration = Duration::from_secs(30);

/// The pause after the first failed reconnect attempt; it doubles up to
/// [`RECONNECT_MAX_DELAY`]. The first attempt is immediate: the listening socket outlives the
/// broker (`dbus.socket`), so a new broker is usually one connect away.
const RECONNECT_FIRST_DELAY: Duration = Duration::from_millis(50);

/// The longest pause between reconnect attempts: long enough not to spin against a broker that
/// is still starting, short enough to notice within a second that it is back.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(1);

/// How often a job whose connection was lost is submitted again once the unit's state shows it
/// never ran. Once: start, stop, restart and reload are idempotent enough here (starting an
/// active unit or stopping an inactive one is a no-op, a second restart only restarts once
/// more, and `ExecReload=` must tolerate a repeat), but a bus that drops again during the
/// resubmission is a broken host, not a blip, and is reported as such.
const MAX_RESUBMISSIONS: u32 = 1;

const DESTINATION: &str = "org.freedesktop.systemd1";

/// Job mode for every job we queue: "replace" is what `systemctl start/stop/restart` uses; it
/// replaces conflicting queued jobs instead of failing (`org.freedesktop.systemd1(5)`,
/// `StartUnit()`).
const JOB_MODE: &str = "replace";

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    /// Without a subscription systemd does not emit `JobRemoved` to this client
    /// (`org.freedesktop.systemd1(5)`: "Subscribe() enables most bus signals to be sent out").
    fn subscribe(&self) -> zbus::Result<()>;

    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn reload_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    /// `daemon-reload`; the reply is sent once the reload has completed.
    fn reload(&self) -> zbus::Result<()>;

    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;

    /// Loads the unit if needed (unlike `GetUnit`, which fails for units not in memory), so the
    /// status of a never-started or unknown unit can still be read (`LoadState=not-found`).
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;

    fn enable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<(bool, Vec<(String, String, String)>)>;

    fn disable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
    ) -> zbus::Result<Vec<(String, String, String)>>;

    #[zbus(signal)]
    fn job_new(&self, id: u32, job: OwnedObjectPath, unit: String) -> zbus::Result<()>;

    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: OwnedObjectPath,
        unit: String,
        result: String,
    ) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
trait Unit {
    /// Pins the unit in memory for as long as this client stays on the bus
    /// (`org.freedesktop.systemd1(5)`, `Ref()`), so garbage collection does not unload it
    /// (and reset its timestamps) once it is inactive.
    #[zbus(name = "Ref")]
    fn pin(&self) -> zbus::Result<()>;
    #[zbus(property(emits_changed_signal = "false"), name = "Id")]
    fn id(&self) -> zbus::Result<String>;
    #[zbus(property(emits_changed_signal = "false"), name = "LoadState")]
    fn load_state(&self) -> zbus::Result<String>;
    #[zbus(property(emits_changed_signal = "false"), name = "ActiveState")]
    fn active_state(&self) -> zbus::Result<String>;
    #[zbus(property(emits_changed_signal = "false"), name = "SubState")]
    fn sub_state(&self) -> zbus::Result<String>;
    #[zbus(property(emits_changed_signal = "false"), name = "UnitFileState")]
    fn unit_file_state(&self) -> zbus::Result<String>;
    /// 128-bit id, sent as a byte array (`ay`); empty while the unit never ran.
    #[zbus(property(emits_changed_signal = "false"), name = "InvocationID")]
    fn invocation_id(&self) -> zbus::Result<Vec<u8>>;
    #[zbus(
        property(emits_changed_signal = "false"),
        name = "ActiveEnterTimestamp"
    )]
    fn active_enter_timestamp(&self) -> zbus::Result<u64>;
    #[zbus(
        property(emits_changed_signal = "false"),
        name = "StateChangeTimestamp"
    )]
    fn state_change_timestamp(&self) -> zbus::Result<u64>;
    #[zbus(property(emits_changed_signal = "false"), name = "FragmentPath")]
    fn fragment_path(&self) -> zbus::Result<String>;
    #[zbus(property(emits_changed_signal = "false"), name = "Description")]
    fn description(&self) -> zbus::Result<String>;
    /// The job queued or running for the unit, `(0, "/")` when there is none.
    #[zbus(property(emits_changed_signal = "false"), name = "Job")]
    fn job(&self) -> zbus::Result<(u32, OwnedObjectPath)>;
}

/// The service-specific properties live on a second interface of the same unit object.
#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Service",
    default_service = "org.freedesktop.systemd1"
)]
trait Service {
    #[zbus(property(emits_changed_signal = "false"), name = "Result")]
    fn result(&self) -> zbus::Result<String>;
    #[zbus(property(emits_changed_signal = "false"), name = "MainPID")]
    fn main_pid(&self) -> zbus::Result<u32>;
    #[zbus(property(emits_changed_signal = "false"), name = "ExecMainPID")]
    fn exec_main_pid(&self) -> zbus::Result<u32>;
    #[zbus(
        property(emits_changed_signal = "false"),
        name = "ExecMainStartTimestamp"
    )]
    fn exec_main_start_timestamp(&self) -> zbus::Result<u64>;
    /// How the last main process ended: a `siginfo` `si_code` (`CLD_EXITED` = 1,
    /// `CLD_KILLED` = 2, `CLD_DUMPED` = 3; 0 while it runs or never ran).
    #[zbus(property(emits_changed_signal = "false"), name = "ExecMainCode")]
    fn exec_main_code(&self) -> zbus::Result<i32>;
    /// Its exit status, or the signal number that ended it.
    #[zbus(property(emits_changed_signal = "false"), name = "ExecMainStatus")]
    fn exec_main_status(&self) -> zbus::Result<i32>;
    /// The unit's cgroup, as the manager sees it (`/system.slice/NAME.service`).
    #[zbus(property(emits_changed_signal = "false"), name = "ControlGroup")]
    fn control_group(&self) -> zbus::Result<String>;
    /// How many times `Restart=` restarted the unit since it was started by hand.
    #[zbus(property(emits_changed_signal = "false"), name = "NRestarts")]
    fn n_restarts(&self) -> zbus::Result<u32>;
    #[zbus(property(emits_changed_signal = "false"), name = "Environment")]
    fn environment(&self) -> zbus::Result<Vec<String>>;
    /// `a(sasbttttuii)`: path, argv, ignore-failure, then timestamps, pid and status.
    #[zbus(property(emits_changed_signal = "false"), name = "ExecStart")]
    #[allow(clippy::type_complexity)]
    fn exec_start(
        &self,
    ) -> zbus::Result<Vec<(String, Vec<String>, bool, u64, u64, u64, u64, u32, i32, i32)>>;
}

/// What systemd made of a service's unit file ([`Systemd::loaded_settings`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedSettings {
    pub description: String,
    /// `NAME=value` strings, in the order systemd keeps them.
    pub environment: Vec<String>,
    /// One `(program path, argv)` per `ExecStart=` command.
    pub exec_start: Vec<(String, Vec<String>)>,
}

/// Which bus (and so which service manager) to talk to; `--systemd system|user`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bus {
    /// The system manager (PID 1) on the system bus.
    System,
    /// The calling user's `systemd --user` manager on the session bus.
    User,
}

impl fmt::Display for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Bus::System => "system",
            Bus::User => "user",
        })
    }
}

/// The outcome of a job, the `result` argument of `JobRemoved` (`org.freedesktop.systemd1(5)`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum JobResult {
    /// `done`: the job finished successfully.
    Done,
    /// `canceled`: the job was canceled before it finished (e.g. replaced by another job).
    Canceled,
    /// `timeout`: the job timed out (`JobTimeoutSec=` or the start/stop timeout).
    Timeout,
    /// `failed`: the job failed (e.g. `Type=oneshot` exited non-zero, binary missing).
    Failed,
    /// `dependency`: a job this one depends on failed.
    Dependency,
    /// `skipped`: the job did not apply to the unit's state.
    Skipped,
    /// `invalid`: the job is invalid in the unit's state (e.g. reload of an inactive unit).
    Invalid,
    /// Any result string this version does not know.
    Other(String),
}

impl JobResult {
    /// Maps the `result` string of a `JobRemoved` signal.
    pub(crate) fn parse(result: &str) -> Self {
        match result {
            "done" => Self::Done,
            "canceled" => Self::Canceled,
            "timeout" => Self::Timeout,
            "failed" => Self::Failed,
            "dependency" => Self::Dependency,
            "skipped" => Self::Skipped,
            "invalid" => Self::Invalid,
            other => Self::Other(other.to_owned()),
        }
    }

    /// Only `done` is a success: `skipped` means the requested change did not happen.
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Done)
    }

    /// The result as systemd spells it.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Done => "done",
            Self::Canceled => "canceled",
            Self::Timeout => "timeout",
            Self::Failed => "failed",
            Self::Dependency => "dependency",
            Self::Skipped => "skipped",
            Self::Invalid => "invalid",
            Self::Other(other) => other,
        }
    }

    /// `Ok(())` for a successful job, otherwise [`SystemdError::JobFailed`] naming the
    /// operation and unit.
    pub fn check(self, op: &'static str, unit: &str) -> Result<(), SystemdError> {
        if self.is_success() {
            Ok(())
        } else {
            Err(SystemdError::JobFailed {
                op,
                unit: unit.to_owned(),
                result: self,
            })
        }
    }
}

impl fmt::Display for JobResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A unit's `ActiveState` (`org.freedesktop.systemd1(5)`, "ActiveState contains a state
/// value that reflects whether the unit is currently active or not").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActiveState {
    /// `active`: started, bound, plugged in, ... (for a service: running, or exited with
    /// `RemainAfterExit=`).
    Active,
    /// `reloading`: active, and its configuration is being reloaded.
    Reloading,
    /// `inactive`: stopped, and the last run did not fail.
    Inactive,
    /// `failed`: inactive after a failure (a non-zero exit, a crash, a timeout, ...).
    Failed,
    /// `activating`: on the way to `active`.
    Activating,
    /// `deactivating`: on the way to `inactive` or `failed`.
    Deactivating,
    /// `maintenance`: inactive while a cleaning operation (`systemctl clean`) runs.
    Maintenance,
    /// `refreshing`: active, while new mounts are propagated into its namespace.
    Refreshing,
    /// Any state this version does not know.
    Other(String),
}

impl ActiveState {
    /// Maps the `ActiveState` property; an unknown string is kept as [`Self::Other`].
    pub(crate) fn parse(state: &str) -> Self {
        match state {
            "active" => Self::Active,
            "reloading" => Self::Reloading,
            "inactive" => Self::Inactive,
            "failed" => Self::Failed,
            "activating" => Self::Activating,
            "deactivating" => Self::Deactivating,
            "maintenance" => Self::Maintenance,
            "refreshing" => Self::Refreshing,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The state as systemd spells it.
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Self::Active => "active",
            Self::Reloading => "reloading",
            Self::Inactive => "inactive",
            Self::Failed => "failed",
            Self::Activating => "activating",
            Self::Deactivating => "deactivating",
            Self::Maintenance => "maintenance",
            Self::Refreshing => "refreshing",
            Self::Other(other) => other,
        }
    }

    /// Whether the unit is up or coming up: `active`, `activating` or `reloading` (a unit
    /// in one of these may still become ready).
    pub(crate) fn is_up(&self) -> bool {
        matches!(self, Self::Active | Self::Activating | Self::Reloading)
    }
}

impl fmt::Display for ActiveState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compares with systemd's spelling (what tests and JSON readers hold).
impl PartialEq<str> for ActiveState {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ActiveState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Serialized as systemd spells it, so JSON output stays the property's string.
impl Serialize for ActiveState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// How a service's last main process ended ([`Systemd::main_exit`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct MainExit {
    /// The unit's `Result` (`success`, `exit-code`, `signal`, `timeout`, `start-limit-hit`, ...).
    pub(crate) result: String,
    /// `ExecMainCode`.
    #[serde(rename = "exec_main_code")]
    pub(crate) code: MainCode,
    /// `ExecMainStatus`: the exit status, or the signal number for `killed`/`dumped`.
    #[serde(rename = "exec_main_status")]
    pub(crate) status: i32,
    /// `ExecMainPID`: the last main process (0: none started).
    #[serde(rename = "exec_main_pid")]
    pub(crate) pid: u32,
    /// `NRestarts`.
    #[serde(rename = "n_restarts")]
    pub(crate) restarts: u32,
}

/// `ExecMainCode`, the `si_code` of the main process's end (`waitid(2)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum MainCode {
    /// Still running, or never started (0).
    None,
    /// `CLD_EXITED`: it exited with `status`.
    Exited,
    /// `CLD_KILLED`: signal `status` killed it.
    Killed,
    /// `CLD_DUMPED`: signal `status` killed it and it dumped core.
    Dumped,
    /// Another code (`CLD_TRAPPED`, ...).
    Other,
}

impl MainExit {
    /// `Restart=` restarted the unit and its new main process runs: how the last one ended
    /// is no longer known (systemd resets `ExecMainCode` when it starts a process).
    pub(crate) fn restarted_and_running(&self) -> bool {
        self.code == MainCode::None && self.pid != 0 && self.restarts > 0
    }
}

impl MainCode {
    fn from_si_code(code: i32) -> Self {
        match code {
            0 => Self::None,
            1 => Self::Exited,
            2 => Self::Killed,
            3 => Self::Dumped,
            _ => Self::Other,
        }
    }
}

impl fmt::Display for MainExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let signal = || signal_name(self.status);
        match self.result.as_str() {
            "" | "success" => {}
            "timeout" => write!(
                f,
                "result timeout (it did not start, or stop, within its TimeoutStartSec=/TimeoutStopSec=; \
                 for ready \"notify\": no READY=1 within its ready-timeout): "
            )?,
            other => write!(f, "result {other}: ")?,
        }
        match self.code {
            MainCode::None if self.pid == 0 => write!(f, "its main process never started"),
            MainCode::None => write!(f, "its main process (pid {}) is running", self.pid),
            MainCode::Exited => write!(
                f,
                "its main process (pid {}) exited with status {}",
                self.pid, self.status
            ),
            MainCode::Killed => write!(
                f,
                "its main process (pid {}) was killed by {}",
                self.pid,
                signal()
            ),
            MainCode::Dumped => write!(
                f,
                "its main process (pid {}) was killed by {} and dumped core",
                self.pid,
                signal()
            ),
            MainCode::Other => write!(
                f,
                "its main process (pid {}) ended (code {:?}, status {})",
                self.pid, self.code, self.status
            ),
        }?;
        match self.restarts {
            0 => write!(f, "; not restarted by systemd"),
            1 => write!(f, "; restarted once by systemd (Restart=)"),
            n => write!(f, "; restarted {n} times by systemd (Restart=)"),
        }
    }
}

/// `SIGTERM (15)`, or `signal 42` for one without a common name.
fn signal_name(n: i32) -> String {
    let name = match n {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => return format!("signal {n}"),
    };
    format!("{name} ({n})")
}

/// A unit that went down while it was waited on to become ready.
#[derive(Debug, Error)]
#[error("{unit} is {active_state} ({sub_state}, result {result})")]
pub struct UnitDown {
    pub(crate) unit: String,
    pub(crate) active_state: ActiveState,
    pub(crate) sub_state: String,
    pub(crate) result: String,
}

/// A snapshot of one unit, read property by property from the manager (never from a cache).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitStatus {
    /// The unit's primary name (`Id`).
    pub(crate) name: String,
    /// `LoadState`: `loaded`, `not-found`, `bad-setting`, `error`, `masked`.
    pub load_state: String,
    /// `ActiveState`: `active`, `reloading`, `inactive`, `failed`, `activating`, `deactivating`.
    pub active_state: ActiveState,
    /// `SubState`, type specific (`running`, `exited`, `dead`, `auto-restart`, ...).
    pub sub_state: String,
    /// `Result` of the last run (`success`, `exit-code`, `signal`, `start-limit-hit`, ...);
    /// empty for unit types without one (targets, slices, ...).
    pub result: String,
    /// `UnitFileState`: `enabled`, `disabled`, `static`, `linked`, ... (empty when unknown).
    pub unit_file_state: String,
    /// `InvocationID` in lower-case hex; changes with every start, empty if never started.
    pub invocation_id: String,
    /// `MainPID`: the current main process, 0 when none runs.
    pub main_pid: u32,
    /// `ExecMainPID`: the last main process started, kept after it exited.
    pub(crate) exec_main_pid: u32,
    /// `ActiveEnterTimestamp`, µs since the epoch (0 = never).
    pub active_enter_timestamp_us: u64,
    /// `ExecMainStartTimestamp`, µs since the epoch (0 = never / not a service).
    pub exec_main_start_timestamp_us: u64,
    /// `StateChangeTimestamp`, µs since the epoch.
    pub state_change_timestamp_us: u64,
    /// `FragmentPath`: the unit file the unit was loaded from (empty if none).
    pub fragment_path: String,
}

impl UnitStatus {
    /// The unit, down: what a readiness wait reports when it is no longer up.
    pub(crate) fn down(self, unit: &str) -> UnitDown {
        UnitDown {
            unit: unit.to_owned(),
            active_state: self.active_state,
            sub_state: self.sub_state,
            result: self.result,
        }
    }

    fn describe(&self) -> String {
        let result = if self.result.is_empty() {
            "none"
        } else {
            &self.result
        };
        format!(
            "{} (sub-state {}, result {result})",
            self.active_state, self.sub_state
        )
    }
}

/// Every failure at the systemd boundary.
#[derive(Debug, Error, Diagnostic)]
pub enum SystemdError {
    /// No address for the user bus could be derived from the environment.
    #[error(
        "cannot find the user bus: neither DBUS_SESSION_BUS_ADDRESS nor XDG_RUNTIME_DIR is set"
    )]
    #[diagnostic(
        code(moorline::systemd::no_user_bus),
        help(
            "run inside a user login session (e.g. via `machinectl shell user@` or \
             `systemd-run --user`), or export XDG_RUNTIME_DIR=/run/user/$(id -u)"
        )
    )]
    NoUserBus,

    /// The bus could not be connected to.
    #[error("cannot connect to the {target} bus")]
    #[diagnostic(
        code(moorline::systemd::connect),
        help(
            "check that the bus socket exists and is reachable (system: /run/dbus/system_bus_socket; \
             user: $XDG_RUNTIME_DIR/bus, which needs `dbus-user-session` or dbus-broker)"
        )
    )]
    Connect {
        /// Bus kind or address.
        target: String,
        /// The zbus failure.
        #[source]
        source: zbus::Error,
    },

    /// Connecting did not finish in time.
    #[error("connecting to the {target} bus did not finish within {timeout:?}")]
    #[diagnostic(
        code(moorline::systemd::connect_timeout),
        help("the bus broker or the service manager seems hung; check `systemctl status dbus`")
    )]
    ConnectTimeout {
        /// Bus kind or address.
        target: String,
        /// The limit that was exceeded ([`CONNECT_TIMEOUT`]).
        timeout: Duration,
    },

    /// The manager does not know the unit.
    #[error("systemd has no unit {unit}")]
    #[diagnostic(
        code(moorline::systemd::no_such_unit),
        help("check the unit name and that its unit file is installed, then daemon-reload")
    )]
    NoSuchUnit {
        /// The unit name.
        unit: String,
        /// The D-Bus error (`org.freedesktop.systemd1.NoSuchUnit`).
        #[source]
        source: zbus::Error,
    },

    /// `ReloadUnit` on a unit without `ExecReload=`.
    #[error("{unit} cannot be reloaded: it has no ExecReload=")]
    #[diagnostic(
        code(moorline::systemd::reload_not_supported),
        help("add ExecReload= to the unit, or deploy it with a restart instead of a reload")
    )]
    ReloadNotSupported {
        /// The unit name.
        unit: String,
        /// The D-Bus error (`org.freedesktop.systemd1.JobTypeNotApplicable`).
        #[source]
        source: zbus::Error,
    },

    /// A method call failed (rejected by systemd, or the bus failed).
    #[error("systemd {op} of {unit} failed")]
    #[diagnostic(
        code(moorline::systemd::call),
        help("the cause below is systemd's own answer; `systemctl status {unit}` shows more")
    )]
    Call {
        /// The operation (`start`, `daemon-reload`, ...).
        op: &'static str,
        /// The unit name, or `manager` for manager-wide operations.
        unit: String,
        /// The zbus failure.
        #[source]
        source: zbus::Error,
    },

    /// The job's `JobRemoved` signal did not arrive in time.
    #[error("systemd {op} job for {unit} did not finish within {timeout:?}")]
    #[diagnostic(
        code(moorline::systemd::job_timeout),
        help(
            "the job may still be running; inspect with `systemctl list-jobs` and `systemctl status {unit}`"
        )
    )]
    JobTimeout {
        /// The operation.
        op: &'static str,
        /// The unit name.
        unit: String,
        /// The limit that was exceeded.
        timeout: Duration,
    },

    /// The bus connection was lost during an operation and no new one could be made in time.
    #[error(
        "lost the connection to the {target} bus during the {op} of {unit} and could not \
         reconnect within {budget:?}"
    )]
    #[diagnostic(
        code(moorline::systemd::bus_lost),
        help(
            "the bus broker or the service manager stayed away (check `systemctl status dbus`); \
             the outcome of the {op} is unknown: see `systemctl status {unit}`"
        )
    )]
    BusLost {
        /// The operation.
        op: &'static str,
        /// The unit name, or `manager` for manager-wide operations.
        unit: String,
        /// Bus kind or address.
        target: String,
        /// The limit that was exceeded ([`RECONNECT_BUDGET`]).
        budget: Duration,
        /// The last reconnect attempt's failure.
        #[source]
        source: Box<SystemdError>,
    },

    /// The bus connection kept dropping before a job could run.
    #[error(
        "the {op} job of {unit} never ran: the bus connection was lost again after it was \
         submitted a second time"
    )]
    #[diagnostic(
        code(moorline::systemd::job_lost),
        help(
            "the bus broker or the service manager keeps restarting; check `systemctl status dbus` \
             and `systemctl status {unit}`"
        )
    )]
    JobLost {
        /// The operation.
        op: &'static str,
        /// The unit name.
        unit: String,
    },

    /// A job finished with a result other than `done`.
    #[error("systemd {op} job for {unit} finished with result '{result}'")]
    #[diagnostic(
        code(moorline::systemd::job_failed),
        help("see `systemctl status {unit}` and `journalctl -u {unit}` for why")
    )]
    JobFailed {
        /// The operation.
        op: &'static str,
        /// The unit name.
        unit: String,
        /// The job result.
        result: JobResult,
    },

    /// The unit was not (or no longer) active when confirming a start.
    #[error("{unit} is not running {phase}: it is {state}")]
    #[diagnostic(
        code(moorline::systemd::not_active),
        help(
            "see `systemctl status {unit}` and `journalctl -u {unit}`; result 'start-limit-hit' \
              means it failed too often recently (`systemctl reset-failed {unit}`)"
        )
    )]
    NotActive {
        /// The unit name.
        unit: String,
        /// When it was seen (`right after the job`, `after the 300ms settle window`).
        phase: String,
        /// `active_state (sub-state ..., result ...)`, plus an invocation note if it restarted.
        state: String,
        /// The snapshot the decision was made on.
        status: Box<UnitStatus>,
    },
}

/// A clonable handle on a service manager's bus; clones share one connection.
///
/// The connection is replaceable: when it is lost (the broker restarted, `systemctl restart
/// dbus`, or the manager left the bus), the next operation that notices reconnects (once for
/// all clones, within [`RECONNECT_BUDGET`]), subscribes again, re-pins the units pinned with
/// [`Systemd::pin`], and carries on:
///
/// - reads and idempotent calls (`status`, `daemon_reload`, `reset_failed`, `enable`, ...) are
///   simply made again;
/// - a job (start, stop, restart, reload) keeps running in systemd while the bus is away, but
///   its `JobRemoved` signal (and maybe the reply naming it) is lost with the connection. The
///   unit's `Job` property, read after subscribing anew, tells whether a job is still pending
///   (then its `JobRemoved` is awaited); once none is, the unit's state tells whether the job
///   ran (see `judge`) or never did (then it is submitted again, at most
///   `MAX_RESUBMISSIONS` times).
#[derive(Debug, Clone)]
pub struct Systemd {
    shared: Arc<Shared>,
    job_timeout: Duration,
}

/// What every clone of a [`Systemd`] shares.
#[derive(Debug)]
struct Shared {
    endpoint: Endpoint,
    /// The current connection; replaced by [`Systemd::recover`].
    link: Mutex<Link>,
    /// Held while reconnecting, so that the many tasks that see the same connection drop
    /// reconnect once, not once each.
    reconnecting: tokio::sync::Mutex<()>,
    /// Units pinned with `Ref()`: a pin lasts only as long as the connection that made it.
    pinned: Mutex<BTreeSet<String>>,
}

/// Where to (re)connect to.
#[derive(Debug, Clone)]
enum Endpoint {
    System,
    Address(String),
}

impl Endpoint {
    fn target(&self) -> String {
        match self {
            Endpoint::System => "system".to_owned(),
            Endpoint::Address(address) => address.clone(),
        }
    }
}

/// One connection with its subscribed manager proxy. `generation` counts reconnects, so a
/// task that saw a connection fail can tell whether somebody already replaced it.
#[derive(Debug, Clone)]
struct Link {
    generation: u64,
    connection: Connection,
    manager: ManagerProxy<'static>,
}

/// How waiting for a job on one connection ended.
enum Waited {
    /// `JobRemoved` arrived for the job.
    Finished(JobResult),
    /// systemd refused the job (the method call failed for a reason other than a lost bus).
    Refused(zbus::Error),
    /// The connection was lost before the job was submitted.
    Unsent,
    /// The connection was lost after the job was submitted (or while it was); the job's path
    /// if the submission was answered.
    Lost(Option<OwnedObjectPath>),
}

/// What a unit's state says about a job whose `JobRemoved` was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// The job ran, with this result.
    Ran(JobResult),
    /// Nothing shows that the job ran.
    NotRun,
}

impl Systemd {
    /// Connects to the manager of `bus`.
    ///
    /// The user bus is `$DBUS_SESSION_BUS_ADDRESS` if set, else `unix:path=$XDG_RUNTIME_DIR/bus`
    /// (the address `sd_bus_open_user()` falls back to as well).
    pub(crate) async fn connect(bus: Bus) -> Result<Self, SystemdError> {
        match bus {
            Bus::System => Self::establish(Endpoint::System).await,
            Bus::User => {
                let address = user_bus_address(
                    std::env::var("DBUS_SESSION_BUS_ADDRESS").ok(),
                    std::env::var("XDG_RUNTIME_DIR").ok(),
                )
                .ok_or(SystemdError::NoUserBus)?;
                Self::connect_address(&address).await
            }
        }
    }

    /// Connects to the manager behind an explicit bus address, e.g.
    /// `unix:path=/tmp/x/runtime/bus`.
    pub async fn connect_address(address: &str) -> Result<Self, SystemdError> {
        Self::establish(Endpoint::Address(address.to_owned())).await
    }

    async fn establish(endpoint: Endpoint) -> Result<Self, SystemdError> {
        let (connection, manager) = open_first(&endpoint).await?;
        Ok(Self {
            shared: Arc::new(Shared {
                endpoint,
                link: Mutex::new(Link {
                    generation: 0,
                    connection,
                    manager,
                }),
                reconnecting: tokio::sync::Mutex::new(()),
                pinned: Mutex::new(BTreeSet::new()),
            }),
            job_timeout: JOB_TIMEOUT,
        })
    }

    /// `StartUnit(unit, "replace")`, waiting for the job to finish.
    pub async fn start(&self, unit: &str) -> Result<JobResult, SystemdError> {
        self.run_job(JobKind::Start, unit).await
    }

    /// `StopUnit(unit, "replace")`, waiting for the job to finish.
    pub async fn stop(&self, unit: &str) -> Result<JobResult, SystemdError> {
        self.run_job(JobKind::Stop, unit).await
    }

    /// `RestartUnit(unit, "replace")`, waiting for the job to finish.
    pub async fn restart(&self, unit: &str) -> Result<JobResult, SystemdError> {
        self.run_job(JobKind::Restart, unit).await
    }

    /// `ReloadUnit(unit, "replace")`, waiting for the job to finish. A unit without
    /// `ExecReload=` gives [`SystemdError::ReloadNotSupported`]; an inactive unit gives the job
    /// result [`JobResult::Invalid`].
    pub async fn reload(&self, unit: &str) -> Result<JobResult, SystemdError> {
        self.run_job(JobKind::Reload, unit).await
    }

    /// `daemon-reload`: systemd replies once the unit files have been re-read. Made again
    /// after a lost connection (a second reload re-reads the same files).
    pub async fn daemon_reload(&self) -> Result<(), SystemdError> {
        self.retrying("daemon-reload", "manager", |link| async move {
            link.manager.reload().await
        })
        .await
    }

    /// `ResetFailedUnit`: clears the failed state and the start-limit counter.
    pub async fn reset_failed(&self, unit: &str) -> Result<(), SystemdError> {
        self.retrying("reset-failed", unit, |link| async move {
            link.manager.reset_failed_unit(unit).await
        })
        .await
    }

    /// Reads the unit's current state; works for units that are not loaded yet.
    pub async fn status(&self, unit: &str) -> Result<UnitStatus, SystemdError> {
        self.retrying("status", unit, |link| async move {
            read_status(&link, unit).await
        })
        .await
    }

    /// A service's settings as systemd read them from its unit file
    /// (specifiers resolved, quoting removed; `$` references are expanded
    /// only when the command runs, so `$$` still shows doubled).
    pub async fn loaded_settings(&self, unit: &str) -> Result<LoadedSettings, SystemdError> {
        self.retrying("read settings", unit, |link| async move {
            read_settings(&link, unit).await
        })
        .await
    }

    /// How a service's last main process ended and how often `Restart=` restarted it
    /// (`ExecMainCode`, `ExecMainStatus`, `NRestarts`), for a failure report. `None` for a
    /// unit that is not a service.
    pub async fn main_exit(&self, unit: &str) -> Result<Option<MainExit>, SystemdError> {
        if !unit.ends_with(".service") {
            return Ok(None);
        }
        self.retrying("read the exit status of", unit, |link| async move {
            let path = link.manager.load_unit(unit).await?;
            let service = ServiceProxy::builder(&link.connection)
                .path(path)
                .cache_properties(CacheProperties::No)
                .build()
                .await?;
            Ok(Some(MainExit {
                result: service.result().await?,
                code: MainCode::from_si_code(service.exec_main_code().await?),
                status: service.exec_main_status().await?,
                pid: service.exec_main_pid().await?,
                restarts: service.n_restarts().await?,
            }))
        })
        .await
    }

    /// A service's cgroup path (`ControlGroup`), empty while it runs nothing.
    pub async fn control_group(&self, unit: &str) -> Result<String, SystemdError> {
        self.retrying("read the cgroup of", unit, |link| async move {
            let path = link.manager.load_unit(unit).await?;
            let service = ServiceProxy::builder(&link.connection)
                .path(path)
                .cache_properties(CacheProperties::No)
                .build()
                .await?;
            service.control_group().await
        })
        .await
    }

    /// Keeps `unit` loaded while this connection lives (`Unit.Ref()`): an inactive unit
    /// nothing refers to is unloaded by systemd's garbage collection, which loses its
    /// timestamps (`InactiveEnterTimestamp`, `StateChangeTimestamp`). Used to read them after
    /// a stop. A reconnect pins the unit again on the new connection.
    pub async fn pin(&self, unit: &str) -> Result<(), SystemdError> {
        self.retrying("ref", unit, |link| async move { pin_on(&link, unit).await })
            .await?;
        self.shared
            .pinned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(unit.to_owned());
        Ok(())
    }

    /// Confirms that a unit a start/restart job just finished for is really up: `ActiveState`
    /// must be `active` now, and still `active` with the same `InvocationID` after `settle`
    /// (see [`SETTLE`] for why a `done` job is not enough). Returns the later snapshot.
    pub async fn confirm_active(
        &self,
        unit: &str,
        settle: Duration,
    ) -> Result<UnitStatus, SystemdError> {
        let first = self.status(unit).await?;
        if let Some(state) = inactive_reason(&first, None) {
            return Err(not_active(
                unit,
                "right after the job".to_owned(),
                state,
                first,
            ));
        }
        tokio::time::sleep(settle).await;
        let second = self.status(unit).await?;
        if let Some(state) = inactive_reason(&second, Some(&first.invocation_id)) {
            return Err(not_active(
                unit,
                format!("after the {settle:?} settle window"),
                state,
                second,
            ));
        }
        Ok(second)
    }

    /// `EnableUnitFiles(units, runtime=false, force=true)` and a `daemon-reload`, as
    /// `systemctl enable` does (`force` replaces conflicting symlinks). Made again after a
    /// lost connection: enabling an enabled unit changes nothing.
    pub async fn enable(&self, units: &[String]) -> Result<(), SystemdError> {
        let names: Vec<&str> = units.iter().map(String::as_str).collect();
        let names = &names;
        self.retrying("enable", &units.join(" "), |link| async move {
            link.manager.enable_unit_files(names, false, true).await
        })
        .await?;
        self.daemon_reload().await
    }

    /// `DisableUnitFiles(units, runtime=false)` and a `daemon-reload`.
    pub async fn disable(&self, units: &[String]) -> Result<(), SystemdError> {
        let names: Vec<&str> = units.iter().map(String::as_str).collect();
        let names = &names;
        self.retrying("disable", &units.join(" "), |link| async move {
            link.manager.disable_unit_files(names, false).await
        })
        .await?;
        self.daemon_reload().await
    }

    /// The connection in use now.
    fn link(&self) -> Link {
        self.shared
            .link
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Runs an idempotent call, reconnecting and calling again while the bus is lost, for at
    /// most [`RECONNECT_BUDGET`] in total.
    async fn retrying<T, F, Fut>(
        &self,
        op: &'static str,
        unit: &str,
        call: F,
    ) -> Result<T, SystemdError>
    where
        F: Fn(Link) -> Fut,
        Fut: Future<Output = zbus::Result<T>>,
    {
        let mut link = self.link();
        let mut deadline = None;
        loop {
            match call(link.clone()).await {
                Ok(value) => return Ok(value),
                Err(e) if is_lost(&e, &link) => {
                    let deadline = *deadline
                        .get_or_insert_with(|| tokio::time::Instant::now() + RECONNECT_BUDGET);
                    link = self.recover(&link, op, unit, deadline).await?;
                }
                Err(e) => return Err(call_error(op, unit, e)),
            }
        }
    }

    /// Replaces the lost connection `stale` (unless another task already did) with a new,
    /// subscribed one, trying until `deadline`.
    async fn recover(
        &self,
        stale: &Link,
        op: &'static str,
        unit: &str,
        deadline: tokio::time::Instant,
    ) -> Result<Link, SystemdError> {
        let _gate = self.shared.reconnecting.lock().await;
        let current = self.link();
        if current.generation != stale.generation {
            return Ok(current);
        }
        let mut delay = RECONNECT_FIRST_DELAY;
        let (connection, manager) = loop {
            match open(&self.shared.endpoint).await {
                Ok(opened) => break opened,
                Err(last) => {
                    if tokio::time::Instant::now() + delay >= deadline {
                        return Err(SystemdError::BusLost {
                            op,
                            unit: unit.to_owned(),
                            target: self.shared.endpoint.target(),
                            budget: RECONNECT_BUDGET,
                            source: Box::new(last),
                        });
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RECONNECT_MAX_DELAY);
                }
            }
        };
        let link = Link {
            generation: stale.generation + 1,
            connection,
            manager,
        };
        let pinned: Vec<String> = self
            .shared
            .pinned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect();
        for unit in pinned {
            // Best effort: a pin only protects timestamps from garbage collection, and a unit
            // that cannot be pinned any more is reported by the next read of it.
            let _ = pin_on(&link, &unit).await;
        }
        *self
            .shared
            .link
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = link.clone();
        Ok(link)
    }

    /// A job with its deadline ([`Systemd::with_job_timeout`]), surviving lost connections.
    async fn run_job(&self, kind: JobKind, unit: &str) -> Result<JobResult, SystemdError> {
        tokio::time::timeout(self.job_timeout, self.job(kind, unit))
            .await
            .unwrap_or_else(|_| {
                Err(SystemdError::JobTimeout {
                    op: kind.op(),
                    unit: unit.to_owned(),
                    timeout: self.job_timeout,
                })
            })
    }

    async fn job(&self, kind: JobKind, unit: &str) -> Result<JobResult, SystemdError> {
        let op = kind.op();
        // What the unit looked like before the job, to recognise afterwards whether a start
        // happened if the connection is lost on the way.
        let before = match kind {
            JobKind::Start | JobKind::Restart => {
                self.retrying(op, unit, |link| async move {
                    read_invocation(&link, unit).await
                })
                .await?
            }
            JobKind::Stop | JobKind::Reload => String::new(),
        };
        let mut link = self.link();
        let mut resubmissions = 0;
        let mut submit = true;
        let mut ours = None;
        loop {
            if submit {
                match submit_and_wait(&link, kind, unit).await {
                    Waited::Finished(result) => return Ok(result),
                    Waited::Refused(e) => return Err(call_error(op, unit, e)),
                    Waited::Unsent => {
                        // Nothing reached systemd: reconnect and submit as if for the first time.
                        let budget = tokio::time::Instant::now() + RECONNECT_BUDGET;
                        link = self.recover(&link, op, unit, budget).await?;
                        continue;
                    }
                    Waited::Lost(job) => ours = job,
                }
            }
            // Each loss gets a fresh budget: the job itself may legitimately outlast one.
            let budget = tokio::time::Instant::now() + RECONNECT_BUDGET;
            link = self.recover(&link, op, unit, budget).await?;
            let verdict = match settle_job(&link, kind, unit, ours.as_ref(), &before).await {
                Ok(verdict) => verdict,
                Err(e) if is_lost(&e, &link) => {
                    submit = false;
                    continue;
                }
                Err(e) => return Err(call_error(op, unit, e)),
            };
            match verdict {
                Verdict::Ran(result) => return Ok(result),
                Verdict::NotRun if resubmissions < MAX_RESUBMISSIONS => {
                    resubmissions += 1;
                    submit = true;
                }
                Verdict::NotRun => {
                    return Err(SystemdError::JobLost {
                        op,
                        unit: unit.to_owned(),
                    });
                }
            }
        }
    }
}

/// Connects and subscribes, within [`CONNECT_TIMEOUT`].
async fn open(endpoint: &Endpoint) -> Result<(Connection, ManagerProxy<'static>), SystemdError> {
    let target = endpoint.target();
    let work = async {
        let builder = match endpoint {
            Endpoint::System => zbus::connection::Builder::system(),
            Endpoint::Address(address) => zbus::connection::Builder::address(address.as_str()),
        };
        let connection = builder.method_timeout(METHOD_TIMEOUT).build().await?;
        let manager = ManagerProxy::builder(&connection)
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        // Once per connection: systemd keeps the subscription until the client goes away.
        // It is also the proof that the manager is on this bus: right after a broker restart
        // the name may not be registered yet (`ServiceUnknown`), and reconnecting retries.
        manager.subscribe().await?;
        Ok::<_, zbus::Error>((connection, manager))
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, work).await {
        Err(_) => Err(SystemdError::ConnectTimeout {
            target,
            timeout: CONNECT_TIMEOUT,
        }),
        Ok(Err(source)) => Err(SystemdError::Connect { target, source }),
        Ok(Ok(opened)) => Ok(opened),
    }
}

/// The first connection, retried as a lost one is ([`Systemd::recover`]: the same pauses, the
/// same [`RECONNECT_BUDGET`]) while the bus looks like it is restarting: a broker that dies just
/// as a command starts fails the connection or its handshake, and the manager is not on the new
/// broker for the first tens of milliseconds. A bus that is not there at all (no socket file, no
/// permission, a failed handshake, a timeout) is reported at once.
async fn open_first(
    endpoint: &Endpoint,
) -> Result<(Connection, ManagerProxy<'static>), SystemdError> {
    let deadline = tokio::time::Instant::now() + RECONNECT_BUDGET;
    let mut delay = RECONNECT_FIRST_DELAY;
    loop {
        match open(endpoint).await {
            Ok(opened) => return Ok(opened),
            Err(SystemdError::Connect { source, .. })
                if restarting(&source) && tokio::time::Instant::now() + delay < deadline =>
            {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RECONNECT_MAX_DELAY);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether a failed first connection looks like a broker restart rather than a bus that is
/// not there: the socket refuses or drops the connection (the broker is gone or going, and
/// `dbus.socket` keeps the socket file), or the manager is not registered on the broker yet.
fn restarting(error: &zbus::Error) -> bool {
    match error {
        zbus::Error::InputOutput(e) | zbus::Error::Connection(e, _) => matches!(
            e.kind(),
            io::ErrorKind::ConnectionRefused
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
                | io::ErrorKind::NotConnected
        ),
        zbus::Error::MethodError(..) => means_lost(error),
        _ => false,
    }
}

/// A job as anyone watching the manager sees it: queued (`JobNew`) or finished (`JobRemoved`),
/// whoever submitted it ([`Systemd::watch_jobs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEvent {
    New {
        id: u32,
        unit: String,
    },
    Removed {
        id: u32,
        unit: String,
        result: JobResult,
    },
}

/// The manager's job signals on one connection, in the order systemd sent them
/// ([`Systemd::watch_jobs`]).
pub struct JobWatch {
    new: JobNewStream,
    removed: JobRemovedStream,
}

impl JobWatch {
    /// The next job event; `None` once the connection is gone.
    pub async fn next(&mut self) -> Option<JobEvent> {
        loop {
            tokio::select! {
                biased;
                signal = next(&mut self.new) => {
                    let signal = signal?;
                    let Ok(args) = signal.args() else { continue };
                    return Some(JobEvent::New { id: args.id, unit: args.unit });
                }
                signal = next(&mut self.removed) => {
                    let signal = signal?;
                    let Ok(args) = signal.args() else { continue };
                    return Some(JobEvent::Removed {
                        id: args.id,
                        result: JobResult::parse(&args.result),
                        unit: args.unit,
                    });
                }
            }
        }
    }
}

impl Systemd {
    /// Every job the manager queues and finishes from now on, whoever submitted it. Used by
    /// the tests to check that the jobs an apply caused are exactly the ones its plan and
    /// journal name. Not reconnected: the watch ends with this connection.
    pub async fn watch_jobs(&self) -> Result<JobWatch, SystemdError> {
        let link = self.link();
        let failed = |source| SystemdError::Connect {
            target: self.shared.endpoint.target(),
            source,
        };
        let new = link.manager.receive_job_new().await.map_err(failed)?;
        let removed = link.manager.receive_job_removed().await.map_err(failed)?;
        Ok(JobWatch { new, removed })
    }
}

/// The job protocol on one connection: subscribe to `JobRemoved` *before* queueing the job (
/// trivial job finishes in 4–10 ms, possibly before the reply carrying its path has been
/// read), then wait for the signal naming exactly that job path.
async fn submit_and_wait(link: &Link, kind: JobKind, unit: &str) -> Waited {
    let mut removed = match link.manager.receive_job_removed().await {
        Ok(stream) => stream,
        Err(e) if is_lost(&e, link) => return Waited::Unsent,
        Err(e) => return Waited::Refused(e),
    };
    let submitted = match kind {
        JobKind::Start => link.manager.start_unit(unit, JOB_MODE).await,
        JobKind::Stop => link.manager.stop_unit(unit, JOB_MODE).await,
        JobKind::Restart => link.manager.restart_unit(unit, JOB_MODE).await,
        JobKind::Reload => link.manager.reload_unit(unit, JOB_MODE).await,
    };
    let job = match submitted {
        Ok(job) => job,
        // The call may have reached systemd before the connection went.
        Err(e) if is_lost(&e, link) => return Waited::Lost(None),
        Err(e) => return Waited::Refused(e),
    };
    match wait_removed(&mut removed, &job).await {
        Some(result) => Waited::Finished(result),
        None => Waited::Lost(Some(job)),
    }
}

/// Waits for the `JobRemoved` of `job`; `None` when the stream ends (the connection closed).
async fn wait_removed<S>(removed: &mut S, job: &OwnedObjectPath) -> Option<JobResult>
where
    S: Stream<Item = JobRemoved> + Unpin,
{
    while let Some(signal) = next(removed).await {
        // A signal we cannot decode is not ours to judge; keep waiting for our job.
        let Ok(args) = signal.args() else {
            continue;
        };
        if args.job == *job {
            return Some(JobResult::parse(&args.result));
        }
    }
    None
}

/// After a lost connection, on a new one: waits while a job is pending for the unit (ours, or
/// whatever replaced it), then judges from the unit's state how our job went. `ours` is the
/// job's path if its submission was answered before the connection went.
async fn settle_job(
    link: &Link,
    kind: JobKind,
    unit: &str,
    ours: Option<&OwnedObjectPath>,
    before: &str,
) -> zbus::Result<Verdict> {
    // Subscribed before reading `Job`: a job that ends in between is still seen.
    let mut removed = link.manager.receive_job_removed().await?;
    let proxy = unit_proxy(link, unit).await?;
    loop {
        let (id, pending) = proxy.job().await?;
        if id == 0 {
            break;
        }
        let result = wait_removed(&mut removed, &pending)
            .await
            .ok_or_else(stream_ended)?;
        if ours == Some(&pending) {
            return Ok(Verdict::Ran(result));
        }
        // Not known to be ours (its reply was lost) or a job that replaced ours: look again.
    }
    let now = read_status(link, unit).await?;
    Ok(judge(kind, before, &now))
}

/// Whether a job whose `JobRemoved` was lost ran, judged from the unit's state once no job
/// is pending for it any more. `before` is the `InvocationID` read before the job was
/// submitted.
///
/// - start/restart: every start of a unit gets a new `InvocationID` (`systemd.exec(5)`,
///   `$INVOCATION_ID`), so a new one proves the start happened: `failed` now is the job's
///   failure, anything else its success (whether it is still running is for
///   [`Systemd::confirm_active`] to judge, as after a normal `done`). A start of a unit that
///   is active with the old invocation was a no-op systemd also answers with `done`.
/// - stop: an inactive or failed unit is stopped.
/// - reload leaves no trace in the unit's state, so it is never proven and is submitted
///   again.
///
/// A crash followed by an automatic restart (`Restart=`) during the outage also changes the
/// invocation; the readiness checks after the job still judge that unit.
fn judge(kind: JobKind, before: &str, now: &UnitStatus) -> Verdict {
    let restarted = !now.invocation_id.is_empty() && now.invocation_id != before;
    match kind {
        JobKind::Start | JobKind::Restart if restarted => {
            Verdict::Ran(if now.active_state == ActiveState::Failed {
                JobResult::Failed
            } else {
                JobResult::Done
            })
        }
        JobKind::Start if now.active_state == ActiveState::Active => Verdict::Ran(JobResult::Done),
        JobKind::Stop
            if matches!(
                now.active_state,
                ActiveState::Inactive | ActiveState::Failed
            ) =>
        {
            Verdict::Ran(JobResult::Done)
        }
        JobKind::Start | JobKind::Restart | JobKind::Stop | JobKind::Reload => Verdict::NotRun,
    }
}

/// The error standing for a `JobRemoved` stream that ended: the connection closed.
fn stream_ended() -> zbus::Error {
    zbus::Error::InputOutput(Arc::new(io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the JobRemoved signal stream ended",
    )))
}

/// Whether `error` means the connection (or the manager on it) is gone, rather than an
/// answer: the socket closed or broke, or the bus says the manager is not (or no longer)
/// there, as right after a broker restart or during `daemon-reexec`. A method timeout is
/// not a lost bus: the manager is merely slow, and calling again would not help.
fn is_lost(error: &zbus::Error, link: &Link) -> bool {
    link.connection.is_closed() || means_lost(error)
}

/// The error half of [`is_lost`].
fn means_lost(error: &zbus::Error) -> bool {
    match error {
        zbus::Error::InputOutput(e) => e.kind() != io::ErrorKind::TimedOut,
        zbus::Error::MethodError(name, _, _) => matches!(
            name.as_str(),
            "org.freedesktop.DBus.Error.ServiceUnknown"
                | "org.freedesktop.DBus.Error.NameHasNoOwner"
                | "org.freedesktop.DBus.Error.NoReply"
                | "org.freedesktop.DBus.Error.Disconnected"
        ),
        _ => false,
    }
}

async fn unit_proxy(link: &Link, unit: &str) -> zbus::Result<UnitProxy<'static>> {
    let path = link.manager.load_unit(unit).await?;
    UnitProxy::builder(&link.connection)
        .path(path)
        .cache_properties(CacheProperties::No)
        .build()
        .await
}

async fn pin_on(link: &Link, unit: &str) -> zbus::Result<()> {
    unit_proxy(link, unit).await?.pin().await
}

/// The unit's `InvocationID` in hex (empty if it never ran).
async fn read_invocation(link: &Link, unit: &str) -> zbus::Result<String> {
    Ok(hex::encode(
        unit_proxy(link, unit).await?.invocation_id().await?,
    ))
}

async fn read_settings(link: &Link, unit: &str) -> zbus::Result<LoadedSettings> {
    let path = link.manager.load_unit(unit).await?;
    let proxy = UnitProxy::builder(&link.connection)
        .path(path.clone())
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    let service = ServiceProxy::builder(&link.connection)
        .path(path)
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    Ok(LoadedSettings {
        description: proxy.description().await?,
        environment: service.environment().await?,
        exec_start: service
            .exec_start()
            .await?
            .into_iter()
            .map(|(path, argv, ..)| (path, argv))
            .collect(),
    })
}

async fn read_status(link: &Link, unit: &str) -> zbus::Result<UnitStatus> {
    let path = link.manager.load_unit(unit).await?;
    let proxy = UnitProxy::builder(&link.connection)
        .path(path.clone())
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    let mut status = UnitStatus {
        name: proxy.id().await?,
        load_state: proxy.load_state().await?,
        active_state: ActiveState::parse(&proxy.active_state().await?),
        sub_state: proxy.sub_state().await?,
        result: String::new(),
        unit_file_state: proxy.unit_file_state().await?,
        invocation_id: hex::encode(proxy.invocation_id().await?),
        main_pid: 0,
        exec_main_pid: 0,
        active_enter_timestamp_us: proxy.active_enter_timestamp().await?,
        exec_main_start_timestamp_us: 0,
        state_change_timestamp_us: proxy.state_change_timestamp().await?,
        fragment_path: proxy.fragment_path().await?,
    };
    if status.name.ends_with(".service") {
        let service = ServiceProxy::builder(&link.connection)
            .path(path)
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        status.result = service.result().await?;
        status.main_pid = service.main_pid().await?;
        status.exec_main_pid = service.exec_main_pid().await?;
        status.exec_main_start_timestamp_us = service.exec_main_start_timestamp().await?;
    } else if let Some(interface) = result_interface(&status.name) {
        // Other unit types with a `Result` property carry it on their own interface.
        let props = zbus::fdo::PropertiesProxy::builder(&link.connection)
            .destination(DESTINATION)
            .path(path)
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        let iface = zbus::names::InterfaceName::try_from(interface)?;
        let value = props.get(iface, "Result").await?;
        status.result = String::try_from(value)?;
    }
    Ok(status)
}

#[derive(Debug, Clone, Copy)]
enum JobKind {
    Start,
    Stop,
    Restart,
    Reload,
}

impl JobKind {
    fn op(self) -> &'static str {
        match self {
            JobKind::Start => "start",
            JobKind::Stop => "stop",
            JobKind::Restart => "restart",
            JobKind::Reload => "reload",
        }
    }
}

/// `StreamExt::next` without pulling in `futures-util`.
async fn next<S: Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
    std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_next(cx)).await
}

/// Where the user manager's bus is: the explicit session address wins, as in
/// `sd_bus_open_user()`.
fn user_bus_address(session: Option<String>, runtime_dir: Option<String>) -> Option<String> {
    session.filter(|s| !s.is_empty()).or_else(|| {
        runtime_dir
            .filter(|d| !d.is_empty())
            .map(|d| format!("unix:path={d}/bus"))
    })
}

/// The interface carrying `Result` for non-service unit types (`org.freedesktop.systemd1(5)`).
fn result_interface(unit: &str) -> Option<&'static str> {
    let (_, kind) = unit.rsplit_once('.')?;
    Some(match kind {
        "socket" => "org.freedesktop.systemd1.Socket",
        "mount" => "org.freedesktop.systemd1.Mount",
        "automount" => "org.freedesktop.systemd1.Automount",
        "swap" => "org.freedesktop.systemd1.Swap",
        "timer" => "org.freedesktop.systemd1.Timer",
        "path" => "org.freedesktop.systemd1.Path",
        _ => return None,
    })
}

/// Why a unit does not count as running, or `None` if it does. `previous_invocation` is the
/// `InvocationID` seen before the settle window: a different one means systemd restarted the
/// unit in between (`Restart=`), i.e. it crashed.
fn inactive_reason(status: &UnitStatus, previous_invocation: Option<&str>) -> Option<String> {
    if status.active_state != ActiveState::Active {
        return Some(status.describe());
    }
    match previous_invocation {
        Some(before) if before != status.invocation_id => Some(format!(
            "{}, but it was restarted during the settle window (InvocationID {before} -> {})",
            status.describe(),
            status.invocation_id
        )),
        _ => None,
    }
}

fn not_active(unit: &str, phase: String, state: String, status: UnitStatus) -> SystemdError {
    SystemdError::NotActive {
        unit: unit.to_owned(),
        phase,
        state,
        status: Box::new(status),
    }
}

/// Maps a failed unit call, singling out the D-Bus errors a caller must react to differently.
fn call_error(op: &'static str, unit: &str, source: zbus::Error) -> SystemdError {
    let name = match &source {
        zbus::Error::MethodError(name, _, _) => Some(name.as_str().to_owned()),
        _ => None,
    };
    match name.as_deref() {
        Some("org.freedesktop.systemd1.NoSuchUnit") => SystemdError::NoSuchUnit {
            unit: unit.to_owned(),
            source,
        },
        Some("org.freedesktop.systemd1.JobTypeNotApplicable") if op == "reload" => {
            SystemdError::ReloadNotSupported {
                unit: unit.to_owned(),
                source,
            }
        }
        _ => SystemdError::Call {
            op,
            unit: unit.to_owned(),
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_results_map_every_documented_string() {
        for (s, r) in [
            ("done", JobResult::Done),
            ("canceled", JobResult::Canceled),
            ("timeout", JobResult::Timeout),
            ("failed", JobResult::Failed),
            ("dependency", JobResult::Dependency),
            ("skipped", JobResult::Skipped),
            ("invalid", JobResult::Invalid),
        ] {
            assert_eq!(JobResult::parse(s), r);
            assert_eq!(r.to_string(), s);
        }
        assert_eq!(
            JobResult::parse("once"),
            JobResult::Other("once".to_owned())
        );
        assert_eq!(JobResult::parse("once").to_string(), "once");
    }

    #[test]
    fn active_states_map_every_documented_string() {
        use ActiveState as A;
        for (s, a) in [
            ("active", A::Active),
            ("reloading", A::Reloading),
            ("inactive", A::Inactive),
            ("failed", A::Failed),
            ("activating", A::Activating),
            ("deactivating", A::Deactivating),
            ("maintenance", A::Maintenance),
            ("refreshing", A::Refreshing),
            ("", A::Other(String::new())),
            ("later", A::Other("later".to_owned())),
        ] {
            assert_eq!(A::parse(s), a);
            assert_eq!(a.to_string(), s);
            assert_eq!(serde_json::to_string(&a).unwrap(), format!("{s:?}"));
        }
        let up: Vec<&str> = ["active", "activating", "reloading", "failed", "inactive"]
            .into_iter()
            .filter(|s| A::parse(s).is_up())
            .collect();
        assert_eq!(up, ["active", "activating", "reloading"]);
    }

    #[test]
    fn only_done_is_success() {
        assert!(JobResult::Done.is_success());
        for r in [
            JobResult::Canceled,
            JobResult::Timeout,
            JobResult::Failed,
            JobResult::Dependency,
            JobResult::Skipped,
            JobResult::Invalid,
            JobResult::Other("x".into()),
        ] {
            assert!(!r.is_success(), "{r}");
        }
        assert!(JobResult::Done.check("start", "a.service").is_ok());
        let err = JobResult::Failed.check("start", "a.service").unwrap_err();
        assert_eq!(
            err.to_string(),
            "systemd start job for a.service finished with result 'failed'"
        );
    }

    #[test]
    fn user_bus_address_prefers_the_session_address() {
        assert_eq!(
            user_bus_address(Some("unix:path=/x".into()), Some("/run/user/1".into())),
            Some("unix:path=/x".into())
        );
        assert_eq!(
            user_bus_address(Some(String::new()), Some("/run/user/1".into())),
            Some("unix:path=/run/user/1/bus".into())
        );
        assert_eq!(user_bus_address(None, None), None);
    }

    fn status(active: &str, sub: &str, result: &str, inv: &str) -> UnitStatus {
        UnitStatus {
            name: "a.service".into(),
            load_state: "loaded".into(),
            active_state: ActiveState::parse(active),
            sub_state: sub.into(),
            result: result.into(),
            unit_file_state: String::new(),
            invocation_id: inv.into(),
            main_pid: 0,
            exec_main_pid: 0,
            active_enter_timestamp_us: 0,
            exec_main_start_timestamp_us: 0,
            state_change_timestamp_us: 0,
            fragment_path: String::new(),
        }
    }

    #[test]
    fn inactive_reason_reports_state_sub_state_and_result() {
        assert_eq!(
            inactive_reason(&status("active", "running", "success", "ab"), Some("ab")),
            None
        );
        assert_eq!(
            inactive_reason(&status("failed", "failed", "start-limit-hit", "ab"), None).as_deref(),
            Some("failed (sub-state failed, result start-limit-hit)")
        );
        let flapped =
            inactive_reason(&status("active", "running", "success", "cd"), Some("ab")).unwrap();
        assert!(flapped.contains("InvocationID ab -> cd"), "{flapped}");
    }

    #[test]
    fn a_lost_job_is_judged_by_the_unit_state() {
        use JobKind::{Reload, Restart, Start, Stop};
        let ran = |r| Verdict::Ran(r);
        for (kind, now, verdict) in [
            // A new invocation: the start happened; its outcome is the unit's.
            (
                Restart,
                status("active", "running", "success", "cd"),
                ran(JobResult::Done),
            ),
            (
                Restart,
                status("activating", "start", "success", "cd"),
                ran(JobResult::Done),
            ),
            (
                Restart,
                status("failed", "failed", "exit-code", "cd"),
                ran(JobResult::Failed),
            ),
            (
                Start,
                status("inactive", "dead", "success", "cd"),
                ran(JobResult::Done),
            ),
            // The same invocation: a restart never ran, a start of an active unit is a no-op.
            (
                Restart,
                status("active", "running", "success", "ab"),
                Verdict::NotRun,
            ),
            (
                Start,
                status("active", "running", "success", "ab"),
                ran(JobResult::Done),
            ),
            (
                Start,
                status("failed", "failed", "start-limit-hit", "ab"),
                Verdict::NotRun,
            ),
            (
                Start,
                status("inactive", "dead", "success", ""),
                Verdict::NotRun,
            ),
            // Stop: judged by whether the unit is down.
            (
                Stop,
                status("inactive", "dead", "success", "ab"),
                ran(JobResult::Done),
            ),
            (
                Stop,
                status("failed", "failed", "exit-code", "ab"),
                ran(JobResult::Done),
            ),
            (
                Stop,
                status("active", "running", "success", "ab"),
                Verdict::NotRun,
            ),
            // A reload leaves no trace: always submitted again.
            (
                Reload,
                status("active", "running", "success", "ab"),
                Verdict::NotRun,
            ),
        ] {
            assert_eq!(judge(kind, "ab", &now), verdict, "{kind:?} {now:?}");
        }
    }

    #[test]
    fn closed_sockets_and_a_missing_manager_mean_lost_a_timeout_does_not() {
        let io = |kind| zbus::Error::InputOutput(Arc::new(io::Error::new(kind, "x")));
        let method = |name: &str| {
            zbus::Error::MethodError(
                zbus::names::OwnedErrorName::try_from(name).unwrap(),
                None,
                zbus::message::Message::method_call("/", "Ping")
                    .build(&())
                    .unwrap(),
            )
        };
        assert!(means_lost(&stream_ended()));
        assert!(means_lost(&io(io::ErrorKind::ConnectionReset)));
        assert!(!means_lost(&io(io::ErrorKind::TimedOut)));
        assert!(means_lost(&method(
            "org.freedesktop.DBus.Error.ServiceUnknown"
        )));
        assert!(means_lost(&method("org.freedesktop.DBus.Error.NoReply")));
        assert!(!means_lost(&method("org.freedesktop.systemd1.NoSuchUnit")));
        assert!(!means_lost(&zbus::Error::Failure("x".into())));
    }

    #[test]
    fn a_first_connection_waits_for_a_restarting_broker_not_for_a_missing_bus() {
        let io = |kind| zbus::Error::InputOutput(Arc::new(io::Error::new(kind, "x")));
        let connect = |kind| {
            zbus::Error::Connection(
                Arc::new(io::Error::new(kind, "x")),
                Box::new(zbus::Address::try_from("unix:path=/x").unwrap()),
            )
        };
        let method = |name: &str| {
            zbus::Error::MethodError(
                zbus::names::OwnedErrorName::try_from(name).unwrap(),
                None,
                zbus::message::Message::method_call("/", "Ping")
                    .build(&())
                    .unwrap(),
            )
        };
        for (e, want) in [
            (connect(io::ErrorKind::ConnectionRefused), true),
            (io(io::ErrorKind::UnexpectedEof), true),
            (io(io::ErrorKind::ConnectionReset), true),
            (method("org.freedesktop.DBus.Error.ServiceUnknown"), true),
            (connect(io::ErrorKind::NotFound), false),
            (connect(io::ErrorKind::PermissionDenied), false),
            (io(io::ErrorKind::TimedOut), false),
            (zbus::Error::Handshake("auth".into()), false),
            (method("org.freedesktop.DBus.Error.AccessDenied"), false),
        ] {
            assert_eq!(restarting(&e), want, "{e:?}");
        }
    }

    #[test]
    fn result_interface_by_suffix() {
        assert_eq!(
            result_interface("a.timer"),
            Some("org.freedesktop.systemd1.Timer")
        );
        assert_eq!(result_interface("default.target"), None);
    }
}

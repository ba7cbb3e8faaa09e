//! The one D-Bus boundary to `org.freedesktop.systemd1`: unit names and job requests go in,
//! job results ([`JobResult`]) and unit snapshots ([`UnitStatus`]) come out; every call is
//! bounded by a named timeout, every property read goes to the manager (nothing is cached),
//! and a job is only reported finished once systemd's own `JobRemoved` signal for that very
//! job has arrived.
//!
//! The D-Bus API used here is documented in `org.freedesktop.systemd1(5)`
//! (<https://www.freedesktop.org/software/systemd/man/latest/org.freedesktop.systemd1.html>).

use std::fmt;
use std::pin::Pin;
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
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The reply timeout for every single method call. This is the default of sd-bus (and thus of
/// `systemctl`), 25 s (`BUS_DEFAULT_TIMEOUT` in systemd's sources); a `daemon-reload` on a big
/// host is the slowest call we make and stays well inside it.
pub const METHOD_TIMEOUT: Duration = Duration::from_secs(25);

/// How long to wait for the `JobRemoved` signal of a submitted job.
///
/// systemd enforces its own limits on every job: a start gives up after `TimeoutStartSec=` and a
/// stop after `TimeoutStopSec=` (both default to `DefaultTimeoutStartSec=`/
/// `DefaultTimeoutStopSec=` = 90 s, see `systemd-system.conf(5)`), and a restart is a stop
/// followed by a start. So for units with default timeouts systemd itself finishes the job
/// within 180 s; this deadline sits just above that and only guards against a lost signal or a
/// hung manager. Units with longer configured timeouts need [`Systemd::with_job_timeout`].
pub const JOB_TIMEOUT: Duration = Duration::from_secs(190);

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
pub enum Bus {
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
    pub fn parse(result: &str) -> Self {
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

/// A snapshot of one unit, read property by property from the manager (never from a cache).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitStatus {
    /// The unit's primary name (`Id`).
    pub name: String,
    /// `LoadState`: `loaded`, `not-found`, `bad-setting`, `error`, `masked`.
    pub load_state: String,
    /// `ActiveState`: `active`, `reloading`, `inactive`, `failed`, `activating`, `deactivating`.
    pub active_state: String,
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
    pub exec_main_pid: u32,
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

    /// The connection went away while waiting for a job.
    #[error("the bus connection closed while waiting for the {op} job of {unit}")]
    #[diagnostic(
        code(moorline::systemd::disconnected),
        help("the bus broker or the service manager went away; the job's outcome is unknown")
    )]
    Disconnected {
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

/// A clonable handle on one bus connection to a service manager.
#[derive(Debug, Clone)]
pub struct Systemd {
    connection: Connection,
    manager: ManagerProxy<'static>,
    job_timeout: Duration,
}

impl Systemd {
    /// Connects to the manager of `bus`.
    ///
    /// The user bus is `$DBUS_SESSION_BUS_ADDRESS` if set, else `unix:path=$XDG_RUNTIME_DIR/bus`
    /// (the address `sd_bus_open_user()` falls back to as well).
    pub async fn connect(bus: Bus) -> Result<Self, SystemdError> {
        match bus {
            Bus::System => {
                Self::establish("system".to_owned(), zbus::connection::Builder::system()).await
            }
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
        Self::establish(
            address.to_owned(),
            zbus::connection::Builder::address(address),
        )
        .await
    }

    async fn establish(
        target: String,
        builder: zbus::connection::Builder<'_>,
    ) -> Result<Self, SystemdError> {
        let work = async {
            let connection = builder.method_timeout(METHOD_TIMEOUT).build().await?;
            let manager = ManagerProxy::builder(&connection)
                .cache_properties(CacheProperties::No)
                .build()
                .await?;
            // Once per connection: systemd keeps the subscription until the client goes away.
            manager.subscribe().await?;
            Ok::<_, zbus::Error>((connection, manager))
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, work).await {
            Err(_) => Err(SystemdError::ConnectTimeout {
                target,
                timeout: CONNECT_TIMEOUT,
            }),
            Ok(Err(source)) => Err(SystemdError::Connect { target, source }),
            Ok(Ok((connection, manager))) => Ok(Self {
                connection,
                manager,
                job_timeout: JOB_TIMEOUT,
            }),
        }
    }

    /// The same connection with another job deadline (for units whose configured start/stop
    /// timeouts exceed the defaults [`JOB_TIMEOUT`] assumes).
    #[must_use]
    pub fn with_job_timeout(mut self, timeout: Duration) -> Self {
        self.job_timeout = timeout;
        self
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

    /// `daemon-reload`: systemd replies once the unit files have been re-read.
    pub async fn daemon_reload(&self) -> Result<(), SystemdError> {
        self.manager
            .reload()
            .await
            .map_err(|source| SystemdError::Call {
                op: "daemon-reload",
                unit: "manager".to_owned(),
                source,
            })
    }

    /// `ResetFailedUnit`: clears the failed state and the start-limit counter.
    pub async fn reset_failed(&self, unit: &str) -> Result<(), SystemdError> {
        self.manager
            .reset_failed_unit(unit)
            .await
            .map_err(|source| call_error("reset-failed", unit, source))
    }

    /// Reads the unit's current state; works for units that are not loaded yet.
    pub async fn status(&self, unit: &str) -> Result<UnitStatus, SystemdError> {
        let err = |source| call_error("status", unit, source);
        let path = self.manager.load_unit(unit).await.map_err(err)?;
        let proxy = UnitProxy::builder(&self.connection)
            .path(path.clone())
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(err)?;
        let mut status = UnitStatus {
            name: proxy.id().await.map_err(err)?,
            load_state: proxy.load_state().await.map_err(err)?,
            active_state: proxy.active_state().await.map_err(err)?,
            sub_state: proxy.sub_state().await.map_err(err)?,
            result: String::new(),
            unit_file_state: proxy.unit_file_state().await.map_err(err)?,
            invocation_id: hex::encode(proxy.invocation_id().await.map_err(err)?),
            main_pid: 0,
            exec_main_pid: 0,
            active_enter_timestamp_us: proxy.active_enter_timestamp().await.map_err(err)?,
            exec_main_start_timestamp_us: 0,
            state_change_timestamp_us: proxy.state_change_timestamp().await.map_err(err)?,
            fragment_path: proxy.fragment_path().await.map_err(err)?,
        };
        if status.name.ends_with(".service") {
            let service = ServiceProxy::builder(&self.connection)
                .path(path)
                .cache_properties(CacheProperties::No)
                .build()
                .await
                .map_err(err)?;
            status.result = service.result().await.map_err(err)?;
            status.main_pid = service.main_pid().await.map_err(err)?;
            status.exec_main_pid = service.exec_main_pid().await.map_err(err)?;
            status.exec_main_start_timestamp_us =
                service.exec_main_start_timestamp().await.map_err(err)?;
        } else if let Some(interface) = result_interface(&status.name) {
            // Other unit types with a `Result` property carry it on their own interface.
            let props = zbus::fdo::PropertiesProxy::builder(&self.connection)
                .destination(DESTINATION)
                .path(path)
                .cache_properties(CacheProperties::No)
                .build()
                .await
                .map_err(err)?;
            let iface = zbus::names::InterfaceName::try_from(interface).map_err(err)?;
            let value = props
                .get(iface, "Result")
                .await
                .map_err(|e| err(e.into()))?;
            status.result = String::try_from(value).map_err(err)?;
        }
        Ok(status)
    }

    /// A service's settings as systemd read them from its unit file
    /// (specifiers resolved, quoting removed; `$` references are expanded
    /// only when the command runs, so `$$` still shows doubled).
    pub async fn loaded_settings(&self, unit: &str) -> Result<LoadedSettings, SystemdError> {
        let err = |source| call_error("read settings", unit, source);
        let path = self.manager.load_unit(unit).await.map_err(err)?;
        let proxy = UnitProxy::builder(&self.connection)
            .path(path.clone())
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(err)?;
        let service = ServiceProxy::builder(&self.connection)
            .path(path)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(err)?;
        Ok(LoadedSettings {
            description: proxy.description().await.map_err(err)?,
            environment: service.environment().await.map_err(err)?,
            exec_start: service
                .exec_start()
                .await
                .map_err(err)?
                .into_iter()
                .map(|(path, argv, ..)| (path, argv))
                .collect(),
        })
    }

    /// Keeps `unit` loaded while this connection lives (`Unit.Ref()`): an inactive unit
    /// nothing refers to is unloaded by systemd's garbage collection, which loses its
    /// timestamps (`InactiveEnterTimestamp`, `StateChangeTimestamp`). Used to read them after
    /// a stop.
    pub async fn pin(&self, unit: &str) -> Result<(), SystemdError> {
        let err = |source| call_error("ref", unit, source);
        let path = self.manager.load_unit(unit).await.map_err(err)?;
        let proxy = UnitProxy::builder(&self.connection)
            .path(path)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(err)?;
        proxy.pin().await.map_err(err)
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
    /// `systemctl enable` does (`force` replaces conflicting symlinks).
    pub async fn enable(&self, units: &[String]) -> Result<(), SystemdError> {
        let names: Vec<&str> = units.iter().map(String::as_str).collect();
        self.manager
            .enable_unit_files(&names, false, true)
            .await
            .map_err(|source| call_error("enable", &units.join(" "), source))?;
        self.daemon_reload().await
    }

    /// `DisableUnitFiles(units, runtime=false)` and a `daemon-reload`.
    pub async fn disable(&self, units: &[String]) -> Result<(), SystemdError> {
        let names: Vec<&str> = units.iter().map(String::as_str).collect();
        self.manager
            .disable_unit_files(&names, false)
            .await
            .map_err(|source| call_error("disable", &units.join(" "), source))?;
        self.daemon_reload().await
    }

    /// The job protocol: subscribe to `JobRemoved` *before* queueing the job (a trivial job
    /// finishes in 4–10 ms, possibly before the reply carrying its path has been read), then
    /// wait for the signal naming exactly that job path.
    async fn run_job(&self, kind: JobKind, unit: &str) -> Result<JobResult, SystemdError> {
        let op = kind.op();
        let mut removed = self
            .manager
            .receive_job_removed()
            .await
            .map_err(|source| call_error(op, unit, source))?;
        let submitted = match kind {
            JobKind::Start => self.manager.start_unit(unit, JOB_MODE).await,
            JobKind::Stop => self.manager.stop_unit(unit, JOB_MODE).await,
            JobKind::Restart => self.manager.restart_unit(unit, JOB_MODE).await,
            JobKind::Reload => self.manager.reload_unit(unit, JOB_MODE).await,
        };
        let job = submitted.map_err(|source| call_error(op, unit, source))?;
        let wait = async {
            while let Some(signal) = next(&mut removed).await {
                // A signal we cannot decode is not ours to judge; keep waiting for our job.
                let Ok(args) = signal.args() else {
                    continue;
                };
                if args.job == job {
                    return Ok(JobResult::parse(&args.result));
                }
            }
            Err(SystemdError::Disconnected {
                op,
                unit: unit.to_owned(),
            })
        };
        tokio::time::timeout(self.job_timeout, wait)
            .await
            .unwrap_or_else(|_| {
                Err(SystemdError::JobTimeout {
                    op,
                    unit: unit.to_owned(),
                    timeout: self.job_timeout,
                })
            })
    }
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
    if status.active_state != "active" {
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
            active_state: active.into(),
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
    fn result_interface_by_suffix() {
        assert_eq!(
            result_interface("a.timer"),
            Some("org.freedesktop.systemd1.Timer")
        );
        assert_eq!(result_interface("default.target"), None);
    }
}

//! A private, throw-away `systemd --user` manager: an empty scratch directory goes in, a running
//! manager with its own bus address and unit directory comes out ([`PrivateSystemd`]); it
//! guarantees that the manager and every service it started die with it — on [`Drop`], on
//! [`PrivateSystemd::stop`], and also when the owning process is killed abruptly (`SIGKILL`),
//! because everything runs in a PID namespace whose init the kernel kills with us.
//!
//! Used by the integration tests and by `moorline demo`.
//!
//! The process tree, as spawned:
//!
//! ```text
//! keeper thread (ours, lives as long as the sandbox)
//! └─ setpriv --pdeathsig SIGKILL          (dies when the keeper thread dies)
//!    └─ unshare --pid --fork --kill-child --mount-proc …   (exec'd by setpriv)
//!       └─ sh   (PID 1 of the new PID namespace; killed when unshare dies)
//!          ├─ systemd-journald (the units' stdout/stderr, see [`PrivateSystemd::journal_dir`])
//!          └─ systemd --user   (refuses to run as PID 1: exits 255 silently)
//!             └─ dbus-daemon, services…
//! ```
//!
//! When PID 1 of a PID namespace dies the kernel `SIGKILL`s every other process in it
//! (`pid_namespaces(7)`), so no service can outlive the sandbox, double-forked or not. No
//! network namespace is created: services bind the host's loopback and are reachable from the
//! tests.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use miette::Diagnostic;
use thiserror::Error;

use super::cgroup::Subtree;
use crate::files::is_root;
use crate::systemd::{Systemd, SystemdError};

/// How long the manager may take until its bus answers. Measured here: ~100–300 ms (the
/// manager starts, then `dbus.socket` is activated on first connect). The limit is generous
/// because CI machines under load (two cores running a parallel test suite) are much slower.
pub(crate) const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Poll interval while waiting for the bus socket, the manager's exit or (in the test kit) its
/// bus broker.
pub(crate) const POLL: Duration = Duration::from_millis(20);

/// How long [`PrivateSystemd::stop`] lets the manager stop its units after `SIGTERM` before it
/// kills the namespace. `systemd(1)`: a user manager receiving `SIGTERM` starts `exit.target`,
/// i.e. stops all units cleanly; for test services that is milliseconds.
const GRACE: Duration = Duration::from_secs(2);

/// Where Debian/Ubuntu (`/lib`, merged-usr) and others (`/usr/lib`) install the manager.
const SYSTEMD_CANDIDATES: [&str; 2] = ["/lib/systemd/systemd", "/usr/lib/systemd/systemd"];

/// Where the journal daemon is installed (same layouts as [`SYSTEMD_CANDIDATES`]).
const JOURNALD_CANDIDATES: [&str; 2] = [
    "/lib/systemd/systemd-journald",
    "/usr/lib/systemd/systemd-journald",
];

/// The shell that becomes PID 1 of the namespace. A private tmpfs on `/run/systemd` (this mount
/// namespace only) with `/run/systemd/system` in it makes the manager see a "booted with
/// systemd" host (`sd_booted(3)` tests exactly that directory) without touching the real
/// `/run/systemd`. The shell stays PID 1 because `systemd --user` refuses to be PID 1; its trap
/// forwards `SIGTERM` so the manager can shut its units down (a namespace init ignores signals
/// it has no handler for).
const INIT_SCRIPT: &str = r#"
mount -t tmpfs -o mode=0755 tmpfs /run/systemd || exit 90
mkdir /run/systemd/system || exit 91
# The manager hands its environment to every unit; keep our plumbing variable out of it.
systemd=$MOORLINE_SYSTEMD
journald=$MOORLINE_JOURNALD
journal_dir=$MOORLINE_JOURNAL_DIR
unset MOORLINE_SYSTEMD MOORLINE_JOURNALD MOORLINE_JOURNAL_DIR
# A journal for the units: without one, the manager connects their stdout/stderr to
# /dev/null (the journal sockets live in /run/systemd/journal, which is our fresh tmpfs).
# systemd-journald binds those sockets itself when not socket-activated; its runtime storage
# (/run/log/journal) is bind-mounted from the sandbox, so the files are readable from outside
# (`journalctl -D {dir}/journal`) and the host's journal is never touched. Best effort: no
# journald, or no right to create the mount point, just means no logs.
if [ -n "$journald" ] && mkdir -p /run/log/journal 2>/dev/null \
    && mount --bind "$journal_dir" /run/log/journal; then
    "$journald" &
    i=0
    while [ ! -S /run/systemd/journal/stdout ] && [ $i -lt 250 ]; do sleep 0.02; i=$((i+1)); done
fi
"$systemd" --user &
manager=$!
trap 'kill -TERM $manager 2>/dev/null' TERM INT
wait $manager
wait $manager
"#;

/// Run first by the namespace's PID 1, before the prelude: it moves itself, and so everything
/// the sandbox will start, into the sandbox's own cgroup subtree ([`Subtree`]), whose
/// `cgroup.procs` files are the script's arguments. A PID written there is read in the
/// writer's PID namespace, so `$$` (1) is this shell.
const CGROUP_SCRIPT: &str = r#"
for procs in "$@"; do echo $$ > "$procs" || exit 89; done
"#;

/// Every reason a private manager cannot be started.
#[derive(Debug, Error, Diagnostic)]
pub enum SandboxError {
    /// Not on Linux: PID namespaces and systemd are Linux-only.
    #[error("a private systemd manager needs Linux (PID and mount namespaces); this is {os}")]
    #[diagnostic(
        code(moorline::sandbox::unsupported_os),
        help("run the tests or `moorline demo` on a Linux host, VM or container")
    )]
    UnsupportedOs {
        /// `std::env::consts::OS`.
        os: &'static str,
    },

    /// No systemd binary installed.
    #[error("no systemd binary found (looked at {looked_at})")]
    #[diagnostic(
        code(moorline::sandbox::no_systemd),
        help("install systemd (Debian/Ubuntu: `apt-get install systemd dbus-user-session`)")
    )]
    NoSystemd {
        /// The paths that were tried.
        looked_at: String,
    },

    /// A helper tool from util-linux is missing.
    #[error("`{tool}` was not found in PATH")]
    #[diagnostic(
        code(moorline::sandbox::missing_tool),
        help("install util-linux (it provides `unshare` and `setpriv`)")
    )]
    MissingTool {
        /// `unshare` or `setpriv`.
        tool: &'static str,
    },

    /// The scratch directory could not be prepared.
    #[error("cannot prepare the sandbox directory {path}")]
    #[diagnostic(
        code(moorline::sandbox::scratch_dir),
        help("pass an empty, writable directory on a local filesystem")
    )]
    ScratchDir {
        /// The directory that failed.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: io::Error,
    },

    /// The process could not be spawned at all.
    #[error("cannot spawn the sandbox process")]
    #[diagnostic(
        code(moorline::sandbox::spawn),
        help("check that `setpriv` and `unshare` are executable")
    )]
    Spawn {
        /// The I/O failure.
        #[source]
        source: io::Error,
    },

    /// The kernel refused to create the namespaces.
    #[error("the kernel refused to create the namespaces (unshare: {detail})")]
    #[diagnostic(
        code(moorline::sandbox::unshare_denied),
        help(
            "run as root, or allow unprivileged user namespaces \
             (`sysctl kernel.unprivileged_userns_clone=1`, \
             `sysctl kernel.apparmor_restrict_unprivileged_userns=0`); in a container, \
             grant CAP_SYS_ADMIN (e.g. `--privileged`) or allow the unshare/mount syscalls"
        )
    )]
    UnshareDenied {
        /// unshare's own message.
        detail: String,
    },

    /// The manager exited before its bus came up.
    #[error("the private systemd manager exited during startup ({status}); its output:\n{log}")]
    #[diagnostic(
        code(moorline::sandbox::exited),
        help("{hint}; the full log is in {log_path}")
    )]
    Exited {
        /// The exit status of the sandbox process.
        status: String,
        /// What most likely went wrong, depending on privilege.
        hint: &'static str,
        /// The tail of the manager's output.
        log: String,
        /// The log file.
        log_path: String,
    },

    /// The sandbox's own cgroup subtree could not be created (as root).
    #[error("cannot create the private manager's own cgroup subtree: {source}")]
    #[diagnostic(
        code(moorline::sandbox::cgroup),
        help(
            "a private manager needs a cgroup of its own, or its units share cgroups with \
             other managers' units of the same name; check that /sys/fs/cgroup is mounted \
             read-write"
        )
    )]
    Cgroup {
        /// What failed.
        #[source]
        source: io::Error,
    },

    /// The bus did not come up in time.
    #[error("the private systemd manager's bus did not answer within {timeout:?}")]
    #[diagnostic(
        code(moorline::sandbox::startup_timeout),
        help("the machine may be overloaded; the manager's log is in {log_path}")
    )]
    StartupTimeout {
        /// The limit ([`STARTUP_TIMEOUT`]).
        timeout: Duration,
        /// The log file.
        log_path: String,
        /// The last connection attempt's failure, if any.
        #[source]
        last_error: Option<Box<SystemdError>>,
    },
}

/// Extra isolation for a private manager (the test kit's simulated fleet hosts run theirs in
/// network namespaces of their own); the default is none ([`PrivateSystemd::start`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct Isolation {
    /// A network namespace to run in, e.g. `/run/netns/NAME` (`ip netns add NAME`).
    pub(crate) netns: Option<PathBuf>,
    /// A UTS namespace of its own (a hostname of its own).
    pub(crate) uts: bool,
    /// Shell code run by the namespace's PID 1 before the manager starts (after the PID and
    /// mount namespaces exist): private mounts, a hostname, other daemons started with `&`.
    /// A failure should `exit` with a status that names it.
    pub(crate) prelude: String,
}

enum Control {
    Terminate,
    Kill,
}

/// A running private `systemd --user` manager; stopped on [`Drop`].
pub struct PrivateSystemd {
    dir: PathBuf,
    pid: u32,
    control: mpsc::Sender<Control>,
    exit: Arc<Mutex<Option<ExitStatus>>>,
    keeper: Option<JoinHandle<()>>,
    /// Removed once the manager has exited ([`PrivateSystemd::stop`]).
    cgroup: Option<Subtree>,
}

impl std::fmt::Debug for PrivateSystemd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateSystemd")
            .field("dir", &self.dir)
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl PrivateSystemd {
    /// Starts a manager that keeps all its state under `dir` (an empty scratch directory) and
    /// waits until its bus answers a call.
    pub async fn start(dir: &Path) -> Result<Self, SandboxError> {
        Self::launch(dir, &Isolation::default()).await
    }

    /// [`PrivateSystemd::start`] with more isolation (see [`Isolation`]). Used by the simulated
    /// fleet hosts (`crate::testkit::hosts`).
    #[cfg(feature = "testkit")]
    pub(crate) async fn start_isolated(
        dir: &Path,
        isolation: &Isolation,
    ) -> Result<Self, SandboxError> {
        Self::launch(dir, isolation).await
    }

    /// Starts the manager. With `isolation`, the sandbox runs in the network namespace
    /// `isolation.netns` (entered with `nsenter --net`, not `ip netns exec`, which remounts
    /// `/sys` without the cgroup mounts the manager needs), in its own UTS namespace when asked,
    /// and runs `isolation.prelude` as PID 1 before the manager starts.
    async fn launch(dir: &Path, isolation: &Isolation) -> Result<Self, SandboxError> {
        if !cfg!(target_os = "linux") {
            return Err(SandboxError::UnsupportedOs {
                os: std::env::consts::OS,
            });
        }
        let systemd = SYSTEMD_CANDIDATES
            .iter()
            .map(Path::new)
            .find(|p| p.is_file())
            .ok_or_else(|| SandboxError::NoSystemd {
                looked_at: SYSTEMD_CANDIDATES.join(", "),
            })?;
        let setpriv = find_tool("setpriv")?;
        let unshare = find_tool("unshare")?;

        let dir = std::path::absolute(dir).map_err(|source| SandboxError::ScratchDir {
            path: dir.to_owned(),
            source,
        })?;
        let runtime = dir.join("runtime");
        for sub in ["config/systemd/user", "data", "state", "cache", "journal"] {
            create_dir(&dir.join(sub))?;
        }
        create_dir(&runtime)?;
        // The broker may be restarted any number of times ([`PrivateSystemd::restart_bus`]):
        // without this, the 6th start of dbus.service within 10 s hits systemd's default
        // start limit (measured here: the bus socket then refuses every connection for good).
        let broker_drop_in = dir.join("config/systemd/user/dbus.service.d");
        create_dir(&broker_drop_in)?;
        let drop_in = broker_drop_in.join("moorline-sandbox.conf");
        std::fs::write(&drop_in, "[Unit]\nStartLimitIntervalSec=0\n").map_err(|source| {
            SandboxError::ScratchDir {
                path: drop_in,
                source,
            }
        })?;
        // The manager and dbus-daemon insist on a private runtime dir (XDG Base Directory
        // spec: "MUST be owned by the user, and he MUST be the only one having read and write
        // access to it. Its Unix access mode MUST be 0700").
        set_mode(&runtime, 0o700)?;

        // Captures what unshare, mount and the shell say (e.g. "unshare failed: Operation not
        // permitted"). The manager itself logs to its own /dev/null stdio when no journal runs,
        // so its failures only show as an exit status.
        let log_path = dir.join("manager.log");
        let log = std::fs::File::create(&log_path).map_err(|source| SandboxError::ScratchDir {
            path: log_path.clone(),
            source,
        })?;
        let log_err = log.try_clone().map_err(|source| SandboxError::ScratchDir {
            path: log_path.clone(),
            source,
        })?;
        // Unprivileged, the hierarchies are not ours to write (a user namespace does not
        // change that): the manager then shares the caller's cgroup, as before.
        let cgroup = match Subtree::create() {
            Ok(subtree) => subtree,
            Err(_) if !is_root() => None,
            Err(source) => return Err(SandboxError::Cgroup { source }),
        };

        let mut cmd = Command::new(setpriv);
        // pdeathsig fires when the *thread* that forked us exits, hence the dedicated keeper
        // thread below (a tokio worker or a test thread may exit long before the sandbox).
        cmd.args(["--pdeathsig", "SIGKILL", "--"]);
        if let Some(netns) = &isolation.netns {
            let mut net = std::ffi::OsString::from("--net=");
            net.push(netns);
            cmd.arg(find_tool("nsenter")?).arg(net).arg("--");
        }
        cmd.arg(unshare);
        if isolation.uts {
            cmd.arg("--uts");
        }
        if !is_root() {
            // Unprivileged: a user namespace in which we are root grants the mount and PID
            // namespace rights (`user_namespaces(7)`).
            cmd.args(["--user", "--map-root-user"]);
        }
        cmd.args([
            "--pid",
            "--fork",
            // SIGKILL the namespace init when unshare dies (its own pdeathsig).
            "--kill-child",
            "--mount-proc",
            "--propagation",
            "private",
            "sh",
            "-c",
        ])
        .arg(format!(
            "{CGROUP_SCRIPT}\n{}\n{INIT_SCRIPT}",
            isolation.prelude
        ))
        .arg("sh")
        .args(cgroup.iter().flat_map(Subtree::procs_files))
        .env("MOORLINE_SYSTEMD", systemd)
        .env(
            "MOORLINE_JOURNALD",
            JOURNALD_CANDIDATES
                .iter()
                .find(|p| Path::new(p).is_file())
                .copied()
                .unwrap_or_default(),
        )
        .env("MOORLINE_JOURNAL_DIR", dir.join("journal"))
        .env("XDG_RUNTIME_DIR", &runtime)
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("XDG_STATE_HOME", dir.join("state"))
        .env("XDG_CACHE_HOME", dir.join("cache"))
        // sd-bus prefers this over $XDG_RUNTIME_DIR/bus; an inherited one would point the
        // manager at somebody else's bus.
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
        // Own process group: a Ctrl-C at the terminal reaches the owner, whose death then
        // tears the sandbox down through pdeathsig, instead of hitting the manager directly.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);

        let (pid, control, exit, keeper) = spawn_keeper(cmd)?;
        let mut sandbox = Self {
            dir,
            pid,
            control,
            exit,
            keeper: Some(keeper),
            cgroup,
        };
        if let Err(e) = sandbox.wait_ready(&log_path).await {
            sandbox.stop();
            return Err(e);
        }
        Ok(sandbox)
    }

    async fn wait_ready(&self, log_path: &Path) -> Result<(), SandboxError> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let socket = self.runtime_dir().join("bus");
        let mut last_error = None;
        loop {
            if let Some(status) = self.exit_status() {
                let log = tail(log_path);
                if let Some(detail) = unshare_denial(&log) {
                    return Err(SandboxError::UnshareDenied { detail });
                }
                return Err(SandboxError::Exited {
                    status: status.to_string(),
                    hint: if is_root() {
                        "check that systemd and dbus-user-session are installed and that \
                         `unshare --pid --mount` works here"
                    } else {
                        // Seen on cgroup v1/hybrid hosts: the manager's write to
                        // /sys/fs/cgroup/.../cgroup.procs fails with EACCES and it exits 1
                        // without a word (its own log goes to /dev/null).
                        "unprivileged, systemd --user needs a cgroup it may write to (cgroup v2 \
                         delegation, as inside a logged-in user session); otherwise run as root"
                    },
                    log,
                    log_path: log_path.display().to_string(),
                });
            }
            if socket.exists() {
                // connect() also calls Subscribe: a real method call on the manager.
                match self.connect().await {
                    Ok(_) => return Ok(()),
                    Err(e) => last_error = Some(Box::new(e)),
                }
            }
            if Instant::now() >= deadline {
                return Err(SandboxError::StartupTimeout {
                    timeout: STARTUP_TIMEOUT,
                    log_path: log_path.display().to_string(),
                    last_error,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The manager's bus, `unix:path={dir}/runtime/bus`.
    pub fn bus_address(&self) -> String {
        format!("unix:path={}", self.runtime_dir().join("bus").display())
    }

    /// `{dir}/config/systemd/user`, the manager's unit directory (`$XDG_CONFIG_HOME/systemd/user`
    /// in `systemd.unit(5)`'s user search path); created by [`PrivateSystemd::start`].
    pub fn unit_dir(&self) -> PathBuf {
        self.dir.join("config/systemd/user")
    }

    /// `{dir}/journal`: the journal files of the sandbox's own `systemd-journald`, which
    /// captures the units' stdout/stderr (read with `journalctl -D`, or `moorline logs
    /// --directory`). Stays empty where that journald could not be started.
    #[cfg(feature = "testkit")]
    pub fn journal_dir(&self) -> PathBuf {
        self.dir.join("journal")
    }

    /// `{dir}/runtime`, the manager's `$XDG_RUNTIME_DIR`.
    pub fn runtime_dir(&self) -> PathBuf {
        self.dir.join("runtime")
    }

    /// A new connection to the manager (on the caller's tokio runtime).
    pub async fn connect(&self) -> Result<Systemd, SystemdError> {
        Systemd::connect_address(&self.bus_address()).await
    }

    /// The host PID of the sandbox's outermost process (`unshare`).
    #[cfg(feature = "testkit")]
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Stops the manager and everything it runs: `SIGTERM` to the manager (it stops its units,
    /// `systemd(1)`), up to [`GRACE`] for that, then `SIGKILL` to the namespace. Idempotent.
    /// Blocks the calling thread (typically ~60 ms), as it also runs from [`Drop`].
    pub fn stop(&mut self) {
        let Some(keeper) = self.keeper.take() else {
            return;
        };
        // Send errors only mean the keeper already saw the process exit.
        let _ = self.control.send(Control::Terminate);
        let deadline = Instant::now() + GRACE;
        while self.exit_status().is_none() && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        let _ = self.control.send(Control::Kill);
        // The keeper returns once the process is reaped, which SIGKILL makes immediate.
        let _ = keeper.join();
        drop(self.cgroup.take());
    }

    /// The sandbox's own cgroup directories (one per hierarchy systemd manages), below which
    /// its manager runs its units; empty when it runs unprivileged in the caller's cgroup.
    #[cfg(feature = "testkit")]
    pub fn cgroup_dirs(&self) -> &[PathBuf] {
        self.cgroup.as_ref().map_or(&[], Subtree::dirs)
    }

    fn exit_status(&self) -> Option<ExitStatus> {
        *self.exit.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for PrivateSystemd {
    fn drop(&mut self) {
        self.stop();
    }
}

type Keeper = (
    u32,
    mpsc::Sender<Control>,
    Arc<Mutex<Option<ExitStatus>>>,
    JoinHandle<()>,
);

/// Spawns `cmd` from a dedicated thread that owns the child for its whole life: the parent
/// thread is what `--pdeathsig` watches, and owning the `Child` there means we never signal a
/// PID that was already reaped (and possibly reused).
fn spawn_keeper(mut cmd: Command) -> Result<Keeper, SandboxError> {
    let (control_tx, control_rx) = mpsc::channel::<Control>();
    let (spawned_tx, spawned_rx) = mpsc::channel::<io::Result<u32>>();
    let exit = Arc::new(Mutex::new(None));
    let exit_in_keeper = Arc::clone(&exit);
    let keeper = std::thread::Builder::new()
        .name("moorline-sandbox".to_owned())
        .spawn(move || {
            let mut child = match cmd.spawn() {
                Ok(child) => child,
                Err(e) => {
                    let _ = spawned_tx.send(Err(e));
                    return;
                }
            };
            let _ = spawned_tx.send(Ok(child.id()));
            let status = keep(&mut child, &control_rx);
            *exit_in_keeper
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = status;
        })
        .map_err(|source| SandboxError::Spawn { source })?;
    let pid = match spawned_rx.recv() {
        Ok(Ok(pid)) => pid,
        Ok(Err(source)) => {
            let _ = keeper.join();
            return Err(SandboxError::Spawn { source });
        }
        Err(_) => {
            let _ = keeper.join();
            return Err(SandboxError::Spawn {
                source: io::Error::other("the sandbox keeper thread died"),
            });
        }
    };
    Ok((pid, control_tx, exit, keeper))
}

/// The keeper loop: reap the child when it exits, act on control messages meanwhile. When the
/// owner vanished (channel closed) the child is killed.
fn keep(child: &mut Child, control: &mpsc::Receiver<Control>) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(_) => break,
        }
        match control.recv_timeout(POLL) {
            Ok(Control::Terminate) => terminate_manager(child.id()),
            Ok(Control::Kill) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
    // SIGKILL to unshare; --kill-child then kills the namespace init, and with it everything.
    let _ = child.kill();
    child.wait().ok()
}

/// `SIGTERM` to the namespace's init shell, which forwards it to the manager. (unshare itself
/// ignores SIGTERM while it waits for its child.) The shell's host PID is unshare's only child,
/// read from `/proc/<pid>/task/<pid>/children` (`proc(5)`); if that file is unavailable, the
/// caller falls back to `SIGKILL` after the grace period.
fn terminate_manager(unshare_pid: u32) {
    let children = format!("/proc/{unshare_pid}/task/{unshare_pid}/children");
    let Ok(list) = std::fs::read_to_string(children) else {
        return;
    };
    for pid in list.split_whitespace() {
        let _ = Command::new("kill")
            .args(["-TERM", pid])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

pub(crate) fn find_tool(tool: &'static str) -> Result<PathBuf, SandboxError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/bin".into(), "/usr/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .ok_or(SandboxError::MissingTool { tool })
}

fn create_dir(path: &Path) -> Result<(), SandboxError> {
    std::fs::create_dir_all(path).map_err(|source| SandboxError::ScratchDir {
        path: path.to_owned(),
        source,
    })
}

fn set_mode(path: &Path, mode: u32) -> Result<(), SandboxError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        SandboxError::ScratchDir {
            path: path.to_owned(),
            source,
        }
    })
}

/// The last lines of the manager log, for error messages.
fn tail(path: &Path) -> String {
    const LINES: usize = 20;
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    for line in &lines[lines.len().saturating_sub(LINES)..] {
        let _ = writeln!(out, "  {line}");
    }
    if out.is_empty() {
        out.push_str("  (no output)");
    }
    out
}

/// unshare's message when the kernel said no (`unshare: unshare failed: Operation not
/// permitted`, or the same for the mount of /proc or /run/systemd).
fn unshare_denial(log: &str) -> Option<String> {
    log.lines()
        .map(str::trim)
        .find(|l| {
            (l.starts_with("unshare:") || l.starts_with("mount:"))
                && (l.contains("Operation not permitted") || l.contains("Permission denied"))
        })
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_unshare_denials() {
        assert_eq!(
            unshare_denial("  unshare: unshare failed: Operation not permitted\n").as_deref(),
            Some("unshare: unshare failed: Operation not permitted")
        );
        assert_eq!(unshare_denial("systemd 252 running in user mode"), None);
    }

    #[test]
    fn tail_of_missing_file_says_so() {
        assert_eq!(tail(Path::new("/nonexistent/x.log")), "  (no output)");
    }
}

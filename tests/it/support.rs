//! Shared test harness: one private `systemd --user` manager per test binary (in a PID
//! namespace, so it dies with the binary even on SIGKILL), started lazily by the first test
//! that needs it.

use std::path::PathBuf;
use std::sync::OnceLock;

use moorline::demo::sandbox::PrivateSystemd;
use moorline::systemd::Systemd;

/// Set to `1` to turn "cannot start a private manager" into a test failure instead of a skip.
const REQUIRE_ENV: &str = "MOORLINE_REQUIRE_SYSTEMD";

struct Harness {
    sandbox: PrivateSystemd,
    /// Keeps the scratch directory alive as long as the sandbox.
    _dir: tempfile::TempDir,
}

static HARNESS: OnceLock<Result<Harness, String>> = OnceLock::new();

/// A second manager whose bus broker the bus-restart tests kill: restarting the shared
/// manager's broker would cut the connections of every other test running in parallel.
static BUS_HARNESS: OnceLock<Result<Harness, String>> = OnceLock::new();

/// Held by every test that restarts [`bus_sandbox`]'s broker, so that one test's restart
/// never lands in another's assertions.
pub static BUS_RESTARTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The shared manager, or `None` (after printing why) when it cannot run here.
///
/// The manager is started on a runtime of its own in a helper thread: every `#[tokio::test]`
/// has its own runtime that ends with the test, and nothing of the shared sandbox may live on
/// one of those.
pub fn sandbox() -> Option<&'static PrivateSystemd> {
    started(&HARNESS)
}

/// The manager reserved for bus-restart tests (see [`BUS_HARNESS`]), or `None` to skip.
pub fn bus_sandbox() -> Option<&'static PrivateSystemd> {
    started(&BUS_HARNESS)
}

fn started(cell: &'static OnceLock<Result<Harness, String>>) -> Option<&'static PrivateSystemd> {
    let harness = cell.get_or_init(|| {
        std::thread::spawn(start)
            .join()
            .unwrap_or_else(|_| Err("the harness thread panicked".to_owned()))
    });
    match harness {
        Ok(h) => Some(&h.sandbox),
        Err(reason) => {
            assert!(
                std::env::var(REQUIRE_ENV).as_deref() != Ok("1"),
                "{REQUIRE_ENV}=1 but no private systemd manager: {reason}"
            );
            eprintln!("SKIPPED: no private systemd manager: {reason}");
            None
        }
    }
}

fn start() -> Result<Harness, String> {
    let dir = tempfile::Builder::new()
        .prefix("sandbox-")
        // Inside the target dir: statics are never dropped, so this is not removed at exit.
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .map_err(|e| format!("cannot create a scratch directory: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build a tokio runtime: {e}"))?;
    let sandbox = rt
        .block_on(PrivateSystemd::start(dir.path()))
        .map_err(|e| format!("{:?}", miette::Report::new(e)))?;
    Ok(Harness { sandbox, _dir: dir })
}

/// A connection to the shared manager on the current test's runtime, or `None` to skip.
pub async fn connect() -> Option<(&'static PrivateSystemd, Systemd)> {
    let sandbox = sandbox()?;
    let systemd = sandbox
        .connect()
        .await
        .expect("connect to the private manager");
    Some((sandbox, systemd))
}

/// Writes `{unit_dir}/{name}` and daemon-reloads so the manager sees it.
pub async fn install_unit(
    systemd: &Systemd,
    sandbox: &PrivateSystemd,
    name: &str,
    body: &str,
) -> PathBuf {
    let path = sandbox.unit_dir().join(name);
    std::fs::write(&path, body).expect("write unit file");
    systemd.daemon_reload().await.expect("daemon-reload");
    path
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// Polls until `127.0.0.1:port` accepts a connection (python needs a moment to bind), at most
/// [`wait`].
pub async fn wait_for_port(port: u16) -> bool {
    eventually(|| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()).await
}

// Every deadline comes from one place, scaled by `MOORLINE_TEST_TIME_SCALE`.
pub use moorline::testkit::deadline::{POLL, explained, failing_ready_timeout_secs, prompt, wait};

/// Polls `done` every [`POLL`] until it holds or [`wait`] has passed; whether it held.
pub async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + wait();
    loop {
        if done() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `count` simulated fleet hosts (`moorline::testkit::hosts`) with their state under `dir`, or
/// `None` (after printing why) when they cannot run here: not root, a tool missing, no private
/// systemd manager. Under `MOORLINE_REQUIRE_SYSTEMD=1` that is a failure instead.
pub async fn fleet(dir: &std::path::Path, count: usize) -> Option<moorline::testkit::hosts::Fleet> {
    match moorline::testkit::hosts::Fleet::start(dir, count).await {
        Ok(fleet) => Some(fleet),
        Err(e) => {
            let reason = format!("{:?}", miette::Report::new(e));
            assert!(
                std::env::var(REQUIRE_ENV).as_deref() != Ok("1"),
                "{REQUIRE_ENV}=1 but no simulated hosts: {reason}"
            );
            eprintln!("SKIPPED: no simulated fleet hosts: {reason}");
            None
        }
    }
}

/// The fixture port `written` in a test (each test has its own block of ports, e.g. 21000 for
/// the first deploy test), moved to this test process's block of ports: two runs of the suite
/// at once on one machine must not answer each other's readiness checks or take each other's
/// ports. The first run keeps the ports as written (21000–29999); a second one, while the
/// first holds its slot, gets 11000–19999 and a third 31000–39999 (in Linux's default
/// ephemeral range, so a rare collision is possible there). A slot is a lock file in the
/// temporary directory, held for the life of the process (the kernel releases it when the
/// process dies).
pub fn port(written: u16) -> u16 {
    const OFFSETS: [i32; 3] = [0, -10_000, 10_000];
    static SLOT: OnceLock<(usize, Option<std::fs::File>)> = OnceLock::new();
    let (slot, _) = SLOT.get_or_init(|| {
        for (i, _) in OFFSETS.iter().enumerate() {
            let path = std::env::temp_dir().join(format!("moorline-it-ports-{i}.lock"));
            let Ok(file) = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
            else {
                continue;
            };
            if file.try_lock().is_ok() {
                return (i, Some(file));
            }
        }
        panic!("more than {} runs of the suite at once", OFFSETS.len());
    });
    u16::try_from(i32::from(written) + OFFSETS[*slot]).expect("a port in range")
}

/// The moorline binary run as a user would against `sandbox`'s manager (`--systemd user`,
/// its bus, unit directory and journal) with its state in `state`, no colour, no terminal to
/// ask on, and no `MOORLINE_CONFIG` from the caller's environment. The caller adds the
/// configuration (`-c FILE`) and the command.
pub fn moorline(sandbox: &PrivateSystemd, state: &std::path::Path) -> std::process::Command {
    let unit_dir = sandbox.unit_dir();
    let config_home = unit_dir
        .parent()
        .and_then(std::path::Path::parent)
        .expect("the unit directory is CONFIG_HOME/systemd/user");
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_moorline"));
    c.args(["--state-dir", state.to_str().unwrap()])
        .args(["--systemd", "user"])
        .env("XDG_RUNTIME_DIR", sandbox.runtime_dir())
        .env("DBUS_SESSION_BUS_ADDRESS", sandbox.bus_address())
        .env("XDG_CONFIG_HOME", config_home)
        .env("MOORLINE_JOURNAL_DIRECTORY", sandbox.journal_dir())
        .env("NO_COLOR", "1")
        .env_remove("MOORLINE_CONFIG")
        .stdin(std::process::Stdio::null());
    c
}

/// A FIFO at `path` (`mkfifo(1)`).
pub fn mkfifo(path: &std::path::Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success(), "mkfifo {}: {status}", path.display());
}

/// The ids of a plan's actions (its JSON form).
pub fn action_ids(plan: &serde_json::Value) -> Vec<&str> {
    plan["actions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["id"].as_str())
        .collect()
}

//! Bus broker restarts: `moorline::systemd` and whole applies/rollbacks keep going when the
//! D-Bus broker between moorline and the manager restarts. These tests restart the broker of
//! a manager of their own ([`support::bus_sandbox`]), one test at a time
//! ([`support::BUS_RESTARTS`]), never the shared one.

use std::time::Duration;

use moorline::demo::fixture::Edit;
use moorline::demo::sandbox::PrivateSystemd;
use moorline::systemd::{JobResult, SETTLE, Systemd};

use crate::deploy::{World, code, ok, state_json};
use crate::support::{self, BUS_RESTARTS};

/// How long a unit's `ExecStartPre=` sleeps: long enough that the broker restart surely lands
/// while the job is running, even when the machine is loaded.
const SLOW_START: &str = "3";

/// Upper bound for a unit to reach a state the test waits for (the unit itself takes ms; the
/// rest is headroom for a loaded 2-core CI machine).
const STATE_DEADLINE: Duration = Duration::from_secs(30);

/// A unit whose start takes [`SLOW_START`] seconds before `then` decides how it ends.
fn slow_unit(then: &str) -> String {
    format!(
        "[Unit]\nStartLimitIntervalSec=0\n\n[Service]\nType=simple\n\
         ExecStartPre=/bin/sleep {SLOW_START}\n{then}ExecStart=/bin/sleep infinity\n"
    )
}

async fn install(sandbox: &PrivateSystemd, sd: &Systemd, unit: &str, body: &str) {
    std::fs::write(sandbox.unit_dir().join(unit), body).unwrap();
    sd.daemon_reload().await.unwrap();
}

/// Waits until the unit's `ActiveState` is `state`.
async fn wait_state(sd: &Systemd, unit: &str, state: &str) {
    let deadline = tokio::time::Instant::now() + STATE_DEADLINE;
    loop {
        let st = sd.status(unit).await.unwrap();
        if st.active_state == state {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{unit} never became {state}: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn restart_bus(sandbox: &PrivateSystemd) {
    let killed = sandbox.restart_bus().unwrap();
    assert!(killed >= 1, "no dbus-daemon ran under the sandbox");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_in_flight_gets_its_real_result_across_a_broker_restart() {
    let Some(sandbox) = support::bus_sandbox() else {
        return;
    };
    let _one_at_a_time = BUS_RESTARTS.lock().await;
    let sd = sandbox.connect().await.unwrap();

    // Restart of a slow-starting unit that comes up: done, with a new invocation.
    let unit = "it-bus-slow.service";
    install(sandbox, &sd, unit, &slow_unit("")).await;
    assert_eq!(sd.start(unit).await.unwrap(), JobResult::Done);
    let before = sd.status(unit).await.unwrap().invocation_id;
    let job = tokio::spawn({
        let sd = sd.clone();
        async move { sd.restart(unit).await }
    });
    wait_state(&sd, unit, "activating").await;
    restart_bus(sandbox);
    assert_eq!(job.await.unwrap().unwrap(), JobResult::Done);
    let after = sd.confirm_active(unit, SETTLE).await.unwrap();
    assert_ne!(after.invocation_id, before);

    // The same for a start that fails after the broker restart: that action's failure.
    let failing = "it-bus-slow-failing.service";
    install(
        sandbox,
        &sd,
        failing,
        &slow_unit("ExecStartPre=/bin/false\n"),
    )
    .await;
    let job = tokio::spawn({
        let sd = sd.clone();
        async move { sd.restart(failing).await }
    });
    wait_state(&sd, failing, "activating").await;
    restart_bus(sandbox);
    assert_eq!(job.await.unwrap().unwrap(), JobResult::Failed);
    assert_eq!(sd.status(failing).await.unwrap().active_state, "failed");
    sd.reset_failed(failing).await.unwrap();

    // A stop in flight: its stop command outlives the broker.
    install(
        sandbox,
        &sd,
        unit,
        &slow_unit(&format!("ExecStop=/bin/sleep {SLOW_START}\n")),
    )
    .await;
    let job = tokio::spawn({
        let sd = sd.clone();
        async move { sd.stop(unit).await }
    });
    wait_state(&sd, unit, "deactivating").await;
    restart_bus(sandbox);
    assert_eq!(job.await.unwrap().unwrap(), JobResult::Done);
    assert_eq!(sd.status(unit).await.unwrap().active_state, "inactive");

    // A job submitted while the broker is down reconnects first; reads retry the same way.
    restart_bus(sandbox);
    let started = sd.start(unit).await.unwrap();
    assert_eq!(started, JobResult::Done);
    restart_bus(sandbox);
    assert_eq!(sd.status(unit).await.unwrap().active_state, "active");
    restart_bus(sandbox);
    sd.daemon_reload().await.unwrap();
    assert_eq!(sd.stop(unit).await.unwrap(), JobResult::Done);
}

/// A command's first connection, made while the broker is away (its socket refusing
/// connections, as between one broker's exit and its successor's start), waits for it within
/// the reconnect budget instead of failing the command; so does one made right after a broker
/// restart, before the manager is back on the new broker. A bus that is not there at all (no
/// socket) is still reported at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_connection_waits_out_a_broker_restart() {
    let Some(sandbox) = support::bus_sandbox() else {
        return;
    };
    let _one_at_a_time = BUS_RESTARTS.lock().await;
    let dir = tempfile::tempdir().unwrap();
    // A socket file nobody listens on: connecting is refused, as while a broker restarts.
    let away = dir.path().join("away");
    drop(std::os::unix::net::UnixListener::bind(&away).unwrap());
    let link = dir.path().join("bus");
    std::os::unix::fs::symlink(&away, &link).unwrap();
    let address = format!("unix:path={}", link.display());
    let first = tokio::spawn(async move { Systemd::connect_address(&address).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !first.is_finished(),
        "the first connection gave up while the broker was away: {:?}",
        first.await.unwrap().err()
    );
    // The broker is back: the link now leads to the manager's bus.
    let back = dir.path().join("bus.back");
    std::os::unix::fs::symlink(sandbox.runtime_dir().join("bus"), &back).unwrap();
    std::fs::rename(&back, &link).unwrap();
    let sd = first.await.unwrap().unwrap();
    sd.daemon_reload().await.unwrap();

    // Right after a real restart.
    restart_bus(sandbox);
    let sd = sandbox.connect().await.unwrap();
    sd.daemon_reload().await.unwrap();

    // No socket at all: no bus to wait for.
    let started = std::time::Instant::now();
    let missing = format!("unix:path={}", dir.path().join("none").display());
    assert!(Systemd::connect_address(&missing).await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// Runs `cmd` to its end, restarting the broker at each of `points` (offsets from its start)
/// that comes while it still runs. Returns its output and how many restarts landed.
fn run_with_broker_restarts(
    sandbox: &PrivateSystemd,
    mut cmd: std::process::Command,
    points: &[Duration],
) -> (std::process::Output, usize) {
    let logs = tempfile::tempdir().unwrap();
    let (out_path, err_path) = (logs.path().join("stdout"), logs.path().join("stderr"));
    // Files, not pipes: nobody reads a pipe while this thread is restarting brokers.
    let mut child = cmd
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let mut landed = 0;
    for point in points {
        while start.elapsed() < *point && child.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(10));
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        // No broker running means the last restart has not been noticed yet: not a landing.
        if sandbox.restart_bus().unwrap() > 0 {
            landed += 1;
        }
    }
    let status = child.wait().unwrap();
    let output = std::process::Output {
        status,
        stdout: std::fs::read(out_path).unwrap(),
        stderr: std::fs::read(err_path).unwrap(),
    };
    (output, landed)
}

/// Every service active and ready, on the release state.json names for it.
async fn consistent(w: &World, sd: &Systemd, revision: &str, log: &str) {
    w.all_ready(sd).await;
    let state = state_json(w);
    for s in &w.fx.services {
        let recorded = state["services"][&s.name]["revision"].as_str();
        assert_eq!(recorded, Some(revision), "{}\n{log}", s.name);
        assert_eq!(
            w.live("staging", &s.name).as_deref(),
            recorded,
            "{}\n{log}",
            s.name
        );
    }
}

fn millis(points: &[u64]) -> Vec<Duration> {
    points.iter().copied().map(Duration::from_millis).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_carries_on_across_broker_restarts() {
    let Some(sandbox) = support::bus_sandbox() else {
        return;
    };
    let _one_at_a_time = BUS_RESTARTS.lock().await;
    let w = World::on(sandbox, "b1", 24000);
    let sd = sandbox.connect().await.unwrap();

    // A first deploy (builds, unit installs, daemon-reload, enables, 19 restarts and health
    // checks) with the broker restarted four times along the way.
    let cmd = w.cmd(&["apply", "--env", "staging", "--yes"]);
    let (out, landed) = tokio::task::spawn_blocking(move || {
        run_with_broker_restarts(sandbox, cmd, &millis(&[300, 900, 1600, 2500]))
    })
    .await
    .unwrap();
    let log = ok(&out);
    assert!(
        landed >= 2,
        "the apply ended before the broker restarts\n{log}"
    );
    let first = w.fx.head("main").unwrap();
    consistent(&w, &sd, &first, &log).await;
    assert_eq!(state_json(&w)["revision"], first.as_str());

    // An update of a few services, the broker restarted as the apply starts (its first
    // connection) and while they restart.
    let second = w.commit(
        "main",
        "four services",
        &[
            Edit::touch_service("config"),
            Edit::touch_service("gateway"),
            Edit::touch_service("backend"),
            Edit::touch_service("search"),
        ],
    );
    let cmd = w.cmd(&["apply", "--env", "staging", "--yes"]);
    let (out, landed) = tokio::task::spawn_blocking(move || {
        run_with_broker_restarts(sandbox, cmd, &millis(&[0, 150, 500, 900]))
    })
    .await
    .unwrap();
    let log = ok(&out);
    assert!(
        landed >= 1,
        "the apply ended before the broker restarts\n{log}"
    );
    w.all_ready(&sd).await;
    assert_eq!(state_json(&w)["revision"], second.as_str());
    for s in ["config", "gateway", "backend", "search"] {
        assert_eq!(
            w.live("staging", s).as_deref(),
            Some(second.as_str()),
            "{s}\n{log}"
        );
    }
    w.stop_all(&sd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollbacks_carry_on_across_broker_restarts() {
    let Some(sandbox) = support::bus_sandbox() else {
        return;
    };
    let _one_at_a_time = BUS_RESTARTS.lock().await;
    let w = World::on(sandbox, "b2", 24100);
    let sd = sandbox.connect().await.unwrap();
    ok(&w.run(&["apply", "--env", "staging", "--yes"]));
    let good = w.fx.head("main").unwrap();
    let changed = ["config", "gateway", "backend", "search"];
    let edits: Vec<Edit> = changed.iter().map(|s| Edit::touch_service(s)).collect();
    w.commit("main", "four services", &edits);
    ok(&w.run(&["apply", "--env", "staging", "--yes"]));

    // A manual rollback: four switches and restarts with the broker restarted among them.
    let cmd = w.cmd(&["rollback", "--env", "staging", "--yes"]);
    let (out, landed) = tokio::task::spawn_blocking(move || {
        run_with_broker_restarts(sandbox, cmd, &millis(&[100, 400, 800]))
    })
    .await
    .unwrap();
    let log = ok(&out);
    assert!(
        landed >= 1,
        "the rollback ended before the broker restarts\n{log}"
    );
    w.all_ready(&sd).await;
    for s in changed {
        assert_eq!(
            w.live("staging", s).as_deref(),
            Some(good.as_str()),
            "{s}\n{log}"
        );
        assert_eq!(
            state_json(&w)["services"][s]["revision"].as_str(),
            Some(good.as_str()),
            "{s}\n{log}"
        );
    }

    // An automatic rollback: gateway crashes on start, so the apply rolls config (already
    // switched) and gateway back, with the broker restarted during both.
    w.commit(
        "main",
        "gateway crashes",
        &[
            Edit::touch_service("config"),
            Edit::crash_on_start("gateway"),
            Edit::touch_service("backend"),
        ],
    );
    let cmd = w.cmd(&["apply", "--env", "staging", "--yes"]);
    let (out, landed) = tokio::task::spawn_blocking(move || {
        run_with_broker_restarts(sandbox, cmd, &millis(&[200, 600, 1000, 1500, 2100]))
    })
    .await
    .unwrap();
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(code(&out), 3, "{log}");
    assert!(
        landed >= 1,
        "the apply ended before the broker restarts\n{log}"
    );
    consistent(&w, &sd, &good, &log).await;
    assert_eq!(state_json(&w)["last_failure"]["outcome"], "rolled-back");
    w.stop_all(&sd).await;
}

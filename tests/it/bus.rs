//! Bus broker restarts: `moorline::systemd` and whole applies/rollbacks keep going when the
//! D-Bus broker between moorline and the manager restarts. These tests restart the broker of
//! a manager of their own ([`support::bus_sandbox`]), one test at a time
//! ([`support::BUS_RESTARTS`]), never the shared one.

use std::time::Duration;

use moorline::sandbox::PrivateSystemd;
use moorline::systemd::{JobResult, SETTLE, Systemd};

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

//! `moorline::systemd` against a real (private) systemd user manager.

use std::time::Duration;

use moorline::systemd::{JobResult, SETTLE, SystemdError};

use crate::support::{connect, free_port, install_unit, wait_for_port};

/// Shared by every test unit: never let start-rate limiting make a test flaky.
const COMMON: &str = "[Unit]\nStartLimitIntervalSec=0\n";

fn simple_unit(exec: &str) -> String {
    format!(
        "{COMMON}\n[Service]\nType=simple\nExecStart={exec}\n\n[Install]\nWantedBy=default.target\n"
    )
}

#[tokio::test]
async fn restart_runs_a_reachable_http_server_and_changes_invocation_id() {
    let Some((sandbox, systemd)) = connect().await else {
        return;
    };
    let unit = "it-http.service";
    let port = free_port();
    install_unit(
        &systemd,
        sandbox,
        unit,
        &simple_unit(&format!(
            "/usr/bin/python3 -m http.server {port} --bind 127.0.0.1"
        )),
    )
    .await;

    assert_eq!(systemd.restart(unit).await.unwrap(), JobResult::Done);
    let first = systemd.confirm_active(unit, SETTLE).await.unwrap();
    assert_eq!(first.active_state, "active");
    assert_eq!(first.sub_state, "running");
    assert_eq!(first.load_state, "loaded");
    assert!(first.main_pid > 0);
    assert_eq!(first.invocation_id.len(), 32, "{first:?}");
    assert!(first.fragment_path.ends_with(unit));
    assert!(first.active_enter_timestamp_us > 0);
    assert!(first.exec_main_start_timestamp_us > 0);
    assert!(
        wait_for_port(port).await,
        "nothing listens on 127.0.0.1:{port}"
    );

    assert_eq!(systemd.restart(unit).await.unwrap(), JobResult::Done);
    let second = systemd.confirm_active(unit, SETTLE).await.unwrap();
    assert_ne!(first.invocation_id, second.invocation_id);
    assert_ne!(first.main_pid, second.main_pid);
    assert!(wait_for_port(port).await);

    assert_eq!(systemd.stop(unit).await.unwrap(), JobResult::Done);
    let stopped = systemd.status(unit).await.unwrap();
    assert_eq!(stopped.active_state, "inactive");
    assert_eq!(stopped.main_pid, 0);
}

#[tokio::test]
async fn missing_binary_fails_an_exec_job_and_a_simple_confirmation() {
    let Some((sandbox, systemd)) = connect().await else {
        return;
    };
    // Type=exec waits for the execve() to succeed (systemd.service(5)), so the job fails.
    let unit = "it-missing-binary-exec.service";
    let body =
        format!("{COMMON}\n[Service]\nType=exec\nExecStart=/nonexistent/moorline-no-such-binary\n");
    install_unit(&systemd, sandbox, unit, &body).await;
    let result = systemd.restart(unit).await.unwrap();
    assert_eq!(result, JobResult::Failed);
    let err = result.check("restart", unit).unwrap_err();
    assert!(err.to_string().contains("'failed'"), "{err}");
    let status = systemd.status(unit).await.unwrap();
    assert_eq!(status.active_state, "failed");
    assert_eq!(status.result, "exit-code");

    // Type=simple counts as started once forked: the job is done, the confirmation is not.
    let unit = "it-missing-binary-simple.service";
    install_unit(
        &systemd,
        sandbox,
        unit,
        &simple_unit("/nonexistent/moorline-no-such-binary"),
    )
    .await;
    let result = systemd.restart(unit).await.unwrap();
    if result == JobResult::Done {
        let err = systemd.confirm_active(unit, SETTLE).await.unwrap_err();
        assert!(err.to_string().contains("exit-code"), "{err}");
    } else {
        assert_eq!(result, JobResult::Failed);
    }
}

#[tokio::test]
async fn instantly_exiting_simple_service_is_done_but_not_confirmed() {
    let Some((sandbox, systemd)) = connect().await else {
        return;
    };
    let unit = "it-false-simple.service";
    install_unit(&systemd, sandbox, unit, &simple_unit("/bin/false")).await;
    // systemd.service(5): Type=simple is "started" once forked, so the job is done...
    assert_eq!(systemd.restart(unit).await.unwrap(), JobResult::Done);
    // ...and only the settle window shows the crash.
    let err = systemd.confirm_active(unit, SETTLE).await.unwrap_err();
    let SystemdError::NotActive { status, .. } = &err else {
        panic!("expected NotActive, got {err:?}");
    };
    assert_eq!(status.active_state, "failed");
    assert_eq!(status.result, "exit-code");
    let message = err.to_string();
    assert!(message.contains("failed"), "{message}");
    assert!(message.contains("exit-code"), "{message}");
}

#[tokio::test]
async fn failing_oneshot_fails_the_job() {
    let Some((sandbox, systemd)) = connect().await else {
        return;
    };
    let unit = "it-false-oneshot.service";
    install_unit(
        &systemd,
        sandbox,
        unit,
        &format!("{COMMON}\n[Service]\nType=oneshot\nExecStart=/bin/false\n"),
    )
    .await;
    assert_eq!(systemd.start(unit).await.unwrap(), JobResult::Failed);
    systemd.reset_failed(unit).await.unwrap();
    let status = systemd.status(unit).await.unwrap();
    assert_eq!(status.active_state, "inactive");
}

#[tokio::test]
async fn start_limit_hit_is_reported_explicitly() {
    let Some((sandbox, systemd)) = connect().await else {
        return;
    };
    let unit = "it-start-limit.service";
    // The default limit (5 starts per 10 s, systemd-system.conf(5)) made small. A running
    // unit, because systemd records `start-limit-hit` only over a `success` result: a unit
    // that already failed keeps `exit-code` (service_enter_dead() keeps the first failure).
    install_unit(
        &systemd,
        sandbox,
        unit,
        "[Unit]\nStartLimitIntervalSec=60\nStartLimitBurst=2\n\n[Service]\nExecStart=/bin/sleep infinity\n",
    )
    .await;
    assert_eq!(systemd.restart(unit).await.unwrap(), JobResult::Done);
    assert_eq!(systemd.restart(unit).await.unwrap(), JobResult::Done);
    assert_eq!(systemd.restart(unit).await.unwrap(), JobResult::Failed);
    let err = systemd.confirm_active(unit, SETTLE).await.unwrap_err();
    let message = err.to_string();
    assert!(message.contains("start-limit-hit"), "{message}");
    assert!(message.contains("failed"), "{message}");
    systemd.reset_failed(unit).await.unwrap();
    assert_eq!(systemd.start(unit).await.unwrap(), JobResult::Done);
    assert_eq!(systemd.stop(unit).await.unwrap(), JobResult::Done);
}

#[tokio::test]
async fn reload_without_exec_reload_is_its_own_error() {
    let Some((sandbox, systemd)) = connect().await else {
        return;
    };
    let unit = "it-no-reload.service";
    install_unit(&systemd, sandbox, unit, &simple_unit("/bin/sleep infinity")).await;
    assert_eq!(systemd.start(unit).await.unwrap(), JobResult::Done);
    let err = systemd.reload(unit).await.unwrap_err();
    assert!(
        matches!(err, SystemdError::ReloadNotSupported { .. }),
        "{err:?}"
    );
    assert_eq!(systemd.stop(unit).await.unwrap(), JobResult::Done);
}

#[tokio::test]
async fn reload_with_exec_reload_is_done_and_invalid_when_inactive() {
    let Some((sandbox, systemd)) = connect().await else {
        return;
    };
    let unit = "it-reload.service";
    install_unit(
        &systemd,
        sandbox,
        unit,
        &format!("{COMMON}\n[Service]\nExecStart=/bin/sleep infinity\nExecReload=/bin/true\n"),
    )
    .await;
    assert_eq!(systemd.reload(unit).await.unwrap(), JobResult::Invalid);
    assert_eq!(systemd.start(unit).await.unwrap(), JobResult::Done);
    assert_eq!(systemd.reload(unit).await.unwrap(), JobResult::Done);
    let status = systemd.confirm_active(unit, SETTLE).await.unwrap();
    assert_eq!(status.active_state, "active");
    assert_eq!(systemd.stop(unit).await.unwrap(), JobResult::Done);
}

#[tokio::test]
async fn status_of_unknown_and_non_service_units() {
    let Some((_sandbox, systemd)) = connect().await else {
        return;
    };
    // The sandbox's bus is socket-activated, so dbus.socket is active; its `Result` lives on
    // the Socket interface.
    let socket = systemd.status("dbus.socket").await.unwrap();
    assert_eq!(socket.active_state, "active");
    assert_eq!(socket.result, "success");
    assert_eq!(socket.main_pid, 0);
    let target = systemd.status("default.target").await.unwrap();
    assert_eq!(target.active_state, "active");
    assert_eq!(target.result, "");

    let status = systemd.status("it-never-written.service").await.unwrap();
    assert_eq!(status.load_state, "not-found");
    assert_eq!(status.active_state, "inactive");
    let err = systemd.start("it-never-written.service").await.unwrap_err();
    assert!(matches!(err, SystemdError::NoSuchUnit { .. }), "{err:?}");
}

#[tokio::test]
async fn enable_and_disable_show_in_unit_file_state() {
    let Some((sandbox, systemd)) = connect().await else {
        return;
    };
    let unit = "it-enable.service";
    install_unit(&systemd, sandbox, unit, &simple_unit("/bin/sleep infinity")).await;
    let units = vec![unit.to_owned()];
    assert_eq!(
        systemd.status(unit).await.unwrap().unit_file_state,
        "disabled"
    );
    systemd.enable(&units).await.unwrap();
    assert_eq!(
        systemd.status(unit).await.unwrap().unit_file_state,
        "enabled"
    );
    assert!(
        sandbox
            .unit_dir()
            .join("default.target.wants")
            .join(unit)
            .exists()
    );
    systemd.disable(&units).await.unwrap();
    assert_eq!(
        systemd.status(unit).await.unwrap().unit_file_state,
        "disabled"
    );
}

#[tokio::test]
async fn daemon_reload_picks_up_changed_unit_files() {
    let Some((sandbox, systemd)) = connect().await else {
        return;
    };
    let unit = "it-daemon-reload.service";
    let path = install_unit(&systemd, sandbox, unit, &simple_unit("/bin/sleep 1000")).await;
    assert_eq!(systemd.start(unit).await.unwrap(), JobResult::Done);
    let before = systemd.confirm_active(unit, Duration::ZERO).await.unwrap();
    std::fs::write(&path, simple_unit("/bin/sleep 2000")).unwrap();
    systemd.daemon_reload().await.unwrap();
    assert_eq!(systemd.restart(unit).await.unwrap(), JobResult::Done);
    let after = systemd.confirm_active(unit, Duration::ZERO).await.unwrap();
    assert_ne!(before.invocation_id, after.invocation_id);
    assert_eq!(systemd.stop(unit).await.unwrap(), JobResult::Done);
}

//! `moorline::harness::sandbox` lifecycle: a second, short-lived private manager next to the shared one.

use std::time::Instant;

use moorline::harness::sandbox::PrivateSystemd;
use moorline::systemd::{JobResult, SETTLE};

use crate::support::{free_port, prompt, sandbox, wait_for_port};

#[tokio::test]
async fn stop_shuts_units_down_gracefully_and_frees_their_ports() {
    // Skip (or fail under MOORLINE_REQUIRE_SYSTEMD=1) exactly like the shared harness.
    if sandbox().is_none() {
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut private = PrivateSystemd::start(dir.path()).await.unwrap();
    assert!(private.bus_address().ends_with("/runtime/bus"));
    assert!(private.unit_dir().is_dir());

    let port = free_port();
    let marker = dir.path().join("stopped-gracefully");
    std::fs::write(
        private.unit_dir().join("it-sandbox-web.service"),
        format!(
            "[Service]\nExecStart=/usr/bin/python3 -m http.server {port} --bind 127.0.0.1\n\
             ExecStopPost=/usr/bin/touch {}\n",
            marker.display()
        ),
    )
    .unwrap();
    let systemd = private.connect().await.unwrap();
    systemd.daemon_reload().await.unwrap();
    assert_eq!(
        systemd.start("it-sandbox-web.service").await.unwrap(),
        JobResult::Done
    );
    systemd
        .confirm_active("it-sandbox-web.service", SETTLE)
        .await
        .unwrap();
    assert!(wait_for_port(port).await);

    let pid = private.pid();
    let started = Instant::now();
    private.stop();
    let took = started.elapsed();
    eprintln!("graceful stop took {took:?}");
    // SIGTERM made the manager run exit.target, which stopped the unit (ExecStopPost ran)...
    assert!(marker.exists(), "the unit was not stopped gracefully");
    // ...well inside the grace period, and nothing of the sandbox is left.
    assert!(took < prompt(), "stop took {took:?}");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
    );
    private.stop(); // idempotent
}

#[tokio::test]
async fn a_bad_scratch_directory_is_a_diagnostic_not_a_panic() {
    let err = PrivateSystemd::start(std::path::Path::new("/proc/moorline-cannot-create"))
        .await
        .unwrap_err();
    let code = miette::Diagnostic::code(&err).map(|c| c.to_string());
    // On hosts without systemd the binary check comes first; both are clear diagnostics.
    assert!(
        matches!(
            code.as_deref(),
            Some("moorline::sandbox::scratch_dir" | "moorline::sandbox::no_systemd")
        ),
        "{code:?}: {err}"
    );
}

//! `moorline::demo::sandbox` lifecycle: a second, short-lived private manager next to the shared one.

use std::path::{Path, PathBuf};
use std::time::Instant;

use moorline::demo::sandbox::PrivateSystemd;
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

/// Two managers that run a unit of the same name: stopping it in one leaves the other's
/// process untouched. Without a cgroup subtree per manager both units were
/// `/app.slice/NAME.service` in the root cgroup, and the stop killed both processes.
#[tokio::test]
async fn same_named_units_of_two_managers_live_in_their_own_cgroups() {
    const UNIT: &str = "it-same-name.service";
    if sandbox().is_none() {
        return;
    }
    let (dir_a, dir_b) = (
        tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap(),
        tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap(),
    );
    let mut a = PrivateSystemd::start(dir_a.path()).await.unwrap();
    let mut b = PrivateSystemd::start(dir_b.path()).await.unwrap();
    let mut running = Vec::new();
    for manager in [&a, &b] {
        std::fs::write(
            manager.unit_dir().join(UNIT),
            "[Service]\nExecStart=/bin/sleep infinity\n",
        )
        .unwrap();
        let systemd = manager.connect().await.unwrap();
        systemd.daemon_reload().await.unwrap();
        assert_eq!(systemd.start(UNIT).await.unwrap(), JobResult::Done);
        systemd.confirm_active(UNIT, SETTLE).await.unwrap();
        let status = systemd.status(UNIT).await.unwrap();
        running.push((systemd, status));
    }
    let (b_systemd, b_before) = (&running[1].0, &running[1].1);
    // Each unit has a cgroup of its own, below its own manager's subtree: no cgroup of that
    // name holds both processes, as the root's /app.slice/UNIT did. A manager that sees every
    // process (one in the root PID namespace, as on a real host) signals all of a cgroup's
    // processes when it stops the unit. (MainPID is a PID of the manager's PID namespace;
    // `cgroup.procs` read from here shows ours.)
    let isolated = moorline::files::is_root();
    if isolated {
        let cgroups = unit_cgroups(Path::new("/sys/fs/cgroup"), UNIT, 6);
        assert!(
            cgroups.iter().all(|(_, procs)| procs.len() <= 1),
            "two managers' units share a cgroup: {cgroups:?}"
        );
        for manager in [&a, &b] {
            assert!(!manager.cgroup_dirs().is_empty());
            for dir in manager.cgroup_dirs() {
                assert!(
                    cgroups
                        .iter()
                        .any(|(path, procs)| path.starts_with(dir) && procs.len() == 1),
                    "{UNIT} is not below {}: {cgroups:?}",
                    dir.display()
                );
            }
        }
    }
    let b_procs: Vec<u32> = b
        .cgroup_dirs()
        .iter()
        .flat_map(|d| unit_cgroups(d, UNIT, 3))
        .flat_map(|(_, procs)| procs)
        .collect();

    assert_eq!(running[0].0.stop(UNIT).await.unwrap(), JobResult::Done);
    // A stop that leaked into b would have killed its process by now; give it the settle
    // window systemd's own state changes take.
    tokio::time::sleep(SETTLE).await;
    let b_after = b_systemd.status(UNIT).await.unwrap();
    assert_eq!(b_after.active_state, "active", "{b_after:?}");
    assert_eq!(b_after.main_pid, b_before.main_pid);
    assert_eq!(b_after.invocation_id, b_before.invocation_id);
    if isolated {
        let cgroups = unit_cgroups(Path::new("/sys/fs/cgroup"), UNIT, 6);
        let left: Vec<u32> = cgroups.into_iter().flat_map(|(_, p)| p).collect();
        assert!(!b_procs.is_empty());
        assert!(
            b_procs.iter().all(|pid| left.contains(pid)),
            "{left:?} {b_procs:?}"
        );
        assert!(left.iter().all(|pid| b_procs.contains(pid)), "{left:?}");
    }

    // Stopping a manager removes its subtree, and leaves the other's alone.
    let (a_dirs, b_dirs) = (a.cgroup_dirs().to_vec(), b.cgroup_dirs().to_vec());
    a.stop();
    assert!(a_dirs.iter().all(|d| !d.exists()), "{a_dirs:?} left behind");
    assert!(b_dirs.iter().all(|d| d.exists()));
    b.stop();
    assert!(b_dirs.iter().all(|d| !d.exists()), "{b_dirs:?} left behind");
}

/// Every cgroup directory named `unit` below `root` (at most `depth` levels down) with the
/// processes in it, as this process sees them.
fn unit_cgroups(root: &Path, unit: &str, depth: usize) -> Vec<(PathBuf, Vec<u32>)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if entry.file_name() == unit {
            let procs = std::fs::read_to_string(path.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.parse().ok())
                .collect();
            found.push((path, procs));
        } else if depth > 0 {
            found.extend(unit_cgroups(&path, unit, depth - 1));
        }
    }
    found
}

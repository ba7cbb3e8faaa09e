//! Production as it really runs: hosts booted from a Debian image with systemd as PID 1
//! (`moorline::testkit::booted`), moorline run on them as root over ssh with `--systemd
//! system`, the distribution's own `postgresql.service` and `nginx.service`, and real
//! power-offs and boots in between.
//!
//! Skipped (with the reason printed) when the harness cannot run here (not root, or
//! `mmdebstrap`/`systemd-nspawn` missing), unless `MOORLINE_REQUIRE_BOOTED=1` (CI).

use std::path::{Path, PathBuf};
use std::process::Output;

use moorline::testkit::booted::{BootedHosts, Image};

/// Set to `1` to turn "booted hosts cannot run here" into a test failure.
const REQUIRE_ENV: &str = "MOORLINE_REQUIRE_BOOTED";

/// Where the moorline binary under test is mounted on every host.
const MOORLINE: &str = "/usr/local/bin/moorline";

fn skip(reason: &str) {
    assert!(
        std::env::var(REQUIRE_ENV).as_deref() != Ok("1"),
        "{REQUIRE_ENV}=1 but {reason}"
    );
    eprintln!("SKIPPED: {reason}");
}

/// `k` booted hosts with the moorline binary under test at [`MOORLINE`], or `None` to skip.
fn booted(dir: &Path, k: usize) -> Option<BootedHosts> {
    let binds = [(
        PathBuf::from(env!("CARGO_BIN_EXE_moorline")),
        PathBuf::from(MOORLINE),
    )];
    match BootedHosts::start(dir, k, &binds) {
        Ok(hosts) => Some(hosts),
        Err(e) => {
            skip(&format!("no booted hosts: {:?}", miette::Report::new(e)));
            None
        }
    }
}

fn text(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[track_caller]
fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", text(out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Builds the image if it is not cached yet: `.ci/run` runs this first, so that the build
/// does not count against the deadlines of the tests that boot hosts.
#[test]
fn the_image_is_built_and_cached() {
    match Image::ensure() {
        Ok(image) => assert!(image.root().join("usr/lib/systemd/systemd").exists()),
        Err(e) => skip(&format!("no image: {:?}", miette::Report::new(e))),
    }
}

#[test]
fn a_booted_host_runs_systemd_as_pid_1_and_boots_again() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let Some(mut hosts) = booted(dir.path(), 1) else {
        return;
    };
    // Over ssh as root, strict host-key checking on.
    let out = ok(&hosts
        .ssh(
            0,
            &[
                "sh",
                "-c",
                "cat /proc/1/comm; hostname; systemctl is-system-running; id -un",
            ],
        )
        .unwrap());
    assert_eq!(out, "systemd\nhost1\nrunning\nroot\n");
    ok(&hosts.ssh(0, &[MOORLINE, "--version"]).unwrap());
    let first = hosts.boot_id(0).unwrap();
    hosts
        .path(0, "/var/lib/kept")
        .parent()
        .map(std::fs::create_dir_all);
    std::fs::write(hosts.path(0, "/var/lib/kept"), "kept\n").unwrap();

    hosts.poweroff(0);
    assert!(hosts.host(0).pid1().is_none());
    let took = hosts.boot(0).unwrap();
    eprintln!("booted again in {:.2} s", took.as_secs_f64());
    let second = hosts.boot_id(0).unwrap();
    assert_ne!(first, second, "a boot gives a new boot id");
    let out = ok(&hosts.ssh(0, &["cat", "/var/lib/kept"]).unwrap());
    assert_eq!(out, "kept\n", "files survive a power-off");

    hosts.power_cut(0);
    hosts.boot(0).unwrap();
    assert_ne!(hosts.boot_id(0).unwrap(), second);
    ok(&hosts
        .ssh(0, &["systemctl", "is-active", "ssh.service"])
        .unwrap());
}

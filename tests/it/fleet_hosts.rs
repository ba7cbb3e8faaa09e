//! The simulated fleet hosts (`moorline::testkit::hosts`) are separate machines as far as ssh,
//! the network, the filesystem under the root path and systemd can tell, and leave nothing
//! behind. Prints bring-up and ssh round-trip times (not asserted).

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use moorline::testkit::hosts::Fleet;

use crate::support::fleet;

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn ok(out: Output, what: &str) -> String {
    let Output {
        status,
        stdout,
        stderr,
    } = out;
    let stdout = String::from_utf8_lossy(&stdout);
    assert!(
        status.success(),
        "{what}: {status}\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&stderr)
    );
    stdout.trim().to_owned()
}

/// The names of every network namespace and link on the machine.
fn network_objects() -> String {
    let netns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let links = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    format!("{}\n{}", text(&netns), text(&links))
}

/// `systemctl --user is-active` of the probe unit on host `i`, over ssh.
fn probe_state(fleet: &Fleet, i: usize) -> String {
    let out = fleet
        .run(
            i,
            &["systemctl", "--user", "is-active", "it-fleet-probe.service"],
        )
        .unwrap();
    text(&out)
}

fn mean(samples: &[Duration]) -> Duration {
    samples.iter().sum::<Duration>() / u32::try_from(samples.len()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_are_separate_machines_over_real_ssh() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let started = Instant::now();
    let Some(mut fleet) = fleet(dir.path(), 3).await else {
        return;
    };
    let bring_up = started.elapsed();
    let names: Vec<(String, String, String, String)> = fleet
        .hosts()
        .iter()
        .map(|h| {
            (
                h.netns().to_owned(),
                h.veth().to_owned(),
                h.name().to_owned(),
                h.address().to_string(),
            )
        })
        .collect();
    let bridge = fleet.bridge().unwrap().to_owned();
    let root = fleet.root_path().to_owned();

    // Each host answers as itself, on its own address only.
    for (i, (_, _, name, address)) in names.iter().enumerate() {
        let out = fleet
            .run(i, &["sh", "-c", "uname -n; ip -4 -o addr show"])
            .unwrap();
        let out = ok(out, "hostname and addresses");
        assert!(out.starts_with(&format!("{name}\n")), "{out}");
        assert!(out.contains(&format!("inet {address}/24")), "{out}");
        for (j, (_, _, _, other)) in names.iter().enumerate() {
            if j != i {
                assert!(!out.contains(&format!("inet {other}/")), "{out}");
            }
        }
    }

    // The common root path holds each host's own files.
    let marker = root.join("marker");
    let marker_str = marker.to_str().unwrap();
    ok(
        fleet
            .run(0, &["sh", "-c", "echo host1 > \"$1\"", "sh", marker_str])
            .unwrap(),
        "write under the root path",
    );
    assert_eq!(fleet.read_file(0, &marker).unwrap(), b"host1\n");
    assert!(fleet.read_file(1, &marker).is_err());
    assert!(fleet.host(0).root_dir().join("marker").is_file());
    assert!(!marker.exists(), "the machine's own root path stays empty");

    // The test binary's moorline runs on a host by its absolute path.
    let version = ok(
        fleet
            .run(0, &[env!("CARGO_BIN_EXE_moorline"), "--version"])
            .unwrap(),
        "moorline --version on host1",
    );
    assert!(version.starts_with("moorline "), "{version}");

    // Each host's sessions reach that host's own manager.
    ok(
        fleet
            .run(
                0,
                &[
                    "systemd-run",
                    "--user",
                    "--unit=it-fleet-probe",
                    "sleep",
                    "300",
                ],
            )
            .unwrap(),
        "systemd-run on host1",
    );
    assert_eq!(probe_state(&fleet, 0), "active");
    assert_eq!(probe_state(&fleet, 1), "inactive");
    assert_eq!(probe_state(&fleet, 2), "inactive");
    for i in 0..3 {
        let out = fleet
            .run(i, &["systemctl", "--user", "is-system-running"])
            .unwrap();
        eprintln!(
            "{}: is-system-running: {}",
            fleet.host(i).name(),
            text(&out)
        );
    }
    // The same, from the machine over each host's bus.
    let host1 = fleet.host(0).systemd().unwrap().connect().await.unwrap();
    let host2 = fleet.host(1).systemd().unwrap().connect().await.unwrap();
    let probe = "it-fleet-probe.service";
    assert_eq!(host1.status(probe).await.unwrap().active_state, "active");
    assert_eq!(host2.status(probe).await.unwrap().active_state, "inactive");

    // Round trips: cold, then through a ControlMaster (a short path: socket paths are limited).
    let mut cold = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        ok(fleet.run(1, &["true"]).unwrap(), "ssh host2 true");
        cold.push(t.elapsed());
    }
    let control = tempfile::tempdir().unwrap();
    let t = Instant::now();
    ok(
        fleet
            .ssh_command_shared(1, control.path())
            .arg("true")
            .output()
            .unwrap(),
        "open a ControlMaster",
    );
    let opening = t.elapsed();
    let mut shared = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        ok(
            fleet
                .ssh_command_shared(1, control.path())
                .arg("true")
                .output()
                .unwrap(),
            "ssh through the master",
        );
        shared.push(t.elapsed());
    }
    // Fan-out: `true` on every host at once, cold, then through a master per host.
    let fan_out = |shared: bool| {
        let t = Instant::now();
        std::thread::scope(|s| {
            for i in 0..3 {
                let fleet = &fleet;
                let control = control.path();
                s.spawn(move || {
                    let mut cmd = if shared {
                        fleet.ssh_command_shared(i, control)
                    } else {
                        fleet.ssh_command(i)
                    };
                    ok(cmd.arg("true").output().unwrap(), "fan-out");
                });
            }
        });
        t.elapsed()
    };
    let fan_cold = fan_out(false);
    fan_out(true);
    let fan_shared = fan_out(true);
    for i in 0..3 {
        fleet.close_master(i, control.path()).unwrap();
    }
    assert!(fleet.close_master(1, control.path()).is_err());
    eprintln!(
        "fleet of 3: bring-up {bring_up:.2?}; `ssh host true` cold {:.1?} (mean of 5), \
         opening a ControlMaster {opening:.1?}, through it {:.1?} (mean of 5); \
         on all 3 hosts at once: cold {fan_cold:.1?}, through masters {fan_shared:.1?}",
        mean(&cold),
        mean(&shared)
    );

    // A dropped link: new connections time out (short: this waits for the failure).
    fleet.link_down(1).unwrap();
    let t = Instant::now();
    let out = fleet
        .ssh_command(1)
        .args(["-o", "ConnectTimeout=1", "true"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(255),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("host2 dropped: ssh failed after {:.1?}", t.elapsed());
    fleet.link_up(1).unwrap();
    ok(fleet.run(1, &["true"]).unwrap(), "ssh host2 after link_up");

    // A new host key: strict checking refuses at once with ssh's own exit status.
    fleet.rekey(2).unwrap();
    let t = Instant::now();
    let out = fleet.run(2, &["true"]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(255), "{stderr}");
    assert!(stderr.contains("Host key verification failed"), "{stderr}");
    eprintln!("host3 rekeyed: refused after {:.1?}", t.elapsed());
    fleet.trust_host_keys().unwrap();
    ok(
        fleet.run(2, &["true"]).unwrap(),
        "ssh host3 after trusting its new key",
    );

    // A host that shuts down refuses connections; booted again, it has its files back and a
    // fresh manager (the transient unit is gone).
    fleet.stop_host(0);
    assert!(fleet.host(0).systemd().is_none());
    let out = fleet.run(0, &["true"]).unwrap();
    assert_eq!(
        out.status.code(),
        Some(255),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = Instant::now();
    fleet.start_host(0).await.unwrap();
    eprintln!("host1 booted again in {:.2?}", t.elapsed());
    assert_eq!(fleet.read_file(0, &marker).unwrap(), b"host1\n");
    assert_eq!(probe_state(&fleet, 0), "inactive");

    // Teardown leaves nothing behind.
    drop(host1);
    drop(host2);
    drop(fleet);
    let left = network_objects();
    for (netns, veth, _, _) in &names {
        assert!(
            !left.contains(netns.as_str()),
            "{netns} left behind:\n{left}"
        );
        assert!(
            !left.contains(&format!(" {veth}:")) && !left.contains(&format!(" {veth}@")),
            "{veth} left behind:\n{left}"
        );
    }
    assert!(
        !left.contains(&format!(" {bridge}:")),
        "{bridge} left behind:\n{left}"
    );
    assert!(!root.exists(), "{} left behind", root.display());
}

#[tokio::test]
async fn a_panicking_test_still_tears_its_hosts_down() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let Some(fleet) = fleet(dir.path(), 1).await else {
        return;
    };
    let netns = fleet.host(0).netns().to_owned();
    let root = fleet.root_path().to_owned();
    let pid = fleet.host(0).systemd().unwrap().pid();
    let unwound = std::thread::spawn(move || {
        let _owned = fleet;
        panic!("a failing fleet test (this panic is expected)");
    })
    .join();
    assert!(unwound.is_err());
    assert!(!network_objects().contains(&netns), "{netns} left behind");
    assert!(!root.exists());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "host processes left behind"
    );
}

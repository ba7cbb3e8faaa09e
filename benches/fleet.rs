//! `cargo bench --bench fleet`: a fleet rollout over 5 simulated hosts
//! (`moorline::fixture::hosts`, real sshd and systemd per host) of the 19
//! Pakashop services in batches `1, 100%`, beside one host's apply of the
//! same deploy through the same controller, and the time of one ssh round
//! trip with and without the shared (ControlMaster) connection. Target:
//! the whole fleet within 1.5x of one host plus the canary. Needs root
//! (network namespaces). Not a timed test: it prints a table.

mod common;

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use moorline::fixture::hosts::Fleet;
use moorline::fixture::{Fixture, FixtureOptions};

type Res<T> = Result<T, String>;

const HOSTS: usize = 5;
const ROUND_TRIPS: u32 = 10;

fn main() -> ExitCode {
    common::run_on_runtime(run())
}

async fn run() -> Res<()> {
    let dir = tempfile::Builder::new()
        .prefix("moorline-fleet-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let hosts = Fleet::start(&dir.path().join("hosts"), HOSTS)
        .await
        .map_err(|e| format!("no simulated hosts: {:?}", miette::Report::new(e)))?;
    let root = hosts.root_path().to_path_buf();
    let fx = Fixture::create(&dir.path().join("fx"), &FixtureOptions::new(&root))
        .map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(&fx.config_path).map_err(|e| e.to_string())?;
    let fleet = (1..=HOSTS).fold(String::new(), |mut s, i| {
        use std::fmt::Write as _;
        let _ = writeln!(s, "    host \"host{i}\"");
        s
    });
    let text = text.replacen(
        "    branch \"main\"\n",
        &format!("    branch \"main\"\n{fleet}    rollout {{ batches 1 \"100%\"; }}\n"),
        1,
    );
    fx.commit_config("fleet bench", &text)
        .map_err(|e| e.to_string())?;
    let ctrl = dir.path().join("ctrl");
    let moorline = |args: &[&str]| -> Res<Duration> {
        let started = Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_moorline"))
            .arg("-c")
            .arg(&fx.config_path)
            .arg("--state-dir")
            .arg(&ctrl)
            .arg("--ssh-config")
            .arg(hosts.ssh_config())
            .args(["--systemd", "user"])
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "moorline {}: {}\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(started.elapsed())
    };
    // Warm up: install the binary and ship the commits to every host.
    let warm = moorline(&["plan", "--env", "staging"])?;
    let (canary, all) = timed_rollout(&fx.config_path, &ctrl, &hosts)?;
    let rest = all.saturating_sub(canary);
    let (cold, shared) = round_trips(&hosts, &ctrl).await?;
    println!("fleet apply, {HOSTS} hosts x 19 services, batches 1, 100% (first deploy)");
    println!(
        "  prepare + plan, every host (binary and commits shipped): {:.2}s",
        warm.as_secs_f64()
    );
    println!(
        "  canary (host1 alone, planned and applied):  {:.2}s",
        canary.as_secs_f64()
    );
    println!(
        "  the other {} hosts at once:                   {:.2}s ({:.2}x one host; target <= 1.5x)",
        HOSTS - 1,
        rest.as_secs_f64(),
        rest.as_secs_f64() / canary.as_secs_f64().max(1e-9)
    );
    println!(
        "  whole fleet:                                {:.2}s",
        all.as_secs_f64()
    );
    println!(
        "  ssh round trip: {:.1} ms new connection, {:.1} ms through the shared one ({ROUND_TRIPS} each)",
        cold.as_secs_f64() * 1000.0,
        shared.as_secs_f64() * 1000.0
    );
    Ok(())
}

/// Runs the rollout, timing when the canary (host1) finished and when the
/// whole fleet did, from the command's start.
fn timed_rollout(config: &Path, ctrl: &Path, hosts: &Fleet) -> Res<(Duration, Duration)> {
    use std::io::BufRead;
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_moorline"))
        .arg("-c")
        .arg(config)
        .arg("--state-dir")
        .arg(ctrl)
        .arg("--ssh-config")
        .arg(hosts.ssh_config())
        .args(["--systemd", "user", "apply", "--env", "staging", "--yes"])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut canary = None;
    let mut text = String::new();
    if let Some(err) = child.stderr.take() {
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            if canary.is_none() && line.starts_with("[host1] apply: succeeded") {
                canary = Some(started.elapsed());
            }
            text.push_str(&line);
            text.push('\n');
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    let all = started.elapsed();
    match (status.success(), canary) {
        (true, Some(c)) => Ok((c, all)),
        _ => Err(format!("the fleet apply failed ({status}):\n{text}")),
    }
}

/// The mean time of `true` on host1 over a new connection each time, and
/// through moorline's master connection.
async fn round_trips(hosts: &Fleet, ctrl: &Path) -> Res<(Duration, Duration)> {
    use moorline::fleet::ssh::{Input, Transport};
    let host = moorline::config::Host {
        name: "host1".to_owned(),
        address: "host1".to_owned(),
        user: None,
        port: None,
        roles: Vec::new(),
    };
    let cold_dir = ctrl.join("bench-cold");
    let cold = Transport::new(Some(hosts.ssh_config()), &cold_dir).map_err(|e| e.to_string())?;
    let word = vec!["true".to_owned()];
    let time = async |t: &Transport| -> Res<Duration> {
        let started = Instant::now();
        for _ in 0..ROUND_TRIPS {
            let out = t
                .run(&host, &word, Input::Null)
                .await
                .map_err(|e| e.to_string())?;
            if out.code != 0 {
                return Err(format!("ssh true: exit {}", out.code));
            }
        }
        Ok(started.elapsed() / ROUND_TRIPS)
    };
    let cold_time = time(&cold).await?;
    let shared = Transport::new(Some(hosts.ssh_config()), &ctrl.join("bench-shared"))
        .map_err(|e| e.to_string())?;
    shared.open(&host).await.map_err(|e| e.to_string())?;
    let shared_time = time(&shared).await?;
    shared.close_all(std::slice::from_ref(&host)).await;
    Ok((cold_time, shared_time))
}

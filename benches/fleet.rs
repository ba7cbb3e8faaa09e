//! `cargo bench --bench fleet`: a fleet rollout over 5 simulated hosts
//! (`moorline::testkit::hosts`, real sshd and systemd per host) of the 19
//! Pakashop services in batches `1, 100%`, beside one host's apply of the
//! same deploy through the same controller, and the time of one ssh round
//! trip with and without the shared (ControlMaster) connection. Target:
//! the whole fleet within 1.5x of one host plus the canary. Needs root
//! (network namespaces). Not a timed test: it prints a table.

mod common;

use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use moorline::demo::fixture::{Fixture, FixtureOptions};
use moorline::testkit::hosts::Fleet;

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
    let (timing, cpu) = timed_rollout(&fx.config_path, &ctrl, &hosts)?;
    let (canary, all) = timing;
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
    // Where the time goes: the CPU the bench's processes (the hosts'
    // sshd sessions, host-side moorline, builds and services, the
    // controller) used in each window. When the batch needs several times
    // the canary's CPU and keeps every core busy, it is CPU-bound on this
    // machine: its floor is its CPU time over the cores, whatever the
    // controller does.
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let cores_f = f64::from(u32::try_from(cores).unwrap_or(1));
    let (c_cpu, r_cpu) = (cpu.canary, cpu.rest);
    println!(
        "  CPU of the hosts and controller: canary window {c_cpu:.2}s ({:.2} of {cores} cores busy), batch {r_cpu:.2}s ({:.2} of {cores} cores busy): {:.2}x the canary's CPU",
        c_cpu / canary.as_secs_f64().max(1e-9),
        r_cpu / rest.as_secs_f64().max(1e-9),
        r_cpu / c_cpu.max(1e-9)
    );
    println!(
        "  of the batch's CPU, the controller (moorline and its ssh clients) used {:.2}s, the services themselves (19 Python servers per host starting) {:.2}s, the hosts' moorline, builds, sshd and systemd the rest",
        cpu.controller_rest, cpu.services_rest
    );
    println!(
        "  the batch on {cores} cores cannot take less than {:.2}s ({:.2}x one host) unless it needs less CPU; machine-wide (other work included) {:.2} cores were busy during it",
        r_cpu / cores_f,
        r_cpu / cores_f / canary.as_secs_f64().max(1e-9),
        cpu.machine_rest / rest.as_secs_f64().max(1e-9)
    );
    println!(
        "  ssh round trip: {:.1} ms new connection, {:.1} ms through the shared one ({ROUND_TRIPS} each)",
        cold.as_secs_f64() * 1000.0,
        shared.as_secs_f64() * 1000.0
    );
    Ok(())
}

/// CPU seconds used during the canary window and the batch window.
struct Cpu {
    /// By the bench's own descendants (hosts and controller).
    canary: f64,
    rest: f64,
    /// By the whole machine during the batch.
    machine_rest: f64,
    /// By the controller (moorline and its ssh clients) during the batch.
    controller_rest: f64,
    /// By the services themselves (the fixture's Python servers, starting
    /// and answering health checks) during the batch.
    services_rest: f64,
}

/// The clock ticks per second of `/proc` times.
fn ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU ticks used so far by `root` (when given) and every descendant of it
/// (default: of this process): for each live one, its own time and that of
/// the children it reaped (each dead process is counted once, by whoever
/// reaped it).
fn tree_ticks(root: Option<u32>) -> u64 {
    tree_ticks_of(root, "")
}

/// [`tree_ticks`] of the processes whose command name starts with `comm`.
fn tree_ticks_of(root: Option<u32>, comm: &str) -> u64 {
    let me = root.unwrap_or_else(std::process::id);
    let mut procs: Vec<(u32, u32, u64, bool)> = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for e in dir.filter_map(Result::ok) {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name (which may hold spaces).
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // state ppid ... utime(11) stime(12) cutime(13) cstime(14)
        let parent_pid = u32::try_from(num(1)).unwrap_or(0);
        let named = stat
            .find('(')
            .is_some_and(|i| stat[i + 1..].starts_with(comm));
        procs.push((
            pid,
            parent_pid,
            num(11) + num(12) + num(13) + num(14),
            named,
        ));
    }
    let parent: std::collections::HashMap<u32, u32> =
        procs.iter().map(|(p, pp, _, _)| (*p, *pp)).collect();
    let descends = |mut p: u32| {
        for _ in 0..64 {
            match parent.get(&p) {
                Some(&pp) if pp == me => return true,
                Some(&pp) if pp > 1 => p = pp,
                _ => return false,
            }
        }
        false
    };
    procs
        .iter()
        .filter(|(p, _, _, named)| *named && (descends(*p) || root == Some(*p)))
        .map(|(_, _, t, _)| t)
        .sum()
}

/// Busy ticks of the whole machine so far (`/proc/stat`).
fn machine_ticks() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?.to_owned();
            let v: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal
            Some(
                v.iter()
                    .enumerate()
                    .filter(|(i, _)| *i != 3 && *i != 4)
                    .map(|(_, x)| x)
                    .take(6)
                    .sum(),
            )
        })
        .unwrap_or(0)
}

/// Runs the rollout, timing when the canary (host1) finished and when the
/// whole fleet did, from the command's start, and the CPU used in each.
fn timed_rollout(config: &Path, ctrl: &Path, hosts: &Fleet) -> Res<((Duration, Duration), Cpu)> {
    use std::io::BufRead;
    let hz = ticks_per_sec();
    let t0 = tree_ticks(None);
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
    let (mut t1, mut m1, mut c1, mut s1) = (0, 0, 0, 0);
    let mut text = String::new();
    if let Some(err) = child.stderr.take() {
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            if canary.is_none() && line.starts_with("[host1] apply: succeeded") {
                canary = Some(started.elapsed());
                (t1, m1) = (tree_ticks(None), machine_ticks());
                c1 = tree_ticks(Some(child.id()));
                s1 = tree_ticks_of(None, "python");
            }
            text.push_str(&line);
            text.push('\n');
        }
    }
    // The controller's own time, once it is reaped, counts as ours.
    let (t2_live, m2) = (tree_ticks(None), machine_ticks());
    let c2 = tree_ticks(Some(child.id()));
    let s2 = tree_ticks_of(None, "python");
    let status = child.wait().map_err(|e| e.to_string())?;
    let all = started.elapsed();
    let t2 = t2_live.max(tree_ticks(None));
    // Tick counts of a benchmark fit in 32 bits.
    let secs =
        |a: u64, b: u64| f64::from(u32::try_from(b.saturating_sub(a)).unwrap_or(u32::MAX)) / hz;
    let cpu = Cpu {
        canary: secs(t0, t1),
        rest: secs(t1, t2),
        machine_rest: secs(m1, m2),
        controller_rest: secs(c1, c2),
        services_rest: secs(s1, s2),
    };
    match (status.success(), canary) {
        (true, Some(c)) => Ok(((c, all), cpu)),
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

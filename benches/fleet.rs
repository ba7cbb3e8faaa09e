//! `cargo bench --bench fleet`: fleet planning and rollouts at scale over simulated hosts
//! (`moorline::testkit::hosts`: each its own network namespace, sshd and private systemd),
//! each host running the 19 Pakashop-shaped fixture services. For every fleet size in
//! `MOORLINE_BENCH_HOSTS` (default `1,5,20,50`) it starts a fresh fleet, deploys every
//! service everywhere (not measured: `batches "100%"`), then commits a change to two services
//! and the rollout `canary 1; batches 4; connections C` (`MOORLINE_BENCH_CONNECTIONS`, default
//! 10) and measures `moorline plan --env staging` and `moorline apply` of that change: wall
//! time, the controller's peak RSS (`VmHWM` of the `moorline` process, polled) and per host,
//! the bytes sent to each host (its veth's counters), and each batch's time from the fleet
//! journal (a record appears when a batch starts and when each host ends), a batch of 4
//! hosts against the 1-host fleet's apply of the same change. Prints a table with each
//! target beside its value; asserts nothing. Also times one ssh round trip with and without
//! the shared (ControlMaster) connection. Needs root (network namespaces).

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use moorline::demo::fixture::{Edit, Fixture, FixtureOptions};
use moorline::testkit::hosts::Fleet;

type Res<T> = Result<T, String>;

const DEFAULT_HOSTS: &str = "1,5,20,50";
const DEFAULT_CONNECTIONS: u32 = 10;
/// Hosts per batch after the canary.
const BATCH: usize = 4;
/// The two services the measured change touches (a Go one in `core`, a Python one in
/// `supporting`).
const CHANGED: [&str; 2] = ["search", "moderation"];
const ROUND_TRIPS: u32 = 10;
/// How often the monitor samples `/proc` and the fleet journal.
const POLL: Duration = Duration::from_millis(10);
/// Targets from issue 20.
const BATCH_TARGET: f64 = 1.2;
const RSS_PER_HOST_TARGET_MB: f64 = 5.0;

fn main() -> std::process::ExitCode {
    common::run_on_runtime(run())
}

async fn run() -> Res<()> {
    let sizes = env_list("MOORLINE_BENCH_HOSTS", DEFAULT_HOSTS)?;
    let connections =
        std::env::var("MOORLINE_BENCH_CONNECTIONS")
            .ok()
            .map_or(Ok(DEFAULT_CONNECTIONS), |v| {
                v.parse()
                    .map_err(|e| format!("MOORLINE_BENCH_CONNECTIONS={v}: {e}"))
            })?;
    let mut rows: Vec<Row> = Vec::new();
    let mut trips = None;
    for &n in &sizes {
        eprintln!("bench: {n} hosts...");
        let started = Instant::now();
        let (row, rt) = one_fleet(n, connections, trips.is_none()).await?;
        eprintln!(
            "bench: {n} hosts done in {:.0}s",
            started.elapsed().as_secs_f64()
        );
        trips = trips.or(rt);
        rows.push(row);
    }
    print!("{}", table(&rows, connections));
    if let Some((cold, shared)) = trips {
        println!(
            "ssh round trip: {:.1} ms new connection, {:.1} ms through the shared one ({ROUND_TRIPS} each)",
            cold.as_secs_f64() * 1000.0,
            shared.as_secs_f64() * 1000.0
        );
    }
    Ok(())
}

fn env_list(name: &str, default: &str) -> Res<Vec<usize>> {
    let text = std::env::var(name).unwrap_or_else(|_| default.to_owned());
    let mut v = text
        .split(',')
        .map(|s| {
            s.trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=250).contains(n))
                .ok_or_else(|| format!("{name}={text}: want host counts 1..=250, comma-separated"))
        })
        .collect::<Res<Vec<usize>>>()?;
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

/// One fleet size's measurements.
struct Row {
    hosts: usize,
    bring_up: Duration,
    first_deploy: Duration,
    /// Restarts each host's plan of the measured change has.
    restarts: usize,
    plan: Run,
    rollout: Run,
    /// The rollout's batches from the fleet journal: (hosts, duration, CPU seconds of every
    /// process under the bench during it).
    batches: Vec<(usize, Duration, f64)>,
}

/// What one `moorline` command cost.
#[derive(Default)]
struct Run {
    wall: Duration,
    /// Peak RSS of the controller's `moorline` process (`VmHWM`), in KiB.
    peak_kib: u64,
    /// Peak sum of the RSS of the controller's `ssh` children (master connections and
    /// sessions), in KiB.
    ssh_peak_kib: u64,
    /// Most `ssh` processes under the controller at once.
    ssh_peak_procs: usize,
    /// CPU seconds of the controller and its children.
    cpu: f64,
    /// Bytes the machine sent to each host (sum over hosts / hosts) and received from it.
    sent_per_host: u64,
    received_per_host: u64,
}

async fn one_fleet(
    n: usize,
    connections: u32,
    round_trip: bool,
) -> Res<(Row, Option<(Duration, Duration)>)> {
    let dir = tempfile::Builder::new()
        .prefix("moorline-fleet-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let hosts = Fleet::start(&dir.path().join("hosts"), n)
        .await
        .map_err(|e| format!("no simulated hosts: {:?}", miette::Report::new(e)))?;
    let bring_up = started.elapsed();
    let fx = Fixture::create(
        &dir.path().join("fx"),
        &FixtureOptions::new(hosts.root_path()),
    )
    .map_err(|e| e.to_string())?;
    let base = std::fs::read_to_string(&fx.config_path).map_err(|e| e.to_string())?;
    let config = |rollout: &str| {
        let mut fleet = String::new();
        for i in 1..=n {
            let _ = writeln!(fleet, "    host \"host{i}\"");
        }
        // One host has no canary (it would leave no host for the batches).
        let canary = if n > 1 { "canary 1; " } else { "" };
        let _ = writeln!(
            fleet,
            "    rollout {{ {canary}{rollout}; connections {connections}; }}"
        );
        base.replacen(
            "    branch \"main\"\n",
            &format!("    branch \"main\"\n{fleet}"),
            1,
        )
    };
    fx.commit_config("fleet bench", &config("batches \"100%\""))
        .map_err(|e| e.to_string())?;
    let ctrl = dir.path().join("ctrl");
    let cmd = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_moorline"));
        c.arg("-c")
            .arg(&fx.config_path)
            .arg("--state-dir")
            .arg(&ctrl)
            .arg("--ssh-config")
            .arg(hosts.ssh_config())
            .args(["--systemd", "user"])
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        c
    };
    // The first deploy, every host at once (`connections` at a time): binary, commits, 19
    // services per host.
    let started = Instant::now();
    measure(
        cmd(&["apply", "--env", "staging", "--yes"]),
        &hosts,
        &ctrl,
        None,
    )?;
    let first_deploy = started.elapsed();

    // The measured change: two services, batches of 4.
    fx.commit_config(
        "fleet bench: batches",
        &config(&format!("batches {}", BATCH.min(n))),
    )
    .map_err(|e| e.to_string())?;
    let edits: Vec<Edit> = CHANGED.iter().map(|s| Edit::touch_service(s)).collect();
    fx.commit("main", "fleet bench: two services", &edits)
        .map_err(|e| e.to_string())?;

    let (plan, out) = measure(
        cmd(&["plan", "--env", "staging", "--format", "json"]),
        &hosts,
        &ctrl,
        None,
    )?;
    let restarts = restarts_per_host(&out, n)?;
    let journal = ctrl.join("fleet/journal.jsonl");
    let (rollout, _) = measure(
        cmd(&["apply", "--env", "staging", "--yes"]),
        &hosts,
        &ctrl,
        Some(&journal),
    )?;
    let batches = rollout.1.clone();
    let trips = if round_trip {
        Some(round_trips(&hosts, &ctrl).await?)
    } else {
        None
    };
    Ok((
        Row {
            hosts: n,
            bring_up,
            first_deploy,
            restarts,
            plan: plan.0,
            rollout: rollout.0,
            batches,
        },
        trips,
    ))
}

/// The number of restarts in each host's plan (all hosts alike, or an error).
fn restarts_per_host(plan_json: &[u8], n: usize) -> Res<usize> {
    let v: serde_json::Value =
        serde_json::from_slice(plan_json).map_err(|e| format!("the fleet plan: {e}"))?;
    let groups = v["groups"].as_array().cloned().unwrap_or_default();
    let counts: Vec<usize> = groups
        .iter()
        .map(|g| g["restarts"].as_array().map_or(0, Vec::len))
        .collect();
    let hosts: usize = groups
        .iter()
        .map(|g| g["hosts"].as_array().map_or(0, Vec::len))
        .sum();
    match counts.as_slice() {
        [one] if hosts == n => Ok(*one),
        _ => Err(format!(
            "expected one group of {n} hosts, got {} ({counts:?} restarts)",
            groups.len()
        )),
    }
}

/// Bytes sent to and received from each simulated host so far (its machine-side veth).
fn veth_bytes(hosts: &Fleet) -> (u64, u64) {
    let read = |veth: &str, what: &str| {
        std::fs::read_to_string(format!("/sys/class/net/{veth}/statistics/{what}"))
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    hosts.hosts().iter().fold((0, 0), |(tx, rx), h| {
        (
            tx + read(h.veth(), "tx_bytes"),
            rx + read(h.veth(), "rx_bytes"),
        )
    })
}

/// The measurements of a run, and what the command printed on stdout; with a journal, the
/// rollout's batches as the monitor saw them appear in it.
type Measured = ((Run, Vec<(usize, Duration, f64)>), Vec<u8>);

/// Runs `cmd` to its end while a monitor thread samples the process (and `journal`);
/// fails when it fails.
fn measure(mut cmd: Command, hosts: &Fleet, ctrl: &Path, journal: Option<&Path>) -> Res<Measured> {
    let n = u64::try_from(hosts.hosts().len().max(1)).unwrap_or(1);
    let (tx0, rx0) = veth_bytes(hosts);
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let pid = child.id();
    let done = Arc::new(AtomicBool::new(false));
    let monitor = {
        let done = Arc::clone(&done);
        let journal = journal.map(Path::to_path_buf);
        let ctrl = ctrl.to_string_lossy().into_owned();
        std::thread::spawn(move || monitor(pid, &ctrl, &done, journal.as_deref()))
    };
    // Both pipes drained at once, so the child never blocks on a full one.
    let err = child.stderr.take();
    let err_thread = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(err) = err {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                text.push_str(&line);
                text.push('\n');
            }
        }
        text
    });
    let mut stdout = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = std::io::Read::read_to_end(&mut out, &mut stdout);
    }
    let stderr = err_thread.join().unwrap_or_default();
    done.store(true, Ordering::SeqCst);
    let sample = monitor
        .join()
        .map_err(|_| "the monitor thread panicked".to_owned())?;
    let status = child.wait().map_err(|e| e.to_string())?;
    let wall = started.elapsed();
    if !status.success() {
        return Err(format!(
            "moorline {:?}: {status}\n{stderr}",
            cmd.get_args().collect::<Vec<_>>()
        ));
    }
    let (tx1, rx1) = veth_bytes(hosts);
    Ok((
        (
            Run {
                wall,
                peak_kib: sample.peak_kib,
                ssh_peak_kib: sample.ssh_peak_kib,
                ssh_peak_procs: sample.ssh_peak_procs,
                cpu: sample.cpu,
                sent_per_host: tx1.saturating_sub(tx0) / n,
                received_per_host: rx1.saturating_sub(rx0) / n,
            },
            sample.batches,
        ),
        stdout,
    ))
}

#[derive(Default)]
struct Sample {
    peak_kib: u64,
    ssh_peak_kib: u64,
    ssh_peak_procs: usize,
    cpu: f64,
    batches: Vec<(usize, Duration, f64)>,
}

/// A batch as the monitor saw it: when it began, the CPU ticks then, its hosts, when its last
/// host ended and the ticks then.
type Seen = (Instant, u64, Vec<String>, Option<(Instant, u64)>);

/// Samples `pid` until `done`: its `VmHWM`, its CPU time (its own and its reaped children's),
/// the RSS of its `ssh` processes ([`ssh_processes`]); and the fleet journal's records as they appear, each batch
/// timed from its `batch` record to its last host's end.
fn monitor(pid: u32, ctrl: &str, done: &AtomicBool, journal: Option<&Path>) -> Sample {
    let hz = ticks_per_sec();
    let mut s = Sample::default();
    let mut journal_file = None;
    let mut partial = String::new();
    let mut batches: Vec<Seen> = Vec::new();
    let mut finished = std::collections::BTreeSet::new();
    let mut ticks = 0u64;
    let mut next_ssh = Instant::now();
    let mut last = false;
    while !last {
        // One pass after the command ended: the records it wrote last.
        last = done.load(Ordering::SeqCst);
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            && let Some(kib) = status_kib(&status, "VmHWM:")
        {
            s.peak_kib = s.peak_kib.max(kib);
        }
        if let Some(t) = stat_ticks(pid) {
            ticks = ticks.max(t);
        }
        if Instant::now() >= next_ssh {
            // Scanning /proc is not free with a thousand processes: twice a second.
            next_ssh = Instant::now() + Duration::from_millis(500);
            let (kib, procs) = ssh_processes(ctrl);
            s.ssh_peak_kib = s.ssh_peak_kib.max(kib);
            s.ssh_peak_procs = s.ssh_peak_procs.max(procs);
        }
        if let Some(path) = journal {
            read_new(path, &mut journal_file, &mut partial);
            while let Some(end) = partial.find('\n') {
                let line: String = partial.drain(..=end).collect();
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let now = Instant::now();
                let host = v["host"].as_str().unwrap_or_default().to_owned();
                match v["event"].as_str() {
                    Some("batch") => batches.push((now, tree_ticks(), Vec::new(), None)),
                    Some("host-started") => {
                        if let Some(b) = batches.last_mut() {
                            b.2.push(host);
                        }
                    }
                    Some("host-finished") => {
                        finished.insert(host.clone());
                        if let Some(b) = batches.iter_mut().find(|b| b.2.contains(&host))
                            && b.2.iter().all(|h| finished.contains(h))
                        {
                            // The batch's last host ended.
                            b.3 = Some((now, tree_ticks()));
                        }
                    }
                    _ => {}
                }
            }
        }
        if !last {
            std::thread::sleep(POLL);
        }
    }
    s.cpu = f64::from(u32::try_from(ticks).unwrap_or(u32::MAX)) / hz;
    s.batches = batches
        .into_iter()
        .filter_map(|(at, t0, hosts, end)| {
            let (end, t1) = end?;
            let cpu = f64::from(u32::try_from(t1.saturating_sub(t0)).unwrap_or(0)) / hz;
            Some((hosts.len(), end.duration_since(at), cpu))
        })
        .collect();
    s
}

/// Appends what was written to the journal since the last call to `partial`; opens `path`
/// once it exists and keeps that handle, so the records written before the finished journal
/// is moved to `history/` are read after the move too.
fn read_new(path: &Path, file: &mut Option<std::fs::File>, partial: &mut String) {
    use std::io::Read;
    if file.is_none() {
        *file = std::fs::File::open(path).ok();
    }
    let Some(f) = file else {
        return;
    };
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_ok() {
        partial.push_str(&String::from_utf8_lossy(&buf));
    }
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// `(pid, parent, command name, own + reaped children's CPU ticks)` of every process.
fn processes() -> Vec<(u32, u32, String, u64)> {
    let mut procs = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return procs;
    };
    for e in dir.filter_map(Result::ok) {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_owned();
        let f: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // state ppid ... utime(11) stime(12) cutime(13) cstime(14)
        let parent = u32::try_from(num(1)).unwrap_or(0);
        procs.push((pid, parent, comm, num(11) + num(12) + num(13) + num(14)));
    }
    procs
}

/// The CPU ticks of `pid` itself and the children it reaped.
fn stat_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    Some(f.get(11..15)?.iter().sum())
}

/// The summed RSS (KiB) and number of the controller's `ssh` processes: those whose command
/// line names the controller's state directory `ctrl` (in its `ControlPath`). A master
/// connection detaches from the controller, so it is found by that rather than by its parent.
fn ssh_processes(ctrl: &str) -> (u64, usize) {
    let mut kib = 0;
    let mut count = 0;
    for (p, _, comm, _) in processes() {
        if comm != "ssh" {
            continue;
        }
        let ours = std::fs::read(format!("/proc/{p}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(ctrl));
        if ours {
            kib += std::fs::read_to_string(format!("/proc/{p}/status"))
                .ok()
                .and_then(|s| status_kib(&s, "VmRSS:"))
                .unwrap_or(0);
            count += 1;
        }
    }
    (kib, count)
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

/// CPU ticks used so far by this process's descendants (each live one: its own time and that
/// of the children it reaped), i.e. by the hosts and the controller.
fn tree_ticks() -> u64 {
    let me = std::process::id();
    let procs = processes();
    let parent: BTreeMap<u32, u32> = procs.iter().map(|(p, pp, _, _)| (*p, *pp)).collect();
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
        .filter(|(p, ..)| descends(*p))
        .map(|(.., t)| t)
        .sum()
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn mib(kib: u64) -> f64 {
    f64::from(u32::try_from(kib).unwrap_or(u32::MAX)) / 1024.0
}

fn count(n: usize) -> f64 {
    f64::from(u32::try_from(n).unwrap_or(u32::MAX))
}

/// The mean duration and CPU of the batches of `size` hosts after the first (the canary).
fn batches_of(row: &Row, size: usize) -> Option<(Duration, f64)> {
    let v: Vec<&(usize, Duration, f64)> =
        row.batches.iter().skip(1).filter(|b| b.0 == size).collect();
    let k = u32::try_from(v.len()).ok().filter(|k| *k > 0)?;
    let sum: Duration = v.iter().map(|b| b.1).sum();
    let cpu: f64 = v.iter().map(|b| b.2).sum();
    Some((sum / k, cpu / f64::from(k)))
}

fn table(rows: &[Row], connections: u32) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "\nfleet: 19 services per host; measured change: {} (restarts per host: {}); rollout: canary 1, batches {BATCH}, connections {connections}",
        CHANGED.join(" and "),
        rows.first().map_or(0, |r| r.restarts)
    );
    let _ = writeln!(
        t,
        "{:>5} {:>8} {:>9} | {:>7} {:>8} {:>9} {:>9} | {:>8} {:>8} {:>9} {:>9} | {:>9} {:>9}",
        "hosts",
        "bring-up",
        "1st deploy",
        "plan s",
        "s/host",
        "peak MiB",
        "KiB/host",
        "rollout",
        "s/host",
        "peak MiB",
        "KiB/host",
        "sent/host",
        "sent/host"
    );
    let _ = writeln!(
        t,
        "{:>5} {:>8} {:>9} | {:>7} {:>8} {:>9} {:>9} | {:>8} {:>8} {:>9} {:>9} | {:>9} {:>9}",
        "", "s", "s", "", "", "(ctrl)", "RSS", "s", "", "(ctrl)", "RSS", "plan KiB", "apply KiB"
    );
    for r in rows {
        let n = count(r.hosts);
        let _ = writeln!(
            t,
            "{:>5} {:>8.1} {:>9.1} | {:>7.2} {:>8.3} {:>9.1} {:>9.0} | {:>8.2} {:>8.3} {:>9.1} {:>9.0} | {:>9.0} {:>9.0}",
            r.hosts,
            secs(r.bring_up),
            secs(r.first_deploy),
            secs(r.plan.wall),
            secs(r.plan.wall) / n,
            mib(r.plan.peak_kib),
            count(usize::try_from(r.plan.peak_kib).unwrap_or(0)) / n,
            secs(r.rollout.wall),
            secs(r.rollout.wall) / n,
            mib(r.rollout.peak_kib),
            count(usize::try_from(r.rollout.peak_kib).unwrap_or(0)) / n,
            count(usize::try_from(r.plan.sent_per_host).unwrap_or(0)) / 1024.0,
            count(usize::try_from(r.rollout.sent_per_host).unwrap_or(0)) / 1024.0,
        );
    }
    let _ = writeln!(t);
    // Linearity: each size against the previous one.
    let _ = writeln!(
        t,
        "growth against the previous size, (time ratio) / (host ratio); target: linear (<= 1.0)"
    );
    for w in rows.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        let hosts = count(b.hosts) / count(a.hosts);
        let _ = writeln!(
            t,
            "  {:>3} -> {:>3} hosts: plan {:.2}x in time for {:.1}x hosts ({:.2} of linear), rollout {:.2}x ({:.2} of linear)",
            a.hosts,
            b.hosts,
            secs(b.plan.wall) / secs(a.plan.wall).max(1e-9),
            hosts,
            secs(b.plan.wall) / secs(a.plan.wall).max(1e-9) / hosts,
            secs(b.rollout.wall) / secs(a.rollout.wall).max(1e-9),
            secs(b.rollout.wall) / secs(a.rollout.wall).max(1e-9) / hosts,
        );
    }
    let _ = writeln!(t);
    let _ = writeln!(
        t,
        "controller memory: peak RSS per host (target < {RSS_PER_HOST_TARGET_MB} MB per host); its ssh clients (masters and sessions, separate processes) beside it"
    );
    for r in rows {
        let n = count(r.hosts);
        let peak = mib(r.plan.peak_kib.max(r.rollout.peak_kib));
        let _ = writeln!(
            t,
            "  {:>3} hosts: moorline {peak:.1} MiB = {:.2} MiB per host (target < {RSS_PER_HOST_TARGET_MB}); ssh clients at most {} processes, {:.1} MiB together; controller CPU plan {:.2}s, rollout {:.2}s",
            r.hosts,
            peak / n,
            r.plan.ssh_peak_procs.max(r.rollout.ssh_peak_procs),
            mib(r.plan.ssh_peak_kib.max(r.rollout.ssh_peak_kib)),
            r.plan.cpu,
            r.rollout.cpu,
        );
    }
    let _ = writeln!(t);
    let _ = writeln!(
        t,
        "bytes per host: plan sends {:?}, the rollout (re-plan included) {:?} (KiB, in order of size; received by the controller: plan {:?}, rollout {:?})",
        rows.iter()
            .map(|r| r.plan.sent_per_host / 1024)
            .collect::<Vec<_>>(),
        rows.iter()
            .map(|r| r.rollout.sent_per_host / 1024)
            .collect::<Vec<_>>(),
        rows.iter()
            .map(|r| r.plan.received_per_host / 1024)
            .collect::<Vec<_>>(),
        rows.iter()
            .map(|r| r.rollout.received_per_host / 1024)
            .collect::<Vec<_>>(),
    );
    let _ = writeln!(t);
    // One host's apply: the 1-host fleet's only batch.
    let one = rows
        .iter()
        .find(|r| r.hosts == 1)
        .and_then(|r| r.batches.first())
        .map(|b| (b.1, b.2));
    let _ = writeln!(
        t,
        "batches (fleet journal): a batch of {BATCH} hosts against one host's apply of the same change (target <= {BATCH_TARGET}x)"
    );
    if let Some((d, cpu)) = one {
        let _ = writeln!(
            t,
            "  1-host fleet: its host's apply {:.2}s ({cpu:.2} CPU-s of hosts and controller)",
            secs(d)
        );
    }
    for r in rows.iter().filter(|r| r.hosts > 1) {
        let canary = r.batches.first().map(|b| (b.1, b.2));
        let rollout_batches: Duration = r.batches.iter().map(|b| b.1).sum();
        match (batches_of(r, BATCH), canary) {
            (Some((d, cpu)), Some((c, c_cpu))) => {
                let vs_one = one.map_or_else(
                    || "no 1-host fleet measured".to_owned(),
                    |(o, _)| {
                        format!(
                            "{:.2}x one host (target <= {BATCH_TARGET}x)",
                            secs(d) / secs(o).max(1e-9)
                        )
                    },
                );
                let _ = writeln!(
                    t,
                    "  {:>3} hosts: {} batches; canary {:.2}s; a batch of {BATCH} {:.2}s on average = {vs_one}, {:.2}x this fleet's canary; CPU {cpu:.2}s per batch against {c_cpu:.2}s for the canary ({:.2} cores busy in a batch); batches take {:.1}s of the {:.1}s rollout",
                    r.hosts,
                    r.batches.len(),
                    secs(c),
                    secs(d),
                    secs(d) / secs(c).max(1e-9),
                    cpu / secs(d).max(1e-9),
                    secs(rollout_batches),
                    secs(r.rollout.wall),
                );
            }
            _ => {
                let _ = writeln!(
                    t,
                    "  {:>3} hosts: no full batch of {BATCH} ({} batches seen)",
                    r.hosts,
                    r.batches.len()
                );
            }
        }
    }
    t
}

/// The mean time of `true` on host1 over a new connection each time, and through moorline's
/// master connection.
async fn round_trips(hosts: &Fleet, ctrl: &Path) -> Res<(Duration, Duration)> {
    use moorline::fleet::ssh::{Input, Transport};
    let host = moorline::config::Host {
        name: "host1".to_owned(),
        address: "host1".to_owned(),
        user: None,
        port: None,
        roles: Vec::new(),
    };
    let cold_dir: PathBuf = ctrl.join("bench-cold");
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

//! `cargo bench --bench scale`: how a first deploy grows with the number of
//! services. One phase of N trivial services (the fixture's Python stand-ins,
//! all in phase `supporting`, no `depends-on`), N = 10, 50, 150, each
//! deployed by `moorline apply` under one private `systemd --user` manager.
//! Not a timed test: it prints a table.
//!
//! Beside each apply it prints the services' own start time: every unit is
//! then stopped and started again *alone*, one after the other, timed from
//! submitting the start job to the first 2xx of its readiness URL (polled
//! every [`OWN_POLL`]). Their sum is what starting them costs without any
//! contention or gating; divided by the cores it is the best a parallel
//! deploy on this machine could do for the start-ups alone.
//! `BENCH_SCALE_SIZES=10,50` picks other sizes.

#[path = "common/cli.rs"]
mod cli;
mod common;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use moorline::demo::fixture::{Fixture, FixtureOptions};
use moorline::demo::sandbox::PrivateSystemd;
use moorline::health;
use moorline::systemd::Systemd;

const PYTHON: &str = "/usr/bin/python3";
/// The sizes of the phase, as the issue asks for (10, 50, 150).
const SIZES: [usize; 3] = [10, 50, 150];
/// The own-start poll: fine enough not to add to a ~100 ms start.
const OWN_POLL: Duration = Duration::from_millis(5);
/// How long one service alone may take to answer before the bench gives up.
const OWN_LIMIT: Duration = Duration::from_secs(30);

type Res<T> = Result<T, String>;

fn main() -> ExitCode {
    common::run_on_runtime(run())
}

fn sizes() -> Res<Vec<usize>> {
    match std::env::var("BENCH_SCALE_SIZES") {
        Ok(v) => v
            .split(',')
            .map(|s| {
                s.trim()
                    .parse::<usize>()
                    .map_err(|e| format!("BENCH_SCALE_SIZES={v}: {e}"))
            })
            .collect(),
        Err(_) => Ok(SIZES.to_vec()),
    }
}

async fn run() -> Res<()> {
    if !Path::new(PYTHON).is_file() {
        return Err(format!("{PYTHON} is needed (the fixture services)"));
    }
    let dir = tempfile::Builder::new()
        .prefix("moorline-scale-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    eprintln!("bench: scratch directory {}", dir.path().display());
    let mut sandbox = PrivateSystemd::start(&dir.path().join("systemd"))
        .await
        .map_err(|e| format!("no private systemd manager: {:?}", miette::Report::new(e)))?;
    let sd = sandbox.connect().await.map_err(|e| e.to_string())?;
    let mut rows = Vec::new();
    let mut result = Ok(());
    for (i, n) in sizes()?.into_iter().enumerate() {
        let base = 26_000 + u16::try_from(i).unwrap_or(0) * 1_000;
        match one_size(dir.path(), &sandbox, &sd, n, i, base).await {
            Ok(row) => rows.push(row),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    sandbox.stop();
    if std::env::var_os("BENCH_KEEP").is_some() {
        let kept = dir.keep();
        eprintln!("bench: kept {}", kept.display());
    }
    result?;
    println!("{}", table(&rows));
    Ok(())
}

/// What one size gave.
struct Row {
    services: usize,
    actions: usize,
    apply: Duration,
    /// Each service's start alone, in ms.
    own: Vec<u64>,
    /// Health actions' durations in the apply, in ms.
    health: Vec<u64>,
    /// Restart actions' durations in the apply, in ms.
    restart: Vec<u64>,
    /// From the first restart starting to the last health action ending,
    /// in ms: the part of the apply that starts services and gates on them.
    gate: u64,
}

async fn one_size(
    dir: &Path,
    sandbox: &PrivateSystemd,
    sd: &Systemd,
    n: usize,
    index: usize,
    port_base: u16,
) -> Res<Row> {
    let name = format!("scale{index}-{n}");
    let base = dir.join(&name);
    let mut opts = FixtureOptions::new(base.join("srv"));
    opts.port_base = Some(port_base);
    opts.services = Some(n);
    opts.python = PathBuf::from(PYTHON);
    let fx = Fixture::create(&base.join("fx"), &opts).map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(&fx.config_path).map_err(|e| e.to_string())?;
    let text = one_phase(&text.replace(
        "unit-name \"pakashop-{service}.service\"",
        &format!("unit-name \"{name}-{{service}}.service\""),
    ));
    // Committed: `apply` refuses a configuration with uncommitted changes.
    fx.commit_config("bench configuration", &text)
        .map_err(|e| e.to_string())?;
    let state = base.join("state");
    let units: Vec<String> = fx
        .services
        .iter()
        .map(|s| format!("{name}-{}.service", s.name))
        .collect();

    eprintln!("bench: {n} services: moorline apply (first deploy)...");
    let t = Instant::now();
    let out = cli::moorline(sandbox, &fx.config_path, &state)
        .args(["apply", "--env", "staging", "--yes"])
        .output()
        .map_err(|e| e.to_string())?;
    let apply = t.elapsed();
    if !out.status.success() {
        return Err(format!(
            "apply of {n} services exited {:?}\n--- stdout\n{}\n--- stderr\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let spans = journal_spans(&newest_journal(&state)?)?;
    let of_kind = |prefix: &str| -> Vec<u64> {
        let mut v: Vec<u64> = spans
            .iter()
            .filter(|(id, _)| id.starts_with(prefix))
            .map(|(_, (s, e))| e.saturating_sub(*s))
            .collect();
        v.sort_unstable();
        v
    };
    let health = of_kind("health:");
    let restart = of_kind("restart:");
    let gate = spans
        .iter()
        .filter(|(id, _)| id.starts_with("health:"))
        .map(|(_, (_, e))| *e)
        .max()
        .unwrap_or(0)
        .saturating_sub(
            spans
                .iter()
                .filter(|(id, _)| id.starts_with("restart:"))
                .map(|(_, (s, _))| *s)
                .min()
                .unwrap_or(0),
        );

    eprintln!("bench: {n} services: each service's own start, one at a time...");
    for u in &units {
        let _ = sd.stop(u).await;
    }
    let mut own = Vec::with_capacity(n);
    for (s, unit) in fx.services.iter().zip(&units) {
        let url = format!("http://127.0.0.1:{}/health/ready", s.port);
        own.push(own_start(sd, unit, &url).await?);
    }
    for u in &units {
        let _ = sd.stop(u).await;
    }
    Ok(Row {
        services: n,
        actions: spans.len(),
        apply,
        own,
        health,
        restart,
        gate,
    })
}

/// Every service in phase `supporting`, runtime `python`, no `depends-on`:
/// one phase of trivial, independent services.
fn one_phase(config: &str) -> String {
    let mut out = String::with_capacity(config.len());
    for line in config.lines() {
        if line.starts_with("service ")
            && let (Some(open), Some(close)) = (line.find('{'), line.rfind('}'))
        {
            let fields: Vec<String> = line[open + 1..close]
                .split(';')
                .map(str::trim)
                .filter(|f| !f.starts_with("depends-on"))
                .map(|f| {
                    if f.starts_with("runtime ") {
                        "runtime \"python\"".to_owned()
                    } else if f.starts_with("phase ") {
                        "phase \"supporting\"".to_owned()
                    } else {
                        f.to_owned()
                    }
                })
                .collect();
            let _ = writeln!(out, "{}{{ {} }}", &line[..open], fields.join("; "));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Starts `unit` alone and times it until `url` answers 2xx, in ms.
async fn own_start(sd: &Systemd, unit: &str, url: &str) -> Res<u64> {
    let t = Instant::now();
    let job = sd.start(unit).await.map_err(|e| e.to_string())?;
    if !job.is_success() {
        return Err(format!("start {unit}: {}", job.as_str()));
    }
    loop {
        if health::probe(url).await.ok {
            return Ok(u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX));
        }
        if t.elapsed() > OWN_LIMIT {
            return Err(format!("{unit} alone not ready within {OWN_LIMIT:?}"));
        }
        tokio::time::sleep(OWN_POLL).await;
    }
}

/// The newest file in `{state}/history` (apply ids sort by time).
fn newest_journal(state: &Path) -> Res<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(state.join("history"))
        .map_err(|e| format!("{}/history: {e}", state.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    files
        .pop()
        .ok_or_else(|| "no journal in history".to_owned())
}

/// Action → (started, succeeded) in ms since the apply began.
fn journal_spans(path: &Path) -> Res<HashMap<String, (u64, u64)>> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let mut spans: HashMap<String, (u64, u64)> = HashMap::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(event), Some(action), Some(at)) = (
            v["event"].as_str(),
            v["action"].as_str(),
            v["at_ms"].as_u64(),
        ) else {
            continue;
        };
        let span = spans.entry(action.to_owned()).or_default();
        match event {
            "started" => span.0 = at,
            "succeeded" => span.1 = at,
            _ => {}
        }
    }
    Ok(spans)
}

fn median(v: &[u64]) -> u64 {
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn table(rows: &[Row]) -> String {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let mut r = String::new();
    let _ = writeln!(
        r,
        "\nfirst deploy of one phase of N trivial services ({cores} cores)\n"
    );
    let _ = writeln!(
        r,
        "{:>4} {:>7} {:>9} {:>9} {:>10} {:>10} {:>9} {:>9} {:>9} {:>15} {:>15}",
        "N",
        "actions",
        "apply",
        "vs N/3",
        "own sum",
        "own/cores",
        "apply/",
        "gate",
        "gate/",
        "health med/max",
        "restart med/max"
    );
    let _ = writeln!(
        r,
        "{:>4} {:>7} {:>9} {:>9} {:>10} {:>10} {:>9} {:>9} {:>9} {:>15} {:>15}",
        "", "", "", "", "", "", "own/cores", "", "own/cores", "ms", "ms"
    );
    for row in rows {
        #[allow(clippy::cast_precision_loss)]
        let own_sum = row.own.iter().sum::<u64>() as f64 / 1000.0;
        #[allow(clippy::cast_precision_loss)]
        let own_cores = own_sum / cores as f64;
        let apply = row.apply.as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        let gate = row.gate as f64 / 1000.0;
        // The ratio to the size a third as large, when it was measured
        // (150 against 50 is the "at most 3x").
        let third = rows
            .iter()
            .find(|o| o.services * 3 == row.services)
            .map_or_else(
                || "-".to_owned(),
                |o| format!("{:.2}x", apply / o.apply.as_secs_f64()),
            );
        let _ = writeln!(
            r,
            "{:>4} {:>7} {:>7.2} s {:>9} {:>8.2} s {:>8.2} s {:>8.2}x {:>7.2} s {:>8.2}x {:>7}/{:<7} {:>7}/{:<7}",
            row.services,
            row.actions,
            apply,
            third,
            own_sum,
            own_cores,
            apply / own_cores.max(1e-3),
            gate,
            gate / own_cores.max(1e-3),
            median(&row.health),
            row.health.last().copied().unwrap_or(0),
            median(&row.restart),
            row.restart.last().copied().unwrap_or(0),
        );
    }
    let _ = writeln!(
        r,
        "\n\"vs N/3\": apply time over the apply of a phase a third the size (the goal: at most 3x)."
    );
    let _ = writeln!(
        r,
        "\"own sum\": each service started alone, timed to its first 2xx; \"own/cores\": that sum spread over the cores."
    );
    let _ = writeln!(
        r,
        "\"gate\": from the first restart starting to the last health action ending (the builds before it excluded)."
    );
    r
}

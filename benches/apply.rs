//! `cargo bench --bench apply`: moorline against the seeds' `deploy.sh`,
//! side by side, on the 19-service fixture under one private `systemd
//! --user` manager. Not a timed test: it prints wall times and ratios.
//!
//! - (a) the naive sequential deploy the seeds' `deploy.sh` does: for every
//!   service in the script's order, export its tree, run its build, its
//!   migration where it has prisma, install its unit, `RestartUnit`,
//!   `sleep 2`, check `ActiveState` (`BENCH_NAIVE_SLEEP=SECONDS` changes the
//!   sleep for quick runs);
//! - (b) `moorline apply` of a first deploy (fresh state, units, ports);
//! - (c) `moorline apply` after a one-service change;
//! - (d) `moorline rollback` of all 19 services, beside a rebuild-based
//!   rollback (the naive deploy of the previous revision).
//!
//! (b) is compared with the plan's critical path: the longest chain of
//! action durations (from the journal's `at_ms` stamps) along the plan's
//! `after` edges (from `moorline plan --format json`). Peak memory is the
//! `VmHWM` of the `moorline apply` process, polled from `/proc`.

#[path = "common/cli.rs"]
mod cli;
mod common;
#[path = "common/world.rs"]
mod world;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moorline::demo::fixture::Edit;
use moorline::demo::sandbox::PrivateSystemd;
use moorline::git::Repo;
use moorline::release::Paths;
use moorline::systemd::Systemd;
use world::{PYTHON, World};

/// The seeds' `deploy.sh` order: Node services, then Go, then Python.
const SEED_ORDER: [&str; 19] = [
    "gateway",
    "backend",
    "config",
    "notifications",
    "tracking",
    "scheduler",
    "fraud",
    "coupon",
    "loyalty",
    "whatsapp",
    "reports",
    "reconciliation",
    "invoicing",
    "pricing",
    "settlement",
    "search",
    "analytics",
    "moderation",
    "recommendations",
];

type Res<T> = Result<T, String>;

fn main() -> ExitCode {
    // `cargo bench` passes `--bench` (and maybe a filter): nothing to parse.
    common::run_on_runtime(run())
}

/// A fixture of all 19 services deployed under the shared manager.
fn fleet<'a>(
    dir: &Path,
    name: &str,
    port_base: u16,
    sandbox: &'a PrivateSystemd,
) -> Res<World<'a>> {
    let (w, text) = World::new(dir, name, port_base, None, sandbox)?;
    // Committed: `apply` refuses a configuration with uncommitted changes.
    w.fx.commit_config("bench configuration", &text)
        .map_err(|e| e.to_string())?;
    Ok(w)
}

async fn stop_all(w: &World<'_>, sd: &Systemd) {
    for u in w.units() {
        let _ = sd.stop(&u).await;
    }
}

/// The binary under test: cargo sets `CARGO_BIN_EXE_moorline` for benches
/// (built with the bench profile, i.e. release).
fn moorline_exe() -> &'static str {
    env!("CARGO_BIN_EXE_moorline")
}

/// What one measured `moorline` run gave.
struct Measured {
    wall: Duration,
    peak_kb: u64,
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to completion, timing it and polling its `VmHWM`.
fn measure(mut cmd: Command, logs: &Path, tag: &str) -> Res<Measured> {
    let out_path = logs.join(format!("{tag}.stdout"));
    let err_path = logs.join(format!("{tag}.stderr"));
    let out = std::fs::File::create(&out_path).map_err(|e| e.to_string())?;
    let err = std::fs::File::create(&err_path).map_err(|e| e.to_string())?;
    cmd.stdout(out).stderr(err);
    let t = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", moorline_exe()))?;
    let pid = child.id();
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let poller = {
        let done = Arc::clone(&done);
        let peak = Arc::clone(&peak);
        std::thread::spawn(move || {
            let path = format!("/proc/{pid}/status");
            while !done.load(Ordering::Relaxed) {
                // VmHWM only grows; a zombie has none, so the last read wins.
                if let Some(kb) = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|s| vm_hwm_kb(&s))
                {
                    peak.fetch_max(kb, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let status = child.wait().map_err(|e| e.to_string())?;
    let wall = t.elapsed();
    done.store(true, Ordering::Relaxed);
    let _ = poller.join();
    Ok(Measured {
        wall,
        peak_kb: peak.load(Ordering::Relaxed),
        code: status.code().unwrap_or(-1),
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    })
}

fn vm_hwm_kb(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn require_ok(m: &Measured, what: &str) -> Res<()> {
    if m.code == 0 {
        Ok(())
    } else {
        Err(format!(
            "{what} exited {}\n--- stdout\n{}\n--- stderr\n{}",
            m.code, m.stdout, m.stderr
        ))
    }
}

/// The seeds' `deploy.sh`, for every service in its order: export, build,
/// migrate (prisma), install the unit, restart, sleep, `is-active`.
/// `label` names the release directory, so a rollback rebuilds.
async fn naive_deploy(
    f: &World<'_>,
    sd: &Systemd,
    unit_dir: &Path,
    rev: &str,
    label: &str,
    sleep: Duration,
) -> Res<Duration> {
    let loaded = moorline::config::load(&f.fx.config_path).map_err(|e| format!("{e:?}"))?;
    let config = loaded.config;
    let env = config
        .environment("staging")
        .ok_or("no staging environment")?;
    let repo = Repo::discover(&f.fx.repo).map_err(|e| e.to_string())?;
    let t = Instant::now();
    for name in SEED_ORDER {
        let svc = config
            .service(name)
            .ok_or(format!("no service {name} in the config"))?;
        let fsvc = f.fx.service(name).ok_or(format!("no fixture {name}"))?;
        let paths = Paths::new(&env.root, name);
        let dir = paths.release(label);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| e.to_string())?;
        }
        // git reset --hard + cd services/$service
        repo.export(rev, &svc.path, &dir)
            .map_err(|e| format!("export {name}: {e}"))?;
        // npm ci / go build / pip install: the fixture's build.py.
        let mut build = vec!["build.py".to_owned()];
        if fsvc.runtime == "go" {
            build.push(name.to_owned());
        }
        run_tool(&dir, &build, &env.root).await?;
        if fsvc.prisma {
            run_tool(
                &dir,
                &["migrate.py".to_owned(), env.root.clone()],
                &env.root,
            )
            .await?;
        }
        moorline::release::switch(&paths, &dir).map_err(|e| e.to_string())?;
        let unit = moorline::unit::render(env, svc)
            .map_err(|e| e.to_string())?
            .ok_or("no unit block")?;
        std::fs::write(unit_dir.join(&svc.unit_name), unit).map_err(|e| e.to_string())?;
        sd.daemon_reload().await.map_err(|e| e.to_string())?;
        // sudo systemctl restart pakashop-$service
        let job = sd
            .restart(&svc.unit_name)
            .await
            .map_err(|e| e.to_string())?;
        if !job.is_success() {
            return Err(format!("restart {}: {}", svc.unit_name, job.as_str()));
        }
        tokio::time::sleep(sleep).await;
        // systemctl is-active --quiet pakashop-$service || exit 1
        let st = sd.status(&svc.unit_name).await.map_err(|e| e.to_string())?;
        if st.active_state != "active" {
            return Err(format!("{} is {}", svc.unit_name, st.active_state));
        }
    }
    Ok(t.elapsed())
}

async fn run_tool(dir: &Path, args: &[String], root: &str) -> Res<()> {
    let out = tokio::process::Command::new(PYTHON)
        .args(args)
        .current_dir(dir)
        .env("MOORLINE_ROOT", root)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} in {}: {}",
            args.join(" "),
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Start/finish of one action in a journal, in ms since the apply began.
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    start: u64,
    end: u64,
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

fn journal_spans(path: &Path) -> Res<HashMap<String, Span>> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let mut spans: HashMap<String, Span> = HashMap::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(event), Some(action)) = (v["event"].as_str(), v["action"].as_str()) else {
            continue;
        };
        let Some(at) = v["at_ms"].as_u64() else {
            continue;
        };
        let span = spans.entry(action.to_owned()).or_default();
        match event {
            "started" => span.start = at,
            "succeeded" => span.end = at,
            _ => {}
        }
    }
    if spans.is_empty() {
        return Err(format!(
            "{} has no at_ms stamps (a moorline from before they existed?)",
            path.display()
        ));
    }
    Ok(spans)
}

/// The plan a journal executed (its `begin` record), as JSON text.
fn journal_plan(path: &Path) -> Res<String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "begin")
        .map(|v| v["plan"].to_string())
        .ok_or_else(|| format!("{} has no begin record", path.display()))
}

/// Action id → ids it runs after, in plan order.
fn plan_edges(plan_json: &str) -> Res<Vec<(String, Vec<String>)>> {
    let v: serde_json::Value = serde_json::from_str(plan_json).map_err(|e| e.to_string())?;
    let actions = v["actions"].as_array().ok_or("plan JSON without actions")?;
    Ok(actions
        .iter()
        .map(|a| {
            let id = a["id"].as_str().unwrap_or_default().to_owned();
            let after = a["after"]
                .as_array()
                .map(|xs| {
                    xs.iter()
                        .filter_map(|x| x.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            (id, after)
        })
        .collect())
}

struct CriticalPath {
    millis: u64,
    actions: usize,
    chain: Vec<(String, u64)>,
    /// Sum of every action's duration (the work, were it run sequentially).
    total_work: u64,
    /// The largest waits between an action becoming runnable (its last
    /// predecessor finished) and the executor starting it.
    waits: Vec<(String, u64)>,
}

/// Earliest finish of `id` when every action starts as soon as its
/// predecessors finished (memoised DFS; the plan is a DAG, moorline checks),
/// remembering the predecessor on the longest chain.
fn finish<'a>(
    id: &'a str,
    after: &HashMap<&'a str, &'a Vec<String>>,
    dur: &dyn Fn(&str) -> u64,
    memo: &mut HashMap<&'a str, (u64, Option<&'a str>)>,
) -> u64 {
    if let Some((f, _)) = memo.get(id) {
        return *f;
    }
    let mut best: (u64, Option<&str>) = (0, None);
    if let Some(ps) = after.get(id) {
        for p in *ps {
            let f = finish(p.as_str(), after, dur, memo);
            if f > best.0 || best.1.is_none() {
                best = (f, Some(p.as_str()));
            }
        }
    }
    let f = best.0 + dur(id);
    memo.insert(id, (f, best.1));
    f
}

/// Longest path through the DAG with action durations as node weights.
fn critical_path(edges: &[(String, Vec<String>)], spans: &HashMap<String, Span>) -> CriticalPath {
    let dur = |id: &str| spans.get(id).map_or(0, |s| s.end.saturating_sub(s.start));
    let after: HashMap<&str, &Vec<String>> = edges.iter().map(|(id, a)| (id.as_str(), a)).collect();
    let mut memo = HashMap::new();
    let mut end: Option<(&str, u64)> = None;
    for (id, _) in edges {
        let f = finish(id, &after, &dur, &mut memo);
        if end.is_none_or(|(_, m)| f > m) {
            end = Some((id, f));
        }
    }
    let mut chain = Vec::new();
    let mut cur = end.map(|(id, _)| id);
    while let Some(id) = cur {
        chain.push((id.to_owned(), dur(id)));
        cur = memo.get(id).and_then(|(_, p)| *p);
    }
    chain.reverse();
    let mut waits: Vec<(String, u64)> = edges
        .iter()
        .filter_map(|(id, ps)| {
            let s = spans.get(id)?;
            let ready = ps
                .iter()
                .filter_map(|p| spans.get(p).map(|x| x.end))
                .max()
                .unwrap_or(0);
            Some((id.clone(), s.start.saturating_sub(ready)))
        })
        .collect();
    waits.sort_by_key(|w| std::cmp::Reverse(w.1));
    waits.truncate(5);
    CriticalPath {
        millis: end.map_or(0, |(_, m)| m),
        actions: edges.len(),
        chain,
        total_work: edges.iter().map(|(id, _)| dur(id)).sum(),
        waits,
    }
}

fn write_path(r: &mut String, what: &str, cp: &CriticalPath, actions: usize, journal: &Path) {
    let _ = writeln!(r, "\ncritical path of the {what} (from its journal):");
    for (id, ms) in &cp.chain {
        let _ = writeln!(r, "  {ms:>6} ms  {id}");
    }
    let _ = writeln!(
        r,
        "  = {} ms; all {actions} actions' durations add up to {} ms",
        cp.millis, cp.total_work
    );
    let restarts = cp
        .chain
        .iter()
        .filter(|(id, _)| id.starts_with("restart:"))
        .count();
    let settle = moorline::systemd::SETTLE.as_millis();
    let _ = writeln!(
        r,
        "  of which {restarts} restarts x {settle} ms settle window (systemd::SETTLE) = {} ms",
        u128::try_from(restarts).unwrap_or(0) * settle
    );
    let _ = writeln!(
        r,
        "  largest waits between an action becoming runnable and starting:"
    );
    for (id, ms) in &cp.waits {
        let _ = writeln!(r, "  {ms:>6} ms  {id}");
    }
    let _ = writeln!(r, "  (journal: {})", journal.display());
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{s:.2} s")
    } else {
        format!("{s:.1} s")
    }
}

fn mark(ok: bool) -> &'static str {
    if ok { "ok" } else { "MISSED" }
}

async fn run() -> Res<()> {
    let naive_sleep = std::env::var("BENCH_NAIVE_SLEEP")
        .ok()
        .map(|v| {
            v.parse::<f64>()
                .map_err(|e| format!("BENCH_NAIVE_SLEEP={v}: {e}"))
        })
        .transpose()?
        .unwrap_or(2.0);
    let naive_sleep = Duration::from_secs_f64(naive_sleep.max(0.0));
    let (dir, mut sandbox, sd) = world::scratch_manager("moorline-bench-").await?;
    eprintln!("bench: scratch directory {}", dir.path().display());
    let result = measure_all(dir.path(), &sandbox, &sd, naive_sleep).await;
    sandbox.stop();
    if std::env::var_os("BENCH_KEEP").is_some() {
        let kept = dir.keep();
        eprintln!("bench: kept {}", kept.display());
    }
    let report = result?;
    println!("{report}");
    Ok(())
}

async fn measure_all(
    dir: &Path,
    sandbox: &PrivateSystemd,
    sd: &Systemd,
    naive_sleep: Duration,
) -> Res<String> {
    let naive = fleet(dir, "naive", 24_000, sandbox)?;
    let ml = fleet(dir, "bench", 24_100, sandbox)?;
    let unit_dir = sandbox.unit_dir();
    let logs = dir.join("bench/logs");
    std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;

    // (a) the seeds' deploy.sh.
    let rev0 = naive.fx.head("main").map_err(|e| e.to_string())?;
    eprintln!(
        "bench: (a) naive sequential deploy, sleep {} s after each restart...",
        naive_sleep.as_secs_f64()
    );
    let naive_first = naive_deploy(&naive, sd, &unit_dir, &rev0, &rev0, naive_sleep).await?;
    eprintln!("bench: (a) {}", secs(naive_first));
    stop_all(&naive, sd).await;

    // (b) moorline's first deploy: nothing built, no unit, nothing running.
    stop_all(&ml, sd).await;
    let plan = ml
        .moorline(&["plan", "--env", "staging", "--format", "json"])
        .output()
        .map_err(|e| e.to_string())?;
    if !plan.status.success() {
        return Err(format!(
            "moorline plan: {}",
            String::from_utf8_lossy(&plan.stderr)
        ));
    }
    let edges = plan_edges(&String::from_utf8_lossy(&plan.stdout))?;
    eprintln!(
        "bench: (b) moorline apply, first deploy ({} actions)...",
        edges.len()
    );
    let first = measure(
        ml.moorline(&["apply", "--env", "staging", "--yes"]),
        &logs,
        "b-apply",
    )?;
    require_ok(&first, "the first apply")?;
    let journal = newest_journal(&ml.state)?;
    let spans = journal_spans(&journal)?;
    let cp = critical_path(&edges, &spans);
    let missing = edges
        .iter()
        .filter(|(id, _)| !spans.contains_key(id))
        .count();
    if missing > 0 {
        eprintln!("bench: warning: {missing} planned actions have no journal stamps");
    }

    // (c) one service changed.
    ml.fx
        .commit("main", "pricing tweak", &[Edit::touch_service("pricing")])
        .map_err(|e| e.to_string())?;
    eprintln!("bench: (c) moorline apply, one service changed...");
    let one = measure(
        ml.moorline(&["apply", "--env", "staging", "--yes"]),
        &logs,
        "c-apply",
    )?;
    require_ok(&one, "the one-service apply")?;

    // (d) every service changed, applied, then rolled back.
    let mut all: Vec<Edit> = vec![Edit::Bump {
        path: "packages/shared/VERSION".to_owned(),
    }];
    all.extend(ml.fx.services.iter().map(|s| Edit::touch_service(&s.name)));
    let staging_root = ml.fx.env_root("staging").display().to_string();
    let live = |name: &str| Paths::new(&staging_root, name).live();
    let before_all: Vec<Option<String>> = ml.fx.services.iter().map(|s| live(&s.name)).collect();
    ml.fx
        .commit("main", "shared bump, every service", &all)
        .map_err(|e| e.to_string())?;
    eprintln!("bench: (d) moorline apply of a change to all 19, then rollback...");
    let d_apply = measure(
        ml.moorline(&["apply", "--env", "staging", "--yes"]),
        &logs,
        "d-apply",
    )?;
    require_ok(&d_apply, "the all-services apply")?;
    let rollback = measure(
        ml.moorline(&["rollback", "--env", "staging", "--yes"]),
        &logs,
        "d-rollback",
    )?;
    require_ok(&rollback, "the rollback")?;
    let rb_journal = newest_journal(&ml.state)?;
    let rb_cp = critical_path(
        &plan_edges(&journal_plan(&rb_journal)?)?,
        &journal_spans(&rb_journal)?,
    );
    let back = ml
        .fx
        .services
        .iter()
        .zip(&before_all)
        .filter(|(s, was)| live(&s.name) == **was)
        .count();
    if back != ml.fx.services.len() {
        return Err(format!(
            "after the rollback only {back} of {} services run their previous release",
            ml.fx.services.len()
        ));
    }

    // The rebuild-based rollback: the naive fleet moves forward (untimed,
    // no sleep), then deploy.sh runs again at the old revision.
    let mut all_naive: Vec<Edit> = vec![Edit::Bump {
        path: "packages/shared/VERSION".to_owned(),
    }];
    all_naive.extend(
        naive
            .fx
            .services
            .iter()
            .map(|s| Edit::touch_service(&s.name)),
    );
    let rev1 = naive
        .fx
        .commit("main", "shared bump, every service", &all_naive)
        .map_err(|e| e.to_string())?;
    naive_deploy(&naive, sd, &unit_dir, &rev1, &rev1, Duration::ZERO).await?;
    eprintln!("bench: (d) rebuild-based rollback: deploy.sh at the previous revision...");
    let d_naive = naive_deploy(&naive, sd, &unit_dir, &rev0, "revert", naive_sleep).await?;
    stop_all(&naive, sd).await;
    stop_all(&ml, sd).await;

    // The report.
    let mut r = String::new();
    write_path(&mut r, "first deploy", &cp, edges.len(), &journal);
    write_path(&mut r, "rollback of 19", &rb_cp, rb_cp.actions, &rb_journal);
    let ratio_ab = naive_first.as_secs_f64() / first.wall.as_secs_f64();
    let cp_d = Duration::from_millis(cp.millis);
    let ratio_cp = first.wall.as_secs_f64() / cp_d.as_secs_f64().max(1e-3);
    let ratio_d = d_naive.as_secs_f64() / rollback.wall.as_secs_f64();
    let peak_mb = |kb: u64| {
        #[allow(clippy::cast_precision_loss)]
        let mb = kb as f64 / 1024.0;
        mb
    };
    let peak = [
        first.peak_kb,
        one.peak_kb,
        d_apply.peak_kb,
        rollback.peak_kb,
    ]
    .into_iter()
    .max()
    .unwrap_or(0);
    let _ = writeln!(r);
    let _ = writeln!(
        r,
        "naive deploy.sh (sequential, sleep {} s)   {}",
        naive_sleep.as_secs_f64(),
        secs(naive_first)
    );
    let _ = writeln!(
        r,
        "moorline apply, first deploy             {}   {ratio_ab:.1}x faster [{}]   critical path {} ({ratio_cp:.2}x) [{}]",
        secs(first.wall),
        mark(ratio_ab >= 15.0),
        secs(cp_d),
        mark(ratio_cp <= 1.3),
    );
    let _ = writeln!(
        r,
        "moorline apply, one service              {}   [{}]",
        secs(one.wall),
        mark(one.wall < Duration::from_secs(1))
    );
    let _ = writeln!(
        r,
        "moorline apply, all 19 changed           {}",
        secs(d_apply.wall)
    );
    let _ = writeln!(
        r,
        "moorline rollback, 19 services           {}   [{}]   vs rebuild-based rollback {} ({ratio_d:.0}x)",
        secs(rollback.wall),
        mark(rollback.wall < Duration::from_secs(2)),
        secs(d_naive),
    );
    let _ = writeln!(
        r,
        "moorline peak RSS                        {:.1} MB   [{}]   (first apply {:.1}, one service {:.1}, all {:.1}, rollback {:.1})",
        peak_mb(peak),
        mark(peak_mb(peak) < 40.0),
        peak_mb(first.peak_kb),
        peak_mb(one.peak_kb),
        peak_mb(d_apply.peak_kb),
        peak_mb(rollback.peak_kb),
    );
    Ok(r)
}

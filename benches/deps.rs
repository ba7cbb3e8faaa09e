//! `cargo bench --bench deps`: a one-service deploy whose dependencies did
//! not change, with the dependency cache and without it. The service's
//! runtime has a `deps` step that builds a real venv
//! (`python3 -m venv venv`, pip included, no network); each round commits
//! a code change (the lockfile, `requirements.txt`, stays the same) and
//! times `moorline apply`. "Cache on" reuses the venv from the host's
//! cache (hard links); "cache off" deletes `{root}/.moorline-cache` before
//! the apply, so the same apply runs the step, as every deploy did before.
//! Not a timed test: it prints a table. `BENCH_DEPS_ROUNDS=N` (default 3).

#[path = "common/cli.rs"]
mod cli;
mod common;

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use moorline::demo::fixture::{Edit, Fixture, FixtureOptions};
use moorline::demo::sandbox::PrivateSystemd;

type Res<T> = Result<T, String>;

const DEPS: &str = r#"runtime "node" {
    deps "/usr/bin/python3" "-m" "venv" "venv" {
        inputs "requirements.txt"
        outputs "venv"
        version "/usr/bin/python3" "--version"
    }"#;

fn main() -> ExitCode {
    common::run_on_runtime(run())
}

async fn run() -> Res<()> {
    let rounds: usize = std::env::var("BENCH_DEPS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::Builder::new()
        .prefix("moorline-deps-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let mut sandbox = PrivateSystemd::start(&dir.path().join("systemd"))
        .await
        .map_err(|e| format!("no private systemd manager: {:?}", miette::Report::new(e)))?;
    let result = rounds_of(dir.path(), &sandbox, rounds);
    if let Ok(sd) = sandbox.connect().await {
        let _ = sd.stop("bd-svc-0001.service").await;
    }
    sandbox.stop();
    let (on, off) = result?;
    let mean = |v: &[Duration]| v.iter().sum::<Duration>() / u32::try_from(v.len()).unwrap_or(1);
    let fmt = |v: &[Duration]| {
        v.iter()
            .map(|d| format!("{:.2}s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!("one-service deploy, requirements.txt unchanged ({rounds} rounds each)");
    println!(
        "  cache on  (venv reused): mean {:.2}s  [{}]",
        mean(&on).as_secs_f64(),
        fmt(&on)
    );
    println!(
        "  cache off (venv built):  mean {:.2}s  [{}]",
        mean(&off).as_secs_f64(),
        fmt(&off)
    );
    println!(
        "  off / on: {:.1}x",
        mean(&off).as_secs_f64() / mean(&on).as_secs_f64().max(1e-9)
    );
    Ok(())
}

fn rounds_of(
    dir: &Path,
    sandbox: &PrivateSystemd,
    rounds: usize,
) -> Res<(Vec<Duration>, Vec<Duration>)> {
    let mut opts = FixtureOptions::new(dir.join("srv"));
    opts.services = Some(1);
    opts.port_base = Some(free_port()?);
    let fx = Fixture::create(&dir.join("fx"), &opts).map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(&fx.config_path).map_err(|e| e.to_string())?;
    let text = text
        .replace("runtime \"node\" {", DEPS)
        .replace("pakashop-{service}.service", "bd-{service}.service");
    // Committed: `apply` refuses a configuration with uncommitted changes.
    fx.commit_config("bench configuration", &text)
        .map_err(|e| e.to_string())?;
    let svc = fx
        .services
        .first()
        .map(|s| s.name.clone())
        .ok_or("no service")?;
    let state = dir.join("state");
    fx.commit(
        "main",
        "requirements",
        &[Edit::Write {
            path: format!("services/{svc}/requirements.txt"),
            contents: "# none\n".to_owned(),
        }],
    )
    .map_err(|e| e.to_string())?;
    apply(sandbox, &fx.config_path, &state)?;
    let cache = fx.env_root("staging").join(".moorline-cache");
    let mut on = Vec::new();
    let mut off = Vec::new();
    for _ in 0..rounds {
        for cached in [true, false] {
            fx.commit("main", "code", &[Edit::touch_service(&svc)])
                .map_err(|e| e.to_string())?;
            if !cached {
                std::fs::remove_dir_all(&cache).map_err(|e| e.to_string())?;
            }
            let t = apply(sandbox, &fx.config_path, &state)?;
            if cached { &mut on } else { &mut off }.push(t);
        }
    }
    Ok((on, off))
}

fn apply(sandbox: &PrivateSystemd, config: &Path, state: &Path) -> Res<Duration> {
    let started = Instant::now();
    let out = cli::moorline(sandbox, config, state)
        .args(["apply", "--env", "staging", "--yes"])
        .output()
        .map_err(|e| e.to_string())?;
    let took = started.elapsed();
    if !out.status.success() {
        return Err(format!(
            "apply failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(took)
}

fn free_port() -> Res<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

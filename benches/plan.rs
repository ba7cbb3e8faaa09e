//! Whole-process time of `moorline plan` (the release binary), printed
//! beside the least any planner must do, `git diff --name-only FROM TO`, on
//! the same repository. Not a timed test: it prints figures and targets.
//!
//! Run with `cargo bench --bench plan`. `MOORLINE_BENCH_COMMITS` (default
//! 20000) and `MOORLINE_BENCH_SERVICES` (default 2000) size the big fleet.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use git2::{FileMode, Repository, Signature, Time};
use moorline::demo::fixture::{Edit, Fixture, FixtureOptions};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

/// Median wall time of `runs` runs of `cmd`, which must succeed.
fn time(runs: usize, mut cmd: impl FnMut() -> Command) -> Duration {
    let mut v = Vec::with_capacity(runs);
    for _ in 0..runs {
        let mut c = cmd();
        let start = Instant::now();
        let o = c.output().unwrap();
        v.push(start.elapsed());
        assert!(
            o.status.success(),
            "{c:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    median(v)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Times the plan and the baseline on `repo` and prints them side by side.
fn compare(label: &str, config: &Path, repo: &Path, from: &str, runs: usize, target_ms: f64) {
    let state = tempfile::tempdir().unwrap();
    let plan = time(runs, || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_moorline"));
        c.args(["-c", config.to_str().unwrap()])
            .args(["--state-dir", state.path().to_str().unwrap()])
            .args(["--systemd", "user", "plan", "--env", "staging"])
            .args(["--from", from, "--to", "main", "--format", "json"])
            .env("XDG_CONFIG_HOME", state.path())
            .env_remove("MOORLINE_CONFIG");
        c
    });
    let git = time(runs, || {
        let mut c = Command::new("git");
        c.args(["diff", "--name-only", from, "main"])
            .current_dir(repo);
        c
    });
    let verdict = if ms(plan) < target_ms { "ok" } else { "SLOW" };
    println!(
        "{label}: moorline plan {:.1} ms, git diff {:.1} ms, ratio {:.2} (target < {target_ms} ms: {verdict}; median of {runs})",
        ms(plan),
        ms(git),
        plan.as_secs_f64() / git.as_secs_f64()
    );
}

/// `n` commits on `main`, each changing one file of a service picked by a
/// fixed pseudo-random sequence; built with git2 directly (a blob, an
/// updated tree, a commit), with no index and no working tree.
fn many_commits(repo: &Repository, services: &[String], n: usize) {
    let mut parent = repo.head().unwrap().peel_to_commit().unwrap();
    let mut tree = parent.tree().unwrap();
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut t = parent.time().seconds();
    for i in 0..n {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let service = &services[usize::try_from(seed % services.len() as u64).unwrap()];
        let file = ["VERSION", "src/change.js", "notes.txt"][i % 3];
        let blob = repo.blob(format!("{i}\n").as_bytes()).unwrap();
        let mut update = git2::build::TreeUpdateBuilder::new();
        update.upsert(format!("services/{service}/{file}"), blob, FileMode::Blob);
        let id = update.create_updated(repo, &tree).unwrap();
        tree = repo.find_tree(id).unwrap();
        t += 60;
        let sig = Signature::new("Bench", "bench@example.invalid", &Time::new(t, 0)).unwrap();
        let c = repo
            .commit(None, &sig, &sig, &format!("change {i}"), &tree, &[&parent])
            .unwrap();
        parent = repo.find_commit(c).unwrap();
    }
    repo.reference("refs/heads/main", parent.id(), true, "bench")
        .unwrap();
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` must not run this.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();

    // pakashop.kdl on the Pakashop-shaped fixture: a few commits.
    let fx = Fixture::create(
        &dir.path().join("pakashop"),
        &FixtureOptions::new(dir.path().join("srv")),
    )
    .unwrap();
    let config = fx.repo.join("pakashop.kdl");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/pakashop.kdl"),
        &config,
    )
    .unwrap();
    let from = fx.head("main").unwrap();
    fx.commit("main", "coupon", &[Edit::touch_service("coupon")])
        .unwrap();
    fx.commit(
        "main",
        "migration",
        &[Edit::add_migration("backend", "0002_orders")],
    )
    .unwrap();
    compare(
        "pakashop.kdl, 19 services, 2 commits",
        &config,
        &fx.repo,
        &from,
        30,
        30.0,
    );

    // A generated fleet, many commits between from and to.
    let services = env_usize("MOORLINE_BENCH_SERVICES", 2000);
    let commits = env_usize("MOORLINE_BENCH_COMMITS", 20_000);
    let mut opts = FixtureOptions::new(dir.path().join("srv-big"));
    opts.services = Some(services);
    let start = Instant::now();
    let big = Fixture::create(&dir.path().join("big"), &opts).unwrap();
    let repo = Repository::open(&big.repo).unwrap();
    let from = big.head("main").unwrap();
    let names: Vec<String> = big.services.iter().map(|s| s.name.clone()).collect();
    many_commits(&repo, &names, commits);
    eprintln!(
        "(set-up: {services} services, {commits} commits in {:.1} s)",
        start.elapsed().as_secs_f64()
    );
    compare(
        &format!("generated, {services} services, {commits} commits"),
        &big.config_path,
        &big.repo,
        &from,
        5,
        1000.0,
    );
}

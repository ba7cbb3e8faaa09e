//! `cargo bench --bench scheduler`: the executor's scheduler alone (no I/O,
//! no systemd) driven through plans of about 2,000 actions of several
//! shapes, beside the loop it replaced, which rescanned every action on
//! every pass (written out here as the baseline). Each finishes the oldest
//! running action, then starts everything that became ready, until the
//! plan is done; both must start the actions in the same order (checked).
//! Prints the cost per action of each and their ratio. Not a timed test.
//! `BENCH_SCHEDULER_ROUNDS=N` repeats each measurement N times (default 5;
//! the fastest counts).

use std::collections::{BTreeSet, VecDeque};
use std::hint::black_box;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use moorline::execute::scheduler::{Node, OnFailure, Scheduler, predecessors};

/// Actions per plan, about.
const ACTIONS: usize = 2_000;

/// One action of a plan: its id and the ids it comes after.
struct Action {
    id: String,
    after: Vec<String>,
}

fn action(id: String, after: Vec<String>) -> Action {
    Action { id, after }
}

/// Builds one plan.
type Shape = fn() -> Vec<Action>;

/// One wide phase: a daemon-reload, then every action after it.
fn wide() -> Vec<Action> {
    let mut v = vec![action("daemon-reload".into(), vec![])];
    v.extend((1..ACTIONS).map(|i| action(format!("restart:s{i}"), vec!["daemon-reload".into()])));
    v
}

/// A chain: each action after the one before.
fn chain() -> Vec<Action> {
    (0..ACTIONS)
        .map(|i| {
            let after = if i == 0 {
                vec![]
            } else {
                vec![format!("a{}", i - 1)]
            };
            action(format!("a{i}"), after)
        })
        .collect()
}

/// 20 phases of 99 actions, each phase after the barrier that closes the
/// phase before.
fn phases() -> Vec<Action> {
    let mut v = Vec::new();
    let mut barrier: Option<String> = None;
    for p in 0..20 {
        let mut members = Vec::new();
        for i in 0..99 {
            let id = format!("restart:p{p}s{i}");
            v.push(action(id.clone(), barrier.iter().cloned().collect()));
            members.push(id);
        }
        let b = format!("barrier:p{p}");
        v.push(action(b.clone(), members));
        barrier = Some(b);
    }
    v
}

/// A deploy's shape: per service a build, its unit installed, then one
/// daemon-reload after every install, and per service a restart after it
/// and a health check after the restart (500 services).
fn deploy() -> Vec<Action> {
    let n = ACTIONS / 4;
    let mut v = Vec::new();
    for s in 0..n {
        v.push(action(format!("build:s{s}"), vec![]));
    }
    for s in 0..n {
        v.push(action(
            format!("install-unit:s{s}"),
            vec![format!("build:s{s}")],
        ));
    }
    v.push(action(
        "daemon-reload".into(),
        (0..n).map(|s| format!("install-unit:s{s}")).collect(),
    ));
    for s in 0..n {
        v.push(action(
            format!("restart:s{s}"),
            vec!["daemon-reload".into()],
        ));
        v.push(action(
            format!("health:s{s}"),
            vec![format!("restart:s{s}")],
        ));
    }
    v
}

/// The loop the scheduler replaced: on every pass, every action that is not
/// done, running or failed and whose predecessors are all done starts, in
/// plan order. Returns the start order.
fn rescanning(plan: &[Action]) -> Vec<usize> {
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut in_flight: BTreeSet<String> = BTreeSet::new();
    let failed: Vec<(String, String)> = Vec::new();
    let mut running: VecDeque<usize> = VecDeque::new();
    let mut order = Vec::with_capacity(plan.len());
    loop {
        for (i, a) in plan.iter().enumerate() {
            if done.contains(&a.id) || in_flight.contains(&a.id) {
                continue;
            }
            if failed.iter().any(|(f, _)| *f == a.id) {
                continue;
            }
            if !a.after.iter().all(|p| done.contains(p)) {
                continue;
            }
            in_flight.insert(a.id.clone());
            running.push_back(i);
            order.push(i);
        }
        let Some(i) = running.pop_front() else { break };
        in_flight.remove(&plan[i].id);
        done.insert(plan[i].id.clone());
    }
    order
}

/// The scheduler, from the plan's ids as the executor builds its nodes.
/// Returns the start order.
fn scheduled(plan: &[Action]) -> Vec<usize> {
    let nodes: Vec<Node> = predecessors(plan.iter().map(|a| (a.id.as_str(), &a.after[..])))
        .into_iter()
        .map(|after| Node {
            after,
            permit: false,
            done: false,
        })
        .collect();
    let mut queue = Scheduler::new(&nodes, 1, OnFailure::Stop);
    let mut running: VecDeque<usize> = VecDeque::new();
    let mut order = Vec::with_capacity(plan.len());
    loop {
        while let Some(i) = queue.start_next() {
            running.push_back(i);
            order.push(i);
        }
        let Some(i) = running.pop_front() else { break };
        queue.succeeded(i);
    }
    order
}

/// The fastest of `rounds` runs of `f`, and its result.
fn fastest(rounds: usize, mut f: impl FnMut() -> Vec<usize>) -> (Duration, Vec<usize>) {
    let mut best = Duration::MAX;
    let mut out = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        out = black_box(f());
        best = best.min(t.elapsed());
    }
    (best, out)
}

/// `d` over `n` actions, in microseconds.
fn per_action(d: Duration, n: usize) -> String {
    let each = d / u32::try_from(n.max(1)).unwrap_or(u32::MAX);
    format!("{:.2} µs", each.as_secs_f64() * 1e6)
}

fn main() -> ExitCode {
    let rounds = std::env::var("BENCH_SCHEDULER_ROUNDS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(5)
        .max(1);
    let shapes: [(&str, Shape); 4] = [
        ("one wide phase", wide),
        ("a chain", chain),
        ("20 phases, barriers", phases),
        ("deploy of 500 services", deploy),
    ];
    println!(
        "{:<24} {:>7} {:>14} {:>14} {:>8}",
        "plan", "actions", "rescanning", "scheduler", "ratio"
    );
    let mut ok = true;
    for (name, make) in shapes {
        let plan = make();
        let (old, old_order) = fastest(rounds, || rescanning(&plan));
        let (new, new_order) = fastest(rounds, || scheduled(&plan));
        if old_order != new_order || new_order.len() != plan.len() {
            eprintln!("{name}: the scheduler started the actions in another order");
            ok = false;
        }
        println!(
            "{:<24} {:>7} {:>14} {:>14} {:>7.0}×",
            name,
            plan.len(),
            per_action(old, plan.len()),
            per_action(new, plan.len()),
            old.as_secs_f64() / new.as_secs_f64().max(1e-9)
        );
    }
    println!("(per action: the whole run over the number of actions; fastest of {rounds})");
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

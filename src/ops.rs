//! `moorline start|stop|enable|disable`: the configuration, `--service` names and the
//! environment's lock go in; systemd jobs (through [`crate::systemd`] only) and a per-service
//! report come out.
//!
//! Order: services are grouped into *waves* (see [`waves`]): phases in declaration order, and
//! inside a phase by `depends-on` depth, so `config` starts before `gateway` before `backend`.
//! The services of one wave run in parallel. `start` runs the waves in order and gates each
//! wave on its services being active and ready (their readiness URL answers 2xx within their
//! `ready-timeout`); a failure stops later waves (they would start on top of a broken
//! dependency). `stop` runs the waves in reverse (the gateway stops after what sits behind it)
//! and always runs them all: a unit that fails to stop does not keep the rest up.
//!
//! Only the services' own units are acted on; the infrastructure units of phases (databases)
//! and the proxy are not moorline's to stop. `start`/`stop` show what they will do and ask like
//! `apply` (`--yes` skips; no terminal and no `--yes` refuses). All four hold the environment's
//! lock, so they never interleave with an `apply`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use miette::Diagnostic;

use crate::cli::{Global, OpsArgs};
use crate::config::{Config, Service, error::suggest};
use crate::health;
use crate::plan::build::ready_url;
use crate::settings;
use crate::systemd::{SETTLE, Systemd};
use crate::{commands, exit, lock};

/// Which operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Start,
    Stop,
    Enable,
    Disable,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Start => "start",
            Op::Stop => "stop",
            Op::Enable => "enable",
            Op::Disable => "disable",
        }
    }
}

#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum OpsError {
    #[error("unknown service `{name}`")]
    #[diagnostic(code(moorline::ops::unknown_service), help("{help}"))]
    UnknownService { name: String, help: String },
    #[error("refusing to {op} without confirmation: there is no terminal to ask on")]
    #[diagnostic(
        code(moorline::ops::unconfirmed),
        help("review the list above and pass --yes")
    )]
    Unconfirmed { op: &'static str },
    #[error("cannot {op} the units")]
    #[diagnostic(
        code(moorline::ops::unit_files),
        help("check that the unit files are installed (moorline apply installs them)")
    )]
    UnitFiles {
        op: &'static str,
        #[source]
        source: crate::systemd::SystemdError,
    },
}

/// The services named by `--service` (all when none), plus their dependents if asked, in
/// configuration order. Every unknown name is an error with a did-you-mean.
pub fn select<'c>(
    config: &'c Config,
    names: &[String],
    with_dependents: bool,
) -> Result<Vec<&'c Service>, OpsError> {
    if names.is_empty() {
        return Ok(config.services.iter().collect());
    }
    let all: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
    let mut chosen: BTreeSet<&str> = BTreeSet::new();
    for n in names {
        let Some(found) = all.iter().find(|a| **a == n.as_str()) else {
            let help = match suggest(n, &all) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("services: {}", all.join(", ")),
            };
            return Err(OpsError::UnknownService {
                name: n.clone(),
                help,
            });
        };
        chosen.insert(found);
    }
    if with_dependents {
        loop {
            let before = chosen.len();
            for s in &config.services {
                if s.depends_on.iter().any(|d| chosen.contains(d.as_str())) {
                    chosen.insert(s.name.as_str());
                }
            }
            if chosen.len() == before {
                break;
            }
        }
    }
    Ok(config
        .services
        .iter()
        .filter(|s| chosen.contains(s.name.as_str()))
        .collect())
}

/// Start order as waves of service names: keyed by (phase index, depth of the `depends-on`
/// chain inside the phase), each wave sorted by name. Dependencies in earlier phases are
/// already ordered by the phase; a cycle (rejected by validation) cannot loop here, the depth
/// is bounded by the number of services.
pub fn waves(config: &Config, selected: &[&Service]) -> Vec<Vec<String>> {
    let by_name: BTreeMap<&str, &Service> = config
        .services
        .iter()
        .map(|s| (s.name.as_str(), s))
        .collect();
    let mut grouped: BTreeMap<(usize, usize), Vec<String>> = BTreeMap::new();
    for s in selected {
        let key = (s.phase_index, depth(s, &by_name, config.services.len()));
        grouped.entry(key).or_default().push(s.name.clone());
    }
    grouped
        .into_values()
        .map(|mut v| {
            v.sort();
            v
        })
        .collect()
}

/// Length of the `depends-on` chain below `s` inside its own phase.
fn depth(s: &Service, by_name: &BTreeMap<&str, &Service>, budget: usize) -> usize {
    if budget == 0 {
        return 0;
    }
    s.depends_on
        .iter()
        .filter_map(|d| by_name.get(d.as_str()))
        .filter(|d| d.phase_index == s.phase_index)
        .map(|d| 1 + depth(d, by_name, budget - 1))
        .max()
        .unwrap_or(0)
}

/// What happened to one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done { millis: u64 },
    Failed(String),
    NotRun,
}

/// Runs one of the four operations; returns the exit code.
pub fn run(global: &Global, args: &OpsArgs, op: Op) -> miette::Result<i32> {
    let t = settings::resolve(global, &args.env)?;
    let config = t.config();
    let selected = select(config, &args.services, args.with_dependents)?;
    let mut order = waves(config, &selected);
    if op == Op::Stop {
        order.reverse();
    }
    let _lock = lock::acquire(&t.state_dir, op.name())?;
    let units: BTreeMap<String, String> = selected
        .iter()
        .map(|s| (s.name.clone(), s.unit_name.clone()))
        .collect();

    if matches!(op, Op::Start | Op::Stop) {
        eprintln!(
            "{} {} service{} of {}, in this order:",
            op.name(),
            selected.len(),
            if selected.len() == 1 { "" } else { "s" },
            t.env.name
        );
        for (i, w) in order.iter().enumerate() {
            eprintln!("  {}. {}", i + 1, w.join(", "));
        }
        let verb = if op == Op::Start { "Start" } else { "Stop" };
        if !args.yes
            && !commands::confirm(&format!(
                "{verb} these {} services in {}?",
                selected.len(),
                t.env.name
            ))
        {
            return Err(OpsError::Unconfirmed { op: op.name() }.into());
        }
    }

    let rt = commands::runtime()?;
    rt.block_on(async {
        let sd = Systemd::connect(t.systemd).await?;
        match op {
            Op::Enable | Op::Disable => {
                let names: Vec<String> = units.values().cloned().collect();
                let r = if op == Op::Enable {
                    sd.enable(&names).await
                } else {
                    sd.disable(&names).await
                };
                r.map_err(|source| OpsError::UnitFiles {
                    op: op.name(),
                    source,
                })?;
                for (name, unit) in &units {
                    let state = sd
                        .status(unit)
                        .await
                        .map_or_else(|e| format!("unknown ({e})"), |s| s.unit_file_state);
                    println!("{name}: {unit} {state}");
                }
                Ok(exit::OK)
            }
            Op::Start | Op::Stop => {
                let services: BTreeMap<String, Service> = selected
                    .iter()
                    .map(|s| (s.name.clone(), (*s).clone()))
                    .collect();
                let results = execute(&sd, op, &order, &services).await;
                Ok(report(op, &order, &results))
            }
        }
    })
}

async fn execute(
    sd: &Systemd,
    op: Op,
    order: &[Vec<String>],
    services: &BTreeMap<String, Service>,
) -> BTreeMap<String, Outcome> {
    let mut results = BTreeMap::new();
    let mut failed = false;
    for wave in order {
        if failed && op == Op::Start {
            for name in wave {
                results.insert(name.clone(), Outcome::NotRun);
            }
            continue;
        }
        let mut tasks = tokio::task::JoinSet::new();
        for name in wave {
            let Some(s) = services.get(name).cloned() else {
                continue;
            };
            let sd = sd.clone();
            tasks.spawn(async move {
                let start = Instant::now();
                let r = if op == Op::Start {
                    start_one(&sd, &s).await
                } else {
                    stop_one(&sd, &s).await
                };
                let millis = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
                (s.name, r.map(|()| millis))
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let (name, outcome) = match joined {
                Ok((name, Ok(millis))) => {
                    eprintln!("{} {name} ({millis} ms)", past(op));
                    (name, Outcome::Done { millis })
                }
                Ok((name, Err(e))) => {
                    eprintln!("FAILED to {} {name}: {e}", op.name());
                    (name, Outcome::Failed(e))
                }
                Err(e) => (format!("(task {e})"), Outcome::Failed(e.to_string())),
            };
            failed |= matches!(outcome, Outcome::Failed(_));
            results.insert(name, outcome);
        }
    }
    results
}

fn past(op: Op) -> &'static str {
    match op {
        Op::Start => "started",
        Op::Stop => "stopped",
        Op::Enable => "enabled",
        Op::Disable => "disabled",
    }
}

/// Start job, confirmed active after the settle window, then ready.
async fn start_one(sd: &Systemd, s: &Service) -> Result<(), String> {
    let unit = &s.unit_name;
    {
        let _permit = crate::apply::unit_jobs().acquire().await.ok();
        sd.start(unit)
            .await
            .map_err(|e| e.to_string())?
            .check("start", unit)
            .map_err(|e| e.to_string())?;
    }
    sd.confirm_active(unit, SETTLE)
        .await
        .map_err(|e| e.to_string())?;
    let alive = || async {
        match sd.status(unit).await {
            Ok(st) if st.active_state == "active" || st.active_state == "activating" => Ok(()),
            Ok(st) => Err(format!("{unit} is {}", st.active_state)),
            Err(e) => Err(e.to_string()),
        }
    };
    health::wait_ready(&ready_url(s), s.ready_timeout, alive)
        .await
        .map(|_| ())
        .map_err(|p| {
            format!(
                "not ready: {} ({})",
                p.url,
                p.error.unwrap_or_else(|| "no answer".to_owned())
            )
        })
}

async fn stop_one(sd: &Systemd, s: &Service) -> Result<(), String> {
    sd.stop(&s.unit_name)
        .await
        .map_err(|e| e.to_string())?
        .check("stop", &s.unit_name)
        .map_err(|e| e.to_string())
}

fn report(op: Op, order: &[Vec<String>], results: &BTreeMap<String, Outcome>) -> i32 {
    let pick = |want: fn(&Outcome) -> bool| -> Vec<String> {
        order
            .iter()
            .flatten()
            .filter(|n| results.get(*n).is_some_and(want))
            .cloned()
            .collect()
    };
    let ok = pick(|o| matches!(o, Outcome::Done { .. }));
    let failed = pick(|o| matches!(o, Outcome::Failed(_)));
    let not_run = pick(|o| matches!(o, Outcome::NotRun));
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(", ")
        }
    };
    println!(
        "{}: {} succeeded, {} failed, {} not run",
        op.name(),
        ok.len(),
        failed.len(),
        not_run.len()
    );
    if !failed.is_empty() || !not_run.is_empty() {
        println!("  succeeded: {}", list(&ok));
        println!("  failed:    {}", list(&failed));
        println!("  not run:   {}", list(&not_run));
    }
    if failed.is_empty() && not_run.is_empty() {
        exit::OK
    } else {
        exit::ERROR
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let text = r#"
project "p" { unit-name "p-{service}.service" }
environment "staging" { branch "main"; root "/tmp/p" }
phase "config"
phase "gateway"
phase "core"
runtime "node" { build "true" }
service "config"  { runtime "node"; port 1; phase "config" }
service "gateway" { runtime "node"; port 2; phase "gateway"; depends-on "config" }
service "auth"    { runtime "node"; port 3; phase "core" }
service "backend" { runtime "node"; port 4; phase "core"; depends-on "gateway" "auth" }
service "search"  { runtime "node"; port 5; phase "core" }
"#;
        crate::config::parse("t.kdl", text).unwrap()
    }

    #[test]
    fn waves_follow_phases_then_depends_on_inside_a_phase() {
        let c = config();
        let all = select(&c, &[], false).unwrap();
        assert_eq!(
            waves(&c, &all),
            vec![
                vec!["config".to_owned()],
                vec!["gateway".to_owned()],
                vec!["auth".to_owned(), "search".to_owned()],
                vec!["backend".to_owned()],
            ]
        );
    }

    #[test]
    fn select_with_dependents_and_did_you_mean() {
        let c = config();
        let names = |v: Vec<&Service>| v.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(select(&c, &["gateway".into()], true).unwrap()),
            vec!["gateway", "backend"]
        );
        assert_eq!(
            names(select(&c, &["auth".into()], false).unwrap()),
            vec!["auth"]
        );
        let err = select(&c, &["backedn".into()], false).unwrap_err();
        assert_eq!(err.to_string(), "unknown service `backedn`");
        let OpsError::UnknownService { help, .. } = err else {
            panic!()
        };
        assert_eq!(help, "did you mean `backend`?");
    }
}

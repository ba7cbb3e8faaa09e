//! `moorline start|stop|enable|disable`: the configuration, `--service`
//! names and the environment's lock go in; a plan of the services' own
//! units comes out ([`crate::plan::manual::services`]), shown and confirmed
//! like `apply` (start and stop; `--yes` skips, no terminal and no `--yes`
//! refuses), then journaled and executed by the same executor as every
//! other plan. A per-service summary closes it.
//!
//! `start` goes phase by phase (`depends-on` inside a phase), each start
//! gated on readiness; a failure stops what has not started (it would start
//! on top of a broken dependency). `stop` goes in reverse and always runs
//! every stop: a unit that fails to stop does not keep the rest up. Only
//! the services' own units are acted on; the infrastructure units of phases
//! (databases) and the proxy are not moorline's to stop.

use std::collections::BTreeSet;

use super::{confirm, executor, print_report, runtime};
use crate::cli::{Format, OpsArgs};
use crate::execute::Outcome;
use crate::git::Rev;
use crate::plan::Operation;
use crate::plan::manual::{ServiceOps, services};
use crate::select::{OpsError, select};
use crate::target::Target;
use crate::{exit, lock, render, report, state};

/// Runs one of the four operations; returns the exit code.
pub(crate) fn run(t: &Target, args: &OpsArgs, op: Operation) -> miette::Result<i32> {
    let config = t.config();
    let selected = select(config, &args.services, args.with_dependents)?;
    let _lock = lock::acquire(&t.state_dir, op.as_str())?;
    let loaded = state::load(&t.state_dir, &config.project.name, &t.env.name)?;
    let live = Rev {
        spec: "live".to_owned(),
        sha: loaded
            .state
            .as_ref()
            .and_then(|s| s.revision.clone())
            .unwrap_or_default(),
        summary: op.as_str().to_owned(),
    };
    let names: Vec<String> = selected.iter().map(|s| s.name.clone()).collect();
    let units: Vec<(String, String)> = selected
        .iter()
        .map(|s| (s.name.clone(), s.unit_name.clone()))
        .collect();
    let plan = services(ServiceOps {
        config,
        config_text: &t.loaded.text,
        env: &t.env,
        operation: op,
        services: selected,
        live,
        state_sha256: loaded.sha256,
    });
    if matches!(op, Operation::Start | Operation::Stop) {
        eprint!("{}", render::text(&plan, report::stderr_color()));
        let verb = if op == Operation::Start {
            "Start"
        } else {
            "Stop"
        };
        if !crate::policy::confirmed(args.yes, || {
            confirm(&format!(
                "{verb} these {} services in {}?",
                names.len(),
                t.env.name
            ))
        }) {
            return Err(OpsError::Unconfirmed { op: op.as_str() }.into());
        }
    }
    let rt = runtime()?;
    rt.block_on(async {
        let ctx = executor(t, None, false, Format::Text).await?;
        let report = crate::execute::apply(std::sync::Arc::clone(&ctx), plan).await?;
        if report.outcome == Outcome::Interrupted {
            return Ok(print_report(&report, &args.env, Format::Text, op));
        }
        for (id, e) in &report.failed {
            let e = crate::secrets::redact(e);
            eprintln!("FAILED {id}: {}", e.lines().next().unwrap_or_default());
        }
        if matches!(op, Operation::Enable | Operation::Disable) {
            for (name, unit) in &units {
                let state = ctx
                    .systemd
                    .status(unit)
                    .await
                    .map_or_else(|e| format!("unknown ({e})"), |s| s.unit_file_state);
                println!("{name}: {unit} {state}");
            }
            return Ok(report.exit_code());
        }
        Ok(summary(op, &names, &report))
    })
}

/// `OP: N succeeded, M failed, K not run`, and the lists when not all
/// succeeded. A started service succeeded when it is ready.
fn summary(op: Operation, names: &[String], r: &crate::execute::Report) -> i32 {
    let done: BTreeSet<&str> = r.succeeded.iter().map(String::as_str).collect();
    let failed: BTreeSet<&str> = r.failed.iter().map(|(id, _)| id.as_str()).collect();
    let final_id = |s: &str| {
        if op == Operation::Start {
            format!("health:{s}")
        } else {
            format!("stop:{s}")
        }
    };
    let (mut ok, mut bad, mut not_run) = (Vec::new(), Vec::new(), Vec::new());
    for s in names {
        if done.contains(final_id(s).as_str()) {
            ok.push(s.clone());
        } else if failed.contains(format!("start:{s}").as_str())
            || failed.contains(final_id(s).as_str())
        {
            bad.push(s.clone());
        } else {
            not_run.push(s.clone());
        }
    }
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_owned()
        } else {
            v.join(", ")
        }
    };
    println!(
        "{}: {} succeeded, {} failed, {} not run",
        op.as_str(),
        ok.len(),
        bad.len(),
        not_run.len()
    );
    if !bad.is_empty() || !not_run.is_empty() {
        println!("  succeeded: {}", list(&ok));
        println!("  failed:    {}", list(&bad));
        println!("  not run:   {}", list(&not_run));
    }
    if bad.is_empty() && not_run.is_empty() {
        exit::OK
    } else {
        exit::ERROR
    }
}

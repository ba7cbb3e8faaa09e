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
use crate::config::Service;
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
    let mut units: Vec<(String, String)> = Vec::new();
    for s in &selected {
        for u in acted_on(s, op)? {
            units.push((s.name.clone(), u));
        }
    }
    let plan = services(ServiceOps {
        config,
        config_text: &t.loaded.text,
        env: &t.env,
        operation: op,
        services: selected,
        live,
        state_sha256: loaded.sha256,
        units: units.iter().map(|(_, u)| u.clone()).collect(),
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

/// The units `enable` or `disable` acts on for `s`: its unit; for a
/// blue/green service (a template unit, which cannot be enabled itself),
/// `enable` the slot instance its upstream file names (the one that
/// should start at boot; refused when it names none) and `disable` both
/// slot instances.
fn acted_on(s: &Service, op: Operation) -> Result<Vec<String>, OpsError> {
    let Some(c) = &s.cutover else {
        return Ok(vec![s.unit_name.clone()]);
    };
    if op != Operation::Enable {
        return Ok(s.running_units());
    }
    std::fs::read_to_string(&c.upstream)
        .ok()
        .and_then(|text| crate::upstream::live_slot(&text, &s.name, c.slots))
        .map(|slot| vec![s.slot_unit(slot)])
        .ok_or_else(|| OpsError::NoLiveSlot {
            service: s.name.clone(),
            upstream: c.upstream.clone(),
            slot_a: c.slots[0],
            slot_b: c.slots[1],
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A blue/green service: `enable` acts on the slot its upstream file
    /// names, and is refused (coded) when the file names none; `disable`
    /// and the others act on both slot instances.
    #[test]
    fn a_blue_green_service_enables_its_live_slot_and_disables_both() {
        let dir = tempfile::tempdir().unwrap();
        let up = dir.path().join("api.conf");
        let text = format!(
            r#"
project "p" {{ unit-name "p-{{service}}.service" }}
environment "staging" {{ branch "main"; root "/srv/p" }}
phase "core"
runtime "node" {{ build "true"; unit {{ exec "/bin/x" "{{current}}/m.js"; env PORT="{{port}}" }} }}
service "api" {{ runtime "node"; port 1; phase "core"
    cutover "blue-green" {{ slots 11 12; upstream "{}"; drain "3s" }} }}
service "web" {{ runtime "node"; port 2; phase "core" }}
proxy "nginx" {{ unit "nginx.service"; check "nginx" "-t"; }}
"#,
            up.display()
        );
        let c = crate::config::parse("t.kdl", &text).unwrap();
        let (api, web) = (c.service("api").unwrap(), c.service("web").unwrap());
        assert_eq!(acted_on(web, Operation::Enable).unwrap(), ["p-web.service"]);
        assert_eq!(
            acted_on(api, Operation::Disable).unwrap(),
            ["p-api@11.service", "p-api@12.service"]
        );
        let e = acted_on(api, Operation::Enable).unwrap_err();
        assert_eq!(
            miette::Diagnostic::code(&e).unwrap().to_string(),
            "moorline::ops::no_live_slot"
        );
        assert!(e.to_string().contains("names no slot of 11 and 12"), "{e}");
        std::fs::write(&up, crate::upstream::text("api", 12).unwrap()).unwrap();
        assert_eq!(
            acted_on(api, Operation::Enable).unwrap(),
            ["p-api@12.service"]
        );
    }
}

//! `moorline apply` on one host: a plan made here (or a saved one, re-made
//! and compared; or one checked against a plan reviewed elsewhere), shown,
//! passed through the gates of [`crate::policy`] (conflicts, promotion,
//! staleness, review, dirty tree, approval, confirmation), then executed by
//! [`crate::execute`]; and `apply --resume`. Which plan file and which
//! target (a host or a fleet) is decided by the dispatcher.

use miette::Diagnostic;

use super::{confirm, executor, print_report, runtime};
use crate::cli::{ApplyArgs, Format, OnFailure};
use crate::observe::PlanRequest;
use crate::plan::Plan;
use crate::policy::{self, PlanSource, Scope};
use crate::target::Target;
use crate::{exit, render, report};

#[derive(Debug, thiserror::Error, Diagnostic)]
pub(crate) enum ApplyCmdError {
    #[error("`apply` needs a saved plan (PLANFILE) or --env")]
    #[diagnostic(
        code(moorline::apply::no_target),
        help(
            "moorline plan --env ENV --out plan.json, then moorline apply plan.json; or moorline apply --env ENV"
        )
    )]
    NoTarget,
    #[error("cannot start the async runtime")]
    #[diagnostic(
        code(moorline::apply::runtime),
        help("the system may be out of threads or memory")
    )]
    Runtime(#[source] std::io::Error),
}

/// `apply` of `t` (an environment deployed where moorline runs): `saved`
/// (`apply FILE`), planned here and checked against `reviewed`
/// (`--reviewed FILE`), or planned here and confirmed.
pub(crate) fn run(
    t: &Target,
    args: &ApplyArgs,
    saved: Option<Plan>,
    reviewed: Option<&Plan>,
) -> miette::Result<i32> {
    let env_name = t.env.name.clone();
    let _lock = crate::lock::acquire(&t.state_dir, "apply")?;
    let rt = runtime()?;
    let connect = || {
        executor(
            t,
            args.jobs,
            args.on_failure == OnFailure::Rollback,
            args.format,
        )
    };
    rt.block_on(async {
        if args.resume {
            let ctx = connect().await?;
            crate::commands::removed_empty_backups(t);
            return match crate::execute::resume(std::sync::Arc::clone(&ctx)).await? {
                None => {
                    println!("nothing to resume: no unfinished apply of {env_name}");
                    Ok(exit::OK)
                }
                Some(report) => Ok(print_report(
                    &report,
                    &env_name,
                    args.format,
                    crate::plan::Operation::Deploy,
                )),
            };
        }
        let plan = if let Some(saved) = saved {
            let mut fresh = crate::observe::compute_plan(
                t,
                &PlanRequest {
                    from: saved.from.as_ref().map(|f| f.sha.clone()),
                    to: Some(saved.to.sha.clone()),
                    allow_non_ancestor: saved.inputs.allow_non_ancestor,
                    adopt: saved.inputs.adopt.clone(),
                    skip_promotion_check: saved.inputs.skip_promotion_check,
                    on_host: true,
                },
            )?;
            // The artifacts the saved plan installs (and those the fleet
            // controller names, which must be the same ones).
            crate::artifact::choose::choose(
                t.config(),
                &t.env.root,
                &mut fresh,
                &super::artifacts(&args.artifacts, Some(&saved.inputs.artifacts)),
            )?;
            policy::no_unit_conflicts(&fresh, PlanSource::Saved)?;
            let moved = policy::host_plan_moved(&saved, &fresh);
            policy::unmoved(Scope::Host, &env_name, &moved)?;
            if fresh.has_changes() {
                policy::clean(Scope::Host, &fresh.uncommitted, args.allow_dirty)?;
                policy::promoted(&fresh)?;
            }
            policy::not_failed_here(&fresh, args.yes, confirm)?;
            policy::confirm(args.yes, || {
                confirm(&format!(
                    "Apply the saved plan ({} actions) to {env_name}?",
                    fresh.actions.len()
                ))
            })?;
            fresh
        } else {
            let mut p = crate::observe::compute_plan(
                t,
                &PlanRequest {
                    from: args.from.clone(),
                    to: args
                        .to
                        .clone()
                        .or_else(|| reviewed.map(|r| r.to.sha.clone())),
                    allow_non_ancestor: args.allow_non_ancestor
                        || reviewed.is_some_and(|r| r.inputs.allow_non_ancestor),
                    adopt: args
                        .adopt
                        .iter()
                        .chain(reviewed.iter().flat_map(|r| &r.inputs.adopt))
                        .cloned()
                        .collect(),
                    skip_promotion_check: args.skip_promotion_check
                        || reviewed.is_some_and(|r| r.inputs.skip_promotion_check),
                    on_host: true,
                },
            )?;
            crate::artifact::choose::choose(
                t.config(),
                &t.env.root,
                &mut p,
                &super::artifacts(&args.artifacts, reviewed.map(|r| &r.inputs.artifacts)),
            )?;
            // What the source environment proved comes first: without it,
            // nothing else about this plan matters.
            if p.has_changes()
                && let Err(e) = policy::promoted(&p)
            {
                if args.format != Format::Json {
                    eprint!("{}", render::text(&p, report::stderr_color()));
                }
                return Err(e.into());
            }
            if p.has_conflicts() {
                if args.format != Format::Json {
                    eprint!("{}", render::text(&p, report::stderr_color()));
                }
                let source = if reviewed.is_some() {
                    PlanSource::Reviewed
                } else {
                    PlanSource::Here
                };
                policy::no_unit_conflicts(&p, source)?;
            }
            if let Some(r) = reviewed {
                let differences = crate::plan::review_differences(r, &p, args.to.is_none());
                policy::as_reviewed(Scope::Host, &env_name, &differences)?;
            }
            if args.format != Format::Json {
                eprint!("{}", render::text(&p, report::stderr_color()));
            }
            policy::not_failed_here(&p, args.yes, confirm)?;
            if !p.has_changes() {
                return record_unchanged(t, &p).await;
            }
            policy::clean(Scope::Host, &p.uncommitted, args.allow_dirty)?;
            policy::approved(&env_name, t.env.approval, true, reviewed.is_some())?;
            policy::confirm(args.yes, || {
                confirm(&format!(
                    "Apply these {} actions to {env_name}?",
                    p.actions.len()
                ))
            })?;
            p
        };
        if !plan.has_changes() {
            return record_unchanged(t, &plan).await;
        }
        // What the plan needs from this host (users, env-files, programs, ports), before any
        // change.
        crate::hostfacts::refuse_missing(t.config(), &t.env, &plan)?;
        // The artifacts it installs, into this host's store (from
        // --artifacts DIR), each file checked: a damaged one stops the
        // apply before it starts.
        crate::artifact::choose::import(&t.env.root, args.artifacts.dir.as_deref(), &plan)?;
        // Only now, with a plan that is worth applying, talk to systemd.
        let ctx = connect().await?;
        let operation = plan.operation;
        let report = crate::execute::apply(ctx, plan).await?;
        Ok(print_report(&report, &env_name, args.format, operation))
    })
}

/// An apply whose plan changes nothing: its target is recorded as the
/// deployed revision (a revert, a commit that touches no service), and
/// nothing restarts; or nothing at all when it already was.
async fn record_unchanged(t: &Target, p: &Plan) -> miette::Result<i32> {
    let env = &t.env.name;
    if crate::execute::record_unchanged(&t.state_dir, p).await? {
        let to = crate::plan::short(&p.to.sha);
        let since = p.from.as_ref().map_or_else(String::new, |f| {
            format!(" since {}", crate::plan::short(&f.sha))
        });
        println!(
            "nothing to restart: no service changed{since}; recorded {to} as the revision deployed to {env}"
        );
    } else {
        println!("nothing to apply: {env} is up to date");
    }
    Ok(exit::OK)
}

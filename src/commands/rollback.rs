//! `rollback` and `restart`: the target's plan without a build, chosen by
//! [`crate::rollback`], shown, confirmed, locked and executed like an
//! apply; `rollback --database` restores the backup the last apply took.

use super::{confirm, executor, print_report, runtime};
use crate::cli::{Format, OpsArgs, RollbackArgs};
use crate::policy::confirmed;
use crate::rollback::{RollbackError, check_services, choose, database_backup, restart_plan};
use crate::target::Target;
use crate::{exit, render, report, state};

pub(crate) fn run(t: &Target, args: &RollbackArgs) -> miette::Result<i32> {
    check_services(t.config(), &args.services)?;
    let _lock = crate::lock::acquire(&t.state_dir, "rollback")?;
    if args.database {
        return database(t, args);
    }
    let rt = runtime()?;
    rt.block_on(async {
        let ctx = executor(t, None, true, args.format).await?;
        crate::commands::removed_empty_backups(t);
        // A crashed apply is rolled back from its journal first: its
        // rollback plan is shown and confirmed like any other.
        if let Some(pending) = crate::execute::unfinished_rollback(&ctx).await? {
            if pending.live_changed() {
                eprintln!(
                    "apply {} is unfinished; {}:",
                    pending.apply_id(),
                    if pending.begun {
                        "its rollback began and goes on with this plan"
                    } else {
                        "this plan rolls it back from its journal"
                    }
                );
                show_and_confirm(&pending.plan, args.format, args.yes, "Roll back")?;
            }
            let report =
                crate::execute::roll_back_unfinished(std::sync::Arc::clone(&ctx), pending).await?;
            match report.outcome {
                crate::execute::Outcome::RolledBack => eprintln!(
                    "the unfinished apply {} was rolled back from its journal",
                    report.apply_id
                ),
                crate::execute::Outcome::FailedUntouched => eprintln!(
                    "the unfinished apply {} was closed: nothing live had changed",
                    report.apply_id
                ),
                _ => {}
            }
            let code = print_report(
                &report,
                &args.env,
                args.format,
                crate::plan::Operation::Rollback,
            );
            // Asked for a rollback and got one: that is success.
            return Ok(if report.outcome == crate::execute::Outcome::RolledBack {
                exit::OK
            } else {
                code
            });
        }
        let loaded = state::load(&t.state_dir, &t.config().project.name, &t.env.name)?;
        let chosen = choose(t, &loaded, &args.services, args.to.as_deref())?;
        let (plan, schema) = (chosen.plan, chosen.schema);
        show_and_confirm(&plan, args.format, args.yes, "Roll back")?;
        let report = crate::execute::apply(ctx, plan).await?;
        let code = print_report(
            &report,
            &args.env,
            args.format,
            crate::plan::Operation::Rollback,
        );
        if let Some(s) = schema {
            eprintln!("note: {s}");
        }
        Ok(code)
    })
}

fn show_and_confirm(
    plan: &crate::plan::Plan,
    format: Format,
    yes: bool,
    verb: &str,
) -> miette::Result<()> {
    match format {
        Format::Json => eprint!("{}", render::json(plan)),
        Format::Markdown => eprint!("{}", render::markdown(plan)),
        Format::Text => eprint!("{}", render::text(plan, report::stderr_color())),
    }
    if !confirmed(yes, || {
        confirm(&format!(
            "{verb}: {} actions in {}?",
            plan.actions.len(),
            plan.environment
        ))
    }) {
        return Err(RollbackError::Unconfirmed.into());
    }
    Ok(())
}

fn database(t: &Target, args: &RollbackArgs) -> miette::Result<i32> {
    let loaded = state::load(&t.state_dir, &t.config().project.name, &t.env.name)?;
    let st = loaded.state.unwrap_or_default();
    let (b, record) = database_backup(&t.env, &st)?;
    let taken = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(record.taken_at),
    );
    eprintln!(
        "restore the database of {} from backup {} ({} bytes, taken {taken} before apply {}).\nEverything written to the database since {taken} will be lost.",
        t.env.name,
        record.id,
        record.size,
        record.apply_id.as_deref().unwrap_or("-"),
    );
    if !confirmed(args.yes, || confirm("Restore it?")) {
        return Err(RollbackError::Unconfirmed.into());
    }
    let rt = runtime()?;
    rt.block_on(crate::backup::restore(&t.env, b, &t.state_dir, &record))
        .map_err(RollbackError::Database)?;
    crate::backup::record_restore(&t.state_dir, &t.config().project.name, &t.env.name, &record)?;
    eprintln!(
        "restored {}; the next deploy of {} runs the migrations again (`moorline plan --env {}` shows them)",
        record.id, t.env.name, t.env.name
    );
    Ok(exit::OK)
}

/// `moorline restart`: every (or the named) service in dependency order,
/// each gated on readiness, without building or switching releases.
pub(crate) fn restart(t: &Target, args: &OpsArgs) -> miette::Result<i32> {
    check_services(t.config(), &args.services)?;
    let _lock = crate::lock::acquire(&t.state_dir, "restart")?;
    let loaded = state::load(&t.state_dir, &t.config().project.name, &t.env.name)?;
    let plan = restart_plan(t, &loaded, &args.services, args.with_dependents)?;
    show_and_confirm(&plan, Format::Text, args.yes, "Restart")?;
    let rt = runtime()?;
    rt.block_on(async {
        let ctx = executor(t, None, false, Format::Text).await?;
        let report = crate::execute::apply(ctx, plan).await?;
        Ok(print_report(
            &report,
            &args.env,
            Format::Text,
            crate::plan::Operation::Restart,
        ))
    })
}

//! `moorline apply`: a plan made here (or a saved one, re-made and
//! compared; or one checked against a plan reviewed elsewhere), shown,
//! refused when it must be (conflicts, dirty tree, promotion, approval,
//! staleness), confirmed, then executed by [`crate::execute`]; and
//! `apply --resume`.

use std::path::Path;

use miette::Diagnostic;

use super::settings;
use super::{confirm, executor, print_report, runtime};
use crate::cli::{ApplyArgs, Format, Global, OnFailure};
use crate::observe::PlanRequest;
use crate::{exit, render, report};

#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum ApplyCmdError {
    #[error("`apply` needs a saved plan (PLANFILE) or --env")]
    #[diagnostic(
        code(moorline::apply::no_target),
        help(
            "moorline plan --env ENV --out plan.json, then moorline apply plan.json; or moorline apply --env ENV"
        )
    )]
    NoTarget,
    #[error("cannot read the saved plan {path}")]
    #[diagnostic(
        code(moorline::apply::bad_plan_file),
        help("pass a file written by `moorline plan --out`")
    )]
    BadPlanFile { path: String, reason: String },
    #[error("refusing to read the plan file {path}: {kind}, not a regular file")]
    #[diagnostic(
        code(moorline::apply::plan_not_a_file),
        help(
            "pass a plan file written by `moorline plan --out`, or `-` to read the plan from standard input"
        )
    )]
    PlanNotAFile { path: String, kind: &'static str },
    #[error(
        "refusing to read the plan file {path}: it holds {size} bytes or more, over the limit of {cap}"
    )]
    #[diagnostic(
        code(moorline::apply::plan_too_large),
        help(
            "a plan moorline writes is far smaller (a 2,000-service first deploy takes a few MB); pass a file written by `moorline plan --out`"
        )
    )]
    PlanTooLarge { path: String, size: u64, cap: u64 },
    #[error("refusing the plan file {path}: {reason}")]
    #[diagnostic(
        code(moorline::apply::plan_duplicate_key),
        help(
            "moorline never writes a key twice; one of the two values would be ignored, so the file may not say what its reviewer read. Make the plan again with `moorline plan --out`"
        )
    )]
    PlanDuplicateKey { path: String, reason: String },
    #[error(
        "the saved plan {path} has format_version {found}; this moorline reads only {expected}"
    )]
    #[diagnostic(
        code(moorline::plan::format_version),
        help(
            "it was written by {writer}; make the plan again with this moorline (`moorline plan --env ENV --out FILE`), or apply it with the moorline that wrote it"
        )
    )]
    FormatVersion {
        path: String,
        found: String,
        expected: u32,
        writer: String,
    },
    #[error("the saved plan no longer matches: {moved}")]
    #[diagnostic(
        code(moorline::apply::stale_plan),
        help(
            "make a new plan (`moorline plan --env {env} --out FILE`), review it, and apply that"
        )
    )]
    Stale { moved: String, env: String },
    #[error("refusing to replace unit files that moorline did not install: {files}")]
    #[diagnostic(
        code(moorline::apply::unit_conflict),
        help(
            "nothing was changed. Compare each file with the unit moorline would write (the plan's diff), then adopt it explicitly: {how}; or remove the service's `unit` block to keep managing that unit by hand"
        )
    )]
    UnitConflict { files: String, how: String },
    #[error("refusing to apply without confirmation: there is no terminal to ask on")]
    #[diagnostic(
        code(moorline::apply::unconfirmed),
        help("review the plan above and pass --yes to apply it")
    )]
    Unconfirmed,
    #[error("environment {env} requires approval: apply a reviewed, saved plan")]
    #[diagnostic(
        code(moorline::apply::approval_required),
        help(
            "have a plan reviewed (the pull request's `moorline plan --env {env} --out plan.json`), then on the host `moorline apply --env {env} --reviewed plan.json --yes`; or apply a plan saved on the host: `moorline apply plan.json --yes`"
        )
    )]
    ApprovalRequired { env: String },
    #[error("this host's plan differs from the reviewed one:\n  {differences}")]
    #[diagnostic(
        code(moorline::apply::not_as_reviewed),
        help(
            "nothing was applied; review a plan made for what this host runs (`moorline plan` on the host), or find out why the host differs (`moorline status`)"
        )
    )]
    NotAsReviewed { differences: String },
    #[error("the working tree has uncommitted changes this plan does not see:\n  - {paths}")]
    #[diagnostic(
        code(moorline::apply::dirty),
        help(
            "services deploy from commits, and the configuration is read from disk: commit (or revert) these changes and plan again, or pass --allow-dirty to apply the plan as shown"
        )
    )]
    Dirty { paths: String },
    #[error("{env} only runs what {source_env} ran healthy: {why}")]
    #[diagnostic(
        code(moorline::apply::not_promoted),
        help(
            "deploy {sha} to {source_env} first and let it run healthy, then apply again; or, knowingly, pass --skip-promotion-check (the plan shows it)"
        )
    )]
    NotPromoted {
        env: String,
        source_env: String,
        sha: String,
        why: String,
    },
    #[error("cannot start the async runtime")]
    #[diagnostic(
        code(moorline::apply::runtime),
        help("the system may be out of threads or memory")
    )]
    Runtime(#[source] std::io::Error),
}

/// Reads a saved plan. Its `format_version` is checked before anything
/// else in it is read: a plan of another format is refused whole, never
/// read as this one.
/// A plan file's text; `-` is standard input (how a fleet controller hands
/// a host its reviewed plan over ssh).
/// The bytes of a plan file (`-`: standard input), refused when it is not
/// a regular file or larger than [`crate::plan::PLAN_FILE_CAP`].
pub(crate) fn read_plan_bytes(path: &Path) -> Result<Vec<u8>, ApplyCmdError> {
    use crate::json_file::{self, ReadError};
    let cap = crate::plan::PLAN_FILE_CAP;
    let read = if path == Path::new("-") {
        json_file::read_capped(std::io::stdin().lock(), cap)
    } else {
        json_file::read(path, cap)
    };
    let path = path.display().to_string();
    read.map_err(|e| match e {
        ReadError::NotAFile(kind) => ApplyCmdError::PlanNotAFile { path, kind },
        ReadError::TooLarge { size, cap } => ApplyCmdError::PlanTooLarge { path, size, cap },
        ReadError::Io(e) => ApplyCmdError::BadPlanFile {
            path,
            reason: e.to_string(),
        },
    })
}

/// A plan file's JSON, refused when an object in it holds a key twice.
pub(crate) fn parse_plan_json(
    path: &Path,
    bytes: &[u8],
) -> Result<serde_json::Value, ApplyCmdError> {
    use crate::json_file::JsonError;
    crate::json_file::parse_unique(bytes).map_err(|e| match e {
        JsonError::Duplicate(reason) => ApplyCmdError::PlanDuplicateKey {
            path: path.display().to_string(),
            reason,
        },
        JsonError::Syntax(e) => ApplyCmdError::BadPlanFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        },
    })
}

fn read_plan_file(path: &Path) -> miette::Result<crate::plan::Plan> {
    let bytes = read_plan_bytes(path)?;
    let value = parse_plan_json(path, &bytes)?;
    if let Some(found) = crate::plan::foreign_format_version(&value) {
        return Err(ApplyCmdError::FormatVersion {
            path: path.display().to_string(),
            found,
            expected: crate::plan::FORMAT_VERSION,
            writer: value
                .pointer("/inputs/moorline_version")
                .and_then(serde_json::Value::as_str)
                .map_or_else(
                    || "another version of moorline".to_owned(),
                    |v| format!("moorline {}", crate::plan::clip(v)),
                ),
        }
        .into());
    }
    serde_json::from_value(value).map_err(|e| {
        ApplyCmdError::BadPlanFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        }
        .into()
    })
}

/// The refusal of a plan with unit conflicts, naming each file and the
/// command that adopts them (`how` depends on where the plan came from).
fn conflict_error(p: &crate::plan::Plan, source: PlanSource) -> ApplyCmdError {
    let files: Vec<String> = p
        .conflicts
        .iter()
        .map(|c| format!("{} (service {})", c.path, c.service))
        .collect();
    let files = format!("\n  - {}", files.join("\n  - "));
    let flags = p
        .conflicts
        .iter()
        .map(|c| format!("--adopt {}", c.service))
        .collect::<Vec<_>>()
        .join(" ");
    let env = &p.environment;
    let how = match source {
        PlanSource::Saved => format!(
            "make the plan again with `moorline plan --env {env} {flags} --out FILE`, review it, and apply that"
        ),
        PlanSource::Reviewed => format!(
            "have a plan made with `moorline plan --env {env} {flags} --out FILE` reviewed, and apply that with --reviewed"
        ),
        PlanSource::Here => format!(
            "`moorline apply --env {env} {flags}` (the plan shows the adoption first), or `moorline plan --env {env} {flags} --out FILE` to review it"
        ),
    };
    ApplyCmdError::UnitConflict { files, how }
}

/// Where the plan being applied came from.
#[derive(Debug, Clone, Copy)]
enum PlanSource {
    Saved,
    Reviewed,
    Here,
}

/// Why a saved plan is stale, for the diagnostic: one reason on the line,
/// several as a list.
fn stale_reasons(saved: &crate::plan::Plan, fresh: &crate::plan::Plan) -> String {
    super::one_or_list(&crate::plan::stale::what_moved(saved, fresh))
}

/// Refuses a plan that does not see uncommitted changes, unless allowed.
fn refuse_dirty(p: &crate::plan::Plan, allowed: bool) -> Result<(), ApplyCmdError> {
    if p.uncommitted.is_empty() || allowed {
        return Ok(());
    }
    Err(ApplyCmdError::Dirty {
        paths: p.uncommitted.join("\n  - "),
    })
}

/// Refuses a plan whose revision its `promote-from` source never ran
/// healthy, unless the check was skipped (which the plan shows).
fn refuse_unpromoted(p: &crate::plan::Plan) -> Result<(), ApplyCmdError> {
    match &p.promotion {
        Some(pr) if !pr.healthy && !pr.skipped => Err(ApplyCmdError::NotPromoted {
            env: p.environment.clone(),
            source_env: pr.source.clone(),
            sha: crate::plan::short(&p.to.sha).to_owned(),
            why: {
                let (source, sha) = (&pr.source, crate::plan::short(&p.to.sha));
                match (&pr.ran, &pr.unavailable) {
                    (Some(_), _) => {
                        format!("{source} ran {sha}, but it was rolled back by hand there")
                    }
                    (None, Some(u)) => format!("{source} never ran {sha} ({u})"),
                    (None, None) => format!("{source} never ran {sha}"),
                }
            },
        }),
        _ => Ok(()),
    }
}

pub fn run(global: &Global, args: &ApplyArgs) -> miette::Result<i32> {
    // A fleet plan goes to the fleet controller.
    if let Some(path) = &args.plan
        && let Some(fp) = super::fleet::read_fleet_plan(path)?
    {
        let t = settings::resolve(global, &fp.environment)?;
        return super::fleet::apply(global, args, &t, Some(fp));
    }
    // A reviewed fleet plan: the controller plans every host again and
    // checks each does what was reviewed.
    if let Some(path) = &args.reviewed
        && let Some(fp) = super::fleet::read_fleet_plan(path)?
    {
        let env = args.env.clone().unwrap_or_else(|| fp.environment.clone());
        let t = settings::resolve(global, &env)?;
        return super::fleet::apply_reviewed(global, args, &t, fp);
    }
    // Plan files are read (and their format checked) before anything else.
    let saved = args.plan.as_deref().map(read_plan_file).transpose()?;
    let reviewed = args.reviewed.as_deref().map(read_plan_file).transpose()?;
    let env_name = match (&saved, &args.env) {
        (Some(p), _) => p.environment.clone(),
        (None, Some(e)) => e.clone(),
        (None, None) => return Err(ApplyCmdError::NoTarget.into()),
    };
    let t = settings::resolve(global, &env_name)?;
    if saved.is_none() && super::fleet::is_fleet(global, &t) {
        return super::fleet::apply(global, args, &t, None);
    }
    let _lock = crate::lock::acquire(&t.state_dir, "apply")?;
    let rt = runtime()?;
    let connect = || {
        executor(
            &t,
            args.jobs,
            args.on_failure == OnFailure::Rollback,
            args.format,
        )
    };
    rt.block_on(async {
        if args.resume {
            let ctx = connect().await?;
            crate::commands::removed_empty_backups(&t);
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
            let fresh = crate::observe::compute_plan(
                &t,
                &PlanRequest {
                    from: saved.from.as_ref().map(|f| f.sha.clone()),
                    to: Some(saved.to.sha.clone()),
                    allow_non_ancestor: saved.inputs.allow_non_ancestor,
                    adopt: saved.inputs.adopt.clone(),
                    skip_promotion_check: saved.inputs.skip_promotion_check,
                    on_host: true,
                },
            )?;
            if fresh.has_conflicts() {
                return Err(conflict_error(&fresh, PlanSource::Saved).into());
            }
            if fresh.fingerprint != saved.fingerprint || fresh.actions != saved.actions {
                return Err(ApplyCmdError::Stale {
                    moved: stale_reasons(&saved, &fresh),
                    env: env_name.clone(),
                }
                .into());
            }
            if fresh.has_changes() {
                refuse_dirty(&fresh, args.allow_dirty)?;
                refuse_unpromoted(&fresh)?;
            }
            if !args.yes
                && !confirm(&format!(
                    "Apply the saved plan ({} actions) to {env_name}?",
                    fresh.actions.len()
                ))
            {
                return Err(ApplyCmdError::Unconfirmed.into());
            }
            fresh
        } else {
            let p = crate::observe::compute_plan(
                &t,
                &PlanRequest {
                    from: args.from.clone(),
                    to: args
                        .to
                        .clone()
                        .or_else(|| reviewed.as_ref().map(|r| r.to.sha.clone())),
                    allow_non_ancestor: args.allow_non_ancestor
                        || reviewed
                            .as_ref()
                            .is_some_and(|r| r.inputs.allow_non_ancestor),
                    adopt: args
                        .adopt
                        .iter()
                        .chain(reviewed.iter().flat_map(|r| &r.inputs.adopt))
                        .cloned()
                        .collect(),
                    skip_promotion_check: args.skip_promotion_check
                        || reviewed
                            .as_ref()
                            .is_some_and(|r| r.inputs.skip_promotion_check),
                    on_host: true,
                },
            )?;
            // What the source environment proved comes first: without it,
            // nothing else about this plan matters.
            if p.has_changes()
                && let Err(e) = refuse_unpromoted(&p)
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
                return Err(conflict_error(&p, source).into());
            }
            if let Some(r) = &reviewed {
                let differences = crate::plan::review_differences(r, &p, args.to.is_none());
                if !differences.is_empty() {
                    return Err(ApplyCmdError::NotAsReviewed {
                        differences: differences.join("\n  "),
                    }
                    .into());
                }
            }
            if args.format != Format::Json {
                eprint!("{}", render::text(&p, report::stderr_color()));
            }
            if !p.has_changes() {
                println!("nothing to apply: {env_name} is up to date");
                return Ok(exit::OK);
            }
            refuse_dirty(&p, args.allow_dirty)?;
            if t.env.approval && reviewed.is_none() {
                return Err(ApplyCmdError::ApprovalRequired {
                    env: env_name.clone(),
                }
                .into());
            }
            if !args.yes
                && !confirm(&format!(
                    "Apply these {} actions to {env_name}?",
                    p.actions.len()
                ))
            {
                return Err(ApplyCmdError::Unconfirmed.into());
            }
            p
        };
        if !plan.has_changes() {
            println!("nothing to apply: {env_name} is up to date");
            return Ok(exit::OK);
        }
        // What the plan needs from this host (users, env-files, programs, ports), before any
        // change.
        crate::hostfacts::refuse_missing(t.config(), &t.env, &plan)?;
        // Only now, with a plan that is worth applying, talk to systemd.
        let ctx = connect().await?;
        let operation = plan.operation;
        let report = crate::execute::apply(ctx, plan).await?;
        Ok(print_report(&report, &env_name, args.format, operation))
    })
}

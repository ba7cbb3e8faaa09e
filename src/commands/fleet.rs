//! The fleet commands on the controller: `plan` (over ssh, or here with
//! `--from`), `apply` (saved, reviewed, planned here, `--resume`),
//! `rollback`, `status`, `logs`, and the commands run `--on` hosts
//! (`backup`, `restart`, `start`, `stop`, `enable`, `disable`) of an
//! environment with hosts, when no `--host` says "this is one host of it".
//! Prints and maps outcomes to exit codes; the work is in `crate::fleet`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::settings;
use crate::cli::{
    ApplyArgs, Format, Global, LogsArgs, OutputFormat, PlanArgs, RollbackArgs, StatusArgs,
};
use crate::fleet::apply::{Rollout, Summary};
use crate::fleet::journal::{self, HostOutcome, Journal, Record};
use crate::fleet::plan::{self as fplan, FleetPlan, Gathered, HostPlan, HostPlanArgs};
use crate::fleet::remote::{Checkout, Prepared};
use crate::fleet::stale::{review_differences, what_moved};
use crate::fleet::{Fleet, FleetError, render};
use crate::target::Target;
use crate::{exit, report};

use super::apply::ApplyCmdError;
use super::{confirm, print_and_save, runtime, stdout_color};

/// The `--host NAME` flag: this process is one host of a fleet.
fn host_flag(global: &Global) -> Option<&str> {
    global.host_name()
}

/// Whether `env` is deployed by the fleet controller from here.
pub fn is_fleet(global: &Global, t: &Target) -> bool {
    !t.env.hosts.is_empty() && host_flag(global).is_none()
}

/// Refuses a command the fleet controller does not run over its hosts
/// (yet), rather than run it on the controller's own machine.
pub fn refuse_on_controller(global: &Global, t: &Target, command: &str) -> miette::Result<()> {
    if is_fleet(global, t) {
        return Err(FleetError::NotOnController {
            command: command.to_owned(),
            env: t.env.name.clone(),
        }
        .into());
    }
    Ok(())
}

/// `--on` names hosts of a fleet: refused for an environment without any.
pub fn no_hosts_to_be_on(on: &[String], env: &str) -> miette::Result<()> {
    match on.first() {
        Some(name) => Err(FleetError::UnknownHost {
            name: name.clone(),
            env: env.to_owned(),
            hosts: "none: it is deployed where moorline runs; leave --on out".to_owned(),
        }
        .into()),
        None => Ok(()),
    }
}

fn fleet(global: &Global, t: &Target) -> Result<Arc<Fleet>, FleetError> {
    Ok(Arc::new(Fleet::new(
        t,
        global.ssh_config.clone(),
        global.systemd.map(|k| settings::systemd_kind(Some(k))),
    )?))
}

/// The error for hosts that could not be reached: the host's own error
/// when there is one, else a list.
fn unreachable_error(gathered: &[Gathered]) -> Option<FleetError> {
    let mut down = fplan::unreachable(gathered);
    match down.len() {
        0 => None,
        1 => {
            let (h, e) = down.remove(0);
            Some(match e {
                crate::fleet::SshError::HostKey {
                    host,
                    address,
                    detail,
                } => FleetError::Ssh(crate::fleet::SshError::HostKey {
                    host: host.clone(),
                    address: address.clone(),
                    detail: detail.clone(),
                }),
                other => FleetError::UnreachableBeforeStart {
                    hosts: format!("{} ({other})", h.name),
                },
            })
        }
        _ => Some(FleetError::UnreachableBeforeStart {
            hosts: down.iter().fold(String::new(), |mut s, (h, e)| {
                use std::fmt::Write as _;
                let _ = write!(s, "\n  - {} ({e})", h.name);
                s
            }),
        }),
    }
}

fn host_plans(fleet: &Fleet, gathered: &[Gathered]) -> Vec<HostPlan> {
    gathered
        .iter()
        .filter_map(|g| match g {
            Gathered::Planned(p, plan) => {
                let h = fleet.host(&p.host.name)?;
                Some(HostPlan {
                    name: h.name.clone(),
                    address: h.address.clone(),
                    user: h.user.clone(),
                    port: h.port,
                    plan: (**plan).clone(),
                })
            }
            Gathered::Unreachable(..) => None,
        })
        .collect()
}

fn prepared(gathered: Vec<Gathered>) -> BTreeMap<String, Prepared> {
    gathered
        .into_iter()
        .filter_map(|g| match g {
            Gathered::Planned(p, _) => Some((p.host.name.clone(), p)),
            Gathered::Unreachable(..) => None,
        })
        .collect()
}

/// `plan --env E` of a fleet.
pub fn plan(global: &Global, args: &PlanArgs, t: &Target) -> miette::Result<i32> {
    let to = fplan::target(t, args.target.to.as_deref())?;
    let found = crate::fleet::uncommitted(t)?;
    for p in found.changes {
        eprintln!("warning: uncommitted, not in the plan (hosts get commits only): {p}");
    }
    for u in found.unchecked {
        eprintln!("warning: {}", crate::observe::unchecked_warning(&u));
    }
    if args.target.from.is_some() {
        let p = plan_offline(global, args, t, to)?;
        return print_fleet_plan(args, &p);
    }
    let fleet = fleet(global, t)?;
    let host_args = HostPlanArgs {
        allow_non_ancestor: args.target.allow_non_ancestor,
        adopt: args.target.adopt.clone(),
        skip_promotion_check: args.target.skip_promotion_check,
    };
    let rt = runtime()?;
    let p = rt.block_on(async {
        let res = fplan::gather(&fleet, &to.sha, &host_args).await;
        fleet.transport.close_all(fleet.hosts()).await;
        let gathered = res?;
        if let Some(e) = unreachable_error(&gathered) {
            return Err(e);
        }
        Ok(fplan::assemble(
            &fleet.project,
            &fleet.env.name,
            to,
            &fleet.env.rollout,
            host_plans(&fleet, &gathered),
        ))
    })?;
    print_fleet_plan(args, &p)
}

fn print_fleet_plan(args: &PlanArgs, p: &FleetPlan) -> miette::Result<i32> {
    print_and_save(
        args,
        |f| match f {
            Format::Text => render::text(p, stdout_color()),
            Format::Markdown => render::markdown(p),
            Format::Json => render::json(p),
        },
        "fleet plan",
        &p.fingerprint,
    )?;
    Ok(if args.detailed_exitcode && p.has_changes() {
        exit::CHANGES
    } else {
        exit::OK
    })
}

/// `plan --env E --from REV` of a fleet: every host planned here, without
/// ssh, as if `--from` were deployed on it (each host's plan is what
/// `moorline --host NAME plan --from REV` makes). For pull-request review
/// on a runner that holds no key to the hosts: its fingerprint never
/// matches the hosts (`apply FILE` refuses it), `apply --reviewed` compares
/// what it does with the hosts' real plans.
fn plan_offline(
    global: &Global,
    args: &PlanArgs,
    t: &Target,
    to: crate::changes::Rev,
) -> miette::Result<FleetPlan> {
    let loaded = t.loaded.clone();
    let mut request = super::request(&args.target);
    request.to = Some(to.sha.clone());
    let mut hosts = Vec::new();
    for h in &t.env.hosts {
        let ht = crate::target::resolve(
            loaded.clone(),
            &t.env.name,
            &settings::choices(global, Some(&h.name)),
        )?;
        hosts.push(HostPlan {
            name: h.name.clone(),
            address: h.address.clone(),
            user: h.user.clone(),
            port: h.port,
            plan: crate::observe::compute_plan(&ht, &request)?,
        });
    }
    let mut p = fplan::assemble(
        &t.config().project.name,
        &t.env.name,
        to,
        &t.env.rollout,
        hosts,
    );
    // Every host's plan starts from the same resolved `--from`.
    p.planned_from = Some(
        p.hosts
            .first()
            .and_then(|h| h.plan.from.as_ref())
            .map_or_else(|| "none".to_owned(), |r| r.sha.clone()),
    );
    Ok(p)
}

/// A saved fleet plan, when `path` holds one (`None`: a host's plan).
pub fn read_fleet_plan(path: &Path) -> miette::Result<Option<FleetPlan>> {
    if path == Path::new("-") {
        return Ok(None);
    }
    let bad = |reason: String| ApplyCmdError::BadPlanFile {
        path: path.display().to_string(),
        reason,
    };
    let bytes = super::apply::read_plan_bytes(path)?;
    let value = super::apply::parse_plan_json(path, &bytes)?;
    match value.get("fleet_format_version") {
        None => Ok(None),
        Some(v) if v.as_u64() == Some(u64::from(fplan::FLEET_FORMAT_VERSION)) => Ok(Some(
            serde_json::from_value(value).map_err(|e| bad(e.to_string()))?,
        )),
        Some(v) => Err(bad(format!(
            "fleet_format_version {v}; this moorline reads only {}",
            fplan::FLEET_FORMAT_VERSION
        ))
        .into()),
    }
}

/// `apply --reviewed FLEETPLAN`: a fleet plan reviewed elsewhere (a pull
/// request), applied as each host plans it now when every host's plan does
/// what the reviewed one does.
pub fn apply_reviewed(
    global: &Global,
    args: &ApplyArgs,
    t: &Target,
    reviewed: FleetPlan,
) -> miette::Result<i32> {
    run_apply(global, args, t, Source::Reviewed(reviewed))
}

/// `apply` of a fleet: a saved fleet plan, or plan here and confirm.
pub fn apply(
    global: &Global,
    args: &ApplyArgs,
    t: &Target,
    saved: Option<FleetPlan>,
) -> miette::Result<i32> {
    if args.reviewed.is_some() {
        return Err(FleetError::Local {
            what: "apply --reviewed with a host's plan in a fleet environment".to_owned(),
            help: format!(
                "review a fleet plan (`moorline plan --env {e} --out FILE` on the controller) and apply it with `moorline apply FILE` or `moorline apply --env {e} --reviewed FILE`",
                e = t.env.name
            ),
            source: None,
        }
        .into());
    }
    run_apply(global, args, t, saved.map_or(Source::Fresh, Source::Saved))
}

/// Where a fleet apply's plan comes from.
enum Source {
    /// Planned now, shown and confirmed.
    Fresh,
    /// A saved fleet plan: applied as it is, refused if any host moved.
    Saved(FleetPlan),
    /// A reviewed fleet plan: planned now, refused if any host's plan does
    /// something else.
    Reviewed(FleetPlan),
}

fn run_apply(global: &Global, args: &ApplyArgs, t: &Target, source: Source) -> miette::Result<i32> {
    let fleet = fleet(global, t)?;
    let _lock = crate::lock::acquire(&fleet.dir, "fleet apply")?;
    if !args.resume && !args.allow_dirty {
        let dirty = crate::fleet::uncommitted(t)?.changes;
        if !dirty.is_empty() {
            return Err(FleetError::Dirty {
                paths: dirty.join("\n  - "),
            }
            .into());
        }
    }
    let rt = runtime()?;
    let res = rt.block_on(async {
        if args.resume {
            return resume(&fleet, args.format).await;
        }
        if let Some(r) = journal::read(&fleet.dir)? {
            return Err(FleetError::Local {
                what: format!("start a rollout: rollout {} is unfinished", r.rollout_id),
                help: format!(
                    "finish it with `moorline apply --resume --env {e}`, or undo it with `moorline rollback --env {e}`",
                    e = fleet.env.name
                ),
                source: None,
            }
            .into());
        }
        let to = match &source {
            Source::Saved(s) => t.repo.resolve(&s.to.sha)?,
            Source::Reviewed(r) if args.to.is_none() => t.repo.resolve(&r.to.sha)?,
            Source::Reviewed(_) | Source::Fresh => fplan::target(t, args.to.as_deref())?,
        };
        let host_args = match &source {
            Source::Saved(s) | Source::Reviewed(s) => s
                .hosts
                .first()
                .map(|h| HostPlanArgs {
                    allow_non_ancestor: h.plan.inputs.allow_non_ancestor,
                    adopt: h.plan.inputs.adopt.clone(),
                    skip_promotion_check: h.plan.inputs.skip_promotion_check,
                })
                .unwrap_or_default(),
            Source::Fresh => HostPlanArgs {
                allow_non_ancestor: args.allow_non_ancestor,
                adopt: args.adopt.clone(),
                skip_promotion_check: args.skip_promotion_check,
            },
        };
        let gathered = fplan::gather(&fleet, &to.sha, &host_args).await?;
        let skipped: Vec<String> = fplan::unreachable(&gathered)
            .iter()
            .map(|(h, _)| h.name.clone())
            .collect();
        if !args.skip_unreachable
            && let Some(e) = unreachable_error(&gathered)
        {
            return Err(e.into());
        }
        for (h, e) in fplan::unreachable(&gathered) {
            eprintln!("[{}] skipped: {e}", h.name);
        }
        let fresh = fplan::assemble(
            &fleet.project,
            &fleet.env.name,
            to,
            &fleet.env.rollout,
            host_plans(&fleet, &gathered),
        );
        let plan = if let Source::Reviewed(reviewed) = &source {
            let differences =
                review_differences(reviewed, &fresh, &skipped, args.to.is_none());
            if !differences.is_empty() {
                return Err(FleetError::NotAsReviewed {
                    differences: super::one_or_list(&differences),
                    env: fleet.env.name.clone(),
                }
                .into());
            }
            if args.format != Format::Json {
                eprint!(
                    "{}",
                    crate::secrets::redact(&render::text(&fresh, report::stderr_color()))
                );
            }
            fresh
        } else if let Source::Saved(saved) = source {
            let moved = what_moved(&saved, &fresh, &skipped);
            if !moved.is_empty() {
                return Err(FleetError::Stale {
                    moved: super::one_or_list(&moved),
                    env: fleet.env.name.clone(),
                }
                .into());
            }
            saved
        } else {
            if args.format != Format::Json {
                eprint!(
                    "{}",
                    crate::secrets::redact(&render::text(&fresh, report::stderr_color()))
                );
            }
            if fresh.has_changes() && fleet.env.approval {
                return Err(ApplyCmdError::ApprovalRequired {
                    env: fleet.env.name.clone(),
                }
                .into());
            }
            fresh
        };
        if !plan.has_changes() {
            println!("nothing to apply: every host of {} is up to date", fleet.env.name);
            return Ok(exit::OK);
        }
        if !args.yes
            && !confirm(&format!(
                "Roll this plan out to {} hosts of {}?",
                plan.hosts.len(),
                fleet.env.name
            ))
        {
            return Err(ApplyCmdError::Unconfirmed.into());
        }
        let rollout_id = crate::execute::new_apply_id();
        let mut j = Journal::create(&fleet.dir, &rollout_id, &plan)?;
        for h in &skipped {
            j.append(&Record::HostFinished {
                host: h.clone(),
                outcome: HostOutcome::Unreachable,
                code: None,
            })?;
        }
        drop(j);
        let Some(replay) = journal::read(&fleet.dir)? else {
            return Err(FleetError::Local {
                what: "read back the fleet journal just written".to_owned(),
                help: "check the state directory".to_owned(),
                source: None,
            }
            .into());
        };
        run_rollout(&fleet, replay, prepared(gathered), args.format).await
    });
    rt.block_on(fleet.transport.close_all(fleet.hosts()));
    res
}

/// Drives (or finishes) the rollout of `replay` and reports it.
async fn run_rollout(
    fleet: &Arc<Fleet>,
    replay: journal::Replay,
    prepared: BTreeMap<String, Prepared>,
    format: Format,
) -> miette::Result<i32> {
    let r = Arc::new(Rollout {
        fleet: Arc::clone(fleet),
        plan: replay.plan.clone(),
        prepared,
        json: format == Format::Json,
        journal: Mutex::new(Journal::reopen(&fleet.dir)?),
        rollout_id: replay.rollout_id.clone(),
    });
    let summary = r.drive(&replay).await?;
    let code = summary.exit_code();
    if summary
        .outcomes
        .values()
        .any(|o| *o == HostOutcome::Unknown)
    {
        // Left unfinished: `apply --resume` or `rollback` settles the
        // hosts that dropped once they can be reached.
        print_summary(&summary, &fleet.env.name, format);
        eprintln!(
            "the rollout stays unfinished: when the hosts marked unknown can be reached, finish it with `moorline apply --resume --env {e}` or undo it with `moorline rollback --env {e}`",
            e = fleet.env.name
        );
        return Ok(code);
    }
    let outcome = match code {
        exit::OK => "succeeded",
        exit::ROLLED_BACK => "rolled-back",
        _ => "needs-attention",
    };
    let journal = Arc::try_unwrap(r)
        .ok()
        .and_then(|r| r.journal.into_inner().ok());
    if let Some(j) = journal {
        j.finish(outcome, &replay.rollout_id)?;
    }
    print_summary(&summary, &fleet.env.name, format);
    Ok(code)
}

fn print_summary(s: &Summary, env: &str, format: Format) {
    if format == Format::Json {
        let hosts: BTreeMap<&String, serde_json::Value> = s
            .outcomes
            .iter()
            .map(|(h, o)| {
                (
                    h,
                    serde_json::json!({
                        "outcome": o.as_str(),
                        "rolled_back": s.rolled_back.get(h),
                    }),
                )
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "event": "fleet-report",
                "exit_code": s.exit_code(),
                "rollback_reason": s.rollback_reason,
                "needs_attention": s.attention(),
                "hosts": hosts,
            })
        );
        return;
    }
    eprintln!();
    for (h, o) in &s.outcomes {
        let rb = match s.rolled_back.get(h) {
            Some(true) => ", rolled back by the fleet",
            Some(false) => ", fleet rollback FAILED",
            None => "",
        };
        eprintln!("  {h}: {}{rb}", o.as_str());
    }
    match s.exit_code() {
        exit::OK => eprintln!("fleet apply of {env} succeeded"),
        exit::ROLLED_BACK => eprintln!(
            "fleet apply of {env} failed ({}) and every host is back on its previous release",
            s.rollback_reason.as_deref().unwrap_or("")
        ),
        _ => eprintln!(
            "fleet apply of {env} needs attention on: {}\n(a host marked unknown lost its connection mid-apply: run `moorline status --env {env}`; its own journal resumes it with `moorline apply --resume --env {env}`)",
            s.attention().join(", ")
        ),
    }
}

/// Prepares the hosts of an unfinished rollout (the unreachable ones are
/// left out: they are reported as such).
async fn prepare_all(fleet: &Arc<Fleet>, plan: &FleetPlan) -> BTreeMap<String, Prepared> {
    let mut set = tokio::task::JoinSet::new();
    for h in &plan.hosts {
        let Some(host) = fleet.host(&h.name).cloned() else {
            continue;
        };
        let (fleet, to) = (Arc::clone(fleet), plan.to.sha.clone());
        set.spawn(async move {
            match crate::fleet::remote::prepare(&fleet, &host, &to, Checkout::Target).await {
                Ok(p) => Some(p),
                Err(e) => {
                    eprintln!("[{}] {e}", host.name);
                    None
                }
            }
        });
    }
    let mut out = BTreeMap::new();
    while let Some(j) = set.join_next().await {
        if let Ok(Some(p)) = j {
            out.insert(p.host.name.clone(), p);
        }
    }
    out
}

/// `apply --resume` of a fleet: finishes the unfinished rollout.
async fn resume(fleet: &Arc<Fleet>, format: Format) -> miette::Result<i32> {
    let Some(replay) = journal::read(&fleet.dir)? else {
        println!(
            "nothing to resume: no unfinished rollout of {}",
            fleet.env.name
        );
        return Ok(exit::OK);
    };
    if replay.rollback_begun() {
        eprintln!("finishing the rollback of rollout {}", replay.rollout_id);
        let code = undo_rollout(fleet, replay, format).await?;
        // The rollout failed and was rolled back: that is apply's exit 3.
        return Ok(if code == exit::OK {
            exit::ROLLED_BACK
        } else {
            code
        });
    }
    eprintln!("resuming rollout {}", replay.rollout_id);
    let prepared = prepare_all(fleet, &replay.plan).await;
    run_rollout(fleet, replay, prepared, format).await
}

/// `rollback --env E` of a fleet: an unfinished rollout is undone (every
/// host it started goes back); without one, every host rolls back its
/// last apply.
pub fn rollback(global: &Global, args: &RollbackArgs, t: &Target) -> miette::Result<i32> {
    let fleet = fleet(global, t)?;
    let _lock = crate::lock::acquire(&fleet.dir, "fleet rollback")?;
    let rt = runtime()?;
    let res = rt.block_on(async {
        if let Some(replay) = journal::read(&fleet.dir)? {
            return undo_rollout(&fleet, replay, args.format).await;
        }
        if !args.yes
            && !confirm(&format!(
                "Roll back the last apply on every host of {}?",
                fleet.env.name
            ))
        {
            return Err(ApplyCmdError::Unconfirmed.into());
        }
        let to = fplan::target(t, None)?;
        let mut set = tokio::task::JoinSet::new();
        for host in fleet.hosts().to_vec() {
            let (fleet, to) = (Arc::clone(&fleet), to.sha.clone());
            let mut words: Vec<String> = vec![
                "rollback".into(),
                "--env".into(),
                fleet.env.name.clone(),
                "--yes".into(),
            ];
            for s in &args.services {
                words.push("--service".into());
                words.push(s.clone());
            }
            if let Some(r) = &args.to {
                words.push("--to".into());
                words.push(r.clone());
            }
            if args.database {
                words.push("--database".into());
            }
            set.spawn(async move {
                let res = run_on(&fleet, &host, &to, &words).await;
                (host.name.clone(), res)
            });
        }
        let mut failed = Vec::new();
        let mut results = Vec::new();
        while let Some(Ok(r)) = set.join_next().await {
            results.push(r);
        }
        results.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, res) in results {
            match res {
                Ok(out) => {
                    for line in String::from_utf8_lossy(&out.stdout).lines() {
                        println!("[{name}] {line}");
                    }
                    for line in out.stderr.lines() {
                        eprintln!("[{name}] {line}");
                    }
                    if out.code != 0 {
                        failed.push(name);
                    }
                }
                Err(e) => {
                    eprintln!("[{name}] {e}");
                    failed.push(name);
                }
            }
        }
        if failed.is_empty() {
            eprintln!("every host of {} rolled back", fleet.env.name);
            Ok(exit::OK)
        } else {
            eprintln!("the rollback did not finish on: {}", failed.join(", "));
            Ok(exit::NEEDS_ATTENTION)
        }
    });
    rt.block_on(fleet.transport.close_all(fleet.hosts()));
    res
}

/// Undoes an unfinished rollout: hosts whose apply the controller never
/// saw end finish theirs first (their own journal), then every host that
/// runs the rollout's target goes back.
async fn undo_rollout(
    fleet: &Arc<Fleet>,
    replay: journal::Replay,
    format: Format,
) -> miette::Result<i32> {
    eprintln!("rolling back the unfinished rollout {}", replay.rollout_id);
    let prepared = prepare_all(fleet, &replay.plan).await;
    let finished = replay.finished();
    let already = replay.rolled_back();
    let mut j = Journal::reopen(&fleet.dir)?;
    if !replay.rollback_begun() {
        j.append(&Record::RollbackBegin {
            reason: "`moorline rollback` on the controller".to_owned(),
        })?;
    }
    drop(j);
    let r = Arc::new(Rollout {
        fleet: Arc::clone(fleet),
        plan: replay.plan.clone(),
        prepared,
        json: format == Format::Json,
        journal: Mutex::new(Journal::reopen(&fleet.dir)?),
        rollout_id: replay.rollout_id.clone(),
    });
    let mut outcomes = finished.clone();
    let mut targets = Vec::new();
    for host in replay.started() {
        if already.get(&host) == Some(&true) {
            continue;
        }
        match finished.get(&host) {
            Some(HostOutcome::Succeeded) => targets.push(host),
            Some(HostOutcome::Unknown) | None => {
                // Its apply may have gone on, stopped or never begun
                // there: the host's own journal settles it first.
                let Some(p) = r.prepared.get(&host) else {
                    outcomes.insert(host, HostOutcome::Unknown);
                    continue;
                };
                let (settled, _) = r.settle(p).await;
                match (settled, r.runs_target(p).await) {
                    (HostOutcome::Succeeded, Ok(true)) => {
                        outcomes.insert(host.clone(), HostOutcome::Succeeded);
                        targets.push(host);
                    }
                    (HostOutcome::Succeeded, Ok(false)) => {
                        outcomes.insert(host, HostOutcome::RolledBack);
                    }
                    (o @ (HostOutcome::RolledBack | HostOutcome::Failed), _) => {
                        outcomes.insert(host, o);
                    }
                    _ => {
                        outcomes.insert(host, HostOutcome::Unknown);
                    }
                }
            }
            Some(_) => {}
        }
    }
    let mut rolled_back = already;
    rolled_back.extend(r.roll_back_hosts(&targets).await?);
    let summary = Summary {
        outcomes,
        rolled_back,
        rollback_reason: Some("rollback asked for".to_owned()),
    };
    let code = summary.exit_code();
    print_summary(&summary, &fleet.env.name, format);
    if summary
        .outcomes
        .values()
        .any(|o| *o == HostOutcome::Unknown)
    {
        eprintln!(
            "the rollout stays unfinished: run `moorline rollback --env {}` again when every host can be reached",
            fleet.env.name
        );
        return Ok(code);
    }
    let outcome = if code == exit::ROLLED_BACK {
        "rolled-back"
    } else {
        "needs-attention"
    };
    if let Some(j) = Arc::try_unwrap(r)
        .ok()
        .and_then(|r| r.journal.into_inner().ok())
    {
        j.finish(outcome, &replay.rollout_id)?;
    }
    // Asked for a rollback and got one: that is success.
    Ok(if code == exit::ROLLED_BACK {
        exit::OK
    } else {
        code
    })
}

/// Prepares `host` on `to` and runs its moorline with `words`.
async fn run_on(
    fleet: &Fleet,
    host: &crate::config::Host,
    to: &str,
    words: &[String],
) -> Result<crate::fleet::ssh::Output, FleetError> {
    let p = crate::fleet::remote::prepare(fleet, host, to, Checkout::Keep).await?;
    let args: Vec<&str> = words.iter().map(String::as_str).collect();
    Ok(fleet
        .transport
        .run(host, &p.moorline(&args), crate::fleet::ssh::Input::Null)
        .await?)
}

/// `status --env E` of a fleet: every host's status, each under its name.
pub fn status(global: &Global, args: &StatusArgs, t: &Target) -> miette::Result<i32> {
    let fleet = fleet(global, t)?;
    let to = fplan::target(t, None)?;
    let mut words: Vec<String> = vec!["status".into(), "--env".into(), fleet.env.name.clone()];
    if args.format == OutputFormat::Json {
        words.extend(["--format".into(), "json".into()]);
    }
    if args.check {
        words.push("--check".into());
    }
    if args.fail_behind {
        words.push("--fail-behind".into());
    }
    if args.migrations {
        words.push("--migrations".into());
    }
    let rt = runtime()?;
    let results = rt.block_on(async {
        let permits = Arc::new(tokio::sync::Semaphore::new(
            usize::try_from(fleet.env.rollout.connections.max(1)).unwrap_or(8),
        ));
        let mut set = tokio::task::JoinSet::new();
        for (i, host) in fleet.hosts().iter().cloned().enumerate() {
            let (fleet, to, words, permits) = (
                Arc::clone(&fleet),
                to.sha.clone(),
                words.clone(),
                Arc::clone(&permits),
            );
            set.spawn(async move {
                let _p = permits.acquire_owned().await;
                (
                    i,
                    host.name.clone(),
                    run_on(&fleet, &host, &to, &words).await,
                )
            });
        }
        let mut v = Vec::new();
        while let Some(Ok(r)) = set.join_next().await {
            v.push(r);
        }
        fleet.transport.close_all(fleet.hosts()).await;
        v.sort_by_key(|r| r.0);
        v
    });
    let mut unhealthy = false;
    let mut json = serde_json::Map::new();
    for (_, name, res) in results {
        match res {
            Ok(out) => {
                if out.code != 0 {
                    unhealthy = true;
                }
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                if args.format == OutputFormat::Json {
                    let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
                    json.insert(
                        name.clone(),
                        serde_json::json!({"exit_code": out.code, "status": v}),
                    );
                } else {
                    println!("=== {name} ===");
                    print!("{text}");
                }
                for line in out.stderr.lines() {
                    eprintln!("[{name}] {line}");
                }
            }
            Err(e) => {
                unhealthy = true;
                if args.format == OutputFormat::Json {
                    json.insert(
                        name.clone(),
                        serde_json::json!({"exit_code": null, "error": e.to_string()}),
                    );
                } else {
                    println!("=== {name} ===\nunreachable: {e}");
                }
            }
        }
    }
    if args.format == OutputFormat::Json {
        println!("{}", serde_json::json!({"hosts": json}));
    }
    Ok(if args.check && unhealthy {
        exit::UNHEALTHY
    } else {
        exit::OK
    })
}

/// `logs --env E` of a fleet: every host's journal, each line prefixed
/// with its host (followed concurrently with `--follow`).
pub fn logs(global: &Global, args: &LogsArgs, t: &Target) -> miette::Result<i32> {
    let fleet = fleet(global, t)?;
    let to = fplan::target(t, None)?;
    let mut words: Vec<String> = vec!["logs".into(), "--env".into(), fleet.env.name.clone()];
    for s in &args.services {
        words.extend(["--service".into(), s.clone()]);
    }
    if let Some(s) = &args.since {
        words.extend(["--since".into(), s.clone()]);
    }
    if args.follow {
        words.push("--follow".into());
    }
    if let Some(n) = args.lines {
        words.extend(["--lines".into(), n.to_string()]);
    }
    if args.format == OutputFormat::Json {
        words.extend(["--format".into(), "json".into()]);
    }
    let json = args.format == OutputFormat::Json;
    let rt = runtime()?;
    let failed = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for host in fleet.hosts().to_vec() {
            let (fleet, to, words) = (Arc::clone(&fleet), to.sha.clone(), words.clone());
            set.spawn(async move { stream_logs(&fleet, &host, &to, &words, json).await });
        }
        let mut failed = false;
        while let Some(r) = set.join_next().await {
            failed |= !matches!(r, Ok(Ok(0)));
        }
        fleet.transport.close_all(fleet.hosts()).await;
        failed
    });
    Ok(if failed { exit::ERROR } else { exit::OK })
}

/// `backup`, `restart`, `start`, `stop`, `enable` and `disable` of a
/// fleet: the host's own command (`words`) run on the hosts `--on` names
/// (every host without it), one host at a time in the configuration's
/// order, stopping at the first that does not exit 0. Standard output
/// passes through as the host prints it, secrets redacted; standard error
/// is prefixed with the host, after a `=== HOST ===` line. There is no
/// terminal on the host: a command that asks needs `--yes`.
pub fn on_hosts(
    global: &Global,
    t: &Target,
    on: &[String],
    words: &[String],
) -> miette::Result<i32> {
    let fleet = fleet(global, t)?;
    if let Some(name) = on.iter().find(|n| fleet.host(n).is_none()) {
        return Err(FleetError::UnknownHost {
            name: name.clone(),
            env: fleet.env.name.clone(),
            hosts: fleet
                .hosts()
                .iter()
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }
        .into());
    }
    let chosen: Vec<crate::config::Host> = fleet
        .hosts()
        .iter()
        .filter(|h| on.is_empty() || on.contains(&h.name))
        .cloned()
        .collect();
    let to = fplan::target(t, None)?;
    let rt = runtime()?;
    Ok(rt.block_on(async {
        let res = one_host_at_a_time(&fleet, &chosen, &to.sha, words).await;
        fleet.transport.close_all(&chosen).await;
        res
    })?)
}

/// The loop of [`on_hosts`]: its exit code.
async fn one_host_at_a_time(
    fleet: &Fleet,
    hosts: &[crate::config::Host],
    to: &str,
    words: &[String],
) -> Result<i32, FleetError> {
    for host in hosts {
        eprintln!("=== {} ===", host.name);
        match stream_on(fleet, host, to, words, |l| println!("{l}")).await? {
            0 => {}
            255 => {
                eprintln!(
                    "[{}] the ssh connection failed: what the command did there is unknown; run it again once the host answers",
                    host.name
                );
                return Ok(exit::NEEDS_ATTENTION);
            }
            c => return Ok(c),
        }
    }
    Ok(exit::OK)
}

/// Runs the host's moorline with `words` (prepared, its checkout kept):
/// each line of its standard output, secrets redacted, goes to `on_line`;
/// its standard error goes to ours, each line redacted and prefixed with
/// the host. Returns its exit code (255: ssh failed).
async fn stream_on(
    fleet: &Fleet,
    host: &crate::config::Host,
    to: &str,
    words: &[String],
    mut on_line: impl FnMut(&str),
) -> Result<i32, FleetError> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let p = crate::fleet::remote::prepare(fleet, host, to, Checkout::Keep).await?;
    let args: Vec<&str> = words.iter().map(String::as_str).collect();
    let mut child = fleet.transport.spawn(host, &p.moorline(&args))?;
    drop(child.stdin.take());
    let err = child.stderr.take().map(|err| {
        let name = host.name.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                eprintln!("[{name}] {}", crate::secrets::redact(&l));
            }
        })
    });
    if let Some(out) = child.stdout.take() {
        let mut lines = BufReader::new(out).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            on_line(&crate::secrets::redact_json_text(&l));
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| FleetError::local("wait for ssh", "", e))?;
    if let Some(h) = err {
        let _ = h.await;
    }
    Ok(status.code().unwrap_or(255))
}

/// One host's journal lines, each prefixed with the host (`json`: a
/// `host` field added to each object).
async fn stream_logs(
    fleet: &Fleet,
    host: &crate::config::Host,
    to: &str,
    words: &[String],
    json: bool,
) -> Result<i32, FleetError> {
    let name = host.name.clone();
    stream_on(fleet, host, to, words, |l| {
        if !json {
            println!("[{name}] {l}");
            return;
        }
        match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(l) {
            Ok(mut m) => {
                m.insert("host".into(), name.clone().into());
                println!("{}", serde_json::Value::Object(m));
            }
            Err(_) => println!("{}", serde_json::json!({"host": name, "line": l})),
        }
    })
    .await
}

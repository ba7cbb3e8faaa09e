//! The fleet commands on the controller: `plan` (over ssh, or here with
//! `--from`), `apply` (saved, reviewed, planned here, `--resume`),
//! `rollback`, `status`, `logs`, and the commands run `--on` hosts
//! (`backup`, `restart`, `start`, `stop`, `enable`, `disable`) of an
//! environment with hosts, when no `--host` says "this is one host of it".
//! Each resolves its arguments, calls the operations of `crate::fleet`
//! (planning in `fleet::plan`, rollouts and host commands in
//! `fleet::control`), passes the gates of [`crate::policy`], prints, and
//! maps outcomes to exit codes.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::settings;
use crate::cli::{
    ApplyArgs, Format, Global, LogsArgs, OutputFormat, PlanArgs, RollbackArgs, StatusArgs,
};
use crate::fleet::apply::Summary;
use crate::fleet::control::{self, Ended};
use crate::fleet::journal;
use crate::fleet::plan::{self as fplan, FleetPlan, HostPlanArgs};
use crate::fleet::stale::{review_differences, what_moved};
use crate::fleet::{Fleet, FleetError, render};
use crate::policy::{self, Scope};
use crate::target::Target;
use crate::{exit, report};

use super::{confirm, print_and_save, runtime, stdout_color};

/// The `--host NAME` flag: this process is one host of a fleet.
fn host_flag(global: &Global) -> Option<&str> {
    global.host_name()
}

/// Whether `env` is deployed by the fleet controller from here.
pub(crate) fn is_fleet(global: &Global, t: &Target) -> bool {
    !t.env.hosts.is_empty() && host_flag(global).is_none()
}

/// Refuses a command the fleet controller does not run over its hosts
/// (yet), rather than run it on the controller's own machine.
pub(crate) fn refuse_on_controller(
    global: &Global,
    t: &Target,
    command: &str,
) -> miette::Result<()> {
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
pub(crate) fn no_hosts_to_be_on(on: &[String], env: &str) -> miette::Result<()> {
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

/// `plan --env E` of a fleet.
pub(crate) fn plan(global: &Global, args: &PlanArgs, t: &Target) -> miette::Result<i32> {
    let to = fplan::target(t, args.target.to.as_deref())?;
    let found = crate::fleet::uncommitted(t)?;
    for p in found.changes {
        eprintln!("warning: uncommitted, not in the plan (hosts get commits only): {p}");
    }
    for u in found.unchecked {
        eprintln!("warning: {}", crate::observe::unchecked_warning(&u));
    }
    if args.target.from.is_some() {
        // Every host planned here, without ssh, as `--host NAME` would.
        let p = fplan::offline(t, to, &super::request(&args.target), |h| {
            crate::target::resolve(
                t.loaded.clone(),
                &t.env.name,
                &settings::choices(global, Some(&h.name)),
            )
        })?;
        return print_fleet_plan(args, &p);
    }
    let fleet = fleet(global, t)?;
    let host_args = HostPlanArgs {
        allow_non_ancestor: args.target.allow_non_ancestor,
        adopt: args.target.adopt.clone(),
        skip_promotion_check: args.target.skip_promotion_check,
    };
    let rt = runtime()?;
    let p = rt.block_on(fplan::over_ssh(&fleet, to, &host_args))?;
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

/// `apply --reviewed FLEETPLAN`: a fleet plan reviewed elsewhere (a pull
/// request), applied as each host plans it now when every host's plan does
/// what the reviewed one does.
pub(crate) fn apply_reviewed(
    global: &Global,
    args: &ApplyArgs,
    t: &Target,
    reviewed: FleetPlan,
) -> miette::Result<i32> {
    run_apply(global, args, t, Source::Reviewed(reviewed))
}

/// `apply` of a fleet: a saved fleet plan, or plan here and confirm.
pub(crate) fn apply(
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

impl Source {
    /// The commit the rollout deploys: the saved plan's; the reviewed
    /// plan's unless `--to` names another (the merge of the reviewed pull
    /// request); else `--to` or the branch's tip.
    fn target(&self, t: &Target, to: Option<&str>) -> miette::Result<crate::git::Rev> {
        Ok(match self {
            Self::Saved(s) => t.repo.resolve(&s.to.sha)?,
            Self::Reviewed(r) if to.is_none() => t.repo.resolve(&r.to.sha)?,
            Self::Reviewed(_) | Self::Fresh => fplan::target(t, to)?,
        })
    }

    /// What each host's plan is asked for: what the saved or reviewed plan
    /// was made with, else the flags.
    fn host_args(&self, args: &ApplyArgs) -> HostPlanArgs {
        match self {
            Self::Saved(s) | Self::Reviewed(s) => s
                .hosts
                .first()
                .map(|h| HostPlanArgs {
                    allow_non_ancestor: h.plan.inputs.allow_non_ancestor,
                    adopt: h.plan.inputs.adopt.clone(),
                    skip_promotion_check: h.plan.inputs.skip_promotion_check,
                })
                .unwrap_or_default(),
            Self::Fresh => HostPlanArgs {
                allow_non_ancestor: args.allow_non_ancestor,
                adopt: args.adopt.clone(),
                skip_promotion_check: args.skip_promotion_check,
            },
        }
    }
}

fn run_apply(global: &Global, args: &ApplyArgs, t: &Target, source: Source) -> miette::Result<i32> {
    let fleet = fleet(global, t)?;
    let _lock = crate::lock::acquire(&fleet.dir, "fleet apply")?;
    if !args.resume && !args.allow_dirty {
        let dirty = crate::fleet::uncommitted(t)?.changes;
        policy::clean(Scope::Fleet, &dirty, args.allow_dirty)?;
    }
    let rt = runtime()?;
    let res = rt.block_on(async {
        if args.resume {
            return resume(&fleet, args.format).await;
        }
        control::refuse_unfinished(&fleet)?;
        let to = source.target(t, args.to.as_deref())?;
        let now =
            control::replan(&fleet, to, &source.host_args(args), args.skip_unreachable).await?;
        for (h, e) in &now.unreachable {
            eprintln!("[{h}] skipped: {e}");
        }
        let skipped = now.skipped();
        let env = &fleet.env.name;
        let fresh = now.plan;
        let missing = fresh.host_facts.clone();
        let promotion = fresh.promotion.clone();
        let plan = match source {
            Source::Reviewed(reviewed) => {
                let differences =
                    review_differences(&reviewed, &fresh, &skipped, args.to.is_none());
                policy::as_reviewed(Scope::Fleet, env, &differences)?;
                show(&fresh, args.format);
                fresh
            }
            Source::Saved(saved) => {
                as_planned(&saved, &fresh)?;
                policy::unmoved(Scope::Fleet, env, &what_moved(&saved, &fresh, &skipped))?;
                saved
            }
            Source::Fresh => {
                show(&fresh, args.format);
                policy::approved(env, fleet.env.approval, fresh.has_changes(), false)?;
                fresh
            }
        };
        if !plan.has_work() {
            println!("nothing to apply: every host of {env} is up to date");
            return Ok(exit::OK);
        }
        // What the source fleet proved, as its hosts report it now (never a saved plan's copy).
        if let Some(pr) = promotion.filter(|_| plan.has_changes()) {
            policy::not_promoted(env, &pr.source, &plan.to.sha, &pr.refusals())?;
        }
        // Each host would refuse its own apply; refused here, before any host changes.
        if !missing.is_empty() {
            return Err(crate::fleet::FleetError::host_facts(&missing).into());
        }
        policy::confirm(args.yes, || {
            confirm(&format!(
                "Roll this plan out to {} hosts of {env}?",
                plan.hosts.len(),
            ))
        })?;
        let replay = control::begin(&fleet, &plan, &skipped)?;
        let ended =
            control::drive(&fleet, replay, now.prepared, args.format == Format::Json).await?;
        finish_rollout(ended, env, args.format)
    });
    rt.block_on(fleet.transport.close_all(fleet.hosts()));
    res
}

/// Refuses a saved plan whose artifacts, built again here, are not the ones
/// it names (`moorline::artifact::not_as_planned`): what the hosts would
/// install is not what was reviewed.
fn as_planned(saved: &FleetPlan, fresh: &FleetPlan) -> Result<(), FleetError> {
    for a in &saved.artifacts {
        if let Some(now) = fresh.artifacts.iter().find(|f| f.service == a.service)
            && now.id != a.id
        {
            return Err(crate::builder::BuilderError::NotAsPlanned {
                service: a.service.clone(),
                planned: a.id.clone(),
                built: now.id.clone(),
            }
            .into());
        }
    }
    Ok(())
}

/// The fleet plan about to be rolled out, on standard error (not with
/// `--format json`).
fn show(p: &FleetPlan, format: Format) {
    if format != Format::Json {
        eprint!(
            "{}",
            crate::secrets::redact(&render::text(p, report::stderr_color()))
        );
    }
}

/// Reports a rollout that was driven (or finished) and closes its journal,
/// unless some host is left unknown: then it stays unfinished.
fn finish_rollout(ended: Ended, env: &str, format: Format) -> miette::Result<i32> {
    let code = ended.summary.exit_code();
    if ended.unfinished() {
        // Left unfinished: `apply --resume` or `rollback` settles the
        // hosts that dropped once they can be reached.
        print_summary(&ended.summary, env, format);
        eprintln!(
            "the rollout stays unfinished: when the hosts marked unknown can be reached, finish it with `moorline apply --resume --env {env}` or undo it with `moorline rollback --env {env}`"
        );
        return Ok(code);
    }
    let summary = ended.close()?;
    print_summary(&summary, env, format);
    Ok(code)
}

/// Reports an unfinished rollout that was undone and closes its journal,
/// unless some host is left unknown. Asked for a rollback and got one:
/// that is success.
fn finish_undo(ended: Ended, env: &str, format: Format) -> miette::Result<i32> {
    let code = ended.summary.exit_code();
    print_summary(&ended.summary, env, format);
    if ended.unfinished() {
        eprintln!(
            "the rollout stays unfinished: run `moorline rollback --env {env}` again when every host can be reached"
        );
        return Ok(code);
    }
    ended.close()?;
    Ok(if code == exit::ROLLED_BACK {
        exit::OK
    } else {
        code
    })
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
                        "artifact_bytes_sent": s.sent.get(h).copied().unwrap_or(0),
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
                "failed": s.failed(),
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
        let sent = s.sent.get(h).map_or_else(String::new, |n| {
            format!(" ({} of artifacts sent)", crate::builder::human_size(*n))
        });
        eprintln!("  {h}: {}{rb}{sent}", o.as_str());
    }
    match s.exit_code() {
        exit::OK => eprintln!("fleet apply of {env} succeeded"),
        exit::ROLLED_BACK => eprintln!(
            "fleet apply of {env} failed ({}) and every host is back on its previous release",
            s.rollback_reason.as_deref().unwrap_or("")
        ),
        exit::HOSTS_FAILED => eprintln!(
            "fleet apply of {env} went on within max-fail, but did not succeed on: {} (each is on its previous release; the others run the new one)",
            s.failed().join(", ")
        ),
        _ => eprintln!(
            "fleet apply of {env} needs attention on: {}",
            s.attention().join(", ")
        ),
    }
    for (h, hint) in hints(s, env) {
        eprintln!("  {h}: {hint}");
    }
}

/// What settles each host a rollout left on no known release, by the
/// state it is in: a host whose connection dropped is settled by the
/// rollout (its journal on the controller is still unfinished); a host
/// that needs attention, or whose fleet rollback failed, has its own
/// unfinished apply, which its own `rollback` settles (`--on` it).
fn hints(s: &Summary, env: &str) -> Vec<(String, String)> {
    use crate::fleet::journal::HostOutcome;
    s.attention()
        .into_iter()
        .filter_map(|h| {
            let hint = match s.outcomes.get(&h)? {
                HostOutcome::Unknown => format!(
                    "lost its connection mid-apply; once it answers, `moorline apply --resume --env {env}` settles it by its own journal and finishes the rollout (or `moorline rollback --env {env}` undoes the rollout)"
                ),
                HostOutcome::NeedsAttention => format!(
                    "its own apply is unfinished (it failed and could not roll itself back, see its messages above; `moorline status --env {env}` shows it); once the cause is fixed, `moorline rollback --env {env} --on {h}` rolls it back to its previous release"
                ),
                _ => format!(
                    "its fleet rollback failed (see its messages above); once the cause is fixed, `moorline rollback --env {env} --on {h}` rolls it back"
                ),
            };
            Some((h, hint))
        })
        .collect()
}

/// `apply --resume` of a fleet: finishes the unfinished rollout.
async fn resume(fleet: &Arc<Fleet>, format: Format) -> miette::Result<i32> {
    let env = &fleet.env.name;
    let Some(replay) = journal::read(&fleet.dir)? else {
        println!("nothing to resume: no unfinished rollout of {env}");
        return Ok(exit::OK);
    };
    let json = format == Format::Json;
    if replay.rollback_begun() {
        eprintln!("finishing the rollback of rollout {}", replay.rollout_id);
        eprintln!("rolling back the unfinished rollout {}", replay.rollout_id);
        let code = finish_undo(control::undo(fleet, replay, json).await?, env, format)?;
        // The rollout failed and was rolled back: that is apply's exit 3.
        return Ok(if code == exit::OK {
            exit::ROLLED_BACK
        } else {
            code
        });
    }
    eprintln!("resuming rollout {}", replay.rollout_id);
    let prepared = control::prepare_all(fleet, &replay.plan).await;
    finish_rollout(
        control::drive(fleet, replay, prepared, json).await?,
        env,
        format,
    )
}

/// `rollback --env E` of a fleet: an unfinished rollout is undone (every
/// host it started goes back); without one, every host rolls back its
/// last apply.
pub(crate) fn rollback(global: &Global, args: &RollbackArgs, t: &Target) -> miette::Result<i32> {
    let fleet = fleet(global, t)?;
    let _lock = crate::lock::acquire(&fleet.dir, "fleet rollback")?;
    let env = &fleet.env.name;
    let rt = runtime()?;
    let res = rt.block_on(async {
        if let Some(replay) = journal::read(&fleet.dir)? {
            if !args.on.is_empty() {
                // The rollout's journal decides what each of its hosts
                // still needs: one host settled behind its back would
                // leave the journal wrong about it.
                return Err(FleetError::Local {
                    what: format!(
                        "roll back {} alone: rollout {} is unfinished",
                        args.on.join(", "),
                        replay.rollout_id
                    ),
                    help: format!(
                        "finish it with `moorline apply --resume --env {env}`, or undo it on every host it started with `moorline rollback --env {env}`; then `--on` rolls back one host"
                    ),
                    source: None,
                }
                .into());
            }
            eprintln!("rolling back the unfinished rollout {}", replay.rollout_id);
            let ended = control::undo(&fleet, replay, args.format == Format::Json).await?;
            return finish_undo(ended, env, args.format);
        }
        let chosen = control::chosen(&fleet, &args.on)?;
        let which = if args.on.is_empty() {
            format!("every host of {env}")
        } else {
            chosen
                .iter()
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        policy::confirm(args.yes, || {
            confirm(&format!("Roll back the last apply on {which}?"))
        })?;
        let to = fplan::target(t, None)?;
        let mut words: Vec<String> = vec![
            "rollback".into(),
            "--env".into(),
            env.clone(),
            "--yes".into(),
        ];
        for s in &args.services {
            words.extend(["--service".into(), s.clone()]);
        }
        if let Some(r) = &args.to {
            words.extend(["--to".into(), r.clone()]);
        }
        if args.database {
            words.push("--database".into());
        }
        let mut results =
            control::run_on_all(&fleet, &chosen, &to.sha, &words, connections(&fleet)).await;
        results.sort_by(|a, b| a.0.cmp(&b.0));
        let mut failed = Vec::new();
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
            eprintln!("{which} rolled back");
            Ok(exit::OK)
        } else {
            eprintln!("the rollback did not finish on: {}", failed.join(", "));
            Ok(exit::NEEDS_ATTENTION)
        }
    });
    rt.block_on(fleet.transport.close_all(fleet.hosts()));
    res
}

/// How many hosts a command over the fleet talks to at once: the
/// rollout's `connections`.
fn connections(fleet: &Fleet) -> usize {
    crate::fleet::at_once(fleet.env.rollout.connections)
}

/// `status --env E` of a fleet: every host's status, each under its name.
pub(crate) fn status(global: &Global, args: &StatusArgs, t: &Target) -> miette::Result<i32> {
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
        let v =
            control::run_on_all(&fleet, fleet.hosts(), &to.sha, &words, connections(&fleet)).await;
        fleet.transport.close_all(fleet.hosts()).await;
        v
    });
    let mut unhealthy = false;
    let mut json = serde_json::Map::new();
    for (name, res) in results {
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
pub(crate) fn logs(global: &Global, args: &LogsArgs, t: &Target) -> miette::Result<i32> {
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
    // `--follow` streams from every host until interrupted: all at once.
    // Otherwise at most `connections` hosts at a time.
    let permits = crate::fleet::host_permits(if args.follow {
        u32::try_from(fleet.hosts().len()).unwrap_or(u32::MAX)
    } else {
        fleet.env.rollout.connections
    });
    let failed = rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for host in fleet.hosts().to_vec() {
            let (fleet, to, words) = (Arc::clone(&fleet), to.sha.clone(), words.clone());
            let permits = Arc::clone(&permits);
            set.spawn(async move {
                let _permit = permits.acquire_owned().await;
                stream_logs(&fleet, &host, &to, &words, json).await
            });
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
pub(crate) fn on_hosts(
    global: &Global,
    t: &Target,
    on: &[String],
    words: &[String],
) -> miette::Result<i32> {
    let fleet = fleet(global, t)?;
    let chosen = control::chosen(&fleet, on)?;
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
        match control::stream_on(fleet, host, to, words, |l| println!("{l}")).await? {
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
    control::stream_on(fleet, host, to, words, |l| {
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

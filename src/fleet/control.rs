//! The controller's operations around the rolling apply: plan the fleet
//! again before a rollout, begin one in the fleet journal, drive or finish
//! it, undo an unfinished one, and run a host's own moorline command on
//! hosts. In: a [`Fleet`] and what the command asked for; out: values (a
//! fleet plan, a [`Summary`], each host's output) the command prints.
//! Guarantees: a rollout is begun in the fleet journal (hosts skipped as
//! unreachable recorded) before any host is touched, and the journal is
//! finished only when no host is left unknown.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::apply::{Rollout, Summary};
use super::journal::{self, HostOutcome, Journal, Record, Replay, RolloutOutcome};
use super::plan::{self as fplan, FleetPlan, HostPlanArgs};
use super::remote::{Checkout, Prepared};
use super::ssh::Output;
use super::{Fleet, FleetError};
use crate::config::Host;
use crate::git::Rev;

/// Refuses to start a rollout while another is unfinished in the fleet
/// journal.
pub(crate) fn refuse_unfinished(fleet: &Fleet) -> Result<(), FleetError> {
    if let Some(r) = journal::read(&fleet.dir)? {
        return Err(FleetError::Local {
            what: format!("start a rollout: rollout {} is unfinished", r.rollout_id),
            help: format!(
                "finish it with `moorline apply --resume --env {e}`, or undo it with `moorline rollback --env {e}`",
                e = fleet.env.name
            ),
            source: None,
        });
    }
    Ok(())
}

/// The fleet planned again for a rollout: every reachable host prepared and
/// planned on `to`.
pub(crate) struct Replanned {
    pub(crate) plan: FleetPlan,
    /// The hosts that could not be reached (with `--skip-unreachable`),
    /// each with why.
    pub(crate) unreachable: Vec<(String, String)>,
    pub(crate) prepared: BTreeMap<String, Prepared>,
}

impl Replanned {
    /// The names of the hosts left out.
    pub(crate) fn skipped(&self) -> Vec<String> {
        self.unreachable.iter().map(|(h, _)| h.clone()).collect()
    }
}

/// Prepares and plans every host on `to`; an unreachable host is refused
/// unless `skip_unreachable`, then it is left out of the plan.
pub(crate) async fn replan(
    fleet: &Arc<Fleet>,
    to: Rev,
    host_args: &HostPlanArgs,
    skip_unreachable: bool,
) -> Result<Replanned, FleetError> {
    let gathered = fplan::gather(fleet, &to.sha, host_args).await?;
    if !skip_unreachable && let Some(e) = fplan::unreachable_error(&gathered) {
        return Err(e);
    }
    let unreachable = fplan::unreachable(&gathered)
        .iter()
        .map(|(h, e)| (h.name.clone(), e.to_string()))
        .collect();
    let mut plan = fplan::assemble(
        &fleet.project,
        &fleet.env.name,
        to,
        &fleet.env.rollout,
        fplan::host_plans(fleet, &gathered),
    );
    plan.host_facts = fplan::host_facts(&gathered);
    super::artifacts::build(fleet, &mut plan).await?;
    plan.promotion = super::promote::check(
        fleet,
        &plan.to,
        &fplan::planned_artifacts(&plan),
        host_args.skip_promotion_check,
    )
    .await?;
    Ok(Replanned {
        plan,
        unreachable,
        prepared: fplan::prepared(gathered),
    })
}

/// Begins the rollout of `plan` in the fleet journal, the `skipped` hosts
/// recorded as unreachable, and reads it back: what [`drive`] runs.
pub(crate) fn begin(
    fleet: &Fleet,
    plan: &FleetPlan,
    skipped: &[String],
) -> Result<Replay, FleetError> {
    let rollout_id = crate::execute::new_apply_id();
    let mut j = Journal::create(&fleet.dir, &rollout_id, plan)?;
    for h in skipped {
        j.append(&Record::HostFinished {
            host: h.clone(),
            outcome: HostOutcome::Unreachable,
            code: None,
        })?;
    }
    drop(j);
    journal::read(&fleet.dir)?.ok_or_else(|| FleetError::Local {
        what: "read back the fleet journal just written".to_owned(),
        help: "check the state directory".to_owned(),
        source: None,
    })
}

/// How a rollout (or its undoing) ended, its fleet journal still open: the
/// command shows the summary, and closes the journal unless a host is
/// left unknown.
pub(crate) struct Ended {
    pub(crate) summary: Summary,
    journal: Option<Journal>,
    rollout_id: String,
}

impl Ended {
    /// Some host lost its connection: the rollout stays unfinished, to be
    /// settled once it can be reached.
    pub(crate) fn unfinished(&self) -> bool {
        self.summary
            .outcomes
            .values()
            .any(|o| *o == HostOutcome::Unknown)
    }

    /// Finishes the rollout in the fleet journal with its outcome; returns
    /// the summary.
    pub(crate) fn close(self) -> Result<Summary, FleetError> {
        let outcome = match self.summary.exit_code() {
            crate::exit::OK => RolloutOutcome::Succeeded,
            crate::exit::ROLLED_BACK => RolloutOutcome::RolledBack,
            _ => RolloutOutcome::NeedsAttention,
        };
        if let Some(j) = self.journal {
            j.finish(outcome, &self.rollout_id)?;
        }
        Ok(self.summary)
    }
}

fn rollout(
    fleet: &Arc<Fleet>,
    replay: &Replay,
    prepared: BTreeMap<String, Prepared>,
    json: bool,
) -> Result<Rollout, FleetError> {
    Ok(Rollout {
        fleet: Arc::clone(fleet),
        plan: replay.plan.clone(),
        prepared,
        json,
        journal: Arc::new(Mutex::new(Journal::reopen(&fleet.dir)?)),
        sent: Mutex::default(),
    })
}

/// The journal a finished rollout hands back, once nothing else holds it.
fn into_journal(r: Arc<Rollout>) -> Option<Journal> {
    Arc::try_unwrap(r)
        .ok()
        .and_then(|r| Arc::into_inner(r.journal))
        .and_then(|m| m.into_inner().ok())
}

/// Drives (or finishes) the rollout of `replay` over the `prepared` hosts
/// (`json`: host events as JSON lines).
pub(crate) async fn drive(
    fleet: &Arc<Fleet>,
    replay: Replay,
    prepared: BTreeMap<String, Prepared>,
    json: bool,
) -> Result<Ended, FleetError> {
    let r = Arc::new(rollout(fleet, &replay, prepared, json)?);
    let summary = r.drive(&replay).await?;
    Ok(Ended {
        summary,
        journal: into_journal(r),
        rollout_id: replay.rollout_id,
    })
}

/// Prepares the hosts of an unfinished rollout, at most the plan's
/// `connections` at a time (the unreachable ones are left out, each said
/// with its error: they are reported as such).
pub(crate) async fn prepare_all(
    fleet: &Arc<Fleet>,
    plan: &FleetPlan,
) -> BTreeMap<String, Prepared> {
    let permits = super::host_permits(plan.rollout.connections);
    let at_once = super::at_once(plan.rollout.connections);
    let mut set = tokio::task::JoinSet::new();
    for h in &plan.hosts {
        let Some(host) = fleet.host(&h.name).cloned() else {
            continue;
        };
        let (fleet, to, permits) = (Arc::clone(fleet), plan.to.sha.clone(), Arc::clone(&permits));
        set.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let prepared = super::remote::prepare(&fleet, &host, &to, Checkout::Target).await;
            fleet.end_turn(&host, at_once).await;
            match prepared {
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

/// Undoes an unfinished rollout: hosts whose apply the controller never
/// saw end finish theirs first (their own journal), then every host that
/// runs the rollout's target goes back.
pub(crate) async fn undo(
    fleet: &Arc<Fleet>,
    replay: Replay,
    json: bool,
) -> Result<Ended, FleetError> {
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
    let r = Arc::new(rollout(fleet, &replay, prepared, json)?);
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
    Ok(Ended {
        summary: Summary {
            outcomes,
            rolled_back,
            rollback_reason: Some("rollback asked for".to_owned()),
            ..Summary::default()
        },
        journal: into_journal(r),
        rollout_id: replay.rollout_id,
    })
}

/// Prepares `host` on `to` and runs its moorline with `words`.
pub(crate) async fn run_on(
    fleet: &Fleet,
    host: &Host,
    to: &str,
    words: &[String],
) -> Result<Output, FleetError> {
    let p = super::remote::prepare(fleet, host, to, Checkout::Keep).await?;
    let args: Vec<&str> = words.iter().map(String::as_str).collect();
    Ok(fleet
        .transport
        .run(host, &p.moorline(&args), super::ssh::Input::Null)
        .await?)
}

/// [`run_on`] each of `hosts` at once, at most `at_once` at a time: each
/// host's name and result, in the order of `hosts`.
pub(crate) async fn run_on_all(
    fleet: &Arc<Fleet>,
    hosts: &[Host],
    to: &str,
    words: &[String],
    at_once: usize,
) -> Vec<(String, Result<Output, FleetError>)> {
    let permits = Arc::new(tokio::sync::Semaphore::new(at_once.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for (i, host) in hosts.iter().cloned().enumerate() {
        let (fleet, to, words, permits) = (
            Arc::clone(fleet),
            to.to_owned(),
            words.to_vec(),
            Arc::clone(&permits),
        );
        set.spawn(async move {
            let _p = permits.acquire_owned().await;
            let res = run_on(&fleet, &host, &to, &words).await;
            fleet.end_turn(&host, at_once).await;
            (i, host.name.clone(), res)
        });
    }
    let mut v = Vec::new();
    while let Some(Ok(r)) = set.join_next().await {
        v.push(r);
    }
    v.sort_by_key(|r| r.0);
    v.into_iter().map(|(_, name, res)| (name, res)).collect()
}

/// Runs the host's moorline with `words` (prepared, its checkout kept):
/// each line of its standard output, secrets redacted, goes to `on_line`;
/// its standard error goes to ours, each line redacted and prefixed with
/// the host. Returns its exit code (255: ssh failed).
pub(crate) async fn stream_on(
    fleet: &Fleet,
    host: &Host,
    to: &str,
    words: &[String],
    mut on_line: impl FnMut(&str),
) -> Result<i32, FleetError> {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let p = super::remote::prepare(fleet, host, to, Checkout::Keep).await?;
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

/// The hosts `--on` names (every host without it), in the configuration's
/// order; a name the environment does not have is refused, listing its
/// hosts.
pub(crate) fn chosen(fleet: &Fleet, on: &[String]) -> Result<Vec<Host>, FleetError> {
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
        });
    }
    Ok(fleet
        .hosts()
        .iter()
        .filter(|h| on.is_empty() || on.contains(&h.name))
        .cloned()
        .collect())
}

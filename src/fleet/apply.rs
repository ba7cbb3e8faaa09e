//! The rolling apply: runs each host's own `moorline apply` with its
//! reviewed plan on stdin, batch by batch (the canary first), and rolls the
//! fleet back when the failure budget is exceeded. In: a fleet plan whose
//! hosts were prepared and re-planned; out: each host's outcome and the
//! fleet's exit code. Guarantees: every host start and end, batch boundary
//! and rollback is in the fleet journal (fsync'd) before the controller
//! relies on it; no host starts once failures exceed `max-fail`; hosts in
//! flight finish; a host whose connection dropped is `unknown`, never
//! assumed rolled back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::journal::{HostOutcome, Journal, Record, Replay};
use super::plan::FleetPlan;
use super::remote::Prepared;
use super::rollout::BatchKind;
use super::{Fleet, FleetError};
use crate::config::DrainWhen;
use crate::events::Event;

/// How often a resumed host's `apply --resume` is retried while the
/// host's lock is held by the apply the killed controller started, and
/// how long apart (up to a minute in all).
const LOCK_TRIES: u32 = 120;
const LOCK_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// ssh's exit code for its own failures.
const SSH_FAILED: i32 = 255;

/// The code a host's apply refuses with while an earlier apply there is
/// unfinished (its journal open: a rollback that could not finish,
/// `--on-failure stop`).
const HOST_UNFINISHED: &str = "moorline::apply::unfinished";

/// A host that refused its apply because an earlier one is unfinished
/// there is not merely `failed`: it still needs a human, as when it was
/// first left so ([`HostOutcome::NeedsAttention`]).
fn stuck_or(outcome: HostOutcome, stderr_tail: &str) -> HostOutcome {
    if outcome == HostOutcome::Failed && stderr_tail.contains(HOST_UNFINISHED) {
        HostOutcome::NeedsAttention
    } else {
        outcome
    }
}

/// Why a drain hook failed: before a batch it stops the rollout, after one
/// it is a warning.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub(crate) enum DrainError {
    #[error("no host named {host}")]
    #[diagnostic(code(moorline::fleet::drain::no_host))]
    NoHost { host: String },
    #[error("timed out after {secs}s")]
    #[diagnostic(code(moorline::fleet::drain::timeout))]
    Timeout { secs: u64 },
    #[error("{error}")]
    #[diagnostic(code(moorline::fleet::drain::transport))]
    Transport { error: super::ssh::SshError },
    #[error("`{command}` exited {code} on {host}: {stderr}")]
    #[diagnostic(code(moorline::fleet::drain::failed))]
    Failed {
        command: String,
        code: i32,
        host: String,
        stderr: String,
    },
}

/// A fleet-journal writer that panicked: nothing more may be recorded.
fn writer_lost() -> FleetError {
    FleetError::Local {
        what: "write the fleet journal: a writer panicked".to_owned(),
        help: "check every host with `moorline status`".to_owned(),
        source: None,
    }
}

/// What drives a rollout: the fleet, its plan, the prepared hosts.
pub struct Rollout {
    pub(crate) fleet: Arc<Fleet>,
    pub(crate) plan: FleetPlan,
    pub(crate) prepared: BTreeMap<String, Prepared>,
    /// Host events and progress as JSON lines (`--format json`).
    pub(crate) json: bool,
    /// Shared with the blocking pool, where its records are written.
    pub(crate) journal: Arc<Mutex<Journal>>,
    /// Bytes of artifacts sent to each host.
    pub(crate) sent: Mutex<BTreeMap<String, u64>>,
}

/// How the rollout ended, per host.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    pub(crate) outcomes: BTreeMap<String, HostOutcome>,
    /// Hosts the fleet rollback ran on, and whether each is back.
    pub(crate) rolled_back: BTreeMap<String, bool>,
    /// Why the fleet was rolled back, if it was.
    pub(crate) rollback_reason: Option<String>,
    /// Bytes of artifacts sent to each host that was sent any (hosts
    /// absent: nothing to send, their stores had it all).
    pub(crate) sent: BTreeMap<String, u64>,
}

impl Summary {
    /// Hosts that need a human: their apply or rollback did not end on a
    /// known release.
    pub(crate) fn attention(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .outcomes
            .iter()
            .filter(|(h, o)| match o {
                HostOutcome::NeedsAttention | HostOutcome::Unknown => true,
                HostOutcome::Succeeded => self.rolled_back.get(*h) == Some(&false),
                _ => false,
            })
            .map(|(h, _)| h.clone())
            .collect();
        v.sort();
        v
    }

    /// Hosts whose apply did not succeed but that are on a known release
    /// (failed before anything live changed, rolled themselves back, or
    /// unreachable): what a rollout within `max-fail` leaves behind.
    pub(crate) fn failed(&self) -> Vec<String> {
        self.outcomes
            .iter()
            .filter(|(_, o)| {
                matches!(
                    o,
                    HostOutcome::Failed | HostOutcome::RolledBack | HostOutcome::Unreachable
                )
            })
            .map(|(h, _)| h.clone())
            .collect()
    }

    /// The fleet's exit code: 4 when some host needs a human, 3 when the
    /// fleet was rolled back and every host is back, 6 when it went on
    /// within `max-fail` but some host did not succeed, 0 when every host
    /// that had something to do succeeded.
    pub(crate) fn exit_code(&self) -> i32 {
        if !self.attention().is_empty() {
            crate::exit::NEEDS_ATTENTION
        } else if self.rollback_reason.is_some() {
            crate::exit::ROLLED_BACK
        } else if !self.failed().is_empty() {
            crate::exit::HOSTS_FAILED
        } else {
            crate::exit::OK
        }
    }
}

impl Rollout {
    /// Appends `r` to the fleet journal and waits until it is durable; the
    /// write and its fsync run on the blocking pool.
    async fn record(&self, r: Record) -> Result<(), FleetError> {
        let journal = Arc::clone(&self.journal);
        crate::blocking::run(
            move || {
                let mut j = journal.lock().map_err(|_| writer_lost())?;
                j.append(&r)
            },
            |_| writer_lost(),
        )
        .await
    }

    fn say(&self, host: &str, line: &str) {
        if self.json {
            let v = serde_json::json!({"event": "fleet", "host": host, "detail": line});
            println!("{v}");
        } else {
            eprintln!("[{host}] {line}");
        }
    }

    /// Runs the rollout from where `replay` left it (a fresh rollout has
    /// only its begin record).
    pub(crate) async fn drive(self: &Arc<Self>, replay: &Replay) -> Result<Summary, FleetError> {
        // What the hosts are sent: in the controller's store, or built again
        // as planned, before any host starts.
        super::artifacts::ensure(&self.fleet, &self.plan).await?;
        let mut outcomes = replay.finished();
        // A host whose connection dropped is settled like one the
        // controller never saw end.
        outcomes.retain(|_, o| *o != HostOutcome::Unknown);
        let budget = self.plan.rollout.max_fail;
        let failures = Arc::new(AtomicU32::new(
            u32::try_from(outcomes.values().filter(|o| o.is_failure()).count()).unwrap_or(u32::MAX),
        ));
        let interrupted: Vec<String> = replay
            .started()
            .into_iter()
            .filter(|h| !outcomes.contains_key(h))
            .collect();
        let mut reason = None;
        if replay.rollback_begun() {
            reason =
                Some("the failure budget was exceeded before the controller stopped".to_owned());
        }
        let mut ran_before = false;
        for (index, batch) in self.plan.batches.iter().enumerate() {
            if reason.is_some() {
                break;
            }
            // docs/config.md: the batches start only once the canary is
            // healthy, whatever `max-fail` allows.
            if batch.kind == BatchKind::Batch
                && let Some(why) = self.unhealthy_canary(&outcomes)
            {
                reason = Some(why);
                break;
            }
            let todo: Vec<String> = batch
                .hosts
                .iter()
                .filter(|h| !outcomes.contains_key(*h))
                .filter(|h| {
                    interrupted.contains(*h)
                        || self.plan.host(h).is_some_and(|p| p.plan.has_changes())
                })
                .cloned()
                .collect();
            if todo.is_empty() {
                continue;
            }
            if failures.load(Ordering::SeqCst) > budget {
                reason = Some(self.over_budget(&failures));
                break;
            }
            if ran_before && self.plan.rollout.pause_secs > 0 {
                tokio::time::sleep(std::time::Duration::from_secs(self.plan.rollout.pause_secs))
                    .await;
            }
            ran_before = true;
            self.record(Record::Batch { index }).await?;
            if let Err(e) = self.drain(DrainWhen::Before, &batch.hosts).await {
                reason = Some(format!(
                    "the drain hook before batch {} failed: {e}",
                    index + 1
                ));
                break;
            }
            let results = self.run_batch(&todo, &interrupted, &failures).await?;
            for (h, o) in results {
                outcomes.insert(h, o);
            }
            if let Err(e) = self.drain(DrainWhen::After, &batch.hosts).await {
                eprintln!(
                    "warning: the drain hook after batch {} failed: {e}",
                    index + 1
                );
            }
            if failures.load(Ordering::SeqCst) > budget {
                reason = Some(self.over_budget(&failures));
            }
        }
        // Hosts whose plan changes no service but moves the revision (a
        // revert, a docs-only commit): once every change went out, each
        // records the target as deployed, as `apply` does on a host. They
        // restart nothing: no batch, drain or pause, and nothing to roll back.
        if reason.is_none() {
            let record: Vec<String> = self
                .plan
                .hosts
                .iter()
                .filter(|h| !outcomes.contains_key(&h.name) && h.plan.records_only())
                .map(|h| h.name.clone())
                .collect();
            if !record.is_empty() {
                for (h, o) in self.run_batch(&record, &interrupted, &failures).await? {
                    outcomes.insert(h, o);
                }
            }
        }
        let mut summary = Summary {
            outcomes,
            sent: self
                .sent
                .lock()
                .map(|m| m.clone())
                .unwrap_or_default()
                .into_iter()
                .filter(|(_, n)| *n > 0)
                .collect(),
            ..Summary::default()
        };
        if let Some(reason) = reason {
            if !replay.rollback_begun() {
                self.record(Record::RollbackBegin {
                    reason: reason.clone(),
                })
                .await?;
            }
            let already = replay.rolled_back();
            let targets: Vec<String> = summary
                .outcomes
                .iter()
                .filter(|(h, o)| **o == HostOutcome::Succeeded && !already.contains_key(*h))
                .map(|(h, _)| h.clone())
                .collect();
            summary.rolled_back = already;
            summary
                .rolled_back
                .extend(self.roll_back_hosts(&targets).await?);
            summary.rollback_reason = Some(reason);
        }
        Ok(summary)
    }

    /// Why the canary is not healthy, if it is not: a canary host whose
    /// apply did not succeed (a canary host with nothing to do has no
    /// outcome and does not count).
    fn unhealthy_canary(&self, outcomes: &BTreeMap<String, HostOutcome>) -> Option<String> {
        let canary = self
            .plan
            .batches
            .iter()
            .find(|b| b.kind == BatchKind::Canary)?;
        let bad: Vec<String> = canary
            .hosts
            .iter()
            .filter_map(|h| {
                outcomes
                    .get(h)
                    .filter(|o| o.is_failure())
                    .map(|o| format!("{h} {}", o.as_str()))
            })
            .collect();
        (!bad.is_empty()).then(|| {
            format!(
                "the canary is not healthy ({}): the batches start only after a healthy canary",
                bad.join(", ")
            )
        })
    }

    fn over_budget(&self, failures: &AtomicU32) -> String {
        format!(
            "{} host failures exceed max-fail {}",
            failures.load(Ordering::SeqCst),
            self.plan.rollout.max_fail
        )
    }

    /// Runs the hosts of one batch, at most `connections` at a time; a
    /// host not yet started when the budget is exceeded is not started.
    async fn run_batch(
        self: &Arc<Self>,
        hosts: &[String],
        interrupted: &[String],
        failures: &Arc<AtomicU32>,
    ) -> Result<Vec<(String, HostOutcome)>, FleetError> {
        let permits = super::host_permits(self.plan.rollout.connections);
        let mut set = tokio::task::JoinSet::new();
        for h in hosts {
            let (me, h, permits, failures) = (
                Arc::clone(self),
                h.clone(),
                Arc::clone(&permits),
                Arc::clone(failures),
            );
            let resume = interrupted.contains(&h);
            set.spawn(async move {
                let _permit = permits.acquire_owned().await;
                if failures.load(Ordering::SeqCst) > me.plan.rollout.max_fail {
                    return Ok(None);
                }
                let outcome = me.apply_host(&h, resume).await?;
                if outcome.is_failure() {
                    failures.fetch_add(1, Ordering::SeqCst);
                }
                Ok::<_, FleetError>(Some((h, outcome)))
            });
        }
        let mut out = Vec::new();
        let mut first_error = None;
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(Ok(Some(r))) => out.push(r),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    first_error.get_or_insert(FleetError::Local {
                        what: format!("drive a host: {e}"),
                        help: "check every host with `moorline status`".to_owned(),
                        source: None,
                    });
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// One host's apply: recorded as started, run with its plan on stdin
    /// (or resumed from its own journal after a controller crash), its
    /// outcome recorded.
    async fn apply_host(&self, host: &str, resume: bool) -> Result<HostOutcome, FleetError> {
        let Some(p) = self.prepared.get(host) else {
            self.record(Record::HostFinished {
                host: host.to_owned(),
                outcome: HostOutcome::Unreachable,
                code: None,
            })
            .await?;
            return Ok(HostOutcome::Unreachable);
        };
        if !resume {
            self.record(Record::HostStarted {
                host: host.to_owned(),
            })
            .await?;
        }
        // The host's turn shares one master connection (a fleet larger than
        // `connections` closed it after planning): the artifact transfer's
        // several sessions and the apply do not each pay an ssh handshake.
        // Best effort: without a master, each session connects on its own.
        let _ = self.fleet.transport.open(&p.host).await;
        let turn = self.host_turn(p, host, resume).await;
        self.fleet
            .end_turn(&p.host, super::at_once(self.fleet.env.rollout.connections))
            .await;
        let (outcome, code) = turn?;
        self.say(host, &format!("apply: {}", outcome.as_str()));
        self.record(Record::HostFinished {
            host: host.to_owned(),
            outcome,
            code,
        })
        .await?;
        Ok(outcome)
    }

    /// What a host's turn does once it started: its apply (the artifacts it
    /// lacks sent first) or its resume.
    async fn host_turn(
        &self,
        p: &Prepared,
        host: &str,
        resume: bool,
    ) -> Result<(HostOutcome, Option<i32>), FleetError> {
        Ok(if resume {
            self.resume_host(p).await?
        } else {
            let (plan, ids) = self
                .plan
                .host(host)
                .map(|h| {
                    (
                        crate::render::json(&h.plan),
                        h.plan.inputs.artifacts.clone(),
                    )
                })
                .unwrap_or_default();
            if let Err(outcome) = self.ship(p, &ids).await {
                (outcome, None)
            } else {
                let words = apply_words(&ids);
                let args: Vec<&str> = words.iter().map(String::as_str).collect();
                let (outcome, code, tail) = self.stream_tail(p, &args, Some(plan)).await;
                (stuck_or(outcome, &tail), code)
            }
        })
    }

    /// A host whose apply the controller started but never saw end: its
    /// own journal finishes it (`apply --resume`); when it has none (the
    /// apply never began there), its plan is made again and applied unless
    /// the host already runs the target.
    async fn resume_host(&self, p: &Prepared) -> Result<(HostOutcome, Option<i32>), FleetError> {
        let (outcome, code) = self.settle(p).await;
        if outcome != HostOutcome::Succeeded {
            return Ok((outcome, code));
        }
        let mut fresh =
            super::plan::host_plan(&self.fleet, p, &self.plan.to.sha, &self.host_args(p)).await?;
        if !fresh.has_changes() {
            return Ok((HostOutcome::Succeeded, code));
        }
        // The reviewed artifacts, as the fleet plan has them.
        let ids = self
            .plan
            .artifacts
            .iter()
            .map(|a| (a.service.clone(), a.id.clone()))
            .collect();
        crate::plan::with_artifacts(&mut fresh, &ids);
        let ids = fresh.inputs.artifacts.clone();
        if let Err(outcome) = self.ship(p, &ids).await {
            return Ok((outcome, None));
        }
        let text = crate::render::json(&fresh);
        let words = apply_words(&ids);
        let args: Vec<&str> = words.iter().map(String::as_str).collect();
        Ok(self.stream(p, &args, Some(text)).await)
    }

    /// Sends the host the artifacts `ids` names that it lacks (counted in
    /// [`Rollout::sent`]); a host that could not take them is `failed`, as
    /// nothing changed there.
    async fn ship(&self, p: &Prepared, ids: &BTreeMap<String, String>) -> Result<(), HostOutcome> {
        if ids.is_empty() {
            return Ok(());
        }
        let host = &p.host.name;
        match super::artifacts::send(&self.fleet, p, ids).await {
            Ok(sent) => {
                self.say(
                    host,
                    &format!(
                        "artifacts: sent {} of {} items ({}){}",
                        sent.items,
                        sent.of,
                        crate::builder::human_size(sent.bytes),
                        if sent.items < sent.of {
                            "; its store had the others"
                        } else {
                            ""
                        }
                    ),
                );
                if let Ok(mut m) = self.sent.lock() {
                    *m.entry(host.clone()).or_default() += sent.bytes;
                }
                Ok(())
            }
            Err(e) => {
                self.say(host, &format!("sending its artifacts failed: {e}"));
                Err(HostOutcome::Failed)
            }
        }
    }

    /// What the host's plan was asked for in the reviewed plan.
    fn host_args(&self, p: &Prepared) -> super::plan::HostPlanArgs {
        self.plan
            .host(&p.host.name)
            .map(|h| super::plan::HostPlanArgs {
                allow_non_ancestor: h.plan.inputs.allow_non_ancestor,
                adopt: h.plan.inputs.adopt.clone(),
                skip_promotion_check: h.plan.inputs.skip_promotion_check,
            })
            .unwrap_or_default()
    }

    /// Settles a host whose apply the controller never saw end (it was
    /// killed, or the connection dropped): the host's own journal finishes
    /// that apply, or rolls it back (`apply --resume` there; `nothing to
    /// resume` when it had none or it ended). The host's apply may still be
    /// running, since a dropped connection does not stop it: its lock is
    /// waited for.
    pub(crate) async fn settle(&self, p: &Prepared) -> (HostOutcome, Option<i32>) {
        let env = self.fleet.env.name.clone();
        let mut tries = 0;
        loop {
            let (outcome, code, tail) = self
                .stream_tail(
                    p,
                    &[
                        "apply", "--resume", "--env", &env, "--yes", "--format", "json",
                    ],
                    None,
                )
                .await;
            tries += 1;
            if tail.contains("moorline::lock::held") && tries < LOCK_TRIES {
                tokio::time::sleep(LOCK_RETRY).await;
                continue;
            }
            return (outcome, code);
        }
    }

    /// Whether the host's last deploy is the rollout's target (its state's
    /// revision, the `from` of a plan made there now).
    pub(crate) async fn runs_target(&self, p: &Prepared) -> Result<bool, FleetError> {
        let fresh =
            super::plan::host_plan(&self.fleet, p, &self.plan.to.sha, &self.host_args(p)).await?;
        Ok(fresh
            .from
            .as_ref()
            .is_some_and(|f| f.sha == self.plan.to.sha))
    }

    /// Runs the host's moorline with `args`, `stdin` on its standard input,
    /// and streams its output prefixed with the host. A dropped connection
    /// is [`HostOutcome::Unknown`].
    async fn stream(
        &self,
        p: &Prepared,
        args: &[&str],
        stdin: Option<String>,
    ) -> (HostOutcome, Option<i32>) {
        let (o, c, _) = self.stream_tail(p, args, stdin).await;
        (o, c)
    }

    /// [`Rollout::stream`], also returning the last lines of its stderr.
    async fn stream_tail(
        &self,
        p: &Prepared,
        args: &[&str],
        stdin: Option<String>,
    ) -> (HostOutcome, Option<i32>, String) {
        let host = p.host.name.clone();
        let mut child = match self.fleet.transport.spawn(&p.host, &p.moorline(args)) {
            Ok(c) => c,
            Err(e) => {
                self.say(&host, &format!("cannot start ssh: {e}"));
                return (HostOutcome::Unknown, None, String::new());
            }
        };
        if let Some(mut w) = child.stdin.take() {
            if let Some(text) = stdin {
                let _ = w.write_all(text.as_bytes()).await;
            }
            drop(w);
        }
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let json = self.json;
        let out_host = host.clone();
        let out_task = tokio::spawn(async move {
            let Some(s) = stdout else { return };
            let mut lines = BufReader::new(s).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                // The host redacts what it prints; the controller, which knows
                // the same secrets, redacts again before anything is shown.
                print_event(&out_host, &crate::secrets::redact_json_text(&line), json);
            }
        });
        let err_host = host.clone();
        let err_task = tokio::spawn(async move {
            let mut tail = Vec::new();
            let Some(s) = stderr else { return tail };
            let mut lines = BufReader::new(s).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let line = crate::secrets::redact(&line);
                eprintln!("[{err_host}] {line}");
                tail.push(line);
                if tail.len() > 20 {
                    tail.remove(0);
                }
            }
            tail
        });
        let status = child.wait().await;
        let _ = out_task.await;
        let tail = err_task.await.unwrap_or_default().join("\n");
        let Ok(status) = status else {
            return (HostOutcome::Unknown, None, tail);
        };
        let code = status.code().unwrap_or(255);
        // moorline itself never exits 255: that is ssh's own failure (a
        // dropped connection says little on stderr, or only what the host
        // printed), so the host's outcome is not known.
        if code == SSH_FAILED || status.code().is_none() {
            return (HostOutcome::Unknown, Some(code), tail);
        }
        (HostOutcome::of_exit(code), Some(code), tail)
    }

    /// Rolls `hosts` back in parallel, at most `connections` at a time,
    /// each with its own `moorline rollback`; returns whether each is back.
    pub(crate) async fn roll_back_hosts(
        self: &Arc<Self>,
        hosts: &[String],
    ) -> Result<BTreeMap<String, bool>, FleetError> {
        let permits = super::host_permits(self.plan.rollout.connections);
        let mut set = tokio::task::JoinSet::new();
        for h in hosts {
            let (me, h, permits) = (Arc::clone(self), h.clone(), Arc::clone(&permits));
            set.spawn(async move {
                let _permit = permits.acquire_owned().await;
                me.record(Record::HostRollbackStarted { host: h.clone() })
                    .await?;
                let ok = match me.prepared.get(&h) {
                    Some(p) => {
                        let env = me.fleet.env.name.clone();
                        // The host shows its rollback plan as its format
                        // says: JSON only when the controller prints JSON.
                        let format = if me.json { "json" } else { "text" };
                        let (o, _) = me
                            .stream(
                                p,
                                &["rollback", "--env", &env, "--yes", "--format", format],
                                None,
                            )
                            .await;
                        o == HostOutcome::Succeeded
                    }
                    None => false,
                };
                me.say(&h, if ok { "rolled back" } else { "rollback FAILED" });
                me.record(Record::HostRolledBack {
                    host: h.clone(),
                    ok,
                })
                .await?;
                Ok::<_, FleetError>((h, ok))
            });
        }
        let mut out = BTreeMap::new();
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(Ok((h, ok))) => {
                    out.insert(h, ok);
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {}
            }
        }
        Ok(out)
    }

    /// Runs the environment's drain hooks of `when` for a batch.
    async fn drain(&self, when: DrainWhen, batch: &[String]) -> Result<(), DrainError> {
        for hook in self.fleet.env.drain.iter().filter(|d| d.when == when) {
            let Some(on) = self.fleet.host(&hook.on) else {
                return Err(DrainError::NoHost {
                    host: hook.on.clone(),
                });
            };
            let hosts: Vec<&crate::config::Host> =
                batch.iter().filter_map(|h| self.fleet.host(h)).collect();
            let argv = hook.argv_for(&hosts);
            let run = self.fleet.transport.run(on, &argv, super::ssh::Input::Null);
            let out = tokio::time::timeout(hook.command.timeout, run)
                .await
                .map_err(|_| DrainError::Timeout {
                    secs: hook.command.timeout.as_secs(),
                })?
                .map_err(|error| DrainError::Transport { error })?;
            if out.code != 0 {
                return Err(DrainError::Failed {
                    command: argv.join(" "),
                    code: out.code,
                    host: on.name.clone(),
                    stderr: out.stderr.trim().to_owned(),
                });
            }
            self.say(
                &on.name,
                &format!("drain {}: {}", when_word(when), argv.join(" ")),
            );
        }
        Ok(())
    }
}

/// A host's apply of the plan on its standard input, installing the
/// artifacts `ids` names (`--artifact SERVICE=ID`): the host plans again
/// with them, so its fingerprint matches only if it installs what the
/// reviewed plan names.
fn apply_words(ids: &BTreeMap<String, String>) -> Vec<String> {
    let mut w: Vec<String> = ["apply", "-", "--yes", "--format", "json"]
        .map(str::to_owned)
        .to_vec();
    w.extend(super::artifacts::apply_flags(ids));
    w
}

fn when_word(w: DrainWhen) -> &'static str {
    match w {
        DrainWhen::Before => "before",
        DrainWhen::After => "after",
    }
}

/// One line of a host's event stream, shown with its host: as JSON with a
/// `host` field (`--format json`), else as a prefixed text line. A line
/// that is no event is shown as the host's output.
fn print_event(host: &str, line: &str, json: bool) {
    let event = Event::parse(line);
    if json {
        let event = event.unwrap_or_else(|| Event::Output {
            detail: line.to_owned(),
        });
        println!("{}", event.to_line_from(host));
        return;
    }
    match event {
        // The controller prints its own summary.
        Some(Event::Report { .. }) => {}
        Some(e) => match e.text() {
            Some(text) => eprintln!("[{host}] {text}"),
            None => eprintln!("[{host}] {line}"),
        },
        None => eprintln!("[{host}] {line}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_refused_for_an_unfinished_apply_needs_attention() {
        let tail = "Error: moorline::apply::unfinished\n  x an apply of staging is unfinished";
        assert_eq!(
            stuck_or(HostOutcome::Failed, tail),
            HostOutcome::NeedsAttention
        );
        assert_eq!(stuck_or(HostOutcome::Failed, "other"), HostOutcome::Failed);
        assert_eq!(
            stuck_or(HostOutcome::RolledBack, tail),
            HostOutcome::RolledBack
        );
    }

    #[test]
    fn exit_codes_of_a_fleet() {
        let mut s = Summary::default();
        s.outcomes.insert("a".into(), HostOutcome::Succeeded);
        assert_eq!(s.exit_code(), 0);
        s.outcomes.insert("b".into(), HostOutcome::RolledBack);
        assert_eq!(s.exit_code(), 6, "within max-fail, yet b did not succeed");
        assert_eq!(s.failed(), vec!["b"]);
        s.rollback_reason = Some("budget".into());
        s.rolled_back.insert("a".into(), true);
        assert_eq!(s.exit_code(), 3, "every host back");
        s.rolled_back.insert("a".into(), false);
        assert_eq!(s.exit_code(), 4, "a rollback failed");
        assert_eq!(s.attention(), vec!["a"]);
        s.rolled_back.insert("a".into(), true);
        s.outcomes.insert("c".into(), HostOutcome::Unknown);
        assert_eq!(
            s.exit_code(),
            4,
            "a host that dropped is never assumed back"
        );
        assert_eq!(s.attention(), vec!["c"]);
    }
}

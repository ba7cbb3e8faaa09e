//! The fleet plan: every host's own plan (made on the host, read-only),
//! gathered in parallel, with the hosts grouped by what their plans do, the
//! rollout's batches and what a fleet rollback would do. In: a [`Fleet`]
//! and a target commit; out: a [`FleetPlan`], a deterministic value whose
//! fingerprint covers the host list, each host's plan fingerprint and the
//! rollout. Renderers (`fleet::render`) are pure functions of it.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::remote::{self, Prepared};
use super::rollout::{self, Batch};
use super::{Fleet, FleetError, SshError};
use crate::config::{BatchSize, Host, Rollout};
use crate::git::Rev;
use crate::hostfacts::Fact;
use crate::plan::Plan;

/// Version of the fleet plan's JSON contract (docs/fleet.md).
pub(crate) const FLEET_FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetPlan {
    /// Present only in fleet plans: how a saved plan file is told apart
    /// from a single host's.
    pub(crate) fleet_format_version: u32,
    pub(crate) project: String,
    pub(crate) environment: String,
    pub(crate) to: Rev,
    pub(crate) rollout: RolloutView,
    /// In the environment's order.
    pub(crate) hosts: Vec<HostPlan>,
    /// Hosts whose plans do the same thing, largest group first.
    pub(crate) groups: Vec<Group>,
    /// In the order they run; the canary first.
    pub(crate) batches: Vec<Batch>,
    pub(crate) rollback: FleetRollback,
    /// SHA-256 over the hosts (names, addresses, users, ports), each
    /// host's plan fingerprint, the target and the rollout.
    pub(crate) fingerprint: String,
    /// `plan --from REV` of a fleet: every host planned on the controller,
    /// without ssh, as if REV (this `--from`) were deployed on it. Absent
    /// when the hosts made their plans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) planned_from: Option<String>,
    /// Per host, what it lacks for its plan (users, env-files, programs, ports), as its own
    /// `plan` found it; hosts that lack nothing are absent. Host state, not the plan: not in
    /// the fingerprint (a fact fixed between plan and apply does not make the plan stale), and
    /// a fleet `apply` refuses to start while any host lacks something.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) host_facts: BTreeMap<String, Vec<Fact>>,
    /// `promote-from` a source environment with hosts: each source host's
    /// run of the target, read over ssh (`fleet::promote`). The source's
    /// history, not this fleet's plan: not in the fingerprint; `apply`
    /// refuses unless it counts. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) promotion: Option<super::promote::FleetPromotion>,
    /// The artifacts the hosts install instead of building, each built
    /// once ([`with_artifacts`]); absent when no host builds a service
    /// that has one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) artifacts: Vec<ArtifactView>,
}

/// One artifact of a fleet plan: a service's release at the target, built
/// once and installed on every host whose plan builds the service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ArtifactView {
    pub(crate) service: String,
    pub(crate) commit: String,
    /// `sha256:...`: the SHA-256 of its manifest.
    pub(crate) id: String,
    /// The sum of its packs' sizes, in bytes.
    pub(crate) size: u64,
    /// The files of its release (without the dependency outputs).
    pub(crate) files: usize,
    /// Where it was built: `controller`.
    pub(crate) built_on: String,
}

/// The rollout block as the plan shows and fingerprints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RolloutView {
    pub(crate) canary: u32,
    /// `1`, `25%`, ...
    pub(crate) batches: Vec<String>,
    pub(crate) max_fail: u32,
    pub(crate) pause_secs: u64,
    pub(crate) connections: u32,
}

impl RolloutView {
    pub(crate) fn of(r: &Rollout) -> Self {
        Self {
            canary: r.canary,
            batches: r
                .batches
                .iter()
                .map(|b| match b {
                    BatchSize::Count(c) => c.to_string(),
                    BatchSize::Percent(p) => format!("{p}%"),
                })
                .collect(),
            max_fail: r.max_fail,
            pause_secs: r.pause.as_secs(),
            connections: r.connections,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPlan {
    pub name: String,
    pub address: String,
    pub user: Option<String>,
    pub port: Option<u16>,
    /// The host's own plan (`moorline plan --format json` there).
    pub plan: Plan,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Group {
    pub(crate) hosts: Vec<String>,
    /// What the group's hosts run now (`null`: nothing deployed).
    pub(crate) from: Option<String>,
    pub(crate) actions: usize,
    /// Services restarted by the group's plan.
    pub(crate) restarts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FleetRollback {
    /// Per host that would change, where a fleet rollback takes it.
    pub(crate) hosts: Vec<HostRollback>,
    pub(crate) summary: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HostRollback {
    pub(crate) host: String,
    /// The release it goes back to (`null`: a first deploy, nothing to go
    /// back to).
    pub(crate) to: Option<String>,
    pub(crate) services: Vec<String>,
    /// What the host's own rollback plan says of it (`code-only`,
    /// `needs-database`, ...).
    pub(crate) kind: crate::plan::RollbackKind,
}

impl FleetPlan {
    pub(crate) fn has_changes(&self) -> bool {
        self.hosts.iter().any(|h| h.plan.has_changes())
    }

    /// Whether a rollout has anything to do: a host's changes, or a host
    /// that only records the target as deployed ([`crate::plan::Plan::records_only`]).
    pub(crate) fn has_work(&self) -> bool {
        self.hosts
            .iter()
            .any(|h| h.plan.has_changes() || h.plan.records_only())
    }

    pub(crate) fn host(&self, name: &str) -> Option<&HostPlan> {
        self.hosts.iter().find(|h| h.name == name)
    }
}

/// Assembles the fleet plan from the hosts' plans (in the environment's
/// host order). Pure.
pub fn assemble(
    project: &str,
    environment: &str,
    to: Rev,
    rollout: &Rollout,
    hosts: Vec<HostPlan>,
) -> FleetPlan {
    let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
    let batches = rollout::batches(rollout, &names);
    let groups = groups(&hosts);
    let rollback = rollback(&hosts);
    let view = RolloutView::of(rollout);
    let fingerprint = fingerprint(&to, &view, &hosts);
    FleetPlan {
        fleet_format_version: FLEET_FORMAT_VERSION,
        project: project.to_owned(),
        environment: environment.to_owned(),
        to,
        rollout: view,
        hosts,
        groups,
        batches,
        rollback,
        fingerprint,
        planned_from: None,
        host_facts: BTreeMap::new(),
        promotion: None,
        artifacts: Vec::new(),
    }
}

/// Makes each host's plan install `artifacts` instead of building (the
/// same map for every host, through [`crate::plan::with_artifacts`], as a
/// host's `--artifact` does), records them in the plan and fingerprints it
/// again: the fleet fingerprint covers their ids.
pub(crate) fn with_artifacts(p: &mut FleetPlan, artifacts: Vec<ArtifactView>) {
    let ids: BTreeMap<String, String> = artifacts
        .iter()
        .map(|a| (a.service.clone(), a.id.clone()))
        .collect();
    for h in &mut p.hosts {
        crate::plan::with_artifacts(&mut h.plan, &ids);
    }
    p.groups = groups(&p.hosts);
    p.artifacts = artifacts;
    p.fingerprint = fingerprint(&p.to, &p.rollout, &p.hosts);
    if !p.artifacts.is_empty() {
        let v = serde_json::json!({"fleet": p.fingerprint, "artifacts": ids});
        p.fingerprint = crate::files::sha256_hex(v.to_string().as_bytes());
    }
}

/// Service → the artifact id the plan ships: what `promote-from` compares
/// with what the source's hosts run.
pub(crate) fn planned_artifacts(p: &FleetPlan) -> BTreeMap<String, String> {
    p.artifacts
        .iter()
        .map(|a| (a.service.clone(), a.id.clone()))
        .collect()
}

/// The fleet fingerprint (see [`FleetPlan::fingerprint`]).
pub(crate) fn fingerprint(to: &Rev, rollout: &RolloutView, hosts: &[HostPlan]) -> String {
    let hosts: Vec<_> = hosts
        .iter()
        .map(|h| {
            serde_json::json!({
                "name": h.name, "address": h.address, "user": h.user, "port": h.port,
                "plan": h.plan.fingerprint,
            })
        })
        .collect();
    let v = serde_json::json!({
        "fleet_format_version": FLEET_FORMAT_VERSION,
        "to": to.sha,
        "rollout": rollout,
        "hosts": hosts,
    });
    crate::files::sha256_hex(v.to_string().as_bytes())
}

/// What a host's plan does, without what is only the host's (its state
/// hash, its unit hashes): the key hosts are grouped by.
fn what_it_does(p: &Plan) -> String {
    serde_json::json!({
        "from": p.from.as_ref().map(|f| &f.sha),
        "actions": p.actions,
    })
    .to_string()
}

fn groups(hosts: &[HostPlan]) -> Vec<Group> {
    let mut by: BTreeMap<String, Group> = BTreeMap::new();
    let mut order = Vec::new();
    for h in hosts {
        let key = what_it_does(&h.plan);
        let g = by.entry(key.clone()).or_insert_with(|| {
            order.push(key);
            Group {
                hosts: Vec::new(),
                from: h.plan.from.as_ref().map(|f| f.sha.clone()),
                actions: h.plan.actions.len(),
                restarts: h
                    .plan
                    .actions
                    .iter()
                    .filter(|a| {
                        matches!(
                            a.kind(),
                            crate::plan::ActionKind::Restart | crate::plan::ActionKind::SlotStart
                        )
                    })
                    .filter_map(|a| a.service.clone())
                    .collect(),
            }
        });
        g.hosts.push(h.name.clone());
    }
    let mut out: Vec<Group> = order.into_iter().filter_map(|k| by.remove(&k)).collect();
    // Largest first; ties keep the hosts' order (the sort is stable).
    out.sort_by_key(|g| std::cmp::Reverse(g.hosts.len()));
    out
}

fn rollback(hosts: &[HostPlan]) -> FleetRollback {
    let changing: Vec<HostRollback> = hosts
        .iter()
        .filter(|h| h.plan.has_changes())
        .map(|h| HostRollback {
            host: h.name.clone(),
            to: h.plan.from.as_ref().map(|f| f.sha.clone()),
            services: h
                .plan
                .actions
                .iter()
                .filter(|a| {
                    matches!(
                        a.kind(),
                        crate::plan::ActionKind::Restart | crate::plan::ActionKind::SlotStart
                    )
                })
                .filter_map(|a| a.service.clone())
                .collect(),
            kind: h.plan.rollback.kind,
        })
        .collect();
    let summary = if changing.is_empty() {
        "nothing changes, so there is nothing to roll back".to_owned()
    } else {
        "when the failure budget is exceeded, no further host starts, hosts in flight finish, and every host that switched runs its own `moorline rollback` (in parallel): each goes back to the release it runs now, without a rebuild (a host whose apply is its first deploy goes back to nothing deployed: its services stopped, their unit files removed); a host that failed rolls itself back, and a host that cannot be reached is reported, never assumed rolled back".to_owned()
    };
    FleetRollback {
        hosts: changing,
        summary,
    }
}

/// The commit a fleet plan deploys: `--to`, else the tip of the
/// environment's branch, resolved in the controller's repository.
pub(crate) fn target(t: &crate::target::Target, to: Option<&str>) -> miette::Result<Rev> {
    Ok(match to {
        Some(spec) => t.repo.resolve(spec)?,
        None => t.repo.branch_tip(&t.env.branch)?,
    })
}

/// What the controller asks a host's plan for.
#[derive(Debug, Clone, Default)]
pub(crate) struct HostPlanArgs {
    pub(crate) allow_non_ancestor: bool,
    pub(crate) adopt: Vec<String>,
    pub(crate) skip_promotion_check: bool,
}

/// How one host answered.
pub(crate) enum Gathered {
    /// The host's plan, and what the host lacks for it.
    Planned(Prepared, Box<Plan>, Vec<Fact>),
    Unreachable(Host, SshError),
}

/// Prepares every host and asks each for its plan, at most
/// `rollout.connections` at a time. An unreachable host (or a host key
/// mismatch) is returned as such; any other failure is an error.
pub(crate) async fn gather(
    fleet: &Arc<Fleet>,
    to: &str,
    args: &HostPlanArgs,
) -> Result<Vec<Gathered>, FleetError> {
    let permits = Arc::new(tokio::sync::Semaphore::new(
        usize::try_from(fleet.env.rollout.connections.max(1)).unwrap_or(8),
    ));
    let mut set = tokio::task::JoinSet::new();
    for (i, host) in fleet.hosts().iter().enumerate() {
        let (fleet, host, to, args, permits) = (
            Arc::clone(fleet),
            host.clone(),
            to.to_owned(),
            args.clone(),
            Arc::clone(&permits),
        );
        set.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let res = plan_host(&fleet, &host, &to, &args).await;
            fleet
                .end_turn(&host, super::at_once(fleet.env.rollout.connections))
                .await;
            (i, res)
        });
    }
    let mut out: Vec<(usize, Gathered)> = Vec::new();
    let mut first_error = None;
    while let Some(joined) = set.join_next().await {
        let Ok((i, res)) = joined else { continue };
        match res {
            Ok(g) => out.push((i, g)),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    out.sort_by_key(|(i, _)| *i);
    Ok(out.into_iter().map(|(_, g)| g).collect())
}

async fn plan_host(
    fleet: &Fleet,
    host: &Host,
    to: &str,
    args: &HostPlanArgs,
) -> Result<Gathered, FleetError> {
    let prepared = match remote::prepare(fleet, host, to, remote::Checkout::Target).await {
        Ok(p) => p,
        Err(FleetError::Ssh(e @ (SshError::Unreachable { .. } | SshError::HostKey { .. }))) => {
            return Ok(Gathered::Unreachable(host.clone(), e));
        }
        Err(e) => return Err(e),
    };
    let (plan, facts) = host_plan_and_facts(fleet, &prepared, to, args).await?;
    Ok(Gathered::Planned(prepared, Box::new(plan), facts))
}

/// Runs the host's `moorline plan --format json` and reads its plan.
pub(crate) async fn host_plan(
    fleet: &Fleet,
    p: &Prepared,
    to: &str,
    args: &HostPlanArgs,
) -> Result<Plan, FleetError> {
    Ok(host_plan_and_facts(fleet, p, to, args).await?.0)
}

/// [`host_plan`], and what the host lacks for that plan (the line its `plan` prints on
/// standard error, [`crate::hostfacts::FactsLine`]).
async fn host_plan_and_facts(
    fleet: &Fleet,
    p: &Prepared,
    to: &str,
    args: &HostPlanArgs,
) -> Result<(Plan, Vec<Fact>), FleetError> {
    let mut words = vec![
        "plan",
        "--env",
        &fleet.env.name,
        "--to",
        to,
        "--format",
        "json",
    ];
    if args.allow_non_ancestor {
        words.push("--allow-non-ancestor");
    }
    if args.skip_promotion_check {
        words.push("--skip-promotion-check");
    }
    for a in &args.adopt {
        words.push("--adopt");
        words.push(a);
    }
    let out = fleet
        .transport
        .run(&p.host, &p.moorline(&words), super::ssh::Input::Null)
        .await?;
    if out.code != 0 {
        return Err(FleetError::remote(
            &p.host,
            format!(
                "its plan failed (exit {}):\n{}",
                out.code,
                out.stderr.trim_end()
            ),
            "run the same `moorline plan` on the host to see why",
        ));
    }
    let plan = serde_json::from_slice(&out.stdout).map_err(|e| {
        FleetError::remote(
            &p.host,
            format!("its plan is not a moorline plan: {e}"),
            "the host runs the controller's moorline; check its output by hand",
        )
    })?;
    Ok((plan, crate::hostfacts::parse_facts_line(&out.stderr)))
}

/// Refuses a fleet plan some host of which is unreachable (listing them);
/// with `skip`, returns them instead.
pub(crate) fn unreachable(gathered: &[Gathered]) -> Vec<(&Host, &SshError)> {
    gathered
        .iter()
        .filter_map(|g| match g {
            Gathered::Unreachable(h, e) => Some((h, e)),
            Gathered::Planned(..) => None,
        })
        .collect()
}

/// What each host that answered lacks for its plan (hosts that lack nothing left out).
pub(crate) fn host_facts(gathered: &[Gathered]) -> BTreeMap<String, Vec<Fact>> {
    gathered
        .iter()
        .filter_map(|g| match g {
            Gathered::Planned(p, _, facts) if !facts.is_empty() => {
                Some((p.host.name.clone(), facts.clone()))
            }
            _ => None,
        })
        .collect()
}

/// The error for hosts that could not be reached: the host's own error
/// when there is one, else a list.
pub(crate) fn unreachable_error(gathered: &[Gathered]) -> Option<FleetError> {
    let mut down = unreachable(gathered);
    match down.len() {
        0 => None,
        1 => {
            let (h, e) = down.remove(0);
            Some(match e {
                SshError::HostKey {
                    host,
                    address,
                    detail,
                    forget,
                } => FleetError::Ssh(SshError::HostKey {
                    host: host.clone(),
                    address: address.clone(),
                    detail: detail.clone(),
                    forget: forget.clone(),
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

/// The plans of the hosts that answered, each with where the host is.
pub(crate) fn host_plans(fleet: &Fleet, gathered: &[Gathered]) -> Vec<HostPlan> {
    gathered
        .iter()
        .filter_map(|g| match g {
            Gathered::Planned(p, plan, _) => {
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

/// The hosts that answered, prepared, by name.
pub(crate) fn prepared(gathered: Vec<Gathered>) -> BTreeMap<String, Prepared> {
    gathered
        .into_iter()
        .filter_map(|g| match g {
            Gathered::Planned(p, _, _) => Some((p.host.name.clone(), p)),
            Gathered::Unreachable(..) => None,
        })
        .collect()
}

/// The fleet plan of `to`, every host planned over ssh (the connections
/// closed after); an unreachable host is refused.
pub(crate) async fn over_ssh(
    fleet: &Arc<Fleet>,
    to: Rev,
    args: &HostPlanArgs,
) -> Result<FleetPlan, FleetError> {
    let res = gather(fleet, &to.sha, args).await;
    fleet.transport.close_all(fleet.hosts()).await;
    let gathered = res?;
    if let Some(e) = unreachable_error(&gathered) {
        return Err(e);
    }
    let mut plan = assemble(
        &fleet.project,
        &fleet.env.name,
        to,
        &fleet.env.rollout,
        host_plans(fleet, &gathered),
    );
    plan.host_facts = host_facts(&gathered);
    super::artifacts::build(fleet, &mut plan).await?;
    plan.promotion = super::promote::check(
        fleet,
        &plan.to,
        &planned_artifacts(&plan),
        args.skip_promotion_check,
    )
    .await?;
    Ok(plan)
}

/// The fleet plan of `to` made here, without ssh, every host planned as if
/// `request.from` were deployed on it (each host's plan is what
/// `moorline --host NAME plan --from REV` makes; `target_of` resolves the
/// target acting as a host). For pull-request review on a runner that
/// holds no key to the hosts: its fingerprint never matches the hosts
/// (`apply FILE` refuses it), `apply --reviewed` compares what it does
/// with the hosts' real plans.
pub(crate) fn offline(
    t: &crate::target::Target,
    to: Rev,
    request: &crate::observe::PlanRequest,
    target_of: impl Fn(&Host) -> miette::Result<crate::target::Target>,
) -> miette::Result<FleetPlan> {
    let mut request = request.clone();
    request.to = Some(to.sha.clone());
    let mut hosts = Vec::new();
    for h in &t.env.hosts {
        let ht = target_of(h)?;
        hosts.push(HostPlan {
            name: h.name.clone(),
            address: h.address.clone(),
            user: h.user.clone(),
            port: h.port,
            plan: crate::observe::compute_plan(&ht, &request)?,
        });
    }
    let mut p = assemble(
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn plan(from: Option<&str>, fingerprint: &str, restarts: &[&str]) -> Plan {
        let actions: Vec<serde_json::Value> = restarts
            .iter()
            .map(|s| {
                serde_json::json!({
                    "id": format!("restart:{s}"), "kind": "restart", "service": s,
                    "unit": format!("p-{s}.service"),
                    "phase": null, "reason": "changed", "after": []
                })
            })
            .collect();
        let v = serde_json::json!({
            "format_version": 1, "operation": "deploy", "project": "p", "environment": "prod",
            "branch": "main",
            "from": from.map(|f| serde_json::json!({"spec": f, "sha": f, "summary": ""})),
            "to": {"spec": "b", "sha": "b", "summary": ""},
            "first_deploy": from.is_none(), "non_ancestor": false, "fingerprint": fingerprint,
            "inputs": {"moorline_version": "0", "config_sha256": "c", "state_sha256": null,
                "units_source": "none", "units": {}, "allow_non_ancestor": false},
            "changed_paths": 0, "services": [], "actions": actions,
            "rollback": {"kind": "code-only", "services": [], "summary": ""}, "warnings": []
        });
        serde_json::from_value(v).unwrap_or_else(|e| panic!("{e}"))
    }

    fn host(name: &str, plan: Plan) -> HostPlan {
        HostPlan {
            name: name.into(),
            address: format!("10.0.0.{}", name.len()),
            user: None,
            port: None,
            plan,
        }
    }

    fn fleet(hosts: Vec<HostPlan>) -> FleetPlan {
        let to = Rev {
            spec: "b".into(),
            sha: "b".into(),
            summary: String::new(),
        };
        assemble("p", "prod", to, &Rollout::default(), hosts)
    }

    #[test]
    fn hosts_doing_the_same_are_grouped_whatever_their_fingerprints() {
        let f = fleet(vec![
            host("a1", plan(Some("a"), "f1", &["api"])),
            host("a2", plan(Some("a"), "f2", &["api"])),
            host("b1", plan(Some("z"), "f3", &["api"])),
            host("a3", plan(Some("a"), "f4", &["api"])),
        ]);
        let g: Vec<Vec<String>> = f.groups.iter().map(|g| g.hosts.clone()).collect();
        assert_eq!(g, vec![vec!["a1", "a2", "a3"], vec!["b1"]]);
        assert_eq!(f.rollback.hosts.len(), 4);
        assert_eq!(f.rollback.hosts[3].to.as_deref(), Some("a"));
    }

    #[test]
    fn the_fingerprint_moves_with_any_host_plan_the_host_list_or_the_rollout() {
        let base = || {
            vec![
                host("a1", plan(Some("a"), "f1", &["api"])),
                host("a2", plan(Some("a"), "f2", &["api"])),
            ]
        };
        let f = fleet(base()).fingerprint;
        assert_eq!(fleet(base()).fingerprint, f, "deterministic");
        let mut moved = base();
        moved[1].plan.fingerprint = "other".into();
        assert_ne!(fleet(moved).fingerprint, f, "a host's plan");
        let mut readdressed = base();
        readdressed[0].address = "10.9.9.9".into();
        assert_ne!(fleet(readdressed).fingerprint, f, "an address");
        assert_ne!(fleet(base()[..1].to_vec()).fingerprint, f, "the host list");
        let to = fleet(base()).to;
        let r = Rollout {
            canary: 1,
            ..Rollout::default()
        };
        assert_ne!(
            assemble("p", "prod", to, &r, base()).fingerprint,
            f,
            "the rollout"
        );
    }

    #[test]
    fn artifacts_annotate_every_host_and_move_the_fleet_fingerprint() {
        let build = |h: &str, f: &str| {
            let mut p = plan(Some("a"), f, &["api"]);
            p.actions.push(crate::plan::Action {
                id: "build:api".into(),
                service: Some("api".into()),
                phase: None,
                reason: String::new(),
                after: Vec::new(),
                step: crate::plan::Step::Build {
                    release: "/srv/api/releases/b".into(),
                    command: None,
                    artifact: None,
                },
            });
            host(h, p)
        };
        let mut f = fleet(vec![build("a1", "f1"), build("a2", "f2")]);
        let before = f.fingerprint.clone();
        let json_before = serde_json::to_string(&f).unwrap();
        assert!(!json_before.contains("artifacts"), "absent when none");
        let id = format!("sha256:{}", "e".repeat(64));
        let view = ArtifactView {
            service: "api".into(),
            commit: "b".into(),
            id: id.clone(),
            size: 10,
            files: 2,
            built_on: "controller".into(),
        };
        with_artifacts(&mut f, vec![view.clone()]);
        assert_ne!(
            f.fingerprint, before,
            "the fleet fingerprint covers the ids"
        );
        for h in &f.hosts {
            assert_eq!(h.plan.inputs.artifacts.get("api"), Some(&id), "{}", h.name);
        }
        let g: Vec<Vec<String>> = f.groups.iter().map(|g| g.hosts.clone()).collect();
        assert_eq!(g, vec![vec!["a1", "a2"]], "the same artifact: one group");
        let again = f.fingerprint.clone();
        let mut other = f.clone();
        with_artifacts(
            &mut other,
            vec![ArtifactView {
                id: format!("sha256:{}", "d".repeat(64)),
                ..view
            }],
        );
        assert_ne!(other.fingerprint, again, "another artifact, another plan");
        let back: FleetPlan = serde_json::from_str(&serde_json::to_string(&f).unwrap()).unwrap();
        assert_eq!(back, f);
    }

    #[test]
    fn the_fleet_plan_round_trips_through_json() {
        let f = fleet(vec![host("a1", plan(None, "f1", &["api"]))]);
        let text = serde_json::to_string(&f).unwrap();
        let back: FleetPlan = serde_json::from_str(&text).unwrap();
        assert_eq!(back, f);
        assert!(back.rollback.hosts[0].to.is_none());
    }
}

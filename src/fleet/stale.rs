//! What moved between a saved or reviewed fleet plan and the fleet's
//! plans now, host by host: pure functions of two [`FleetPlan`]s, the fleet
//! form of `crate::plan::stale` and `crate::plan::review_differences`.

use super::plan::{FleetPlan, HostPlan};

/// Host by host, what `differs` says of each host of `before` that is still
/// in `now` (hosts in `skipped` are not compared), then the hosts removed
/// and added.
fn host_differences(
    before: &FleetPlan,
    now: &FleetPlan,
    skipped: &[String],
    differs: impl Fn(&HostPlan, &HostPlan) -> Option<String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for h in before.hosts.iter().filter(|h| !skipped.contains(&h.name)) {
        match now.host(&h.name) {
            None => out.push(format!("host {} is no longer in the environment", h.name)),
            Some(n) => out.extend(differs(h, n)),
        }
    }
    for h in &now.hosts {
        if before.host(&h.name).is_none() {
            out.push(format!("host {} was added to the environment", h.name));
        }
    }
    out
}

/// What moved between a reviewed fleet plan and the fleet now, host by
/// host (empty: nothing).
pub(crate) fn what_moved(saved: &FleetPlan, fresh: &FleetPlan, skipped: &[String]) -> Vec<String> {
    let mut moved = Vec::new();
    if saved.rollout != fresh.rollout {
        moved.push("the rollout block changed".to_owned());
    }
    if saved.to.sha != fresh.to.sha {
        moved.push(format!(
            "the target moved from {} to {}",
            crate::plan::short(&saved.to.sha),
            crate::plan::short(&fresh.to.sha)
        ));
    }
    moved.extend(host_differences(saved, fresh, skipped, |h, f| {
        if f.address != h.address || f.user != h.user || f.port != h.port {
            Some(format!("host {} has a new address", h.name))
        } else if f.plan.fingerprint != h.plan.fingerprint || f.plan.actions != h.plan.actions {
            let why = crate::plan::stale::what_moved(&h.plan, &f.plan).join("; ");
            Some(format!("host {} moved: {why}", h.name))
        } else {
            None
        }
    }));
    moved
}

/// What the fleet's fresh plans do differently from a reviewed fleet plan,
/// host by host (empty: the same). Each host's plan is compared with its
/// reviewed one as a host's `--reviewed` is ([`crate::plan::review_differences`]):
/// what happens, not the inputs; with `same_target` false the target may
/// be another commit (the merge of the reviewed pull request).
pub(crate) fn review_differences(
    reviewed: &FleetPlan,
    fresh: &FleetPlan,
    skipped: &[String],
    same_target: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    if reviewed.project != fresh.project || reviewed.environment != fresh.environment {
        out.push(format!(
            "it is for {}/{}, this is {}/{}",
            reviewed.project, reviewed.environment, fresh.project, fresh.environment
        ));
    }
    if reviewed.rollout != fresh.rollout {
        out.push("the rollout block changed".to_owned());
    }
    if same_target && reviewed.to.sha != fresh.to.sha {
        out.push(format!(
            "it deploys {}, the fleet now {}",
            crate::plan::short(&reviewed.to.sha),
            crate::plan::short(&fresh.to.sha)
        ));
    }
    out.extend(host_differences(reviewed, fresh, skipped, |h, f| {
        let d = crate::plan::review_differences(&h.plan, &f.plan, same_target);
        (!d.is_empty()).then(|| format!("host {}: {}", h.name, d.join("; ")))
    }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_whose_plan_moved_is_named() {
        let saved: FleetPlan = serde_json::from_value(serde_json::json!({
            "fleet_format_version": 1, "project": "p", "environment": "e",
            "to": {"spec": "b", "sha": "b", "summary": ""},
            "rollout": {"canary": 0, "batches": ["100%"], "max_fail": 0, "pause_secs": 0, "connections": 8},
            "hosts": [], "groups": [], "batches": [],
            "rollback": {"hosts": [], "summary": ""}, "fingerprint": "x"
        }))
        .unwrap();
        let mut fresh = saved.clone();
        fresh.rollout.canary = 1;
        let moved = what_moved(&saved, &fresh, &[]);
        assert_eq!(moved, vec!["the rollout block changed"]);
    }
}

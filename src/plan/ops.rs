//! Plans without a build: a rollback (switch services to kept releases)
//! and an ordered restart. Same value, same renderers, same executor as a
//! deploy: restarts phase by phase, each gated on readiness, `depends-on`
//! ordering restarts inside a phase, the proxy reloaded last.

use std::collections::{BTreeMap, BTreeSet};

use super::build::health_action;
use super::{
    Action, Command, FORMAT_VERSION, Operation, Plan, PlanInputs, RollbackKind, RollbackPlan,
    ServiceChange, ServicePlan, Step as ActionStep, UnitChange, UnitSource, short,
};
use crate::changes::Rev;
use crate::config::{Config, Environment};
use crate::state::sha256_hex;

/// One service to restart, optionally switched to a release first.
#[derive(Debug, Clone)]
pub struct Step {
    pub service: String,
    /// Switch `current` to this release (a revision) before restarting.
    pub release: Option<String>,
    pub from_revision: Option<String>,
    pub reason: String,
    /// A saved unit file to put back first (the unit of the release being
    /// returned to, when the apply being undone changed it).
    pub unit_restore: Option<String>,
}

pub struct OpsInputs<'a> {
    pub config: &'a Config,
    pub config_text: &'a str,
    pub env: &'a Environment,
    pub operation: Operation,
    pub steps: Vec<Step>,
    pub from: Option<Rev>,
    pub to: Rev,
    pub state_sha256: Option<String>,
    /// Also restart each phase's infrastructure units, before its services.
    pub infrastructure: bool,
}

/// Builds the plan: restart (and health) for every step, in start order.
pub fn build(inp: OpsInputs<'_>) -> Plan {
    let config = inp.config;
    let env = inp.env;
    let steps: BTreeMap<usize, &Step> = inp
        .steps
        .iter()
        .filter_map(|s| {
            config
                .services
                .iter()
                .position(|c| c.name == s.service)
                .map(|i| (i, s))
        })
        .collect();
    let mut actions: Vec<Action> = Vec::new();
    let mut previous_health: Vec<String> = Vec::new();
    // Unit files of the releases returned to go back first, with one
    // daemon-reload, before any restart.
    let mut installs = Vec::new();
    for (i, step) in &steps {
        if let Some(saved) = &step.unit_restore {
            let s = &config.services[*i];
            let id = format!("install-unit:{}", s.name);
            actions.push(Action {
                id: id.clone(),
                service: Some(s.name.clone()),
                phase: Some(s.phase.clone()),
                reason: "put back the unit file of the release returned to".to_owned(),
                after: Vec::new(),
                step: ActionStep::InstallUnit {
                    unit: s.unit_name.clone(),
                    source: UnitSource::Saved(saved.clone()),
                },
            });
            installs.push((id, s.unit_name.clone()));
        }
    }
    if !installs.is_empty() {
        actions.push(Action {
            id: "daemon-reload".to_owned(),
            service: None,
            phase: None,
            reason: format!(
                "systemd must re-read {} restored unit file(s)",
                installs.len()
            ),
            after: installs.iter().map(|(id, _)| id.clone()).collect(),
            step: ActionStep::DaemonReload {
                enable: installs.into_iter().map(|(_, unit)| unit).collect(),
            },
        });
        previous_health = vec!["daemon-reload".to_owned()];
    }
    for (pi, phase) in config.phases.iter().enumerate() {
        let in_phase: Vec<usize> = steps
            .keys()
            .copied()
            .filter(|i| config.services[*i].phase_index == pi)
            .collect();
        if inp.infrastructure && !phase.units.is_empty() {
            let mut ids = Vec::new();
            for u in &phase.units {
                let id = format!("restart:{u}");
                actions.push(Action {
                    id: id.clone(),
                    service: None,
                    phase: Some(phase.name.clone()),
                    reason: format!("infrastructure of phase {}", phase.name),
                    after: previous_health.clone(),
                    step: ActionStep::Restart {
                        unit: u.clone(),
                        release: None,
                    },
                });
                ids.push(id);
            }
            previous_health = ids;
        }
        if in_phase.is_empty() {
            continue;
        }
        let names: BTreeSet<&str> = in_phase
            .iter()
            .map(|i| config.services[*i].name.as_str())
            .collect();
        for i in &in_phase {
            let s = &config.services[*i];
            let step = steps[i];
            let mut after = previous_health.clone();
            for d in &s.depends_on {
                if names.contains(d.as_str()) {
                    after.push(format!("health:{d}"));
                }
            }
            actions.push(Action {
                id: format!("restart:{}", s.name),
                service: Some(s.name.clone()),
                phase: Some(s.phase.clone()),
                reason: step.reason.clone(),
                after,
                step: ActionStep::Restart {
                    unit: s.unit_name.clone(),
                    release: step
                        .release
                        .as_ref()
                        .map(|r| format!("{}/{}/releases/{r}", env.root, s.name)),
                },
            });
            actions.push(health_action(s, vec![format!("restart:{}", s.name)]));
        }
        previous_health = in_phase
            .iter()
            .filter(|i| {
                let name = &config.services[**i].name;
                !in_phase
                    .iter()
                    .any(|j| config.services[*j].depends_on.iter().any(|d| d == name))
            })
            .map(|i| format!("health:{}", config.services[*i].name))
            .collect();
    }
    if let Some(p) = &config.proxy
        && !actions.is_empty()
    {
        actions.push(Action {
            id: "reload-proxy".to_owned(),
            service: None,
            phase: None,
            reason: match &p.check {
                Some(c) => format!("upstreams restarted; after `{}` passes", c.argv.join(" ")),
                None => "upstreams restarted".to_owned(),
            },
            after: previous_health.clone(),
            step: ActionStep::ReloadProxy {
                unit: p.unit.clone(),
                check: p.check.as_ref().map(|c| Command {
                    argv: c.argv.clone(),
                    timeout_secs: c.timeout.as_secs(),
                }),
            },
        });
    }
    // Actions were produced in a valid order; a stable sort by the same
    // order keeps it deterministic.
    let mut services = Vec::new();
    let mut order_idx: Vec<usize> = (0..config.services.len()).collect();
    order_idx.sort_by_key(|i| (config.services[*i].phase_index, *i));
    for i in order_idx {
        let s = &config.services[i];
        let step = steps.get(&i);
        services.push(ServicePlan {
            name: s.name.clone(),
            phase: s.phase.clone(),
            unit: s.unit_name.clone(),
            change: match step {
                Some(st) if st.release.is_some() => ServiceChange::Deploy,
                Some(_) => ServiceChange::Restart,
                None => ServiceChange::Unchanged,
            },
            migrate: false,
            unit_change: if s.unit.is_some() {
                UnitChange::Unchanged
            } else {
                UnitChange::Unmanaged
            },
            from_revision: step.and_then(|st| st.from_revision.clone()),
            to_revision: step
                .and_then(|st| st.release.clone().or_else(|| st.from_revision.clone())),
            reasons: step.map(|st| vec![st.reason.clone()]).unwrap_or_default(),
            changed_paths: Vec::new(),
            changed_count: 0,
            unit_diff: None,
        });
    }
    let switched: Vec<String> = inp
        .steps
        .iter()
        .filter(|s| s.release.is_some())
        .map(|s| s.service.clone())
        .collect();
    let rollback = RollbackPlan {
        kind: if switched.is_empty() {
            RollbackKind::Nothing
        } else {
            RollbackKind::CodeOnly
        },
        summary: if switched.is_empty() {
            "no release changes: nothing to roll back".to_owned()
        } else {
            format!(
                "code-only: `moorline rollback --env {}` switches {} back again",
                env.name,
                switched.join(", ")
            )
        },
        services: switched,
    };
    let inputs = PlanInputs {
        moorline_version: env!("CARGO_PKG_VERSION").to_owned(),
        config_sha256: sha256_hex(inp.config_text.as_bytes()),
        state_sha256: inp.state_sha256,
        units_source: "none".to_owned(),
        units: BTreeMap::new(),
        allow_non_ancestor: false,
        adopt: Vec::new(),
        pending_migrations: Vec::new(),
        skip_promotion_check: false,
    };
    let fp = serde_json::json!({
        "operation": inp.operation,
        "inputs": &inputs,
        "actions": &actions,
    });
    let fingerprint = format!(
        "sha256:{}",
        sha256_hex(serde_json::to_string(&fp).unwrap_or_default().as_bytes())
    );
    let _ = short;
    Plan {
        format_version: FORMAT_VERSION,
        operation: inp.operation,
        project: config.project.name.clone(),
        environment: env.name.clone(),
        branch: env.branch.clone(),
        from: inp.from,
        to: inp.to,
        first_deploy: false,
        non_ancestor: false,
        fingerprint,
        inputs,
        changed_paths: 0,
        services,
        actions,
        rollback,
        warnings: Vec::new(),
        notes: Vec::new(),
        conflicts: Vec::new(),
        uncommitted: Vec::new(),
        promotion: None,
    }
}

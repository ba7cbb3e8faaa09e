//! The planner: config + git changes + a view of the host → `Plan`.
//! Deterministic: ordered maps everywhere, an explicit tie-break in the
//! topological order, no clock. Reads git (through `Repo`) but never the
//! host itself: what it knows of the host comes in `HostView`.

mod affected;
mod graph;
mod order;
mod rollback;
mod units;

use std::collections::{BTreeMap, BTreeSet};

use miette::Diagnostic;

use super::{
    Action, ActionKind, Command, FORMAT_VERSION, Plan, PlanInputs, RollbackKind, ServiceChange,
    ServicePlan, Step, UnitChange, UnitSource, short,
};
use crate::changes::{Changes, GitError, Repo};
use crate::config::{Config, Environment, FirstDeploy, Service};
use crate::state::{State, sha256_hex};
use crate::template::{self, Vars};
use crate::unit;
use graph::{Graph, barrier, needs_barrier};

/// How many changed paths a reason lists before it only counts.
const PATHS_SHOWN: usize = 5;

/// What the planner knows of the host.
#[derive(Debug, Clone, Default)]
pub struct HostView {
    pub state: Option<State>,
    pub state_sha256: Option<String>,
    /// `host`, `config@<sha>` or `none`.
    pub units_source: String,
    /// Service name → the text of its baseline unit file, if one exists.
    pub units: BTreeMap<String, Option<String>>,
    /// Service name → a unit file on this host, where the service's unit
    /// goes, that the host state does not record as installed by moorline.
    pub foreign_units: BTreeMap<String, ForeignUnit>,
    /// Service name → what its runtime's `migrate-status` reported on this
    /// host (only services that have one and are deployed here; empty when
    /// the plan is not made on the host).
    pub migrate_status: BTreeMap<String, MigrateCheck>,
    /// Plan keys of the dependency cache's entries on this host (`None`:
    /// not planned on the host, the cache is not visible).
    pub deps_cache: Option<BTreeSet<String>>,
}

/// What `migrate-status` says about a deployed service's migrations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrateCheck {
    UpToDate,
    Pending,
    /// It could not tell (no release to run it in, the command failed to
    /// run): the plan says so and plans from git alone.
    Unavailable(String),
}

/// A unit file moorline did not install (see [`HostView::foreign_units`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignUnit {
    pub path: String,
    pub text: String,
}

pub struct Inputs<'a> {
    pub config: &'a Config,
    pub config_text: &'a str,
    pub env: &'a Environment,
    pub changes: &'a Changes,
    pub host: &'a HostView,
    pub repo: &'a Repo,
    pub allow_non_ancestor: bool,
    /// Services whose foreign unit file may be replaced (`--adopt`), sorted.
    pub adopt: &'a [String],
}

#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum PlanError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Git(#[from] GitError),
    #[error("the plan's action graph has a cycle through {0}")]
    #[diagnostic(
        code(moorline::plan::cycle),
        help("this is a bug in moorline: please report it with the config")
    )]
    Cycle(String),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Unit(#[from] unit::UnitError),
}

/// Builds the plan.
pub fn build(inp: &Inputs<'_>) -> Result<Plan, PlanError> {
    let Inputs {
        config,
        env,
        changes,
        host,
        repo,
        ..
    } = *inp;
    let to = &changes.to;
    let first_deploy = changes.from.is_none();
    let mut warnings = Vec::new();
    let mut notes = Vec::new();
    if changes.non_ancestor
        && let Some(from) = &changes.from
    {
        warnings.push(format!(
            "{} is not an ancestor of {}: commits on the deployed revision are not in the target (a hotfix never merged back?) and would be undone",
            short(&from.sha),
            short(&to.sha)
        ));
    }

    // Which services the change touches, and why.
    let hits = affected::path_hits(config, changes);
    let state = host.state.as_ref();
    let target = repo.snapshot(&to.sha)?;
    let affected = affected::affected_services(inp, &target, &hits, &mut notes)?;

    // Unit files: rendered vs baseline.
    let units::UnitPlan {
        changes: unit_changes,
        input_units,
        conflicts,
    } = units::unit_changes(config, env, host, inp.adopt, &mut warnings)?;

    // Assemble actions.
    let mut g = Graph::default();
    let current_of = |s: &Service| unit::current_link(env, &s.name);
    let release_of = |s: &Service| format!("{}/{}/releases/{}", env.root, s.name, to.sha);

    let mut builds: BTreeMap<usize, usize> = BTreeMap::new();
    let mut migrations: Vec<(usize, usize)> = Vec::new();
    for (i, a) in &affected {
        let s = &config.services[*i];
        let rt = config.runtime_of(s);
        let release = release_of(s);
        let current = current_of(s);
        let vars = Vars {
            service: Some(&s.name),
            port: Some(s.port),
            root: Some(&env.root),
            release: Some(&release),
            current: Some(&current),
            backup: None,
        };
        let build_cmd = rt.and_then(|r| r.build.as_ref());
        let deps_note = match rt.and_then(|r| r.deps.as_ref().map(|d| (r, d))) {
            Some((r, d)) => {
                let inputs = crate::deps::input_ids(&target, s, &d.inputs);
                // The release the service runs now (or, planned away from
                // the host, the revision deployed before).
                let live_rev = match state {
                    Some(st) => st.services.get(&s.name).map(|l| l.revision.clone()),
                    None => changes.from.as_ref().map(|f| f.sha.clone()),
                };
                let live_inputs = live_rev
                    .and_then(|rev| repo.snapshot(&rev).ok())
                    .map(|snap| crate::deps::input_ids(&snap, s, &d.inputs));
                let argv = crate::deps::argv(&d.command.argv, s, env);
                let key = crate::deps::plan_key(&r.name, &argv, &d.outputs, &inputs);
                let cached = host.deps_cache.as_ref().map(|c| c.contains(&key));
                Some(crate::deps::plan_note(
                    &inputs,
                    live_inputs.as_deref(),
                    cached,
                ))
            }
            None => None,
        };
        let mut reason = format!(
            "new release {} of {}: {}",
            short(&to.sha),
            s.name,
            a.reasons.join("; ")
        );
        if let Some(note) = deps_note {
            reason = format!("{reason}; {note}");
        }
        let id = g.push(
            Action {
                id: format!("build:{}", s.name),
                service: Some(s.name.clone()),
                phase: Some(s.phase.clone()),
                reason,
                after: Vec::new(),
                step: Step::Build {
                    release: release.clone(),
                    command: build_cmd.map(|c| Command {
                        argv: template::render_all(&c.argv, &vars),
                        timeout_secs: c.timeout.as_secs(),
                    }),
                },
            },
            (s.phase_index, ActionKind::Build, *i),
        );
        builds.insert(*i, id);
        if !a.migrate.is_empty()
            && let Some(m) = rt.and_then(|r| r.migrate.as_ref())
        {
            let why = a.migrate.join("; ");
            let mid = g.push(
                Action {
                    id: format!("migrate:{}", s.name),
                    service: Some(s.name.clone()),
                    phase: Some(s.phase.clone()),
                    reason: why,
                    after: Vec::new(),
                    step: Step::Migrate {
                        release: release.clone(),
                        command: Command {
                            argv: template::render_all(&m.command.argv, &vars),
                            timeout_secs: m.command.timeout.as_secs(),
                        },
                    },
                },
                (s.phase_index, ActionKind::Migrate, *i),
            );
            g.edge(id, mid);
            migrations.push((*i, mid));
        }
    }
    // One backup before the first migration, where the environment has one
    // (and, on a first deploy, only if its backup block asks for it: the
    // database may not exist before the first migration creates it).
    let names: Vec<&str> = migrations
        .iter()
        .map(|(i, _)| config.services[*i].name.as_str())
        .collect();
    if let Some(b) = &env.backup
        && !migrations.is_empty()
        && first_deploy
        && b.first_deploy == FirstDeploy::Skip
    {
        notes.push(format!(
            "first deploy: nothing to back up yet, so no backup is taken before the migrations of {} (the backup block's first-deploy \"skip\"; write first-deploy \"backup\" if the database already holds data)",
            names.join(", ")
        ));
    } else if !migrations.is_empty()
        && let Some(b) = &env.backup
    {
        let bid = g.push(
            Action {
                id: "backup".to_owned(),
                service: None,
                phase: None,
                reason: format!(
                    "environment {} backs up the database before migrations ({} migrate{})",
                    env.name,
                    names.join(", "),
                    if names.len() == 1 { "s" } else { "" }
                ),
                after: Vec::new(),
                step: Step::Backup {
                    command: Command {
                        argv: template::render_all(
                            &b.run.argv,
                            &Vars {
                                root: Some(&env.root),
                                ..Vars::default()
                            },
                        ),
                        timeout_secs: b.run.timeout.as_secs(),
                    },
                },
            },
            (0, ActionKind::Backup, 0),
        );
        if let Some((_, first)) = migrations.first() {
            g.edge(bid, *first);
        }
    }
    // Migrations run one after another, in start order: two services'
    // migrations against one database must not interleave.
    for w in migrations.windows(2) {
        g.edge(w[0].1, w[1].1);
    }
    // Whatever comes next changes what is live, so it waits for every build
    // and migration: a failed build leaves the host untouched.
    let last_prepare: Vec<usize> = {
        let mut v: Vec<usize> = builds.values().copied().collect();
        if let Some((_, m)) = migrations.last() {
            // The chain makes every migration precede the last one.
            v.retain(|b| !migrations.iter().any(|(i, _)| builds.get(i) == Some(b)));
            v.push(*m);
        }
        v
    };
    let installs_planned = unit_changes.values().filter(|(c, _)| c.installs()).count();
    let mut restarts_in_phase = vec![0usize; config.phases.len()];
    for i in affected
        .keys()
        .copied()
        .chain(
            unit_changes
                .iter()
                .filter(|(_, (c, _))| c.installs())
                .map(|(i, _)| *i),
        )
        .collect::<BTreeSet<usize>>()
    {
        restarts_in_phase[config.services[i].phase_index] += 1;
    }
    let first_consumers = if installs_planned > 0 {
        installs_planned
    } else {
        restarts_in_phase
            .iter()
            .copied()
            .find(|n| *n > 0)
            .unwrap_or(1)
    };
    let last_prepare = if needs_barrier(last_prepare.len(), first_consumers) {
        let b = g.push(
            barrier(
                "built",
                None,
                "every build and migration succeeded; nothing live has changed before this point",
            ),
            (0, ActionKind::Barrier, 0),
        );
        for p in &last_prepare {
            g.edge(*p, b);
        }
        vec![b]
    } else {
        last_prepare
    };

    // Unit installs and one daemon-reload.
    let mut installs: BTreeMap<usize, usize> = BTreeMap::new();
    for (i, (change, _)) in &unit_changes {
        if !change.installs() {
            continue;
        }
        let s = &config.services[*i];
        let id = g.push(
            Action {
                id: format!("install-unit:{}", s.name),
                service: Some(s.name.clone()),
                phase: Some(s.phase.clone()),
                reason: match change {
                    UnitChange::New => "unit file is not installed yet".to_owned(),
                    UnitChange::Adopt => units::adopt_reason(s, host),
                    _ => "unit file differs from the installed one".to_owned(),
                },
                after: Vec::new(),
                step: Step::InstallUnit {
                    unit: s.unit_name.clone(),
                    source: UnitSource::Config,
                },
            },
            (s.phase_index, ActionKind::InstallUnit, *i),
        );
        for p in &last_prepare {
            g.edge(*p, id);
        }
        installs.insert(*i, id);
    }
    let reload = if installs.is_empty() {
        None
    } else {
        let units: Vec<&str> = installs
            .keys()
            .map(|i| config.services[*i].unit_name.as_str())
            .collect();
        let id = g.push(
            Action {
                id: "daemon-reload".to_owned(),
                service: None,
                phase: None,
                reason: format!(
                    "systemd must re-read {}: {}",
                    count(units.len(), "unit file", "unit files"),
                    list(&units)
                ),
                after: Vec::new(),
                step: Step::DaemonReload {
                    enable: units.iter().map(|u| (*u).to_owned()).collect(),
                },
            },
            (0, ActionKind::DaemonReload, 0),
        );
        for inst in installs.values() {
            g.edge(*inst, id);
        }
        Some(id)
    };

    // Restarts and health checks, phase by phase.
    let restarting: BTreeSet<usize> = affected.keys().chain(installs.keys()).copied().collect();
    let mut health_of: BTreeMap<usize, usize> = BTreeMap::new();
    let mut restart_of: BTreeMap<usize, usize> = BTreeMap::new();
    let mut previous_phase_health: Vec<usize> = Vec::new();
    let mut first_restart_phase = true;
    for (pi, _) in config.phases.iter().enumerate() {
        let in_phase: Vec<usize> = restarting
            .iter()
            .copied()
            .filter(|i| config.services[*i].phase_index == pi)
            .collect();
        if in_phase.is_empty() {
            continue;
        }
        for i in &in_phase {
            let s = &config.services[*i];
            let deploy = affected.contains_key(i);
            let reason = if deploy {
                format!("switch to release {}", short(&to.sha))
            } else {
                "unit file changed".to_owned()
            };
            let rid = g.push(
                Action {
                    id: format!("restart:{}", s.name),
                    service: Some(s.name.clone()),
                    phase: Some(s.phase.clone()),
                    reason,
                    after: Vec::new(),
                    step: Step::Restart {
                        unit: s.unit_name.clone(),
                        release: deploy.then(|| release_of(s)),
                    },
                },
                (pi, ActionKind::Restart, *i),
            );
            let hid = g.push(health_action(s, Vec::new()), (pi, ActionKind::Health, *i));
            g.edge(rid, hid);
            restart_of.insert(*i, rid);
            health_of.insert(*i, hid);
            if first_restart_phase {
                if let Some(r) = reload {
                    g.edge(r, rid);
                } else {
                    for p in &last_prepare {
                        g.edge(*p, rid);
                    }
                }
            }
            for h in &previous_phase_health {
                g.edge(*h, rid);
            }
        }
        // depends-on inside the phase orders restarts.
        for i in &in_phase {
            let s = &config.services[*i];
            for d in &s.depends_on {
                if let Some(j) = in_phase.iter().find(|j| config.services[**j].name == *d)
                    && let (Some(h), Some(r)) = (health_of.get(j), restart_of.get(i))
                {
                    g.edge(*h, *r);
                }
            }
        }
        // The next phase waits for the health of this one's services that
        // nothing else in the phase waits on (the rest follow transitively).
        previous_phase_health = in_phase
            .iter()
            .filter(|i| {
                let name = &config.services[**i].name;
                !in_phase
                    .iter()
                    .any(|j| config.services[*j].depends_on.iter().any(|d| d == name))
            })
            .filter_map(|i| health_of.get(i).copied())
            .collect();
        let next_consumers = restarts_in_phase
            .iter()
            .skip(pi + 1)
            .copied()
            .find(|n| *n > 0)
            .unwrap_or(1);
        if needs_barrier(previous_phase_health.len(), next_consumers) {
            let phase = &config.phases[pi].name;
            let b = g.push(
                barrier(
                    &format!("ready:{phase}"),
                    Some(phase),
                    &format!("every restarted service of phase {phase} is ready"),
                ),
                (pi, ActionKind::Barrier, 0),
            );
            for h in &previous_phase_health {
                g.edge(*h, b);
            }
            previous_phase_health = vec![b];
        }
        first_restart_phase = false;
    }

    // The proxy reloads last, after its configuration check.
    if let Some(p) = &config.proxy
        && (!restarting.is_empty() || !hits.proxy.is_empty())
    {
        let mut why = Vec::new();
        if !restarting.is_empty() {
            let names: Vec<&str> = restarting
                .iter()
                .map(|i| config.services[*i].name.as_str())
                .collect();
            why.push(format!("upstreams restarted: {}", list(&names)));
        }
        if !hits.proxy.is_empty() {
            why.push(format!("its configuration changed: {}", list(&hits.proxy)));
        }
        if let Some(c) = &p.check {
            why.push(format!("after `{}` passes", c.argv.join(" ")));
        }
        let id = g.push(
            Action {
                id: "reload-proxy".to_owned(),
                service: None,
                phase: None,
                reason: why.join("; "),
                after: Vec::new(),
                step: Step::ReloadProxy {
                    unit: p.unit.clone(),
                    check: p.check.as_ref().map(|c| Command {
                        argv: c.argv.clone(),
                        timeout_secs: c.timeout.as_secs(),
                    }),
                },
            },
            (config.phases.len(), ActionKind::ReloadProxy, 0),
        );
        if health_of.is_empty() {
            for pp in &last_prepare {
                g.edge(*pp, id);
            }
        }
        for h in &previous_phase_health {
            g.edge(*h, id);
        }
    }

    let actions = g.ordered()?;

    // Per-service summary, in start order.
    let mut services = Vec::new();
    let mut order_idx: Vec<usize> = (0..config.services.len()).collect();
    order_idx.sort_by_key(|i| (config.services[*i].phase_index, *i));
    for i in order_idx {
        let s = &config.services[i];
        let live = state.and_then(|st| st.services.get(&s.name));
        let (unit_change, unit_diff) = unit_changes
            .get(&i)
            .cloned()
            .unwrap_or((UnitChange::Unmanaged, None));
        let (change, mut reasons, paths, migrate) = match affected.get(&i) {
            Some(a) => (
                ServiceChange::Deploy,
                a.reasons.clone(),
                a.paths.clone(),
                !a.migrate.is_empty(),
            ),
            None if installs.contains_key(&i) => {
                (ServiceChange::Restart, Vec::new(), Vec::new(), false)
            }
            None => (ServiceChange::Unchanged, Vec::new(), Vec::new(), false),
        };
        match unit_change {
            UnitChange::New => reasons.push("unit file is not installed yet".to_owned()),
            UnitChange::Changed => {
                reasons.push("unit file differs from the installed one".to_owned());
            }
            UnitChange::Adopt => reasons.push(units::adopt_reason(s, host)),
            UnitChange::Conflict => reasons.push(format!(
                "conflict: {} on this host was not installed by moorline; it is left alone unless adopted (--adopt {})",
                s.unit_name, s.name
            )),
            UnitChange::Unmanaged | UnitChange::Unchanged => {}
        }
        let from_revision = live
            .map(|l| l.revision.clone())
            .or_else(|| changes.from.as_ref().map(|f| f.sha.clone()));
        let to_revision = match change {
            ServiceChange::Deploy => Some(to.sha.clone()),
            _ => from_revision.clone(),
        };
        services.push(ServicePlan {
            name: s.name.clone(),
            phase: s.phase.clone(),
            unit: s.unit_name.clone(),
            change,
            migrate,
            unit_change,
            from_revision,
            to_revision,
            reasons,
            changed_count: paths.len(),
            changed_paths: paths.into_iter().take(PATHS_SHOWN).collect(),
            unit_diff,
        });
    }

    let rollback = rollback::rollback_plan(env, &services, first_deploy);
    if rollback.kind == RollbackKind::Irreversible {
        warnings.push(format!(
            "migrations run and environment {} has no backup block: moorline cannot undo them",
            env.name
        ));
    }

    let inputs = PlanInputs {
        moorline_version: env!("CARGO_PKG_VERSION").to_owned(),
        config_sha256: sha256_hex(inp.config_text.as_bytes()),
        state_sha256: host.state_sha256.clone(),
        units_source: host.units_source.clone(),
        units: input_units,
        allow_non_ancestor: inp.allow_non_ancestor,
        adopt: inp.adopt.to_vec(),
        pending_migrations: host
            .migrate_status
            .iter()
            .filter(|(_, c)| **c == MigrateCheck::Pending)
            .map(|(name, _)| name.clone())
            .collect(),
        skip_promotion_check: false,
    };
    let fingerprint = super::fingerprint(
        &config.project.name,
        &env.name,
        changes.from.as_ref().map(|f| f.sha.as_str()),
        &changes.to.sha,
        &inputs,
    );
    Ok(Plan {
        format_version: FORMAT_VERSION,
        operation: super::Operation::Deploy,
        project: config.project.name.clone(),
        environment: env.name.clone(),
        branch: env.branch.clone(),
        from: changes.from.clone(),
        to: to.clone(),
        first_deploy,
        non_ancestor: changes.non_ancestor,
        fingerprint,
        inputs,
        changed_paths: changes.paths.len(),
        services,
        actions,
        rollback,
        warnings,
        notes,
        conflicts,
        uncommitted: Vec::new(),
        promotion: None,
    })
}

/// The readiness check of a service after its restart.
pub fn health_action(s: &Service, after: Vec<String>) -> Action {
    let url = ready_url(s);
    Action {
        id: format!("health:{}", s.name),
        service: Some(s.name.clone()),
        phase: Some(s.phase.clone()),
        reason: format!(
            "GET {url} must answer 2xx within {}s",
            s.ready_timeout.as_secs()
        ),
        after,
        step: Step::Health {
            unit: s.unit_name.clone(),
            url,
            timeout_secs: s.ready_timeout.as_secs(),
        },
    }
}

/// The readiness URL of a service.
pub fn ready_url(s: &Service) -> String {
    url_for(s, &s.ready)
}

/// A health path or URL of a service made absolute.
pub fn url_for(s: &Service, path_or_url: &str) -> String {
    let vars = Vars {
        service: Some(&s.name),
        port: Some(s.port),
        ..Vars::default()
    };
    let p = template::render(path_or_url, &vars);
    if p.starts_with("http://") || p.starts_with("https://") {
        p
    } else {
        format!("http://127.0.0.1:{}{p}", s.port)
    }
}

fn count(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

fn list(items: &[&str]) -> String {
    let shown: Vec<&str> = items.iter().take(PATHS_SHOWN).copied().collect();
    if items.len() > PATHS_SHOWN {
        format!("{} (+{} more)", shown.join(", "), items.len() - PATHS_SHOWN)
    } else {
        shown.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_capped() {
        let items = ["a", "b", "c", "d", "e", "f", "g"];
        assert_eq!(list(&items), "a, b, c, d, e (+2 more)");
        assert_eq!(list(&items[..2]), "a, b");
    }
}

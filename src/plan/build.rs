//! The planner: config + git changes + a view of the host → `Plan`.
//! Deterministic: ordered maps everywhere, an explicit tie-break in the
//! topological order, no clock. Reads git (through `Repo`) but never the
//! host itself: what it knows of the host comes in `HostView`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

use miette::Diagnostic;
use petgraph::graph::{DiGraph, NodeIndex};

use super::{
    Action, ActionKind, Command, FORMAT_VERSION, Plan, PlanInputs, RollbackKind, RollbackPlan,
    ServiceChange, ServicePlan, Step, UnitChange, UnitConflict, UnitSource, short,
};
use crate::changes::{Changes, GitError, Repo};
use crate::config::{Config, Environment, FirstDeploy, Service};
use crate::state::{State, sha256_hex};
use crate::template::{self, Vars};
use crate::unit;

/// How every unit file moorline renders begins (`unit::render`).
const MOORLINE_HEADER: &str = "# Managed by moorline";

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

struct Affected {
    reasons: Vec<String>,
    paths: Vec<String>,
    /// Why it migrates; empty: it does not.
    migrate: Vec<String>,
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

    // Which services does each changed path affect?
    let mut by_prefix: HashMap<&str, Vec<(usize, bool)>> = HashMap::new();
    for (i, s) in config.services.iter().enumerate() {
        by_prefix
            .entry(s.path.as_str())
            .or_default()
            .push((i, false));
        for w in &s.watch {
            by_prefix.entry(w.as_str()).or_default().push((i, true));
        }
    }
    let mut hits: Vec<BTreeMap<bool, Vec<&str>>> = vec![BTreeMap::new(); config.services.len()];
    let mut proxy_paths: Vec<&str> = Vec::new();
    for cp in &changes.paths {
        let candidates = [Some(cp.path.as_str()), cp.from.as_deref()];
        for path in candidates.into_iter().flatten() {
            for prefix in prefixes(path) {
                if let Some(list) = by_prefix.get(prefix) {
                    for (i, watched) in list {
                        let v = hits[*i].entry(*watched).or_default();
                        if v.last() != Some(&cp.path.as_str()) {
                            v.push(&cp.path);
                        }
                    }
                }
                if let Some(p) = &config.proxy
                    && p.watch.iter().any(|w| w == prefix)
                    && proxy_paths.last() != Some(&cp.path.as_str())
                {
                    proxy_paths.push(&cp.path);
                }
            }
        }
    }

    let state = host.state.as_ref();
    let target = repo.snapshot(&to.sha)?;
    let mut live_trees: HashMap<String, crate::changes::Snapshot<'_>> = HashMap::new();
    let mut affected: BTreeMap<usize, Affected> = BTreeMap::new();
    for (i, s) in config.services.iter().enumerate() {
        if !target.is_dir(&s.path) {
            return Err(GitError::ServiceMissing {
                service: s.name.clone(),
                path: s.path.clone(),
                rev: to.sha.clone(),
            }
            .into());
        }
        let live = state.and_then(|st| st.services.get(&s.name));
        let mut reasons = Vec::new();
        let mut paths: Vec<String> = Vec::new();
        if first_deploy {
            reasons.push("first deploy: nothing is recorded as deployed".to_owned());
        } else if live.is_none() && state.is_some() {
            reasons.push("never deployed to this environment".to_owned());
        }
        if let Some(own) = hits[i].get(&false) {
            let under = if s.is_root() {
                "in the repository".to_owned()
            } else {
                format!("under {}/", s.path)
            };
            reasons.push(format!(
                "{} {under}: {}",
                count(own.len(), "path changed", "paths changed"),
                list(own)
            ));
            paths.extend(own.iter().map(|p| (*p).to_owned()));
        }
        if let Some(w) = hits[i].get(&true) {
            reasons.push(format!(
                "watched {}: {}",
                count(w.len(), "path changed", "paths changed"),
                list(w)
            ));
            paths.extend(w.iter().map(|p| (*p).to_owned()));
        }
        if let (Some(live), Some(from)) = (live, &changes.from)
            && live.revision != from.sha
            && live.revision != to.sha
        {
            // It runs a release other than the deployed revision's (its last
            // change was older, or it was rolled back by hand): compare its
            // own inputs at that release with the target.
            if !live_trees.contains_key(&live.revision) {
                live_trees.insert(live.revision.clone(), repo.snapshot(&live.revision)?);
            }
            let mut differ = Vec::new();
            if let Some(old) = live_trees.get(&live.revision) {
                for p in std::iter::once(&s.path).chain(&s.watch) {
                    if old.path_id(p) != target.path_id(p) {
                        differ.push(if s.is_root() && *p == s.path {
                            "the repository"
                        } else {
                            p.as_str()
                        });
                    }
                }
            }
            if !differ.is_empty() && hits[i].is_empty() {
                reasons.push(format!(
                    "its live release {} differs from {} in {}",
                    short(&live.revision),
                    short(&to.sha),
                    list(&differ)
                ));
            }
        }
        // Migrations: only where the runtime migrates and the `if-exists`
        // file exists at the target.
        let migrate_step = config
            .runtime_of(s)
            .and_then(|r| r.migrate.as_ref())
            .filter(|m| {
                m.if_exists
                    .as_ref()
                    .is_none_or(|f| target.exists(&s.join(f)))
            });
        // The database, not only git: a restore or `migrate-status` says
        // the schema of a deployed service is behind its code.
        let database_why = match (migrate_step, live) {
            (Some(_), Some(_)) => database_reasons(
                state.and_then(|st| st.database_restored.as_ref()),
                host.migrate_status.get(&s.name),
            ),
            _ => Vec::new(),
        };
        if migrate_step.is_some()
            && let Some(MigrateCheck::Unavailable(why)) = host.migrate_status.get(&s.name)
        {
            notes.push(format!(
                "{}: migrate-status could not tell whether migrations are pending ({why}); its migrations are planned from git alone",
                s.name
            ));
        }
        reasons.extend(database_why.iter().cloned());
        if reasons.is_empty() {
            continue;
        }
        let mut migrate = Vec::new();
        if let Some(m) = migrate_step {
            let inputs = s.join(&m.inputs);
            let migrate_paths: Vec<&str> = paths
                .iter()
                .filter(|p| prefixes(p).any(|pre| pre == inputs))
                .map(String::as_str)
                .collect();
            // Never deployed here: only when the host's state says so.
            // Without state (a plan between two revisions) the service
            // runs `from`, and its migrations ran with it.
            let never_deployed = state.is_some() && live.is_none();
            if !migrate_paths.is_empty() {
                migrate.push(format!(
                    "migration inputs changed: {}",
                    list(&migrate_paths)
                ));
            } else if first_deploy || never_deployed {
                migrate.push("first deploy of a service with migrations".to_owned());
            }
            migrate.extend(database_why);
        }
        affected.insert(
            i,
            Affected {
                reasons,
                paths,
                migrate,
            },
        );
    }

    // Unit files: rendered vs baseline. A file moorline did not install
    // takes the baseline's place (it is what would be replaced), and is
    // replaced only when adopted.
    let mut unit_changes: BTreeMap<usize, (UnitChange, Option<String>)> = BTreeMap::new();
    let mut input_units = BTreeMap::new();
    let mut conflicts = Vec::new();
    for (i, s) in config.services.iter().enumerate() {
        let foreign = host.foreign_units.get(&s.name).filter(|_| s.unit.is_some());
        let baseline = match foreign {
            Some(f) => Some(f.text.clone()),
            None => host.units.get(&s.name).cloned().flatten(),
        };
        input_units.insert(
            s.unit_name.clone(),
            baseline.as_deref().map(|b| sha256_hex(b.as_bytes())),
        );
        let Some(rendered) = unit::render(env, s)? else {
            unit_changes.insert(i, (UnitChange::Unmanaged, None));
            continue;
        };
        let secret = unit::secret_names(s);
        let change = match (foreign, &baseline) {
            (Some(_), _) if inp.adopt.contains(&s.name) => UnitChange::Adopt,
            (Some(_), _) => UnitChange::Conflict,
            (None, None) => UnitChange::New,
            (None, Some(b)) if *b == rendered => UnitChange::Unchanged,
            (None, Some(_)) => UnitChange::Changed,
        };
        if let (UnitChange::Conflict, Some(f)) = (change, foreign) {
            conflicts.push(unit_conflict(s, f));
        }
        let shown_new = unit::render_redacted(env, s)?.unwrap_or_default();
        let old_label = if foreign.is_some() {
            format!("host/{}", s.unit_name)
        } else {
            format!("installed/{}", s.unit_name)
        };
        let diff = match (&change, &baseline) {
            (UnitChange::Changed | UnitChange::Conflict | UnitChange::Adopt, Some(b)) => {
                Some(unit::diff(
                    &unit::redact_text(b, &secret),
                    &shown_new,
                    &old_label,
                    &format!("planned/{}", s.unit_name),
                ))
                .filter(|d| !d.is_empty())
            }
            (UnitChange::New, _) => Some(unit::diff(
                "",
                &shown_new,
                "/dev/null",
                &format!("planned/{}", s.unit_name),
            )),
            _ => None,
        };
        unit_changes.insert(i, (change, diff));
    }
    for name in inp.adopt {
        let Some(s) = config.service(name) else {
            continue;
        };
        if !host.foreign_units.contains_key(name) {
            warnings.push(format!(
                "--adopt {name}: nothing to adopt, no unit file that moorline did not install is at {}",
                s.unit_name
            ));
        }
    }

    // Assemble actions.
    let mut actions: Vec<Action> = Vec::new();
    let mut keys: Vec<(usize, ActionKind, usize)> = Vec::new();
    let mut edges: Vec<(usize, usize)> = Vec::new();
    let mut push = |a: Action, key: (usize, ActionKind, usize), actions: &mut Vec<Action>| {
        actions.push(a);
        keys.push(key);
        actions.len() - 1
    };
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
        let id = push(
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
            &mut actions,
        );
        builds.insert(*i, id);
        if !a.migrate.is_empty()
            && let Some(m) = rt.and_then(|r| r.migrate.as_ref())
        {
            let why = a.migrate.join("; ");
            let mid = push(
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
                &mut actions,
            );
            edges.push((id, mid));
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
        let bid = push(
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
            &mut actions,
        );
        if let Some((_, first)) = migrations.first() {
            edges.push((bid, *first));
        }
    }
    // Migrations run one after another, in start order: two services'
    // migrations against one database must not interleave.
    for w in migrations.windows(2) {
        edges.push((w[0].1, w[1].1));
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
        let b = push(
            barrier(
                "built",
                None,
                "every build and migration succeeded; nothing live has changed before this point",
            ),
            (0, ActionKind::Barrier, 0),
            &mut actions,
        );
        for p in &last_prepare {
            edges.push((*p, b));
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
        let id = push(
            Action {
                id: format!("install-unit:{}", s.name),
                service: Some(s.name.clone()),
                phase: Some(s.phase.clone()),
                reason: match change {
                    UnitChange::New => "unit file is not installed yet".to_owned(),
                    UnitChange::Adopt => adopt_reason(s, host),
                    _ => "unit file differs from the installed one".to_owned(),
                },
                after: Vec::new(),
                step: Step::InstallUnit {
                    unit: s.unit_name.clone(),
                    source: UnitSource::Config,
                },
            },
            (s.phase_index, ActionKind::InstallUnit, *i),
            &mut actions,
        );
        for p in &last_prepare {
            edges.push((*p, id));
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
        let id = push(
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
            &mut actions,
        );
        for inst in installs.values() {
            edges.push((*inst, id));
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
            let rid = push(
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
                &mut actions,
            );
            let hid = push(
                health_action(s, Vec::new()),
                (pi, ActionKind::Health, *i),
                &mut actions,
            );
            edges.push((rid, hid));
            restart_of.insert(*i, rid);
            health_of.insert(*i, hid);
            if first_restart_phase {
                if let Some(r) = reload {
                    edges.push((r, rid));
                } else {
                    for p in &last_prepare {
                        edges.push((*p, rid));
                    }
                }
            }
            for h in &previous_phase_health {
                edges.push((*h, rid));
            }
        }
        // depends-on inside the phase orders restarts.
        for i in &in_phase {
            let s = &config.services[*i];
            for d in &s.depends_on {
                if let Some(j) = in_phase.iter().find(|j| config.services[**j].name == *d)
                    && let (Some(h), Some(r)) = (health_of.get(j), restart_of.get(i))
                {
                    edges.push((*h, *r));
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
            let b = push(
                barrier(
                    &format!("ready:{phase}"),
                    Some(phase),
                    &format!("every restarted service of phase {phase} is ready"),
                ),
                (pi, ActionKind::Barrier, 0),
                &mut actions,
            );
            for h in &previous_phase_health {
                edges.push((*h, b));
            }
            previous_phase_health = vec![b];
        }
        first_restart_phase = false;
    }

    // The proxy reloads last, after its configuration check.
    if let Some(p) = &config.proxy
        && (!restarting.is_empty() || !proxy_paths.is_empty())
    {
        let mut why = Vec::new();
        if !restarting.is_empty() {
            let names: Vec<&str> = restarting
                .iter()
                .map(|i| config.services[*i].name.as_str())
                .collect();
            why.push(format!("upstreams restarted: {}", list(&names)));
        }
        if !proxy_paths.is_empty() {
            why.push(format!("its configuration changed: {}", list(&proxy_paths)));
        }
        if let Some(c) = &p.check {
            why.push(format!("after `{}` passes", c.argv.join(" ")));
        }
        let id = push(
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
            &mut actions,
        );
        if health_of.is_empty() {
            for pp in &last_prepare {
                edges.push((*pp, id));
            }
        }
        for h in &previous_phase_health {
            edges.push((*h, id));
        }
    }

    let actions = order(actions, &keys, &edges)?;

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
            UnitChange::Adopt => reasons.push(adopt_reason(s, host)),
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

    let rollback = rollback_plan(env, &services, first_deploy);
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

/// Why a deployed service migrates although git may not say so: the
/// database was restored from a backup, or `migrate-status` reports
/// pending migrations.
fn database_reasons(
    restored: Option<&crate::state::DatabaseRestore>,
    status: Option<&MigrateCheck>,
) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(r) = restored {
        out.push(format!(
            "the database was restored from {}; migrations run again",
            r.describe()
        ));
    }
    if status == Some(&MigrateCheck::Pending) {
        out.push("migrate-status reports pending migrations".to_owned());
    }
    out
}

/// Why an adopted unit file is replaced.
fn adopt_reason(s: &Service, host: &HostView) -> String {
    let path = host
        .foreign_units
        .get(&s.name)
        .map_or(s.unit_name.as_str(), |f| f.path.as_str());
    format!("adopting a unit moorline did not install: {path} is replaced (--adopt)")
}

/// The conflict a foreign unit file makes, with the way forward.
fn unit_conflict(s: &Service, f: &ForeignUnit) -> UnitConflict {
    // The header alone proves nothing (anyone can write it), but it hints
    // at a state directory that is not the one that installed the file.
    let hint = if f.text.starts_with(MOORLINE_HEADER) {
        " It carries moorline's header, so it may have been installed with another state directory (--state-dir) or a state.json that was lost."
    } else {
        ""
    };
    UnitConflict {
        service: s.name.clone(),
        unit: s.unit_name.clone(),
        path: f.path.clone(),
        reason: format!(
            "{} was not installed by moorline (the host state has no record of it), so moorline will not replace it.{hint} Compare it with moorline's unit (the diff under service {}), then adopt it with --adopt {}; or remove the `unit` block of service {} to keep managing it by hand.",
            f.path, s.name, s.name, s.name
        ),
    }
}

/// Whether `from` actions all preceding `to` actions is cheaper through a
/// barrier: `from × to` direct edges against `from + to`.
fn needs_barrier(from: usize, to: usize) -> bool {
    from > 1 && to > 1 && from * to > from + to
}

fn barrier(id: &str, phase: Option<&str>, reason: &str) -> Action {
    Action {
        id: id.to_owned(),
        service: None,
        phase: phase.map(str::to_owned),
        reason: reason.to_owned(),
        after: Vec::new(),
        step: Step::Barrier,
    }
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

fn rollback_plan(env: &Environment, services: &[ServicePlan], first_deploy: bool) -> RollbackPlan {
    let switched: Vec<String> = services
        .iter()
        .filter(|s| s.change != ServiceChange::Unchanged)
        .map(|s| s.name.clone())
        .collect();
    let migrating: Vec<&str> = services
        .iter()
        .filter(|s| s.migrate)
        .map(|s| s.name.as_str())
        .collect();
    let (kind, summary) = if switched.is_empty() {
        (
            RollbackKind::Nothing,
            "nothing changes, so there is nothing to roll back".to_owned(),
        )
    } else if first_deploy {
        (
            RollbackKind::NoPrevious,
            "first deploy: there is no previous release to go back to; a failed apply stops the services it started".to_owned(),
        )
    } else if migrating.is_empty() {
        (
            RollbackKind::CodeOnly,
            format!(
                "code-only: `moorline rollback --env {}` switches {} back to the previous release and restarts {} (no rebuild, no database change)",
                env.name,
                count(switched.len(), "service", "services"),
                if switched.len() == 1 { "it" } else { "them" }
            ),
        )
    } else if env.backup.is_some() {
        (
            RollbackKind::NeedsDatabase,
            format!(
                "needs the database: migrations of {} are the point of no return; the code rolls back with `moorline rollback --env {e}`, the schema only with `moorline rollback --env {e} --database`, which restores the backup taken before them (writes since then are lost)",
                migrating.join(", "),
                e = env.name
            ),
        )
    } else {
        (
            RollbackKind::Irreversible,
            format!(
                "migrations of {} cannot be undone by moorline: environment {} takes no backup; the code can roll back, the schema stays migrated",
                migrating.join(", "),
                env.name
            ),
        )
    };
    RollbackPlan {
        kind,
        services: switched,
        summary,
    }
}

/// Tie-break of the topological order: phase, kind, declaration order.
type SortKey = (usize, ActionKind, usize);

/// Topological order with an explicit tie-break (phase, kind, declaration
/// order), and `after` filled with direct predecessors by id.
fn order(
    mut actions: Vec<Action>,
    keys: &[(usize, ActionKind, usize)],
    edges: &[(usize, usize)],
) -> Result<Vec<Action>, PlanError> {
    let mut g: DiGraph<usize, ()> = DiGraph::with_capacity(actions.len(), edges.len());
    let nodes: Vec<NodeIndex> = (0..actions.len()).map(|i| g.add_node(i)).collect();
    let mut seen = BTreeSet::new();
    for (a, b) in edges {
        if a != b && seen.insert((*a, *b)) {
            g.add_edge(nodes[*a], nodes[*b], ());
        }
    }
    if let Err(c) = petgraph::algo::toposort(&g, None) {
        let id = actions
            .get(g[c.node_id()])
            .map_or_else(String::new, |a| a.id.clone());
        return Err(PlanError::Cycle(id));
    }
    let mut indegree: Vec<usize> = nodes
        .iter()
        .map(|n| {
            g.neighbors_directed(*n, petgraph::Direction::Incoming)
                .count()
        })
        .collect();
    let mut ready: BinaryHeap<Reverse<(SortKey, usize)>> = BinaryHeap::new();
    for (i, d) in indegree.iter().enumerate() {
        if *d == 0 {
            ready.push(Reverse((keys[i], i)));
        }
    }
    let mut out_order = Vec::with_capacity(actions.len());
    while let Some(Reverse((_, i))) = ready.pop() {
        out_order.push(i);
        for n in g.neighbors_directed(nodes[i], petgraph::Direction::Outgoing) {
            let j = g[n];
            indegree[j] -= 1;
            if indegree[j] == 0 {
                ready.push(Reverse((keys[j], j)));
            }
        }
    }
    let ids: Vec<String> = actions.iter().map(|a| a.id.clone()).collect();
    let position: HashMap<usize, usize> =
        out_order.iter().enumerate().map(|(p, i)| (*i, p)).collect();
    for (i, a) in actions.iter_mut().enumerate() {
        let mut preds: Vec<usize> = g
            .neighbors_directed(nodes[i], petgraph::Direction::Incoming)
            .map(|n| g[n])
            .collect();
        preds.sort_by_key(|p| position.get(p).copied().unwrap_or(usize::MAX));
        a.after = preds.into_iter().map(|p| ids[p].clone()).collect();
    }
    let mut slots: Vec<Option<Action>> = actions.into_iter().map(Some).collect();
    Ok(out_order
        .into_iter()
        .filter_map(|i| slots.get_mut(i).and_then(Option::take))
        .collect())
}

/// `a/b/c` → `a/b/c`, `a/b`, `a`.
/// `path` and every directory above it, up to the repository itself
/// ([`crate::config::ROOT_PATH`], which holds every path: a service there
/// is affected by every change).
fn prefixes(path: &str) -> impl Iterator<Item = &str> {
    let mut cur = Some(path);
    std::iter::from_fn(move || {
        let p = cur?;
        cur = match p.rsplit_once('/') {
            Some((head, _)) => Some(head),
            None if p == crate::config::ROOT_PATH => None,
            None => Some(crate::config::ROOT_PATH),
        };
        Some(p)
    })
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
    fn path_prefixes() {
        let got: Vec<&str> = prefixes("services/backend/src/a.js").collect();
        assert_eq!(
            got,
            [
                "services/backend/src/a.js",
                "services/backend/src",
                "services/backend",
                "services",
                "."
            ]
        );
        assert_eq!(prefixes("go.mod").collect::<Vec<_>>(), ["go.mod", "."]);
        assert_eq!(prefixes(".").collect::<Vec<_>>(), ["."]);
    }

    #[test]
    fn the_database_decides_too() {
        let restored = crate::state::DatabaseRestore {
            backup: "p-e-1".into(),
            apply_id: Some("a1".into()),
            restored_at: 0,
        };
        let by_hand = crate::state::DatabaseRestore {
            apply_id: None,
            ..restored.clone()
        };
        let restore_why = "the database was restored from backup p-e-1 (taken before apply a1); migrations run again";
        let pending = "migrate-status reports pending migrations";
        let unknown = MigrateCheck::Unavailable("no release".into());
        let cases: &[(
            Option<&crate::state::DatabaseRestore>,
            Option<&MigrateCheck>,
            &[&str],
        )] = &[
            (None, None, &[]),
            (None, Some(&MigrateCheck::UpToDate), &[]),
            (None, Some(&unknown), &[]),
            (None, Some(&MigrateCheck::Pending), &[pending]),
            (Some(&restored), None, &[restore_why]),
            (
                Some(&by_hand),
                Some(&MigrateCheck::UpToDate),
                &["the database was restored from backup p-e-1; migrations run again"],
            ),
            (
                Some(&restored),
                Some(&MigrateCheck::Pending),
                &[restore_why, pending],
            ),
        ];
        for (r, st, want) in cases {
            assert_eq!(database_reasons(*r, *st), *want, "{r:?} {st:?}");
        }
    }

    #[test]
    fn lists_are_capped() {
        let items = ["a", "b", "c", "d", "e", "f", "g"];
        assert_eq!(list(&items), "a, b, c, d, e (+2 more)");
        assert_eq!(list(&items[..2]), "a, b");
    }
}

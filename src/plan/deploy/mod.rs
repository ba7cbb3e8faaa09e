//! The planner: config + git changes + a view of the host → `Plan`.
//! Deterministic: ordered maps everywhere, an explicit tie-break in the
//! topological order, no clock. Reads git (through `Repo`) but never the
//! host itself: what it knows of the host comes in `HostView`.
//!
//! [`build`] runs stages, one file each, each tested alone (none touches
//! the host; `affected` and `prepare` read git):
//! `affected` (which services a change touches, and why) →
//! `units` (each unit file against the host's) → `prepare` (builds,
//! the backup, migrations) → `live` (installs, one daemon-reload,
//! restarts and health checks phase by phase, barriers, the proxy), all
//! into a `graph` → `order` (topological, deterministic tie-break) →
//! the per-service summary here → `rollback` (what undoing it takes).

mod affected;
pub(in crate::plan) mod graph;
mod live;
mod order;
mod prepare;
mod rollback;
mod units;

use std::collections::{BTreeMap, BTreeSet};

use miette::Diagnostic;

use super::{
    Check, FORMAT_VERSION, Plan, PlanInputs, RollbackKind, ServiceChange, ServicePlan, UnitChange,
    short,
};
use crate::config::{Config, Environment, Readiness, Service};
use crate::files::sha256_hex;
use crate::git::{Changes, GitError, Repo};
use crate::state::State;
use crate::template::{self, Vars};
use crate::unit;
use graph::Graph;

/// How many changed paths a reason lists before it only counts.
const PATHS_SHOWN: usize = 5;

/// What the planner knows of the host.
#[derive(Debug, Clone, Default)]
pub(crate) struct HostView {
    pub(crate) state: Option<State>,
    pub(crate) state_sha256: Option<String>,
    /// `host`, `config@<sha>` or `none`.
    pub(crate) units_source: String,
    /// Service name → the text of its baseline unit file, if one exists.
    pub(crate) units: BTreeMap<String, Option<String>>,
    /// Scheduled service name → the text of its installed `.timer` unit,
    /// if one exists.
    pub(crate) timers: BTreeMap<String, Option<String>>,
    /// Service name → a unit file on this host, where the service's unit
    /// goes, that the host state does not record as installed by moorline.
    pub(crate) foreign_units: BTreeMap<String, ForeignUnit>,
    /// Service name → what its runtime's `migrate-status` reported on this
    /// host (only services that have one and are deployed here; empty when
    /// the plan is not made on the host).
    pub(crate) migrate_status: BTreeMap<String, MigrateCheck>,
    /// Plan keys of the dependency cache's entries on this host (`None`:
    /// not planned on the host, the cache is not visible).
    pub(crate) deps_cache: Option<BTreeSet<String>>,
}

/// What `migrate-status` says about a deployed service's migrations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MigrateCheck {
    UpToDate,
    Pending,
    /// It could not tell (no release to run it in, the command failed to
    /// run): the plan says so and plans from git alone.
    Unavailable(String),
}

/// A unit file moorline did not install (see [`HostView::foreign_units`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ForeignUnit {
    pub(crate) path: String,
    pub(crate) text: String,
}

pub(crate) struct Inputs<'a> {
    pub(crate) config: &'a Config,
    pub(crate) config_text: &'a str,
    pub(crate) env: &'a Environment,
    pub(crate) changes: &'a Changes,
    pub(crate) host: &'a HostView,
    pub(crate) repo: &'a Repo,
    pub(crate) allow_non_ancestor: bool,
    /// Services whose foreign unit file may be replaced (`--adopt`), sorted.
    pub(crate) adopt: &'a [String],
}

#[derive(Debug, thiserror::Error, Diagnostic)]
pub(crate) enum PlanError {
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
pub(crate) fn build(inp: &Inputs<'_>) -> Result<Plan, PlanError> {
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

    // Actions per service before anything live changes (builds, the
    // backup, migrations), then the phase graph that changes what is live.
    let mut g = Graph::default();
    let prepared = prepare::prepare(inp, &target, &affected, &mut g, &mut notes);
    let installs = live::go_live(
        inp,
        &affected,
        &unit_changes,
        &hits.proxy,
        &prepared,
        &mut g,
    );

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
            None if installs.contains(&i) => {
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
        artifacts: std::collections::BTreeMap::new(),
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
        pass_env: env.pass_env.clone(),
        services,
        actions,
        rollback,
        warnings,
        notes,
        conflicts,
        uncommitted: Vec::new(),
        promotion: None,
        failed_here: None,
    })
}

/// Where release `sha` of service `s` is unpacked.
fn release_dir(env: &Environment, s: &Service, sha: &str) -> String {
    format!("{}/{}/releases/{sha}", env.root, s.name)
}

/// The readiness URL of a service.
pub(crate) fn ready_url(s: &Service) -> String {
    url_for(s, &s.ready)
}

/// The readiness URL of one slot of a cutover service, with `{slot}` where
/// the slot's port goes (a path is asked on the slot's port; `{port}` in a
/// full URL becomes the slot's port).
pub(crate) fn slot_ready_url(s: &Service) -> String {
    let p = template::render_with(&s.ready, |name| match name {
        "service" => Some(s.name.clone()),
        "port" => Some("{slot}".to_owned()),
        _ => None,
    });
    if p.starts_with("http://") || p.starts_with("https://") {
        p
    } else {
        format!("http://127.0.0.1:{{slot}}{p}")
    }
}

/// What a service's `health` step waits for, placeholders resolved.
pub(crate) fn ready_check(s: &Service) -> Check {
    match &s.readiness {
        Readiness::Http => Check::Http { url: ready_url(s) },
        Readiness::Tcp => Check::Tcp {
            address: format!("127.0.0.1:{}", s.port.unwrap_or(0)),
        },
        Readiness::Exec(argv) => {
            let vars = Vars {
                service: Some(&s.name),
                port: s.port,
                ..Vars::default()
            };
            Check::Exec {
                argv: argv.iter().map(|a| template::render(a, &vars)).collect(),
            }
        }
        Readiness::Notify => Check::Notify,
        Readiness::None => Check::Stable,
    }
}

/// A scheduled service's timer file, planned beside its unit: its change
/// joins the unit's (either one changed: both are installed), its diff
/// follows the unit's.
fn timer_change(
    env: &Environment,
    s: &Service,
    host: &HostView,
) -> Result<Option<(Option<String>, String)>, PlanError> {
    let Some(rendered) = unit::render_timer(env, s)? else {
        return Ok(None);
    };
    let baseline = host.timers.get(&s.name).cloned().flatten();
    Ok(Some((baseline, rendered)))
}

/// A health path or URL of a service made absolute.
pub(crate) fn url_for(s: &Service, path_or_url: &str) -> String {
    let vars = Vars {
        service: Some(&s.name),
        port: s.port,
        ..Vars::default()
    };
    let p = template::render(path_or_url, &vars);
    if p.starts_with("http://") || p.starts_with("https://") {
        p
    } else {
        // A service without a port has no HTTP endpoint on loopback:
        // port 0 is refused at once, never asked of someone else.
        format!("http://127.0.0.1:{}{p}", s.port.unwrap_or(0))
    }
}

pub(in crate::plan) fn count(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

pub(in crate::plan) fn list(items: &[&str]) -> String {
    let shown: Vec<&str> = items.iter().take(PATHS_SHOWN).copied().collect();
    if items.len() > PATHS_SHOWN {
        format!("{} (+{} more)", shown.join(", "), items.len() - PATHS_SHOWN)
    } else {
        shown.join(", ")
    }
}

/// What the stages' tests plan with: a configuration, a repository with
/// one commit holding the given files, and an empty host.
#[cfg(test)]
pub(super) mod testing {
    use super::{HostView, Inputs};
    use crate::config::Config;
    use crate::git::{Changes, Repo, Rev};

    pub(crate) struct World {
        _dir: tempfile::TempDir,
        pub(crate) config: Config,
        pub(crate) repo: Repo,
        pub(crate) changes: Changes,
        pub(crate) host: HostView,
    }

    impl World {
        /// A first deploy of `files` (empty files) under `config`.
        pub(crate) fn new(config: &str, files: &[&str]) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("r");
            let git = git2::Repository::init(&root).unwrap();
            for f in files {
                std::fs::create_dir_all(root.join(f).parent().unwrap()).unwrap();
                std::fs::write(root.join(f), "").unwrap();
            }
            let mut index = git.index().unwrap();
            index
                .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
                .unwrap();
            let tree = git.find_tree(index.write_tree().unwrap()).unwrap();
            let sig = git2::Signature::now("t", "t@example.com").unwrap();
            let sha = git
                .commit(Some("HEAD"), &sig, &sig, "init", &tree, &[])
                .unwrap()
                .to_string();
            let to = Rev {
                spec: "main".to_owned(),
                sha,
                summary: "init".to_owned(),
            };
            Self {
                config: crate::config::parse("t.kdl", config).unwrap(),
                repo: Repo::discover(&root).unwrap(),
                changes: Changes {
                    from: None,
                    to,
                    paths: Vec::new(),
                    non_ancestor: false,
                },
                host: HostView::default(),
                _dir: dir,
            }
        }

        /// Not a first deploy: the target's own commit was deployed before.
        pub(crate) fn redeploy(mut self) -> Self {
            self.changes.from = Some(self.changes.to.clone());
            self
        }

        pub(crate) fn inputs(&self) -> Inputs<'_> {
            Inputs {
                config: &self.config,
                config_text: "",
                env: &self.config.environments[0],
                changes: &self.changes,
                host: &self.host,
                repo: &self.repo,
                allow_non_ancestor: false,
                adopt: &[],
            }
        }
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

//! Settings: raw command-line flags and environment variables resolved, in
//! one place, into what a command works on (config, environment, repository,
//! state directory, unit directory, which systemd). Also where a plan is
//! computed from them, since `plan`, `graph` and `apply` do it alike.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use miette::Diagnostic;

use crate::changes::Repo;
use crate::cli::{Global, SystemdKind};
use crate::config::{self, Environment, Loaded};
use crate::plan::{self, HostView, Plan};
use crate::state;
use crate::unit;

#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum SettingsError {
    #[error("unknown environment `{name}`")]
    #[diagnostic(code(moorline::cli::unknown_environment), help("{help}"))]
    UnknownEnvironment { name: String, help: String },
    #[error("--host {name}: environment `{env}` has no host by this name")]
    #[diagnostic(code(moorline::cli::unknown_host), help("{help}"))]
    UnknownHost {
        name: String,
        env: String,
        help: String,
    },
    #[error("--host {name}: environment `{env}` has no hosts")]
    #[diagnostic(
        code(moorline::cli::not_a_fleet),
        help(
            "--host is for the host side of a fleet environment (one with `host` nodes); an environment without hosts is deployed where moorline runs: leave --host out"
        )
    )]
    NotAFleet { name: String, env: String },
    #[error("--adopt {name}: {problem}")]
    #[diagnostic(code(moorline::cli::adopt), help("{help}"))]
    Adopt {
        name: String,
        problem: String,
        help: String,
    },
}

/// Everything a command needs to know about where it works.
pub struct Target {
    pub loaded: Loaded,
    pub env: Environment,
    pub repo: Repo,
    pub state_dir: PathBuf,
    pub unit_dir: PathBuf,
    pub systemd: crate::systemd::Bus,
    /// The state directory of the environment's `promote-from` source, if
    /// it has one: its `state-dir`, else beside an explicit `--state-dir`
    /// (`DIR/../SOURCE`), else the source's default.
    pub promotion_state_dir: Option<PathBuf>,
}

impl Target {
    pub fn config(&self) -> &config::Config {
        &self.loaded.config
    }
}

/// Which systemd by default: the system manager as root, else the user's.
pub fn systemd_kind(flag: Option<SystemdKind>) -> crate::systemd::Bus {
    match flag {
        Some(SystemdKind::System) => crate::systemd::Bus::System,
        None if state::is_root() => crate::systemd::Bus::System,
        Some(SystemdKind::User) | None => crate::systemd::Bus::User,
    }
}

/// Where unit files go: the environment's `unit-dir`, else the directory the
/// chosen systemd reads administrator units from.
pub fn unit_dir(env: &Environment, bus: crate::systemd::Bus) -> PathBuf {
    if let Some(d) = &env.unit_dir {
        return PathBuf::from(d);
    }
    match bus {
        crate::systemd::Bus::System => PathBuf::from("/etc/systemd/system"),
        crate::systemd::Bus::User => user_unit_dir(),
    }
}

/// The user manager's directory for administrator units.
pub fn user_unit_dir() -> PathBuf {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("systemd/user")
}

/// Resolves the global flags and `--env` into a target.
pub fn resolve(global: &Global, env_name: &str) -> miette::Result<Target> {
    let loaded = crate::commands::load_config(global.config.as_deref())?;
    let env = loaded
        .config
        .environment(env_name)
        .cloned()
        .ok_or_else(|| {
            let names: Vec<&str> = loaded
                .config
                .environments
                .iter()
                .map(|e| e.name.as_str())
                .collect();
            let help = match config::error::suggest(env_name, &names) {
                Some(s) => format!("did you mean `{s}`?"),
                None if names.is_empty() => "the configuration defines no environment".to_owned(),
                None => format!("environments: {}", names.join(", ")),
            };
            SettingsError::UnknownEnvironment {
                name: env_name.to_owned(),
                help,
            }
        })?;
    let repo_dir = global.repo.clone().unwrap_or_else(|| {
        loaded
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    });
    let repo = Repo::discover(&repo_dir)?;
    let systemd = systemd_kind(global.systemd);
    let state_dir = global.state_dir.clone().unwrap_or_else(|| {
        state::default_dir(
            &loaded.config.project.name,
            &env.name,
            systemd == crate::systemd::Bus::User,
        )
    });
    let promotion_state_dir = env.promote_from.as_ref().map(|p| {
        if let Some(d) = &p.state_dir {
            PathBuf::from(d)
        } else if let Some(explicit) = &global.state_dir {
            explicit
                .parent()
                .unwrap_or_else(|| Path::new("/"))
                .join(&p.environment)
        } else {
            state::default_dir(
                &loaded.config.project.name,
                &p.environment,
                systemd == crate::systemd::Bus::User,
            )
        }
    });
    let mut loaded = loaded;
    if systemd == crate::systemd::Bus::User {
        for_user_manager(&mut loaded.config);
    }
    if let Some(name) = &global.host {
        for_host(&mut loaded.config, &env, name)?;
    }
    let unit_dir = unit_dir(&env, systemd);
    Ok(Target {
        loaded,
        env,
        repo,
        state_dir,
        unit_dir,
        systemd,
        promotion_state_dir,
    })
}

/// The boot target of the system manager, `wanted-by`'s default.
const SYSTEM_BOOT_TARGET: &str = "multi-user.target";
/// The boot target of a user manager: `multi-user.target` does not exist
/// there, so a unit wanted by it would never start at boot (systemd.special(7)).
const USER_BOOT_TARGET: &str = "default.target";

/// Makes the configuration's units right for a user manager: a unit wanted
/// by the system's boot target (the default of `wanted-by`) is wanted by the
/// user manager's instead. Other targets are kept as written.
pub fn for_user_manager(config: &mut config::Config) {
    for s in &mut config.services {
        if let Some(u) = &mut s.unit
            && u.wanted_by == SYSTEM_BOOT_TARGET
        {
            USER_BOOT_TARGET.clone_into(&mut u.wanted_by);
        }
    }
}

/// Restricts the configuration to the services host `name` of the fleet
/// environment `env` runs (`--host`, the host side of a fleet): every
/// command then plans, applies and reports on those services only.
pub fn for_host(
    config: &mut config::Config,
    env: &Environment,
    name: &str,
) -> Result<(), SettingsError> {
    if !env.is_fleet() {
        return Err(SettingsError::NotAFleet {
            name: name.to_owned(),
            env: env.name.clone(),
        });
    }
    let Some(host) = env.host(name) else {
        let names: Vec<&str> = env.hosts.iter().map(|h| h.name.as_str()).collect();
        return Err(SettingsError::UnknownHost {
            name: name.to_owned(),
            env: env.name.clone(),
            help: match config::error::suggest(name, &names) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("hosts of {}: {}", env.name, names.join(", ")),
            },
        });
    };
    config.keep_services_of(host);
    Ok(())
}

/// What a plan is asked for.
#[derive(Debug, Clone, Default)]
pub struct PlanRequest {
    pub from: Option<String>,
    pub to: Option<String>,
    pub allow_non_ancestor: bool,
    /// `--adopt`: services (or their unit file names) whose unit file that
    /// moorline did not install may be replaced.
    pub adopt: Vec<String>,
    /// `--skip-promotion-check`: the plan says so, and `apply` goes on
    /// without a healthy run in the `promote-from` source.
    pub skip_promotion_check: bool,
    /// The plan is to be applied here (`apply`): this host's unit
    /// directory is checked for unit files moorline did not install even
    /// when the baseline comes from the configuration at `from` (a plan
    /// made for review away from the host checks only where it compares
    /// with this host's units).
    pub on_host: bool,
}

/// Resolves `--adopt` names (a service or its unit file name) to service
/// names, sorted and without repeats; each must manage its unit.
pub fn resolve_adopt(
    config: &config::Config,
    names: &[String],
) -> Result<Vec<String>, SettingsError> {
    let mut out = std::collections::BTreeSet::new();
    for name in names {
        let Some(s) = config
            .services
            .iter()
            .find(|s| s.name == *name || s.unit_name == *name)
        else {
            let known: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
            return Err(SettingsError::Adopt {
                name: name.clone(),
                problem: "no service of the configuration has this name or unit file name"
                    .to_owned(),
                help: config::error::suggest(name, &known).map_or_else(
                    || "name a service whose unit block renders the unit file to adopt".to_owned(),
                    |s| format!("did you mean `{s}`?"),
                ),
            });
        };
        if s.unit.is_none() {
            return Err(SettingsError::Adopt {
                name: name.clone(),
                problem: format!("service `{}` has no `unit` block, so moorline does not write its unit file", s.name),
                help: "adopting means moorline takes the unit file over: give the service a `unit` block first".to_owned(),
            });
        }
        out.insert(s.name.clone());
    }
    Ok(out.into_iter().collect())
}

/// Observes the host (state, installed units) and computes the plan.
pub fn compute_plan(t: &Target, req: &PlanRequest) -> miette::Result<Plan> {
    let config = t.config();
    let loaded_state = state::load(&t.state_dir, &config.project.name, &t.env.name)?;
    let to = match &req.to {
        Some(spec) => t.repo.resolve(spec)?,
        None => t.repo.branch_tip(&t.env.branch)?,
    };
    let from_spec = req
        .from
        .clone()
        .or_else(|| loaded_state.state.as_ref().and_then(|s| s.revision.clone()));
    let from = from_spec.map(|f| t.repo.resolve(&f)).transpose()?;
    let mut warnings = Vec::new();
    if req.to.is_none()
        && to.spec == t.env.branch
        && let Some(remote) = t.repo.remote_tip(&t.env.branch)
        && remote.sha != to.sha
    {
        warnings.push(format!(
            "the local branch {b} ({}) differs from origin/{b} ({}): planning the local one; pass --to origin/{b} to deploy what was pushed",
            plan::short(&to.sha),
            plan::short(&remote.sha),
            b = t.env.branch
        ));
    }
    let (units_source, units) = if loaded_state.state.is_some() || from.is_none() {
        ("host".to_owned(), installed_units(t))
    } else if let Some(f) = &from {
        if let Some(u) = units_at(t, &f.sha) {
            (format!("config@{}", plan::short(&f.sha)), u)
        } else {
            warnings.push(format!(
                "the configuration at {} could not be read, so unit files are compared with nothing",
                plan::short(&f.sha)
            ));
            ("none".to_owned(), BTreeMap::new())
        }
    } else {
        ("none".to_owned(), BTreeMap::new())
    };
    let changes = t.repo.changes(from, to, req.allow_non_ancestor)?;
    let units_source_is_host = units_source == "host";
    let foreign_units = if req.on_host || units_source == "host" {
        foreign_units(t, loaded_state.state.as_ref())
    } else {
        BTreeMap::new()
    };
    let adopt = resolve_adopt(config, &req.adopt)?;
    // The database, not only git: on the host (a state is here), each
    // deployed service's `migrate-status` says whether migrations are
    // pending. Nothing runs for a config without `migrate-status`.
    let migrate_status = loaded_state
        .state
        .as_ref()
        .map(|st| crate::migrations::for_plan(config, &t.env, &t.state_dir, st, &changes.to.sha))
        .unwrap_or_default();
    let host = HostView {
        state: loaded_state.state,
        state_sha256: loaded_state.sha256,
        units_source,
        units,
        foreign_units,
        migrate_status,
        deps_cache: (req.on_host || units_source_is_host)
            .then(|| crate::deps::present(&t.env.root)),
    };
    let mut p = plan::build(&plan::Inputs {
        config,
        config_text: &t.loaded.text,
        env: &t.env,
        changes: &changes,
        host: &host,
        repo: &t.repo,
        allow_non_ancestor: req.allow_non_ancestor,
        adopt: &adopt,
    })?;
    p.warnings.extend(warnings);
    p.uncommitted = uncommitted(t, &p.to.sha)?;
    if let Some(promotion) = promotion(t, &p.to.sha, req.skip_promotion_check)? {
        promotion_words(
            &promotion,
            &p.to.sha,
            &t.env.name,
            &mut p.warnings,
            &mut p.notes,
        );
        p.promotion = Some(promotion);
    }
    if req.skip_promotion_check {
        p.inputs.skip_promotion_check = true;
        p.fingerprint = plan::fingerprint(
            &p.project,
            &p.environment,
            p.from.as_ref().map(|f| f.sha.as_str()),
            &p.to.sha,
            &p.inputs,
        );
    }
    if !p.uncommitted.is_empty() {
        p.warnings.push(uncommitted_warning(&p.uncommitted));
    }
    Ok(p)
}

/// How many commits only on this environment's branch a plan names.
const ONLY_HERE_SHOWN: usize = 10;

/// The `promote-from` check of a plan toward `to`: the source
/// environment's runs of `to` (or of a commit with the same tree, such as
/// the merge of its branch into this one), read from its state on this
/// host, and the commits this environment's branch has that the source's
/// lacks. `None` without `promote-from`.
fn promotion(t: &Target, to: &str, skip: bool) -> miette::Result<Option<plan::Promotion>> {
    let (Some(p), Some(dir)) = (&t.env.promote_from, &t.promotion_state_dir) else {
        return Ok(None);
    };
    let config = t.config();
    let mut only_here = Vec::new();
    if let (Some(source_env), Ok(here)) = (
        config.environment(&p.environment),
        t.repo.branch_tip(&t.env.branch),
    ) && let Ok(there) = t.repo.branch_tip(&source_env.branch)
    {
        only_here = t
            .repo
            .only_in(&here.sha, &there.sha, ONLY_HERE_SHOWN)?
            .into_iter()
            .map(|r| format!("{} {}", plan::short(&r.sha), r.summary))
            .collect();
    }
    let (state, unavailable) = match state::load(dir, &config.project.name, &p.environment) {
        Ok(l) => (l.state, None),
        Err(e) => (
            None,
            Some(format!("{} could not be read: {e}", dir.display())),
        ),
    };
    let tree = t.repo.tree_id(to);
    let same = |rev: &str| rev == to || (tree.is_some() && t.repo.tree_id(rev) == tree);
    let ran = state.as_ref().and_then(|st| {
        let recorded = st
            .deploys
            .iter()
            .rev()
            .find(|d| same(&d.revision))
            .map(|d| plan::PromotionRun {
                revision: d.revision.clone(),
                at: Some(d.at),
                until: d.until,
                rolled_back_at: d.rolled_back_at,
            });
        // A state from before deploy times were recorded: its deployed
        // revision still counts, with no time.
        recorded.or_else(|| {
            st.revision
                .as_deref()
                .filter(|r| st.deploys.is_empty() && same(r))
                .map(|r| plan::PromotionRun {
                    revision: r.to_owned(),
                    at: None,
                    until: None,
                    rolled_back_at: st.rolled_back.as_ref().map(|rb| rb.at),
                })
        })
    });
    let healthy = ran.as_ref().is_some_and(|r| r.rolled_back_at.is_none());
    Ok(Some(plan::Promotion {
        source: p.environment.clone(),
        ran,
        healthy,
        skipped: skip,
        only_here,
        unavailable: unavailable.or_else(|| {
            state.is_none().then(|| {
                format!(
                    "nothing is recorded as deployed in {} ({})",
                    p.environment,
                    dir.display()
                )
            })
        }),
    }))
}

/// A time from a state file, for a plan (UTC, to the second).
fn when(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

/// What a plan says about its promotion check: the run it found (a note),
/// the missing one (a warning: `apply` refuses), a skipped check, and
/// commits only this environment's branch has.
fn promotion_words(
    p: &plan::Promotion,
    to: &str,
    env: &str,
    warnings: &mut Vec<String>,
    notes: &mut Vec<String>,
) {
    let source = &p.source;
    let sha = plan::short(to);
    let same = |r: &plan::PromotionRun| {
        if r.revision == to {
            String::new()
        } else {
            format!(" (as {}, the same tree)", plan::short(&r.revision))
        }
    };
    match &p.ran {
        Some(r) if p.healthy => {
            let how_long = match (r.at, r.until) {
                (Some(at), Some(until)) => format!(
                    "deployed there {} and stayed healthy for {}, until the next deploy",
                    when(at),
                    humantime::format_duration(std::time::Duration::from_secs(
                        until.saturating_sub(at)
                    ))
                ),
                (Some(at), None) => format!("deployed there {} and still live", when(at)),
                (None, _) => {
                    "its deployed revision there (deployed before moorline recorded deploy times)"
                        .to_owned()
                }
            };
            notes.push(format!(
                "promotion: {source} ran {sha}{} healthy: {how_long}",
                same(r)
            ));
        }
        Some(r) => {
            let at = r
                .rolled_back_at
                .map_or_else(String::new, |t| format!(" at {}", when(t)));
            warnings.push(format!(
                "promotion: {source} ran {sha}{} but it was rolled back by hand there{at}, so it does not count as healthy: {}",
                same(r),
                if p.skipped { "check skipped (--skip-promotion-check)".to_owned() } else { format!("`apply` refuses it unless --skip-promotion-check (deploy it healthy to {source} first)") }
            ));
        }
        None => {
            let why = p
                .unavailable
                .as_deref()
                .map_or_else(String::new, |u| format!(" ({u})"));
            warnings.push(format!(
                "promotion: {source} never ran {sha} healthy{why}: {}",
                if p.skipped { "check skipped (--skip-promotion-check)".to_owned() } else { format!("`apply` refuses it unless --skip-promotion-check (deploy it to {source} first)") }
            ));
        }
    }
    if !p.only_here.is_empty() {
        warnings.push(format!(
            "{env}'s branch has {} that {source}'s branch lacks (a hotfix not merged back?): {}; merge {} into {source}'s branch, so that {source} runs {} too",
            if p.only_here.len() == 1 { "a commit".to_owned() } else { format!("{} commits", p.only_here.len()) },
            p.only_here.join(", "),
            if p.only_here.len() == 1 { "it" } else { "them" },
            if p.only_here.len() == 1 { "it" } else { "them" },
        ));
    }
}

/// How many uncommitted paths the warning names before it only counts.
const UNCOMMITTED_SHOWN: usize = 5;

/// What a plan toward `to` does not see: uncommitted changes under the
/// config file and every path a service or the proxy is planned from
/// (services deploy from commits, so these would not be deployed), and a
/// config file on disk (which the plan does use) that differs from the one
/// committed at `to`.
fn uncommitted(t: &Target, to: &str) -> miette::Result<Vec<String>> {
    let config = t.config();
    let config_rel = config_in_repo(t);
    let mut paths: Vec<String> = config_rel.iter().cloned().collect();
    for s in &config.services {
        paths.push(s.path.clone());
        paths.extend(s.watch.iter().cloned());
    }
    if let Some(p) = &config.proxy {
        paths.extend(p.watch.iter().cloned());
    }
    paths.sort();
    paths.dedup();
    let mut out = t.repo.uncommitted(&paths)?;
    if let Some(rel) = config_rel
        && t.repo.head_sha().as_deref() != Some(to)
        && !out.iter().any(|d| d.starts_with(&format!("{rel} (")))
    {
        match t.repo.read(to, &rel)? {
            Some(b) if b == t.loaded.text.as_bytes() => {}
            Some(_) => out.push(format!(
                "{rel} (differs from its version at {})",
                plan::short(to)
            )),
            None => out.push(format!("{rel} (not committed at {})", plan::short(to))),
        }
    }
    Ok(out)
}

/// The config file's path inside the repository, if it lies there.
fn config_in_repo(t: &Target) -> Option<String> {
    let abs = t.loaded.path.canonicalize().ok()?;
    let root = t.repo.root().canonicalize().ok()?;
    let rel = abs.strip_prefix(&root).ok()?;
    Some(rel.to_str()?.to_owned())
}

/// The plan's warning about uncommitted changes.
fn uncommitted_warning(dirty: &[String]) -> String {
    let shown = dirty
        .iter()
        .take(UNCOMMITTED_SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    let more = dirty.len().saturating_sub(UNCOMMITTED_SHOWN);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    format!(
        "uncommitted changes this plan does not see: {shown}{more}; services deploy from commits and the configuration is read from disk: commit (or revert) them first; `apply` refuses them unless --allow-dirty"
    )
}

/// The unit files installed on this host for every managed service.
pub fn installed_units(t: &Target) -> BTreeMap<String, Option<String>> {
    t.config()
        .services
        .iter()
        .filter(|s| s.unit.is_some())
        .map(|s| {
            let text = std::fs::read_to_string(t.unit_dir.join(&s.unit_name)).ok();
            (s.name.clone(), text)
        })
        .collect()
}

/// Unit files on this host where a managed service's unit goes that the
/// host state does not record as installed by moorline: a hand-written
/// unit, or one installed with another state directory. Whatever the plan
/// compares units with, these are what an install would overwrite.
fn foreign_units(t: &Target, state: Option<&state::State>) -> BTreeMap<String, plan::ForeignUnit> {
    t.config()
        .services
        .iter()
        .filter(|s| s.unit.is_some())
        .filter(|s| !state.is_some_and(|st| st.installed_unit(&s.name, &s.unit_name)))
        .filter_map(|s| {
            let path = t.unit_dir.join(&s.unit_name);
            // Whatever is there (a file, a link, something unreadable) is
            // not moorline's to replace.
            path.symlink_metadata().ok()?;
            let text = std::fs::read(&path).unwrap_or_default();
            Some((
                s.name.clone(),
                plan::ForeignUnit {
                    path: path.display().to_string(),
                    text: String::from_utf8_lossy(&text).into_owned(),
                },
            ))
        })
        .collect()
}

/// The unit files the configuration as committed at `sha` would render:
/// the baseline when planning away from the host (a pull request).
fn units_at(t: &Target, sha: &str) -> Option<BTreeMap<String, Option<String>>> {
    let abs = t.loaded.path.canonicalize().ok()?;
    let root = t.repo.root().canonicalize().ok()?;
    let rel = abs.strip_prefix(&root).ok()?;
    let bytes = t.repo.read(sha, &rel.to_string_lossy()).ok()??;
    let text = String::from_utf8(bytes).ok()?;
    // Unchanged configuration (the common case): no second parse.
    let parsed;
    let old = if text == t.loaded.text {
        t.config()
    } else {
        parsed = {
            let mut c = config::parse("old", &text).ok()?;
            if t.systemd == crate::systemd::Bus::User {
                for_user_manager(&mut c);
            }
            c
        };
        &parsed
    };
    let env = old.environment(&t.env.name)?;
    Some(
        t.config()
            .services
            .iter()
            .filter(|s| s.unit.is_some())
            .map(|s| {
                let rendered = old
                    .service(&s.name)
                    .and_then(|o| unit::render(env, o).ok().flatten());
                (s.name.clone(), rendered)
            })
            .collect(),
    )
}

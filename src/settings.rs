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
}

/// Everything a command needs to know about where it works.
pub struct Target {
    pub loaded: Loaded,
    pub env: Environment,
    pub repo: Repo,
    pub state_dir: PathBuf,
    pub unit_dir: PathBuf,
    pub systemd: crate::systemd::Bus,
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
        None if state::default_dir("x", "y").starts_with("/var/lib") => crate::systemd::Bus::System,
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
    let state_dir = global
        .state_dir
        .clone()
        .unwrap_or_else(|| state::default_dir(&loaded.config.project.name, &env.name));
    let systemd = systemd_kind(global.systemd);
    let unit_dir = unit_dir(&env, systemd);
    Ok(Target {
        loaded,
        env,
        repo,
        state_dir,
        unit_dir,
        systemd,
    })
}

/// What a plan is asked for.
#[derive(Debug, Clone, Default)]
pub struct PlanRequest {
    pub from: Option<String>,
    pub to: Option<String>,
    pub allow_non_ancestor: bool,
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
    let host = HostView {
        state: loaded_state.state,
        state_sha256: loaded_state.sha256,
        units_source,
        units,
    };
    let mut p = plan::build(&plan::Inputs {
        config,
        config_text: &t.loaded.text,
        env: &t.env,
        changes: &changes,
        host: &host,
        repo: &t.repo,
        allow_non_ancestor: req.allow_non_ancestor,
    })?;
    p.warnings.extend(warnings);
    Ok(p)
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
        parsed = config::parse("old", &text).ok()?;
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

//! Settings: raw command-line flags and environment variables resolved, in
//! one place, into what a command works on (config, environment, repository,
//! state directory, unit directory, which systemd). Plans are computed from
//! a resolved target in `observe`.

use std::path::{Path, PathBuf};

use miette::Diagnostic;

use crate::changes::Repo;
use crate::cli::{Global, SystemdKind};
use crate::config::{self, Environment, Loaded};
use crate::state;

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

/// Host names an unknown `--host` error lists.
const HOSTS_LISTED: usize = 10;

/// Restricts the configuration to the services host `name` of the fleet
/// environment `env` runs (`--host`, the host side of a fleet): every
/// command then plans, applies and reports on those services only.
pub fn for_host(
    config: &mut config::Config,
    env: &Environment,
    name: &str,
) -> Result<(), SettingsError> {
    // The name is shown in the error: never a control character of it.
    let shown = config::error::bounded(&format!("`{name}`"));
    if !env.is_fleet() {
        return Err(SettingsError::NotAFleet {
            name: shown,
            env: env.name.clone(),
        });
    }
    let Some(host) = env.host(name) else {
        let names: Vec<&str> = env.hosts.iter().map(|h| h.name.as_str()).collect();
        let listed = if names.len() > HOSTS_LISTED {
            format!(
                "{} and {} more",
                names[..HOSTS_LISTED].join(", "),
                names.len() - HOSTS_LISTED
            )
        } else {
            names.join(", ")
        };
        return Err(SettingsError::UnknownHost {
            name: shown,
            env: env.name.clone(),
            help: match config::error::suggest(name, &names) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("hosts of {}: {listed}", env.name),
            },
        });
    };
    config.keep_services_of(host);
    Ok(())
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

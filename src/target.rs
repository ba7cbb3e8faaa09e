//! Target: where a command works — the checked configuration, one
//! environment of it, the repository, the state directory, the unit
//! directory and which systemd — built from explicit choices (the command
//! line is turned into those in `commands::settings`). Plans are computed
//! from a target in `observe`.

use std::path::{Path, PathBuf};

use miette::Diagnostic;

use crate::config::{self, Environment, Loaded};
use crate::git::Repo;
use crate::state;
use crate::systemd::Bus;

#[derive(Debug, thiserror::Error, Diagnostic)]
pub(crate) enum TargetError {
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
    #[error("unit-dir {dir} is read by {owner}, but moorline drives {driven} (--systemd {flag})")]
    #[diagnostic(
        code(moorline::cli::unit_dir_manager),
        help(
            "units installed there would never be loaded by the manager that starts them: run with --systemd {other}, or give the environment a unit-dir ending in systemd/{flag}"
        )
    )]
    UnitDirManager {
        dir: String,
        owner: &'static str,
        driven: &'static str,
        flag: &'static str,
        other: &'static str,
    },
    #[error("--adopt {name}: {problem}")]
    #[diagnostic(code(moorline::cli::adopt), help("{help}"))]
    Adopt {
        name: String,
        problem: String,
        help: String,
    },
}

/// Everything a command needs to know about where it works.
pub(crate) struct Target {
    pub(crate) loaded: Loaded,
    pub(crate) env: Environment,
    pub(crate) repo: Repo,
    pub(crate) state_dir: PathBuf,
    pub(crate) unit_dir: PathBuf,
    pub(crate) systemd: Bus,
    /// The state directory of the environment's `promote-from` source, if
    /// it has one: its `state-dir`, else beside an explicit `--state-dir`
    /// (`DIR/../SOURCE`), else the source's default.
    pub(crate) promotion_state_dir: Option<PathBuf>,
}

impl Target {
    pub(crate) fn config(&self) -> &config::Config {
        &self.loaded.config
    }
}

/// Where unit files go: the environment's `unit-dir`, else the directory the
/// chosen systemd reads administrator units from.
pub(crate) fn unit_dir(env: &Environment, bus: Bus) -> PathBuf {
    if let Some(d) = &env.unit_dir {
        return PathBuf::from(d);
    }
    match bus {
        Bus::System => PathBuf::from("/etc/systemd/system"),
        Bus::User => user_unit_dir(),
    }
}

/// Refuses an environment's `unit-dir` that only the other kind of
/// manager reads: `.../systemd/system` under a user manager, or
/// `.../systemd/user` under the system manager (validation has made sure
/// it ends in one of them). Not for a fleet: the controller installs no
/// unit, and plans for its hosts with its own `--systemd`, not theirs.
fn unit_dir_of(env: &Environment, bus: Bus) -> Result<(), TargetError> {
    let Some(d) = env.unit_dir.as_ref().filter(|_| !env.is_fleet()) else {
        return Ok(());
    };
    let d = d.trim_end_matches('/');
    let (owner, driven, flag, other) = match bus {
        Bus::User if d.ends_with("/systemd/system") => {
            ("the system manager", "a user manager", "user", "system")
        }
        Bus::System if d.ends_with("/systemd/user") => {
            ("user managers", "the system manager", "system", "user")
        }
        _ => return Ok(()),
    };
    Err(TargetError::UnitDirManager {
        dir: d.to_owned(),
        owner,
        driven,
        flag,
        other,
    })
}

/// The user manager's directory for administrator units.
pub(crate) fn user_unit_dir() -> PathBuf {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("systemd/user")
}

/// Where a command works, as chosen (on the command line); each `None`
/// takes the default.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Choices<'a> {
    /// The repository; default: the directory of the configuration file.
    pub(crate) repo: Option<&'a Path>,
    /// The state directory; default: [`state::default_dir`].
    pub(crate) state_dir: Option<&'a Path>,
    /// Which systemd manager.
    pub(crate) systemd: Bus,
    /// The host of a fleet environment to act as ([`for_host`]).
    pub(crate) host: Option<&'a str>,
}

/// Builds the target of environment `env_name` of `loaded`.
pub(crate) fn resolve(loaded: Loaded, env_name: &str, choices: &Choices) -> miette::Result<Target> {
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
            TargetError::UnknownEnvironment {
                name: env_name.to_owned(),
                help,
            }
        })?;
    let repo_dir = choices.repo.map_or_else(
        || {
            loaded
                .path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
        },
        Path::to_path_buf,
    );
    let repo = Repo::discover(&repo_dir)?;
    let systemd = choices.systemd;
    let state_dir = choices.state_dir.map_or_else(
        || state::default_dir(&loaded.config.project.name, &env.name, systemd == Bus::User),
        Path::to_path_buf,
    );
    let promotion_state_dir = env.promote_from.as_ref().map(|p| {
        if let Some(d) = &p.state_dir {
            PathBuf::from(d)
        } else if let Some(explicit) = choices.state_dir {
            explicit
                .parent()
                .unwrap_or_else(|| Path::new("/"))
                .join(&p.environment)
        } else {
            state::default_dir(
                &loaded.config.project.name,
                &p.environment,
                systemd == Bus::User,
            )
        }
    });
    let mut loaded = loaded;
    loaded.config.for_environment(&env.name);
    if systemd == Bus::User {
        for_user_manager(&mut loaded.config);
    }
    if let Some(name) = choices.host {
        for_host(&mut loaded.config, &env, name)?;
    }
    let unit_dir = unit_dir(&env, systemd);
    unit_dir_of(&env, systemd)?;
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
pub(crate) fn for_host(
    config: &mut config::Config,
    env: &Environment,
    name: &str,
) -> Result<(), TargetError> {
    // The name is shown in the error: never a control character of it.
    let shown = config::error::bounded(&format!("`{name}`"));
    if !env.is_fleet() {
        return Err(TargetError::NotAFleet {
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
        return Err(TargetError::UnknownHost {
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
pub(crate) fn resolve_adopt(
    config: &config::Config,
    names: &[String],
) -> Result<Vec<String>, TargetError> {
    let mut out = std::collections::BTreeSet::new();
    for name in names {
        let Some(s) = config
            .services
            .iter()
            .find(|s| s.name == *name || s.unit_name == *name)
        else {
            let known: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
            return Err(TargetError::Adopt {
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
            return Err(TargetError::Adopt {
                name: name.clone(),
                problem: format!("service `{}` has no `unit` block, so moorline does not write its unit file", s.name),
                help: "adopting means moorline takes the unit file over: give the service a `unit` block first".to_owned(),
            });
        }
        out.insert(s.name.clone());
    }
    Ok(out.into_iter().collect())
}

//! Fleet mode: one controller (a laptop, a CI runner) plans and rolls out an
//! environment's `hosts` over the system's `ssh`, where each host runs
//! today's moorline on its own state, journal and lock. In: the checked
//! config and the controller's repository; out: a fleet plan (a value), a
//! rolling apply with a fleet journal, fleet-wide rollback, status and logs.
//! The controller never touches a host's services itself: it only runs the
//! host's own `moorline`.

pub(crate) mod apply;
pub(crate) mod artifacts;
pub(crate) mod control;
pub(crate) mod journal;
pub mod plan;
pub(crate) mod remote;
pub mod render;
pub(crate) mod rollout;
pub mod ssh;
pub(crate) mod stale;

use std::path::{Path, PathBuf};

use miette::Diagnostic;

use crate::config::{Environment, Host};

pub(crate) use ssh::SshError;

#[derive(Debug, thiserror::Error, Diagnostic)]
pub(crate) enum FleetError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Ssh(#[from] SshError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Build(#[from] crate::builder::BuilderError),
    #[error("host {host}: {what}")]
    #[diagnostic(code(moorline::fleet::remote), help("{help}"))]
    Remote {
        host: String,
        what: String,
        help: String,
    },
    #[error("cannot {what}")]
    #[diagnostic(code(moorline::fleet::local), help("{help}"))]
    Local {
        what: String,
        help: String,
        #[source]
        source: Option<std::io::Error>,
    },
    #[error("unreachable before the start: {hosts}")]
    #[diagnostic(
        code(moorline::fleet::unreachable_before_start),
        help(
            "nothing was applied on any host. Bring the hosts back, or pass --skip-unreachable to go on without them (each counts against the rollout's max-fail)"
        )
    )]
    UnreachableBeforeStart { hosts: String },
    #[error("hosts lack what their plans need; nothing was applied on any host:{hosts}")]
    #[diagnostic(
        code(moorline::fleet::host_facts),
        help(
            "fix each problem on its host (the fleet plan lists them under \"Host facts\"), then plan and apply again"
        )
    )]
    HostFacts { hosts: String },
    #[error("`{command}` does not run over the hosts of the fleet environment {env}")]
    #[diagnostic(
        code(moorline::fleet::not_on_controller),
        help(
            "fleet mode runs plan, apply, rollback, status, logs, backup, restart, start, stop, enable and disable over the hosts; run `{command}` on a host itself (`moorline --host NAME {command} --env {env}` there)"
        )
    )]
    NotOnController { command: String, env: String },
    #[error("--on {name}: environment `{env}` has no host by this name")]
    #[diagnostic(
        code(moorline::fleet::unknown_host),
        help("the hosts of {env}: {hosts}")
    )]
    UnknownHost {
        name: String,
        env: String,
        hosts: String,
    },
}

impl FleetError {
    pub(crate) fn local(
        what: impl Into<String>,
        help: impl Into<String>,
        source: std::io::Error,
    ) -> Self {
        Self::Local {
            what: what.into(),
            help: help.into(),
            source: Some(source),
        }
    }

    /// The refusal of a fleet apply while hosts lack what their plans need.
    pub(crate) fn host_facts(
        facts: &std::collections::BTreeMap<String, Vec<crate::hostfacts::Fact>>,
    ) -> Self {
        let mut hosts = String::new();
        for (host, list) in facts {
            for f in list {
                use std::fmt::Write as _;
                let _ = write!(hosts, "\n  - {host}: {} ({})", f.message, f.code);
            }
        }
        Self::HostFacts { hosts }
    }

    pub(crate) fn remote(host: &Host, what: impl Into<String>, help: impl Into<String>) -> Self {
        Self::Remote {
            host: host.name.clone(),
            what: what.into(),
            help: help.into(),
        }
    }
}

/// Everything the controller knows about where it works, resolved once.
pub(crate) struct Fleet {
    pub(crate) project: String,
    pub(crate) env: Environment,
    /// The controller's fleet directory (`{state}/fleet`): the fleet
    /// journal, its lock, ssh control sockets and bundles.
    pub(crate) dir: PathBuf,
    /// The controller's repository (its working tree root).
    pub(crate) repo_root: PathBuf,
    /// The config file's path inside the repository.
    pub(crate) config_in_repo: String,
    /// `--systemd`, handed on to every host's moorline.
    pub(crate) systemd: Option<crate::systemd::Bus>,
    pub(crate) transport: ssh::Transport,
    /// The binary that runs here and is installed on hosts.
    pub(crate) binary: remote::Binary,
    /// Builds the artifacts hosts install, here, into the controller's
    /// store (`{state}/artifacts`).
    pub(crate) builder: crate::builder::Builder,
}

/// Uncommitted changes on the controller under the configuration file,
/// the services' paths and their watched paths: what the hosts will not
/// get (they receive commits only).
pub(crate) fn uncommitted(t: &crate::target::Target) -> miette::Result<crate::git::Uncommitted> {
    let config = t.config();
    let mut paths = vec![in_repo(&t.loaded.path, t.repo.root())?];
    for s in &config.services {
        paths.push(s.path.clone());
        paths.extend(s.watch.iter().cloned());
    }
    Ok(t.repo.uncommitted(&paths)?)
}

impl Fleet {
    /// The controller's view of `t` (an environment with hosts).
    pub(crate) fn new(
        t: &crate::target::Target,
        ssh_config: Option<PathBuf>,
        systemd: Option<crate::systemd::Bus>,
    ) -> Result<Self, FleetError> {
        let dir = t.state_dir.join("fleet");
        crate::files::tighten(&dir).map_err(|e| {
            FleetError::local(
                format!("create the fleet directory {}", dir.display()),
                "check the permissions of the state directory (--state-dir)",
                e,
            )
        })?;
        let transport = ssh::Transport::new(ssh_config, &dir)?;
        let repo_root = t.repo.root().to_path_buf();
        let config_in_repo = in_repo(&t.loaded.path, &repo_root)?;
        let binary = remote::Binary::current(&dir)?;
        let builder = crate::builder::Builder::new(
            t.config(),
            &t.env,
            &repo_root,
            &t.state_dir,
            crate::artifact::Store::at(crate::builder::default_store(&t.state_dir)),
        );
        Ok(Self {
            project: t.loaded.config.project.name.clone(),
            env: t.env.clone(),
            dir,
            repo_root,
            config_in_repo,
            systemd,
            transport,
            binary,
            builder,
        })
    }

    pub(crate) fn hosts(&self) -> &[Host] {
        &self.env.hosts
    }

    pub(crate) fn host(&self, name: &str) -> Option<&Host> {
        self.env.hosts.iter().find(|h| h.name == name)
    }
}

/// `config`'s path relative to the repository root `root`.
fn in_repo(config: &Path, root: &Path) -> Result<String, FleetError> {
    let abs = |p: &Path| {
        p.canonicalize().map_err(|e| {
            FleetError::local(
                format!("resolve {}", p.display()),
                "the configuration file must be inside the repository",
                e,
            )
        })
    };
    let (config, root) = (abs(config)?, abs(root)?);
    config
        .strip_prefix(&root)
        .ok()
        .and_then(|p| p.to_str())
        .map(str::to_owned)
        .ok_or_else(|| FleetError::Local {
            what: format!(
                "find the configuration {} inside the repository {}",
                config.display(),
                root.display()
            ),
            help: "fleet hosts read the configuration from the shipped commits: keep it in the repository".to_owned(),
            source: None,
        })
}

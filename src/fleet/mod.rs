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
pub(crate) mod promote;
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

/// The permits of a fan-out over hosts: at most `connections` (the
/// rollout's, docs/config.md) hosts talked to at once; each task holds one
/// for all its ssh sessions with its host.
pub(crate) fn host_permits(connections: u32) -> std::sync::Arc<tokio::sync::Semaphore> {
    std::sync::Arc::new(tokio::sync::Semaphore::new(at_once(connections)))
}

/// `connections` as a count of tasks (at least one).
pub(crate) fn at_once(connections: u32) -> usize {
    usize::try_from(connections.max(1))
        .unwrap_or(usize::MAX)
        .min(tokio::sync::Semaphore::MAX_PERMITS)
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
    /// The `promote-from` source environment, when it has hosts: the
    /// controller reads them ([`promote`]).
    pub(crate) promote_source: Option<Environment>,
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
        raise_open_files_limit();
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
            promote_source: promote::source_of(t.config(), &t.env),
            builder,
        })
    }

    pub(crate) fn hosts(&self) -> &[Host] {
        &self.env.hosts
    }

    pub(crate) fn host(&self, name: &str) -> Option<&Host> {
        self.env.hosts.iter().find(|h| h.name == name)
    }

    /// Ends a fan-out task's turn with `host`, at most `at_once` hosts
    /// talked to at a time: when the fleet has more hosts than that, the
    /// host's master connection is closed, so that no more than `at_once`
    /// connections stay open while the other hosts get their turn (its
    /// later sessions connect again). A fleet that fits keeps them, to
    /// share with what follows in the same command.
    pub(crate) async fn end_turn(&self, host: &Host, at_once: usize) {
        if self.hosts().len() > at_once {
            self.transport.close_all(std::slice::from_ref(host)).await;
        }
    }
}

/// Raises this process's soft limit on open files to its hard limit: the
/// controller holds three pipes per ssh session, and `connections` (up to
/// 1024) sessions at once outgrow the usual soft limit of 1024 (the hard
/// one is far higher on current systems). Best effort: a limit that cannot
/// be raised stays, and a session that then cannot start is an error
/// naming its host.
fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let (Some(soft), Some(hard)) = (limit.current, limit.maximum)
        && soft < hard
    {
        let _ = setrlimit(
            Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            },
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_limit() {
        use rustix::process::{Resource, getrlimit};
        raise_open_files_limit();
        let limit = getrlimit(Resource::Nofile);
        if limit.maximum.is_some() {
            assert_eq!(limit.current, limit.maximum);
        }
    }

    #[test]
    fn connections_become_permits() {
        assert_eq!(at_once(0), 1);
        assert_eq!(at_once(10), 10);
        assert_eq!(host_permits(1024).available_permits(), 1024);
    }
}

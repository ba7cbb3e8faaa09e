//! Settings: the global command-line flags (`-c`, `--repo`, `--state-dir`,
//! `--systemd`, `--host`) and `MOORLINE_CONFIG` resolved, in one place, into
//! the [`Target`] a command works on.

use crate::cli::{Global, SystemdKind};
use crate::systemd::Bus;
use crate::target::{self, Choices, Target};

/// Which systemd: `--systemd`, else the system manager as root and the
/// user's otherwise.
pub(crate) fn systemd_kind(flag: Option<SystemdKind>) -> Bus {
    match flag {
        Some(SystemdKind::System) => Bus::System,
        None if crate::files::is_root() => Bus::System,
        Some(SystemdKind::User) | None => Bus::User,
    }
}

/// Resolves the global flags and `--env` into a target.
pub(crate) fn resolve(global: &Global, env_name: &str) -> miette::Result<Target> {
    let loaded = super::load_config(global.config.as_deref())?;
    target::resolve(loaded, env_name, &choices(global, global.host_name()))
}

/// The global flags as target choices, acting as `host` (`--host`, or a
/// host the fleet controller plans for).
pub(crate) fn choices<'a>(global: &'a Global, host: Option<&'a str>) -> Choices<'a> {
    Choices {
        repo: global.repo.as_deref(),
        state_dir: global.state_dir.as_deref(),
        systemd: systemd_kind(global.systemd),
        host,
    }
}

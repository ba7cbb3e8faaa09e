//! A fixture world of the benches that deploy one under a private manager (`apply`, `cutover`;
//! `#[path]`-included by them, beside `common/cli.rs`): a scratch directory with its own
//! `systemd --user` manager, and fixture repositories on it whose units are named
//! `{prefix}-{service}.service` (so several share the manager), each with its own state
//! directory and the `moorline` command that deploys it.

use std::path::{Path, PathBuf};
use std::process::Command;

use moorline::demo::fixture::{Fixture, FixtureOptions};
use moorline::demo::sandbox::PrivateSystemd;
use moorline::systemd::Systemd;

/// The Python the fixture services and their builds run on.
pub const PYTHON: &str = "/usr/bin/python3";

/// A scratch directory named `{prefix}...` with a private manager started in it, and a
/// connection to that manager; an error when the fixture's Python or the manager is missing.
pub async fn scratch_manager(
    prefix: &str,
) -> Result<(tempfile::TempDir, PrivateSystemd, Systemd), String> {
    if !Path::new(PYTHON).is_file() {
        return Err(format!("{PYTHON} is needed (the fixture services)"));
    }
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(|e| e.to_string())?;
    let mut sandbox = PrivateSystemd::start(&dir.path().join("systemd"))
        .await
        .map_err(|e| format!("no private systemd manager: {:?}", miette::Report::new(e)))?;
    match sandbox.connect().await {
        Ok(sd) => Ok((dir, sandbox, sd)),
        Err(e) => {
            sandbox.stop();
            Err(e.to_string())
        }
    }
}

/// One fixture repository on the private manager `sandbox`.
pub struct World<'a> {
    pub fx: Fixture,
    /// Units are `{prefix}-{service}.service`.
    pub prefix: String,
    pub state: PathBuf,
    sandbox: &'a PrivateSystemd,
}

impl<'a> World<'a> {
    /// A fixture of `services` services (all of the fixture's when `None`) under
    /// `dir/{prefix}`, its ports from `port_base`, and its configuration with the unit names
    /// made `{prefix}-{service}.service`: returned, not committed (`apply` refuses uncommitted
    /// changes; the caller commits it, edited further or not).
    pub fn new(
        dir: &Path,
        prefix: &str,
        port_base: u16,
        services: Option<usize>,
        sandbox: &'a PrivateSystemd,
    ) -> Result<(Self, String), String> {
        let base = dir.join(prefix);
        let mut opts = FixtureOptions::new(base.join("srv"));
        opts.port_base = Some(port_base);
        opts.services = services;
        opts.python = PathBuf::from(PYTHON);
        let fx = Fixture::create(&base.join("fx"), &opts).map_err(|e| e.to_string())?;
        let text = std::fs::read_to_string(&fx.config_path).map_err(|e| e.to_string())?;
        let text = text.replace(
            "unit-name \"pakashop-{service}.service\"",
            &format!("unit-name \"{prefix}-{{service}}.service\""),
        );
        let world = World {
            fx,
            prefix: prefix.to_owned(),
            state: base.join("state"),
            sandbox,
        };
        Ok((world, text))
    }

    /// `moorline -c CONFIG --state-dir STATE --systemd user ARGS` against the manager.
    pub fn moorline(&self, args: &[&str]) -> Command {
        let mut c = crate::cli::moorline(self.sandbox, &self.fx.config_path, &self.state);
        c.args(args);
        c
    }

    /// Every service's unit, in the fixture's order.
    pub fn units(&self) -> Vec<String> {
        self.fx
            .services
            .iter()
            .map(|s| format!("{}-{}.service", self.prefix, s.name))
            .collect()
    }
}

//! The `moorline` command of the benches that run it against a private
//! manager (`#[path]`-included by those that do).

use std::path::Path;
use std::process::{Command, Stdio};

use moorline::demo::sandbox::PrivateSystemd;

/// `moorline -c CONFIG --state-dir STATE --systemd user` talking to the
/// private manager `sandbox` (its bus, runtime and unit directories).
pub fn moorline(sandbox: &PrivateSystemd, config: &Path, state: &Path) -> Command {
    let unit_dir = sandbox.unit_dir();
    let config_home = unit_dir
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut c = Command::new(env!("CARGO_BIN_EXE_moorline"));
    c.arg("-c")
        .arg(config)
        .arg("--state-dir")
        .arg(state)
        .args(["--systemd", "user"])
        .env("XDG_RUNTIME_DIR", sandbox.runtime_dir())
        .env("DBUS_SESSION_BUS_ADDRESS", sandbox.bus_address())
        .env("XDG_CONFIG_HOME", config_home)
        .env("NO_COLOR", "1")
        .env_remove("MOORLINE_CONFIG")
        .stdin(Stdio::null());
    c
}

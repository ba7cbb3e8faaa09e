//! The test-only part of the private `systemd --user` manager (`crate::demo::sandbox`): a
//! restart of its bus broker, as a package upgrade does on a host, and the processes below a
//! PID (the broker's, or a simulated host's).

use std::io;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::demo::sandbox::{POLL, PrivateSystemd, STARTUP_TIMEOUT};

impl PrivateSystemd {
    /// Restarts the manager's bus broker as `systemctl restart dbus` (e.g. on a package
    /// upgrade) does on a host: the running `dbus-daemon` gets `SIGTERM`, every client's
    /// connection closes, and once it is gone a new broker is started (by connecting to the
    /// listening socket, which the manager's `dbus.socket` keeps open throughout, so socket
    /// activation starts it) and the manager registers on it again. Returns how many brokers
    /// were stopped (0 when none ran, e.g. before any client had connected).
    ///
    /// Measured here (systemd 252, dbus-daemon 1.14): a new connection could call
    /// `org.freedesktop.systemd1` 45–75 ms after the old broker got `SIGTERM` or `SIGKILL`,
    /// and the same after `systemctl --user restart dbus.service`; jobs and units keep running
    /// meanwhile, only signals and replies addressed to the old connections are lost.
    pub fn restart_bus(&self) -> io::Result<usize> {
        let brokers = self.brokers()?;
        for pid in &brokers {
            let status = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            if !status.success() {
                return Err(io::Error::other(format!(
                    "kill -TERM {pid} failed: {status}"
                )));
            }
        }
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while self.brokers()?.iter().any(|pid| brokers.contains(pid)) {
            if Instant::now() >= deadline {
                return Err(io::Error::other("the old dbus-daemon did not exit"));
            }
            std::thread::sleep(POLL);
        }
        // Socket activation: the first connection starts the new broker. Whether this very
        // connection is accepted does not matter.
        let _ = std::os::unix::net::UnixStream::connect(self.runtime_dir().join("bus"));
        while self.brokers()?.is_empty() {
            if Instant::now() >= deadline {
                return Err(io::Error::other("no new dbus-daemon started"));
            }
            std::thread::sleep(POLL);
        }
        Ok(brokers.len())
    }

    /// The host PIDs of the `dbus-daemon`s running under the manager.
    fn brokers(&self) -> io::Result<Vec<u32>> {
        Ok(descendants(self.pid())?
            .into_iter()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|comm| comm.trim_end() == "dbus-daemon")
            })
            .collect())
    }
}

/// Every process below `root` (host PIDs), from the parent links in `/proc/<pid>/stat`
/// (`proc(5)`: the fourth field, after the parenthesised command name).
pub(crate) fn descendants(root: u32) -> io::Result<Vec<u32>> {
    let mut parent_of = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may exit while we look; it is then nobody's concern.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some(ppid) = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse::<u32>().ok())
        {
            parent_of.push((pid, ppid));
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parent_of
                .iter()
                .filter(|(_, ppid)| *ppid == parent)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    found.remove(0);
    Ok(found)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn descendants_include_children_and_grandchildren() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 30 & wait"]);
        // Its own process group, so that the grandchild is killed with it below.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let found = loop {
            let found = descendants(std::process::id()).unwrap();
            if found.len() >= 2 || Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(POLL);
        };
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", child.id())])
            .status();
        let _ = child.wait();
        assert!(found.contains(&child.id()), "{found:?}");
        assert!(
            found.len() >= 2,
            "the grandchild `sleep` is missing: {found:?}"
        );
    }
}

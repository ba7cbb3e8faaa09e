//! One apply at a time per environment: an advisory `flock` on
//! `{state}/lock`, held for the whole operation and released by the kernel
//! if the process dies. The file names the holder (PID, start time) so a
//! second apply can say who has it.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use miette::Diagnostic;

#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum LockError {
    #[error("another moorline holds the lock of this environment: {holder}")]
    #[diagnostic(
        code(moorline::lock::held),
        help(
            "wait for it to finish; if that process is gone the lock is already free, since the kernel releases it"
        )
    )]
    Held { holder: String },
    #[error("cannot take the lock {path}")]
    #[diagnostic(
        code(moorline::lock::io),
        help("check the permissions of the state directory")
    )]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The held lock; dropping it releases it.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

/// Takes the environment's lock or fails at once naming the holder.
pub fn acquire(dir: &Path, what: &str) -> Result<Lock, LockError> {
    let path = dir.join("lock");
    let io = |source| LockError::Io {
        path: path.display().to_string(),
        source,
    };
    crate::files::tighten(dir).map_err(io)?;
    let mut file = OpenOptions::new()
        .mode(0o600)
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(LockError::Held {
                holder: if holder.is_empty() {
                    "unknown process".to_owned()
                } else {
                    holder.to_owned()
                },
            });
        }
        Err(fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    let started = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let info = format!("pid {} ({what}), started {started}\n", std::process::id());
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(info.as_bytes()))
        .and_then(|()| file.sync_data())
        .map_err(io)?;
    Ok(Lock { _file: file })
}

/// Whether a moorline process still holds the lock in `dir`, judged
/// without touching the lock (taking it, even shared and for an instant,
/// could make an apply starting then fail): the holder the file names is
/// alive and is a moorline (`/proc/PID/comm`, which a fleet host's
/// `moorline-<hash>` binary also starts with). A PID reused by another
/// moorline is possible but would need the holder to have died first.
pub(crate) fn held_by_running_moorline(dir: &Path) -> bool {
    let Ok(text) = fs::read_to_string(dir.join("lock")) else {
        return false;
    };
    text.strip_prefix("pid ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|pid| pid.parse::<u32>().ok())
        .and_then(|pid| fs::read_to_string(format!("/proc/{pid}/comm")).ok())
        .is_some_and(|comm| comm.starts_with("moorline"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_the_first_named() {
        let dir = tempfile::tempdir().unwrap();
        let first = acquire(dir.path(), "apply").unwrap();
        let err = acquire(dir.path(), "apply").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(first);
        acquire(dir.path(), "apply").unwrap();
    }

    #[test]
    fn a_holder_is_running_only_while_its_process_is_a_live_moorline() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!held_by_running_moorline(dir.path()), "no lock file");
        // This test process is no moorline (its name is the test binary's).
        drop(acquire(dir.path(), "apply").unwrap());
        let comm = fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(
            held_by_running_moorline(dir.path()),
            comm.starts_with("moorline")
        );
        fs::write(
            dir.path().join("lock"),
            "pid 999999999 (apply), started x\n",
        )
        .unwrap();
        assert!(!held_by_running_moorline(dir.path()), "no such process");
    }
}

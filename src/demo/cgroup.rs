//! A cgroup subtree of its own for each private manager: a unique name goes in, one empty
//! directory per hierarchy that systemd manages (the named `systemd` v1 hierarchy and the
//! unified v2 one, whichever are mounted) comes out ([`Subtree`]); it guarantees that the
//! directories are removed, depth-first, when the subtree is dropped, and that a subtree
//! left behind by a process that died is swept by the next one.
//!
//! Why: without systemd as PID 1, every `systemd --user` started here begins in the caller's
//! cgroup, moves itself to `init.scope` there and puts its units in `app.slice/NAME.service`
//! beside it. Two managers that run a unit of the same name (two tests, two simulated hosts,
//! the demo beside a test) then share one cgroup, and a stop in one kills the other's process
//! (DESIGN.md, "Every private manager needs its own cgroup subtree"). A manager started
//! inside a subtree of its own puts its units below it instead.
//!
//! The process is moved by the namespace's init shell itself (it writes its own PID to each
//! directory's `cgroup.procs`, [`Subtree::procs_files`]) before anything else starts there,
//! so every process of the sandbox starts inside the subtree.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Directory names start with this, then the owner's PID and a counter: `moorline-sandbox.PID.N`.
const PREFIX: &str = "moorline-sandbox.";

/// How long [`Subtree`]'s drop retries removing a directory that is still busy: the kernel
/// removes a dead process from its cgroup once the process is reaped, which follows the
/// namespace's `SIGKILL` within milliseconds.
const REMOVE_GRACE: Duration = Duration::from_secs(5);

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One directory per hierarchy, owned by one private manager.
#[derive(Debug)]
pub(crate) struct Subtree {
    dirs: Vec<PathBuf>,
}

impl Subtree {
    /// Creates a new, uniquely named directory in each hierarchy systemd manages, below the
    /// calling process's own cgroup there. `Ok(None)` when no such hierarchy is mounted.
    pub(crate) fn create() -> io::Result<Option<Self>> {
        let name = format!(
            "{PREFIX}{}.{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let parents = own_cgroups()?;
        if parents.is_empty() {
            return Ok(None);
        }
        let mut subtree = Self { dirs: Vec::new() };
        for parent in parents {
            sweep_orphans(&parent);
            let dir = parent.join(&name);
            // On error, `subtree`'s drop removes what was made so far.
            std::fs::create_dir(&dir).map_err(|e| {
                io::Error::new(e.kind(), format!("creating {}: {e}", dir.display()))
            })?;
            subtree.dirs.push(dir);
        }
        Ok(Some(subtree))
    }

    /// The `cgroup.procs` files a process writes its PID to in order to move into the subtree.
    pub(crate) fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// The subtree's directories, one per hierarchy.
    #[cfg(feature = "testkit")]
    pub(crate) fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }
}

impl Drop for Subtree {
    fn drop(&mut self) {
        let deadline = Instant::now() + REMOVE_GRACE;
        for dir in &self.dirs {
            while remove_depth_first(dir).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The directories of the calling process's cgroups in the hierarchies systemd manages, from
/// `/proc/self/mountinfo` (`proc(5)`) and `/proc/self/cgroup` (`cgroups(7)`).
fn own_cgroups() -> io::Result<Vec<PathBuf>> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let membership = std::fs::read_to_string("/proc/self/cgroup")?;
    Ok(hierarchies(&mountinfo)
        .into_iter()
        .filter_map(|(kind, mount_root, mount_point)| {
            let own = membership.lines().find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
                let matches = match kind {
                    Kind::Unified => controllers.is_empty(),
                    Kind::NamedSystemd => controllers.split(',').any(|c| c == "name=systemd"),
                };
                matches.then_some(path)
            })?;
            // A mount of a sub-directory of the hierarchy shows paths relative to its root.
            let relative = own.strip_prefix(mount_root.as_str()).unwrap_or(own);
            Some(mount_point.join(relative.trim_start_matches('/')))
        })
        .collect())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Unified,
    NamedSystemd,
}

/// `(kind, root within the hierarchy, mount point)` of each cgroup mount systemd manages.
fn hierarchies(mountinfo: &str) -> Vec<(Kind, String, PathBuf)> {
    let mut found: Vec<(Kind, String, PathBuf)> = Vec::new();
    for line in mountinfo.lines() {
        let Some((fields, after)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = fields.split(' ').collect();
        let after: Vec<&str> = after.split(' ').collect();
        let (Some(root), Some(point), Some(fstype)) = (fields.get(3), fields.get(4), after.first())
        else {
            continue;
        };
        let options = after.get(2).copied().unwrap_or_default();
        let kind = match *fstype {
            "cgroup2" => Kind::Unified,
            "cgroup" if options.split(',').any(|o| o == "name=systemd") => Kind::NamedSystemd,
            _ => continue,
        };
        // The first mount of each hierarchy is the one to use (later ones are bind mounts).
        if found.iter().any(|(k, _, _)| *k == kind) {
            continue;
        }
        found.push((kind, unescape(root), PathBuf::from(unescape(point))));
    }
    found
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let s = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(s, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes the subtrees in `parent` that belong to processes no longer running (a test binary
/// killed before its drops ran). Best effort: a busy or foreign directory stays.
fn sweep_orphans(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(owner) = name
            .to_str()
            .and_then(|n| n.strip_prefix(PREFIX))
            .and_then(|rest| rest.split('.').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if owner != std::process::id() && !Path::new(&format!("/proc/{owner}")).exists() {
            let _ = remove_depth_first(&entry.path());
        }
    }
}

/// `rmdir` of a cgroup directory and every directory below it, children first (a cgroup with
/// children cannot be removed; the files in it are not real files and go with it).
fn remove_depth_first(dir: &Path) -> io::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    remove_depth_first(&entry.path())?;
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_the_hierarchies_systemd_manages() {
        assert_eq!(
            hierarchies(HYBRID),
            vec![
                (
                    Kind::NamedSystemd,
                    "/".to_owned(),
                    PathBuf::from("/sys/fs/cgroup/systemd")
                ),
                (
                    Kind::Unified,
                    "/".to_owned(),
                    PathBuf::from("/sys/fs/cgroup/unified")
                ),
            ]
        );
        let pure_v2 = "29 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n\
                       99 23 0:26 / /mnt/again rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            hierarchies(pure_v2),
            vec![(
                Kind::Unified,
                "/".to_owned(),
                PathBuf::from("/sys/fs/cgroup")
            )]
        );
        assert!(hierarchies("1 2 0:1 / / rw - ext4 /dev/vda rw\n").is_empty());
    }

    #[test]
    fn unescapes_mountinfo_fields() {
        assert_eq!(unescape(r"/a\040b\\c"), r"/a b\\c");
        assert_eq!(unescape(r"/a\134b"), r"/a\b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/end\\"), "/end\\");
    }
}

//! Releases on the host: `{root}/{service}/releases/{sha}/` built from an
//! export of the service's tree, `{root}/{service}/current` switched by an
//! atomic rename of a new symlink, old releases pruned; and env-files read
//! for commands. Commands themselves run in [`crate::process`].

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Marker written into a release once its build succeeded.
pub(crate) const BUILT_MARKER: &str = ".moorline-built";

/// Reads an environment file (systemd `EnvironmentFile=` syntax, the common
/// subset: `KEY=value`, optional quotes, `#` comments). A missing file is
/// empty, like systemd's `-` prefix.
pub(crate) fn read_env_file(path: &Path) -> BTreeMap<String, String> {
    let Ok(text) = fs::read_to_string(path) else {
        return BTreeMap::new();
    };
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
                return None;
            }
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_owned(), v.to_owned()))
        })
        .collect()
}

/// Paths of one service's releases.
pub struct Paths {
    pub(crate) service_dir: PathBuf,
}

impl Paths {
    pub fn new(root: &str, service: &str) -> Self {
        Self {
            service_dir: Path::new(root).join(service),
        }
    }
    pub(crate) fn releases(&self) -> PathBuf {
        self.service_dir.join("releases")
    }
    pub fn release(&self, sha: &str) -> PathBuf {
        self.releases().join(sha)
    }
    pub(crate) fn current(&self) -> PathBuf {
        self.service_dir.join("current")
    }
    /// The revision `current` points to, if any.
    pub fn live(&self) -> Option<String> {
        let target = fs::read_link(self.current()).ok()?;
        target.file_name().map(|n| n.to_string_lossy().into_owned())
    }
    pub(crate) fn is_built(&self, sha: &str) -> bool {
        self.release(sha).join(BUILT_MARKER).is_file()
    }
}

/// Points `current` at `target` atomically: a new symlink under a temporary
/// name renamed over the old one (rename(2) replaces atomically), then the
/// directory fsync'd.
pub fn switch(paths: &Paths, target: &Path) -> std::io::Result<()> {
    point(&paths.service_dir, "current", target)
}

/// Points the link `dir/name` at `target` atomically (a new symlink renamed
/// over it), then fsyncs `dir`: `current`, and a blue/green slot's link.
pub(crate) fn point(dir: &Path, name: &str, target: &Path) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    fs::rename(&tmp, dir.join(name))?;
    fs::File::open(dir)?.sync_all()
}

/// Marks a release built (durably).
pub fn mark_built(dir: &Path, sha: &str) -> std::io::Result<()> {
    crate::files::write_atomic(&dir.join(BUILT_MARKER), format!("{sha}\n").as_bytes())
}

/// Removes releases beyond `keep`, oldest first by modification time,
/// never one in `protect` (the live one and the one before it).
pub(crate) fn prune(paths: &Paths, keep: usize, protect: &[&str]) -> Vec<String> {
    let Ok(entries) = fs::read_dir(paths.releases()) else {
        return Vec::new();
    };
    let mut releases: Vec<(std::time::SystemTime, String, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| {
            let t = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            (t, e.file_name().to_string_lossy().into_owned(), e.path())
        })
        .collect();
    releases.sort();
    let mut removed = Vec::new();
    let excess = releases.len().saturating_sub(keep);
    for (_, name, path) in releases {
        if removed.len() >= excess {
            break;
        }
        if protect.contains(&name.as_str()) {
            continue;
        }
        if fs::remove_dir_all(&path).is_ok() {
            removed.push(name);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn env_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.env");
        fs::write(&p, "# c\nA=1\nexport B=\"two words\"\nC='x'\n\nbad line\n").unwrap();
        let env = read_env_file(&p);
        assert_eq!(env.get("A").map(String::as_str), Some("1"));
        assert_eq!(env.get("B").map(String::as_str), Some("two words"));
        assert_eq!(env.get("C").map(String::as_str), Some("x"));
        assert_eq!(env.len(), 3);
        assert!(read_env_file(&dir.path().join("missing")).is_empty());
    }

    #[test]
    fn switch_and_prune() {
        let dir = tempfile::tempdir().unwrap();
        let paths = Paths::new(dir.path().to_str().unwrap(), "svc");
        for r in ["a", "b", "c", "d"] {
            fs::create_dir_all(paths.release(r)).unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
        switch(&paths, &paths.release("a")).unwrap();
        assert_eq!(paths.live().as_deref(), Some("a"));
        switch(&paths, &paths.release("d")).unwrap();
        assert_eq!(paths.live().as_deref(), Some("d"));
        let removed = prune(&paths, 2, &["d", "a"]);
        assert_eq!(removed, vec!["b".to_owned(), "c".to_owned()]);
        assert!(paths.release("a").is_dir());
    }
}

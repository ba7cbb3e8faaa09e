//! Releases on the host: `{root}/{service}/releases/{sha}/` built from an
//! export of the service's tree, `{root}/{service}/current` switched by an
//! atomic rename of a new symlink, old releases pruned. Also the one place
//! that runs a configured command: argv (never a shell string), a working
//! directory, an environment, a timeout, output captured to a log file.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use miette::Diagnostic;

/// Marker written into a release once its build succeeded.
pub const BUILT_MARKER: &str = ".moorline-built";
/// Lines of a failed command's log shown in the report.
pub const TAIL_LINES: usize = 20;

#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum RunError {
    #[error("`{program}` could not be started")]
    #[diagnostic(
        code(moorline::run::spawn),
        help(
            "check that the program exists on the host and is executable (commands run without a shell)"
        )
    )]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` exited with {status}\n{tail}")]
    #[diagnostic(code(moorline::run::failed), help("the full output is in {log}"))]
    Failed {
        command: String,
        status: String,
        tail: String,
        log: String,
    },
    #[error("`{command}` did not finish within {secs}s and was killed\n{tail}")]
    #[diagnostic(
        code(moorline::run::timeout),
        help(
            "raise the command's timeout= in the config if it is legitimately slow; output in {log}"
        )
    )]
    Timeout {
        command: String,
        secs: u64,
        tail: String,
        log: String,
    },
    #[error("cannot write {path}")]
    #[diagnostic(code(moorline::run::io), help("check free space and permissions"))]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A command to run.
pub struct Run<'a> {
    pub argv: &'a [String],
    pub dir: Option<&'a Path>,
    pub env: &'a BTreeMap<String, String>,
    pub timeout: Duration,
    pub log: &'a Path,
}

/// Runs a command to completion, output (stdout and stderr) to the log.
pub async fn run(r: Run<'_>) -> Result<(), RunError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| RunError::Io { path, source }
    };
    let Some((program, args)) = r.argv.split_first() else {
        return Err(RunError::Spawn {
            program: String::new(),
            source: std::io::Error::other("empty command"),
        });
    };
    if let Some(parent) = r.log.parent() {
        fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let log = fs::File::create(r.log).map_err(io(r.log))?;
    let log2 = log.try_clone().map_err(io(r.log))?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(r.env)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .kill_on_drop(true);
    if let Some(d) = r.dir {
        cmd.current_dir(d);
    }
    let mut child = cmd.spawn().map_err(|source| RunError::Spawn {
        program: program.clone(),
        source,
    })?;
    let shown = r.argv.join(" ");
    match tokio::time::timeout(r.timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(RunError::Failed {
            command: shown,
            status: status.to_string(),
            tail: tail(r.log),
            log: r.log.display().to_string(),
        }),
        Ok(Err(source)) => Err(RunError::Spawn {
            program: program.clone(),
            source,
        }),
        Err(_) => {
            let _ = child.kill().await;
            Err(RunError::Timeout {
                command: shown,
                secs: r.timeout.as_secs(),
                tail: tail(r.log),
                log: r.log.display().to_string(),
            })
        }
    }
}

/// The last lines of a log file, indented, for a report.
pub fn tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(TAIL_LINES);
    lines[start..]
        .iter()
        .map(|l| format!("    | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads an environment file (systemd `EnvironmentFile=` syntax, the common
/// subset: `KEY=value`, optional quotes, `#` comments). A missing file is
/// empty, like systemd's `-` prefix.
pub fn read_env_file(path: &Path) -> BTreeMap<String, String> {
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
    pub service_dir: PathBuf,
}

impl Paths {
    pub fn new(root: &str, service: &str) -> Self {
        Self {
            service_dir: Path::new(root).join(service),
        }
    }
    pub fn releases(&self) -> PathBuf {
        self.service_dir.join("releases")
    }
    pub fn release(&self, sha: &str) -> PathBuf {
        self.releases().join(sha)
    }
    pub fn current(&self) -> PathBuf {
        self.service_dir.join("current")
    }
    /// The revision `current` points to, if any.
    pub fn live(&self) -> Option<String> {
        let target = fs::read_link(self.current()).ok()?;
        target.file_name().map(|n| n.to_string_lossy().into_owned())
    }
    pub fn is_built(&self, sha: &str) -> bool {
        self.release(sha).join(BUILT_MARKER).is_file()
    }
}

/// Points `current` at `target` atomically: a new symlink under a temporary
/// name renamed over the old one (rename(2) replaces atomically), then the
/// directory fsync'd.
pub fn switch(paths: &Paths, target: &Path) -> std::io::Result<()> {
    let tmp = paths
        .service_dir
        .join(format!(".current.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    fs::rename(&tmp, paths.current())?;
    fs::File::open(&paths.service_dir)?.sync_all()
}

/// Marks a release built (durably).
pub fn mark_built(dir: &Path, sha: &str) -> std::io::Result<()> {
    crate::state::write_atomic(&dir.join(BUILT_MARKER), format!("{sha}\n").as_bytes())
}

/// Removes releases beyond `keep`, oldest first by modification time,
/// never one in `protect` (the live one and the one before it).
pub fn prune(paths: &Paths, keep: usize, protect: &[&str]) -> Vec<String> {
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

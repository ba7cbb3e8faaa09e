//! The build step: export the service's tree at the deployed commit into
//! its release directory (off the async workers), provide its runtime's
//! dependencies (cached or run), run its build command, mark it built.

use std::error::Error as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::git::Repo;
use crate::plan::Command;
use crate::process::{self, Run};
use crate::release::{self, Paths};

use super::{Act, ActionError, blocking, log_path};

/// Builds the action's service into `release` (nothing when a release of
/// the commit is built already).
pub(super) async fn build(
    act: &Act<'_>,
    release: &str,
    command: Option<&Command>,
) -> Result<Option<String>, ActionError> {
    let (ctx, to_sha, apply_id) = (act.ctx, act.to_sha, act.apply_id);
    let svc = act.configured("a build")?;
    let paths = Paths::new(&ctx.env.root, &svc.name);
    if paths.is_built(to_sha) {
        return Ok(Some("already built".to_owned()));
    }
    let deps_id = format!("deps:{}", svc.name);
    build_release(Build {
        config: &ctx.config,
        env: &ctx.env,
        repo_dir: &ctx.repo_dir,
        service: svc,
        sha: to_sha,
        release,
        command,
        log: act.log(),
        deps_log: log_path(ctx, apply_id, &deps_id),
        version_log: log_path(ctx, apply_id, &format!("{deps_id}-version")),
    })
    .await
    .map(Some)
}

/// One build of a service at a commit: what [`build_release`] needs, with
/// no apply around it (the performer above, and the artifact builder on a
/// controller or in CI, [`crate::builder`]).
pub(crate) struct Build<'a> {
    pub(crate) config: &'a crate::config::Config,
    /// Its `root` is where the release and the dependency cache are.
    pub(crate) env: &'a crate::config::Environment,
    pub(crate) repo_dir: &'a Path,
    pub(crate) service: &'a crate::config::Service,
    pub(crate) sha: &'a str,
    /// The release directory (`{root}/{service}/releases/{sha}`).
    pub(crate) release: &'a str,
    /// The build command, placeholders resolved.
    pub(crate) command: Option<&'a Command>,
    /// Log files: the build command's, the dependency step's and its
    /// version command's.
    pub(crate) log: PathBuf,
    pub(crate) deps_log: PathBuf,
    pub(crate) version_log: PathBuf,
}

/// Exports the service's tree at the commit into the release directory,
/// provides its dependencies (cached or run), runs its build command and
/// marks it built. Returns what it did, for the journal.
pub(crate) async fn build_release(b: Build<'_>) -> Result<String, ActionError> {
    let svc = b.service;
    let dir = PathBuf::from(b.release);
    let files = export(b.repo_dir, b.sha, &svc.path, &dir).await?;
    // The cache key's git reads, storing and restoring run on the
    // blocking pool.
    let at = crate::deps::Provision {
        config: b.config,
        env: b.env,
        log: b.deps_log,
        version_log: b.version_log,
    };
    let provision = crate::deps::provision(at, b.repo_dir, svc, b.sha, &dir).await;
    let deps = match provision {
        Some(p) => Some(
            crate::deps::provide(p.map_err(|error| ActionError::Deps { error })?)
                .await
                .map_err(|error| ActionError::Deps { error })?,
        ),
        None => None,
    };
    if let Some(c) = b.command {
        process::run(Run {
            argv: &c.argv,
            dir: Some(&dir),
            env: &crate::process::command_env(b.env, Some(&svc.name), Some(b.release)),
            timeout: Duration::from_secs(c.timeout_secs),
            log: &b.log,
        })
        .await
        .map_err(|source| ActionError::Command {
            what: "the build command",
            source: Box::new(source),
        })?;
    }
    let sha = b.sha.to_owned();
    blocking(move || {
        release::mark_built(&dir, &sha).map_err(ActionError::io("marking built", &dir))
    })
    .await?;
    Ok(match deps {
        Some(d) => format!("{files} files; {d}"),
        None => format!("{files} files"),
    })
}

/// Exports `subdir` of the tree at `sha` into the release directory `dir`
/// (a leftover of an interrupted build is removed first), on the blocking
/// pool: a big tree takes seconds of git and file-system work. Returns the
/// number of files.
async fn export(repo_dir: &Path, sha: &str, subdir: &str, dir: &Path) -> Result<u64, ActionError> {
    let (repo_dir, sha, subdir, dir) = (
        repo_dir.to_owned(),
        sha.to_owned(),
        subdir.to_owned(),
        dir.to_owned(),
    );
    blocking(move || {
        if dir.exists() {
            // An interrupted build: start again from a fresh export. The
            // leftover is renamed aside first: a build command of a killed
            // apply may still be writing into it (its process group
            // outlives a SIGKILL of moorline), and removing a directory
            // being written to fails ("Directory not empty"). Should the
            // removal still fail, pruning removes the hidden directory later.
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let aside = dir.with_file_name(format!(".{name}.interrupted-{}", std::process::id()));
            std::fs::rename(&dir, &aside).map_err(ActionError::io("moving aside", &dir))?;
            let _ = std::fs::remove_dir_all(&aside);
        }
        let failed = |message: String| ActionError::Export {
            dir: dir.display().to_string(),
            message,
        };
        let repo = Repo::discover(&repo_dir).map_err(|e| failed(e.to_string()))?;
        repo.export(&sha, &subdir, &dir).map_err(|e| {
            failed(format!(
                "{e}: {}",
                e.source().map(ToString::to_string).unwrap_or_default()
            ))
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    /// A repository whose `svc/` holds `files` files; returns its HEAD.
    fn big_repo(dir: &std::path::Path, files: usize) -> String {
        let repo = git2::Repository::init(dir).unwrap();
        let svc = dir.join("svc");
        for d in 0..files / 100 {
            let sub = svc.join(format!("d{d}"));
            std::fs::create_dir_all(&sub).unwrap();
            for f in 0..100 {
                std::fs::write(
                    sub.join(format!("f{f}.txt")),
                    format!("{d}/{f}\n").repeat(64),
                )
                .unwrap();
            }
        }
        let mut index = repo.index().unwrap();
        index
            .add_all(["svc"], git2::IndexAddOption::DEFAULT, None)
            .unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let me = git2::Signature::now("t", "t@example.org").unwrap();
        repo.commit(Some("HEAD"), &me, &me, "big", &tree, &[])
            .unwrap()
            .to_string()
    }

    /// Builds export big trees while a timer runs on the same 2-worker
    /// runtime the commands use (readiness deadlines and `JobRemoved` waits
    /// are such timers and wake-ups): the timer stays on time, because the
    /// exports run on the blocking pool. Run inline on the workers, the
    /// exports held both of them and the timer was late by about one
    /// export.
    #[test]
    fn builds_do_not_hold_up_timers_on_the_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let sha = big_repo(&dir.path().join("repo"), 1500);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let stop = Arc::new(AtomicBool::new(false));
            let ticking = Arc::clone(&stop);
            let ticker = tokio::spawn(async move {
                let mut worst = Duration::ZERO;
                let mut last = Instant::now();
                while !ticking.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    worst = worst.max(last.elapsed());
                    last = Instant::now();
                }
                worst
            });
            let t = Instant::now();
            let mut builds = Vec::new();
            for i in 0..4 {
                let (repo, sha, dest) = (
                    dir.path().join("repo"),
                    sha.clone(),
                    dir.path().join(format!("release-{i}")),
                );
                builds.push(tokio::spawn(async move {
                    super::export(&repo, &sha, "svc", &dest).await
                }));
            }
            for b in builds {
                assert_eq!(b.await.unwrap().ok(), Some(1500));
            }
            let took = t.elapsed();
            stop.store(true, Ordering::SeqCst);
            let worst = ticker.await.unwrap();
            assert!(
                worst < took / 4,
                "a 5 ms timer was late by up to {worst:?} while builds ran for {took:?}"
            );
        });
    }
}

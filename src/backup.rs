//! Database backups: the environment's `backup.run` command writes a file
//! (its path is `{backup}`), moorline records its size and SHA-256 in the
//! state, keeps `keep` of them (never the one the live release depends on)
//! and restores one with `backup.restore`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use miette::Diagnostic;

use crate::config::Backup;
use crate::process::{self, Run, RunError};
use crate::state::State;
use crate::template::{self, Vars};

/// Why a backup could not be taken or restored. Each message carries its
/// cause, since it is shown as one line (in the journal, after `backup:`).
#[derive(Debug, thiserror::Error, Diagnostic)]
pub(crate) enum BackupError {
    #[error("no backup block in this environment")]
    #[diagnostic(code(moorline::backup::not_configured))]
    NotConfigured,
    #[error("creating {path}: {error}")]
    #[diagnostic(code(moorline::backup::create))]
    Create { path: String, error: std::io::Error },
    #[error("the backup failed, so nothing was migrated: {error}")]
    #[diagnostic(code(moorline::backup::command))]
    Command { error: Box<RunError> },
    #[error("the backup command succeeded but left no readable file at {path}: {error}")]
    #[diagnostic(code(moorline::backup::unreadable))]
    Unreadable { path: String, error: std::io::Error },
    #[error(
        "the backup command succeeded but left {path} empty: it must write the backup to {{backup}}"
    )]
    #[diagnostic(code(moorline::backup::empty))]
    Empty { path: String },
    #[error("making {path} private: {error}")]
    #[diagnostic(code(moorline::backup::private))]
    Private { path: String, error: std::io::Error },
    /// A failure after the file was created: the file is gone.
    #[error("{error} (the incomplete file was removed)")]
    #[diagnostic(code(moorline::backup::discarded))]
    Discarded { error: Box<BackupError> },
    /// A failure after the file was created, and the file stays.
    #[error("{error}; removing {path} failed too: {cleanup}")]
    #[diagnostic(code(moorline::backup::not_discarded))]
    NotDiscarded {
        error: Box<BackupError>,
        path: String,
        cleanup: std::io::Error,
    },
    #[error("cannot read {path}: {error}")]
    #[diagnostic(code(moorline::backup::read))]
    Read { path: String, error: std::io::Error },
    #[error("{path} does not match the checksum recorded when it was taken")]
    #[diagnostic(code(moorline::backup::checksum))]
    Checksum { path: String },
    #[error("{error}")]
    #[diagnostic(code(moorline::backup::restore))]
    Restore { error: Box<RunError> },
    /// The blocking task that hashed the file panicked.
    #[error("{error}")]
    #[diagnostic(code(moorline::backup::task))]
    Task { error: tokio::task::JoinError },
}

pub(crate) struct Taken {
    pub(crate) id: String,
    pub(crate) path: String,
    pub(crate) size: u64,
    pub(crate) sha256: String,
}

/// Where an environment's backups go.
pub(crate) fn dir(state_dir: &Path, b: &Backup) -> PathBuf {
    b.dir
        .as_ref()
        .map_or_else(|| state_dir.join("backups"), PathBuf::from)
}

fn file_sha256(path: &Path) -> std::io::Result<(u64, String)> {
    crate::files::sha256_file(path).map(|(sha, size)| (size, sha))
}

/// Removes the empty `*.backup` files of `env`'s backup directory and
/// returns them. [`take`] creates the file empty before the command runs
/// and removes it when the backup fails, but an apply killed meanwhile
/// leaves it behind; an empty file is never a backup (`take` refuses
/// one). Called under the state lock when an interrupted apply is resumed
/// or rolled back, so no backup is being taken.
pub(crate) fn remove_empty(state_dir: &Path, env: &crate::config::Environment) -> Vec<PathBuf> {
    let Some(b) = &env.backup else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(dir(state_dir, b)) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "backup")
                && std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file() && m.len() == 0)
        })
        .filter(|p| std::fs::remove_file(p).is_ok())
        .collect()
}

/// Creates an empty file only its owner may read (fails if it exists).
fn private_new(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map(drop)
}

/// Sets a backup file to 0600 if it is more open.
fn tighten_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// Removes what a failed backup left at `path` (an empty or partial file
/// is no backup) and returns the error, saying so if it stays.
fn discard(path: &Path, error: BackupError) -> BackupError {
    match std::fs::remove_file(path) {
        Ok(()) => BackupError::Discarded {
            error: Box::new(error),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => error,
        Err(cleanup) => BackupError::NotDiscarded {
            error: Box::new(error),
            path: path.display().to_string(),
            cleanup,
        },
    }
}

/// Runs the backup command and checks that it left a non-empty file,
/// private (0600) like its directory (0700). On any failure the file is
/// removed: no empty or partial backup is left behind.
pub(crate) async fn take(
    project: &str,
    env: &crate::config::Environment,
    state_dir: &Path,
    b: &Backup,
    log_id: &str,
) -> Result<Taken, BackupError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
        .to_string()
        .replace([':', '-'], "")
        .replace('T', "-")
        .trim_end_matches('Z')
        .to_owned();
    let id = format!("{project}-{}-{stamp}-{:06}", env.name, now.subsec_micros());
    let dir = dir(state_dir, b);
    crate::files::private_dir(&dir).map_err(|error| BackupError::Create {
        path: dir.display().to_string(),
        error,
    })?;
    let path = dir.join(format!("{id}.backup"));
    let path_s = path.display().to_string();
    // Created empty and private before the command runs: a command that
    // writes it (`> {backup}`, `pg_dump -f`) keeps the mode.
    private_new(&path).map_err(|error| BackupError::Create {
        path: path_s.clone(),
        error,
    })?;
    let vars = Vars {
        root: Some(&env.root),
        backup: Some(&path_s),
        ..Vars::default()
    };
    let argv: Vec<String> = template::render_all(&b.run.argv, &vars);
    let checked = async {
        process::run(Run {
            argv: &argv,
            dir: None,
            env: &crate::process::command_env(env, None, None),
            timeout: b.run.timeout,
            log: &state_dir.join("logs").join(log_id).join("backup.log"),
        })
        .await
        .map_err(|e| BackupError::Command { error: Box::new(e) })?;
        // Reading the whole file (gigabytes, for a real database) runs on
        // the blocking pool.
        let (path, path_s) = (path.clone(), path_s.clone());
        crate::blocking::run(
            move || {
                let (size, sha256) =
                    file_sha256(&path).map_err(|error| BackupError::Unreadable {
                        path: path_s.clone(),
                        error,
                    })?;
                if size == 0 {
                    return Err(BackupError::Empty { path: path_s });
                }
                // A command that replaced the file (rename, `cp`) may have
                // left it readable by others.
                tighten_file(&path).map_err(|error| BackupError::Private {
                    path: path_s,
                    error,
                })?;
                Ok((size, sha256))
            },
            |error| BackupError::Task { error },
        )
        .await
    };
    let (size, sha256) = match checked.await {
        Ok(v) => v,
        Err(e) => return Err(discard(&path, e)),
    };
    Ok(Taken {
        id,
        path: path_s,
        size,
        sha256,
    })
}

/// Runs the restore command on a backup file after checking its checksum.
pub(crate) async fn restore(
    env: &crate::config::Environment,
    b: &Backup,
    state_dir: &Path,
    record: &crate::state::BackupRecord,
) -> Result<(), BackupError> {
    let path = PathBuf::from(&record.path);
    let shown = record.path.clone();
    let (_, sha) = crate::blocking::run(
        move || file_sha256(&path).map_err(|error| BackupError::Read { path: shown, error }),
        |error| BackupError::Task { error },
    )
    .await?;
    if sha != record.sha256 {
        return Err(BackupError::Checksum {
            path: record.path.clone(),
        });
    }
    let vars = Vars {
        root: Some(&env.root),
        backup: Some(&record.path),
        ..Vars::default()
    };
    let cenv = crate::process::command_env(env, None, None);
    for cmd in std::iter::once(&b.restore).chain(b.resolve.as_ref()) {
        let argv: Vec<String> = template::render_all(&cmd.argv, &vars);
        process::run(Run {
            argv: &argv,
            dir: None,
            env: &cenv,
            timeout: if cmd.timeout.is_zero() {
                Duration::from_mins(15)
            } else {
                cmd.timeout
            },
            log: &state_dir
                .join("logs")
                .join(format!("restore-{}.log", record.id)),
        })
        .await
        .map_err(|e| BackupError::Restore { error: Box::new(e) })?;
    }
    Ok(())
}

/// Records in the host state that the database was restored from
/// `record`, so the next deploy migrates again. Without a state nothing is
/// deployed, and nothing is recorded.
pub(crate) fn record_restore(
    state_dir: &Path,
    project: &str,
    env: &str,
    record: &crate::state::BackupRecord,
) -> Result<(), crate::state::StateError> {
    let Some(mut st) = crate::state::load(state_dir, project, env)?.state else {
        return Ok(());
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    st.mark_restored(record, now);
    crate::state::save(state_dir, &st)
}

/// Keeps the newest `keep` backups, and always the one the last apply took;
/// deletes the files of the others.
pub(crate) fn retain(st: &mut State, keep: usize) {
    let pinned = st.apply_backup().map(|b| b.id.clone());
    st.backups.sort_by_key(|b| (b.taken_at, b.id.clone()));
    let excess = st.backups.len().saturating_sub(keep);
    let mut removed = 0;
    st.backups.retain(|b| {
        if removed < excess && pinned.as_deref() != Some(b.id.as_str()) {
            removed += 1;
            let _ = std::fs::remove_file(&b.path);
            false
        } else {
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(run: &str) -> crate::config::Config {
        let text = format!(
            r#"project "p"
environment "e" {{
    branch "main"
    root "/srv/p"
    backup {{
        run "sh" "-c" "{run}" "sh" "{{backup}}"
        restore "true"
    }}
}}
phase "core"
runtime "r"
service "s" {{ runtime "r"; port 4000; phase "core" }}
"#
        );
        crate::config::parse("test.kdl", &text).unwrap()
    }

    #[test]
    fn first_deploy_is_skip_unless_the_block_says_backup() {
        use crate::config::FirstDeploy;
        let with = |line: &str| {
            crate::config::parse(
                "test.kdl",
                &format!(
                    "project \"p\"\nenvironment \"e\" {{\n branch \"main\"\n root \"/srv/p\"\n backup {{\n  run \"true\"\n  restore \"true\"\n  {line}\n }}\n}}\nphase \"core\"\n"
                ),
            )
        };
        let first = |line: &str| {
            with(line)
                .unwrap()
                .environment("e")
                .unwrap()
                .backup
                .as_ref()
                .unwrap()
                .first_deploy
        };
        assert_eq!(first(""), FirstDeploy::Skip);
        assert_eq!(first("first-deploy \"skip\""), FirstDeploy::Skip);
        assert_eq!(first("first-deploy \"backup\""), FirstDeploy::Backup);
        let err = with("first-deploy \"bakup\"").unwrap_err();
        let shown = format!("{:?}", miette::Report::new(err));
        assert!(
            shown.contains("`bakup` is not a first-deploy choice"),
            "{shown}"
        );
        assert!(shown.contains("did you mean \"backup\"?"), "{shown}");
        assert!(shown.contains("invalid_value"), "{shown}");
    }

    fn files(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn a_failed_backup_leaves_no_file() {
        for (run, error) in [
            // Fails before writing anything (the database does not exist).
            ("exit 3", "the backup failed"),
            // Writes part of a backup, then fails.
            ("echo partial > $1; exit 1", "the backup failed"),
            // Succeeds without writing the file.
            ("true", "empty"),
            // Removes the file it was given.
            ("rm $1", "no readable file"),
        ] {
            let c = config(run);
            let env = c.environment("e").unwrap();
            let b = env.backup.as_ref().unwrap();
            let state = tempfile::tempdir().unwrap();
            let Err(e) = take("p", env, state.path(), b, "t").await else {
                panic!("`{run}` must fail");
            };
            let e = e.to_string();
            assert!(e.contains(error), "{run}: {e}");
            assert_eq!(
                files(&state.path().join("backups")),
                Vec::<String>::new(),
                "{run}"
            );
        }
        // A good one is kept, private.
        let c = config("echo dump > $1");
        let env = c.environment("e").unwrap();
        let state = tempfile::tempdir().unwrap();
        let taken = take("p", env, state.path(), env.backup.as_ref().unwrap(), "t")
            .await
            .unwrap();
        assert_eq!(taken.size, 5);
        assert_eq!(files(&state.path().join("backups")).len(), 1);
    }
}

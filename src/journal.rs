//! The write-ahead journal of one apply: JSON lines in
//! `{state}/journal.jsonl`, each appended and fsync'd before moorline relies
//! on it (intent before the act, outcome after). An apply whose journal has
//! no `end` record is resumable; a finished journal moves to `history/`.
//! Write errors are returned, never swallowed.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use miette::Diagnostic;
use serde::{Deserialize, Serialize};

use crate::plan::Plan;

pub const JOURNAL_FILE: &str = "journal.jsonl";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Record {
    /// The plan being executed, in full, so a resume runs exactly it.
    Begin {
        apply_id: String,
        plan: Box<Plan>,
    },
    Started {
        action: String,
        /// Milliseconds since this process began executing the plan
        /// (monotonic clock; a resume starts again from 0). Absent in
        /// journals written before it existed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_ms: Option<u64>,
    },
    Succeeded {
        action: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
        /// Same clock as `Started::at_ms`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_ms: Option<u64>,
    },
    Failed {
        action: String,
        error: String,
    },
    /// Intent: `service`'s `current` link goes from `from` to `to`.
    Switch {
        service: String,
        from: Option<String>,
        to: String,
    },
    /// Intent: a unit file is replaced; its previous text is saved at `saved`
    /// (`None`: there was none).
    UnitReplace {
        service: String,
        unit: String,
        saved: Option<String>,
    },
    /// A backup file was taken.
    Backup {
        id: String,
        path: String,
        size: u64,
        sha256: String,
    },
    RollbackBegin {
        reason: String,
    },
    RolledBack {
        service: String,
    },
    End {
        outcome: String,
    },
}

#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum JournalError {
    #[error("cannot write the journal {path}")]
    #[diagnostic(
        code(moorline::journal::write),
        help(
            "moorline stops rather than act without a durable record; check free space and permissions of the state directory"
        )
    )]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the journal {path}")]
    #[diagnostic(
        code(moorline::journal::read),
        help("check the permissions of the state directory")
    )]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the journal {path} has no beginning")]
    #[diagnostic(
        code(moorline::journal::corrupt),
        help("move it away to give up on the interrupted apply, then check `moorline status`")
    )]
    NoBegin { path: String },
}

/// `r` with its free text (errors, notes, reasons) redacted
/// ([`crate::secrets`]). The other fields (the plan, ids, paths) are read
/// back by resume and rollback and must stay exact; the plan carries no
/// secret values (they are redacted when it is made).
fn redacted(r: &Record) -> std::borrow::Cow<'_, Record> {
    use crate::secrets::redact;
    use std::borrow::Cow;
    match r {
        Record::Succeeded {
            action,
            note: Some(note),
            at_ms,
        } => Cow::Owned(Record::Succeeded {
            action: action.clone(),
            note: Some(redact(note)),
            at_ms: *at_ms,
        }),
        Record::Failed { action, error } => Cow::Owned(Record::Failed {
            action: action.clone(),
            error: redact(error),
        }),
        Record::RollbackBegin { reason } => Cow::Owned(Record::RollbackBegin {
            reason: redact(reason),
        }),
        _ => Cow::Borrowed(r),
    }
}

/// An open journal, appending.
pub struct Journal {
    path: PathBuf,
    file: File,
}

impl Journal {
    /// Starts a new journal (fails if one exists: an apply is unfinished).
    pub fn create(dir: &Path, apply_id: &str, plan: &Plan) -> Result<Self, JournalError> {
        let path = dir.join(JOURNAL_FILE);
        let err = |source| JournalError::Write {
            path: path.display().to_string(),
            source,
        };
        crate::state::tighten(dir).map_err(err)?;
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(err)?;
        // The new file's directory entry must be durable too.
        File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
        let mut j = Self { path, file };
        j.append(&Record::Begin {
            apply_id: apply_id.to_owned(),
            plan: Box::new(plan.clone()),
        })?;
        Ok(j)
    }

    /// Reopens an existing journal for appending (resume).
    pub fn reopen(dir: &Path) -> Result<Self, JournalError> {
        let path = dir.join(JOURNAL_FILE);
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|source| JournalError::Write {
                path: path.display().to_string(),
                source,
            })?;
        Ok(Self { path, file })
    }

    /// Appends one record and fsyncs it.
    pub fn append(&mut self, r: &Record) -> Result<(), JournalError> {
        let mut line = serde_json::to_vec(&redacted(r)).map_err(|e| JournalError::Write {
            path: self.path.display().to_string(),
            source: std::io::Error::other(e),
        })?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .and_then(|()| self.file.sync_data())
            .map_err(|source| JournalError::Write {
                path: self.path.display().to_string(),
                source,
            })?;
        crash_point();
        Ok(())
    }

    /// Ends the journal and moves it to `history/{apply_id}.jsonl`.
    pub fn finish(mut self, outcome: &str, apply_id: &str) -> Result<(), JournalError> {
        self.append(&Record::End {
            outcome: outcome.to_owned(),
        })?;
        let dir = self.path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let history = dir.join("history");
        let err = |source| JournalError::Write {
            path: history.display().to_string(),
            source,
        };
        crate::state::private_dir(&history).map_err(err)?;
        fs::rename(&self.path, history.join(format!("{apply_id}.jsonl"))).map_err(err)?;
        File::open(&dir).and_then(|d| d.sync_all()).map_err(err)
    }
}

/// A journal read back.
#[derive(Debug, Clone)]
pub struct Replay {
    pub apply_id: String,
    pub plan: Plan,
    pub records: Vec<Record>,
}

impl Replay {
    pub fn ended(&self) -> bool {
        self.records.iter().any(|r| matches!(r, Record::End { .. }))
    }

    pub fn succeeded(&self, action: &str) -> bool {
        self.records
            .iter()
            .any(|r| matches!(r, Record::Succeeded { action: a, .. } if a == action))
    }

    pub fn rollback_begun(&self) -> bool {
        self.records
            .iter()
            .any(|r| matches!(r, Record::RollbackBegin { .. }))
    }
}

/// Reads the current journal, if any. A torn last line (a crash mid-write)
/// is ignored: its record was never relied on.
pub fn read(dir: &Path) -> Result<Option<Replay>, JournalError> {
    let path = dir.join(JOURNAL_FILE);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(JournalError::Read {
                path: path.display().to_string(),
                source,
            });
        }
    };
    let mut begin = None;
    let mut records = Vec::new();
    for line in BufReader::new(file).lines() {
        let line = line.map_err(|source| JournalError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let Ok(r) = serde_json::from_str::<Record>(&line) else {
            continue;
        };
        if let Record::Begin { apply_id, plan } = &r {
            begin = Some((apply_id.clone(), (**plan).clone()));
        }
        records.push(r);
    }
    let Some((apply_id, plan)) = begin else {
        return Err(JournalError::NoBegin {
            path: path.display().to_string(),
        });
    };
    Ok(Some(Replay {
        apply_id,
        plan,
        records,
    }))
}

/// Fault injection for the crash tests: with `MOORLINE_TEST_CRASH_AFTER=N`
/// the process sends itself SIGKILL (no destructors, no flushing, nothing
/// of its own runs) right after the Nth journal record of this process is
/// durable; if that fails, it aborts.
///
/// Only in a build with the `crash-hook` feature, which `cargo test` turns
/// on (the package is its own dev-dependency with that feature, see
/// Cargo.toml) and `cargo build`/`cargo install` do not: a release binary
/// ignores the variable.
#[cfg(feature = "crash-hook")]
fn crash_point() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static WRITTEN: AtomicUsize = AtomicUsize::new(0);
    let n = WRITTEN.fetch_add(1, Ordering::SeqCst) + 1;
    if let Some(limit) = std::env::var("MOORLINE_TEST_CRASH_AFTER")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        && n >= limit
    {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &std::process::id().to_string()])
            .status();
        std::thread::sleep(std::time::Duration::from_secs(5));
        std::process::abort();
    }
}

/// Without the `crash-hook` feature there is no fault injection.
#[cfg(not(feature = "crash-hook"))]
fn crash_point() {}

#[cfg(test)]
mod tests {
    use super::Record;

    #[test]
    fn records_without_timestamps_still_parse() {
        let old = r#"{"event":"succeeded","action":"build:a","note":"3 files"}"#;
        let r: Record = serde_json::from_str(old).unwrap();
        assert_eq!(
            r,
            Record::Succeeded {
                action: "build:a".to_owned(),
                note: Some("3 files".to_owned()),
                at_ms: None,
            }
        );
        let new = Record::Started {
            action: "build:a".to_owned(),
            at_ms: Some(12),
        };
        let line = serde_json::to_string(&new).unwrap();
        assert_eq!(line, r#"{"event":"started","action":"build:a","at_ms":12}"#);
        assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), new);
    }
}

//! The write-ahead journal of one apply: JSON lines in
//! `{state}/journal.jsonl`, each appended and fsync'd before moorline relies
//! on it (intent before the act, outcome after). An apply whose journal has
//! no `end` record is resumable; a finished journal moves to `history/`.
//! Write errors are returned, never swallowed. Reading tolerates exactly one
//! kind of damage, a torn last line (a write cut short); a journal with no
//! complete record is torn as a whole and archived; anything else is
//! `journal::corrupt`, naming the line.

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use miette::Diagnostic;
use serde::{Deserialize, Serialize};

use crate::plan::Plan;

pub(crate) mod lines;

pub(crate) const JOURNAL_FILE: &str = "journal.jsonl";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub(crate) enum Record {
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
    /// A command of `action` started in process group `group.pgid`
    /// (written as soon as it runs): what `apply --resume` and `rollback`
    /// stop should moorline be killed while it runs
    /// ([`crate::process::orphans`]).
    Spawned {
        action: String,
        #[serde(flatten)]
        group: crate::process::orphans::Group,
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
    /// The apply failed (or `rollback` was asked for): what follows is the
    /// execution of `plan`, its rollback plan. Journals written before the
    /// plan was recorded have none; it is then built again from the
    /// records before this one.
    RollbackBegin {
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        plan: Option<Box<Plan>>,
    },
    /// Written by rollbacks before they were plans; read, no longer written.
    RolledBack {
        service: String,
    },
    End {
        outcome: JournalOutcome,
    },
}

/// How an apply ended, as its journal's `end` record says (spelled as
/// before it was an enum, so old journals read the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum JournalOutcome {
    /// Every action succeeded (for a unit operation too).
    Succeeded,
    /// A unit operation (start, stop, enable, disable) failed.
    Failed,
    /// An action failed before anything live changed.
    FailedUntouched,
    /// An action failed and the automatic rollback undid the apply.
    RolledBack,
    /// A failed apply left as is, by versions before `rollback` could undo
    /// an unfinished one; read, no longer written.
    FailedKept,
}

#[derive(Debug, thiserror::Error, Diagnostic)]
pub(crate) enum JournalError {
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
    /// A record that is not a torn last line cannot be read: something
    /// other than moorline changed the file, or the disk is failing.
    #[error("the journal {path} is corrupt at line {line}: {what}")]
    #[diagnostic(
        code(moorline::journal::corrupt),
        help(
            "only an unfinished last line (a write cut short) is tolerated; this record was complete, so moorline cannot tell what the interrupted apply did. Keep the file for inspection: move it into history/ beside it, then check `moorline status` and the services before the next apply"
        )
    )]
    Corrupt {
        path: String,
        /// 1-based.
        line: usize,
        what: String,
        #[source]
        source: Option<serde_json::Error>,
    },
    /// Reading or writing the journal on the blocking pool did not finish
    /// (the task panicked, or the runtime is shutting down): a record may
    /// not be durable.
    #[error("reading or writing the journal {path} did not finish")]
    #[diagnostic(
        code(moorline::journal::task),
        help(
            "moorline stops rather than act without a durable record; check `moorline status`, then `moorline apply --resume` or `moorline rollback`"
        )
    )]
    Task {
        path: String,
        #[source]
        source: tokio::task::JoinError,
    },
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
        Record::RollbackBegin { reason, plan } => Cow::Owned(Record::RollbackBegin {
            reason: redact(reason),
            plan: plan.clone(),
        }),
        _ => Cow::Borrowed(r),
    }
}

/// What the apply of `plan` changed, from its `records` (those after a
/// `rollback-begin`, if any, belong to the rollback and are left out): the
/// input of its undo ([`crate::plan::undo::build`]). What a record's
/// action did is read from the plan, by id.
pub(crate) fn effects(plan: &Plan, records: &[Record]) -> crate::plan::undo::Effects {
    use crate::plan::ActionKind;
    let mut e = crate::plan::undo::Effects::default();
    for r in records
        .iter()
        .take_while(|r| !matches!(r, Record::RollbackBegin { .. }))
    {
        match r {
            Record::Switch { service, from, .. } => {
                e.switched.entry(service.clone()).or_insert(from.clone());
            }
            Record::UnitReplace {
                service,
                unit,
                saved,
            } => {
                e.replaced
                    .entry(unit.clone())
                    .or_insert((service.clone(), saved.clone()));
            }
            Record::Started { action, .. } => {
                if let Some(a) = plan.action(action)
                    && matches!(a.kind(), ActionKind::Restart | ActionKind::SlotStart)
                    && let Some(s) = &a.service
                {
                    e.restarted.insert(s.clone());
                }
            }
            Record::Succeeded { action, .. } => match plan.action(action) {
                Some(a) if a.kind() == ActionKind::ReloadProxy => e.proxy_reloaded = true,
                Some(a) if a.kind() == ActionKind::Migrate => {
                    e.migrated.extend(a.service.clone());
                }
                _ => {}
            },
            _ => {}
        }
    }
    e
}

/// An open journal, appending.
pub(crate) struct Journal {
    lines: lines::Lines,
}

impl Journal {
    /// Starts a new journal (fails if one exists: an apply is unfinished).
    pub(crate) fn create(dir: &Path, apply_id: &str, plan: &Plan) -> Result<Self, JournalError> {
        let err = |source| JournalError::Write {
            path: dir.join(JOURNAL_FILE).display().to_string(),
            source,
        };
        crate::files::tighten(dir).map_err(err)?;
        let lines = lines::Lines::create(dir, JOURNAL_FILE).map_err(err)?;
        Self { lines }.begin(apply_id, plan)
    }

    /// Writes the begin record. On failure (a full disk) the file is
    /// removed, so the next command finds no journal rather than a torn
    /// one: nothing acted yet. Should the removal fail too, the next
    /// command finds a journal without a complete begin record and
    /// archives it (`Current::Torn`).
    fn begin(mut self, apply_id: &str, plan: &Plan) -> Result<Self, JournalError> {
        match self.append(&Record::Begin {
            apply_id: apply_id.to_owned(),
            plan: Box::new(plan.clone()),
        }) {
            Ok(()) => Ok(self),
            Err(e) => {
                self.lines.discard();
                Err(e)
            }
        }
    }

    /// Reopens an existing journal for appending (resume, rollback). A torn
    /// last line (see [`read`]) is cut off first, so the next record starts
    /// on a line of its own.
    pub(crate) fn reopen(dir: &Path) -> Result<Self, JournalError> {
        let path = dir.join(JOURNAL_FILE);
        let shown = path.display().to_string();
        let lines = lines::Lines::reopen(path).map_err(|source| JournalError::Write {
            path: shown,
            source,
        })?;
        Ok(Self { lines })
    }

    /// The journal file.
    pub(crate) fn path(&self) -> &Path {
        self.lines.path()
    }

    fn write_error(&self, source: std::io::Error) -> JournalError {
        JournalError::Write {
            path: self.lines.path().display().to_string(),
            source,
        }
    }

    /// Appends one record and fsyncs it.
    pub(crate) fn append(&mut self, r: &Record) -> Result<(), JournalError> {
        let n = crash::next_record();
        crash::before(n);
        let line = serde_json::to_vec(&redacted(r))
            .map_err(|e| self.write_error(std::io::Error::other(e)))?;
        self.lines
            .append(line)
            .map_err(|source| self.write_error(source))?;
        crash::after(n, r);
        Ok(())
    }

    /// Ends the journal and moves it to `history/{apply_id}.jsonl`.
    pub(crate) fn finish(
        mut self,
        outcome: JournalOutcome,
        apply_id: &str,
    ) -> Result<(), JournalError> {
        self.append(&Record::End { outcome })?;
        let history = self.lines.history_dir().display().to_string();
        self.lines
            .finish(apply_id)
            .map_err(|source| JournalError::Write {
                path: history,
                source,
            })
    }
}

/// A journal read back.
#[derive(Debug, Clone)]
pub(crate) struct Replay {
    pub(crate) apply_id: String,
    pub(crate) plan: Plan,
    pub(crate) records: Vec<Record>,
}

impl Replay {
    pub(crate) fn ended(&self) -> bool {
        self.records.iter().any(|r| matches!(r, Record::End { .. }))
    }

    /// The process groups of commands this apply started, by action.
    pub(crate) fn spawned(&self) -> Vec<(String, crate::process::orphans::Group)> {
        self.records
            .iter()
            .filter_map(|r| match r {
                Record::Spawned { action, group } => Some((action.clone(), group.clone())),
                _ => None,
            })
            .collect()
    }
}

/// What `journal.jsonl` holds.
#[derive(Debug, Clone)]
pub(crate) enum Current {
    /// No journal: no apply is unfinished.
    Absent,
    /// A file without one complete record: empty, or its begin record cut
    /// short (a full disk). The begin record is durable before anything
    /// acts, so nothing was done under it: [`archive_torn`] and go on.
    Torn,
    Begun(Box<Replay>),
}

impl Current {
    /// The records of a begun journal (none otherwise).
    pub(crate) fn records(self) -> Vec<Record> {
        match self {
            Self::Begun(r) => r.records,
            Self::Absent | Self::Torn => Vec::new(),
        }
    }
}

/// Reads the current journal. A torn last line (no newline: a write cut
/// short by a crash or a full disk) is ignored, whatever it holds: its
/// append never returned, so nothing relied on it. Any other record that
/// cannot be read is [`JournalError::Corrupt`].
pub(crate) fn read(dir: &Path) -> Result<Current, JournalError> {
    let path = dir.join(JOURNAL_FILE);
    match lines::read(&path) {
        Ok(bytes) => parse(&bytes, &path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Current::Absent),
        Err(source) => Err(JournalError::Read {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// The length of `bytes` up to and including its last newline: the
/// complete lines.
/// Parses journal text (`path` names it in errors).
fn parse(bytes: &[u8], path: &Path) -> Result<Current, JournalError> {
    let complete = &bytes[..lines::complete_len(bytes)];
    let Some(lines) = complete.strip_suffix(b"\n") else {
        return Ok(Current::Torn);
    };
    let corrupt = |line: usize, what: &str, source| JournalError::Corrupt {
        path: path.display().to_string(),
        line,
        what: what.to_owned(),
        source,
    };
    let mut begin = None;
    let mut records = Vec::new();
    for (i, line) in lines.split(|b| *b == b'\n').enumerate() {
        let r = serde_json::from_slice::<Record>(line)
            .map_err(|e| corrupt(i + 1, "not a journal record", Some(e)))?;
        match (&r, i) {
            (Record::Begin { apply_id, plan }, 0) => {
                begin = Some((apply_id.clone(), (**plan).clone()));
            }
            (Record::Begin { .. }, _) => {
                return Err(corrupt(i + 1, "a second `begin` record", None));
            }
            (_, 0) => return Err(corrupt(1, "the first record is not `begin`", None)),
            _ => {}
        }
        records.push(r);
    }
    let Some((apply_id, plan)) = begin else {
        return Ok(Current::Torn);
    };
    Ok(Current::Begun(Box::new(Replay {
        apply_id,
        plan,
        records,
    })))
}

/// Moves a torn journal ([`Current::Torn`]) to
/// `history/torn-{time}.jsonl` (readable by its owner only) and returns
/// where it went.
pub(crate) fn archive_torn(dir: &Path) -> Result<PathBuf, JournalError> {
    let history = dir.join("history");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let to = history.join(format!(
        "torn-{}-{:06}.jsonl",
        now.as_secs(),
        now.subsec_micros()
    ));
    let err = |source| JournalError::Write {
        path: to.display().to_string(),
        source,
    };
    crate::files::private_dir(&history).map_err(err)?;
    let from = dir.join(JOURNAL_FILE);
    fs::set_permissions(&from, fs::Permissions::from_mode(0o600)).map_err(err)?;
    fs::rename(&from, &to).map_err(err)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    Ok(to)
}

/// Fault injection for the crash tests. Records are numbered from 1 in
/// the order this process appends them (the begin record of a new apply
/// is 1; a resume or rollback counts its own appends from 1 again).
///
/// - `MOORLINE_TEST_CRASH_AFTER=N`: the process sends itself SIGKILL (no
///   destructors, no flushing, nothing of its own runs) right after record
///   N is durable: the record is there, what follows it is not.
/// - `MOORLINE_TEST_CRASH_BEFORE=N`: SIGKILL just before record N is
///   written: whatever happened since record N-1 happened (an action's
///   effect whose `succeeded` record N would state, a release switch
///   whose intent record is N-1), but record N is not in the journal.
/// - `MOORLINE_TEST_CRASH_AFTER_EVENT=EVENT`: SIGKILL right after the first
///   record of that event (`succeeded`, `switch`, ...) is durable: a kill
///   point that does not move when records are added elsewhere.
///
/// Only in a build with the `crash-hook` feature, which `cargo test` turns
/// on (the package is its own dev-dependency with that feature, see
/// Cargo.toml) and `cargo build`/`cargo install` do not: a release binary
/// ignores both variables.
#[cfg(feature = "crash-hook")]
mod crash {
    use std::sync::atomic::{AtomicUsize, Ordering};

    static RECORDS: AtomicUsize = AtomicUsize::new(0);

    /// The number of the record about to be appended.
    pub(super) fn next_record() -> usize {
        RECORDS.fetch_add(1, Ordering::SeqCst) + 1
    }

    pub(super) fn before(n: usize) {
        if limit("MOORLINE_TEST_CRASH_BEFORE").is_some_and(|l| n >= l) {
            kill();
        }
    }

    pub(super) fn after(n: usize, r: &super::Record) {
        if limit("MOORLINE_TEST_CRASH_AFTER").is_some_and(|l| n >= l) {
            kill();
        }
        if let Ok(want) = std::env::var("MOORLINE_TEST_CRASH_AFTER_EVENT")
            && serde_json::to_value(r)
                .ok()
                .is_some_and(|v| v.get("event").and_then(|e| e.as_str()) == Some(want.as_str()))
        {
            kill();
        }
    }

    fn limit(var: &str) -> Option<usize> {
        std::env::var(var).ok().and_then(|v| v.parse().ok())
    }

    /// SIGKILL to this process; if that fails, abort.
    fn kill() {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &std::process::id().to_string()])
            .status();
        std::thread::sleep(std::time::Duration::from_secs(5));
        std::process::abort();
    }
}

/// Without the `crash-hook` feature there is no fault injection.
#[cfg(not(feature = "crash-hook"))]
mod crash {
    pub(super) fn next_record() -> usize {
        0
    }
    pub(super) fn before(_: usize) {}
    pub(super) fn after(_: usize, _: &super::Record) {}
}

#[cfg(test)]
mod tests {
    use super::{
        Current, JOURNAL_FILE, Journal, JournalError, JournalOutcome, Record, archive_torn, parse,
        read,
    };
    use std::fs::{self, OpenOptions};
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;

    const PLAN: &str = r#"{"format_version":1,"operation":"deploy","project":"p","environment":"e","branch":"main","from":null,"to":{"spec":"main","sha":"abc","summary":""},"first_deploy":true,"non_ancestor":false,"fingerprint":"f","inputs":{"moorline_version":"0","config_sha256":"c","state_sha256":null,"units_source":"none","units":{},"allow_non_ancestor":false},"changed_paths":0,"services":[],"actions":[],"rollback":{"kind":"nothing","services":[],"summary":""},"warnings":[]}"#;

    fn begin() -> String {
        format!(r#"{{"event":"begin","apply_id":"1","plan":{PLAN}}}"#)
    }

    const STARTED: &str = r#"{"event":"started","action":"build:a"}"#;

    /// What a journal text parses to: `Ok(None)` torn, `Ok(Some(n))` begun
    /// with n records, `Err(line)` corrupt at that line.
    type Outcome = Result<Option<usize>, usize>;

    fn outcome(text: &[u8]) -> Outcome {
        match parse(text, Path::new("/state/journal.jsonl")) {
            Ok(Current::Torn) => Ok(None),
            Ok(Current::Begun(r)) => Ok(Some(r.records.len())),
            Ok(Current::Absent) => panic!("parse never says absent"),
            Err(JournalError::Corrupt { line, .. }) => Err(line),
            Err(e) => panic!("{e:?}"),
        }
    }

    #[test]
    fn only_a_torn_last_line_is_tolerated() {
        let b = begin();
        let cases: Vec<(&str, String, Outcome)> = vec![
            ("empty file", String::new(), Ok(None)),
            ("begin cut short", b[..40].to_owned(), Ok(None)),
            ("begin without its newline", b.clone(), Ok(None)),
            ("begin", format!("{b}\n"), Ok(Some(1))),
            ("two records", format!("{b}\n{STARTED}\n"), Ok(Some(2))),
            (
                "torn last record",
                format!("{b}\n{STARTED}\n{}", &STARTED[..20]),
                Ok(Some(2)),
            ),
            (
                "complete last record without its newline",
                format!("{b}\n{STARTED}"),
                Ok(Some(1)),
            ),
            (
                "garbage in the middle",
                format!("{b}\nxx\n{STARTED}\n"),
                Err(2),
            ),
            (
                "complete unreadable last line",
                format!("{b}\n{STARTED}\n{{\n"),
                Err(3),
            ),
            ("empty line", format!("{b}\n\n"), Err(2)),
            ("a lone newline", "\n".to_owned(), Err(1)),
            ("no begin first", format!("{STARTED}\n{b}\n"), Err(1)),
            ("a second begin", format!("{b}\n{b}\n"), Err(2)),
            (
                "unknown event",
                format!("{b}\n{{\"event\":\"exploded\"}}\n"),
                Err(2),
            ),
        ];
        for (name, text, want) in cases {
            assert_eq!(outcome(text.as_bytes()), want, "{name}");
        }
        // Bytes that are not UTF-8 on a complete line.
        let mut text = format!("{b}\n").into_bytes();
        text.extend_from_slice(b"\xff\xfe\n");
        assert_eq!(outcome(&text), Err(2));
    }

    #[test]
    fn a_corrupt_journal_names_its_file_and_line() {
        let e = parse(
            format!("{}\nxx\n", begin()).as_bytes(),
            Path::new("/state/journal.jsonl"),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "the journal /state/journal.jsonl is corrupt at line 2: not a journal record"
        );
        assert_eq!(
            miette::Diagnostic::code(&e).unwrap().to_string(),
            "moorline::journal::corrupt"
        );
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn reopening_cuts_a_torn_line_so_the_next_record_stands_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        fs::write(&path, format!("{}\n{}", begin(), &STARTED[..20])).unwrap();
        let mut j = Journal::reopen(dir.path()).unwrap();
        j.append(&Record::RolledBack {
            service: "a".to_owned(),
        })
        .unwrap();
        let Current::Begun(r) = read(dir.path()).unwrap() else {
            panic!("not begun");
        };
        assert_eq!(r.records.len(), 2);
        assert_eq!(
            r.records[1],
            Record::RolledBack {
                service: "a".to_owned()
            }
        );
    }

    #[test]
    fn a_begin_record_that_cannot_be_written_leaves_no_journal() {
        // /dev/full fails every write with ENOSPC, as a full disk does.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        fs::write(&path, b"").unwrap();
        let full = OpenOptions::new().append(true).open("/dev/full").unwrap();
        let plan = serde_json::from_str(PLAN).unwrap();
        let j = Journal {
            lines: super::lines::Lines::from_parts(path.clone(), full),
        };
        let Err(JournalError::Write { source, .. }) = j.begin("1", &plan) else {
            panic!("the begin record was written to /dev/full");
        };
        assert_eq!(source.raw_os_error(), Some(28), "{source}");
        assert!(!path.exists());
        assert!(matches!(read(dir.path()).unwrap(), Current::Absent));
    }

    #[test]
    fn a_torn_journal_is_archived_privately() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        fs::write(&path, &begin()[..10]).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(read(dir.path()).unwrap(), Current::Torn));
        let to = archive_torn(dir.path()).unwrap();
        assert!(!path.exists());
        assert_eq!(to.parent().unwrap(), dir.path().join("history"));
        let name = to.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("torn-") && to.extension().is_some_and(|e| e == "jsonl"),
            "{name}"
        );
        assert_eq!(fs::read(&to).unwrap(), &begin().as_bytes()[..10]);
        assert_eq!(
            fs::metadata(&to).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(matches!(read(dir.path()).unwrap(), Current::Absent));
    }

    #[test]
    fn a_spawned_record_names_the_group_flat() {
        let r = Record::Spawned {
            action: "build:api".to_owned(),
            group: crate::process::orphans::Group {
                pgid: 4242,
                start_time: 987_654,
                session: 4200,
                boot_id: "b00t".to_owned(),
            },
        };
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(
            line,
            r#"{"event":"spawned","action":"build:api","pgid":4242,"start_time":987654,"session":4200,"boot_id":"b00t"}"#
        );
        assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), r);
        let text = format!("{}\n{STARTED}\n{line}\n", begin());
        let Current::Begun(replay) = parse(text.as_bytes(), Path::new("/j")).unwrap() else {
            panic!("not begun");
        };
        assert_eq!(replay.spawned().len(), 1);
        assert_eq!(replay.spawned()[0].0, "build:api");
    }

    /// End records as moorline wrote them while outcomes were strings.
    #[test]
    fn end_records_keep_their_spelling() {
        for (text, outcome) in [
            ("succeeded", JournalOutcome::Succeeded),
            ("failed", JournalOutcome::Failed),
            ("failed-untouched", JournalOutcome::FailedUntouched),
            ("rolled-back", JournalOutcome::RolledBack),
            ("failed-kept", JournalOutcome::FailedKept),
        ] {
            let line = format!(r#"{{"event":"end","outcome":"{text}"}}"#);
            let r: Record = serde_json::from_str(&line).unwrap();
            assert_eq!(r, Record::End { outcome });
            assert_eq!(serde_json::to_string(&r).unwrap(), line);
        }
        let finished = format!(
            "{}\n{STARTED}\n{}\n",
            begin(),
            r#"{"event":"end","outcome":"rolled-back"}"#
        );
        assert!(matches!(
            parse(finished.as_bytes(), Path::new("/j")),
            Ok(Current::Begun(r)) if r.ended()
        ));
    }

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

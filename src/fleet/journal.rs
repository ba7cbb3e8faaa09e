//! The fleet journal on the controller: one JSON line per rollout event in
//! `{state}/fleet/journal.jsonl` (the fleet plan, batch boundaries, each
//! host started and finished with its outcome, the fleet rollback), each
//! appended and fsync'd before the controller relies on it. A rollout whose
//! journal has no `end` record is unfinished: `apply --resume` and
//! `rollback` read it to finish the rollout after the controller was
//! killed. A finished journal moves to `history/`. Write errors are
//! returned, never swallowed; a torn last line is ignored on reading.

use std::collections::BTreeMap;
use std::path::Path;

use crate::journal::lines::{Lines, complete_len};

use serde::{Deserialize, Serialize};

use super::FleetError;
use super::plan::FleetPlan;

pub(crate) const JOURNAL_FILE: &str = "journal.jsonl";

/// How one host's part of a rollout ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum HostOutcome {
    /// Its apply succeeded (exit 0): it switched to the new release.
    Succeeded,
    /// Its apply failed before anything live changed (exit 1).
    Failed,
    /// Its apply failed and it rolled itself back (exit 3).
    RolledBack,
    /// Its apply failed and it needs a human (exit 4).
    NeedsAttention,
    /// The connection dropped mid-apply: what the host did is not known
    /// (its own journal makes it resumable there).
    Unknown,
    /// It could not be reached before its apply started.
    Unreachable,
}

impl HostOutcome {
    /// From the host's `moorline apply` exit code.
    pub(crate) fn of_exit(code: i32) -> Self {
        match code {
            crate::exit::OK => Self::Succeeded,
            crate::exit::ROLLED_BACK => Self::RolledBack,
            crate::exit::NEEDS_ATTENTION => Self::NeedsAttention,
            _ => Self::Failed,
        }
    }

    /// Counts against the failure budget.
    pub(crate) fn is_failure(self) -> bool {
        !matches!(self, Self::Succeeded)
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::RolledBack => "rolled-back",
            Self::NeedsAttention => "needs-attention",
            Self::Unknown => "unknown",
            Self::Unreachable => "unreachable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub(crate) enum Record {
    /// The fleet plan being rolled out, in full.
    Begin {
        rollout_id: String,
        plan: Box<FleetPlan>,
    },
    /// Batch `index` (0-based, in the plan's order) starts.
    Batch {
        index: usize,
    },
    /// Intent: the host's apply is about to start.
    HostStarted {
        host: String,
    },
    HostFinished {
        host: String,
        outcome: HostOutcome,
        /// The host's exit code, when it exited.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<i32>,
    },
    /// The failure budget was exceeded (or `rollback` was asked for): every
    /// host that switched is rolled back.
    RollbackBegin {
        reason: String,
    },
    /// Intent: the host's rollback is about to start.
    HostRollbackStarted {
        host: String,
    },
    /// The host's own rollback ended (`ok`: it is back on its previous
    /// release).
    HostRolledBack {
        host: String,
        ok: bool,
    },
    End {
        outcome: RolloutOutcome,
    },
}

/// How a rollout ended, as its journal's `end` record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RolloutOutcome {
    /// Every host's apply succeeded (exit 0).
    Succeeded,
    /// The fleet was rolled back: every host that switched is back.
    RolledBack,
    /// A host failed, or a host's rollback did: a human decides.
    NeedsAttention,
}

/// An open fleet journal.
pub(crate) struct Journal {
    lines: Lines,
}

fn write_err(path: &Path, source: std::io::Error) -> FleetError {
    FleetError::local(
        format!("write the fleet journal {}", path.display()),
        "the controller stops rather than act without a durable record; check free space and permissions of its state directory",
        source,
    )
}

impl Journal {
    /// Starts the journal of a new rollout (fails if one is unfinished). A
    /// begin record that cannot be written (a full disk) leaves no journal.
    pub(crate) fn create(
        dir: &Path,
        rollout_id: &str,
        plan: &FleetPlan,
    ) -> Result<Self, FleetError> {
        let lines =
            Lines::create(dir, JOURNAL_FILE).map_err(|e| write_err(&dir.join(JOURNAL_FILE), e))?;
        let mut j = Self { lines };
        match j.append(&Record::Begin {
            rollout_id: rollout_id.to_owned(),
            plan: Box::new(plan.clone()),
        }) {
            Ok(()) => Ok(j),
            Err(e) => {
                j.lines.discard();
                Err(e)
            }
        }
    }

    /// Reopens the unfinished journal for appending; a torn last line is
    /// cut first.
    pub(crate) fn reopen(dir: &Path) -> Result<Self, FleetError> {
        let path = dir.join(JOURNAL_FILE);
        let lines = Lines::reopen(path.clone()).map_err(|e| write_err(&path, e))?;
        Ok(Self { lines })
    }

    /// Appends one record and fsyncs it.
    pub(crate) fn append(&mut self, r: &Record) -> Result<(), FleetError> {
        // Every string redacted (a reason may quote a host's output), as
        // in the hosts' own journals.
        let line = crate::secrets::redacted_json(r)
            .and_then(|v| serde_json::to_vec(&v))
            .map_err(|e| write_err(self.lines.path(), std::io::Error::other(e)))?;
        self.lines
            .append(line)
            .map_err(|e| write_err(self.lines.path(), e))?;
        crash_point();
        Ok(())
    }

    /// Ends the journal and moves it to `history/{rollout_id}.jsonl`.
    pub(crate) fn finish(
        mut self,
        outcome: RolloutOutcome,
        rollout_id: &str,
    ) -> Result<(), FleetError> {
        self.append(&Record::End { outcome })?;
        let history = self.lines.history_dir();
        self.lines
            .finish(rollout_id)
            .map_err(|e| write_err(&history, e))
    }
}

/// An unfinished rollout read back.
#[derive(Debug, Clone)]
pub(crate) struct Replay {
    pub(crate) rollout_id: String,
    pub(crate) plan: FleetPlan,
    pub(crate) records: Vec<Record>,
}

impl Replay {
    /// Hosts whose apply started (in order).
    pub(crate) fn started(&self) -> Vec<String> {
        self.records
            .iter()
            .filter_map(|r| match r {
                Record::HostStarted { host } => Some(host.clone()),
                _ => None,
            })
            .collect()
    }

    /// How each finished host ended.
    pub(crate) fn finished(&self) -> BTreeMap<String, HostOutcome> {
        self.records
            .iter()
            .filter_map(|r| match r {
                Record::HostFinished { host, outcome, .. } => Some((host.clone(), *outcome)),
                _ => None,
            })
            .collect()
    }

    pub(crate) fn rollback_begun(&self) -> bool {
        self.records
            .iter()
            .any(|r| matches!(r, Record::RollbackBegin { .. }))
    }

    /// Hosts whose rollback ended, and whether it worked.
    pub(crate) fn rolled_back(&self) -> BTreeMap<String, bool> {
        self.records
            .iter()
            .filter_map(|r| match r {
                Record::HostRolledBack { host, ok } => Some((host.clone(), *ok)),
                _ => None,
            })
            .collect()
    }
}

/// Reads the unfinished journal (`None`: no rollout is unfinished). A torn
/// last line is ignored; a journal without its begin record counts as
/// none (nothing acted under it).
pub(crate) fn read(dir: &Path) -> Result<Option<Replay>, FleetError> {
    let path = dir.join(JOURNAL_FILE);
    let bytes = match crate::journal::lines::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(FleetError::local(
                format!("read the fleet journal {}", path.display()),
                "check the permissions of the state directory",
                e,
            ));
        }
    };
    let complete = &bytes[..complete_len(&bytes)];
    let mut records = Vec::new();
    for (i, line) in complete.split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let r: Record = serde_json::from_slice(line).map_err(|e| FleetError::Local {
            what: format!(
                "read the fleet journal {}: line {} is not a record ({e})",
                path.display(),
                i + 1
            ),
            help: "only a torn last line is tolerated; keep the file for inspection and check every host with `moorline status`".to_owned(),
            source: None,
        })?;
        records.push(r);
    }
    let Some(Record::Begin { rollout_id, plan }) = records.first().cloned() else {
        return Ok(None);
    };
    Ok(Some(Replay {
        rollout_id,
        plan: *plan,
        records,
    }))
}

/// Fault injection for the crash tests: with
/// `MOORLINE_TEST_FLEET_CRASH_AFTER=N` the controller SIGKILLs itself right
/// after its Nth fleet journal record is durable. Only with the
/// `crash-hook` feature (see `crate::journal`).
#[cfg(feature = "crash-hook")]
fn crash_point() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static WRITTEN: AtomicUsize = AtomicUsize::new(0);
    let n = WRITTEN.fetch_add(1, Ordering::SeqCst) + 1;
    if let Some(limit) = std::env::var("MOORLINE_TEST_FLEET_CRASH_AFTER")
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

#[cfg(not(feature = "crash-hook"))]
fn crash_point() {}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> FleetPlan {
        let to = crate::git::Rev {
            spec: "b".into(),
            sha: "b".into(),
            summary: String::new(),
        };
        super::super::plan::assemble("p", "prod", to, &crate::config::Rollout::default(), vec![])
    }

    #[test]
    fn records_replay_and_a_torn_line_is_ignored() {
        use std::io::Write as _;
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::create(dir.path(), "r1", &plan()).unwrap();
        assert!(
            Journal::create(dir.path(), "r2", &plan()).is_err(),
            "one rollout at a time"
        );
        j.append(&Record::Batch { index: 0 }).unwrap();
        j.append(&Record::HostStarted { host: "a".into() }).unwrap();
        j.append(&Record::HostFinished {
            host: "a".into(),
            outcome: HostOutcome::Succeeded,
            code: Some(0),
        })
        .unwrap();
        j.append(&Record::HostStarted { host: "b".into() }).unwrap();
        drop(j);
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(JOURNAL_FILE))
            .unwrap();
        f.write_all(b"{\"event\":\"host-fin").unwrap();
        let r = read(dir.path()).unwrap().unwrap();
        assert_eq!(r.rollout_id, "r1");
        assert_eq!(r.started(), vec!["a", "b"]);
        assert_eq!(r.finished().get("a"), Some(&HostOutcome::Succeeded));
        assert!(!r.finished().contains_key("b"));
        let mut j = Journal::reopen(dir.path()).unwrap();
        j.append(&Record::RollbackBegin { reason: "x".into() })
            .unwrap();
        assert!(read(dir.path()).unwrap().unwrap().rollback_begun());
        j.finish(RolloutOutcome::RolledBack, "r1").unwrap();
        for (text, outcome) in [
            ("succeeded", RolloutOutcome::Succeeded),
            ("rolled-back", RolloutOutcome::RolledBack),
            ("needs-attention", RolloutOutcome::NeedsAttention),
        ] {
            // As written while outcomes were strings.
            let line = format!(r#"{{"event":"end","outcome":"{text}"}}"#);
            let r: Record = serde_json::from_str(&line).unwrap();
            assert_eq!(r, Record::End { outcome });
            assert_eq!(serde_json::to_string(&r).unwrap(), line);
        }
        assert!(read(dir.path()).unwrap().is_none());
        assert!(dir.path().join("history/r1.jsonl").exists());
    }

    #[test]
    fn exit_codes_map_to_outcomes() {
        for (code, want) in [
            (0, HostOutcome::Succeeded),
            (1, HostOutcome::Failed),
            (3, HostOutcome::RolledBack),
            (4, HostOutcome::NeedsAttention),
            (2, HostOutcome::Failed),
        ] {
            assert_eq!(HostOutcome::of_exit(code), want, "{code}");
        }
    }
}

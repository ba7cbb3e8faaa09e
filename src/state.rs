//! Host state: what is deployed in an environment (`state.json` in the
//! state directory). Read by `plan`, written only by `apply`/`rollback`,
//! always atomically (temp file, fsync, rename, fsync of the directory), so
//! a crash leaves either the old or the new file, never a torn one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use miette::Diagnostic;
use serde::{Deserialize, Serialize};

use crate::files::{is_root, sha256_hex, tighten, write_private};

pub(crate) const STATE_FILE: &str = "state.json";
pub const FORMAT_VERSION: u32 = 1;
/// The largest `state.json` moorline reads (64 MiB). What makes a state
/// large is its backup records (about 330 bytes each, pretty-printed) and
/// its services (about 300 bytes each): the most backups an environment
/// keeps (`keep` 100,000) take about 33 MB, 2,000 services about 0.6 MB.
/// The cap is twice the worst of it.
pub const STATE_FILE_CAP: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub format_version: u32,
    pub project: String,
    pub environment: String,
    /// The revision the last complete apply deployed.
    pub revision: Option<String>,
    pub services: BTreeMap<String, ServiceState>,
    #[serde(default)]
    pub backups: Vec<BackupRecord>,
    /// The last apply, rollback or restart that succeeded.
    #[serde(default)]
    pub last_apply: Option<ApplyRecord>,
    /// The last one that failed (rolled back or left for inspection).
    #[serde(default)]
    pub last_failure: Option<ApplyRecord>,
    /// The database was restored from a backup since the last deploy, so
    /// it may be behind the deployed code: the next deploy migrates every
    /// deployed service with a migrate step again. Cleared by a deploy
    /// that succeeds. Absent when not restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_restored: Option<DatabaseRestore>,
    /// Services were rolled back by hand (`moorline rollback`) since the
    /// last deploy: they run releases older than `revision`. Cleared by a
    /// deploy that succeeds. Absent when not rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back: Option<ManualRollback>,
    /// The revisions deploys made live here, oldest first (the last
    /// [`DEPLOYS_KEPT`]): what another environment's `promote-from` reads.
    /// Absent in states written before it was recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deploys: Vec<DeployRecord>,
}

/// How many deploys [`State::deploys`] keeps.
pub(crate) const DEPLOYS_KEPT: usize = 50;

/// One revision made live by a deploy that succeeded (every restarted
/// service was ready).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployRecord {
    pub(crate) revision: String,
    /// When the deploy succeeded (seconds since the Unix epoch).
    pub(crate) at: u64,
    /// When the next deploy replaced it; `None`: still the deployed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) until: Option<u64>,
    /// When it was rolled back by hand while it was the deployed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rolled_back_at: Option<u64>,
}

/// A rollback made by hand (see [`State::rolled_back`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManualRollback {
    /// The rollback's apply id.
    pub(crate) apply_id: String,
    /// The services it switched back, in switch order (accumulated over
    /// several rollbacks since the last deploy, each once).
    pub(crate) services: Vec<String>,
    /// Seconds since the Unix epoch.
    pub(crate) at: u64,
}

/// A database restore (`rollback --database`, `backup restore`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseRestore {
    /// The backup restored.
    pub(crate) backup: String,
    /// The apply it was taken before, if an apply took it.
    pub(crate) apply_id: Option<String>,
    /// Seconds since the Unix epoch.
    pub(crate) restored_at: u64,
}

impl DatabaseRestore {
    /// "backup B (taken before apply X)", for reasons and messages.
    pub(crate) fn describe(&self) -> String {
        match &self.apply_id {
            Some(a) => format!("backup {} (taken before apply {a})", self.backup),
            None => format!("backup {}", self.backup),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceState {
    /// The live release (a commit SHA; its directory is `releases/{sha}`).
    pub revision: String,
    /// The release before it: where a rollback goes.
    pub previous: Option<String>,
    /// SHA-256 of the unit file moorline installed, if it manages the unit.
    /// Its presence is the ownership record: moorline replaces only unit
    /// files it installed (others only when adopted, `--adopt`).
    pub unit_sha256: Option<String>,
    /// The name of that unit file (absent in states written before it was
    /// recorded: then any name of the service's unit counts as installed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The artifact (`sha256:...`) the live release was installed from;
    /// absent when it was built on this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    pub(crate) id: String,
    pub(crate) path: String,
    pub(crate) size: u64,
    pub(crate) sha256: String,
    /// Seconds since the Unix epoch.
    pub(crate) taken_at: u64,
    /// The revision deployed when it was taken.
    pub(crate) revision: Option<String>,
    /// The apply it was taken for, if any.
    pub(crate) apply_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyRecord {
    pub(crate) id: String,
    pub(crate) from: Option<String>,
    pub(crate) to: String,
    /// Services switched to a new release, in switch order.
    pub(crate) switched: Vec<String>,
    /// Unit files installed or changed (service → the text before, if any).
    #[serde(default)]
    pub(crate) previous_units: BTreeMap<String, Option<String>>,
    pub(crate) backup: Option<String>,
    pub(crate) migrated: bool,
    pub(crate) outcome: ApplyOutcome,
}

/// How an apply ended, as the state records it (spelled as before it was
/// an enum, so old states read the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ApplyOutcome {
    /// Every action succeeded: `last_apply`.
    Succeeded,
    /// An action failed; nothing was rolled back (nothing live changed, or
    /// the apply was left for `rollback` / `apply --resume`).
    Failed,
    /// An action failed and the automatic rollback undid the apply.
    RolledBack,
    /// An action failed and so did a step of the automatic rollback.
    RollbackFailed,
}

impl State {
    /// Records that a deploy made `revision` live at `at`: the one before
    /// it is replaced from then on.
    pub(crate) fn record_deploy(&mut self, revision: &str, at: u64) {
        if let Some(last) = self.deploys.last_mut()
            && last.until.is_none()
        {
            last.until = Some(at);
        }
        self.deploys.push(DeployRecord {
            revision: revision.to_owned(),
            at,
            until: None,
            rolled_back_at: None,
        });
        let extra = self.deploys.len().saturating_sub(DEPLOYS_KEPT);
        self.deploys.drain(..extra);
    }

    /// Records that services were rolled back by hand at `at`: the
    /// deployed revision no longer runs whole.
    pub(crate) fn record_manual_rollback(&mut self, at: u64) {
        if let Some(last) = self.deploys.last_mut()
            && last.until.is_none()
            && last.rolled_back_at.is_none()
        {
            last.rolled_back_at = Some(at);
        }
    }
}

/// A revision that did not stay deployed here: its apply failed (rolled
/// back or left), or it was rolled back by hand while it was the deployed
/// one ([`State::failure_of`]). What `plan` and `status` warn about and
/// `apply` asks about again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Failure {
    /// The revision that failed (the one asked about, or a commit with
    /// the same tree).
    pub(crate) revision: String,
    pub(crate) how: FailureKind,
    /// When (seconds since the Unix epoch), if the state says.
    pub(crate) at: Option<u64>,
    /// The apply that failed, or the rollback that went back from it.
    pub(crate) apply_id: Option<String>,
}

/// How a revision did not stay deployed ([`Failure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum FailureKind {
    /// Its apply failed and was left as is (or failed before anything
    /// live changed).
    Failed,
    /// Its apply failed and was rolled back automatically.
    RolledBack,
    /// Its apply failed and so did the automatic rollback.
    RollbackFailed,
    /// It was deployed, then rolled back by hand (`moorline rollback`).
    RolledBackByHand,
}

impl Failure {
    /// "failed here at T (apply X) and was rolled back", for warnings.
    pub(crate) fn describe(&self) -> String {
        let at = self.at.map_or_else(String::new, |t| {
            format!(
                " at {}",
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(t)
                )
            )
        });
        let id = self
            .apply_id
            .as_ref()
            .map_or_else(String::new, |i| format!(" (apply {i})"));
        match self.how {
            FailureKind::Failed => format!("failed here{at}{id}"),
            FailureKind::RolledBack => {
                format!("failed here{at}{id} and was rolled back automatically")
            }
            FailureKind::RollbackFailed => {
                format!("failed here{at}{id}, and so did its automatic rollback")
            }
            FailureKind::RolledBackByHand => format!("was rolled back by hand here{at}{id}"),
        }
    }
}

/// When an apply began, from its id (`SECS-MICROS-PID`, see
/// `execute::new_apply_id`); `None` for an id of another form.
fn apply_began(id: &str) -> Option<u64> {
    id.split('-').next()?.parse().ok()
}

impl State {
    /// The last time a revision `same` matches (the one asked about, or a
    /// commit with the same tree) did not stay deployed here, unless a
    /// deploy of it succeeded since: its apply failed (`last_failure`), or
    /// it was rolled back by hand while deployed (`deploys`).
    pub(crate) fn failure_of(&self, same: impl Fn(&str) -> bool) -> Option<Failure> {
        let last_deploy = self.deploys.iter().rev().find(|d| same(&d.revision));
        let by_hand = last_deploy.and_then(|d| {
            d.rolled_back_at.map(|at| Failure {
                revision: d.revision.clone(),
                how: FailureKind::RolledBackByHand,
                at: Some(at),
                apply_id: self
                    .rolled_back
                    .as_ref()
                    .filter(|_| d.until.is_none())
                    .map(|r| r.apply_id.clone()),
            })
        });
        let failed = self.last_failure.as_ref().and_then(|f| {
            let how = match f.outcome {
                ApplyOutcome::Succeeded => return None,
                ApplyOutcome::Failed => FailureKind::Failed,
                ApplyOutcome::RolledBack => FailureKind::RolledBack,
                ApplyOutcome::RollbackFailed => FailureKind::RollbackFailed,
            };
            if !same(&f.to) {
                return None;
            }
            let at = apply_began(&f.id);
            // Deployed healthy since (a later apply of the same revision
            // succeeded): the failure no longer counts.
            if let (Some(d), Some(at)) = (last_deploy, at)
                && d.at >= at
            {
                return None;
            }
            Some(Failure {
                revision: f.to.clone(),
                how,
                at,
                apply_id: Some(f.id.clone()),
            })
        });
        match (by_hand, failed) {
            (Some(h), Some(f)) => Some(if h.at >= f.at { h } else { f }),
            (h, f) => h.or(f),
        }
    }

    /// Records that `revision` is deployed although its apply changed
    /// nothing (a revert, a commit that touches no service): the state's
    /// revision and a deploy record, so that the branch is no longer
    /// behind and `promote-from` sees it. The last apply stays what it
    /// was, so `rollback` still goes back over the last apply that
    /// switched something. `false`: it was already the deployed one.
    pub(crate) fn record_unchanged(&mut self, revision: &str, at: u64) -> bool {
        if self.revision.as_deref() == Some(revision) {
            return false;
        }
        self.revision = Some(revision.to_owned());
        self.record_deploy(revision, at);
        true
    }
}

impl ManualRollback {
    /// The record after rollback `apply_id` switched `services` back,
    /// keeping the services of earlier rollbacks since the last deploy.
    pub(crate) fn after(earlier: Option<Self>, apply_id: &str, services: &[String]) -> Self {
        let mut all = earlier.map(|e| e.services).unwrap_or_default();
        for s in services {
            if !all.contains(s) {
                all.push(s.clone());
            }
        }
        Self {
            apply_id: apply_id.to_owned(),
            services: all,
            at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        }
    }
}

impl State {
    /// Whether moorline installed the unit file `unit` of `service` here:
    /// the ownership record that lets a later apply replace it.
    pub(crate) fn installed_unit(&self, service: &str, unit: &str) -> bool {
        self.services
            .get(service)
            .is_some_and(|s| s.unit_sha256.is_some() && s.unit.as_deref().is_none_or(|u| u == unit))
    }

    /// Records that the database was restored from `b` (see
    /// [`State::database_restored`]).
    pub(crate) fn mark_restored(&mut self, b: &BackupRecord, restored_at: u64) {
        self.database_restored = Some(DatabaseRestore {
            backup: b.id.clone(),
            apply_id: b.apply_id.clone(),
            restored_at,
        });
    }

    /// The backup the most recent apply took before migrating (the one a
    /// database rollback restores), if any.
    pub(crate) fn apply_backup(&self) -> Option<&BackupRecord> {
        self.backups
            .iter()
            .filter(|b| b.apply_id.is_some())
            .max_by_key(|b| (b.taken_at, b.id.clone()))
    }
}

#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum StateError {
    #[error("cannot read the host state {path}")]
    #[diagnostic(
        code(moorline::state::unreadable),
        help("check the permissions of the state directory (--state-dir)")
    )]
    Unreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("refusing to read the host state {path}: {kind}, not a regular file")]
    #[diagnostic(
        code(moorline::state::not_a_file),
        help(
            "moorline writes state.json as a regular file; move what is there away (and restore the state from a backup, if any)"
        )
    )]
    NotAFile { path: String, kind: &'static str },
    #[error(
        "refusing to read the host state {path}: it holds {size} bytes or more, over the limit of {cap}"
    )]
    #[diagnostic(
        code(moorline::state::too_large),
        help(
            "the state moorline writes is far smaller; this file was not written by moorline: restore state.json from a backup"
        )
    )]
    TooLarge { path: String, size: u64, cap: u64 },
    #[error("refusing the host state {path}: {reason}")]
    #[diagnostic(
        code(moorline::state::duplicate_key),
        help(
            "moorline never writes a key twice: the file was edited by hand or forged; restore state.json from a backup"
        )
    )]
    DuplicateKey { path: String, reason: String },
    #[error("the host state {path} is not valid")]
    #[diagnostic(
        code(moorline::state::invalid),
        help(
            "it was not written by this version of moorline, or was edited by hand; restore it from a backup or move it away to plan a first deploy"
        )
    )]
    Invalid {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "the host state {path} has format_version {found}; this moorline reads only {expected}"
    )]
    #[diagnostic(
        code(moorline::state::format_version),
        help(
            "it was written by another version of moorline; use that version on this host (moving the file away would make moorline treat every service as never deployed)"
        )
    )]
    FormatVersion {
        path: String,
        found: String,
        expected: u32,
    },
    #[error("the host state {path} belongs to {found}, not {expected}")]
    #[diagnostic(
        code(moorline::state::mismatch),
        help("use a separate --state-dir per project and environment")
    )]
    Mismatch {
        path: String,
        found: String,
        expected: String,
    },
    #[error("cannot write {path}")]
    #[diagnostic(
        code(moorline::state::write),
        help("check free space and permissions of the state directory")
    )]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The default state directory for a project and environment.
///
/// A user manager's services are the user's, root included: with
/// `user_manager` the state goes under `$XDG_STATE_HOME` (else
/// `~/.local/state`) even as root, never beside the system's.
pub(crate) fn default_dir(project: &str, env: &str, user_manager: bool) -> PathBuf {
    if is_root() && !user_manager {
        return system_dir(project, env);
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("moorline").join(project).join(env)
}

/// The system manager's default state directory (what root uses without
/// `--systemd user`).
pub(crate) fn system_dir(project: &str, env: &str) -> PathBuf {
    PathBuf::from(format!("/var/lib/moorline/{project}/{env}"))
}

/// State as read from disk, with the hash of its bytes (for fingerprints).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub state: Option<State>,
    pub(crate) sha256: Option<String>,
}

/// Reads `state.json` from `dir`; a missing file is `None` (nothing deployed).
pub fn load(dir: &Path, project: &str, env: &str) -> Result<Loaded, StateError> {
    use crate::json_file::{JsonError, ReadError};
    let path = dir.join(STATE_FILE);
    let shown = || path.display().to_string();
    let bytes = match crate::json_file::read(&path, STATE_FILE_CAP) {
        Ok(b) => b,
        Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Loaded {
                state: None,
                sha256: None,
            });
        }
        Err(ReadError::Io(source)) => {
            return Err(StateError::Unreadable {
                path: shown(),
                source,
            });
        }
        Err(ReadError::NotAFile(kind)) => {
            return Err(StateError::NotAFile {
                path: shown(),
                kind,
            });
        }
        Err(ReadError::TooLarge { size, cap }) => {
            return Err(StateError::TooLarge {
                path: shown(),
                size,
                cap,
            });
        }
    };
    let invalid = |source| StateError::Invalid {
        path: shown(),
        source,
    };
    // The version first: a state of another format is refused, never read
    // as this one (its fields may mean something else).
    let value = crate::json_file::parse_unique(&bytes).map_err(|e| match e {
        JsonError::Duplicate(reason) => StateError::DuplicateKey {
            path: shown(),
            reason,
        },
        JsonError::Syntax(e) => invalid(e),
    })?;
    if let Some(found) = crate::json_file::foreign_version(&value, FORMAT_VERSION) {
        return Err(StateError::FormatVersion {
            path: path.display().to_string(),
            found,
            expected: FORMAT_VERSION,
        });
    }
    let state: State = serde_json::from_value(value).map_err(invalid)?;
    if state.project != project || state.environment != env {
        return Err(StateError::Mismatch {
            path: path.display().to_string(),
            found: format!("{}/{}", state.project, state.environment),
            expected: format!("{project}/{env}"),
        });
    }
    Ok(Loaded {
        state: Some(state),
        sha256: Some(sha256_hex(&bytes)),
    })
}

/// Writes `state.json` atomically and durably.
pub fn save(dir: &Path, state: &State) -> Result<(), StateError> {
    // No redaction: the state holds no free text (ids, revisions, paths,
    // hashes), and moorline reads every field back.
    let mut bytes = serde_json::to_vec_pretty(state).map_err(|e| StateError::Write {
        path: dir.join(STATE_FILE).display().to_string(),
        source: std::io::Error::other(e),
    })?;
    bytes.push(b'\n');
    tighten(dir).map_err(|source| StateError::Write {
        path: dir.display().to_string(),
        source,
    })?;
    write_private(&dir.join(STATE_FILE), &bytes).map_err(|source| StateError::Write {
        path: dir.join(STATE_FILE).display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn deploys_record_when_each_revision_was_live_and_a_manual_rollback() {
        let mut st = State::default();
        st.record_deploy("a", 100);
        st.record_manual_rollback(150);
        st.record_deploy("b", 200);
        st.record_deploy("c", 300);
        st.record_manual_rollback(350);
        st.record_manual_rollback(360);
        let seen: Vec<(&str, u64, Option<u64>, Option<u64>)> = st
            .deploys
            .iter()
            .map(|d| (d.revision.as_str(), d.at, d.until, d.rolled_back_at))
            .collect();
        assert_eq!(
            seen,
            [
                ("a", 100, Some(200), Some(150)),
                ("b", 200, Some(300), None),
                ("c", 300, None, Some(350)),
            ]
        );
        for i in 0..(DEPLOYS_KEPT as u64 + 5) {
            st.record_deploy(&i.to_string(), 400 + i);
        }
        assert_eq!(st.deploys.len(), DEPLOYS_KEPT);
        assert_eq!(st.deploys[0].revision, "5");
    }

    #[test]
    fn failures_count_until_a_deploy_of_the_same_revision_succeeds() {
        let failure = |id: &str, to: &str, outcome| ApplyRecord {
            id: id.to_owned(),
            from: Some("a".into()),
            to: to.to_owned(),
            switched: Vec::new(),
            previous_units: BTreeMap::new(),
            backup: None,
            migrated: false,
            outcome,
        };
        let is = |r: &'static str| move |x: &str| x == r;
        let mut st = State::default();
        st.record_deploy("a", 100);
        assert_eq!(st.failure_of(is("a")), None);
        assert_eq!(st.failure_of(is("b")), None);
        // b's apply failed and was rolled back at 200.
        st.last_failure = Some(failure("200-000001-7", "b", ApplyOutcome::RolledBack));
        let f = st.failure_of(is("b")).unwrap();
        assert_eq!(
            (f.revision.as_str(), f.how, f.at, f.apply_id.as_deref()),
            (
                "b",
                FailureKind::RolledBack,
                Some(200),
                Some("200-000001-7")
            )
        );
        assert!(f.describe().starts_with(
            "failed here at 1970-01-01T00:03:20Z (apply 200-000001-7) and was rolled back"
        ));
        assert_eq!(st.failure_of(is("a")), None);
        // A revert recorded without restarts does not clear b's failure.
        assert!(st.record_unchanged("c", 300));
        assert!(!st.record_unchanged("c", 301));
        assert_eq!(st.revision.as_deref(), Some("c"));
        assert!(st.failure_of(is("b")).is_some());
        // b deployed healthy later: its failure no longer counts.
        st.record_deploy("b", 400);
        assert_eq!(st.failure_of(is("b")), None);
        // Rolled back by hand while deployed: counts, until deployed again.
        st.record_manual_rollback(500);
        assert_eq!(
            st.failure_of(is("b")).map(|f| (f.how, f.at)),
            Some((FailureKind::RolledBackByHand, Some(500)))
        );
        st.record_deploy("b", 600);
        assert_eq!(st.failure_of(is("b")), None);
        // Outcomes that are failures, and one that is not.
        for (outcome, how) in [
            (ApplyOutcome::Failed, Some(FailureKind::Failed)),
            (
                ApplyOutcome::RollbackFailed,
                Some(FailureKind::RollbackFailed),
            ),
            (ApplyOutcome::Succeeded, None),
        ] {
            st.last_failure = Some(failure("700-000001-7", "d", outcome));
            assert_eq!(st.failure_of(is("d")).map(|f| f.how), how);
        }
    }

    /// A state as moorline wrote it while outcomes were strings: it loads,
    /// and is written back byte for byte.
    #[test]
    fn a_state_written_before_outcomes_were_typed_round_trips() {
        let record = |id: &str, outcome: &str| {
            format!(
                r#"{{
    "id": "{id}",
    "from": "aaa",
    "to": "bbb",
    "switched": [
      "api"
    ],
    "previous_units": {{}},
    "backup": null,
    "migrated": false,
    "outcome": "{outcome}"
  }}"#
            )
        };
        for (ok, failed, want) in [
            ("succeeded", "failed", ApplyOutcome::Failed),
            ("succeeded", "rolled-back", ApplyOutcome::RolledBack),
            ("succeeded", "rollback-failed", ApplyOutcome::RollbackFailed),
        ] {
            let text = format!(
                r#"{{
  "format_version": {FORMAT_VERSION},
  "project": "p",
  "environment": "e",
  "revision": "bbb",
  "services": {{}},
  "backups": [],
  "last_apply": {},
  "last_failure": {}
}}
"#,
                record("1", ok),
                record("2", failed)
            );
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.path().join(STATE_FILE), &text).unwrap();
            let st = load(dir.path(), "p", "e").unwrap().state.unwrap();
            assert_eq!(
                st.last_apply.as_ref().map(|a| a.outcome),
                Some(ApplyOutcome::Succeeded)
            );
            assert_eq!(st.last_failure.as_ref().map(|a| a.outcome), Some(want));
            save(dir.path(), &st).unwrap();
            assert_eq!(
                fs::read_to_string(dir.path().join(STATE_FILE)).unwrap(),
                text
            );
        }
    }

    #[test]
    fn round_trips_atomically() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path(), "p", "e").unwrap().state.is_none());
        let mut s = State {
            format_version: FORMAT_VERSION,
            project: "p".into(),
            environment: "e".into(),
            ..State::default()
        };
        s.revision = Some("abc".into());
        save(dir.path(), &s).unwrap();
        let back = load(dir.path(), "p", "e").unwrap();
        assert_eq!(back.state.as_ref(), Some(&s));
        assert!(back.sha256.is_some());
        // No temp files left behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(STATE_FILE)]);
        assert!(matches!(
            load(dir.path(), "p", "other"),
            Err(StateError::Mismatch { .. })
        ));
        // Another format version is refused before anything else is read.
        let other = serde_json::to_string(&State {
            format_version: 99,
            ..s.clone()
        })
        .unwrap();
        fs::write(dir.path().join(STATE_FILE), &other).unwrap();
        assert!(matches!(
            load(dir.path(), "p", "e"),
            Err(StateError::FormatVersion { found, .. }) if found == "99"
        ));
        fs::write(dir.path().join(STATE_FILE), br#"{"project": "p"}"#).unwrap();
        assert!(matches!(
            load(dir.path(), "p", "e"),
            Err(StateError::FormatVersion { found, .. }) if found == "(none)"
        ));
        fs::write(dir.path().join(STATE_FILE), b"{not json").unwrap();
        assert!(matches!(
            load(dir.path(), "p", "e"),
            Err(StateError::Invalid { .. })
        ));
    }
}

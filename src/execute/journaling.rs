//! The executor's side of the write-ahead journal: append a record and wait
//! until it is durable before acting, record the process groups an action
//! spawns, find, read, end and archive the current journal. Every write
//! runs on the blocking pool and every error is returned.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::journal::{Journal, JournalError, JournalOutcome, Record};
use crate::process;

use super::new_apply_id;

pub(super) type Shared = Arc<Mutex<Journal>>;

/// Milliseconds since `t`, for the journal's `at_ms` fields.
pub(super) fn millis_since(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Appends `r` to the journal and waits until it is durable (fsync'd):
/// the caller acts only after this returns. The write and fsync run on the
/// blocking pool, so the async workers stay free for D-Bus signals and
/// readiness deadlines; the mutex keeps records whole and in order.
pub(super) async fn journal_append(j: &Shared, r: Record) -> Result<(), JournalError> {
    let writer = Arc::clone(j);
    tokio::task::spawn_blocking(move || {
        // A panic while the lock was held cannot have left a half record
        // relied upon: `append` only returns after the fsync.
        writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .append(&r)
    })
    .await
    .map_err(|source| JournalError::Task {
        // Only on this failure path is the lock taken on an async worker
        // (to name the file).
        path: j
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .path()
            .display()
            .to_string(),
        source,
    })?
}

/// The recorder of the commands `action` starts: a `spawned` journal
/// record for each (on the blocking pool, where the runner calls it), and
/// where a failure to write one is kept for the executor.
pub(super) fn spawn_recorder(
    j: &Shared,
    action: &str,
) -> (process::orphans::Recorder, Arc<Mutex<Option<JournalError>>>) {
    let failed: Arc<Mutex<Option<JournalError>>> = Arc::default();
    let (j, action, slot) = (Arc::clone(j), action.to_owned(), Arc::clone(&failed));
    let recorder: process::orphans::Recorder = Arc::new(move |group| {
        let r = Record::Spawned {
            action: action.clone(),
            group: group.clone(),
        };
        let res = j
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .append(&r);
        res.map_err(|e| {
            let message = e.to_string();
            *slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e);
            process::orphans::RecordError::Write { message }
        })
    });
    (recorder, failed)
}

/// The journal as the next command finds it; a torn one (no complete
/// begin record, e.g. the disk was full) is archived first, saying so:
/// its begin record is durable before anything acts, so nothing live
/// changed under it.
pub(super) async fn current_journal(
    state_dir: &Path,
) -> Result<crate::journal::Current, JournalError> {
    let dir = state_dir.to_owned();
    let path = dir.join(crate::journal::JOURNAL_FILE).display().to_string();
    tokio::task::spawn_blocking(move || {
        let current = crate::journal::read(&dir)?;
        if matches!(current, crate::journal::Current::Torn) {
            let to = crate::journal::archive_torn(&dir)?;
            eprintln!(
                "note: the journal {} has no complete begin record (a write was cut short, e.g. the disk was full); nothing was done under it, so it was moved to {}",
                dir.join(crate::journal::JOURNAL_FILE).display(),
                to.display()
            );
            return Ok(crate::journal::Current::Absent);
        }
        Ok(current)
    })
    .await
    .map_err(|source| JournalError::Task { path, source })?
}

/// A journal that ended but was not moved to history (a crash between the
/// two) is history: move it there.
pub(super) fn archive_ended(state_dir: &Path, apply_id: Option<&str>) -> Result<(), JournalError> {
    let stale = state_dir.join(crate::journal::JOURNAL_FILE);
    if stale.exists() {
        let hist = state_dir.join("history");
        let name = apply_id.map_or_else(|| format!("ended-{}", new_apply_id()), str::to_owned);
        let to = hist.join(format!("{name}.jsonl"));
        crate::files::private_dir(&hist)
            .and_then(|()| std::fs::rename(&stale, &to))
            .map_err(|source| JournalError::Write {
                path: to.display().to_string(),
                source,
            })?;
    }
    Ok(())
}

/// The records of the current journal, read on the blocking pool.
pub(super) async fn read_records(state_dir: &Path) -> Result<Vec<Record>, JournalError> {
    let dir = state_dir.to_owned();
    let path = dir.display().to_string();
    tokio::task::spawn_blocking(move || {
        crate::journal::read(&dir).map(crate::journal::Current::records)
    })
    .await
    .map_err(|source| JournalError::Task { path, source })?
}

/// Ends the journal with `outcome` and archives it (on the blocking pool).
pub(super) async fn finish_journal(
    j: Shared,
    outcome: JournalOutcome,
    apply_id: &str,
) -> Result<(), JournalError> {
    let j = take(j)?;
    let path = j.path().display().to_string();
    let apply_id = apply_id.to_owned();
    tokio::task::spawn_blocking(move || j.finish(outcome, &apply_id))
        .await
        .map_err(|source| JournalError::Task { path, source })?
}

fn take(j: Shared) -> Result<Journal, JournalError> {
    Arc::try_unwrap(j)
        .ok()
        .and_then(|m| m.into_inner().ok())
        .ok_or_else(|| JournalError::Write {
            path: String::from("journal"),
            source: std::io::Error::other("journal still in use"),
        })
}

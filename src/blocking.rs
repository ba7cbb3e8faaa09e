//! Blocking work (hashing a whole file, removing a directory tree, an
//! fsync, a git read) moved off the async runtime: moorline's runtimes have
//! two workers, and a worker held by the file system holds up every timer,
//! D-Bus signal and probe scheduled on it. In: a closure; out: its result,
//! or the caller's error for a task that panicked or was cancelled.

use tokio::task::JoinError;

/// Runs `f` on tokio's blocking pool and waits for it; `lost` makes the
/// caller's error when the task did not finish (it panicked).
pub(crate) async fn run<T, E>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
    lost: impl FnOnce(JoinError) -> E,
) -> Result<T, E>
where
    T: Send + 'static,
    E: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(lost(e)))
}

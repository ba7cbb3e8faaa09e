//! What every benchmark binary shares: a two-worker tokio runtime (the
//! machine class moorline is measured on) running the bench's async body,
//! with its error printed and turned into a failing exit code.

use std::future::Future;
use std::process::ExitCode;

/// Runs `body` to completion on a fresh two-worker runtime.
pub fn run_on_runtime(body: impl Future<Output = Result<(), String>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot build a tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(body) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}

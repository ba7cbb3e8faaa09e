//! How a run shows its progress: the live spinner line, one line per event
//! on standard error, or JSON lines on standard output ([`emit`]). Writes
//! only to the terminal; nothing here decides anything.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::events::{self, Event};

/// How the run reports progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    /// A live view on a terminal: finished events scroll above a spinner
    /// line naming the running actions and their elapsed time.
    Live,
    /// One line per event on standard error.
    Lines,
    /// JSON lines on standard output.
    Json,
}

/// The live view's spinner (one per process: one apply runs at a time).
static LIVE: std::sync::OnceLock<indicatif::ProgressBar> = std::sync::OnceLock::new();

fn live_bar() -> &'static indicatif::ProgressBar {
    LIVE.get_or_init(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}") {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    })
}

/// Updates the live view's line with the running actions.
pub(super) fn show_running(progress: Progress, running: &BTreeMap<String, Instant>) {
    if progress != Progress::Live {
        return;
    }
    let mut names: Vec<String> = running
        .iter()
        .map(|(id, t)| format!("{id} {:.1}s", t.elapsed().as_secs_f64()))
        .collect();
    let more = names.len().saturating_sub(4);
    names.truncate(4);
    let msg = if more > 0 {
        format!("running {} (+{more})", names.join(", "))
    } else {
        format!("running {}", names.join(", "))
    };
    live_bar().set_message(msg);
}

pub(super) fn emit(
    progress: Progress,
    event: fn(events::Step) -> Event,
    action: &str,
    detail: &str,
) {
    let event = event(events::Step {
        action: action.to_owned(),
        detail: crate::secrets::redact(detail),
    });
    match progress {
        Progress::Live => {
            // A start shows in the bar of running actions, not as a line.
            if !matches!(event, Event::Start(_))
                && let Some(line) = event.text()
            {
                live_bar().println(line);
            }
        }
        Progress::Lines => {
            if let Some(line) = event.text() {
                eprintln!("{line}");
            }
        }
        Progress::Json => println!("{}", event.to_line()),
    }
}

/// Clears the live view's line at the end of a run.
pub(super) fn finish(progress: Progress) {
    if progress == Progress::Live {
        live_bar().finish_and_clear();
    }
}

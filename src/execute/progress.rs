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

/// What the live view shows of the running actions: when each started,
/// and what a waiting readiness probe last saw.
#[derive(Default)]
struct Running {
    since: BTreeMap<String, Instant>,
    seen: BTreeMap<String, String>,
}

fn running() -> std::sync::MutexGuard<'static, Running> {
    static RUNNING: std::sync::OnceLock<std::sync::Mutex<Running>> = std::sync::OnceLock::new();
    RUNNING
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How much of what a probe saw the live line shows (characters).
const SEEN_SHOWN: usize = 60;

/// A readiness probe of action `id` failed with `what`: the live view
/// shows it beside the action until the next probe or the action's end.
pub(crate) fn probe_seen(progress: Progress, id: &str, what: &str) {
    if progress != Progress::Live {
        return;
    }
    let what = crate::secrets::redact(what);
    let mut shown: String = what.chars().take(SEEN_SHOWN).collect();
    if what.chars().count() > SEEN_SHOWN {
        shown.push('…');
    }
    let mut r = running();
    if r.since.contains_key(id) {
        r.seen.insert(id.to_owned(), shown);
    }
    let msg = running_line(&r);
    drop(r);
    live_bar().set_message(msg);
}

/// Updates the live view's line with the running actions.
pub(super) fn show_running(progress: Progress, running_now: &BTreeMap<String, Instant>) {
    if progress != Progress::Live {
        return;
    }
    let mut r = running();
    r.since.clone_from(running_now);
    let Running { since, seen } = &mut *r;
    seen.retain(|id, _| since.contains_key(id));
    let msg = running_line(&r);
    drop(r);
    live_bar().set_message(msg);
}

fn running_line(r: &Running) -> String {
    let mut names: Vec<String> = r
        .since
        .iter()
        .map(|(id, t)| match r.seen.get(id) {
            Some(seen) => format!(
                "{id} {:.1}s (last probe: {seen})",
                t.elapsed().as_secs_f64()
            ),
            None => format!("{id} {:.1}s", t.elapsed().as_secs_f64()),
        })
        .collect();
    let more = names.len().saturating_sub(4);
    names.truncate(4);
    if more > 0 {
        format!("running {} (+{more})", names.join(", "))
    } else {
        format!("running {}", names.join(", "))
    }
}

pub(super) fn emit(
    progress: Progress,
    event: fn(events::Step) -> Event,
    action: &str,
    detail: &str,
) {
    emit_step(progress, event, action, detail, None);
}

/// [`emit`] with what systemd and the journal said about a failed unit.
pub(super) fn emit_step(
    progress: Progress,
    event: fn(events::Step) -> Event,
    action: &str,
    detail: &str,
    unit: Option<events::UnitFailure>,
) {
    let event = event(events::Step {
        action: action.to_owned(),
        detail: crate::secrets::redact(detail),
        unit,
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

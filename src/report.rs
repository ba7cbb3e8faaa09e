//! Rendering diagnostics for people: one function, colour only on a
//! terminal without `NO_COLOR`, and a fixed-width plain form for snapshots.

use std::io::IsTerminal;

use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme};

/// Width used for plain (snapshot) rendering.
pub const PLAIN_WIDTH: usize = 100;

/// Renders without colour at a fixed width: stable for tests.
pub fn plain(d: &dyn Diagnostic) -> String {
    let mut out = String::new();
    let handler = GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
        .with_width(PLAIN_WIDTH)
        .with_links(false);
    if handler.render_report(&mut out, d).is_err() {
        return d.to_string();
    }
    out
}

/// Whether standard error should get colour.
pub fn stderr_color() -> bool {
    std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal()
}

/// Renders for standard error.
pub fn for_stderr(d: &dyn Diagnostic) -> String {
    if !stderr_color() {
        return plain(d);
    }
    let mut out = String::new();
    let width = 120;
    let handler = GraphicalReportHandler::new_themed(GraphicalTheme::unicode()).with_width(width);
    if handler.render_report(&mut out, d).is_err() {
        return d.to_string();
    }
    out
}

/// Prints a diagnostic to standard error, secrets redacted.
pub fn eprint(d: &dyn Diagnostic) {
    eprint!("{}", crate::secrets::redact(&for_stderr(d)));
}

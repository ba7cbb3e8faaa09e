//! Rendering diagnostics for people: one function, colour only on a
//! terminal without `NO_COLOR`, and a fixed-width plain form for snapshots.
//! Every text of a diagnostic (message, help, labels, causes, related
//! diagnostics) is shown with its control and invisible characters escaped
//! ([`Visible`]), whatever error it comes from: a path, a git message or a
//! command's output quoted in an error cannot act on the terminal.

use std::fmt;
use std::io::IsTerminal;

use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme, LabeledSpan, SourceCode};

/// A text of a diagnostic as shown: registered secrets redacted first
/// (an escaped secret would no longer match), then escaped.
fn shown(text: &str) -> String {
    crate::visible::escape_lines(&crate::secrets::redact(text))
}

/// [`shown`] for a text on one line (a code, a label).
fn shown_inline(text: &str) -> String {
    crate::visible::escape(&crate::secrets::redact(text))
}

/// Width used for plain (snapshot) rendering.
pub(crate) const PLAIN_WIDTH: usize = 100;

/// Renders without colour at a fixed width: stable for tests.
pub fn plain(d: &dyn Diagnostic) -> String {
    let mut out = String::new();
    let handler = GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
        .with_width(PLAIN_WIDTH)
        .with_links(false);
    if handler.render_report(&mut out, &Visible::new(d)).is_err() {
        return shown(&d.to_string());
    }
    out
}

/// Whether standard error should get colour.
pub(crate) fn stderr_color() -> bool {
    std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal()
}

/// Renders for standard error.
pub(crate) fn for_stderr(d: &dyn Diagnostic) -> String {
    if !stderr_color() {
        return plain(d);
    }
    let mut out = String::new();
    let width = 120;
    let handler = GraphicalReportHandler::new_themed(GraphicalTheme::unicode()).with_width(width);
    if handler.render_report(&mut out, &Visible::new(d)).is_err() {
        return shown(&d.to_string());
    }
    out
}

/// Prints a diagnostic to standard error, secrets redacted.
pub(crate) fn eprint(d: &dyn Diagnostic) {
    eprint!("{}", crate::secrets::redact(&for_stderr(d)));
}

/// A diagnostic as a terminal may show it: the same diagnostic with every
/// text redacted and escaped ([`crate::visible::escape_lines`] for messages
/// and help, which may run over lines; [`crate::visible::escape`] for codes
/// and labels). Spans and the source are the
/// inner diagnostic's: a configuration's source is escaped where it is
/// made ([`crate::config::ConfigError`]), with its spans moved.
pub(crate) struct Visible<'a> {
    inner: &'a dyn Diagnostic,
    message: String,
    related: Option<Vec<Visible<'a>>>,
    diagnostic_source: Option<Box<Visible<'a>>>,
    cause: Option<Box<Cause>>,
}

impl<'a> Visible<'a> {
    pub(crate) fn new(inner: &'a dyn Diagnostic) -> Self {
        Self {
            inner,
            message: shown(&inner.to_string()),
            related: inner.related().map(|r| r.map(Visible::new).collect()),
            diagnostic_source: inner.diagnostic_source().map(|d| Box::new(Visible::new(d))),
            cause: Cause::chain(inner.source()),
        }
    }
}

impl fmt::Debug for Visible<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Visible")
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for Visible<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Visible<'_> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|c| c as &(dyn std::error::Error + 'static))
    }
}

impl Diagnostic for Visible<'_> {
    fn code<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        let code = shown_inline(&self.inner.code()?.to_string());
        Some(Box::new(code))
    }

    fn severity(&self) -> Option<miette::Severity> {
        self.inner.severity()
    }

    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        let help = shown(&self.inner.help()?.to_string());
        Some(Box::new(help))
    }

    fn url<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        let url = shown_inline(&self.inner.url()?.to_string());
        Some(Box::new(url))
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.inner.source_code()
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let labels = self.inner.labels()?.map(|mut l| {
            let label = l.label().map(shown_inline);
            l.set_label(label);
            l
        });
        Some(Box::new(labels))
    }

    fn related<'b>(&'b self) -> Option<Box<dyn Iterator<Item = &'b dyn Diagnostic> + 'b>> {
        let related = self.related.as_ref()?;
        Some(Box::new(related.iter().map(|r| r as &dyn Diagnostic)))
    }

    fn diagnostic_source(&self) -> Option<&dyn Diagnostic> {
        self.diagnostic_source
            .as_deref()
            .map(|d| d as &dyn Diagnostic)
    }
}

/// A cause of an error (`#[source]`), its message escaped, and its own
/// cause after it.
#[derive(Debug)]
struct Cause {
    message: String,
    source: Option<Box<Cause>>,
}

impl Cause {
    /// The chain of causes from `e` on, each escaped.
    fn chain(e: Option<&(dyn std::error::Error + 'static)>) -> Option<Box<Self>> {
        // Iterative: a chain of causes is as long as the error makes it.
        let messages: Vec<String> = std::iter::successors(e, |e| e.source())
            .map(|e| shown(&e.to_string()))
            .collect();
        let mut next = None;
        for message in messages.into_iter().rev() {
            next = Some(Box::new(Cause {
                message,
                source: next,
            }));
        }
        next
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|c| c as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error, Diagnostic)]
    #[error("cannot read {path}")]
    #[diagnostic(code(moorline::test::hostile), help("check {path}\nand retry"))]
    struct Hostile {
        path: String,
        #[source]
        source: std::io::Error,
        #[label("{label}")]
        at: miette::SourceSpan,
        label: String,
        #[source_code]
        src: String,
    }

    #[test]
    fn every_text_of_a_diagnostic_is_shown_escaped() {
        let e = Hostile {
            path: "/srv/\u{1b}]0;PWNED\u{7}\u{202e}x".to_owned(),
            source: std::io::Error::other("denied \u{9b}31m"),
            at: (0, 4).into(),
            label: "here \u{1b}[2J".to_owned(),
            src: "text".to_owned(),
        };
        for out in [plain(&e), {
            let mut s = String::new();
            GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
                .render_report(&mut s, &Visible::new(&e))
                .unwrap();
            s
        }] {
            let hidden: Vec<char> = out
                .chars()
                .filter(|c| crate::visible::is_invisible(*c) && *c != '\n')
                .collect();
            assert!(hidden.is_empty(), "{hidden:?} in {out}");
            for shown in [
                r"/srv/\u{1b}]0;PWNED\u{7}\u{202e}x",
                r"denied \u{9b}31m",
                r"here \u{1b}[2J",
                "and retry",
            ] {
                assert!(out.contains(shown), "{shown} not in {out}");
            }
        }
        // A registered secret is redacted before it is escaped, so that
        // its escaped form does not slip past the redaction.
        let secret = "hunter\u{1b}2-report-test";
        crate::secrets::register([secret]);
        let leaky = Hostile {
            path: format!("/srv/{secret}"),
            source: std::io::Error::other(format!("denied {secret}")),
            at: (0, 4).into(),
            label: secret.to_owned(),
            src: "text".to_owned(),
        };
        let out = plain(&leaky);
        assert!(!out.contains("hunter"), "{out}");
        // Plain text is shown as it was.
        let plain_error = Hostile {
            path: "/srv/shop".to_owned(),
            source: std::io::Error::other("denied"),
            at: (0, 4).into(),
            label: "here".to_owned(),
            src: "text".to_owned(),
        };
        let mut direct = String::new();
        GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
            .with_width(PLAIN_WIDTH)
            .with_links(false)
            .render_report(&mut direct, &plain_error)
            .unwrap();
        assert_eq!(plain(&plain_error), direct);
    }
}

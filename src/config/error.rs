//! Configuration problems: every one has a stable code, a label on the KDL
//! span it is about and a help line; `ConfigError` carries all of them at once.

use std::fmt;

use miette::{Diagnostic, LabeledSpan, NamedSource, SourceSpan};

/// What went wrong; each kind maps to one stable diagnostic code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    Syntax,
    UnknownNode,
    UnknownProperty,
    UnexpectedArgument,
    WrongType,
    MissingValue,
    Duplicate,
    PortConflict,
    PortRange,
    UnknownReference,
    DependencyCycle,
    LaterPhaseDependency,
    UnknownPlaceholder,
    InvalidName,
    UnsafePath,
    MissingBranch,
    EmptyCommand,
    InvalidDuration,
    InvalidValue,
}

impl ProblemKind {
    /// The stable code printed with the diagnostic (`moorline::config::...`).
    pub fn code(self) -> &'static str {
        match self {
            Self::Syntax => "moorline::config::syntax",
            Self::UnknownNode => "moorline::config::unknown_node",
            Self::UnknownProperty => "moorline::config::unknown_property",
            Self::UnexpectedArgument => "moorline::config::unexpected_argument",
            Self::WrongType => "moorline::config::wrong_type",
            Self::MissingValue => "moorline::config::missing_value",
            Self::Duplicate => "moorline::config::duplicate",
            Self::PortConflict => "moorline::config::port_conflict",
            Self::PortRange => "moorline::config::port_range",
            Self::UnknownReference => "moorline::config::unknown_reference",
            Self::DependencyCycle => "moorline::config::dependency_cycle",
            Self::LaterPhaseDependency => "moorline::config::later_phase_dependency",
            Self::UnknownPlaceholder => "moorline::config::unknown_placeholder",
            Self::InvalidName => "moorline::config::invalid_name",
            Self::UnsafePath => "moorline::config::unsafe_path",
            Self::MissingBranch => "moorline::config::missing_branch",
            Self::EmptyCommand => "moorline::config::empty_command",
            Self::InvalidDuration => "moorline::config::invalid_duration",
            Self::InvalidValue => "moorline::config::invalid_value",
        }
    }
}

/// One problem in a configuration file.
#[derive(Debug, Clone)]
pub struct Problem {
    pub kind: ProblemKind,
    pub message: String,
    pub span: SourceSpan,
    pub label: String,
    pub help: String,
    /// Further spans that explain the problem (the first definition of a
    /// duplicate, every edge of a cycle).
    pub also: Vec<(SourceSpan, String)>,
}

impl Problem {
    pub fn new(
        kind: ProblemKind,
        span: SourceSpan,
        message: impl Into<String>,
        label: impl Into<String>,
        help: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            message: message.into(),
            span,
            label: label.into(),
            help: help.into(),
            also: Vec::new(),
        }
    }

    #[must_use]
    pub fn also(mut self, span: SourceSpan, label: impl Into<String>) -> Self {
        self.also.push((span, label.into()));
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Problem {}

impl Diagnostic for Problem {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.kind.code()))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        if self.help.is_empty() {
            None
        } else {
            Some(Box::new(&self.help))
        }
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let primary = LabeledSpan::new_primary_with_span(Some(self.label.clone()), self.span);
        let rest = self
            .also
            .iter()
            .map(|(span, label)| LabeledSpan::new_with_span(Some(label.clone()), *span));
        Some(Box::new(std::iter::once(primary).chain(rest)))
    }
}

/// A configuration file that could not be loaded: every problem found in it.
#[derive(Debug)]
pub struct ConfigError {
    pub src: NamedSource<String>,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problems.len() {
            1 => write!(f, "{} has 1 problem", self.src.name()),
            n => write!(f, "{} has {n} problems", self.src.name()),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Diagnostic for ConfigError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new("moorline::config::invalid"))
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(&self.src)
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        Some(Box::new(self.problems.iter().map(|p| p as &dyn Diagnostic)))
    }
}

/// Errors that happen before there is a file to point into.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum LocateError {
    #[error("no configuration file: no *.kdl file in {dir}")]
    #[diagnostic(
        code(moorline::config::not_found),
        help("pass one with -c FILE or set MOORLINE_CONFIG")
    )]
    NoneFound { dir: String },
    #[error("several configuration files in {dir}: {files}")]
    #[diagnostic(
        code(moorline::config::ambiguous),
        help("choose one with -c FILE or MOORLINE_CONFIG")
    )]
    Several { dir: String, files: String },
    #[error("cannot read configuration file {path}")]
    #[diagnostic(
        code(moorline::config::unreadable),
        help("check that the file exists and is readable")
    )]
    Unreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The closest candidate to `word` by edit distance, for "did you mean".
pub fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let cands = ["runtime", "port", "phase", "depends-on"];
        for (word, want) in [
            ("runtme", Some("runtime")),
            ("prot", Some("port")),
            ("depends_on", Some("depends-on")),
            ("zzzzzz", None),
        ] {
            assert_eq!(suggest(word, &cands), want, "{word}");
        }
    }
}

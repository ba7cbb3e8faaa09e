//! Configuration problems: every one has a stable code, a label on the KDL
//! span it is about and a help line; `ConfigError` carries all of them at once.

use std::fmt;
use std::sync::OnceLock;

use miette::{Diagnostic, LabeledSpan, MietteSpanContents, SourceSpan};

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
    ControlCharacter,
    TooLarge,
    TooDeep,
    RelativeWorkingDirectory,
    UnitNameSuffix,
    UnitNameTooLong,
    UnitNameCharacters,
    SecondProject,
    UnsafeRoot,
    InvalidBranch,
    ExecPrefix,
    ProgramIsOption,
    HttpsHealth,
    UnitValue,
    InvalidAddress,
    InvalidUser,
    DuplicateAddress,
    UnhostedService,
    InvalidBatch,
    ImpossibleRollout,
    FleetWithoutHosts,
    InvisibleInName,
    InvisibleInPath,
    InvisibleInUser,
    InvisibleInEnvKey,
    InvisibleInCommand,
    InvisibleInValue,
    DurationTooLong,
    InvalidUnitUser,
    RelativeEnvFile,
    NotAUnitDir,
    TypeAnnotation,
    PassEnvName,
    PassEnvDuplicate,
    InitTodo,
    CutoverWithoutProxy,
    CutoverUnmanaged,
    CutoverSlots,
    ReadyKind,
    Schedule,
    SharedRoot,
    SharedUnitNames,
    SharedPorts,
}

impl ProblemKind {
    /// Every kind, for checks that each code is documented.
    pub const ALL: &[Self] = &[
        Self::Syntax,
        Self::UnknownNode,
        Self::UnknownProperty,
        Self::UnexpectedArgument,
        Self::WrongType,
        Self::MissingValue,
        Self::Duplicate,
        Self::PortConflict,
        Self::PortRange,
        Self::UnknownReference,
        Self::DependencyCycle,
        Self::LaterPhaseDependency,
        Self::UnknownPlaceholder,
        Self::InvalidName,
        Self::UnsafePath,
        Self::MissingBranch,
        Self::EmptyCommand,
        Self::InvalidDuration,
        Self::InvalidValue,
        Self::ControlCharacter,
        Self::TooLarge,
        Self::TooDeep,
        Self::RelativeWorkingDirectory,
        Self::UnitNameSuffix,
        Self::UnitNameTooLong,
        Self::UnitNameCharacters,
        Self::SecondProject,
        Self::UnsafeRoot,
        Self::InvalidBranch,
        Self::ExecPrefix,
        Self::ProgramIsOption,
        Self::HttpsHealth,
        Self::UnitValue,
        Self::InvalidAddress,
        Self::InvalidUser,
        Self::DuplicateAddress,
        Self::UnhostedService,
        Self::InvalidBatch,
        Self::ImpossibleRollout,
        Self::FleetWithoutHosts,
        Self::InvisibleInName,
        Self::InvisibleInPath,
        Self::InvisibleInUser,
        Self::InvisibleInEnvKey,
        Self::InvisibleInCommand,
        Self::InvisibleInValue,
        Self::DurationTooLong,
        Self::InvalidUnitUser,
        Self::RelativeEnvFile,
        Self::NotAUnitDir,
        Self::TypeAnnotation,
        Self::PassEnvName,
        Self::PassEnvDuplicate,
        Self::InitTodo,
        Self::CutoverWithoutProxy,
        Self::CutoverUnmanaged,
        Self::CutoverSlots,
        Self::ReadyKind,
        Self::Schedule,
        Self::SharedRoot,
        Self::SharedUnitNames,
        Self::SharedPorts,
    ];

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
            Self::ControlCharacter => "moorline::config::control_character",
            Self::TooLarge => "moorline::config::too_large",
            Self::TooDeep => "moorline::config::too_deep",
            Self::RelativeWorkingDirectory => "moorline::config::relative_working_directory",
            Self::UnitNameSuffix => "moorline::config::unit_name_suffix",
            Self::UnitNameTooLong => "moorline::config::unit_name_too_long",
            Self::UnitNameCharacters => "moorline::config::unit_name_characters",
            Self::SecondProject => "moorline::config::second_project",
            Self::UnsafeRoot => "moorline::config::unsafe_root",
            Self::InvalidBranch => "moorline::config::invalid_branch",
            Self::ExecPrefix => "moorline::config::exec_prefix",
            Self::ProgramIsOption => "moorline::config::program_is_option",
            Self::HttpsHealth => "moorline::config::https_health",
            Self::UnitValue => "moorline::config::unit_value",
            Self::InvalidAddress => "moorline::config::invalid_address",
            Self::InvalidUser => "moorline::config::invalid_user",
            Self::DuplicateAddress => "moorline::config::duplicate_address",
            Self::UnhostedService => "moorline::config::unhosted_service",
            Self::InvalidBatch => "moorline::config::invalid_batch",
            Self::ImpossibleRollout => "moorline::config::impossible_rollout",
            Self::FleetWithoutHosts => "moorline::config::fleet_without_hosts",
            Self::InvisibleInName => "moorline::config::invisible_in_name",
            Self::InvisibleInPath => "moorline::config::invisible_in_path",
            Self::InvisibleInUser => "moorline::config::invisible_in_user",
            Self::InvisibleInEnvKey => "moorline::config::invisible_in_env_key",
            Self::InvisibleInCommand => "moorline::config::invisible_in_command",
            Self::InvisibleInValue => "moorline::config::invisible_in_value",
            Self::DurationTooLong => "moorline::config::duration_too_long",
            Self::InvalidUnitUser => "moorline::config::invalid_unit_user",
            Self::RelativeEnvFile => "moorline::config::relative_env_file",
            Self::NotAUnitDir => "moorline::config::not_a_unit_dir",
            Self::TypeAnnotation => "moorline::config::type_annotation",
            Self::PassEnvName => "moorline::config::pass_env_name",
            Self::PassEnvDuplicate => "moorline::config::pass_env_duplicate",
            Self::InitTodo => "moorline::config::init_todo",
            Self::CutoverWithoutProxy => "moorline::config::cutover_without_proxy",
            Self::CutoverUnmanaged => "moorline::config::cutover_unmanaged",
            Self::CutoverSlots => "moorline::config::cutover_slots",
            Self::ReadyKind => "moorline::config::ready",
            Self::Schedule => "moorline::config::schedule",
            Self::SharedRoot => "moorline::config::shared_root",
            Self::SharedUnitNames => "moorline::config::shared_unit_names",
            Self::SharedPorts => "moorline::config::shared_ports",
        }
    }
}

/// One problem in a configuration file.
#[derive(Debug, Clone)]
pub struct Problem {
    pub kind: ProblemKind,
    pub(crate) message: String,
    pub(crate) span: SourceSpan,
    pub(crate) label: String,
    pub(crate) help: String,
    /// Further spans that explain the problem (the first definition of a
    /// duplicate, every edge of a cycle).
    pub(crate) also: Vec<(SourceSpan, String)>,
}

impl Problem {
    pub(crate) fn new(
        kind: ProblemKind,
        span: SourceSpan,
        message: impl Into<String>,
        label: impl Into<String>,
        help: impl Into<String>,
    ) -> Self {
        Self {
            kind,
            message: bounded(&message.into()),
            span,
            label: bounded(&label.into()),
            help: bounded(&help.into()),
            also: Vec::new(),
        }
    }

    /// Adds an explaining span; after [`MAX_ALSO`] of them (a cycle through
    /// a whole fleet) the rest are left out.
    #[must_use]
    pub(crate) fn also(mut self, span: SourceSpan, label: impl Into<String>) -> Self {
        if self.also.len() < MAX_ALSO {
            self.also.push((span, bounded(&label.into())));
        }
        self
    }
}

/// A value quoted in a message (between backticks) is shown up to this
/// many characters, then `…`.
pub(crate) const MAX_SHOWN_VALUE: usize = 60;
/// Explaining spans kept per problem.
pub(crate) const MAX_ALSO: usize = 20;
/// A message, label or help line is cut after this many characters.
pub(crate) const MAX_TEXT: usize = 400;

/// `text` made safe and short for a terminal: control and invisible
/// format characters escaped ([`crate::visible::escape`]: `\n`, `\u{1b}`,
/// `\u{200b}`), each backtick-quoted value elided after
/// [`MAX_SHOWN_VALUE`] characters, the whole cut after [`MAX_TEXT`].
/// Every text of a problem goes through here, so a hostile value can
/// neither draw on the terminal nor flood it.
pub(crate) fn bounded(text: &str) -> String {
    let mut out = String::new();
    for (i, part) in text.split('`').enumerate() {
        if i > 0 {
            out.push('`');
        }
        let quoted = i % 2 == 1;
        for (shown, c) in part.chars().enumerate() {
            if quoted && shown == MAX_SHOWN_VALUE {
                out.push('…');
                break;
            }
            if crate::visible::is_invisible(c) {
                crate::visible::push_escaped(&mut out, c);
            } else {
                out.push(c);
            }
        }
    }
    if out.chars().count() > MAX_TEXT {
        out = out.chars().take(MAX_TEXT).collect();
        out.push('…');
    }
    out
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

/// At most this many problems are rendered; the rest are counted.
pub const MAX_PROBLEMS_SHOWN: usize = 50;
/// A source line longer than this is shown as a window around the label.
const MAX_CONTEXT_BYTES: usize = 2048;
/// Bytes of a long line shown before and after a label.
const WINDOW_BYTES: usize = 120;
/// A single-line label longer than this is shortened to its start.
const MAX_LABEL_BYTES: usize = 256;

/// A configuration file that could not be loaded: every problem found in it.
#[derive(Debug)]
pub struct ConfigError {
    pub src: Source,
    pub problems: Vec<Problem>,
    more: Option<MoreProblems>,
}

impl ConfigError {
    /// Problems in file order; labels on long lines shortened so that
    /// rendering stays bounded. The text is shown with its control and
    /// invisible characters escaped (a comment beside an error could
    /// otherwise retitle the terminal or clear a CI log), and every span
    /// moved to where its text is in the escaped one, so labels stay on
    /// what they are about.
    pub(crate) fn new(name: &str, text: String, mut problems: Vec<Problem>) -> Self {
        problems.sort_by_key(|p| (p.span.offset(), p.kind.code()));
        for p in &mut problems {
            p.span = short_label(&text, p.span);
            for (span, _) in &mut p.also {
                *span = short_label(&text, *span);
            }
        }
        // Every start and end of a span, and the end of the text, moved to
        // the escaped text in one pass.
        let spans = || {
            problems
                .iter()
                .flat_map(|p| std::iter::once(p.span).chain(p.also.iter().map(|(s, _)| *s)))
        };
        let mut points: Vec<usize> = spans()
            .flat_map(|s| [s.offset(), s.offset() + s.len()])
            .map(|at| at.min(text.len()))
            .chain([text.len()])
            .collect();
        points.sort_unstable();
        points.dedup();
        let moved = crate::visible::escaped_offsets(&text, &points);
        let to = |at: usize| {
            let at = at.min(text.len());
            points.binary_search(&at).map_or(at, |k| moved[k].0)
        };
        // The column of a label's start, as in the file.
        let mut columns: Vec<(usize, usize)> = spans()
            .filter_map(|s| points.binary_search(&s.offset().min(text.len())).ok())
            .map(|k| moved[k])
            .filter(|(_, extra)| *extra > 0)
            .collect();
        columns.sort_unstable();
        columns.dedup();
        let escaped = moved.last().is_some_and(|(end, _)| *end > text.len());
        for p in &mut problems {
            let (start, end) = (to(p.span.offset()), to(p.span.offset() + p.span.len()));
            p.span = SourceSpan::from((start, end - start));
            for (span, _) in &mut p.also {
                let (start, end) = (to(span.offset()), to(span.offset() + span.len()));
                *span = SourceSpan::from((start, end - start));
            }
        }
        let text = if escaped {
            crate::visible::escape_lines(&text)
        } else {
            text
        };
        let more = (problems.len() > MAX_PROBLEMS_SHOWN).then(|| MoreProblems {
            count: problems.len() - MAX_PROBLEMS_SHOWN,
        });
        Self {
            src: Source {
                columns: columns.into(),
                ..Source::new(name, text)
            },
            problems,
            more,
        }
    }
}

/// `span` cut to its first [`MAX_SHOWN_VALUE`] characters when it is one
/// long line (a huge value), so its label can be drawn under a window.
fn short_label(text: &str, span: SourceSpan) -> SourceSpan {
    let start = span.offset().min(text.len());
    let end = (start + span.len()).min(text.len());
    let Some(covered) = text.get(start..end) else {
        return span;
    };
    if covered.len() <= MAX_LABEL_BYTES || covered.contains('\n') {
        return span;
    }
    let len: usize = covered
        .chars()
        .take(MAX_SHOWN_VALUE)
        .map(char::len_utf8)
        .sum();
    SourceSpan::from((start, len))
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problems.len() {
            1 => write!(f, "{} has 1 problem", self.src.name),
            n => write!(f, "{} has {} problems", self.src.name, thousands(n)),
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
        let shown = self
            .problems
            .iter()
            .take(MAX_PROBLEMS_SHOWN)
            .map(|p| p as &dyn Diagnostic);
        let more = self.more.iter().map(|m| m as &dyn Diagnostic);
        Some(Box::new(shown.chain(more)))
    }
}

/// The line after the first [`MAX_PROBLEMS_SHOWN`] problems.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("and {} more problems", thousands(*count))]
#[diagnostic(
    code(moorline::config::more_problems),
    help("fix the problems above and run `moorline validate` again to see the rest")
)]
struct MoreProblems {
    count: usize,
}

/// `n` with `,` between thousands: 99,950.
pub(crate) fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

/// The configuration text as diagnostics see it: named, and read in
/// bounded pieces. A label on a very long line (a 4 MB value on one line)
/// is shown with a window of the line around it, not the whole line.
#[derive(Debug)]
pub struct Source {
    pub(crate) name: String,
    pub text: String,
    /// Where each line starts, computed on first use for a large text.
    /// (Boxed, as `columns`: a `ConfigError` is what `parse` returns, and
    /// stays small.)
    line_starts: Box<OnceLock<Vec<usize>>>,
    /// For a label that starts after escapes on its line: where it starts,
    /// and how many characters those escapes add to its column.
    columns: Box<[(usize, usize)]>,
}

/// Texts up to this size are read the way miette reads any string.
const SMALL_TEXT: usize = 64 * 1024;

impl Source {
    /// A source named `name` (a path, shown escaped).
    pub(crate) fn new(name: &str, text: String) -> Self {
        Self {
            name: crate::visible::escape(name),
            text,
            line_starts: Box::default(),
            columns: Box::default(),
        }
    }

    /// Characters that escapes add to the line of `at` before it: taken
    /// off a column, so that a location reads as in the file.
    fn escaped_columns(&self, at: usize) -> usize {
        self.columns
            .binary_search_by_key(&at, |(start, _)| *start)
            .map_or(0, |k| self.columns[k].1)
    }

    fn line_starts(&self) -> &[usize] {
        self.line_starts.get_or_init(|| {
            std::iter::once(0)
                .chain(
                    self.text
                        .bytes()
                        .enumerate()
                        .filter(|(_, b)| *b == b'\n')
                        .map(|(i, _)| i + 1),
                )
                .collect()
        })
    }

    /// A bounded piece of a large text around `span`, in linear time once
    /// and logarithmic time per label after that.
    fn piece(&self, span: &SourceSpan, before: usize, after: usize) -> MietteSpanContents<'_> {
        let text = self.text.as_str();
        let ls = self.line_starts();
        let line_of = |at: usize| ls.partition_point(|s| *s <= at).saturating_sub(1);
        let line_end = |line: usize| ls.get(line + 1).map_or(text.len(), |n| n - 1);
        let start = floor_boundary(text, span.offset());
        let end = floor_boundary(text, span.offset() + span.len()).max(start);
        let first = line_of(start);
        let last = line_of(end.saturating_sub(1).max(start));
        let column = start - ls[first];
        let from_line = first.saturating_sub(before);
        let to_line = (last + after).min(ls.len() - 1);
        let (from, to) = (ls[from_line], line_end(to_line));
        if to - from <= MAX_CONTEXT_BYTES {
            return MietteSpanContents::new_named(
                self.name.clone(),
                &text.as_bytes()[from..to],
                SourceSpan::from((from, to - from)),
                from_line,
                column,
                to_line - from_line + 1,
            );
        }
        let from = floor_boundary(text, start.saturating_sub(WINDOW_BYTES).max(ls[first]));
        let to = floor_boundary(
            text,
            (start + span.len().min(MAX_LABEL_BYTES) + WINDOW_BYTES).min(line_end(first)),
        )
        .max(from);
        let (from, to) = whole_escapes(text, from, to);
        MietteSpanContents::new_named(
            self.name.clone(),
            &text.as_bytes()[from..to],
            SourceSpan::from((from, to - from)),
            first,
            column,
            1,
        )
    }
}

impl miette::SourceCode for Source {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        before: usize,
        after: usize,
    ) -> Result<Box<dyn miette::SpanContents<'a> + 'a>, miette::MietteError> {
        let inner: Box<dyn miette::SpanContents<'a> + 'a> = if self.text.len() > SMALL_TEXT {
            Box::new(self.piece(span, before, after))
        } else {
            let inner = self.text.read_span(span, before, after)?;
            if inner.data().len() > MAX_CONTEXT_BYTES {
                Box::new(self.piece(span, before, after))
            } else {
                inner
            }
        };
        Ok(Box::new(MietteSpanContents::new_named(
            self.name.clone(),
            inner.data(),
            *inner.span(),
            inner.line(),
            inner
                .column()
                .saturating_sub(self.escaped_columns(span.offset())),
            inner.line_count(),
        )))
    }
}

/// The window `from..to` of an escaped text widened so that it cuts no
/// escape (`\u{1b}`) in two.
fn whole_escapes(text: &str, from: usize, to: usize) -> (usize, usize) {
    // The longest escape: `\u{10ffff}`.
    const LONGEST: usize = 10;
    // The escape that `at` falls inside of, if any: where it starts and
    // where it ends.
    let around = |at: usize| {
        let lo = floor_boundary(text, at.saturating_sub(LONGEST - 1));
        let p = lo + text[lo..at].rfind('\\')?;
        let end = p + text[p..].find('}')? + 1;
        (text[p..].starts_with("\\u{") && end - p <= LONGEST && end > at).then_some((p, end))
    };
    let from = around(from).map_or(from, |(p, _)| p);
    let to = around(to).map_or(to, |(_, end)| end);
    (from, to)
}

/// The byte offset nearest at or below `i` that is a char boundary.
fn floor_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
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
pub(crate) fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
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
    fn bounded_texts() {
        let long = "x".repeat(1000);
        for (text, want) in [
            ("plain `value` text", "plain `value` text".to_owned()),
            ("`a\nb` and \r\0", "`a\\nb` and \\r\\u{0}".to_owned()),
            ("\u{1b}[31m", "\\u{1b}[31m".to_owned()),
            (
                &format!("name `{long}` is bad"),
                format!("name `{}…` is bad", "x".repeat(MAX_SHOWN_VALUE)),
            ),
            ("`ééé`", "`ééé`".to_owned()),
            ("odd ` backtick", "odd ` backtick".to_owned()),
        ] {
            assert_eq!(bounded(text), want, "{text:.80}");
        }
        let flood = bounded(&long);
        assert_eq!(flood.chars().count(), MAX_TEXT + 1);
        assert!(flood.ends_with('…'));
    }

    #[test]
    fn the_source_is_shown_escaped_with_its_labels_moved() {
        let text = "a // \u{1b}]0;x\u{7}\u{9b}\u{200b}\r\nbogus 1\r\n".to_owned();
        let at = text.find("bogus").unwrap();
        let p = Problem::new(
            ProblemKind::UnknownNode,
            SourceSpan::from((at, 5)),
            "m",
            "l",
            "h",
        )
        .also(SourceSpan::from((0, 1)), "a")
        .also(SourceSpan::from((6, 2)), "after ESC");
        let e = ConfigError::new("x\u{1b}[2J.kdl", text, vec![p]);
        let shown = &e.src.text;
        assert_eq!(
            shown,
            "a // \\u{1b}]0;x\\u{7}\\u{9b}\\u{200b}\r\nbogus 1\r\n"
        );
        let span = e.problems[0].span;
        assert_eq!(&shown[span.offset()..span.offset() + span.len()], "bogus");
        assert_eq!(e.problems[0].also[0].0, SourceSpan::from((0, 1)));
        // `]0` after the escaped ESC: moved by the escape's 5 more bytes,
        // and its column is the file's (7th character, 0-based 6).
        let after = e.problems[0].also[1].0;
        assert_eq!(&shown[after.offset()..after.offset() + after.len()], "]0");
        let read = miette::SourceCode::read_span(&e.src, &after, 0, 0).unwrap();
        assert_eq!(read.column(), 6);
        assert_eq!(e.to_string(), "x\\u{1b}[2J.kdl has 1 problem");
    }

    #[test]
    fn a_window_cuts_no_escape() {
        let text = "ab\\u{1b}cd\\u{200b}ef";
        for (from, to, want) in [
            (0, 2, "ab"),
            (0, 5, "ab\\u{1b}"),
            (4, 10, "\\u{1b}cd"),
            (3, 14, "\\u{1b}cd\\u{200b}"),
            (8, 18, "cd\\u{200b}"),
            (7, 13, "\\u{1b}cd\\u{200b}"),
            (2, 20, "\\u{1b}cd\\u{200b}ef"),
        ] {
            let (f, t) = whole_escapes(text, from, to);
            assert_eq!(&text[f..t], want, "{from}..{to}");
        }
    }

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

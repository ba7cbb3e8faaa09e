//! Stage zero: kdl's syntax diagnostics → moorline problems. kdl reports
//! one real error and then the errors its recovery stumbles into (an
//! unclosed block, "expected end of document"); this keeps the real ones,
//! says what they mean for someone who writes KDL v2 by hand, and drops the
//! echoes, so that one mistake reads as one problem.

use kdl::KdlDiagnostic;
use miette::SourceSpan;

use super::error::{Problem, ProblemKind};

const GENERIC_HELP: &str = "moorline reads KDL v2: strings in double quotes, booleans as #true/#false, `;` between nodes on one line";

/// Messages kdl gives for the consequences of an earlier error.
fn is_echo(message: &str) -> bool {
    message.starts_with("No closing '}'")
        || message.starts_with("Closing '}' was not found")
        || message.starts_with("Expected end of document")
}

/// Turns kdl's diagnostics for `text` into problems, most specific first
/// per location, echoes removed.
pub(crate) fn problems(text: &str, diagnostics: Vec<KdlDiagnostic>) -> Vec<Problem> {
    let mut all: Vec<(bool, Problem)> = diagnostics
        .into_iter()
        .map(|d| {
            let message = d.message.unwrap_or_else(|| "invalid KDL syntax".to_owned());
            (
                is_echo(&message),
                explain(text, d.span, &message, d.label.as_deref(), d.help),
            )
        })
        .collect();
    if all.iter().any(|(echo, _)| !echo) {
        all.retain(|(echo, _)| !echo);
    } else if all.iter().any(|(_, p)| p.message.starts_with("this `{`")) {
        // "not closed" twice: once for the brace, once for the block.
        all.retain(|(_, p)| p.message.starts_with("this `{`"));
    }
    let mut all: Vec<Problem> = all.into_iter().map(|(_, p)| p).collect();
    // One problem per line: what follows a broken value on the same line
    // is kdl resynchronising, not a second mistake.
    all.sort_by_key(|p| p.span.offset());
    let line_starts: Vec<usize> = text
        .bytes()
        .enumerate()
        .filter(|(_, b)| *b == b'\n')
        .map(|(i, _)| i + 1)
        .collect();
    let line_of = |offset: usize| line_starts.partition_point(|s| *s <= offset);
    let mut lines = std::collections::HashSet::new();
    all.retain(|p| lines.insert(line_of(p.span.offset())));
    all
}

/// The source text at `span`, or "" when it is not on char boundaries.
fn at(text: &str, span: SourceSpan) -> &str {
    text.get(span.offset()..span.offset() + span.len())
        .unwrap_or("")
}

/// The bare word starting at `offset`: up to whitespace or a KDL delimiter.
fn word_at(text: &str, offset: usize) -> &str {
    let rest = text.get(offset..).unwrap_or("");
    let end = rest
        .find(|c: char| c.is_whitespace() || matches!(c, ';' | '{' | '}' | '(' | ')' | '='))
        .unwrap_or(rest.len());
    &rest[..end]
}

/// Where the bare word around `offset` begins.
fn start_of_word(text: &str, offset: usize) -> usize {
    let before = text.get(..offset).unwrap_or("");
    before
        .char_indices()
        .rev()
        .take_while(|(_, c)| {
            !c.is_whitespace() && !matches!(c, ';' | '{' | '}' | '(' | ')' | '=' | '"')
        })
        .last()
        .map_or(offset, |(i, _)| i)
}

fn explain(
    text: &str,
    span: SourceSpan,
    message: &str,
    label: Option<&str>,
    help: Option<String>,
) -> Problem {
    let word = word_at(text, span.offset());
    let problem = |message: String, label: &str, help: String| {
        Problem::new(ProblemKind::Syntax, span, message, label, help)
    };
    if let v1 @ ("true" | "false" | "null") = word {
        return Problem::new(
            ProblemKind::Syntax,
            SourceSpan::from((span.offset(), v1.len())),
            format!("`{v1}` is KDL v1 syntax"),
            "KDL v1 keyword",
            format!("KDL v2 writes #{v1}"),
        );
    }
    if message.starts_with("No closing '}'") {
        return problem(
            "this `{` is never closed".to_owned(),
            "opened here",
            "add the matching `}` after the last child node of this block".to_owned(),
        );
    }
    if message.starts_with("Expected end of document") && at(text, span).starts_with('}') {
        return problem(
            "unexpected `}`: no block is open here".to_owned(),
            "nothing to close",
            "remove it, or add the `{` it was meant to close".to_owned(),
        );
    }
    if message.starts_with("Unexpected newline in single-line quoted string") {
        return problem(
            "this string is not closed before the end of the line".to_owned(),
            "string starts here",
            "end it with `\"` on the same line, or use a multi-line string \"\"\"...\"\"\""
                .to_owned(),
        );
    }
    if message.starts_with("Expected quoted string") {
        let quoted = at(text, span);
        // KDL v2 refuses control and direction characters written as they
        // are (escaped, they are refused by moorline's own checks).
        if let Some(c) = quoted
            .chars()
            .find(|c| crate::visible::is_invisible(*c) && !matches!(c, '\n' | '\r' | '\t'))
        {
            return problem(
                format!(
                    "this string holds {} written as it is",
                    crate::visible::describe(c)
                ),
                "invisible character in this string",
                "remove it: KDL v2 does not allow it in a file, and moorline refuses control and invisible characters in every value".to_owned(),
            );
        }
        if let Some(esc) = bad_escape(quoted) {
            return problem(
                format!("invalid escape `{esc}` in a string"),
                "bad escape",
                "KDL v2 strings accept \\n \\t \\r \\\\ \\\" \\b \\f \\s and \\u{...}; write \\\\ for a backslash, or use a raw string #\"...\"#".to_owned(),
            );
        }
        return problem(
            "invalid quoted string".to_owned(),
            "this string",
            "check that it ends with `\"` and uses only the escapes \\n \\t \\r \\\\ \\\" \\b \\f \\s \\u{...}".to_owned(),
        );
    }
    if (message.starts_with("Expected identifier string")
        || message.starts_with("Found invalid node name"))
        && !word.is_empty()
    {
        // kdl points after a leading `/` or digit; the user wrote the
        // whole word.
        let start = start_of_word(text, span.offset());
        let word = word_at(text, start);
        return Problem::new(
            ProblemKind::Syntax,
            SourceSpan::from((start, word.len())),
            format!("`{word}` must be quoted"),
            "not a valid bare word",
            format!(
                "write \"{}\" (a bare word cannot start with a digit or contain `/`, `\\`, quotes or brackets)",
                word.replace('"', "\\\"")
            ),
        );
    }
    problem(
        message.to_owned(),
        label.unwrap_or("here"),
        help.unwrap_or_else(|| GENERIC_HELP.to_owned()),
    )
}

/// The first escape in a quoted string that KDL v2 does not accept.
fn bad_escape(quoted: &str) -> Option<String> {
    let mut chars = quoted.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            continue;
        }
        match chars.next() {
            Some('n' | 't' | 'r' | '\\' | '"' | 'b' | 'f' | 's' | 'u') => {}
            Some(c) if c.is_whitespace() => {}
            Some(c) => return Some(format!("\\{c}")),
            None => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_escapes() {
        for (s, want) in [
            (r#""a\nb""#, None),
            (r#""a\qb""#, Some(r"\q")),
            (r#""C:\Users""#, Some(r"\U")),
            (r#""\u{41}""#, None),
            (r#""a\/b""#, Some(r"\/")),
        ] {
            assert_eq!(bad_escape(s).as_deref(), want, "{s}");
        }
    }
}

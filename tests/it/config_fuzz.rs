//! Mutations of `pakashop.kdl` never make `config::parse` panic: it returns
//! a config or a non-empty list of problems, each pointing inside the text,
//! and the report renders (plain and in colour) without a panic and within
//! a bounded size.
//!
//! Cases: `PROPTEST_CASES` if set, else 10,000 under `CI`, else 1,000.

use miette::Diagnostic;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config as ProptestConfig, FileFailurePersistence, TestCaseError};

const PAKASHOP: &str = include_str!("../../pakashop.kdl");

/// Tokens that unbalance or confuse KDL.
const TOKENS: &[&str] = &[
    "{",
    "}",
    "\"",
    "#",
    ";",
    "=",
    "\\",
    "/*",
    "*/",
    "//",
    "\n",
    "#true",
    "#null",
    "r#\"",
    "-",
    "0x",
    "1e999",
    "{service}",
    "{",
    "é",
    "\u{feff}",
    // Hostile: escapes that make control characters, and what makes kdl
    // recurse.
    "\\n",
    "\\r",
    "\\u{0}",
    "\\u{1b}",
    "\u{1b}",
    "\u{85}",
    "\u{200b}",
    "\\u{200b}",
    "\u{202e}",
    "\u{7}",
    ")",
    "(t)",
    "/-",
    "{}",
    "%h",
];

#[derive(Debug, Clone)]
enum Mutation {
    DeleteLine(Index),
    DuplicateLine(Index),
    Truncate(Index),
    ReplaceBytes(Index, Vec<char>),
    SwapLines(Index, Index),
    InsertToken(Index, Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::DeleteLine),
        any::<Index>().prop_map(Mutation::DuplicateLine),
        any::<Index>().prop_map(Mutation::Truncate),
        (
            any::<Index>(),
            prop::collection::vec(
                prop_oneof![4 => proptest::char::range(' ', '~'), 1 => any::<char>()],
                1..6
            )
        )
            .prop_map(|(i, c)| Mutation::ReplaceBytes(i, c)),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::InsertToken(a, b)),
    ]
}

/// The byte offset nearest below `i` that is a char boundary.
fn floor_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
    match m {
        Mutation::DeleteLine(i) if !lines.is_empty() => {
            lines.remove(i.index(lines.len()));
            lines.concat()
        }
        Mutation::DuplicateLine(i) if !lines.is_empty() => {
            let i = i.index(lines.len());
            lines.insert(i, lines[i]);
            lines.concat()
        }
        Mutation::SwapLines(a, b) if !lines.is_empty() => {
            let n = lines.len();
            lines.swap(a.index(n), b.index(n));
            lines.concat()
        }
        Mutation::Truncate(i) => {
            let at = floor_boundary(text, i.index(text.len() + 1));
            text[..at].to_owned()
        }
        Mutation::ReplaceBytes(i, chars) => {
            let start = floor_boundary(text, i.index(text.len() + 1));
            let mut end = start;
            for _ in chars {
                end = text[end..]
                    .chars()
                    .next()
                    .map_or(end, |c| end + c.len_utf8());
            }
            let with: String = chars.iter().collect();
            format!("{}{with}{}", &text[..start], &text[end..])
        }
        Mutation::InsertToken(i, t) => {
            let at = floor_boundary(text, i.index(text.len() + 1));
            let token = TOKENS[t.index(TOKENS.len())];
            format!("{}{token}{}", &text[..at], &text[at..])
        }
        _ => text.to_owned(),
    }
}

fn cases() -> u32 {
    if let Some(n) = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        n
    } else if std::env::var_os("CI").is_some() {
        10_000
    } else {
        1_000
    }
}

/// The largest report a mutated pakashop.kdl may render to: 50 problems of
/// a few source lines each, then a count.
const MAX_REPORT_BYTES: usize = 256 * 1024;

fn check(mutations: &[Mutation]) -> Result<(), TestCaseError> {
    let mut text = PAKASHOP.to_owned();
    for m in mutations {
        text = apply(&text, m);
    }
    if let Err(err) = moorline::config::parse("pakashop.kdl", &text) {
        prop_assert!(!err.problems.is_empty(), "an error without problems");
        // Labels point into the text as shown, its invisible characters escaped.
        let shown = err.src.text.len();
        for p in &err.problems {
            for l in p.labels().into_iter().flatten() {
                prop_assert!(
                    l.offset() + l.len() <= shown,
                    "label {:?} past the end ({} bytes): {}",
                    l.inner(),
                    shown,
                    p
                );
            }
        }
        let plain = moorline::report::plain(&err);
        prop_assert!(
            !plain
                .chars()
                .any(|c| moorline::visible::is_invisible(c) && c != '\n'),
            "an invisible character in the report"
        );
        let mut fancy = String::new();
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode())
            .with_width(120)
            .render_report(&mut fancy, &err)
            .map_err(|e| TestCaseError::fail(format!("colour rendering failed: {e}")))?;
        for (what, report) in [("plain", &plain), ("colour", &fancy)] {
            prop_assert!(
                report.len() <= MAX_REPORT_BYTES,
                "{what} report of {} bytes",
                report.len()
            );
            let shown = report.matches("moorline::config::").count();
            prop_assert!(
                shown <= moorline::config::error::MAX_PROBLEMS_SHOWN + 2,
                "{what} report shows {shown} codes"
            );
        }
    }
    Ok(())
}

fn config() -> ProptestConfig {
    ProptestConfig {
        // Two halves, so the test harness runs them on two cores: one parse
        // of pakashop.kdl costs ~3 ms even optimised (kdl 6).
        cases: cases().div_ceil(2),
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn mutated_pakashop_never_panics(mutations in prop::collection::vec(mutation(), 1..4)) {
        check(&mutations)?;
    }

    #[test]
    fn mutated_pakashop_never_panics_too(mutations in prop::collection::vec(mutation(), 1..4)) {
        check(&mutations)?;
    }
}

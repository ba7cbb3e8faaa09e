//! Characters a reader cannot see, in one place. In: text from outside
//! moorline (a configuration, a path in a commit, an installed unit file);
//! out: whether a character is invisible, its name, and the text with every
//! such character written as a visible escape. Guarantees: what [`escape`]
//! and [`escape_lines`] return holds no character that a terminal acts on
//! (ESC sequences, BEL, C1 controls) or that changes how text reads without
//! being seen (bidirectional overrides, zero-width characters), so a value
//! can neither retitle a terminal, clear a log nor hide from a reviewer.

use std::fmt::Write as _;

/// Unicode's format characters (general category Cf, Unicode 16): they
/// draw nothing, yet change what a string is (a zero-width space in a
/// path opens another file) or how it reads (a right-to-left override
/// reverses what follows: "Trojan Source", CVE-2021-42574). Sorted,
/// inclusive.
const FORMAT: &[(char, char)] = &[
    ('\u{00AD}', '\u{00AD}'),
    ('\u{0600}', '\u{0605}'),
    ('\u{061C}', '\u{061C}'),
    ('\u{06DD}', '\u{06DD}'),
    ('\u{070F}', '\u{070F}'),
    ('\u{0890}', '\u{0891}'),
    ('\u{08E2}', '\u{08E2}'),
    ('\u{180E}', '\u{180E}'),
    ('\u{200B}', '\u{200F}'),
    ('\u{202A}', '\u{202E}'),
    ('\u{2060}', '\u{2064}'),
    ('\u{2066}', '\u{206F}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFF9}', '\u{FFFB}'),
    ('\u{110BD}', '\u{110BD}'),
    ('\u{110CD}', '\u{110CD}'),
    ('\u{13430}', '\u{1343F}'),
    ('\u{1BCA0}', '\u{1BCA3}'),
    ('\u{1D173}', '\u{1D17A}'),
    ('\u{E0001}', '\u{E0001}'),
    ('\u{E0020}', '\u{E007F}'),
];

/// Whether `c` is a Unicode format character (category Cf): invisible,
/// and never needed in a name, path, user, variable or command.
pub(crate) fn is_format(c: char) -> bool {
    let i = FORMAT.partition_point(|(_, hi)| *hi < c);
    FORMAT.get(i).is_some_and(|(lo, _)| *lo <= c)
}

/// Whether `c` is not shown as itself on a terminal: a control character
/// (C0, DEL, C1), a format character ([`is_format`]) or the line and
/// paragraph separators U+2028 and U+2029.
pub fn is_invisible(c: char) -> bool {
    c.is_control() || is_format(c) || matches!(c, '\u{2028}' | '\u{2029}')
}

/// Appends the visible form of an invisible character: `\n`, `\r`, `\t`,
/// else `\u{1b}` (hex, as Rust and KDL v2 write it, so a configuration's
/// line shown this way reads as the same KDL).
pub(crate) fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        // Writing to a String cannot fail.
        c => {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        }
    }
}

/// `s` with every invisible character escaped (`\u{1b}`, `\n`): for a
/// value shown on one line of a message.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if is_invisible(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether [`escape_lines`] keeps `c` at byte `i` of `s` as it is: a
/// newline, a tab, and a carriage return that ends a line (`\r\n`).
fn keeps_layout(s: &str, i: usize, c: char) -> bool {
    c == '\n' || c == '\t' || (c == '\r' && s.as_bytes().get(i + 1) == Some(&b'\n'))
}

/// `s` with every invisible character escaped but the ones that lay out
/// lines (newline, tab, `\r\n`): for text shown as lines (a source file,
/// a diff).
pub(crate) fn escape_lines(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, c) in s.char_indices() {
        if is_invisible(c) && !keeps_layout(s, i, c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    out
}

/// Where byte offsets of `s` are in [`escape_lines`]`(s)`: for each of
/// `points` (sorted), its offset in the escaped text, and how many more
/// characters than the ones they stand for the escapes before it on its
/// line take (so that a column can be given as in `s`). One pass over
/// `s`, nothing kept per escaped character: a hostile file holds millions.
pub(crate) fn escaped_offsets(s: &str, points: &[usize]) -> Vec<(usize, usize)> {
    let mut out = Vec::with_capacity(points.len());
    let mut next = 0;
    let (mut added, mut line_added) = (0, 0);
    let mut buf = String::new();
    for (i, c) in s.char_indices() {
        while let Some(&at) = points.get(next).filter(|at| **at <= i) {
            out.push((at + added, line_added));
            next += 1;
        }
        if c == '\n' {
            line_added = 0;
        } else if is_invisible(c) && !keeps_layout(s, i, c) {
            buf.clear();
            push_escaped(&mut buf, c);
            added += buf.len() - c.len_utf8();
            line_added += buf.len() - 1;
        }
    }
    out.extend(points[next..].iter().map(|at| (at + added, line_added)));
    out
}

/// A short name for the invisible characters people meet, for messages
/// ("U+200B ZERO WIDTH SPACE"); the code point alone for the others.
pub(crate) fn describe(c: char) -> String {
    let name = match c {
        '\u{00AD}' => "SOFT HYPHEN",
        '\u{061C}' => "ARABIC LETTER MARK",
        '\u{180E}' => "MONGOLIAN VOWEL SEPARATOR",
        '\u{200B}' => "ZERO WIDTH SPACE",
        '\u{200C}' => "ZERO WIDTH NON-JOINER",
        '\u{200D}' => "ZERO WIDTH JOINER",
        '\u{200E}' => "LEFT-TO-RIGHT MARK",
        '\u{200F}' => "RIGHT-TO-LEFT MARK",
        '\u{202A}' => "LEFT-TO-RIGHT EMBEDDING",
        '\u{202B}' => "RIGHT-TO-LEFT EMBEDDING",
        '\u{202C}' => "POP DIRECTIONAL FORMATTING",
        '\u{202D}' => "LEFT-TO-RIGHT OVERRIDE",
        '\u{202E}' => "RIGHT-TO-LEFT OVERRIDE",
        '\u{2060}' => "WORD JOINER",
        '\u{2061}'..='\u{2064}' => "INVISIBLE OPERATOR",
        '\u{2066}'..='\u{2069}' => "DIRECTIONAL ISOLATE",
        '\u{2028}' => "LINE SEPARATOR",
        '\u{2029}' => "PARAGRAPH SEPARATOR",
        '\u{FEFF}' => "ZERO WIDTH NO-BREAK SPACE",
        '\u{E0000}'..='\u{E007F}' => "TAG",
        _ => "",
    };
    if name.is_empty() {
        format!("U+{:04X}", u32::from(c))
    } else {
        format!("U+{:04X} {name}", u32::from(c))
    }
}

/// The first invisible format character of `s`, with its position
/// (1-based, in characters).
pub(crate) fn first_format(s: &str) -> Option<(usize, char)> {
    s.chars()
        .enumerate()
        .find(|(_, c)| is_format(*c))
        .map(|(i, c)| (i + 1, c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reads back what [`escape`] wrote: the inverse for any text without
    /// a backslash of its own. (A literal `\u{1b}` in the text shows the
    /// same as an ESC; in KDL both mean the same character, which is why
    /// this form was chosen over doubling every backslash of a source.)
    fn unescape(s: &str) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(at) = rest.find('\\') {
            out.push_str(&rest[..at]);
            rest = &rest[at..];
            let (c, len) = match rest.as_bytes().get(1) {
                Some(b'n') => ('\n', 2),
                Some(b'r') => ('\r', 2),
                Some(b't') => ('\t', 2),
                Some(b'u') => {
                    let end = rest.find('}').expect("closed escape");
                    let code = u32::from_str_radix(&rest[3..end], 16).expect("hex");
                    (char::from_u32(code).expect("a char"), end + 1)
                }
                _ => panic!("stray backslash in {s:?}"),
            };
            out.push(c);
            rest = &rest[len..];
        }
        out.push_str(rest);
        out
    }

    #[test]
    fn format_characters_are_unicode_category_cf() {
        for c in [
            '\u{AD}',
            '\u{200B}',
            '\u{200F}',
            '\u{202E}',
            '\u{2060}',
            '\u{2064}',
            '\u{FEFF}',
            '\u{E0001}',
            '\u{E0041}',
            '\u{E007F}',
            '\u{1343F}',
        ] {
            assert!(is_format(c), "{c:?}");
            assert!(is_invisible(c), "{c:?}");
        }
        for c in [
            'a',
            ' ',
            '/',
            'é',
            '\u{2065}',
            '\u{2070}',
            '\u{200A}',
            '\u{E0080}',
            '\u{FFFC}',
        ] {
            assert!(!is_format(c), "{c:?}");
        }
        for w in FORMAT.windows(2) {
            assert!(w[0].1 < w[1].0, "sorted and apart: {w:?}");
        }
    }

    #[test]
    fn escapes_are_visible() {
        for (text, want) in [
            ("plain", "plain"),
            ("\u{1b}]0;title\u{7}", "\\u{1b}]0;title\\u{7}"),
            ("a\nb\tc\r\0", "a\\nb\\tc\\r\\u{0}"),
            ("\u{85}\u{9b}\u{7f}", "\\u{85}\\u{9b}\\u{7f}"),
            ("/etc/app/prod\u{200b}.env", "/etc/app/prod\\u{200b}.env"),
            ("\u{202e}abc", "\\u{202e}abc"),
        ] {
            assert_eq!(escape(text), want, "{text:?}");
        }
        assert_eq!(
            escape_lines("a\tb\r\nc\rd\u{1b}[2J\n"),
            "a\tb\r\nc\\rd\\u{1b}[2J\n"
        );
        assert_eq!(describe('\u{200b}'), "U+200B ZERO WIDTH SPACE");
        assert_eq!(describe('\u{600}'), "U+0600");
        assert_eq!(first_format("ab\u{200b}c"), Some((3, '\u{200b}')));
        assert_eq!(first_format("abc\u{1b}"), None);
    }

    proptest! {
        #[test]
        fn escape_round_trips_and_leaves_nothing_invisible(
            s in "[a-z/ .é\u{0}-\u{1f}\u{7f}-\u{9f}\u{200b}-\u{200f}\u{202a}-\u{202e}\u{2028}\u{feff}\u{e0041}]{0,40}"
        ) {
            let e = escape(&s);
            prop_assert!(!e.chars().any(is_invisible), "{:?}", e);
            prop_assert_eq!(unescape(&e), s.clone());
            let l = escape_lines(&s);
            prop_assert!(
                l.char_indices().all(|(i, c)| !is_invisible(c) || keeps_layout(&l, i, c)),
                "{:?}", l
            );
            prop_assert_eq!(unescape(&l.replace('\n', "\\n").replace('\t', "\\t").replace('\r', "\\r")), s.clone());
            // Every offset moves to where its character is in the escaped
            // text, and the column there counts as in `s`.
            let points: Vec<usize> = s.char_indices().map(|(i, _)| i).chain([s.len()]).collect();
            let moved = escaped_offsets(&s, &points);
            for ((i, c), (at, extra)) in s.char_indices().zip(&moved) {
                let shown: String = l[*at..].chars().next().into_iter().collect();
                if is_invisible(c) && !keeps_layout(&s, i, c) {
                    prop_assert!(shown == "\\", "{:?} at {}", l, at);
                } else {
                    prop_assert_eq!(shown, c.to_string());
                }
                let column = |t: &str, at: usize| {
                    let line = t[..at].rfind('\n').map_or(0, |n| n + 1);
                    t[line..at].chars().count()
                };
                prop_assert_eq!(column(&l, *at) - extra, column(&s, i));
            }
            prop_assert_eq!(moved.last().map(|m| m.0), Some(l.len()));
        }
    }
}

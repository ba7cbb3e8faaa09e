//! A reader for systemd unit files: text → sections, `Key=Value` entries and
//! decoded values, following systemd's own parser (`conf-parser.c`,
//! `extract-word.c`, `load-fragment.c`; rules in systemd.syntax(7)).
//!
//! It exists so that what moorline writes can be checked against what
//! systemd will read (the round-trip tests of [`super`]), and so that an
//! installed file can be redacted entry by entry ([`super::redact_text`]).
//! It is strict where systemd only warns and ignores a line (an assignment
//! outside a section, a line without `=`, unbalanced quotes, an unknown
//! escape or specifier): a writer bug then shows as an error, not as a
//! silently different unit.

use std::ops::Range;

/// systemd's `LONG_LINE_MAX`: a longer line (or continued line) makes the
/// whole file fail to load.
pub(crate) const LONG_LINE_MAX: usize = 1024 * 1024;

/// systemd's `WHITESPACE`: what it strips around keys and values and what
/// separates words.
const WHITESPACE: &[char] = &[' ', '\t', '\n', '\r'];

/// Why a unit file or a value does not read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("line {0}: longer than systemd's limit of {LONG_LINE_MAX} bytes")]
    TooLong(usize),
    #[error("line {0}: invalid section header")]
    BadSection(usize),
    #[error("line {0}: assignment outside of any section")]
    OutsideSection(usize),
    #[error("line {0}: no `=` in an assignment")]
    MissingEquals(usize),
    #[error("line {0}: no key before `=`")]
    MissingKey(usize),
    #[error("unbalanced quotes")]
    Unbalanced,
    #[error("unknown or invalid escape sequence")]
    BadEscape,
    #[error("a specifier `%{0}` (systemd would expand it)")]
    Specifier(char),
    #[error("a lone `%` at the end")]
    LonePercent,
    #[error("a variable reference (systemd would expand it)")]
    Variable,
    #[error("a `;` command separator")]
    Separator,
    #[error("the program `{0}` starts with a prefix systemd interprets")]
    Prefix(String),
    #[error("an empty command line")]
    EmptyCommand,
    #[error("`{0}` is not a NAME=value assignment")]
    NotAssignment(String),
}

/// One logical line: physical lines joined by trailing backslashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Logical {
    /// The joined text (each joining backslash replaced by a space, as
    /// systemd does), not yet stripped.
    pub(crate) text: String,
    /// Physical lines (0-based) it was read from, comments inside included.
    pub(crate) lines: Range<usize>,
}

/// One `Key=Value` assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) section: String,
    pub(crate) key: String,
    /// Raw value: whitespace around it stripped, nothing decoded.
    pub(crate) value: String,
    pub(crate) lines: Range<usize>,
}

/// Splits text into physical lines as systemd's `read_line()` does: `\n`,
/// `\r`, `\0` and their combinations (`\r\n`, `\n\r`, `\r\n\0`, …) each end
/// one line; a NUL always ends it.
pub(crate) fn physical_lines(text: &str) -> Vec<&str> {
    const NUL: u8 = 1;
    const LF: u8 = 2;
    const CR: u8 = 4;
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        let mut end = None;
        let mut seen = 0u8;
        while i < bytes.len() {
            let eol = match bytes[i] {
                b'\0' => NUL,
                b'\n' => LF,
                b'\r' => CR,
                _ => 0,
            };
            if seen & NUL != 0 || (eol == 0 && seen != 0) || (eol != 0 && seen & eol != 0) {
                break;
            }
            if eol == 0 {
                i += 1;
                continue;
            }
            end.get_or_insert(i);
            seen |= eol;
            i += 1;
        }
        out.push(&text[start..end.unwrap_or(i)]);
    }
    out
}

/// Physical lines → logical lines, as systemd's `config_parse()` loop: a
/// line whose first non-blank character is `#` or `;` is a comment (also
/// inside a continuation), and a line ending in an unescaped backslash is
/// continued by the next non-comment line.
pub(crate) fn logical_lines(text: &str) -> Result<Vec<Logical>, ReadError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    let mut continuation: Option<(String, usize)> = None;
    let physical = physical_lines(text);
    for (i, line) in physical.iter().enumerate() {
        if line.len() > LONG_LINE_MAX {
            return Err(ReadError::TooLong(i + 1));
        }
        let stripped = line.trim_start_matches(WHITESPACE);
        if stripped.starts_with(['#', ';']) {
            continue;
        }
        let (mut joined, start) = match continuation.take() {
            Some((mut c, start)) => {
                if c.len() + line.len() > LONG_LINE_MAX {
                    return Err(ReadError::TooLong(i + 1));
                }
                c.push_str(line);
                (c, start)
            }
            None => ((*line).to_owned(), i),
        };
        let trailing = joined.len() - joined.trim_end_matches('\\').len();
        if trailing % 2 == 1 {
            joined.pop();
            joined.push(' ');
            continuation = Some((joined, start));
            continue;
        }
        out.push(Logical {
            text: joined,
            lines: start..i + 1,
        });
    }
    if let Some((text, start)) = continuation {
        out.push(Logical {
            text,
            lines: start..physical.len(),
        });
    }
    Ok(out)
}

/// `Key=Value` of one logical line (both stripped), `None` for a blank line
/// or a section header.
pub(crate) fn split_assignment(line: &str) -> Option<(&str, &str)> {
    let l = line.trim_matches(WHITESPACE);
    if l.is_empty() || l.starts_with('[') {
        return None;
    }
    let (k, v) = l.split_once('=')?;
    Some((k.trim_matches(WHITESPACE), v.trim_matches(WHITESPACE)))
}

/// Every assignment of a unit file, in order, with its section.
pub(crate) fn parse(text: &str) -> Result<Vec<Entry>, ReadError> {
    let mut section: Option<String> = None;
    let mut out = Vec::new();
    for logical in logical_lines(text)? {
        let n = logical.lines.start + 1;
        let l = logical.text.trim_matches(WHITESPACE);
        if l.is_empty() {
            continue;
        }
        if let Some(rest) = l.strip_prefix('[') {
            let name = rest.strip_suffix(']').ok_or(ReadError::BadSection(n))?;
            if name.is_empty() || name.contains(['[', ']']) {
                return Err(ReadError::BadSection(n));
            }
            section = Some(name.to_owned());
            continue;
        }
        let Some(current) = &section else {
            return Err(ReadError::OutsideSection(n));
        };
        let (key, value) = split_assignment(l).ok_or(ReadError::MissingEquals(n))?;
        if key.is_empty() {
            return Err(ReadError::MissingKey(n));
        }
        out.push(Entry {
            section: current.clone(),
            key: key.to_owned(),
            value: value.to_owned(),
            lines: logical.lines,
        });
    }
    Ok(out)
}

/// Resolves `%%` to `%`; any other specifier is an error (moorline never
/// writes one, and what it would expand to depends on the host).
pub(crate) fn unescape_specifiers(s: &str) -> Result<String, ReadError> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some(other) => return Err(ReadError::Specifier(other)),
            None => return Err(ReadError::LonePercent),
        }
    }
    Ok(out)
}

/// Splits a value into words as systemd's `extract_first_word()` with
/// `EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE`: whitespace separates words, single
/// or double quotes group (and are removed), C-style escapes are decoded
/// inside and outside quotes.
pub(crate) fn words(s: &str) -> Result<Vec<String>, ReadError> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some((w, r)) = next_word(rest)? {
        out.push(w);
        rest = r;
    }
    Ok(out)
}

/// The next word of `s` and what follows it, `None` when only whitespace is left.
fn next_word(s: &str) -> Result<Option<(String, &str)>, ReadError> {
    let s = s.trim_start_matches(WHITESPACE);
    if s.is_empty() {
        return Ok(None);
    }
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut iter = s.char_indices().peekable();
    while let Some((i, c)) = iter.next() {
        match (quote, c) {
            (_, '\\') => {
                let tail = &s[i + 1..];
                let (decoded, used) = cunescape_one(tail)?;
                word.push(decoded);
                // Skip the characters the escape used.
                let stop = i + 1 + used;
                while iter.peek().is_some_and(|(j, _)| *j < stop) {
                    iter.next();
                }
            }
            (Some(q), c) if c == q => quote = None,
            (None, '"' | '\'') => quote = Some(c),
            (None, c) if WHITESPACE.contains(&c) => return Ok(Some((word, &s[i..]))),
            (_, c) => word.push(c),
        }
    }
    if quote.is_some() {
        return Err(ReadError::Unbalanced);
    }
    Ok(Some((word, "")))
}

/// One C-style escape (systemd's `cunescape_one()`), `s` starting after
/// the backslash: the character and how many bytes of `s` it used.
fn cunescape_one(s: &str) -> Result<(char, usize), ReadError> {
    let mut chars = s.chars();
    let c = chars.next().ok_or(ReadError::BadEscape)?;
    let simple = match c {
        'a' => Some('\u{7}'),
        'b' => Some('\u{8}'),
        'f' => Some('\u{c}'),
        'n' => Some('\n'),
        'r' => Some('\r'),
        't' => Some('\t'),
        'v' => Some('\u{b}'),
        '\\' => Some('\\'),
        '"' => Some('"'),
        '\'' => Some('\''),
        's' => Some(' '),
        _ => None,
    };
    if let Some(d) = simple {
        return Ok((d, 1));
    }
    let (radix, len, skip) = match c {
        'x' => (16, 2, 1),
        'u' => (16, 4, 1),
        'U' => (16, 8, 1),
        '0'..='7' => (8, 3, 0),
        _ => return Err(ReadError::BadEscape),
    };
    let digits = s.get(skip..skip + len).ok_or(ReadError::BadEscape)?;
    let n = u32::from_str_radix(digits, radix).map_err(|_| ReadError::BadEscape)?;
    // systemd refuses escapes that decode to NUL.
    let d = char::from_u32(n)
        .filter(|d| *d != '\0')
        .ok_or(ReadError::BadEscape)?;
    Ok((d, skip + len))
}

/// Decodes an `Environment=` value: its words (quotes and escapes
/// removed), specifiers resolved, each split at its first `=`.
pub(crate) fn environment(value: &str) -> Result<Vec<(String, String)>, ReadError> {
    words(value)?
        .into_iter()
        .map(|w| {
            let w = unescape_specifiers(&w)?;
            match w.split_once('=') {
                Some((n, v)) if !n.is_empty() => Ok((n.to_owned(), v.to_owned())),
                _ => Err(ReadError::NotAssignment(w)),
            }
        })
        .collect()
}

/// Decodes an `ExecStart=` value into the argv the process receives: one
/// command (a `;` separator is an error), no prefix on the program,
/// specifiers resolved, `$$` → `$` (any variable reference is an error).
pub(crate) fn exec(value: &str) -> Result<Vec<String>, ReadError> {
    let mut argv = Vec::new();
    let mut rest = value.trim_start_matches(WHITESPACE);
    loop {
        rest = rest.trim_start_matches(WHITESPACE);
        let alone = |t: &str| t.is_empty() || t.starts_with(WHITESPACE);
        // systemd checks the raw text for a separator before unquoting.
        if let Some(t) = rest.strip_prefix(';')
            && alone(t)
        {
            return Err(ReadError::Separator);
        }
        let (word, r) = if let Some(t) = rest.strip_prefix("\\;")
            && alone(t)
            && !argv.is_empty()
        {
            (";".to_owned(), t)
        } else {
            match next_word(rest)? {
                Some(x) => x,
                None => break,
            }
        };
        rest = r;
        let word = unescape_specifiers(&word)?;
        if argv.is_empty() {
            if word.starts_with(['-', '@', ':', '+', '!']) {
                return Err(ReadError::Prefix(word));
            }
            // The program path is not subject to `$` expansion: refuse `$`
            // rather than guess what systemd passes as argv[0].
            if word.contains('$') {
                return Err(ReadError::Variable);
            }
            argv.push(word);
        } else {
            argv.push(unescape_dollars(&word)?);
        }
    }
    if argv.is_empty() {
        return Err(ReadError::EmptyCommand);
    }
    Ok(argv)
}

/// `$$` → `$`; `${NAME}` anywhere or a whole-word `$NAME` is a variable
/// reference systemd would expand (systemd.service(5), "Command lines").
fn unescape_dollars(w: &str) -> Result<String, ReadError> {
    if w.starts_with('$') && !w.starts_with("$$") && !w.starts_with("${") && w.len() > 1 {
        return Err(ReadError::Variable);
    }
    let mut out = String::with_capacity(w.len());
    let mut chars = w.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' {
            match chars.peek() {
                Some('$') => {
                    chars.next();
                }
                Some('{') => return Err(ReadError::Variable),
                _ => {}
            }
        }
        out.push(c);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn physical_lines_end_like_systemd_read_line() {
        for (text, want) in [
            ("a\nb\n", vec!["a", "b"]),
            ("a\r\nb", vec!["a", "b"]),
            ("a\n\rb", vec!["a", "b"]),
            ("a\rb", vec!["a", "b"]),
            ("a\0b", vec!["a", "b"]),
            ("a\r\n\0b", vec!["a", "b"]),
            ("a\n\nb", vec!["a", "", "b"]),
            ("a\0\nb", vec!["a", "", "b"]),
            ("", vec![]),
        ] {
            assert_eq!(physical_lines(text), want, "{text:?}");
        }
    }

    #[test]
    fn continuation_and_comments() {
        let text = "[S]\nA=one \\\n# ignored\n  two\nB=x\\\\\nC=y\\";
        let entries = parse(text).unwrap();
        let got: Vec<(&str, &str)> = entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(got, [("A", "one    two"), ("B", "x\\\\"), ("C", "y")]);
        assert_eq!(entries[0].lines, 1..4);
    }

    #[test]
    fn strict_where_systemd_ignores() {
        assert_eq!(parse("A=b"), Err(ReadError::OutsideSection(1)));
        assert_eq!(parse("[S]\nnope"), Err(ReadError::MissingEquals(2)));
        assert_eq!(parse("[S\n"), Err(ReadError::BadSection(1)));
        assert_eq!(parse("[S]\n=x"), Err(ReadError::MissingKey(2)));
    }

    #[test]
    fn words_unquote_and_unescape() {
        let w = words(r#"a "b c" 'd "e"' f\x41\101\u00e9 "g\"h\\" ''"#).unwrap();
        assert_eq!(w, ["a", "b c", "d \"e\"", "fAAé", "g\"h\\", ""]);
        assert_eq!(words("\"open"), Err(ReadError::Unbalanced));
        assert_eq!(words("a\\q"), Err(ReadError::BadEscape));
    }

    #[test]
    fn exec_decodes_argv() {
        assert_eq!(
            exec(r#"/bin/echo "$$HOME" 100%% ";" \; "a b""#).unwrap(),
            ["/bin/echo", "$HOME", "100%", ";", ";", "a b"]
        );
        assert_eq!(exec("/bin/a ; /bin/b"), Err(ReadError::Separator));
        assert_eq!(exec("-/bin/a"), Err(ReadError::Prefix("-/bin/a".into())));
        assert_eq!(
            exec("\"@/bin/a\""),
            Err(ReadError::Prefix("@/bin/a".into()))
        );
        assert_eq!(exec("/bin/a $HOME"), Err(ReadError::Variable));
        assert_eq!(exec("/bin/a x${HOME}"), Err(ReadError::Variable));
        assert_eq!(exec("/bin/a %h"), Err(ReadError::Specifier('h')));
    }

    #[test]
    fn environment_assignments() {
        assert_eq!(
            environment(r#""A=1 2" B=x%%y 'C=$D'"#).unwrap(),
            [
                ("A".to_owned(), "1 2".to_owned()),
                ("B".to_owned(), "x%y".to_owned()),
                ("C".to_owned(), "$D".to_owned())
            ]
        );
        assert!(environment("=x").is_err());
    }
}

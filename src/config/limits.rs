//! Stage minus one: bounds on the input before kdl sees it. kdl's parser
//! recurses once per nested block and per nested `/* */` comment, so a
//! hostile file nested a few thousand deep overflows the stack (an abort,
//! not an error). One linear pass over the text rejects files larger than
//! [`MAX_FILE_BYTES`] and nesting deeper than [`MAX_DEPTH`], skipping
//! strings and comments the way KDL v2 reads them. It only has to be right
//! for files that are deep; anything it lets through, kdl still checks.

use miette::SourceSpan;

use super::error::{Problem, ProblemKind, thousands};

/// The largest configuration file moorline reads (Pakashop's is ~10 KB;
/// 100,000 services take ~10 MB).
pub const MAX_FILE_BYTES: usize = 16 * 1024 * 1024;
/// The deepest nesting of `{` blocks, and separately of `/*` comments.
/// A moorline file needs four levels (environment, backup, ...); kdl in a
/// 2 MiB thread stack copes with several hundred.
pub(crate) const MAX_DEPTH: usize = 64;
/// The most places in a file where kdl cannot continue a node (a stray
/// `)`, `}` or `=`, text after a block on its line). kdl resumes after each
/// by parsing the rest of the file as a new document, one level of
/// recursion deeper: a file of 100,000 lines `a )` overflows the stack.
/// moorline counts them first (generously: some are not errors) and stops
/// before kdl when there are more than this.
pub(crate) const MAX_SUSPECTS: usize = 1000;

/// Problems that stop the file from being handed to kdl at all.
pub(crate) fn check(text: &str) -> Vec<Problem> {
    if text.len() > MAX_FILE_BYTES {
        return vec![Problem::new(
            ProblemKind::TooLarge,
            SourceSpan::from((0, 0)),
            format!(
                "the file is {} bytes, more than moorline reads ({} bytes)",
                thousands(text.len()),
                thousands(MAX_FILE_BYTES)
            ),
            "file starts here",
            "a configuration describes services, not data: keep large values in files on the host (env-file) and out of the KDL",
        )];
    }
    scan(text).err().into_iter().collect()
}

/// Where a `{` or `/*` opens the (MAX_DEPTH + 1)-th level, or where the
/// (MAX_SUSPECTS + 1)-th place kdl cannot continue a node is, if anywhere.
/// Otherwise: how many such places there are.
fn scan(text: &str) -> Result<usize, Problem> {
    let b = text.as_bytes();
    let mut i = 0;
    let mut blocks = 0usize;
    // `/-` comments out what follows, which may be another `/-`: kdl
    // recurses once per `/-` in a row.
    let mut slashdashes = 0usize;
    let mut suspects = 0usize;
    // Where an unclosed `(` of a type annotation is.
    let mut paren: Option<usize> = None;
    // Where in a node the scan is: before its name, in it, or after it.
    let mut place = Place::Start;
    // Where the last quoted or raw string began.
    let mut string_start = 0usize;
    while i < b.len() {
        if !matches!(b[i], b' ' | b'\t' | b'\n' | b'\r' | b'/') {
            slashdashes = 0;
        }
        let at = i;
        let mut suspect = false;
        match b[i] {
            b'{' => {
                blocks += 1;
                if blocks > MAX_DEPTH {
                    return Err(too_deep(i, 1, "blocks `{`"));
                }
                // A block needs a node name before it.
                suspect = paren.take().is_some() || place == Place::Start;
                i += 1;
            }
            b'}' => {
                suspect = paren.take().is_some() || blocks == 0 || !ends_node(b, i + 1);
                blocks = blocks.saturating_sub(1);
                i += 1;
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                i = b[i..]
                    .iter()
                    .position(|c| *c == b'\n')
                    .map_or(b.len(), |n| i + n);
            }
            b'/' if b.get(i + 1) == Some(&b'-') => {
                // What it comments out must follow (kdl allows a newline
                // in between, counted here all the same).
                let next = b[i + 2..].iter().find(|c| !matches!(c, b' ' | b'\t'));
                suspect = matches!(next, None | Some(b';' | b'}' | b'\n' | b'\r'));
                slashdashes += 1;
                if slashdashes > MAX_DEPTH {
                    return Err(too_deep(i, 2, "slashdash comments `/-` in a row"));
                }
                i += 2;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => match comment_end(b, i) {
                Ok(end) => i = end,
                Err(at) => return Err(too_deep(at, 2, "comments `/*`")),
            },
            b'"' => {
                // Two values need a space between them: `1"s"`.
                string_start = i;
                suspect = i
                    .checked_sub(1)
                    .and_then(|p| b.get(p))
                    .is_some_and(|c| !(c.is_ascii_whitespace() || b"(){};=\\".contains(c)));
                i = quoted_end(b, i);
            }
            b'#' => {
                let end = raw_end(b, i);
                string_start = i;
                // Not a raw string: a keyword, followed by a delimiter.
                suspect = end == i + 1 && !keyword(b, i);
                i = end;
            }
            b'(' => {
                suspect = paren.replace(i).is_some() || !token_start(b, i);
                i += 1;
            }
            b')' => {
                suspect = paren.take().is_none() || !starts_value(b.get(i + 1).copied());
                i += 1;
            }
            b'=' => {
                let next = b.get(i + 1).copied();
                // A node name is not a property key (`"a"=1` on its own).
                suspect = place != Place::Rest
                    || !after_key(b, i, string_start)
                    || !(starts_value(next) || next == Some(b'('));
                i += 1;
            }
            b'\\' => {
                suspect = !ends_node(b, i + 1);
                i += 1;
            }
            b'[' | b']' | b'/' => {
                suspect = true;
                i += 1;
            }
            b' ' | b'\t' | b'\n' | b'\r' | b';' => {
                suspect = paren.take().is_some();
                i += 1;
            }
            // A bare word that looks like a number but is not one (`.5`).
            b'.' | b'+' | b'-' if token_start(b, i) => {
                let digits = b.get(i + 1..).unwrap_or_default();
                let digits = if b[i] == b'.' {
                    digits
                } else {
                    digits.strip_prefix(b".").unwrap_or_default()
                };
                suspect = digits.first().is_some_and(u8::is_ascii_digit);
                i += 1;
            }
            _ => i += 1,
        }
        place = match (b[at], place) {
            (b'\n' | b'\r' | b';' | b'{' | b'}', _) => Place::Start,
            (b' ' | b'\t', Place::Name) => Place::Rest,
            (b' ' | b'\t', p) => p,
            (b'/', p) if matches!(b.get(at + 1), Some(b'/' | b'*')) => p,
            (_, Place::Start) => Place::Name,
            (_, p) => p,
        };
        if suspect {
            suspects += 1;
            if suspects > MAX_SUSPECTS {
                return Err(Problem::new(
                    ProblemKind::Syntax,
                    SourceSpan::from((at, 1)),
                    format!("more than {MAX_SUSPECTS} places in this file are not valid KDL"),
                    "moorline stops reading here",
                    "this does not look like a moorline configuration; fix the first syntax errors (`moorline validate` on the start of the file shows them)",
                ));
            }
        }
    }
    Ok(suspects + usize::from(paren.is_some()))
}

/// Where the scan is in a node.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Before its name (only spaces since the last node ended).
    Start,
    /// In its name (or type annotation).
    Name,
    /// After its name: arguments, properties, children.
    Rest,
}

/// Whether what follows offset `i` (after spaces) ends a node: a newline,
/// `;`, a comment or slashdash, a closing `}`, or the end of the file.
fn ends_node(b: &[u8], i: usize) -> bool {
    let rest = b.get(i..).unwrap_or_default();
    let next = rest.iter().find(|c| !matches!(c, b' ' | b'\t'));
    matches!(next, None | Some(b'\n' | b'\r' | b';' | b'}' | b'/'))
}

/// Whether `c` can start a value or a name right after a type annotation.
fn starts_value(c: Option<u8>) -> bool {
    c.is_some_and(|c| {
        c.is_ascii_alphanumeric()
            || matches!(c, b'"' | b'#' | b'-' | b'+' | b'.' | b'_')
            || c >= 0x80
    })
}

/// Whether the `=` at `i` follows a property key: a quoted or raw string,
/// or a bare word that is not a number or a keyword.
fn after_key(b: &[u8], i: usize, string_start: usize) -> bool {
    let Some(&prev) = i.checked_sub(1).and_then(|p| b.get(p)) else {
        return false;
    };
    if matches!(prev, b'"' | b'#') {
        // A string key stands on its own, not after `=` or a type.
        return string_start
            .checked_sub(1)
            .and_then(|p| b.get(p))
            .is_none_or(u8::is_ascii_whitespace);
    }
    let start = b[..i]
        .iter()
        .rposition(|c| c.is_ascii_whitespace() || b"(){}[];=\"/\\".contains(c))
        .map_or(0, |p| p + 1);
    let word = |c: u8| c.is_ascii_alphabetic() || c == b'_' || c >= 0x80;
    match b[start..i] {
        [c, ..] if word(c) => true,
        [b'+' | b'-' | b'.', c, ..] => word(c) || c == b'-',
        _ => false,
    }
}

/// Whether a KDL v2 keyword (`#true`, `#null`, `#-inf`, ...) starts at `i`
/// and ends where a value may end.
fn keyword(b: &[u8], i: usize) -> bool {
    let rest = b.get(i..).unwrap_or_default();
    ["#true", "#false", "#null", "#inf", "#-inf", "#nan"]
        .iter()
        .any(|k| {
            rest.starts_with(k.as_bytes())
                && rest
                    .get(k.len())
                    .is_none_or(|c| c.is_ascii_whitespace() || b";)}/=".contains(c))
        })
}

/// Whether offset `i` starts a bare word.
fn token_start(b: &[u8], i: usize) -> bool {
    i.checked_sub(1)
        .and_then(|p| b.get(p))
        .is_none_or(|c| c.is_ascii_whitespace() || b"(){}[];=".contains(c))
}

fn too_deep(at: usize, len: usize, what: &str) -> Problem {
    let message = if what.starts_with("slashdash") {
        format!("more than {MAX_DEPTH} {what}")
    } else {
        format!("{what} are nested more than {MAX_DEPTH} levels deep")
    };
    Problem::new(
        ProblemKind::TooDeep,
        SourceSpan::from((at, len)),
        message,
        if what.starts_with("slashdash") {
            format!("the {}th in a row", MAX_DEPTH + 1)
        } else {
            format!("level {} opens here", MAX_DEPTH + 1)
        },
        "a moorline file needs a few levels of nesting; close the blocks and comments you opened",
    )
}

/// The end of the (nested) block comment starting at `start`, or where it
/// opens a level past the limit.
fn comment_end(b: &[u8], start: usize) -> Result<usize, usize> {
    let mut depth = 0usize;
    let mut i = start;
    while i < b.len() {
        if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            depth += 1;
            if depth > MAX_DEPTH {
                return Err(i);
            }
            i += 2;
        } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return Ok(i);
            }
        } else {
            i += 1;
        }
    }
    Ok(b.len())
}

/// The end of a quoted string (`"..."` or `"""..."""`) starting at `start`.
fn quoted_end(b: &[u8], start: usize) -> usize {
    let multi = b[start..].starts_with(b"\"\"\"");
    let mut i = start + if multi { 3 } else { 1 };
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' if !multi => return i + 1,
            b'"' if b[i..].starts_with(b"\"\"\"") => return i + 3,
            // An unclosed single-line string ends at the line; kdl reports it.
            b'\n' if !multi => return i,
            _ => i += 1,
        }
    }
    b.len()
}

/// The end of a raw string (`#"..."#`, `##"""..."""##`) starting at
/// `start`, or just past a `#` that does not start one (`#true`).
fn raw_end(b: &[u8], start: usize) -> usize {
    let hashes = b[start..].iter().take_while(|c| **c == b'#').count();
    let open = start + hashes;
    if b.get(open) != Some(&b'"') {
        return open;
    }
    let multi = b[open..].starts_with(b"\"\"\"");
    let mut close = vec![b'"'; if multi { 3 } else { 1 }];
    close.extend(std::iter::repeat_n(b'#', hashes));
    let body = open + if multi { 3 } else { 1 };
    b.get(body..)
        .and_then(|rest| {
            rest.windows(close.len())
                .position(|w| w == close.as_slice())
        })
        .map_or(b.len(), |n| body + n + close.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth_problem(text: &str) -> Option<(usize, String)> {
        scan(text).err().map(|p| (p.span.offset(), p.message))
    }

    #[test]
    fn nesting_within_the_limit_passes_and_beyond_is_reported() {
        let ok = format!("{}{}", "a {".repeat(MAX_DEPTH), "}".repeat(MAX_DEPTH));
        assert_eq!(depth_problem(&ok), None);
        let deep = format!(
            "{}{}",
            "a {".repeat(MAX_DEPTH + 1),
            "}".repeat(MAX_DEPTH + 1)
        );
        let (at, msg) = depth_problem(&deep).unwrap();
        assert_eq!(at, 3 * MAX_DEPTH + 2, "points at the 65th `{{`");
        assert!(msg.contains("blocks"), "{msg}");
        // Siblings do not add up.
        let wide = "a { b; }\n".repeat(10_000);
        assert_eq!(depth_problem(&wide), None);
    }

    #[test]
    fn comments_nest_and_are_counted_separately() {
        let ok = format!("{}{}", "/*".repeat(MAX_DEPTH), "*/".repeat(MAX_DEPTH));
        assert_eq!(depth_problem(&ok), None);
        let deep = "/*".repeat(MAX_DEPTH + 1);
        let (at, msg) = depth_problem(&deep).unwrap();
        assert_eq!(at, 2 * MAX_DEPTH);
        assert!(msg.contains("comments"), "{msg}");
        // Braces inside comments do not count.
        let braces = format!("/* {} */ a", "{".repeat(1000));
        assert_eq!(depth_problem(&braces), None);
    }

    #[test]
    fn braces_in_strings_and_line_comments_do_not_count() {
        let many = "{".repeat(1000);
        for text in [
            format!("a \"{many}\""),
            format!("a \"\\\"{many}\""),
            format!("a \"\"\"\n{many}\n\"\"\""),
            format!("a #\"{many}\"#"),
            format!("a ##\"\"#{many}\"##"),
            format!("a #\"\"\"\n\"{many}\n\"\"\"#"),
            format!("// {many}\na"),
            "a \"/*\" { } // /*\n".to_owned(),
            format!("a #true \"{many}\""),
        ] {
            assert_eq!(depth_problem(&text), None, "{text:.40}");
        }
        // A string does not hide what follows it.
        let after = format!("a \"x\" {}", "{".repeat(MAX_DEPTH + 1));
        assert!(depth_problem(&after).is_some());
    }

    #[test]
    fn slashdashes_in_a_row_are_counted() {
        let ok = format!("{}a", "/- ".repeat(MAX_DEPTH));
        assert_eq!(depth_problem(&ok), None);
        let deep = format!("{}a", "/- ".repeat(MAX_DEPTH + 1));
        let (at, msg) = depth_problem(&deep).unwrap();
        assert_eq!(at, 3 * MAX_DEPTH);
        assert!(msg.contains("slashdash"), "{msg}");
        let apart = "/- a\n".repeat(10_000);
        assert_eq!(depth_problem(&apart), None);
    }

    #[test]
    fn valid_files_have_no_suspects() {
        let pakashop = include_str!("../../pakashop.kdl");
        assert_eq!(scan(pakashop).ok(), Some(0));
        for text in [
            "a x=1 \"y\"=2 #\"z\"#=3 secret=#true",
            "a #true #false #null #inf #-inf #nan x=#true;b #null",
            "a (t)1 (t)\"s\" x=(u)#true",
            "a {\n  b; c {}\n} /-{ d }\n",
            "a 1 \\\n  2 \\ // continued\n  3",
            "a { b }; c { d } // done",
            "a -1 +2 0.5 -x=1",
        ] {
            assert_eq!(scan(text).ok(), Some(0), "{text}");
        }
    }

    #[test]
    fn places_where_kdl_recurses_are_suspects() {
        // Each of these, repeated on 100,000 lines, overflowed kdl's stack.
        for line in [
            "a )",
            "a =",
            "a x==",
            "a 1=2",
            "a #true=1",
            "a [",
            "a ]",
            "a /",
            "}",
            "a {}x",
            "a {} {}",
            "a (t)(t)",
            "a (t);",
            "a (t)",
            "a \\ x",
            "a (",
            "a \"x\")",
            "x=",
            "x= 1",
            "a x=+=1",
            "a /- ;",
            "a .5",
            "a -.5",
            "{}",
            "\t {} ",
            "x=1\"s\"",
            "\"a\"=1",
            "xx=#true",
            "# #inf, : ",
            "a #inf,",
            "$(t)\"a\"=1//",
            "+ /- x=#true#true ",
            "a x=(t)\"a\"=1",
            "a x=\"a\"=1",
        ] {
            let n = scan(line).unwrap_or(usize::MAX);
            assert!(n >= 1, "{line}: {n}");
        }
        let many = "a )\n".repeat(MAX_SUSPECTS + 1);
        let p = check(&many);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].kind, ProblemKind::Syntax);
        assert_eq!(p[0].span.offset(), MAX_SUSPECTS * 4 + 2);
    }

    #[test]
    fn too_large_is_one_problem() {
        let big = "a".repeat(MAX_FILE_BYTES + 1);
        let p = check(&big);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].kind, ProblemKind::TooLarge);
    }

    #[test]
    fn kdl_survives_the_deepest_nesting_allowed() {
        // Runs in a test thread (2 MiB stack), smaller than a main thread.
        let blocks = format!("{}{}", "a {".repeat(MAX_DEPTH), "}".repeat(MAX_DEPTH));
        assert!(kdl::KdlDocument::parse_v2(&blocks).is_ok());
        let comments = format!("{}{} a", "/*".repeat(MAX_DEPTH), "*/".repeat(MAX_DEPTH));
        assert!(kdl::KdlDocument::parse_v2(&comments).is_ok());
        let slashdashes = format!("{}a; b", "/- ".repeat(MAX_DEPTH));
        let _ = kdl::KdlDocument::parse_v2(&slashdashes);
    }
}

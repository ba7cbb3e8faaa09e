//! Stage minus one: bounds on the input before kdl sees it. kdl's parser
//! recurses once per nested block and per nested `/* */` comment, so a
//! hostile file nested a few thousand deep overflows the stack (an abort,
//! not an error). One linear pass over the text rejects files larger than
//! [`MAX_FILE_BYTES`] and nesting deeper than [`MAX_DEPTH`], skipping
//! strings and comments the way KDL v2 reads them. It only has to be right
//! for files that are deep; anything it lets through, kdl still checks.

use miette::SourceSpan;

use super::error::{Problem, ProblemKind, thousands};

/// The largest configuration file moorline reads (Pakashop's is ~10 KB).
pub const MAX_FILE_BYTES: usize = 4 * 1024 * 1024;
/// The deepest nesting of `{` blocks, and separately of `/*` comments.
/// A moorline file needs four levels (environment, backup, ...); kdl in a
/// 2 MiB thread stack copes with several hundred.
pub const MAX_DEPTH: usize = 64;

/// Problems that stop the file from being handed to kdl at all.
pub fn check(text: &str) -> Vec<Problem> {
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
    scan(text).into_iter().collect()
}

/// Where a `{` or `/*` opens the (MAX_DEPTH + 1)-th level, if anywhere.
fn scan(text: &str) -> Option<Problem> {
    let b = text.as_bytes();
    let mut i = 0;
    let mut blocks = 0usize;
    // `/-` comments out what follows, which may be another `/-`: kdl
    // recurses once per `/-` in a row.
    let mut slashdashes = 0usize;
    while i < b.len() {
        if !matches!(b[i], b' ' | b'\t' | b'\n' | b'\r' | b'/') {
            slashdashes = 0;
        }
        match b[i] {
            b'{' => {
                blocks += 1;
                if blocks > MAX_DEPTH {
                    return Some(too_deep(i, 1, "blocks `{`"));
                }
                i += 1;
            }
            b'}' => {
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
                slashdashes += 1;
                if slashdashes > MAX_DEPTH {
                    return Some(too_deep(i, 2, "slashdash comments `/-` in a row"));
                }
                i += 2;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => match comment_end(b, i) {
                Ok(end) => i = end,
                Err(at) => return Some(too_deep(at, 2, "comments `/*`")),
            },
            b'"' => i = quoted_end(b, i),
            b'#' => i = raw_end(b, i),
            _ => i += 1,
        }
    }
    None
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
        scan(text).map(|p| (p.span.offset(), p.message))
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

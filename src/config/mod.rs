//! Configuration: KDL text → checked `Config`, in two stages (`raw` reads
//! the shape, `validate` resolves and applies defaults). Either every
//! problem in the file comes back at once, or a fully resolved config does.

pub mod error;
pub mod limits;
mod mask;
pub(crate) mod model;
mod raw;
mod shared;
mod syntax;
mod validate;

use std::path::{Path, PathBuf};

use kdl::KdlDocument;

pub use error::{ConfigError, LocateError, Problem, ProblemKind};
pub use model::*;
pub(crate) use validate::unit_user_fault;

/// What the program of an `exec` `moorline init` could not fill in starts
/// with; validation refuses it (`moorline::config::init_todo`) until a
/// person writes the command.
pub(crate) const INIT_TODO: &str = "TODO:";

/// A KDL v2 quoted string that reads back as exactly `s`: the one writer
/// of KDL strings (the fixture's generated configuration, `moorline init`).
pub(crate) fn kdl_string(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Parses and checks configuration text; `name` is shown in diagnostics.
pub fn parse(name: &str, text: &str) -> Result<Config, ConfigError> {
    let mut problems = limits::check(text);
    let mut raw_tree = None;
    let config = if problems.is_empty() {
        match parse_kdl(text) {
            Ok(doc) => {
                let raw = raw_tree.insert(raw::read(&doc, text, &mut problems));
                let config = validate::validate(raw, &mut problems);
                if let Some(c) = &config {
                    problems.extend(shared::port_overflow(raw, c));
                }
                config
            }
            Err(e) => {
                problems.extend(syntax::problems(text, e.diagnostics));
                None
            }
        }
    } else {
        None
    };
    match config {
        Some(c) if problems.is_empty() => Ok(c),
        // The report quotes the file: never its secret values.
        _ => Err(ConfigError::new(
            name,
            mask::mask(text, raw_tree.as_ref()),
            problems,
        )),
    }
}

/// What `validate` checks besides [`parse`]: environments that share a
/// host (both deployed where moorline runs, or to one address) do not use
/// the same root, unit names or ports. A command on one environment does
/// not need it; `validate` and `init` refuse such a file.
pub fn check_shared_hosts(loaded: &Loaded) -> Result<(), ConfigError> {
    let name = loaded.path.display().to_string();
    let text = &loaded.text;
    let mut problems = Vec::new();
    let Ok(doc) = parse_kdl(text) else {
        return Ok(());
    };
    let raw = raw::read(&doc, text, &mut problems);
    let found = shared::problems(&raw, &loaded.config);
    if found.is_empty() {
        return Ok(());
    }
    Err(ConfigError::new(&name, mask::mask(text, Some(&raw)), found))
}

/// Stack for kdl's parser. kdl recovers from a syntax error that ends a
/// node early by parsing the rest of the file as a new document, one level
/// deeper each time (about 550 bytes of stack per level, unoptimised): a
/// file of 100,000 lines `a )` overflowed the main thread's 8 MiB.
/// `limits` stops files with more than 1000 such places before kdl sees
/// them; this stack (reserved, used only as deep as the parse goes) is the
/// backstop for a kind of place that count misses: ~450,000 levels.
const PARSE_STACK_BYTES: usize = 256 << 20;

fn parse_kdl(text: &str) -> Result<KdlDocument, kdl::KdlError> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("kdl-parse".to_owned())
            .stack_size(PARSE_STACK_BYTES)
            .spawn_scoped(scope, || KdlDocument::parse_v2(text))
            .map_or_else(
                // No address space for the stack: parse here (a file this
                // small in stack needs is the common case).
                |_| KdlDocument::parse_v2(text),
                |h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
            )
    })
}

/// A configuration file read from disk, with its text (for fingerprints).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub(crate) path: PathBuf,
    pub(crate) text: String,
    pub config: Config,
}

/// Reads and checks the file at `path`.
pub fn load(path: &Path) -> miette::Result<Loaded> {
    let text = std::fs::read_to_string(path).map_err(|source| LocateError::Unreadable {
        path: shown(path),
        source,
    })?;
    let config = parse(&path.display().to_string(), &text)?;
    Ok(Loaded {
        path: path.to_owned(),
        text,
        config,
    })
}

/// A path as a diagnostic shows it: invisible characters escaped (a file
/// or directory name can hold an escape sequence).
fn shown(path: &Path) -> String {
    crate::visible::escape(&path.display().to_string())
}

/// The configuration file to use: `-c FILE`, else `MOORLINE_CONFIG`, else
/// the only `*.kdl` file in `dir`.
pub(crate) fn locate(
    flag: Option<&Path>,
    env: Option<&str>,
    dir: &Path,
) -> Result<PathBuf, LocateError> {
    if let Some(p) = flag {
        return Ok(p.to_owned());
    }
    if let Some(p) = env.filter(|s| !s.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| LocateError::Unreadable {
            path: shown(dir),
            source,
        })?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "kdl"))
        .collect();
    found.sort();
    match found.len() {
        0 => Err(LocateError::NoneFound { dir: shown(dir) }),
        1 => Ok(found.remove(0)),
        _ => Err(LocateError::Several {
            dir: shown(dir),
            files: found
                .iter()
                .filter_map(|p| p.file_name())
                .map(|n| crate::visible::escape(&n.to_string_lossy()))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

//! Configuration: KDL text → checked `Config`, in two stages (`raw` reads
//! the shape, `validate` resolves and applies defaults). Either every
//! problem in the file comes back at once, or a fully resolved config does.

pub mod error;
pub mod model;
mod raw;
mod syntax;
mod validate;

use std::path::{Path, PathBuf};

use kdl::KdlDocument;
use miette::NamedSource;

pub use error::{ConfigError, LocateError, Problem, ProblemKind};
pub use model::*;

/// Parses and checks configuration text; `name` is shown in diagnostics.
pub fn parse(name: &str, text: &str) -> Result<Config, ConfigError> {
    let mut problems = Vec::new();
    let config = match KdlDocument::parse_v2(text) {
        Ok(doc) => {
            let raw = raw::read(&doc, text, &mut problems);
            validate::validate(&raw, &mut problems)
        }
        Err(e) => {
            problems.extend(syntax::problems(text, e.diagnostics));
            None
        }
    };
    match config {
        Some(c) if problems.is_empty() => Ok(c),
        _ => {
            problems.sort_by_key(|p| (p.span.offset(), p.kind.code()));
            Err(ConfigError {
                src: NamedSource::new(name, text.to_owned()),
                problems,
            })
        }
    }
}

/// A configuration file read from disk, with its text (for fingerprints).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub path: PathBuf,
    pub text: String,
    pub config: Config,
}

/// Reads and checks the file at `path`.
pub fn load(path: &Path) -> miette::Result<Loaded> {
    let text = std::fs::read_to_string(path).map_err(|source| LocateError::Unreadable {
        path: path.display().to_string(),
        source,
    })?;
    let config = parse(&path.display().to_string(), &text)?;
    Ok(Loaded {
        path: path.to_owned(),
        text,
        config,
    })
}

/// The configuration file to use: `-c FILE`, else `MOORLINE_CONFIG`, else
/// the only `*.kdl` file in `dir`.
pub fn locate(flag: Option<&Path>, env: Option<&str>, dir: &Path) -> Result<PathBuf, LocateError> {
    if let Some(p) = flag {
        return Ok(p.to_owned());
    }
    if let Some(p) = env.filter(|s| !s.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| LocateError::Unreadable {
            path: dir.display().to_string(),
            source,
        })?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "kdl"))
        .collect();
    found.sort();
    match found.len() {
        0 => Err(LocateError::NoneFound {
            dir: dir.display().to_string(),
        }),
        1 => Ok(found.remove(0)),
        _ => Err(LocateError::Several {
            dir: dir.display().to_string(),
            files: found
                .iter()
                .filter_map(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

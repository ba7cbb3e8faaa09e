//! `moorline init`: a repository's files → a [`Scan`] (services, runtimes,
//! existing unit files, a proxy, each guess with where it came from and
//! whether to check it) → a commented KDL configuration ([`render`]).
//! Reading the directory ([`Files::read`]) is the only I/O; [`scan`] and
//! [`render`] are pure and deterministic (sorted inputs, no clock).

mod dirs;
mod entry;
mod render;
mod scan;
mod source;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use miette::Diagnostic;

pub(crate) use render::{render, summary};
pub(crate) use scan::scan;

/// Directories never looked into: dependencies, build output, virtualenvs,
/// version control. Hidden directories (`.git`, `.venv`, `.next`) are
/// skipped too.
const SKIPPED_DIRS: &[&str] = &[
    "node_modules",
    "venv",
    "env",
    "target",
    "vendor",
    "dist",
    "build",
    "__pycache__",
    "coverage",
    "site-packages",
];

/// How deep below the repository root files are looked for
/// (`services/api/prisma/schema.prisma` is 4; `deploy/systemd/x.service` 3).
const MAX_DEPTH: usize = 6;
/// Files listed at most: a repository with more is read in part (sorted
/// order), and the scan says so.
const MAX_FILES: usize = 50_000;
/// Text read from one file at most; larger files are listed, not read.
const MAX_FILE_BYTES: u64 = 512 * 1024;
/// Text read in total at most (source files are read for ports and health
/// paths; manifests and unit files first).
const MAX_TOTAL_BYTES: usize = 32 * 1024 * 1024;

/// What `init` reads of a repository: every file's relative path (`/`
/// separators) and the text of the files it interprets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Files {
    /// The directory's own name (the project name is guessed from it).
    pub(crate) dir_name: String,
    /// The branch checked out, when the directory is in a git repository.
    pub(crate) branch: Option<String>,
    /// Every file found, relative to the directory.
    pub(crate) paths: BTreeSet<String>,
    /// The text of the interesting files among them.
    pub(crate) text: BTreeMap<String, String>,
    /// Whether the listing stopped at `MAX_FILES` or `MAX_TOTAL_BYTES`.
    pub(crate) truncated: bool,
}

impl Files {
    #[cfg(test)]
    /// Builds a listing from `(path, text)` pairs (tests, and `read`).
    pub(crate) fn from_entries<'a>(
        dir_name: &str,
        entries: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Self {
        let mut f = Self {
            dir_name: dir_name.to_owned(),
            ..Self::default()
        };
        for (p, t) in entries {
            f.paths.insert(p.to_owned());
            if is_interesting(p) {
                f.text.insert(p.to_owned(), t.to_owned());
            }
        }
        f
    }

    /// Lists `dir` (not following symlinks, skipping [`SKIPPED_DIRS`],
    /// hidden directories and what git ignores) and reads the files the
    /// scan interprets.
    pub(crate) fn read(dir: &Path) -> Result<Self, InitError> {
        let meta = std::fs::metadata(dir).map_err(|source| InitError::Unreadable {
            path: dir.display().to_string(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(InitError::NotADirectory {
                path: dir.display().to_string(),
            });
        }
        let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        let repo = git2::Repository::discover(&abs).ok();
        let branch = repo.as_ref().and_then(|r| {
            r.head()
                .ok()
                .filter(git2::Reference::is_branch)
                .and_then(|h| h.shorthand().ok().map(str::to_owned))
                .or_else(|| {
                    // A fresh repository: HEAD names a branch without commits.
                    r.find_reference("HEAD")
                        .ok()
                        .and_then(|h| h.symbolic_target().ok().flatten().map(str::to_owned))
                        .and_then(|t| t.strip_prefix("refs/heads/").map(str::to_owned))
                })
        });
        let mut files = Self {
            dir_name: abs
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            branch,
            ..Self::default()
        };
        let ignored = |rel: &str| -> bool {
            let Some(r) = &repo else { return false };
            let Some(work) = r.workdir() else {
                return false;
            };
            let full = abs.join(rel);
            full.strip_prefix(work)
                .ok()
                .is_some_and(|p| r.is_path_ignored(p).unwrap_or(false))
        };
        let mut stack = vec![(String::new(), 0usize)];
        let mut found = Vec::new();
        while let Some((rel, depth)) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(abs.join(&rel)) else {
                continue;
            };
            let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
            entries.sort_by_key(std::fs::DirEntry::file_name);
            for e in entries {
                let Ok(name) = e.file_name().into_string() else {
                    continue;
                };
                if !usable(&name) {
                    continue;
                }
                let path = if rel.is_empty() {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                let Ok(kind) = e.file_type() else { continue };
                if kind.is_dir() {
                    if depth + 1 < MAX_DEPTH
                        && !name.starts_with('.')
                        && !SKIPPED_DIRS.contains(&name.as_str())
                        && !ignored(&path)
                    {
                        stack.push((path, depth + 1));
                    }
                } else if kind.is_file() && !ignored(&path) {
                    if found.len() >= MAX_FILES {
                        files.truncated = true;
                        break;
                    }
                    found.push((path, e.metadata().map_or(u64::MAX, |m| m.len())));
                }
            }
        }
        found.sort();
        // Manifests and unit files first, then source files, so that the
        // byte budget goes to what matters most.
        let mut wanted: Vec<&(String, u64)> = found
            .iter()
            .filter(|(p, len)| is_interesting(p) && *len <= MAX_FILE_BYTES)
            .collect();
        wanted.sort_by_key(|(p, _)| (is_source(p), p.clone()));
        let mut total = 0usize;
        for (p, len) in wanted {
            let len = usize::try_from(*len).unwrap_or(usize::MAX);
            if total.saturating_add(len) > MAX_TOTAL_BYTES {
                files.truncated = true;
                break;
            }
            if let Ok(t) = std::fs::read_to_string(abs.join(p)) {
                total += len;
                files.text.insert(p.clone(), t);
            }
        }
        files.paths = found.into_iter().map(|(p, _)| p).collect();
        Ok(files)
    }
}

/// Files the scan reads: manifests, env examples, unit files, nginx
/// configuration, and source files (for ports and health paths).
fn is_interesting(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    matches!(
        name,
        "package.json"
            | "go.mod"
            | "requirements.txt"
            | "pyproject.toml"
            | ".env.example"
            | ".env.sample"
            | "Dockerfile"
            | "Procfile"
    ) || name.ends_with(".service")
        || scan::is_nginx_path(path)
        || is_source(path)
}

/// Whether `path` ends in `.EXT` (any case).
fn ext_is(path: &str, ext: &str) -> bool {
    Path::new(path)
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

fn is_source(path: &str) -> bool {
    [".js", ".mjs", ".cjs", ".ts", ".go", ".py"]
        .iter()
        .any(|e| {
            path.ends_with(e)
                && !path.ends_with(".d.ts")
                && !path.contains(".test.")
                && !path.contains("_test.go")
        })
}

/// A name or value from the repository that can be written into the
/// configuration as it is: no control or invisible characters (which
/// validation refuses), no placeholder braces.
pub(crate) fn usable(s: &str) -> bool {
    !s.is_empty()
        && !s
            .chars()
            .any(|c| crate::visible::is_invisible(c) || matches!(c, '{' | '}'))
}

/// A guessed value, where it came from, and whether a person should check it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Guess<T> {
    pub(crate) value: T,
    /// Where it came from (`deploy/systemd/shop-api.service`), or why it is
    /// a default.
    pub(crate) from: String,
    /// Nothing in the repository said so: check it.
    pub(crate) check: bool,
}

impl<T> Guess<T> {
    pub(crate) fn found(value: T, from: impl Into<String>) -> Self {
        Self {
            value,
            from: from.into(),
            check: false,
        }
    }
    pub(crate) fn assumed(value: T, why: impl Into<String>) -> Self {
        Self {
            value,
            from: why.into(),
            check: true,
        }
    }
}

/// What `init` understood of a repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scan {
    pub(crate) project: Guess<String>,
    /// The branch `staging` deploys.
    pub(crate) branch: Guess<String>,
    /// The `unit-name` template.
    pub(crate) unit_name: Guess<String>,
    /// Units the services' existing unit files start after that moorline
    /// does not manage (`postgresql.service`).
    pub(crate) infrastructure: Vec<Guess<String>>,
    pub(crate) runtimes: Vec<Runtime>,
    pub(crate) services: Vec<Service>,
    pub(crate) proxy: Option<Proxy>,
    /// Directories that look like services and are not in the
    /// configuration, with why.
    pub(crate) left_out: Vec<LeftOut>,
    /// Things found and not used, and what to check, for the summary.
    pub(crate) notes: Vec<String>,
}

/// A directory init saw and did not make a service of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeftOut {
    pub(crate) path: String,
    /// A service init cannot deploy (`true`), or not a service at all.
    pub(crate) unhandled: bool,
    pub(crate) reason: String,
}

impl LeftOut {
    pub(crate) fn unhandled(path: &str, reason: String) -> Self {
        Self {
            path: path.to_owned(),
            unhandled: true,
            reason,
        }
    }
    pub(crate) fn not_a_service(path: &str, reason: String) -> Self {
        Self {
            path: path.to_owned(),
            unhandled: false,
            reason,
        }
    }
}

/// How a service picks its port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortUse {
    /// From `PORT`, as the runtime's unit sets it (or nothing is known).
    Port,
    /// From another variable, which the service's unit sets to `{port}`.
    Var(String),
    /// From its start command, where init wrote `{port}`.
    Command,
    /// Written in its source (the file): `PORT` changes nothing.
    HardCoded(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Runtime {
    pub(crate) name: String,
    pub(crate) kind: Kind,
    pub(crate) spec: RuntimeSpec,
    /// A migration, for the services that have its `if_exists` file.
    pub migrate: Option<Migrate>,
}

/// What services of one runtime share; services whose specs are equal
/// share a runtime.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RuntimeSpec {
    pub(crate) deps: Option<Deps>,
    pub(crate) build: Option<Guess<Vec<String>>>,
    /// The package manager (`npm`, `pnpm`, `yarn`, `pip`, `uv`, `go`).
    pub(crate) manager: String,
    /// `env` of the runtime's unit (`NODE_ENV=production`), besides `PORT`.
    pub(crate) env: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Deps {
    pub(crate) argv: Vec<String>,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub version: Vec<String>,
    pub(crate) why: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Migrate {
    pub(crate) argv: Vec<String>,
    pub(crate) status: Vec<String>,
    pub if_exists: String,
    pub(crate) inputs: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Node,
    Go,
    Python,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Node => "node",
            Kind::Go => "go",
            Kind::Python => "python",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    /// Source directory, relative to the repository root.
    pub path: String,
    pub kind: Kind,
    /// The runtime's name (set once runtimes are grouped).
    pub runtime: String,
    /// What its runtime is made of (services with equal specs share one).
    pub spec: RuntimeSpec,
    pub migrate: Option<Migrate>,
    pub port: Guess<u16>,
    /// How the service takes its port.
    pub port_use: PortUse,
    pub exec: Guess<Vec<String>>,
    /// Where it starts a gRPC server (then an HTTP health path cannot answer).
    pub grpc: Option<String>,
    pub health: Guess<String>,
    pub ready: Guess<String>,
    /// Files outside the service that it depends on (a workspace lockfile).
    pub watch: Vec<Guess<String>>,
    /// Services it must start after (from its unit file's `After=`).
    pub depends_on: Vec<Guess<String>>,
    /// The existing unit file it was matched with.
    pub unit: Option<FoundUnit>,
}

/// What an existing `*.service` file says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FoundUnit {
    pub(crate) file: String,
    pub(crate) unit_name: String,
    pub(crate) description: Option<String>,
    pub(crate) user: Option<String>,
    pub(crate) group: Option<String>,
    pub(crate) env_files: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) after: Vec<String>,
    pub(crate) wants: Vec<String>,
    pub(crate) exec_start: Option<String>,
    pub(crate) working_directory: Option<String>,
    /// Environment variables not carried over because they look secret.
    pub(crate) secrets_left_out: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Proxy {
    pub(crate) watch: Guess<String>,
    /// Ports the configuration proxies to (`proxy_pass`, `server` lines).
    pub(crate) upstream_ports: Vec<u16>,
}

/// Why `init` wrote nothing.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub(crate) enum InitError {
    #[error("cannot read {path}")]
    #[diagnostic(
        code(moorline::init::unreadable),
        help("pass the repository's directory: `moorline init DIR`")
    )]
    Unreadable {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a directory")]
    #[diagnostic(
        code(moorline::init::unreadable),
        help("pass the repository's directory: `moorline init DIR`")
    )]
    NotADirectory { path: String },
    #[error(
        "found no service in {dir}: no package.json, go.mod, requirements.txt or pyproject.toml{seen}"
    )]
    #[diagnostic(
        code(moorline::init::nothing_found),
        help(
            "run `moorline init` in the repository's root; moorline recognises a service by one of those files, in a directory of its own (services/NAME, apps/NAME) or, for a single service, at the root. To write a configuration by hand, start from docs/config.md"
        )
    )]
    NothingFound {
        dir: String,
        /// What it saw and cannot deploy (`; it saw, and cannot deploy: ...`),
        /// or nothing.
        seen: String,
    },
    #[error("{path} exists; nothing was written")]
    #[diagnostic(
        code(moorline::init::exists),
        help("pass --force to replace it, or --out FILE to write elsewhere")
    )]
    Exists { path: String },
    #[error("refusing to write {path}: it is {kind}, not a regular file")]
    #[diagnostic(
        code(moorline::init::not_a_file),
        help(
            "nothing was written: moorline init replaces only a regular file and never writes through a symbolic link (it could point anywhere, and init may run as root); remove it, or pass --out FILE to write elsewhere"
        )
    )]
    NotAFile { path: String, kind: &'static str },
    #[error("cannot write {path}")]
    #[diagnostic(
        code(moorline::init::write),
        help("check that the directory exists and is writable")
    )]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the configuration moorline init generated does not validate; nothing was written (this is a bug in moorline init, please report it with the diagnostics below)"
    )]
    #[diagnostic(code(moorline::init::invalid_output))]
    InvalidOutput {
        #[related]
        problems: Vec<crate::config::ConfigError>,
    },
}

//! `moorline init [DIR] [--out FILE] [--force]`: reads a repository,
//! writes the configuration `init::render` makes of it (only after it
//! validates) and prints what was found and what to check.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::cli::InitArgs;
use crate::exit;
use crate::init::{self, Files, InitError};

pub(crate) fn run(args: &InitArgs) -> miette::Result<i32> {
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    let out = args.out.clone().unwrap_or_else(|| dir.join("moorline.kdl"));
    // Refuse before reading anything: nothing is written either way.
    writable(&out, args.force)?;
    let files = Files::read(&dir)?;
    let scan = init::scan(&files)?;
    let text = init::render(&scan);
    // Never write a configuration that does not validate, but for the
    // start commands init left as TODOs (validate refuses those until a
    // person writes them).
    let config = match crate::config::parse(&out.display().to_string(), &text) {
        Ok(c) => Some(c),
        Err(e)
            if e.problems
                .iter()
                .all(|p| p.kind == crate::config::ProblemKind::InitTodo) =>
        {
            None
        }
        Err(e) => return Err(InitError::InvalidOutput { problems: vec![e] }.into()),
    };
    // Nor one that `validate` refuses: its environments share this host.
    if let Some(config) = config
        && let Err(e) = crate::config::check_shared_hosts(&crate::config::Loaded {
            path: out.clone(),
            text: text.clone(),
            config,
        })
    {
        return Err(InitError::InvalidOutput { problems: vec![e] }.into());
    }
    write(&out, text.as_bytes(), args.force)?;

    let runtimes: Vec<&str> = scan.runtimes.iter().map(|r| r.name.as_str()).collect();
    println!(
        "wrote {}: project {}, {} service{} (runtimes {}){}",
        out.display(),
        scan.project.value,
        scan.services.len(),
        if scan.services.len() == 1 { "" } else { "s" },
        runtimes.join(", "),
        if scan.proxy.is_some() {
            ", proxy nginx"
        } else {
            ""
        }
    );
    print!("{}", crate::secrets::redact(&init::summary(&scan)));
    if files.truncated {
        println!(
            "  - the repository is large: only part of it was read; check that every service is listed"
        );
    }
    if files.branch.is_none() {
        println!(
            "  - {} is not in a git repository (or has no branch): moorline deploys commits; `git init`, commit, and push the branch each environment names",
            dir.display()
        );
    }
    let flag = if found_by_discovery(&out) {
        String::new()
    } else {
        format!(" -c {}", shell_word(&out.display().to_string()))
    };
    let file = match (flag.is_empty(), out.file_name()) {
        (true, Some(name)) => name.to_string_lossy().into_owned(),
        _ => out.display().to_string(),
    };
    println!(
        "next: moorline{flag} validate; commit {} (moorline deploys commits, and `apply` refuses a configuration that is not committed); then moorline{flag} plan --env staging",
        shell_word(&file)
    );
    Ok(exit::OK)
}

/// What is at `path` (without following a symlink), checked before init
/// writes there: nothing, or with `replace` a regular file. A symlink, a
/// FIFO, a device or a directory is refused, replaced or not.
fn writable(path: &Path, replace: bool) -> Result<(), InitError> {
    let shown = || path.display().to_string();
    match std::fs::symlink_metadata(path) {
        Ok(m) => {
            let t = m.file_type();
            let kind = if t.is_symlink() {
                Some("a symbolic link")
            } else if t.is_dir() {
                Some("a directory")
            } else if t.is_file() {
                None
            } else {
                Some("a FIFO, socket or device")
            };
            match kind {
                Some(kind) => Err(InitError::NotAFile {
                    path: shown(),
                    kind,
                }),
                None if replace => Ok(()),
                None => Err(InitError::Exists { path: shown() }),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(InitError::Write {
            path: shown(),
            source,
        }),
    }
}

/// Writes `bytes` to `path` atomically: into a temporary file created new
/// beside it (never an existing path), then renamed over `path` with
/// `replace`, else linked to it (which fails if something appeared there
/// meanwhile). A rename replaces a directory entry, so a symlink put at
/// `path` after [`writable`] looked is replaced, never written through.
fn write(path: &Path, bytes: &[u8], replace: bool) -> Result<(), InitError> {
    use std::os::unix::fs::OpenOptionsExt;
    writable(path, replace)?;
    let err = |source| InitError::Write {
        path: path.display().to_string(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().map_or_else(
        || "moorline.kdl".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    // Created new: an existing path there (a temporary file left by a
    // crash, or a symlink) is never opened; the next name is tried.
    let mut created = Err(std::io::Error::other("no temporary name tried"));
    for n in 0..100 {
        let tmp = dir.join(format!(".{name}.init-{}-{n}", std::process::id()));
        created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .map(|f| (tmp, f));
        if !matches!(&created, Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists) {
            break;
        }
    }
    let (tmp, mut f) = created.map_err(err)?;
    let written = f
        .write_all(bytes)
        .and_then(|()| f.sync_all())
        .and_then(|()| {
            if replace {
                std::fs::rename(&tmp, path)
            } else {
                std::fs::hard_link(&tmp, path).and_then(|()| std::fs::remove_file(&tmp))
            }
        });
    drop(f);
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(match e.kind() {
            std::io::ErrorKind::AlreadyExists if !replace => InitError::Exists {
                path: path.display().to_string(),
            },
            _ => err(e),
        });
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)
}

/// Whether `moorline validate` in the current directory (no `-c`, no
/// `MOORLINE_CONFIG`) would read `path`.
fn found_by_discovery(path: &Path) -> bool {
    if std::env::var_os("MOORLINE_CONFIG").is_some_and(|v| !v.is_empty()) {
        return false;
    }
    let Ok(cwd) = std::env::current_dir() else {
        return false;
    };
    let Ok(found) = crate::config::locate(None, None, &cwd) else {
        return false;
    };
    match (std::fs::canonicalize(found), std::fs::canonicalize(path)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// A path as one shell word, for a command line the user copies.
fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+' | ':' | '@')
        })
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

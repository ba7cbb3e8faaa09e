//! `moorline init [DIR] [--out FILE] [--force]`: reads a repository,
//! writes the configuration `init::render` makes of it (only after it
//! validates) and prints what was found and what to check.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::cli::InitArgs;
use crate::exit;
use crate::init::{self, Files, InitError};

pub fn run(args: &InitArgs) -> miette::Result<i32> {
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    let out = args.out.clone().unwrap_or_else(|| dir.join("moorline.kdl"));
    // Refuse before reading anything: nothing is written either way.
    if !args.force && out.exists() {
        return Err(InitError::Exists {
            path: out.display().to_string(),
        }
        .into());
    }
    let files = Files::read(&dir)?;
    let scan = init::scan(&files)?;
    let text = init::render(&scan);
    // Never write a configuration that does not validate.
    if let Err(e) = crate::config::parse(&out.display().to_string(), &text) {
        return Err(InitError::InvalidOutput { problems: vec![e] }.into());
    }
    write(&out, text.as_bytes(), args.force).map_err(|source| InitError::Write {
        path: out.display().to_string(),
        source,
    })?;

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
    println!("next: moorline{flag} validate, then moorline{flag} plan --env staging");
    Ok(exit::OK)
}

/// Writes `bytes` to `path`: a new file, or with `replace` over an existing one.
fn write(path: &Path, bytes: &[u8], replace: bool) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .create_new(!replace)
        .truncate(true)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
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

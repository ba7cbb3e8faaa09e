//! A release's files as a manifest lists them: the walk that packing and
//! checking share, the check of a release against its manifest (what
//! `status --check` reports as drift), and relocation of the files that
//! name the directory they were built in.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::{ArtifactError, Entry, EntryKind};
use crate::deps::{contains, replace};

/// Files larger than this are not scanned for the origin's path (as the
/// dependency cache does, [`crate::deps`]).
const RELOCATE_MAX: u64 = 1024 * 1024;

/// An entry and the file it was read from.
pub(crate) struct Walked {
    pub(crate) entry: Entry,
    pub(crate) source: PathBuf,
}

/// Whether a top-level name is moorline's own (`.moorline-built`, ...).
fn is_marker(name: &str) -> bool {
    name.starts_with(".moorline-")
}

/// Every entry under `dir` in byte order of its path (a directory before
/// what it holds), leaving out the top-level names in `skip` and markers.
pub(crate) fn walk(
    dir: &Path,
    skip: &BTreeSet<String>,
    origin: &str,
) -> Result<Vec<Walked>, ArtifactError> {
    let mut out = Vec::new();
    walk_into(dir, "", skip, origin.as_bytes(), &mut out)?;
    Ok(out)
}

fn walk_into(
    dir: &Path,
    prefix: &str,
    skip: &BTreeSet<String>,
    origin: &[u8],
    out: &mut Vec<Walked>,
) -> Result<(), ArtifactError> {
    let fail = ArtifactError::io;
    let mut names = Vec::new();
    for e in fs::read_dir(dir).map_err(fail("reading", dir))? {
        let e = e.map_err(fail("reading", dir))?;
        let name = e
            .file_name()
            .into_string()
            .map_err(|n| ArtifactError::Unsupported {
                path: dir.join(n).display().to_string(),
                why: "its name is not UTF-8".to_owned(),
            })?;
        if prefix.is_empty() && (skip.contains(&name) || is_marker(&name)) {
            continue;
        }
        names.push(name);
    }
    names.sort_unstable();
    for name in names {
        let path = dir.join(&name);
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let meta = fs::symlink_metadata(&path).map_err(fail("reading", &path))?;
        let ft = meta.file_type();
        let mode = meta.permissions().mode() & 0o7777;
        if ft.is_symlink() {
            let target = fs::read_link(&path).map_err(fail("reading", &path))?;
            let target =
                target
                    .into_os_string()
                    .into_string()
                    .map_err(|_| ArtifactError::Unsupported {
                        path: path.display().to_string(),
                        why: "its target is not UTF-8".to_owned(),
                    })?;
            let relocate = contains(target.as_bytes(), origin);
            out.push(Walked {
                entry: Entry {
                    path: rel,
                    kind: EntryKind::Symlink { target, relocate },
                },
                source: path,
            });
        } else if ft.is_dir() {
            out.push(Walked {
                entry: Entry {
                    path: rel.clone(),
                    kind: EntryKind::Dir { mode },
                },
                source: path.clone(),
            });
            walk_into(&path, &rel, skip, origin, out)?;
        } else if ft.is_file() {
            let (sha256, size, relocate) = hash_and_scan(&path, origin)?;
            out.push(Walked {
                entry: Entry {
                    path: rel,
                    kind: EntryKind::File {
                        mode,
                        size,
                        sha256,
                        relocate,
                    },
                },
                source: path,
            });
        } else {
            return Err(ArtifactError::Unsupported {
                path: path.display().to_string(),
                why: "not a regular file, directory or symbolic link".to_owned(),
            });
        }
    }
    Ok(())
}

/// A file's SHA-256, size, and whether it names `origin` (small files only).
fn hash_and_scan(path: &Path, origin: &[u8]) -> Result<(String, u64, bool), ArtifactError> {
    let size = fs::metadata(path)
        .map_err(ArtifactError::io("reading", path))?
        .len();
    if size <= RELOCATE_MAX {
        let bytes = fs::read(path).map_err(ArtifactError::io("reading", path))?;
        // Text only, as the dependency cache does: a binary that holds
        // the path (debug info, a compiled-in default) would be corrupted
        // by a rewrite of another length.
        let relocate = !bytes.contains(&0) && contains(&bytes, origin);
        return Ok((
            crate::files::sha256_hex(&bytes),
            bytes.len() as u64,
            relocate,
        ));
    }
    let (sha, size) = super::pack::hash_file(path)?;
    Ok((sha, size, false))
}

/// Rewrites, in the unpacked tree `dir`, the entries marked `relocate`:
/// `origin` becomes `here` (the release's own path). A file is written
/// anew with its mode; a link is made again.
pub(crate) fn relocate(
    dir: &Path,
    files: &[Entry],
    origin: &str,
    here: &str,
) -> Result<usize, ArtifactError> {
    let fail = ArtifactError::io;
    let mut n = 0;
    for e in files {
        let path = dir.join(&e.path);
        match &e.kind {
            EntryKind::File {
                mode,
                relocate: true,
                ..
            } => {
                let bytes = fs::read(&path).map_err(fail("reading", &path))?;
                let new = replace(&bytes, origin.as_bytes(), here.as_bytes());
                let tmp = path.with_file_name(format!(".relocating-{}", std::process::id()));
                fs::write(&tmp, new).map_err(fail("writing", &tmp))?;
                fs::set_permissions(&tmp, fs::Permissions::from_mode(*mode))
                    .map_err(fail("writing", &tmp))?;
                fs::rename(&tmp, &path).map_err(fail("writing", &path))?;
                n += 1;
            }
            EntryKind::Symlink {
                target,
                relocate: true,
            } => {
                let new = String::from_utf8_lossy(&replace(
                    target.as_bytes(),
                    origin.as_bytes(),
                    here.as_bytes(),
                ))
                .into_owned();
                fs::remove_file(&path).map_err(fail("replacing", &path))?;
                std::os::unix::fs::symlink(new, &path).map_err(fail("creating", &path))?;
                n += 1;
            }
            _ => {}
        }
    }
    Ok(n)
}

/// What differs between the release `dir` and the entries its manifest
/// lists: each `path (what)`, sorted; empty when it is exactly the
/// artifact. The top-level names in `skip` (the dependency outputs) and
/// markers are not compared. Relocated entries are compared with `here`
/// (the release's path) read back as `origin`.
pub(crate) fn verify(
    dir: &Path,
    files: &[Entry],
    skip: &BTreeSet<String>,
    origin: &str,
    here: &str,
) -> Result<Vec<String>, ArtifactError> {
    // Walk with `here` as the origin: a relocated file names `here` now.
    let found: BTreeMap<String, Walked> = walk(dir, skip, here)?
        .into_iter()
        .map(|w| (w.entry.path.clone(), w))
        .collect();
    let mut out = Vec::new();
    let mut listed = BTreeSet::new();
    for e in files {
        listed.insert(e.path.as_str());
        let Some(w) = found.get(&e.path) else {
            out.push(format!("{} (missing)", e.path));
            continue;
        };
        let what = match (&e.kind, &w.entry.kind) {
            (EntryKind::Dir { mode: a }, EntryKind::Dir { mode: b }) => {
                (a != b).then(|| format!("mode {b:o}, not {a:o}"))
            }
            (
                EntryKind::File {
                    mode: ma,
                    sha256: ha,
                    relocate,
                    ..
                },
                EntryKind::File {
                    mode: mb,
                    sha256: hb,
                    ..
                },
            ) => {
                let same = if *relocate {
                    let bytes =
                        fs::read(&w.source).map_err(ArtifactError::io("reading", &w.source))?;
                    let back = replace(&bytes, here.as_bytes(), origin.as_bytes());
                    crate::files::sha256_hex(&back) == *ha
                } else {
                    ha == hb
                };
                if !same {
                    Some("modified".to_owned())
                } else if ma != mb {
                    Some(format!("mode {mb:o}, not {ma:o}"))
                } else {
                    None
                }
            }
            (
                EntryKind::Symlink {
                    target: ta,
                    relocate,
                },
                EntryKind::Symlink { target: tb, .. },
            ) => {
                let expected = if *relocate {
                    String::from_utf8_lossy(&replace(
                        ta.as_bytes(),
                        origin.as_bytes(),
                        here.as_bytes(),
                    ))
                    .into_owned()
                } else {
                    ta.clone()
                };
                (expected != *tb).then(|| format!("links to {tb}, not {expected}"))
            }
            _ => Some("another kind of file".to_owned()),
        };
        if let Some(what) = what {
            out.push(format!("{} ({what})", e.path));
        }
    }
    for path in found.keys() {
        if !listed.contains(path.as_str()) {
            out.push(format!("{path} (added)"));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binaries_that_name_the_origin_are_not_relocated() {
        let t = tempfile::tempdir().unwrap();
        let o = t.path().display().to_string();
        fs::write(
            t.path().join("bin"),
            [b"\x7fELF\0".as_slice(), o.as_bytes()].concat(),
        )
        .unwrap();
        fs::write(t.path().join("script"), format!("#!{o}/python\n")).unwrap();
        let w = walk(t.path(), &BTreeSet::new(), &o).unwrap();
        let flags: Vec<(&str, bool)> = w
            .iter()
            .map(|w| match &w.entry.kind {
                EntryKind::File { relocate, .. } => (w.entry.path.as_str(), *relocate),
                _ => (w.entry.path.as_str(), false),
            })
            .collect();
        assert_eq!(flags, [("bin", false), ("script", true)]);
    }

    #[test]
    fn replace_and_contains_handle_every_occurrence() {
        assert_eq!(replace(b"/a/x /a/y /b", b"/a", b"/zz"), b"/zz/x /zz/y /b");
        assert_eq!(replace(b"abc", b"", b"x"), b"abc");
        assert!(contains(b"#!/srv/r/venv/bin/python", b"/srv/r"));
        assert!(!contains(b"anything", b""));
    }

    #[test]
    fn drift_names_what_was_edited_added_removed_or_chmodded() {
        let t = tempfile::tempdir().unwrap();
        let origin = t.path().join("built");
        fs::create_dir_all(origin.join("lib")).unwrap();
        fs::write(origin.join("lib/a.js"), "a").unwrap();
        fs::write(origin.join("b.js"), "b").unwrap();
        fs::write(
            origin.join("run"),
            format!("#!{}/venv/bin/python\n", origin.display()),
        )
        .unwrap();
        let o = origin.display().to_string();
        let files: Vec<Entry> = walk(&origin, &BTreeSet::new(), &o)
            .unwrap()
            .into_iter()
            .map(|w| w.entry)
            .collect();
        // Installed elsewhere, relocated: no drift.
        let here = t.path().join("release");
        fs::create_dir_all(here.join("lib")).unwrap();
        fs::write(here.join("lib/a.js"), "a").unwrap();
        fs::write(here.join("b.js"), "b").unwrap();
        fs::write(
            here.join("run"),
            format!("#!{}/venv/bin/python\n", origin.display()),
        )
        .unwrap();
        let h = here.display().to_string();
        relocate(&here, &files, &o, &h).unwrap();
        assert_eq!(
            fs::read_to_string(here.join("run")).unwrap(),
            format!("#!{h}/venv/bin/python\n")
        );
        let none = BTreeSet::new();
        assert_eq!(
            verify(&here, &files, &none, &o, &h).unwrap(),
            Vec::<String>::new()
        );
        fs::write(here.join("lib/a.js"), "edited by hand").unwrap();
        fs::remove_file(here.join("b.js")).unwrap();
        fs::write(here.join("new.js"), "n").unwrap();
        fs::set_permissions(here.join("run"), fs::Permissions::from_mode(0o777)).unwrap();
        fs::write(here.join(".moorline-built"), "x").unwrap();
        assert_eq!(
            verify(&here, &files, &none, &o, &h).unwrap(),
            [
                "b.js (missing)",
                "lib/a.js (modified)",
                "new.js (added)",
                "run (mode 777, not 644)"
            ]
        );
    }
}

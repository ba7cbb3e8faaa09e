//! Packs: a directory as a reproducible `tar` + zstd stream (entries in
//! byte order of their paths, mtime 0, owner and group 0, no user names, the
//! permission bits kept), and a pack unpacked into a new directory only once
//! the file's SHA-256 matched what the manifest says.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path};

use sha2::{Digest, Sha256};

use super::tree::{self, Walked};
use super::{ArtifactError, Entry, EntryKind, Pack};

/// zstd's level: fast enough to pack on every deploy, a good ratio on
/// source trees and `node_modules` (level 3 is zstd's own default).
const LEVEL: i32 = 3;

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    size: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Packs `dir` into the new file `out` (created; fsync'd), leaving out the
/// top-level names in `skip` and moorline's own markers (`.moorline-*`).
/// Files that name `origin` are marked to be relocated. Returns the pack
/// and its entries, in pack order.
pub(crate) fn write(
    dir: &Path,
    skip: &BTreeSet<String>,
    origin: &str,
    out: &Path,
) -> Result<(Pack, Vec<Entry>), ArtifactError> {
    let walked = tree::walk(dir, skip, origin)?;
    let file = File::create_new(out).map_err(ArtifactError::io("creating", out))?;
    let hashing = Hashing {
        inner: BufWriter::new(file),
        hash: Sha256::new(),
        size: 0,
    };
    let fail = ArtifactError::io;
    let enc =
        zstd::stream::write::Encoder::new(hashing, LEVEL).map_err(fail("compressing", out))?;
    let mut tar = tar::Builder::new(enc);
    for Walked { entry, source } in &walked {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        match &entry.kind {
            EntryKind::Dir { mode } => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                tar.append_data(&mut h, format!("{}/", entry.path), io::empty())
                    .map_err(fail("packing", source))?;
            }
            EntryKind::File { mode, size, .. } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(*size);
                let f = File::open(source).map_err(fail("reading", source))?;
                // A file that grew or shrank since it was hashed would make
                // the pack disagree with its manifest: read exactly `size`.
                let mut body = f.take(*size);
                tar.append_data(&mut h, &entry.path, &mut body)
                    .map_err(fail("packing", source))?;
            }
            EntryKind::Symlink { target, .. } => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                tar.append_link(&mut h, &entry.path, target)
                    .map_err(fail("packing", source))?;
            }
        }
    }
    let enc = tar.into_inner().map_err(fail("packing", out))?;
    let mut hashing = enc.finish().map_err(fail("compressing", out))?;
    hashing.flush().map_err(fail("writing", out))?;
    let file = hashing
        .inner
        .into_inner()
        .map_err(|e| fail("writing", out)(e.into_error()))?;
    file.sync_all().map_err(fail("syncing", out))?;
    let pack = Pack {
        sha256: hex::encode(hashing.hash.finalize()),
        size: hashing.size,
    };
    Ok((pack, walked.into_iter().map(|w| w.entry).collect()))
}

/// The SHA-256 (hex) and size of a file.
pub(crate) fn hash_file(path: &Path) -> Result<(String, u64), ArtifactError> {
    crate::files::sha256_file(path).map_err(ArtifactError::io("reading", path))
}

/// Checks that `file` is `pack` (its SHA-256 and size).
pub(crate) fn check(file: &Path, pack: &Pack) -> Result<(), ArtifactError> {
    let (sha, size) = hash_file(file)?;
    if sha != pack.sha256 || size != pack.size {
        return Err(ArtifactError::HashMismatch {
            what: format!("the pack {}", file.display()),
            expected: format!("sha256:{} ({} bytes)", pack.sha256, pack.size),
            found: format!("sha256:{sha} ({size} bytes)"),
        });
    }
    Ok(())
}

/// Unpacks `file`, once its hash is `pack`'s, into `dest`, which must not
/// exist (it is created). Only regular files, directories and symbolic
/// links under plain relative paths are accepted, and nothing is written
/// through a link: every parent must be a directory this unpack created.
/// Directory modes are set last, so a read-only directory still receives
/// its files. Returns the number of entries.
pub(crate) fn unpack(file: &Path, pack: &Pack, dest: &Path) -> Result<u64, ArtifactError> {
    check(file, pack)?;
    let fail = ArtifactError::io;
    fs::create_dir(dest).map_err(fail("creating", dest))?;
    let f = File::open(file).map_err(fail("reading", file))?;
    let dec = zstd::stream::read::Decoder::new(BufReader::new(f)).map_err(fail("reading", file))?;
    let mut archive = tar::Archive::new(dec);
    let unsafe_entry = |entry: &str, why: &str| ArtifactError::UnsafeEntry {
        pack: file.display().to_string(),
        entry: entry.to_owned(),
        why: why.to_owned(),
    };
    let mut dirs: BTreeSet<std::path::PathBuf> = BTreeSet::new();
    let mut modes: Vec<(std::path::PathBuf, u32)> = Vec::new();
    let mut count = 0u64;
    for e in archive.entries().map_err(fail("reading", file))? {
        let mut e = e.map_err(fail("reading", file))?;
        let path = e.path().map_err(fail("reading", file))?.into_owned();
        let shown = path.display().to_string();
        if path.as_os_str().is_empty()
            || !path.components().all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(unsafe_entry(&shown, "not a plain relative path"));
        }
        let parent = path.parent().unwrap_or(Path::new(""));
        if !parent.as_os_str().is_empty() && !dirs.contains(parent) {
            return Err(unsafe_entry(
                &shown,
                "its directory is not a directory of the pack listed before it",
            ));
        }
        let at = dest.join(&path);
        let mode = e.header().mode().map_err(fail("reading", file))? & 0o7777;
        match e.header().entry_type() {
            tar::EntryType::Directory => {
                fs::create_dir(&at).map_err(fail("creating", &at))?;
                dirs.insert(path);
                modes.push((at, mode));
            }
            tar::EntryType::Regular => {
                let mut out = File::create_new(&at).map_err(fail("creating", &at))?;
                io::copy(&mut e, &mut out).map_err(fail("writing", &at))?;
                out.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(fail("writing", &at))?;
            }
            tar::EntryType::Symlink => {
                let target = e
                    .link_name()
                    .map_err(fail("reading", file))?
                    .ok_or_else(|| unsafe_entry(&shown, "a link without a target"))?
                    .into_owned();
                std::os::unix::fs::symlink(&target, &at).map_err(fail("creating", &at))?;
            }
            other => {
                return Err(unsafe_entry(&shown, &format!("entry type {other:?}")));
            }
        }
        count += 1;
    }
    for (dir, mode) in modes.into_iter().rev() {
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
            .map_err(fail("writing", &dir))?;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn tree(dir: &Path, origin: &Path) {
        fs::create_dir_all(dir.join("bin")).unwrap();
        fs::create_dir_all(dir.join("lib/deep/er")).unwrap();
        fs::write(dir.join("server.js"), "console.log(1)\n").unwrap();
        fs::write(
            dir.join("bin/run"),
            format!("#!{}/venv/bin/python\n", origin.display()),
        )
        .unwrap();
        fs::set_permissions(dir.join("bin/run"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(dir.join("lib/deep/er/x.txt"), vec![7u8; 300_000]).unwrap();
        symlink("../server.js", dir.join("bin/link")).unwrap();
        fs::write(dir.join(".moorline-built"), "sha").unwrap();
        fs::create_dir(dir.join("node_modules")).unwrap();
        fs::write(dir.join("node_modules/a.js"), "x").unwrap();
    }

    #[test]
    fn packs_are_reproducible_and_unpack_to_the_same_tree() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        tree(&a, &a);
        // The same content written later, in another order, another mtime.
        std::thread::sleep(std::time::Duration::from_millis(20));
        tree(&b, &a);
        let skip: BTreeSet<String> = ["node_modules".to_owned()].into();
        let (pa, ea) = write(
            &a,
            &skip,
            &a.display().to_string(),
            &t.path().join("a.tzst"),
        )
        .unwrap();
        let (pb, _) = write(
            &b,
            &skip,
            &a.display().to_string(),
            &t.path().join("b.tzst"),
        )
        .unwrap();
        assert_eq!(
            fs::read(t.path().join("a.tzst")).unwrap(),
            fs::read(t.path().join("b.tzst")).unwrap(),
            "the same files make the same bytes"
        );
        let _ = pb;
        let names: Vec<&str> = ea.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/link",
                "bin/run",
                "lib",
                "lib/deep",
                "lib/deep/er",
                "lib/deep/er/x.txt",
                "server.js"
            ],
            "sorted, markers and skipped outputs left out"
        );
        let run = ea.iter().find(|e| e.path == "bin/run").unwrap();
        assert!(
            matches!(
                run.kind,
                EntryKind::File {
                    relocate: true,
                    mode: 0o755,
                    ..
                }
            ),
            "{run:?}"
        );
        let out = t.path().join("out");
        assert_eq!(unpack(&t.path().join("a.tzst"), &pa, &out).unwrap(), 8);
        assert_eq!(
            tree::verify(
                &out,
                &ea,
                &skip,
                &a.display().to_string(),
                &a.display().to_string()
            )
            .unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            fs::read_link(out.join("bin/link")).unwrap(),
            Path::new("../server.js")
        );
    }

    #[test]
    fn a_pack_that_is_not_its_hash_is_not_unpacked() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        tree(&a, &a);
        let file = t.path().join("a.tzst");
        let (pack, _) = write(&a, &BTreeSet::new(), "/nowhere", &file).unwrap();
        let mut bytes = fs::read(&file).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        fs::write(&file, bytes).unwrap();
        let out = t.path().join("out");
        let err = unpack(&file, &pack, &out).unwrap_err();
        assert!(matches!(err, ArtifactError::HashMismatch { .. }), "{err}");
        assert!(!out.exists(), "nothing was unpacked");
    }

    /// A pack that moorline did not write: a path with `..`, or a file
    /// under a symbolic link, is refused.
    #[test]
    fn hostile_packs_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let hostile = |name: &str, build: &dyn Fn(&mut tar::Builder<Vec<u8>>)| {
            let mut b = tar::Builder::new(Vec::new());
            build(&mut b);
            let raw = b.into_inner().unwrap();
            let z = zstd::stream::encode_all(&raw[..], 3).unwrap();
            let file = t.path().join(format!("{name}.tzst"));
            fs::write(&file, &z).unwrap();
            let pack = Pack {
                sha256: crate::files::sha256_hex(&z),
                size: z.len() as u64,
            };
            unpack(&file, &pack, &t.path().join(format!("{name}-out")))
        };
        let file = |b: &mut tar::Builder<Vec<u8>>, path: &str| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(1);
            h.set_mode(0o644);
            // `append_data` refuses `..`; write the name into the header.
            let name = path.as_bytes();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_cksum();
            b.append(&h, &b"x"[..]).unwrap();
        };
        let err = hostile("dotdot", &|b| file(b, "../escape")).unwrap_err();
        assert!(matches!(err, ArtifactError::UnsafeEntry { .. }), "{err}");
        assert!(!t.path().join("escape").exists());
        let err = hostile("through-link", &|b| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
            b.append_link(&mut h, "l", "/tmp").unwrap();
            file(b, "l/x");
        })
        .unwrap_err();
        assert!(matches!(err, ArtifactError::UnsafeEntry { .. }), "{err}");
    }
}

//! Durable, private files and content hashes: the leaf every stage that
//! writes to disk uses (state, journals, saved plans, unit files, logs).
//! Nothing here knows what it writes.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Seconds since the Unix epoch, now.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether moorline runs as root.
pub fn is_root() -> bool {
    // The owner of /proc/self is the effective user; no unsafe getuid().
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Replaces `path` with `bytes`: temp file in the same directory, fsync,
/// rename over the target, fsync the directory (so the rename itself is
/// durable). The file gets the default mode (0666 less the umask).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace(path, bytes, false)
}

/// [`write_atomic`] for a file only its owner may read: created 0600, in a
/// directory created 0700 if missing (state, saved plans, unit files that
/// carry secrets).
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace(path, bytes, true)
}

fn replace(path: &Path, bytes: &[u8], private: bool) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if private {
        private_dir(dir)?;
    } else {
        fs::create_dir_all(dir)?;
    }
    let name = path
        .file_name()
        .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    // A temp file left by a crash may have another mode or owner, or be a
    // link someone placed: it goes, and the new one must be new.
    let _ = fs::remove_file(&tmp);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if private { 0o600 } else { 0o666 })
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// Creates `dir` and any missing parents with mode 0700 (an existing
/// directory is left as it is; see [`tighten`]).
pub(crate) fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Creates (or truncates) a file only its owner may read: a new file is
/// created 0600; an existing one is tightened to 0600.
pub(crate) fn private_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    if f.metadata()?.permissions().mode() & 0o077 != 0 {
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    Ok(f)
}

/// Makes the state directory private: created 0700 if missing, and an
/// existing one that others may read or enter (older moorline created it
/// 0755) tightened to 0700. Only the state directory itself is tightened;
/// what moorline creates inside it is private from the start.
pub(crate) fn tighten(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    private_dir(dir)?;
    let mode = fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode & 0o700 | 0o700))?;
    }
    Ok(())
}

/// The SHA-256 of `bytes`, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The SHA-256 (lowercase hex) and size of the file at `path`, read in
/// chunks (backups, packs and moorline's own binary are too big to read
/// whole).
pub(crate) fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    use std::io::Read;
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((hex::encode(h.finalize()), size))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_replaced_file_is_whole_and_private_files_stay_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/state.json");
        // A stale temp file from a crash, with another mode, is replaced.
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        let stale = dir
            .path()
            .join(format!("sub/.state.json.tmp-{}", std::process::id()));
        fs::write(&stale, b"stale").unwrap();
        write_private(&p, b"one").unwrap();
        write_private(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert!(!stale.exists());
        let mode = fs::metadata(&p).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

//! The durable JSON-lines file under both write-ahead journals (an apply's
//! and the fleet controller's): created private and new, each line appended
//! and fsync'd before the caller goes on, a torn last line cut on reopening,
//! and the finished file moved into `history/`.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// An open journal file, appending.
pub(crate) struct Lines {
    path: PathBuf,
    file: File,
}

/// Makes `dir`'s entries (a created, renamed or removed file) durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir).and_then(|d| d.sync_all())
}

/// The largest journal file read back (1 GiB). A journal holds one plan
/// (an apply's own, or a fleet plan with every host's; each host plan at
/// most [`crate::plan::PLAN_FILE_CAP`], a 2,000-service one a few MB) and
/// a few short records per action; the cap is far above what moorline
/// writes and only keeps a file that is no journal from taking the
/// host's memory.
pub(crate) const JOURNAL_FILE_CAP: u64 = 1024 * 1024 * 1024;

/// The bytes of the journal file at `path`: a regular file of at most
/// [`JOURNAL_FILE_CAP`] bytes, else an error saying what it is (a missing
/// file is `NotFound`).
pub(crate) fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    use crate::json_file::ReadError;
    crate::json_file::read(path, JOURNAL_FILE_CAP).map_err(|e| match e {
        ReadError::Io(e) => e,
        other => std::io::Error::other(other.to_string()),
    })
}

/// The length of the complete lines of `bytes` (a torn last line cut off).
pub(crate) fn complete_len(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1)
}

impl Lines {
    /// Creates `dir/name` (mode 0600; an existing file is an error: a
    /// journal is unfinished) and makes its directory entry durable.
    pub(crate) fn create(dir: &Path, name: &str) -> std::io::Result<Self> {
        let path = dir.join(name);
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let lines = Self { path, file };
        match sync_dir(dir) {
            Ok(()) => Ok(lines),
            Err(e) => {
                lines.discard();
                Err(e)
            }
        }
    }

    /// Removes the file again, when its first record could not be written
    /// (a full disk): the next command then finds no journal, rather than
    /// one that is unfinished although nothing acted under it. Best effort:
    /// the write error is what the caller reports, and a file left behind
    /// has no complete first record, which both readers treat as nothing
    /// begun.
    pub(crate) fn discard(self) {
        if fs::remove_file(&self.path).is_ok()
            && let Some(dir) = self.path.parent()
        {
            let _ = sync_dir(dir);
        }
    }

    /// Reopens `path` for appending; a torn last line is cut off first, so
    /// the next line starts on a line of its own.
    pub(crate) fn reopen(path: PathBuf) -> std::io::Result<Self> {
        // Read first: a path that is not a regular file is refused before
        // it is opened for writing (a FIFO would block that open).
        let bytes = read(&path)?;
        let file = OpenOptions::new().append(true).open(&path)?;
        let complete = complete_len(&bytes);
        if complete < bytes.len() {
            file.set_len(complete as u64)?;
            file.sync_data()?;
        }
        Ok(Self { path, file })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// A file opened elsewhere (tests: `/dev/full` for a full disk).
    #[cfg(test)]
    pub(crate) fn from_parts(path: PathBuf, file: File) -> Self {
        Self { path, file }
    }

    /// Appends `line` (without its newline) and fsyncs it.
    pub(crate) fn append(&mut self, mut line: Vec<u8>) -> std::io::Result<()> {
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()
    }

    /// The `history/` directory beside the file.
    pub(crate) fn history_dir(&self) -> PathBuf {
        self.path.parent().unwrap_or(Path::new(".")).join("history")
    }

    /// Moves the finished file to `history/{id}.jsonl` (created private)
    /// and makes the move durable.
    pub(crate) fn finish(self, id: &str) -> std::io::Result<()> {
        let history = self.history_dir();
        crate::files::private_dir(&history)?;
        fs::rename(&self.path, history.join(format!("{id}.jsonl")))?;
        sync_dir(self.path.parent().unwrap_or(Path::new(".")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_appended_a_torn_tail_is_cut_and_the_file_ends_in_history() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Lines::create(dir.path(), "j.jsonl").unwrap();
        assert!(
            Lines::create(dir.path(), "j.jsonl").is_err(),
            "an existing journal is never replaced"
        );
        let mode = fs::metadata(l.path()).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        l.append(b"{\"a\":1}".to_vec()).unwrap();
        let path = l.path().to_path_buf();
        drop(l);
        // A write cut short.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"b\":").unwrap();
        let mut l = Lines::reopen(path.clone()).unwrap();
        l.append(b"{\"c\":3}".to_vec()).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"a\":1}\n{\"c\":3}\n");
        l.finish("id1").unwrap();
        assert!(!path.exists());
        assert_eq!(
            fs::read_to_string(dir.path().join("history/id1.jsonl")).unwrap(),
            "{\"a\":1}\n{\"c\":3}\n"
        );
        // A discarded file is gone, and a new one can be created.
        let l = Lines::create(dir.path(), "j.jsonl").unwrap();
        l.discard();
        assert!(!path.exists());
        assert!(Lines::create(dir.path(), "j.jsonl").is_ok());
    }
}

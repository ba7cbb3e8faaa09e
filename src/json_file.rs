//! Reading JSON files that moorline wrote but anyone may hand it back: saved
//! plans (`apply PLANFILE`, `--reviewed`), `state.json`, the journals. In:
//! a path (or standard input) and a size cap; out: the file's bytes, and
//! for plans and states a parsed value with no key given twice. Guarantees:
//!
//! - only a regular file is read: a FIFO, a device (`/dev/zero`), a socket
//!   or a directory is refused before a byte is read, and the file is
//!   opened non-blocking and checked again once open, so a FIFO swapped in
//!   meanwhile never blocks;
//! - at most the cap is read, whatever the file claims or grows to;
//! - a JSON object with a key given twice, at any depth, is refused
//!   ([`parse_unique`]): serde would keep one of the two values silently,
//!   so a reviewer and moorline could read different plans in one file.

use std::collections::HashSet;
use std::fmt;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Why a file was not read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// Not a regular file: what it is instead.
    NotAFile(&'static str),
    /// Larger than the cap (`size`: what it has, or at least has).
    TooLarge {
        size: u64,
        cap: u64,
    },
    Io(std::io::Error),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAFile(kind) => write!(f, "it is {kind}, not a regular file"),
            Self::TooLarge { size, cap } => {
                write!(f, "it holds {size} bytes or more; the limit is {cap}")
            }
            Self::Io(e) => e.fmt(f),
        }
    }
}

/// What a file that is not regular is, for messages.
fn kind(t: std::fs::FileType) -> Option<&'static str> {
    if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else if t.is_socket() {
        Some("a socket")
    } else {
        Some("not a file")
    }
}

/// `O_NONBLOCK`: opening a FIFO for reading does not wait for a writer.
fn nonblock() -> i32 {
    i32::try_from(rustix::fs::OFlags::NONBLOCK.bits()).unwrap_or(0)
}

/// The bytes of the regular file at `path`, at most `cap` of them. A
/// missing file is `Io` with `NotFound`.
pub(crate) fn read(path: &Path, cap: u64) -> Result<Vec<u8>, ReadError> {
    let meta = std::fs::metadata(path).map_err(ReadError::Io)?;
    if let Some(k) = kind(meta.file_type()) {
        return Err(ReadError::NotAFile(k));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nonblock())
        .open(path)
        .map_err(ReadError::Io)?;
    // The path may have been replaced between the two looks.
    let meta = file.metadata().map_err(ReadError::Io)?;
    if let Some(k) = kind(meta.file_type()) {
        return Err(ReadError::NotAFile(k));
    }
    if meta.len() > cap {
        return Err(ReadError::TooLarge {
            size: meta.len(),
            cap,
        });
    }
    read_capped(file, cap)
}

/// At most `cap` bytes of `r` (standard input: a pipe has no size to
/// check first).
pub(crate) fn read_capped(r: impl Read, cap: u64) -> Result<Vec<u8>, ReadError> {
    let mut bytes = Vec::new();
    r.take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    let size = bytes.len() as u64;
    if size > cap {
        return Err(ReadError::TooLarge { size, cap });
    }
    Ok(bytes)
}

/// Why JSON text was not parsed.
#[derive(Debug)]
pub(crate) enum JsonError {
    /// An object holds a key twice (the message names it and where).
    Duplicate(String),
    /// Not JSON (or not UTF-8).
    Syntax(serde_json::Error),
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Duplicate(m) => f.write_str(m),
            Self::Syntax(e) => e.fmt(f),
        }
    }
}

/// Parses `bytes` as JSON, refusing any object with a key given twice.
pub(crate) fn parse_unique(bytes: &[u8]) -> Result<serde_json::Value, JsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match UniqueKeys.deserialize(&mut de).and_then(|()| de.end()) {
        Ok(()) => {}
        Err(e) if e.classify() == serde_json::error::Category::Data => {
            return Err(JsonError::Duplicate(e.to_string()));
        }
        Err(e) => return Err(JsonError::Syntax(e)),
    }
    serde_json::from_slice(bytes).map_err(JsonError::Syntax)
}

/// Longest key quoted in a duplicate-key message.
const KEY_SHOWN: usize = 60;

/// Walks a JSON document and fails on the first object that holds a key
/// twice; keeps nothing else.
struct UniqueKeys;

impl<'de> DeserializeSeed<'de> for UniqueKeys {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UniqueKeys {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(UniqueKeys)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                let mut shown: String = key.chars().take(KEY_SHOWN).collect();
                if shown.len() < key.len() {
                    shown.push('…');
                }
                return Err(de::Error::custom(format!(
                    "the key {shown:?} is given twice"
                )));
            }
            map.next_value_seed(UniqueKeys)?;
        }
        Ok(())
    }
}

/// The `format_version` of a JSON document, shown, unless it is `expected`.
pub(crate) fn foreign_version(doc: &serde_json::Value, expected: u32) -> Option<String> {
    match doc.get("format_version") {
        Some(v) if v.as_u64() == Some(u64::from(expected)) => None,
        Some(v) => Some(clip(&v.to_string())),
        None => Some("(none)".to_owned()),
    }
}

/// A value from a file, cut for a one-line message.
pub(crate) fn clip(s: &str) -> String {
    const MAX: usize = 40;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        let cases: &[(&str, Option<&str>)] = &[
            (r#"{"a":1,"b":2}"#, None),
            (r#"{"a":{"x":1},"b":{"x":1}}"#, None),
            (r#"[{"a":1},{"a":2}]"#, None),
            (r#"{"a":1,"a":1}"#, Some("\"a\"")),
            (r#"{"a":{"b":[1,{"c":1,"d":2,"c":3}]}}"#, Some("\"c\"")),
            // The same key after an escape is still the same key.
            (r#"{"a":1,"\u0061":2}"#, Some("\"a\"")),
            (r#"{"x\ny":1,"x\ny":2}"#, Some("\"x\\ny\"")),
        ];
        for (text, dup) in cases {
            match (parse_unique(text.as_bytes()), dup) {
                (Ok(v), None) => {
                    assert_eq!(v, serde_json::from_str::<serde_json::Value>(text).unwrap());
                }
                (Err(JsonError::Duplicate(m)), Some(key)) => {
                    assert!(m.contains(key), "{text}: {m}");
                    assert!(m.contains("line 1 column"), "{text}: {m}");
                }
                (r, _) => panic!("{text}: {r:?}"),
            }
        }
    }

    #[test]
    fn syntax_errors_are_not_duplicates() {
        for text in ["{", r#"{"a":1}x"#, "", r#"{"a" 1}"#] {
            assert!(
                matches!(parse_unique(text.as_bytes()), Err(JsonError::Syntax(_))),
                "{text}"
            );
        }
    }

    #[test]
    fn a_long_duplicate_key_is_cut() {
        let key = "k".repeat(10_000);
        let text = format!(r#"{{"{key}":1,"{key}":2}}"#);
        let Err(JsonError::Duplicate(m)) = parse_unique(text.as_bytes()) else {
            panic!()
        };
        assert!(m.len() < 200, "{m}");
    }

    #[test]
    fn only_regular_files_are_read_and_never_past_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        for (path, what) in [
            (fifo.as_path(), "a FIFO"),
            (Path::new("/dev/zero"), "a character device"),
            (dir.path(), "a directory"),
        ] {
            match read(path, 1024) {
                Err(ReadError::NotAFile(k)) => assert_eq!(k, what),
                r => panic!("{}: {r:?}", path.display()),
            }
        }
        let file = dir.path().join("f");
        std::fs::write(&file, b"0123456789").unwrap();
        assert_eq!(read(&file, 10).unwrap(), b"0123456789");
        assert!(matches!(
            read(&file, 9),
            Err(ReadError::TooLarge { size: 10, cap: 9 })
        ));
        // A stream without a size is cut at the cap.
        assert!(matches!(
            read_capped(std::io::repeat(0), 4096),
            Err(ReadError::TooLarge { size: 4097, .. })
        ));
        // A symlink to a regular file is read (a plan path may be one).
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert_eq!(read(&link, 10).unwrap(), b"0123456789");
    }
}

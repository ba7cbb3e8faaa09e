//! A content-addressed store of artifacts: `manifests/HEX.json` (the
//! manifest's exact bytes, HEX their SHA-256: the artifact's id) and
//! `packs/HEX.tar.zst`. Everything enters under a temporary name, is
//! checked against its hash, fsync'd and renamed into place, so a store
//! never holds a partial or wrong file under a real name; an interrupted
//! transfer is simply sent again.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{ArtifactError, MANIFEST_CAP, Manifest, Pack, hex_of};

/// A store directory.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    dir: PathBuf,
}

/// One file a store may lack: a manifest or a pack, by hex.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Item {
    Manifest(String),
    Pack(String),
}

impl Item {
    /// `manifest HEX` / `pack HEX`: how a transfer names it.
    pub(crate) fn words(&self) -> [&str; 2] {
        match self {
            Self::Manifest(h) => ["manifest", h],
            Self::Pack(h) => ["pack", h],
        }
    }

    /// The item [`Item::words`] names, if it is one.
    pub(crate) fn parse(kind: &str, hex: &str) -> Option<Self> {
        hex_of(&format!("sha256:{hex}"))?;
        match kind {
            "manifest" => Some(Self::Manifest(hex.to_owned())),
            "pack" => Some(Self::Pack(hex.to_owned())),
            _ => None,
        }
    }
}

impl Store {
    pub(crate) fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where an item lives in the store (whether or not it is there).
    pub(crate) fn path(&self, item: &Item) -> PathBuf {
        match item {
            Item::Manifest(h) => self.dir.join("manifests").join(format!("{h}.json")),
            Item::Pack(h) => self.dir.join("packs").join(format!("{h}.tar.zst")),
        }
    }

    pub(crate) fn pack_path(&self, pack: &Pack) -> PathBuf {
        self.path(&Item::Pack(pack.sha256.clone()))
    }

    pub(crate) fn has(&self, item: &Item) -> bool {
        self.path(item).is_file()
    }

    /// Reads the manifest of artifact `id`, checking its bytes' hash.
    pub(crate) fn manifest(&self, id: &str) -> Result<Manifest, ArtifactError> {
        let bad = |why: String| ArtifactError::Manifest {
            id: id.to_owned(),
            why,
        };
        let hex = hex_of(id).ok_or_else(|| bad("not an artifact id (sha256:64 hex)".to_owned()))?;
        let path = self.path(&Item::Manifest(hex.to_owned()));
        if !path.is_file() {
            return Err(ArtifactError::Missing {
                id: id.to_owned(),
                store: self.dir.display().to_string(),
            });
        }
        let bytes = crate::json_file::read(&path, MANIFEST_CAP).map_err(|e| bad(e.to_string()))?;
        let found = super::id_of(&bytes);
        if found != id {
            return Err(ArtifactError::HashMismatch {
                what: format!("the manifest {}", path.display()),
                expected: id.to_owned(),
                found,
            });
        }
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if m.artifact_format_version != super::FORMAT_VERSION {
            return Err(bad(format!(
                "format version {}, this moorline reads {}",
                m.artifact_format_version,
                super::FORMAT_VERSION
            )));
        }
        Ok(m)
    }

    /// Keeps `manifest` (its canonical bytes); returns its id.
    pub(crate) fn put_manifest(&self, manifest: &Manifest) -> Result<String, ArtifactError> {
        let bytes = manifest.to_bytes();
        let id = super::id_of(&bytes);
        let hex = hex_of(&id).unwrap_or_default().to_owned();
        self.receive(&Item::Manifest(hex), &mut &bytes[..])?;
        Ok(id)
    }

    /// What the store lacks of artifact `id`: its manifest (then its packs
    /// are unknown here, and `packs` gives them) or the packs it names.
    pub(crate) fn missing(&self, id: &str, packs: &[&Pack]) -> Vec<Item> {
        let mut out = Vec::new();
        if let Some(hex) = hex_of(id) {
            let m = Item::Manifest(hex.to_owned());
            if !self.has(&m) {
                out.push(m);
            }
        }
        for p in packs {
            let item = Item::Pack(p.sha256.clone());
            if !self.has(&item) && !out.contains(&item) {
                out.push(item);
            }
        }
        out
    }

    /// Takes `item` from `from` (a transfer's stream, another store's
    /// file): written under a temporary name, hashed while written, kept
    /// only when the hash is the item's, then fsync'd and renamed into
    /// place. An item already there is left alone (the stream is drained).
    pub(crate) fn receive(&self, item: &Item, from: &mut dyn Read) -> Result<u64, ArtifactError> {
        let path = self.path(item);
        let fail = ArtifactError::io;
        if path.is_file() {
            let n = io::copy(from, &mut io::sink()).map_err(fail("reading", &path))?;
            return Ok(n);
        }
        let dir = path.parent().unwrap_or(&self.dir).to_path_buf();
        fs::create_dir_all(&dir).map_err(fail("creating", &dir))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".incoming-{name}-{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        let result = (|| {
            let mut f = File::create_new(&tmp).map_err(fail("creating", &tmp))?;
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 256 * 1024];
            let mut n = 0u64;
            loop {
                let got = from.read(&mut buf).map_err(fail("receiving", &tmp))?;
                if got == 0 {
                    break;
                }
                h.update(&buf[..got]);
                f.write_all(&buf[..got]).map_err(fail("writing", &tmp))?;
                n += got as u64;
            }
            let found = hex::encode(h.finalize());
            let [_, expected] = item.words();
            if found != expected {
                return Err(ArtifactError::HashMismatch {
                    what: format!("the received {}", item.words().join(" ")),
                    expected: format!("sha256:{expected}"),
                    found: format!("sha256:{found} ({n} bytes)"),
                });
            }
            f.sync_all().map_err(fail("syncing", &tmp))?;
            fs::rename(&tmp, &path).map_err(fail("storing", &path))?;
            File::open(&dir)
                .and_then(|d| d.sync_all())
                .map_err(fail("syncing", &dir))?;
            Ok(n)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Packs `dir` (without the top-level names in `skip`) into the store;
    /// returns the pack and its entries. A pack already there (the same
    /// bytes) is kept and the new one dropped.
    pub(crate) fn pack_dir(
        &self,
        dir: &Path,
        skip: &std::collections::BTreeSet<String>,
        origin: &str,
    ) -> Result<(Pack, Vec<super::Entry>), ArtifactError> {
        let packs = self.dir.join("packs");
        fs::create_dir_all(&packs).map_err(ArtifactError::io("creating", &packs))?;
        let tmp = packs.join(format!(".packing-{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        let result = super::pack::write(dir, skip, origin, &tmp).and_then(|(pack, entries)| {
            let path = self.pack_path(&pack);
            if path.is_file() {
                let _ = fs::remove_file(&tmp);
            } else {
                fs::rename(&tmp, &path).map_err(ArtifactError::io("storing", &path))?;
                File::open(&packs)
                    .and_then(|d| d.sync_all())
                    .map_err(ArtifactError::io("syncing", &packs))?;
            }
            Ok((pack, entries))
        });
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// The pack of dependency-cache entry `entry` (its tree `dir`, first
    /// built in `origin`): packed once, then found again by the entry's
    /// name (`deps/ENTRY.json`, the pack it made), so a commit that leaves
    /// the lockfile alone neither packs nor stores its dependencies again.
    /// An entry is never changed in place (the dependency cache discards
    /// one that was), so its name stands for its bytes.
    pub(crate) fn deps_pack(
        &self,
        entry: &str,
        dir: &Path,
        origin: &str,
    ) -> Result<Pack, ArtifactError> {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Known {
            origin: String,
            pack: Pack,
        }
        let safe = !entry.is_empty()
            && entry
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let record = self.dir.join("deps").join(format!("{entry}.json"));
        if safe
            && let Ok(bytes) = fs::read(&record)
            && let Ok(k) = serde_json::from_slice::<Known>(&bytes)
            && k.origin == origin
            && self.has(&Item::Pack(k.pack.sha256.clone()))
        {
            return Ok(k.pack);
        }
        let (pack, _) = self.pack_dir(dir, &std::collections::BTreeSet::new(), origin)?;
        if safe {
            let k = Known {
                origin: origin.to_owned(),
                pack: pack.clone(),
            };
            crate::files::write_atomic(&record, &serde_json::to_vec(&k).unwrap_or_default())
                .map_err(ArtifactError::io("writing", &record))?;
        }
        Ok(pack)
    }

    /// Copies artifact `id` (manifest and packs) from `other` into this
    /// store, each checked; what is here already is not copied.
    pub(crate) fn import(&self, other: &Store, id: &str) -> Result<Manifest, ArtifactError> {
        let m = other.manifest(id)?;
        for item in self.missing(id, &m.packs()) {
            let src = other.path(&item);
            let mut f = File::open(&src).map_err(ArtifactError::io("reading", &src))?;
            self.receive(&item, &mut f)?;
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::{Entry, EntryKind, FORMAT_VERSION};

    fn manifest(pack: &Pack) -> Manifest {
        Manifest {
            artifact_format_version: FORMAT_VERSION,
            project: "p".into(),
            service: "api".into(),
            commit: "c".repeat(40),
            origin: "/o".into(),
            app: pack.clone(),
            deps: None,
            files: vec![Entry {
                path: "a".into(),
                kind: EntryKind::Dir { mode: 0o755 },
            }],
        }
    }

    #[test]
    fn a_store_keeps_only_what_matches_its_hash() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::at(t.path().join("s"));
        let body = b"pack bytes".to_vec();
        let pack = Pack {
            sha256: crate::files::sha256_hex(&body),
            size: body.len() as u64,
        };
        let m = manifest(&pack);
        let id = m.id();
        assert_eq!(
            store.missing(&id, &m.packs()),
            [
                Item::Manifest(hex_of(&id).unwrap().to_owned()),
                Item::Pack(pack.sha256.clone())
            ]
        );
        // A damaged transfer is refused and leaves nothing behind.
        let err = store
            .receive(&Item::Pack(pack.sha256.clone()), &mut &b"pack bytez"[..])
            .unwrap_err();
        assert!(matches!(err, ArtifactError::HashMismatch { .. }), "{err}");
        assert_eq!(fs::read_dir(store.dir().join("packs")).unwrap().count(), 0);
        store
            .receive(&Item::Pack(pack.sha256.clone()), &mut &body[..])
            .unwrap();
        assert_eq!(store.put_manifest(&m).unwrap(), id);
        assert!(store.missing(&id, &m.packs()).is_empty());
        assert_eq!(store.manifest(&id).unwrap(), m);
        // A manifest edited in the store no longer reads as its id.
        let path = store.path(&Item::Manifest(hex_of(&id).unwrap().to_owned()));
        let text = fs::read_to_string(&path).unwrap().replace("api", "apx");
        fs::write(&path, text).unwrap();
        assert!(matches!(
            store.manifest(&id).unwrap_err(),
            ArtifactError::HashMismatch { .. }
        ));
        // Importing into another store copies and checks each file.
        fs::write(&path, m.to_bytes()).unwrap();
        let other = Store::at(t.path().join("o"));
        assert_eq!(other.import(&store, &id).unwrap(), m);
        assert!(other.missing(&id, &m.packs()).is_empty());
        assert_eq!(
            Item::parse("pack", &pack.sha256),
            Some(Item::Pack(pack.sha256.clone()))
        );
        assert_eq!(Item::parse("pack", "../x"), None);
    }
}

//! Release artifacts: a service's built release at a commit, packed
//! reproducibly once (where it was built) and installed as the very same
//! bytes on every host. An artifact is a [`Manifest`] and the packs it
//! names; its identity is the SHA-256 of the manifest's bytes, which name
//! each pack's SHA-256 and every file's hash and mode.
//!
//! - `pack`: a directory into a reproducible `tar` + zstd pack (entries
//!   sorted, mtime 0, owner 0) and back, the hash checked before a byte is
//!   unpacked.
//! - `tree`: the files of a release as the manifest lists them, the check of
//!   a release against its manifest (drift), and relocation (a file that
//!   names the directory it was built in gets the release's own path).
//! - `store`: a content-addressed directory of manifests and packs, written
//!   atomically; the controller keeps one, and so does every host.
//!
//! Two packs make an artifact: the release tree without its dependency
//! outputs (`app`), and the dependency outputs as the dependency cache holds
//! them (`deps`, see [`crate::deps`]): a commit that leaves the lockfile
//! alone yields the same `deps` pack, which a host that has it is not sent
//! again.

pub(crate) mod choose;
pub(crate) mod gc;
pub(crate) mod pack;
pub(crate) mod store;
pub(crate) mod tree;

use std::io;
use std::path::{Path, PathBuf};

use miette::Diagnostic;
use serde::{Deserialize, Serialize};

pub(crate) use store::Store;

/// Version of the manifest format; bumped on any incompatible change.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// The largest manifest read back (64 MiB: some 300,000 files).
pub(crate) const MANIFEST_CAP: u64 = 64 * 1024 * 1024;

/// In a release installed from an artifact: its manifest's id, the one
/// line `status` reads.
pub(crate) const RELEASE_MARKER: &str = ".moorline-artifact";

/// Why an artifact could not be made, moved or installed.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum ArtifactError {
    #[error("{what} {path}: {source}")]
    #[diagnostic(
        code(moorline::artifact::io),
        help("check free space and permissions there")
    )]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{what} does not match its hash: expected {expected}, found {found}")]
    #[diagnostic(
        code(moorline::artifact::hash_mismatch),
        help(
            "the file was damaged or replaced; nothing was unpacked. Remove it from the store, and moorline sends or builds it again"
        )
    )]
    HashMismatch {
        what: String,
        expected: String,
        found: String,
    },
    #[error("{pack} holds {entry}: {why}")]
    #[diagnostic(
        code(moorline::artifact::unsafe_entry),
        help(
            "an artifact holds regular files, directories and symbolic links under relative paths only; this pack was not made by moorline"
        )
    )]
    UnsafeEntry {
        pack: String,
        entry: String,
        why: String,
    },
    #[error("cannot pack {path}: {why}")]
    #[diagnostic(
        code(moorline::artifact::unsupported_file),
        help(
            "a release may hold regular files, directories and symbolic links only; remove the others in the build, or build this service on its hosts (`build-on \"host\"`)"
        )
    )]
    Unsupported { path: String, why: String },
    #[error("artifact {id} is not in {store}")]
    #[diagnostic(
        code(moorline::artifact::missing),
        help("build it again (`moorline artifact build`), or give the directory that holds it")
    )]
    Missing { id: String, store: String },
    #[error("the manifest {id} cannot be read: {why}")]
    #[diagnostic(
        code(moorline::artifact::manifest),
        help("remove it from the store, and moorline sends or builds it again")
    )]
    Manifest { id: String, why: String },
}

impl ArtifactError {
    pub(crate) fn io(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self + use<> {
        let path = path.display().to_string();
        move |source| Self::Io { what, path, source }
    }
}

/// What an artifact is: the manifest, written once, whose SHA-256 is the
/// artifact's identity ([`Manifest::id`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub(crate) artifact_format_version: u32,
    pub(crate) project: String,
    pub(crate) service: String,
    /// The commit it was built from.
    pub(crate) commit: String,
    /// The directory the release was built in: files marked `relocate`
    /// hold this path, and an installed release has its own path there.
    pub(crate) origin: String,
    /// The release tree without the dependency outputs.
    pub(crate) app: Pack,
    /// The dependency outputs, as a dependency-cache entry; absent for a
    /// service without `deps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) deps: Option<DepsPack>,
    /// Every entry of `app`, in pack order.
    pub(crate) files: Vec<Entry>,
}

/// One pack: a `tar` + zstd file, by its SHA-256 (64 hex) and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Pack {
    pub(crate) sha256: String,
    pub(crate) size: u64,
}

/// The dependency outputs of an artifact: one dependency-cache entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DepsPack {
    /// The cache entry's name (its key, see [`crate::deps`]).
    pub(crate) entry: String,
    /// The release the entry was first built in (its files that name a
    /// path name this one).
    pub(crate) origin: String,
    /// The outputs (relative paths in a release: `node_modules`, `venv`).
    pub(crate) outputs: Vec<String>,
    pub(crate) pack: Pack,
}

/// One entry of a pack, as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// Relative, `/`-separated.
    pub(crate) path: String,
    #[serde(flatten)]
    pub(crate) kind: EntryKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub(crate) enum EntryKind {
    File {
        /// Permission bits (`0o755`), as a number.
        mode: u32,
        size: u64,
        sha256: String,
        /// The file names the origin directory (a small text file, such as
        /// a script's `#!`): installing writes the release's path instead.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        relocate: bool,
    },
    Dir {
        mode: u32,
    },
    Symlink {
        target: String,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        relocate: bool,
    },
}

impl Manifest {
    /// The canonical bytes (what the id hashes and the store keeps).
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The artifact's identity: `sha256:` and the manifest bytes' SHA-256.
    pub fn id(&self) -> String {
        id_of(&self.to_bytes())
    }

    /// The packs it names, `app` first.
    pub(crate) fn packs(&self) -> Vec<&Pack> {
        let mut v = vec![&self.app];
        v.extend(self.deps.as_ref().map(|d| &d.pack));
        v
    }

    /// The sum of its packs' sizes.
    pub(crate) fn size(&self) -> u64 {
        self.packs().iter().map(|p| p.size).sum()
    }
}

/// `sha256:HEX` of `bytes`.
pub(crate) fn id_of(bytes: &[u8]) -> String {
    format!("sha256:{}", crate::files::sha256_hex(bytes))
}

/// The 64 hex of an id (`sha256:HEX`), if it is one.
pub(crate) fn hex_of(id: &str) -> Option<&str> {
    let hex = id.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(hex)
}

/// A shortened id for display: `sha256:` and 12 hex.
pub(crate) fn short(id: &str) -> &str {
    id.get(..19).unwrap_or(id)
}

/// The id recorded in an installed release, if it came from an artifact.
pub(crate) fn installed_id(release: &Path) -> Option<String> {
    let text = std::fs::read_to_string(release.join(RELEASE_MARKER)).ok()?;
    let id = text.trim();
    hex_of(id).map(|_| id.to_owned())
}

/// Where a host keeps its artifacts: beside the dependency cache, on the
/// file system of its releases.
pub(crate) fn host_store(root: &str) -> PathBuf {
    Path::new(root).join(".moorline-cache/artifacts")
}

/// A release built where the artifact is made (the controller, a build
/// host, CI), and the dependency-cache entry it used.
pub(crate) struct Built<'a> {
    pub(crate) project: &'a str,
    pub(crate) service: &'a str,
    pub(crate) commit: &'a str,
    /// The built release directory (its path is the artifact's origin).
    pub(crate) release: &'a Path,
    pub(crate) deps: Option<BuiltDeps<'a>>,
}

/// The dependency-cache entry a built release used.
pub(crate) struct BuiltDeps<'a> {
    /// The entry's name.
    pub(crate) entry: &'a str,
    /// The entry's output tree (what is packed).
    pub(crate) dir: &'a Path,
    /// The release the entry was first built in.
    pub(crate) origin: &'a str,
    /// The outputs, relative paths in a release: left out of the `app` pack.
    pub(crate) outputs: &'a [String],
}

/// Packs a built release into `store` (its `deps` entry as a pack of its
/// own, which an unchanged lockfile makes again byte for byte) and keeps
/// its manifest. Returns the manifest and its id.
pub(crate) fn make(store: &Store, b: &Built<'_>) -> Result<(String, Manifest), ArtifactError> {
    let origin = b.release.display().to_string();
    let skip: std::collections::BTreeSet<String> = b
        .deps
        .as_ref()
        .map(|d| d.outputs.iter().cloned().collect())
        .unwrap_or_default();
    let (app, files) = store.pack_dir(b.release, &skip, &origin)?;
    let deps = match &b.deps {
        Some(d) => Some(DepsPack {
            entry: d.entry.to_owned(),
            origin: d.origin.to_owned(),
            outputs: d.outputs.to_vec(),
            pack: store.deps_pack(d.entry, d.dir, d.origin)?,
        }),
        None => None,
    };
    let m = Manifest {
        artifact_format_version: FORMAT_VERSION,
        project: b.project.to_owned(),
        service: b.service.to_owned(),
        commit: b.commit.to_owned(),
        origin,
        app,
        deps,
        files,
    };
    let id = store.put_manifest(&m)?;
    Ok((id, m))
}

/// Unpacks artifact `id`'s `app` pack from `store` as the release
/// `release` (which must not exist: an artifact is never unpacked over a
/// release, live or not): into a temporary directory beside it, the pack's
/// hash checked first, relocated to `release`'s path, its id recorded in
/// [`RELEASE_MARKER`], then renamed into place. The dependency outputs are
/// the caller's (the `deps` pack goes through the dependency cache).
/// Returns the manifest.
pub(crate) fn install_app(
    store: &Store,
    id: &str,
    release: &Path,
) -> Result<Manifest, ArtifactError> {
    let m = store.manifest(id)?;
    let name = release
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = release.with_file_name(format!(".{name}.unpacking-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(ArtifactError::io("removing", &tmp))?;
    }
    if let Some(parent) = release.parent() {
        std::fs::create_dir_all(parent).map_err(ArtifactError::io("creating", parent))?;
    }
    let result = (|| {
        pack::unpack(&store.pack_path(&m.app), &m.app, &tmp)?;
        tree::relocate(&tmp, &m.files, &m.origin, &release.display().to_string())?;
        crate::files::write_atomic(&tmp.join(RELEASE_MARKER), format!("{id}\n").as_bytes())
            .map_err(ArtifactError::io("writing", &tmp))?;
        std::fs::rename(&tmp, release).map_err(ArtifactError::io("placing", release))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result.map(|()| m)
}

/// What differs between an installed release and its artifact's manifest
/// (see [`tree::verify`]); empty when it is exactly the artifact.
pub(crate) fn drift(store: &Store, id: &str, release: &Path) -> Result<Vec<String>, ArtifactError> {
    let m = store.manifest(id)?;
    let skip = m
        .deps
        .as_ref()
        .map(|d| d.outputs.iter().cloned().collect())
        .unwrap_or_default();
    tree::verify(
        release,
        &m.files,
        &skip,
        &m.origin,
        &release.display().to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_the_hash_of_the_manifest_bytes_and_only_that() {
        let m = Manifest {
            artifact_format_version: FORMAT_VERSION,
            project: "p".into(),
            service: "api".into(),
            commit: "a".repeat(40),
            origin: "/build/api/releases/x".into(),
            app: Pack {
                sha256: "0".repeat(64),
                size: 1,
            },
            deps: None,
            files: vec![Entry {
                path: "server.js".into(),
                kind: EntryKind::File {
                    mode: 0o644,
                    size: 3,
                    sha256: "1".repeat(64),
                    relocate: false,
                },
            }],
        };
        let id = m.id();
        assert!(hex_of(&id).is_some(), "{id}");
        assert_eq!(id, id_of(&m.to_bytes()));
        let back: Manifest = serde_json::from_slice(&m.to_bytes()).unwrap();
        assert_eq!(back.id(), id, "the bytes round-trip");
        let mut other = m.clone();
        if let EntryKind::File { mode, .. } = &mut other.files[0].kind {
            *mode = 0o755;
        }
        assert_ne!(other.id(), id, "a mode is part of the identity");
        assert_eq!(hex_of("sha256:XYZ"), None);
        assert_eq!(hex_of(&format!("sha256:{}", "A".repeat(64))), None);
    }

    #[test]
    fn an_artifact_made_here_installs_there_and_reports_drift() {
        let t = tempfile::tempdir().unwrap();
        let built = t.path().join("build/api/releases/c1");
        std::fs::create_dir_all(built.join("node_modules/x")).unwrap();
        std::fs::write(built.join("node_modules/x/i.js"), "dep").unwrap();
        std::fs::write(built.join("server.js"), "app").unwrap();
        std::fs::write(
            built.join("start"),
            format!("#!/bin/sh\ncd {}\n", built.display()),
        )
        .unwrap();
        std::fs::write(built.join(".moorline-built"), "c1").unwrap();
        let entry = t.path().join("build/.moorline-cache/deps/k-v/out");
        std::fs::create_dir_all(entry.join("node_modules/x")).unwrap();
        std::fs::write(entry.join("node_modules/x/i.js"), "dep").unwrap();
        let store = Store::at(t.path().join("store"));
        let outputs = vec!["node_modules".to_owned()];
        let b = Built {
            project: "p",
            service: "api",
            commit: "c1",
            release: &built,
            deps: Some(BuiltDeps {
                entry: "k-v",
                dir: &entry,
                origin: "/elsewhere",
                outputs: &outputs,
            }),
        };
        let (id, m) = make(&store, &b).unwrap();
        assert_eq!(make(&store, &b).unwrap().0, id, "made again: the same id");
        // An entry is packed once: found again by its name, not packed.
        let packs = || {
            std::fs::read_dir(store.dir().join("packs"))
                .unwrap()
                .count()
        };
        let before = packs();
        std::fs::write(entry.join("node_modules/x/i.js"), "never packed again").unwrap();
        assert_eq!(
            make(&store, &b).unwrap().0,
            id,
            "the entry was not packed again"
        );
        assert_eq!(packs(), before);
        std::fs::write(entry.join("node_modules/x/i.js"), "dep").unwrap();
        assert_eq!(
            m.files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>(),
            ["server.js", "start"],
            "the deps outputs are their own pack"
        );
        assert!(m.deps.is_some());
        // Another host's store receives it and installs it elsewhere.
        let host = Store::at(t.path().join("host-store"));
        host.import(&store, &id).unwrap();
        let release = t.path().join("srv/api/releases/c1");
        install_app(&host, &id, &release).unwrap();
        assert_eq!(installed_id(&release).as_deref(), Some(id.as_str()));
        assert_eq!(
            std::fs::read_to_string(release.join("start")).unwrap(),
            format!("#!/bin/sh\ncd {}\n", release.display()),
            "relocated"
        );
        assert!(drift(&host, &id, &release).unwrap().is_empty());
        assert!(
            install_app(&host, &id, &release).is_err(),
            "never over an existing release"
        );
        std::fs::write(release.join("server.js"), "hot fix by hand").unwrap();
        assert_eq!(
            drift(&host, &id, &release).unwrap(),
            ["server.js (modified)"]
        );
    }
}

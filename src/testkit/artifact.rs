//! Artifacts made in tests without `moorline artifact build`: a release an
//! apply built on one environment (its root), packed as the artifact
//! builder packs one, its dependency-cache entry as the `deps` pack.

use std::path::Path;

use crate::artifact::{ArtifactError, Built, BuiltDeps, Store};

/// Packs `{root}/{service}/releases/{commit}` (built by an apply) and the
/// dependency-cache entry it names into the store at `out`; returns the
/// artifact's id.
pub fn pack_release(
    out: &Path,
    project: &str,
    service: &str,
    commit: &str,
    root: &Path,
) -> Result<String, ArtifactError> {
    let release = root.join(service).join("releases").join(commit);
    let bad = |why: &str| ArtifactError::Unsupported {
        path: release.display().to_string(),
        why: why.to_owned(),
    };
    let entry = std::fs::read_to_string(release.join(crate::deps::RELEASE_MARKER))
        .ok()
        .map(|e| e.trim().to_owned());
    let deps = match &entry {
        Some(name) => {
            let dir = crate::deps::cache_dir(&root.display().to_string()).join(name);
            let meta: serde_json::Value = std::fs::read(dir.join("meta.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .ok_or_else(|| bad("its dependency entry has no readable meta.json"))?;
            let origin = meta["origins"][0]
                .as_str()
                .ok_or_else(|| bad("its dependency entry names no origin"))?
                .to_owned();
            let outputs: Vec<String> = meta["outputs"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|o| o.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            Some((name.clone(), dir.join("out"), origin, outputs))
        }
        None => None,
    };
    let built = Built {
        project,
        service,
        commit,
        release: &release,
        deps: deps
            .as_ref()
            .map(|(entry, dir, origin, outputs)| BuiltDeps {
                entry,
                dir,
                origin,
                outputs,
            }),
    };
    crate::artifact::make(&Store::at(out), &built).map(|(id, _)| id)
}

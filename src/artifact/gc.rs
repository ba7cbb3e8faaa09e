//! A host's artifact store kept to what its releases need: after an apply,
//! the manifests no release under the root was installed from (its
//! `.moorline-artifact` marker) are removed, and the packs no kept manifest
//! names. Anything that arrived within the last hour stays: the fleet
//! controller sends a host its artifacts just before that host's apply,
//! and a CI job may copy some in for the next one.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::Duration;

use super::{Store, host_store, installed_id};

/// How long a manifest or pack no release uses is kept after it arrived.
const GRACE: Duration = Duration::from_hours(1);

/// Removes from the store under `root` what no release there uses and
/// what arrived more than [`GRACE`] ago; returns how many files went.
pub(crate) fn collect_garbage(root: &str) -> usize {
    let store = Store::at(host_store(root));
    let young = |p: &Path| {
        fs::metadata(p)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|e| e < GRACE))
    };
    let mut used = BTreeSet::new();
    for (name, svc) in entries(Path::new(root)) {
        if name.starts_with('.') {
            continue;
        }
        for (_, release) in entries(&svc.join("releases")) {
            used.extend(installed_id(&release));
        }
    }
    let mut removed = 0;
    let mut packs = BTreeSet::new();
    for (name, path) in entries(&store.dir().join("manifests")) {
        let id = format!("sha256:{}", name.trim_end_matches(".json"));
        if used.contains(&id) || young(&path) {
            if let Ok(m) = store.manifest(&id) {
                packs.extend(m.packs().into_iter().map(|p| p.sha256.clone()));
            }
        } else if fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    for (name, path) in entries(&store.dir().join("packs")) {
        let hex = name.trim_end_matches(".tar.zst");
        if !packs.contains(hex) && !young(&path) && fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

fn entries(dir: &Path) -> Vec<(String, std::path::PathBuf)> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::{Built, make};

    #[test]
    fn the_store_keeps_what_releases_use_and_what_just_arrived() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let root_str = root.to_str().unwrap();
        let store = Store::at(host_store(root_str));
        let mut ids = Vec::new();
        for (i, body) in ["v1", "v2"].iter().enumerate() {
            let release = tmp.path().join(format!("build/api/{i}"));
            fs::create_dir_all(&release).unwrap();
            fs::write(release.join("server.js"), body).unwrap();
            let built = Built {
                project: "p",
                service: "api",
                commit: "c",
                release: &release,
                deps: None,
            };
            ids.push(make(&store, &built).unwrap());
        }
        let live = root.join("api/releases/c1");
        fs::create_dir_all(&live).unwrap();
        fs::write(
            live.join(crate::artifact::RELEASE_MARKER),
            format!("{}\n", ids[0].0),
        )
        .unwrap();
        assert_eq!(collect_garbage(root_str), 0, "everything is young");
        // An hour later: only what the release uses stays.
        let old = std::time::SystemTime::now() - GRACE - Duration::from_mins(1);
        for sub in ["manifests", "packs"] {
            for (_, p) in entries(&store.dir().join(sub)) {
                fs::File::options()
                    .write(true)
                    .open(&p)
                    .unwrap()
                    .set_modified(old)
                    .unwrap();
            }
        }
        assert_eq!(collect_garbage(root_str), 2);
        assert!(store.missing(&ids[0].0, &ids[0].1.packs()).is_empty());
        assert_eq!(store.missing(&ids[1].0, &ids[1].1.packs()).len(), 2);
    }
}

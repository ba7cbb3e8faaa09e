//! The build step with an artifact: nothing is built on the host. The
//! artifact's `app` pack, its hash checked before a byte is unpacked,
//! becomes the release (never over a live one); its dependency outputs come
//! through the dependency cache: the artifact's `deps` pack is adopted as a
//! cache entry once (a host that has the entry reuses it) and linked in as
//! a build that reuses it would. No `version`, dependency or build command
//! runs. Then the release is marked built.

use std::path::{Path, PathBuf};

use crate::artifact::{self, ArtifactError, Manifest, Store};
use crate::release::{self, Paths};

use super::{Act, ActionError, blocking};

/// Installs artifact `id` as `release` of the action's service.
pub(super) async fn install(
    act: &Act<'_>,
    release: &str,
    id: &str,
) -> Result<Option<String>, ActionError> {
    let svc = act.configured("an artifact's install")?;
    let paths = Paths::new(&act.ctx.env.root, &svc.name);
    let (root, sha, id) = (
        act.ctx.env.root.clone(),
        act.to_sha.to_owned(),
        id.to_owned(),
    );
    let dir = PathBuf::from(release);
    blocking(move || install_here(&root, &paths, &dir, &sha, &id)).await
}

/// [`install`], on the blocking pool: unpacking and linking are file-system
/// work.
fn install_here(
    root: &str,
    paths: &Paths,
    dir: &Path,
    sha: &str,
    id: &str,
) -> Result<Option<String>, ActionError> {
    let art = |error| ActionError::Artifact { error };
    let short = artifact::short(id);
    if paths.is_built(sha) && artifact::installed_id(dir).as_deref() == Some(id) {
        return Ok(Some(format!("artifact {short} already installed")));
    }
    if dir.exists() {
        // An interrupted install, or a release of this commit built here
        // before: replaced, unless it is live.
        if paths.live().as_deref() == Some(sha) {
            return Err(ActionError::LiveRelease {
                release: dir.display().to_string(),
                id: id.to_owned(),
            });
        }
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let aside = dir.with_file_name(format!(".{name}.interrupted-{}", std::process::id()));
        std::fs::rename(dir, &aside).map_err(ActionError::io("moving aside", dir))?;
        let _ = std::fs::remove_dir_all(&aside);
    }
    let store = Store::at(artifact::host_store(root));
    let m = artifact::install_app(&store, id, dir).map_err(art)?;
    let deps = match &m.deps {
        Some(d) => Some(link_deps(root, &store, &m, d, dir)?),
        None => None,
    };
    release::mark_built(dir, sha).map_err(ActionError::io("marking built", dir))?;
    let files = m
        .files
        .iter()
        .filter(|f| matches!(f.kind, artifact::EntryKind::File { .. }))
        .count();
    // Tenths of a megabyte, in integers: what the packs weigh.
    let tenths = m.size().div_ceil(100_000);
    let mut note = format!(
        "installed artifact {short} ({files} files, {}.{} MB packed",
        tenths / 10,
        tenths % 10
    );
    if let Some(d) = deps {
        note.push_str("; ");
        note.push_str(&d);
    }
    note.push(')');
    Ok(Some(note))
}

/// The artifact's dependency outputs into the release: its cache entry
/// reused if the host has it, else adopted from the `deps` pack first.
fn link_deps(
    root: &str,
    store: &Store,
    m: &Manifest,
    d: &artifact::DepsPack,
    dir: &Path,
) -> Result<String, ActionError> {
    let deps = |error| ActionError::Deps { error };
    if let Some((linked, rewritten)) =
        crate::deps::link(root, &d.entry, dir, &d.outputs).map_err(deps)?
    {
        return Ok(format!(
            "dependencies entry reused from the cache: {linked} files linked, {rewritten} rewritten"
        ));
    }
    let staged = crate::deps::stage(root, &d.entry).map_err(deps)?;
    let unpacked = artifact::pack::unpack(&store.pack_path(&d.pack), &d.pack, &staged.out());
    if let Err(error) = unpacked {
        staged.abandon();
        return Err(ActionError::Artifact { error });
    }
    let adopted = crate::deps::adopt(staged, &d.origin, &d.outputs).map_err(deps)?;
    let Some((linked, rewritten)) =
        crate::deps::link(root, &d.entry, dir, &d.outputs).map_err(deps)?
    else {
        return Err(ActionError::Artifact {
            error: ArtifactError::Manifest {
                id: m.id(),
                why: format!(
                    "its dependency entry {} could not be linked once adopted",
                    d.entry
                ),
            },
        });
    };
    crate::deps::collect_garbage(root);
    Ok(format!(
        "dependencies entry adopted from the artifact: {adopted} files, {linked} linked, {rewritten} rewritten"
    ))
}

//! Cached dependency steps (`deps` in a runtime): a step's outputs
//! (`node_modules`, a venv) are kept on the host under
//! `{root}/.moorline-cache/deps/{key}/`, keyed by a hash of what decides
//! them, and linked into later releases instead of running the step again.
//!
//! - The key has two parts. The *plan key* is known from git alone: the
//!   runtime, the step's argv, its outputs and the object id of each input
//!   at the target revision ([`plan_key`]); the planner uses it to say
//!   "reused" or "rebuilt" deterministically. The *version*, the output of
//!   the step's `version` command, is only known on the host at apply time;
//!   an entry is named `{plan key}-{hash of the version}`.
//! - Reuse is a hard-link copy of the entry's tree into the release (every
//!   directory new, every file a hard link), never a shared or symlinked
//!   directory. Files in the cache are read-only (`a-w`), so an ordinary
//!   user writing into a reused file fails loudly; root is not stopped by
//!   permission bits, so every entry also records a digest of its files'
//!   paths, sizes and modification times: an entry changed in place is
//!   noticed on its next reuse, discarded and rebuilt.
//! - Absolute paths: a step runs in the release directory it was first
//!   built for (its "origin"). Storing scans the outputs' small text files
//!   and symlinks for the origin's path; reusing writes those few files
//!   anew (not as links) with the new release's path, so a venv's scripts
//!   (`bin/pip`: `#!{release}/venv/bin/python`) name the new release's
//!   interpreter. Binary files that hold the path are not rewritten.
//! - An entry is written under a temporary name and renamed into place when
//!   complete. A release records the entry it uses (`.moorline-deps`,
//!   written before the entry is stored or linked); entries that no release
//!   under the root names any more are removed ([`collect_garbage`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use miette::Diagnostic;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Deps;
use crate::git::{GitError, Snapshot};
use crate::process::{self, Run, RunError};

/// Where entries live, under an environment's root.
pub(crate) const CACHE_DIR: &str = ".moorline-cache/deps";
/// In a release: the name of the entry its dependencies came from.
pub(crate) const RELEASE_MARKER: &str = ".moorline-deps";
/// Bumped when the entry layout or the key changes.
const FORMAT: u32 = 1;
const META: &str = "meta.json";
const OUT: &str = "out";
const TMP_PREFIX: &str = ".tmp-";
/// Files larger than this are not scanned for the origin's path.
const RELOCATE_MAX: u64 = 1024 * 1024;
/// A temporary entry this old belongs to a store that died.
const STALE_TMP: Duration = Duration::from_hours(1);

/// Why a build's dependencies could not be provided. Each message carries
/// its cause, since it is shown as one line (after `dependencies:`).
#[derive(Debug, thiserror::Error, Diagnostic)]
pub(crate) enum DepsError {
    #[error("{error}")]
    #[diagnostic(code(moorline::deps::git))]
    Git { error: GitError },
    #[error("{error}")]
    #[diagnostic(code(moorline::deps::command))]
    Command { error: Box<RunError> },
    /// The version command's output (its log) could not be read.
    #[error("{error}")]
    #[diagnostic(code(moorline::deps::version))]
    Version { error: io::Error },
    #[error("the dependency step did not create `{output}` (listed in its outputs)")]
    #[diagnostic(code(moorline::deps::missing_output))]
    MissingOutput { output: String },
    #[error("removing {output}: {error}")]
    #[diagnostic(code(moorline::deps::remove))]
    Remove { output: String, error: io::Error },
    #[error("storing {output} in the cache: {error}")]
    #[diagnostic(code(moorline::deps::store))]
    Store { output: String, error: io::Error },
    #[error("reading the cache: {error}")]
    #[diagnostic(code(moorline::deps::digest))]
    Digest { error: io::Error },
    #[error("{error}")]
    #[diagnostic(code(moorline::deps::meta))]
    Meta { error: serde_json::Error },
    #[error("{what} {path}: {error}")]
    #[diagnostic(code(moorline::deps::io))]
    Io {
        what: &'static str,
        path: String,
        error: io::Error,
    },
    #[error("{error}")]
    #[diagnostic(code(moorline::deps::task))]
    Task { error: tokio::task::JoinError },
}

impl DepsError {
    fn io(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Self {
        let path = path.display().to_string();
        move |error| Self::Io { what, path, error }
    }
}

/// Why a cached entry cannot be reused (it is then removed and rebuilt).
#[derive(Debug, thiserror::Error)]
enum Unusable {
    #[error("{0}")]
    Read(io::Error),
    #[error("{0}")]
    Parse(serde_json::Error),
    #[error("entry format {0}")]
    Format(u32),
    #[error("it holds other outputs")]
    Outputs,
    #[error("{0}")]
    Link(io::Error),
    #[error("its files changed since it was stored")]
    Changed,
}

pub(crate) fn cache_dir(root: &str) -> PathBuf {
    Path::new(root).join(CACHE_DIR)
}

/// Each input (relative to the service directory) and its git object id at
/// the snapshot's revision (`None`: absent).
pub(crate) fn input_ids(
    snapshot: &Snapshot<'_>,
    s: &crate::config::Service,
    inputs: &[String],
) -> Vec<(String, Option<String>)> {
    inputs
        .iter()
        .map(|i| (i.clone(), snapshot.path_id(&s.join(i))))
        .collect()
}

/// A dependency step's argv with its placeholders resolved (only those
/// that are the same for every release of a service).
pub(crate) fn argv(
    argv: &[String],
    s: &crate::config::Service,
    env: &crate::config::Environment,
) -> Vec<String> {
    crate::template::render_all(
        argv,
        &crate::template::Vars {
            service: Some(&s.name),
            port: s.port,
            root: Some(&env.root),
            ..crate::template::Vars::default()
        },
    )
}

/// The part of the key known from git: runtime, argv, outputs, inputs.
pub(crate) fn plan_key(
    runtime: &str,
    argv: &[String],
    outputs: &[String],
    inputs: &[(String, Option<String>)],
) -> String {
    #[derive(Serialize)]
    struct Key<'a> {
        format: u32,
        runtime: &'a str,
        argv: &'a [String],
        outputs: &'a [String],
        inputs: &'a [(String, Option<String>)],
    }
    let bytes = serde_json::to_vec(&Key {
        format: FORMAT,
        runtime,
        argv,
        outputs,
        inputs,
    })
    .unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

/// An entry's name: the plan key and a hash of the tool version.
fn entry_name(plan_key: &str, version: Option<&str>) -> String {
    let v = hex::encode(Sha256::digest(version.unwrap_or("").as_bytes()));
    format!("{plan_key}-{}", &v[..16])
}

/// The plan keys of the complete entries in the cache (for the planner).
pub(crate) fn present(root: &str) -> BTreeSet<String> {
    entries(&cache_dir(root))
        .into_iter()
        .filter(|(name, dir)| !name.starts_with(TMP_PREFIX) && dir.join(META).is_file())
        .filter_map(|(name, _)| name.split_once('-').map(|(k, _)| k.to_owned()))
        .collect()
}

fn entries(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, PathBuf)> = rd
        .filter_map(Result::ok)
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    out.sort();
    out
}

/// What the plan says about a service's dependencies (appended to its
/// build's reason).
pub(crate) fn plan_note(
    inputs: &[(String, Option<String>)],
    live: Option<&[(String, Option<String>)]>,
    cached: Option<bool>,
) -> String {
    let names = inputs
        .iter()
        .map(|(p, _)| p.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let changed: Vec<&str> = match live {
        Some(live) => inputs
            .iter()
            .filter(|i| !live.contains(i))
            .map(|(p, _)| p.as_str())
            .collect(),
        None => Vec::new(),
    };
    match (cached, live.is_some(), changed.is_empty()) {
        (Some(true), true, true) => format!("dependencies reused ({names} unchanged)"),
        (Some(true), _, _) => format!("dependencies reused ({names} as cached before)"),
        (_, true, false) => format!("dependencies rebuilt: {} changed", changed.join(", ")),
        (Some(false), true, true) => {
            format!("dependencies rebuilt: not in the host's cache ({names} unchanged)")
        }
        (None, true, true) => {
            format!("dependencies reused if the host's cache has them ({names} unchanged)")
        }
        (_, false, _) => "dependencies built: no earlier release to reuse them from".to_owned(),
    }
}

/// What the apply of one build needs to provide its dependencies.
pub(crate) struct Provide<'a> {
    pub(crate) root: &'a str,
    pub(crate) release: &'a Path,
    pub(crate) deps: &'a Deps,
    /// The step's and the version command's argv, placeholders resolved.
    pub(crate) argv: Vec<String>,
    pub(crate) version_argv: Option<Vec<String>>,
    pub(crate) plan_key: String,
    pub(crate) env: BTreeMap<String, String>,
    /// Log files of the step and of the version command.
    pub(crate) log: PathBuf,
    pub(crate) version_log: PathBuf,
}

/// Where a build's dependency step runs: the configuration it reads the
/// runtime from, the environment, and the step's log files (the executor
/// names them).
pub(crate) struct Provision<'a> {
    pub(crate) config: &'a crate::config::Config,
    pub(crate) env: &'a crate::config::Environment,
    /// Log files of the step and of the version command.
    pub(crate) log: PathBuf,
    pub(crate) version_log: PathBuf,
}

/// What a build in `release` needs for its runtime's dependency step
/// (`None`: the runtime has none). The key's git reads (the repository
/// in `repo_dir`, the inputs' object ids) run on the blocking pool.
pub(crate) async fn provision<'a>(
    at: Provision<'a>,
    repo_dir: &Path,
    s: &crate::config::Service,
    to_sha: &str,
    release: &'a Path,
) -> Option<Result<Provide<'a>, DepsError>> {
    let Provision {
        config,
        env,
        log,
        version_log,
    } = at;
    let rt = config.runtime_of(s)?;
    let d = rt.deps.as_ref()?;
    let (repo_dir, sha) = (repo_dir.to_owned(), to_sha.to_owned());
    let paths: Vec<(String, String)> = d.inputs.iter().map(|i| (i.clone(), s.join(i))).collect();
    let inputs = crate::blocking::run(
        move || {
            let git = |error| DepsError::Git { error };
            let repo = crate::git::Repo::discover(&repo_dir).map_err(git)?;
            let snapshot = repo.snapshot(&sha).map_err(git)?;
            Ok(paths
                .into_iter()
                .map(|(i, path)| (i, snapshot.path_id(&path)))
                .collect::<Vec<_>>())
        },
        |error| DepsError::Task { error },
    )
    .await;
    Some((|| {
        let inputs = inputs?;
        let argv = argv(&d.command.argv, s, env);
        let plan_key = plan_key(&rt.name, &argv, &d.outputs, &inputs);
        Ok(Provide {
            root: &env.root,
            release,
            deps: d,
            version_argv: d.version.as_ref().map(|v| self::argv(&v.argv, s, env)),
            argv,
            plan_key,
            env: crate::process::command_env(env, Some(&s.name), release.to_str()),
            log,
            version_log,
        })
    })())
}

/// Links the dependencies from the cache into the release, or runs the
/// step there and stores its outputs. Returns what it did, for the journal.
pub(crate) async fn provide(p: Provide<'_>) -> Result<String, DepsError> {
    let version = match &p.version_argv {
        Some(argv) => {
            process::run(Run {
                argv,
                dir: Some(p.release),
                env: &p.env,
                timeout: p
                    .deps
                    .version
                    .as_ref()
                    .map_or(Duration::from_mins(1), |c| c.timeout),
                log: &p.version_log,
            })
            .await
            .map_err(|e| DepsError::Command { error: Box::new(e) })?;
            let out =
                fs::read_to_string(&p.version_log).map_err(|error| DepsError::Version { error })?;
            Some(out.trim().to_owned())
        }
        None => None,
    };
    let cache = cache_dir(p.root);
    let name = entry_name(&p.plan_key, version.as_deref());
    // Linking a tree in, or removing one, runs on the blocking pool.
    let prepared = {
        let (cache, name, plan_key) = (cache.clone(), name.clone(), p.plan_key.clone());
        let (release, outputs) = (p.release.to_owned(), p.deps.outputs.clone());
        crate::blocking::run(
            move || prepare(&cache, &name, &plan_key, &release, &outputs),
            |error| DepsError::Task { error },
        )
        .await?
    };
    let why = match prepared {
        Ok(r) => {
            return Ok(format!(
                "dependencies reused from the cache: {} files linked, {} rewritten for this release",
                r.linked, r.rewritten
            ));
        }
        Err(Rebuild {
            unusable: Some(e), ..
        }) => format!("the cached entry was unusable ({e})"),
        Err(Rebuild { older, .. }) => match (older, &version) {
            (Some(m), Some(now)) => format!(
                "`{}` changed ({} → {now})",
                p.version_argv.as_deref().unwrap_or_default().join(" "),
                m.version.as_deref().unwrap_or("?")
            ),
            _ => "not in the cache".to_owned(),
        },
    };
    process::run(Run {
        argv: &p.argv,
        dir: Some(p.release),
        env: &p.env,
        timeout: p.deps.command.timeout,
        log: &p.log,
    })
    .await
    .map_err(|e| DepsError::Command { error: Box::new(e) })?;
    let (release, outputs, plan_key, root) = (
        p.release.to_owned(),
        p.deps.outputs.clone(),
        p.plan_key.clone(),
        p.root.to_owned(),
    );
    let stored = crate::blocking::run(
        move || {
            let n = store(&cache, &name, &plan_key, version, &release, &outputs)?;
            collect_garbage(&root);
            Ok(n)
        },
        |error| DepsError::Task { error },
    )
    .await?;
    Ok(format!(
        "dependencies built ({why}) and cached: {stored} files"
    ))
}

/// Why the step runs: the entry was there but unusable (and is removed),
/// or it was not there (`older`: an entry of the same plan key made with
/// another version).
struct Rebuild {
    unusable: Option<Unusable>,
    older: Option<Meta>,
}

/// Before the step: the release names its entry (before the entry is
/// linked or stored, so a concurrent garbage collection keeps it); a
/// complete entry is linked in; otherwise the step's outputs are cleared
/// from the release and why it must run is returned.
fn prepare(
    cache: &Path,
    name: &str,
    plan_key: &str,
    release: &Path,
    outputs: &[String],
) -> Result<Result<Restored, Rebuild>, DepsError> {
    let entry = cache.join(name);
    crate::files::write_atomic(
        &release.join(RELEASE_MARKER),
        format!("{name}\n").as_bytes(),
    )
    .map_err(DepsError::io("writing", release))?;
    let mut unusable = None;
    if entry.join(META).is_file() {
        match restore(&entry, release, outputs) {
            Ok(r) => return Ok(Ok(r)),
            Err(e) => {
                // Not trusted any more: gone, rebuilt.
                make_writable_and_remove(&entry);
                unusable = Some(e);
            }
        }
    }
    let older = if unusable.is_some() {
        None
    } else {
        entries(cache).into_iter().find_map(|(n, dir)| {
            let (k, _) = n.split_once('-')?;
            (k == plan_key && n != name)
                .then(|| read_meta(&dir).ok())
                .flatten()
        })
    };
    for o in outputs {
        remove_any(&release.join(o)).map_err(|error| DepsError::Remove {
            output: o.clone(),
            error,
        })?;
    }
    Ok(Err(Rebuild { unusable, older }))
}

/// An entry made elsewhere (an artifact's dependency outputs), being
/// adopted into the cache: its outputs are written into [`Staged::out`],
/// then [`adopt`] completes it. Under a temporary name until then.
pub(crate) struct Staged {
    tmp: PathBuf,
    name: String,
}

impl Staged {
    /// Where the entry's outputs go (a directory that does not exist yet).
    pub(crate) fn out(&self) -> PathBuf {
        self.tmp.join(OUT)
    }

    /// Drops what was written (the outputs could not be unpacked).
    pub(crate) fn abandon(self) {
        make_writable_and_remove(&self.tmp);
    }
}

/// Starts adopting entry `name` into the cache under `root`.
pub(crate) fn stage(root: &str, name: &str) -> Result<Staged, DepsError> {
    let cache = cache_dir(root);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = cache.join(format!("{TMP_PREFIX}{name}-{}-{nanos}", std::process::id()));
    fs::create_dir_all(&tmp).map_err(DepsError::io("creating", &tmp))?;
    Ok(Staged {
        tmp,
        name: name.to_owned(),
    })
}

/// Completes an adopted entry: its files are made read-only, those that
/// name `origin` (the release it was first built in, elsewhere) are
/// recorded to be rewritten on reuse, its digest is taken and its meta
/// written, and it is renamed into place (an entry already there is kept
/// and this one dropped). Returns the number of files.
pub(crate) fn adopt(staged: Staged, origin: &str, outputs: &[String]) -> Result<u64, DepsError> {
    let result = (|| {
        let out = staged.out();
        for o in outputs {
            if fs::symlink_metadata(out.join(o)).is_err() {
                return Err(DepsError::MissingOutput { output: o.clone() });
            }
        }
        let mut relocate = Vec::new();
        let mut files = 0u64;
        for o in outputs {
            walk(&out, Path::new(o), &mut |rel, meta| {
                if meta.is_file() {
                    files += 1;
                    let path = out.join(rel);
                    let mode = meta.mode() & 0o7777 & !0o222;
                    fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
                    if names_origin(&path, meta.len(), std::slice::from_ref(&origin))? {
                        relocate.push(rel.display().to_string());
                    }
                }
                Ok(())
            })
            .map_err(|error| DepsError::Store {
                output: o.clone(),
                error,
            })?;
        }
        write_meta(
            &staged.tmp,
            Meta {
                format: FORMAT,
                plan_key: staged
                    .name
                    .split_once('-')
                    .map_or(staged.name.as_str(), |(k, _)| k)
                    .to_owned(),
                version: None,
                origins: vec![origin.to_owned()],
                outputs: outputs.to_vec(),
                relocate,
                digest: String::new(),
            },
        )?;
        Ok(files)
    })();
    let files = match result {
        Ok(n) => n,
        Err(e) => {
            staged.abandon();
            return Err(e);
        }
    };
    let cache = staged
        .tmp
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let entry = cache.join(&staged.name);
    match fs::rename(&staged.tmp, &entry) {
        Ok(()) => {}
        // Another apply adopted or built it first.
        Err(_) if entry.join(META).is_file() => staged.abandon(),
        Err(e) => {
            let tmp = staged.tmp.clone();
            staged.abandon();
            return Err(DepsError::io("renaming", &tmp)(e));
        }
    }
    fs::File::open(&cache)
        .and_then(|d| d.sync_all())
        .map_err(DepsError::io("syncing", &cache))?;
    Ok(files)
}

/// Links entry `name` of the cache under `root` into `release` (which
/// names it first, so garbage collection keeps it), as a build that
/// reuses it does. `Ok(None)`: the cache has no usable entry of that name
/// (one changed since it was stored is removed). Returns the files linked
/// and rewritten.
pub(crate) fn link(
    root: &str,
    name: &str,
    release: &Path,
    outputs: &[String],
) -> Result<Option<(u64, u64)>, DepsError> {
    crate::files::write_atomic(
        &release.join(RELEASE_MARKER),
        format!("{name}\n").as_bytes(),
    )
    .map_err(DepsError::io("writing", release))?;
    let entry = cache_dir(root).join(name);
    if !entry.join(META).is_file() {
        return Ok(None);
    }
    if let Ok(r) = restore(&entry, release, outputs) {
        Ok(Some((r.linked, r.rewritten)))
    } else {
        // Changed since it was stored: not trusted, adopted again.
        make_writable_and_remove(&entry);
        Ok(None)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    format: u32,
    plan_key: String,
    version: Option<String>,
    /// The release directory the step ran in, as given and as resolved.
    origins: Vec<String>,
    outputs: Vec<String>,
    /// Files (relative to `out/`) that hold an origin path.
    relocate: Vec<String>,
    /// Over every path, size and modification time under `out/`.
    digest: String,
}

fn read_meta(entry: &Path) -> Result<Meta, Unusable> {
    let text = fs::read(entry.join(META)).map_err(Unusable::Read)?;
    let m: Meta = serde_json::from_slice(&text).map_err(Unusable::Parse)?;
    if m.format == FORMAT {
        Ok(m)
    } else {
        Err(Unusable::Format(m.format))
    }
}

/// The paths a release directory is known by: as given and resolved.
fn names_of(dir: &Path) -> Vec<String> {
    let mut v = vec![dir.display().to_string()];
    if let Ok(c) = dir.canonicalize() {
        let c = c.display().to_string();
        if !v.contains(&c) {
            v.push(c);
        }
    }
    v
}

/// Visits `base/rel` and everything under it, parents first, entries in
/// name order; symlinks are not followed.
fn walk(
    base: &Path,
    rel: &Path,
    f: &mut dyn FnMut(&Path, &fs::Metadata) -> io::Result<()>,
) -> io::Result<()> {
    let meta = fs::symlink_metadata(base.join(rel))?;
    f(rel, &meta)?;
    if meta.is_dir() {
        let mut names: Vec<_> = fs::read_dir(base.join(rel))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort();
        for n in names {
            walk(base, &rel.join(n), f)?;
        }
    }
    Ok(())
}

/// Adds one visited path to an entry digest.
fn digest_add(h: &mut Sha256, rel: &Path, meta: &fs::Metadata, link: Option<&Path>) {
    let kind = if meta.is_dir() {
        "d"
    } else if meta.file_type().is_symlink() {
        "l"
    } else {
        "f"
    };
    let entry = format!(
        "{kind}\0{}\0{}\0{}.{}\0{}\n",
        rel.display(),
        if meta.is_file() { meta.len() } else { 0 },
        if meta.is_file() { meta.mtime() } else { 0 },
        if meta.is_file() { meta.mtime_nsec() } else { 0 },
        link.map(|l| l.display().to_string()).unwrap_or_default()
    );
    h.update(entry.as_bytes());
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn make_writable_and_remove(path: &Path) {
    // Files are read-only, directories are not: removal needs only the
    // directories' write permission.
    let _ = remove_any(path);
}

fn link_or_copy(src: &Path, dst: &Path) -> io::Result<()> {
    match fs::hard_link(src, dst) {
        Err(e) if e.kind() == io::ErrorKind::CrossesDevices => fs::copy(src, dst).map(|_| ()),
        r => r,
    }
}

/// Stores the outputs the step left in `release` as entry `name`; returns
/// the number of files.
fn store(
    cache: &Path,
    name: &str,
    plan_key: &str,
    version: Option<String>,
    release: &Path,
    outputs: &[String],
) -> Result<u64, DepsError> {
    let err = DepsError::io;
    for o in outputs {
        if fs::symlink_metadata(release.join(o)).is_err() {
            return Err(DepsError::MissingOutput { output: o.clone() });
        }
    }
    fs::create_dir_all(cache).map_err(err("creating", cache))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = cache.join(format!("{TMP_PREFIX}{name}-{}-{nanos}", std::process::id()));
    let out = tmp.join(OUT);
    fs::create_dir_all(&out).map_err(err("creating", &out))?;
    let origins = names_of(release);
    let mut relocate = Vec::new();
    let mut files = 0u64;
    for o in outputs {
        if let Some(parent) = Path::new(o).parent() {
            fs::create_dir_all(out.join(parent)).map_err(err("creating", &out))?;
        }
        walk(release, Path::new(o), &mut |rel, meta| {
            let (src, dst) = (release.join(rel), out.join(rel));
            if meta.is_dir() {
                fs::create_dir(&dst)?;
                fs::set_permissions(
                    &dst,
                    fs::Permissions::from_mode(meta.mode() & 0o7777 | 0o700),
                )
            } else if meta.file_type().is_symlink() {
                std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)
            } else if meta.is_file() {
                // Read-only: a write into a reused file fails (but as root).
                let mode = meta.mode() & 0o7777 & !0o222;
                fs::set_permissions(&src, fs::Permissions::from_mode(mode))?;
                link_or_copy(&src, &dst)?;
                files += 1;
                if names_origin(&src, meta.len(), &origins)? {
                    relocate.push(rel.display().to_string());
                }
                Ok(())
            } else {
                // Sockets, fifos: not dependencies.
                Ok(())
            }
        })
        .map_err(|error| DepsError::Store {
            output: o.clone(),
            error,
        })?;
    }
    write_meta(
        &tmp,
        Meta {
            format: FORMAT,
            plan_key: plan_key.to_owned(),
            version,
            origins,
            outputs: outputs.to_vec(),
            relocate,
            digest: String::new(),
        },
    )?;
    let entry = cache.join(name);
    match fs::rename(&tmp, &entry) {
        Ok(()) => {}
        // Another build with the same key stored it first.
        Err(_) if entry.join(META).is_file() => make_writable_and_remove(&tmp),
        Err(e) => return Err(err("renaming", &tmp)(e)),
    }
    if let Ok(d) = fs::File::open(cache) {
        let _ = d.sync_all();
    }
    Ok(files)
}

/// Whether `needle` (not empty) occurs in `hay`.
pub(crate) fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// `hay` with every occurrence of `from` (not empty) replaced by `to`.
pub(crate) fn replace(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    if from.is_empty() {
        return hay.to_vec();
    }
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

/// Whether the file `path` (`len` bytes) is a small text file that names
/// one of `origins`: one a reuse writes anew with the new release's path.
/// Binary files are never rewritten.
fn names_origin<S: AsRef<str>>(path: &Path, len: u64, origins: &[S]) -> io::Result<bool> {
    if len > RELOCATE_MAX {
        return Ok(false);
    }
    let bytes = fs::read(path)?;
    Ok(!bytes.contains(&0)
        && origins
            .iter()
            .any(|o| contains(&bytes, o.as_ref().as_bytes())))
}

/// Writes the meta of the entry being made in `tmp`, its digest taken
/// from the outputs under `tmp/out` now.
fn write_meta(tmp: &Path, mut meta: Meta) -> Result<(), DepsError> {
    meta.digest =
        digest_of(&tmp.join(OUT), &meta.outputs).map_err(|error| DepsError::Digest { error })?;
    let json = serde_json::to_vec_pretty(&meta).map_err(|error| DepsError::Meta { error })?;
    crate::files::write_atomic(&tmp.join(META), &json).map_err(DepsError::io("writing", tmp))
}

fn digest_of(out: &Path, outputs: &[String]) -> io::Result<String> {
    let mut h = Sha256::new();
    for o in outputs {
        walk(out, Path::new(o), &mut |rel, meta| {
            let link = if meta.file_type().is_symlink() {
                Some(fs::read_link(out.join(rel))?)
            } else {
                None
            };
            digest_add(&mut h, rel, meta, link.as_deref());
            Ok(())
        })?;
    }
    Ok(hex::encode(h.finalize()))
}

struct Restored {
    linked: u64,
    rewritten: u64,
}

/// Links an entry's outputs into `release`, rewriting the files that name
/// the origin; checks the entry's digest on the way.
fn restore(entry: &Path, release: &Path, outputs: &[String]) -> Result<Restored, Unusable> {
    let meta = read_meta(entry)?;
    if meta.outputs != outputs {
        return Err(Unusable::Outputs);
    }
    let out = entry.join(OUT);
    let news = names_of(release);
    let pairs: Vec<(&str, &str)> = meta
        .origins
        .iter()
        .zip(news.iter().chain(std::iter::repeat(&news[news.len() - 1])))
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let relocate: BTreeSet<&str> = meta.relocate.iter().map(String::as_str).collect();
    let mut h = Sha256::new();
    let mut r = Restored {
        linked: 0,
        rewritten: 0,
    };
    let result = (|| {
        for o in outputs {
            let dst = release.join(o);
            remove_any(&dst)?;
            if let Some(parent) = dst.parent() {
                fs::create_dir_all(parent)?;
            }
            walk(&out, Path::new(o), &mut |rel, m| {
                let (src, dst) = (out.join(rel), release.join(rel));
                if m.is_dir() {
                    digest_add(&mut h, rel, m, None);
                    fs::create_dir(&dst)?;
                    fs::set_permissions(&dst, fs::Permissions::from_mode(m.mode() & 0o7777))
                } else if m.file_type().is_symlink() {
                    let target = fs::read_link(&src)?;
                    digest_add(&mut h, rel, m, Some(&target));
                    let mut t = target.display().to_string();
                    for (from, to) in &pairs {
                        if let Some(rest) = t.strip_prefix(from) {
                            t = format!("{to}{rest}");
                            break;
                        }
                    }
                    std::os::unix::fs::symlink(t, &dst)
                } else {
                    digest_add(&mut h, rel, m, None);
                    if relocate.contains(rel.display().to_string().as_str()) {
                        let mut text = fs::read(&src)?;
                        for (from, to) in &pairs {
                            text = replace(&text, from.as_bytes(), to.as_bytes());
                        }
                        fs::write(&dst, &text)?;
                        fs::set_permissions(&dst, fs::Permissions::from_mode(m.mode() & 0o7777))?;
                        r.rewritten += 1;
                    } else {
                        link_or_copy(&src, &dst)?;
                        r.linked += 1;
                    }
                    Ok(())
                }
            })?;
        }
        Ok::<_, io::Error>(())
    })();
    let failed = match result {
        Err(e) => Some(Unusable::Link(e)),
        Ok(()) if hex::encode(h.finalize()) != meta.digest => Some(Unusable::Changed),
        Ok(()) => None,
    };
    if let Some(why) = failed {
        for o in outputs {
            let _ = remove_any(&release.join(o));
        }
        return Err(why);
    }
    Ok(r)
}

/// The cache entry a built release uses ([`RELEASE_MARKER`]): what an
/// artifact packs as its dependency outputs.
pub(crate) struct Used {
    /// The entry's name.
    pub(crate) name: String,
    /// Its output tree (`out/`, holding the outputs).
    pub(crate) out: PathBuf,
    /// The release it was first built in.
    pub(crate) origin: String,
}

/// The entry of the cache under `root` that `release` uses, if it names
/// one that is complete.
pub(crate) fn used_by(root: &str, release: &Path) -> Option<Used> {
    let name = fs::read_to_string(release.join(RELEASE_MARKER)).ok()?;
    let name = name.trim().to_owned();
    let entry = cache_dir(root).join(&name);
    let meta = read_meta(&entry).ok()?;
    Some(Used {
        out: entry.join(OUT),
        origin: meta.origins.first()?.clone(),
        name,
    })
}

/// Removes entries that no release under `root` names, and temporary
/// entries of stores that died.
pub(crate) fn collect_garbage(root: &str) {
    let cache = cache_dir(root);
    let mut used = BTreeSet::new();
    for (name, svc) in entries(Path::new(root)) {
        if name.starts_with('.') {
            continue;
        }
        for (_, release) in entries(&svc.join("releases")) {
            if let Ok(s) = fs::read_to_string(release.join(RELEASE_MARKER)) {
                used.insert(s.trim().to_owned());
            }
        }
    }
    for (name, dir) in entries(&cache) {
        let stale_tmp = name.starts_with(TMP_PREFIX)
            && fs::metadata(&dir)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|e| e > STALE_TMP));
        if stale_tmp || (!name.starts_with(TMP_PREFIX) && !used.contains(&name)) {
            make_writable_and_remove(&dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_notes_say_why() {
        let lock = |id: &str| vec![("package-lock.json".to_owned(), Some(id.to_owned()))];
        let (a, b) = (lock("a"), lock("b"));
        for (inputs, live, cached, want) in [
            (
                &a,
                Some(&a),
                Some(true),
                "dependencies reused (package-lock.json unchanged)",
            ),
            (
                &a,
                Some(&b),
                Some(false),
                "dependencies rebuilt: package-lock.json changed",
            ),
            (
                &a,
                Some(&b),
                None,
                "dependencies rebuilt: package-lock.json changed",
            ),
            (
                &a,
                Some(&b),
                Some(true),
                "dependencies reused (package-lock.json as cached before)",
            ),
            (
                &a,
                Some(&a),
                Some(false),
                "dependencies rebuilt: not in the host's cache (package-lock.json unchanged)",
            ),
            (
                &a,
                Some(&a),
                None,
                "dependencies reused if the host's cache has them (package-lock.json unchanged)",
            ),
            (
                &a,
                None,
                Some(false),
                "dependencies built: no earlier release to reuse them from",
            ),
        ] {
            assert_eq!(plan_note(inputs, live.map(Vec::as_slice), cached), want);
        }
    }

    #[test]
    fn keys_follow_inputs_and_versions() {
        let argv = vec!["npm".to_owned(), "ci".to_owned()];
        let out = vec!["node_modules".to_owned()];
        let k = |id: &str| plan_key("node", &argv, &out, &[("p".into(), Some(id.into()))]);
        assert_eq!(k("a"), k("a"));
        assert_ne!(k("a"), k("b"));
        assert_ne!(k("a"), plan_key("node", &argv, &out, &[("p".into(), None)]));
        assert_ne!(entry_name("k", Some("v20")), entry_name("k", Some("v22")));
        assert!(entry_name("k", None).starts_with("k-"));
    }

    /// A directory of `n` files (in 100 subdirectories) at `dir`.
    fn many_files(dir: &Path, n: usize) {
        for i in 0..n {
            let sub = dir.join(format!("d{}", i % 100));
            if i < 100 {
                fs::create_dir_all(&sub).unwrap();
            }
            fs::write(sub.join(format!("f{i}")), b"x").unwrap();
        }
    }

    /// On a runtime of one worker, a 10 ms timer stays on time while a
    /// backup hashes a 256 MiB file and a dependency build removes an
    /// unusable cache entry and the release's old outputs (20,000 files
    /// each): the hash and the removals run on the blocking pool. Run on
    /// the worker, each would hold the timer up for as long as it takes.
    #[test]
    fn backups_and_cache_removal_do_not_hold_up_timers_on_one_worker() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::time::Instant;

        let tmp = tempfile::tempdir().unwrap();
        let config = crate::config::parse(
            "test.kdl",
            r#"project "p"
environment "e" {
    branch "main"
    root "/srv/p"
    backup {
        run "sh" "-c" "head -c 268435456 /dev/zero > $1" "sh" "{backup}"
        restore "true"
    }
}
phase "core"
runtime "r"
service "s" { runtime "r"; port 4000; phase "core" }
"#,
        )
        .unwrap();
        let env = config.environment("e").unwrap().clone();
        let root = tmp.path().join("root");
        let release = root.join("s/releases/r2");
        many_files(&release.join("out"), 20_000);
        let entry = cache_dir(root.to_str().unwrap()).join(entry_name("k", None));
        many_files(&entry.join(OUT).join("out"), 20_000);
        fs::write(entry.join(META), "not json").unwrap();
        let deps = Deps {
            command: crate::config::Command {
                argv: vec![
                    "sh".into(),
                    "-c".into(),
                    "mkdir out && echo x > out/x".into(),
                ],
                timeout: Duration::from_mins(1),
            },
            inputs: Vec::new(),
            outputs: vec!["out".into()],
            version: None,
        };

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let stop = Arc::new(AtomicBool::new(false));
            let ticking = Arc::clone(&stop);
            let ticker = tokio::spawn(async move {
                let mut interval = tokio::time::interval(Duration::from_millis(10));
                interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                interval.tick().await;
                let mut worst = Duration::ZERO;
                let mut last = Instant::now();
                while !ticking.load(Ordering::SeqCst) {
                    interval.tick().await;
                    let late = last.elapsed().saturating_sub(Duration::from_millis(10));
                    worst = worst.max(late);
                    last = Instant::now();
                }
                worst
            });
            let state_dir = tmp.path().join("state");
            let work = tokio::spawn(async move {
                let t = Instant::now();
                let b = env.backup.clone().unwrap();
                let taken = crate::backup::take("p", &env, &state_dir, &b, "t")
                    .await
                    .unwrap();
                assert_eq!(taken.size, 256 << 20);
                let hashed = t.elapsed();
                let note = provide(Provide {
                    root: root.to_str().unwrap(),
                    release: &release,
                    deps: &deps,
                    argv: deps.command.argv.clone(),
                    version_argv: None,
                    plan_key: "k".into(),
                    env: crate::process::command_env(&env, None, None),
                    log: state_dir.join("logs/t/deps.log"),
                    version_log: state_dir.join("logs/t/deps-version.log"),
                })
                .await
                .unwrap();
                assert!(note.contains("the cached entry was unusable"), "{note}");
                assert_eq!(fs::read_dir(release.join("out")).unwrap().count(), 1);
                (hashed, t.elapsed())
            });
            let (hashed, took) = work.await.unwrap();
            stop.store(true, Ordering::SeqCst);
            let worst = ticker.await.unwrap();
            eprintln!(
                "backup taken in {hashed:?}, dependencies in {:?}; the 10 ms timer was late by up to {worst:?}",
                took.saturating_sub(hashed)
            );
            assert!(
                worst < Duration::from_millis(250) && worst < took / 4,
                "a 10 ms timer was late by up to {worst:?} while the work took {took:?}"
            );
        });
    }

    #[test]
    fn replace_rewrites_every_occurrence() {
        assert_eq!(
            replace(b"#!/a/r1/bin /a/r1", b"/a/r1", b"/b/r22"),
            b"#!/b/r22/bin /b/r22"
        );
        assert_eq!(replace(b"none", b"/a", b"/b"), b"none");
    }

    #[test]
    fn reuse_links_rewrites_and_notices_tampering() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let r1 = root.join("svc/releases/r1");
        let r2 = root.join("svc/releases/r2");
        fs::create_dir_all(r1.join("venv/bin")).unwrap();
        fs::create_dir_all(&r2).unwrap();
        let origin = names_of(&r1)[0].clone();
        fs::write(
            r1.join("venv/bin/tool"),
            format!("#!{origin}/venv/bin/python\n"),
        )
        .unwrap();
        fs::write(r1.join("venv/lib.txt"), "no path here").unwrap();
        std::os::unix::fs::symlink("/usr/bin/python3", r1.join("venv/bin/python")).unwrap();
        let outputs = vec!["venv".to_owned()];
        let cache = cache_dir(root.to_str().unwrap());
        store(&cache, "k-v", "k", None, &r1, &outputs).unwrap();
        fs::write(r1.join(RELEASE_MARKER), "k-v\n").unwrap();
        // The original release goes (pruned); the entry stays.
        fs::remove_dir_all(&r1).unwrap();
        fs::write(r2.join(RELEASE_MARKER), "k-v\n").unwrap();
        let r = restore(&cache.join("k-v"), &r2, &outputs).unwrap();
        assert_eq!((r.linked, r.rewritten), (1, 1));
        let tool = fs::read_to_string(r2.join("venv/bin/tool")).unwrap();
        assert_eq!(tool, format!("#!{}/venv/bin/python\n", r2.display()));
        assert_eq!(
            fs::read_link(r2.join("venv/bin/python")).unwrap(),
            Path::new("/usr/bin/python3")
        );
        // Linked, read-only.
        let m = fs::metadata(r2.join("venv/lib.txt")).unwrap();
        assert_eq!((m.nlink(), m.mode() & 0o222), (2, 0));
        assert_eq!(
            present(root.to_str().unwrap()),
            BTreeSet::from(["k".to_owned()])
        );
        // Changed in place through a link (as root would): noticed.
        let lib = r2.join("venv/lib.txt");
        fs::set_permissions(&lib, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&lib, "changed!").unwrap();
        let r3 = root.join("svc/releases/r3");
        fs::create_dir_all(&r3).unwrap();
        let e = restore(&cache.join("k-v"), &r3, &outputs).err().unwrap();
        assert!(e.to_string().contains("changed since"), "{e}");
        assert!(!r3.join("venv").exists());
        // No release names it: collected.
        fs::remove_dir_all(root.join("svc")).unwrap();
        collect_garbage(root.to_str().unwrap());
        assert!(present(root.to_str().unwrap()).is_empty());
        assert!(!cache.join("k-v").exists());
    }

    /// An entry made on another machine (an artifact's dependency
    /// outputs) is adopted into this cache and linked into a release, its
    /// files that name the release it was built in rewritten for this one;
    /// an adopted entry changed since is not linked, but removed.
    #[test]
    fn adopted_entries_link_like_built_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let root = root.to_str().unwrap();
        let release = Path::new(root).join("svc/releases/r1");
        fs::create_dir_all(&release).unwrap();
        let outputs = vec!["node_modules".to_owned()];
        let origin = "/build/svc/releases/r0";
        let staged = stage(root, "k-v").unwrap();
        let out = staged.out();
        fs::create_dir_all(out.join("node_modules/.bin")).unwrap();
        fs::write(
            out.join("node_modules/.bin/tool"),
            format!("#!{origin}/node_modules/x\n"),
        )
        .unwrap();
        fs::write(out.join("node_modules/x.js"), "module.exports = 1;").unwrap();
        assert!(
            link(root, "k-v", &release, &outputs).unwrap().is_none(),
            "not adopted yet"
        );
        assert_eq!(adopt(staged, origin, &outputs).unwrap(), 2);
        assert_eq!(present(root), BTreeSet::from(["k".to_owned()]));
        assert_eq!(link(root, "k-v", &release, &outputs).unwrap(), Some((1, 1)));
        assert_eq!(
            fs::read_to_string(release.join("node_modules/.bin/tool")).unwrap(),
            format!("#!{}/node_modules/x\n", release.display())
        );
        assert_eq!(
            fs::read_to_string(release.join(RELEASE_MARKER)).unwrap(),
            "k-v\n"
        );
        let m = fs::metadata(release.join("node_modules/x.js")).unwrap();
        assert_eq!((m.nlink(), m.mode() & 0o222), (2, 0), "linked, read-only");
        // Another apply adopting the same entry keeps the one in place.
        let again = stage(root, "k-v").unwrap();
        fs::create_dir_all(again.out().join("node_modules")).unwrap();
        assert_eq!(adopt(again, origin, &outputs).unwrap(), 0);
        // Changed in place: not linked, removed (to be adopted again).
        let x = release.join("node_modules/x.js");
        fs::set_permissions(&x, fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&x, "changed").unwrap();
        let r2 = Path::new(root).join("svc/releases/r2");
        fs::create_dir_all(&r2).unwrap();
        assert!(link(root, "k-v", &r2, &outputs).unwrap().is_none());
        assert!(!cache_dir(root).join("k-v").exists());
        // A staged entry missing an output is refused and leaves nothing.
        let bad = stage(root, "k2-v").unwrap();
        fs::create_dir_all(bad.out()).unwrap();
        assert!(matches!(
            adopt(bad, origin, &outputs),
            Err(DepsError::MissingOutput { .. })
        ));
        assert_eq!(entries(&cache_dir(root)).len(), 0);
    }
}

//! Git changes: two revisions of a repository → the paths that changed
//! between them (renames followed), read with git2 from the object
//! database only. The working tree is never touched, and looked at only
//! by [`Repo::uncommitted`], which says what a plan does not see.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use git2::{Delta, DiffFindOptions, DiffOptions, ObjectType, Oid, Repository, Tree};
use miette::Diagnostic;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum GitError {
    #[error("{path} is not inside a git repository")]
    #[diagnostic(
        code(moorline::git::not_a_repository),
        help("pass the repository with --repo DIR, or keep the config file inside it")
    )]
    NotARepository {
        path: String,
        #[source]
        source: git2::Error,
    },
    #[error("git refuses to open {dir}: the repository belongs to another user")]
    #[diagnostic(
        code(moorline::git::not_owned),
        help(
            "if you trust the repository, mark it safe for the user running moorline: `git config --global --add safe.directory {dir}`; or run moorline as the repository's owner"
        )
    )]
    NotOwned {
        dir: String,
        #[source]
        source: git2::Error,
    },
    #[error("unknown revision `{spec}`")]
    #[diagnostic(
        code(moorline::git::unknown_revision),
        help(
            "use a commit SHA, a branch, a tag or an expression like HEAD~3 that exists in {repo}; fetch first if it lives on a remote"
        )
    )]
    UnknownRevision {
        spec: String,
        repo: String,
        #[source]
        source: git2::Error,
    },
    #[error("`{from}` ({from_sha:.12}) is not an ancestor of `{to}` ({to_sha:.12})")]
    #[diagnostic(
        code(moorline::git::not_an_ancestor),
        help(
            "this usually means a fix landed on the deployed branch and was never merged back; merge it, or pass --allow-non-ancestor to deploy anyway (the plan will say so)"
        )
    )]
    NotAncestor {
        from: String,
        from_sha: String,
        to: String,
        to_sha: String,
    },
    #[error("service `{service}` has no directory `{path}` at {rev:.12}")]
    #[diagnostic(
        code(moorline::git::service_missing),
        help(
            "create the directory in the repository, or set the service's `path` to where its source lives"
        )
    )]
    ServiceMissing {
        service: String,
        path: String,
        rev: String,
    },
    #[error("git failed while {doing}")]
    #[diagnostic(
        code(moorline::git::failed),
        help("check the repository with `git fsck`")
    )]
    Failed {
        doing: String,
        #[source]
        source: git2::Error,
    },
}

fn failed(doing: &str) -> impl FnOnce(git2::Error) -> GitError + '_ {
    move |source| GitError::Failed {
        doing: doing.to_owned(),
        source,
    }
}

/// Why a repository could not be opened from `path`. git (and libgit2)
/// refuse a repository owned by another user unless its directory is
/// listed in `safe.directory`: that case names the directory to list.
fn open_error(path: &Path, source: git2::Error) -> GitError {
    if source.code() == git2::ErrorCode::Owner {
        return GitError::NotOwned {
            dir: safe_directory(path).display().to_string(),
            source,
        };
    }
    GitError::NotARepository {
        path: path.display().to_string(),
        source,
    }
}

/// The directory git's `safe.directory` must list for the repository
/// containing `path`: its work tree (the `.git` directory's parent), or
/// the git directory of a bare repository. Finding it does not check
/// ownership; when even that fails, `path` itself.
fn safe_directory(path: &Path) -> PathBuf {
    let Ok(gitdir) = Repository::discover_path(path, std::iter::empty::<&str>()) else {
        return path.to_path_buf();
    };
    let gitdir = gitdir.components().collect::<PathBuf>();
    match gitdir.file_name() {
        Some(n) if n == ".git" => gitdir.parent().map_or(gitdir.clone(), Path::to_path_buf),
        _ => gitdir,
    }
}

/// How a file differs from HEAD, in a word; `None`: it does not (or only
/// in ways a plan cannot miss, such as being ignored).
fn status_word(s: git2::Status) -> Option<&'static str> {
    use git2::Status as S;
    if s.contains(S::WT_NEW) {
        Some("untracked")
    } else if s.intersects(S::INDEX_DELETED | S::WT_DELETED) {
        Some("deleted")
    } else if s.intersects(S::INDEX_NEW) {
        Some("added, not committed")
    } else if s.intersects(S::INDEX_RENAMED | S::WT_RENAMED) {
        Some("renamed")
    } else if s
        .intersects(S::INDEX_MODIFIED | S::WT_MODIFIED | S::INDEX_TYPECHANGE | S::WT_TYPECHANGE)
    {
        Some("modified")
    } else if s.contains(S::CONFLICTED) {
        Some("conflicted")
    } else {
        None
    }
}

/// A resolved revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rev {
    /// What the user or the state said (`main`, `HEAD~3`, a SHA).
    pub(crate) spec: String,
    pub(crate) sha: String,
    /// First line of the commit message.
    pub(crate) summary: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ChangedPath {
    pub(crate) path: String,
    /// For a rename: where it came from.
    pub(crate) from: Option<String>,
    /// `added`, `modified`, `deleted`, `renamed`, `type-changed`.
    pub(crate) status: String,
}

/// What changed between two revisions.
#[derive(Debug, Clone)]
pub(crate) struct Changes {
    pub(crate) from: Option<Rev>,
    pub(crate) to: Rev,
    /// Sorted by path; empty on a first deploy (everything is new).
    pub(crate) paths: Vec<ChangedPath>,
    /// `from` is not an ancestor of `to` (allowed only when asked).
    pub(crate) non_ancestor: bool,
}

/// An open repository.
pub struct Repo {
    repo: Repository,
    root: PathBuf,
}

impl Repo {
    /// Opens the repository that contains `path`.
    pub fn discover(path: &Path) -> Result<Self, GitError> {
        // libgit2 re-hashes every object it reads by default; git itself
        // does not (only `git fsck` does). Planning reads thousands of
        // trees, and the SHA-1 work dominated a 2,000-service plan.
        git2::opts::strict_hash_verification(false);
        let repo = Repository::discover(path).map_err(|source| open_error(path, source))?;
        let root = repo.workdir().unwrap_or_else(|| repo.path()).to_path_buf();
        Ok(Self { repo, root })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Resolves any revspec to a commit.
    pub(crate) fn resolve(&self, spec: &str) -> Result<Rev, GitError> {
        let unknown = |source| GitError::UnknownRevision {
            spec: spec.to_owned(),
            repo: self.root.display().to_string(),
            source,
        };
        let obj = self.repo.revparse_single(spec).map_err(unknown)?;
        let commit = obj.peel_to_commit().map_err(unknown)?;
        Ok(Rev {
            spec: spec.to_owned(),
            sha: commit.id().to_string(),
            summary: commit.summary().ok().flatten().unwrap_or("").to_owned(),
        })
    }

    /// The tip of a branch: the local branch, else `origin/BRANCH`.
    pub(crate) fn branch_tip(&self, branch: &str) -> Result<Rev, GitError> {
        let local = format!("refs/heads/{branch}");
        if self.repo.find_reference(&local).is_ok() {
            let mut rev = self.resolve(&local)?;
            branch.clone_into(&mut rev.spec);
            return Ok(rev);
        }
        let remote = format!("refs/remotes/origin/{branch}");
        if self.repo.find_reference(&remote).is_ok() {
            let mut rev = self.resolve(&remote)?;
            rev.spec = format!("origin/{branch}");
            return Ok(rev);
        }
        self.resolve(branch)
    }

    /// The tip of `origin/BRANCH`, if the repository has that ref.
    pub(crate) fn remote_tip(&self, branch: &str) -> Option<Rev> {
        let remote = format!("refs/remotes/origin/{branch}");
        self.repo.find_reference(&remote).ok()?;
        let mut rev = self.resolve(&remote).ok()?;
        rev.spec = format!("origin/{branch}");
        Some(rev)
    }

    fn tree(&self, sha: &str) -> Result<Tree<'_>, GitError> {
        let oid = Oid::from_str(sha).map_err(failed("reading a commit id"))?;
        self.repo
            .find_commit(oid)
            .and_then(|c| c.tree())
            .map_err(failed("reading a commit's tree"))
    }

    /// Changed paths between `from` (none: first deploy) and `to`.
    pub(crate) fn changes(
        &self,
        from: Option<Rev>,
        to: Rev,
        allow_non_ancestor: bool,
    ) -> Result<Changes, GitError> {
        let Some(from) = from else {
            return Ok(Changes {
                from: None,
                to,
                paths: Vec::new(),
                non_ancestor: false,
            });
        };
        let from_oid = Oid::from_str(&from.sha).map_err(failed("reading a commit id"))?;
        let to_oid = Oid::from_str(&to.sha).map_err(failed("reading a commit id"))?;
        let ancestor = from_oid == to_oid
            || self
                .repo
                .graph_descendant_of(to_oid, from_oid)
                .map_err(failed("checking ancestry"))?;
        if !ancestor && !allow_non_ancestor {
            return Err(GitError::NotAncestor {
                from: from.spec,
                from_sha: from.sha,
                to: to.spec,
                to_sha: to.sha,
            });
        }
        let old = self.tree(&from.sha)?;
        let new = self.tree(&to.sha)?;
        let mut opts = DiffOptions::new();
        opts.ignore_submodules(true);
        let mut diff = self
            .repo
            .diff_tree_to_tree(Some(&old), Some(&new), Some(&mut opts))
            .map_err(failed("comparing trees"))?;
        let mut find = DiffFindOptions::new();
        find.renames(true);
        diff.find_similar(Some(&mut find))
            .map_err(failed("finding renames"))?;
        let path_of = |f: git2::DiffFile<'_>| {
            f.path()
                .map(|p| p.to_string_lossy().replace('\\', "/"))
                .unwrap_or_default()
        };
        let mut paths: Vec<ChangedPath> = diff
            .deltas()
            .map(|d| {
                let (status, from) = match d.status() {
                    Delta::Added | Delta::Copied => ("added", None),
                    Delta::Deleted => ("deleted", None),
                    Delta::Renamed => ("renamed", Some(path_of(d.old_file()))),
                    Delta::Typechange => ("type-changed", None),
                    _ => ("modified", None),
                };
                let path = if d.status() == Delta::Deleted {
                    path_of(d.old_file())
                } else {
                    path_of(d.new_file())
                };
                ChangedPath {
                    path,
                    from,
                    status: status.to_owned(),
                }
            })
            .collect();
        paths.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Changes {
            from: Some(from),
            to,
            paths,
            non_ancestor: !ancestor,
        })
    }

    /// Uncommitted changes under `paths` (repository-relative, `/`
    /// separators; a directory covers everything below it): files modified,
    /// added, deleted or renamed in the index or the working tree against
    /// HEAD, and untracked files. Ignored files are not changes. Sorted,
    /// each as `path (what)`. Empty for a repository without a working tree
    /// or for no paths.
    ///
    /// libgit2 reads no working tree with directories nested more than 100
    /// deep (`directory nesting too deep`, its own fixed limit): the paths
    /// are then looked at one by one, and those it cannot read are
    /// [`Uncommitted::unchecked`], so one deep tree does not stop the plan
    /// of every service.
    pub(crate) fn uncommitted(&self, paths: &[String]) -> Result<Uncommitted, GitError> {
        if self.repo.is_bare() || paths.is_empty() {
            return Ok(Uncommitted::default());
        }
        let reading = "reading the working tree's status";
        let mut out = match self.statuses(paths) {
            Ok(changes) => Uncommitted {
                changes,
                unchecked: Vec::new(),
            },
            Err(e) if too_deep(&e) => {
                let mut out = Uncommitted::default();
                for p in paths {
                    match self.statuses(std::slice::from_ref(p)) {
                        Ok(c) => out.changes.extend(c),
                        Err(e) if too_deep(&e) => {
                            out.unchecked.push(format!("{p}: {}", e.message()));
                        }
                        Err(e) => return Err(failed(reading)(e)),
                    }
                }
                out
            }
            Err(e) => return Err(failed(reading)(e)),
        };
        out.changes.sort();
        out.changes.dedup();
        Ok(out)
    }

    /// [`Repo::uncommitted`]'s changes under `paths`, in one status walk.
    fn statuses(&self, paths: &[String]) -> Result<Vec<String>, git2::Error> {
        let mut opts = git2::StatusOptions::new();
        opts.include_untracked(true)
            .recurse_untracked_dirs(true)
            .include_ignored(false)
            .exclude_submodules(true);
        // The repository root (a service at `.`) is every path: no
        // pathspec at all.
        if !paths.iter().any(|p| is_root(p)) {
            for p in paths {
                // A literal path, not a glob: service paths are names, and a
                // `*` in one must not widen what is looked at.
                opts.pathspec(p.trim_end_matches('/'));
            }
        }
        opts.disable_pathspec_match(true);
        let statuses = self.repo.statuses(Some(&mut opts))?;
        Ok(statuses
            .iter()
            .filter_map(|e| {
                let path = String::from_utf8_lossy(e.path_bytes()).into_owned();
                let what = status_word(e.status())?;
                Some(format!("{path} ({what})"))
            })
            .collect())
    }

    /// The id of `sha`'s root tree: equal ids mean identical contents.
    pub(crate) fn tree_id(&self, sha: &str) -> Option<String> {
        self.tree(sha).ok().map(|t| t.id().to_string())
    }

    /// Commits reachable from `tip` but not from `base`, newest first, at
    /// most `limit`, merge commits left out (merging the other branch in
    /// is not a change of its own): what `tip`'s branch carries that
    /// `base`'s lacks, such as a hotfix never merged back.
    pub(crate) fn only_in(
        &self,
        tip: &str,
        base: &str,
        limit: usize,
    ) -> Result<Vec<Rev>, GitError> {
        let oid = |s: &str| Oid::from_str(s).map_err(failed("reading a commit id"));
        let mut walk = self.repo.revwalk().map_err(failed("walking history"))?;
        walk.push(oid(tip)?).map_err(failed("walking history"))?;
        walk.hide(oid(base)?).map_err(failed("walking history"))?;
        let mut out = Vec::new();
        for id in walk {
            let id = id.map_err(failed("walking history"))?;
            let c = self
                .repo
                .find_commit(id)
                .map_err(failed("reading a commit"))?;
            if c.parent_count() > 1 {
                continue;
            }
            out.push(Rev {
                spec: id.to_string(),
                sha: id.to_string(),
                summary: c.summary().ok().flatten().unwrap_or("").to_owned(),
            });
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// The commit HEAD points at, if any.
    pub(crate) fn head_sha(&self) -> Option<String> {
        self.repo
            .head()
            .ok()?
            .peel_to_commit()
            .ok()
            .map(|c| c.id().to_string())
    }

    /// The tree of `sha`, read once for many path look-ups.
    pub(crate) fn snapshot(&self, sha: &str) -> Result<Snapshot<'_>, GitError> {
        Ok(Snapshot {
            repo: &self.repo,
            tree: self.tree(sha)?,
            dirs: std::cell::RefCell::new(HashMap::new()),
        })
    }

    #[cfg(test)]
    /// Whether `path` exists (as a file or directory) at `sha`.
    pub(crate) fn exists(&self, sha: &str, path: &str) -> Result<bool, GitError> {
        let tree = self.tree(sha)?;
        Ok(is_root(path) || tree.get_path(Path::new(path)).is_ok())
    }

    #[cfg(test)]
    /// The object id of `path` at `sha` (`None`: absent): equal ids mean
    /// identical contents, however far apart the commits are.
    pub(crate) fn path_id(&self, sha: &str, path: &str) -> Result<Option<String>, GitError> {
        let tree = self.tree(sha)?;
        if is_root(path) {
            return Ok(Some(tree.id().to_string()));
        }
        Ok(tree
            .get_path(Path::new(path))
            .ok()
            .map(|e| e.id().to_string()))
    }

    #[cfg(test)]
    /// Whether `path` is a directory at `sha`.
    pub(crate) fn is_dir(&self, sha: &str, path: &str) -> Result<bool, GitError> {
        let tree = self.tree(sha)?;
        Ok(is_root(path)
            || tree
                .get_path(Path::new(path))
                .is_ok_and(|e| e.kind() == Some(ObjectType::Tree)))
    }

    /// A file's content at `sha`, if it exists and is a blob.
    pub(crate) fn read(&self, sha: &str, path: &str) -> Result<Option<Vec<u8>>, GitError> {
        let tree = self.tree(sha)?;
        let Ok(entry) = tree.get_path(Path::new(path)) else {
            return Ok(None);
        };
        let Ok(blob) = self.repo.find_blob(entry.id()) else {
            return Ok(None);
        };
        Ok(Some(blob.content().to_vec()))
    }

    /// Writes the tree at `sha`/`subdir` (`.`: the whole tree) into `dest`
    /// (created; must not exist). Files keep their executable bit; symlinks
    /// stay symlinks.
    pub fn export(&self, sha: &str, subdir: &str, dest: &Path) -> Result<u64, ExportError> {
        let tree = self.tree(sha)?;
        let sub = if is_root(subdir) {
            tree
        } else {
            let entry = tree
                .get_path(Path::new(subdir))
                .map_err(|source| GitError::Failed {
                    doing: format!("finding {subdir}"),
                    source,
                })?;
            self.repo
                .find_tree(entry.id())
                .map_err(failed("reading a directory"))?
        };
        std::fs::create_dir_all(dest).map_err(|e| ExportError::Io(dest.to_owned(), e))?;
        let mut files = 0;
        self.export_tree(&sub, dest, &mut files)?;
        Ok(files)
    }

    /// Writes a tree. Every file and directory is created new (`O_EXCL`,
    /// `mkdir`), so a hostile tree cannot write through a symlink it made
    /// earlier (two entries of one name). The walk keeps its own stack, so
    /// however deep a tree nests it needs no more of the thread's; what
    /// bounds nesting is the longest path the kernel takes
    /// ([`MAX_EXPORT_PATH`]), and a tree beyond it fails this export
    /// naming the path.
    fn export_tree(
        &self,
        tree: &Tree<'_>,
        dest: &Path,
        files: &mut u64,
    ) -> Result<(), ExportError> {
        let mut dirs = vec![(tree.id(), dest.to_owned())];
        while let Some((id, dir)) = dirs.pop() {
            let tree = self
                .repo
                .find_tree(id)
                .map_err(failed("reading a directory"))?;
            self.export_entries(&tree, &dir, files, &mut dirs)?;
        }
        Ok(())
    }

    /// Writes the entries of one tree into `dest`; its subtrees are
    /// created empty and left in `dirs` to fill.
    fn export_entries(
        &self,
        tree: &Tree<'_>,
        dest: &Path,
        files: &mut u64,
        dirs: &mut Vec<(Oid, PathBuf)>,
    ) -> Result<(), ExportError> {
        for entry in tree {
            let Ok(name) = entry.name() else { continue };
            if name == ".." || name == "." || name.contains('/') {
                continue;
            }
            let path = dest.join(name);
            if path.as_os_str().len() > MAX_EXPORT_PATH {
                return Err(ExportError::TooDeep {
                    path,
                    limit: MAX_EXPORT_PATH,
                });
            }
            match entry.kind() {
                Some(ObjectType::Tree) => {
                    std::fs::create_dir(&path).map_err(|e| ExportError::Io(path.clone(), e))?;
                    dirs.push((entry.id(), path));
                }
                Some(ObjectType::Blob) => {
                    let blob = self
                        .repo
                        .find_blob(entry.id())
                        .map_err(failed("reading a file"))?;
                    let mode = entry.filemode();
                    if mode == 0o120_000 {
                        let target = String::from_utf8_lossy(blob.content()).into_owned();
                        std::os::unix::fs::symlink(&target, &path)
                            .map_err(|e| ExportError::Io(path.clone(), e))?;
                    } else {
                        write_new(&path, blob.content())
                            .map_err(|e| ExportError::Io(path.clone(), e))?;
                        if mode == 0o100_755 {
                            use std::os::unix::fs::PermissionsExt;
                            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                                .map_err(|e| ExportError::Io(path.clone(), e))?;
                        }
                    }
                    *files += 1;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// What [`Repo::uncommitted`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Uncommitted {
    /// Each `path (what)`, sorted.
    pub(crate) changes: Vec<String>,
    /// The paths libgit2 could not read the working tree of, each
    /// `path: reason`: not checked for changes.
    pub(crate) unchecked: Vec<String>,
}

/// Whether libgit2 refused a working tree for its directory nesting limit
/// (100 levels, fixed in libgit2's filesystem iterator; git itself has
/// none). It says so only in its message.
fn too_deep(e: &git2::Error) -> bool {
    e.message().contains("nesting too deep")
}

/// The longest path [`Repo::export`] creates, in bytes: Linux's
/// `PATH_MAX` (4096) less its NUL. A tree nested so deep that a path in
/// the release would be longer cannot be written with plain paths (git
/// itself has no limit); its export fails, naming the path. With one-letter
/// directory names that is some 2,000 levels.
pub(crate) const MAX_EXPORT_PATH: usize = 4095;

/// Creates `path` (failing if anything, a symlink included, is there) and
/// writes `bytes` to it.
fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    f.write_all(bytes)
}

/// One commit's tree, for repeated look-ups: directories read once are
/// kept, so a `services/` directory with thousands of entries is inflated
/// and parsed once, not once per service (libgit2 does not cache large
/// trees by default).
pub(crate) struct Snapshot<'r> {
    repo: &'r Repository,
    tree: Tree<'r>,
    dirs: std::cell::RefCell<HashMap<String, Tree<'r>>>,
}

impl Snapshot<'_> {
    /// (object id, is a directory) of `path`.
    fn entry(&self, path: &str) -> Option<(Oid, bool)> {
        if is_root(path) {
            return Some((self.tree.id(), true));
        }
        let (dir, name) = match path.trim_end_matches('/').rsplit_once('/') {
            Some((d, n)) => (d, n),
            None => ("", path.trim_end_matches('/')),
        };
        if dir.is_empty() {
            let e = self.tree.get_name(name)?;
            return Some((e.id(), e.kind() == Some(ObjectType::Tree)));
        }
        if !self.dirs.borrow().contains_key(dir) {
            let (id, is_dir) = self.entry(dir)?;
            if !is_dir {
                return None;
            }
            let t = self.repo.find_tree(id).ok()?;
            self.dirs.borrow_mut().insert(dir.to_owned(), t);
        }
        let dirs = self.dirs.borrow();
        let e = dirs.get(dir)?.get_name(name)?;
        Some((e.id(), e.kind() == Some(ObjectType::Tree)))
    }

    pub(crate) fn exists(&self, path: &str) -> bool {
        self.entry(path).is_some()
    }

    pub(crate) fn is_dir(&self, path: &str) -> bool {
        self.entry(path).is_some_and(|(_, d)| d)
    }

    /// The object id of `path` (`None`: absent).
    pub(crate) fn path_id(&self, path: &str) -> Option<String> {
        self.entry(path).map(|(id, _)| id.to_string())
    }
}

/// Whether a repository path names the repository itself (a service at
/// [`crate::config::ROOT_PATH`]).
fn is_root(path: &str) -> bool {
    path == crate::config::ROOT_PATH
}

#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum ExportError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Git(#[from] GitError),
    #[error("cannot write {0}")]
    #[diagnostic(
        code(moorline::release::write),
        help("check free space and permissions under the environment's root")
    )]
    Io(PathBuf, #[source] std::io::Error),
    #[error(
        "the service's tree nests too deep to export: {path} would be longer than {limit} bytes"
    )]
    #[diagnostic(
        code(moorline::release::too_deep),
        help(
            "only this service's build fails; no source tree needs that, so check the commit for a crafted or generated tree"
        )
    )]
    TooDeep { path: PathBuf, limit: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repository at `root` with `files` committed on HEAD; the commit.
    fn committed_repo(root: &Path, files: &[(&str, &str)]) -> (Repository, String) {
        let git = Repository::init(root).unwrap();
        for (p, c) in files {
            std::fs::create_dir_all(root.join(p).parent().unwrap()).unwrap();
            std::fs::write(root.join(p), c).unwrap();
        }
        let sha = {
            let mut index = git.index().unwrap();
            index
                .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
                .unwrap();
            index.write().unwrap();
            let tree = git.find_tree(index.write_tree().unwrap()).unwrap();
            let sig = git2::Signature::now("t", "t@example.com").unwrap();
            git.commit(Some("HEAD"), &sig, &sig, "init", &tree, &[])
                .unwrap()
                .to_string()
        };
        (git, sha)
    }

    /// A commit whose `svc/` holds `levels` directories nested in a chain,
    /// the innermost with one file.
    fn nested_commit(repo: &Repository, levels: usize) -> String {
        let blob = repo.blob(b"x\n").unwrap();
        let mut b = repo.treebuilder(None).unwrap();
        b.insert("f", blob, 0o100_644).unwrap();
        let mut tree = b.write().unwrap();
        for _ in 0..levels {
            let mut b = repo.treebuilder(None).unwrap();
            b.insert("d", tree, 0o040_000).unwrap();
            tree = b.write().unwrap();
        }
        let mut b = repo.treebuilder(None).unwrap();
        b.insert("svc", tree, 0o040_000).unwrap();
        let root = repo.find_tree(b.write().unwrap()).unwrap();
        let sig = git2::Signature::now("t", "t@example.com").unwrap();
        repo.commit(None, &sig, &sig, "nested", &root, &[])
            .unwrap()
            .to_string()
    }

    #[test]
    fn export_refuses_a_tree_nested_beyond_the_limit_and_writes_a_deep_one() {
        let dir = tempfile::tempdir().unwrap();
        let git = Repository::init(dir.path().join("r")).unwrap();
        // Two bytes (`d/`) a level: past the longest path.
        let deep = nested_commit(&git, MAX_EXPORT_PATH / 2 + 10);
        let repo = Repo::discover(&dir.path().join("r")).unwrap();
        let err = repo
            .export(&deep, "svc", &dir.path().join("out-deep"))
            .unwrap_err();
        assert!(matches!(err, ExportError::TooDeep { .. }), "{err:?}");
        // 300 levels: deeper than libgit2 walks a working tree, and no
        // problem for the export.
        let fine = nested_commit(&git, 300);
        let n = repo
            .export(&fine, "svc", &dir.path().join("out-fine"))
            .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn uncommitted_sees_only_the_given_paths_and_every_kind_of_change() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("r");
        committed_repo(
            &root,
            &[
                ("svc/a/main.js", "1"),
                ("svc/a/gone.js", "1"),
                ("svc/ab/x.js", "1"),
                ("other/y", "1"),
                ("app.kdl", "k"),
                (".gitignore", "*.log\n"),
            ],
        );
        let repo = Repo::discover(&root).unwrap();
        let watched = ["svc/a".to_owned(), "app.kdl".to_owned()];
        assert_eq!(repo.uncommitted(&watched).unwrap(), Uncommitted::default());
        std::fs::write(root.join("svc/a/main.js"), "2").unwrap();
        std::fs::remove_file(root.join("svc/a/gone.js")).unwrap();
        std::fs::write(root.join("svc/a/new.js"), "n").unwrap();
        std::fs::write(root.join("svc/a/debug.log"), "ignored").unwrap();
        std::fs::write(root.join("svc/ab/x.js"), "2").unwrap();
        std::fs::write(root.join("other/y"), "2").unwrap();
        std::fs::write(root.join("app.kdl"), "k2").unwrap();
        assert_eq!(
            repo.uncommitted(&watched).unwrap().changes,
            [
                "app.kdl (modified)",
                "svc/a/gone.js (deleted)",
                "svc/a/main.js (modified)",
                "svc/a/new.js (untracked)",
            ]
        );
        assert_eq!(repo.uncommitted(&[]).unwrap(), Uncommitted::default());
    }

    /// A working tree nested deeper than libgit2 walks (100) under one
    /// path leaves that path unchecked, and the others checked.
    #[test]
    fn a_tree_too_deep_for_libgit2_leaves_only_its_path_unchecked() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("r");
        let deep = format!("deep/{}f", "d/".repeat(150));
        // Added path by path: libgit2's `add_all` walks the tree too.
        let git = Repository::init(&root).unwrap();
        let mut index = git.index().unwrap();
        for p in ["svc/a.js", deep.as_str()] {
            std::fs::create_dir_all(root.join(p).parent().unwrap()).unwrap();
            std::fs::write(root.join(p), "1").unwrap();
            index.add_path(Path::new(p)).unwrap();
        }
        index.write().unwrap();
        let tree = git.find_tree(index.write_tree().unwrap()).unwrap();
        let sig = git2::Signature::now("t", "t@example.com").unwrap();
        git.commit(Some("HEAD"), &sig, &sig, "deep", &tree, &[])
            .unwrap();
        let repo = Repo::discover(&root).unwrap();
        std::fs::write(root.join("svc/a.js"), "2").unwrap();
        let found = repo
            .uncommitted(&["deep".to_owned(), "svc".to_owned()])
            .unwrap();
        assert_eq!(found.changes, ["svc/a.js (modified)"]);
        assert_eq!(found.unchecked.len(), 1, "{found:?}");
        assert!(
            found.unchecked[0].starts_with("deep: ") && found.unchecked[0].contains("too deep"),
            "{found:?}"
        );
        // The whole repository is one path: unchecked as a whole.
        let found = repo.uncommitted(&[".".to_owned()]).unwrap();
        assert!(found.changes.is_empty());
        assert_eq!(found.unchecked.len(), 1, "{found:?}");
    }

    #[test]
    fn the_root_path_is_the_whole_repository() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("r");
        let (_git, sha) = committed_repo(
            &root,
            &[
                ("go.mod", "module a\n"),
                ("cmd/a/main.go", "package main\n"),
            ],
        );
        let repo = Repo::discover(&root).unwrap();
        let snap = repo.snapshot(&sha).unwrap();
        let tree_id = repo.tree_id(&sha);
        assert!(snap.is_dir(".") && snap.exists("."));
        assert_eq!(snap.path_id("."), tree_id);
        assert!(repo.is_dir(&sha, ".").unwrap() && repo.exists(&sha, ".").unwrap());
        assert_eq!(repo.path_id(&sha, ".").unwrap(), tree_id);
        let out = dir.path().join("out");
        assert_eq!(repo.export(&sha, ".", &out).unwrap(), 2);
        assert_eq!(
            std::fs::read_to_string(out.join("go.mod")).unwrap(),
            "module a\n"
        );
        assert!(out.join("cmd/a/main.go").is_file());
        // Uncommitted changes anywhere are the root's.
        std::fs::write(root.join("notes.md"), "n").unwrap();
        assert_eq!(
            repo.uncommitted(&[".".to_owned()]).unwrap().changes,
            ["notes.md (untracked)"]
        );
        assert_eq!(
            repo.uncommitted(&["cmd".to_owned()]).unwrap(),
            Uncommitted::default()
        );
    }

    #[test]
    fn export_never_writes_through_an_existing_path() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        assert!(write_new(&link, b"written").is_err());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
    }

    #[test]
    fn a_repository_of_another_user_names_the_safe_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        Repository::init(root.join("work")).unwrap();
        Repository::init_bare(root.join("bare.git")).unwrap();
        std::fs::create_dir_all(root.join("work/sub/deeper")).unwrap();
        let owner = || {
            git2::Error::new(
                git2::ErrorCode::Owner,
                git2::ErrorClass::Config,
                "repository path is not owned by current user",
            )
        };
        for (from, want) in [
            (root.join("work/sub/deeper"), root.join("work")),
            (root.join("work"), root.join("work")),
            (root.join("bare.git"), root.join("bare.git")),
            // Nothing to discover: the path as given.
            (root.join("nowhere"), root.join("nowhere")),
        ] {
            let e = open_error(&from, owner());
            let GitError::NotOwned { dir, .. } = &e else {
                panic!("{e:?}");
            };
            assert_eq!(Path::new(dir), want, "from {}", from.display());
            let help = e.help().unwrap().to_string();
            assert!(
                help.contains(&format!(
                    "git config --global --add safe.directory {}",
                    want.display()
                )),
                "{help}"
            );
        }
        // Any other failure is "not a repository", as before.
        let other = git2::Error::new(
            git2::ErrorCode::NotFound,
            git2::ErrorClass::Repository,
            "could not find repository",
        );
        assert!(matches!(
            open_error(&root.join("nowhere"), other),
            GitError::NotARepository { .. }
        ));
    }
}

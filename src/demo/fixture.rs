//! Pakashop-shaped fixture repositories, the one `moorline demo` deploys: in go a scratch
//! directory and [`FixtureOptions`], out comes a git repository (`main` and `production`)
//! with a runnable fake of every service plus its `moorline.kdl`, and a
//! backup tool beside it. Guarantees: nothing outside the given directory is
//! written; no network and no real build tool is used; commits are
//! deterministic (fixed author, time derived from the parent), so the same
//! directory and edits always give the same SHAs.
//!
//! What only the tests and benches need (generated fleets, a proxy node, more edits, branches)
//! is added by `crate::testkit::fixture`, with the `testkit` feature.

mod scripts;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use git2::{BranchType, IndexEntry, IndexTime, Oid, Repository, Signature, Time};

use crate::config::kdl_string;

/// Phases in the order the config declares them.
pub const PHASES: [&str; 5] = ["infrastructure", "config", "gateway", "core", "supporting"];

/// Author and committer of every fixture commit.
const AUTHOR: (&str, &str) = ("Moorline Fixture", "fixture@moorline.invalid");

/// Time of the initial commit (2023-11-14T22:13:20Z); each later commit is
/// one minute after its parent, which keeps SHAs reproducible.
const EPOCH: i64 = 1_700_000_000;
const COMMIT_STEP_SECONDS: i64 = 60;

/// Options for [`Fixture::create`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixtureOptions {
    /// `None`: the real Pakashop ports (20000 + i for a generated fleet);
    /// `Some(b)`: service `i` (0-based, in [`Fixture::services`] order) listens on `b + i`.
    pub port_base: Option<u16>,
    /// `None`: the 19 Pakashop services; `Some(n)`: `svc-0001`.. cycling
    /// through the phases config, gateway, core, supporting.
    #[cfg(feature = "testkit")]
    pub services: Option<usize>,
    /// Environment roots are `root/staging` and `root/production`.
    pub(crate) root: PathBuf,
    /// Absolute path of python3, used in every command and unit.
    pub python: PathBuf,
    /// When set, a `proxy "nginx"` node with this argv as its `check`.
    #[cfg(feature = "testkit")]
    pub proxy: Option<Vec<String>>,
}

impl FixtureOptions {
    /// The real Pakashop fleet and ports under `root`, with `/usr/bin/python3`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FixtureOptions {
            port_base: None,
            #[cfg(feature = "testkit")]
            services: None,
            root: root.into(),
            python: PathBuf::from("/usr/bin/python3"),
            #[cfg(feature = "testkit")]
            proxy: None,
        }
    }
}

/// One service of the fixture fleet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixtureService {
    pub name: String,
    pub port: u16,
    pub phase: String,
    /// `node`, `go` or `python`.
    pub runtime: String,
    pub(crate) depends_on: Vec<String>,
    /// Paths outside `services/{name}` whose change affects the service.
    pub(crate) watch: Vec<String>,
    /// Whether `services/{name}/prisma/schema.prisma` exists (migrations run).
    pub prisma: bool,
}

impl FixtureService {
    /// The service's directory inside the repository.
    pub(crate) fn dir(&self) -> String {
        format!("services/{}", self.name)
    }
}

/// A generated repository and config; see the module documentation.
#[derive(Debug, Clone)]
pub struct Fixture {
    /// The repository's working directory (`dir/repo`).
    pub repo: PathBuf,
    /// `dir/repo/moorline.kdl`.
    pub config_path: PathBuf,
    pub services: Vec<FixtureService>,
    /// Absolute parent of the environment roots (`root/staging`, `root/production`).
    pub(crate) root: PathBuf,
    /// `dir/tools/backup.py`, the production backup command.
    pub backup_tool: PathBuf,
    python: PathBuf,
}

/// A change to make in [`Fixture::commit`]. Paths are repository-relative
/// with `/` separators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Create or replace a file.
    Write { path: String, contents: String },
    /// Remove a file, or every file under a directory.
    #[cfg(feature = "testkit")]
    Delete { path: String },
    /// Move a file, or every file under a directory, keeping contents.
    #[cfg(feature = "testkit")]
    Rename { from: String, to: String },
    /// Increment the integer in a file (a missing file counts as 0).
    Bump { path: String },
    /// Set one key of a service's `behaviour.json`, keeping the others.
    Behaviour {
        service: String,
        key: String,
        value: serde_json::Value,
    },
}

impl Edit {
    /// Change `services/{name}/VERSION` (its number goes up by one).
    pub fn touch_service(name: &str) -> Edit {
        Edit::Bump {
            path: format!("services/{name}/VERSION"),
        }
    }

    /// Add `services/{name}/prisma/migrations/{migration}/migration.sql`.
    pub fn add_migration(name: &str, migration: &str) -> Edit {
        Edit::Write {
            path: format!("services/{name}/prisma/migrations/{migration}/migration.sql"),
            contents: format!(
                "-- {migration} for pakashop-{name}\nCREATE TABLE \"{}\" (id INTEGER PRIMARY KEY);\n",
                migration.replace('"', "")
            ),
        }
    }

    /// `/health/ready` answers 503 forever.
    pub fn break_readiness(name: &str) -> Edit {
        Self::behaviour(name, "ready", false.into())
    }

    /// Back to the healthy defaults of `behaviour.json`.
    pub fn heal(name: &str) -> Edit {
        Edit::Write {
            path: format!("services/{name}/behaviour.json"),
            contents: default_behaviour(),
        }
    }

    pub(crate) fn behaviour(name: &str, key: &str, value: serde_json::Value) -> Edit {
        Edit::Behaviour {
            service: name.to_owned(),
            key: key.to_owned(),
            value,
        }
    }
}

/// Everything that can go wrong while building or changing a fixture.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum FixtureError {
    #[error("cannot {action} {}", path.display())]
    #[diagnostic(code(moorline::fixture::io))]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("git: cannot {action}")]
    #[diagnostic(code(moorline::fixture::git))]
    Git {
        action: String,
        #[source]
        source: git2::Error,
    },
    #[error("path {} is not valid UTF-8", .0.display())]
    #[diagnostic(
        code(moorline::fixture::non_utf8_path),
        help("the config is text; choose a UTF-8 directory")
    )]
    NonUtf8Path(PathBuf),
    #[error("{count} services starting at port {base} run past port 65535")]
    #[diagnostic(
        code(moorline::fixture::port_overflow),
        help("choose a lower port_base")
    )]
    PortOverflow { base: u16, count: usize },
    #[cfg(feature = "testkit")]
    #[error("a fixture needs at least one service")]
    #[diagnostic(code(moorline::fixture::empty_fleet))]
    EmptyFleet,
    #[error("edit names {path}, which does not exist on the branch")]
    #[diagnostic(code(moorline::fixture::missing_path))]
    MissingPath { path: String },
    #[error("{path} does not hold {expected}")]
    #[diagnostic(code(moorline::fixture::bad_contents))]
    BadContents {
        path: String,
        expected: &'static str,
    },
    #[error("no branch named {0}")]
    #[diagnostic(code(moorline::fixture::no_branch))]
    NoBranch(String),
}

pub(crate) fn git(action: impl Into<String>) -> impl FnOnce(git2::Error) -> FixtureError {
    let action = action.into();
    move |source| FixtureError::Git { action, source }
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FixtureError {
    let path = path.to_path_buf();
    move |source| FixtureError::Io {
        action,
        path,
        source,
    }
}

impl Fixture {
    /// Build the repository at `dir/repo` (one commit holding everything,
    /// branches `main` checked out and `production` at the same commit) and
    /// the backup tool at `dir/tools/backup.py`.
    pub fn create(dir: &Path, opts: &FixtureOptions) -> Result<Fixture, FixtureError> {
        let dir = std::path::absolute(dir).map_err(io("resolve", dir))?;
        let root = std::path::absolute(&opts.root).map_err(io("resolve", &opts.root))?;
        let services = fleet(opts)?;
        let repo_dir = dir.join("repo");
        let tools = dir.join("tools");
        let backup_tool = tools.join("backup.py");
        let fixture = Fixture {
            config_path: repo_dir.join("moorline.kdl"),
            repo: repo_dir,
            services,
            root,
            backup_tool,
            python: opts.python.clone(),
        };

        std::fs::create_dir_all(&tools).map_err(io("create", &tools))?;
        write_file(&fixture.backup_tool, scripts::BACKUP_PY)?;

        let config = fixture.config_text()?;
        #[cfg(feature = "testkit")]
        let config = crate::testkit::fixture::with_proxy(config, opts.proxy.as_deref());
        let mut files = repository_files(&fixture.services);
        files.push(("moorline.kdl".to_owned(), config));
        for (path, contents) in &files {
            write_file(&fixture.repo.join(path), contents)?;
        }

        let repo = Repository::init_opts(
            &fixture.repo,
            git2::RepositoryInitOptions::new().initial_head("main"),
        )
        .map_err(git("initialise the repository"))?;
        let mut index = repo.index().map_err(git("open the index"))?;
        index
            .add_all(["*"], git2::IndexAddOption::DEFAULT, None)
            .map_err(git("stage the initial files"))?;
        index.write().map_err(git("write the index"))?;
        let tree_id = index.write_tree().map_err(git("write the initial tree"))?;
        let tree = repo
            .find_tree(tree_id)
            .map_err(git("read the initial tree"))?;
        let sig = signature(EPOCH)?;
        let commit = repo
            .commit(
                Some("HEAD"),
                &sig,
                &sig,
                "Pakashop: initial import",
                &tree,
                &[],
            )
            .map_err(git("create the initial commit"))?;
        let commit = repo
            .find_commit(commit)
            .map_err(git("read the initial commit"))?;
        repo.branch("production", &commit, false)
            .map_err(git("create branch production"))?;
        Ok(fixture)
    }

    /// The SHA of `branch`'s tip.
    pub fn head(&self, branch: &str) -> Result<String, FixtureError> {
        let repo = self.open()?;
        Ok(tip(&repo, branch)?.id().to_string())
    }

    /// Commit `edits` on top of `branch` (built in memory) and return the new
    /// SHA. When `branch` is checked out, the working tree follows safely.
    pub fn commit(
        &self,
        branch: &str,
        message: &str,
        edits: &[Edit],
    ) -> Result<String, FixtureError> {
        let repo = self.open()?;
        let parent = tip(&repo, branch)?;
        let parent_tree = parent.tree().map_err(git("read the parent tree"))?;
        let mut index = git2::Index::new().map_err(git("create an index"))?;
        index
            .read_tree(&parent_tree)
            .map_err(git("load the parent tree"))?;
        for edit in edits {
            apply_edit(&repo, &mut index, edit)?;
        }
        let tree_id = index
            .write_tree_to(&repo)
            .map_err(git("write the new tree"))?;
        let tree = repo.find_tree(tree_id).map_err(git("read the new tree"))?;
        let sig = signature(parent.time().seconds() + COMMIT_STEP_SECONDS)?;
        let id = repo
            .commit(None, &sig, &sig, message, &tree, &[&parent])
            .map_err(git(format!("commit on {branch}")))?;

        let checked_out = repo
            .head()
            .ok()
            .and_then(|h| h.shorthand().ok().map(str::to_owned));
        if checked_out.as_deref() == Some(branch) {
            repo.checkout_tree(
                tree.as_object(),
                Some(git2::build::CheckoutBuilder::new().safe()),
            )
            .map_err(git(format!("update the working tree of {branch}")))?;
        }
        repo.reference(&format!("refs/heads/{branch}"), id, true, message)
            .map_err(git(format!("move {branch}")))?;
        Ok(id.to_string())
    }

    /// Replace the config file with `text` and commit it on `main` (checked
    /// out, so the file on disk follows); `production` moves along when it
    /// was at the same commit. A config edited this way is committed, as
    /// `apply` wants it. Returns the new SHA of `main`.
    pub fn commit_config(&self, message: &str, text: &str) -> Result<String, FixtureError> {
        let before = self.head("main")?;
        // The file on disk goes back to its committed text first, so the
        // checkout of the new commit never meets a local edit.
        let repo = self.open()?;
        let committed = tip(&repo, "main")?
            .tree()
            .map_err(git("read the tree of main"))?
            .get_path(Path::new("moorline.kdl"))
            .and_then(|e| repo.find_blob(e.id()))
            .map(|b| b.content().to_vec())
            .map_err(git("read the committed config"))?;
        std::fs::write(&self.config_path, committed).map_err(io("write", &self.config_path))?;
        let sha = self.commit(
            "main",
            message,
            &[Edit::Write {
                path: "moorline.kdl".to_owned(),
                contents: text.to_owned(),
            }],
        )?;
        if self.head("production")? == before {
            let commit = repo
                .find_commit(git2::Oid::from_str(&sha).map_err(git("read the new commit id"))?)
                .map_err(git("read the new commit"))?;
            repo.branch("production", &commit, true)
                .map_err(git("move branch production"))?;
        }
        Ok(sha)
    }

    /// The root directory of environment `env` (`root/env`).
    pub fn env_root(&self, env: &str) -> PathBuf {
        self.root.join(env)
    }

    pub(crate) fn open(&self) -> Result<Repository, FixtureError> {
        Repository::open(&self.repo).map_err(git("open the repository"))
    }

    /// The text of `moorline.kdl`.
    fn config_text(&self) -> Result<String, FixtureError> {
        let py = kdl_string(utf8(&self.python)?);
        let tool = kdl_string(utf8(&self.backup_tool)?);
        let mut out = String::new();
        out.push_str(
            "project \"pakashop\" {\n    unit-name \"pakashop-{service}.service\"\n    keep-releases 5\n}\n",
        );
        for (env, branch) in [("staging", "main"), ("production", "production")] {
            let root = kdl_string(utf8(&self.env_root(env))?);
            let _ = write!(
                out,
                "environment \"{env}\" {{\n    branch \"{branch}\"\n    root {root}\n"
            );
            if env == "production" {
                let _ = write!(
                    out,
                    "    backup {{\n        run {py} {tool} \"dump\" \"{{root}}\" \"{{backup}}\"\n        \
                     restore {py} {tool} \"restore\" \"{{root}}\" \"{{backup}}\"\n        keep 30\n    }}\n"
                );
            }
            out.push_str("}\n");
        }
        for phase in PHASES {
            let _ = writeln!(out, "phase \"{phase}\"");
        }
        for (runtime, build_args, migrate, env) in [
            ("node", "", true, "NODE_ENV=\"production\""),
            ("go", " \"{service}\"", false, "GOMAXPROCS=\"1\""),
            ("python", "", false, "PYTHONUNBUFFERED=\"1\""),
        ] {
            let _ = writeln!(out, "runtime \"{runtime}\" {{");
            let _ = writeln!(out, "    build {py} \"build.py\"{build_args}");
            if migrate {
                let _ = writeln!(
                    out,
                    "    migrate {py} \"migrate.py\" \"{{root}}\" if-exists=\"prisma/schema.prisma\""
                );
            }
            let _ = write!(
                out,
                "    unit {{\n        exec {py} \"{{current}}/server.py\"\n        \
                 env PORT=\"{{port}}\" {env}\n        restart \"on-failure\"\n    }}\n}}\n"
            );
        }
        let width = self
            .services
            .iter()
            .map(|s| kdl_string(&s.name).len())
            .max()
            .unwrap_or(0);
        for s in &self.services {
            let name = kdl_string(&s.name);
            let _ = write!(
                out,
                "service {name:<width$} {{ runtime {}; port {}; phase {}",
                kdl_string(&s.runtime),
                s.port,
                kdl_string(&s.phase)
            );
            if !s.depends_on.is_empty() {
                out.push_str("; depends-on");
                for d in &s.depends_on {
                    let _ = write!(out, " {}", kdl_string(d));
                }
            }
            if !s.watch.is_empty() {
                out.push_str("; watch");
                for w in &s.watch {
                    let _ = write!(out, " {}", kdl_string(w));
                }
            }
            out.push_str(" }\n");
        }
        Ok(out)
    }
}

/// The real Pakashop fleet: (name, port, runtime, phase, depends-on).
const PAKASHOP: [(&str, u16, &str, &str, Option<&str>); 19] = [
    ("config", 3085, "node", "config", None),
    ("gateway", 8000, "node", "gateway", Some("config")),
    ("backend", 3080, "node", "core", Some("gateway")),
    ("search", 3005, "go", "core", None),
    ("analytics", 3007, "go", "core", None),
    ("notifications", 3090, "node", "supporting", None),
    ("tracking", 3120, "node", "supporting", None),
    ("moderation", 3110, "python", "supporting", None),
    ("recommendations", 3100, "python", "supporting", None),
    ("scheduler", 3004, "node", "supporting", None),
    ("fraud", 3006, "node", "supporting", None),
    ("coupon", 3008, "node", "supporting", None),
    ("loyalty", 3010, "node", "supporting", None),
    ("whatsapp", 3009, "node", "supporting", None),
    ("reports", 3011, "node", "supporting", None),
    ("reconciliation", 3012, "node", "supporting", None),
    ("invoicing", 3013, "node", "supporting", None),
    ("pricing", 3014, "node", "supporting", None),
    ("settlement", 3016, "node", "supporting", None),
];

/// Services that watch `packages/shared` in the real fleet.
const SHARED_WATCHERS: [&str; 3] = ["gateway", "backend", "notifications"];

pub(crate) const SHARED: &str = "packages/shared";

fn fleet(opts: &FixtureOptions) -> Result<Vec<FixtureService>, FixtureError> {
    #[cfg(feature = "testkit")]
    if let Some(count) = opts.services {
        return crate::testkit::fixture::generated_fleet(count, opts.port_base);
    }
    PAKASHOP
        .into_iter()
        .enumerate()
        .map(|(i, (name, port, runtime, phase, dep))| {
            Ok(FixtureService {
                name: name.to_owned(),
                port: match opts.port_base {
                    None => port,
                    Some(base) => nth_port(base, i, PAKASHOP.len())?,
                },
                phase: phase.to_owned(),
                runtime: runtime.to_owned(),
                depends_on: dep.into_iter().map(str::to_owned).collect(),
                watch: if SHARED_WATCHERS.contains(&name) {
                    vec![SHARED.to_owned()]
                } else {
                    Vec::new()
                },
                prisma: name == "backend",
            })
        })
        .collect()
}

/// The port of service `i` (0-based) of a fleet of `count` whose ports start at `base`.
pub(crate) fn nth_port(base: u16, i: usize, count: usize) -> Result<u16, FixtureError> {
    u16::try_from(i)
        .ok()
        .and_then(|i| base.checked_add(i))
        .ok_or(FixtureError::PortOverflow { base, count })
}

fn default_behaviour() -> String {
    "{\n  \"crash\": false,\n  \"fail_build\": false,\n  \"fail_migration\": false,\n  \"ready\": true\n}\n"
        .to_owned()
}

/// The name of a service's first migration: `0001_init` in the real fleet,
/// made unique per service in generated ones (they share one ledger).
fn first_migration(service: &FixtureService) -> String {
    if service.name.starts_with("svc-") {
        format!("0001_init_{}", service.name.replace('-', "_"))
    } else {
        "0001_init".to_owned()
    }
}

/// Every file of the initial commit except `moorline.kdl`.
fn repository_files(services: &[FixtureService]) -> Vec<(String, String)> {
    let mut files = vec![
        (
            "README.md".to_owned(),
            "# Pakashop (moorline fixture)\n\nGenerated by `moorline::fixture`; every service is a \
             small Python stand-in.\n"
                .to_owned(),
        ),
        (
            format!("{SHARED}/package.json"),
            "{\n  \"name\": \"@pakashop/shared\",\n  \"version\": \"1.0.0\",\n  \"main\": \"index.js\"\n}\n"
                .to_owned(),
        ),
        (
            format!("{SHARED}/index.js"),
            "module.exports = { currency: 'PKR', version: 1 };\n".to_owned(),
        ),
        ("deploy/nginx/pakashop.conf".to_owned(), nginx_conf(services)),
    ];
    for s in services {
        let dir = s.dir();
        let name = &s.name;
        let markers: &[&str] = match s.runtime.as_str() {
            "go" => &["go.mod", "src/main.go"],
            "python" => &["requirements.txt"],
            _ => &["package.json", "package-lock.json"],
        };
        files.push((format!("{dir}/server.py"), scripts::server_py(name)));
        files.push((
            format!("{dir}/build.py"),
            scripts::build_py(name, &s.runtime, markers),
        ));
        files.push((format!("{dir}/behaviour.json"), default_behaviour()));
        files.push((format!("{dir}/VERSION"), "1\n".to_owned()));
        match s.runtime.as_str() {
            "go" => {
                files.push((
                    format!("{dir}/go.mod"),
                    format!("module pakashop.store/{name}\n\ngo 1.22\n"),
                ));
                files.push((
                    format!("{dir}/src/main.go"),
                    format!("package main\n\n// pakashop-{name}: the fixture runs server.py instead.\nfunc main() {{}}\n"),
                ));
            }
            "python" => {
                files.push((
                    format!("{dir}/requirements.txt"),
                    "# standard library only\n".to_owned(),
                ));
            }
            _ => {
                let shared = if s.watch.iter().any(|w| w == SHARED) {
                    ",\n  \"dependencies\": { \"@pakashop/shared\": \"file:../../packages/shared\" }"
                } else {
                    ""
                };
                files.push((
                    format!("{dir}/package.json"),
                    format!(
                        "{{\n  \"name\": \"@pakashop/{name}\",\n  \"version\": \"1.0.0\",\n  \"private\": true{shared}\n}}\n"
                    ),
                ));
                files.push((
                    format!("{dir}/package-lock.json"),
                    format!(
                        "{{\n  \"name\": \"@pakashop/{name}\",\n  \"version\": \"1.0.0\",\n  \"lockfileVersion\": 3,\n  \"requires\": true,\n  \"packages\": {{}}\n}}\n"
                    ),
                ));
            }
        }
        if s.prisma {
            let first = first_migration(s);
            files.push((format!("{dir}/migrate.py"), scripts::migrate_py(name)));
            files.push((
                format!("{dir}/prisma/schema.prisma"),
                "datasource db {\n  provider = \"postgresql\"\n  url      = env(\"DATABASE_URL\")\n}\n\n\
                 model Order {\n  id Int @id @default(autoincrement())\n}\n"
                    .to_owned(),
            ));
            files.push((
                format!("{dir}/prisma/migrations/{first}/migration.sql"),
                "CREATE TABLE \"Order\" (id SERIAL PRIMARY KEY);\n".to_owned(),
            ));
        }
    }
    files
}

fn nginx_conf(services: &[FixtureService]) -> String {
    let mut out = String::from("# Pakashop reverse proxy (moorline fixture)\n");
    for s in services {
        let _ = writeln!(
            out,
            "upstream pakashop_{} {{ server 127.0.0.1:{}; }}",
            s.name.replace('-', "_"),
            s.port
        );
    }
    out.push_str("server {\n    listen 127.0.0.1:8080;\n");
    for s in services {
        let _ = writeln!(
            out,
            "    location /{}/ {{ proxy_pass http://pakashop_{}/; }}",
            s.name,
            s.name.replace('-', "_")
        );
    }
    out.push_str("}\n");
    out
}

fn apply_edit(repo: &Repository, index: &mut git2::Index, edit: &Edit) -> Result<(), FixtureError> {
    match edit {
        Edit::Write { path, contents } => put(repo, index, path, contents.as_bytes()),
        #[cfg(feature = "testkit")]
        Edit::Delete { path } => crate::testkit::fixture::delete(index, path),
        #[cfg(feature = "testkit")]
        Edit::Rename { from, to } => crate::testkit::fixture::rename(index, from, to),
        Edit::Bump { path } => {
            let current = read(repo, index, path)?.unwrap_or_default();
            let n: u64 = if current.trim().is_empty() {
                0
            } else {
                current
                    .trim()
                    .parse()
                    .map_err(|_| FixtureError::BadContents {
                        path: path.clone(),
                        expected: "a number",
                    })?
            };
            put(repo, index, path, format!("{}\n", n + 1).as_bytes())
        }
        Edit::Behaviour {
            service,
            key,
            value,
        } => {
            let path = format!("services/{service}/behaviour.json");
            let text = read(repo, index, &path)?
                .ok_or_else(|| FixtureError::MissingPath { path: path.clone() })?;
            let bad = || FixtureError::BadContents {
                path: path.clone(),
                expected: "a JSON object",
            };
            let mut object: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&text).map_err(|_| bad())?;
            object.insert(key.clone(), value.clone());
            let mut json = serde_json::to_string_pretty(&object).map_err(|_| bad())?;
            json.push('\n');
            put(repo, index, &path, json.as_bytes())
        }
    }
}

fn read(
    repo: &Repository,
    index: &git2::Index,
    path: &str,
) -> Result<Option<String>, FixtureError> {
    let Some(entry) = index.get_path(Path::new(path), 0) else {
        return Ok(None);
    };
    let blob = repo
        .find_blob(entry.id)
        .map_err(git(format!("read {path}")))?;
    String::from_utf8(blob.content().to_vec())
        .map(Some)
        .map_err(|_| FixtureError::BadContents {
            path: path.to_owned(),
            expected: "UTF-8 text",
        })
}

/// Stage `data` at `path`, keeping the mode of the file it replaces (a new file is 0644).
fn put(
    repo: &Repository,
    index: &mut git2::Index,
    path: &str,
    data: &[u8],
) -> Result<(), FixtureError> {
    let id: Oid = repo.blob(data).map_err(git(format!("store {path}")))?;
    let mode = index
        .get_path(Path::new(path), 0)
        .map_or(0o100_644, |e| e.mode);
    let entry = IndexEntry {
        ctime: IndexTime::new(0, 0),
        mtime: IndexTime::new(0, 0),
        dev: 0,
        ino: 0,
        mode,
        uid: 0,
        gid: 0,
        file_size: u32::try_from(data.len()).unwrap_or(u32::MAX),
        id,
        flags: 0,
        flags_extended: 0,
        path: path.as_bytes().to_vec(),
    };
    index.add(&entry).map_err(git(format!("stage {path}")))
}

fn tip<'r>(repo: &'r Repository, branch: &str) -> Result<git2::Commit<'r>, FixtureError> {
    let b = repo
        .find_branch(branch, BranchType::Local)
        .map_err(|_| FixtureError::NoBranch(branch.to_owned()))?;
    b.get()
        .peel_to_commit()
        .map_err(git(format!("read the tip of {branch}")))
}

fn signature(seconds: i64) -> Result<Signature<'static>, FixtureError> {
    Signature::new(AUTHOR.0, AUTHOR.1, &Time::new(seconds, 0)).map_err(git("make a signature"))
}

fn utf8(path: &Path) -> Result<&str, FixtureError> {
    path.to_str()
        .ok_or_else(|| FixtureError::NonUtf8Path(path.to_path_buf()))
}

fn write_file(path: &Path, contents: &str) -> Result<(), FixtureError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io("create", parent))?;
    }
    std::fs::write(path, contents).map_err(io("write", path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::deadline;
    use crate::testkit::fixture::GENERATED_PORT_BASE;
    use std::collections::BTreeSet;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream;
    use std::process::{Child, Command, Stdio};

    const PYTHON: &str = "/usr/bin/python3";

    fn opts(dir: &Path) -> FixtureOptions {
        FixtureOptions::new(dir.join("envs"))
    }

    fn create(opts_fn: impl FnOnce(&Path) -> FixtureOptions) -> (tempfile::TempDir, Fixture) {
        let tmp = tempfile::tempdir().unwrap();
        let fx = Fixture::create(tmp.path(), &opts_fn(tmp.path())).unwrap();
        (tmp, fx)
    }

    /// Paths changed between two commits, as (status, old, new).
    fn changes(
        fx: &Fixture,
        from: &str,
        to: &str,
        renames: bool,
    ) -> Vec<(git2::Delta, String, String)> {
        let repo = fx.open().unwrap();
        let tree = |sha: &str| {
            repo.find_commit(Oid::from_str(sha).unwrap())
                .unwrap()
                .tree()
                .unwrap()
        };
        let (a, b) = (tree(from), tree(to));
        let mut diff = repo.diff_tree_to_tree(Some(&a), Some(&b), None).unwrap();
        if renames {
            diff.find_similar(Some(git2::DiffFindOptions::new().renames(true)))
                .unwrap();
        }
        diff.deltas()
            .map(|d| {
                let p = |f: git2::DiffFile<'_>| {
                    f.path()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                };
                (d.status(), p(d.old_file()), p(d.new_file()))
            })
            .collect()
    }

    /// Export `services/{service}` at `rev` into `dest`, as moorline's release step would.
    fn export(fx: &Fixture, rev: &str, service: &str, dest: &Path) {
        let repo = fx.open().unwrap();
        let tree = repo.revparse_single(rev).unwrap().peel_to_tree().unwrap();
        let sub = tree
            .get_path(Path::new(&format!("services/{service}")))
            .unwrap();
        let sub = repo.find_tree(sub.id()).unwrap();
        sub.walk(git2::TreeWalkMode::PreOrder, |prefix, entry| {
            if entry.kind() == Some(git2::ObjectType::Blob) {
                let path = dest.join(prefix).join(entry.name().unwrap());
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                let blob = repo.find_blob(entry.id()).unwrap();
                std::fs::write(path, blob.content()).unwrap();
            }
            git2::TreeWalkResult::Ok
        })
        .unwrap();
    }

    fn python(dir: &Path, args: &[&str]) -> std::process::Output {
        Command::new(PYTHON)
            .args(args)
            .current_dir(dir)
            .env_remove("MOORLINE_ROOT")
            .output()
            .unwrap()
    }

    struct Server(Child, u16);

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Start `server.py` in `dir` on a port the kernel picks (PORT=0).
    fn serve(dir: &Path) -> Server {
        let mut child = Command::new(PYTHON)
            .arg(dir.join("server.py"))
            .env("PORT", "0")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().rsplit(':').next().unwrap().parse().unwrap();
        Server(child, port)
    }

    fn get(port: u16, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        let status = response.split(' ').nth(1).unwrap().parse().unwrap();
        let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        (status, body)
    }

    #[test]
    fn create_makes_both_branches_at_one_commit_with_a_parseable_config() {
        let (_tmp, fx) = create(opts);
        let main = fx.head("main").unwrap();
        assert_eq!(fx.head("production").unwrap(), main);
        assert!(matches!(fx.head("nope"), Err(FixtureError::NoBranch(_))));
        assert_eq!(fx.config_path, fx.repo.join("moorline.kdl"));
        let repo = fx.open().unwrap();
        assert!(
            repo.statuses(None).unwrap().is_empty(),
            "working tree clean"
        );
        let committed = repo
            .revparse_single("main:moorline.kdl")
            .unwrap()
            .peel_to_blob()
            .unwrap();
        let text = std::fs::read_to_string(&fx.config_path).unwrap();
        assert_eq!(committed.content(), text.as_bytes());

        let doc = kdl::KdlDocument::parse_v2(&text).unwrap();
        let count = |name: &str| {
            doc.nodes()
                .iter()
                .filter(|n| n.name().value() == name)
                .count()
        };
        assert_eq!(count("service"), 19);
        assert_eq!(count("phase"), 5);
        assert_eq!(count("runtime"), 3);
        assert_eq!(count("proxy"), 0);
        assert!(text.contains("service \"backend\"         { runtime \"node\"; port 3080; phase \"core\"; depends-on \"gateway\"; watch \"packages/shared\" }"), "{text}");
        assert!(text.contains(&format!("root \"{}\"", fx.env_root("production").display())));
        assert!(fx.backup_tool.is_file());

        let ports: Vec<u16> = fx.services.iter().map(|s| s.port).collect();
        assert_eq!(ports[..3], [3085, 8000, 3080]);
        assert!(
            fx.repo
                .join("services/backend/prisma/migrations/0001_init/migration.sql")
                .is_file()
        );
        assert!(fx.repo.join("services/search/src/main.go").is_file());
        assert!(
            fx.repo
                .join("services/moderation/requirements.txt")
                .is_file()
        );
        assert!(fx.repo.join("services/coupon/package-lock.json").is_file());
        assert!(fx.repo.join("packages/shared/index.js").is_file());
        assert!(fx.repo.join("deploy/nginx/pakashop.conf").is_file());
    }

    #[test]
    fn same_directory_and_edits_give_the_same_shas() {
        let tmp = tempfile::tempdir().unwrap();
        let mut shas = Vec::new();
        for _ in 0..2 {
            let _ = std::fs::remove_dir_all(tmp.path().join("repo"));
            let fx = Fixture::create(tmp.path(), &opts(tmp.path())).unwrap();
            let c = fx
                .commit("main", "touch", &[Edit::touch_service("fraud")])
                .unwrap();
            shas.push((fx.head("production").unwrap(), c));
        }
        assert_eq!(shas[0], shas[1]);
    }

    #[test]
    fn port_base_generated_fleet_and_proxy() {
        let (_tmp, fx) = create(|d| FixtureOptions {
            port_base: Some(41000),
            ..opts(d)
        });
        assert!(
            fx.services
                .iter()
                .enumerate()
                .all(|(i, s)| usize::from(s.port) == 41000 + i)
        );

        let (_tmp, fx) = create(|d| FixtureOptions {
            services: Some(12),
            proxy: Some(vec!["/bin/true".into(), "-t".into()]),
            ..opts(d)
        });
        assert_eq!(fx.services.len(), 12);
        assert_eq!(fx.services[0].name, "svc-0001");
        assert_eq!(fx.services[0].port, GENERATED_PORT_BASE);
        let phases: BTreeSet<_> = fx.services.iter().map(|s| s.phase.as_str()).collect();
        assert_eq!(
            phases,
            BTreeSet::from(["config", "core", "gateway", "supporting"])
        );
        let text = std::fs::read_to_string(&fx.config_path).unwrap();
        let doc = kdl::KdlDocument::parse_v2(&text).unwrap();
        assert_eq!(
            doc.nodes()
                .iter()
                .filter(|n| n.name().value() == "service")
                .count(),
            12
        );
        assert!(text.contains(
            "proxy \"nginx\" { unit \"fixture-proxy.service\"; check \"/bin/true\" \"-t\"; watch \"deploy/nginx\" }"
        ));
        for s in fx.services.iter().filter(|s| s.prisma) {
            assert!(fx.repo.join(s.dir()).join("prisma/schema.prisma").is_file());
        }

        let tmp = tempfile::tempdir().unwrap();
        let too_many = FixtureOptions {
            port_base: Some(65530),
            ..opts(tmp.path())
        };
        assert!(matches!(
            Fixture::create(tmp.path(), &too_many),
            Err(FixtureError::PortOverflow { .. })
        ));
    }

    #[test]
    fn commit_changes_exactly_the_edited_paths() {
        let (_tmp, fx) = create(opts);
        let before = fx.head("main").unwrap();
        let after = fx
            .commit(
                "main",
                "several edits",
                &[
                    Edit::touch_service("search"),
                    Edit::add_migration("backend", "0002_coupons"),
                    Edit::break_readiness("pricing"),
                    Edit::fail_build("pricing"),
                    Edit::Delete {
                        path: "services/tracking/VERSION".into(),
                    },
                    Edit::Write {
                        path: "packages/shared/index.js".into(),
                        contents: "module.exports = {};\n".into(),
                    },
                ],
            )
            .unwrap();
        assert_ne!(before, after);
        assert_eq!(fx.head("main").unwrap(), after);
        assert_eq!(
            fx.head("production").unwrap(),
            before,
            "other branches stay"
        );

        let repo = fx.open().unwrap();
        let commit = repo.find_commit(Oid::from_str(&after).unwrap()).unwrap();
        assert_eq!(
            commit
                .parent_ids()
                .map(|p| p.to_string())
                .collect::<Vec<_>>(),
            std::slice::from_ref(&before)
        );
        assert_eq!(commit.message().unwrap(), "several edits");

        let changed: BTreeSet<_> = changes(&fx, &before, &after, false)
            .into_iter()
            .map(|(status, old, new)| {
                (
                    format!("{status:?}"),
                    if new.is_empty() { old } else { new },
                )
            })
            .collect();
        let expected = BTreeSet::from([
            ("Modified".to_owned(), "services/search/VERSION".to_owned()),
            (
                "Added".to_owned(),
                "services/backend/prisma/migrations/0002_coupons/migration.sql".to_owned(),
            ),
            (
                "Modified".to_owned(),
                "services/pricing/behaviour.json".to_owned(),
            ),
            ("Deleted".to_owned(), "services/tracking/VERSION".to_owned()),
            ("Modified".to_owned(), "packages/shared/index.js".to_owned()),
        ]);
        assert_eq!(changed, expected);

        // main is checked out, so the working tree follows.
        assert_eq!(
            std::fs::read_to_string(fx.repo.join("services/search/VERSION")).unwrap(),
            "2\n"
        );
        let behaviour: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fx.repo.join("services/pricing/behaviour.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(behaviour["ready"], false);
        assert_eq!(behaviour["fail_build"], true);
        assert_eq!(behaviour["crash"], false);
        assert!(
            repo.statuses(None).unwrap().is_empty(),
            "working tree clean"
        );

        // A branch that is not checked out moves without touching the tree.
        let p = fx
            .commit("production", "hotfix", &[Edit::touch_service("search")])
            .unwrap();
        assert_eq!(fx.head("production").unwrap(), p);
        assert_eq!(
            std::fs::read_to_string(fx.repo.join("services/search/VERSION")).unwrap(),
            "2\n"
        );

        assert!(matches!(
            fx.commit(
                "main",
                "x",
                &[Edit::Delete {
                    path: "no/such".into()
                }]
            ),
            Err(FixtureError::MissingPath { .. })
        ));
        assert_eq!(
            fx.head("main").unwrap(),
            after,
            "a failed commit moves nothing"
        );
    }

    #[test]
    fn rename_is_seen_as_a_rename_and_branch_from_works() {
        let (_tmp, fx) = create(opts);
        fx.branch_from("feature", "main").unwrap();
        let before = fx.head("feature").unwrap();
        let after = fx
            .commit(
                "feature",
                "move server",
                &[Edit::Rename {
                    from: "services/coupon/server.py".into(),
                    to: "services/coupon/app.py".into(),
                }],
            )
            .unwrap();
        assert_eq!(
            changes(&fx, &before, &after, true),
            [(
                git2::Delta::Renamed,
                "services/coupon/server.py".to_owned(),
                "services/coupon/app.py".to_owned()
            )]
        );
        // A directory moves with everything in it.
        let dir = fx
            .commit(
                "feature",
                "move shared",
                &[Edit::Rename {
                    from: "packages/shared".into(),
                    to: "packages/common".into(),
                }],
            )
            .unwrap();
        let moved = changes(&fx, &after, &dir, true);
        assert_eq!(moved.len(), 2);
        assert!(moved.iter().all(|(s, o, n)| *s == git2::Delta::Renamed
            && o.starts_with("packages/shared/")
            && n.starts_with("packages/common/")));
        fx.branch_from("old", &before).unwrap();
        assert_eq!(fx.head("old").unwrap(), before);
        assert_eq!(fx.head("main").unwrap(), before);
    }

    #[test]
    fn server_answers_health_and_honours_behaviour() {
        let (tmp, fx) = create(opts);
        let healthy = fx.head("main").unwrap();
        let broken = fx
            .commit(
                "main",
                "break",
                &[
                    Edit::break_readiness("backend"),
                    Edit::crash_on_start("coupon"),
                ],
            )
            .unwrap();

        let good = tmp.path().join("good");
        export(&fx, &healthy, "backend", &good);
        let started = std::time::Instant::now();
        let server = serve(&good);
        assert!(started.elapsed() < deadline::prompt());
        let (status, body) = get(server.1, "/health");
        assert_eq!(status, 200);
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"status": "ok", "service": "pakashop-backend"})
        );
        assert_eq!(
            get(server.1, "/health/ready"),
            (200, r#"{"status": "ready"}"#.to_owned())
        );
        let (status, metrics) = get(server.1, "/health/metrics");
        assert_eq!(status, 200);
        assert!(
            metrics.contains("pakashop_up{service=\"backend\"} 1"),
            "{metrics}"
        );
        assert_eq!(get(server.1, "/nope").0, 404);
        drop(server);

        let bad = tmp.path().join("bad");
        export(&fx, &broken, "backend", &bad);
        let server = serve(&bad);
        assert_eq!(get(server.1, "/health").0, 200);
        assert_eq!(get(server.1, "/health/ready").0, 503);
        assert_eq!(get(server.1, "/health/ready").0, 503);
        drop(server);

        let crash = tmp.path().join("crash");
        export(&fx, &broken, "coupon", &crash);
        let out = Command::new(PYTHON)
            .arg(crash.join("server.py"))
            .env("PORT", "0")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
    }

    #[test]
    fn slow_readiness_turns_ready_and_heal_restores_defaults() {
        let (tmp, fx) = create(opts);
        // Longer than a loaded machine takes to start the server and ask.
        let slow_ms = u64::try_from(deadline::prompt().as_millis()).unwrap();
        let slow = fx
            .commit(
                "main",
                "slow",
                &[
                    Edit::slow_readiness("gateway", slow_ms),
                    Edit::fail_build("gateway"),
                ],
            )
            .unwrap();
        let dir = tmp.path().join("slow");
        export(&fx, &slow, "gateway", &dir);
        let server = serve(&dir);
        assert_eq!(get(server.1, "/health/ready").0, 503);
        let until = std::time::Instant::now() + deadline::wait();
        while get(server.1, "/health/ready").0 != 200 && std::time::Instant::now() < until {
            std::thread::sleep(deadline::POLL);
        }
        assert_eq!(get(server.1, "/health/ready").0, 200);
        drop(server);

        let healed = fx.commit("main", "heal", &[Edit::heal("gateway")]).unwrap();
        let repo = fx.open().unwrap();
        let blob = |rev: &str| {
            repo.revparse_single(&format!("{rev}:services/gateway/behaviour.json"))
                .unwrap()
                .peel_to_blob()
                .unwrap()
                .id()
        };
        let initial = repo
            .find_commit(Oid::from_str(&slow).unwrap())
            .unwrap()
            .parent_id(0)
            .unwrap()
            .to_string();
        assert_eq!(blob(&healed), blob(&initial));
    }

    #[test]
    fn build_script_writes_build_info_and_honours_fail_build() {
        let (tmp, fx) = create(opts);
        let good = fx.head("main").unwrap();
        let bad = fx
            .commit("main", "fail", &[Edit::fail_build("search")])
            .unwrap();

        let dir = tmp.path().join("build-good");
        export(&fx, &good, "search", &dir);
        let started = std::time::Instant::now();
        let out = python(&dir, &["build.py", "search"]);
        assert!(out.status.success(), "{out:?}");
        assert!(started.elapsed() < deadline::prompt());
        let info: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("build-info.json")).unwrap())
                .unwrap();
        assert_eq!(
            info,
            serde_json::json!({"service": "search", "runtime": "go", "version": "1", "args": ["search"]})
        );

        let dir = tmp.path().join("build-bad");
        export(&fx, &bad, "search", &dir);
        let out = python(&dir, &["build.py"]);
        assert_eq!(out.status.code(), Some(1));
        assert!(!dir.join("build-info.json").exists());

        // A missing marker file fails the build too.
        let dir = tmp.path().join("build-marker");
        export(&fx, &good, "coupon", &dir);
        std::fs::remove_file(dir.join("package-lock.json")).unwrap();
        assert_eq!(python(&dir, &["build.py"]).status.code(), Some(1));
    }

    #[test]
    fn migrations_are_recorded_once_and_fail_migration_records_nothing() {
        let (tmp, fx) = create(opts);
        let root = fx.env_root("staging");
        let root_s = root.to_str().unwrap();
        let ledger = root.join("db/applied-migrations.txt");
        let read_ledger = || std::fs::read_to_string(&ledger).unwrap();

        let first = tmp.path().join("m1");
        export(&fx, "main", "backend", &first);
        for _ in 0..2 {
            let out = python(&first, &["migrate.py", root_s]);
            assert!(out.status.success(), "{out:?}");
        }
        assert_eq!(read_ledger(), "0001_init\n");

        let c = fx
            .commit(
                "main",
                "coupons",
                &[Edit::add_migration("backend", "0002_coupons")],
            )
            .unwrap();
        let second = tmp.path().join("m2");
        export(&fx, &c, "backend", &second);
        let out = Command::new(PYTHON)
            .arg("migrate.py")
            .current_dir(&second)
            .env("MOORLINE_ROOT", root_s)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(read_ledger(), "0001_init\n0002_coupons\n");

        let c = fx
            .commit(
                "main",
                "bad",
                &[
                    Edit::add_migration("backend", "0003_bad"),
                    Edit::fail_migration("backend"),
                ],
            )
            .unwrap();
        let third = tmp.path().join("m3");
        export(&fx, &c, "backend", &third);
        assert_eq!(
            python(&third, &["migrate.py", root_s]).status.code(),
            Some(1)
        );
        assert_eq!(read_ledger(), "0001_init\n0002_coupons\n");
        assert_eq!(
            python(&third, &["migrate.py"]).status.code(),
            Some(2),
            "no root given"
        );
    }

    #[test]
    fn backup_tool_dumps_and_restores_the_database_directory() {
        let (tmp, fx) = create(opts);
        let root = fx.env_root("production");
        std::fs::create_dir_all(root.join("db")).unwrap();
        std::fs::write(root.join("db/applied-migrations.txt"), "0001_init\n").unwrap();
        let archive = tmp.path().join("backups/one.tar.gz");
        let run = |action: &str| {
            Command::new(PYTHON)
                .args([
                    fx.backup_tool.as_os_str(),
                    action.as_ref(),
                    root.as_os_str(),
                    archive.as_os_str(),
                ])
                .output()
                .unwrap()
        };
        assert!(run("dump").status.success());
        std::fs::write(
            root.join("db/applied-migrations.txt"),
            "0001_init\n0002_x\n",
        )
        .unwrap();
        std::fs::write(root.join("db/extra"), "x").unwrap();
        assert!(run("restore").status.success());
        assert_eq!(
            std::fs::read_to_string(root.join("db/applied-migrations.txt")).unwrap(),
            "0001_init\n"
        );
        assert!(!root.join("db/extra").exists());
    }

    #[test]
    fn kdl_strings_are_escaped() {
        for (raw, quoted) in [
            ("plain", r#""plain""#),
            (r#"say "hi""#, r#""say \"hi\"""#),
            (r"C:\dir", r#""C:\\dir""#),
            ("a\nb", r#""a\nb""#),
            ("{root}", r#""{root}""#),
        ] {
            assert_eq!(kdl_string(raw), quoted);
            let doc = kdl::KdlDocument::parse_v2(&format!("n {quoted}")).unwrap();
            assert_eq!(doc.nodes()[0].entries()[0].value().as_string(), Some(raw));
        }
    }
}

//! The artifact builder: builds services at a commit on this machine (a
//! fleet controller, a CI runner) and packs each release into an artifact
//! store. In: the configuration, an environment, the repository, a commit
//! and the services; out: one artifact per service ([`Made`]). The build is
//! the one an apply runs ([`crate::execute::build_release`]: export,
//! dependencies cached or run, the build command), in a private build root
//! ([`build_root`]: releases at `{build root}/{service}/releases/{sha}`,
//! the dependency cache at `{build root}/.moorline-cache/deps`), so that a
//! service built before at the same commit is not built again, and an
//! unchanged lockfile reuses its dependencies. The build root is shared by
//! the project's environments whose builds see the same settings: staging
//! and production then build a commit once, into the very same artifact
//! (its id names the directory it was built in), which is what lets
//! production check it runs what staging ran.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use miette::Diagnostic;
use serde::Serialize;

use crate::artifact::{self, ArtifactError, Built, BuiltDeps, Store};
use crate::config::{Config, Environment, Service};
use crate::release::Paths;

/// Releases kept per service in the build root (the newest; the one just
/// built is always kept).
const KEEP_RELEASES: usize = 3;

/// In a release of the build root: the id of the artifact last made from
/// it (a marker, never packed), so an unchanged release is not packed again.
const PACKED_MARKER: &str = ".moorline-packed";

/// Why artifacts could not be built.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub(crate) enum BuilderError {
    #[error("building {service} at {commit} failed: {error}")]
    #[diagnostic(
        code(moorline::artifact::build),
        help("the build runs here, in {root}; its logs are in {root}/logs")
    )]
    Build {
        service: String,
        commit: String,
        root: String,
        #[source]
        error: Box<crate::execute::ActionError>,
    },
    #[error("{service} at {commit}: its dependency step left no complete cache entry in {root}")]
    #[diagnostic(
        code(moorline::artifact::deps_entry),
        help("remove {root}/.moorline-cache and build again")
    )]
    DepsEntry {
        service: String,
        commit: String,
        root: String,
    },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Artifact(#[from] ArtifactError),
    #[error("no service `{name}` in the configuration")]
    #[diagnostic(code(moorline::artifact::unknown_service), help("services: {known}"))]
    UnknownService { name: String, known: String },
    #[error("{service} builds on each host (`build-on \"host\"`): it has no artifact")]
    #[diagnostic(
        code(moorline::artifact::build_on_host),
        help("leave it out of --service; its hosts build it when they apply")
    )]
    BuildsOnHost { service: String },
    #[error(
        "the artifact of {service} built again here is {built}, not the planned {planned}: the plan cannot be applied as reviewed"
    )]
    #[diagnostic(
        code(moorline::artifact::not_as_planned),
        help(
            "this controller's artifact store lacks the planned artifact, and its build is not reproducible here (or the plan was made elsewhere); plan again and review the new plan"
        )
    )]
    NotAsPlanned {
        service: String,
        planned: String,
        built: String,
    },
    #[error("{what}: {source}")]
    #[diagnostic(
        code(moorline::artifact::io),
        help("check free space and permissions there")
    )]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Lock(#[from] crate::lock::LockError),
}

/// One artifact made (or found made).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Made {
    pub(crate) service: String,
    pub(crate) commit: String,
    /// `sha256:...`
    pub(crate) id: String,
    /// The sum of its packs' sizes, in bytes.
    pub(crate) size: u64,
    /// The files of its `app` pack.
    pub(crate) files: usize,
    /// Whether the release was built now (false: the build root had it).
    pub(crate) built: bool,
}

/// Where artifacts are built and kept.
#[derive(Clone)]
pub(crate) struct Builder {
    project: String,
    config: Config,
    /// The environment built for, its `root` the build root.
    env: Environment,
    repo_dir: PathBuf,
    store: Store,
}

/// The build root of environment `env` whose state directory is
/// `state_dir`: `.moorline-build/{settings}` beside the environments'
/// state directories (`{state}/../.moorline-build/...`), `settings` a hash
/// of what a build of the environment sees besides the commit (its `env`
/// values, `pass-env` names, port offset; not its `env-file`s, which are
/// the hosts' files and are not read where artifacts are built).
/// Environments whose builds see the same settings share it.
pub(crate) fn build_root(state_dir: &Path, env: &Environment) -> PathBuf {
    let values: std::collections::BTreeMap<&String, &String> =
        env.env.iter().map(|(k, v)| (k, &v.value)).collect();
    let settings = serde_json::json!({
        "env": values,
        "pass_env": env.pass_env,
        "port_offset": env.port_offset,
    });
    let hash = crate::files::sha256_hex(settings.to_string().as_bytes());
    state_dir
        .parent()
        .unwrap_or(state_dir)
        .join(".moorline-build")
        .join(hash.get(..16).unwrap_or(&hash))
}

/// The default store of an environment whose state directory is
/// `state_dir` (`--out` names another).
pub(crate) fn default_store(state_dir: &Path) -> PathBuf {
    state_dir.join("artifacts")
}

impl Builder {
    /// Builds for `env` of `config` from the repository `repo_dir`, in the
    /// build root under `state_dir`, into `store`.
    pub(crate) fn new(
        config: &Config,
        env: &Environment,
        repo_dir: &Path,
        state_dir: &Path,
        store: Store,
    ) -> Self {
        let mut env = env.clone();
        env.root = build_root(state_dir, &env).display().to_string();
        // An environment's env-files are its hosts' (secrets, settings read
        // when the services run), not this machine's.
        env.env_files.clear();
        Self {
            project: config.project.name.clone(),
            config: config.clone(),
            env,
            repo_dir: repo_dir.to_path_buf(),
            store,
        }
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Whether `service` gets an artifact (it exists and does not build
    /// on each host).
    pub(crate) fn builds(&self, service: &str) -> bool {
        self.config
            .service(service)
            .is_some_and(|s| !s.build_on_host)
    }

    /// The services `names` names (every service that does not build on
    /// each host when empty), checked, in the configuration's order.
    pub(crate) fn services(&self, names: &[String]) -> Result<Vec<String>, BuilderError> {
        for n in names {
            match self.config.service(n) {
                None => {
                    return Err(BuilderError::UnknownService {
                        name: n.clone(),
                        known: self
                            .config
                            .services
                            .iter()
                            .map(|s| s.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                }
                Some(s) if s.build_on_host => {
                    return Err(BuilderError::BuildsOnHost { service: n.clone() });
                }
                Some(_) => {}
            }
        }
        Ok(self
            .config
            .services
            .iter()
            .filter(|s| !s.build_on_host && (names.is_empty() || names.contains(&s.name)))
            .map(|s| s.name.clone())
            .collect())
    }

    /// Builds each of `services` at `sha` (one at a time, under the build
    /// root's lock) and makes its artifact; returns them in order.
    pub(crate) async fn build(
        &self,
        sha: &str,
        services: &[String],
    ) -> Result<Vec<Made>, BuilderError> {
        let root = PathBuf::from(&self.env.root);
        crate::files::private_dir(&root).map_err(|source| BuilderError::Io {
            what: format!("creating the build root {}", root.display()),
            source,
        })?;
        let _lock = crate::lock::acquire(&root, "artifact build")?;
        let mut out = Vec::new();
        for name in services {
            let Some(s) = self.config.service(name) else {
                continue;
            };
            out.push(self.one(s, sha).await?);
        }
        Ok(out)
    }

    async fn one(&self, s: &Service, sha: &str) -> Result<Made, BuilderError> {
        let paths = Paths::new(&self.env.root, &s.name);
        let release = paths.release(sha);
        let release_s = release.display().to_string();
        let built = !paths.is_built(sha);
        if built {
            let logs = PathBuf::from(&self.env.root).join("logs");
            let log = |suffix: &str| logs.join(format!("{}{suffix}.log", s.name));
            let rt = self.config.runtime_of(s);
            let current = crate::unit::current_link(&self.env, &s.name);
            let vars = crate::template::Vars {
                service: Some(&s.name),
                port: s.port,
                root: Some(&self.env.root),
                release: Some(&release_s),
                current: Some(&current),
                backup: None,
            };
            let command = rt
                .and_then(|r| r.build.as_ref())
                .map(|c| crate::plan::Command {
                    argv: crate::template::render_all(&c.argv, &vars),
                    timeout_secs: c.timeout.as_secs(),
                });
            crate::execute::build_release(crate::execute::Build {
                config: &self.config,
                env: &self.env,
                repo_dir: &self.repo_dir,
                service: s,
                sha,
                release: &release_s,
                command: command.as_ref(),
                log: log("-build"),
                deps_log: log("-deps"),
                version_log: log("-deps-version"),
            })
            .await
            .map_err(|error| BuilderError::Build {
                service: s.name.clone(),
                commit: sha.to_owned(),
                root: self.env.root.clone(),
                error: Box::new(error),
            })?;
        }
        let outputs = self
            .config
            .runtime_of(s)
            .and_then(|r| r.deps.as_ref())
            .map(|d| d.outputs.clone());
        let (project, service, commit, root) = (
            self.project.clone(),
            s.name.clone(),
            sha.to_owned(),
            self.env.root.clone(),
        );
        let store = self.store.clone();
        let made = tokio::task::spawn_blocking(move || {
            pack(
                &store,
                &project,
                &service,
                &commit,
                &root,
                outputs.as_deref(),
            )
        })
        .await
        .map_err(|e| BuilderError::Io {
            what: "packing".to_owned(),
            source: std::io::Error::other(e.to_string()),
        })??;
        // Old releases of the build root go (and the cache entries only
        // they used): a build root holds a few releases per service.
        let keep = sha.to_owned();
        let root = self.env.root.clone();
        let _ = tokio::task::spawn_blocking(move || {
            crate::release::prune(&paths, KEEP_RELEASES, &[keep.as_str()]);
            crate::deps::collect_garbage(&root);
        })
        .await;
        Ok(Made { built, ..made })
    }

    /// Makes sure the store holds each artifact `planned` names (service →
    /// id) at `sha`: what it lacks is built again here, and refused unless
    /// it comes out as the very artifact planned.
    pub(crate) async fn ensure(
        &self,
        sha: &str,
        planned: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), BuilderError> {
        let lacking: Vec<String> = planned
            .iter()
            .filter(|(_, id)| {
                self.store
                    .manifest(id)
                    .map_or(true, |m| !self.store.missing(id, &m.packs()).is_empty())
            })
            .map(|(s, _)| s.clone())
            .collect();
        if lacking.is_empty() {
            return Ok(());
        }
        for m in self.build(sha, &lacking).await? {
            let planned = &planned[&m.service];
            if &m.id != planned {
                return Err(BuilderError::NotAsPlanned {
                    service: m.service,
                    planned: planned.clone(),
                    built: m.id,
                });
            }
        }
        Ok(())
    }
}

/// Packs the built release of `service` at `commit` under `root` (with its
/// dependency-cache entry when `outputs` is given) into `store`, unless the
/// release's marker names an artifact the store holds whole.
fn pack(
    store: &Store,
    project: &str,
    service: &str,
    commit: &str,
    root: &str,
    outputs: Option<&[String]>,
) -> Result<Made, BuilderError> {
    let release = Paths::new(root, service).release(commit);
    let marker = release.join(PACKED_MARKER);
    let made = |id: String, m: &artifact::Manifest| Made {
        service: service.to_owned(),
        commit: commit.to_owned(),
        size: m.size(),
        files: m.files.len(),
        id,
        built: false,
    };
    if let Ok(text) = std::fs::read_to_string(&marker) {
        let id = text.trim().to_owned();
        if let Ok(m) = store.manifest(&id)
            && store.missing(&id, &m.packs()).is_empty()
        {
            return Ok(made(id, &m));
        }
    }
    let used =
        match outputs {
            Some(_) => Some(crate::deps::used_by(root, &release).ok_or_else(|| {
                BuilderError::DepsEntry {
                    service: service.to_owned(),
                    commit: commit.to_owned(),
                    root: root.to_owned(),
                }
            })?),
            None => None,
        };
    let deps = match (&used, outputs) {
        (Some(u), Some(outputs)) => Some(BuiltDeps {
            entry: &u.name,
            dir: &u.out,
            origin: &u.origin,
            outputs,
        }),
        _ => None,
    };
    let (id, m) = artifact::make(
        store,
        &Built {
            project,
            service,
            commit,
            release: &release,
            deps,
        },
    )?;
    crate::files::write_atomic(&marker, format!("{id}\n").as_bytes()).map_err(|source| {
        BuilderError::Io {
            what: format!("writing {}", marker.display()),
            source,
        }
    })?;
    Ok(made(id, &m))
}

/// Bytes for people: `512 B`, `3.4 kB`, `12.0 MB`.
pub(crate) fn human_size(bytes: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let b = bytes as f64;
    if bytes < 1000 {
        format!("{bytes} B")
    } else if bytes < 1_000_000 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{:.1} MB", b / 1e6)
    }
}

/// The services whose builds appear in any of `plans` and that get an
/// artifact (`builds`), each once, sorted.
pub(crate) fn built_in<'a>(
    plans: impl IntoIterator<Item = &'a crate::plan::Plan>,
    builds: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut out = BTreeSet::new();
    for p in plans {
        for a in &p.actions {
            if let (crate::plan::Step::Build { .. }, Some(s)) = (&a.step, &a.service)
                && builds(s)
            {
                out.insert(s.clone());
            }
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn environments_whose_builds_see_the_same_settings_share_a_build_root() {
        let c = crate::config::parse(
            "t.kdl",
            r#"project "p"
environment "staging" { branch "main"; root "/srv/s"; env LEVEL="info"; env-file "/etc/p/staging.env" }
environment "production" { branch "prod"; root "/srv/p"; env LEVEL="info"; env-file "/etc/p/production.env" }
environment "debug" { branch "dbg"; root "/srv/d"; env LEVEL="debug" }
phase "core"
runtime "r"
service "s" { runtime "r"; port 4000; phase "core" }
"#,
        )
        .unwrap();
        let env = |n: &str| c.environments.iter().find(|e| e.name == n).unwrap();
        let root = |n: &str| super::build_root(&Path::new("/state/p").join(n), env(n));
        assert_eq!(
            root("staging"),
            root("production"),
            "one build, one artifact"
        );
        assert_ne!(root("staging"), root("debug"), "another env value");
        assert!(root("staging").starts_with("/state/p/.moorline-build/"));
    }

    #[test]
    fn sizes_for_people() {
        assert_eq!(super::human_size(999), "999 B");
        assert_eq!(super::human_size(12_345), "12.3 kB");
        assert_eq!(super::human_size(1_500_000), "1.5 MB");
    }
}

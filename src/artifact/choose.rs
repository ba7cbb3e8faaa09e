//! Which artifacts a host's plan installs instead of building: the ids
//! given (`--artifact SERVICE=ID`, or those a saved or reviewed plan
//! brings), found in this host's store or in a directory of artifacts
//! (`--artifacts DIR`, as `moorline artifact build --out DIR` makes it); and,
//! from that directory, for each service the plan builds, the artifact
//! built from the plan's target commit. Each is checked against the build
//! it replaces (its project, service and commit) before anything changes,
//! every problem at once; the ids go into the plan through
//! [`crate::plan::with_artifacts`]. Before the apply runs, what the host's
//! store lacks is copied from the directory, each file checked against its
//! hash ([`import`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use miette::Diagnostic;

use super::{ArtifactError, Store, hex_of, host_store, short};
use crate::config::Config;
use crate::plan::{Plan, Step};

/// What the command line asks for.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Request<'a> {
    /// `--artifact SERVICE=ID`, as given.
    pub(crate) given: &'a [String],
    /// `--artifacts DIR`.
    pub(crate) dir: Option<&'a Path>,
    /// The artifacts of a saved or reviewed plan (service → id): used
    /// unless `given` names the service.
    pub(crate) planned: Option<&'a BTreeMap<String, String>>,
}

impl Request<'_> {
    /// Whether any artifact is asked for (else the plan builds as always).
    pub(crate) fn is_empty(&self) -> bool {
        self.given.is_empty() && self.dir.is_none() && self.planned.is_none_or(BTreeMap::is_empty)
    }
}

/// One reason an artifact cannot be used.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub(crate) enum Problem {
    #[error("--artifact {given}: not SERVICE=sha256:HEX")]
    #[diagnostic(
        code(moorline::artifact::bad_flag),
        help(
            "give a service and an artifact id as `moorline artifact build` prints it: --artifact api=sha256:3f2a… (64 hex)"
        )
    )]
    BadFlag { given: String },
    #[error("--artifact {service}=…: no service `{service}` in the configuration")]
    #[diagnostic(
        code(moorline::artifact::unknown_service),
        help("name a service of the configuration (`moorline validate` lists how many)")
    )]
    UnknownService { service: String },
    #[error("{service} builds on each host (`build-on \"host\"`): it takes no artifact")]
    #[diagnostic(
        code(moorline::artifact::build_on_host),
        help(
            "drop the artifact of {service}, which this host builds itself; or remove `build-on \"host\"` from the service if a release built elsewhere runs here"
        )
    )]
    BuildOnHost { service: String },
    #[error("artifact {id} of {service} is not in {places}")]
    #[diagnostic(
        code(moorline::artifact::not_found),
        help(
            "give the directory that holds it (--artifacts DIR), or build it (`moorline artifact build --out DIR`)"
        )
    )]
    NotFound {
        service: String,
        id: String,
        places: String,
    },
    #[error("artifact {id} is {found}, not {wanted}")]
    #[diagnostic(
        code(moorline::artifact::mismatch),
        help(
            "an artifact replaces the build of its own service at the plan's target commit; build the right one (`moorline artifact build --env ENV --to {commit}`) or correct --artifact"
        )
    )]
    Mismatch {
        id: String,
        found: String,
        wanted: String,
        commit: String,
    },
    #[error("{dir} holds no artifact of {service} built from {commit}")]
    #[diagnostic(
        code(moorline::artifact::not_in_dir),
        help(
            "build it there (`moorline artifact build --env ENV --to {commit} --service {service} --out DIR`), give it with --artifact {service}=ID, or let each host build the service (`build-on \"host\"`)"
        )
    )]
    NotInDir {
        dir: String,
        service: String,
        commit: String,
    },
    #[error("{dir} holds {count} artifacts of {service} built from {commit}: {ids}")]
    #[diagnostic(
        code(moorline::artifact::ambiguous),
        help("choose one with --artifact {service}=ID")
    )]
    Ambiguous {
        dir: String,
        service: String,
        commit: String,
        count: usize,
        ids: String,
    },
    #[error("--artifacts {dir} is not a directory")]
    #[diagnostic(
        code(moorline::artifact::no_dir),
        help("give the directory `moorline artifact build --out DIR` wrote")
    )]
    NoDir { dir: String },
    #[error("artifact of {service}: {error}")]
    #[diagnostic(code(moorline::artifact::unreadable))]
    Unreadable {
        service: String,
        #[diagnostic_source]
        error: ArtifactError,
    },
}

/// Every problem with the artifacts asked for: what `plan` and `apply`
/// refuse with, before anything changed.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error("the artifacts asked for cannot be used ({count} problem(s)); nothing was changed")]
#[diagnostic(
    code(moorline::artifact::refused),
    help("fix each problem listed, then plan again")
)]
pub(crate) struct Refused {
    pub(crate) count: usize,
    #[related]
    pub(crate) problems: Vec<Problem>,
}

/// `--artifact` or `--artifacts` given to a fleet's controller.
#[derive(Debug, thiserror::Error, Diagnostic)]
#[error(
    "--artifact and --artifacts are for a single host; a fleet's controller builds the artifacts itself"
)]
#[diagnostic(
    code(moorline::artifact::on_controller),
    help(
        "leave them out: the fleet plan builds each service's artifact once here and sends every host only what it lacks (docs/fleet.md)"
    )
)]
pub(crate) struct OnController;

/// Refuses artifacts asked for on a fleet's controller (`given`: the
/// `--artifact` flags, `dir`: `--artifacts`), which would otherwise be
/// ignored.
pub(crate) fn not_on_controller(given: &[String], dir: Option<&Path>) -> Result<(), OnController> {
    if given.is_empty() && dir.is_none() {
        Ok(())
    } else {
        Err(OnController)
    }
}

/// Chooses the artifacts `req` asks for, checks each against the build it
/// replaces in `plan` (planned for the environment whose root is `root`),
/// and puts them into the plan ([`crate::plan::with_artifacts`]). Nothing
/// asked for: the plan is left as it is.
pub(crate) fn choose(
    config: &Config,
    root: &str,
    plan: &mut Plan,
    req: &Request<'_>,
) -> Result<(), Refused> {
    if req.is_empty() {
        return Ok(());
    }
    let mut problems = Vec::new();
    let here = Store::at(host_store(root));
    let dir = req.dir.map(Store::at);
    if let Some(d) = req.dir
        && !d.is_dir()
    {
        problems.push(Problem::NoDir {
            dir: d.display().to_string(),
        });
    }
    let commit = plan.to.sha.clone();
    let project = &config.project.name;
    // Service → id: the plan's, then the flags' (which win).
    let mut ids: BTreeMap<String, String> = req.planned.cloned().unwrap_or_default();
    for given in req.given {
        match given.split_once('=') {
            Some((service, id)) if !service.is_empty() && hex_of(id).is_some() => {
                ids.insert(service.to_owned(), id.to_owned());
            }
            _ => problems.push(Problem::BadFlag {
                given: given.clone(),
            }),
        }
    }
    for (service, id) in &ids {
        let Some(svc) = config.service(service) else {
            problems.push(Problem::UnknownService {
                service: service.clone(),
            });
            continue;
        };
        if svc.build_on_host {
            problems.push(Problem::BuildOnHost {
                service: service.clone(),
            });
            continue;
        }
        let m = match here.manifest(id) {
            Err(ArtifactError::Missing { .. }) => match dir.as_ref().map(|d| d.manifest(id)) {
                Some(Ok(m)) => m,
                None | Some(Err(ArtifactError::Missing { .. })) => {
                    let mut places = here.dir().display().to_string();
                    if let Some(d) = req.dir {
                        places = format!("{places} nor in {}", d.display());
                    }
                    problems.push(Problem::NotFound {
                        service: service.clone(),
                        id: id.clone(),
                        places,
                    });
                    continue;
                }
                Some(Err(error)) => {
                    problems.push(Problem::Unreadable {
                        service: service.clone(),
                        error,
                    });
                    continue;
                }
            },
            Err(error) => {
                problems.push(Problem::Unreadable {
                    service: service.clone(),
                    error,
                });
                continue;
            }
            Ok(m) => m,
        };
        if m.service != *service || m.commit != commit || m.project != *project {
            problems.push(Problem::Mismatch {
                id: short(id).to_owned() + "…",
                found: describe(&m.service, &m.project, &m.commit),
                wanted: describe(service, project, &commit),
                commit: commit.clone(),
            });
        }
    }
    // The directory: an artifact for each service the plan builds that
    // has none yet (services built on each host are left to build).
    if let (Some(store), Some(d)) = (&dir, req.dir)
        && d.is_dir()
    {
        let found = built_from(store, project, &commit);
        for service in built_services(plan) {
            if ids.contains_key(&service)
                || config.service(&service).is_none_or(|s| s.build_on_host)
            {
                continue;
            }
            match found.get(&service).map(|s| s.iter().collect::<Vec<_>>()) {
                Some(v) if v.len() == 1 => {
                    ids.insert(service, v[0].clone());
                }
                Some(v) => problems.push(Problem::Ambiguous {
                    dir: d.display().to_string(),
                    service,
                    commit: commit.clone(),
                    count: v.len(),
                    ids: v.iter().map(|i| i.as_str()).collect::<Vec<_>>().join(", "),
                }),
                None => problems.push(Problem::NotInDir {
                    dir: d.display().to_string(),
                    service,
                    commit: commit.clone(),
                }),
            }
        }
    }
    if !problems.is_empty() {
        return Err(Refused {
            count: problems.len(),
            problems,
        });
    }
    crate::plan::with_artifacts(plan, &ids);
    Ok(())
}

fn describe(service: &str, project: &str, commit: &str) -> String {
    format!(
        "{service} of project {project} at {}",
        crate::plan::short(commit)
    )
}

/// The services whose builds `plan` runs.
fn built_services(plan: &Plan) -> BTreeSet<String> {
    plan.actions
        .iter()
        .filter(|a| matches!(a.step, Step::Build { .. }))
        .filter_map(|a| a.service.clone())
        .collect()
}

/// The artifacts in `store` of `project` built from `commit`, by service.
/// A manifest that does not read as its id is left out.
fn built_from(store: &Store, project: &str, commit: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(store.dir().join("manifests")) else {
        return out;
    };
    for e in rd.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(hex) = name.strip_suffix(".json") else {
            continue;
        };
        let id = format!("sha256:{hex}");
        if let Ok(m) = store.manifest(&id)
            && m.project == project
            && m.commit == commit
        {
            out.entry(m.service.clone()).or_default().insert(id);
        }
    }
    out
}

/// Copies what this host's store (under `root`) lacks of the plan's
/// artifacts from `dir`, each file checked against its hash on the way: a
/// damaged or replaced pack is refused here, before the apply starts and
/// before anything is unpacked. Without `dir`, the store must hold them
/// (the fleet controller sends them).
pub(crate) fn import(root: &str, dir: Option<&Path>, plan: &Plan) -> Result<(), ArtifactError> {
    let here = Store::at(host_store(root));
    for id in plan.inputs.artifacts.values() {
        let m = match (here.manifest(id), dir) {
            (Ok(m), _) => m,
            (Err(ArtifactError::Missing { .. }), Some(d)) => here.import(&Store::at(d), id)?,
            (Err(e), _) => return Err(e),
        };
        let missing = here.missing(id, &m.packs());
        if !missing.is_empty() {
            match dir {
                Some(d) => {
                    here.import(&Store::at(d), id)?;
                }
                None => {
                    return Err(ArtifactError::Missing {
                        id: id.clone(),
                        store: here.dir().display().to_string(),
                    });
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifact::{Built, make};

    const CONFIG: &str = r#"
project "pakashop" { unit-name "p-{service}.service"; }
environment "staging" { branch "main"; root "/srv/p"; }
phase "core"
runtime "node" { build "npm" "run" "build"; }
service "coupon" { runtime "node"; port 1; phase "core"; }
service "native" { runtime "node"; port 2; phase "core"; build-on "host"; }
"#;

    /// A saved plan that builds `coupon`.
    fn plan() -> Plan {
        serde_json::from_str(include_str!("../../plans/staging-one-service.json")).unwrap()
    }

    /// An artifact of `service` at `commit` (its one file holds `body`)
    /// in the store at `dir`.
    fn artifact(dir: &Path, service: &str, commit: &str, body: &str) -> String {
        let release = dir.join("build").join(service).join(commit);
        std::fs::create_dir_all(&release).unwrap();
        std::fs::write(release.join("server.js"), body).unwrap();
        let built = Built {
            project: "pakashop",
            service,
            commit,
            release: &release,
            deps: None,
        };
        make(&Store::at(dir.join("store")), &built).unwrap().0
    }

    fn codes(err: &Refused) -> Vec<String> {
        err.problems
            .iter()
            .map(|p| p.code().map(|c| c.to_string()).unwrap_or_default())
            .collect()
    }

    #[test]
    fn artifacts_are_chosen_from_the_directory_and_checked_against_the_build() {
        let tmp = tempfile::tempdir().unwrap();
        let config = crate::config::parse("p.kdl", CONFIG).unwrap();
        let root = tmp.path().join("root");
        let root = root.to_str().unwrap();
        let mut p = plan();
        let (sha, before) = (p.to.sha.clone(), p.fingerprint.clone());
        choose(&config, root, &mut p, &Request::default()).unwrap();
        assert_eq!(p.fingerprint, before, "nothing asked: nothing changes");

        let id = artifact(tmp.path(), "coupon", &sha, "v1");
        let other = artifact(tmp.path(), "coupon", &"0".repeat(40), "v0");
        let native = artifact(tmp.path(), "native", &sha, "n");
        let dir = tmp.path().join("store");
        let req = Request {
            dir: Some(&dir),
            ..Request::default()
        };
        choose(&config, root, &mut p, &req).unwrap();
        assert_eq!(
            p.inputs.artifacts,
            BTreeMap::from([("coupon".to_owned(), id.clone())]),
            "the one of the plan's commit"
        );
        assert_ne!(p.fingerprint, before);

        // Every problem at once, nothing chosen.
        let mut q = plan();
        let missing = format!("sha256:{}", "e".repeat(64));
        let given = [
            "coupon".to_owned(),
            format!("native={native}"),
            format!("nosuch={id}"),
            format!("coupon={missing}"),
        ];
        let req = Request {
            given: &given,
            dir: Some(&dir),
            planned: None,
        };
        let err = choose(&config, root, &mut q, &req).unwrap_err();
        assert_eq!(
            codes(&err),
            [
                "moorline::artifact::bad_flag",
                "moorline::artifact::not_found",
                "moorline::artifact::build_on_host",
                "moorline::artifact::unknown_service",
            ]
        );
        assert!(q.inputs.artifacts.is_empty());
        // Another commit's artifact; a saved plan's ids, which a flag overrides.
        let wrong = BTreeMap::from([("coupon".to_owned(), other.clone())]);
        let req = Request {
            planned: Some(&wrong),
            dir: Some(&dir),
            ..Request::default()
        };
        let err = choose(&config, root, &mut q, &req).unwrap_err();
        assert_eq!(codes(&err), ["moorline::artifact::mismatch"]);
        assert!(
            err.problems[0]
                .to_string()
                .contains("coupon of project pakashop at 000000000000")
        );
        let right = [format!("coupon={id}")];
        let req = Request {
            given: &right,
            ..req
        };
        choose(&config, root, &mut q, &req).unwrap();
        assert_eq!(q.inputs.artifacts["coupon"], id);

        // Two of the commit in the directory: which one is not guessed.
        let twice = artifact(tmp.path(), "coupon", &sha, "v1 again");
        let mut r = plan();
        let req = Request {
            dir: Some(&dir),
            ..Request::default()
        };
        let err = choose(&config, root, &mut r, &req).unwrap_err();
        assert_eq!(codes(&err), ["moorline::artifact::ambiguous"]);
        assert!(err.problems[0].to_string().contains(&twice));
        let empty = tmp.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        let req = Request {
            dir: Some(&empty),
            ..Request::default()
        };
        let err = choose(&config, root, &mut r, &req).unwrap_err();
        assert_eq!(codes(&err), ["moorline::artifact::not_in_dir"]);
    }

    #[test]
    fn importing_checks_every_file_and_keeps_nothing_damaged() {
        let tmp = tempfile::tempdir().unwrap();
        let config = crate::config::parse("p.kdl", CONFIG).unwrap();
        let root = tmp.path().join("root");
        let root = root.to_str().unwrap();
        let mut p = plan();
        let id = artifact(tmp.path(), "coupon", &p.to.sha, "v1");
        let dir = tmp.path().join("store");
        let req = Request {
            dir: Some(&dir),
            ..Request::default()
        };
        choose(&config, root, &mut p, &req).unwrap();
        let m = Store::at(&dir).manifest(&id).unwrap();
        let pack = Store::at(&dir).pack_path(&m.app);
        let good = std::fs::read(&pack).unwrap();
        let mut bad = good.clone();
        bad[good.len() / 2] ^= 0xff;
        std::fs::write(&pack, &bad).unwrap();
        let err = import(root, Some(&dir), &p).unwrap_err();
        assert!(matches!(err, ArtifactError::HashMismatch { .. }), "{err}");
        let here = Store::at(host_store(root));
        assert_eq!(
            here.missing(&id, &m.packs()).len(),
            1,
            "the pack is not kept"
        );
        assert!(matches!(
            import(root, None, &p).unwrap_err(),
            ArtifactError::Missing { .. }
        ));
        std::fs::write(&pack, &good).unwrap();
        import(root, Some(&dir), &p).unwrap();
        assert!(here.missing(&id, &m.packs()).is_empty());
        import(root, None, &p).unwrap();
    }
}

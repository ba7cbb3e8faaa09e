//! A service at the repository root (`path "."`): a one-service fixture
//! whose service directory is moved to the root, deployed under the shared
//! private systemd manager. The release holds the whole repository, and
//! any change in the repository redeploys it.

use moorline::demo::fixture::{Edit, Fixture, FixtureOptions};

use crate::deploy::{World, ok, validated};
use crate::support;

fn world() -> Option<World> {
    let sandbox = support::sandbox()?;
    let dir = tempfile::tempdir().unwrap();
    let mut opts = FixtureOptions::new(dir.path().join("srv"));
    opts.services = Some(1);
    opts.port_base = Some(support::free_port());
    let fx = Fixture::create(&dir.path().join("fx"), &opts).unwrap();
    let svc = fx.services[0].name.clone();
    fx.commit(
        "main",
        "the service moves to the root",
        &[Edit::Rename {
            from: format!("services/{svc}/"),
            to: String::new(),
        }],
    )
    .unwrap();
    let text = std::fs::read_to_string(&fx.config_path).unwrap();
    let line = format!("service \"{svc}\" {{");
    assert!(text.contains(&line), "{text}");
    let text = text
        .replace(&line, &format!("{line} path \".\";"))
        .replace("pakashop-{service}.service", "rt-{service}.service");
    fx.commit_config("a service at the root", &text).unwrap();
    Some(World {
        state: dir.path().join("state"),
        _dir: dir,
        fx,
        sandbox,
        prefix: "rt".to_owned(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_at_the_root_deploys_the_whole_repository() {
    let Some(w) = world() else { return };
    let svc = w.fx.services[0].name.clone();
    validated(&w);
    ok(&w.run(&["apply", "--env", "staging", "--yes"]));
    let sd = w.sandbox.connect().await.unwrap();
    w.all_ready(&sd).await;
    let first = w.live("staging", &svc).unwrap();
    let release =
        w.fx.env_root("staging")
            .join(&svc)
            .join("releases")
            .join(&first);
    // The root's tree, not a subdirectory of it.
    assert!(release.join("server.py").is_file());
    assert!(release.join("moorline.kdl").is_file());
    assert!(!release.join("services").exists());

    // A file nowhere near the service's code: the root holds every path.
    let second = w.commit(
        "main",
        "docs",
        &[Edit::Write {
            path: "docs/notes.md".to_owned(),
            contents: "notes\n".to_owned(),
        }],
    );
    let out = w.run(&["plan", "--env", "staging"]);
    let plan = ok(&out);
    assert!(
        plan.contains("1 path changed in the repository: docs/notes.md"),
        "{plan}"
    );
    ok(&w.run(&["apply", "--env", "staging", "--yes"]));
    assert_eq!(w.live("staging", &svc).as_deref(), Some(second.as_str()));
    w.all_ready(&sd).await;

    // Nothing changed since: nothing to do.
    let plan = ok(&w.run(&["plan", "--env", "staging"]));
    assert!(
        plan.contains("no changes: everything is up to date"),
        "{plan}"
    );
    assert!(plan.contains(&format!("{svc}  unchanged")), "{plan}");
    w.stop_all(&sd).await;
}

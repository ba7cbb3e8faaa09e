//! Cached dependency steps end to end: a real venv built by the first
//! deploy, linked into the next release when requirements.txt did not
//! change (its scripts rewritten to name the new release, working after
//! the first release is gone), rebuilt when it did.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use moorline::demo::fixture::{Edit, Fixture, FixtureOptions};

use crate::deploy::{World, ok};
use crate::support;

const DEPS: &str = r#"runtime "node" {
    deps "/usr/bin/python3" "-m" "venv" "venv" {
        inputs "requirements.txt"
        outputs "venv"
        version "/usr/bin/python3" "--version"
    }"#;

fn world() -> Option<World> {
    let sandbox = support::sandbox()?;
    let dir = tempfile::tempdir().unwrap();
    let mut opts = FixtureOptions::new(dir.path().join("srv"));
    opts.services = Some(1);
    opts.port_base = Some(support::free_port());
    let fx = Fixture::create(&dir.path().join("fx"), &opts).unwrap();
    let text = std::fs::read_to_string(&fx.config_path).unwrap();
    assert!(text.contains("runtime \"node\" {"), "{text}");
    let text = text
        .replace("runtime \"node\" {", DEPS)
        .replace("pakashop-{service}.service", "dp-{service}.service");
    // Committed: `apply` refuses a configuration with uncommitted changes.
    fx.commit_config("deps step", &text).unwrap();
    Some(World {
        state: dir.path().join("state"),
        _dir: dir,
        fx,
        sandbox,
        prefix: "dp".to_owned(),
    })
}

fn plan_text(w: &World) -> String {
    let out = w.run(&["plan", "--env", "staging"]);
    ok(&out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn inode(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().ino()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_venv_is_reused_while_requirements_are_unchanged() {
    let Some(w) = world() else { return };
    let svc = w.fx.services[0].name.clone();
    let req = |body: &str| Edit::Write {
        path: format!("services/{svc}/requirements.txt"),
        contents: body.to_owned(),
    };
    let first = w.commit("main", "requirements", &[req("# none yet\n")]);
    ok(&w.run(&["apply", "--env", "staging", "--yes"]));
    let releases = w.fx.env_root("staging").join(&svc).join("releases");
    let r1 = releases.join(&first);
    let lib = std::fs::read_dir(r1.join("venv/lib"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    let pip_module = Path::new("venv/lib")
        .join(lib)
        .join("site-packages/pip/__init__.py");
    let shebang = |r: &Path| {
        let text = std::fs::read_to_string(r.join("venv/bin/pip")).unwrap();
        text.lines().next().unwrap().to_owned()
    };
    assert_eq!(shebang(&r1), format!("#!{}/venv/bin/python3", r1.display()));

    // Only code changed: the plan says the venv is reused, and it is.
    let second = w.commit("main", "code", &[Edit::touch_service(&svc)]);
    let plan = plan_text(&w);
    assert!(
        plan.contains("dependencies reused (requirements.txt unchanged)"),
        "{plan}"
    );
    ok(&w.run(&["apply", "--env", "staging", "--yes"]));
    let r2 = releases.join(&second);
    // Linked, not copied: the same file as the first release's.
    assert_eq!(inode(&r1.join(&pip_module)), inode(&r2.join(&pip_module)));
    // Scripts name this release's interpreter, and work without the first.
    assert_eq!(shebang(&r2), format!("#!{}/venv/bin/python3", r2.display()));
    std::fs::remove_dir_all(&r1).unwrap();
    let out = std::process::Command::new(r2.join("venv/bin/pip"))
        .arg("--version")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains(&r2.display().to_string()), "{text}");
    let out = std::process::Command::new(r2.join("venv/bin/python"))
        .args(["-c", "import sys; print(sys.prefix)"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r2.join("venv").display().to_string()
    );

    // requirements.txt changed: rebuilt, and the plan says why.
    w.commit("main", "deps", &[req("# still none\n")]);
    let plan = plan_text(&w);
    assert!(
        plan.contains("dependencies rebuilt: requirements.txt changed"),
        "{plan}"
    );
    let sd = w.sandbox.connect().await.unwrap();
    w.stop_all(&sd).await;
}

//! A prebuilt artifact on a single host, end to end on a real systemd: the
//! releases are built once on one environment (the build side, whose
//! runtime's dependency and build steps leave a marker in its root) and
//! packed; the other environment (the host) plans and applies with
//! `--artifacts DIR`, runs nothing of the build (no marker appears in its
//! root), runs the very files packed, and `status` names each artifact and
//! reports a file edited by hand as drift. Wrong or damaged artifacts are
//! refused before anything changes.

use std::path::{Path, PathBuf};

use moorline::demo::fixture::{Edit, Fixture, FixtureOptions};

use crate::deploy::{World, code, ok};
use crate::support;

/// The dependency step: `node_modules` (one file naming the release it was
/// made in), and a marker in the environment's root.
const DEPS_PY: &str = r##"import os, sys
with open(os.path.join(sys.argv[1], "deps-ran"), "a") as f:
    f.write(os.getcwd() + "\n")
os.makedirs("node_modules/.bin", exist_ok=True)
with open("node_modules/left-pad.js", "w") as f:
    f.write("module.exports = 1;\n")
with open("node_modules/.bin/left-pad", "w") as f:
    f.write("#!" + os.getcwd() + "/node_modules/left-pad.js\n")
"##;

/// The build step: a marker in the environment's root, then the
/// fixture's own build.
const BUILD_PY: &str = r#"import os, sys
with open(os.path.join(sys.argv[1], "build-ran"), "a") as f:
    f.write(os.getcwd() + "\n")
os.execv(sys.executable, [sys.executable, "build.py"])
"#;

struct Both {
    w: World,
    /// The build side's state directory (staging).
    build_state: PathBuf,
    sha: String,
}

fn world() -> Option<Both> {
    let sandbox = support::sandbox()?;
    let dir = tempfile::tempdir().unwrap();
    let mut opts = FixtureOptions::new(dir.path().join("srv"));
    opts.services = Some(2);
    opts.port_base = Some(support::port(29100));
    let fx = Fixture::create(&dir.path().join("fx"), &opts).unwrap();
    assert!(fx.services.iter().all(|s| s.runtime == "node"));
    let text = std::fs::read_to_string(&fx.config_path).unwrap();
    let at = text.find("runtime \"node\" {\n    build ").unwrap();
    let line = &text[at..];
    let py = line
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap();
    let text = text
        .replace(
            "unit-name \"pakashop-{service}.service\"",
            "unit-name \"ar-{env}-{service}.service\"",
        )
        .replacen(
            &format!("runtime \"node\" {{\n    build {py} \"build.py\""),
            &format!(
                "runtime \"node\" {{\n    deps {py} \"deps.py\" \"{{root}}\" {{\n        inputs \"package-lock.json\"\n        outputs \"node_modules\"\n    }}\n    build {py} \"marked-build.py\" \"{{root}}\""
            ),
            1,
        );
    assert!(text.contains("marked-build.py"), "{text}");
    fx.commit_config("artifact test config", &text).unwrap();
    let mut edits = Vec::new();
    for s in &fx.services {
        edits.push(Edit::Write {
            path: format!("services/{}/deps.py", s.name),
            contents: DEPS_PY.to_owned(),
        });
        edits.push(Edit::Write {
            path: format!("services/{}/marked-build.py", s.name),
            contents: BUILD_PY.to_owned(),
        });
    }
    let sha = fx
        .commit("main", "build steps that leave a mark", &edits)
        .unwrap();
    Some(Both {
        build_state: dir.path().join("build-state"),
        w: World {
            state: dir.path().join("state"),
            _dir: dir,
            fx,
            sandbox,
            prefix: "ar-production".to_owned(),
        },
        sha,
    })
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn corrupt(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prebuilt_artifact_is_installed_verified_and_watched() {
    let Some(Both {
        w,
        build_state,
        sha,
    }) = world()
    else {
        return;
    };
    let names: Vec<String> = w.fx.services.iter().map(|s| s.name.clone()).collect();
    let staging = w.fx.env_root("staging");
    let production = w.fx.env_root("production");

    // The build side: staging builds (its markers appear) and is stopped.
    ok(&w
        .cmd_in(
            &build_state,
            &["apply", "--env", "staging", "--to", &sha, "--yes"],
        )
        .output()
        .unwrap());
    assert!(staging.join("deps-ran").is_file() && staging.join("build-ran").is_file());
    ok(&w
        .cmd_in(&build_state, &["stop", "--env", "staging", "--yes"])
        .output()
        .unwrap());
    let tmp = build_state.parent().unwrap().to_path_buf();
    let store = tmp.join("artifacts");
    let ids: Vec<String> = names
        .iter()
        .map(|s| {
            moorline::testkit::artifact::pack_release(&store, "pakashop", s, &sha, &staging)
                .unwrap()
        })
        .collect();

    // An artifact of another service is refused, with what it is.
    let prod = ["--env", "production", "--to", sha.as_str()];
    let wrong = format!("{}={}", names[0], ids[1]);
    let out = w.run(
        &[
            &["plan"][..],
            &prod,
            &["--artifact", &wrong, "--artifacts"],
            &[store.to_str().unwrap()],
        ]
        .concat(),
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("moorline::artifact::mismatch")
            && err.contains(&format!("{} of project pakashop", names[1])),
        "{err}"
    );

    // The plan names each artifact instead of the build commands.
    let store_arg = store.to_str().unwrap();
    let out = w.run(
        &[
            &["plan"][..],
            &prod,
            &["--artifacts", store_arg, "--format", "json"],
        ]
        .concat(),
    );
    ok(&out);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (s, id) in names.iter().zip(&ids) {
        let build = plan["actions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["id"] == format!("build:{s}"))
            .unwrap();
        assert_eq!(build["artifact"], id.as_str(), "{build}");
        assert_eq!(plan["inputs"]["artifacts"][s], id.as_str());
    }
    let out = w.run(&[&["plan"][..], &prod, &["--artifacts", store_arg]].concat());
    let text = ok(&out);
    assert!(
        text.contains(&format!(
            "install artifact {}… (built once; verified before unpacking)",
            &ids[0][..19]
        )),
        "{text}"
    );

    // A damaged pack is refused before the apply starts: nothing unpacked,
    // nothing recorded.
    let damaged = tmp.join("damaged");
    std::fs::create_dir_all(damaged.join("packs")).unwrap();
    for sub in ["manifests", "packs"] {
        std::fs::create_dir_all(damaged.join(sub)).unwrap();
        for e in std::fs::read_dir(store.join(sub)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), damaged.join(sub).join(e.file_name())).unwrap();
        }
    }
    for e in std::fs::read_dir(damaged.join("packs")).unwrap() {
        corrupt(&e.unwrap().path());
    }
    let out = w.run(
        &[
            &["apply"][..],
            &prod,
            &["--artifacts", damaged.to_str().unwrap(), "--yes"],
        ]
        .concat(),
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("moorline::artifact::hash_mismatch"),
        "{}",
        stderr(&out)
    );
    for s in &names {
        assert!(
            !production.join(s).join("releases").exists(),
            "{s} unpacked"
        );
    }
    assert!(!w.state.join("state.json").exists());

    // Planned, saved and applied from the directory, the ids also named
    // as the fleet controller names them: nothing of the build runs here.
    let saved = tmp.join("plan.json");
    let saved_arg = saved.to_str().unwrap();
    ok(&w.run(
        &[
            &["plan"][..],
            &prod,
            &["--artifacts", store_arg, "--out", saved_arg],
        ]
        .concat(),
    ));
    let pinned = format!("{}={}", names[0], ids[0]);
    let applied = ok(&w.run(&[
        "apply",
        saved_arg,
        "--artifacts",
        store_arg,
        "--artifact",
        &pinned,
        "--yes",
    ]));
    assert!(
        applied.contains(&format!("installed artifact {}", &ids[0][..19]))
            && applied.contains("dependencies entry adopted from the artifact"),
        "{applied}"
    );
    assert!(
        !production.join("deps-ran").exists(),
        "a dependency step ran"
    );
    assert!(!production.join("build-ran").exists(), "a build ran");
    let release = production.join(&names[0]).join("releases").join(&sha);
    assert_eq!(
        std::fs::read_to_string(release.join("node_modules/.bin/left-pad")).unwrap(),
        format!("#!{}/node_modules/left-pad.js\n", release.display()),
        "the dependency outputs name this release"
    );
    let state = crate::deploy::state_json(&w);
    let status = w.run(&[
        "status",
        "--env",
        "production",
        "--format",
        "json",
        "--check",
    ]);
    ok(&status);
    let st: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    for (s, id) in names.iter().zip(&ids) {
        assert_eq!(state["services"][s]["artifact"], id.as_str());
        let sv = st["phases"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p["services"].as_array().unwrap())
            .find(|x| x["name"] == s.as_str())
            .unwrap();
        assert_eq!(sv["artifact"], id.as_str(), "{sv}");
        assert_eq!(sv["healthy"], true, "{sv}");
    }

    // A file edited by hand on the host is drift.
    std::fs::write(release.join("server.py"), "# hot fix by hand\n").unwrap();
    let out = w.run(&["status", "--env", "production", "--check"]);
    assert_eq!(code(&out), 5, "{}", String::from_utf8_lossy(&out.stdout));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(" artifact {}", &ids[1][..19])),
        "each release names its artifact: {text}"
    );
    assert!(
        text.contains(&format!(
            "{}: release files differ from artifact {}…: server.py (modified)",
            names[0],
            &ids[0][..19]
        )),
        "{text}"
    );

    let sd = w.sandbox.connect().await.unwrap();
    w.stop_all(&sd).await;
}

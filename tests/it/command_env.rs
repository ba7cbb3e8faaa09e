//! Configured commands get a clean environment: a build that prints its
//! environment sees `PATH`, `HOME`, `LANG`, moorline's `MOORLINE_*`
//! variables for it, the configuration's `env` and what `pass-env` names,
//! and nothing else of moorline's environment (a CI runner's credentials,
//! moorline's own settings).

use std::collections::BTreeSet;

use crate::support;

const AWS_SECRET: &str = "wJalrXUtnFEMI-K7MDENG-bPxRfiCY";
/// Passed on purpose; its name looks secret, so moorline redacts it.
const DEPLOY_TOKEN: &str = "tok-0f9e8d7c6b5a";

#[test]
fn a_build_sees_no_credential_of_moorlines_environment() {
    let Some(sandbox) = support::sandbox() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let root = tmp.path().join("srv");
    let state = tmp.path().join("state");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(repo.join("services/api")).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(repo.join("services/api/main.txt"), "api\n").unwrap();
    let port = support::free_port();
    let config = format!(
        r#"project "ce" {{ unit-name "ce-{{service}}.service" }}
environment "staging" {{
    branch "main"
    root "{root}"
    env LOG_LEVEL="debug"
    pass-env "CI_JOB_ID" "NOT_SET_ANYWHERE" "DEPLOY_TOKEN"
}}
phase "core"
runtime "sh" {{
    build "sh" "-c" "env; exit 3"
    unit {{
        exec "/bin/sleep" "1000"
        wanted-by "default.target"
    }}
}}
service "api" {{ runtime "sh"; port {port}; phase "core" }}
"#,
        root = root.display(),
    );
    let config_path = repo.join("moorline.kdl");
    std::fs::write(&config_path, &config).unwrap();
    crate::secrets::git(&repo, &["init", "-q", "-b", "main"]);
    crate::secrets::git(&repo, &["add", "-A"]);
    crate::secrets::git(&repo, &["commit", "-q", "-m", "first"]);

    let run = |args: &[&str]| {
        support::moorline(sandbox, &state)
            .args(args)
            // moorline's own setting: read by moorline, not for commands.
            .env("MOORLINE_CONFIG", &config_path)
            .env("HOME", &home)
            .env("LANG", "C.UTF-8")
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
            .env("CI_JOB_ID", "4711")
            .env("DEPLOY_TOKEN", DEPLOY_TOKEN)
            .env_remove("NOT_SET_ANYWHERE")
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };

    // The plan shows what passes, in every format.
    let text = run(&["plan", "--env", "staging"]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.contains(
            "  pass-env CI_JOB_ID, NOT_SET_ANYWHERE, DEPLOY_TOKEN from moorline's environment into every command\n"
        ),
        "{text}"
    );
    let md = run(&["plan", "--env", "staging", "--format", "markdown"]);
    let md = String::from_utf8_lossy(&md.stdout).into_owned();
    assert!(
        md.contains("**pass-env** `CI_JOB_ID`, `NOT_SET_ANYWHERE`, `DEPLOY_TOKEN` from moorline's environment into every command\n"),
        "{md}"
    );
    let json = run(&["plan", "--env", "staging", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        json["pass_env"],
        serde_json::json!(["CI_JOB_ID", "NOT_SET_ANYWHERE", "DEPLOY_TOKEN"])
    );

    let out = run(&["apply", "--env", "staging", "--yes"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("exited with exit status: 3"), "{stderr}");
    let mut logs = Vec::new();
    crate::secrets::files(&state.join("logs"), &mut logs);
    assert_eq!(logs.len(), 1, "{logs:?}");
    let log = std::fs::read_to_string(&logs[0]).unwrap();
    assert!(!log.contains(AWS_SECRET), "{log}");
    assert!(
        !log.contains(DEPLOY_TOKEN) && !stderr.contains(DEPLOY_TOKEN),
        "{log}"
    );
    let names: BTreeSet<&str> = log
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        // Set by `sh` itself.
        .filter(|k| *k != "PWD")
        .collect();
    let expected: BTreeSet<&str> = [
        "PATH",
        "HOME",
        "LANG",
        "LOG_LEVEL",
        "CI_JOB_ID",
        "DEPLOY_TOKEN",
        "MOORLINE_ENV",
        "MOORLINE_ROOT",
        "MOORLINE_SERVICE",
        "MOORLINE_RELEASE",
    ]
    .into();
    assert_eq!(names, expected, "{log}");
    for line in [
        "CI_JOB_ID=4711",
        "DEPLOY_TOKEN=(redacted)",
        "LANG=C.UTF-8",
        "PATH=/usr/local/bin:/usr/bin:/bin",
        "LOG_LEVEL=debug",
        "MOORLINE_ENV=staging",
        "MOORLINE_SERVICE=api",
    ] {
        assert!(log.lines().any(|l| l == line), "{line} not in\n{log}");
    }
    assert!(
        log.lines().any(|l| l == format!("HOME={}", home.display())),
        "{log}"
    );
}

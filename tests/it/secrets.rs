//! Secrets never reach moorline's output or files: an apply whose build
//! prints its environment (an inline secret and an env-file secret) and
//! fails, in text and JSON; every byte printed and every file written is
//! searched for both values. The state directory is private.

use std::path::Path;
use std::process::Output;

use crate::support;

const INLINE: &str = "s3cr3t-inline-4b7e1c";
const FILE_SECRET: &str = "s3cr3t-file-9d2a6f";

/// Every regular file under `dir` (symlinks not followed).
pub(crate) fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let t = e.file_type().unwrap();
        if t.is_dir() {
            files(&e.path(), out);
        } else if t.is_file() {
            out.push(e.path());
        }
    }
}

/// Every entry (files and directories) under `dir`.
fn entries(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        out.push(e.path());
        if e.file_type().unwrap().is_dir() {
            entries(&e.path(), out);
        }
    }
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

pub(crate) fn git(dir: &Path, args: &[&str]) {
    let o = std::process::Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "git {args:?}: {o:?}");
}

#[test]
fn secrets_reach_no_output_and_no_file_and_the_state_directory_is_private() {
    let Some(sandbox) = support::sandbox() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let root = tmp.path().join("srv");
    let state = tmp.path().join("state");
    let env_file = tmp.path().join("staging.env");
    std::fs::write(
        &env_file,
        format!("# secrets\nDATABASE_URL=postgres://app:{FILE_SECRET}@db.internal/app\n"),
    )
    .unwrap();
    std::fs::create_dir_all(repo.join("services/api")).unwrap();
    std::fs::write(repo.join("services/api/main.txt"), "api\n").unwrap();
    let port = support::free_port();
    let config = format!(
        r#"project "sx" {{ unit-name "sx-{{service}}.service" }}
environment "staging" {{
    branch "main"
    root "{root}"
    env API_KEY="{INLINE}"
    env-file "{env_file}"
}}
phase "core"
runtime "sh" {{
    build "sh" "-c" "env; printenv DATABASE_URL API_KEY; echo \"url=$DATABASE_URL key=$API_KEY\" >&2; exit 3"
    unit {{
        exec "/bin/sleep" "1000"
        env TOKEN="{INLINE}"
        wanted-by "default.target"
    }}
}}
service "api" {{ runtime "sh"; port {port}; phase "core" }}
"#,
        root = root.display(),
        env_file = env_file.display(),
    );
    std::fs::write(repo.join("moorline.kdl"), &config).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "first"]);

    let run = |args: &[&str]| -> Output {
        support::moorline(sandbox, &state)
            .args(["-c", repo.join("moorline.kdl").to_str().unwrap()])
            .args(args)
            .output()
            .unwrap()
    };

    let plan_file = state.join("plans/next.plan.json");
    let outputs = [
        run(&[
            "plan",
            "--env",
            "staging",
            "--out",
            plan_file.to_str().unwrap(),
        ]),
        run(&["plan", "--env", "staging", "--format", "json"]),
        run(&["apply", "--env", "staging", "--yes"]),
        run(&["apply", "--env", "staging", "--yes", "--format", "json"]),
        run(&["status", "--env", "staging", "--format", "json"]),
        // The pull-request comment: unit diffs and reasons, Markdown-escaped.
        run(&["plan", "--env", "staging", "--format", "markdown"]),
    ];
    let mut printed = String::new();
    for o in &outputs {
        printed.push_str(&String::from_utf8_lossy(&o.stdout));
        printed.push_str(&String::from_utf8_lossy(&o.stderr));
    }
    // The Markdown plan shows the unit file, its secret value redacted.
    let markdown = String::from_utf8_lossy(&outputs[5].stdout).into_owned();
    assert!(
        markdown.contains("```diff") && markdown.contains("TOKEN=(redacted)"),
        "{markdown}"
    );
    // The applies really ran the build, and it really failed.
    let text_apply = String::from_utf8_lossy(&outputs[2].stderr).into_owned();
    assert_eq!(outputs[2].status.code(), Some(1), "{text_apply}");
    assert!(
        text_apply.contains("exited with exit status: 3"),
        "{text_apply}"
    );
    assert!(
        text_apply.contains("url=(redacted) key=(redacted)"),
        "{text_apply}"
    );
    assert_eq!(outputs[3].status.code(), Some(1));
    let json_apply = String::from_utf8_lossy(&outputs[3].stdout).into_owned();
    for line in json_apply.lines() {
        let _: serde_json::Value = serde_json::from_str(line).unwrap();
    }
    assert!(json_apply.contains("\"event\":\"report\""), "{json_apply}");

    for secret in [INLINE, FILE_SECRET] {
        assert!(!printed.contains(secret), "{secret} printed:\n{printed}");
    }

    let mut written = Vec::new();
    files(&state, &mut written);
    files(&root, &mut written);
    let logs: Vec<_> = written
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    assert!(!logs.is_empty(), "no build log in {written:?}");
    let log = std::fs::read_to_string(logs[0]).unwrap();
    assert!(log.contains("API_KEY=(redacted)"), "{log}");
    assert!(
        written
            .iter()
            .any(|p| p.parent().is_some_and(|d| d.ends_with("history"))),
        "no history in {written:?}"
    );
    for path in &written {
        let bytes = std::fs::read(path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for secret in [INLINE, FILE_SECRET] {
            assert!(!text.contains(secret), "{secret} in {}", path.display());
        }
    }

    // Everything under the state directory is the owner's alone.
    assert_eq!(mode(&state), 0o700);
    let mut all = vec![];
    entries(&state, &mut all);
    assert!(all.len() >= 5, "{all:?}");
    for p in &all {
        let want = if p.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(p), want, "{}", p.display());
    }
}

#[test]
fn an_existing_open_state_directory_is_tightened() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    std::fs::create_dir(&dir).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let _lock = moorline::lock::acquire(&dir, "test").unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("lock")), 0o600);
}

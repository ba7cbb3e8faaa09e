//! `moorline demo`, the README's first command, run as a new user would.

use crate::support;

#[test]
fn demo_runs_every_step_and_cleans_up() {
    // The demo starts its own private manager; skip where the shared one
    // cannot start either (same requirements).
    if support::sandbox().is_none() {
        return;
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_moorline"))
        .arg("demo")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("every step did what it says"), "{stdout}");
    for step in [
        "$ moorline validate",
        "$ moorline plan --env staging --detailed-exitcode",
        "$ moorline apply --env staging --yes",
        "$ moorline plan --env staging --format markdown",
        "$ moorline rollback --env staging --yes",
        "$ moorline status --env staging",
        "$ moorline status --env staging --check",
        "restarted according to systemd: backend, pricing",
    ] {
        assert!(stdout.contains(step), "missing `{step}` in:\n{stdout}");
    }
    assert!(!stdout.contains('\x1b'), "no colour without a terminal");
    // Its files are gone (it says where they were).
    let dir = stdout
        .split("files live in ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(|d| d.trim_end_matches('.'))
        .unwrap();
    assert!(dir.contains("moorline-demo-"), "{dir}");
    assert!(!std::path::Path::new(dir).exists(), "{dir} was left behind");
}

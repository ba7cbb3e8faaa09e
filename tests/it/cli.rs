//! The command line itself: config discovery, `validate`'s exit codes and
//! summary, completions, the man page, help.

use std::process::{Command, Output};

/// The binary in `dir`, without a config from the environment, colourless
/// (also used by the `init` tests).
pub fn moorline(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moorline"))
        .current_dir(dir)
        .args(args)
        .env_remove("MOORLINE_CONFIG")
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

/// Standard output and error together.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn a_configuration_file_name_with_an_escape_sequence_is_shown_escaped() {
    // A file name is text from outside too: `-c` with a name that would
    // retitle the terminal shows it escaped, valid or not.
    let dir = tempfile::tempdir().unwrap();
    let name = "shop\u{1b}]0;PWNED\u{7}.kdl";
    let valid = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("pakashop.kdl"),
    )
    .unwrap();
    for (config, ok) in [
        (valid.as_str(), true),
        ("project \"shop\"\nbogus 1\n", false),
    ] {
        std::fs::write(dir.path().join(name), config).unwrap();
        let o = moorline(dir.path(), &["validate", "-c", name]);
        let out = text(&o);
        assert_eq!(o.status.success(), ok, "{out}");
        assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "{out:?}");
        assert!(out.contains(r"shop\u{1b}]0;PWNED\u{7}.kdl"), "{out}");
    }
}

#[test]
fn validate_finds_the_config_and_summarises_it() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = moorline(root, &["validate", "-c", "pakashop.kdl"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("19 services, 5 phases, 2 environments"),
        "{}",
        text(&o)
    );

    let dir = tempfile::tempdir().unwrap();
    // None: a clear error.
    let o = moorline(dir.path(), &["validate"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("moorline::config::not_found"),
        "{}",
        text(&o)
    );
    // The only *.kdl here.
    std::fs::copy(root.join("pakashop.kdl"), dir.path().join("shop.kdl")).unwrap();
    let o = moorline(dir.path(), &["validate"]);
    assert!(o.status.success(), "{}", text(&o));
    // Several: a clear error naming them.
    std::fs::write(
        dir.path().join("other.kdl"),
        "project \"x\"\nservice \"a\" { port 0; }\n",
    )
    .unwrap();
    let o = moorline(dir.path(), &["validate"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("other.kdl, shop.kdl"), "{}", text(&o));
    // MOORLINE_CONFIG picks one.
    let o = Command::new(env!("CARGO_BIN_EXE_moorline"))
        .current_dir(dir.path())
        .arg("validate")
        .env("MOORLINE_CONFIG", "shop.kdl")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    // An invalid file: exit 1, every problem.
    let o = moorline(dir.path(), &["validate", "-c", "other.kdl"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("moorline::config::"), "{}", text(&o));
}

#[test]
fn completions_man_page_and_help() {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for shell in ["bash", "zsh", "fish"] {
        let o = moorline(here, &["completions", shell]);
        assert!(o.status.success());
        let s = String::from_utf8_lossy(&o.stdout);
        assert!(s.contains("moorline") && s.contains("rollback"), "{shell}");
    }
    let o = moorline(here, &["man"]);
    assert!(o.status.success());
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.starts_with(".ie") || s.contains(".TH"), "{s}");
    // A page for every command, nested ones included.
    let pages = tempfile::tempdir().unwrap();
    let dir = pages.path().join("man1");
    let o = moorline(here, &["man", "--dir", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    for (page, title) in [
        ("moorline.1", ".TH moorline 1"),
        ("moorline-init.1", ".TH moorline-init 1"),
        ("moorline-apply.1", ".TH moorline-apply 1"),
        ("moorline-backup-list.1", ".TH moorline-backup-list 1"),
    ] {
        let roff = std::fs::read_to_string(dir.join(page)).unwrap();
        assert!(roff.contains(title), "{page}: {roff}");
        assert!(text(&o).contains(page), "{page} is listed: {}", text(&o));
    }
    let written = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(written, text(&o).lines().count(), "{}", text(&o));
    assert!(written >= 20, "{written} pages");
    assert!(
        !dir.join("moorline-help.1").exists(),
        "no page for clap's help"
    );
    let o = moorline(here, &["--help"]);
    let s = String::from_utf8_lossy(&o.stdout);
    for cmd in [
        "validate", "plan", "apply", "rollback", "status", "graph", "backup", "demo",
    ] {
        assert!(s.contains(cmd), "--help lists {cmd}");
    }
    assert!(s.contains("Exit codes"), "{s}");
    // An unknown command is a usage error (exit 1, never 2, which means
    // "the plan has changes"), not a panic.
    let o = moorline(here, &["deploy-everything"]);
    assert_eq!(o.status.code(), Some(1));
    let o = moorline(here, &["plan", "--detailed-exitcode"]);
    assert_eq!(o.status.code(), Some(1), "a missing --env");
}

#[test]
fn plan_warns_when_the_local_branch_is_not_what_was_pushed() {
    let dir = tempfile::tempdir().unwrap();
    let fx = moorline::demo::fixture::Fixture::create(
        &dir.path().join("fx"),
        &moorline::demo::fixture::FixtureOptions::new(dir.path().join("srv")),
    )
    .unwrap();
    let pushed = fx.head("main").unwrap();
    fx.commit(
        "main",
        "local only",
        &[moorline::demo::fixture::Edit::touch_service("coupon")],
    )
    .unwrap();
    let repo = git2::Repository::open(&fx.repo).unwrap();
    repo.reference(
        "refs/remotes/origin/main",
        git2::Oid::from_str(&pushed).unwrap(),
        true,
        "test",
    )
    .unwrap();
    let state = dir.path().join("state");
    let plan = |extra: &[&str]| {
        let mut args = vec![
            "-c",
            fx.config_path.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
            "plan",
            "--env",
            "staging",
        ];
        args.extend_from_slice(extra);
        moorline(dir.path(), &args)
    };
    let o = plan(&[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("pass --to origin/main"), "{}", text(&o));
    let o = plan(&["--to", "origin/main"]);
    assert!(!text(&o).contains("pass --to origin/main"), "{}", text(&o));
}

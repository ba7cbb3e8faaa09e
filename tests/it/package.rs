//! The Debian package, built and installed as a user would: `packaging/build-deb.sh` (twice:
//! the two packages must be byte-identical), then `apt-get install ./moorline_*.deb`, then the
//! installed `/usr/bin/moorline` run with a `PATH` that holds no Rust toolchain: `--version`
//! and `validate` of the repository's pakashop.kdl. The man page, the completions and the docs
//! must be where Debian's tools look for them, and the binary must need nothing beyond glibc.
//! The package is removed again (also when an assertion fails), so the machine is left as it
//! was.
//!
//! Needs root, apt-get and cargo-deb, and a machine where moorline is not installed yet;
//! skipped (with the reason printed) otherwise, unless `MOORLINE_REQUIRE_PACKAGE=1` (.ci/run).
//! The release build goes into this target directory (target/release), so it is built once.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Set to `1` to turn "cannot build or install the package here" into a test failure.
const REQUIRE_ENV: &str = "MOORLINE_REQUIRE_PACKAGE";

fn skip(reason: &str) {
    assert!(
        std::env::var(REQUIRE_ENV).as_deref() != Ok("1"),
        "{REQUIRE_ENV}=1 but {reason}"
    );
    eprintln!("SKIPPED: {reason}");
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The target directory this test binary was built in (the parent of `CARGO_TARGET_TMPDIR`).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR has a parent")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Why the package cannot be built and installed here, if it cannot.
fn unavailable() -> Option<String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .map(|o| stdout(&o));
    if uid.as_deref().map(str::trim) != Some("0") {
        return Some("installing a package needs root".to_owned());
    }
    if !succeeds("apt-get", &["--version"]) {
        return Some("apt-get is missing".to_owned());
    }
    if !succeeds("cargo", &["deb", "--version"]) {
        return Some(
            "cargo-deb is missing (cargo install --locked --version 3.8.0 cargo-deb)".to_owned(),
        );
    }
    if succeeds("dpkg-query", &["-W", "moorline"]) || Path::new("/usr/bin/moorline").exists() {
        return Some("moorline is installed on this machine already".to_owned());
    }
    None
}

/// Builds the package with the release script; its path and bytes.
fn build() -> (PathBuf, Vec<u8>) {
    let debian = target_dir().join("debian");
    if debian.exists() {
        std::fs::remove_dir_all(&debian).unwrap();
    }
    run(Command::new(root().join("packaging/build-deb.sh")).env("CARGO_TARGET_DIR", target_dir()));
    let debs: Vec<PathBuf> = std::fs::read_dir(&debian)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    assert_eq!(
        debs.len(),
        1,
        "expected one package in {}: {debs:?}",
        debian.display()
    );
    let deb = debs.into_iter().next().unwrap();
    let bytes = std::fs::read(&deb).unwrap();
    (deb, bytes)
}

/// Removes the package when dropped, also when an assertion failed after installing it.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let removed = Command::new("dpkg").args(["--purge", "moorline"]).output();
        if !removed.as_ref().is_ok_and(|o| o.status.success()) {
            eprintln!("could not remove the moorline package: {removed:?}");
        }
    }
}

#[test]
fn debian_package_builds_reproducibly_installs_and_runs_without_rust() {
    if let Some(reason) = unavailable() {
        skip(&reason);
        return;
    }
    let started = std::time::Instant::now();
    let (deb, first) = build();
    let (_, second) = build();
    assert!(
        first == second,
        "two builds of the same commit gave different packages"
    );
    let version = env!("CARGO_PKG_VERSION");
    let name = deb.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with(&format!("moorline_{version}_")),
        "package file name {name}"
    );

    let info = stdout(&run(Command::new("dpkg-deb")
        .args(["--field"])
        .arg(&deb)
        .args(["Package", "Version", "Depends", "Section"])));
    assert!(info.contains("Package: moorline"), "{info}");
    let depends = info
        .lines()
        .find_map(|l| l.strip_prefix("Depends: "))
        .unwrap_or_default();
    assert!(
        depends.starts_with("libc6 (>= ") && !depends.contains(','),
        "the package must depend on libc6 only: {depends:?}"
    );

    // `apt-get install ./file.deb`, as docs/install.md says (a path, not a package name).
    let relative = deb.strip_prefix(target_dir()).unwrap();
    let installed = Installed;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .arg(Path::new(".").join(relative))
        .current_dir(target_dir())
        .env("DEBIAN_FRONTEND", "noninteractive"));

    // No Rust on PATH: only what the package installed, and the system's tools.
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let moorline = |args: &[&str]| {
        let mut cmd = Command::new("/usr/bin/moorline");
        cmd.args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", scratch.path())
            .current_dir(scratch.path());
        cmd
    };
    let out = stdout(&run(&mut moorline(&["--version"])));
    assert_eq!(out.trim(), format!("moorline {version}"));
    let config = root().join("pakashop.kdl");
    let out = run(&mut moorline(&["-c", config.to_str().unwrap(), "validate"]));
    let said = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("is valid"), "validate said: {said}");

    // Nothing beyond glibc (libgcc_s comes with libc6).
    let dynamic = stdout(&run(
        Command::new("objdump").args(["-p", "/usr/bin/moorline"])
    ));
    for lib in dynamic
        .lines()
        .filter_map(|l| l.trim().strip_prefix("NEEDED"))
        .map(str::trim)
    {
        assert!(
            ["libc.so.6", "libm.so.6", "libgcc_s.so.1"].contains(&lib)
                || lib.starts_with("ld-linux"),
            "the installed binary needs {lib}"
        );
    }

    for path in [
        "/usr/share/man/man1/moorline.1.gz",
        "/usr/share/man/man1/moorline-init.1.gz",
        "/usr/share/man/man1/moorline-backup-list.1.gz",
        "/usr/share/doc/moorline/pakashop.kdl",
        "/usr/share/bash-completion/completions/moorline",
        "/usr/share/zsh/vendor-completions/_moorline",
        "/usr/share/fish/vendor_completions.d/moorline.fish",
        "/usr/share/doc/moorline/README.md",
        "/usr/share/doc/moorline/docs/install.md",
        "/usr/share/doc/moorline/docs/commands.md",
        "/usr/share/doc/moorline/examples/github/release.yml",
        "/usr/share/doc/moorline/copyright",
    ] {
        assert!(
            Path::new(path).is_file(),
            "the package did not install {path}"
        );
    }
    let man = run(Command::new("gzip").args(["-dc", "/usr/share/man/man1/moorline.1.gz"]));
    assert!(stdout(&man).contains(".TH moorline 1"), "not a man page");
    let man = run(Command::new("gzip").args(["-dc", "/usr/share/man/man1/moorline-init.1.gz"]));
    assert!(
        stdout(&man).contains(".TH moorline-init 1"),
        "not init's man page"
    );
    let bash = std::fs::read_to_string("/usr/share/bash-completion/completions/moorline").unwrap();
    assert!(
        bash.contains("complete -F") && bash.contains("moorline"),
        "{bash}"
    );

    drop(installed);
    assert!(
        !Path::new("/usr/bin/moorline").exists(),
        "removing the package left /usr/bin/moorline"
    );
    eprintln!(
        "package: built twice, installed, checked and removed in {:.0?}",
        started.elapsed()
    );
}

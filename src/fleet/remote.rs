//! Host preparation: makes a host ready to run the controller's moorline on
//! the commits being deployed. In: a host and a target commit; out: a
//! [`Prepared`] host whose argv runs its moorline. Guarantees: the binary on
//! the host is the controller's own (content-addressed by SHA-256, uploaded
//! to a temporary file and renamed into place, never overwriting one that
//! exists, so an apply running it is never disturbed); the host's
//! repository has the commit checked out, detached and clean, from a
//! `git bundle` sent over ssh (hosts need no access to the git remote).

use std::path::{Path, PathBuf};

use super::ssh::{Input, Transport};
use super::{Fleet, FleetError};
use crate::config::Host;

/// The version line `moorline --version` prints.
pub(crate) fn version_line() -> String {
    format!("moorline {}", env!("CARGO_PKG_VERSION"))
}

/// The controller's own executable, which hosts run.
#[derive(Debug, Clone)]
pub(crate) struct Binary {
    pub(crate) path: PathBuf,
    pub(crate) sha256: String,
}

impl Binary {
    /// The running executable and its SHA-256 (cached in `dir` by size and
    /// modification time, since hashing ~80 MB on every command is slow).
    pub(crate) fn current(dir: &Path) -> Result<Self, FleetError> {
        let io = |what: &str, e| {
            FleetError::local(
                what.to_owned(),
                "fleet mode installs the running moorline on hosts; run it from a readable file",
                e,
            )
        };
        let path = std::env::current_exe().map_err(|e| io("find the running moorline", e))?;
        let meta = std::fs::metadata(&path).map_err(|e| io("read the running moorline", e))?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let key = format!("{}:{}:{modified}", path.display(), meta.len());
        let cache = dir.join("binary.sha256");
        if let Ok(text) = std::fs::read_to_string(&cache)
            && let Some((k, sum)) = text.trim().rsplit_once(' ')
            && k == key
            && sum.len() == 64
        {
            return Ok(Self {
                path,
                sha256: sum.to_owned(),
            });
        }
        let sha256 = hash_file(&path).map_err(|e| io("read the running moorline", e))?;
        // The cache is an optimisation: failing to write it changes nothing.
        let _ = crate::files::write_private(&cache, format!("{key} {sha256}\n").as_bytes());
        Ok(Self { path, sha256 })
    }

    /// The file name it has on hosts.
    pub(crate) fn remote_name(&self) -> String {
        format!("moorline-{}", &self.sha256[..16])
    }
}

fn hash_file(path: &Path) -> std::io::Result<String> {
    crate::files::sha256_file(path).map(|(sha, _)| sha)
}

/// A host ready to run moorline on the target commit.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    pub(crate) host: Host,
    /// `{base}/bin/moorline-{sha}` on the host.
    pub(crate) bin: String,
    /// `{base}/{env}/repo` on the host.
    pub(crate) repo: String,
    /// The config file in that repository.
    pub(crate) config: String,
    /// `--systemd` handed on.
    pub(crate) systemd: Option<&'static str>,
}

impl Prepared {
    /// The argv of the host's moorline running `args` (a subcommand and
    /// its flags) on this environment's config, restricted to the host.
    pub(crate) fn moorline(&self, args: &[&str]) -> Vec<String> {
        let mut v = vec![
            self.bin.clone(),
            "--repo".to_owned(),
            self.repo.clone(),
            "-c".to_owned(),
            self.config.clone(),
            "--host".to_owned(),
            self.host.name.clone(),
        ];
        if let Some(s) = self.systemd {
            v.push("--systemd".to_owned());
            v.push(s.to_owned());
        }
        v.extend(args.iter().map(|a| (*a).to_owned()));
        v
    }
}

/// Finds the host's fleet directory, whether the binary and the commit are
/// there, in one round trip. Prints three lines: the base directory, the
/// installed binary's `--version` (or `absent`), and `have` when the repo
/// has the commit (else its HEAD, or `none`).
const PROBE: &str = r#"set -u
if [ -n "${XDG_STATE_HOME:-}" ]; then s=$XDG_STATE_HOME
elif [ "$(id -u)" = 0 ]; then s=/var/lib
else s=$HOME/.local/state; fi
base=$s/moorline-fleet/$1
printf '%s\n' "$base"
if [ -x "$base/bin/$2" ]; then "$base/bin/$2" --version || echo broken; else echo absent; fi
repo=$base/$3/repo
if git -C "$repo" cat-file -e "$4^{commit}" 2>/dev/null; then echo have
else git -C "$repo" rev-parse -q --verify HEAD 2>/dev/null || echo none; fi
"#;

/// Installs the binary read from stdin as `$1/$2` unless that exists: a
/// temporary file in the same directory, checked against `$3`, then
/// renamed (atomic; a binary in use is never replaced).
const INSTALL: &str = r#"set -eu
mkdir -p "$1"
if [ -e "$1/$2" ]; then cat >/dev/null; exit 0; fi
tmp=$(mktemp "$1/.incoming.XXXXXX")
trap 'rm -f "$tmp"' EXIT
cat >"$tmp"
if command -v sha256sum >/dev/null 2>&1; then
  sum=$(sha256sum <"$tmp" | cut -d' ' -f1)
  if [ "$sum" != "$3" ]; then echo "upload corrupted: sha256 $sum" >&2; exit 1; fi
fi
chmod 755 "$tmp"
if [ -e "$1/$2" ]; then exit 0; fi
mv "$tmp" "$1/$2"
trap - EXIT
"#;

/// Fetches the bundle read from stdin (when `$3` is `bundle`) into the
/// repository `$1`; the branch `$4` points at `$2`. With `$5` = `move`,
/// checks out `$2` detached and clean; with `keep`, leaves the checkout
/// as it is (checking `$2` out only when there is none yet).
const CHECKOUT: &str = r#"set -eu
mkdir -p "$1"
[ -e "$1/.git" ] || git init -q "$1"
if [ "$3" = bundle ]; then
  tmp=$(mktemp "$1/../.bundle.XXXXXX")
  trap 'rm -f "$tmp"' EXIT
  cat >"$tmp"
  git -C "$1" fetch -q "$tmp" "+refs/moorline/ship:refs/moorline/ship"
fi
if [ "$5" = move ] || ! git -C "$1" rev-parse -q --verify HEAD >/dev/null; then
  git -C "$1" -c advice.detachedHead=false checkout -q --force --detach "$2"
  git -C "$1" clean -q -f -f -d -x
fi
git -C "$1" update-ref "refs/heads/$4" "$2"
"#;

fn sh(script: &str, args: &[&str]) -> Vec<String> {
    let mut v = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        script.to_owned(),
        "sh".to_owned(),
    ];
    v.extend(args.iter().map(|a| (*a).to_owned()));
    v
}

/// What [`prepare`] does to the host's checkout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Checkout {
    /// Check the target out (`plan`, `apply`, and their resume): the host
    /// plans and applies with the configuration committed there.
    Target,
    /// Leave the checkout as the last plan or apply left it (`status`,
    /// `logs`, and the commands run `--on` hosts): they read the
    /// configuration of what is deployed, and never move the files under
    /// an apply that runs there. The commits are sent all the same, and
    /// the environment's branch points at the target (what `status`
    /// compares the deployed revision with).
    Keep,
}

/// Makes `host` ready: opens its master connection, installs the binary
/// when it is missing, sends the commits `to` needs, and checks `to` out
/// or not ([`Checkout`]).
pub(crate) async fn prepare(
    fleet: &Fleet,
    host: &Host,
    to: &str,
    checkout: Checkout,
) -> Result<Prepared, FleetError> {
    let t = &fleet.transport;
    t.open(host).await?;
    let name = fleet.binary.remote_name();
    let out = t
        .run(
            host,
            &sh(PROBE, &[&fleet.project, &name, &fleet.env.name, to]),
            Input::Null,
        )
        .await?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let (Some(base), Some(version), Some(repo_state)) = (lines.next(), lines.next(), lines.next())
    else {
        return Err(FleetError::remote(
            host,
            format!(
                "could not find its fleet directory (exit {}): {}",
                out.code,
                out.stderr.trim()
            ),
            "the host needs a POSIX sh, `git` and a writable state directory for the ssh user",
        ));
    };
    let bin_dir = format!("{base}/bin");
    match version {
        "absent" => install(t, host, &fleet.binary, &bin_dir, &name).await?,
        v if v == version_line() => {}
        v => {
            return Err(FleetError::remote(
                host,
                format!("{bin_dir}/{name} answers `{v}`, not `{}`", version_line()),
                "the binary at that content-addressed path is not the controller's: remove it on the host, and moorline installs it again",
            ));
        }
    }
    let repo = format!("{base}/{}/repo", fleet.env.name);
    ship(fleet, host, &repo, to, repo_state, checkout).await?;
    Ok(Prepared {
        host: host.clone(),
        bin: format!("{bin_dir}/{name}"),
        config: format!("{repo}/{}", fleet.config_in_repo),
        repo,
        systemd: fleet.systemd.map(|s| match s {
            crate::systemd::Bus::System => "system",
            crate::systemd::Bus::User => "user",
        }),
    })
}

async fn install(
    t: &Transport,
    host: &Host,
    binary: &Binary,
    dir: &str,
    name: &str,
) -> Result<(), FleetError> {
    let out = t
        .run(
            host,
            &sh(INSTALL, &[dir, name, &binary.sha256]),
            Input::File(binary.path.clone()),
        )
        .await?;
    if out.code != 0 {
        return Err(FleetError::remote(
            host,
            format!("installing moorline in {dir} failed: {}", out.stderr.trim()),
            "check free space and permissions in the host's state directory",
        ));
    }
    Ok(())
}

/// Sends the commits `to` needs (only those the host's HEAD lacks when the
/// controller knows that HEAD) and checks `to` out.
async fn ship(
    fleet: &Fleet,
    host: &Host,
    repo: &str,
    to: &str,
    repo_state: &str,
    checkout: Checkout,
) -> Result<(), FleetError> {
    let (mode, input) = if repo_state == "have" {
        ("checkout", Input::Null)
    } else {
        let basis = (repo_state != "none").then_some(repo_state);
        let root = fleet.repo_root.clone();
        let dir = fleet.dir.clone();
        let (to_owned, host_name, basis) =
            (to.to_owned(), host.name.clone(), basis.map(str::to_owned));
        let file = tokio::task::spawn_blocking(move || {
            bundle(&root, &dir, &to_owned, basis.as_deref(), &host_name)
        })
        .await
        .map_err(|e| FleetError::Local {
            what: format!("make the git bundle: {e}"),
            help: String::new(),
            source: None,
        })??;
        ("bundle", Input::File(file))
    };
    let sent = match &input {
        Input::File(f) => Some(f.clone()),
        _ => None,
    };
    let out = t_run(
        fleet,
        host,
        &sh(
            CHECKOUT,
            &[
                repo,
                to,
                mode,
                &fleet.env.branch,
                match checkout {
                    Checkout::Target => "move",
                    Checkout::Keep => "keep",
                },
            ],
        ),
        input,
    )
    .await;
    // The bundle has been read (or the host is gone): it is not kept.
    if let Some(f) = sent {
        let _ = std::fs::remove_file(f);
    }
    let out = out?;
    if out.code != 0 {
        return Err(FleetError::remote(
            host,
            format!(
                "checking out {} failed: {}",
                crate::plan::short(to),
                out.stderr.trim()
            ),
            "the host needs `git`; check free space in its state directory",
        ));
    }
    Ok(())
}

async fn t_run(
    fleet: &Fleet,
    host: &Host,
    words: &[String],
    input: Input,
) -> Result<super::ssh::Output, FleetError> {
    Ok(fleet.transport.run(host, words, input).await?)
}

/// Hosts are prepared in parallel, and the scratch repository has one ref
/// and one alternates file: one bundle is made at a time.
static ONE_BUNDLE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Writes a bundle of `to` (minus what `basis` has, when known here) to a
/// file under `dir` and returns it. The controller's repository is not
/// touched: a scratch bare repository borrows its objects (alternates) and
/// holds the one ref the bundle needs.
fn bundle(
    root: &Path,
    dir: &Path,
    to: &str,
    basis: Option<&str>,
    host: &str,
) -> Result<PathBuf, FleetError> {
    let fail = |what: String, e: std::io::Error| {
        FleetError::local(what, "fleet mode needs `git` on the controller", e)
    };
    let git = |args: &[&str], cwd: &Path| -> Result<std::process::Output, FleetError> {
        std::process::Command::new("git")
            .args(args)
            .current_dir(cwd)
            .output()
            .map_err(|e| fail(format!("run git {}", args.join(" ")), e))
    };
    let ok = |out: std::process::Output, what: &str| -> Result<String, FleetError> {
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(FleetError::Local {
                what: format!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim()),
                help: "fleet mode needs `git` on the controller and the commit in its repository"
                    .to_owned(),
                source: None,
            })
        }
    };
    let _guard = ONE_BUNDLE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let common = ok(
        git(
            &["rev-parse", "--path-format=absolute", "--git-common-dir"],
            root,
        )?,
        "find the repository's objects",
    )?;
    let ship = dir.join("ship.git");
    if !ship.join("objects").is_dir() {
        ok(
            git(&["init", "-q", "--bare", &ship.to_string_lossy()], dir)?,
            "create the scratch repository",
        )?;
    }
    let alternates = ship.join("objects/info/alternates");
    let want = format!("{common}/objects\n");
    if std::fs::read_to_string(&alternates).ok().as_deref() != Some(want.as_str()) {
        std::fs::create_dir_all(ship.join("objects/info"))
            .and_then(|()| crate::files::write_atomic(&alternates, want.as_bytes()))
            .map_err(|e| fail(format!("write {}", alternates.display()), e))?;
    }
    ok(
        git(&["update-ref", "refs/moorline/ship", to], &ship)?,
        &format!("find commit {to}"),
    )?;
    let file = dir.join(format!("{host}.bundle"));
    let file_s = file.to_string_lossy().into_owned();
    let mut args = vec!["bundle", "create", "-q", &file_s, "refs/moorline/ship"];
    let exclude;
    if let Some(b) = basis
        && git(&["cat-file", "-e", &format!("{b}^{{commit}}")], &ship)?
            .status
            .success()
        && b != to
    {
        exclude = format!("^{b}");
        args.push(&exclude);
    }
    let out = git(&args, &ship)?;
    if !out.status.success() {
        // Nothing new for the host (its HEAD already contains `to`): a
        // whole bundle is always valid.
        ok(
            git(
                &["bundle", "create", "-q", &file_s, "refs/moorline/ship"],
                &ship,
            )?,
            "create the git bundle",
        )?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The probe and checkout scripts run locally against a bundle made by
    /// [`bundle`]: a fresh repository gets the commit, a second bundle is
    /// incremental, and the checkout is detached and clean.
    #[test]
    fn bundles_ship_commits_into_a_clean_detached_checkout() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).unwrap();
        git(&src, &["init", "-q", "-b", "main"]);
        std::fs::write(src.join("a"), "1").unwrap();
        git(&src, &["add", "a"]);
        git(&src, &["commit", "-q", "-m", "one"]);
        let one = git(&src, &["rev-parse", "HEAD"]);
        let dir = tmp.path().join("fleet");
        std::fs::create_dir(&dir).unwrap();
        let host = tmp.path().join("host/repo");
        let run = |script: &str, args: &[&str], stdin: Option<&Path>| {
            let mut c = std::process::Command::new("sh");
            c.arg("-c").arg(script).arg("sh").args(args);
            if let Some(f) = stdin {
                c.stdin(std::fs::File::open(f).unwrap());
            }
            let out = c.output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let host_s = host.to_string_lossy().into_owned();
        let b = bundle(&src, &dir, &one, None, "h").unwrap();
        run(
            CHECKOUT,
            &[&host_s, &one, "bundle", "main", "keep"],
            Some(&b),
        );
        assert_eq!(
            git(&host, &["rev-parse", "HEAD"]),
            one,
            "no checkout yet: keep checks out"
        );
        std::fs::write(host.join("junk"), "x").unwrap();
        std::fs::write(src.join("a"), "2").unwrap();
        git(&src, &["commit", "-q", "-am", "two"]);
        let two = git(&src, &["rev-parse", "HEAD"]);
        let b = bundle(&src, &dir, &two, Some(&one), "h").unwrap();
        // Incremental: the first commit is a prerequisite, not in the bundle.
        let out = std::process::Command::new("git")
            .args(["bundle", "verify", &b.to_string_lossy()])
            .current_dir(&src)
            .output()
            .unwrap();
        let verify = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            verify.contains(&format!("requires this ref:\n{one}")),
            "{verify}"
        );
        // `keep` (status, logs, ...): the commits and the branch, the checkout untouched.
        run(
            CHECKOUT,
            &[&host_s, &two, "bundle", "main", "keep"],
            Some(&b),
        );
        assert_eq!(git(&host, &["rev-parse", "HEAD"]), one);
        assert_eq!(git(&host, &["rev-parse", "main"]), two);
        assert!(host.join("junk").exists());
        run(CHECKOUT, &[&host_s, &two, "checkout", "main", "move"], None);
        assert_eq!(git(&host, &["rev-parse", "HEAD"]), two);
        assert_eq!(std::fs::read_to_string(host.join("a")).unwrap(), "2");
        assert!(!host.join("junk").exists(), "the checkout is clean");
        assert_eq!(git(&host, &["rev-parse", "main"]), two);
        // Back to the first commit: the host has it, no bundle needed.
        run(CHECKOUT, &[&host_s, &one, "checkout", "main", "move"], None);
        assert_eq!(std::fs::read_to_string(host.join("a")).unwrap(), "1");
        // The controller's repository has no new refs.
        assert_eq!(git(&src, &["for-each-ref", "refs/moorline"]), "");
    }

    #[test]
    fn install_puts_the_file_in_place_once() {
        let tmp = tempfile::tempdir().unwrap();
        let payload = tmp.path().join("payload");
        std::fs::write(&payload, b"#!/bin/sh\necho hi\n").unwrap();
        let sum = hash_file(&payload).unwrap();
        let bin = tmp.path().join("bin");
        let run = |sum: &str| {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(INSTALL)
                .arg("sh")
                .arg(&bin)
                .arg("moorline-x")
                .arg(sum)
                .stdin(std::fs::File::open(&payload).unwrap())
                .output()
                .unwrap()
        };
        assert!(
            !run(&"0".repeat(64)).status.success(),
            "a corrupted upload is refused"
        );
        assert!(!bin.join("moorline-x").exists());
        assert!(run(&sum).status.success());
        assert_eq!(
            std::fs::read(bin.join("moorline-x")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        let ino = std::os::unix::fs::MetadataExt::ino(
            &std::fs::metadata(bin.join("moorline-x")).unwrap(),
        );
        assert!(run(&sum).status.success());
        let ino2 = std::os::unix::fs::MetadataExt::ino(
            &std::fs::metadata(bin.join("moorline-x")).unwrap(),
        );
        assert_eq!(ino, ino2, "an existing binary is never replaced");
        let leftovers: Vec<_> = std::fs::read_dir(&bin).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left");
    }
}

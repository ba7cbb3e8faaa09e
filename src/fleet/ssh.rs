//! The transport to fleet hosts: the system's OpenSSH `ssh` binary and
//! nothing else, so the user's `~/.ssh/config`, agent, `ProxyJump`,
//! certificates and `known_hosts` apply. In: a host and a remote argv; out:
//! its exit code and output, or a [`SshError`] that names the host.
//! Guarantees: one function builds every ssh argv ([`Transport::args`]),
//! one function quotes every remote word ([`quote`]), host keys are checked
//! strictly, and every master connection opened is closed by [`Transport::close_all`].

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use miette::Diagnostic;
use tokio::io::AsyncWriteExt;

use crate::config::Host;

/// How long `ssh` may take to connect (`ConnectTimeout`). A dead link is
/// reported after this; a wrong host key at once.
pub(crate) const CONNECT_TIMEOUT_SECS: u32 = 10;
/// How long a master connection outlives its last client (`ControlPersist`).
pub(crate) const CONTROL_PERSIST_SECS: u32 = 60;
/// The longest control socket path that works: `sun_path` holds 108 bytes
/// and ssh adds a 17-byte random suffix while it creates the socket.
const MAX_CONTROL_PATH: usize = 90;
/// ssh's own exit code for its errors (connect, authentication, host key).
const SSH_FAILED: i32 = 255;

#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum SshError {
    #[error("host {host} ({address}): the host key does not match known_hosts")]
    #[diagnostic(
        code(moorline::fleet::host_key),
        help(
            "nothing was done on {host}. If the host was reinstalled, check its new key out of band and update known_hosts (`{forget}`, then connect once by hand); otherwise treat this as an attack"
        )
    )]
    HostKey {
        host: String,
        address: String,
        detail: String,
        /// The command that removes the key ssh checked: the name it is
        /// stored under in known_hosts, as `ssh -G` resolves the host
        /// ([`known_hosts_entry`]).
        forget: String,
    },
    #[error("host {host} ({address}) is unreachable: {detail}")]
    #[diagnostic(
        code(moorline::fleet::unreachable),
        help(
            "check that `ssh {address}` works non-interactively (BatchMode: keys or an agent, no password prompt), or pass --skip-unreachable to count it against the rollout's max-fail"
        )
    )]
    Unreachable {
        host: String,
        address: String,
        detail: String,
    },
    #[error("cannot run `ssh` for host {host}")]
    #[diagnostic(
        code(moorline::fleet::ssh_spawn),
        help("fleet mode needs OpenSSH's `ssh` on the PATH of the controller")
    )]
    Spawn {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot prepare the ssh control directory {path}")]
    #[diagnostic(
        code(moorline::fleet::control_dir),
        help("check the permissions of the state directory")
    )]
    ControlDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl SshError {}

/// How the controller reaches its hosts: the ssh config file and where the
/// master connections' sockets live.
#[derive(Debug, Clone)]
pub struct Transport {
    /// `--ssh-config FILE`: passed as `-F FILE`.
    config_file: Option<PathBuf>,
    /// A private directory for control sockets.
    control_dir: PathBuf,
}

/// What a remote command reads on its standard input.
pub enum Input {
    Null,
    Bytes(Vec<u8>),
    File(PathBuf),
}

/// A finished remote command.
#[derive(Debug, Clone)]
pub struct Output {
    /// The remote command's exit code (255 may also be ssh's own failure,
    /// which [`Transport::run`] reports as an error when ssh says so).
    pub code: i32,
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: String,
}

/// How an ssh process uses the host's master connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Open the master and go to the background (`-M -N -f`).
    Open,
    /// Run a command through the master (or directly when it is gone).
    Use,
    /// Ask the master to exit (`-O exit`).
    Close,
    /// Ask whether a master runs (`-O check`).
    Check,
}

impl Transport {
    /// A transport whose control sockets live under `state_dir/ssh`, or,
    /// when that path is too long for a socket or cannot be written for
    /// ssh ([`ssh_can_read`]), under a private directory in the system's
    /// temporary directory named after it.
    pub fn new(config_file: Option<PathBuf>, state_dir: &Path) -> Result<Self, SshError> {
        let preferred = state_dir.join("ssh");
        let usable = |p: &Path| {
            p.as_os_str().len() + 1 + TOKEN_LEN <= MAX_CONTROL_PATH
                && p.to_str().is_some_and(ssh_can_read)
        };
        let control_dir = if usable(&preferred) {
            preferred
        } else {
            let digest = crate::files::sha256_hex(state_dir.as_os_str().as_encoded_bytes());
            std::env::temp_dir().join(format!("moorline-ssh-{}", &digest[..12]))
        };
        if !control_dir.to_str().is_some_and(ssh_can_read) {
            return Err(SshError::ControlDir {
                path: control_dir.display().to_string(),
                source: std::io::Error::other(
                    "ssh cannot be given this path: it holds `${`, a control character or bytes that are not UTF-8",
                ),
            });
        }
        crate::files::tighten(&control_dir).map_err(|source| SshError::ControlDir {
            path: control_dir.display().to_string(),
            source,
        })?;
        Ok(Self {
            config_file,
            control_dir,
        })
    }

    /// The control socket of `host`: a short hash of where it connects,
    /// so the path stays far below the socket path limit.
    fn control_path(&self, host: &Host) -> PathBuf {
        let who = format!(
            "{}@{}:{}",
            host.user.as_deref().unwrap_or(""),
            host.address,
            host.port.map_or_else(String::new, |p| p.to_string())
        );
        self.control_dir
            .join(&crate::files::sha256_hex(who.as_bytes())[..TOKEN_LEN])
    }

    /// Every argument after `ssh` for `host`: the one place ssh options are
    /// chosen. `remote` is the remote argv, quoted for the remote shell.
    fn args(&self, host: &Host, mode: Mode, remote: &[String]) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        if let Some(f) = &self.config_file {
            a.push("-F".into());
            a.push(f.into());
        }
        for opt in [
            "BatchMode=yes".to_owned(),
            format!("ConnectTimeout={CONNECT_TIMEOUT_SECS}"),
            "StrictHostKeyChecking=yes".to_owned(),
            // A dead link mid-command is noticed instead of hanging.
            "ServerAliveInterval=5".to_owned(),
            "ServerAliveCountMax=3".to_owned(),
        ] {
            a.push("-o".into());
            a.push(opt.into());
        }
        // `Transport::new` chose a UTF-8 directory ssh can read.
        let control = self.control_path(host);
        a.push("-o".into());
        a.push(format!("ControlPath={}", config_path(&control.to_string_lossy())).into());
        match mode {
            Mode::Open => {
                for opt in [
                    "ControlMaster=yes".to_owned(),
                    format!("ControlPersist={CONTROL_PERSIST_SECS}"),
                ] {
                    a.push("-o".into());
                    a.push(opt.into());
                }
                a.extend(["-N".into(), "-f".into()]);
            }
            // `no`: use the master when it is there, connect directly when
            // it is not, and never start a master that would hold our pipes.
            Mode::Use => a.extend(["-o".into(), "ControlMaster=no".into()]),
            Mode::Close => a.extend(["-O".into(), "exit".into()]),
            Mode::Check => a.extend(["-O".into(), "check".into()]),
        }
        if let Some(u) = &host.user {
            a.push("-l".into());
            a.push(u.into());
        }
        if let Some(p) = host.port {
            a.push("-p".into());
            a.push(p.to_string().into());
        }
        // `--` so that an address can never be read as an option.
        a.push("--".into());
        a.push((&host.address).into());
        if mode == Mode::Use && !remote.is_empty() {
            a.push(command_line(remote).into());
        }
        a
    }

    fn command(&self, host: &Host, mode: Mode, remote: &[String]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("ssh");
        c.args(self.args(host, mode, remote)).kill_on_drop(true);
        c
    }

    /// Opens `host`'s master connection (which later commands share); an
    /// unreachable host or a wrong host key is an error naming the host.
    pub async fn open(&self, host: &Host) -> Result<(), SshError> {
        // A master left by an earlier controller (killed, or within its
        // ControlPersist) is reused: opening a second one on the same
        // socket would leave a plain connection in the background.
        let alive = self
            .command(host, Mode::Check, &[])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .is_ok_and(|s| s.success());
        if alive {
            return Ok(());
        }
        let out = self
            .command(host, Mode::Open, &[])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .await
            .map_err(|source| SshError::Spawn {
                host: host.name.clone(),
                source,
            })?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        match out.status.code() {
            Some(0) => Ok(()),
            code => Err(self
                .resolved(
                    host,
                    classify(host, code.unwrap_or(SSH_FAILED), &stderr)
                        .unwrap_or_else(|| unreachable(host, &stderr)),
                )
                .await),
        }
    }

    /// `e`, a host key error naming the known_hosts entry ssh really
    /// checked: an ssh alias (`Host app1` with `HostName 10.0.0.11`) is
    /// stored under its address, a port other than 22 as `[addr]:port`, a
    /// `HostKeyAlias` under the alias, in the `UserKnownHostsFile` the
    /// configuration names. Read from `ssh -G`, which resolves the
    /// configuration without connecting; when it cannot, the address.
    async fn resolved(&self, host: &Host, e: SshError) -> SshError {
        let SshError::HostKey {
            host: name,
            address,
            detail,
            forget,
        } = e
        else {
            return e;
        };
        let mut c = tokio::process::Command::new("ssh");
        if let Some(f) = &self.config_file {
            c.arg("-F").arg(f);
        }
        if let Some(u) = &host.user {
            c.arg("-l").arg(u);
        }
        if let Some(p) = host.port {
            c.arg("-p").arg(p.to_string());
        }
        c.arg("-G").arg("--").arg(&host.address);
        let resolved = c
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| known_hosts_entry(&String::from_utf8_lossy(&o.stdout)));
        SshError::HostKey {
            host: name,
            address,
            detail,
            forget: resolved.unwrap_or(forget),
        }
    }

    /// Runs `remote` on `host` and waits for it. ssh's own failures
    /// (exit 255 with ssh's message) are errors; any other exit code is
    /// the remote command's and is returned.
    pub async fn run(
        &self,
        host: &Host,
        remote: &[String],
        input: Input,
    ) -> Result<Output, SshError> {
        let spawn_err = |source| SshError::Spawn {
            host: host.name.clone(),
            source,
        };
        let stdin = match &input {
            Input::Null => Stdio::null(),
            Input::Bytes(_) => Stdio::piped(),
            Input::File(p) => Stdio::from(std::fs::File::open(p).map_err(spawn_err)?),
        };
        let mut child = self
            .command(host, Mode::Use, remote)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        if let Input::Bytes(b) = input
            && let Some(mut w) = child.stdin.take()
        {
            // A remote side that exits without reading is seen in its exit
            // code; a broken pipe here is not an error of its own.
            let _ = w.write_all(&b).await;
            drop(w);
        }
        let out = child.wait_with_output().await.map_err(spawn_err)?;
        // What a remote command says on stderr ends up in errors, output and
        // the fleet journal: redacted here, once, like every command's output.
        let stderr = crate::secrets::redact(&String::from_utf8_lossy(&out.stderr));
        let code = out.status.code().unwrap_or(SSH_FAILED);
        if let Some(e) = classify(host, code, &stderr) {
            return Err(self.resolved(host, e).await);
        }
        Ok(Output {
            code,
            stdout: out.stdout,
            stderr,
        })
    }

    /// Starts `remote` on `host` with piped stdin, stdout and stderr, for
    /// callers that stream (a host's apply events).
    pub(crate) fn spawn(
        &self,
        host: &Host,
        remote: &[String],
    ) -> Result<tokio::process::Child, SshError> {
        self.command(host, Mode::Use, remote)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| SshError::Spawn {
                host: host.name.clone(),
                source,
            })
    }

    /// Closes the master connections of `hosts` (`ssh -O exit`); a host
    /// without one is fine.
    pub async fn close_all(&self, hosts: &[Host]) {
        let mut set = tokio::task::JoinSet::new();
        for h in hosts {
            let mut c = self.command(h, Mode::Close, &[]);
            c.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            set.spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(5), c.status()).await;
            });
        }
        while set.join_next().await.is_some() {}
    }
}

/// Characters of a control socket's name.
const TOKEN_LEN: usize = 16;

/// Whether ssh can read `path` back exactly from a configuration line
/// (`-o ControlPath=...`, `IdentityFile` in a config file) once
/// [`config_path`] wrote it: ssh expands `${NAME}` in those options and has
/// no escape for it, and a control character would end or corrupt the
/// line.
pub(crate) fn ssh_can_read(path: &str) -> bool {
    !path.contains("${") && !path.chars().any(char::is_control)
}

/// `path` as one argument of an ssh configuration line for an option that
/// expands `%` tokens, `${NAME}` and a leading `~` (ControlPath,
/// IdentityFile, UserKnownHostsFile, ...), so that ssh uses exactly
/// `path`: every `%` doubled (ssh reads `%%` as `%`, and `%h`, `%C`, ...
/// as tokens), a relative path that starts with `~` prefixed with `./`,
/// and the whole in double quotes with `"` and `\` escaped (ssh splits a
/// line at spaces and reads quotes and backslashes). Only for a path that
/// [`ssh_can_read`].
pub(crate) fn config_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len() + 4);
    out.push('"');
    if path.starts_with('~') {
        out.push_str("./");
    }
    for c in path.chars() {
        match c {
            '%' => out.push_str("%%"),
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Whether an ssh exit is ssh's own failure, and which: exit 255 with a
/// host key message is a key mismatch; other 255s with ssh's typical
/// messages are an unreachable host. A remote command's own 255 (no such
/// message) is left to the caller.
pub(crate) fn classify(host: &Host, code: i32, stderr: &str) -> Option<SshError> {
    if code != SSH_FAILED {
        return None;
    }
    let key_markers = [
        "Host key verification failed",
        "REMOTE HOST IDENTIFICATION HAS CHANGED",
        "No ED25519 host key is known",
        "No RSA host key is known",
        "No ECDSA host key is known",
        "host key for",
    ];
    if key_markers.iter().any(|m| stderr.contains(m)) {
        return Some(SshError::HostKey {
            host: host.name.clone(),
            address: host.address.clone(),
            detail: last_line(stderr),
            forget: format!("ssh-keygen -R {}", quote(&host.address)),
        });
    }
    let ssh_markers = [
        "ssh:",
        "Connection",
        "Permission denied",
        "timed out",
        "Could not resolve",
        "kex_exchange_identification",
        "Broken pipe",
        "Timeout, server",
        "closed by remote host",
        "Control socket",
    ];
    if stderr.is_empty() || ssh_markers.iter().any(|m| stderr.contains(m)) {
        return Some(unreachable(host, stderr));
    }
    None
}

/// The `ssh-keygen -R` command that removes the key ssh checks for a
/// host, from `ssh -G` output (`keyword value` lines): known_hosts stores
/// a key under `HostKeyAlias` when set, else under the resolved `HostName`,
/// written `[name]:port` for a port other than 22 (sshd(8), "SSH_KNOWN_HOSTS
/// FILE FORMAT"); `-f` names the first `UserKnownHostsFile` unless it is
/// the default `~/.ssh/known_hosts`. `None` when there is no host name.
pub(crate) fn known_hosts_entry(ssh_g: &str) -> Option<String> {
    let value = |key: &str| {
        ssh_g.lines().find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k.eq_ignore_ascii_case(key) && !v.trim().is_empty()).then(|| v.trim().to_owned())
        })
    };
    let name = if let Some(alias) = value("hostkeyalias") {
        alias
    } else {
        let hostname = value("hostname")?;
        match value("port").as_deref() {
            None | Some("22") => hostname,
            Some(port) => format!("[{hostname}]:{port}"),
        }
    };
    let mut cmd = format!("ssh-keygen -R {}", quote(&name));
    // `ssh -G` prints the files space-separated, `~` expanded.
    if let Some(file) = value("userknownhostsfile")
        .as_deref()
        .and_then(|f| f.split_whitespace().next())
        .filter(|f| !f.ends_with("/.ssh/known_hosts"))
    {
        cmd.push_str(" -f ");
        cmd.push_str(&quote(file));
    }
    Some(cmd)
}

fn unreachable(host: &Host, stderr: &str) -> SshError {
    SshError::Unreachable {
        host: host.name.clone(),
        address: host.address.clone(),
        detail: if stderr.trim().is_empty() {
            "ssh exited 255 without a message".to_owned()
        } else {
            last_line(stderr)
        },
    }
}

/// The last non-empty line of ssh's message: the one that says why.
fn last_line(s: &str) -> String {
    s.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('@'))
        .unwrap_or("")
        .to_owned()
}

/// One word quoted for a POSIX shell: single quotes around it, each `'`
/// inside written as `'\''`. Every byte other than `'` is literal inside
/// single quotes, so the remote shell sees exactly `word`.
pub(crate) fn quote(word: &str) -> String {
    let mut q = String::with_capacity(word.len() + 2);
    q.push('\'');
    for c in word.chars() {
        if c == '\'' {
            q.push_str("'\\''");
        } else {
            q.push(c);
        }
    }
    q.push('\'');
    q
}

/// The remote command line ssh hands to the remote user's shell: every
/// word quoted by [`quote`], joined by spaces.
pub(crate) fn command_line(words: &[String]) -> String {
    words.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn host() -> Host {
        Host {
            name: "app1".into(),
            address: "10.0.0.11".into(),
            user: Some("deploy".into()),
            port: Some(2222),
            roles: vec![],
        }
    }

    #[test]
    fn argv_has_strict_keys_batch_mode_and_a_short_control_path() {
        let dir = tempfile::tempdir().unwrap();
        let t = Transport::new(Some("/etc/fleet_ssh".into()), dir.path()).unwrap();
        let args: Vec<String> = t
            .args(&host(), Mode::Use, &["moorline".into(), "--version".into()])
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let joined = args.join(" ");
        for want in [
            "-F /etc/fleet_ssh",
            "-o BatchMode=yes",
            "-o StrictHostKeyChecking=yes",
            "-o ConnectTimeout=10",
            "-o ControlMaster=no",
            "-l deploy",
            "-p 2222",
            "-- 10.0.0.11 'moorline' '--version'",
        ] {
            assert!(joined.contains(want), "{want} missing from {joined}");
        }
        // Quoted for ssh's configuration line.
        let cp = args
            .iter()
            .find_map(|a| a.strip_prefix("ControlPath=\""))
            .and_then(|a| a.strip_suffix('"'))
            .unwrap();
        assert!(cp.len() <= MAX_CONTROL_PATH, "{cp}");
        assert!(cp.starts_with(&dir.path().display().to_string()), "{cp}");
    }

    /// What ssh itself makes of `ControlPath=WORD` (`ssh -G` prints the
    /// expanded option); `None` without an ssh client.
    fn ssh_reads(word: &str) -> Option<String> {
        let out = std::process::Command::new("ssh")
            .args(["-G", "-F", "/dev/null", "-o"])
            .arg(format!("ControlPath={word}"))
            .arg("example.invalid")
            .output()
            .ok()?;
        assert!(out.status.success(), "{word}: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("controlpath "))
            .map(str::to_owned)
    }

    #[test]
    fn paths_reach_ssh_exactly() {
        let cases = [
            "/srv/state/ssh/0123456789abcdef",
            "/srv/100%/ssh/%h-%C-%%-%",
            "/srv/a b/\"q\"/it's/ #x/$HOME/{}/$",
            "/srv/${HOME}/x",
            "~user/ssh",
            "rel/%d/ssh",
            "/srv/\\back\\slash\\",
            "/tmp/ünïcødé/ssh",
        ];
        for path in cases {
            let readable = ssh_can_read(path);
            assert_eq!(readable, !path.contains("${"), "{path}");
            if !readable {
                continue;
            }
            let Some(got) = ssh_reads(&config_path(path)) else {
                return;
            };
            let want = if path.starts_with('~') {
                format!("./{path}")
            } else {
                path.to_owned()
            };
            assert_eq!(got, want, "{path} as {}", config_path(path));
        }
        assert!(!ssh_can_read("/srv/a\nb"));
    }

    #[test]
    fn a_state_dir_with_percent_keeps_its_sockets_there() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("100%h");
        let t = Transport::new(None, &state).unwrap();
        assert_eq!(t.control_dir, state.join("ssh"));
        let args: Vec<String> = t
            .args(&host(), Mode::Use, &[])
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let cp = args
            .iter()
            .find_map(|a| a.strip_prefix("ControlPath="))
            .unwrap();
        assert!(cp.contains("100%%h/ssh/"), "{cp}");
        // A state directory ssh cannot be told about: the sockets go to
        // the private directory in the temporary directory.
        let odd = dir.path().join("${HOME}");
        let t = Transport::new(None, &odd).unwrap();
        assert!(t.control_dir.starts_with(std::env::temp_dir()));
        let _ = std::fs::remove_dir(&t.control_dir);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever the path, ssh reads back exactly what moorline wrote.
        #[test]
        fn any_path_ssh_can_read_round_trips(path in "[/a-z %$~{}\"'\\\\#=]{1,24}") {
            prop_assume!(ssh_can_read(&path));
            if let Some(got) = ssh_reads(&config_path(&path)) {
                let want = if path.starts_with('~') { format!("./{path}") } else { path.clone() };
                prop_assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn a_long_state_dir_moves_control_sockets_to_a_short_private_dir() {
        let dir = tempfile::tempdir().unwrap();
        let long = dir.path().join("x".repeat(100));
        let t = Transport::new(None, &long).unwrap();
        let cp = t.control_path(&host());
        assert!(cp.as_os_str().len() <= MAX_CONTROL_PATH, "{}", cp.display());
        let _ = std::fs::remove_dir(&t.control_dir);
    }

    #[test]
    fn ssh_failures_are_classified_by_message() {
        let h = host();
        for (code, stderr, want) in [
            (255, "Host key verification failed.\r\n", Some("host key")),
            (
                255,
                "@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n",
                Some("host key"),
            ),
            (
                255,
                "ssh: connect to host 10.0.0.11 port 22: Connection timed out\r\n",
                Some("unreachable"),
            ),
            (255, "", Some("unreachable")),
            (255, "moorline: error: something of its own", None),
            (3, "Connection refused", None),
            (0, "", None),
        ] {
            let got = classify(&h, code, stderr).map(|e| match e {
                SshError::HostKey { .. } => "host key",
                SshError::Unreachable { .. } => "unreachable",
                _ => "other",
            });
            assert_eq!(got, want, "{code} {stderr:?}");
        }
    }

    #[test]
    fn the_known_hosts_entry_is_what_ssh_resolves() {
        let files = "userknownhostsfile /root/.ssh/known_hosts /root/.ssh/known_hosts2\n";
        for (g, want) in [
            (
                format!("hostname 10.0.0.11\nport 22\n{files}"),
                Some("ssh-keygen -R '10.0.0.11'"),
            ),
            (
                format!("hostname 10.0.0.11\nport 2222\n{files}"),
                Some("ssh-keygen -R '[10.0.0.11]:2222'"),
            ),
            (
                format!("hostname 10.0.0.11\nport 2222\nhostkeyalias app1\n{files}"),
                Some("ssh-keygen -R 'app1'"),
            ),
            (
                "hostname 10.0.0.11\nport 22\nuserknownhostsfile /etc/fleet/known hosts2\n"
                    .to_owned(),
                Some("ssh-keygen -R '10.0.0.11' -f '/etc/fleet/known'"),
            ),
            ("port 22\n".to_owned(), None),
        ] {
            assert_eq!(known_hosts_entry(&g).as_deref(), want, "{g}");
        }
    }

    #[test]
    fn a_host_key_error_names_the_host() {
        let e = classify(&host(), 255, "Host key verification failed.").unwrap();
        assert!(e.to_string().contains("app1"), "{e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// What `sh -c` receives after the remote shell parses our command
        /// line is exactly the argv we quoted.
        #[test]
        fn quoting_round_trips_through_sh(words in proptest::collection::vec("[^\0]{0,12}", 1..5)) {
            let mut line = String::from("printf '%s\\0'");
            for w in &words {
                line.push(' ');
                line.push_str(&quote(w));
            }
            let out = std::process::Command::new("sh").arg("-c").arg(&line).output().unwrap();
            prop_assert!(out.status.success());
            let got: Vec<String> = out
                .stdout
                .split(|b| *b == 0)
                .filter(|_| true)
                .map(|b| String::from_utf8(b.to_vec()).unwrap())
                .collect();
            // printf's output ends with a NUL, so the split has a trailing "".
            prop_assert_eq!(&got[..got.len() - 1], &words[..]);
        }
    }
}

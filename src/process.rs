//! Child processes: every configured command (build, migrate, backup,
//! restore, proxy check) runs here, from an argv (never a shell string),
//! with a working directory, an environment and a timeout. Guarantees:
//!
//! - The command runs in its own process group. When it exits, times out,
//!   or moorline gets SIGINT/SIGTERM while it runs, the whole group gets
//!   SIGKILL: nothing it started in the background outlives it (a process
//!   that left the group with `setsid` is out of reach; moorline stops
//!   reading its output [`DRAIN_GRACE`] after the command ended).
//! - Under an apply, resume or rollback the group is recorded in the
//!   journal as soon as it started ([`orphans`]), so that the next resume
//!   or rollback stops it should moorline itself be killed (SIGKILL).
//! - Its output (stdout and stderr, interleaved by line) is read through
//!   pipes, redacted ([`crate::secrets`]) and written to a private log
//!   (0600, directories 0700). A line is cut at [`LINE_CAP`] bytes and the
//!   log at [`OUTPUT_CAP`] bytes; both cuts are stated in the log.
//! - The error of a failed command carries at most [`TAIL_LINES`] lines of
//!   its output, each at most [`TAIL_LINE_CAP`] bytes, already redacted.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use miette::Diagnostic;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::secrets::{self, Redactor};

pub(crate) mod orphans;

/// Variables every configured command gets from moorline's own
/// environment, when set there: `PATH` (to find `npm`, `python3`, ...),
/// `HOME` (where package managers keep their caches and configuration) and
/// `LANG` (the encoding tools read and write). Nothing else of moorline's
/// environment reaches a command unless the environment's `pass-env` names
/// it: a build from the repository must not read the credentials of the CI
/// runner or of the operator's shell.
pub(crate) const BASE_ENV: &[&str] = &["PATH", "HOME", "LANG"];

/// `PATH` when moorline itself has none: systemd's default for services.
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The whole environment of every configured command (build, deps step,
/// migrate, backup, restore, proxy check, `migrate-status`), in order of
/// precedence, lowest first:
///
/// 1. [`BASE_ENV`] from moorline's environment (`PATH` defaults to
///    [`DEFAULT_PATH`]);
/// 2. the environment's `pass-env` variables that are set in moorline's
///    environment;
/// 3. the environment's env-files, then its `env`;
/// 4. moorline's own variables: `MOORLINE_ENV`, `MOORLINE_ROOT`, and
///    `MOORLINE_SERVICE` / `MOORLINE_RELEASE` for a command that belongs
///    to a service's release.
///
/// Nothing else is inherited ([`run`] clears the rest), moorline's own
/// `MOORLINE_*` settings (`MOORLINE_CONFIG`, the test hooks) included. A
/// value that is not UTF-8 is not passed.
pub(crate) fn command_env(
    env: &crate::config::Environment,
    service: Option<&str>,
    release_dir: Option<&str>,
) -> BTreeMap<String, String> {
    command_env_from(env, service, release_dir, |k| std::env::var(k).ok())
}

/// [`command_env`] with moorline's environment read through `outer`.
fn command_env_from(
    env: &crate::config::Environment,
    service: Option<&str>,
    release_dir: Option<&str>,
    outer: impl Fn(&str) -> Option<String>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for k in BASE_ENV
        .iter()
        .copied()
        .chain(env.pass_env.iter().map(String::as_str))
    {
        if let Some(v) = outer(k) {
            out.insert(k.to_owned(), v);
        }
    }
    out.entry("PATH".to_owned())
        .or_insert_with(|| DEFAULT_PATH.to_owned());
    for f in &env.env_files {
        out.extend(crate::release::read_env_file(Path::new(f)));
    }
    for (k, v) in &env.env {
        out.insert(k.clone(), v.value.clone());
    }
    out.insert("MOORLINE_ENV".to_owned(), env.name.clone());
    out.insert("MOORLINE_ROOT".to_owned(), env.root.clone());
    if let Some(s) = service {
        out.insert("MOORLINE_SERVICE".to_owned(), s.to_owned());
    }
    if let Some(r) = release_dir {
        out.insert("MOORLINE_RELEASE".to_owned(), r.to_owned());
    }
    out
}

/// Longest line kept in a log; the rest of the line is dropped and the cut
/// is marked.
pub(crate) const LINE_CAP: usize = 4 * 1024;
/// Most bytes of output kept in one command's log (16 MiB); later output
/// is read and counted but not written.
pub(crate) const OUTPUT_CAP: u64 = 16 * 1024 * 1024;
/// Lines of a failed command's output shown in its error.
pub(crate) const TAIL_LINES: usize = 20;
/// Longest line shown in an error's tail.
pub(crate) const TAIL_LINE_CAP: usize = 300;
/// How long output is still read after the command's process group was
/// killed (only a process that escaped the group can keep a pipe open).
pub(crate) const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// Bytes read from a pipe at a time.
const CHUNK: usize = 16 * 1024;

#[derive(Debug, thiserror::Error, Diagnostic)]
pub(crate) enum RunError {
    #[error("`{program}` could not be started")]
    #[diagnostic(
        code(moorline::run::spawn),
        help(
            "check that the program exists on the host and is executable (commands run without a shell)"
        )
    )]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` exited with {status}\n{tail}")]
    #[diagnostic(code(moorline::run::failed), help("the full output is in {log}"))]
    Failed {
        command: String,
        status: String,
        tail: String,
        log: String,
    },
    #[error("`{command}` did not finish within {secs}s and was killed\n{tail}")]
    #[diagnostic(
        code(moorline::run::timeout),
        help(
            "raise the command's timeout= in the config if it is legitimately slow; output in {log}"
        )
    )]
    Timeout {
        command: String,
        secs: u64,
        tail: String,
        log: String,
    },
    #[error("`{command}` was killed because moorline received {signal}\n{tail}")]
    #[diagnostic(
        code(moorline::run::interrupted),
        help("run it again when ready; its output is in {log}")
    )]
    Interrupted {
        command: String,
        signal: &'static str,
        tail: String,
        log: String,
    },
    #[error("`{command}` was stopped: its process group could not be recorded: {error}")]
    #[diagnostic(
        code(moorline::run::unrecorded),
        help(
            "moorline runs no command it could not stop after a crash; check free space and permissions of the state directory"
        )
    )]
    Unrecorded {
        command: String,
        error: orphans::RecordError,
    },
    #[error("cannot write {path}")]
    #[diagnostic(code(moorline::run::io), help("check free space and permissions"))]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A command to run.
pub(crate) struct Run<'a> {
    pub(crate) argv: &'a [String],
    pub(crate) dir: Option<&'a Path>,
    /// The command's whole environment: nothing of moorline's own is
    /// inherited besides it (see [`command_env`]).
    pub(crate) env: &'a BTreeMap<String, String>,
    pub(crate) timeout: Duration,
    pub(crate) log: &'a Path,
}

/// How the command ended.
enum Ended {
    Exited(std::process::ExitStatus),
    TimedOut,
    Signal(&'static str),
    WaitFailed(std::io::Error),
}

/// Runs a command to completion, its output (redacted, capped) to the log.
pub(crate) async fn run(r: Run<'_>) -> Result<(), RunError> {
    let io_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| RunError::Io { path, source }
    };
    let Some((program, args)) = r.argv.split_first() else {
        return Err(RunError::Spawn {
            program: String::new(),
            source: std::io::Error::other("empty command"),
        });
    };
    if let Some(parent) = r.log.parent() {
        crate::files::private_dir(parent).map_err(io_err(parent))?;
    }
    let log = crate::files::private_file(r.log).map_err(io_err(r.log))?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(r.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(d) = r.dir {
        cmd.current_dir(d);
    }
    let mut child = cmd.spawn().map_err(|source| RunError::Spawn {
        program: program.clone(),
        source,
    })?;
    // The group's id is the child's pid (`process_group(0)`).
    let pgid = child.id();
    if let Some(recorder) = orphans::recorder() {
        let recorded = match pgid {
            Some(leader) => tokio::task::spawn_blocking(move || {
                let g = orphans::identify(leader)
                    .map_err(|error| orphans::RecordError::Identify { leader, error })?;
                recorder(&g)
            })
            .await
            .unwrap_or_else(|error| Err(orphans::RecordError::Task { error })),
            None => Err(orphans::RecordError::Ended),
        };
        if let Err(error) = recorded {
            kill_group(pgid);
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(RunError::Unrecorded {
                command: r.argv.join(" "),
                error,
            });
        }
    }

    let redactor = secrets::known();
    let keep = LINE_CAP + redactor.longest();
    let (tx, mut rx) = mpsc::channel::<Msg>(256);
    let mut readers = tokio::task::JoinSet::new();
    if let Some(out) = child.stdout.take() {
        readers.spawn(pump(out, tx.clone(), keep));
    }
    if let Some(err) = child.stderr.take() {
        readers.spawn(pump(err, tx.clone(), keep));
    }
    let writer = tokio::task::spawn_blocking(move || {
        let mut capture = Capture::new(redactor, std::io::BufWriter::new(log));
        while let Some(msg) = rx.blocking_recv() {
            capture.take(msg);
        }
        capture.finish()
    });

    let ended = wait(&mut child, r.timeout).await;
    // Whatever happened, nothing the command started outlives it.
    kill_group(pgid);
    if !matches!(ended, Ended::Exited(_)) {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    let drained = tokio::time::timeout(DRAIN_GRACE, async {
        while readers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        readers.abort_all();
        let _ = tx
            .send(Msg::Note(format!(
                "[moorline: stopped reading output {}s after the command ended: a process outside its group still holds the pipe]",
                DRAIN_GRACE.as_secs()
            )))
            .await;
    }
    drop(tx);
    let written = match writer.await {
        Ok(w) => w,
        Err(e) => Err(std::io::Error::other(e)),
    };
    let log_s = r.log.display().to_string();
    let shown = r.argv.join(" ");
    let tail = |w: &Result<Vec<String>, std::io::Error>| match w {
        Ok(lines) => format_tail(lines),
        Err(e) => format!("    | (output not captured: {e})"),
    };
    match ended {
        Ended::Exited(status) if status.success() => {
            written.map(|_| ()).map_err(|source| RunError::Io {
                path: log_s,
                source,
            })
        }
        Ended::Exited(status) => Err(RunError::Failed {
            command: shown,
            status: status.to_string(),
            tail: tail(&written),
            log: log_s,
        }),
        Ended::TimedOut => Err(RunError::Timeout {
            command: shown,
            secs: r.timeout.as_secs(),
            tail: tail(&written),
            log: log_s,
        }),
        Ended::Signal(signal) => Err(RunError::Interrupted {
            command: shown,
            signal,
            tail: tail(&written),
            log: log_s,
        }),
        Ended::WaitFailed(source) => Err(RunError::Spawn {
            program: program.clone(),
            source,
        }),
    }
}

/// Waits for the child, its timeout, or a signal to moorline.
async fn wait(child: &mut tokio::process::Child, timeout: Duration) -> Ended {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigint = signal(SignalKind::interrupt()).ok();
    let mut sigterm = signal(SignalKind::terminate()).ok();
    tokio::select! {
        r = tokio::time::timeout(timeout, child.wait()) => match r {
            Ok(Ok(status)) => Ended::Exited(status),
            Ok(Err(e)) => Ended::WaitFailed(e),
            Err(_) => Ended::TimedOut,
        },
        () = recv(&mut sigint) => Ended::Signal("SIGINT"),
        () = recv(&mut sigterm) => Ended::Signal("SIGTERM"),
    }
}

async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// SIGKILL to every process in the group (none left is fine).
fn kill_group(pgid: Option<u32>) {
    let group = pgid
        .and_then(|p| i32::try_from(p).ok())
        .and_then(rustix::process::Pid::from_raw);
    if let Some(group) = group {
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
    }
}

/// What the pipe readers hand the log writer.
#[derive(Debug)]
enum Msg {
    Line(Line),
    /// A line moorline adds (not redacted, not counted as output).
    Note(String),
}

/// One line of output: its first `keep` bytes, and how many more it had.
#[derive(Debug, PartialEq, Eq)]
struct Line {
    bytes: Vec<u8>,
    dropped: usize,
}

/// Splits a byte stream into lines, keeping at most `keep` bytes of each
/// however the stream is chunked.
struct Splitter {
    keep: usize,
    cur: Vec<u8>,
    dropped: usize,
    /// Whether the current line has any bytes (kept or dropped).
    open: bool,
}

impl Splitter {
    fn new(keep: usize) -> Self {
        Self {
            keep,
            cur: Vec::new(),
            dropped: 0,
            open: false,
        }
    }

    fn push(&mut self, mut chunk: &[u8], out: &mut Vec<Line>) {
        while let Some(i) = chunk.iter().position(|&b| b == b'\n') {
            self.extend(&chunk[..i]);
            out.push(self.take());
            chunk = &chunk[i + 1..];
        }
        self.extend(chunk);
    }

    fn extend(&mut self, part: &[u8]) {
        let room = self.keep.saturating_sub(self.cur.len());
        let n = room.min(part.len());
        self.cur.extend_from_slice(&part[..n]);
        self.dropped += part.len() - n;
        self.open |= !part.is_empty();
    }

    fn take(&mut self) -> Line {
        self.open = false;
        Line {
            bytes: std::mem::take(&mut self.cur),
            dropped: std::mem::take(&mut self.dropped),
        }
    }

    /// The last line if the stream did not end with a newline.
    fn finish(&mut self) -> Option<Line> {
        self.open.then(|| self.take())
    }
}

/// Reads a pipe to its end, line by line, into the channel.
async fn pump<R: tokio::io::AsyncRead + Unpin>(mut pipe: R, tx: mpsc::Sender<Msg>, keep: usize) {
    let mut split = Splitter::new(keep);
    let mut buf = vec![0u8; CHUNK];
    let mut lines = Vec::new();
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        split.push(&buf[..n], &mut lines);
        for l in lines.drain(..) {
            if tx.send(Msg::Line(l)).await.is_err() {
                return;
            }
        }
    }
    if let Some(l) = split.finish() {
        let _ = tx.send(Msg::Line(l)).await;
    }
}

/// The log writer: redacts, caps, keeps the tail.
struct Capture<W: Write> {
    redactor: Redactor,
    out: W,
    /// Bytes written to the log (output lines only).
    written: u64,
    /// Bytes of output the command produced.
    seen: u64,
    full: bool,
    tail: VecDeque<String>,
    error: Option<std::io::Error>,
}

impl<W: Write> Capture<W> {
    fn new(redactor: Redactor, out: W) -> Self {
        Self {
            redactor,
            out,
            written: 0,
            seen: 0,
            full: false,
            tail: VecDeque::with_capacity(TAIL_LINES),
            error: None,
        }
    }

    fn take(&mut self, msg: Msg) {
        match msg {
            Msg::Line(line) => self.line(&line),
            Msg::Note(note) => self.write(&note),
        }
    }

    fn line(&mut self, line: &Line) {
        let original = line.bytes.len() + line.dropped;
        self.seen += original as u64 + 1;
        let text = String::from_utf8_lossy(&line.bytes);
        let (shown, cut) = self.redactor.redact_prefix(&text, LINE_CAP);
        let shown = if cut || line.dropped > 0 {
            format!("{shown} [moorline: line cut at {LINE_CAP} bytes; it had {original}]")
        } else {
            shown.into_owned()
        };
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(cap(&shown, TAIL_LINE_CAP));
        if self.full || self.written + shown.len() as u64 + 1 > OUTPUT_CAP {
            self.full = true;
            return;
        }
        self.written += shown.len() as u64 + 1;
        self.write(&shown);
    }

    fn write(&mut self, line: &str) {
        if self.error.is_none()
            && let Err(e) = writeln!(self.out, "{line}")
        {
            self.error = Some(e);
        }
    }

    /// States the cap if it was reached, flushes; the tail.
    fn finish(mut self) -> Result<Vec<String>, std::io::Error> {
        if self.full {
            let note = format!(
                "[moorline: output truncated after {} bytes (cap {OUTPUT_CAP}); the command wrote {} bytes]",
                self.written, self.seen
            );
            self.write(&note);
            self.tail.push_back(note);
            if self.tail.len() > TAIL_LINES {
                self.tail.pop_front();
            }
        }
        if let Some(e) = self.error {
            return Err(e);
        }
        self.out.flush()?;
        Ok(self.tail.into())
    }
}

/// `s` cut to at most `max` bytes (at a character boundary), marked.
fn cap(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Tail lines, indented, for a report.
fn format_tail(lines: &[String]) -> String {
    lines
        .iter()
        .map(|l| format!("    | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redactor(values: &[&str]) -> Redactor {
        let mut r = Redactor::new();
        for v in values {
            r.add(v);
        }
        r
    }

    /// Feeds `chunks` through a splitter and a capture; the log text and
    /// the tail.
    fn capture(secrets: &[&str], chunks: &[&[u8]]) -> (String, Vec<String>) {
        let r = redactor(secrets);
        let mut split = Splitter::new(LINE_CAP + r.longest());
        let mut cap = Capture::new(r, Vec::new());
        let mut lines = Vec::new();
        for c in chunks {
            split.push(c, &mut lines);
        }
        lines.extend(split.finish());
        for l in lines {
            cap.take(Msg::Line(l));
        }
        let mut out = Vec::new();
        std::mem::swap(&mut out, &mut cap.out);
        let tail = cap.finish().unwrap();
        (String::from_utf8(out).unwrap(), tail)
    }

    #[test]
    fn secret_split_across_reads_is_redacted() {
        let secret = "s3cr3t-value-42";
        // Every split point of the secret, across two and three chunks.
        for i in 1..secret.len() {
            let a = format!("DATABASE_URL=postgres://u:{}", &secret[..i]);
            let b = format!("{}@db/x\nnext", &secret[i..]);
            let (log, tail) = capture(&[secret], &[a.as_bytes(), b.as_bytes()]);
            assert_eq!(log, "DATABASE_URL=postgres://u:(redacted)@db/x\nnext\n");
            assert!(!tail.join("").contains(secret));
            let (log, _) = capture(
                &[secret],
                &[&a.as_bytes()[..3], &a.as_bytes()[3..], b.as_bytes()],
            );
            assert!(!log.contains(secret), "{log}");
        }
    }

    #[test]
    fn long_lines_are_cut_and_marked() {
        let huge = "x".repeat(LINE_CAP * 3);
        let (log, tail) = capture(&[], &[huge.as_bytes(), b"\nshort\n"]);
        let first = log.lines().next().unwrap();
        assert!(first.starts_with(&"x".repeat(LINE_CAP)));
        assert!(first.ends_with(&format!(
            "[moorline: line cut at {LINE_CAP} bytes; it had {}]",
            LINE_CAP * 3
        )));
        assert_eq!(log.lines().nth(1), Some("short"));
        assert!(
            tail.iter()
                .all(|l| l.len() <= TAIL_LINE_CAP + '…'.len_utf8())
        );
    }

    #[test]
    fn a_secret_across_the_line_cap_is_not_shown_in_part() {
        let secret = "0123456789abcdef-secret";
        for offset in [LINE_CAP - 5, LINE_CAP - 1, LINE_CAP, LINE_CAP + 3] {
            let line = format!("{}{secret}{}\n", "y".repeat(offset), "z".repeat(100));
            let (log, _) = capture(&[secret], &[line.as_bytes()]);
            for n in 4..=secret.len() {
                for w in secret.as_bytes().windows(n) {
                    let w = std::str::from_utf8(w).unwrap();
                    if w.contains("secret") || w.starts_with("0123") {
                        assert!(!log.contains(w), "offset {offset}: {w} in log");
                    }
                }
            }
        }
    }

    #[test]
    fn output_cap_is_stated_and_tail_bounded() {
        let line = format!("{}\n", "o".repeat(1000));
        let count = usize::try_from(OUTPUT_CAP / 1000).unwrap() + 50;
        let r = Redactor::new();
        let mut split = Splitter::new(LINE_CAP);
        let mut cap = Capture::new(r, std::io::sink());
        let mut lines = Vec::new();
        for _ in 0..count {
            split.push(line.as_bytes(), &mut lines);
            for l in lines.drain(..) {
                cap.take(Msg::Line(l));
            }
        }
        assert!(cap.written <= OUTPUT_CAP);
        assert_eq!(cap.seen, 1001 * count as u64);
        let tail = cap.finish().unwrap();
        assert_eq!(tail.len(), TAIL_LINES);
        assert!(
            tail.last()
                .unwrap()
                .starts_with("[moorline: output truncated after ")
        );
    }

    /// Processes whose process group is `pgid`, from /proc (zombies
    /// excluded: they are gone, only not yet reaped by init).
    fn group_members(pgid: u32) -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid pgrp ...: comm may hold spaces.
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                continue;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            if fields.get(2) == Some(&pgid.to_string().as_str()) && fields[0] != "Z" {
                out.push(stat);
            }
        }
        out
    }

    /// Runs `script` with `sh -c`; its group id (the shell's pid, which
    /// the script writes to a file) and the result.
    async fn run_script(script: &str, timeout: Duration) -> (u32, Result<(), RunError>) {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let argv = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            format!("echo $$ > {}; {script}", pid_file.display()),
        ];
        let log = dir.path().join("logs/x.log");
        let res = run(Run {
            argv: &argv,
            dir: None,
            env: &BTreeMap::new(),
            timeout,
            log: &log,
        })
        .await;
        let pgid = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let mode = |p: &Path| {
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
                & 0o777
        };
        assert_eq!(mode(&log), 0o600);
        assert_eq!(mode(log.parent().unwrap()), 0o700);
        (pgid, res)
    }

    /// Waits (briefly: SIGKILL is immediate, reaping by init is not) for
    /// the group to be empty.
    async fn assert_group_gone(pgid: u32) {
        for _ in 0..100 {
            if group_members(pgid).is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("left running: {:?}", group_members(pgid));
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_process_group() {
        let (pgid, res) = run_script("sleep 1000 & sleep 1000", Duration::from_millis(500)).await;
        assert!(matches!(res, Err(RunError::Timeout { .. })), "{res:?}");
        assert_group_gone(pgid).await;
    }

    #[tokio::test]
    async fn background_processes_do_not_outlive_the_command() {
        let (pgid, res) = run_script("sleep 1000 & echo started", Duration::from_mins(1)).await;
        assert!(res.is_ok(), "{res:?}");
        assert_group_gone(pgid).await;
    }

    #[tokio::test]
    async fn a_failure_shows_a_bounded_tail() {
        let (_, res) = run_script(
            "head -c 300000 /dev/zero | tr '\\0' x; echo; seq 1 50; exit 3",
            Duration::from_mins(1),
        )
        .await;
        let Err(RunError::Failed { tail, .. }) = res else {
            panic!("{res:?}");
        };
        let lines: Vec<&str> = tail.lines().collect();
        assert_eq!(lines.len(), TAIL_LINES);
        assert_eq!(lines.last(), Some(&"    | 50"));
        assert!(
            tail.len() < TAIL_LINES * (TAIL_LINE_CAP + 10),
            "{}",
            tail.len()
        );
    }

    /// Variables, as `(name, value)` pairs.
    type Vars<'a> = &'a [(&'a str, &'a str)];

    /// What a command's environment holds, from moorline's environment
    /// `outer`, an environment with `pass` and `env`.
    fn env_of(outer: &[(&str, &str)], pass: &[&str], env: &[(&str, &str)]) -> Vec<String> {
        let e = crate::config::Environment {
            name: "staging".into(),
            branch: "main".into(),
            root: "/srv/shop".into(),
            url: None,
            unit_dir: None,
            port_offset: 0,
            approval: false,
            promote_from: None,
            backup: None,
            env: env
                .iter()
                .map(|(k, v)| {
                    let value = crate::config::EnvValue {
                        value: (*v).to_owned(),
                        secret: false,
                    };
                    ((*k).to_owned(), value)
                })
                .collect(),
            env_files: Vec::new(),
            pass_env: pass.iter().map(|p| (*p).to_owned()).collect(),
            hosts: Vec::new(),
            rollout: crate::config::Rollout::default(),
            drain: Vec::new(),
        };
        let outer: BTreeMap<&str, &str> = outer.iter().copied().collect();
        command_env_from(&e, Some("api"), Some("/srv/shop/api/releases/abc"), |k| {
            outer.get(k).map(|v| (*v).to_owned())
        })
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect()
    }

    #[test]
    fn commands_get_a_minimal_environment() {
        let moorline = [
            ("PATH", "/usr/bin"),
            ("HOME", "/root"),
            ("LANG", "C.UTF-8"),
            ("AWS_SECRET_ACCESS_KEY", "hunter22"),
            ("HTTP_PROXY", "http://proxy:3128"),
            ("MOORLINE_CONFIG", "/etc/shop.kdl"),
            ("MOORLINE_TEST_CRASH_AFTER", "3"),
        ];
        let ours = [
            "MOORLINE_ENV=staging",
            "MOORLINE_RELEASE=/srv/shop/api/releases/abc",
            "MOORLINE_ROOT=/srv/shop",
            "MOORLINE_SERVICE=api",
        ];
        let base = ["HOME=/root", "LANG=C.UTF-8"];
        // (outer, pass-env, env, expected besides MOORLINE_*)
        let cases: &[(Vars, &[&str], Vars, &[&str])] = &[
            // Only the base variables of moorline's environment.
            (
                &moorline,
                &[],
                &[],
                &[&base[..], &["PATH=/usr/bin"]].concat(),
            ),
            // pass-env adds one that is set, ignores one that is not.
            (
                &moorline,
                &["HTTP_PROXY", "NOT_SET"],
                &[],
                &[
                    &base[..],
                    &["HTTP_PROXY=http://proxy:3128", "PATH=/usr/bin"],
                ]
                .concat(),
            ),
            // The configuration's env wins over what is passed.
            (
                &moorline,
                &["HTTP_PROXY"],
                &[("HTTP_PROXY", "http://other"), ("PATH", "/opt/bin")],
                &[&base[..], &["HTTP_PROXY=http://other", "PATH=/opt/bin"]].concat(),
            ),
            // No PATH in moorline's environment: the default.
            (&[], &[], &[], &[&format!("PATH={DEFAULT_PATH}")[..]]),
        ];
        for (outer, pass, env, want) in cases {
            let mut want: Vec<String> = want.iter().map(|w| (*w).to_owned()).collect();
            want.extend(ours.iter().map(|o| (*o).to_owned()));
            want.sort();
            assert_eq!(env_of(outer, pass, env), want, "{outer:?} {pass:?} {env:?}");
        }
    }

    #[tokio::test]
    async fn a_command_inherits_nothing_beyond_its_environment() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("env.log");
        let env: BTreeMap<String, String> = [("ONLY".to_owned(), "this".to_owned())].into();
        // moorline's own environment (the test's) has PATH, HOME and more.
        run(Run {
            argv: &["/usr/bin/env".to_owned()],
            dir: None,
            env: &env,
            timeout: Duration::from_mins(1),
            log: &log,
        })
        .await
        .unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "ONLY=this\n");
    }

    #[test]
    fn splitter_keeps_a_final_line_without_newline() {
        let mut s = Splitter::new(8);
        let mut out = Vec::new();
        s.push(b"ab\n\ncd", &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(s.finish().map(|l| l.bytes), Some(b"cd".to_vec()));
        assert_eq!(s.finish(), None);
    }
}

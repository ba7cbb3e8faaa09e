//! `moorline logs`: service names, `--since`, `--lines`, `--follow` go in; the journal entries
//! of those services' units come out, interleaved by time and prefixed by service name (text),
//! or one JSON object per line. Read-only: nothing on the host changes.
//!
//! # How the journal is read, and why `journalctl`
//!
//! systemd has no D-Bus API for reading the journal, and the journal file format is only
//! maintained in C (libsystemd's `sd-journal`); binding it would mean FFI (`unsafe`, denied in
//! this crate) and `libsystemd-dev` at build time. `journalctl` is that same reader, installed
//! wherever systemd is, and read-only, so it is not a second way of *controlling* systemd (that
//! stays in [`crate::systemd`]). It runs with an argv (no shell), `--output=json`, and explicit
//! field matches per unit, OR-ed with `+`:
//!
//! `_SYSTEMD_UNIT=u + _SYSTEMD_USER_UNIT=u + UNIT=u + USER_UNIT=u` for every unit `u`
//!
//! instead of `-u`/`--user-unit`: this finds a unit's own output under the system manager
//! (`_SYSTEMD_UNIT`), under a user manager in a login session (`_SYSTEMD_USER_UNIT`, journald
//! derives it from the `user@.service` cgroup), and under a user manager outside one (such as
//! the test sandbox, where the cgroup gives `_SYSTEMD_UNIT`), plus the manager's own messages
//! about the unit (`UNIT`/`USER_UNIT`: "Started …", exit codes) as `journalctl -u` shows them.
//! `journalctl` merges all matching entries of all journal files by time, so the interleaving
//! is its, and exactly the order `journalctl -u 'pakashop-*'` would give.
//!
//! Units only log to the journal when a `systemd-journald` serves their manager. The private
//! manager of the tests and the demo ([`crate::demo::sandbox`]) starts its own and keeps its
//! files in its directory; read them with `--directory`. When nothing is found, `logs` says so and why, instead of printing
//! nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use miette::Diagnostic;
use serde::Serialize;

/// Entries shown when neither `--lines` nor `--since` is given: enough for "what just
/// happened", bounded so a year of logs is not dumped by accident (journalctl's own `-f`
/// default is 10, its non-follow default is everything).
pub(crate) const DEFAULT_LINES: usize = 100;

/// The journal fields that name the unit an entry belongs to, in the order they are trusted.
const UNIT_FIELDS: [&str; 4] = ["_SYSTEMD_USER_UNIT", "_SYSTEMD_UNIT", "USER_UNIT", "UNIT"];

#[derive(Debug, thiserror::Error, Diagnostic)]
pub(crate) enum LogsError {
    #[error("cannot run journalctl")]
    #[diagnostic(
        code(moorline::logs::spawn),
        help("`moorline logs` reads the journal with journalctl (package `systemd`); install it")
    )]
    Spawn(#[source] std::io::Error),
    #[error("journalctl failed ({status}): {stderr}")]
    #[diagnostic(
        code(moorline::logs::journalctl),
        help(
            "check --since (journalctl syntax, e.g. \"1 hour ago\") and read access to the journal (group systemd-journal)"
        )
    )]
    Failed { status: String, stderr: String },
    #[error("cannot write the logs")]
    #[diagnostic(code(moorline::logs::write), help("the reader went away"))]
    Write(#[source] std::io::Error),
}

/// What to read.
#[derive(Debug, Clone)]
pub(crate) struct Query<'a> {
    /// Unit name → service name.
    pub(crate) units: BTreeMap<String, String>,
    pub(crate) since: Option<&'a str>,
    pub(crate) lines: Option<usize>,
    pub(crate) follow: bool,
    pub(crate) directory: Option<&'a Path>,
}

/// The `journalctl` argv for a query (pure; tested below).
pub(crate) fn argv(q: &Query<'_>) -> Vec<String> {
    let mut a = vec![
        "journalctl".to_owned(),
        "--output=json".to_owned(),
        "--no-pager".to_owned(),
        "--quiet".to_owned(),
    ];
    if let Some(d) = q.directory {
        a.push(format!("--directory={}", d.display()));
    }
    if let Some(s) = q.since {
        a.push(format!("--since={s}"));
    }
    match (q.lines, q.since) {
        (Some(n), _) => a.push(format!("--lines={n}")),
        (None, None) => a.push(format!("--lines={DEFAULT_LINES}")),
        (None, Some(_)) => {}
    }
    if q.follow {
        a.push("--follow".to_owned());
    }
    for (i, unit) in q.units.keys().enumerate() {
        for (j, field) in UNIT_FIELDS.iter().enumerate() {
            if i > 0 || j > 0 {
                a.push("+".to_owned());
            }
            a.push(format!("{field}={unit}"));
        }
    }
    a
}

/// One journal entry, as `--format json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Entry {
    /// RFC 3339 with microseconds, UTC.
    pub(crate) time: String,
    pub(crate) timestamp_us: u64,
    pub(crate) service: String,
    pub(crate) unit: String,
    /// syslog priority (0 emerg … 7 debug), 6 when absent.
    pub(crate) priority: u8,
    pub(crate) message: String,
}

/// Parses one line of `journalctl --output=json`; `None` for entries of other units or
/// unparsable lines.
pub(crate) fn parse(line: &str, units: &BTreeMap<String, String>) -> Option<Entry> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let (unit, service) = UNIT_FIELDS
        .iter()
        .filter_map(|f| v.get(*f).and_then(|u| u.as_str()))
        .find_map(|u| units.get(u).map(|s| (u.to_owned(), s.clone())))?;
    let timestamp_us: u64 = v
        .get("__REALTIME_TIMESTAMP")
        .and_then(|t| t.as_str())
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let message = match v.get("MESSAGE") {
        Some(serde_json::Value::String(s)) => s.clone(),
        // Non-UTF-8 messages come as an array of bytes (`journalctl(1)`, json output).
        Some(serde_json::Value::Array(bytes)) => {
            let raw: Vec<u8> = bytes
                .iter()
                .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect();
            String::from_utf8_lossy(&raw).into_owned()
        }
        _ => String::new(),
    };
    let priority = v
        .get("PRIORITY")
        .and_then(|p| p.as_str())
        .and_then(|p| p.parse().ok())
        .unwrap_or(6);
    Some(Entry {
        time: humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_micros(timestamp_us))
            .to_string(),
        timestamp_us,
        service,
        unit,
        priority,
        message,
    })
}

/// Where failure reports read unit logs from: `MOORLINE_JOURNAL_DIRECTORY`
/// (a journal directory, as `journalctl --directory`), else the system's.
pub(crate) const JOURNAL_DIRECTORY_ENV: &str = "MOORLINE_JOURNAL_DIRECTORY";

/// How long a failure report waits for `journalctl`.
const TAIL_TIMEOUT: Duration = Duration::from_secs(2);

/// The last `lines` journal messages of one unit, for a failure report,
/// redacted; bounded in time so a report is never held up by the journal.
/// `Err` says why there are none to show (no `journalctl`, no permission,
/// nothing logged), so the report can say so instead of staying silent.
pub(crate) async fn tail(unit: &str, lines: usize) -> Result<Vec<String>, String> {
    let dir = std::env::var_os(JOURNAL_DIRECTORY_ENV).map(std::path::PathBuf::from);
    let units: BTreeMap<String, String> = [(unit.to_owned(), unit.to_owned())].into();
    let q = Query {
        units: units.clone(),
        since: None,
        lines: Some(lines),
        follow: false,
        directory: dir.as_deref(),
    };
    let words = argv(&q);
    let Some((program, rest)) = words.split_first() else {
        return Err("no journalctl command".to_owned());
    };
    let run = tokio::process::Command::new(program)
        .args(rest)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(TAIL_TIMEOUT, run).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => return Err(format!("{program} could not be run: {e}")),
        Err(_) => {
            return Err(format!(
                "{program} did not answer within {}s",
                TAIL_TIMEOUT.as_secs()
            ));
        }
    };
    let found: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| parse(l, &units))
        .map(|e| crate::secrets::redact(&e.message))
        .collect();
    if !found.is_empty() {
        return Ok(found);
    }
    let said = String::from_utf8_lossy(&out.stderr);
    let said: Vec<&str> = said
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let place = dir.as_deref().map_or_else(
        || "the system journal".to_owned(),
        |d| format!("the journal in {}", d.display()),
    );
    Err(if said.is_empty() {
        format!("{place} holds no lines of {unit}")
    } else {
        format!(
            "{program} showed no lines of {unit} from {place}: {}",
            crate::secrets::redact(&said.join(" "))
        )
    })
}

/// `2026-06-09T10:00:00.123Z backend  | message`.
pub(crate) fn text_line(e: &Entry, width: usize) -> String {
    let time = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_micros(e.timestamp_us));
    format!("{time} {:<width$} | {}", e.service, e.message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units() -> BTreeMap<String, String> {
        [
            ("p-a.service".to_owned(), "a".to_owned()),
            ("p-b.service".to_owned(), "b".to_owned()),
        ]
        .into()
    }

    #[test]
    fn argv_ors_every_unit_field_and_defaults_lines() {
        let q = Query {
            units: units(),
            since: None,
            lines: None,
            follow: false,
            directory: None,
        };
        let a = argv(&q);
        assert_eq!(
            &a[..5],
            [
                "journalctl",
                "--output=json",
                "--no-pager",
                "--quiet",
                "--lines=100"
            ]
        );
        assert_eq!(
            a[5..].join(" "),
            "_SYSTEMD_USER_UNIT=p-a.service + _SYSTEMD_UNIT=p-a.service + USER_UNIT=p-a.service + UNIT=p-a.service + _SYSTEMD_USER_UNIT=p-b.service + _SYSTEMD_UNIT=p-b.service + USER_UNIT=p-b.service + UNIT=p-b.service"
        );
        let q = Query {
            since: Some("1 hour ago"),
            follow: true,
            directory: Some(Path::new("/j")),
            ..q
        };
        let a = argv(&q);
        assert!(a.contains(&"--since=1 hour ago".to_owned()));
        assert!(a.contains(&"--follow".to_owned()));
        assert!(a.contains(&"--directory=/j".to_owned()));
        assert!(!a.iter().any(|x| x.starts_with("--lines")), "{a:?}");
    }

    #[test]
    fn parses_entries_of_known_units_only() {
        let line = r#"{"MESSAGE":"hello","_SYSTEMD_UNIT":"p-b.service","__REALTIME_TIMESTAMP":"1000000","PRIORITY":"3"}"#;
        let e = parse(line, &units()).unwrap();
        assert_eq!(e.service, "b");
        assert_eq!(e.priority, 3);
        assert_eq!(e.time, "1970-01-01T00:00:01.000000Z");
        assert_eq!(text_line(&e, 3), "1970-01-01T00:00:01.000Z b   | hello");
        let bytes =
            r#"{"MESSAGE":[104,105,255],"USER_UNIT":"p-a.service","__REALTIME_TIMESTAMP":"1"}"#;
        assert_eq!(parse(bytes, &units()).unwrap().message, "hi\u{fffd}");
        assert!(
            parse(
                r#"{"MESSAGE":"x","_SYSTEMD_UNIT":"other.service"}"#,
                &units()
            )
            .is_none()
        );
        assert!(parse("not json", &units()).is_none());
    }
}

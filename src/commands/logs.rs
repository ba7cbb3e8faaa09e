//! `moorline logs`: the services' units, `--since`, `--lines`, `--follow`
//! and `--format` go in; [`crate::logs`] reads their journal entries and
//! this prints them, interleaved by time and prefixed by service name.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use crate::cli::{LogsArgs, OutputFormat};
use crate::logs::{LogsError, Query, argv, parse, text_line};
use crate::target::Target;
use crate::{exit, select};

/// Runs `moorline logs`; returns the exit code.
pub(crate) fn run(t: &Target, args: &LogsArgs) -> miette::Result<i32> {
    let selected = select::select(t.config(), &args.services, false)?;
    let units: BTreeMap<String, String> = selected
        .iter()
        // A blue/green service logs under both of its slots' instances.
        .flat_map(|s| s.running_units().into_iter().map(|u| (u, s.name.clone())))
        .collect();
    let width = selected.iter().map(|s| s.name.len()).max().unwrap_or(0);
    let q = Query {
        units,
        since: args.since.as_deref(),
        lines: args.lines,
        follow: args.follow,
        directory: args.directory.as_deref(),
    };
    let cmdline = argv(&q);
    let mut child = Command::new(&cmdline[0])
        .args(&cmdline[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(LogsError::Spawn)?;
    let mut shown = 0usize;
    if let Some(stdout) = child.stdout.take() {
        let out = std::io::stdout();
        let mut out = out.lock();
        for line in BufReader::new(stdout).lines() {
            let line = line.map_err(LogsError::Write)?;
            let Some(mut e) = parse(&line, &q.units) else {
                continue;
            };
            e.message = crate::secrets::redact(&e.message);
            let shown_line = match args.format {
                OutputFormat::Text => text_line(&e, width),
                OutputFormat::Json => serde_json::to_string(&e).unwrap_or_default(),
            };
            writeln!(out, "{shown_line}").map_err(LogsError::Write)?;
            if args.follow {
                out.flush().map_err(LogsError::Write)?;
            }
            shown += 1;
        }
    }
    let output = child.wait_with_output().map_err(LogsError::Spawn)?;
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if !output.status.success() {
        return Err(LogsError::Failed {
            status: output.status.to_string(),
            stderr,
        }
        .into());
    }
    if shown == 0 {
        eprintln!(
            "no journal entries for {} in {}{}.\nUnits log to the journal only when a systemd-journald serves their manager; \
             without one their output is discarded. Check `systemctl status systemd-journald` (or pass --directory to read \
             other journal files).",
            q.units.keys().cloned().collect::<Vec<_>>().join(", "),
            args.directory.as_deref().map_or_else(
                || "the host's journal".to_owned(),
                |d| d.display().to_string()
            ),
            if stderr.is_empty() {
                String::new()
            } else {
                format!(" (journalctl: {stderr})")
            }
        );
    }
    Ok(exit::OK)
}

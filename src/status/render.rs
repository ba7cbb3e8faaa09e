//! Rendering a [`Status`] as text or JSON: pure functions of the value.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use super::{DriftKind, MigrationState, Status, short};
use crate::health::Probe;
use crate::systemd::ActiveState;

/// `--check`: whether everything is healthy and nothing drifted.
pub(crate) fn is_ok(s: &Status) -> bool {
    s.ok
}

/// The status as pretty JSON (the documented shape above), newline-terminated.
pub(crate) fn json(s: &Status) -> String {
    let mut out = serde_json::to_string_pretty(s).unwrap_or_else(|e| {
        serde_json::json!({"error": format!("cannot serialise the status: {e}")}).to_string()
    });
    out.push('\n');
    out
}

/// A compact duration for tables: `42s`, `5m`, `3h`, `2d`.
fn ago(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86_400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

fn probe_cell(p: &Probe) -> String {
    if p.ok {
        format!("ok {}ms", p.millis)
    } else {
        match p.status {
            Some(code) => format!("FAIL {code}"),
            None => "FAIL down".to_owned(),
        }
    }
}

/// The status as a table grouped by phase, then environment drift and a summary line.
/// `now_us` makes ages deterministic for tests.
pub(crate) fn text(s: &Status, now_us: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {} (branch {} at {}, deployed {})",
        s.project,
        s.environment,
        s.branch,
        s.branch_tip.as_deref().map_or("?", short),
        s.deployed.as_deref().map_or("nothing", short),
    );
    // The first column carries a two-character marker ("! " when
    // unhealthy); the header gets the same room so the columns line up.
    let header = [
        "  SERVICE",
        "UNIT",
        "SINCE",
        "BOOT",
        "RELEASE",
        "LIVE",
        "READY",
        "DRIFT",
    ];
    for p in &s.phases {
        if p.services.is_empty() && p.units.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\nphase {}", p.name);
        for u in &p.units {
            let _ = writeln!(
                out,
                "  {} {} ({})",
                if u.ok { "ok  " } else { "DOWN" },
                u.unit,
                u.active_state
            );
        }
        let mut rows: Vec<[String; 8]> = vec![header.map(str::to_owned)];
        for sv in &p.services {
            let since = if sv.since_us == 0 || sv.active_state != ActiveState::Active {
                "-".to_owned()
            } else {
                ago(now_us.saturating_sub(sv.since_us) / 1_000_000)
            };
            let mut release = sv.release.as_ref().map_or("-".to_owned(), |r| {
                r.age_secs
                    .map_or_else(|| r.short.clone(), |a| format!("{} ({})", r.short, ago(a)))
            });
            if let Some(id) = &sv.artifact {
                let _ = write!(release, " artifact {}", crate::artifact::short(id));
            }
            let mut drift: Vec<String> = sv.drift.iter().map(|d| kind_str(d.kind)).collect();
            if let Some(m) = &sv.migrations
                && m.state != MigrationState::UpToDate
            {
                drift.push(format!("migrations {}", migration_str(m.state)));
            }
            rows.push([
                format!("{} {}", if sv.healthy { " " } else { "!" }, sv.name),
                sv.active_state.to_string(),
                since,
                if sv.unit_file_state.is_empty() {
                    "-".to_owned()
                } else {
                    sv.unit_file_state.clone()
                },
                release,
                probe_cell(&sv.liveness),
                probe_cell(&sv.readiness),
                if drift.is_empty() {
                    "-".to_owned()
                } else {
                    drift.join(", ")
                },
            ]);
        }
        if p.services.is_empty() {
            continue;
        }
        let widths: Vec<usize> = (0..8)
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        for r in &rows {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            let _ = writeln!(out, "  {}", line.join("  ").trim_end());
        }
    }
    if let Some(px) = &s.proxy {
        let _ = writeln!(
            out,
            "\nproxy {} {} ({})",
            if px.ok { "ok  " } else { "DOWN" },
            px.unit,
            px.active_state
        );
    }
    let problems: Vec<String> = s
        .drift
        .iter()
        .map(|d| format!("{}: {}", kind_str(d.kind), d.detail))
        .chain(s.phases.iter().flat_map(|p| &p.services).flat_map(|sv| {
            let mut v: Vec<String> = sv
                .drift
                .iter()
                .map(|d| format!("{}: {}", sv.name, d.detail))
                .collect();
            for (what, p) in [("liveness", &sv.liveness), ("readiness", &sv.readiness)] {
                if !p.ok {
                    v.push(format!(
                        "{}: {what} {} failed: {}",
                        sv.name,
                        p.url,
                        p.error.as_deref().unwrap_or("no answer")
                    ));
                }
            }
            if let Some(m) = &sv.migrations
                && m.state != MigrationState::UpToDate
            {
                let mut line = format!(
                    "{}: migrations {} (`{}`",
                    sv.name,
                    migration_str(m.state),
                    m.command.join(" ")
                );
                if let Some(c) = m.exit_code {
                    let _ = write!(line, " exited {c}");
                }
                line.push(')');
                for l in m.output.lines() {
                    let _ = write!(line, "\n    | {l}");
                }
                v.push(line);
            }
            v
        }))
        .collect();
    if !problems.is_empty() {
        out.push('\n');
        for p in &problems {
            let _ = writeln!(out, "{p}");
        }
    }
    let _ = writeln!(
        out,
        "\n{} services: {} healthy, {} unhealthy, {} drifted{}",
        s.summary.services,
        s.summary.healthy,
        s.summary.unhealthy,
        s.summary.drifted,
        if s.ok { "" } else { " - NOT OK" }
    );
    out
}

fn kind_str(k: DriftKind) -> String {
    serde_json::to_value(k)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn migration_str(m: MigrationState) -> &'static str {
    match m {
        MigrationState::UpToDate => "up to date",
        MigrationState::Pending => "pending",
        MigrationState::Failed => "check failed",
    }
}

/// Now in µs since the epoch, for [`text`].
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_compact() {
        for (s, want) in [(5, "5s"), (61, "1m"), (7200, "2h"), (200_000, "2d")] {
            assert_eq!(ago(s), want);
        }
    }
}

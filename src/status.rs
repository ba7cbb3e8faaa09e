//! `moorline status`: the host (systemd over D-Bus, `current` symlinks, installed unit files,
//! `state.json`, HTTP health endpoints, optionally each runtime's `migrate-status` command)
//! goes in, one [`Status`] value comes out; rendering it ([`text`], [`json`]) is separate and
//! pure. Nothing here changes the host.
//!
//! # JSON (`--format json`), format version 1
//!
//! ```text
//! {
//!   "format_version": 1,
//!   "project": "pakashop", "environment": "staging", "branch": "main",
//!   "branch_tip": "<sha>" | null,          // tip of the environment's branch
//!   "deployed": "<sha>" | null,            // state.json's revision (last complete apply)
//!   "drift": [Drift],                      // environment-level drift (never deployed, behind branch)
//!   "phases": [{
//!     "name": "core",
//!     "units": [Unit],                     // the phase's infrastructure units
//!     "services": [{
//!       "name", "unit", "phase",
//!       "load_state", "active_state", "sub_state", "result",
//!       "since": "<RFC 3339>" | null,      // ActiveEnterTimestamp
//!       "since_us": <µs since epoch>,      // 0 = never active
//!       "unit_file_state": "enabled" | "disabled" | "" | ...,
//!       "release": {"revision", "short", "age_secs": <u64> | null} | null,
//!       "liveness": Probe, "readiness": Probe,
//!       "migrations": {"state": "up-to-date"|"pending"|"failed", "command": [..],
//!                      "exit_code": <i32> | null, "output": "..."} | null,
//!       "drift": [Drift],
//!       "healthy": bool                    // active, live, ready, no drift, migrations not pending
//!     }]
//!   }],
//!   "proxy": Unit | null,
//!   "summary": {"services", "healthy", "unhealthy", "drifted"},
//!   "ok": bool                             // what `--check` tests (with or without --fail-behind)
//! }
//! Unit  = {"unit", "active_state", "sub_state", "ok"}
//! Probe = {"url", "status": <u16> | null, "ok", "millis", "error": "..." | null}
//! Drift = {"kind", "detail"}, kind one of: unit-file-edited, unit-file-outdated,
//!         unit-file-missing, current-mismatch, not-active, no-release,
//!         never-deployed, behind-branch, rolled-back (the last two fail
//!         `--check` only with `--fail-behind`)
//! ```
//!
//! Probes and D-Bus reads for all services run concurrently, so a status of 19 services takes
//! about as long as the slowest single probe.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use miette::Diagnostic;
use serde::Serialize;

use crate::config::{Environment, Service};
use crate::health::{self, Probe};
use crate::plan::build::{ready_url, url_for};
use crate::release::Paths;
use crate::settings::Target;
use crate::state::{self, State};
use crate::systemd::{Systemd, SystemdError, UnitStatus};
use crate::unit;

/// Version of the JSON shape above; bumped on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum StatusError {
    #[error("cannot read the state of {unit} from systemd")]
    #[diagnostic(
        code(moorline::status::systemd),
        help("check that the service manager is reachable (--systemd system|user)")
    )]
    Systemd {
        unit: String,
        #[source]
        source: SystemdError,
    },
    #[error("a status task failed: {0}")]
    #[diagnostic(
        code(moorline::status::task),
        help("this is a bug in moorline; please report it")
    )]
    Task(String),
}

/// Why something counts as drifted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DriftKind {
    /// The installed unit file's SHA-256 differs from what moorline installed (state).
    UnitFileEdited,
    /// The installed unit file differs from what the current configuration renders.
    UnitFileOutdated,
    /// The configuration declares the unit, but no unit file is installed.
    UnitFileMissing,
    /// `current` does not point at the release the state records.
    CurrentMismatch,
    /// The unit is not active.
    NotActive,
    /// The state records the service, but `current` is missing.
    NoRelease,
    /// Nothing was ever deployed (no state.json, or the service is not in it).
    NeverDeployed,
    /// The environment's branch has commits that are not deployed.
    BehindBranch,
    /// Services were rolled back by hand since the last deploy (the state
    /// records it): they run releases older than the deployed revision.
    RolledBack,
}

impl DriftKind {
    /// Whether `status --check` fails on it without `--fail-behind`: what
    /// an operator must act on. Running behind the branch (between a merge
    /// and its deploy, or after a deliberate rollback) is reported only.
    pub fn fails_check(self) -> bool {
        !matches!(self, Self::BehindBranch | Self::RolledBack)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    pub kind: DriftKind,
    pub detail: String,
}

fn drift(kind: DriftKind, detail: impl Into<String>) -> Drift {
    Drift {
        kind,
        detail: detail.into(),
    }
}

/// A unit reported by its active state only (infrastructure units, the proxy).
#[derive(Debug, Clone, Serialize)]
pub struct UnitState {
    pub unit: String,
    pub active_state: String,
    pub sub_state: String,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Release {
    pub revision: String,
    pub short: String,
    /// Seconds since the release directory was last modified (built).
    pub age_secs: Option<u64>,
}

pub use crate::migrations::{MigrationState, Migrations};

#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub unit: String,
    pub phase: String,
    pub load_state: String,
    pub active_state: String,
    pub sub_state: String,
    pub result: String,
    pub since: Option<String>,
    pub since_us: u64,
    pub unit_file_state: String,
    pub release: Option<Release>,
    pub liveness: Probe,
    pub readiness: Probe,
    pub migrations: Option<Migrations>,
    pub drift: Vec<Drift>,
    pub healthy: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseStatus {
    pub name: String,
    pub units: Vec<UnitState>,
    pub services: Vec<ServiceStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub services: usize,
    pub healthy: usize,
    pub unhealthy: usize,
    pub drifted: usize,
}

/// Everything `moorline status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub format_version: u32,
    pub project: String,
    pub environment: String,
    pub branch: String,
    pub branch_tip: Option<String>,
    pub deployed: Option<String>,
    pub drift: Vec<Drift>,
    pub phases: Vec<PhaseStatus>,
    pub proxy: Option<UnitState>,
    pub summary: Summary,
    /// Every service healthy, every unit active, no environment drift
    /// that fails the check (behind the branch and rolled back by hand
    /// count only with `fail_behind`).
    pub ok: bool,
}

/// What to gather besides the always-on checks.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    pub migrations: bool,
    /// `--fail-behind`: being behind the branch, or rolled back by hand,
    /// fails the check too.
    pub fail_behind: bool,
}

/// Everything gathered from the host that is not per-service.
struct Host {
    state: Option<State>,
    env: Environment,
    unit_dir: PathBuf,
    state_dir: PathBuf,
    options: Options,
}

/// Reads the host and computes the status of every service, infrastructure unit and the proxy.
pub async fn gather(t: &Target, sd: &Systemd, options: Options) -> miette::Result<Status> {
    let config = t.config();
    let loaded = state::load(&t.state_dir, &config.project.name, &t.env.name)?;
    let tip = t.repo.branch_tip(&t.env.branch).ok().map(|r| r.sha);
    let host = std::sync::Arc::new(Host {
        state: loaded.state,
        env: t.env.clone(),
        unit_dir: t.unit_dir.clone(),
        state_dir: t.state_dir.clone(),
        options,
    });

    let mut tasks = tokio::task::JoinSet::new();
    for (i, s) in config.services.iter().enumerate() {
        let (host, sd, s) = (host.clone(), sd.clone(), s.clone());
        let runtime = config.runtime_of(&s).cloned();
        tasks.spawn(async move { (i, service_status(&host, &sd, &s, runtime.as_ref()).await) });
    }
    let mut extra: Vec<String> = config
        .phases
        .iter()
        .flat_map(|p| p.units.iter().cloned())
        .collect();
    if let Some(p) = &config.proxy {
        extra.push(p.unit.clone());
    }
    let mut unit_tasks = tokio::task::JoinSet::new();
    for u in extra {
        let sd = sd.clone();
        unit_tasks.spawn(async move {
            let r = sd.status(&u).await;
            (u, r)
        });
    }

    let mut services: Vec<Option<ServiceStatus>> = vec![None; config.services.len()];
    while let Some(joined) = tasks.join_next().await {
        let (i, r) = joined.map_err(|e| StatusError::Task(e.to_string()))?;
        services[i] = Some(r?);
    }
    let mut units = BTreeMap::new();
    while let Some(joined) = unit_tasks.join_next().await {
        let (u, r) = joined.map_err(|e| StatusError::Task(e.to_string()))?;
        let st = r.map_err(|source| StatusError::Systemd {
            unit: u.clone(),
            source,
        })?;
        units.insert(u, unit_state(&st));
    }

    let mut env_drift = Vec::new();
    let deployed = host.state.as_ref().and_then(|s| s.revision.clone());
    match (&deployed, &tip) {
        (None, _) => env_drift.push(drift(
            DriftKind::NeverDeployed,
            format!("nothing deployed to {} yet (no state)", t.env.name),
        )),
        (Some(d), Some(tip)) if d != tip => env_drift.push(drift(
            DriftKind::BehindBranch,
            format!(
                "branch {} is at {}, {} has {} deployed",
                t.env.branch,
                short(tip),
                t.env.name,
                short(d)
            ),
        )),
        _ => {}
    }
    if let Some(rb) = host.state.as_ref().and_then(|s| s.rolled_back.as_ref()) {
        env_drift.push(drift(
            DriftKind::RolledBack,
            format!(
                "rolled back by hand {} (apply {}): {} {} an older release than the deployed {}; the next deploy brings {} forward again",
                timestamp(rb.at.saturating_mul(1_000_000)).unwrap_or_else(|| "at an unknown time".to_owned()),
                rb.apply_id,
                rb.services.join(", "),
                if rb.services.len() == 1 { "runs" } else { "run" },
                deployed.as_deref().map_or("revision", short),
                if rb.services.len() == 1 { "it" } else { "them" },
            ),
        ));
    }

    let mut phases: Vec<PhaseStatus> = config
        .phases
        .iter()
        .map(|p| PhaseStatus {
            name: p.name.clone(),
            units: p
                .units
                .iter()
                .filter_map(|u| units.get(u).cloned())
                .collect(),
            services: Vec::new(),
        })
        .collect();
    for (s, st) in config.services.iter().zip(services) {
        if let (Some(phase), Some(st)) = (phases.get_mut(s.phase_index), st) {
            phase.services.push(st);
        }
    }
    let proxy = config
        .proxy
        .as_ref()
        .and_then(|p| units.get(&p.unit).cloned());
    let all: Vec<&ServiceStatus> = phases.iter().flat_map(|p| &p.services).collect();
    let summary = Summary {
        services: all.len(),
        healthy: all.iter().filter(|s| s.healthy).count(),
        unhealthy: all.iter().filter(|s| !s.healthy).count(),
        drifted: all.iter().filter(|s| !s.drift.is_empty()).count(),
    };
    let ok = summary.unhealthy == 0
        && env_drift
            .iter()
            .all(|d| !options.fail_behind && !d.kind.fails_check())
        && phases.iter().flat_map(|p| &p.units).all(|u| u.ok)
        && proxy.as_ref().is_none_or(|p| p.ok);
    Ok(Status {
        format_version: FORMAT_VERSION,
        project: config.project.name.clone(),
        environment: t.env.name.clone(),
        branch: t.env.branch.clone(),
        branch_tip: tip,
        deployed,
        drift: env_drift,
        phases,
        proxy,
        summary,
        ok,
    })
}

fn unit_state(st: &UnitStatus) -> UnitState {
    UnitState {
        unit: st.name.clone(),
        active_state: st.active_state.clone(),
        sub_state: st.sub_state.clone(),
        ok: st.active_state == "active",
    }
}

async fn service_status(
    host: &Host,
    sd: &Systemd,
    s: &Service,
    runtime: Option<&crate::config::Runtime>,
) -> Result<ServiceStatus, StatusError> {
    let (live_url, ready) = (url_for(s, &s.health), ready_url(s));
    let (unit_st, liveness, readiness) = tokio::join!(
        sd.status(&s.unit_name),
        health::probe(&live_url),
        health::probe(&ready),
    );
    let unit_st = unit_st.map_err(|source| StatusError::Systemd {
        unit: s.unit_name.clone(),
        source,
    })?;
    let paths = Paths::new(&host.env.root, &s.name);
    let live = paths.live();
    let release = live.as_ref().map(|rev| Release {
        short: short(rev).to_owned(),
        age_secs: release_age(&paths.release(rev)),
        revision: rev.clone(),
    });
    let recorded = host.state.as_ref().and_then(|st| st.services.get(&s.name));
    let installed = std::fs::read(host.unit_dir.join(&s.unit_name)).ok();
    let drift = service_drift(&DriftInputs {
        state_exists: host.state.is_some(),
        recorded_revision: recorded.map(|r| r.revision.as_str()),
        recorded_unit_sha: recorded.and_then(|r| r.unit_sha256.as_deref()),
        live: live.as_deref(),
        active_state: &unit_st.active_state,
        installed: installed.as_deref(),
        rendered: unit::render(&host.env, s).ok().flatten().as_deref(),
    });
    let migrations = match (host.options.migrations, runtime, &live) {
        (true, Some(rt), Some(rev)) => {
            let log = host
                .state_dir
                .join("logs")
                .join("status")
                .join(format!("migrate-status-{}.log", s.name));
            crate::migrations::check(
                &host.env,
                s,
                rt,
                &paths.release(rev),
                &paths.current(),
                &log,
            )
            .await
        }
        _ => None,
    };
    let healthy = unit_st.active_state == "active"
        && liveness.ok
        && readiness.ok
        && drift.is_empty()
        && migrations
            .as_ref()
            .is_none_or(|m| m.state == MigrationState::UpToDate);
    Ok(ServiceStatus {
        name: s.name.clone(),
        unit: s.unit_name.clone(),
        phase: s.phase.clone(),
        load_state: unit_st.load_state,
        active_state: unit_st.active_state,
        sub_state: unit_st.sub_state,
        result: unit_st.result,
        since: timestamp(unit_st.active_enter_timestamp_us),
        since_us: unit_st.active_enter_timestamp_us,
        unit_file_state: unit_st.unit_file_state,
        release,
        liveness,
        readiness,
        migrations,
        drift,
        healthy,
    })
}

/// What the drift of one service is decided on (pure, so it is tested in table form).
struct DriftInputs<'a> {
    state_exists: bool,
    recorded_revision: Option<&'a str>,
    recorded_unit_sha: Option<&'a str>,
    live: Option<&'a str>,
    active_state: &'a str,
    installed: Option<&'a [u8]>,
    rendered: Option<&'a str>,
}

fn service_drift(i: &DriftInputs<'_>) -> Vec<Drift> {
    let mut out = Vec::new();
    match (i.recorded_revision, i.live) {
        (None, _) if i.state_exists => out.push(drift(
            DriftKind::NeverDeployed,
            "not in the state: never deployed to this environment",
        )),
        (Some(rec), None) => out.push(drift(
            DriftKind::NoRelease,
            format!(
                "state says {} is live, but there is no current symlink",
                short(rec)
            ),
        )),
        (Some(rec), Some(live)) if rec != live => out.push(drift(
            DriftKind::CurrentMismatch,
            format!(
                "current points at {}, the state says {}",
                short(live),
                short(rec)
            ),
        )),
        _ => {}
    }
    if i.active_state != "active" {
        out.push(drift(
            DriftKind::NotActive,
            format!("unit is {}", i.active_state),
        ));
    }
    if let Some(rendered) = i.rendered {
        match i.installed {
            None => out.push(drift(
                DriftKind::UnitFileMissing,
                "the configuration declares the unit, but no unit file is installed",
            )),
            Some(bytes) => {
                let sha = state::sha256_hex(bytes);
                if let Some(rec) = i.recorded_unit_sha
                    && rec != sha
                {
                    out.push(drift(
                        DriftKind::UnitFileEdited,
                        "the installed unit file was changed after moorline installed it",
                    ));
                } else if bytes != rendered.as_bytes() {
                    out.push(drift(
                        DriftKind::UnitFileOutdated,
                        "the installed unit file differs from what the configuration renders",
                    ));
                }
            }
        }
    }
    out
}

fn release_age(dir: &Path) -> Option<u64> {
    let modified = std::fs::metadata(dir).ok()?.modified().ok()?;
    SystemTime::now()
        .duration_since(modified)
        .ok()
        .map(|d| d.as_secs())
}

/// µs since the epoch as RFC 3339 (seconds), `None` for 0 (never).
fn timestamp(us: u64) -> Option<String> {
    (us != 0).then(|| {
        humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_micros(us)).to_string()
    })
}

fn short(sha: &str) -> &str {
    crate::plan::short(sha)
}

/// `--check`: whether everything is healthy and nothing drifted.
pub fn is_ok(s: &Status) -> bool {
    s.ok
}

/// The status as pretty JSON (the documented shape above), newline-terminated.
pub fn json(s: &Status) -> String {
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
pub fn text(s: &Status, now_us: u64) -> String {
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
            let since = if sv.since_us == 0 || sv.active_state != "active" {
                "-".to_owned()
            } else {
                ago(now_us.saturating_sub(sv.since_us) / 1_000_000)
            };
            let release = sv.release.as_ref().map_or("-".to_owned(), |r| {
                r.age_secs
                    .map_or_else(|| r.short.clone(), |a| format!("{} ({})", r.short, ago(a)))
            });
            let mut drift: Vec<String> = sv.drift.iter().map(|d| kind_str(d.kind)).collect();
            if let Some(m) = &sv.migrations
                && m.state != MigrationState::UpToDate
            {
                drift.push(format!("migrations {}", migration_str(m.state)));
            }
            rows.push([
                format!("{} {}", if sv.healthy { " " } else { "!" }, sv.name),
                sv.active_state.clone(),
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
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs<'a>() -> DriftInputs<'a> {
        DriftInputs {
            state_exists: true,
            recorded_revision: Some("aaaaaaaaaaaa"),
            recorded_unit_sha: None,
            live: Some("aaaaaaaaaaaa"),
            active_state: "active",
            installed: Some(b"unit"),
            rendered: Some("unit"),
        }
    }

    fn kinds(i: &DriftInputs<'_>) -> Vec<DriftKind> {
        service_drift(i).into_iter().map(|d| d.kind).collect()
    }

    #[test]
    fn check_fails_on_what_needs_action_only() {
        use DriftKind as K;
        for (kind, fails) in [
            (K::UnitFileEdited, true),
            (K::UnitFileOutdated, true),
            (K::UnitFileMissing, true),
            (K::CurrentMismatch, true),
            (K::NotActive, true),
            (K::NoRelease, true),
            (K::NeverDeployed, true),
            (K::BehindBranch, false),
            (K::RolledBack, false),
        ] {
            assert_eq!(kind.fails_check(), fails, "{kind:?}");
        }
        let first = crate::state::ManualRollback::after(None, "a1", &["b".into(), "c".into()]);
        let second =
            crate::state::ManualRollback::after(Some(first), "a2", &["c".into(), "d".into()]);
        assert_eq!(second.services, ["b", "c", "d"]);
        assert_eq!(second.apply_id, "a2");
    }

    #[test]
    fn drift_table() {
        let sha_of_unit = state::sha256_hex(b"unit");
        let cases: Vec<(&str, DriftInputs<'_>, Vec<DriftKind>)> = vec![
            ("clean", inputs(), vec![]),
            (
                "clean with recorded sha",
                DriftInputs {
                    recorded_unit_sha: Some(&sha_of_unit),
                    ..inputs()
                },
                vec![],
            ),
            (
                "edited by hand",
                DriftInputs {
                    recorded_unit_sha: Some(&sha_of_unit),
                    installed: Some(b"unit\nNice=5\n"),
                    ..inputs()
                },
                vec![DriftKind::UnitFileEdited],
            ),
            (
                "config changed since",
                DriftInputs {
                    rendered: Some("unit v2"),
                    ..inputs()
                },
                vec![DriftKind::UnitFileOutdated],
            ),
            (
                "missing unit",
                DriftInputs {
                    installed: None,
                    ..inputs()
                },
                vec![DriftKind::UnitFileMissing],
            ),
            (
                "hand-managed unit",
                DriftInputs {
                    installed: None,
                    rendered: None,
                    ..inputs()
                },
                vec![],
            ),
            (
                "current moved",
                DriftInputs {
                    live: Some("bbbbbbbbbbbb"),
                    ..inputs()
                },
                vec![DriftKind::CurrentMismatch],
            ),
            (
                "no current",
                DriftInputs {
                    live: None,
                    ..inputs()
                },
                vec![DriftKind::NoRelease],
            ),
            (
                "stopped",
                DriftInputs {
                    active_state: "inactive",
                    ..inputs()
                },
                vec![DriftKind::NotActive],
            ),
            (
                "not in state",
                DriftInputs {
                    recorded_revision: None,
                    ..inputs()
                },
                vec![DriftKind::NeverDeployed],
            ),
            (
                "no state at all (reported once, at environment level)",
                DriftInputs {
                    state_exists: false,
                    recorded_revision: None,
                    ..inputs()
                },
                vec![],
            ),
        ];
        for (name, i, want) in cases {
            assert_eq!(kinds(&i), want, "{name}");
        }
    }

    #[test]
    fn ages_are_compact() {
        for (s, want) in [(5, "5s"), (61, "1m"), (7200, "2h"), (200_000, "2d")] {
            assert_eq!(ago(s), want);
        }
        assert_eq!(timestamp(0), None);
        assert_eq!(
            timestamp(1_000_000).as_deref(),
            Some("1970-01-01T00:00:01Z")
        );
    }
}

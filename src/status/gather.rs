//! Gathering: reads the host (systemd, `current` links, unit files, state, probes) into one
//! [`Status`]; changes nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::drift::{DriftInputs, service_drift};
use super::{
    Drift, DriftKind, FORMAT_VERSION, MigrationState, Options, PhaseStatus, Release, ServiceStatus,
    Status, StatusError, Summary, UnitState, short,
};
use crate::config::{Environment, Service};
use crate::health;
use crate::plan::Check;
use crate::plan::deploy::{ready_check, url_for};
use crate::release::Paths;
use crate::state::{self, State};
use crate::systemd::{ActiveState, Systemd, UnitStatus};
use crate::target::Target;
use crate::unit;

/// Everything gathered from the host that is not per-service.
struct Host {
    state: Option<State>,
    env: Environment,
    unit_dir: PathBuf,
    state_dir: PathBuf,
    options: Options,
}

/// Reads the host and computes the status of every service, infrastructure unit and the proxy.
pub(crate) async fn gather(t: &Target, sd: &Systemd, options: Options) -> miette::Result<Status> {
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
        (None, _) => env_drift.push(Drift::new(
            DriftKind::NeverDeployed,
            match crate::observe::state_elsewhere(t) {
                Some(w) => format!("nothing deployed to {} yet (no state); {w}", t.env.name),
                None => format!("nothing deployed to {} yet (no state)", t.env.name),
            },
        )),
        (Some(d), Some(tip)) if d != tip => env_drift.push(Drift::new(
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
        env_drift.push(Drift::new(
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

    if let Some(d) = unfinished_apply(&t.state_dir, &t.env.name).await {
        env_drift.push(d);
    }
    if let (Some(st), Some(tip)) = (host.state.as_ref(), &tip)
        && let Some(f) = crate::observe::failure_of(t, st, tip)
    {
        env_drift.push(Drift::new(
            DriftKind::FailedHere,
            format!(
                "the tip of branch {}: {}; `apply` asks before deploying it again",
                t.env.branch,
                crate::observe::failure_words(&f, tip)
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
        ok: st.active_state == ActiveState::Active,
    }
}

/// The unit whose state is the service's: for a blue/green service, the
/// instance of the slot its upstream file names (the template when the file
/// names none); a scheduled service's timer; the service's unit otherwise.
fn running_unit(s: &Service) -> String {
    s.cutover
        .as_ref()
        .and_then(|c| {
            let text = std::fs::read_to_string(&c.upstream).ok()?;
            crate::upstream::live_slot(&text, &s.name, c.slots)
        })
        .map_or_else(|| s.live_unit(), |slot| s.slot_unit(slot))
}

async fn service_status(
    host: &Host,
    sd: &Systemd,
    s: &Service,
    runtime: Option<&crate::config::Runtime>,
) -> Result<ServiceStatus, StatusError> {
    let running = running_unit(s);
    let check = ready_check(s);
    let (unit_st, asked) = tokio::join!(sd.status(&running), ask(host, s, &check));
    let unit_st = unit_st.map_err(|source| StatusError::Systemd {
        unit: running.clone(),
        source,
    })?;
    // Nothing to ask the service: systemd's answer is the answer.
    let (liveness, readiness) = asked.unwrap_or_else(|| {
        let p = unit_probe(&running, &check, &unit_st);
        (p.clone(), p)
    });
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
    let artifact = artifact_of(recorded, &paths, live.as_deref());
    let mut drift = drift;
    if let (Some(id), Some(rev)) = (&artifact, &live) {
        drift.extend(artifact_drift(&host.env.root, id, &paths.release(rev)).await);
    }
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
    let healthy = unit_st.active_state == ActiveState::Active
        && liveness.ok
        && readiness.ok
        && drift.is_empty()
        && migrations
            .as_ref()
            .is_none_or(|m| m.state == MigrationState::UpToDate);
    Ok(ServiceStatus {
        name: s.name.clone(),
        unit: running,
        phase: s.phase.clone(),
        load_state: unit_st.load_state,
        active_state: unit_st.active_state,
        sub_state: unit_st.sub_state,
        result: unit_st.result,
        since: timestamp(unit_st.active_enter_timestamp_us),
        since_us: unit_st.active_enter_timestamp_us,
        unit_file_state: unit_st.unit_file_state,
        release,
        artifact,
        liveness,
        readiness,
        migrations,
        drift,
        healthy,
    })
}

/// The artifact the live release came from: as the state records it for
/// that release, else as the release's marker says.
fn artifact_of(
    recorded: Option<&crate::state::ServiceState>,
    paths: &Paths,
    live: Option<&str>,
) -> Option<String> {
    let live = live?;
    match recorded {
        Some(r) if r.revision == live && r.artifact.is_some() => r.artifact.clone(),
        _ => crate::artifact::installed_id(&paths.release(live)),
    }
}

/// The release `dir` against the manifest of artifact `id` in the host's
/// store (every file hashed, on the blocking pool): what differs, as one
/// drift.
async fn artifact_drift(root: &str, id: &str, dir: &Path) -> Option<Drift> {
    let store = crate::artifact::Store::at(crate::artifact::host_store(root));
    let (id, dir) = (id.to_owned(), dir.to_owned());
    let shown = format!("{}…", crate::artifact::short(&id));
    let checked = tokio::task::spawn_blocking(move || crate::artifact::drift(&store, &id, &dir))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    match checked {
        Ok(diff) if diff.is_empty() => None,
        Ok(diff) => {
            const SHOWN: usize = 10;
            let mut list = diff
                .iter()
                .take(SHOWN)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ");
            if diff.len() > SHOWN {
                let more = diff.len() - SHOWN;
                list = format!("{list} and {more} more");
            }
            Some(Drift::new(
                DriftKind::ArtifactMismatch,
                format!("release files differ from artifact {shown}: {list}"),
            ))
        }
        Err(e) => Some(Drift::new(
            DriftKind::ArtifactMismatch,
            format!("release cannot be checked against artifact {shown}: {e}"),
        )),
    }
}

/// Asks the service the way its readiness says: liveness and readiness
/// over HTTP (its `health` and `ready` URLs) for `ready` a path or URL;
/// for `"tcp"` and `"exec"` the one readiness probe answers both (the
/// same probe code as the apply's readiness wait, an exec attempt bounded
/// by [`health::EXEC_ATTEMPT`]). `None` for `"notify"` and `"none"`:
/// nothing to ask, the unit's state answers ([`unit_probe`]).
async fn ask(host: &Host, s: &Service, check: &Check) -> Option<(health::Probe, health::Probe)> {
    let one = match check {
        Check::Http { url } => {
            let live = url_for(s, &s.health);
            return Some(tokio::join!(health::probe(&live), health::probe(url)));
        }
        Check::Tcp { address } => health::probe_tcp(address).await,
        Check::Exec { argv } => {
            let env = crate::process::command_env(&host.env, Some(&s.name), None);
            let log = host
                .state_dir
                .join("logs")
                .join("status")
                .join(format!("ready-{}.log", s.name));
            health::probe_exec(argv, &env, &log, health::EXEC_ATTEMPT, |e| {
                format!("the readiness command failed: {e}")
            })
            .await
        }
        Check::Notify | Check::Stable => return None,
    };
    Some((one.clone(), one))
}

/// The probe of a service with nothing to ask (`ready "notify"`,
/// `"none"`): its unit is active and running.
fn unit_probe(unit: &str, check: &Check, st: &UnitStatus) -> health::Probe {
    let kind = if *check == Check::Notify {
        "notify"
    } else {
        "none"
    };
    // A scheduled job is asked through its timer, which waits between runs.
    let timer = std::path::Path::new(unit)
        .extension()
        .is_some_and(|e| e == "timer");
    let ok = st.active_state == ActiveState::Active
        && (st.sub_state == "running" || (timer && st.sub_state == "waiting"));
    health::Probe {
        url: format!("systemd: {unit} (ready \"{kind}\")"),
        status: None,
        ok,
        millis: 0,
        error: (!ok).then(|| {
            format!(
                "{unit} is {} ({}, result {}), not active and running",
                st.active_state, st.sub_state, st.result
            )
        }),
    }
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

/// The apply whose journal is still open while no moorline runs it, if
/// any: it blocks every other apply until `rollback` or `apply --resume`
/// settles it. An apply running now (its process holds the lock) is no
/// drift. A journal that cannot be read is reported as such (it blocks
/// applies just the same).
async fn unfinished_apply(state_dir: &Path, env: &str) -> Option<Drift> {
    let dir = state_dir.to_owned();
    let read = tokio::task::spawn_blocking(move || {
        if crate::lock::held_by_running_moorline(&dir) {
            return Ok(crate::journal::Current::Absent);
        }
        crate::journal::read(&dir)
    })
    .await
    .ok()?;
    let settle = format!(
        "`moorline rollback --env {env}` rolls it back, `moorline apply --resume --env {env}` retries it"
    );
    let detail = match read {
        Ok(crate::journal::Current::Begun(r)) if !r.ended() => {
            let rolling_back = r
                .records
                .iter()
                .any(|r| matches!(r, crate::journal::Record::RollbackBegin { .. }));
            format!(
                "apply {} is unfinished{}: {settle}",
                r.apply_id,
                if rolling_back {
                    " (its rollback began and did not finish)"
                } else {
                    ""
                }
            )
        }
        Ok(_) => return None,
        Err(e) => format!("the journal cannot be read ({e}); no apply can start until it can"),
    };
    Some(Drift::new(DriftKind::UnfinishedApply, detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_seconds() {
        assert_eq!(timestamp(0), None);
        assert_eq!(
            timestamp(1_000_000).as_deref(),
            Some("1970-01-01T00:00:01Z")
        );
    }
}

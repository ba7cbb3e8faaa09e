//! The blue/green steps of a cutover service: start the new release in the
//! slot the proxy does not name, wait for it on its own port, point the
//! upstream file at it (checked, then a graceful proxy reload), let the old
//! slot drain, stop it.
//!
//! Which slot is new is decided once, by `slot-start`, and written to
//! `{root}/{service}/slots/next` before anything is started, so the steps
//! after it, and a resume after a crash, act on the same slot. The upstream
//! file is only ever written to name a slot that answered ready, and a slot
//! is only stopped when the upstream file names the other one: at every
//! point of the journal the proxy points at a ready instance.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Readiness, Service};
use crate::journal::Record;
use crate::plan::{Check, Command};
use crate::release::{self, Paths};
use crate::systemd::ActiveState;
use crate::upstream;

use super::super::journaling::journal_append;
use super::jobs::restart_confirmed;
use super::{Act, ActionError, blocking};

/// The file that records the slot `slot-start` chose.
const NEXT: &str = "next";

/// How long an already running slot may take to answer ready before it is
/// restarted instead of reused.
const REUSE_PROBE: Duration = Duration::from_secs(2);

/// `{root}/{service}/slots`.
fn slots_dir(act: &Act<'_>, svc: &Service) -> PathBuf {
    PathBuf::from(crate::unit::slots_dir(&act.ctx.env, &svc.name))
}

/// The slot the upstream file names, if it is a file moorline wrote.
fn live(upstream_file: &str, svc: &Service, slots: [u16; 2]) -> Option<u16> {
    let text = std::fs::read_to_string(upstream_file).ok()?;
    upstream::live_slot(&text, &svc.name, slots)
}

/// The slot `slot-start` chose for this run.
fn next(act: &Act<'_>, svc: &Service, slots: [u16; 2]) -> Result<u16, ActionError> {
    let path = slots_dir(act, svc).join(NEXT);
    let text = std::fs::read_to_string(&path).map_err(ActionError::io("reading", &path))?;
    text.trim()
        .parse::<u16>()
        .ok()
        .filter(|p| slots.contains(p))
        .ok_or_else(|| ActionError::Io {
            what: "no slot recorded in",
            path: path.display().to_string(),
            source: std::io::ErrorKind::InvalidData.into(),
        })
}

/// The units a failure report of `unit` reads (exit status, journal): for
/// the template unit of a blue/green service, which runs nothing itself,
/// the slot instance the step acted on (the slot `slot-start` chose for the
/// slot steps, the live slot for the others), or both instances when
/// neither is known; `unit` itself otherwise.
pub(super) fn reported_units(act: &Act<'_>, unit: &str) -> Vec<String> {
    let svc = match act.configured("a failure report") {
        Ok(svc) if svc.cutover.is_some() && svc.unit_name == unit => svc,
        _ => return vec![unit.to_owned()],
    };
    let Some(c) = &svc.cutover else {
        return vec![unit.to_owned()];
    };
    let chosen = match act.action.step {
        crate::plan::Step::SlotStart { .. } | crate::plan::Step::SlotReady { .. } => {
            next(act, svc, c.slots).ok()
        }
        _ => None,
    };
    match chosen.or_else(|| live(&c.upstream, svc, c.slots)) {
        Some(slot) => vec![svc.slot_unit(slot)],
        None => svc.running_units(),
    }
}

/// Where a slot's link points (a release directory), if it has one.
fn link(dir: &Path, slot: u16) -> Option<PathBuf> {
    std::fs::read_link(dir.join(slot.to_string())).ok()
}

/// Points `dir/slot` at `target` atomically ([`release::point`]).
fn set_link(dir: &Path, slot: u16, target: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    release::point(dir, &slot.to_string(), target)
}

/// Whether `slot` runs and answers ready now.
async fn serving(act: &Act<'_>, svc: &Service, slot: u16) -> bool {
    let unit = svc.slot_unit(slot);
    let up = matches!(
        act.ctx.systemd.status(&unit).await,
        Ok(s) if s.active_state == ActiveState::Active
    );
    up && crate::health::wait_ready(&slot_url(svc, slot), REUSE_PROBE, || async { Ok(()) })
        .await
        .is_ok()
}

/// The readiness URL of one slot.
fn slot_url(svc: &Service, slot: u16) -> String {
    crate::plan::slot_ready_url(svc).replace("{slot}", &slot.to_string())
}

/// `slot-start`: chooses the new slot and starts `release` there (the live
/// release when `None`), unless a slot already runs it and answers ready:
/// then nothing restarts (going back to the slot the proxy left).
pub(super) async fn start(
    act: &Act<'_>,
    slots: [u16; 2],
    upstream_file: &str,
    release: Option<&str>,
) -> Result<Option<String>, ActionError> {
    let svc = act.configured("a slot start")?;
    let dir = slots_dir(act, svc);
    let paths = Paths::new(&act.ctx.env.root, &svc.name);
    let live = live(upstream_file, svc, slots);
    // The release the new slot runs.
    let want: PathBuf = match release {
        Some(r) => PathBuf::from(r),
        None => live
            .and_then(|l| link(&dir, l))
            .or_else(|| std::fs::read_link(paths.current()).ok())
            .ok_or_else(|| ActionError::Io {
                what: "no live release to restart in a new slot:",
                path: paths.current().display().to_string(),
                source: std::io::ErrorKind::NotFound.into(),
            })?,
    };
    // A slot that runs the release already is reused (a switch back), the
    // live one first; a restart (no release given) always starts anew.
    let mut reuse = None;
    if release.is_some() {
        for s in live
            .into_iter()
            .chain(slots.into_iter().filter(|s| Some(*s) != live))
        {
            if link(&dir, s).as_deref() == Some(want.as_path()) && serving(act, svc, s).await {
                reuse = Some(s);
                break;
            }
        }
    }
    let target = reuse.unwrap_or_else(|| {
        slots
            .into_iter()
            .find(|s| Some(*s) != live)
            .unwrap_or(slots[0])
    });
    {
        let dir = dir.clone();
        blocking(move || {
            std::fs::create_dir_all(&dir).map_err(ActionError::io("creating", &dir))?;
            let path = dir.join(NEXT);
            crate::files::write_atomic(&path, format!("{target}\n").as_bytes())
                .map_err(ActionError::io("writing", &path))
        })
        .await?;
    }
    // `current` follows the release that goes live, journaled first, as a
    // restart's switch is: the rollback of this run reads it.
    if release.is_some() && std::fs::read_link(paths.current()).ok().as_deref() != Some(&want) {
        let to = want
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| ActionError::Io {
                what: "a release directory without a name:",
                path: want.display().to_string(),
                source: std::io::ErrorKind::InvalidInput.into(),
            })?;
        journal_append(
            act.journal,
            Record::Switch {
                service: svc.name.clone(),
                from: paths.live(),
                to,
            },
        )
        .await?;
        let target_dir = want.clone();
        blocking(move || {
            release::switch(&paths, &target_dir)
                .map_err(ActionError::io("switching", &paths.current()))
        })
        .await?;
    }
    if let Some(s) = reuse {
        return Ok(Some(format!(
            "slot {s} already runs {}: nothing restarts",
            want.display()
        )));
    }
    {
        let dir = dir.clone();
        let want = want.clone();
        blocking(move || {
            set_link(&dir, target, &want).map_err(ActionError::io("pointing the slot link", &dir))
        })
        .await?;
    }
    let unit = svc.slot_unit(target);
    restart_confirmed(&act.ctx.systemd, &unit, Duration::ZERO).await?;
    // The slot is enabled so that it starts at boot; the old one is
    // disabled when it stops.
    act.ctx
        .systemd
        .enable(std::slice::from_ref(&unit))
        .await
        .map_err(ActionError::systemd("enabling", &unit))?;
    Ok(Some(format!("slot {target} started on {}", want.display())))
}

/// `slot-ready`: the new slot answers `url` on its own port.
pub(super) async fn ready(
    act: &Act<'_>,
    slots: [u16; 2],
    url: &str,
    timeout_secs: u64,
) -> Result<Option<String>, ActionError> {
    let svc = act.configured("a slot readiness check")?;
    let target = next(act, svc, slots)?;
    let unit = svc.slot_unit(target);
    // A slot answers what the service is asked, on the slot's port.
    let check = match svc.readiness {
        Readiness::Tcp => Check::Tcp {
            address: format!("127.0.0.1:{target}"),
        },
        _ => Check::Http {
            url: url.replace("{slot}", &target.to_string()),
        },
    };
    let note = super::health::health_on(act, &unit, &check, timeout_secs, Some(target)).await?;
    Ok(Some(format!(
        "slot {target} {}",
        note.unwrap_or_else(|| "ready".to_owned())
    )))
}

/// `switch-upstream`: the upstream file names the new slot, the proxy's
/// check passes and the proxy reloads; a failed check or reload puts the
/// previous file back.
pub(super) async fn switch(
    act: &Act<'_>,
    proxy_unit: &str,
    slots: [u16; 2],
    upstream_file: &str,
    check: Option<&Command>,
) -> Result<Option<String>, ActionError> {
    let svc = act.configured("an upstream switch")?;
    let target = next(act, svc, slots)?;
    let path = PathBuf::from(upstream_file);
    let before = std::fs::read_to_string(&path).ok();
    let from = before
        .as_deref()
        .and_then(|t| upstream::live_slot(t, &svc.name, slots));
    let text = upstream::text(&svc.name, target).ok_or_else(|| ActionError::Io {
        what: "a service name nginx cannot take:",
        path: svc.name.clone(),
        source: std::io::ErrorKind::InvalidInput.into(),
    })?;
    let change = upstream::change(&svc.name, from, target);
    // A file that names the slot already is still checked and reloaded:
    // a run killed between writing it and the reload left the proxy on
    // the old slot, which `slot-stop` is about to stop.
    if before.as_deref() != Some(text.as_str()) {
        let (path, text) = (path.clone(), text.clone());
        blocking(move || {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(ActionError::io("creating", parent))?;
            }
            crate::files::write_atomic(&path, text.as_bytes())
                .map_err(ActionError::io("writing", &path))
        })
        .await?;
    }
    if let Err(e) = super::proxy::reload(act, proxy_unit, check).await {
        // Back as it was: the proxy keeps the slot it had.
        let restore = path.clone();
        let _ = blocking(move || {
            match before {
                Some(t) => crate::files::write_atomic(&restore, t.as_bytes()),
                None => std::fs::remove_file(&restore),
            }
            .map_err(ActionError::io("restoring", &restore))
        })
        .await;
        return Err(e);
    }
    Ok(Some(change))
}

/// `drain`: the old slot finishes its requests, when one still runs.
pub(super) async fn drain(act: &Act<'_>, secs: u64) -> Result<Option<String>, ActionError> {
    let svc = act.configured("a drain")?;
    let Some(c) = &svc.cutover else {
        return Ok(None);
    };
    let target = next(act, svc, c.slots)?;
    let mut old = None;
    for s in c.slots.into_iter().filter(|s| *s != target) {
        if let Ok(st) = act.ctx.systemd.status(&svc.slot_unit(s)).await
            && st.active_state.is_up()
        {
            old = Some(s);
        }
    }
    let Some(old) = old else {
        return Ok(Some("no old slot runs: nothing to drain".to_owned()));
    };
    tokio::time::sleep(Duration::from_secs(secs)).await;
    Ok(Some(format!("slot {old} drained for {secs}s")))
}

/// `slot-stop`: stops (and disables) every slot the upstream file does not
/// name, or every slot when `upstream_file` is `None`; then removes
/// `unlink`.
pub(super) async fn stop(
    act: &Act<'_>,
    slots: [u16; 2],
    upstream_file: Option<&str>,
    unlink: Option<&str>,
) -> Result<Option<String>, ActionError> {
    let svc = act.configured("a slot stop")?;
    let keep = upstream_file.and_then(|f| live(f, svc, slots));
    if upstream_file.is_some() && keep.is_none() {
        // The file names no slot of ours: stopping either could leave the
        // proxy without an instance.
        return Err(ActionError::Io {
            what: "the upstream file names no slot; nothing is stopped:",
            path: upstream_file.unwrap_or_default().to_owned(),
            source: std::io::ErrorKind::InvalidData.into(),
        });
    }
    let mut stopped = Vec::new();
    for s in slots.into_iter().filter(|s| Some(*s) != keep) {
        let unit = svc.slot_unit(s);
        match act.ctx.systemd.stop(&unit).await {
            Ok(job) => job
                .check("stop", &unit)
                .map_err(ActionError::systemd("stopping", &unit))?,
            Err(crate::systemd::SystemdError::NoSuchUnit { .. }) => {}
            Err(e) => return Err(ActionError::systemd("stopping", &unit)(e)),
        }
        match act.ctx.systemd.disable(std::slice::from_ref(&unit)).await {
            Ok(()) | Err(crate::systemd::SystemdError::NoSuchUnit { .. }) => {}
            Err(e) => return Err(ActionError::systemd("disabling", &unit)(e)),
        }
        stopped.push(s.to_string());
    }
    if let Some(l) = unlink {
        let l = PathBuf::from(l);
        blocking(move || match std::fs::remove_file(&l) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(ActionError::io("removing", &l)(e))
            }
            _ => Ok(()),
        })
        .await?;
    }
    Ok(Some(format!("slot {} stopped", stopped.join(" and "))))
}

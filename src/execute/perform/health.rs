//! The health step: wait until the service passes its readiness check (an
//! HTTP answer, a TCP connection, a command that exits 0) while its unit
//! stays up, then until it has been active for [`SETTLE`] as the same
//! invocation (the settle check). `ready "notify"` and `ready "none"` have
//! nothing to ask: the settle check alone decides. While it waits, the live
//! view shows what the last probe saw, and a unit whose processes listen
//! on other ports than the configured one fails within
//! [`PORT_MISMATCH_GRACE`], naming them.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::health::{self, Probe};
use crate::plan::Check;
use crate::systemd::{SETTLE, Systemd};

use super::{Act, ActionError};

/// How long a unit's processes may listen on other ports, and not on the
/// configured one, before the wait fails naming them. A service that opens
/// an admin or metrics port a moment before its main one is not failed for
/// it; one that listens on the wrong port fails within seconds instead of
/// at its ready-timeout.
pub(crate) const PORT_MISMATCH_GRACE: Duration = Duration::from_secs(5);

/// How often a waiting readiness check reads which ports the unit listens
/// on (a pass over `/proc`), at most.
const PORTS_EVERY: Duration = Duration::from_secs(1);

/// Waits for `unit` to pass `check` (for up to `timeout_secs`) and settle;
/// the port it should listen on is the service's configured one.
pub(super) async fn health(
    act: &Act<'_>,
    unit: &str,
    check: &Check,
    timeout_secs: u64,
) -> Result<Option<String>, ActionError> {
    let port = act
        .configured("a readiness check")
        .ok()
        .and_then(|s| s.port);
    health_on(act, unit, check, timeout_secs, port).await
}

/// [`health`] for a unit that should listen on `port` (a blue/green slot
/// listens on its slot's port, not the service's).
pub(super) async fn health_on(
    act: &Act<'_>,
    unit: &str,
    check: &Check,
    timeout_secs: u64,
    port: Option<u16>,
) -> Result<Option<String>, ActionError> {
    let sd = act.ctx.systemd.clone();
    let started = Instant::now();
    let invocation = sd
        .status(unit)
        .await
        .map(|s| s.invocation_id)
        .unwrap_or_default();
    let timeout = Duration::from_secs(timeout_secs);
    let id = act.action.id.clone();
    let progress = act.ctx.options.progress;
    let seen = move |p: &Probe| {
        super::super::progress::probe_seen(
            progress,
            &id,
            p.error.as_deref().unwrap_or("not ready"),
        );
    };
    let probes = Arc::new(Mutex::new(0u32));
    let counted = |f: Probe| {
        *probes.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        f
    };
    let alive = Alive::new(&sd, unit, port);
    let (what, probe) = match check {
        Check::Http { url } => (
            url.clone(),
            health::wait_until(
                url,
                timeout,
                || async { counted(health::probe(url).await) },
                || alive.check(),
                seen,
            )
            .await,
        ),
        Check::Tcp { address } => (
            format!("tcp://{address}"),
            health::wait_until(
                address,
                timeout,
                || async { counted(health::probe_tcp(address).await) },
                || alive.check(),
                seen,
            )
            .await,
        ),
        Check::Exec { argv } => {
            let shown = argv.join(" ");
            let deadline = started + timeout;
            (
                shown.clone(),
                health::wait_until(
                    &shown,
                    timeout,
                    || async { counted(exec_probe(act, argv, deadline).await) },
                    || alive.check(),
                    seen,
                )
                .await,
            )
        }
        Check::Notify | Check::Stable => {
            settled(&sd, unit, &invocation).await?;
            let why = if *check == Check::Notify {
                "sent READY=1"
            } else {
                "nothing to ask (ready \"none\")"
            };
            return Ok(Some(format!(
                "up: {why}, and stayed up for the {} ms settle window",
                SETTLE.as_millis()
            )));
        }
    };
    let probe = probe.map_err(|p| ActionError::NotReady {
        url: what,
        error: p.error.unwrap_or_else(|| "no answer".to_owned()),
    })?;
    let waited = started.elapsed().as_millis();
    settled(&act.ctx.systemd, unit, &invocation).await?;
    let n = *probes.lock().unwrap_or_else(PoisonError::into_inner);
    Ok(Some(format!(
        "ready after {waited} ms of checking, at probe {n} (that probe took {} ms)",
        probe.millis
    )))
}

/// One `ready "exec"` attempt: the command runs like a configured command
/// (argv, the service's command environment, its output in the action's
/// log), bounded by [`health::EXEC_ATTEMPT`] and the wait's deadline.
async fn exec_probe(act: &Act<'_>, argv: &[String], deadline: Instant) -> Probe {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    let env = super::command_env(act.ctx, act.action.service.as_deref(), None);
    let log = act.log();
    health::probe_exec(argv, &env, &log, health::EXEC_ATTEMPT.min(left), |e| {
        // The message's first line: the tail of its output follows.
        ActionError::Command {
            what: "the readiness command",
            source: Box::new(e),
        }
        .message()
    })
    .await
}

/// What is asked between two probes: the unit is still up, and its
/// processes do not listen only on ports other than the configured one.
struct Alive<'a> {
    sd: &'a Systemd,
    unit: &'a str,
    port: Option<u16>,
    /// Since when its processes listen elsewhere and not on `port`.
    elsewhere_since: Mutex<Option<Instant>>,
    /// When its ports were last read.
    ports_read: Mutex<Option<Instant>>,
}

impl<'a> Alive<'a> {
    fn new(sd: &'a Systemd, unit: &'a str, port: Option<u16>) -> Self {
        Self {
            sd,
            unit,
            port,
            elsewhere_since: Mutex::new(None),
            // The first read after PORTS_EVERY: a service that is ready
            // within a second (most are) never costs a pass over /proc.
            ports_read: Mutex::new(Some(Instant::now())),
        }
    }

    async fn check(&self) -> Result<(), String> {
        match self.sd.status(self.unit).await {
            Ok(s) if s.active_state.is_up() => {}
            Ok(s) => return Err(s.down(self.unit).to_string()),
            // The bus is busy or reconnecting: the probe decides.
            Err(_) => return Ok(()),
        }
        let Some(port) = self.port else {
            return Ok(());
        };
        {
            let mut last = self
                .ports_read
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|t| t.elapsed() < PORTS_EVERY) {
                return Ok(());
            }
            *last = Some(Instant::now());
        }
        // Read from /proc by the unit's cgroup, not by PID: the manager
        // may see its processes in another PID namespace than moorline's.
        let Ok(cgroup) = self.sd.control_group(self.unit).await else {
            return Ok(());
        };
        let ports = tokio::task::spawn_blocking(move || crate::hostfacts::ports_of_cgroup(&cgroup))
            .await
            .unwrap_or_default();
        let mut since = self
            .elsewhere_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if ports.is_empty() || ports.contains(&port) {
            *since = None;
            return Ok(());
        }
        let first = *since.get_or_insert_with(Instant::now);
        if first.elapsed() < PORT_MISMATCH_GRACE {
            return Ok(());
        }
        Err(elsewhere(self.unit, port, &ports))
    }
}

/// The message of a unit that listens on other ports than `port`.
fn elsewhere(unit: &str, port: u16, ports: &BTreeSet<u16>) -> String {
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
    let (word, them) = if ports.len() == 1 {
        ("port", "it")
    } else {
        ("ports", "one of them")
    };
    format!(
        "{unit} is up and listens on {word} {}, not on its configured port {port} (for {}s): \
         make the service listen on {port} (the PORT it is given), or set its `port` to {them}",
        list.join(", "),
        PORT_MISMATCH_GRACE.as_secs()
    )
}

/// After readiness: the unit has been active for at least [`SETTLE`] since
/// it (re)started and is still the same invocation. A process that answers
/// once and then crashes (and is restarted by `Restart=`) is not ready.
async fn settled(sd: &Systemd, unit: &str, invocation: &str) -> Result<(), ActionError> {
    let st = sd
        .status(unit)
        .await
        .map_err(ActionError::systemd("reading the state of", unit))?;
    let now_us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let since = Duration::from_micros(now_us.saturating_sub(st.active_enter_timestamp_us));
    if since < SETTLE {
        tokio::time::sleep(SETTLE.saturating_sub(since)).await;
    }
    let st = sd
        .status(unit)
        .await
        .map_err(ActionError::systemd("reading the state of", unit))?;
    if st.active_state != crate::systemd::ActiveState::Active
        || (!invocation.is_empty() && st.invocation_id != invocation)
    {
        return Err(ActionError::Unsettled {
            unit: unit.to_owned(),
            state: format!(
                "{} ({}, result {})",
                st.active_state, st.sub_state, st.result
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_listening_elsewhere_is_told_which_ports() {
        assert_eq!(
            elsewhere("a.service", 3000, &BTreeSet::from([8080])),
            "a.service is up and listens on port 8080, not on its configured port 3000 (for 5s): \
             make the service listen on 3000 (the PORT it is given), or set its `port` to it"
        );
        assert!(
            elsewhere("a.service", 3000, &BTreeSet::from([8080, 9090]))
                .contains("ports 8080, 9090, not on its configured port 3000")
        );
    }
}

//! The health step: wait until the service answers its readiness URL while
//! its unit stays up, then until it has been active for [`SETTLE`] as the
//! same invocation (the settle check).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::health;
use crate::systemd::{SETTLE, Systemd};

use super::{Act, ActionError};

/// Waits for `unit` to answer `url` (for up to `timeout_secs`) and settle.
pub(super) async fn health(
    act: &Act<'_>,
    unit: &str,
    url: &str,
    timeout_secs: u64,
) -> Result<Option<String>, ActionError> {
    let sd = act.ctx.systemd.clone();
    let invocation = sd
        .status(unit)
        .await
        .map(|s| s.invocation_id)
        .unwrap_or_default();
    let probe = health::wait_ready(url, Duration::from_secs(timeout_secs), || {
        let sd = sd.clone();
        let unit = unit.to_owned();
        async move {
            match sd.status(&unit).await {
                Ok(s) if s.active_state.is_up() => Ok(()),
                Ok(s) => Err(s.down(&unit)),
                Err(_) => Ok(()),
            }
        }
    })
    .await
    .map_err(|p| ActionError::NotReady {
        url: url.to_owned(),
        error: p.error.unwrap_or_else(|| "no answer".to_owned()),
    })?;
    settled(&act.ctx.systemd, unit, &invocation).await?;
    Ok(Some(format!("ready in {} ms", probe.millis)))
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

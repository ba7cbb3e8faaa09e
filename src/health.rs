//! Health checks: one HTTP GET (2xx is healthy) and readiness polling with
//! a fixed interval until a deadline. Plain HTTP on the host's loopback;
//! the client runs on tokio's blocking pool.

use std::time::{Duration, Instant};

use serde::Serialize;

/// Time between two readiness polls: short enough that a service ready in
/// ~70 ms (a small HTTP server, measured here) is seen within one more
/// interval, long enough not to load a service that is starting.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// One request's own limit; a service that accepts but never answers is
/// not ready.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Probe {
    pub url: String,
    /// HTTP status, if an answer came.
    pub status: Option<u16>,
    pub ok: bool,
    pub millis: u64,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

/// One GET, blocking; 2xx is healthy.
pub fn probe_blocking(url: &str) -> Probe {
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .timeout_global(Some(REQUEST_TIMEOUT))
            .http_status_as_error(false)
            .build(),
    );
    let start = Instant::now();
    let res = agent.get(url).call();
    let millis = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    match res {
        Ok(r) => {
            let status = r.status().as_u16();
            Probe {
                url: url.to_owned(),
                status: Some(status),
                ok: (200..300).contains(&status),
                millis,
                error: (!(200..300).contains(&status)).then(|| format!("answered {status}")),
            }
        }
        Err(e) => Probe {
            url: url.to_owned(),
            status: None,
            ok: false,
            millis,
            error: Some(e.to_string()),
        },
    }
}

/// One GET on tokio's blocking pool.
pub async fn probe(url: &str) -> Probe {
    let u = url.to_owned();
    tokio::task::spawn_blocking(move || probe_blocking(&u))
        .await
        .unwrap_or_else(|e| Probe {
            url: url.to_owned(),
            status: None,
            ok: false,
            millis: 0,
            error: Some(e.to_string()),
        })
}

/// Polls until ready or `timeout`; returns the last probe and whether ready.
/// `still_alive` is asked between polls so a crashed unit fails at once
/// instead of at the deadline.
pub async fn wait_ready<F, Fut>(
    url: &str,
    timeout: Duration,
    mut still_alive: F,
) -> Result<Probe, Probe>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let p = probe(url).await;
        if p.ok {
            return Ok(p);
        }
        if let Err(why) = still_alive().await {
            return Err(Probe {
                error: Some(why),
                ..p
            });
        }
        if Instant::now() >= deadline {
            return Err(Probe {
                error: Some(format!(
                    "not ready after {}s: {}",
                    timeout.as_secs(),
                    p.error.clone().unwrap_or_default()
                )),
                ..p
            });
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

//! Health checks: one HTTP GET (2xx is healthy) and readiness polling that
//! backs off (with jitter) until a deadline, probing once more at the
//! deadline. Plain HTTP on the host's loopback; the client runs on tokio's
//! blocking pool, and at most [`max_probes`] requests are in flight at once
//! in this process, however many services a phase starts.

use std::hash::BuildHasher as _;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Semaphore;

/// The first wait between two readiness polls: a small HTTP server is ready
/// in ~70 ms (measured here), so it is seen after two or three polls.
pub(crate) const FIRST_INTERVAL: Duration = Duration::from_millis(25);
/// The longest wait between two polls. The wait doubles from
/// [`FIRST_INTERVAL`] up to this, so a slow service costs about four polls a
/// second instead of forty, while one that takes seconds is still seen
/// within a quarter second of being ready. (500 ms cost 10–20% more apply
/// time in `cargo bench --bench scale` at 50 and 150 services: a phase
/// waits for its last service's next poll.)
pub(crate) const MAX_INTERVAL: Duration = Duration::from_millis(250);
/// In-flight probes per core. A probe is mostly waiting (connect, the
/// service's answer), so a few per core keep the cores busy without 150
/// readiness loops of one phase swamping the services that are starting.
pub(crate) const PROBES_PER_CORE: usize = 4;
/// One request's own limit; a service that accepts but never answers is
/// not ready.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Probe {
    pub(crate) url: String,
    /// HTTP status, if an answer came.
    pub(crate) status: Option<u16>,
    pub ok: bool,
    pub(crate) millis: u64,
    /// Why it failed, when it did.
    pub(crate) error: Option<String>,
}

/// One GET, blocking; 2xx is healthy.
pub(crate) fn probe_blocking(url: &str) -> Probe {
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
            let ok = (200..300).contains(&status);
            let error = (!ok).then(|| {
                let body = body_snippet(r.into_body().into_reader());
                if body.is_empty() {
                    format!("answered {status}")
                } else {
                    format!("answered {status}: {body}")
                }
            });
            Probe {
                url: url.to_owned(),
                status: Some(status),
                ok,
                millis,
                error,
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

/// How much of a failed answer's body a probe's error shows (bytes).
pub(crate) const BODY_SHOWN: usize = 200;
/// How much more is read past it, so that a secret that starts inside the
/// shown part is recognised whole and redacted, never cut in half.
const BODY_SLACK: usize = 4096;

/// The start of a failed answer's body for an error line: at most
/// [`BODY_SHOWN`] bytes (read no further than [`BODY_SLACK`] past that),
/// secrets redacted, whitespace runs and control characters folded into
/// single spaces (so it stays one line); `…` when cut. Empty for an empty
/// body.
pub(crate) fn body_snippet(body: impl std::io::Read) -> String {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    let limit = u64::try_from(BODY_SHOWN + BODY_SLACK).unwrap_or(u64::MAX);
    // A body that cannot be read shows what was read of it.
    let _ = body.take(limit).read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let folded = text
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if folded.is_empty() {
        return String::new();
    }
    let (shown, cut) = crate::secrets::known().redact_prefix(&folded, BODY_SHOWN);
    let more = if cut { "…" } else { "" };
    format!("{shown}{more}")
}

/// How many probes may be in flight at once: [`PROBES_PER_CORE`] per core.
pub(crate) fn max_probes() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get) * PROBES_PER_CORE
}

/// The process-wide bound on in-flight probes. A probe holds its permit only
/// for its one request (at most [`REQUEST_TIMEOUT`]) and waits for nothing
/// else while holding it, so the bound cannot deadlock.
fn probes() -> &'static Semaphore {
    static PROBES: OnceLock<Semaphore> = OnceLock::new();
    PROBES.get_or_init(|| Semaphore::new(max_probes()))
}

/// The wait before poll `attempt + 1` (0-based): [`FIRST_INTERVAL`] doubled
/// per attempt, capped at [`MAX_INTERVAL`], then jittered down to between
/// half and all of it ("equal jitter"), so loops started together by one
/// phase drift apart instead of polling in lockstep. `noise` is any random
/// number.
pub(crate) fn backoff(attempt: u32, noise: u64) -> Duration {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let full = ms(FIRST_INTERVAL)
        .saturating_mul(1u64 << attempt.min(16))
        .min(ms(MAX_INTERVAL));
    let half = full / 2;
    Duration::from_millis(half + noise % (full - half + 1))
}

/// A random number for the jitter: std's randomly keyed hasher (a new key
/// per call) over the URL and attempt; no RNG dependency needed.
fn noise(url: &str, attempt: u32) -> u64 {
    std::collections::hash_map::RandomState::new().hash_one((url, attempt))
}

/// One GET on tokio's blocking pool, once a probe permit is free.
pub async fn probe(url: &str) -> Probe {
    let _permit = probes().acquire().await.ok();
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

/// One TCP connection to `address` (`127.0.0.1:PORT`), closed at once;
/// bounded by [`REQUEST_TIMEOUT`] and by the probe permits.
pub(crate) async fn probe_tcp(address: &str) -> Probe {
    let _permit = probes().acquire().await.ok();
    let start = Instant::now();
    let res = tokio::time::timeout(REQUEST_TIMEOUT, tokio::net::TcpStream::connect(address)).await;
    let millis = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    let error = match res {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(format!("connecting to {address}: {e}")),
        Err(_) => Some(format!(
            "connecting to {address}: no answer within {}s",
            REQUEST_TIMEOUT.as_secs()
        )),
    };
    Probe {
        url: format!("tcp://{address}"),
        status: None,
        ok: error.is_none(),
        millis,
        error,
    }
}

/// How long one `ready "exec"` attempt may run (a readiness wait's own
/// deadline cuts it shorter).
pub(crate) const EXEC_ATTEMPT: Duration = Duration::from_secs(10);

/// One `ready "exec"` attempt: `argv` runs like a configured command
/// ([`crate::process::run`]: no shell, `env`, its output in `log`), for at
/// most `timeout`; exit 0 is ready. `describe` words a failure (its lines
/// are folded into one).
pub(crate) async fn probe_exec(
    argv: &[String],
    env: &std::collections::BTreeMap<String, String>,
    log: &std::path::Path,
    timeout: Duration,
    describe: impl FnOnce(crate::process::RunError) -> String,
) -> Probe {
    let start = Instant::now();
    let res = crate::process::run(crate::process::Run {
        argv,
        dir: None,
        env,
        timeout,
        log,
    })
    .await;
    Probe {
        url: argv.join(" "),
        status: None,
        ok: res.is_ok(),
        millis: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
        error: res.err().map(|e| describe(e).replace('\n', " | ")),
    }
}

/// Polls `url` until ready or `timeout` ([`wait_until`] with HTTP probes).
pub async fn wait_ready<F, Fut>(
    url: &str,
    timeout: Duration,
    still_alive: F,
) -> Result<Probe, Probe>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), crate::systemd::UnitDown>>,
{
    wait_until(url, timeout, || probe(url), still_alive, |_| {}).await
}

/// Polls until ready or `timeout`; returns the last probe and whether ready.
/// The waits between polls grow ([`backoff`]); the last one is cut short so
/// a final probe runs at the deadline. `still_alive` is asked between polls
/// so a crashed unit fails at once instead of at the deadline. `seen` gets
/// every failed probe (what the live view shows while the wait runs).
/// `what` keys the jitter (the URL, address or command).
pub(crate) async fn wait_until<P, PFut, F, Fut, E>(
    what: &str,
    timeout: Duration,
    mut probe: P,
    mut still_alive: F,
    mut seen: impl FnMut(&Probe),
) -> Result<Probe, Probe>
where
    P: FnMut() -> PFut,
    PFut: std::future::Future<Output = Probe>,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let url = what;
    let deadline = Instant::now() + timeout;
    let mut attempt: u32 = 0;
    loop {
        let p = probe().await;
        if p.ok {
            return Ok(p);
        }
        seen(&p);
        if let Err(why) = still_alive().await {
            return Err(Probe {
                error: Some(why.to_string()),
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
        let wait = backoff(attempt, noise(url, attempt));
        attempt = attempt.saturating_add(1);
        tokio::time::sleep(wait.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_from_the_first_interval_to_the_cap() {
        // (attempt, noise) -> wait: half of the full interval plus noise
        // modulo (half + 1) ms.
        let cases = [
            (0, 0, 12),
            (0, 13, 25),
            (0, 14, 12),
            (1, 0, 25),
            (2, 0, 50),
            (3, 0, 100),
            (4, 0, 125),
            (4, 125, 250),
            (5, 0, 125),
            (40, 125, 250),
            (u32::MAX, 7, 132),
        ];
        for (attempt, noise, ms) in cases {
            assert_eq!(
                backoff(attempt, noise),
                Duration::from_millis(ms),
                "attempt {attempt}, noise {noise}"
            );
        }
    }

    #[test]
    fn backoff_never_exceeds_the_cap_nor_goes_below_half_the_first_interval() {
        for attempt in 0..64 {
            for noise in [0, 1, 99, 12_345, u64::MAX] {
                let d = backoff(attempt, noise);
                assert!(d <= MAX_INTERVAL, "{attempt}/{noise}: {d:?}");
                assert!(d >= Duration::from_millis(12), "{attempt}/{noise}: {d:?}");
            }
        }
    }

    #[test]
    fn jitter_differs_between_calls() {
        let a: Vec<u64> = (0..8).map(|_| noise("http://x/ready", 3)).collect();
        assert!(a.windows(2).any(|w| w[0] != w[1]), "{a:?}");
    }

    #[tokio::test]
    async fn wait_ready_probes_once_more_at_the_deadline() {
        // Nothing listens on a fresh port: every probe fails at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/ready");
        let polls = std::sync::atomic::AtomicUsize::new(0);
        let started = Instant::now();
        let res = wait_ready(&url, Duration::from_millis(700), || {
            polls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { Ok(()) }
        })
        .await;
        let took = started.elapsed();
        assert!(res.is_err());
        assert!(took >= Duration::from_millis(700), "{took:?}");
        // Backed off: 25, 50, 100, 200, 400 ms (at most) fit in 700 ms, so
        // five to nine polls, not the fourteen a fixed 50 ms would make.
        let n = polls.load(std::sync::atomic::Ordering::SeqCst);
        assert!((4..=10).contains(&n), "{n} polls");
    }

    #[test]
    fn a_failed_answer_shows_a_bounded_redacted_snippet_of_its_body() {
        crate::secrets::register(["s3cr3t-body-token"]);
        assert_eq!(body_snippet(&b""[..]), "");
        assert_eq!(body_snippet(&b" \n\t"[..]), "");
        assert_eq!(
            body_snippet(&b"database down:\n  token=s3cr3t-body-token\r\n"[..]),
            "database down: token=(redacted)"
        );
        let long = "x".repeat(10_000);
        let s = body_snippet(long.as_bytes());
        assert!(s.ends_with('…'), "{s}");
        assert!(s.len() <= BODY_SHOWN + 8, "{}", s.len());
        // A secret across the cut is left out whole, never shown in part.
        let across = format!("{}s3cr3t-body-token and more", "y".repeat(BODY_SHOWN - 5));
        let s = body_snippet(across.as_bytes());
        assert!(!s.contains("s3cr3"), "{s}");
        assert!(s.ends_with('…'), "{s}");
    }

    #[tokio::test]
    async fn a_dead_unit_fails_before_the_deadline() {
        let started = Instant::now();
        let res = wait_ready(
            "http://127.0.0.1:9/ready",
            Duration::from_mins(1),
            || async {
                Err(crate::systemd::UnitDown {
                    unit: "a.service".to_owned(),
                    active_state: crate::systemd::ActiveState::Failed,
                    sub_state: "failed".to_owned(),
                    result: "exit-code".to_owned(),
                })
            },
        )
        .await;
        assert_eq!(
            res.unwrap_err().error.as_deref(),
            Some("a.service is failed (failed, result exit-code)")
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}

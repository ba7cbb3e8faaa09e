//! The `promote-from` rule, written once for a host and for a fleet: which
//! run of a revision in the source environment counts (its latest run of
//! the revision or of a commit with the same tree, healthy: not rolled
//! back by hand, and for at least `min-healthy`), whether the bytes it ran
//! are the ones planned (artifact hashes), and what a source host reports
//! of its deploys to a fleet controller ([`Record`], `moorline
//! promotion-record` on the host). In: a state's deploy history and plain
//! values (times, hashes); out: a [`Verdict`] and its words. Pure, except
//! [`Record::of`], which reads the host's state and repository.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::plan::PromotionRun;
use crate::state::State;

/// Version of the [`Record`] a host prints (docs/fleet.md).
pub(crate) const RECORD_VERSION: u32 = 1;

/// Every run a state records, oldest first: its deploys, or, for a state
/// written before deploy times were recorded, its deployed revision with
/// no time.
pub(crate) fn runs_of(st: &State) -> Vec<PromotionRun> {
    if st.deploys.is_empty() {
        return st
            .revision
            .iter()
            .map(|r| PromotionRun {
                revision: r.clone(),
                at: None,
                until: None,
                rolled_back_at: st.rolled_back.as_ref().map(|rb| rb.at),
            })
            .collect();
    }
    st.deploys
        .iter()
        .map(|d| PromotionRun {
            revision: d.revision.clone(),
            at: Some(d.at),
            until: d.until,
            rolled_back_at: d.rolled_back_at,
        })
        .collect()
}

/// The latest of `runs` (oldest first) whose revision is the one wanted
/// (`same`: the revision, or a commit with its tree).
pub(crate) fn latest(runs: &[PromotionRun], same: impl Fn(&str) -> bool) -> Option<&PromotionRun> {
    runs.iter().rev().find(|r| same(&r.revision))
}

/// Whether a source's run of the revision counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// It ran healthy (for at least `min-healthy`, when one is asked).
    Counts,
    /// It never ran the revision (or a commit with the same tree).
    Never,
    /// It ran it, and it was rolled back by hand there at `at`.
    RolledBack { at: u64 },
    /// It ran it healthy for less than `min-healthy`: still live since
    /// `since` (it counts from `since + min-healthy`), or only from `since`
    /// to `until` (it never will).
    TooShort { since: u64, until: Option<u64> },
    /// It ran it, but its deploy time was not recorded (a state from
    /// before moorline recorded deploy times), so `min-healthy` cannot be
    /// checked.
    NoTime,
}

/// How the run `run` (the latest of the revision, if any) counts, with
/// `min_healthy` seconds asked and `now` the source's clock (seconds since
/// the epoch).
pub(crate) fn judge(run: Option<&PromotionRun>, min_healthy: u64, now: u64) -> Verdict {
    let Some(r) = run else {
        return Verdict::Never;
    };
    if let Some(at) = r.rolled_back_at {
        return Verdict::RolledBack { at };
    }
    if min_healthy == 0 {
        return Verdict::Counts;
    }
    let Some(since) = r.at else {
        return Verdict::NoTime;
    };
    let end = r.until.unwrap_or(now);
    if end.saturating_sub(since) >= min_healthy {
        Verdict::Counts
    } else {
        Verdict::TooShort {
            since,
            until: r.until,
        }
    }
}

/// The verdict a plan recorded, read back from its values without a clock
/// (`healthy`: whether the run counted when the plan was made).
pub(crate) fn verdict_of(ran: Option<&PromotionRun>, healthy: bool) -> Verdict {
    match ran {
        None => Verdict::Never,
        Some(_) if healthy => Verdict::Counts,
        Some(r) => match (r.rolled_back_at, r.at) {
            (Some(at), _) => Verdict::RolledBack { at },
            (None, None) => Verdict::NoTime,
            (None, Some(since)) => Verdict::TooShort {
                since,
                until: r.until,
            },
        },
    }
}

/// How long a run that counts ran: "deployed there T and still live",
/// "deployed there T and stayed healthy for 2h 10m, until the next
/// deploy", or, from an old state, that it is the deployed revision.
pub(crate) fn how_long(r: &PromotionRun) -> String {
    match (r.at, r.until) {
        (Some(at), Some(until)) => format!(
            "deployed there {} and stayed healthy for {}, until the next deploy",
            when(at),
            span(until.saturating_sub(at))
        ),
        (Some(at), None) => format!("deployed there {} and still live", when(at)),
        (None, _) => "its deployed revision there (deployed before moorline recorded deploy times)"
            .to_owned(),
    }
}

/// A time from a state file, for a plan (UTC, to the second).
pub(crate) fn when(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

/// `30m`, `2h 10m`: a number of seconds as a reader writes it.
pub(crate) fn span(secs: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

/// Why the run does not count, as the refusal says it (`None`: it
/// counts): "staging never ran SHA", "staging ran SHA, but ...". `source`
/// names where (an environment, or `staging host s1`).
pub(crate) fn why_not(v: &Verdict, source: &str, sha: &str, min_healthy: u64) -> Option<String> {
    let min = span(min_healthy);
    Some(match v {
        Verdict::Counts => return None,
        Verdict::Never => format!("{source} never ran {sha}"),
        Verdict::RolledBack { .. } => {
            format!("{source} ran {sha}, but it was rolled back by hand there")
        }
        Verdict::TooShort { since, until: None } => format!(
            "{source} runs {sha} healthy since {}, less than min-healthy {min}: it counts from {}",
            when(*since),
            when(since.saturating_add(min_healthy))
        ),
        Verdict::TooShort {
            since,
            until: Some(until),
        } => format!(
            "{source} ran {sha} healthy for {} only ({} until the next deploy), less than min-healthy {min}",
            span(until.saturating_sub(*since)),
            when(*since)
        ),
        Verdict::NoTime => format!(
            "{source} ran {sha}, but before moorline recorded deploy times, so min-healthy {min} cannot be checked"
        ),
    })
}

/// The services whose artifact the source ran differs from the one
/// planned, each `service: sha256:… vs sha256:…` (the source's first), in
/// service order. A service missing on either side (not built as an
/// artifact, or not run there) is not compared: only bytes both sides
/// name can differ.
pub(crate) fn artifacts_differ(
    source: &BTreeMap<String, String>,
    planned: &BTreeMap<String, String>,
) -> Vec<String> {
    source
        .iter()
        .filter_map(|(service, ran)| {
            let want = planned.get(service)?;
            (want != ran).then(|| format!("{service}: {} vs {}", short_hash(ran), short_hash(want)))
        })
        .collect()
}

/// `sha256:` and the first 12 hex digits of an artifact hash (the whole
/// string when it is not of that form).
fn short_hash(h: &str) -> String {
    match h.strip_prefix("sha256:") {
        Some(hex) if hex.len() > 12 && hex.is_ascii() => format!("sha256:{}…", &hex[..12]),
        _ => h.to_owned(),
    }
}

/// What a host of the source environment reports to a fleet controller
/// checking `promote-from` (`moorline promotion-record --env ENV` there,
/// one JSON object on standard output): its deploy history, with each
/// revision's tree (its repository has every commit it deployed), its
/// clock, and the artifacts of its live releases. Read-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) format_version: u32,
    pub(crate) project: String,
    pub(crate) environment: String,
    /// The host's clock when it answered (seconds since the epoch): the
    /// `now` that `min-healthy` of a still-live run is measured against,
    /// on the same clock as the run's times.
    pub(crate) now: u64,
    /// Whether a state is recorded there (nothing deployed: `false`).
    pub(crate) deployed: bool,
    /// Its runs, oldest first ([`runs_of`]).
    pub(crate) runs: Vec<RecordedRun>,
    /// Per service, the artifact (`sha256:…`) its live release came from;
    /// empty while states record none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) artifacts: BTreeMap<String, String>,
}

/// One run in a [`Record`]: the run and its revision's tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RecordedRun {
    #[serde(flatten)]
    pub(crate) run: PromotionRun,
    /// The tree of its revision, as the host's repository has it (`null`:
    /// the host lacks the commit).
    pub(crate) tree: Option<String>,
}

impl Record {
    /// The record of `st` (`None`: nothing recorded as deployed), each
    /// run's tree read with `tree_of`, at `now`.
    pub(crate) fn of(
        project: &str,
        environment: &str,
        st: Option<&State>,
        tree_of: impl Fn(&str) -> Option<String>,
        now: u64,
    ) -> Self {
        Self {
            format_version: RECORD_VERSION,
            project: project.to_owned(),
            environment: environment.to_owned(),
            now,
            deployed: st.is_some(),
            runs: st
                .map(runs_of)
                .unwrap_or_default()
                .into_iter()
                .map(|run| RecordedRun {
                    tree: tree_of(&run.revision),
                    run,
                })
                .collect(),
            artifacts: st.map(live_artifacts).unwrap_or_default(),
        }
    }

    /// Its latest run of `to` or of a commit whose tree is `tree`.
    pub(crate) fn latest(&self, to: &str, tree: Option<&str>) -> Option<&RecordedRun> {
        self.runs
            .iter()
            .rev()
            .find(|r| r.run.revision == to || (tree.is_some() && r.tree.as_deref() == tree))
    }
}

/// Per service, the artifact its live release came from, as the state
/// records it (services built on the host are left out: nothing to
/// compare).
fn live_artifacts(st: &State) -> BTreeMap<String, String> {
    st.services
        .iter()
        .filter_map(|(name, s)| Some((name.clone(), s.artifact.clone()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(at: Option<u64>, until: Option<u64>, rolled_back_at: Option<u64>) -> PromotionRun {
        PromotionRun {
            revision: "r".into(),
            at,
            until,
            rolled_back_at,
        }
    }

    #[test]
    fn a_run_counts_when_healthy_for_min_healthy() {
        let h = 3600;
        for (r, min, now, want) in [
            (None, 0, 0, Verdict::Never),
            (Some(run(Some(10), None, None)), 0, 10, Verdict::Counts),
            (
                Some(run(Some(10), None, Some(20))),
                0,
                99,
                Verdict::RolledBack { at: 20 },
            ),
            // Still live: measured against the source's clock.
            (
                Some(run(Some(10), None, None)),
                h,
                10 + h - 1,
                Verdict::TooShort {
                    since: 10,
                    until: None,
                },
            ),
            (Some(run(Some(10), None, None)), h, 10 + h, Verdict::Counts),
            // Replaced by the next deploy: its length is fixed, whatever the time now.
            (
                Some(run(Some(10), Some(70), None)),
                h,
                10 * h,
                Verdict::TooShort {
                    since: 10,
                    until: Some(70),
                },
            ),
            (
                Some(run(Some(10), Some(10 + h), None)),
                h,
                10 * h,
                Verdict::Counts,
            ),
            // No deploy time: any healthy run counts without min-healthy, none with it.
            (Some(run(None, None, None)), 0, 5, Verdict::Counts),
            (Some(run(None, None, None)), h, 5, Verdict::NoTime),
            // Rolled back by hand beats everything.
            (
                Some(run(Some(10), Some(10 + h), Some(11))),
                h,
                10 * h,
                Verdict::RolledBack { at: 11 },
            ),
        ] {
            assert_eq!(
                judge(r.as_ref(), min, now),
                want,
                "{r:?} min {min} now {now}"
            );
        }
    }

    #[test]
    fn each_verdict_says_why() {
        let why = |v| why_not(&v, "staging", "abc", 1800);
        assert_eq!(why(Verdict::Counts), None);
        assert_eq!(
            why(Verdict::Never).as_deref(),
            Some("staging never ran abc")
        );
        assert_eq!(
            why(Verdict::TooShort {
                since: 0,
                until: None
            })
            .as_deref(),
            Some(
                "staging runs abc healthy since 1970-01-01T00:00:00Z, less than min-healthy 30m: it counts from 1970-01-01T00:30:00Z"
            )
        );
        assert_eq!(
            why(Verdict::TooShort {
                since: 0,
                until: Some(300)
            })
            .as_deref(),
            Some(
                "staging ran abc healthy for 5m only (1970-01-01T00:00:00Z until the next deploy), less than min-healthy 30m"
            )
        );
        assert!(why(Verdict::NoTime).is_some_and(|w| w.contains("cannot be checked")));
    }

    #[test]
    fn artifacts_differ_only_where_both_sides_name_one() {
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        assert!(artifacts_differ(&map(&[]), &map(&[("api", &a)])).is_empty());
        assert!(artifacts_differ(&map(&[("api", &a)]), &map(&[])).is_empty());
        assert!(artifacts_differ(&map(&[("api", &a)]), &map(&[("api", &a)])).is_empty());
        assert!(
            artifacts_differ(&map(&[("api", &a)]), &map(&[("web", &b)])).is_empty(),
            "a service only one side names is not compared"
        );
        assert_eq!(
            artifacts_differ(
                &map(&[("api", &a), ("web", &a), ("zeta", &b)]),
                &map(&[("api", &b), ("web", &a), ("zeta", &a)])
            ),
            vec![
                "api: sha256:aaaaaaaaaaaa… vs sha256:bbbbbbbbbbbb…".to_owned(),
                "zeta: sha256:bbbbbbbbbbbb… vs sha256:aaaaaaaaaaaa…".to_owned(),
            ]
        );
        assert_eq!(
            artifacts_differ(&map(&[("api", "odd")]), &map(&[("api", "other")])),
            vec!["api: odd vs other".to_owned()]
        );
    }

    #[test]
    fn a_record_matches_by_revision_or_tree_and_round_trips() {
        let st: State = serde_json::from_value(serde_json::json!({
            "format_version": 1, "project": "p", "environment": "staging",
            "revision": "c3", "services": {},
            "deploys": [
                {"revision": "c1", "at": 10, "until": 20},
                {"revision": "c2", "at": 20, "until": 30, "rolled_back_at": 25},
                {"revision": "c3", "at": 30}
            ]
        }))
        .unwrap();
        let tree = |r: &str| (r != "c2").then(|| format!("t-{r}"));
        let rec = Record::of("p", "staging", Some(&st), tree, 99);
        assert!(rec.deployed);
        assert_eq!(rec.runs.len(), 3);
        assert_eq!(rec.runs[0].tree.as_deref(), Some("t-c1"));
        assert_eq!(rec.latest("c2", None).map(|r| r.run.at), Some(Some(20)));
        assert_eq!(
            rec.latest("merge", Some("t-c1"))
                .map(|r| r.run.revision.as_str()),
            Some("c1"),
            "a commit with the same tree"
        );
        assert!(rec.latest("merge", None).is_none());
        assert!(rec.latest("other", Some("t-x")).is_none());
        let text = serde_json::to_string(&rec).unwrap();
        assert!(!text.contains("artifacts"), "absent while empty: {text}");
        assert_eq!(serde_json::from_str::<Record>(&text).unwrap(), rec);
        let none = Record::of("p", "staging", None, tree, 5);
        assert!(!none.deployed && none.runs.is_empty());
        // A state from before deploy times were recorded: its revision, no time.
        let old: State = serde_json::from_value(serde_json::json!({
            "format_version": 1, "project": "p", "environment": "staging",
            "revision": "c9", "services": {}
        }))
        .unwrap();
        assert_eq!(runs_of(&old), vec![run_of("c9")]);
    }

    fn run_of(rev: &str) -> PromotionRun {
        PromotionRun {
            revision: rev.into(),
            at: None,
            until: None,
            rolled_back_at: None,
        }
    }
}

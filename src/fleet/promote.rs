//! `promote-from` across hosts: when a fleet's source environment is a
//! fleet too, the controller reads each source host's deploy history over
//! the same ssh (`moorline promotion-record` there, its checkout kept) and
//! judges, by [`crate::promotion`]'s rule, whether every source host ran
//! the target (or a commit with its tree) healthy for `min-healthy`, with
//! the artifacts planned. In: the [`Fleet`] and the target; out: a
//! [`FleetPromotion`], part of the fleet plan (outside its fingerprint:
//! the source's history is not this fleet's plan), which `apply` refuses
//! unless it counts. A source host that cannot be reached or read counts
//! as one that never ran the target, and says why.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{Fleet, FleetError};
use crate::git::Rev;
use crate::plan::{PromotionRun, short};
use crate::promotion::{self, Record, Verdict};

/// What the fleet plan knows of its target's runs in the source fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FleetPromotion {
    /// The source environment (`promote-from`).
    pub(crate) source: String,
    /// `min-healthy` in seconds; absent when zero.
    #[serde(default, skip_serializing_if = "crate::plan::is_zero")]
    pub(crate) min_healthy_secs: u64,
    /// Per host of the source, in its order.
    pub(crate) hosts: Vec<SourceHost>,
    /// Every source host's run counts: `apply` needs this.
    pub(crate) healthy: bool,
    /// `--skip-promotion-check`: `apply` goes on all the same.
    pub(crate) skipped: bool,
    /// Commits on this environment's branch that the source's lacks
    /// (merges aside), newest first, `sha summary`, at most 10.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) only_here: Vec<String>,
}

/// One source host's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SourceHost {
    pub(crate) host: String,
    /// Its latest run of the target or of a commit with the same tree
    /// (`null`: none, or it could not be read).
    pub(crate) ran: Option<PromotionRun>,
    /// Whether that run counts.
    pub(crate) healthy: bool,
    /// What it says: how long it ran, or why it does not count.
    pub(crate) summary: String,
    /// The services whose live artifact there differs from the planned
    /// one (`service: sha256:… vs sha256:…`); absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) artifacts_differ: Vec<String>,
    /// Why its history could not be read (unreachable, its command
    /// failed); absent when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) unavailable: Option<String>,
}

impl FleetPromotion {
    /// Why `apply` refuses it, one reason per source host whose run does
    /// not count (empty: it counts, or the check is skipped).
    pub(crate) fn refusals(&self) -> Vec<String> {
        if self.skipped {
            return Vec::new();
        }
        if self.hosts.is_empty() {
            return vec![format!("{} has no hosts", self.source)];
        }
        self.hosts
            .iter()
            .filter(|h| !h.healthy)
            .map(|h| h.summary.clone())
            .collect()
    }
}

/// The source environment of `fleet`'s `promote-from`, when it has hosts
/// (else each host checks the source's state on itself, as on one host).
pub(crate) fn source_of(
    config: &crate::config::Config,
    env: &crate::config::Environment,
) -> Option<crate::config::Environment> {
    let p = env.promote_from.as_ref()?;
    config
        .environment(&p.environment)
        .filter(|s| s.is_fleet())
        .cloned()
}

/// What the controller knows before asking the source's hosts: the
/// target's tree, the commit sent to them, and the commits only this
/// environment's branch has.
struct Local {
    tree: Option<String>,
    ship: String,
    only_here: Vec<String>,
}

fn local(fleet: &Fleet, source: &crate::config::Environment, to: &Rev) -> Local {
    let Ok(repo) = crate::git::Repo::discover(&fleet.repo_root) else {
        return Local {
            tree: None,
            ship: to.sha.clone(),
            only_here: Vec::new(),
        };
    };
    Local {
        tree: repo.tree_id(&to.sha),
        // What `moorline status --env SOURCE` sends them: the source's
        // branch, so that their branch keeps pointing at their own
        // revisions (the target when the controller lacks that branch).
        ship: repo
            .branch_tip(&source.branch)
            .map_or_else(|_| to.sha.clone(), |r| r.sha),
        only_here: crate::observe::only_here_of(&repo, &fleet.env.branch, &source.branch)
            .unwrap_or_default(),
    }
}

/// The check of `to` against the source fleet (`None` without a
/// `promote-from` whose source has hosts). `planned`: the artifact each
/// service of the plan ships (service → `sha256:…`), compared with those
/// a source host runs live. `skip`: `--skip-promotion-check`, which the
/// result shows.
pub(crate) async fn check(
    fleet: &Arc<Fleet>,
    to: &Rev,
    planned: &BTreeMap<String, String>,
    skip: bool,
) -> Result<Option<FleetPromotion>, FleetError> {
    let (Some(source), Some(p)) = (&fleet.promote_source, &fleet.env.promote_from) else {
        return Ok(None);
    };
    let min_healthy_secs = p.min_healthy.as_secs();
    let here = local(fleet, source, to);
    let src = Arc::new(Fleet {
        project: fleet.project.clone(),
        env: source.clone(),
        dir: fleet.dir.clone(),
        repo_root: fleet.repo_root.clone(),
        config_in_repo: fleet.config_in_repo.clone(),
        systemd: fleet.systemd,
        transport: fleet.transport.clone(),
        binary: fleet.binary.clone(),
        promote_source: None,
        // The source's hosts build nothing here.
        builder: fleet.builder.clone(),
    });
    let words: Vec<String> = vec![
        "promotion-record".into(),
        "--env".into(),
        source.name.clone(),
    ];
    let at_once = usize::try_from(source.rollout.connections.max(1)).unwrap_or(8);
    let answers = super::control::run_on_all(&src, src.hosts(), &here.ship, &words, at_once).await;
    // A source host that is also one of this fleet's keeps its connection
    // (the rollout uses it).
    let only_source: Vec<crate::config::Host> = src
        .hosts()
        .iter()
        .filter(|s| {
            !fleet
                .hosts()
                .iter()
                .any(|h| (&h.address, &h.user, h.port) == (&s.address, &s.user, s.port))
        })
        .cloned()
        .collect();
    src.transport.close_all(&only_source).await;
    let hosts: Vec<SourceHost> = answers
        .into_iter()
        .map(|(host, res)| {
            let record = res.map_err(|e| e.to_string()).and_then(|out| {
                if out.code != 0 {
                    return Err(format!(
                        "its `moorline promotion-record` failed (exit {}): {}",
                        out.code,
                        out.stderr.trim()
                    ));
                }
                serde_json::from_slice::<Record>(&out.stdout)
                    .map_err(|e| format!("its promotion record is not one: {e}"))
            });
            judge_host(
                &source.name,
                host,
                record,
                &to.sha,
                here.tree.as_deref(),
                min_healthy_secs,
                planned,
            )
        })
        .collect();
    Ok(Some(FleetPromotion {
        source: source.name.clone(),
        min_healthy_secs,
        healthy: !hosts.is_empty() && hosts.iter().all(|h| h.healthy),
        hosts,
        skipped: skip,
        only_here: here.only_here,
    }))
}

/// One source host's answer (its record, or why there is none) judged
/// for `to` (whose tree is `tree`). Pure.
pub(crate) fn judge_host(
    source: &str,
    host: String,
    record: Result<Record, String>,
    to: &str,
    tree: Option<&str>,
    min_healthy_secs: u64,
    planned: &BTreeMap<String, String>,
) -> SourceHost {
    let sha = short(to);
    let who = format!("{source} host {host}");
    let record = match record {
        Ok(r) => r,
        Err(why) => {
            return SourceHost {
                summary: format!("{who} never ran {sha} as far as can be told: {why}"),
                host,
                ran: None,
                healthy: false,
                artifacts_differ: Vec::new(),
                unavailable: Some(why),
            };
        }
    };
    let found = record.latest(to, tree);
    let ran = found.map(|r| r.run.clone());
    let verdict = promotion::judge(ran.as_ref(), min_healthy_secs, record.now);
    let as_sha = match &ran {
        Some(r) if r.revision != to => format!("{sha} (as {}, the same tree)", short(&r.revision)),
        _ => sha.to_owned(),
    };
    // The artifacts recorded are those of the live releases: compared
    // only when the run found is the live one.
    let differ = match &ran {
        Some(r) if verdict == Verdict::Counts && r.until.is_none() => {
            promotion::artifacts_differ(&record.artifacts, planned)
        }
        _ => Vec::new(),
    };
    let (healthy, summary) = match promotion::why_not(&verdict, &who, &as_sha, min_healthy_secs) {
        Some(mut why) => {
            if verdict == Verdict::Never && !record.deployed {
                why.push_str(" (nothing is recorded as deployed there)");
            }
            (false, why)
        }
        None if !differ.is_empty() => (
            false,
            format!(
                "{who} ran {as_sha} but with other bytes for {}",
                differ.join(", ")
            ),
        ),
        None => (
            true,
            format!(
                "{who} ran {as_sha} healthy: {}",
                ran.as_ref().map(promotion::how_long).unwrap_or_default()
            ),
        ),
    };
    SourceHost {
        host,
        ran,
        healthy,
        summary,
        artifacts_differ: differ,
        unavailable: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::promotion::RecordedRun;

    fn record(runs: &[(&str, &str, u64, Option<u64>)], now: u64) -> Record {
        Record {
            format_version: 1,
            project: "p".into(),
            environment: "staging".into(),
            now,
            deployed: !runs.is_empty(),
            runs: runs
                .iter()
                .map(|(rev, tree, at, until)| RecordedRun {
                    run: PromotionRun {
                        revision: (*rev).into(),
                        at: Some(*at),
                        until: *until,
                        rolled_back_at: None,
                    },
                    tree: Some((*tree).into()),
                })
                .collect(),
            artifacts: BTreeMap::new(),
        }
    }

    fn judge(record: Result<Record, String>, min: u64, planned: &[(&str, &str)]) -> SourceHost {
        let planned = planned
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        judge_host(
            "staging",
            "s1".into(),
            record,
            "aaaa000000000000",
            Some("T"),
            min,
            &planned,
        )
    }

    #[test]
    fn each_source_host_is_judged_by_its_own_record() {
        let now = 10_000;
        // Ran the target itself, still live, long enough.
        let h = judge(
            Ok(record(&[("aaaa000000000000", "T", 100, None)], now)),
            600,
            &[],
        );
        assert!(h.healthy, "{h:?}");
        assert!(
            h.summary
                .starts_with("staging host s1 ran aaaa00000000 healthy: deployed there")
        );
        // A commit with the same tree counts, and is named.
        let h = judge(
            Ok(record(&[("bbbb000000000000", "T", 100, None)], now)),
            0,
            &[],
        );
        assert!(h.healthy);
        assert!(
            h.summary.contains("(as bbbb00000000, the same tree)"),
            "{}",
            h.summary
        );
        // Live for less than min-healthy, by the host's own clock.
        let h = judge(
            Ok(record(&[("aaaa000000000000", "T", 9_900, None)], now)),
            600,
            &[],
        );
        assert!(!h.healthy);
        assert!(
            h.summary.contains("less than min-healthy 10m"),
            "{}",
            h.summary
        );
        // Never ran it; nothing deployed there at all.
        let h = judge(
            Ok(record(&[("cccc000000000000", "U", 100, None)], now)),
            0,
            &[],
        );
        assert_eq!(h.summary, "staging host s1 never ran aaaa00000000");
        let h = judge(Ok(record(&[], now)), 0, &[]);
        assert_eq!(
            h.summary,
            "staging host s1 never ran aaaa00000000 (nothing is recorded as deployed there)"
        );
        // Unreachable: refused like never ran, saying why.
        let h = judge(
            Err("host s1 (10.0.0.1) is unreachable: timeout".into()),
            0,
            &[],
        );
        assert!(!h.healthy && h.ran.is_none());
        assert_eq!(
            h.summary,
            "staging host s1 never ran aaaa00000000 as far as can be told: host s1 (10.0.0.1) is unreachable: timeout"
        );
        assert!(h.unavailable.is_some());
    }

    #[test]
    fn other_bytes_for_a_service_refuse_the_run() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let mut r = record(&[("aaaa000000000000", "T", 100, None)], 200);
        r.artifacts.insert("api".into(), a.clone());
        r.artifacts.insert("web".into(), a.clone());
        let h = judge(Ok(r.clone()), 0, &[("api", &a), ("web", &b)]);
        assert!(!h.healthy);
        assert_eq!(
            h.summary,
            "staging host s1 ran aaaa00000000 but with other bytes for web: sha256:aaaaaaaaaaaa… vs sha256:bbbbbbbbbbbb…"
        );
        assert_eq!(h.artifacts_differ.len(), 1);
        assert!(judge(Ok(r.clone()), 0, &[("api", &a), ("web", &a)]).healthy);
        // A past run: the live artifacts are another revision's, not compared.
        let mut past = record(
            &[
                ("aaaa000000000000", "T", 100, Some(150)),
                ("dddd000000000000", "V", 150, None),
            ],
            200,
        );
        past.artifacts = r.artifacts;
        assert!(judge(Ok(past), 0, &[("web", &b)]).healthy);
    }

    /// The fleet plan shows each source host's answer and what `apply` does about it, in
    /// text and Markdown; the JSON round-trips.
    #[test]
    fn the_fleet_plan_shows_the_promotion() {
        let to = Rev {
            spec: "b".into(),
            sha: "b".into(),
            summary: String::new(),
        };
        let hosts = vec![super::super::plan::HostPlan {
            name: "p1".into(),
            address: "10.0.0.3".into(),
            user: None,
            port: None,
            plan: super::super::plan::tests::plan(Some("a"), "f", &["api"]),
        }];
        let mut fp = super::super::plan::assemble(
            "p",
            "prod",
            to,
            &crate::config::Rollout::default(),
            hosts,
        );
        let ok = judge(
            Ok(record(&[("aaaa000000000000", "T", 100, None)], 5000)),
            1800,
            &[],
        );
        let down = judge(
            Err("host s1 (10.0.0.1) is unreachable: timeout".into()),
            1800,
            &[],
        );
        fp.promotion = Some(FleetPromotion {
            source: "staging".into(),
            min_healthy_secs: 1800,
            healthy: false,
            hosts: vec![ok, down],
            skipped: false,
            only_here: vec!["cafe00000000 hotfix | pipes".into()],
        });
        let text = super::super::render::text(&fp, false);
        for want in [
            "Promotion (promote-from staging, min-healthy 30m, read from its hosts):",
            "  ok: staging host s1 ran aaaa00000000 healthy: deployed there 1970-01-01T00:01:40Z and still live",
            "  NO: staging host s1 never ran aaaa00000000 as far as can be told: host s1 (10.0.0.1) is unreachable: timeout",
            "  `apply` refuses it unless --skip-promotion-check",
            "prod's branch has commits that staging's branch lacks",
        ] {
            assert!(text.contains(want), "{want}\n{text}");
        }
        let md = super::super::render::markdown(&fp);
        assert!(
            md.contains(
                "**Promotion (promote-from staging, min-healthy 30m, read from its hosts)**"
            ),
            "{md}"
        );
        assert!(md.contains("hotfix \\| pipes"), "{md}");
        let back: super::super::plan::FleetPlan =
            serde_json::from_str(&super::super::render::json(&fp)).unwrap();
        assert_eq!(back, fp);
        // Skipped: shown, and nothing refused.
        if let Some(p) = fp.promotion.as_mut() {
            p.skipped = true;
        }
        assert!(
            super::super::render::text(&fp, false)
                .contains("check skipped (--skip-promotion-check): `apply` goes on")
        );
    }

    #[test]
    fn the_fleet_counts_only_when_every_source_host_does() {
        let host = |healthy: bool| SourceHost {
            host: "s".into(),
            ran: None,
            healthy,
            summary: format!("said {healthy}"),
            artifacts_differ: Vec::new(),
            unavailable: None,
        };
        let mut p = FleetPromotion {
            source: "staging".into(),
            min_healthy_secs: 0,
            hosts: vec![host(true), host(false)],
            healthy: false,
            skipped: false,
            only_here: Vec::new(),
        };
        assert_eq!(p.refusals(), vec!["said false".to_owned()]);
        p.skipped = true;
        assert!(p.refusals().is_empty());
        p.skipped = false;
        p.hosts.clear();
        assert_eq!(p.refusals(), vec!["staging has no hosts".to_owned()]);
    }
}

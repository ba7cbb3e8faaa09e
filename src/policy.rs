//! The gates every apply passes, for a host and for a fleet: a saved plan
//! still matches, a reviewed plan is what happens, the checkout is clean,
//! an environment that requires approval gets a reviewed plan, the
//! `promote-from` source ran the revision, no unit file is taken over
//! unasked, and someone said yes. Each gate is written once, as a function
//! of plain values (plans, flags, lists of what moved); `commands` (a
//! host's `apply`) and the fleet controller call the same functions, in
//! the order each documents, and print what they refuse.

use miette::Diagnostic;

use crate::plan::Plan;

/// Whose apply a gate guards: one host's, or a fleet controller's rollout.
/// The two have their own error codes and wording (a host's plan, the
/// fleet's plans).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    Host,
    Fleet,
}

/// Where the host plan being applied came from: the wording of how to
/// adopt a unit file depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PlanSource {
    /// A plan saved with `plan --out`, applied as `apply FILE`.
    Saved,
    /// Planned here and compared with `--reviewed FILE`.
    Reviewed,
    /// Planned here by `apply --env`.
    Here,
}

#[derive(Debug, thiserror::Error, Diagnostic)]
pub(crate) enum GateError {
    #[error("the saved plan no longer matches: {moved}")]
    #[diagnostic(
        code(moorline::apply::stale_plan),
        help(
            "make a new plan (`moorline plan --env {env} --out FILE`), review it, and apply that"
        )
    )]
    Stale { moved: String, env: String },
    #[error("the fleet plan no longer matches: {moved}")]
    #[diagnostic(
        code(moorline::fleet::stale_plan),
        help(
            "nothing was applied on any host. Make a new fleet plan (`moorline plan --env {env} --out FILE`), review it, and apply that"
        )
    )]
    FleetStale { moved: String, env: String },
    #[error("this host's plan differs from the reviewed one:\n  {differences}")]
    #[diagnostic(
        code(moorline::apply::not_as_reviewed),
        help(
            "nothing was applied; review a plan made for what this host runs (`moorline plan` on the host), or find out why the host differs (`moorline status`)"
        )
    )]
    NotAsReviewed { differences: String },
    #[error("the fleet's plans differ from the reviewed fleet plan: {differences}")]
    #[diagnostic(
        code(moorline::fleet::not_as_reviewed),
        help(
            "nothing was applied on any host. Make a new fleet plan (`moorline plan --env {env} --out FILE`) and have it reviewed"
        )
    )]
    FleetNotAsReviewed { differences: String, env: String },
    #[error("the working tree has uncommitted changes this plan does not see:\n  - {paths}")]
    #[diagnostic(
        code(moorline::apply::dirty),
        help(
            "services deploy from commits, and the configuration is read from disk: commit (or revert) these changes and plan again, or pass --allow-dirty to apply the plan as shown"
        )
    )]
    Dirty { paths: String },
    #[error(
        "the controller's working tree has uncommitted changes the hosts would not get:\n  - {paths}"
    )]
    #[diagnostic(
        code(moorline::fleet::dirty),
        help(
            "hosts get the commits, and read the configuration committed at the deployed revision, not the files on this machine: commit (or revert) these changes and plan again, or pass --allow-dirty to roll out the commits as planned"
        )
    )]
    FleetDirty { paths: String },
    #[error("environment {env} requires approval: apply a reviewed, saved plan")]
    #[diagnostic(
        code(moorline::apply::approval_required),
        help(
            "have a plan reviewed (the pull request's `moorline plan --env {env} --out plan.json`), then on the host `moorline apply --env {env} --reviewed plan.json --yes`; or apply a plan saved on the host: `moorline apply plan.json --yes`"
        )
    )]
    ApprovalRequired { env: String },
    #[error("{env} only runs what {source_env} ran healthy: {why}")]
    #[diagnostic(
        code(moorline::apply::not_promoted),
        help(
            "deploy {sha} to {source_env} first and let it run healthy, then apply again; or, knowingly, pass --skip-promotion-check (the plan shows it)"
        )
    )]
    NotPromoted {
        env: String,
        source_env: String,
        sha: String,
        why: String,
    },
    #[error("refusing to replace unit files that moorline did not install: {files}")]
    #[diagnostic(
        code(moorline::apply::unit_conflict),
        help(
            "nothing was changed. Compare each file with the unit moorline would write (the plan's diff), then adopt it explicitly: {how}; or remove the service's `unit` block to keep managing that unit by hand"
        )
    )]
    UnitConflict { files: String, how: String },
    #[error("refusing to deploy {sha} again without confirmation: it {what}")]
    #[diagnostic(
        code(moorline::apply::failed_here),
        help(
            "nothing was changed. Deploy a fix (a new commit) instead, or, knowingly, deploy it again with --yes (on a terminal, apply asks)"
        )
    )]
    FailedHere { sha: String, what: String },
    #[error("refusing to apply without confirmation: there is no terminal to ask on")]
    #[diagnostic(
        code(moorline::apply::unconfirmed),
        help("review the plan above and pass --yes to apply it")
    )]
    Unconfirmed,
}

/// Reasons for a diagnostic: one on the line, several as a list.
pub(crate) fn one_or_list(reasons: &[String]) -> String {
    match reasons {
        [one] => one.clone(),
        many => format!("\n  - {}", many.join("\n  - ")),
    }
}

/// What moved between a saved host plan and the plan made now for the same
/// request: empty when it is the same plan (same fingerprint, same
/// actions), else every reason ([`crate::plan::stale::what_moved`] names
/// at least one).
pub(crate) fn host_plan_moved(saved: &Plan, fresh: &Plan) -> Vec<String> {
    if fresh.fingerprint == saved.fingerprint && fresh.actions == saved.actions {
        Vec::new()
    } else {
        crate::plan::stale::what_moved(saved, fresh)
    }
}

/// A saved plan is applied only while nothing it was made from moved
/// (`moved`: what did, empty when nothing).
pub(crate) fn unmoved(scope: Scope, env: &str, moved: &[String]) -> Result<(), GateError> {
    if moved.is_empty() {
        return Ok(());
    }
    let (moved, env) = (one_or_list(moved), env.to_owned());
    Err(match scope {
        Scope::Host => GateError::Stale { moved, env },
        Scope::Fleet => GateError::FleetStale { moved, env },
    })
}

/// A plan checked against a reviewed one is applied only when it does what
/// the reviewed one does (`differences`: what it does otherwise).
pub(crate) fn as_reviewed(
    scope: Scope,
    env: &str,
    differences: &[String],
) -> Result<(), GateError> {
    if differences.is_empty() {
        return Ok(());
    }
    Err(match scope {
        Scope::Host => GateError::NotAsReviewed {
            differences: differences.join("\n  "),
        },
        Scope::Fleet => GateError::FleetNotAsReviewed {
            differences: one_or_list(differences),
            env: env.to_owned(),
        },
    })
}

/// A plan does not apply over uncommitted changes it does not see
/// (`uncommitted`: their paths), unless `--allow-dirty` allows it.
pub(crate) fn clean(
    scope: Scope,
    uncommitted: &[String],
    allow_dirty: bool,
) -> Result<(), GateError> {
    if uncommitted.is_empty() || allow_dirty {
        return Ok(());
    }
    let paths = uncommitted.join("\n  - ");
    Err(match scope {
        Scope::Host => GateError::Dirty { paths },
        Scope::Fleet => GateError::FleetDirty { paths },
    })
}

/// An environment with `require-approval` applies changes only from a
/// reviewed (or saved) plan, never from one planned and confirmed on the
/// spot.
pub(crate) fn approved(
    env: &str,
    requires_approval: bool,
    has_changes: bool,
    reviewed: bool,
) -> Result<(), GateError> {
    if requires_approval && has_changes && !reviewed {
        return Err(GateError::ApprovalRequired {
            env: env.to_owned(),
        });
    }
    Ok(())
}

/// A plan whose revision its `promote-from` source never ran healthy is
/// refused, unless the check was skipped (which the plan shows).
pub(crate) fn promoted(p: &Plan) -> Result<(), GateError> {
    match &p.promotion {
        Some(pr) if !pr.healthy && !pr.skipped => {
            let (source, sha) = (&pr.source, crate::plan::short(&p.to.sha));
            let verdict = crate::promotion::verdict_of(pr.ran.as_ref(), pr.healthy);
            let why = match (&pr.ran, &pr.unavailable) {
                (None, Some(u)) => format!("{source} never ran {sha} ({u})"),
                _ => crate::promotion::why_not(&verdict, source, sha, pr.min_healthy_secs)
                    .unwrap_or_else(|| format!("{source} never ran {sha}")),
            };
            not_promoted(&p.environment, source, sha, &[why])
        }
        _ => Ok(()),
    }
}

/// The refusal of a revision its `promote-from` source did not run as
/// asked, for the `reasons` given (one per source host in a fleet; none:
/// it counts).
pub(crate) fn not_promoted(
    env: &str,
    source: &str,
    sha: &str,
    reasons: &[String],
) -> Result<(), GateError> {
    if reasons.is_empty() {
        return Ok(());
    }
    Err(GateError::NotPromoted {
        env: env.to_owned(),
        source_env: source.to_owned(),
        sha: crate::plan::short(sha).to_owned(),
        why: one_or_list(reasons),
    })
}

/// A plan that would replace unit files moorline did not install is
/// refused, naming each file and the command that adopts them (`source`:
/// where the plan came from, which decides that command).
pub(crate) fn no_unit_conflicts(p: &Plan, source: PlanSource) -> Result<(), GateError> {
    if !p.has_conflicts() {
        return Ok(());
    }
    let files: Vec<String> = p
        .conflicts
        .iter()
        .map(|c| format!("{} (service {})", c.path, c.service))
        .collect();
    let files = format!("\n  - {}", files.join("\n  - "));
    let flags = p
        .conflicts
        .iter()
        .map(|c| format!("--adopt {}", c.service))
        .collect::<Vec<_>>()
        .join(" ");
    let env = &p.environment;
    let how = match source {
        PlanSource::Saved => format!(
            "make the plan again with `moorline plan --env {env} {flags} --out FILE`, review it, and apply that"
        ),
        PlanSource::Reviewed => format!(
            "have a plan made with `moorline plan --env {env} {flags} --out FILE` reviewed, and apply that with --reviewed"
        ),
        PlanSource::Here => format!(
            "`moorline apply --env {env} {flags}` (the plan shows the adoption first), or `moorline plan --env {env} {flags} --out FILE` to review it"
        ),
    };
    Err(GateError::UnitConflict { files, how })
}

/// Whether to go on: `--yes`, else the answer of `ask` (which asks on the
/// terminal, and says no without one). `ask` is not called with `--yes`.
pub(crate) fn confirmed(yes: bool, ask: impl FnOnce() -> bool) -> bool {
    yes || ask()
}

/// A plan toward a revision that failed here (or was rolled back by hand
/// here) since its last healthy deploy goes on only when asked again:
/// `--yes`, else the answer of `ask` (no terminal: no).
pub(crate) fn not_failed_here(
    p: &Plan,
    yes: bool,
    ask: impl FnOnce(&str) -> bool,
) -> Result<(), GateError> {
    let Some(f) = &p.failed_here else {
        return Ok(());
    };
    let sha = crate::plan::short(&p.to.sha).to_owned();
    let what = if f.revision == p.to.sha {
        f.describe()
    } else {
        format!(
            "has the same tree as {}, which {}",
            crate::plan::short(&f.revision),
            f.describe()
        )
    };
    if yes || ask(&format!("{sha} {what}. Deploy it again?")) {
        return Ok(());
    }
    Err(GateError::FailedHere { sha, what })
}

/// An apply goes on only when confirmed ([`confirmed`]).
pub(crate) fn confirm(yes: bool, ask: impl FnOnce() -> bool) -> Result<(), GateError> {
    if confirmed(yes, ask) {
        Ok(())
    } else {
        Err(GateError::Unconfirmed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::plan::{Promotion, PromotionRun};

    fn code(e: &GateError) -> String {
        e.code().map(|c| c.to_string()).unwrap_or_default()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn reasons_are_one_line_or_a_list() {
        assert_eq!(one_or_list(&strings(&["a"])), "a");
        assert_eq!(one_or_list(&strings(&["a", "b"])), "\n  - a\n  - b");
    }

    #[test]
    fn stale_reviewed_and_dirty_gates_by_scope() {
        // (scope, moved/differences/uncommitted, allow_dirty) → (code, message) or pass.
        type Gate = fn(Scope, &[String], bool) -> Result<(), GateError>;
        type Case<'a> = (Gate, Scope, &'a [&'a str], bool, Option<(&'a str, &'a str)>);
        let stale: Gate = |s, v, _| unmoved(s, "prod", v);
        let reviewed: Gate = |s, v, _| as_reviewed(s, "prod", v);
        let dirty: Gate = clean;
        let cases: &[Case] = &[
            (stale, Scope::Host, &[], false, None),
            (stale, Scope::Fleet, &[], false, None),
            (
                stale,
                Scope::Host,
                &["the branch moved"],
                false,
                Some((
                    "moorline::apply::stale_plan",
                    "the saved plan no longer matches: the branch moved",
                )),
            ),
            (
                stale,
                Scope::Fleet,
                &["a", "b"],
                false,
                Some((
                    "moorline::fleet::stale_plan",
                    "the fleet plan no longer matches: \n  - a\n  - b",
                )),
            ),
            (reviewed, Scope::Host, &[], false, None),
            (
                reviewed,
                Scope::Host,
                &["a", "b"],
                false,
                Some((
                    "moorline::apply::not_as_reviewed",
                    "this host's plan differs from the reviewed one:\n  a\n  b",
                )),
            ),
            (
                reviewed,
                Scope::Fleet,
                &["host h1: a"],
                false,
                Some((
                    "moorline::fleet::not_as_reviewed",
                    "the fleet's plans differ from the reviewed fleet plan: host h1: a",
                )),
            ),
            (dirty, Scope::Host, &[], false, None),
            (dirty, Scope::Host, &["x", "y"], true, None),
            (
                dirty,
                Scope::Host,
                &["x", "y"],
                false,
                Some((
                    "moorline::apply::dirty",
                    "the working tree has uncommitted changes this plan does not see:\n  - x\n  - y",
                )),
            ),
            (
                dirty,
                Scope::Fleet,
                &["x"],
                false,
                Some((
                    "moorline::fleet::dirty",
                    "the controller's working tree has uncommitted changes the hosts would not get:\n  - x",
                )),
            ),
        ];
        for (i, (gate, scope, values, allow, want)) in cases.iter().enumerate() {
            let got = gate(*scope, &strings(values), *allow);
            match (got, want) {
                (Ok(()), None) => {}
                (Err(e), Some((c, msg))) => {
                    assert_eq!(
                        (code(&e).as_str(), e.to_string().as_str()),
                        (*c, *msg),
                        "{i}"
                    );
                }
                (got, want) => panic!("case {i}: {got:?}, wanted {want:?}"),
            }
        }
    }

    #[test]
    fn approval_is_needed_only_for_changes_not_reviewed() {
        // (requires approval, has changes, reviewed) → refused
        for (requires, changes, reviewed, refused) in [
            (false, true, false, false),
            (true, false, false, false),
            (true, true, true, false),
            (true, true, false, true),
        ] {
            let got = approved("prod", requires, changes, reviewed);
            assert_eq!(got.is_err(), refused, "{requires} {changes} {reviewed}");
            if let Err(e) = got {
                assert_eq!(code(&e), "moorline::apply::approval_required");
                assert_eq!(
                    e.to_string(),
                    "environment prod requires approval: apply a reviewed, saved plan"
                );
            }
        }
    }

    #[test]
    fn yes_skips_the_question_and_no_answer_refuses() {
        let never = || -> bool { panic!("asked despite --yes") };
        assert!(confirm(true, never).is_ok());
        assert!(confirm(false, || true).is_ok());
        let e = confirm(false, || false).unwrap_err();
        assert_eq!(code(&e), "moorline::apply::unconfirmed");
        assert!(confirmed(true, never));
        assert!(!confirmed(false, || false));
    }

    #[test]
    fn promotion_refuses_what_the_source_did_not_run_healthy() {
        let mut p = crate::fleet::plan::tests::plan(None, "f", &["web"]);
        p.environment = "prod".into();
        p.to.sha = "0123456789abcdef".into();
        assert!(promoted(&p).is_ok(), "no promote-from");
        let promotion = |healthy, skipped, ran: bool, unavailable: Option<&str>| Promotion {
            source: "staging".into(),
            ran: ran.then(|| PromotionRun {
                revision: "0123456789abcdef".into(),
                at: None,
                until: None,
                rolled_back_at: Some(1),
            }),
            healthy,
            skipped,
            only_here: Vec::new(),
            unavailable: unavailable.map(str::to_owned),
            min_healthy_secs: 0,
        };
        for (pr, want) in [
            (promotion(true, false, true, None), None),
            (promotion(false, true, false, None), None),
            (
                promotion(false, false, false, None),
                Some("prod only runs what staging ran healthy: staging never ran 0123456789ab"),
            ),
            (
                promotion(false, false, false, Some("no state")),
                Some(
                    "prod only runs what staging ran healthy: staging never ran 0123456789ab (no state)",
                ),
            ),
            (
                promotion(false, false, true, None),
                Some(
                    "prod only runs what staging ran healthy: staging ran 0123456789ab, but it was rolled back by hand there",
                ),
            ),
        ] {
            p.promotion = Some(pr);
            let got = promoted(&p).err().map(|e| e.to_string());
            assert_eq!(got.as_deref(), want);
        }
        // Healthy, not rolled back, but for less than min-healthy.
        let mut short = promotion(false, false, true, None);
        short.min_healthy_secs = 1800;
        if let Some(r) = short.ran.as_mut() {
            r.rolled_back_at = None;
            r.at = Some(0);
        }
        p.promotion = Some(short);
        assert_eq!(
            promoted(&p).err().map(|e| e.to_string()).as_deref(),
            Some(
                "prod only runs what staging ran healthy: staging runs 0123456789ab healthy since 1970-01-01T00:00:00Z, less than min-healthy 30m: it counts from 1970-01-01T00:30:00Z"
            )
        );
        // A fleet: one reason per source host, as a list.
        let e = not_promoted(
            "prod",
            "staging",
            "0123456789abcdef",
            &["a".into(), "b".into()],
        )
        .unwrap_err();
        assert_eq!(code(&e), "moorline::apply::not_promoted");
        assert_eq!(
            e.to_string(),
            "prod only runs what staging ran healthy: \n  - a\n  - b"
        );
        assert!(not_promoted("prod", "staging", "0123", &[]).is_ok());
    }
}

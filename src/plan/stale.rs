//! Why a saved plan is stale: a saved plan and the plan made now for the
//! same request (same `from`, `to`, flags) → each input that moved, named
//! precisely (the configuration, a revision, a service's deployed release,
//! an installed unit file, …). A pure function of the two plans; `apply`
//! refuses a stale plan and shows these reasons.

use std::collections::BTreeSet;

use super::{Operation, Plan, fingerprint, short};

/// What moved between `saved` and `fresh`, one reason per input, most
/// fundamental first. Empty when the two plans are the same plan.
pub(crate) fn what_moved(saved: &Plan, fresh: &Plan) -> Vec<String> {
    let mut moved = Vec::new();
    let (a, b) = (&saved.inputs, &fresh.inputs);
    // A deploy plan's fingerprint is a hash of its own fields: when they
    // disagree, the file was changed after `plan --out` wrote it.
    if saved.operation == Operation::Deploy
        && fingerprint(
            &saved.project,
            &saved.environment,
            saved.from.as_ref().map(|f| f.sha.as_str()),
            &saved.to.sha,
            a,
        ) != saved.fingerprint
    {
        moved.push(
            "the plan file was changed after it was saved: its fingerprint does not match its contents"
                .to_owned(),
        );
    }
    if (&saved.project, &saved.environment) != (&fresh.project, &fresh.environment) {
        moved.push(format!(
            "it is for {}/{}, this is {}/{}",
            saved.project, saved.environment, fresh.project, fresh.environment
        ));
    }
    if a.moorline_version != b.moorline_version {
        moved.push(format!(
            "it was made by moorline {}, this is {}",
            a.moorline_version, b.moorline_version
        ));
    }
    if a.config_sha256 != b.config_sha256 {
        moved.push(format!(
            "the configuration changed (sha256 {} → {})",
            short(&a.config_sha256),
            short(&b.config_sha256)
        ));
    }
    let sha = |r: Option<&crate::git::Rev>| r.map(|r| r.sha.clone());
    if saved.to.sha != fresh.to.sha {
        moved.push(format!(
            "the branch moved: to was {}, now {}",
            short(&saved.to.sha),
            short(&fresh.to.sha)
        ));
    }
    if sha(saved.from.as_ref()) != sha(fresh.from.as_ref()) {
        moved.push(format!(
            "the deployed revision moved: from was {}, now {}",
            rev_or_nothing(saved.from.as_ref().map(|f| f.sha.as_str())),
            rev_or_nothing(fresh.from.as_ref().map(|f| f.sha.as_str()))
        ));
    }
    let names =
        |p: &Plan| -> BTreeSet<String> { p.services.iter().map(|s| s.name.clone()).collect() };
    let (before, now) = (names(saved), names(fresh));
    for gone in before.difference(&now) {
        moved.push(format!(
            "service `{gone}` is no longer in the configuration"
        ));
    }
    for new in now.difference(&before) {
        moved.push(format!("new service `{new}` in the configuration"));
    }
    if a.state_sha256 != b.state_sha256 {
        moved.push(state_moved(saved, fresh));
    }
    if a.units_source == b.units_source {
        moved.extend(units_moved(saved, fresh));
    } else {
        moved.push(format!(
            "unit files were compared with {}, now with {}",
            a.units_source, b.units_source
        ));
    }
    if a.allow_non_ancestor != b.allow_non_ancestor {
        moved.push("--allow-non-ancestor differs".to_owned());
    }
    if a.adopt != b.adopt {
        moved.push(format!(
            "the units adopted differ: it adopts {}, this {}",
            list_or_none(&a.adopt),
            list_or_none(&b.adopt)
        ));
    }
    if a.pending_migrations != b.pending_migrations {
        moved.push(format!(
            "migrate-status on the host reported pending migrations for {}, now for {}",
            list_or_none(&a.pending_migrations),
            list_or_none(&b.pending_migrations)
        ));
    }
    if moved.is_empty()
        && (saved.fingerprint != fresh.fingerprint || saved.actions != fresh.actions)
    {
        moved.push("the computed actions differ".to_owned());
    }
    moved
}

/// How the host state moved, service by service where the plans show it.
fn state_moved(saved: &Plan, fresh: &Plan) -> String {
    match (&saved.inputs.state_sha256, &fresh.inputs.state_sha256) {
        (None, Some(_)) => {
            return "the host state changed: there was none when the plan was made (something was deployed since)".to_owned();
        }
        (Some(_), None) => {
            return "the host state changed: state.json is gone".to_owned();
        }
        _ => {}
    }
    let mut details = Vec::new();
    for s in &fresh.services {
        if let Some(old) = saved.services.iter().find(|o| o.name == s.name)
            && old.from_revision != s.from_revision
        {
            details.push(format!(
                "service `{}` deployed {} → {}",
                s.name,
                rev_or_nothing(old.from_revision.as_deref()),
                rev_or_nothing(s.from_revision.as_deref())
            ));
        }
    }
    if details.is_empty() {
        "the host state changed (an apply, rollback, restart or backup ran since)".to_owned()
    } else {
        format!("the host state changed: {}", details.join(", "))
    }
}

/// Installed unit files whose content moved, named by service.
fn units_moved(saved: &Plan, fresh: &Plan) -> Vec<String> {
    let (a, b) = (&saved.inputs.units, &fresh.inputs.units);
    let mut out = Vec::new();
    for (unit, was) in a {
        // A unit only one plan has belongs to a service added or removed
        // (said above) or to a renamed unit (a configuration change).
        let Some(now) = b.get(unit) else {
            continue;
        };
        if was == now {
            continue;
        }
        let owner = fresh
            .services
            .iter()
            .find(|s| &s.unit == unit)
            .map_or_else(|| unit.clone(), |s| format!("`{}` ({unit})", s.name));
        out.push(match (was, now) {
            (None, Some(_)) => format!("the unit file of {owner} was installed since"),
            (Some(_), None) => format!("the unit file of {owner} was removed"),
            _ => format!("the installed unit file of {owner} changed"),
        });
    }
    out
}

fn rev_or_nothing(sha: Option<&str>) -> &str {
    sha.map_or("nothing", short)
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".to_owned()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::git::Rev;
    use crate::plan::{
        FORMAT_VERSION, PlanInputs, RollbackKind, RollbackPlan, ServiceChange, ServicePlan,
        UnitChange,
    };

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "cccccccccccccccccccccccccccccccccccccccc";

    fn rev(sha: &str) -> Rev {
        Rev {
            spec: sha.to_owned(),
            sha: sha.to_owned(),
            summary: String::new(),
        }
    }

    fn service(name: &str, deployed: &str) -> ServicePlan {
        ServicePlan {
            name: name.to_owned(),
            phase: "core".to_owned(),
            unit: format!("p-{name}.service"),
            change: ServiceChange::Deploy,
            migrate: false,
            unit_change: UnitChange::Unchanged,
            from_revision: Some(deployed.to_owned()),
            to_revision: Some(B.to_owned()),
            reasons: Vec::new(),
            changed_paths: Vec::new(),
            changed_count: 0,
            unit_diff: None,
        }
    }

    /// A deploy plan from A to B of `backend` and `search`, deployed at A.
    fn base() -> Plan {
        let mut p = Plan {
            format_version: FORMAT_VERSION,
            operation: Operation::Deploy,
            project: "p".into(),
            environment: "staging".into(),
            branch: "main".into(),
            from: Some(rev(A)),
            to: rev(B),
            first_deploy: false,
            non_ancestor: false,
            fingerprint: String::new(),
            inputs: PlanInputs {
                moorline_version: "0.1.0".into(),
                config_sha256: "1".repeat(64),
                state_sha256: Some("5".repeat(64)),
                units_source: "host".into(),
                units: BTreeMap::from([
                    ("p-backend.service".to_owned(), Some("7".repeat(64))),
                    ("p-search.service".to_owned(), None),
                ]),
                allow_non_ancestor: false,
                adopt: Vec::new(),
                pending_migrations: Vec::new(),
                skip_promotion_check: false,
                artifacts: BTreeMap::new(),
            },
            changed_paths: 1,
            pass_env: Vec::new(),
            services: vec![service("backend", A), service("search", A)],
            actions: Vec::new(),
            rollback: RollbackPlan {
                kind: RollbackKind::CodeOnly,
                services: Vec::new(),
                summary: String::new(),
            },
            warnings: Vec::new(),
            notes: Vec::new(),
            conflicts: Vec::new(),
            uncommitted: Vec::new(),
            promotion: None,
            failed_here: None,
        };
        seal(&mut p);
        p
    }

    /// Recomputes the fingerprint, as `plan` would have for these inputs.
    fn seal(p: &mut Plan) {
        p.fingerprint = fingerprint(
            &p.project,
            &p.environment,
            p.from.as_ref().map(|f| f.sha.as_str()),
            &p.to.sha,
            &p.inputs,
        );
    }

    #[test]
    fn names_each_input_that_moved() {
        type Change = fn(&mut Plan);
        let cases: &[(&str, Change, &[&str])] = &[
            ("nothing", |_| {}, &[]),
            (
                "config edited",
                |p| p.inputs.config_sha256 = "2".repeat(64),
                &["the configuration changed (sha256 111111111111 → 222222222222)"],
            ),
            (
                "branch moved",
                |p| p.to = rev(C),
                &["the branch moved: to was bbbbbbbbbbbb, now cccccccccccc"],
            ),
            (
                "deployed revision moved",
                |p| p.from = Some(rev(C)),
                &["the deployed revision moved: from was aaaaaaaaaaaa, now cccccccccccc"],
            ),
            (
                "first deploy planned, then something deployed",
                |p| p.from = None,
                &["the deployed revision moved: from was aaaaaaaaaaaa, now nothing"],
            ),
            (
                "another apply switched a service",
                |p| {
                    p.inputs.state_sha256 = Some("6".repeat(64));
                    p.services[1].from_revision = Some(C.to_owned());
                },
                &["the host state changed: service `search` deployed aaaaaaaaaaaa → cccccccccccc"],
            ),
            (
                "state rewritten, no service moved",
                |p| p.inputs.state_sha256 = Some("6".repeat(64)),
                &["the host state changed (an apply, rollback, restart or backup ran since)"],
            ),
            (
                "the database is behind the code now",
                |p| p.inputs.pending_migrations = vec!["backend".to_owned()],
                &[
                    "migrate-status on the host reported pending migrations for none, now for backend",
                ],
            ),
            (
                "state removed",
                |p| p.inputs.state_sha256 = None,
                &["the host state changed: state.json is gone"],
            ),
            (
                "service renamed in the config",
                |p| {
                    p.inputs.config_sha256 = "2".repeat(64);
                    p.services[1] = service("searching", A);
                    p.inputs.units.remove("p-search.service");
                    p.inputs
                        .units
                        .insert("p-searching.service".to_owned(), None);
                },
                &[
                    "the configuration changed (sha256 111111111111 → 222222222222)",
                    "service `search` is no longer in the configuration",
                    "new service `searching` in the configuration",
                ],
            ),
            (
                "unit file edited on the host",
                |p| {
                    p.inputs
                        .units
                        .insert("p-backend.service".to_owned(), Some("8".repeat(64)));
                },
                &["the installed unit file of `backend` (p-backend.service) changed"],
            ),
            (
                "unit file installed by hand",
                |p| {
                    p.inputs
                        .units
                        .insert("p-search.service".to_owned(), Some("8".repeat(64)));
                },
                &["the unit file of `search` (p-search.service) was installed since"],
            ),
            (
                "another moorline",
                |p| p.inputs.moorline_version = "0.2.0".into(),
                &["it was made by moorline 0.1.0, this is 0.2.0"],
            ),
            (
                "adoption asked",
                |p| p.inputs.adopt = vec!["backend".to_owned()],
                &["the units adopted differ: it adopts none, this backend"],
            ),
            (
                "only the actions",
                |p| {
                    p.actions.push(crate::plan::Action {
                        id: "barrier".into(),
                        service: None,
                        phase: None,
                        reason: String::new(),
                        after: Vec::new(),
                        step: crate::plan::Step::Barrier,
                    });
                },
                &["the computed actions differ"],
            ),
        ];
        for (what, change, want) in cases {
            let saved = base();
            let mut fresh = base();
            change(&mut fresh);
            seal(&mut fresh);
            assert_eq!(what_moved(&saved, &fresh), *want, "{what}");
        }
    }

    #[test]
    fn a_plan_file_edited_after_saving_says_so() {
        let mut saved = base();
        saved.inputs.config_sha256 = "2".repeat(64);
        // Fingerprint left as it was: the file no longer matches itself.
        let moved = what_moved(&saved, &base());
        assert_eq!(
            moved.first().map(String::as_str),
            Some(
                "the plan file was changed after it was saved: its fingerprint does not match its contents"
            )
        );
        let mut edited = base();
        edited.fingerprint = "sha256:0".into();
        assert_eq!(what_moved(&edited, &base()).len(), 1);
    }

    #[test]
    fn state_that_appeared_since_is_named() {
        let mut saved = base();
        saved.from = None;
        saved.inputs.state_sha256 = None;
        seal(&mut saved);
        assert_eq!(
            what_moved(&saved, &base()),
            [
                "the deployed revision moved: from was nothing, now aaaaaaaaaaaa",
                "the host state changed: there was none when the plan was made (something was deployed since)"
            ]
        );
    }
}

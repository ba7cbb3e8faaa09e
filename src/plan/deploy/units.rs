//! Stage 2, unit changes: per service, the unit file moorline renders
//! against the one on the host. In go the configuration, the environment
//! and what the host has installed; out comes, per service, whether its
//! unit is unmanaged, new, unchanged, changed, in conflict with a file
//! moorline did not install, or adopted (`--adopt`), with a redacted diff,
//! plus the baseline hashes the plan's inputs record and the conflicts.
//! A file moorline did not install takes the baseline's place (it is what
//! would be replaced), and is replaced only when adopted.

use std::collections::BTreeMap;

use super::{ForeignUnit, HostView, PlanError, timer_change};
use crate::config::{Config, Environment, Service};
use crate::files::sha256_hex;
use crate::plan::{UnitChange, UnitConflict};
use crate::unit;

/// How every unit file moorline renders begins (`unit::render`).
const MOORLINE_HEADER: &str = "# Managed by moorline";

/// Every service's unit file, planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct UnitPlan {
    /// By service index: the change and its (redacted) diff.
    pub(crate) changes: BTreeMap<usize, (UnitChange, Option<String>)>,
    /// Unit file name → the SHA-256 of its baseline (`None`: none).
    pub(crate) input_units: BTreeMap<String, Option<String>>,
    pub(crate) conflicts: Vec<UnitConflict>,
}

/// Plans every service's unit file; warns about `--adopt` names with
/// nothing to adopt.
pub(super) fn unit_changes(
    config: &Config,
    env: &Environment,
    host: &HostView,
    adopt: &[String],
    warnings: &mut Vec<String>,
) -> Result<UnitPlan, PlanError> {
    let mut unit_changes: BTreeMap<usize, (UnitChange, Option<String>)> = BTreeMap::new();
    let mut input_units = BTreeMap::new();
    let mut conflicts = Vec::new();
    for (i, s) in config.services.iter().enumerate() {
        let foreign = host.foreign_units.get(&s.name).filter(|_| s.unit.is_some());
        let baseline = match foreign {
            Some(f) => Some(f.text.clone()),
            None => host.units.get(&s.name).cloned().flatten(),
        };
        input_units.insert(
            s.unit_name.clone(),
            baseline.as_deref().map(|b| sha256_hex(b.as_bytes())),
        );
        let Some(rendered) = unit::render(env, s)? else {
            unit_changes.insert(i, (UnitChange::Unmanaged, None));
            continue;
        };
        let secret = unit::secret_names(s);
        let timer = timer_change(env, s, host)?;
        let timer_moved = timer.as_ref().is_some_and(|(b, r)| b.as_ref() != Some(r));
        let change = match (foreign, &baseline) {
            (Some(_), _) if adopt.contains(&s.name) => UnitChange::Adopt,
            (Some(_), _) => UnitChange::Conflict,
            (None, None) => UnitChange::New,
            (None, Some(b)) if *b == rendered && !timer_moved => UnitChange::Unchanged,
            (None, Some(_)) => UnitChange::Changed,
        };
        if let (Some((timer_baseline, _)), Some(t)) = (&timer, s.timer_unit()) {
            input_units.insert(
                t,
                timer_baseline.as_deref().map(|b| sha256_hex(b.as_bytes())),
            );
        }
        if let (UnitChange::Conflict, Some(f)) = (change, foreign) {
            conflicts.push(unit_conflict(s, f));
        }
        let shown_new = unit::render_redacted(env, s)?.unwrap_or_default();
        let old_label = if foreign.is_some() {
            format!("host/{}", s.unit_name)
        } else {
            format!("installed/{}", s.unit_name)
        };
        let diff = match (&change, &baseline) {
            (UnitChange::Changed | UnitChange::Conflict | UnitChange::Adopt, Some(b)) => {
                Some(unit::diff(
                    &unit::redact_text(b, &secret),
                    &shown_new,
                    &old_label,
                    &format!("planned/{}", s.unit_name),
                ))
                .filter(|d| !d.is_empty())
            }
            (UnitChange::New, _) => Some(unit::diff(
                "",
                &shown_new,
                "/dev/null",
                &format!("planned/{}", s.unit_name),
            )),
            _ => None,
        };
        let diff = match (&timer, s.timer_unit()) {
            (Some((b, r)), Some(t)) if b.as_ref() != Some(r) && change != UnitChange::Conflict => {
                let old_label = match b {
                    Some(_) => format!("installed/{t}"),
                    None => "/dev/null".to_owned(),
                };
                let d = unit::diff(
                    b.as_deref().unwrap_or(""),
                    r,
                    &old_label,
                    &format!("planned/{t}"),
                );
                Some(diff.map_or(d.clone(), |u| format!("{u}{d}")))
            }
            _ => diff,
        };
        unit_changes.insert(i, (change, diff));
    }
    for name in adopt {
        let Some(s) = config.service(name) else {
            continue;
        };
        if !host.foreign_units.contains_key(name) {
            warnings.push(format!(
                "--adopt {name}: nothing to adopt, no unit file that moorline did not install is at {}",
                s.unit_name
            ));
        }
    }
    Ok(UnitPlan {
        changes: unit_changes,
        input_units,
        conflicts,
    })
}

/// Why an adopted unit file is replaced.
pub(super) fn adopt_reason(s: &Service, host: &HostView) -> String {
    let path = host
        .foreign_units
        .get(&s.name)
        .map_or(s.unit_name.as_str(), |f| f.path.as_str());
    format!("adopting a unit moorline did not install: {path} is replaced (--adopt)")
}

/// The conflict a foreign unit file makes, with the way forward.
fn unit_conflict(s: &Service, f: &ForeignUnit) -> UnitConflict {
    // The header alone proves nothing (anyone can write it), but it hints
    // at a state directory that is not the one that installed the file.
    let hint = if f.text.starts_with(MOORLINE_HEADER) {
        " It carries moorline's header, so it may have been installed with another state directory (--state-dir) or a state.json that was lost."
    } else {
        ""
    };
    UnitConflict {
        service: s.name.clone(),
        unit: s.unit_name.clone(),
        path: f.path.clone(),
        reason: format!(
            "{} was not installed by moorline (the host state has no record of it), so moorline will not replace it.{hint} Compare it with moorline's unit (the diff under service {}), then adopt it with --adopt {}; or remove the `unit` block of service {} to keep managing it by hand.",
            f.path, s.name, s.name, s.name
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
project "p" { unit-name "p-{service}.service" }
environment "staging" { branch "main"; root "/srv/p" }
phase "core"
runtime "node" {
    build "true"
    unit { exec "/usr/bin/node" "{current}/index.js"; }
}
runtime "bin" { build "true"; }
service "api" { runtime "node"; port 1; phase "core"; }
service "web" { runtime "node"; port 2; phase "core"; }
service "batch" { runtime "bin"; port 3; phase "core"; }
"#;

    struct Case {
        config: Config,
        host: HostView,
    }

    impl Case {
        fn new() -> Self {
            Self {
                config: crate::config::parse("t.kdl", CONFIG).unwrap(),
                host: HostView::default(),
            }
        }
        fn env(&self) -> &Environment {
            &self.config.environments[0]
        }
        fn rendered(&self, name: &str) -> String {
            let s = self.config.service(name).unwrap();
            unit::render(self.env(), s).unwrap().unwrap()
        }
        fn plan(&self, adopt: &[&str]) -> (UnitPlan, Vec<String>) {
            let adopt: Vec<String> = adopt.iter().map(|a| (*a).to_owned()).collect();
            let mut warnings = Vec::new();
            let p =
                unit_changes(&self.config, self.env(), &self.host, &adopt, &mut warnings).unwrap();
            (p, warnings)
        }
    }

    #[test]
    fn new_unchanged_changed_and_unmanaged() {
        let mut c = Case::new();
        let installed = c.rendered("web");
        c.host.units.insert("web".into(), Some(installed.clone()));
        c.host
            .units
            .insert("batch".into(), Some("[Service]\n".into()));
        let (p, warnings) = c.plan(&[]);
        assert!(warnings.is_empty());
        let (api, api_diff) = &p.changes[&0];
        assert_eq!(*api, UnitChange::New);
        assert!(api_diff.as_deref().unwrap().contains("/dev/null"));
        assert_eq!(p.changes[&1], (UnitChange::Unchanged, None));
        // A service without a unit block: moorline leaves its unit alone.
        assert_eq!(p.changes[&2], (UnitChange::Unmanaged, None));
        assert!(p.conflicts.is_empty());
        assert_eq!(p.input_units["p-api.service"], None);
        assert_eq!(
            p.input_units["p-web.service"],
            Some(sha256_hex(installed.as_bytes()))
        );

        c.host
            .units
            .insert("web".into(), Some(installed.replace("index.js", "old.js")));
        let (p, _) = c.plan(&[]);
        let (web, diff) = &p.changes[&1];
        assert_eq!(*web, UnitChange::Changed);
        let diff = diff.as_deref().unwrap();
        assert!(diff.contains("installed/p-web.service"), "{diff}");
        assert!(
            diff.contains("-ExecStart=/usr/bin/node /srv/p/web/current/old.js"),
            "{diff}"
        );
    }

    #[test]
    fn a_foreign_unit_is_a_conflict_until_adopted() {
        let mut c = Case::new();
        c.host.foreign_units.insert(
            "api".into(),
            ForeignUnit {
                path: "/etc/systemd/user/p-api.service".into(),
                text: format!("{MOORLINE_HEADER}\n[Service]\n"),
            },
        );
        let (p, _) = c.plan(&[]);
        assert_eq!(p.changes[&0].0, UnitChange::Conflict);
        assert_eq!(p.conflicts.len(), 1);
        assert_eq!(p.conflicts[0].service, "api");
        assert!(p.conflicts[0].reason.contains("--adopt api"));
        // moorline's header hints at another state directory.
        assert!(p.conflicts[0].reason.contains("--state-dir"));

        let (p, warnings) = c.plan(&["api"]);
        assert_eq!(p.changes[&0].0, UnitChange::Adopt);
        assert!(p.conflicts.is_empty());
        assert!(warnings.is_empty());
        assert!(
            adopt_reason(c.config.service("api").unwrap(), &c.host)
                .contains("/etc/systemd/user/p-api.service is replaced")
        );
    }

    #[test]
    fn a_jobs_timer_file_is_planned_with_its_unit() {
        let mut c = Case::new();
        c.config = crate::config::parse(
            "t.kdl",
            &CONFIG.replace(
                "port 2; phase \"core\"; }",
                "phase \"core\"; schedule \"daily\"; }",
            ),
        )
        .unwrap();
        let installed = c.rendered("web");
        c.host.units.insert("web".into(), Some(installed));
        // Its unit is installed, its timer not yet: both are installed.
        let (p, _) = c.plan(&[]);
        let (web, diff) = &p.changes[&1];
        assert_eq!(*web, UnitChange::Changed);
        let diff = diff.as_deref().unwrap();
        assert!(diff.contains("planned/p-web.timer"), "{diff}");
        assert!(diff.contains("+OnCalendar=daily"), "{diff}");
        assert_eq!(p.input_units["p-web.timer"], None);
        // Both as rendered: nothing to do.
        let s = c.config.service("web").unwrap();
        let timer = unit::render_timer(c.env(), s).unwrap();
        c.host.timers.insert("web".into(), timer.clone());
        let (p, _) = c.plan(&[]);
        assert_eq!(p.changes[&1], (UnitChange::Unchanged, None));
        assert_eq!(
            p.input_units["p-web.timer"],
            timer.map(|t| sha256_hex(t.as_bytes()))
        );
        // A service without a schedule has no timer entry.
        assert!(!p.input_units.contains_key("p-api.timer"));
    }

    #[test]
    fn adopting_what_is_not_there_warns() {
        let c = Case::new();
        let (p, warnings) = c.plan(&["web"]);
        assert_eq!(p.changes[&1].0, UnitChange::New);
        assert_eq!(
            warnings,
            [
                "--adopt web: nothing to adopt, no unit file that moorline did not install is at p-web.service"
            ]
        );
    }
}

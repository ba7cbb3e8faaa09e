//! Stage 2, unit changes: per service, the unit file moorline renders
//! against the one on the host. In go the configuration, the environment
//! and what the host has installed; out comes, per service, whether its
//! unit is unmanaged, new, unchanged, changed, in conflict with a file
//! moorline did not install, or adopted (`--adopt`), with a redacted diff,
//! plus the baseline hashes the plan's inputs record and the conflicts.
//! A file moorline did not install takes the baseline's place (it is what
//! would be replaced), and is replaced only when adopted.

use std::collections::BTreeMap;

use super::{ForeignUnit, HostView, PlanError};
use crate::config::{Config, Environment, Service};
use crate::plan::{UnitChange, UnitConflict};
use crate::state::sha256_hex;
use crate::unit;

/// How every unit file moorline renders begins (`unit::render`).
const MOORLINE_HEADER: &str = "# Managed by moorline";

/// Every service's unit file, planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct UnitPlan {
    /// By service index: the change and its (redacted) diff.
    pub changes: BTreeMap<usize, (UnitChange, Option<String>)>,
    /// Unit file name → the SHA-256 of its baseline (`None`: none).
    pub input_units: BTreeMap<String, Option<String>>,
    pub conflicts: Vec<UnitConflict>,
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
        let change = match (foreign, &baseline) {
            (Some(_), _) if adopt.contains(&s.name) => UnitChange::Adopt,
            (Some(_), _) => UnitChange::Conflict,
            (None, None) => UnitChange::New,
            (None, Some(b)) if *b == rendered => UnitChange::Unchanged,
            (None, Some(_)) => UnitChange::Changed,
        };
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

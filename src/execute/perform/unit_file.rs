//! The unit-file steps: install a service's unit (rendered from the
//! configuration, or a saved one a rollback returns to), after saving the
//! file it replaces and journaling that; restore a saved unit; remove one.

use std::path::PathBuf;

use crate::config::Service;
use crate::journal::Record;
use crate::plan::UnitSource;
use crate::unit;

use super::super::Ctx;
use super::super::journaling::journal_append;
use super::{Act, ActionError, blocking};

/// Installs the action's service's unit file `unit`.
pub(super) async fn install(
    act: &Act<'_>,
    unit: &str,
    source: &UnitSource,
) -> Result<Option<String>, ActionError> {
    let ctx = act.ctx;
    let svc = act.configured("install-unit")?;
    let text = unit_text(ctx, source, svc, unit)?;
    let path = ctx.unit_dir.join(unit);
    let keep = ctx.state_dir.join("units").join(act.apply_id).join(unit);
    let saved = {
        let path = path.clone();
        blocking(move || match std::fs::read(&path) {
            Ok(old) => {
                crate::files::write_private(&keep, &old)
                    .map_err(ActionError::io("saving the unit file as", &keep))?;
                Ok(Some(keep.display().to_string()))
            }
            Err(_) => Ok(None),
        })
        .await?
    };
    journal_append(
        act.journal,
        Record::UnitReplace {
            service: svc.name.clone(),
            unit: unit.to_owned(),
            saved,
        },
    )
    .await?;
    // A unit carrying inline secret values is readable by root only.
    let private = unit::carries_secrets(&text, &unit::secret_names(svc));
    blocking(move || {
        unit::install_file(&path, &text, private)
            .map_err(ActionError::io("writing the unit file", &path))
    })
    .await?;
    Ok(None)
}

/// Puts the saved unit file `saved` back as `unit`.
pub(super) async fn restore(
    act: &Act<'_>,
    unit: &str,
    saved: &str,
) -> Result<Option<String>, ActionError> {
    let (path, saved) = (act.ctx.unit_dir.join(unit), PathBuf::from(saved));
    blocking(move || {
        let text = std::fs::read(&saved)
            .map_err(ActionError::io("reading the saved unit file", &saved))?;
        crate::files::write_private(&path, &text)
            .map_err(ActionError::io("writing the unit file", &path))
    })
    .await?;
    Ok(None)
}

/// Removes the unit file `unit` (gone already is fine).
pub(super) async fn remove(act: &Act<'_>, unit: &str) -> Result<Option<String>, ActionError> {
    let path = act.ctx.unit_dir.join(unit);
    blocking(move || match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(ActionError::io("removing the unit file", &path)(e))
        }
        _ => Ok(()),
    })
    .await?;
    Ok(None)
}

/// The unit file an install-unit action writes as `unit`: the saved file
/// it names (the unit of a release a rollback returns to), else the
/// service's unit (or its timer, for the timer's name) rendered from the
/// configuration.
pub(in crate::execute) fn unit_text(
    ctx: &Ctx,
    source: &UnitSource,
    svc: &Service,
    unit: &str,
) -> Result<String, ActionError> {
    let text = match source {
        UnitSource::Saved(saved) => std::fs::read_to_string(saved).ok(),
        UnitSource::Config => {
            let rendered = if svc.timer_unit().as_deref() == Some(unit) {
                unit::render_timer(&ctx.env, svc)
            } else {
                unit::render(&ctx.env, svc)
            };
            rendered.map_err(|source| ActionError::Unit {
                service: svc.name.clone(),
                source: Box::new(source),
            })?
        }
    };
    text.ok_or_else(|| ActionError::NoUnit {
        service: svc.name.clone(),
    })
}

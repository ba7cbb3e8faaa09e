//! The steps on a service's data: the migration command, and the backup
//! the plan takes before the first migration (journaled, so the state and
//! a rollback can name it).

use std::path::Path;
use std::time::Duration;

use crate::journal::Record;
use crate::plan::Command;
use crate::process::{self, Run};

use super::super::journaling::journal_append;
use super::{Act, ActionError, command_env};

/// Runs the migration command in the new release.
pub(super) async fn migrate(
    act: &Act<'_>,
    release: &str,
    command: &Command,
) -> Result<Option<String>, ActionError> {
    process::run(Run {
        argv: &command.argv,
        dir: Some(Path::new(release)),
        env: &command_env(act.ctx, act.action.service.as_deref(), Some(release)),
        timeout: Duration::from_secs(command.timeout_secs),
        log: &act.log(),
    })
    .await
    .map_err(|source| ActionError::Command {
        what: "the migration",
        source: Box::new(source),
    })?;
    Ok(None)
}

/// Takes the environment's backup and journals it.
pub(super) async fn backup(act: &Act<'_>) -> Result<Option<String>, ActionError> {
    let ctx = act.ctx;
    let b = ctx.env.backup.as_ref().ok_or(ActionError::Backup {
        error: crate::backup::BackupError::NotConfigured,
    })?;
    let taken = crate::backup::take(
        &ctx.config.project.name,
        &ctx.env,
        &ctx.state_dir,
        b,
        act.apply_id,
    )
    .await
    .map_err(|error| ActionError::Backup { error })?;
    journal_append(
        act.journal,
        Record::Backup {
            id: taken.id.clone(),
            path: taken.path.clone(),
            size: taken.size,
            sha256: taken.sha256.clone(),
        },
    )
    .await?;
    Ok(Some(format!("{} ({} bytes)", taken.path, taken.size)))
}

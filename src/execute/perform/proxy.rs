//! The proxy step: check the proxy's configuration with its check command
//! (if any), then reload the proxy's unit.

use std::time::Duration;

use crate::plan::Command;
use crate::process::{self, Run};
use crate::template::{self, Vars};

use super::{Act, ActionError, command_env};

/// Checks (`check`) and reloads the proxy `unit`.
pub(super) async fn reload(
    act: &Act<'_>,
    unit: &str,
    check: Option<&Command>,
) -> Result<Option<String>, ActionError> {
    let ctx = act.ctx;
    if let Some(c) = check {
        let vars = Vars {
            root: Some(&ctx.env.root),
            ..Vars::default()
        };
        let argv = template::render_all(&c.argv, &vars);
        process::run(Run {
            argv: &argv,
            dir: None,
            env: &command_env(ctx, None, None),
            timeout: Duration::from_secs(c.timeout_secs),
            log: &act.log(),
        })
        .await
        .map_err(|source| ActionError::Command {
            what: "the proxy check",
            source: Box::new(source),
        })?;
    }
    ctx.systemd
        .reload(unit)
        .await
        .and_then(|job| job.check("reload", unit))
        .map_err(ActionError::systemd("reloading", unit))?;
    Ok(None)
}

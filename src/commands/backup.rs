//! `backup`: take a database backup on demand (the seeds' nightly job),
//! list the kept ones, restore one. Retention as the environment says.

use miette::Diagnostic;

use super::{confirm, runtime};
use crate::cli::{BackupAction, BackupArgs};
use crate::exit;
use crate::state::{self, BackupRecord, State};
use crate::target::Target;

#[derive(Debug, thiserror::Error, Diagnostic)]
pub(crate) enum BackupError {
    #[error("`backup` needs --env")]
    #[diagnostic(
        code(moorline::backup::no_env),
        help("moorline backup --env production")
    )]
    NoEnv,
    #[error("environment {env} has no backup block")]
    #[diagnostic(
        code(moorline::backup::not_configured),
        help("add backup {{ run ...; restore ...; keep 30 }} to the environment (docs/config.md)")
    )]
    NotConfigured { env: String },
    #[error("no backup `{id}` in {env}")]
    #[diagnostic(
        code(moorline::backup::unknown),
        help("`moorline backup list --env {env}` shows the kept ones")
    )]
    Unknown { id: String, env: String },
    #[error("{0}")]
    #[diagnostic(
        code(moorline::backup::failed),
        help("see the command's log in the state directory's logs/")
    )]
    Failed(crate::backup::BackupError),
    #[error("refusing to restore without confirmation: there is no terminal to ask on")]
    #[diagnostic(
        code(moorline::backup::unconfirmed),
        help("pass --yes once you are sure")
    )]
    Unconfirmed,
}

/// `backup` on this host, for the environment of `t`.
pub(crate) fn run(t: &Target, args: &BackupArgs) -> miette::Result<i32> {
    let env = t.env.name.as_str();
    let b = t
        .env
        .backup
        .clone()
        .ok_or_else(|| BackupError::NotConfigured {
            env: env.to_owned(),
        })?;
    match &args.action {
        None => {
            let _lock = crate::lock::acquire(&t.state_dir, "backup")?;
            let log_id = format!("backup-{}", crate::execute::new_apply_id());
            let taken = runtime()?
                .block_on(crate::backup::take(
                    &t.config().project.name,
                    &t.env,
                    &t.state_dir,
                    &b,
                    &log_id,
                ))
                .map_err(BackupError::Failed)?;
            let mut st = load(t)?;
            st.backups.push(BackupRecord {
                id: taken.id.clone(),
                path: taken.path.clone(),
                size: taken.size,
                sha256: taken.sha256,
                taken_at: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                revision: st.revision.clone(),
                apply_id: None,
            });
            crate::backup::retain(&mut st, b.keep as usize);
            state::save(&t.state_dir, &st)?;
            println!("{} {} ({} bytes)", taken.id, taken.path, taken.size);
            Ok(exit::OK)
        }
        Some(BackupAction::List) => {
            let st = load(t)?;
            let pinned = st.apply_backup().map(|b| b.id.clone());
            if st.backups.is_empty() {
                println!("no backups kept for {env}");
            }
            for r in &st.backups {
                let when = humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(r.taken_at),
                );
                let note = if pinned.as_deref() == Some(r.id.as_str()) {
                    "  (taken before the last apply's migrations)"
                } else {
                    ""
                };
                println!("{}  {when}  {:>12} bytes  {}{note}", r.id, r.size, r.path);
            }
            Ok(exit::OK)
        }
        Some(BackupAction::Restore { id, yes }) => {
            let st = load(t)?;
            let record = st
                .backups
                .iter()
                .find(|r| r.id == *id)
                .cloned()
                .ok_or_else(|| BackupError::Unknown {
                    id: id.clone(),
                    env: env.to_owned(),
                })?;
            eprintln!(
                "restore {} into {env}: everything written since it was taken is lost",
                record.id
            );
            if !crate::policy::confirmed(*yes, || confirm("Restore it?")) {
                return Err(BackupError::Unconfirmed.into());
            }
            let _lock = crate::lock::acquire(&t.state_dir, "backup restore")?;
            runtime()?
                .block_on(crate::backup::restore(&t.env, &b, &t.state_dir, &record))
                .map_err(BackupError::Failed)?;
            crate::backup::record_restore(&t.state_dir, &t.config().project.name, env, &record)?;
            eprintln!(
                "restored {}; the next deploy of {env} runs the migrations again",
                record.id
            );
            Ok(exit::OK)
        }
    }
}

fn load(t: &Target) -> miette::Result<State> {
    let loaded = state::load(&t.state_dir, &t.config().project.name, &t.env.name)?;
    Ok(loaded.state.unwrap_or_else(|| State {
        format_version: state::FORMAT_VERSION,
        project: t.config().project.name.clone(),
        environment: t.env.name.clone(),
        ..State::default()
    }))
}

//! The command line: clap definitions only. Raw flags are resolved into
//! settings in `commands`; nothing here touches the host.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "moorline",
    version,
    about = "Declarative plan/apply deployments for systemd services",
    long_about = "moorline reads services, phases and environments from a KDL file, plans what a \
deploy of a git revision changes (builds, migrations, unit files, restarts, health checks, proxy \
reload) and applies exactly that plan over systemd's D-Bus API, in parallel where the dependency \
graph allows, with a journal that resumes and rolls back.",
    after_help = "Exit codes: 0 ok, 1 error, 2 plan has changes (--detailed-exitcode), \
3 apply failed and was rolled back, 4 apply failed and needs attention, \
5 status --check found something unhealthy or drifted.\n\
Docs: docs/getting-started.md, docs/config.md, docs/commands.md"
)]
pub struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Args)]
pub(crate) struct Global {
    /// Configuration file [default: $MOORLINE_CONFIG, else the only *.kdl here]
    #[arg(short = 'c', long = "config", global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Git repository [default: the repository that contains the config file]
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) repo: Option<PathBuf>,
    /// State directory [default: /var/lib/moorline/PROJECT/ENV as root, else $XDG_STATE_HOME/moorline/PROJECT/ENV]
    #[arg(long, global = true, value_name = "DIR")]
    pub(crate) state_dir: Option<PathBuf>,
    /// Which systemd to drive: the system manager or the user's [default: $MOORLINE_SYSTEMD, else system as root and user otherwise]
    #[arg(long, global = true, value_enum, env = "MOORLINE_SYSTEMD")]
    pub(crate) systemd: Option<SystemdKind>,
    /// Fleet mode: the ssh config file the controller's `ssh` reads (`ssh -F FILE`)
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) ssh_config: Option<PathBuf>,
    /// Fleet host side: act as this host of the environment (only the services it runs); used by the fleet controller, and on a host by hand
    #[arg(long, global = true, value_name = "NAME", env = "MOORLINE_HOST")]
    pub(crate) host: Option<String>,
}

impl Global {
    /// `--host` (or `MOORLINE_HOST`), unless empty.
    pub(crate) fn host_name(&self) -> Option<&str> {
        self.host.as_deref().filter(|h| !h.is_empty())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SystemdKind {
    System,
    User,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub(crate) enum Format {
    #[default]
    Text,
    Markdown,
    Json,
}

/// Output of commands that have no Markdown form (`status`, `logs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub(crate) enum OutputFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub(crate) enum OnFailure {
    /// Roll every switched service back to its previous release (exit 3)
    #[default]
    Rollback,
    /// Leave the failed state in place for debugging (exit 4)
    Stop,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Parse and check the configuration; every problem is reported
    Validate,
    /// Write a commented configuration guessed from a repository's files
    Init(InitArgs),
    /// Compute what a deploy would do, and why
    Plan(PlanArgs),
    /// Execute a saved plan exactly, or plan and apply after confirmation
    Apply(ApplyArgs),
    /// Return services to their previous release (no rebuild), or restore the database
    Rollback(RollbackArgs),
    /// Every service's unit state, release, health and drift
    Status(StatusArgs),
    /// The plan's action graph as Graphviz DOT
    Graph(PlanTarget),
    /// Take, list and restore database backups
    Backup(BackupArgs),
    /// Restart services in dependency order, gated on readiness (no build)
    Restart(OpsArgs),
    /// Start services in dependency order
    Start(OpsArgs),
    /// Stop services in reverse dependency order
    Stop(OpsArgs),
    /// Turn start-at-boot on for the services' units
    Enable(OpsArgs),
    /// Turn start-at-boot off for the services' units
    Disable(OpsArgs),
    /// The services' journal, interleaved by time
    Logs(LogsArgs),
    /// Build release artifacts once, here; and a host's side of their transfer
    #[command(subcommand)]
    Artifact(ArtifactCommand),
    /// A self-contained walk-through on a generated repository and a private systemd
    Demo(DemoArgs),
    /// Fleet host side: this host's deploy history of an environment as JSON, which a fleet controller reads to check another environment's `promote-from`
    #[command(hide = true)]
    PromotionRecord {
        /// Environment whose deploys to report
        #[arg(long = "env", short = 'e', value_name = "ENV")]
        env: String,
    },
    /// Shell completion script
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The man page (roff) on standard output; with --dir, a page for every command
    Man {
        /// Write moorline.1 and a page for every subcommand (moorline-plan.1,
        /// moorline-backup-list.1, ...) into DIR instead
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
}

/// What a plan is computed for: shared by `plan` and `graph`.
#[derive(Debug, Args, Clone)]
pub(crate) struct PlanTarget {
    /// Environment to plan for
    #[arg(long = "env", short = 'e', value_name = "ENV")]
    pub(crate) env: String,
    /// What is deployed now [default: the revision in the host state; none: first deploy]
    #[arg(long, value_name = "REV")]
    pub(crate) from: Option<String>,
    /// What to deploy [default: the tip of the environment's branch]
    #[arg(long, value_name = "REV")]
    pub(crate) to: Option<String>,
    /// Allow a --from that is not an ancestor of --to (flagged in the plan)
    #[arg(long)]
    pub(crate) allow_non_ancestor: bool,
    /// Replace the unit file of SERVICE (a service or its unit file name)
    /// although moorline did not install it (shown in the plan); repeatable
    #[arg(long, value_name = "SERVICE")]
    pub(crate) adopt: Vec<String>,
    /// Plan (and let `apply` of the saved plan go on) although the
    /// environment's `promote-from` source never ran the revision healthy
    /// (shown in the plan)
    #[arg(long)]
    pub(crate) skip_promotion_check: bool,
}

/// Prebuilt artifacts a host installs instead of building: shared by
/// `plan` and `apply` on a host.
#[derive(Debug, Args, Clone, Default)]
pub(crate) struct ArtifactArgs {
    /// Install this prebuilt artifact as SERVICE's release instead of
    /// building it here (in this host's artifact store or in --artifacts
    /// DIR); checked against the build it replaces; repeatable
    #[arg(long = "artifact", value_name = "SERVICE=ID")]
    pub(crate) given: Vec<String>,
    /// A directory of artifacts (`moorline artifact build --out DIR`): each
    /// service the plan builds installs the artifact there built from the
    /// plan's target commit (services with `build-on "host"` build here)
    #[arg(long = "artifacts", value_name = "DIR")]
    pub(crate) dir: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub(crate) struct PlanArgs {
    #[command(flatten)]
    pub(crate) target: PlanTarget,
    #[command(flatten)]
    pub(crate) artifacts: ArtifactArgs,
    /// Save the plan (JSON, with its fingerprint) to this file
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
    /// Output format
    #[arg(long, value_enum, default_value_t)]
    pub(crate) format: Format,
    /// Exit 0 when nothing changes, 2 when something does, 1 on error
    #[arg(long)]
    pub(crate) detailed_exitcode: bool,
}

// Command-line switches are independent yes/no flags, as clap has them.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Args)]
pub(crate) struct ApplyArgs {
    /// A plan saved with `plan --out` (`-`: read it from standard input)
    #[arg(value_name = "PLANFILE", conflicts_with_all = ["from", "to"])]
    pub(crate) plan: Option<PathBuf>,
    /// Environment (plans, shows the plan and asks before applying)
    #[arg(long = "env", short = 'e', value_name = "ENV")]
    pub(crate) env: Option<String>,
    /// A plan reviewed elsewhere (a pull request's): plan here toward its
    /// target revision (or --to) and apply only if this host's plan does
    /// the same; satisfies an environment's `approval`
    #[arg(long, value_name = "FILE", conflicts_with = "plan")]
    pub(crate) reviewed: Option<PathBuf>,
    #[arg(long, value_name = "REV")]
    pub(crate) from: Option<String>,
    #[arg(long, value_name = "REV")]
    pub(crate) to: Option<String>,
    #[arg(long)]
    pub(crate) allow_non_ancestor: bool,
    /// Replace the unit file of SERVICE although moorline did not install
    /// it (shown in the plan first); repeatable. A saved or reviewed plan
    /// brings its own adoptions
    #[arg(long, value_name = "SERVICE", conflicts_with = "plan")]
    pub(crate) adopt: Vec<String>,
    /// Apply although the environment's `promote-from` source never ran
    /// the revision healthy (the plan shows it); a saved or reviewed plan
    /// brings its own
    #[arg(long)]
    pub(crate) skip_promotion_check: bool,
    #[command(flatten)]
    pub(crate) artifacts: ArtifactArgs,
    /// Apply although the config file, a service's path or a watched path
    /// has uncommitted changes (they are not deployed; the plan lists them)
    #[arg(long)]
    pub(crate) allow_dirty: bool,
    /// Do not ask for confirmation
    #[arg(long, short = 'y')]
    pub(crate) yes: bool,
    /// Continue an interrupted apply from its journal
    #[arg(long)]
    pub(crate) resume: bool,
    /// Fleet mode: go on without the hosts that cannot be reached before
    /// the start (each counts against the rollout's max-fail)
    #[arg(long)]
    pub(crate) skip_unreachable: bool,
    /// Builds run at once [default: number of CPUs]
    #[arg(long, short = 'j', value_name = "N")]
    pub(crate) jobs: Option<usize>,
    /// What to do when an action fails after services were switched
    #[arg(long, value_enum, default_value_t)]
    pub(crate) on_failure: OnFailure,
    /// Progress output
    #[arg(long, value_enum, default_value_t)]
    pub(crate) format: Format,
}

#[derive(Debug, Args)]
pub(crate) struct RollbackArgs {
    #[arg(long = "env", short = 'e', value_name = "ENV")]
    pub(crate) env: String,
    /// Only these services (repeatable) [default: all changed by the last apply]
    #[arg(long = "service", short = 's', value_name = "SERVICE")]
    pub(crate) services: Vec<String>,
    /// A specific kept release (revision) instead of the previous one
    #[arg(long, value_name = "RELEASE")]
    pub(crate) to: Option<String>,
    /// Restore the database backup taken by the last apply
    #[arg(long)]
    pub(crate) database: bool,
    #[arg(long, short = 'y')]
    pub(crate) yes: bool,
    #[arg(long, value_enum, default_value_t)]
    pub(crate) format: Format,
    /// Fleet controller: roll back this host only (repeatable) [default: every host]
    #[arg(long, value_name = "HOST")]
    pub(crate) on: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    #[arg(long = "env", short = 'e', value_name = "ENV")]
    pub(crate) env: String,
    /// Output format (json: see docs/commands.md)
    #[arg(long, value_enum, default_value_t)]
    pub(crate) format: OutputFormat,
    /// Exit 5 when an operator must act: a service unhealthy or drifted, a
    /// unit down, nothing deployed (behind the branch is reported only)
    #[arg(long)]
    pub(crate) check: bool,
    /// With --check, also fail when the branch has undeployed commits or
    /// services were rolled back by hand
    #[arg(long, requires = "check")]
    pub(crate) fail_behind: bool,
    /// Also run each runtime's migrate-status command
    #[arg(long)]
    pub(crate) migrations: bool,
}

#[derive(Debug, Args)]
pub(crate) struct BackupArgs {
    #[arg(long = "env", short = 'e', value_name = "ENV", global = true)]
    pub(crate) env: Option<String>,
    /// Fleet controller: run on this host only (repeatable) [default: every host, one at a time]
    #[arg(long, value_name = "HOST", global = true)]
    pub(crate) on: Vec<String>,
    #[command(subcommand)]
    pub(crate) action: Option<BackupAction>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum BackupAction {
    /// Backups kept for the environment
    List,
    /// Restore one backup
    Restore {
        id: String,
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

#[derive(Debug, Args)]
pub(crate) struct OpsArgs {
    #[arg(long = "env", short = 'e', value_name = "ENV")]
    pub(crate) env: String,
    /// Only these services (repeatable)
    #[arg(long = "service", short = 's', value_name = "SERVICE")]
    pub(crate) services: Vec<String>,
    /// Also every service that depends on them
    #[arg(long)]
    pub(crate) with_dependents: bool,
    #[arg(long, short = 'y')]
    pub(crate) yes: bool,
    /// Fleet controller: run on this host only (repeatable) [default: every host, one at a time]
    #[arg(long, value_name = "HOST")]
    pub(crate) on: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct LogsArgs {
    #[arg(long = "env", short = 'e', value_name = "ENV")]
    pub(crate) env: String,
    /// Only these services (repeatable) [default: all]
    #[arg(long = "service", short = 's', value_name = "SERVICE")]
    pub(crate) services: Vec<String>,
    /// Entries from this time on (journalctl syntax: "1 hour ago", "2026-06-09 10:00", "today")
    #[arg(long, value_name = "TIME")]
    pub(crate) since: Option<String>,
    /// Keep printing new entries as they are written
    #[arg(long, short = 'f')]
    pub(crate) follow: bool,
    /// The last N entries [default: 100 unless --since is given]
    #[arg(long, short = 'n', value_name = "N")]
    pub(crate) lines: Option<usize>,
    /// Output format (json: one object per line)
    #[arg(long, value_enum, default_value_t)]
    pub(crate) format: OutputFormat,
    /// Read the journal files in DIR instead of the host's journal (journalctl -D)
    #[arg(long, short = 'D', value_name = "DIR")]
    pub(crate) directory: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ArtifactCommand {
    /// Build services at a revision here (in a private build root) and pack
    /// each into a content-addressed artifact store
    Build(ArtifactBuildArgs),
    /// A host's side of a fleet transfer: print which of the listed items
    /// (`manifest HEX`, `pack HEX`) its artifact store lacks, one a line
    #[command(hide = true)]
    Missing {
        #[arg(long = "env", short = 'e', value_name = "ENV")]
        env: String,
        /// Pairs of KIND HEX (`manifest` or `pack`, and its SHA-256)
        #[arg(value_name = "KIND HEX")]
        items: Vec<String>,
    },
    /// A host's side of a fleet transfer: keep the item read from standard
    /// input in the artifact store if its SHA-256 is HEX
    #[command(hide = true)]
    Receive {
        #[arg(long = "env", short = 'e', value_name = "ENV")]
        env: String,
        /// `manifest` or `pack`
        #[arg(value_name = "KIND")]
        kind: String,
        #[arg(value_name = "HEX")]
        hex: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct ArtifactBuildArgs {
    /// The environment whose configuration (runtimes, build commands) is built
    #[arg(long = "env", short = 'e', value_name = "ENV")]
    pub(crate) env: String,
    /// The revision to build [default: the tip of the environment's branch]
    #[arg(long, value_name = "REV")]
    pub(crate) to: Option<String>,
    /// Only these services (repeatable) [default: every service not built on its hosts]
    #[arg(long = "service", short = 's', value_name = "SERVICE")]
    pub(crate) services: Vec<String>,
    /// The artifact store to write [default: STATE-DIR/artifacts]
    #[arg(long, value_name = "DIR")]
    pub(crate) out: Option<PathBuf>,
    /// Output format
    #[arg(long, value_enum, default_value_t)]
    pub(crate) format: OutputFormat,
}

#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// The repository to look at [default: the current directory]
    #[arg(value_name = "DIR")]
    pub(crate) dir: Option<PathBuf>,
    /// Where to write the configuration [default: DIR/moorline.kdl]
    #[arg(long, value_name = "FILE")]
    pub(crate) out: Option<PathBuf>,
    /// Replace the file if it exists
    #[arg(long)]
    pub(crate) force: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Keep the generated files and print where they are
    #[arg(long)]
    pub(crate) keep: bool,
    /// Use the running user manager instead of a private one
    #[arg(long)]
    pub(crate) use_running_systemd: bool,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}

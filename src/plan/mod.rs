//! The plan: a deterministic, serialisable value (actions in a DAG, each
//! with a reason) built by `build` before anything touches the host.
//! Renderers are pure functions of it; `apply` executes it. Its JSON form is
//! the contract documented in docs/plan-format.md.

pub(crate) mod deploy;
pub(crate) mod lifecycle;
pub(crate) mod manual;
pub(crate) mod stale;
pub(crate) mod undo;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::git::Rev;

pub(crate) use crate::json_file::clip;
pub(crate) use deploy::{ForeignUnit, HostView, Inputs, MigrateCheck, build, slot_ready_url};

/// The `from` spec of an automatic rollback's plan (the undo of a failed
/// apply): its revision is what the failed apply was deploying, not the
/// deployed one.
pub(crate) const UNDO_FROM: &str = "failed apply";

/// Version of the JSON contract; bumped on any incompatible change.
pub(crate) const FORMAT_VERSION: u32 = 1;

/// The largest plan file `apply PLANFILE` and `--reviewed` read (128
/// MiB), a host's plan or a fleet's. Measured: the first deploy of 2,000
/// generated fixture services (`benches/plan.rs`'s fleet: 8,205 actions,
/// every service built, installed, restarted and checked) saves as 5.4 MB.
/// A fleet plan holds one host plan per host, so the cap fits some 20
/// hosts that each run all 2,000 services; it keeps a file that is no
/// plan from taking the host's memory (`/dev/zero`, a FIFO and other
/// files that are not regular are refused before any read).
pub const PLAN_FILE_CAP: u64 = 128 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub(crate) format_version: u32,
    /// What the plan does: deploy a revision, or roll services back.
    pub(crate) operation: Operation,
    pub(crate) project: String,
    pub(crate) environment: String,
    pub(crate) branch: String,
    /// What is deployed now; `null` on a first deploy.
    pub(crate) from: Option<Rev>,
    pub to: Rev,
    pub(crate) first_deploy: bool,
    /// `from` is not an ancestor of `to` (`--allow-non-ancestor`).
    pub(crate) non_ancestor: bool,
    /// SHA-256 over everything the plan was computed from.
    pub fingerprint: String,
    pub(crate) inputs: PlanInputs,
    /// Number of paths that changed between `from` and `to`.
    pub(crate) changed_paths: usize,
    /// The environment's `pass-env`: variables of moorline's own
    /// environment that the commands the plan runs receive, besides the
    /// minimal environment every command gets
    /// ([`crate::process::command_env`]). Empty: none.
    #[serde(default)]
    pub(crate) pass_env: Vec<String>,
    /// Every service of the config, in start order.
    pub(crate) services: Vec<ServicePlan>,
    /// Topologically ordered; `after` lists direct predecessors.
    pub actions: Vec<Action>,
    pub(crate) rollback: RollbackPlan,
    pub(crate) warnings: Vec<String>,
    /// What the plan decided that is worth knowing but needs no action:
    /// a first deploy that takes no backup, a `migrate-status` that could
    /// not run. Absent when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) notes: Vec<String>,
    /// Unit files on the host that moorline did not install and would
    /// replace: `apply` refuses the plan until each is adopted (`--adopt`).
    /// Absent when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) conflicts: Vec<UnitConflict>,
    /// What the plan does not see: uncommitted changes (modified, deleted,
    /// untracked files) under the config file, service paths and watched
    /// paths, each `path (what)`, and a config file that differs from its
    /// version at `to`. Services deploy from commits, so these are not
    /// deployed; `apply` refuses them without `--allow-dirty`. Absent when
    /// the tree is clean.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) uncommitted: Vec<String>,
    /// The environment's `promote-from` check: whether the source
    /// environment ran `to` healthy. Absent without `promote-from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) promotion: Option<Promotion>,
    /// `to` (or a commit with the same tree) failed on this environment,
    /// or was rolled back by hand here, and no deploy of it succeeded
    /// since: `apply` asks again, or refuses without `--yes`. Absent
    /// otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) failed_here: Option<Box<crate::state::Failure>>,
}

/// What a plan knows of its revision's run in the `promote-from` source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Promotion {
    /// The source environment.
    pub(crate) source: String,
    /// Its latest run of `to` (or of a commit with the same tree), if it
    /// had one; `null`: it never ran it.
    pub(crate) ran: Option<PromotionRun>,
    /// Whether that run counts: deployed healthy and not rolled back by hand.
    pub(crate) healthy: bool,
    /// The check was skipped (`--skip-promotion-check`): `apply` goes on
    /// without a healthy run.
    pub(crate) skipped: bool,
    /// Commits on this environment's branch that the source's branch lacks
    /// (merges left out), newest first, each `sha summary`; at most 10.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) only_here: Vec<String>,
    /// The source's state could not be read, and why (then `ran` is null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) unavailable: Option<String>,
}

/// One deploy of the revision in the source environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PromotionRun {
    /// The revision it deployed (`to`, or a commit with the same tree).
    pub(crate) revision: String,
    /// When its deploy succeeded there (seconds since the epoch); `null`:
    /// before moorline recorded deploy times.
    pub(crate) at: Option<u64>,
    /// When it stopped being the deployed revision there; `null`: it still is.
    pub(crate) until: Option<u64>,
    /// When it was rolled back by hand there, if it was.
    pub(crate) rolled_back_at: Option<u64>,
}

/// A unit file on the host, at the name a managed service's unit gets,
/// that the host state does not record as installed by moorline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UnitConflict {
    pub(crate) service: String,
    pub(crate) unit: String,
    /// The file on the host.
    pub(crate) path: String,
    /// Why it is not moorline's, and how to go on.
    pub(crate) reason: String,
}

/// What the plan was computed from; the fingerprint is a hash of this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PlanInputs {
    pub(crate) moorline_version: String,
    pub(crate) config_sha256: String,
    /// `null`: no state on the host (nothing deployed, or not on the host).
    pub(crate) state_sha256: Option<String>,
    /// Where the baseline unit files came from: `host`, `config@<sha>` or `none`.
    pub(crate) units_source: String,
    /// Unit name → SHA-256 of the baseline unit file (`null`: none).
    pub(crate) units: BTreeMap<String, Option<String>>,
    pub(crate) allow_non_ancestor: bool,
    /// Services whose hand-written unit file the plan adopts (`--adopt`),
    /// sorted. Absent when none, so plans without adoption keep their
    /// fingerprints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) adopt: Vec<String>,
    /// Deployed services whose `migrate-status` reported pending
    /// migrations on the host, sorted. Absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) pending_migrations: Vec<String>,
    /// The plan was made with `--skip-promotion-check`, so a saved plan
    /// is applied without it as reviewed. Absent when not.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) skip_promotion_check: bool,
    /// Service → the artifact (`sha256:...`) its build installs instead of
    /// building ([`with_artifacts`]). Absent when none, so plans that
    /// build on the host keep their fingerprints.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) artifacts: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Operation {
    Deploy,
    Rollback,
    Restart,
    /// `moorline start`, `stop`, `enable`, `disable`: units only, no
    /// release changes, nothing to roll back.
    Start,
    Stop,
    Enable,
    Disable,
}

impl Operation {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Deploy => "apply",
            Self::Rollback => "rollback",
            Self::Restart => "restart",
            Self::Start => "start",
            Self::Stop => "stop",
            Self::Enable => "enable",
            Self::Disable => "disable",
        }
    }

    /// `start`, `stop`, `enable`, `disable`: a failure is reported, not
    /// rolled back, and the state is not touched.
    pub(crate) fn is_unit_op(self) -> bool {
        matches!(
            self,
            Self::Start | Self::Stop | Self::Enable | Self::Disable
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ActionKind {
    Backup,
    Build,
    Migrate,
    InstallUnit,
    DaemonReload,
    Restart,
    Health,
    ReloadProxy,
    /// A no-op that only orders: "everything before me succeeded". Used
    /// where many actions wait for many others, so a fleet of N services
    /// has O(N) edges instead of O(N²).
    Barrier,
    /// Stops a unit (and, undoing a first deploy, removes `current`).
    Stop,
    /// Puts a saved unit file back, as it was before an apply.
    RestoreUnit,
    /// Removes a unit file an apply installed where there was none.
    RemoveUnit,
    /// Starts a unit (`moorline start`).
    Start,
    /// Enables units (`moorline enable`).
    Enable,
    /// Disables units (`moorline disable`).
    Disable,
    /// Blue/green: starts the new release in the slot the proxy does not
    /// name (or finds it running there already).
    SlotStart,
    /// Blue/green: the new slot's readiness, on its own port.
    SlotReady,
    /// Blue/green: the upstream file names the new slot; the proxy is
    /// checked and reloaded gracefully.
    SwitchUpstream,
    /// Blue/green: the old slot finishes the requests it has.
    Drain,
    /// Blue/green: stops the slot the proxy no longer names.
    SlotStop,
}

impl ActionKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Backup => "backup",
            Self::Build => "build",
            Self::Migrate => "migrate",
            Self::InstallUnit => "install-unit",
            Self::DaemonReload => "daemon-reload",
            Self::Restart => "restart",
            Self::Health => "health",
            Self::ReloadProxy => "reload-proxy",
            Self::Barrier => "barrier",
            Self::Stop => "stop",
            Self::RestoreUnit => "restore-unit",
            Self::RemoveUnit => "remove-unit",
            Self::Start => "start",
            Self::Enable => "enable",
            Self::Disable => "disable",
            Self::SlotStart => "slot-start",
            Self::SlotReady => "slot-ready",
            Self::SwitchUpstream => "switch-upstream",
            Self::Drain => "drain",
            Self::SlotStop => "slot-stop",
        }
    }

    /// Whether the action changes what is live (as opposed to preparing).
    pub(crate) fn is_live(self) -> bool {
        matches!(
            self,
            Self::InstallUnit
                | Self::DaemonReload
                | Self::Restart
                | Self::ReloadProxy
                | Self::Stop
                | Self::RestoreUnit
                | Self::RemoveUnit
                | Self::Start
                | Self::Enable
                | Self::Disable
                | Self::SlotStart
                | Self::SwitchUpstream
                | Self::SlotStop
        )
    }
}

/// A command an action runs: its argv and how long it may take (filled in
/// by the planner from the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Command {
    pub argv: Vec<String>,
    pub(crate) timeout_secs: u64,
}

/// Where the text of an installed unit file comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UnitSource {
    /// Rendered from the service's `unit` block.
    Config,
    /// A file saved before an earlier apply replaced it (a rollback).
    Saved(String),
}

/// What an action does, with exactly the fields its kind needs; the
/// planner fills every one (defaults included), the executor reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// The configured backup; `command` as written (`{backup}` and
    /// `{root}` are resolved when it runs).
    Backup {
        command: Command,
    },
    /// Export into `release` (a directory), provide dependencies, run
    /// `command` if the runtime has one; or, with `artifact`, install that
    /// artifact (its id, `sha256:...`) as `release` instead: nothing is
    /// built on the host.
    Build {
        release: String,
        command: Option<Command>,
        artifact: Option<String>,
    },
    /// Run `command` in `release`.
    Migrate {
        release: String,
        command: Command,
    },
    /// Save the installed unit file (if any) and write the new one.
    InstallUnit {
        unit: String,
        source: UnitSource,
    },
    /// Enable `enable` (the units just installed) and reload the manager;
    /// with none, reload only.
    DaemonReload {
        enable: Vec<String>,
    },
    /// Switch `current` to `release` (a release directory) if given, then
    /// restart `unit`.
    Restart {
        unit: String,
        release: Option<String>,
        settle: Settle,
    },
    /// Wait until `check` passes, within `timeout_secs`.
    Health {
        unit: String,
        check: Check,
        timeout_secs: u64,
    },
    /// Run `check` if any, then reload `unit`.
    ReloadProxy {
        unit: String,
        check: Option<Command>,
    },
    Barrier,
    /// Stop `unit`; then remove the `current` link `unlink`, if given
    /// (undoing a first deploy: no release is live any more).
    Stop {
        unit: String,
        unlink: Option<String>,
    },
    /// Write the saved file `saved` back as `unit`'s file.
    RestoreUnit {
        unit: String,
        saved: String,
    },
    /// Remove `unit`'s file (an apply installed it where there was none).
    RemoveUnit {
        unit: String,
    },
    /// Start `unit`.
    Start {
        unit: String,
        settle: Settle,
    },
    /// Enable `units`.
    Enable {
        units: Vec<String>,
    },
    /// Disable `units`.
    Disable {
        units: Vec<String>,
    },
    /// Blue/green, for the service of the action: the new slot is the one
    /// of `slots` that the upstream file `upstream` does not name; point
    /// its link at `release` (the live release when `None`) and restart
    /// instance `unit` of it, unless it already runs that release. The
    /// slot chosen is recorded, so the steps after it (and a resume) use
    /// the same one.
    SlotStart {
        unit: String,
        slots: [u16; 2],
        upstream: String,
        release: Option<String>,
    },
    /// Poll `url` (`{slot}` is the new slot's port) until it answers 2xx,
    /// within `timeout_secs`, the new slot's unit staying up.
    SlotReady {
        unit: String,
        slots: [u16; 2],
        url: String,
        timeout_secs: u64,
    },
    /// Write the upstream file `upstream` naming the new slot (atomically),
    /// run `check`, and reload the proxy `unit` (also when the file named
    /// it already: a run killed before its reload is resumed); a failed
    /// check puts the previous file back.
    SwitchUpstream {
        unit: String,
        slots: [u16; 2],
        upstream: String,
        check: Option<Command>,
    },
    /// Wait `secs` for the old slot to finish its requests (nothing when
    /// only one slot runs).
    Drain {
        unit: String,
        secs: u64,
    },
    /// Stop the slots of `unit` that the upstream file `upstream` does not
    /// name (every slot when `None`); then remove the `current` link
    /// `unlink`, if given.
    SlotStop {
        unit: String,
        slots: [u16; 2],
        upstream: Option<String>,
        unlink: Option<String>,
    },
}

impl Step {
    pub(crate) fn kind(&self) -> ActionKind {
        match self {
            Self::Backup { .. } => ActionKind::Backup,
            Self::Build { .. } => ActionKind::Build,
            Self::Migrate { .. } => ActionKind::Migrate,
            Self::InstallUnit { .. } => ActionKind::InstallUnit,
            Self::DaemonReload { .. } => ActionKind::DaemonReload,
            Self::Restart { .. } => ActionKind::Restart,
            Self::Health { .. } => ActionKind::Health,
            Self::ReloadProxy { .. } => ActionKind::ReloadProxy,
            Self::Barrier => ActionKind::Barrier,
            Self::Stop { .. } => ActionKind::Stop,
            Self::RestoreUnit { .. } => ActionKind::RestoreUnit,
            Self::RemoveUnit { .. } => ActionKind::RemoveUnit,
            Self::Start { .. } => ActionKind::Start,
            Self::Enable { .. } => ActionKind::Enable,
            Self::Disable { .. } => ActionKind::Disable,
            Self::SlotStart { .. } => ActionKind::SlotStart,
            Self::SlotReady { .. } => ActionKind::SlotReady,
            Self::SwitchUpstream { .. } => ActionKind::SwitchUpstream,
            Self::Drain { .. } => ActionKind::Drain,
            Self::SlotStop { .. } => ActionKind::SlotStop,
        }
    }

    /// The one systemd unit the action acts on, if it acts on one.
    pub(crate) fn unit(&self) -> Option<&str> {
        match self {
            Self::InstallUnit { unit, .. }
            | Self::Restart { unit, .. }
            | Self::Health { unit, .. }
            | Self::ReloadProxy { unit, .. }
            | Self::Stop { unit, .. }
            | Self::RestoreUnit { unit, .. }
            | Self::RemoveUnit { unit }
            | Self::Start { unit, .. }
            | Self::SlotStart { unit, .. }
            | Self::SlotReady { unit, .. }
            | Self::SwitchUpstream { unit, .. }
            | Self::Drain { unit, .. }
            | Self::SlotStop { unit, .. } => Some(unit),
            _ => None,
        }
    }
}

/// What a `health` step waits for (the service's `ready`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Check {
    /// `GET url` answers 2xx.
    Http { url: String },
    /// `address` (`127.0.0.1:PORT`) accepts a TCP connection.
    Tcp { address: String },
    /// `argv` exits 0.
    Exec { argv: Vec<String> },
    /// `Type=notify`: the restart job ended at READY=1; the unit must then
    /// stay up for the settle window.
    Notify,
    /// No check: the unit stays up for the settle window.
    Stable,
}

/// A `health` action's `ready` on the wire: absent for HTTP (plans written
/// before other kinds existed read as HTTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum WireReady {
    Tcp,
    Exec,
    Notify,
    None,
}

/// How a restart or start is confirmed before its action ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum Settle {
    /// The service's readiness probe (`health:S`) follows and holds the
    /// unit to the settle window while it polls: the action ends when the
    /// job completes and the unit is active, so a settle window never
    /// keeps another restart waiting.
    Probe,
    /// No probe follows (a phase's infrastructure unit): the action itself
    /// waits until the unit has stayed active for the settle window.
    Window,
}

/// One node of the plan's graph: what every action has, and its [`Step`].
/// Its JSON form is the flat object of docs/plan-format.md (`kind` and the
/// optional fields `command`, `dir`, `unit`, `units`, `url`,
/// `timeout_secs`); reading one checks that its kind has the fields it
/// needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "WireAction", try_from = "WireAction")]
pub struct Action {
    pub(crate) id: String,
    pub(crate) service: Option<String>,
    pub(crate) phase: Option<String>,
    pub(crate) reason: String,
    pub(crate) after: Vec<String>,
    pub(crate) step: Step,
}

impl Action {
    pub(crate) fn kind(&self) -> ActionKind {
        self.step.kind()
    }
}

/// The JSON form of an [`Action`] (field order and names are the contract).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct WireAction {
    id: String,
    kind: ActionKind,
    service: Option<String>,
    phase: Option<String>,
    reason: String,
    after: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    command: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    unit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    units: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    timeout_secs: Option<u64>,
    /// `restart`/`start`: `"window"` when no readiness probe follows
    /// ([`Settle`]); left out for `"probe"`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    settle: Option<Settle>,
    /// Blue/green steps: the two slot ports.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    slots: Option<[u16; 2]>,
    /// Blue/green steps: the upstream file moorline writes.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    file: Option<String>,
    /// `health`: what it waits for when that is not an HTTP `url`
    /// ([`Check`]).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    ready: Option<WireReady>,
    /// `build`: the artifact installed instead of building.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    artifact: Option<String>,
}

impl From<Action> for WireAction {
    fn from(a: Action) -> Self {
        let kind = a.kind();
        let mut w = WireAction {
            id: a.id,
            kind,
            service: a.service,
            phase: a.phase,
            reason: a.reason,
            after: a.after,
            command: None,
            dir: None,
            unit: None,
            units: None,
            url: None,
            timeout_secs: None,
            settle: None,
            slots: None,
            file: None,
            ready: None,
            artifact: None,
        };
        let mut command = |c: Option<Command>| {
            if let Some(c) = c {
                w.command = Some(c.argv);
                w.timeout_secs = Some(c.timeout_secs);
            }
        };
        match a.step {
            Step::Backup { command: c } => command(Some(c)),
            Step::Build {
                release,
                command: c,
                artifact,
            } => {
                command(c);
                w.dir = Some(release);
                w.artifact = artifact;
            }
            Step::Migrate {
                release,
                command: c,
            } => {
                command(Some(c));
                w.dir = Some(release);
            }
            Step::InstallUnit { unit, source } => {
                w.unit = Some(unit);
                if let UnitSource::Saved(p) = source {
                    w.dir = Some(p);
                }
            }
            Step::DaemonReload { enable } => {
                w.units = (!enable.is_empty()).then_some(enable);
            }
            Step::Restart {
                unit,
                release,
                settle,
            } => {
                w.dir = release;
                w.unit = Some(unit);
                w.settle = (settle == Settle::Window).then_some(settle);
            }
            Step::Health {
                unit,
                check,
                timeout_secs,
            } => {
                w.unit = Some(unit);
                w.timeout_secs = Some(timeout_secs);
                match check {
                    Check::Http { url } => w.url = Some(url),
                    Check::Tcp { address } => {
                        w.ready = Some(WireReady::Tcp);
                        w.url = Some(format!("tcp://{address}"));
                    }
                    Check::Exec { argv } => {
                        w.ready = Some(WireReady::Exec);
                        w.command = Some(argv);
                    }
                    Check::Notify => w.ready = Some(WireReady::Notify),
                    Check::Stable => w.ready = Some(WireReady::None),
                }
            }
            Step::ReloadProxy { unit, check } => {
                command(check);
                w.unit = Some(unit);
            }
            Step::Barrier => {}
            Step::Stop { unit, unlink } => {
                w.dir = unlink;
                w.unit = Some(unit);
            }
            Step::RestoreUnit { unit, saved } => {
                w.dir = Some(saved);
                w.unit = Some(unit);
            }
            Step::RemoveUnit { unit } => w.unit = Some(unit),
            Step::Start { unit, settle } => {
                w.unit = Some(unit);
                w.settle = (settle == Settle::Window).then_some(settle);
            }
            Step::Enable { units } | Step::Disable { units } => w.units = Some(units),
            Step::SlotStart {
                unit,
                slots,
                upstream,
                release,
            } => {
                w.unit = Some(unit);
                w.slots = Some(slots);
                w.file = Some(upstream);
                w.dir = release;
            }
            Step::SlotReady {
                unit,
                slots,
                url,
                timeout_secs,
            } => {
                w.unit = Some(unit);
                w.slots = Some(slots);
                w.url = Some(url);
                w.timeout_secs = Some(timeout_secs);
            }
            Step::SwitchUpstream {
                unit,
                slots,
                upstream,
                check,
            } => {
                command(check);
                w.unit = Some(unit);
                w.slots = Some(slots);
                w.file = Some(upstream);
            }
            Step::Drain { unit, secs } => {
                w.unit = Some(unit);
                w.timeout_secs = Some(secs);
            }
            Step::SlotStop {
                unit,
                slots,
                upstream,
                unlink,
            } => {
                w.unit = Some(unit);
                w.slots = Some(slots);
                w.file = upstream;
                w.dir = unlink;
            }
        }
        w
    }
}

/// Why an action of a plan file cannot be read: a field its kind needs is
/// missing, or two that go together are not both there.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WireError(String);

impl TryFrom<WireAction> for Action {
    type Error = WireError;

    fn try_from(w: WireAction) -> Result<Self, WireError> {
        let kind = w.kind.as_str();
        let need = |v: Option<String>, field: &str| {
            v.ok_or_else(|| WireError(format!("action `{}` ({kind}) has no `{field}`", w.id)))
        };
        let timed = |argv: Option<Vec<String>>, timeout: Option<u64>| match (argv, timeout) {
            (Some(argv), Some(timeout_secs)) => Ok(Some(Command { argv, timeout_secs })),
            (None, None) => Ok(None),
            _ => Err(WireError(format!(
                "action `{}` ({kind}) needs both `command` and `timeout_secs`, or neither",
                w.id
            ))),
        };
        let command = |argv: Option<Vec<String>>, timeout: Option<u64>| {
            timed(argv, timeout)?
                .ok_or_else(|| WireError(format!("action `{}` ({kind}) has no `command`", w.id)))
        };
        let slots = |v: Option<[u16; 2]>| {
            v.ok_or_else(|| WireError(format!("action `{}` ({kind}) has no `slots`", w.id)))
        };
        let secs = |v: Option<u64>| {
            v.ok_or_else(|| WireError(format!("action `{}` ({kind}) has no `timeout_secs`", w.id)))
        };
        // Plans written before `settle` existed: a unit without a service
        // had no probe.
        let settle = w.settle.unwrap_or(if w.service.is_some() {
            Settle::Probe
        } else {
            Settle::Window
        });
        let step = match w.kind {
            ActionKind::Backup => Step::Backup {
                command: command(w.command.clone(), w.timeout_secs)?,
            },
            ActionKind::Build => Step::Build {
                release: need(w.dir.clone(), "dir")?,
                command: timed(w.command.clone(), w.timeout_secs)?,
                artifact: w.artifact.clone(),
            },
            ActionKind::Migrate => Step::Migrate {
                release: need(w.dir.clone(), "dir")?,
                command: command(w.command.clone(), w.timeout_secs)?,
            },
            ActionKind::InstallUnit => Step::InstallUnit {
                unit: need(w.unit.clone(), "unit")?,
                source: w.dir.clone().map_or(UnitSource::Config, UnitSource::Saved),
            },
            ActionKind::DaemonReload => Step::DaemonReload {
                enable: w.units.clone().unwrap_or_default(),
            },
            ActionKind::Restart => Step::Restart {
                unit: need(w.unit.clone(), "unit")?,
                release: w.dir.clone(),
                settle,
            },
            ActionKind::Health => Step::Health {
                unit: need(w.unit.clone(), "unit")?,
                check: match w.ready {
                    None => Check::Http {
                        url: need(w.url.clone(), "url")?,
                    },
                    Some(WireReady::Tcp) => {
                        let url = need(w.url.clone(), "url")?;
                        Check::Tcp {
                            address: url.strip_prefix("tcp://").unwrap_or(&url).to_owned(),
                        }
                    }
                    Some(WireReady::Exec) => Check::Exec {
                        argv: w.command.clone().filter(|c| !c.is_empty()).ok_or_else(|| {
                            WireError(format!("action `{}` ({kind}) has no `command`", w.id))
                        })?,
                    },
                    Some(WireReady::Notify) => Check::Notify,
                    Some(WireReady::None) => Check::Stable,
                },
                timeout_secs: w.timeout_secs.ok_or_else(|| {
                    WireError(format!("action `{}` ({kind}) has no `timeout_secs`", w.id))
                })?,
            },
            ActionKind::ReloadProxy => Step::ReloadProxy {
                unit: need(w.unit.clone(), "unit")?,
                check: timed(w.command.clone(), w.timeout_secs)?,
            },
            ActionKind::Barrier => Step::Barrier,
            ActionKind::Stop => Step::Stop {
                unit: need(w.unit.clone(), "unit")?,
                unlink: w.dir.clone(),
            },
            ActionKind::RestoreUnit => Step::RestoreUnit {
                unit: need(w.unit.clone(), "unit")?,
                saved: need(w.dir.clone(), "dir")?,
            },
            ActionKind::RemoveUnit => Step::RemoveUnit {
                unit: need(w.unit.clone(), "unit")?,
            },
            ActionKind::Start => Step::Start {
                unit: need(w.unit.clone(), "unit")?,
                settle,
            },
            ActionKind::Enable => Step::Enable {
                units: w.units.clone().unwrap_or_default(),
            },
            ActionKind::Disable => Step::Disable {
                units: w.units.clone().unwrap_or_default(),
            },
            ActionKind::SlotStart => Step::SlotStart {
                unit: need(w.unit.clone(), "unit")?,
                slots: slots(w.slots)?,
                upstream: need(w.file.clone(), "file")?,
                release: w.dir.clone(),
            },
            ActionKind::SlotReady => Step::SlotReady {
                unit: need(w.unit.clone(), "unit")?,
                slots: slots(w.slots)?,
                url: need(w.url.clone(), "url")?,
                timeout_secs: secs(w.timeout_secs)?,
            },
            ActionKind::SwitchUpstream => Step::SwitchUpstream {
                unit: need(w.unit.clone(), "unit")?,
                slots: slots(w.slots)?,
                upstream: need(w.file.clone(), "file")?,
                check: timed(w.command.clone(), w.timeout_secs)?,
            },
            ActionKind::Drain => Step::Drain {
                unit: need(w.unit.clone(), "unit")?,
                secs: secs(w.timeout_secs)?,
            },
            ActionKind::SlotStop => Step::SlotStop {
                unit: need(w.unit.clone(), "unit")?,
                slots: slots(w.slots)?,
                upstream: w.file.clone(),
                unlink: w.dir.clone(),
            },
        };
        Ok(Action {
            id: w.id,
            service: w.service,
            phase: w.phase,
            reason: w.reason,
            after: w.after,
            step,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum ServiceChange {
    /// Nothing happens to it.
    Unchanged,
    /// A new release is built and switched to.
    Deploy,
    /// Same release, restarted (its unit file changed).
    Restart,
    /// Stopped: a rollback of its first deploy (no release is live after
    /// it), or `moorline stop`.
    Stop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum UnitChange {
    /// Managed by hand (no `unit` block).
    Unmanaged,
    Unchanged,
    New,
    Changed,
    /// A unit file moorline did not install is where this unit goes: not
    /// replaced (see `conflicts`) until adopted.
    Conflict,
    /// A unit file moorline did not install is replaced, as asked with
    /// `--adopt`; from then on moorline owns it.
    Adopt,
}

impl UnitChange {
    /// Whether the plan writes the unit file.
    pub(crate) fn installs(self) -> bool {
        matches!(self, Self::New | Self::Changed | Self::Adopt)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ServicePlan {
    pub(crate) name: String,
    pub(crate) phase: String,
    pub(crate) unit: String,
    pub(crate) change: ServiceChange,
    pub(crate) migrate: bool,
    pub(crate) unit_change: UnitChange,
    /// Live revision before / after.
    pub(crate) from_revision: Option<String>,
    pub(crate) to_revision: Option<String>,
    pub(crate) reasons: Vec<String>,
    /// The first few changed paths that affect it, and how many in all.
    pub(crate) changed_paths: Vec<String>,
    pub(crate) changed_count: usize,
    /// Unified diff of the unit file, secrets redacted.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(crate) unit_diff: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RollbackKind {
    /// Nothing would change: nothing to roll back.
    Nothing,
    /// No previous release exists (first deploy).
    NoPrevious,
    /// Switching releases back is enough.
    CodeOnly,
    /// Migrations run: the database must be restored from the backup.
    NeedsDatabase,
    /// Migrations run and no backup is configured: not reversible by moorline.
    Irreversible,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RollbackPlan {
    pub(crate) kind: RollbackKind,
    pub(crate) services: Vec<String>,
    pub(crate) summary: String,
}

/// A plan that builds nothing (a rollback, a restart, start/stop/enable/
/// disable): its inputs are the configuration and the state only, and its
/// fingerprint covers the operation, those inputs, the actions and `salt`
/// (a field that tells otherwise equal plans apart, such as the apply a
/// rollback undoes).
pub(crate) struct Unbuilt<'a> {
    pub(crate) operation: Operation,
    pub(crate) project: String,
    pub(crate) environment: String,
    pub(crate) branch: String,
    pub(crate) from: Option<Rev>,
    pub(crate) to: Rev,
    pub(crate) config_sha256: String,
    pub(crate) state_sha256: Option<String>,
    pub(crate) services: Vec<ServicePlan>,
    pub(crate) actions: Vec<Action>,
    pub(crate) rollback: RollbackPlan,
    pub(crate) warnings: Vec<String>,
    pub(crate) salt: Option<(&'a str, &'a str)>,
    /// The environment's `pass-env`.
    pub(crate) pass_env: Vec<String>,
}

impl Unbuilt<'_> {
    pub(crate) fn plan(self) -> Plan {
        let inputs = PlanInputs {
            moorline_version: env!("CARGO_PKG_VERSION").to_owned(),
            config_sha256: self.config_sha256,
            state_sha256: self.state_sha256,
            units_source: "none".to_owned(),
            units: BTreeMap::new(),
            allow_non_ancestor: false,
            adopt: Vec::new(),
            pending_migrations: Vec::new(),
            skip_promotion_check: false,
            artifacts: BTreeMap::new(),
        };
        let mut fp = serde_json::json!({
            "operation": self.operation,
            "inputs": &inputs,
            "actions": &self.actions,
        });
        if let (Some((key, value)), Some(map)) = (self.salt, fp.as_object_mut()) {
            map.insert(key.to_owned(), value.into());
        }
        let fingerprint = format!(
            "sha256:{}",
            crate::files::sha256_hex(serde_json::to_string(&fp).unwrap_or_default().as_bytes())
        );
        Plan {
            format_version: FORMAT_VERSION,
            operation: self.operation,
            project: self.project,
            environment: self.environment,
            branch: self.branch,
            from: self.from,
            to: self.to,
            first_deploy: false,
            non_ancestor: false,
            fingerprint,
            inputs,
            changed_paths: 0,
            pass_env: self.pass_env,
            services: self.services,
            actions: self.actions,
            rollback: self.rollback,
            warnings: self.warnings,
            notes: Vec::new(),
            conflicts: Vec::new(),
            uncommitted: Vec::new(),
            promotion: None,
            failed_here: None,
        }
    }
}

impl Plan {
    /// Whether applying the plan would do anything.
    pub(crate) fn has_changes(&self) -> bool {
        !self.actions.is_empty()
    }

    /// A deploy plan that changes no service toward a revision that is not
    /// the deployed one (a revert, a commit that touches no service):
    /// `apply` records `to` as deployed and restarts nothing.
    pub(crate) fn records_only(&self) -> bool {
        self.operation == Operation::Deploy
            && !self.has_changes()
            && self.from.as_ref().is_some_and(|f| f.sha != self.to.sha)
    }

    /// Whether unit files moorline did not install stand in its way.
    pub(crate) fn has_conflicts(&self) -> bool {
        !self.conflicts.is_empty()
    }

    pub(crate) fn action(&self, id: &str) -> Option<&Action> {
        self.actions.iter().find(|a| a.id == id)
    }
}

/// What a host's plan does differently from a plan reviewed elsewhere (for
/// example in a pull request, where the host's state and unit files were
/// not visible): the actions and what happens to each service, not the
/// inputs or the wording of reasons. Empty when they do the same.
///
/// With `same_target` false the two plans may deploy different commits (a
/// pull request's test merge and the merge commit that was pushed): the
/// reviewed commit is read as this one wherever it appears (release
/// directories, commands), and only what happens is compared.
pub(crate) fn review_differences(reviewed: &Plan, here: &Plan, same_target: bool) -> Vec<String> {
    let mut out = Vec::new();
    if reviewed.environment != here.environment || reviewed.project != here.project {
        out.push(format!(
            "it is for {}/{}, this is {}/{}",
            reviewed.project, reviewed.environment, here.project, here.environment
        ));
    }
    if same_target && reviewed.to.sha != here.to.sha {
        out.push(format!(
            "it deploys {}, this plan {}",
            short(&reviewed.to.sha),
            short(&here.to.sha)
        ));
    }
    let theirs_sha = reviewed.to.sha.as_str();
    let norm = |s: &str| {
        if theirs_sha.is_empty() {
            s.to_owned()
        } else {
            s.replace(theirs_sha, &here.to.sha)
        }
    };
    let key = |a: &Action, normalise: bool| {
        let f = |s: &str| if normalise { norm(s) } else { s.to_owned() };
        let w = WireAction::from(a.clone());
        (
            w.kind,
            w.after,
            w.command
                .as_ref()
                .map(|c| c.iter().map(|w| f(w)).collect::<Vec<_>>()),
            w.dir.as_deref().map(f),
            w.unit,
            w.units,
            w.url,
        )
    };
    let theirs: BTreeMap<&str, &Action> = reviewed
        .actions
        .iter()
        .map(|a| (a.id.as_str(), a))
        .collect();
    let ours: BTreeMap<&str, &Action> = here.actions.iter().map(|a| (a.id.as_str(), a)).collect();
    for (id, a) in &ours {
        match theirs.get(id) {
            None => out.push(format!("this host also needs `{id}`: {}", a.reason)),
            Some(b) if key(a, false) != key(b, true) => {
                out.push(format!("`{id}` differs on this host"));
            }
            Some(_) => {}
        }
    }
    for id in theirs.keys() {
        if !ours.contains_key(id) {
            out.push(format!("the reviewed `{id}` is not needed on this host"));
        }
    }
    for s in &here.services {
        // An adoption the reviewed plan asked for installs a unit there
        // (where no hand-written file was to be seen) and adopts one here.
        let adopted = |r: UnitChange| {
            s.unit_change == UnitChange::Adopt
                && reviewed.inputs.adopt.contains(&s.name)
                && r.installs()
        };
        if let Some(r) = reviewed.services.iter().find(|r| r.name == s.name)
            && ((r.change, r.migrate) != (s.change, s.migrate)
                || (r.unit_change != s.unit_change && !adopted(r.unit_change)))
        {
            out.push(format!(
                "service `{}` changes differently on this host",
                s.name
            ));
        }
    }
    out
}

/// The `format_version` of a plan file read as JSON, shown, when it is not
/// the one this moorline writes (missing, another number, not a number);
/// `None` when it is ours. Checked before the rest of the file is read.
pub(crate) fn foreign_format_version(plan: &serde_json::Value) -> Option<String> {
    crate::json_file::foreign_version(plan, FORMAT_VERSION)
}

/// A deploy plan's fingerprint: SHA-256 over the canonical JSON of what it
/// was computed from (the revisions and [`PlanInputs`]).
pub(crate) fn fingerprint(
    project: &str,
    environment: &str,
    from: Option<&str>,
    to: &str,
    inputs: &PlanInputs,
) -> String {
    #[derive(Serialize)]
    struct Fp<'a> {
        format_version: u32,
        project: &'a str,
        environment: &'a str,
        from: Option<&'a str>,
        to: &'a str,
        inputs: &'a PlanInputs,
    }
    let fp = Fp {
        format_version: FORMAT_VERSION,
        project,
        environment,
        from,
        to,
        inputs,
    };
    let bytes = serde_json::to_vec(&fp).unwrap_or_default();
    format!("sha256:{}", crate::files::sha256_hex(&bytes))
}

/// Makes each `build` of a service in `artifacts` (service → artifact id)
/// install that artifact instead of building, records the map in the
/// inputs and fingerprints the plan again. The one way a plan gets
/// artifacts: the host's planner (`--artifact`) and the fleet controller
/// (which annotates the plans its hosts made) call it, so both arrive at
/// the same fingerprint. Services the plan does not build are left out of
/// the inputs.
pub fn with_artifacts(plan: &mut Plan, artifacts: &BTreeMap<String, String>) {
    let mut used = BTreeMap::new();
    for a in &mut plan.actions {
        if let (Some(service), Step::Build { artifact, .. }) = (&a.service, &mut a.step)
            && let Some(id) = artifacts.get(service)
        {
            *artifact = Some(id.clone());
            used.insert(service.clone(), id.clone());
            a.reason = artifact_reason(&a.reason, id);
        }
    }
    plan.inputs.artifacts = used;
    plan.fingerprint = fingerprint(
        &plan.project,
        &plan.environment,
        plan.from.as_ref().map(|r| r.sha.as_str()),
        &plan.to.sha,
        &plan.inputs,
    );
}

/// What a build that installs artifact `id` says (its `reason` as
/// planned, `planned`, without the dependency note: nothing runs): the
/// artifact first.
fn artifact_reason(planned: &str, id: &str) -> String {
    const VERIFIED: &str = " (built once; verified before unpacking): ";
    let base = planned
        .strip_prefix("install artifact ")
        .and_then(|r| r.split_once(VERIFIED))
        .map_or(planned, |(_, r)| r);
    let base = base.rfind("; dependencies ").map_or(base, |i| &base[..i]);
    format!(
        "install artifact {}…{VERIFIED}{base}",
        id.get(..19).unwrap_or(id)
    )
}

/// Shortens a SHA for display.
pub(crate) fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifacts_replace_builds_and_move_the_fingerprint() {
        let mut p = plan("c1", &["api"]);
        p.actions.push(Action {
            id: "build:api".into(),
            service: Some("api".into()),
            phase: None,
            reason: String::new(),
            after: Vec::new(),
            step: Step::Build {
                release: "/opt/x/api/releases/c1".into(),
                command: None,
                artifact: None,
            },
        });
        let before = p.fingerprint.clone();
        let ids: BTreeMap<String, String> = [
            ("api".to_owned(), format!("sha256:{}", "a".repeat(64))),
            ("web".to_owned(), format!("sha256:{}", "b".repeat(64))),
        ]
        .into();
        with_artifacts(&mut p, &ids);
        assert_ne!(
            p.fingerprint, before,
            "the artifact is part of what is reviewed"
        );
        assert_eq!(
            p.inputs.artifacts.keys().collect::<Vec<_>>(),
            ["api"],
            "only services the plan builds"
        );
        let Step::Build { artifact, .. } = &p.actions[1].step else {
            panic!()
        };
        assert_eq!(artifact.as_deref(), Some(ids["api"].as_str()));
        let wire: Action = WireAction::from(p.actions[1].clone()).try_into().unwrap();
        assert_eq!(wire, p.actions[1], "the wire form keeps it");
        let again = p.fingerprint.clone();
        let reason = p.actions[1].reason.clone();
        with_artifacts(&mut p, &ids);
        assert_eq!(p.fingerprint, again, "the same map, the same fingerprint");
        assert_eq!(p.actions[1].reason, reason, "said once");
        assert_eq!(
            artifact_reason(
                "new release c1 of api: 1 path changed; dependencies reused (package.json unchanged)",
                &ids["api"]
            ),
            "install artifact sha256:aaaaaaaaaaaa… (built once; verified before unpacking): new release c1 of api: 1 path changed"
        );
    }

    fn plan(sha: &str, services: &[&str]) -> Plan {
        let rev = Rev {
            spec: "x".into(),
            sha: sha.into(),
            summary: String::new(),
        };
        Plan {
            format_version: FORMAT_VERSION,
            operation: Operation::Deploy,
            project: "p".into(),
            environment: "e".into(),
            branch: "main".into(),
            from: None,
            to: rev,
            first_deploy: false,
            non_ancestor: false,
            fingerprint: String::new(),
            inputs: PlanInputs {
                moorline_version: String::new(),
                config_sha256: String::new(),
                state_sha256: None,
                units_source: String::new(),
                units: BTreeMap::new(),
                allow_non_ancestor: false,
                adopt: Vec::new(),
                pending_migrations: Vec::new(),
                skip_promotion_check: false,
                artifacts: BTreeMap::new(),
            },
            changed_paths: 0,
            pass_env: Vec::new(),
            services: Vec::new(),
            actions: services
                .iter()
                .map(|s| Action {
                    id: format!("restart:{s}"),
                    service: Some((*s).into()),
                    phase: None,
                    reason: format!("switch to {sha}"),
                    after: Vec::new(),
                    step: Step::Restart {
                        unit: format!("p-{s}.service"),
                        release: Some(format!("/opt/x/{s}/releases/{sha}")),
                        settle: Settle::Probe,
                    },
                })
                .collect(),
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
        }
    }

    /// Actions read from JSON carry the fields their kind needs, or are
    /// refused naming what is missing; written back they are the same JSON.
    #[test]
    fn actions_are_typed_by_kind() {
        let health = serde_json::json!({
            "id": "health:api", "kind": "health", "service": "api", "phase": "core",
            "reason": "r", "after": ["restart:api"], "unit": "p-api.service",
            "url": "http://127.0.0.1:1/ready", "timeout_secs": 5
        });
        let a: Action = serde_json::from_value(health.clone()).unwrap();
        assert_eq!(
            a.step,
            Step::Health {
                unit: "p-api.service".into(),
                check: Check::Http {
                    url: "http://127.0.0.1:1/ready".into()
                },
                timeout_secs: 5
            }
        );
        assert_eq!(serde_json::to_value(&a).unwrap(), health);
        // The other readiness kinds round-trip through `ready`.
        let with = |extra: serde_json::Value| {
            let mut v = health.clone();
            let m = v.as_object_mut().unwrap();
            m.remove("url");
            for (k, x) in extra.as_object().unwrap() {
                m.insert(k.clone(), x.clone());
            }
            v
        };
        for (extra, check) in [
            (
                serde_json::json!({"ready": "tcp", "url": "tcp://127.0.0.1:7"}),
                Check::Tcp {
                    address: "127.0.0.1:7".into(),
                },
            ),
            (
                serde_json::json!({"ready": "exec", "command": ["pg_isready", "-q"]}),
                Check::Exec {
                    argv: vec!["pg_isready".into(), "-q".into()],
                },
            ),
            (serde_json::json!({"ready": "notify"}), Check::Notify),
            (serde_json::json!({"ready": "none"}), Check::Stable),
        ] {
            let v = with(extra);
            let a: Action = serde_json::from_value(v.clone()).unwrap();
            assert!(
                matches!(&a.step, Step::Health { check: c, .. } if *c == check),
                "{v}"
            );
            assert_eq!(serde_json::to_value(&a).unwrap(), v);
        }
        let err = serde_json::from_value::<Action>(with(serde_json::json!({"ready": "exec"})))
            .unwrap_err();
        assert!(err.to_string().contains("has no `command`"), "{err}");
        let mut no_url = health.clone();
        no_url.as_object_mut().unwrap().remove("url");
        let err = serde_json::from_value::<Action>(no_url).unwrap_err();
        assert!(err.to_string().contains("has no `url`"), "{err}");
        let half = serde_json::json!({
            "id": "build:api", "kind": "build", "service": "api", "phase": "core",
            "reason": "r", "after": [], "dir": "/r", "command": ["make"]
        });
        let err = serde_json::from_value::<Action>(half).unwrap_err();
        assert!(err.to_string().contains("`timeout_secs`"), "{err}");
    }

    #[test]
    fn only_this_format_version_is_read() {
        let ours = serde_json::json!({"format_version": FORMAT_VERSION});
        assert_eq!(foreign_format_version(&ours), None);
        for (v, shown) in [
            (serde_json::json!({"format_version": 99}), "99"),
            (serde_json::json!({"format_version": "1"}), "\"1\""),
            (serde_json::json!({"format_version": 1.5}), "1.5"),
            (serde_json::json!({"format_version": null}), "null"),
            (serde_json::json!({}), "(none)"),
            (serde_json::json!([1]), "(none)"),
        ] {
            assert_eq!(foreign_format_version(&v).as_deref(), Some(shown), "{v}");
        }
        assert_eq!(clip(&"x".repeat(100)).chars().count(), 41);
    }

    #[test]
    fn an_adoption_must_be_in_the_reviewed_plan() {
        let with_unit = |change: UnitChange, adopt: &[&str]| {
            let mut p = plan("aaaa", &["backend"]);
            p.services.push(ServicePlan {
                name: "backend".into(),
                phase: "core".into(),
                unit: "p-backend.service".into(),
                change: ServiceChange::Restart,
                migrate: false,
                unit_change: change,
                from_revision: None,
                to_revision: None,
                reasons: Vec::new(),
                changed_paths: Vec::new(),
                changed_count: 0,
                unit_diff: None,
            });
            p.inputs.adopt = adopt.iter().map(|s| (*s).to_owned()).collect();
            p
        };
        // Reviewed where no hand-written file was (a new unit), adopted here.
        let here = with_unit(UnitChange::Adopt, &["backend"]);
        let reviewed = with_unit(UnitChange::New, &["backend"]);
        assert!(review_differences(&reviewed, &here, true).is_empty());
        // The reviewed plan did not ask for it: a difference.
        let unasked = with_unit(UnitChange::New, &[]);
        assert_eq!(
            review_differences(&unasked, &here, true),
            ["service `backend` changes differently on this host"]
        );
    }

    #[test]
    fn reviewed_plans_compare_by_what_they_do() {
        let reviewed = plan("aaaa", &["backend"]);
        // Same actions, same commit.
        assert!(review_differences(&reviewed, &plan("aaaa", &["backend"]), true).is_empty());
        // Another commit: a difference, unless the target was given explicitly.
        assert_eq!(
            review_differences(&reviewed, &plan("bbbb", &["backend"]), true).len(),
            1
        );
        assert!(review_differences(&reviewed, &plan("bbbb", &["backend"]), false).is_empty());
        // More or fewer actions are differences either way.
        let more = review_differences(&reviewed, &plan("bbbb", &["backend", "coupon"]), false);
        assert_eq!(
            more,
            ["this host also needs `restart:coupon`: switch to bbbb"]
        );
        let fewer = review_differences(&plan("aaaa", &["backend", "coupon"]), &reviewed, true);
        assert_eq!(
            fewer,
            ["the reviewed `restart:coupon` is not needed on this host"]
        );
    }
}

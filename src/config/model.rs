//! The checked configuration: every reference resolved, every default
//! applied, no `Option` where a default exists. Built only by `validate`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Serialize;

/// Where a service's source lives when `path` is not given.
pub(crate) const DEFAULT_SERVICE_PATH: &str = "services/{service}";
/// The `path` of a service whose source is the whole repository.
pub(crate) const ROOT_PATH: &str = ".";
/// Default unit name template.
pub(crate) const DEFAULT_UNIT_NAME: &str = "{service}.service";
/// Releases kept per service when `keep-releases` is not given.
pub(crate) const DEFAULT_KEEP_RELEASES: u32 = 5;
/// Default liveness path (`GET http://127.0.0.1:{port}/health`).
pub(crate) const DEFAULT_HEALTH: &str = "/health";
/// Default readiness path.
pub(crate) const DEFAULT_READY: &str = "/health/ready";
/// Default metrics path.
pub(crate) const DEFAULT_METRICS: &str = "/health/metrics";
/// How long a service may take to answer ready after its restart.
pub(crate) const DEFAULT_READY_TIMEOUT: Duration = Duration::from_mins(1);
/// How long a build, migration, backup or check command may run.
pub(crate) const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_mins(15);
/// The longest duration a configuration may give (a command's timeout, a
/// readiness timeout, a pause between batches): a week. Longer is a slip
/// (a unit or a few digits too many), and far longer overflows the
/// arithmetic of deadlines.
pub(crate) const MAX_DURATION: Duration = Duration::from_hours(7 * 24);
/// Backups kept when a `backup` block has no `keep`.
pub(crate) const DEFAULT_BACKUP_KEEP: u32 = 30;

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub project: Project,
    /// In declaration order.
    pub environments: Vec<Environment>,
    /// In declaration order, which is the start order.
    pub phases: Vec<Phase>,
    pub runtimes: BTreeMap<String, Runtime>,
    /// In declaration order.
    pub services: Vec<Service>,
    pub proxy: Option<Proxy>,
    /// Index of each service in `services`, for `service()`.
    #[serde(skip)]
    pub(crate) service_index: HashMap<String, usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Project {
    pub name: String,
    pub(crate) unit_name: String,
    pub keep_releases: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Environment {
    pub name: String,
    pub branch: String,
    pub root: String,
    pub url: Option<String>,
    /// Where unit files are installed; `None`: the default of the systemd
    /// instance moorline talks to.
    pub unit_dir: Option<String>,
    /// `port-offset`: added to every service's port in this environment
    /// (0 when absent), so that two environments on one host listen on
    /// different ports. Applied by [`Config::for_environment`].
    pub port_offset: u16,
    /// `apply` in this environment always asks, even with `--yes`, unless
    /// `--approve` names it.
    pub approval: bool,
    /// `promote-from`: a revision is applied here only after it ran
    /// healthy in that environment (on the same host).
    pub promote_from: Option<PromoteFrom>,
    pub backup: Option<Backup>,
    /// Environment variables for every command run in this environment.
    pub env: BTreeMap<String, EnvValue>,
    pub env_files: Vec<String>,
    /// `pass-env`: names of variables that commands receive from
    /// moorline's own environment (when set there), besides the minimal
    /// environment every command gets ([`crate::process::command_env`]).
    /// In the order written; names are checked and unique.
    pub pass_env: Vec<String>,
    /// Fleet mode: the hosts this environment deploys to over ssh. Empty:
    /// the local host, as without fleet mode.
    pub hosts: Vec<Host>,
    /// How a fleet apply rolls out across `hosts` (defaults when absent).
    pub rollout: Rollout,
    /// Commands run on a named host before and after each batch.
    pub drain: Vec<DrainHook>,
}

/// One host of a fleet environment, reached with the system's `ssh`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Host {
    /// The name plans, journals and output use (unique in the environment).
    pub name: String,
    /// What `ssh` connects to: an address or a `Host` of the ssh config.
    pub address: String,
    pub user: Option<String>,
    pub port: Option<u16>,
    /// Roles: the host runs the services whose `role` is one of these
    /// (every service when empty; a service without a role runs everywhere).
    pub roles: Vec<String>,
}

/// The size of one rollout batch: how many hosts it takes (not a running
/// total).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BatchSize {
    /// This many hosts (1 up to the number of hosts).
    Count(u32),
    /// This percentage (1..=100) of all the environment's hosts (the
    /// canary included), rounded up: `25%` of 5 hosts is 2 hosts, and
    /// `100%` is every host left.
    Percent(u32),
}

impl BatchSize {
    /// The number of hosts a batch of this size takes in a fleet of
    /// `fleet` hosts, before it is cut to the hosts left: at least 1.
    pub(crate) fn hosts(self, fleet: usize) -> usize {
        let n = match self {
            Self::Count(c) => usize::try_from(c).unwrap_or(usize::MAX),
            Self::Percent(p) => {
                let p = usize::try_from(p.min(100)).unwrap_or(100);
                fleet.saturating_mul(p).div_ceil(100)
            }
        };
        n.max(1)
    }
}

/// An environment's `rollout` block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rollout {
    /// Hosts applied first, alone, before any batch (0: no canary).
    pub canary: u32,
    /// The size of each batch after the canary, in order; once the list
    /// is used up the last size repeats until every host has had its turn
    /// (see [`Rollout::steps`]). Default: `100%` (everything after the
    /// canary at once).
    pub batches: Vec<BatchSize>,
    /// Host failures tolerated over the whole rollout (unreachable hosts
    /// included) before it stops and rolls back. Default 0.
    pub max_fail: u32,
    /// Wait between batches.
    #[serde(with = "secs")]
    pub pause: Duration,
    /// Hosts talked to at the same time (plan gathering, status, batches).
    pub connections: u32,
}

impl Rollout {
    /// How many hosts each step of a rollout over `hosts` hosts takes, in
    /// order: the canary first (when `canary` > 0), then one step per
    /// batch. Each batch takes [`BatchSize::hosts`] hosts; after the listed
    /// batches the last size repeats, and the last step is cut to the
    /// hosts left. The steps add up to `hosts`; hosts are taken in their
    /// declaration order. With 5 hosts, canary 1 and batches `"25%"`
    /// `"100%"`: `[1, 2, 2]`; with batches `1` `2`: `[1, 1, 2, 1]`.
    pub fn steps(&self, hosts: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut left = hosts;
        let canary = usize::try_from(self.canary).unwrap_or(usize::MAX).min(left);
        if canary > 0 {
            out.push(canary);
            left -= canary;
        }
        let last = self
            .batches
            .last()
            .copied()
            .unwrap_or(BatchSize::Percent(100));
        let mut listed = self.batches.iter().copied();
        while left > 0 {
            let size = listed.next().unwrap_or(last).hosts(hosts).min(left);
            out.push(size);
            left -= size;
        }
        out
    }
}

impl Default for Rollout {
    fn default() -> Self {
        Self {
            canary: 0,
            batches: vec![BatchSize::Percent(100)],
            max_fail: 0,
            pause: Duration::ZERO,
            connections: 8,
        }
    }
}

/// When a drain hook runs, relative to each batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DrainWhen {
    /// Before a batch's hosts start (take them out of the load balancer).
    Before,
    /// After a batch's hosts are ready (put them back).
    After,
}

/// A command run on a named host of the fleet around each batch. `{hosts}`
/// in its argv is replaced by the batch's host names, comma-separated, and
/// `{addresses}` by their addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DrainHook {
    pub when: DrainWhen,
    /// The host it runs on (a name from `hosts`).
    pub on: String,
    pub command: Command,
}

impl DrainHook {
    /// The hook's argv for one batch: `{hosts}` and `{addresses}` filled
    /// in (comma-separated, in the batch's order), `{{`/`}}` as braces.
    pub fn argv_for(&self, batch: &[&Host]) -> Vec<String> {
        let join = |f: fn(&Host) -> &str| batch.iter().map(|h| f(h)).collect::<Vec<_>>().join(",");
        let hosts = join(|h| &h.name);
        let addresses = join(|h| &h.address);
        self.command
            .argv
            .iter()
            .map(|a| {
                crate::template::render_with(a, |name| match name {
                    "hosts" => Some(hosts.clone()),
                    "addresses" => Some(addresses.clone()),
                    _ => None,
                })
            })
            .collect()
    }
}

impl Host {
    /// Whether this host runs `service`: a host without roles runs every
    /// service, a service without a role runs on every host, otherwise the
    /// service's role must be one of the host's.
    pub(crate) fn runs(&self, service: &Service) -> bool {
        match &service.role {
            None => true,
            Some(role) => self.roles.is_empty() || self.roles.contains(role),
        }
    }
}

impl Environment {
    /// Whether this environment deploys to a fleet of hosts over ssh.
    pub fn is_fleet(&self) -> bool {
        !self.hosts.is_empty()
    }

    /// The host called `name`.
    pub(crate) fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// The services `host` runs, in their declaration order.
    pub fn services_on<'a>(&self, host: &Host, services: &'a [Service]) -> Vec<&'a Service> {
        services.iter().filter(|s| host.runs(s)).collect()
    }
}

/// Where an environment's revisions must have run first.
#[derive(Debug, Clone, Serialize)]
pub struct PromoteFrom {
    /// The source environment (another environment of the config).
    pub(crate) environment: String,
    /// Its state directory, when it is not the default one (absolute).
    pub(crate) state_dir: Option<String>,
    /// `min-healthy`: how long the source must have run a revision
    /// healthy (still deployed, or until its next deploy) for it to count;
    /// zero (the default): any healthy run counts.
    pub(crate) min_healthy: std::time::Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Backup {
    pub run: Command,
    pub restore: Command,
    /// Run after a restore (for example `prisma migrate resolve`).
    pub(crate) resolve: Option<Command>,
    pub keep: u32,
    /// Directory backups are written to; `None`: `{state}/backups`.
    pub(crate) dir: Option<String>,
    /// Whether a first deploy (nothing recorded as deployed) backs up.
    pub(crate) first_deploy: FirstDeploy,
}

/// A backup block's `first-deploy`: what a first deploy does about the
/// backup before its migrations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum FirstDeploy {
    /// No backup: the database may not exist yet (the first migration
    /// creates it), and there is nothing of moorline's to go back to.
    #[default]
    Skip,
    /// Back up as on any deploy (a database that holds data before
    /// moorline's first deploy); a backup that fails stops the deploy.
    Backup,
}

impl FirstDeploy {
    pub(crate) const NAMES: &[&str] = &["skip", "backup"];

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "skip" => Some(Self::Skip),
            "backup" => Some(Self::Backup),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub name: String,
    /// Infrastructure units ordered before this phase's services.
    pub units: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Runtime {
    pub(crate) name: String,
    pub build: Option<Command>,
    pub migrate: Option<Migrate>,
    pub(crate) migrate_status: Option<Command>,
    pub unit: Option<UnitSpec>,
    /// A cached dependency step, run before `build`.
    pub deps: Option<Deps>,
}

/// A dependency step (`npm ci`, a venv): its outputs are kept on the host
/// keyed by a hash of its inputs and reused by later releases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Deps {
    pub command: Command,
    /// Relative to the service directory; files or directories.
    pub inputs: Vec<String>,
    /// Relative to the release directory; what the step produces.
    pub outputs: Vec<String>,
    /// Its output is part of the cache key (`node --version`).
    pub version: Option<Command>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Migrate {
    pub command: Command,
    /// Relative to the service directory: migrate only where this exists.
    pub if_exists: Option<String>,
    /// Relative to the service directory: a change under it needs a migration.
    pub(crate) inputs: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Command {
    pub argv: Vec<String>,
    #[serde(with = "secs")]
    pub timeout: Duration,
}

/// How moorline knows a service is up after a restart or start (`ready`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Readiness {
    /// `GET` of [`Service::ready`] answers 2xx (a path or an `http://` URL).
    Http,
    /// The service's port accepts a TCP connection on loopback.
    Tcp,
    /// `Type=notify`: the start job ends when the service sends `READY=1`.
    Notify,
    /// A command (argv, placeholders resolved at plan time) exits 0.
    Exec(Vec<String>),
    /// No check: active and still the same process after the settle window
    /// (workers that listen on nothing).
    None,
}

#[derive(Debug, Clone, Serialize)]
pub struct Service {
    pub name: String,
    pub runtime: String,
    /// The port it answers on; `None` for a service whose readiness needs
    /// none (`ready "notify"`, `"exec"`, `"none"`).
    pub port: Option<u16>,
    pub phase: String,
    /// Index of `phase` in `Config::phases`.
    pub phase_index: usize,
    pub depends_on: Vec<String>,
    /// Source directory in the repository, placeholders resolved.
    pub path: String,
    pub watch: Vec<String>,
    pub health: String,
    pub ready: String,
    /// How readiness is checked; [`Readiness::Http`] asks [`Service::ready`].
    pub readiness: Readiness,
    pub metrics: String,
    #[serde(with = "secs")]
    pub ready_timeout: Duration,
    /// The unit moorline renders and installs; `None`: managed by hand.
    pub unit: Option<UnitSpec>,
    /// The systemd unit name.
    pub unit_name: String,
    /// Fleet mode: the hosts with this role run the service (`None`: every
    /// host).
    pub role: Option<String>,
    /// The units this one starts after when systemd starts them together
    /// (at boot): its phase's infrastructure units, the services and units
    /// of the nearest earlier phase that has any, and the services of
    /// `depends-on` (of this configuration, or this host's part of it).
    /// Set by [`Config::order_starts`]; rendered as `After=`.
    pub start_after: Vec<String>,
    /// `cutover "blue-green"`: a new release goes live in the idle one of
    /// two slots behind the proxy; `None`: restarted in place (the default).
    pub cutover: Option<Cutover>,
    /// `schedule`: a job its `.timer` unit runs; `None`: a long-running
    /// service.
    pub schedule: Option<Schedule>,
    /// `build-on "host"`: each host builds it from the commits, as on a
    /// single host (native modules for the host's architecture); never
    /// built once and shipped as an artifact.
    pub build_on_host: bool,
}

/// A service run on a schedule: its unit is `Type=oneshot`, and a second
/// unit, `NAME.timer`, starts it (systemd.timer(5)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Schedule {
    /// The timer's `OnCalendar=` (systemd.time(7)), as written.
    pub calendar: String,
    /// `Persistent=`: a run missed while the timer was down happens when it
    /// starts again.
    pub persistent: bool,
}

/// How long the old slot keeps serving requests it already has after the
/// proxy moved to the new one, when `drain` is not given.
pub(crate) const DEFAULT_DRAIN: Duration = Duration::from_secs(2);

/// A service's blue/green cutover: two instances of a template unit
/// (`NAME@.service`, the instance is the slot's port), one of them named by
/// an nginx upstream file that moorline owns and the proxy includes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cutover {
    /// The two slot ports (distinct, neither the service's `port`).
    pub slots: [u16; 2],
    /// The upstream file moorline writes (absolute): `upstream
    /// moorline_<service> { server 127.0.0.1:<live slot>; }`.
    pub upstream: String,
    /// How long the old slot keeps running after the switch.
    #[serde(with = "secs")]
    pub drain: Duration,
}

impl Service {
    /// The `.timer` unit of a scheduled service (`NAME.timer` beside
    /// `NAME.service`); `None` for a long-running one.
    pub(crate) fn timer_unit(&self) -> Option<String> {
        self.schedule.as_ref()?;
        let stem = self
            .unit_name
            .strip_suffix(".service")
            .unwrap_or(&self.unit_name);
        Some(format!("{stem}.timer"))
    }

    /// The unit a deploy restarts and checks: the timer of a scheduled
    /// service (a deploy never runs the job), the service's unit otherwise.
    pub(crate) fn live_unit(&self) -> String {
        self.timer_unit().unwrap_or_else(|| self.unit_name.clone())
    }

    /// Every port the service listens on: its `port` and its blue/green
    /// slots.
    pub(crate) fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.port
            .into_iter()
            .chain(self.cutover.iter().flat_map(|c| c.slots))
    }

    /// The unit systemd runs for one slot of a cutover service
    /// (`pakashop-api@8101.service`); the unit name itself otherwise.
    pub(crate) fn slot_unit(&self, slot: u16) -> String {
        match self.unit_name.strip_suffix("@.service") {
            Some(stem) if self.cutover.is_some() => format!("{stem}@{slot}.service"),
            _ => self.unit_name.clone(),
        }
    }

    /// The units systemd runs for the service: its two slots' instances
    /// for a cutover service (what `After=` names: a template orders
    /// nothing), its unit otherwise.
    pub(crate) fn running_units(&self) -> Vec<String> {
        match &self.cutover {
            Some(c) => c.slots.iter().map(|p| self.slot_unit(*p)).collect(),
            None => vec![self.unit_name.clone()],
        }
    }

    /// Whether the service's source is the whole repository (`path "."`).
    pub(crate) fn is_root(&self) -> bool {
        self.path == ROOT_PATH
    }

    /// `rel`, relative to the service's directory, as a path from the
    /// repository root (`""`: the directory itself).
    pub(crate) fn join(&self, rel: &str) -> String {
        join_path(&self.path, rel)
    }
}

/// `rel` under the repository directory `dir` (which may be [`ROOT_PATH`]),
/// as a path from the repository root; `""` is `dir` itself.
pub(crate) fn join_path(dir: &str, rel: &str) -> String {
    if rel.is_empty() {
        dir.to_owned()
    } else if dir == ROOT_PATH {
        rel.to_owned()
    } else {
        format!("{dir}/{rel}")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UnitSpec {
    pub description: Option<String>,
    pub exec: Vec<String>,
    pub env: BTreeMap<String, EnvValue>,
    pub env_files: Vec<String>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub restart: String,
    pub working_directory: String,
    pub after: Vec<String>,
    pub wants: Vec<String>,
    pub wanted_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnvValue {
    pub value: String,
    /// Redacted in every plan, diff and log.
    pub secret: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Proxy {
    pub name: String,
    pub unit: String,
    pub check: Option<Command>,
    /// Paths in the repository whose change needs a reload.
    pub(crate) watch: Vec<String>,
}

impl Config {
    pub fn environment(&self, name: &str) -> Option<&Environment> {
        self.environments.iter().find(|e| e.name == name)
    }

    /// The service called `name`, in constant time (a fleet of 100,000
    /// services is looked up once per dependency edge).
    pub fn service(&self, name: &str) -> Option<&Service> {
        if let Some(s) = self
            .service_index
            .get(name)
            .and_then(|i| self.services.get(*i))
            .filter(|s| s.name == name)
        {
            return Some(s);
        }
        // Not indexed (a name that does not exist, or `services` changed
        // after validation): look it up the slow way.
        self.services.iter().find(|s| s.name == name)
    }

    /// Sets every service's [`Service::start_after`] from the phases and
    /// `depends-on` of the services configured (here): the order `apply`
    /// restarts them in, which systemd then keeps at boot too, where it
    /// starts every enabled unit at once. A service starts after its
    /// phase's own infrastructure `unit`s, and after the members (services
    /// and infrastructure units) of the nearest earlier phase that has
    /// any: `After=` chains, so the phases before that follow.
    pub(crate) fn order_starts(&mut self) {
        let mut members: Vec<Vec<String>> = self.phases.iter().map(|p| p.units.clone()).collect();
        for s in &self.services {
            if let Some(m) = members.get_mut(s.phase_index) {
                m.extend(s.running_units());
            }
        }
        let unit_of: BTreeMap<String, Vec<String>> = self
            .services
            .iter()
            .map(|s| (s.name.clone(), s.running_units()))
            .collect();
        for s in &mut self.services {
            let own_phase = self
                .phases
                .get(s.phase_index)
                .map(|p| p.units.clone())
                .unwrap_or_default();
            let earlier = members[..s.phase_index.min(members.len())]
                .iter()
                .rev()
                .find(|m| !m.is_empty())
                .cloned()
                .unwrap_or_default();
            let depended = s
                .depends_on
                .iter()
                .filter_map(|d| unit_of.get(d).cloned())
                .flatten();
            let mut after: Vec<String> = own_phase
                .into_iter()
                .chain(earlier)
                .chain(depended)
                .collect();
            after.sort();
            after.dedup();
            s.start_after = after;
        }
    }

    pub(crate) fn runtime_of(&self, service: &Service) -> Option<&Runtime> {
        self.runtimes.get(&service.runtime)
    }

    /// The configuration as environment `env` runs it: `{env}` in unit
    /// names (the project's `unit-name`) is the environment's name, and
    /// every service's port is moved by its `port-offset`. Every command
    /// that works on one environment sees it so ([`crate::target`]).
    /// Nothing changes for an environment that is not in the
    /// configuration. Validation has checked that every moved port fits.
    pub fn for_environment(&mut self, env: &str) {
        let Some(offset) = self.environment(env).map(|e| e.port_offset) else {
            return;
        };
        let name =
            |u: &str| crate::template::render_with(u, |p| (p == "env").then(|| env.to_owned()));
        for s in &mut self.services {
            if s.unit_name.contains("{env}") {
                s.unit_name = name(&s.unit_name);
            }
            for a in &mut s.start_after {
                if a.contains("{env}") {
                    *a = name(a);
                }
            }
            s.port = s.port.map(|p| p.saturating_add(offset));
            if let Some(c) = &mut s.cutover {
                for slot in &mut c.slots {
                    *slot = slot.saturating_add(offset);
                }
            }
        }
    }

    /// Keeps only the services `host` runs (the host side of a fleet):
    /// dependencies on services of other hosts are dropped, since one
    /// host's systemd cannot order them (the controller orders hosts).
    pub fn keep_services_of(&mut self, host: &Host) {
        self.keep_services(|s| host.runs(s));
    }

    /// Keeps only the services `keep` selects, with their `depends-on`
    /// and start order ([`Config::order_starts`]) among those alone.
    pub(crate) fn keep_services(&mut self, keep: impl Fn(&Service) -> bool) {
        self.services.retain(|s| keep(s));
        let kept: std::collections::HashSet<String> =
            self.services.iter().map(|s| s.name.clone()).collect();
        for s in &mut self.services {
            s.depends_on.retain(|d| kept.contains(d));
        }
        self.order_starts();
        self.service_index = self
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
    }
}

/// Names that mark an environment variable as secret even without
/// `secret=#true`.
pub(crate) fn looks_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    ["PASSWORD", "SECRET", "TOKEN", "KEY"]
        .iter()
        .any(|m| upper.contains(m))
        || upper == "DATABASE_URL"
}

mod secs {
    use serde::Serializer;
    use std::time::Duration;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::{BatchSize, ROOT_PATH, Rollout, join_path};

    /// Pakashop's start order as `After=`: the infrastructure units before
    /// `config`, each phase after the one before it, and a host's part of a
    /// fleet ordered among its own services only.
    #[test]
    fn start_order_follows_phases_depends_on_and_the_host() {
        let mut config =
            crate::config::parse("pakashop.kdl", include_str!("../../pakashop.kdl")).unwrap();
        let after = |c: &super::Config, name: &str| c.service(name).unwrap().start_after.clone();
        assert_eq!(
            after(&config, "config"),
            [
                "meilisearch.service",
                "postgresql.service",
                "redis-server.service"
            ]
        );
        assert_eq!(after(&config, "gateway"), ["pakashop-config.service"]);
        // The gateway runs blue/green: what follows it follows both of its slots.
        assert_eq!(
            after(&config, "backend"),
            [
                "pakashop-gateway@18000.service",
                "pakashop-gateway@18001.service"
            ]
        );
        assert_eq!(
            after(&config, "coupon"),
            [
                "pakashop-analytics.service",
                "pakashop-backend.service",
                "pakashop-search.service"
            ]
        );
        // Without its core services (another host runs them), the supporting phase starts
        // after the nearest earlier phase this host has.
        config.keep_services(|s| s.phase != "core");
        assert_eq!(
            after(&config, "coupon"),
            [
                "pakashop-gateway@18000.service",
                "pakashop-gateway@18001.service"
            ]
        );
        config.keep_services(|s| s.phase == "supporting");
        assert_eq!(
            after(&config, "coupon"),
            [
                "meilisearch.service",
                "postgresql.service",
                "redis-server.service"
            ]
        );
    }

    #[test]
    fn rollout_steps_table() {
        use BatchSize::{Count, Percent};
        let rollout = |canary, batches: &[BatchSize]| Rollout {
            canary,
            batches: batches.to_vec(),
            ..Rollout::default()
        };
        for (canary, batches, hosts, want) in [
            // The documented example: 5 hosts, canary 1, "25%" "100%".
            (1, &[Percent(25), Percent(100)][..], 5, &[1, 2, 2][..]),
            (1, &[Count(1), Count(2)], 5, &[1, 1, 2, 1]),
            (0, &[Percent(100)], 5, &[5]),
            (1, &[Percent(100)], 5, &[1, 4]),
            (0, &[Count(2)], 5, &[2, 2, 1]),
            (0, &[Percent(1)], 3, &[1, 1, 1]),
            (0, &[Percent(34)], 3, &[2, 1]),
            (2, &[Count(1)], 3, &[2, 1]),
            (0, &[], 4, &[4]),
            (0, &[Count(0)], 2, &[1, 1]),
            (3, &[Count(1)], 3, &[3]),
            (9, &[Count(1)], 3, &[3]),
            (1, &[Count(1)], 0, &[]),
        ] {
            let got = rollout(canary, batches).steps(hosts);
            assert_eq!(got, want, "canary {canary}, {batches:?}, {hosts} hosts");
            assert_eq!(got.iter().sum::<usize>(), hosts);
        }
    }

    #[test]
    fn join_path_table() {
        for (dir, rel, want) in [
            ("services/api", "package.json", "services/api/package.json"),
            (
                "services/api",
                "prisma/schema.prisma",
                "services/api/prisma/schema.prisma",
            ),
            ("services/api", "", "services/api"),
            (ROOT_PATH, "package.json", "package.json"),
            (ROOT_PATH, "prisma/schema.prisma", "prisma/schema.prisma"),
            (ROOT_PATH, "", ROOT_PATH),
        ] {
            assert_eq!(join_path(dir, rel), want, "{dir} + {rel}");
        }
    }
}

//! The one lifecycle planner: how services go live, go back and go down.
//!
//! Every plan that changes what runs (deploy, restart, start, stop, enable,
//! disable, manual and automatic rollback) describes *what* changes as a
//! [`Lifecycle`] and gets its actions from [`Lifecycle::walk`]. Only this
//! file walks phases, so the rules below hold for every operation:
//!
//! 1. Stops of services going back to nothing deployed come first, so their
//!    unit's `ExecStop` runs while the unit file is still there.
//! 2. Unit files are written (installed, put back or removed) and systemd
//!    re-reads them once (`daemon-reload`) before any service is touched.
//! 3. Services are restarted or started phase by phase, each one gated on
//!    readiness (`health:S`, the service's probe) before the next phase
//!    begins; inside a phase, `depends-on` orders them. A bare unit (a
//!    phase's infrastructure) has no probe: its own action holds it to the
//!    settle window ([`Settle`]), which is written into the step.
//! 4. Going forward (deploy, restart, start) walks the first phase first
//!    and a service after what it depends on. Going back (both rollbacks,
//!    stop) walks the last phase first and a service before what it
//!    depends on: the reverse of the order the change was made in, so a
//!    dependent never runs against a dependency older than the one it was
//!    started against, and the newer side of every pair, which is the side
//!    that knows both versions, goes first.
//! 5. The proxy reloads last, after its configuration check.
//!
//! "All of these before all of those" becomes a barrier where that takes
//! fewer edges ([`super::build`]'s graph), so plans of thousands of
//! services stay linear in size.

use std::collections::{BTreeSet, HashMap};

use super::deploy::graph::{Graph, barrier, needs_barrier};
use super::deploy::{count, list, ready_check, slot_ready_url};
use super::{Action, ActionKind, Check, Command, Settle, Step, UnitSource};
use crate::config::{Config, Cutover, Service};

/// Which way phases are walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    /// First phase first; a service after those it depends on.
    Forward,
    /// Last phase first; a service before those it depends on.
    Reverse,
}

/// What happens to one service in the phase walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Bounce {
    /// Switch `current` to `release` (a release directory) if given, then
    /// restart; its readiness probe follows.
    Restart { release: Option<String> },
    /// Start; its readiness probe follows.
    Start,
    /// Stop (no probe).
    Stop,
}

/// One service in the phase walk, by index into `config.services`.
#[derive(Debug, Clone)]
pub(crate) struct Walk {
    pub(crate) service: usize,
    pub(crate) bounce: Bounce,
    pub(crate) reason: String,
}

/// A service stopped before anything else, its `current` link removed:
/// back to nothing deployed.
#[derive(Debug, Clone)]
pub(crate) struct Undeploy {
    pub(crate) service: usize,
    pub(crate) reason: String,
    /// The `current` link to remove after the stop.
    pub(crate) unlink: String,
}

/// What happens to one service's unit file before the daemon-reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UnitWrite {
    /// Save the installed file and write this one (`install-unit:S`).
    Install { source: UnitSource },
    /// Write a saved file back without saving the current one
    /// (`restore-unit:S`).
    Restore { saved: String },
    /// Remove the file (`remove-unit:S`).
    Remove,
}

/// One unit file change. By service name: the apply being undone may have
/// written the unit of a service that is no longer configured.
#[derive(Debug, Clone)]
pub(crate) struct UnitFile {
    pub(crate) service: String,
    pub(crate) unit: String,
    pub(crate) write: UnitWrite,
    pub(crate) reason: String,
    /// Enable the unit in the daemon-reload that follows.
    pub(crate) enable: bool,
}

/// Why the proxy reloads at the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProxyReload {
    /// Its upstreams changed (and/or its configuration files did, listed):
    /// reloaded after its configuration check.
    Upstreams { config_changed: Vec<String> },
    /// The apply being undone reloaded it: reloaded back, without a
    /// check (the configuration is the one that was running before).
    Back,
}

/// What a plan changes in what runs; [`Lifecycle::walk`] turns it into
/// actions.
#[derive(Debug)]
pub(crate) struct Lifecycle<'a> {
    pub(crate) config: &'a Config,
    pub(crate) order: Order,
    /// Actions already in the graph that every change of what runs waits
    /// for (a deploy's builds and migrations), and the barrier standing for
    /// them where it saves edges: its id and reason.
    pub(crate) after: Vec<usize>,
    pub(crate) after_barrier: Option<(&'a str, &'a str)>,
    pub(crate) undeploy: Vec<Undeploy>,
    pub(crate) units: Vec<UnitFile>,
    pub(crate) walk: Vec<Walk>,
    /// Restart each phase's infrastructure units before its services
    /// (forward walks only).
    pub(crate) infrastructure: bool,
    pub(crate) proxy: Option<ProxyReload>,
}

/// The readiness probe of a service after its restart or start.
pub(crate) fn health(s: &Service) -> Action {
    let check = ready_check(s);
    let secs = s.ready_timeout.as_secs();
    let reason = match &check {
        Check::Http { url } => format!("GET {url} must answer 2xx within {secs}s"),
        Check::Tcp { address } => {
            format!("{address} must accept a TCP connection within {secs}s")
        }
        Check::Exec { argv } => format!(
            "`{}` must exit 0 within {secs}s",
            argv.iter()
                .map(|w| {
                    if w.is_empty()
                        || w.contains(char::is_whitespace)
                        || w.contains(['"', '\\', '`'])
                    {
                        format!("{w:?}")
                    } else {
                        w.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        ),
        Check::Notify => format!(
            "must send READY=1 (Type=notify) within {secs}s, then stay up for the settle window"
        ),
        Check::Stable => match (&s.schedule, s.timer_unit()) {
            (Some(c), Some(timer)) => format!(
                "{timer} must stay active for the settle window; the job is not run now: next run per OnCalendar={}",
                c.calendar
            ),
            _ => {
                "must stay up for the settle window (ready \"none\": nothing to ask it)".to_owned()
            }
        },
    };
    Action {
        id: health_id(&s.name),
        service: Some(s.name.clone()),
        phase: Some(s.phase.clone()),
        reason,
        after: Vec::new(),
        step: Step::Health {
            unit: s.live_unit(),
            check,
            timeout_secs: secs,
        },
    }
}

/// The id of a service's readiness probe: the action whose success means
/// the service is up.
pub(crate) fn health_id(service: &str) -> String {
    format!("health:{service}")
}

impl Lifecycle<'_> {
    /// A lifecycle with nothing to do yet.
    pub(crate) fn new(config: &Config, order: Order) -> Lifecycle<'_> {
        Lifecycle {
            config,
            order,
            after: Vec::new(),
            after_barrier: None,
            undeploy: Vec::new(),
            units: Vec::new(),
            walk: Vec::new(),
            infrastructure: false,
            proxy: None,
        }
    }

    /// Adds the actions to `g` (after `self.after`).
    pub(in crate::plan) fn walk(&self, g: &mut Graph) {
        let mut members: Vec<Vec<&Walk>> = vec![Vec::new(); self.config.phases.len()];
        for m in &self.walk {
            if let Some(s) = self.config.services.get(m.service)
                && let Some(phase) = members.get_mut(s.phase_index)
            {
                phase.push(m);
            }
        }
        for phase in &mut members {
            phase.sort_by_key(|m| m.service);
        }
        let mut w = Walker {
            life: self,
            g,
            members,
            gate: self.after.clone(),
            stops: Vec::new(),
            written: Vec::new(),
            walked: Vec::new(),
        };
        let phases = w.phases();
        let first = if self.undeploy.is_empty() {
            if self.units.is_empty() {
                phases.first().map_or(1, |pi| w.consumers(*pi))
            } else {
                self.units.len()
            }
        } else {
            self.undeploy.len()
        };
        if let Some((id, reason)) = self.after_barrier {
            w.barrier(first, id, None, reason, 0);
        }
        let start = w.gate.clone();
        w.undeploy();
        w.unit_files();
        for (k, pi) in phases.iter().enumerate() {
            let next = phases.get(k + 1).map_or(1, |n| w.consumers(*n));
            w.phase(*pi, next);
        }
        w.proxy(&start);
    }

    /// The walk's position of phase `pi`: the sort key's phase, so that
    /// ties break in walk order.
    fn rank(&self, pi: usize) -> usize {
        match self.order {
            Order::Forward => pi,
            Order::Reverse => self.config.phases.len().saturating_sub(pi + 1),
        }
    }

    fn infrastructure(&self) -> bool {
        self.infrastructure && self.order == Order::Forward
    }

    /// How a phase's barrier names what it waits for: (what was done,
    /// the state reached).
    fn barrier_words(&self) -> (&'static str, &'static str) {
        if self.walk.is_empty() {
            ("restarted", "ready")
        } else if self.walk.iter().all(|w| w.bounce == Bounce::Stop) {
            ("stopped", "stopped")
        } else if self.walk.iter().all(|w| w.bounce == Bounce::Start) {
            ("started", "ready")
        } else {
            ("restarted", "ready")
        }
    }
}

/// One walk in progress: the graph, and what the next actions wait for.
struct Walker<'l, 'g> {
    life: &'l Lifecycle<'l>,
    g: &'g mut Graph,
    /// The walk's members by phase index, each in declaration order.
    members: Vec<Vec<&'l Walk>>,
    /// What the next step's first actions wait for.
    gate: Vec<usize>,
    /// The undeploy stops: (service, node).
    stops: Vec<(usize, usize)>,
    /// Services whose unit file is written.
    written: Vec<usize>,
    /// Services walked.
    walked: Vec<usize>,
}

impl Walker<'_, '_> {
    /// The phases with something to do, in walk order.
    fn phases(&self) -> Vec<usize> {
        let life = self.life;
        let n = life.config.phases.len();
        let order: Vec<usize> = match life.order {
            Order::Forward => (0..n).collect(),
            Order::Reverse => (0..n).rev().collect(),
        };
        order
            .into_iter()
            .filter(|pi| {
                !self.members[*pi].is_empty()
                    || (life.infrastructure() && !life.config.phases[*pi].units.is_empty())
            })
            .collect()
    }

    /// How many actions of phase `pi` wait for the gate.
    fn consumers(&self, pi: usize) -> usize {
        let infra = if self.life.infrastructure() {
            self.life.config.phases[pi].units.len()
        } else {
            0
        };
        self.members[pi].len() + infra
    }

    /// Replaces the gate by a barrier when `next` actions wait for it and
    /// that takes fewer edges.
    fn barrier(&mut self, next: usize, id: &str, phase: Option<&str>, reason: &str, rank: usize) {
        if needs_barrier(self.gate.len(), next) {
            let b = self
                .g
                .push(barrier(id, phase, reason), (rank, ActionKind::Barrier, 0));
            for p in &self.gate {
                self.g.edge(*p, b);
            }
            self.gate = vec![b];
        }
    }

    /// Adds `a` after the gate.
    fn gated(&mut self, a: Action, key: (usize, ActionKind, usize)) -> usize {
        let n = self.g.push(a, key);
        for p in &self.gate {
            self.g.edge(*p, n);
        }
        n
    }

    /// Step 1, back to nothing deployed: stopped first.
    fn undeploy(&mut self) {
        let config = self.life.config;
        for u in &self.life.undeploy {
            let Some(s) = config.services.get(u.service) else {
                continue;
            };
            let (step, kind) = match &s.cutover {
                Some(c) => (
                    Step::SlotStop {
                        unit: s.unit_name.clone(),
                        slots: c.slots,
                        upstream: None,
                        unlink: Some(u.unlink.clone()),
                    },
                    ActionKind::SlotStop,
                ),
                None => (
                    Step::Stop {
                        unit: s.live_unit(),
                        unlink: Some(u.unlink.clone()),
                    },
                    ActionKind::Stop,
                ),
            };
            let a = Action {
                id: format!("stop:{}", s.name),
                service: Some(s.name.clone()),
                phase: Some(s.phase.clone()),
                reason: u.reason.clone(),
                after: Vec::new(),
                step,
            };
            let n = self.gated(a, (0, kind, u.service));
            self.stops.push((u.service, n));
        }
    }

    /// Step 2, unit files (a service's after its stop), then one
    /// daemon-reload.
    fn unit_files(&mut self) {
        let config = self.life.config;
        let mut writes = Vec::new();
        let mut enable = Vec::new();
        for f in &self.life.units {
            let index = config.services.iter().position(|s| s.name == f.service);
            let configured = index.and_then(|i| config.services.get(i));
            let unit = f.unit.clone();
            // A scheduled service's timer file is the second file of the
            // service (service units end in `.service`, checked by config).
            let of = if std::path::Path::new(&f.unit)
                .extension()
                .is_some_and(|e| e == "timer")
            {
                format!("{}.timer", f.service)
            } else {
                f.service.clone()
            };
            let (id, kind, step) = match &f.write {
                UnitWrite::Install { source } => (
                    format!("install-unit:{of}"),
                    ActionKind::InstallUnit,
                    Step::InstallUnit {
                        unit,
                        source: source.clone(),
                    },
                ),
                UnitWrite::Restore { saved } => (
                    format!("restore-unit:{of}"),
                    ActionKind::RestoreUnit,
                    Step::RestoreUnit {
                        unit,
                        saved: saved.clone(),
                    },
                ),
                UnitWrite::Remove => (
                    format!("remove-unit:{of}"),
                    ActionKind::RemoveUnit,
                    Step::RemoveUnit { unit },
                ),
            };
            let a = Action {
                id,
                service: Some(f.service.clone()),
                phase: configured.map(|s| s.phase.clone()),
                reason: f.reason.clone(),
                after: Vec::new(),
                step,
            };
            let key = (
                configured.map_or(0, |s| s.phase_index),
                kind,
                index.unwrap_or(usize::MAX),
            );
            let n = match self.stops.iter().find(|(i, _)| Some(*i) == index) {
                Some((_, stopped)) => {
                    let after_stop = *stopped;
                    let n = self.g.push(a, key);
                    self.g.edge(after_stop, n);
                    n
                }
                None => self.gated(a, key),
            };
            writes.push(n);
            self.written.extend(index);
            // A cutover service's unit is a template: its slots are
            // enabled one by one as they go live.
            if f.enable && configured.is_none_or(|s| s.cutover.is_none()) {
                enable.push(f.unit.clone());
            }
        }
        if writes.is_empty() {
            return;
        }
        let units: Vec<&str> = self.life.units.iter().map(|f| f.unit.as_str()).collect();
        let reload = self.g.push(
            Action {
                id: "daemon-reload".to_owned(),
                service: None,
                phase: None,
                reason: format!(
                    "systemd must re-read {}: {}",
                    count(units.len(), "unit file", "unit files"),
                    list(&units)
                ),
                after: Vec::new(),
                step: Step::DaemonReload { enable },
            },
            (0, ActionKind::DaemonReload, 0),
        );
        for w in &writes {
            self.g.edge(*w, reload);
        }
        self.gate = vec![reload];
    }

    /// Step 3, one phase: its infrastructure (forward walks), then its
    /// members, ordered by `depends-on` inside it. The gate becomes the
    /// members nothing else here waits for, through a barrier when the
    /// `next` phase's many wait.
    fn phase(&mut self, pi: usize, next: usize) {
        let life = self.life;
        let config = life.config;
        let phase = &config.phases[pi];
        let rank = life.rank(pi);
        if life.infrastructure() && !phase.units.is_empty() {
            let mut ids = Vec::new();
            for u in &phase.units {
                let a = Action {
                    id: format!("restart:{u}"),
                    service: None,
                    phase: Some(phase.name.clone()),
                    reason: format!("infrastructure of phase {}", phase.name),
                    after: Vec::new(),
                    step: Step::Restart {
                        unit: u.clone(),
                        release: None,
                        settle: Settle::Window,
                    },
                };
                ids.push(self.gated(a, (rank, ActionKind::Restart, 0)));
            }
            self.gate = ids;
        }
        let members = std::mem::take(&mut self.members[pi]);
        if members.is_empty() {
            return;
        }
        // Each member's first action and the action that ends it.
        let spans: Vec<(usize, usize)> = members.iter().map(|m| self.member(m, rank)).collect();
        let at: HashMap<&str, usize> = members
            .iter()
            .enumerate()
            .map(|(k, m)| (config.services[m.service].name.as_str(), k))
            .collect();
        // depends-on inside the phase: forward, a service starts after the
        // end of what it depends on; reverse, what it depends on starts
        // after its end. `waited[k]`: something here waits for member k.
        let mut waited = vec![false; members.len()];
        for (k, m) in members.iter().enumerate() {
            for d in &config.services[m.service].depends_on {
                let Some(&j) = at.get(d.as_str()) else {
                    continue;
                };
                if j == k {
                    continue;
                }
                let (before, after) = match life.order {
                    Order::Forward => (j, k),
                    Order::Reverse => (k, j),
                };
                self.g.edge(spans[before].1, spans[after].0);
                waited[before] = true;
            }
        }
        self.gate = spans
            .iter()
            .zip(&waited)
            .filter(|(_, w)| !**w)
            .map(|((_, last), _)| *last)
            .collect();
        self.walked.extend(members.iter().map(|m| m.service));
        let (done, state) = life.barrier_words();
        self.barrier(
            next,
            &format!("ready:{}", phase.name),
            Some(&phase.name),
            &format!("every {done} service of phase {} is {state}", phase.name),
            rank,
        );
    }

    /// One member's actions, after the gate: its first and its last.
    fn member(&mut self, m: &Walk, rank: usize) -> (usize, usize) {
        let s = &self.life.config.services[m.service];
        if let (Some(c), Some(p)) = (&s.cutover, &self.life.config.proxy) {
            return self.cutover(m, s, c, p, rank);
        }
        let action = |id: String, step: Step| Action {
            id,
            service: Some(s.name.clone()),
            phase: Some(s.phase.clone()),
            reason: m.reason.clone(),
            after: Vec::new(),
            step,
        };
        let (first, kind) = match &m.bounce {
            Bounce::Restart { release } => (
                action(
                    format!("restart:{}", s.name),
                    Step::Restart {
                        unit: s.live_unit(),
                        release: release.clone(),
                        settle: Settle::Probe,
                    },
                ),
                ActionKind::Restart,
            ),
            Bounce::Start => (
                action(
                    format!("start:{}", s.name),
                    Step::Start {
                        unit: s.live_unit(),
                        settle: Settle::Probe,
                    },
                ),
                ActionKind::Start,
            ),
            Bounce::Stop => (
                action(
                    format!("stop:{}", s.name),
                    Step::Stop {
                        unit: s.live_unit(),
                        unlink: None,
                    },
                ),
                ActionKind::Stop,
            ),
        };
        let first = self.gated(first, (rank, kind, m.service));
        if m.bounce == Bounce::Stop {
            return (first, first);
        }
        let probe = self
            .g
            .push(health(s), (rank, ActionKind::Health, m.service));
        self.g.edge(first, probe);
        (first, probe)
    }

    /// A cutover service's member: a stop stops every slot; a restart or
    /// start is the blue/green chain, each step after the one before it:
    /// the new slot started, its readiness on its own port, the upstream
    /// switched (checked, reloaded), the service's readiness through the
    /// proxy, the drain, the old slot stopped. A dependent waits for the
    /// whole chain, so it never starts against a slot about to stop.
    fn cutover(
        &mut self,
        walk: &Walk,
        svc: &Service,
        cut: &Cutover,
        proxy: &crate::config::Proxy,
        rank: usize,
    ) -> (usize, usize) {
        let action = |id: String, reason: String, step: Step| Action {
            id,
            service: Some(svc.name.clone()),
            phase: Some(svc.phase.clone()),
            reason,
            after: Vec::new(),
            step,
        };
        let [slot_a, slot_b] = cut.slots;
        let release = match &walk.bounce {
            Bounce::Stop => {
                let stop = action(
                    format!("stop:{}", svc.name),
                    format!("{}: both slots ({slot_a}, {slot_b}) stop", walk.reason),
                    Step::SlotStop {
                        unit: svc.unit_name.clone(),
                        slots: cut.slots,
                        upstream: None,
                        unlink: None,
                    },
                );
                let n = self.gated(stop, (rank, ActionKind::SlotStop, walk.service));
                return (n, n);
            }
            Bounce::Restart { release } => release.clone(),
            Bounce::Start => None,
        };
        let first = self.gated(
            action(
                format!("slot-start:{}", svc.name),
                format!(
                    "{}: in the slot of {slot_a} and {slot_b} that the proxy does not name (a slot already running that release is used as it is: nothing restarts)",
                    walk.reason
                ),
                Step::SlotStart {
                    unit: svc.unit_name.clone(),
                    slots: cut.slots,
                    upstream: cut.upstream.clone(),
                    release,
                },
            ),
            (rank, ActionKind::SlotStart, walk.service),
        );
        let url = slot_ready_url(svc);
        let name = crate::upstream::name(&svc.name).unwrap_or_default();
        let check = proxy.check.as_ref().map(|check| Command {
            argv: check.argv.clone(),
            timeout_secs: check.timeout.as_secs(),
        });
        let checked = proxy.check.as_ref().map_or_else(String::new, |check| {
            format!(", after `{}` passes", check.argv.join(" "))
        });
        let through = {
            let mut h = health(svc);
            h.reason = format!("through the proxy: {}", h.reason);
            if let Step::Health { unit, .. } = &mut h.step {
                unit.clone_from(&proxy.unit);
            }
            h
        };
        let chain = [
            (
                action(
                    format!("slot-ready:{}", svc.name),
                    format!(
                        "the new slot: GET {url} must answer 2xx within {}s",
                        svc.ready_timeout.as_secs()
                    ),
                    Step::SlotReady {
                        unit: svc.unit_name.clone(),
                        slots: cut.slots,
                        url: url.clone(),
                        timeout_secs: svc.ready_timeout.as_secs(),
                    },
                ),
                ActionKind::SlotReady,
            ),
            (
                action(
                    format!("switch-upstream:{}", svc.name),
                    format!(
                        "{} in {}: `- server 127.0.0.1:{{old slot}};` `+ server 127.0.0.1:{{new slot}};`, then {} reloads gracefully{checked}",
                        name, cut.upstream, proxy.unit
                    ),
                    Step::SwitchUpstream {
                        unit: proxy.unit.clone(),
                        slots: cut.slots,
                        upstream: cut.upstream.clone(),
                        check,
                    },
                ),
                ActionKind::SwitchUpstream,
            ),
            (through, ActionKind::Health),
            (
                action(
                    format!("drain:{}", svc.name),
                    format!(
                        "the old slot finishes the requests it has: {}s",
                        cut.drain.as_secs()
                    ),
                    Step::Drain {
                        unit: svc.unit_name.clone(),
                        secs: cut.drain.as_secs(),
                    },
                ),
                ActionKind::Drain,
            ),
            (
                action(
                    format!("slot-stop:{}", svc.name),
                    "the old slot stops: the proxy no longer names it".to_owned(),
                    Step::SlotStop {
                        unit: svc.unit_name.clone(),
                        slots: cut.slots,
                        upstream: Some(cut.upstream.clone()),
                        unlink: None,
                    },
                ),
                ActionKind::SlotStop,
            ),
        ];
        let mut last = first;
        for (next, kind) in chain {
            let n = self.g.push(next, (rank, kind, walk.service));
            self.g.edge(last, n);
            last = n;
        }
        (first, last)
    }

    /// Step 4, the proxy, last: after the last phase and the stops, or,
    /// when nothing else changes, after what the walk began after.
    fn proxy(&mut self, start: &[usize]) {
        let config = self.life.config;
        let (Some(why), Some(p)) = (&self.life.proxy, &config.proxy) else {
            return;
        };
        let (reason, check) = match why {
            ProxyReload::Upstreams { config_changed } => {
                let names = |v: &mut dyn Iterator<Item = usize>| -> Vec<&str> {
                    v.collect::<BTreeSet<usize>>()
                        .into_iter()
                        .map(|i| config.services[i].name.as_str())
                        .collect()
                };
                let bounced = names(&mut self.walked.iter().chain(&self.written).copied());
                let stopped = names(&mut self.stops.iter().map(|(i, _)| *i));
                let mut parts = Vec::new();
                if !bounced.is_empty() {
                    parts.push(format!("upstreams restarted: {}", list(&bounced)));
                }
                if !stopped.is_empty() {
                    parts.push(format!("upstreams stopped: {}", list(&stopped)));
                }
                if !config_changed.is_empty() {
                    let hits: Vec<&str> = config_changed.iter().map(String::as_str).collect();
                    parts.push(format!("its configuration changed: {}", list(&hits)));
                }
                if let Some(c) = &p.check {
                    parts.push(format!("after `{}` passes", c.argv.join(" ")));
                }
                (
                    parts.join("; "),
                    p.check.as_ref().map(|c| Command {
                        argv: c.argv.clone(),
                        timeout_secs: c.timeout.as_secs(),
                    }),
                )
            }
            ProxyReload::Back => (
                "the apply reloaded it: reloaded back with the previous upstreams".to_owned(),
                None,
            ),
        };
        let id = self.g.push(
            Action {
                id: "reload-proxy".to_owned(),
                service: None,
                phase: None,
                reason,
                after: Vec::new(),
                step: Step::ReloadProxy {
                    unit: p.unit.clone(),
                    check,
                },
            },
            (config.phases.len(), ActionKind::ReloadProxy, 0),
        );
        let untouched = self.walked.is_empty() && self.written.is_empty() && self.stops.is_empty();
        let before: Vec<usize> = if untouched {
            start.to_vec()
        } else {
            self.gate
                .iter()
                .copied()
                .chain(self.stops.iter().map(|(_, n)| *n))
                .collect()
        };
        for n in before {
            self.g.edge(n, id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
project "p" { unit-name "p-{service}.service" }
environment "staging" { branch "main"; root "/srv/p" }
phase "db" { unit "postgresql.service"; }
phase "core"
phase "edge"
runtime "node" { build "true" }
service "api"    { runtime "node"; port 1; phase "core" }
service "worker" { runtime "node"; port 2; phase "core"; depends-on "api" }
service "web"    { runtime "node"; port 3; phase "edge" }
service "admin"  { runtime "node"; port 4; phase "edge" }
proxy "nginx" { unit "nginx.service"; check "nginx" "-t"; }
"#;

    fn config() -> Config {
        crate::config::parse("t.kdl", CONFIG).unwrap()
    }

    fn restart_all(c: &Config, order: Order) -> Lifecycle<'_> {
        let mut life = Lifecycle::new(c, order);
        life.walk = (0..c.services.len())
            .map(|i| Walk {
                service: i,
                bounce: Bounce::Restart { release: None },
                reason: "r".to_owned(),
            })
            .collect();
        life.proxy = Some(ProxyReload::Upstreams {
            config_changed: Vec::new(),
        });
        life
    }

    /// Each action as `id <- after`, in plan order.
    fn edges(life: &Lifecycle<'_>) -> Vec<String> {
        let mut g = Graph::default();
        life.walk(&mut g);
        g.into_actions()
            .iter()
            .map(|a| format!("{} <- {}", a.id, a.after.join(" ")))
            .collect()
    }

    /// Forward: phases in order, a service after what it depends on, the
    /// proxy after the last phase's readiness; a phase's infrastructure
    /// restarts first, holding its own settle window.
    #[test]
    fn forward_walks_phases_in_order_with_infrastructure_first() {
        let c = config();
        let mut life = restart_all(&c, Order::Forward);
        life.infrastructure = true;
        assert_eq!(
            edges(&life),
            [
                "restart:postgresql.service <- ",
                "restart:api <- restart:postgresql.service",
                "health:api <- restart:api",
                "restart:worker <- restart:postgresql.service health:api",
                "health:worker <- restart:worker",
                "restart:web <- health:worker",
                "restart:admin <- health:worker",
                "health:web <- restart:web",
                "health:admin <- restart:admin",
                "reload-proxy <- health:web health:admin",
            ]
        );
        let mut g = Graph::default();
        life.walk(&mut g);
        let actions = g.into_actions();
        let settle = |id: &str| match &actions.iter().find(|a| a.id == id).unwrap().step {
            Step::Restart { settle, .. } => *settle,
            other => panic!("{other:?}"),
        };
        assert_eq!(settle("restart:postgresql.service"), Settle::Window);
        assert_eq!(settle("restart:api"), Settle::Probe);
    }

    /// Reverse: the last phase first, a service before what it depends on;
    /// the reload gates on the first phase's services that depend on
    /// nothing there.
    #[test]
    fn reverse_walks_the_last_phase_first_and_dependents_first() {
        let c = config();
        let life = restart_all(&c, Order::Reverse);
        assert_eq!(
            edges(&life),
            [
                "restart:web <- ",
                "restart:admin <- ",
                "health:web <- restart:web",
                "health:admin <- restart:admin",
                "restart:worker <- health:web health:admin",
                "health:worker <- restart:worker",
                "restart:api <- health:web health:admin health:worker",
                "health:api <- restart:api",
                "reload-proxy <- health:api",
            ]
        );
    }

    /// Many waiting for many goes through a barrier; the barrier names
    /// the phase and what it stands for.
    #[test]
    fn a_barrier_stands_between_many_and_many() {
        let c = crate::config::parse(
            "t.kdl",
            &(CONFIG.to_owned()
                + r#"
service "a2" { runtime "node"; port 5; phase "core" }
service "a3" { runtime "node"; port 6; phase "core" }
service "e3" { runtime "node"; port 7; phase "edge" }
"#),
        )
        .unwrap();
        let mut life = restart_all(&c, Order::Forward);
        life.proxy = None;
        let got = edges(&life);
        assert!(
            got.contains(&"ready:core <- health:worker health:a2 health:a3".to_owned()),
            "{got:#?}"
        );
        assert!(
            got.contains(&"restart:e3 <- ready:core".to_owned()),
            "{got:#?}"
        );
        let mut g = Graph::default();
        life.walk(&mut g);
        let ready = g
            .into_actions()
            .into_iter()
            .find(|a| a.id == "ready:core")
            .unwrap();
        assert_eq!(
            ready.reason,
            "every restarted service of phase core is ready"
        );
    }

    /// Going back to nothing deployed: the stop comes before the unit file
    /// goes, one daemon-reload after every write, restarts after it, and
    /// the proxy after both the restarts and the stops.
    #[test]
    fn stops_then_unit_files_then_one_reload_then_the_walk() {
        let c = config();
        let mut life = Lifecycle::new(&c, Order::Reverse);
        life.undeploy.push(Undeploy {
            service: 2,
            reason: "first deploy".to_owned(),
            unlink: "/srv/p/web/current".to_owned(),
        });
        life.units.push(UnitFile {
            service: "web".to_owned(),
            unit: "p-web.service".to_owned(),
            write: UnitWrite::Remove,
            reason: "r".to_owned(),
            enable: false,
        });
        life.units.push(UnitFile {
            service: "api".to_owned(),
            unit: "p-api.service".to_owned(),
            write: UnitWrite::Restore {
                saved: "/saved".to_owned(),
            },
            reason: "r".to_owned(),
            enable: false,
        });
        life.walk.push(Walk {
            service: 0,
            bounce: Bounce::Restart {
                release: Some("/srv/p/api/releases/a".to_owned()),
            },
            reason: "back".to_owned(),
        });
        life.proxy = Some(ProxyReload::Back);
        assert_eq!(
            edges(&life),
            [
                "stop:web <- ",
                "restore-unit:api <- ",
                "remove-unit:web <- stop:web",
                "daemon-reload <- restore-unit:api remove-unit:web",
                "restart:api <- daemon-reload",
                "health:api <- restart:api",
                "reload-proxy <- stop:web health:api",
            ]
        );
    }

    /// A blue/green service is the cutover chain, each step after the one
    /// before: the new slot, its readiness on its own port, the upstream
    /// switch, readiness through the proxy, the drain, the old slot
    /// stopped; a service of a later phase waits for the whole chain.
    /// Services in the default mode walk as before.
    #[test]
    fn a_cutover_service_walks_the_blue_green_chain() {
        let text = CONFIG.replace(
            r#"service "api"    { runtime "node"; port 1; phase "core" }"#,
            r#"service "api"    { runtime "node"; port 1; phase "core"
                cutover "blue-green" { slots 11 12; upstream "/etc/nginx/m/{service}.conf"; drain "3s" } }"#,
        );
        let text = text.replace(r#"runtime "node" { build "true" }"#, r#"runtime "node" { build "true"; unit { exec "/bin/x" "{current}/m.js"; env PORT="{port}" } }"#);
        let c = crate::config::parse("t.kdl", &text).unwrap();
        let api = c.service("api").unwrap();
        assert_eq!(api.unit_name, "p-api@.service");
        assert_eq!(api.slot_unit(12), "p-api@12.service");
        let mut life = restart_all(&c, Order::Forward);
        life.walk.truncate(3);
        assert_eq!(
            edges(&life),
            [
                "slot-start:api <- ",
                "slot-ready:api <- slot-start:api",
                "switch-upstream:api <- slot-ready:api",
                "health:api <- switch-upstream:api",
                "drain:api <- health:api",
                "slot-stop:api <- drain:api",
                "restart:worker <- slot-stop:api",
                "health:worker <- restart:worker",
                "restart:web <- health:worker",
                "health:web <- restart:web",
                "reload-proxy <- health:web",
            ]
        );
        let mut g = Graph::default();
        life.walk(&mut g);
        let actions = g.into_actions();
        let step = |id: &str| actions.iter().find(|a| a.id == id).unwrap().step.clone();
        assert_eq!(
            step("slot-ready:api"),
            Step::SlotReady {
                unit: "p-api@.service".into(),
                slots: [11, 12],
                url: "http://127.0.0.1:{slot}/health/ready".into(),
                timeout_secs: 60,
            }
        );
        assert_eq!(
            step("health:api"),
            Step::Health {
                unit: "nginx.service".into(),
                check: Check::Http {
                    url: "http://127.0.0.1:1/health/ready".into()
                },
                timeout_secs: 60,
            }
        );
        assert_eq!(
            step("switch-upstream:api"),
            Step::SwitchUpstream {
                unit: "nginx.service".into(),
                slots: [11, 12],
                upstream: "/etc/nginx/m/api.conf".into(),
                check: Some(Command {
                    argv: vec!["nginx".into(), "-t".into()],
                    timeout_secs: 900,
                }),
            }
        );
        // Every step reads back from its JSON as itself.
        for a in &actions {
            let json = serde_json::to_value(a).unwrap();
            let back: Action = serde_json::from_value(json).unwrap();
            assert_eq!(&back, a);
        }
        // Stopping stops both slots; undoing a first deploy too.
        let mut life = Lifecycle::new(&c, Order::Reverse);
        life.walk.push(Walk {
            service: 0,
            bounce: Bounce::Stop,
            reason: "stop".to_owned(),
        });
        let mut g = Graph::default();
        life.walk(&mut g);
        let actions = g.into_actions();
        assert_eq!(actions.len(), 1);
        assert!(matches!(
            &actions[0].step,
            Step::SlotStop { upstream: None, .. }
        ));
    }

    /// Stop: the reverse walk, no probes; a dependency stops after its
    /// dependents.
    #[test]
    fn stop_walks_back_without_probes() {
        let c = config();
        let mut life = Lifecycle::new(&c, Order::Reverse);
        life.walk = (0..c.services.len())
            .map(|i| Walk {
                service: i,
                bounce: Bounce::Stop,
                reason: "stop".to_owned(),
            })
            .collect();
        assert_eq!(
            edges(&life),
            [
                "stop:web <- ",
                "stop:admin <- ",
                "stop:worker <- stop:web stop:admin",
                "stop:api <- stop:web stop:admin stop:worker",
            ]
        );
    }
}

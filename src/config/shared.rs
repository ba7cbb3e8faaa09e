//! Environments that share a host: two environments deployed where moorline
//! runs (no `host` nodes), or to a host with the same address, must not use
//! the same root, unit names or ports, or one would take the other's
//! releases, units and sockets over. In: the raw tree (for spans) and the
//! checked configuration; out: one problem per clash, labelled on both
//! environments. Also the check that every port an environment's
//! `port-offset` moves stays a TCP port.

use std::collections::{BTreeMap, BTreeSet};

use super::error::{Problem, ProblemKind};
use super::model::{Config, Environment, Service};
use super::raw::{RawConfig, RawEnvironment};

/// How many clashing unit names or ports a message names before it counts.
const SHOWN: usize = 3;

/// Every port an environment's `port-offset` moves past 65535, on the
/// offset's span.
pub(crate) fn port_overflow(raw: &RawConfig, config: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    for e in &config.environments {
        let Some((port, name)) = config
            .services
            .iter()
            .flat_map(|s| s.ports().map(move |p| (p, &s.name)))
            .max()
        else {
            break;
        };
        if port.checked_add(e.port_offset).is_some() {
            continue;
        }
        let Some(span) = raw_env(raw, &e.name).and_then(|r| r.port_offset.as_ref().map(|o| o.span))
        else {
            continue;
        };
        out.push(Problem::new(
            ProblemKind::PortRange,
            span,
            format!(
                "port-offset {} moves port {} of service `{}` past 65535",
                e.port_offset, port, name
            ),
            "ports out of range",
            format!("choose an offset of at most {}", u16::MAX - port),
        ));
    }
    out
}

/// Every clash between two environments that share a host.
pub(crate) fn problems(raw: &RawConfig, config: &Config) -> Vec<Problem> {
    let resolved: Vec<(&Environment, Config)> = config
        .environments
        .iter()
        .map(|e| {
            let mut c = config.clone();
            c.for_environment(&e.name);
            (e, c)
        })
        .collect();
    let mut out = Vec::new();
    for (i, (a, ca)) in resolved.iter().enumerate() {
        for (b, cb) in &resolved[i + 1..] {
            let Some(host) = shared_host(a, b) else {
                continue;
            };
            let (Some(ra), Some(rb)) = (raw_env(raw, &a.name), raw_env(raw, &b.name)) else {
                continue;
            };
            let pair = format!("environments `{}` and `{}` {host}", a.name, b.name);
            if a.root == b.root
                && let (Some(root_a), Some(root_b)) = (&ra.root, &rb.root)
            {
                out.push(
                    Problem::new(
                        ProblemKind::SharedRoot,
                        root_b.span,
                        format!("{pair} and use the same root {}", b.root),
                        format!("`{}` keeps its releases here", b.name),
                        format!(
                            "give each environment its own root: `{{env}}` in a root is the environment's name, for example root \"/opt/{}/{{env}}\"",
                            config.project.name
                        ),
                    )
                    .also(root_a.span, format!("and so does `{}`", a.name)),
                );
            }
            let units = |c: &Config| -> BTreeSet<String> {
                c.services
                    .iter()
                    .filter(|s| s.unit.is_some())
                    .map(|s| s.unit_name.clone())
                    .collect()
            };
            let same_units: Vec<String> = units(ca).intersection(&units(cb)).cloned().collect();
            if !same_units.is_empty() {
                let template = raw.projects.first().and_then(|p| p.unit_name.as_ref());
                let mut p = Problem::new(
                    ProblemKind::SharedUnitNames,
                    template.map_or_else(|| name_span(rb), |t| t.span),
                    format!(
                        "{pair} and would install the same units: {}",
                        listed(&same_units)
                    ),
                    if template.is_some() {
                        "the same unit names in every environment".to_owned()
                    } else {
                        format!("`{}` installs the same units as `{}`", b.name, a.name)
                    },
                    format!(
                        "put `{{env}}` in the project's unit-name, for example unit-name \"{}-{{env}}-{{service}}.service\"",
                        config.project.name
                    ),
                );
                if template.is_some() {
                    p = p.also(name_span(rb), format!("`{}` on the same host", b.name));
                }
                out.push(p.also(name_span(ra), format!("`{}`", a.name)));
            }
            let ports = |c: &Config| -> BTreeMap<u16, String> {
                c.services
                    .iter()
                    .flat_map(|s| s.ports().map(|p| (p, s.name.clone())))
                    .collect()
            };
            let (pa, pb) = (ports(ca), ports(cb));
            let same_ports: Vec<String> = pb
                .iter()
                .filter(|(p, _)| pa.contains_key(p))
                .map(|(p, s)| format!("{p} ({s} in `{}`, {} in `{}`)", b.name, pa[p], a.name))
                .collect();
            if !same_ports.is_empty() {
                let offset = suggested_offset(config, a.port_offset);
                out.push(
                    Problem::new(
                        ProblemKind::SharedPorts,
                        rb.port_offset.as_ref().map_or_else(|| name_span(rb), |o| o.span),
                        format!(
                            "{pair} and would listen on the same ports: {}",
                            listed(&same_ports)
                        ),
                        format!("`{}` listens on `{}`'s ports", b.name, a.name),
                        match offset {
                            Some(o) => format!(
                                "move one environment's ports with port-offset, for example port-offset {o} in environment `{}`",
                                b.name
                            ),
                            None => "move one environment's ports with port-offset (added to every service's port there), or deploy the environments to different hosts".to_owned(),
                        },
                    )
                    .also(name_span(ra), format!("`{}`", a.name)),
                );
            }
        }
    }
    out
}

/// Whether `a` and `b` deploy to the same host, in words ("both deploy
/// where moorline runs", "both deploy to host 10.0.0.5"); `None`: they do
/// not.
fn shared_host(a: &Environment, b: &Environment) -> Option<String> {
    match (a.hosts.is_empty(), b.hosts.is_empty()) {
        (true, true) => Some("both deploy where moorline runs".to_owned()),
        (false, false) => a
            .hosts
            .iter()
            .find(|h| b.hosts.iter().any(|o| o.address == h.address))
            .map(|h| format!("both deploy to host {}", h.address)),
        _ => None,
    }
}

/// An offset for the second environment that moves its ports past the
/// first one's (`base`: the first one's offset) by a round number (a
/// multiple of 1000 larger than the services' port range); `None`: the
/// moved ports would not fit.
fn suggested_offset(config: &Config, base: u16) -> Option<u16> {
    let lo = config.services.iter().flat_map(Service::ports).min()?;
    let hi = config.services.iter().flat_map(Service::ports).max()?;
    let step = (u32::from(hi - lo) + 1).div_ceil(1000) * 1000;
    let o = u32::from(base) + step;
    let o = u16::try_from(o).ok()?;
    hi.checked_add(o).map(|_| o)
}

fn raw_env<'r>(raw: &'r RawConfig, name: &str) -> Option<&'r RawEnvironment> {
    raw.environments
        .iter()
        .find(|e| e.name.as_ref().is_some_and(|n| n.value == name))
}

fn name_span(e: &RawEnvironment) -> miette::SourceSpan {
    e.name
        .as_ref()
        .map_or_else(|| miette::SourceSpan::from((0, 0)), |n| n.span)
}

/// The first few of `items`, then how many more.
fn listed(items: &[String]) -> String {
    let shown = items
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    match items.len().saturating_sub(SHOWN) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

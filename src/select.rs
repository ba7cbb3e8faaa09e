//! Which services `start`, `stop`, `enable`, `disable`, `restart` and
//! `logs` act on: `--service` names (all when none), checked against the
//! configuration with a did-you-mean, and optionally the services that
//! depend on them. The commands themselves are plans
//! ([`crate::plan::manual::services`]) run by `commands::services`.

use std::collections::BTreeSet;

use miette::Diagnostic;

use crate::config::{Config, Service, error::suggest};

#[derive(Debug, thiserror::Error, Diagnostic)]
pub(crate) enum OpsError {
    #[error("unknown service `{name}`")]
    #[diagnostic(code(moorline::ops::unknown_service), help("{help}"))]
    UnknownService { name: String, help: String },
    #[error("refusing to {op} without confirmation: there is no terminal to ask on")]
    #[diagnostic(
        code(moorline::ops::unconfirmed),
        help("review the list above and pass --yes")
    )]
    Unconfirmed { op: &'static str },
    #[error(
        "cannot enable blue/green service `{service}`: its upstream file {upstream} names no slot of {slot_a} and {slot_b}"
    )]
    #[diagnostic(
        code(moorline::ops::no_live_slot),
        help(
            "a blue/green service's template unit cannot be enabled itself; moorline enables the slot the proxy names, which `moorline apply` (or `moorline start`) writes to the upstream file"
        )
    )]
    NoLiveSlot {
        service: String,
        upstream: String,
        slot_a: u16,
        slot_b: u16,
    },
}

/// The services named by `--service` (all when none), plus their dependents if asked, in
/// configuration order. Every unknown name is an error with a did-you-mean.
pub(crate) fn select<'c>(
    config: &'c Config,
    names: &[String],
    with_dependents: bool,
) -> Result<Vec<&'c Service>, OpsError> {
    if names.is_empty() {
        return Ok(config.services.iter().collect());
    }
    let all: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
    let mut chosen: BTreeSet<&str> = BTreeSet::new();
    for n in names {
        let Some(found) = all.iter().find(|a| **a == n.as_str()) else {
            let help = match suggest(n, &all) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("services: {}", all.join(", ")),
            };
            return Err(OpsError::UnknownService {
                name: n.clone(),
                help,
            });
        };
        chosen.insert(found);
    }
    if with_dependents {
        loop {
            let before = chosen.len();
            for s in &config.services {
                if s.depends_on.iter().any(|d| chosen.contains(d.as_str())) {
                    chosen.insert(s.name.as_str());
                }
            }
            if chosen.len() == before {
                break;
            }
        }
    }
    Ok(config
        .services
        .iter()
        .filter(|s| chosen.contains(s.name.as_str()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::plan::manual::tests::config;

    #[test]
    fn select_with_dependents_and_did_you_mean() {
        let c = config();
        let names = |v: Vec<&Service>| v.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(select(&c, &["gateway".into()], true).unwrap()),
            vec!["gateway", "backend"]
        );
        assert_eq!(
            names(select(&c, &["auth".into()], false).unwrap()),
            vec!["auth"]
        );
        let err = select(&c, &["backedn".into()], false).unwrap_err();
        assert_eq!(err.to_string(), "unknown service `backedn`");
        let OpsError::UnknownService { help, .. } = err else {
            panic!()
        };
        assert_eq!(help, "did you mean `backend`?");
    }
}

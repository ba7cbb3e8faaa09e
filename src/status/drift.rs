//! Drift: what differs between what moorline recorded, what the configuration renders and what
//! runs; a pure function of its inputs, tested in table form.

use super::{Drift, DriftKind, short};
use crate::systemd::ActiveState;

impl Drift {
    pub(super) fn new(kind: DriftKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
        }
    }
}

/// What the drift of one service is decided on (pure, so it is tested in table form).
pub(super) struct DriftInputs<'a> {
    pub(super) state_exists: bool,
    pub(super) recorded_revision: Option<&'a str>,
    pub(super) recorded_unit_sha: Option<&'a str>,
    pub(super) live: Option<&'a str>,
    pub(super) active_state: &'a ActiveState,
    pub(super) installed: Option<&'a [u8]>,
    pub(super) rendered: Option<&'a str>,
}

pub(super) fn service_drift(i: &DriftInputs<'_>) -> Vec<Drift> {
    let mut out = Vec::new();
    match (i.recorded_revision, i.live) {
        (None, _) if i.state_exists => out.push(Drift::new(
            DriftKind::NeverDeployed,
            "not in the state: never deployed to this environment",
        )),
        (Some(rec), None) => out.push(Drift::new(
            DriftKind::NoRelease,
            format!(
                "state says {} is live, but there is no current symlink",
                short(rec)
            ),
        )),
        (Some(rec), Some(live)) if rec != live => out.push(Drift::new(
            DriftKind::CurrentMismatch,
            format!(
                "current points at {}, the state says {}",
                short(live),
                short(rec)
            ),
        )),
        _ => {}
    }
    if *i.active_state != ActiveState::Active {
        out.push(Drift::new(
            DriftKind::NotActive,
            format!("unit is {}", i.active_state),
        ));
    }
    if let Some(rendered) = i.rendered {
        match i.installed {
            None => out.push(Drift::new(
                DriftKind::UnitFileMissing,
                "the configuration declares the unit, but no unit file is installed",
            )),
            Some(bytes) => {
                let sha = crate::files::sha256_hex(bytes);
                if let Some(rec) = i.recorded_unit_sha
                    && rec != sha
                {
                    out.push(Drift::new(
                        DriftKind::UnitFileEdited,
                        "the installed unit file was changed after moorline installed it",
                    ));
                } else if bytes != rendered.as_bytes() {
                    out.push(Drift::new(
                        DriftKind::UnitFileOutdated,
                        "the installed unit file differs from what the configuration renders",
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs<'a>() -> DriftInputs<'a> {
        DriftInputs {
            state_exists: true,
            recorded_revision: Some("aaaaaaaaaaaa"),
            recorded_unit_sha: None,
            live: Some("aaaaaaaaaaaa"),
            active_state: &ActiveState::Active,
            installed: Some(b"unit"),
            rendered: Some("unit"),
        }
    }

    fn kinds(i: &DriftInputs<'_>) -> Vec<DriftKind> {
        service_drift(i).into_iter().map(|d| d.kind).collect()
    }

    #[test]
    fn check_fails_on_what_needs_action_only() {
        use DriftKind as K;
        for (kind, fails) in [
            (K::UnitFileEdited, true),
            (K::UnitFileOutdated, true),
            (K::UnitFileMissing, true),
            (K::CurrentMismatch, true),
            (K::NotActive, true),
            (K::NoRelease, true),
            (K::NeverDeployed, true),
            (K::BehindBranch, false),
            (K::RolledBack, false),
            (K::ArtifactMismatch, true),
        ] {
            assert_eq!(kind.fails_check(), fails, "{kind:?}");
        }
        let first = crate::state::ManualRollback::after(None, "a1", &["b".into(), "c".into()]);
        let second =
            crate::state::ManualRollback::after(Some(first), "a2", &["c".into(), "d".into()]);
        assert_eq!(second.services, ["b", "c", "d"]);
        assert_eq!(second.apply_id, "a2");
    }

    #[test]
    fn drift_table() {
        let sha_of_unit = crate::files::sha256_hex(b"unit");
        let cases: Vec<(&str, DriftInputs<'_>, Vec<DriftKind>)> = vec![
            ("clean", inputs(), vec![]),
            (
                "clean with recorded sha",
                DriftInputs {
                    recorded_unit_sha: Some(&sha_of_unit),
                    ..inputs()
                },
                vec![],
            ),
            (
                "edited by hand",
                DriftInputs {
                    recorded_unit_sha: Some(&sha_of_unit),
                    installed: Some(b"unit\nNice=5\n"),
                    ..inputs()
                },
                vec![DriftKind::UnitFileEdited],
            ),
            (
                "config changed since",
                DriftInputs {
                    rendered: Some("unit v2"),
                    ..inputs()
                },
                vec![DriftKind::UnitFileOutdated],
            ),
            (
                "missing unit",
                DriftInputs {
                    installed: None,
                    ..inputs()
                },
                vec![DriftKind::UnitFileMissing],
            ),
            (
                "hand-managed unit",
                DriftInputs {
                    installed: None,
                    rendered: None,
                    ..inputs()
                },
                vec![],
            ),
            (
                "current moved",
                DriftInputs {
                    live: Some("bbbbbbbbbbbb"),
                    ..inputs()
                },
                vec![DriftKind::CurrentMismatch],
            ),
            (
                "no current",
                DriftInputs {
                    live: None,
                    ..inputs()
                },
                vec![DriftKind::NoRelease],
            ),
            (
                "stopped",
                DriftInputs {
                    active_state: &ActiveState::Inactive,
                    ..inputs()
                },
                vec![DriftKind::NotActive],
            ),
            (
                "not in state",
                DriftInputs {
                    recorded_revision: None,
                    ..inputs()
                },
                vec![DriftKind::NeverDeployed],
            ),
            (
                "no state at all (reported once, at environment level)",
                DriftInputs {
                    state_exists: false,
                    recorded_revision: None,
                    ..inputs()
                },
                vec![],
            ),
        ];
        for (name, i, want) in cases {
            assert_eq!(kinds(&i), want, "{name}");
        }
    }
}

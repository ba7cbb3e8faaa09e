//! Saved plan files: a path (`-`: standard input) in, a host's [`Plan`] or
//! a [`FleetPlan`] out. A file is refused before it is parsed when it is
//! not a regular file or larger than [`crate::plan::PLAN_FILE_CAP`], and
//! refused whole when an object in it holds a key twice or its format
//! version is not this moorline's: a plan is never read as another format.

use std::path::Path;

use miette::Diagnostic;

use crate::fleet::plan::{FLEET_FORMAT_VERSION, FleetPlan};
use crate::plan::Plan;

#[derive(Debug, thiserror::Error, Diagnostic)]
pub(crate) enum PlanFileError {
    #[error("cannot read the saved plan {path}")]
    #[diagnostic(
        code(moorline::apply::bad_plan_file),
        help("pass a file written by `moorline plan --out`")
    )]
    BadPlanFile { path: String, reason: String },
    #[error("refusing to read the plan file {path}: {kind}, not a regular file")]
    #[diagnostic(
        code(moorline::apply::plan_not_a_file),
        help(
            "pass a plan file written by `moorline plan --out`, or `-` to read the plan from standard input"
        )
    )]
    PlanNotAFile { path: String, kind: &'static str },
    #[error(
        "refusing to read the plan file {path}: it holds {size} bytes or more, over the limit of {cap}"
    )]
    #[diagnostic(
        code(moorline::apply::plan_too_large),
        help(
            "a plan moorline writes is far smaller (a 2,000-service first deploy takes a few MB); pass a file written by `moorline plan --out`"
        )
    )]
    PlanTooLarge { path: String, size: u64, cap: u64 },
    #[error("refusing the plan file {path}: {reason}")]
    #[diagnostic(
        code(moorline::apply::plan_duplicate_key),
        help(
            "moorline never writes a key twice; one of the two values would be ignored, so the file may not say what its reviewer read. Make the plan again with `moorline plan --out`"
        )
    )]
    PlanDuplicateKey { path: String, reason: String },
    #[error(
        "the saved plan {path} has format_version {found}; this moorline reads only {expected}"
    )]
    #[diagnostic(
        code(moorline::plan::format_version),
        help(
            "it was written by {writer}; make the plan again with this moorline (`moorline plan --env ENV --out FILE`), or apply it with the moorline that wrote it"
        )
    )]
    FormatVersion {
        path: String,
        found: String,
        expected: u32,
        writer: String,
    },
}

/// What a saved plan file holds.
#[derive(Debug)]
pub(crate) enum Saved {
    /// One host's plan (`moorline plan --out` of an environment without
    /// hosts, or on a host).
    Host(Box<Plan>),
    /// A fleet plan (`moorline plan --out` on a fleet controller).
    Fleet(Box<FleetPlan>),
}

/// Reads the plan file at `path`: a fleet plan when it has a
/// `fleet_format_version` (standard input is always a host's plan: it is
/// how a controller hands a host its plan), else a host's plan.
pub(crate) fn read(path: &Path) -> Result<Saved, PlanFileError> {
    let bytes = read_bytes(path)?;
    let value = parse_json(path, &bytes)?;
    let bad = |reason: String| PlanFileError::BadPlanFile {
        path: path.display().to_string(),
        reason,
    };
    if path != Path::new("-") {
        match value.get("fleet_format_version") {
            None => {}
            Some(v) if v.as_u64() == Some(u64::from(FLEET_FORMAT_VERSION)) => {
                return Ok(Saved::Fleet(Box::new(
                    serde_json::from_value(value).map_err(|e| bad(e.to_string()))?,
                )));
            }
            Some(v) => {
                return Err(bad(format!(
                    "fleet_format_version {v}; this moorline reads only {FLEET_FORMAT_VERSION}"
                )));
            }
        }
    }
    if let Some(found) = crate::plan::foreign_format_version(&value) {
        return Err(PlanFileError::FormatVersion {
            path: path.display().to_string(),
            found,
            expected: crate::plan::FORMAT_VERSION,
            writer: value
                .pointer("/inputs/moorline_version")
                .and_then(serde_json::Value::as_str)
                .map_or_else(
                    || "another version of moorline".to_owned(),
                    |v| format!("moorline {}", crate::plan::clip(v)),
                ),
        });
    }
    Ok(Saved::Host(Box::new(
        serde_json::from_value(value).map_err(|e| bad(e.to_string()))?,
    )))
}

/// The bytes of a plan file (`-`: standard input), refused when it is not
/// a regular file or larger than [`crate::plan::PLAN_FILE_CAP`].
fn read_bytes(path: &Path) -> Result<Vec<u8>, PlanFileError> {
    use crate::json_file::{self, ReadError};
    let cap = crate::plan::PLAN_FILE_CAP;
    let read = if path == Path::new("-") {
        json_file::read_capped(std::io::stdin().lock(), cap)
    } else {
        json_file::read(path, cap)
    };
    let path = path.display().to_string();
    read.map_err(|e| match e {
        ReadError::NotAFile(kind) => PlanFileError::PlanNotAFile { path, kind },
        ReadError::TooLarge { size, cap } => PlanFileError::PlanTooLarge { path, size, cap },
        ReadError::Io(e) => PlanFileError::BadPlanFile {
            path,
            reason: e.to_string(),
        },
    })
}

/// A plan file's JSON, refused when an object in it holds a key twice.
fn parse_json(path: &Path, bytes: &[u8]) -> Result<serde_json::Value, PlanFileError> {
    use crate::json_file::JsonError;
    crate::json_file::parse_unique(bytes).map_err(|e| match e {
        JsonError::Duplicate(reason) => PlanFileError::PlanDuplicateKey {
            path: path.display().to_string(),
            reason,
        },
        JsonError::Syntax(e) => PlanFileError::BadPlanFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `read` should make of a file: `Ok("host"|"fleet")`, or the
    /// refusal's code and a piece of its message.
    type Want = Result<&'static str, (&'static str, &'static str)>;

    #[test]
    fn a_plan_file_is_a_host_plan_or_a_fleet_plan_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let host =
            serde_json::to_string(&crate::fleet::plan::tests::plan(None, "f", &["web"])).unwrap();
        let fleet = serde_json::json!({
            "fleet_format_version": 1, "project": "p", "environment": "e",
            "to": {"spec": "b", "sha": "b", "summary": ""},
            "rollout": {"canary": 0, "batches": ["100%"], "max_fail": 0, "pause_secs": 0, "connections": 8},
            "hosts": [], "groups": [], "batches": [],
            "rollback": {"hosts": [], "summary": ""}, "fingerprint": "x"
        })
        .to_string();
        let cases: Vec<(String, Want)> = vec![
            (host, Ok("host")),
            (fleet, Ok("fleet")),
            (
                r#"{"fleet_format_version": 9}"#.to_owned(),
                Err((
                    "moorline::apply::bad_plan_file",
                    "fleet_format_version 9; this moorline reads only 1",
                )),
            ),
            (
                r#"{"format_version": 99, "inputs": {"moorline_version": "9.9"}}"#.to_owned(),
                Err((
                    "moorline::plan::format_version",
                    "has format_version 99; this moorline reads only",
                )),
            ),
            (
                r#"{"a": 1, "a": 2}"#.to_owned(),
                Err((
                    "moorline::apply::plan_duplicate_key",
                    "refusing the plan file",
                )),
            ),
        ];
        for (i, (text, want)) in cases.into_iter().enumerate() {
            let path = dir.path().join(format!("{i}.json"));
            std::fs::write(&path, text).unwrap();
            match (read(&path), want) {
                (Ok(Saved::Host(_)), Ok("host")) | (Ok(Saved::Fleet(_)), Ok("fleet")) => {}
                (Err(e), Err((code, text))) => {
                    let shown = match &e {
                        PlanFileError::BadPlanFile { reason, .. } => reason.clone(),
                        other => other.to_string(),
                    };
                    let got = e.code().map(|c| c.to_string()).unwrap_or_default();
                    assert_eq!(got, code, "case {i}");
                    assert!(shown.contains(text), "case {i}: {shown}");
                }
                (got, want) => panic!("case {i}: {got:?}, wanted {want:?}"),
            }
        }
    }
}

//! The events a host apply streams to the controller: one serde enum both
//! ends use. `apply`, `apply --resume` and `rollback` with `--format json`
//! print one [`Event`] per line on standard output; the fleet controller
//! reads each line back with [`Event::parse`] and shows it with its host.
//! A line is a JSON object tagged by `event`, its keys in sorted order (as
//! the stream was before it was typed). docs/plan-format.md lists every
//! event, its fields and when it is sent.

use serde::{Deserialize, Serialize};

/// What a progress event is about: an action's id (or, for some events,
/// the signal, environment or service) and a one-line detail, redacted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Step {
    pub(crate) action: String,
    #[serde(default)]
    pub(crate) detail: String,
    /// `FAILED` of a restart, start or readiness check: what systemd and
    /// the journal said about the unit (its lines are also in `detail`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(crate) unit: Option<UnitFailure>,
}

/// A unit whose restart, start or readiness check failed, as systemd and
/// the journal saw it at that moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UnitFailure {
    pub(crate) name: String,
    /// How its last main process ended (`ExecMainCode`, `ExecMainStatus`,
    /// `ExecMainPID`, `NRestarts`); absent when it could not be read.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(crate) exit: Option<crate::systemd::MainExit>,
    /// Its last journal lines, redacted (empty when none could be read).
    #[serde(default)]
    pub(crate) journal: Vec<String>,
    /// Why there are no journal lines, when there are none.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub(crate) journal_unavailable: Option<String>,
}

/// One line of a host's event stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event")]
pub(crate) enum Event {
    /// An action started (`detail` empty).
    #[serde(rename = "start")]
    Start(Step),
    /// An action succeeded (`detail`: its note, e.g. `ready in 120 ms`).
    #[serde(rename = "done")]
    Done(Step),
    /// An action failed (`detail`: the error with its causes).
    #[serde(rename = "FAILED")]
    Failed(Step),
    /// On resume, an action the interrupted apply finished was found still
    /// in effect and is not run again.
    #[serde(rename = "verified")]
    Verified(Step),
    /// SIGINT or SIGTERM arrived (`action`: the signal's name): no new
    /// action starts, running ones finish.
    #[serde(rename = "signal")]
    Signal(Step),
    /// A rollback starts (`action`: the environment; `detail`: why).
    #[serde(rename = "rollback")]
    Rollback(Step),
    /// A service is back (`action`: the service; `detail`: on what).
    #[serde(rename = "rolled-back")]
    RolledBack(Step),
    /// The last line: the apply's report (`apply::Report`, redacted).
    #[serde(rename = "report")]
    Report { report: serde_json::Value },
    /// Never sent by a host: the controller's wrapping of a line of a
    /// host's standard output that is not an event.
    #[serde(rename = "output")]
    Output { detail: String },
}

impl Event {
    /// The event's name (its `event` field).
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Start(_) => "start",
            Self::Done(_) => "done",
            Self::Failed(_) => "FAILED",
            Self::Verified(_) => "verified",
            Self::Signal(_) => "signal",
            Self::Rollback(_) => "rollback",
            Self::RolledBack(_) => "rolled-back",
            Self::Report { .. } => "report",
            Self::Output { .. } => "output",
        }
    }

    /// The progress part, for the events that have one.
    pub(crate) fn step(&self) -> Option<&Step> {
        match self {
            Self::Start(s)
            | Self::Done(s)
            | Self::Failed(s)
            | Self::Verified(s)
            | Self::Signal(s)
            | Self::Rollback(s)
            | Self::RolledBack(s) => Some(s),
            Self::Report { .. } | Self::Output { .. } => None,
        }
    }

    /// A line of the stream, or `None` for anything else a host printed.
    pub(crate) fn parse(line: &str) -> Option<Self> {
        serde_json::from_str(line).ok()
    }

    /// The event as one JSON line (without the newline).
    pub(crate) fn to_line(&self) -> String {
        self.value().to_string()
    }

    /// The event as the controller shows it with `--format json`: with the
    /// host it came from.
    pub(crate) fn to_line_from(&self, host: &str) -> String {
        let mut v = self.value();
        if let serde_json::Value::Object(m) = &mut v {
            m.insert("host".to_owned(), host.into());
        }
        v.to_string()
    }

    /// As a line of text (`      done build:api: 12 files`), for the
    /// progress events; `None` for the others.
    pub(crate) fn text(&self) -> Option<String> {
        let s = self.step()?;
        let name = self.name();
        Some(if s.detail.is_empty() {
            format!("{name:>10} {}", s.action)
        } else {
            format!("{name:>10} {}: {}", s.action, s.detail)
        })
    }

    /// Through a `Value`, whose map keeps its keys sorted: the bytes of the
    /// stream do not depend on the order of the fields here.
    fn value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(action: &str, detail: &str) -> Step {
        Step {
            action: action.to_owned(),
            detail: detail.to_owned(),
            unit: None,
        }
    }

    /// The lines are what the stream carried while it was built with
    /// `json!` maps, and read back to the same event.
    #[test]
    fn lines_keep_their_bytes_and_read_back() {
        let cases = [
            (
                Event::Start(step("build:api", "")),
                r#"{"action":"build:api","detail":"","event":"start"}"#,
            ),
            (
                Event::Done(step("health:api", "ready in 12 ms")),
                r#"{"action":"health:api","detail":"ready in 12 ms","event":"done"}"#,
            ),
            (
                Event::Failed(step("restart:api", "x failed")),
                r#"{"action":"restart:api","detail":"x failed","event":"FAILED"}"#,
            ),
            (
                Event::Verified(step("build:api", "done before the interruption")),
                r#"{"action":"build:api","detail":"done before the interruption","event":"verified"}"#,
            ),
            (
                Event::Signal(step("SIGINT", "no new action starts")),
                r#"{"action":"SIGINT","detail":"no new action starts","event":"signal"}"#,
            ),
            (
                Event::Rollback(step("staging", "because build:api failed")),
                r#"{"action":"staging","detail":"because build:api failed","event":"rollback"}"#,
            ),
            (
                Event::RolledBack(step("api", "back to abc")),
                r#"{"action":"api","detail":"back to abc","event":"rolled-back"}"#,
            ),
            (
                Event::Report {
                    report: serde_json::json!({"outcome": "succeeded", "apply_id": "1"}),
                },
                r#"{"event":"report","report":{"apply_id":"1","outcome":"succeeded"}}"#,
            ),
        ];
        for (event, line) in cases {
            assert_eq!(event.to_line(), line);
            assert_eq!(Event::parse(line).as_ref(), Some(&event), "{line}");
        }
        assert_eq!(
            Event::Done(step("a", "b")).to_line_from("web1"),
            r#"{"action":"a","detail":"b","event":"done","host":"web1"}"#
        );
        let failed = Event::Failed(Step {
            unit: Some(UnitFailure {
                name: "a.service".into(),
                exit: Some(crate::systemd::MainExit {
                    result: "exit-code".into(),
                    code: crate::systemd::MainCode::Exited,
                    status: 1,
                    pid: 42,
                    restarts: 2,
                }),
                journal: vec!["boom".into()],
                journal_unavailable: None,
            }),
            ..step("restart:a", "x failed")
        });
        let line = failed.to_line();
        assert_eq!(
            line,
            r#"{"action":"restart:a","detail":"x failed","event":"FAILED","unit":{"exit":{"exec_main_code":"exited","exec_main_pid":42,"exec_main_status":1,"n_restarts":2,"result":"exit-code"},"journal":["boom"],"name":"a.service"}}"#
        );
        assert_eq!(Event::parse(&line), Some(failed));
        assert_eq!(Event::parse("Cloning into..."), None);
        assert_eq!(Event::parse(r#"{"event":"later","action":"a"}"#), None);
    }

    #[test]
    fn progress_events_read_as_text() {
        assert_eq!(
            Event::Done(step("build:api", "3 files")).text().as_deref(),
            Some("      done build:api: 3 files")
        );
        assert_eq!(
            Event::Start(step("build:api", "")).text().as_deref(),
            Some("     start build:api")
        );
        let report = Event::Report {
            report: serde_json::Value::Null,
        };
        assert_eq!(report.text(), None);
    }
}

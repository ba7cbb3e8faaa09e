//! Commands a killed moorline left running: every command an apply,
//! resume or rollback starts is recorded in its journal right after it
//! started (a [`Group`]: its process group and what tells that group from
//! a later one with the same number); `apply --resume` and `rollback` stop
//! the groups of the interrupted apply that still run ([`stop`]) before
//! they act. SIGKILL gives moorline no chance to stop them itself.
//!
//! A group is recognised, never guessed: the boot must be the same, and
//! the group's leader must still be the recorded process (same start time)
//! or, the leader gone, every process left in the group must belong to
//! the recorded session and have started no earlier than the leader did.
//! A process id reused by anything else is not touched.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long a group has after SIGTERM before it gets SIGKILL.
pub(crate) const STOP_GRACE: Duration = super::DRAIN_GRACE;

/// A started command's process group, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Group {
    /// The group's id: the command's pid (it leads its own group).
    pub(crate) pgid: u32,
    /// When the leader started, in clock ticks since boot
    /// (`/proc/PID/stat` field 22).
    pub(crate) start_time: u64,
    /// The leader's session (moorline's own).
    pub(crate) session: u32,
    /// `/proc/sys/kernel/random/boot_id`: after a reboot nothing recorded
    /// before it runs.
    pub(crate) boot_id: String,
}

/// Records a started command's group durably; an error stops the command.
pub(crate) type Recorder = Arc<dyn Fn(&Group) -> Result<(), RecordError> + Send + Sync>;

/// Why a started command's group was not recorded (the command is then
/// stopped).
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordError {
    #[error("reading /proc/{leader}/stat: {error}")]
    Identify { leader: u32, error: std::io::Error },
    #[error("the command ended before its pid was known")]
    Ended,
    #[error("{error}")]
    Task { error: tokio::task::JoinError },
    /// The recorder could not write the record; its own error is kept by
    /// whoever installed it.
    #[error("{message}")]
    Write { message: String },
}

tokio::task_local! {
    static RECORDER: Recorder;
}

/// Runs `f` with every command it starts (through [`super::run`], in
/// this task) recorded by `recorder` before its output is read.
pub(crate) async fn recorded<F: Future>(recorder: Recorder, f: F) -> F::Output {
    RECORDER.scope(recorder, f).await
}

/// The recorder of the current task, if any.
pub(super) fn recorder() -> Option<Recorder> {
    RECORDER.try_with(Arc::clone).ok()
}

/// What `/proc/PID/stat` says about one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    pid: u32,
    zombie: bool,
    pgrp: u32,
    session: u32,
    start_time: u64,
}

/// Parses `/proc/PID/stat` text (the command name may hold spaces and
/// parentheses: fields are counted after its last `)`).
fn parse_stat(text: &str) -> Option<Stat> {
    let (head, rest) = text.rsplit_once(')')?;
    let pid = head.split_whitespace().next()?.parse().ok()?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field N is f[N - 3].
    Some(Stat {
        pid,
        zombie: matches!(*f.first()?, "Z" | "X"),
        pgrp: f.get(2)?.parse().ok()?,
        session: f.get(3)?.parse().ok()?,
        start_time: f.get(19)?.parse().ok()?,
    })
}

fn stat_of(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn boot_id() -> std::io::Result<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_owned())
}

/// The group `pid` leads, read from /proc (the process was just started
/// and not yet waited for, so it is there, at worst as a zombie).
pub(crate) fn identify(pid: u32) -> std::io::Result<Group> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).and_then(|t| {
        parse_stat(&t).ok_or_else(|| std::io::Error::other(format!("cannot parse {path}")))
    })?;
    Ok(Group {
        pgid: stat.pgrp,
        start_time: stat.start_time,
        session: stat.session,
        boot_id: boot_id()?,
    })
}

/// The live (not zombie) processes of `g`, if the group running under its
/// id is the recorded one; empty otherwise.
fn members(g: &Group, boot: &str) -> Vec<u32> {
    if g.boot_id != boot {
        return Vec::new();
    }
    let leader = stat_of(g.pgid);
    if leader.is_some_and(|l| l.start_time != g.start_time) {
        // The id belongs to another process: the recorded group ended
        // (an id is not reused while a group has it).
        return Vec::new();
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let in_group: Vec<Stat> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(stat_of)
        .filter(|s| s.pgrp == g.pgid && !s.zombie)
        .collect();
    let ours = leader.is_some()
        || in_group
            .iter()
            .all(|s| s.session == g.session && s.start_time >= g.start_time);
    if ours {
        in_group.into_iter().map(|s| s.pid).collect()
    } else {
        Vec::new()
    }
}

fn signal_group(pgid: u32, sig: rustix::process::Signal) {
    if let Some(p) = i32::try_from(pgid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(p, sig);
    }
}

/// Stops the recorded groups that still run: SIGTERM, up to `grace` to
/// end, then SIGKILL. Returns the labels and group ids of those it found
/// running.
pub(crate) async fn stop(groups: Vec<(String, Group)>, grace: Duration) -> Vec<(String, u32)> {
    let Ok(boot) = boot_id() else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for (label, g) in groups {
        if found
            .iter()
            .any(|(_, f): &(String, Group)| f.pgid == g.pgid)
        {
            continue;
        }
        if !members(&g, &boot).is_empty() {
            signal_group(g.pgid, rustix::process::Signal::TERM);
            found.push((label, g));
        }
    }
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        let running: Vec<&Group> = found
            .iter()
            .map(|(_, g)| g)
            .filter(|g| !members(g, &boot).is_empty())
            .collect();
        if running.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            for g in running {
                signal_group(g.pgid, rustix::process::Signal::KILL);
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    found.into_iter().map(|(l, g)| (l, g.pgid)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::process::CommandExt;
    use std::sync::Mutex;

    /// A command in a group of its own that ignores SIGTERM in its
    /// background child, as a build tool might; the group, recorded.
    fn start(script: &str) -> (std::process::Child, Group) {
        let child = std::process::Command::new("sh")
            .args(["-c", script])
            .process_group(0)
            .spawn()
            .unwrap();
        let g = identify(child.id()).unwrap();
        assert_eq!(g.pgid, child.id());
        (child, g)
    }

    async fn gone(g: &Group) -> bool {
        let boot = boot_id().unwrap();
        for _ in 0..100 {
            if members(g, &boot).is_empty() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let text = "4242 (a b) c) S 1 4240 4200 0 -1 4194304 0 0 0 0 0 0 0 0 20 0 1 0 987654 0 0";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                pid: 4242,
                zombie: false,
                pgrp: 4240,
                session: 4200,
                start_time: 987_654,
            })
        );
        assert_eq!(parse_stat("12 (x"), None);
    }

    #[tokio::test]
    async fn a_forgotten_group_is_stopped_with_its_background_processes() {
        let (mut child, g) = start("trap '' TERM; sleep 1000 & sleep 1000");
        let boot = boot_id().unwrap();
        // The shell and both sleeps (once the shell forked).
        for _ in 0..100 {
            if members(&g, &boot).len() >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(members(&g, &boot).len() >= 3, "{:?}", members(&g, &boot));
        let stopped = stop(
            vec![
                ("build:api".to_owned(), g.clone()),
                ("build:api".to_owned(), g.clone()),
            ],
            Duration::from_millis(300),
        )
        .await;
        assert_eq!(stopped, vec![("build:api".to_owned(), g.pgid)]);
        assert!(gone(&g).await, "left running: {:?}", members(&g, &boot));
        let _ = child.wait();
        // Stopped once; nothing left to find the second time.
        assert!(stop(vec![("x".to_owned(), g)], STOP_GRACE).await.is_empty());
    }

    #[tokio::test]
    async fn a_group_that_is_not_the_recorded_one_is_left_alone() {
        let (mut child, g) = start("sleep 1000 & sleep 1000");
        let other_process = [
            Group {
                start_time: g.start_time + 1,
                ..g.clone()
            },
            Group {
                start_time: g.start_time - 1,
                ..g.clone()
            },
            Group {
                boot_id: "another boot".to_owned(),
                ..g.clone()
            },
        ];
        for recorded in other_process {
            let stopped = stop(vec![("x".to_owned(), recorded.clone())], STOP_GRACE).await;
            assert!(stopped.is_empty(), "{recorded:?}");
        }
        let boot = boot_id().unwrap();
        // The shell and both sleeps.
        for _ in 0..100 {
            if members(&g, &boot).len() >= 3 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(members(&g, &boot).len(), 3);
        // The leader gone (killed alone and reaped), its background sleep
        // left in the group: recognised by session and start time, and not
        // when those do not fit.
        let leader = rustix::process::Pid::from_raw(i32::try_from(g.pgid).unwrap()).unwrap();
        rustix::process::kill_process(leader, rustix::process::Signal::KILL).unwrap();
        let _ = child.wait();
        assert!(stat_of(g.pgid).is_none());
        assert_eq!(members(&g, &boot).len(), 2, "the sleeps");
        let later = Group {
            start_time: g.start_time + 1_000_000,
            ..g.clone()
        };
        let elsewhere = Group {
            session: g.session + 1,
            ..g.clone()
        };
        assert!(members(&later, &boot).is_empty());
        assert!(members(&elsewhere, &boot).is_empty());
        let stopped = stop(vec![("migrate:db".to_owned(), g.clone())], STOP_GRACE).await;
        assert_eq!(stopped, vec![("migrate:db".to_owned(), g.pgid)]);
        assert!(gone(&g).await);
    }

    #[tokio::test]
    async fn the_runner_records_the_group_before_the_command_ends() {
        let seen: Arc<Mutex<Vec<Group>>> = Arc::default();
        let keep = Arc::clone(&seen);
        let recorder: Recorder = Arc::new(move |g: &Group| {
            keep.lock().unwrap().push(g.clone());
            Ok(())
        });
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let argv = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            format!("echo $$ > {}", pid_file.display()),
        ];
        let log = dir.path().join("x.log");
        let res = recorded(
            recorder,
            super::super::run(super::super::Run {
                argv: &argv,
                dir: None,
                env: &BTreeMap::new(),
                timeout: Duration::from_mins(1),
                log: &log,
            }),
        )
        .await;
        assert!(res.is_ok(), "{res:?}");
        let pid: u32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].pgid, pid);
        assert_eq!(seen[0].boot_id, boot_id().unwrap());

        // A recorder that fails: the command does not run on unrecorded.
        let failing: Recorder = Arc::new(|_: &Group| {
            Err(RecordError::Write {
                message: "disk full".to_owned(),
            })
        });
        let marker = dir.path().join("ran");
        let argv = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            format!("sleep 2; touch {}", marker.display()),
        ];
        let res = recorded(
            failing,
            super::super::run(super::super::Run {
                argv: &argv,
                dir: None,
                env: &BTreeMap::new(),
                timeout: Duration::from_mins(1),
                log: &log,
            }),
        )
        .await;
        assert!(
            matches!(res, Err(super::super::RunError::Unrecorded { .. })),
            "{res:?}"
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!marker.exists());
    }
}

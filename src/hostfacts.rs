//! What a plan needs from the host it runs on, checked before anything changes: a plan and
//! this host go in, every missing fact comes out ([`check`]), each as a coded diagnostic that
//! names the host and the fix. For each service the plan starts or restarts, read from the
//! unit file it will install (exactly what systemd will read): its `User=` and `Group=` exist,
//! its `EnvironmentFile=`s exist (unless marked optional with `-`) and are not readable by
//! others, its program exists and is executable (unless it lies in a release moorline builds),
//! and its port is free or held by a process of the service's own unit. `plan` shows them as
//! warnings; `apply` refuses to start while any is missing.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use miette::Diagnostic;
use thiserror::Error;

use crate::config::{Config, Environment, Service};
use crate::plan::{Plan, Step};
use crate::unit::reader;

/// One fact the host lacks.
#[derive(Debug, Error, Diagnostic)]
pub(crate) enum Missing {
    #[error("{service}: user `{user}` does not exist on {host}")]
    #[diagnostic(
        code(moorline::host::no_such_user),
        help("create it on {host} (`useradd --system {user}`), or change the service's `user`")
    )]
    User {
        host: String,
        service: String,
        user: String,
    },
    #[error("{service}: group `{group}` does not exist on {host}")]
    #[diagnostic(
        code(moorline::host::no_such_group),
        help("create it on {host} (`groupadd --system {group}`), or change the service's `group`")
    )]
    Group {
        host: String,
        service: String,
        group: String,
    },
    #[error("{service}: env-file {path} does not exist on {host}")]
    #[diagnostic(
        code(moorline::host::env_file_missing),
        help(
            "create it on {host} (owned by root, mode 0600 or 0640), or write it as `-{path}` if the service may start without it"
        )
    )]
    EnvFile {
        host: String,
        service: String,
        path: String,
    },
    #[error("{service}: env-file {path} on {host} is readable by every user (mode {mode:04o})")]
    #[diagnostic(
        code(moorline::host::env_file_readable),
        help(
            "it holds the service's settings and often its secrets: `chmod o-rwx {path}` on {host}"
        )
    )]
    EnvFileReadable {
        host: String,
        service: String,
        path: String,
        mode: u32,
    },
    #[error("{service}: program {program} {reason} on {host}")]
    #[diagnostic(
        code(moorline::host::program_missing),
        help(
            "install it on {host}, or correct the service's `exec` (the first word is the program, an absolute path)"
        )
    )]
    Program {
        host: String,
        service: String,
        program: String,
        reason: &'static str,
    },
    #[error("{service}: port {port} on {host} is held by {holder}, not by {unit}")]
    #[diagnostic(
        code(moorline::host::port_taken),
        help(
            "stop what holds it on {host} (`ss -ltnp 'sport = :{port}'` shows it), or give the service another `port`"
        )
    )]
    PortTaken {
        host: String,
        service: String,
        port: u16,
        unit: String,
        holder: String,
    },
}

/// Every missing fact, as one error: what `apply` refuses with.
#[derive(Debug, Error, Diagnostic)]
#[error("{host} lacks what this plan needs ({count} problem(s)); nothing was changed")]
#[diagnostic(
    code(moorline::host::facts),
    help("fix each problem listed on {host}, then plan and apply again")
)]
pub(crate) struct HostFactsError {
    pub(crate) host: String,
    pub(crate) count: usize,
    #[related]
    pub(crate) missing: Vec<Missing>,
}

/// One missing fact as a host of a fleet reports it to the controller, which shows it per host
/// in the fleet plan (`fleet::plan`): its code, message and help, as the diagnostic renders them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Fact {
    pub(crate) code: String,
    pub(crate) message: String,
    pub(crate) help: String,
}

/// The one line `plan --format json` on a host of a fleet prints on standard error when
/// the host lacks something (standard output holds the plan): `{"host_facts": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct FactsLine {
    pub(crate) host_facts: Vec<Fact>,
}

/// `missing` as [`Fact`]s.
pub(crate) fn facts(missing: &[Missing]) -> Vec<Fact> {
    missing
        .iter()
        .map(|m| Fact {
            code: m.code().map(|c| c.to_string()).unwrap_or_default(),
            message: m.to_string(),
            help: m.help().map(|h| h.to_string()).unwrap_or_default(),
        })
        .collect()
}

/// The [`FactsLine`] of `missing`, as printed.
pub(crate) fn facts_line(missing: &[Missing]) -> String {
    serde_json::to_string(&FactsLine {
        host_facts: facts(missing),
    })
    .unwrap_or_default()
}

/// The facts a host's standard error reports (its [`FactsLine`]); none when it has none.
pub(crate) fn parse_facts_line(stderr: &str) -> Vec<Fact> {
    stderr
        .lines()
        .filter(|l| l.starts_with("{\"host_facts\""))
        .find_map(|l| serde_json::from_str::<FactsLine>(l).ok())
        .map(|f| f.host_facts)
        .unwrap_or_default()
}

/// This host's name, as the diagnostics show it.
pub(crate) fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "this host".to_owned())
}

/// The facts missing on this host (`host` names it) for the services `plan` starts or
/// restarts, in the plan's order.
pub(crate) fn check(config: &Config, env: &Environment, plan: &Plan, host: &str) -> Vec<Missing> {
    let mut services: Vec<&Service> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for action in &plan.actions {
        if matches!(
            action.step,
            Step::Restart { .. } | Step::Start { .. } | Step::SlotStart { .. }
        ) && let Some(service) = action.service.as_deref().and_then(|s| config.service(s))
            && seen.insert(service.name.as_str())
        {
            services.push(service);
        }
    }
    let listening: Vec<Listening> = listening_sockets()
        .into_iter()
        .filter(|l| services.iter().any(|s| s.port == Some(l.port)))
        .collect();
    let holders = Holders::of(&listening);
    let mut out = Vec::new();
    for service in services {
        if let Ok(Some(text)) = crate::unit::render(env, service) {
            unit_facts(env, service, &text, host, &mut out);
        }
        // A blue/green service's port is the proxy's: nginx holds it.
        if service.cutover.is_none()
            && let Some(port) = service.port
            && let Some(holder) = holders.foreign(service, port, &listening)
        {
            out.push(Missing::PortTaken {
                host: host.to_owned(),
                service: service.name.clone(),
                port,
                unit: service.unit_name.clone(),
                holder,
            });
        }
    }
    out
}

/// [`check`], as the error `apply` refuses with when anything is missing.
pub(crate) fn refuse_missing(
    config: &Config,
    env: &Environment,
    plan: &Plan,
) -> Result<(), HostFactsError> {
    let host = this_host();
    let missing = check(config, env, plan, &host);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(HostFactsError {
            host,
            count: missing.len(),
            missing,
        })
    }
}

fn unit_facts(
    env: &Environment,
    service: &Service,
    text: &str,
    host: &str,
    out: &mut Vec<Missing>,
) {
    let Ok(entries) = reader::parse(text) else {
        return;
    };
    let value = |v: &str| reader::unescape_specifiers(v).ok();
    for e in entries.iter().filter(|e| e.section == "Service") {
        match e.key.as_str() {
            "User" => {
                if let Some(user) = value(&e.value)
                    && !exists("passwd", &user)
                {
                    out.push(Missing::User {
                        host: host.to_owned(),
                        service: service.name.clone(),
                        user,
                    });
                }
            }
            "Group" => {
                if let Some(group) = value(&e.value)
                    && !exists("group", &group)
                {
                    out.push(Missing::Group {
                        host: host.to_owned(),
                        service: service.name.clone(),
                        group,
                    });
                }
            }
            "EnvironmentFile" => {
                let Some(raw) = value(&e.value) else { continue };
                let (optional, path) = match raw.strip_prefix('-') {
                    Some(p) => (true, p.to_owned()),
                    None => (false, raw),
                };
                match std::fs::metadata(&path) {
                    Ok(m) if m.permissions().mode() & 0o004 != 0 => {
                        out.push(Missing::EnvFileReadable {
                            host: host.to_owned(),
                            service: service.name.clone(),
                            path,
                            mode: m.permissions().mode() & 0o7777,
                        });
                    }
                    Ok(_) => {}
                    Err(_) if optional => {}
                    Err(_) => out.push(Missing::EnvFile {
                        host: host.to_owned(),
                        service: service.name.clone(),
                        path,
                    }),
                }
            }
            "ExecStart" => {
                let Some(program) = reader::exec(&e.value)
                    .ok()
                    .and_then(|a| a.into_iter().next())
                else {
                    continue;
                };
                // A program in a release is built by the plan itself.
                if !program.starts_with('/') || Path::new(&program).starts_with(&env.root) {
                    continue;
                }
                let reason = match std::fs::metadata(&program) {
                    Err(_) => Some("does not exist"),
                    Ok(m) if !m.is_file() => Some("is not a file"),
                    Ok(m) if m.permissions().mode() & 0o111 == 0 => Some("is not executable"),
                    Ok(_) => None,
                };
                if let Some(reason) = reason {
                    out.push(Missing::Program {
                        host: host.to_owned(),
                        service: service.name.clone(),
                        program,
                        reason,
                    });
                }
            }
            _ => {}
        }
    }
}

/// Whether `name` is a user (`database` `passwd`) or group (`group`) here: numeric ids
/// always are; names are asked of `getent` (NSS: LDAP and the like too), else read from
/// `/etc/passwd` or `/etc/group`.
fn exists(database: &str, name: &str) -> bool {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    match std::process::Command::new("getent")
        .args([database, name])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
    {
        Ok(status) => status.success(),
        Err(_) => std::fs::read_to_string(format!("/etc/{database}"))
            .is_ok_and(|t| t.lines().any(|l| l.split(':').next() == Some(name))),
    }
}

/// A listening TCP socket here: its port and socket inode (`/proc/net/tcp`, `tcp6`; `proc(5)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Listening {
    port: u16,
    inode: u64,
}

/// State `0A` is `TCP_LISTEN`.
fn parse_proc_net_tcp(text: &str) -> Vec<Listening> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let port = f.get(1)?.rsplit_once(':')?.1;
            if *f.get(3)? != "0A" {
                return None;
            }
            Some(Listening {
                port: u16::from_str_radix(port, 16).ok()?,
                inode: f.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

fn listening_sockets() -> Vec<Listening> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|t| parse_proc_net_tcp(&t))
        .collect()
}

/// The TCP ports the processes of the cgroup `cgroup` (a unit's `ControlGroup`) listen on:
/// the listening sockets of `/proc/net/tcp` and `tcp6`, held by a process whose
/// `/proc/PID/cgroup` names exactly that cgroup ([`Holders`], as for a port taken). How a
/// readiness wait tells that a unit listens elsewhere than on its configured port; by cgroup,
/// not by PID, since the manager may see its processes in another PID namespace. Processes
/// this user may not look at hold nothing here.
pub(crate) fn ports_of_cgroup(cgroup: &str) -> std::collections::BTreeSet<u16> {
    if cgroup.is_empty() {
        return std::collections::BTreeSet::new();
    }
    let listening = listening_sockets();
    let holders = Holders::of(&listening);
    let own = format!(":{cgroup}");
    listening
        .iter()
        .filter(|l| {
            holders.by_inode.get(&l.inode).is_some_and(|pids| {
                pids.iter().any(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                        .is_ok_and(|c| c.lines().any(|l| l.ends_with(&own)))
                })
            })
        })
        .map(|l| l.port)
        .collect()
}

/// The processes holding each listening socket here: one pass over `/proc/*/fd`, whatever
/// the number of services. Processes this user may not look at are missing.
#[derive(Debug, Default)]
struct Holders {
    /// Socket inode → the PIDs holding it.
    by_inode: BTreeMap<u64, Vec<u32>>,
}

impl Holders {
    fn of(listening: &[Listening]) -> Self {
        let mut by_inode: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
        if listening.is_empty() {
            return Self { by_inode };
        }
        let wanted: BTreeMap<String, u64> = listening
            .iter()
            .map(|l| (format!("socket:[{}]", l.inode), l.inode))
            .collect();
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return Self { by_inode };
        };
        for entry in procs.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                if let Ok(link) = std::fs::read_link(fd.path())
                    && let Some(inode) = wanted.get(link.to_string_lossy().as_ref())
                {
                    let pids = by_inode.entry(*inode).or_default();
                    if !pids.contains(&pid) {
                        pids.push(pid);
                    }
                }
            }
        }
        Self { by_inode }
    }

    /// Who holds `service`'s port, when that is not its own unit: `pid N (comm)`. `None`
    /// when the port is free, held by the unit, or held by a process this user may not look
    /// at.
    fn foreign(&self, service: &Service, port: u16, listening: &[Listening]) -> Option<String> {
        let own = format!("/{}", service.unit_name);
        let mut foreign = None;
        for pid in listening
            .iter()
            .filter(|l| l.port == port)
            .filter_map(|l| self.by_inode.get(&l.inode))
            .flatten()
        {
            let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            if cgroup.lines().any(|l| l.ends_with(&own)) {
                return None;
            }
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let comm: String = comm.trim().chars().filter(|c| !c.is_control()).collect();
            foreign = Some(format!("pid {pid} ({comm})"));
        }
        foreign
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hosts_facts_line_reaches_the_controller_whole() {
        let missing = vec![
            Missing::User {
                host: "app1".to_owned(),
                service: "backend".to_owned(),
                user: "pakashop".to_owned(),
            },
            Missing::EnvFileReadable {
                host: "app1".to_owned(),
                service: "backend".to_owned(),
                path: "/etc/pakashop/backend.env".to_owned(),
                mode: 0o644,
            },
        ];
        let stderr = format!(
            "warning: something else\n{}\nnote: more\n",
            facts_line(&missing)
        );
        let facts = parse_facts_line(&stderr);
        assert_eq!(facts.len(), 2);
        assert_eq!(facts[0].code, "moorline::host::no_such_user");
        assert_eq!(
            facts[0].message,
            "backend: user `pakashop` does not exist on app1"
        );
        assert!(
            facts[0].help.contains("useradd --system pakashop"),
            "{facts:?}"
        );
        assert_eq!(facts[1].code, "moorline::host::env_file_readable");
        assert!(parse_facts_line("warning: nothing typed here\n").is_empty());
    }

    #[test]
    fn reads_listening_sockets_from_proc_net_tcp() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n\
   1: 0100007F:0BB9 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1\n";
        assert_eq!(
            parse_proc_net_tcp(text),
            vec![Listening {
                port: 3000,
                inode: 4242
            }]
        );
    }

    #[test]
    fn the_ports_of_a_cgroup_are_those_its_processes_listen_on() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // This test's own cgroup, as a unit's would be.
        let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let own = cgroup
            .lines()
            .find(|l| l.starts_with("0::"))
            .or_else(|| cgroup.lines().next())
            .and_then(|l| l.splitn(3, ':').nth(2))
            .unwrap_or_default();
        if crate::files::is_root() && !own.is_empty() {
            let ports = ports_of_cgroup(own);
            assert!(ports.contains(&port), "{ports:?} lacks {port} ({own})");
        }
        assert!(ports_of_cgroup("").is_empty());
        assert!(ports_of_cgroup("/moorline-test-nobody.service").is_empty());
    }

    #[test]
    fn numeric_ids_and_root_exist() {
        assert!(exists("passwd", "0"));
        assert!(exists("passwd", "root"));
        assert!(exists("group", "root"));
        assert!(!exists("passwd", "moorline-no-such-user-x"));
    }

    #[test]
    fn a_port_held_by_another_process_is_named() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let config = crate::config::parse("pakashop.kdl", include_str!("../pakashop.kdl")).unwrap();
        let mut service = config.services[0].clone();
        service.port = Some(port);
        service.unit_name = "moorline-test-nobody.service".into();
        let listening = listening_sockets();
        let holder = Holders::of(&listening).foreign(&service, port, &listening);
        if crate::files::is_root() {
            let holder = holder.unwrap();
            assert!(
                holder.starts_with(&format!("pid {} ", std::process::id())),
                "{holder}"
            );
        }
    }
}

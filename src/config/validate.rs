//! Stage two: raw tree → checked `Config`. Resolves references, applies
//! every default once, and collects every cross-node problem (duplicates,
//! ports, cycles, phases, placeholders, unsafe names and paths).

use miette::SourceSpan;
use std::collections::{BTreeMap, HashMap, HashSet};

use super::error::{Problem, ProblemKind, suggest};
use super::model::{
    Backup, BatchSize, Command, Config, Cutover, DEFAULT_BACKUP_KEEP, DEFAULT_COMMAND_TIMEOUT,
    DEFAULT_DRAIN, DEFAULT_HEALTH, DEFAULT_KEEP_RELEASES, DEFAULT_METRICS, DEFAULT_READY,
    DEFAULT_READY_TIMEOUT, DEFAULT_SERVICE_PATH, DEFAULT_UNIT_NAME, DrainHook, EnvValue,
    Environment, FirstDeploy, Host, Migrate, Phase, Project, PromoteFrom, Proxy, ROOT_PATH,
    Readiness, Rollout, Runtime, Schedule, Service, UnitSpec, looks_secret,
};
use super::raw::{
    RawBatch, RawCommand, RawConfig, RawCutover, RawEnv, RawEnvironment, RawService, RawUnit,
    Spanned, Str,
};
use crate::template::{self, Vars};

/// Placeholders allowed in each kind of string.
/// Whether a unit names `{port}` in any value.
fn unit_uses_port(u: &UnitSpec) -> bool {
    let has = |v: &str| {
        template::placeholders(v)
            .iter()
            .any(|(_, name)| *name == "port")
    };
    u.exec.iter().any(|v| has(v))
        || u.env.values().any(|v| has(&v.value))
        || u.env_files.iter().any(|v| has(v))
        || has(&u.working_directory)
        || u.description.as_deref().is_some_and(has)
}

/// The readiness kinds `ready` takes besides a path or URL.
const READY_KINDS: &[&str] = &["tcp", "notify", "exec", "none"];

/// Whether a service's readiness needs its `port`: an HTTP path is asked
/// on it, `tcp` connects to it.
fn needs_port(r: &Readiness, s: &RawService) -> bool {
    match r {
        Readiness::Http => s
            .ready
            .as_ref()
            .is_none_or(|u| !u.value.starts_with("http://") || u.value.contains("{port}")),
        Readiness::Tcp => true,
        Readiness::Notify | Readiness::Exec(_) | Readiness::None => false,
    }
}

const IN_BUILD: &[&str] = &["service", "port", "root", "release", "current"];
/// A dependency step's output is shared by releases: nothing of one
/// release may go into its command.
const IN_DEPS: &[&str] = &["service", "port", "root"];
const IN_UNIT: &[&str] = &["service", "port", "root", "current"];
const IN_BACKUP: &[&str] = &["root", "backup"];
const IN_UNIT_NAME: &[&str] = &["service", "env"];
const IN_SERVICE_PATH: &[&str] = &["service"];
const IN_PLAIN: &[&str] = &[];
/// A drain hook gets the batch's host names and addresses.
const IN_DRAIN: &[&str] = &["hosts", "addresses"];
/// The most hosts a rollout talks to at once: each is an `ssh` process
/// and a control master.
const MAX_CONNECTIONS: i128 = 1024;
/// The most a canary or a failure budget may count.
const MAX_HOSTS: i128 = 100_000;
/// DNS's limit on a host name (RFC 1035), far above any address.
const MAX_ADDRESS: usize = 253;
/// Linux's limit on a user name (`useradd`, `LOGIN_NAME_MAX` - 1).
const MAX_USER: usize = 32;

/// Why `a` cannot be a host's address (what `ssh` connects to), if it
/// cannot. It lands in ssh's argv: a leading `-` would be an option.
fn address_fault(a: &str) -> Option<&'static str> {
    if a.is_empty() {
        Some("it is empty")
    } else if a.starts_with('-') {
        Some("it starts with `-`, which ssh would read as an option")
    } else if a.contains('@') {
        Some("it contains `@`; give the user as user=\"...\"")
    } else if a.len() > MAX_ADDRESS {
        Some("it is longer than a host name can be (253 characters)")
    } else if !a
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'%'))
    {
        Some("it has characters no host name or IP address has")
    } else {
        None
    }
}

/// The longest user or group name systemd and `useradd` accept.
const MAX_UNIT_USER: usize = 31;

/// Why `u` cannot be a unit's `User=` or `Group=`, if it cannot: what
/// systemd's strict check and `useradd` accept, `[a-zA-Z_][a-zA-Z0-9_-]*`
/// with an optional final `$`, at most 31 characters, or a numeric id
/// (not 65535 nor 4294967295, which mean "none"). systemd's relaxed check
/// takes more ("root x"), but such a user cannot be made with `useradd`,
/// and a unit naming it fails to start.
/// https://systemd.io/USER_NAMES/
pub(crate) fn unit_user_fault(u: &str) -> Option<&'static str> {
    if u.is_empty() {
        return Some("it is empty");
    }
    if u.bytes().all(|b| b.is_ascii_digit()) {
        return match u.parse::<u32>() {
            Ok(65535 | u32::MAX) => Some("65535 and 4294967295 are not ids, they mean \"no user\""),
            Ok(_) => None,
            Err(_) => Some("it is larger than any user or group id (4294967294)"),
        };
    }
    let stem = u.strip_suffix('$').unwrap_or(u);
    if u.chars().count() > MAX_UNIT_USER {
        Some("it is longer than 31 characters")
    } else if !stem
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
    {
        Some("it does not start with a letter or `_`")
    } else if !stem
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
    {
        Some("it has characters other than letters, digits, `_` and `-` (and a final `$`)")
    } else {
        None
    }
}

/// Whether `d` ends in a directory systemd reads unit files from:
/// `.../systemd/system` (the system manager: /etc/systemd/system,
/// /run/systemd/system, /usr/local/lib/systemd/system, ...) or
/// `.../systemd/user` (a user manager: ~/.config/systemd/user,
/// /etc/systemd/user, ...). systemd.unit(5), "Unit File Load Path".
fn is_unit_dir(d: &str) -> bool {
    let d = d.trim_end_matches('/');
    d.ends_with("/systemd/system") || d.ends_with("/systemd/user")
}

/// Why `u` cannot be a host's ssh user, if it cannot: POSIX's portable
/// user names (letters, digits, `.`, `_`, `-`, not starting with `-`).
fn user_fault(u: &str) -> Option<&'static str> {
    if u.is_empty() {
        Some("it is empty")
    } else if u.starts_with('-') {
        Some("it starts with `-`, which ssh would read as an option")
    } else if u.len() > MAX_USER {
        Some("it is longer than a user name can be (32 characters)")
    } else if !u
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        Some("it has characters a user name does not have")
    } else {
        None
    }
}

pub(crate) fn validate(raw: &RawConfig, problems: &mut Vec<Problem>) -> Option<Config> {
    let mut v = Validator { problems };
    let project = v.project(raw);
    let environments = v.environments(raw);
    let phases = v.phases(raw);
    let runtimes = v.runtimes(raw);
    let services = v.services(raw, project.as_ref(), &phases, &runtimes);
    let proxy = v.proxy(raw);
    if v.problems.is_empty() {
        let config = Config {
            project: project?,
            environments,
            phases: phases.into_iter().map(|(p, _)| p).collect(),
            runtimes: runtimes.into_iter().map(|(k, (rt, _))| (k, rt)).collect(),
            service_index: services
                .iter()
                .enumerate()
                .map(|(i, s)| (s.name.clone(), i))
                .collect(),
            services,
            proxy,
        };
        let mut config = config;
        config.order_starts();
        v.renderable_units(raw, &config);
        v.problems.is_empty().then_some(config)
    } else {
        None
    }
}

struct Validator<'p> {
    problems: &'p mut Vec<Problem>,
}

impl Validator<'_> {
    /// The last check, on the resolved configuration: every unit renders in
    /// every environment, with its placeholders filled in. The writer in
    /// `unit` refuses a value it cannot write exactly (`unit::check`); the
    /// checks above catch what they can on the value's own span, and this
    /// one makes sure `validate` refuses everything `apply` would, so a
    /// valid configuration never fails at install time.
    fn renderable_units(&mut self, raw: &RawConfig, config: &Config) {
        let mut seen = std::collections::BTreeSet::new();
        for env in &config.environments {
            // As that environment runs it: `{env}` in unit names, its ports.
            let mut resolved = config.clone();
            resolved.for_environment(&env.name);
            for svc in &resolved.services {
                let Err(e) = crate::unit::render(env, svc) else {
                    continue;
                };
                let message = e.to_string();
                if !seen.insert((svc.name.clone(), message.clone())) {
                    continue;
                }
                let own = raw
                    .services
                    .iter()
                    .find(|r| r.name.as_ref().is_some_and(|n| n.value == svc.name));
                let Some(span) = own
                    .and_then(|r| r.unit.as_ref().map(|u| u.span))
                    .or_else(|| own.and_then(|r| r.name.as_ref().map(|n| n.span)))
                else {
                    continue;
                };
                let help = miette::Diagnostic::help(&e).map_or_else(String::new, |h| h.to_string());
                self.push(Problem::new(
                    ProblemKind::UnitValue,
                    span,
                    format!("{message} (environment `{}`)", env.name),
                    "cannot be written into the unit file",
                    help,
                ));
            }
        }
    }
}

fn is_valid_name(s: &str) -> bool {
    // A name becomes part of a systemd unit name and of a directory under
    // the root: keep to systemd's unit-name characters, minus `\` and `@`
    // (escapes and templates), and never a path component like `..`.
    // https://www.freedesktop.org/software/systemd/man/systemd.unit.html
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// systemd's limit on the length of a unit name, suffix included
/// (`UNIT_NAME_MAX`, systemd.unit(5)).
const UNIT_NAME_MAX: usize = 255;

/// What is wrong with a unit name, if anything.
#[derive(Debug, PartialEq, Eq)]
enum UnitNameFault {
    NoSuffix,
    TooLong,
    Characters,
}

fn unit_name_fault(s: &str) -> Option<UnitNameFault> {
    const SUFFIXES: &[&str] = &[
        ".service", ".socket", ".target", ".timer", ".mount", ".path", ".slice", ".scope",
    ];
    let Some(stem) = SUFFIXES.iter().find_map(|suf| s.strip_suffix(suf)) else {
        return Some(UnitNameFault::NoSuffix);
    };
    if stem.is_empty() {
        Some(UnitNameFault::NoSuffix)
    } else if s.len() > UNIT_NAME_MAX {
        Some(UnitNameFault::TooLong)
    } else if !stem.bytes().all(is_unit_name_byte) {
        Some(UnitNameFault::Characters)
    } else {
        None
    }
}

/// The characters moorline accepts in a unit name: systemd's set
/// (systemd.unit(5)) without `\`, whose escapes moorline does not write.
fn is_unit_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@')
}

/// Control or invisible characters, reported by `raw` on the value: the
/// value is not checked again (one problem per mistake).
fn has_control(s: &str) -> bool {
    s.chars().any(crate::visible::is_invisible)
}

/// Whether git accepts `b` as a branch name (git-check-ref-format(1) for
/// `refs/heads/<b>`, plus git's own refusals of `-x`, `HEAD` and `@`).
fn is_valid_branch(b: &str) -> bool {
    !b.is_empty()
        && !b.starts_with('-')
        && b != "HEAD"
        && b != "@"
        && git2::Reference::is_valid_name(&format!("refs/heads/{b}"))
}

/// Top-level directories of the operating system that a root must not be,
/// nor be under: moorline creates, switches and prunes directories there.
const SYSTEM_DIRS: &[&str] = &[
    "bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "run", "sbin", "sys",
    "usr",
];
/// Directories that hold other things: a root may be under them, not them.
const SHARED_DIRS: &[&str] = &["home", "media", "mnt", "opt", "root", "srv", "tmp", "var"];

/// Why `root` (absolute, no `..`) cannot be an environment's root.
fn unsafe_root(root: &str) -> Option<&'static str> {
    let parts: Vec<&str> = root.split('/').filter(|c| !c.is_empty()).collect();
    match parts.as_slice() {
        [] => Some("it is the filesystem root"),
        [first, ..] if SYSTEM_DIRS.contains(first) => Some("it is a system directory"),
        [only] if SHARED_DIRS.contains(only) => Some("it is a shared top-level directory"),
        _ => None,
    }
}

/// At most `max` names, then how many more.
fn listed(names: &[&str], max: usize) -> String {
    if names.len() <= max {
        names.join(", ")
    } else {
        format!("{} and {} more", names[..max].join(", "), names.len() - max)
    }
}

/// Names listed in a help line.
const LISTED: usize = 10;
/// "Did you mean" is computed against at most this many names (edit
/// distance against 100,000 names per unknown reference is quadratic).
const SUGGEST_AMONG: usize = 1000;

/// A path inside the repository that cannot leave it.
fn is_safe_relative(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && !p.contains('\\')
        && p.split('/').all(|c| c != ".." && c != ".")
        && !p.split('/').any(str::is_empty)
}

/// Names moorline gives its commands itself; `pass-env` cannot take them.
const RESERVED_ENV_PREFIX: &str = "MOORLINE_";

fn is_env_name(s: &str) -> bool {
    s.bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn command(c: &RawCommand) -> Command {
    Command {
        argv: c.argv.iter().map(|a| a.value.clone()).collect(),
        timeout: c
            .timeout
            .as_ref()
            .map_or(DEFAULT_COMMAND_TIMEOUT, |t| t.value),
    }
}

impl Validator<'_> {
    fn push(&mut self, p: Problem) {
        self.problems.push(p);
    }

    fn placeholders(&mut self, s: &Str, allowed: &[&str], place: &str) {
        let usable = || {
            allowed
                .iter()
                .map(|a| format!("{{{a}}}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (offset, name) in template::placeholders(&s.value) {
            if allowed.contains(&name) {
                continue;
            }
            let span = s
                .content
                .map_or(s.span, |c| SourceSpan::from((c + offset, name.len() + 2)));
            let (message, label, help) = if template::ALL.contains(&name) {
                (
                    format!("placeholder {{{name}}} has no value in {place}"),
                    "no value here",
                    if allowed.is_empty() {
                        format!("{place} takes no placeholders; write the value itself")
                    } else if name == "release" && allowed.contains(&"current") {
                        "a unit runs the live release: write {current}, the service's `current` symlink".to_owned()
                    } else {
                        format!("usable in {place}: {}", usable())
                    },
                )
            } else {
                let help = match (suggest(name, template::ALL), allowed) {
                    (Some(s), _) => format!("did you mean {{{s}}}?"),
                    (None, [only]) => {
                        format!("did you mean {{{only}}}? It is the only placeholder here")
                    }
                    (None, []) => format!(
                        "{place} takes no placeholders; write {{{{ and }}}} for literal braces"
                    ),
                    (None, _) => format!(
                        "usable in {place}: {}; write {{{{ and }}}} for literal braces",
                        usable()
                    ),
                };
                (
                    format!("unknown placeholder {{{name}}} in {place}"),
                    "not a placeholder",
                    help,
                )
            };
            self.push(Problem::new(
                ProblemKind::UnknownPlaceholder,
                span,
                message,
                label,
                help,
            ));
        }
    }

    fn command_placeholders(&mut self, c: &RawCommand, allowed: &[&str], place: &str) {
        for a in &c.argv {
            self.placeholders(a, allowed, place);
        }
    }

    fn duplicates<'a>(&mut self, what: &str, names: impl Iterator<Item = &'a Str>) {
        let mut seen: HashMap<&str, SourceSpan> = HashMap::new();
        for n in names {
            if let Some(first) = seen.get(n.value.as_str()) {
                self.push(
                    Problem::new(
                        ProblemKind::Duplicate,
                        n.span,
                        format!("{what} `{}` is defined twice", n.value),
                        "defined again here",
                        format!("rename or remove one of the two {what}s"),
                    )
                    .also(*first, "first defined here"),
                );
            } else {
                seen.insert(&n.value, n.span);
            }
        }
    }

    fn name(&mut self, n: &Str, what: &str) {
        if !is_valid_name(&n.value) && !has_control(&n.value) {
            let kind = if n.value.contains('/') || n.value.contains("..") || n.value.contains('\\')
            {
                ProblemKind::UnsafePath
            } else {
                ProblemKind::InvalidName
            };
            self.push(Problem::new(
                kind,
                n.span,
                if n.value.is_empty() {
                    format!("an empty {what} name")
                } else {
                    format!("`{}` is not a valid {what} name", n.value)
                },
                "invalid name",
                "use letters, digits, `-`, `_` and `.`, starting with a letter or digit (it becomes part of a systemd unit name and a directory)",
            ));
        }
    }

    /// A reference to a systemd unit must be a full, valid unit name.
    fn unit_name(&mut self, u: &Str, example: &str) {
        if has_control(&u.value) {
            return;
        }
        match unit_name_fault(&u.value) {
            None => {}
            Some(UnitNameFault::NoSuffix) => self.push(Problem::new(
                ProblemKind::InvalidName,
                u.span,
                format!("`{}` is not a valid systemd unit name", u.value),
                "invalid unit name",
                format!("write the full unit name, for example \"{example}\""),
            )),
            Some(UnitNameFault::TooLong) => self.unit_name_too_long(u.span, u.value.len()),
            Some(UnitNameFault::Characters) => self.unit_name_characters(u),
        }
    }

    fn unit_name_too_long(&mut self, span: SourceSpan, len: usize) {
        self.push(Problem::new(
            ProblemKind::UnitNameTooLong,
            span,
            format!(
                "a unit name of {len} characters is longer than systemd allows ({UNIT_NAME_MAX})"
            ),
            "unit name too long",
            format!("systemd refuses unit names over {UNIT_NAME_MAX} characters; shorten it"),
        ));
    }

    fn unit_name_characters(&mut self, u: &Str) {
        self.push(Problem::new(
            ProblemKind::UnitNameCharacters,
            u.span,
            format!("`{}` has characters systemd does not allow in a unit name", u.value),
            "invalid characters",
            "unit names use only ASCII letters, digits and `-`, `_`, `.`, `:`, `@` (no spaces, no `/`)",
        ));
    }

    fn safe_path(&mut self, p: &Str, what: &str) {
        if has_control(&p.value) {
            return;
        }
        let rendered = template::render(
            &p.value,
            &Vars {
                service: Some("x"),
                ..Vars::default()
            },
        );
        if !is_safe_relative(rendered.trim_end_matches('/')) {
            self.push(Problem::new(
                ProblemKind::UnsafePath,
                p.span,
                format!("{what} `{}` could leave the repository", p.value),
                "not a plain relative path",
                "write a path relative to the repository root, without `..`, `.` or a leading `/`",
            ));
        }
    }

    /// Whether `p` is absolute without `..` or `.`; reports it if not.
    fn absolute(&mut self, p: &Str, what: &str) -> bool {
        if has_control(&p.value) {
            return false;
        }
        let relative = !p.value.starts_with('/');
        if relative || p.value.split('/').any(|c| c == ".." || c == ".") {
            self.push(Problem::new(
                ProblemKind::UnsafePath,
                p.span,
                if relative {
                    format!("{what} `{}` is not an absolute path", p.value)
                } else {
                    format!("{what} `{}` has a `..` or `.` component", p.value)
                },
                if relative {
                    "must be absolute"
                } else {
                    "not a plain absolute path"
                },
                "write an absolute path without `..` or `.`, for example \"/opt/pakashop\"",
            ));
            return false;
        }
        true
    }

    /// The program of a command run by moorline (not by systemd) must not
    /// look like an option.
    fn program(&mut self, c: &RawCommand, what: &str) {
        let Some(first) = c.argv.first() else { return };
        if first.value.starts_with('-') {
            self.push(Problem::new(
                ProblemKind::ProgramIsOption,
                first.span,
                format!("the program of {what} `{}` starts with `-`", first.value),
                "not a program",
                "the first string is the program to run, then its arguments: write \"npm\" \"ci\", not \"--production\" first",
            ));
        }
    }

    fn positive(&mut self, n: &Spanned<i128>, min: i128, max: i128, what: &str) -> Option<u32> {
        if n.value < min || n.value > max {
            self.push(Problem::new(
                ProblemKind::InvalidValue,
                n.span,
                format!("{what} must be between {min} and {max}, not {}", n.value),
                "out of range",
                format!("choose a number from {min} to {max}"),
            ));
            return None;
        }
        u32::try_from(n.value).ok()
    }

    fn env(&mut self, vars: &[RawEnv], allowed: &[&str]) -> BTreeMap<String, EnvValue> {
        let mut out = BTreeMap::new();
        self.duplicates("environment variable", vars.iter().map(|v| &v.name));
        for v in vars {
            if !is_env_name(&v.name.value) && !has_control(&v.name.value) {
                self.push(Problem::new(
                    ProblemKind::InvalidName,
                    v.name.span,
                    format!(
                        "`{}` is not a valid environment variable name",
                        v.name.value
                    ),
                    "invalid name",
                    "use letters, digits and `_`, not starting with a digit",
                ));
            }
            self.placeholders(&v.value, allowed, "an environment value");
            out.insert(
                v.name.value.clone(),
                EnvValue {
                    value: v.value.value.clone(),
                    secret: v.secret || looks_secret(&v.name.value),
                },
            );
        }
        out
    }

    /// An environment's `pass-env` names: variable names, not one that
    /// moorline sets itself (`MOORLINE_*`), each once.
    fn pass_env(&mut self, names: &[Str]) -> Vec<String> {
        let mut seen: HashMap<&str, SourceSpan> = HashMap::new();
        let mut out = Vec::new();
        for n in names {
            if has_control(&n.value) {
                // Reported by `raw` on the value.
            } else if !is_env_name(&n.value) {
                self.push(Problem::new(
                    ProblemKind::PassEnvName,
                    n.span,
                    format!("`{}` is not an environment variable name", n.value),
                    "not a variable name",
                    "pass-env takes names (letters, digits and `_`, not starting with a digit), not NAME=value: set values with env",
                ));
            } else if n.value.starts_with(RESERVED_ENV_PREFIX) {
                self.push(Problem::new(
                    ProblemKind::PassEnvName,
                    n.span,
                    format!("`{}` cannot be passed: moorline sets the `{RESERVED_ENV_PREFIX}` variables of its commands itself", n.value),
                    "reserved for moorline",
                    "commands get MOORLINE_ENV, MOORLINE_ROOT, MOORLINE_SERVICE and MOORLINE_RELEASE from moorline; use another name for a variable of your own",
                ));
            }
            if let Some(first) = seen.get(n.value.as_str()) {
                self.push(
                    Problem::new(
                        ProblemKind::PassEnvDuplicate,
                        n.span,
                        format!("`{}` is passed twice", n.value),
                        "named again here",
                        "name each variable once in an environment's pass-env",
                    )
                    .also(*first, "first named here"),
                );
            } else {
                seen.insert(&n.value, n.span);
                out.push(n.value.clone());
            }
        }
        out
    }

    fn project(&mut self, raw: &RawConfig) -> Option<Project> {
        let Some(p) = raw.projects.first() else {
            self.push(Problem::new(
                ProblemKind::MissingValue,
                SourceSpan::from((0, 0)),
                "no `project` node",
                "expected a project here",
                "start the file with project \"name\" { unit-name \"name-{service}.service\" }",
            ));
            return None;
        };
        for second in raw.projects.iter().skip(1) {
            self.push(
                Problem::new(
                    ProblemKind::SecondProject,
                    second.span,
                    "a second `project`",
                    "second project",
                    "a file describes one project: merge the two, or keep each project in its own file",
                )
                .also(p.span, "first project"),
            );
        }
        let name = p.name.as_ref()?;
        self.name(name, "project");
        let unit_name = p.unit_name.as_ref().map_or_else(
            || DEFAULT_UNIT_NAME.to_owned(),
            |u| {
                let before = self.problems.len();
                self.placeholders(u, IN_UNIT_NAME, "the unit name template");
                if self.problems.len() > before {
                    // A misspelt {service} is reported once, as such.
                } else if !u.value.contains("{service}") {
                    self.push(Problem::new(
                        ProblemKind::InvalidName,
                        u.span,
                        "the unit name template does not contain {service}",
                        "every service would get the same unit",
                        "write it as \"{service}.service\" or \"project-{service}.service\"",
                    ));
                } else if has_control(&u.value) {
                    // Reported as a control character.
                } else if !u.value.ends_with(".service") {
                    self.push(Problem::new(
                        ProblemKind::UnitNameSuffix,
                        u.span,
                        format!("the unit name template `{}` does not end in .service", u.value),
                        "not a .service unit",
                        "moorline writes a [Service] unit for each service: end the template with .service, for example \"shop-{service}.service\"",
                    ));
                } else {
                    match unit_name_fault(&u.value.replace("{service}", "x").replace("{env}", "x")) {
                        None => {}
                        Some(UnitNameFault::TooLong) => {
                            self.unit_name_too_long(u.span, u.value.len());
                        }
                        Some(_) => self.unit_name_characters(u),
                    }
                }
                u.value.clone()
            },
        );
        let keep_releases = p
            .keep_releases
            .as_ref()
            .map_or(Some(DEFAULT_KEEP_RELEASES), |k| {
                // Two at least: the live release and the one a rollback needs.
                self.positive(k, 2, 1000, "keep-releases")
            })?;
        Some(Project {
            name: name.value.clone(),
            unit_name,
            keep_releases,
        })
    }

    fn environments(&mut self, raw: &RawConfig) -> Vec<Environment> {
        self.duplicates(
            "environment",
            raw.environments.iter().filter_map(|e| e.name.as_ref()),
        );
        let mut out = Vec::new();
        for e in &raw.environments {
            let Some(name) = &e.name else { continue };
            self.name(name, "environment");
            let seen = |n: &str| e.seen.iter().any(|s| s == n);
            if !seen("branch") {
                self.push(Problem::new(
                    ProblemKind::MissingBranch,
                    name.span,
                    format!("environment `{}` has no branch", name.value),
                    "no `branch` in this environment",
                    "add branch \"main\" (the git branch this environment deploys)",
                ));
            }
            if !seen("root") {
                self.push(Problem::new(
                    ProblemKind::MissingValue,
                    name.span,
                    format!("environment `{}` has no root", name.value),
                    "no `root` in this environment",
                    "add root \"/opt/project\" (where releases are kept)",
                ));
            }
            // `{env}` in the root is the environment's name.
            let root = e.root.as_ref().map(|r| Str {
                value: r.value.replace("{env}", &name.value),
                span: r.span,
                content: None,
            });
            if let Some(r) = &root
                && self.absolute(r, "root")
                && let Some(why) = unsafe_root(&r.value)
            {
                self.push(Problem::new(
                    ProblemKind::UnsafeRoot,
                    r.span,
                    format!("root `{}` cannot hold releases: {why}", r.value),
                    "not a release root",
                    "moorline creates, switches and prunes directories under the root: give the project a directory of its own, for example \"/opt/pakashop\"",
                ));
            }
            if let Some(d) = &e.unit_dir
                && self.absolute(d, "unit-dir")
                && !is_unit_dir(&d.value)
            {
                self.push(Problem::new(
                    ProblemKind::NotAUnitDir,
                    d.span,
                    format!("unit-dir `{}` is not a directory systemd reads units from", d.value),
                    "systemd does not look here",
                    "a unit installed there would never be loaded: write a directory of systemd's unit search path, ending in systemd/system for the system manager (\"/etc/systemd/system\", the default) or systemd/user for a user manager (\"/home/deploy/.config/systemd/user\"), or leave unit-dir out",
                ));
            }
            for f in &e.env_files {
                self.env_file(f, false);
            }
            if let Some((source, dir, _)) = &e.promote_from {
                let names: Vec<&str> = raw
                    .environments
                    .iter()
                    .filter_map(|o| o.name.as_ref().map(|n| n.value.as_str()))
                    .collect();
                if source.value == name.value {
                    self.push(Problem::new(
                        ProblemKind::DependencyCycle,
                        source.span,
                        format!("environment `{}` promotes from itself", name.value),
                        "its own name",
                        "name the environment a revision must run in first, for example \"staging\"",
                    ));
                } else if !names.contains(&source.value.as_str()) {
                    self.reference(source, "environment", &names);
                }
                if let Some(d) = dir {
                    self.absolute(d, "state-dir");
                }
            }
            if let Some(b) = &e.branch
                && !has_control(&b.value)
                && !is_valid_branch(&b.value)
            {
                self.push(Problem::new(
                    ProblemKind::InvalidBranch,
                    b.span,
                    format!("`{}` is not a valid git branch name", b.value),
                    "invalid branch",
                    "write the branch as git names it, for example \"main\" (git check-ref-format --branch: no spaces, `..`, `~^:?*[\\`, `@{`, leading `-`, trailing `/`, `.` or `.lock`)",
                ));
            }
            let backup = e.backup.as_ref().and_then(|b| {
                for (slot, what) in [(&b.run, "run"), (&b.restore, "restore")] {
                    if slot.is_none() {
                        self.push(Problem::new(
                            ProblemKind::MissingValue,
                            b.span,
                            format!("`backup` has no `{what}` command"),
                            format!("`{what}` missing"),
                            format!(
                                "add {what} \"program\" \"arg\" ... (use {{backup}} for the file)"
                            ),
                        ));
                    }
                }
                for c in [&b.run, &b.restore, &b.resolve].into_iter().flatten() {
                    self.command_placeholders(c, IN_BACKUP, "a backup command");
                    self.program(c, "a backup command");
                }
                if let Some(d) = &b.dir {
                    self.absolute(d, "backup dir");
                }
                let keep = b.keep.as_ref().map_or(Some(DEFAULT_BACKUP_KEEP), |k| {
                    self.positive(k, 1, 100_000, "keep")
                });
                let first_deploy = match &b.first_deploy {
                    None => Some(FirstDeploy::default()),
                    Some(f) => {
                        let parsed = FirstDeploy::parse(&f.value);
                        if parsed.is_none() {
                            let help = suggest(&f.value, FirstDeploy::NAMES).map_or_else(
                                || {
                                    "write first-deploy \"skip\" or first-deploy \"backup\""
                                        .to_owned()
                                },
                                |s| format!("did you mean \"{s}\"?"),
                            );
                            self.push(Problem::new(
                                ProblemKind::InvalidValue,
                                f.span,
                                format!("`{}` is not a first-deploy choice", f.value),
                                "\"skip\" or \"backup\"",
                                help,
                            ));
                        }
                        parsed
                    }
                };
                Some(Backup {
                    run: command(b.run.as_ref()?),
                    restore: command(b.restore.as_ref()?),
                    resolve: b.resolve.as_ref().map(command),
                    keep: keep?,
                    dir: b.dir.as_ref().map(|d| d.value.clone()),
                    first_deploy: first_deploy?,
                })
            });
            let env = self.env(&e.env, IN_PLAIN);
            let pass_env = self.pass_env(&e.pass_env);
            let (hosts, rollout, drain) = self.fleet(e, name, &raw.services);
            let port_offset = e.port_offset.as_ref().map_or(Some(0), |o| {
                self.positive(o, 0, i128::from(u16::MAX) - 1, "port-offset")
                    .and_then(|o| u16::try_from(o).ok())
            });
            let (Some(branch), Some(root), Some(port_offset)) = (&e.branch, &root, port_offset)
            else {
                continue;
            };
            out.push(Environment {
                name: name.value.clone(),
                branch: branch.value.clone(),
                root: root.value.trim_end_matches('/').to_owned(),
                url: e.url.as_ref().map(|u| u.value.clone()),
                unit_dir: e.unit_dir.as_ref().map(|u| u.value.clone()),
                port_offset,
                approval: e.approval.unwrap_or(false),
                promote_from: e
                    .promote_from
                    .as_ref()
                    .map(|(source, dir, min)| PromoteFrom {
                        environment: source.value.clone(),
                        state_dir: dir.as_ref().map(|d| d.value.clone()),
                        min_healthy: min.as_ref().map_or(std::time::Duration::ZERO, |m| m.value),
                    }),
                backup,
                env,
                env_files: e.env_files.iter().map(|f| f.value.clone()).collect(),
                pass_env,
                hosts,
                rollout,
                drain,
            });
        }
        out
    }

    /// An environment's fleet: its hosts, rollout and drain hooks, and
    /// whether every service with a role has a host to run on.
    fn fleet(
        &mut self,
        e: &RawEnvironment,
        env: &Str,
        services: &[RawService],
    ) -> (Vec<Host>, Rollout, Vec<DrainHook>) {
        let hosts = self.hosts(e);
        let count = e.hosts.len();
        let no_hosts = |what: &str| {
            Problem::new(
                ProblemKind::FleetWithoutHosts,
                SourceSpan::from((0, 0)),
                format!(
                    "`{what}` in environment `{}`, which has no hosts",
                    env.value
                ),
                "no `host` in this environment",
                format!(
                    "`{what}` is about the hosts of a fleet: add host \"app1\" address=\"10.0.0.11\" to this environment, or remove the `{what}` block (an environment without hosts deploys to the host moorline runs on)"
                ),
            )
        };
        let rollout = match &e.rollout {
            None => Rollout::default(),
            Some(r) => {
                if count == 0 {
                    let mut p = no_hosts("rollout");
                    p.span = r.span;
                    self.push(p);
                }
                let default = Rollout::default();
                let canary = r
                    .canary
                    .as_ref()
                    .map_or(Some(0), |c| self.positive(c, 0, MAX_HOSTS, "canary"));
                if let (Some(c), Some(raw)) = (canary, &r.canary)
                    && count > 0
                    && usize::try_from(c).unwrap_or(usize::MAX) >= count
                {
                    self.push(Problem::new(
                        ProblemKind::ImpossibleRollout,
                        raw.span,
                        format!(
                            "a canary of {c} leaves no host for the batches: environment `{}` has {count} host{}",
                            env.value,
                            if count == 1 { "" } else { "s" }
                        ),
                        "canary as large as the fleet",
                        "the canary is applied alone, before any batch, to learn whether the release works before the rest of the fleet gets it: make it smaller than the number of hosts (1 is usual), or remove `canary`",
                    ));
                }
                let batches = r.batches.as_ref().map_or(default.batches, |bs| {
                    bs.iter().filter_map(|b| self.batch(b, count)).collect()
                });
                let max_fail = r
                    .max_fail
                    .as_ref()
                    .map_or(Some(0), |m| self.positive(m, 0, MAX_HOSTS, "max-fail"));
                let connections = r
                    .connections
                    .as_ref()
                    .map_or(Some(default.connections), |c| {
                        self.positive(c, 1, MAX_CONNECTIONS, "connections")
                    });
                Rollout {
                    canary: canary.unwrap_or(0),
                    batches,
                    max_fail: max_fail.unwrap_or(0),
                    pause: r.pause.as_ref().map_or(default.pause, |p| p.value),
                    connections: connections.unwrap_or(default.connections),
                }
            }
        };
        let drain = match &e.drain {
            None => Vec::new(),
            Some(d) => {
                if count == 0 {
                    let mut p = no_hosts("drain");
                    p.span = d.span;
                    self.push(p);
                }
                let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
                for h in &d.hooks {
                    if count > 0 && !names.contains(&h.on.value.as_str()) {
                        self.reference(&h.on, "host", &names);
                    }
                    self.program(&h.command, "a drain hook");
                    self.command_placeholders(&h.command, IN_DRAIN, "a drain hook");
                }
                d.hooks
                    .iter()
                    .map(|h| DrainHook {
                        when: h.when,
                        on: h.on.value.clone(),
                        command: command(&h.command),
                    })
                    .collect()
            }
        };
        if count > 0 {
            self.unhosted_services(env, &hosts, services);
        }
        (hosts, rollout, drain)
    }

    /// Every `host` of an environment, checked: names, addresses, users,
    /// ports, and no two hosts at one address and port.
    fn hosts(&mut self, e: &RawEnvironment) -> Vec<Host> {
        self.duplicates("host", e.hosts.iter().filter_map(|h| h.name.as_ref()));
        let mut at: HashMap<(String, Option<u16>), (&str, SourceSpan)> = HashMap::new();
        let mut out = Vec::new();
        for h in &e.hosts {
            let Some(name) = &h.name else { continue };
            self.name(name, "host");
            if let Some(a) = &h.address
                && !has_control(&a.value)
                && let Some(why) = address_fault(&a.value)
            {
                self.push(Problem::new(
                    ProblemKind::InvalidAddress,
                    a.span,
                    if a.value.is_empty() {
                        "an empty host address".to_owned()
                    } else {
                        format!("`{}` is not a host address: {why}", a.value)
                    },
                    "not an address",
                    "write what ssh connects to: a host name (\"app1.internal\"), an IP address (\"10.0.0.11\", \"fd00::11\") or a Host of your ssh config",
                ));
            }
            if let Some(u) = &h.user
                && !has_control(&u.value)
                && let Some(why) = user_fault(&u.value)
            {
                self.push(Problem::new(
                    ProblemKind::InvalidUser,
                    u.span,
                    if u.value.is_empty() {
                        "an empty user name".to_owned()
                    } else {
                        format!("`{}` is not a user name: {why}", u.value)
                    },
                    "not a user name",
                    "write the user ssh logs in as, for example user=\"deploy\" (letters, digits, `.`, `_`, `-`, not starting with `-`), or leave it out to use your ssh config's",
                ));
            }
            let port = h.port.as_ref().and_then(|p| match u16::try_from(p.value) {
                Ok(port) if port > 0 => Some(port),
                _ => {
                    self.push(Problem::new(
                        ProblemKind::PortRange,
                        p.span,
                        format!("port {} is out of range", p.value),
                        "not a TCP port",
                        "ports are 1 to 65535; leave `port` out to use your ssh config's (22 by default)",
                    ));
                    None
                }
            });
            for r in &h.roles {
                self.name(r, "role");
            }
            let address = h.address.as_ref().unwrap_or(name);
            // ssh compares host names without case.
            let key = (address.value.to_ascii_lowercase(), port);
            if let Some((other, first)) = at.get(&key) {
                let shown = match port {
                    Some(p) => format!("`{}` port {p}", address.value),
                    None => format!("`{}`", address.value),
                };
                self.push(
                    Problem::new(
                        ProblemKind::DuplicateAddress,
                        address.span,
                        format!(
                            "hosts `{other}` and `{}` are both {shown}",
                            name.value
                        ),
                        if port.is_some() {
                            "same address and port"
                        } else {
                            "same address"
                        },
                        "each host is one machine with its own moorline state: give each host its own address (or port), or remove one",
                    )
                    .also(*first, format!("`{other}` is here")),
                );
            } else {
                at.insert(key, (&name.value, address.span));
            }
            let mut roles: Vec<String> = Vec::new();
            for r in &h.roles {
                if !roles.contains(&r.value) {
                    roles.push(r.value.clone());
                }
            }
            out.push(Host {
                name: name.value.clone(),
                address: address.value.clone(),
                user: h.user.as_ref().map(|u| u.value.clone()),
                port,
                roles,
            });
        }
        out
    }

    /// A service with a role must have a host to run on in every
    /// environment with hosts.
    fn unhosted_services(&mut self, env: &Str, hosts: &[Host], services: &[RawService]) {
        // A host without roles runs everything: nothing can be unhosted.
        if hosts.iter().any(|h| h.roles.is_empty()) {
            return;
        }
        // Linear in hosts and services: a hostile file may have many.
        let covered: HashSet<&str> = hosts
            .iter()
            .flat_map(|h| h.roles.iter().map(String::as_str))
            .collect();
        let mut all_roles: Vec<&str> = covered.iter().copied().collect();
        all_roles.sort_unstable();
        for s in services {
            let (Some(name), Some(role)) = (&s.name, &s.role) else {
                continue;
            };
            if !is_valid_name(&role.value) || covered.contains(role.value.as_str()) {
                continue;
            }
            let shown: Vec<String> = hosts
                .iter()
                .take(LISTED)
                .map(|h| format!("{} ({})", h.name, h.roles.join(", ")))
                .collect();
            let more = if hosts.len() > LISTED {
                format!(" and {} more", hosts.len() - LISTED)
            } else {
                String::new()
            };
            let near = if all_roles.len() <= SUGGEST_AMONG {
                suggest(&role.value, &all_roles)
            } else {
                None
            };
            let help = match near {
                Some(r) => format!(
                    "did you mean `{r}`? Otherwise add roles \"{}\" to a host of `{}`",
                    role.value, env.value
                ),
                None => format!(
                    "add roles \"{}\" to a host of `{}`, or change the service's role; hosts: {}{more}",
                    role.value,
                    env.value,
                    shown.join(", ")
                ),
            };
            self.push(
                Problem::new(
                    ProblemKind::UnhostedService,
                    role.span,
                    format!(
                        "no host of environment `{}` runs service `{}`: none has role `{}`",
                        env.value, name.value, role.value
                    ),
                    format!("no host of `{}` has this role", env.value),
                    help,
                )
                .also(env.span, "this environment's hosts"),
            );
        }
    }

    /// One value of `batches`, checked against the number of hosts.
    fn batch(&mut self, b: &Spanned<RawBatch>, hosts: usize) -> Option<BatchSize> {
        let bad = |message: String, label: &str, help: &str| {
            Problem::new(ProblemKind::InvalidBatch, b.span, message, label, help)
        };
        match &b.value {
            RawBatch::Count(c) if *c < 1 => {
                self.push(bad(
                    format!("a batch of {c} hosts"),
                    "empty batch",
                    "a batch takes at least one host: write 1 or more, or a percentage such as \"25%\"",
                ));
                None
            }
            RawBatch::Count(c) if hosts > 0 && *c > i128::try_from(hosts).unwrap_or(i128::MAX) => {
                self.push(bad(
                    format!("a batch of {c} hosts, but the environment has {hosts}"),
                    "more hosts than there are",
                    &format!("write at most {hosts}, or \"100%\" for every host left"),
                ));
                None
            }
            RawBatch::Count(c) => u32::try_from(*c).ok().map(BatchSize::Count),
            RawBatch::Text(t) => {
                let percent = t
                    .strip_suffix('%')
                    .filter(|d| {
                        !d.is_empty() && d.len() <= 4 && d.bytes().all(|b| b.is_ascii_digit())
                    })
                    .and_then(|d| d.parse::<u32>().ok());
                match percent {
                    Some(p @ 1..=100) => Some(BatchSize::Percent(p)),
                    Some(p) => {
                        self.push(bad(
                            format!("a batch of {p}% of the hosts"),
                            if p == 0 { "empty batch" } else { "over 100%" },
                            "a percentage is 1% to 100% of the environment's hosts, rounded up (\"100%\": every host left)",
                        ));
                        None
                    }
                    None => {
                        let digits = !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
                        self.push(bad(
                            format!("`{t}` is not a batch size"),
                            "not a batch size",
                            &if digits {
                                format!("write {t} without quotes for a number of hosts, or \"{t}%\" for a percentage")
                            } else {
                                "write a number of hosts without quotes (2) or a percentage in quotes (\"25%\")".to_owned()
                            },
                        ));
                        None
                    }
                }
            }
        }
    }

    fn phases(&mut self, raw: &RawConfig) -> Vec<(Phase, SourceSpan)> {
        self.duplicates("phase", raw.phases.iter().filter_map(|p| p.name.as_ref()));
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for p in &raw.phases {
            let Some(name) = &p.name else { continue };
            self.name(name, "phase");
            for u in &p.units {
                self.unit_name(u, "postgresql.service");
            }
            if !seen.insert(name.value.as_str()) {
                continue;
            }
            out.push((
                Phase {
                    name: name.value.clone(),
                    units: p.units.iter().map(|u| u.value.clone()).collect(),
                },
                name.span,
            ));
        }
        out
    }

    /// An `env-file` must name a file by an absolute path: a relative one
    /// would be read from wherever moorline or systemd happens to run. In
    /// a unit it may start with a placeholder that is absolute
    /// (`{root}`, `{current}`), and with `-` (systemd: a missing file is
    /// no error).
    fn env_file(&mut self, f: &Str, unit: bool) {
        if has_control(&f.value) {
            return;
        }
        let path = if unit {
            f.value.strip_prefix('-').unwrap_or(&f.value)
        } else {
            &f.value
        };
        let absolute = path.starts_with('/')
            || (unit && (path.starts_with("{root}") || path.starts_with("{current}")));
        if absolute {
            if !unit {
                self.absolute(f, "env-file");
            }
            return;
        }
        self.push(Problem::new(
            ProblemKind::RelativeEnvFile,
            f.span,
            format!("env-file `{}` is not an absolute path", f.value),
            "relative path",
            if unit {
                "systemd reads an EnvironmentFile= only by an absolute path: start it with `/`, {root} or {current} (\"/etc/shop/api.env\"; a leading `-` makes a missing file no error)"
            } else {
                "a relative env-file would be read from the directory moorline runs in, which differs between a terminal, CI and the fleet: write an absolute path, for example \"/etc/shop/production.env\""
            },
        ));
    }

    fn unit(&mut self, raw: &RawUnit) -> UnitSpec {
        for f in &raw.env_files {
            self.env_file(f, true);
        }
        for u in [&raw.user, &raw.group].into_iter().flatten() {
            if !has_control(&u.value)
                && let Some(why) = unit_user_fault(&u.value)
            {
                self.push(Problem::new(
                    ProblemKind::InvalidUnitUser,
                    u.span,
                    if u.value.is_empty() {
                        "an empty user or group name".to_owned()
                    } else {
                        format!("`{}` is not a user or group name: {why}", u.value)
                    },
                    "not a user or group",
                    "systemd and useradd take ASCII letters, digits, `_` and `-`, starting with a letter or `_` (a final `$` is allowed), at most 31 characters, or a numeric id: for example \"shop\" or \"1001\"",
                ));
            }
        }
        if let Some(c) = &raw.exec {
            self.command_placeholders(c, IN_UNIT, "a unit's exec");
            if let Some(first) = c.argv.first()
                && first.value.starts_with(super::INIT_TODO)
            {
                self.push(Problem::new(
                    ProblemKind::InitTodo,
                    first.span,
                    "`moorline init` found no start command for this unit; it is still a TODO",
                    "TODO left by init",
                    "write the program and its arguments, for example exec \"{current}/venv/bin/python\" \"{current}/server.py\" (the comment above it says what init looked for)",
                ));
            }
            if let Some(first) = c.argv.first()
                && let Some(prefix) = first.value.chars().next().filter(|c| "-@:+!".contains(*c))
            {
                self.push(Problem::new(
                    ProblemKind::ExecPrefix,
                    first.span,
                    format!("the program of `exec` starts with `{prefix}`, which systemd reads as a flag"),
                    "flag prefix",
                    "systemd's ExecStart= treats a leading `-`, `@`, `:`, `+` or `!` as a flag (ignore failure, argv[0], no substitution, privileges); write the program's path, for example \"/usr/bin/node\"",
                ));
            }
        }
        if let Some(w) = &raw.working_directory
            && !has_control(&w.value)
            // `{release}/x` is reported as a placeholder without a value.
            && !template::placeholders(&w.value)
                .first()
                .is_some_and(|(at, name)| *at == 0 && !IN_UNIT.contains(name))
            && !(w.value.starts_with('/')
                || w.value.starts_with("{current}")
                || w.value.starts_with("{root}"))
        {
            self.push(Problem::new(
                ProblemKind::RelativeWorkingDirectory,
                w.span,
                format!("working-directory `{}` is not absolute", w.value),
                "relative directory",
                "systemd needs an absolute WorkingDirectory=: start it with `/`, {current} (the live release) or {root}",
            ));
        }
        if let Some(w) = &raw.wanted_by {
            self.unit_name(w, "multi-user.target");
        }
        for s in [&raw.description, &raw.working_directory]
            .into_iter()
            .flatten()
            .chain(&raw.env_files)
        {
            self.placeholders(s, IN_UNIT, "a unit setting");
        }
        for s in raw.after.iter().chain(&raw.wants) {
            self.unit_name(s, "postgresql.service");
        }
        if let Some(r) = &raw.restart {
            const POLICIES: &[&str] = &[
                "no",
                "on-success",
                "on-failure",
                "on-abnormal",
                "on-watchdog",
                "on-abort",
                "always",
            ];
            if !POLICIES.contains(&r.value.as_str()) {
                let help = suggest(&r.value, POLICIES).map_or_else(
                    || format!("systemd's Restart= accepts: {}", POLICIES.join(", ")),
                    |s| format!("did you mean \"{s}\"?"),
                );
                self.push(Problem::new(
                    ProblemKind::InvalidValue,
                    r.span,
                    format!("`{}` is not a restart policy", r.value),
                    "unknown policy",
                    help,
                ));
            }
        }
        let env = self.env(&raw.env, IN_UNIT);
        UnitSpec {
            description: raw.description.as_ref().map(|d| d.value.clone()),
            exec: raw
                .exec
                .as_ref()
                .map(|c| c.argv.iter().map(|a| a.value.clone()).collect())
                .unwrap_or_default(),
            env,
            env_files: raw.env_files.iter().map(|f| f.value.clone()).collect(),
            user: raw.user.as_ref().map(|u| u.value.clone()),
            group: raw.group.as_ref().map(|u| u.value.clone()),
            restart: raw
                .restart
                .as_ref()
                .map_or_else(|| "on-failure".to_owned(), |r| r.value.clone()),
            working_directory: raw
                .working_directory
                .as_ref()
                .map_or_else(|| "{current}".to_owned(), |w| w.value.clone()),
            after: raw.after.iter().map(|a| a.value.clone()).collect(),
            wants: raw.wants.iter().map(|a| a.value.clone()).collect(),
            wanted_by: raw
                .wanted_by
                .as_ref()
                .map_or_else(|| "multi-user.target".to_owned(), |w| w.value.clone()),
        }
    }

    fn runtimes(&mut self, raw: &RawConfig) -> BTreeMap<String, (Runtime, Option<RawUnit>)> {
        self.duplicates(
            "runtime",
            raw.runtimes.iter().filter_map(|r| r.name.as_ref()),
        );
        let mut out = BTreeMap::new();
        for r in &raw.runtimes {
            let Some(name) = &r.name else { continue };
            self.name(name, "runtime");
            for c in [&r.build, &r.migrate_status].into_iter().flatten() {
                self.command_placeholders(c, IN_BUILD, "a runtime command");
                self.program(c, "a runtime command");
            }
            let migrate = r.migrate.as_ref().map(|m| {
                self.command_placeholders(&m.command, IN_BUILD, "a runtime command");
                self.program(&m.command, "a runtime command");
                for p in [&m.if_exists, &m.inputs].into_iter().flatten() {
                    self.safe_path(p, "migration path");
                }
                let inputs = m.inputs.as_ref().map_or_else(
                    || {
                        m.if_exists
                            .as_ref()
                            .and_then(|f| f.value.rsplit_once('/').map(|(d, _)| d.to_owned()))
                            .unwrap_or_default()
                    },
                    |i| i.value.trim_end_matches('/').to_owned(),
                );
                Migrate {
                    command: command(&m.command),
                    if_exists: m.if_exists.as_ref().map(|f| f.value.clone()),
                    inputs,
                }
            });
            let unit = r.unit.as_ref().map(|u| self.unit(u));
            let deps = r.deps.as_ref().map(|d| self.deps(d));
            if out.contains_key(&name.value) {
                continue;
            }
            out.insert(
                name.value.clone(),
                (
                    Runtime {
                        name: name.value.clone(),
                        build: r.build.as_ref().map(command),
                        migrate,
                        migrate_status: r.migrate_status.as_ref().map(command),
                        unit,
                        deps,
                    },
                    r.unit.clone(),
                ),
            );
        }
        out
    }

    fn deps(&mut self, d: &super::raw::RawDeps) -> super::model::Deps {
        for c in std::iter::once(&d.command).chain(&d.version) {
            self.command_placeholders(c, IN_DEPS, "a dependency step");
        }
        for p in d.inputs.iter().chain(&d.outputs) {
            self.safe_path(p, "dependency path");
        }
        let mut seen: Vec<&Str> = Vec::new();
        for o in &d.outputs {
            let inside = |a: &str, b: &str| a == b || a.starts_with(&format!("{b}/"));
            let clash = seen
                .iter()
                .copied()
                .chain(&d.inputs)
                .find(|p| inside(&o.value, &p.value) || inside(&p.value, &o.value));
            if let Some(other) = clash {
                self.push(
                    Problem::new(
                        ProblemKind::InvalidValue,
                        o.span,
                        format!("dependency output `{}` overlaps `{}`", o.value, other.value),
                        "overlaps",
                        "outputs are replaced as a whole: list each once, apart from the inputs",
                    )
                    .also(other.span, "this one"),
                );
            }
            seen.push(o);
        }
        let trim = |v: &[Str]| {
            v.iter()
                .map(|p| p.value.trim_end_matches('/').to_owned())
                .collect()
        };
        super::model::Deps {
            command: command(&d.command),
            inputs: trim(&d.inputs),
            outputs: trim(&d.outputs),
            version: d.version.as_ref().map(command),
        }
    }

    fn reference(&mut self, r: &Str, what: &str, known: &[&str]) {
        if has_control(&r.value) {
            return;
        }
        let suggestion = if known.len() <= SUGGEST_AMONG {
            suggest(&r.value, known)
        } else {
            None
        };
        let help = match suggestion {
            Some(s) => format!("did you mean `{s}`?"),
            None if known.is_empty() => format!("no {what} is defined; add one"),
            None => format!("defined {what}s: {}", listed(known, LISTED)),
        };
        self.push(Problem::new(
            ProblemKind::UnknownReference,
            r.span,
            format!("unknown {what} `{}`", r.value),
            format!("no {what} by this name"),
            help,
        ));
    }

    fn health_path(&mut self, s: &Str) {
        if has_control(&s.value) {
            return;
        }
        if s.value.starts_with("https://") {
            self.push(Problem::new(
                ProblemKind::HttpsHealth,
                s.span,
                format!("`{}`: moorline cannot check health over https", s.value),
                "https is not supported here",
                "moorline's HTTP client is built without TLS; health endpoints are asked on loopback: write a path like \"/health\" (asked at http://127.0.0.1:{port}) or an http:// URL",
            ));
            return;
        }
        let ok = s.value.starts_with('/') || s.value.starts_with("http://");
        if !ok {
            self.push(Problem::new(
                ProblemKind::InvalidValue,
                s.span,
                format!("`{}` is neither a path nor a URL", s.value),
                "expected /path or http://...",
                "write a path on the service's port, like \"/health\", or a full http:// URL",
            ));
        }
        self.placeholders(s, &["port", "service"], "a health URL");
    }

    /// `ready`: a path or `http://` URL, or one of the kinds `"tcp"`,
    /// `"notify"`, `"none"`, `"exec" ARGV...`. `None`: a problem was
    /// reported.
    fn readiness(&mut self, s: &RawService) -> Option<Readiness> {
        let Some(r) = &s.ready else {
            return Some(Readiness::Http);
        };
        let kind = match r.value.as_str() {
            "tcp" => Readiness::Tcp,
            "notify" => Readiness::Notify,
            "none" => Readiness::None,
            "exec" => {
                if s.ready_args
                    .first()
                    .is_none_or(|a| a.value.trim().is_empty())
                {
                    self.push(Problem::new(
                        ProblemKind::EmptyCommand,
                        r.span,
                        "`ready \"exec\"` has no command",
                        "no program to run",
                        "give the program and its arguments as separate strings after \"exec\", for example ready \"exec\" \"pg_isready\" \"-h\" \"127.0.0.1\"",
                    ));
                    return None;
                }
                let allowed: &[&str] = if s.port.is_some() {
                    &["port", "service"]
                } else {
                    &["service"]
                };
                for a in &s.ready_args {
                    self.placeholders(a, allowed, "a readiness command");
                }
                return Some(Readiness::Exec(
                    s.ready_args.iter().map(|a| a.value.clone()).collect(),
                ));
            }
            v if v.starts_with('/') || v.contains("://") => {
                self.health_path(r);
                Readiness::Http
            }
            _ if has_control(&r.value) => return None,
            v => {
                let help = match suggest(v, READY_KINDS) {
                    Some(k) => format!("did you mean \"{k}\"?"),
                    None => "write a path on the service's port (\"/health/ready\"), an http:// URL, or a kind: \"tcp\" (the port accepts a connection), \"notify\" (Type=notify, READY=1), \"exec\" followed by a command that exits 0, or \"none\" (stays up for the settle window)".to_owned(),
                };
                self.push(Problem::new(
                    ProblemKind::ReadyKind,
                    r.span,
                    format!("`{v}` is neither a readiness path, a URL nor a kind"),
                    "expected /path, http://..., tcp, notify, exec or none",
                    help,
                ));
                return None;
            }
        };
        if let Some(extra) = s.ready_args.first() {
            self.push(Problem::new(
                ProblemKind::UnexpectedArgument,
                extra.span,
                format!("`ready \"{}\"` takes a single value", r.value),
                "unexpected",
                "only ready \"exec\" takes more words (its command); remove the extra values",
            ));
        }
        Some(kind)
    }

    fn services(
        &mut self,
        raw: &RawConfig,
        project: Option<&Project>,
        phases: &[(Phase, SourceSpan)],
        runtimes: &BTreeMap<String, (Runtime, Option<RawUnit>)>,
    ) -> Vec<Service> {
        self.duplicates(
            "service",
            raw.services.iter().filter_map(|s| s.name.as_ref()),
        );
        let phase_names: Vec<&str> = phases.iter().map(|(p, _)| p.name.as_str()).collect();
        let runtime_names: Vec<&str> = runtimes.keys().map(String::as_str).collect();
        let service_names: Vec<&str> = raw
            .services
            .iter()
            .filter_map(|s| s.name.as_ref().map(|n| n.value.as_str()))
            .collect();
        let service_set: HashSet<&str> = service_names.iter().copied().collect();
        let phase_index_of: HashMap<&str, usize> = phase_names
            .iter()
            .enumerate()
            .rev()
            .map(|(i, n)| (*n, i))
            .collect();
        let mut ports: HashMap<u16, (&str, SourceSpan)> = HashMap::new();
        let mut out = Vec::new();
        for s in &raw.services {
            let Some(name) = &s.name else { continue };
            self.name(name, "service");
            let runtime = match &s.runtime {
                None if s.seen.iter().any(|n| n == "runtime") => None,
                None => {
                    self.push(Problem::new(
                        ProblemKind::MissingValue,
                        name.span,
                        format!("service `{}` has no runtime", name.value),
                        "no `runtime` here",
                        format!(
                            "add runtime \"...\"; defined runtimes: {}",
                            listed(&runtime_names, LISTED)
                        ),
                    ));
                    None
                }
                Some(r) if !runtimes.contains_key(&r.value) => {
                    self.reference(r, "runtime", &runtime_names);
                    None
                }
                Some(r) => runtimes.get(&r.value),
            };
            let phase_index = match &s.phase {
                None if s.seen.iter().any(|n| n == "phase") => None,
                None => {
                    self.push(Problem::new(
                        ProblemKind::MissingValue,
                        name.span,
                        format!("service `{}` has no phase", name.value),
                        "no `phase` here",
                        format!(
                            "add phase \"...\"; phases: {}",
                            listed(&phase_names, LISTED)
                        ),
                    ));
                    None
                }
                Some(p) => {
                    let idx = phase_index_of.get(p.value.as_str()).copied();
                    if idx.is_none() {
                        self.reference(p, "phase", &phase_names);
                    }
                    idx
                }
            };
            // A scheduled job is checked as its timer: active, and stable.
            let readiness = if s.schedule.is_some() {
                Some(Readiness::None)
            } else {
                self.readiness(s)
            };
            // `None`: a problem was reported; `Some(None)`: no port, and
            // its readiness needs none.
            let port = match &s.port {
                None if s.seen.iter().any(|n| n == "port") => None,
                // A `ready` that was refused is not reported again as a
                // missing port.
                None if readiness.is_none() => None,
                None if readiness.as_ref().is_some_and(|r| !needs_port(r, s)) => Some(None),
                None => {
                    self.push(Problem::new(
                        ProblemKind::MissingValue,
                        name.span,
                        format!("service `{}` has no port", name.value),
                        "no `port` here",
                        "add port 3000 (the port its readiness endpoint answers on); a service that listens on nothing says how it is ready instead: ready \"none\", ready \"notify\" or ready \"exec\" \"program\" ...",
                    ));
                    None
                }
                Some(p) => match u16::try_from(p.value) {
                    Ok(port) if port > 0 => {
                        if let Some((other, first)) = ports.get(&port) {
                            self.push(
                                Problem::new(
                                    ProblemKind::PortConflict,
                                    p.span,
                                    format!(
                                        "services `{other}` and `{}` both use port {port}",
                                        name.value
                                    ),
                                    "port already taken",
                                    "give each service its own port",
                                )
                                .also(*first, format!("`{other}` uses it here")),
                            );
                        } else {
                            ports.insert(port, (&name.value, p.span));
                        }
                        Some(Some(port))
                    }
                    _ => {
                        self.push(Problem::new(
                            ProblemKind::PortRange,
                            p.span,
                            format!("port {} is out of range", p.value),
                            "not a TCP port",
                            "ports are 1 to 65535",
                        ));
                        None
                    }
                },
            };
            for d in &s.depends_on {
                if d.value == name.value {
                    self.push(Problem::new(
                        ProblemKind::DependencyCycle,
                        d.span,
                        format!("service `{}` depends on itself", name.value),
                        "self-dependency",
                        "remove it from depends-on",
                    ));
                } else if !service_set.contains(d.value.as_str()) {
                    self.reference(d, "service", &service_names);
                }
            }
            let path = s.path.as_ref().map_or_else(
                || DEFAULT_SERVICE_PATH.replace("{service}", &name.value),
                |p| {
                    self.placeholders(p, IN_SERVICE_PATH, "a service path");
                    // `.` alone: the service is the whole repository.
                    if p.value != ROOT_PATH {
                        self.safe_path(p, "path");
                    }
                    p.value.replace("{service}", &name.value)
                },
            );
            for w in &s.watch {
                self.placeholders(w, IN_SERVICE_PATH, "a watch path");
                self.safe_path(w, "watch path");
            }
            for h in [&s.health, &s.metrics].into_iter().flatten() {
                self.health_path(h);
            }
            if let Some(r) = &s.role {
                self.name(r, "role");
            }
            let unit = match (s.unit.as_ref(), runtime.and_then(|(_, u)| u.as_ref())) {
                (None, None) => None,
                (own, rt) => {
                    if let Some(own) = own {
                        // Reports the service's own problems; the runtime's
                        // were reported once, with the runtime.
                        let _ = self.unit(own);
                    }
                    let merged = merge_unit(rt, own);
                    let spec = Validator {
                        problems: &mut Vec::new(),
                    }
                    .unit(&merged);
                    Some((spec, merged.span, merged.exec.is_some()))
                }
            };
            if let Some((_, span, false)) = &unit {
                self.push(Problem::new(
                    ProblemKind::MissingValue,
                    *span,
                    format!("the unit of service `{}` has no exec", name.value),
                    "no `exec` in this unit",
                    "add exec \"/path/to/program\" \"arg\" ... (the unit's ExecStart)",
                ));
            }
            if let (Some(Readiness::Notify), None, Some(r)) = (&readiness, &unit, &s.ready) {
                self.push(Problem::new(
                    ProblemKind::ReadyKind,
                    r.span,
                    format!(
                        "service `{}` is ready \"notify\", but moorline does not write its unit",
                        name.value
                    ),
                    "needs a unit moorline writes",
                    "add a unit block (unit { exec ... }) so that moorline writes Type=notify, or choose ready \"tcp\", \"exec\" or \"none\"",
                ));
            }
            let unit_name = project.map(|p| p.unit_name.replace("{service}", &name.value));
            if let Some(u) = &unit_name
                && is_valid_name(&name.value)
                && u.len() > UNIT_NAME_MAX
                && u.len() - name.value.len() < UNIT_NAME_MAX
            {
                // Long only with this service's name (a template that is
                // too long for any name was reported at the template).
                self.push(Problem::new(
                    ProblemKind::UnitNameTooLong,
                    name.span,
                    format!(
                        "the unit name of service `{}` has {} characters, more than systemd allows ({UNIT_NAME_MAX})",
                        name.value,
                        u.len()
                    ),
                    "unit name too long",
                    "systemd refuses unit names over 255 characters: shorten the service name or the project's unit-name",
                ));
            }
            let cutover = s.cutover.as_ref().and_then(|c| {
                self.cutover(c, name, !raw.proxies.is_empty(), unit.is_some(), &mut ports)
            });
            // A slot is confirmed, and the proxy then asked, on a port:
            // a blue/green service is ready over HTTP or TCP, on its port.
            if let (Some(c), Some(r)) = (&s.cutover, &readiness)
                && cutover.is_some()
                && (!matches!(r, Readiness::Http | Readiness::Tcp) || matches!(port, Some(None)))
            {
                self.push(Problem::new(
                    ProblemKind::ReadyKind,
                    s.ready.as_ref().map_or(c.span, |r| r.span),
                    format!(
                        "service `{}` cuts over blue/green, which needs a port and a readiness check on it",
                        name.value
                    ),
                    "no port to check a slot on",
                    "give the service a `port` and an HTTP `ready` path (the default) or ready \"tcp\"; a service that listens on nothing deploys with the default cutover \"restart\"",
                ));
            }
            let schedule = self.schedule(s, name, unit.is_some());
            let build_on_host = match s.build_on.as_ref().map(|b| (b.value.as_str(), b.span)) {
                None | Some(("anywhere", _)) => false,
                Some(("host", _)) => true,
                Some((other, span)) => {
                    self.push(Problem::new(
                        ProblemKind::InvalidValue,
                        span,
                        format!("unknown build place `{other}`"),
                        "not where a service builds",
                        "write build-on \"host\" (each host builds it, as for native modules) or build-on \"anywhere\" (the default: built once, shipped as an artifact)",
                    ));
                    false
                }
            };
            // A cutover service runs as two instances of a template unit.
            let unit_name = match (unit_name, &cutover) {
                (Some(u), Some(_)) => Some(
                    u.strip_suffix(".service")
                        .map_or_else(|| u.clone(), |stem| format!("{stem}@.service")),
                ),
                (u, _) => u,
            };
            // A service without a port: `{port}` in its unit (its own, or
            // its runtime's `env PORT="{port}"`) would be written as is.
            if let (Some(None), Some((spec, span, _))) = (port, &unit)
                && unit_uses_port(spec)
            {
                self.push(Problem::new(
                    ProblemKind::UnknownPlaceholder,
                    *span,
                    format!(
                        "service `{}` has no port, but its unit uses {{port}}",
                        name.value
                    ),
                    "{port} has no value for this service",
                    "give the service a `port`, or leave {port} out of the unit it gets (a runtime's unit applies to each of its services: give services without a port their own runtime)",
                ));
            }
            let (Some((rt, _)), Some(phase_index), Some(port), Some(unit_name), Some(readiness)) =
                (runtime, phase_index, port, unit_name, readiness)
            else {
                continue;
            };
            out.push(Service {
                name: name.value.clone(),
                runtime: rt.name.clone(),
                port,
                phase: phase_names[phase_index].to_owned(),
                phase_index,
                depends_on: s.depends_on.iter().map(|d| d.value.clone()).collect(),
                path,
                watch: s
                    .watch
                    .iter()
                    .map(|w| {
                        w.value
                            .replace("{service}", &name.value)
                            .trim_end_matches('/')
                            .to_owned()
                    })
                    .collect(),
                health: s
                    .health
                    .as_ref()
                    .map_or_else(|| DEFAULT_HEALTH.to_owned(), |h| h.value.clone()),
                ready: s
                    .ready
                    .as_ref()
                    .filter(|_| readiness == Readiness::Http)
                    .map_or_else(|| DEFAULT_READY.to_owned(), |h| h.value.clone()),
                readiness,
                metrics: s
                    .metrics
                    .as_ref()
                    .map_or_else(|| DEFAULT_METRICS.to_owned(), |h| h.value.clone()),
                ready_timeout: s
                    .ready_timeout
                    .as_ref()
                    .map_or(DEFAULT_READY_TIMEOUT, |t| t.value),
                unit: unit.map(|(u, _, _)| u),
                unit_name,
                role: s.role.as_ref().map(|r| r.value.clone()),
                start_after: Vec::new(),
                cutover,
                schedule,
                build_on_host,
            });
        }
        self.dependency_rules(raw, &phase_names);
        out
    }

    /// A service's `schedule` (and `persistent`): a non-blank `OnCalendar=`
    /// expression (control characters are refused when read), on a service
    /// whose unit moorline writes, checked by nothing but its timer (no
    /// `ready`), restarted in place (no `cutover`). `None` without one or
    /// with problems (reported).
    fn schedule(&mut self, s: &RawService, name: &Str, managed: bool) -> Option<Schedule> {
        let Some(cal) = &s.schedule else {
            if let Some(p) = &s.persistent {
                self.push(Problem::new(
                    ProblemKind::Schedule,
                    p.span,
                    format!("service `{}` is persistent but has no schedule", name.value),
                    "only a timer is persistent",
                    "add schedule \"*-*-* 03:00:00\" (an OnCalendar expression), or remove `persistent`",
                ));
            }
            return None;
        };
        let before = self.problems.len();
        let problem = |label: &str, message: String, help: &str| {
            Problem::new(ProblemKind::Schedule, cal.span, message, label, help)
        };
        if cal.value.trim().is_empty() {
            self.push(problem(
                "empty schedule",
                format!("the schedule of service `{}` is empty", name.value),
                "write an OnCalendar expression (systemd.time(7)), for example schedule \"*-*-* 03:00:00\" or schedule \"hourly\"",
            ));
        }
        if !managed {
            self.push(problem(
                "needs a unit moorline writes",
                format!(
                    "service `{}` has a schedule, but moorline does not write its unit",
                    name.value
                ),
                "give the service (or its runtime) a unit { exec ... } block: moorline writes it as Type=oneshot beside its .timer",
            ));
        }
        if let Some(r) = &s.ready {
            self.push(Problem::new(
                ProblemKind::Schedule,
                r.span,
                format!(
                    "service `{}` runs on a schedule, so nothing is asked of it at deploy",
                    name.value
                ),
                "a scheduled job has no readiness",
                "remove `ready`: a deploy restarts the job's timer and checks that the timer stays active; the job itself runs at its next scheduled time",
            ));
        }
        if let Some(c) = &s.cutover {
            self.push(Problem::new(
                ProblemKind::Schedule,
                c.span,
                format!(
                    "service `{}` runs on a schedule and cannot cut over blue/green",
                    name.value
                ),
                "a job has no slots",
                "remove `cutover` (or `schedule`)",
            ));
        }
        (self.problems.len() == before && !has_control(&cal.value)).then(|| Schedule {
            calendar: cal.value.clone(),
            persistent: s.persistent.as_ref().is_some_and(|p| p.value),
        })
    }

    /// A service's `cutover` block: the mode, two free slot ports, an
    /// absolute upstream file, a proxy that fronts the service and a unit
    /// moorline renders (the slots are instances of it). `None` for the
    /// default (`"restart"`) or a block with problems (reported).
    fn cutover<'r>(
        &mut self,
        c: &'r RawCutover,
        name: &'r Str,
        has_proxy: bool,
        managed: bool,
        ports: &mut HashMap<u16, (&'r str, SourceSpan)>,
    ) -> Option<Cutover> {
        let mode = c.mode.as_ref()?;
        match mode.value.as_str() {
            "blue-green" => {}
            "restart" => return None,
            other => {
                self.push(Problem::new(
                    ProblemKind::InvalidValue,
                    mode.span,
                    format!("unknown cutover mode `{other}`"),
                    "not a cutover mode",
                    "write cutover \"blue-green\" (two slots behind the proxy) or cutover \"restart\" (the default)",
                ));
                return None;
            }
        }
        let before = self.problems.len();
        if !has_proxy {
            self.push(Problem::new(
                ProblemKind::CutoverWithoutProxy,
                mode.span,
                format!(
                    "service `{}` cuts over behind the proxy, but there is no `proxy`",
                    name.value
                ),
                "needs a proxy",
                "add proxy \"nginx\" { unit \"nginx.service\"; check \"nginx\" \"-t\" } and include the upstream file in its configuration (docs/operations.md), or remove `cutover`",
            ));
        }
        if !managed {
            self.push(Problem::new(
                ProblemKind::CutoverUnmanaged,
                mode.span,
                format!(
                    "service `{}` has no unit block: its slots are instances of the unit moorline renders",
                    name.value
                ),
                "no unit to run twice",
                "give the service (or its runtime) a unit { exec ... } block, or remove `cutover`",
            ));
        }
        let mut slots = Vec::new();
        for p in &c.slots {
            match u16::try_from(p.value) {
                Ok(port) if port > 0 => {
                    if let Some((other, first)) = ports.get(&port) {
                        self.push(
                            Problem::new(
                                ProblemKind::PortConflict,
                                p.span,
                                format!(
                                    "slot port {port} of service `{}` is taken by `{other}`",
                                    name.value
                                ),
                                "port already taken",
                                "give each slot a port no service or other slot uses",
                            )
                            .also(*first, format!("`{other}` uses it here")),
                        );
                    } else {
                        ports.insert(port, (&name.value, p.span));
                    }
                    slots.push(port);
                }
                _ => self.push(Problem::new(
                    ProblemKind::PortRange,
                    p.span,
                    format!("port {} is out of range", p.value),
                    "not a TCP port",
                    "ports are 1 to 65535",
                )),
            }
        }
        if c.slots.len() != 2 {
            self.push(Problem::new(
                ProblemKind::CutoverSlots,
                c.slots_span.unwrap_or(c.span),
                format!(
                    "blue-green service `{}` needs two slot ports, {} given",
                    name.value,
                    c.slots.len()
                ),
                "two slots needed",
                "write slots 8101 8102: two free ports, one for the live release and one for the next",
            ));
        }
        let upstream = if let Some(u) = &c.upstream {
            self.absolute(u, "the upstream file");
            Some(u.value.clone())
        } else {
            self.push(Problem::new(
                ProblemKind::MissingValue,
                c.span,
                format!("the cutover of service `{}` has no upstream file", name.value),
                "no `upstream` here",
                "add upstream \"/etc/nginx/moorline/{service}.conf\": the file moorline writes and nginx includes",
            ));
            None
        };
        if self.problems.len() != before {
            return None;
        }
        let [a, b] = slots.as_slice() else {
            return None;
        };
        Some(Cutover {
            slots: [*a, *b],
            upstream: upstream?.replace("{service}", &name.value),
            drain: c.drain.as_ref().map_or(DEFAULT_DRAIN, |d| d.value),
        })
    }

    /// Cycles (the whole cycle named) and dependencies on later phases.
    fn dependency_rules(&mut self, raw: &RawConfig, phase_names: &[&str]) {
        let by_name: BTreeMap<&str, &RawService> = raw
            .services
            .iter()
            .filter_map(|s| s.name.as_ref().map(|n| (n.value.as_str(), s)))
            .collect();
        let phase_index: HashMap<&str, usize> = phase_names
            .iter()
            .enumerate()
            .rev()
            .map(|(i, n)| (*n, i))
            .collect();
        let phase_of = |s: &RawService| {
            s.phase
                .as_ref()
                .and_then(|p| phase_index.get(p.value.as_str()).copied())
        };
        for s in by_name.values() {
            let Some(name) = &s.name else { continue };
            for d in &s.depends_on {
                let Some(dep) = by_name.get(d.value.as_str()) else {
                    continue;
                };
                if let (Some(mine), Some(theirs)) = (phase_of(s), phase_of(dep))
                    && theirs > mine
                {
                    let mut p = Problem::new(
                        ProblemKind::LaterPhaseDependency,
                        d.span,
                        format!(
                            "service `{}` (phase `{}`) depends on `{}`, which starts later (phase `{}`)",
                            name.value, phase_names[mine], d.value, phase_names[theirs]
                        ),
                        "depends on a later phase",
                        format!(
                            "move `{}` to phase `{}` or earlier, or drop the dependency",
                            d.value, phase_names[mine]
                        ),
                    );
                    if let Some(ph) = &dep.phase {
                        p = p.also(ph.span, "its phase is set here");
                    }
                    self.push(p);
                }
            }
        }
        // Cycles: one per strongly connected component (Kosaraju, linear
        // and iterative: petgraph's Tarjan recurses once per service in a
        // dependency chain and overflows the stack on a long one),
        // named by the shortest cycle through its smallest service, with
        // every edge labelled. Enumerating all cycles would be exponential
        // on a dense (hostile) dependency graph.
        let names: Vec<&str> = by_name.keys().copied().collect();
        let index: BTreeMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let mut g: petgraph::graph::DiGraph<usize, ()> = petgraph::graph::DiGraph::new();
        let nodes: Vec<_> = (0..names.len()).map(|i| g.add_node(i)).collect();
        for (i, n) in names.iter().enumerate() {
            for d in &by_name[n].depends_on {
                if let Some(j) = index.get(d.value.as_str())
                    && *j != i
                {
                    g.add_edge(nodes[i], nodes[*j], ());
                }
            }
        }
        let mut sccs: Vec<Vec<usize>> = petgraph::algo::kosaraju_scc(&g)
            .into_iter()
            .filter(|c| c.len() > 1)
            .map(|c| {
                let mut v: Vec<usize> = c.into_iter().map(|n| g[n]).collect();
                v.sort_unstable();
                v
            })
            .collect();
        sccs.sort();
        for scc in sccs {
            let start = scc[0];
            // Breadth-first from `start` back to itself, inside the component.
            let mut prev: BTreeMap<usize, usize> = BTreeMap::new();
            let mut queue = std::collections::VecDeque::from([start]);
            let mut found = None;
            while let Some(cur) = queue.pop_front() {
                for d in &by_name[names[cur]].depends_on {
                    let Some(&next) = index.get(d.value.as_str()) else {
                        continue;
                    };
                    if scc.binary_search(&next).is_err() || next == cur {
                        continue;
                    }
                    if next == start {
                        found = Some(cur);
                        break;
                    }
                    if let std::collections::btree_map::Entry::Vacant(e) = prev.entry(next) {
                        e.insert(cur);
                        queue.push_back(next);
                    }
                }
                if found.is_some() {
                    break;
                }
            }
            let Some(mut last) = found else { continue };
            let mut path = vec![last];
            while last != start {
                let Some(&p) = prev.get(&last) else { break };
                path.push(p);
                last = p;
            }
            path.reverse();
            let cycle: Vec<String> = path.iter().map(|i| names[*i].to_owned()).collect();
            self.cycle(&cycle, &by_name);
        }
    }

    fn cycle(&mut self, cycle: &[String], by_name: &BTreeMap<&str, &super::raw::RawService>) {
        let mut names = cycle.to_vec();
        names.push(cycle[0].clone());
        let edge_span = |from: &str, to: &str| {
            by_name
                .get(from)
                .and_then(|s| s.depends_on.iter().find(|d| d.value == to).map(|d| d.span))
        };
        let Some(first) = edge_span(&names[0], &names[1]) else {
            return;
        };
        let mut p = Problem::new(
            ProblemKind::DependencyCycle,
            first,
            format!("dependency cycle: {}", names.join(" → ")),
            format!("`{}` depends on `{}`", names[0], names[1]),
            "services in a cycle can never start in order; remove one of these depends-on",
        );
        for w in names.windows(2).skip(1) {
            if let Some(span) = edge_span(&w[0], &w[1]) {
                p = p.also(span, format!("`{}` depends on `{}`", w[0], w[1]));
            }
        }
        self.push(p);
    }

    fn proxy(&mut self, raw: &RawConfig) -> Option<Proxy> {
        if let Some(second) = raw.proxies.get(1) {
            self.push(
                Problem::new(
                    ProblemKind::Duplicate,
                    second.span,
                    "a second `proxy`",
                    "second proxy",
                    "moorline manages one reverse proxy; merge the two",
                )
                .also(raw.proxies[0].span, "first proxy"),
            );
        }
        let p = raw.proxies.first()?;
        let name = p.name.as_ref()?;
        self.name(name, "proxy");
        for w in &p.watch {
            self.safe_path(w, "watch path");
        }
        if let Some(c) = &p.check {
            self.command_placeholders(c, &["root"], "the proxy check");
            self.program(c, "the proxy check");
        }
        let unit = match &p.unit {
            None => {
                self.push(Problem::new(
                    ProblemKind::MissingValue,
                    p.span,
                    format!("proxy `{}` has no unit", name.value),
                    "no `unit` here",
                    "add unit \"nginx.service\"",
                ));
                return None;
            }
            Some(u) => {
                self.unit_name(u, "nginx.service");
                u.value.clone()
            }
        };
        Some(Proxy {
            name: name.value.clone(),
            unit,
            check: p.check.as_ref().map(command),
            watch: p
                .watch
                .iter()
                .map(|w| w.value.trim_end_matches('/').to_owned())
                .collect(),
        })
    }
}

/// A service's own unit settings laid over its runtime's: single values
/// from the service win, lists and environment variables add up (the
/// service's value wins for a variable set in both).
fn merge_unit(runtime: Option<&RawUnit>, own: Option<&RawUnit>) -> RawUnit {
    let base = runtime.cloned().unwrap_or_default();
    let Some(own) = own else { return base };
    let pick = |a: &Option<Str>, b: &Option<Str>| a.clone().or_else(|| b.clone());
    RawUnit {
        span: own.span,
        description: pick(&own.description, &base.description),
        exec: own.exec.clone().or(base.exec),
        env: base.env.iter().chain(&own.env).cloned().collect(),
        env_files: base
            .env_files
            .iter()
            .chain(&own.env_files)
            .cloned()
            .collect(),
        user: pick(&own.user, &base.user),
        group: pick(&own.group, &base.group),
        restart: pick(&own.restart, &base.restart),
        working_directory: pick(&own.working_directory, &base.working_directory),
        after: base.after.iter().chain(&own.after).cloned().collect(),
        wants: base.wants.iter().chain(&own.wants).cloned().collect(),
        wanted_by: pick(&own.wanted_by, &base.wanted_by),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_names_follow_git() {
        for (b, ok) in [
            ("main", true),
            ("production", true),
            ("release/2024-05", true),
            ("feature/a.b", true),
            ("", false),
            ("a:b", false),
            ("main.lock", false),
            ("main~1", false),
            ("main^", false),
            ("a..b", false),
            ("..", false),
            ("@{-1}", false),
            ("@", false),
            ("my branch", false),
            ("-main", false),
            ("feature/", false),
            ("main.", false),
            ("a//b", false),
            (".hidden", false),
            ("a/.b", false),
            ("a?b", false),
            ("a*b", false),
            ("a[b", false),
            ("a\\b", false),
            ("HEAD", false),
        ] {
            assert_eq!(is_valid_branch(b), ok, "{b:?}");
        }
    }

    /// `promote-from`'s `min-healthy` is a duration (zero when left out);
    /// a bad one is reported with its code, alongside other problems.
    #[test]
    fn promote_from_min_healthy_is_a_duration() {
        let config = |props: &str| {
            format!(
                "project \"p\"\nenvironment \"staging\" {{ branch \"main\"; root \"/opt/s\" }}\n\
                 environment \"production\" {{ branch \"production\"; root \"/opt/p\"; promote-from \"staging\"{props} }}\n\
                 phase \"a\"\nruntime \"go\" {{ }}\n\
                 service \"b\" {{ runtime \"go\"; phase \"a\"; port 9 }}\n"
            )
        };
        let min = |props: &str| {
            crate::config::parse("t.kdl", &config(props)).map(|c| {
                c.environment("production")
                    .and_then(|e| e.promote_from.as_ref())
                    .map(|p| p.min_healthy.as_secs())
            })
        };
        assert_eq!(min("").ok(), Some(Some(0)));
        assert_eq!(min(" min-healthy=\"30m\"").ok(), Some(Some(1800)));
        assert_eq!(min(" min-healthy=90").ok(), Some(Some(90)));
        for (bad, code) in [
            (
                " min-healthy=\"soon\"",
                "moorline::config::invalid_duration",
            ),
            (" min-healthy=\"0s\"", "moorline::config::invalid_duration"),
            (
                " min-healthy=\"30d\"",
                "moorline::config::duration_too_long",
            ),
            (" min-healthy=#true", "moorline::config::invalid_duration"),
            (" min-health=\"30m\"", "moorline::config::unknown_property"),
        ] {
            let codes: Vec<&str> = match min(bad) {
                Ok(_) => Vec::new(),
                Err(e) => e.problems.iter().map(|p| p.kind.code()).collect(),
            };
            assert_eq!(codes, vec![code], "{bad}");
        }
    }

    /// A blue/green service needs a proxy, a unit, two free slot ports and
    /// an absolute upstream file: each problem is reported at once with its
    /// code; `"restart"` is the default spelled out.
    #[test]
    fn cutover_problems_are_coded() {
        let config = |cutover: &str, proxy: bool, unit: bool| {
            format!(
                "project \"p\"\nenvironment \"staging\" {{ branch \"main\"; root \"/opt/p\" }}\n\
                 phase \"a\"\nruntime \"go\" {{ {} }}\n\
                 service \"b\" {{ runtime \"go\"; port 9; phase \"a\" }}\n\
                 service \"s\" {{ runtime \"go\"; port 1; phase \"a\"; {cutover} }}\n{}",
                if unit {
                    "unit { exec \"/bin/true\"; }"
                } else {
                    ""
                },
                if proxy {
                    "proxy \"nginx\" { unit \"nginx.service\"; }"
                } else {
                    ""
                },
            )
        };
        let codes = |text: String| -> Vec<&'static str> {
            match crate::config::parse("t.kdl", &text) {
                Ok(_) => Vec::new(),
                Err(e) => e.problems.iter().map(|p| p.kind.code()).collect(),
            }
        };
        let good =
            r#"cutover "blue-green" { slots 11 12; upstream "/etc/nginx/m/{service}.conf"; }"#;
        assert_eq!(codes(config(good, true, true)), Vec::<&str>::new());
        let c = crate::config::parse("t.kdl", &config(good, true, true)).unwrap();
        let s = c.service("s").unwrap();
        assert_eq!(s.unit_name, "s@.service");
        assert_eq!(s.cutover.as_ref().unwrap().upstream, "/etc/nginx/m/s.conf");
        assert_eq!(s.cutover.as_ref().unwrap().drain, DEFAULT_DRAIN);
        assert!(c.service("b").unwrap().cutover.is_none());
        let restart = crate::config::parse("t.kdl", &config(r#"cutover "restart""#, false, false));
        assert!(restart.unwrap().service("s").unwrap().cutover.is_none());
        assert_eq!(
            codes(config(good, false, false)),
            [
                "moorline::config::cutover_unmanaged",
                "moorline::config::cutover_without_proxy"
            ]
        );
        assert_eq!(
            codes(config(
                r#"cutover "blue-green" { slots 9 1 13; upstream "rel"; }"#,
                true,
                true
            )),
            [
                "moorline::config::cutover_slots",
                "moorline::config::port_conflict",
                "moorline::config::port_conflict",
                "moorline::config::unsafe_path",
            ]
        );
        assert_eq!(
            codes(config(r#"cutover "rolling""#, true, true)),
            ["moorline::config::invalid_value"]
        );
        assert_eq!(
            codes(config(
                r#"cutover "blue-green" { slots 11 12; }"#,
                true,
                true
            )),
            ["moorline::config::missing_value"]
        );
    }

    #[test]
    fn a_schedule_makes_a_job_without_port_or_readiness() {
        let config = |service: &str, unit: bool| {
            let unit = if unit {
                " unit { exec \"/bin/true\"; }"
            } else {
                ""
            };
            format!(
                "project \"p\"\nenvironment \"staging\" {{ branch \"main\"; root \"/opt/p\" }}\n\
                 phase \"a\"\nruntime \"go\" {{{unit} }}\n\
                 service \"j\" {{ runtime \"go\"; phase \"a\"; {service} }}\n"
            )
        };
        let codes = |text: String| -> Vec<&'static str> {
            match crate::config::parse("t.kdl", &text) {
                Ok(_) => Vec::new(),
                Err(e) => e.problems.iter().map(|p| p.kind.code()).collect(),
            }
        };
        let good = config(r#"schedule "*-*-* 03:00:00"; persistent #true;"#, true);
        assert_eq!(codes(good.clone()), Vec::<&str>::new());
        let c = crate::config::parse("t.kdl", &good).unwrap();
        let j = c.service("j").unwrap();
        assert_eq!(
            j.schedule,
            Some(Schedule {
                calendar: "*-*-* 03:00:00".into(),
                persistent: true
            })
        );
        assert_eq!((j.port, &j.readiness), (None, &Readiness::None));
        assert_eq!(j.timer_unit().as_deref(), Some("j.timer"));
        assert_eq!(j.live_unit(), "j.timer");
        let plain = crate::config::parse("t.kdl", &config(r#"schedule "daily";"#, true)).unwrap();
        assert!(
            !plain
                .service("j")
                .unwrap()
                .schedule
                .as_ref()
                .unwrap()
                .persistent
        );
        for (service, unit, want) in [
            (r#"schedule " ";"#, true, vec!["moorline::config::schedule"]),
            // A job with a newline: refused once, where the string is read.
            (
                r#"schedule "daily\n";"#,
                true,
                vec!["moorline::config::control_character"],
            ),
            (
                r#"schedule "daily";"#,
                false,
                vec!["moorline::config::schedule"],
            ),
            (
                r#"schedule "daily"; ready "tcp"; port 3;"#,
                true,
                vec!["moorline::config::schedule"],
            ),
            (
                r#"persistent #true; ready "none";"#,
                true,
                vec!["moorline::config::schedule"],
            ),
        ] {
            assert_eq!(codes(config(service, unit)), want, "{service}");
        }
    }

    #[test]
    fn every_readiness_kind_is_read_and_only_http_and_tcp_need_a_port() {
        let config = |ready: &str, port: &str| {
            format!(
                "project \"p\"\nenvironment \"staging\" {{ branch \"main\"; root \"/opt/p\" }}\n\
                 phase \"a\"\nruntime \"go\" {{ unit {{ exec \"/bin/true\"; }} }}\n\
                 service \"w\" {{ runtime \"go\"; {port} phase \"a\"; {ready} }}\n"
            )
        };
        let exec = Readiness::Exec(vec!["/bin/check".into(), "{service}".into()]);
        // A portless service whose unit says {port} is refused.
        let with_port_env = config("ready \"none\";", "").replace(
            "exec \"/bin/true\";",
            "exec \"/bin/true\"; env PORT=\"{port}\";",
        );
        let err = crate::config::parse("moorline.kdl", &with_port_env).unwrap_err();
        assert!(
            format!("{err:?}").contains("has no port, but its unit uses {port}"),
            "{err:?}"
        );
        for (ready, port, want) in [
            ("", "port 3000;", Some(Readiness::Http)),
            ("ready \"/up\";", "port 3000;", Some(Readiness::Http)),
            ("ready \"tcp\";", "port 3000;", Some(Readiness::Tcp)),
            ("ready \"notify\";", "", Some(Readiness::Notify)),
            ("ready \"none\";", "", Some(Readiness::None)),
            (
                "ready \"exec\" \"/bin/check\" \"{service}\";",
                "",
                Some(exec),
            ),
            ("ready \"http://10.0.0.1:9/up\";", "", Some(Readiness::Http)),
            ("", "", None),
            ("ready \"tcp\";", "", None),
            ("ready \"/up\";", "", None),
            ("ready \"exec\";", "", None),
            ("ready \"none\" \"x\";", "", None),
            ("ready \"grpc\";", "port 3000;", None),
        ] {
            let got = crate::config::parse("moorline.kdl", &config(ready, port));
            match want {
                Some(r) => {
                    let c = got.unwrap_or_else(|e| panic!("{ready} {port}: {e:?}"));
                    assert_eq!(c.services[0].readiness, r, "{ready} {port}");
                    assert_eq!(c.services[0].port.is_some(), !port.is_empty());
                }
                None => assert!(got.is_err(), "{ready} {port}: accepted"),
            }
        }
    }

    #[test]
    fn only_a_lone_dot_names_the_repository_root() {
        let config = |path: &str| {
            format!(
                "project \"p\"\nenvironment \"staging\" {{ branch \"main\"; root \"/opt/p\" }}\n\
                 phase \"a\"\nruntime \"go\" {{ unit {{ exec \"/bin/true\"; }} }}\n\
                 service \"web\" {{ runtime \"go\"; port 3000; phase \"a\"; path {} }}\n",
                crate::config::kdl_string(path)
            )
        };
        for (path, ok) in [
            (".", true),
            ("web", true),
            ("./", false),
            ("./web", false),
            ("", false),
            ("..", false),
        ] {
            let got = crate::config::parse("moorline.kdl", &config(path));
            assert_eq!(got.is_ok(), ok, "{path:?}: {got:?}");
            if let Ok(c) = got {
                assert_eq!(c.services[0].is_root(), path == ".", "{path:?}");
            }
        }
    }

    #[test]
    fn unit_users_follow_useradd() {
        for (u, ok) in [
            ("root", true),
            ("pakashop", true),
            ("_apt", true),
            ("www-data", true),
            ("build_1", true),
            ("machine$", true),
            ("0", true),
            ("1001", true),
            ("4294967294", true),
            (&"a".repeat(31), true),
            (&"a".repeat(32), false),
            ("", false),
            ("root x", false),
            ("app:admin", false),
            ("1abc", false),
            ("-root", false),
            ("first.last", false),
            ("a$b", false),
            ("$", false),
            ("caf\u{e9}", false),
            ("65535", false),
            ("4294967295", false),
            ("99999999999", false),
        ] {
            assert_eq!(unit_user_fault(u).is_none(), ok, "{u:?}");
        }
    }

    #[test]
    fn unit_dirs_are_where_systemd_reads_units() {
        for (d, ok) in [
            ("/etc/systemd/system", true),
            ("/etc/systemd/system/", true),
            ("/run/systemd/system", true),
            ("/usr/local/lib/systemd/system", true),
            ("/home/deploy/.config/systemd/user", true),
            ("/etc/systemd/user", true),
            ("/etc", false),
            ("/", false),
            ("/etc/systemd", false),
            ("/etc/systemd/system.d", false),
            ("/opt/units", false),
            ("/etc/systemd/system/multi-user.target.wants", false),
        ] {
            assert_eq!(is_unit_dir(d), ok, "{d}");
        }
    }

    #[test]
    fn roots_that_cannot_hold_releases() {
        for (root, ok) in [
            ("/opt/pakashop", true),
            ("/srv/shop", true),
            ("/var/lib/shop", true),
            ("/home/deploy/app", true),
            ("/", false),
            ("//", false),
            ("/etc", false),
            ("/etc/shop", false),
            ("/usr/local/shop", false),
            ("/proc/1", false),
            ("/var", false),
            ("/opt/", false),
            ("/tmp", false),
        ] {
            assert_eq!(unsafe_root(root).is_none(), ok, "{root}");
        }
    }

    #[test]
    fn unit_name_faults() {
        let long = format!("{}.service", "a".repeat(UNIT_NAME_MAX - 7));
        for (name, fault) in [
            ("shop-api.service", None),
            ("a@b.service", None),
            ("x:y.target", None),
            ("shop-api", Some(UnitNameFault::NoSuffix)),
            (".service", Some(UnitNameFault::NoSuffix)),
            ("shop api.service", Some(UnitNameFault::Characters)),
            ("a/b.service", Some(UnitNameFault::Characters)),
            ("caf\u{e9}.service", Some(UnitNameFault::Characters)),
            (long.as_str(), Some(UnitNameFault::TooLong)),
            (&long[1..], None),
        ] {
            assert_eq!(unit_name_fault(name), fault, "{name}");
        }
    }
}

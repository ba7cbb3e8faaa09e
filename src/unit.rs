//! Unit files: a service's declarative `unit` block → the exact text of
//! its systemd unit file (deterministic: same spec, same bytes), plus the
//! redacted form shown in plans, where secret values never appear.
//!
//! Every value is written by the one function for the field it lands in,
//! after template substitution, so that systemd reads back exactly that
//! value and nothing else: `%` is doubled wherever systemd expands
//! specifiers (systemd.unit(5), "Specifiers"), `Environment=` assignments
//! are double-quoted with `\"` and `\\` (systemd.exec(5)), `ExecStart=`
//! words are quoted as systemd.service(5) "Command lines" describes, with
//! `$` doubled. A value that no escaping can carry into its field (a
//! control character, which would end the line; whitespace systemd strips;
//! a trailing backslash, which would join the next line; a program name
//! systemd would read as a prefix; …) is refused: [`check`] says which
//! values are representable, and rendering fails with a [`UnitError`]
//! rather than write anything else. [`reader`] reads unit files back the
//! way systemd does, for the round-trip tests and for redaction.

pub(crate) mod reader;

use std::collections::BTreeSet;
use std::fmt;
use std::io::Write as _;
use std::path::Path;

use miette::Diagnostic;

use crate::config::{Environment, Service, UnitSpec, looks_secret};
use crate::template;

/// What replaces a secret value in anything shown to people.
pub(crate) const REDACTED: &str = "(redacted)";

/// The longest value moorline writes into any unit-file field, in bytes:
/// far beyond any sensible value, and small enough that one line stays well
/// under systemd's limit for a line ([`reader::LONG_LINE_MAX`], 1 MiB).
pub(crate) const MAX_VALUE_LEN: usize = 64 * 1024;

/// systemd's `PATH_MAX` for a path setting.
const MAX_PATH_LEN: usize = 4096;

/// systemd's limit for a unit name (`UNIT_NAME_MAX` minus the NUL).
const MAX_UNIT_NAME_LEN: usize = 255;

/// The unit-file fields moorline writes, by the rules that apply to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    /// `Description=`: free text, specifiers expanded, stripped.
    Description,
    /// `After=`, `Wants=`, `WantedBy=`: a unit name (`name.type`).
    UnitName,
    /// `WorkingDirectory=` (and the environment's `root`, which lands in
    /// paths): an absolute path without `..`.
    Path,
    /// `EnvironmentFile=`: an absolute path, optionally prefixed by `-`
    /// (systemd then ignores a missing file).
    EnvFile,
    /// `User=`, `Group=`: a user or group name, or a numeric id.
    UserGroup,
    /// The name of an `Environment=` assignment: letters, digits and `_`,
    /// not starting with a digit.
    EnvName,
    /// The value of an `Environment=` assignment (any text but control
    /// characters).
    EnvValue,
    /// The first word of `ExecStart=`: an absolute path or a file name.
    Program,
    /// The other words of `ExecStart=` (any text but control characters).
    Argument,
}

impl Field {
    /// The unit-file key (or the part of one) the field is.
    pub(crate) fn key(self) -> &'static str {
        match self {
            Field::Description => "Description",
            Field::UnitName => "After/Wants/WantedBy",
            Field::Path => "WorkingDirectory",
            Field::EnvFile => "EnvironmentFile",
            Field::UserGroup => "User/Group",
            Field::EnvName => "Environment (name)",
            Field::EnvValue => "Environment (value)",
            Field::Program => "ExecStart (program)",
            Field::Argument => "ExecStart (argument)",
        }
    }
}

/// Why a value cannot be written into a field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unrepresentable {
    #[error("contains the control character U+{:04X}", u32::from(*.0))]
    ControlCharacter(char),
    #[error("is empty")]
    Empty,
    #[error("starts or ends with a space, which systemd strips")]
    SurroundingSpace,
    #[error("ends with a backslash, which joins the next line of a unit file")]
    TrailingBackslash,
    #[error("is {0} bytes long, more than the {1} a unit file takes")]
    TooLong(usize, usize),
    #[error("is not an absolute path")]
    NotAbsolute,
    #[error("has a `..` component, which systemd refuses")]
    DotDot,
    #[error("is not a unit name (`name.service`, `name.target`, …; letters, digits and `:-_.\\@`)")]
    NotUnitName,
    #[error(
        "is not a user or group name (no `:` or `/`, not `.` or `..`, ids below 4294967295 and not 65535)"
    )]
    NotUserName,
    #[error("is not a variable name (letters, digits and `_`, not starting with a digit)")]
    NotEnvName,
    #[error(
        "starts with `{0}`, which systemd reads as a prefix of the command, not as part of its name"
    )]
    ProgramPrefix(char),
    #[error("contains `{0}`, which systemd does not allow in a program name")]
    ProgramCharacter(char),
    #[error("is neither an absolute path nor a file name")]
    NotProgram,
}

impl Unrepresentable {
    fn help(&self) -> &'static str {
        match self {
            Unrepresentable::ControlCharacter(_) => {
                "remove the control character (newlines, tabs, NUL, …); put multi-line values in an env-file"
            }
            Unrepresentable::Empty => "give a value or leave the setting out",
            Unrepresentable::SurroundingSpace => "remove the leading or trailing spaces",
            Unrepresentable::TrailingBackslash => "remove the trailing backslash",
            Unrepresentable::TooLong(..) => "shorten the value, or put it in an env-file",
            Unrepresentable::NotAbsolute | Unrepresentable::DotDot => {
                "write an absolute path without `..`, for example `{root}/data`"
            }
            Unrepresentable::NotUnitName => "write a unit name such as `postgresql.service`",
            Unrepresentable::NotUserName => "write an existing user or group name",
            Unrepresentable::NotEnvName => "rename the variable, for example `API_URL`",
            Unrepresentable::ProgramPrefix(_)
            | Unrepresentable::ProgramCharacter(_)
            | Unrepresentable::NotProgram => {
                "name the program by an absolute path (or a plain file name found on systemd's PATH)"
            }
        }
    }
}

#[cfg(test)]
/// Whether `value` can be written into `field` so that systemd reads back
/// exactly `value`. The config validator rejects what this rejects, so
/// that rendering a validated config never fails.
pub(crate) fn representable(field: Field, value: &str) -> bool {
    check(field, value).is_ok()
}

/// [`representable`], with the reason when it is not.
pub(crate) fn check(field: Field, value: &str) -> Result<(), Unrepresentable> {
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(Unrepresentable::ControlCharacter(c));
    }
    let max = match field {
        Field::Path | Field::EnvFile => MAX_PATH_LEN,
        Field::UnitName => MAX_UNIT_NAME_LEN,
        _ => MAX_VALUE_LEN,
    };
    if value.len() > max {
        return Err(Unrepresentable::TooLong(value.len(), max));
    }
    // Quoted fields carry any text; the others are written bare, so systemd
    // strips their surrounding whitespace and a trailing backslash would
    // continue the line.
    let quoted = matches!(field, Field::EnvValue | Field::Argument | Field::Program);
    if !quoted {
        if value.is_empty() {
            return Err(Unrepresentable::Empty);
        }
        if value.starts_with(' ') || value.ends_with(' ') {
            return Err(Unrepresentable::SurroundingSpace);
        }
        if value.ends_with('\\') {
            return Err(Unrepresentable::TrailingBackslash);
        }
    }
    match field {
        Field::Description | Field::EnvValue | Field::Argument => Ok(()),
        Field::Path => check_path(value),
        Field::EnvFile => check_path(value.strip_prefix('-').unwrap_or(value)),
        Field::UnitName => {
            if is_unit_name(value) {
                Ok(())
            } else {
                Err(Unrepresentable::NotUnitName)
            }
        }
        Field::UserGroup => {
            if is_user_name(value) {
                Ok(())
            } else {
                Err(Unrepresentable::NotUserName)
            }
        }
        Field::EnvName => {
            let mut chars = value.chars();
            let first_ok = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
            if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
                Ok(())
            } else {
                Err(Unrepresentable::NotEnvName)
            }
        }
        Field::Program => check_program(value),
    }
}

fn check_path(p: &str) -> Result<(), Unrepresentable> {
    if !p.starts_with('/') {
        return Err(Unrepresentable::NotAbsolute);
    }
    if p.split('/').any(|c| c == "..") {
        return Err(Unrepresentable::DotDot);
    }
    Ok(())
}

/// systemd's `config_parse_exec()`: the unquoted first word loses any of
/// the prefixes `-@:+!`, and the program must pass `string_is_safe()` and
/// be an absolute path or a file name. `$` is refused too: systemd does not
/// expand it in the program path but does in argv[0].
fn check_program(p: &str) -> Result<(), Unrepresentable> {
    if let Some(c) = p.chars().next().filter(|c| "-@:+!".contains(*c)) {
        return Err(Unrepresentable::ProgramPrefix(c));
    }
    if let Some(c) = p.chars().find(|c| "\"'\\$".contains(*c)) {
        return Err(Unrepresentable::ProgramCharacter(c));
    }
    let file_name = !p.contains('/') && !matches!(p, "" | "." | ".." | ";") && p.len() <= 255;
    if !(file_name || (p.starts_with('/') && !p.ends_with('/'))) {
        return Err(Unrepresentable::NotProgram);
    }
    Ok(())
}

/// systemd's `unit_name_is_valid()`: `prefix[@instance].type`.
fn is_unit_name(n: &str) -> bool {
    const TYPES: &[&str] = &[
        "service",
        "socket",
        "target",
        "device",
        "mount",
        "automount",
        "swap",
        "timer",
        "path",
        "slice",
        "scope",
    ];
    let Some((stem, kind)) = n.rsplit_once('.') else {
        return false;
    };
    !stem.is_empty()
        && !stem.starts_with('@')
        && stem.matches('@').count() <= 1
        && TYPES.contains(&kind)
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c))
}

/// systemd's `valid_user_group_name()` in its relaxed form with numeric
/// ids allowed, as `User=`/`Group=` use it.
fn is_user_name(n: &str) -> bool {
    if n.bytes().all(|b| b.is_ascii_digit()) {
        return n
            .parse::<u32>()
            .is_ok_and(|id| id != 65535 && id != u32::MAX);
    }
    !matches!(n, "." | "..") && !n.contains([':', '/'])
}

/// A unit that cannot be written.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum UnitError {
    #[error("the unit of service `{service}` cannot be written: {key} value {shown} {problem}")]
    #[diagnostic(code(moorline::unit::unrepresentable), help("{help}"))]
    Unrepresentable {
        service: String,
        key: &'static str,
        /// The value, quoted and elided, or [`REDACTED`] for a secret.
        shown: String,
        problem: Unrepresentable,
        help: &'static str,
    },
    #[error(
        "the unit of service `{service}` cannot be written: its {key}= line is {len} bytes, over systemd's limit of {max}"
    )]
    #[diagnostic(
        code(moorline::unit::line_too_long),
        help("use fewer or shorter values; long settings belong in an env-file")
    )]
    LineTooLong {
        service: String,
        key: &'static str,
        len: usize,
        max: usize,
    },
}

/// A value as shown in an error: quoted with escapes, at most ~60 characters.
fn shown(value: &str) -> String {
    const MAX: usize = 60;
    let short: String = value.chars().take(MAX).collect();
    if short.len() < value.len() {
        format!("{short:?}… ({} bytes)", value.len())
    } else {
        format!("{short:?}")
    }
}

/// The live release of a service: `{root}/{service}/current`.
pub(crate) fn current_link(env: &Environment, service: &str) -> String {
    format!("{}/{service}/current", env.root)
}

/// The rendered unit of `service` in `env`, or `None` when its unit is
/// managed by hand.
pub fn render(env: &Environment, service: &Service) -> Result<Option<String>, UnitError> {
    let Some(spec) = service.unit.as_ref() else {
        return Ok(None);
    };
    render_spec(env, service, spec, false).map(Some)
}

/// The `.timer` unit of a scheduled service whose unit moorline writes
/// (`None` otherwise): it starts the service at each `OnCalendar=` time
/// (systemd.timer(5)) and is enabled with `timers.target`. It holds no
/// secret.
pub(crate) fn render_timer(
    env: &Environment,
    service: &Service,
) -> Result<Option<String>, UnitError> {
    let (Some(schedule), Some(_)) = (&service.schedule, &service.unit) else {
        return Ok(None);
    };
    let mut w = Writer::managed(&service.name);
    w.bare(
        "Description",
        Field::Description,
        &format!("{} schedule ({})", service.name, env.name),
    )?;
    w.out.push_str("\n[Timer]\n");
    w.bare("OnCalendar", Field::Description, &schedule.calendar)?;
    if schedule.persistent {
        w.line("Persistent", "true")?;
    }
    w.bare("Unit", Field::UnitName, &service.unit_name)?;
    w.out.push_str("\n[Install]\n");
    w.line("WantedBy", "timers.target")?;
    Ok(Some(w.out))
}

/// The same unit with every secret value replaced by [`REDACTED`]; fails
/// exactly when [`render`] does.
pub(crate) fn render_redacted(
    env: &Environment,
    service: &Service,
) -> Result<Option<String>, UnitError> {
    let Some(spec) = service.unit.as_ref() else {
        return Ok(None);
    };
    render_spec(env, service, spec, true).map(Some)
}

/// Names of the secret variables of a service's unit (for redacting an
/// installed file that moorline did not render).
pub fn secret_names(service: &Service) -> BTreeSet<String> {
    service.unit.as_ref().map_or_else(BTreeSet::new, |u| {
        u.env
            .iter()
            .filter(|(_, v)| v.secret)
            .map(|(k, _)| k.clone())
            .collect()
    })
}

/// `%` → `%%`: the escape for every field where systemd expands
/// specifiers (all fields moorline writes).
fn escape_specifiers(s: &str) -> String {
    s.replace('%', "%%")
}

/// A bare field (`Description=`, paths, names): the value as is, with
/// specifiers escaped; [`check`] has excluded what cannot be bare.
fn bare(s: &str) -> String {
    escape_specifiers(s)
}

/// Inside double quotes systemd decodes C escapes: `\` and `"` are the
/// only characters that need one (control characters are refused).
fn double_quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// One word of `ExecStart=`: `%` and `$` doubled (systemd expands both;
/// `$` at exec time), then bare when nothing in it is special to systemd's
/// word splitting, double-quoted otherwise (an empty word, whitespace,
/// quotes, backslashes, a `;` that would separate commands).
/// https://www.freedesktop.org/software/systemd/man/systemd.service.html#Command%20lines
fn exec_word(w: &str) -> String {
    let escaped = escape_specifiers(w).replace('$', "$$");
    let plain = !escaped.is_empty()
        && escaped
            .chars()
            .all(|c| !c.is_whitespace() && !matches!(c, '"' | '\'' | '\\' | ';'));
    if plain {
        escaped
    } else {
        double_quoted(&escaped)
    }
}

/// The program word: like [`exec_word`], but `$` is refused by [`check`]
/// (systemd does not expand it in the program path), so only `%` doubles.
fn exec_program(p: &str) -> String {
    let escaped = escape_specifiers(p);
    if escaped.chars().any(char::is_whitespace) {
        double_quoted(&escaped)
    } else {
        escaped
    }
}

/// One `Environment=` assignment: `"NAME=value"`, with specifiers escaped
/// and `\`, `"` backslash-escaped; systemd does not expand `$` here.
fn env_assignment(name: &str, value: &str) -> String {
    double_quoted(&escape_specifiers(&format!("{name}={value}")))
}

/// Writes checked, escaped lines for one service.
struct Writer<'a> {
    service: &'a str,
    out: String,
}

impl<'a> Writer<'a> {
    /// A unit file of `service`: the managed-by line, then `[Unit]`.
    fn managed(service: &'a str) -> Self {
        Self {
            service,
            out: "# Managed by moorline: changes made here are reported as drift and replaced on the next apply.\n[Unit]\n".to_owned(),
        }
    }

    fn check(&self, field: Field, value: &str, secret: bool) -> Result<(), UnitError> {
        check(field, value).map_err(|problem| UnitError::Unrepresentable {
            service: self.service.to_owned(),
            key: field.key(),
            shown: if secret {
                REDACTED.to_owned()
            } else {
                shown(value)
            },
            help: problem.help(),
            problem,
        })
    }

    fn line(&mut self, key: &'static str, value: &str) -> Result<(), UnitError> {
        let len = key.len() + 1 + value.len();
        if len > reader::LONG_LINE_MAX {
            return Err(UnitError::LineTooLong {
                service: self.service.to_owned(),
                key,
                len,
                max: reader::LONG_LINE_MAX,
            });
        }
        self.out.push_str(key);
        self.out.push('=');
        self.out.push_str(value);
        self.out.push('\n');
        Ok(())
    }

    /// A bare field after [`check`].
    fn bare(&mut self, key: &'static str, field: Field, value: &str) -> Result<(), UnitError> {
        self.check(field, value, false)?;
        self.line(key, &bare(value))
    }
}

fn render_spec(
    env: &Environment,
    service: &Service,
    spec: &UnitSpec,
    redact: bool,
) -> Result<String, UnitError> {
    // A cutover service's unit is a template: each instance is one slot,
    // its name the slot's port (`%i`), running the release its own link
    // names. `{port}` and `{current}` render to a marker first, so the
    // escaping below (which doubles every `%`) leaves the `%i` it becomes.
    let current = match service.cutover {
        Some(_) => format!("{}/{SLOT_MARKER}", slots_dir(env, &service.name)),
        None => current_link(env, &service.name),
    };
    let port = service.port.map(|p| p.to_string());
    let vars = |name: &str| match name {
        "service" => Some(service.name.clone()),
        "port" if service.cutover.is_some() => Some(SLOT_MARKER.to_owned()),
        "port" => port.clone(),
        "root" => Some(env.root.clone()),
        "current" => Some(current.clone()),
        _ => None,
    };
    let r = |s: &str| template::render_with(s, vars);
    let mut w = Writer::managed(&service.name);
    let description = spec
        .description
        .as_deref()
        .map_or_else(|| format!("{} ({})", service.name, env.name), &r);
    w.bare("Description", Field::Description, &description)?;
    for a in &spec.after {
        w.bare("After", Field::UnitName, a)?;
    }
    // The phase order (and `depends-on`), for when systemd starts the
    // units together: at boot. `After=` orders without pulling anything
    // in, so a restart of this unit starts no other.
    for a in service
        .start_after
        .iter()
        .filter(|a| !spec.after.contains(a))
    {
        w.bare("After", Field::UnitName, a)?;
    }
    for u in &spec.wants {
        w.bare("Wants", Field::UnitName, u)?;
    }
    if service.readiness == crate::config::Readiness::Notify {
        // `ready "notify"`: the start job ends when the service sends
        // READY=1 (sd_notify(3)), and fails if that takes longer than the
        // service's ready-timeout (systemd.service(5), TimeoutStartSec=).
        w.out.push_str("\n[Service]\nType=notify\n");
        let secs = service.ready_timeout.as_secs().max(1);
        w.line("TimeoutStartSec", &format!("{secs}s"))?;
    } else if service.schedule.is_some() {
        // A scheduled job: its timer starts it, the start job ends when
        // it has run (systemd.service(5), Type=oneshot).
        w.out.push_str("\n[Service]\nType=oneshot\n");
    } else {
        w.out.push_str("\n[Service]\nType=simple\n");
    }
    let mut exec = Vec::with_capacity(spec.exec.len());
    for (i, a) in spec.exec.iter().enumerate() {
        let word = r(a);
        if i == 0 {
            w.check(Field::Program, &word, false)?;
            exec.push(exec_program(&word));
        } else {
            w.check(Field::Argument, &word, false)?;
            exec.push(exec_word(&word));
        }
    }
    w.line("ExecStart", &exec.join(" "))?;
    w.bare("WorkingDirectory", Field::Path, &r(&spec.working_directory))?;
    for (name, value) in &spec.env {
        let secret = value.secret || looks_secret(name);
        let real = r(&value.value);
        w.check(Field::EnvName, name, false)?;
        w.check(Field::EnvValue, &real, secret)?;
        let shown = if redact && secret { REDACTED } else { &real };
        w.line("Environment", &env_assignment(name, shown))?;
    }
    for f in &spec.env_files {
        w.bare("EnvironmentFile", Field::EnvFile, &r(f))?;
    }
    if let Some(u) = &spec.user {
        w.bare("User", Field::UserGroup, u)?;
    }
    if let Some(g) = &spec.group {
        w.bare("Group", Field::UserGroup, g)?;
    }
    if service.schedule.is_some() {
        // A job runs once per start and is not started at boot: its timer
        // is what is enabled (Restart=always is refused for oneshot).
        return Ok(w.out);
    }
    // `restart` is one of systemd's fixed words (checked by the validator).
    w.bare("Restart", Field::Description, &spec.restart)?;
    w.out.push_str("\n[Install]\n");
    w.bare("WantedBy", Field::UnitName, &spec.wanted_by)?;
    if service.cutover.is_some() {
        return Ok(w.out.replace(SLOT_MARKER, "%i"));
    }
    Ok(w.out)
}

/// What `{port}` and the slot in `{current}` render to in a cutover
/// service's template unit before the text is escaped; `%i` (the instance,
/// which is the slot's port) after. Letters only, so every field takes it
/// as written.
const SLOT_MARKER: &str = "MOORLINExSLOTxINSTANCE";

/// The directory of a cutover service's slot links:
/// `{root}/{service}/slots`, one link per slot port naming its release.
pub(crate) fn slots_dir(env: &Environment, service: &str) -> String {
    format!("{}/{service}/slots", env.root)
}

/// Whether a unit file's text carries the value of a secret variable
/// inline (an `Environment=` assignment of one of `secret` or of a name
/// that [`looks_secret`]); an assignment that does not read back counts as
/// secret. Such a file is installed readable by its owner only.
pub fn carries_secrets(text: &str, secret: &BTreeSet<String>) -> bool {
    let Ok(lines) = reader::logical_lines(text) else {
        return true;
    };
    lines
        .iter()
        .any(|l| match reader::split_assignment(&l.text) {
            Some(("Environment", value)) => reader::words(value).map_or(true, |words| {
                words.iter().any(|w| {
                    let name = w.split_once('=').map_or(w.as_str(), |(n, _)| n);
                    secret.contains(name) || looks_secret(name)
                })
            }),
            _ => false,
        })
}

/// Redacts `Environment=` values of secret variables in a unit file's text
/// (an installed file, which may hold real secrets). The file is read as
/// systemd reads it (continued lines, quoting, several assignments on one
/// line); a line holding a secret is rewritten with that value replaced,
/// and an `Environment=` line that does not read back is redacted whole.
pub(crate) fn redact_text(text: &str, secret: &BTreeSet<String>) -> String {
    let physical = reader::physical_lines(text);
    let Ok(logical) = reader::logical_lines(text) else {
        return format!("# {REDACTED}: the installed unit file does not read back\n");
    };
    let mut replaced: Vec<Option<String>> = vec![None; physical.len()];
    let mut dropped = vec![false; physical.len()];
    for l in &logical {
        let Some(("Environment", value)) = reader::split_assignment(&l.text) else {
            continue;
        };
        let line = match reader::words(value) {
            Ok(words) => {
                let is_secret = |n: &str| secret.contains(n) || looks_secret(n);
                if !words
                    .iter()
                    .any(|w| is_secret(w.split_once('=').map_or(w.as_str(), |(n, _)| n)))
                {
                    continue;
                }
                let rendered: Vec<String> = words
                    .iter()
                    .map(|w| match w.split_once('=') {
                        Some((n, _)) if is_secret(n) => env_assignment(n, REDACTED),
                        // Re-quoted as found: `%` stays as systemd would read it.
                        _ => double_quoted(w),
                    })
                    .collect();
                format!("Environment={}", rendered.join(" "))
            }
            Err(_) => format!("Environment={REDACTED}"),
        };
        replaced[l.lines.start] = Some(line);
        for i in l.lines.clone().skip(1) {
            dropped[i] = true;
        }
    }
    let mut out = String::with_capacity(text.len());
    for (i, p) in physical.iter().enumerate() {
        if dropped[i] {
            continue;
        }
        out.push_str(replaced[i].as_deref().unwrap_or(p));
        out.push('\n');
    }
    out
}

/// Installs a unit file atomically (write a temporary file, fsync, rename,
/// fsync the directory) with mode 0600 when `private` (it carries inline
/// secrets, see [`carries_secrets`]), 0644 otherwise. The temporary file
/// is created 0600, so a secret is never readable by others, not even
/// for a moment.
pub fn install_file(path: &Path, text: &str, private: bool) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map_or_else(|| "unit".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        let mode = if private { 0o600 } else { 0o644 };
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// A unified diff of two unit texts (empty when equal).
pub(crate) fn diff(old: &str, new: &str, old_name: &str, new_name: &str) -> String {
    if old == new {
        return String::new();
    }
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(old_name, new_name)
        .to_string()
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::config::EnvValue;

    fn env(root: &str) -> Environment {
        Environment {
            name: "staging".into(),
            branch: "main".into(),
            root: root.into(),
            url: None,
            unit_dir: None,
            port_offset: 0,
            approval: false,
            promote_from: None,
            backup: None,
            env: BTreeMap::new(),
            env_files: Vec::new(),
            pass_env: Vec::new(),
            hosts: Vec::new(),
            rollout: crate::config::Rollout::default(),
            drain: Vec::new(),
        }
    }

    fn service(spec: UnitSpec) -> Service {
        Service {
            name: "api".into(),
            runtime: "node".into(),
            port: Some(3000),
            phase: "core".into(),
            phase_index: 0,
            depends_on: Vec::new(),
            path: "services/api".into(),
            watch: Vec::new(),
            health: "/health".into(),
            ready: "/health/ready".into(),
            readiness: crate::config::Readiness::Http,
            metrics: "/health/metrics".into(),
            ready_timeout: Duration::from_mins(1),
            unit: Some(spec),
            unit_name: "api.service".into(),
            role: None,
            start_after: Vec::new(),
            cutover: None,
            schedule: None,
            build_on_host: false,
        }
    }

    fn spec() -> UnitSpec {
        UnitSpec {
            description: None,
            exec: vec!["/usr/bin/node".into(), "{current}/main.js".into()],
            env: BTreeMap::new(),
            env_files: Vec::new(),
            user: None,
            group: None,
            restart: "on-failure".into(),
            working_directory: "{current}".into(),
            after: Vec::new(),
            wants: Vec::new(),
            wanted_by: "multi-user.target".into(),
        }
    }

    fn plain(v: &str) -> EnvValue {
        EnvValue {
            value: v.into(),
            secret: false,
        }
    }

    #[test]
    fn exec_words_are_quoted_for_systemd() {
        for (w, want) in [
            ("/usr/bin/node", "/usr/bin/node"),
            ("a b", "\"a b\""),
            ("$HOME", "$$HOME"),
            ("${HOME}", "$${HOME}"),
            ("100%", "100%%"),
            ("%h", "%%h"),
            ("say \"hi\"", "\"say \\\"hi\\\"\""),
            ("back\\slash", "\"back\\\\slash\""),
            ("it's", "\"it's\""),
            (";", "\";\""),
            ("-x", "-x"),
            ("", "\"\""),
        ] {
            assert_eq!(exec_word(w), want, "{w}");
        }
    }

    /// A scheduled job: `Type=oneshot`, no `Restart=` nor `[Install]` (its
    /// timer is what is enabled); its timer names it and the schedule, as
    /// systemd reads it back.
    #[test]
    fn a_scheduled_job_is_a_oneshot_started_by_its_timer() {
        let mut s = service(spec());
        assert_eq!(render_timer(&env("/srv"), &s).unwrap(), None);
        s.schedule = Some(crate::config::Schedule {
            calendar: "Mon..Fri *-*-* 03:00:00".into(),
            persistent: true,
        });
        let unit = render(&env("/srv"), &s).unwrap().unwrap();
        assert!(unit.contains("\n[Service]\nType=oneshot\n"), "{unit}");
        assert!(
            !unit.contains("Restart=") && !unit.contains("[Install]"),
            "{unit}"
        );
        let timer = render_timer(&env("/srv"), &s).unwrap().unwrap();
        let lines: Vec<(String, String)> = reader::logical_lines(&timer)
            .unwrap()
            .iter()
            .filter_map(|l| reader::split_assignment(&l.text))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let get = |k: &str| lines.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("OnCalendar"), Some("Mon..Fri *-*-* 03:00:00"));
        assert_eq!(get("Persistent"), Some("true"));
        assert_eq!(get("Unit"), Some("api.service"));
        assert_eq!(get("WantedBy"), Some("timers.target"));
        assert!(timer.contains("\n[Timer]\n"), "{timer}");
        // `%` is a specifier to systemd: doubled.
        s.schedule.as_mut().unwrap().calendar = "%H".into();
        let timer = render_timer(&env("/srv"), &s).unwrap().unwrap();
        assert!(timer.contains("\nOnCalendar=%%H\n"), "{timer}");
        // A job whose unit is managed by hand has no timer from moorline.
        s.unit = None;
        assert_eq!(render_timer(&env("/srv"), &s).unwrap(), None);
    }

    /// A cutover service's unit is a template: `{port}` and `{current}`
    /// become the instance (`%i`, the slot's port) and its slot link, while
    /// a `%` the user wrote stays escaped.
    #[test]
    fn a_cutover_unit_is_a_template_of_its_slots() {
        let mut s = service(spec());
        s.cutover = Some(crate::config::Cutover {
            slots: [8101, 8102],
            upstream: "/etc/nginx/moorline/api.conf".into(),
            drain: Duration::from_secs(2),
        });
        s.unit
            .as_mut()
            .unwrap()
            .env
            .insert("PORT".into(), plain("{port}"));
        s.unit
            .as_mut()
            .unwrap()
            .env
            .insert("PCT".into(), plain("100%"));
        let text = render(&env("/srv/a b"), &s).unwrap().unwrap();
        for want in [
            "ExecStart=/usr/bin/node \"/srv/a b/api/slots/%i/main.js\"",
            "WorkingDirectory=/srv/a b/api/slots/%i",
            "Environment=\"PORT=%i\"",
            "Environment=\"PCT=100%%\"",
        ] {
            assert!(text.contains(want), "{want} in\n{text}");
        }
        assert!(!text.contains(SLOT_MARKER));
    }

    #[test]
    fn a_notify_service_is_type_notify_with_its_ready_timeout() {
        let mut svc = service(spec());
        let simple = render(&env("/srv"), &svc).unwrap().unwrap();
        assert!(simple.contains("\nType=simple\n"), "{simple}");
        assert!(!simple.contains("TimeoutStartSec"), "{simple}");
        svc.readiness = crate::config::Readiness::Notify;
        svc.ready_timeout = Duration::from_secs(45);
        let text = render(&env("/srv"), &svc).unwrap().unwrap();
        assert!(
            text.contains("\n[Service]\nType=notify\nTimeoutStartSec=45s\n"),
            "{text}"
        );
    }

    #[test]
    fn fields_are_escaped_exactly() {
        let mut s = spec();
        s.description = Some("100% of %h for {service}".into());
        s.exec = vec!["/opt/my app/run".into(), "--home=%h".into(), "$PATH".into()];
        s.env
            .insert("GREETING".into(), plain("say \"hi\" \\ %n $X"));
        s.env_files = vec!["-/etc/%i.env".into()];
        s.user = Some("svc%u".into());
        s.working_directory = "{current}/100%".into();
        let text = render(&env("/srv/a b"), &service(s)).unwrap().unwrap();
        for line in [
            "Description=100%% of %%h for api",
            r#"ExecStart="/opt/my app/run" --home=%%h $$PATH"#,
            "WorkingDirectory=/srv/a b/api/current/100%%",
            r#"Environment="GREETING=say \"hi\" \\ %%n $X""#,
            "EnvironmentFile=-/etc/%%i.env",
            "User=svc%%u",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
    }

    #[test]
    fn unrepresentable_values_are_refused_with_a_code() {
        let mut s = spec();
        s.env.insert(
            "API_TOKEN".into(),
            plain("a\nExecStartPre=/bin/touch /srv/x"),
        );
        let err = render(&env("/srv"), &service(s)).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("U+000A"), "{text}");
        assert!(
            !text.contains("touch"),
            "a secret value is never shown: {text}"
        );
        assert_eq!(
            err.code().map(|c| c.to_string()).as_deref(),
            Some("moorline::unit::unrepresentable")
        );
        for (field, value, problem) in [
            (
                Field::Description,
                "a\rb",
                Unrepresentable::ControlCharacter('\r'),
            ),
            (Field::Description, " x", Unrepresentable::SurroundingSpace),
            (
                Field::Description,
                "x\\",
                Unrepresentable::TrailingBackslash,
            ),
            (Field::Description, "", Unrepresentable::Empty),
            (Field::Path, "srv/x", Unrepresentable::NotAbsolute),
            (Field::Path, "/srv/../etc", Unrepresentable::DotDot),
            (Field::EnvFile, "-srv", Unrepresentable::NotAbsolute),
            (
                Field::UnitName,
                "x.service\0",
                Unrepresentable::ControlCharacter('\0'),
            ),
            (Field::UnitName, "a b.service", Unrepresentable::NotUnitName),
            (Field::UnitName, "%h.target", Unrepresentable::NotUnitName),
            (Field::UserGroup, "a:b", Unrepresentable::NotUserName),
            (Field::UserGroup, "65535", Unrepresentable::NotUserName),
            (Field::EnvName, "1A", Unrepresentable::NotEnvName),
            (Field::EnvName, "A=B", Unrepresentable::NotEnvName),
            (
                Field::Program,
                "-/bin/x",
                Unrepresentable::ProgramPrefix('-'),
            ),
            (Field::Program, "@x", Unrepresentable::ProgramPrefix('@')),
            (Field::Program, "+x", Unrepresentable::ProgramPrefix('+')),
            (Field::Program, "!x", Unrepresentable::ProgramPrefix('!')),
            (Field::Program, ":x", Unrepresentable::ProgramPrefix(':')),
            (
                Field::Program,
                "/bin/$x",
                Unrepresentable::ProgramCharacter('$'),
            ),
            (Field::Program, "bin/x", Unrepresentable::NotProgram),
            (Field::Program, ";", Unrepresentable::NotProgram),
            (
                Field::Argument,
                "a\tb",
                Unrepresentable::ControlCharacter('\t'),
            ),
        ] {
            assert_eq!(check(field, value), Err(problem), "{field:?} {value:?}");
        }
        for (field, value) in [
            (Field::Argument, ""),
            (Field::Argument, " -x; \"'\\$"),
            (Field::EnvValue, ""),
            (Field::Program, "npm"),
            (Field::Program, "/opt/my app/bin"),
            (Field::UnitName, "postgresql@15-main.service"),
            (Field::UserGroup, "1000"),
            (Field::EnvFile, "-/etc/x.env"),
        ] {
            assert!(representable(field, value), "{field:?} {value:?}");
        }
    }

    #[test]
    fn redacts_installed_secrets() {
        let text = "[Service]\nEnvironment=\"PORT=1\"\nEnvironment=\"API_TOKEN=abc\"\nEnvironment=\"CUSTOM=x\\\"yz\" \"OTHER=2\"\nEnvironment=PLAIN_KEY=unquoted \\\n  MORE=1\nEnvironment=\"BROKEN_SECRET=open\n";
        let secret: BTreeSet<String> = ["CUSTOM".to_owned()].into();
        let out = redact_text(text, &secret);
        assert!(out.contains("Environment=\"PORT=1\"\n"), "{out}");
        assert!(
            out.contains("Environment=\"CUSTOM=(redacted)\" \"OTHER=2\"\n"),
            "{out}"
        );
        assert!(
            out.contains("Environment=\"PLAIN_KEY=(redacted)\" \"MORE=1\"\n"),
            "{out}"
        );
        for leak in ["abc", "yz", "unquoted", "open"] {
            assert!(!out.contains(leak), "{leak} in {out}");
        }
    }

    #[test]
    fn redacted_render_matches_redacted_installed_file() {
        let mut s = spec();
        s.env.insert("API_KEY".into(), plain("s3cr\"et %h"));
        s.env.insert("PORT".into(), plain("{port}"));
        let (e, svc) = (env("/srv"), service(s));
        let installed = render(&e, &svc).unwrap().unwrap();
        let shown = render_redacted(&e, &svc).unwrap().unwrap();
        assert!(!shown.contains("s3cr"), "{shown}");
        assert_eq!(redact_text(&installed, &secret_names(&svc)), shown);
        assert!(carries_secrets(&installed, &BTreeSet::new()));
        let no_secret = render(&e, &service(spec())).unwrap().unwrap();
        assert!(!carries_secrets(&no_secret, &BTreeSet::new()));
    }

    #[test]
    fn install_file_sets_the_mode() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.service");
        for (private, mode) in [(true, 0o600), (false, 0o644), (true, 0o600)] {
            install_file(&path, "[Unit]\n", private).unwrap();
            let got = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(got, mode);
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    // ---- property: render, read back, compare ----

    /// Pieces that systemd's syntax treats specially, and some that it does not.
    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => "[a-zA-Z0-9._/-]{1,4}",
            1 => prop::sample::select(vec![
                "%", "%h", "%%", "\"", "'", "\\", "\\n", "$", "$$", "${X}", "$X", ";", " ",
                "=", "#", "[", "]", "é", "😀", "-", "@", "+", "!", ":", "{root}", "{current}",
                "{{", "..", "\\;",
            ])
            .prop_map(str::to_owned),
        ]
    }

    /// What may break a line or the structure: control characters, any char.
    fn hostile_piece() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => piece(),
            1 => prop::sample::select(vec!["\n", "\r", "\0", "\t", "\u{7f}", "\u{85}", "\n[Service]\nExecStartPre=/bin/x\n"])
                .prop_map(str::to_owned),
            1 => any::<char>().prop_map(String::from),
        ]
    }

    /// Mostly tricky but representable text, sometimes anything.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => prop::collection::vec(piece(), 0..6).prop_map(|v| v.concat()),
            1 => prop::collection::vec(hostile_piece(), 0..6).prop_map(|v| v.concat()),
        ]
    }

    fn with_prefix(prefix: &'static str) -> impl Strategy<Value = String> {
        text().prop_map(move |t| format!("{prefix}{t}"))
    }

    fn unit_name() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => "[a-z][a-z0-9:_.-]{0,8}(@[a-z0-9\\\\]{0,4})?\\.(service|target|socket)",
            1 => text(),
        ]
    }

    fn path() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => with_prefix("/"),
            3 => with_prefix("{current}/"),
            1 => with_prefix("-/"),
            1 => text(),
        ]
    }

    fn user() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[a-z_][a-z0-9_.%@-]{0,8}",
            1 => "[0-9]{1,6}",
            1 => text(),
        ]
    }

    fn env_name() -> impl Strategy<Value = String> {
        prop_oneof![8 => "[A-Z_][A-Z0-9_]{0,6}", 1 => text()]
    }

    fn program() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "/[a-z %é]{1,8}",
            2 => Just("{current}/bin/run".to_owned()),
            1 => Just("node".to_owned()),
            1 => text(),
        ]
    }

    prop_compose! {
        fn case()(
            root in prop_oneof![4 => with_prefix("/"), 1 => text()],
            description in prop::option::of(text()),
            program in program(),
            args in prop::collection::vec(text(), 0..4),
            env in prop::collection::btree_map(env_name(), (text(), any::<bool>()), 0..3),
            env_files in prop::collection::vec(path(), 0..2),
            user in prop::option::of(user()),
            group in prop::option::of(user()),
            working_directory in path(),
            after in prop::collection::vec(unit_name(), 0..2),
            wants in prop::collection::vec(unit_name(), 0..2),
            wanted_by in unit_name(),
        ) -> (String, UnitSpec) {
            let mut exec = vec![program];
            exec.extend(args);
            (root, UnitSpec {
                description,
                exec,
                env: env.into_iter().map(|(k, (value, secret))| (k, EnvValue { value, secret })).collect(),
                env_files,
                user,
                group,
                restart: "on-failure".into(),
                working_directory,
                after,
                wants,
                wanted_by,
            })
        }
    }

    /// A decoded value as read back from the file.
    #[derive(Debug, PartialEq)]
    enum Read {
        Text(String),
        Argv(Vec<String>),
        Env(Vec<(String, String)>),
    }

    /// What the file must hold: (section, key, decoded value), in order, and
    /// whether every value is representable.
    fn expected(
        e: &Environment,
        svc: &Service,
        spec: &UnitSpec,
    ) -> (Vec<(String, String, Read)>, bool) {
        let current = current_link(e, &svc.name);
        let vars = crate::template::Vars {
            service: Some(&svc.name),
            port: svc.port,
            root: Some(&e.root),
            current: Some(&current),
            ..crate::template::Vars::default()
        };
        let r = |s: &str| template::render(s, &vars);
        let mut ok = true;
        let mut out = Vec::new();
        let mut text = |section: &str, key: &str, field: Field, v: String, ok: &mut bool| {
            *ok &= representable(field, &v);
            out.push((section.to_owned(), key.to_owned(), Read::Text(v)));
        };
        let description = spec
            .description
            .as_deref()
            .map_or_else(|| "api (staging)".to_owned(), &r);
        text(
            "Unit",
            "Description",
            Field::Description,
            description,
            &mut ok,
        );
        for a in &spec.after {
            text("Unit", "After", Field::UnitName, a.clone(), &mut ok);
        }
        for a in &spec.wants {
            text("Unit", "Wants", Field::UnitName, a.clone(), &mut ok);
        }
        text(
            "Service",
            "Type",
            Field::Description,
            "simple".into(),
            &mut ok,
        );
        let argv: Vec<String> = spec.exec.iter().map(|a| r(a)).collect();
        for (i, a) in argv.iter().enumerate() {
            ok &= representable(
                if i == 0 {
                    Field::Program
                } else {
                    Field::Argument
                },
                a,
            );
        }
        out.push(("Service".into(), "ExecStart".into(), Read::Argv(argv)));
        let mut text = |section: &str, key: &str, field: Field, v: String, ok: &mut bool| {
            *ok &= representable(field, &v);
            out.push((section.to_owned(), key.to_owned(), Read::Text(v)));
        };
        text(
            "Service",
            "WorkingDirectory",
            Field::Path,
            r(&spec.working_directory),
            &mut ok,
        );
        let mut envs = Vec::new();
        for (name, value) in &spec.env {
            let v = r(&value.value);
            ok &= representable(Field::EnvName, name) && representable(Field::EnvValue, &v);
            envs.push((
                "Service".to_owned(),
                "Environment".to_owned(),
                Read::Env(vec![(name.clone(), v)]),
            ));
        }
        out.extend(envs);
        let mut text = |section: &str, key: &str, field: Field, v: String, ok: &mut bool| {
            *ok &= representable(field, &v);
            out.push((section.to_owned(), key.to_owned(), Read::Text(v)));
        };
        for f in &spec.env_files {
            text("Service", "EnvironmentFile", Field::EnvFile, r(f), &mut ok);
        }
        if let Some(u) = &spec.user {
            text("Service", "User", Field::UserGroup, u.clone(), &mut ok);
        }
        if let Some(g) = &spec.group {
            text("Service", "Group", Field::UserGroup, g.clone(), &mut ok);
        }
        text(
            "Service",
            "Restart",
            Field::Description,
            spec.restart.clone(),
            &mut ok,
        );
        text(
            "Install",
            "WantedBy",
            Field::UnitName,
            spec.wanted_by.clone(),
            &mut ok,
        );
        (out, ok)
    }

    fn read_back(text: &str) -> Result<Vec<(String, String, Read)>, reader::ReadError> {
        reader::parse(text)?
            .into_iter()
            .map(|e| {
                let v = match e.key.as_str() {
                    "ExecStart" => Read::Argv(reader::exec(&e.value)?),
                    "Environment" => Read::Env(reader::environment(&e.value)?),
                    _ => Read::Text(reader::unescape_specifiers(&e.value)?),
                };
                Ok((e.section, e.key, v))
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Either every value is representable and the file reads back to
        /// exactly the expected entries, or rendering refuses (and then some
        /// value is not representable): no value ever adds a line, a key, a
        /// section or a specifier.
        #[test]
        fn every_value_round_trips_or_is_refused((root, spec) in case()) {
            let e = env(&root);
            let svc = service(spec.clone());
            let (want, ok) = expected(&e, &svc, &spec);
            match render(&e, &svc) {
                Err(err) => prop_assert!(!ok, "refused a representable unit: {err}"),
                Ok(None) => prop_assert!(false, "no unit rendered"),
                Ok(Some(text)) => {
                    prop_assert!(ok, "rendered an unrepresentable value:\n{text}");
                    let got = read_back(&text);
                    prop_assert_eq!(got, Ok(want), "{}", text);
                    let redacted = render_redacted(&e, &svc);
                    prop_assert!(redacted.is_ok());
                    let shown = redacted.unwrap_or_default().unwrap_or_default();
                    prop_assert!(read_back(&shown).is_ok(), "{}", shown);
                    prop_assert_eq!(redact_text(&text, &secret_names(&svc)), shown);
                }
            }
        }
    }
}

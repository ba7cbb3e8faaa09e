//! Stage one: KDL document → a spanned raw tree. Checks only the shape of
//! each node (known names, value types, arity); references, defaults and
//! cross-node rules are `validate`'s job. Collects every problem it meets.

use std::time::Duration;

use kdl::{KdlDocument, KdlEntry, KdlNode, KdlValue};
use miette::SourceSpan;

use super::error::{Problem, ProblemKind, suggest};
use super::model::{DrainWhen, MAX_DURATION};

#[derive(Debug, Clone)]
pub(crate) struct Spanned<T> {
    pub(crate) value: T,
    pub(crate) span: SourceSpan,
    /// For a string written as `"..."` without escapes: the offset of its
    /// first character, so a problem can point inside it (a placeholder).
    pub(crate) content: Option<usize>,
}

impl Default for RawUnit {
    fn default() -> Self {
        Self {
            span: SourceSpan::from((0, 0)),
            description: None,
            exec: None,
            env: Vec::new(),
            env_files: Vec::new(),
            user: None,
            group: None,
            restart: None,
            working_directory: None,
            after: Vec::new(),
            wants: Vec::new(),
            wanted_by: None,
        }
    }
}

impl<T> Spanned<T> {
    fn new(value: T, span: SourceSpan) -> Self {
        Self {
            value,
            span,
            content: None,
        }
    }
}

pub(crate) type Str = Spanned<String>;

#[derive(Debug, Clone)]
pub(crate) struct RawCommand {
    pub(crate) argv: Vec<Str>,
    pub(crate) timeout: Option<Spanned<Duration>>,
}

#[derive(Debug, Default)]
pub(crate) struct RawConfig {
    pub(crate) projects: Vec<RawProject>,
    pub(crate) environments: Vec<RawEnvironment>,
    pub(crate) phases: Vec<RawPhase>,
    pub(crate) runtimes: Vec<RawRuntime>,
    pub(crate) services: Vec<RawService>,
    pub(crate) proxies: Vec<RawProxy>,
}

#[derive(Debug)]
pub(crate) struct RawProject {
    pub(crate) name: Option<Str>,
    pub(crate) span: SourceSpan,
    pub(crate) unit_name: Option<Str>,
    pub(crate) keep_releases: Option<Spanned<i128>>,
}

#[derive(Debug)]
pub(crate) struct RawEnvironment {
    pub(crate) name: Option<Str>,
    pub(crate) branch: Option<Str>,
    pub(crate) root: Option<Str>,
    pub(crate) url: Option<Str>,
    pub(crate) unit_dir: Option<Str>,
    /// `port-offset N`: added to every service's port in this environment.
    pub(crate) port_offset: Option<Spanned<i128>>,
    pub(crate) approval: Option<bool>,
    /// `promote-from "ENV" [state-dir="DIR"] [min-healthy="30m"]`.
    pub(crate) promote_from: Option<(Str, Option<Str>, Option<Spanned<Duration>>)>,
    pub(crate) backup: Option<RawBackup>,
    pub(crate) env: Vec<RawEnv>,
    pub(crate) env_files: Vec<Str>,
    /// `pass-env "NAME" ...`: variables of moorline's own environment that
    /// commands receive (may repeat).
    pub(crate) pass_env: Vec<Str>,
    /// Fleet mode: `host` nodes, in declaration order.
    pub(crate) hosts: Vec<RawHost>,
    pub(crate) rollout: Option<RawRollout>,
    pub(crate) drain: Option<RawDrain>,
    pub(crate) seen: Vec<String>,
}

/// `host "app1" address="10.0.0.11" user="deploy" port=22 { roles "web" }`.
#[derive(Debug)]
pub(crate) struct RawHost {
    pub(crate) name: Option<Str>,
    pub(crate) address: Option<Str>,
    pub(crate) user: Option<Str>,
    pub(crate) port: Option<Spanned<i128>>,
    pub(crate) roles: Vec<Str>,
}

/// One value of `batches`: a count (`2`) or a percentage string (`"25%"`),
/// checked by `validate`.
#[derive(Debug, Clone)]
pub(crate) enum RawBatch {
    Count(i128),
    Text(String),
}

/// `rollout { canary 1; batches 1 "100%"; max-fail 1; pause "30s"; connections 8 }`.
#[derive(Debug)]
pub(crate) struct RawRollout {
    pub(crate) span: SourceSpan,
    pub(crate) canary: Option<Spanned<i128>>,
    pub(crate) batches: Option<Vec<Spanned<RawBatch>>>,
    pub(crate) max_fail: Option<Spanned<i128>>,
    pub(crate) pause: Option<Spanned<Duration>>,
    pub(crate) connections: Option<Spanned<i128>>,
}

/// `drain { before "lb1" "prog" ...; after "lb1" "prog" ... }`.
#[derive(Debug)]
pub(crate) struct RawDrain {
    pub(crate) span: SourceSpan,
    pub(crate) hooks: Vec<RawDrainHook>,
}

#[derive(Debug)]
pub(crate) struct RawDrainHook {
    pub(crate) when: DrainWhen,
    /// The host it runs on, the node's first value.
    pub(crate) on: Str,
    pub(crate) command: RawCommand,
}

#[derive(Debug)]
pub(crate) struct RawBackup {
    pub(crate) span: SourceSpan,
    pub(crate) run: Option<RawCommand>,
    pub(crate) restore: Option<RawCommand>,
    pub(crate) resolve: Option<RawCommand>,
    pub(crate) keep: Option<Spanned<i128>>,
    pub(crate) dir: Option<Str>,
    pub(crate) first_deploy: Option<Str>,
}

#[derive(Debug, Clone)]
pub(crate) struct RawEnv {
    pub(crate) name: Str,
    pub(crate) value: Str,
    pub(crate) secret: bool,
}

#[derive(Debug)]
pub(crate) struct RawPhase {
    pub(crate) name: Option<Str>,
    pub(crate) units: Vec<Str>,
}

#[derive(Debug)]
pub(crate) struct RawRuntime {
    pub(crate) name: Option<Str>,
    pub(crate) build: Option<RawCommand>,
    pub(crate) migrate: Option<RawMigrate>,
    pub(crate) migrate_status: Option<RawCommand>,
    pub(crate) unit: Option<RawUnit>,
    pub(crate) deps: Option<RawDeps>,
}

/// `deps "npm" "ci" { inputs ...; outputs ...; version ... }`.
#[derive(Debug)]
pub(crate) struct RawDeps {
    pub(crate) command: RawCommand,
    pub(crate) inputs: Vec<Str>,
    pub(crate) outputs: Vec<Str>,
    pub(crate) version: Option<RawCommand>,
}

#[derive(Debug)]
pub(crate) struct RawMigrate {
    pub(crate) command: RawCommand,
    pub(crate) if_exists: Option<Str>,
    pub(crate) inputs: Option<Str>,
}

#[derive(Debug)]
pub(crate) struct RawService {
    pub(crate) name: Option<Str>,
    pub(crate) runtime: Option<Str>,
    pub(crate) port: Option<Spanned<i128>>,
    pub(crate) phase: Option<Str>,
    pub(crate) depends_on: Vec<Str>,
    pub(crate) path: Option<Str>,
    pub(crate) watch: Vec<Str>,
    pub(crate) health: Option<Str>,
    pub(crate) ready: Option<Str>,
    /// `ready "exec" ARGV...`: the words after the kind.
    pub(crate) ready_args: Vec<Str>,
    pub(crate) metrics: Option<Str>,
    pub(crate) ready_timeout: Option<Spanned<Duration>>,
    pub(crate) unit: Option<RawUnit>,
    /// Fleet mode: the role of the hosts that run it.
    pub(crate) role: Option<Str>,
    /// `cutover "blue-green" { ... }`: how a new release goes live.
    pub(crate) cutover: Option<RawCutover>,
    /// `schedule "OnCalendar"`: a job run by a `.timer` unit.
    pub(crate) schedule: Option<Str>,
    /// `persistent #true`: the timer catches up on runs missed while down.
    pub(crate) persistent: Option<Spanned<bool>>,
    /// `build-on "host"`: built on each host, never shipped as an artifact.
    pub(crate) build_on: Option<Str>,
    /// Child node names present, even where their value was rejected, so
    /// a wrong value is not reported a second time as a missing one.
    pub(crate) seen: Vec<String>,
}

/// A service's `cutover` block, as written.
#[derive(Debug, Clone)]
pub(crate) struct RawCutover {
    pub(crate) span: SourceSpan,
    pub(crate) mode: Option<Str>,
    pub(crate) slots: Vec<Spanned<i128>>,
    /// The span of the `slots` node (for a wrong count).
    pub(crate) slots_span: Option<SourceSpan>,
    pub(crate) upstream: Option<Str>,
    pub(crate) drain: Option<Spanned<Duration>>,
}

#[derive(Debug, Clone)]
pub(crate) struct RawUnit {
    pub(crate) span: SourceSpan,
    pub(crate) description: Option<Str>,
    pub(crate) exec: Option<RawCommand>,
    pub(crate) env: Vec<RawEnv>,
    pub(crate) env_files: Vec<Str>,
    pub(crate) user: Option<Str>,
    pub(crate) group: Option<Str>,
    pub(crate) restart: Option<Str>,
    pub(crate) working_directory: Option<Str>,
    pub(crate) after: Vec<Str>,
    pub(crate) wants: Vec<Str>,
    pub(crate) wanted_by: Option<Str>,
}

#[derive(Debug)]
pub(crate) struct RawProxy {
    pub(crate) name: Option<Str>,
    pub(crate) span: SourceSpan,
    pub(crate) unit: Option<Str>,
    pub(crate) check: Option<RawCommand>,
    pub(crate) watch: Vec<Str>,
}

const TOP: &[&str] = &[
    "project",
    "environment",
    "phase",
    "runtime",
    "service",
    "proxy",
];
const PROJECT: &[&str] = &["unit-name", "keep-releases"];
const ENVIRONMENT: &[&str] = &[
    "branch",
    "root",
    "url",
    "unit-dir",
    "port-offset",
    "approval",
    "promote-from",
    "backup",
    "env",
    "env-file",
    "pass-env",
    "host",
    "rollout",
    "drain",
];
const HOST: &[&str] = &["roles"];
const ROLLOUT: &[&str] = &["canary", "batches", "max-fail", "pause", "connections"];
const DRAIN: &[&str] = &["before", "after"];
const BACKUP: &[&str] = &["run", "restore", "resolve", "keep", "dir", "first-deploy"];
const PHASE: &[&str] = &["unit"];
const RUNTIME: &[&str] = &["build", "deps", "migrate", "migrate-status", "unit"];
const DEPS: &[&str] = &["inputs", "outputs", "version"];
const SERVICE: &[&str] = &[
    "runtime",
    "port",
    "phase",
    "depends-on",
    "path",
    "watch",
    "health",
    "ready",
    "metrics",
    "ready-timeout",
    "unit",
    "role",
    "cutover",
    "schedule",
    "persistent",
    "build-on",
];
const CUTOVER: &[&str] = &["slots", "upstream", "drain"];
const UNIT: &[&str] = &[
    "description",
    "exec",
    "env",
    "env-file",
    "user",
    "group",
    "restart",
    "working-directory",
    "after",
    "wants",
    "wanted-by",
];
const PROXY: &[&str] = &["unit", "check", "watch"];

/// Reads a parsed document into the raw tree, pushing every shape problem.
pub(crate) fn read(doc: &KdlDocument, text: &str, problems: &mut Vec<Problem>) -> RawConfig {
    let mut r = Reader { text, problems };
    r.annotations(doc);
    let mut raw = RawConfig::default();
    for node in doc.nodes() {
        match node.name().value() {
            "project" => raw.projects.push(r.project(node)),
            "environment" => raw.environments.push(r.environment(node)),
            "phase" => raw.phases.push(r.phase(node)),
            "runtime" => raw.runtimes.push(r.runtime(node)),
            "service" => raw.services.push(r.service(node)),
            "proxy" => raw.proxies.push(r.proxy(node)),
            "host" | "rollout" | "drain" | "branch" | "root" => r.push(Problem::new(
                ProblemKind::UnknownNode,
                node.name().span(),
                format!(
                    "`{}` at the top level: it belongs in an `environment`",
                    node.name().value()
                ),
                "not known here",
                format!(
                    "move it into the environment it is for: environment \"production\" {{ {} ... }}",
                    node.name().value()
                ),
            )),
            _ => r.unknown_node(node, TOP, "the top level"),
        }
    }
    raw
}

struct Reader<'t, 'p> {
    text: &'t str,
    problems: &'p mut Vec<Problem>,
}

/// Where the characters of `value` start in `text`, if the entry ends with
/// it written verbatim in double quotes.
fn verbatim_start(text: &str, e: &KdlEntry, value: &str) -> Option<usize> {
    let span = e.span();
    let src = text.get(span.offset()..span.offset() + span.len())?;
    let src = src.trim_end();
    let inner = src.strip_suffix('"')?.strip_suffix(value)?;
    inner.ends_with('"').then(|| span.offset() + inner.len())
}

fn children(node: &KdlNode) -> &[KdlNode] {
    node.children().map_or(&[], KdlDocument::nodes)
}

fn args(node: &KdlNode) -> impl Iterator<Item = &KdlEntry> {
    node.entries().iter().filter(|e| e.name().is_none())
}

/// The line and paragraph separators: line breaks to a reader, refused
/// with the control characters.
fn is_separator(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}')
}

/// How a control character is named in a message.
fn describe_control(c: char) -> String {
    match c {
        '\u{2028}' => "a line separator (U+2028)".to_owned(),
        '\u{2029}' => "a paragraph separator (U+2029)".to_owned(),
        '\n' => "a newline (\\n)".to_owned(),
        '\r' => "a carriage return (\\r)".to_owned(),
        '\t' => "a tab (\\t)".to_owned(),
        '\0' => "a NUL character (\\0)".to_owned(),
        c => format!("the control character U+{:04X}", u32::from(c)),
    }
}

/// What a string is, for the refusal of an invisible (format) character
/// in it: each kind of value has its own code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// A name: of a project, environment, phase, runtime, service, proxy,
    /// host or role, a reference to one, or a unit name.
    Name,
    /// A path, on the host or in the repository.
    Path,
    /// A user or group.
    User,
    /// The name of an environment variable.
    EnvKey,
    /// A word of a command.
    Command,
    /// The value of an environment variable: perhaps a secret, so never
    /// quoted in a message.
    EnvValue,
    /// Any other value (a description, a branch, a URL).
    Value,
}

impl Place {
    /// Where a string value of `node` (property `key`) belongs.
    fn of(node: &str, key: Option<&str>) -> Self {
        match (node, key) {
            ("env", _) => Place::EnvValue,
            (_, Some("user")) | ("user" | "group", None) => Place::User,
            (_, Some("state-dir" | "if-exists" | "inputs"))
            | (
                "root" | "unit-dir" | "env-file" | "working-directory" | "path" | "watch"
                | "inputs" | "outputs" | "dir" | "upstream",
                None,
            ) => Place::Path,
            (
                "project" | "environment" | "phase" | "runtime" | "service" | "proxy" | "host"
                | "roles" | "role" | "depends-on" | "unit" | "after" | "wants" | "wanted-by"
                | "unit-name" | "promote-from",
                None,
            ) => Place::Name,
            _ => Place::Value,
        }
    }

    fn kind(self) -> ProblemKind {
        match self {
            Place::Name => ProblemKind::InvisibleInName,
            Place::Path => ProblemKind::InvisibleInPath,
            Place::User => ProblemKind::InvisibleInUser,
            Place::EnvKey => ProblemKind::InvisibleInEnvKey,
            Place::Command => ProblemKind::InvisibleInCommand,
            Place::EnvValue | Place::Value => ProblemKind::InvisibleInValue,
        }
    }

    /// What a reviewer who reads the value without it is misled about.
    fn why(self) -> &'static str {
        match self {
            Place::Name => "units, directories and references would use another name",
            Place::Path => "another file or directory would be used",
            Place::User => "another user or group would be used",
            Place::EnvKey => "the program would get a variable of another name",
            Place::Command => "another program or argument would run",
            Place::EnvValue | Place::Value => "moorline would use another value",
        }
    }
}

fn type_name(v: &KdlValue) -> &'static str {
    match v {
        KdlValue::String(_) => "a string",
        KdlValue::Integer(_) => "an integer",
        KdlValue::Float(_) => "a number",
        KdlValue::Bool(_) => "a boolean",
        KdlValue::Null => "#null",
    }
}

impl Reader<'_, '_> {
    fn push(&mut self, p: Problem) {
        self.problems.push(p);
    }

    /// Refuses every type annotation (`(i8)3000`, `(u8)"x"`, `(t)node`):
    /// moorline defines none, and one would be ignored, so the value would
    /// not be what its annotation says.
    fn annotations(&mut self, doc: &KdlDocument) {
        for node in doc.nodes() {
            let name = node.name().value();
            if let Some(ty) = node.ty() {
                self.annotation(ty, node.span(), &format!("node `{name}`"));
            }
            for e in node.entries() {
                if let Some(ty) = e.ty() {
                    let on = match e.name() {
                        Some(key) => format!("`{key}` on `{name}`", key = key.value()),
                        None => format!("a value of `{name}`"),
                    };
                    self.annotation(ty, e.span(), &on);
                }
            }
            // Nesting is bounded (`limits`) before kdl parses the file.
            if let Some(children) = node.children() {
                self.annotations(children);
            }
        }
    }

    fn annotation(&mut self, ty: &kdl::KdlIdentifier, around: SourceSpan, on: &str) {
        // The annotation's own span when kdl gives one, with its parentheses.
        let (at, len) = (ty.span().offset(), ty.span().len());
        let span = match (
            at.checked_sub(1).and_then(|b| self.text.get(b..at)),
            self.text.get(at + len..at + len + 1),
        ) {
            _ if len == 0 => around,
            (Some("("), Some(")")) => SourceSpan::from((at - 1, len + 2)),
            _ => ty.span(),
        };
        let ty = ty.value();
        self.push(Problem::new(
            ProblemKind::TypeAnnotation,
            span,
            format!("type annotation `({ty})` on {on}"),
            "type annotation",
            format!(
                "moorline reads no type annotations, and would ignore this one: remove `({ty})`; a value's type is how it is written (3000 is an integer, \"3000\" a string)"
            ),
        ));
    }

    fn unknown_node(&mut self, node: &KdlNode, allowed: &[&str], place: &str) {
        let name = node.name().value();
        let help = match suggest(name, allowed) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!("{place} accepts: {}", allowed.join(", ")),
        };
        self.push(Problem::new(
            ProblemKind::UnknownNode,
            node.name().span(),
            format!("unknown node `{name}` in {place}"),
            "not known here",
            help,
        ));
    }

    /// Checks properties against `allowed`; returns nothing, only reports.
    fn check_props(&mut self, node: &KdlNode, allowed: &[&str]) {
        for e in node.entries() {
            let Some(name) = e.name() else { continue };
            if allowed.contains(&name.value()) {
                continue;
            }
            let help = match suggest(name.value(), allowed) {
                Some(s) => format!("did you mean `{s}`?"),
                None if allowed.is_empty() => {
                    format!("`{}` takes no properties", node.name().value())
                }
                None => format!(
                    "`{}` accepts the properties: {}",
                    node.name().value(),
                    allowed.join(", ")
                ),
            };
            self.push(Problem::new(
                ProblemKind::UnknownProperty,
                e.span(),
                format!(
                    "unknown property `{}` on `{}`",
                    name.value(),
                    node.name().value()
                ),
                "not known here",
                help,
            ));
        }
    }

    fn string_value(&mut self, node: &KdlNode, e: &KdlEntry, what: &str) -> Option<Str> {
        let place = Place::of(node.name().value(), e.name().map(kdl::KdlIdentifier::value));
        self.string_value_in(node, e, what, place, false)
    }

    /// A string value, checked for control characters: none is allowed
    /// (a value lands in unit files, plans and logs, where a newline starts
    /// a new setting or line), except tabs where `tabs` is set; and for
    /// invisible format characters, refused by `place`.
    fn string_value_in(
        &mut self,
        node: &KdlNode,
        e: &KdlEntry,
        what: &str,
        place: Place,
        tabs: bool,
    ) -> Option<Str> {
        if let KdlValue::String(s) = e.value() {
            let mut v = Spanned::new(s.clone(), e.span());
            v.content = verbatim_start(self.text, e, s);
            let described = || match e.name() {
                Some(key) => format!("`{} {}`", node.name().value(), key.value()),
                None => format!("`{}`", node.name().value()),
            };
            if let Some(c) = s
                .chars()
                .find(|c| (c.is_control() || is_separator(*c)) && !(tabs && *c == '\t'))
            {
                self.push(Problem::new(
                    ProblemKind::ControlCharacter,
                    e.span(),
                    format!("the value of {} contains {}", described(), describe_control(c)),
                    "control character in this value",
                    if tabs {
                        "remove it: a newline or other control character could start a new line in a plan or log; pass separate lines as separate arguments"
                    } else {
                        "remove it: values are written into unit files, plans and logs, where a newline or other control character starts a new setting or line (tabs are allowed only in build, migrate, backup and check commands)"
                    },
                ));
            } else if place == Place::EnvKey {
                self.invisible(&v, "the name of an `env` variable", place);
            } else {
                self.invisible(&v, &format!("the value of {}", described()), place);
            }
            Some(v)
        } else {
            self.push(Problem::new(
                ProblemKind::WrongType,
                e.span(),
                format!(
                    "`{}` expects {what} as a string, found {}",
                    node.name().value(),
                    type_name(e.value())
                ),
                "expected a string",
                "write it in double quotes, for example \"value\"",
            ));
            None
        }
    }

    /// Refuses an invisible format character (a zero-width space, a
    /// bidirectional override, a tag character) in `v` (`described`: "the
    /// value of `user`"): the value would read as another in a review, in the
    /// plan and in the unit file. The label is on the character itself
    /// when the value is written verbatim.
    fn invisible(&mut self, v: &Str, described: &str, place: Place) {
        let Some((position, c)) = crate::visible::first_format(&v.value) else {
            return;
        };
        let span = v.content.map_or(v.span, |start| {
            let at: usize = v.value.chars().take(position - 1).map(char::len_utf8).sum();
            SourceSpan::from((start + at, c.len_utf8()))
        });
        let name = crate::visible::describe(c);
        let help = if place == Place::EnvValue {
            // It may be a secret: the report must not quote it.
            format!(
                "{name} at character {position} of the value cannot be seen: a reviewer reads another value than the program gets; remove it"
            )
        } else {
            let clean: String = v
                .value
                .chars()
                .filter(|c| !crate::visible::is_format(*c))
                .collect();
            format!(
                "{name} at character {position} of `{}` cannot be seen: a reviewer reads `{clean}`, but {}; remove it",
                v.value,
                place.why()
            )
        };
        self.push(Problem::new(
            place.kind(),
            span,
            format!("{described} contains the invisible character {name}"),
            format!("{name} at character {position}"),
            help,
        ));
    }

    /// Exactly one string argument (a name or a value).
    fn one_string(&mut self, node: &KdlNode, what: &str) -> Option<Str> {
        self.check_props(node, &[]);
        self.one_string_keep_props(node, what)
    }

    fn one_string_keep_props(&mut self, node: &KdlNode, what: &str) -> Option<Str> {
        let mut it = args(node);
        let Some(first) = it.next() else {
            self.push(Problem::new(
                ProblemKind::MissingValue,
                node.span(),
                format!("`{}` needs {what}", node.name().value()),
                "value missing",
                format!("write it as `{} \"...\"`", node.name().value()),
            ));
            return None;
        };
        for extra in it {
            self.push(Problem::new(
                ProblemKind::UnexpectedArgument,
                extra.span(),
                format!("`{}` takes a single value", node.name().value()),
                "unexpected",
                "remove the extra value",
            ));
        }
        self.string_value(node, first, what)
    }

    /// One or more string arguments.
    fn strings(&mut self, node: &KdlNode, what: &str) -> Vec<Str> {
        self.check_props(node, &[]);
        let out: Vec<Str> = args(node)
            .filter_map(|e| self.string_value(node, e, what))
            .collect();
        if args(node).next().is_none() {
            self.push(Problem::new(
                ProblemKind::MissingValue,
                node.span(),
                format!("`{}` needs at least one {what}", node.name().value()),
                "value missing",
                format!("write it as `{} \"...\"`", node.name().value()),
            ));
        }
        out
    }

    fn integer(&mut self, node: &KdlNode, what: &str) -> Option<Spanned<i128>> {
        self.check_props(node, &[]);
        let mut it = args(node);
        let Some(e) = it.next() else {
            self.push(Problem::new(
                ProblemKind::MissingValue,
                node.span(),
                format!("`{}` needs {what}", node.name().value()),
                "value missing",
                format!("write it as `{} 5`", node.name().value()),
            ));
            return None;
        };
        for extra in it {
            self.push(Problem::new(
                ProblemKind::UnexpectedArgument,
                extra.span(),
                format!("`{}` takes a single value", node.name().value()),
                "unexpected",
                "remove the extra value",
            ));
        }
        if let KdlValue::Integer(i) = e.value() {
            Some(Spanned::new(*i, e.span()))
        } else {
            self.push(Problem::new(
                ProblemKind::WrongType,
                e.span(),
                format!(
                    "`{}` expects {what} as an integer, found {}",
                    node.name().value(),
                    type_name(e.value())
                ),
                "expected an integer",
                "write a whole number without quotes, for example 3080",
            ));
            None
        }
    }

    fn boolean(&mut self, node: &KdlNode) -> Option<bool> {
        self.check_props(node, &[]);
        match args(node).next().map(KdlEntry::value) {
            None => Some(true),
            Some(KdlValue::Bool(b)) => Some(*b),
            Some(v) => {
                let span = args(node).next().map_or(node.span(), KdlEntry::span);
                self.push(Problem::new(
                    ProblemKind::WrongType,
                    span,
                    format!(
                        "`{}` expects a boolean, found {}",
                        node.name().value(),
                        type_name(v)
                    ),
                    "expected #true or #false",
                    "KDL v2 booleans are written #true and #false",
                ));
                None
            }
        }
    }

    fn duration_of(&mut self, node: &KdlNode, e: &KdlEntry) -> Option<Spanned<Duration>> {
        /// Why a value is not a duration moorline takes.
        enum Fault {
            Invalid,
            TooLong,
        }
        let parsed = match e.value() {
            KdlValue::Integer(i) if *i > 0 => u64::try_from(*i)
                .map(Duration::from_secs)
                .map_err(|_| Fault::TooLong),
            KdlValue::String(s) => humantime::parse_duration(s).map_err(|e| match e {
                humantime::DurationError::NumberOverflow => Fault::TooLong,
                _ => Fault::Invalid,
            }),
            _ => Err(Fault::Invalid),
        };
        let what = match e.name() {
            Some(key) => format!("`{}` on `{}`", key.value(), node.name().value()),
            None => format!("`{}`", node.name().value()),
        };
        match parsed {
            Ok(d) if d > MAX_DURATION => Err(Fault::TooLong),
            Ok(d) if d.is_zero() => Err(Fault::Invalid),
            other => other,
        }
        .map(|d| Spanned::new(d, e.span()))
        .map_err(|fault| {
            self.push(match fault {
                Fault::Invalid => Problem::new(
                    ProblemKind::InvalidDuration,
                    e.span(),
                    format!("{what} is not a valid duration"),
                    "not a duration",
                    "write a positive duration such as \"90s\", \"5m\" or a number of seconds",
                ),
                Fault::TooLong => Problem::new(
                    ProblemKind::DurationTooLong,
                    e.span(),
                    format!("{what} is longer than moorline waits (7 days)"),
                    "longer than 7 days",
                    format!(
                        "a duration is at most 7 days (\"7d\", {} seconds): no command, readiness check or pause should take longer, and a longer one is most likely a unit or a few digits too many",
                        MAX_DURATION.as_secs()
                    ),
                ),
            });
        })
        .ok()
    }

    fn duration(&mut self, node: &KdlNode) -> Option<Spanned<Duration>> {
        self.check_props(node, &[]);
        if let Some(e) = args(node).next() {
            self.duration_of(node, e)
        } else {
            self.push(Problem::new(
                ProblemKind::MissingValue,
                node.span(),
                format!("`{}` needs a duration", node.name().value()),
                "value missing",
                format!("write it as `{} \"60s\"`", node.name().value()),
            ));
            None
        }
    }

    /// An argv command: one or more strings, optional `timeout=`.
    fn command(&mut self, node: &KdlNode, extra_props: &[&str]) -> Option<RawCommand> {
        let mut allowed = vec!["timeout"];
        allowed.extend_from_slice(extra_props);
        self.check_props(node, &allowed);
        // A tab in an argv word is harmless, except in `exec`, which is
        // written into the unit file's ExecStart= line.
        let tabs = node.name().value() != "exec";
        let argv: Vec<Str> = args(node)
            .filter_map(|e| self.string_value_in(node, e, "each argument", Place::Command, tabs))
            .collect();
        let timeout = node
            .entries()
            .iter()
            .find(|e| e.name().is_some_and(|n| n.value() == "timeout"))
            .and_then(|e| self.duration_of(node, e));
        if args(node).next().is_none() || argv.first().is_some_and(|a| a.value.trim().is_empty()) {
            self.push(Problem::new(
                ProblemKind::EmptyCommand,
                node.span(),
                format!("`{}` has an empty command", node.name().value()),
                "no program to run",
                format!(
                    "give the program and its arguments as separate strings, for example `{} \"npm\" \"ci\"`",
                    node.name().value()
                ),
            ));
            return None;
        }
        Some(RawCommand { argv, timeout })
    }

    fn prop_string(&mut self, node: &KdlNode, key: &str) -> Option<Str> {
        let e = node
            .entries()
            .iter()
            .find(|e| e.name().is_some_and(|n| n.value() == key))?;
        self.string_value(node, e, key)
    }

    /// `env KEY="value" ...` (optionally `secret=#true`) or `env "KEY" "value"`.
    fn env(&mut self, node: &KdlNode) -> Vec<RawEnv> {
        let mut secret = false;
        let mut out = Vec::new();
        for e in node.entries() {
            match e.name().map(kdl::KdlIdentifier::value) {
                Some("secret") => match e.value() {
                    KdlValue::Bool(b) => secret = *b,
                    v => self.push(Problem::new(
                        ProblemKind::WrongType,
                        e.span(),
                        format!("`secret` expects a boolean, found {}", type_name(v)),
                        "expected #true or #false",
                        "write secret=#true",
                    )),
                },
                Some(key) => {
                    // A bare key is a KDL identifier: it may hold format
                    // characters, never control characters.
                    self.invisible(
                        &Spanned::new(key.to_owned(), e.span()),
                        "the name of an `env` variable",
                        Place::EnvKey,
                    );
                    if let Some(v) = self.string_value(node, e, "each value") {
                        out.push(RawEnv {
                            name: Spanned::new(key.to_owned(), e.span()),
                            value: v,
                            secret: false,
                        });
                    }
                }
                None => {}
            }
        }
        let positional: Vec<&KdlEntry> = args(node).collect();
        match positional.as_slice() {
            [] => {}
            [k, v] => {
                if let (Some(k), Some(v)) = (
                    self.string_value_in(node, k, "the variable name", Place::EnvKey, false),
                    self.string_value(node, v, "the value"),
                ) {
                    out.push(RawEnv {
                        name: k,
                        value: v,
                        secret: false,
                    });
                }
            }
            [first, ..] => self.push(Problem::new(
                ProblemKind::UnexpectedArgument,
                first.span(),
                "`env` takes KEY=\"value\" properties, or one name and one value",
                "unexpected",
                "write env PORT=\"{port}\" NODE_ENV=\"production\"",
            )),
        }
        if out.is_empty() {
            self.push(Problem::new(
                ProblemKind::MissingValue,
                node.span(),
                "`env` sets no variable",
                "empty",
                "write env NAME=\"value\"",
            ));
        }
        for v in &mut out {
            v.secret = secret;
        }
        out
    }

    fn no_children(&mut self, node: &KdlNode) {
        if let Some(doc) = node.children() {
            self.push(Problem::new(
                ProblemKind::UnexpectedArgument,
                doc.span(),
                format!("`{}` takes no block", node.name().value()),
                "unexpected block",
                "remove the braces and their contents",
            ));
        }
    }

    fn once<T>(&mut self, slot: &mut Option<T>, node: &KdlNode, value: Option<T>) {
        if slot.is_some() {
            self.push(Problem::new(
                ProblemKind::Duplicate,
                node.span(),
                format!("`{}` is given twice", node.name().value()),
                "second definition",
                "keep one of them",
            ));
            return;
        }
        *slot = value;
    }

    fn project(&mut self, node: &KdlNode) -> RawProject {
        let name = self.one_string(node, "the project name");
        let mut p = RawProject {
            name,
            span: node.span(),
            unit_name: None,
            keep_releases: None,
        };
        for c in children(node) {
            self.no_children(c);
            match c.name().value() {
                "unit-name" => {
                    let v = self.one_string(c, "a unit name template");
                    self.once(&mut p.unit_name, c, v);
                }
                "keep-releases" => {
                    let v = self.integer(c, "a number of releases");
                    self.once(&mut p.keep_releases, c, v);
                }
                _ => self.unknown_node(c, PROJECT, "`project`"),
            }
        }
        p
    }

    fn environment(&mut self, node: &KdlNode) -> RawEnvironment {
        let name = self.one_string(node, "the environment name");
        let mut env = RawEnvironment {
            name,
            branch: None,
            root: None,
            url: None,
            unit_dir: None,
            port_offset: None,
            approval: None,
            promote_from: None,
            backup: None,
            env: Vec::new(),
            env_files: Vec::new(),
            pass_env: Vec::new(),
            hosts: Vec::new(),
            rollout: None,
            drain: None,
            seen: Vec::new(),
        };
        for c in children(node) {
            env.seen.push(c.name().value().to_owned());
            if !matches!(c.name().value(), "backup" | "host" | "rollout" | "drain") {
                self.no_children(c);
            }
            match c.name().value() {
                "branch" => {
                    let v = self.one_string(c, "a git branch");
                    self.once(&mut env.branch, c, v);
                }
                "root" => {
                    let v = self.one_string(c, "a directory");
                    self.once(&mut env.root, c, v);
                }
                "url" => {
                    let v = self.one_string(c, "a URL");
                    self.once(&mut env.url, c, v);
                }
                "unit-dir" => {
                    let v = self.one_string(c, "a directory");
                    self.once(&mut env.unit_dir, c, v);
                }
                "port-offset" => {
                    let v = self.integer(c, "a number added to every service's port");
                    self.once(&mut env.port_offset, c, v);
                }
                "approval" => {
                    let v = self.boolean(c);
                    self.once(&mut env.approval, c, v);
                }
                "promote-from" => {
                    self.check_props(c, &["state-dir", "min-healthy"]);
                    let min_healthy = c
                        .entries()
                        .iter()
                        .find(|e| e.name().is_some_and(|n| n.value() == "min-healthy"))
                        .and_then(|e| self.duration_of(c, e));
                    let v = self
                        .one_string_keep_props(c, "the environment whose runs it requires")
                        .map(|source| (source, self.prop_string(c, "state-dir"), min_healthy));
                    self.once(&mut env.promote_from, c, v);
                }
                "backup" => {
                    let v = self.backup(c);
                    self.once(&mut env.backup, c, Some(v));
                }
                "env" => {
                    let v = self.env(c);
                    env.env.extend(v);
                }
                "env-file" => {
                    let v = self.strings(c, "file");
                    env.env_files.extend(v);
                }
                "pass-env" => {
                    let v = self.strings(c, "variable name");
                    env.pass_env.extend(v);
                }
                "host" => {
                    let v = self.host(c);
                    env.hosts.push(v);
                }
                "rollout" => {
                    let v = self.rollout(c);
                    self.once(&mut env.rollout, c, Some(v));
                }
                "drain" => {
                    let v = self.drain(c);
                    self.once(&mut env.drain, c, Some(v));
                }
                other if ROLLOUT.contains(&other) || DRAIN.contains(&other) => {
                    let block = if ROLLOUT.contains(&other) {
                        "rollout"
                    } else {
                        "drain"
                    };
                    self.push(Problem::new(
                        ProblemKind::UnknownNode,
                        c.name().span(),
                        format!(
                            "`{other}` directly in `environment`: it belongs in its `{block}` block"
                        ),
                        "not known here",
                        format!("write {block} {{ {other} ... }} inside the environment"),
                    ));
                }
                other => {
                    self.unknown_node(c, ENVIRONMENT, "`environment`");
                    if let Some(meant) = suggest(other, ENVIRONMENT) {
                        env.seen.push(meant.to_owned());
                    }
                }
            }
        }
        env
    }

    fn backup(&mut self, node: &KdlNode) -> RawBackup {
        self.check_props(node, &[]);
        for e in args(node) {
            self.push(Problem::new(
                ProblemKind::UnexpectedArgument,
                e.span(),
                "`backup` takes no value, only a block",
                "unexpected",
                "write backup { run ...; restore ...; keep 30 }",
            ));
        }
        let mut b = RawBackup {
            span: node.span(),
            run: None,
            restore: None,
            resolve: None,
            keep: None,
            dir: None,
            first_deploy: None,
        };
        for c in children(node) {
            self.no_children(c);
            match c.name().value() {
                "run" => {
                    let v = self.command(c, &[]);
                    self.once(&mut b.run, c, v);
                }
                "restore" => {
                    let v = self.command(c, &[]);
                    self.once(&mut b.restore, c, v);
                }
                "resolve" => {
                    let v = self.command(c, &[]);
                    self.once(&mut b.resolve, c, v);
                }
                "keep" => {
                    let v = self.integer(c, "a number of backups");
                    self.once(&mut b.keep, c, v);
                }
                "dir" => {
                    let v = self.one_string(c, "a directory");
                    self.once(&mut b.dir, c, v);
                }
                "first-deploy" => {
                    let v = self.one_string(c, "\"skip\" or \"backup\"");
                    self.once(&mut b.first_deploy, c, v);
                }
                _ => self.unknown_node(c, BACKUP, "`backup`"),
            }
        }
        b
    }

    /// A block node that takes no value and no property (`rollout`, `drain`).
    fn block_only(&mut self, node: &KdlNode, example: &str) {
        self.check_props(node, &[]);
        for e in args(node) {
            self.push(Problem::new(
                ProblemKind::UnexpectedArgument,
                e.span(),
                format!("`{}` takes no value, only a block", node.name().value()),
                "unexpected",
                format!("write {example}"),
            ));
        }
    }

    /// An integer property (`port=22`), if given.
    fn prop_integer(&mut self, node: &KdlNode, key: &str) -> Option<Spanned<i128>> {
        let e = node
            .entries()
            .iter()
            .find(|e| e.name().is_some_and(|n| n.value() == key))?;
        if let KdlValue::Integer(i) = e.value() {
            Some(Spanned::new(*i, e.span()))
        } else {
            self.push(Problem::new(
                ProblemKind::WrongType,
                e.span(),
                format!(
                    "`{key}` on `{}` expects an integer, found {}",
                    node.name().value(),
                    type_name(e.value())
                ),
                "expected an integer",
                format!("write a whole number without quotes, for example {key}=22"),
            ));
            None
        }
    }

    fn host(&mut self, node: &KdlNode) -> RawHost {
        self.check_props(node, &["address", "user", "port"]);
        let name = self.one_string_keep_props(node, "the host name");
        let mut h = RawHost {
            name,
            address: self.prop_string(node, "address"),
            user: self.prop_string(node, "user"),
            port: self.prop_integer(node, "port"),
            roles: Vec::new(),
        };
        for c in children(node) {
            self.no_children(c);
            match c.name().value() {
                "roles" => {
                    let v = self.strings(c, "role name");
                    h.roles.extend(v);
                }
                _ => self.unknown_node(c, HOST, "`host`"),
            }
        }
        h
    }

    fn rollout(&mut self, node: &KdlNode) -> RawRollout {
        self.block_only(node, "rollout { canary 1; batches \"25%\" \"100%\" }");
        let mut r = RawRollout {
            span: node.span(),
            canary: None,
            batches: None,
            max_fail: None,
            pause: None,
            connections: None,
        };
        for c in children(node) {
            self.no_children(c);
            match c.name().value() {
                "canary" => {
                    let v = self.integer(c, "a number of hosts");
                    self.once(&mut r.canary, c, v);
                }
                "batches" => {
                    let v = self.batches(c);
                    self.once(&mut r.batches, c, Some(v));
                }
                "max-fail" => {
                    let v = self.integer(c, "a number of hosts");
                    self.once(&mut r.max_fail, c, v);
                }
                "pause" => {
                    let v = self.duration(c);
                    self.once(&mut r.pause, c, v);
                }
                "connections" => {
                    let v = self.integer(c, "a number of connections");
                    self.once(&mut r.connections, c, v);
                }
                _ => self.unknown_node(c, ROLLOUT, "`rollout`"),
            }
        }
        r
    }

    /// `batches 1 "25%" "100%"`: integers or strings, checked by `validate`.
    fn batches(&mut self, node: &KdlNode) -> Vec<Spanned<RawBatch>> {
        self.check_props(node, &[]);
        if args(node).next().is_none() {
            self.push(Problem::new(
                ProblemKind::MissingValue,
                node.span(),
                "`batches` needs at least one batch size",
                "value missing",
                "write batches 1 \"100%\" (a number of hosts or a percentage of them, per batch)",
            ));
        }
        let mut out = Vec::new();
        for e in args(node) {
            match e.value() {
                KdlValue::Integer(i) => out.push(Spanned::new(RawBatch::Count(*i), e.span())),
                KdlValue::String(_) => {
                    if let Some(s) = self.string_value(node, e, "a percentage") {
                        out.push(Spanned::new(RawBatch::Text(s.value), s.span));
                    }
                }
                v => self.push(Problem::new(
                    ProblemKind::WrongType,
                    e.span(),
                    format!(
                        "`batches` expects a number of hosts or a percentage, found {}",
                        type_name(v)
                    ),
                    "expected 2 or \"25%\"",
                    "write a whole number of hosts without quotes (2) or a percentage in quotes (\"25%\")",
                )),
            }
        }
        out
    }

    fn drain(&mut self, node: &KdlNode) -> RawDrain {
        self.block_only(
            node,
            "drain { before \"lb1\" \"/usr/local/bin/lb\" \"drain\" \"{hosts}\" }",
        );
        let mut d = RawDrain {
            span: node.span(),
            hooks: Vec::new(),
        };
        for c in children(node) {
            self.no_children(c);
            let when = match c.name().value() {
                "before" => DrainWhen::Before,
                "after" => DrainWhen::After,
                _ => {
                    self.unknown_node(c, DRAIN, "`drain`");
                    continue;
                }
            };
            if let Some(h) = self.drain_hook(c, when) {
                d.hooks.push(h);
            }
        }
        d
    }

    /// `before "HOST" "program" "arg" ...`: the host, then an argv command.
    fn drain_hook(&mut self, node: &KdlNode, when: DrainWhen) -> Option<RawDrainHook> {
        let c = self.command(node, &[])?;
        let mut argv = c.argv.into_iter();
        let on = argv.next()?;
        let rest: Vec<Str> = argv.collect();
        if rest.first().is_none_or(|p| p.value.trim().is_empty()) {
            self.push(Problem::new(
                ProblemKind::EmptyCommand,
                node.span(),
                format!(
                    "`{}` has a host but no command",
                    node.name().value()
                ),
                "no program to run",
                format!(
                    "give the host, then the program and its arguments as separate strings, for example `{} \"lb1\" \"/usr/local/bin/lb\" \"drain\" \"{{hosts}}\"`",
                    node.name().value()
                ),
            ));
            return None;
        }
        Some(RawDrainHook {
            when,
            on,
            command: RawCommand {
                argv: rest,
                timeout: c.timeout,
            },
        })
    }

    fn phase(&mut self, node: &KdlNode) -> RawPhase {
        let name = self.one_string(node, "the phase name");
        let mut p = RawPhase {
            name,
            units: Vec::new(),
        };
        for c in children(node) {
            self.no_children(c);
            match c.name().value() {
                "unit" => {
                    let v = self.strings(c, "unit name");
                    p.units.extend(v);
                }
                _ => self.unknown_node(c, PHASE, "`phase`"),
            }
        }
        p
    }

    fn runtime(&mut self, node: &KdlNode) -> RawRuntime {
        let name = self.one_string(node, "the runtime name");
        let mut rt = RawRuntime {
            name,
            build: None,
            migrate: None,
            migrate_status: None,
            unit: None,
            deps: None,
        };
        for c in children(node) {
            if !matches!(c.name().value(), "unit" | "deps") {
                self.no_children(c);
            }
            match c.name().value() {
                "build" => {
                    let v = self.command(c, &[]);
                    self.once(&mut rt.build, c, v);
                }
                "migrate" => {
                    let v = self
                        .command(c, &["if-exists", "inputs"])
                        .map(|command| RawMigrate {
                            command,
                            if_exists: self.prop_string(c, "if-exists"),
                            inputs: self.prop_string(c, "inputs"),
                        });
                    self.once(&mut rt.migrate, c, v);
                }
                "migrate-status" => {
                    let v = self.command(c, &[]);
                    self.once(&mut rt.migrate_status, c, v);
                }
                "deps" => {
                    let v = self.deps(c);
                    self.once(&mut rt.deps, c, v);
                }
                "unit" => {
                    let v = self.unit(c);
                    self.once(&mut rt.unit, c, Some(v));
                }
                _ => self.unknown_node(c, RUNTIME, "`runtime`"),
            }
        }
        rt
    }

    /// A dependency step: its command, with `inputs`, `outputs` and an
    /// optional `version` command as children.
    fn deps(&mut self, node: &KdlNode) -> Option<RawDeps> {
        let command = self.command(node, &[]);
        let mut d = RawDeps {
            command: RawCommand {
                argv: Vec::new(),
                timeout: None,
            },
            inputs: Vec::new(),
            outputs: Vec::new(),
            version: None,
        };
        for c in children(node) {
            self.no_children(c);
            match c.name().value() {
                "inputs" => {
                    let v = self.strings(c, "path");
                    d.inputs.extend(v);
                }
                "outputs" => {
                    let v = self.strings(c, "path");
                    d.outputs.extend(v);
                }
                "version" => {
                    let v = self.command(c, &[]);
                    self.once(&mut d.version, c, v);
                }
                _ => self.unknown_node(c, DEPS, "`deps`"),
            }
        }
        for (list, name) in [(&d.inputs, "inputs"), (&d.outputs, "outputs")] {
            if list.is_empty() && !children(node).iter().any(|c| c.name().value() == name) {
                self.push(Problem::new(
                    ProblemKind::MissingValue,
                    node.span(),
                    format!("`deps` needs `{name}`"),
                    format!("no `{name}` here"),
                    "write deps \"npm\" \"ci\" { inputs \"package-lock.json\"; outputs \"node_modules\" }",
                ));
            }
        }
        d.command = command?;
        Some(d)
    }

    fn service(&mut self, node: &KdlNode) -> RawService {
        let name = self.one_string(node, "the service name");
        let mut s = RawService {
            name,
            runtime: None,
            port: None,
            phase: None,
            depends_on: Vec::new(),
            path: None,
            watch: Vec::new(),
            health: None,
            ready: None,
            ready_args: Vec::new(),
            metrics: None,
            ready_timeout: None,
            unit: None,
            role: None,
            cutover: None,
            schedule: None,
            persistent: None,
            build_on: None,
            seen: Vec::new(),
        };
        for c in children(node) {
            s.seen.push(c.name().value().to_owned());
            if !matches!(c.name().value(), "unit" | "cutover") {
                self.no_children(c);
            }
            match c.name().value() {
                "runtime" => {
                    let v = self.one_string(c, "a runtime name");
                    self.once(&mut s.runtime, c, v);
                }
                "port" => {
                    let v = self.integer(c, "a port number");
                    self.once(&mut s.port, c, v);
                }
                "phase" => {
                    let v = self.one_string(c, "a phase name");
                    self.once(&mut s.phase, c, v);
                }
                "depends-on" => {
                    let v = self.strings(c, "service name");
                    s.depends_on.extend(v);
                }
                "path" => {
                    let v = self.one_string(c, "a directory in the repository");
                    self.once(&mut s.path, c, v);
                }
                "watch" => {
                    let v = self.strings(c, "path");
                    s.watch.extend(v);
                }
                "health" => {
                    let v = self.one_string(c, "a path or URL");
                    self.once(&mut s.health, c, v);
                }
                "ready" => {
                    // `ready "/path"`, `ready "tcp"`, `ready "exec" "pg_isready" ...`.
                    let mut v = self.strings(c, "path, URL or kind").into_iter();
                    let first = v.next();
                    if first.is_some() && s.ready.is_none() {
                        s.ready_args = v.collect();
                    }
                    self.once(&mut s.ready, c, first);
                }
                "metrics" => {
                    let v = self.one_string(c, "a path or URL");
                    self.once(&mut s.metrics, c, v);
                }
                "ready-timeout" => {
                    let v = self.duration(c);
                    self.once(&mut s.ready_timeout, c, v);
                }
                "unit" => {
                    let v = self.unit(c);
                    self.once(&mut s.unit, c, Some(v));
                }
                "role" => {
                    let v = self.one_string(c, "a role name");
                    self.once(&mut s.role, c, v);
                }
                "cutover" => {
                    let v = self.cutover(c);
                    self.once(&mut s.cutover, c, Some(v));
                }
                "schedule" => {
                    let v = self.one_string(c, "an OnCalendar expression");
                    self.once(&mut s.schedule, c, v);
                }
                "persistent" => {
                    let v = self.boolean(c).map(|b| Spanned::new(b, c.span()));
                    self.once(&mut s.persistent, c, v);
                }
                "build-on" => {
                    let v = self.one_string(c, "where it builds (\"host\" or \"anywhere\")");
                    self.once(&mut s.build_on, c, v);
                }
                other => {
                    self.unknown_node(c, SERVICE, "`service`");
                    // `runtme "node"` is one typo, not also a missing runtime.
                    if let Some(meant) = suggest(other, SERVICE) {
                        s.seen.push(meant.to_owned());
                    }
                }
            }
        }
        s
    }

    /// `cutover "blue-green" { slots 8101 8102; upstream "..."; drain "5s" }`.
    fn cutover(&mut self, node: &KdlNode) -> RawCutover {
        let mode = self.one_string(node, "a cutover mode (\"blue-green\" or \"restart\")");
        let mut c = RawCutover {
            span: node.span(),
            mode,
            slots: Vec::new(),
            slots_span: None,
            upstream: None,
            drain: None,
        };
        for n in children(node) {
            self.no_children(n);
            match n.name().value() {
                "slots" => {
                    self.check_props(n, &[]);
                    if c.slots_span.is_some() {
                        self.push(Problem::new(
                            ProblemKind::Duplicate,
                            n.span(),
                            "`slots` is given twice",
                            "second definition",
                            "keep one of them",
                        ));
                        continue;
                    }
                    c.slots_span = Some(n.span());
                    for e in args(n) {
                        if let KdlValue::Integer(i) = e.value() {
                            c.slots.push(Spanned::new(*i, e.span()));
                        } else {
                            self.push(Problem::new(
                                ProblemKind::WrongType,
                                e.span(),
                                "`slots` takes port numbers",
                                "not a number",
                                "write slots 8101 8102",
                            ));
                        }
                    }
                }
                "upstream" => {
                    let v = self.one_string(n, "the path of the upstream file moorline writes");
                    self.once(&mut c.upstream, n, v);
                }
                "drain" => {
                    let v = self.duration(n);
                    self.once(&mut c.drain, n, v);
                }
                _ => self.unknown_node(n, CUTOVER, "`cutover`"),
            }
        }
        c
    }

    fn unit(&mut self, node: &KdlNode) -> RawUnit {
        self.check_props(node, &[]);
        for e in args(node) {
            self.push(Problem::new(
                ProblemKind::UnexpectedArgument,
                e.span(),
                "`unit` here takes no value, only a block",
                "unexpected",
                "write unit { exec \"/usr/bin/node\" \"{current}/index.js\" }",
            ));
        }
        let mut u = RawUnit {
            span: node.span(),
            ..RawUnit::default()
        };
        for c in children(node) {
            self.no_children(c);
            match c.name().value() {
                "description" => {
                    let v = self.one_string(c, "a description");
                    self.once(&mut u.description, c, v);
                }
                "exec" => {
                    let v = self.command(c, &[]);
                    self.once(&mut u.exec, c, v);
                }
                "env" => {
                    let v = self.env(c);
                    u.env.extend(v);
                }
                "env-file" => {
                    let v = self.strings(c, "file");
                    u.env_files.extend(v);
                }
                "user" => {
                    let v = self.one_string(c, "a user name");
                    self.once(&mut u.user, c, v);
                }
                "group" => {
                    let v = self.one_string(c, "a group name");
                    self.once(&mut u.group, c, v);
                }
                "restart" => {
                    let v = self.one_string(c, "a restart policy");
                    self.once(&mut u.restart, c, v);
                }
                "working-directory" => {
                    let v = self.one_string(c, "a directory");
                    self.once(&mut u.working_directory, c, v);
                }
                "after" => {
                    let v = self.strings(c, "unit name");
                    u.after.extend(v);
                }
                "wants" => {
                    let v = self.strings(c, "unit name");
                    u.wants.extend(v);
                }
                "wanted-by" => {
                    let v = self.one_string(c, "a target");
                    self.once(&mut u.wanted_by, c, v);
                }
                _ => self.unknown_node(c, UNIT, "`unit`"),
            }
        }
        u
    }

    fn proxy(&mut self, node: &KdlNode) -> RawProxy {
        let name = self.one_string(node, "the proxy name");
        let mut p = RawProxy {
            name,
            span: node.span(),
            unit: None,
            check: None,
            watch: Vec::new(),
        };
        for c in children(node) {
            self.no_children(c);
            match c.name().value() {
                "unit" => {
                    let v = self.one_string(c, "a unit name");
                    self.once(&mut p.unit, c, v);
                }
                "check" => {
                    let v = self.command(c, &[]);
                    self.once(&mut p.check, c, v);
                }
                "watch" => {
                    let v = self.strings(c, "path");
                    p.watch.extend(v);
                }
                _ => self.unknown_node(c, PROXY, "`proxy`"),
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_string_value_has_its_place() {
        for (node, key, want) in [
            ("service", None, Place::Name),
            ("depends-on", None, Place::Name),
            ("after", None, Place::Name),
            ("unit", None, Place::Name),
            ("root", None, Place::Path),
            ("env-file", None, Place::Path),
            ("unit-dir", None, Place::Path),
            ("promote-from", Some("state-dir"), Place::Path),
            ("migrate", Some("if-exists"), Place::Path),
            ("user", None, Place::User),
            ("group", None, Place::User),
            ("host", Some("user"), Place::User),
            ("host", Some("address"), Place::Value),
            ("branch", None, Place::Value),
            ("description", None, Place::Value),
            ("env", Some("API_URL"), Place::EnvValue),
            ("env", Some("user"), Place::EnvValue),
            ("env", None, Place::EnvValue),
        ] {
            assert_eq!(Place::of(node, key), want, "{node} {key:?}");
        }
    }
}

//! How a service starts, from what the repository runs it with: a
//! Procfile's `web:` line, a Dockerfile's `CMD`/`ENTRYPOINT` (last stage),
//! a Python module with `if __name__ == "__main__"`, a WSGI/ASGI app object.
//! Commands become argv for the service's runtime (`python` → the venv's
//! python, files of the service → `{current}/FILE`, `$PORT` and a bound
//! port → `{port}`); one that needs a shell (other variables, pipes) is not
//! used. Pure: reads only [`Files`].

use super::{Files, Guess, usable};

/// A start command found, and whether it takes the port from moorline
/// (`{port}` in its argv).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Start {
    pub(super) exec: Guess<Vec<String>>,
    /// The port the command named before it was replaced by `{port}`.
    pub(super) port: Option<u16>,
}

/// What a Dockerfile says, from its last stage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Dockerfile {
    /// Every `FROM` image, in order.
    pub(super) images: Vec<String>,
    /// `ENTRYPOINT` then `CMD` of the last stage, as argv; `None` when it
    /// needs a shell.
    pub(super) command: Option<Vec<String>>,
    /// The command's text as written, for comments.
    pub(super) written: Option<String>,
    pub(super) workdir: Option<String>,
    /// `EXPOSE` ports of the last stage.
    pub(super) expose: Vec<u16>,
}

/// Wrappers a Dockerfile puts in front of the real program.
const INIT_WRAPPERS: &[&str] = &["tini", "dumb-init"];

/// Reads a Dockerfile: instructions joined over `\` continuations.
pub(super) fn dockerfile(text: &str) -> Dockerfile {
    let mut d = Dockerfile::default();
    let mut entry: Option<(Option<Vec<String>>, String)> = None;
    let mut cmd: Option<(Option<Vec<String>>, String)> = None;
    let mut line = String::new();
    for raw in text.lines() {
        let t = raw.trim();
        if t.starts_with('#') && line.is_empty() {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            line.push_str(head);
            line.push(' ');
            continue;
        }
        line.push_str(t);
        let full = std::mem::take(&mut line);
        let (word, rest) = full.split_once(char::is_whitespace).unwrap_or((&full, ""));
        let rest = rest.trim();
        match word.to_ascii_uppercase().as_str() {
            "FROM" => {
                let image = rest
                    .split_whitespace()
                    .find(|w| !w.starts_with("--"))
                    .unwrap_or_default();
                d.images.push(image.to_owned());
                // A new stage: what the last one runs is what counts.
                entry = None;
                cmd = None;
                d.workdir = None;
                d.expose.clear();
            }
            "WORKDIR" => d.workdir = Some(rest.trim_end_matches('/').to_owned()),
            "EXPOSE" => d.expose.extend(
                rest.split_whitespace()
                    .filter_map(|v| v.split('/').next()?.parse::<u16>().ok().filter(|p| *p > 0)),
            ),
            "ENTRYPOINT" => entry = Some((instruction_argv(rest), rest.to_owned())),
            "CMD" => cmd = Some((instruction_argv(rest), rest.to_owned())),
            _ => {}
        }
    }
    let (command, written) = match (entry, cmd) {
        (None, None) => (None, None),
        (None, Some((c, w))) | (Some((c, w)), None) => (c, Some(w)),
        (Some((e, ew)), Some((c, cw))) => {
            // A shell-form ENTRYPOINT ignores CMD.
            let joined = match (e, c) {
                (Some(mut e), Some(c)) if ew.starts_with('[') => {
                    e.extend(c);
                    Some(e)
                }
                (e, _) if !ew.starts_with('[') => e,
                _ => None,
            };
            (joined, Some(format!("{ew} {cw}")))
        }
    };
    d.command = command.map(|mut argv| {
        while argv.first().is_some_and(|p| {
            INIT_WRAPPERS.contains(&p.rsplit('/').next().unwrap_or(p)) || p == "--"
        }) {
            argv.remove(0);
        }
        argv
    });
    d.written = written;
    d
}

/// `["a", "b"]` (exec form) or plain words (shell form without shell
/// syntax); `$PORT` / `${PORT}` are kept for [`runtime_argv`].
fn instruction_argv(rest: &str) -> Option<Vec<String>> {
    if rest.starts_with('[') {
        return serde_json::from_str::<Vec<String>>(rest).ok();
    }
    shell_words(rest)
}

/// A command line as words when it needs no shell: no quotes, pipes,
/// redirections or variables other than `$PORT`.
pub(super) fn shell_words(line: &str) -> Option<Vec<String>> {
    let cleaned = line.replace("${PORT}", "$PORT");
    let without_port = cleaned.replace("$PORT", "");
    if without_port.contains([
        '&', '|', ';', '$', '"', '\'', '`', '<', '>', '\\', '(', ')', '*', '?',
    ]) {
        return None;
    }
    let words: Vec<String> = cleaned.split_whitespace().map(str::to_owned).collect();
    (!words.is_empty()).then_some(words)
}

/// The `web:` (else the only) process of a Procfile.
pub(super) fn procfile(text: &str) -> Option<(String, Option<Vec<String>>)> {
    let lines: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
        .filter(|(k, _)| !k.starts_with('#') && !k.is_empty())
        .collect();
    let (_, line) = lines
        .iter()
        .find(|(k, _)| *k == "web")
        .or_else(|| (lines.len() == 1).then(|| &lines[0]))?;
    Some(((*line).to_owned(), shell_words(line)))
}

/// Which runtime a command is translated for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum For {
    Node,
    /// The venv directory of the service (`venv`, `.venv`).
    Python(&'static str),
}

/// Python programs a requirements file installs into the venv.
const PYTHON_TOOLS: &[&str] = &[
    "gunicorn",
    "uvicorn",
    "uwsgi",
    "hypercorn",
    "daphne",
    "celery",
    "flask",
    "fastapi",
    "waitress-serve",
    "streamlit",
];

/// A command from a Dockerfile or Procfile as the unit's argv: the program
/// of the runtime, the service's files under `{current}`, `$PORT` and a
/// bound port as `{port}`. `None` when the program is not one this runtime
/// has (a compiled binary, a shell script).
pub(super) fn runtime_argv(
    files: &Files,
    dir: &str,
    command: &[String],
    workdir: Option<&str>,
    runtime: For,
) -> Option<(Vec<String>, Option<u16>)> {
    let (program, args) = command.split_first()?;
    let base = program.rsplit('/').next().unwrap_or(program);
    let mut out = Vec::new();
    match runtime {
        For::Node if matches!(base, "node" | "nodejs") => out.push("/usr/bin/node".to_owned()),
        For::Python(venv)
            if base == "python"
                || base
                    .strip_prefix("python3")
                    .is_some_and(|v| v.is_empty() || v.starts_with('.')) =>
        {
            out.push(format!("{{current}}/{venv}/bin/python"));
        }
        For::Python(venv) if PYTHON_TOOLS.contains(&base) => {
            out.push(format!("{{current}}/{venv}/bin/{base}"));
        }
        _ => return None,
    }
    let mut port = None;
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        i += 1;
        if !usable(a) {
            return None;
        }
        // `--port N`, `-p N`, `-b HOST:N`, `--bind HOST:N`, `--bind=HOST:N`.
        let (flag, value) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (a.as_str(), None),
        };
        if matches!(
            flag,
            "--port" | "-p" | "-b" | "--bind" | "--http" | "--http-socket"
        ) {
            let joined = value.is_some();
            let Some(value) = value.or_else(|| args.get(i).cloned()) else {
                out.push(a.clone());
                continue;
            };
            if !joined {
                i += 1;
            }
            let (host, p) = value
                .rsplit_once(':')
                .map_or(("", value.as_str()), |(h, p)| (h, p));
            if p != "$PORT" && p.parse::<u16>().is_err() {
                return None;
            }
            port = port.or_else(|| p.parse::<u16>().ok());
            let v = if value.contains(':') {
                format!("{host}:{{port}}")
            } else {
                "{port}".to_owned()
            };
            if joined {
                out.push(format!("{flag}={v}"));
            } else {
                out.push(flag.to_owned());
                out.push(v);
            }
            continue;
        }
        if a.contains('$') {
            if a == "$PORT" {
                out.push("{port}".to_owned());
                continue;
            }
            return None;
        }
        out.push(in_service(files, dir, a, workdir));
    }
    // uvicorn and `fastapi run` read no PORT and listen on 8000 unless
    // told: they are told the configured port (gunicorn reads PORT).
    if matches!(base, "uvicorn" | "fastapi")
        && !out
            .iter()
            .any(|w| w.contains("{port}") || w.starts_with("--uds") || w.starts_with("--fd"))
    {
        out.extend(["--port".to_owned(), "{port}".to_owned()]);
    }
    Some((out, port))
}

/// `a` as `{current}/a` when it names a file of the service (relative, or
/// under the Dockerfile's WORKDIR); otherwise as it is.
fn in_service(files: &Files, dir: &str, a: &str, workdir: Option<&str>) -> String {
    let rel = workdir
        .and_then(|w| a.strip_prefix(&format!("{w}/")))
        .unwrap_or(a)
        .trim_start_matches("./");
    if !rel.starts_with('/')
        && !rel.starts_with('-')
        && files.paths.contains(&super::scan::join(dir, rel))
    {
        format!("{{current}}/{rel}")
    } else {
        a.to_owned()
    }
}

/// The command from the service's Procfile, then its Dockerfile, when
/// its program is one of this runtime's.
pub(super) fn declared(files: &Files, dir: &str, runtime: For) -> Option<Start> {
    let procfile_path = super::scan::join(dir, "Procfile");
    if let Some((line, words)) = files.text.get(&procfile_path).and_then(|t| procfile(t))
        && let Some((argv, port)) = words
            .as_deref()
            .and_then(|w| runtime_argv(files, dir, w, None, runtime))
    {
        return Some(Start {
            exec: Guess::found(
                argv,
                format!("{procfile_path} (`{}`)", super::scan::clip(&line)),
            ),
            port,
        });
    }
    let docker_path = super::scan::join(dir, "Dockerfile");
    let d = dockerfile(files.text.get(&docker_path)?);
    let (argv, port) = runtime_argv(
        files,
        dir,
        d.command.as_deref()?,
        d.workdir.as_deref(),
        runtime,
    )?;
    Some(Start {
        exec: Guess::found(
            argv,
            format!(
                "CMD/ENTRYPOINT in {docker_path} (`{}`)",
                super::scan::clip(d.written.as_deref().unwrap_or_default())
            ),
        ),
        port,
    })
}

/// Python files of the service that run something when started
/// (`if __name__ == "__main__"`), without tests and clients.
fn python_mains<'a>(files: &'a Files, dir: &str) -> Vec<(&'a str, &'a str)> {
    let prefix = super::scan::prefix(dir);
    files
        .text
        .iter()
        .filter_map(|(p, t)| Some((p.strip_prefix(&prefix)?, p, t)))
        .filter(|(rel, _, _)| {
            let name = rel.rsplit('/').next().unwrap_or(rel);
            super::ext_is(rel, "py")
                && !rel.split('/').any(|c| matches!(c, "test" | "tests"))
                && !name.starts_with("test_")
                && !name.ends_with("_test.py")
                && !name.contains("client")
                && !matches!(name, "setup.py" | "manage.py" | "conftest.py")
        })
        .filter(|(_, _, t)| {
            t.contains("__name__ == \"__main__\"") || t.contains("__name__ == '__main__'")
        })
        .map(|(rel, _, t)| (rel, t.as_str()))
        .collect()
}

/// Signs that a module starts a server.
const SERVES: &[&str] = &[
    "app.run(",
    "uvicorn.run(",
    ".serve(",
    "serve(",
    "wait_for_termination",
    "serve_forever",
    "web.run_app(",
    "socketio.run(",
];

/// A Python service's own entry point: the one `__main__` module (or the
/// one of several that starts a server), else an `app` object for
/// gunicorn or uvicorn when the requirements install them.
pub(super) fn python_module(files: &Files, dir: &str, venv: &str) -> Result<Start, String> {
    let mains = python_mains(files, dir);
    let serving: Vec<&(&str, &str)> = mains
        .iter()
        .filter(|(_, t)| SERVES.iter().any(|s| t.contains(s)))
        .collect();
    let pick = match (mains.as_slice(), serving.as_slice()) {
        ([one], _) => Some(one.0),
        (_, [one]) => Some(one.0),
        _ => None,
    };
    if let Some(rel) = pick {
        return Ok(Start {
            exec: Guess::found(
                vec![
                    format!("{{current}}/{venv}/bin/python"),
                    format!("{{current}}/{rel}"),
                ],
                format!(
                    "`if __name__ == \"__main__\"` in {}",
                    super::scan::join(dir, rel)
                ),
            ),
            port: None,
        });
    }
    if mains.len() > 1 {
        let names: Vec<&str> = mains.iter().map(|(r, _)| *r).collect();
        return Err(format!(
            "several modules run as a program ({}); write the one that starts the service",
            names.join(", ")
        ));
    }
    // An application object a server runs: `app = Flask(...)`.
    let prefix = super::scan::prefix(dir);
    let reqs = [
        super::scan::join(dir, "requirements.txt"),
        super::scan::join(dir, "pyproject.toml"),
    ]
    .iter()
    .filter_map(|p| files.text.get(p))
    .map(|t| t.to_ascii_lowercase())
    .collect::<String>();
    for (p, t) in &files.text {
        let Some(rel) = p.strip_prefix(&prefix) else {
            continue;
        };
        let Some(module) = rel.strip_suffix(".py").filter(|m| {
            m.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '/'))
        }) else {
            continue;
        };
        let module = module.replace('/', ".");
        for (maker, server) in [("Flask(", "gunicorn"), ("FastAPI(", "uvicorn")] {
            let Some(var) = app_object(t, maker) else {
                continue;
            };
            if !reqs.contains(server) {
                continue;
            }
            let bin = format!("{{current}}/{venv}/bin/{server}");
            let target = format!("{module}:{var}");
            let argv = if server == "gunicorn" {
                vec![
                    bin,
                    "--bind".to_owned(),
                    "127.0.0.1:{port}".to_owned(),
                    target,
                ]
            } else {
                vec![
                    bin,
                    target,
                    "--host".to_owned(),
                    "127.0.0.1".to_owned(),
                    "--port".to_owned(),
                    "{port}".to_owned(),
                ]
            };
            return Ok(Start {
                exec: Guess::assumed(
                    argv,
                    format!(
                        "`{var} = {maker}...)` in {p}, served by {server} (in its requirements); it listens on 127.0.0.1 only"
                    ),
                ),
                port: None,
            });
        }
    }
    Err("no Procfile, Dockerfile CMD, [project.scripts], `if __name__ == \"__main__\"` module or app object found".to_owned())
}

/// The variable a line `NAME = MAKER...` assigns (`app = Flask(__name__)`).
fn app_object(text: &str, maker: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (var, value) = l.split_once('=')?;
        let var = var.trim();
        (!l.starts_with(char::is_whitespace)
            && value.trim_start().starts_with(maker)
            && !var.is_empty()
            && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .then(|| var.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn dockerfile_last_stage_command() {
        let d = dockerfile(
            "FROM python:3 AS base\nCMD [\"python\", \"app.py\"]\nEXPOSE 80\n\
             FROM base\nWORKDIR /app/\nEXPOSE 8080/tcp\n\
             ENTRYPOINT [\"/usr/bin/tini\", \"--\"]\nCMD [\"gunicorn\", \"app:app\", \\\n  \"-b\", \"0.0.0.0:80\"]\n",
        );
        assert_eq!(d.images, ["python:3", "base"]);
        assert_eq!(
            d.command.as_deref(),
            Some(&words(&["gunicorn", "app:app", "-b", "0.0.0.0:80"])[..])
        );
        assert_eq!(d.workdir.as_deref(), Some("/app"));
        assert_eq!(d.expose, [8080]);
        // A shell form with variables needs a shell: not used.
        let d = dockerfile("FROM x\nENTRYPOINT locust --host=\"http://${A}\" 2>&1\n");
        assert_eq!(d.command, None);
        let d = dockerfile("FROM x\nCMD dispatch\n");
        assert_eq!(d.command.as_deref(), Some(&words(&["dispatch"])[..]));
    }

    #[test]
    fn commands_become_runtime_argv_with_the_port_placeholder() {
        let files = Files::from_entries("x", [("svc/app.py", ""), ("svc/payment.ini", "")]);
        let py = For::Python("venv");
        for (argv, want, port) in [
            (
                &["python", "app.py"][..],
                Some(&["{current}/venv/bin/python", "{current}/app.py"][..]),
                None,
            ),
            (
                &["gunicorn", "app:app", "-b", "0.0.0.0:80", "--log-file", "-"],
                Some(&[
                    "{current}/venv/bin/gunicorn",
                    "app:app",
                    "-b",
                    "0.0.0.0:{port}",
                    "--log-file",
                    "-",
                ]),
                Some(80),
            ),
            (
                &["uvicorn", "main:app", "--port=$PORT"],
                Some(&["{current}/venv/bin/uvicorn", "main:app", "--port={port}"]),
                None,
            ),
            (
                &["uwsgi", "--ini", "/app/payment.ini"],
                Some(&["{current}/venv/bin/uwsgi", "--ini", "{current}/payment.ini"]),
                None,
            ),
            (
                &["fastapi", "run", "--workers", "4"],
                Some(&[
                    "{current}/venv/bin/fastapi",
                    "run",
                    "--workers",
                    "4",
                    "--port",
                    "{port}",
                ]),
                None,
            ),
            (&["/src/server"], None, None),
            (&["python", "$APP"], None, None),
        ] {
            let got = runtime_argv(&files, "svc", &words(argv), Some("/app"), py);
            assert_eq!(got, want.map(|w| (words(w), port)), "{argv:?}");
        }
        assert_eq!(
            runtime_argv(
                &files,
                "svc",
                &words(&["node", "server.js"]),
                None,
                For::Node
            ),
            Some((words(&["/usr/bin/node", "server.js"]), None))
        );
    }

    #[test]
    fn procfile_web_line() {
        assert_eq!(
            procfile("worker: celery -A x\nweb: gunicorn app:app --bind 0.0.0.0:$PORT\n"),
            Some((
                "gunicorn app:app --bind 0.0.0.0:$PORT".to_owned(),
                Some(words(&["gunicorn", "app:app", "--bind", "0.0.0.0:$PORT"]))
            ))
        );
        assert_eq!(procfile("a: x\nb: y\n"), None);
    }

    #[test]
    fn python_entry_points() {
        let f = Files::from_entries(
            "x",
            [
                (
                    "s/email_server.py",
                    "if __name__ == '__main__':\n  serve()\n",
                ),
                ("s/email_client.py", "if __name__ == '__main__':\n  run()\n"),
                ("s/tests/test_x.py", "if __name__ == '__main__':\n  x()\n"),
            ],
        );
        let got = python_module(&f, "s", "venv").unwrap();
        assert_eq!(got.exec.value[1], "{current}/email_server.py");
        let f = Files::from_entries(
            "x",
            [
                ("s/requirements.txt", "Flask\ngunicorn==21\n"),
                (
                    "s/main.py",
                    "from flask import Flask\napp = Flask(__name__)\n",
                ),
            ],
        );
        let got = python_module(&f, "s", "venv").unwrap();
        assert_eq!(
            got.exec.value,
            [
                "{current}/venv/bin/gunicorn",
                "--bind",
                "127.0.0.1:{port}",
                "main:app"
            ]
        );
        // main.py that runs nothing, and no server installed: no guess.
        let f = Files::from_entries(
            "x",
            [
                ("s/requirements.txt", "flask\n"),
                ("s/main.py", "app = Flask(__name__)\n"),
            ],
        );
        assert!(python_module(&f, "s", "venv").is_err());
    }
}

//! `moorline init` on generated repositories of several shapes: what it
//! writes validates (checked by running `moorline validate` on it), holds
//! what the repository has, and nothing is overwritten without `--force`.

use std::path::Path;

use crate::cli::{moorline, text};

/// A git repository (branch `main`, nothing committed) with these files.
fn repo(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("shop").tempdir().unwrap();
    let r = git2::Repository::init(dir.path()).unwrap();
    r.set_head("refs/heads/main").unwrap();
    for (path, body) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    dir
}

/// Runs `init` in `dir`, then `validate` on what it wrote; returns the
/// config and init's output.
fn init_and_validate(dir: &Path) -> (String, String) {
    let o = moorline(dir, &["init"]);
    assert!(o.status.success(), "{}", text(&o));
    let config = std::fs::read_to_string(dir.join("moorline.kdl")).unwrap();
    let v = moorline(dir, &["validate"]);
    assert!(v.status.success(), "{}\n{config}", text(&v));
    (config, text(&o))
}

const UNIT_API: &str = "[Unit]\nDescription=Shop API\nAfter=network.target postgresql.service\n\n\
[Service]\nUser=shop\nWorkingDirectory=/srv/shop/services/api\nEnvironment=PORT=8080 NODE_ENV=production\n\
Environment=API_TOKEN=hunter2\nEnvironmentFile=/etc/shop/api.env\n\
ExecStart=/usr/bin/node /srv/shop/services/api/src/index.js\n\n[Install]\nWantedBy=multi-user.target\n";

const UNIT_WORKER: &str = "[Unit]\nDescription=Shop worker\nAfter=redis-server.service shop-api.service\n\
[Service]\nUser=shop\nExecStart=/srv/shop/venv/bin/python /srv/shop/services/worker/main.py\n";

fn mixed() -> tempfile::TempDir {
    repo(&[
        (
            "services/api/package.json",
            r#"{"name":"api","scripts":{"start":"node src/index.js"},"devDependencies":{"prisma":"5"}}"#,
        ),
        ("services/api/package-lock.json", "{}"),
        ("services/api/prisma/schema.prisma", "datasource db {}"),
        (
            "services/api/src/index.js",
            "app.get('/healthz', ok);\napp.listen(process.env.PORT || 4000);\n",
        ),
        ("services/worker/requirements.txt", "flask==3.0\n"),
        (
            "services/worker/main.py",
            "PORT = int(os.environ.get(\"PORT\", \"5000\"))\nif __name__ == \"__main__\":\n    serve(PORT)\n",
        ),
        ("services/search/go.mod", "module example.com/search\n"),
        ("services/search/cmd/search/main.go", "package main\n"),
        (
            "packages/ui/package.json",
            r#"{"name":"ui","main":"index.js"}"#,
        ),
        ("deploy/systemd/shop-api.service", UNIT_API),
        ("deploy/systemd/shop-worker.service", UNIT_WORKER),
        (
            "deploy/nginx/shop.conf",
            "upstream api { server 127.0.0.1:8080; }\nserver { location / { proxy_pass http://api; } }\n",
        ),
        (
            "services/api/node_modules/x/package.json",
            r#"{"name":"x"}"#,
        ),
    ])
}

#[test]
fn init_mixed_repository_with_unit_files_and_nginx() {
    let dir = mixed();
    let (config, out) = init_and_validate(dir.path());
    // The secret in the unit file is not copied anywhere moorline writes.
    assert!(!config.contains("hunter2") && !out.contains("hunter2"));
    assert!(out.contains("api              node"), "{out}");
    assert!(
        out.contains(
            "next: moorline validate; commit moorline.kdl (moorline deploys commits, and `apply` refuses a configuration that is not committed); then moorline plan --env staging"
        ),
        "{out}"
    );
    // The project name is the temp directory's: replace it for the snapshot.
    let name = dir
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let name = name.trim_start_matches('.').to_owned();
    let config = config.replace(&name, "[project]");
    insta::assert_snapshot!("init_mixed", config);
}

#[test]
fn init_writes_a_unit_user_validation_refuses_as_a_comment() {
    // systemd's relaxed User= takes `www.data` and `zero\u{200b}width`;
    // validation refuses both, so init leaves them for a person to check.
    let unit = "[Service]\nUser=www.data\nGroup=shop\u{200b}\n\
                ExecStart=/usr/bin/node /srv/shop/services/api/src/index.js\n";
    let dir = repo(&[
        (
            "services/api/package.json",
            r#"{"name":"api","scripts":{"start":"node src/index.js"}}"#,
        ),
        ("services/api/src/index.js", "app.listen(3000);\n"),
        ("deploy/systemd/shop-api.service", unit),
    ]);
    let (config, _) = init_and_validate(dir.path());
    assert!(
        config.contains(
            "// check: the unit's user is not a name useradd makes (it has characters other than letters, digits, `_` and `-` (and a final `$`)):\n        // user \"www.data\""
        ),
        "{config}"
    );
    assert!(!config.contains('\u{200b}'), "{config}");
}

#[test]
fn init_node_prisma_monorepo_with_pnpm_workspace() {
    let dir = repo(&[
        (
            "package.json",
            r#"{"private":true,"workspaces":["apps/*"]}"#,
        ),
        ("pnpm-lock.yaml", "lockfileVersion: 9\n"),
        (
            "apps/web/package.json",
            r#"{"scripts":{"build":"tsc","start":"node dist/server.js"}}"#,
        ),
        ("apps/web/.env.example", "PORT=3100\n"),
        (
            "apps/admin/package.json",
            r#"{"scripts":{"start":"next start"}}"#,
        ),
        ("apps/admin/prisma/schema.prisma", "model A {}"),
    ]);
    let (config, out) = init_and_validate(dir.path());
    assert!(config.contains("path \"apps/web\""), "{config}");
    assert!(config.contains("port 3100"), "{config}");
    assert!(config.contains("watch \"pnpm-lock.yaml\""), "{config}");
    assert!(config.contains("\"pnpm\" \"run\" \"build\""), "{config}");
    assert!(
        config.contains("\"pnpm\" \"exec\" \"prisma\" \"migrate\" \"deploy\""),
        "{config}"
    );
    assert!(
        config.contains("\"/usr/bin/node\" \"{current}/dist/server.js\""),
        "{config}"
    );
    // admin's start script goes through pnpm, and that is flagged.
    assert!(
        config.contains("exec \"/usr/bin/pnpm\" \"start\""),
        "{config}"
    );
    assert!(out.contains("admin exec"), "{out}");
    assert!(out.contains("taken as the repository's tooling"), "{out}");
}

#[test]
fn init_python_with_requirements_and_pyproject_only() {
    let dir = repo(&[
        ("services/ml/requirements.txt", "numpy\n"),
        (
            "services/ml/app.py",
            "route('/ready')\nroute('/health')\nif __name__ == '__main__':\n    app.run()\n",
        ),
        (
            "services/reports/pyproject.toml",
            "[project]\nname = \"reports\"\n\n[project.scripts]\nreports-server = \"reports:main\"\n",
        ),
    ]);
    let (config, _) = init_and_validate(dir.path());
    assert!(config.contains("outputs \"venv\""), "{config}");
    assert!(
        config.contains("\"{current}/venv/bin/python\" \"{current}/app.py\""),
        "{config}"
    );
    assert!(config.contains("ready \"/ready\""), "{config}");
    // pyproject.toml only: installed by a build step, runs its script.
    assert!(config.contains("runtime \"python-reports\""), "{config}");
    assert!(
        config.contains("exec \"{current}/venv/bin/reports-server\""),
        "{config}"
    );
}

#[test]
fn init_go_services_in_command_directories() {
    let dir = repo(&[
        ("cmd/api/go.mod", "module a\n"),
        (
            "cmd/api/main.go",
            "package main\nvar port = os.Getenv(\"PORT\") // default 9090\n",
        ),
    ]);
    let (config, _) = init_and_validate(dir.path());
    assert!(
        config.contains("build \"go\" \"build\" \"-o\" \"bin/{service}\" \".\""),
        "{config}"
    );
    assert!(config.contains("path \"cmd/api\""), "{config}");
}

#[test]
fn init_on_a_root_only_go_repository_writes_a_service_at_the_root() {
    let dir = repo(&[
        ("go.mod", "module example.com/shop\n"),
        (
            "main.go",
            "package main\n// http.HandleFunc(\"/healthz\", ok)\n",
        ),
    ]);
    let (config, out) = init_and_validate(dir.path());
    assert!(config.contains("path \".\""), "{config}");
    // Named after the repository (the temp directory starts with "shop").
    assert!(config.contains("service \"shop"), "{config}");
    assert!(
        config.contains("build \"go\" \"build\" \"-o\" \"bin/{service}\" \".\""),
        "{config}"
    );
    assert!(out.contains("deploys the whole repository"), "{out}");
}

#[test]
fn init_on_a_root_only_node_repository_writes_a_service_at_the_root() {
    let dir = repo(&[
        (
            "package.json",
            r#"{"name":"web","scripts":{"start":"node server.js"}}"#,
        ),
        ("package-lock.json", "{}"),
        ("server.js", "app.listen(process.env.PORT || 4100);\n"),
    ]);
    let (config, out) = init_and_validate(dir.path());
    assert!(config.contains("path \".\""), "{config}");
    // The lockfile beside it is the service's own: a cached deps step
    // with it as the input, not a workspace `watch`.
    assert!(config.contains("\"package-lock.json\""), "{config}");
    assert!(!config.contains("watch"), "{config}");
    assert!(out.contains("deploys the whole repository"), "{out}");
}

#[test]
fn init_on_an_empty_repository_writes_nothing() {
    let dir = repo(&[("README.md", "hello\n")]);
    let o = moorline(dir.path(), &["init"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("moorline::init::nothing_found"),
        "{}",
        text(&o)
    );
    assert!(!dir.path().join("moorline.kdl").exists());
}

#[test]
fn init_refuses_to_overwrite_without_force_and_names_the_config_elsewhere() {
    let dir = mixed();
    let path = dir.path().join("moorline.kdl");
    std::fs::write(&path, "mine").unwrap();
    let o = moorline(dir.path(), &["init"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("moorline::init::exists"), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "mine");
    let o = moorline(dir.path(), &["init", "--force"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .contains("service \"api\"")
    );

    // --out elsewhere, DIR given: the next steps name the file with -c.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = elsewhere.path().join("shop.kdl");
    let o = moorline(
        elsewhere.path(),
        &["init", dir.path().to_str().unwrap(), "--out", "other.kdl"],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("next: moorline validate"), "{}", text(&o));
    std::fs::write(&out, "x").unwrap();
    let o = moorline(
        elsewhere.path(),
        &["init", dir.path().to_str().unwrap(), "--out", "third.kdl"],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("moorline -c third.kdl validate"),
        "{}",
        text(&o)
    );
}

/// Names in `dir` that init's temporary files would have.
fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".init-"))
        .collect()
}

#[test]
fn init_force_never_writes_through_a_symlink_nor_into_a_fifo_or_directory() {
    let dir = mixed();
    let outside = tempfile::tempdir().unwrap();
    let precious = outside.path().join("precious");
    std::fs::write(&precious, "precious\n").unwrap();
    let path = dir.path().join("moorline.kdl");

    // A symlink to a file outside the repository, and one to nowhere (init
    // would create its target).
    let nowhere = outside.path().join("nowhere");
    for target in [&precious, &nowhere] {
        std::os::unix::fs::symlink(target, &path).unwrap();
        for args in [&["init"][..], &["init", "--force"]] {
            let o = moorline(dir.path(), args);
            assert_eq!(o.status.code(), Some(1), "{args:?}: {}", text(&o));
            assert!(
                text(&o).contains("moorline::init::not_a_file"),
                "{}",
                text(&o)
            );
            assert!(text(&o).contains("it is a symbolic link"), "{}", text(&o));
            assert!(std::fs::symlink_metadata(&path).unwrap().is_symlink());
        }
        std::fs::remove_file(&path).unwrap();
    }
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "precious\n");
    assert!(!nowhere.exists());

    // A FIFO (writing into it would block, or feed a reader) and a
    // directory.
    crate::support::mkfifo(&path);
    let o = moorline(dir.path(), &["init", "--force"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("moorline::init::not_a_file"),
        "{}",
        text(&o)
    );
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    let o = moorline(dir.path(), &["init", "--force"]);
    assert!(text(&o).contains("it is a directory"), "{}", text(&o));
    std::fs::remove_dir(&path).unwrap();

    // A regular file is replaced (a new file: its old inode is untouched,
    // so a hard link elsewhere keeps the old text), and nothing is left.
    std::fs::write(&path, "mine\n").unwrap();
    let hard = outside.path().join("hard");
    std::fs::hard_link(&path, &hard).unwrap();
    let o = moorline(dir.path(), &["init", "--force"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .contains("service \"api\"")
    );
    assert_eq!(std::fs::read_to_string(&hard).unwrap(), "mine\n");
    assert_eq!(temporaries(dir.path()), Vec::<String>::new());
}

/// The problem codes in a `moorline validate` report.
fn codes(report: &str) -> std::collections::BTreeSet<String> {
    report
        .match_indices("moorline::config::")
        .map(|(at, _)| {
            report[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_'))
                .collect()
        })
        .collect()
}

#[test]
fn init_leaves_a_start_command_it_cannot_find_as_a_todo_validate_refuses() {
    // A Python module that defines routes but runs nothing, and no server
    // in its requirements: there is no command to guess.
    let dir = repo(&[
        ("services/ml/requirements.txt", "numpy\n"),
        ("services/ml/main.py", "def handler(event):\n    return 1\n"),
        (
            "services/web/package.json",
            r#"{"scripts":{"start":"node server.js"}}"#,
        ),
    ]);
    let o = moorline(dir.path(), &["init"]);
    assert!(o.status.success(), "{}", text(&o));
    let config = std::fs::read_to_string(dir.path().join("moorline.kdl")).unwrap();
    assert!(
        config.contains("exec \"TODO: write the command that starts ml\""),
        "{config}"
    );
    assert!(!config.contains("main.py\""), "{config}");
    assert!(text(&o).contains("ml exec: no Procfile"), "{}", text(&o));
    let v = moorline(dir.path(), &["validate"]);
    assert_eq!(v.status.code(), Some(1), "{}", text(&v));
    let report = text(&v);
    assert_eq!(
        codes(&report),
        ["moorline::config::init_todo", "moorline::config::invalid"]
            .map(str::to_owned)
            .into(),
        "{report}"
    );
    assert!(report.contains("TODO left by init"), "{report}");
    // Written by hand, it validates.
    let fixed = config.replace(
        "exec \"TODO: write the command that starts ml\"",
        "exec \"{current}/venv/bin/python\" \"{current}/main.py\"",
    );
    std::fs::write(dir.path().join("moorline.kdl"), fixed).unwrap();
    let v = moorline(dir.path(), &["validate"]);
    assert!(v.status.success(), "{}", text(&v));
}

/// Copies `tests/fixtures/init/NAME` (files of a public repository) into a
/// git repository named NAME, runs `init` there and `validate` on what it
/// wrote (which may refuse only init's TODOs); returns the configuration
/// and init's report.
fn public(name: &str) -> (String, String) {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let target = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &target);
            } else {
                std::fs::copy(e.path(), target).unwrap();
            }
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(name);
    copy(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/init")
            .join(name),
        &dir,
    );
    let r = git2::Repository::init(&dir).unwrap();
    r.set_head("refs/heads/main").unwrap();
    let o = moorline(&dir, &["init"]);
    assert!(o.status.success(), "{}", text(&o));
    let config = std::fs::read_to_string(dir.join("moorline.kdl")).unwrap();
    let v = moorline(&dir, &["validate"]);
    let report = text(&v);
    assert!(
        v.status.success()
            || codes(&report)
                == ["moorline::config::init_todo", "moorline::config::invalid"]
                    .map(str::to_owned)
                    .into(),
        "{report}\n{config}"
    );
    (config, text(&o))
}

/// Counts the lines of `config` that start with `prefix`.
fn count(config: &str, prefix: &str) -> usize {
    config.lines().filter(|l| l.starts_with(prefix)).count()
}

#[test]
fn init_on_microservices_demo() {
    let (config, report) = public("microservices-demo");
    // Java, .NET and the load generator are named, with the reason.
    for (dir, why) in [
        ("src/adservice", "Java/Kotlin (Gradle: build.gradle)"),
        ("src/cartservice", ".NET (cartservice.sln)"),
        ("src/loadgenerator", "a load generator"),
    ] {
        assert!(report.contains(dir) && report.contains(why), "{report}");
        assert!(config.contains(&format!("//   {dir}: {why}")), "{config}");
    }
    assert!(!config.contains("service \"loadgenerator\""), "{config}");
    // Equal steps share one runtime per language.
    assert_eq!(count(&config, "runtime "), 3, "{config}");
    assert_eq!(count(&config, "service "), 9, "{config}");
    // The frontend's `/_healthz` route; the gRPC services are said to be.
    assert!(config.contains("health \"/_healthz\""), "{config}");
    assert!(config.contains("it serves gRPC (grpc.NewServer in src/checkoutservice/main.go)"));
    // The source's port before EXPOSE; the hard-coded one is marked.
    assert!(
        config.contains("// the default of PORT in src/checkoutservice/main.go\n    port 5050")
    );
    assert!(
        config.contains("// hard-coded in src/shoppingassistantservice/shoppingassistantservice.py (it reads no PORT variable)\n    // check: the app ignores PORT"),
        "{config}"
    );
    // Start commands from the Dockerfiles' entry points.
    assert!(config.contains("exec \"/usr/bin/node\" \"{current}/server.js\""));
    assert!(config.contains("exec \"{current}/venv/bin/python\" \"{current}/email_server.py\""));
    insta::assert_snapshot!("init_microservices_demo_config", config);
    insta::assert_snapshot!("init_microservices_demo_report", report);
}

#[test]
fn init_on_example_voting_app() {
    let (config, report) = public("example-voting-app");
    assert!(
        report.contains("worker") && report.contains(".NET (Worker.csproj)"),
        "{report}"
    );
    assert!(
        report.contains("seed-data") && report.contains("one-off job"),
        "{report}"
    );
    // gunicorn from the Dockerfile's last stage, bound to the configured port.
    assert!(
        config
            .contains("exec \"{current}/venv/bin/gunicorn\" \"app:app\" \"-b\" \"0.0.0.0:{port}\""),
        "{config}"
    );
    assert!(
        config.contains("exec \"/usr/bin/node\" \"{current}/server.js\""),
        "{config}"
    );
    insta::assert_snapshot!("init_example_voting_app_config", config);
    insta::assert_snapshot!("init_example_voting_app_report", report);
}

#[test]
fn init_on_robot_shop() {
    let (config, report) = public("robot-shop");
    for (dir, why) in [
        ("shipping", "Java (Maven: pom.xml)"),
        ("ratings", "PHP (composer.json) in html"),
        ("dispatch", "Go without go.mod"),
        ("load-gen", "a load generator"),
        ("mongo", "a container of mongo"),
    ] {
        assert!(
            report.contains(dir) && report.contains(why),
            "{dir}: {report}"
        );
    }
    // The cart reads CART_SERVER_PORT, not PORT: its unit sets that.
    assert!(
        config.contains("env CART_SERVER_PORT=\"{port}\""),
        "{config}"
    );
    assert!(config.contains("health \"/health\""), "{config}");
    insta::assert_snapshot!("init_robot_shop_config", config);
    insta::assert_snapshot!("init_robot_shop_report", report);
}

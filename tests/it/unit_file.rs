//! Rendered unit files read by a real systemd: every hostile character a value may hold
//! (`%`, quotes, backslashes, `$`, `;`, spaces, unicode) reaches systemd, and the process it
//! starts, exactly as written in the configuration. This pins `moorline::unit`'s escaping (and
//! the reader its property test relies on) to systemd itself.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;

use moorline::config::{EnvValue, Environment, Service, UnitSpec};

use crate::support::{connect, eventually, wait};

const DESCRIPTION: &str = r#"100% "quoted" 'single' back\slash $HOME %h; for {service}"#;
const GREETING: &str = r#"say "hi" \ 'x' $HOME ${HOME} %h ; a=b  two  spaces é😀"#;
const TOKEN: &str = r#"s3cr%t"\"#;

/// The arguments after the script: each must reach the process unchanged.
const ARGS: &[&str] = &[
    "a b",
    "100%h",
    "$HOME",
    "${HOME}",
    "q\"uote",
    "back\\slash",
    ";",
    "",
    "it's",
    "-x",
    "é😀",
];

/// Prints its arguments, then two variables, one per line, into `$OUT`.
const SCRIPT: &str = r#"printf '%s\n' "$@" "$GREETING" "$API_TOKEN" > "$OUT""#;

fn service(root: &str, out: &str) -> (Environment, Service) {
    let env = Environment {
        name: "it".into(),
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
        rollout: moorline::config::Rollout::default(),
        drain: Vec::new(),
    };
    let mut exec: Vec<String> = vec!["/bin/sh".into(), "-c".into(), SCRIPT.into(), "sh".into()];
    exec.extend(ARGS.iter().map(|a| (*a).to_owned()));
    let value = |v: &str, secret| EnvValue {
        value: v.to_owned(),
        secret,
    };
    let spec = UnitSpec {
        description: Some(DESCRIPTION.into()),
        exec,
        env: [
            ("GREETING".to_owned(), value(GREETING, false)),
            ("API_TOKEN".to_owned(), value(TOKEN, true)),
            ("OUT".to_owned(), value(out, false)),
        ]
        .into(),
        env_files: Vec::new(),
        user: None,
        group: None,
        restart: "no".into(),
        working_directory: "{current}".into(),
        after: Vec::new(),
        wants: Vec::new(),
        wanted_by: "default.target".into(),
    };
    let svc = Service {
        name: "escaping".into(),
        runtime: "none".into(),
        port: Some(1),
        phase: "p".into(),
        phase_index: 0,
        depends_on: Vec::new(),
        path: "services/escaping".into(),
        watch: Vec::new(),
        health: "/health".into(),
        ready: "/health/ready".into(),
        readiness: moorline::config::Readiness::Http,
        metrics: "/health/metrics".into(),
        ready_timeout: wait(),
        unit: Some(spec),
        unit_name: "it-escaping.service".into(),
        role: None,
        start_after: Vec::new(),
        cutover: None,
        schedule: None,
        build_on_host: false,
    };
    (env, svc)
}

#[tokio::test]
async fn systemd_reads_back_every_escaped_value_exactly() {
    let Some((sandbox, systemd)) = connect().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The root lands in WorkingDirectory= and in arguments: make it hostile too.
    let root = dir.path().join("root %h $x 'q'");
    let out = dir.path().join("out put.txt");
    let (env, svc) = service(root.to_str().unwrap(), out.to_str().unwrap());
    std::fs::create_dir_all(root.join("escaping/current")).unwrap();

    let text = moorline::unit::render(&env, &svc).unwrap().unwrap();
    let path = sandbox.unit_dir().join(&svc.unit_name);
    let private = moorline::unit::carries_secrets(&text, &moorline::unit::secret_names(&svc));
    assert!(private, "API_TOKEN is inline: the file must be private");
    moorline::unit::install_file(&path, &text, private).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode, 0o600,
        "a unit with an inline secret is readable by its owner only"
    );
    systemd.daemon_reload().await.unwrap();

    let loaded = systemd.loaded_settings(&svc.unit_name).await.unwrap();
    assert_eq!(
        loaded.description,
        DESCRIPTION.replace("{service}", "escaping"),
        "{text}"
    );
    let mut environment = loaded.environment.clone();
    environment.sort();
    assert_eq!(
        environment,
        [
            format!("API_TOKEN={TOKEN}"),
            format!("GREETING={GREETING}"),
            format!("OUT={}", out.display()),
        ],
        "{text}"
    );
    // systemd keeps `$$` until it starts the command (systemd.service(5), "Command lines").
    let mut argv = vec![
        "/bin/sh".to_owned(),
        "-c".into(),
        SCRIPT.replace('$', "$$"),
        "sh".into(),
    ];
    argv.extend(ARGS.iter().map(|a| a.replace('$', "$$")));
    assert_eq!(loaded.exec_start, [("/bin/sh".to_owned(), argv)], "{text}");

    // What the process receives: every argument and variable exactly as configured.
    systemd.start(&svc.unit_name).await.unwrap();
    let mut want: Vec<String> = ARGS.iter().map(|a| (*a).to_owned()).collect();
    want.extend([GREETING.to_owned(), TOKEN.to_owned()]);
    eventually(|| {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .count()
            >= want.len()
    })
    .await;
    let got = std::fs::read_to_string(&out).unwrap_or_default();
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines, want, "{text}");

    std::fs::remove_file(&path).unwrap();
    systemd.daemon_reload().await.unwrap();
}

/// `apply` installs a unit that carries an inline secret readable by its owner only, and the
/// others as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_installs_units_with_inline_secrets_as_0600() {
    let Some(w) = crate::deploy::World::new("u1", 24600) else {
        return;
    };
    let sd = w.sandbox.connect().await.unwrap();
    let text = std::fs::read_to_string(&w.fx.config_path).unwrap();
    let config: String = text
        .lines()
        .map(|line| {
            if let Some((pad, rest)) = line
                .strip_prefix("service \"backend\"")
                .and_then(|l| l.split_once('{'))
            {
                format!("service \"backend\"{pad}{{ unit {{ env API_TOKEN=\"t0ken\"; }};{rest}\n")
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    assert!(config.contains("API_TOKEN"), "{config}");
    w.set_config(&config);

    crate::deploy::ok(&w.run(&["apply", "--env", "staging", "--yes"]));
    let mode = |service: &str| {
        let path = w.sandbox.unit_dir().join(w.unit(service));
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    };
    assert_eq!(mode("backend"), 0o600);
    assert_eq!(mode("gateway"), 0o644);
    w.stop_all(&sd).await;
}

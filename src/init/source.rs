//! What a service's source says about how it listens: the environment
//! variable it reads its port from (and that variable's default), a port
//! it hard-codes, the HTTP routes it serves for health, and whether it
//! serves gRPC. Text scanning, no parsing: every finding names its file.
//! Pure.

use super::Guess;

/// How the source chooses its port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Listen {
    /// It reads `var` (`PORT`, `CART_SERVER_PORT`), with this default.
    Env {
        var: String,
        default: Option<u16>,
        file: String,
    },
    /// It listens on a port written in the source and reads no variable.
    HardCoded { port: u16, file: String },
}

/// Prefixes of reads of one environment variable, the name following.
const ENV_READS: &[&str] = &[
    "process.env.",
    "process.env['",
    "process.env[\"",
    "Getenv(\"",
    "LookupEnv(\"",
    "getenv(\"",
    "getenv('",
    "environ.get(\"",
    "environ.get('",
    "environ[\"",
    "environ['",
];

/// Ports of other programs a service connects to, not its own.
const CLIENT_PREFIXES: &[&str] = &[
    "DB",
    "DATABASE",
    "REDIS",
    "MYSQL",
    "MONGO",
    "PG",
    "POSTGRES",
    "AMQP",
    "RABBIT",
    "SMTP",
    "MAIL",
    "CACHE",
    "MEMCACHE",
    "KAFKA",
    "ELASTIC",
    "OTEL",
    "JAEGER",
    "COLLECTOR",
    "PROXY",
];

/// Every environment variable the text reads, with where.
fn env_reads(text: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for prefix in ENV_READS {
        for (at, _) in text.match_indices(prefix) {
            let start = at + prefix.len();
            let name: String = text[start..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push((name, start));
            }
        }
    }
    // A quoted port variable's name handed to a helper
    // (`mustMapEnv(&port, "CHECKOUT_PORT")`, `must_map_env('X_PORT')`).
    for q in ['"', '\''] {
        for (at, _) in text.match_indices(q) {
            let start = at + 1;
            let name: String = text[start..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if name.ends_with("PORT")
                && text[start + name.len()..].starts_with(q)
                && !out.iter().any(|(_, a)| *a == start)
            {
                out.push((name, start));
            }
        }
    }
    out.sort_by_key(|(_, at)| *at);
    out
}

/// Whether `var` is the service's own port variable: `PORT`, or a name
/// ending in `PORT` that says server/listen/http or the service's name
/// and no client's.
fn own_port_var(var: &str, service: &str) -> bool {
    if var == "PORT" {
        return true;
    }
    if !var.ends_with("PORT") || CLIENT_PREFIXES.iter().any(|p| var.starts_with(p)) {
        return false;
    }
    let service = service.to_ascii_uppercase().replace(['-', '.'], "_");
    ["SERVER", "LISTEN", "HTTP", "APP_PORT", "SERVICE_PORT"]
        .iter()
        .any(|w| var.contains(w))
        || (!service.is_empty() && var.contains(&service))
}

/// The first number of 2–5 digits (1–65535) within `window` characters
/// after `at`, not part of a longer word.
fn number_after(text: &str, at: usize, window: usize) -> Option<u16> {
    let tail: Vec<char> = text.get(at..)?.chars().take(window).collect();
    let mut i = 0;
    while i < tail.len() {
        if tail[i].is_ascii_digit() && (i == 0 || !tail[i - 1].is_ascii_alphanumeric()) {
            let run: String = tail[i..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            let next = tail.get(i + run.len());
            if (2..=5).contains(&run.len())
                && !next.is_some_and(|c| c.is_ascii_alphanumeric() || *c == '.')
                && let Ok(p) = run.parse::<u16>()
                && p > 0
            {
                return Some(p);
            }
            i += run.len();
        } else {
            i += 1;
        }
    }
    None
}

/// Ports of servers a service connects to (Redis, PostgreSQL, MySQL,
/// MongoDB, AMQP, Kafka, memcached, Elasticsearch, ZooKeeper, SQL Server,
/// OTLP): a literal one is a client's, not the service's own.
const CLIENT_PORTS: &[u16] = &[
    6379, 5432, 3306, 27017, 5672, 9092, 11211, 9200, 2181, 1433, 4317, 4318,
];

/// Whether the line at `at` names a host to connect to (`host='redis'`,
/// `host: "db"`): a port beside it is that host's.
fn beside_client_host(text: &str, at: usize) -> bool {
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    let line = text[start..end].to_ascii_lowercase();
    let Some(h) = line.find("host") else {
        return false;
    };
    let value: String = line[h + 4..]
        .trim_start_matches(|c: char| c.is_whitespace() || matches!(c, '=' | ':'))
        .trim_start_matches(['"', '\''])
        .chars()
        .take_while(|c| !matches!(c, '"' | '\'' | ',' | ')' | ' '))
        .collect();
    !value.is_empty()
        && !matches!(
            value.as_str(),
            "0.0.0.0" | "::" | "127.0.0.1" | "localhost" | "[::]"
        )
        && value
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
}

/// A port the text listens on: `port = 8080`, `listenPort = "5050"`,
/// `.listen(3000`, `":8080"`, `"0.0.0.0:80"`, `'[::]:50051'`.
pub(super) fn literal_port(text: &str) -> Option<u16> {
    let mut best: Option<(usize, u16)> = None;
    let mut consider = |at: usize, p: Option<u16>| {
        if let Some(p) = p
            && !CLIENT_PORTS.contains(&p)
            && !beside_client_host(text, at)
            && best.is_none_or(|(b, _)| at < b)
        {
            best = Some((at, p));
        }
    };
    // An identifier ending in `port` assigned a number.
    let lower = text.to_ascii_lowercase();
    for (at, _) in lower.match_indices("port") {
        let end = at + 4;
        let ident_start = lower[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(0, |i| i + 1);
        let ident = &lower[ident_start..end];
        let written = &text[ident_start..end];
        // `port`, `listenPort`, `default_port`, `PORT`; not `report`.
        if !(ident == "port"
            || written.ends_with("Port")
            || written.ends_with("PORT")
            || ident.ends_with("_port"))
        {
            continue;
        }
        let next = lower[end..].chars().next();
        if next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            || CLIENT_PREFIXES
                .iter()
                .any(|p| ident.starts_with(&p.to_ascii_lowercase()))
        {
            continue;
        }
        let rest = lower[end..].trim_start();
        let Some(value) = rest
            .strip_prefix(":=")
            .or_else(|| rest.strip_prefix('='))
            .or_else(|| rest.strip_prefix(':'))
            .filter(|v| !v.starts_with('='))
        else {
            continue;
        };
        let value = value.trim_start();
        let value = value.trim_start_matches(['"', '\'', '`']);
        if value.starts_with(|c: char| c.is_ascii_digit()) {
            let off = text.len() - value.len();
            consider(at, number_after(text, off, 6));
        }
    }
    for pat in [".listen(", "\":", "':", "0.0.0.0:", "[::]:"] {
        for (at, _) in text.match_indices(pat) {
            let start = at + pat.len();
            if text[start..].starts_with(|c: char| c.is_ascii_digit()) {
                consider(at, number_after(text, start, 6));
            }
        }
    }
    best.map(|(_, p)| p).filter(|p| *p >= 80)
}

/// How the service's source files (path, text) choose their port.
pub(super) fn listen(sources: &[(&str, &str)], service: &str) -> Option<Listen> {
    let mut env: Option<Listen> = None;
    for (file, text) in sources {
        for (var, at) in env_reads(text) {
            if !own_port_var(&var, service) {
                continue;
            }
            let default = number_after(text, at + var.len(), 60).or_else(|| literal_port(text));
            let better = match &env {
                // `PORT` over another name; a default over none.
                Some(Listen::Env {
                    var: v, default: d, ..
                }) => {
                    (v != "PORT" && var == "PORT")
                        || (d.is_none() && default.is_some() && *v == var)
                }
                None | Some(Listen::HardCoded { .. }) => true,
            };
            if better {
                env = Some(Listen::Env {
                    var: var.clone(),
                    default,
                    file: (*file).to_owned(),
                });
            }
        }
    }
    if env.is_some() {
        return env;
    }
    sources.iter().find_map(|(file, text)| {
        Some(Listen::HardCoded {
            port: literal_port(text)?,
            file: (*file).to_owned(),
        })
    })
}

/// Paths that are health routes, most specific kinds first.
const LIVENESS: &[&str] = &[
    "/health",
    "/healthz",
    "/_healthz",
    "/_health",
    "/health/live",
    "/healthcheck",
    "/livez",
    "/alive",
    "/ping",
    "/status",
];
const READINESS: &[&str] = &["/health/ready", "/ready", "/readyz", "/_ready"];

/// What a line that defines a route contains (Express, Flask, FastAPI,
/// Go's net/http and routers, Gin, Echo, Fastify, Koa).
const ROUTE_MARKERS: &[&str] = &[
    ".get(",
    ".GET(",
    ".Get(",
    ".route(",
    ".api_route(",
    "HandleFunc(",
    ".Handle(",
    "@app.",
    "@router.",
    "@api.",
    ".add_url_rule(",
    ".all(",
    ".use(",
    "path(",
    "route(",
    "Path(",
];

/// What defines a router whose routes are mounted under a prefix
/// (FastAPI, Express, Flask blueprints, gorilla/mux, Gin, Echo).
const ROUTERS: &[&str] = &[
    "APIRouter(",
    "express.Router(",
    "Blueprint(",
    "Subrouter(",
    ".Group(",
];

/// The liveness and readiness routes the source defines; a path quoted
/// only outside a route definition is a guess to check.
pub(super) fn health(sources: &[(&str, &str)]) -> (Option<Guess<String>>, Option<Guess<String>>) {
    let find = |candidates: &[&str]| -> Option<Guess<String>> {
        let mut loose = None;
        for c in candidates {
            let quoted: Vec<String> = ['"', '\'', '`']
                .iter()
                .map(|q| format!("{q}{c}{q}"))
                .collect();
            for (file, text) in sources {
                // Most files name no candidate: skip them whole.
                if !quoted.iter().any(|q| text.contains(q.as_str())) {
                    continue;
                }
                for (n, line) in text.lines().enumerate() {
                    if !quoted.iter().any(|q| line.contains(q.as_str())) {
                        continue;
                    }
                    if ROUTE_MARKERS.iter().any(|m| line.contains(m)) {
                        let at = format!("a route in {file}:{}", n + 1);
                        // On a router, the path is under the prefix it is
                        // mounted at, which is elsewhere.
                        let joined = quoted.iter().any(|q| {
                            line.contains(&format!("+{q}")) || line.contains(&format!("+ {q}"))
                        });
                        return Some(if joined {
                            Guess::assumed(
                                (*c).to_owned(),
                                format!(
                                    "{at}, joined to a prefix there: this path when the prefix is empty"
                                ),
                            )
                        } else if ROUTERS.iter().any(|r| text.contains(r)) {
                            Guess::assumed(
                                (*c).to_owned(),
                                format!("{at}, on a router: check the prefix it is mounted under"),
                            )
                        } else {
                            Guess::found((*c).to_owned(), at)
                        });
                    }
                    if loose.is_none() {
                        loose = Some(Guess::assumed(
                            (*c).to_owned(),
                            format!(
                                "{file}:{} mentions it, not in a route definition seen",
                                n + 1
                            ),
                        ));
                    }
                }
            }
        }
        loose
    };
    (find(LIVENESS), find(READINESS))
}

/// Where the service starts a gRPC server, when it does.
pub(super) fn grpc_server(sources: &[(&str, &str)]) -> Option<String> {
    const SIGNS: &[&str] = &[
        "grpc.NewServer(",
        "new grpc.Server(",
        "grpc.server(",
        "grpc.aio.server(",
        "add_insecure_port(",
    ];
    sources.iter().find_map(|(file, text)| {
        SIGNS
            .iter()
            .find(|s| text.contains(*s))
            .map(|s| format!("{} in {file}", s.trim_end_matches('(')))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_the_source_listens_on() {
        for (src, svc, want) in [
            (
                "const port = process.env.CART_SERVER_PORT || '8080';\napp.listen(port);\n",
                "cart",
                Some(Listen::Env {
                    var: "CART_SERVER_PORT".into(),
                    default: Some(8080),
                    file: "f".into(),
                }),
            ),
            (
                "const (\n\tport = \"8080\"\n)\nif os.Getenv(\"PORT\") != \"\" { srvPort = os.Getenv(\"PORT\") }\n",
                "frontend",
                Some(Listen::Env {
                    var: "PORT".into(),
                    default: Some(8080),
                    file: "f".into(),
                }),
            ),
            (
                "port = int(os.getenv(\"SHOP_PAYMENT_PORT\", \"8080\"))\n",
                "payment",
                Some(Listen::Env {
                    var: "SHOP_PAYMENT_PORT".into(),
                    default: Some(8080),
                    file: "f".into(),
                }),
            ),
            (
                "app.run(host='0.0.0.0', port=8080)\n",
                "assistant",
                Some(Listen::HardCoded {
                    port: 8080,
                    file: "f".into(),
                }),
            ),
            ("db = os.environ.get('DB_PORT', '5432')\n", "x", None),
            (
                "const PORT = process.env.PORT;\n",
                "x",
                Some(Listen::Env {
                    var: "PORT".into(),
                    default: None,
                    file: "f".into(),
                }),
            ),
            (
                "http.ListenAndServe(\":9090\", nil)\n",
                "x",
                Some(Listen::HardCoded {
                    port: 9090,
                    file: "f".into(),
                }),
            ),
            (
                "fetch('http://localhost:3000/x'); version = '1.2.3'\n",
                "x",
                None,
            ),
            (
                "mustMapEnv(&port, \"CHECKOUT_PORT\")\nmustMapEnv(&a, \"CART_ADDR\")\n",
                "checkout",
                Some(Listen::Env {
                    var: "CHECKOUT_PORT".into(),
                    default: None,
                    file: "f".into(),
                }),
            ),
        ] {
            assert_eq!(listen(&[("f", src)], svc), want, "{src}");
        }
    }

    #[test]
    fn ports_of_clients_are_not_the_services() {
        for (src, want) in [
            ("cache = Redis(host='redis', port=6379)\n", None),
            ("r = Client(host=\"queue\", port=7000)\n", None),
            ("client = redis.createClient({ port: 6379 })\n", None),
            ("app.run(host='0.0.0.0', port=8000)\n", Some(8000)),
        ] {
            assert_eq!(literal_port(src), want, "{src}");
        }
    }

    #[test]
    fn health_routes_in_route_definitions() {
        let (h, r) = health(&[(
            "main.go",
            "x := \"/health\" // not a route\nr.HandleFunc(baseUrl+\"/_healthz\", ok)\n",
        )]);
        let h = h.unwrap();
        // `/health` is mentioned first in the list but not in a route: the
        // route `/_healthz` is found, joined to a prefix (to check).
        assert_eq!(h.value, "/_healthz");
        assert!(h.check && h.from.contains("joined to a prefix"), "{h:?}");
        assert_eq!(r, None);
        let (h, _) = health(&[("a.py", "PATH = '/health'\n")]);
        assert!(h.unwrap().check);
        let (h, _) = health(&[(
            "utils.py",
            "router = APIRouter(prefix=\"/utils\")\n@router.get(\"/healthz\")\n",
        )]);
        let h = h.unwrap();
        assert!(h.check && h.from.contains("on a router"), "{h:?}");
        let (h, r) = health(&[("a.py", "@app.get(\"/ready\")\n@app.route('/health')\n")]);
        assert_eq!(
            (h.unwrap().value, r.unwrap().value),
            ("/health".into(), "/ready".into())
        );
    }
}

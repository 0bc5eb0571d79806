//! `portcullis check-config` and the command line, run as the real binary.

use std::path::PathBuf;
use std::process::{Command, Output};

const JWT_SECRET: &str = "0123456789abcdef0123456789abcdef-jwt";

/// Every variable a fixture may name, so the tests never depend on the caller's shell.
const FIXTURE_ENV: [&str; 8] = [
    "PORTCULLIS_TEST_JWT_SECRET",
    "PORTCULLIS_TEST_JWT_PUBLIC_KEY",
    "PORTCULLIS_TEST_REDIS_PASSWORD",
    "PORTCULLIS_TEST_PG_PASSWORD",
    "PORTCULLIS_TEST_CSRF_SECRET",
    "PORTCULLIS_TEST_CSRF_PREVIOUS",
    "PORTCULLIS_TEST_MISSING_SECRET",
    "PORTCULLIS_TEST_SHORT_SECRET",
];

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn portcullis() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    for var in FIXTURE_ENV {
        cmd.env_remove(var);
    }
    cmd
}

/// The environment `full.toml` needs.
fn with_full_env(mut cmd: Command) -> Command {
    cmd.env("PORTCULLIS_TEST_JWT_SECRET", JWT_SECRET)
        .env(
            "PORTCULLIS_TEST_JWT_PUBLIC_KEY",
            "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n",
        )
        .env("PORTCULLIS_TEST_REDIS_PASSWORD", "redis-password")
        .env("PORTCULLIS_TEST_PG_PASSWORD", "postgres-password")
        .env(
            "PORTCULLIS_TEST_CSRF_SECRET",
            "0123456789abcdef0123456789abcdef-csrf",
        )
        .env(
            "PORTCULLIS_TEST_CSRF_PREVIOUS",
            "0123456789abcdef0123456789abcdef-old",
        );
    cmd
}

fn check(mut cmd: Command, name: &str) -> Output {
    cmd.arg("check-config")
        .arg("--config")
        .arg(fixture(name))
        .output()
        .expect("the portcullis binary runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts exit 2 and a stderr line naming the file, the exact key and a reason fragment.
fn assert_refused(name: &str, key: &str, reason: &str) -> Output {
    assert_refused_with(portcullis(), name, key, reason)
}

fn assert_refused_with(cmd: Command, name: &str, key: &str, reason: &str) -> Output {
    let out = check(cmd, name);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{name}: stderr was:\n{err}");
    let prefix = format!("{}: {key}: ", fixture(name).display());
    assert!(
        err.lines()
            .any(|l| l.starts_with(&prefix) && l.contains(reason)),
        "{name}: no line starting {prefix:?} and containing {reason:?} in:\n{err}"
    );
    out
}

#[test]
fn full_config_is_ok() {
    let out = check(with_full_env(portcullis()), "full.toml");
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", stderr(&out));
    let expected = format!("{}: ok (6 routes)", fixture("full.toml").display());
    assert_eq!(stdout(&out).trim(), expected);
    // No secret ever reaches the output.
    assert!(!stderr(&out).contains(JWT_SECRET));
    assert!(!stdout(&out).contains(JWT_SECRET));
}

/// The one kind of warning: origins `[cors]` allows that the CSRF check does not trust
/// (their writes are still refused), named as `FILE: KEY: warning: …`; the file is still ok.
#[test]
fn cors_origins_the_csrf_check_refuses_are_warned_about() {
    let out = check(with_full_env(portcullis()), "full.toml");
    assert!(out.status.success(), "{}", stderr(&out));
    let file = fixture("full.toml").display().to_string();
    let err = stderr(&out);
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 2, "{err}");
    for (i, origin) in ["https://app.example.com", "http://localhost:3000"]
        .iter()
        .enumerate()
    {
        assert!(
            warnings[i].starts_with(&format!(
                "{file}: cors.allow_origins[{i}]: warning: {origin} "
            )),
            "{}",
            warnings[i]
        );
        assert!(
            warnings[i].contains("csrf.trusted_origins"),
            "{}",
            warnings[i]
        );
    }
}

#[test]
fn unknown_top_level_key_is_refused() {
    assert_refused(
        "unknown_key_top.toml",
        "colour",
        "unknown key; expected one of server, storage",
    );
}

#[test]
fn unknown_server_key_is_refused() {
    assert_refused(
        "unknown_key_server.toml",
        "server.listen_addr",
        "unknown key; expected one of listen,",
    );
}

#[test]
fn unknown_route_key_is_refused() {
    assert_refused(
        "unknown_key_route.toml",
        "route[0].method",
        "unknown key; expected one of path, preset, methods",
    );
}

#[test]
fn wrong_type_is_refused() {
    assert_refused(
        "wrong_type.toml",
        "server.max_connections",
        "expected an integer, found a string",
    );
}

#[test]
fn bad_glob_is_refused() {
    let out = assert_refused(
        "bad_glob.toml",
        "route[1].path",
        "'**' must be a whole segment",
    );
    assert!(!stderr(&out).contains("same as"));
}

#[test]
fn duplicate_route_is_refused() {
    assert_refused(
        "duplicate_route.toml",
        "route[1].path",
        "duplicate route pattern (same as route[0].path)",
    );
}

#[test]
fn bad_cidr_is_refused() {
    assert_refused(
        "bad_cidr.toml",
        "server.trusted_proxies[1]",
        "prefix longer than 32",
    );
}

#[test]
fn bad_csp_is_refused() {
    assert_refused("bad_csp.toml", "headers.csp", "must be quoted: 'self'");
}

#[test]
fn bad_cors_origin_is_refused() {
    assert_refused(
        "bad_cors_origin.toml",
        "cors.allow_origins[0]",
        "is not an origin",
    );
}

#[test]
fn bad_method_is_refused() {
    assert_refused(
        "bad_method.toml",
        "route[0].methods",
        "\"FETCH\" is not a standard HTTP method",
    );
}

#[test]
fn bad_duration_is_refused() {
    assert_refused(
        "bad_duration.toml",
        "server.request_timeout",
        "is not a duration",
    );
}

#[test]
fn bad_size_is_refused() {
    assert_refused("bad_size.toml", "route[0].max_body", "is not a size");
}

#[test]
fn unknown_preset_is_refused() {
    assert_refused(
        "unknown_preset.toml",
        "route[0].preset",
        "unknown preset \"admin\"",
    );
}

#[test]
fn unset_secret_env_is_refused() {
    assert_refused(
        "missing_env.toml",
        "auth.jwt.secret_env",
        "environment variable PORTCULLIS_TEST_MISSING_SECRET is not set",
    );
}

#[test]
fn empty_secret_env_counts_as_unset() {
    let mut cmd = portcullis();
    cmd.env("PORTCULLIS_TEST_MISSING_SECRET", "");
    assert_refused_with(cmd, "missing_env.toml", "auth.jwt.secret_env", "is not set");
}

#[test]
fn set_secret_env_is_accepted() {
    let mut cmd = portcullis();
    cmd.env("PORTCULLIS_TEST_MISSING_SECRET", JWT_SECRET);
    let out = check(cmd, "missing_env.toml");
    assert_eq!(out.status.code(), Some(0), "stderr:\n{}", stderr(&out));
    assert!(stdout(&out).contains(": ok (0 routes)"), "{}", stdout(&out));
}

#[test]
fn short_hmac_secret_is_refused() {
    let mut cmd = portcullis();
    cmd.env("PORTCULLIS_TEST_SHORT_SECRET", "too-short");
    let out = assert_refused_with(
        cmd,
        "short_secret.toml",
        "auth.jwt.secret_env",
        "is 9 bytes; use at least 32",
    );
    assert!(!stderr(&out).contains("too-short"), "the secret leaked");
}

#[test]
fn jwt_without_key_source_is_refused() {
    assert_refused("jwt_no_key_source.toml", "auth.jwt", "no key source");
}

#[test]
fn jwt_alg_none_is_refused_in_any_case() {
    let mut cmd = portcullis();
    cmd.env("PORTCULLIS_TEST_JWT_SECRET", JWT_SECRET);
    assert_refused_with(
        cmd,
        "jwt_alg_none.toml",
        "auth.jwt.algorithms[1]",
        "never accepted",
    );
}

#[test]
fn roles_without_authenticator_are_refused() {
    assert_refused(
        "roles_without_authenticator.toml",
        "route[0].roles",
        "routes requiring auth need an authenticator",
    );
}

#[test]
fn missing_tls_files_are_refused() {
    assert_refused("tls_missing_file.toml", "server.tls.cert", "does not exist");
    assert_refused("tls_missing_file.toml", "server.tls.key", "does not exist");
}

#[test]
fn tls_key_without_cert_is_refused() {
    assert_refused(
        "tls_key_without_cert.toml",
        "server.tls.cert",
        "required together with key",
    );
}

#[test]
fn bad_api_key_hash_is_refused() {
    assert_refused(
        "bad_api_key_hash.toml",
        "auth.api_keys[0].hash",
        "\"sha256:\" followed by 64 hex digits",
    );
}

#[test]
fn duplicate_api_key_id_is_refused() {
    assert_refused(
        "duplicate_api_key_id.toml",
        "auth.api_keys[1].id",
        "duplicate id \"ci\" (also auth.api_keys[0])",
    );
}

#[test]
fn bad_rate_limit_is_refused() {
    assert_refused(
        "bad_rate_limit.toml",
        "route[0].rate_limit",
        "is not a rate limit; use REQUESTS/WINDOW",
    );
}

#[test]
fn unknown_storage_scheme_is_refused() {
    assert_refused(
        "unknown_storage_scheme.toml",
        "storage.rate_limit",
        "unknown storage scheme",
    );
}

#[test]
fn csrf_token_without_secret_is_refused() {
    assert_refused(
        "csrf_token_without_secret.toml",
        "route[0].csrf",
        "needs [csrf] secret_env",
    );
}

#[test]
fn syntax_error_gives_line_and_column() {
    let out = check(portcullis(), "syntax_error.toml");
    assert_eq!(out.status.code(), Some(2));
    let prefix = format!(
        "{}: line 4, column ",
        fixture("syntax_error.toml").display()
    );
    assert!(stderr(&out).starts_with(&prefix), "{}", stderr(&out));
}

#[test]
fn every_error_of_a_file_is_printed() {
    let name = "several_errors.toml";
    for (key, reason) in [
        ("server.upstream", "cannot have a path"),
        ("server.trusted_proxies[1]", "not an IP address"),
        ("server.request_timeout", "not a duration"),
        ("storage.audit", "unknown storage scheme"),
        ("headers.csp", "must be quoted: 'none'"),
        ("route[0].preset", "unknown preset"),
        ("route[1].path", "must start with '/'"),
        ("route[1].rate_limit", "not a rate limit"),
        ("route[1].max_body", "not a size"),
    ] {
        assert_refused(name, key, reason);
    }
    let out = check(portcullis(), name);
    assert_eq!(stderr(&out).lines().count(), 9, "{}", stderr(&out));
}

#[test]
fn unreadable_file_is_an_error() {
    let out = check(portcullis(), "no-such-file.toml");
    assert_eq!(out.status.code(), Some(2));
    let prefix = format!(
        "{}: cannot read the file",
        fixture("no-such-file.toml").display()
    );
    assert!(stderr(&out).starts_with(&prefix), "{}", stderr(&out));
}

#[test]
fn help_lists_the_commands() {
    let out = portcullis().arg("--help").output().expect("runs");
    assert!(out.status.success());
    let help = stdout(&out);
    for command in ["serve", "demo", "check-config", "token", "apikey", "audit"] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(command) && l.len() > command.len() + 4),
            "{command} is missing or has no description in:\n{help}"
        );
    }
}

/// A secret put where a variable name or a store URL belongs is refused without being
/// echoed: the message names the key and the mistake, never the secret (CI logs, journald).
#[test]
fn secrets_in_the_wrong_place_are_refused_without_being_echoed() {
    let dir = std::env::temp_dir().join(format!("pc-check-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cases = [
        (
            "storage.rate_limit",
            "[storage]\nrate_limit = \"redis://:Hunter2Secret@127.0.0.1:6379\"\n",
            "Hunter2Secret",
        ),
        (
            "storage.audit",
            "[storage]\naudit = \"postgres://gw:Hunter2Secret@db/audit\"\n",
            "Hunter2Secret",
        ),
        (
            "storage.audit",
            "[storage]\naudit = \"postgres://gw@db/audit?sslmode=require&password=Hunter2Secret\"\n",
            "Hunter2Secret",
        ),
        (
            "storage.audit",
            "[storage]\naudit = \"mysql://gw:Hunter2Secret@db/audit\"\n",
            "Hunter2Secret",
        ),
        (
            "auth.jwt.secret_env",
            "[auth.jwt]\nsecret_env = \"4q6IUPKo+Hunter2Secret/45rV=\"\n",
            "Hunter2Secret",
        ),
        (
            "auth.jwt.secret_env",
            "[auth.jwt]\nsecret_env = \"q6IUPKoHunter2Secret45rVx\"\n",
            "Hunter2Secret",
        ),
    ];
    for (i, (key, table, secret)) in cases.into_iter().enumerate() {
        let text = format!("[server]\nupstream = \"http://127.0.0.1:3000\"\n{table}");
        let out = check_text(&dir, &format!("c{i}"), &text);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{table}: {err}");
        assert!(err.contains(&format!(": {key}: ")), "{table}: {err}");
        assert!(
            !err.contains(secret),
            "{table}: the secret is echoed: {err}"
        );
        assert!(!stdout(&out).contains(secret), "{table}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A fresh folder under the temp dir for configs written by a test (removed by the test).
fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pc-check-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Writes `text` as `dir/NAME.toml`, checks it, and asserts exit 2 with a line
/// `FILE: KEY: …REASON…`.
fn assert_text_refused(dir: &std::path::Path, name: &str, text: &str, key: &str, reason: &str) {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, text).expect("write the config");
    let out = portcullis()
        .arg("check-config")
        .arg("--config")
        .arg(&file)
        .output()
        .expect("the portcullis binary runs");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{name}: stderr was:\n{err}");
    let prefix = format!("{}: {key}: ", file.display());
    assert!(
        err.lines()
            .any(|l| l.starts_with(&prefix) && l.contains(reason)),
        "{name}: no line starting {prefix:?} and containing {reason:?} in:\n{err}"
    );
}

/// `serve` binds the admin listener after the traffic one: on the same port (or the
/// wildcard's) it could never start, so `check-config` refuses it.
#[test]
fn admin_listen_on_the_listen_port_is_refused() {
    let dir = scratch("admin-listen");
    for (i, (listen, admin)) in [
        ("127.0.0.1:8080", "127.0.0.1:8080"),
        ("0.0.0.0:8080", "127.0.0.1:8080"),
        ("[::1]:8443", "[::1]:8443"),
    ]
    .into_iter()
    .enumerate()
    {
        assert_text_refused(
            &dir,
            &format!("admin{i}"),
            &format!(
                "[server]\nupstream = \"http://127.0.0.1:3000\"\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\n"
            ),
            "server.admin_listen",
            "takes the port of server.listen",
        );
    }
    // Another port is fine.
    let out = check_text(
        &dir,
        "ok",
        "[server]\nupstream = \"http://127.0.0.1:3000\"\nlisten = \"127.0.0.1:8080\"\nadmin_listen = \"127.0.0.1:8081\"\n[storage]\naudit = \"stdout\"\n",
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let _ = std::fs::remove_dir_all(dir);
}

/// An upstream port of 0 or over 65535 used to parse (the URL type reads the port lazily)
/// and a `#fragment` was silently dropped.
#[test]
fn upstream_with_a_bad_port_or_a_fragment_is_refused() {
    let dir = scratch("upstream");
    for (i, (url, reason)) in [
        ("http://127.0.0.1:99999", "port 99999 is not a port number"),
        ("http://127.0.0.1:0", "port 0 is not a port number"),
        ("http://app.internal:", "port  is not a port number"),
        ("http://[::1]:70000", "port 70000 is not a port number"),
        ("http://127.0.0.1:3000#top", "cannot have a #fragment"),
        ("http://127.0.0.1:3000/#top", "cannot have a #fragment"),
    ]
    .into_iter()
    .enumerate()
    {
        assert_text_refused(
            &dir,
            &format!("up{i}"),
            &format!("[server]\nupstream = \"{url}\"\n"),
            "server.upstream",
            reason,
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Checks `dir/NAME.toml` holding `text` and returns the output.
fn check_text(dir: &std::path::Path, name: &str, text: &str) -> Output {
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, text).expect("write the config");
    portcullis()
        .arg("check-config")
        .arg("--config")
        .arg(&file)
        .output()
        .expect("the portcullis binary runs")
}

/// `serve` loads the certificate and key at start and refused these, naming neither the
/// config file nor the key; `check-config` said ok.
#[test]
fn tls_files_that_are_not_a_pem_certificate_and_key_are_refused() {
    let dir = scratch("tls-pem");
    let cert = fixture("tls/cert.pem");
    let key = fixture("tls/key.pem");
    std::fs::write(dir.join("junk.pem"), "not a PEM file\n").expect("write");
    let junk = dir.join("junk.pem");
    let tls = |cert: &std::path::Path, key: &std::path::Path| {
        format!(
            "[server]\nupstream = \"http://127.0.0.1:3000\"\n[server.tls]\ncert = {:?}\nkey = {:?}\n[storage]\naudit = \"stdout\"\n",
            cert.display().to_string(),
            key.display().to_string()
        )
    };
    assert_text_refused(
        &dir,
        "bad-cert",
        &tls(&junk, &key),
        "server.tls.cert",
        "junk.pem: no certificate found",
    );
    assert_text_refused(
        &dir,
        "bad-key",
        &tls(&cert, &junk),
        "server.tls.key",
        "junk.pem: no private key found",
    );
    // The certificate where the key belongs: a PEM file, but not a key.
    assert_text_refused(
        &dir,
        "cert-as-key",
        &tls(&cert, &cert),
        "server.tls.cert",
        "no private key found",
    );
    let out = check_text(&dir, "good", &tls(&cert, &key));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // `serve` refuses the same file the same way: exit 2, `FILE: KEY: REASON`.
    let config = dir.join("bad-cert.toml");
    let out = portcullis()
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .output()
        .expect("the portcullis binary runs");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let prefix = format!("{}: server.tls.cert: ", config.display());
    assert!(
        err.lines()
            .any(|l| l.starts_with(&prefix) && l.contains("no certificate found")),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// `serve` opens a SQLite or JSONL audit store (creating its folder) and its spool at start;
/// a path under a regular file fails that for any user, root included.
#[test]
fn an_audit_store_that_cannot_be_created_is_refused() {
    let dir = scratch("audit-store");
    let file = dir.join("afile");
    std::fs::write(&file, "a regular file, not a folder\n").expect("write");
    let base = "[server]\nupstream = \"http://127.0.0.1:3000\"\n";
    for (name, store) in [("sqlite", "sqlite://"), ("jsonl", "jsonl://")] {
        let target = file.join("x").join("audit.db");
        assert_text_refused(
            &dir,
            name,
            &format!("{base}[storage]\naudit = \"{store}{}\"\n", target.display()),
            "storage.audit",
            "afile",
        );
    }
    assert_text_refused(
        &dir,
        "spool",
        &format!(
            "{base}[storage]\naudit = \"stdout\"\n[audit]\nspool_dir = {:?}\n",
            file.join("spool").display().to_string()
        ),
        "storage.audit",
        "spool",
    );
    assert!(file.is_file(), "the file is left as it was");
    let _ = std::fs::remove_dir_all(dir);
}

/// The check opens the audit store and spool as `serve` would, then removes what only the
/// check created: a passing check leaves no database, journal or folder behind.
#[test]
fn a_passing_audit_check_leaves_nothing_behind() {
    let dir = scratch("audit-clean");
    for store in ["sqlite", "jsonl"] {
        let text = format!(
            "[server]\nupstream = \"http://127.0.0.1:3000\"\n[storage]\naudit = \"{store}://new/deeper/audit.{store}\"\n"
        );
        let out = check_text(&dir, store, &text);
        assert_eq!(out.status.code(), Some(0), "{store}: {}", stderr(&out));
        let left: Vec<_> = std::fs::read_dir(&dir)
            .expect("read the dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".toml"))
            .collect();
        assert!(left.is_empty(), "{store}: left behind: {left:?}");
    }
    // An existing store is opened, and kept.
    std::fs::write(dir.join("kept.jsonl"), "").expect("write");
    let text = "[server]\nupstream = \"http://127.0.0.1:3000\"\n[storage]\naudit = \"jsonl://kept.jsonl\"\n";
    let out = check_text(&dir, "kept", text);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(dir.join("kept.jsonl").is_file());
    let _ = std::fs::remove_dir_all(dir);
}

/// Values that parse but cannot do what they say are refused, each on its key: an HSTS value
/// browsers ignore, TRACE or CONNECT routed, a burst the algorithm ignores, a leeway that keeps
/// expired tokens alive, a route path no request can have.
#[test]
fn values_that_cannot_work_are_refused() {
    let dir = std::env::temp_dir().join(format!("pc-check-values-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let head = "[server]\nupstream = \"http://127.0.0.1:3000\"\n";
    let cases = [
        (
            "headers.hsts",
            "[headers]\nhsts = \"max-age=abc\"\n",
            "max-age",
        ),
        (
            "headers.hsts",
            "[headers]\nhsts = \"includeSubDomains\"\n",
            "max-age",
        ),
        (
            "headers.hsts",
            "[headers]\nhsts = \"max-age=60; maxage=5\"\n",
            "unknown directive",
        ),
        (
            "route[0].methods",
            "[[route]]\npath = \"/x\"\nmethods = [\"GET\", \"TRACE\"]\n",
            "TRACE",
        ),
        (
            "route[0].methods",
            "[[route]]\npath = \"/x\"\nmethods = [\"CONNECT\"]\n",
            "CONNECT",
        ),
        (
            "route[0].rate_limit.burst",
            "[[route]]\npath = \"/x\"\nrate_limit = { requests = 5, window = \"1m\", algorithm = \"sliding_window\", burst = 3 }\n",
            "token_bucket",
        ),
        (
            "auth.jwt.leeway",
            "[auth.jwt]\njwks_url = \"http://127.0.0.1:1/jwks\"\nleeway = \"1h\"\n",
            "leeway",
        ),
        (
            "route[0].path",
            "[[route]]\npath = \"/api/ x\"\n",
            "never match",
        ),
        (
            "route[0].path",
            "[[route]]\npath = \"/api/x#frag\"\n",
            "never match",
        ),
    ];
    for (i, (key, table, reason)) in cases.into_iter().enumerate() {
        let out = check_text(&dir, &format!("v{i}"), &format!("{head}{table}"));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{table}: {err}");
        assert!(
            err.lines()
                .any(|l| l.contains(&format!(": {key}: ")) && l.contains(reason)),
            "{table}: no line on {key} with {reason:?}: {err}"
        );
    }
    // A good HSTS value, and a token bucket's burst, still pass.
    let out = check_text(
        &dir,
        "ok",
        &format!(
            "{head}[headers]\nhsts = \"max-age=63072000; includeSubDomains; preload\"\n\
             [[route]]\npath = \"/x\"\n\
             rate_limit = {{ requests = 5, window = \"1m\", algorithm = \"token_bucket\", burst = 3 }}\n\
             [[route]]\npath = \"/y\"\n\
             rate_limit = {{ requests = 5, window = \"1m\", burst = 3 }}\n"
        ),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let _ = std::fs::remove_dir_all(dir);
}

/// A rate limit keyed on a header that carries a client address (`X-Real-IP`,
/// `CF-Connecting-IP`, …) is as good as what the client writes there: refused, pointing to
/// `key = "ip"` and `trusted_proxies`. A limit keyed only on another header the client sends
/// is warned about (a new value is a new quota), unless an address-keyed limit backs it.
#[test]
fn rate_limits_keyed_on_headers_the_client_writes() {
    let dir = scratch("rate-key-header");
    let route = |limits: &str| {
        format!(
            "[server]\nupstream = \"http://127.0.0.1:3000\"\n[storage]\naudit = \"stdout\"\n\
             [[route]]\npath = \"/api/**\"\nrate_limit = [{limits}]\n"
        )
    };
    for header in [
        "X-Real-IP",
        "cf-connecting-ip",
        "X-Forwarded-For",
        "True-Client-IP",
    ] {
        let limit = format!("{{ requests = 10, window = \"1m\", key = \"header:{header}\" }}");
        let out = check_text(&dir, "address", &route(&limit));
        assert_eq!(out.status.code(), Some(2), "{header}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("route[0].rate_limit"), "{err}");
        assert!(err.contains("carries a client address"), "{err}");
        assert!(err.contains("trusted_proxies"), "{err}");
    }

    let tenant = "{ requests = 10, window = \"1m\", key = \"header:x-tenant\" }";
    let out = check_text(&dir, "tenant", &route(tenant));
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let warning = err
        .lines()
        .find(|l| l.contains("route[0].rate_limit: warning:"))
        .unwrap_or_else(|| panic!("no warning in {err}"));
    assert!(warning.contains("x-tenant"), "{warning}");
    assert!(warning.contains("new quota"), "{warning}");

    // Backed by a limit per client address: no warning.
    let both = format!("{tenant}, \"600/1m\"");
    let out = check_text(&dir, "both", &route(&both));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
}

//! `portcullis audit query`, `tail` and `summary`, run as the real binary against real
//! SQLite and JSON-lines stores written by the library.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use portcullis::audit::jsonl::JsonlStore;
use portcullis::audit::sqlite::SqliteAuditStore;
use portcullis::audit::{AuditAction, AuditEvent, AuditStore, Outcome, now_ms, uuid_v7};

/// A folder removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("{tag}-{}", &uuid_v7()[24..]));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn portcullis(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn ev(
    request_id: &str,
    action: AuditAction,
    user: Option<&str>,
    ip: &str,
    route: &str,
    ts_ms: u64,
) -> AuditEvent {
    AuditEvent {
        id: uuid_v7(),
        ts_ms,
        action,
        outcome: Outcome::Denied,
        principal: user.map(String::from),
        client_ip: Some(ip.into()),
        method: "POST".into(),
        route: route.into(),
        path: route.replace("**", "x"),
        status: 403,
        request_id: request_id.into(),
        metadata: serde_json::json!({"code": "forbidden", "reason": "a, \"quoted\" reason"}),
    }
}

fn sample() -> Vec<AuditEvent> {
    let now = now_ms();
    let mut v = Vec::new();
    for i in 0..3 {
        v.push(ev(
            &format!("bob-{i}"),
            AuditAction::Forbidden,
            Some("bob"),
            "10.0.0.2",
            "/api/admin/**",
            now - 1000 + i,
        ));
    }
    for i in 0..2 {
        v.push(ev(
            &format!("alice-{i}"),
            AuditAction::RateLimitExceeded,
            Some("alice"),
            "10.0.0.9",
            "/api/notes/**",
            now - 500 + i,
        ));
    }
    v.push(ev(
        "old",
        AuditAction::Forbidden,
        Some("bob"),
        "10.0.0.2",
        "/api/admin/**",
        now - 2 * 86_400_000,
    ));
    v
}

fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

fn request_ids(out: &str) -> Vec<String> {
    json_lines(out)
        .iter()
        .map(|v| v["request_id"].as_str().unwrap().to_string())
        .collect()
}

async fn sqlite_with_sample(dir: &Path) -> String {
    let path = dir.join("audit.db");
    let store = SqliteAuditStore::open(&path).unwrap();
    store.write(&sample()).await.unwrap();
    format!("sqlite://{}", path.display())
}

#[tokio::test]
async fn query_filters_a_sqlite_store_and_prints_json_csv_and_table() {
    let dir = TempDir::new("audit-cli-query");
    let url = sqlite_with_sample(&dir.0).await;

    let out = stdout(&portcullis(&[
        "audit",
        "query",
        "--store",
        &url,
        "--action",
        "forbidden",
        "--format",
        "json",
    ]));
    assert_eq!(request_ids(&out), ["old", "bob-0", "bob-1", "bob-2"]);
    let first = &json_lines(&out)[1];
    assert_eq!(first["action"], "forbidden");
    assert_eq!(first["principal"], "bob");
    assert!(first["ts"].as_str().unwrap().ends_with('Z'));

    let out = stdout(&portcullis(&[
        "audit", "query", "--store", &url, "--since", "1h", "--user", "bob", "--format", "json",
    ]));
    assert_eq!(request_ids(&out), ["bob-0", "bob-1", "bob-2"]);
    let out = stdout(&portcullis(&[
        "audit", "query", "--store", &url, "--ip", "10.0.0.9", "--format", "json",
    ]));
    assert_eq!(request_ids(&out), ["alice-0", "alice-1"]);
    let out = stdout(&portcullis(&[
        "audit",
        "query",
        "--store",
        &url,
        "--route",
        "/api/admin/**",
        "--limit",
        "2",
        "--format",
        "json",
    ]));
    assert_eq!(request_ids(&out), ["bob-1", "bob-2"]);
    let out = stdout(&portcullis(&[
        "audit", "query", "--store", &url, "--until", "1d", "--format", "json",
    ]));
    assert_eq!(request_ids(&out), ["old"]);
    let out = stdout(&portcullis(&[
        "audit",
        "query",
        "--store",
        &url,
        "--since",
        "2000-01-01T00:00:00Z",
        "--format",
        "json",
    ]));
    assert_eq!(request_ids(&out).len(), 6);

    let csv = stdout(&portcullis(&[
        "audit", "query", "--store", &url, "--user", "alice", "--format", "csv",
    ]));
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(
        lines[0].starts_with("id,ts,action,outcome,status,"),
        "{csv}"
    );
    assert!(lines[1].contains(",rate_limit_exceeded,denied,403,POST,/api/notes/**,"));
    assert!(
        lines[1].contains(r#""{""code"":""forbidden"",""reason"":""a, \""quoted\"" reason""}""#),
        "{csv}"
    );

    let table = stdout(&portcullis(&[
        "audit",
        "query",
        "--store",
        &url,
        "--action",
        "rate_limit_exceeded",
    ]));
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("TS") && lines[0].contains("ACTION"),
        "{table}"
    );
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[2].contains("alice-1"));
}

#[tokio::test]
async fn query_reads_the_store_the_config_names() {
    let dir = TempDir::new("audit-cli-config");
    sqlite_with_sample(&dir.0).await;
    let config = dir.0.join("portcullis.toml");
    // A relative path is relative to the config file.
    std::fs::write(&config, "[storage]\naudit = \"sqlite://audit.db\"\n").unwrap();
    let out = stdout(&portcullis(&[
        "audit",
        "query",
        "--config",
        config.to_str().unwrap(),
        "--user",
        "alice",
        "--format",
        "json",
    ]));
    assert_eq!(request_ids(&out), ["alice-0", "alice-1"]);

    std::fs::write(&config, "[storage]\naudit = \"stdout\"\n").unwrap();
    let o = portcullis(&["audit", "query", "--config", config.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("stdout"));

    // The config's postgres_ca_file is the one the query trusts: this one is read, and
    // refused, before any connection is tried.
    std::fs::write(dir.0.join("ca.pem"), "not a certificate\n").unwrap();
    std::fs::write(
        &config,
        "[storage]\naudit = \"postgres://audit@127.0.0.1:1/audit?sslmode=require\"\n\
         postgres_ca_file = \"ca.pem\"\n",
    )
    .unwrap();
    let o = portcullis(&["audit", "query", "--config", config.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no usable CA certificate"), "{err}");
}

/// `audit query --config` reads the audit store's settings only: the gateway's JWT and CSRF
/// secrets need not be in the operator's environment, but a Postgres store's password does.
#[tokio::test]
async fn query_with_a_config_needs_only_the_audit_store_secret() {
    let dir = TempDir::new("audit-cli-secrets");
    sqlite_with_sample(&dir.0).await;
    let config = dir.0.join("portcullis.toml");
    std::fs::write(
        &config,
        "[server]\nupstream = \"http://127.0.0.1:9\"\n\
         [storage]\naudit = \"sqlite://audit.db\"\n\
         [auth.jwt]\nsecret_env = \"PC_AUDIT_TEST_UNSET_JWT\"\n\
         [csrf]\nsecret_env = \"PC_AUDIT_TEST_UNSET_CSRF\"\n\
         previous_secret_envs = [\"PC_AUDIT_TEST_UNSET_OLD\"]\n",
    )
    .unwrap();
    let query = |config: &Path| {
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["audit", "query", "--user", "alice", "--format", "json"])
            .arg("--config")
            .arg(config)
            .env_remove("PC_AUDIT_TEST_UNSET_JWT")
            .env_remove("PC_AUDIT_TEST_UNSET_CSRF")
            .env_remove("PC_AUDIT_TEST_UNSET_OLD")
            .env_remove("PC_AUDIT_TEST_UNSET_PG")
            .output()
            .expect("the binary runs")
    };
    assert_eq!(
        request_ids(&stdout(&query(&config))),
        ["alice-0", "alice-1"]
    );

    // The names are still checked: a malformed one is a config error.
    std::fs::write(
        &config,
        "[storage]\naudit = \"sqlite://audit.db\"\n[auth.jwt]\nsecret_env = \"not a name\"\n",
    )
    .unwrap();
    let o = query(&config);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("auth.jwt.secret_env"));

    // The audit store's own password is needed, and its absence is said before connecting.
    std::fs::write(
        &config,
        "[storage]\naudit = \"postgres://audit@127.0.0.1:1/audit\"\n\
         postgres_password_env = \"PC_AUDIT_TEST_UNSET_PG\"\n",
    )
    .unwrap();
    let o = query(&config);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("storage.postgres_password_env") && err.contains("PC_AUDIT_TEST_UNSET_PG"),
        "{err}"
    );
}

#[tokio::test]
async fn query_reads_a_jsonl_store() {
    let dir = TempDir::new("audit-cli-jsonl");
    let path = dir.0.join("audit.jsonl");
    JsonlStore::open(&path)
        .unwrap()
        .write(&sample())
        .await
        .unwrap();
    let url = format!("jsonl://{}", path.display());
    let out = stdout(&portcullis(&[
        "audit",
        "query",
        "--store",
        &url,
        "--since",
        "1h",
        "--action",
        "forbidden",
        "--format",
        "json",
    ]));
    assert_eq!(request_ids(&out), ["bob-0", "bob-1", "bob-2"]);
}

#[test]
fn a_missing_store_or_bad_time_is_an_error() {
    let o = portcullis(&[
        "audit",
        "query",
        "--store",
        "sqlite:///nonexistent/dir/audit.db",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no such audit store"));
    assert!(!Path::new("/nonexistent/dir/audit.db").exists());
    let o = portcullis(&[
        "audit",
        "query",
        "--store",
        "stdout",
        "--since",
        "yesterday",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let o = portcullis(&["audit", "query"]);
    assert_eq!(o.status.code(), Some(2));
}

/// A filter that can never match is a typo: refused with exit 2, not an empty result.
#[tokio::test]
async fn query_refuses_an_unknown_action_or_a_malformed_ip() {
    let dir = TempDir::new("audit-cli-filters");
    let url = sqlite_with_sample(&dir.0).await;
    let o = portcullis(&["audit", "query", "--store", &url, "--action", "nonsense"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(o.stdout.is_empty());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--action") && err.contains("\"nonsense\""),
        "{err}"
    );
    for known in AuditAction::ALL {
        assert!(err.contains(known.as_str()), "{err}");
    }
    for (ip, says) in [
        ("notanip", "not an IP address"),
        ("999.1.1.1", "not an IP address"),
        ("10.0.0.0/24", "range"),
    ] {
        let o = portcullis(&["audit", "query", "--store", &url, "--ip", ip]);
        assert_eq!(o.status.code(), Some(2), "{ip}");
        assert!(o.stdout.is_empty(), "{ip}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("--ip") && err.contains(says), "{ip}: {err}");
    }
    // An IPv4-mapped IPv6 address finds the IPv4 address the gateway stored.
    let out = stdout(&portcullis(&[
        "audit",
        "query",
        "--store",
        &url,
        "--ip",
        "::ffff:10.0.0.9",
        "--format",
        "json",
    ]));
    assert_eq!(request_ids(&out), ["alice-0", "alice-1"]);
}

#[tokio::test]
async fn tail_prints_events_stored_after_it_started() {
    let dir = TempDir::new("audit-cli-tail");
    let url = sqlite_with_sample(&dir.0).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["audit", "tail", "--store", &url, "--interval", "100ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Let tail position itself at the end, then store more.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let store = SqliteAuditStore::open(dir.0.join("audit.db")).unwrap();
    let now = now_ms();
    store
        .write(&[
            ev("new-1", AuditAction::Banned, None, "10.0.0.3", "/x/**", now),
            ev("new-2", AuditAction::Banned, None, "10.0.0.3", "/x/**", now),
        ])
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(line) => {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                seen.push(v["request_id"].as_str().unwrap().to_string());
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        seen,
        ["new-1", "new-2"],
        "only events stored after tail started"
    );
}

/// `audit summary`: the window's counts from a real SQLite store, as JSON and as tables; the
/// two-day-old event is outside the default hour, inside `--since 3d`.
#[tokio::test]
async fn summary_counts_the_window_as_json_and_tables() {
    let dir = TempDir::new("audit-cli-summary");
    let url = sqlite_with_sample(&dir.0).await;
    let out = stdout(&portcullis(&[
        "audit", "summary", "--store", &url, "--format", "json",
    ]));
    let s: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(s["total"], 5, "{s}");
    assert_eq!(
        s["by_action"],
        serde_json::json!([
            {"action": "forbidden", "outcome": "denied", "count": 3},
            {"action": "rate_limit_exceeded", "outcome": "denied", "count": 2},
        ])
    );
    assert_eq!(s["offenders"][0]["client_ip"], "10.0.0.2");
    assert_eq!(s["offenders"][0]["denied"], 3);
    assert_eq!(s["offenders"][1]["client_ip"], "10.0.0.9");
    assert_eq!(
        s["rate_limited_routes"],
        serde_json::json!([{"name": "/api/notes/**", "count": 2}])
    );
    assert_eq!(
        s["denied_users"],
        serde_json::json!([{"name": "bob", "count": 3}, {"name": "alice", "count": 2}])
    );

    let out = stdout(&portcullis(&[
        "audit", "summary", "--store", &url, "--since", "3d", "--top", "1",
    ]));
    assert!(out.contains(": 6 events, 6 denied"), "{out}");
    let offenders = out
        .split("Top offenders")
        .nth(1)
        .expect("the offenders table")
        .split("\n\n")
        .next()
        .unwrap();
    let lines: Vec<&str> = offenders.lines().skip(1).collect();
    assert!(lines[0].starts_with("CLIENT"), "{out}");
    assert_eq!(lines.len(), 2, "--top 1: {out}");
    assert!(lines[1].starts_with("10.0.0.2  "), "{out}");
    assert!(lines[1].ends_with("forbidden 4"), "{out}");
    assert!(
        out.contains("Refused users\nUSER  DENIED\nbob   4\n"),
        "{out}"
    );

    for (args, needle) in [
        (vec!["--format", "csv"], "table or json"),
        (vec!["--since", "soon"], "--since"),
        (vec!["--since", "1h", "--until", "2h"], "after --since"),
    ] {
        let mut all = vec!["audit", "summary", "--store", &url];
        all.extend(args);
        let o = portcullis(&all);
        assert_eq!(o.status.code(), Some(2), "{all:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(needle),
            "{all:?}"
        );
    }
}

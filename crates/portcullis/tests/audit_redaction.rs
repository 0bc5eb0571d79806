//! No secret reaches storage: tokens, cookies, query tokens, passwords and API keys sent
//! through denied requests — and put into event metadata by a careless guard — are searched
//! for in the bytes of the SQLite files, the JSON-lines file and the spool: zero hits.

mod audit_common;
mod common;

use std::path::Path;
use std::sync::Arc;

use common::send;
use common::services::TempDir;
use portcullis::audit::{AuditEvent, AuditQuery, AuditSink, AuditWriter, Redactor, now_ms};

const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJtYWxsb3J5In0.S1gN4tur3Xyz";
const COOKIE_SECRET: &str = "SESSIONSECRET123";
const QUERY_TOKEN: &str = "QUERYTOKEN456";
const PASSWORD: &str = "hunter2PASSWORD789";
const API_KEY: &str = "APIKEY000111";
const CUSTOM: &str = "SSN-987-65-4321";

const SECRETS: [&str; 6] = [JWT, COOKIE_SECRET, QUERY_TOKEN, PASSWORD, API_KEY, CUSTOM];

/// Records into several writers.
struct Fanout(Vec<AuditWriter>);

impl AuditSink for Fanout {
    fn record(&self, event: AuditEvent) {
        for w in &self.0 {
            w.record(event.clone());
        }
    }
}

fn files_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(files_bytes(&p));
        } else {
            out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_in_denied_requests_and_metadata_never_reach_storage() {
    let dir = TempDir::new("audit-redaction");
    let redactor = Redactor::new().sensitive_field("ssn");
    let cfg = |name: &str| audit_common::config(&dir.0.join(name)).redactor(redactor.clone());
    let sqlite = AuditWriter::open(
        &format!("sqlite://{}", dir.0.join("audit.db").display()),
        cfg("spool-sqlite"),
    )
    .await
    .unwrap();
    let jsonl = AuditWriter::open(
        &format!("jsonl://{}", dir.0.join("audit.jsonl").display()),
        cfg("spool-jsonl"),
    )
    .await
    .unwrap();
    let sink = Arc::new(Fanout(vec![sqlite.clone(), jsonl.clone()]));
    let addr = audit_common::serve(sink.clone()).await;

    let bearer = format!("Bearer {JWT}");
    let cookie = format!("session={COOKIE_SECRET}; theme=dark");
    let body = format!(r#"{{"user":"mallory","password":"{PASSWORD}","ssn":"{CUSTOM}"}}"#);
    // 401: a refused bearer token, a cookie and a token in the query.
    let r = send(
        addr,
        "GET",
        &format!("/api/user/notes?token={QUERY_TOKEN}&page=2"),
        &[
            ("authorization", &bearer),
            ("cookie", &cookie),
            ("x-api-key", API_KEY),
        ],
        "",
    )
    .await;
    assert_eq!(r.status, 401);
    // 405 and 413 with the password in the body.
    let r = send(
        addr,
        "PUT",
        &format!("/api/public/login?access_token={QUERY_TOKEN}"),
        &[("content-type", "application/json"), ("cookie", &cookie)],
        body.clone(),
    )
    .await;
    assert_eq!(r.status, 405);
    let big = format!("{body}{}", " ".repeat(2048));
    let r = send(
        addr,
        "POST",
        "/api/public/login",
        &[
            ("content-type", "application/json"),
            ("authorization", &bearer),
        ],
        big,
    )
    .await;
    assert_eq!(r.status, 413);
    // A JWT-shaped request id is a token too.
    let r = send(
        addr,
        "DELETE",
        "/api/public/x",
        &[("x-request-id", JWT)],
        "",
    )
    .await;
    assert_eq!(r.status, 405);

    // A guard that puts everything it saw into the metadata.
    sink.record(AuditEvent {
        id: portcullis::audit::uuid_v7(),
        ts_ms: now_ms(),
        action: portcullis::audit::AuditAction::SecurityEvent,
        outcome: portcullis::audit::Outcome::Denied,
        principal: None,
        client_ip: Some("127.0.0.1".into()),
        method: "POST".into(),
        route: "/api/**".into(),
        path: format!("/api/reset/{JWT}"),
        status: 403,
        request_id: "leaky-guard".into(),
        metadata: serde_json::json!({
            "headers": {
                "Authorization": bearer,
                "Cookie": cookie,
                "X-Api-Key": API_KEY,
                "accept": "application/json",
            },
            "query": format!("page=2&token={QUERY_TOKEN}"),
            "body": body,
            "form": {"user": "mallory", "Password": PASSWORD, "nested": [{"ssn": CUSTOM}]},
            "note": format!("client retried with {JWT} after cookie: session={COOKIE_SECRET}"),
            "raw": format!("Authorization: {bearer}\r\nCookie: {cookie}\r\n"),
        }),
    });

    sqlite.flush().await.unwrap();
    jsonl.flush().await.unwrap();
    let stored = sqlite.store().query(&AuditQuery::new()).await.unwrap();
    assert_eq!(stored.len(), 5, "{stored:#?}");
    let leaky = stored
        .iter()
        .find(|e| e.request_id == "leaky-guard")
        .unwrap();
    assert_eq!(
        leaky.metadata["raw"],
        "Authorization: [redacted]\r\nCookie: [redacted]\r\n"
    );
    assert_eq!(leaky.metadata["query"], "page=2&token=[redacted]");
    assert_eq!(leaky.path, "/api/reset/[redacted]");
    assert_eq!(leaky.metadata["headers"]["accept"], "application/json");
    assert_eq!(leaky.metadata["form"]["user"], "mallory");
    assert_eq!(
        jsonl.store().query(&AuditQuery::new()).await.unwrap().len(),
        5
    );
    sqlite.shutdown().await.unwrap();
    jsonl.shutdown().await.unwrap();

    let files = files_bytes(&dir.0);
    assert!(files.iter().any(|(n, _)| n.ends_with("audit.db")));
    assert!(
        files
            .iter()
            .any(|(n, b)| n.ends_with("audit.jsonl") && !b.is_empty())
    );
    for (name, bytes) in &files {
        for secret in SECRETS {
            assert!(!contains(bytes, secret), "{secret} found in {name}");
        }
    }
}

#[tokio::test]
async fn events_that_overflow_the_queue_are_redacted_before_the_spool() {
    let dir = TempDir::new("audit-redaction-spool");
    struct Down;
    impl portcullis::audit::AuditStore for Down {
        fn describe(&self) -> String {
            "down".into()
        }
        fn write<'a>(
            &'a self,
            _: &'a [AuditEvent],
        ) -> portcullis::auth::BoxFuture<'a, Result<(), portcullis::audit::AuditError>> {
            Box::pin(async { Err(portcullis::audit::AuditError::Unavailable("down".into())) })
        }
    }
    let writer = AuditWriter::start(
        Arc::new(Down),
        audit_common::config(&dir.0.join("spool")).queue_capacity(1),
    )
    .unwrap();
    for i in 0..50 {
        let mut e = audit_common::event(format!("s{i}"), now_ms());
        e.metadata = serde_json::json!({"authorization": format!("Bearer {JWT}"), "q": format!("token={QUERY_TOKEN}")});
        writer.record(e);
    }
    assert!(writer.counters().spooled > 0);
    let _ = writer.flush().await;
    for (name, bytes) in files_bytes(&dir.0) {
        assert!(!bytes.is_empty() || name.contains("replay"));
        for secret in [JWT, QUERY_TOKEN] {
            assert!(!contains(&bytes, secret), "{secret} found in {name}");
        }
    }
}

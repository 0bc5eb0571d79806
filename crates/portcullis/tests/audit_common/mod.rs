//! The audit scenario shared by the SQLite and PostgreSQL suites: a `SecurityLayer` over real
//! TCP that produces one event of each kind, and what each stored row must hold.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::any;
use portcullis::audit::{AuditEvent, AuditSink, AuditWriter, Outcome, WriterConfig};
use portcullis::auth::{AuthMethod, AuthOutcome, Authenticator, BoxFuture, Principal};
use portcullis::policy::{RateKey, RateLimitSpec, ReportOnly};
use portcullis::{Control, Policy, Preset, SecurityLayer};

use crate::common::{echo, send, serve_with};

/// `x-demo-user: NAME` authenticates; any `Authorization` header is refused.
pub struct DemoAuth;

impl Authenticator for DemoAuth {
    fn authenticate<'a>(&'a self, parts: &'a http::request::Parts) -> BoxFuture<'a, AuthOutcome> {
        Box::pin(async move {
            if let Some(u) = parts.headers.get("x-demo-user") {
                let id = u.to_str().unwrap_or("").to_string();
                return AuthOutcome::Authenticated(Principal::new(
                    id,
                    ["user"],
                    AuthMethod::Custom,
                ));
            }
            if parts.headers.contains_key(http::header::AUTHORIZATION) {
                return AuthOutcome::Invalid("credentials refused");
            }
            AuthOutcome::NoCredentials
        })
    }
}

/// The layer: user routes need a principal, `/api/limited/**` allows 1 request a minute,
/// `/api/public/**` 1 KiB bodies, `/api/trial/**` only reports its method check.
pub fn layer(sink: Arc<dyn AuditSink>) -> SecurityLayer {
    SecurityLayer::builder()
        .default_policy(Preset::Public)
        .authenticator(Arc::new(DemoAuth))
        .route("/api/user/**", Policy::preset(Preset::Authenticated))
        .route(
            "/api/limited/**",
            Policy::preset(Preset::Public).rate_limits([RateLimitSpec::new(
                1,
                Duration::from_secs(60),
                RateKey::User,
            )]),
        )
        .route(
            "/api/public/**",
            Policy::preset(Preset::Public).max_body(1024),
        )
        .route(
            "/api/trial/**",
            Policy::preset(Preset::Public)
                .methods([http::Method::GET])
                .report_only(ReportOnly::Controls(vec![Control::Methods])),
        )
        .audit(sink)
        .build()
        .expect("valid layer")
}

pub async fn serve(sink: Arc<dyn AuditSink>) -> SocketAddr {
    let router = Router::new().fallback(any(echo));
    serve_with(router, layer(sink)).await
}

/// What one stored row must hold.
#[derive(Debug, Clone)]
pub struct Expected {
    pub request_id: String,
    pub action: &'static str,
    pub outcome: Outcome,
    pub status: u16,
    pub method: &'static str,
    pub route: &'static str,
    pub path: &'static str,
    pub principal: Option<&'static str>,
}

/// Sends the scenario's requests; returns the events they must leave.
pub async fn run(addr: SocketAddr) -> Vec<Expected> {
    let mut out = Vec::new();
    let mut expect = |r: &crate::common::Reply,
                      status: u16,
                      action: &'static str,
                      outcome: Outcome,
                      method: &'static str,
                      route: &'static str,
                      path: &'static str,
                      principal: Option<&'static str>| {
        out.push(Expected {
            request_id: r
                .header("x-request-id")
                .expect("every response has an X-Request-Id")
                .to_string(),
            action,
            outcome,
            status,
            method,
            route,
            path,
            principal,
        });
    };

    // 401: no credentials; the path arrives non-canonical.
    let r = send(addr, "GET", "/api//user/./notes", &[], "").await;
    assert_eq!(r.status, 401);
    expect(
        &r,
        401,
        "unauthorized_access",
        Outcome::Denied,
        "GET",
        "/api/user/**",
        "/api/user/notes",
        None,
    );

    // 405: a method outside the allowlist.
    let r = send(addr, "DELETE", "/api/public/data", &[], "").await;
    assert_eq!(r.status, 405);
    expect(
        &r,
        405,
        "method_not_allowed",
        Outcome::Denied,
        "DELETE",
        "/api/public/**",
        "/api/public/data",
        None,
    );

    // 413: a declared length over the limit.
    let r = send(
        addr,
        "POST",
        "/api/public/upload",
        &[("content-type", "application/json")],
        vec![b'x'; 4096],
    )
    .await;
    assert_eq!(r.status, 413);
    expect(
        &r,
        413,
        "body_too_large",
        Outcome::Denied,
        "POST",
        "/api/public/**",
        "/api/public/upload",
        None,
    );

    // 429: the second request of alice within the minute.
    let alice = [("x-demo-user", "alice")];
    let first = send(addr, "GET", "/api/limited/report", &alice, "").await;
    assert_eq!(first.status, 200);
    let r = send(addr, "GET", "/api/limited/report", &alice, "").await;
    assert_eq!(r.status, 429);
    expect(
        &r,
        429,
        "rate_limit_exceeded",
        Outcome::Denied,
        "GET",
        "/api/limited/**",
        "/api/limited/report",
        Some("alice"),
    );

    // Report-only: the method check decides, records, and lets the request through.
    let r = send(
        addr,
        "POST",
        "/api/trial/x",
        &[("content-type", "application/json")],
        "{}",
    )
    .await;
    assert_eq!(r.status, 200);
    expect(
        &r,
        405,
        "method_not_allowed",
        Outcome::ReportOnly,
        "POST",
        "/api/trial/**",
        "/api/trial/x",
        None,
    );

    out
}

/// Checks the stored events against the expectations, one row per request id.
pub fn check(stored: &[AuditEvent], expected: &[Expected]) {
    assert_eq!(
        stored.len(),
        expected.len(),
        "one event per refused or reported request: {stored:#?}"
    );
    for x in expected {
        let e = stored
            .iter()
            .find(|e| e.request_id == x.request_id)
            .unwrap_or_else(|| panic!("no event with request id {}: {stored:#?}", x.request_id));
        assert_eq!(e.action.as_str(), x.action, "{e:?}");
        assert_eq!(e.outcome, x.outcome, "{e:?}");
        assert_eq!(e.status, x.status, "{e:?}");
        assert_eq!(e.method, x.method, "{e:?}");
        assert_eq!(e.route, x.route, "{e:?}");
        assert_eq!(e.path, x.path, "{e:?}");
        assert_eq!(e.principal.as_deref(), x.principal, "{e:?}");
        assert_eq!(e.client_ip.as_deref(), Some("127.0.0.1"), "{e:?}");
        assert_eq!(e.id.len(), 36, "{e:?}");
        assert_eq!(&e.id[14..15], "7", "a UUIDv7: {e:?}");
        assert!(e.metadata["code"].is_string(), "{e:?}");
        assert!(e.metadata["control"].is_string(), "{e:?}");
        let age = portcullis::audit::now_ms().saturating_sub(e.ts_ms);
        assert!(age < 60_000, "recent ts: {e:?}");
    }
}

/// A writer that writes quickly (tests flush anyway).
pub fn config(spool: &std::path::Path) -> WriterConfig {
    WriterConfig::new(spool)
        .batching(100, Duration::from_millis(20))
        .retry(Duration::from_millis(50), Duration::from_millis(400))
        .write_timeout(Duration::from_secs(3))
}

/// A synthetic event for load and fault tests.
pub fn event(request_id: String, ts_ms: u64) -> AuditEvent {
    AuditEvent {
        id: portcullis::audit::uuid_v7(),
        ts_ms,
        action: portcullis::audit::AuditAction::RateLimitExceeded,
        outcome: Outcome::Denied,
        principal: Some("load".into()),
        client_ip: Some("192.0.2.1".into()),
        method: "GET".into(),
        route: "/api/load/**".into(),
        path: "/api/load/x".into(),
        status: 429,
        request_id,
        metadata: serde_json::json!({"code": "rate_limited", "control": "rate_limit"}),
    }
}

/// Flushes until every event is in the store (the store may still be coming back).
pub async fn flush_all(w: &AuditWriter) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match w.flush().await {
            Ok(()) => return,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("events still not stored: {e}"),
        }
    }
}

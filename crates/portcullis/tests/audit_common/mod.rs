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

/// The window the summary tests ask about: `[SUMMARY_SINCE, SUMMARY_UNTIL)`.
pub const SUMMARY_SINCE: u64 = 1_767_323_045_000;
pub const SUMMARY_UNTIL: u64 = SUMMARY_SINCE + 1_000;

/// `n` pseudo-random events (seeded, so a failure repeats) around the summary window: every
/// action and outcome, a few clients, principals and routes (some missing, some non-ASCII or
/// capitalised, to test byte order), times before, on the edges of and after the window, and
/// many equal times and counts, to test ties.
pub fn random_events(seed: u64, n: usize) -> Vec<AuditEvent> {
    use portcullis::audit::AuditAction;
    use rand::{Rng, SeedableRng, rngs::StdRng};
    let mut rng = StdRng::seed_from_u64(seed);
    let ips = [
        Some("203.0.113.1"),
        Some("203.0.113.2"),
        Some("203.0.113.10"),
        Some("2001:db8::1"),
        Some("198.51.100.7"),
        None,
    ];
    let users = [Some("alice"), Some("Bob"), Some("émile"), Some("zoe"), None];
    let routes = ["/api/a/**", "/api/b/**", "/Login", "/api/é/**"];
    let edges = [
        SUMMARY_SINCE - 1,
        SUMMARY_SINCE,
        SUMMARY_SINCE + 1,
        SUMMARY_UNTIL - 1,
        SUMMARY_UNTIL,
        SUMMARY_SINCE + 500,
    ];
    (0..n)
        .map(|i| {
            let ts_ms = if rng.gen_bool(0.3) {
                edges[rng.gen_range(0..edges.len())]
            } else {
                rng.gen_range(SUMMARY_SINCE - 100..SUMMARY_UNTIL + 100)
            };
            // Mostly denials, so the top lists have ties and cut-offs.
            let outcome = if rng.gen_bool(0.6) {
                Outcome::Denied
            } else {
                Outcome::ALL[rng.gen_range(0..Outcome::ALL.len())]
            };
            let action = if rng.gen_bool(0.3) {
                AuditAction::RateLimitExceeded
            } else {
                AuditAction::ALL[rng.gen_range(0..AuditAction::ALL.len())]
            };
            AuditEvent {
                id: portcullis::audit::uuid_v7(),
                ts_ms,
                action,
                outcome,
                principal: users[rng.gen_range(0..users.len())].map(Into::into),
                client_ip: ips[rng.gen_range(0..ips.len())].map(Into::into),
                method: "GET".into(),
                route: routes[rng.gen_range(0..routes.len())].into(),
                path: "/x".into(),
                status: 403,
                request_id: format!("sum-{i}"),
                metadata: serde_json::json!({"code": "test"}),
            }
        })
        .collect()
}

/// The summaries the store-backed tests compare: defaults, small tops with many ties, one
/// bucket, one-millisecond buckets, an empty window, and a window with no events.
pub fn summary_queries() -> Vec<portcullis::audit::SummaryQuery> {
    use portcullis::audit::SummaryQuery;
    vec![
        SummaryQuery::new(SUMMARY_SINCE, SUMMARY_UNTIL),
        SummaryQuery::new(SUMMARY_SINCE, SUMMARY_UNTIL)
            .top(2)
            .buckets(7),
        SummaryQuery::new(SUMMARY_SINCE, SUMMARY_UNTIL)
            .top(1)
            .buckets(1),
        SummaryQuery::new(SUMMARY_SINCE, SUMMARY_UNTIL)
            .top(3)
            .buckets(1000),
        SummaryQuery::new(SUMMARY_SINCE + 1, SUMMARY_UNTIL - 1).buckets(3),
        SummaryQuery::new(SUMMARY_SINCE, SUMMARY_SINCE),
        SummaryQuery::new(SUMMARY_UNTIL + 10_000, SUMMARY_UNTIL + 20_000),
    ]
}

/// The reference: a [`portcullis::audit::Summarizer`] fold of `events`.
pub fn fold(
    q: &portcullis::audit::SummaryQuery,
    events: &[AuditEvent],
) -> portcullis::audit::AuditSummary {
    let mut s = portcullis::audit::Summarizer::new(q);
    for e in events {
        s.add(e);
    }
    s.finish()
}

/// Checks `store.summary` against the fold for every [`summary_queries`] query, and that the
/// comparison is not vacuous.
pub async fn check_summaries(store: &dyn portcullis::audit::AuditStore, events: &[AuditEvent]) {
    for q in summary_queries() {
        let got = store.summary(&q).await.expect("summary");
        let want = fold(&q, events);
        assert_eq!(got, want, "{} summary for {q:?}", store.describe());
        assert!(!got.truncated);
    }
    let full = fold(&summary_queries()[0], events);
    assert!(
        full.total > 0 && full.total < events.len() as u64,
        "{full:?}"
    );
    assert!(
        full.offenders.len() > 1 && full.denied_users.len() > 1,
        "{full:?}"
    );
    assert!(!full.rate_limited_routes.is_empty(), "{full:?}");
    assert!(full.denied_timeline.iter().filter(|&&n| n > 0).count() > 10);
}

//! The ban list (DESIGN §2 step 5) over real TCP: repeat offenders are refused on every route
//! with 403 `banned`, others are not, bans end, report-only lets them through, and ordinary
//! rate limiting never turns into a ban.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use common::*;
use portcullis::audit::{AuditAction, MemorySink, Outcome};
use portcullis::auth::BoxFuture;
use portcullis::ban::BanList;
use portcullis::policy::ReportOnly;
use portcullis::rate_limit::algorithm::Verdict;
use portcullis::rate_limit::{Charge, RateLimitStore, RateLimiter, StoreError};
use portcullis::{Control, Policy, Preset, SecurityLayer};

const ATTACKER: &str = "203.0.113.7";
const BYSTANDER: &str = "198.51.100.1";

fn app() -> Router {
    Router::new()
        .route("/public", get(|| async { "ok" }))
        .route("/report", get(|| async { "ok" }))
}

/// 3 offences within a minute ban for 2 s; `/report` only reports bans. The test client
/// connects from 127.0.0.1, a trusted proxy, and names the client in `X-Forwarded-For`.
async fn start(sink: &MemorySink) -> SocketAddr {
    let bans = BanList::new(3, Duration::from_secs(60), Duration::from_secs(2));
    let layer = SecurityLayer::bare()
        .trusted_proxies(["127.0.0.0/8"])
        .route("/public", Policy::open())
        .route(
            "/report",
            Policy::open().report_only(ReportOnly::Controls(vec![Control::Ban])),
        )
        .ban_list(Some(Arc::new(bans)))
        .audit(Arc::new(sink.clone()))
        .build()
        .expect("valid layer");
    serve_with(app(), layer).await
}

async fn get_as(addr: SocketAddr, client: &str, path: &str) -> Reply {
    send(addr, "GET", path, &[("x-forwarded-for", client)], "").await
}

/// Three requests with an encoded slash: each refused at step 2 (400 `invalid_path`).
async fn attack(addr: SocketAddr, client: &str) {
    for _ in 0..3 {
        let r = get_as(addr, client, "/a%2fb").await;
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(r.json()["code"], "invalid_path");
    }
}

fn banned_events(sink: &MemorySink, outcome: Outcome) -> Vec<portcullis::audit::AuditEvent> {
    sink.events()
        .into_iter()
        .filter(|e| e.action == AuditAction::Banned && e.outcome == outcome)
        .collect()
}

#[tokio::test]
async fn repeated_path_attacks_ban_the_client_from_every_route_until_the_ban_ends() {
    let sink = MemorySink::default();
    let addr = start(&sink).await;
    assert_eq!(get_as(addr, ATTACKER, "/public").await.status, 200);
    attack(addr, ATTACKER).await;

    // The third offence began the ban: one event says so.
    let started = banned_events(&sink, Outcome::Denied);
    assert_eq!(started.len(), 1, "{started:?}");
    assert_eq!(started[0].client_ip.as_deref(), Some(ATTACKER));
    assert_eq!(started[0].metadata["ban_for"], 2);
    assert_eq!(started[0].metadata["offences"], 3);
    assert_eq!(started[0].metadata["offence"], "invalid_path");

    // Now refused on a route it never attacked.
    let r = get_as(addr, ATTACKER, "/public").await;
    assert_eq!(r.status, 403, "{}", r.text());
    let body = r.json();
    assert_eq!(body["code"], "banned");
    assert!(body["error"].is_string());
    assert_eq!(body["request_id"], r.header("x-request-id").unwrap());
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    let refused = banned_events(&sink, Outcome::Denied);
    assert_eq!(refused.len(), 2);
    assert_eq!(
        (refused[1].status, refused[1].path.as_str()),
        (403, "/public")
    );
    assert_eq!(refused[1].metadata["control"], "ban");

    // Another client is not touched.
    assert_eq!(get_as(addr, BYSTANDER, "/public").await.status, 200);

    // The ban ends.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(get_as(addr, ATTACKER, "/public").await.status, 200);
}

#[tokio::test]
async fn a_route_reporting_bans_serves_the_banned_client_and_audits_it() {
    let sink = MemorySink::default();
    let addr = start(&sink).await;
    attack(addr, ATTACKER).await;
    assert_eq!(get_as(addr, ATTACKER, "/public").await.status, 403);
    let r = get_as(addr, ATTACKER, "/report").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let reported = banned_events(&sink, Outcome::ReportOnly);
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert_eq!(reported[0].path, "/report");
}

#[tokio::test]
async fn a_client_over_its_rate_limit_is_limited_not_banned() {
    // The gateway's defaults: 100 offences within 10 min ban for 15 min. The public preset
    // allows 60 requests a minute per client.
    let sink = MemorySink::default();
    let bans = BanList::new(100, Duration::from_secs(600), Duration::from_secs(900));
    let layer = SecurityLayer::builder()
        .trusted_proxies(["127.0.0.0/8"])
        .default_policy(Preset::Public)
        .ban_list(Some(Arc::new(bans)))
        .audit(Arc::new(sink.clone()))
        .build()
        .expect("valid layer");
    let addr = serve_with(app(), layer).await;
    let mut statuses = Vec::new();
    for _ in 0..100 {
        statuses.push(get_as(addr, ATTACKER, "/public").await.status);
    }
    let count = |s: u16| statuses.iter().filter(|&&x| x == s).count();
    assert_eq!((count(200), count(429), count(403)), (60, 40, 0));
    assert!(statuses[..60].iter().all(|&s| s == 200));
    assert!(banned_events(&sink, Outcome::Denied).is_empty());
}

#[tokio::test]
async fn a_client_that_keeps_going_past_its_rate_limit_is_banned() {
    // 429s are offences too: with a ban after 5 of them, the 66th request is refused as banned.
    let bans = BanList::new(5, Duration::from_secs(600), Duration::from_secs(900));
    let layer = SecurityLayer::builder()
        .trusted_proxies(["127.0.0.0/8"])
        .default_policy(Preset::Public)
        .ban_list(Some(Arc::new(bans)))
        .build()
        .expect("valid layer");
    let addr = serve_with(app(), layer).await;
    let mut statuses = Vec::new();
    for _ in 0..66 {
        statuses.push(get_as(addr, ATTACKER, "/public").await.status);
    }
    assert!(statuses[..60].iter().all(|&s| s == 200));
    assert_eq!(statuses[60..65], [429; 5]);
    assert_eq!(statuses[65], 403);
}

/// A rate-limit store that is always down.
struct Down;

impl RateLimitStore for Down {
    fn decide<'a>(
        &'a self,
        _: &'a [Charge<'a>],
    ) -> BoxFuture<'a, Result<Vec<Verdict>, StoreError>> {
        Box::pin(async { Err(StoreError::new("down")) })
    }
    fn name(&self) -> &'static str {
        "down"
    }
}

#[tokio::test]
async fn refusals_of_a_store_that_is_down_are_no_offences() {
    let bans = BanList::new(2, Duration::from_secs(60), Duration::from_secs(60));
    let layer = SecurityLayer::bare()
        .trusted_proxies(["127.0.0.0/8"])
        .default_policy(Preset::Public)
        .rate_limiter(Arc::new(RateLimiter::new(Arc::new(Down))))
        .ban_list(Some(Arc::new(bans)))
        .build()
        .expect("valid layer");
    let addr = serve_with(app(), layer).await;
    for _ in 0..5 {
        let r = get_as(addr, ATTACKER, "/public").await;
        assert_eq!(r.status, 503, "{}", r.text());
    }
}

#[tokio::test]
async fn without_a_ban_list_attacks_are_only_refused() {
    // The library's defaults have no ban list.
    let layer = SecurityLayer::builder()
        .trusted_proxies(["127.0.0.0/8"])
        .build()
        .expect("valid layer");
    let addr = serve_with(app(), layer).await;
    for _ in 0..10 {
        assert_eq!(get_as(addr, ATTACKER, "/a%2fb").await.status, 400);
    }
    assert_eq!(get_as(addr, ATTACKER, "/public").await.status, 200);
}

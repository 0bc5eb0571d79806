//! Rate limiting through the layer over real TCP: the seed's check, keys that cannot be reset,
//! concurrency, headers, multi-limit policies and store failures.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{any, get};
use common::*;
use portcullis::audit::{MemorySink, Outcome};
use portcullis::auth::BoxFuture;
use portcullis::policy::{Algorithm, RateKey, RateLimitSpec};
use portcullis::rate_limit::algorithm::Verdict;
use portcullis::rate_limit::{
    Charge, HeaderStyle, OnStoreError, RateLimitStore, RateLimiter, StoreError,
};
use portcullis::{Policy, Preset, SecurityLayer};

fn router() -> Router {
    Router::new()
        .route("/api/public-data", get(|| async { "data" }))
        .route("/api/two", any(|| async { "two" }))
        .fallback(echo)
}

#[tokio::test]
async fn seed_check_100_requests_give_exactly_60_then_429() {
    let addr = serve_with(router(), SecurityLayer::new(Preset::Public)).await;
    let mut statuses = Vec::new();
    let mut first_429 = None;
    for _ in 0..100 {
        let r = fetch(addr, "/api/public-data").await;
        if r.status == 429 && first_429.is_none() {
            first_429 = Some(r);
        } else {
            statuses.push(r.status);
        }
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(ok, 60);
    let r = first_429.expect("a 429 after the limit");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    // At most 61 s: a burst taken at the very start of a minute fits again a sixtieth of a
    // minute after that minute ends (the sliding window weighs the previous minute's 60).
    assert!((1..=61).contains(&retry), "{retry}");
    let v = r.json();
    assert_eq!(v["code"], "rate_limited");
    assert_eq!(v["retry_after"], retry);
    assert_eq!(r.header("ratelimit-policy"), Some("\"default\";q=60;w=60"));
    assert!(
        r.header("ratelimit")
            .unwrap()
            .starts_with("\"default\";r=0;t=")
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn allowed_responses_carry_the_draft_headers() {
    let addr = serve_with(router(), SecurityLayer::new(Preset::Public)).await;
    let r = fetch(addr, "/api/public-data").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("ratelimit-policy"), Some("\"default\";q=60;w=60"));
    assert!(
        r.header("ratelimit")
            .unwrap()
            .starts_with("\"default\";r=59;t=")
    );
}

#[tokio::test]
async fn query_strings_and_path_variants_do_not_reset_the_counter() {
    let layer = SecurityLayer::builder()
        .default_policy(
            Policy::preset(Preset::Public).rate_limits([RateLimitSpec::new(
                5,
                Duration::from_secs(60),
                RateKey::Ip,
            )]),
        )
        .build()
        .unwrap();
    let addr = serve_with(router(), layer).await;
    let targets = [
        "/api/public-data",
        "/api/public-data?x=1",
        "/api//public-data",
        "/api/./public-data?y=2",
        "/api/x/../public-data",
        "/api/%70ublic-data",
        "/api/public-data/",
    ];
    let mut ok = 0;
    for (i, t) in targets.iter().cycle().take(20).enumerate() {
        let r = raw_get(
            addr,
            &format!(
                "{t}{}",
                if t.contains('?') {
                    format!("&n={i}")
                } else {
                    String::new()
                }
            ),
        )
        .await;
        if r.status == 200 {
            ok += 1;
        } else {
            assert_eq!(r.status, 429, "{t}: {}", r.text());
        }
    }
    assert_eq!(ok, 5);
}

#[tokio::test]
async fn spoofed_forwarded_for_does_not_reset_the_counter() {
    let layer = SecurityLayer::builder()
        .default_policy(
            Policy::preset(Preset::Public).rate_limits([RateLimitSpec::new(
                3,
                Duration::from_secs(60),
                RateKey::Ip,
            )]),
        )
        .trusted_proxies(["10.0.0.0/8"]) // the loopback peer is NOT trusted
        .build()
        .unwrap();
    let addr = serve_with(router(), layer).await;
    let mut ok = 0;
    for i in 0..10 {
        let xff = format!("198.51.100.{i}");
        let r = send(
            addr,
            "GET",
            "/api/public-data",
            &[("x-forwarded-for", &xff), ("x-real-ip", &xff)],
            "",
        )
        .await;
        ok += usize::from(r.status == 200);
    }
    assert_eq!(ok, 3);
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_client_has_its_own_counter_and_leftmost_spoofs_do_not_count() {
    let layer = SecurityLayer::builder()
        .default_policy(
            Policy::preset(Preset::Public).rate_limits([RateLimitSpec::new(
                2,
                Duration::from_secs(60),
                RateKey::Ip,
            )]),
        )
        .trusted_proxies(["127.0.0.1/32"])
        .build()
        .unwrap();
    let addr = serve_with(router(), layer).await;
    let mut ok = 0;
    for i in 0..6 {
        // The attacker rotates a fake leftmost hop; the proxy appends the real address.
        let xff = format!("6.6.6.{i}, 203.0.113.7");
        let r = send(
            addr,
            "GET",
            "/api/public-data",
            &[("x-forwarded-for", &xff)],
            "",
        )
        .await;
        ok += usize::from(r.status == 200);
    }
    assert_eq!(ok, 2);
    let r = send(
        addr,
        "GET",
        "/api/public-data",
        &[("x-forwarded-for", "203.0.113.8")],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "another client is counted apart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_never_exceed_the_limit() {
    for alg in [
        Algorithm::SlidingWindow,
        Algorithm::TokenBucket,
        Algorithm::FixedWindow,
    ] {
        let layer = SecurityLayer::builder()
            .default_policy(Policy::preset(Preset::Public).rate_limits([
                RateLimitSpec::new(50, Duration::from_secs(3600), RateKey::Ip).algorithm(alg),
            ]))
            .build()
            .unwrap();
        let addr = serve_with(router(), layer).await;
        let tasks: Vec<_> = (0..200)
            .map(|_| tokio::spawn(async move { fetch(addr, "/api/public-data").await.status }))
            .collect();
        let mut ok = 0;
        for t in tasks {
            ok += usize::from(t.await.unwrap() == 200);
        }
        assert_eq!(ok, 50, "{alg:?}");
    }
}

#[tokio::test]
async fn several_limits_charge_only_when_all_allow_and_name_the_violated_one() {
    let layer = SecurityLayer::builder()
        .default_policy(Policy::preset(Preset::Public).rate_limits([
            RateLimitSpec::new(2, Duration::from_secs(1), RateKey::Ip).named("burst"),
            RateLimitSpec::new(1000, Duration::from_secs(3600), RateKey::Ip).named("hourly"),
        ]))
        .build()
        .unwrap();
    let addr = serve_with(router(), layer).await;
    for _ in 0..2 {
        assert_eq!(fetch(addr, "/api/public-data").await.status, 200);
    }
    let r = fetch(addr, "/api/public-data").await;
    assert_eq!(r.status, 429);
    assert!(r.json()["error"].as_str().unwrap().contains("\"burst\""));
    assert_eq!(
        r.header("ratelimit-policy"),
        Some("\"burst\";q=2;w=1, \"hourly\";q=1000;w=3600")
    );
    // The refused request did not use up hourly quota: 998 left after two charges.
    assert!(
        r.header("ratelimit").unwrap().contains("\"hourly\";r=998;"),
        "{:?}",
        r.header("ratelimit")
    );
}

#[tokio::test]
async fn legacy_headers_on_request() {
    let limiter = RateLimiter::new(Arc::new(portcullis::rate_limit::memory::MemoryStore::new(
        1000,
    )))
    .header_style(HeaderStyle::DraftAndLegacy);
    let layer = SecurityLayer::builder()
        .default_policy(Preset::Public)
        .rate_limiter(Arc::new(limiter))
        .build()
        .unwrap();
    let addr = serve_with(router(), layer).await;
    let r = fetch(addr, "/api/public-data").await;
    assert_eq!(r.header("ratelimit-limit"), Some("60"));
    assert_eq!(r.header("ratelimit-remaining"), Some("59"));
    assert!(r.header("ratelimit-reset").is_some());
}

#[tokio::test]
async fn different_routes_have_different_counters() {
    let layer = SecurityLayer::builder()
        .default_policy(
            Policy::preset(Preset::Public).rate_limits([RateLimitSpec::new(
                1,
                Duration::from_secs(60),
                RateKey::Ip,
            )]),
        )
        .route(
            "/api/two",
            Policy::preset(Preset::Public).rate_limits([RateLimitSpec::new(
                1,
                Duration::from_secs(60),
                RateKey::Ip,
            )]),
        )
        .build()
        .unwrap();
    let addr = serve_with(router(), layer).await;
    assert_eq!(fetch(addr, "/api/public-data").await.status, 200);
    assert_eq!(fetch(addr, "/api/two").await.status, 200);
    assert_eq!(fetch(addr, "/api/two").await.status, 429);
}

struct BrokenStore;

impl RateLimitStore for BrokenStore {
    fn decide<'a>(
        &'a self,
        _: &'a [Charge<'a>],
    ) -> BoxFuture<'a, Result<Vec<Verdict>, StoreError>> {
        Box::pin(async { Err(StoreError::new("connection refused")) })
    }
    fn name(&self) -> &'static str {
        "broken"
    }
}

#[tokio::test]
async fn a_failing_store_fails_closed_by_default_and_open_on_request() {
    let sink = MemorySink::default();
    let closed = RateLimiter::new(Arc::new(BrokenStore));
    let stats = closed.stats();
    let layer = SecurityLayer::builder()
        .default_policy(Preset::Public)
        .rate_limiter(Arc::new(closed))
        .audit(Arc::new(sink.clone()))
        .build()
        .unwrap();
    let addr = serve_with(router(), layer).await;
    let r = fetch(addr, "/api/public-data").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["code"], "rate_limit_unavailable");
    assert!(
        !r.text().contains("connection refused"),
        "no internal detail"
    );
    assert_eq!(stats.store_errors.get(), 1);
    assert_eq!(sink.events().len(), 1);

    let sink = MemorySink::default();
    let open = RateLimiter::new(Arc::new(BrokenStore)).on_store_error(OnStoreError::Open);
    let layer = SecurityLayer::builder()
        .default_policy(Preset::Public)
        .rate_limiter(Arc::new(open))
        .audit(Arc::new(sink.clone()))
        .build()
        .unwrap();
    let addr = serve_with(router(), layer).await;
    for _ in 0..3 {
        assert_eq!(fetch(addr, "/api/public-data").await.status, 200);
    }
    let events = sink.events();
    assert_eq!(
        events.len(),
        3,
        "each decision taken without the store is audited"
    );
    assert!(
        events.iter().all(
            |e| e.outcome == Outcome::Allowed && e.metadata["code"] == "rate_limit_store_error"
        )
    );
}

/// A store that can only be awaited (as Redis and SQLite are), over the memory store, counting
/// how it is asked.
struct AwaitedOnly {
    inner: portcullis::rate_limit::memory::MemoryStore,
    now_asked: std::sync::atomic::AtomicUsize,
    awaited: std::sync::atomic::AtomicUsize,
}

impl RateLimitStore for AwaitedOnly {
    fn decide<'a>(
        &'a self,
        charges: &'a [Charge<'a>],
    ) -> BoxFuture<'a, Result<Vec<Verdict>, StoreError>> {
        self.awaited
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Box::pin(async move {
            tokio::task::yield_now().await;
            self.inner.decide_now(charges)
        })
    }
    fn decide_now(&self, _: &[Charge<'_>]) -> Option<Result<Vec<Verdict>, StoreError>> {
        self.now_asked
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        None
    }
    fn name(&self) -> &'static str {
        "awaited-only"
    }
}

#[tokio::test]
async fn a_store_that_must_be_awaited_is_awaited_and_asked_at_once_only_when_built() {
    use std::sync::atomic::Ordering::Relaxed;
    let store = Arc::new(AwaitedOnly {
        inner: portcullis::rate_limit::memory::MemoryStore::new(1000),
        now_asked: Default::default(),
        awaited: Default::default(),
    });
    let layer = SecurityLayer::builder()
        .default_policy(
            Policy::preset(Preset::Public).rate_limits([RateLimitSpec::new(
                2,
                Duration::from_secs(60),
                RateKey::Ip,
            )]),
        )
        .rate_limiter(Arc::new(RateLimiter::new(store.clone())))
        .build()
        .unwrap();
    let addr = serve_with(router(), layer).await;
    let statuses = [
        fetch(addr, "/api/public-data").await.status,
        fetch(addr, "/api/public-data").await.status,
        fetch(addr, "/api/public-data").await.status,
    ];
    assert_eq!(statuses, [200, 200, 429]);
    assert_eq!(
        store.awaited.load(Relaxed),
        3,
        "one awaited decision a request"
    );
    assert_eq!(
        store.now_asked.load(Relaxed),
        1,
        "asked at once only when the limiter was built, never per request"
    );
}

#[test]
fn limits_weaker_than_written_are_refused_when_the_layer_is_built() {
    let minute = Duration::from_secs(60);
    let build = |limits: Vec<RateLimitSpec>| {
        SecurityLayer::builder()
            .route("/api/**", Policy::open().rate_limits(limits))
            .build()
            .map(|_| ())
            .map_err(|e| (e.key, e.reason))
    };
    let refused = |limits: Vec<RateLimitSpec>, why: &str| {
        let (key, reason) = build(limits).expect_err(why);
        assert_eq!(key, "route \"/api/**\"", "{why}");
        assert!(reason.contains(why), "{reason:?} should say {why:?}");
    };
    // Zero requests: the first request used to pass while RateLimit-Policy said q=0.
    refused(
        vec![RateLimitSpec::new(0, minute, RateKey::Ip)],
        "at least one request",
    );
    // A zero window never refused anything.
    refused(
        vec![RateLimitSpec::new(5, Duration::ZERO, RateKey::Ip)],
        "window longer than zero",
    );
    // Not a header name: every request fell back to the client address, silently.
    refused(
        vec![RateLimitSpec::new(
            5,
            minute,
            RateKey::Header("x tenant".into()),
        )],
        "not a header name",
    );
    // Names go into the RateLimit headers, where these characters were dropped.
    for name in ["", "per\nminute", "ünï"] {
        refused(
            vec![RateLimitSpec::new(5, minute, RateKey::Ip).named(name)],
            "printable ASCII",
        );
    }
    refused(
        vec![
            RateLimitSpec::new(5, minute, RateKey::Ip),
            RateLimitSpec::new(50, minute * 60, RateKey::Ip),
        ],
        "two limits are named \"default\"",
    );
    let err = SecurityLayer::builder()
        .default_policy(Policy::open().rate_limits([RateLimitSpec::new(0, minute, RateKey::Ip)]))
        .build()
        .expect_err("the default policy is checked too");
    assert_eq!(err.key, "default_policy");

    // What is well-formed still builds, header keys in any case and names with spaces.
    build(vec![
        RateLimitSpec::new(
            5,
            Duration::from_millis(500),
            RateKey::Header("X-Tenant".into()),
        )
        .named("per tenant \"burst\""),
        RateLimitSpec::new(1, minute, RateKey::Ip).named("slow"),
    ])
    .expect("valid limits build");
    for preset in [Preset::Public, Preset::Authenticated, Preset::Strict] {
        assert!(SecurityLayer::builder().route("/x", preset).build().is_ok());
    }
}

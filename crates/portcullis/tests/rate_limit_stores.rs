//! One suite for every rate-limit store — memory, a SQLite file and a real `redis-server` —
//! plus the failure modes of a store that dies and comes back.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use common::services::{RedisServer, TempDir};
use common::*;
use portcullis::policy::{Algorithm, RateKey, RateLimitSpec};
use portcullis::rate_limit::algorithm::Rule;
use portcullis::rate_limit::memory::MemoryStore;
use portcullis::rate_limit::redis::RedisStore;
use portcullis::rate_limit::sqlite::SqliteStore;
use portcullis::rate_limit::{Charge, OnStoreError, RateLimitStore, RateLimiter};
use portcullis::{Policy, Preset, SecurityLayer};

const S: u64 = 1_000_000;

async fn allowed(store: &dyn RateLimitStore, key: &str, rule: Rule) -> bool {
    store
        .decide(&[Charge { key, rule, cost: 1 }])
        .await
        .expect("store answers")[0]
        .allowed
}

/// The behaviour every store must share.
async fn suite(store: Arc<dyn RateLimitStore>) {
    let name = store.name();
    for alg in [
        Algorithm::SlidingWindow,
        Algorithm::TokenBucket,
        Algorithm::FixedWindow,
    ] {
        let rule = Rule::new(5, 3600 * S, alg, 0);
        let key = format!("suite-basic-{alg:?}");
        let mut ok = 0;
        for _ in 0..8 {
            ok += usize::from(allowed(&*store, &key, rule).await);
        }
        assert_eq!(ok, 5, "{name} {alg:?}");
        // Another key is counted apart.
        assert!(
            allowed(&*store, &format!("{key}-other"), rule).await,
            "{name}"
        );
    }

    // Several limits: nothing is charged when one refuses, and the verdict names it.
    let tight = Rule::new(1, 3600 * S, Algorithm::SlidingWindow, 0);
    let loose = Rule::new(100, 3600 * S, Algorithm::SlidingWindow, 0);
    let charges = [
        Charge {
            key: "suite-multi-tight",
            rule: tight,
            cost: 1,
        },
        Charge {
            key: "suite-multi-loose",
            rule: loose,
            cost: 1,
        },
    ];
    let v = store.decide(&charges).await.unwrap();
    assert!(v.iter().all(|v| v.allowed), "{name}");
    assert_eq!(v[1].remaining, 99, "{name}");
    let v = store.decide(&charges).await.unwrap();
    assert!(!v[0].allowed, "{name}");
    assert!(v[0].retry_after_us > 0, "{name}");
    assert_eq!(
        v[1].remaining, 99,
        "{name}: the refused request charged nothing"
    );

    // Cost counts several tokens.
    let bucket = Rule::new(10, 3600 * S, Algorithm::TokenBucket, 0);
    let c = [Charge {
        key: "suite-cost",
        rule: bucket,
        cost: 7,
    }];
    assert!(store.decide(&c).await.unwrap()[0].allowed, "{name}");
    assert!(!store.decide(&c).await.unwrap()[0].allowed, "{name}");

    // Concurrency: many simultaneous decisions never over-admit.
    let rule = Rule::new(100, 3600 * S, Algorithm::SlidingWindow, 0);
    let tasks: Vec<_> = (0..400)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .decide(&[Charge {
                        key: "suite-concurrent",
                        rule,
                        cost: 1,
                    }])
                    .await
                    .map(|v| v[0].allowed)
                    .unwrap_or(false)
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        ok += usize::from(t.await.unwrap());
    }
    assert_eq!(ok, 100, "{name}: concurrent admissions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_passes_the_suite() {
    suite(Arc::new(MemoryStore::new(100_000))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_store_passes_the_suite_and_persists() {
    let dir = TempDir::new("sqlite-rl");
    let path = dir.0.join("rl.db");
    suite(Arc::new(SqliteStore::open(&path).unwrap())).await;
    // A new store on the same file remembers the counts.
    let store = SqliteStore::open(&path).unwrap();
    let rule = Rule::new(5, 3600 * S, Algorithm::SlidingWindow, 0);
    assert!(!allowed(&store, "suite-basic-SlidingWindow", rule).await);
    // WAL mode is on: the write-ahead log sits beside the database while it is open.
    assert!(dir.0.join("rl.db-wal").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_store_passes_the_suite_with_prefixed_expiring_keys() {
    let redis = RedisServer::start();
    let store = Arc::new(
        RedisStore::connect(&redis.url(), None, "pc-test:")
            .await
            .unwrap(),
    );
    suite(store.clone()).await;
    let keys = redis.cli(&["--scan", "--pattern", "*"]);
    assert!(!keys.trim().is_empty());
    for key in keys.lines().filter(|l| !l.is_empty()) {
        assert!(key.starts_with("pc-test:"), "{key}");
        let ttl: i64 = redis.cli(&["PTTL", key]).trim().parse().unwrap();
        assert!(ttl > 0, "{key} has no TTL ({ttl})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_redis_replicas_share_one_limit() {
    let redis = RedisServer::start();
    let a = RedisStore::connect(&redis.url(), None, "pc:")
        .await
        .unwrap();
    let b = RedisStore::connect(&redis.url(), None, "pc:")
        .await
        .unwrap();
    let rule = Rule::new(10, 3600 * S, Algorithm::SlidingWindow, 0);
    let mut ok = 0;
    for i in 0..30 {
        let store: &dyn RateLimitStore = if i % 2 == 0 { &a } else { &b };
        ok += usize::from(allowed(store, "shared", rule).await);
    }
    assert_eq!(ok, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_redis_replicas_share_bans() {
    use portcullis::ban::BanList;
    let redis = RedisServer::start();
    let connect = || async {
        Arc::new(
            RedisStore::connect(&redis.url(), None, "pc:")
                .await
                .unwrap(),
        )
    };
    let minute = Duration::from_secs(60);
    let a = BanList::with_store(3, minute, minute, connect().await);
    let b = BanList::with_store(3, minute, minute, connect().await);
    assert_eq!(b.is_banned("203.0.113.7"), None); // starts B's first refresh
    assert_eq!(a.record_offence("203.0.113.7").await, Ok(None));
    // The offences are counted in Redis: B's count adds to A's.
    assert_eq!(b.record_offence("203.0.113.7").await, Ok(None));
    assert_eq!(a.record_offence("203.0.113.7").await, Ok(Some(minute)));
    assert!(a.is_banned("203.0.113.7").is_some());
    let members = redis.cli(&["ZRANGE", "pc:bans", "0", "-1"]);
    assert_eq!(members.trim(), "203.0.113.7");
    // B learns of the ban from its lazy refresh (every 2 s).
    let started = std::time::Instant::now();
    while b.is_banned("203.0.113.7").is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "B did not see A's ban"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(b.is_banned("198.51.100.1"), None);

    // Lifted by hand on A: gone from Redis, from A at once and from B at its next refresh;
    // the offences are forgotten, so the next one is a first one again.
    assert_eq!(a.lift("203.0.113.7").await, Ok(true));
    assert_eq!(a.is_banned("203.0.113.7"), None);
    let members = redis.cli(&["ZRANGE", "pc:bans", "0", "-1"]);
    assert_eq!(members.trim(), "");
    let started = std::time::Instant::now();
    while b.is_banned("203.0.113.7").is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "B kept the lifted ban"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(b.record_offence("203.0.113.7").await, Ok(None));
    assert_eq!(a.record_offence("203.0.113.7").await, Ok(None));
    assert!(b.list().is_empty());
}

#[tokio::test]
async fn sqlite_bans_outlive_the_store() {
    use portcullis::ban::BanList;
    let dir = TempDir::new("pc-bans");
    let path = dir.0.join("rl.db");
    let minute = Duration::from_secs(60);
    {
        let store = Arc::new(SqliteStore::open(&path).unwrap());
        let bans = BanList::with_store(2, minute, minute, store);
        assert_eq!(bans.record_offence("203.0.113.7").await, Ok(None));
        assert_eq!(bans.record_offence("203.0.113.7").await, Ok(Some(minute)));
    }
    let store = Arc::new(SqliteStore::open(&path).unwrap());
    let bans = BanList::with_store(2, minute, minute, store.clone());
    assert_eq!(bans.refresh().await, Ok(1));
    let left = bans.is_banned("203.0.113.7").expect("still banned");
    assert!(left > Duration::from_secs(55) && left <= minute, "{left:?}");
    assert_eq!(bans.is_banned("198.51.100.1"), None);
    // A ban that has run out is dropped from the table when read.
    store.ban("192.0.2.1", 1).await.unwrap();
    assert_eq!(store.bans().await.unwrap().len(), 1);
    // Lifted: out of the table, and its offences forgotten.
    assert_eq!(bans.lift("203.0.113.7").await, Ok(true));
    assert!(store.bans().await.unwrap().is_empty());
    assert_eq!(bans.record_offence("203.0.113.7").await, Ok(None));
}

#[tokio::test]
async fn redis_password_comes_from_the_caller() {
    let redis = RedisServer::start();
    redis.cli(&["CONFIG", "SET", "requirepass", "s3cret-pass"]);
    let rule = Rule::new(3, 3600 * S, Algorithm::FixedWindow, 0);
    let without = RedisStore::connect(&redis.url(), None, "pw:")
        .await
        .unwrap();
    assert!(
        without
            .decide(&[Charge {
                key: "k",
                rule,
                cost: 1
            }])
            .await
            .is_err()
    );
    let with = RedisStore::connect(&redis.url(), Some("s3cret-pass".into()), "pw:")
        .await
        .unwrap();
    assert!(allowed(&with, "k", rule).await);
    assert!(!format!("{with:?}").contains("s3cret"));
}

fn limited_router() -> Router {
    Router::new().route("/api/public-data", get(|| async { "data" }))
}

async fn gateway_like(store: Arc<RedisStore>, mode: OnStoreError) -> std::net::SocketAddr {
    let limiter = RateLimiter::new(store).on_store_error(mode);
    let layer = SecurityLayer::builder()
        .default_policy(
            Policy::preset(Preset::Public).rate_limits([RateLimitSpec::new(
                1000,
                Duration::from_secs(60),
                RateKey::Ip,
            )]),
        )
        .rate_limiter(Arc::new(limiter))
        .build()
        .unwrap();
    serve_with(limited_router(), layer).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_fails_closed_or_open_and_recovers() {
    let mut redis = RedisServer::start();
    let store = Arc::new(
        RedisStore::connect(&redis.url(), None, "fail:")
            .await
            .unwrap(),
    );
    let closed = gateway_like(store.clone(), OnStoreError::Closed).await;
    let open = gateway_like(store.clone(), OnStoreError::Open).await;
    assert_eq!(fetch(closed, "/api/public-data").await.status, 200);
    assert_eq!(fetch(open, "/api/public-data").await.status, 200);

    redis.kill();
    let r = fetch(closed, "/api/public-data").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["code"], "rate_limit_unavailable");
    assert_eq!(fetch(open, "/api/public-data").await.status, 200);

    redis.restart();
    // The connection comes back by itself: the first request after the restart is decided.
    let r = fetch(closed, "/api/public-data").await;
    assert_eq!(
        r.status,
        200,
        "the first request after Redis returns: {}",
        r.text()
    );
    // A restart nobody saw (no request while Redis was down): the first request finds the
    // old connection broken, and is decided on a new one rather than refused.
    redis.kill();
    redis.restart();
    let r = fetch(closed, "/api/public-data").await;
    assert_eq!(
        r.status,
        200,
        "the first request after an unseen restart: {}",
        r.text()
    );
    let r = fetch(open, "/api/public-data").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("ratelimit").is_some(),
        "counting again after recovery"
    );
}

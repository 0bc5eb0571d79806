//! The audit writer: sustained events per second into SQLite (and PostgreSQL when
//! `PORTCULLIS_BENCH_PG` names a database), and what auditing adds to a request.
//!
//! ```text
//! cargo bench -p portcullis --bench audit -- --warm-up-time 1 --measurement-time 5
//! PORTCULLIS_BENCH_PG=postgres://postgres@127.0.0.1:5432/postgres cargo bench -p portcullis --bench audit
//! ```
//!
//! `audit_sustained/*` records `BURST` events and flushes; criterion's throughput is the
//! store's sustained rate (batches of 500, one transaction each). `audit_request_path/*` sends
//! one refused request (405, which always emits an event) through the layer with no sink and
//! with an `AuditWriter` on SQLite; the difference is what a request pays for auditing.
//! `denied_405_event_built_and_dropped` separates the layer's share (building the event) from
//! the queue's. On a 2-CPU machine the writer's background work (redaction, SQLite) competes
//! with the request loop for the same cores, which this bench saturates; that contention shows
//! up in the writer variant and is not a wait on the request path.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::Request;
use portcullis::audit::{
    AuditAction, AuditEvent, AuditSink, AuditWriter, Outcome, WriterConfig, now_ms, uuid_v7,
};
use portcullis::{Preset, SecurityLayer};
use tower::{Layer, ServiceExt};

const BURST: u64 = 20_000;

fn event(i: u64) -> AuditEvent {
    AuditEvent {
        id: uuid_v7(),
        ts_ms: now_ms(),
        action: AuditAction::RateLimitExceeded,
        outcome: Outcome::Denied,
        principal: Some(format!("user-{}", i % 100)),
        client_ip: Some("203.0.113.7".into()),
        method: "POST".into(),
        route: "/api/notes/**".into(),
        path: "/api/notes/42".into(),
        status: 429,
        request_id: uuid_v7(),
        metadata: serde_json::json!({"code": "rate_limited", "control": "rate_limit", "reason": "Too many requests"}),
    }
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("portcullis-bench-{tag}-{}", &uuid_v7()[24..]));
    std::fs::create_dir_all(&p).expect("a temp dir");
    p
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

fn sustained_into(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    name: &str,
    url: &str,
    spool: &std::path::Path,
) {
    let writer = rt
        .block_on(AuditWriter::open(
            url,
            WriterConfig::new(spool).queue_capacity(BURST as usize * 2),
        ))
        .expect("the bench store opens");
    let mut group = c.benchmark_group("audit_sustained");
    group.sample_size(10);
    group.throughput(Throughput::Elements(BURST));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let events: Vec<_> = (0..BURST).map(event).collect();
                let start = Instant::now();
                for e in events {
                    writer.record(e);
                }
                rt.block_on(writer.flush()).expect("all stored");
                total += start.elapsed();
            }
            total
        })
    });
    group.finish();
    let c = writer.counters();
    assert_eq!(c.dropped, 0, "{c:?}");
    rt.block_on(writer.shutdown()).expect("a clean shutdown");
}

fn sustained(c: &mut Criterion) {
    let rt = runtime();
    let dir = temp_dir("sustained");
    sustained_into(
        c,
        &rt,
        "sqlite",
        &format!("sqlite://{}", dir.join("audit.db").display()),
        &dir.join("spool-sqlite"),
    );
    match std::env::var("PORTCULLIS_BENCH_PG") {
        Ok(url) => sustained_into(c, &rt, "postgres", &url, &dir.join("spool-pg")),
        Err(_) => eprintln!(
            "audit_sustained/postgres skipped: set PORTCULLIS_BENCH_PG=postgres://… to run it"
        ),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn request(peer: SocketAddr) -> Request<Body> {
    let mut req = Request::delete("/api/public-data")
        .header(http::header::HOST, "api.example.com")
        .body(Body::empty())
        .expect("a valid bench request");
    req.extensions_mut().insert(ConnectInfo(peer));
    req
}

fn request_path(c: &mut Criterion) {
    let rt = runtime();
    let dir = temp_dir("request");
    let peer: SocketAddr = "203.0.113.7:51234".parse().expect("a socket address");
    let app = || Router::new().route("/api/public-data", get(|| async { "ok" }));
    let writer = rt
        .block_on(AuditWriter::open(
            &format!("sqlite://{}", dir.join("audit.db").display()),
            WriterConfig::new(dir.join("spool")).queue_capacity(1 << 20),
        ))
        .expect("the bench store opens");
    let off = SecurityLayer::new(Preset::Public).layer(app());
    // Builds every event and drops it: the layer's share, without the queue.
    struct Discard;
    impl AuditSink for Discard {
        fn record(&self, event: AuditEvent) {
            black_box(event);
        }
    }
    let discard = SecurityLayer::builder()
        .audit(Arc::new(Discard))
        .build()
        .expect("a valid layer")
        .layer(app());
    let on = SecurityLayer::builder()
        .audit(Arc::new(writer.clone()) as Arc<dyn AuditSink>)
        .build()
        .expect("a valid layer")
        .layer(app());

    let mut group = c.benchmark_group("audit_request_path");
    group.bench_function("denied_405_no_audit", |b| {
        b.to_async(&rt).iter(|| async {
            let res = off
                .clone()
                .oneshot(request(peer))
                .await
                .expect("infallible");
            debug_assert_eq!(res.status(), 405);
            black_box(res)
        })
    });
    group.bench_function("denied_405_event_built_and_dropped", |b| {
        b.to_async(&rt).iter(|| async {
            let res = discard
                .clone()
                .oneshot(request(peer))
                .await
                .expect("infallible");
            debug_assert_eq!(res.status(), 405);
            black_box(res)
        })
    });
    group.bench_function("denied_405_audit_writer_sqlite", |b| {
        b.to_async(&rt).iter(|| async {
            let res = on.clone().oneshot(request(peer)).await.expect("infallible");
            debug_assert_eq!(res.status(), 405);
            black_box(res)
        })
    });
    group.finish();
    rt.block_on(writer.flush()).expect("all stored");
    let c = writer.counters();
    eprintln!("audit_request_path: writer counters after the run: {c:?}");
    rt.block_on(writer.shutdown()).expect("a clean shutdown");
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, sustained, request_path);
criterion_main!(benches);

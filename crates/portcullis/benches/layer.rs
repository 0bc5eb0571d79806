//! Per-request cost of `SecurityLayer`, in process (no network).
//!
//! One GET `/api/public-data` goes end to end through an axum `Router` whose handler returns a
//! small static JSON body: bare, behind the stateless public-preset layer (every control but
//! the rate limiter), behind a builder-made layer with 8 routes, and with the in-memory rate
//! limiter added. The three sit in one group so a run compares them; the
//! difference between `public_preset` and `bare` is what the layer adds per request.
//!
//! ```text
//! cargo bench -p portcullis --bench layer -- --warm-up-time 1 --measurement-time 3
//! ```

use std::hint::black_box;
use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, header};
use http_body_util::BodyExt;
use portcullis::policy::{RateKey, RateLimitSpec};
use portcullis::{Policy, Preset, SecurityLayer};
use tower::{Layer, ServiceExt};

const PATH: &str = "/api/public-data";

fn app() -> Router {
    Router::new().route(
        PATH,
        get(|| async {
            (
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"ok":true}"#,
            )
        }),
    )
}

/// A realistic table: the request matches a literal route among globs, so every pattern is
/// tried (twice: exact and case-folded).
fn eight_routes() -> SecurityLayer {
    SecurityLayer::builder()
        .default_policy(Preset::Public)
        .route(
            "/api/admin/**",
            Policy::preset(Preset::Strict).roles(["admin"]),
        )
        .route("/api/*/notes", Preset::Authenticated)
        .route("/api/user/**", Preset::Authenticated)
        .route("/static/*.js", Preset::Public)
        .route("/api/v1/**", Preset::Authenticated)
        .route("/api/reports/*.csv", Preset::Authenticated)
        .route("/health", Policy::open())
        .route(PATH, Preset::Public)
        .no_rate_limiter()
        .build()
        .expect("the bench routes are valid")
}

fn request(peer: SocketAddr) -> Request<Body> {
    let mut req = Request::get(PATH)
        .header(header::HOST, "api.example.com")
        .header(header::USER_AGENT, "bench/1.0")
        .header(header::ACCEPT, "application/json")
        .body(Body::empty())
        .expect("a valid bench request");
    req.extensions_mut().insert(ConnectInfo(peer));
    req
}

/// Sends one request through a clone of `svc` and collects the response body.
async fn one<S>(svc: &S, peer: SocketAddr) -> bytes::Bytes
where
    S: tower::Service<Request<Body>, Response = http::Response<Body>> + Clone,
    S::Error: std::fmt::Debug,
{
    let res = svc
        .clone()
        .oneshot(request(peer))
        .await
        .expect("the service is infallible");
    debug_assert!(res.status().is_success(), "{}", res.status());
    res.into_body()
        .collect()
        .await
        .expect("a static body")
        .to_bytes()
}

fn security_layer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    let peer: SocketAddr = "203.0.113.7:51234".parse().expect("a socket address");

    let bare = app();
    // The stateless layer: every control of the public preset but the rate limiter.
    let public = SecurityLayer::builder()
        .default_policy(Preset::Public)
        .no_rate_limiter()
        .build()
        .expect("a valid layer")
        .layer(app());
    let routed = eight_routes().layer(app());
    // The same with the in-memory rate limiter, at a limit the bench never reaches.
    let limited = SecurityLayer::builder()
        .default_policy(
            Policy::preset(Preset::Public).rate_limits([RateLimitSpec::new(
                u32::MAX,
                std::time::Duration::from_secs(1),
                RateKey::Ip,
            )]),
        )
        .build()
        .expect("a valid layer")
        .layer(app());

    // Check once, outside the timing, that each variant answers 200 with the body.
    for body in [
        rt.block_on(one(&bare, peer)),
        rt.block_on(one(&public, peer)),
        rt.block_on(one(&routed, peer)),
        rt.block_on(one(&limited, peer)),
    ] {
        assert_eq!(&body[..], br#"{"ok":true}"#);
    }

    let mut group = c.benchmark_group("security_layer");
    group.bench_function("bare", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(one(&bare, peer).await) })
    });
    group.bench_function("public_preset", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(one(&public, peer).await) })
    });
    group.bench_function("builder_8_routes", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(one(&routed, peer).await) })
    });
    group.bench_function("public_preset_with_memory_rate_limit", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(one(&limited, peer).await) })
    });
    group.finish();
}

criterion_group!(benches, security_layer);
criterion_main!(benches);

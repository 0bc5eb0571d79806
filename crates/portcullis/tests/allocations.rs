//! Allocations per request: the layer's own, counted with a counting global allocator over
//! the same request through the bare app and through the public preset (with the in-memory
//! rate limiter). A regression guard on the hot path, deterministic (counts, not time).

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::get;
use http::{Request, header};
use http_body_util::BodyExt;
use portcullis::policy::{RateKey, RateLimitSpec};
use portcullis::{Policy, Preset, SecurityLayer};
use tower::{Layer, ServiceExt};

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

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

fn request(peer: SocketAddr) -> Request<Body> {
    let mut req = Request::get(PATH)
        .header(header::HOST, "api.example.com")
        .header(header::USER_AGENT, "bench/1.0")
        .header(header::ACCEPT, "application/json")
        .body(Body::empty())
        .expect("a valid request");
    req.extensions_mut().insert(ConnectInfo(peer));
    req
}

async fn per_request<S>(svc: &S) -> (usize, usize)
where
    S: tower::Service<Request<Body>, Response = http::Response<Body>> + Clone,
    S::Error: std::fmt::Debug,
{
    let peer: SocketAddr = "203.0.113.7:51234".parse().expect("an address");
    const N: usize = 200;
    // Warm: the limiter's entry, thread-local pools.
    for _ in 0..10 {
        let res = svc
            .clone()
            .oneshot(request(peer))
            .await
            .expect("infallible");
        let _ = res.into_body().collect().await;
    }
    let (a0, b0) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    for _ in 0..N {
        let res = svc
            .clone()
            .oneshot(request(peer))
            .await
            .expect("infallible");
        assert!(res.status().is_success());
        let _ = res.into_body().collect().await;
    }
    let (a1, b1) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    ((a1 - a0) / N, (b1 - b0) / N)
}

#[test]
fn the_public_preset_allocates_little_per_request() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    let bare = app();
    let layered = SecurityLayer::builder()
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
    let (bare_allocs, bare_bytes) = rt.block_on(per_request(&bare));
    let (allocs, bytes) = rt.block_on(per_request(&layered));
    eprintln!(
        "bare: {bare_allocs} allocations ({bare_bytes} bytes); layered: {allocs} ({bytes} bytes); \
         the layer's own: {} ({} bytes)",
        allocs - bare_allocs,
        bytes - bare_bytes
    );
    // 29 when written (the request's boxed future, the canonical path, the rate-limit key and
    // headers, the CSP value, the response header map growing to hold the controls' headers);
    // 27 once `RateLimit-Policy` was rendered once per policy and the guards' headers moved,
    // not cloned, onto the response; 28 since the response map starts from a copy of the
    // security-header set (fewer instructions, one more block than growing the map in place);
    // 26 once the rate limiter's two fields waited inline in the exchange, not in a map; 23
    // since guards, stores and authenticators that decide at once skip their boxed futures.
    assert!(
        allocs - bare_allocs <= 26,
        "the layer allocates {} times per request (23 when this bound was set)",
        allocs - bare_allocs
    );
}

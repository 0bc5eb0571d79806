//! The library face of the benchmarks (`bench/run.sh`): an axum app answering `{"ok":true}`,
//! served bare (`--layer none`) or behind [`SecurityLayer`] (`--layer public`), so the two runs
//! show what securing the app in Rust costs.
//!
//! Behind the layer:
//! - every path has the public preset (security headers, CSP nonce, methods, 1 MiB body,
//!   inbound header stripping) with a rate limit so high it never triggers;
//! - `/api/user/me` is `Preset::Authenticated`: a JWT from `Authorization: Bearer …`, HS256
//!   with the secret in `BENCH_JWT_SECRET` (at least 32 bytes), and RS256 as well when
//!   `BENCH_JWT_PUBLIC_KEY` holds a PEM public key; issuer and audience are `portcullis`, as
//!   `portcullis token` mints;
//! - `/api/limited` allows one request a minute per client, to measure refusals.
//!
//! ```text
//! BENCH_JWT_SECRET=$(openssl rand -hex 32) \
//!   cargo run --release -p portcullis --example bench_axum -- --listen 127.0.0.1:3001 --layer public
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::Request;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Router, ServiceExt};
use portcullis::auth::Secret;
use portcullis::auth::jwks::VerificationKey;
use portcullis::auth::jwt::{Algorithm, JwtAuthenticator};
use portcullis::policy::{RateKey, RateLimitSpec};
use portcullis::{Policy, Preset, SecurityLayer};
use tower::Layer;

/// The allocator the gateway ships with, in every mode alike, so the library face is measured
/// as the gateway is (and as a production axum service with mimalloc would run).
#[global_allocator]
static ALLOCATOR: portcullis_alloc::MiMalloc = portcullis_alloc::MiMalloc;

/// What `portcullis token` puts in `iss` and `aud` when the config names none.
const ISSUER: &str = "portcullis";
const USAGE: &str =
    "usage: bench_axum [--listen ADDR:PORT] [--layer none|public|headers] [--loop REQUESTS]";

/// Far above what one machine can send: the limiter runs on every request, never refuses.
fn never_limited(key: RateKey) -> RateLimitSpec {
    RateLimitSpec::new(10_000_000, Duration::from_secs(1), key)
}

async fn ok() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"ok":true}"#,
    )
}

/// Reads the whole body, as an application would, then answers.
async fn ok_after_body(body: Bytes) -> impl IntoResponse {
    drop(body);
    ok().await
}

fn router() -> Router {
    Router::new()
        .route("/api/user/me", get(ok))
        .route("/api/limited", get(ok))
        .fallback(ok_after_body)
}

/// The JWT authenticator: HS256 from `BENCH_JWT_SECRET`, RS256 from `BENCH_JWT_PUBLIC_KEY`.
fn authenticator() -> JwtAuthenticator {
    let secret = std::env::var("BENCH_JWT_SECRET")
        .expect("BENCH_JWT_SECRET must hold the HS256 secret (at least 32 bytes)");
    let mut jwt = JwtAuthenticator::builder()
        .issuer(ISSUER)
        .audience(ISSUER)
        .key(
            VerificationKey::hmac(Algorithm::HS256, &Secret::from(secret))
                .expect("BENCH_JWT_SECRET must be at least 32 bytes"),
        );
    let mut algorithms = vec![Algorithm::HS256];
    if let Ok(pem) = std::env::var("BENCH_JWT_PUBLIC_KEY") {
        jwt = jwt.key(
            VerificationKey::from_pem(Algorithm::RS256, &pem)
                .expect("BENCH_JWT_PUBLIC_KEY must hold an RSA public key in PEM"),
        );
        algorithms.push(Algorithm::RS256);
    }
    jwt.algorithms(algorithms)
        .build()
        .expect("the bench authenticator is valid")
}

fn security() -> SecurityLayer {
    SecurityLayer::builder()
        .default_policy(Policy::preset(Preset::Public).rate_limits([never_limited(RateKey::Ip)]))
        .route(
            "/api/user/**",
            Policy::preset(Preset::Authenticated).rate_limits([never_limited(RateKey::User)]),
        )
        .route(
            "/api/limited",
            Policy::preset(Preset::Public).rate_limits([RateLimitSpec::new(
                1,
                Duration::from_secs(60),
                RateKey::Ip,
            )]),
        )
        .authenticator(Arc::new(authenticator()))
        .build()
        .expect("the bench policy is valid")
}

/// The headers `--layer public` adds to `GET /api/public`, as constants (`--layer headers`).
const STATIC_HEADERS: [(&str, &str); 14] = [
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "strict-origin-when-cross-origin"),
    (
        "permissions-policy",
        "camera=(), microphone=(), geolocation=(), payment=()",
    ),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("x-permitted-cross-domain-policies", "none"),
    ("x-xss-protection", "0"),
    (
        "strict-transport-security",
        "max-age=63072000; includeSubDomains",
    ),
    (
        "content-security-policy",
        "default-src 'self'; script-src 'self' 'nonce-fUihaJqCol6B1XKEWjHA9g==' \
         'strict-dynamic'; style-src 'self'; img-src 'self' data:; font-src 'self'; \
         connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; \
         frame-ancestors 'none'",
    ),
    ("ratelimit-policy", "\"default\";q=10000000;w=1"),
    ("ratelimit", "\"default\";r=9999999;t=1"),
    ("cache-control", "no-store"),
    ("x-request-id", "9d1739c9-cbff-447b-8c51-d809b006f98d"),
];

/// [`STATIC_HEADERS`] as header fields, checked once: `from_static` outside a const context
/// checks every byte at run time, about 6k instructions a response for these 14, which the
/// floor must not pay.
static STATIC_FIELDS: std::sync::LazyLock<Vec<(header::HeaderName, header::HeaderValue)>> =
    std::sync::LazyLock::new(|| {
        STATIC_HEADERS
            .iter()
            .map(|(n, v)| {
                (
                    header::HeaderName::from_static(n),
                    header::HeaderValue::from_static(v),
                )
            })
            .collect()
    });

async fn static_headers(mut res: axum::response::Response) -> axum::response::Response {
    let h = res.headers_mut();
    for (name, value) in STATIC_FIELDS.iter() {
        h.insert(name.clone(), value.clone());
    }
    res
}

/// `--loop N`: N requests like wrk's (`GET /api/public`, `Host` only, a peer address) through
/// the service in this task, no sockets: what `bench/callgrind.sh layer` counts, the layer's
/// own instructions without hyper's or the kernel's.
async fn in_process(layer: &str, n: u64) {
    use axum::extract::ConnectInfo;
    use tower::{Service, ServiceExt as _};
    let peer: SocketAddr = "127.0.0.1:50000".parse().expect("a socket address");
    let mut svc = match layer {
        "none" => router().into_service::<axum::body::Body>().boxed_clone(),
        "public" => tower::ServiceExt::<Request>::boxed_clone(security().layer(router())),
        "headers" => router()
            .layer(axum::middleware::map_response(static_headers))
            .into_service::<axum::body::Body>()
            .boxed_clone(),
        other => panic!("unknown layer {other:?}; {USAGE}"),
    };
    let mut fields = 0usize;
    for _ in 0..n {
        let mut req = Request::get("/api/public")
            .header(header::HOST, "127.0.0.1:8080")
            .body(axum::body::Body::empty())
            .expect("a valid request");
        req.extensions_mut().insert(ConnectInfo(peer));
        let res = svc
            .ready()
            .await
            .expect("ready")
            .call(req)
            .await
            .expect("infallible");
        fields += res.headers().len();
    }
    println!("{n} requests, {fields} response fields");
}

#[tokio::main]
async fn main() {
    let mut listen = "127.0.0.1:3001".to_string();
    let mut layer = "public".to_string();
    let mut in_process_requests = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().expect(USAGE),
            "--layer" => layer = args.next().expect(USAGE),
            "--loop" => {
                in_process_requests = Some(args.next().and_then(|n| n.parse().ok()).expect(USAGE));
            }
            _ => panic!("unknown argument {arg:?}; {USAGE}"),
        }
    }
    // Whatever the order of the arguments: `--layer` applies to the loop too.
    if let Some(n) = in_process_requests {
        return in_process(&layer, n).await;
    }
    let addr: SocketAddr = listen.parse().expect(USAGE);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("the listen address must be free");
    eprintln!(
        "bench_axum (--layer {layer}) listening on http://{}",
        listener
            .local_addr()
            .expect("a bound listener has an address")
    );
    match layer.as_str() {
        "none" => {
            let make =
                ServiceExt::<Request>::into_make_service_with_connect_info::<SocketAddr>(router());
            axum::serve(listener, make).await.expect("serving");
        }
        "public" => {
            // Wrapping the whole router: routing, like every control, sees the canonical path.
            let app = security().layer(router());
            let make =
                ServiceExt::<Request>::into_make_service_with_connect_info::<SocketAddr>(app);
            axum::serve(listener, make).await.expect("serving");
        }
        "headers" => {
            // The floor: the same response headers, written as constants by a bare
            // middleware. What the layer costs above it is its own work.
            let app = router().layer(axum::middleware::map_response(static_headers));
            let make =
                ServiceExt::<Request>::into_make_service_with_connect_info::<SocketAddr>(app);
            axum::serve(listener, make).await.expect("serving");
        }
        other => panic!("unknown layer {other:?}; {USAGE}"),
    }
}

//! Per-request cost of the CSRF guard.
//!
//! `csrf_parts`: the pieces alone — the origin check for a browser POST (`Sec-Fetch-Site:
//! same-origin`), for an old browser (`Origin` against `Host`), for a refused cross-site POST,
//! and token verification (cookie lookup, constant-time compare, HMAC-SHA256 under one secret
//! and, in rotation, two).
//!
//! `csrf_layer`: one POST end to end through a bare `SecurityLayer` whose only control is the
//! guard, with CSRF off, origin mode and token mode: the differences are what the guard adds
//! to a request.
//!
//! ```text
//! cargo bench -p portcullis --bench csrf -- --warm-up-time 1 --measurement-time 3
//! ```

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::post;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method, Request, header};
use portcullis::csrf::token::{Secret, SessionBinding, TokenSigner, tokens_equal};
use portcullis::csrf::{CsrfGuard, Mode, cookie, fetch_metadata::OriginCheck};
use portcullis::policy::CsrfMode;
use portcullis::{CanonicalPath, Policy, SecurityLayer};
use tower::{Layer, ServiceExt};

const SESSION: &str = "Zm9vYmFyYmF6cXV4cXV1eA";

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, v.parse().expect("a valid header value"));
    }
    h
}

fn parts(c: &mut Criterion) {
    let no_public: [&str; 0] = [];
    let check = OriginCheck::new(
        Mode::Lenient,
        ["https://partner.example"],
        no_public,
        ["/api/webhooks/**"],
    )
    .expect("valid settings");
    let path = CanonicalPath::parse("/api/notes").expect("canonical");
    let host = Some("app.example");
    let fetch_metadata = headers(&[
        ("sec-fetch-site", "same-origin"),
        ("origin", "https://app.example"),
    ]);
    let origin_only = headers(&[("origin", "https://app.example")]);
    let cross_site = headers(&[
        ("sec-fetch-site", "cross-site"),
        ("origin", "https://evil.example"),
    ]);

    let one =
        TokenSigner::new(vec![Secret::new(vec![1u8; 32]).expect("32 bytes")]).expect("one secret");
    let two = TokenSigner::new(vec![
        Secret::new(vec![2u8; 32]).expect("32 bytes"),
        Secret::new(vec![1u8; 32]).expect("32 bytes"),
    ])
    .expect("two secrets");
    let session = SessionBinding::Anonymous(SESSION);
    let token = one.issue(session);
    let jar = headers(&[
        (
            "cookie",
            &format!("theme=dark; __Host-csrf-session={SESSION}; __Host-csrf={token}"),
        ),
        ("x-csrf-token", &token),
    ]);
    let verify = |signer: &TokenSigner, h: &HeaderMap| {
        let sent = h["x-csrf-token"].as_bytes();
        let in_cookie = cookie(h, "__Host-csrf").expect("cookie");
        let session = cookie(h, "__Host-csrf-session").expect("session");
        tokens_equal(sent, in_cookie.as_bytes())
            & signer.verify(sent, SessionBinding::Anonymous(session))
    };
    assert!(verify(&one, &jar) && verify(&two, &jar));

    let mut g = c.benchmark_group("csrf_parts");
    g.bench_function("origin_sec_fetch_site", |b| {
        b.iter(|| black_box(check.check(&Method::POST, &fetch_metadata, host, &path)))
    });
    g.bench_function("origin_vs_host", |b| {
        b.iter(|| black_box(check.check(&Method::POST, &origin_only, host, &path)))
    });
    g.bench_function("origin_cross_site_refused", |b| {
        b.iter(|| black_box(check.check(&Method::POST, &cross_site, host, &path)))
    });
    g.bench_function("token_verify_1_secret", |b| {
        b.iter(|| black_box(verify(&one, black_box(&jar))))
    });
    g.bench_function("token_verify_2_secrets", |b| {
        b.iter(|| black_box(verify(&two, black_box(&jar))))
    });
    g.bench_function("token_issue", |b| b.iter(|| black_box(one.issue(session))));
    g.finish();
}

fn layer_for(
    mode: CsrfMode,
) -> impl tower::Service<
    Request<Body>,
    Response = http::Response<portcullis::layer::SecurityBody>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone {
    let guard = CsrfGuard::builder()
        .secrets([Secret::new(vec![1u8; 32]).expect("32 bytes")])
        .build()
        .expect("valid settings");
    let app = Router::new().route("/api/notes", post(|| async { "ok" }));
    SecurityLayer::bare()
        .default_policy(Policy::open().csrf(mode))
        .csrf_guard(Arc::new(guard))
        .build()
        .expect("valid layer")
        .layer(app)
}

fn request(peer: SocketAddr, token: &str) -> Request<Body> {
    let mut req = Request::post("/api/notes")
        .header(header::HOST, "app.example")
        .header("sec-fetch-site", "same-origin")
        .header(header::ORIGIN, "https://app.example")
        .header(
            header::COOKIE,
            format!("__Host-csrf-session={SESSION}; __Host-csrf={token}"),
        )
        .header("x-csrf-token", token)
        .body(Body::empty())
        .expect("a valid bench request");
    req.extensions_mut().insert(ConnectInfo(peer));
    req
}

fn layer(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    let peer: SocketAddr = "203.0.113.7:51234".parse().expect("a socket address");
    let token = TokenSigner::new(vec![Secret::new(vec![1u8; 32]).expect("32 bytes")])
        .expect("one secret")
        .issue(SessionBinding::Anonymous(SESSION));
    let mut g = c.benchmark_group("csrf_layer");
    for (name, mode) in [
        ("post_csrf_off", CsrfMode::Off),
        ("post_origin", CsrfMode::Origin),
        ("post_origin_and_token", CsrfMode::OriginAndToken),
    ] {
        let svc = layer_for(mode);
        let res = rt.block_on(svc.clone().oneshot(request(peer, &token)));
        assert_eq!(res.expect("infallible").status(), 200, "{name}");
        g.bench_function(name, |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(svc.clone().oneshot(request(peer, &token)).await) })
        });
    }
    g.finish();
}

criterion_group!(benches, parts, layer);
criterion_main!(benches);

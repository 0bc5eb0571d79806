//! The invariants the fuzz targets check. Shared, as source, with the stable replay tests
//! (`crates/portcullis/tests/fuzz_replay.rs`), which run them over the seed corpus in
//! `fuzz/corpus/` and mutations of it on every CI run, so a property broken by a change fails
//! CI without a nightly toolchain; `cargo fuzz run TARGET` explores further (see
//! `fuzz/README.md`).
//!
//! Each check takes raw bytes and panics when an invariant fails.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use http_body_util::{BodyExt, StreamBody};
use portcullis::auth::Principal;
use portcullis::auth::Secret;
use portcullis::auth::jwks::VerificationKey;
use portcullis::auth::jwt::{Algorithm, JwtAuthenticator};
use portcullis::csrf::CsrfGuard;
use portcullis::headers::csp::Csp;
use portcullis::headers::nonce_html::NonceRewriter;
use portcullis::policy::{RateKey, RateLimitSpec};
use portcullis::route::CanonicalPath;
use portcullis::{Nonce, Policy, Preset, SecurityLayer};
use tower::ServiceExt;

/// The HS256 secret of the tokens in the seed corpus (a test value, nothing else uses it).
pub const JWT_SECRET: &str = "portcullis-fuzz-secret-of-at-least-32-bytes";
/// `iss` and `aud` of those tokens.
pub const ISSUER: &str = "portcullis-fuzz";
/// The CSRF token secret of the fuzzed layer.
pub const CSRF_SECRET: &str = "portcullis-fuzz-csrf-secret-of-at-least-32-bytes";

// ---------------------------------------------------------------------------------------
// The canonical path.

/// `CanonicalPath::parse` never panics, and what it accepts is canonical: absolute, no empty,
/// `.` or `..` segment, no byte the parser refuses, and a fixed point of the parser.
pub fn canonical_path(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(path) = CanonicalPath::parse(raw) else {
        return;
    };
    let s = path.as_str();
    assert!(s.starts_with('/'), "{raw:?} -> {s:?}");
    assert!(!s.contains("//"), "{raw:?} -> {s:?}");
    for segment in s.split('/').skip(1) {
        assert!(segment != "." && segment != "..", "{raw:?} -> {s:?}");
    }
    assert!(
        !s.bytes()
            .any(|b| b == b'\\' || b == b';' || b < 0x20 || b == 0x7f),
        "{raw:?} -> {s:?}"
    );
    // Decoding never makes a query or a fragment out of the path.
    for b in ['?', '#'] {
        assert!(raw.contains(b) || !s.contains(b), "{raw:?} -> {s:?}");
    }
    let lower = s.to_ascii_lowercase();
    for encoded in ["%2f", "%5c", "%00", "%0d", "%0a", "%2e"] {
        assert!(!lower.contains(encoded), "{raw:?} -> {s:?}");
    }
    let again = CanonicalPath::parse(s).unwrap_or_else(|e| panic!("{raw:?} -> {s:?}: {e}"));
    assert_eq!(again.as_str(), s, "{raw:?}: not a fixed point");
}

// ---------------------------------------------------------------------------------------
// A request through the whole layer.

/// Whether `path` is `prefix` or under it (what the route `prefix/**` covers).
pub fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The app behind the fuzzed layer. Its handler checks the layer's promises: a request under
/// `/api/admin` (the path the app is given) arrives only with a principal holding `admin`,
/// one under `/api/user` only with a principal, and an unsafe method never without passing
/// the CSRF checks.
async fn handler(req: Request) -> Response {
    let path = req.uri().path().to_string();
    let principal = req.extensions().get::<Principal>().cloned();
    let admin = under(&path, "/api/admin");
    if admin {
        let roles = principal
            .as_ref()
            .map(|p| p.roles.clone())
            .unwrap_or_default();
        assert!(
            roles.iter().any(|r| r == "admin"),
            "{path} reached the app without the admin role: {principal:?}"
        );
    }
    let protected = under(&path, "/api/user");
    if protected {
        assert!(
            principal.is_some(),
            "{path} reached the app without a principal"
        );
    }
    let unsafe_method = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if unsafe_method {
        // The CSRF token is signed with a secret the inputs cannot know, so no unsafe request
        // reaches a route that requires one; and no route takes a cross-site one.
        assert!(
            !(protected || admin),
            "{} {path} passed the CSRF token check",
            req.method()
        );
        let site = req.headers().get("sec-fetch-site").map(|v| v.as_bytes());
        assert!(
            !matches!(site, Some(b"cross-site" | b"same-site")),
            "a {site:?} {} {path} passed the origin check",
            req.method()
        );
    }
    // Drain the body as an app would; the layer's limit may cut it.
    let _ = req.into_body().collect().await;
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::SERVER, "app/1.0"),
            (HeaderName::from_static("x-powered-by"), "fuzz"),
        ],
        r#"{"ok":true}"#,
    )
        .into_response()
}

fn layer() -> SecurityLayer {
    let secret = Secret::from(JWT_SECRET);
    let jwt = JwtAuthenticator::builder()
        .issuer(ISSUER)
        .audience(ISSUER)
        .key(VerificationKey::hmac(Algorithm::HS256, &secret).expect("a 32-byte secret"))
        .algorithms([Algorithm::HS256])
        .build()
        .expect("a valid authenticator");
    let csrf = CsrfGuard::builder()
        .secrets([portcullis::csrf::token::Secret::new(CSRF_SECRET).expect("a 32-byte secret")])
        .build()
        .expect("valid CSRF settings");
    let limit = |n| RateLimitSpec::new(n, Duration::from_secs(60), RateKey::Ip);
    SecurityLayer::builder()
        .default_policy(Policy::preset(Preset::Public).rate_limits([limit(1_000_000)]))
        .route(
            "/api/user/**",
            Policy::preset(Preset::Authenticated).rate_limits([limit(1_000_000)]),
        )
        .route(
            "/api/admin/**",
            Policy::preset(Preset::Strict)
                .methods([Method::GET, Method::POST])
                .roles(["admin"])
                .rate_limits([limit(1_000_000)]),
        )
        .route(
            "/api/upload",
            Policy::preset(Preset::Public)
                .max_body(64)
                .content_types(["application/json"])
                .rate_limits([limit(1_000_000)]),
        )
        .route(
            "/api/limited",
            Policy::preset(Preset::Public).rate_limits([limit(2)]),
        )
        .trusted_proxies(["10.0.0.0/8"])
        .authenticator(Arc::new(jwt))
        .csrf_guard(Arc::new(csrf))
        .build()
        .expect("a valid layer")
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

fn service() -> &'static Router {
    static APP: OnceLock<Router> = OnceLock::new();
    APP.get_or_init(|| Router::new().fallback(handler).layer(layer()))
}

/// The input: `METHOD\nTARGET\nName: value\n...\n\nBODY`. The first byte picks whether the
/// peer is a trusted proxy and how the body is cut into frames; a `\xff` in the body ends a frame.
fn parse_request(data: &[u8]) -> Option<http::Request<Body>> {
    let (&first, rest) = data.split_first()?;
    let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&rest[..i], &rest[i + 2..]),
        None => (rest, &[][..]),
    };
    let mut lines = head.split(|&b| b == b'\n');
    let method = Method::from_bytes(lines.next()?).ok()?;
    let uri = Uri::try_from(lines.next()?).ok()?;
    let mut builder = http::Request::builder().method(method).uri(uri);
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        builder = builder.header(name, value);
    }
    // A peer per input (from a hash of it), so one input's failed logins or spent limits do
    // not refuse the next ones: the brute-force limit would soon answer 429 to everything.
    let h = data.iter().fold(0x811c_9dc5_u32, |h, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let [a, b, c, d] = h.to_be_bytes();
    let ip = if first & 1 == 0 {
        std::net::Ipv4Addr::new(100, 64 | (a & 0x3f), b, c)
    } else {
        std::net::Ipv4Addr::new(10, a, b, d)
    };
    let peer = SocketAddr::from((ip, 40000));
    let body = if first & 2 == 0 {
        Body::from(Bytes::copy_from_slice(body))
    } else {
        let frames: Vec<Result<http_body::Frame<Bytes>, Infallible>> = body
            .split(|&b| b == 0xff)
            .map(|f| Ok(http_body::Frame::data(Bytes::copy_from_slice(f))))
            .collect();
        Body::new(StreamBody::new(futures_util::stream::iter(frames)))
    };
    let mut req = builder.body(body).ok()?;
    req.extensions_mut().insert(ConnectInfo(peer));
    Some(req)
}

/// Any request through the whole layer: no panic, never a 5xx, every response with an
/// `X-Request-Id` and the security headers and without the app's banners; a refusal is the
/// one JSON error, carrying the same request id; and the app's handler asserts that protected
/// routes are reached only with the principal they need. Returns the status (`None` when
/// the input is not a request), so the replay test can check what the seeds claim to be.
pub fn request(data: &[u8]) -> Option<StatusCode> {
    let req = parse_request(data)?;
    let head_only = req.method() == Method::HEAD;
    let described = format!("{} {} {:?}", req.method(), req.uri(), req.headers());
    let res = runtime().block_on(async {
        let res = service()
            .clone()
            .oneshot(req)
            .await
            .unwrap_or_else(|never| match never {});
        let (parts, body) = res.into_parts();
        let body = body.collect().await.map(|b| b.to_bytes());
        (parts, body)
    });
    let (parts, body) = res;
    let status = parts.status;
    assert!(!status.is_server_error(), "{status} for {described}");
    let id = parts
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no X-Request-Id for {described}: {parts:?}"))
        .to_string();
    assert_eq!(
        parts
            .headers
            .get("x-content-type-options")
            .map(|v| v.as_bytes()),
        Some(&b"nosniff"[..]),
        "{described}: {parts:?}"
    );
    assert!(parts.headers.get(header::SERVER).is_none(), "{described}");
    assert!(parts.headers.get("x-powered-by").is_none(), "{described}");
    let Ok(body) = body else {
        // The app's body was cut by the limit after the head went out: fine.
        return Some(status);
    };
    if head_only {
        assert!(body.is_empty(), "a body for {described}");
    } else if status.is_client_error() {
        assert_eq!(
            parts
                .headers
                .get(header::CONTENT_TYPE)
                .map(|v| v.as_bytes()),
            Some(&b"application/json"[..]),
            "{status} for {described}"
        );
        let json: serde_json::Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{status} for {described}: not JSON ({e}): {body:?}"));
        assert!(
            json["code"].as_str().is_some_and(|c| !c.is_empty()),
            "{json}"
        );
        assert!(
            json["error"].as_str().is_some_and(|c| !c.is_empty()),
            "{json}"
        );
        assert_eq!(json["request_id"], id.as_str(), "{json}");
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert!(parts.headers.contains_key(header::RETRY_AFTER), "{parts:?}");
        }
        if status == StatusCode::METHOD_NOT_ALLOWED {
            assert!(parts.headers.contains_key(header::ALLOW), "{parts:?}");
        }
        if status == StatusCode::UNAUTHORIZED {
            assert!(
                parts.headers.contains_key(header::WWW_AUTHENTICATE),
                "{parts:?}"
            );
        }
    }
    Some(status)
}

// ---------------------------------------------------------------------------------------
// The HTML nonce rewrite.

const MARKER: &str = "{{portcullis-nonce}}";

fn rewrite(frames: Vec<Bytes>, nonce: &Nonce) -> Bytes {
    let frames: Vec<Result<http_body::Frame<Bytes>, Infallible>> = frames
        .into_iter()
        .map(|f| Ok(http_body::Frame::data(f)))
        .collect();
    let body = StreamBody::new(futures_util::stream::iter(frames));
    let rewriter = NonceRewriter::new(MARKER).expect("a valid marker");
    runtime().block_on(async {
        rewriter
            .rewrite(body, nonce)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default()
    })
}

/// The streaming HTML rewrite: no panic; the same output however the page is cut into
/// frames (`\xff` bytes mark the cuts); and a page without the marker never gets the nonce
/// (an injected `<script nonce>` is not blessed).
pub fn nonce_html(data: &[u8]) {
    let nonce = Nonce::generate();
    let whole: Vec<u8> = data.iter().copied().filter(|&b| b != 0xff).collect();
    let frames: Vec<Bytes> = data
        .split(|&b| b == 0xff)
        .map(Bytes::copy_from_slice)
        .collect();
    let one = rewrite(vec![Bytes::from(whole.clone())], &nonce);
    let many = rewrite(frames, &nonce);
    assert_eq!(one, many, "the rewrite depends on how the page is framed");
    let has_marker = whole.windows(MARKER.len()).any(|w| w == MARKER.as_bytes());
    if !has_marker {
        let n = nonce.as_str().as_bytes();
        assert!(
            !one.windows(n.len()).any(|w| w == n),
            "the nonce was given to a page without the marker: {:?}",
            String::from_utf8_lossy(&one)
        );
    }
}

// ---------------------------------------------------------------------------------------
// The CSP parser.

/// `Csp::parse` never panics, and a policy it accepts renders to a header value that parses
/// back to the same directives, with and without a nonce.
pub fn csp(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policy) = Csp::parse(text) else {
        return;
    };
    let nonce = Nonce::generate();
    for rendered in [policy.render(None), policy.render(Some(&nonce))] {
        let s = rendered
            .to_str()
            .unwrap_or_else(|e| panic!("{text:?} renders to a non-visible value: {e}"));
        assert!(!s.contains('\n') && !s.contains('\r'), "{text:?} -> {s:?}");
    }
    if policy.uses_nonce() {
        let with = policy.render(Some(&nonce));
        let with = with.to_str().unwrap_or_default();
        assert!(
            with.contains(&format!("'nonce-{}'", nonce.as_str())),
            "{text:?} -> {with:?}"
        );
        return;
    }
    let rendered = policy.render(None);
    let s = rendered.to_str().unwrap_or_default();
    let back = Csp::parse(s).unwrap_or_else(|e| panic!("{text:?} -> {s:?} does not parse: {e}"));
    let a: Vec<_> = policy.directives().collect();
    let b: Vec<_> = back.directives().collect();
    assert_eq!(a, b, "{text:?} -> {s:?}");
}

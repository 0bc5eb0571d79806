//! `DeferSecurityHeaders`: a response whose security headers the layer leaves for the server
//! to write carries, once they are written, exactly the fields the layer would have put in
//! its header map, whatever the set, the scheme, the response, CORS, the CSP nonce and the
//! guards' own fields (even one that shares a name with the set).

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{HeaderMap, Request};
use portcullis::cors::Cors;
use portcullis::headers::security::{DeferredSecurityHeaders, HstsMode, SecurityHeaders};
use portcullis::layer::{DeferSecurityHeaders, Https};
use portcullis::policy::{RateKey, RateLimitSpec};
use portcullis::{Csp, Policy, Preset, SecurityLayer};
use tower::ServiceExt;

fn app(layer: SecurityLayer) -> Router {
    let html = || async {
        (
            [
                ("content-type", "text/html"),
                ("x-frame-options", "ALLOWALL"),
                // The app's own policy: the layer's replaces it, deferred or not.
                ("content-security-policy", "default-src *"),
            ],
            "<p>hi</p>",
        )
    };
    let json = || async {
        (
            [
                ("content-type", "application/json"),
                ("server", "upstream/1.0"),
                ("x-powered-by", "Express"),
                ("cache-control", "max-age=60"),
            ],
            "{}",
        )
    };
    Router::new()
        .route("/page", get(html))
        .route("/api/data", get(json))
        .fallback(|| async { "ok" })
        .layer(layer)
}

/// The response's fields as `name: value` lines sorted by name (the values of one name kept
/// in their order), the request id left out (fresh per request) and the nonce blanked.
fn fields(h: &HeaderMap) -> Vec<String> {
    let mut v: Vec<String> = h
        .iter()
        .filter(|(n, _)| n.as_str() != "x-request-id")
        .map(|(n, v)| {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            let v = match v.find("'nonce-") {
                Some(at) => format!(
                    "{}'nonce-N'{}",
                    &v[..at],
                    &v[at..].splitn(3, '\'').nth(2).unwrap_or("")
                ),
                None => v,
            };
            format!("{n}: {v}")
        })
        .collect();
    v.sort_by(|a, b| a.split(':').next().cmp(&b.split(':').next()));
    v
}

#[tokio::test]
async fn deferred_headers_written_after_the_response_are_the_fields_the_layer_would_set() {
    let limit = || RateLimitSpec::new(10_000_000, Duration::from_secs(1), RateKey::Ip);
    let sets: Vec<(&str, Option<SecurityHeaders>)> = vec![
        ("default", Some(SecurityHeaders::default())),
        (
            "https only",
            Some(SecurityHeaders::default().hsts_mode(HstsMode::HttpsOnly)),
        ),
        (
            "custom",
            Some(
                SecurityHeaders::default()
                    .set("x-frame-options", "SAMEORIGIN")
                    .unwrap()
                    .remove("permissions-policy")
                    .strip_from_responses("x-debug")
                    .unwrap(),
            ),
        ),
        // A name the rate limiter also adds: the set goes in first, the limiter's follows.
        (
            "shares a guard's name",
            Some(
                SecurityHeaders::default()
                    .set("ratelimit-policy", "fixed")
                    .unwrap(),
            ),
        ),
        // A name the layer decides later: never deferred.
        (
            "reserved name",
            Some(
                SecurityHeaders::default()
                    .set("cache-control", "private")
                    .unwrap(),
            ),
        ),
        ("none", None),
    ];
    for (what, set) in sets {
        let layer = || {
            SecurityLayer::builder()
                .default_policy(Policy::preset(Preset::Public).rate_limits([limit()]))
                .security_headers(set.clone())
                .csp(Some(
                    Csp::parse("default-src 'self'; script-src 'nonce'").unwrap(),
                ))
                .cors(Some(
                    Cors::new().allow_origins(["https://app.example"]).unwrap(),
                ))
                .build()
                .unwrap()
        };
        for path in ["/page", "/api/data", "/other"] {
            for https in [false, true] {
                for origin in [None, Some("https://app.example")] {
                    let request = |defer: bool| {
                        let mut r = Request::get(path).header("host", "gw.example");
                        if let Some(o) = origin {
                            r = r.header("origin", o);
                        }
                        let mut r = r.body(Body::empty()).unwrap();
                        if https {
                            r.extensions_mut().insert(Https);
                        }
                        if defer {
                            r.extensions_mut().insert(DeferSecurityHeaders);
                        }
                        r
                    };
                    let whole = app(layer()).oneshot(request(false)).await.unwrap();
                    let mut deferred = app(layer()).oneshot(request(true)).await.unwrap();
                    let case = format!("{what} {path} https={https} origin={origin:?}");
                    assert_eq!(whole.status(), deferred.status(), "{case}");
                    let d = deferred
                        .extensions_mut()
                        .remove::<DeferredSecurityHeaders>();
                    match (what, &d) {
                        ("reserved name" | "none", Some(_)) => panic!("{case}: deferred"),
                        ("default" | "https only" | "custom", None) => {
                            panic!("{case}: not deferred")
                        }
                        _ => {}
                    }
                    let mut written = deferred.headers().clone();
                    if let Some(d) = &d {
                        let mut left = d.fields().clone();
                        d.apply_to(&mut left);
                        for (name, _) in &left {
                            assert!(
                                !deferred.headers().contains_key(name)
                                    || what == "shares a guard's name",
                                "{case}: {name} both in the map and deferred"
                            );
                        }
                        d.apply_to(&mut written);
                        // The bytes say the same as the fields put in a map, the CSP (left
                        // to the writer as well) with the same nonce.
                        let mut bytes = Vec::new();
                        d.write_to(&mut bytes);
                        assert!(bytes.starts_with(d.encoded()), "{case}");
                        let text = String::from_utf8(bytes).unwrap();
                        let mut only = HeaderMap::new();
                        d.apply_to(&mut only);
                        assert!(only.contains_key("content-security-policy"), "{case}");
                        assert_eq!(text.lines().count(), only.len(), "{case}");
                        for (n, v) in &only {
                            assert!(
                                text.contains(&format!("{n}: {}\r\n", v.to_str().unwrap())),
                                "{case}: {text}"
                            );
                        }
                    }
                    assert_eq!(fields(&written), fields(whole.headers()), "{case}");
                }
            }
        }
    }
}

/// The layer's later fields go with the deferred set: the rate limiter's fields and the
/// request id are written by the writer, not put in the map, and an app's own request id is
/// replaced, as it is without deferral.
#[tokio::test]
async fn rate_limit_fields_and_the_request_id_are_left_to_the_writer_too() {
    let limit = RateLimitSpec::new(100, Duration::from_secs(60), RateKey::Ip).named("api");
    let layer = SecurityLayer::builder()
        .default_policy(Policy::preset(Preset::Public).rate_limits([limit]))
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/own-id",
            get(|| async { ([("x-request-id", "from-the-app")], "{}") }),
        )
        .fallback(|| async { "ok" })
        .layer(layer);
    for path in ["/plain", "/own-id"] {
        let mut r = Request::get(path)
            .header("host", "gw.example")
            .header("x-request-id", "client-id-1")
            .body(Body::empty())
            .unwrap();
        r.extensions_mut().insert(DeferSecurityHeaders);
        let mut res = app.clone().oneshot(r).await.unwrap();
        assert_eq!(res.status(), 200, "{path}");
        for name in [
            "x-request-id",
            "ratelimit",
            "ratelimit-policy",
            "x-frame-options",
        ] {
            assert!(
                !res.headers().contains_key(name),
                "{path}: {name} in the map"
            );
        }
        let d = res
            .extensions_mut()
            .remove::<DeferredSecurityHeaders>()
            .expect("deferred");
        assert!(d.contains(&http::HeaderName::from_static("x-request-id")));
        assert!(d.contains(&http::HeaderName::from_static("ratelimit")));
        let mut bytes = Vec::new();
        d.write_to(&mut bytes);
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.contains("x-request-id: client-id-1\r\n"),
            "{path}: {text}"
        );
        assert!(!text.contains("from-the-app"), "{path}: {text}");
        assert!(
            text.contains("ratelimit-policy: \"api\";q=100;w=60\r\n"),
            "{path}: {text}"
        );
        assert!(
            text.contains("\r\nratelimit: \"api\";r=9"),
            "{path}: {text}"
        );
        assert_eq!(text.matches("x-request-id:").count(), 1, "{path}: {text}");
        // The preset's no-store, the response having no Cache-Control of its own.
        assert!(
            text.contains("\r\ncache-control: no-store\r\n"),
            "{path}: {text}"
        );
        let mut map = http::HeaderMap::new();
        d.apply_to(&mut map);
        assert_eq!(map["x-request-id"], "client-id-1", "{path}");
        assert_eq!(map["ratelimit-policy"], "\"api\";q=100;w=60", "{path}");
    }
}

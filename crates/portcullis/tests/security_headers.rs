//! Security response headers end to end over real TCP (shared/DESIGN.md §4): the defaults on
//! every kind of response, banner removal, overrides, `Cache-Control` and HSTS modes.

mod common;

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use common::*;
use http::Method;
use http::header::CACHE_CONTROL;
use portcullis::headers::security::{HstsMode, SecurityHeaders};
use portcullis::{Policy, Preset, SecurityLayer};

/// Every default header of DESIGN §4 with its exact value.
const DEFAULTS: [(&str, &str); 9] = [
    (
        "strict-transport-security",
        "max-age=63072000; includeSubDomains",
    ),
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
];

fn assert_defaults(r: &Reply, what: &str) {
    for (name, value) in DEFAULTS {
        assert_eq!(r.header(name), Some(value), "{what}: {name}");
        assert_eq!(
            r.headers.get_all(name).iter().count(),
            1,
            "{what}: {name} sent once"
        );
    }
}

fn app() -> Router {
    Router::new()
        .route(
            "/ok",
            get(|| async {
                (
                    [
                        ("server", "Apache/2.4.1 (Unix)"),
                        ("x-powered-by", "PHP/8.1.2"),
                        ("x-aspnet-version", "4.0.30319"),
                    ],
                    "ok",
                )
            }),
        )
        .route(
            "/cached",
            get(|| async { ([(CACHE_CONTROL, "public, max-age=60")], "cached") }),
        )
        .route(
            "/weakened",
            get(|| async {
                (
                    [
                        ("x-frame-options", "ALLOWALL"),
                        ("x-content-type-options", "sniff"),
                    ],
                    "weakened",
                )
            }),
        )
}

async fn preset() -> SocketAddr {
    serve_with(app(), SecurityLayer::new(Preset::Public)).await
}

async fn bare(headers: SecurityHeaders) -> SocketAddr {
    let layer = SecurityLayer::bare()
        .default_policy(Policy::open().methods([Method::GET, Method::HEAD]))
        .security_headers(Some(headers))
        .build()
        .expect("valid layer");
    serve_with(app(), layer).await
}

#[tokio::test]
async fn preset_layer_sends_every_default_header_on_success() {
    let addr = preset().await;
    let r = fetch(addr, "/ok").await;
    assert_eq!(r.status, 200);
    assert_defaults(&r, "200");
}

#[tokio::test]
async fn preset_layer_sends_every_default_header_on_a_layer_rejection() {
    let addr = preset().await;
    let r = send(addr, "DELETE", "/ok", &[], "").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.json()["code"], "method_not_allowed");
    assert_defaults(&r, "405");
}

#[tokio::test]
async fn preset_layer_sends_every_default_header_on_a_handler_404() {
    let addr = preset().await;
    let r = fetch(addr, "/no/such/page").await;
    assert_eq!(r.status, 404);
    assert_defaults(&r, "404");
}

#[tokio::test]
async fn bare_layer_with_security_headers_sends_every_default_header() {
    let addr = bare(SecurityHeaders::default()).await;
    let ok = fetch(addr, "/ok").await;
    assert_eq!(ok.status, 200);
    assert_defaults(&ok, "200");
    let rejected = send(addr, "POST", "/ok", &[], "x").await;
    assert_eq!(rejected.status, 405);
    assert_eq!(rejected.header("allow"), Some("GET, HEAD"));
    assert_defaults(&rejected, "405");
    let missing = fetch(addr, "/missing").await;
    assert_eq!(missing.status, 404);
    assert_defaults(&missing, "404");
    // Only the headers were asked for: no CSP.
    assert_eq!(ok.header("content-security-policy"), None);
}

#[tokio::test]
async fn version_banners_set_by_the_handler_are_removed() {
    for addr in [preset().await, bare(SecurityHeaders::default()).await] {
        let r = fetch(addr, "/ok").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "ok");
        for banner in ["server", "x-powered-by", "x-aspnet-version"] {
            assert_eq!(r.header(banner), None, "{banner}");
        }
    }
}

#[tokio::test]
async fn banners_are_removed_even_with_no_security_headers() {
    let addr = bare(SecurityHeaders::none()).await;
    let r = fetch(addr, "/ok").await;
    assert_eq!(r.header("server"), None);
    assert_eq!(r.header("x-powered-by"), None);
    for (name, _) in DEFAULTS {
        assert_eq!(r.header(name), None, "{name}");
    }
}

#[tokio::test]
async fn an_override_and_a_removal_take_effect() {
    let headers = SecurityHeaders::default()
        .set("x-frame-options", "SAMEORIGIN")
        .unwrap()
        .set("Referrer-Policy", "no-referrer")
        .unwrap()
        .set("strict-transport-security", "max-age=300")
        .unwrap()
        .remove("permissions-policy")
        .remove("X-XSS-Protection");
    let addr = bare(headers).await;
    for r in [
        fetch(addr, "/ok").await,
        send(addr, "POST", "/ok", &[], "").await,
    ] {
        assert_eq!(r.header("x-frame-options"), Some("SAMEORIGIN"));
        assert_eq!(r.header("referrer-policy"), Some("no-referrer"));
        assert_eq!(r.header("strict-transport-security"), Some("max-age=300"));
        assert_eq!(r.header("permissions-policy"), None);
        assert_eq!(r.header("x-xss-protection"), None);
        assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    }
}

#[tokio::test]
async fn removing_hsts_stops_it() {
    let addr = bare(SecurityHeaders::default().remove("strict-transport-security")).await;
    let r = fetch(addr, "/ok").await;
    assert_eq!(r.header("strict-transport-security"), None);
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
}

#[tokio::test]
async fn a_handler_cannot_weaken_a_security_header() {
    let addr = preset().await;
    let r = fetch(addr, "/weakened").await;
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
}

#[tokio::test]
async fn preset_responses_are_no_store_unless_the_handler_set_cache_control() {
    let addr = preset().await;
    let r = fetch(addr, "/ok").await;
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let r = fetch(addr, "/cached").await;
    assert_eq!(r.header("cache-control"), Some("public, max-age=60"));
    let r = send(addr, "DELETE", "/ok", &[], "").await;
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let r = fetch(addr, "/missing").await;
    assert_eq!(r.header("cache-control"), Some("no-store"));
}

#[tokio::test]
async fn an_open_policy_adds_no_cache_control() {
    let addr = bare(SecurityHeaders::default()).await;
    let r = fetch(addr, "/ok").await;
    assert_eq!(r.header("cache-control"), None);
    let r = fetch(addr, "/cached").await;
    assert_eq!(r.header("cache-control"), Some("public, max-age=60"));
}

async fn https_only(trusted: &[&str]) -> SocketAddr {
    let layer = SecurityLayer::bare()
        .security_headers(Some(
            SecurityHeaders::default().hsts_mode(HstsMode::HttpsOnly),
        ))
        .trusted_proxies(trusted.iter().copied())
        .build()
        .expect("valid layer");
    serve_with(app(), layer).await
}

#[tokio::test]
async fn hsts_https_only_is_absent_over_plain_http() {
    let addr = https_only(&["127.0.0.1/32"]).await;
    let r = fetch(addr, "/ok").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("strict-transport-security"), None);
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    let r = send(addr, "GET", "/ok", &[("x-forwarded-proto", "http")], "").await;
    assert_eq!(r.header("strict-transport-security"), None);
}

#[tokio::test]
async fn hsts_https_only_is_sent_when_a_trusted_proxy_says_https() {
    let addr = https_only(&["127.0.0.1/32"]).await;
    for proto in ["https", "HTTPS"] {
        let r = send(addr, "GET", "/ok", &[("x-forwarded-proto", proto)], "").await;
        assert_eq!(
            r.header("strict-transport-security"),
            Some("max-age=63072000; includeSubDomains"),
            "{proto}"
        );
    }
    let r = send(
        addr,
        "GET",
        "/missing",
        &[("x-forwarded-proto", "https")],
        "",
    )
    .await;
    assert_eq!(r.status, 404);
    assert!(r.header("strict-transport-security").is_some());
}

#[tokio::test]
async fn x_forwarded_proto_from_an_untrusted_peer_does_not_turn_hsts_on() {
    let addr = https_only(&[]).await;
    let r = send(addr, "GET", "/ok", &[("x-forwarded-proto", "https")], "").await;
    assert_eq!(r.header("strict-transport-security"), None);
    let addr = https_only(&["10.0.0.0/8"]).await;
    let r = send(addr, "GET", "/ok", &[("x-forwarded-proto", "https")], "").await;
    assert_eq!(r.header("strict-transport-security"), None);
}

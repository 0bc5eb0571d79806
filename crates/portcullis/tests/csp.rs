//! Content-Security-Policy end to end over real TCP: the default policy, a fresh nonce per
//! response, the `CspNonce` extractor, `no-store` on nonce'd HTML, report-only, per-route
//! policies and policies without a nonce.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::response::Html;
use axum::routing::get;
use base64::Engine;
use common::*;
use http::header::CACHE_CONTROL;
use portcullis::policy::CspSetting;
use portcullis::{Csp, CspNonce, Policy, Preset, SecurityLayer};

/// DESIGN §4's default policy; `N` is the response's nonce.
const DEFAULT_CSP: &str = "default-src 'self'; script-src 'self' 'nonce-N' 'strict-dynamic'; style-src 'self'; img-src 'self' data:; font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'";

/// The nonce in a CSP header value.
fn nonce_in(csp: &str) -> Option<String> {
    let start = csp.find("'nonce-")? + "'nonce-".len();
    let len = csp[start..].find('\'')?;
    Some(csp[start..start + len].to_string())
}

/// The nonce a page rendered into its `<script nonce="...">`.
fn nonce_in_page(html: &str) -> Option<String> {
    let start = html.find("nonce=\"")? + "nonce=\"".len();
    let len = html[start..].find('"')?;
    Some(html[start..start + len].to_string())
}

async fn page(nonce: CspNonce) -> Html<String> {
    Html(format!(
        r#"<!doctype html><script nonce="{}">console.log("hi")</script>"#,
        nonce.as_str()
    ))
}

async fn cached_page(nonce: CspNonce) -> impl axum::response::IntoResponse {
    (
        [(CACHE_CONTROL, "public, max-age=600")],
        Html(format!(r#"<script nonce="{}"></script>"#, nonce.as_str())),
    )
}

async fn maybe(nonce: Option<CspNonce>) -> &'static str {
    if nonce.is_some() { "nonce" } else { "none" }
}

fn app() -> Router {
    let pages = Router::new()
        .route("/page", get(page))
        .route("/cached-page", get(cached_page))
        .route("/maybe", get(maybe))
        .route("/api/data", get(|| async { "data" }))
        .route(
            "/api/cached",
            get(|| async { ([(CACHE_CONTROL, "max-age=60")], "cached") }),
        );
    Router::new()
        .merge(pages.clone())
        .nest("/embed", pages.clone())
        .nest("/raw", pages)
}

async fn preset() -> SocketAddr {
    serve_with(app(), SecurityLayer::new(Preset::Public)).await
}

async fn only_csp(csp: Csp) -> SocketAddr {
    let layer = SecurityLayer::bare()
        .csp(Some(csp))
        .build()
        .expect("valid layer");
    serve_with(app(), layer).await
}

#[tokio::test]
async fn the_default_csp_carries_a_128_bit_nonce() {
    let addr = preset().await;
    for path in ["/api/data", "/page", "/missing"] {
        let r = fetch(addr, path).await;
        let csp = r.header("content-security-policy").expect("CSP header");
        let nonce = nonce_in(csp).expect("a nonce");
        assert_eq!(
            csp,
            DEFAULT_CSP.replace("'nonce-N'", &format!("'nonce-{nonce}'"))
        );
        let raw = base64::engine::general_purpose::STANDARD
            .decode(&nonce)
            .expect("standard base64");
        assert!(raw.len() >= 16, "{path}: {} bytes", raw.len());
        assert_eq!(r.header("content-security-policy-report-only"), None);
    }
}

#[tokio::test]
async fn every_response_gets_a_fresh_nonce() {
    let addr = preset().await;
    let mut seen = HashSet::new();
    for _ in 0..50 {
        let r = fetch(addr, "/api/data").await;
        let nonce = nonce_in(r.header("content-security-policy").unwrap()).unwrap();
        assert!(seen.insert(nonce), "nonce repeated");
    }
    assert_eq!(seen.len(), 50);
}

#[tokio::test]
async fn the_handler_gets_the_nonce_of_the_response_header() {
    let addr = preset().await;
    for _ in 0..5 {
        let r = fetch(addr, "/page").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        let in_header = nonce_in(r.header("content-security-policy").unwrap());
        let in_page = nonce_in_page(&r.text());
        assert!(in_page.is_some());
        assert_eq!(in_page, in_header);
    }
}

#[tokio::test]
async fn nonced_html_is_no_store_even_when_the_handler_allowed_caching() {
    // Without the preset's API default, so only the nonce rule can add `no-store`.
    let addr = only_csp(Csp::default()).await;
    let r = fetch(addr, "/page").await;
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let r = fetch(addr, "/cached-page").await;
    assert!(nonce_in_page(&r.text()).is_some());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    // Other responses keep what the handler said (or nothing).
    let r = fetch(addr, "/api/cached").await;
    assert_eq!(r.header("cache-control"), Some("max-age=60"));
    let r = fetch(addr, "/api/data").await;
    assert_eq!(r.header("cache-control"), None);
}

#[tokio::test]
async fn preset_html_with_a_nonce_is_no_store() {
    let addr = preset().await;
    let r = fetch(addr, "/cached-page").await;
    assert_eq!(r.header("cache-control"), Some("no-store"));
}

#[tokio::test]
async fn a_report_only_policy_uses_the_report_only_header() {
    let addr = only_csp(Csp::default().report_only(true)).await;
    let r = fetch(addr, "/page").await;
    assert_eq!(r.header("content-security-policy"), None);
    let csp = r
        .header("content-security-policy-report-only")
        .expect("report-only header");
    let nonce = nonce_in(csp).expect("a nonce");
    assert_eq!(nonce_in_page(&r.text()), Some(nonce));
}

#[tokio::test]
async fn rejections_carry_the_csp_without_a_nonce() {
    let addr = preset().await;
    let r = send(addr, "DELETE", "/api/data", &[], "").await;
    assert_eq!(r.status, 405);
    assert_eq!(
        r.header("content-security-policy"),
        Some(DEFAULT_CSP.replace(" 'nonce-N'", "").as_str())
    );
}

async fn per_route() -> SocketAddr {
    let embed = Csp::new()
        .directive("default-src", ["'self'"])
        .unwrap()
        .directive("script-src", ["'nonce'"])
        .unwrap()
        .directive("frame-ancestors", ["https://partner.example"])
        .unwrap();
    let layer = SecurityLayer::builder()
        .default_policy(Preset::Public)
        .route(
            "/embed/**",
            Policy::preset(Preset::Public).csp(CspSetting::Custom(Arc::new(embed))),
        )
        .route(
            "/raw/**",
            Policy::preset(Preset::Public).csp(CspSetting::Off),
        )
        .build()
        .expect("valid layer");
    serve_with(app(), layer).await
}

#[tokio::test]
async fn a_route_can_have_its_own_csp() {
    let addr = per_route().await;
    let r = fetch(addr, "/embed/page").await;
    assert_eq!(r.status, 200);
    let csp = r.header("content-security-policy").unwrap();
    let nonce = nonce_in(csp).expect("a nonce");
    assert_eq!(
        csp,
        format!(
            "default-src 'self'; script-src 'nonce-{nonce}'; frame-ancestors https://partner.example"
        )
    );
    assert_eq!(nonce_in_page(&r.text()), Some(nonce));
    // Other paths keep the layer's policy.
    let r = fetch(addr, "/page").await;
    assert!(
        r.header("content-security-policy")
            .unwrap()
            .starts_with("default-src 'self'; script-src 'self' 'nonce-")
    );
}

#[tokio::test]
async fn a_route_can_turn_the_csp_off() {
    let addr = per_route().await;
    let r = fetch(addr, "/raw/api/data").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-security-policy"), None);
    assert_eq!(r.header("content-security-policy-report-only"), None);
    // The other security headers stay.
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    // No nonce is drawn, so a page asking for one fails closed.
    let r = fetch(addr, "/raw/page").await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["code"], "internal_error");
    assert_eq!(fetch(addr, "/raw/maybe").await.text(), "none");
    assert_eq!(fetch(addr, "/embed/maybe").await.text(), "nonce");
}

#[tokio::test]
async fn a_policy_without_placeholder_sends_no_nonce_and_the_extractor_answers_500() {
    let addr = only_csp(Csp::parse("default-src 'self'; frame-ancestors 'none'").unwrap()).await;
    let r = fetch(addr, "/api/data").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-security-policy"),
        Some("default-src 'self'; frame-ancestors 'none'")
    );

    let r = fetch(addr, "/page").await;
    assert_eq!(r.status, 500);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["code"], "internal_error");
    assert_eq!(v["error"], "Internal error");
    let id = r.header("x-request-id").expect("request id");
    assert_eq!(v["request_id"], id);
    // The error page carries the policy too, and still no nonce.
    assert_eq!(
        r.header("content-security-policy"),
        Some("default-src 'self'; frame-ancestors 'none'")
    );
    assert_eq!(fetch(addr, "/maybe").await.text(), "none");
}

#[tokio::test]
async fn a_client_cannot_choose_the_nonce() {
    let addr = preset().await;
    let r = send(
        addr,
        "GET",
        "/page",
        &[
            ("content-security-policy", "script-src 'nonce-attacker'"),
            ("x-nonce", "attacker"),
        ],
        "",
    )
    .await;
    let nonce = nonce_in(r.header("content-security-policy").unwrap()).unwrap();
    assert_ne!(nonce, "attacker");
    assert_eq!(nonce_in_page(&r.text()), Some(nonce));
}

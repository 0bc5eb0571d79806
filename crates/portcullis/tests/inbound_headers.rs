//! Inbound header stripping (DESIGN §2 step 3) over real TCP: what a client sends versus what
//! the application sees.

mod common;

use std::net::SocketAddr;

use axum::Router;
use common::*;
use portcullis::SecurityLayer;
use portcullis::headers::security::{HstsMode, SecurityHeaders};

async fn start(trusted: &[&str]) -> SocketAddr {
    // HSTS only over HTTPS, so a test can see whether a forged x-forwarded-proto was believed.
    let headers = SecurityHeaders::default().hsts_mode(HstsMode::HttpsOnly);
    let layer = SecurityLayer::builder()
        .security_headers(Some(headers))
        .trusted_proxies(trusted.iter().copied())
        .build()
        .expect("valid layer");
    serve_with(Router::new().fallback(echo), layer).await
}

/// The headers the application saw for a request with `headers`.
async fn app_sees(addr: SocketAddr, headers: &[(&str, &str)]) -> serde_json::Value {
    let r = send(addr, "GET", "/echo", headers, "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["headers"].clone()
}

/// Headers no client may set, whoever the peer is.
const ALWAYS_STRIPPED: &[(&str, &str)] = &[
    ("x-portcullis-user", "admin"),
    ("x-portcullis-roles", "admin,superuser"),
    ("x-portcullis-anything", "1"),
    ("x-middleware-rewrite", "/api/admin/users"),
    ("x-middleware-next", "1"),
    ("x-middleware-prefetch", "1"),
    ("x-invoke-path", "/api/admin/users"),
    ("x-invoke-query", "%7B%22admin%22%3A%221%22%7D"),
    ("x-invoke-status", "200"),
    ("x-matched-path", "/api/public-data"),
    ("x-now-route-matches", "1=admin"),
    ("x-nextjs-data", "1"),
    ("x-original-url", "/api/admin/users"),
    ("x-rewrite-url", "/api/admin/users"),
    ("content-security-policy", "script-src * 'unsafe-inline'"),
    (
        "content-security-policy-report-only",
        "script-src * 'unsafe-inline'",
    ),
    ("x-nonce", "attacker-chosen-nonce"),
];

/// Headers that name the client or the original request; kept only from a trusted proxy.
const FORWARDING: &[(&str, &str)] = &[
    ("x-forwarded-for", "6.6.6.6"),
    ("x-forwarded-host", "evil.example"),
    ("x-forwarded-proto", "https"),
    ("x-forwarded-port", "443"),
    ("x-forwarded-prefix", "/admin"),
    ("forwarded", "for=6.6.6.6;host=evil.example;proto=https"),
    ("x-real-ip", "6.6.6.6"),
    ("x-client-ip", "6.6.6.6"),
    ("true-client-ip", "6.6.6.6"),
    ("cf-connecting-ip", "6.6.6.6"),
    ("x-cluster-client-ip", "6.6.6.6"),
];

/// Headers that must reach the application exactly as sent.
const ORDINARY: &[(&str, &str)] = &[
    ("authorization", "Bearer abc.def.ghi"),
    ("cookie", "session=s1; theme=dark"),
    ("content-type", "application/json"),
    ("accept", "application/json, text/plain, */*"),
    ("user-agent", "portcullis-tests"),
    ("x-custom-app-header", "kept"),
];

#[tokio::test]
async fn nextjs_middleware_bypass_header_never_reaches_the_app() {
    // CVE-2025-29927: these values made Next.js skip middleware (auth) for the request.
    let addr = start(&[]).await;
    for value in [
        "middleware",
        "middleware:middleware:middleware:middleware:middleware",
        "src/middleware",
        "src/middleware:src/middleware:src/middleware:src/middleware:src/middleware",
        "pages/_middleware",
        "pages/api/_middleware",
    ] {
        let seen = app_sees(addr, &[("x-middleware-subrequest", value)]).await;
        assert!(
            seen.get("x-middleware-subrequest").is_none(),
            "{value}: {seen}"
        );
    }
    // Several lines of it are all removed.
    let seen = app_sees(
        addr,
        &[
            ("x-middleware-subrequest", "middleware"),
            ("x-middleware-subrequest", "src/middleware"),
        ],
    )
    .await;
    assert!(seen.get("x-middleware-subrequest").is_none(), "{seen}");
}

#[tokio::test]
async fn identity_and_framework_headers_are_stripped_from_an_untrusted_peer() {
    let addr = start(&[]).await;
    let seen = app_sees(addr, ALWAYS_STRIPPED).await;
    for (name, _) in ALWAYS_STRIPPED {
        assert!(seen.get(*name).is_none(), "{name} reached the app: {seen}");
    }
}

#[tokio::test]
async fn identity_and_framework_headers_are_stripped_from_a_trusted_proxy_too() {
    let addr = start(&["127.0.0.1/32"]).await;
    let mut sent = ALWAYS_STRIPPED.to_vec();
    sent.push((
        "x-middleware-subrequest",
        "middleware:middleware:middleware",
    ));
    let seen = app_sees(addr, &sent).await;
    for (name, _) in &sent {
        assert!(seen.get(*name).is_none(), "{name} reached the app: {seen}");
    }
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_peer_are_stripped() {
    let addr = start(&[]).await;
    let seen = app_sees(addr, FORWARDING).await;
    for (name, _) in FORWARDING {
        assert!(seen.get(*name).is_none(), "{name} reached the app: {seen}");
    }
    // Trusting some other range does not make this peer trusted.
    let addr = start(&["10.0.0.0/8"]).await;
    let seen = app_sees(addr, FORWARDING).await;
    for (name, _) in FORWARDING {
        assert!(seen.get(*name).is_none(), "{name} reached the app: {seen}");
    }
}

#[tokio::test]
async fn forwarding_headers_from_a_trusted_proxy_are_kept() {
    let addr = start(&["127.0.0.1/32"]).await;
    let seen = app_sees(addr, FORWARDING).await;
    for (name, value) in FORWARDING {
        assert_eq!(seen[*name], *value, "{name}: {seen}");
    }
}

#[tokio::test]
async fn ordinary_headers_are_untouched() {
    let addr = start(&[]).await;
    let mut sent = ORDINARY.to_vec();
    sent.extend_from_slice(ALWAYS_STRIPPED);
    sent.extend_from_slice(FORWARDING);
    let seen = app_sees(addr, &sent).await;
    for (name, value) in ORDINARY {
        assert_eq!(seen[*name], *value, "{name}: {seen}");
    }
}

/// Sends `lines` as raw header lines, spelled exactly as given.
async fn raw_app_sees(addr: SocketAddr, lines: &[&str]) -> serde_json::Value {
    let mut req = format!("GET /echo HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for l in lines {
        req.push_str(l);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    let r = send_raw(addr, req.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["headers"].clone()
}

#[tokio::test]
async fn mixed_case_header_names_are_stripped() {
    let addr = start(&[]).await;
    let seen = raw_app_sees(
        addr,
        &[
            "X-Middleware-Subrequest: middleware:middleware:middleware:middleware:middleware",
            "X-MIDDLEWARE-REWRITE: /admin",
            "x-InVoKe-PaTh: /admin",
            "X-Portcullis-User: admin",
            "X-PORTCULLIS-ROLES: admin",
            "X-Original-URL: /admin",
            "X-Rewrite-Url: /admin",
            "Content-Security-Policy: script-src *",
            "X-Nonce: n",
            "X-Forwarded-For: 6.6.6.6",
            "X-FORWARDED-HOST: evil.example",
            "Forwarded: for=6.6.6.6",
            "X-Real-IP: 6.6.6.6",
            "Authorization: Bearer kept",
        ],
    )
    .await;
    let obj = seen.as_object().expect("headers object");
    let names: Vec<&str> = obj.keys().map(String::as_str).collect();
    for forbidden in [
        "x-middleware-subrequest",
        "x-middleware-rewrite",
        "x-invoke-path",
        "x-portcullis-user",
        "x-portcullis-roles",
        "x-original-url",
        "x-rewrite-url",
        "content-security-policy",
        "x-nonce",
        "x-forwarded-for",
        "x-forwarded-host",
        "forwarded",
        "x-real-ip",
    ] {
        assert!(!names.contains(&forbidden), "{forbidden}: {seen}");
    }
    assert_eq!(seen["authorization"], "Bearer kept");
}

#[tokio::test]
async fn underscore_spellings_are_stripped_even_from_a_trusted_proxy() {
    // CGI, WSGI, PHP and Rack map `X_Forwarded_For` and `X-Forwarded-For` to the same
    // `HTTP_X_FORWARDED_FOR`, so an underscore spelling is a forgery whoever relays it.
    for trusted in [&[][..], &["127.0.0.1/32"][..]] {
        let addr = start(trusted).await;
        let seen = raw_app_sees(
            addr,
            &[
                "X_Forwarded_For: 6.6.6.6",
                "x_real_ip: 6.6.6.6",
                "X_Middleware_Subrequest: middleware",
                "x_portcullis_user: admin",
                "x_custom_header: kept",
            ],
        )
        .await;
        let obj = seen.as_object().expect("headers object");
        let names: Vec<&str> = obj.keys().map(String::as_str).collect();
        for forbidden in [
            "x_forwarded_for",
            "x_real_ip",
            "x_middleware_subrequest",
            "x_portcullis_user",
        ] {
            assert!(
                !names.contains(&forbidden),
                "{trusted:?} {forbidden}: {seen}"
            );
        }
        assert_eq!(seen["x_custom_header"], "kept");
    }
}

#[tokio::test]
async fn stripped_headers_are_not_used_by_the_layer_either() {
    // A forged x-forwarded-proto from an untrusted peer must not mark the request as HTTPS
    // (which would add HSTS) and a forged XFF must not pick the client address.
    let addr = start(&[]).await;
    let r = send(
        addr,
        "GET",
        "/echo",
        &[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-for", "6.6.6.6"),
        ],
        "",
    )
    .await;
    assert_eq!(r.json()["client_ip"], "127.0.0.1");
    assert!(
        r.header("strict-transport-security").is_none(),
        "{:?}",
        r.headers
    );
    // From a trusted proxy, both are believed.
    let addr = start(&["127.0.0.1/32"]).await;
    let r = send(
        addr,
        "GET",
        "/echo",
        &[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-for", "203.0.113.9"),
        ],
        "",
    )
    .await;
    assert_eq!(r.json()["client_ip"], "203.0.113.9");
    assert!(
        r.header("strict-transport-security").is_some(),
        "{:?}",
        r.headers
    );
}

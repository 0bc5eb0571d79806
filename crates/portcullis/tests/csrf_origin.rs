//! The CSRF origin check through `SecurityLayer` over real TCP: Go 1.25's own test table for
//! `net/http.CrossOriginProtection` (src/net/http/csrf_test.go, after the CVE-2025-47910 fix),
//! case for case, then bypass patterns on the canonical path, strict mode, public origins,
//! `Vary` and audit.
//!
//! Go's requests go to `https://example.com/…`, so `req.Host` is `example.com`: the cases here
//! send `Host: example.com`. Go's mux patterns are written in our glob syntax: a Go subtree
//! pattern `/p/` is `/p/**`, `{name}` is `*`.

mod common;

use std::sync::Arc;

use axum::Router;
use common::*;
use portcullis::audit::{MemorySink, Outcome};
use portcullis::csrf::{CsrfGuard, CsrfGuardBuilder, Mode};
use portcullis::policy::{CsrfMode, ReportOnly};
use portcullis::{Control, Policy, SecurityLayer};

/// A layer whose only control is the CSRF guard (origin mode), in front of a 200 for anything.
async fn start_with(guard: CsrfGuardBuilder, sink: Option<MemorySink>) -> std::net::SocketAddr {
    start_policy(guard, Policy::open().csrf(CsrfMode::Origin), sink).await
}

async fn start_policy(
    guard: CsrfGuardBuilder,
    policy: Policy,
    sink: Option<MemorySink>,
) -> std::net::SocketAddr {
    let mut layer = SecurityLayer::builder()
        .no_rate_limiter()
        .default_policy(policy)
        .csrf_guard(Arc::new(guard.build().expect("valid CSRF settings")));
    if let Some(sink) = sink {
        layer = layer.audit(Arc::new(sink));
    }
    let app = Router::new().fallback(|| async { "ok" });
    serve_with(app, layer.build().expect("valid layer")).await
}

/// One row of a Go table: method, path, `Sec-Fetch-Site`, `Origin` ("" = not sent), and the
/// status Go expects.
struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    sec_fetch_site: &'static str,
    origin: &'static str,
    want: u16,
}

const fn case(
    name: &'static str,
    method: &'static str,
    path: &'static str,
    sec_fetch_site: &'static str,
    origin: &'static str,
    want: u16,
) -> Case {
    Case {
        name,
        method,
        path,
        sec_fetch_site,
        origin,
        want,
    }
}

async fn run(addr: std::net::SocketAddr, host: &str, cases: &[Case]) {
    let mut failures = Vec::new();
    for c in cases {
        let mut headers = vec![("host", host)];
        if !c.sec_fetch_site.is_empty() {
            headers.push(("sec-fetch-site", c.sec_fetch_site));
        }
        if !c.origin.is_empty() {
            headers.push(("origin", c.origin));
        }
        let r = send(addr, c.method, c.path, &headers, "").await;
        if r.status != c.want {
            failures.push(format!("{}: got {}, want {}", c.name, r.status, c.want));
        }
        if r.status == 403 {
            assert_eq!(r.json()["code"], "csrf_origin_mismatch", "{}", c.name);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn go_table_sec_fetch_site() {
    // TestCrossOriginProtectionSecFetchSite: no trusted origins, no bypasses.
    let addr = start_with(CsrfGuard::builder(), None).await;
    let cases = [
        case("same-origin allowed", "POST", "/", "same-origin", "", 200),
        case("none allowed", "POST", "/", "none", "", 200),
        case("cross-site blocked", "POST", "/", "cross-site", "", 403),
        case("same-site blocked", "POST", "/", "same-site", "", 403),
        case("no header with no origin", "POST", "/", "", "", 200),
        case(
            "no header with matching origin",
            "POST",
            "/",
            "",
            "https://example.com",
            200,
        ),
        case(
            "no header with mismatched origin",
            "POST",
            "/",
            "",
            "https://attacker.example",
            403,
        ),
        case("no header with null origin", "POST", "/", "", "null", 403),
        case("GET allowed", "GET", "/", "cross-site", "", 200),
        case("HEAD allowed", "HEAD", "/", "cross-site", "", 200),
        case("OPTIONS allowed", "OPTIONS", "/", "cross-site", "", 200),
        case("PUT blocked", "PUT", "/", "cross-site", "", 403),
    ];
    run(addr, "example.com", &cases).await;
}

/// No browser sends `Sec-Fetch-Site` or `Origin` twice. A request that does is refused
/// whichever value comes first (Go's `Header.Get` would read the first), since an
/// application behind may read the other one; safe methods still pass.
#[tokio::test]
async fn repeated_fetch_metadata_or_origin_is_refused() {
    let sink = MemorySink::default();
    let addr = start_with(CsrfGuard::builder(), Some(sink.clone())).await;
    let host = ("host", "example.com");
    let repeated: [[(&str, &str); 2]; 4] = [
        [
            ("sec-fetch-site", "same-origin"),
            ("sec-fetch-site", "cross-site"),
        ],
        [
            ("sec-fetch-site", "none"),
            ("sec-fetch-site", "same-origin"),
        ],
        [
            ("origin", "https://example.com"),
            ("origin", "https://attacker.example"),
        ],
        [
            ("origin", "https://example.com"),
            ("origin", "https://example.com"),
        ],
    ];
    for pair in repeated {
        let headers = [host, pair[0], pair[1]];
        let r = send(addr, "POST", "/", &headers, "").await;
        assert_eq!(r.status, 403, "{pair:?}");
        assert_eq!(r.json()["code"], "csrf_origin_mismatch", "{pair:?}");
        assert!(
            r.json()["error"].as_str().unwrap().contains("twice"),
            "{pair:?}"
        );
        let r = send(addr, "GET", "/", &headers, "").await;
        assert_eq!(r.status, 200, "a safe method: {pair:?}");
    }
    let events = sink.events();
    assert_eq!(events.len(), 4);
    assert!(
        events
            .iter()
            .all(|e| e.action.as_str() == "csrf_validation_failed")
    );
    // One of each still passes.
    let one = [
        host,
        ("sec-fetch-site", "same-origin"),
        ("origin", "https://example.com"),
    ];
    assert_eq!(send(addr, "POST", "/", &one, "").await.status, 200);
}

#[tokio::test]
async fn go_table_trusted_origin_bypass() {
    // TestCrossOriginProtectionTrustedOriginBypass.
    let guard = CsrfGuard::builder().trusted_origins(["https://trusted.example"]);
    let addr = start_with(guard, None).await;
    let t = "https://trusted.example";
    let a = "https://attacker.example";
    let cases = [
        case(
            "trusted origin without sec-fetch-site",
            "POST",
            "/",
            "",
            t,
            200,
        ),
        case(
            "trusted origin with cross-site",
            "POST",
            "/",
            "cross-site",
            t,
            200,
        ),
        case(
            "untrusted origin without sec-fetch-site",
            "POST",
            "/",
            "",
            a,
            403,
        ),
        case(
            "untrusted origin with cross-site",
            "POST",
            "/",
            "cross-site",
            a,
            403,
        ),
    ];
    run(addr, "example.com", &cases).await;
}

#[tokio::test]
async fn go_table_pattern_bypass() {
    // TestCrossOriginProtectionPatternBypass. Go's patterns, in our syntax:
    // "/bypass/" → "/bypass/**", "/only/{foo}" → "/only/*", "/no-trailing" → "/no-trailing",
    // "/yes-trailing/" → "/yes-trailing/**", "PUT /put-only/" → "PUT /put-only/**", ...
    let guard = CsrfGuard::builder().bypass([
        "/bypass/**",
        "/only/*",
        "/no-trailing",
        "/yes-trailing/**",
        "PUT /put-only/**",
        "GET /get-only/**",
        "POST /post-only/**",
    ]);
    let addr = start_with(guard, None).await;
    let a = "https://attacker.example";
    let cases = [
        case(
            "bypass path without sec-fetch-site",
            "POST",
            "/bypass/",
            "",
            a,
            200,
        ),
        case(
            "bypass path with cross-site",
            "POST",
            "/bypass/",
            "cross-site",
            a,
            200,
        ),
        case(
            "non-bypass path without sec-fetch-site",
            "POST",
            "/api/",
            "",
            a,
            403,
        ),
        case(
            "non-bypass path with cross-site",
            "POST",
            "/api/",
            "cross-site",
            a,
            403,
        ),
        // The one deliberate difference. Go refuses because its mux would only *redirect*
        // this path to the bypassed pattern (the CVE-2025-47910 fix). The layer instead
        // canonicalizes it and hands the application `/bypass/bar` itself, so the bypass
        // is matched on exactly what is served; see `dot_segments_cannot_reach_a_bypass`.
        case(
            "redirect to bypass path without .. (canonical /bypass/bar: bypassed)",
            "POST",
            "/foo/../bypass/bar",
            "",
            a,
            200,
        ),
        case(
            "redirect to bypass path with trailing slash",
            "POST",
            "/bypass",
            "",
            a,
            403,
        ),
        case(
            "redirect to non-bypass path with ..",
            "POST",
            "/foo/../api/bar",
            "",
            a,
            403,
        ),
        case(
            "redirect to non-bypass path with trailing slash",
            "POST",
            "/api",
            "",
            a,
            403,
        ),
        case("wildcard bypass", "POST", "/only/123", "", a, 200),
        case("non-wildcard", "POST", "/only/123/foo", "", a, 403),
        case(
            "no trailing slash exact match",
            "POST",
            "/no-trailing",
            "",
            a,
            200,
        ),
        case(
            "no trailing slash with slash",
            "POST",
            "/no-trailing/",
            "",
            a,
            403,
        ),
        case(
            "yes trailing slash exact match",
            "POST",
            "/yes-trailing/",
            "",
            a,
            200,
        ),
        case(
            "yes trailing slash without slash",
            "POST",
            "/yes-trailing",
            "",
            a,
            403,
        ),
        case("method-specific hit", "POST", "/post-only/", "", a, 200),
        case(
            "method-specific miss (PUT)",
            "POST",
            "/put-only/",
            "",
            a,
            403,
        ),
        case(
            "method-specific miss (GET)",
            "POST",
            "/get-only/",
            "",
            a,
            403,
        ),
    ];
    run(addr, "example.com", &cases).await;
}

#[tokio::test]
async fn go_table_deny_handler_decisions() {
    // TestCrossOriginProtectionSetDenyHandler: the decisions (403, GET 200, 403). Our deny
    // "handler" is the one JSON error, checked by `run`.
    let addr = start_with(CsrfGuard::builder(), None).await;
    let cases = [
        case("cross-site POST denied", "POST", "/", "cross-site", "", 403),
        case("GET allowed", "GET", "/", "", "", 200),
        case(
            "cross-site POST denied again",
            "POST",
            "/",
            "cross-site",
            "",
            403,
        ),
    ];
    run(addr, "example.com", &cases).await;
}

#[test]
fn go_table_add_trusted_origin_errors() {
    // TestCrossOriginProtectionAddTrustedOriginErrors: refused at build time.
    let cases = [
        ("valid origin", "https://example.com", false),
        ("valid origin with port", "https://example.com:8080", false),
        ("http origin", "http://example.com", false),
        ("missing scheme", "example.com", true),
        ("missing host", "https://", true),
        ("trailing slash", "https://example.com/", true),
        ("with path", "https://example.com/path", true),
        ("with query", "https://example.com?query=value", true),
        ("with fragment", "https://example.com#fragment", true),
        ("invalid url", "https://ex ample.com", true),
        ("empty string", "", true),
        ("null", "null", true),
    ];
    for (name, origin, want_err) in cases {
        let built = CsrfGuard::builder().trusted_origins([origin]).build();
        assert_eq!(built.is_err(), want_err, "{name}: {origin:?}");
    }
}

#[tokio::test]
async fn go_table_adding_bypasses() {
    // TestCrossOriginProtectionAddingBypassesConcurrently: refused, then allowed once the
    // origin is trusted. Our settings are immutable once built (no lock on the request path):
    // adding an origin means building a new guard, so "after" is a second layer.
    let before = start_with(CsrfGuard::builder(), None).await;
    let after = start_with(
        CsrfGuard::builder()
            .trusted_origins(["https://concurrent.example"])
            .bypass(["/foo/**"]),
        None,
    )
    .await;
    let c = [case(
        "concurrent.example cross-site",
        "POST",
        "/",
        "cross-site",
        "https://concurrent.example",
        403,
    )];
    run(before, "example.com", &c).await;
    let c = [case(
        "after adding the trusted origin",
        "POST",
        "/",
        "cross-site",
        "https://concurrent.example",
        200,
    )];
    run(after, "example.com", &c).await;
}

#[tokio::test]
async fn go_table_server() {
    // TestCrossOriginProtectionServer: a real server, its own Host and URL.
    let guard = CsrfGuard::builder()
        .trusted_origins(["https://trusted.example"])
        .bypass(["/bypass/**"]);
    let addr = start_with(guard, None).await;
    let own = format!("http://{addr}");
    let own: &'static str = Box::leak(own.into_boxed_str());
    let host: &'static str = Box::leak(addr.to_string().into_boxed_str());
    let a = "https://attacker.example";
    let cases = [
        case("cross-site", "POST", "/", "cross-site", a, 403),
        case("same-origin", "POST", "/", "same-origin", "", 200),
        case("origin matches host", "POST", "/", "", own, 200),
        case(
            "trusted origin",
            "POST",
            "/",
            "",
            "https://trusted.example",
            200,
        ),
        case("untrusted origin", "POST", "/", "", a, 403),
        case("bypass path", "POST", "/bypass/", "", a, 200),
    ];
    run(addr, host, &cases).await;
}

#[tokio::test]
async fn bypass_patterns_match_the_canonical_path() {
    let addr = start_with(CsrfGuard::builder().bypass(["/api/webhooks/**"]), None).await;
    let a = "https://attacker.example";
    let cases = [
        case("bypassed", "POST", "/api/webhooks/x", "cross-site", a, 200),
        case(
            "bypassed, canonical",
            "POST",
            "/api//webhooks/./x",
            "",
            a,
            200,
        ),
        case("encoded letters", "POST", "/api/%77ebhooks/x", "", a, 200),
        case("case variant", "POST", "/api/Webhooks/x", "", a, 403),
        case("sibling", "POST", "/api/webhooksx", "", a, 403),
        case("parent", "POST", "/api/webhooks", "", a, 403),
    ];
    run(addr, "example.com", &cases).await;
}

#[tokio::test]
async fn dot_segments_cannot_reach_a_bypass() {
    // `/api/webhooks/../admin` is `/api/admin`: what the application gets, so never bypassed.
    let addr = start_with(CsrfGuard::builder().bypass(["/api/webhooks/**"]), None).await;
    for target in [
        "/api/webhooks/../admin",
        "/api/webhooks/%2e%2e/admin",
        "/api/webhooks/x/../../admin",
    ] {
        let raw = format!(
            "POST {target} HTTP/1.1\r\nHost: example.com\r\nSec-Fetch-Site: cross-site\r\n\
             Origin: https://attacker.example\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let r = send_raw(addr, raw.as_bytes()).await;
        assert_eq!(r.status, 403, "{target}: {}", r.text());
        assert_eq!(r.json()["code"], "csrf_origin_mismatch");
    }
}

#[tokio::test]
async fn requests_without_either_header_pass_lenient_and_fail_strict() {
    let lenient = start_with(CsrfGuard::builder().mode(Mode::Lenient), None).await;
    let strict = start_with(
        CsrfGuard::builder()
            .mode(Mode::Strict)
            .bypass(["/hooks/**"]),
        None,
    )
    .await;
    let r = send(lenient, "POST", "/x", &[], "").await;
    assert_eq!(r.status, 200);
    let r = send(strict, "POST", "/x", &[], "").await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["code"], "csrf_origin_mismatch");
    // Strict changes nothing else: browser headers and bypasses still decide.
    let r = send(
        strict,
        "POST",
        "/x",
        &[("sec-fetch-site", "same-origin")],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    let r = send(strict, "POST", "/hooks/a", &[], "").await;
    assert_eq!(r.status, 200);
    let r = send(strict, "GET", "/x", &[], "").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn public_origins_stand_in_for_a_rewritten_host() {
    let guard = CsrfGuard::builder().public_origins(["https://app.example:443"]);
    let addr = start_with(guard, None).await;
    let cases = [
        case(
            "browser origin, default port",
            "POST",
            "/",
            "",
            "https://app.example",
            200,
        ),
        case("scheme differs", "POST", "/", "", "http://app.example", 403),
        case(
            "port differs",
            "POST",
            "/",
            "",
            "https://app.example:8443",
            403,
        ),
        case("another site", "POST", "/", "", "https://evil.example", 403),
        case(
            "cross-site stays refused",
            "POST",
            "/",
            "cross-site",
            "https://app.example",
            403,
        ),
    ];
    run(addr, "10.0.0.5:8080", &cases).await;
}

#[tokio::test]
async fn unsafe_responses_vary_on_fetch_metadata_and_origin() {
    let addr = start_with(CsrfGuard::builder(), None).await;
    let ok = send(addr, "POST", "/", &[("sec-fetch-site", "same-origin")], "").await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("vary"), Some("Sec-Fetch-Site, Origin"));
    let refused = send(addr, "POST", "/", &[("sec-fetch-site", "cross-site")], "").await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.header("vary"), Some("Sec-Fetch-Site, Origin"));
    // A GET never depends on them: no Vary that would split caches for nothing.
    let get = send(addr, "GET", "/", &[("sec-fetch-site", "cross-site")], "").await;
    assert_eq!(get.header("vary"), None);
}

#[tokio::test]
async fn vary_is_merged_with_the_application_s() {
    let layer = SecurityLayer::builder()
        .no_rate_limiter()
        .default_policy(Policy::open().csrf(CsrfMode::Origin))
        .csrf_guard(Arc::new(CsrfGuard::builder().build().unwrap()))
        .build()
        .unwrap();
    let app = Router::new().fallback(|| async { ([("vary", "Accept-Encoding, origin")], "ok") });
    let addr = serve_with(app, layer).await;
    let r = send(addr, "POST", "/", &[("sec-fetch-site", "same-origin")], "").await;
    assert_eq!(r.headers.get_all("vary").iter().count(), 1);
    assert_eq!(
        r.header("vary"),
        Some("Accept-Encoding, origin, Sec-Fetch-Site")
    );
}

#[tokio::test]
async fn routes_without_csrf_are_not_checked() {
    let addr = start_policy(CsrfGuard::builder(), Policy::open(), None).await;
    let r = send(addr, "POST", "/", &[("sec-fetch-site", "cross-site")], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("vary"), None);
}

#[tokio::test]
async fn refusals_are_audited_as_csrf_validation_failed() {
    let sink = MemorySink::default();
    let addr = start_with(CsrfGuard::builder(), Some(sink.clone())).await;
    let r = send(
        addr,
        "POST",
        "/api/notes?x=1",
        &[("sec-fetch-site", "cross-site")],
        "",
    )
    .await;
    assert_eq!(r.status, 403);
    let events = sink.events();
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e.action.as_str(), "csrf_validation_failed");
    assert_eq!(e.outcome, Outcome::Denied);
    assert_eq!(e.status, 403);
    assert_eq!(e.path, "/api/notes");
    assert_eq!(e.metadata["control"], "csrf");
    assert_eq!(e.metadata["code"], "csrf_origin_mismatch");
    assert!(
        e.metadata["reason"]
            .as_str()
            .unwrap()
            .contains("Sec-Fetch-Site")
    );
}

#[tokio::test]
async fn report_only_lets_a_cross_site_post_through_and_audits_it() {
    let sink = MemorySink::default();
    let policy = Policy::open()
        .csrf(CsrfMode::Origin)
        .report_only(ReportOnly::Controls(vec![Control::Csrf]));
    let addr = start_policy(CsrfGuard::builder(), policy, Some(sink.clone())).await;
    let r = send(addr, "POST", "/", &[("sec-fetch-site", "cross-site")], "").await;
    assert_eq!(r.status, 200);
    let events = sink.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].outcome, Outcome::ReportOnly);
    assert_eq!(events[0].action.as_str(), "csrf_validation_failed");
}

/// A WebSocket handshake is a GET, but what it opens carries the caller's cookies both ways:
/// a cross-site page must not open it (cross-site WebSocket hijacking). The origin check
/// applies to it as to a POST; other GETs, clients without browser headers, trusted origins
/// and routes without CSRF are let through as before.
#[tokio::test]
async fn cross_site_websocket_handshakes_are_refused() {
    let sink = MemorySink::default();
    let guard = CsrfGuard::builder().trusted_origins(["https://partner.example"]);
    let addr = start_with(guard, Some(sink.clone())).await;
    let ws = [("upgrade", "websocket"), ("connection", "Upgrade")];
    let get = |extra: &[(&'static str, &'static str)], upgrade: bool| {
        let mut h: Vec<(&str, &str)> = vec![("host", "example.com")];
        if upgrade {
            h.extend_from_slice(&ws);
        }
        h.extend_from_slice(extra);
        async move { send(addr, "GET", "/chat", &h, "").await }
    };
    let cross = [("origin", "https://evil.example")];
    let r = get(&cross, true).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["code"], "csrf_origin_mismatch");
    let r = get(
        &[
            ("sec-fetch-site", "cross-site"),
            ("origin", "https://evil.example"),
        ],
        true,
    )
    .await;
    assert_eq!(r.status, 403);
    let r = get(&[("upgrade", "WebSocket")][..], false).await;
    assert_eq!(r.status, 200, "no Origin: not a browser");
    for ok in [
        &[("origin", "https://example.com")][..],
        &[
            ("sec-fetch-site", "same-origin"),
            ("origin", "https://example.com"),
        ][..],
        &[("origin", "https://partner.example")][..],
        &[][..],
    ] {
        assert_eq!(get(ok, true).await.status, 200, "{ok:?}");
    }
    // A plain cross-site GET stays a safe request.
    assert_eq!(get(&cross, false).await.status, 200);
    assert_eq!(sink.events().len(), 2);

    // CSRF off on the route: not checked.
    let off = start_policy(
        CsrfGuard::builder(),
        Policy::open().csrf(CsrfMode::Off),
        None,
    )
    .await;
    let mut h = vec![("host", "example.com"), ("origin", "https://evil.example")];
    h.extend_from_slice(&ws);
    assert_eq!(send(off, "GET", "/chat", &h, "").await.status, 200);
}

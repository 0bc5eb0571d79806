//! CORS end to end over real TCP: preflights answered by the layer, actual responses and the
//! layer's own errors decorated, exact-origin matching, configuration errors.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{any, get};
use common::*;
use http::Method;
use portcullis::audit::{MemorySink, Outcome};
use portcullis::cors::Cors;
use portcullis::{Policy, Preset, SecurityLayer};

const APP: &str = "https://app.example.com";

fn listed() -> Cors {
    Cors::new()
        .allow_origins([APP, "http://localhost:3000"])
        .unwrap()
        .allow_credentials(true)
        .expose_headers(["x-request-id"])
        .unwrap()
}

async fn start_with(cors: Cors, sink: MemorySink) -> SocketAddr {
    let layer = SecurityLayer::builder()
        .cors(Some(cors))
        .route(
            "/api/items",
            Policy::preset(Preset::Public).methods([Method::GET]),
        )
        .route(
            "/api/notes",
            Policy::preset(Preset::Public).methods([Method::GET, Method::PUT, Method::POST]),
        )
        .route("/api/account", Preset::Authenticated)
        .audit(Arc::new(sink))
        .build()
        .unwrap();
    let router = Router::new()
        .route("/api/items", get(|| async { "items" }))
        .route("/api/notes", any(echo))
        .route("/api/account", any(|| async { "account" }))
        .route(
            "/api/reflecting",
            get(|| async {
                (
                    [
                        ("vary", "Accept-Encoding"),
                        ("access-control-allow-origin", "https://evil.example"),
                        ("access-control-allow-credentials", "true"),
                    ],
                    "reflecting",
                )
            }),
        );
    serve_with(router, layer).await
}

async fn start(cors: Cors) -> SocketAddr {
    start_with(cors, MemorySink::default()).await
}

async fn preflight(
    addr: SocketAddr,
    path: &str,
    origin: &str,
    method: &str,
    headers: &str,
) -> Reply {
    let mut h = vec![
        ("origin", origin),
        ("access-control-request-method", method),
    ];
    if !headers.is_empty() {
        h.push(("access-control-request-headers", headers));
    }
    send(addr, "OPTIONS", path, &h, "").await
}

async fn get_from(addr: SocketAddr, path: &str, origin: &str) -> Reply {
    send(addr, "GET", path, &[("origin", origin)], "").await
}

fn vary_tokens(r: &Reply) -> Vec<String> {
    r.headers
        .get_all("vary")
        .iter()
        .flat_map(|v| v.to_str().unwrap().split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect()
}

fn assert_denied_preflight(r: &Reply) {
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["code"], "cors_preflight_denied");
    assert_eq!(r.json()["request_id"], r.header("x-request-id").unwrap());
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(r.header("access-control-allow-credentials"), None);
    assert_eq!(r.header("access-control-allow-methods"), None);
    assert_eq!(r.header("access-control-allow-headers"), None);
    assert_eq!(
        vary_tokens(r),
        [
            "origin",
            "access-control-request-method",
            "access-control-request-headers"
        ]
    );
}

#[tokio::test]
async fn preflight_from_a_listed_origin_gets_204_with_exact_headers() {
    let addr = start(listed()).await;
    let r = preflight(addr, "/api/notes", APP, "PUT", "Content-Type, X-CSRF-Token").await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(r.body.is_empty());
    assert_eq!(r.header("access-control-allow-origin"), Some(APP));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("GET, PUT, POST")
    );
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("content-type, authorization, x-csrf-token, x-requested-with")
    );
    assert_eq!(r.header("access-control-max-age"), Some("600"));
    assert_eq!(
        r.header("vary"),
        Some("Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
    );
    assert_eq!(r.headers.get_all("vary").iter().count(), 1);
    assert_eq!(r.header("access-control-expose-headers"), None);
    assert_eq!(
        r.headers
            .get_all("access-control-allow-origin")
            .iter()
            .count(),
        1
    );
    assert!(r.header("x-request-id").is_some());
}

#[tokio::test]
async fn preflight_honours_configured_methods_headers_and_max_age() {
    let cors = Cors::new()
        .allow_origin(APP)
        .unwrap()
        .allow_methods([Method::GET, Method::PUT, Method::DELETE])
        .allow_headers(["X-Api-Key"])
        .unwrap()
        .max_age(Duration::from_secs(90));
    let addr = start(cors).await;
    let r = preflight(addr, "/api/notes", APP, "PUT", "x-api-key").await;
    assert_eq!(r.status, 204, "{}", r.text());
    // The CORS list narrowed to what the route allows.
    assert_eq!(r.header("access-control-allow-methods"), Some("GET, PUT"));
    assert_eq!(r.header("access-control-allow-headers"), Some("x-api-key"));
    assert_eq!(r.header("access-control-max-age"), Some("90"));
    assert_eq!(r.header("access-control-allow-credentials"), None);
    // Listed by CORS but not by the route, and allowed by the route but not by CORS.
    assert_denied_preflight(&preflight(addr, "/api/notes", APP, "DELETE", "").await);
    assert_denied_preflight(&preflight(addr, "/api/notes", APP, "POST", "").await);
    // The default headers are replaced, not extended.
    assert_denied_preflight(&preflight(addr, "/api/notes", APP, "PUT", "authorization").await);
}

#[tokio::test]
async fn preflight_from_an_unlisted_origin_is_denied_and_audited() {
    let sink = MemorySink::default();
    let addr = start_with(listed(), sink.clone()).await;
    let r = preflight(addr, "/api/notes", "https://evil.example", "PUT", "").await;
    assert_denied_preflight(&r);
    assert!(!r.text().contains("evil"));
    let events = sink.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].action.as_str(), "security_event");
    assert_eq!(events[0].outcome, Outcome::Denied);
    assert_eq!(events[0].status, 403);
    assert_eq!(events[0].metadata["code"], "cors_preflight_denied");
    assert_eq!(events[0].metadata["control"], "cors");
}

#[tokio::test]
async fn preflight_with_a_method_outside_the_route_is_denied() {
    let addr = start(listed()).await;
    assert_denied_preflight(&preflight(addr, "/api/notes", APP, "DELETE", "").await);
    assert_denied_preflight(&preflight(addr, "/api/items", APP, "POST", "").await);
    // Methods are case-sensitive: "put" is not PUT.
    assert_denied_preflight(&preflight(addr, "/api/notes", APP, "put", "").await);
}

#[tokio::test]
async fn preflight_with_a_header_outside_the_list_is_denied_without_echoing_it() {
    let addr = start(listed()).await;
    let r = preflight(
        addr,
        "/api/notes",
        APP,
        "PUT",
        "content-type, x-evil-header",
    )
    .await;
    assert_denied_preflight(&r);
    assert!(!r.text().contains("x-evil-header"));
    // Safelisted names are always allowed and then named in the answer.
    let r = preflight(addr, "/api/notes", APP, "PUT", "accept-language").await;
    assert_eq!(r.status, 204);
    assert!(
        r.header("access-control-allow-headers")
            .is_some_and(|v| v.ends_with(", accept-language"))
    );
}

#[tokio::test]
async fn preflight_is_answered_before_authentication() {
    let addr = start(listed()).await;
    let r = preflight(addr, "/api/account", APP, "DELETE", "authorization").await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("GET, HEAD, POST, PUT, PATCH, DELETE")
    );
    // The actual request then meets authentication; the browser can read the 401.
    let r = send(addr, "DELETE", "/api/account", &[("origin", APP)], "").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("access-control-allow-origin"), Some(APP));
}

#[tokio::test]
async fn get_from_a_listed_origin_gets_acao_credentials_expose_and_vary() {
    let addr = start(listed()).await;
    for (origin, sent) in [
        (APP, APP),
        ("http://localhost:3000", "http://localhost:3000"),
        ("HTTPS://APP.EXAMPLE.COM", APP),
    ] {
        let r = get_from(addr, "/api/items", origin).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "items");
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some(sent),
            "{origin}"
        );
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        assert_eq!(
            r.header("access-control-expose-headers"),
            Some("x-request-id")
        );
        assert_eq!(vary_tokens(&r), ["origin"]);
    }
}

#[tokio::test]
async fn get_from_unlisted_origins_gets_no_cors_headers() {
    let addr = start(listed()).await;
    for origin in [
        "https://evil.example",
        "https://app.example.com.evil.com",
        "https://evilapp.example.com",
        "https://sub.app.example.com",
        "https://app.example.co",
        "null",
        "http://app.example.com",
        "https://app.example.com:8443",
        "https://app.example.com:443",
        "https://app.example.com/",
        "http://localhost:3001",
        "http://localhost",
        "https://localhost:3000",
        "",
    ] {
        let r = get_from(addr, "/api/items", origin).await;
        assert_eq!(r.status, 200, "{origin}");
        assert_eq!(r.header("access-control-allow-origin"), None, "{origin:?}");
        assert_eq!(
            r.header("access-control-allow-credentials"),
            None,
            "{origin:?}"
        );
        assert_eq!(
            r.header("access-control-expose-headers"),
            None,
            "{origin:?}"
        );
        assert_eq!(vary_tokens(&r), ["origin"], "{origin:?}");
    }
}

#[tokio::test]
async fn a_response_without_origin_only_varies() {
    let addr = start(listed()).await;
    let r = fetch(addr, "/api/items").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(r.header("vary"), Some("Origin"));
}

#[tokio::test]
async fn any_origin_mode_sends_star_and_never_credentials() {
    let addr = start(Cors::new().allow_any_origin()).await;
    let r = get_from(addr, "/api/items", "https://whoever.example").await;
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("access-control-allow-credentials"), None);
    assert_eq!(vary_tokens(&r), ["origin"]);
    let r = preflight(
        addr,
        "/api/notes",
        "https://whoever.example",
        "PUT",
        "content-type",
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("access-control-allow-credentials"), None);

    // Credentials with any origin are refused when the layer is built.
    let err = SecurityLayer::builder()
        .cors(Some(Cors::new().allow_any_origin().allow_credentials(true)))
        .build()
        .unwrap_err();
    assert_eq!(err.key, "cors");
}

#[tokio::test]
async fn a_layer_rejection_to_a_listed_origin_is_readable() {
    let addr = start(listed()).await;
    let r = send(addr, "DELETE", "/api/items", &[("origin", APP)], "").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.json()["code"], "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET"));
    assert_eq!(r.header("access-control-allow-origin"), Some(APP));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(vary_tokens(&r), ["origin"]);

    let r = send(
        addr,
        "DELETE",
        "/api/items",
        &[("origin", "https://evil.example")],
        "",
    )
    .await;
    assert_eq!(r.status, 405);
    assert_eq!(r.header("access-control-allow-origin"), None);
}

#[tokio::test]
async fn application_vary_is_kept_and_its_cors_headers_replaced() {
    let addr = start(listed()).await;
    let r = get_from(addr, "/api/reflecting", APP).await;
    assert_eq!(r.header("vary"), Some("Accept-Encoding, Origin"));
    assert_eq!(r.headers.get_all("vary").iter().count(), 1);
    assert_eq!(r.header("access-control-allow-origin"), Some(APP));
    let r = get_from(addr, "/api/reflecting", "https://evil.example").await;
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(r.header("access-control-allow-credentials"), None);
    assert_eq!(vary_tokens(&r), ["accept-encoding", "origin"]);
}

#[test]
fn configuration_errors_name_the_bad_value() {
    let err = Cors::new()
        .allow_any_origin()
        .allow_credentials(true)
        .validate()
        .unwrap_err();
    assert!(err.to_string().contains("allow_credentials"), "{err}");
    for bad in [
        "https://app.example.com/app",
        "https://app.example.com/",
        "https://*.example.com",
        "*",
        "null",
        "https://user@app.example.com",
        "https://app.example.com?x=1",
        "app.example.com",
    ] {
        let err = Cors::new().allow_origin(bad).unwrap_err();
        assert!(err.to_string().contains(bad), "{err}");
    }
    assert!(Cors::new().allow_headers(["*"]).is_err());
    assert!(Cors::new().expose_headers(["not a header"]).is_err());
    // Equal after normalisation: both spellings are the same origin.
    let cors = Cors::new()
        .allow_origin("HTTPS://App.Example.com:443")
        .unwrap();
    assert!(cors.allows_origin(APP));
    assert!(cors.validate().is_ok());
}

/// CORS in report-only: a preflight it would refuse is audited `report_only` and goes on to
/// the application, as before the roll-out — whatever CORS the application has answers it
/// (the layer adds no Access-Control-* of its own), and the method allowlist does not judge
/// it. An allowed preflight is still answered by the layer.
#[tokio::test]
async fn a_refused_preflight_in_report_only_reaches_the_application() {
    use portcullis::Control;
    use portcullis::policy::ReportOnly;
    let sink = MemorySink::default();
    let layer = SecurityLayer::builder()
        .cors(Some(listed()))
        .route(
            "/api/items",
            Policy::preset(Preset::Public)
                .methods([Method::GET])
                .report_only(ReportOnly::Controls(vec![Control::Cors])),
        )
        .audit(Arc::new(sink.clone()))
        .build()
        .unwrap();
    let router = Router::new().route(
        "/api/items",
        any(|method: Method| async move { format!("app saw {method}") }),
    );
    let addr = serve_with(router, layer).await;
    let r = preflight(addr, "/api/items", "https://evil.example", "PUT", "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "app saw OPTIONS");
    assert_eq!(r.header("access-control-allow-origin"), None);
    let events = sink.events();
    let last = events.last().expect("audited");
    assert_eq!(last.outcome, Outcome::ReportOnly);
    assert_eq!(last.metadata["code"], "cors_preflight_denied");
    // An allowed one is answered by the layer as ever.
    let r = preflight(addr, "/api/items", APP, "GET", "").await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), Some(APP));
    // A plain OPTIONS is still judged by the method allowlist.
    let r = send(addr, "OPTIONS", "/api/items", &[], "").await;
    assert_eq!(r.status, 405);
}

//! SecurityLayer end to end over real TCP: order, error body, request ids, report-only.

mod common;

use std::sync::Arc;

use axum::Router;
use axum::routing::{any, get};
use common::*;
use portcullis::audit::{MemorySink, Outcome};
use portcullis::policy::ReportOnly;
use portcullis::{Control, Policy, Preset, SecurityLayer};

async fn start(sink: MemorySink) -> std::net::SocketAddr {
    let layer = SecurityLayer::builder()
        .default_policy(Preset::Public)
        .route(
            "/api/admin/**",
            Policy::preset(Preset::Strict).roles(["admin"]),
        )
        .route(
            "/api/trial/**",
            Policy::preset(Preset::Public)
                .methods([http::Method::GET])
                .report_only(ReportOnly::Controls(vec![Control::Methods])),
        )
        .audit(Arc::new(sink))
        .build()
        .unwrap();
    let router = Router::new()
        .route("/api/public-data", get(|| async { "public" }))
        .route("/api/admin/users", any(|| async { "admin!" }))
        .route("/api/trial/x", any(echo))
        .fallback(echo);
    serve_with(router, layer).await
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_errors_are_json() {
    let addr = start(MemorySink::default()).await;
    let ok = fetch(addr, "/api/public-data").await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("x-request-id").map(str::len), Some(36));
    let denied = send(addr, "DELETE", "/api/public-data", &[], "").await;
    assert_eq!(denied.status, 405);
    assert_eq!(denied.header("allow"), Some("GET, HEAD, POST"));
    assert_eq!(denied.header("content-type"), Some("application/json"));
    let v = denied.json();
    assert_eq!(v["code"], "method_not_allowed");
    assert_eq!(v["request_id"], denied.header("x-request-id").unwrap());
    assert!(v["error"].as_str().is_some_and(|s| !s.is_empty()));
}

#[tokio::test]
async fn a_sane_client_request_id_is_kept_and_a_bad_one_replaced() {
    let addr = start(MemorySink::default()).await;
    let r = send(
        addr,
        "GET",
        "/api/public-data",
        &[("x-request-id", "trace-42")],
        "",
    )
    .await;
    assert_eq!(r.header("x-request-id"), Some("trace-42"));
    let r = send(
        addr,
        "GET",
        "/api/public-data",
        &[("x-request-id", "<script>")],
        "",
    )
    .await;
    assert_ne!(r.header("x-request-id"), Some("<script>"));
    assert_eq!(r.header("x-request-id").map(str::len), Some(36));
}

#[tokio::test]
async fn protected_route_without_authenticator_fails_closed() {
    let sink = MemorySink::default();
    let addr = start(sink.clone()).await;
    let r = send(addr, "POST", "/api/admin/users", &[], "").await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(r.json()["code"], "unauthorized");
    let events = sink.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].action.as_str(), "unauthorized_access");
    assert_eq!(events[0].route, "/api/admin/**");
    assert_eq!(events[0].path, "/api/admin/users");
    assert_eq!(events[0].status, 401);
}

#[tokio::test]
async fn report_only_lets_the_request_through_and_audits_it() {
    let sink = MemorySink::default();
    let addr = start(sink.clone()).await;
    let r = send(addr, "PUT", "/api/trial/x", &[], "").await;
    assert_eq!(r.status, 200);
    let events = sink.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].outcome, Outcome::ReportOnly);
    assert_eq!(events[0].action.as_str(), "method_not_allowed");
}

#[tokio::test]
async fn the_application_sees_the_canonical_path() {
    let addr = start(MemorySink::default()).await;
    let r = raw_get(addr, "/api//x/./../public-data?q=1").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "public");
    let r = raw_get(addr, "/some//where/%7Ehome?x=%2F").await;
    let v = r.json();
    assert_eq!(v["path"], "/some/where/~home");
    assert_eq!(v["query"], "x=%2F");
}

/// An app behind the layer, with `require_host` as given, auditing into `sink`.
async fn start_hosts(sink: MemorySink, require_host: bool) -> std::net::SocketAddr {
    let layer = SecurityLayer::builder()
        .require_host(require_host)
        .audit(Arc::new(sink))
        .build()
        .unwrap();
    serve_with(Router::new().fallback(echo), layer).await
}

#[tokio::test]
async fn two_or_malformed_host_headers_are_refused_and_audited() {
    let sink = MemorySink::default();
    let addr = start_hosts(sink.clone(), false).await;
    for hosts in [
        "Host: a.example\r\nHost: b.example\r\n",
        "Host: a.example\r\nHost: a.example\r\n",
    ] {
        let raw = format!("GET /x HTTP/1.1\r\n{hosts}Connection: close\r\n\r\n");
        let r = send_raw(addr, raw.as_bytes()).await;
        assert_eq!(r.status, 400, "{hosts:?}: {}", r.text());
        assert_eq!(r.json()["code"], "invalid_host");
    }
    // A Host that is not `host[:port]`: what an application would paste into a link.
    for host in [
        "evil.example@good.example",
        "good.example:80:80",
        "good.example:99999",
        "good.example;evil",
    ] {
        let raw = format!("GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let r = send_raw(addr, raw.as_bytes()).await;
        assert_eq!(r.status, 400, "{host:?}: {}", r.text());
        assert_eq!(r.json()["code"], "invalid_host", "{host:?}");
    }
    let events = sink.events();
    assert_eq!(events.len(), 6, "{events:?}");
    assert!(events.iter().all(|e| e.status == 400
        && e.action == portcullis::audit::AuditAction::InvalidInput
        && e.outcome == Outcome::Denied));
}

#[tokio::test]
async fn http_1_1_without_host_is_refused_when_required() {
    let strict = start_hosts(MemorySink::default(), true).await;
    let lenient = start_hosts(MemorySink::default(), false).await;
    let no_host = b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n";
    let r = send_raw(strict, no_host).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["code"], "invalid_host");
    // Off by default (requests built in tests often have no Host).
    assert_eq!(send_raw(lenient, no_host).await.status, 200);
    // HTTP/1.0 may leave it out; with it, HTTP/1.1 is served.
    assert_eq!(
        send_raw(strict, b"GET /x HTTP/1.0\r\n\r\n").await.status,
        200
    );
    assert_eq!(raw_get(strict, "/x").await.status, 200);
}

#[tokio::test]
async fn http_2_without_authority_or_host_is_refused_when_required() {
    use tower::{Layer, ServiceExt};
    let layer = SecurityLayer::builder().require_host(true).build().unwrap();
    let app = tower::service_fn(|_req: http::Request<_>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(axum::body::Body::empty()))
    });
    let status = |uri: &str, host: Option<&str>| {
        let mut req = http::Request::get(uri).version(http::Version::HTTP_2);
        if let Some(h) = host {
            req = req.header("host", h);
        }
        let req = req.body(axum::body::Body::empty()).unwrap();
        let svc = layer.layer(app);
        async move { svc.oneshot(req).await.unwrap().status() }
    };
    // Neither `:authority` nor Host (RFC 9113 §8.3.1: malformed for an http(s) target).
    assert_eq!(status("/x", None).await, 400);
    // Either one is enough.
    assert_eq!(status("http://app.example/x", None).await, 200);
    assert_eq!(status("/x", Some("app.example")).await, 200);
}

/// A guard of the application's own that only knows how to wait (`check`), in both guard
/// slots: the layer still asks it on every request (the at-once path is optional).
struct DenyHeader(&'static str);

impl portcullis::Guard for DenyHeader {
    fn check<'a>(
        &'a self,
        parts: &'a http::request::Parts,
        exchange: &'a mut portcullis::layer::Exchange,
    ) -> portcullis::auth::BoxFuture<'a, Result<(), portcullis::Rejection>> {
        Box::pin(async move {
            tokio::task::yield_now().await;
            if parts.headers.contains_key(self.0) {
                return Err(portcullis::Rejection::forbidden());
            }
            exchange
                .response_headers_mut()
                .append("x-guard", http::HeaderValue::from_static(self.0));
            Ok(())
        })
    }
}

#[tokio::test]
async fn guards_that_only_check_asynchronously_are_still_asked() {
    let layer = SecurityLayer::builder()
        .default_policy(Preset::Public)
        .rate_limiter(Arc::new(DenyHeader("x-deny-limit")))
        .csrf_guard(Arc::new(DenyHeader("x-deny-csrf")))
        .build()
        .unwrap();
    let addr = serve_with(Router::new().fallback(echo), layer).await;
    let r = send(addr, "GET", "/api/x", &[], "").await;
    assert_eq!(r.status, 200);
    let guards: Vec<&str> = r
        .headers
        .get_all("x-guard")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(guards, ["x-deny-limit", "x-deny-csrf"]);
    for h in ["x-deny-limit", "x-deny-csrf"] {
        let r = send(addr, "GET", "/api/x", &[(h, "1")], "").await;
        assert_eq!(r.status, 403, "{h}");
    }
}

#[test]
fn the_builder_and_the_service_print_with_debug_and_never_a_secret() {
    use portcullis::auth::{Secret, jwks::VerificationKey, jwt::Algorithm, jwt::JwtAuthenticator};
    use portcullis::csrf::{CsrfGuard, token};
    use tower::Layer;

    const JWT_SECRET: &str = "jwt-secret-that-must-never-be-printed";
    const CSRF_SECRET: &[u8] = b"csrf-secret-that-must-never-print";
    let key = VerificationKey::hmac(Algorithm::HS256, &Secret::from(JWT_SECRET)).expect("a key");
    let jwt = JwtAuthenticator::builder()
        .issuer("me")
        .audience("api")
        .key(key)
        .build()
        .expect("a verifier");
    let csrf = CsrfGuard::builder()
        .secrets([token::Secret::new(CSRF_SECRET.to_vec()).expect("a secret")])
        .build()
        .expect("a guard");
    let builder = SecurityLayer::builder()
        .route("/api/admin/**", Preset::Strict)
        .trusted_proxies(["10.0.0.0/8"])
        .authenticator(Arc::new(jwt))
        .csrf_guard(Arc::new(csrf));
    // A tower user's own `#[derive(Debug)]` over the builder or the wrapped service compiles.
    let printed = format!("{builder:?}");
    assert!(printed.contains("/api/admin/**"), "{printed}");
    assert!(printed.contains("10.0.0.0/8"), "{printed}");
    let service = builder
        .build()
        .expect("valid layer")
        .layer(Router::<()>::new().fallback(|| async { "ok" }));
    let printed = format!("{printed} {service:?} {service:#?}");
    assert!(printed.contains("SecurityService"), "{printed}");
    let csrf_text = String::from_utf8_lossy(CSRF_SECRET);
    assert!(
        !printed.contains(JWT_SECRET) && !printed.contains(&*csrf_text),
        "{printed}"
    );
}

/// A gRPC client (tonic's, say) is refused the way gRPC says: HTTP 200, `grpc-status` and
/// `grpc-message`, no body ("trailers-only"), with the request id and the refusal's own
/// headers; the audit event is the same. gRPC-Web and everything else get the JSON answer.
#[tokio::test]
async fn grpc_requests_are_refused_with_a_grpc_status() {
    use portcullis::client_ip::PeerAddr;
    use tower::{Layer, ServiceExt};
    let sink = MemorySink::default();
    let layer = SecurityLayer::builder()
        .default_policy(Preset::Public)
        .route(
            "/pkg.Admin/**",
            Policy::preset(Preset::Strict).roles(["admin"]),
        )
        .route("/pkg.Small/**", Policy::preset(Preset::Public).max_body(16))
        .audit(Arc::new(sink.clone()))
        .build()
        .unwrap();
    let app = layer.layer(Router::new().fallback(|| async { "served" }));
    let call = |path: &str, content_type: &str, body: &'static str| {
        let mut req = http::Request::post(path)
            .header("content-type", content_type)
            .header("te", "trailers")
            .header("content-length", body.len())
            .body(axum::body::Body::from(body))
            .unwrap();
        req.extensions_mut()
            .insert(PeerAddr("192.0.2.1:4000".parse().unwrap()));
        app.clone().oneshot(req)
    };
    let res = call("/pkg.Admin/DeleteUser", "application/grpc", "")
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let h = res.headers();
    assert_eq!(h["content-type"], "application/grpc");
    assert_eq!(h["grpc-status"], "16");
    assert_eq!(h["grpc-message"], "Authentication required");
    assert_eq!(h["www-authenticate"], "Bearer");
    assert!(h.contains_key("x-request-id"));
    let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
    assert!(body.is_empty());
    let events = sink.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].status, 401);

    let res = call(
        "/pkg.Small/Put",
        "application/grpc+proto",
        "0123456789abcdefXYZ",
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["grpc-status"], "8");

    // gRPC-Web (a browser) and plain HTTP: the JSON answer.
    for ct in ["application/grpc-web+proto", "application/json"] {
        let res = call("/pkg.Admin/DeleteUser", ct, "").await.unwrap();
        assert_eq!(res.status(), 401, "{ct}");
        assert_eq!(res.headers()["content-type"], "application/json", "{ct}");
        assert!(!res.headers().contains_key("grpc-status"), "{ct}");
    }
}

/// Settings that would fail closed in silence (every request refused) are refused when the
/// layer is built, each with its key: a host with a scheme or port, a role no principal can
/// hold, a content type no request carries.
#[test]
fn settings_no_request_could_meet_are_refused_when_built() {
    let host = |h: &str| {
        SecurityLayer::builder()
            .allowed_hosts([h])
            .build()
            .map(|_| ())
            .map_err(|e| (e.key, e.reason))
    };
    for bad in [
        "http://api.example.com",
        "api.example.com:8443",
        "",
        "a b",
        "user@host",
    ] {
        let (key, reason) = host(bad).expect_err(bad);
        assert_eq!(key, "allowed_hosts");
        assert!(reason.contains("without scheme or port"), "{reason}");
    }
    for good in [
        "api.example.com",
        "API.Example.com",
        "[::1]",
        "127.0.0.1",
        "localhost",
    ] {
        assert!(host(good).is_ok(), "{good}");
    }

    let route = |p: Policy| {
        SecurityLayer::builder()
            .route("/api/**", p)
            .build()
            .map(|_| ())
            .map_err(|e| (e.key, e.reason))
    };
    for roles in [vec![""], vec!["admin,ops"], vec!["ad\nmin"]] {
        let (key, reason) = route(Policy::preset(Preset::Authenticated).roles(roles.clone()))
            .expect_err("a role nobody holds");
        assert_eq!(key, "route \"/api/**\"");
        assert!(reason.contains("can never be held"), "{roles:?}: {reason}");
        assert!(route(Policy::preset(Preset::Authenticated).all_roles(roles)).is_err());
    }
    for t in ["json", "application/json; charset=utf-8", "*/"] {
        let (_, reason) = route(Policy::open().content_types([t])).expect_err(t);
        assert!(reason.contains("not a content type"), "{t}: {reason}");
    }
    assert!(route(Policy::open().content_types(["Application/JSON", "text/*"])).is_ok());
    assert!(route(Policy::preset(Preset::Authenticated).roles(["admin", "ops:read"])).is_ok());
    let err = SecurityLayer::builder()
        .default_policy(Policy::open().content_types(["json"]))
        .build()
        .expect_err("the default policy is checked too");
    assert_eq!(err.key, "default_policy");
}

/// A brute-force limit or a ban list with a zero window would never block anyone.
#[test]
fn zero_windows_of_the_failed_auth_limit_and_the_ban_list_are_refused() {
    use std::time::Duration;
    let minute = Duration::from_secs(60);
    let tracker = |window| {
        Some(Arc::new(portcullis::auth::FailedAuthTracker::new(
            5, window,
        )))
    };
    let err = SecurityLayer::builder()
        .failed_auth(tracker(Duration::ZERO))
        .build()
        .expect_err("a zero window");
    assert_eq!(err.key, "failed_auth");
    assert!(
        SecurityLayer::builder()
            .failed_auth(tracker(minute))
            .build()
            .is_ok()
    );
    let bans = |within, ban_for| {
        SecurityLayer::builder()
            .ban_list(Some(Arc::new(portcullis::ban::BanList::new(
                3, within, ban_for,
            ))))
            .build()
            .map(|_| ())
            .map_err(|e| e.key)
    };
    assert_eq!(bans(Duration::ZERO, minute), Err("ban_list".to_string()));
    assert_eq!(bans(minute, Duration::ZERO), Err("ban_list".to_string()));
    assert_eq!(bans(minute, minute), Ok(()));
}

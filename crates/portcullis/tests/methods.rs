//! Method allowlist over real TCP: each preset's list, a per-route override, extension
//! methods, `HEAD` on a GET-only route, and report-only methods.
//!
//! Requests go out as raw request lines, so extension and lower-case methods reach the server
//! exactly as written.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use common::*;
use http::Method;
use http::request::Parts;
use portcullis::audit::{MemorySink, Outcome};
use portcullis::auth::{AuthMethod, AuthOutcome, Authenticator, BoxFuture};
use portcullis::policy::CsrfMode;
use portcullis::policy::ReportOnly;
use portcullis::{Control, Policy, Preset, Principal, SecurityLayer};

const PUBLIC_ALLOW: &str = "GET, HEAD, POST";
const AUTHENTICATED_ALLOW: &str = "GET, HEAD, POST, PUT, PATCH, DELETE";
const STRICT_ALLOW: &str = "POST";

/// Authenticates anyone who sends `x-test-user`, with the `admin` role.
struct HeaderUser;

impl Authenticator for HeaderUser {
    fn authenticate<'a>(&'a self, parts: &'a Parts) -> BoxFuture<'a, AuthOutcome> {
        let user = parts
            .headers
            .get("x-test-user")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Box::pin(async move {
            match user {
                Some(id) => {
                    AuthOutcome::Authenticated(Principal::new(id, ["admin"], AuthMethod::Custom))
                }
                None => AuthOutcome::NoCredentials,
            }
        })
    }
}

async fn start(sink: MemorySink) -> SocketAddr {
    let layer = SecurityLayer::builder()
        .default_policy(Preset::Public)
        // The method allowlist alone is under test here: the CSRF token is tested elsewhere.
        .route(
            "/api/auth/**",
            Policy::preset(Preset::Authenticated).csrf(CsrfMode::Origin),
        )
        .route(
            "/api/strict/**",
            Policy::preset(Preset::Strict).csrf(CsrfMode::Origin),
        )
        .route(
            "/api/custom/**",
            Policy::preset(Preset::Public).methods([Method::GET, Method::PUT]),
        )
        .route(
            "/api/get-only/**",
            Policy::preset(Preset::Public).methods([Method::GET]),
        )
        .route(
            "/api/trial/**",
            Policy::preset(Preset::Public)
                .methods([Method::GET])
                .report_only(ReportOnly::Controls(vec![Control::Methods])),
        )
        .authenticator(Arc::new(HeaderUser))
        .audit(Arc::new(sink))
        .build()
        .expect("valid policy");
    serve_with(Router::new().fallback(echo), layer).await
}

/// One raw request with an empty body; `user` adds the test credentials.
async fn call(addr: SocketAddr, method: &str, path: &str, user: bool) -> Reply {
    let auth = if user { "x-test-user: alice\r\n" } else { "" };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    send_raw(addr, req.as_bytes()).await
}

/// Asserts the 405 shape: exact `Allow`, JSON error with `method_not_allowed` (no body on
/// `HEAD`), request id.
fn assert_405(r: &Reply, method: &str, path: &str, allow: &str) {
    let what = format!("{method} {path}");
    assert_eq!(r.status, 405, "{what}: {}", r.text());
    assert_eq!(r.header("allow"), Some(allow), "{what}");
    assert_eq!(r.header("content-type"), Some("application/json"), "{what}");
    assert!(r.header("x-request-id").is_some(), "{what}");
    if method != "HEAD" {
        let v = r.json();
        assert_eq!(v["code"], "method_not_allowed", "{what}");
        assert_eq!(v["request_id"], r.header("x-request-id").unwrap(), "{what}");
    }
}

fn assert_passes(r: &Reply, method: &str, path: &str) {
    assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
    assert!(r.header("allow").is_none(), "{method} {path}");
}

/// Methods nobody lists: WebDAV, debugging, made up, and `get` in lower case (methods are
/// case-sensitive, so it is not `GET`).
const EXTENSION: &[&str] = &[
    "TRACE", "PROPFIND", "MKCOL", "COPY", "LOCK", "TRACK", "DEBUG", "PURGE", "FOO", "get",
];

#[tokio::test]
async fn public_preset_allows_get_head_post_only() {
    let addr = start(MemorySink::default()).await;
    let path = "/api/public-data";
    for m in ["GET", "HEAD", "POST"] {
        assert_passes(&call(addr, m, path, false).await, m, path);
    }
    for &m in ["PUT", "PATCH", "DELETE", "OPTIONS"]
        .iter()
        .chain(EXTENSION)
    {
        assert_405(&call(addr, m, path, false).await, m, path, PUBLIC_ALLOW);
    }
}

#[tokio::test]
async fn authenticated_preset_allows_the_crud_methods_only() {
    let addr = start(MemorySink::default()).await;
    let path = "/api/auth/notes";
    for m in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"] {
        assert_passes(&call(addr, m, path, true).await, m, path);
    }
    for &m in ["OPTIONS"].iter().chain(EXTENSION) {
        assert_405(
            &call(addr, m, path, true).await,
            m,
            path,
            AUTHENTICATED_ALLOW,
        );
    }
}

#[tokio::test]
async fn the_method_check_comes_before_authentication() {
    let addr = start(MemorySink::default()).await;
    // Without credentials an allowed method gets 401, a refused one 405.
    let r = call(addr, "GET", "/api/auth/notes", false).await;
    assert_eq!(r.status, 401);
    assert_405(
        &call(addr, "PROPFIND", "/api/auth/notes", false).await,
        "PROPFIND",
        "/api/auth/notes",
        AUTHENTICATED_ALLOW,
    );
}

#[tokio::test]
async fn strict_preset_allows_post_only() {
    let addr = start(MemorySink::default()).await;
    let path = "/api/strict/transfer";
    assert_passes(&call(addr, "POST", path, true).await, "POST", path);
    for &m in ["GET", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"]
        .iter()
        .chain(EXTENSION)
    {
        assert_405(&call(addr, m, path, true).await, m, path, STRICT_ALLOW);
    }
}

#[tokio::test]
async fn a_route_override_replaces_the_preset_list() {
    let addr = start(MemorySink::default()).await;
    let path = "/api/custom/item";
    for m in ["GET", "PUT"] {
        assert_passes(&call(addr, m, path, false).await, m, path);
    }
    // POST and HEAD were in the public preset but not in the override.
    for &m in ["POST", "HEAD", "DELETE", "PATCH"].iter().chain(EXTENSION) {
        assert_405(&call(addr, m, path, false).await, m, path, "GET, PUT");
    }
}

#[tokio::test]
async fn head_on_a_get_only_route_is_refused_unless_listed() {
    let addr = start(MemorySink::default()).await;
    let path = "/api/get-only/report";
    assert_passes(&call(addr, "GET", path, false).await, "GET", path);
    let r = call(addr, "HEAD", path, false).await;
    assert_405(&r, "HEAD", path, "GET");
    assert!(r.body.is_empty(), "a HEAD response has no body");
}

#[tokio::test]
async fn a_refused_method_is_audited() {
    let sink = MemorySink::default();
    let addr = start(sink.clone()).await;
    let r = call(addr, "TRACE", "/api/strict/transfer", false).await;
    assert_405(&r, "TRACE", "/api/strict/transfer", STRICT_ALLOW);
    let events = sink.events();
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e.action.as_str(), "method_not_allowed");
    assert_eq!(e.outcome, Outcome::Denied);
    assert_eq!(e.method, "TRACE");
    assert_eq!(e.route, "/api/strict/**");
    assert_eq!(e.path, "/api/strict/transfer");
    assert_eq!(e.status, 405);
    assert_eq!(e.request_id, r.header("x-request-id").unwrap());
    assert_eq!(e.metadata["control"], "methods");
}

#[tokio::test]
async fn report_only_methods_let_the_request_through_and_audit_it() {
    let sink = MemorySink::default();
    let addr = start(sink.clone()).await;
    let path = "/api/trial/x";

    // Listed: passes, nothing to report.
    assert_passes(&call(addr, "GET", path, false).await, "GET", path);
    assert!(sink.events().is_empty());

    for (i, m) in ["DELETE", "PROPFIND", "HEAD"].into_iter().enumerate() {
        let r = call(addr, m, path, false).await;
        assert_passes(&r, m, path);
        if m != "HEAD" {
            assert_eq!(r.json()["path"], path, "{m}: the handler ran");
        }
        let events = sink.events();
        assert_eq!(events.len(), i + 1, "{m}");
        let e = &events[i];
        assert_eq!(e.outcome, Outcome::ReportOnly, "{m}");
        assert_eq!(e.action.as_str(), "method_not_allowed", "{m}");
        assert_eq!(e.method, m);
        assert_eq!(e.route, "/api/trial/**");
        assert_eq!(e.status, 405, "{m}: the status it would have had");
        assert_eq!(e.request_id, r.header("x-request-id").unwrap(), "{m}");
    }
}

#[tokio::test]
async fn connect_never_reaches_the_application() {
    let addr = start(MemorySink::default()).await;
    // Authority-form (the usual CONNECT target) has no path: refused by the path check.
    let r = call(addr, "CONNECT", &addr.to_string(), false).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["code"], "invalid_path");
    // Origin-form: refused by the allowlist like any unlisted method.
    let path = "/api/public-data";
    assert_405(
        &call(addr, "CONNECT", path, false).await,
        "CONNECT",
        path,
        PUBLIC_ALLOW,
    );
}

/// One raw POST (the method frameworks honour an override on) with extra header lines.
async fn post_with(addr: SocketAddr, path: &str, extra: &str) -> Reply {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    send_raw(addr, req.as_bytes()).await
}

#[tokio::test]
async fn an_override_header_spelt_with_underscores_must_name_an_allowed_method_too() {
    // Puma (Rails), PHP and other CGI-style servers read `X_HTTP_Method_Override` as
    // `HTTP_X_HTTP_METHOD_OVERRIDE`, the dashed header's name: Rack's MethodOverride then
    // routes the POST as DELETE.
    let addr = start(MemorySink::default()).await;
    for extra in [
        "X_HTTP_Method_Override: DELETE\r\n",
        "x_http-method_override: delete\r\n",
        "X_HTTP_METHOD: PUT\r\n",
        "X_Method-Override: PATCH\r\n",
    ] {
        let r = post_with(addr, "/api/x", extra).await;
        assert_405(&r, "POST", &format!("/api/x with {extra:?}"), PUBLIC_ALLOW);
    }
    // Other fields with underscores are no override.
    let r = post_with(addr, "/api/x", "X_Request_Note: DELETE\r\n").await;
    assert_passes(&r, "POST", "/api/x with an unrelated underscore field");
}

#[tokio::test]
async fn a_method_override_must_name_an_allowed_method_too() {
    let sink = MemorySink::default();
    let addr = start(sink.clone()).await;
    // The public preset allows GET, HEAD, POST: a POST asking to be handled as DELETE or
    // PUT (Express's method-override, Rails, Laravel, Symfony, ASP.NET) is refused.
    for (extra, path) in [
        ("X-HTTP-Method-Override: DELETE\r\n", "/api/x"),
        ("x-http-method-override: delete\r\n", "/api/x"),
        ("X-HTTP-Method: PUT\r\n", "/api/x"),
        ("X-Method-Override: PATCH\r\n", "/api/x"),
        (
            "X-HTTP-Method-Override: GET\r\nX-HTTP-Method-Override: DELETE\r\n",
            "/api/x",
        ),
        ("X-HTTP-Method-Override: not a method\r\n", "/api/x"),
        ("", "/api/x?_method=DELETE"),
        ("", "/api/x?page=1&_METHOD=put"),
        ("", "/api/x?%5Fmethod=DELETE"),
        // Decoded as Rails, Laravel and Express decode a query: every escape in the key.
        ("", "/api/x?_me%74hod=DELETE"),
        ("", "/api/x?%5f%6D%65%74%68%6f%64=PUT"),
        ("", "/api/x?_method=%44ELETE"),
        // PHP reads a name up to its first NUL.
        ("", "/api/x?_method%00=DELETE"),
    ] {
        let r = post_with(addr, path, extra).await;
        assert_405(&r, "POST", &format!("{path} with {extra:?}"), PUBLIC_ALLOW);
    }
    let refused = sink
        .events()
        .iter()
        .filter(|e| {
            e.status == 405
                && e.outcome == Outcome::Denied
                && e.method == "POST"
                && e.metadata["detail"] == "method_override"
        })
        .count();
    assert_eq!(refused, 13, "{:?}", sink.events());

    // An override naming an allowed method passes, untouched, to the application.
    let r = post_with(addr, "/api/x", "X-HTTP-Method-Override: GET\r\n").await;
    assert_passes(&r, "POST", "/api/x with an override to GET");
    assert_eq!(r.json()["headers"]["x-http-method-override"], "GET");
    // Where the route allows PUT, a POST overridden to PUT is the application's business.
    let r = post_with(addr, "/api/custom/x", "X-HTTP-Method-Override: PUT\r\n").await;
    assert_eq!(
        r.status,
        405,
        "POST itself is not allowed on /api/custom: {}",
        r.text()
    );
    let r = send_raw(
        addr,
        format!(
            "GET /api/custom/x?_method=put HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert_passes(&r, "GET", "/api/custom/x?_method=put");
}

/// Rails, Laravel and Symfony read `_method` from a form body (first, for the last two): a
/// form POST naming a method the route refuses is a 405 however the field is spelt, and any
/// other body reaches the application intact.
#[tokio::test]
async fn a_method_override_in_a_form_body_must_name_an_allowed_method_too() {
    let sink = MemorySink::default();
    let layer = SecurityLayer::builder()
        .default_policy(Preset::Public)
        .route(
            "/api/custom/**",
            Policy::preset(Preset::Public).methods([Method::POST, Method::PUT]),
        )
        .audit(Arc::new(sink.clone()))
        .build()
        .expect("valid policy");
    let app = Router::new().fallback(|body: axum::body::Bytes| async move { body });
    let addr = serve_with(app, layer).await;
    let post = |path: &'static str, content_type: Option<&'static str>, body: String| async move {
        let ct = content_type
            .map(|t| format!("Content-Type: {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{ct}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        send_raw(addr, req.as_bytes()).await
    };
    const FORM: Option<&str> = Some("application/x-www-form-urlencoded");
    const MULTIPART: Option<&str> = Some("multipart/form-data; boundary=XyZ");
    let part = |name: &str, value: &str| {
        format!("--XyZ\r\nContent-Disposition: form-data; {name}\r\n\r\n{value}\r\n")
    };
    let refused: Vec<(&str, Option<&str>, String)> = vec![
        ("plain", FORM, "title=hi&_method=DELETE".into()),
        (
            "charset and case",
            Some("application/x-www-form-urlencoded; charset=utf-8"),
            "_METHOD=put".into(),
        ),
        ("escaped key", FORM, "a=1&_me%74hod=PATCH".into()),
        ("PHP's .method", FORM, ".method=DELETE".into()),
        ("PHP's leading space", FORM, "%20_method=DELETE".into()),
        ("PHP's NUL cut", FORM, "_method%00x=DELETE".into()),
        ("array", FORM, "_method[]=DELETE".into()),
        ("semicolon pairs", FORM, "a=1;_method=DELETE".into()),
        ("second field", FORM, "_method=POST&_method=DELETE".into()),
        ("no content type (Rack)", None, "_method=DELETE".into()),
        (
            "multipart, quoted",
            MULTIPART,
            format!("{}--XyZ--\r\n", part("name=\"_method\"", "delete")),
        ),
        (
            "multipart, unquoted, second part",
            MULTIPART,
            format!(
                "{}{}--XyZ--\r\n",
                part("name=\"title\"", "hi"),
                part("name=_method", "DELETE")
            ),
        ),
        (
            "multipart, single quotes (PHP)",
            MULTIPART,
            format!("{}--XyZ--\r\n", part("name='_method'", "DELETE")),
        ),
        (
            "multipart, NUL in the name (PHP)",
            MULTIPART,
            format!("{}--XyZ--\r\n", part("name=\"_method\0x\"", "DELETE")),
        ),
        (
            "multipart, bare LF",
            MULTIPART,
            "--XyZ\nContent-Disposition: form-data; name=\"_method\"\n\nDELETE\n--XyZ--\n".into(),
        ),
        (
            "multipart that does not parse",
            MULTIPART,
            "not a multipart body _method=DELETE".into(),
        ),
    ];
    for (what, ct, body) in &refused {
        let r = post("/api/x", *ct, body.clone()).await;
        assert_eq!(r.status, 405, "{what}: {}", r.text());
        assert_eq!(r.json()["code"], "method_not_allowed", "{what}");
        assert_eq!(r.header("allow"), Some(PUBLIC_ALLOW), "{what}");
    }
    let audited = sink
        .events()
        .iter()
        .filter(|e| e.status == 405 && e.metadata["detail"] == "method_override")
        .count();
    assert_eq!(audited, refused.len());

    // What passes, body intact: no override, an allowed one, a word in a value, JSON (no
    // framework reads `_method` from it), a file part holding the text.
    for (what, path, ct, body) in [
        ("plain form", "/api/x", FORM, "title=hi&body=x".to_string()),
        ("allowed", "/api/x", FORM, "_method=post".to_string()),
        ("value", "/api/x", FORM, "note=_method%3DDELETE".to_string()),
        (
            "json",
            "/api/x",
            Some("application/json"),
            r#"{"_method":"DELETE"}"#.to_string(),
        ),
        (
            "file part",
            "/api/x",
            MULTIPART,
            format!(
                "{}--XyZ--\r\n",
                part("name=\"f\"; filename=\"a.txt\"", "_method=DELETE")
            ),
        ),
        (
            "allowed on the route",
            "/api/custom/x",
            FORM,
            "_method=PUT".to_string(),
        ),
    ] {
        let r = post(path, ct, body.clone()).await;
        assert_eq!(r.status, 200, "{what}: {}", r.text());
        assert_eq!(r.text(), body, "{what}");
    }
    let r = post("/api/custom/x", FORM, "_method=DELETE".into()).await;
    assert_eq!(r.status, 405, "{}", r.text());
    assert_eq!(r.header("allow"), Some("POST, PUT"));
}

#[tokio::test]
async fn a_multipart_form_of_many_small_parts_is_scanned_in_linear_time() {
    use portcullis::client_ip::PeerAddr;
    use tower::{Layer, ServiceExt};
    let app = SecurityLayer::new(Preset::Public).layer(
        Router::new().fallback(|body: axum::body::Bytes| async move { body.len().to_string() }),
    );
    let post = |body: Vec<u8>| {
        let mut req = http::Request::post("/upload")
            .header("content-type", "multipart/form-data; boundary=b")
            .body(axum::body::Body::from(body))
            .expect("a request");
        req.extensions_mut()
            .insert(PeerAddr("192.0.2.1:4000".parse().expect("an address")));
        req
    };
    // 6000 CRLF parts, about 300 KB (the public limit is 1 MiB). Each part's head used to be
    // searched for a bare-LF end up to the body's end: parts × body, many seconds.
    let small = b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n";
    let mut body = small.repeat(6000);
    body.extend_from_slice(b"--b--\r\n");
    let started = std::time::Instant::now();
    let res = app
        .clone()
        .oneshot(post(body.clone()))
        .await
        .expect("answered");
    assert_eq!(res.status(), 200);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    // Still read to the end: an override in the last part, and one in a bare-LF part after
    // CRLF ones, are found.
    for last in [
        &b"--b\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--b--\r\n"[..],
        &b"--b\nContent-Disposition: form-data; name=\"_method\"\n\nDELETE\n--b--\n"[..],
    ] {
        let mut body = small.repeat(100);
        body.extend_from_slice(last);
        let res = app.clone().oneshot(post(body)).await.expect("answered");
        assert_eq!(res.status(), 405);
    }
}

/// Each `Content-Type` field used to cost a scan of the whole body for `_method`: 100 copies
/// of a large form's type, 100 scans. Copies are read once now, and more than two different
/// readings of one body are refused as an override.
#[tokio::test]
async fn repeated_content_types_do_not_repeat_the_override_scan() {
    use portcullis::client_ip::PeerAddr;
    use tower::{Layer, ServiceExt};
    let app = SecurityLayer::new(Preset::Public).layer(
        Router::new().fallback(|body: axum::body::Bytes| async move { body.len().to_string() }),
    );
    let part = b"--b\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n";
    let mut body = part.repeat(6000);
    body.extend_from_slice(b"--b--\r\n");
    let post = |types: Vec<String>| {
        let mut req = http::Request::post("/upload");
        for t in types {
            req = req.header("content-type", t);
        }
        let mut req = req
            .body(axum::body::Body::from(body.clone()))
            .expect("a request");
        req.extensions_mut()
            .insert(PeerAddr("192.0.2.1:4000".parse().expect("an address")));
        req
    };
    let same = vec!["multipart/form-data; boundary=b".to_string(); 100];
    let started = std::time::Instant::now();
    let res = app.clone().oneshot(post(same)).await.expect("answered");
    assert_eq!(res.status(), 200);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    let distinct: Vec<String> = (0..100)
        .map(|i| format!("multipart/form-data; boundary=b{i}"))
        .collect();
    let res = app.clone().oneshot(post(distinct)).await.expect("answered");
    assert_eq!(res.status(), 405);
    // Two readings (the form and urlencoded) are still each looked at.
    let two = vec![
        "multipart/form-data; boundary=b".to_string(),
        "application/x-www-form-urlencoded".to_string(),
    ];
    let res = app.oneshot(post(two)).await.expect("answered");
    assert_eq!(res.status(), 200);
}

/// A multipart upload is read for `_method` as it streams, never held whole: the application
/// has the first part while the client is still sending, and the body is the client's, byte
/// for byte. A `_method` field after a large file part still gets the 405, and the
/// application never has that body whole (its read fails).
#[tokio::test]
async fn a_multipart_upload_streams_to_the_application_while_it_is_scanned() {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sink = MemorySink::default();
    let layer = SecurityLayer::builder()
        .default_policy(Policy::preset(Preset::Public).max_body(64 << 20))
        .no_rate_limiter()
        .audit(Arc::new(sink.clone()))
        .build()
        .expect("valid policy");
    // When the application had its first bytes, and what it read in the end.
    let first: Arc<Mutex<Option<Instant>>> = Arc::default();
    let read: Arc<Mutex<Option<Result<usize, ()>>>> = Arc::default();
    let app = {
        let (first, read) = (first.clone(), read.clone());
        Router::new().fallback(move |req: axum::extract::Request| {
            let (first, read) = (first.clone(), read.clone());
            async move {
                use http_body_util::BodyExt;
                let mut body = req.into_body();
                let mut n = 0;
                let outcome = loop {
                    match body.frame().await {
                        Some(Ok(f)) => {
                            first.lock().unwrap().get_or_insert_with(Instant::now);
                            n += f.data_ref().map_or(0, |d| d.len());
                        }
                        Some(Err(_)) => break Err(()),
                        None => break Ok(n),
                    }
                };
                *read.lock().unwrap() = Some(outcome);
                format!("{n}")
            }
        })
    };
    let addr = serve_with(app, layer).await;
    let file_part = |size: usize| {
        format!(
            "--XyZ\r\nContent-Disposition: form-data; name=\"f\"; filename=\"a.bin\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n{}\r\n",
            "x".repeat(size)
        )
    };
    // Sends `head` of the body, waits, then the rest; the answer, and when the rest left.
    let upload = |first_half: String, second_half: String| async move {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let len = first_half.len() + second_half.len();
        tcp.write_all(
            format!(
                "POST /upload HTTP/1.1\r\nHost: {addr}\r\nSec-Fetch-Site: same-origin\r\n\
                 Content-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: {len}\r\n\
                 Connection: close\r\n\r\n{first_half}"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        let rest_at = Instant::now();
        tcp.write_all(second_half.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tcp.read_to_end(&mut out).await.unwrap();
        (String::from_utf8_lossy(&out).into_owned(), rest_at)
    };

    let (a, b) = (file_part(4 << 20), "--XyZ--\r\n".to_string());
    let total = a.len() + b.len();
    let (out, rest_at) = upload(a, b).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out:.300}");
    assert!(
        out.ends_with(&total.to_string()),
        "every byte arrived: {out:.300}"
    );
    assert!(
        first.lock().unwrap().is_some_and(|t| t < rest_at),
        "the application had the first part before the client sent the rest"
    );

    // `_method` after 4 MiB of file: 405, and the application's read of the body fails.
    *read.lock().unwrap() = None;
    let (a, b) = (
        file_part(4 << 20),
        "--XyZ\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n--XyZ--\r\n"
            .to_string(),
    );
    let (out, _) = upload(a, b).await;
    assert!(out.starts_with("HTTP/1.1 405"), "{out:.300}");
    assert!(
        out.contains("\"code\":\"method_not_allowed\""),
        "{out:.300}"
    );
    assert_eq!(
        *read.lock().unwrap(),
        Some(Err(())),
        "the body never ended whole"
    );
    let events = sink.events();
    let last = events.last().unwrap();
    assert_eq!(
        (last.status, last.metadata["detail"].as_str()),
        (405, Some("method_override"))
    );
}

//! The signed double-submit token through `SecurityLayer` over real TCP: valid tokens pass,
//! every forgery is a 403 `csrf_token_invalid`, secrets rotate, cookies carry the exact
//! attributes, the token endpoint answers, and form fields are read from the body.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::post;
use common::*;
use portcullis::auth::{AuthMethod, AuthOutcome, Authenticator, BoxFuture, Principal};
use portcullis::csrf::token::{Secret, SessionBinding, TokenSigner};
use portcullis::csrf::{CsrfGuard, CsrfGuardBuilder, TOKEN_PATH};
use portcullis::policy::CsrfMode;
use portcullis::{Policy, SecurityLayer};

/// Authenticates `x-demo-user: NAME` as principal NAME.
struct DemoAuth;

impl Authenticator for DemoAuth {
    fn authenticate<'a>(&'a self, parts: &'a http::request::Parts) -> BoxFuture<'a, AuthOutcome> {
        Box::pin(async move {
            match parts
                .headers
                .get("x-demo-user")
                .and_then(|v| v.to_str().ok())
            {
                Some(u) => {
                    AuthOutcome::Authenticated(Principal::new(u, ["user"], AuthMethod::Custom))
                }
                None => AuthOutcome::NoCredentials,
            }
        })
    }
}

fn secret(seed: u8) -> Secret {
    Secret::new(vec![seed; 32]).unwrap()
}

fn guard(secrets: &[u8]) -> CsrfGuardBuilder {
    CsrfGuard::builder().secrets(secrets.iter().map(|&s| secret(s)))
}

async fn start(guard: CsrfGuardBuilder) -> SocketAddr {
    start_with(guard, Policy::open().csrf(CsrfMode::OriginAndToken)).await
}

async fn start_with(guard: CsrfGuardBuilder, policy: Policy) -> SocketAddr {
    let layer = SecurityLayer::builder()
        .no_rate_limiter()
        .default_policy(policy)
        .authenticator(Arc::new(DemoAuth))
        .csrf_guard(Arc::new(guard.build().unwrap()))
        .build()
        .unwrap();
    // The body echoes back, to show a form read by the guard reaches the handler whole.
    let app = Router::new()
        .route("/api/echo", post(|body: bytes::Bytes| async move { body }))
        .fallback(|| async { "ok" });
    serve_with(app, layer).await
}

/// `Set-Cookie` headers by cookie name: (value, whole header).
fn set_cookies(r: &Reply) -> HashMap<String, (String, String)> {
    r.headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| {
            let (pair, _) = v.split_once(';').unwrap_or((v, ""));
            let (k, val) = pair.split_once('=')?;
            Some((k.to_string(), (val.to_string(), v.to_string())))
        })
        .collect()
}

/// An anonymous session: its id and a token issued for it by a GET.
struct Anon {
    session: String,
    token: String,
}

impl Anon {
    async fn start(addr: SocketAddr) -> Anon {
        let r = fetch(addr, "/").await;
        assert_eq!(r.status, 200);
        let c = set_cookies(&r);
        Anon {
            session: c["__Host-csrf-session"].0.clone(),
            token: c["__Host-csrf"].0.clone(),
        }
    }

    fn cookie(&self, token: &str) -> String {
        format!("__Host-csrf-session={}; __Host-csrf={token}", self.session)
    }
}

/// POSTs same-origin with the given token header and cookie.
async fn post_with(addr: SocketAddr, path: &str, header: Option<&str>, cookie: &str) -> Reply {
    let mut h = vec![("sec-fetch-site", "same-origin"), ("cookie", cookie)];
    if let Some(t) = header {
        h.push(("x-csrf-token", t));
    }
    send(addr, "POST", path, &h, "").await
}

fn assert_token_refused(r: &Reply, what: &str) {
    assert_eq!(r.status, 403, "{what}: {}", r.text());
    assert_eq!(r.json()["code"], "csrf_token_invalid", "{what}");
}

/// A token from the endpoint for the jar's session (a fresh one when the jar holds none).
async fn fetch_token(addr: SocketAddr, cookie: &str) -> String {
    let r = send(addr, "GET", TOKEN_PATH, &[("cookie", cookie)], "").await;
    assert_eq!(r.status, 200);
    r.json()["token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_valid_token_passes() {
    let addr = start(guard(&[1])).await;
    let s = Anon::start(addr).await;
    assert_eq!(s.token.len(), 86);
    let r = post_with(addr, "/x", Some(&s.token), &s.cookie(&s.token)).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn forged_tokens_are_refused() {
    let addr = start(guard(&[1])).await;
    let s = Anon::start(addr).await;
    let other = Anon::start(addr).await;
    let t = s.token.as_str();

    let mut tampered = t.to_string();
    let last = if tampered.ends_with('A') { "B" } else { "A" };
    tampered.replace_range(85.., last);
    let truncated = &t[..85];
    let wrong_secret = TokenSigner::new(vec![secret(9)])
        .unwrap()
        .issue(SessionBinding::Anonymous(&s.session));
    let second_valid = fetch_token(addr, &s.cookie("")).await;
    assert_ne!(second_valid, t);
    let non_base64 = "!".repeat(86);

    // (what, header, cookie token): the jar always holds `s`'s session.
    let cases: Vec<(&str, Option<&str>, &str)> = vec![
        (
            "other session's token",
            Some(other.token.as_str()),
            other.token.as_str(),
        ),
        ("tampered MAC", Some(&tampered), &tampered),
        ("truncated", Some(truncated), truncated),
        ("wrong secret", Some(&wrong_secret), &wrong_secret),
        ("token only in the cookie", None, t),
        ("header differs from cookie", Some(t), &second_valid),
        ("header without a cookie token", Some(t), ""),
        ("empty", Some(""), ""),
        ("non-base64", Some(&non_base64), &non_base64),
    ];
    for (what, header, cookie_token) in cases {
        let r = post_with(addr, "/x", header, &s.cookie(cookie_token)).await;
        assert_token_refused(&r, what);
    }

    let q = format!("/x?csrf_token={t}&x-csrf-token={t}");
    let r = post_with(addr, &q, None, &s.cookie(t)).await;
    assert_token_refused(&r, "token only in the query");

    let r = post_with(addr, "/x", Some(t), &format!("__Host-csrf={t}")).await;
    assert_token_refused(&r, "no session cookie");

    let jar = s.cookie(t);
    let r = send(
        addr,
        "POST",
        "/x",
        &[
            ("sec-fetch-site", "same-origin"),
            ("cookie", &jar),
            ("x-csrf-token", t),
            ("x-csrf-token", t),
        ],
        "",
    )
    .await;
    assert_token_refused(&r, "header sent twice");
}

#[tokio::test]
async fn tokens_are_bound_to_the_principal() {
    let addr = start(guard(&[1])).await;
    let alice = send(addr, "GET", "/", &[("x-demo-user", "alice")], "").await;
    let c = set_cookies(&alice);
    assert!(
        !c.contains_key("__Host-csrf-session"),
        "a principal needs no anonymous session"
    );
    let t = c["__Host-csrf"].0.clone();
    let jar = format!("__Host-csrf={t}");
    for (user, want) in [("alice", 200), ("mallory", 403)] {
        let r = send(
            addr,
            "POST",
            "/x",
            &[
                ("sec-fetch-site", "same-origin"),
                ("x-demo-user", user),
                ("cookie", &jar),
                ("x-csrf-token", &t),
            ],
            "",
        )
        .await;
        assert_eq!(r.status, want, "{user}: {}", r.text());
    }
    // Logged out, the anonymous session it would need does not exist.
    let r = post_with(addr, "/x", Some(&t), &jar).await;
    assert_token_refused(&r, "anonymous");
}

#[tokio::test]
async fn secrets_rotate_with_a_window() {
    // Issued under secret 1; the next deployment signs with 2 and still lists 1; the one after
    // drops 1.
    let old = start(guard(&[1])).await;
    let window = start(guard(&[2, 1])).await;
    let after = start(guard(&[2])).await;
    let s = Anon::start(old).await;
    let r = post_with(window, "/x", Some(&s.token), &s.cookie(&s.token)).await;
    assert_eq!(r.status, 200, "old secret still listed: {}", r.text());
    let r = post_with(after, "/x", Some(&s.token), &s.cookie(&s.token)).await;
    assert_token_refused(&r, "replayed after the secret rotated out");
    // New tokens are signed with the first secret: valid wherever 2 is listed.
    let fresh = Anon::start(window).await;
    let r = post_with(after, "/x", Some(&fresh.token), &fresh.cookie(&fresh.token)).await;
    assert_eq!(r.status, 200);
    // During the window a GET keeps the old-secret cookie (it verifies); after, it is replaced.
    let jar = s.cookie(&s.token);
    let r = send(window, "GET", "/", &[("cookie", &jar)], "").await;
    assert!(set_cookies(&r).is_empty());
    let r = send(after, "GET", "/", &[("cookie", &jar)], "").await;
    assert!(set_cookies(&r).contains_key("__Host-csrf"));
}

#[tokio::test]
async fn a_get_issues_the_cookies_with_exact_attributes() {
    let addr = start(guard(&[1])).await;
    let r = fetch(addr, "/page").await;
    let c = set_cookies(&r);
    let (token, whole) = &c["__Host-csrf"];
    assert_eq!(token.len(), 86);
    assert_eq!(
        whole,
        &format!("__Host-csrf={token}; Path=/; Secure; SameSite=Strict")
    );
    let (session, whole) = &c["__Host-csrf-session"];
    assert_eq!(session.len(), 22);
    assert_eq!(
        whole,
        &format!("__Host-csrf-session={session}; Path=/; Secure; HttpOnly; SameSite=Lax")
    );

    // With both cookies valid, nothing is set again.
    let jar = format!("__Host-csrf-session={session}; __Host-csrf={token}");
    let again = send(addr, "GET", "/page", &[("cookie", &jar)], "").await;
    assert!(set_cookies(&again).is_empty());
    // A token that is not valid for the session is replaced; the session is kept.
    let other = Anon::start(addr).await;
    let jar = format!("__Host-csrf-session={session}; __Host-csrf={}", other.token);
    let replaced = send(addr, "GET", "/page", &[("cookie", &jar)], "").await;
    let c = set_cookies(&replaced);
    assert!(c.contains_key("__Host-csrf"));
    assert!(!c.contains_key("__Host-csrf-session"));
}

#[tokio::test]
async fn insecure_dev_drops_secure_and_the_host_prefix() {
    let addr = start(guard(&[1]).insecure_dev(true)).await;
    let r = fetch(addr, "/").await;
    let c = set_cookies(&r);
    let (token, whole) = &c["csrf"];
    assert_eq!(whole, &format!("csrf={token}; Path=/; SameSite=Strict"));
    let (session, whole) = &c["csrf-session"];
    assert_eq!(
        whole,
        &format!("csrf-session={session}; Path=/; HttpOnly; SameSite=Lax")
    );
    assert!(!c.contains_key("__Host-csrf"));
    let jar = format!("csrf-session={session}; csrf={token}");
    let ok = post_with(addr, "/x", Some(token), &jar).await;
    assert_eq!(ok.status, 200);
    // The production cookie names mean nothing in development mode.
    let jar = format!("__Host-csrf-session={session}; __Host-csrf={token}");
    assert_token_refused(&post_with(addr, "/x", Some(token), &jar).await, "names");
}

#[tokio::test]
async fn the_anonymous_session_cookie_is_http_only_and_random() {
    let addr = start(guard(&[1])).await;
    let a = fetch(addr, "/").await;
    let b = fetch(addr, "/").await;
    let (sa, whole) = set_cookies(&a)["__Host-csrf-session"].clone();
    let (sb, _) = set_cookies(&b)["__Host-csrf-session"].clone();
    assert!(whole.contains("; HttpOnly"));
    assert_ne!(sa, sb);
    // The token cookie, which the page's script must read, is not HttpOnly.
    assert!(!set_cookies(&a)["__Host-csrf"].1.contains("HttpOnly"));
}

#[tokio::test]
async fn the_token_endpoint_answers_json_and_sets_the_cookie() {
    let addr = start(guard(&[1])).await;
    let r = fetch(addr, TOKEN_PATH).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(
        r.header("x-request-id").is_some(),
        "decorated like any answer"
    );
    let token = r.json()["token"].as_str().unwrap().to_string();
    let c = set_cookies(&r);
    assert_eq!(c["__Host-csrf"].0, token);
    let jar = format!(
        "__Host-csrf-session={}; __Host-csrf={token}",
        c["__Host-csrf-session"].0
    );
    let ok = post_with(addr, "/x", Some(&token), &jar).await;
    assert_eq!(ok.status, 200);
    // With a valid cookie, the endpoint hands back the same token and sets nothing.
    let again = send(addr, "GET", TOKEN_PATH, &[("cookie", &jar)], "").await;
    assert_eq!(again.json()["token"], token.as_str());
    assert!(set_cookies(&again).is_empty());
    // A POST there is an ordinary unsafe request.
    let r = send(addr, "POST", TOKEN_PATH, &[("cookie", &jar)], "").await;
    assert_token_refused(&r, "POST to the endpoint");
    // The endpoint is the layer's, on routes without token mode too.
    let origin_only = start_with(guard(&[1]), Policy::open().csrf(CsrfMode::Origin)).await;
    assert_eq!(fetch(origin_only, TOKEN_PATH).await.status, 200);
}

#[tokio::test]
async fn a_form_field_token_is_read_from_the_body() {
    let addr = start(guard(&[1])).await;
    let s = Anon::start(addr).await;
    let jar = s.cookie(&s.token);
    let form = |ct: &'static str, body: String| {
        let jar = jar.clone();
        async move {
            send(
                addr,
                "POST",
                "/api/echo",
                &[
                    ("sec-fetch-site", "same-origin"),
                    ("cookie", &jar),
                    ("content-type", ct),
                ],
                body,
            )
            .await
        }
    };
    let urlencoded = "application/x-www-form-urlencoded";
    let body = format!("note=hello+world&csrf_token={}", s.token);
    let r = form(urlencoded, body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), body, "the handler gets the whole body");

    let mp = format!(
        "--XyZ\r\nContent-Disposition: form-data; name=\"csrf_token\"\r\n\r\n{}\r\n\
         --XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n--XyZ--\r\n",
        s.token
    );
    let r = form("multipart/form-data; boundary=XyZ", mp.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), mp);

    let r = form(urlencoded, "note=x&csrf_token=forged".into()).await;
    assert_token_refused(&r, "forged form field");
    let r = form(urlencoded, "note=x".into()).await;
    assert_token_refused(&r, "form without the field");
    let r = form("text/plain", format!("csrf_token={}", s.token)).await;
    assert_token_refused(&r, "not a form content type");
    let r = form(
        "application/json",
        format!("{{\"csrf_token\":\"{}\"}}", s.token),
    )
    .await;
    assert_token_refused(&r, "JSON is not a form");
}

#[tokio::test]
async fn a_form_over_the_route_limit_is_refused() {
    let addr = start_with(
        guard(&[1]),
        Policy::open().csrf(CsrfMode::OriginAndToken).max_body(64),
    )
    .await;
    let s = Anon::start(addr).await;
    let body = format!("csrf_token={}&pad={}", s.token, "x".repeat(100));
    let jar = s.cookie(&s.token);
    let r = send(
        addr,
        "POST",
        "/api/echo",
        &[
            ("sec-fetch-site", "same-origin"),
            ("cookie", &jar),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        body.clone(),
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.text());
    // Streamed without a length: counted while read, same answer.
    let raw = format!(
        "POST /api/echo HTTP/1.1\r\nHost: x\r\nSec-Fetch-Site: same-origin\r\nCookie: {jar}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\
         Connection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    let r = send_raw(addr, raw.as_bytes()).await;
    assert_eq!(r.status, 413, "{}", r.text());
}

#[tokio::test]
async fn a_cross_site_form_is_refused_on_its_origin() {
    let addr = start(guard(&[1])).await;
    let s = Anon::start(addr).await;
    let jar = s.cookie(&s.token);
    let r = send(
        addr,
        "POST",
        "/api/echo",
        &[
            ("sec-fetch-site", "cross-site"),
            ("cookie", &jar),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        format!("csrf_token={}", s.token),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["code"], "csrf_origin_mismatch");
}

#[tokio::test]
async fn bypassed_paths_need_no_token() {
    let addr = start(guard(&[1]).bypass(["/hooks/**"])).await;
    let r = send(addr, "POST", "/hooks/github", &[], "").await;
    assert_eq!(r.status, 200);
    let r = send(addr, "POST", "/api/x", &[], "").await;
    assert_token_refused(&r, "not bypassed");
}

#[tokio::test]
async fn the_layer_serves_the_client_helper() {
    let addr = start(guard(&[1])).await;
    let r = fetch(addr, portcullis::csrf::CLIENT_JS_PATH).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.text(), portcullis::csrf::CLIENT_JS);
    assert!(r.text().contains("function csrfFetch"));
    assert!(
        set_cookies(&r).is_empty(),
        "serving the script issues nothing"
    );
}

#[test]
fn a_short_secret_is_refused_and_secrets_never_print() {
    assert!(Secret::new(vec![0u8; 16]).is_err());
    assert_eq!(format!("{:?}", secret(1)), "Secret([redacted])");
    let g = guard(&[1, 2]).build().unwrap();
    assert!(!format!("{g:?}").contains("[1, 1"));
}

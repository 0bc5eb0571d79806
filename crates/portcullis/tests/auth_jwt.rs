//! JWT authentication end to end over real TCP: every algorithm, the cookie source, roles
//! claims, JWKS files and a JWKS URL that rotates, fails and sets its cache lifetime.

mod auth_common;
mod common;

use std::sync::Arc;
use std::time::Duration;

use auth_common::*;
use axum::Router;
use axum::routing::get;
use common::*;
use portcullis::auth::jwks::{Jwks, JwksOptions, KeySet};
use portcullis::auth::jwt::{Algorithm, JwtAuthenticator, JwtError};
use portcullis::{Preset, SecurityLayer};
use serde_json::json;

async fn start(jwt: JwtAuthenticator) -> std::net::SocketAddr {
    let layer = SecurityLayer::builder()
        .route("/api/user/**", Preset::Authenticated)
        .authenticator(Arc::new(jwt))
        .build()
        .unwrap();
    let app = Router::new().route("/api/user/me", get(whoami));
    serve_with(app, layer).await
}

async fn me(addr: std::net::SocketAddr, token: &str) -> Reply {
    send(
        addr,
        "GET",
        "/api/user/me",
        &[("authorization", &bearer(token))],
        "",
    )
    .await
}

fn builder() -> portcullis::auth::jwt::JwtAuthenticatorBuilder {
    JwtAuthenticator::builder().issuer(ISS).audience(AUD)
}

/// An HS256 key, and an authenticator that also reads its token from the `authToken` cookie.
fn hs256_with_cookie() -> (TestKey, JwtAuthenticator) {
    let k = hmac_key(Algorithm::HS256);
    let jwt = builder()
        .key(k.verification())
        .cookie("authToken")
        .build()
        .unwrap();
    (k, jwt)
}

#[tokio::test]
async fn every_algorithm_verifies_with_a_kid_and_reaches_the_handler() {
    let keys = every_key();
    let mut b = builder();
    for k in &keys {
        b = b.key(k.verification().with_kid(format!("kid-{}", k.alg.name())));
    }
    let addr = start(b.build().unwrap()).await;
    for k in &keys {
        let kid = format!("kid-{}", k.alg.name());
        let token = k.token(Some(&kid), &claims("alice", &["user", "editor"]));
        let r = me(addr, &token).await;
        assert_eq!(
            r.status,
            200,
            "{} should verify: {}",
            k.alg.name(),
            r.text()
        );
        let v = r.json();
        assert_eq!(v["id"], "alice");
        assert_eq!(v["roles"], json!(["user", "editor"]));
        assert_eq!(v["method"], "Jwt");
        assert!(v["expires"].as_u64().unwrap() > now());
    }
}

#[tokio::test]
async fn every_algorithm_verifies_without_a_kid() {
    let keys = every_key();
    let mut b = builder();
    for k in &keys {
        b = b.key(k.verification());
    }
    let addr = start(b.build().unwrap()).await;
    for k in &keys {
        let r = me(addr, &k.token(None, &claims("bob", &["user"]))).await;
        assert_eq!(r.status, 200, "{}", k.alg.name());
        assert_eq!(r.json()["id"], "bob");
    }
}

#[tokio::test]
async fn a_token_from_another_key_of_the_same_algorithm_is_refused() {
    let ours = rsa_key(Algorithm::RS256);
    let theirs = other_rsa_key(Algorithm::RS256);
    let addr = start(builder().key(ours.verification()).build().unwrap()).await;
    let r = me(addr, &theirs.token(None, &claims("eve", &["admin"]))).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\"")
    );
}

#[tokio::test]
async fn the_configured_cookie_carries_the_token() {
    let (k, jwt) = hs256_with_cookie();
    let addr = start(jwt).await;
    let token = k.token(None, &claims("carol", &["user"]));
    let cookie = format!("theme=dark; authToken={token}; lang=en");
    let r = send(addr, "GET", "/api/user/me", &[("cookie", &cookie)], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["id"], "carol");
    // Another cookie name is no credential at all.
    let r = send(
        addr,
        "GET",
        "/api/user/me",
        &[("cookie", &format!("token={token}"))],
        "",
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    // Two cookies of the configured name are ambiguous (cookie tossing): refused.
    let two = format!("authToken={token}; authToken=x.y.z");
    let r = send(addr, "GET", "/api/user/me", &[("cookie", &two)], "").await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\"")
    );
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let k = hmac_key(Algorithm::HS256);
    let addr = start(builder().key(k.verification()).build().unwrap()).await;
    let token = k.token(None, &claims("dave", &[]));
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let h = format!("{scheme} {token}");
        let r = send(addr, "GET", "/api/user/me", &[("authorization", &h)], "").await;
        assert_eq!(r.status, 200, "{scheme}");
    }
}

#[tokio::test]
async fn roles_come_from_the_configured_claim() {
    let k = hmac_key(Algorithm::HS256);
    let keycloak = builder()
        .key(k.verification())
        .roles_claim("realm_access.roles")
        .build()
        .unwrap();
    let addr = start(keycloak).await;
    let mut c = claims("erin", &[]);
    c["realm_access"] = json!({"roles": ["admin", "user"]});
    let r = me(addr, &k.token(None, &c)).await;
    assert_eq!(r.json()["roles"], json!(["admin", "user"]));

    let namespaced = builder()
        .key(k.verification())
        .roles_claim("https://portcullis.test/roles")
        .build()
        .unwrap();
    let addr = start(namespaced).await;
    let mut c = claims("frank", &[]);
    c["https://portcullis.test/roles"] = json!(["auditor"]);
    let r = me(addr, &k.token(None, &c)).await;
    assert_eq!(r.json()["roles"], json!(["auditor"]));
}

#[tokio::test]
async fn the_default_roles_claim_is_roles_then_role() {
    let k = hmac_key(Algorithm::HS256);
    let addr = start(builder().key(k.verification()).build().unwrap()).await;
    // The seed's shape: a single `role` string.
    let mut c = claims("gina", &[]);
    c.as_object_mut().unwrap().remove("roles");
    c["role"] = json!("admin");
    let r = me(addr, &k.token(None, &c)).await;
    assert_eq!(r.json()["roles"], json!(["admin"]));
    // No roles claim at all: an authenticated principal without roles.
    let mut c = claims("hank", &[]);
    c.as_object_mut().unwrap().remove("roles");
    let r = me(addr, &k.token(None, &c)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["roles"], json!([]));
}

#[tokio::test]
async fn roles_of_the_wrong_type_are_refused() {
    assert_roles_refused([
        json!(7),
        json!({"admin": true}),
        json!(["ok", 1]),
        json!(null),
    ])
    .await;
}

/// Each of `bad` as the roles claim of an otherwise valid token: refused with `BadRoles`.
async fn assert_roles_refused(bad: impl IntoIterator<Item = serde_json::Value>) {
    let k = hmac_key(Algorithm::HS256);
    let jwt = builder().key(k.verification()).build().unwrap();
    for bad in bad {
        let mut c = claims("ivan", &[]);
        c["roles"] = bad.clone();
        assert_eq!(
            jwt.verify(&k.token(None, &c)).await.unwrap_err(),
            JwtError::BadRoles,
            "{bad}"
        );
    }
}

/// A subject or role an application behind would read differently from the gateway: a line
/// break that would end the `x-portcullis-user` header (or forge a log line), a comma that
/// would split `x-portcullis-roles` into two roles.
#[tokio::test]
async fn subjects_and_roles_that_would_not_travel_intact_are_refused() {
    let k = hmac_key(Algorithm::HS256);
    let jwt = builder().key(k.verification()).build().unwrap();
    for sub in [
        "a\r\nx-portcullis-roles: admin",
        "evil\n2026-12-07T00:00:00Z forbidden FAKE",
        "\u{1b}[31mred",
        "nul\u{0}",
        "tab\there",
    ] {
        let c = claims(sub, &["user"]);
        assert_eq!(
            jwt.verify(&k.token(None, &c)).await.unwrap_err(),
            JwtError::BadSubject,
            "{sub:?}"
        );
    }
    assert_roles_refused([
        json!(["user,admin"]),
        json!("user,admin"),
        json!(["user", "x\r\ny: z"]),
        json!(["user", ""]),
    ])
    .await;
    // What stays allowed: non-ASCII subjects, spaces and other punctuation in roles.
    let mut c = claims("jos\u{e9}@example.com", &[]);
    c["roles"] = json!(["Domain Admins", "realm:reader", "a/b"]);
    let p = jwt.verify(&k.token(None, &c)).await.unwrap();
    assert_eq!(p.id, "jos\u{e9}@example.com");
    assert_eq!(p.roles, ["Domain Admins", "realm:reader", "a/b"]);
}

#[tokio::test]
async fn a_jwks_file_supplies_keys() {
    let rs = rsa_key(Algorithm::RS256);
    let es = es256_key();
    let ed = ed25519_key();
    let hs = hmac_key(Algorithm::HS512);
    let doc = json!({"keys": [rs.jwk_with("r1"), es.jwk_with("e1"), ed.jwk_with("d1"), hs.jwk_with("h1")]});
    let path = std::env::temp_dir().join(format!("portcullis-jwks-{}.json", std::process::id()));
    std::fs::write(&path, doc.to_string()).unwrap();
    let set = KeySet::from_jwks(&std::fs::read_to_string(&path).unwrap()).unwrap();
    std::fs::remove_file(&path).ok();
    assert_eq!(set.len(), 4);
    let addr = start(builder().key_set(set).build().unwrap()).await;
    for (k, kid) in [(&rs, "r1"), (&es, "e1"), (&ed, "d1"), (&hs, "h1")] {
        let r = me(addr, &k.token(Some(kid), &claims("jane", &["user"]))).await;
        assert_eq!(r.status, 200, "{kid}");
    }
    // The right key id with another key's signature is refused.
    let r = me(
        addr,
        &other_rsa_key(Algorithm::RS256).token(Some("r1"), &claims("x", &[])),
    )
    .await;
    assert_eq!(r.status, 401);
}

fn fast_options() -> JwksOptions {
    JwksOptions::default()
        .refresh_cooldown(Duration::from_millis(300))
        .ttl_bounds(Duration::from_millis(200), Duration::from_secs(3600))
}

#[tokio::test]
async fn jwks_url_rotation_picks_up_a_new_kid() {
    let old = es256_key();
    let new = ed25519_key();
    let server = JwksServer::new(&[(&old, "2026-01")]);
    let (url, _task) = server.start().await;
    let jwks = Jwks::with_options(&url, fast_options()).unwrap();
    let addr = start(builder().jwks(jwks.clone()).build().unwrap()).await;

    let r = me(addr, &old.token(Some("2026-01"), &claims("kim", &["user"]))).await;
    assert_eq!(r.status, 200);
    assert_eq!(server.hits(), 1);

    server.publish(&[(&old, "2026-01"), (&new, "2026-02")]);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let r = me(addr, &new.token(Some("2026-02"), &claims("kim", &["user"]))).await;
    assert_eq!(r.status, 200, "the unknown kid triggers a refresh");
    assert_eq!(server.hits(), 2);
    // Both keys are now cached: no further fetch.
    let r = me(addr, &old.token(Some("2026-01"), &claims("kim", &["user"]))).await;
    assert_eq!(r.status, 200);
    assert_eq!(jwks.fetch_count(), 2);
}

#[tokio::test]
async fn unknown_kids_within_ten_seconds_fetch_once() {
    let k = rsa_key(Algorithm::RS256);
    let server = JwksServer::new(&[(&k, "known")]);
    let (url, _task) = server.start().await;
    let jwks = Jwks::new(&url).unwrap();
    let addr = start(builder().jwks(jwks).build().unwrap()).await;
    // Cold: the first request loads the set; its kid is not there, and the set was just
    // fetched, so no second fetch.
    let r = me(addr, &k.token(Some("unknown-1"), &claims("lee", &[]))).await;
    assert_eq!(r.status, 401);
    let r = me(addr, &k.token(Some("unknown-2"), &claims("lee", &[]))).await;
    assert_eq!(r.status, 401);
    assert_eq!(server.hits(), 1);
    let r = me(addr, &k.token(Some("known"), &claims("lee", &[]))).await;
    assert_eq!(r.status, 200);
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn concurrent_requests_on_a_cold_cache_share_one_fetch() {
    let k = ed25519_key();
    let server = JwksServer::new(&[(&k, "a")]);
    let (url, _task) = server.start().await;
    let addr = start(builder().jwks(Jwks::new(&url).unwrap()).build().unwrap()).await;
    let token = k.token(Some("a"), &claims("mia", &["user"]));
    let replies = futures_util::future::join_all((0..20).map(|_| me(addr, &token))).await;
    assert!(replies.iter().all(|r| r.status == 200));
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn the_last_good_key_set_survives_an_issuer_outage() {
    let k = es384_key();
    let server = JwksServer::new(&[(&k, "a")]);
    server.set_cache_control(Some("max-age=0"));
    let (url, task) = server.start().await;
    let jwks = Jwks::with_options(&url, fast_options()).unwrap();
    let addr = start(builder().jwks(jwks.clone()).build().unwrap()).await;
    let token = k.token(Some("a"), &claims("ned", &["user"]));
    assert_eq!(me(addr, &token).await.status, 200);

    for mode in [Mode::ServerError, Mode::Garbage] {
        server.set_mode(mode);
        let before = server.hits();
        tokio::time::sleep(Duration::from_millis(350)).await;
        let r = me(addr, &token).await;
        assert_eq!(r.status, 200, "{mode:?}: the last good set still verifies");
        tokio::task::yield_now().await;
        assert_eq!(server.hits(), before + 1, "{mode:?}: a refresh was tried");
    }
    // Now the issuer is gone altogether.
    task.abort();
    let _ = task.await;
    tokio::time::sleep(Duration::from_millis(350)).await;
    let fetches = jwks.fetch_count();
    let r = me(addr, &token).await;
    assert_eq!(
        r.status, 200,
        "connection refused: the last good set still verifies"
    );
    assert_eq!(jwks.fetch_count(), fetches + 1);
    // And a token for a kid it never published stays refused.
    let r = me(addr, &k.token(Some("b"), &claims("ned", &[]))).await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn an_issuer_down_from_the_start_means_401_not_a_hang() {
    let k = ed25519_key();
    let (url, task) = JwksServer::new(&[(&k, "a")]).start().await;
    task.abort();
    let _ = task.await;
    let jwt = builder().jwks(Jwks::new(&url).unwrap()).build().unwrap();
    assert_eq!(
        jwt.verify(&k.token(Some("a"), &claims("o", &[]))).await,
        Err(JwtError::KeysUnavailable)
    );
}

#[tokio::test]
async fn cache_control_max_age_sets_the_refetch_time() {
    let k = ed25519_key();
    let server = JwksServer::new(&[(&k, "a")]);
    let (url, _task) = server.start().await;
    let opts = JwksOptions::default()
        .refresh_cooldown(Duration::ZERO)
        .ttl_bounds(Duration::from_millis(100), Duration::from_secs(3600));
    let jwt = builder()
        .jwks(Jwks::with_options(&url, opts).unwrap())
        .build()
        .unwrap();
    let token = k.token(Some("a"), &claims("pat", &[]));

    // max-age=1: fresh for a second, then fetched again.
    server.set_cache_control(Some("public, max-age=1"));
    jwt.verify(&token).await.unwrap();
    jwt.verify(&token).await.unwrap();
    assert_eq!(server.hits(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    jwt.verify(&token).await.unwrap();
    assert_eq!(server.hits(), 2);

    // max-age=3600 from that response on: no fetch a second later.
    server.set_cache_control(Some("max-age=3600"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    jwt.verify(&token).await.unwrap();
    assert_eq!(server.hits(), 3);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    jwt.verify(&token).await.unwrap();
    assert_eq!(server.hits(), 3);
}

#[tokio::test]
async fn static_keys_and_a_jwks_work_side_by_side() {
    let dev = hmac_key(Algorithm::HS256);
    let idp = rsa_key(Algorithm::RS256);
    let server = JwksServer::new(&[(&idp, "idp-1")]);
    let (url, _task) = server.start().await;
    let jwt = builder()
        .key(dev.verification())
        .jwks(Jwks::new(&url).unwrap())
        .build()
        .unwrap();
    assert_eq!(
        jwt.verify(&dev.token(None, &claims("q", &[])))
            .await
            .unwrap()
            .id,
        "q"
    );
    assert_eq!(server.hits(), 0, "a static key needs no fetch");
    assert_eq!(
        jwt.verify(&idp.token(Some("idp-1"), &claims("r", &[])))
            .await
            .unwrap()
            .id,
        "r"
    );
    assert_eq!(server.hits(), 1);
}

#[tokio::test]
async fn debug_output_never_shows_secrets() {
    let k = hmac_key(Algorithm::HS256);
    let secret = k.secret.clone().unwrap();
    let jwt = builder().key(k.verification()).build().unwrap();
    let token = k.token(None, &claims("s", &[]));
    let shown = format!("{jwt:?} {:?} {secret:?}", k.verification());
    assert!(!shown.contains(&token));
    assert!(shown.contains("[redacted]"));
    let raw = String::from_utf8_lossy(secret.expose()).to_string();
    assert!(!shown.contains(&raw));
    let err = jwt.verify(&format!("{token}x")).await.unwrap_err();
    assert!(!format!("{err} {err:?}").contains(&token[..20]));
}

/// A second token in another `Cookie` field counts as two even when that field also holds a
/// non-ASCII cookie: the application gets the fields joined and may read that token first.
#[test]
fn a_second_token_cookie_in_a_non_ascii_field_is_still_two() {
    use portcullis::auth::{AuthOutcome, Authenticator};
    let (k, jwt) = hs256_with_cookie();
    let token = k.token(None, &claims("dave", &["user"]));
    let forged = b"authToken=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJyb290In0.AAAA; lang=caf\xc3\xa9";
    let outcome = |fields: &[&[u8]]| {
        let mut req = http::Request::builder().uri("/api/user/me");
        for f in fields {
            req = req.header("cookie", http::HeaderValue::from_bytes(f).unwrap());
        }
        let (parts, ()) = req.body(()).unwrap().into_parts();
        jwt.authenticate_now(&parts)
    };
    let ours = format!("authToken={token}");
    assert!(matches!(
        outcome(&[forged, ours.as_bytes()]),
        Some(AuthOutcome::Invalid("multiple_credentials"))
    ));
    // A non-ASCII field without our cookie changes nothing; our value not UTF-8 is malformed.
    assert!(outcome(&[b"lang=caf\xc3\xa9", ours.as_bytes()]).is_none());
    assert!(matches!(
        outcome(&[b"authToken=caf\xff"]),
        Some(AuthOutcome::Invalid("malformed"))
    ));
}

/// What the layer learns without awaiting verification: nothing to verify, or something
/// malformed, is answered at once; a token must go through `authenticate`.
#[test]
fn outcomes_known_without_verifying_are_answered_at_once() {
    use portcullis::auth::{AuthOutcome, Authenticator};
    let (k, jwt) = hs256_with_cookie();
    let now = |headers: &[(&str, &str)]| {
        let mut req = http::Request::builder().uri("/api/user/me");
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        let (parts, ()) = req.body(()).unwrap().into_parts();
        jwt.authenticate_now(&parts)
    };
    let token = k.token(None, &claims("dave", &["user"]));
    assert!(matches!(now(&[]), Some(AuthOutcome::NoCredentials)));
    assert!(matches!(
        now(&[("authorization", "Basic YTpi")]),
        Some(AuthOutcome::NoCredentials)
    ));
    assert!(matches!(
        now(&[("authorization", "Bearer ")]),
        Some(AuthOutcome::Invalid(_))
    ));
    assert!(matches!(
        now(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]),
        Some(AuthOutcome::Invalid(_))
    ));
    // A token, in the header or the cookie, is verified (never decided here).
    assert!(now(&[("authorization", &bearer(&token))]).is_none());
    assert!(now(&[("cookie", &format!("authToken={token}"))]).is_none());
    // A forged token is not accepted at once either: it reaches verification.
    assert!(now(&[("authorization", "Bearer x.y.z")]).is_none());
}

//! API keys over real TCP: both header forms, expiry, unknown keys, roles, hash-only storage,
//! `generate()`, and the JWT-then-API-key chain.

mod auth_common;
mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use auth_common::*;
use axum::Router;
use axum::routing::get;
use common::*;
use portcullis::audit::MemorySink;
use portcullis::auth::AnyOf;
use portcullis::auth::api_key::{self, ApiKey, ApiKeyAuthenticator};
use portcullis::auth::jwt::{Algorithm, JwtAuthenticator};
use portcullis::{Policy, Preset, SecurityLayer};

struct Fixture {
    addr: std::net::SocketAddr,
    sink: MemorySink,
    ci: String,
    reporting: String,
    expired: String,
}

async fn start_with(
    auth: Arc<dyn portcullis::auth::Authenticator>,
    sink: MemorySink,
) -> std::net::SocketAddr {
    let layer = SecurityLayer::builder()
        .route("/api/user/**", Preset::Authenticated)
        .route(
            "/api/deploy/**",
            Policy::preset(Preset::Authenticated).roles(["deploy"]),
        )
        .authenticator(auth)
        .audit(Arc::new(sink))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/api/user/me", get(whoami))
        .route("/api/deploy/run", get(whoami));
    serve_with(app, layer).await
}

async fn start() -> Fixture {
    let ci = api_key::generate();
    let reporting = api_key::generate();
    let expired = api_key::generate();
    let keys = ApiKeyAuthenticator::new([
        ApiKey::new("ci", ci.hash_line(), ["deploy", "user"]).unwrap(),
        ApiKey::new("reporting", reporting.hash_line(), ["reader"])
            .unwrap()
            .expires_at(SystemTime::now() + Duration::from_secs(3600)),
        ApiKey::new("old", expired.hash_line(), ["deploy"])
            .unwrap()
            .expires_at(SystemTime::now() - Duration::from_secs(1)),
    ])
    .unwrap();
    let sink = MemorySink::default();
    Fixture {
        addr: start_with(Arc::new(keys), sink.clone()).await,
        sink,
        ci: ci.key().to_string(),
        reporting: reporting.key().to_string(),
        expired: expired.key().to_string(),
    }
}

async fn get_with(addr: std::net::SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    send(addr, "GET", path, headers, "").await
}

#[tokio::test]
async fn both_header_forms_authenticate() {
    let f = start().await;
    let scheme = format!("ApiKey {}", f.ci);
    let r = get_with(f.addr, "/api/user/me", &[("authorization", &scheme)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["id"], "ci");
    assert_eq!(r.json()["method"], "ApiKey");
    let lower = format!("apikey {}", f.ci);
    let r = get_with(f.addr, "/api/user/me", &[("authorization", &lower)]).await;
    assert_eq!(r.status, 200);
    let r = get_with(f.addr, "/api/user/me", &[("x-api-key", &f.reporting)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["id"], "reporting");
    assert!(r.json()["expires"].as_u64().is_some());
}

#[tokio::test]
async fn roles_of_the_key_decide_403_or_200() {
    let f = start().await;
    let r = get_with(f.addr, "/api/deploy/run", &[("x-api-key", &f.ci)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["roles"], serde_json::json!(["deploy", "user"]));
    let r = get_with(f.addr, "/api/deploy/run", &[("x-api-key", &f.reporting)]).await;
    assert_eq!(r.status, 403);
    assert_eq!(f.sink.events()[0].principal.as_deref(), Some("reporting"));
}

#[tokio::test]
async fn an_expired_key_is_refused() {
    let f = start().await;
    let r = get_with(f.addr, "/api/deploy/run", &[("x-api-key", &f.expired)]).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\"")
    );
    assert_eq!(f.sink.events()[0].metadata["detail"], "expired");
}

#[tokio::test]
async fn unknown_and_malformed_keys_are_refused_and_never_audited() {
    let f = start().await;
    let unknown = api_key::generate();
    let near_miss = format!("{}x", f.ci);
    for key in [unknown.key(), near_miss.as_str(), &f.ci[..f.ci.len() - 1]] {
        let r = get_with(f.addr, "/api/user/me", &[("x-api-key", key)]).await;
        assert_eq!(r.status, 401, "{key}");
    }
    let r = get_with(f.addr, "/api/user/me", &[("x-api-key", &"k".repeat(600))]).await;
    assert_eq!(r.status, 401);
    let both = [
        ("x-api-key", f.ci.as_str()),
        ("x-api-key", f.reporting.as_str()),
    ];
    assert_eq!(get_with(f.addr, "/api/user/me", &both).await.status, 401);
    let events = f.sink.events();
    let details: Vec<_> = events
        .iter()
        .map(|e| e.metadata["detail"].clone())
        .collect();
    assert_eq!(
        details,
        [
            "unknown_key",
            "unknown_key",
            "unknown_key",
            "malformed",
            "multiple_credentials"
        ]
    );
    let all = serde_json::to_string(&events).unwrap();
    assert!(!all.contains(&f.ci[3..20]) && !all.contains(unknown.key()));
}

#[tokio::test]
async fn no_key_is_no_credentials() {
    let f = start().await;
    let r = get_with(f.addr, "/api/user/me", &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    // A bearer token is not an API key.
    let r = get_with(f.addr, "/api/user/me", &[("authorization", "Bearer abc")]).await;
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
}

#[test]
fn only_the_hash_is_stored() {
    let k = api_key::generate();
    let entry = ApiKey::new("ci", k.hash_line(), ["deploy"]).unwrap();
    let auth = ApiKeyAuthenticator::new([entry.clone()]).unwrap();
    let stored = format!("{entry:?} {auth:?}");
    assert!(!stored.contains(k.key()));
    assert!(!stored.contains(&k.hash_line()[7..]));
    assert!(!format!("{k:?}").contains(k.key()));
    // The hash line is SHA-256 of the key, and the key cannot be recovered from config.
    assert_eq!(k.hash_line(), api_key::hash_key(k.key()));
    assert!(k.hash_line().starts_with("sha256:") && k.hash_line().len() == 7 + 64);
}

#[test]
fn generate_round_trips_and_never_repeats() {
    let mut seen = std::collections::HashSet::new();
    for _ in 0..100 {
        let k = api_key::generate();
        assert!(k.key().starts_with("pk_"));
        assert_eq!(k.key().len(), 3 + 43, "32 random bytes, base64url");
        let auth =
            ApiKeyAuthenticator::new([ApiKey::new("x", k.hash_line(), ["r"]).unwrap()]).unwrap();
        assert_eq!(auth.verify(k.key()).unwrap().id, "x");
        assert!(seen.insert(k.key().to_string()));
    }
}

#[tokio::test]
async fn the_chain_tries_jwt_then_api_keys_and_a_bad_token_is_final() {
    let hs = hmac_key(Algorithm::HS256);
    let jwt = JwtAuthenticator::builder()
        .issuer(ISS)
        .audience(AUD)
        .key(hs.verification())
        .cookie("authToken")
        .build()
        .unwrap();
    let ci = api_key::generate();
    let keys =
        ApiKeyAuthenticator::new([ApiKey::new("ci", ci.hash_line(), ["deploy"]).unwrap()]).unwrap();
    let sink = MemorySink::default();
    let addr = start_with(Arc::new(AnyOf::new().or(jwt).or(keys)), sink.clone()).await;

    let token = hs.token(None, &claims("alice", &["user"]));
    let r = get_with(addr, "/api/user/me", &[("authorization", &bearer(&token))]).await;
    assert_eq!((r.status, r.json()["id"].clone()), (200, "alice".into()));
    let r = get_with(addr, "/api/user/me", &[("x-api-key", ci.key())]).await;
    assert_eq!((r.status, r.json()["id"].clone()), (200, "ci".into()));
    // An explicit `Authorization: ApiKey` wins over an ambient (stale) session cookie.
    let explicit = format!("ApiKey {}", ci.key());
    let r = get_with(
        addr,
        "/api/deploy/run",
        &[
            ("authorization", &explicit),
            ("cookie", "authToken=stale.x.y"),
        ],
    )
    .await;
    assert_eq!((r.status, r.json()["id"].clone()), (200, "ci".into()));
    // So does an `X-API-Key`.
    let r = get_with(
        addr,
        "/api/deploy/run",
        &[("x-api-key", ci.key()), ("cookie", "authToken=stale.x.y")],
    )
    .await;
    assert_eq!((r.status, r.json()["id"].clone()), (200, "ci".into()));
    // And a bad one is refused as a bad key, whatever session cookie sits beside it.
    let good_cookie = format!("authToken={token}");
    let r = get_with(
        addr,
        "/api/deploy/run",
        &[("x-api-key", "pk_not_a_key"), ("cookie", &good_cookie)],
    )
    .await;
    assert_eq!(r.status, 401);
    // A bad bearer token is refused even with a good API key beside it.
    let r = get_with(
        addr,
        "/api/deploy/run",
        &[("authorization", "Bearer x.y.z"), ("x-api-key", ci.key())],
    )
    .await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn a_token_whose_subject_names_an_api_key_does_not_spend_the_keys_quota() {
    use portcullis::policy::{RateKey, RateLimitSpec};
    let hs = hmac_key(Algorithm::HS256);
    let jwt = JwtAuthenticator::builder()
        .issuer(ISS)
        .audience(AUD)
        .key(hs.verification())
        .build()
        .unwrap();
    let ci = api_key::generate();
    let keys =
        ApiKeyAuthenticator::new([ApiKey::new("ci-bot", ci.hash_line(), ["deploy"]).unwrap()])
            .unwrap();
    let once = RateLimitSpec::new(1, Duration::from_secs(3600), RateKey::User);
    let layer = SecurityLayer::builder()
        .route(
            "/api/user/**",
            Policy::preset(Preset::Authenticated).rate_limits([once]),
        )
        .authenticator(Arc::new(AnyOf::new().or(jwt).or(keys)))
        .build()
        .unwrap();
    let addr = serve_with(Router::new().route("/api/user/me", get(whoami)), layer).await;

    // A user who could choose the subject `ci-bot` (a sign-up form's user name) spends its own
    // quota...
    let token = hs.token(None, &claims("ci-bot", &["user"]));
    let bearer = bearer(&token);
    let as_user = [("authorization", bearer.as_str())];
    assert_eq!(get_with(addr, "/api/user/me", &as_user).await.status, 200);
    assert_eq!(get_with(addr, "/api/user/me", &as_user).await.status, 429);
    // ...not the API key's of the same name.
    let as_key = [("x-api-key", ci.key())];
    let r = get_with(addr, "/api/user/me", &as_key).await;
    assert_eq!((r.status, r.json()["id"].clone()), (200, "ci-bot".into()));
    assert_eq!(get_with(addr, "/api/user/me", &as_key).await.status, 429);
}

//! Roles per route: 401 without or with bad credentials, 403 with too few roles, 200 with
//! enough; and what the audit log keeps (principal and reason, never the token).

mod auth_common;
mod common;

use std::sync::Arc;

use auth_common::*;
use axum::Router;
use axum::routing::{any, get};
use common::*;
use portcullis::audit::{AuditEvent, MemorySink};
use portcullis::auth::jwt::{Algorithm, JwtAuthenticator};
use portcullis::{Policy, Preset, SecurityLayer};

/// An HS256 key and the authenticator verifying its tokens (issuer and audience of the tests).
fn hs256_authenticator() -> (TestKey, JwtAuthenticator) {
    let key = hmac_key(Algorithm::HS256);
    let jwt = JwtAuthenticator::builder()
        .issuer(ISS)
        .audience(AUD)
        .key(key.verification())
        .build()
        .unwrap();
    (key, jwt)
}

struct App {
    addr: std::net::SocketAddr,
    sink: MemorySink,
    key: TestKey,
}

async fn start() -> App {
    let (key, jwt) = hs256_authenticator();
    let sink = MemorySink::default();
    let layer = SecurityLayer::builder()
        .route("/api/user/**", Preset::Authenticated)
        .route(
            "/api/admin/**",
            Policy::preset(Preset::Authenticated).roles(["admin", "owner"]),
        )
        .route(
            "/api/vault/**",
            Policy::preset(Preset::Authenticated).all_roles(["admin", "mfa"]),
        )
        .route("/api/public-data", Preset::Public)
        .authenticator(Arc::new(jwt))
        .audit(Arc::new(sink.clone()))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/api/user/me", get(whoami))
        .route("/api/admin/users", any(whoami))
        .route("/api/vault/secrets", get(whoami))
        .route("/api/public-data", get(|| async { "public" }));
    App {
        addr: serve_with(app, layer).await,
        sink,
        key,
    }
}

impl App {
    fn token(&self, sub: &str, roles: &[&str]) -> String {
        self.key.token(None, &claims(sub, roles))
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let auth = token.map(bearer);
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        send(self.addr, "GET", path, &headers, "").await
    }
}

/// `GET /api/admin/users` with the bearer `token`, if any: the status.
async fn admin_users_status(addr: std::net::SocketAddr, token: Option<String>) -> u16 {
    let auth = token.map(|t| bearer(&t));
    let h: Vec<(&str, &str)> = auth.iter().map(|v| ("authorization", v.as_str())).collect();
    send(addr, "GET", "/api/admin/users", &h, "").await.status
}

fn serialized(events: &[AuditEvent]) -> String {
    serde_json::to_string(events).unwrap()
}

#[tokio::test]
async fn no_credentials_get_a_bare_bearer_challenge() {
    let app = start().await;
    let r = app.get("/api/user/me", None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(r.json()["code"], "unauthorized");
}

#[tokio::test]
async fn an_invalid_token_gets_invalid_token_and_its_reason_is_audited() {
    let app = start().await;
    let expired = app.key.token(None, &{
        let mut c = claims("alice", &["admin"]);
        c["exp"] = serde_json::json!(now() - 3600);
        c
    });
    let r = app.get("/api/admin/users", Some(&expired)).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\"")
    );
    let events = app.sink.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].action.as_str(), "unauthorized_access");
    assert_eq!(events[0].metadata["detail"], "expired");
    assert_eq!(events[0].principal, None);
    assert!(!serialized(&events).contains(&expired));
}

#[tokio::test]
async fn any_of_roles_gives_403_without_one_and_200_with_one() {
    let app = start().await;
    let user = app.token("bob", &["user"]);
    let r = app.get("/api/admin/users", Some(&user)).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["code"], "forbidden");
    assert_eq!(r.header("www-authenticate"), None);
    for roles in [&["admin"][..], &["owner"], &["user", "owner"]] {
        let t = app.token("carol", roles);
        let r = app.get("/api/admin/users", Some(&t)).await;
        assert_eq!(r.status, 200, "{roles:?}");
        assert_eq!(r.json()["id"], "carol");
    }
}

#[tokio::test]
async fn all_of_roles_needs_every_one() {
    let app = start().await;
    let admin_only = app.token("dave", &["admin"]);
    assert_eq!(
        app.get("/api/vault/secrets", Some(&admin_only))
            .await
            .status,
        403
    );
    let mfa_only = app.token("dave", &["mfa"]);
    assert_eq!(
        app.get("/api/vault/secrets", Some(&mfa_only)).await.status,
        403
    );
    let both = app.token("dave", &["mfa", "admin", "user"]);
    assert_eq!(app.get("/api/vault/secrets", Some(&both)).await.status, 200);
}

#[tokio::test]
async fn authenticated_routes_take_any_valid_principal() {
    let app = start().await;
    let none = app.token("erin", &[]);
    let r = app.get("/api/user/me", Some(&none)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["id"], "erin");
}

#[tokio::test]
async fn public_routes_ignore_bad_tokens() {
    let app = start().await;
    let r = app.get("/api/public-data", Some("not.a.token")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "public");
}

#[tokio::test]
async fn a_403_is_audited_with_the_principal_and_never_the_token() {
    let app = start().await;
    let user = app.token("frank", &["user"]);
    assert_eq!(app.get("/api/admin/users", Some(&user)).await.status, 403);
    let bad = format!("{user}x");
    assert_eq!(app.get("/api/admin/users", Some(&bad)).await.status, 401);
    assert_eq!(app.get("/api/admin/users", None).await.status, 401);

    let events = app.sink.events();
    assert_eq!(events.len(), 3);
    assert_eq!(events[0].action.as_str(), "forbidden");
    assert_eq!(events[0].principal.as_deref(), Some("frank"));
    assert_eq!(events[0].status, 403);
    assert_eq!(events[1].action.as_str(), "unauthorized_access");
    assert_eq!(events[1].metadata["detail"], "bad_signature");
    assert_eq!(events[2].metadata.get("detail"), None);
    let all = serialized(&events);
    for secret in [user.as_str(), bad.as_str(), &user[..user.len() / 2]] {
        assert!(!all.contains(secret), "a token leaked into audit");
    }
    let sig = user.rsplit('.').next().unwrap();
    assert!(!all.contains(sig), "a signature leaked into audit");
}

#[tokio::test]
async fn repeated_bad_credentials_from_one_address_get_429_on_authenticated_routes() {
    use portcullis::auth::FailedAuthTracker;
    use std::time::Duration;
    let (key, jwt) = hs256_authenticator();
    let sink = MemorySink::default();
    let layer = SecurityLayer::builder()
        .route("/api/user/**", Preset::Authenticated)
        .route("/api/public-data", Preset::Public)
        .authenticator(Arc::new(jwt))
        .failed_auth(Some(Arc::new(FailedAuthTracker::new(
            3,
            Duration::from_secs(900),
        ))))
        .audit(Arc::new(sink.clone()))
        .build()
        .unwrap();
    let app = Router::new()
        .route("/api/user/me", get(whoami))
        .route("/api/public-data", get(|| async { "public" }));
    let addr = serve_with(app, layer).await;
    let bad = bearer("eyJhbGciOiJIUzI1NiJ9.e30.AAAA");
    let good = bearer(&key.token(None, &claims("alice", &["user"])));
    async fn req(addr: std::net::SocketAddr, h: &str) -> Reply {
        send(addr, "GET", "/api/user/me", &[("authorization", h)], "").await
    }
    // No credentials do not count.
    for _ in 0..5 {
        assert_eq!(send(addr, "GET", "/api/user/me", &[], "").await.status, 401);
    }
    for _ in 0..3 {
        assert_eq!(req(addr, &bad).await.status, 401);
    }
    let r = req(addr, &good).await;
    assert_eq!(r.status, 429, "blocked even with a valid token");
    assert!(r.header("retry-after").is_some());
    assert_eq!(r.json()["code"], "rate_limited");
    // Public routes stay open; bad tokens there do not count.
    let p = send(
        addr,
        "GET",
        "/api/public-data",
        &[("authorization", &bad)],
        "",
    )
    .await;
    assert_eq!(p.status, 200);
    let last = sink.events().pop().unwrap();
    assert_eq!(last.metadata["detail"], "too_many_failed_auth");
}

/// Guesses sent at once, to a store with a network's delay (Redis, for a fleet): each is
/// counted as it is checked, so exactly `limit` get their 401 and the rest 429. A check made
/// before any of them is counted would let every one through to an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_guesses_gets_limit_answers_however_slow_the_store() {
    use portcullis::auth::{BoxFuture, FailedAuthTracker};
    use portcullis::rate_limit::algorithm::Verdict;
    use portcullis::rate_limit::memory::MemoryStore;
    use portcullis::rate_limit::{Charge, RateLimitStore, StoreError};
    use std::time::Duration;
    struct Far(MemoryStore);
    impl RateLimitStore for Far {
        fn decide<'a>(
            &'a self,
            charges: &'a [Charge<'a>],
        ) -> BoxFuture<'a, Result<Vec<Verdict>, StoreError>> {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                self.0.decide(charges).await
            })
        }
        fn name(&self) -> &'static str {
            "far"
        }
    }
    let (_, jwt) = hs256_authenticator();
    let tracker = FailedAuthTracker::with_store(
        5,
        Duration::from_secs(900),
        Arc::new(Far(MemoryStore::new(1000))),
    );
    let layer = SecurityLayer::builder()
        .route(
            "/api/user/**",
            Policy::preset(Preset::Authenticated).rate_limits([]),
        )
        .authenticator(Arc::new(jwt))
        .failed_auth(Some(Arc::new(tracker)))
        .no_rate_limiter()
        .build()
        .unwrap();
    let app = Router::new().route("/api/user/me", get(whoami));
    let addr = serve_with(app, layer).await;
    let guesses: Vec<_> = (0..30)
        .map(|i| {
            tokio::spawn(async move {
                let h = bearer(&format!("eyJhbGciOiJIUzI1NiJ9.e30.guess{i}"));
                send(addr, "GET", "/api/user/me", &[("authorization", &h)], "")
                    .await
                    .status
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for g in guesses {
        statuses.push(g.await.unwrap());
    }
    let answered = statuses.iter().filter(|&&s| s == 401).count();
    let refused = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!((answered, refused), (5, 25), "{statuses:?}");
}

/// A brute-force store that is down: with `on_store_error` closed (the default) every request
/// with credentials to an authenticated route is refused with 503, whatever its credentials —
/// a right guess and a wrong one get the same answer, and guessing is not unlimited; open,
/// the credentials decide.
#[tokio::test]
async fn a_brute_force_store_that_is_down_applies_on_store_error() {
    use portcullis::auth::{BoxFuture, FailedAuthTracker};
    use portcullis::rate_limit::algorithm::Verdict;
    use portcullis::rate_limit::{Charge, OnStoreError, RateLimitStore, StoreError};
    use std::time::Duration;
    struct Down;
    impl RateLimitStore for Down {
        fn decide<'a>(
            &'a self,
            _: &'a [Charge<'a>],
        ) -> BoxFuture<'a, Result<Vec<Verdict>, StoreError>> {
            Box::pin(async { Err(StoreError::new("down")) })
        }
        fn name(&self) -> &'static str {
            "down"
        }
    }
    for mode in [OnStoreError::Closed, OnStoreError::Open] {
        let (key, jwt) = hs256_authenticator();
        let sink = MemorySink::default();
        let tracker = Arc::new(
            FailedAuthTracker::with_store(3, Duration::from_secs(900), Arc::new(Down))
                .on_store_error(mode),
        );
        let layer = SecurityLayer::builder()
            .route(
                "/api/user/**",
                Policy::preset(Preset::Authenticated).rate_limits([]),
            )
            .route("/api/public-data", Preset::Public)
            .authenticator(Arc::new(jwt))
            .failed_auth(Some(tracker.clone()))
            .no_rate_limiter()
            .audit(Arc::new(sink.clone()))
            .build()
            .unwrap();
        let app = Router::new()
            .route("/api/user/me", get(whoami))
            .route("/api/public-data", get(|| async { "public" }));
        let addr = serve_with(app, layer).await;
        let bad = bearer("eyJhbGciOiJIUzI1NiJ9.e30.AAAA");
        let good = bearer(&key.token(None, &claims("alice", &["user"])));
        let get_me = |h: String| async move {
            send(addr, "GET", "/api/user/me", &[("authorization", &h)], "").await
        };
        let mut statuses = Vec::new();
        for _ in 0..6 {
            statuses.push(get_me(bad.clone()).await.status);
        }
        let right = get_me(good.clone()).await;
        match mode {
            OnStoreError::Closed => {
                assert_eq!(statuses, [503; 6], "{mode:?}");
                assert_eq!(right.status, 503, "a right guess is not told apart");
                assert_eq!(right.json()["code"], "rate_limit_unavailable");
                assert_eq!(right.header("retry-after"), Some("5"));
                let last = sink.events().pop().unwrap();
                assert_eq!(last.status, 503);
                assert_eq!(last.metadata["detail"], "failed_auth_store_unavailable");
            }
            OnStoreError::Open => {
                assert_eq!(statuses, [401; 6], "{mode:?}");
                assert_eq!(right.status, 200);
            }
        }
        assert!(tracker.store_errors() >= 7, "{mode:?}: counted");
        // Public routes never ask the store.
        let p = send(addr, "GET", "/api/public-data", &[], "").await;
        assert_eq!(p.status, 200, "{mode:?}");
    }
}

/// An API route's answer to an authenticated request is `no-store` whatever the application
/// said: a `public` or `s-maxage` answer to one user must never reach another through a
/// shared cache. Anonymous answers keep the application's caching.
#[tokio::test]
async fn authenticated_answers_are_never_stored_even_when_the_app_says_public() {
    let (key, jwt) = hs256_authenticator();
    let layer = SecurityLayer::builder()
        .route("/api/user/**", Preset::Authenticated)
        .route("/api/public/**", Preset::Public)
        .authenticator(Arc::new(jwt))
        .build()
        .unwrap();
    let cached = || async {
        (
            [(
                http::header::CACHE_CONTROL,
                "public, max-age=3600, s-maxage=600",
            )],
            "data",
        )
    };
    let app = Router::new()
        .route("/api/user/me", get(cached))
        .route("/api/public/data", get(cached));
    let addr = serve_with(app, layer).await;
    let good = bearer(&key.token(None, &claims("alice", &["user"])));
    let r = send(addr, "GET", "/api/user/me", &[("authorization", &good)], "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.headers.get_all("cache-control").iter().count(), 1);
    let r = send(addr, "GET", "/api/public/data", &[], "").await;
    assert_eq!(
        r.header("cache-control"),
        Some("public, max-age=3600, s-maxage=600")
    );
}

/// While authentication is only reported, its brute-force limit is too: a client whose tokens
/// keep failing is audited (`too_many_failed_auth`, outcome `report_only`) but still let
/// through, as the roll-out promises — a wrong guess gets through anyway.
#[tokio::test]
async fn the_brute_force_limit_is_report_only_while_authentication_is() {
    use portcullis::Control;
    use portcullis::audit::Outcome;
    use portcullis::auth::FailedAuthTracker;
    use portcullis::policy::ReportOnly;
    use std::time::Duration;
    let (key, jwt) = hs256_authenticator();
    let sink = MemorySink::default();
    let layer = SecurityLayer::builder()
        .route(
            "/api/user/**",
            Policy::preset(Preset::Authenticated)
                .report_only(ReportOnly::Controls(vec![Control::Authentication])),
        )
        .authenticator(Arc::new(jwt))
        .failed_auth(Some(Arc::new(FailedAuthTracker::new(
            3,
            Duration::from_secs(900),
        ))))
        .audit(Arc::new(sink.clone()))
        .build()
        .unwrap();
    let addr = serve_with(
        Router::new().route("/api/user/me", get(|| async { "ok" })),
        layer,
    )
    .await;
    let bad = bearer("eyJhbGciOiJIUzI1NiJ9.e30.AAAA");
    let good = bearer(&key.token(None, &claims("alice", &["user"])));
    for h in [&bad, &bad, &bad, &bad, &bad, &good] {
        let r = send(addr, "GET", "/api/user/me", &[("authorization", h)], "").await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let events = sink.events();
    let limited: Vec<_> = events
        .iter()
        .filter(|e| e.metadata["detail"] == "too_many_failed_auth")
        .collect();
    assert_eq!(limited.len(), 3, "the last two bad tokens and the good one");
    assert!(limited.iter().all(|e| e.outcome == Outcome::ReportOnly));
}

/// Roles need a principal to be checked against: `.auth(false)` after `.roles(...)` does not
/// leave the route open to anonymous callers (it used to skip the role check altogether).
#[tokio::test]
async fn roles_require_a_principal_whatever_the_builder_order() {
    let (key, jwt) = hs256_authenticator();
    let layer = SecurityLayer::builder()
        .route(
            "/api/admin/**",
            Policy::preset(Preset::Public).roles(["admin"]).auth(false),
        )
        .authenticator(Arc::new(jwt))
        .build()
        .unwrap();
    let addr = serve_with(Router::new().route("/api/admin/users", get(whoami)), layer).await;
    let get_with = |token| admin_users_status(addr, token);
    assert_eq!(get_with(None).await, 401);
    assert_eq!(
        get_with(Some(key.token(None, &claims("bob", &["user"])))).await,
        403
    );
    assert_eq!(
        get_with(Some(key.token(None, &claims("ann", &["admin"])))).await,
        200
    );
}

/// With authentication only reported but roles enforced, an anonymous caller does not hold
/// the role either: 403, as a caller whose token lacks it gets (it used to get 200, so
/// dropping a token opened more than a token without the role). With roles reported too,
/// both go through.
#[tokio::test]
async fn enforced_roles_refuse_anonymous_callers_while_authentication_is_only_reported() {
    use portcullis::Control;
    use portcullis::policy::ReportOnly;
    for (reported, anonymous, user, admin) in [
        (vec![Control::Authentication], 403, 403, 200),
        (
            vec![Control::Authentication, Control::Authorization],
            200,
            200,
            200,
        ),
    ] {
        let (key, jwt) = hs256_authenticator();
        let layer = SecurityLayer::builder()
            .route(
                "/api/admin/**",
                Policy::preset(Preset::Authenticated)
                    .roles(["admin"])
                    .report_only(ReportOnly::Controls(reported.clone())),
            )
            .authenticator(Arc::new(jwt))
            .build()
            .unwrap();
        let addr = serve_with(
            Router::new().route("/api/admin/users", get(|| async { "ok" })),
            layer,
        )
        .await;
        let get_with = |token| admin_users_status(addr, token);
        let got = [
            get_with(None).await,
            get_with(Some(key.token(None, &claims("bob", &["user"])))).await,
            get_with(Some(key.token(None, &claims("ann", &["admin"])))).await,
        ];
        assert_eq!(got, [anonymous, user, admin], "reported: {reported:?}");
    }
}

//! An axum application protected by Portcullis: the seed's four API routes plus a page with a
//! CSP nonce, each behind the preset that fits it.
//!
//! ```text
//! cargo run -p portcullis-example-axum            # listens on 127.0.0.1:3000
//! cargo run -p portcullis-example-axum -- 127.0.0.1:8080
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::response::{Html, IntoResponse};
use axum::routing::{get, post};
use axum::{Json, Router, ServiceExt};
use portcullis::auth::{AuthMethod, AuthOutcome, Authenticator, BoxFuture, Principal};
use portcullis::policy::{RateKey, RateLimitSpec};
use portcullis::{CspNonce, Policy, Preset, SecurityLayer};
use subtle::ConstantTimeEq;
use tower::Layer;

/// Demo-only bearer tokens. A real deployment uses JWT or API keys.
const DEMO_USERS: [(&str, &str, &str); 2] = [
    ("alice-demo-token", "alice", "user"),
    ("admin-demo-token", "admin", "admin"),
];

/// Recognises the two demo bearer tokens, comparing in constant time.
struct DemoTokens;

impl Authenticator for DemoTokens {
    fn authenticate<'a>(&'a self, parts: &'a http::request::Parts) -> BoxFuture<'a, AuthOutcome> {
        Box::pin(async move {
            let Some(value) = parts.headers.get(http::header::AUTHORIZATION) else {
                return AuthOutcome::NoCredentials;
            };
            let Some(token) = value.as_bytes().strip_prefix(b"Bearer ") else {
                return AuthOutcome::Invalid("not a bearer token");
            };
            for (known, id, role) in DEMO_USERS {
                if bool::from(known.as_bytes().ct_eq(token)) {
                    return AuthOutcome::Authenticated(Principal::new(
                        id,
                        [role],
                        AuthMethod::Custom,
                    ));
                }
            }
            AuthOutcome::Invalid("unknown token")
        })
    }
}

async fn public_data() -> impl IntoResponse {
    Json(serde_json::json!({ "data": ["public", "information"] }))
}

async fn notes(user: Principal) -> impl IntoResponse {
    Json(serde_json::json!({ "success": true, "user": user.id }))
}

async fn sensitive(user: Principal) -> impl IntoResponse {
    Json(serde_json::json!({ "success": true, "by": user.id }))
}

async fn admin_users(user: Principal) -> impl IntoResponse {
    Json(serde_json::json!({ "users": ["alice", "admin"], "asked_by": user.id }))
}

async fn page(CspNonce(nonce): CspNonce) -> Html<String> {
    Html(format!(
        "<!doctype html><title>Portcullis demo</title><h1>Protected by Portcullis</h1>\
         <p id=out>script blocked</p>\
         <script nonce=\"{n}\">document.getElementById('out').textContent = 'nonce script ran';</script>\
         <script>document.title = 'injected script ran';</script>",
        n = nonce.as_str()
    ))
}

/// The security policy: the seed's presets on the seed's routes.
fn security() -> SecurityLayer {
    SecurityLayer::builder()
        .default_policy(Preset::Public)
        .route("/", Policy::preset(Preset::Public).no_store(false))
        .route("/api/public-data", Preset::Public)
        .route("/api/user/notes", Preset::Authenticated)
        .route(
            "/api/sensitive-operation",
            Policy::preset(Preset::Strict)
                .rate_limits([RateLimitSpec::new(
                    5,
                    Duration::from_secs(3600),
                    RateKey::User,
                )])
                .max_body(100 * 1024),
        )
        .route(
            "/api/admin/**",
            Policy::preset(Preset::Authenticated).roles(["admin"]),
        )
        .authenticator(Arc::new(DemoTokens))
        .build()
        .expect("the demo policy is valid")
}

fn router() -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/public-data", get(public_data).post(public_data))
        .route("/api/user/notes", get(notes).post(notes))
        .route("/api/sensitive-operation", post(sensitive))
        .route("/api/admin/users", get(admin_users))
}

#[tokio::main]
async fn main() {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".to_string())
        .parse()
        .expect("usage: portcullis-example-axum [ADDR:PORT]");
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("the listen address must be free");
    let base = format!("http://{}", listener.local_addr().expect("bound"));
    println!("Portcullis axum example on {base}\n");
    println!(
        "  curl -i {base}/api/public-data                      # 200, security headers, CSP nonce"
    );
    println!("  curl -i -X DELETE {base}/api/public-data            # 405 with Allow");
    println!("  curl -i {base}/api/user/notes                       # 401 without credentials");
    println!("  curl -i -H 'Authorization: Bearer alice-demo-token' {base}/api/user/notes   # 200");
    println!("  curl -i -H 'Authorization: Bearer alice-demo-token' {base}/api/admin/users  # 403");
    println!("  curl -i -H 'Authorization: Bearer admin-demo-token' {base}/api/admin/users  # 200");
    println!(
        "  curl -i --path-as-is '{base}/api//admin/./users'   # same policy as /api/admin/users"
    );
    println!("  curl -i '{base}/api/admin%2fusers'                  # 400 invalid_path");
    println!(
        "  curl -i -H 'Content-Length: 999999' -X POST -H 'Authorization: Bearer alice-demo-token' {base}/api/sensitive-operation  # 413"
    );
    println!("  open {base}/ in a browser: only the nonce'd script runs");
    // Wrap the whole router so routing sees the canonical path.
    let app = security().layer(router());
    let make = ServiceExt::<Request>::into_make_service_with_connect_info::<SocketAddr>(app);
    axum::serve(listener, make)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .expect("server error");
}

//! `RequestExtensions::Context`: what the layer learned reaches the handler as one
//! `RequestContext`, the same values as the single extensions, and the extractors read it.

mod common;

use std::sync::Arc;

use axum::extract::Request;
use axum::routing::get;
use axum::{Extension, Router};
use common::*;
use portcullis::auth::Principal;
use portcullis::auth::api_key::{self, ApiKey, ApiKeyAuthenticator};
use portcullis::headers::csp::CspNonce;
use portcullis::layer::{MatchedRoute, RequestContext, RequestExtensions};
use portcullis::{CanonicalPath, ClientIp, Nonce, Policy, Preset, RequestId, SecurityLayer};

/// What the handler saw, as JSON: the context's values, the extractors' values, and which
/// single extensions were there.
async fn seen(req: Request) -> axum::Json<serde_json::Value> {
    let cx = req.extensions().get::<RequestContext>().cloned();
    let cx = cx.as_ref();
    let (mut parts, _) = req.into_parts();
    use axum::extract::FromRequestParts;
    let id = RequestId::from_request_parts(&mut parts, &())
        .await
        .unwrap();
    let ip = ClientIp::from_request_parts(&mut parts, &()).await.unwrap();
    let nonce = <CspNonce as FromRequestParts<()>>::from_request_parts(&mut parts, &())
        .await
        .ok()
        .map(|n| n.as_str().to_string());
    let ext = &parts.extensions;
    axum::Json(serde_json::json!({
        "context": cx.is_some(),
        "cx_id": cx.map(|c| c.request_id.to_string()),
        "cx_ip": cx.map(|c| c.client_ip.to_string()),
        "cx_route": cx.map(|c| c.route.0.to_string()),
        "cx_path": cx.map(|c| c.path.to_string()),
        "cx_nonce": cx.and_then(|c| c.nonce.as_ref().map(|n| n.as_str().to_string())),
        "id": id.to_string(),
        "ip": ip.to_string(),
        "nonce": nonce,
        "route": MatchedRoute::of(ext).map(|r| r.0.to_string()),
        "single": [
            ext.get::<RequestId>().is_some(),
            ext.get::<ClientIp>().is_some(),
            ext.get::<MatchedRoute>().is_some(),
            ext.get::<CanonicalPath>().is_some(),
            ext.get::<Nonce>().is_some(),
        ],
        "principal": ext.get::<Principal>().map(|p| p.id.clone()),
    }))
}

async fn start(how: RequestExtensions, key: &api_key::NewApiKey) -> std::net::SocketAddr {
    let keys =
        ApiKeyAuthenticator::new([ApiKey::new("ci", key.hash_line(), ["user"]).unwrap()]).unwrap();
    let layer = SecurityLayer::builder()
        .default_policy(Preset::Public)
        .route("/api/user/**", Policy::preset(Preset::Authenticated))
        .authenticator(Arc::new(keys))
        .request_extensions(how)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/api/user/me", get(seen))
        .route(
            "/Extension",
            get(|Extension(cx): Extension<RequestContext>| async move { cx.route.0.to_string() }),
        )
        .fallback(seen);
    serve_with(app, layer).await
}

#[tokio::test]
async fn one_context_holds_what_the_single_extensions_would() {
    let key = api_key::generate();
    for how in [RequestExtensions::Each, RequestExtensions::Context] {
        let addr = start(how, &key).await;
        let r = fetch(addr, "/a/./b//c").await;
        assert_eq!(r.status, 200, "{how:?}");
        let v = r.json();
        let id = r.header("x-request-id").unwrap();
        let csp = r.header("content-security-policy").unwrap();
        let context = how == RequestExtensions::Context;
        assert_eq!(v["context"], context, "{how:?}");
        assert_eq!(
            v["single"],
            serde_json::json!([!context, !context, !context, !context, !context]),
            "{how:?}"
        );
        // The extractors see the same values either way.
        assert_eq!(v["id"], id, "{how:?}");
        assert_eq!(v["ip"], "127.0.0.1", "{how:?}");
        assert_eq!(v["route"], "*", "{how:?}");
        let nonce = v["nonce"].as_str().unwrap();
        assert!(csp.contains(&format!("'nonce-{nonce}'")), "{how:?}: {csp}");
        if context {
            assert_eq!(v["cx_id"], id);
            assert_eq!(v["cx_ip"], "127.0.0.1");
            assert_eq!(v["cx_route"], "*");
            assert_eq!(v["cx_path"], "/a/b/c");
            assert_eq!(v["cx_nonce"], nonce);
        }
        // The principal stays an extension of its own.
        let me = send(addr, "GET", "/api/user/me", &[("x-api-key", key.key())], "").await;
        assert_eq!(me.status, 200, "{how:?}");
        assert_eq!(me.json()["principal"], "ci", "{how:?}");
        assert_eq!(me.json()["route"], "/api/user/**", "{how:?}");
    }
    let addr = start(RequestExtensions::Context, &key).await;
    let r = fetch(addr, "/Extension").await;
    assert_eq!((r.status, &r.body[..]), (200, &b"*"[..]));
}

#[tokio::test]
async fn an_optional_principal_is_none_for_anonymous_callers_and_the_caller_otherwise() {
    let key = api_key::generate();
    let auth = ApiKeyAuthenticator::new([
        ApiKey::new("ci-bot", key.hash_line(), ["deploy"]).expect("a valid key")
    ])
    .expect("a valid key set");
    let layer = SecurityLayer::builder()
        .default_policy(Preset::Public)
        .authenticator(Arc::new(auth))
        .build()
        .expect("valid layer");
    // A public page that greets whoever is signed in: `Option<Principal>` as the extractor.
    let app = Router::new().route(
        "/hello",
        get(|who: Option<Principal>| async move {
            who.map_or_else(
                || "hello, stranger".to_string(),
                |p| format!("hello, {}", p.id),
            )
        }),
    );
    let addr = serve_with(app, layer).await;
    assert_eq!(fetch(addr, "/hello").await.text(), "hello, stranger");
    let signed_in = send(addr, "GET", "/hello", &[("x-api-key", key.key())], "").await;
    assert_eq!(signed_in.status, 200);
    assert_eq!(signed_in.text(), "hello, ci-bot");
}

#[tokio::test]
async fn the_principal_extractors_refusal_names_the_requests_id_either_way() {
    let key = api_key::generate();
    for how in [RequestExtensions::Each, RequestExtensions::Context] {
        let layer = SecurityLayer::builder()
            .default_policy(Preset::Public)
            .authenticator(Arc::new(
                ApiKeyAuthenticator::new([
                    ApiKey::new("ci", key.hash_line(), ["deploy"]).expect("a valid key")
                ])
                .expect("a valid key set"),
            ))
            .request_extensions(how)
            .build()
            .expect("valid layer");
        // A public route whose handler insists on a principal: the extractor answers 401.
        let app = Router::new().route("/me", get(|p: Principal| async move { p.id }));
        let addr = serve_with(app, layer).await;
        let r = fetch(addr, "/me").await;
        assert_eq!(r.status, 401, "{how:?}");
        let id = r.header("x-request-id").expect("an id").to_string();
        assert_eq!(r.json()["request_id"], id, "{how:?}");
    }
}

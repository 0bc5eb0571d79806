//! `SecurityLayer`: every control composed in one fixed order.
//!
//! The order (shared/DESIGN.md §2) is part of the contract, because each step relies on the
//! ones before it:
//!
//! 1. server limits (header bytes, timeouts) — enforced by the server; the gateway sets them;
//! 2. canonical path and host check → 400 ([`crate::route`]);
//! 3. inbound header stripping ([`crate::inbound`]);
//! 4. client address from the socket and trusted proxies ([`crate::client_ip`]);
//! 5. route match → the route's [`Policy`], then the ban list → 403 `banned` with
//!    `Retry-After` ([`crate::ban`]; checked once the route is known, so a route's
//!    `report_only` can cover it). Refusals by steps 2, 8, 10 and 11 (path and host, the
//!    brute-force and rate limits' 429s, CSRF) count as the client's offences; enough of them
//!    ban it;
//! 6. CORS preflight answered ([`crate::cors`]);
//! 7. method allowlist → 405 with `Allow` ([`crate::methods`]);
//! 8. authentication → 401 with `WWW-Authenticate` ([`crate::auth`]), then the brute-force
//!    limit on the verdict → 429 (a refused guess counted and checked in one step);
//! 9. authorization: roles → 403;
//! 10. rate limit → 429 (slot: a [`Guard`]);
//! 11. CSRF on unsafe methods → 403 (slot: a [`Guard`]);
//! 12. body: declared length → 413 at once, streamed bytes counted and cut at the limit,
//!     content-type allowlist → 415 ([`crate::body_limit`]);
//! 13. the inner service, with the canonical path in the URI and the request id, client
//!     address, route, principal and CSP nonce as request extensions;
//! 14. response: security headers, CSP with a fresh nonce, CORS headers, guard headers
//!     (rate-limit, CSRF cookie), `X-Request-Id`, banners removed;
//! 15. audit event, handed to the sink without waiting.
//!
//! Every refusal is the JSON error of [`crate::Rejection`] and an audit event — the inner
//! service's too: a response carrying a `Rejection` in its extensions (as
//! [`Rejection::into_response_with_id`](crate::Rejection::into_response_with_id) makes it; the
//! gateway's 502 and 504, say) is audited as `denied` with that refusal's action and code.
//! Controls named by the route's [`ReportOnly`] decide and audit but let the request through;
//! the brute-force limit's 429 is reported, not enforced, while `auth` (or `rate_limit`) is.
//!
//! ```
//! use axum::{Router, routing::get};
//! use portcullis::{SecurityLayer, Preset};
//! let app: Router = Router::new()
//!     .route("/api/public-data", get(|| async { "data" }))
//!     .layer(SecurityLayer::new(Preset::Public));
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::Body;
use tower::{Layer, Service};

use crate::audit::{AuditAction, AuditEvent, AuditSink, Outcome};
use crate::auth::{AuthOutcome, Authenticator, Blocked, BoxFuture, FailedAuthTracker, Principal};
use crate::ban::BanList;
use crate::body_limit::{self, LimitedBody};
use crate::client_ip::{self, ClientIp, TrustedProxies};
use crate::cors::Cors;
use crate::error::{Control, Rejection};
use crate::headers::csp::{Csp, Nonce};
use crate::headers::security::{DeferredSecurityHeaders, SecurityHeaders, deferrable};
use crate::inbound::InboundHeaders;
use crate::methods::MultipartOverrideScan;
#[allow(unused_imports)]
use crate::policy::ReportOnly;
use crate::policy::{CspSetting, CsrfMode, Policy, Preset};
use crate::request_id::{RequestId, X_REQUEST_ID};
use crate::route::{CanonicalPath, PathError, RouteTable};

/// The pattern of the route a request matched (`"*"` for the default policy); a request
/// extension.
///
/// ```
/// # use axum::{Extension, Router, body::Body};
/// # use portcullis::{Policy, Preset, SecurityLayer, layer::MatchedRoute};
/// # use tower::{Layer, ServiceExt};
/// let layer = SecurityLayer::bare().route("/api/**", Policy::preset(Preset::Public)).build()?;
/// let app = layer.layer(Router::new().fallback(
///     |Extension(MatchedRoute(route)): Extension<MatchedRoute>| async move { route.to_string() },
/// ));
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let res = app.oneshot(http::Request::get("/api/users").body(Body::empty()).unwrap()).await.unwrap();
/// assert_eq!(axum::body::to_bytes(res.into_body(), 1024).await.unwrap(), "/api/**");
/// # });
/// # Ok::<(), portcullis::layer::BuildError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchedRoute(pub Arc<str>);

impl MatchedRoute {
    /// The route the layer matched a request to: its [`MatchedRoute`] extension, or its
    /// [`RequestContext`]'s.
    ///
    /// ```
    /// use portcullis::layer::MatchedRoute;
    /// let mut ext = http::Extensions::new();
    /// ext.insert(MatchedRoute("/api/**".into()));
    /// assert_eq!(&*MatchedRoute::of(&ext).unwrap().0, "/api/**");
    /// ```
    pub fn of(extensions: &http::Extensions) -> Option<&MatchedRoute> {
        // The context first: the gateway's layer inserts that, and one lookup finds it.
        extensions
            .get::<RequestContext>()
            .map(|c| &c.route)
            .or_else(|| extensions.get::<MatchedRoute>())
    }
}

/// How the layer hands what it learned about a request to the service behind it, as
/// request extensions ([`SecurityLayerBuilder::request_extensions`]).
///
/// ```
/// use portcullis::layer::RequestExtensions;
/// assert_eq!(RequestExtensions::default(), RequestExtensions::Each);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RequestExtensions {
    /// One extension per value: [`RequestId`], [`ClientIp`], [`MatchedRoute`],
    /// [`CanonicalPath`] and, when the CSP uses one, [`Nonce`]; what `Extension<T>` reads.
    #[default]
    Each,
    /// One [`RequestContext`] holding them all: one insert instead of five, for a service
    /// that reads few of them (a proxy). The [`RequestId`], [`ClientIp`] and
    /// [`CspNonce`](crate::headers::csp::CspNonce) extractors read it too; `Extension<T>` of
    /// the single types does not.
    Context,
}

/// What the layer learned about a request, as one request extension (with
/// [`RequestExtensions::Context`]). The [`Principal`] stays an extension of its own.
///
/// ```
/// # use axum::{Extension, Router, body::Body};
/// # use portcullis::{SecurityLayer, layer::{RequestContext, RequestExtensions}};
/// # use tower::{Layer, ServiceExt};
/// let layer = SecurityLayer::bare().request_extensions(RequestExtensions::Context).build()?;
/// let app = layer.layer(Router::new().fallback(
///     |Extension(cx): Extension<RequestContext>| async move { cx.path.to_string() },
/// ));
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let res = app.oneshot(http::Request::get("/a/./b").body(Body::empty()).unwrap()).await.unwrap();
/// assert_eq!(axum::body::to_bytes(res.into_body(), 1024).await.unwrap(), "/a/b");
/// # });
/// # Ok::<(), portcullis::layer::BuildError>(())
/// ```
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The request's id, as in the response's `X-Request-Id`.
    pub request_id: RequestId,
    /// The resolved client address.
    pub client_ip: ClientIp,
    /// The route pattern the request matched.
    pub route: MatchedRoute,
    /// The canonical path.
    pub path: CanonicalPath,
    /// The CSP nonce of the response, when its CSP uses one.
    pub nonce: Option<Nonce>,
}

/// Marks a request as received over TLS (set by a TLS-terminating server).
///
/// ```
/// # use axum::{Router, body::Body};
/// # use portcullis::{SecurityLayer, layer::Https};
/// # use portcullis::headers::security::{HstsMode, SecurityHeaders};
/// # use tower::{Layer, ServiceExt};
/// let headers = SecurityHeaders::default().hsts_mode(HstsMode::HttpsOnly);
/// let layer = SecurityLayer::bare().security_headers(Some(headers)).build()?;
/// # let app = layer.layer(Router::new().fallback(|| async { "ok" }));
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let mut req = http::Request::get("/").body(Body::empty()).unwrap();
/// req.extensions_mut().insert(Https);
/// let res = app.clone().oneshot(req).await.unwrap();
/// assert!(res.headers().contains_key("strict-transport-security"));
/// let res = app.oneshot(http::Request::get("/").body(Body::empty()).unwrap()).await.unwrap();
/// assert!(!res.headers().contains_key("strict-transport-security"));
/// # });
/// # Ok::<(), portcullis::layer::BuildError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Https;

/// Asks the layer to leave a response's security headers out of its header map, for the
/// server to write them itself after the response's own fields: the response then carries
/// them as [`DeferredSecurityHeaders`] in its extensions. For a server that writes HTTP/1
/// itself (the gateway does), this saves building a header map of the set per response. The
/// response's CSP goes with it, to be written with its nonce by
/// [`DeferredSecurityHeaders::write_to`]. Only the layer's answers from the inner service are
/// deferred, and only when the set can be (see
/// [`SecurityHeaders::defer`](crate::headers::security::SecurityHeaders::defer)); refusals
/// and every other response carry the set in their map as usual.
///
/// ```
/// # use axum::{Router, body::Body};
/// # use portcullis::{SecurityLayer, layer::DeferSecurityHeaders};
/// # use portcullis::headers::security::{DeferredSecurityHeaders, SecurityHeaders};
/// # use tower::{Layer, ServiceExt};
/// let layer = SecurityLayer::bare().security_headers(Some(SecurityHeaders::default())).build()?;
/// # let app = layer.layer(Router::new().fallback(|| async { "ok" }));
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let mut req = http::Request::get("/").body(Body::empty()).unwrap();
/// req.extensions_mut().insert(DeferSecurityHeaders);
/// let res = app.oneshot(req).await.unwrap();
/// assert!(!res.headers().contains_key("x-frame-options"));
/// let deferred = res.extensions().get::<DeferredSecurityHeaders>().unwrap();
/// assert_eq!(deferred.fields()["x-frame-options"], "DENY");
/// let mut head = Vec::new();
/// deferred.write_to(&mut head);
/// assert!(std::str::from_utf8(&head).unwrap().contains("x-frame-options: DENY\r\n"));
/// # });
/// # Ok::<(), portcullis::layer::BuildError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeferSecurityHeaders;

/// What the layer knows about one request as it goes through the steps; guards read it and
/// add response headers to it.
///
/// ```
/// # use std::sync::Arc;
/// # use axum::{Router, body::Body};
/// # use http::request::Parts;
/// # use portcullis::{Exchange, Guard, Preset, Rejection, SecurityLayer, auth::BoxFuture};
/// # use tower::{Layer, ServiceExt};
/// #
/// # /// Refuses anonymous callers on the `/api/**` route.
/// # struct ApiNeedsLogin;
/// # impl Guard for ApiNeedsLogin {
/// #     fn check<'a>(&'a self, _: &'a Parts, x: &'a mut Exchange)
/// #         -> BoxFuture<'a, Result<(), Rejection>> {
/// // In a guard's `check`, with `x: &mut Exchange`: refuse anonymous callers on `/api/**`.
/// let refuse = x.route() == "/api/**" && x.principal().is_none();
/// let result = if refuse { Err(Rejection::unauthorized(false)) } else { Ok(()) };
/// Box::pin(std::future::ready(result))
/// #     }
/// # }
/// # let layer = SecurityLayer::bare()
/// #     .default_policy(Preset::Public)
/// #     .route("/api/**", Preset::Public)
/// #     .rate_limiter(Arc::new(ApiNeedsLogin))
/// #     .build()?;
/// # let app = layer.layer(Router::new().fallback(|| async { "ok" }));
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// # let get = |path| http::Request::get(path).body(Body::empty()).unwrap();
/// assert_eq!(app.clone().oneshot(get("/api/users")).await.unwrap().status(), 401);
/// assert_eq!(app.oneshot(get("/home")).await.unwrap().status(), 200);
/// # });
/// # Ok::<(), portcullis::layer::BuildError>(())
/// ```
#[derive(Debug)]
pub struct Exchange<'e> {
    request_id: RequestId,
    path: Option<CanonicalPath>,
    /// The route's pattern and policy, borrowed from the layer for the request's life: no
    /// reference count taken on what every worker shares (each count would move its cache
    /// line between the cores on every request).
    entry: &'e RouteEntry,
    client_ip: ClientIp,
    principal: Option<Principal>,
    https: bool,
    response_headers: AddedFields,
    detail: Option<&'static str>,
    notes: Vec<Note>,
    /// Set at step 11 when the CSRF guard must read this many body bytes to decide.
    guard_body: Option<u64>,
    /// Set at step 7 when the body is a form that may hold a `_method` override: it is read
    /// (up to the body limit) and looked at before the application sees it.
    scan_form: bool,
}

/// The response fields the guards add. The first two (the rate limiter's `RateLimit-Policy`
/// and `RateLimit`, on every request of a limited route) are kept inline: no map to allocate
/// and hash into, only to copy out again onto the response.
#[derive(Debug, Clone, Default)]
pub(crate) struct AddedFields {
    inline: [Option<(HeaderName, HeaderValue)>; 2],
    more: HeaderMap,
}

impl AddedFields {
    /// Adds one field, as `HeaderMap::append` would: inline for the first two (the rate
    /// limiter's, on every request of a limited route).
    pub(crate) fn push(&mut self, name: HeaderName, value: HeaderValue) {
        match self.inline.iter_mut().find(|slot| slot.is_none()) {
            Some(slot) => *slot = Some((name, value)),
            None => {
                self.more.append(name, value);
            }
        }
    }

    /// Calls `f` with every field, in [`AddedFields::into_fields`]'s order.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&HeaderName, &HeaderValue)) {
        for (name, value) in self.inline.iter().flatten() {
            f(name, value);
        }
        for (name, value) in &self.more {
            f(name, value);
        }
    }

    /// Whether every field's name passes `keep`.
    fn all_names(&self, mut keep: impl FnMut(&HeaderName) -> bool) -> bool {
        self.inline.iter().flatten().all(|(name, _)| keep(name)) && self.more.keys().all(keep)
    }

    /// Whether a field is named `name`.
    pub(crate) fn contains(&self, name: &HeaderName) -> bool {
        self.inline.iter().flatten().any(|(n, _)| n == name) || self.more.contains_key(name)
    }

    /// Every field: the inline ones, then the map's (a repeated name yields each value).
    fn into_fields(self) -> impl Iterator<Item = (HeaderName, HeaderValue)> {
        let mut last: Option<HeaderName> = None;
        self.inline
            .into_iter()
            .flatten()
            .chain(self.more.into_iter().filter_map(move |(name, value)| {
                if let Some(name) = name {
                    last = Some(name);
                }
                last.clone().map(|name| (name, value))
            }))
    }
}

/// An audit note a guard leaves for the layer to record with the request's final status.
#[derive(Debug, Clone, Copy)]
struct Note {
    action: AuditAction,
    code: &'static str,
    reason: &'static str,
}

impl Exchange<'_> {
    /// The request id.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use http::{HeaderValue, request::Parts};
    /// # use portcullis::{Exchange, Guard, Policy, Preset, Rejection, SecurityLayer, auth::BoxFuture};
    /// # use axum::{Router, body::Body};
    /// # use tower::{Layer, ServiceExt};
    /// #
    /// # /// Repeats the request id in `x-seen-id`.
    /// # struct EchoId;
    /// # impl Guard for EchoId {
    /// #     fn check<'a>(&'a self, _: &'a Parts, x: &'a mut Exchange)
    /// #         -> BoxFuture<'a, Result<(), Rejection>> {
    /// // In a guard's `check`, with `x: &mut Exchange`:
    /// let id = HeaderValue::from_str(x.request_id().as_str()).unwrap();
    /// x.response_headers_mut().insert("x-seen-id", id);
    /// #         Box::pin(std::future::ready(Ok(())))
    /// #     }
    /// # }
    /// # let layer = SecurityLayer::bare()
    /// #     .route("/api/**", Policy::preset(Preset::Public))
    /// #     .rate_limiter(Arc::new(EchoId))
    /// #     .build()?;
    /// # let app = layer.layer(Router::new().fallback(|| async { "ok" }));
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let req = http::Request::get("/api/v1").header("x-request-id", "trace-42");
    /// let res = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    /// assert_eq!(res.headers()["x-seen-id"], "trace-42");
    /// # });
    /// # Ok::<(), portcullis::layer::BuildError>(())
    /// ```
    pub fn request_id(&self) -> &RequestId {
        &self.request_id
    }

    /// The canonical path (set from step 2 on).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use http::{HeaderValue, request::Parts};
    /// # use portcullis::{Exchange, Guard, Policy, Preset, Rejection, SecurityLayer, auth::BoxFuture};
    /// # use axum::{Router, body::Body};
    /// # use tower::{Layer, ServiceExt};
    /// #
    /// # /// Repeats the canonical path in `x-seen-path`.
    /// # struct EchoPath;
    /// # impl Guard for EchoPath {
    /// #     fn check<'a>(&'a self, _: &'a Parts, x: &'a mut Exchange)
    /// #         -> BoxFuture<'a, Result<(), Rejection>> {
    /// // In a guard's `check`, with `x: &mut Exchange`:
    /// let path = x.path().map_or("", |p| p.as_str());
    /// let path = HeaderValue::from_str(path).unwrap();
    /// x.response_headers_mut().insert("x-seen-path", path);
    /// #         Box::pin(std::future::ready(Ok(())))
    /// #     }
    /// # }
    /// # let layer = SecurityLayer::bare()
    /// #     .route("/api/**", Policy::preset(Preset::Public))
    /// #     .rate_limiter(Arc::new(EchoPath))
    /// #     .build()?;
    /// # let app = layer.layer(Router::new().fallback(|| async { "ok" }));
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let req = http::Request::get("/api//v1/./users").body(Body::empty()).unwrap();
    /// let res = app.oneshot(req).await.unwrap();
    /// assert_eq!(res.headers()["x-seen-path"], "/api/v1/users");
    /// # });
    /// # Ok::<(), portcullis::layer::BuildError>(())
    /// ```
    pub fn path(&self) -> Option<&CanonicalPath> {
        self.path.as_ref()
    }

    /// The matched route pattern (`"*"` for the default policy).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use http::{HeaderValue, request::Parts};
    /// # use portcullis::{Exchange, Guard, Policy, Preset, Rejection, SecurityLayer, auth::BoxFuture};
    /// # use axum::{Router, body::Body};
    /// # use tower::{Layer, ServiceExt};
    /// #
    /// # /// Repeats the matched route pattern in `x-route`.
    /// # struct EchoRoute;
    /// # impl Guard for EchoRoute {
    /// #     fn check<'a>(&'a self, _: &'a Parts, x: &'a mut Exchange)
    /// #         -> BoxFuture<'a, Result<(), Rejection>> {
    /// // In a guard's `check`, with `x: &mut Exchange`:
    /// let pattern = HeaderValue::from_str(x.route()).unwrap();
    /// x.response_headers_mut().insert("x-route", pattern);
    /// #         Box::pin(std::future::ready(Ok(())))
    /// #     }
    /// # }
    /// # let layer = SecurityLayer::bare()
    /// #     .route("/api/**", Policy::preset(Preset::Public))
    /// #     .rate_limiter(Arc::new(EchoRoute))
    /// #     .build()?;
    /// # let app = layer.layer(Router::new().fallback(|| async { "ok" }));
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let req = http::Request::get("/api/users/7").body(Body::empty()).unwrap();
    /// let res = app.oneshot(req).await.unwrap();
    /// assert_eq!(res.headers()["x-route"], "/api/**");
    /// # });
    /// # Ok::<(), portcullis::layer::BuildError>(())
    /// ```
    pub fn route(&self) -> &str {
        &self.entry.pattern
    }

    /// The route's policy.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use http::{HeaderValue, request::Parts};
    /// # use portcullis::{Exchange, Guard, Policy, Preset, Rejection, SecurityLayer, auth::BoxFuture};
    /// # use axum::{Router, body::Body};
    /// # use tower::{Layer, ServiceExt};
    /// #
    /// # /// Names the route's preset in `x-preset`.
    /// # struct EchoPreset;
    /// # impl Guard for EchoPreset {
    /// #     fn check<'a>(&'a self, _: &'a Parts, x: &'a mut Exchange)
    /// #         -> BoxFuture<'a, Result<(), Rejection>> {
    /// // In a guard's `check`, with `x: &mut Exchange`:
    /// let preset = x.policy().preset_of().map_or("custom", Preset::name);
    /// x.response_headers_mut().insert("x-preset", HeaderValue::from_static(preset));
    /// #         Box::pin(std::future::ready(Ok(())))
    /// #     }
    /// # }
    /// # let layer = SecurityLayer::bare()
    /// #     .route("/api/**", Policy::preset(Preset::Public))
    /// #     .rate_limiter(Arc::new(EchoPreset))
    /// #     .build()?;
    /// # let app = layer.layer(Router::new().fallback(|| async { "ok" }));
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let req = http::Request::get("/api/users").body(Body::empty()).unwrap();
    /// let res = app.oneshot(req).await.unwrap();
    /// assert_eq!(res.headers()["x-preset"], "public");
    /// # });
    /// # Ok::<(), portcullis::layer::BuildError>(())
    /// ```
    pub fn policy(&self) -> &Policy {
        &self.entry.policy
    }

    /// The route's policy and the response fields the guards add, borrowed together: for a
    /// guard that reads the one while it adds to the other.
    pub(crate) fn policy_and_fields(&mut self) -> (&Policy, &mut AddedFields) {
        (&self.entry.policy, &mut self.response_headers)
    }

    /// The resolved client address.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use http::{HeaderValue, request::Parts};
    /// # use portcullis::{Exchange, Guard, Policy, Preset, Rejection, SecurityLayer, auth::BoxFuture, client_ip::PeerAddr};
    /// # use axum::{Router, body::Body};
    /// # use tower::{Layer, ServiceExt};
    /// #
    /// # /// Repeats the client's rate-limit key in `x-client`.
    /// # struct EchoClient;
    /// # impl Guard for EchoClient {
    /// #     fn check<'a>(&'a self, _: &'a Parts, x: &'a mut Exchange)
    /// #         -> BoxFuture<'a, Result<(), Rejection>> {
    /// // In a guard's `check`, with `x: &mut Exchange`:
    /// let key = HeaderValue::from_str(&x.client_ip().key()).unwrap();
    /// x.response_headers_mut().insert("x-client", key);
    /// #         Box::pin(std::future::ready(Ok(())))
    /// #     }
    /// # }
    /// # let layer = SecurityLayer::bare()
    /// #     .route("/api/**", Policy::preset(Preset::Public))
    /// #     .rate_limiter(Arc::new(EchoClient))
    /// #     .build()?;
    /// # let app = layer.layer(Router::new().fallback(|| async { "ok" }));
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// // The server puts the socket peer in the request's extensions.
    /// let mut req = http::Request::get("/api/users").body(Body::empty()).unwrap();
    /// req.extensions_mut().insert(PeerAddr("192.0.2.7:50000".parse().unwrap()));
    /// let res = app.oneshot(req).await.unwrap();
    /// assert_eq!(res.headers()["x-client"], "192.0.2.7");
    /// # });
    /// # Ok::<(), portcullis::layer::BuildError>(())
    /// ```
    pub fn client_ip(&self) -> ClientIp {
        self.client_ip
    }

    /// The authenticated principal, if any.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use http::{HeaderValue, request::Parts};
    /// # use portcullis::{Exchange, Guard, Policy, Preset, Rejection, SecurityLayer, auth::BoxFuture};
    /// # use axum::{Router, body::Body};
    /// # use tower::{Layer, ServiceExt};
    /// #
    /// # /// Refuses anonymous callers.
    /// # struct SignedInOnly;
    /// # impl Guard for SignedInOnly {
    /// #     fn check<'a>(&'a self, _: &'a Parts, x: &'a mut Exchange)
    /// #         -> BoxFuture<'a, Result<(), Rejection>> {
    /// // In a guard's `check`, with `x: &mut Exchange`:
    /// let result = if x.principal().is_some() { Ok(()) } else { Err(Rejection::unauthorized(false)) };
    /// Box::pin(std::future::ready(result))
    /// #     }
    /// # }
    /// # let layer = SecurityLayer::bare()
    /// #     .route("/api/**", Policy::preset(Preset::Public))
    /// #     .rate_limiter(Arc::new(SignedInOnly))
    /// #     .build()?;
    /// # let app = layer.layer(Router::new().fallback(|| async { "ok" }));
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// // No authenticator is configured, so no request has a principal.
    /// let req = http::Request::get("/api/users").body(Body::empty()).unwrap();
    /// let res = app.oneshot(req).await.unwrap();
    /// assert_eq!(res.status(), 401);
    /// # });
    /// # Ok::<(), portcullis::layer::BuildError>(())
    /// ```
    pub fn principal(&self) -> Option<&Principal> {
        self.principal.as_ref()
    }

    /// True when the request came over HTTPS.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use http::{HeaderValue, request::Parts};
    /// # use portcullis::{Exchange, Guard, Policy, Preset, Rejection, SecurityLayer, auth::BoxFuture, layer::Https};
    /// # use axum::{Router, body::Body};
    /// # use tower::{Layer, ServiceExt};
    /// #
    /// # /// Refuses requests that did not come over TLS.
    /// # struct HttpsOnly;
    /// # impl Guard for HttpsOnly {
    /// #     fn check<'a>(&'a self, _: &'a Parts, x: &'a mut Exchange)
    /// #         -> BoxFuture<'a, Result<(), Rejection>> {
    /// // In a guard's `check`, with `x: &mut Exchange`:
    /// let result = if x.is_https() { Ok(()) } else { Err(Rejection::forbidden()) };
    /// Box::pin(std::future::ready(result))
    /// #     }
    /// # }
    /// # let layer = SecurityLayer::bare()
    /// #     .route("/api/**", Policy::preset(Preset::Public))
    /// #     .rate_limiter(Arc::new(HttpsOnly))
    /// #     .build()?;
    /// # let app = layer.layer(Router::new().fallback(|| async { "ok" }));
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let plain = http::Request::get("/api/users").body(Body::empty()).unwrap();
    /// assert_eq!(app.clone().oneshot(plain).await.unwrap().status(), 403);
    /// let mut tls = http::Request::get("/api/users").body(Body::empty()).unwrap();
    /// tls.extensions_mut().insert(Https);
    /// assert_eq!(app.oneshot(tls).await.unwrap().status(), 200);
    /// # });
    /// # Ok::<(), portcullis::layer::BuildError>(())
    /// ```
    pub fn is_https(&self) -> bool {
        self.https
    }

    /// Headers to add to the response (rate-limit headers, cookies).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use http::{HeaderValue, request::Parts};
    /// # use portcullis::{Exchange, Guard, Policy, Preset, Rejection, SecurityLayer, auth::BoxFuture};
    /// # use axum::{Router, body::Body};
    /// # use tower::{Layer, ServiceExt};
    /// #
    /// # /// Tells the client its quota.
    /// # struct Quota;
    /// # impl Guard for Quota {
    /// #     fn check<'a>(&'a self, _: &'a Parts, x: &'a mut Exchange)
    /// #         -> BoxFuture<'a, Result<(), Rejection>> {
    /// // In a guard's `check`, with `x: &mut Exchange`:
    /// let quota = HeaderValue::from_static("1000");
    /// x.response_headers_mut().insert("x-quota-limit", quota);
    /// #         Box::pin(std::future::ready(Ok(())))
    /// #     }
    /// # }
    /// # let layer = SecurityLayer::bare()
    /// #     .route("/api/**", Policy::preset(Preset::Public))
    /// #     .rate_limiter(Arc::new(Quota))
    /// #     .build()?;
    /// # let app = layer.layer(Router::new().fallback(|| async { "ok" }));
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let req = http::Request::get("/api/users").body(Body::empty()).unwrap();
    /// let res = app.oneshot(req).await.unwrap();
    /// assert_eq!(res.headers()["x-quota-limit"], "1000");
    /// # });
    /// # Ok::<(), portcullis::layer::BuildError>(())
    /// ```
    pub fn response_headers_mut(&mut self) -> &mut HeaderMap {
        &mut self.response_headers.more
    }

    /// Leaves an audit event to be recorded (outcome `allowed`) when the request completes,
    /// e.g. a decision taken while a store was down.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use http::{HeaderValue, request::Parts};
    /// # use portcullis::{Exchange, Guard, Policy, Preset, Rejection, SecurityLayer, auth::BoxFuture, audit::{AuditAction, MemorySink, Outcome}};
    /// # use axum::{Router, body::Body};
    /// # use tower::{Layer, ServiceExt};
    /// #
    /// # /// Lets requests through while its store is down, and says so in the audit log.
    /// # struct FailOpen;
    /// # impl Guard for FailOpen {
    /// #     fn check<'a>(&'a self, _: &'a Parts, x: &'a mut Exchange)
    /// #         -> BoxFuture<'a, Result<(), Rejection>> {
    /// // In a guard's `check`, with `x: &mut Exchange`:
    /// x.note(AuditAction::SecurityEvent, "store_down", "quota store unreachable");
    /// #         Box::pin(std::future::ready(Ok(())))
    /// #     }
    /// # }
    /// # let sink = MemorySink::default();
    /// # let layer = SecurityLayer::bare()
    /// #     .route("/api/**", Policy::preset(Preset::Public))
    /// #     .audit(Arc::new(sink.clone()))
    /// #     .rate_limiter(Arc::new(FailOpen))
    /// #     .build()?;
    /// # let app = layer.layer(Router::new().fallback(|| async { "ok" }));
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// // The request goes through; the layer's audit sink records the note.
    /// let req = http::Request::get("/api/users").body(Body::empty()).unwrap();
    /// assert_eq!(app.oneshot(req).await.unwrap().status(), 200);
    /// let events = sink.events();
    /// assert_eq!((events[0].action, events[0].outcome), (AuditAction::SecurityEvent, Outcome::Allowed));
    /// assert_eq!(events[0].metadata["code"], "store_down");
    /// # });
    /// # Ok::<(), portcullis::layer::BuildError>(())
    /// ```
    pub fn note(&mut self, action: AuditAction, code: &'static str, reason: &'static str) {
        self.notes.push(Note {
            action,
            code,
            reason,
        });
    }
}

/// An asynchronous check in one of the layer's slots (rate limit, CSRF).
///
/// ```
/// # use std::sync::Arc;
/// # use axum::{Router, body::Body};
/// # use http::request::Parts;
/// # use portcullis::{Exchange, Guard, Preset, Rejection, SecurityLayer, auth::BoxFuture};
/// # use tower::{Layer, ServiceExt};
/// #
/// /// Refuses requests without an `x-tenant` header.
/// struct NeedsTenant;
/// impl Guard for NeedsTenant {
///     fn check<'a>(&'a self, parts: &'a Parts, _: &'a mut Exchange)
///         -> BoxFuture<'a, Result<(), Rejection>> {
///         let ok = parts.headers.contains_key("x-tenant");
///         Box::pin(async move { if ok { Ok(()) } else { Err(Rejection::forbidden()) } })
///     }
/// }
/// // In the rate-limit slot, the guard runs on routes that have rate limits (every preset does).
/// let layer = SecurityLayer::bare()
///     .default_policy(Preset::Public)
///     .rate_limiter(Arc::new(NeedsTenant))
///     .build()?;
/// # let app = layer.layer(Router::new().fallback(|| async { "ok" }));
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// # let req = |tenant: Option<&str>| {
/// #     let mut b = http::Request::get("/");
/// #     if let Some(t) = tenant { b = b.header("x-tenant", t); }
/// #     b.body(Body::empty()).unwrap()
/// # };
/// assert_eq!(app.clone().oneshot(req(None)).await.unwrap().status(), 403);
/// assert_eq!(app.oneshot(req(Some("acme"))).await.unwrap().status(), 200);
/// # });
/// # Ok::<(), portcullis::layer::BuildError>(())
/// ```
pub trait Guard: Send + Sync + 'static {
    /// Decides on the request; may add response headers through `exchange`.
    fn check<'a>(
        &'a self,
        parts: &'a Parts,
        exchange: &'a mut Exchange,
    ) -> BoxFuture<'a, Result<(), Rejection>>;

    /// The same decision, when the guard can take it without waiting: the layer then skips
    /// the boxed future of [`Guard::check`] (it runs on every request). A guard that answers
    /// here must decide as [`Guard::check`] would. Default: `None` (always `check`).
    ///
    /// ```
    /// # use portcullis::auth::BoxFuture;
    /// # use portcullis::layer::{Exchange, Guard};
    /// # use portcullis::Rejection;
    /// /// Refuses requests that carry `x-debug` (a decision on the headers alone).
    /// struct NoDebug;
    /// impl Guard for NoDebug {
    ///     fn check<'a>(&'a self, parts: &'a http::request::Parts, x: &'a mut Exchange)
    ///         -> BoxFuture<'a, Result<(), Rejection>> {
    ///         Box::pin(std::future::ready(self.check_now(parts, x).unwrap_or(Ok(()))))
    ///     }
    ///     fn check_now(&self, parts: &http::request::Parts, _: &mut Exchange)
    ///         -> Option<Result<(), Rejection>> {
    ///         Some(if parts.headers.contains_key("x-debug") { Err(Rejection::forbidden()) } else { Ok(()) })
    ///     }
    /// }
    /// ```
    fn check_now(&self, parts: &Parts, exchange: &mut Exchange) -> Option<Result<(), Rejection>> {
        let _ = (parts, exchange);
        None
    }

    /// Answers the request in the application's place when the guard serves an endpoint of
    /// its own (the CSRF token endpoint). Asked at the guard's step, after every earlier
    /// control, on any route; the response is decorated like the application's. Default: none.
    fn answer(&self, _parts: &Parts, _exchange: &mut Exchange) -> Option<Response<Bytes>> {
        None
    }

    /// How many body bytes the guard must read before it can decide (a CSRF token in a form
    /// field), or `None` when the headers suffice. When `Some`, the layer calls
    /// [`Guard::check_body`] *instead of* [`Guard::check`], once the body checks of step 12
    /// have passed and the body is read; a longer body is refused with 413. Default: `None`.
    fn body_needed(&self, _parts: &Parts, _exchange: &Exchange) -> Option<u64> {
        None
    }

    /// Decides with the whole body in hand (at most [`Guard::body_needed`] bytes); the body is
    /// then replayed to the application. Default: [`Guard::check`].
    fn check_body<'a>(
        &'a self,
        parts: &'a Parts,
        exchange: &'a mut Exchange,
        body: &'a Bytes,
    ) -> BoxFuture<'a, Result<(), Rejection>> {
        let _ = body;
        self.check(parts, exchange)
    }
}

/// Why a layer could not be built.
///
/// ```
/// use portcullis::{Policy, SecurityLayer};
/// let err = SecurityLayer::builder().route("/api/{id}", Policy::open()).build().unwrap_err();
/// assert_eq!(err.key, "route \"/api/{id}\"");
/// assert_eq!(err.reason, "only '*' and '**' wildcards are supported");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError {
    /// Where the problem is (`route "/api/**"`, `trusted_proxies`, ...).
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

impl std::error::Error for BuildError {}

/// Keys the default in-memory rate-limit store tracks at most.
///
/// ```
/// assert_eq!(portcullis::layer::DEFAULT_MEMORY_KEYS, 1_000_000);
/// ```
pub const DEFAULT_MEMORY_KEYS: usize = 1_000_000;

#[derive(Debug, Clone)]
struct RouteEntry {
    pattern: Arc<str>,
    policy: Arc<Policy>,
}

/// Aligned to 128 bytes, so the `Arc`'s reference count (taken on every request: the service
/// is cloned per request by servers such as axum's) sits on its own cache lines, apart from
/// the fields every worker reads: a count written by one core does not evict the routes and
/// settings from the other's cache.
#[repr(align(128))]
struct Engine {
    routes: RouteTable<RouteEntry>,
    allowed_hosts: Option<Vec<String>>,
    require_host: bool,
    nextjs_data_routes: bool,
    inbound: Option<InboundHeaders>,
    trusted: TrustedProxies,
    headers: Option<SecurityHeaders>,
    csp: Option<Arc<Csp>>,
    cors: Option<Cors>,
    authenticator: Option<Arc<dyn Authenticator>>,
    failed_auth: Option<Arc<FailedAuthTracker>>,
    bans: Option<Arc<BanList>>,
    rate_limit: Option<Arc<dyn Guard>>,
    csrf: Option<Arc<dyn Guard>>,
    audit: Option<Arc<dyn AuditSink>>,
    extensions: RequestExtensions,
    /// Set once a request without a peer address was warned about.
    warned_no_peer: AtomicBool,
}

/// Builds a [`SecurityLayer`].
///
/// ```
/// use portcullis::{SecurityLayer, Policy, Preset};
/// let layer = SecurityLayer::builder()
///     .default_policy(Policy::preset(Preset::Public))
///     .route("/api/admin/**", Policy::preset(Preset::Strict).roles(["admin"]))
///     .trusted_proxies(["10.0.0.0/8"])
///     .build()
///     .unwrap();
/// ```
#[must_use]
pub struct SecurityLayerBuilder {
    default_policy: Policy,
    routes: Vec<(String, Policy)>,
    allowed_hosts: Option<Vec<String>>,
    require_host: bool,
    nextjs_data_routes: bool,
    inbound: Option<InboundHeaders>,
    trusted: Vec<String>,
    headers: Option<SecurityHeaders>,
    csp: Option<Csp>,
    cors: Option<Cors>,
    authenticator: Option<Arc<dyn Authenticator>>,
    failed_auth: Option<Arc<FailedAuthTracker>>,
    bans: Option<Arc<BanList>>,
    rate_limit: Option<Arc<dyn Guard>>,
    csrf: Option<Arc<dyn Guard>>,
    audit: Option<Arc<dyn AuditSink>>,
    extensions: RequestExtensions,
}

/// Names the routes and which controls are set; never the authenticator's, guards' or
/// sink's insides (keys and secrets live there).
impl std::fmt::Debug for SecurityLayerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let routes: Vec<&str> = self.routes.iter().map(|(p, _)| p.as_str()).collect();
        f.debug_struct("SecurityLayerBuilder")
            .field("routes", &routes)
            .field("trusted_proxies", &self.trusted)
            .field("authenticator", &self.authenticator.is_some())
            .field("rate_limiter", &self.rate_limit.is_some())
            .field("csrf_guard", &self.csrf.is_some())
            .field("audit", &self.audit.is_some())
            .finish_non_exhaustive()
    }
}

impl SecurityLayerBuilder {
    fn secure() -> Self {
        SecurityLayerBuilder {
            default_policy: Policy::preset(Preset::Public),
            routes: Vec::new(),
            allowed_hosts: None,
            require_host: false,
            nextjs_data_routes: false,
            inbound: Some(InboundHeaders::default()),
            trusted: Vec::new(),
            headers: Some(SecurityHeaders::default()),
            csp: Some(Csp::default()),
            cors: None,
            authenticator: None,
            failed_auth: Some(Arc::new(FailedAuthTracker::default())),
            // Off unless asked for: a library user opts in, and benchmarks and tests of the
            // other controls see no bans.
            bans: None,
            extensions: RequestExtensions::Each,
            rate_limit: Some(Arc::new(crate::rate_limit::RateLimiter::new(Arc::new(
                crate::rate_limit::memory::MemoryStore::new(DEFAULT_MEMORY_KEYS),
            )))),
            // Lenient origin check and tokens signed with a per-process random secret; set your
            // own guard (shared secrets) for several instances.
            csrf: crate::csrf::CsrfGuard::builder()
                .build()
                .ok()
                .map(|g| Arc::new(g) as Arc<dyn Guard>),
            audit: None,
        }
    }

    fn bare() -> Self {
        SecurityLayerBuilder {
            default_policy: Policy::open(),
            inbound: None,
            failed_auth: None,
            headers: None,
            csp: None,
            rate_limit: None,
            csrf: None,
            ..SecurityLayerBuilder::secure()
        }
    }

    /// The policy of paths no route matches.
    ///
    /// ```
    /// # use axum::{Router, body::Body};
    /// # use portcullis::{Preset, SecurityLayer};
    /// # use tower::{Layer, ServiceExt};
    /// // Every path takes POST only (the strict preset).
    /// let layer = SecurityLayer::bare().default_policy(Preset::Strict).build()?;
    /// # let app = layer.layer(Router::new().fallback(|| async { "ok" }));
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let res = app.oneshot(http::Request::get("/any").body(Body::empty()).unwrap()).await.unwrap();
    /// assert_eq!(res.status(), 405);
    /// assert_eq!(res.headers()["allow"], "POST");
    /// # });
    /// # Ok::<(), portcullis::layer::BuildError>(())
    /// ```
    pub fn default_policy(mut self, policy: impl Into<Policy>) -> Self {
        self.default_policy = policy.into();
        self
    }

    /// Adds a route: a glob pattern (`/api/admin/**`, `/api/*/notes`) and its policy.
    ///
    /// ```
    /// # use axum::{Router, body::Body};
    /// # use http::Method;
    /// # use portcullis::{Policy, SecurityLayer};
    /// # use tower::{Layer, ServiceExt};
    /// let layer = SecurityLayer::bare()
    ///     .route("/api/admin/**", Policy::open().methods([Method::POST]))
    ///     .build()?;
    /// # let app = layer.layer(Router::new().fallback(|| async { "ok" }));
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// # let get = |path| http::Request::get(path).body(Body::empty()).unwrap();
    /// assert_eq!(app.clone().oneshot(get("/api/admin/users")).await.unwrap().status(), 405);
    /// assert_eq!(app.oneshot(get("/api/public")).await.unwrap().status(), 200);
    /// # });
    /// # Ok::<(), portcullis::layer::BuildError>(())
    /// ```
    pub fn route(mut self, pattern: &str, policy: impl Into<Policy>) -> Self {
        self.routes.push((pattern.to_string(), policy.into()));
        self
    }

    /// Accepts only these hosts (`Host` and absolute-form targets; ports ignored).
    ///
    /// ```
    /// # use axum::{Router, body::Body};
    /// # use portcullis::SecurityLayer;
    /// # use tower::{Layer, ServiceExt};
    /// let layer = SecurityLayer::bare().allowed_hosts(["api.example.com"]).build()?;
    /// # let app = layer.layer(Router::new().fallback(|| async { "ok" }));
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let req = |host| http::Request::get("/").header("host", host).body(Body::empty()).unwrap();
    /// assert_eq!(app.clone().oneshot(req("api.example.com:8443")).await.unwrap().status(), 200);
    /// assert_eq!(app.oneshot(req("evil.example")).await.unwrap().status(), 400);
    /// # });
    /// # Ok::<(), portcullis::layer::BuildError>(())
    /// ```
    pub fn allowed_hosts<I, S>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.allowed_hosts = Some(
            hosts
                .into_iter()
                .map(|h| h.into().to_ascii_lowercase())
                .collect(),
        );
        self
    }

    /// Refuses (400 `invalid_host`) an HTTP/1.1 request without a `Host` header, as RFC 9112
    /// §3.2 asks of a server, and an HTTP/2 one with neither `:authority` nor `Host` (RFC 9113
    /// §8.3.1). Off by default, so requests built in tests without one still
    /// pass; a server facing real clients should turn it on (the gateway does). A request
    /// with more than one `Host` is refused either way.
    ///
    /// ```
    /// use portcullis::SecurityLayer;
    /// let layer = SecurityLayer::builder().require_host(true).build().unwrap();
    /// ```
    pub fn require_host(mut self, on: bool) -> Self {
        self.require_host = on;
        self
    }

    /// Judges a Next.js data request by its page's route: `/_next/data/<build id>/<page>.json`
    /// (under any base path: `/base/_next/data/…`) is what the page `/<page>` renders
    /// (`index.json`: the base itself), served by the same server-side code, so a route that
    /// guards `/dashboard/**` must guard `/_next/data/<id>/dashboard/settings.json` too. When
    /// the page falls under a route of its own, its policy applies; otherwise the data
    /// path's own. Off by default; the gateway turns it on for `upstream_kind = "nextjs"`.
    ///
    /// ```
    /// # use axum::{Router, body::Body};
    /// # use portcullis::{Policy, Preset, SecurityLayer};
    /// # use tower::{Layer, ServiceExt};
    /// let layer = SecurityLayer::builder()
    ///     .route("/dashboard/**", Preset::Authenticated)
    ///     .nextjs_data_routes(true)
    ///     .build()?;
    /// let app = layer.layer(Router::new().fallback(|| async { "props" }));
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let data = http::Request::get("/_next/data/b1d/dashboard/settings.json").body(Body::empty()).unwrap();
    /// assert_eq!(app.oneshot(data).await.unwrap().status(), 401);
    /// # });
    /// # Ok::<(), portcullis::layer::BuildError>(())
    /// ```
    pub fn nextjs_data_routes(mut self, on: bool) -> Self {
        self.nextjs_data_routes = on;
        self
    }

    /// Which inbound headers are stripped (`None`: none).
    ///
    /// ```
    /// # use axum::{Router, body::Body};
    /// # use http::{HeaderMap, HeaderName};
    /// # use portcullis::{SecurityLayer, inbound::InboundHeaders};
    /// # use tower::{Layer, ServiceExt};
    /// let strip = InboundHeaders::default().also(HeaderName::from_static("x-user"));
    /// let layer = SecurityLayer::bare().inbound_headers(Some(strip)).build()?;
    /// // The application reports whether it saw an `x-user` header.
    /// # let app = layer.layer(Router::new().fallback(|h: HeaderMap| async move {
    /// #     h.contains_key("x-user").to_string()
    /// # }));
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let req = http::Request::get("/").header("x-user", "admin").body(Body::empty()).unwrap();
    /// let res = app.oneshot(req).await.unwrap();
    /// assert_eq!(axum::body::to_bytes(res.into_body(), 64).await.unwrap(), "false");
    /// # });
    /// # Ok::<(), portcullis::layer::BuildError>(())
    /// ```
    pub fn inbound_headers(mut self, strip: Option<InboundHeaders>) -> Self {
        self.inbound = strip;
        self
    }

    /// Proxies whose `X-Forwarded-For` is believed (CIDR blocks).
    ///
    /// ```
    /// # use axum::{Router, body::Body};
    /// # use portcullis::{ClientIp, SecurityLayer, client_ip::PeerAddr};
    /// # use tower::{Layer, ServiceExt};
    /// let layer = SecurityLayer::bare().trusted_proxies(["10.0.0.0/8"]).build()?;
    /// let app = layer.layer(Router::new().fallback(|ip: ClientIp| async move { ip.to_string() }));
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// // The request arrives from the proxy 10.0.0.2, on behalf of 203.0.113.9.
    /// let req = http::Request::get("/").header("x-forwarded-for", "203.0.113.9");
    /// let mut req = req.body(Body::empty()).unwrap();
    /// req.extensions_mut().insert(PeerAddr("10.0.0.2:40000".parse().unwrap()));
    /// let res = app.oneshot(req).await.unwrap();
    /// assert_eq!(axum::body::to_bytes(res.into_body(), 64).await.unwrap(), "203.0.113.9");
    /// # });
    /// # Ok::<(), portcullis::layer::BuildError>(())
    /// ```
    pub fn trusted_proxies<I, S>(mut self, cidrs: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.trusted = cidrs.into_iter().map(Into::into).collect();
        self
    }

    /// The security headers (`None`: none are added, banners are kept).
    ///
    /// ```
    /// # use axum::{Router, body::Body};
    /// # use portcullis::{SecurityLayer, headers::security::SecurityHeaders};
    /// # use tower::{Layer, ServiceExt};
    /// let layer = SecurityLayer::bare().security_headers(Some(SecurityHeaders::default())).build()?;
    /// let app = layer.layer(Router::new().fallback(|| async { ([("server", "nginx/1.2")], "ok") }));
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let res = app.oneshot(http::Request::get("/").body(Body::empty()).unwrap()).await.unwrap();
    /// assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    /// assert!(!res.headers().contains_key("server"));
    /// # });
    /// # Ok::<(), portcullis::layer::BuildError>(())
    /// ```
    pub fn security_headers(mut self, headers: Option<SecurityHeaders>) -> Self {
        self.headers = headers;
        self
    }

    /// The layer-wide CSP (`None`: no CSP unless a route sets one).
    ///
    /// ```
    /// # use axum::{Router, body::Body};
    /// # use portcullis::{Csp, SecurityLayer};
    /// # use tower::{Layer, ServiceExt};
    /// let csp = Csp::parse("default-src 'self'")?;
    /// let layer = SecurityLayer::bare().csp(Some(csp)).build()?;
    /// # let app = layer.layer(Router::new().fallback(|| async { "ok" }));
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let res = app.oneshot(http::Request::get("/").body(Body::empty()).unwrap()).await.unwrap();
    /// assert_eq!(res.headers()["content-security-policy"], "default-src 'self'");
    /// # });
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn csp(mut self, csp: Option<Csp>) -> Self {
        self.csp = csp;
        self
    }

    /// CORS settings (`None`: no CORS headers, preflights get 405 like any OPTIONS).
    ///
    /// ```
    /// # use axum::{Router, body::Body};
    /// # use portcullis::{SecurityLayer, cors::Cors};
    /// # use tower::{Layer, ServiceExt};
    /// let cors = Cors::new().allow_origin("https://app.example.com")?;
    /// let layer = SecurityLayer::bare().cors(Some(cors)).build()?;
    /// # let app = layer.layer(Router::new().fallback(|| async { "ok" }));
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let req = http::Request::get("/").header("origin", "https://app.example.com");
    /// let res = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    /// assert_eq!(res.headers()["access-control-allow-origin"], "https://app.example.com");
    /// # });
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cors(mut self, cors: Option<Cors>) -> Self {
        self.cors = cors;
        self
    }

    /// The authenticator for routes that require a principal.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use axum::{Router, body::Body};
    /// # use portcullis::auth::api_key::{self, ApiKey, ApiKeyAuthenticator};
    /// # use portcullis::{Policy, SecurityLayer};
    /// # use tower::{Layer, ServiceExt};
    /// let key = api_key::generate();
    /// let auth = ApiKeyAuthenticator::new([ApiKey::new("ci", key.hash_line(), ["deploy"])?])?;
    /// let layer = SecurityLayer::bare()
    ///     .default_policy(Policy::open().auth(true))
    ///     .authenticator(Arc::new(auth))
    ///     .build()?;
    /// # let app = layer.layer(Router::new().fallback(|| async { "ok" }));
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// # let send = |req: http::request::Builder| app.clone().oneshot(req.body(Body::empty()).unwrap());
    /// assert_eq!(send(http::Request::get("/")).await.unwrap().status(), 401);
    /// assert_eq!(send(http::Request::get("/").header("x-api-key", key.key())).await.unwrap().status(), 200);
    /// # });
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn authenticator(mut self, auth: Arc<dyn Authenticator>) -> Self {
        self.authenticator = Some(auth);
        self
    }

    /// The brute-force limit of step 8: refused credentials counted per client address
    /// ([`ClientIp::key`]); past the limit the client gets 429 on routes that require a
    /// principal. On by default (10 per 15 min); `None` turns it off.
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use portcullis::{SecurityLayer, auth::FailedAuthTracker};
    /// let layer = SecurityLayer::builder()
    ///     .failed_auth(Some(Arc::new(FailedAuthTracker::new(5, Duration::from_secs(600)))))
    ///     .build()
    ///     .unwrap();
    /// ```
    pub fn failed_auth(mut self, tracker: Option<Arc<FailedAuthTracker>>) -> Self {
        self.failed_auth = tracker;
        self
    }

    /// The ban list of step 5 (`None`, the default: off). A client whose refusals — 400s of
    /// the path and host checks (step 2), 429s of the rate limits and of the brute-force
    /// limit, 403s of the CSRF check — reach the list's limit gets 403 `banned` on every
    /// route until its ban ends. Refusals only reported (`report_only`) and 503s of a store
    /// that is down never count; nor do requests without a known client address.
    ///
    /// ```
    /// # use std::{sync::Arc, time::Duration};
    /// # use axum::{Router, body::Body};
    /// # use portcullis::{SecurityLayer, ban::BanList, client_ip::PeerAddr};
    /// # use tower::{Layer, ServiceExt};
    /// let bans = BanList::new(2, Duration::from_secs(60), Duration::from_secs(900));
    /// let layer = SecurityLayer::bare().ban_list(Some(Arc::new(bans))).build()?;
    /// # let app = layer.layer(Router::new().fallback(|| async { "ok" }));
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let from = |path: &str| {
    ///     let mut req = http::Request::get(path).body(Body::empty()).unwrap();
    ///     req.extensions_mut().insert(PeerAddr("203.0.113.7:50000".parse().unwrap()));
    ///     req
    /// };
    /// for _ in 0..2 {
    ///     // An encoded slash: refused at step 2, and an offence.
    ///     assert_eq!(app.clone().oneshot(from("/a%2fb")).await.unwrap().status(), 400);
    /// }
    /// let res = app.oneshot(from("/")).await.unwrap();
    /// assert_eq!(res.status(), 403);
    /// assert!(res.headers().contains_key("retry-after"));
    /// # });
    /// # Ok::<(), portcullis::layer::BuildError>(())
    /// ```
    pub fn ban_list(mut self, bans: Option<Arc<BanList>>) -> Self {
        self.bans = bans;
        self
    }

    /// The rate-limit guard (step 10). The secure defaults use a
    /// [`RateLimiter`](crate::rate_limit::RateLimiter) over an in-memory store.
    ///
    /// ```
    /// # use std::{sync::Arc, time::Duration};
    /// # use axum::{Router, body::Body};
    /// # use portcullis::policy::{RateKey, RateLimitSpec};
    /// # use portcullis::rate_limit::{RateLimiter, memory::MemoryStore};
    /// # use portcullis::{Policy, SecurityLayer};
    /// # use tower::{Layer, ServiceExt};
    /// let once_a_minute = RateLimitSpec::new(1, Duration::from_secs(60), RateKey::Route);
    /// let layer = SecurityLayer::bare()
    ///     .default_policy(Policy::open().rate_limits([once_a_minute]))
    ///     .rate_limiter(Arc::new(RateLimiter::new(Arc::new(MemoryStore::new(1_000)))))
    ///     .build()?;
    /// # let app = layer.layer(Router::new().fallback(|| async { "ok" }));
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// # let get = || http::Request::get("/").body(Body::empty()).unwrap();
    /// assert_eq!(app.clone().oneshot(get()).await.unwrap().status(), 200);
    /// assert_eq!(app.oneshot(get()).await.unwrap().status(), 429);
    /// # });
    /// # Ok::<(), portcullis::layer::BuildError>(())
    /// ```
    pub fn rate_limiter(mut self, guard: Arc<dyn Guard>) -> Self {
        self.rate_limit = Some(guard);
        self
    }

    /// Turns rate limiting off for every route.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use axum::{Router, body::Body};
    /// # use portcullis::policy::{RateKey, RateLimitSpec};
    /// # use portcullis::{Policy, Preset, SecurityLayer};
    /// # use tower::{Layer, ServiceExt};
    /// let once_a_minute = RateLimitSpec::new(1, Duration::from_secs(60), RateKey::Route);
    /// let layer = SecurityLayer::builder()
    ///     .default_policy(Policy::preset(Preset::Public).rate_limits([once_a_minute]))
    ///     .no_rate_limiter()
    ///     .build()?;
    /// # let app = layer.layer(Router::new().fallback(|| async { "ok" }));
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// # let get = || http::Request::get("/").body(Body::empty()).unwrap();
    /// for _ in 0..3 {
    ///     assert_eq!(app.clone().oneshot(get()).await.unwrap().status(), 200);
    /// }
    /// # });
    /// # Ok::<(), portcullis::layer::BuildError>(())
    /// ```
    pub fn no_rate_limiter(mut self) -> Self {
        self.rate_limit = None;
        self
    }

    /// The CSRF guard (step 11).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use axum::{Router, body::Body};
    /// # use portcullis::{Preset, SecurityLayer, csrf::CsrfGuard};
    /// # use tower::{Layer, ServiceExt};
    /// let layer = SecurityLayer::bare()
    ///     .default_policy(Preset::Public)
    ///     .csrf_guard(Arc::new(CsrfGuard::builder().build()?))
    ///     .build()?;
    /// # let app = layer.layer(Router::new().fallback(|| async { "ok" }));
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let forged = http::Request::post("/").header("sec-fetch-site", "cross-site");
    /// assert_eq!(app.oneshot(forged.body(Body::empty()).unwrap()).await.unwrap().status(), 403);
    /// # });
    /// # Ok::<(), portcullis::layer::BuildError>(())
    /// ```
    pub fn csrf_guard(mut self, guard: Arc<dyn Guard>) -> Self {
        self.csrf = Some(guard);
        self
    }

    /// Turns the CSRF guard off for every route (the secure defaults have one).
    ///
    /// ```
    /// # use axum::{Router, body::Body};
    /// # use portcullis::{Preset, SecurityLayer};
    /// # use tower::{Layer, ServiceExt};
    /// let layer = SecurityLayer::builder().default_policy(Preset::Public).no_csrf_guard().build()?;
    /// # let app = layer.layer(Router::new().fallback(|| async { "ok" }));
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// // A cross-site POST is no longer refused.
    /// let req = http::Request::post("/").header("sec-fetch-site", "cross-site");
    /// assert_eq!(app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap().status(), 200);
    /// # });
    /// # Ok::<(), portcullis::layer::BuildError>(())
    /// ```
    pub fn no_csrf_guard(mut self) -> Self {
        self.csrf = None;
        self
    }

    /// Where audit events go.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use axum::{Router, body::Body};
    /// # use portcullis::audit::{AuditAction, MemorySink, Outcome};
    /// # use portcullis::{Preset, SecurityLayer};
    /// # use tower::{Layer, ServiceExt};
    /// let sink = MemorySink::default();
    /// let layer = SecurityLayer::bare()
    ///     .default_policy(Preset::Strict)
    ///     .audit(Arc::new(sink.clone()))
    ///     .build()?;
    /// # let app = layer.layer(Router::new().fallback(|| async { "ok" }));
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// # let get = || http::Request::get("/").body(Body::empty()).unwrap();
    /// assert_eq!(app.oneshot(get()).await.unwrap().status(), 405);
    /// # });
    /// let events = sink.events();
    /// assert_eq!(events.len(), 1);
    /// assert_eq!((events[0].action, events[0].outcome), (AuditAction::MethodNotAllowed, Outcome::Denied));
    /// # Ok::<(), portcullis::layer::BuildError>(())
    /// ```
    pub fn audit(mut self, sink: Arc<dyn AuditSink>) -> Self {
        self.audit = Some(sink);
        self
    }

    /// How the layer hands the request id, client address, route, canonical path and nonce
    /// to the service behind it: one extension each (the default) or one
    /// [`RequestContext`].
    ///
    /// ```
    /// use portcullis::{SecurityLayer, layer::RequestExtensions};
    /// let layer = SecurityLayer::builder().request_extensions(RequestExtensions::Context).build()?;
    /// # Ok::<(), portcullis::layer::BuildError>(())
    /// ```
    pub fn request_extensions(mut self, how: RequestExtensions) -> Self {
        self.extensions = how;
        self
    }

    /// Validates everything and builds the layer.
    ///
    /// ```
    /// use portcullis::SecurityLayer;
    /// assert!(SecurityLayer::builder().trusted_proxies(["10.0.0.0/8"]).build().is_ok());
    /// let err = SecurityLayer::builder().trusted_proxies(["10.0.0.0/33"]).build().unwrap_err();
    /// assert_eq!(err.key, "trusted_proxies");
    /// // A limit that would be weaker than written (here: never refusing) is an error too.
    /// use std::time::Duration;
    /// use portcullis::{Policy, policy::{RateKey, RateLimitSpec}};
    /// let never = RateLimitSpec::new(10, Duration::ZERO, RateKey::Ip);
    /// let err = SecurityLayer::builder()
    ///     .route("/api/**", Policy::open().rate_limits([never]))
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!(err.to_string(), "route \"/api/**\": limit \"default\" needs a window longer than zero");
    /// ```
    pub fn build(self) -> Result<SecurityLayer, BuildError> {
        check_policy("default_policy", &self.default_policy)?;
        for (pattern, policy) in &self.routes {
            check_policy(&format!("route {pattern:?}"), policy)?;
        }
        if let Some(t) = &self.failed_auth
            && t.window().is_zero()
        {
            return Err(BuildError {
                key: "failed_auth".to_string(),
                reason: "needs a window longer than zero (a zero window never blocks)".to_string(),
            });
        }
        if let Some(b) = &self.bans
            && (b.within().is_zero() || b.ban_for().is_zero())
        {
            return Err(BuildError {
                key: "ban_list".to_string(),
                reason: "needs a window and a ban longer than zero (else nobody is ever banned)"
                    .to_string(),
            });
        }
        for host in self.allowed_hosts.iter().flatten() {
            check_allowed_host(host).map_err(|reason| BuildError {
                key: "allowed_hosts".to_string(),
                reason,
            })?;
        }
        let trusted =
            TrustedProxies::parse(self.trusted.iter().map(String::as_str)).map_err(|reason| {
                BuildError {
                    key: "trusted_proxies".to_string(),
                    reason,
                }
            })?;
        let mut routes = RouteTable::new(RouteEntry {
            pattern: Arc::from("*"),
            policy: Arc::new(self.default_policy),
        });
        for (pattern, policy) in self.routes {
            routes
                .insert(
                    &pattern,
                    RouteEntry {
                        pattern: Arc::from(pattern.as_str()),
                        policy: Arc::new(policy),
                    },
                )
                .map_err(|e| BuildError {
                    key: format!("route {pattern:?}"),
                    reason: e.reason,
                })?;
        }
        if let Some(c) = &self.cors {
            c.validate().map_err(|e| BuildError {
                key: "cors".into(),
                reason: e.to_string(),
            })?;
        }
        Ok(SecurityLayer {
            engine: Arc::new(Engine {
                routes,
                allowed_hosts: self.allowed_hosts,
                require_host: self.require_host,
                nextjs_data_routes: self.nextjs_data_routes,
                inbound: self.inbound,
                trusted,
                headers: self.headers,
                csp: self.csp.map(Arc::new),
                cors: self.cors,
                authenticator: self.authenticator,
                failed_auth: self.failed_auth,
                bans: self.bans,
                rate_limit: self.rate_limit,
                csrf: self.csrf,
                audit: self.audit,
                extensions: self.extensions,
                warned_no_peer: AtomicBool::new(false),
            }),
        })
    }
}

/// Refuses what a policy would enforce otherwise than written: rate limits weaker than
/// written ([`RateLimitSpec::validate`]), two limits of one policy under one name (their
/// `RateLimit` header items would be indistinguishable), a role no principal can hold
/// ([`check_role`](crate::policy::check_role)), and a content type no request can carry
/// ([`check_content_type`](crate::policy::check_content_type)).
///
/// [`RateLimitSpec::validate`]: crate::policy::RateLimitSpec::validate
fn check_policy(key: &str, policy: &Policy) -> Result<(), BuildError> {
    let err = |reason: String| BuildError {
        key: key.to_string(),
        reason,
    };
    for role in policy.any_roles().iter().chain(policy.required_roles()) {
        crate::policy::check_role(role).map_err(err)?;
    }
    for t in policy.allowed_content_types().into_iter().flatten() {
        crate::policy::check_content_type(t).map_err(err)?;
    }
    let limits = policy.limits();
    for (i, limit) in limits.iter().enumerate() {
        limit.validate().map_err(err)?;
        if limits[..i].iter().any(|l| l.name == limit.name) {
            return Err(err(format!(
                "two limits are named {:?}; give each its own name",
                limit.name
            )));
        }
    }
    Ok(())
}

/// The security layer: wrap an axum `Router` (or any tower service) with it.
///
/// ```
/// # use axum::{Router, body::Body, routing::get};
/// # use portcullis::{Preset, SecurityLayer};
/// # use tower::ServiceExt;
/// let app: Router = Router::new()
///     .route("/api/data", get(|| async { "data" }))
///     .layer(SecurityLayer::new(Preset::Public));
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let res = app.oneshot(http::Request::get("/api/data").body(Body::empty()).unwrap()).await.unwrap();
/// assert_eq!(res.status(), 200);
/// assert_eq!(res.headers()["x-frame-options"], "DENY");
/// assert_eq!(res.headers()["x-request-id"].len(), 36);
/// # });
/// ```
///
/// Route patterns match the path the layer sees. Inside `Router::nest`, axum has stripped the
/// nest's prefix by then: a layer on the nested router must name its routes without it (or
/// wrap the outermost router instead), or a pattern with the prefix matches nothing and the
/// default policy applies.
///
/// ```
/// # use axum::{Router, body::Body, routing::post};
/// # use portcullis::{Policy, Preset, SecurityLayer};
/// # use tower::{Layer, ServiceExt};
/// let admin = Router::new().route("/admin/users", post(|| async { "ok" }));
/// // Wrong: under `nest("/api", …)` this layer sees `/admin/users`; `/api/admin/**` never matches.
/// let full = SecurityLayer::bare().route("/api/admin/**", Preset::Strict).build()?;
/// let wrong = Router::new().nest("/api", admin.clone().layer(full.clone()));
/// // Right: the nested layer's own paths, or the same layer around the outermost router.
/// let nested = SecurityLayer::bare().route("/admin/**", Preset::Strict).build()?;
/// let right = Router::new().nest("/api", admin.clone().layer(nested));
/// let outer = full.layer(Router::new().nest("/api", admin));
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let post = || http::Request::post("/api/admin/users").body(Body::empty()).unwrap();
/// assert_eq!(wrong.oneshot(post()).await.unwrap().status(), 200); // no principal asked for
/// assert_eq!(right.oneshot(post()).await.unwrap().status(), 401);
/// assert_eq!(outer.oneshot(post()).await.unwrap().status(), 401);
/// # });
/// # Ok::<(), portcullis::layer::BuildError>(())
/// ```
#[derive(Clone)]
pub struct SecurityLayer {
    engine: Arc<Engine>,
}

impl std::fmt::Debug for SecurityLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurityLayer").finish_non_exhaustive()
    }
}

impl SecurityLayer {
    /// Every control with the preset's policy for all paths, secure defaults for the rest.
    ///
    /// ```
    /// use portcullis::{SecurityLayer, Preset};
    /// let layer = SecurityLayer::new(Preset::Strict);
    /// ```
    pub fn new(preset: Preset) -> Self {
        SecurityLayerBuilder::secure()
            .default_policy(Policy::preset(preset))
            .build()
            .expect("a preset-only layer has nothing that can fail to build")
    }

    /// A builder starting from the secure defaults (public preset for unmatched paths, security
    /// headers, the default CSP, inbound header stripping).
    ///
    /// ```
    /// # use axum::{Router, body::Body};
    /// # use portcullis::SecurityLayer;
    /// # use tower::{Layer, ServiceExt};
    /// let layer = SecurityLayer::builder().build()?;
    /// # let app = layer.layer(Router::new().fallback(|| async { "ok" }));
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let res = app.oneshot(http::Request::get("/").body(Body::empty()).unwrap()).await.unwrap();
    /// // The secure defaults: security headers, a CSP and the public preset's rate limit.
    /// assert_eq!(res.headers()["x-content-type-options"], "nosniff");
    /// assert!(res.headers().contains_key("content-security-policy"));
    /// assert!(res.headers().contains_key("ratelimit-policy"));
    /// # });
    /// # Ok::<(), portcullis::layer::BuildError>(())
    /// ```
    pub fn builder() -> SecurityLayerBuilder {
        SecurityLayerBuilder::secure()
    }

    /// A builder with every control off and an open default policy; used to run a single
    /// control alone (the canonical path and request id always apply).
    ///
    /// ```
    /// use portcullis::{SecurityLayer, headers::security::SecurityHeaders};
    /// let only_headers = SecurityLayer::bare()
    ///     .security_headers(Some(SecurityHeaders::default()))
    ///     .build()
    ///     .unwrap();
    /// ```
    pub fn bare() -> SecurityLayerBuilder {
        SecurityLayerBuilder::bare()
    }
}

impl<S> Layer<S> for SecurityLayer {
    type Service = SecurityService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SecurityService {
            inner,
            engine: self.engine.clone(),
        }
    }
}

/// The service [`SecurityLayer`] wraps around an inner service.
///
/// ```
/// # use axum::{Router, body::Body};
/// # use portcullis::{Preset, SecurityLayer, layer::SecurityService};
/// # use tower::{Layer, ServiceExt};
/// // Wrapping the whole router (rather than `Router::layer`) lets routing see the canonical path.
/// let svc: SecurityService<Router> =
///     SecurityLayer::new(Preset::Public).layer(Router::new().fallback(|uri: http::Uri| async move { uri.to_string() }));
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let res = svc.oneshot(http::Request::get("/a//b/../c").body(Body::empty()).unwrap()).await.unwrap();
/// assert_eq!(axum::body::to_bytes(res.into_body(), 64).await.unwrap(), "/a/c");
/// # });
/// ```
#[derive(Clone)]
pub struct SecurityService<S> {
    inner: S,
    engine: Arc<Engine>,
}

/// The inner service only, as tower-http's services print theirs: the layer's settings hold
/// keys and secrets.
impl<S: std::fmt::Debug> std::fmt::Debug for SecurityService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurityService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The response body: axum's, so the wrapped service can be served by `axum::serve` and
/// used with `Router::layer` alike (axum does not box a body that already is one).
///
/// ```
/// # use axum::{Router, body::Body};
/// # use portcullis::{SecurityLayer, layer::SecurityBody};
/// # use tower::{Layer, ServiceExt};
/// let svc = SecurityLayer::bare().build()?.layer(Router::new().fallback(|| async { "hello" }));
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let res: http::Response<SecurityBody> = svc.oneshot(http::Request::get("/").body(Body::empty()).unwrap()).await.unwrap();
/// assert_eq!(axum::body::to_bytes(res.into_body(), 64).await.unwrap(), "hello");
/// # });
/// # Ok::<(), portcullis::layer::BuildError>(())
/// ```
pub type SecurityBody = axum::body::Body;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SecurityService<S>
where
    S: Service<Request<LimitedBody<ReqBody>>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<axum::BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<axum::BoxError>,
{
    type Response = Response<SecurityBody>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let engine = self.engine.clone();
        // The handling future itself, not one awaiting it: boxed with one move.
        Box::pin(engine.handle(req, inner))
    }
}

/// Either a refusal to send now, or the request goes on.
enum Step {
    Reject(Rejection),
    Respond(Box<Response<Bytes>>),
}

impl From<Rejection> for Step {
    fn from(r: Rejection) -> Self {
        Step::Reject(r)
    }
}

/// Where [`Engine::before_now`] starts: at step 6, or after the wait it stopped at.
enum Resume {
    /// Step 6.
    Start,
    /// Step 8: the credentials.
    Authenticate,
    /// Step 8 with the authenticator's outcome (already put to the brute-force limit when the
    /// flag is set: a refused one counted, an accepted one checked), then steps 9 and 10.
    Credentials(AuthOutcome, bool),
    /// Step 11.
    Csrf,
    /// Step 12.
    Body,
}

/// What a step of [`Engine::before_now`] must wait for, done by [`Engine::before_slow`].
enum Wait {
    /// An authenticator that cannot decide without its future (step 8).
    Authenticate,
    /// The brute-force limit's word on accepted credentials: a client over it gets 429 even
    /// with good ones (step 8).
    ConfirmSuccess(Principal),
    /// Counting refused credentials against the client before refusing them: 401 within the
    /// limit, 429 past it (step 8).
    CountFailure(&'static str),
    /// A rate limiter that cannot decide without its future (step 10).
    RateLimit,
    /// A CSRF guard that cannot decide without its future (step 11).
    Csrf,
}

/// How far [`Engine::before_now`] got: through step 12 (with the body-limit flag when the
/// body is counted), or to a wait.
enum Flow {
    Done(Option<Arc<AtomicBool>>),
    Wait(Wait),
}

/// Whether a `Host` value is `host[:port]`: a DNS-style name or IPv4 address of letters,
/// digits, `-`, `.`, `_` and `~` (at most 255 bytes), or a bracketed IPv6 address; then
/// optionally `:` and a port of up to 5 digits, at most 65535. No user info, escapes,
/// spaces, slashes or second colon: what RFC 3986 allows beyond this is never sent by a
/// browser and only serves to confuse whoever reads the header next.
fn valid_host(v: &[u8]) -> bool {
    let (host, rest) = if v.first() == Some(&b'[') {
        let Some(end) = v.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = std::str::from_utf8(&v[1..end]).ok();
        if literal
            .and_then(|l| l.parse::<std::net::Ipv6Addr>().ok())
            .is_none()
        {
            return false;
        }
        (None, &v[end + 1..])
    } else {
        let end = v.iter().position(|&b| b == b':').unwrap_or(v.len());
        (Some(&v[..end]), &v[end..])
    };
    if let Some(name) = host {
        let name_byte =
            |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
        if name.is_empty() || name.len() > 255 || !name.iter().all(name_byte) {
            return false;
        }
    }
    match rest {
        [] => true,
        [b':', digits @ ..] => {
            digits.len() <= 5
                && digits.iter().all(u8::is_ascii_digit)
                && digits
                    .iter()
                    .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'))
                    <= 65_535
        }
        _ => false,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Engine {
    async fn handle<S, ReqBody, ResBody>(
        self: Arc<Self>,
        req: Request<ReqBody>,
        mut inner: S,
    ) -> Result<Response<SecurityBody>, S::Error>
    where
        S: Service<Request<LimitedBody<ReqBody>>, Response = Response<ResBody>>,
        ReqBody: Body,
        ReqBody::Error: Into<axum::BoxError>,
        ResBody: Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Into<axum::BoxError>,
    {
        let (mut parts, body) = req.into_parts();
        let (mut x, carried, refused) = self.begin(&mut parts, body.is_end_stream());
        if let Some(r) = refused {
            std::hint::cold_path();
            return Ok(self.reject(r, &parts, &x));
        }
        let policy = &*x.entry.policy;

        let before = match self.before_now(&mut parts, &mut x, policy, carried, Resume::Start) {
            Ok(Flow::Done(tripped)) => Ok(tripped),
            // Boxed: the waiting steps' futures stay out of the handling future.
            Ok(Flow::Wait(wait)) => {
                Box::pin(self.before_slow(&mut parts, &mut x, policy, carried, wait)).await
            }
            Err(step) => Err(step),
        };
        let tripped = match before {
            Ok(t) => t,
            Err(Step::Reject(r)) => return Ok(self.reject(r, &parts, &x)),
            Err(Step::Respond(res)) => {
                let mut res = (*res).map(SecurityBody::from);
                self.decorate(res.headers_mut(), &parts, &x, None);
                return Ok(res);
            }
        };

        let nonce = match self.csp_for(x.policy()) {
            Some(csp) if csp.uses_nonce() => Some(Nonce::generate()),
            _ => None,
        };
        let report_body = x.policy().report_only_mode().covers(Control::Body);
        // Reading the form for `_method` refuses a body over the limit (it is consumed), so
        // not while the body limit only reports.
        x.scan_form &= !report_body;
        // A multipart form (an upload) is read for `_method` as it streams, never held whole,
        // unless the CSRF guard must read it for its token anyway.
        let override_scan = (x.scan_form && x.guard_body.is_none())
            .then(|| {
                MultipartOverrideScan::for_request(x.policy().allowed_methods(), &parts.headers)
            })
            .flatten();
        x.scan_form &= override_scan.is_none();
        let read_cap = x.guard_body.or_else(|| {
            x.scan_form.then(|| {
                x.policy()
                    .max_body_bytes()
                    .unwrap_or(crate::csrf::DEFAULT_FORM_LIMIT)
            })
        });
        let body = if let Some(cap) = read_cap {
            // 7 and 11, deferred: the form body is read, looked at for a `_method` override
            // and by the CSRF guard for its token, then replayed. Boxed: form posts only, kept
            // out of the handling future.
            match Box::pin(self.check_guard_body(body, cap, &parts, &mut x)).await {
                Ok(bytes) => LimitedBody::buffered(bytes),
                Err(r) => return Ok(self.reject(r, &parts, &x)),
            }
        } else {
            match (&tripped, x.policy().max_body_bytes()) {
                (Some(flag), Some(max)) if report_body => {
                    LimitedBody::observing(body, max, flag.clone())
                }
                (Some(flag), Some(max)) => LimitedBody::new(body, max, flag.clone()),
                _ => LimitedBody::unlimited(body),
            }
        };
        let (body, overridden) = match override_scan {
            Some(scan) => {
                let flag = Arc::new(AtomicBool::new(false));
                let cut = !x.policy().report_only_mode().covers(Control::Methods);
                (body.scanning_overrides(scan, flag.clone(), cut), Some(flag))
            }
            None => (body, None),
        };
        // Keep what decorate() needs of the request: only CORS reads a header (Origin).
        let mut req_headers = HeaderMap::new();
        if self.cors.is_some()
            && let Some(origin) = parts.headers.get(header::ORIGIN)
        {
            req_headers.insert(header::ORIGIN, origin.clone());
        }
        let method = parts.method.clone();
        let defer = parts.extensions.get::<DeferSecurityHeaders>().is_some();
        self.pass_on(&mut parts.extensions, &x, nonce.as_ref());
        let res = inner.call(Request::from_parts(parts, body)).await?;

        let meta = Parts2 {
            headers: &req_headers,
            method: &method,
            uri: None,
        };
        if overridden
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Acquire))
        {
            std::hint::cold_path();
            // Step 7 for a `_method` field found in a multipart form as it streamed: the body
            // was cut before its end reached the application.
            let r = Rejection::method_not_allowed(x.policy().allowed_methods().allow_header());
            x.detail = Some("method_override");
            if let Some(refused) = self.refuse_after(r, meta, &x) {
                return Ok(refused);
            }
            x.detail = None;
        }
        if tripped.as_ref().is_some_and(|f| f.load(Ordering::Acquire)) {
            std::hint::cold_path();
            let r = Rejection::body_too_large(x.policy().max_body_bytes().unwrap_or(0));
            if let Some(refused) = self.refuse_after(r, meta, &x) {
                return Ok(refused);
            }
        }
        let (mut rparts, rbody) = res.into_parts();
        self.finish(&mut rparts, meta, &mut x, nonce.as_ref(), defer);
        Ok(Response::from_parts(rparts, SecurityBody::new(rbody)))
    }

    /// Steps 14–15 for an answer that goes out: its headers and the audit. Not generic, as
    /// [`Engine::begin`].
    fn finish(
        &self,
        rparts: &mut http::response::Parts,
        meta: Parts2<'_>,
        x: &mut Exchange<'_>,
        nonce: Option<&Nonce>,
        defer: bool,
    ) {
        let added = std::mem::take(&mut x.response_headers);
        let deferred = self.decorate_with(&mut rparts.headers, meta, x, nonce, added, defer);
        self.audit_notes(rparts.status, meta, x);
        // A refusal of the inner service's own (the gateway's 502, 504, and 408 or 400 for a
        // body that came too slowly or broke off) is audited as the layer's are. Most
        // answers carry no extensions at all: one look.
        if let Some(r) = rparts.extensions.get::<Rejection>() {
            std::hint::cold_path();
            self.audit_event(r.action(), Outcome::Denied, rparts.status, Some(r), meta, x);
        } else if x.policy().audits_allowed() {
            self.audit_event(
                AuditAction::RequestAllowed,
                Outcome::Allowed,
                rparts.status,
                None,
                meta,
                x,
            );
        }
        if let Some(d) = deferred {
            rparts.extensions.insert(d);
        }
    }

    /// Steps 1–5, the same for every request and service: the request id, the client, the
    /// host, the canonical path and the route, into a new exchange (with the refusal, if
    /// any). Not generic: it depends on neither the service nor its bodies. (Left for the
    /// compiler to inline: out of line, the calls cost more instructions than the smaller
    /// code saved, measured by `bench/callgrind.sh`.)
    fn begin<'e>(
        &'e self,
        parts: &mut Parts,
        body_end_stream: bool,
    ) -> (Exchange<'e>, Carried, Option<Rejection>) {
        let mut carried = Carried::of(&parts.headers);
        // HTTP/2 may stream a body with neither Content-Length nor Transfer-Encoding.
        carried.body_announced = ((carried.content_length || carried.transfer_encoding)
            && body_limit::has_body(&parts.headers))
            || !body_end_stream;
        let request_id = carried
            .request_id
            .then(|| parts.headers.get(X_REQUEST_ID))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .and_then(RequestId::from_client)
            .unwrap_or_else(RequestId::generate);
        let peer = client_ip::peer_of(parts);
        let peer_trusted = peer.is_some_and(|p| self.trusted.contains(p));
        // The URI's scheme is the client's say-so (absolute-form, or :scheme over h2c): only
        // the TLS-terminating server's `Https` mark or a trusted proxy's word counts.
        let https = parts.extensions.get::<Https>().is_some()
            || (peer_trusted
                && parts
                    .headers
                    .get("x-forwarded-proto")
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https")));
        let client = match peer {
            Some(p) => ClientIp(client_ip::resolve(p, &parts.headers, &self.trusted)),
            None => {
                std::hint::cold_path();
                self.warn_no_peer();
                ClientIp::unknown()
            }
        };
        // Steps 2–5 first, so the exchange starts with its route's pattern and policy (the
        // default's only when the request is refused before a route is known).
        let routed = if carried.transfer_encoding && !body_limit::chunked_only(&parts.headers) {
            std::hint::cold_path();
            Err(Rejection::unsupported_transfer_coding())
        } else {
            self.route(parts, peer_trusted)
        };
        let (entry, path, refused) = match routed {
            Ok((entry, path)) => (entry, Some(path), None),
            Err(r) => (self.routes.default_value(), None, Some(r)),
        };
        let x = Exchange {
            request_id,
            path,
            entry,
            client_ip: client,
            principal: None,
            https,
            response_headers: AddedFields::default(),
            detail: None,
            notes: Vec::new(),
            guard_body: None,
            scan_form: false,
        };
        (x, carried, refused)
    }

    /// Says once per layer that requests arrive without a peer address: they all count as
    /// one client (`0.0.0.0`), so one client's requests spend every client's rate limits and
    /// its refused credentials lock every client out of the authenticated routes — a server
    /// set up without `ConnectInfo` would otherwise only find out from its users.
    #[cold]
    #[inline(never)]
    fn warn_no_peer(&self) {
        if !self.warned_no_peer.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "portcullis: a request without a peer address: every such request counts as \
                 one client (0.0.0.0) for the rate limits and the brute-force limit; serve \
                 with into_make_service_with_connect_info::<SocketAddr>(), or insert \
                 portcullis::client_ip::PeerAddr in the request's extensions"
            );
        }
    }

    /// Step 13: what the layer learned, into the request's extensions for the handler.
    fn pass_on(&self, extensions: &mut http::Extensions, x: &Exchange<'_>, nonce: Option<&Nonce>) {
        match (self.extensions, &x.path) {
            (RequestExtensions::Context, Some(path)) => {
                extensions.insert(RequestContext {
                    request_id: x.request_id.clone(),
                    client_ip: x.client_ip,
                    route: MatchedRoute(x.entry.pattern.clone()),
                    path: path.clone(),
                    nonce: nonce.cloned(),
                });
            }
            _ => {
                extensions.insert(x.request_id.clone());
                extensions.insert(x.client_ip);
                extensions.insert(MatchedRoute(x.entry.pattern.clone()));
                if let Some(path) = &x.path {
                    extensions.insert(path.clone());
                }
                if let Some(n) = nonce {
                    extensions.insert(n.clone());
                }
            }
        }
        if let Some(p) = &x.principal {
            extensions.insert(p.clone());
        }
    }

    fn csp_for<'a>(&'a self, policy: &'a Policy) -> Option<&'a Csp> {
        match policy.csp_setting() {
            CspSetting::Inherit => self.csp.as_deref(),
            CspSetting::Off => None,
            CspSetting::Custom(c) => Some(c),
        }
    }

    /// Steps 2–5: host, canonical path, inbound headers, and the route it matches.
    fn route(
        &self,
        parts: &mut Parts,
        peer_trusted: bool,
    ) -> Result<(&RouteEntry, CanonicalPath), Rejection> {
        // 2. Canonical path and host.
        self.check_host(parts)?;
        let raw = parts.uri.path();
        let path = CanonicalPath::parse(raw).map_err(|e| match e {
            PathError::TooLong => Rejection::uri_too_long(),
            e => Rejection::invalid_path(e.reason()),
        })?;
        let h2 = parts.version >= http::Version::HTTP_2;
        if path.as_str() != raw || (parts.uri.scheme().is_some() && !h2) {
            parts.uri = rewrite_uri(&parts.uri, path.as_str(), h2)?;
        }
        // 3. Inbound headers.
        if let Some(strip) = &self.inbound {
            strip.strip(&mut parts.headers, peer_trusted);
        }
        // 5. Route → policy.
        if self.nextjs_data_routes
            && let Some(entry) = self.next_data_page_route(&path)?
        {
            return Ok((entry, path));
        }
        let entry = self
            .routes
            .lookup(&path)
            .map_err(|e| Rejection::invalid_path(e.to_string()))?
            .value;
        Ok((entry, path))
    }

    /// The route of the page a Next.js data request (`[/base]/_next/data/<id>/<page>.json`)
    /// fetches the props of, when the page falls under a route of its own.
    #[inline(never)]
    fn next_data_page_route(&self, path: &CanonicalPath) -> Result<Option<&RouteEntry>, Rejection> {
        const MARK: &str = "/_next/data/";
        let p = path.as_str();
        let Some(at) = p.find(MARK) else {
            return Ok(None);
        };
        let base = &p[..at];
        let Some((_build_id, page)) = p[at + MARK.len()..].split_once('/') else {
            return Ok(None);
        };
        let Some(page) = page.strip_suffix(".json") else {
            return Ok(None);
        };
        let page = match page {
            "index" if base.is_empty() => "/".to_string(),
            "index" => base.to_string(),
            page => format!("{base}/{page}"),
        };
        let Ok(page) = CanonicalPath::parse(&page) else {
            return Ok(None);
        };
        match self.routes.lookup(&page) {
            Ok(m) if m.pattern_opt.is_some() => Ok(Some(m.value)),
            Ok(_) => Ok(None),
            // A page path only a case variant of a route: as refused as the page would be.
            Err(e) => Err(Rejection::invalid_path(e.to_string())),
        }
    }

    /// Steps 6–12 up to the inner call, under the route's `policy` (the exchange's), as far as
    /// they go without waiting: from `from` on, until a step must wait (a store or an
    /// authenticator behind a future), which [`Engine::before_slow`] then does. Returns the
    /// body-limit flag when the body is counted.
    ///
    /// Not `async`: most requests never wait, and the steps then run here, out of the
    /// handling future, which stays small (every request allocates it and moves it).
    fn before_now(
        &self,
        parts: &mut Parts,
        x: &mut Exchange<'_>,
        policy: &Policy,
        carried: Carried,
        mut from: Resume,
    ) -> Result<Flow, Step> {
        if let Resume::Start = from {
            // 5. Ban list, with the route known (its report-only setting applies). No store
            // is asked: while no one is banned, this is one atomic load.
            if let Some(bans) = &self.bans
                && let Some(left) = bans.is_client_banned(x.client_ip)
            {
                self.enforce_ban(left, parts, x)?;
            }

            // 6. CORS preflight. A refused one in report-only goes on to the application, as
            // before the roll-out: whatever CORS it has of its own answers it (the browser
            // grants nothing without an Access-Control-Allow-Origin), and the method allowlist
            // does not judge it — it asks about a request, it is not one.
            let mut preflight_reported = false;
            if let Some(cors) = &self.cors
                && Cors::is_preflight(&parts.method, &parts.headers)
            {
                match cors.preflight(&parts.headers, policy.allowed_methods()) {
                    Ok(headers) => {
                        let mut res = Response::new(Bytes::new());
                        *res.status_mut() = StatusCode::NO_CONTENT;
                        *res.headers_mut() = headers;
                        return Err(Step::Respond(Box::new(res)));
                    }
                    Err(r) => {
                        self.enforce(r, parts, x)?;
                        preflight_reported = true;
                    }
                }
            }

            // 7. Methods: the request's, and any it asks the application to act as instead.
            let methods = policy.allowed_methods();
            if !preflight_reported {
                if !methods.allows(&parts.method) {
                    self.enforce(
                        Rejection::method_not_allowed(methods.allow_header()),
                        parts,
                        x,
                    )?;
                } else if !methods.allows_overrides(&parts.headers, parts.uri.query()) {
                    self.enforce_override(parts, x)?;
                }
            }
            // A `_method` field in a form body: looked for once the body is read (below, in
            // `handle`), before the application sees it.
            x.scan_form =
                carried.body_announced && methods.scans_form_body(&parts.method, &parts.headers);

            // 8. Authentication, then the brute-force limit (authenticated routes only, so a
            // stale cookie on public pages never locks anyone out).
            from = Resume::Authenticate;
        }
        if let Resume::Authenticate = from {
            let outcome = match &self.authenticator {
                Some(auth) => match auth.authenticate_now(parts) {
                    Some(outcome) => outcome,
                    None => return Ok(Flow::Wait(Wait::Authenticate)),
                },
                None => AuthOutcome::NoCredentials,
            };
            from = Resume::Credentials(outcome, false);
        }
        if let Resume::Credentials(outcome, limited) = from {
            // The brute-force limit is asked after the credentials are judged, in one store
            // operation that counts a refused guess as it checks it: a burst of guesses sent
            // at once cannot all pass a check made before any of them is counted. Whoever is
            // over the limit gets 429 whatever their credentials, so a right guess past it is
            // not told apart from a wrong one.
            match outcome {
                AuthOutcome::Authenticated(p) => {
                    if !limited && self.failed_auth.is_some() && policy.requires_auth() {
                        return Ok(Flow::Wait(Wait::ConfirmSuccess(p)));
                    }
                    x.principal = Some(p);
                }
                AuthOutcome::NoCredentials if policy.requires_auth() => {
                    self.enforce(Rejection::unauthorized(false), parts, x)?;
                }
                AuthOutcome::Invalid(reason) if policy.requires_auth() => {
                    if !limited && self.failed_auth.is_some() {
                        return Ok(Flow::Wait(Wait::CountFailure(reason)));
                    }
                    x.detail = Some(reason);
                    self.enforce(Rejection::unauthorized(true), parts, x)?;
                    x.detail = None;
                }
                _ => {}
            }

            // 9. Authorization. Without a principal here (authentication only reported), a
            // role requirement is not met: dropping a token must never open more than a
            // token without the role does.
            if policy.requires_auth() {
                let roles_ok = match &x.principal {
                    Some(p) => {
                        (policy.any_roles().is_empty()
                            || policy.any_roles().iter().any(|r| p.has_role(r)))
                            && policy.required_roles().iter().all(|r| p.has_role(r))
                    }
                    None => policy.any_roles().is_empty() && policy.required_roles().is_empty(),
                };
                if !roles_ok {
                    self.enforce(Rejection::forbidden(), parts, x)?;
                }
            }

            // 10. Rate limit.
            if let Some(limiter) = &self.rate_limit
                && !policy.limits().is_empty()
            {
                match limiter.check_now(parts, x) {
                    Some(Ok(())) => {}
                    Some(Err(r)) => self.enforce(r, parts, x)?,
                    None => return Ok(Flow::Wait(Wait::RateLimit)),
                }
            }
            from = Resume::Csrf;
        }
        if let Resume::Csrf = from {
            // 11. CSRF. The guard may answer itself (its token endpoint), or need the body
            // (a token in a form field): then it decides in `handle`, after the body checks.
            if let Some(csrf) = &self.csrf {
                if let Some(res) = csrf.answer(parts, x) {
                    return Err(Step::Respond(Box::new(res)));
                }
                if policy.csrf_mode() != CsrfMode::Off {
                    x.guard_body = csrf.body_needed(parts, x);
                    if x.guard_body.is_none() {
                        match csrf.check_now(parts, x) {
                            Some(Ok(())) => {}
                            Some(Err(r)) => self.enforce(r, parts, x)?,
                            None => return Ok(Flow::Wait(Wait::Csrf)),
                        }
                    }
                }
            }
        }

        // 12. Body.
        let mut reported = false;
        if let Some(max) = policy.max_body_bytes()
            && carried.content_length
            && let Err(r) = body_limit::check_declared_length(&parts.headers, max)
        {
            // A malformed length is a smuggling attempt, never only reported.
            if r.status() == StatusCode::BAD_REQUEST {
                return Err(r.into());
            }
            self.enforce(r, parts, x)?;
            // Only reached in report-only mode; the declared length was exact, so the
            // stream need not be reported a second time.
            reported = true;
        }
        if let Some(types) = policy.allowed_content_types()
            && let Err(r) =
                body_limit::check_body_content_type(&parts.headers, types, carried.body_announced)
        {
            self.enforce(r, parts, x)?;
        }
        let counted = policy.max_body_bytes().is_some() && !reported;
        Ok(Flow::Done(
            counted.then(|| Arc::new(AtomicBool::new(false))),
        ))
    }

    /// Steps 6–12 for a request that must wait at `wait`: waits, then goes on with
    /// [`Engine::before_now`] from the step after, as many times as a step must wait.
    async fn before_slow(
        &self,
        parts: &mut Parts,
        x: &mut Exchange<'_>,
        policy: &Policy,
        carried: Carried,
        mut wait: Wait,
    ) -> Result<Option<Arc<AtomicBool>>, Step> {
        loop {
            let from = match wait {
                Wait::ConfirmSuccess(p) => {
                    if let Some(t) = &self.failed_auth
                        && let Err(blocked) = t.check(&x.client_ip.key()).await
                    {
                        self.refuse_blocked(blocked, parts, x)?;
                    }
                    Resume::Credentials(AuthOutcome::Authenticated(p), true)
                }
                Wait::Authenticate => {
                    let outcome = match &self.authenticator {
                        Some(auth) => auth.authenticate(parts).await,
                        None => AuthOutcome::NoCredentials,
                    };
                    Resume::Credentials(outcome, false)
                }
                Wait::CountFailure(reason) => {
                    if let Some(t) = &self.failed_auth
                        && let Err(blocked) = t.count_failure(&x.client_ip.key()).await
                    {
                        self.refuse_blocked(blocked, parts, x)?;
                    }
                    Resume::Credentials(AuthOutcome::Invalid(reason), true)
                }
                Wait::RateLimit => {
                    if let Some(limiter) = &self.rate_limit
                        && let Err(r) = limiter.check(parts, x).await
                    {
                        self.enforce(r, parts, x)?;
                    }
                    Resume::Csrf
                }
                Wait::Csrf => {
                    if let Some(csrf) = &self.csrf
                        && let Err(r) = csrf.check(parts, x).await
                    {
                        self.enforce(r, parts, x)?;
                    }
                    Resume::Body
                }
            };
            match self.before_now(parts, x, policy, carried, from)? {
                Flow::Done(tripped) => return Ok(tripped),
                Flow::Wait(next) => wait = next,
            }
        }
    }

    /// Part of step 8: refuses a client the brute-force limit blocks — 429 past the limit, 503
    /// while its store is down under [`OnStoreError::Closed`](crate::rate_limit::OnStoreError).
    fn refuse_blocked(
        &self,
        blocked: Blocked,
        parts: &Parts,
        x: &mut Exchange<'_>,
    ) -> Result<(), Step> {
        match blocked {
            Blocked::RetryAfter(wait) => {
                x.detail = Some("too_many_failed_auth");
                let r = Rejection::rate_limited(wait.as_secs().max(1));
                // While authentication is only reported, a wrong guess gets through anyway, so
                // its limit guards nothing and must not refuse the roll-out's users.
                if x.policy()
                    .report_only_mode()
                    .covers(Control::Authentication)
                {
                    self.audit_rejection(&r, Outcome::ReportOnly, parts, x);
                } else {
                    self.enforce(r, parts, x)?;
                }
            }
            Blocked::StoreUnavailable => {
                x.detail = Some("failed_auth_store_unavailable");
                self.enforce(Rejection::store_unavailable(), parts, x)?;
            }
        }
        x.detail = None;
        Ok(())
    }

    /// Steps 7 and 11 for what only the body tells: reads at most `cap` bytes, looks for a
    /// `_method` override in a form, and lets a guard that needs the body decide. A longer
    /// body is refused whatever the report-only setting: it is consumed.
    async fn check_guard_body<B>(
        &self,
        body: B,
        cap: u64,
        parts: &Parts,
        x: &mut Exchange<'_>,
    ) -> Result<Bytes, Rejection>
    where
        B: Body,
        B::Error: Into<axum::BoxError>,
    {
        use http_body_util::BodyExt;
        let limit = usize::try_from(cap).unwrap_or(usize::MAX);
        let bytes = match http_body_util::Limited::new(body, limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(Rejection::body_too_large(cap));
            }
            Err(_) => {
                return Err(Rejection::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_body",
                    "Request body could not be read",
                    AuditAction::InvalidInput,
                    Control::Body,
                ));
            }
        };
        // 7, for the form's fields: a `_method` naming a method the route refuses.
        if x.scan_form
            && !x
                .policy()
                .allowed_methods()
                .allows_form_overrides(&parts.headers, &bytes)
            && let Err(Step::Reject(r)) = self.enforce_override(parts, x)
        {
            return Err(r);
        }
        if x.guard_body.is_some()
            && let Some(csrf) = &self.csrf
            && let Err(r) = csrf.check_body(parts, x, &bytes).await
        {
            match self.enforce(r, parts, x) {
                Err(Step::Reject(r)) => return Err(r),
                Err(Step::Respond(_)) | Ok(()) => {}
            }
        }
        Ok(bytes)
    }

    /// Step 7 for a request asking the application to act as a method the route refuses
    /// (an override header, query parameter or form field): [`Engine::enforce`]s the 405,
    /// audited with the detail `method_override`.
    #[cold]
    #[inline(never)]
    fn enforce_override(&self, parts: &Parts, x: &mut Exchange) -> Result<(), Step> {
        let r = Rejection::method_not_allowed(x.policy().allowed_methods().allow_header());
        x.detail = Some("method_override");
        self.enforce(r, parts, x)?;
        x.detail = None;
        Ok(())
    }

    /// Step 5 for a banned client: [`Engine::enforce`]s the 403 with the seconds left.
    #[cold]
    #[inline(never)]
    fn enforce_ban(
        &self,
        left: std::time::Duration,
        parts: &Parts,
        x: &Exchange,
    ) -> Result<(), Step> {
        // Rounded up: a client told 0 would come straight back.
        let secs = left.as_millis().div_ceil(1000).max(1) as u64;
        self.enforce(Rejection::banned(secs), parts, x)
    }

    /// A refusal found while the body streamed, once the inner service has answered: the
    /// refusal in its place, or `None` when its control only reports (audited as such).
    #[cold]
    #[inline(never)]
    fn refuse_after(
        &self,
        r: Rejection,
        meta: Parts2<'_>,
        x: &Exchange,
    ) -> Option<Response<SecurityBody>> {
        if !x.policy().report_only_mode().covers(r.control()) {
            return Some(self.reject_with(r, meta, x));
        }
        self.audit_event(
            r.action(),
            Outcome::ReportOnly,
            r.status(),
            Some(&r),
            meta,
            x,
        );
        None
    }

    /// Refuses, or in report-only mode audits and lets through.
    #[cold]
    #[inline(never)]
    fn enforce(&self, r: Rejection, parts: &Parts, x: &Exchange) -> Result<(), Step> {
        if x.policy().report_only_mode().covers(r.control()) {
            self.audit_rejection(&r, Outcome::ReportOnly, parts, x);
            Ok(())
        } else {
            Err(Step::Reject(r))
        }
    }

    fn check_host(&self, parts: &Parts) -> Result<(), Rejection> {
        // One Host, or none where the version allows it (RFC 9112 §3.2): two would let a
        // guard and an application each read a different one.
        let mut hosts = parts.headers.get_all(header::HOST).iter();
        let host_header = hosts.next();
        if hosts.next().is_some() {
            return Err(Rejection::bad_host("Request has more than one Host header"));
        }
        // An empty Host is how a client says the target has no authority: as good as none.
        let present = host_header.filter(|h| !h.is_empty());
        // HTTP/2 carries the authority in the URI (`:authority`); a request with neither that
        // nor a Host is malformed for an http(s) target (RFC 9113 §8.3.1), and would reach the
        // application with a host of the gateway's choosing.
        if present.is_none()
            && self.require_host
            && (parts.version == http::Version::HTTP_11
                || (parts.version == http::Version::HTTP_2 && parts.uri.authority().is_none()))
        {
            return Err(Rejection::bad_host("Request has no Host header"));
        }
        // `host[:port]` and nothing else (RFC 9112 §3.2: an invalid Host is a 400), so no
        // application behind builds a link or picks a tenant from `evil@good`, `a b` or
        // `good.com:80:80`.
        if present.is_some_and(|h| !valid_host(h.as_bytes())) {
            return Err(Rejection::bad_host(
                "Request Host header is not a host name or address",
            ));
        }
        // An absolute-form target names a resource of ours only as http or https.
        if let Some(scheme) = parts.uri.scheme_str()
            && !scheme.eq_ignore_ascii_case("http")
            && !scheme.eq_ignore_ascii_case("https")
        {
            return Err(Rejection::bad_host(
                "Request target's scheme is neither http nor https",
            ));
        }
        if let Some(auth) = parts.uri.authority() {
            if auth.as_str().contains('@') {
                return Err(Rejection::invalid_host());
            }
            if let Some(h) = host_header
                && !h.as_bytes().eq_ignore_ascii_case(auth.as_str().as_bytes())
            {
                return Err(Rejection::invalid_host());
            }
        }
        if let Some(allowed) = &self.allowed_hosts {
            let host = parts
                .uri
                .host()
                .map(str::to_string)
                .or_else(|| {
                    host_header
                        .and_then(|h| h.to_str().ok())
                        .and_then(|h| h.parse::<http::uri::Authority>().ok())
                        .map(|a| a.host().to_string())
                })
                .map(|h| h.to_ascii_lowercase());
            match host {
                Some(h) if allowed.contains(&h) => {}
                _ => return Err(Rejection::invalid_host()),
            }
        }
        Ok(())
    }

    #[cold]
    #[inline(never)]
    fn reject(&self, r: Rejection, parts: &Parts, x: &Exchange) -> Response<SecurityBody> {
        self.reject_with(
            r,
            Parts2 {
                headers: &parts.headers,
                method: &parts.method,
                uri: Some(&parts.uri),
            },
            x,
        )
    }

    #[cold]
    #[inline(never)]
    fn reject_with(&self, r: Rejection, meta: Parts2<'_>, x: &Exchange) -> Response<SecurityBody> {
        self.audit_event(r.action(), Outcome::Denied, r.status(), Some(&r), meta, x);
        self.audit_notes(r.status(), meta, x);
        if let Some(bans) = &self.bans
            && is_offence(&r)
        {
            self.count_offence(bans, &r, meta, x);
        }
        let res = if crate::error::is_grpc(meta.headers) {
            r.into_grpc_response_with_id(x.request_id.as_str())
        } else {
            r.into_response_with_id(x.request_id.as_str())
        };
        let mut res = res.map(SecurityBody::from);
        // Errors carry the security headers too, but never a nonce'd CSP worth caching.
        self.decorate_with(
            res.headers_mut(),
            meta,
            x,
            None,
            x.response_headers.clone(),
            false,
        );
        res
    }

    #[cold]
    #[inline(never)]
    fn decorate(
        &self,
        headers: &mut HeaderMap,
        parts: &Parts,
        x: &Exchange,
        nonce: Option<&Nonce>,
    ) {
        self.decorate_with(
            headers,
            Parts2 {
                headers: &parts.headers,
                method: &parts.method,
                uri: Some(&parts.uri),
            },
            x,
            nonce,
            x.response_headers.clone(),
            false,
        );
    }

    /// Step 14: the response headers. `added` is what the guards put in
    /// [`Exchange::response_headers_mut`].
    ///
    /// With `defer` the set is left out of the map when it can be, and returned for the
    /// server to write (see [`DeferSecurityHeaders`]); the result is the same fields.
    fn decorate_with(
        &self,
        headers: &mut HeaderMap,
        req: Parts2<'_>,
        x: &Exchange,
        nonce: Option<&Nonce>,
        added: AddedFields,
        defer: bool,
    ) -> Option<DeferredSecurityHeaders> {
        let mut deferred = None;
        let csp = self.csp_for(x.policy());
        let csp_name = csp.map(Csp::header_name);
        // One pass over the response's fields for what the steps below ask of them, instead
        // of a hashed lookup each: the set's own pass when it starts the map over.
        let own = match &self.headers {
            Some(sh) => match defer.then(|| sh.defer(headers, x.https)).flatten() {
                Some(d) => {
                    headers.reserve(16);
                    deferred = Some(d);
                    OwnFields::of(headers, csp_name.as_ref())
                }
                // Starts the map over from a copy of the set, sized for what follows. The
                // CSP and request id are replaced by an insert below whatever the response
                // held: only the deferred path asks whether it held them.
                None => {
                    let kept = sh.apply_noting(headers, x.https);
                    OwnFields {
                        csp: false,
                        cache_control: kept.cache_control,
                        request_id: false,
                        html: kept.html,
                    }
                }
            },
            None => {
                headers.reserve(16);
                OwnFields::of(headers, csp_name.as_ref())
            }
        };
        let mut cache_control = own.cache_control;
        let mut request_id = own.request_id;
        if let (Some(csp), Some(name)) = (csp, csp_name) {
            match deferred.as_mut() {
                // Left to the writer with the set: it pastes the nonce between the policy's
                // pieces straight into the response head. The response's own field goes, as
                // an insert would have replaced it.
                Some(d) => {
                    if own.csp {
                        headers.remove(&name);
                    }
                    d.defer_csp(name, csp.rendered(), nonce.cloned());
                }
                None => {
                    headers.insert(name, csp.render(nonce));
                }
            }
            // A page with a nonce in its CSP is never stored: a cached copy would repeat it.
            if nonce.is_some() && own.html {
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                cache_control = true;
            }
        }
        // Preflight answers carry their own CORS headers (a refused one must carry none).
        if let Some(cors) = &self.cors
            && !Cors::is_preflight(req.method, req.headers)
        {
            cors.apply(req.headers, headers);
        }
        // Left to the writer with the set when none of the names is one the layer decides
        // later or the set's (a guard's field with a name of the set follows the set, below).
        match deferred.as_mut() {
            Some(d) if added.all_names(|n| deferrable(n) && !d.contains(n)) => {
                d.defer_added(added);
            }
            _ => {
                // Moved, not cloned: a clone of a header value built from a `String` allocates.
                for (name, value) in added.into_fields() {
                    // A guard's field with a name of the deferred set: the set goes in first,
                    // as `apply` would have put it, and the field is added to it.
                    if let Some(d) = deferred.take_if(|d| d.contains(&name)) {
                        d.apply_to(headers);
                    }
                    cache_control |= name == header::CACHE_CONTROL;
                    request_id |= name == X_REQUEST_ID;
                    if name == header::VARY {
                        merge_vary(headers, &value);
                    } else {
                        headers.append(name, value);
                    }
                }
            }
        }
        // An API route's answer is not stored: `no-store` where the response says nothing,
        // and in place of what it says when the request was authenticated — a `public` or
        // `s-maxage` answer to one user must never reach another through a shared cache.
        let authenticated = x.principal.is_some();
        if x.policy().is_no_store() && (!cache_control || authenticated) {
            match deferred.as_mut() {
                Some(d) => {
                    if cache_control {
                        headers.remove(header::CACHE_CONTROL);
                    }
                    d.defer_no_store();
                }
                None => {
                    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                }
            }
        }
        match deferred.as_mut() {
            Some(d) => {
                if request_id {
                    headers.remove(X_REQUEST_ID);
                }
                d.defer_request_id(x.request_id.header_value());
            }
            None => {
                headers.insert(X_REQUEST_ID, x.request_id.header_value());
            }
        }
        deferred
    }

    #[cold]
    #[inline(never)]
    fn audit_rejection(&self, r: &Rejection, outcome: Outcome, parts: &Parts, x: &Exchange) {
        let meta = Parts2 {
            headers: &parts.headers,
            method: &parts.method,
            uri: Some(&parts.uri),
        };
        self.audit_event(r.action(), outcome, r.status(), Some(r), meta, x);
    }

    /// Counts a refusal against the client on the ban list; when it places a ban, one audit
    /// event `banned` says so (the refused request's, with `ban_for` and `offences`). An
    /// in-process store counts here; another is waited for in a task of its own (on the
    /// current Tokio runtime; uncounted without one), so the refusal goes out at once.
    #[cold]
    #[inline(never)]
    fn count_offence(&self, bans: &Arc<BanList>, r: &Rejection, meta: Parts2<'_>, x: &Exchange) {
        // No peer address (a layer driven without a server): one key for every such request,
        // which a ban would shut out together.
        if x.client_ip.0.is_unspecified() {
            return;
        }
        let key = x.client_ip.key();
        match bans.record_offence_now(&key) {
            Some(Some(_)) => {
                if let Some((sink, event)) = self.ban_started(bans, r, meta, x) {
                    sink.record(event);
                }
            }
            Some(None) => {}
            None => {
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    return;
                };
                // Built now, while the request is at hand; recorded only if a ban begins.
                let started = self.ban_started(bans, r, meta, x);
                let bans = bans.clone();
                runtime.spawn(async move {
                    if let Ok(Some(_)) = bans.record_offence(&key).await
                        && let Some((sink, event)) = started
                    {
                        sink.record(event);
                    }
                });
            }
        }
    }

    /// The audit event of a ban that the refusal `r` begins.
    fn ban_started(
        &self,
        bans: &BanList,
        r: &Rejection,
        meta: Parts2<'_>,
        x: &Exchange,
    ) -> Option<(Arc<dyn AuditSink>, AuditEvent)> {
        let sink = self.audit.clone()?;
        let banned = Rejection::banned(bans.ban_for().as_secs());
        let mut event = self.event(
            AuditAction::Banned,
            Outcome::Denied,
            r.status(),
            Some(&banned),
            meta,
            x,
        );
        if let serde_json::Value::Object(m) = &mut event.metadata {
            m.insert("ban_for".into(), bans.ban_for().as_secs().into());
            m.insert("offences".into(), bans.offences().into());
            m.insert("offence".into(), r.code().into());
        }
        Some((sink, event))
    }

    fn audit_notes(&self, status: StatusCode, meta: Parts2<'_>, x: &Exchange) {
        for n in &x.notes {
            let r = Rejection::new(status, n.code, n.reason, n.action, Control::Internal);
            self.audit_event(n.action, Outcome::Allowed, status, Some(&r), meta, x);
        }
    }

    /// Step 15: hands the event to the sink (which must not block).
    #[cold]
    #[inline(never)]
    fn audit_event(
        &self,
        action: AuditAction,
        outcome: Outcome,
        status: StatusCode,
        r: Option<&Rejection>,
        meta: Parts2<'_>,
        x: &Exchange,
    ) {
        let Some(sink) = &self.audit else { return };
        sink.record(self.event(action, outcome, status, r, meta, x));
    }

    /// The audit event of a request.
    fn event(
        &self,
        action: AuditAction,
        outcome: Outcome,
        status: StatusCode,
        r: Option<&Rejection>,
        meta: Parts2<'_>,
        x: &Exchange,
    ) -> AuditEvent {
        let mut metadata = r.map(Rejection::audit_metadata).unwrap_or_default();
        if let Some(detail) = x.detail {
            metadata.insert("detail".into(), detail.into());
        }
        AuditEvent {
            id: crate::audit::uuid_v7(),
            ts_ms: now_ms(),
            action,
            outcome,
            principal: x.principal.as_ref().map(|p| p.id.clone()),
            client_ip: Some(x.client_ip.to_string()),
            method: meta.method.as_str().to_string(),
            route: x.entry.pattern.to_string(),
            path: match (&x.path, meta.uri) {
                (Some(p), _) => p.as_str().to_string(),
                // A path refused at step 2: as the client sent it (a URI's path is visible
                // ASCII), cut to a bounded length, so the audit shows what was tried.
                (None, Some(uri)) if uri.path().is_empty() => refused_path(&uri.to_string()),
                (None, Some(uri)) => refused_path(uri.path()),
                (None, None) => "(invalid)".to_string(),
            },
            status: status.as_u16(),
            request_id: x.request_id.to_string(),
            metadata: serde_json::Value::Object(metadata),
        }
    }
}

/// Whether a refusal counts against the client on the ban list: the signs of probing or
/// hammering (path and host attacks, CSRF failures, 429s), never a store outage's 503 (not
/// the client's doing) nor what well-meaning clients also meet (401, 405, 413).
fn is_offence(r: &Rejection) -> bool {
    matches!(
        r.control(),
        Control::Path | Control::Csrf | Control::RateLimit
    ) && r.status() != StatusCode::SERVICE_UNAVAILABLE
}

/// An `allowed_hosts` entry is a host as `Host` names it, without scheme or port (the check
/// compares the request's host alone): `api.example.com`, `[::1]`, `127.0.0.1`.
fn check_allowed_host(host: &str) -> Result<(), String> {
    let bare = host
        .parse::<http::uri::Authority>()
        .ok()
        .filter(|a| a.port().is_none() && a.host() == host && !host.contains('@'));
    match bare {
        Some(_) if !host.is_empty() => Ok(()),
        _ => Err(format!(
            "{host:?} is not a host name; write it without scheme or port, such as \"api.example.com\""
        )),
    }
}

/// The parts of the request the response steps need.
#[derive(Clone, Copy)]
struct Parts2<'a> {
    headers: &'a HeaderMap,
    method: &'a Method,
    /// The request's target while the request is at hand: the audit of a request refused
    /// before its path had a canonical form shows what was sent.
    uri: Option<&'a Uri>,
}

/// The longest refused path the audit keeps, in bytes.
const REFUSED_PATH_MAX: usize = 1024;

/// `raw` for the audit of a refused path: at most [`REFUSED_PATH_MAX`] bytes, marked `…`
/// where cut.
fn refused_path(raw: &str) -> String {
    if raw.len() <= REFUSED_PATH_MAX {
        return raw.to_string();
    }
    let mut end = REFUSED_PATH_MAX;
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &raw[..end])
}

/// Which of the request fields the layer looks up by name a request carries, from one pass
/// over its names: most requests carry none of them, and the pass costs less than a hashed
/// lookup each.
#[derive(Clone, Copy, Default)]
struct Carried {
    content_length: bool,
    transfer_encoding: bool,
    request_id: bool,
    /// The request has a body (set by [`Engine::begin`], which also asks the body).
    body_announced: bool,
}

impl Carried {
    fn of(headers: &HeaderMap) -> Self {
        let mut carried = Carried::default();
        for name in headers.keys() {
            if *name == header::CONTENT_LENGTH {
                carried.content_length = true;
            } else if *name == header::TRANSFER_ENCODING {
                carried.transfer_encoding = true;
            } else if *name == X_REQUEST_ID {
                carried.request_id = true;
            }
        }
        carried
    }
}

/// What [`Engine::decorate_with`] asks of a response's fields, found in one pass.
#[derive(Default)]
struct OwnFields {
    /// A field named as the route's CSP.
    csp: bool,
    cache_control: bool,
    request_id: bool,
    /// The (first) `Content-Type` is HTML or XHTML.
    html: bool,
}

impl OwnFields {
    fn of(headers: &HeaderMap, csp: Option<&HeaderName>) -> Self {
        let mut own = OwnFields::default();
        let mut content_type = None;
        for (name, value) in headers {
            if *name == header::CONTENT_TYPE {
                content_type = content_type.or(Some(value));
            } else if *name == header::CACHE_CONTROL {
                own.cache_control = true;
            } else if *name == X_REQUEST_ID {
                own.request_id = true;
            } else if csp == Some(name) {
                own.csp = true;
            }
        }
        own.html =
            content_type.is_some_and(|v| crate::headers::nonce_html::html_media_type(v.as_bytes()));
        own
    }
}

/// Adds a guard's `Vary` fields to the response's, on one line and without repeats, so
/// readers of the first value see every field the response varies on.
#[cold]
#[inline(never)]
fn merge_vary(headers: &mut HeaderMap, add: &HeaderValue) {
    if !headers.contains_key(header::VARY) {
        headers.insert(header::VARY, add.clone());
        return;
    }
    let fields = |v: &HeaderValue| -> Vec<String> {
        v.to_str()
            .unwrap_or("")
            .split(',')
            .map(|f| f.trim().to_string())
            .filter(|f| !f.is_empty())
            .collect()
    };
    if headers
        .get_all(header::VARY)
        .iter()
        .any(|v| v.to_str().is_err())
    {
        headers.append(header::VARY, add.clone());
        return;
    }
    let mut merged: Vec<String> = headers
        .get_all(header::VARY)
        .iter()
        .flat_map(fields)
        .collect();
    if merged.iter().any(|f| f == "*") {
        return;
    }
    for f in fields(add) {
        if !merged.iter().any(|m| m.eq_ignore_ascii_case(&f)) {
            merged.push(f);
        }
    }
    if let Ok(v) = HeaderValue::from_str(&merged.join(", ")) {
        headers.insert(header::VARY, v);
    }
}

/// Puts the canonical path into the URI. Absolute-form HTTP/1 targets become origin-form;
/// HTTP/2 keeps its scheme and authority.
#[cold]
#[inline(never)]
fn rewrite_uri(uri: &Uri, path: &str, keep_authority: bool) -> Result<Uri, Rejection> {
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let pq = PathAndQuery::try_from(pq).map_err(|_| Rejection::invalid_path("Malformed path"))?;
    let mut p = http::uri::Parts::default();
    p.path_and_query = Some(pq);
    if keep_authority {
        p.scheme = uri.scheme().cloned();
        p.authority = uri.authority().cloned();
    }
    Uri::from_parts(p).map_err(|_| Rejection::invalid_path("Malformed path"))
}

#[cfg(test)]
mod tests {
    use super::{AddedFields, HeaderName, HeaderValue, header, valid_host};

    #[test]
    fn added_fields_keep_every_value_inline_ones_first() {
        let name = |n: &'static str| HeaderName::from_static(n);
        let value = |v: &'static str| HeaderValue::from_static(v);
        let mut a = AddedFields::default();
        a.push(name("ratelimit-policy"), value("p"));
        a.more.append(header::SET_COOKIE, value("a=1"));
        a.more.append(header::SET_COOKIE, value("b=2"));
        a.push(name("ratelimit"), value("r"));
        // Past the two inline slots: into the map, after its own.
        a.push(header::SET_COOKIE, value("c=3"));
        a.push(name("ratelimit-limit"), value("10"));
        let fields: Vec<(String, String)> = a
            .clone()
            .into_fields()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        let want = [
            ("ratelimit-policy", "p"),
            ("ratelimit", "r"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("set-cookie", "c=3"),
            ("ratelimit-limit", "10"),
        ];
        assert_eq!(
            fields,
            want.map(|(n, v)| (n.to_string(), v.to_string())).to_vec()
        );
        assert_eq!(AddedFields::default().into_fields().count(), 0);
    }

    #[test]
    fn host_values_are_host_and_port_only() {
        for ok in [
            "example.com",
            "EXAMPLE.com.",
            "api.example.com:8443",
            "127.0.0.1",
            "127.0.0.1:8080",
            "[::1]",
            "[::1]:80",
            "[2001:db8::1]:443",
            "xn--bcher-kva.example",
            "my_host.internal",
            "localhost:",
            "a:65535",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "a/b",
            "evil.com@good.com",
            "good.com:80:80",
            "good.com:abc",
            "good.com:99999",
            "good.com:123456",
            "[::1",
            "[::1]x",
            "[not-ip]",
            "[fe80::1%25eth0]",
            "::1",
            "\u{e9}.example",
            "a%20b",
            "good.com;evil",
            "good.com\\evil",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        }
        assert!(!valid_host("a".repeat(256).as_bytes()));
        assert!(!valid_host(b"good\x00.com"));
    }
}

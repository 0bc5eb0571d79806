//! Authentication: who is calling.
//!
//! An [`Authenticator`] turns a request's credentials into a [`Principal`], or says there were
//! none, or that they were invalid. The layer runs it on routes that require a principal (and,
//! to learn who calls, on any route when one is configured) and hands the principal to the
//! handler as a request extension and an axum extractor.
//!
//! The implementations here:
//! - [`jwt::JwtAuthenticator`]: JSON Web Tokens from `Authorization: Bearer` or a cookie, with
//!   keys from an HMAC [`Secret`], PEM public keys, a JWKS document or a JWKS URL
//!   ([`jwks::Jwks`]), verified the RFC 8725 way;
//! - [`api_key::ApiKeyAuthenticator`]: `Authorization: ApiKey …` or `X-API-Key`, stored as
//!   SHA-256 hashes only;
//! - [`AnyOf`]: tries several in order (JWT, then API key);
//! - your own: implement [`Authenticator`].
//!
//! Failed attempts are counted per client address by [`FailedAuthTracker`].
//!
//! ```
//! use portcullis::auth::{Principal, AuthMethod};
//! let p = Principal::new("alice", ["user"], AuthMethod::Custom);
//! assert!(p.has_role("user"));
//! ```
//!
//! Plugging in a custom authenticator (here: a session store), next to JWT and API keys:
//!
//! ```
//! use std::sync::Arc;
//! use portcullis::auth::{AnyOf, AuthMethod, AuthOutcome, Authenticator, BoxFuture, Principal};
//! use portcullis::auth::api_key::{self, ApiKey, ApiKeyAuthenticator};
//! use portcullis::{Policy, Preset, SecurityLayer};
//!
//! struct Sessions;
//! impl Authenticator for Sessions {
//!     fn authenticate<'a>(&'a self, parts: &'a http::request::Parts) -> BoxFuture<'a, AuthOutcome> {
//!         Box::pin(async move {
//!             match parts.headers.get("x-session").map(|v| v.as_bytes()) {
//!                 None => AuthOutcome::NoCredentials,
//!                 Some(b"s3cr3t-session") => AuthOutcome::Authenticated(
//!                     Principal::new("carol", ["user"], AuthMethod::Custom),
//!                 ),
//!                 Some(_) => AuthOutcome::Invalid("unknown_session"),
//!             }
//!         })
//!     }
//! }
//!
//! let ci = ApiKey::new("ci", &api_key::hash_key("pk_example"), ["deploy"]).unwrap();
//! let auth = AnyOf::new()
//!     .or(Sessions)
//!     .or(ApiKeyAuthenticator::new([ci]).unwrap());
//! let layer = SecurityLayer::builder()
//!     .route("/api/user/**", Policy::preset(Preset::Authenticated))
//!     .authenticator(Arc::new(auth))
//!     .build()
//!     .unwrap();
//! ```

pub mod api_key;
pub mod brute_force;
mod chain;
pub mod jwks;
pub mod jwt;
mod secret;
mod strict_json;

pub use brute_force::{Blocked, FailedAuthTracker};
pub use chain::AnyOf;
pub use secret::Secret;

use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use http::request::Parts;

/// How a principal proved who it is.
///
/// ```
/// use portcullis::auth::api_key::{self, ApiKey, ApiKeyAuthenticator};
/// use portcullis::auth::AuthMethod;
/// let k = api_key::generate();
/// let auth = ApiKeyAuthenticator::new([ApiKey::new("ci", k.hash_line(), ["deploy"]).unwrap()]).unwrap();
/// assert_eq!(auth.verify(k.key()).unwrap().method, AuthMethod::ApiKey);
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMethod {
    /// A JSON Web Token.
    Jwt,
    /// An API key.
    ApiKey,
    /// A library user's own authenticator.
    Custom,
}

/// An authenticated caller.
///
/// ```
/// use portcullis::auth::{AuthMethod, Principal};
/// let p = Principal::new("alice", ["user", "admin"], AuthMethod::Custom);
/// assert_eq!(p.id, "alice");
/// assert_eq!(p.roles, ["user", "admin"]);
/// assert!(p.expires_at.is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The caller's id (the JWT `sub`, the API key id, ...).
    pub id: String,
    /// The caller's roles.
    pub roles: Vec<String>,
    /// How the caller authenticated.
    pub method: AuthMethod,
    /// When the credentials expire.
    pub expires_at: Option<SystemTime>,
}

impl Principal {
    /// A principal with an id and roles.
    ///
    /// ```
    /// use portcullis::auth::{AuthMethod, Principal};
    /// let p = Principal::new("svc-reports", ["reader"], AuthMethod::Custom);
    /// assert_eq!((p.id.as_str(), p.method), ("svc-reports", AuthMethod::Custom));
    /// ```
    pub fn new<I, R>(id: impl Into<String>, roles: I, method: AuthMethod) -> Self
    where
        I: IntoIterator<Item = R>,
        R: Into<String>,
    {
        Principal {
            id: id.into(),
            roles: roles.into_iter().map(Into::into).collect(),
            method,
            expires_at: None,
        }
    }

    /// True when the principal holds `role`.
    ///
    /// ```
    /// use portcullis::auth::{AuthMethod, Principal};
    /// let p = Principal::new("alice", ["user"], AuthMethod::Custom);
    /// assert!(p.has_role("user"));
    /// assert!(!p.has_role("admin"));
    /// ```
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Principal {
    type Rejection = axum::response::Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        use axum::response::IntoResponse;
        parts.extensions.get::<Principal>().cloned().ok_or_else(|| {
            // `of`: the id is in the `RequestContext` when the layer hands over one.
            let id = crate::request_id::RequestId::of(&parts.extensions)
                .map_or_else(String::new, |r| r.to_string());
            let res = crate::Rejection::unauthorized(false).into_response_with_id(&id);
            let (parts, body) = res.into_parts();
            (parts, body).into_response()
        })
    }
}

/// `Option<Principal>`: the caller when credentials were presented and accepted, `None` for
/// an anonymous one — for a route that serves both (axum 0.8 asks for this impl).
///
/// ```
/// # use axum::{Router, body::Body};
/// # use portcullis::{Principal, SecurityLayer};
/// # use portcullis::auth::api_key::{self, ApiKey, ApiKeyAuthenticator};
/// # use tower::{Layer, ServiceExt};
/// # use std::sync::Arc;
/// let key = api_key::generate();
/// let auth = ApiKeyAuthenticator::new([ApiKey::new("ci", key.hash_line(), ["deploy"])?])?;
/// let layer = SecurityLayer::bare().authenticator(Arc::new(auth)).build()?;
/// let app = layer.layer(Router::new().fallback(|who: Option<Principal>| async move {
///     who.map_or_else(|| "anonymous".to_string(), |p| p.id)
/// }));
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let read = |res: http::Response<Body>| async { axum::body::to_bytes(res.into_body(), 64).await.unwrap() };
/// let res = app.clone().oneshot(http::Request::get("/").body(Body::empty()).unwrap()).await.unwrap();
/// assert_eq!(read(res).await, "anonymous");
/// let req = http::Request::get("/").header("x-api-key", key.key()).body(Body::empty()).unwrap();
/// assert_eq!(read(app.oneshot(req).await.unwrap()).await, "ci");
/// # });
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for Principal {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<Principal>().cloned())
    }
}

/// What an authenticator concluded.
///
/// ```
/// use portcullis::auth::{AuthOutcome, Authenticator};
/// use portcullis::auth::api_key::{self, ApiKey, ApiKeyAuthenticator};
/// let auth = ApiKeyAuthenticator::new([ApiKey::new("ci", &api_key::hash_key("pk_test_only"), ["deploy"]).unwrap()]).unwrap();
/// let (parts, ()) = http::Request::get("/").header("x-api-key", "pk_wrong").body(()).unwrap().into_parts();
/// assert!(matches!(auth.authenticate_now(&parts), Some(AuthOutcome::Invalid("unknown_key"))));
/// ```
#[derive(Debug, Clone)]
pub enum AuthOutcome {
    /// Valid credentials.
    Authenticated(Principal),
    /// No credentials were presented.
    NoCredentials,
    /// Credentials were presented and refused (the reason goes to audit, not the client).
    Invalid(&'static str),
}

/// A boxed, sendable future.
///
/// ```
/// use portcullis::auth::BoxFuture;
/// fn answer<'a>(name: &'a str) -> BoxFuture<'a, usize> {
///     Box::pin(async move { name.len() })
/// }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// assert_eq!(answer("alice").await, 5);
/// # });
/// ```
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Turns request credentials into a principal.
///
/// ```
/// use portcullis::auth::{Authenticator, AuthOutcome, AuthMethod, Principal, BoxFuture};
/// struct Header;
/// impl Authenticator for Header {
///     fn authenticate<'a>(&'a self, parts: &'a http::request::Parts) -> BoxFuture<'a, AuthOutcome> {
///         Box::pin(async move {
///             match parts.headers.get("x-demo-user") {
///                 Some(v) => AuthOutcome::Authenticated(Principal::new(v.to_str().unwrap_or(""), ["user"], AuthMethod::Custom)),
///                 None => AuthOutcome::NoCredentials,
///             }
///         })
///     }
/// }
/// ```
pub trait Authenticator: Send + Sync + 'static {
    /// Inspects the request's credentials.
    fn authenticate<'a>(&'a self, parts: &'a Parts) -> BoxFuture<'a, AuthOutcome>;

    /// The outcome, when it is known without waiting (no credentials at all, a malformed
    /// header, a key checked in memory): the layer then skips the boxed future of
    /// [`Authenticator::authenticate`], which it would pay on every anonymous request. One
    /// that answers here must answer as `authenticate` would. Default: `None`.
    ///
    /// ```
    /// use portcullis::auth::{Authenticator, AuthOutcome, BoxFuture};
    /// struct Sessions;
    /// impl Authenticator for Sessions {
    ///     fn authenticate<'a>(&'a self, parts: &'a http::request::Parts) -> BoxFuture<'a, AuthOutcome> {
    ///         Box::pin(async move {
    ///             match parts.headers.get("x-session") {
    ///                 None => AuthOutcome::NoCredentials,
    ///                 Some(_) => AuthOutcome::Invalid("unknown_session"), // a store lookup here
    ///             }
    ///         })
    ///     }
    ///     // Anonymous requests need no future: the session store is asked only for a session.
    ///     fn authenticate_now(&self, parts: &http::request::Parts) -> Option<AuthOutcome> {
    ///         (!parts.headers.contains_key("x-session")).then_some(AuthOutcome::NoCredentials)
    ///     }
    /// }
    /// let (parts, ()) = http::Request::new(()).into_parts();
    /// assert!(matches!(Sessions.authenticate_now(&parts), Some(AuthOutcome::NoCredentials)));
    /// ```
    fn authenticate_now(&self, parts: &Parts) -> Option<AuthOutcome> {
        let _ = parts;
        None
    }
}

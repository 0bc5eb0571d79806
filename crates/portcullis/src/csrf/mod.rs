//! CSRF: the Fetch-Metadata / `Origin` check, plus a signed double-submit token.
//!
//! [`CsrfGuard`] fills step 11 of [`SecurityLayer`](crate::SecurityLayer). What it does on a
//! route depends on the route's [`CsrfMode`]:
//!
//! - [`CsrfMode::Origin`]: unsafe methods (anything but `GET`, `HEAD`, `OPTIONS`) pass the
//!   origin check of [`fetch_metadata`] — Go 1.25's `CrossOriginProtection` semantics, plus a
//!   [`Mode::Strict`] that refuses requests carrying neither `Sec-Fetch-Site` nor `Origin`.
//! - [`CsrfMode::OriginAndToken`]: the origin check, then the signed double-submit token of
//!   [`token`]: the token sent in the `X-CSRF-Token` header — or in a `csrf_token` form field
//!   of an `application/x-www-form-urlencoded` or `multipart/form-data` body, never in the
//!   query or the cookie alone — must equal the `__Host-csrf` cookie *and* carry a MAC over the
//!   caller's session under one of the configured secrets. Safe requests get the cookie when
//!   it is missing or not valid for the session. A form without the header is read (up to the
//!   route's body limit, or [`DEFAULT_FORM_LIMIT`]) only after its origin passed, then handed
//!   to the application whole; JSON and other bodies are never read: they need the header.
//!
//! The session is the authenticated principal's id, or else an anonymous session cookie
//! `__Host-csrf-session` (random 128 bits; `HttpOnly`, `Secure`, `SameSite=Lax`) issued with
//! the first token. The token cookie is `Secure; Path=/; SameSite=Strict` and **not**
//! `HttpOnly`: the page's script reads it to send the header (the seed's `HttpOnly` cookie made
//! its own helper send nothing). [`CsrfGuardBuilder::insecure_dev`] drops `Secure` and the
//! `__Host-` prefix (cookies `csrf` and `csrf-session`) for plain-HTTP development only: without
//! the prefix a sibling subdomain could plant both cookies.
//!
//! The guard answers two paths itself, on every route, after the earlier controls (methods,
//! authentication, rate limit): `GET /.well-known/portcullis/csrf` ([`TOKEN_PATH`]) with
//! `{"token": "…"}` and the cookies, and `GET /.well-known/portcullis/csrf.js`
//! ([`CLIENT_JS_PATH`]) with [`CLIENT_JS`] (`csrfFetch`, `portcullisCsrf.fillForms`), which
//! uses the token endpoint to recover once from a `csrf_token_invalid` refusal.
//!
//! Refusals are 403 with code `csrf_origin_mismatch` or `csrf_token_invalid`, audited as
//! `csrf_validation_failed`. Responses to unsafe methods carry `Vary: Sec-Fetch-Site, Origin`.
//!
//! ```
//! use std::sync::Arc;
//! use portcullis::csrf::{CsrfGuard, Mode, token::Secret};
//! use portcullis::policy::CsrfMode;
//! use portcullis::{Policy, Preset, SecurityLayer};
//!
//! let csrf = CsrfGuard::builder()
//!     .mode(Mode::Strict)
//!     .trusted_origins(["https://partner.example"])
//!     .bypass(["POST /api/webhooks/**"])
//!     .secrets([Secret::new(b"a-32-byte-secret-from-the-env!!!".to_vec()).unwrap()])
//!     .build()
//!     .unwrap();
//! let layer = SecurityLayer::builder()
//!     .default_policy(Policy::preset(Preset::Public).csrf(CsrfMode::OriginAndToken))
//!     .csrf_guard(Arc::new(csrf))
//!     .build()
//!     .unwrap();
//! ```

pub mod fetch_metadata;
pub mod token;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Method, Response, StatusCode};

use crate::audit::AuditAction;
use crate::auth::BoxFuture;
use crate::error::{Control, Rejection};
use crate::layer::{BuildError, Exchange, Guard};
use crate::policy::CsrfMode;
use fetch_metadata::{CrossOrigin, OriginCheck, is_safe, request_host};
use token::{Secret, SessionBinding, TokenSigner};

/// The JavaScript helper: `csrfFetch(url, options)` and `portcullisCsrf.fillForms(root)`.
/// The guard serves it at [`CLIENT_JS_PATH`]; load it with `<script src="…" nonce="…">`: it
/// needs no inline script and no `eval`.
///
/// ```
/// use portcullis::csrf::CLIENT_JS;
/// assert!(CLIENT_JS.contains("function csrfFetch"));
/// assert!(CLIENT_JS.contains("function fillForms"));
/// ```
pub const CLIENT_JS: &str = include_str!("client.js");

/// Where the guard serves [`CLIENT_JS`].
///
/// ```
/// use portcullis::csrf::CLIENT_JS_PATH;
/// use portcullis::Nonce;
/// let nonce = Nonce::generate();
/// let tag = format!(r#"<script src="{CLIENT_JS_PATH}" nonce="{}"></script>"#, nonce.as_str());
/// assert!(tag.contains("/.well-known/portcullis/csrf.js"));
/// ```
pub const CLIENT_JS_PATH: &str = "/.well-known/portcullis/csrf.js";

/// The token endpoint the guard answers itself.
///
/// ```
/// use portcullis::csrf::{CLIENT_JS_PATH, TOKEN_PATH};
/// assert_eq!(TOKEN_PATH, "/.well-known/portcullis/csrf");
/// assert_ne!(TOKEN_PATH, CLIENT_JS_PATH);
/// ```
pub const TOKEN_PATH: &str = "/.well-known/portcullis/csrf";

/// The request header that carries the token.
///
/// ```
/// use portcullis::csrf::TOKEN_HEADER;
/// let req = http::Request::post("/api/notes")
///     .header(TOKEN_HEADER, "token-from-the-cookie")
///     .body(())
///     .unwrap();
/// assert_eq!(req.headers()["X-CSRF-Token"], "token-from-the-cookie");
/// ```
pub const TOKEN_HEADER: &str = "x-csrf-token";

/// How much of a form body is read for its token on routes without a body limit.
///
/// ```
/// use portcullis::csrf::DEFAULT_FORM_LIMIT;
/// assert_eq!(DEFAULT_FORM_LIMIT, 1024 * 1024);
/// ```
pub const DEFAULT_FORM_LIMIT: u64 = 1024 * 1024;

/// What to do with unsafe requests that carry neither `Sec-Fetch-Site` nor `Origin`.
///
/// ```
/// use portcullis::csrf::{CsrfGuard, Mode};
/// assert_eq!(Mode::default(), Mode::Lenient);
/// let guard = CsrfGuard::builder().mode(Mode::Strict).build().unwrap();
/// assert_eq!(guard.origin_check().mode(), Mode::Strict);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// Allow them: they come from non-browser clients (curl, servers) or browsers older than
    /// 2023 — Go's behaviour.
    #[default]
    Lenient,
    /// Refuse them: for browser-only APIs.
    Strict,
}

/// Cookie names and the `Secure` attribute.
#[derive(Debug, Clone, Copy)]
struct Cookies {
    token: &'static str,
    session: &'static str,
    secure: bool,
}

impl Cookies {
    const SECURE: Cookies = Cookies {
        token: "__Host-csrf",
        session: "__Host-csrf-session",
        secure: true,
    };
    const DEV: Cookies = Cookies {
        token: "csrf",
        session: "csrf-session",
        secure: false,
    };

    fn token_cookie(&self, token: &str) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{}={token}; Path=/{secure}; SameSite=Strict",
            self.token
        ))
        .expect("a base64url token is a valid header value")
    }

    fn session_cookie(&self, id: &str) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        HeaderValue::from_str(&format!(
            "{}={id}; Path=/{secure}; HttpOnly; SameSite=Lax",
            self.session
        ))
        .expect("a base64url session id is a valid header value")
    }
}

/// Builds a [`CsrfGuard`].
///
/// ```
/// use portcullis::csrf::{CsrfGuard, CsrfGuardBuilder, Mode};
/// let builder: CsrfGuardBuilder = CsrfGuard::builder().mode(Mode::Lenient).insecure_dev(true);
/// let guard = builder.build().unwrap();
/// assert_eq!(guard.token_cookie_name(), "csrf");
/// ```
#[must_use]
#[derive(Debug, Default)]
pub struct CsrfGuardBuilder {
    mode: Mode,
    trusted: Vec<String>,
    public: Vec<String>,
    bypass: Vec<String>,
    secrets: Vec<Secret>,
    insecure_dev: bool,
}

impl CsrfGuardBuilder {
    /// Lenient (default) or strict handling of requests with neither header.
    ///
    /// ```
    /// use portcullis::csrf::{CsrfGuard, Mode};
    /// let guard = CsrfGuard::builder().mode(Mode::Strict).build().unwrap();
    /// assert_eq!(guard.origin_check().mode(), Mode::Strict);
    /// ```
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Origins allowed to send cross-origin unsafe requests (`https://partner.example`),
    /// compared as exact strings with the `Origin` header.
    ///
    /// ```
    /// use portcullis::csrf::CsrfGuard;
    /// let guard = CsrfGuard::builder()
    ///     .trusted_origins(["https://partner.example"])
    ///     .build()
    ///     .unwrap();
    /// assert!(guard.origin_check().is_trusted("https://partner.example"));
    /// assert!(!guard.origin_check().is_trusted("https://partner.example:8443"));
    /// ```
    pub fn trusted_origins<I, S>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.trusted.extend(origins.into_iter().map(Into::into));
        self
    }

    /// The site's own origins (`https://app.example`), accepted as same-origin when the
    /// `Host` seen here is not the one the browser used (a proxy rewrites it).
    ///
    /// ```
    /// use http::{HeaderMap, Method};
    /// use portcullis::CanonicalPath;
    /// use portcullis::csrf::CsrfGuard;
    /// let guard = CsrfGuard::builder().public_origins(["https://app.example"]).build().unwrap();
    /// let mut h = HeaderMap::new();
    /// h.insert("origin", "https://app.example".parse().unwrap());
    /// let path = CanonicalPath::parse("/api/notes").unwrap();
    /// // The proxy rewrote `Host` to the backend's name; the origin is still the site's own.
    /// assert_eq!(guard.origin_check().check(&Method::POST, &h, Some("backend:8080"), &path), Ok(()));
    /// ```
    pub fn public_origins<I, S>(mut self, origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.public.extend(origins.into_iter().map(Into::into));
        self
    }

    /// Paths exempt from CSRF checks (`/api/webhooks/**`, `POST /hooks/*`): route-table globs,
    /// matched on the canonical path, narrowly on trailing slashes (see [`fetch_metadata`]).
    ///
    /// ```
    /// use http::Method;
    /// use portcullis::CanonicalPath;
    /// use portcullis::csrf::CsrfGuard;
    /// let guard = CsrfGuard::builder().bypass(["POST /api/webhooks/**"]).build().unwrap();
    /// let hook = CanonicalPath::parse("/api/webhooks/github").unwrap();
    /// assert!(guard.origin_check().is_bypassed(&Method::POST, &hook));
    /// assert!(!guard.origin_check().is_bypassed(&Method::PUT, &hook));
    /// ```
    pub fn bypass<I, S>(mut self, patterns: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.bypass.extend(patterns.into_iter().map(Into::into));
        self
    }

    /// The token secrets: the first signs, all verify (list the new one first to rotate).
    /// Without any, a random secret is drawn at build: tokens then die with the process and
    /// are not shared between instances.
    ///
    /// ```
    /// use portcullis::csrf::CsrfGuard;
    /// use portcullis::csrf::token::{Secret, SessionBinding, TokenSigner};
    /// let new = Secret::new(vec![1u8; 32])?;
    /// let old = Secret::new(vec![2u8; 32])?;
    /// let guard = CsrfGuard::builder().secrets([new, old.clone()]).build()?;
    /// // A token signed with the old secret still verifies during the rotation.
    /// let old_token = TokenSigner::new(vec![old])?.issue(SessionBinding::Principal("alice"));
    /// assert!(guard.signer().verify(old_token.as_bytes(), SessionBinding::Principal("alice")));
    /// # Ok::<(), portcullis::layer::BuildError>(())
    /// ```
    pub fn secrets(mut self, secrets: impl IntoIterator<Item = Secret>) -> Self {
        self.secrets.extend(secrets);
        self
    }

    /// Plain-HTTP development: cookies without `Secure` and without the `__Host-` prefix
    /// (`csrf`, `csrf-session`). Never in production.
    ///
    /// ```
    /// use portcullis::csrf::CsrfGuard;
    /// let dev = CsrfGuard::builder().insecure_dev(true).build().unwrap();
    /// assert_eq!(dev.token_cookie_name(), "csrf");
    /// assert_eq!(dev.session_cookie_name(), "csrf-session");
    /// ```
    pub fn insecure_dev(mut self, on: bool) -> Self {
        self.insecure_dev = on;
        self
    }

    /// Validates the settings and builds the guard.
    ///
    /// ```
    /// use portcullis::csrf::CsrfGuard;
    /// assert!(CsrfGuard::builder().build().is_ok());
    /// // A trusted origin must be `scheme://host[:port]`, without a path.
    /// assert!(CsrfGuard::builder().trusted_origins(["https://partner.example/"]).build().is_err());
    /// assert!(CsrfGuard::builder().trusted_origins(["partner.example"]).build().is_err());
    /// ```
    pub fn build(self) -> Result<CsrfGuard, BuildError> {
        let origin = OriginCheck::new(self.mode, &self.trusted, &self.public, &self.bypass)?;
        let secrets = if self.secrets.is_empty() {
            vec![Secret::generate()]
        } else {
            self.secrets
        };
        Ok(CsrfGuard {
            origin,
            signer: TokenSigner::new(secrets)?,
            cookies: if self.insecure_dev {
                Cookies::DEV
            } else {
                Cookies::SECURE
            },
        })
    }
}

/// The CSRF guard for [`SecurityLayer`](crate::SecurityLayer)'s step 11.
///
/// ```
/// use portcullis::csrf::{CsrfGuard, Mode};
/// let guard = CsrfGuard::builder().mode(Mode::Strict).build().unwrap();
/// assert_eq!(guard.token_cookie_name(), "__Host-csrf");
/// assert_eq!(guard.origin_check().mode(), Mode::Strict);
/// ```
#[derive(Debug)]
pub struct CsrfGuard {
    origin: OriginCheck,
    signer: TokenSigner,
    cookies: Cookies,
}

/// The session a token is bound to, owned so the exchange can be borrowed mutably after.
enum Session {
    Principal(String),
    Anonymous(String),
}

impl Session {
    fn binding(&self) -> SessionBinding<'_> {
        match self {
            Session::Principal(id) => SessionBinding::Principal(id),
            Session::Anonymous(id) => SessionBinding::Anonymous(id),
        }
    }
}

impl CsrfGuard {
    /// A builder with the defaults: lenient, no trusted origins or bypasses, a random secret,
    /// `__Host-` cookies.
    ///
    /// ```
    /// use portcullis::csrf::{CsrfGuard, Mode};
    /// let guard = CsrfGuard::builder().build().unwrap();
    /// assert_eq!(guard.origin_check().mode(), Mode::Lenient);
    /// assert_eq!(guard.session_cookie_name(), "__Host-csrf-session");
    /// ```
    pub fn builder() -> CsrfGuardBuilder {
        CsrfGuardBuilder::default()
    }

    /// The origin check.
    ///
    /// ```
    /// use http::{HeaderMap, Method};
    /// use portcullis::CanonicalPath;
    /// use portcullis::csrf::CsrfGuard;
    /// use portcullis::csrf::fetch_metadata::CrossOrigin;
    /// let guard = CsrfGuard::builder().build().unwrap();
    /// let mut h = HeaderMap::new();
    /// h.insert("sec-fetch-site", "cross-site".parse().unwrap());
    /// let path = CanonicalPath::parse("/api/notes").unwrap();
    /// let verdict = guard.origin_check().check(&Method::POST, &h, Some("app.example"), &path);
    /// assert_eq!(verdict, Err(CrossOrigin::SecFetchSite));
    /// ```
    pub fn origin_check(&self) -> &OriginCheck {
        &self.origin
    }

    /// The token signer.
    ///
    /// ```
    /// use portcullis::csrf::CsrfGuard;
    /// use portcullis::csrf::token::SessionBinding;
    /// let guard = CsrfGuard::builder().build().unwrap();
    /// let token = guard.signer().issue(SessionBinding::Anonymous("session-id"));
    /// assert!(guard.signer().verify(token.as_bytes(), SessionBinding::Anonymous("session-id")));
    /// ```
    pub fn signer(&self) -> &TokenSigner {
        &self.signer
    }

    /// The token cookie's name (`__Host-csrf`, or `csrf` in insecure development mode).
    ///
    /// ```
    /// use portcullis::csrf::CsrfGuard;
    /// assert_eq!(CsrfGuard::builder().build().unwrap().token_cookie_name(), "__Host-csrf");
    /// ```
    pub fn token_cookie_name(&self) -> &'static str {
        self.cookies.token
    }

    /// The anonymous session cookie's name (`__Host-csrf-session` or `csrf-session`).
    ///
    /// ```
    /// use portcullis::csrf::CsrfGuard;
    /// let guard = CsrfGuard::builder().build().unwrap();
    /// assert_eq!(guard.session_cookie_name(), "__Host-csrf-session");
    /// ```
    pub fn session_cookie_name(&self) -> &'static str {
        self.cookies.session
    }

    /// Decides a request; `form` is the body when the layer read it for a form token.
    fn decide(
        &self,
        parts: &Parts,
        x: &mut Exchange,
        form: Option<&[u8]>,
    ) -> Result<(), Rejection> {
        let mode = x.policy().csrf_mode();
        if mode == CsrfMode::Off {
            return Ok(());
        }
        if is_safe(&parts.method) {
            // A WebSocket handshake is a GET that opens a channel carrying the caller's
            // cookies: the origin check applies to it as to an unsafe method.
            if is_websocket_handshake(parts) {
                self.check_handshake_origin(parts, x)?;
            }
            if mode == CsrfMode::OriginAndToken {
                self.issue(parts, x);
            }
            return Ok(());
        }
        // The answer to an unsafe request depends on these headers, refusal or not.
        x.response_headers_mut().append(
            header::VARY,
            HeaderValue::from_static("Sec-Fetch-Site, Origin"),
        );
        if self.bypassed(&parts.method, x) {
            return Ok(());
        }
        self.check_origin(parts, x).map_err(origin_rejection)?;
        if mode == CsrfMode::OriginAndToken {
            self.verify_token(parts, x, form)?;
        }
        Ok(())
    }

    /// The origin check of a WebSocket handshake (cross-site WebSocket hijacking).
    #[cold]
    #[inline(never)]
    fn check_handshake_origin(&self, parts: &Parts, x: &mut Exchange) -> Result<(), Rejection> {
        x.response_headers_mut().append(
            header::VARY,
            HeaderValue::from_static("Sec-Fetch-Site, Origin"),
        );
        self.check_origin_of(parts, x, OriginCheck::check_any_method)
            .map_err(origin_rejection)
    }

    fn bypassed(&self, method: &Method, x: &Exchange) -> bool {
        x.path().is_some_and(|p| self.origin.is_bypassed(method, p))
    }

    fn check_origin(&self, parts: &Parts, x: &Exchange) -> Result<(), CrossOrigin> {
        self.check_origin_of(parts, x, OriginCheck::check)
    }

    /// Runs `check` (the origin check for unsafe methods, or for any) on the request, with
    /// its canonical path (`/` when the layer gave none) for the bypass patterns.
    fn check_origin_of(
        &self,
        parts: &Parts,
        x: &Exchange,
        check: OriginCheckFn,
    ) -> Result<(), CrossOrigin> {
        let root;
        let path = match x.path() {
            Some(p) => p,
            None => {
                root = crate::CanonicalPath::parse("/").expect("/ is canonical");
                &root
            }
        };
        check(
            &self.origin,
            &parts.method,
            &parts.headers,
            request_host(parts),
            path,
        )
    }

    /// The caller's session: the principal, else a well-formed anonymous session cookie.
    fn session(&self, parts: &Parts, x: &Exchange) -> Option<Session> {
        if let Some(p) = x.principal() {
            return Some(Session::Principal(p.id.clone()));
        }
        cookie(&parts.headers, self.cookies.session)
            .filter(|v| is_session_id(v))
            .map(|v| Session::Anonymous(v.to_string()))
    }

    /// The session, starting an anonymous one (its cookie added to the response) if needed.
    fn session_or_start(&self, parts: &Parts, x: &mut Exchange) -> Session {
        if let Some(s) = self.session(parts, x) {
            return s;
        }
        let id = base64_url(&crate::random::bytes::<16>());
        let v = self.cookies.session_cookie(&id);
        x.response_headers_mut().append(header::SET_COOKIE, v);
        Session::Anonymous(id)
    }

    /// Returns the cookie's token when it is valid for the session; otherwise issues a fresh
    /// one and sets the cookie.
    fn issue(&self, parts: &Parts, x: &mut Exchange) -> String {
        let session = self.session_or_start(parts, x);
        if let Some(t) = cookie(&parts.headers, self.cookies.token)
            && self.signer.verify(t.as_bytes(), session.binding())
        {
            return t.to_string();
        }
        let t = self.signer.issue(session.binding());
        let v = self.cookies.token_cookie(&t);
        x.response_headers_mut().append(header::SET_COOKIE, v);
        t
    }

    fn verify_token(
        &self,
        parts: &Parts,
        x: &Exchange,
        form: Option<&[u8]>,
    ) -> Result<(), Rejection> {
        let mut sent = parts.headers.get_all(TOKEN_HEADER).iter();
        let from_form;
        let sent: &[u8] = match (sent.next(), sent.next()) {
            (Some(v), None) => v.as_bytes(),
            (Some(_), Some(_)) => return Err(token_rejection("CSRF token sent twice")),
            (None, _) => {
                let ct = parts
                    .headers
                    .get(header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok());
                from_form = match (ct, form) {
                    (Some(ct), Some(body)) => token::form_token(ct, body),
                    _ => None,
                };
                match &from_form {
                    Some(t) => t.as_bytes(),
                    None => return Err(token_rejection("CSRF token missing")),
                }
            }
        };
        let invalid = || token_rejection("CSRF token invalid");
        let Some(in_cookie) = cookie(&parts.headers, self.cookies.token) else {
            return Err(invalid());
        };
        let Some(session) = self.session(parts, x) else {
            return Err(invalid());
        };
        // Both always run: the answer's timing says nothing about which one failed.
        let same = token::tokens_equal(sent, in_cookie.as_bytes());
        let signed = self.signer.verify(sent, session.binding());
        if same & signed {
            Ok(())
        } else {
            Err(invalid())
        }
    }

    /// The token endpoint: `{"token": "…"}` with the cookies, never cached. The layer calls it
    /// through [`Guard::answer`] for `GET` [`TOKEN_PATH`], after every earlier control.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use portcullis::csrf::{CsrfGuard, TOKEN_PATH};
    /// use portcullis::{Policy, SecurityLayer, policy::CsrfMode};
    /// use tower::{Layer, ServiceExt};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let layer = SecurityLayer::builder()
    ///     .default_policy(Policy::open().csrf(CsrfMode::OriginAndToken))
    ///     .csrf_guard(Arc::new(CsrfGuard::builder().build().unwrap()))
    ///     .build()
    ///     .unwrap();
    /// let app = layer.layer(axum::Router::new());
    /// let req = http::Request::get(TOKEN_PATH).body(axum::body::Body::empty()).unwrap();
    /// let res = app.oneshot(req).await.unwrap();
    /// assert_eq!(res.headers()["cache-control"], "no-store");
    /// let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
    /// assert!(body.starts_with(br#"{"token":""#));
    /// # });
    /// ```
    pub fn token_response(&self, parts: &Parts, x: &mut Exchange) -> Response<Bytes> {
        let token = self.issue(parts, x);
        let body = serde_json::json!({ "token": token }).to_string();
        let mut res = Response::new(Bytes::from(body));
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        *res.status_mut() = StatusCode::OK;
        res
    }
}

impl Guard for CsrfGuard {
    fn check<'a>(
        &'a self,
        parts: &'a Parts,
        exchange: &'a mut Exchange,
    ) -> BoxFuture<'a, Result<(), Rejection>> {
        Box::pin(std::future::ready(self.decide(parts, exchange, None)))
    }

    fn check_now(&self, parts: &Parts, exchange: &mut Exchange) -> Option<Result<(), Rejection>> {
        Some(self.decide(parts, exchange, None))
    }

    /// Serves the token endpoint (`GET` [`TOKEN_PATH`]) and the helper (`GET`/`HEAD`
    /// [`CLIENT_JS_PATH`]), so neither the application nor the gateway has to.
    fn answer(&self, parts: &Parts, exchange: &mut Exchange) -> Option<Response<Bytes>> {
        let path = exchange.path()?.as_str();
        if path == TOKEN_PATH && parts.method == Method::GET {
            return Some(self.token_response(parts, exchange));
        }
        if path == CLIENT_JS_PATH && matches!(parts.method, Method::GET | Method::HEAD) {
            return Some(client_js_response());
        }
        None
    }

    /// A form body is read only when it alone can carry the token: a token-mode route, an
    /// unsafe method, no `X-CSRF-Token` header, a form content type, no bypass — and an origin
    /// that passed, so a cross-site form is refused before a byte of it is read.
    fn body_needed(&self, parts: &Parts, exchange: &Exchange) -> Option<u64> {
        let wanted = exchange.policy().csrf_mode() == CsrfMode::OriginAndToken
            && !is_safe(&parts.method)
            && !parts.headers.contains_key(TOKEN_HEADER)
            && single_form_content_type(&parts.headers)
            && !self.bypassed(&parts.method, exchange)
            && self.check_origin(parts, exchange).is_ok();
        wanted.then(|| {
            exchange
                .policy()
                .max_body_bytes()
                .unwrap_or(DEFAULT_FORM_LIMIT)
        })
    }

    fn check_body<'a>(
        &'a self,
        parts: &'a Parts,
        exchange: &'a mut Exchange,
        body: &'a Bytes,
    ) -> BoxFuture<'a, Result<(), Rejection>> {
        Box::pin(std::future::ready(self.decide(parts, exchange, Some(body))))
    }
}

/// [`CLIENT_JS`] as served at [`CLIENT_JS_PATH`]: cacheable for an hour (it changes only
/// with a release).
///
/// ```
/// use portcullis::csrf::{CLIENT_JS, client_js_response};
/// let res = client_js_response();
/// assert_eq!(res.headers()["content-type"], "text/javascript; charset=utf-8");
/// assert_eq!(res.headers()["cache-control"], "public, max-age=3600");
/// assert_eq!(res.body().as_ref(), CLIENT_JS.as_bytes());
/// ```
pub fn client_js_response() -> Response<Bytes> {
    let mut res = Response::new(Bytes::from_static(CLIENT_JS.as_bytes()));
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    res
}

fn single_form_content_type(headers: &HeaderMap) -> bool {
    let mut all = headers.get_all(header::CONTENT_TYPE).iter();
    match (all.next(), all.next()) {
        (Some(v), None) => v.to_str().is_ok_and(token::is_form),
        _ => false,
    }
}

/// [`OriginCheck::check`] or [`OriginCheck::check_any_method`].
type OriginCheckFn = fn(
    &OriginCheck,
    &Method,
    &HeaderMap,
    Option<&str>,
    &crate::CanonicalPath,
) -> Result<(), CrossOrigin>;

/// A WebSocket opening handshake (RFC 6455 §4.1): `Upgrade` naming `websocket`.
#[inline]
fn is_websocket_handshake(parts: &Parts) -> bool {
    parts.headers.get_all(header::UPGRADE).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"websocket"))
    })
}

fn origin_rejection(why: CrossOrigin) -> Rejection {
    Rejection::new(
        StatusCode::FORBIDDEN,
        "csrf_origin_mismatch",
        why.reason(),
        AuditAction::CsrfValidationFailed,
        Control::Csrf,
    )
}

fn token_rejection(reason: &'static str) -> Rejection {
    Rejection::new(
        StatusCode::FORBIDDEN,
        "csrf_token_invalid",
        reason,
        AuditAction::CsrfValidationFailed,
        Control::Csrf,
    )
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An anonymous session id as issued: 16 random bytes in base64url (22 characters).
fn is_session_id(v: &str) -> bool {
    v.len() == 22
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The first cookie named `name` in the request's `Cookie` headers.
///
/// ```
/// use http::HeaderMap;
/// use portcullis::csrf::cookie;
/// let mut h = HeaderMap::new();
/// h.append("cookie", "theme=dark; __Host-csrf=abc".parse().unwrap());
/// assert_eq!(cookie(&h, "__Host-csrf"), Some("abc"));
/// assert_eq!(cookie(&h, "session"), None);
/// ```
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k.trim() == name).then(|| {
                let v = v.trim();
                v.strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .unwrap_or(v)
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_across_headers() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "a=1; __Host-csrf=tok".parse().unwrap());
        h.append(header::COOKIE, "csrf=dev".parse().unwrap());
        assert_eq!(cookie(&h, "__Host-csrf"), Some("tok"));
        assert_eq!(cookie(&h, "csrf"), Some("dev"));
        assert_eq!(cookie(&h, "a"), Some("1"));
        assert_eq!(cookie(&h, "b"), None);
    }

    #[test]
    fn cookie_attributes_are_exact() {
        assert_eq!(
            Cookies::SECURE.token_cookie("T"),
            "__Host-csrf=T; Path=/; Secure; SameSite=Strict"
        );
        assert_eq!(
            Cookies::SECURE.session_cookie("S"),
            "__Host-csrf-session=S; Path=/; Secure; HttpOnly; SameSite=Lax"
        );
        assert_eq!(
            Cookies::DEV.token_cookie("T"),
            "csrf=T; Path=/; SameSite=Strict"
        );
    }
}

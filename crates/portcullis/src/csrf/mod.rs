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
pub const CLIENT_JS: &str = include_str!("client.js");

/// Where the guard serves [`CLIENT_JS`].
pub const CLIENT_JS_PATH: &str = "/.well-known/portcullis/csrf.js";

/// The token endpoint the guard answers itself.
pub const TOKEN_PATH: &str = "/.well-known/portcullis/csrf";

/// The request header that carries the token.
pub const TOKEN_HEADER: &str = "x-csrf-token";

/// How much of a form body is read for its token on routes without a body limit.
pub const DEFAULT_FORM_LIMIT: u64 = 1024 * 1024;

/// What to do with unsafe requests that carry neither `Sec-Fetch-Site` nor `Origin`.
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
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Origins allowed to send cross-origin unsafe requests (`https://partner.example`),
    /// compared as exact strings with the `Origin` header.
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
    pub fn secrets(mut self, secrets: impl IntoIterator<Item = Secret>) -> Self {
        self.secrets.extend(secrets);
        self
    }

    /// Plain-HTTP development: cookies without `Secure` and without the `__Host-` prefix
    /// (`csrf`, `csrf-session`). Never in production.
    pub fn insecure_dev(mut self, on: bool) -> Self {
        self.insecure_dev = on;
        self
    }

    /// Validates the settings and builds the guard.
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
    pub fn builder() -> CsrfGuardBuilder {
        CsrfGuardBuilder::default()
    }

    /// The origin check.
    pub fn origin_check(&self) -> &OriginCheck {
        &self.origin
    }

    /// The token signer.
    pub fn signer(&self) -> &TokenSigner {
        &self.signer
    }

    /// The token cookie's name (`__Host-csrf`, or `csrf` in insecure development mode).
    pub fn token_cookie_name(&self) -> &'static str {
        self.cookies.token
    }

    /// The anonymous session cookie's name (`__Host-csrf-session` or `csrf-session`).
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

    fn bypassed(&self, method: &Method, x: &Exchange) -> bool {
        x.path().is_some_and(|p| self.origin.is_bypassed(method, p))
    }

    fn check_origin(&self, parts: &Parts, x: &Exchange) -> Result<(), CrossOrigin> {
        let root;
        let path = match x.path() {
            Some(p) => p,
            None => {
                root = crate::CanonicalPath::parse("/").expect("/ is canonical");
                &root
            }
        };
        self.origin
            .check(&parts.method, &parts.headers, request_host(parts), path)
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

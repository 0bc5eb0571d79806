//! CORS with an exact-origin allowlist (step 6 answers preflights, step 14 decorates responses).
//!
//! What it does:
//! - **Origins** are listed exactly, as `scheme://host[:port]`. Each is checked and normalised
//!   when configured: scheme and host lower-cased, the default port dropped
//!   (`https://a.com:443` is `https://a.com`), IP literals written the way browsers write
//!   them. A path (even a lone `/`), query, fragment, userinfo, a wildcard
//!   (`https://*.example.com`), `*` and `null` are refused with a [`CorsError`] naming the
//!   value. A request's `Origin` matches when it equals a listed origin once its scheme and host
//!   are lower-cased — nothing else: no prefix, suffix or pattern, so
//!   `https://app.example.com.evil.com` never matches `https://app.example.com`. The header
//!   sent back is the configured value, never the request's bytes.
//! - **Any origin** ([`Cors::allow_any_origin`]) sends `Access-Control-Allow-Origin: *` and
//!   never `Access-Control-Allow-Credentials`.
//! - **Actual requests** ([`Cors::apply`]): every response gets `Vary: Origin` (merged into an
//!   existing `Vary`, never duplicated). A listed origin gets `Access-Control-Allow-Origin`,
//!   `Access-Control-Allow-Credentials: true` when enabled and `Access-Control-Expose-Headers`
//!   when configured; any other origin gets none of them. The layer's own JSON errors are
//!   decorated too, so a browser can read why it was refused. Once CORS is configured these
//!   headers belong to this allowlist: the same headers set by the application are removed, so
//!   an upstream that reflects every origin cannot undo it.
//! - **Preflights** ([`Cors::is_preflight`]: `OPTIONS` with `Origin` and
//!   `Access-Control-Request-Method`) are answered by the layer before authentication
//!   ([`Cors::preflight`]): `204` when the origin is listed, the requested method is allowed
//!   both by the CORS method list and by the route, and every requested header is allowed;
//!   otherwise `403` with code `cors_preflight_denied`, audited as a security event. The method
//!   list defaults to the route's own methods (one source of truth: the route table), or
//!   `GET, HEAD, POST` when the route allows any method. The CORS-safelisted request headers
//!   `Accept`, `Accept-Language` and `Content-Language` are always allowed; `Content-Type` is
//!   not, because a browser only asks about it for non-form types such as JSON.
//!
//! Why not tower-http's `CorsLayer`: it runs as a separate layer, so it could not read the
//! route's method list, would not decorate the JSON errors this layer produces, and matches
//! configured origins byte for byte without checking them — `https://a.com/` silently never
//! matches. The header semantics are the same.
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use portcullis::{SecurityLayer, cors::Cors};
//!
//! let cors = Cors::new()
//!     .allow_origins(["https://app.example.com", "https://admin.example.com:8443"])?
//!     .allow_credentials(true)
//!     .expose_headers(["x-request-id"])?
//!     .max_age(Duration::from_secs(300));
//! cors.validate()?;
//! let layer = SecurityLayer::builder().cors(Some(cors)).build().expect("valid layer");
//! let app: Router = Router::new()
//!     .route("/api/data", get(|| async { "data" }))
//!     .layer(layer);
//! # Ok::<(), portcullis::cors::CorsError>(())
//! ```

use std::cmp::Ordering;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

use crate::audit::AuditAction;
use crate::error::{Control, Rejection};
use crate::methods::MethodSet;

/// Request headers allowed when [`Cors::allow_headers`] is not called.
///
/// ```
/// use portcullis::cors::DEFAULT_ALLOWED_HEADERS;
/// assert!(DEFAULT_ALLOWED_HEADERS.contains(&"x-csrf-token"));
/// ```
pub const DEFAULT_ALLOWED_HEADERS: [&str; 4] = [
    "content-type",
    "authorization",
    "x-csrf-token",
    "x-requested-with",
];

/// How long a browser may cache a preflight answer when [`Cors::max_age`] is not called.
///
/// ```
/// use portcullis::cors::DEFAULT_MAX_AGE;
/// assert_eq!(DEFAULT_MAX_AGE.as_secs(), 600);
/// ```
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(600);

/// Request headers a browser may ask about that are always allowed: CORS-safelisted names that
/// only appear in a preflight when their value is unusual. They are harmless to accept.
const SAFELISTED_HEADERS: [&str; 3] = ["accept", "accept-language", "content-language"];

/// The preflight methods of a route that allows any method and no CORS method list is set.
const ANY_ROUTE_METHODS: [Method; 3] = [Method::GET, Method::HEAD, Method::POST];
const ANY_ROUTE_METHODS_VALUE: &str = "GET, HEAD, POST";

const PREFLIGHT_VARY: &str =
    "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";

/// Why a CORS setting was refused; the message names the bad value.
///
/// ```
/// use portcullis::cors::Cors;
/// let err = Cors::new().allow_origin("https://*.example.com").unwrap_err();
/// assert!(err.to_string().contains("https://*.example.com"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsError(pub String);

impl std::fmt::Display for CorsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CorsError {}

/// CORS settings: which origins may read responses, with which methods and headers.
///
/// A consuming builder; the header values are computed as it goes, so answering a request
/// only compares and copies. See the [module docs](self) for the semantics.
///
/// ```
/// use portcullis::cors::Cors;
/// let cors = Cors::new().allow_origin("HTTPS://App.Example.com:443")?;
/// assert!(cors.allows_origin("https://app.example.com"));
/// assert!(!cors.allows_origin("https://app.example.com.evil.com"));
/// # Ok::<(), portcullis::cors::CorsError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Cors {
    /// Normalised (lower-case) origins, sorted and without duplicates, ready to send.
    origins: Vec<HeaderValue>,
    any_origin: bool,
    /// `None`: the route's methods.
    methods: Option<Vec<Method>>,
    methods_value: Option<HeaderValue>,
    headers: Vec<HeaderName>,
    headers_value: Option<HeaderValue>,
    expose_value: Option<HeaderValue>,
    credentials: bool,
    max_age_value: HeaderValue,
}

impl Default for Cors {
    fn default() -> Self {
        Cors::new()
    }
}

/// Which rule let an origin in.
enum Allowed<'a> {
    Listed(&'a HeaderValue),
    Any,
}

impl Cors {
    /// No origin allowed yet; default headers, methods and max age.
    ///
    /// ```
    /// use portcullis::cors::Cors;
    /// let cors = Cors::new();
    /// assert!(!cors.allows_origin("https://app.example.com"));
    /// ```
    pub fn new() -> Self {
        let headers: Vec<HeaderName> = DEFAULT_ALLOWED_HEADERS
            .iter()
            .map(|h| HeaderName::from_static(h))
            .collect();
        Cors {
            origins: Vec::new(),
            any_origin: false,
            methods: None,
            methods_value: None,
            headers_value: join(headers.iter().map(HeaderName::as_str)),
            headers,
            expose_value: None,
            credentials: false,
            max_age_value: HeaderValue::from(DEFAULT_MAX_AGE.as_secs()),
        }
    }

    /// Allows one exact origin, `scheme://host[:port]` (`https://app.example.com`).
    ///
    /// Refuses paths (even `/`), queries, fragments, userinfo, wildcards, `*` and `null`.
    ///
    /// ```
    /// use portcullis::cors::Cors;
    /// assert!(Cors::new().allow_origin("https://app.example.com").is_ok());
    /// assert!(Cors::new().allow_origin("https://app.example.com/").is_err());
    /// assert!(Cors::new().allow_origin("null").is_err());
    /// ```
    pub fn allow_origin(mut self, origin: &str) -> Result<Self, CorsError> {
        let normal = normalize_origin(origin)?;
        let value = HeaderValue::from_str(&normal)
            .expect("a normalised origin is printable ASCII, a valid header value");
        if let Err(at) = self.origins.binary_search(&value) {
            self.origins.insert(at, value);
        }
        self.validate()?;
        Ok(self)
    }

    /// Allows each of `origins` (see [`Cors::allow_origin`]).
    ///
    /// ```
    /// use portcullis::cors::Cors;
    /// let cors = Cors::new().allow_origins(["https://a.example", "http://localhost:3000"])?;
    /// assert!(cors.allows_origin("http://localhost:3000"));
    /// # Ok::<(), portcullis::cors::CorsError>(())
    /// ```
    pub fn allow_origins<I, S>(self, origins: I) -> Result<Self, CorsError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        origins
            .into_iter()
            .try_fold(self, |cors, o| cors.allow_origin(o.as_ref()))
    }

    /// Allows every origin: responses carry `Access-Control-Allow-Origin: *` and never
    /// `Access-Control-Allow-Credentials`. For public, cookie-less APIs only;
    /// [`Cors::validate`] refuses it together with credentials or listed origins.
    ///
    /// ```
    /// use portcullis::cors::Cors;
    /// let cors = Cors::new().allow_any_origin();
    /// assert!(cors.allows_origin("https://anyone.example"));
    /// assert!(cors.clone().allow_credentials(true).validate().is_err());
    /// ```
    pub fn allow_any_origin(mut self) -> Self {
        self.any_origin = true;
        self
    }

    /// The methods a preflight may ask for; each must also be allowed by the route. Without
    /// this, the route's own methods are used (`GET, HEAD, POST` for a route allowing any).
    ///
    /// ```
    /// use portcullis::cors::Cors;
    /// use http::Method;
    /// let cors = Cors::new().allow_methods([Method::GET, Method::PUT]);
    /// ```
    pub fn allow_methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        let mut list: Vec<Method> = Vec::new();
        for m in methods {
            if !list.contains(&m) {
                list.push(m);
            }
        }
        self.methods_value = join(list.iter().map(Method::as_str));
        self.methods = Some(list);
        self
    }

    /// The request headers a preflight may ask for, replacing the default
    /// ([`DEFAULT_ALLOWED_HEADERS`]). Names are case-insensitive; `*` is refused.
    ///
    /// ```
    /// use portcullis::cors::Cors;
    /// assert!(Cors::new().allow_headers(["Content-Type", "X-Api-Key"]).is_ok());
    /// assert!(Cors::new().allow_headers(["*"]).is_err());
    /// ```
    pub fn allow_headers<I, S>(mut self, headers: I) -> Result<Self, CorsError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.headers = header_names(headers, "allow_headers")?;
        self.headers_value = join(self.headers.iter().map(HeaderName::as_str));
        self.validate()?;
        Ok(self)
    }

    /// Response headers the browser lets scripts read (`Access-Control-Expose-Headers`);
    /// none by default. `*` is refused.
    ///
    /// ```
    /// use portcullis::cors::Cors;
    /// assert!(Cors::new().expose_headers(["x-request-id", "RateLimit"]).is_ok());
    /// assert!(Cors::new().expose_headers(["bad header"]).is_err());
    /// ```
    pub fn expose_headers<I, S>(mut self, headers: I) -> Result<Self, CorsError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let names = header_names(headers, "expose_headers")?;
        self.expose_value = join(names.iter().map(HeaderName::as_str));
        self.validate()?;
        Ok(self)
    }

    /// Sends `Access-Control-Allow-Credentials: true` to listed origins, so browsers send
    /// cookies and let scripts read the answers. Never sent with `*`.
    ///
    /// ```
    /// use portcullis::cors::Cors;
    /// let cors = Cors::new().allow_origin("https://app.example.com")?.allow_credentials(true);
    /// assert!(cors.validate().is_ok());
    /// # Ok::<(), portcullis::cors::CorsError>(())
    /// ```
    pub fn allow_credentials(mut self, on: bool) -> Self {
        self.credentials = on;
        self
    }

    /// How long a browser may cache a preflight answer (`Access-Control-Max-Age`, whole
    /// seconds; default 600 s). Browsers cap it (Chromium at 2 hours).
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::cors::Cors;
    /// let cors = Cors::new().max_age(Duration::from_secs(3600));
    /// ```
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age_value = HeaderValue::from(max_age.as_secs());
        self
    }

    /// Checks the combination: credentials or listed origins together with
    /// [`Cors::allow_any_origin`] are refused. The builder methods that return `Result` call
    /// it; call it yourself after the last step that does not.
    ///
    /// ```
    /// use portcullis::cors::Cors;
    /// let err = Cors::new().allow_any_origin().allow_credentials(true).validate().unwrap_err();
    /// assert!(err.to_string().contains("allow_credentials"));
    /// ```
    pub fn validate(&self) -> Result<(), CorsError> {
        if self.any_origin && self.credentials {
            return Err(CorsError(
                "allow_any_origin() cannot be combined with allow_credentials(true): browsers \
                 refuse \"*\" with credentials, and allowing every origin with credentials \
                 would let any site read users' data; list the origins instead"
                    .to_string(),
            ));
        }
        if self.any_origin && !self.origins.is_empty() {
            let listed: Vec<&str> = self
                .origins
                .iter()
                .filter_map(|o| o.to_str().ok())
                .collect();
            return Err(CorsError(format!(
                "allow_any_origin() makes the listed origins {listed:?} meaningless: use one \
                 or the other"
            )));
        }
        Ok(())
    }

    /// True when a request with this `Origin` value gets CORS access.
    ///
    /// ```
    /// use portcullis::cors::Cors;
    /// let cors = Cors::new().allow_origin("https://app.example.com")?;
    /// assert!(cors.allows_origin("https://app.example.com"));
    /// assert!(!cors.allows_origin("https://evilapp.example.com"));
    /// assert!(!cors.allows_origin("http://app.example.com"));
    /// assert!(!cors.allows_origin("null"));
    /// # Ok::<(), portcullis::cors::CorsError>(())
    /// ```
    pub fn allows_origin(&self, origin: &str) -> bool {
        self.any_origin || self.find_listed(origin.as_bytes()).is_some()
    }

    /// True when the request is a CORS preflight: `OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`.
    ///
    /// ```
    /// use portcullis::cors::Cors;
    /// let mut h = http::HeaderMap::new();
    /// h.insert("origin", "https://app.example.com".parse().unwrap());
    /// assert!(!Cors::is_preflight(&http::Method::OPTIONS, &h));
    /// h.insert("access-control-request-method", "PUT".parse().unwrap());
    /// assert!(Cors::is_preflight(&http::Method::OPTIONS, &h));
    /// assert!(!Cors::is_preflight(&http::Method::GET, &h));
    /// ```
    pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
        method == Method::OPTIONS
            && headers.contains_key(header::ORIGIN)
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// Answers a preflight: the headers of the `204` answer, or a `403`
    /// `cors_preflight_denied` refusal (which never names what the request asked for).
    ///
    /// `route_methods` is the matched route's allowlist; a requested method must be in it.
    ///
    /// ```
    /// use http::{HeaderMap, Method};
    /// use portcullis::{cors::Cors, methods::MethodSet};
    /// let cors = Cors::new().allow_origin("https://app.example.com")?;
    /// let route = MethodSet::new([Method::GET, Method::PUT]);
    /// let mut req = HeaderMap::new();
    /// req.insert("origin", "https://app.example.com".parse().unwrap());
    /// req.insert("access-control-request-method", "PUT".parse().unwrap());
    /// req.insert("access-control-request-headers", "content-type".parse().unwrap());
    /// let answer = cors.preflight(&req, &route).unwrap();
    /// assert_eq!(answer["access-control-allow-origin"], "https://app.example.com");
    /// assert_eq!(answer["access-control-allow-methods"], "GET, PUT");
    /// assert_eq!(answer["access-control-max-age"], "600");
    ///
    /// req.insert("access-control-request-method", "DELETE".parse().unwrap());
    /// let denied = cors.preflight(&req, &route).unwrap_err();
    /// assert_eq!(denied.code(), "cors_preflight_denied");
    /// assert_eq!(denied.status(), 403);
    /// # Ok::<(), portcullis::cors::CorsError>(())
    /// ```
    // The signature is the layer's contract; a `Rejection` is the one error type of every step.
    #[allow(clippy::result_large_err)]
    pub fn preflight(
        &self,
        request_headers: &HeaderMap,
        route_methods: &MethodSet,
    ) -> Result<HeaderMap, Rejection> {
        let allowed = self
            .allowed(request_headers)
            .ok_or_else(|| denied("Cross-origin requests from this origin are not allowed"))?;
        let method_denied = || denied("This method is not allowed for cross-origin requests");
        let method = single(request_headers, &header::ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|v| Method::from_bytes(v.as_bytes()).ok())
            .ok_or_else(method_denied)?;
        let methods_value = self
            .preflight_methods(&method, route_methods)
            .ok_or_else(method_denied)?;
        let headers_value = self
            .preflight_headers(request_headers)
            .map_err(|NotAllowed| {
                denied("A request header is not allowed for cross-origin requests")
            })?;

        let mut out = HeaderMap::with_capacity(6);
        match allowed {
            Allowed::Listed(origin) => {
                out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
                if self.credentials {
                    out.insert(
                        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                        HeaderValue::from_static("true"),
                    );
                }
            }
            Allowed::Any => {
                out.insert(
                    header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    HeaderValue::from_static("*"),
                );
            }
        }
        out.insert(header::ACCESS_CONTROL_ALLOW_METHODS, methods_value);
        if let Some(v) = headers_value {
            out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
        out.insert(header::ACCESS_CONTROL_MAX_AGE, self.max_age_value.clone());
        out.insert(header::VARY, HeaderValue::from_static(PREFLIGHT_VARY));
        Ok(out)
    }

    /// Adds the CORS headers for an actual (non-preflight) request to its response, including
    /// the layer's own error responses.
    ///
    /// Always adds `Origin` to `Vary`. Removes any CORS headers the application set, then
    /// allows a listed origin (and `*` in any-origin mode). A request carrying
    /// `Access-Control-Request-Method` is a preflight — browsers never send that header
    /// otherwise — whose headers [`Cors::preflight`] decided, so only `Vary` is touched.
    ///
    /// ```
    /// use http::HeaderMap;
    /// use portcullis::cors::Cors;
    /// let cors = Cors::new().allow_origin("https://app.example.com")?.allow_credentials(true);
    /// let mut req = HeaderMap::new();
    /// req.insert("origin", "https://app.example.com".parse().unwrap());
    /// let mut res = HeaderMap::new();
    /// res.insert("vary", "Accept-Encoding".parse().unwrap());
    /// cors.apply(&req, &mut res);
    /// assert_eq!(res["access-control-allow-origin"], "https://app.example.com");
    /// assert_eq!(res["access-control-allow-credentials"], "true");
    /// assert_eq!(res["vary"], "Accept-Encoding, Origin");
    ///
    /// req.insert("origin", "https://evil.example".parse().unwrap());
    /// let mut res = HeaderMap::new();
    /// cors.apply(&req, &mut res);
    /// assert!(!res.contains_key("access-control-allow-origin"));
    /// assert_eq!(res["vary"], "Origin");
    /// # Ok::<(), portcullis::cors::CorsError>(())
    /// ```
    pub fn apply(&self, request_headers: &HeaderMap, response_headers: &mut HeaderMap) {
        vary_on_origin(response_headers);
        if request_headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
            return;
        }
        response_headers.remove(header::ACCESS_CONTROL_ALLOW_ORIGIN);
        response_headers.remove(header::ACCESS_CONTROL_ALLOW_CREDENTIALS);
        response_headers.remove(header::ACCESS_CONTROL_EXPOSE_HEADERS);
        let Some(allowed) = self.allowed(request_headers) else {
            return;
        };
        match allowed {
            Allowed::Listed(origin) => {
                response_headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
                if self.credentials {
                    response_headers.insert(
                        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                        HeaderValue::from_static("true"),
                    );
                }
            }
            Allowed::Any => {
                response_headers.insert(
                    header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    HeaderValue::from_static("*"),
                );
            }
        }
        if let Some(expose) = &self.expose_value {
            response_headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }

    /// The rule that lets the request's single `Origin` in, if any.
    fn allowed(&self, request_headers: &HeaderMap) -> Option<Allowed<'_>> {
        let origin = single(request_headers, &header::ORIGIN)?;
        if self.any_origin {
            // Credentials never go with "*", even if validate() was skipped.
            return Some(Allowed::Any);
        }
        self.find_listed(origin.as_bytes()).map(Allowed::Listed)
    }

    /// Binary search of the sorted, lower-case list, lower-casing the request's bytes as it
    /// compares (so no allocation): equal to lower-casing the request origin's scheme and host.
    fn find_listed(&self, origin: &[u8]) -> Option<&HeaderValue> {
        self.origins
            .binary_search_by(|listed| cmp_lowercased(listed.as_bytes(), origin))
            .ok()
            .map(|i| &self.origins[i])
    }

    /// The `Access-Control-Allow-Methods` value when `requested` may be used on this route.
    fn preflight_methods(&self, requested: &Method, route: &MethodSet) -> Option<HeaderValue> {
        match &self.methods {
            Some(list) => {
                if !(list.contains(requested) && route.allows(requested)) {
                    return None;
                }
                if list.iter().all(|m| route.allows(m)) {
                    self.methods_value.clone()
                } else {
                    join(list.iter().filter(|m| route.allows(m)).map(Method::as_str))
                }
            }
            None if route.is_any() => ANY_ROUTE_METHODS
                .contains(requested)
                .then(|| HeaderValue::from_static(ANY_ROUTE_METHODS_VALUE)),
            None => route
                .allows(requested)
                .then(|| HeaderValue::from_str(route.allow_header()).ok())
                .flatten(),
        }
    }

    /// The `Access-Control-Allow-Headers` value when every requested header is allowed.
    fn preflight_headers(
        &self,
        request_headers: &HeaderMap,
    ) -> Result<Option<HeaderValue>, NotAllowed> {
        let mut safelisted = [false; SAFELISTED_HEADERS.len()];
        for value in request_headers.get_all(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            for name in value.as_bytes().split(|&b| b == b',') {
                let name = name.trim_ascii();
                if name.is_empty()
                    || self
                        .headers
                        .iter()
                        .any(|h| h.as_str().as_bytes().eq_ignore_ascii_case(name))
                {
                    continue;
                }
                let i = SAFELISTED_HEADERS
                    .iter()
                    .position(|s| s.as_bytes().eq_ignore_ascii_case(name))
                    .ok_or(NotAllowed)?;
                safelisted[i] = true;
            }
        }
        if !safelisted.contains(&true) {
            return Ok(self.headers_value.clone());
        }
        // A browser only asks about a safelisted name when the value is unusual, and then
        // needs the name in the answer; these are our constants, never the request's bytes.
        let extra = SAFELISTED_HEADERS
            .iter()
            .zip(safelisted)
            .filter_map(|(name, asked)| asked.then_some(*name));
        Ok(join(
            self.headers.iter().map(HeaderName::as_str).chain(extra),
        ))
    }
}

/// A requested header outside the list.
struct NotAllowed;

/// The 403 for a refused preflight. It varies on the same headers as the 204 would.
fn denied(message: &'static str) -> Rejection {
    Rejection::new(
        StatusCode::FORBIDDEN,
        "cors_preflight_denied",
        message,
        AuditAction::SecurityEvent,
        Control::Cors,
    )
    .with_header(header::VARY, HeaderValue::from_static(PREFLIGHT_VARY))
}

/// The header's value when it occurs exactly once; two `Origin` headers are nobody's origin.
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut all = headers.get_all(name).iter();
    let first = all.next()?;
    all.next().is_none().then_some(first)
}

/// Orders `listed` (already lower-case) against `request` lower-cased.
fn cmp_lowercased(listed: &[u8], request: &[u8]) -> Ordering {
    listed
        .iter()
        .copied()
        .cmp(request.iter().map(u8::to_ascii_lowercase))
}

/// Joins tokens with `, ` into a header value; `None` for an empty list.
fn join<'a>(items: impl IntoIterator<Item = &'a str>) -> Option<HeaderValue> {
    let joined = items.into_iter().collect::<Vec<_>>().join(", ");
    if joined.is_empty() {
        return None;
    }
    Some(HeaderValue::from_str(&joined).expect("header names and methods are tokens"))
}

/// Adds `Origin` to `Vary` unless it (or `*`) is there. An existing `Vary` is kept and merged
/// into one line, so readers of the first value see it too.
fn vary_on_origin(headers: &mut HeaderMap) {
    let mut existing = 0;
    for value in headers.get_all(header::VARY) {
        existing += 1;
        let covered = value.as_bytes().split(|&b| b == b',').any(|token| {
            let token = token.trim_ascii();
            token == b"*" || token.eq_ignore_ascii_case(b"origin")
        });
        if covered {
            return;
        }
    }
    if existing == 0 {
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
        return;
    }
    let mut merged: Vec<u8> = Vec::new();
    for value in headers.get_all(header::VARY) {
        let value = value.as_bytes().trim_ascii();
        if !value.is_empty() {
            merged.extend_from_slice(value);
            merged.extend_from_slice(b", ");
        }
    }
    merged.extend_from_slice(b"Origin");
    match HeaderValue::from_bytes(&merged) {
        Ok(v) => {
            headers.insert(header::VARY, v);
        }
        Err(_) => {
            headers.append(header::VARY, HeaderValue::from_static("Origin"));
        }
    }
}

/// Parses configured header names (lower-cased, deduplicated); refuses `*` and non-tokens.
fn header_names<I, S>(names: I, setting: &str) -> Result<Vec<HeaderName>, CorsError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out: Vec<HeaderName> = Vec::new();
    for name in names {
        let name = name.as_ref();
        if name == "*" {
            return Err(CorsError(format!(
                "{setting}: \"*\" is not accepted; list the header names"
            )));
        }
        let parsed = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| CorsError(format!("{setting}: {name:?} is not a valid header name")))?;
        if !out.contains(&parsed) {
            out.push(parsed);
        }
    }
    Ok(out)
}

/// Checks a configured origin and writes it the way a browser sends it.
fn normalize_origin(input: &str) -> Result<String, CorsError> {
    let bad = |why: &str| {
        Err(CorsError(format!(
            "{input:?} is not an allowed origin: {why}"
        )))
    };
    if input == "*" {
        return bad("use Cors::allow_any_origin() to allow every origin");
    }
    if input.eq_ignore_ascii_case("null") {
        return bad(
            "sandboxed frames, file: pages and redirects all send \"null\", so any site could \
             claim it",
        );
    }
    if !input.is_ascii() {
        return bad("write an internationalised host in its ASCII (xn--) form");
    }
    if input
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return bad("it contains whitespace or control characters");
    }
    let Some((scheme, authority)) = input.split_once("://") else {
        return bad("expected scheme://host[:port], such as \"https://app.example.com\"");
    };
    let scheme_ok = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !scheme_ok {
        return bad("the scheme is missing or malformed");
    }
    let scheme = scheme.to_ascii_lowercase();
    if authority.contains('*') {
        return bad("wildcards are not supported; list each origin exactly");
    }
    if authority.contains(['/', '?', '#']) {
        return bad(
            "an origin has no path (not even \"/\"), query or fragment: scheme://host[:port]",
        );
    }
    if authority.contains('@') {
        return bad("an origin has no user information");
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let Some((literal, after)) = rest.split_once(']') else {
            return bad("the IPv6 address has no closing ']'");
        };
        let Ok(ip) = literal.parse::<Ipv6Addr>() else {
            return bad("the IPv6 address is malformed");
        };
        let port = match after {
            "" => None,
            p => match p.strip_prefix(':') {
                Some(p) => Some(p),
                None => return bad("unexpected text after the IPv6 address"),
            },
        };
        (format!("[{}]", serialize_ipv6(ip)), port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        match normalize_host(host) {
            Ok(h) => (h, port),
            Err(why) => return bad(why),
        }
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => return bad("the port must be a number from 1 to 65535"),
        },
    };
    let default_port = match scheme.as_str() {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        "ftp" => Some(21),
        _ => None,
    };
    Ok(match port {
        Some(p) if Some(p) != default_port => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// Lower-cases and checks a host name or IPv4 address.
fn normalize_host(host: &str) -> Result<String, &'static str> {
    if host.is_empty() {
        return Err("the host is missing");
    }
    let host = host.to_ascii_lowercase();
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err("the host contains characters a host name cannot have");
    }
    if host.split('.').any(str::is_empty) {
        return Err("the host has an empty label (a leading, trailing or doubled '.')");
    }
    // Browsers read a host whose last label is numeric as IPv4 (also in hex or octal forms);
    // accept only the plain dotted form, which is how they send it back.
    let last = host.rsplit('.').next().unwrap_or_default();
    if last.bytes().all(|b| b.is_ascii_digit()) || last.starts_with("0x") {
        return match host.parse::<Ipv4Addr>() {
            Ok(ip) if ip.to_string() == host => Ok(host),
            _ => Err("the IPv4 address must be four plain decimal numbers, like 127.0.0.1"),
        };
    }
    Ok(host)
}

/// Writes an IPv6 address as the URL standard does: lower-case hex, the first longest run of
/// two or more zero groups as `::`, no embedded IPv4.
fn serialize_ipv6(ip: Ipv6Addr) -> String {
    let groups = ip.segments();
    let (mut best_start, mut best_len) = (None, 1);
    let mut i = 0;
    while i < groups.len() {
        if groups[i] == 0 {
            let start = i;
            while i < groups.len() && groups[i] == 0 {
                i += 1;
            }
            if i - start > best_len {
                best_start = Some(start);
                best_len = i - start;
            }
        } else {
            i += 1;
        }
    }
    let mut out = String::new();
    let mut i = 0;
    while i < groups.len() {
        if Some(i) == best_start {
            out.push_str(if i == 0 { "::" } else { ":" });
            i += best_len;
            continue;
        }
        out.push_str(&format!("{:x}", groups[i]));
        if i + 1 < groups.len() {
            out.push(':');
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> Result<String, CorsError> {
        normalize_origin(s)
    }

    fn request(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn scheme_and_host_are_lower_cased_and_default_ports_dropped() {
        assert_eq!(
            norm("HTTPS://App.Example.COM").unwrap(),
            "https://app.example.com"
        );
        assert_eq!(norm("https://a.com:443").unwrap(), "https://a.com");
        assert_eq!(norm("http://a.com:80").unwrap(), "http://a.com");
        assert_eq!(norm("http://a.com:443").unwrap(), "http://a.com:443");
        assert_eq!(norm("https://a.com:80").unwrap(), "https://a.com:80");
        assert_eq!(
            norm("http://localhost:3000").unwrap(),
            "http://localhost:3000"
        );
        assert_eq!(norm("https://a.com:0443").unwrap(), "https://a.com");
        assert_eq!(
            norm("capacitor://localhost").unwrap(),
            "capacitor://localhost"
        );
    }

    #[test]
    fn ip_literals_are_written_as_browsers_send_them() {
        assert_eq!(
            norm("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(norm("http://[::1]:8080").unwrap(), "http://[::1]:8080");
        assert_eq!(
            norm("https://[2001:DB8:0:0:1:0:0:1]").unwrap(),
            "https://[2001:db8::1:0:0:1]"
        );
        assert_eq!(
            norm("http://[::ffff:1.2.3.4]").unwrap(),
            "http://[::ffff:102:304]"
        );
        assert_eq!(
            norm("http://[1:0:2:3:4:5:6:7]").unwrap(),
            "http://[1:0:2:3:4:5:6:7]"
        );
        assert_eq!(norm("http://[::]").unwrap(), "http://[::]");
        assert_eq!(norm("http://[1::]").unwrap(), "http://[1::]");
        assert!(norm("http://0x7f.0.0.1").is_err());
        assert!(norm("http://127.1").is_err());
        assert!(norm("http://127.0.0.01").is_err());
        assert!(norm("http://[::1").is_err());
        assert!(norm("http://[::1]x").is_err());
    }

    #[test]
    fn anything_but_scheme_host_port_is_refused() {
        for bad in [
            "https://a.com/",
            "https://a.com/app",
            "https://a.com?x=1",
            "https://a.com#f",
            "https://user@a.com",
            "https://user:pw@a.com",
            "https://*.example.com",
            "*",
            "null",
            "NULL",
            "",
            "a.com",
            "//a.com",
            "https://",
            "https://:443",
            "https://a.com:",
            "https://a.com:0",
            "https://a.com:65536",
            "https://a.com:+1",
            "https://a.com:1:2",
            "https://a..com",
            "https://.a.com",
            "https://a.com.",
            "https://a com",
            " https://a.com",
            "https://bücher.de",
            "1http://a.com",
            "ht tp://a.com",
        ] {
            let err = norm(bad).expect_err(bad);
            assert!(err.0.contains(&format!("{bad:?}")), "{err} names {bad:?}");
        }
    }

    #[test]
    fn matching_is_exact_after_lower_casing() {
        let cors = Cors::new()
            .allow_origins(["https://app.example.com", "http://localhost:3000"])
            .unwrap();
        assert!(cors.allows_origin("https://app.example.com"));
        assert!(cors.allows_origin("HTTPS://APP.EXAMPLE.COM"));
        assert!(cors.allows_origin("http://localhost:3000"));
        for other in [
            "https://app.example.com.evil.com",
            "https://evilapp.example.com",
            "https://app.example.co",
            "https://app.example.com:443",
            "https://app.example.com/",
            "http://app.example.com",
            "https://app.example.com:8443",
            "http://localhost:30001",
            "http://localhost",
            "null",
            "",
            "https://sub.app.example.com",
        ] {
            assert!(!cors.allows_origin(other), "{other} must not match");
        }
    }

    #[test]
    fn duplicate_origins_collapse_and_sorting_keeps_lookups_right() {
        let origins = [
            "https://z.example",
            "https://a.example",
            "https://m.example",
            "https://A.example",
            "https://b.example:8443",
        ];
        let cors = Cors::new().allow_origins(origins).unwrap();
        assert_eq!(cors.origins.len(), 4);
        for o in origins {
            assert!(cors.allows_origin(o), "{o}");
        }
        assert!(!cors.allows_origin("https://b.example"));
    }

    #[test]
    fn two_origin_headers_match_nothing() {
        let cors = Cors::new().allow_origin("https://a.example").unwrap();
        let req = request(&[
            ("origin", "https://a.example"),
            ("origin", "https://a.example"),
        ]);
        let mut res = HeaderMap::new();
        cors.apply(&req, &mut res);
        assert!(!res.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
    }

    #[test]
    fn the_sent_origin_is_the_configured_one_not_the_request_bytes() {
        let cors = Cors::new().allow_origin("https://a.example").unwrap();
        let req = request(&[("origin", "HTTPS://A.EXAMPLE")]);
        let mut res = HeaderMap::new();
        cors.apply(&req, &mut res);
        assert_eq!(
            res[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://a.example"
        );
    }

    #[test]
    fn vary_is_merged_once() {
        let mut h = HeaderMap::new();
        vary_on_origin(&mut h);
        vary_on_origin(&mut h);
        assert_eq!(h.get_all(header::VARY).iter().count(), 1);
        assert_eq!(h[header::VARY], "Origin");

        let mut h = request(&[("vary", "Accept-Encoding"), ("vary", "Cookie")]);
        vary_on_origin(&mut h);
        assert_eq!(h.get_all(header::VARY).iter().count(), 1);
        assert_eq!(h[header::VARY], "Accept-Encoding, Cookie, Origin");

        let mut h = request(&[("vary", "accept, ORIGIN")]);
        vary_on_origin(&mut h);
        assert_eq!(h[header::VARY], "accept, ORIGIN");

        let mut h = request(&[("vary", "*")]);
        vary_on_origin(&mut h);
        assert_eq!(h[header::VARY], "*");
    }

    #[test]
    fn apply_replaces_cors_headers_set_by_the_application() {
        let cors = Cors::new().allow_origin("https://a.example").unwrap();
        let req = request(&[("origin", "https://evil.example")]);
        let mut res = request(&[
            ("access-control-allow-origin", "https://evil.example"),
            ("access-control-allow-credentials", "true"),
        ]);
        cors.apply(&req, &mut res);
        assert!(!res.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
        assert!(!res.contains_key(header::ACCESS_CONTROL_ALLOW_CREDENTIALS));
    }

    #[test]
    fn any_origin_never_sends_credentials_even_unvalidated() {
        let cors = Cors::new().allow_any_origin().allow_credentials(true);
        assert!(cors.validate().is_err());
        let req = request(&[("origin", "https://x.example")]);
        let mut res = HeaderMap::new();
        cors.apply(&req, &mut res);
        assert_eq!(res[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(!res.contains_key(header::ACCESS_CONTROL_ALLOW_CREDENTIALS));
    }

    #[test]
    fn builder_steps_that_return_result_validate() {
        let err = Cors::new()
            .allow_any_origin()
            .allow_credentials(true)
            .allow_headers(["x-a"])
            .unwrap_err();
        assert!(err.0.contains("allow_credentials"));
        assert!(
            Cors::new()
                .allow_any_origin()
                .allow_origin("https://a.example")
                .is_err()
        );
    }

    #[test]
    fn preflight_methods_follow_the_route_and_the_cors_list() {
        let route = MethodSet::new([Method::GET, Method::POST]);
        let base = Cors::new().allow_origin("https://a.example").unwrap();
        let ask = |m: &str| {
            request(&[
                ("origin", "https://a.example"),
                ("access-control-request-method", m),
            ])
        };
        let ok = base.preflight(&ask("POST"), &route).unwrap();
        assert_eq!(ok[header::ACCESS_CONTROL_ALLOW_METHODS], "GET, POST");
        assert!(base.preflight(&ask("PUT"), &route).is_err());
        assert!(base.preflight(&ask("post"), &route).is_err());

        let any = base.preflight(&ask("POST"), &MethodSet::any()).unwrap();
        assert_eq!(any[header::ACCESS_CONTROL_ALLOW_METHODS], "GET, HEAD, POST");
        assert!(base.preflight(&ask("DELETE"), &MethodSet::any()).is_err());

        let listed = base.clone().allow_methods([Method::POST, Method::PUT]);
        let ok = listed.preflight(&ask("POST"), &route).unwrap();
        assert_eq!(ok[header::ACCESS_CONTROL_ALLOW_METHODS], "POST");
        assert!(listed.preflight(&ask("GET"), &route).is_err());
        assert!(listed.preflight(&ask("PUT"), &route).is_err());
        let ok = listed.preflight(&ask("PUT"), &MethodSet::any()).unwrap();
        assert_eq!(ok[header::ACCESS_CONTROL_ALLOW_METHODS], "POST, PUT");
    }

    #[test]
    fn preflight_headers_are_case_insensitive_and_safelisted_ones_pass() {
        let cors = Cors::new().allow_origin("https://a.example").unwrap();
        let route = MethodSet::any();
        let ask = |h: &str| {
            request(&[
                ("origin", "https://a.example"),
                ("access-control-request-method", "POST"),
                ("access-control-request-headers", h),
            ])
        };
        let ok = cors
            .preflight(&ask("Content-Type, X-CSRF-Token"), &route)
            .unwrap();
        assert_eq!(
            ok[header::ACCESS_CONTROL_ALLOW_HEADERS],
            "content-type, authorization, x-csrf-token, x-requested-with"
        );
        let ok = cors
            .preflight(&ask("content-type,accept-language"), &route)
            .unwrap();
        assert_eq!(
            ok[header::ACCESS_CONTROL_ALLOW_HEADERS],
            "content-type, authorization, x-csrf-token, x-requested-with, accept-language"
        );
        assert!(
            cors.preflight(&ask("content-type, x-evil"), &route)
                .is_err()
        );
        assert!(
            cors.preflight(&ask("content-type x-csrf-token"), &route)
                .is_err()
        );
        let denied = cors.preflight(&ask("x-evil"), &route).unwrap_err();
        assert!(!denied.message().contains("x-evil"));
        assert_eq!(denied.control(), Control::Cors);
        assert_eq!(denied.action(), AuditAction::SecurityEvent);
    }

    #[test]
    fn header_settings_refuse_wildcards_and_bad_names() {
        assert!(Cors::new().allow_headers(["*"]).is_err());
        assert!(Cors::new().allow_headers(["x a"]).is_err());
        assert!(Cors::new().expose_headers(["*"]).is_err());
        let err = Cors::new().expose_headers(["ok", "bad:name"]).unwrap_err();
        assert!(err.0.contains("bad:name"));
    }
}

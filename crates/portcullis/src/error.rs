//! The one JSON error response.
//!
//! Every refusal, whichever control makes it, becomes a [`Rejection`]: a status, a stable
//! machine `code`, a human message that helps a legitimate client without helping an attacker,
//! and the audit action it is recorded under. It renders as
//! `{"error": "...", "code": "...", "request_id": "..."}` (plus `retry_after` on 429).
//!
//! ```
//! use portcullis::Rejection;
//! let r = Rejection::method_not_allowed("GET, HEAD");
//! assert_eq!(r.status(), http::StatusCode::METHOD_NOT_ALLOWED);
//! assert_eq!(r.code(), "method_not_allowed");
//! ```

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use crate::audit::AuditAction;

/// Why a request was refused; becomes the JSON error response.
///
/// ```
/// use portcullis::{Control, Rejection};
/// let r = Rejection::forbidden();
/// assert_eq!(r.status(), http::StatusCode::FORBIDDEN);
/// assert_eq!(r.control(), Control::Authorization);
/// assert_eq!(r.to_string(), "403 forbidden: Insufficient permissions");
/// ```
#[derive(Debug, Clone)]
pub struct Rejection {
    status: StatusCode,
    code: &'static str,
    message: Cow<'static, str>,
    action: AuditAction,
    retry_after: Option<u64>,
    headers: Vec<(HeaderName, HeaderValue)>,
    control: Control,
}

/// The `Retry-After` of a 503 for a store that is down: soon, as a store outage is usually
/// short (a restart, a failover).
///
/// ```
/// assert_eq!(portcullis::error::STORE_RETRY_AFTER, "5");
/// ```
pub const STORE_RETRY_AFTER: &str = "5";

/// The control that produced a decision; used for report-only selection and audit metadata.
///
/// ```
/// use portcullis::{Control, Rejection};
/// assert_eq!(Rejection::rate_limited(5).control(), Control::RateLimit);
/// assert_eq!(Control::from_name("csrf"), Some(Control::Csrf));
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Control {
    /// Canonical path and host checks (step 2).
    Path,
    /// Server limits such as header size (step 1).
    ServerLimits,
    /// The ban list (step 5).
    Ban,
    /// CORS preflight (step 6).
    Cors,
    /// Method allowlist (step 7).
    Methods,
    /// Authentication (step 8).
    Authentication,
    /// Authorization: roles (step 9).
    Authorization,
    /// Rate limiting (step 10).
    RateLimit,
    /// CSRF: origin check and token (step 11).
    Csrf,
    /// Body size and content type (step 12).
    Body,
    /// Anything else, such as a failing store.
    Internal,
}

impl Control {
    /// The control's name as written in config files (`report_only = ["csrf"]`).
    ///
    /// ```
    /// use portcullis::Control;
    /// assert_eq!(Control::Authentication.name(), "auth");
    /// assert_eq!(Control::RateLimit.name(), "rate_limit");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Control::Path => "path",
            Control::ServerLimits => "server_limits",
            Control::Ban => "ban",
            Control::Cors => "cors",
            Control::Methods => "methods",
            Control::Authentication => "auth",
            Control::Authorization => "roles",
            Control::RateLimit => "rate_limit",
            Control::Csrf => "csrf",
            Control::Body => "body",
            Control::Internal => "internal",
        }
    }

    /// Parses a control name as written in config files.
    ///
    /// ```
    /// use portcullis::Control;
    /// assert_eq!(Control::from_name("roles"), Some(Control::Authorization));
    /// // Controls that always enforce cannot be named for report-only.
    /// assert_eq!(Control::from_name("path"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<Control> {
        Some(match name {
            "cors" => Control::Cors,
            "methods" => Control::Methods,
            "auth" => Control::Authentication,
            "roles" => Control::Authorization,
            "rate_limit" => Control::RateLimit,
            "csrf" => Control::Csrf,
            "body" => Control::Body,
            "ban" => Control::Ban,
            _ => return None,
        })
    }
}

impl Rejection {
    /// A rejection with a status, a machine code and a human message.
    ///
    /// ```
    /// use portcullis::{Rejection, audit::AuditAction, Control};
    /// let r = Rejection::new(http::StatusCode::BAD_REQUEST, "bad_thing", "Bad thing", AuditAction::InvalidInput, Control::Internal);
    /// assert_eq!(r.code(), "bad_thing");
    /// ```
    pub fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<Cow<'static, str>>,
        action: AuditAction,
        control: Control,
    ) -> Self {
        Rejection {
            status,
            code,
            message: message.into(),
            action,
            retry_after: None,
            headers: Vec::new(),
            control,
        }
    }

    /// 400 for a path that is ambiguous or malformed.
    ///
    /// ```
    /// use portcullis::Rejection;
    /// let r = Rejection::invalid_path("Encoded slash in path");
    /// assert_eq!((r.status().as_u16(), r.code()), (400, "invalid_path"));
    /// assert_eq!(r.message(), "Encoded slash in path");
    /// ```
    pub fn invalid_path(reason: impl Into<Cow<'static, str>>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            reason,
            AuditAction::InvalidInput,
            Control::Path,
        )
    }

    /// 503 `rate_limit_unavailable`: the store behind the rate limits or the brute-force limit
    /// is down and `on_store_error` is closed. `Retry-After` suggests a retry in
    /// [`STORE_RETRY_AFTER`] seconds.
    ///
    /// ```
    /// let r = portcullis::Rejection::store_unavailable();
    /// assert_eq!((r.status().as_u16(), r.code()), (503, "rate_limit_unavailable"));
    /// ```
    pub fn store_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "rate_limit_unavailable",
            "Rate limiting is temporarily unavailable",
            AuditAction::SecurityEvent,
            Control::Internal,
        )
        .with_header(
            header::RETRY_AFTER,
            HeaderValue::from_static(STORE_RETRY_AFTER),
        )
    }

    /// 414 for a request path longer than the canonicalizer accepts
    /// ([`MAX_PATH_LEN`](crate::route::MAX_PATH_LEN)), as RFC 9110 §15.5.15 has it: the
    /// client can tell "too long" from "malformed".
    ///
    /// ```
    /// let r = portcullis::Rejection::uri_too_long();
    /// assert_eq!((r.status().as_u16(), r.code()), (414, "uri_too_long"));
    /// ```
    pub fn uri_too_long() -> Self {
        Self::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            "Request target too long",
            AuditAction::InvalidInput,
            Control::Path,
        )
    }

    /// 501 for a request body sent with a transfer coding other than `chunked`
    /// (RFC 9112 §6.1): it could not be handed on decoded.
    ///
    /// ```
    /// let r = portcullis::Rejection::unsupported_transfer_coding();
    /// assert_eq!((r.status().as_u16(), r.code()), (501, "unsupported_transfer_coding"));
    /// ```
    pub fn unsupported_transfer_coding() -> Self {
        Self::new(
            StatusCode::NOT_IMPLEMENTED,
            "unsupported_transfer_coding",
            "Request transfer coding is not supported (only chunked)",
            AuditAction::InvalidInput,
            Control::Body,
        )
    }

    /// 400 for a `Host` or absolute-form authority that is not ours.
    ///
    /// ```
    /// use portcullis::{Control, Rejection};
    /// let r = Rejection::invalid_host();
    /// assert_eq!((r.status().as_u16(), r.code()), (400, "invalid_host"));
    /// assert_eq!(r.control(), Control::Path);
    /// ```
    pub fn invalid_host() -> Self {
        Self::bad_host("Request host is not served here")
    }

    /// 400 `invalid_host` saying what is wrong with the request's host (two `Host` headers,
    /// none, or one that is not `host[:port]`).
    ///
    /// ```
    /// let r = portcullis::Rejection::bad_host("Request has no Host header");
    /// assert_eq!((r.status().as_u16(), r.code()), (400, "invalid_host"));
    /// ```
    pub fn bad_host(message: &'static str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_host",
            message,
            AuditAction::InvalidInput,
            Control::Path,
        )
    }

    /// 405 with the `Allow` header listing `allow`.
    ///
    /// ```
    /// use portcullis::Rejection;
    /// let r = Rejection::method_not_allowed("GET, POST");
    /// assert_eq!(r.status().as_u16(), 405);
    /// assert_eq!(r.header("allow").unwrap(), "GET, POST");
    /// ```
    pub fn method_not_allowed(allow: &str) -> Self {
        let mut r = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Method not allowed",
            AuditAction::MethodNotAllowed,
            Control::Methods,
        );
        if let Ok(v) = HeaderValue::from_str(allow) {
            r.headers.push((header::ALLOW, v));
        }
        r
    }

    /// 413 for a body over `limit` bytes.
    ///
    /// ```
    /// use portcullis::Rejection;
    /// let r = Rejection::body_too_large(1024);
    /// assert_eq!((r.status().as_u16(), r.code()), (413, "body_too_large"));
    /// assert!(r.message().contains("1024"));
    /// ```
    pub fn body_too_large(limit: u64) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("Request body too large (limit {limit} bytes)"),
            AuditAction::BodyTooLarge,
            Control::Body,
        )
    }

    /// 415 for a content type outside the route's allowlist.
    ///
    /// ```
    /// use portcullis::Rejection;
    /// let r = Rejection::unsupported_media_type();
    /// assert_eq!((r.status().as_u16(), r.code()), (415, "unsupported_media_type"));
    /// ```
    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Content type not accepted here",
            AuditAction::InvalidInput,
            Control::Body,
        )
    }

    /// 401 with `WWW-Authenticate: Bearer error="invalid_token"` (or the bare challenge when no
    /// credentials were sent).
    ///
    /// ```
    /// use portcullis::Rejection;
    /// assert_eq!(Rejection::unauthorized(false).header("www-authenticate").unwrap(), "Bearer");
    /// let r = Rejection::unauthorized(true);
    /// assert_eq!(r.status().as_u16(), 401);
    /// assert_eq!(r.header("WWW-Authenticate").unwrap(), "Bearer error=\"invalid_token\"");
    /// ```
    pub fn unauthorized(credentials_sent: bool) -> Self {
        let mut r = Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Authentication required",
            AuditAction::UnauthorizedAccess,
            Control::Authentication,
        );
        let challenge = if credentials_sent {
            HeaderValue::from_static("Bearer error=\"invalid_token\"")
        } else {
            HeaderValue::from_static("Bearer")
        };
        r.headers.push((header::WWW_AUTHENTICATE, challenge));
        r
    }

    /// 403 for a principal without the route's roles.
    ///
    /// ```
    /// use portcullis::{Rejection, audit::AuditAction};
    /// let r = Rejection::forbidden();
    /// assert_eq!((r.status().as_u16(), r.code()), (403, "forbidden"));
    /// assert_eq!(r.action(), AuditAction::Forbidden);
    /// ```
    pub fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Insufficient permissions",
            AuditAction::Forbidden,
            Control::Authorization,
        )
    }

    /// 429 with `Retry-After` and `retry_after` in the body.
    ///
    /// ```
    /// use portcullis::Rejection;
    /// let r = Rejection::rate_limited(30);
    /// assert_eq!(r.status().as_u16(), 429);
    /// assert_eq!(r.retry_after(), Some(30));
    /// assert_eq!(r.header("retry-after").unwrap(), "30");
    /// ```
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        let mut r = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "Too many requests",
            AuditAction::RateLimitExceeded,
            Control::RateLimit,
        );
        r.retry_after = Some(retry_after_secs);
        r.headers
            .push((header::RETRY_AFTER, HeaderValue::from(retry_after_secs)));
        r
    }

    /// 403 `banned` for a client on the ban list (step 5), with `Retry-After`: the seconds
    /// until the ban ends.
    ///
    /// ```
    /// use portcullis::{Control, Rejection, audit::AuditAction};
    /// let r = Rejection::banned(900);
    /// assert_eq!((r.status().as_u16(), r.code()), (403, "banned"));
    /// assert_eq!(r.header("retry-after").unwrap(), "900");
    /// assert_eq!((r.action(), r.control()), (AuditAction::Banned, Control::Ban));
    /// ```
    pub fn banned(retry_after_secs: u64) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "banned",
            "Too many refused requests from this address; try again later",
            AuditAction::Banned,
            Control::Ban,
        )
        .with_header(header::RETRY_AFTER, HeaderValue::from(retry_after_secs))
    }

    /// 431 for request headers over the server's limit.
    ///
    /// ```
    /// use portcullis::Rejection;
    /// let r = Rejection::headers_too_large();
    /// assert_eq!((r.status().as_u16(), r.code()), (431, "headers_too_large"));
    /// ```
    pub fn headers_too_large() -> Self {
        Self::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            "Request header fields too large",
            AuditAction::InvalidInput,
            Control::ServerLimits,
        )
    }

    /// 500 without internal detail (the detail goes to the log, never the client).
    ///
    /// ```
    /// use portcullis::Rejection;
    /// let r = Rejection::internal();
    /// assert_eq!((r.status().as_u16(), r.code()), (500, "internal_error"));
    /// assert_eq!(r.message(), "Internal error");
    /// ```
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "Internal error",
            AuditAction::SecurityEvent,
            Control::Internal,
        )
    }

    /// Replaces the human message.
    ///
    /// ```
    /// use portcullis::Rejection;
    /// let r = Rejection::forbidden().with_message("Admins only");
    /// assert_eq!(r.message(), "Admins only");
    /// assert_eq!(r.code(), "forbidden");
    /// ```
    pub fn with_message(mut self, message: impl Into<Cow<'static, str>>) -> Self {
        self.message = message.into();
        self
    }

    /// Adds a header to the error response (e.g. `Allow`, `WWW-Authenticate`).
    ///
    /// ```
    /// use http::header::{HeaderValue, LINK};
    /// use portcullis::Rejection;
    /// let r = Rejection::forbidden().with_header(LINK, HeaderValue::from_static("</help>; rel=help"));
    /// assert_eq!(r.header("link").unwrap(), "</help>; rel=help");
    /// ```
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The HTTP status.
    ///
    /// ```
    /// use portcullis::Rejection;
    /// assert_eq!(Rejection::body_too_large(10).status(), http::StatusCode::PAYLOAD_TOO_LARGE);
    /// ```
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The machine-readable code, stable across releases.
    ///
    /// ```
    /// use portcullis::Rejection;
    /// assert_eq!(Rejection::rate_limited(1).code(), "rate_limited");
    /// ```
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// The human message.
    ///
    /// ```
    /// use portcullis::Rejection;
    /// assert_eq!(Rejection::unauthorized(false).message(), "Authentication required");
    /// ```
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The audit action this rejection is recorded under.
    ///
    /// ```
    /// use portcullis::{Rejection, audit::AuditAction};
    /// assert_eq!(Rejection::rate_limited(1).action(), AuditAction::RateLimitExceeded);
    /// assert_eq!(Rejection::body_too_large(1).action(), AuditAction::BodyTooLarge);
    /// ```
    pub fn action(&self) -> AuditAction {
        self.action
    }

    /// The control that refused.
    ///
    /// ```
    /// use portcullis::{Control, Rejection};
    /// assert_eq!(Rejection::unsupported_media_type().control(), Control::Body);
    /// ```
    pub fn control(&self) -> Control {
        self.control
    }

    /// What an audit event records of this rejection in its `metadata`: `code`, `control`
    /// and `reason` (the message).
    ///
    /// ```
    /// let m = portcullis::Rejection::headers_too_large().audit_metadata();
    /// assert_eq!(m["code"], "headers_too_large");
    /// assert_eq!(m["control"], "server_limits");
    /// ```
    pub fn audit_metadata(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut metadata = serde_json::Map::new();
        metadata.insert("code".into(), self.code.into());
        metadata.insert("control".into(), self.control.name().into());
        metadata.insert("reason".into(), self.message().into());
        metadata
    }

    /// Seconds until a retry may succeed (429 only).
    ///
    /// ```
    /// use portcullis::Rejection;
    /// assert_eq!(Rejection::rate_limited(7).retry_after(), Some(7));
    /// assert_eq!(Rejection::forbidden().retry_after(), None);
    /// ```
    pub fn retry_after(&self) -> Option<u64> {
        self.retry_after
    }

    /// Extra response headers, in the order added.
    ///
    /// ```
    /// use portcullis::Rejection;
    /// let r = Rejection::method_not_allowed("GET");
    /// assert_eq!(r.headers().len(), 1);
    /// assert_eq!(r.headers()[0].0, http::header::ALLOW);
    /// assert!(Rejection::forbidden().headers().is_empty());
    /// ```
    pub fn headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.headers
    }

    /// The first extra header named `name`.
    ///
    /// ```
    /// use portcullis::Rejection;
    /// let r = Rejection::rate_limited(3);
    /// assert_eq!(r.header("Retry-After").unwrap(), "3");
    /// assert!(r.header("allow").is_none());
    /// ```
    pub fn header(&self, name: impl AsRef<str>) -> Option<&HeaderValue> {
        let name = name.as_ref();
        self.headers
            .iter()
            .find(|(k, _)| k.as_str().eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The JSON body for this rejection.
    ///
    /// ```
    /// use portcullis::Rejection;
    /// let body = Rejection::rate_limited(9).body_json("req-1");
    /// let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    /// assert_eq!(v["code"], "rate_limited");
    /// assert_eq!(v["request_id"], "req-1");
    /// assert_eq!(v["retry_after"], 9);
    /// ```
    pub fn body_json(&self, request_id: &str) -> Bytes {
        let mut body = serde_json::json!({
            "error": self.message,
            "code": self.code,
            "request_id": request_id,
        });
        if let Some(secs) = self.retry_after {
            body["retry_after"] = serde_json::Value::from(secs);
        }
        Bytes::from(body.to_string())
    }

    /// Renders the response: JSON body, `Content-Type`, `Cache-Control: no-store`,
    /// `X-Request-Id` and the extra headers. The rejection itself travels in the response's
    /// extensions so outer layers and tests can read it.
    ///
    /// ```
    /// use portcullis::Rejection;
    /// let res = Rejection::method_not_allowed("GET").into_response_with_id("req-7");
    /// assert_eq!(res.status(), 405);
    /// assert_eq!(res.headers()["content-type"], "application/json");
    /// assert_eq!(res.headers()["x-request-id"], "req-7");
    /// assert_eq!(res.headers()["allow"], "GET");
    /// assert_eq!(res.extensions().get::<Rejection>().unwrap().code(), "method_not_allowed");
    /// ```
    pub fn into_response_with_id(self, request_id: &str) -> Response<Bytes> {
        let body = self.body_json(request_id);
        let mut res = Response::new(body);
        *res.status_mut() = self.status;
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        self.finish(res, request_id)
    }

    /// The gRPC status code standing for this refusal: `UNAUTHENTICATED` (16) for a 401,
    /// `PERMISSION_DENIED` (7) for a 403, `RESOURCE_EXHAUSTED` (8) for a 413, 429 or 431,
    /// `INVALID_ARGUMENT` (3) for a 400, 414 or 415, `UNIMPLEMENTED` (12) for a 405,
    /// `DEADLINE_EXCEEDED` (4) for a 408, `UNAVAILABLE` (14) for a 503, `INTERNAL` (13) for
    /// a 500, else `UNKNOWN` (2).
    ///
    /// ```
    /// use portcullis::Rejection;
    /// assert_eq!(Rejection::unauthorized(false).grpc_code(), 16);
    /// assert_eq!(Rejection::forbidden().grpc_code(), 7);
    /// ```
    pub fn grpc_code(&self) -> u8 {
        match self.status.as_u16() {
            400 | 414 | 415 => 3,
            401 => 16,
            403 => 7,
            405 => 12,
            408 => 4,
            413 | 429 | 431 => 8,
            500 => 13,
            503 => 14,
            _ => 2,
        }
    }

    /// Renders the refusal for a gRPC client, as a "trailers-only" answer: HTTP 200,
    /// `Content-Type: application/grpc`, `grpc-status` ([`Rejection::grpc_code`]) and
    /// `grpc-message` (the message), no body; with `X-Request-Id` and the extra headers
    /// (`WWW-Authenticate`, `Retry-After`, `Allow`) as in the JSON answer. A gRPC client reads
    /// the code and message from it; an HTTP status alone would leave it guessing. The layer
    /// answers so a request whose `Content-Type` is `application/grpc…`.
    ///
    /// ```
    /// use portcullis::Rejection;
    /// let res = Rejection::unauthorized(false).into_grpc_response_with_id("req-7");
    /// assert_eq!(res.status(), 200);
    /// assert_eq!(res.headers()["content-type"], "application/grpc");
    /// assert_eq!(res.headers()["grpc-status"], "16");
    /// assert_eq!(res.headers()["grpc-message"], "Authentication required");
    /// assert_eq!(res.headers()["www-authenticate"], "Bearer");
    /// assert!(res.body().is_empty());
    /// ```
    pub fn into_grpc_response_with_id(self, request_id: &str) -> Response<Bytes> {
        let mut res = Response::new(Bytes::new());
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(
            "grpc-status",
            HeaderValue::from(u16::from(self.grpc_code())),
        );
        // Percent-encoded as gRPC asks (RFC 3986 unreserved and printable ASCII as is).
        let mut message = String::with_capacity(self.message.len());
        for b in self.message.bytes() {
            if (0x20..0x7f).contains(&b) && b != b'%' {
                message.push(char::from(b));
            } else {
                message.push_str(&format!("%{b:02X}"));
            }
        }
        if let Ok(v) = HeaderValue::from_str(&message) {
            h.insert("grpc-message", v);
        }
        self.finish(res, request_id)
    }

    /// What every rendering of a refusal ends with: `Cache-Control: no-store`, the request
    /// id, the refusal's own headers, and the refusal in the extensions.
    fn finish(self, mut res: Response<Bytes>, request_id: &str) -> Response<Bytes> {
        let h = res.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Ok(v) = HeaderValue::from_str(request_id) {
            h.insert(crate::request_id::X_REQUEST_ID, v);
        }
        for (name, value) in &self.headers {
            h.append(name.clone(), value.clone());
        }
        res.extensions_mut().insert(self);
        res
    }
}

/// Whether a request speaks gRPC (`Content-Type: application/grpc`, `application/grpc+proto`,
/// `application/grpc-web…` excluded: browsers' gRPC-Web reads HTTP statuses).
pub(crate) fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.as_bytes())
        .is_some_and(|ct| {
            ct.len() >= 16
                && ct[..16].eq_ignore_ascii_case(b"application/grpc")
                && matches!(ct.get(16), None | Some(b'+' | b';'))
        })
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for Rejection {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_the_documented_fields() {
        let r = Rejection::rate_limited(42);
        let res = r.into_response_with_id("abc");
        assert_eq!(res.status(), 429);
        assert_eq!(res.headers()[header::RETRY_AFTER], "42");
        let v: serde_json::Value = serde_json::from_slice(res.body()).unwrap();
        assert_eq!(v["code"], "rate_limited");
        assert_eq!(v["request_id"], "abc");
        assert_eq!(v["retry_after"], 42);
        assert!(v["error"].is_string());
    }

    #[test]
    fn unauthorized_carries_the_bearer_challenge() {
        let r = Rejection::unauthorized(true);
        assert_eq!(
            r.header("www-authenticate").unwrap(),
            "Bearer error=\"invalid_token\""
        );
    }
}

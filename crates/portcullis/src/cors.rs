//! CORS with an exact-origin allowlist. (Interface; hardening in progress.)

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};

use crate::audit::AuditAction;
use crate::error::{Control, Rejection};
use crate::methods::MethodSet;

/// Why a CORS setting was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsError(pub String);

impl std::fmt::Display for CorsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CorsError {}

/// CORS settings.
#[derive(Debug, Clone, Default)]
pub struct Cors {
    origins: Vec<String>,
    credentials: bool,
}

impl Cors {
    /// No origin allowed yet.
    pub fn new() -> Self {
        Cors::default()
    }

    /// Allows one exact origin (`https://app.example.com`).
    pub fn allow_origin(mut self, origin: &str) -> Result<Self, CorsError> {
        self.origins.push(origin.to_string());
        Ok(self)
    }

    /// Sends `Access-Control-Allow-Credentials: true` to listed origins.
    pub fn allow_credentials(mut self, on: bool) -> Self {
        self.credentials = on;
        self
    }

    /// True when the request is a CORS preflight.
    pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
        method == Method::OPTIONS
            && headers.contains_key(header::ORIGIN)
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    }

    fn listed<'a>(&self, headers: &'a HeaderMap) -> Option<&'a HeaderValue> {
        let o = headers.get(header::ORIGIN)?;
        let s = o.to_str().ok()?;
        self.origins.iter().any(|x| x == s).then_some(o)
    }

    /// Answers a preflight: the response headers for 204, or a refusal.
    pub fn preflight(
        &self,
        headers: &HeaderMap,
        route: &MethodSet,
    ) -> Result<HeaderMap, Rejection> {
        let deny = || {
            Rejection::new(
                StatusCode::FORBIDDEN,
                "cors_preflight_denied",
                "Cross-origin request not allowed",
                AuditAction::SecurityEvent,
                Control::Cors,
            )
        };
        let origin = self.listed(headers).ok_or_else(deny)?;
        let _ = route;
        let mut out = HeaderMap::new();
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        out.insert(
            header::VARY,
            HeaderValue::from_static(
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        );
        Ok(out)
    }

    /// Adds the CORS headers for an actual (non-preflight) request.
    pub fn apply(&self, request: &HeaderMap, response: &mut HeaderMap) {
        response.append(header::VARY, HeaderValue::from_static("Origin"));
        if let Some(o) = self.listed(request) {
            response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o.clone());
            if self.credentials {
                response.insert(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
        }
    }
}

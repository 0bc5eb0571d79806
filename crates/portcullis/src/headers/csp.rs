//! Content-Security-Policy builder with a fresh nonce per response. (Interface; the full
//! validation is being written.)

use std::sync::Arc;

use http::HeaderValue;
use http::header::HeaderName;
use http::request::Parts;

/// A per-response nonce: 128 bits from the OS generator, base64.
#[derive(Clone, PartialEq, Eq)]
pub struct Nonce(Arc<str>);

impl Nonce {
    /// Draws a fresh nonce.
    pub fn generate() -> Nonce {
        use base64::Engine;
        let raw: [u8; 16] = crate::random::bytes();
        Nonce(Arc::from(
            base64::engine::general_purpose::STANDARD.encode(raw),
        ))
    }

    /// The nonce text (for `nonce="..."` attributes).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Nonce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Nonce(..)")
    }
}

/// Why a CSP was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CspError {
    /// The directive concerned.
    pub directive: String,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for CspError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CSP directive {:?}: {}", self.directive, self.reason)
    }
}

impl std::error::Error for CspError {}

/// A Content-Security-Policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Csp {
    directives: Vec<(String, Vec<String>)>,
    report_only: bool,
}

/// The nonce placeholder in a source list.
pub const NONCE_PLACEHOLDER: &str = "'nonce'";

impl Default for Csp {
    fn default() -> Self {
        Csp::parse("default-src 'self'; script-src 'self' 'nonce' 'strict-dynamic'; style-src 'self'; img-src 'self' data:; font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'")
            .expect("the default CSP is valid")
    }
}

impl Csp {
    /// Parses a policy string.
    pub fn parse(s: &str) -> Result<Csp, CspError> {
        let mut directives = Vec::new();
        for d in s.split(';') {
            let mut parts = d.split_whitespace();
            let Some(name) = parts.next() else { continue };
            directives.push((
                name.to_ascii_lowercase(),
                parts.map(str::to_string).collect(),
            ));
        }
        Ok(Csp {
            directives,
            report_only: false,
        })
    }

    /// True when the policy has a nonce placeholder.
    pub fn uses_nonce(&self) -> bool {
        self.directives
            .iter()
            .any(|(_, v)| v.iter().any(|s| s == NONCE_PLACEHOLDER))
    }

    /// The header this policy is sent as.
    pub fn header_name(&self) -> HeaderName {
        if self.report_only {
            http::header::CONTENT_SECURITY_POLICY_REPORT_ONLY
        } else {
            http::header::CONTENT_SECURITY_POLICY
        }
    }

    /// Renders the header value with `nonce` in place of the placeholder.
    pub fn render(&self, nonce: Option<&Nonce>) -> HeaderValue {
        let mut out = String::with_capacity(320);
        for (i, (name, values)) in self.directives.iter().enumerate() {
            if i > 0 {
                out.push_str("; ");
            }
            out.push_str(name);
            for v in values {
                out.push(' ');
                if v == NONCE_PLACEHOLDER {
                    if let Some(n) = nonce {
                        out.push_str("'nonce-");
                        out.push_str(n.as_str());
                        out.push('\'');
                    }
                } else {
                    out.push_str(v);
                }
            }
        }
        HeaderValue::from_str(&out)
            .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"))
    }
}

/// The nonce of the current response, for templates: an axum extractor.
#[derive(Debug, Clone)]
pub struct CspNonce(pub Nonce);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for CspNonce {
    type Rejection = axum::response::Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        use axum::response::IntoResponse;
        parts
            .extensions
            .get::<Nonce>()
            .cloned()
            .map(CspNonce)
            .ok_or_else(|| {
                let res = crate::Rejection::internal().into_response_with_id("");
                let (p, b) = res.into_parts();
                (p, b).into_response()
            })
    }
}

//! Security response headers with documented defaults (shared/DESIGN.md §4).
//!
//! | header | default |
//! |---|---|
//! | `Strict-Transport-Security` | `max-age=63072000; includeSubDomains` |
//! | `X-Content-Type-Options` | `nosniff` |
//! | `X-Frame-Options` | `DENY` |
//! | `Referrer-Policy` | `strict-origin-when-cross-origin` |
//! | `Permissions-Policy` | `camera=(), microphone=(), geolocation=(), payment=()` |
//! | `Cross-Origin-Opener-Policy` | `same-origin` |
//! | `Cross-Origin-Resource-Policy` | `same-origin` |
//! | `X-Permitted-Cross-Domain-Policies` | `none` |
//! | `X-XSS-Protection` | `0` (the old auditor is gone and `1; mode=block` caused leaks) |
//!
//! `Server`, `X-Powered-By` and other version banners are removed from responses. Each
//! default can be replaced with [`SecurityHeaders::set`] or dropped with
//! [`SecurityHeaders::remove`].
//!
//! ```
//! use portcullis::headers::security::SecurityHeaders;
//! let h = SecurityHeaders::default()
//!     .set("x-frame-options", "SAMEORIGIN").unwrap()
//!     .remove("permissions-policy");
//! let mut out = http::HeaderMap::new();
//! out.insert("server", "nginx/1.2".parse().unwrap());
//! h.apply(&mut out, true);
//! assert_eq!(out["x-frame-options"], "SAMEORIGIN");
//! assert!(!out.contains_key("permissions-policy"));
//! assert!(!out.contains_key("server"));
//! ```

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// When `Strict-Transport-Security` is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HstsMode {
    /// On every response (browsers ignore it over plain HTTP; use when TLS ends in front of
    /// the application and it cannot tell).
    #[default]
    Always,
    /// Only on responses to requests known to have come over HTTPS.
    HttpsOnly,
}

/// Why a header override was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderError {
    /// The header name as given.
    pub name: String,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "header {:?}: {}", self.name, self.reason)
    }
}

impl std::error::Error for HeaderError {}

/// The set of security headers put on responses.
#[derive(Debug, Clone)]
pub struct SecurityHeaders {
    set: Vec<(HeaderName, HeaderValue)>,
    hsts: Option<HeaderValue>,
    hsts_mode: HstsMode,
    strip: Vec<HeaderName>,
}

/// Response headers removed by default: version banners.
pub const BANNERS: [&str; 6] = [
    "server",
    "x-powered-by",
    "x-aspnet-version",
    "x-aspnetmvc-version",
    "x-generator",
    "x-runtime",
];

impl Default for SecurityHeaders {
    fn default() -> Self {
        let set = [
            ("x-content-type-options", "nosniff"),
            ("x-frame-options", "DENY"),
            ("referrer-policy", "strict-origin-when-cross-origin"),
            (
                "permissions-policy",
                "camera=(), microphone=(), geolocation=(), payment=()",
            ),
            ("cross-origin-opener-policy", "same-origin"),
            ("cross-origin-resource-policy", "same-origin"),
            ("x-permitted-cross-domain-policies", "none"),
            ("x-xss-protection", "0"),
        ]
        .into_iter()
        .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
        .collect();
        SecurityHeaders {
            set,
            hsts: Some(HeaderValue::from_static(
                "max-age=63072000; includeSubDomains",
            )),
            hsts_mode: HstsMode::Always,
            strip: BANNERS.iter().map(|n| HeaderName::from_static(n)).collect(),
        }
    }
}

impl SecurityHeaders {
    /// No headers at all (banners are still removed).
    pub fn none() -> Self {
        SecurityHeaders {
            set: Vec::new(),
            hsts: None,
            ..SecurityHeaders::default()
        }
    }

    /// Sets (or replaces) a header. `strict-transport-security` is accepted here too;
    /// `content-security-policy` is not (use [`Csp`](crate::Csp), which validates the policy
    /// and adds nonces).
    pub fn set(mut self, name: &str, value: &str) -> Result<Self, HeaderError> {
        let err = |reason: &str| HeaderError {
            name: name.to_string(),
            reason: reason.to_string(),
        };
        let n = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| err("not a valid header name"))?;
        if n == header::CONTENT_SECURITY_POLICY || n == header::CONTENT_SECURITY_POLICY_REPORT_ONLY
        {
            // One source of truth: a CSP set here would skip validation and nonces, and be
            // silently replaced whenever the layer's or the route's `Csp` applies.
            return Err(err(
                "set the CSP with headers::csp::Csp, not as a plain header",
            ));
        }
        let v = HeaderValue::from_str(value).map_err(|_| err("not a valid header value"))?;
        if n == header::STRICT_TRANSPORT_SECURITY {
            if !value.to_ascii_lowercase().contains("max-age=") {
                return Err(err("needs max-age="));
            }
            self.hsts = Some(v);
            return Ok(self);
        }
        self.set.retain(|(k, _)| *k != n);
        self.set.push((n, v));
        Ok(self)
    }

    /// Stops sending a header.
    pub fn remove(mut self, name: &str) -> Self {
        let lower = name.trim().to_ascii_lowercase();
        if lower == "strict-transport-security" {
            self.hsts = None;
        }
        self.set.retain(|(k, _)| k.as_str() != lower);
        self
    }

    /// Also removes `name` from every response (another banner).
    pub fn strip_from_responses(mut self, name: &str) -> Result<Self, HeaderError> {
        let n = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| HeaderError {
            name: name.to_string(),
            reason: "not a valid header name".to_string(),
        })?;
        self.strip.push(n);
        Ok(self)
    }

    /// Chooses when HSTS is sent.
    pub fn hsts_mode(mut self, mode: HstsMode) -> Self {
        self.hsts_mode = mode;
        self
    }

    /// The headers this set sends (HSTS included).
    pub fn entries(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        self.set.iter().map(|(n, v)| (n, v)).chain(
            self.hsts
                .iter()
                .map(|v| (&header::STRICT_TRANSPORT_SECURITY, v)),
        )
    }

    /// Puts the headers on a response and strips the banners. `https` tells whether the
    /// request came over HTTPS.
    pub fn apply(&self, headers: &mut HeaderMap, https: bool) {
        // Banners are rare: look before paying for a removal per name.
        if headers.keys().any(|k| self.strip.contains(k)) {
            for name in &self.strip {
                headers.remove(name);
            }
        }
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        if let Some(hsts) = &self.hsts
            && (https || self.hsts_mode == HstsMode::Always)
        {
            headers.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let mut h = HeaderMap::new();
        h.insert("x-powered-by", "Express".parse().unwrap());
        SecurityHeaders::default().apply(&mut h, false);
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["x-frame-options"], "DENY");
        assert_eq!(h["x-xss-protection"], "0");
        assert_eq!(
            h["strict-transport-security"],
            "max-age=63072000; includeSubDomains"
        );
        assert!(!h.contains_key("x-powered-by"));
    }

    #[test]
    fn hsts_only_over_https_when_asked() {
        let s = SecurityHeaders::default().hsts_mode(HstsMode::HttpsOnly);
        let mut h = HeaderMap::new();
        s.apply(&mut h, false);
        assert!(!h.contains_key("strict-transport-security"));
        s.apply(&mut h, true);
        assert!(h.contains_key("strict-transport-security"));
    }

    #[test]
    fn bad_overrides_are_refused() {
        assert!(SecurityHeaders::default().set("bad name", "x").is_err());
        assert!(SecurityHeaders::default().set("x-a", "a\nb").is_err());
        assert!(
            SecurityHeaders::default()
                .set("strict-transport-security", "1")
                .is_err()
        );
        assert!(
            SecurityHeaders::default()
                .set("Content-Security-Policy", "default-src *")
                .is_err()
        );
        assert!(
            SecurityHeaders::default()
                .set("content-security-policy-report-only", "default-src *")
                .is_err()
        );
    }
}

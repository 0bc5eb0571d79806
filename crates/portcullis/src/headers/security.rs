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

use std::sync::Arc;

use crate::headers::csp::{Nonce, RenderedCsp};
use crate::headers::nonce_html;
use crate::layer::AddedFields;
use crate::request_id::X_REQUEST_ID;

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

/// When `Strict-Transport-Security` is sent.
///
/// ```
/// use portcullis::headers::security::{HstsMode, SecurityHeaders};
/// let h = SecurityHeaders::default().hsts_mode(HstsMode::HttpsOnly);
/// let mut plain = http::HeaderMap::new();
/// h.apply(&mut plain, false);
/// assert!(!plain.contains_key("strict-transport-security"));
/// assert_eq!(HstsMode::default(), HstsMode::Always);
/// ```
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
///
/// ```
/// use portcullis::headers::security::SecurityHeaders;
/// let err = SecurityHeaders::default().set("x-frame-options", "DENY\n").unwrap_err();
/// assert_eq!(err.name, "x-frame-options");
/// assert_eq!(err.to_string(), r#"header "x-frame-options": not a valid header value"#);
/// ```
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
///
/// ```
/// use portcullis::headers::security::SecurityHeaders;
/// use portcullis::SecurityLayer;
/// let headers = SecurityHeaders::default().set("x-frame-options", "SAMEORIGIN")?;
/// let layer = SecurityLayer::builder().security_headers(Some(headers)).build().unwrap();
/// # Ok::<(), portcullis::headers::security::HeaderError>(())
/// ```
#[derive(Clone)]
pub struct SecurityHeaders {
    set: Vec<(HeaderName, HeaderValue)>,
    hsts: Option<HeaderValue>,
    hsts_mode: HstsMode,
    strip: Vec<HeaderName>,
    /// `set` as a header map, without and with HSTS: a response starts from a copy, which
    /// costs no hashing of the (mostly non-standard, long) names. Rebuilt by every builder.
    templates: [HeaderMap; 2],
    /// What each template holds of what [`Kept`] tells.
    template_kept: [Kept; 2],
    /// The same, for a writer that writes them itself ([`DeferredSecurityHeaders`]); `None`
    /// when the set holds a name the layer touches later or that frames a message.
    deferred: Option<[DeferredSecurityHeaders; 2]>,
    /// The [`name_bit`]s of every name set or stripped: most of a response's own names are
    /// told apart from these on one test.
    names: u128,
}

/// What a response's fields hold, of what the layer asks after [`SecurityHeaders::apply`]:
/// told by its pass over them instead of another.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Kept {
    /// A `Cache-Control` field.
    pub(crate) cache_control: bool,
    /// The first `Content-Type` is HTML or XHTML.
    pub(crate) html: bool,
}

impl Kept {
    /// What a template holds (its fields precede, and win over, the response's own).
    fn of_template(template: &HeaderMap) -> Kept {
        Kept {
            cache_control: template.contains_key(header::CACHE_CONTROL),
            html: template
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| nonce_html::html_media_type(v.as_bytes())),
        }
    }
}

/// A response's security headers, left by the layer for the HTTP/1 writer to write after
/// the response's own fields, when the request carried
/// [`DeferSecurityHeaders`](crate::layer::DeferSecurityHeaders) (a server that writes
/// HTTP/1 itself asks for this: the set then costs one copy of pre-encoded bytes instead
/// of a header map built per response). The layer leaves its later fields with them when
/// it can: the CSP with the response's nonce, the guards' fields (the rate limiter's
/// `RateLimit` and `RateLimit-Policy`), the policy's `Cache-Control: no-store` and
/// `x-request-id`. The response's own fields never hold a name the set, the CSP or the
/// request id replaces: the layer removed them, as it does when it applies the set.
///
/// ```
/// use portcullis::headers::security::SecurityHeaders;
/// let set = SecurityHeaders::default();
/// let mut fields = http::HeaderMap::new();
/// fields.insert("x-frame-options", "SAMEORIGIN".parse().unwrap()); // the set's value wins
/// fields.insert("content-type", "text/plain".parse().unwrap());
/// let deferred = set.defer(&mut fields, false).expect("the default set can be deferred");
/// assert_eq!(fields.len(), 1); // only the response's own
/// assert!(std::str::from_utf8(deferred.encoded()).unwrap().contains("x-frame-options: DENY\r\n"));
/// deferred.apply_to(&mut fields); // or put them in the map, for a writer that needs that
/// assert_eq!(fields["x-frame-options"], "DENY");
/// ```
#[derive(Clone)]
pub struct DeferredSecurityHeaders {
    set: Arc<Deferred>,
    /// The response's CSP, when the layer left that to the writer too.
    csp: Option<DeferredCsp>,
    /// The guards' fields, when the layer left those too (added after the response's own,
    /// as `HeaderMap::append` would).
    added: Option<AddedFields>,
    /// `Cache-Control: no-store`, when the layer left it too (the response had none).
    no_store: bool,
    /// The request id, when the layer left it too (in place of any the response had).
    request_id: Option<HeaderValue>,
}

/// A CSP field left to the writer: its name, the policy's text and the response's nonce.
#[derive(Clone)]
struct DeferredCsp {
    name: HeaderName,
    text: RenderedCsp,
    nonce: Option<Nonce>,
}

/// One allocation shared by every response of a set: a clone per response is one
/// reference count.
struct Deferred {
    fields: HeaderMap,
    /// The [`name_bit`]s of the field names: most names not in the set are told apart on
    /// one test, without hashing them.
    names: u128,
    /// `name: value\r\n` for each field.
    encoded: Vec<u8>,
}

impl std::fmt::Debug for DeferredSecurityHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeferredSecurityHeaders")
            .field("fields", &self.set.fields)
            .field("csp", &self.csp.as_ref().map(|c| &c.name))
            .field("added", &self.added)
            .field("no_store", &self.no_store)
            .field("request_id", &self.request_id)
            .finish_non_exhaustive()
    }
}

impl DeferredSecurityHeaders {
    fn new(fields: &HeaderMap) -> Self {
        let mut encoded = Vec::new();
        for (name, value) in fields {
            encoded.extend_from_slice(name.as_str().as_bytes());
            encoded.extend_from_slice(b": ");
            encoded.extend_from_slice(value.as_bytes());
            encoded.extend_from_slice(b"\r\n");
        }
        DeferredSecurityHeaders {
            set: Arc::new(Deferred {
                fields: fields.clone(),
                names: name_bits(fields.keys()),
                encoded,
            }),
            csp: None,
            added: None,
            no_store: false,
            request_id: None,
        }
    }

    /// The set's fields as HTTP/1 header lines, `name: value\r\n` each (without the CSP the
    /// layer may have left as well: [`DeferredSecurityHeaders::write_to`] writes both).
    ///
    /// ```
    /// use portcullis::headers::security::SecurityHeaders;
    /// let set = SecurityHeaders::none().set("x-frame-options", "DENY")?;
    /// let deferred = set.defer(&mut http::HeaderMap::new(), false).unwrap();
    /// assert_eq!(deferred.encoded(), b"x-frame-options: DENY\r\n");
    /// # Ok::<(), portcullis::headers::security::HeaderError>(())
    /// ```
    pub fn encoded(&self) -> &[u8] {
        &self.set.encoded
    }

    /// Appends every field left to the writer as HTTP/1 header lines: the set's
    /// ([`encoded`](DeferredSecurityHeaders::encoded)), then those the layer left too: the
    /// CSP with the response's nonce, the guards' fields, `Cache-Control: no-store`, the
    /// request id.
    ///
    /// ```
    /// use portcullis::headers::security::SecurityHeaders;
    /// let set = SecurityHeaders::none().set("x-frame-options", "DENY")?;
    /// let deferred = set.defer(&mut http::HeaderMap::new(), false).unwrap();
    /// let mut out = Vec::new();
    /// deferred.write_to(&mut out);
    /// assert_eq!(out, b"x-frame-options: DENY\r\n");
    /// # Ok::<(), portcullis::headers::security::HeaderError>(())
    /// ```
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.set.encoded);
        if let Some(c) = &self.csp {
            out.extend_from_slice(c.name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            c.text.write(c.nonce.as_ref(), out);
            out.extend_from_slice(b"\r\n");
        }
        let mut line = |name: &HeaderName, value: &HeaderValue| {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        };
        if let Some(added) = &self.added {
            added.for_each(&mut line);
        }
        if self.no_store {
            line(
                &header::CACHE_CONTROL,
                &HeaderValue::from_static("no-store"),
            );
        }
        if let Some(id) = &self.request_id {
            line(&X_REQUEST_ID, id);
        }
    }

    /// Leaves the response's CSP to the writer as well.
    pub(crate) fn defer_csp(&mut self, name: HeaderName, text: RenderedCsp, nonce: Option<Nonce>) {
        self.csp = Some(DeferredCsp { name, text, nonce });
    }

    /// Leaves the guards' fields to the writer as well (names [`deferrable`] and not the
    /// set's: the caller checks).
    pub(crate) fn defer_added(&mut self, added: AddedFields) {
        self.added = Some(added);
    }

    /// Leaves `Cache-Control: no-store` to the writer as well (the response has none).
    pub(crate) fn defer_no_store(&mut self) {
        self.no_store = true;
    }

    /// Leaves the request id to the writer as well.
    pub(crate) fn defer_request_id(&mut self, id: HeaderValue) {
        self.request_id = Some(id);
    }

    /// The set's fields (without a deferred CSP).
    ///
    /// ```
    /// use portcullis::headers::security::SecurityHeaders;
    /// let deferred = SecurityHeaders::default().defer(&mut http::HeaderMap::new(), true).unwrap();
    /// assert!(deferred.fields().contains_key("strict-transport-security"));
    /// ```
    pub fn fields(&self) -> &HeaderMap {
        &self.set.fields
    }

    /// Whether a field named `name` is left to the writer (the set's, the CSP, a guard's,
    /// `Cache-Control` or the request id).
    ///
    /// ```
    /// use portcullis::headers::security::SecurityHeaders;
    /// let deferred = SecurityHeaders::default().defer(&mut http::HeaderMap::new(), false).unwrap();
    /// assert!(deferred.contains(&http::header::X_FRAME_OPTIONS));
    /// assert!(!deferred.contains(&http::HeaderName::from_static("ratelimit")));
    /// ```
    pub fn contains(&self, name: &HeaderName) -> bool {
        (may_hold(self.set.names, name) && self.set.fields.contains_key(name))
            || self.csp.as_ref().is_some_and(|c| c.name == name)
            || self.added.as_ref().is_some_and(|a| a.contains(name))
            || (self.no_store && *name == header::CACHE_CONTROL)
            || (self.request_id.is_some() && *name == X_REQUEST_ID)
    }

    /// Puts the fields in `headers` (for a writer that takes a header map after all): the
    /// set's, then those the layer left too (the CSP and the request id replace any the map
    /// has; the guards' fields are added).
    ///
    /// ```
    /// use portcullis::headers::security::SecurityHeaders;
    /// let mut h = http::HeaderMap::new();
    /// let deferred = SecurityHeaders::default().defer(&mut h, false).unwrap();
    /// deferred.apply_to(&mut h);
    /// assert_eq!(h["x-content-type-options"], "nosniff");
    /// ```
    pub fn apply_to(&self, headers: &mut HeaderMap) {
        headers.reserve(self.set.fields.len() + 1);
        for (name, value) in self.set.fields.iter() {
            headers.append(name.clone(), value.clone());
        }
        if let Some(c) = &self.csp {
            headers.insert(c.name.clone(), c.text.value(c.nonce.as_ref()));
        }
        if let Some(added) = &self.added {
            added.for_each(|name, value| {
                headers.append(name.clone(), value.clone());
            });
        }
        if self.no_store {
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        if let Some(id) = &self.request_id {
            headers.insert(X_REQUEST_ID, id.clone());
        }
    }
}

/// A field name's bits in a name filter ([`Deferred::names`], `SecurityHeaders::names`):
/// bit `(length + first byte) % 64` of the low half and `(length + last byte) % 64` of the
/// high half. A name is possibly in the filter when both its bits are set: most names not
/// in it are told apart on one test, without hashing them (one bit alone let
/// `ratelimit-policy` pass for `permissions-policy`).
fn name_bit(name: &HeaderName) -> u128 {
    let n = name.as_str().as_bytes();
    let first = n.first().map_or(0, |&b| usize::from(b));
    let last = n.last().map_or(0, |&b| usize::from(b));
    (1u128 << ((n.len() + first) % 64)) | (1u128 << (64 + (n.len() + last) % 64))
}

/// Whether `name`'s bits are all in `filter` ([`name_bits`] of a set of names).
fn may_hold(filter: u128, name: &HeaderName) -> bool {
    let bits = name_bit(name);
    filter & bits == bits
}

/// The [`name_bit`]s of `names`, together.
fn name_bits<'a>(names: impl IntoIterator<Item = &'a HeaderName>) -> u128 {
    names.into_iter().fold(0, |bits, n| bits | name_bit(n))
}

/// Names a deferred set must not hold: those the layer reads or writes after it applies the
/// set (the content type, `Cache-Control`, `Vary`, CORS, the request id) and those an HTTP/1
/// writer frames a message with. A set holding one is applied to the header map instead;
/// so are the guards' fields when one has such a name.
pub(crate) fn deferrable(name: &HeaderName) -> bool {
    const RESERVED: [HeaderName; 10] = [
        header::CONTENT_TYPE,
        header::CACHE_CONTROL,
        header::VARY,
        header::DATE,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::CONNECTION,
        header::TRAILER,
        header::CONTENT_SECURITY_POLICY,
        header::CONTENT_SECURITY_POLICY_REPORT_ONLY,
    ];
    !RESERVED.contains(name)
        && name.as_str() != "x-request-id"
        && !name.as_str().starts_with("access-control-")
}

/// Room in a template's index for the response's own headers and the layer's later ones
/// (CSP, request id, rate-limit fields) without a regrowth.
const TEMPLATE_ROOM: usize = 24;

/// Response headers removed by default: version banners, and the fields that name the
/// software or the machine behind the gateway (a CMS, a cache, a backend host).
///
/// ```
/// use portcullis::headers::security::{BANNERS, SecurityHeaders};
/// let mut h = http::HeaderMap::new();
/// for b in BANNERS {
///     h.insert(b, "leaky/1.0".parse().unwrap());
/// }
/// SecurityHeaders::none().apply(&mut h, true);
/// assert!(h.is_empty());
/// ```
pub const BANNERS: [&str; 11] = [
    "server",
    "x-powered-by",
    "x-aspnet-version",
    "x-aspnetmvc-version",
    "x-generator",
    "x-runtime",
    "x-powered-cms",
    "x-drupal-cache",
    "x-drupal-dynamic-cache",
    "x-varnish",
    "x-backend-server",
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
            templates: Default::default(),
            template_kept: Default::default(),
            deferred: None,
            names: 0,
        }
        .with_templates()
    }
}

impl std::fmt::Debug for SecurityHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The templates repeat `set` and `hsts`.
        f.debug_struct("SecurityHeaders")
            .field("set", &self.set)
            .field("hsts", &self.hsts)
            .field("hsts_mode", &self.hsts_mode)
            .field("strip", &self.strip)
            .finish_non_exhaustive()
    }
}

impl SecurityHeaders {
    /// No headers at all (banners are still removed).
    ///
    /// ```
    /// use portcullis::headers::security::SecurityHeaders;
    /// let only_one = SecurityHeaders::none().set("x-content-type-options", "nosniff").unwrap();
    /// assert_eq!(only_one.entries().count(), 1);
    /// assert_eq!(SecurityHeaders::none().entries().count(), 0);
    /// ```
    pub fn none() -> Self {
        SecurityHeaders {
            set: Vec::new(),
            hsts: None,
            ..SecurityHeaders::default()
        }
        .with_templates()
    }

    fn with_templates(mut self) -> Self {
        let mut plain = HeaderMap::with_capacity(self.set.len() + 1 + TEMPLATE_ROOM);
        for (n, v) in &self.set {
            plain.insert(n.clone(), v.clone());
        }
        let mut secure = plain.clone();
        if let Some(hsts) = &self.hsts {
            secure.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
        self.deferred = secure.keys().all(deferrable).then(|| {
            [
                DeferredSecurityHeaders::new(&plain),
                DeferredSecurityHeaders::new(&secure),
            ]
        });
        self.names = name_bits(secure.keys().chain(&self.strip));
        self.template_kept = [Kept::of_template(&plain), Kept::of_template(&secure)];
        self.templates = [plain, secure];
        self
    }

    /// Sets (or replaces) a header. `strict-transport-security` is accepted here too;
    /// `content-security-policy` is not (use [`Csp`](crate::Csp), which validates the policy
    /// and adds nonces).
    ///
    /// ```
    /// use portcullis::headers::security::SecurityHeaders;
    /// let h = SecurityHeaders::default()
    ///     .set("strict-transport-security", "max-age=31536000")
    ///     .unwrap();
    /// let mut out = http::HeaderMap::new();
    /// h.apply(&mut out, true);
    /// assert_eq!(out["strict-transport-security"], "max-age=31536000");
    /// // The CSP has its own type.
    /// assert!(SecurityHeaders::default().set("content-security-policy", "default-src 'self'").is_err());
    /// ```
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
            return Ok(self.with_templates());
        }
        self.set.retain(|(k, _)| *k != n);
        self.set.push((n, v));
        Ok(self.with_templates())
    }

    /// Stops sending a header.
    ///
    /// ```
    /// use portcullis::headers::security::SecurityHeaders;
    /// let h = SecurityHeaders::default().remove("Strict-Transport-Security");
    /// let mut out = http::HeaderMap::new();
    /// h.apply(&mut out, true);
    /// assert!(!out.contains_key("strict-transport-security"));
    /// assert_eq!(out["x-content-type-options"], "nosniff");
    /// ```
    pub fn remove(mut self, name: &str) -> Self {
        let lower = name.trim().to_ascii_lowercase();
        if lower == "strict-transport-security" {
            self.hsts = None;
        }
        self.set.retain(|(k, _)| k.as_str() != lower);
        self.with_templates()
    }

    /// Also removes `name` from every response (another banner).
    ///
    /// ```
    /// use portcullis::headers::security::SecurityHeaders;
    /// let h = SecurityHeaders::default().strip_from_responses("x-backend-host")?;
    /// let mut out = http::HeaderMap::new();
    /// out.insert("x-backend-host", "app-7.internal".parse().unwrap());
    /// h.apply(&mut out, false);
    /// assert!(!out.contains_key("x-backend-host"));
    /// # Ok::<(), portcullis::headers::security::HeaderError>(())
    /// ```
    pub fn strip_from_responses(mut self, name: &str) -> Result<Self, HeaderError> {
        let n = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| HeaderError {
            name: name.to_string(),
            reason: "not a valid header name".to_string(),
        })?;
        self.strip.push(n);
        Ok(self.with_templates())
    }

    /// Chooses when HSTS is sent.
    ///
    /// ```
    /// use portcullis::headers::security::{HstsMode, SecurityHeaders};
    /// let h = SecurityHeaders::default().hsts_mode(HstsMode::HttpsOnly);
    /// let mut over_tls = http::HeaderMap::new();
    /// h.apply(&mut over_tls, true);
    /// assert_eq!(over_tls["strict-transport-security"], "max-age=63072000; includeSubDomains");
    /// ```
    pub fn hsts_mode(mut self, mode: HstsMode) -> Self {
        self.hsts_mode = mode;
        self
    }

    /// The headers this set sends (HSTS included).
    ///
    /// ```
    /// use portcullis::headers::security::SecurityHeaders;
    /// let headers = SecurityHeaders::default();
    /// let names: Vec<&str> = headers.entries().map(|(n, _)| n.as_str()).collect();
    /// assert_eq!(names.len(), 9);
    /// assert!(names.contains(&"x-frame-options") && names.contains(&"strict-transport-security"));
    /// ```
    pub fn entries(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        self.set.iter().map(|(n, v)| (n, v)).chain(
            self.hsts
                .iter()
                .map(|v| (&header::STRICT_TRANSPORT_SECURITY, v)),
        )
    }

    /// Whether HSTS goes on a response to a request that came over HTTPS or not.
    fn hsts_on(&self, https: bool) -> bool {
        self.hsts.is_some() && (https || self.hsts_mode == HstsMode::Always)
    }

    /// What [`SecurityHeaders::apply`] does, less adding the set: strips the banners and the
    /// response's own copies of the set's names from `headers`, and returns the set for the
    /// writer to write after them. `None` (and `headers` untouched) when this set cannot be
    /// deferred: one of its names is one the layer touches later or that frames a message
    /// (`Content-Type`, `Cache-Control`, `Vary`, `Date`, `Content-Length`, `Connection`, CORS,
    /// `X-Request-Id`…).
    ///
    /// ```
    /// use portcullis::headers::security::SecurityHeaders;
    /// let mut h = http::HeaderMap::new();
    /// h.insert("server", "nginx".parse().unwrap());
    /// h.insert("x-frame-options", "ALLOWALL".parse().unwrap());
    /// let deferred = SecurityHeaders::default().defer(&mut h, false).unwrap();
    /// assert!(h.is_empty()); // the banner and the copy of a set name are gone
    /// assert_eq!(deferred.fields()["x-frame-options"], "DENY");
    /// let no_store = SecurityHeaders::none().set("cache-control", "no-store")?;
    /// assert!(no_store.defer(&mut h, false).is_none()); // the layer decides Cache-Control later
    /// # Ok::<(), portcullis::headers::security::HeaderError>(())
    /// ```
    pub fn defer(&self, headers: &mut HeaderMap, https: bool) -> Option<DeferredSecurityHeaders> {
        let deferred = self.deferred.as_ref()?;
        let i = usize::from(self.hsts_on(https));
        let set = &self.templates[i];
        let gone = |n: &HeaderName| {
            may_hold(self.names, n) && (self.strip.contains(n) || set.contains_key(n))
        };
        if headers.keys().any(gone) {
            let names: Vec<HeaderName> = headers.keys().filter(|n| gone(n)).cloned().collect();
            for name in names {
                headers.remove(name);
            }
        }
        Some(deferred[i].clone())
    }

    /// Puts the headers on a response and strips the banners. `https` tells whether the
    /// request came over HTTPS.
    ///
    /// ```
    /// use portcullis::headers::security::SecurityHeaders;
    /// let mut h = http::HeaderMap::new();
    /// h.insert("x-powered-by", "Express".parse().unwrap());
    /// h.insert("x-frame-options", "SAMEORIGIN".parse().unwrap());
    /// SecurityHeaders::default().apply(&mut h, false);
    /// assert!(!h.contains_key("x-powered-by"));
    /// assert_eq!(h["x-frame-options"], "DENY"); // the set's value wins
    /// assert_eq!(h["strict-transport-security"], "max-age=63072000; includeSubDomains");
    /// ```
    pub fn apply(&self, headers: &mut HeaderMap, https: bool) {
        self.apply_noting(headers, https);
    }

    /// [`SecurityHeaders::apply`], telling what the result holds of what [`Kept`] tells: seen
    /// in its pass over the response's own fields, so the layer need not pass over the whole
    /// result again.
    pub(crate) fn apply_noting(&self, headers: &mut HeaderMap, https: bool) -> Kept {
        let hsts = self.hsts_on(https);
        // The result starts as a copy of the template; the response's own headers follow,
        // less the banners and the names the set replaces. Same result as removing the
        // banners and inserting each header, without hashing the set's names per response.
        let mut out = self.templates[usize::from(hsts)].clone();
        let mut kept = self.template_kept[usize::from(hsts)];
        out.reserve(headers.len());
        // Whether the current name's further values (drain yields `None` for them) are kept.
        let mut current: Option<HeaderName> = None;
        for (name, value) in headers.drain() {
            match name {
                Some(name) => {
                    current = None;
                    if self.strip.contains(&name) {
                        continue;
                    }
                    if let Entry::Vacant(v) = out.entry(&name) {
                        // The first value of a name the template lacks: the result's first.
                        if name == header::CACHE_CONTROL {
                            kept.cache_control = true;
                        } else if name == header::CONTENT_TYPE {
                            kept.html = nonce_html::html_media_type(value.as_bytes());
                        }
                        v.insert(value);
                        current = Some(name);
                    }
                }
                None => {
                    if let Some(name) = &current {
                        out.append(name, value);
                    }
                }
            }
        }
        *headers = out;
        kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `apply_noting` tells is what a pass over its result would find.
    #[test]
    fn apply_noting_tells_what_the_result_holds() {
        let own = |h: &HeaderMap| Kept {
            cache_control: h.contains_key(header::CACHE_CONTROL),
            html: h
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| nonce_html::html_media_type(v.as_bytes())),
        };
        let sets = [
            SecurityHeaders::default(),
            SecurityHeaders::default()
                .set("cache-control", "private")
                .unwrap(),
            SecurityHeaders::default()
                .set("content-type", "text/html")
                .unwrap(),
            SecurityHeaders::default()
                .strip_from_responses("content-type")
                .unwrap(),
            SecurityHeaders::default()
                .strip_from_responses("cache-control")
                .unwrap(),
        ];
        let responses: [&[(&str, &str)]; 5] = [
            &[],
            &[("content-type", "text/html; charset=utf-8")],
            &[
                ("content-type", "application/json"),
                ("cache-control", "max-age=60"),
            ],
            &[
                ("cache-control", "no-cache"),
                ("content-type", "application/xhtml+xml"),
            ],
            &[("x-other", "1")],
        ];
        for set in &sets {
            for fields in responses {
                for https in [false, true] {
                    let mut h = HeaderMap::new();
                    for (n, v) in fields {
                        h.append(*n, HeaderValue::from_static(v));
                    }
                    let kept = set.apply_noting(&mut h, https);
                    let want = own(&h);
                    assert_eq!(
                        (kept.cache_control, kept.html),
                        (want.cache_control, want.html),
                        "{fields:?} https={https}"
                    );
                }
            }
        }
    }

    #[test]
    fn deferred_contains_is_the_map_lookup() {
        let custom = SecurityHeaders::none()
            .set("ratelimit-policy", "x")
            .unwrap()
            .set("x-a", "1")
            .unwrap();
        for set in [SecurityHeaders::default(), custom] {
            for https in [false, true] {
                let d = set.defer(&mut HeaderMap::new(), https).unwrap();
                let mut names: Vec<HeaderName> = d.fields().keys().cloned().collect();
                for n in [
                    "ratelimit",
                    "ratelimit-policy",
                    "retry-after",
                    "x-b",
                    "set-cookie",
                    "vary",
                ] {
                    names.push(HeaderName::from_static(n));
                }
                for n in names {
                    assert_eq!(d.contains(&n), d.fields().contains_key(&n), "{n}");
                }
            }
        }
    }

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

    /// What `apply` did before it started from a template: remove the banners, insert each
    /// header. The template path must give the same fields.
    fn reference(s: &SecurityHeaders, headers: &mut HeaderMap, https: bool) {
        for name in &s.strip {
            headers.remove(name);
        }
        for (n, v) in &s.set {
            headers.insert(n.clone(), v.clone());
        }
        if let Some(hsts) = &s.hsts
            && (https || s.hsts_mode == HstsMode::Always)
        {
            headers.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
    }

    fn fields(h: &HeaderMap) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = h
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), v.as_bytes().to_vec()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_template_path_gives_the_same_fields_as_remove_and_insert() {
        let sets = [
            SecurityHeaders::default(),
            SecurityHeaders::default().hsts_mode(HstsMode::HttpsOnly),
            SecurityHeaders::none(),
            SecurityHeaders::default()
                .set("server", "portcullis")
                .unwrap()
                .set("x-frame-options", "SAMEORIGIN")
                .unwrap()
                .remove("permissions-policy")
                .strip_from_responses("x-debug")
                .unwrap(),
        ];
        let responses: [&[(&str, &str)]; 6] = [
            &[],
            &[
                ("content-type", "application/json"),
                ("content-length", "17"),
            ],
            // Upstream copies of the set's names lose every value to the set's one.
            &[
                ("x-frame-options", "ALLOW-FROM x"),
                ("x-frame-options", "SAMEORIGIN"),
                ("set-cookie", "a=1"),
            ],
            // Repeated fields are kept whole, banners go with all their values.
            &[
                ("set-cookie", "a=1"),
                ("set-cookie", "b=2"),
                ("server", "nginx"),
                ("server", "again"),
                ("x-powered-by", "Express"),
                ("vary", "origin"),
                ("x-debug", "1"),
                ("vary", "accept"),
            ],
            // The upstream's own HSTS stays where the set sends none.
            &[("strict-transport-security", "max-age=5")],
            &[("referrer-policy", "no-referrer"), ("x-custom", "z")],
        ];
        for s in &sets {
            for r in responses {
                for https in [false, true] {
                    let mut h = HeaderMap::new();
                    for (n, v) in r {
                        h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
                    }
                    let mut want = h.clone();
                    reference(s, &mut want, https);
                    s.apply(&mut h, https);
                    assert_eq!(fields(&h), fields(&want), "{s:?} on {r:?}, https {https}");
                }
            }
        }
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

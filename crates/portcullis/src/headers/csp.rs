//! Content-Security-Policy: a validated builder, and a fresh nonce per response.
//!
//! A [`Csp`] is checked as it is built, so a typo fails at start-up instead of silently
//! weakening the policy in browsers (which skip what they do not understand): unknown
//! directives, bare keywords (`self` for `'self'`), unknown quoted tokens, separators or
//! whitespace inside a source, duplicate directives, `'none'` mixed with other sources, fixed
//! nonces, malformed hashes and values on value-less directives are all refused with a
//! [`CspError`] that names the directive and the reason.
//!
//! Script and style directives take the placeholder `'nonce'` ([`NONCE_PLACEHOLDER`]; TOML
//! users may also write `'nonce-{nonce}'`). Each response gets its own [`Nonce`] in its place;
//! handlers read it with the [`CspNonce`] extractor. The policy text is rendered once, split
//! around the placeholder, so a response only pastes its nonce in.
//!
//! The default ([`Csp::default`], shared/DESIGN.md §4):
//!
//! ```text
//! default-src 'self'; script-src 'self' 'nonce' 'strict-dynamic'; style-src 'self';
//! img-src 'self' data:; font-src 'self'; connect-src 'self'; object-src 'none';
//! base-uri 'self'; form-action 'self'; frame-ancestors 'none'
//! ```
//!
//! ```
//! use portcullis::{Csp, Nonce};
//! use portcullis::headers::csp::CspError;
//!
//! let csp = Csp::default()
//!     .set("img-src", ["'self'", "data:", "https://images.example.com"])?
//!     .remove("font-src");
//! let nonce = Nonce::generate();
//! let value = csp.render(Some(&nonce));
//! let text = value.to_str().unwrap();
//! assert!(text.contains(&format!("script-src 'self' 'nonce-{}' 'strict-dynamic'", nonce.as_str())));
//! assert!(text.contains("img-src 'self' data: https://images.example.com"));
//!
//! // Mistakes are refused with the directive and the reason.
//! let err = Csp::new().directive("script-src", ["self"]).unwrap_err();
//! assert_eq!(err.to_string(), r#"CSP directive "script-src": keyword self must be quoted: 'self'"#);
//! assert!(Csp::parse("script-src 'self'; script-src https:").is_err());
//! # Ok::<(), CspError>(())
//! ```

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use bytes::Bytes;
use http::HeaderValue;
use http::header::HeaderName;
use http::request::Parts;

/// The nonce placeholder in a source list, replaced by `'nonce-<base64>'` in each response.
///
/// ```
/// use portcullis::{Csp, headers::csp::NONCE_PLACEHOLDER};
/// let csp = Csp::new().directive("script-src", ["'self'", NONCE_PLACEHOLDER]).unwrap();
/// assert!(csp.uses_nonce());
/// ```
pub const NONCE_PLACEHOLDER: &str = "'nonce'";

/// The placeholder's alias spelling, for config files that template `{nonce}`.
const NONCE_ALIAS: &str = "nonce-{nonce}";

/// Random bytes per nonce: 128 bits, the CSP3 recommendation.
const NONCE_BYTES: usize = 16;

/// Length of a nonce in padded base64.
const NONCE_TEXT: usize = NONCE_BYTES.div_ceil(3) * 4;

/// Standard padded base64 of a nonce's bytes, on the stack (a nonce is this text, inline).
fn nonce_text(raw: &[u8; NONCE_BYTES]) -> [u8; NONCE_TEXT] {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut text = [b'='; NONCE_TEXT];
    for (group, out) in raw.chunks(3).zip(text.chunks_mut(4)) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        // One sextet per input byte, plus one: the rest of the group stays `=`.
        for (i, o) in out.iter_mut().take(group.len() + 1).enumerate() {
            *o = ALPHABET[(n >> (18 - 6 * i) & 63) as usize];
        }
    }
    text
}

/// The DESIGN §4 policy.
const DEFAULT_POLICY: &str = "default-src 'self'; script-src 'self' 'nonce' 'strict-dynamic'; \
    style-src 'self'; img-src 'self' data:; font-src 'self'; connect-src 'self'; \
    object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'";

/// A per-response nonce: 128 bits from the OS generator, standard base64.
///
/// Its `Debug` output never shows the value, so it cannot end up in logs by accident.
///
/// ```
/// use portcullis::Nonce;
/// let n = Nonce::generate();
/// assert_eq!(n.as_str().len(), 24);
/// assert_ne!(n, Nonce::generate());
/// assert_eq!(format!("{n:?}"), "Nonce([redacted])");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Nonce([u8; NONCE_TEXT]);

impl Nonce {
    /// Draws a fresh nonce.
    ///
    /// ```
    /// use portcullis::Nonce;
    /// let (a, b) = (Nonce::generate(), Nonce::generate());
    /// assert_ne!(a, b); // a fresh one for every response
    /// assert_eq!(a.as_str().len(), 24);
    /// ```
    pub fn generate() -> Nonce {
        let raw: [u8; NONCE_BYTES] = crate::random::bytes();
        // Kept inline: a copy of 24 bytes for the request's extensions and the response's
        // policy, no allocation and no shared count.
        Nonce(nonce_text(&raw))
    }

    /// The nonce the layer gave a request: its [`Nonce`] extension, or its
    /// [`RequestContext`](crate::layer::RequestContext)'s.
    ///
    /// ```
    /// use portcullis::Nonce;
    /// let mut ext = http::Extensions::new();
    /// assert!(Nonce::of(&ext).is_none());
    /// ext.insert(Nonce::generate());
    /// assert!(Nonce::of(&ext).is_some());
    /// ```
    pub fn of(extensions: &http::Extensions) -> Option<&Nonce> {
        // The context first: the gateway's layer inserts that, and one lookup finds it.
        extensions
            .get::<crate::layer::RequestContext>()
            .and_then(|c| c.nonce.as_ref())
            .or_else(|| extensions.get::<Nonce>())
    }

    /// The nonce text, for `nonce="..."` attributes.
    ///
    /// ```
    /// let n = portcullis::Nonce::generate();
    /// let tag = format!(r#"<script nonce="{}">"#, n.as_str());
    /// assert!(tag.contains(n.as_str()));
    /// ```
    pub fn as_str(&self) -> &str {
        // The alphabet and `=` are ASCII, so this cannot fail.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Nonce([redacted])")
    }
}

/// Why a CSP was refused: the directive concerned and what is wrong.
///
/// ```
/// use portcullis::Csp;
/// let err = Csp::parse("img-src 'self'; scrpt-src 'self'").unwrap_err();
/// assert_eq!(err.directive, "scrpt-src");
/// assert_eq!(err.reason, "not a known CSP directive");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CspError {
    /// The directive concerned (empty for the policy as a whole).
    pub directive: String,
    /// What is wrong.
    pub reason: String,
}

impl CspError {
    fn new(directive: &str, reason: impl Into<String>) -> CspError {
        CspError {
            directive: directive.to_string(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for CspError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.directive.is_empty() {
            write!(f, "CSP: {}", self.reason)
        } else {
            write!(f, "CSP directive {:?}: {}", self.directive, self.reason)
        }
    }
}

impl std::error::Error for CspError {}

/// What a directive's value may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A source list. `script_like`: script/style keywords and hashes have an effect;
    /// `nonce`: the nonce placeholder has an effect.
    Sources { script_like: bool, nonce: bool },
    /// `frame-ancestors`: hosts, schemes, `'self'` or `'none'` only.
    Ancestors,
    /// No value at all.
    Flag,
    /// `allow-*` tokens.
    Sandbox,
    /// One or more URIs.
    ReportUri,
    /// One endpoint name.
    ReportTo,
    /// `'script'`.
    RequireTrustedTypesFor,
    /// Policy names, `*`, `'allow-duplicates'` or `'none'`.
    TrustedTypes,
    /// `'allow'` or `'block'`.
    Webrtc,
}

const SCRIPT_NONCE: Kind = Kind::Sources {
    script_like: true,
    nonce: true,
};
const SCRIPT_ATTR: Kind = Kind::Sources {
    script_like: true,
    nonce: false,
};
const PLAIN: Kind = Kind::Sources {
    script_like: false,
    nonce: false,
};

/// CSP Level 3 directives plus the common ones browsers still honour.
const DIRECTIVES: [(&str, Kind); 29] = [
    ("default-src", SCRIPT_NONCE),
    ("script-src", SCRIPT_NONCE),
    ("script-src-elem", SCRIPT_NONCE),
    ("script-src-attr", SCRIPT_ATTR),
    ("style-src", SCRIPT_NONCE),
    ("style-src-elem", SCRIPT_NONCE),
    ("style-src-attr", SCRIPT_ATTR),
    ("img-src", PLAIN),
    ("font-src", PLAIN),
    ("connect-src", PLAIN),
    ("media-src", PLAIN),
    ("object-src", PLAIN),
    ("frame-src", PLAIN),
    ("child-src", PLAIN),
    ("worker-src", PLAIN),
    ("manifest-src", PLAIN),
    ("prefetch-src", PLAIN),
    ("fenced-frame-src", PLAIN),
    ("base-uri", PLAIN),
    ("form-action", PLAIN),
    ("frame-ancestors", Kind::Ancestors),
    ("sandbox", Kind::Sandbox),
    ("report-uri", Kind::ReportUri),
    ("report-to", Kind::ReportTo),
    ("upgrade-insecure-requests", Kind::Flag),
    ("block-all-mixed-content", Kind::Flag),
    ("require-trusted-types-for", Kind::RequireTrustedTypesFor),
    ("trusted-types", Kind::TrustedTypes),
    ("webrtc", Kind::Webrtc),
];

/// Quoted keywords of source lists; `true` marks those that only affect scripts and styles.
const KEYWORDS: [(&str, bool); 10] = [
    ("self", false),
    ("none", false),
    ("unsafe-inline", true),
    ("unsafe-eval", true),
    ("strict-dynamic", true),
    ("unsafe-hashes", true),
    ("report-sample", true),
    ("wasm-unsafe-eval", true),
    ("unsafe-allow-redirects", false),
    ("inline-speculation-rules", true),
];

/// Hash algorithms and their digest sizes in bytes.
const HASHES: [(&str, usize); 3] = [("sha256", 32), ("sha384", 48), ("sha512", 64)];

const SANDBOX_TOKENS: [&str; 14] = [
    "allow-downloads",
    "allow-forms",
    "allow-modals",
    "allow-orientation-lock",
    "allow-pointer-lock",
    "allow-popups",
    "allow-popups-to-escape-sandbox",
    "allow-presentation",
    "allow-same-origin",
    "allow-scripts",
    "allow-storage-access-by-user-activation",
    "allow-top-navigation",
    "allow-top-navigation-by-user-activation",
    "allow-top-navigation-to-custom-protocols",
];

// CSP3 allows both base64 alphabets in hash sources, with or without padding.
const B64_CONFIG: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const B64_STANDARD: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::STANDARD, B64_CONFIG);
const B64_URL_SAFE: GeneralPurpose = GeneralPurpose::new(&base64::alphabet::URL_SAFE, B64_CONFIG);

#[derive(Debug, Clone, PartialEq, Eq)]
struct Directive {
    name: &'static str,
    sources: Vec<String>,
}

/// The policy text rendered once, split where the nonce goes.
#[derive(Clone)]
struct Rendered {
    /// `pieces.len() - 1` nonces go between the pieces, each as ` 'nonce-<b64>'`.
    pieces: Box<[Box<str>]>,
    /// Total length of the pieces.
    len: usize,
    /// The value without a nonce: for policies without a placeholder and error responses.
    plain: HeaderValue,
}

/// A policy's rendered text, shared (a clone is one reference count), for a writer that
/// writes the field itself: what a response's field is made of, with its nonce.
#[derive(Clone)]
pub(crate) struct RenderedCsp(Arc<Rendered>);

impl RenderedCsp {
    /// The field value with `nonce` in place of the placeholder ([`Csp::render`]).
    pub(crate) fn value(&self, nonce: Option<&Nonce>) -> HeaderValue {
        self.0.value(nonce)
    }

    /// Appends the field value's bytes to `out`, as [`RenderedCsp::value`] would make them.
    pub(crate) fn write(&self, nonce: Option<&Nonce>, out: &mut Vec<u8>) {
        let r = &self.0;
        match r.with_nonce(nonce) {
            Some((first, rest, n)) => {
                out.extend_from_slice(first.as_bytes());
                for piece in rest {
                    out.extend_from_slice(b" 'nonce-");
                    out.extend_from_slice(n);
                    out.push(b'\'');
                    out.extend_from_slice(piece.as_bytes());
                }
            }
            None => out.extend_from_slice(r.plain.as_bytes()),
        }
    }
}

/// The policy's text before the first nonce, the pieces after each, and the nonce's bytes.
type NoncePieces<'a> = (&'a str, &'a [Box<str>], &'a [u8]);

impl Rendered {
    /// The pieces to paste `nonce` between, or `None` when the plain text is the value (no
    /// nonce, or no placeholder).
    fn with_nonce<'a>(&'a self, nonce: Option<&'a Nonce>) -> Option<NoncePieces<'a>> {
        let (first, rest) = self.pieces.split_first()?;
        let nonce = nonce?;
        // The bytes, not `as_str`: no UTF-8 check of text that is base64 by construction.
        (!rest.is_empty()).then(|| (&**first, rest, &nonce.0[..]))
    }

    /// The field value with `nonce` in place of the placeholder.
    fn value(&self, nonce: Option<&Nonce>) -> HeaderValue {
        let Some((first, rest, n)) = self.with_nonce(nonce) else {
            return self.plain.clone();
        };
        // " 'nonce-" + n + "'": the exact length, so the bytes take the vector over as is.
        let mut out = Vec::with_capacity(self.len + rest.len() * (n.len() + 9));
        out.extend_from_slice(first.as_bytes());
        for piece in rest {
            out.extend_from_slice(b" 'nonce-");
            out.extend_from_slice(n);
            out.push(b'\'');
            out.extend_from_slice(piece.as_bytes());
        }
        // Sources are validated visible ASCII and nonces base64, so this cannot fail; if it
        // did, the nonce-less value is the safe side (no inline script runs).
        HeaderValue::from_maybe_shared(Bytes::from(out)).unwrap_or_else(|_| self.plain.clone())
    }
}

/// A validated Content-Security-Policy.
///
/// Build it from [`Csp::default`] (DESIGN §4), [`Csp::new`] (empty) or [`Csp::parse`], then
/// adjust it with [`directive`](Csp::directive), [`set`](Csp::set), [`remove`](Csp::remove) and
/// [`report_only`](Csp::report_only). Give it to
/// [`SecurityLayerBuilder::csp`](crate::SecurityLayerBuilder::csp) or to a route's
/// [`Policy::csp`](crate::Policy::csp).
///
/// ```
/// use portcullis::Csp;
/// let csp = Csp::new()
///     .directive("default-src", ["'none'"])?
///     .directive("script-src", ["'self'", "'nonce'"])?
///     .directive("connect-src", ["'self'", "https://api.example.com"])?
///     .directive("upgrade-insecure-requests", [])?;
/// assert_eq!(
///     csp.to_string(),
///     "default-src 'none'; script-src 'self' 'nonce'; connect-src 'self' https://api.example.com; upgrade-insecure-requests"
/// );
/// # Ok::<(), portcullis::headers::csp::CspError>(())
/// ```
#[derive(Clone)]
pub struct Csp {
    directives: Vec<Directive>,
    report_only: bool,
    rendered: Arc<Rendered>,
}

impl PartialEq for Csp {
    fn eq(&self, other: &Csp) -> bool {
        self.directives == other.directives && self.report_only == other.report_only
    }
}

impl Eq for Csp {}

impl fmt::Debug for Csp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Csp")
            .field("policy", &self.to_string())
            .field("report_only", &self.report_only)
            .finish()
    }
}

impl Default for Csp {
    /// The DESIGN §4 policy, with the nonce placeholder in `script-src`.
    ///
    /// ```
    /// use portcullis::Csp;
    /// let csp = Csp::default();
    /// assert!(csp.uses_nonce());
    /// assert_eq!(csp.get("object-src"), Some(&["'none'".to_string()][..]));
    /// ```
    fn default() -> Self {
        Csp::parse(DEFAULT_POLICY).expect("the default CSP is valid (checked by unit tests)")
    }
}

impl FromStr for Csp {
    type Err = CspError;

    /// Same as [`Csp::parse`].
    fn from_str(s: &str) -> Result<Csp, CspError> {
        Csp::parse(s)
    }
}

impl fmt::Display for Csp {
    /// The policy text with the placeholder (`'nonce'`); [`Csp::parse`] reads it back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.directives.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            f.write_str(d.name)?;
            for s in &d.sources {
                f.write_str(" ")?;
                f.write_str(s)?;
            }
        }
        Ok(())
    }
}

impl Csp {
    /// An empty policy, to build up with [`Csp::directive`].
    ///
    /// ```
    /// let csp = portcullis::Csp::new();
    /// assert_eq!(csp.directives().count(), 0);
    /// assert!(!csp.uses_nonce());
    /// ```
    pub fn new() -> Csp {
        let mut csp = Csp {
            directives: Vec::new(),
            report_only: false,
            rendered: Arc::new(Rendered {
                pieces: Box::new([]),
                len: 0,
                plain: HeaderValue::from_static(""),
            }),
        };
        csp.render_text();
        csp
    }

    /// Parses a policy such as the one in DESIGN §4, with `'nonce'` (or `'nonce-{nonce}'`)
    /// where the per-response nonce goes. Directives are separated by `;`, sources by any
    /// ASCII whitespace (so a policy may span lines in a config file); an empty directive
    /// (`;;`, a trailing `;`) is skipped. Every rule of [`Csp::directive`] applies, duplicate
    /// directives included.
    ///
    /// ```
    /// use portcullis::Csp;
    /// let csp = Csp::parse("default-src 'self';\n  script-src 'self' 'nonce-{nonce}';")?;
    /// assert_eq!(csp.to_string(), "default-src 'self'; script-src 'self' 'nonce'");
    /// assert!(Csp::parse("script-src 'self' 'nonce-abc'").is_err());
    /// # Ok::<(), portcullis::headers::csp::CspError>(())
    /// ```
    pub fn parse(s: &str) -> Result<Csp, CspError> {
        let mut csp = Csp::new();
        for d in s.split(';') {
            let mut tokens = d.split_ascii_whitespace();
            let Some(name) = tokens.next() else { continue };
            csp = csp.directive(name, tokens)?;
        }
        if csp.directives.is_empty() {
            return Err(CspError::new("", "the policy has no directives"));
        }
        Ok(csp)
    }

    /// Adds a directive; refuses one the policy already has (use [`Csp::set`] to replace).
    ///
    /// The name must be a known CSP directive (any case). Each source is one token: a quoted
    /// keyword (`'self'`, `'none'`, `'unsafe-inline'`, `'strict-dynamic'`, ...), the nonce
    /// placeholder `'nonce'`, a hash `'sha256-<base64>'`, a scheme (`https:`, `data:`), a host
    /// (`https://*.example.com:443/path`) or `*`. Refused: bare keywords, unknown quoted
    /// tokens, fixed `'nonce-…'` values, `;` `,` whitespace or control characters inside a
    /// source, `'none'` with other sources, an empty source list, the placeholder outside
    /// script/style directives, and sources on `upgrade-insecure-requests` and
    /// `block-all-mixed-content`.
    ///
    /// ```
    /// use portcullis::Csp;
    /// let csp = Csp::new().directive("Style-Src", ["'self'", "'SHA256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='"])?;
    /// assert_eq!(csp.to_string(), "style-src 'self' 'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='");
    /// assert!(csp.clone().directive("style-src", ["https:"]).is_err());
    /// assert!(Csp::new().directive("img-src", ["'none'", "data:"]).is_err());
    /// # Ok::<(), portcullis::headers::csp::CspError>(())
    /// ```
    pub fn directive<'a>(
        mut self,
        name: &str,
        sources: impl IntoIterator<Item = &'a str>,
    ) -> Result<Csp, CspError> {
        let d = validate(name, sources)?;
        if self.directives.iter().any(|x| x.name == d.name) {
            return Err(CspError::new(
                d.name,
                "duplicate directive (browsers ignore all but the first); use Csp::set to replace it",
            ));
        }
        self.directives.push(d);
        self.render_text();
        Ok(self)
    }

    /// Sets a directive, replacing it in place if present (appending otherwise). Same rules
    /// as [`Csp::directive`].
    ///
    /// ```
    /// use portcullis::Csp;
    /// let csp = Csp::default().set("frame-ancestors", ["'self'", "https://partner.example"])?;
    /// assert!(csp.to_string().ends_with("frame-ancestors 'self' https://partner.example"));
    /// # Ok::<(), portcullis::headers::csp::CspError>(())
    /// ```
    pub fn set<'a>(
        mut self,
        name: &str,
        sources: impl IntoIterator<Item = &'a str>,
    ) -> Result<Csp, CspError> {
        let d = validate(name, sources)?;
        match self.directives.iter_mut().find(|x| x.name == d.name) {
            Some(slot) => *slot = d,
            None => self.directives.push(d),
        }
        self.render_text();
        Ok(self)
    }

    /// Removes a directive (any case); absent ones are ignored.
    ///
    /// ```
    /// use portcullis::Csp;
    /// let csp = Csp::default().remove("FONT-SRC");
    /// assert_eq!(csp.get("font-src"), None);
    /// ```
    #[must_use]
    pub fn remove(mut self, name: &str) -> Csp {
        let name = name.trim();
        self.directives
            .retain(|d| !d.name.eq_ignore_ascii_case(name));
        self.render_text();
        self
    }

    /// Sends the policy as `Content-Security-Policy-Report-Only` (browsers report violations
    /// but enforce nothing) instead of `Content-Security-Policy`.
    ///
    /// ```
    /// use portcullis::Csp;
    /// let csp = Csp::default().report_only(true);
    /// assert_eq!(csp.header_name(), "content-security-policy-report-only");
    /// ```
    #[must_use]
    pub fn report_only(mut self, on: bool) -> Csp {
        self.report_only = on;
        self
    }

    /// True when the policy is sent as report-only.
    ///
    /// ```
    /// assert!(!portcullis::Csp::default().is_report_only());
    /// ```
    pub fn is_report_only(&self) -> bool {
        self.report_only
    }

    /// The directives in order, each with its sources (the placeholder as `'nonce'`).
    ///
    /// ```
    /// use portcullis::Csp;
    /// let csp = Csp::default();
    /// let names: Vec<&str> = csp.directives().map(|(name, _)| name).collect();
    /// assert_eq!(names[..2], ["default-src", "script-src"]);
    /// ```
    pub fn directives(&self) -> impl Iterator<Item = (&str, &[String])> + '_ {
        self.directives
            .iter()
            .map(|d| (d.name, d.sources.as_slice()))
    }

    /// The sources of one directive (any case), if the policy has it.
    ///
    /// ```
    /// use portcullis::Csp;
    /// let csp = Csp::default();
    /// assert_eq!(csp.get("script-src").unwrap(), ["'self'", "'nonce'", "'strict-dynamic'"]);
    /// ```
    pub fn get(&self, name: &str) -> Option<&[String]> {
        self.directives
            .iter()
            .find(|d| d.name.eq_ignore_ascii_case(name.trim()))
            .map(|d| d.sources.as_slice())
    }

    /// True when the policy has a nonce placeholder (so each response needs a fresh nonce).
    ///
    /// ```
    /// use portcullis::Csp;
    /// assert!(Csp::default().uses_nonce());
    /// assert!(!Csp::parse("default-src 'self'").unwrap().uses_nonce());
    /// ```
    pub fn uses_nonce(&self) -> bool {
        self.rendered.pieces.len() > 1
    }

    /// The header this policy is sent as.
    ///
    /// ```
    /// assert_eq!(portcullis::Csp::default().header_name(), http::header::CONTENT_SECURITY_POLICY);
    /// ```
    pub fn header_name(&self) -> HeaderName {
        if self.report_only {
            http::header::CONTENT_SECURITY_POLICY_REPORT_ONLY
        } else {
            http::header::CONTENT_SECURITY_POLICY
        }
    }

    /// The header value with `nonce` in place of the placeholder. Without a nonce the
    /// placeholder is left out, which is stricter: no inline script or style runs.
    ///
    /// Runs on every response, so it only pastes the nonce between precomputed pieces.
    ///
    /// ```
    /// use portcullis::{Csp, Nonce};
    /// let csp = Csp::parse("script-src 'nonce' 'strict-dynamic'; object-src 'none'")?;
    /// let n = Nonce::generate();
    /// assert_eq!(
    ///     csp.render(Some(&n)),
    ///     format!("script-src 'nonce-{}' 'strict-dynamic'; object-src 'none'", n.as_str()).as_str()
    /// );
    /// assert_eq!(csp.render(None), "script-src 'strict-dynamic'; object-src 'none'");
    /// # Ok::<(), portcullis::headers::csp::CspError>(())
    /// ```
    pub fn render(&self, nonce: Option<&Nonce>) -> HeaderValue {
        self.rendered.value(nonce)
    }

    /// The rendered text, shared, for a writer that writes the field itself.
    pub(crate) fn rendered(&self) -> RenderedCsp {
        RenderedCsp(self.rendered.clone())
    }

    /// Recomputes the rendered pieces after a change (build time, not per response).
    fn render_text(&mut self) {
        let mut pieces = Vec::new();
        let mut current = String::new();
        for (i, d) in self.directives.iter().enumerate() {
            if i > 0 {
                current.push_str("; ");
            }
            current.push_str(d.name);
            for s in &d.sources {
                if s == NONCE_PLACEHOLDER {
                    pieces.push(std::mem::take(&mut current).into_boxed_str());
                } else {
                    current.push(' ');
                    current.push_str(s);
                }
            }
        }
        pieces.push(current.into_boxed_str());
        let plain: String = pieces.concat();
        let len = plain.len();
        let plain = HeaderValue::from_maybe_shared(Bytes::from(plain))
            .unwrap_or_else(|_| HeaderValue::from_static("default-src 'none'"));
        self.rendered = Arc::new(Rendered {
            pieces: pieces.into_boxed_slice(),
            len,
            plain,
        });
    }
}

/// Checks a directive and normalises its sources (lower-case keywords, the placeholder).
fn validate<'a>(
    name: &str,
    sources: impl IntoIterator<Item = &'a str>,
) -> Result<Directive, CspError> {
    let lower = name.trim().to_ascii_lowercase();
    let Some(&(name, kind)) = DIRECTIVES.iter().find(|(n, _)| *n == lower) else {
        let suggestion = lower.replace('_', "-");
        let reason = match DIRECTIVES.iter().find(|(n, _)| *n == suggestion) {
            Some((n, _)) => format!("not a known CSP directive (did you mean {n}?)"),
            None => "not a known CSP directive".to_string(),
        };
        return Err(CspError::new(name.trim(), reason));
    };
    let err = |reason: String| CspError::new(name, reason);

    let mut out: Vec<String> = Vec::new();
    for src in sources {
        check_chars(src).map_err(err)?;
        let normal = match kind {
            Kind::Sources { script_like, nonce } => {
                source_expression(name, src, script_like, nonce).map_err(err)?
            }
            Kind::Ancestors => ancestor_source(src).map_err(err)?,
            Kind::Flag => return Err(err(format!("takes no value (got {src})"))),
            Kind::Sandbox => sandbox_token(src).map_err(err)?,
            Kind::ReportUri => report_uri(src).map_err(err)?,
            Kind::ReportTo => report_to(src).map_err(err)?,
            Kind::RequireTrustedTypesFor => {
                if src.eq_ignore_ascii_case("'script'") {
                    "'script'".to_string()
                } else {
                    return Err(err(format!("only 'script' is allowed (got {src})")));
                }
            }
            Kind::TrustedTypes => trusted_types_token(src).map_err(err)?,
            Kind::Webrtc => match src.to_ascii_lowercase().as_str() {
                "'allow'" | "'block'" => src.to_ascii_lowercase(),
                _ => return Err(err(format!("must be 'allow' or 'block' (got {src})"))),
            },
        };
        if out.contains(&normal) {
            return Err(err(format!("{normal} is listed twice")));
        }
        out.push(normal);
    }

    match kind {
        Kind::Sources { .. } | Kind::Ancestors if out.is_empty() => {
            return Err(err(
                "needs at least one source (write 'none' to allow nothing)".to_string(),
            ));
        }
        Kind::ReportUri if out.is_empty() => {
            return Err(err("needs at least one URI".to_string()));
        }
        Kind::ReportTo if out.len() != 1 => {
            return Err(err("takes exactly one endpoint name".to_string()));
        }
        Kind::RequireTrustedTypesFor | Kind::Webrtc if out.len() != 1 => {
            return Err(err("takes exactly one value".to_string()));
        }
        _ => {}
    }
    if out.len() > 1 && out.iter().any(|s| s == "'none'") {
        return Err(err(
            "'none' cannot be combined with other sources".to_string()
        ));
    }
    Ok(Directive { name, sources: out })
}

/// The rules every token shares: one printable ASCII word that cannot end the directive or
/// start a second policy.
fn check_chars(src: &str) -> Result<(), String> {
    if src.is_empty() {
        return Err("empty source".to_string());
    }
    for c in src.chars() {
        let problem = match c {
            ';' => "contains ';', which would end the directive",
            ',' => "contains ',', which would start a second policy",
            c if c.is_whitespace() => "contains whitespace; give each source separately",
            c if c.is_control() => "contains a control character",
            c if !c.is_ascii() => "contains non-ASCII characters (write hosts in punycode)",
            _ => continue,
        };
        return Err(format!("source {src:?} {problem}"));
    }
    Ok(())
}

/// The inside of a quoted token, or `None` for a bare one.
fn quoted(src: &str) -> Result<Option<&str>, String> {
    let Some(rest) = src.strip_prefix('\'') else {
        if src.contains('\'') {
            return Err(format!("stray quote in {src}"));
        }
        return Ok(None);
    };
    match rest.strip_suffix('\'') {
        Some(inner) if !inner.is_empty() && !inner.contains('\'') => Ok(Some(inner)),
        _ => Err(format!("unterminated or malformed quote in {src}")),
    }
}

fn keyword(word: &str) -> Option<(&'static str, bool)> {
    KEYWORDS
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(word))
        .copied()
}

/// A source-list entry, normalised.
fn source_expression(
    directive: &str,
    src: &str,
    script_like: bool,
    nonce_ok: bool,
) -> Result<String, String> {
    let Some(inner) = quoted(src)? else {
        return bare_source(src);
    };
    let lower = inner.to_ascii_lowercase();
    if let Some((k, script_only)) = keyword(inner) {
        if script_only && !script_like {
            return Err(format!(
                "'{k}' has no effect in {directive}; it applies to script and style directives"
            ));
        }
        return Ok(format!("'{k}'"));
    }
    if lower == "nonce" || lower == NONCE_ALIAS {
        if !nonce_ok {
            return Err(format!(
                "{NONCE_PLACEHOLDER} has no effect in {directive}; nonces apply to default-src, \
                 script-src, style-src and their -elem forms"
            ));
        }
        return Ok(NONCE_PLACEHOLDER.to_string());
    }
    if lower.starts_with("nonce-") {
        return Err(format!(
            "a fixed nonce ({src}) can be replayed by an attacker; write {NONCE_PLACEHOLDER} \
             and a fresh nonce is put in each response"
        ));
    }
    if let Some(&(alg, size)) = HASHES
        .iter()
        .find(|(alg, _)| lower.starts_with(alg) && lower.as_bytes().get(alg.len()) == Some(&b'-'))
    {
        if !script_like {
            return Err(format!(
                "hash sources have no effect in {directive}; they apply to script and style directives"
            ));
        }
        let b64 = &inner[alg.len() + 1..];
        let decoded = B64_STANDARD
            .decode(b64)
            .or_else(|_| B64_URL_SAFE.decode(b64))
            .map_err(|_| format!("{src} is not valid base64"))?;
        if decoded.len() != size {
            return Err(format!(
                "{src} is not a {alg} digest (decodes to {} bytes, expected {size})",
                decoded.len()
            ));
        }
        return Ok(format!("'{alg}-{b64}'"));
    }
    Err(format!("unknown quoted token {src}"))
}

/// `*`, a scheme or a host source; bare keywords are refused (`self` would be a host name).
fn bare_source(src: &str) -> Result<String, String> {
    if let Some((k, _)) = keyword(src) {
        return Err(format!("keyword {k} must be quoted: '{k}'"));
    }
    let lower = src.to_ascii_lowercase();
    if lower == "nonce" || lower.starts_with("nonce-") {
        return Err(format!(
            "nonce sources must be quoted; write {NONCE_PLACEHOLDER}"
        ));
    }
    if let Some((alg, _)) = HASHES
        .iter()
        .find(|(alg, _)| lower.starts_with(alg) && lower.as_bytes().get(alg.len()) == Some(&b'-'))
    {
        return Err(format!("hash sources must be quoted: '{alg}-…'"));
    }
    if src == "*" || is_scheme_source(src) || is_host_source(src) {
        return Ok(src.to_string());
    }
    Err(format!(
        "{src} is not a valid source (expected a quoted keyword, a scheme like https:, \
         a host like https://cdn.example.com, or *)"
    ))
}

fn ancestor_source(src: &str) -> Result<String, String> {
    match quoted(src)? {
        Some(inner) => match keyword(inner) {
            Some((k @ ("self" | "none"), _)) => Ok(format!("'{k}'")),
            _ => Err(format!(
                "frame-ancestors accepts only 'self', 'none', hosts and schemes (got {src})"
            )),
        },
        None => bare_source(src),
    }
}

fn is_scheme(s: &str) -> bool {
    let mut b = s.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphabetic())
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
}

fn is_scheme_source(s: &str) -> bool {
    s.strip_suffix(':').is_some_and(is_scheme)
}

/// CSP3 host-source: `[scheme://]host[:port][/path]`, host `*`, `*.example.com` or labels of
/// letters, digits and `-` (no IP-literal brackets: CSP has none).
fn is_host_source(s: &str) -> bool {
    let rest = match s.split_once("://") {
        Some((scheme, rest)) if is_scheme(scheme) => rest,
        Some(_) => return false,
        None => s,
    };
    let host_end = rest.find([':', '/']).unwrap_or(rest.len());
    let (host, mut rest) = rest.split_at(host_end);
    if !is_host(host) {
        return false;
    }
    if let Some(after) = rest.strip_prefix(':') {
        let end = after.find('/').unwrap_or(after.len());
        let port = &after[..end];
        let port_ok = port == "*"
            || (!port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()));
        if !port_ok {
            return false;
        }
        rest = &after[end..];
    }
    rest.is_empty()
        || (rest.starts_with('/')
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&()*+=:@/%".contains(&b)))
}

fn is_host(h: &str) -> bool {
    if h == "*" {
        return true;
    }
    let h = h.strip_prefix("*.").unwrap_or(h);
    let h = h.strip_suffix('.').unwrap_or(h);
    !h.is_empty()
        && h.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn sandbox_token(src: &str) -> Result<String, String> {
    let lower = src.to_ascii_lowercase();
    if SANDBOX_TOKENS.contains(&lower.as_str()) {
        Ok(lower)
    } else {
        Err(format!("unknown sandbox token {src}"))
    }
}

fn report_uri(src: &str) -> Result<String, String> {
    if quoted(src)?.is_some() {
        return Err(format!(
            "report-uri takes URIs, not quoted tokens (got {src})"
        ));
    }
    let ok = src.starts_with('/') || src.split_once("://").is_some_and(|(s, _)| is_scheme(s));
    if ok {
        Ok(src.to_string())
    } else {
        Err(format!("{src} is not an absolute URI or a path"))
    }
}

fn report_to(src: &str) -> Result<String, String> {
    let ok = src
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(src.to_string())
    } else {
        Err(format!("{src} is not a reporting endpoint name"))
    }
}

fn trusted_types_token(src: &str) -> Result<String, String> {
    match quoted(src)? {
        Some(inner) => match inner.to_ascii_lowercase().as_str() {
            k @ ("none" | "allow-duplicates") => Ok(format!("'{k}'")),
            _ => Err(format!("unknown quoted token {src}")),
        },
        None if src == "*" => Ok(src.to_string()),
        None => {
            let ok = src.bytes().all(|b| {
                b.is_ascii_alphanumeric()
                    || matches!(b, b'-' | b'#' | b'=' | b'_' | b'/' | b'@' | b'.' | b'%')
            });
            if !ok {
                return Err(format!("{src} is not a Trusted Types policy name"));
            }
            let lower = src.to_ascii_lowercase();
            if lower == "none" || lower == "allow-duplicates" {
                return Err(format!("keyword {lower} must be quoted: '{lower}'"));
            }
            Ok(src.to_string())
        }
    }
}

/// The nonce of the current response, for templates: an axum extractor.
///
/// [`SecurityLayer`](crate::SecurityLayer) draws a fresh [`Nonce`] for every request whose
/// route's CSP has the placeholder, and puts the same nonce in the response's CSP header.
/// Put it on the `<script>` and `<style>` tags you write; injected ones lack it and are
/// blocked.
///
/// If the route has no nonce (no CSP, `CspSetting::Off`, or a CSP without `'nonce'`), the
/// extractor answers 500 with the usual JSON error: a template that expects a nonce would
/// otherwise send scripts the browser blocks. Take `Option<CspNonce>` to handle both.
///
/// ```
/// use axum::{Router, response::Html, routing::get};
/// use portcullis::{CspNonce, Preset, SecurityLayer};
///
/// async fn page(nonce: CspNonce) -> Html<String> {
///     Html(format!(
///         r#"<!doctype html><script nonce="{}">console.log("hello")</script>"#,
///         nonce.as_str()
///     ))
/// }
///
/// let app: Router = Router::new()
///     .route("/", get(page))
///     .layer(SecurityLayer::new(Preset::Public));
///
/// # use tower::ServiceExt;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let req = http::Request::get("/").body(axum::body::Body::empty()).unwrap();
/// let res = app.oneshot(req).await.unwrap();
/// let csp = res.headers()["content-security-policy"].to_str().unwrap().to_owned();
/// let body = axum::body::to_bytes(res.into_body(), 1 << 16).await.unwrap();
/// let nonce = std::str::from_utf8(&body).unwrap().split('"').nth(1).unwrap().to_owned();
/// assert!(csp.contains(&format!("'nonce-{nonce}'")));
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct CspNonce(pub Nonce);

impl CspNonce {
    /// The nonce text, for `nonce="..."` attributes.
    ///
    /// ```
    /// let n = portcullis::CspNonce(portcullis::Nonce::generate());
    /// assert_eq!(n.as_str(), n.0.as_str());
    /// ```
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for CspNonce {
    type Rejection = axum::response::Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        if let Some(n) = Nonce::of(&parts.extensions) {
            return Ok(CspNonce(n.clone()));
        }
        // A configuration error, not the client's: say so in the log, not the response.
        tracing::error!(
            path = parts.uri.path(),
            "CspNonce used on a route whose CSP has no 'nonce' placeholder"
        );
        let id = crate::RequestId::of(&parts.extensions)
            .map(|r| r.as_str().to_string())
            .unwrap_or_default();
        Err(crate::Rejection::internal()
            .into_response_with_id(&id)
            .map(axum::body::Body::from))
    }
}

impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for CspNonce {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(Nonce::of(&parts.extensions).cloned().map(CspNonce))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESIGN_TEXT: &str = "default-src 'self'; script-src 'self' 'nonce' 'strict-dynamic'; style-src 'self'; img-src 'self' data:; font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'";

    fn one(name: &str, sources: &[&str]) -> Result<Csp, CspError> {
        Csp::new().directive(name, sources.iter().copied())
    }

    fn reason(name: &str, sources: &[&str]) -> String {
        let e = one(name, sources).expect_err("should be refused");
        assert_eq!(e.directive, name, "the error names the directive");
        e.reason
    }

    const SHA256: &str = "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='";

    // --- the default and parsing ---

    #[test]
    fn default_is_the_design_policy_with_the_placeholder() {
        let csp = Csp::default();
        assert_eq!(csp.to_string(), DESIGN_TEXT);
        assert!(csp.uses_nonce());
        assert!(!csp.is_report_only());
    }

    #[test]
    fn parse_accepts_the_design_policy_and_round_trips() {
        let csp = Csp::parse(DESIGN_TEXT).unwrap();
        assert_eq!(csp, Csp::default());
        assert_eq!(Csp::parse(&csp.to_string()).unwrap(), csp);
        assert_eq!(DESIGN_TEXT.parse::<Csp>().unwrap(), csp);
    }

    #[test]
    fn nonce_template_spelling_is_the_placeholder() {
        let text = DESIGN_TEXT.replace("'nonce'", "'nonce-{nonce}'");
        assert_eq!(Csp::parse(&text).unwrap(), Csp::default());
        let csp = one("script-src", &["'NONCE'"]).unwrap();
        assert_eq!(csp.get("script-src").unwrap(), [NONCE_PLACEHOLDER]);
    }

    #[test]
    fn parse_takes_any_whitespace_and_skips_empty_directives() {
        let csp = Csp::parse(";\n default-src\t'self' ;; img-src 'self'\r\n data: ;").unwrap();
        assert_eq!(csp.to_string(), "default-src 'self'; img-src 'self' data:");
    }

    #[test]
    fn parse_refuses_an_empty_policy() {
        let e = Csp::parse("  ; ").unwrap_err();
        assert_eq!(e.directive, "");
        assert_eq!(e.to_string(), "CSP: the policy has no directives");
    }

    #[test]
    fn names_and_keywords_are_case_insensitive_and_normalised() {
        let csp = Csp::parse("DEFAULT-SRC 'SELF' 'Unsafe-Inline'; Img-Src HTTPS://CDN.Example.com")
            .unwrap();
        assert_eq!(
            csp.to_string(),
            "default-src 'self' 'unsafe-inline'; img-src HTTPS://CDN.Example.com"
        );
    }

    // --- the builder ---

    #[test]
    fn builder_adds_sets_and_removes_directives() {
        let csp = Csp::new()
            .directive("default-src", ["'self'"])
            .unwrap()
            .directive("img-src", ["'self'"])
            .unwrap()
            .set("default-src", ["'none'"])
            .unwrap()
            .set("connect-src", ["https://api.example.com"])
            .unwrap()
            .remove("img-src")
            .remove("frame-src");
        assert_eq!(
            csp.to_string(),
            "default-src 'none'; connect-src https://api.example.com"
        );
        let list: Vec<(&str, Vec<&str>)> = csp
            .directives()
            .map(|(n, s)| (n, s.iter().map(String::as_str).collect()))
            .collect();
        assert_eq!(
            list,
            [
                ("default-src", vec!["'none'"]),
                ("connect-src", vec!["https://api.example.com"])
            ]
        );
    }

    #[test]
    fn set_validates_like_directive() {
        assert!(Csp::default().set("script-src", ["self"]).is_err());
    }

    #[test]
    fn removing_the_placeholder_directive_turns_nonces_off() {
        let csp = Csp::default().remove("script-src");
        assert!(!csp.uses_nonce());
        let csp = csp.set("script-src", ["'nonce'"]).unwrap();
        assert!(csp.uses_nonce());
    }

    #[test]
    fn report_only_changes_only_the_header_name() {
        let csp = Csp::default().report_only(true);
        assert!(csp.is_report_only());
        assert_eq!(
            csp.header_name(),
            http::header::CONTENT_SECURITY_POLICY_REPORT_ONLY
        );
        assert_eq!(csp.render(None), Csp::default().render(None));
        assert_eq!(
            csp.report_only(false).header_name(),
            http::header::CONTENT_SECURITY_POLICY
        );
    }

    // --- rendering ---

    #[test]
    fn render_puts_the_nonce_where_the_placeholder_is() {
        let n = Nonce::generate();
        let v = Csp::default().render(Some(&n));
        let want = DESIGN_TEXT.replace("'nonce'", &format!("'nonce-{}'", n.as_str()));
        assert_eq!(v.to_str().unwrap(), want);
    }

    #[test]
    fn render_without_a_nonce_leaves_the_placeholder_out() {
        let v = Csp::default().render(None);
        assert_eq!(
            v.to_str().unwrap(),
            DESIGN_TEXT.replace(" 'nonce'", "").as_str()
        );
        let only = one("script-src", &["'nonce'"]).unwrap();
        assert_eq!(only.render(None), "script-src");
        let n = Nonce::generate();
        assert_eq!(
            only.render(Some(&n)).to_str().unwrap(),
            format!("script-src 'nonce-{}'", n.as_str())
        );
    }

    #[test]
    fn render_uses_one_nonce_in_every_directive_with_the_placeholder() {
        let csp =
            Csp::parse("default-src 'nonce'; script-src 'self' 'nonce'; style-src 'nonce' 'self'")
                .unwrap();
        let n = Nonce::generate();
        let v = csp.render(Some(&n));
        let t = format!("'nonce-{}'", n.as_str());
        assert_eq!(
            v.to_str().unwrap(),
            format!("default-src {t}; script-src 'self' {t}; style-src {t} 'self'")
        );
    }

    #[test]
    fn a_policy_without_placeholder_ignores_the_nonce() {
        let csp = Csp::parse("default-src 'self'").unwrap();
        assert!(!csp.uses_nonce());
        assert_eq!(csp.render(Some(&Nonce::generate())), "default-src 'self'");
        assert_eq!(csp.render(None), "default-src 'self'");
    }

    #[test]
    fn an_empty_policy_renders_empty() {
        assert_eq!(Csp::new().render(Some(&Nonce::generate())), "");
        assert_eq!(Csp::new().to_string(), "");
    }

    #[test]
    fn debug_shows_the_policy_text() {
        let d = format!("{:?}", Csp::default());
        assert!(d.contains("frame-ancestors 'none'"), "{d}");
    }

    // --- nonces ---

    #[test]
    fn nonce_text_is_standard_padded_base64() {
        use base64::Engine;
        let mut cases = vec![[0u8; NONCE_BYTES], [0xff; NONCE_BYTES]];
        cases.extend((0..=255u8).map(|b| std::array::from_fn(|i| b.wrapping_mul(i as u8 + 1))));
        for _ in 0..256 {
            cases.push(crate::random::bytes());
        }
        for raw in cases {
            let want = base64::engine::general_purpose::STANDARD.encode(raw);
            assert_eq!(std::str::from_utf8(&nonce_text(&raw)).unwrap(), want);
        }
    }

    #[test]
    fn nonce_is_128_bits_of_standard_base64_and_debug_hides_it() {
        let n = Nonce::generate();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(n.as_str())
            .unwrap();
        assert_eq!(raw.len(), NONCE_BYTES);
        let d = format!("{n:?}");
        assert!(!d.contains(n.as_str()));
        assert_eq!(d, "Nonce([redacted])");
        assert!(!format!("{:?}", CspNonce(n.clone())).contains(n.as_str()));
    }

    #[test]
    fn nonces_are_fresh() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            assert!(seen.insert(Nonce::generate().as_str().to_string()));
        }
    }

    // --- validation: directive names ---

    #[test]
    fn every_listed_directive_is_known() {
        for (name, kind) in DIRECTIVES {
            let sources: &[&str] = match kind {
                Kind::Sources { .. } | Kind::Ancestors => &["'self'"],
                Kind::Flag => &[],
                Kind::Sandbox => &["allow-scripts"],
                Kind::ReportUri => &["/csp-reports"],
                Kind::ReportTo => &["csp-endpoint"],
                Kind::RequireTrustedTypesFor => &["'script'"],
                Kind::TrustedTypes => &["default"],
                Kind::Webrtc => &["'block'"],
            };
            assert!(one(name, sources).is_ok(), "{name}");
        }
    }

    #[test]
    fn unknown_directive_is_refused() {
        assert_eq!(
            reason("scrpt-src", &["'self'"]),
            "not a known CSP directive"
        );
        assert_eq!(reason("plugin-types", &[]), "not a known CSP directive");
        assert_eq!(
            reason("script_src", &["'self'"]),
            "not a known CSP directive (did you mean script-src?)"
        );
        assert!(Csp::parse("default-src 'self'; navigate-to 'self'").is_err());
    }

    #[test]
    fn duplicate_directive_is_refused() {
        let csp = one("script-src", &["'self'"]).unwrap();
        let e = csp.directive("Script-Src", ["https:"]).unwrap_err();
        assert_eq!(e.directive, "script-src");
        assert!(e.reason.contains("duplicate directive"), "{}", e.reason);
        let e = Csp::parse("script-src 'self'; img-src 'self'; script-src https:").unwrap_err();
        assert_eq!(e.directive, "script-src");
        assert!(e.reason.contains("duplicate directive"));
    }

    // --- validation: keywords and quoted tokens ---

    #[test]
    fn bare_keywords_must_be_quoted() {
        for (k, script_only) in KEYWORDS {
            let d = if script_only {
                "script-src"
            } else {
                "default-src"
            };
            assert_eq!(
                reason(d, &[k]),
                format!("keyword {k} must be quoted: '{k}'"),
                "{k}"
            );
        }
        assert_eq!(
            reason("script-src", &["SELF"]),
            "keyword self must be quoted: 'self'"
        );
        assert_eq!(
            Csp::parse("script-src self").unwrap_err().to_string(),
            "CSP directive \"script-src\": keyword self must be quoted: 'self'"
        );
    }

    #[test]
    fn every_quoted_keyword_is_accepted_in_script_src() {
        for (k, _) in KEYWORDS {
            if k == "none" {
                continue;
            }
            let q = format!("'{k}'");
            assert!(one("script-src", &[q.as_str()]).is_ok(), "{k}");
        }
    }

    #[test]
    fn unknown_quoted_token_is_refused() {
        assert_eq!(
            reason("script-src", &["'unsafe'"]),
            "unknown quoted token 'unsafe'"
        );
        assert_eq!(
            reason("script-src", &["'https:'"]),
            "unknown quoted token 'https:'"
        );
        assert!(reason("script-src", &["'self"]).contains("unterminated"));
        assert!(reason("script-src", &["''"]).contains("malformed"));
        assert!(reason("script-src", &["'se'lf'"]).contains("malformed"));
        assert!(reason("script-src", &["self'"]).contains("stray quote"));
    }

    #[test]
    fn script_keywords_only_in_script_and_style_directives() {
        assert_eq!(
            reason("img-src", &["'unsafe-inline'"]),
            "'unsafe-inline' has no effect in img-src; it applies to script and style directives"
        );
        assert!(reason("connect-src", &["'strict-dynamic'"]).contains("no effect"));
        assert!(one("style-src", &["'unsafe-inline'"]).is_ok());
        assert!(one("default-src", &["'unsafe-eval'"]).is_ok());
        assert!(one("script-src-attr", &["'unsafe-hashes'", SHA256]).is_ok());
    }

    // --- validation: characters inside a source ---

    #[test]
    fn separators_whitespace_and_control_characters_are_refused() {
        let cases = [
            ("'self';", "contains ';'"),
            ("https:,", "contains ','"),
            ("'self' https:", "contains whitespace"),
            ("a\tb", "contains whitespace"),
            ("a\nb", "contains whitespace"),
            ("a\0b", "contains a control character"),
            ("a\x7fb", "contains a control character"),
            ("https://bücher.example", "non-ASCII"),
            ("", "empty source"),
        ];
        for (src, want) in cases {
            let r = reason("default-src", &[src]);
            assert!(r.contains(want), "{src:?}: {r}");
        }
        assert!(Csp::parse("default-src 'self', script-src 'self'").is_err());
    }

    // --- validation: source lists ---

    #[test]
    fn none_cannot_be_combined_with_other_sources() {
        assert_eq!(
            reason("object-src", &["'none'", "'self'"]),
            "'none' cannot be combined with other sources"
        );
        assert!(reason("frame-ancestors", &["https://a.example", "'none'"]).contains("'none'"));
        assert!(one("object-src", &["'none'"]).is_ok());
    }

    #[test]
    fn an_empty_source_list_is_refused() {
        assert_eq!(
            reason("script-src", &[]),
            "needs at least one source (write 'none' to allow nothing)"
        );
        assert!(Csp::parse("default-src 'self'; img-src").is_err());
    }

    #[test]
    fn a_source_listed_twice_is_refused() {
        assert_eq!(
            reason("img-src", &["'self'", "'SELF'"]),
            "'self' is listed twice"
        );
        assert!(reason("script-src", &["'nonce'", "'nonce-{nonce}'"]).contains("twice"));
    }

    #[test]
    fn a_fixed_nonce_is_refused() {
        let r = reason("script-src", &["'nonce-abc123'"]);
        assert!(r.starts_with("a fixed nonce ('nonce-abc123')"), "{r}");
        assert!(r.contains("write 'nonce'"), "{r}");
        assert!(reason("script-src", &["'nonce-N'"]).contains("fixed nonce"));
        assert!(reason("script-src", &["nonce-abc"]).contains("must be quoted"));
    }

    #[test]
    fn the_placeholder_only_goes_where_nonces_work() {
        for d in [
            "default-src",
            "script-src",
            "script-src-elem",
            "style-src",
            "style-src-elem",
        ] {
            assert!(one(d, &["'nonce'"]).is_ok(), "{d}");
        }
        for d in [
            "img-src",
            "connect-src",
            "script-src-attr",
            "style-src-attr",
            "base-uri",
        ] {
            assert!(reason(d, &["'nonce'"]).contains("has no effect"), "{d}");
        }
    }

    #[test]
    fn hashes_must_be_valid_base64_digests() {
        let csp = one("script-src", &[SHA256]).unwrap();
        assert_eq!(csp.get("script-src").unwrap(), [SHA256]);
        // URL-safe alphabet and missing padding are valid CSP3 spellings.
        assert!(
            one(
                "script-src",
                &["'sha256-47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU'"]
            )
            .is_ok()
        );
        let sha384 = format!("'sha384-{}'", "A".repeat(64));
        let sha512 = format!("'sha512-{}=='", "A".repeat(86));
        assert!(one("style-src", &[sha384.as_str(), sha512.as_str()]).is_ok());
        // Algorithm names are case-insensitive and normalised.
        let up = SHA256.replace("sha256", "SHA256");
        assert_eq!(
            one("script-src", &[up.as_str()])
                .unwrap()
                .get("script-src")
                .unwrap(),
            [SHA256]
        );

        assert_eq!(
            reason("script-src", &["'sha256-not*base64'"]),
            "'sha256-not*base64' is not valid base64"
        );
        assert_eq!(
            reason("script-src", &["'sha256-AAAA'"]),
            "'sha256-AAAA' is not a sha256 digest (decodes to 3 bytes, expected 32)"
        );
        assert!(reason("script-src", &["'sha256-'"]).contains("expected 32"));
        assert!(reason("script-src", &["'sha1-AAAA'"]).contains("unknown quoted token"));
        assert!(reason("script-src", &["sha256-AAAA"]).contains("must be quoted"));
        assert!(reason("img-src", &[SHA256]).contains("no effect in img-src"));
    }

    #[test]
    fn hosts_schemes_and_wildcards_are_accepted() {
        let ok = [
            "*",
            "https:",
            "data:",
            "blob:",
            "wss:",
            "example.com",
            "*.example.com",
            "https://cdn.example.com",
            "https://*.example.com:443",
            "http://localhost:3000",
            "ws://localhost:*",
            "https://cdn.example.com/js/",
            "https://cdn.example.com/lib.js",
            "127.0.0.1:8080",
            "example.com.",
        ];
        for src in ok {
            assert!(one("connect-src", &[src]).is_ok(), "{src}");
        }
    }

    #[test]
    fn malformed_hosts_are_refused() {
        let bad = [
            "https://",
            "http://[::1]:8080",
            "https://exa_mple.com",
            "https://example.com:port",
            "https://example.com:123456",
            "https://example.com/a?b",
            "example..com",
            "**.example.com",
            "1http://x.com",
            ":",
        ];
        for src in bad {
            let r = reason("connect-src", &[src]);
            assert!(r.contains("is not a valid source"), "{src}: {r}");
        }
    }

    #[test]
    fn frame_ancestors_takes_only_self_none_hosts_and_schemes() {
        assert!(one("frame-ancestors", &["'self'", "https://partner.example"]).is_ok());
        assert!(one("frame-ancestors", &["'none'"]).is_ok());
        for src in [
            "'unsafe-inline'",
            "'nonce'",
            SHA256,
            "'unsafe-allow-redirects'",
        ] {
            assert!(
                reason("frame-ancestors", &[src]).starts_with("frame-ancestors accepts only"),
                "{src}"
            );
        }
        assert!(reason("frame-ancestors", &["none"]).contains("must be quoted"));
    }

    // --- validation: the other directive kinds ---

    #[test]
    fn value_less_directives_take_no_sources() {
        for d in ["upgrade-insecure-requests", "block-all-mixed-content"] {
            assert!(one(d, &[]).is_ok(), "{d}");
            assert_eq!(reason(d, &["'self'"]), "takes no value (got 'self')");
        }
        let csp = Csp::parse("default-src 'self'; upgrade-insecure-requests").unwrap();
        assert_eq!(csp.get("upgrade-insecure-requests").unwrap().len(), 0);
        assert!(Csp::parse("upgrade-insecure-requests 1").is_err());
    }

    #[test]
    fn sandbox_takes_known_allow_tokens() {
        assert!(one("sandbox", &[]).is_ok());
        let csp = one("sandbox", &["allow-scripts", "ALLOW-FORMS"]).unwrap();
        assert_eq!(csp.to_string(), "sandbox allow-scripts allow-forms");
        assert_eq!(
            reason("sandbox", &["allow-everything"]),
            "unknown sandbox token allow-everything"
        );
        assert!(reason("sandbox", &["'allow-scripts'"]).contains("unknown sandbox token"));
    }

    #[test]
    fn report_directives_take_uris_and_one_endpoint() {
        assert!(one("report-uri", &["/csp", "https://r.example/csp"]).is_ok());
        assert_eq!(reason("report-uri", &[]), "needs at least one URI");
        assert!(reason("report-uri", &["'self'"]).contains("not quoted tokens"));
        assert!(reason("report-uri", &["csp-reports"]).contains("not an absolute URI"));
        assert!(one("report-to", &["csp-endpoint"]).is_ok());
        assert_eq!(
            reason("report-to", &["a", "b"]),
            "takes exactly one endpoint name"
        );
        assert_eq!(reason("report-to", &[]), "takes exactly one endpoint name");
        assert!(reason("report-to", &["https://x"]).contains("not a reporting endpoint"));
    }

    #[test]
    fn trusted_types_directives() {
        assert!(one("require-trusted-types-for", &["'script'"]).is_ok());
        assert!(reason("require-trusted-types-for", &["script"]).contains("only 'script'"));
        assert!(reason("require-trusted-types-for", &[]).contains("exactly one"));
        assert!(one("trusted-types", &[]).is_ok());
        assert!(
            one(
                "trusted-types",
                &["default", "dompurify", "'allow-duplicates'"]
            )
            .is_ok()
        );
        assert!(one("trusted-types", &["*"]).is_ok());
        assert!(one("trusted-types", &["'none'"]).is_ok());
        assert!(reason("trusted-types", &["'none'", "default"]).contains("'none' cannot"));
        assert!(reason("trusted-types", &["none"]).contains("must be quoted"));
        assert!(reason("trusted-types", &["'self'"]).contains("unknown quoted token"));
        assert!(reason("trusted-types", &["a!b"]).contains("not a Trusted Types policy name"));
    }

    #[test]
    fn webrtc_takes_allow_or_block() {
        assert!(one("webrtc", &["'allow'"]).is_ok());
        assert!(one("webrtc", &["'BLOCK'"]).is_ok());
        assert!(reason("webrtc", &["allow"]).contains("'allow' or 'block'"));
        assert!(reason("webrtc", &[]).contains("exactly one"));
    }

    #[test]
    fn errors_display_the_directive_and_reason() {
        let e = one("img-src", &["'none'", "data:"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "CSP directive \"img-src\": 'none' cannot be combined with other sources"
        );
    }
}

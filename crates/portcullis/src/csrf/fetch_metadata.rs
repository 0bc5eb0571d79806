//! The origin check: Go 1.25 `net/http.CrossOriginProtection.Check`, step for step.
//!
//! For a request with an unsafe method:
//!
//! 1. `GET`, `HEAD` and `OPTIONS` pass (they must not change state).
//! 2. `Sec-Fetch-Site: same-origin` or `none` passes. Any other value — `cross-site`,
//!    `same-site` (a sibling subdomain is another origin) or garbage — is refused unless the
//!    `Origin` is a trusted origin.
//! 3. Without `Sec-Fetch-Site`: no `Origin` either means a non-browser client (or a browser
//!    from before 2023): allowed in [`Mode::Lenient`], refused in [`Mode::Strict`].
//! 4. Otherwise the `Origin`'s `host[:port]` must equal the request's host (the request
//!    target's authority, else `Host`), byte for byte as Go compares `u.Host == req.Host`; or
//!    the whole origin must be one of the configured public origins (scheme, host and port,
//!    for deployments where `Host` is rewritten); or a trusted origin; else it is refused.
//!
//! One step Go does not take: `Sec-Fetch-Site` or `Origin` sent twice is refused (unless a
//! bypass pattern covers the request). No browser sends either twice, and Go reads the first
//! value where an application behind may read the last.
//!
//! Bypass patterns exempt a request from the whole CSRF guard. They are globs in the route
//! table's syntax, optionally preceded by a method (`POST /api/webhooks/**`), matched on the
//! **canonical** path — the one the application receives — never the raw one: Go's
//! CVE-2025-47910 came from exempting a path that its mux would only *redirect* to a bypassed
//! pattern. A bypass is read narrowly on trailing slashes, like Go's fixed mux matching:
//! `/hook` does not cover `/hook/`, `/dir/` does not cover `/dir`, and `/dir/**` covers
//! `/dir/` and everything below it but not `/dir` itself.
//!
//! Why not tower-http's `csrf` layer, which implements the same algorithm: it is a service of
//! its own that answers plain-text 403s and sees the raw path; ours is one step of
//! [`SecurityLayer`](crate::SecurityLayer), sees the canonical path and the route's policy,
//! adds the strict mode and public origins, and refuses with the JSON error and an audit event.
//!
//! ```
//! use portcullis::csrf::fetch_metadata::{OriginCheck, CrossOrigin};
//! use portcullis::csrf::Mode;
//! use portcullis::CanonicalPath;
//! use http::{HeaderMap, Method};
//!
//! let no_public: [&str; 0] = [];
//! let check = OriginCheck::new(Mode::Lenient, ["https://partner.example"], no_public, ["/hooks/**"]).unwrap();
//! let path = CanonicalPath::parse("/api/notes").unwrap();
//! let mut h = HeaderMap::new();
//! h.insert("sec-fetch-site", "cross-site".parse().unwrap());
//! assert_eq!(check.check(&Method::POST, &h, Some("app.example"), &path), Err(CrossOrigin::SecFetchSite));
//! h.insert("origin", "https://partner.example".parse().unwrap());
//! assert_eq!(check.check(&Method::POST, &h, Some("app.example"), &path), Ok(()));
//! ```

use std::collections::HashSet;

use http::header::{self, HeaderMap};
use http::{Method, request::Parts};

use crate::layer::BuildError;
use crate::route::{CanonicalPath, RouteTable};

use super::Mode;

/// `Sec-Fetch-Site`.
///
/// ```
/// use portcullis::csrf::fetch_metadata::SEC_FETCH_SITE;
/// let req = http::Request::post("/api/notes")
///     .header(SEC_FETCH_SITE, "same-origin")
///     .body(())
///     .unwrap();
/// assert_eq!(req.headers()["Sec-Fetch-Site"], "same-origin");
/// ```
pub const SEC_FETCH_SITE: &str = "sec-fetch-site";

/// Why the origin check refused a request.
///
/// ```
/// use http::{HeaderMap, Method};
/// use portcullis::CanonicalPath;
/// use portcullis::csrf::{Mode, fetch_metadata::{CrossOrigin, OriginCheck}};
/// let none: [&str; 0] = [];
/// let check = OriginCheck::new(Mode::Strict, none, none, none).unwrap();
/// let path = CanonicalPath::parse("/api/notes").unwrap();
/// let verdict = check.check(&Method::POST, &HeaderMap::new(), Some("app.example"), &path);
/// assert_eq!(verdict, Err(CrossOrigin::NoBrowserHeaders));
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrossOrigin {
    /// `Sec-Fetch-Site` is present and neither `same-origin` nor `none`.
    SecFetchSite,
    /// No `Sec-Fetch-Site`; the `Origin` matches neither the host nor a configured origin.
    OriginMismatch,
    /// Neither `Sec-Fetch-Site` nor `Origin` (refused in [`Mode::Strict`] only).
    NoBrowserHeaders,
    /// `Sec-Fetch-Site` or `Origin` more than once. No browser sends either twice, and which
    /// one counts is a guess an application behind may make otherwise.
    Repeated,
}

impl CrossOrigin {
    /// A short human reason, safe to show to the client and recorded in the audit event.
    ///
    /// ```
    /// use portcullis::csrf::fetch_metadata::CrossOrigin;
    /// assert_eq!(
    ///     CrossOrigin::OriginMismatch.reason(),
    ///     "Cross-origin request refused (Origin does not match)"
    /// );
    /// ```
    pub fn reason(self) -> &'static str {
        match self {
            CrossOrigin::SecFetchSite => "Cross-origin request refused (Sec-Fetch-Site)",
            CrossOrigin::OriginMismatch => "Cross-origin request refused (Origin does not match)",
            CrossOrigin::NoBrowserHeaders => {
                "Request refused: neither Sec-Fetch-Site nor Origin was sent"
            }
            CrossOrigin::Repeated => "Request refused: Sec-Fetch-Site or Origin sent twice",
        }
    }
}

/// True for the methods that never need CSRF protection: `GET`, `HEAD`, `OPTIONS`.
///
/// ```
/// use http::Method;
/// use portcullis::csrf::fetch_metadata::is_safe;
/// assert!(is_safe(&Method::GET) && is_safe(&Method::OPTIONS));
/// assert!(!is_safe(&Method::POST));
/// ```
pub fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// How a bypass pattern treats a trailing slash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trailing {
    /// `/hook`: the path must not end in `/`.
    Without,
    /// `/dir/`: the path must end in `/`.
    With,
    /// `/dir/**`: `/dir/` and below, not `/dir`.
    Subtree,
}

/// One bypass pattern: an optional method and a glob matched on the canonical path.
#[derive(Debug, Clone)]
struct BypassPattern {
    method: Option<Method>,
    glob: RouteTable<bool>,
    /// For `Subtree`: the pattern without its final `/**`, to tell a zero-segment match.
    base: Option<RouteTable<bool>>,
    trailing: Trailing,
}

impl BypassPattern {
    fn parse(spec: &str) -> Result<BypassPattern, String> {
        let spec = spec.trim();
        let (method, pattern) = match spec.split_once(' ') {
            Some((m, p)) => {
                let m = Method::from_bytes(m.as_bytes()).map_err(|_| "bad method".to_string())?;
                (Some(m), p.trim())
            }
            None => (None, spec),
        };
        let table = |p: &str| {
            let mut t = RouteTable::new(false);
            t.insert(p, true).map(|()| t).map_err(|e| e.reason)
        };
        let glob = table(pattern)?;
        let (trailing, base) = if let Some(base) = pattern.strip_suffix("/**") {
            let base = if base.is_empty() { "/" } else { base };
            (Trailing::Subtree, Some(table(base)?))
        } else if pattern.ends_with('/') && pattern != "/" {
            (Trailing::With, None)
        } else {
            (Trailing::Without, None)
        };
        Ok(BypassPattern {
            method,
            glob,
            base,
            trailing,
        })
    }

    fn matches(&self, method: &Method, path: &CanonicalPath) -> bool {
        if self.method.as_ref().is_some_and(|m| m != method) {
            return false;
        }
        // A lookup error (a case variant of the pattern) is no match: bypasses are narrow.
        let hit = |t: &RouteTable<bool>| t.lookup(path).is_ok_and(|m| *m.value);
        if !hit(&self.glob) {
            return false;
        }
        let slash = path.as_str().ends_with('/');
        match self.trailing {
            Trailing::Without => !slash || path.as_str() == "/",
            Trailing::With => slash,
            Trailing::Subtree => slash || !self.base.as_ref().is_some_and(hit),
        }
    }
}

/// An origin as a browser serializes it: scheme, host and port, lower-case, the default port
/// made explicit.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SiteOrigin {
    scheme: String,
    host: String,
    port: u16,
}

impl SiteOrigin {
    fn parse(origin: &str) -> Option<SiteOrigin> {
        let (scheme, rest) = origin.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return None,
        };
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) || !valid_authority(rest) {
            return None;
        }
        let (host, port) = split_port(rest)?;
        let port = match port {
            Some(p) => p.parse().ok()?,
            None => default_port,
        };
        if host.is_empty() {
            return None;
        }
        Some(SiteOrigin {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

/// Splits `host[:port]` (IPv6 literals in brackets).
fn split_port(authority: &str) -> Option<(&str, Option<&str>)> {
    if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        return match rest.strip_prefix(':') {
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                Some((host, Some(p)))
            }
            Some(_) => None,
            None if rest.is_empty() => Some((host, None)),
            None => None,
        };
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => {
            Some((h, (!p.is_empty()).then_some(p)))
        }
        Some(_) => None,
        None => Some((authority, None)),
    }
}

/// The bytes Go's URL parser accepts in an authority (host, port, userinfo).
fn valid_authority(a: &str) -> bool {
    a.bytes().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b':'
                    | b'['
                    | b']'
                    | b'%'
                    | b'@'
            )
    })
}

/// The `host[:port]` of an `Origin` value, as Go's `url.Parse(origin).Host` gives it, or
/// `None` when Go would find no host or fail to parse (`null`, `example.com`, `https://`).
///
/// ```
/// use portcullis::csrf::fetch_metadata::origin_host;
/// assert_eq!(origin_host("https://app.example:8443"), Some("app.example:8443"));
/// assert_eq!(origin_host("null"), None);
/// ```
pub fn origin_host(origin: &str) -> Option<&str> {
    let (scheme, rest) = origin.split_once("://")?;
    let mut chars = scheme.bytes();
    if !chars.next().is_some_and(|b| b.is_ascii_alphabetic())
        || !chars.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    {
        return None;
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    if !valid_authority(authority) {
        return None;
    }
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    // Go refuses a non-numeric port ("invalid port").
    split_port(host)?;
    (!host.is_empty()).then_some(host)
}

/// The host a request was sent to: the request target's authority (HTTP/2 `:authority`,
/// absolute-form), else the `Host` header — Go's `req.Host`.
///
/// ```
/// use portcullis::csrf::fetch_metadata::request_host;
/// let (parts, ()) = http::Request::post("/api/notes")
///     .header("host", "app.example")
///     .body(())
///     .unwrap()
///     .into_parts();
/// assert_eq!(request_host(&parts), Some("app.example"));
/// let (absolute, ()) = http::Request::post("https://api.example/x").body(()).unwrap().into_parts();
/// assert_eq!(request_host(&absolute), Some("api.example"));
/// ```
pub fn request_host(parts: &Parts) -> Option<&str> {
    match parts.uri.authority() {
        Some(a) => Some(a.as_str()),
        None => parts
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok()),
    }
}

/// The configured origin check.
///
/// ```
/// use portcullis::csrf::{Mode, fetch_metadata::OriginCheck};
/// let check = OriginCheck::new(Mode::Lenient, ["https://partner.example"], ["https://app.example"], ["/hooks/**"])?;
/// assert!(check.is_trusted("https://partner.example"));
/// # Ok::<(), portcullis::layer::BuildError>(())
/// ```
#[derive(Debug, Clone)]
pub struct OriginCheck {
    mode: Mode,
    trusted: HashSet<String>,
    public: Vec<SiteOrigin>,
    bypass: Vec<BypassPattern>,
}

impl OriginCheck {
    /// A check with `trusted` origins (exact strings, as Go's `AddTrustedOrigin`), the site's
    /// own `public` origins (`scheme://host[:port]`, compared as origins) and `bypass`
    /// patterns (`[METHOD ]/glob`).
    ///
    /// ```
    /// use portcullis::csrf::{Mode, fetch_metadata::OriginCheck};
    /// let none: [&str; 0] = [];
    /// assert!(OriginCheck::new(Mode::Lenient, ["https://partner.example"], none, ["POST /hooks/*"]).is_ok());
    /// assert!(OriginCheck::new(Mode::Lenient, ["https://partner.example/path"], none, none).is_err());
    /// ```
    pub fn new<T, P, B>(mode: Mode, trusted: T, public: P, bypass: B) -> Result<Self, BuildError>
    where
        T: IntoIterator,
        T::Item: AsRef<str>,
        P: IntoIterator,
        P::Item: AsRef<str>,
        B: IntoIterator,
        B::Item: AsRef<str>,
    {
        let err = |key: &str, value: &str, reason: &str| BuildError {
            key: format!("csrf.{key} {value:?}"),
            reason: reason.to_string(),
        };
        let mut set = HashSet::new();
        for t in trusted {
            let t = t.as_ref();
            validate_origin(t).map_err(|r| err("trusted_origins", t, r))?;
            set.insert(serialized_origin(t));
        }
        let mut origins = Vec::new();
        for p in public {
            let p = p.as_ref();
            validate_origin(p).map_err(|r| err("public_origins", p, r))?;
            let o = SiteOrigin::parse(p)
                .ok_or_else(|| err("public_origins", p, "must be http(s)://host[:port]"))?;
            origins.push(o);
        }
        let mut patterns = Vec::new();
        for b in bypass {
            let b = b.as_ref();
            patterns.push(BypassPattern::parse(b).map_err(|r| err("bypass", b, &r))?);
        }
        Ok(OriginCheck {
            mode,
            trusted: set,
            public: origins,
            bypass: patterns,
        })
    }

    /// The mode for requests with neither `Sec-Fetch-Site` nor `Origin`.
    ///
    /// ```
    /// use portcullis::csrf::{Mode, fetch_metadata::OriginCheck};
    /// let none: [&str; 0] = [];
    /// let check = OriginCheck::new(Mode::Strict, none, none, none).unwrap();
    /// assert_eq!(check.mode(), Mode::Strict);
    /// ```
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// True when a bypass pattern covers this method and canonical path.
    ///
    /// ```
    /// use http::Method;
    /// use portcullis::CanonicalPath;
    /// use portcullis::csrf::{Mode, fetch_metadata::OriginCheck};
    /// let none: [&str; 0] = [];
    /// let check = OriginCheck::new(Mode::Lenient, none, none, ["/hooks/**"]).unwrap();
    /// let path = |p| CanonicalPath::parse(p).unwrap();
    /// assert!(check.is_bypassed(&Method::POST, &path("/hooks/github")));
    /// assert!(!check.is_bypassed(&Method::POST, &path("/hooks")));
    /// ```
    pub fn is_bypassed(&self, method: &Method, path: &CanonicalPath) -> bool {
        self.bypass.iter().any(|b| b.matches(method, path))
    }

    /// True when `origin` (the request's `Origin`, as a browser serialises it) is one of the
    /// trusted origins. The configured ones are taken in that form too — scheme and host in
    /// lower case, no default port — so `https://Partner.example:443` in a config matches the
    /// `https://partner.example` browsers send; the request's value is compared exactly.
    ///
    /// ```
    /// use portcullis::csrf::{Mode, fetch_metadata::OriginCheck};
    /// let none: [&str; 0] = [];
    /// let check = OriginCheck::new(Mode::Lenient, ["https://Partner.example:443", "http://b.example:8080"], none, none).unwrap();
    /// assert!(check.is_trusted("https://partner.example"));
    /// assert!(check.is_trusted("http://b.example:8080"));
    /// assert!(!check.is_trusted("https://PARTNER.example"));
    /// assert!(!check.is_trusted("https://partner.example:443"));
    /// ```
    pub fn is_trusted(&self, origin: &str) -> bool {
        !origin.is_empty() && self.trusted.contains(origin)
    }

    /// Decides a request. `host` is the request's host ([`request_host`]); `path` the
    /// canonical path, for bypass patterns.
    ///
    /// ```
    /// use http::{HeaderMap, Method};
    /// use portcullis::CanonicalPath;
    /// use portcullis::csrf::{Mode, fetch_metadata::{CrossOrigin, OriginCheck}};
    /// let none: [&str; 0] = [];
    /// let check = OriginCheck::new(Mode::Lenient, none, none, none).unwrap();
    /// let path = CanonicalPath::parse("/api/notes").unwrap();
    /// let mut h = HeaderMap::new();
    /// h.insert("origin", "https://evil.example".parse().unwrap());
    /// assert_eq!(check.check(&Method::POST, &h, Some("app.example"), &path), Err(CrossOrigin::OriginMismatch));
    /// assert_eq!(check.check(&Method::GET, &h, Some("app.example"), &path), Ok(()));
    /// ```
    pub fn check(
        &self,
        method: &Method,
        headers: &HeaderMap,
        host: Option<&str>,
        path: &CanonicalPath,
    ) -> Result<(), CrossOrigin> {
        if is_safe(method) {
            return Ok(());
        }
        self.check_any_method(method, headers, host, path)
    }

    /// [`check`](Self::check) for a request of any method, safe ones included: a WebSocket
    /// handshake is a GET, yet what it opens carries the caller's cookies both ways, so a
    /// cross-site page must not open it (cross-site WebSocket hijacking).
    ///
    /// ```
    /// use http::{HeaderMap, Method};
    /// use portcullis::csrf::{Mode, fetch_metadata::OriginCheck};
    /// use portcullis::route::CanonicalPath;
    /// let none: [&str; 0] = [];
    /// let check = OriginCheck::new(Mode::Lenient, none, none, none).unwrap();
    /// let path = CanonicalPath::parse("/ws")?;
    /// let mut h = HeaderMap::new();
    /// h.insert("origin", "https://evil.example".parse().unwrap());
    /// assert!(check.check(&Method::GET, &h, Some("app.example.com"), &path).is_ok());
    /// assert!(check.check_any_method(&Method::GET, &h, Some("app.example.com"), &path).is_err());
    /// # Ok::<(), portcullis::route::PathError>(())
    /// ```
    pub fn check_any_method(
        &self,
        method: &Method,
        headers: &HeaderMap,
        host: Option<&str>,
        path: &CanonicalPath,
    ) -> Result<(), CrossOrigin> {
        // Go's `Header.Get`: the first value; an empty one counts as absent.
        let first = |name| {
            headers
                .get(name)
                .map(|v| v.as_bytes())
                .filter(|v| !v.is_empty())
        };
        let origin = first(header::ORIGIN.as_str());
        let repeated = |name| headers.get_all(name).iter().nth(1).is_some();
        if (repeated(SEC_FETCH_SITE) || repeated(header::ORIGIN.as_str()))
            && !self.is_bypassed(method, path)
        {
            return Err(CrossOrigin::Repeated);
        }
        let exempt = || {
            self.is_bypassed(method, path)
                || origin
                    .and_then(|o| std::str::from_utf8(o).ok())
                    .is_some_and(|o| self.is_trusted(o))
        };
        match first(SEC_FETCH_SITE) {
            Some(b"same-origin" | b"none") => return Ok(()),
            Some(_) if exempt() => return Ok(()),
            Some(_) => return Err(CrossOrigin::SecFetchSite),
            None => {}
        }
        let Some(origin) = origin else {
            return match self.mode {
                Mode::Lenient => Ok(()),
                Mode::Strict if exempt() => Ok(()),
                Mode::Strict => Err(CrossOrigin::NoBrowserHeaders),
            };
        };
        let origin = std::str::from_utf8(origin).ok();
        if let (Some(o), Some(h)) = (origin.and_then(origin_host), host)
            && o == h
        {
            return Ok(());
        }
        if !self.public.is_empty()
            && let Some(o) = origin.and_then(SiteOrigin::parse)
            && self.public.contains(&o)
        {
            return Ok(());
        }
        if exempt() {
            return Ok(());
        }
        Err(CrossOrigin::OriginMismatch)
    }
}

/// Go's `AddTrustedOrigin` validation: `scheme://host[:port]`, nothing else.
/// A valid configured origin as browsers serialise one (RFC 6454 §6.2): scheme and host in
/// lower case, the scheme's default port left out.
///
/// ```
/// use portcullis::csrf::fetch_metadata::serialized_origin;
/// assert_eq!(serialized_origin("HTTPS://App.example:443"), "https://app.example");
/// assert_eq!(serialized_origin("http://app.example:8080"), "http://app.example:8080");
/// ```
pub fn serialized_origin(origin: &str) -> String {
    let lower = origin.to_ascii_lowercase();
    for (scheme, port) in [("https://", ":443"), ("http://", ":80")] {
        if let Some(rest) = lower.strip_prefix(scheme)
            && let Some(host) = rest.strip_suffix(port)
        {
            return format!("{scheme}{host}");
        }
    }
    lower
}

fn validate_origin(origin: &str) -> Result<(), &'static str> {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return Err("scheme is required (scheme://host[:port])");
    };
    if scheme.is_empty() || !scheme.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err("scheme is required (scheme://host[:port])");
    }
    if rest.is_empty() {
        return Err("host is required");
    }
    if rest.contains(['/', '?', '#']) {
        return Err("path, query, and fragment are not allowed");
    }
    if !valid_authority(rest) || split_port(rest).is_none() {
        return Err("invalid host");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> CanonicalPath {
        CanonicalPath::parse(p).unwrap()
    }

    #[test]
    fn origin_host_follows_go_url_parse() {
        assert_eq!(origin_host("https://example.com"), Some("example.com"));
        assert_eq!(origin_host("http://a.example:8080"), Some("a.example:8080"));
        assert_eq!(origin_host("https://example.com/path"), Some("example.com"));
        assert_eq!(origin_host("https://u@example.com"), Some("example.com"));
        assert_eq!(origin_host("null"), None);
        assert_eq!(origin_host("example.com"), None);
        assert_eq!(origin_host("https://"), None);
        assert_eq!(origin_host("https://ex ample.com"), None);
        assert_eq!(origin_host("https://example.com:abc"), None);
        assert_eq!(origin_host("http://[::1]:80"), Some("[::1]:80"));
    }

    #[test]
    fn trusted_origins_are_validated_like_go() {
        let bad = [
            "example.com",
            "https://",
            "https://example.com/",
            "https://example.com/path",
            "https://example.com?query=value",
            "https://example.com#fragment",
            "https://ex ample.com",
            "",
            "null",
        ];
        for b in bad {
            assert!(validate_origin(b).is_err(), "{b:?} must be refused");
        }
        for g in [
            "https://example.com",
            "https://example.com:8080",
            "http://example.com",
        ] {
            assert!(validate_origin(g).is_ok(), "{g:?} must be accepted");
        }
    }

    #[test]
    fn public_origins_compare_as_origins() {
        assert_eq!(
            SiteOrigin::parse("https://Example.COM:443"),
            SiteOrigin::parse("https://example.com")
        );
        assert_ne!(
            SiteOrigin::parse("http://example.com"),
            SiteOrigin::parse("https://example.com")
        );
        assert_ne!(
            SiteOrigin::parse("https://example.com:8443"),
            SiteOrigin::parse("https://example.com")
        );
    }

    #[test]
    fn bypass_trailing_slashes_are_read_narrowly() {
        let p = |s| BypassPattern::parse(s).unwrap();
        let post = Method::POST;
        assert!(p("/hook").matches(&post, &path("/hook")));
        assert!(!p("/hook").matches(&post, &path("/hook/")));
        assert!(p("/dir/").matches(&post, &path("/dir/")));
        assert!(!p("/dir/").matches(&post, &path("/dir")));
        assert!(p("/dir/**").matches(&post, &path("/dir/")));
        assert!(p("/dir/**").matches(&post, &path("/dir/a/b")));
        assert!(!p("/dir/**").matches(&post, &path("/dir")));
        assert!(!p("/dir/**").matches(&post, &path("/DIR/a")));
        assert!(p("POST /only/*").matches(&post, &path("/only/1")));
        assert!(!p("PUT /only/*").matches(&post, &path("/only/1")));
        assert!(p("/**").matches(&post, &path("/")));
        assert!(p("/**").matches(&post, &path("/x")));
    }
}

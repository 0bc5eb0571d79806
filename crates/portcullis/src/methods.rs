//! Method allowlist: a method outside the route's list gets 405 with `Allow`.
//!
//! So does a request that asks the application to act as another method the list lacks:
//! Express's `method-override`, Rails, Laravel, Symfony and ASP.NET Core read
//! `X-HTTP-Method-Override` (or `X-HTTP-Method`, `X-Method-Override`, a `_method` query
//! parameter) and route a POST as, say, DELETE. The override is not removed, so an
//! application that relies on it keeps working where the route allows the method it names.
//!
//! ```
//! use portcullis::methods::MethodSet;
//! let m = MethodSet::new([http::Method::GET, http::Method::POST]);
//! assert!(m.allows(&http::Method::GET));
//! assert!(!m.allows(&http::Method::DELETE));
//! assert_eq!(m.allow_header(), "GET, POST");
//! ```

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, Method};

/// Headers through which a client asks an application to treat a request as another method.
///
/// ```
/// use portcullis::methods::OVERRIDE_HEADERS;
/// assert_eq!(OVERRIDE_HEADERS[0], "x-http-method-override");
/// assert!(OVERRIDE_HEADERS.iter().any(|h| h == "x-method-override"));
/// ```
pub const OVERRIDE_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// A set of allowed methods with its `Allow` header value computed once.
///
/// ```
/// use http::Method;
/// use portcullis::methods::MethodSet;
/// let m = MethodSet::new([Method::PUT, Method::DELETE]);
/// assert!(m.allows(&Method::DELETE));
/// assert_eq!(m.allow_header(), "PUT, DELETE");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodSet {
    methods: Vec<Method>,
    allow: String,
    any: bool,
}

impl MethodSet {
    /// Allows exactly `methods` (in the given order for `Allow`, duplicates dropped).
    ///
    /// ```
    /// use http::Method;
    /// use portcullis::methods::MethodSet;
    /// let m = MethodSet::new([Method::POST, Method::GET, Method::POST]);
    /// assert_eq!(m.methods(), [Method::POST, Method::GET]);
    /// assert_eq!(m.allow_header(), "POST, GET");
    /// ```
    pub fn new(methods: impl IntoIterator<Item = Method>) -> Self {
        let mut list: Vec<Method> = Vec::new();
        for m in methods {
            if !list.contains(&m) {
                list.push(m);
            }
        }
        let allow = list
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        MethodSet {
            methods: list,
            allow,
            any: false,
        }
    }

    /// Allows every method (no allowlist).
    ///
    /// ```
    /// use portcullis::methods::MethodSet;
    /// let m = MethodSet::any();
    /// assert!(m.is_any());
    /// assert!(m.allows(&http::Method::PATCH));
    /// assert!(m.methods().is_empty());
    /// ```
    pub fn any() -> Self {
        MethodSet {
            methods: Vec::new(),
            allow: String::new(),
            any: true,
        }
    }

    /// Parses method names as written in a config file; refuses unknown tokens.
    ///
    /// ```
    /// use portcullis::methods::MethodSet;
    /// assert!(MethodSet::parse(["GET", "post"]).is_ok());
    /// assert!(MethodSet::parse(["G ET"]).is_err());
    /// ```
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut out = Vec::new();
        for n in names {
            let upper = n.trim().to_ascii_uppercase();
            let m = Method::from_bytes(upper.as_bytes())
                .map_err(|_| format!("{n:?} is not an HTTP method"))?;
            const KNOWN: [&str; 9] = [
                "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
            ];
            if !KNOWN.contains(&m.as_str()) {
                return Err(format!("{n:?} is not a standard HTTP method"));
            }
            out.push(m);
        }
        if out.is_empty() {
            return Err("the method list is empty".to_string());
        }
        Ok(MethodSet::new(out))
    }

    /// True when `method` is allowed.
    ///
    /// ```
    /// use http::Method;
    /// use portcullis::methods::MethodSet;
    /// let m = MethodSet::parse(["GET", "HEAD"]).unwrap();
    /// assert!(m.allows(&Method::HEAD));
    /// assert!(!m.allows(&Method::POST));
    /// ```
    pub fn allows(&self, method: &Method) -> bool {
        self.any || self.methods.contains(method)
    }

    /// Whether every method the request names in an override header (see
    /// [`OVERRIDE_HEADERS`]) or a `_method` query parameter is allowed too, compared in upper
    /// case as the frameworks do; an override that is not a method token is not allowed.
    ///
    /// ```
    /// use portcullis::methods::MethodSet;
    /// let m = MethodSet::new([http::Method::GET, http::Method::POST]);
    /// let mut h = http::HeaderMap::new();
    /// assert!(m.allows_overrides(&h, Some("page=2")));
    /// h.insert("x-http-method-override", "delete".parse().unwrap());
    /// assert!(!m.allows_overrides(&h, None));
    /// assert!(!MethodSet::new([http::Method::POST]).allows_overrides(&http::HeaderMap::new(), Some("_method=PUT")));
    /// ```
    pub fn allows_overrides(&self, headers: &HeaderMap, query: Option<&str>) -> bool {
        if self.any {
            return true;
        }
        let named_ok = |name: &[u8]| {
            let upper = name.trim_ascii().to_ascii_uppercase();
            Method::from_bytes(&upper).is_ok_and(|m| self.allows(&m))
        };
        // One pass over the request's fields (a few comparisons each) instead of a hashed
        // lookup per override name: this runs on every request.
        let headers_ok = headers
            .iter()
            .filter(|(n, _)| OVERRIDE_HEADERS.contains(n))
            .all(|(_, v)| named_ok(v.as_bytes()));
        let query_ok = query.is_none_or(|q| {
            q.split('&')
                .filter_map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    // Decoded as the frameworks decode it: `_me%74hod` is `_method` to them.
                    form_decode(key)
                        .eq_ignore_ascii_case(b"_method")
                        .then(|| form_decode(value))
                })
                .all(|v| named_ok(&v))
        });
        headers_ok && query_ok
    }

    /// The value of the `Allow` header.
    ///
    /// ```
    /// use portcullis::methods::MethodSet;
    /// let m = MethodSet::parse(["get", "head", "options"]).unwrap();
    /// assert_eq!(m.allow_header(), "GET, HEAD, OPTIONS");
    /// assert_eq!(MethodSet::any().allow_header(), "");
    /// ```
    pub fn allow_header(&self) -> &str {
        &self.allow
    }

    /// The allowed methods (empty when any method is allowed).
    ///
    /// ```
    /// use http::Method;
    /// use portcullis::methods::MethodSet;
    /// assert_eq!(MethodSet::new([Method::GET]).methods(), [Method::GET]);
    /// assert!(MethodSet::any().methods().is_empty());
    /// ```
    pub fn methods(&self) -> &[Method] {
        &self.methods
    }

    /// True when every method is allowed.
    ///
    /// ```
    /// use portcullis::methods::MethodSet;
    /// assert!(MethodSet::any().is_any());
    /// assert!(!MethodSet::new([http::Method::GET]).is_any());
    /// ```
    pub fn is_any(&self) -> bool {
        self.any
    }
}

/// `s` decoded as `application/x-www-form-urlencoded` (`+` is a space, `%XX` a byte; a
/// malformed escape stays as it is), borrowed when there is nothing to decode.
fn form_decode(s: &str) -> Cow<'_, [u8]> {
    let b = s.as_bytes();
    if !b.iter().any(|&c| c == b'%' || c == b'+') {
        return Cow::Borrowed(b);
    }
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi << 4 | lo);
                i += 3;
            }
            (c, _, _) => {
                out.push(if c == b'+' { b' ' } else { c });
                i += 1;
            }
        }
    }
    Cow::Owned(out)
}

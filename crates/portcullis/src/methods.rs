//! Method allowlist: a method outside the route's list gets 405 with `Allow`.
//!
//! ```
//! use portcullis::methods::MethodSet;
//! let m = MethodSet::new([http::Method::GET, http::Method::POST]);
//! assert!(m.allows(&http::Method::GET));
//! assert!(!m.allows(&http::Method::DELETE));
//! assert_eq!(m.allow_header(), "GET, POST");
//! ```

use http::Method;

/// A set of allowed methods with its `Allow` header value computed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodSet {
    methods: Vec<Method>,
    allow: String,
    any: bool,
}

impl MethodSet {
    /// Allows exactly `methods` (in the given order for `Allow`, duplicates dropped).
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
    pub fn allows(&self, method: &Method) -> bool {
        self.any || self.methods.contains(method)
    }

    /// The value of the `Allow` header.
    pub fn allow_header(&self) -> &str {
        &self.allow
    }

    /// The allowed methods (empty when any method is allowed).
    pub fn methods(&self) -> &[Method] {
        &self.methods
    }

    /// True when every method is allowed.
    pub fn is_any(&self) -> bool {
        self.any
    }
}

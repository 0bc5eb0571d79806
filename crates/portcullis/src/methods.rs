//! Method allowlist: a method outside the route's list gets 405 with `Allow`.
//!
//! So does a request that asks the application to act as another method the list lacks:
//! Express's `method-override`, Rails, Laravel, Symfony and ASP.NET Core read
//! `X-HTTP-Method-Override` (or `X-HTTP-Method`, `X-Method-Override`, spelt with `-` or `_`,
//! or a `_method` query parameter) and route a POST as, say, DELETE. The override is not removed, so an
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

use http::{HeaderMap, HeaderName, Method, header};

use crate::csrf::token::find;

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

/// Whether a request field is one of [`OVERRIDE_HEADERS`] as an application reads it: also
/// spelt with `_` for `-` (`X_HTTP_Method_Override`), which CGI-style servers (Puma under
/// Rails, PHP) give the same name, `HTTP_X_HTTP_METHOD_OVERRIDE`, as the dashed one.
fn is_override_header(name: &HeaderName) -> bool {
    if OVERRIDE_HEADERS.contains(name) {
        return true;
    }
    let n = name.as_str().as_bytes();
    // Most fields are ruled out by their length alone.
    matches!(n.len(), 13 | 17 | 22)
        && n.contains(&b'_')
        && OVERRIDE_HEADERS.iter().any(|o| {
            let o = o.as_str().as_bytes();
            o.len() == n.len()
                && o.iter()
                    .zip(n)
                    .all(|(&a, &b)| a == b || (a == b'-' && b == b'_'))
        })
}

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
    /// // An underscore spelling is the same header to Rack, Puma and PHP.
    /// let mut h = http::HeaderMap::new();
    /// h.insert("x_http_method_override", "DELETE".parse().unwrap());
    /// assert!(!m.allows_overrides(&h, None));
    /// assert!(!MethodSet::new([http::Method::POST]).allows_overrides(&http::HeaderMap::new(), Some("_method=PUT")));
    /// ```
    pub fn allows_overrides(&self, headers: &HeaderMap, query: Option<&str>) -> bool {
        if self.any {
            return true;
        }
        // One pass over the request's fields (a few comparisons each) instead of a hashed
        // lookup per override name: this runs on every request.
        let headers_ok = headers
            .iter()
            .filter(|(n, _)| is_override_header(n))
            .all(|(_, v)| self.allows_named(v.as_bytes()));
        let query_ok = query.is_none_or(|q| {
            q.split('&')
                .filter_map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    // Decoded as the frameworks decode it: `_me%74hod` is `_method` to them.
                    is_override_key(&form_decode(key.as_bytes()))
                        .then(|| form_decode(value.as_bytes()))
                })
                .all(|v| self.allows_named(&v))
        });
        headers_ok && query_ok
    }

    /// Whether the body of this request may hold a `_method` field that a framework would
    /// act on while the set refuses some method: a `POST` whose body is a form
    /// (`application/x-www-form-urlencoded` or `multipart/form-data`) or has no
    /// `Content-Type` at all (Rack reads that as a form). Such a body must be read and given to
    /// [`MethodSet::allows_form_overrides`] before the application sees it: Rails, Laravel and
    /// Symfony read `_method` from the form body first.
    ///
    /// ```
    /// use http::{HeaderMap, Method, header::CONTENT_TYPE};
    /// use portcullis::methods::MethodSet;
    /// let m = MethodSet::new([Method::GET, Method::POST]);
    /// let mut form = HeaderMap::new();
    /// form.insert(CONTENT_TYPE, "application/x-www-form-urlencoded".parse().unwrap());
    /// assert!(m.scans_form_body(&Method::POST, &form));
    /// assert!(!m.scans_form_body(&Method::GET, &form));
    /// let mut json = HeaderMap::new();
    /// json.insert(CONTENT_TYPE, "application/json".parse().unwrap());
    /// assert!(!m.scans_form_body(&Method::POST, &json));
    /// assert!(!MethodSet::any().scans_form_body(&Method::POST, &form));
    /// ```
    pub fn scans_form_body(&self, method: &Method, headers: &HeaderMap) -> bool {
        if self.any || *method != Method::POST {
            return false;
        }
        let mut types = headers.get_all(header::CONTENT_TYPE).iter();
        match (types.next(), types.next()) {
            (None, _) => true,
            (Some(t), None) => !matches!(FormKind::of(t.as_bytes()), FormKind::NotAForm),
            // Two types: whichever the application reads, look.
            (Some(_), Some(_)) => true,
        }
    }

    /// Whether every `_method` field of the form `body` (see
    /// [`MethodSet::scans_form_body`]) names an allowed method. Fields are read as the
    /// frameworks read them: keys decoded, any case, PHP's ` method` and `.method`, and
    /// `_method[…]`; every field counts, not only the first. A multipart body that cannot be
    /// parsed counts as overriding when `_method` appears in it anywhere.
    ///
    /// ```
    /// use http::{HeaderMap, Method, header::CONTENT_TYPE};
    /// use portcullis::methods::MethodSet;
    /// let m = MethodSet::new([Method::GET, Method::POST]);
    /// let mut h = HeaderMap::new();
    /// h.insert(CONTENT_TYPE, "application/x-www-form-urlencoded".parse().unwrap());
    /// assert!(m.allows_form_overrides(&h, b"title=hi&body=there"));
    /// assert!(!m.allows_form_overrides(&h, b"title=hi&_method=DELETE"));
    /// h.insert(CONTENT_TYPE, "multipart/form-data; boundary=XyZ".parse().unwrap());
    /// let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nput\r\n--XyZ--\r\n";
    /// assert!(!m.allows_form_overrides(&h, body));
    /// ```
    pub fn allows_form_overrides(&self, headers: &HeaderMap, body: &[u8]) -> bool {
        if self.any {
            return true;
        }
        let mut fields = 0;
        let mut types: Vec<FormKind> = Vec::new();
        for t in headers.get_all(header::CONTENT_TYPE) {
            fields += 1;
            let kind = FormKind::of(t.as_bytes());
            // Each distinct reading once: repeating a field must not repeat the scan.
            if !types.contains(&kind) {
                types.push(kind);
            }
        }
        // More than two readings of one body is no request a client means: each would cost
        // a scan of the whole body. Refused as an override.
        if types.len() > 2 {
            return false;
        }
        // No type (Rack's form), or several fields: read it as urlencoded too.
        let urlencoded_too = (fields != 1).then_some(&FormKind::UrlEncoded);
        types.iter().chain(urlencoded_too).all(|kind| match kind {
            FormKind::NotAForm => true,
            FormKind::UrlEncoded => body
                .split(|&b| b == b'&' || b == b';')
                .filter_map(|pair| {
                    let (key, value) = match pair.iter().position(|&b| b == b'=') {
                        Some(i) => (&pair[..i], &pair[i + 1..]),
                        None => (pair, &b""[..]),
                    };
                    is_override_key(&form_decode(key)).then(|| form_decode(value))
                })
                .all(|v| self.allows_named(&v)),
            FormKind::Multipart(boundary) => match multipart_overrides(body, boundary) {
                Some(values) => values.iter().all(|v| self.allows_named(v)),
                None => !contains_ignore_case(body, b"_method"),
            },
        })
    }

    /// Whether an override's value names an allowed method, compared in upper case as the
    /// frameworks do; a value that is not a method token is not allowed.
    fn allows_named(&self, name: &[u8]) -> bool {
        let upper = name.trim_ascii().to_ascii_uppercase();
        Method::from_bytes(&upper).is_ok_and(|m| self.allows(&m))
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

/// `b` decoded as `application/x-www-form-urlencoded` (`+` is a space, `%XX` a byte; a
/// malformed escape stays as it is), borrowed when there is nothing to decode.
fn form_decode(b: &[u8]) -> Cow<'_, [u8]> {
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

/// Whether a decoded field name is the `_method` override to some framework: `_method` in
/// any case, as PHP reads names (up to the first NUL, leading spaces dropped, then spaces and
/// dots made `_`: `_method%00x`, ` method`, `.method`), and as an array (`_method[]`,
/// `_method[x]`).
fn is_override_key(key: &[u8]) -> bool {
    let key = key
        .iter()
        .position(|&b| b == 0)
        .map_or(key, |nul| &key[..nul]);
    let key = key.trim_ascii_start();
    let key = key
        .iter()
        .position(|&b| b == b'[')
        .map_or(key, |i| &key[..i]);
    key.len() == 7
        && matches!(key[0], b'_' | b' ' | b'.')
        && key[1..].eq_ignore_ascii_case(b"method")
}

/// How a framework reads a body of this `Content-Type`.
#[derive(PartialEq, Eq)]
enum FormKind {
    UrlEncoded,
    /// With its boundary (empty when the type names none).
    Multipart(String),
    NotAForm,
}

impl FormKind {
    fn of(content_type: &[u8]) -> FormKind {
        let Ok(t) = std::str::from_utf8(content_type) else {
            return FormKind::NotAForm;
        };
        let mut params = t.split(';');
        let essence = params.next().unwrap_or("").trim();
        if essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            FormKind::UrlEncoded
        } else if essence.eq_ignore_ascii_case("multipart/form-data") {
            let boundary = params
                .find_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    k.trim()
                        .eq_ignore_ascii_case("boundary")
                        .then(|| v.trim().trim_matches('"').to_string())
                })
                .unwrap_or_default();
            FormKind::Multipart(boundary)
        } else {
            FormKind::NotAForm
        }
    }
}

/// The values of every part of a multipart body whose name is an override key, or `None`
/// when the body does not parse as multipart with `boundary`.
fn multipart_overrides(body: &[u8], boundary: &str) -> Option<Vec<Vec<u8>>> {
    if boundary.is_empty() || boundary.len() > 70 {
        return None;
    }
    let delimiter = [b"--", boundary.as_bytes()].concat();
    let mut values = Vec::new();
    let mut rest = &body[find(body, &delimiter)? + delimiter.len()..];
    loop {
        if rest.starts_with(b"--") {
            return Some(values); // the closing delimiter
        }
        // Some parsers accept bare LF line ends: so does this one.
        rest = rest
            .strip_prefix(b"\r\n")
            .or_else(|| rest.strip_prefix(b"\n"))?;
        // The bare-LF end is looked for only before the CRLF one: searched to the body's end
        // for every part, it made a body of many small CRLF parts cost parts × body.
        let crlf = find(rest, b"\r\n\r\n");
        let lf_within = crlf.map_or(rest, |a| &rest[..a]);
        let (head_end, sep) = match (crlf, find(lf_within, b"\n\n")) {
            (_, Some(b)) => (b, 2),
            (Some(a), None) => (a, 4),
            (None, None) => return None,
        };
        let head = &rest[..head_end];
        let content = &rest[head_end + sep..];
        let next = find(content, &delimiter)?;
        let value = content[..next]
            .strip_suffix(b"\n")
            .map(|v| v.strip_suffix(b"\r").unwrap_or(v))
            .unwrap_or(&content[..next]);
        if part_names_override(head) {
            values.push(value.to_vec());
        }
        rest = &content[next + delimiter.len()..];
    }
}

/// Whether a part's head names it `_method` (or a PHP or array spelling of it), quoted (in
/// double quotes, or single ones as PHP allows) or not.
fn part_names_override(head: &[u8]) -> bool {
    head.split(|&b| b == b'\n').any(|line| {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return false;
        };
        if !line[..colon]
            .trim_ascii()
            .eq_ignore_ascii_case(b"content-disposition")
        {
            return false;
        }
        line[colon + 1..].split(|&b| b == b';').any(|param| {
            let param = param.trim_ascii();
            let Some(eq) = param.iter().position(|&b| b == b'=') else {
                return false;
            };
            let (k, v) = (param[..eq].trim_ascii(), param[eq + 1..].trim_ascii());
            let v = v.strip_prefix(b"\"").or(v.strip_prefix(b"'")).unwrap_or(v);
            let v = v.strip_suffix(b"\"").or(v.strip_suffix(b"'")).unwrap_or(v);
            (k.eq_ignore_ascii_case(b"name") || k.eq_ignore_ascii_case(b"name*"))
                && is_override_key(&form_decode(v))
        })
    })
}

fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// The longest part head the streaming scan reads (a real one is a few hundred bytes); a
/// longer one makes the body unparsable, as if it did not parse as multipart.
const MAX_PART_HEAD: usize = 16 * 1024;
/// The longest `_method` value the streaming scan keeps; a longer one is no method.
const MAX_OVERRIDE_VALUE: usize = 1024;

/// Appends `bytes` to a `_method` value, keeping no more than can tell it is too long.
fn keep_value(value: &mut Vec<u8>, bytes: &[u8]) {
    let room = (MAX_OVERRIDE_VALUE + 2).saturating_sub(value.len());
    value.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

/// Where the streaming scan stands in the multipart body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// Before the first delimiter.
    Preamble,
    /// Just past a delimiter: the closing `--`, or a line end and a part's head.
    AfterDelimiter,
    /// In a part's head.
    Head,
    /// In a part's content; `capture` when the part is a `_method` field.
    Content { capture: bool },
    /// Past the closing delimiter: the body parsed.
    Closed,
    /// The body does not parse as multipart with its boundary.
    Unparsable,
}

/// [`MethodSet::allows_form_overrides`] for a `multipart/form-data` body read as it streams,
/// so an upload is never held whole in memory: the same verdict, from the same reading of the
/// parts (each `_method` field's value must name an allowed method; a body that does not parse
/// is refused when `_method` appears in it anywhere), keeping only a part head or a
/// `_method` value at a time.
#[derive(Debug)]
pub(crate) struct MultipartOverrideScan {
    methods: MethodSet,
    delimiter: Vec<u8>,
    finder: memchr::memmem::Finder<'static>,
    state: Scan,
    /// Bytes not yet judged: a delimiter or head that may go on in the next chunk.
    pending: Vec<u8>,
    /// The `_method` value being read.
    value: Vec<u8>,
    /// A `_method` field named a method the set refuses.
    refused: bool,
    /// `_method`, in any case, appeared somewhere (the verdict on an unparsable body).
    mentioned: bool,
    /// The last bytes of the previous chunk, for a `_method` split between chunks.
    tail: Vec<u8>,
}

impl MultipartOverrideScan {
    /// A scan of a body of this `Content-Type`, when it is one `multipart/form-data` with a
    /// usable boundary and the set refuses some method; `None` otherwise (the body is then
    /// read whole, or not at all).
    /// Boxed: the delimiter search holds SIMD state, whose alignment would otherwise carry
    /// into every request future that holds the scan.
    pub(crate) fn for_request(methods: &MethodSet, headers: &HeaderMap) -> Option<Box<Self>> {
        if methods.any {
            return None;
        }
        let mut types = headers.get_all(header::CONTENT_TYPE).iter();
        let (Some(only), None) = (types.next(), types.next()) else {
            return None;
        };
        let FormKind::Multipart(boundary) = FormKind::of(only.as_bytes()) else {
            return None;
        };
        if boundary.is_empty() || boundary.len() > 70 {
            return None;
        }
        let delimiter = [b"--", boundary.as_bytes()].concat();
        Some(Box::new(MultipartOverrideScan {
            methods: methods.clone(),
            finder: memchr::memmem::Finder::new(&delimiter).into_owned(),
            delimiter,
            state: Scan::Preamble,
            pending: Vec::new(),
            value: Vec::new(),
            refused: false,
            mentioned: false,
            tail: Vec::new(),
        }))
    }

    /// Reads the next bytes of the body.
    pub(crate) fn feed(&mut self, chunk: &[u8]) {
        self.note_mentions(chunk);
        if matches!(self.state, Scan::Closed | Scan::Unparsable) {
            return;
        }
        self.pending.extend_from_slice(chunk);
        let mut at = 0;
        loop {
            let rest = &self.pending[at..];
            match self.state {
                Scan::Preamble => match self.finder.find(rest) {
                    Some(i) => {
                        at += i + self.delimiter.len();
                        self.state = Scan::AfterDelimiter;
                    }
                    None => {
                        // Keep only what could begin the delimiter.
                        at += rest.len().saturating_sub(self.delimiter.len() - 1);
                        break;
                    }
                },
                Scan::AfterDelimiter => {
                    if rest.len() < 2 {
                        break;
                    }
                    if rest.starts_with(b"--") {
                        self.state = Scan::Closed;
                    } else if rest.starts_with(b"\r\n") {
                        at += 2;
                        self.state = Scan::Head;
                    } else if rest.starts_with(b"\n") {
                        at += 1;
                        self.state = Scan::Head;
                    } else {
                        self.state = Scan::Unparsable;
                    }
                }
                Scan::Head => {
                    // As the whole-body reader: a bare-LF end counts only before a CRLF one.
                    let crlf = find(rest, b"\r\n\r\n");
                    let lf_within = crlf.map_or(rest, |a| &rest[..a]);
                    let (end, sep) = match (crlf, find(lf_within, b"\n\n")) {
                        (_, Some(b)) => (b, 2),
                        (Some(a), None) => (a, 4),
                        (None, None) => {
                            if rest.len() > MAX_PART_HEAD {
                                self.state = Scan::Unparsable;
                            }
                            break;
                        }
                    };
                    if end > MAX_PART_HEAD {
                        self.state = Scan::Unparsable;
                        break;
                    }
                    let capture = part_names_override(&rest[..end]);
                    at += end + sep;
                    self.value.clear();
                    self.state = Scan::Content { capture };
                }
                Scan::Content { capture } => match self.finder.find(rest) {
                    Some(i) => {
                        if capture {
                            keep_value(&mut self.value, &rest[..i]);
                            self.judge_value();
                        }
                        at += i + self.delimiter.len();
                        self.state = Scan::AfterDelimiter;
                    }
                    None => {
                        // All but what could begin a delimiter is content.
                        let safe = rest.len().saturating_sub(self.delimiter.len() - 1);
                        if capture {
                            keep_value(&mut self.value, &rest[..safe]);
                        }
                        at += safe;
                        break;
                    }
                },
                Scan::Closed | Scan::Unparsable => break,
            }
        }
        if matches!(self.state, Scan::Closed | Scan::Unparsable) {
            self.pending = Vec::new();
        } else {
            self.pending.drain(..at);
        }
    }

    /// Whether every `_method` field named an allowed method, once the whole body was fed.
    pub(crate) fn allows(&self) -> bool {
        match self.state {
            Scan::Closed => !self.refused,
            _ => !self.mentioned,
        }
    }

    /// Whether a `_method` field already named a refused method (the verdict cannot change).
    pub(crate) fn refused(&self) -> bool {
        self.refused && self.state != Scan::Unparsable
    }

    /// The value read (its line end before the delimiter dropped, as the whole-body reader
    /// drops it) against the set.
    fn judge_value(&mut self) {
        let v = self.value.as_slice();
        let v = v
            .strip_suffix(b"\n")
            .map(|v| v.strip_suffix(b"\r").unwrap_or(v))
            .unwrap_or(v);
        if v.len() > MAX_OVERRIDE_VALUE || !self.methods.allows_named(v) {
            self.refused = true;
        }
    }

    /// Looks for `_method` in any case, across the chunk edge too.
    fn note_mentions(&mut self, chunk: &[u8]) {
        const NEEDLE: &[u8] = b"_method";
        if self.mentioned {
            return;
        }
        let seen = |hay: &[u8]| {
            memchr::memchr_iter(b'_', hay).any(|i| {
                hay.get(i..i + NEEDLE.len())
                    .is_some_and(|w| w.eq_ignore_ascii_case(NEEDLE))
            })
        };
        // The last bytes before this chunk, and this chunk's first: a split `_method`.
        let edge = NEEDLE.len() - 1;
        let mut joined = std::mem::take(&mut self.tail);
        joined.extend_from_slice(&chunk[..chunk.len().min(edge)]);
        self.mentioned |= seen(&joined) || seen(chunk);
        // What the next chunk joins: the last bytes of the stream so far.
        if chunk.len() >= edge {
            joined.clear();
            joined.extend_from_slice(&chunk[chunk.len() - edge..]);
        } else if joined.len() > edge {
            joined.drain(..joined.len() - edge);
        }
        self.tail = joined;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(boundary: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={boundary}")
                .parse()
                .unwrap(),
        );
        h
    }

    /// The streaming verdict equals the whole-body one, however the body is cut into chunks.
    #[test]
    fn the_streaming_scan_agrees_with_the_whole_body_reading() {
        let m = MethodSet::new([Method::GET, Method::HEAD, Method::POST]);
        let h = form("XyZ");
        let part = |name: &str, value: &str| {
            format!("--XyZ\r\nContent-Disposition: form-data; {name}\r\n\r\n{value}\r\n")
        };
        let file = "x".repeat(5000) + "--Xy" + &"y".repeat(300);
        let bodies: Vec<String> = vec![
            format!("{}--XyZ--\r\n", part("name=\"title\"", "hi")),
            format!("{}--XyZ--\r\n", part("name=\"_method\"", "DELETE")),
            format!("{}--XyZ--\r\n", part("name=\"_method\"", "post")),
            format!(
                "{}{}--XyZ--\r\n",
                part("name=\"f\"; filename=\"a.bin\"", &file),
                part("name='_method'", "PUT")
            ),
            format!(
                "{}{}--XyZ--\r\n",
                part("name=\"f\"; filename=\"a.bin\"", &file),
                part("name=_method", "GET")
            ),
            format!(
                "preamble\r\n{}--XyZ--\r\nepilogue _method",
                part("name=\"a\"", "1")
            ),
            "--XyZ\nContent-Disposition: form-data; name=\"_method\"\n\nDELETE\n--XyZ--\n"
                .to_string(),
            "not a multipart body _method=DELETE".to_string(),
            "not a multipart body at all".to_string(),
            format!("{}", part("name=\"_method\"", "DELETE")),
            format!("--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n{file}"),
            format!("--XyZ junk\r\n{}", part("name=\"_method\"", "DELETE")),
            format!("{}--XyZ--", part("name=\"_METHOD\"", &"D".repeat(2000))),
            format!("{}--XyZ--", part("name=\"_method\\0x\"", "PATCH")),
        ];
        for body in &bodies {
            let whole = m.allows_form_overrides(&h, body.as_bytes());
            for size in [1, 2, 3, 5, 7, 64, 1000, body.len().max(1)] {
                let mut scan = MultipartOverrideScan::for_request(&m, &h).unwrap();
                for chunk in body.as_bytes().chunks(size) {
                    scan.feed(chunk);
                }
                assert_eq!(scan.allows(), whole, "chunks of {size}: {body:.200}");
            }
        }
    }

    /// What the scan keeps stays small whatever streams through: a delimiter's length in a
    /// preamble or a file, a capped head, a capped `_method` value.
    #[test]
    fn the_streaming_scan_keeps_little() {
        let m = MethodSet::new([Method::POST]);
        let h = form("XyZ");
        let file = "x".repeat(1 << 20);
        for body in [
            file.clone(),
            format!("--XyZ\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\n{file}"),
            format!("--XyZ\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\n{file}"),
            format!("--XyZ\r\nX-Long: {file}"),
        ] {
            let mut scan = MultipartOverrideScan::for_request(&m, &h).unwrap();
            for chunk in body.as_bytes().chunks(8192) {
                scan.feed(chunk);
                assert!(
                    scan.pending.len() <= MAX_PART_HEAD + 8192,
                    "{}",
                    scan.pending.len()
                );
                assert!(scan.value.len() <= MAX_OVERRIDE_VALUE + 2);
            }
        }
    }

    #[test]
    fn only_one_multipart_type_with_a_boundary_is_scanned_as_it_streams() {
        let m = MethodSet::new([Method::POST]);
        assert!(MultipartOverrideScan::for_request(&m, &form("b")).is_some());
        assert!(MultipartOverrideScan::for_request(&m, &form(&"b".repeat(71))).is_none());
        assert!(MultipartOverrideScan::for_request(&MethodSet::any(), &form("b")).is_none());
        let mut two = form("b");
        two.append(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(MultipartOverrideScan::for_request(&m, &two).is_none());
        let mut urlencoded = HeaderMap::new();
        urlencoded.insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        assert!(MultipartOverrideScan::for_request(&m, &urlencoded).is_none());
    }
}

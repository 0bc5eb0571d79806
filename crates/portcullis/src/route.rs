//! Canonical path and route table.
//!
//! Guard and application must agree on what path a request names, or a check on `/api/admin`
//! is walked past by `/api//admin`, `/api/./admin` or `/api/%61dmin`. [`CanonicalPath::parse`]
//! turns the raw request path into the one form that route matching, rate-limit keys, audit
//! and the upstream request all use, and refuses what it cannot make unambiguous:
//!
//! - unreserved bytes (`A-Z a-z 0-9 - . _ ~`) that were percent-encoded are decoded once;
//!   every other escape is kept, with upper-case hex;
//! - empty segments (`//`) collapse; `.` segments go; `..` removes the segment before it, and
//!   `..` above the root is refused;
//! - refused with 400: encoded `/` or `\` (`%2f`, `%5c`), a raw `\`, `;` path parameters (raw
//!   or `%3b`), NUL, CR, LF and other control bytes (raw or encoded), double encoding
//!   (`%25` followed by two hex digits), malformed escapes, escapes that are not valid UTF-8
//!   (overlong forms like `%c0%af`), full-width and other look-alikes that some servers fold
//!   into ASCII (`%ef%bc%8f` `／`, `%ef%bd%81` `ａ`, `%e2%80%a5` `‥`, `%c4%b1` `ı`, the Kelvin
//!   sign) and invisible characters (`%c2%ad`), raw non-ASCII bytes, and segments that end in
//!   a dot or a space (`admin.`, `admin%20`), which some servers strip.
//!
//! Paths are **case-sensitive**, like the URL standard and most routers. Because some
//! applications behind a gateway match case-insensitively, a path whose case-folded form would
//! select a different route than its exact form is refused ([`RouteError`] at lookup), so
//! `/API/admin` never reaches a protected handler through a public route.
//!
//! A trailing slash is kept in the canonical path (applications may tell `/a` from `/a/`), but
//! route matching ignores it. Escaped ASCII punctuation (`%24` `$`, `%3A` `:`, `%40` `@`, ...)
//! stays escaped in the canonical path but is matched decoded, as applications route it, so a
//! route `/odata/$batch` also guards `/odata/%24batch`.
//!
//! ```
//! use portcullis::route::{CanonicalPath, RouteTable};
//! let p = CanonicalPath::parse("/api//v1/./%61dmin/../users/").unwrap();
//! assert_eq!(p.as_str(), "/api/v1/users/");
//! assert!(CanonicalPath::parse("/api/admin%2fusers").is_err());
//!
//! let mut table = RouteTable::new("default");
//! table.insert("/api/admin/**", "admin").unwrap();
//! table.insert("/api/*/notes", "notes").unwrap();
//! let hit = table.lookup(&CanonicalPath::parse("/api/admin/users").unwrap()).unwrap();
//! assert_eq!(*hit.value, "admin");
//! assert_eq!(hit.pattern, "/api/admin/**");
//! ```

use std::fmt;
use std::sync::Arc;

/// Why a raw path was refused.
///
/// ```
/// use portcullis::route::{CanonicalPath, PathError};
/// assert_eq!(CanonicalPath::parse("/files/a%2fb"), Err(PathError::EncodedSlash));
/// assert_eq!(CanonicalPath::parse("/a/..;/admin"), Err(PathError::PathParameter));
/// assert_eq!(CanonicalPath::parse("/admin."), Err(PathError::TrailingDotOrSpace));
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The path does not start with `/`.
    NotAbsolute,
    /// `%` not followed by two hex digits.
    MalformedEscape,
    /// `%2f` or `%5c`.
    EncodedSlash,
    /// A raw backslash.
    Backslash,
    /// A `;` path parameter, raw or encoded.
    PathParameter,
    /// NUL, CR, LF or another control byte, raw or encoded.
    ControlCharacter,
    /// `%25` followed by two hex digits.
    DoubleEncoding,
    /// Percent-encoded bytes that are not valid UTF-8 (overlong forms included).
    InvalidUtf8,
    /// A character that compatibility normalization or Unicode case mapping turns into ASCII
    /// (full-width `／` or `ａ`, math letters, `ı`, the Kelvin sign), or an invisible or
    /// space-like one.
    LookAlikeCharacter,
    /// A raw byte outside ASCII.
    NonAscii,
    /// `..` above the root.
    AboveRoot,
    /// A segment ending in a dot or a space.
    TrailingDotOrSpace,
    /// The path is longer than the canonicalizer accepts.
    TooLong,
}

impl PathError {
    /// A short human reason, safe to show to the client.
    ///
    /// ```
    /// use portcullis::route::{CanonicalPath, PathError};
    /// let err = CanonicalPath::parse("/../etc/passwd").unwrap_err();
    /// assert_eq!(err, PathError::AboveRoot);
    /// assert_eq!(err.reason(), "Path climbs above the root");
    /// ```
    pub fn reason(self) -> &'static str {
        match self {
            PathError::NotAbsolute => "Path must start with '/'",
            PathError::MalformedEscape => "Malformed percent-escape in path",
            PathError::EncodedSlash => "Encoded slash or backslash in path",
            PathError::Backslash => "Backslash in path",
            PathError::PathParameter => "Path parameters (';') are not accepted",
            PathError::ControlCharacter => "Control character in path",
            PathError::DoubleEncoding => "Double percent-encoding in path",
            PathError::InvalidUtf8 => "Percent-encoded bytes are not valid UTF-8",
            PathError::LookAlikeCharacter => "Look-alike or invisible character in path",
            PathError::NonAscii => "Raw non-ASCII byte in path",
            PathError::AboveRoot => "Path climbs above the root",
            PathError::TrailingDotOrSpace => "Path segment ends in a dot or space",
            PathError::TooLong => "Path too long",
        }
    }
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for PathError {}

/// The longest raw path accepted, in bytes.
///
/// ```
/// use portcullis::route::{CanonicalPath, MAX_PATH_LEN, PathError};
/// let long = format!("/{}", "a".repeat(MAX_PATH_LEN));
/// assert_eq!(CanonicalPath::parse(&long), Err(PathError::TooLong));
/// ```
pub const MAX_PATH_LEN: usize = 8192;

/// A request path in canonical form: the one form every control and the upstream see.
///
/// ```
/// use portcullis::CanonicalPath;
/// let p = CanonicalPath::parse("/api/./v1//%7Euser")?;
/// assert_eq!(p.to_string(), "/api/v1/~user");
/// assert_eq!(p, CanonicalPath::parse("/api/v1/~user")?);
/// # Ok::<(), portcullis::route::PathError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CanonicalPath(Arc<str>, bool);

impl CanonicalPath {
    /// Canonicalizes a raw request path (without the query).
    ///
    /// ```
    /// use portcullis::route::CanonicalPath;
    /// assert_eq!(CanonicalPath::parse("/a/%2E%2e/b").unwrap().as_str(), "/b");
    /// assert!(CanonicalPath::parse("/a/..;/b").is_err());
    /// ```
    pub fn parse(raw: &str) -> Result<CanonicalPath, PathError> {
        if already_canonical(raw.as_bytes()) {
            // Holds no `%` (the fast path takes none).
            return Ok(CanonicalPath(Arc::from(raw), false));
        }
        canonicalize(raw).map(|p| {
            let escaped = p.contains('%');
            CanonicalPath(Arc::from(p), escaped)
        })
    }

    /// The canonical path as a string.
    ///
    /// ```
    /// use portcullis::CanonicalPath;
    /// assert_eq!(CanonicalPath::parse("/a/b/../c/")?.as_str(), "/a/c/");
    /// assert_eq!(CanonicalPath::parse("/")?.as_str(), "/");
    /// # Ok::<(), portcullis::route::PathError>(())
    /// ```
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path's segments, ignoring a trailing slash.
    ///
    /// ```
    /// use portcullis::CanonicalPath;
    /// let p = CanonicalPath::parse("/api/v1/users/")?;
    /// assert_eq!(p.segments().collect::<Vec<_>>(), ["api", "v1", "users"]);
    /// assert_eq!(CanonicalPath::parse("/")?.segments().count(), 0);
    /// # Ok::<(), portcullis::route::PathError>(())
    /// ```
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|s| !s.is_empty())
    }
}

impl fmt::Display for CanonicalPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for CanonicalPath {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn push_escaped(out: &mut String, b: u8) {
    out.push('%');
    out.push(HEX[(b >> 4) as usize] as char);
    out.push(HEX[(b & 15) as usize] as char);
}

/// Characters that some servers, frameworks or code-page conversions fold into ASCII, so a
/// guard and an application could read one path two ways:
/// - compatibility forms (NFKC) of letters, digits, `/`, `\`, `.`, `;`, `?`, `#` and `%`:
///   full-width `／` and `ａ`, `‥` (NFKC `..`), `;` (Greek question mark), math and circled
///   letters, ligatures, super- and subscripts, letter-like symbols, squared units;
/// - the letters whose simple Unicode case mapping is ASCII (`İ ı ſ` and the Kelvin sign
///   `K`), which Java's `equalsIgnoreCase` and similar folds match against `i`, `s`, `k`;
/// - `¥` and `₩` (and their full-width forms), which Japanese and Korean Windows code pages
///   turn into `\`;
/// - spaces and invisible format characters (no-break and other spaces, soft hyphen, zero
///   widths, bidi marks, fillers, tags).
///
/// Refusing them closes the "full-width slash" and "best-fit" families of bypasses. The
/// ranges come from the Unicode data (NFKC and simple case mappings); letters with accents
/// (`é`) and scripts other than Latin keep working.
fn is_look_alike(c: char) -> bool {
    matches!(c,
        // Latin-1 and Latin Extended: no-break space, yen, ordinals, soft hyphen, superscripts,
        // fractions, ligatures, `İ ı ſ`.
        '\u{00A0}' | '\u{00A5}' | '\u{00AA}' | '\u{00AD}' | '\u{00B2}' | '\u{00B3}' | '\u{00B9}'
        | '\u{00BA}' | '\u{00BC}'..='\u{00BE}' | '\u{0130}'..='\u{0133}' | '\u{013F}' | '\u{0140}'
        | '\u{0149}' | '\u{017F}' | '\u{01C4}'..='\u{01CC}' | '\u{01F1}'..='\u{01F3}'
        // Modifier letters, combining grapheme joiner, Greek question mark (NFKC `;`).
        | '\u{02B0}'..='\u{02B8}' | '\u{02E0}'..='\u{02E4}' | '\u{034F}' | '\u{037E}'
        | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}' | '\u{180B}'..='\u{180F}'
        | '\u{1D2C}'..='\u{1D6A}' | '\u{1D9B}'..='\u{1DBF}' | '\u{1E9A}'
        // General punctuation: spaces, zero widths, dot leaders, bidi marks, fraction slash,
        // super- and subscripts.
        | '\u{2000}'..='\u{200F}' | '\u{2024}'..='\u{2026}' | '\u{2028}'..='\u{202F}'
        | '\u{2044}' | '\u{2047}'..='\u{2049}' | '\u{205F}'..='\u{209F}' | '\u{20A8}' | '\u{20A9}'
        // Letter-like symbols (Kelvin sign included), number forms, division slash, enclosed
        // alphanumerics, big solidus and reverse solidus.
        | '\u{2100}'..='\u{218F}' | '\u{2215}' | '\u{2460}'..='\u{24FF}' | '\u{29F8}'
        | '\u{29F9}' | '\u{2C7C}' | '\u{2C7D}'
        // CJK: ideographic space and full stop, Hangul filler, circled numbers, squared units.
        | '\u{3000}' | '\u{3002}' | '\u{3164}' | '\u{3250}'..='\u{325F}'
        | '\u{32B1}'..='\u{32CF}' | '\u{3358}'..='\u{33FF}'
        // Modifier capitals, Latin ligatures, vertical and small forms, BOM, full-width and
        // half-width forms, interlinear annotation.
        | '\u{A7F2}'..='\u{A7F4}' | '\u{FB00}'..='\u{FB06}' | '\u{FE10}'..='\u{FE19}'
        | '\u{FE30}'..='\u{FE6B}' | '\u{FEFF}' | '\u{FF01}'..='\u{FF5E}' | '\u{FF61}'
        | '\u{FFA0}' | '\u{FFE5}' | '\u{FFE6}' | '\u{FFF9}'..='\u{FFFB}'
        // Supplementary planes: modifier letters, musical format controls, mathematical
        // alphanumerics, enclosed alphanumerics (not the regional-indicator flags), segmented
        // digits, tags.
        | '\u{10780}'..='\u{107BF}' | '\u{1D173}'..='\u{1D17A}' | '\u{1D400}'..='\u{1D7FF}'
        | '\u{1F100}'..='\u{1F1AD}' | '\u{1FBF0}'..='\u{1FBF9}' | '\u{E0000}'..='\u{E007F}'
    )
}

/// Decodes one raw segment into its canonical encoded form in `out`.
fn canonical_segment(raw: &[u8], out: &mut String) -> Result<(), PathError> {
    let start = out.len();
    let mut i = 0;
    let mut high = Vec::new();
    while i < raw.len() {
        let b = raw[i];
        if b == b'%' {
            let (h, l) = match (raw.get(i + 1), raw.get(i + 2)) {
                (Some(&h), Some(&l)) => (h, l),
                _ => return Err(PathError::MalformedEscape),
            };
            let v = match (hex_val(h), hex_val(l)) {
                (Some(h), Some(l)) => h << 4 | l,
                _ => return Err(PathError::MalformedEscape),
            };
            i += 3;
            match v {
                b'/' | b'\\' => return Err(PathError::EncodedSlash),
                b';' => return Err(PathError::PathParameter),
                0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
                b'%' => {
                    let next_is_hex = matches!(
                        (
                            raw.get(i).copied().and_then(hex_val),
                            raw.get(i + 1).copied().and_then(hex_val)
                        ),
                        (Some(_), Some(_))
                    );
                    if next_is_hex {
                        return Err(PathError::DoubleEncoding);
                    }
                    out.push_str("%25");
                }
                0x80..=0xff => {
                    // Gather the whole run of escaped high bytes and check it is UTF-8.
                    high.clear();
                    high.push(v);
                    while i + 2 < raw.len() && raw[i] == b'%' {
                        match (
                            raw.get(i + 1).copied().and_then(hex_val),
                            raw.get(i + 2).copied().and_then(hex_val),
                        ) {
                            (Some(h), Some(l)) if (h << 4 | l) >= 0x80 => {
                                high.push(h << 4 | l);
                                i += 3;
                            }
                            _ => break,
                        }
                    }
                    let text = std::str::from_utf8(&high).map_err(|_| PathError::InvalidUtf8)?;
                    if text.chars().any(is_look_alike) {
                        return Err(PathError::LookAlikeCharacter);
                    }
                    for &b in &high {
                        push_escaped(out, b);
                    }
                }
                v if is_unreserved(v) => out.push(v as char),
                v => push_escaped(out, v),
            }
        } else {
            match b {
                b'\\' => return Err(PathError::Backslash),
                b';' => return Err(PathError::PathParameter),
                0..=0x1f | 0x7f => return Err(PathError::ControlCharacter),
                0x80..=0xff => return Err(PathError::NonAscii),
                _ => out.push(b as char),
            }
            i += 1;
        }
    }
    // `%25` followed by hex digits that were themselves escaped (`%25%32%66`) decodes to
    // `%252f` here: still double encoding, and not a fixed point of `parse`.
    let seg = &out.as_bytes()[start..];
    let double = seg
        .windows(5)
        .any(|w| w[..3] == *b"%25" && hex_val(w[3]).is_some() && hex_val(w[4]).is_some());
    if double {
        return Err(PathError::DoubleEncoding);
    }
    Ok(())
}

/// Whether `canonicalize` would return `raw` unchanged, decided in one pass without building
/// anything (the common path, on every request): absolute, within the length cap, no empty
/// segment but a trailing one, no segment ending in `.` (so no `.` or `..` either), and only
/// visible ASCII that needs no decoding and is never refused (no `%`, `\` or `;`). Anything
/// else takes the full canonicalization.
fn already_canonical(raw: &[u8]) -> bool {
    if raw.first() != Some(&b'/') || raw.len() > MAX_PATH_LEN {
        return false;
    }
    let mut prev = b'/';
    for &b in &raw[1..] {
        match b {
            b'/' if prev == b'/' || prev == b'.' => return false,
            b'%' | b'\\' | b';' => return false,
            0x21..=0x7e => {}
            _ => return false,
        }
        prev = b;
    }
    prev != b'.'
}

fn canonicalize(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    if bytes.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut out = String::with_capacity(raw.len());
    let mut starts: Vec<usize> = Vec::new();
    let mut trailing_slash = false;
    let mut segs = bytes[1..].split(|&b| b == b'/').peekable();
    while let Some(seg) = segs.next() {
        let last = segs.peek().is_none();
        let start = out.len();
        out.push('/');
        canonical_segment(seg, &mut out)?;
        let text = &out[start + 1..];
        match text {
            "" | "." => {
                out.truncate(start);
                trailing_slash = last;
            }
            ".." => {
                out.truncate(start);
                let prev = starts.pop().ok_or(PathError::AboveRoot)?;
                out.truncate(prev);
                trailing_slash = last;
            }
            _ => {
                if text.ends_with('.') || text.ends_with("%20") || text.ends_with(' ') {
                    return Err(PathError::TrailingDotOrSpace);
                }
                starts.push(start);
                trailing_slash = false;
            }
        }
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

/// Why a route pattern was refused.
///
/// ```
/// use portcullis::route::RouteTable;
/// let err = RouteTable::new(()).insert("/api/**/x**", ()).unwrap_err();
/// assert_eq!(err.pattern, "/api/**/x**");
/// assert_eq!(err.reason, "'**' must be a whole segment");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError {
    /// The pattern as written.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for PatternError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad route pattern {:?}: {}", self.pattern, self.reason)
    }
}

impl std::error::Error for PatternError {}

/// Why a lookup refused a path.
///
/// ```
/// use portcullis::route::{CanonicalPath, RouteError, RouteTable};
/// let mut table = RouteTable::new("public");
/// table.insert("/api/admin/**", "admin").unwrap();
/// // `/API/admin` would reach the admin handler in a case-insensitive application.
/// let err = table.lookup(&CanonicalPath::parse("/API/admin/users").unwrap()).unwrap_err();
/// assert_eq!(err, RouteError::CaseVariant { exact: "*".into(), folded: "/api/admin/**".into() });
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// The path's case-folded form selects a different route than its exact form.
    CaseVariant {
        /// The route the exact path selects.
        exact: String,
        /// The route its case-folded form would select.
        folded: String,
    },
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteError::CaseVariant { .. } => {
                f.write_str("Path differs only in letter case from a route with another policy")
            }
        }
    }
}

impl std::error::Error for RouteError {}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Lit(String),
    /// One segment with a `*` inside: prefix and suffix.
    Glob(String, String),
    Star,
    DoubleStar,
}

impl Seg {
    /// Higher is more specific; `END` sits between `*` and `**`: a pattern that ends here is
    /// more specific than one that goes on with `**`.
    fn rank(&self) -> u8 {
        match self {
            Seg::Lit(_) => 4,
            Seg::Glob(..) => 3,
            Seg::Star => 2,
            Seg::DoubleStar => 0,
        }
    }

    #[inline(always)]
    fn matches(&self, seg: &str, fold: bool) -> bool {
        let eq = |a: &str, b: &str| {
            if fold {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        match self {
            Seg::Lit(l) => eq(l, seg),
            Seg::Glob(p, s) => {
                seg.len() >= p.len() + s.len()
                    && seg.is_char_boundary(p.len())
                    && seg.is_char_boundary(seg.len() - s.len())
                    && eq(&seg[..p.len()], p)
                    && eq(&seg[seg.len() - s.len()..], s)
            }
            Seg::Star => true,
            Seg::DoubleStar => true,
        }
    }
}

const END_RANK: u8 = 1;

#[derive(Debug, Clone)]
struct Route<T> {
    pattern: String,
    segs: Vec<Seg>,
    value: T,
}

/// Parses a glob pattern: `/api/admin/**`, `/api/*/notes`, `/static/*.js`.
///
/// `*` matches exactly one segment (or, inside a segment, any run of characters within it);
/// `**` matches zero or more segments and must stand alone as a segment. Literal parts must be
/// canonical already (no `.`, `..`, `;`, `\` or encoded slashes).
fn parse_pattern(pattern: &str) -> Result<Vec<Seg>, PatternError> {
    let err = |reason: &str| PatternError {
        pattern: pattern.to_string(),
        reason: reason.to_string(),
    };
    if !pattern.starts_with('/') {
        return Err(err("must start with '/'"));
    }
    if pattern.contains(['?', '[', ']', '{', '}']) {
        return Err(err("only '*' and '**' wildcards are supported"));
    }
    let mut segs = Vec::new();
    for part in pattern[1..].split('/') {
        if part.is_empty() {
            if segs.is_empty() && pattern == "/" {
                break;
            }
            // A trailing slash in a pattern is ignored, like in paths; an inner one is an error.
            continue;
        }
        let seg = match part {
            "**" => Seg::DoubleStar,
            "*" => Seg::Star,
            p if p.contains("**") => return Err(err("'**' must be a whole segment")),
            p if p.matches('*').count() > 1 => {
                return Err(err("at most one '*' inside a segment"));
            }
            p if p.contains('*') => {
                let (pre, suf) = p.split_once('*').ok_or_else(|| err("unreachable"))?;
                Seg::Glob(literal(pre, pattern)?, literal(suf, pattern)?)
            }
            p => {
                let lit = literal(p, pattern)?;
                if lit == "." || lit == ".." {
                    return Err(err("'.' and '..' segments are not allowed"));
                }
                Seg::Lit(lit)
            }
        };
        segs.push(seg);
    }
    if pattern.contains("//") {
        return Err(err("empty segment ('//')"));
    }
    Ok(segs)
}

fn literal(part: &str, pattern: &str) -> Result<String, PatternError> {
    let mut out = String::new();
    canonical_segment(part.as_bytes(), &mut out).map_err(|e| PatternError {
        pattern: pattern.to_string(),
        reason: e.reason().to_string(),
    })?;
    Ok(match_form(&out).unwrap_or(out))
}

/// The form routes are matched in: a canonical path (or pattern literal) with its escapes of
/// ASCII punctuation decoded (`%24` `$`, `%3A` `:`, `%40` `@`, `%2B` `+`, `%7C` `|`, ...), or
/// `None` when it has none (most paths: then nothing is built).
///
/// The canonical path keeps those escapes (only unreserved bytes are decoded, RFC 3986
/// §6.2.2.2, and the application gets the path as it was sent), but applications decode them
/// before routing — Go's `ServeMux`, Spring, Django, Flask, ASP.NET Core, Next.js — so a
/// route `/odata/$batch` must also guard `/odata/%24batch`. `%25` (`%`) stays escaped, on both
/// sides; escapes of `/`, `\`, `;`, control bytes and unreserved bytes never reach here.
fn match_form(canonical: &str) -> Option<String> {
    let b = canonical.as_bytes();
    let decodes_at = |i: usize| -> Option<u8> {
        if b.get(i) != Some(&b'%') {
            return None;
        }
        let v = hex_val(*b.get(i + 1)?)? << 4 | hex_val(*b.get(i + 2)?)?;
        ((0x20..=0x7e).contains(&v) && v != b'%').then_some(v)
    };
    // Most paths hold no `%` at all: one short loop says so (shorter than a memchr call).
    let from = b.iter().position(|&c| c == b'%')?;
    let first = (from..b.len()).find(|&i| decodes_at(i).is_some())?;
    let mut out = String::with_capacity(b.len());
    out.push_str(&canonical[..first]);
    let mut i = first;
    while i < b.len() {
        if let Some(v) = decodes_at(i) {
            out.push(char::from(v));
            i += 3;
        } else {
            // Everything else is copied as it is: ASCII, or an escape kept escaped.
            out.push(char::from(b[i]));
            i += 1;
        }
    }
    Some(out)
}

/// A successful lookup: the route's pattern and value.
///
/// ```
/// use portcullis::route::{CanonicalPath, RouteTable};
/// let mut table = RouteTable::new(0);
/// table.insert("/api/*/notes", 1).unwrap();
/// let hit = table.lookup(&CanonicalPath::parse("/api/42/notes").unwrap()).unwrap();
/// assert_eq!((hit.pattern, hit.pattern_opt, *hit.value), ("/api/*/notes", Some("/api/*/notes"), 1));
/// let miss = table.lookup(&CanonicalPath::parse("/other").unwrap()).unwrap();
/// assert_eq!((miss.pattern, miss.pattern_opt, *miss.value), ("*", None, 0));
/// ```
#[derive(Debug)]
pub struct RouteMatch<'a, T> {
    /// The matching pattern, or `None` when the default applied.
    pub pattern_opt: Option<&'a str>,
    /// The matching pattern, or `"*"` for the default.
    pub pattern: &'a str,
    /// The value stored with the route.
    pub value: &'a T,
}

/// Glob routes mapped to values (policies); the most specific match wins.
///
/// Specificity compares the patterns segment by segment from the left: a literal beats a
/// glob segment (`*.js`), which beats `*`, and a pattern that ends beats one that continues
/// with `**`. Two patterns of equal specificity: the one inserted first wins.
///
/// ```
/// use portcullis::route::{CanonicalPath, RouteTable};
/// let mut table = RouteTable::new("default");
/// table.insert("/api/**", "api").unwrap();
/// table.insert("/api/health", "health").unwrap();
/// let value = |p| *table.lookup(&CanonicalPath::parse(p).unwrap()).unwrap().value;
/// // The literal pattern is more specific than `**`, whatever the insertion order.
/// assert_eq!(value("/api/health"), "health");
/// assert_eq!(value("/api/users"), "api");
/// assert_eq!(value("/"), "default");
/// ```
#[derive(Debug, Clone)]
pub struct RouteTable<T> {
    routes: Vec<Route<T>>,
    default: T,
}

impl<T> RouteTable<T> {
    /// The error of a path only a case variant of a route's (out of the lookup's way).
    #[cold]
    #[inline(never)]
    fn case_variant(&self, exact: Option<usize>, folded: Option<usize>) -> RouteError {
        let name = |i: Option<usize>| {
            i.map_or_else(|| "*".to_string(), |i| self.routes[i].pattern.clone())
        };
        RouteError::CaseVariant {
            exact: name(exact),
            folded: name(folded),
        }
    }

    /// A table whose unmatched paths get `default`.
    ///
    /// ```
    /// use portcullis::route::{CanonicalPath, RouteTable};
    /// let table = RouteTable::new("fallback");
    /// assert_eq!(*table.default_value(), "fallback");
    /// assert_eq!(*table.lookup(&CanonicalPath::parse("/x").unwrap()).unwrap().value, "fallback");
    /// ```
    pub fn new(default: T) -> Self {
        RouteTable {
            routes: Vec::new(),
            default,
        }
    }

    /// Adds a route. Refuses a malformed or duplicate pattern.
    ///
    /// ```
    /// use portcullis::route::RouteTable;
    /// let mut table = RouteTable::new(0);
    /// assert!(table.insert("/static/*.js", 1).is_ok());
    /// assert_eq!(table.insert("/static/*.js/", 2).unwrap_err().reason, "duplicate route pattern");
    /// assert!(table.insert("static", 3).is_err());
    /// ```
    pub fn insert(&mut self, pattern: &str, value: T) -> Result<(), PatternError> {
        let segs = parse_pattern(pattern)?;
        if self.routes.iter().any(|r| r.segs == segs) {
            return Err(PatternError {
                pattern: pattern.to_string(),
                reason: "duplicate route pattern".to_string(),
            });
        }
        self.routes.push(Route {
            pattern: pattern.to_string(),
            segs,
            value,
        });
        Ok(())
    }

    /// The value for unmatched paths.
    ///
    /// ```
    /// use portcullis::route::RouteTable;
    /// let mut table = RouteTable::new(10);
    /// table.insert("/api/**", 20).unwrap();
    /// assert_eq!(*table.default_value(), 10);
    /// ```
    pub fn default_value(&self) -> &T {
        &self.default
    }

    /// Iterates the routes in insertion order as (pattern, value).
    ///
    /// ```
    /// use portcullis::route::RouteTable;
    /// let mut table = RouteTable::new(0);
    /// table.insert("/b/**", 2).unwrap();
    /// table.insert("/a", 1).unwrap();
    /// assert_eq!(table.iter().collect::<Vec<_>>(), [("/b/**", &2), ("/a", &1)]);
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.routes.iter().map(|r| (r.pattern.as_str(), &r.value))
    }

    /// Mutable access to every value, the default included.
    ///
    /// ```
    /// use portcullis::route::RouteTable;
    /// let mut table = RouteTable::new(1);
    /// table.insert("/api/**", 2).unwrap();
    /// table.values_mut().for_each(|v| *v *= 10);
    /// assert_eq!(*table.default_value(), 10);
    /// assert_eq!(table.iter().next(), Some(("/api/**", &20)));
    /// ```
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        std::iter::once(&mut self.default).chain(self.routes.iter_mut().map(|r| &mut r.value))
    }

    /// Finds the most specific route for `path`.
    ///
    /// Refuses a path whose case-folded form selects a different route (see the module docs).
    ///
    /// ```
    /// use portcullis::route::{CanonicalPath, RouteTable};
    /// let mut table = RouteTable::new("public");
    /// table.insert("/api/admin/**", "admin").unwrap();
    /// let path = CanonicalPath::parse("/api//admin/./users")?;
    /// assert_eq!(*table.lookup(&path).unwrap().value, "admin");
    /// assert!(table.lookup(&CanonicalPath::parse("/api/Admin/users")?).is_err());
    /// # Ok::<(), portcullis::route::PathError>(())
    /// ```
    #[inline]
    pub fn lookup(&self, path: &CanonicalPath) -> Result<RouteMatch<'_, T>, RouteError> {
        // Escaped ASCII punctuation is matched as the application reads it (decoded); the
        // parse noted whether the path holds any escape at all.
        let decoded = if path.1 {
            match_form(path.as_str())
        } else {
            None
        };
        let text = decoded.as_deref().unwrap_or(path.as_str());
        let mut segs: [&str; 32] = [""; 32];
        let mut n = 0;
        let mut overflow = Vec::new();
        for s in text.split('/').filter(|s| !s.is_empty()) {
            if n < segs.len() {
                segs[n] = s;
                n += 1;
            } else {
                overflow.push(s);
            }
        }
        let all: Vec<&str>;
        let segs: &[&str] = if overflow.is_empty() {
            &segs[..n]
        } else {
            all = segs.iter().copied().chain(overflow).collect();
            &all
        };
        let (exact, folded) = self.best(segs);
        if folded != exact {
            return Err(self.case_variant(exact, folded));
        }
        Ok(match exact {
            Some(i) => RouteMatch {
                pattern_opt: Some(&self.routes[i].pattern),
                pattern: &self.routes[i].pattern,
                value: &self.routes[i].value,
            },
            None => RouteMatch {
                pattern_opt: None,
                pattern: "*",
                value: &self.default,
            },
        })
    }

    /// The most specific route for the exact path and for its case-folded form, in one pass:
    /// a route that misses the folded match cannot match exactly either.
    fn best(&self, path: &[&str]) -> (Option<usize>, Option<usize>) {
        let pick = |best: Option<usize>, i: usize, segs: &[Seg]| match best {
            Some(b) if !more_specific(segs, &self.routes[b].segs) => Some(b),
            _ => Some(i),
        };
        let (mut exact, mut folded) = (None, None);
        for (i, r) in self.routes.iter().enumerate() {
            if !matches(&r.segs, path, true) {
                continue;
            }
            folded = pick(folded, i, &r.segs);
            if matches(&r.segs, path, false) {
                exact = pick(exact, i, &r.segs);
            }
        }
        (exact, folded)
    }
}

/// Whether `pat` matches the whole of `path`.
///
/// Wildcard matching that, on a mismatch, backtracks only to the last `**` seen: every other
/// pattern segment stands for exactly one path segment, so an earlier `**` taking more could
/// never help. At most `pat.len() × path.len()` steps, whatever the number of `**` — trying
/// every split for each `**` would take `path.len()` to the power of their number, and a
/// client chooses `path.len()` (4096 segments fit in a path).
#[inline(always)]
fn matches(pat: &[Seg], path: &[&str], fold: bool) -> bool {
    // The head up to the first `**`, one step per segment (most patterns are all head, or
    // a head and one trailing `**`, which takes whatever is left).
    let mut head = 0;
    while let Some(seg) = pat.get(head) {
        if matches!(seg, Seg::DoubleStar) {
            if head + 1 == pat.len() {
                return true;
            }
            break;
        }
        match path.get(head) {
            Some(s) if seg.matches(s, fold) => head += 1,
            _ => return false,
        }
    }
    if head == pat.len() {
        return path.len() == head;
    }
    let (mut p, mut s) = (head, head);
    // After the last `**`: the pattern index following it, and the path index it ends at.
    let mut resume: Option<(usize, usize)> = None;
    while s < path.len() {
        match pat.get(p) {
            Some(Seg::DoubleStar) => {
                resume = Some((p + 1, s));
                p += 1;
            }
            Some(seg) if seg.matches(path[s], fold) => {
                p += 1;
                s += 1;
            }
            _ => match resume {
                // Let the last `**` take one more segment and retry what follows it.
                Some((after, end)) => {
                    resume = Some((after, end + 1));
                    p = after;
                    s = end + 1;
                }
                None => return false,
            },
        }
    }
    pat[p..].iter().all(|seg| matches!(seg, Seg::DoubleStar))
}

/// True when `a` is strictly more specific than `b`.
fn more_specific(a: &[Seg], b: &[Seg]) -> bool {
    let n = a.len().max(b.len());
    for i in 0..n {
        let ra = a.get(i).map_or(END_RANK, Seg::rank);
        let rb = b.get(i).map_or(END_RANK, Seg::rank);
        if ra != rb {
            return ra > rb;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass check may only say yes where the full canonicalization returns the path
    /// unchanged: every path over a small alphabet that holds each byte class the two treat
    /// differently, up to 5 bytes, plus longer hand-picked ones.
    #[test]
    fn the_fast_path_agrees_with_canonicalize() {
        let alphabet = [
            b'/', b'.', b'a', b'%', b'2', b'e', b';', b'\\', b' ', b'~', 0x7f, 0xc3,
        ];
        let mut paths: Vec<Vec<u8>> = vec![Vec::new()];
        let mut all = Vec::new();
        for _ in 0..5 {
            let mut next = Vec::new();
            for p in &paths {
                for &b in &alphabet {
                    let mut q = p.clone();
                    q.push(b);
                    next.push(q);
                }
            }
            all.extend(next.iter().cloned());
            paths = next;
        }
        for p in [
            "/api/public",
            "/api/public/",
            "/",
            "/.well-known/x",
            "/a/b.c/d",
            "/a/./b",
            "/a/../b",
            "/a/.",
            "/a/..",
            "/a//b",
            "//a",
            "/a.",
            "/a/b./",
            "/~u/@x:y!$&'()*+,=",
            "/a%2e/b",
        ] {
            all.push(p.as_bytes().to_vec());
        }
        all.push(format!("/{}", "a".repeat(MAX_PATH_LEN)).into_bytes());
        all.push(format!("/{}", "a".repeat(MAX_PATH_LEN - 1)).into_bytes());
        let mut fast = 0;
        for p in &all {
            let Ok(text) = std::str::from_utf8(p) else {
                continue;
            };
            if already_canonical(p) {
                fast += 1;
                assert_eq!(canonicalize(text).as_deref(), Ok(text), "{text:?}");
            }
            let full = canonicalize(text).map(|c| c.to_string());
            assert_eq!(
                CanonicalPath::parse(text).map(|c| c.as_str().to_string()),
                full,
                "{text:?}"
            );
        }
        assert!(fast > 500, "the fast path is taken ({fast})");
    }

    fn canon(p: &str) -> Result<String, PathError> {
        CanonicalPath::parse(p).map(|c| c.0.to_string())
    }

    #[test]
    fn normalizes_the_harmless_variants() {
        assert_eq!(canon("/").unwrap(), "/");
        assert_eq!(canon("//").unwrap(), "/");
        assert_eq!(canon("/api//admin").unwrap(), "/api/admin");
        assert_eq!(canon("/api/./admin").unwrap(), "/api/admin");
        assert_eq!(canon("/api/x/../admin").unwrap(), "/api/admin");
        assert_eq!(canon("/api/%2e%2E/api/admin").unwrap(), "/api/admin");
        assert_eq!(canon("/api/%61dmin").unwrap(), "/api/admin");
        assert_eq!(canon("/api/admin/").unwrap(), "/api/admin/");
        assert_eq!(canon("/api/admin/.").unwrap(), "/api/admin/");
        assert_eq!(canon("/a%3fb").unwrap(), "/a%3Fb");
        assert_eq!(canon("/caf%C3%A9").unwrap(), "/caf%C3%A9");
        assert_eq!(canon("/100%25").unwrap(), "/100%25");
    }

    #[test]
    fn refuses_the_ambiguous_variants() {
        for (p, e) in [
            ("api", PathError::NotAbsolute),
            ("/api%2fadmin", PathError::EncodedSlash),
            ("/api%5cadmin", PathError::EncodedSlash),
            ("/api\\admin", PathError::Backslash),
            ("/api/admin;x", PathError::PathParameter),
            ("/api/..;/admin", PathError::PathParameter),
            ("/api/%3badmin", PathError::PathParameter),
            ("/api/%00", PathError::ControlCharacter),
            ("/api/%0d%0a", PathError::ControlCharacter),
            ("/api%252fadmin", PathError::DoubleEncoding),
            ("/api/%2", PathError::MalformedEscape),
            ("/api/%zz", PathError::MalformedEscape),
            ("/api%c0%afadmin", PathError::InvalidUtf8),
            ("/api%ef%bc%8fadmin", PathError::LookAlikeCharacter),
            ("/api/adm%C4%B1n", PathError::LookAlikeCharacter),
            ("/api/%E2%80%A5/admin", PathError::LookAlikeCharacter),
            ("/api/%F0%9D%90%9Admin", PathError::LookAlikeCharacter),
            ("/api/ad%C2%ADmin", PathError::LookAlikeCharacter),
            ("/api%C2%A5admin", PathError::LookAlikeCharacter),
            ("/api/%25%32%66", PathError::DoubleEncoding),
            ("/api/%25A%41", PathError::DoubleEncoding),
            ("/..", PathError::AboveRoot),
            ("/api/../../x", PathError::AboveRoot),
            ("/api/admin.", PathError::TrailingDotOrSpace),
            ("/api/admin%20", PathError::TrailingDotOrSpace),
            ("/api/admin%2e", PathError::TrailingDotOrSpace),
        ] {
            assert_eq!(canon(p), Err(e), "{p}");
        }
    }

    fn table() -> RouteTable<&'static str> {
        let mut t = RouteTable::new("default");
        for (p, v) in [
            ("/api/**", "api"),
            ("/api/admin/**", "admin"),
            ("/api/*/notes", "notes"),
            ("/api/user/**", "user"),
            ("/api/public-data", "public"),
            ("/static/*.js", "js"),
        ] {
            t.insert(p, v).unwrap();
        }
        t
    }

    fn hit(t: &RouteTable<&'static str>, p: &str) -> &'static str {
        t.lookup(&CanonicalPath::parse(p).unwrap()).unwrap().value
    }

    #[test]
    fn most_specific_route_wins() {
        let t = table();
        assert_eq!(hit(&t, "/api/admin"), "admin");
        assert_eq!(hit(&t, "/api/admin/users"), "admin");
        assert_eq!(hit(&t, "/api/team/notes"), "notes");
        assert_eq!(hit(&t, "/api/user/notes"), "user");
        assert_eq!(hit(&t, "/api/public-data"), "public");
        assert_eq!(hit(&t, "/api/public-data/"), "public");
        assert_eq!(hit(&t, "/api/other"), "api");
        assert_eq!(hit(&t, "/static/app.js"), "js");
        assert_eq!(hit(&t, "/static/app.css"), "default");
        assert_eq!(hit(&t, "/"), "default");
    }

    #[test]
    fn case_variants_of_a_protected_route_are_refused() {
        let t = table();
        for p in ["/API/admin", "/api/Admin/users", "/Api/public-data"] {
            assert!(t.lookup(&CanonicalPath::parse(p).unwrap()).is_err(), "{p}");
        }
        // A case variant that lands on the same route is fine.
        assert_eq!(hit(&t, "/api/admin/USERS"), "admin");
    }

    /// The matcher as the patterns define it: every split tried for each `**`.
    fn matches_by_definition(pat: &[Seg], path: &[&str]) -> bool {
        match pat.split_first() {
            None => path.is_empty(),
            Some((Seg::DoubleStar, rest)) => {
                (0..=path.len()).any(|k| matches_by_definition(rest, &path[k..]))
            }
            Some((seg, rest)) => match path.split_first() {
                Some((first, tail)) => {
                    seg.matches(first, false) && matches_by_definition(rest, tail)
                }
                None => false,
            },
        }
    }

    #[test]
    fn the_matcher_agrees_with_the_definition() {
        let patterns = [
            "/",
            "/**",
            "/a",
            "/a/**",
            "/**/a",
            "/**/a/**",
            "/a/*/b",
            "/**/a/**/b",
            "/a/**/b/**",
            "/**/*/a/**",
            "/*/**/*",
            "/**/a/**/a/**/b",
            "/a*/**/*b/**",
        ];
        let alphabet = ["a", "b", "ab", "x"];
        let mut paths: Vec<Vec<&str>> = vec![Vec::new()];
        for len in 1..=6 {
            let mut more = Vec::new();
            for p in paths.iter().filter(|p| p.len() == len - 1) {
                for seg in alphabet {
                    let mut q = p.clone();
                    q.push(seg);
                    more.push(q);
                }
            }
            paths.extend(more);
        }
        for pattern in patterns {
            let segs = parse_pattern(pattern).unwrap();
            for path in &paths {
                assert_eq!(
                    matches(&segs, path, false),
                    matches_by_definition(&segs, path),
                    "{pattern} on /{}",
                    path.join("/")
                );
            }
        }
    }

    #[test]
    fn many_double_stars_over_a_long_path_match_in_linear_steps() {
        // Three `**` before the end over 2000 segments: trying all splits takes ~10^9 steps
        // (most of a minute); the matcher takes a few thousand.
        let mut t = RouteTable::new("default");
        t.insert("/**/a/**/a/**/b", "deep").unwrap();
        let long = CanonicalPath::parse(&"/a".repeat(2000)).unwrap();
        let started = std::time::Instant::now();
        assert_eq!(*t.lookup(&long).unwrap().value, "default");
        let ends_in_b = CanonicalPath::parse(&format!("{}/b", "/a".repeat(2000))).unwrap();
        assert_eq!(*t.lookup(&ends_in_b).unwrap().value, "deep");
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn escaped_punctuation_selects_the_route_the_application_decodes_it_to() {
        let mut t = RouteTable::new("public");
        for p in [
            "/odata/$batch",
            "/v1/projects/*:cancel",
            "/@admin/**",
            "/api/c++/**",
            "/api/Products(1)",
            "/api/a|b",
            "/api/x%2Cy",
        ] {
            t.insert(p, "guarded").unwrap();
        }
        for p in [
            "/odata/$batch",
            "/odata/%24batch",
            "/v1/projects/p1%3Acancel",
            "/v1/projects/p1%3acancel",
            "/%40admin/users",
            "/api/c%2B%2B/x",
            "/api/Products%281%29",
            "/api/a%7Cb",
            "/api/x,y",
            "/api/x%2cy",
        ] {
            assert_eq!(hit(&t, p), "guarded", "{p}");
        }
        // `%` itself stays escaped on both sides; other bytes are not decoded.
        assert_eq!(match_form("/100%25/a%3Ab"), Some("/100%25/a:b".to_string()));
        assert_eq!(match_form("/caf%C3%A9/100%25"), None);
        assert_eq!(match_form("/plain"), None);
        // A case variant in escaped form is still refused.
        assert!(
            t.lookup(&CanonicalPath::parse("/%40ADMIN/users").unwrap())
                .is_err()
        );
        // And the canonical path itself keeps the escapes the client sent.
        assert_eq!(canon("/odata/%24batch").unwrap(), "/odata/%24batch");
    }

    #[test]
    fn bad_patterns_are_refused() {
        let mut t = RouteTable::new(());
        for p in [
            "api", "/a/**b", "/a/*b*", "/a/[x]", "/a/../b", "/a//b", "/a%2fb",
        ] {
            assert!(t.insert(p, ()).is_err(), "{p}");
        }
        t.insert("/a/**", ()).unwrap();
        assert!(t.insert("/a/**", ()).is_err());
    }
}

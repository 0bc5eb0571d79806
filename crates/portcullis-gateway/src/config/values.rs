//! Parsers for the value syntaxes of the config file: durations, sizes, rate limits, origins,
//! host names, URLs, storage locations, CSP strings and environment variable names.
//!
//! Each returns the parsed value or a human reason; the caller adds the key path.

use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Uri;
use portcullis::Csp;
use toml::Value;
use toml::value::{Datetime, Offset};

use super::schema::type_name;

const DURATION_HINT: &str = "use a number and a unit: \"500ms\", \"10s\", \"15m\", \"1h\", \"90d\"";

/// Parses a positive duration: `"500ms"`, `"10s"`, `"15m"`, `"1h"`, `"90d"`.
///
/// ```
/// # use std::time::Duration;
/// use portcullis_gateway::config::parse_duration;
/// assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
/// assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
/// assert_eq!(parse_duration("0s").unwrap_err(), "\"0s\" must be longer than zero");
/// assert!(parse_duration("10 seconds").is_err());
/// ```
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = parse_duration_or_zero(s)?;
    if d.is_zero() {
        return Err(format!("{s:?} must be longer than zero"));
    }
    Ok(d)
}

/// Like [`parse_duration`], but `"0s"` is allowed (a leeway, for instance).
///
/// ```
/// # use std::time::Duration;
/// use portcullis_gateway::config::values::parse_duration_or_zero;
/// assert_eq!(parse_duration_or_zero("0s"), Ok(Duration::ZERO));
/// assert_eq!(parse_duration_or_zero("2h"), Ok(Duration::from_secs(7200)));
/// ```
pub fn parse_duration_or_zero(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration; {DURATION_HINT}");
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(bad());
    }
    let n: u64 = num.parse().map_err(|_| bad())?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    let ms = n
        .checked_mul(unit_ms)
        .ok_or_else(|| format!("{s:?} is too long"))?;
    Ok(Duration::from_millis(ms))
}

/// Parses a size: integer bytes, or `"100KiB"`, `"1MiB"`, `"512KB"`, `"2GB"` (KB = 1000,
/// KiB = 1024).
///
/// ```
/// use portcullis_gateway::config::values::parse_size;
/// use toml::Value;
/// assert_eq!(parse_size(&Value::String("100KiB".into())), Ok(102_400));
/// assert_eq!(parse_size(&Value::String("512KB".into())), Ok(512_000));
/// assert_eq!(parse_size(&Value::Integer(4096)), Ok(4096));
/// assert!(parse_size(&Value::Integer(-1)).is_err());
/// ```
pub fn parse_size(v: &Value) -> Result<u64, String> {
    match v {
        Value::Integer(i) => u64::try_from(*i).map_err(|_| "a size cannot be negative".to_string()),
        Value::String(s) => parse_size_str(s),
        other => Err(format!(
            "expected bytes (an integer) or a size such as \"100KiB\", found {}",
            type_name(other)
        )),
    }
}

fn parse_size_str(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a size; use bytes or \"100KiB\", \"1MiB\", \"512KB\"");
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(bad());
    }
    let n: u64 = num.parse().map_err(|_| bad())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" => 1 << 10,
        "mb" => 1_000_000,
        "mib" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Parses a rate-limit string `REQUESTS/WINDOW`: `"10/1m"`, `"100/1h"`.
///
/// ```
/// # use std::time::Duration;
/// use portcullis_gateway::config::values::parse_rate;
/// assert_eq!(parse_rate("10/1m"), Ok((10, Duration::from_secs(60))));
/// assert!(parse_rate("0/1m").unwrap_err().contains("at least one request"));
/// assert!(parse_rate("10 per minute").is_err());
/// ```
pub fn parse_rate(s: &str) -> Result<(u32, Duration), String> {
    let bad = || {
        format!("{s:?} is not a rate limit; use REQUESTS/WINDOW such as \"10/1m\" or \"100/1h\"")
    };
    let (n, w) = s.split_once('/').ok_or_else(bad)?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(format!("{s:?} must allow at least one request"));
    }
    let w = parse_duration(w.trim()).map_err(|_| bad())?;
    Ok((n, w))
}

/// Checks an origin as browsers send it: `scheme://host[:port]`, lowercase, nothing else.
///
/// ```
/// use portcullis_gateway::config::values::parse_origin;
/// assert_eq!(parse_origin("https://app.example.com:8443").unwrap(), "https://app.example.com:8443");
/// assert!(parse_origin("https://app.example.com/").unwrap_err().contains("no path, query or trailing slash"));
/// assert!(parse_origin("https://App.example.com").unwrap_err().contains("lowercase"));
/// ```
pub fn parse_origin(s: &str) -> Result<String, String> {
    let bad = |why: &str| {
        format!(
            "{s:?} is not an origin ({why}); write scheme://host[:port], e.g. \"https://app.example.com\""
        )
    };
    let (scheme, rest) = s.split_once("://").ok_or_else(|| bad("no scheme"))?;
    if scheme != "http" && scheme != "https" {
        return Err(bad("the scheme must be http or https"));
    }
    if rest.is_empty() {
        return Err(bad("no host"));
    }
    if rest.contains(['/', '?', '#']) {
        return Err(bad("no path, query or trailing slash"));
    }
    if rest.contains('@') {
        return Err(bad("no user info"));
    }
    if rest.contains('*') {
        return Err(bad("wildcards are not allowed"));
    }
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(bad("write it in lowercase, as browsers send it"));
    }
    rest.parse::<http::uri::Authority>()
        .map_err(|_| bad("bad host or port"))?;
    Ok(s.to_string())
}

/// Checks a host name for the `Host` allowlist: a DNS name or a bracketed IPv6 address,
/// without scheme or port.
///
/// ```
/// use portcullis_gateway::config::values::parse_host;
/// assert_eq!(parse_host("API.Example.com").unwrap(), "api.example.com");
/// assert_eq!(parse_host("[::1]").unwrap(), "[::1]");
/// assert!(parse_host("example.com:443").is_err()); // no port
/// ```
pub fn parse_host(s: &str) -> Result<String, String> {
    let h = s.trim().to_ascii_lowercase();
    let bad = || {
        format!(
            "{s:?} is not a host name; write the name without scheme or port, e.g. \"example.com\""
        )
    };
    if let Some(inner) = h.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        inner.parse::<Ipv6Addr>().map_err(|_| bad())?;
        return Ok(h);
    }
    let labels_ok = !h.is_empty()
        && h.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !labels_ok {
        return Err(bad());
    }
    Ok(h)
}

/// Checks the upstream URL: `http://` or `https://`, a host, a port (if written) from 1 to
/// 65535, no credentials, no path beyond `/`, no query (requests keep their own path) and no
/// `#fragment`.
///
/// ```
/// use portcullis_gateway::config::values::parse_upstream;
/// let uri = parse_upstream("http://127.0.0.1:3000").unwrap();
/// assert_eq!(uri.authority().unwrap().as_str(), "127.0.0.1:3000");
/// assert!(parse_upstream("http://127.0.0.1:3000/app").unwrap_err().contains("cannot have a path or query"));
/// assert!(parse_upstream("http://user:pw@127.0.0.1").unwrap_err().contains("credentials"));
/// assert!(parse_upstream("http://127.0.0.1:99999").unwrap_err().contains("port 99999"));
/// assert!(parse_upstream("http://127.0.0.1:0").unwrap_err().contains("port 0"));
/// assert!(parse_upstream("http://127.0.0.1:3000#app").unwrap_err().contains("fragment"));
/// ```
pub fn parse_upstream(s: &str) -> Result<Uri, String> {
    parse_http_url(s, false)
}

/// Checks an `http(s)://` URL that may have a path (a JWKS endpoint).
///
/// ```
/// use portcullis_gateway::config::values::parse_url_with_path;
/// let url = parse_url_with_path("https://id.example.com/.well-known/jwks.json").unwrap();
/// assert_eq!(url.path(), "/.well-known/jwks.json");
/// assert!(parse_url_with_path("ftp://id.example.com/jwks.json").is_err());
/// ```
pub fn parse_url_with_path(s: &str) -> Result<Uri, String> {
    parse_http_url(s, true)
}

fn parse_http_url(s: &str, path_ok: bool) -> Result<Uri, String> {
    let uri: Uri = s.parse().map_err(|_| format!("{s:?} is not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!("{s:?} must be an http:// or https:// URL"));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{s:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!("{s:?}: credentials in the URL are not supported"));
    }
    if authority.host().is_empty() {
        return Err(format!("{s:?} has no host"));
    }
    // `http::Uri` parses the port lazily: `:99999` or `:0` would parse here and then be
    // dialled as port 80 (or fail on every request), so the port is checked now.
    if let Some(port) = authority.as_str()[authority.host().len()..].strip_prefix(':') {
        match port.parse::<u16>() {
            Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => {}
            _ => {
                return Err(format!(
                    "{s:?}: port {port} is not a port number from 1 to 65535"
                ));
            }
        }
    }
    // `http::Uri` drops a fragment silently; it never reaches a server, so it is a mistake.
    if s.contains('#') {
        return Err(format!("{s:?} cannot have a #fragment"));
    }
    if !path_ok
        && let Some(pq) = uri.path_and_query()
        && pq.as_str() != "/"
    {
        return Err(format!(
            "{s:?} cannot have a path or query (requests keep their own path)"
        ));
    }
    Ok(uri)
}

/// Where rate-limit counters live.
///
/// ```
/// use portcullis_gateway::config::{GatewayConfig, RateLimitStore};
/// let config = GatewayConfig::from_str("server.upstream = \"http://127.0.0.1:3000\"", "portcullis.toml")?;
/// assert_eq!(config.storage.rate_limit, RateLimitStore::Memory); // the default
/// # Ok::<(), portcullis_gateway::config::ConfigErrors>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitStore {
    /// In this process (lost on restart, not shared between instances).
    Memory,
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A Redis server: the `redis://` or `rediss://` URL (without password).
    Redis(String),
}

/// Where audit events go.
///
/// ```
/// use portcullis_gateway::config::{AuditStore, GatewayConfig};
/// assert_eq!(GatewayConfig::from_str(r#"
/// server.upstream = "http://127.0.0.1:3000"
/// storage.audit = "stdout"
/// "#, "portcullis.toml")?.storage.audit, AuditStore::Stdout);
/// # Ok::<(), portcullis_gateway::config::ConfigErrors>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditStore {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database: the `postgres://` URL (without password).
    Postgres(String),
    /// One JSON object per line, appended to a file.
    Jsonl(PathBuf),
    /// One JSON object per line on standard output.
    Stdout,
}

/// Resolves a path written in the config file against the file's directory.
///
/// ```
/// # use std::path::{Path, PathBuf};
/// use portcullis_gateway::config::values::resolve_path;
/// let base = Path::new("/etc/portcullis");
/// assert_eq!(resolve_path(base, "audit.db"), PathBuf::from("/etc/portcullis/audit.db"));
/// assert_eq!(resolve_path(base, "/var/lib/audit.db"), PathBuf::from("/var/lib/audit.db"));
/// ```
pub fn resolve_path(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn file_url<'a>(s: &'a str, rest: &'a str) -> Result<&'a str, String> {
    if rest.is_empty() {
        Err(format!("{:?} names no file", redact_url(s)))
    } else {
        Ok(rest)
    }
}

/// A store URL as error messages show it: the password of its userinfo and the value of a
/// `password`-like query parameter replaced with `***`, so a secret put in the wrong place
/// never reaches a terminal, a CI log or the journal.
///
/// ```
/// use portcullis_gateway::config::values::redact_url;
/// assert_eq!(redact_url("redis://:hunter2@cache:6379"), "redis://:***@cache:6379");
/// assert_eq!(redact_url("postgres://gw:pw@db/audit?sslmode=require&password=x"),
///     "postgres://gw:***@db/audit?sslmode=require&password=***");
/// assert_eq!(redact_url("sqlite://limits.db"), "sqlite://limits.db");
/// ```
pub fn redact_url(s: &str) -> String {
    let (head, query) = match s.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (s, None),
    };
    let mut out = match head.split_once("://") {
        Some((scheme, rest)) => {
            let end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(end);
            match authority.rsplit_once('@') {
                Some((userinfo, host)) => match userinfo.split_once(':') {
                    Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
                    None => head.to_string(),
                },
                None => head.to_string(),
            }
        }
        None => head.to_string(),
    };
    if let Some(query) = query {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if secret_param(k) => format!("{k}=***"),
                _ => pair.to_string(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    out
}

/// Whether a URL query parameter name holds a password (libpq's `password`, `sslpassword`).
fn secret_param(name: &str) -> bool {
    name.to_ascii_lowercase().contains("password")
}

/// Whether the URL's query carries a password parameter.
fn query_password(s: &str) -> bool {
    s.split_once('?').is_some_and(|(_, q)| {
        q.split('&')
            .any(|pair| secret_param(pair.split_once('=').map_or(pair, |(k, _)| k)))
    })
}

/// Parses `[storage] rate_limit`: `memory`, `sqlite://PATH`, `redis://HOST:PORT[/DB]`,
/// `rediss://HOST:PORT[/DB]`.
///
/// ```
/// # use std::path::{Path, PathBuf};
/// use portcullis_gateway::config::values::{RateLimitStore, parse_rate_limit_store};
/// let base = Path::new("/etc/portcullis");
/// let sqlite = RateLimitStore::Sqlite(PathBuf::from("/etc/portcullis/limits.db"));
/// assert_eq!(parse_rate_limit_store("sqlite://limits.db", base), Ok(sqlite));
/// assert_eq!(parse_rate_limit_store("redis://cache:6379/2", base), Ok(RateLimitStore::Redis("redis://cache:6379/2".into())));
/// assert!(parse_rate_limit_store("redis://:pw@cache:6379", base).unwrap_err().contains("redis_password_env"));
/// ```
pub fn parse_rate_limit_store(s: &str, base: &Path) -> Result<RateLimitStore, String> {
    // What the messages show: never a password the URL holds.
    let shown = redact_url(s);
    let unknown = || {
        format!(
            "{shown:?} has an unknown storage scheme; expected \"memory\", \"sqlite://PATH\", \"redis://HOST:PORT\" or \"rediss://HOST:PORT\""
        )
    };
    if s == "memory" {
        return Ok(RateLimitStore::Memory);
    }
    let (scheme, rest) = s.split_once("://").ok_or_else(unknown)?;
    match scheme {
        "sqlite" => Ok(RateLimitStore::Sqlite(resolve_path(
            base,
            file_url(s, rest)?,
        ))),
        "redis" | "rediss" => {
            if rest.contains('@') {
                return Err(format!(
                    "{shown:?}: put the password in redis_password_env, not in the URL"
                ));
            }
            let (host, db) = rest.split_once('/').unwrap_or((rest, ""));
            if !db.is_empty() && !db.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("{shown:?}: the database after / must be a number"));
            }
            let ok = host
                .parse::<http::uri::Authority>()
                .is_ok_and(|a| !a.host().is_empty());
            if !ok {
                return Err(format!("{shown:?} has no valid HOST:PORT"));
            }
            Ok(RateLimitStore::Redis(s.to_string()))
        }
        _ => Err(unknown()),
    }
}

/// Parses `[storage] audit`: `sqlite://PATH`, `postgres://…`, `jsonl://PATH`, `stdout`.
///
/// ```
/// # use std::path::{Path, PathBuf};
/// use portcullis_gateway::config::values::{AuditStore, parse_audit_store};
/// let base = Path::new("/etc/portcullis");
/// let jsonl = AuditStore::Jsonl(PathBuf::from("/etc/portcullis/audit.jsonl"));
/// assert_eq!(parse_audit_store("jsonl://audit.jsonl", base), Ok(jsonl));
/// assert_eq!(parse_audit_store("stdout", base), Ok(AuditStore::Stdout));
/// assert!(parse_audit_store("postgres://gw:pw@db/audit", base).unwrap_err().contains("postgres_password_env"));
/// let err = parse_audit_store("postgres://gw@db/audit?password=pw", base).unwrap_err();
/// assert!(err.contains("postgres_password_env") && !err.contains("pw@") && !err.contains("=pw"));
/// ```
pub fn parse_audit_store(s: &str, base: &Path) -> Result<AuditStore, String> {
    // What the messages show: never a password the URL holds.
    let shown = redact_url(s);
    let unknown = || {
        format!(
            "{shown:?} has an unknown storage scheme; expected \"sqlite://PATH\", \"postgres://…\", \"jsonl://PATH\" or \"stdout\""
        )
    };
    if s == "stdout" {
        return Ok(AuditStore::Stdout);
    }
    let (scheme, rest) = s.split_once("://").ok_or_else(unknown)?;
    match scheme {
        "sqlite" => Ok(AuditStore::Sqlite(resolve_path(base, file_url(s, rest)?))),
        "jsonl" => Ok(AuditStore::Jsonl(resolve_path(base, file_url(s, rest)?))),
        "postgres" | "postgresql" => {
            let authority = rest.split(['/', '?']).next().unwrap_or("");
            let in_userinfo = authority
                .rsplit_once('@')
                .is_some_and(|(user, _)| user.contains(':'));
            if in_userinfo || query_password(s) {
                return Err(format!(
                    "{shown:?}: put the password in postgres_password_env, not in the URL"
                ));
            }
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            if host.is_empty() {
                return Err(format!("{shown:?} has no host"));
            }
            Ok(AuditStore::Postgres(s.to_string()))
        }
        _ => Err(unknown()),
    }
}

/// CSP keywords that only mean something quoted; bare, a browser reads them as host names.
const CSP_KEYWORDS: [&str; 11] = [
    "self",
    "none",
    "unsafe-inline",
    "unsafe-eval",
    "unsafe-hashes",
    "strict-dynamic",
    "report-sample",
    "wasm-unsafe-eval",
    "unsafe-allow-redirects",
    "inline-speculation-rules",
    "nonce",
];

/// Parses a CSP string with [`Csp::parse`], after checks of our own that catch the usual
/// mistakes: directive names that are not `[a-z-]+`, unquoted keywords (`self` instead of
/// `'self'`), repeated directives (browsers ignore the second), `,` between directives and
/// characters a header cannot carry. Line breaks count as spaces, as in CSP's own parsing,
/// so a long policy can be written as a multi-line TOML string; the header sends it on one
/// line with single spaces.
///
/// ```
/// use portcullis_gateway::config::values::parse_csp;
/// let csp = parse_csp("default-src 'self';\n  script-src 'self' 'nonce'").unwrap();
/// assert_eq!(csp.to_string(), "default-src 'self'; script-src 'self' 'nonce'");
/// assert_eq!(parse_csp("default-src self").unwrap_err(), "in default-src: the keyword self must be quoted: 'self'");
/// ```
pub fn parse_csp(s: &str) -> Result<Csp, String> {
    if s.trim().is_empty() {
        return Err("the policy is empty (write false to send no CSP)".to_string());
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_whitespace() || (0x21..=0x7e).contains(&b))
    {
        return Err("only visible ASCII characters and whitespace are allowed".to_string());
    }
    if s.contains(',') {
        return Err("',' separates whole policies in a header; use ';' between directives".into());
    }
    let mut seen: Vec<String> = Vec::new();
    for d in s.split(';') {
        let mut parts = d.split_ascii_whitespace();
        let Some(name) = parts.next() else { continue };
        let lower = name.to_ascii_lowercase();
        if !lower.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
            return Err(format!("{name:?} is not a directive name"));
        }
        if seen.contains(&lower) {
            return Err(format!(
                "directive {lower} appears twice (browsers ignore the second)"
            ));
        }
        for v in parts {
            if CSP_KEYWORDS.contains(&v.to_ascii_lowercase().as_str()) {
                return Err(format!("in {lower}: the keyword {v} must be quoted: '{v}'"));
            }
        }
        seen.push(lower);
    }
    Csp::parse(s).map_err(|e| e.to_string())
}

/// Checks an environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
///
/// ```
/// use portcullis_gateway::config::values::check_env_name;
/// assert_eq!(check_env_name("JWT_SECRET"), Ok("JWT_SECRET"));
/// assert!(check_env_name("$JWT_SECRET").is_err());
/// assert!(check_env_name("1SECRET").is_err());
/// ```
pub fn check_env_name(s: &str) -> Result<&str, String> {
    let mut bytes = s.bytes();
    let ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(s)
    } else {
        // Not echoed: what stands here may be the secret itself.
        let hint = if s.starts_with('$') {
            " (leave out the `$`)"
        } else {
            " (letters, digits and `_`, not starting with a digit): name the variable that \
             holds the secret, never the secret itself"
        };
        Err(format!("is not an environment variable name{hint}"))
    }
}

/// Checks a cookie name (an RFC 6265 token).
///
/// ```
/// use portcullis_gateway::config::values::check_cookie_name;
/// assert_eq!(check_cookie_name("__Host-session").unwrap(), "__Host-session");
/// assert!(check_cookie_name("my session").is_err());
/// ```
pub fn check_cookie_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} is not a cookie name"))
    }
}

/// Checks a header name.
///
/// ```
/// use portcullis_gateway::config::values::check_header_name;
/// assert_eq!(check_header_name("X-Request-Id").unwrap(), "x-request-id");
/// assert!(check_header_name("bad header").is_err());
/// ```
pub fn check_header_name(s: &str) -> Result<String, String> {
    http::HeaderName::from_bytes(s.as_bytes())
        .map(|n| n.as_str().to_string())
        .map_err(|_| format!("{s:?} is not a header name"))
}

/// Checks the header of a rate-limit key `header:NAME`: a header name, and not one that
/// carries a client address. Keyed on such a header, a limit is as good as the value a client
/// sends: a new address each request is a new quota, the mistake of keying on the leftmost
/// `X-Forwarded-For`. `key = "ip"` with `server.trusted_proxies` reads the address safely.
///
/// ```
/// use portcullis_gateway::config::values::check_rate_key_header;
/// assert_eq!(check_rate_key_header("X-Tenant").unwrap(), "x-tenant");
/// assert!(check_rate_key_header("X-Real-IP").unwrap_err().contains("trusted_proxies"));
/// assert!(check_rate_key_header("x tenant").is_err());
/// ```
pub fn check_rate_key_header(s: &str) -> Result<String, String> {
    let name = check_header_name(s)?;
    if name.starts_with("x-forwarded-")
        || portcullis::inbound::CLIENT_ADDRESS_HEADERS.contains(&name.as_str())
    {
        return Err(format!(
            "{name} carries a client address, which a client can write and a proxy may pass \
             on (each new value a new quota); use key = \"ip\", with the proxies in front \
             listed in server.trusted_proxies: it walks X-Forwarded-For from the right"
        ));
    }
    Ok(name)
}

/// Checks a name used in ids and labels (API key ids, rate-limit names): `[A-Za-z0-9_.:@-]+`.
///
/// ```
/// use portcullis_gateway::config::values::check_label;
/// assert_eq!(check_label("ci-deploy@prod").unwrap(), "ci-deploy@prod");
/// assert!(check_label("ci deploy").unwrap_err().contains("only letters, digits"));
/// ```
pub fn check_label(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:@-".contains(&b));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!("{s:?} may use only letters, digits and _ . : @ -"))
    }
}

/// Checks a content type for the allowlist: `type/subtype` or `type/*` (the library's
/// check, which `SecurityLayerBuilder::build` applies too).
///
/// ```
/// use portcullis_gateway::config::values::check_content_type;
/// assert_eq!(check_content_type("Application/JSON").unwrap(), "application/json");
/// assert_eq!(check_content_type("image/*").unwrap(), "image/*");
/// assert!(check_content_type("json").is_err());
/// ```
pub use portcullis::policy::check_content_type;

/// Parses `sha256:<64 hex>` into the digest.
///
/// ```
/// use portcullis_gateway::config::values::parse_sha256;
/// assert_eq!(parse_sha256(&format!("sha256:{}", "0f".repeat(32))), Ok([0x0f; 32]));
/// assert!(parse_sha256(&portcullis::auth::api_key::hash_key("pk_test_only")).is_ok());
/// assert!(parse_sha256("md5:0f0f").is_err());
/// ```
pub fn parse_sha256(s: &str) -> Result<[u8; 32], String> {
    let bad = || {
        format!(
            "expected \"sha256:\" followed by 64 hex digits (see `portcullis apikey new`), found {s:?}"
        )
    };
    let hex = s.strip_prefix("sha256:").ok_or_else(bad)?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Parses an RFC 3339 date-time with an offset (a TOML date-time or a string).
///
/// ```
/// # use std::time::{Duration, UNIX_EPOCH};
/// use portcullis_gateway::config::values::parse_rfc3339;
/// use toml::Value;
/// let t = parse_rfc3339(&Value::String("2030-01-01T00:00:00Z".into())).unwrap();
/// assert_eq!(t, UNIX_EPOCH + Duration::from_secs(1_893_456_000));
/// // The offset is required: a local time is ambiguous.
/// assert!(parse_rfc3339(&Value::String("2030-01-01T00:00:00".into())).is_err());
/// ```
pub fn parse_rfc3339(v: &Value) -> Result<SystemTime, String> {
    let dt = match v {
        Value::Datetime(dt) => *dt,
        Value::String(s) => s
            .parse::<Datetime>()
            .map_err(|_| format!("{s:?} is not an RFC 3339 date-time"))?,
        other => {
            return Err(format!(
                "expected an RFC 3339 date-time, found {}",
                type_name(other)
            ));
        }
    };
    let (Some(date), Some(time), Some(offset)) = (dt.date, dt.time, dt.offset) else {
        return Err(format!(
            "{dt} needs a date, a time and an offset, e.g. 2026-12-31T23:59:59Z"
        ));
    };
    let days = days_from_civil(
        i64::from(date.year),
        i64::from(date.month),
        i64::from(date.day),
    );
    let offset_secs = match offset {
        Offset::Z => 0,
        Offset::Custom { minutes } => i64::from(minutes) * 60,
    };
    let secs = days * 86_400
        + i64::from(time.hour) * 3_600
        + i64::from(time.minute) * 60
        + i64::from(time.second.unwrap_or(0))
        - offset_secs;
    let secs = u64::try_from(secs).map_err(|_| format!("{dt} is before 1970"))?;
    Ok(UNIX_EPOCH + Duration::new(secs, time.nanosecond.unwrap_or(0)))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_every_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86_400)));
    }

    #[test]
    fn bad_durations_are_refused() {
        for s in [
            "",
            "10",
            "s",
            "1.5h",
            "-1s",
            "10 sec",
            "1w",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(s).is_err(), "{s:?} should be refused");
        }
        assert!(
            parse_duration("0s")
                .unwrap_err()
                .contains("longer than zero")
        );
        assert_eq!(parse_duration_or_zero("0s"), Ok(Duration::ZERO));
        assert!(
            parse_duration("10x")
                .unwrap_err()
                .contains("not a duration")
        );
    }

    #[test]
    fn sizes_take_bytes_and_units() {
        assert_eq!(parse_size(&Value::Integer(102_400)), Ok(102_400));
        assert_eq!(parse_size(&Value::String("100KiB".into())), Ok(102_400));
        assert_eq!(parse_size(&Value::String("1MiB".into())), Ok(1 << 20));
        assert_eq!(parse_size(&Value::String("512KB".into())), Ok(512_000));
        assert_eq!(parse_size(&Value::String("2 GiB".into())), Ok(2 << 30));
        assert_eq!(parse_size(&Value::String("42".into())), Ok(42));
    }

    #[test]
    fn bad_sizes_are_refused() {
        assert!(parse_size(&Value::Integer(-1)).is_err());
        assert!(parse_size(&Value::Boolean(true)).is_err());
        for s in [
            "",
            "KiB",
            "1.5MiB",
            "10 parsecs",
            "100000000000000000000GiB",
        ] {
            assert!(parse_size(&Value::String(s.into())).is_err(), "{s:?}");
        }
        assert!(
            parse_size(&Value::String("1TB".into()))
                .unwrap_err()
                .contains("not a size")
        );
    }

    #[test]
    fn rate_limit_strings_are_requests_per_window() {
        assert_eq!(parse_rate("10/1m"), Ok((10, Duration::from_secs(60))));
        assert_eq!(parse_rate("5/1h"), Ok((5, Duration::from_secs(3600))));
        assert_eq!(
            parse_rate(" 100 / 500ms "),
            Ok((100, Duration::from_millis(500)))
        );
        for s in [
            "10", "10/", "/1m", "ten/1m", "10/1", "10/m", "-1/1m", "10/1m/2",
        ] {
            assert!(parse_rate(s).is_err(), "{s:?} should be refused");
        }
        assert!(parse_rate("0/1m").unwrap_err().contains("at least one"));
    }

    #[test]
    fn origins_must_be_exact() {
        assert!(parse_origin("https://app.example.com").is_ok());
        assert!(parse_origin("http://localhost:3000").is_ok());
        for s in [
            "app.example.com",
            "ftp://x.com",
            "https://x.com/",
            "https://*.x.com",
            "https://X.com",
            "https://u@x.com",
            "null",
            "*",
        ] {
            assert!(parse_origin(s).is_err(), "{s:?} should be refused");
        }
    }

    #[test]
    fn upstreams_have_no_path() {
        assert!(parse_upstream("http://127.0.0.1:3000").is_ok());
        assert!(parse_upstream("https://app.internal/").is_ok());
        assert!(parse_upstream("http://x/api").is_err());
        assert!(parse_upstream("http://x/?a=1").is_err());
        assert!(parse_upstream("ftp://x").is_err());
        assert!(parse_upstream("http://user:pw@x").is_err());
        assert!(parse_upstream("127.0.0.1:3000").is_err());
    }

    #[test]
    fn storage_urls_by_scheme() {
        let base = Path::new("/etc/portcullis");
        assert_eq!(
            parse_rate_limit_store("memory", base),
            Ok(RateLimitStore::Memory)
        );
        assert_eq!(
            parse_rate_limit_store("sqlite://rl.db", base),
            Ok(RateLimitStore::Sqlite(PathBuf::from(
                "/etc/portcullis/rl.db"
            )))
        );
        assert!(parse_rate_limit_store("redis://localhost:6379/0", base).is_ok());
        assert!(parse_rate_limit_store("rediss://cache:6380", base).is_ok());
        assert!(parse_rate_limit_store("redis://:pw@cache:6379", base).is_err());
        assert!(
            parse_rate_limit_store("memcached://x", base)
                .unwrap_err()
                .contains("unknown storage scheme")
        );
        assert_eq!(parse_audit_store("stdout", base), Ok(AuditStore::Stdout));
        assert!(parse_audit_store("postgres://audit@db:5432/audit", base).is_ok());
        assert!(parse_audit_store("postgres://audit:pw@db/audit", base).is_err());
        assert_eq!(
            parse_audit_store("jsonl:///var/log/a.jsonl", base),
            Ok(AuditStore::Jsonl(PathBuf::from("/var/log/a.jsonl")))
        );
        assert!(parse_audit_store("mysql://db", base).is_err());
    }

    #[test]
    fn csp_mistakes_are_caught() {
        assert!(
            parse_csp("default-src 'self'; script-src 'self' 'nonce' 'strict-dynamic'").is_ok()
        );
        assert!(
            parse_csp("default-src self")
                .unwrap_err()
                .contains("must be quoted")
        );
        assert!(parse_csp("script-src 'self' none").is_err());
        assert!(
            parse_csp("default_src 'self'")
                .unwrap_err()
                .contains("not a directive name")
        );
        assert!(parse_csp("default-src 'self', img-src *").is_err());
        assert!(
            parse_csp("img-src *; img-src 'self'")
                .unwrap_err()
                .contains("twice")
        );
        assert!(parse_csp("  ").is_err());
        assert!(parse_csp("default-src 'self'\u{7f}").is_err());
        assert!(parse_csp("img-src 'self' d\u{e9}j\u{e0}.example").is_err());
    }

    #[test]
    fn a_multi_line_csp_is_sent_on_one_line() {
        let csp = parse_csp(
            "\n  default-src 'self';\r\n  script-src 'self'\t'nonce'\n    'strict-dynamic';\n  object-src 'none'\n",
        )
        .unwrap();
        assert_eq!(
            csp.to_string(),
            "default-src 'self'; script-src 'self' 'nonce' 'strict-dynamic'; object-src 'none'"
        );
        let header = csp.render(Some(&portcullis::Nonce::generate()));
        assert!(header.as_bytes().iter().all(|b| (0x20..0x7f).contains(b)));
    }

    #[test]
    fn api_key_hashes_are_sha256_hex() {
        let ok = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(parse_sha256(&ok).unwrap(), [0xab; 32]);
        assert!(parse_sha256(&"ab".repeat(32)).is_err());
        assert!(parse_sha256("sha256:abcd").is_err());
        assert!(parse_sha256(&format!("sha256:{}", "zz".repeat(32))).is_err());
    }

    #[test]
    fn rfc3339_needs_an_offset() {
        let t = parse_rfc3339(&Value::String("1970-01-02T00:00:01Z".into())).unwrap();
        assert_eq!(t, UNIX_EPOCH + Duration::from_secs(86_401));
        let t = parse_rfc3339(&Value::String("2000-03-01T01:00:00+01:00".into())).unwrap();
        assert_eq!(t, UNIX_EPOCH + Duration::from_secs(951_868_800));
        assert!(parse_rfc3339(&Value::String("2026-01-01T00:00:00".into())).is_err());
        assert!(parse_rfc3339(&Value::String("2026-01-01".into())).is_err());
        assert!(parse_rfc3339(&Value::String("soon".into())).is_err());
    }

    #[test]
    fn host_names_have_no_port() {
        assert_eq!(parse_host("Example.COM").unwrap(), "example.com");
        assert!(parse_host("[::1]").is_ok());
        assert!(parse_host("example.com:8080").is_err());
        assert!(parse_host("https://example.com").is_err());
        assert!(parse_host("*.example.com").is_err());
    }
}

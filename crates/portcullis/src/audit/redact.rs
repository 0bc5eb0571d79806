//! Scrubbing secrets out of audit events before they are stored.
//!
//! The layer only puts codes and reasons into an event, but sinks outlive today's layer: a
//! guard, a library user's own events or a future control may add headers, query strings or
//! bodies. The [`AuditWriter`](super::AuditWriter) runs every event through a [`Redactor`]
//! before it reaches the spool or the store:
//! - object keys that name a secret (`password`, `token`, `secret`, `authorization`, `cookie`,
//!   `api_key`, … plus configured ones; matched as substrings of the lower-cased key with `-`
//!   read as `_`, so `X-Api-Key` and `access_token` count) have their value replaced, whatever
//!   its type, recursively;
//! - in every string (metadata values, the path, the request id): JWT-looking tokens
//!   (`eyJ…` with two or more dots), `Bearer`/`Basic` credentials, and `key=value` or
//!   `key: value` pairs whose key names a secret (query strings, cookie and header lines,
//!   JSON text) — the value is replaced, up to the end of the line for `Authorization` and
//!   `Cookie`;
//! - NUL characters, which PostgreSQL's `text` and `jsonb` refuse, become U+FFFD.
//!
//! ```
//! use portcullis::audit::Redactor;
//! let r = Redactor::new();
//! let mut v = serde_json::json!({"query": "a=1&token=abc", "headers": {"Authorization": "Bearer x"}});
//! r.redact_value(&mut v);
//! assert_eq!(v["query"], "a=1&token=[redacted]");
//! assert_eq!(v["headers"]["Authorization"], "[redacted]");
//! ```

use std::borrow::Cow;

use serde_json::Value;

use super::AuditEvent;

/// What a secret is replaced with.
///
/// ```
/// use portcullis::audit::{Redactor, redact::REDACTED};
/// assert_eq!(Redactor::new().scrub("password=test-only"), format!("password={REDACTED}"));
/// ```
pub const REDACTED: &str = "[redacted]";

/// Key fragments that name a secret by default.
///
/// ```
/// use portcullis::audit::{Redactor, redact::DEFAULT_SENSITIVE_FIELDS};
/// let r = Redactor::new();
/// assert!(DEFAULT_SENSITIVE_FIELDS.iter().all(|f| r.is_sensitive_key(f)));
/// ```
pub const DEFAULT_SENSITIVE_FIELDS: [&str; 10] = [
    "password",
    "passwd",
    "token",
    "secret",
    "authorization",
    "cookie",
    "api_key",
    "apikey",
    "credential",
    "private_key",
];

/// Removes secrets from events; see the module docs for what counts.
///
/// ```
/// use portcullis::audit::Redactor;
/// let r = Redactor::new().sensitive_field("ssn");
/// let mut v = serde_json::json!({"user": "alice", "ssn": "000-00-0000"});
/// r.redact_value(&mut v);
/// assert_eq!(v, serde_json::json!({"user": "alice", "ssn": "[redacted]"}));
/// ```
#[derive(Debug, Clone)]
pub struct Redactor {
    fields: Vec<String>,
}

impl Default for Redactor {
    fn default() -> Self {
        Redactor {
            fields: DEFAULT_SENSITIVE_FIELDS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

fn normalize(key: &str) -> String {
    key.chars()
        .map(|c| match c {
            '-' | ' ' | '.' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

impl Redactor {
    /// The default sensitive fields.
    ///
    /// ```
    /// use portcullis::audit::Redactor;
    /// let r = Redactor::new();
    /// assert!(r.is_sensitive_key("X-Api-Key"));
    /// assert!(!r.is_sensitive_key("user_agent"));
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Also treats keys containing `name` as secret (e.g. `ssn`, `x-internal-sig`).
    ///
    /// ```
    /// use portcullis::audit::Redactor;
    /// let r = Redactor::new().sensitive_field("X-Internal-Sig");
    /// assert!(r.is_sensitive_key("x_internal_sig_v2"));
    /// assert_eq!(r.scrub("x-internal-sig=abc"), "x-internal-sig=[redacted]");
    /// ```
    pub fn sensitive_field(mut self, name: &str) -> Self {
        let n = normalize(name);
        if !n.is_empty() && !self.fields.contains(&n) {
            self.fields.push(n);
        }
        self
    }

    /// True when `key` names a secret.
    ///
    /// ```
    /// use portcullis::audit::Redactor;
    /// let r = Redactor::new();
    /// assert!(r.is_sensitive_key("access_token"));
    /// assert!(r.is_sensitive_key("Set-Cookie"));
    /// assert!(!r.is_sensitive_key("route"));
    /// ```
    pub fn is_sensitive_key(&self, key: &str) -> bool {
        let k = normalize(key);
        self.fields.iter().any(|f| k.contains(f.as_str()))
    }

    /// Scrubs every string column that could carry client input, and the metadata.
    ///
    /// ```
    /// use portcullis::audit::Redactor;
    /// # let mut event = portcullis::audit::AuditEvent {
    /// #     id: portcullis::audit::uuid_v7(),
    /// #     ts_ms: 0,
    /// #     action: portcullis::audit::AuditAction::Forbidden,
    /// #     outcome: portcullis::audit::Outcome::Denied,
    /// #     principal: Some("alice".into()),
    /// #     client_ip: Some("203.0.113.7".into()),
    /// #     method: "POST".into(),
    /// #     route: "/api/admin/**".into(),
    /// #     path: "/api/admin/users".into(),
    /// #     status: 403,
    /// #     request_id: "req-1".into(),
    /// #     metadata: serde_json::json!({"code": "forbidden"}),
    /// # };
    /// event.path = "/login?user=alice&password=test-only".into();
    /// event.metadata = serde_json::json!({"headers": {"Authorization": "Bearer abc"}});
    /// Redactor::new().redact_event(&mut event);
    /// assert_eq!(event.path, "/login?user=alice&password=[redacted]");
    /// assert_eq!(event.metadata["headers"]["Authorization"], "[redacted]");
    /// ```
    pub fn redact_event(&self, e: &mut AuditEvent) {
        for s in [&mut e.path, &mut e.request_id, &mut e.route, &mut e.method] {
            scrub_in_place(self, s);
        }
        for s in [&mut e.principal, &mut e.client_ip].into_iter().flatten() {
            scrub_in_place(self, s);
        }
        self.redact_value(&mut e.metadata);
    }

    /// Scrubs a JSON value recursively.
    ///
    /// ```
    /// use portcullis::audit::Redactor;
    /// let mut v = serde_json::json!({"note": "sent Bearer abc.def", "list": [{"api_key": 42}]});
    /// Redactor::new().redact_value(&mut v);
    /// assert_eq!(v["note"], "sent Bearer [redacted]");
    /// assert_eq!(v["list"][0]["api_key"], "[redacted]"); // whatever its type
    /// ```
    pub fn redact_value(&self, v: &mut Value) {
        match v {
            Value::Object(map) => {
                for (k, val) in map.iter_mut() {
                    if self.is_sensitive_key(k) {
                        if !val.is_null() {
                            *val = Value::String(REDACTED.into());
                        }
                    } else {
                        self.redact_value(val);
                    }
                }
                // Keys themselves can carry secrets (a token used as a map key).
                if map.keys().any(|k| matches!(self.scrub(k), Cow::Owned(_))) {
                    let old = std::mem::take(map);
                    for (k, val) in old {
                        map.insert(self.scrub(&k).into_owned(), val);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|i| self.redact_value(i)),
            Value::String(s) => scrub_in_place(self, s),
            _ => {}
        }
    }

    /// `s` with secrets replaced (borrowed when there were none).
    ///
    /// ```
    /// use std::borrow::Cow;
    /// use portcullis::audit::Redactor;
    /// let r = Redactor::new();
    /// assert!(matches!(r.scrub("/api/notes?page=2"), Cow::Borrowed(_))); // nothing to remove
    /// assert_eq!(r.scrub("Cookie: session=abc; theme=dark"), "Cookie: [redacted]");
    /// ```
    pub fn scrub<'a>(&self, s: &'a str) -> Cow<'a, str> {
        let b = s.as_bytes();
        let mut out = String::new();
        let mut last = 0;
        let mut i = 0;
        while i < b.len() {
            let boundary = i == 0 || !(is_b64url(b[i - 1]) || b[i - 1] == b'.');
            if boundary
                && b[i..].starts_with(b"eyJ")
                && let Some(end) = jwt_end(b, i)
            {
                out.push_str(&s[last..i]);
                out.push_str(REDACTED);
                last = end;
                i = end;
                continue;
            }
            if boundary
                && b[i].is_ascii_alphabetic()
                && let Some((start, end)) = scheme_credential(b, i)
            {
                out.push_str(&s[last..start]);
                out.push_str(REDACTED);
                last = end;
                i = end;
                continue;
            }
            if (b[i] == b'=' || b[i] == b':')
                && let Some(key) = key_before(s, i)
                && self.is_sensitive_key(key)
            {
                let to_eol = {
                    let k = normalize(key);
                    k.contains("cookie") || k.contains("authorization")
                };
                if let Some((start, end)) = value_after(b, i + 1, to_eol)
                    && start >= last
                {
                    out.push_str(&s[last..start]);
                    out.push_str(REDACTED);
                    last = end;
                    i = end;
                    continue;
                }
            }
            if b[i] == 0 {
                out.push_str(&s[last..i]);
                out.push('\u{FFFD}');
                last = i + 1;
            }
            i += 1;
        }
        if last == 0 && out.is_empty() {
            Cow::Borrowed(s)
        } else {
            out.push_str(&s[last..]);
            Cow::Owned(out)
        }
    }
}

fn scrub_in_place(r: &Redactor, s: &mut String) {
    if let Cow::Owned(new) = r.scrub(s) {
        *s = new;
    }
}

fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn is_token_byte(b: u8) -> bool {
    is_b64url(b) || matches!(b, b'.' | b'~' | b'+' | b'/' | b'=')
}

/// The end of a JWS/JWE compact token starting at `i` (`eyJ…`), if it has two dots or more.
fn jwt_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i;
    let mut dots = 0;
    loop {
        let seg = j;
        while j < b.len() && is_b64url(b[j]) {
            j += 1;
        }
        if j == seg && dots < 2 {
            return None;
        }
        if j < b.len() && b[j] == b'.' && dots < 4 {
            dots += 1;
            j += 1;
        } else {
            break;
        }
    }
    (dots >= 2).then_some(j)
}

/// `Bearer X` / `Basic X` at `i`: the range of `X`.
fn scheme_credential(b: &[u8], i: usize) -> Option<(usize, usize)> {
    const SCHEMES: [&[u8]; 2] = [b"bearer", b"basic"];
    let scheme = SCHEMES
        .iter()
        .find(|s| b.len() >= i + s.len() && b[i..i + s.len()].eq_ignore_ascii_case(s))?;
    let mut j = i + scheme.len();
    if j >= b.len() || b[j] != b' ' {
        return None;
    }
    while j < b.len() && b[j] == b' ' {
        j += 1;
    }
    let start = j;
    while j < b.len() && is_token_byte(b[j]) {
        j += 1;
    }
    (j > start).then_some((start, j))
}

/// The identifier before `=`/`:` at `i`, skipping a closing quote and spaces (JSON text).
fn key_before(s: &str, i: usize) -> Option<&str> {
    let b = s.as_bytes();
    let mut end = i;
    while end > 0 && b[end - 1] == b' ' {
        end -= 1;
    }
    if end > 0 && (b[end - 1] == b'"' || b[end - 1] == b'\'') {
        end -= 1;
    }
    let mut start = end;
    while start > 0
        && (b[start - 1].is_ascii_alphanumeric() || matches!(b[start - 1], b'_' | b'-' | b'.'))
    {
        start -= 1;
    }
    (start < end).then(|| &s[start..end])
}

/// The value after a separator at `i`: quoted (up to the closing quote), to the end of the line,
/// or up to a delimiter. `None` when empty.
fn value_after(b: &[u8], mut i: usize, to_eol: bool) -> Option<(usize, usize)> {
    while i < b.len() && b[i] == b' ' {
        i += 1;
    }
    if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
        let q = b[i];
        let start = i + 1;
        let mut j = start;
        while j < b.len() && b[j] != q {
            if b[j] == b'\\' {
                j += 1;
            }
            j += 1;
        }
        let end = j.min(b.len());
        return (end > start).then_some((start, end));
    }
    let start = i;
    let mut j = i;
    while j < b.len() {
        let c = b[j];
        let stop = if to_eol {
            c == b'\n' || c == b'\r'
        } else {
            c.is_ascii_whitespace()
                || matches!(
                    c,
                    b'&' | b';' | b',' | b'"' | b'\'' | b')' | b']' | b'}' | b'<'
                )
        };
        if stop {
            break;
        }
        j += 1;
    }
    (j > start).then_some((start, j))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz";

    #[test]
    fn jwt_anywhere_in_a_string_is_replaced() {
        let r = Redactor::new();
        let s = format!("see /reset/{JWT}/confirm and {JWT}");
        let out = r.scrub(&s);
        assert!(!out.contains("eyJ"), "{out}");
        assert_eq!(out, "see /reset/[redacted]/confirm and [redacted]");
    }

    #[test]
    fn bearer_and_basic_credentials_are_replaced() {
        let r = Redactor::new();
        assert_eq!(r.scrub("Bearer abc.def-ghi"), "Bearer [redacted]");
        assert_eq!(
            r.scrub("got basic dXNlcjpwdw== ok"),
            "got basic [redacted] ok"
        );
        assert_eq!(
            r.scrub("Authorization: Bearer x y"),
            "Authorization: [redacted]"
        );
    }

    #[test]
    fn sensitive_pairs_in_query_cookie_and_json_text() {
        let r = Redactor::new();
        assert_eq!(
            r.scrub("/x?a=1&access_token=s3cr3t&b=2"),
            "/x?a=1&access_token=[redacted]&b=2"
        );
        assert_eq!(r.scrub("Cookie: sid=abc; theme=dark"), "Cookie: [redacted]");
        assert_eq!(
            r.scrub(r#"{"user":"bob","password":"hunter2"}"#),
            r#"{"user":"bob","password":"[redacted]"}"#
        );
        assert_eq!(r.scrub("nothing here: fine=1"), "nothing here: fine=1");
        assert!(matches!(r.scrub("plain text"), Cow::Borrowed(_)));
    }

    #[test]
    fn sensitive_keys_are_replaced_recursively() {
        let r = Redactor::new().sensitive_field("ssn");
        let mut v = json!({
            "headers": {"X-Api-Key": "k1", "Cookie": "a=b", "accept": "json"},
            "body": [{"password": {"nested": 1}, "SSN": "123", "name": "x"}],
            "clientSecret": 5,
            "none": null,
        });
        r.redact_value(&mut v);
        assert_eq!(v["headers"]["X-Api-Key"], REDACTED);
        assert_eq!(v["headers"]["Cookie"], REDACTED);
        assert_eq!(v["headers"]["accept"], "json");
        assert_eq!(v["body"][0]["password"], REDACTED);
        assert_eq!(v["body"][0]["SSN"], REDACTED);
        assert_eq!(v["body"][0]["name"], "x");
        assert_eq!(v["clientSecret"], REDACTED);
        assert!(v["none"].is_null());
    }

    #[test]
    fn nul_becomes_replacement_character() {
        assert_eq!(Redactor::new().scrub("a\0b"), "a\u{FFFD}b");
    }

    #[test]
    fn two_segment_text_is_not_a_jwt() {
        let r = Redactor::new();
        assert_eq!(r.scrub("eyJfoo.bar"), "eyJfoo.bar");
    }
}

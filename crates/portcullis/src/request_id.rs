//! Request ids: `X-Request-Id` is kept when the client sent a sane one and generated otherwise;
//! it is on every response and in every error body and audit event.
//!
//! ```
//! use portcullis::request_id::RequestId;
//! assert!(RequestId::from_client("abc-123").is_some());
//! assert!(RequestId::from_client("bad id\n").is_none());
//! assert_eq!(RequestId::generate().as_str().len(), 36);
//! ```

use bytes::Bytes;
use http::request::Parts;
use http::{HeaderName, HeaderValue};

/// The `x-request-id` header name.
///
/// ```
/// use portcullis::request_id::X_REQUEST_ID;
/// assert_eq!(X_REQUEST_ID, "x-request-id");
/// ```
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client-supplied id kept.
///
/// ```
/// use portcullis::request_id::{MAX_LEN, RequestId};
/// assert!(RequestId::from_client(&"a".repeat(MAX_LEN)).is_some());
/// assert!(RequestId::from_client(&"a".repeat(MAX_LEN + 1)).is_none());
/// ```
pub const MAX_LEN: usize = 128;

/// A request's id; also an axum extractor.
///
/// ```
/// use portcullis::RequestId;
/// let id = RequestId::from_client("req-42").unwrap();
/// assert_eq!(id.to_string(), "req-42");
/// assert_ne!(RequestId::generate(), RequestId::generate());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// Accepts a client's id if it is 1–128 characters of `A-Z a-z 0-9 - _ . :`, so it can
    /// never inject into logs or headers; anything else is replaced by a generated id.
    ///
    /// ```
    /// use portcullis::RequestId;
    /// assert_eq!(RequestId::from_client("trace:01.a_b-c").unwrap().as_str(), "trace:01.a_b-c");
    /// assert!(RequestId::from_client("").is_none());
    /// assert!(RequestId::from_client("<script>").is_none());
    /// ```
    pub fn from_client(value: &str) -> Option<RequestId> {
        let ok = !value.is_empty()
            && value.len() <= MAX_LEN
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if !ok {
            return None;
        }
        HeaderValue::from_str(value).ok().map(RequestId)
    }

    /// A fresh random id in UUID v4 form.
    ///
    /// ```
    /// use portcullis::RequestId;
    /// let id = RequestId::generate();
    /// let s = id.as_str();
    /// assert_eq!((s.len(), &s[14..15], &s[8..9]), (36, "4", "-"));
    /// // A generated id is itself one a client may send back.
    /// assert!(RequestId::from_client(s).is_some());
    /// ```
    pub fn generate() -> RequestId {
        let mut b: [u8; 16] = crate::random::bytes();
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let out = uuid_text(b);
        // Shared as it is (one allocation, no copy): the response field and the upstream
        // request clone this value, never re-check or copy it.
        RequestId(
            HeaderValue::from_maybe_shared(Bytes::from_owner(out)).unwrap_or(
                HeaderValue::from_static("00000000-0000-4000-8000-000000000000"),
            ),
        )
    }

    /// The id as text.
    ///
    /// ```
    /// use portcullis::RequestId;
    /// assert_eq!(RequestId::from_client("abc").unwrap().as_str(), "abc");
    /// ```
    pub fn as_str(&self) -> &str {
        // Only ASCII ever gets in (`from_client` and `generate`).
        std::str::from_utf8(self.0.as_bytes()).unwrap_or_default()
    }

    /// The id the layer gave a request: its [`RequestId`] extension, or its
    /// [`RequestContext`](crate::layer::RequestContext)'s.
    ///
    /// ```
    /// use portcullis::RequestId;
    /// let mut ext = http::Extensions::new();
    /// assert!(RequestId::of(&ext).is_none());
    /// ext.insert(RequestId::from_client("a1").unwrap());
    /// assert_eq!(RequestId::of(&ext).unwrap().as_str(), "a1");
    /// ```
    pub fn of(extensions: &http::Extensions) -> Option<&RequestId> {
        // The context first: the gateway's layer inserts that, and one lookup finds it.
        extensions
            .get::<crate::layer::RequestContext>()
            .map(|c| &c.request_id)
            .or_else(|| extensions.get::<RequestId>())
    }

    /// The id as an `X-Request-Id` field value, without a copy.
    ///
    /// ```
    /// use portcullis::RequestId;
    /// let id = RequestId::from_client("req-42").unwrap();
    /// assert_eq!(id.header_value(), "req-42");
    /// ```
    pub fn header_value(&self) -> HeaderValue {
        self.0.clone()
    }
}

/// The 16 bytes in UUID form: lowercase hex digits, dashes at 8, 13, 18 and 23.
fn uuid_text(b: [u8; 16]) -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Where each byte's two digits go: constant places, so the loop unrolls with neither a
    // branch nor a bounds check.
    const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    let mut out = *b"00000000-0000-0000-0000-000000000000";
    for (byte, at) in b.iter().zip(AT) {
        out[at] = HEX[usize::from(byte >> 4)];
        out[at + 1] = HEX[usize::from(byte & 15)];
    }
    out
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(RequestId::of(&parts.extensions)
            .cloned()
            .unwrap_or_else(RequestId::generate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text is the bytes' hex digits, in groups of 4, 2, 2, 2 and 6 bytes between dashes.
    #[test]
    fn uuid_text_is_the_grouped_hex_digits() {
        let mut cases = vec![[0u8; 16], [0xff; 16]];
        cases.push(std::array::from_fn(|i| i as u8 * 17));
        for _ in 0..64 {
            cases.push(crate::random::bytes());
        }
        for b in cases {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            let want = format!(
                "{}-{}-{}-{}-{}",
                &hex[0..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..32]
            );
            assert_eq!(std::str::from_utf8(&uuid_text(b)).unwrap(), want);
        }
    }

    #[test]
    fn generated_ids_are_version_4_variant_1_and_distinct() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..256 {
            let id = RequestId::generate();
            let s = id.as_str();
            assert_eq!(s.len(), 36);
            assert_eq!(&s[14..15], "4", "{s}");
            assert!(matches!(&s[19..20], "8" | "9" | "a" | "b"), "{s}");
            assert!(seen.insert(s.to_string()));
        }
    }
}

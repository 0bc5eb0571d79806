//! A secret value that never shows itself.

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Secret bytes (an HMAC key, an API key): `Debug` prints `[redacted]`, comparisons run in
/// constant time, and the memory is wiped when the last copy is dropped.
///
/// ```
/// use portcullis::auth::Secret;
/// let s = Secret::from("correct horse battery staple, long enough");
/// assert_eq!(format!("{s:?}"), "[redacted]");
/// assert!(s.ct_eq(&Secret::from("correct horse battery staple, long enough")));
/// assert_eq!(s.expose(), b"correct horse battery staple, long enough");
/// ```
#[derive(Clone, Default)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// Wraps secret bytes.
    ///
    /// ```
    /// use portcullis::auth::Secret;
    /// let s = Secret::new(b"test-only-secret".to_vec());
    /// assert_eq!(s.expose(), b"test-only-secret");
    /// ```
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(Zeroizing::new(bytes.into()))
    }

    /// The secret bytes, for the code that must use them (signing, hashing).
    ///
    /// ```
    /// use portcullis::auth::Secret;
    /// let s = Secret::from("test-only-secret");
    /// assert_eq!(std::str::from_utf8(s.expose()), Ok("test-only-secret"));
    /// ```
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The length in bytes (not secret: it is how strong keys are checked).
    ///
    /// ```
    /// use portcullis::auth::Secret;
    /// assert_eq!(Secret::from("test-only-secret").len(), 16);
    /// ```
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when the secret is empty.
    ///
    /// ```
    /// use portcullis::auth::Secret;
    /// assert!(Secret::default().is_empty());
    /// assert!(!Secret::from("x").is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Compares two secrets in constant time (for equal lengths).
    ///
    /// ```
    /// use portcullis::auth::Secret;
    /// let a = Secret::from("test-only-secret");
    /// assert!(a.ct_eq(&Secret::from("test-only-secret")));
    /// assert!(!a.ct_eq(&Secret::from("test-only-secreT")));
    /// ```
    pub fn ct_eq(&self, other: &Secret) -> bool {
        bool::from(self.0.as_slice().ct_eq(other.0.as_slice()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret::new(s.as_bytes())
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret::new(s.into_bytes())
    }
}

impl From<Vec<u8>> for Secret {
    fn from(b: Vec<u8>) -> Self {
        Secret::new(b)
    }
}

impl From<&[u8]> for Secret {
    fn from(b: &[u8]) -> Self {
        Secret::new(b)
    }
}

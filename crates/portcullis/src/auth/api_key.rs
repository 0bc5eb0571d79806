//! API keys: `Authorization: ApiKey <key>` or `X-API-Key: <key>`.
//!
//! Only SHA-256 hashes of the keys are stored (`sha256:<64 hex>` lines in the config), so a
//! leaked config does not leak keys. A fast hash is enough because keys are random and long
//! ([`generate`] draws 32 bytes from the OS); slow password hashes are for human-chosen
//! secrets. The presented key is hashed once and compared with every stored hash in constant
//! time, without stopping at a match, so timing reveals neither which key nor how much of it
//! matched.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use portcullis::auth::api_key::{self, ApiKey, ApiKeyAuthenticator};
//!
//! let fresh = api_key::generate();           // `portcullis apikey new`
//! println!("key (shown once): {}", fresh.key());
//! let ci = ApiKey::new("ci-deploy", fresh.hash_line(), ["deploy"])
//!     .unwrap()
//!     .expires_at(SystemTime::now() + Duration::from_secs(90 * 86400));
//! let auth = ApiKeyAuthenticator::new([ci]).unwrap();
//! ```

use std::time::SystemTime;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header;
use http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

use super::secret::Secret;
use super::{AuthMethod, AuthOutcome, Authenticator, BoxFuture, Principal};

/// The header carrying a bare key.
///
/// ```
/// use portcullis::auth::{AuthOutcome, Authenticator};
/// use portcullis::auth::api_key::{self, ApiKey, ApiKeyAuthenticator, X_API_KEY};
/// let auth = ApiKeyAuthenticator::new([ApiKey::new("ci", &api_key::hash_key("pk_test_only"), ["deploy"]).unwrap()]).unwrap();
/// let (parts, ()) = http::Request::get("/").header(X_API_KEY, "pk_test_only").body(()).unwrap().into_parts();
/// assert!(matches!(auth.authenticate_now(&parts), Some(AuthOutcome::Authenticated(_))));
/// ```
pub const X_API_KEY: &str = "x-api-key";

/// [`X_API_KEY`] as a header name, checked once: a `&str` name is parsed at each lookup.
pub(crate) const X_API_KEY_NAME: http::HeaderName = http::HeaderName::from_static(X_API_KEY);

/// Keys longer than this are refused before hashing.
const MAX_KEY_BYTES: usize = 512;

/// Why an API key entry could not be read.
///
/// ```
/// use portcullis::auth::api_key::{self, ApiKey, ApiKeyAuthenticator, ApiKeyError};
/// assert_eq!(ApiKey::new("ci", "sha256:abc", ["deploy"]).unwrap_err(), ApiKeyError::BadHash);
/// let line = api_key::hash_key("pk_test_only");
/// let twice = [ApiKey::new("ci", &line, ["deploy"])?, ApiKey::new("ci", &line, ["deploy"])?];
/// assert_eq!(ApiKeyAuthenticator::new(twice).unwrap_err(), ApiKeyError::DuplicateId("ci".into()));
/// # Ok::<(), ApiKeyError>(())
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKeyError {
    /// The hash line is not `sha256:` followed by 64 hex digits.
    BadHash,
    /// An empty key id.
    EmptyId,
    /// Two entries with the same id.
    DuplicateId(String),
    /// Two entries with the same hash (one key, two identities).
    DuplicateHash(String),
}

impl std::fmt::Display for ApiKeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiKeyError::BadHash => f.write_str("api key hash must be sha256:<64 hex digits>"),
            ApiKeyError::EmptyId => f.write_str("api key id is empty"),
            ApiKeyError::DuplicateId(id) => write!(f, "two api keys have the id {id:?}"),
            ApiKeyError::DuplicateHash(id) => {
                write!(f, "api key {id:?} has the same hash as another key")
            }
        }
    }
}

impl std::error::Error for ApiKeyError {}

/// One stored key: an id (the principal's id), its hash, roles and an optional expiry.
///
/// ```
/// use portcullis::auth::api_key::{self, ApiKey};
/// let k = ApiKey::new("reporting", &api_key::hash_key("pk_example"), ["reader"]).unwrap();
/// assert_eq!(k.id(), "reporting");
/// assert!(ApiKey::new("x", "md5:abc", ["reader"]).is_err());
/// ```
#[derive(Clone)]
pub struct ApiKey {
    id: String,
    hash: [u8; 32],
    roles: Vec<String>,
    expires_at: Option<SystemTime>,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("id", &self.id)
            .field("roles", &self.roles)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl ApiKey {
    /// An entry from its id, hash line (`sha256:<hex>`) and roles.
    ///
    /// ```
    /// use portcullis::auth::api_key::{self, ApiKey, ApiKeyError};
    /// let k = ApiKey::new("reporting", &api_key::hash_key("pk_test_only"), ["reader"])?;
    /// assert_eq!(k.roles(), ["reader"]);
    /// assert_eq!(ApiKey::new("", &api_key::hash_key("pk_test_only"), ["reader"]).unwrap_err(), ApiKeyError::EmptyId);
    /// # Ok::<(), ApiKeyError>(())
    /// ```
    pub fn new<I, R>(id: impl Into<String>, hash_line: &str, roles: I) -> Result<Self, ApiKeyError>
    where
        I: IntoIterator<Item = R>,
        R: Into<String>,
    {
        let id = id.into();
        if id.is_empty() {
            return Err(ApiKeyError::EmptyId);
        }
        Ok(ApiKey {
            id,
            hash: parse_hash_line(hash_line)?,
            roles: roles.into_iter().map(Into::into).collect(),
            expires_at: None,
        })
    }

    /// The key stops working at `at`.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use portcullis::auth::api_key::{self, ApiKey, ApiKeyAuthenticator};
    /// let yesterday = SystemTime::now() - Duration::from_secs(86_400);
    /// let k = ApiKey::new("old", &api_key::hash_key("pk_test_only"), ["reader"])?.expires_at(yesterday);
    /// let auth = ApiKeyAuthenticator::new([k])?;
    /// assert_eq!(auth.verify("pk_test_only").unwrap_err(), "expired");
    /// # Ok::<(), api_key::ApiKeyError>(())
    /// ```
    pub fn expires_at(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// The key id.
    ///
    /// ```
    /// use portcullis::auth::api_key::{self, ApiKey};
    /// let k = ApiKey::new("ci-deploy", &api_key::hash_key("pk_test_only"), ["deploy"]).unwrap();
    /// assert_eq!(k.id(), "ci-deploy");
    /// ```
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key's roles.
    ///
    /// ```
    /// use portcullis::auth::api_key::{self, ApiKey};
    /// let k = ApiKey::new("ci", &api_key::hash_key("pk_test_only"), ["deploy", "read"]).unwrap();
    /// assert_eq!(k.roles(), ["deploy", "read"]);
    /// ```
    pub fn roles(&self) -> &[String] {
        &self.roles
    }

    /// When the key expires.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use portcullis::auth::api_key::{self, ApiKey};
    /// let k = ApiKey::new("ci", &api_key::hash_key("pk_test_only"), ["deploy"]).unwrap();
    /// assert_eq!(k.expiry(), None);
    /// let at = SystemTime::now() + Duration::from_secs(3600);
    /// assert_eq!(k.expires_at(at).expiry(), Some(at));
    /// ```
    pub fn expiry(&self) -> Option<SystemTime> {
        self.expires_at
    }
}

fn parse_hash_line(line: &str) -> Result<[u8; 32], ApiKeyError> {
    let hex = line
        .trim()
        .strip_prefix("sha256:")
        .ok_or(ApiKeyError::BadHash)?;
    if hex.len() != 64 {
        return Err(ApiKeyError::BadHash);
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let hi = hex_value(pair[0]).ok_or(ApiKeyError::BadHash)?;
        let lo = hex_value(pair[1]).ok_or(ApiKeyError::BadHash)?;
        out[i] = (hi << 4) | lo;
    }
    Ok(out)
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// The hash line of a key: `sha256:<64 lowercase hex>`.
///
/// ```
/// assert_eq!(
///     portcullis::auth::api_key::hash_key("abc"),
///     "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
/// );
/// ```
pub fn hash_key(key: &str) -> String {
    format!("sha256:{}", to_hex(&Sha256::digest(key.as_bytes())))
}

/// A freshly generated key and its hash line. `Debug` hides the key.
///
/// ```
/// use portcullis::auth::api_key::{self, NewApiKey};
/// let fresh: NewApiKey = api_key::generate();
/// assert_eq!(api_key::hash_key(fresh.key()), fresh.hash_line());
/// ```
#[derive(Clone)]
pub struct NewApiKey {
    key: Secret,
    hash_line: String,
}

impl NewApiKey {
    /// The key, to show once and hand to the client.
    ///
    /// ```
    /// let fresh = portcullis::auth::api_key::generate();
    /// assert!(fresh.key().starts_with("pk_"));
    /// assert_eq!(fresh.key().len(), 46);
    /// ```
    pub fn key(&self) -> &str {
        std::str::from_utf8(self.key.expose()).expect("generated keys are ASCII")
    }

    /// The line to store in the config (`sha256:<hex>`).
    ///
    /// ```
    /// use portcullis::auth::api_key::{self, ApiKey};
    /// let fresh = api_key::generate();
    /// assert!(fresh.hash_line().starts_with("sha256:"));
    /// assert!(ApiKey::new("ci", fresh.hash_line(), ["deploy"]).is_ok());
    /// ```
    pub fn hash_line(&self) -> &str {
        &self.hash_line
    }
}

impl std::fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewApiKey")
            .field("key", &self.key)
            .field("hash_line", &self.hash_line)
            .finish()
    }
}

/// A new random key: `pk_` and 32 bytes from the OS generator in base64url (46 characters),
/// with its hash line.
///
/// ```
/// let k = portcullis::auth::api_key::generate();
/// assert!(k.key().starts_with("pk_") && k.key().len() == 46);
/// assert_eq!(portcullis::auth::api_key::hash_key(k.key()), k.hash_line());
/// assert_eq!(format!("{k:?}").contains(k.key()), false);
/// ```
///
/// # Panics
/// When the OS generator fails; a key from a broken generator would be worse than none.
pub fn generate() -> NewApiKey {
    let mut raw = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut *raw).expect("the OS random generator must be available");
    let key = format!("pk_{}", URL_SAFE_NO_PAD.encode(*raw));
    let hash_line = hash_key(&key);
    NewApiKey {
        key: Secret::from(key),
        hash_line,
    }
}

/// Authenticates API keys against stored hashes; see the [module docs](self).
///
/// ```
/// use portcullis::auth::{AuthOutcome, Authenticator};
/// use portcullis::auth::api_key::{self, ApiKey, ApiKeyAuthenticator};
/// let auth = ApiKeyAuthenticator::new([ApiKey::new("ci", &api_key::hash_key("pk_test_only"), ["deploy"]).unwrap()]).unwrap();
/// let (parts, ()) = http::Request::get("/")
///     .header("authorization", "ApiKey pk_test_only")
///     .body(())
///     .unwrap()
///     .into_parts();
/// match auth.authenticate_now(&parts) {
///     Some(AuthOutcome::Authenticated(p)) => assert!(p.has_role("deploy")),
///     other => panic!("unexpected {other:?}"),
/// }
/// ```
#[derive(Debug, Clone)]
pub struct ApiKeyAuthenticator {
    keys: Vec<ApiKey>,
}

/// Why presented API key credentials were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Malformed,
    Multiple,
}

impl ApiKeyAuthenticator {
    /// An authenticator over `keys`; ids and hashes must be unique.
    ///
    /// ```
    /// use portcullis::auth::api_key::{self, ApiKey, ApiKeyAuthenticator, ApiKeyError};
    /// let line = api_key::hash_key("pk_test_only");
    /// let a = ApiKey::new("a", &line, ["reader"])?;
    /// let b = ApiKey::new("b", &line, ["reader"])?;
    /// // One key, two identities: refused.
    /// assert_eq!(ApiKeyAuthenticator::new([a, b]).unwrap_err(), ApiKeyError::DuplicateHash("b".into()));
    /// # Ok::<(), ApiKeyError>(())
    /// ```
    pub fn new(keys: impl IntoIterator<Item = ApiKey>) -> Result<Self, ApiKeyError> {
        let keys: Vec<ApiKey> = keys.into_iter().collect();
        for (i, k) in keys.iter().enumerate() {
            for other in &keys[..i] {
                if other.id == k.id {
                    return Err(ApiKeyError::DuplicateId(k.id.clone()));
                }
                if other.hash == k.hash {
                    return Err(ApiKeyError::DuplicateHash(k.id.clone()));
                }
            }
        }
        Ok(ApiKeyAuthenticator { keys })
    }

    /// The number of stored keys.
    ///
    /// ```
    /// use portcullis::auth::api_key::{self, ApiKey, ApiKeyAuthenticator};
    /// let k = ApiKey::new("ci", api_key::generate().hash_line(), ["deploy"]).unwrap();
    /// assert_eq!(ApiKeyAuthenticator::new([k]).unwrap().len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no key is stored.
    ///
    /// ```
    /// use portcullis::auth::api_key::ApiKeyAuthenticator;
    /// assert!(ApiKeyAuthenticator::new([]).unwrap().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks a presented key; `Err` carries the audit reason.
    ///
    /// ```
    /// use portcullis::auth::api_key::{self, ApiKey, ApiKeyAuthenticator};
    /// let k = api_key::generate();
    /// let auth = ApiKeyAuthenticator::new([ApiKey::new("ci", k.hash_line(), ["deploy"]).unwrap()]).unwrap();
    /// assert_eq!(auth.verify(k.key()).unwrap().id, "ci");
    /// assert_eq!(auth.verify("pk_wrong").unwrap_err(), "unknown_key");
    /// ```
    pub fn verify(&self, presented: &str) -> Result<Principal, &'static str> {
        self.verify_at(presented, SystemTime::now())
    }

    fn verify_at(&self, presented: &str, now: SystemTime) -> Result<Principal, &'static str> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Index + 1 of the matching entry, 0 for none; every entry is compared.
        let mut found = 0u32;
        for (i, k) in self.keys.iter().enumerate() {
            let index = u32::try_from(i + 1).unwrap_or(u32::MAX);
            found.conditional_assign(&index, k.hash.ct_eq(&digest));
        }
        let Some(key) = (found as usize)
            .checked_sub(1)
            .and_then(|i| self.keys.get(i))
        else {
            return Err("unknown_key");
        };
        if key.expires_at.is_some_and(|at| now >= at) {
            return Err("expired");
        }
        let mut p = Principal::new(key.id.clone(), key.roles.clone(), AuthMethod::ApiKey);
        p.expires_at = key.expires_at;
        Ok(p)
    }

    /// The presented key: `Ok(None)` when the request carries none.
    fn key_of<'a>(parts: &'a Parts) -> Result<Option<&'a str>, Refusal> {
        let mut found: Option<&'a [u8]> = None;
        let mut auth = parts.headers.get_all(header::AUTHORIZATION).iter();
        if let Some(v) = auth.next() {
            let b = v.as_bytes();
            if b.len() > 7 && b[..7].eq_ignore_ascii_case(b"apikey ") {
                if auth.next().is_some() {
                    return Err(Refusal::Multiple);
                }
                found = Some(b[7..].trim_ascii_start());
            }
        }
        for v in parts.headers.get_all(X_API_KEY_NAME) {
            if found.is_some() {
                return Err(Refusal::Multiple);
            }
            found = Some(v.as_bytes());
        }
        let Some(key) = found else { return Ok(None) };
        if key.is_empty() || key.len() > MAX_KEY_BYTES || !key.iter().all(u8::is_ascii_graphic) {
            return Err(Refusal::Malformed);
        }
        Ok(std::str::from_utf8(key).ok())
    }
}

impl Authenticator for ApiKeyAuthenticator {
    fn authenticate<'a>(&'a self, parts: &'a Parts) -> BoxFuture<'a, AuthOutcome> {
        Box::pin(std::future::ready(self.outcome(parts)))
    }

    fn authenticate_now(&self, parts: &Parts) -> Option<AuthOutcome> {
        Some(self.outcome(parts))
    }
}

impl ApiKeyAuthenticator {
    /// The whole decision: keys are checked in memory.
    fn outcome(&self, parts: &Parts) -> AuthOutcome {
        match Self::key_of(parts) {
            Ok(None) => AuthOutcome::NoCredentials,
            Err(Refusal::Malformed) => AuthOutcome::Invalid("malformed"),
            Err(Refusal::Multiple) => AuthOutcome::Invalid("multiple_credentials"),
            Ok(Some(key)) => match self.verify(key) {
                Ok(p) => AuthOutcome::Authenticated(p),
                Err(reason) => AuthOutcome::Invalid(reason),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn hash_lines_round_trip() {
        let line = hash_key("pk_test");
        assert_eq!(to_hex(&parse_hash_line(&line).unwrap()), &line[7..]);
        assert_eq!(
            parse_hash_line(&line.to_uppercase().replace("SHA256", "sha256")).unwrap(),
            parse_hash_line(&line).unwrap()
        );
        assert!(parse_hash_line("sha256:abc").is_err());
        assert!(parse_hash_line(&line.replace("sha256", "sha1")).is_err());
        assert!(parse_hash_line(&format!("{}zz", &line[..line.len() - 2])).is_err());
    }

    #[test]
    fn expiry_is_checked_after_the_match() {
        let k = generate();
        let at = SystemTime::now();
        let auth = ApiKeyAuthenticator::new([ApiKey::new("a", k.hash_line(), ["r"])
            .unwrap()
            .expires_at(at)])
        .unwrap();
        assert!(auth.verify_at(k.key(), at - Duration::from_secs(1)).is_ok());
        assert_eq!(auth.verify_at(k.key(), at), Err("expired"));
    }

    #[test]
    fn duplicate_ids_and_hashes_are_refused() {
        let h = hash_key("x");
        let a = ApiKey::new("a", &h, ["r"]).unwrap();
        let b = ApiKey::new("a", &hash_key("y"), ["r"]).unwrap();
        let c = ApiKey::new("c", &h, ["r"]).unwrap();
        assert!(ApiKeyAuthenticator::new([a.clone(), b]).is_err());
        assert!(ApiKeyAuthenticator::new([a, c]).is_err());
    }

    #[test]
    fn the_last_of_many_keys_is_found() {
        let keys: Vec<_> = (0..50)
            .map(|i| ApiKey::new(format!("k{i}"), &hash_key(&format!("key-{i}")), ["r"]).unwrap())
            .collect();
        let auth = ApiKeyAuthenticator::new(keys).unwrap();
        assert_eq!(auth.verify("key-49").unwrap().id, "k49");
        assert_eq!(auth.verify("key-0").unwrap().id, "k0");
        assert!(auth.verify("key-50").is_err());
    }
}

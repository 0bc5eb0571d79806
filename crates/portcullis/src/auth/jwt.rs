//! JSON Web Tokens, verified the RFC 8725 way.
//!
//! [`JwtAuthenticator`] reads a token from `Authorization: Bearer …` (or a configured cookie,
//! such as the seed's `authToken`) and checks, in this order, before trusting a single claim:
//!
//! - size: tokens over 8 KiB are refused before any parsing;
//! - form: compact serialization only — exactly three non-empty base64url segments, no
//!   padding, no whitespace; the JSON serialization and JWE (five segments) are refused;
//! - header: strict JSON (duplicate keys refused); `alg` must be a supported algorithm —
//!   `none` in any spelling is refused; `jwk`, `jku`, `x5u`, `x5c` are refused outright (a key
//!   or a key URL chosen by the token's author is never used), as are `crit` and JWE members;
//!   `typ` is checked when pinned; `kid` is only ever a map key;
//! - key: the key is chosen by `kid` (or among keys without one) and must be bound to the
//!   token's `alg` — an HMAC key never checks an RS*/ES* token and vice versa;
//! - signature, by jsonwebtoken's RustCrypto backend (ECDSA r = 0 or s = 0 refused up front,
//!   CVE-2022-21449);
//! - claims: strict JSON; `exp` required, `nbf` and `iat` checked, 60 s leeway; exact `iss`;
//!   `aud` required and matched; `sub` required; every claim of the wrong JSON type is refused
//!   (`exp` as a string: CVE-2026-25537); roles from a configurable claim.
//!
//! Failures are [`JwtError`]s whose [`reason`](JwtError::reason) is a short fixed string for
//! the audit log; the token itself never appears in errors, logs or `Debug`.
//!
//! ```
//! use std::{sync::Arc, time::Duration};
//! use portcullis::auth::{Secret, jwks::VerificationKey, jwt::{self, Algorithm, JwtAuthenticator}};
//! use portcullis::{Policy, Preset, SecurityLayer};
//!
//! let secret = Secret::from("a-development-secret-of-at-least-32-bytes");
//! let jwt = JwtAuthenticator::builder()
//!     .issuer("https://auth.example.com")
//!     .audience("notes-api")
//!     .key(VerificationKey::hmac(Algorithm::HS256, &secret).unwrap())
//!     .cookie("authToken")
//!     .build()
//!     .unwrap();
//! let layer = SecurityLayer::builder()
//!     .route("/api/user/**", Preset::Authenticated)
//!     .route("/api/admin/**", Policy::preset(Preset::Strict).roles(["admin"]))
//!     .authenticator(Arc::new(jwt))
//!     .build()
//!     .unwrap();
//!
//! let token = jwt::mint_hs256(&secret, "alice", ["user"], Duration::from_secs(3600),
//!     "https://auth.example.com", "notes-api").unwrap();
//! assert_eq!(token.split('.').count(), 3);
//! ```

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header;
use http::request::Parts;
use serde_json::{Map, Value};

use super::jwks::{Jwks, KeyError, KeySet, VerificationKey};
use super::secret::Secret;
use super::strict_json::{self, StrictJsonError};
use super::{AuthMethod, AuthOutcome, Authenticator, BoxFuture, Principal};

/// The largest token accepted by default (RFC 8725 recommends a cap; 8 KiB holds any sane
/// token).
///
/// ```
/// use portcullis::auth::{Secret, jwks::VerificationKey, jwt::{Algorithm, JwtAuthenticator, JwtError, MAX_TOKEN_BYTES}};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let key = VerificationKey::hmac(Algorithm::HS256, &Secret::new([7u8; 32])).unwrap();
/// let jwt = JwtAuthenticator::builder().issuer("me").audience("api").key(key).build().unwrap();
/// let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
/// assert_eq!(jwt.verify(&huge).await.unwrap_err(), JwtError::TooLarge);
/// # });
/// ```
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// How many keys a token without a usable `kid` is tried against.
const MAX_CANDIDATES: usize = 8;

/// A signature algorithm (RFC 7518 names, matched exactly and case-sensitively).
///
/// ```
/// use portcullis::auth::jwt::Algorithm;
/// assert_eq!(Algorithm::from_name("ES256"), Some(Algorithm::ES256));
/// assert_eq!(Algorithm::from_name("es256"), None);
/// assert_eq!(Algorithm::from_name("none"), None);
/// ```
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// HMAC with SHA-256.
    HS256,
    /// HMAC with SHA-384.
    HS384,
    /// HMAC with SHA-512.
    HS512,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// ECDSA on P-384 with SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
}

impl Algorithm {
    /// Every supported algorithm.
    ///
    /// ```
    /// use portcullis::auth::jwt::Algorithm;
    /// assert_eq!(Algorithm::ALL.len(), 12);
    /// assert_eq!(Algorithm::ALL.iter().filter(|a| a.is_hmac()).count(), 3);
    /// ```
    pub const ALL: [Algorithm; 12] = [
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    /// The `alg` value.
    ///
    /// ```
    /// use portcullis::auth::jwt::Algorithm;
    /// assert_eq!(Algorithm::EdDSA.name(), "EdDSA");
    /// assert_eq!(Algorithm::from_name(Algorithm::PS384.name()), Some(Algorithm::PS384));
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::HS256 => "HS256",
            Algorithm::HS384 => "HS384",
            Algorithm::HS512 => "HS512",
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    /// Parses an `alg` value exactly (`none` is not an algorithm here).
    ///
    /// ```
    /// use portcullis::auth::jwt::Algorithm;
    /// assert_eq!(Algorithm::from_name("RS256"), Some(Algorithm::RS256));
    /// assert_eq!(Algorithm::from_name("None"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.name() == name)
    }

    /// True for HS256/384/512.
    ///
    /// ```
    /// use portcullis::auth::jwt::Algorithm;
    /// assert!(Algorithm::HS384.is_hmac());
    /// assert!(!Algorithm::ES256.is_hmac());
    /// ```
    pub fn is_hmac(self) -> bool {
        self.hmac_min_bytes().is_some()
    }

    pub(crate) fn hmac_min_bytes(self) -> Option<usize> {
        match self {
            Algorithm::HS256 => Some(32),
            Algorithm::HS384 => Some(48),
            Algorithm::HS512 => Some(64),
            _ => None,
        }
    }

    pub(crate) fn is_rsa(self) -> bool {
        matches!(
            self,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        )
    }

    /// The exact signature length where the algorithm fixes it.
    fn signature_len(self) -> Option<usize> {
        match self {
            Algorithm::HS256 => Some(32),
            Algorithm::HS384 => Some(48),
            Algorithm::HS512 => Some(64),
            Algorithm::ES256 => Some(64),
            Algorithm::ES384 => Some(96),
            Algorithm::EdDSA => Some(64),
            _ => None,
        }
    }

    pub(crate) fn to_jsonwebtoken(self) -> jsonwebtoken::Algorithm {
        use jsonwebtoken::Algorithm as J;
        match self {
            Algorithm::HS256 => J::HS256,
            Algorithm::HS384 => J::HS384,
            Algorithm::HS512 => J::HS512,
            Algorithm::RS256 => J::RS256,
            Algorithm::RS384 => J::RS384,
            Algorithm::RS512 => J::RS512,
            Algorithm::PS256 => J::PS256,
            Algorithm::PS384 => J::PS384,
            Algorithm::PS512 => J::PS512,
            Algorithm::ES256 => J::ES256,
            Algorithm::ES384 => J::ES384,
            Algorithm::EdDSA => J::EdDSA,
        }
    }
}

/// Why a token was refused. [`reason`](JwtError::reason) is what goes to the audit log; the
/// client only ever sees `401` with `WWW-Authenticate: Bearer error="invalid_token"`.
///
/// ```
/// use portcullis::auth::jwt::JwtError;
/// assert_eq!(JwtError::Expired.reason(), "expired");
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwtError {
    /// Over the size cap.
    TooLarge,
    /// Not three segments, an empty segment, or JSON where a segment should be.
    Malformed,
    /// A JWE (five segments, `enc`/`zip` header) where a JWS belongs.
    Jwe,
    /// A segment that is not canonical unpadded base64url.
    BadEncoding,
    /// A JSON object with a repeated key (header or claims).
    DuplicateKey,
    /// A header that is not a JSON object, or members of the wrong type.
    BadHeader,
    /// `alg: none`, in any spelling.
    AlgNone,
    /// An algorithm outside the allowlist or not bound to the chosen key.
    AlgNotAllowed,
    /// A `jwk`, `jku`, `x5u` or `x5c` header.
    ForbiddenHeader,
    /// A `crit` header (no extension is understood).
    UnsupportedCrit,
    /// `typ` differs from the pinned value.
    TypMismatch,
    /// No key with the token's `kid`.
    UnknownKid,
    /// The JWKS could not be loaded and no earlier key set exists.
    KeysUnavailable,
    /// The signature does not verify.
    BadSignature,
    /// The claims are not a JSON object.
    BadClaims,
    /// A registered claim of the wrong JSON type (`exp` as a string, `sub` as a number, ...).
    BadClaimType,
    /// No `exp`.
    MissingExp,
    /// Past `exp` (plus leeway).
    Expired,
    /// Before `nbf` (minus leeway).
    NotYetValid,
    /// `iat` in the future (beyond leeway).
    IssuedInFuture,
    /// No `iss`.
    MissingIssuer,
    /// `iss` is not the configured issuer.
    WrongIssuer,
    /// No `aud`.
    MissingAudience,
    /// `aud` names none of the configured audiences.
    WrongAudience,
    /// No `sub` (or an empty one).
    MissingSubject,
    /// A `sub` holding a control character (CR, LF, NUL, ESC, …): it could not travel to an
    /// application as a header, and would forge lines in logs.
    BadSubject,
    /// The roles claim is not a string or an array of strings, or a role is empty or holds a
    /// comma or a control character (roles travel to applications as one comma-separated
    /// header, where `"user,admin"` would read as two roles).
    BadRoles,
    /// Two tokens (two `Authorization` headers, two cookies of the configured name).
    MultipleCredentials,
}

impl JwtError {
    /// The fixed reason string for the audit log.
    ///
    /// ```
    /// use portcullis::auth::jwt::JwtError;
    /// assert_eq!(JwtError::AlgNone.reason(), "alg_none");
    /// assert_eq!(JwtError::WrongAudience.to_string(), "wrong_audience");
    /// ```
    pub fn reason(self) -> &'static str {
        match self {
            JwtError::TooLarge => "token_too_large",
            JwtError::Malformed => "malformed",
            JwtError::Jwe => "jwe_not_accepted",
            JwtError::BadEncoding => "bad_encoding",
            JwtError::DuplicateKey => "duplicate_key",
            JwtError::BadHeader => "bad_header",
            JwtError::AlgNone => "alg_none",
            JwtError::AlgNotAllowed => "alg_not_allowed",
            JwtError::ForbiddenHeader => "forbidden_header",
            JwtError::UnsupportedCrit => "unsupported_crit",
            JwtError::TypMismatch => "typ_mismatch",
            JwtError::UnknownKid => "unknown_kid",
            JwtError::KeysUnavailable => "keys_unavailable",
            JwtError::BadSignature => "bad_signature",
            JwtError::BadClaims => "bad_claims",
            JwtError::BadClaimType => "bad_claim_type",
            JwtError::MissingExp => "missing_exp",
            JwtError::Expired => "expired",
            JwtError::NotYetValid => "not_yet_valid",
            JwtError::IssuedInFuture => "issued_in_future",
            JwtError::MissingIssuer => "missing_iss",
            JwtError::WrongIssuer => "wrong_issuer",
            JwtError::MissingAudience => "missing_aud",
            JwtError::WrongAudience => "wrong_audience",
            JwtError::MissingSubject => "missing_sub",
            JwtError::BadSubject => "bad_sub",
            JwtError::BadRoles => "bad_roles",
            JwtError::MultipleCredentials => "multiple_credentials",
        }
    }
}

impl std::fmt::Display for JwtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for JwtError {}

/// Why a [`JwtAuthenticator`] could not be built.
///
/// ```
/// use portcullis::auth::jwt::{JwtAuthenticator, JwtConfigError};
/// let no_keys = JwtAuthenticator::builder().issuer("me").audience("api").build();
/// assert_eq!(no_keys.unwrap_err(), JwtConfigError::NoKeys);
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtConfigError {
    /// No issuer: `iss` is always checked.
    MissingIssuer,
    /// No audience: `aud` is always checked.
    MissingAudience,
    /// Neither keys nor a JWKS.
    NoKeys,
    /// A cookie name that is not an RFC 6265 token.
    BadCookieName,
    /// An empty roles claim path.
    BadRolesClaim,
    /// A key problem (two keys with one `kid`, ...).
    Key(KeyError),
}

impl std::fmt::Display for JwtConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwtConfigError::MissingIssuer => f.write_str("jwt: an issuer is required"),
            JwtConfigError::MissingAudience => f.write_str("jwt: an audience is required"),
            JwtConfigError::NoKeys => f.write_str("jwt: no keys and no JWKS configured"),
            JwtConfigError::BadCookieName => f.write_str("jwt: invalid cookie name"),
            JwtConfigError::BadRolesClaim => f.write_str("jwt: empty roles claim path"),
            JwtConfigError::Key(e) => write!(f, "jwt: {e}"),
        }
    }
}

impl std::error::Error for JwtConfigError {}

impl From<KeyError> for JwtConfigError {
    fn from(e: KeyError) -> Self {
        JwtConfigError::Key(e)
    }
}

/// Builds a [`JwtAuthenticator`]; issuer, audience and at least one key source are required.
///
/// ```
/// use std::time::Duration;
/// use portcullis::auth::{Secret, jwks::VerificationKey, jwt::{Algorithm, JwtAuthenticator, JwtConfigError}};
/// let key = VerificationKey::hmac(Algorithm::HS512, &Secret::new([7u8; 64])).unwrap();
/// let jwt = JwtAuthenticator::builder()
///     .issuer("https://sso.example.com/realms/main")
///     .audience("api")
///     .audience("api-v2")
///     .key(key)
///     .roles_claim("realm_access.roles")
///     .leeway(Duration::from_secs(30))
///     .require_typ("JWT")
///     .build()
///     .unwrap();
/// assert_eq!(
///     JwtAuthenticator::builder().audience("api").build().unwrap_err(),
///     JwtConfigError::MissingIssuer,
/// );
/// ```
#[must_use]
#[derive(Debug, Default)]
pub struct JwtAuthenticatorBuilder {
    keys: Vec<VerificationKey>,
    key_sets: Vec<KeySet>,
    jwks: Option<Jwks>,
    issuer: Option<String>,
    audiences: Vec<String>,
    leeway: Option<Duration>,
    typ: Option<String>,
    cookie: Option<String>,
    roles_claims: Vec<String>,
    max_token_bytes: Option<usize>,
    algorithms: Option<Vec<Algorithm>>,
}

impl JwtAuthenticatorBuilder {
    /// Adds a key (HMAC secret, PEM public key).
    ///
    /// ```
    /// use portcullis::auth::{Secret, jwks::VerificationKey, jwt::{Algorithm, JwtAuthenticator}};
    /// let old = VerificationKey::hmac(Algorithm::HS256, &Secret::new([1u8; 32])).unwrap().with_kid("2025");
    /// let new = VerificationKey::hmac(Algorithm::HS256, &Secret::new([2u8; 32])).unwrap().with_kid("2026");
    /// let jwt = JwtAuthenticator::builder().issuer("me").audience("api").key(old).key(new).build();
    /// assert!(jwt.is_ok());
    /// ```
    pub fn key(mut self, key: VerificationKey) -> Self {
        self.keys.push(key);
        self
    }

    /// Adds the keys of a set (e.g. [`KeySet::from_jwks`] on a JWKS file).
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::auth::{Secret, jwks::{KeySet, VerificationKey}, jwt::{self, Algorithm, JwtAuthenticator}};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let secret = Secret::from("test-only-secret-of-at-least-32-bytes");
    /// let set = KeySet::new([VerificationKey::hmac(Algorithm::HS256, &secret).unwrap()]).unwrap();
    /// let jwt = JwtAuthenticator::builder().issuer("me").audience("api").key_set(set).build().unwrap();
    /// let token = jwt::mint_hs256(&secret, "alice", ["user"], Duration::from_secs(60), "me", "api").unwrap();
    /// assert_eq!(jwt.verify(&token).await.unwrap().id, "alice");
    /// # });
    /// ```
    pub fn key_set(mut self, set: KeySet) -> Self {
        self.key_sets.push(set);
        self
    }

    /// Fetches keys from a JWKS URL (after the static keys).
    ///
    /// ```
    /// use portcullis::auth::jwks::Jwks;
    /// use portcullis::auth::jwt::JwtAuthenticator;
    /// let jwks = Jwks::new("http://127.0.0.1:8081/jwks.json").unwrap();
    /// // A JWKS alone is a key source: no static key is needed.
    /// let jwt = JwtAuthenticator::builder().issuer("http://127.0.0.1:8081").audience("api").jwks(jwks).build();
    /// assert!(jwt.is_ok());
    /// ```
    pub fn jwks(mut self, jwks: Jwks) -> Self {
        self.jwks = Some(jwks);
        self
    }

    /// The exact `iss` required.
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::auth::{Secret, jwks::VerificationKey, jwt::{self, Algorithm, JwtAuthenticator, JwtError}};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let secret = Secret::from("test-only-secret-of-at-least-32-bytes");
    /// let key = VerificationKey::hmac(Algorithm::HS256, &secret).unwrap();
    /// let jwt = JwtAuthenticator::builder().issuer("https://auth.example").audience("api").key(key).build().unwrap();
    /// let token = jwt::mint_hs256(&secret, "alice", ["user"], Duration::from_secs(60), "https://evil.example", "api").unwrap();
    /// assert_eq!(jwt.verify(&token).await.unwrap_err(), JwtError::WrongIssuer);
    /// # });
    /// ```
    pub fn issuer(mut self, iss: impl Into<String>) -> Self {
        self.issuer = Some(iss.into());
        self
    }

    /// An accepted audience (call again for more); the token's `aud` must name one.
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::auth::{Secret, jwks::VerificationKey, jwt::{self, Algorithm, JwtAuthenticator, JwtError}};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let secret = Secret::from("test-only-secret-of-at-least-32-bytes");
    /// let key = VerificationKey::hmac(Algorithm::HS256, &secret).unwrap();
    /// let jwt = JwtAuthenticator::builder().issuer("me").audience("api").audience("api-v2").key(key).build().unwrap();
    /// let mint = |aud| jwt::mint_hs256(&secret, "alice", ["user"], Duration::from_secs(60), "me", aud).unwrap();
    /// assert!(jwt.verify(&mint("api-v2")).await.is_ok());
    /// assert_eq!(jwt.verify(&mint("billing")).await.unwrap_err(), JwtError::WrongAudience);
    /// # });
    /// ```
    pub fn audience(mut self, aud: impl Into<String>) -> Self {
        self.audiences.push(aud.into());
        self
    }

    /// Clock skew allowed on `exp`, `nbf` and `iat` (60 s).
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::auth::{Secret, jwks::VerificationKey, jwt::{self, Algorithm, JwtAuthenticator, JwtError}};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let secret = Secret::from("test-only-secret-of-at-least-32-bytes");
    /// let key = || VerificationKey::hmac(Algorithm::HS256, &secret).unwrap();
    /// let build = |leeway| JwtAuthenticator::builder().issuer("me").audience("api").key(key()).leeway(leeway).build().unwrap();
    /// // A token that expires right now.
    /// let token = jwt::mint_hs256(&secret, "alice", ["user"], Duration::ZERO, "me", "api").unwrap();
    /// assert!(build(Duration::from_secs(60)).verify(&token).await.is_ok());
    /// assert_eq!(build(Duration::ZERO).verify(&token).await.unwrap_err(), JwtError::Expired);
    /// # });
    /// ```
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = Some(leeway);
        self
    }

    /// Requires this `typ` header (compared case-insensitively, `application/` optional),
    /// e.g. `at+jwt` (RFC 9068) to keep ID tokens out.
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::auth::{Secret, jwks::VerificationKey, jwt::{self, Algorithm, JwtAuthenticator, JwtError}};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let secret = Secret::from("test-only-secret-of-at-least-32-bytes");
    /// let key = VerificationKey::hmac(Algorithm::HS256, &secret).unwrap();
    /// let jwt = JwtAuthenticator::builder().issuer("me").audience("api").key(key).require_typ("at+jwt").build().unwrap();
    /// // `mint_hs256` writes `typ: JWT`, not an access-token type.
    /// let token = jwt::mint_hs256(&secret, "alice", ["user"], Duration::from_secs(60), "me", "api").unwrap();
    /// assert_eq!(jwt.verify(&token).await.unwrap_err(), JwtError::TypMismatch);
    /// # });
    /// ```
    pub fn require_typ(mut self, typ: impl Into<String>) -> Self {
        self.typ = Some(normalize_typ(&typ.into()));
        self
    }

    /// Also reads the token from this cookie (`authToken`) when the request carries no
    /// credentials of its own: no `Authorization` field (a bearer token, or another scheme)
    /// and no `X-API-Key`. A credential the client chose beats an ambient cookie, so a stale
    /// session cookie does not refuse a request whose API key is good.
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::auth::{AuthOutcome, Authenticator, Secret, jwks::VerificationKey};
    /// use portcullis::auth::jwt::{self, Algorithm, JwtAuthenticator, JwtConfigError};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let secret = Secret::from("test-only-secret-of-at-least-32-bytes");
    /// let key = || VerificationKey::hmac(Algorithm::HS256, &secret).unwrap();
    /// let jwt = JwtAuthenticator::builder().issuer("me").audience("api").key(key()).cookie("authToken").build().unwrap();
    /// let token = jwt::mint_hs256(&secret, "alice", ["user"], Duration::from_secs(60), "me", "api").unwrap();
    /// let (parts, ()) = http::Request::get("/")
    ///     .header("cookie", format!("theme=dark; authToken={token}"))
    ///     .body(())
    ///     .unwrap()
    ///     .into_parts();
    /// assert!(matches!(jwt.authenticate(&parts).await, AuthOutcome::Authenticated(p) if p.id == "alice"));
    /// let bad = JwtAuthenticator::builder().issuer("me").audience("api").key(key()).cookie("auth token").build();
    /// assert_eq!(bad.unwrap_err(), JwtConfigError::BadCookieName);
    /// # });
    /// ```
    pub fn cookie(mut self, name: impl Into<String>) -> Self {
        self.cookie = Some(name.into());
        self
    }

    /// Where the roles are: a claim name or a dotted path (`realm_access.roles`), holding a
    /// string or an array of strings. Call again to add fallbacks; the first present wins.
    /// Default: `roles`, then `role`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::auth::{Secret, jwks::VerificationKey, jwt::{self, Algorithm, JwtAuthenticator}};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let secret = Secret::from("test-only-secret-of-at-least-32-bytes");
    /// let key = VerificationKey::hmac(Algorithm::HS256, &secret).unwrap();
    /// let jwt = JwtAuthenticator::builder().issuer("me").audience("api").key(key)
    ///     .roles_claim("realm_access.roles") // absent from this token...
    ///     .roles_claim("roles")              // ...so the fallback is read
    ///     .build()
    ///     .unwrap();
    /// let token = jwt::mint_hs256(&secret, "alice", ["admin"], Duration::from_secs(60), "me", "api").unwrap();
    /// assert!(jwt.verify(&token).await.unwrap().has_role("admin"));
    /// # });
    /// ```
    pub fn roles_claim(mut self, path: impl Into<String>) -> Self {
        self.roles_claims.push(path.into());
        self
    }

    /// The token size cap in bytes (8 KiB).
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::auth::{Secret, jwks::VerificationKey, jwt::{self, Algorithm, JwtAuthenticator, JwtError}};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let secret = Secret::from("test-only-secret-of-at-least-32-bytes");
    /// let key = VerificationKey::hmac(Algorithm::HS256, &secret).unwrap();
    /// let jwt = JwtAuthenticator::builder().issuer("me").audience("api").key(key).max_token_bytes(64).build().unwrap();
    /// let token = jwt::mint_hs256(&secret, "alice", ["user"], Duration::from_secs(60), "me", "api").unwrap();
    /// assert_eq!(jwt.verify(&token).await.unwrap_err(), JwtError::TooLarge);
    /// # });
    /// ```
    pub fn max_token_bytes(mut self, max: usize) -> Self {
        self.max_token_bytes = Some(max);
        self
    }

    /// Restricts the algorithms accepted at all (every key is also bound to its own).
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::auth::{Secret, jwks::VerificationKey, jwt::{self, Algorithm, JwtAuthenticator, JwtError}};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let secret = Secret::from("test-only-secret-of-at-least-32-bytes");
    /// let key = VerificationKey::hmac(Algorithm::HS256, &secret).unwrap();
    /// let jwt = JwtAuthenticator::builder().issuer("me").audience("api").key(key)
    ///     .algorithms([Algorithm::EdDSA])
    ///     .build()
    ///     .unwrap();
    /// let token = jwt::mint_hs256(&secret, "alice", ["user"], Duration::from_secs(60), "me", "api").unwrap();
    /// assert_eq!(jwt.verify(&token).await.unwrap_err(), JwtError::AlgNotAllowed);
    /// # });
    /// ```
    pub fn algorithms(mut self, algs: impl IntoIterator<Item = Algorithm>) -> Self {
        self.algorithms = Some(algs.into_iter().collect());
        self
    }

    /// Checks the configuration and builds the authenticator.
    ///
    /// ```
    /// use portcullis::auth::{Secret, jwks::VerificationKey, jwt::{Algorithm, JwtAuthenticator, JwtConfigError}};
    /// let key = || VerificationKey::hmac(Algorithm::HS256, &Secret::new([7u8; 32])).unwrap();
    /// assert!(JwtAuthenticator::builder().issuer("me").audience("api").key(key()).build().is_ok());
    /// let no_aud = JwtAuthenticator::builder().issuer("me").key(key()).build();
    /// assert_eq!(no_aud.unwrap_err(), JwtConfigError::MissingAudience);
    /// ```
    pub fn build(self) -> Result<JwtAuthenticator, JwtConfigError> {
        let issuer = self
            .issuer
            .filter(|i| !i.is_empty())
            .ok_or(JwtConfigError::MissingIssuer)?;
        if self.audiences.is_empty() || self.audiences.iter().any(String::is_empty) {
            return Err(JwtConfigError::MissingAudience);
        }
        let mut all: Vec<VerificationKey> = self.keys;
        for set in self.key_sets {
            all.extend(set.into_keys());
        }
        let keys = KeySet::new(all)?;
        if keys.is_empty() && self.jwks.is_none() {
            return Err(JwtConfigError::NoKeys);
        }
        if let Some(c) = &self.cookie
            && (c.is_empty() || !c.bytes().all(is_cookie_name_byte))
        {
            return Err(JwtConfigError::BadCookieName);
        }
        let roles_claims = if self.roles_claims.is_empty() {
            vec!["roles".to_string(), "role".to_string()]
        } else {
            self.roles_claims
        };
        if roles_claims.iter().any(|p| p.is_empty()) {
            return Err(JwtConfigError::BadRolesClaim);
        }
        Ok(JwtAuthenticator {
            keys,
            jwks: self.jwks,
            issuer,
            audiences: self.audiences,
            leeway: self.leeway.unwrap_or(Duration::from_secs(60)),
            typ: self.typ,
            cookie: self.cookie,
            roles_claims,
            max_token_bytes: self.max_token_bytes.unwrap_or(MAX_TOKEN_BYTES),
            algorithms: self.algorithms,
        })
    }
}

fn is_cookie_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn normalize_typ(t: &str) -> String {
    let t = t.trim().to_ascii_lowercase();
    t.strip_prefix("application/").unwrap_or(&t).to_string()
}

/// Verifies JWTs from `Authorization: Bearer` or a cookie; see the [module docs](self).
///
/// ```
/// use std::time::Duration;
/// use portcullis::auth::{AuthOutcome, Authenticator, Secret, jwks::VerificationKey};
/// use portcullis::auth::jwt::{self, Algorithm, JwtAuthenticator};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let secret = Secret::from("test-only-secret-of-at-least-32-bytes");
/// let key = VerificationKey::hmac(Algorithm::HS256, &secret).unwrap();
/// let jwt = JwtAuthenticator::builder().issuer("me").audience("api").key(key).build().unwrap();
/// let token = jwt::mint_hs256(&secret, "alice", ["user"], Duration::from_secs(60), "me", "api").unwrap();
/// let (parts, ()) = http::Request::get("/")
///     .header("authorization", format!("Bearer {token}"))
///     .body(())
///     .unwrap()
///     .into_parts();
/// assert!(matches!(jwt.authenticate(&parts).await, AuthOutcome::Authenticated(p) if p.has_role("user")));
/// # });
/// ```
pub struct JwtAuthenticator {
    keys: KeySet,
    jwks: Option<Jwks>,
    issuer: String,
    audiences: Vec<String>,
    leeway: Duration,
    typ: Option<String>,
    cookie: Option<String>,
    roles_claims: Vec<String>,
    max_token_bytes: usize,
    algorithms: Option<Vec<Algorithm>>,
}

impl std::fmt::Debug for JwtAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtAuthenticator")
            .field("keys", &self.keys.len())
            .field("jwks", &self.jwks)
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("leeway", &self.leeway)
            .field("cookie", &self.cookie)
            .field("roles_claims", &self.roles_claims)
            .finish_non_exhaustive()
    }
}

/// A token split and its header read; nothing in it is trusted yet.
struct Compact<'t> {
    /// `header.payload`, the signed bytes.
    signing_input: &'t str,
    payload: &'t str,
    signature: &'t str,
    alg: Algorithm,
    kid: Option<String>,
}

impl JwtAuthenticator {
    /// A builder.
    ///
    /// ```
    /// use portcullis::auth::{Secret, jwks::VerificationKey, jwt::{Algorithm, JwtAuthenticator}};
    /// let key = VerificationKey::hmac(Algorithm::HS256, &Secret::new([7u8; 32])).unwrap();
    /// let jwt = JwtAuthenticator::builder().issuer("me").audience("api").key(key).build();
    /// assert!(jwt.is_ok());
    /// ```
    pub fn builder() -> JwtAuthenticatorBuilder {
        JwtAuthenticatorBuilder::default()
    }

    /// Verifies a token and returns its principal (`sub`, roles, `exp`).
    ///
    /// ```
    /// # tokio_test_block(async {
    /// use std::time::Duration;
    /// use portcullis::auth::{Secret, jwks::VerificationKey, jwt::{self, Algorithm, JwtAuthenticator, JwtError}};
    /// let secret = Secret::from("a-development-secret-of-at-least-32-bytes");
    /// let jwt = JwtAuthenticator::builder().issuer("me").audience("api")
    ///     .key(VerificationKey::hmac(Algorithm::HS256, &secret).unwrap()).build().unwrap();
    /// let token = jwt::mint_hs256(&secret, "alice", ["admin"], Duration::from_secs(60), "me", "api").unwrap();
    /// let p = jwt.verify(&token).await.unwrap();
    /// assert_eq!((p.id.as_str(), p.has_role("admin")), ("alice", true));
    /// assert_eq!(jwt.verify("e30.e30.").await.unwrap_err(), JwtError::Malformed);
    /// # });
    /// # fn tokio_test_block(f: impl std::future::Future<Output = ()>) {
    /// #     futures_util::FutureExt::now_or_never(f).expect("static keys never wait");
    /// # }
    /// ```
    pub async fn verify(&self, token: &str) -> Result<Principal, JwtError> {
        let compact = self.parse(token)?;
        self.check_signature(&compact).await?;
        let payload = URL_SAFE_NO_PAD
            .decode(compact.payload)
            .map_err(|_| JwtError::BadEncoding)?;
        let claims = strict_json::parse_object(&payload).map_err(|e| match e {
            StrictJsonError::DuplicateKey => JwtError::DuplicateKey,
            StrictJsonError::Malformed => JwtError::BadClaims,
        })?;
        self.check_claims(&claims)
    }

    /// Size, form and header (everything before a key is chosen).
    fn parse<'t>(&self, token: &'t str) -> Result<Compact<'t>, JwtError> {
        if token.len() > self.max_token_bytes {
            return Err(JwtError::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(JwtError::Malformed);
        };
        if parts.next().is_some() {
            // Five segments is the JWE compact form.
            return Err(if token.split('.').count() == 5 {
                JwtError::Jwe
            } else {
                JwtError::Malformed
            });
        }
        for seg in [h, p, s] {
            if seg.is_empty() {
                return Err(JwtError::Malformed);
            }
            if !seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(if seg.starts_with('{') {
                    JwtError::Malformed
                } else {
                    JwtError::BadEncoding
                });
            }
        }
        let header = URL_SAFE_NO_PAD
            .decode(h)
            .map_err(|_| JwtError::BadEncoding)?;
        let header = strict_json::parse_object(&header).map_err(|e| match e {
            StrictJsonError::DuplicateKey => JwtError::DuplicateKey,
            StrictJsonError::Malformed => JwtError::BadHeader,
        })?;
        let alg = match header.get("alg") {
            Some(Value::String(a)) if a.trim().eq_ignore_ascii_case("none") => {
                return Err(JwtError::AlgNone);
            }
            Some(Value::String(a)) => Algorithm::from_name(a).ok_or(JwtError::AlgNotAllowed)?,
            _ => return Err(JwtError::BadHeader),
        };
        if self.algorithms.as_ref().is_some_and(|a| !a.contains(&alg)) {
            return Err(JwtError::AlgNotAllowed);
        }
        // RFC 8725 §3.10: keys and key URLs named by the token are never used.
        if ["jwk", "jku", "x5u", "x5c"]
            .iter()
            .any(|m| header.contains_key(*m))
        {
            return Err(JwtError::ForbiddenHeader);
        }
        if header.contains_key("enc") || header.contains_key("zip") {
            return Err(JwtError::Jwe);
        }
        if header.contains_key("crit") || header.contains_key("b64") {
            return Err(JwtError::UnsupportedCrit);
        }
        let kid = match header.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.clone()),
            Some(_) => return Err(JwtError::BadHeader),
        };
        match (header.get("typ"), &self.typ) {
            (Some(Value::String(t)), Some(want)) if normalize_typ(t) != *want => {
                return Err(JwtError::TypMismatch);
            }
            (None, Some(_)) => return Err(JwtError::TypMismatch),
            (Some(v), _) if !v.is_string() => return Err(JwtError::BadHeader),
            _ => {}
        }
        match header.get("cty") {
            None => {}
            // Nested tokens are not supported: their inner claims would escape these checks.
            Some(Value::String(c)) if !c.eq_ignore_ascii_case("jwt") => {}
            Some(_) => return Err(JwtError::BadHeader),
        }
        Ok(Compact {
            signing_input: &token[..h.len() + 1 + p.len()],
            payload: p,
            signature: s,
            alg,
            kid,
        })
    }

    /// Chooses the key (by `kid`, bound to `alg`) and checks the signature.
    async fn check_signature(&self, t: &Compact<'_>) -> Result<(), JwtError> {
        let sig = URL_SAFE_NO_PAD
            .decode(t.signature)
            .map_err(|_| JwtError::BadEncoding)?;
        if t.alg.signature_len().is_some_and(|n| n != sig.len()) {
            return Err(JwtError::BadSignature);
        }
        if matches!(t.alg, Algorithm::ES256 | Algorithm::ES384) {
            // CVE-2022-21449: r = 0 or s = 0 must never verify; refused before the backend.
            let (r, s) = sig.split_at(sig.len() / 2);
            if r.iter().all(|&b| b == 0) || s.iter().all(|&b| b == 0) {
                return Err(JwtError::BadSignature);
            }
        }
        match self.check_with(&self.keys, t) {
            Err(JwtError::UnknownKid | JwtError::AlgNotAllowed) if self.jwks.is_some() => {}
            other => return other,
        }
        let Some(jwks) = &self.jwks else {
            return Err(JwtError::UnknownKid);
        };
        let (set, generation) = jwks.current().await;
        let Some(set) = set else {
            return Err(JwtError::KeysUnavailable);
        };
        match self.check_with(&set, t) {
            Err(JwtError::UnknownKid) => match jwks.refresh_for_unknown_kid(generation).await {
                Some(newer) if !std::sync::Arc::ptr_eq(&newer, &set) => self.check_with(&newer, t),
                _ => Err(JwtError::UnknownKid),
            },
            other => other,
        }
    }

    /// Checks the signature with the key of the token's `kid` (which must be bound to the
    /// token's `alg`); without a `kid`, with the keys bound to its `alg`. `UnknownKid`: the
    /// `kid` names no key here.
    fn check_with(&self, set: &KeySet, t: &Compact<'_>) -> Result<(), JwtError> {
        let verify = |key: &VerificationKey| {
            jsonwebtoken::crypto::verify(
                t.signature,
                t.signing_input.as_bytes(),
                key.decoding_key(),
                t.alg.to_jsonwebtoken(),
            )
            .unwrap_or(false)
        };
        if let Some(kid) = &t.kid
            && let Some(key) = set.named(kid)
        {
            if key.algorithm() != t.alg {
                return Err(JwtError::AlgNotAllowed);
            }
            return if verify(key) {
                Ok(())
            } else {
                Err(JwtError::BadSignature)
            };
        }
        let mut tried = false;
        // Bounded, so a forged token cannot make us run many RSA verifications.
        for key in set.candidates(t.alg, t.kid.is_none()).take(MAX_CANDIDATES) {
            tried = true;
            if verify(key) {
                return Ok(());
            }
        }
        match (tried, &t.kid) {
            (true, _) => Err(JwtError::BadSignature),
            (false, Some(_)) => Err(JwtError::UnknownKid),
            (false, None) => Err(JwtError::AlgNotAllowed),
        }
    }

    /// The registered claims, each of the right JSON type, then the principal.
    fn check_claims(&self, claims: &Map<String, Value>) -> Result<Principal, JwtError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let leeway = self.leeway.as_secs_f64();
        let exp = numeric_date(claims, "exp")?.ok_or(JwtError::MissingExp)?;
        if now - leeway >= exp {
            return Err(JwtError::Expired);
        }
        if let Some(nbf) = numeric_date(claims, "nbf")?
            && now + leeway < nbf
        {
            return Err(JwtError::NotYetValid);
        }
        if let Some(iat) = numeric_date(claims, "iat")?
            && iat > now + leeway
        {
            return Err(JwtError::IssuedInFuture);
        }
        match claims.get("iss") {
            None => return Err(JwtError::MissingIssuer),
            Some(Value::String(iss)) if *iss == self.issuer => {}
            Some(Value::String(_)) => return Err(JwtError::WrongIssuer),
            Some(_) => return Err(JwtError::BadClaimType),
        }
        let aud_ok = match claims.get("aud") {
            None => return Err(JwtError::MissingAudience),
            Some(Value::String(a)) => self.audiences.contains(a),
            Some(Value::Array(list)) => {
                let mut any = false;
                for a in list {
                    let a = a.as_str().ok_or(JwtError::BadClaimType)?;
                    any |= self.audiences.iter().any(|x| x == a);
                }
                any
            }
            Some(_) => return Err(JwtError::BadClaimType),
        };
        if !aud_ok {
            return Err(JwtError::WrongAudience);
        }
        let sub = match claims.get("sub") {
            None => return Err(JwtError::MissingSubject),
            Some(Value::String(s)) if s.is_empty() => return Err(JwtError::MissingSubject),
            Some(Value::String(s)) if !travels_intact(s) => return Err(JwtError::BadSubject),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(JwtError::BadClaimType),
        };
        for name in ["jti"] {
            if claims.get(name).is_some_and(|v| !v.is_string()) {
                return Err(JwtError::BadClaimType);
            }
        }
        let roles = self.roles(claims)?;
        let mut principal = Principal::new(sub, roles, AuthMethod::Jwt);
        principal.expires_at = Duration::try_from_secs_f64(exp)
            .ok()
            .and_then(|d| UNIX_EPOCH.checked_add(d));
        Ok(principal)
    }

    fn roles(&self, claims: &Map<String, Value>) -> Result<Vec<String>, JwtError> {
        let Some(value) = self
            .roles_claims
            .iter()
            .find_map(|path| claim_at(claims, path))
        else {
            return Ok(Vec::new());
        };
        // A role the application would read differently from the gateway (split at a comma,
        // cut at a line break) refuses the token: a guess either way could grant a role.
        let role = |r: &str| {
            valid_role(r)
                .then(|| r.to_string())
                .ok_or(JwtError::BadRoles)
        };
        match value {
            Value::String(r) if r.is_empty() => Ok(Vec::new()),
            Value::String(r) => Ok(vec![role(r)?]),
            Value::Array(list) => list
                .iter()
                .map(|r| r.as_str().ok_or(JwtError::BadRoles).and_then(role))
                .collect(),
            _ => Err(JwtError::BadRoles),
        }
    }

    /// The token of a request: `Ok(None)` when there is none for this authenticator.
    fn token_of<'a>(&self, parts: &'a Parts) -> Result<Option<&'a str>, JwtError> {
        let mut auth = parts.headers.get_all(header::AUTHORIZATION).iter();
        if let Some(value) = auth.next() {
            if auth.next().is_some() {
                return Err(JwtError::MultipleCredentials);
            }
            let b = value.as_bytes();
            let is_bearer = b.len() >= 6
                && b[..6].eq_ignore_ascii_case(b"bearer")
                && b.get(6).is_none_or(|c| *c == b' ');
            if !is_bearer {
                // Another scheme (ApiKey, Basic): the client chose those credentials, so an
                // ambient cookie is not consulted; the next authenticator decides.
                return Ok(None);
            }
            let token = value.to_str().map_err(|_| JwtError::Malformed)?[6..].trim_start();
            if token.is_empty() {
                return Err(JwtError::Malformed);
            }
            return Ok(Some(token));
        }
        let Some(name) = &self.cookie else {
            return Ok(None);
        };
        // Read as bytes: a field holding some non-ASCII cookie still holds ours, and the
        // application, which gets every field joined, would read it (a second token hidden
        // there must count as two).
        let (mut found, mut twice): (Option<&[u8]>, bool) = (None, false);
        for value in parts.headers.get_all(header::COOKIE) {
            for pair in value.as_bytes().split(|&b| b == b';') {
                if let Some(eq) = pair.iter().position(|&b| b == b'=')
                    && pair[..eq].trim_ascii() == name.as_bytes()
                {
                    twice |= found.is_some();
                    found = Some(pair[eq + 1..].trim_ascii());
                }
            }
        }
        if found.is_some() && parts.headers.contains_key(super::api_key::X_API_KEY_NAME) {
            // An API key the client chose beats the ambient cookie, as another
            // `Authorization` scheme does above.
            return Ok(None);
        }
        if twice {
            return Err(JwtError::MultipleCredentials);
        }
        match found {
            None => Ok(None),
            Some(b"") => Err(JwtError::Malformed),
            Some(v) => std::str::from_utf8(v)
                .map(Some)
                .map_err(|_| JwtError::Malformed),
        }
    }
}

fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_f64().map(Some).ok_or(JwtError::BadClaimType),
        Some(_) => Err(JwtError::BadClaimType),
    }
}

/// A claim by name, or else by dotted path (`realm_access.roles`); names holding dots
/// (`https://example.com/roles`) are found by the first lookup.
fn claim_at<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut segments = path.split('.');
    let first = claims.get(segments.next()?)?;
    segments.try_fold(first, |v, k| v.as_object()?.get(k))
}

impl Authenticator for JwtAuthenticator {
    fn authenticate<'a>(&'a self, parts: &'a Parts) -> BoxFuture<'a, AuthOutcome> {
        Box::pin(async move {
            match self.token_of(parts) {
                Ok(None) => AuthOutcome::NoCredentials,
                Err(e) => AuthOutcome::Invalid(e.reason()),
                Ok(Some(token)) => match self.verify(token).await {
                    Ok(p) => AuthOutcome::Authenticated(p),
                    Err(e) => AuthOutcome::Invalid(e.reason()),
                },
            }
        })
    }

    /// Without a token, or with a malformed one, the outcome is known at once; a token is
    /// verified in [`Authenticator::authenticate`] (its key may have to be fetched).
    fn authenticate_now(&self, parts: &Parts) -> Option<AuthOutcome> {
        match self.token_of(parts) {
            Ok(None) => Some(AuthOutcome::NoCredentials),
            Err(e) => Some(AuthOutcome::Invalid(e.reason())),
            Ok(Some(_)) => None,
        }
    }
}

/// Mints an HS256 token for development and the CLI (`portcullis token`): `sub`, `roles`,
/// `iss`, `aud`, `iat`, `nbf` and `exp` = now + `ttl`. The secret must be at least 32 bytes,
/// as for verification.
///
/// ```
/// use std::time::Duration;
/// use portcullis::auth::{Secret, jwt};
/// let secret = Secret::from("a-development-secret-of-at-least-32-bytes");
/// let t = jwt::mint_hs256(&secret, "alice", ["user", "admin"], Duration::from_secs(3600),
///     "https://auth.example.com", "notes-api").unwrap();
/// assert!(t.starts_with("eyJ"));
/// assert!(jwt::mint_hs256(&Secret::from("short"), "a", ["user"], Duration::from_secs(1), "i", "a").is_err());
/// ```
pub fn mint_hs256<I, R>(
    secret: &Secret,
    sub: &str,
    roles: I,
    ttl: Duration,
    iss: &str,
    aud: &str,
) -> Result<String, KeyError>
where
    I: IntoIterator<Item = R>,
    R: AsRef<str>,
{
    if secret.len() < 32 {
        return Err(KeyError::WeakSecret {
            algorithm: Algorithm::HS256,
            min_bytes: 32,
        });
    }
    let roles: Vec<String> = roles.into_iter().map(|r| r.as_ref().to_string()).collect();
    let mut claims = dev_claims(sub, ttl, iss, aud)
        .map_err(|_| KeyError::Malformed("the subject is empty or holds a control character"))?;
    check_roles(&roles).map_err(|_| {
        KeyError::Malformed("a role is empty or holds a comma or control character")
    })?;
    claims.insert("roles".into(), Value::from(roles));
    sign_hs256(secret, &claims)
}

/// The registered claims of a development token (`sub`, `iss`, `aud`, `iat`, `nbf`, `exp`
/// from now and `ttl`), for [`sign_hs256`] once the roles are in. Refuses a subject the
/// verifier would refuse (empty, or holding a control character).
///
/// ```
/// use std::time::Duration;
/// use portcullis::auth::jwt;
/// let claims = jwt::dev_claims("alice", Duration::from_secs(60), "portcullis", "portcullis").unwrap();
/// assert_eq!(claims["sub"], "alice");
/// assert!(jwt::dev_claims("", Duration::from_secs(60), "i", "a").is_err());
/// assert!(jwt::dev_claims("a\nb", Duration::from_secs(60), "i", "a").is_err());
/// ```
pub fn dev_claims(
    sub: &str,
    ttl: Duration,
    iss: &str,
    aud: &str,
) -> Result<Map<String, Value>, JwtError> {
    if sub.is_empty() {
        return Err(JwtError::MissingSubject);
    }
    if !travels_intact(sub) {
        return Err(JwtError::BadSubject);
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut claims = Map::new();
    claims.insert("sub".into(), sub.into());
    claims.insert("iss".into(), iss.into());
    claims.insert("aud".into(), aud.into());
    claims.insert("iat".into(), now.into());
    claims.insert("nbf".into(), now.into());
    claims.insert("exp".into(), now.saturating_add(ttl.as_secs()).into());
    Ok(claims)
}

/// Whether the verifier accepts each of `roles` (non-empty, no comma, no control character),
/// for a development token.
///
/// ```
/// use portcullis::auth::jwt;
/// assert!(jwt::check_roles(&["user".to_string(), "Domain Admins".to_string()]).is_ok());
/// assert!(jwt::check_roles(&["user,admin".to_string()]).is_err());
/// ```
pub fn check_roles(roles: &[String]) -> Result<(), JwtError> {
    if roles.iter().all(|r| valid_role(r)) {
        Ok(())
    } else {
        Err(JwtError::BadRoles)
    }
}

/// Whether a claim's text reaches an application as a header value and a log line as it is:
/// no control character (CR, LF, NUL, ESC, …).
fn travels_intact(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

/// Whether a role travels intact in the comma-separated `x-portcullis-roles`.
fn valid_role(r: &str) -> bool {
    !r.is_empty() && !r.contains(',') && travels_intact(r)
}

/// Signs `claims` as a compact HS256 JWT (`typ: JWT`) with `secret` (at least 32 bytes).
/// For development tokens; [`mint_hs256`] fills the usual claims.
///
/// ```
/// use portcullis::auth::{Secret, jwt};
/// let mut claims = serde_json::Map::new();
/// claims.insert("sub".into(), "alice".into());
/// let secret = Secret::from("a-development-secret-of-32-bytes!");
/// assert_eq!(jwt::sign_hs256(&secret, &claims).unwrap().split('.').count(), 3);
/// ```
pub fn sign_hs256(secret: &Secret, claims: &Map<String, Value>) -> Result<String, KeyError> {
    sign_hmac(Algorithm::HS256, secret, claims)
}

/// Signs `claims` as a compact JWT (`typ: JWT`) with an HMAC `algorithm` (HS256, HS384 or
/// HS512) and `secret`, at least as long as the verifier asks for that algorithm (32, 48 or
/// 64 bytes). For development tokens, where the verifier allows only HS384 or HS512.
///
/// ```
/// use portcullis::auth::{Secret, jwt::{self, Algorithm}};
/// let mut claims = serde_json::Map::new();
/// claims.insert("sub".into(), "alice".into());
/// let secret = Secret::new([7u8; 64]);
/// let t = jwt::sign_hmac(Algorithm::HS512, &secret, &claims).unwrap();
/// assert!(t.starts_with("eyJhbGciOiJIUzUxMiIs")); // {"alg":"HS512",
/// assert!(jwt::sign_hmac(Algorithm::HS512, &Secret::new([7u8; 32]), &claims).is_err());
/// assert!(jwt::sign_hmac(Algorithm::RS256, &secret, &claims).is_err());
/// ```
pub fn sign_hmac(
    algorithm: Algorithm,
    secret: &Secret,
    claims: &Map<String, Value>,
) -> Result<String, KeyError> {
    let Some(min_bytes) = algorithm.hmac_min_bytes() else {
        return Err(KeyError::Malformed("not an HMAC algorithm"));
    };
    if secret.len() < min_bytes {
        return Err(KeyError::WeakSecret {
            algorithm,
            min_bytes,
        });
    }
    let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{}","typ":"JWT"}}"#, algorithm.name()));
    let claims =
        serde_json::to_vec(claims).map_err(|_| KeyError::Malformed("unserialisable claims"))?;
    let payload = URL_SAFE_NO_PAD.encode(claims);
    let signing_input = format!("{header}.{payload}");
    let key = jsonwebtoken::EncodingKey::from_secret(secret.expose());
    let signature =
        jsonwebtoken::crypto::sign(signing_input.as_bytes(), &key, algorithm.to_jsonwebtoken())
            .map_err(|_| KeyError::Malformed("HMAC signing failed"))?;
    Ok(format!("{signing_input}.{signature}"))
}

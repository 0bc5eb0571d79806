//! Verification keys, key sets and the JWKS fetcher.
//!
//! Every [`VerificationKey`] is bound to exactly one [`Algorithm`] (RFC 8725 §3.1): an HMAC
//! secret set up for HS256 never checks an RS256 token, an RSA key set up for RS256 never
//! checks PS256 or HS256. Keys come from an HMAC [`Secret`], a PEM public key, a JWKS document
//! ([`KeySet::from_jwks`]) or a JWKS URL ([`Jwks`]).
//!
//! [`Jwks`] fetches a key set over HTTP and caches it: the response's
//! `Cache-Control: max-age` sets the lifetime (bounded, 1 min to 24 h by default, 5 min when
//! absent); a token with an unknown `kid` triggers a refresh at most once per 10 s; one fetch
//! runs at a time and concurrent callers share its result; when the issuer is down or answers
//! garbage the last good key set stays in use. The built-in fetcher speaks plain `http://`
//! (a JWKS served next to the gateway, or through a local TLS-terminating proxy); for
//! `https://` plug in a TLS-capable [`JwksFetcher`] such as the gateway's.
//!
//! ```
//! use portcullis::auth::Secret;
//! use portcullis::auth::jwks::{KeySet, VerificationKey};
//! use portcullis::auth::jwt::Algorithm;
//!
//! let secret = Secret::from("a-development-secret-of-at-least-32-bytes");
//! let hs = VerificationKey::hmac(Algorithm::HS256, &secret).unwrap().with_kid("dev");
//! let from_doc = KeySet::from_jwks(
//!     r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"ed1","alg":"EdDSA",
//!                 "x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#,
//! ).unwrap();
//! assert_eq!(from_doc.len(), 1);
//! let set = KeySet::new([hs]).unwrap();
//! assert_eq!(set.kids().collect::<Vec<_>>(), ["dev"]);
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::DecodingKey;
use serde_json::{Map, Value};
use spki::der::asn1::UintRef;
use spki::der::{Decode, Reader, SliceReader};
use spki::{ObjectIdentifier, SubjectPublicKeyInfoRef};

use super::BoxFuture;
use super::jwt::Algorithm;
use super::secret::Secret;
use super::strict_json;

/// Why a key, key set or JWKS source could not be set up.
///
/// ```
/// use portcullis::auth::{Secret, jwks::{KeyError, VerificationKey}, jwt::Algorithm};
/// let err = VerificationKey::hmac(Algorithm::HS256, &Secret::from("too short")).unwrap_err();
/// assert_eq!(err, KeyError::WeakSecret { algorithm: Algorithm::HS256, min_bytes: 32 });
/// assert_eq!(err.to_string(), "an HS256 secret needs at least 32 bytes");
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// An HMAC secret shorter than the algorithm's hash (RFC 7518 §3.2).
    WeakSecret {
        /// The algorithm.
        algorithm: Algorithm,
        /// The minimum length in bytes.
        min_bytes: usize,
    },
    /// An RSA modulus under 2048 bits (RFC 7518 §3.3).
    WeakRsaKey {
        /// The modulus size found.
        bits: usize,
    },
    /// A PEM document or JWK that could not be read.
    Malformed(&'static str),
    /// The key does not fit the algorithm (an RSA key for ES256, a P-384 key for ES256, ...).
    WrongAlgorithm(&'static str),
    /// Two keys share a `kid`.
    DuplicateKid(String),
    /// A JWKS document without a usable signature key.
    NoUsableKeys,
    /// A JWKS URL the fetcher cannot use.
    BadUrl(&'static str),
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyError::WeakSecret {
                algorithm,
                min_bytes,
            } => write!(
                f,
                "an {} secret needs at least {min_bytes} bytes",
                algorithm.name()
            ),
            KeyError::WeakRsaKey { bits } => {
                write!(f, "RSA keys need at least 2048 bits (got {bits})")
            }
            KeyError::Malformed(why) => write!(f, "malformed key: {why}"),
            KeyError::WrongAlgorithm(why) => write!(f, "key and algorithm do not match: {why}"),
            KeyError::DuplicateKid(kid) => write!(f, "two keys share the kid {kid:?}"),
            KeyError::NoUsableKeys => f.write_str("the key set holds no usable signature key"),
            KeyError::BadUrl(why) => write!(f, "bad JWKS URL: {why}"),
        }
    }
}

impl std::error::Error for KeyError {}

/// A public key (or HMAC secret) bound to one algorithm, with an optional `kid`.
///
/// ```
/// use portcullis::auth::{Secret, jwks::VerificationKey, jwt::Algorithm};
/// let k = VerificationKey::hmac(Algorithm::HS256, &Secret::from("0123456789abcdef0123456789abcdef"))
///     .unwrap()
///     .with_kid("2026-05");
/// assert_eq!(k.algorithm(), Algorithm::HS256);
/// assert_eq!(k.kid(), Some("2026-05"));
/// assert!(VerificationKey::hmac(Algorithm::HS256, &Secret::from("short")).is_err());
/// ```
#[derive(Clone)]
pub struct VerificationKey {
    alg: Algorithm,
    kid: Option<Arc<str>>,
    key: DecodingKey,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

const RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

#[derive(Clone, Copy, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
}

impl VerificationKey {
    /// An HMAC secret for HS256, HS384 or HS512; at least as long as the hash (32, 48, 64
    /// bytes).
    ///
    /// ```
    /// use portcullis::auth::{Secret, jwks::VerificationKey, jwt::Algorithm};
    /// let secret = Secret::from("test-only-secret-of-at-least-32-bytes");
    /// assert!(VerificationKey::hmac(Algorithm::HS256, &secret).is_ok());
    /// // 37 bytes are too few for HS384, and an HMAC secret never verifies RS256.
    /// assert!(VerificationKey::hmac(Algorithm::HS384, &secret).is_err());
    /// assert!(VerificationKey::hmac(Algorithm::RS256, &secret).is_err());
    /// ```
    pub fn hmac(alg: Algorithm, secret: &Secret) -> Result<Self, KeyError> {
        let min = alg.hmac_min_bytes().ok_or(KeyError::WrongAlgorithm(
            "an HMAC secret needs HS256, HS384 or HS512",
        ))?;
        if secret.len() < min {
            return Err(KeyError::WeakSecret {
                algorithm: alg,
                min_bytes: min,
            });
        }
        Ok(VerificationKey {
            alg,
            kid: None,
            key: DecodingKey::from_secret(secret.expose()),
        })
    }

    /// A PEM public key (`PUBLIC KEY` for RSA, P-256, P-384 and Ed25519; `RSA PUBLIC KEY`)
    /// for `alg`, which must fit the key: RS*/PS* for RSA (≥ 2048 bits), ES256 for P-256,
    /// ES384 for P-384, EdDSA for Ed25519.
    ///
    /// ```
    /// use portcullis::auth::{jwks::VerificationKey, jwt::Algorithm};
    /// let pem = "-----BEGIN PUBLIC KEY-----\n\
    ///            MCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n\
    ///            -----END PUBLIC KEY-----\n";
    /// assert!(VerificationKey::from_pem(Algorithm::EdDSA, pem).is_ok());
    /// assert!(VerificationKey::from_pem(Algorithm::ES256, pem).is_err());
    /// ```
    pub fn from_pem(alg: Algorithm, pem: &str) -> Result<Self, KeyError> {
        let (label, doc) = spki::der::Document::from_pem(pem.trim())
            .map_err(|_| KeyError::Malformed("not a PEM document"))?;
        let key = match label {
            "PUBLIC KEY" => {
                let info = SubjectPublicKeyInfoRef::from_der(doc.as_bytes())
                    .map_err(|_| KeyError::Malformed("not a SubjectPublicKeyInfo"))?;
                let bits = info
                    .subject_public_key
                    .as_bytes()
                    .ok_or(KeyError::Malformed("public key bit string"))?;
                match info.algorithm.oid {
                    RSA_ENCRYPTION => rsa_from_pkcs1(alg, bits)?,
                    EC_PUBLIC_KEY => {
                        let curve = match info.algorithm.parameters_oid() {
                            Ok(P256) => Curve::P256,
                            Ok(P384) => Curve::P384,
                            _ => return Err(KeyError::WrongAlgorithm("unsupported curve")),
                        };
                        let n = curve.coordinate_len();
                        if bits.len() != 1 + 2 * n || bits[0] != 0x04 {
                            return Err(KeyError::Malformed("EC point must be uncompressed"));
                        }
                        ec_key(alg, curve, &bits[1..=n], &bits[1 + n..])?
                    }
                    ED25519 => ed_key(alg, bits)?,
                    _ => return Err(KeyError::WrongAlgorithm("unsupported key type")),
                }
            }
            "RSA PUBLIC KEY" => rsa_from_pkcs1(alg, doc.as_bytes())?,
            l if l.contains("PRIVATE") => {
                return Err(KeyError::Malformed(
                    "a private key was given; configure the public key",
                ));
            }
            _ => return Err(KeyError::Malformed("expected a PUBLIC KEY PEM document")),
        };
        Ok(VerificationKey {
            alg,
            kid: None,
            key,
        })
    }

    /// Names the key: tokens whose header carries this `kid` are checked with it.
    ///
    /// ```
    /// use portcullis::auth::{Secret, jwks::VerificationKey, jwt::Algorithm};
    /// let secret = Secret::from("test-only-secret-of-at-least-32-bytes");
    /// let k = VerificationKey::hmac(Algorithm::HS256, &secret).unwrap().with_kid("2026-01");
    /// assert_eq!(k.kid(), Some("2026-01"));
    /// ```
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(Arc::from(kid.into()));
        self
    }

    /// The one algorithm this key verifies.
    ///
    /// ```
    /// use portcullis::auth::{Secret, jwks::VerificationKey, jwt::Algorithm};
    /// let secret = Secret::new([7u8; 64]);
    /// let k = VerificationKey::hmac(Algorithm::HS512, &secret).unwrap();
    /// assert_eq!(k.algorithm(), Algorithm::HS512);
    /// ```
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The key id.
    ///
    /// ```
    /// use portcullis::auth::{Secret, jwks::VerificationKey, jwt::Algorithm};
    /// let k = VerificationKey::hmac(Algorithm::HS256, &Secret::new([7u8; 32])).unwrap();
    /// assert_eq!(k.kid(), None);
    /// assert_eq!(k.with_kid("a").kid(), Some("a"));
    /// ```
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    pub(crate) fn decoding_key(&self) -> &DecodingKey {
        &self.key
    }

    /// Reads one JWK. `Ok(None)`: a key we do not use (encryption keys, other curves or
    /// algorithms, symmetric keys where they are not allowed).
    fn from_jwk(
        jwk: &Map<String, Value>,
        symmetric_ok: bool,
        rsa_default: Algorithm,
    ) -> Result<Option<Self>, KeyError> {
        let text = |name: &'static str| -> Result<Option<&str>, KeyError> {
            match jwk.get(name) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(KeyError::Malformed("JWK member is not a string")),
            }
        };
        let bytes = |name: &'static str| -> Result<Vec<u8>, KeyError> {
            let s = text(name)?.ok_or(KeyError::Malformed("JWK member missing"))?;
            URL_SAFE_NO_PAD
                .decode(s)
                .map_err(|_| KeyError::Malformed("JWK member is not base64url"))
        };
        if text("use")?.is_some_and(|u| u != "sig") {
            return Ok(None);
        }
        if let Some(ops) = jwk.get("key_ops") {
            let verifies = ops
                .as_array()
                .is_some_and(|a| a.iter().any(|o| o == "verify"));
            if !verifies {
                return Ok(None);
            }
        }
        // Private members in a published set are a leak, not a key to trust.
        if ["d", "p", "q", "dp", "dq", "qi"]
            .iter()
            .any(|m| jwk.contains_key(*m))
        {
            return Err(KeyError::Malformed("private key material in a JWK"));
        }
        let alg = match text("alg")? {
            None => None,
            Some(a) => match Algorithm::from_name(a) {
                Some(a) => Some(a),
                None => return Ok(None),
            },
        };
        let kid = text("kid")?.map(Arc::from);
        let key = match text("kty")? {
            Some("RSA") => {
                let alg = alg.unwrap_or(rsa_default);
                rsa_key(alg, &bytes("n")?, &bytes("e")?)?.map(|k| (alg, k))
            }
            Some("EC") => {
                let curve = match text("crv")? {
                    Some("P-256") => Curve::P256,
                    Some("P-384") => Curve::P384,
                    _ => return Ok(None),
                };
                let alg = alg.unwrap_or(curve.algorithm());
                Some((alg, ec_key(alg, curve, &bytes("x")?, &bytes("y")?)?))
            }
            Some("OKP") => {
                if text("crv")? != Some("Ed25519") {
                    return Ok(None);
                }
                let alg = alg.unwrap_or(Algorithm::EdDSA);
                Some((alg, ed_key(alg, &bytes("x")?)?))
            }
            Some("oct") if symmetric_ok => {
                let alg = alg.ok_or(KeyError::Malformed("a symmetric JWK needs an alg"))?;
                let k = VerificationKey::hmac(alg, &Secret::new(bytes("k")?))?;
                Some((alg, k.key))
            }
            _ => None,
        };
        Ok(key.map(|(alg, key)| VerificationKey { alg, kid, key }))
    }
}

impl Curve {
    fn coordinate_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
        }
    }

    fn algorithm(self) -> Algorithm {
        match self {
            Curve::P256 => Algorithm::ES256,
            Curve::P384 => Algorithm::ES384,
        }
    }
}

/// RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER } (RFC 8017 A.1.1).
fn rsa_from_pkcs1(alg: Algorithm, der: &[u8]) -> Result<DecodingKey, KeyError> {
    let bad = |_| KeyError::Malformed("not a PKCS#1 RSA public key");
    let mut reader = SliceReader::new(der).map_err(bad)?;
    let (n, e) = reader
        .sequence(|r| Ok((UintRef::decode(r)?, UintRef::decode(r)?)))
        .map_err(bad)?;
    reader.finish(()).map_err(bad)?;
    rsa_key(alg, n.as_bytes(), e.as_bytes())?.ok_or(KeyError::Malformed("RSA key"))
}

fn rsa_key(alg: Algorithm, n: &[u8], e: &[u8]) -> Result<Option<DecodingKey>, KeyError> {
    if !alg.is_rsa() {
        return Err(KeyError::WrongAlgorithm("an RSA key needs RS* or PS*"));
    }
    let n = strip_zeros(n);
    let e = strip_zeros(e);
    let bits = n.len() * 8 - n.first().map_or(0, |b| b.leading_zeros() as usize);
    if bits < 2048 {
        return Err(KeyError::WeakRsaKey { bits });
    }
    if e.is_empty() || e.len() > 8 {
        return Err(KeyError::Malformed("RSA public exponent"));
    }
    Ok(Some(DecodingKey::from_rsa_raw_components(n, e)))
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[start..]
}

fn ec_key(alg: Algorithm, curve: Curve, x: &[u8], y: &[u8]) -> Result<DecodingKey, KeyError> {
    if alg != curve.algorithm() {
        return Err(KeyError::WrongAlgorithm(
            "P-256 keys verify ES256, P-384 keys ES384",
        ));
    }
    let n = curve.coordinate_len();
    if x.len() != n || y.len() != n {
        return Err(KeyError::Malformed("EC coordinate length"));
    }
    let mut point = Vec::with_capacity(1 + 2 * n);
    point.push(0x04);
    point.extend_from_slice(x);
    point.extend_from_slice(y);
    let key = DecodingKey::from_ec_der(&point);
    probe(&key, alg)?;
    Ok(key)
}

fn ed_key(alg: Algorithm, x: &[u8]) -> Result<DecodingKey, KeyError> {
    if alg != Algorithm::EdDSA {
        return Err(KeyError::WrongAlgorithm("Ed25519 keys verify EdDSA"));
    }
    // jsonwebtoken slices the first 32 bytes without checking the length first.
    if x.len() != 32 {
        return Err(KeyError::Malformed("Ed25519 keys are 32 bytes"));
    }
    let key = DecodingKey::from_ed_der(x);
    probe(&key, alg)?;
    Ok(key)
}

/// Builds the backend's verifier once, so a point off the curve fails at load, not per request.
fn probe(key: &DecodingKey, alg: Algorithm) -> Result<(), KeyError> {
    jsonwebtoken::crypto::verify("AA", b"probe", key, alg.to_jsonwebtoken())
        .map(|_| ())
        .map_err(|_| KeyError::Malformed("the crypto backend refused the key"))
}

/// Keys by `kid`, plus keys without one.
///
/// A token with a `kid` is checked with the key of that `kid` (an opaque map key, never a
/// path or a query), or else with the unnamed keys of its algorithm; a token without a `kid`
/// with the unnamed keys of its algorithm.
///
/// ```
/// use portcullis::auth::{Secret, jwks::{KeySet, VerificationKey}, jwt::Algorithm};
/// let k = |kid: &str| VerificationKey::hmac(Algorithm::HS256, &Secret::from("0123456789abcdef0123456789abcdef")).unwrap().with_kid(kid);
/// assert!(KeySet::new([k("a"), k("b")]).is_ok());
/// assert!(KeySet::new([k("a"), k("a")]).is_err());
/// ```
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    named: HashMap<Arc<str>, VerificationKey>,
    unnamed: Vec<VerificationKey>,
}

impl KeySet {
    /// A set of keys; two keys with the same `kid` are an error.
    ///
    /// ```
    /// use portcullis::auth::{Secret, jwks::{KeyError, KeySet, VerificationKey}, jwt::Algorithm};
    /// let key = |kid: &str| VerificationKey::hmac(Algorithm::HS256, &Secret::new([7u8; 32])).unwrap().with_kid(kid);
    /// assert_eq!(KeySet::new([key("a"), key("b")])?.len(), 2);
    /// assert_eq!(KeySet::new([key("a"), key("a")]).unwrap_err(), KeyError::DuplicateKid("a".into()));
    /// # Ok::<(), KeyError>(())
    /// ```
    pub fn new(keys: impl IntoIterator<Item = VerificationKey>) -> Result<Self, KeyError> {
        let mut set = KeySet::default();
        for k in keys {
            set.insert(k)?;
        }
        Ok(set)
    }

    fn insert(&mut self, key: VerificationKey) -> Result<(), KeyError> {
        match key.kid.clone() {
            Some(kid) => {
                if self.named.contains_key(&kid) {
                    return Err(KeyError::DuplicateKid(kid.to_string()));
                }
                self.named.insert(kid, key);
            }
            None => self.unnamed.push(key),
        }
        Ok(())
    }

    /// Reads a JWKS document (`{"keys":[...]}`), e.g. from a file. Symmetric (`oct`) keys are
    /// accepted here and need an `alg`; RSA keys without `alg` verify RS256. Keys for
    /// encryption or other algorithms are skipped; a malformed key is an error.
    ///
    /// ```
    /// use portcullis::auth::jwks::{KeyError, KeySet};
    /// let set = KeySet::from_jwks(
    ///     r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"ed1","alg":"EdDSA",
    ///                 "x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#,
    /// )?;
    /// assert_eq!(set.kids().collect::<Vec<_>>(), ["ed1"]);
    /// assert_eq!(KeySet::from_jwks(r#"{"keys":[]}"#).unwrap_err(), KeyError::NoUsableKeys);
    /// # Ok::<(), KeyError>(())
    /// ```
    pub fn from_jwks(json: &str) -> Result<Self, KeyError> {
        parse_jwks(json.as_bytes(), true, Algorithm::RS256, true)
    }

    /// The number of keys.
    ///
    /// ```
    /// use portcullis::auth::{Secret, jwks::{KeySet, VerificationKey}, jwt::Algorithm};
    /// let k = VerificationKey::hmac(Algorithm::HS256, &Secret::new([7u8; 32])).unwrap();
    /// assert_eq!(KeySet::new([k.clone(), k]).unwrap().len(), 2); // keys without a kid may repeat
    /// ```
    pub fn len(&self) -> usize {
        self.named.len() + self.unnamed.len()
    }

    /// True when the set holds no key.
    ///
    /// ```
    /// use portcullis::auth::jwks::{KeySet, VerificationKey};
    /// assert!(KeySet::default().is_empty());
    /// assert!(KeySet::new(Vec::<VerificationKey>::new()).unwrap().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key ids in the set.
    ///
    /// ```
    /// use portcullis::auth::{Secret, jwks::{KeySet, VerificationKey}, jwt::Algorithm};
    /// let k = VerificationKey::hmac(Algorithm::HS256, &Secret::new([7u8; 32])).unwrap();
    /// let set = KeySet::new([k.clone().with_kid("dev"), k]).unwrap();
    /// // Only named keys have a kid to list.
    /// assert_eq!(set.kids().collect::<Vec<_>>(), ["dev"]);
    /// ```
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.named.keys().map(|k| &**k)
    }

    pub(crate) fn into_keys(self) -> impl Iterator<Item = VerificationKey> {
        self.named.into_values().chain(self.unnamed)
    }

    /// The key named `kid`.
    pub(crate) fn named(&self, kid: &str) -> Option<&VerificationKey> {
        self.named.get(kid)
    }

    /// Keys for `alg`: those without a `kid`, then (when `named_too`, for tokens that carry
    /// no `kid`) the named ones.
    pub(crate) fn candidates(
        &self,
        alg: Algorithm,
        named_too: bool,
    ) -> impl Iterator<Item = &VerificationKey> {
        let named = self.named.values().filter(move |_| named_too);
        self.unnamed
            .iter()
            .chain(named)
            .filter(move |k| k.alg == alg)
    }
}

/// `strict`: a malformed key fails the document (local files, where the operator should
/// hear about it); otherwise it is skipped with a warning (a remote issuer's odd key must not
/// lock every user out).
fn parse_jwks(
    bytes: &[u8],
    symmetric_ok: bool,
    rsa_default: Algorithm,
    strict: bool,
) -> Result<KeySet, KeyError> {
    let doc = strict_json::parse_object(bytes)
        .map_err(|_| KeyError::Malformed("a JWKS is a JSON object without duplicate keys"))?;
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or(KeyError::Malformed("a JWKS needs a \"keys\" array"))?;
    let mut set = KeySet::default();
    for jwk in keys {
        let Some(jwk) = jwk.as_object() else {
            return Err(KeyError::Malformed("a JWK is a JSON object"));
        };
        let key = match VerificationKey::from_jwk(jwk, symmetric_ok, rsa_default) {
            Ok(k) => k,
            Err(e) if strict => return Err(e),
            Err(e) => {
                tracing::warn!(target: "portcullis::auth", error = %e, "skipping a JWK");
                None
            }
        };
        if let Some(k) = key {
            match set.insert(k) {
                Ok(()) => {}
                Err(e) if strict => return Err(e),
                Err(e) => tracing::warn!(target: "portcullis::auth", error = %e, "skipping a JWK"),
            }
        }
    }
    if set.is_empty() {
        return Err(KeyError::NoUsableKeys);
    }
    Ok(set)
}

/// Why a JWKS fetch failed (the reason is logged; the last good key set stays in use).
///
/// ```
/// use portcullis::auth::jwks::FetchError;
/// let e = FetchError("timeout");
/// assert_eq!(e.to_string(), "JWKS fetch failed: timeout");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchError(pub &'static str);

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "JWKS fetch failed: {}", self.0)
    }
}

impl std::error::Error for FetchError {}

/// Fetches a JWKS URL: a `GET` whose response (status, headers, body) comes back whole.
///
/// The built-in [`HttpFetcher`] speaks plain HTTP; a TLS-capable fetcher (the gateway's)
/// plugs in here.
///
/// ```
/// use bytes::Bytes;
/// use portcullis::auth::BoxFuture;
/// use portcullis::auth::jwks::{FetchError, JwksFetcher};
/// /// Serves a fixed document, e.g. for tests.
/// struct Fixed(&'static str);
/// impl JwksFetcher for Fixed {
///     fn get<'a>(&'a self, _url: &'a http::Uri) -> BoxFuture<'a, Result<http::Response<Bytes>, FetchError>> {
///         Box::pin(async move { Ok(http::Response::new(Bytes::from_static(self.0.as_bytes()))) })
///     }
/// }
/// ```
pub trait JwksFetcher: Send + Sync + 'static {
    /// Fetches `url`.
    fn get<'a>(&'a self, url: &'a Uri) -> BoxFuture<'a, Result<Response<Bytes>, FetchError>>;
}

/// Reads a JWKS answer whole, refusing a body over `max_bytes`; for [`JwksFetcher`]s.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use portcullis::auth::jwks::read_bounded;
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let res = http::Response::new(Full::new(Bytes::from_static(br#"{"keys":[]}"#)));
/// assert_eq!(read_bounded(res, 1024).await.unwrap().body().as_ref(), br#"{"keys":[]}"#);
/// let big = http::Response::new(Full::new(Bytes::from(vec![b' '; 2048])));
/// assert!(read_bounded(big, 1024).await.is_err());
/// # });
/// ```
pub async fn read_bounded<B>(
    res: Response<B>,
    max_bytes: usize,
) -> Result<Response<Bytes>, FetchError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (parts, body) = res.into_parts();
    let body = Limited::new(body, max_bytes)
        .collect()
        .await
        .map_err(|_| FetchError("body unreadable or too large"))?
        .to_bytes();
    Ok(Response::from_parts(parts, body))
}

/// The built-in fetcher: hyper over plain HTTP, with a timeout and a body size cap; no
/// redirects are followed.
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use portcullis::auth::jwks::{HttpFetcher, Jwks, JwksOptions};
/// let fetcher = HttpFetcher::new(Duration::from_secs(2), 64 * 1024);
/// let jwks = Jwks::with_fetcher("http://127.0.0.1:8081/jwks.json", JwksOptions::default(), Arc::new(fetcher))?;
/// assert_eq!(jwks.fetch_count(), 0); // nothing is fetched before it is needed
/// # Ok::<(), portcullis::auth::jwks::KeyError>(())
/// ```
#[derive(Clone)]
pub struct HttpFetcher {
    client: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
    max_bytes: usize,
}

impl std::fmt::Debug for HttpFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpFetcher")
            .field("timeout", &self.timeout)
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

impl HttpFetcher {
    /// A fetcher with a whole-request timeout and a body cap.
    ///
    /// ```
    /// let f = portcullis::auth::jwks::HttpFetcher::new(std::time::Duration::from_secs(5), 256 * 1024);
    /// ```
    pub fn new(timeout: Duration, max_bytes: usize) -> Self {
        // Fetches are minutes apart: a pooled connection would only go stale in between.
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http();
        HttpFetcher {
            client,
            timeout,
            max_bytes,
        }
    }
}

impl JwksFetcher for HttpFetcher {
    fn get<'a>(&'a self, url: &'a Uri) -> BoxFuture<'a, Result<Response<Bytes>, FetchError>> {
        Box::pin(async move {
            let req = Request::get(url.clone())
                .header(header::ACCEPT, "application/jwk-set+json, application/json")
                .body(Empty::new())
                .map_err(|_| FetchError("bad request"))?;
            let exchange = async {
                let res = self
                    .client
                    .request(req)
                    .await
                    .map_err(|_| FetchError("connection failed"))?;
                read_bounded(res, self.max_bytes).await
            };
            tokio::time::timeout(self.timeout, exchange)
                .await
                .map_err(|_| FetchError("timeout"))?
        })
    }
}

/// How a [`Jwks`] caches and refreshes.
///
/// ```
/// use std::time::Duration;
/// use portcullis::auth::jwks::JwksOptions;
/// let o = JwksOptions::default().refresh_cooldown(Duration::from_secs(30));
/// ```
#[derive(Debug, Clone)]
pub struct JwksOptions {
    default_ttl: Duration,
    min_ttl: Duration,
    max_ttl: Duration,
    cooldown: Duration,
    timeout: Duration,
    max_bytes: usize,
    rsa_default: Algorithm,
}

impl Default for JwksOptions {
    fn default() -> Self {
        JwksOptions {
            default_ttl: Duration::from_secs(300),
            min_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(24 * 3600),
            cooldown: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            max_bytes: 256 * 1024,
            rsa_default: Algorithm::RS256,
        }
    }
}

impl JwksOptions {
    /// Lifetime of a key set whose response has no `Cache-Control: max-age` (5 min).
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use bytes::Bytes;
    /// use portcullis::auth::{BoxFuture, Secret, jwks::{FetchError, Jwks, JwksFetcher, JwksOptions}};
    /// use portcullis::auth::jwt::{self, JwtAuthenticator};
    /// /// Serves one Ed25519 key, without `Cache-Control`.
    /// struct Fixed;
    /// impl JwksFetcher for Fixed {
    ///     fn get<'a>(&'a self, _: &'a http::Uri) -> BoxFuture<'a, Result<http::Response<Bytes>, FetchError>> {
    ///         Box::pin(async { Ok(http::Response::new(Bytes::from_static(
    ///             br#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#,
    ///         ))) })
    ///     }
    /// }
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// // Keys expire at once, and may be fetched again at once.
    /// let options = JwksOptions::default().default_ttl(Duration::ZERO).refresh_cooldown(Duration::ZERO);
    /// let jwks = Jwks::with_fetcher("https://issuer.example/jwks.json", options, Arc::new(Fixed)).unwrap();
    /// let auth = JwtAuthenticator::builder().issuer("me").audience("api").jwks(jwks.clone()).build().unwrap();
    /// let secret = Secret::from("test-only-secret-of-at-least-32-bytes");
    /// let token = jwt::mint_hs256(&secret, "alice", ["user"], Duration::from_secs(60), "me", "api").unwrap();
    /// let _ = auth.verify(&token).await; // loads the key set
    /// let _ = auth.verify(&token).await; // stale already: fetched again
    /// assert_eq!(jwks.fetch_count(), 2);
    /// # });
    /// ```
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = ttl;
        self
    }

    /// Bounds on the lifetime taken from `Cache-Control` (1 min to 24 h).
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::auth::jwks::{Jwks, JwksOptions};
    /// // Honour `Cache-Control: max-age` between 5 minutes and 1 hour.
    /// let options = JwksOptions::default().ttl_bounds(Duration::from_secs(300), Duration::from_secs(3600));
    /// let jwks = Jwks::with_options("http://127.0.0.1:8081/jwks.json", options)?;
    /// assert_eq!(jwks.url(), "http://127.0.0.1:8081/jwks.json");
    /// # Ok::<(), portcullis::auth::jwks::KeyError>(())
    /// ```
    pub fn ttl_bounds(mut self, min: Duration, max: Duration) -> Self {
        self.min_ttl = min;
        self.max_ttl = max.max(min);
        self
    }

    /// The least time between two fetches, whatever triggers them (10 s).
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::auth::jwks::{Jwks, JwksOptions};
    /// // A token naming an unknown `kid` triggers at most one fetch per minute.
    /// let options = JwksOptions::default().refresh_cooldown(Duration::from_secs(60));
    /// let jwks = Jwks::with_options("http://127.0.0.1:8081/jwks.json", options)?;
    /// assert_eq!(jwks.fetch_count(), 0);
    /// # Ok::<(), portcullis::auth::jwks::KeyError>(())
    /// ```
    pub fn refresh_cooldown(mut self, cooldown: Duration) -> Self {
        self.cooldown = cooldown;
        self
    }

    /// The whole-fetch timeout of the built-in fetcher (5 s).
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::auth::jwks::{Jwks, JwksOptions};
    /// let options = JwksOptions::default().timeout(Duration::from_secs(2));
    /// assert!(Jwks::with_options("http://127.0.0.1:8081/jwks.json", options).is_ok());
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The response size cap of the built-in fetcher (256 KiB).
    ///
    /// ```
    /// use portcullis::auth::jwks::{Jwks, JwksOptions};
    /// let options = JwksOptions::default().max_bytes(64 * 1024);
    /// assert!(Jwks::with_options("http://127.0.0.1:8081/jwks.json", options).is_ok());
    /// ```
    pub fn max_bytes(mut self, max: usize) -> Self {
        self.max_bytes = max;
        self
    }

    /// The algorithm of RSA keys that carry no `alg` (RS256).
    ///
    /// ```
    /// use portcullis::auth::jwks::{Jwks, JwksOptions};
    /// use portcullis::auth::jwt::Algorithm;
    /// // An issuer that signs with RSA-PSS but does not say so in its JWKS.
    /// let options = JwksOptions::default().rsa_default_algorithm(Algorithm::PS256);
    /// assert!(Jwks::with_options("http://127.0.0.1:8081/jwks.json", options).is_ok());
    /// ```
    pub fn rsa_default_algorithm(mut self, alg: Algorithm) -> Self {
        self.rsa_default = alg;
        self
    }

    /// The lifetime for a response's `Cache-Control` value.
    fn ttl_for(&self, cache_control: Option<&str>) -> Duration {
        let mut ttl = None;
        for d in cache_control.unwrap_or("").split(',') {
            let d = d.trim();
            if d.eq_ignore_ascii_case("no-store") || d.eq_ignore_ascii_case("no-cache") {
                ttl = Some(Duration::ZERO);
                break;
            }
            if let Some((k, v)) = d.split_once('=')
                && k.trim().eq_ignore_ascii_case("max-age")
                && let Ok(secs) = v.trim().trim_matches('"').parse::<u64>()
            {
                ttl = Some(Duration::from_secs(secs));
            }
        }
        ttl.map_or(self.default_ttl, |t| t.clamp(self.min_ttl, self.max_ttl))
    }
}

/// A JWKS URL with its cached key set. Cheap to clone; clones share the cache.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use portcullis::auth::jwks::Jwks;
/// use portcullis::auth::jwt::JwtAuthenticator;
/// let jwks = Jwks::new("http://127.0.0.1:8081/.well-known/jwks.json")?;
/// jwks.prefetch().await?; // optional: fail fast at start-up
/// let jwt = JwtAuthenticator::builder()
///     .issuer("http://127.0.0.1:8081")
///     .audience("api")
///     .jwks(jwks)
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Jwks {
    inner: Arc<JwksInner>,
}

struct JwksInner {
    url: Uri,
    options: JwksOptions,
    fetcher: Arc<dyn JwksFetcher>,
    state: RwLock<CacheState>,
    /// Held while a fetch runs: concurrent callers wait for it instead of fetching again.
    refresh: tokio::sync::Mutex<()>,
    fetches: AtomicU64,
}

#[derive(Default)]
struct CacheState {
    keys: Option<Arc<KeySet>>,
    fresh_until: Option<Instant>,
    last_attempt: Option<Instant>,
    /// Bumped by every fetch attempt, so waiters know one ran while they waited.
    generation: u64,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = self.read().keys.as_ref().map_or(0, |k| k.len());
        f.debug_struct("Jwks")
            .field("url", &self.inner.url)
            .field("keys", &keys)
            .field("fetches", &self.fetch_count())
            .finish()
    }
}

impl Jwks {
    /// A JWKS URL (`http://` only; see [`Jwks::with_fetcher`] for `https://`), default options.
    ///
    /// ```
    /// use portcullis::auth::jwks::Jwks;
    /// let jwks = Jwks::new("http://127.0.0.1:8081/jwks.json")?;
    /// assert_eq!(jwks.fetch_count(), 0); // fetched on first use, or by `prefetch`
    /// // The built-in fetcher speaks plain HTTP only.
    /// assert!(Jwks::new("https://issuer.example/jwks.json").is_err());
    /// # Ok::<(), portcullis::auth::jwks::KeyError>(())
    /// ```
    pub fn new(url: &str) -> Result<Self, KeyError> {
        Self::with_options(url, JwksOptions::default())
    }

    /// A JWKS URL (`http://` only) with options.
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::auth::jwks::{Jwks, JwksOptions};
    /// let options = JwksOptions::default().timeout(Duration::from_secs(2));
    /// let jwks = Jwks::with_options("http://127.0.0.1:8081/jwks.json", options)?;
    /// assert_eq!(jwks.url().path(), "/jwks.json");
    /// assert!(Jwks::with_options("not a url", JwksOptions::default()).is_err());
    /// # Ok::<(), portcullis::auth::jwks::KeyError>(())
    /// ```
    pub fn with_options(url: &str, options: JwksOptions) -> Result<Self, KeyError> {
        let uri: Uri = url.parse().map_err(|_| KeyError::BadUrl("not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(KeyError::BadUrl(
                    "the built-in fetcher speaks http:// only; plug in a TLS fetcher with Jwks::with_fetcher",
                ));
            }
            _ => return Err(KeyError::BadUrl("expected an http:// URL")),
        }
        let fetcher = HttpFetcher::new(options.timeout, options.max_bytes);
        Self::with_fetcher(url, options, Arc::new(fetcher))
    }

    /// A JWKS URL fetched by `fetcher` (any scheme the fetcher supports).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use bytes::Bytes;
    /// use portcullis::auth::{BoxFuture, jwks::{FetchError, Jwks, JwksFetcher, JwksOptions}};
    /// struct Unreachable;
    /// impl JwksFetcher for Unreachable {
    ///     fn get<'a>(&'a self, _: &'a http::Uri) -> BoxFuture<'a, Result<http::Response<Bytes>, FetchError>> {
    ///         Box::pin(async { Err(FetchError("unreachable")) })
    ///     }
    /// }
    /// // Any scheme the fetcher speaks; never credentials in the URL.
    /// let o = JwksOptions::default;
    /// assert!(Jwks::with_fetcher("https://issuer.example/jwks.json", o(), Arc::new(Unreachable)).is_ok());
    /// assert!(Jwks::with_fetcher("https://user:pw@issuer.example/jwks.json", o(), Arc::new(Unreachable)).is_err());
    /// ```
    pub fn with_fetcher(
        url: &str,
        options: JwksOptions,
        fetcher: Arc<dyn JwksFetcher>,
    ) -> Result<Self, KeyError> {
        let url: Uri = url.parse().map_err(|_| KeyError::BadUrl("not a URL"))?;
        if url.scheme().is_none() || url.host().is_none() {
            return Err(KeyError::BadUrl("an absolute URL is needed"));
        }
        if url.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(KeyError::BadUrl("credentials in the URL"));
        }
        Ok(Jwks {
            inner: Arc::new(JwksInner {
                url,
                options,
                fetcher,
                state: RwLock::new(CacheState::default()),
                refresh: tokio::sync::Mutex::new(()),
                fetches: AtomicU64::new(0),
            }),
        })
    }

    /// Fetches now (subject to nothing but the single-flight lock) and returns the number of
    /// usable keys; for start-up checks.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use bytes::Bytes;
    /// use portcullis::auth::{BoxFuture, jwks::{FetchError, Jwks, JwksFetcher, JwksOptions}};
    /// struct Fixed;
    /// impl JwksFetcher for Fixed {
    ///     fn get<'a>(&'a self, _: &'a http::Uri) -> BoxFuture<'a, Result<http::Response<Bytes>, FetchError>> {
    ///         Box::pin(async { Ok(http::Response::new(Bytes::from_static(
    ///             br#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#,
    ///         ))) })
    ///     }
    /// }
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let jwks = Jwks::with_fetcher("https://issuer.example/jwks.json", JwksOptions::default(), Arc::new(Fixed)).unwrap();
    /// assert_eq!(jwks.prefetch().await, Ok(1));
    /// assert_eq!(jwks.fetch_count(), 1);
    /// # });
    /// ```
    pub async fn prefetch(&self) -> Result<usize, FetchError> {
        let _guard = self.inner.refresh.lock().await;
        self.fetch_locked().await?;
        Ok(self.read().keys.as_ref().map_or(0, |k| k.len()))
    }

    /// How many fetches were attempted (for metrics).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use bytes::Bytes;
    /// use portcullis::auth::{BoxFuture, jwks::{FetchError, Jwks, JwksFetcher, JwksOptions}};
    /// struct Down;
    /// impl JwksFetcher for Down {
    ///     fn get<'a>(&'a self, _: &'a http::Uri) -> BoxFuture<'a, Result<http::Response<Bytes>, FetchError>> {
    ///         Box::pin(async { Err(FetchError("connection failed")) })
    ///     }
    /// }
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let jwks = Jwks::with_fetcher("https://issuer.example/jwks.json", JwksOptions::default(), Arc::new(Down)).unwrap();
    /// assert_eq!(jwks.prefetch().await, Err(FetchError("connection failed")));
    /// assert_eq!(jwks.fetch_count(), 1); // failed attempts count too
    /// # });
    /// ```
    pub fn fetch_count(&self) -> u64 {
        self.inner.fetches.load(Ordering::Relaxed)
    }

    /// The URL.
    ///
    /// ```
    /// use portcullis::auth::jwks::Jwks;
    /// let jwks = Jwks::new("http://127.0.0.1:8081/.well-known/jwks.json").unwrap();
    /// assert_eq!(jwks.url().host(), Some("127.0.0.1"));
    /// assert_eq!(jwks.url().path(), "/.well-known/jwks.json");
    /// ```
    pub fn url(&self) -> &Uri {
        &self.inner.url
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, CacheState> {
        self.inner
            .state
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The key set to verify with, and the generation it belongs to. Loads it when there is
    /// none (callers wait); refreshes a stale one when no fetch is running (callers keep the
    /// stale set meanwhile).
    pub(crate) async fn current(&self) -> (Option<Arc<KeySet>>, u64) {
        let (keys, fresh, generation) = {
            let s = self.read();
            let fresh = s.fresh_until.is_some_and(|t| Instant::now() < t);
            (s.keys.clone(), fresh, s.generation)
        };
        match keys {
            Some(k) if fresh => (Some(k), generation),
            Some(_) => {
                self.refresh(generation, false).await;
                self.snapshot()
            }
            None => {
                self.refresh(generation, true).await;
                self.snapshot()
            }
        }
    }

    /// A token named a `kid` the set at `generation` lacks: refresh, at most once per
    /// cooldown, and return the newest set.
    pub(crate) async fn refresh_for_unknown_kid(&self, generation: u64) -> Option<Arc<KeySet>> {
        self.refresh(generation, true).await;
        self.read().keys.clone()
    }

    fn snapshot(&self) -> (Option<Arc<KeySet>>, u64) {
        let s = self.read();
        (s.keys.clone(), s.generation)
    }

    async fn refresh(&self, seen: u64, wait: bool) {
        let _guard = if wait {
            self.inner.refresh.lock().await
        } else {
            match self.inner.refresh.try_lock() {
                Ok(g) => g,
                Err(_) => return,
            }
        };
        {
            let s = self.read();
            if s.generation != seen {
                return; // a fetch ran while we waited: use its result
            }
            if s.last_attempt
                .is_some_and(|t| t.elapsed() < self.inner.options.cooldown)
            {
                return;
            }
        }
        if let Err(e) = self.fetch_locked().await {
            tracing::warn!(
                target: "portcullis::auth",
                url = %self.inner.url,
                error = %e,
                "JWKS refresh failed; keeping the last good key set"
            );
        }
    }

    /// One fetch; the caller holds the refresh lock.
    async fn fetch_locked(&self) -> Result<(), FetchError> {
        let started = Instant::now();
        {
            let mut s = self
                .inner
                .state
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            s.last_attempt = Some(started);
        }
        self.inner.fetches.fetch_add(1, Ordering::Relaxed);
        let result = self.fetch_and_parse().await;
        let mut s = self
            .inner
            .state
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        s.generation += 1;
        let (set, ttl) = result?;
        s.keys = Some(Arc::new(set));
        s.fresh_until = Some(started + ttl);
        Ok(())
    }

    async fn fetch_and_parse(&self) -> Result<(KeySet, Duration), FetchError> {
        let res = self.inner.fetcher.get(&self.inner.url).await?;
        if res.status() != StatusCode::OK {
            return Err(FetchError("status is not 200"));
        }
        let cache_control = res
            .headers()
            .get(header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok());
        let ttl = self.inner.options.ttl_for(cache_control);
        let set = parse_jwks(res.body(), false, self.inner.options.rsa_default, false)
            .map_err(|_| FetchError("no usable keys in the response"))?;
        Ok((set, ttl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_sets_a_bounded_lifetime() {
        let o = JwksOptions::default();
        assert_eq!(o.ttl_for(None), Duration::from_secs(300));
        assert_eq!(o.ttl_for(Some("public")), Duration::from_secs(300));
        assert_eq!(
            o.ttl_for(Some("public, max-age=3600")),
            Duration::from_secs(3600)
        );
        assert_eq!(o.ttl_for(Some("max-age=5")), Duration::from_secs(60));
        assert_eq!(o.ttl_for(Some("no-cache")), Duration::from_secs(60));
        assert_eq!(
            o.ttl_for(Some("max-age=99999999")),
            Duration::from_secs(24 * 3600)
        );
        assert_eq!(o.ttl_for(Some("max-age=junk")), Duration::from_secs(300));
    }

    #[test]
    fn jwk_keys_are_bound_to_their_algorithm() {
        let ed = r#"{"kty":"OKP","crv":"Ed25519","kid":"e","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
        let set = KeySet::from_jwks(&format!(r#"{{"keys":[{ed}]}}"#)).unwrap();
        assert_eq!(set.named("e").unwrap().algorithm(), Algorithm::EdDSA);
        let wrong = ed.replace(r#""kid":"e""#, r#""kid":"e","alg":"ES256""#);
        assert!(KeySet::from_jwks(&format!(r#"{{"keys":[{wrong}]}}"#)).is_err());
    }

    #[test]
    fn encryption_keys_and_unknown_types_are_skipped() {
        let doc = r#"{"keys":[
            {"kty":"OKP","crv":"Ed25519","use":"enc","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty":"OKP","crv":"X25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty":"RSA","alg":"RSA-OAEP","n":"AQAB","e":"AQAB"},
            {"kty":"OKP","crv":"Ed25519","kid":"ok","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
        let set = KeySet::from_jwks(doc).unwrap();
        assert_eq!(set.len(), 1);
        let none = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","use":"enc","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
        assert_eq!(KeySet::from_jwks(none).unwrap_err(), KeyError::NoUsableKeys);
    }

    #[test]
    fn short_or_private_keys_are_refused() {
        let short = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AAAA"}]}"#;
        assert!(KeySet::from_jwks(short).is_err());
        let private = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","d":"AAAA"}]}"#;
        assert!(KeySet::from_jwks(private).is_err());
        let weak_rsa = r#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#;
        assert!(matches!(
            KeySet::from_jwks(weak_rsa),
            Err(KeyError::WeakRsaKey { .. })
        ));
    }

    #[test]
    fn symmetric_jwks_keys_are_only_read_from_local_documents() {
        let doc = r#"{"keys":[{"kty":"oct","alg":"HS256","kid":"h","k":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY"}]}"#;
        assert_eq!(KeySet::from_jwks(doc).unwrap().len(), 1);
        assert_eq!(
            parse_jwks(doc.as_bytes(), false, Algorithm::RS256, false).unwrap_err(),
            KeyError::NoUsableKeys
        );
    }

    #[test]
    fn duplicate_kids_and_duplicate_members_are_refused() {
        let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
        let dup = format!(
            r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","kid":"a","x":"{x}"}},{{"kty":"OKP","crv":"Ed25519","kid":"a","x":"{x}"}}]}}"#
        );
        assert!(matches!(
            KeySet::from_jwks(&dup),
            Err(KeyError::DuplicateKid(_))
        ));
        let member = format!(r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{x}","x":"{x}"}}]}}"#);
        assert!(KeySet::from_jwks(&member).is_err());
    }

    #[test]
    fn https_needs_a_tls_fetcher() {
        assert!(matches!(
            Jwks::new("https://issuer.example/jwks.json"),
            Err(KeyError::BadUrl(_))
        ));
        assert!(Jwks::new("ftp://x/y").is_err());
        assert!(Jwks::new("http://user:pw@x/y").is_err());
        assert!(Jwks::new("http://127.0.0.1:1/jwks.json").is_ok());
    }
}

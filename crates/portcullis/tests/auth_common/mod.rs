//! Keys generated per test run (nothing private is checked in), token building and a JWKS
//! server that rotates, for the auth tests.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::EncodingKey;
use portcullis::auth::Secret;
use portcullis::auth::jwks::VerificationKey;
use portcullis::auth::jwt::Algorithm;
use serde_json::{Value, json};

pub const ISS: &str = "https://auth.portcullis.test";
pub const AUD: &str = "notes-api";

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A signing key and what a verifier needs to check it.
#[derive(Clone)]
pub struct TestKey {
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    /// PEM public key (asymmetric) — `None` for HMAC.
    pub public_pem: Option<String>,
    /// The public JWK members (without `kid`/`alg`).
    pub jwk: Value,
    /// The HMAC secret.
    pub secret: Option<Secret>,
}

impl TestKey {
    /// The verifier side of this key, bound to its algorithm.
    pub fn verification(&self) -> VerificationKey {
        match (&self.secret, &self.public_pem) {
            (Some(s), _) => VerificationKey::hmac(self.alg, s).unwrap(),
            (None, Some(pem)) => VerificationKey::from_pem(self.alg, pem).unwrap(),
            _ => unreachable!(),
        }
    }

    /// The JWK with `kid` and `alg`.
    pub fn jwk_with(&self, kid: &str) -> Value {
        let mut j = self.jwk.clone();
        j["kid"] = json!(kid);
        j["alg"] = json!(self.alg.name());
        j["use"] = json!("sig");
        j
    }

    /// Signs `header.claims` (both serialized as given) with this key.
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        sign_raw(
            &self.encoding,
            self.alg,
            &header.to_string(),
            &claims.to_string(),
        )
    }

    /// A token with the standard header (`alg`, `typ`, optional `kid`) and `claims`.
    pub fn token(&self, kid: Option<&str>, claims: &Value) -> String {
        let mut h = json!({"alg": self.alg.name(), "typ": "JWT"});
        if let Some(k) = kid {
            h["kid"] = json!(k);
        }
        self.sign(&h, claims)
    }
}

/// Signs raw header and claims JSON text.
pub fn sign_raw(key: &EncodingKey, alg: Algorithm, header: &str, claims: &str) -> String {
    let input = format!("{}.{}", B64.encode(header), B64.encode(claims));
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), key, to_jwt(alg)).unwrap();
    format!("{input}.{sig}")
}

pub fn to_jwt(alg: Algorithm) -> jsonwebtoken::Algorithm {
    jsonwebtoken::Algorithm::from_str_name(alg.name())
}

trait FromName {
    fn from_str_name(n: &str) -> Self;
}

impl FromName for jsonwebtoken::Algorithm {
    fn from_str_name(n: &str) -> Self {
        n.parse().unwrap()
    }
}

/// Standard valid claims for `sub` with `roles`.
pub fn claims(sub: &str, roles: &[&str]) -> Value {
    let now = now();
    json!({
        "sub": sub,
        "roles": roles,
        "iss": ISS,
        "aud": AUD,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
    })
}

pub fn hmac_key(alg: Algorithm) -> TestKey {
    let len = match alg {
        Algorithm::HS256 => 32,
        Algorithm::HS384 => 48,
        _ => 64,
    };
    let mut raw = vec![0u8; len];
    getrandom::fill(&mut raw).unwrap();
    TestKey {
        alg,
        encoding: EncodingKey::from_secret(&raw),
        public_pem: None,
        jwk: json!({"kty": "oct", "k": B64.encode(&raw)}),
        secret: Some(Secret::new(raw)),
    }
}

/// RSA key generation is slow in debug builds: two keys per test binary, shared.
fn rsa_private(slot: usize) -> &'static rsa::RsaPrivateKey {
    static KEYS: [OnceLock<rsa::RsaPrivateKey>; 2] = [OnceLock::new(), OnceLock::new()];
    KEYS[slot].get_or_init(|| rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap())
}

pub fn rsa_key(alg: Algorithm) -> TestKey {
    rsa_key_in(alg, 0)
}

/// A second, different RSA key.
pub fn other_rsa_key(alg: Algorithm) -> TestKey {
    rsa_key_in(alg, 1)
}

fn rsa_key_in(alg: Algorithm, slot: usize) -> TestKey {
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::pkcs8::{EncodePublicKey, LineEnding};
    use rsa::traits::PublicKeyParts;
    let private = rsa_private(slot);
    let public = private.to_public_key();
    TestKey {
        alg,
        encoding: EncodingKey::from_rsa_der(private.to_pkcs1_der().unwrap().as_bytes()),
        public_pem: Some(public.to_public_key_pem(LineEnding::LF).unwrap()),
        jwk: json!({
            "kty": "RSA",
            "n": B64.encode(public.n().to_bytes_be()),
            "e": B64.encode(public.e().to_bytes_be()),
        }),
        secret: None,
    }
}

pub fn es256_key() -> TestKey {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let public = secret.public_key();
    let point = public.to_encoded_point(false);
    TestKey {
        alg: Algorithm::ES256,
        encoding: EncodingKey::from_ec_der(secret.to_pkcs8_der().unwrap().as_bytes()),
        public_pem: Some(public.to_public_key_pem(LineEnding::LF).unwrap()),
        jwk: json!({
            "kty": "EC", "crv": "P-256",
            "x": B64.encode(point.x().unwrap()),
            "y": B64.encode(point.y().unwrap()),
        }),
        secret: None,
    }
}

pub fn es384_key() -> TestKey {
    use p384::elliptic_curve::sec1::ToEncodedPoint;
    use p384::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let secret = p384::SecretKey::random(&mut rand::rngs::OsRng);
    let public = secret.public_key();
    let point = public.to_encoded_point(false);
    TestKey {
        alg: Algorithm::ES384,
        encoding: EncodingKey::from_ec_der(secret.to_pkcs8_der().unwrap().as_bytes()),
        public_pem: Some(public.to_public_key_pem(LineEnding::LF).unwrap()),
        jwk: json!({
            "kty": "EC", "crv": "P-384",
            "x": B64.encode(point.x().unwrap()),
            "y": B64.encode(point.y().unwrap()),
        }),
        secret: None,
    }
}

pub fn ed25519_key() -> TestKey {
    use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey, spki::der::pem::LineEnding};
    let signing = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let public = signing.verifying_key();
    TestKey {
        alg: Algorithm::EdDSA,
        encoding: EncodingKey::from_ed_der(signing.to_pkcs8_der().unwrap().as_bytes()),
        public_pem: Some(public.to_public_key_pem(LineEnding::LF).unwrap()),
        jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": B64.encode(public.to_bytes())}),
        secret: None,
    }
}

/// A key for every supported algorithm.
pub fn every_key() -> Vec<TestKey> {
    use Algorithm::*;
    let mut keys: Vec<TestKey> = [HS256, HS384, HS512].into_iter().map(hmac_key).collect();
    keys.extend(
        [RS256, RS384, RS512, PS256, PS384, PS512]
            .into_iter()
            .map(rsa_key),
    );
    keys.push(es256_key());
    keys.push(es384_key());
    keys.push(ed25519_key());
    keys
}

/// What the JWKS test server answers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Ok,
    ServerError,
    Garbage,
}

/// A JWKS endpoint whose document, `Cache-Control` and health the test controls.
#[derive(Clone)]
pub struct JwksServer {
    pub doc: Arc<Mutex<Value>>,
    pub cache_control: Arc<Mutex<Option<String>>>,
    pub mode: Arc<Mutex<Mode>>,
    pub hits: Arc<AtomicUsize>,
}

impl JwksServer {
    pub fn new(keys: &[(&TestKey, &str)]) -> Self {
        let s = JwksServer {
            doc: Arc::new(Mutex::new(Value::Null)),
            cache_control: Arc::new(Mutex::new(None)),
            mode: Arc::new(Mutex::new(Mode::Ok)),
            hits: Arc::new(AtomicUsize::new(0)),
        };
        s.publish(keys);
        s
    }

    /// Replaces the published keys.
    pub fn publish(&self, keys: &[(&TestKey, &str)]) {
        let list: Vec<Value> = keys.iter().map(|(k, kid)| k.jwk_with(kid)).collect();
        *self.doc.lock().unwrap() = json!({ "keys": list });
    }

    pub fn set_cache_control(&self, v: Option<&str>) {
        *self.cache_control.lock().unwrap() = v.map(str::to_string);
    }

    pub fn set_mode(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Serves `/jwks.json` on a loopback port; returns the URL and the server task.
    pub async fn start(&self) -> (String, tokio::task::JoinHandle<()>) {
        async fn jwks(State(s): State<JwksServer>) -> axum::response::Response {
            s.hits.fetch_add(1, Ordering::SeqCst);
            let mode = *s.mode.lock().unwrap();
            match mode {
                Mode::ServerError => {
                    (http::StatusCode::INTERNAL_SERVER_ERROR, "down").into_response()
                }
                Mode::Garbage => (http::StatusCode::OK, "<html>not json</html>").into_response(),
                Mode::Ok => {
                    let body = s.doc.lock().unwrap().to_string();
                    let mut res =
                        ([(http::header::CONTENT_TYPE, "application/json")], body).into_response();
                    if let Some(cc) = s.cache_control.lock().unwrap().clone() {
                        res.headers_mut()
                            .insert(http::header::CACHE_CONTROL, cc.parse().unwrap());
                    }
                    res
                }
            }
        }
        let app = Router::new()
            .route("/jwks.json", get(jwks))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        (format!("http://{addr}/jwks.json"), task)
    }
}

/// A server that counts every request it gets (for `jku`/`x5u` that must never be followed).
pub async fn counting_server() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = Router::new().fallback(move || {
        let h = h.clone();
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            "{}"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, hits)
}

/// The principal as the handler saw it.
pub async fn whoami(p: portcullis::Principal) -> axum::Json<Value> {
    axum::Json(json!({
        "id": p.id,
        "roles": p.roles,
        "method": format!("{:?}", p.method),
        "expires": p.expires_at.map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs()),
    }))
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

pub fn b64(s: &str) -> String {
    B64.encode(s)
}

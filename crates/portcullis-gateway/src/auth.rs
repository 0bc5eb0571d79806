//! `[auth]` onto the library's authenticators, and the `token` / `apikey new` commands.
//!
//! With no `issuer` or `audience` in `[auth.jwt]`, both default to `portcullis`, which is what
//! `portcullis token` mints: development tokens then work with no further setting.

use std::sync::Arc;
use std::time::Duration;

use portcullis::auth::api_key::{ApiKey, ApiKeyAuthenticator};
use portcullis::auth::jwks::{Jwks, JwksOptions, KeySet, VerificationKey};
use portcullis::auth::jwt::{Algorithm, JwtAuthenticator};
use portcullis::auth::{AnyOf, Authenticator, Secret};

use crate::config::values::check_label;
use crate::config::{ApiKeyConfig, AuthConfig, ConfigError, JwtConfig};
use crate::jwks_https::HttpsFetcher;

/// The issuer and audience used when the config names none.
///
/// ```
/// use portcullis_gateway::auth::DEFAULT_ISSUER;
/// assert_eq!(DEFAULT_ISSUER, "portcullis");
/// ```
pub const DEFAULT_ISSUER: &str = "portcullis";

fn err(key: &str, reason: impl std::fmt::Display) -> ConfigError {
    ConfigError {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

fn algorithm(cfg_alg: crate::config::JwtAlgorithm) -> Result<Algorithm, ConfigError> {
    Algorithm::from_name(cfg_alg.name()).ok_or_else(|| {
        err(
            "auth.jwt.algorithms",
            format!("{} is not supported", cfg_alg.name()),
        )
    })
}

/// The JWT authenticator of `[auth.jwt]`.
///
/// ```
/// # use std::time::Duration;
/// use portcullis::auth::{AuthOutcome, Authenticator};
/// use portcullis_gateway::{auth, config::GatewayConfig};
/// # unsafe { std::env::set_var("DOC_JWT_AUTH_SECRET", "test-only-jwt-secret-of-32-bytes-or-more") };
/// let config = GatewayConfig::from_str(r#"
/// server.upstream = "http://127.0.0.1:3000"
/// auth.jwt.secret_env = "DOC_JWT_AUTH_SECRET"
/// "#, "portcullis.toml")?;
/// let authenticator = auth::jwt_authenticator(config.auth.jwt.as_ref().unwrap(), &config.auth.cookie)?;
/// # let token = auth::mint(config.auth.jwt.as_ref().unwrap(), "alice", &[], Duration::from_secs(60))?;
/// // A browser sends the token in the `[auth] cookie` (default `authToken`):
/// let (parts, ()) = http::Request::get("/").header("cookie", format!("authToken={token}")).body(())?.into_parts();
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let outcome = authenticator.authenticate(&parts).await;
/// assert!(matches!(outcome, AuthOutcome::Authenticated(p) if p.id == "alice"));
/// # });
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn jwt_authenticator(jwt: &JwtConfig, cookie: &str) -> Result<JwtAuthenticator, ConfigError> {
    let mut b = JwtAuthenticator::builder()
        .issuer(
            jwt.issuer
                .clone()
                .unwrap_or_else(|| DEFAULT_ISSUER.to_string()),
        )
        .leeway(jwt.leeway)
        .roles_claim(jwt.roles_claim.clone())
        .cookie(cookie.to_string());
    if jwt.audience.is_empty() {
        b = b.audience(DEFAULT_ISSUER);
    }
    for aud in &jwt.audience {
        b = b.audience(aud.clone());
    }
    if let Some(typ) = &jwt.typ {
        b = b.require_typ(typ.clone());
    }
    let algs: Vec<Algorithm> = jwt
        .algorithms
        .iter()
        .map(|a| algorithm(*a))
        .collect::<Result<_, _>>()?;
    b = b.algorithms(algs.iter().copied());
    for alg in &algs {
        if alg.is_hmac() {
            if let Some(secret) = &jwt.secret {
                let s = Secret::new(secret.expose().to_vec());
                b = b.key(
                    VerificationKey::hmac(*alg, &s).map_err(|e| err("auth.jwt.secret_env", e))?,
                );
            }
        } else if let Some(pem) = &jwt.public_key_pem {
            // A PEM key serves the asymmetric algorithms of its kind; skip the others.
            if let Ok(k) = VerificationKey::from_pem(*alg, pem) {
                b = b.key(k);
            }
        }
    }
    if let Some(path) = &jwt.jwks_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err("auth.jwt.jwks_file", format!("{}: {e}", path.display())))?;
        let set = KeySet::from_jwks(&text).map_err(|e| err("auth.jwt.jwks_file", e))?;
        b = b.key_set(set);
    }
    if let Some(url) = &jwt.jwks_url {
        let text = url.to_string();
        let jwks = if url.scheme_str() == Some("https") {
            let options = JwksOptions::default();
            let fetcher =
                HttpsFetcher::new(jwt.jwks_ca_file.as_deref(), Duration::from_secs(5), 1 << 20)
                    .map_err(|e| err("auth.jwt.jwks_ca_file", e))?;
            Jwks::with_fetcher(&text, options, Arc::new(fetcher))
        } else {
            Jwks::new(&text)
        }
        .map_err(|e| err("auth.jwt.jwks_url", e))?;
        b = b.jwks(jwks);
    }
    b.build().map_err(|e| err("auth.jwt", e))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The API-key authenticator of `[[auth.api_keys]]`.
///
/// ```
/// use portcullis::auth::{AuthOutcome, Authenticator, api_key::hash_key};
/// use portcullis_gateway::{auth::api_key_authenticator, config::GatewayConfig};
/// let toml = format!(r#"
/// server.upstream = "http://127.0.0.1:3000"
/// auth.api_keys = [{{ id = "ci", hash = "{}", roles = ["deploy"] }}]
/// "#, hash_key("pk_test_only")); // the hash line `portcullis apikey new` prints
/// let keys = api_key_authenticator(&GatewayConfig::from_str(&toml, "portcullis.toml")?.auth.api_keys)?;
/// let (parts, ()) = http::Request::get("/").header("x-api-key", "pk_test_only").body(())?.into_parts();
/// assert!(matches!(keys.authenticate_now(&parts), Some(AuthOutcome::Authenticated(p)) if p.id == "ci"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn api_key_authenticator(keys: &[ApiKeyConfig]) -> Result<ApiKeyAuthenticator, ConfigError> {
    let mut out = Vec::with_capacity(keys.len());
    for (i, k) in keys.iter().enumerate() {
        let mut key = ApiKey::new(
            k.id.clone(),
            &format!("sha256:{}", hex(&k.hash.0)),
            k.roles.iter(),
        )
        .map_err(|e| err(&format!("auth.api_keys[{i}]"), e))?;
        if let Some(t) = k.expires {
            key = key.expires_at(t);
        }
        out.push(key);
    }
    ApiKeyAuthenticator::new(out).map_err(|e| err("auth.api_keys", e))
}

/// Every configured authenticator, JWT first, then API keys; `None` when there is none.
///
/// ```
/// use portcullis_gateway::{auth::authenticator, config::GatewayConfig};
/// let mut auth = GatewayConfig::from_str(r#"
/// server.upstream = "http://127.0.0.1:3000"
/// auth.api_keys = [{ id = "ci", hash = "sha256:0000000000000000000000000000000000000000000000000000000000000000" }]
/// "#, "portcullis.toml")?.auth;
/// assert!(authenticator(&auth)?.is_some());
/// auth.api_keys.clear();
/// assert!(authenticator(&auth)?.is_none()); // nothing configured: the layer gets none
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn authenticator(auth: &AuthConfig) -> Result<Option<Arc<dyn Authenticator>>, ConfigError> {
    let mut chain = AnyOf::new();
    let mut any = false;
    if let Some(jwt) = &auth.jwt {
        chain = chain.or(jwt_authenticator(jwt, &auth.cookie)?);
        any = true;
    }
    if !auth.api_keys.is_empty() {
        chain = chain.or(api_key_authenticator(&auth.api_keys)?);
        any = true;
    }
    Ok(any.then(|| Arc::new(chain) as Arc<dyn Authenticator>))
}

/// `portcullis token`: a development token signed with `[auth.jwt] secret_env`, with the first
/// HMAC algorithm of `[auth.jwt] algorithms` (HS256 by default).
///
/// ```
/// # use std::time::Duration;
/// use base64::Engine;
/// use portcullis_gateway::{auth, config::{GatewayConfig, Purpose}};
/// # unsafe { std::env::set_var("DOC_MINT_SECRET", "test-only-jwt-secret-of-32-bytes-or-more") };
/// let toml = r#"auth.jwt.secret_env = "DOC_MINT_SECRET""#;
/// let jwt = GatewayConfig::from_str_for(toml, "portcullis.toml", Purpose::Tool)?.auth.jwt.unwrap();
/// let token = auth::mint(&jwt, "alice", &["admin".to_string()], Duration::from_secs(3600))?;
/// let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token.split('.').nth(1).unwrap())?;
/// let claims: serde_json::Value = serde_json::from_slice(&payload)?;
/// assert_eq!((claims["sub"].as_str(), claims["iss"].as_str()), (Some("alice"), Some("portcullis")));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn mint(jwt: &JwtConfig, sub: &str, roles: &[String], ttl: Duration) -> Result<String, String> {
    let secret = jwt
        .secret
        .as_ref()
        .ok_or("auth.jwt.secret_env: no HMAC secret configured; `token` mints HMAC tokens only")?;
    // The first HMAC algorithm the verifier allows (HS256 when the list names none).
    let algorithm = match jwt.algorithms.iter().find(|a| a.is_hmac()) {
        Some(a) => algorithm(*a).map_err(|e| e.to_string())?,
        None if jwt.algorithms.is_empty() => Algorithm::HS256,
        None => {
            return Err(
                "auth.jwt.algorithms: names no HMAC algorithm (HS256, HS384, HS512); `token` mints HMAC tokens only"
                    .into(),
            );
        }
    };
    let secret = Secret::new(secret.expose().to_vec());
    let iss = jwt
        .issuer
        .clone()
        .unwrap_or_else(|| DEFAULT_ISSUER.to_string());
    let aud = jwt
        .audience
        .first()
        .cloned()
        .unwrap_or_else(|| DEFAULT_ISSUER.to_string());
    use portcullis::auth::jwt as verifier;
    let mut claims = verifier::dev_claims(sub, ttl, &iss, &aud)
        .map_err(|_| format!("--sub {sub:?}: must be non-empty, with no control character"))?;
    verifier::check_roles(roles)
        .map_err(|_| "--role: each role must be non-empty, with no comma or control character")?;
    put_claim(&mut claims, &jwt.roles_claim, roles.into());
    verifier::sign_hmac(algorithm, &secret, &claims)
        .map_err(|e| format!("auth.jwt.secret_env: {e}"))
}

/// Puts `value` where the verifier reads `[auth.jwt] roles_claim`: nested for a dotted path
/// of plain names (`realm_access.roles`, as Keycloak writes it), under the whole name for a
/// URL-like one (`https://example.com/roles`, as Auth0 namespaces it).
fn put_claim(
    claims: &mut serde_json::Map<String, serde_json::Value>,
    path: &str,
    value: serde_json::Value,
) {
    let url_like = path.contains(['/', ':']);
    let mut segments: Vec<&str> = path.split('.').collect();
    if url_like || segments.iter().any(|s| s.is_empty()) || segments.len() == 1 {
        claims.insert(path.to_string(), value);
        return;
    }
    let last = segments.pop().unwrap_or(path);
    let mut map = claims;
    for seg in segments {
        let entry = map
            .entry(seg.to_string())
            .or_insert_with(|| serde_json::Value::Object(Default::default()));
        if !entry.is_object() {
            *entry = serde_json::Value::Object(Default::default());
        }
        let Some(inner) = entry.as_object_mut() else {
            return;
        };
        map = inner;
    }
    map.insert(last.to_string(), value);
}

/// `portcullis apikey new`: a fresh key (shown once) and the config entry to paste, or why the
/// id or a role would make an entry `check-config` refuses (the same `check_label` rule:
/// letters, digits and `_ . : @ -`, so no empty role, comma or control character).
///
/// ```
/// use portcullis_gateway::{auth::new_api_key, config::GatewayConfig};
/// let (key, entry) = new_api_key("ci", &["deploy".to_string()]).unwrap();
/// assert!(key.starts_with("pk_")); // shown once; only its hash goes in the file
/// assert!(entry.starts_with("[[auth.api_keys]]\nid = \"ci\"\nhash = \"sha256:"));
/// let toml = format!("server.upstream = \"http://127.0.0.1:3000\"\n{entry}");
/// let config = GatewayConfig::from_str(&toml, "portcullis.toml")?;
/// assert_eq!(config.auth.api_keys[0].roles, ["deploy"]);
/// // A role the config would refuse is refused here, before a key is made.
/// assert!(new_api_key("ci", &["a,b".to_string()]).unwrap_err().starts_with("--role"));
/// # Ok::<(), portcullis_gateway::config::ConfigErrors>(())
/// ```
pub fn new_api_key(id: &str, roles: &[String]) -> Result<(String, String), String> {
    check_label(id).map_err(|reason| format!("--id: {reason}"))?;
    for role in roles {
        check_label(role).map_err(|reason| format!("--role: {reason}"))?;
    }
    let k = portcullis::auth::api_key::generate();
    let roles = roles
        .iter()
        .map(|r| format!("{r:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let entry = format!(
        "[[auth.api_keys]]\nid = {id:?}\nhash = {:?}\nroles = [{roles}]\n",
        k.hash_line()
    );
    Ok((k.key().to_string(), entry))
}

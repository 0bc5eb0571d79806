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

use crate::config::{ApiKeyConfig, AuthConfig, ConfigError, JwtConfig};
use crate::jwks_https::HttpsFetcher;

/// The issuer and audience used when the config names none.
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

/// `portcullis token`: a development HS256 token signed with `[auth.jwt] secret_env`.
pub fn mint(jwt: &JwtConfig, sub: &str, roles: &[String], ttl: Duration) -> Result<String, String> {
    let secret = jwt
        .secret
        .as_ref()
        .ok_or("auth.jwt.secret_env: no HMAC secret configured; `token` mints HS256 only")?;
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
    portcullis::auth::jwt::mint_hs256(&secret, sub, roles, ttl, &iss, &aud)
        .map_err(|e| e.to_string())
}

/// `portcullis apikey new`: a fresh key (shown once) and the config entry to paste.
pub fn new_api_key(id: &str, roles: &[String]) -> (String, String) {
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
    (k.key().to_string(), entry)
}

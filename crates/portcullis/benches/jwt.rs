//! Verification cost per token, keys cached (parsed once at start-up), for HS256, RS256,
//! ES256 and EdDSA: the full check — size, form, strict header and claims JSON, key choice,
//! signature, registered claims, roles.
//!
//! `cargo bench -p portcullis --bench jwt -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use jsonwebtoken::EncodingKey;
use portcullis::auth::Secret;
use portcullis::auth::jwks::VerificationKey;
use portcullis::auth::jwt::{Algorithm, JwtAuthenticator};

const ISS: &str = "https://auth.portcullis.test";
const AUD: &str = "notes-api";

fn token(alg: Algorithm, key: &EncodingKey) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = format!(r#"{{"alg":"{}","typ":"JWT","kid":"k1"}}"#, alg.name());
    let claims = serde_json::json!({
        "sub": "alice", "roles": ["user", "admin"], "iss": ISS, "aud": AUD,
        "iat": now, "nbf": now, "exp": now + 3600,
    });
    let input = format!("{}.{}", B64.encode(header), B64.encode(claims.to_string()));
    let alg_j: jsonwebtoken::Algorithm = alg.name().parse().unwrap();
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg_j).unwrap();
    format!("{input}.{sig}")
}

type Case = (
    Algorithm,
    JwtAuthenticator,
    String,
    jsonwebtoken::DecodingKey,
);

fn setup() -> Vec<Case> {
    use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey, spki::der::pem::LineEnding};
    use rsa::pkcs1::EncodeRsaPrivateKey;
    let mut rng = rand::rngs::OsRng;
    let mut out = Vec::new();

    let secret = Secret::new([42u8; 32]);
    let hs = VerificationKey::hmac(Algorithm::HS256, &secret).unwrap();
    out.push((
        Algorithm::HS256,
        hs,
        EncodingKey::from_secret(secret.expose()),
        jsonwebtoken::DecodingKey::from_secret(secret.expose()),
    ));

    let rsa = rsa::RsaPrivateKey::new(&mut rng, 2048).unwrap();
    let pem = rsa::pkcs8::EncodePublicKey::to_public_key_pem(
        &rsa.to_public_key(),
        rsa::pkcs8::LineEnding::LF,
    )
    .unwrap();
    out.push((
        Algorithm::RS256,
        VerificationKey::from_pem(Algorithm::RS256, &pem).unwrap(),
        EncodingKey::from_rsa_der(rsa.to_pkcs1_der().unwrap().as_bytes()),
        {
            use rsa::traits::PublicKeyParts;
            jsonwebtoken::DecodingKey::from_rsa_raw_components(
                &rsa.n().to_bytes_be(),
                &rsa.e().to_bytes_be(),
            )
        },
    ));

    let ec = p256::SecretKey::random(&mut rng);
    let pem = p256::pkcs8::EncodePublicKey::to_public_key_pem(
        &ec.public_key(),
        p256::pkcs8::LineEnding::LF,
    )
    .unwrap();
    out.push((
        Algorithm::ES256,
        VerificationKey::from_pem(Algorithm::ES256, &pem).unwrap(),
        EncodingKey::from_ec_der(ec.to_pkcs8_der().unwrap().as_bytes()),
        {
            use p256::elliptic_curve::sec1::ToEncodedPoint;
            jsonwebtoken::DecodingKey::from_ec_der(
                ec.public_key().to_encoded_point(false).as_bytes(),
            )
        },
    ));

    let ed = ed25519_dalek::SigningKey::generate(&mut rng);
    let pem = ed
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    out.push((
        Algorithm::EdDSA,
        VerificationKey::from_pem(Algorithm::EdDSA, &pem).unwrap(),
        EncodingKey::from_ed_der(ed.to_pkcs8_der().unwrap().as_bytes()),
        jsonwebtoken::DecodingKey::from_ed_der(ed.verifying_key().as_bytes()),
    ));

    out.into_iter()
        .map(|(alg, vk, ek, dk)| {
            let jwt = JwtAuthenticator::builder()
                .issuer(ISS)
                .audience(AUD)
                .key(vk.with_kid("k1"))
                .build()
                .unwrap();
            (alg, jwt, token(alg, &ek), dk)
        })
        .collect()
}

fn verify(c: &mut Criterion) {
    let cases = setup();
    let mut group = c.benchmark_group("jwt_verify");
    for (alg, jwt, token, _) in &cases {
        // Static keys never wait, so the future is ready on first poll.
        let p = jwt.verify(token).now_or_never().unwrap().unwrap();
        assert_eq!(p.id, "alice");
        group.bench_function(alg.name(), |b| {
            b.iter(|| {
                jwt.verify(black_box(token))
                    .now_or_never()
                    .expect("ready")
                    .expect("valid")
            })
        });
    }
    group.finish();

    // The signature check alone, for comparison: what the crypto backend costs.
    let mut group = c.benchmark_group("signature_only");
    for (alg, _, token, key) in &cases {
        let (input, sig) = token.rsplit_once('.').unwrap();
        let alg_j: jsonwebtoken::Algorithm = alg.name().parse().unwrap();
        group.bench_function(alg.name(), |b| {
            b.iter(|| {
                assert!(
                    jsonwebtoken::crypto::verify(sig, black_box(input.as_bytes()), key, alg_j)
                        .unwrap()
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, verify);
criterion_main!(benches);

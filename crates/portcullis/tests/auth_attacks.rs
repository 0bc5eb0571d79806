//! Forged tokens: each is refused with 401, exactly `WWW-Authenticate: Bearer
//! error="invalid_token"` and the JSON code `unauthorized`, for the reason we expect.

mod auth_common;
mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use auth_common::*;
use axum::Router;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use common::*;
use jsonwebtoken::EncodingKey;
use portcullis::auth::jwt::{Algorithm, JwtAuthenticator, JwtError};
use portcullis::{Preset, SecurityLayer};
use serde_json::{Value, json};

struct Keys {
    rs: TestKey,
    es: TestKey,
    hs: TestKey,
}

fn keys() -> Keys {
    Keys {
        rs: rsa_key(Algorithm::RS256),
        es: es256_key(),
        hs: hmac_key(Algorithm::HS256),
    }
}

fn authenticator(k: &Keys) -> JwtAuthenticator {
    JwtAuthenticator::builder()
        .issuer(ISS)
        .audience(AUD)
        .key(k.rs.verification().with_kid("rs1"))
        .key(k.es.verification().with_kid("es1"))
        .key(k.hs.verification().with_kid("hs1"))
        .build()
        .unwrap()
}

fn seg(v: &Value) -> String {
    B64.encode(v.to_string())
}

/// A valid RS256 token's parts, to cut and tamper with.
fn parts(t: &str) -> (String, String, String) {
    let mut it = t.split('.').map(str::to_string);
    (it.next().unwrap(), it.next().unwrap(), it.next().unwrap())
}

/// `(name, token, expected reason — None where several are legitimate)`.
fn forged(k: &Keys, jku_target: &str) -> Vec<(&'static str, String, Option<JwtError>)> {
    use JwtError::*;
    let good = claims("mallory", &["admin"]);
    let valid_rs = k.rs.token(Some("rs1"), &good);
    let (h, p, s) = parts(&valid_rs);
    let attacker = other_rsa_key(Algorithm::RS256);
    let attacker_hs = |secret: &[u8], header: Value| {
        sign_raw(
            &EncodingKey::from_secret(secret),
            Algorithm::HS256,
            &header.to_string(),
            &good.to_string(),
        )
    };
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        k.rs.token(Some("rs1"), &c)
    };
    let mut out: Vec<(&'static str, String, Option<JwtError>)> = Vec::new();

    for (name, none) in [
        ("alg none", "none"),
        ("alg None", "None"),
        ("alg NONE", "NONE"),
        ("alg nOnE", "nOnE"),
    ] {
        let header = seg(&json!({"alg": none, "typ": "JWT"}));
        out.push((name, format!("{header}.{p}."), Some(Malformed)));
        out.push((name, format!("{header}.{p}.{s}"), Some(AlgNone)));
    }
    let pem = k.rs.public_pem.clone().unwrap();
    out.push((
        "HS256 signed with the RS256 public key PEM, kid of the RSA key",
        attacker_hs(pem.as_bytes(), json!({"alg": "HS256", "kid": "rs1"})),
        Some(AlgNotAllowed),
    ));
    out.push((
        "HS256 signed with the RS256 public key PEM, no kid",
        attacker_hs(pem.as_bytes(), json!({"alg": "HS256"})),
        Some(BadSignature),
    ));
    out.push((
        "RS256 token with the kid of the ES256 key",
        attacker.token(Some("es1"), &good),
        Some(AlgNotAllowed),
    ));
    out.push((
        "embedded jwk with the attacker's key",
        attacker.sign(
            &json!({"alg": "RS256", "kid": "rs1", "jwk": attacker.jwk_with("rs1")}),
            &good,
        ),
        Some(ForbiddenHeader),
    ));
    out.push((
        "jku pointing to a local server",
        attacker.sign(
            &json!({"alg": "RS256", "kid": "evil", "jku": jku_target}),
            &good,
        ),
        Some(ForbiddenHeader),
    ));
    out.push((
        "x5u pointing to a local server",
        attacker.sign(&json!({"alg": "RS256", "x5u": jku_target}), &good),
        Some(ForbiddenHeader),
    ));
    out.push((
        "x5c with the attacker's certificate",
        attacker.sign(
            &json!({"alg": "RS256", "x5c": [STANDARD.encode("cert")]}),
            &good,
        ),
        Some(ForbiddenHeader),
    ));
    out.push((
        "kid path traversal with an empty HMAC key",
        attacker_hs(b"", json!({"alg": "HS256", "kid": "../../../../dev/null"})),
        Some(UnknownKid),
    ));
    out.push((
        "kid path traversal to /etc/passwd",
        attacker_hs(
            b"root:x:0:0",
            json!({"alg": "HS256", "kid": "../../etc/passwd"}),
        ),
        Some(UnknownKid),
    ));
    out.push((
        "kid SQL injection",
        attacker_hs(b"x", json!({"alg": "HS256", "kid": "' OR 1=1 --"})),
        Some(UnknownKid),
    ));
    let es_header = seg(&json!({"alg": "ES256", "kid": "es1"}));
    out.push((
        "ECDSA r = s = 0 (CVE-2022-21449)",
        format!("{es_header}.{p}.{}", B64.encode([0u8; 64])),
        Some(BadSignature),
    ));
    out.push(("empty signature", format!("{h}.{p}."), Some(Malformed)));
    out.push((
        "expired beyond the leeway",
        with(&|c| c["exp"] = json!(now() - 120)),
        Some(Expired),
    ));
    out.push((
        "nbf in the future",
        with(&|c| c["nbf"] = json!(now() + 300)),
        Some(NotYetValid),
    ));
    out.push((
        "iat in the future",
        with(&|c| c["iat"] = json!(now() + 300)),
        Some(IssuedInFuture),
    ));
    out.push((
        "wrong iss",
        with(&|c| c["iss"] = json!("https://evil.example")),
        Some(WrongIssuer),
    ));
    out.push((
        "iss differing only in a trailing slash",
        with(&|c| c["iss"] = json!(format!("{ISS}/"))),
        Some(WrongIssuer),
    ));
    out.push((
        "missing aud",
        with(&|c| {
            c.as_object_mut().unwrap().remove("aud");
        }),
        Some(MissingAudience),
    ));
    out.push((
        "wrong aud",
        with(&|c| c["aud"] = json!(["other-api", "billing"])),
        Some(WrongAudience),
    ));
    out.push((
        "aud of the wrong type",
        with(&|c| c["aud"] = json!({"aud": AUD})),
        Some(BadClaimType),
    ));
    out.push((
        "exp as a string (CVE-2026-25537)",
        with(&|c| c["exp"] = json!("9999999999")),
        Some(BadClaimType),
    ));
    out.push((
        "nbf as a string",
        with(&|c| c["nbf"] = json!("0")),
        Some(BadClaimType),
    ));
    out.push((
        "missing exp",
        with(&|c| {
            c.as_object_mut().unwrap().remove("exp");
        }),
        Some(MissingExp),
    ));
    out.push((
        "sub as a number",
        with(&|c| c["sub"] = json!(1)),
        Some(BadClaimType),
    ));
    out.push((
        "missing sub",
        with(&|c| {
            c.as_object_mut().unwrap().remove("sub");
        }),
        Some(MissingSubject),
    ));
    out.push((
        "JSON-serialized JWS",
        json!({"protected": h, "payload": p, "signature": s}).to_string(),
        Some(Malformed),
    ));
    out.push((
        "JWE compact (5 segments)",
        format!(
            "{}.{}.{}.{}.{}",
            seg(&json!({"alg": "RSA-OAEP", "enc": "A256GCM"})),
            B64.encode([1u8; 256]),
            B64.encode([2u8; 12]),
            B64.encode([3u8; 40]),
            B64.encode([4u8; 16])
        ),
        Some(Jwe),
    ));
    let dup_claims = format!(
        r#"{{"sub":"mallory","sub":"admin","iss":"{ISS}","aud":"{AUD}","exp":{}}}"#,
        now() + 600
    );
    out.push((
        "duplicate claim keys, validly signed",
        sign_raw(
            &k.rs.encoding,
            Algorithm::RS256,
            r#"{"alg":"RS256","kid":"rs1"}"#,
            &dup_claims,
        ),
        Some(DuplicateKey),
    ));
    out.push((
        "duplicate header alg, validly signed",
        sign_raw(
            &k.rs.encoding,
            Algorithm::RS256,
            r#"{"alg":"none","alg":"RS256","kid":"rs1"}"#,
            &good.to_string(),
        ),
        Some(DuplicateKey),
    ));
    out.push((
        "oversize token (> 8 KiB), validly signed",
        with(&|c| c["padding"] = json!("A".repeat(9000))),
        Some(TooLarge),
    ));
    out.push((
        "truncated signature",
        format!("{h}.{p}.{}", &s[..s.len() - 2]),
        None,
    ));
    out.push((
        "truncated payload",
        format!("{h}.{}.{s}", &p[..p.len() - 5]),
        None,
    ));
    out.push(("two segments", format!("{h}.{p}"), Some(Malformed)));
    out.push(("four segments", format!("{h}.{p}.{s}.{s}"), Some(Malformed)));
    out.push((
        "base64 padding",
        format!("{h}.{p}.{s}=="),
        Some(BadEncoding),
    ));
    out.push((
        "standard base64 alphabet (+ and /)",
        format!("{h}.{p}.+/{}", &s[2..]),
        Some(BadEncoding),
    ));
    out.push((
        "whitespace inside",
        format!("{h}.{p} .{s}"),
        Some(BadEncoding),
    ));
    let admin = seg(&claims("mallory", &["admin", "superuser"]));
    out.push((
        "tampered payload with the original signature",
        format!("{h}.{admin}.{s}"),
        Some(BadSignature),
    ));
    out.push((
        "crit header",
        k.rs.sign(
            &json!({"alg": "RS256", "kid": "rs1", "crit": ["exp"], "exp": 1}),
            &good,
        ),
        Some(UnsupportedCrit),
    ));
    out.push((
        "alg of the wrong JSON type",
        format!("{}.{p}.{s}", seg(&json!({"alg": ["RS256"], "kid": "rs1"}))),
        Some(BadHeader),
    ));
    out.push((
        "unknown alg",
        format!("{}.{p}.{s}", seg(&json!({"alg": "HS1", "kid": "rs1"}))),
        Some(AlgNotAllowed),
    ));
    out
}

#[tokio::test]
async fn every_forged_token_is_refused_with_invalid_token() {
    let k = keys();
    let (target, hits) = counting_server().await;
    let jku = format!("http://{target}/jwks.json");
    let jwt = authenticator(&k);
    let table = forged(&k, &jku);
    assert!(table.len() >= 25, "the table holds {} tokens", table.len());

    // The reasons, straight from the verifier.
    for (name, token, want) in &table {
        let got = jwt.verify(token).await;
        match want {
            Some(reason) => assert_eq!(got.as_ref().err(), Some(reason), "{name}"),
            None => assert!(got.is_err(), "{name}"),
        }
    }

    // The responses, over TCP.
    let layer = SecurityLayer::builder()
        .route("/api/user/**", Preset::Authenticated)
        .authenticator(Arc::new(authenticator(&k)))
        // ~50 forged tokens from one address: the brute-force limit is tested on its own.
        .failed_auth(None)
        .build()
        .unwrap();
    let addr = serve_with(Router::new().route("/api/user/me", get(whoami)), layer).await;
    for (name, token, _) in &table {
        let r = send(
            addr,
            "GET",
            "/api/user/me",
            &[("authorization", &bearer(token))],
            "",
        )
        .await;
        assert_eq!(r.status, 401, "{name}: {}", r.text());
        let challenges: Vec<_> = r.headers.get_all("www-authenticate").iter().collect();
        assert_eq!(
            challenges,
            ["Bearer error=\"invalid_token\""],
            "{name}: exactly one challenge, no detail"
        );
        assert_eq!(r.json()["code"], "unauthorized", "{name}");
        assert!(!r.text().contains(token.as_str()), "{name}: token echoed");
    }

    // A valid token still passes: the table is not refusing everything.
    let ok = k.rs.token(Some("rs1"), &claims("alice", &["user"]));
    let r = send(
        addr,
        "GET",
        "/api/user/me",
        &[("authorization", &bearer(&ok))],
        "",
    )
    .await;
    assert_eq!(r.status, 200);

    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "jku/x5u must never be fetched"
    );
}

#[tokio::test]
async fn whitespace_around_the_token_is_refused_by_the_verifier() {
    // HTTP parsers trim a header's outer whitespace before we see it; the verifier itself
    // still refuses any.
    let k = keys();
    let jwt = authenticator(&k);
    let t = k.rs.token(Some("rs1"), &claims("alice", &[]));
    assert!(jwt.verify(&t).await.is_ok());
    for bad in [
        format!("{t} "),
        format!(" {t}"),
        format!("{t}\n"),
        format!("{t}\t"),
    ] {
        assert_eq!(jwt.verify(&bad).await, Err(JwtError::BadEncoding));
    }
}

#[tokio::test]
async fn leeway_accepts_small_clock_skew_only() {
    let k = keys();
    let jwt = authenticator(&k);
    let mut c = claims("alice", &[]);
    c["exp"] = json!(now() - 30);
    assert!(
        jwt.verify(&k.rs.token(Some("rs1"), &c)).await.is_ok(),
        "30 s late is within 60 s leeway"
    );
    c["exp"] = json!(now() - 61);
    assert_eq!(
        jwt.verify(&k.rs.token(Some("rs1"), &c)).await,
        Err(JwtError::Expired)
    );
}

#[tokio::test]
async fn typ_pin_refuses_other_token_types() {
    let k = keys();
    let jwt = JwtAuthenticator::builder()
        .issuer(ISS)
        .audience(AUD)
        .key(k.hs.verification())
        .require_typ("at+jwt")
        .build()
        .unwrap();
    let c = claims("alice", &[]);
    let at = k.hs.sign(&json!({"alg": "HS256", "typ": "at+JWT"}), &c);
    assert!(jwt.verify(&at).await.is_ok());
    let at =
        k.hs.sign(&json!({"alg": "HS256", "typ": "application/at+jwt"}), &c);
    assert!(jwt.verify(&at).await.is_ok());
    let id_token = k.hs.sign(&json!({"alg": "HS256", "typ": "JWT"}), &c);
    assert_eq!(jwt.verify(&id_token).await, Err(JwtError::TypMismatch));
    let untyped = k.hs.sign(&json!({"alg": "HS256"}), &c);
    assert_eq!(jwt.verify(&untyped).await, Err(JwtError::TypMismatch));
}

#[tokio::test]
async fn algorithm_allowlist_narrows_what_keys_accept() {
    let k = keys();
    let jwt = JwtAuthenticator::builder()
        .issuer(ISS)
        .audience(AUD)
        .key(k.rs.verification().with_kid("rs1"))
        .key(k.hs.verification().with_kid("hs1"))
        .algorithms([Algorithm::RS256])
        .build()
        .unwrap();
    let c = claims("alice", &[]);
    assert!(jwt.verify(&k.rs.token(Some("rs1"), &c)).await.is_ok());
    assert_eq!(
        jwt.verify(&k.hs.token(Some("hs1"), &c)).await,
        Err(JwtError::AlgNotAllowed)
    );
}

#[test]
fn the_crypto_backend_itself_refuses_ecdsa_zero_signatures() {
    // CVE-2022-21449 was a backend bug; check the backend, not only our pre-check.
    let k = es256_key();
    let verification = jsonwebtoken::DecodingKey::from_ec_components(
        k.jwk["x"].as_str().unwrap(),
        k.jwk["y"].as_str().unwrap(),
    )
    .unwrap();
    let zero = B64.encode([0u8; 64]);
    let ok = jsonwebtoken::crypto::verify(
        &zero,
        b"eyJhbGciOiJFUzI1NiJ9.e30",
        &verification,
        jsonwebtoken::Algorithm::ES256,
    );
    assert!(!ok.unwrap_or(false));
}

#[test]
fn the_pinned_jsonwebtoken_refuses_a_string_exp_itself() {
    // CVE-2026-25537: before 10.3, `exp` of the wrong JSON type skipped the expiry check.
    // Our verifier checks types itself; this guards the dependency too.
    let k = hmac_key(Algorithm::HS256);
    let token = k.sign(
        &json!({"alg": "HS256"}),
        &json!({"sub": "a", "exp": "1", "aud": AUD, "iss": ISS}),
    );
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.set_audience(&[AUD]);
    v.set_issuer(&[ISS]);
    let key = jsonwebtoken::DecodingKey::from_secret(k.secret.as_ref().unwrap().expose());
    let r = jsonwebtoken::decode::<Value>(&token, &key, &v);
    assert!(r.is_err(), "jsonwebtoken accepted a string exp");
}

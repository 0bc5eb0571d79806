//! A JWKS fetched over `https://` by the gateway's TLS fetcher: trusted through
//! `jwks_ca_file`, refused when the server's certificate is not.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_gateway::config::{GatewayConfig, Purpose};
use portcullis_gateway::tls::TlsAcceptorHandle;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use ring::signature::{Ed25519KeyPair, KeyPair as _};

use common::pem;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

struct Pki {
    dir: PathBuf,
    ca_pem: String,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(dir: PathBuf) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA");
        let ca_pem = pem("CERTIFICATE", issuer.der());
        Pki {
            dir,
            ca_pem,
            issuer,
        }
    }

    /// Writes a `localhost` leaf signed by this CA; returns (cert, key) paths.
    fn leaf(&self, tag: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("leaf key");
        let cert = CertificateParams::new(vec!["localhost".to_string()])
            .expect("leaf params")
            .signed_by(&key, &self.issuer)
            .expect("leaf");
        let c = self.dir.join(format!("{tag}-cert.pem"));
        let k = self.dir.join(format!("{tag}-key.pem"));
        std::fs::write(&c, pem("CERTIFICATE", cert.der())).expect("write cert");
        std::fs::write(&k, pem("PRIVATE KEY", &key.serialize_der())).expect("write key");
        (c, k)
    }
}

/// Serves `jwks` over TLS with the given certificate.
async fn jwks_server(cert: PathBuf, key: PathBuf, jwks: String) -> SocketAddr {
    let handle = Arc::new(TlsAcceptorHandle::load(&cert, &key).expect("TLS files load"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (handle, jwks) = (handle.clone(), jwks.clone());
            tokio::spawn(async move {
                let Ok(tls) = handle.accept(tcp, Duration::from_secs(5)).await else {
                    return;
                };
                let svc = service_fn(move |_req| {
                    let body = jwks.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(body)))
                                .expect("response"),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

fn ed25519_token(key: &Ed25519KeyPair, kid: &str, sub: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let header = b64(format!(r#"{{"alg":"EdDSA","typ":"JWT","kid":"{kid}"}}"#).as_bytes());
    let claims = b64(
        format!(
            r#"{{"sub":"{sub}","roles":["user"],"iss":"portcullis","aud":"portcullis","exp":{},"iat":{now}}}"#,
            now + 600
        )
        .as_bytes(),
    );
    let input = format!("{header}.{claims}");
    let sig = key.sign(input.as_bytes());
    format!("{input}.{}", b64(sig.as_ref()))
}

fn temp_dir() -> PathBuf {
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).expect("random");
    let d = std::env::temp_dir().join(format!("pc-jwks-https-{}", b64(&r)));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

#[tokio::test]
async fn a_jwks_over_https_verifies_tokens_and_an_untrusted_server_is_refused() {
    let dir = temp_dir();
    let pki = Pki::new(dir.clone());
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
    let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("key");
    let jwks = format!(
        r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","alg":"EdDSA","kid":"k1","x":"{}"}}]}}"#,
        b64(key.public_key().as_ref())
    );
    let (cert, key_file) = pki.leaf("good");
    let good = jwks_server(cert, key_file, jwks.clone()).await;
    // A server whose certificate comes from another CA.
    let other = Pki::new(dir.clone());
    let (cert, key_file) = other.leaf("rogue");
    let rogue = jwks_server(cert, key_file, jwks).await;
    std::fs::write(dir.join("ca.pem"), &pki.ca_pem).expect("write CA");

    let token = ed25519_token(&key, "k1", "alice");
    for (addr, trusted) in [(good, true), (rogue, false)] {
        let cfg = dir.join(format!("gw-{}.toml", addr.port()));
        std::fs::write(
            &cfg,
            format!(
                "[server]\nupstream = \"http://127.0.0.1:9\"\n[auth.jwt]\n\
                 jwks_url = \"https://localhost:{}/jwks.json\"\njwks_ca_file = \"ca.pem\"\n\
                 algorithms = [\"EdDSA\"]\n",
                addr.port()
            ),
        )
        .expect("write config");
        let config = GatewayConfig::load(&cfg, Purpose::Tool).expect("valid config");
        let jwt = portcullis_gateway::auth::jwt_authenticator(
            config.auth.jwt.as_ref().expect("jwt section"),
            "authToken",
        )
        .expect("authenticator");
        let got = jwt.verify(&token).await;
        if trusted {
            assert_eq!(got.expect("verified through the https JWKS").id, "alice");
        } else {
            assert!(
                got.is_err(),
                "a JWKS from an untrusted server must not be used"
            );
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

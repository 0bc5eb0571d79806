//! TLS termination in `portcullis serve`: the gateway process with `[server.tls]` (a
//! self-signed certificate made in the test) in front of a test upstream. HTTPS over
//! HTTP/1.1 and h2 chosen by ALPN, HSTS on HTTPS only, the plain-HTTP redirect listener, and
//! a new certificate on SIGHUP.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{Gateway, Upstream, free_port, pem, temp_dir};
use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A self-signed certificate for `localhost`, as PEM files hold it.
struct SelfSigned {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl SelfSigned {
    fn new() -> SelfSigned {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("a self-signed certificate");
        SelfSigned {
            cert_pem: pem("CERTIFICATE", made.cert.der()),
            key_pem: pem("PRIVATE KEY", &made.signing_key.serialize_der()),
            der: made.cert.der().clone(),
        }
    }

    fn write(&self, dir: &Path) {
        std::fs::write(dir.join("cert.pem"), &self.cert_pem).expect("write cert.pem");
        std::fs::write(dir.join("key.pem"), &self.key_pem).expect("write key.pem");
    }
}

/// The gateway with TLS on a free port and the redirect listener on another.
struct TlsGateway {
    gw: Gateway,
    up: Upstream,
    redirect_port: u16,
    /// Holds cert.pem and key.pem.
    certs: std::path::PathBuf,
}

impl Drop for TlsGateway {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.certs);
    }
}

async fn start(cert: &SelfSigned) -> TlsGateway {
    let up = Upstream::start().await;
    let certs = temp_dir();
    cert.write(&certs);
    let (port, redirect_port) = (free_port(), free_port());
    let tls = format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\nredirect_http_listen = \"127.0.0.1:{redirect_port}\"\n",
        certs.join("cert.pem").display(),
        certs.join("key.pem").display()
    );
    let text = common::config(port, up.addr, "", "") + &tls;
    let gw = Gateway::start(port, &text).await;
    assert!(
        gw.logs()
            .contains(&format!("listening on https://127.0.0.1:{port}")),
        "{}",
        gw.logs()
    );
    TlsGateway {
        gw,
        up,
        redirect_port,
        certs,
    }
}

/// A TLS connection trusting only `trusted`, offering `alpn`.
async fn connect(
    port: u16,
    trusted: &CertificateDer<'static>,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = RootCertStore::empty();
    roots
        .add(trusted.clone())
        .expect("the certificate as a root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    let name = ServerName::try_from("localhost").expect("server name");
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// One GET over an established TLS stream, as HTTP/1.1 or h2.
async fn get(tls: TlsStream<TcpStream>, h2: bool, path: &str) -> (Version, HeaderMap, String) {
    let io = TokioIo::new(tls);
    let req = Request::get(format!("https://localhost{path}"))
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let res = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("h2 handshake");
        tokio::spawn(conn);
        send.send_request(req).await.expect("h2 response")
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .expect("http/1.1 handshake");
        tokio::spawn(conn);
        send.send_request(req).await.expect("http/1.1 response")
    };
    assert_eq!(res.status(), StatusCode::OK);
    let version = res.version();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (
        version,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn https_over_http1_reaches_the_upstream_with_hsts() {
    let cert = SelfSigned::new();
    let t = start(&cert).await;
    let tls = connect(t.gw.port, &cert.der, &[b"http/1.1"])
        .await
        .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (version, headers, body) = get(tls, false, "/hello").await;
    assert_eq!(version, Version::HTTP_11);
    assert_eq!(body, "hello");
    assert_eq!(
        headers["strict-transport-security"],
        "max-age=63072000; includeSubDomains"
    );
    assert!(headers.get("server").is_none(), "{headers:?}");
    let seen = t.up.last();
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert!(
        seen.headers["forwarded"]
            .to_str()
            .unwrap()
            .contains("proto=https"),
        "{:?}",
        seen.headers
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unparsable_request_over_https_gets_the_json_error_with_hsts() {
    let cert = SelfSigned::new();
    let t = start(&cert).await;
    let mut tls = connect(t.gw.port, &cert.der, &[b"http/1.1"])
        .await
        .expect("TLS handshake");
    tls.write_all(b"GET /x HTTP/1.1\r\nHost: localhost\r\nNo colon\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    let answers = common::raw_answers(&out);
    assert_eq!(answers.len(), 1, "{text}");
    let a = &answers[0];
    assert!(a.head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
    assert_eq!(a.header("content-type"), Some("application/json"), "{text}");
    assert_eq!(
        a.header("strict-transport-security"),
        Some("max-age=63072000; includeSubDomains"),
        "{text}"
    );
    assert_eq!(
        a.header("content-length"),
        Some(a.body.len().to_string().as_str()),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_slice(&a.body).expect("a JSON body");
    assert_eq!(json["code"], "malformed_request");
    assert_eq!(t.up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn https_over_h2_is_chosen_by_alpn_and_carries_hsts() {
    let cert = SelfSigned::new();
    let t = start(&cert).await;
    let tls = connect(t.gw.port, &cert.der, &[b"h2", b"http/1.1"])
        .await
        .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (version, headers, body) = get(tls, true, "/hello").await;
    assert_eq!(version, Version::HTTP_2);
    assert_eq!(body, "hello");
    assert!(
        headers.contains_key("strict-transport-security"),
        "{headers:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_without_alpn_gets_http1() {
    let cert = SelfSigned::new();
    let t = start(&cert).await;
    let tls = connect(t.gw.port, &cert.der, &[])
        .await
        .expect("TLS handshake");
    let (version, _, body) = get(tls, false, "/").await;
    assert_eq!(version, Version::HTTP_11);
    assert_eq!(body, "hello");
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_on_the_tls_port_is_not_served() {
    let cert = SelfSigned::new();
    let t = start(&cert).await;
    let out = common::raw(
        t.gw.port,
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(!out.contains("hello"), "{out}");
    assert_eq!(t.up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn hsts_is_not_sent_over_plain_http() {
    let up = Upstream::start().await;
    let port = free_port();
    let gw = Gateway::start(port, &common::config(port, up.addr, "", "")).await;
    let res = common::get(&gw.url("/"), &[]).await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(
        res.headers.get("strict-transport-security").is_none(),
        "{:?}",
        res.headers
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_redirect_listener_answers_308_to_the_https_url() {
    let cert = SelfSigned::new();
    let t = start(&cert).await;
    let request = format!(
        "GET /a/b?x=1 HTTP/1.1\r\nHost: localhost:{}\r\n\r\n",
        t.redirect_port
    );
    let out = common::raw(t.redirect_port, request.as_bytes(), Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 308"), "{out}");
    let location = format!("location: https://localhost:{}/a/b?x=1", t.gw.port);
    assert!(out.to_ascii_lowercase().contains(&location), "{out}");
    assert_eq!(t.up.hits(), 0, "the redirect never reaches the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_serves_a_new_certificate_to_new_connections() {
    let first = SelfSigned::new();
    let t = start(&first).await;
    let kept = connect(t.gw.port, &first.der, &[b"http/1.1"])
        .await
        .expect("handshake with the first certificate");

    let second = SelfSigned::new();
    second.write(&t.certs);
    t.gw.signal("-HUP");
    assert!(
        t.gw.wait_log("TLS certificate reloaded", Duration::from_secs(5))
            .await,
        "{}",
        t.gw.logs()
    );
    let tls = connect(t.gw.port, &second.der, &[b"http/1.1"])
        .await
        .expect("handshake with the new certificate");
    let served = tls.get_ref().1.peer_certificates().expect("certificates")[0].clone();
    assert_eq!(served, second.der);
    assert!(
        connect(t.gw.port, &first.der, &[b"http/1.1"])
            .await
            .is_err(),
        "new connections no longer get the old certificate"
    );
    // A connection made before the reload keeps working.
    let (_, _, body) = get(kept, false, "/").await;
    assert_eq!(body, "hello");

    // A broken file is refused with the reason; the new certificate keeps serving.
    std::fs::write(t.certs.join("key.pem"), "not a key").expect("break key.pem");
    t.gw.signal("-HUP");
    assert!(
        t.gw.wait_log(
            "TLS certificate reload (SIGHUP) refused",
            Duration::from_secs(5)
        )
        .await,
        "{}",
        t.gw.logs()
    );
    assert!(t.gw.logs().contains("key.pem"), "{}", t.gw.logs());
    let tls = connect(t.gw.port, &second.der, &[b"h2"])
        .await
        .expect("the previous certificate still serves");
    let (_, _, body) = get(tls, true, "/").await;
    assert_eq!(body, "hello");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_stops_the_redirect_listener_too() {
    let cert = SelfSigned::new();
    let mut t = start(&cert).await;
    t.gw.signal("-TERM");
    let status = t.gw.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}: {}", t.gw.logs());
    let mut refused = TcpStream::connect(("127.0.0.1", t.redirect_port)).await;
    if let Ok(tcp) = &mut refused {
        // Accepted by a listener that is gone would mean a stale socket: nothing answers.
        let _ = tcp.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
        let mut buf = [0u8; 16];
        let n = tcp.read(&mut buf).await.unwrap_or(0);
        assert_eq!(n, 0, "the redirect listener still answers after shutdown");
    }
}

//! TLS termination: a certificate made in the test by rcgen, HTTP/1.1 and h2 chosen by ALPN,
//! reload with a new certificate and with broken files, the handshake timeout, and the
//! HTTP→HTTPS redirect listener.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis_gateway::tls::{TlsAcceptorHandle, redirect_http_to_https};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use common::pem;

/// A test CA that signs `localhost` leaves.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// One leaf certificate, as PEM files would hold it.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("CA key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA certificate"),
        }
    }

    fn leaf(&self) -> Leaf {
        let params = CertificateParams::new(vec!["localhost".to_string()]).expect("leaf params");
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        Leaf {
            cert_pem: pem("CERTIFICATE", cert.der()),
            key_pem: pem("PRIVATE KEY", &key.serialize_der()),
            der: cert.der().clone(),
        }
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.issuer.der().clone()).expect("CA as a root");
        roots
    }
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "portcullis-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write_leaf(leaf: &Leaf, cert: &Path, key: &Path) {
    std::fs::write(cert, &leaf.cert_pem).expect("write cert");
    std::fs::write(key, &leaf.key_pem).expect("write key");
}

/// Serves "hello over HTTP/x" behind the handle's TLS on a loopback port.
async fn serve_tls(handle: Arc<TlsAcceptorHandle>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let Ok(tls) = handle.accept(tcp, Duration::from_secs(5)).await else {
                    return;
                };
                let service = service_fn(|req: Request<Incoming>| async move {
                    let text = format!("hello over {:?}", req.version());
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(text))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

/// A TLS connection to `addr` trusting `roots`, offering `alpn`.
async fn connect(
    addr: SocketAddr,
    roots: RootCertStore,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("server name");
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// The leaf certificate the server presented.
fn served_cert(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref()
        .1
        .peer_certificates()
        .expect("peer certificates")[0]
        .clone()
}

/// One GET over an established TLS stream, as HTTP/1.1 or h2.
async fn get(tls: TlsStream<TcpStream>, h2: bool) -> (Version, String) {
    let io = TokioIo::new(tls);
    let req = Request::get("https://localhost/")
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
    let version = res.version();
    let body = res.into_body().collect().await.expect("body").to_bytes();
    (version, String::from_utf8_lossy(&body).into_owned())
}

struct Setup {
    ca: Ca,
    /// Keeps the certificate files until the test ends.
    _dir: TempDir,
    cert: PathBuf,
    key: PathBuf,
    leaf: Leaf,
    handle: Arc<TlsAcceptorHandle>,
    addr: SocketAddr,
}

async fn setup() -> Setup {
    let ca = Ca::new();
    let dir = TempDir::new();
    let (cert, key) = (dir.path("cert.pem"), dir.path("key.pem"));
    let leaf = ca.leaf();
    write_leaf(&leaf, &cert, &key);
    let handle = Arc::new(TlsAcceptorHandle::load(&cert, &key).expect("load"));
    let addr = serve_tls(handle.clone()).await;
    Setup {
        ca,
        _dir: dir,
        cert,
        key,
        leaf,
        handle,
        addr,
    }
}

#[tokio::test]
async fn http1_is_served_over_tls() {
    let s = setup().await;
    let tls = connect(s.addr, s.ca.roots(), &[b"http/1.1"])
        .await
        .expect("TLS");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(served_cert(&tls), s.leaf.der);
    let (version, body) = get(tls, false).await;
    assert_eq!(version, Version::HTTP_11);
    assert_eq!(body, "hello over HTTP/1.1");
}

#[tokio::test]
async fn h2_is_chosen_by_alpn() {
    let s = setup().await;
    let tls = connect(s.addr, s.ca.roots(), &[b"h2", b"http/1.1"])
        .await
        .expect("TLS");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (version, body) = get(tls, true).await;
    assert_eq!(version, Version::HTTP_2);
    assert_eq!(body, "hello over HTTP/2.0");
}

#[tokio::test]
async fn a_client_without_alpn_gets_http1() {
    let s = setup().await;
    let tls = connect(s.addr, s.ca.roots(), &[]).await.expect("TLS");
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    assert_eq!(get(tls, false).await.1, "hello over HTTP/1.1");
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_certificate_fails() {
    let s = setup().await;
    let other = Ca::new();
    assert!(connect(s.addr, other.roots(), &[b"h2"]).await.is_err());
}

#[tokio::test]
async fn reload_serves_the_new_certificate_to_new_connections() {
    let s = setup().await;
    let before = connect(s.addr, s.ca.roots(), &[b"h2"]).await.expect("TLS");
    assert_eq!(served_cert(&before), s.leaf.der);

    let next = s.ca.leaf();
    write_leaf(&next, &s.cert, &s.key);
    s.handle.reload().expect("reload");

    let after = connect(s.addr, s.ca.roots(), &[b"h2"]).await.expect("TLS");
    assert_eq!(served_cert(&after), next.der);
    assert_ne!(next.der, s.leaf.der);
    assert_eq!(get(after, true).await.1, "hello over HTTP/2.0");
    // The connection made before the reload still works.
    assert_eq!(get(before, true).await.1, "hello over HTTP/2.0");
}

#[tokio::test]
async fn a_broken_reload_keeps_the_old_certificate_and_names_the_file() {
    let s = setup().await;

    // Garbage in the certificate file.
    std::fs::write(&s.cert, "not a certificate\n").unwrap();
    let err = s.handle.reload().expect_err("garbage certificate");
    assert_eq!(err.path, s.cert);
    assert!(
        err.to_string()
            .starts_with(&format!("{}: ", s.cert.display())),
        "{err}"
    );
    assert!(err.reason.contains("no certificate found"), "{err}");

    // A truncated PEM block.
    let half = &s.leaf.cert_pem[..s.leaf.cert_pem.len() / 2];
    std::fs::write(&s.cert, half).unwrap();
    let err = s.handle.reload().expect_err("truncated certificate");
    assert_eq!(err.path, s.cert, "{err}");

    // A good certificate with someone else's key.
    let other = s.ca.leaf();
    std::fs::write(&s.cert, &s.leaf.cert_pem).unwrap();
    std::fs::write(&s.key, &other.key_pem).unwrap();
    let err = s.handle.reload().expect_err("mismatched key");
    assert_eq!(err.path, s.key);
    assert!(
        err.reason.contains("does not match the certificate"),
        "{err}"
    );

    // The key file gone.
    std::fs::remove_file(&s.key).unwrap();
    let err = s.handle.reload().expect_err("missing key");
    assert_eq!(err.path, s.key);
    assert!(err.reason.starts_with("cannot read:"), "{err}");

    // A certificate where the key should be.
    std::fs::write(&s.key, &s.leaf.cert_pem).unwrap();
    let err = s.handle.reload().expect_err("no key");
    assert_eq!(err.path, s.key);
    assert!(err.reason.contains("no private key found"), "{err}");

    // Through all of it the first certificate kept serving.
    let tls = connect(s.addr, s.ca.roots(), &[b"http/1.1"])
        .await
        .expect("TLS");
    assert_eq!(served_cert(&tls), s.leaf.der);
    assert_eq!(get(tls, false).await.1, "hello over HTTP/1.1");

    // Repaired files load again.
    std::fs::write(&s.key, &s.leaf.key_pem).unwrap();
    s.handle.reload().expect("repaired");
}

#[tokio::test]
async fn loading_names_the_missing_file() {
    let dir = TempDir::new();
    let leaf = Ca::new().leaf();
    let (cert, key) = (dir.path("cert.pem"), dir.path("key.pem"));
    let err = TlsAcceptorHandle::load(&cert, &key).expect_err("no files");
    assert_eq!(err.path, cert);
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    let err = TlsAcceptorHandle::load(&cert, &key).expect_err("no key");
    assert_eq!(err.path, key);
    std::fs::write(&key, &leaf.key_pem).unwrap();
    let handle = TlsAcceptorHandle::load(&cert, &key).expect("both files");
    assert_eq!(handle.cert_path(), cert);
    assert_eq!(handle.key_path(), key);
    drop(dir);
}

#[tokio::test]
async fn a_silent_client_is_dropped_at_the_handshake_timeout() {
    let s = setup().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _client = TcpStream::connect(addr).await.unwrap();
    let (tcp, _) = listener.accept().await.unwrap();
    let started = std::time::Instant::now();
    let err = s
        .handle
        .accept(tcp, Duration::from_millis(200))
        .await
        .expect_err("no handshake");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert!(started.elapsed() < Duration::from_secs(2));
}

// --- the redirect listener ---

async fn redirector(https_port: u16) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(redirect_http_to_https(listener, https_port));
    addr
}

/// Sends raw bytes; returns the status and the response head.
async fn raw(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("the redirect listener answers and closes")
        .unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn plain_http_is_redirected_with_308_to_the_https_url() {
    let addr = redirector(8443).await;
    let (status, head) = raw(
        addr,
        "GET /a/b?x=1&y=2 HTTP/1.1\r\nHost: example.com:8080\r\n\r\n",
    )
    .await;
    assert_eq!(status, 308, "{head}");
    assert_eq!(
        header(&head, "location"),
        Some("https://example.com:8443/a/b?x=1&y=2")
    );
    assert!(header(&head, "x-request-id").is_some());
    assert!(header(&head, "strict-transport-security").is_none());

    let (status, head) = raw(
        addr,
        "POST /form HTTP/1.1\r\nHost: [::1]\r\nContent-Length: 3\r\n\r\na=1",
    )
    .await;
    assert_eq!(status, 308, "{head}");
    assert_eq!(header(&head, "location"), Some("https://[::1]:8443/form"));

    // Absolute-form targets name the host themselves.
    let (status, head) = raw(
        addr,
        "GET http://app.example/x HTTP/1.1\r\nHost: app.example\r\n\r\n",
    )
    .await;
    assert_eq!(status, 308, "{head}");
    assert_eq!(
        header(&head, "location"),
        Some("https://app.example:8443/x")
    );
}

#[tokio::test]
async fn the_default_https_port_is_left_out() {
    let addr = redirector(443).await;
    let (status, head) = raw(addr, "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n").await;
    assert_eq!(status, 308);
    assert_eq!(header(&head, "location"), Some("https://example.com/"));
}

#[tokio::test]
async fn absent_or_invalid_host_gets_400() {
    let addr = redirector(443).await;
    for request in [
        "GET / HTTP/1.0\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: user@evil.example\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: \r\n\r\n",
    ] {
        let (status, head) = raw(addr, request).await;
        assert_eq!(status, 400, "{request:?}: {head}");
        assert!(header(&head, "location").is_none());
        assert!(head.contains(r#""code":"invalid_host""#), "{head}");
    }
}

#[tokio::test]
async fn oversized_request_heads_are_refused() {
    let addr = redirector(443).await;
    let big = "a".repeat(64 * 1024);
    let request = format!("GET / HTTP/1.1\r\nHost: example.com\r\nX-Big: {big}\r\n\r\n");
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(request.as_bytes()).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "{text}"
    );
}

//! TLS termination with rustls (ring provider), certificate reload, and the plain-HTTP
//! listener that redirects to HTTPS.
//!
//! [`TlsAcceptorHandle`] loads the PEM certificate chain and private key named by
//! `[server.tls]`, offers ALPN `h2` and `http/1.1` (TLS 1.2 and 1.3), and swaps in new files on
//! [`reload`](TlsAcceptorHandle::reload) — a reload that fails keeps the old certificate
//! serving and says which file is wrong and why. The serve code takes
//! [`acceptor`](TlsAcceptorHandle::acceptor) (a cheap clone) for each connection, or calls
//! [`accept`](TlsAcceptorHandle::accept), which also bounds the handshake time.
//!
//! ```no_run
//! use std::time::Duration;
//! use portcullis_gateway::tls::TlsAcceptorHandle;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let tls = TlsAcceptorHandle::load("cert.pem", "key.pem")?;
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:443").await?;
//! loop {
//!     let (tcp, _peer) = listener.accept().await?;
//!     let acceptor = tls.acceptor();
//!     tokio::spawn(async move {
//!         let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
//!         else { return };
//!         let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
//!         // serve `stream` with hyper-util's auto builder...
//!     });
//! }
//! # }
//! ```
//!
//! HSTS belongs on HTTPS responses only: the serve code marks requests that came over TLS with
//! [`portcullis::layer::Https`] so the security headers know.

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use portcullis::{Rejection, RequestId};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::{ConfigError, TlsConfig};

/// The ALPN protocols offered, in order of preference.
///
/// ```
/// assert_eq!(portcullis_gateway::tls::ALPN_PROTOCOLS, [&b"h2"[..], &b"http/1.1"[..]]);
/// ```
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Certificate and key files larger than this are refused (a PEM chain is a few KiB).
const MAX_PEM_BYTES: u64 = 1 << 20;

/// A TLS file that could not be used: which file, and why.
///
/// ```
/// use portcullis_gateway::tls::TlsAcceptorHandle;
/// let err = TlsAcceptorHandle::load("/nonexistent/cert.pem", "/nonexistent/key.pem").unwrap_err();
/// assert_eq!(err.path.to_str(), Some("/nonexistent/cert.pem"));
/// assert!(err.to_string().starts_with("/nonexistent/cert.pem: cannot read:"), "{err}");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError {
    /// The certificate or key file concerned.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

impl TlsError {
    fn new(path: &Path, reason: impl Into<String>) -> TlsError {
        TlsError {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

impl TlsError {
    /// The error as the config file's: on `server.tls.key` when the key file is at fault,
    /// else on `server.tls.cert`, with the file and the reason.
    ///
    /// ```
    /// use portcullis_gateway::config::GatewayConfig;
    /// use portcullis_gateway::tls::TlsAcceptorHandle;
    /// # let dir = std::env::temp_dir().join(format!("portcullis-doc-tls-key-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// std::fs::write(dir.join("cert.pem"), "not a certificate")?;
    /// std::fs::write(dir.join("key.pem"), "not a key")?;
    /// let config = GatewayConfig::from_str(
    ///     "server.upstream = \"http://127.0.0.1:3000\"\nserver.tls = { cert = \"cert.pem\", key = \"key.pem\" }",
    ///     &dir.join("portcullis.toml").display().to_string(),
    /// )?;
    /// let tls = config.server.tls.as_ref().unwrap();
    /// let err = TlsAcceptorHandle::from_config(tls).unwrap_err().to_config_error(tls);
    /// assert_eq!(err.key, "server.tls.cert");
    /// assert!(err.reason.ends_with("cert.pem: no certificate found (expected -----BEGIN CERTIFICATE-----)"), "{err}");
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn to_config_error(&self, config: &TlsConfig) -> ConfigError {
        let key = if self.path == config.key && self.path != config.cert {
            "server.tls.key"
        } else {
            "server.tls.cert"
        };
        ConfigError {
            key: key.to_string(),
            reason: self.to_string(),
        }
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

impl std::error::Error for TlsError {}

/// The gateway's TLS acceptor, reloadable from its certificate and key files.
///
/// ```no_run
/// use portcullis_gateway::tls::TlsAcceptorHandle;
/// let tls = TlsAcceptorHandle::load("cert.pem", "key.pem")?;
/// // On SIGHUP:
/// if let Err(e) = tls.reload() {
///     eprintln!("TLS reload refused, still serving the old certificate: {e}");
/// }
/// # Ok::<(), portcullis_gateway::tls::TlsError>(())
/// ```
pub struct TlsAcceptorHandle {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<TlsAcceptor>,
}

impl fmt::Debug for TlsAcceptorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsAcceptorHandle")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl TlsAcceptorHandle {
    /// Loads the PEM certificate chain (leaf first) and private key (PKCS#8, PKCS#1 or SEC1).
    /// Fails with the file and the reason when a file is unreadable, holds no certificate or
    /// key, or the key does not belong to the certificate.
    ///
    /// ```no_run
    /// let tls = portcullis_gateway::tls::TlsAcceptorHandle::load("/etc/portcullis/cert.pem", "/etc/portcullis/key.pem")?;
    /// # Ok::<(), portcullis_gateway::tls::TlsError>(())
    /// ```
    pub fn load(
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Result<TlsAcceptorHandle, TlsError> {
        let (cert, key) = (cert.into(), key.into());
        let config = server_config(&cert, &key)?;
        Ok(TlsAcceptorHandle {
            cert,
            key,
            current: RwLock::new(TlsAcceptor::from(config)),
        })
    }

    /// Loads the files named by `[server.tls]`.
    ///
    /// ```no_run
    /// use portcullis_gateway::config::GatewayConfig;
    /// use portcullis_gateway::tls::TlsAcceptorHandle;
    /// let config = GatewayConfig::from_file("portcullis.toml").unwrap();
    /// if let Some(tls) = &config.server.tls {
    ///     let handle = TlsAcceptorHandle::from_config(tls)?;
    /// }
    /// # Ok::<(), portcullis_gateway::tls::TlsError>(())
    /// ```
    pub fn from_config(config: &TlsConfig) -> Result<TlsAcceptorHandle, TlsError> {
        TlsAcceptorHandle::load(&config.cert, &config.key)
    }

    /// Re-reads the certificate and key files. New connections get the new certificate; on
    /// error the old one keeps serving. The files are read synchronously (they are small).
    ///
    /// ```no_run
    /// # let tls = portcullis_gateway::tls::TlsAcceptorHandle::load("c.pem", "k.pem").unwrap();
    /// tls.reload()?;
    /// # Ok::<(), portcullis_gateway::tls::TlsError>(())
    /// ```
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = server_config(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = TlsAcceptor::from(config);
        Ok(())
    }

    /// The current acceptor: an `Arc` clone, taken per connection.
    ///
    /// ```no_run
    /// # async fn f(tls: &portcullis_gateway::tls::TlsAcceptorHandle, tcp: tokio::net::TcpStream) -> std::io::Result<()> {
    /// let stream = tls.acceptor().accept(tcp).await?;
    /// # Ok(()) }
    /// ```
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Runs the TLS handshake on `io`, giving up after `timeout` (a client that opens a
    /// connection and sends nothing must not hold it).
    ///
    /// ```no_run
    /// # async fn f(tls: &portcullis_gateway::tls::TlsAcceptorHandle, tcp: tokio::net::TcpStream) -> std::io::Result<()> {
    /// use std::time::Duration;
    /// let stream = tls.accept(tcp, Duration::from_secs(10)).await?;
    /// let alpn = stream.get_ref().1.alpn_protocol();
    /// # Ok(()) }
    /// ```
    pub async fn accept<IO>(&self, io: IO, timeout: Duration) -> io::Result<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let handshake = self.acceptor().accept(io);
        match tokio::time::timeout(timeout, handshake).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        }
    }

    /// The certificate file.
    ///
    /// ```no_run
    /// # let tls = portcullis_gateway::tls::TlsAcceptorHandle::load("c.pem", "k.pem").unwrap();
    /// assert_eq!(tls.cert_path(), std::path::Path::new("c.pem"));
    /// ```
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }

    /// The private key file.
    ///
    /// ```no_run
    /// # let tls = portcullis_gateway::tls::TlsAcceptorHandle::load("c.pem", "k.pem").unwrap();
    /// assert_eq!(tls.key_path(), std::path::Path::new("k.pem"));
    /// ```
    pub fn key_path(&self) -> &Path {
        &self.key
    }
}

/// Reads a PEM file, refusing what cannot be one.
fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    let len = std::fs::metadata(path)
        .map_err(|e| TlsError::new(path, format!("cannot read: {e}")))?
        .len();
    if len > MAX_PEM_BYTES {
        return Err(TlsError::new(
            path,
            format!("{len} bytes is too large for a PEM file"),
        ));
    }
    std::fs::read(path).map_err(|e| TlsError::new(path, format!("cannot read: {e}")))
}

/// Builds the rustls server config from the two files, checking each on its own first so the
/// error names the right one.
fn server_config(cert_path: &Path, key_path: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());

    let cert_pem = read_pem(cert_path)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(cert_path, format!("not a valid PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(TlsError::new(
            cert_path,
            "no certificate found (expected -----BEGIN CERTIFICATE-----)",
        ));
    }

    let key_pem = read_pem(key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::new(
            key_path,
            "no private key found (expected a PKCS#8, PKCS#1 or SEC1 PEM key)",
        ),
        e => TlsError::new(key_path, format!("not a valid PEM private key: {e}")),
    })?;
    check_pair(&provider, &chain, key.clone_key(), cert_path, key_path)?;

    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::new(cert_path, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::new(cert_path, e.to_string()))?;
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The key must parse, the leaf certificate must parse, and they must belong together.
fn check_pair(
    provider: &CryptoProvider,
    chain: &[CertificateDer<'static>],
    key: PrivateKeyDer<'static>,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(), TlsError> {
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::new(key_path, format!("unusable private key: {e}")))?;
    match CertifiedKey::new(chain.to_vec(), signing_key).keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(()),
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::new(
            key_path,
            format!(
                "the private key does not match the certificate in {}",
                cert_path.display()
            ),
        )),
        Err(e) => Err(TlsError::new(
            cert_path,
            format!("unusable certificate: {e}"),
        )),
    }
}

/// Connections the redirect listener serves at once; more wait to be accepted.
const REDIRECT_MAX_CONNECTIONS: usize = 1024;
/// Time a redirect client has to send its request headers.
const REDIRECT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a redirect connection may last in all.
const REDIRECT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Request-head bytes a redirect client may send (hyper's minimum buffer).
const REDIRECT_MAX_HEAD: usize = 16 * 1024;

/// Serves plain HTTP on `listener`, answering every request with `308 Permanent Redirect` to
/// `https://HOST[:https_port]/path?query` (the port is left out when it is 443). HOST is the
/// request's host without its port: from an absolute-form target if there is one, else from
/// the `Host` header. A missing, repeated or invalid host gets `400` with the JSON error.
///
/// The listener is hardened like the main one, with smaller limits: header read timeout,
/// 16 KiB request head, no keep-alive, at most 1024 connections at once. It runs until the
/// future is dropped (use `tokio::select!` with the shutdown signal, or abort its task).
///
/// ```no_run
/// # async fn f() -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:80").await?;
/// tokio::spawn(portcullis_gateway::tls::redirect_http_to_https(listener, 443));
/// # Ok(()) }
/// ```
pub async fn redirect_http_to_https(listener: TcpListener, https_port: u16) {
    let slots = Arc::new(Semaphore::new(REDIRECT_MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "redirect listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| async move {
                Ok::<_, Infallible>(redirect_response(&req, https_port))
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(REDIRECT_HEADER_TIMEOUT)
                .max_buf_size(REDIRECT_MAX_HEAD)
                .keep_alive(false);
            let conn = builder.serve_connection(TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(REDIRECT_CONNECTION_TIMEOUT, conn).await;
        });
    }
}

/// The redirect for one request.
fn redirect_response(req: &Request<Incoming>, https_port: u16) -> Response<Full<Bytes>> {
    let id = RequestId::generate();
    let location = request_host(req)
        .and_then(|host| https_location(host, https_port, req.uri().path_and_query()));
    let Some(location) = location else {
        let r = Rejection::invalid_host().with_message("Missing or invalid Host header");
        return r.into_response_with_id(id.as_str()).map(Full::new);
    };
    let mut res = Response::new(Full::new(Bytes::new()));
    *res.status_mut() = StatusCode::PERMANENT_REDIRECT;
    res.headers_mut().insert(header::LOCATION, location);
    if let Ok(v) = HeaderValue::from_str(id.as_str()) {
        res.headers_mut()
            .insert(portcullis::request_id::X_REQUEST_ID, v);
    }
    res
}

/// The authority the client asked for: an absolute-form target's (RFC 9112 §3.2.2), else the
/// one `Host` header.
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    if let Some(authority) = req.uri().authority() {
        return Some(authority.as_str());
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next()?;
    if hosts.next().is_some() {
        return None;
    }
    host.to_str().ok()
}

/// `https://host[:port]/path?query`, or `None` when `authority` is not a plain host with an
/// optional port.
fn https_location(
    authority: &str,
    https_port: u16,
    path_and_query: Option<&http::uri::PathAndQuery>,
) -> Option<HeaderValue> {
    let authority: http::uri::Authority = authority.parse().ok()?;
    if authority.as_str().contains('@') {
        return None;
    }
    let host = authority.host();
    // What follows the host can only be `:port` (digits, possibly none: RFC 3986 §3.2.3).
    let port_ok = authority.as_str()[host.len()..]
        .strip_prefix(':')
        .map_or(authority.as_str().len() == host.len(), |p| {
            p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
        });
    let valid = port_ok
        && if let Some(ip) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            ip.parse::<Ipv6Addr>().is_ok()
        } else {
            !host.is_empty()
                && !host.starts_with(['.', '-'])
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        };
    if !valid {
        return None;
    }
    let host = host.to_ascii_lowercase();
    let target = path_and_query
        .map(|pq| pq.as_str())
        .filter(|t| t.starts_with('/'))
        .unwrap_or("/");
    let location = if https_port == 443 {
        format!("https://{host}{target}")
    } else {
        format!("https://{host}:{https_port}{target}")
    };
    HeaderValue::from_str(&location).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(host: &str, port: u16, target: &str) -> Option<String> {
        let pq: http::uri::PathAndQuery = target.parse().unwrap();
        https_location(host, port, Some(&pq)).map(|v| v.to_str().unwrap().to_string())
    }

    #[test]
    fn location_keeps_path_and_query_and_swaps_the_port() {
        assert_eq!(
            loc("example.com:8080", 8443, "/a/b?x=1&y=%20").as_deref(),
            Some("https://example.com:8443/a/b?x=1&y=%20")
        );
        assert_eq!(
            loc("Example.COM", 443, "/").as_deref(),
            Some("https://example.com/")
        );
        assert_eq!(
            loc("[::1]:80", 8443, "/x").as_deref(),
            Some("https://[::1]:8443/x")
        );
        assert_eq!(
            loc("127.0.0.1", 443, "//evil.example/").as_deref(),
            Some("https://127.0.0.1//evil.example/")
        );
        assert_eq!(
            https_location("a.example", 443, None).unwrap(),
            "https://a.example/"
        );
    }

    #[test]
    fn bad_hosts_get_no_location() {
        for host in [
            "",
            "user@evil.example",
            "exa mple.com",
            "a.com/x",
            "[zz]:80",
            "-a.com",
            ".a.com",
            "a!b.com",
            "a.com:port",
        ] {
            assert_eq!(loc(host, 443, "/"), None, "{host:?}");
        }
    }
}

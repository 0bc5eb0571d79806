//! Fetching a JWKS over `https://`: the library's built-in fetcher speaks plain HTTP only, so
//! the gateway plugs in this one, built on the same rustls (ring) stack it terminates TLS with.
//!
//! Roots: the system's CA bundle (`SSL_CERT_FILE`, else `/etc/ssl/certs/ca-certificates.crt`),
//! or, for a private identity provider, the PEM file named by `[auth.jwt] jwks_ca_file`. The
//! certificate is verified for the URL's host; no redirect is followed; the answer is bounded
//! in time and size.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use portcullis::auth::BoxFuture;
use portcullis::auth::jwks::{FetchError, JwksFetcher, read_bounded};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The system CA bundle read when no `jwks_ca_file` is given.
///
/// ```
/// use portcullis_gateway::jwks_https::SYSTEM_BUNDLE;
/// assert_eq!(SYSTEM_BUNDLE, "/etc/ssl/certs/ca-certificates.crt");
/// ```
pub const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A JWKS fetcher over HTTPS.
///
/// ```no_run
/// # use std::{sync::Arc, time::Duration};
/// use portcullis::auth::jwks::{Jwks, JwksOptions};
/// use portcullis_gateway::jwks_https::HttpsFetcher;
/// let fetcher = HttpsFetcher::new(None, Duration::from_secs(5), 1 << 20)?;
/// let url = "https://id.example.com/.well-known/jwks.json";
/// let jwks = Jwks::with_fetcher(url, JwksOptions::default(), Arc::new(fetcher))?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct HttpsFetcher {
    connector: TlsConnector,
    timeout: Duration,
    max_bytes: usize,
}

impl std::fmt::Debug for HttpsFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpsFetcher")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HttpsFetcher {
    /// Trusts the certificates in `ca_file` (PEM), or the system bundle when `None`.
    ///
    /// ```
    /// # use std::{path::Path, time::Duration};
    /// use portcullis_gateway::jwks_https::HttpsFetcher;
    /// let ca = Path::new("/nonexistent/idp-ca.pem");
    /// let err = HttpsFetcher::new(Some(ca), Duration::from_secs(5), 1 << 20).unwrap_err();
    /// assert!(err.starts_with("/nonexistent/idp-ca.pem: "), "{err}");
    /// ```
    pub fn new(
        ca_file: Option<&Path>,
        timeout: Duration,
        max_bytes: usize,
    ) -> Result<Self, String> {
        let path: PathBuf = match ca_file {
            Some(p) => p.to_path_buf(),
            None => std::env::var_os("SSL_CERT_FILE")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(SYSTEM_BUNDLE)),
        };
        let mut roots = rustls::RootCertStore::empty();
        let certs =
            CertificateDer::pem_file_iter(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
            // A bundle may hold a certificate rustls cannot use; skip it, keep the rest.
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err(format!("{}: no usable CA certificate", path.display()));
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(HttpsFetcher {
            connector: TlsConnector::from(Arc::new(config)),
            timeout,
            max_bytes,
        })
    }

    async fn fetch(&self, url: &Uri) -> Result<Response<Bytes>, FetchError> {
        if url.scheme_str() != Some("https") {
            return Err(FetchError("expected an https:// URL"));
        }
        let host = url.host().ok_or(FetchError("no host"))?.to_string();
        let port = url.port_u16().unwrap_or(443);
        let tcp = TcpStream::connect((host.trim_matches(['[', ']']), port))
            .await
            .map_err(|_| FetchError("connection failed"))?;
        let name = ServerName::try_from(host.trim_matches(['[', ']']).to_string())
            .map_err(|_| FetchError("bad host name"))?;
        let tls = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|_| FetchError("TLS handshake failed"))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|_| FetchError("connection failed"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let path = url.path_and_query().map_or("/", |p| p.as_str());
        let authority = url.authority().map_or(host.as_str(), |a| a.as_str());
        let req = Request::get(path)
            .header(header::HOST, authority)
            .header(header::ACCEPT, "application/jwk-set+json, application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|_| FetchError("bad request"))?;
        let res = send
            .send_request(req)
            .await
            .map_err(|_| FetchError("connection failed"))?;
        read_bounded(res, self.max_bytes).await
    }
}

impl JwksFetcher for HttpsFetcher {
    fn get<'a>(&'a self, url: &'a Uri) -> BoxFuture<'a, Result<Response<Bytes>, FetchError>> {
        Box::pin(async move {
            tokio::time::timeout(self.timeout, self.fetch(url))
                .await
                .map_err(|_| FetchError("timeout"))?
        })
    }
}

//! TLS for the PostgreSQL audit store: rustls (ring) behind tokio-postgres's connector traits.
//!
//! Used when the URL says `sslmode=require`. The server's certificate is always verified:
//! against the PEM file given as `postgres_ca_file`, or else the system's CA bundle
//! (`SSL_CERT_FILE`, else `/etc/ssl/certs/ca-certificates.crt`), and for the host name (or
//! IP address) the URL connects to. That is libpq's `verify-full`: a stricter `require`, since
//! encryption to an unverified peer protects nothing from the one in the middle.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_rustls::TlsConnector;

use super::store::AuditError;

/// The system CA bundle read when no CA file is given and `SSL_CERT_FILE` is unset.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Makes a verified TLS connection per host; cheap to clone.
#[derive(Clone)]
pub(crate) struct RustlsMakeConnect {
    config: Arc<rustls::ClientConfig>,
}

impl RustlsMakeConnect {
    /// Trusts the certificates in `ca_file` (PEM), or the system bundle when `None`.
    pub(crate) fn new(ca_file: Option<&Path>) -> Result<Self, AuditError> {
        let (path, key): (PathBuf, &str) = match ca_file {
            Some(p) => (p.to_path_buf(), "postgres_ca_file"),
            None => (
                std::env::var_os("SSL_CERT_FILE")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from(SYSTEM_BUNDLE)),
                "the system CA bundle",
            ),
        };
        let certs = CertificateDer::pem_file_iter(&path).map_err(|e| {
            AuditError::Config(format!(
                "postgres sslmode=require: cannot read {key} {}: {e}",
                path.display()
            ))
        })?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs {
            let cert = cert.map_err(|e| {
                AuditError::Config(format!(
                    "postgres sslmode=require: {key} {}: {e}",
                    path.display()
                ))
            })?;
            // A bundle may hold certificates rustls cannot use; the rest still count.
            let _ = roots.add(cert);
        }
        if roots.is_empty() {
            return Err(AuditError::Config(format!(
                "postgres sslmode=require: {key} {} holds no usable CA certificate",
                path.display()
            )));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| AuditError::Config(format!("postgres TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(RustlsMakeConnect {
            config: Arc::new(config),
        })
    }
}

impl<S> MakeTlsConnect<S> for RustlsMakeConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        let name = ServerName::try_from(domain.to_string()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{domain:?} is not a host name TLS can verify: {e}"),
            )
        })?;
        Ok(RustlsConnect {
            connector: TlsConnector::from(self.config.clone()),
            name,
        })
    }
}

/// One TLS handshake for one host.
pub(crate) struct RustlsConnect {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = self.connector.connect(self.name, stream).await?;
            Ok(RustlsStream(Box::new(tls)))
        })
    }
}

/// The encrypted stream to the server.
pub(crate) struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S> TlsStream for RustlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM channel binding (tls-server-end-point) would need the certificate's signature
        // hash; without it SCRAM-SHA-256 runs over the verified TLS session as usual.
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

//! `portcullis serve`: the gateway's lifetime, from binding the listeners to draining them.
//!
//! Start: the config is built into a [`Generation`] (every error reported as
//! `FILE: KEY: REASON`), the traffic listener binds `server.listen` and logs
//! `listening on http://ADDR` (`https://` with `[server.tls]`), and the admin listener binds
//! `server.admin_listen` when set. Then the file is watched for reloads (see
//! [`crate::reload`]).
//!
//! TLS: with `[server.tls]`, `server.listen` serves HTTPS only (see [`crate::tls`] and
//! [`crate::server`]). SIGHUP re-reads the certificate and key files, as well as the config:
//! new connections get the new certificate, and a file that cannot be used is logged with
//! the reason while the old certificate keeps serving. The files are the ones named at start
//! (changing `[server.tls]` itself needs a restart). With `redirect_http_listen`, a plain-HTTP
//! listener there answers every request with a 308 to the same URL on HTTPS.
//!
//! Stop: SIGTERM or SIGINT closes the listeners (new connections are refused), tells open
//! connections to finish their requests and close, and waits for them up to
//! `server.shutdown_timeout`; connections still open then are dropped. Upgraded (WebSocket)
//! tunnels are not waited for.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::config::{ConfigErrors, GatewayConfig, Stores};
use crate::reload::{Generation, Live};
use crate::server::{Server, TlsAcceptor};
use crate::tls::{TlsAcceptorHandle, TlsError};

/// Why the gateway could not run.
#[derive(Debug)]
pub enum ServeError {
    /// The config was refused.
    Config(ConfigErrors),
    /// The TLS certificate or key could not be used.
    Tls(TlsError),
    /// A listener could not be bound, or a signal handler installed.
    Io {
        /// What was being done.
        what: String,
        /// The system's error.
        source: std::io::Error,
    },
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Config(errors) => write!(f, "{errors}"),
            ServeError::Tls(e) => write!(f, "server.tls: {e}"),
            ServeError::Io { what, source } => write!(f, "{what}: {source}"),
        }
    }
}

impl std::error::Error for ServeError {}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServeError {
    let what = what.into();
    move |source| ServeError::Io { what, source }
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(io_error(format!("cannot listen on {addr} ({what})")))
}

/// Runs the gateway for the config loaded from `path` until SIGTERM or SIGINT.
pub async fn run(path: &Path, config: GatewayConfig) -> Result<(), ServeError> {
    let file = path.display().to_string();
    let stores = Arc::new(Stores::default());
    // The audit writer first: it replays a spool a previous run left behind.
    if let Err(e) = stores.open_audit(&config).await {
        return Err(ServeError::Config(ConfigErrors {
            file: file.clone(),
            errors: vec![e],
        }));
    }
    let generation = Generation::build(config, &stores).map_err(|e| {
        ServeError::Config(ConfigErrors {
            file: file.clone(),
            errors: vec![e],
        })
    })?;
    for w in generation.config.unapplied_settings() {
        tracing::warn!("{file}: {}: warning: {}", w.key, w.reason);
    }
    let server = generation.config.server.clone();
    let live = Live::new(generation, stores);
    let tls = match &server.tls {
        Some(config) => Some(Arc::new(
            TlsAcceptorHandle::from_config(config).map_err(ServeError::Tls)?,
        )),
        None => None,
    };

    // Signal handlers first: until they exist, SIGHUP and SIGTERM kill the process.
    let hangup = signal(SignalKind::hangup()).map_err(io_error("cannot handle SIGHUP"))?;
    // Each handler gets every SIGHUP: one reloads the config, this one the certificate.
    let tls_hangup = match &tls {
        Some(_) => Some(signal(SignalKind::hangup()).map_err(io_error("cannot handle SIGHUP"))?),
        None => None,
    };
    let mut terminate =
        signal(SignalKind::terminate()).map_err(io_error("cannot handle SIGTERM"))?;
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(io_error("cannot handle SIGINT"))?;

    let listener = bind(server.listen, "server.listen").await?;
    let admin = match server.admin_listen {
        Some(addr) if server.admin_listen_explicit => {
            Some(bind(addr, "server.admin_listen").await?)
        }
        // The default admin address is a convenience: when it is taken (another gateway on
        // this machine), serve without it rather than refuse to start.
        Some(addr) => match bind(addr, "server.admin_listen").await {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!("admin listener not started: {e}");
                None
            }
        },
        None => None,
    };
    let redirect_listen = server.tls.as_ref().and_then(|t| t.redirect_http_listen);
    let redirect = match redirect_listen {
        Some(addr) => Some(bind(addr, "server.tls.redirect_http_listen").await?),
        None => None,
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let local = listener
        .local_addr()
        .map_err(io_error("listener address"))?;
    if let Some(admin) = admin {
        if let Ok(addr) = admin.local_addr() {
            tracing::info!("admin listening on http://{addr}");
        }
        tokio::spawn(crate::admin::serve(
            admin,
            live.clone(),
            shutdown_rx.clone(),
        ));
    }
    tokio::spawn(crate::reload::watch(
        path.to_path_buf(),
        live.clone(),
        hangup,
        shutdown_rx.clone(),
    ));
    if let (Some(tls), Some(hangup)) = (&tls, tls_hangup) {
        tokio::spawn(reload_certificate(tls.clone(), hangup, shutdown_rx.clone()));
    }
    let redirecting = match redirect {
        Some(redirect) => {
            if let Ok(addr) = redirect.local_addr() {
                tracing::info!("redirecting http://{addr} to https://…:{}", local.port());
            }
            Some(tokio::spawn(crate::tls::redirect_http_to_https(
                redirect,
                local.port(),
            )))
        }
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let acceptor = tls.map(|t| t as Arc<dyn TlsAcceptor>);
    let traffic = Server::new(listener, live.clone(), acceptor, server.max_connections);
    let accepting = tokio::spawn(traffic.run(shutdown_rx));
    tracing::info!(
        "listening on {scheme}://{local}, forwarding to {}",
        live.current().proxy.upstream_authority()
    );

    let why = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    let grace = live.current().config.server.shutdown_timeout;
    tracing::info!(
        "{why}: shutting down; open requests have {}s to finish",
        grace.as_secs_f32()
    );
    let _ = shutdown_tx.send(true);
    if let Some(redirecting) = redirecting {
        redirecting.abort();
    }
    let drained = match accepting.await {
        Ok(drain) => drain.wait(grace).await,
        Err(e) => {
            tracing::error!(error = %e, "the accept loop failed");
            false
        }
    };
    if drained {
        tracing::info!("all connections closed");
    } else {
        tracing::warn!("shutdown timeout passed; closing the remaining connections");
    }
    // Every event of the finished requests reaches the store (or the spool) before exit.
    live.stores().shutdown_audit().await;
    tracing::info!("audit log flushed; bye");
    Ok(())
}

/// Re-reads the certificate and key on each SIGHUP until `shutdown` turns true; a failed
/// reload is logged and the old certificate keeps serving.
async fn reload_certificate(
    tls: Arc<TlsAcceptorHandle>,
    mut hangup: tokio::signal::unix::Signal,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = crate::server::stopped(&mut shutdown) => return,
            got = hangup.recv() => if got.is_none() { return },
        }
        match tls.reload() {
            Ok(()) => tracing::info!(
                "TLS certificate reloaded (SIGHUP) from {}",
                tls.cert_path().display()
            ),
            Err(e) => tracing::error!(
                "TLS certificate reload (SIGHUP) refused; the previous certificate keeps serving: {e}"
            ),
        }
    }
}

//! `portcullis serve`: the gateway's lifetime, from binding the listeners to draining them.
//!
//! Start: the config is built into a [`Generation`] (every error reported as
//! `FILE: KEY: REASON`), the traffic listener binds `server.listen` and logs
//! `listening on http://ADDR`, and the admin listener binds `server.admin_listen` when set.
//! Then the file is watched for reloads (see [`crate::reload`]).
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
use crate::server::Server;

/// Why the gateway could not run.
#[derive(Debug)]
pub enum ServeError {
    /// The config was refused.
    Config(ConfigErrors),
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

    // Signal handlers first: until they exist, SIGHUP and SIGTERM kill the process.
    let hangup = signal(SignalKind::hangup()).map_err(io_error("cannot handle SIGHUP"))?;
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
    // The TLS acceptor (tls.rs) plugs in here.
    let traffic = Server::new(listener, live.clone(), None, server.max_connections);
    let accepting = tokio::spawn(traffic.run(shutdown_rx));
    tracing::info!(
        "listening on http://{local}, forwarding to {}",
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

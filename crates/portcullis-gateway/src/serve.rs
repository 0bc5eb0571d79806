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
//! Threads: with `server.threading = "per-core"` (the default), `server.workers` threads
//! (0: one per core) each run a single-threaded runtime with its own `SO_REUSEPORT`
//! listener on `server.listen` and its own upstream pool, so a request is read, checked,
//! proxied and answered on one thread; the kernel spreads new connections over the
//! listeners. Signals, reloads, the admin listener and the audit writer run on the main
//! thread. Before the listeners bind, the address is probed with a plain bind, so a port
//! another process holds is refused as `cannot listen on ADDR` rather than shared. With
//! `"work-stealing"`, one listener feeds one multi-threaded runtime of `server.workers`
//! threads (see [`Threading`]).
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
use tokio::sync::{Semaphore, oneshot, watch};

use crate::config::{ConfigErrors, GatewayConfig, Stores, Threading};
use crate::reload::{FileStamp, Generation, Live};
use crate::server::{Server, TlsAcceptor};
use crate::tls::{TlsAcceptorHandle, TlsError};

/// Why the gateway could not run.
///
/// ```
/// use portcullis_gateway::{config::GatewayConfig, serve::ServeError};
/// let err = ServeError::Config(GatewayConfig::from_str("", "portcullis.toml").unwrap_err());
/// assert_eq!(err.to_string(), "portcullis.toml: server.upstream: required: the URL of the application behind the gateway");
/// ```
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

/// Runs the gateway for the config loaded from `path` until SIGTERM or SIGINT. `loaded` is
/// the file's [`FileStamp`] taken just before `config` was read: a write after it reloads.
///
/// ```no_run
/// use portcullis_gateway::{config::GatewayConfig, reload::FileStamp, serve};
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// let path = std::path::Path::new("portcullis.toml");
/// let loaded = FileStamp::of(path);
/// let config = GatewayConfig::from_file(path)?;
/// serve::run(path, loaded, config).await?;
/// # Ok(()) }
/// ```
pub async fn run(
    path: &Path,
    loaded: Option<FileStamp>,
    config: GatewayConfig,
) -> Result<(), ServeError> {
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
        // Refused like the rest of the file (`FILE: server.tls.cert: …`, exit 2), as
        // `check-config` reports it.
        Some(config) => Some(Arc::new(TlsAcceptorHandle::from_config(config).map_err(
            |e| {
                ServeError::Config(ConfigErrors {
                    file: file.clone(),
                    errors: vec![e.to_config_error(config)],
                })
            },
        )?)),
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

    let listeners = match server.threading {
        Threading::WorkStealing => {
            Listeners::Shared(bound_socket(server.listen, false).map_err(io_error(format!(
                "cannot listen on {} (server.listen)",
                server.listen
            )))?)
        }
        Threading::PerCore => {
            Listeners::PerCore(bind_per_core(server.listen, worker_count(server.workers))?)
        }
    };
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
    let local = listeners.local_addr()?;
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
        loaded,
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
    // Announced before the sockets listen: whoever sees the port open also finds the line.
    tracing::info!(
        "listening on {scheme}://{local}, forwarding to {}",
        live.current().proxy.upstream_authority()
    );
    let traffic = listeners.serve(&live, acceptor, server.max_connections, shutdown_rx)?;

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
    let drained = traffic.finish(grace).await;
    if drained {
        tracing::info!("all connections closed");
    } else {
        tracing::warn!("shutdown timeout passed; closing the remaining connections");
    }
    // Every event of the finished requests reaches the store (or the spool) before exit.
    live.stores().shutdown_audit().await;
    tracing::info!("bye");
    Ok(())
}

/// The number of worker threads `server.workers` asks for (0: one per core).
///
/// ```
/// use portcullis_gateway::serve::worker_count;
/// assert_eq!(worker_count(3), 3);
/// assert!(worker_count(0) >= 1);
/// ```
pub fn worker_count(workers: usize) -> usize {
    if workers > 0 {
        return workers;
    }
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The traffic sockets, bound but not listening yet (connections are refused until
/// [`Listeners::serve`]).
enum Listeners {
    /// One listener for the multi-threaded runtime.
    Shared(socket2::Socket),
    /// One `SO_REUSEPORT` listener per worker thread.
    PerCore(Vec<socket2::Socket>),
}

/// The backlog of each traffic listener (the kernel caps it at `net.core.somaxconn`).
const BACKLOG: i32 = 4096;

/// The traffic being served: wait for it to drain with [`Traffic::finish`].
enum Traffic {
    /// The accept loop on the multi-threaded runtime.
    Shared(tokio::task::JoinHandle<crate::server::Drain>),
    /// Each worker thread reports whether its connections drained within the grace time.
    PerCore(Vec<oneshot::Receiver<bool>>),
}

/// Binds `workers` sockets on `addr` with `SO_REUSEPORT`. A plain bind first makes sure
/// nothing else holds the address (a `SO_REUSEPORT` bind would silently share it with
/// another process of the same user), and turns port 0 into the one port every worker binds.
fn bind_per_core(addr: SocketAddr, workers: usize) -> Result<Vec<socket2::Socket>, ServeError> {
    let what = format!("cannot listen on {addr} (server.listen)");
    let addr = {
        let probe = bound_socket(addr, false).map_err(io_error(what.clone()))?;
        socket_addr(&probe).map_err(io_error(what.clone()))?
    };
    (0..workers.max(1))
        .map(|_| bound_socket(addr, true).map_err(io_error(what.clone())))
        .collect()
}

/// A non-blocking TCP socket bound to `addr` with `SO_REUSEADDR` (and `SO_REUSEPORT` when
/// asked), not listening yet.
fn bound_socket(addr: SocketAddr, reuse_port: bool) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

fn socket_addr(socket: &socket2::Socket) -> std::io::Result<SocketAddr> {
    socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| std::io::Error::other("not an IP socket"))
}

/// Starts listening on a bound socket.
fn listen(socket: socket2::Socket) -> Result<std::net::TcpListener, ServeError> {
    let what = match socket_addr(&socket) {
        Ok(addr) => format!("cannot listen on {addr} (server.listen)"),
        Err(_) => "cannot listen (server.listen)".to_string(),
    };
    socket.listen(BACKLOG).map_err(io_error(what))?;
    Ok(socket.into())
}

impl Listeners {
    fn local_addr(&self) -> Result<SocketAddr, ServeError> {
        let addr = match self {
            Listeners::Shared(l) => socket_addr(l),
            Listeners::PerCore(ls) => match ls.first() {
                Some(l) => socket_addr(l),
                None => Err(std::io::Error::other("no listener")),
            },
        };
        addr.map_err(io_error("listener address"))
    }

    /// Starts accepting: a task on this runtime, or one thread per listener.
    fn serve(
        self,
        live: &Live,
        acceptor: Option<Arc<dyn TlsAcceptor>>,
        max_connections: usize,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Traffic, ServeError> {
        match self {
            Listeners::Shared(socket) => {
                let listener = TcpListener::from_std(listen(socket)?)
                    .map_err(io_error("cannot register the listener"))?;
                let server = Server::new(listener, live.clone(), acceptor, max_connections);
                Ok(Traffic::Shared(tokio::spawn(server.run(shutdown))))
            }
            Listeners::PerCore(listeners) => {
                let slots = Arc::new(Semaphore::new(max_connections));
                let mut done = Vec::with_capacity(listeners.len());
                for (i, socket) in listeners.into_iter().enumerate() {
                    let listener = listen(socket)?;
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(io_error("cannot start a worker runtime"))?;
                    let (tx, rx) = oneshot::channel();
                    let live = live.clone();
                    let acceptor = acceptor.clone();
                    let slots = slots.clone();
                    let shutdown = shutdown.clone();
                    std::thread::Builder::new()
                        .name(format!("portcullis-worker-{i}"))
                        .spawn(move || {
                            runtime.block_on(async move {
                                let drained = match TcpListener::from_std(listener) {
                                    Ok(listener) => {
                                        let server = Server::with_slots(
                                            listener,
                                            live.clone(),
                                            acceptor,
                                            slots,
                                        );
                                        let drain = server.run(shutdown).await;
                                        let grace = live.current().config.server.shutdown_timeout;
                                        drain.wait(grace).await
                                    }
                                    Err(e) => {
                                        tracing::error!(error = %e, "worker {i}: listener refused");
                                        true
                                    }
                                };
                                let _ = tx.send(drained);
                            });
                        })
                        .map_err(io_error("cannot start a worker thread"))?;
                    done.push(rx);
                }
                Ok(Traffic::PerCore(done))
            }
        }
    }
}

impl Traffic {
    /// Waits for the open connections to finish, up to `grace`; true when they all did.
    async fn finish(self, grace: std::time::Duration) -> bool {
        match self {
            Traffic::Shared(accepting) => match accepting.await {
                Ok(drain) => drain.wait(grace).await,
                Err(e) => {
                    tracing::error!(error = %e, "the accept loop failed");
                    false
                }
            },
            Traffic::PerCore(workers) => {
                let mut all = true;
                for worker in workers {
                    // A worker that panicked dropped its sender: its connections are gone.
                    all &= worker.await.unwrap_or(false);
                }
                all
            }
        }
    }
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

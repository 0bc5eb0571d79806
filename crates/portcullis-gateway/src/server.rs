//! The traffic listener: accepting connections, the server limits, graceful draining.
//!
//! An HTTP/1.1 connection starts with the gateway's own reader and writer (`server/h1.rs`),
//! which serves requests without a body — most of them — on the connection's task. The first
//! request it does not serve (a body, an upgrade, `Expect`, HTTP/1.0, HTTP/2's preface, or
//! anything `httparse` refuses) hands the connection, with the bytes already read, to
//! hyper-util's `auto` builder (HTTP/1.1, and HTTP/2 with prior knowledge, with upgrades
//! enabled for WebSocket passthrough), which serves it from then on; both call the same
//! service and answer the same way. Over TLS the protocol is the one ALPN chose (`h2`, served
//! by hyper from the start, or `http/1.1`; HTTP/1.1 when the client offered none), and every
//! request is marked [`Https`] so HSTS is sent only over HTTPS. The limits of `[server]` and
//! how they behave:
//!
//! - `max_connections`: a semaphore shared by every listener. At the limit, a listener
//!   holds the connection it just accepted unread until a slot frees, and accepts nothing
//!   more meanwhile, so excess connections wait (their TCP handshake completes, but nothing
//!   is read); a client that gives up first sees a timeout. The slot travels with the
//!   socket, so an upgraded (WebSocket) connection holds it until it closes.
//! - `max_header_bytes`: header fields (`name: value\r\n`) over the limit get the JSON 431
//!   `headers_too_large`. hyper's read buffer is capped `HEADER_SLACK` bytes above it, and
//!   at least 64 KiB (so bodies are read, and sent on, in large pieces): a header block too
//!   large for that buffer, or with more than 100 fields, is refused by hyper itself and the
//!   connection is closed; the answer is still the JSON 431 (see below). Over HTTP/2 the
//!   header list is capped `HEADER_SLACK` bytes above the limit: h2 answers 431 itself, or
//!   sends GOAWAY (`ENHANCE_YOUR_CALM`) for a list far over the cap.
//! - `header_read_timeout`: the TLS handshake, then the first request's headers, must each
//!   complete within it from the moment the connection is accepted (or the handshake ends); on a kept-alive HTTP/1 connection, from the first
//!   byte of the next request. A client trickling header bytes (slowloris) gets the JSON 408
//!   `request_timeout` at the deadline (audited, with what its request line showed) and its
//!   connection closed; other connections are unaffected. (A head hyper reads — on a
//!   connection hyper took over after a request with a body — is closed unanswered.)
//! - `idle_timeout`: a connection with no request in flight and no bytes moving for this
//!   long is closed (HTTP/1) or sent GOAWAY (HTTP/2), never sooner and at most an eighth of
//!   it later (reads and writes only raise a flag; the watchdog reads the clock). A
//!   connection that never completes a first request is closed after `header_read_timeout`.
//!   A connection whose client takes no byte of its response for `idle_timeout` (its socket
//!   full: a slow-read attack, or a client gone without a word) is closed too, with the
//!   upstream exchange streaming to it, as nginx's `send_timeout` does; a response with
//!   nothing to send yet (a quiet event stream, a long poll) is never cut, nor a client that
//!   reads slowly but reads.
//! - `request_timeout` and the upstream timeouts: see [`crate::proxy`].
//! - A request hyper cannot parse (a malformed request line or header, a header block over
//!   its buffer, a target over 64 KiB) never reaches the service: hyper writes a bare 400,
//!   431 or 414 and closes. The connection's IO writes the JSON error in its place, with a
//!   request id and the security headers (`malformed_request`, `headers_too_large` or
//!   `uri_too_long`); responses sent before it on the connection are untouched.
//! - Refusals the security layer never sees — the JSON 431 over `max_header_bytes`, and
//!   the answers to requests hyper cannot parse — are audited like the
//!   layer's: `invalid_input`, `denied`, the socket peer, and the rejection's `code`
//!   (`headers_too_large`, `malformed_request` or `uri_too_long`), `control` and `reason`
//!   in `metadata`, and the request id the answer carried.
//! - `http2_max_concurrent_streams`: streams one HTTP/2 connection may have open at once.
//!
//! Limits are read from the config in force when a connection is accepted, so a reload
//! applies them to new connections; `listen` and `max_connections` need a restart.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Request, Response, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use portcullis::auth::BoxFuture;
use portcullis::client_ip::PeerAddr;
use portcullis::layer::{Https, SecurityBody};
use portcullis::{Rejection, RequestId};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tower::ServiceExt;

use crate::config::ServerConfig;
use crate::reload::{Generation, Live};
use crate::tls::TlsAcceptorHandle;

mod h1;

/// How far above `max_header_bytes` hyper's own read-buffer cap sits: header blocks in
/// between are refused by the service, larger ones by hyper (both get the JSON 431).
///
/// ```
/// use portcullis_gateway::server::HEADER_SLACK;
/// // With the default max_header_bytes (16 KiB), hyper itself refuses header blocks over 24 KiB.
/// assert_eq!(16 * 1024 + HEADER_SLACK, 24 * 1024);
/// ```
pub const HEADER_SLACK: usize = 8 * 1024;

/// hyper's smallest allowed read buffer.
const MIN_BUF: usize = 8 * 1024;

/// The smallest HTTP/1 read-buffer cap: one read takes up to this much of a request body.
/// It also bounds a header block (hyper refuses one that fills the buffer with 431), so
/// a connection holds at most this much of an unfinished head.
const BODY_READ: usize = 64 * 1024;

/// A connection stream: TCP, or TLS over it.
///
/// ```
/// use portcullis_gateway::server::Io;
/// // Any async byte stream is one: TCP, TLS over TCP, or an in-memory pipe in a test.
/// let (client, _server) = tokio::io::duplex(1024);
/// let io: Box<dyn Io> = Box::new(client);
/// # drop(io);
/// ```
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// The HTTP version a TLS client chose by ALPN.
///
/// ```
/// use portcullis_gateway::server::Alpn;
/// let chosen = |alpn: Option<&[u8]>| if alpn == Some(b"h2") { Alpn::Http2 } else { Alpn::Http1 };
/// assert_eq!(chosen(Some(b"h2")), Alpn::Http2);
/// assert_eq!(chosen(None), Alpn::Http1); // no ALPN: HTTP/1.1
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// `h2`.
    Http2,
    /// `http/1.1`, or no ALPN at all.
    Http1,
}

/// A finished TLS handshake: the decrypted stream and the protocol agreed on.
///
/// ```
/// use portcullis_gateway::server::{Alpn, TlsConnection};
/// let (decrypted, _peer) = tokio::io::duplex(1024);
/// let conn = TlsConnection { io: Box::new(decrypted), alpn: Alpn::Http2 };
/// assert_eq!(conn.alpn, Alpn::Http2); // served as HTTP/2
/// ```
pub struct TlsConnection {
    /// The stream to serve HTTP on.
    pub io: Box<dyn Io>,
    /// The protocol ALPN chose.
    pub alpn: Alpn,
}

/// Turns an accepted TCP stream into a TLS stream; [`TlsAcceptorHandle`] is the gateway's.
///
/// ```
/// # use std::{io, sync::Arc, time::Duration};
/// # use portcullis::auth::BoxFuture;
/// use portcullis_gateway::server::{Alpn, TlsAcceptor, TlsConnection};
/// /// Plain HTTP/1.1 where TLS would be (a test, or TLS ended by a load balancer).
/// struct Plain;
/// impl TlsAcceptor for Plain {
///     fn accept(&self, tcp: tokio::net::TcpStream, _: Duration) -> BoxFuture<'static, io::Result<TlsConnection>> {
///         Box::pin(async move { Ok(TlsConnection { io: Box::new(tcp), alpn: Alpn::Http1 }) })
///     }
/// }
/// let tls: Option<Arc<dyn TlsAcceptor>> = Some(Arc::new(Plain)); // for `Server::new`
/// ```
pub trait TlsAcceptor: Send + Sync + 'static {
    /// Runs the TLS handshake, giving up after `timeout` (`header_read_timeout`).
    fn accept(
        &self,
        tcp: TcpStream,
        timeout: Duration,
    ) -> BoxFuture<'static, io::Result<TlsConnection>>;
}

impl TlsAcceptor for TlsAcceptorHandle {
    fn accept(
        &self,
        tcp: TcpStream,
        timeout: Duration,
    ) -> BoxFuture<'static, io::Result<TlsConnection>> {
        // The acceptor in force now: a certificate reloaded later applies to later connections.
        let acceptor = self.acceptor();
        Box::pin(async move {
            let tls = tokio::time::timeout(timeout, acceptor.accept(tcp))
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                })??;
            let alpn = match tls.get_ref().1.alpn_protocol() {
                Some(b"h2") => Alpn::Http2,
                _ => Alpn::Http1,
            };
            Ok(TlsConnection {
                io: Box::new(tls),
                alpn,
            })
        })
    }
}

/// The per-connection limits, taken from `[server]` when a connection is accepted.
///
/// ```
/// # use std::time::Duration;
/// use portcullis_gateway::{config::GatewayConfig, server::ConnectionLimits};
/// let config = GatewayConfig::from_str("server.upstream = \"http://127.0.0.1:3000\"", "portcullis.toml")?;
/// let limits = ConnectionLimits::of(&config.server);
/// assert_eq!((limits.max_header_bytes, limits.http2_max_concurrent_streams), (16_384, 100));
/// assert_eq!((limits.header_read_timeout, limits.idle_timeout), (Duration::from_secs(10), Duration::from_secs(60)));
/// # Ok::<(), portcullis_gateway::config::ConfigErrors>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Header-field bytes accepted (JSON 431 beyond).
    pub max_header_bytes: usize,
    /// Time to receive a request's headers.
    pub header_read_timeout: Duration,
    /// Time a connection may sit with nothing in flight.
    pub idle_timeout: Duration,
    /// Concurrent HTTP/2 streams per connection.
    pub http2_max_concurrent_streams: u32,
}

impl ConnectionLimits {
    /// The limits of a `[server]` section.
    ///
    /// ```
    /// # use std::time::Duration;
    /// use portcullis_gateway::{config::GatewayConfig, server::ConnectionLimits};
    /// let limits = ConnectionLimits::of(&GatewayConfig::from_str(r#"
    /// server.upstream = "http://127.0.0.1:3000"
    /// server.max_header_bytes = 32768
    /// server.idle_timeout = "2m"
    /// "#, "portcullis.toml")?.server);
    /// assert_eq!((limits.max_header_bytes, limits.idle_timeout), (32_768, Duration::from_secs(120)));
    /// # Ok::<(), portcullis_gateway::config::ConfigErrors>(())
    /// ```
    pub fn of(server: &ServerConfig) -> Self {
        ConnectionLimits {
            max_header_bytes: server.max_header_bytes,
            header_read_timeout: server.header_read_timeout,
            idle_timeout: server.idle_timeout,
            http2_max_concurrent_streams: server.http2_max_concurrent_streams,
        }
    }

    /// The HTTP/2 header-list cap.
    fn hard_header_cap(&self) -> usize {
        (self.max_header_bytes + HEADER_SLACK).max(MIN_BUF)
    }

    /// hyper's HTTP/1 read-buffer cap: the header cap, but at least [`BODY_READ`], so a body
    /// moves in large reads (and as large writes to the upstream) rather than 24 KiB at a time.
    fn read_buf_cap(&self) -> usize {
        self.hard_header_cap().max(BODY_READ)
    }
}

/// The traffic listener.
///
/// ```no_run
/// # use std::time::Duration;
/// use portcullis_gateway::server::Server;
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// # let config = portcullis_gateway::config::GatewayConfig::from_file("portcullis.toml")?;
/// # let stores = std::sync::Arc::new(portcullis_gateway::config::Stores::default());
/// # let live = portcullis_gateway::reload::Live::new(portcullis_gateway::reload::Generation::build(config, &stores)?, stores);
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// let (stop, shutdown) = tokio::sync::watch::channel(false);
/// let server = tokio::spawn(Server::new(listener, live, None, 10_000).run(shutdown));
/// tokio::signal::ctrl_c().await?;
/// stop.send(true)?;
/// let all_closed = server.await?.wait(Duration::from_secs(30)).await;
/// # Ok(()) }
/// ```
pub struct Server {
    listener: TcpListener,
    live: Live,
    tls: Option<Arc<dyn TlsAcceptor>>,
    slots: Arc<Semaphore>,
}

impl Server {
    /// A server on a bound listener, serving the live config; `tls` terminates TLS when set.
    ///
    /// ```no_run
    /// use portcullis_gateway::server::Server;
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// # let config = portcullis_gateway::config::GatewayConfig::from_file("portcullis.toml")?;
    /// # let stores = std::sync::Arc::new(portcullis_gateway::config::Stores::default());
    /// # let live = portcullis_gateway::reload::Live::new(portcullis_gateway::reload::Generation::build(config, &stores)?, stores);
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    /// let max_connections = live.current().config.server.max_connections;
    /// let server = Server::new(listener, live, None, max_connections); // plain HTTP
    /// # Ok(()) }
    /// ```
    pub fn new(
        listener: TcpListener,
        live: Live,
        tls: Option<Arc<dyn TlsAcceptor>>,
        max_connections: usize,
    ) -> Self {
        Server::with_slots(
            listener,
            live,
            tls,
            Arc::new(Semaphore::new(max_connections)),
        )
    }

    /// A server whose connection slots (`max_connections`) are shared with other listeners:
    /// the per-core workers of [`Threading::PerCore`](crate::config::Threading::PerCore)
    /// each run one, and together never hold more than the limit.
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// use portcullis_gateway::server::Server;
    /// use tokio::sync::Semaphore;
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// # let config = portcullis_gateway::config::GatewayConfig::from_file("portcullis.toml")?;
    /// # let stores = std::sync::Arc::new(portcullis_gateway::config::Stores::default());
    /// # let live = portcullis_gateway::reload::Live::new(portcullis_gateway::reload::Generation::build(config, &stores)?, stores);
    /// let slots = Arc::new(Semaphore::new(10_000)); // for both listeners together
    /// let v4 = Server::with_slots(tokio::net::TcpListener::bind("0.0.0.0:8080").await?, live.clone(), None, slots.clone());
    /// let v6 = Server::with_slots(tokio::net::TcpListener::bind("[::]:8080").await?, live, None, slots);
    /// # Ok(()) }
    /// ```
    pub fn with_slots(
        listener: TcpListener,
        live: Live,
        tls: Option<Arc<dyn TlsAcceptor>>,
        slots: Arc<Semaphore>,
    ) -> Self {
        Server {
            listener,
            live,
            tls,
            slots,
        }
    }

    /// Accepts connections until `shutdown` turns true, then closes the listener (new
    /// connections are refused) and tells open connections to finish; the returned
    /// [`Drain`] waits for them.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// use portcullis_gateway::server::Server;
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// # let config = portcullis_gateway::config::GatewayConfig::from_file("portcullis.toml")?;
    /// # let stores = std::sync::Arc::new(portcullis_gateway::config::Stores::default());
    /// # let live = portcullis_gateway::reload::Live::new(portcullis_gateway::reload::Generation::build(config, &stores)?, stores);
    /// # let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    /// let (stop, shutdown) = tokio::sync::watch::channel(false);
    /// let running = tokio::spawn(Server::new(listener, live, None, 10_000).run(shutdown));
    /// // ... on SIGTERM:
    /// stop.send(true)?;
    /// let drain = running.await?; // the listener is closed now
    /// # Ok(()) }
    /// ```
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Drain {
        let (done_tx, done_rx) = mpsc::channel::<()>(1);
        loop {
            let (tcp, peer) = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = crate::server::stopped(&mut shutdown) => break,
            };
            // At the limit, this connection waits unread for a free slot, and this listener
            // accepts nothing more until it has one.
            let permit = match self.slots.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => tokio::select! {
                    p = self.slots.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    _ = crate::server::stopped(&mut shutdown) => break,
                },
            };
            let _ = tcp.set_nodelay(true);
            let conn = Connection {
                peer,
                live: self.live.clone(),
                shutdown: shutdown.clone(),
                permit,
                _done: done_tx.clone(),
            };
            let tls = self.tls.clone();
            tokio::spawn(conn.run(tcp, tls));
        }
        drop(self.listener);
        Drain { done: done_rx }
    }
}

/// Resolves once `shutdown` turns true (or its sender is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// [`stopped`], owning its receiver, to keep pinned across a loop.
async fn stopped_owned(mut shutdown: watch::Receiver<bool>) {
    stopped(&mut shutdown).await;
}

/// Waits for open connections to finish after shutdown.
///
/// ```no_run
/// # use std::time::Duration;
/// # use portcullis_gateway::server::Server;
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// # let config = portcullis_gateway::config::GatewayConfig::from_file("portcullis.toml")?;
/// # let stores = std::sync::Arc::new(portcullis_gateway::config::Stores::default());
/// # let live = portcullis_gateway::reload::Live::new(portcullis_gateway::reload::Generation::build(config, &stores)?, stores);
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// # let (stop, shutdown) = tokio::sync::watch::channel(false);
/// # let running = tokio::spawn(Server::new(listener, live, None, 10_000).run(shutdown));
/// stop.send(true)?;
/// let drain = running.await?;
/// if !drain.wait(Duration::from_secs(30)).await {
///     eprintln!("shutdown timeout passed; closing the remaining connections");
/// }
/// # Ok(()) }
/// ```
pub struct Drain {
    done: mpsc::Receiver<()>,
}

impl Drain {
    /// Waits up to `timeout`; true when every connection finished.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # async fn f(drain: portcullis_gateway::server::Drain) {
    /// let all_finished = drain.wait(Duration::from_secs(30)).await; // false: some were still open
    /// # }
    /// ```
    pub async fn wait(mut self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, async { while self.done.recv().await.is_some() {} })
            .await
            .is_ok()
    }
}

struct Connection {
    peer: SocketAddr,
    live: Live,
    shutdown: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
    /// Dropped when the connection ends; [`Drain`] waits for every one.
    _done: mpsc::Sender<()>,
}

impl Connection {
    async fn run(self, tcp: TcpStream, tls: Option<Arc<dyn TlsAcceptor>>) {
        let limits = ConnectionLimits::of(&self.live.current().config.server);
        match tls {
            None => self.serve(tcp, None, limits).await,
            Some(acceptor) => match acceptor.accept(tcp, limits.header_read_timeout).await {
                Ok(tls) => self.serve(tls.io, Some(tls.alpn), limits).await,
                Err(e) => {
                    tracing::debug!(peer = %self.peer, error = %e, "TLS handshake failed")
                }
            },
        }
    }

    /// Serves HTTP on `io`: plain (`alpn` is `None`: HTTP/1.1 or HTTP/2 with prior knowledge,
    /// told apart by the first bytes) or over TLS (the ALPN protocol only).
    async fn serve<I: Io>(self, io: I, alpn: Option<Alpn>, limits: ConnectionLimits) {
        let Connection {
            peer,
            live,
            shutdown,
            permit,
            _done,
        } = self;
        let https = alpn.is_some();
        // The handshake's time does not count against the first request's headers.
        let state = Arc::new(ConnState::new());
        let io = TrackedIo {
            inner: io,
            state: state.clone(),
            _permit: permit,
            answers: Some(ErrorAnswers {
                live: live.clone(),
                https,
            }),
            replacing: None,
            unread: BytesMut::new(),
        };
        let audit_live = live.clone();
        let service = ConnService {
            live,
            peer,
            https,
            state: state.clone(),
            max_header_bytes: limits.max_header_bytes,
        };
        // The watchdog is lazy: nothing wakes it per request. When its timer fires it looks
        // at what the connection did (requests in flight, bytes moved since it last looked)
        // and either acts or sleeps until the deadline that activity implies, or a tick. The
        // futures live across iterations, so a wake-up for socket readiness costs one poll of
        // each.
        let stop = crate::server::stopped_owned(shutdown);
        tokio::pin!(stop);
        let (_, first) = state.verdict(&limits);
        let timer = tokio::time::sleep_until(first.into());
        tokio::pin!(timer);
        let mut draining = false;

        // HTTP/1.1 (not HTTP/2 by ALPN): bodiless requests are served by the gateway's own
        // reader (`h1`) until one needs hyper, which then takes the connection.
        let (io, prefix) = if alpn == Some(Alpn::Http2) {
            (io, BytesMut::new())
        } else {
            let fast = h1::serve(
                io,
                service.clone(),
                state.clone(),
                limits.header_read_timeout,
                limits.read_buf_cap(),
            );
            tokio::pin!(fast);
            loop {
                tokio::select! {
                    biased;
                    outcome = fast.as_mut() => match outcome {
                        h1::Outcome::Done => return,
                        h1::Outcome::HandOff(io, prefix) => break (io, prefix),
                    },
                    _ = stop.as_mut(), if !draining => {
                        draining = true;
                        state.draining.store(true, Ordering::Release);
                        // Idle: closed now. Busy: closed after the response in flight.
                        if state.in_flight.load(Ordering::Acquire) == 0 {
                            return;
                        }
                    }
                    _ = timer.as_mut() => {
                        let (verdict, recheck) = state.watch(&limits, peer);
                        if matches!(verdict, Verdict::Silent | Verdict::Idle | Verdict::Stalled) {
                            return;
                        }
                        timer.as_mut().reset(recheck.into());
                    }
                }
            }
        };
        let mut io = io;
        io.unread = prefix;
        let io = TokioIo::new(io);

        let cap = limits.hard_header_cap();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(HeaderTimer {
                state: state.clone(),
            })
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.read_buf_cap())
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.http2_max_concurrent_streams)
            .max_header_list_size(u32::try_from(cap).unwrap_or(u32::MAX));
        let builder = match alpn {
            None => builder,
            Some(Alpn::Http1) => builder.http1_only(),
            Some(Alpn::Http2) => builder.http2_only(),
        };
        let conn = builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(conn);
        if draining {
            conn.as_mut().graceful_shutdown();
        }
        loop {
            tokio::select! {
                biased;
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                        // hyper answered a request it could not parse (400 or 431) itself.
                        if let Some(h) = e.downcast_ref::<hyper::Error>()
                            && h.is_parse()
                        {
                            // The JSON answer that replaced hyper's, if it was written; else
                            // what hyper's own answer said.
                            let (r, id) = state.take_refusal().unwrap_or_else(|| {
                                let r = unparsable(h.is_parse_too_large());
                                (r, RequestId::generate().as_str().to_string())
                            });
                            audit_refusal(&audit_live, peer, &r, ("", ""), &id);
                        }
                    }
                    return;
                }
                _ = stop.as_mut(), if !draining => {
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
                _ = timer.as_mut() => {
                    let (verdict, recheck) = state.watch(&limits, peer);
                    match verdict {
                        Verdict::Silent | Verdict::Stalled => return,
                        Verdict::Idle if draining => return,
                        Verdict::Idle => {
                            conn.as_mut().graceful_shutdown();
                            draining = true;
                            state.touch();
                        }
                        Verdict::Busy | Verdict::Wait => {}
                    }
                    timer.as_mut().reset(recheck.into());
                }
            }
        }
    }
}

/// How long after `header_read_timeout` the watchdog waits for a begun first head's reader
/// to answer it (408) before closing the connection itself.
const HEAD_TIMEOUT_GRACE: Duration = Duration::from_millis(1500);

/// What the connection watchdog concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// A request is in flight.
    Busy,
    /// Nothing to do yet.
    Wait,
    /// Idle past `idle_timeout`.
    Idle,
    /// No request arrived within `header_read_timeout` of the connection opening.
    Silent,
    /// The client has taken no byte of its response for `idle_timeout`.
    Stalled,
}

/// `ConnState::stall_since_ms` when no write to the client waits.
const NOT_STALLED: u64 = u64::MAX;

/// What a connection has done, shared by its IO, its service and its watchdog.
struct ConnState {
    started: Instant,
    /// Raised by every read or write that moved bytes (a store, where a clock read would
    /// cost more than the read itself); the watchdog lowers it.
    active: std::sync::atomic::AtomicBool,
    /// Milliseconds from `started` to when the watchdog last found `active` raised: at or
    /// after the last byte read or written, so an idle connection is never closed early.
    last_seen_ms: AtomicU64,
    bytes_read: AtomicU64,
    /// Writes that moved bytes (the connection has one writer: a load and a store each).
    writes: AtomicU64,
    /// A write waits for the client to take bytes (its socket is full); the next write that
    /// moves bytes lowers it.
    write_waiting: std::sync::atomic::AtomicBool,
    /// The watchdog's own: the `writes` count when it first found a write waiting, and when
    /// (milliseconds from `started`; [`NOT_STALLED`] when no write waits).
    stall_writes: AtomicU64,
    stall_since_ms: AtomicU64,
    requests: AtomicU64,
    in_flight: AtomicUsize,
    /// The refusal and request id of the JSON answer written in place of hyper's own.
    refusal: std::sync::Mutex<Option<(Rejection, String)>>,
    /// The server is draining (or the connection idled out): the gateway's own HTTP/1
    /// reader answers the request in flight with `connection: close`, and takes no other.
    draining: std::sync::atomic::AtomicBool,
}

impl ConnState {
    fn new() -> Self {
        ConnState {
            started: Instant::now(),
            active: std::sync::atomic::AtomicBool::new(false),
            last_seen_ms: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            write_waiting: std::sync::atomic::AtomicBool::new(false),
            stall_writes: AtomicU64::new(0),
            stall_since_ms: AtomicU64::new(NOT_STALLED),
            requests: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            refusal: std::sync::Mutex::new(None),
            draining: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn take_refusal(&self) -> Option<(Rejection, String)> {
        match self.refusal.lock() {
            Ok(mut r) => r.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        }
    }

    fn set_refusal(&self, refusal: (Rejection, String)) {
        match self.refusal.lock() {
            Ok(mut r) => *r = Some(refusal),
            Err(poisoned) => *poisoned.into_inner() = Some(refusal),
        }
    }

    /// Notes what a write to the client did: bytes moved, or it waits for the client.
    fn note_write(&self, res: &Poll<io::Result<usize>>) {
        match res {
            Poll::Ready(Ok(n)) if *n > 0 => {
                self.touch();
                self.write_done();
            }
            Poll::Pending => self.write_waits(),
            Poll::Ready(_) => {}
        }
    }

    /// Bytes went out to the client: no write waits now.
    fn write_done(&self) {
        self.writes.store(
            self.writes.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
        if self.write_waiting.load(Ordering::Relaxed) {
            self.write_waiting.store(false, Ordering::Relaxed);
        }
    }

    /// A write to the client waits: its socket takes no more bytes for now.
    fn write_waits(&self) {
        if !self.write_waiting.load(Ordering::Relaxed) {
            self.write_waiting.store(true, Ordering::Relaxed);
        }
    }

    /// Whether a write to the client has waited, without a byte moving, for `limit`: a
    /// client that stopped reading its response (a slow-read attack holds the connection,
    /// and the upstream connection streaming to it, for as long as it likes otherwise).
    /// Measured from the first look that found the write waiting: at most a tick late.
    fn write_stalled(&self, now: Instant, limit: Duration) -> bool {
        if !self.write_waiting.load(Ordering::Relaxed) {
            self.stall_since_ms.store(NOT_STALLED, Ordering::Relaxed);
            return false;
        }
        let now_ms = u64::try_from((now - self.started).as_millis()).unwrap_or(u64::MAX - 1);
        let writes = self.writes.load(Ordering::Relaxed);
        let since = self.stall_since_ms.load(Ordering::Relaxed);
        if since == NOT_STALLED || self.stall_writes.load(Ordering::Relaxed) != writes {
            self.stall_writes.store(writes, Ordering::Relaxed);
            self.stall_since_ms.store(now_ms, Ordering::Relaxed);
            return false;
        }
        now_ms.saturating_sub(since) >= u64::try_from(limit.as_millis()).unwrap_or(u64::MAX)
    }

    /// Notes activity: bytes moved, a request finished.
    fn touch(&self) {
        // Read first: most reads and writes find it raised already.
        if !self.active.load(Ordering::Relaxed) {
            self.active.store(true, Ordering::Relaxed);
        }
    }

    /// The watchdog's verdict ([`ConnState::verdict`]), logged when it closes the
    /// connection.
    fn watch(&self, limits: &ConnectionLimits, peer: SocketAddr) -> (Verdict, Instant) {
        let (verdict, recheck) = self.verdict(limits);
        match verdict {
            Verdict::Silent => {
                tracing::debug!(%peer, "no request within the header read timeout: closing");
            }
            Verdict::Idle => tracing::debug!(%peer, "idle: closing"),
            Verdict::Stalled => {
                tracing::debug!(%peer, "the client took no byte of its response within the idle timeout: closing");
            }
            Verdict::Busy | Verdict::Wait => {}
        }
        (verdict, recheck)
    }

    fn verdict(&self, limits: &ConnectionLimits) -> (Verdict, Instant) {
        let now = Instant::now();
        // The watchdog looks at least this often, so activity is dated at most this late.
        let tick = (limits.idle_timeout / 8).max(Duration::from_millis(10));
        if self.active.swap(false, Ordering::AcqRel) {
            let ms = u64::try_from((now - self.started).as_millis()).unwrap_or(u64::MAX);
            self.last_seen_ms.store(ms, Ordering::Relaxed);
        }
        if self.in_flight.load(Ordering::Acquire) > 0 {
            if self.write_stalled(now, limits.idle_timeout) {
                return (Verdict::Stalled, now);
            }
            return (Verdict::Busy, now + tick);
        }
        if self.requests.load(Ordering::Acquire) == 0 {
            let mut deadline = self.started + limits.header_read_timeout;
            if self.bytes_read.load(Ordering::Acquire) > 0 {
                // A head has begun: its reader answers it 408 at the deadline, and the
                // watchdog closes the connection only if that did not happen.
                deadline += HEAD_TIMEOUT_GRACE;
            }
            // Nothing wakes the watchdog when the first request comes and goes, so it looks
            // again no later than a tick from now.
            return if now >= deadline {
                (Verdict::Silent, now)
            } else {
                (Verdict::Wait, deadline.min(now + tick))
            };
        }
        let last = self.started + Duration::from_millis(self.last_seen_ms.load(Ordering::Relaxed));
        let deadline = last + limits.idle_timeout;
        if now >= deadline {
            (Verdict::Idle, now + limits.idle_timeout)
        } else {
            (Verdict::Wait, deadline.min(now + tick))
        }
    }
}

/// Counts a request in flight from the moment the service is called until its response
/// body is finished or dropped.
struct InFlight(Arc<ConnState>);

impl InFlight {
    fn enter(state: &Arc<ConnState>) -> Self {
        state.requests.fetch_add(1, Ordering::AcqRel);
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The socket, counting bytes and activity for the watchdog, and holding the connection's
/// slot until it is closed.
///
/// It also puts the JSON error in place of hyper's own bare answer to a request hyper could
/// not parse (400, 414 or 431, with no body): see [`hyper_error_head`].
struct TrackedIo<I> {
    inner: I,
    state: Arc<ConnState>,
    _permit: OwnedSemaphorePermit,
    /// What the JSON answers are built from; `None` once one is written.
    answers: Option<ErrorAnswers>,
    /// A JSON answer being written in place of hyper's.
    replacing: Option<Replacement>,
    /// What the gateway's own HTTP/1 reader read and left to hyper: read first.
    unread: BytesMut,
}

/// What the JSON answer to an unparsable request is built from.
struct ErrorAnswers {
    live: Live,
    https: bool,
}

/// The JSON answer being written, and how many of hyper's bytes it stands for.
struct Replacement {
    bytes: Vec<u8>,
    written: usize,
    replaces: usize,
}

/// What the next write should do with hyper's bytes.
enum WritePlan {
    /// Write them as they are.
    Pass,
    /// Write only the first this many: hyper's own error answer follows them.
    Before(usize),
    /// Write the replacement (hyper's error answer starts the write).
    Replace,
}

impl<I: Io> TrackedIo<I> {
    /// Looks for hyper's error answer at the end of the bytes hyper asks to write. hyper
    /// writes it last, with nothing queued after it, then closes the connection.
    fn plan(&mut self, bufs: &[io::IoSlice<'_>]) -> WritePlan {
        let Some(answers) = &self.answers else {
            return WritePlan::Pass;
        };
        let Some(last) = bufs.iter().rev().find(|b| !b.is_empty()) else {
            return WritePlan::Pass;
        };
        let Some((len, status, date)) = hyper_error_head(last) else {
            return WritePlan::Pass;
        };
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total > len {
            return WritePlan::Before(total - len);
        }
        let (bytes, refusal) = answers.render(status, date);
        self.state.set_refusal(refusal);
        self.answers = None;
        self.replacing = Some(Replacement {
            bytes,
            written: 0,
            replaces: len,
        });
        WritePlan::Replace
    }

    /// Writes the replacement; done, it reports hyper's bytes as written.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(r) = &mut self.replacing else {
            return Poll::Ready(Ok(0));
        };
        while r.written < r.bytes.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &r.bytes[r.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    r.written += n;
                    self.state.touch();
                }
                other => return other,
            }
        }
        let replaces = r.replaces;
        self.replacing = None;
        Poll::Ready(Ok(replaces))
    }
}

impl ErrorAnswers {
    /// The whole HTTP/1.1 response for hyper's `status`: the JSON error, the request id, the
    /// security headers, `connection: close`, and hyper's `date`.
    fn render(&self, status: StatusCode, date: &[u8]) -> (Vec<u8>, (Rejection, String)) {
        let r = unparsable_status(status);
        let id = RequestId::generate();
        let out = refusal_bytes(&self.live.current(), &r, id.as_str(), self.https, date);
        (out, (r, id.as_str().to_string()))
    }
}

/// The whole HTTP/1.1 response refusing `r` on a connection the gateway then closes: the JSON
/// error with request id `id`, the security headers, `connection: close` and `date`.
fn refusal_bytes(
    generation: &Generation,
    r: &Rejection,
    id: &str,
    https: bool,
    date: &[u8],
) -> Vec<u8> {
    let status = r.status();
    let res = refusal_response(generation, r.clone(), id, https);
    let body = res.body();
    let mut out = Vec::with_capacity(1024 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in res.headers() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"connection: close\r\ncontent-length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\ndate: ");
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(body);
    out
}

/// hyper's own answer to a request it could not parse, if `bytes` end with one: its length,
/// status and `date` value. hyper writes exactly
/// `HTTP/1.1 <status> <reason>\r\n[connection: close\r\n]content-length: 0\r\ndate: <date>\r\n\r\n`
/// (statuses 400, 414 and 431), and never sends a response of ours without the headers the
/// layer adds (`x-request-id` at least), so nothing else has this shape.
fn hyper_error_head(bytes: &[u8]) -> Option<(usize, StatusCode, &[u8])> {
    const DATE: usize = 29; // "Mon, 07 Dec 2026 00:34:52 GMT"
    const END: &[u8] = b" GMT\r\n\r\n";
    const MIDDLES: [&[u8]; 2] = [
        b"\r\nconnection: close\r\ncontent-length: 0\r\ndate: ",
        b"\r\ncontent-length: 0\r\ndate: ",
    ];
    const LINES: [(&[u8], StatusCode); 3] = [
        (b"HTTP/1.1 400 Bad Request", StatusCode::BAD_REQUEST),
        (
            b"HTTP/1.1 431 Request Header Fields Too Large",
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        ),
        (b"HTTP/1.1 414 URI Too Long", StatusCode::URI_TOO_LONG),
    ];
    if !bytes.ends_with(END) {
        return None;
    }
    let date_start = bytes.len().checked_sub(4 + DATE)?;
    for middle in MIDDLES {
        let Some(middle_start) = date_start.checked_sub(middle.len()) else {
            continue;
        };
        if &bytes[middle_start..date_start] != middle {
            continue;
        }
        for (line, status) in LINES {
            if let Some(start) = middle_start.checked_sub(line.len())
                && &bytes[start..middle_start] == line
            {
                return Some((
                    bytes.len() - start,
                    status,
                    &bytes[date_start..date_start + DATE],
                ));
            }
        }
    }
    None
}

impl<I: Io> AsyncRead for TrackedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.unread.is_empty() {
            // Counted when it was read off the socket.
            let n = self.unread.len().min(buf.remaining());
            buf.put_slice(&self.unread[..n]);
            self.unread.advance(n);
            if self.unread.is_empty() {
                self.unread = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.state.bytes_read.fetch_add(n as u64, Ordering::AcqRel);
            self.state.touch();
        }
        res
    }
}

impl<I: Io> AsyncWrite for TrackedIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.replacing.is_some() {
            return this.poll_replacement(cx);
        }
        let buf = match this.plan(&[io::IoSlice::new(buf)]) {
            WritePlan::Pass => buf,
            WritePlan::Before(n) => &buf[..n],
            WritePlan::Replace => return this.poll_replacement(cx),
        };
        let res = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.state.note_write(&res);
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.replacing.is_some() {
            return this.poll_replacement(cx);
        }
        let res = match this.plan(bufs) {
            WritePlan::Pass => Pin::new(&mut this.inner).poll_write_vectored(cx, bufs),
            WritePlan::Before(n) => {
                // Only the bytes before hyper's answer (an error path: the copy is fine).
                let mut left = n;
                let mut before = Vec::with_capacity(bufs.len());
                for b in bufs {
                    if left == 0 {
                        break;
                    }
                    let take = b.len().min(left);
                    before.push(io::IoSlice::new(&b[..take]));
                    left -= take;
                }
                Pin::new(&mut this.inner).poll_write_vectored(cx, &before)
            }
            WritePlan::Replace => return this.poll_replacement(cx),
        };
        this.state.note_write(&res);
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = Pin::new(&mut self.inner).poll_flush(cx);
        match res {
            Poll::Pending => self.state.write_waits(),
            // What waited went out (over TLS, a flush moves the bytes a write buffered).
            Poll::Ready(Ok(())) => self.state.write_done(),
            Poll::Ready(Err(_)) => {}
        }
        res
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// hyper's HTTP/1 header-read timer, made to start at the right moment.
///
/// hyper starts its header timer as soon as it waits for a request, including on a kept-alive
/// connection right after the previous response, which would cut every idle connection at
/// `header_read_timeout`. This timer starts at once only for a connection's first request;
/// for later ones it starts at the first byte of the request, and the idle time before it
/// is the watchdog's business (`idle_timeout`).
#[derive(Clone)]
struct HeaderTimer {
    state: Arc<ConnState>,
}

impl hyper::rt::Timer for HeaderTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        TokioTimer::new().sleep(duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let first_request = self.state.requests.load(Ordering::Acquire) == 0;
        Box::pin(HeaderSleep {
            state: self.state.clone(),
            budget: deadline.saturating_duration_since(Instant::now()),
            seen: self.state.bytes_read.load(Ordering::Acquire),
            sleep: first_request.then(|| Box::pin(tokio::time::sleep_until(deadline.into()))),
        })
    }
}

struct HeaderSleep {
    state: Arc<ConnState>,
    budget: Duration,
    seen: u64,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Future for HeaderSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if this.sleep.is_none() {
            // hyper polls this whenever the socket had something to read: no new byte yet
            // means the connection is idle, not slow.
            if this.state.bytes_read.load(Ordering::Acquire) == this.seen {
                return Poll::Pending;
            }
            this.sleep = Some(Box::pin(tokio::time::sleep(this.budget)));
        }
        match &mut this.sleep {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Pending,
        }
    }
}

impl hyper::rt::Sleep for HeaderSleep {}

/// The per-connection service: peer address, header-size check, then the live
/// configuration's security layer and proxy.
#[derive(Clone)]
struct ConnService {
    live: Live,
    peer: SocketAddr,
    https: bool,
    state: Arc<ConnState>,
    max_header_bytes: usize,
}

impl ConnService {
    /// The JSON 408 `request_timeout` for a request whose head began but did not end within
    /// `header_read_timeout` (a slowloris, or a client on a stalled network): the whole
    /// response, audited with what the head showed of its method and target.
    fn head_timeout_answer(&self, head: &[u8], date: &[u8]) -> Vec<u8> {
        let r = crate::proxy::request_timeout();
        let id = RequestId::generate();
        let out = refusal_bytes(&self.live.current(), &r, id.as_str(), self.https, date);
        audit_refusal(&self.live, self.peer, &r, request_line(head), id.as_str());
        out
    }

    /// The response to one request, from whichever HTTP/1 reader parsed it (hyper's, or the
    /// gateway's own for bodiless requests, see `h1`).
    fn respond<B>(
        &self,
        mut req: Request<B>,
    ) -> impl Future<Output = Response<GatewayBody>> + use<B>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<crate::proxy::BoxError>,
    {
        let guard = InFlight::enter(&self.state);
        req.extensions_mut().insert(PeerAddr(self.peer));
        if self.https {
            req.extensions_mut().insert(Https);
        }
        let generation = self.live.current();
        let https = self.https;
        // Over max_header_bytes: what the audit event needs, taken before the request moves.
        let refused = (header_bytes(req.headers()) > self.max_header_bytes).then(|| {
            (
                self.live.clone(),
                self.peer,
                req.method().clone(),
                req.uri().path().to_string(),
            )
        });
        async move {
            let res = if let Some((live, peer, method, path)) = refused {
                let id = RequestId::generate();
                tracing::info!(
                    request_id = id.as_str(),
                    "request headers over max_header_bytes: 431"
                );
                let r = Rejection::headers_too_large();
                audit_refusal(&live, peer, &r, (method.as_str(), &path), id.as_str());
                refusal_response(&generation, r, id.as_str(), https).map(SecurityBody::from)
            } else {
                let service = generation.service.clone();
                match service.oneshot(req).await {
                    Ok(res) => res,
                    Err(never) => match never {},
                }
            };
            res.map(|body| GatewayBody {
                inner: body,
                _in_flight: guard,
            })
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<GatewayBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<GatewayBody>, Infallible>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let res = self.respond(req);
        Box::pin(async move { Ok(res.await) })
    }
}

/// The answer to a request refused before the security layer (the JSON 431 over
/// `max_header_bytes`, or in place of hyper's own answer): the one JSON error with its
/// request id, and the generation's security headers, as the layer would send it.
fn refusal_response(
    generation: &Generation,
    r: Rejection,
    id: &str,
    https: bool,
) -> Response<Bytes> {
    let mut res = r.into_response_with_id(id);
    let headers = &generation.config.headers;
    headers.security.apply(res.headers_mut(), https);
    // The layer-wide CSP, as the layer's own refusals carry it (no nonce: nothing runs).
    if let Some(csp) = headers.effective_csp() {
        res.headers_mut()
            .insert(csp.header_name(), csp.render(None));
    }
    res
}

/// The bytes of the header fields as sent over HTTP/1 (`name: value\r\n`).
fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum()
}

/// The response body, keeping the request counted as in flight until it is sent.
///
/// ```
/// use portcullis_gateway::server::GatewayBody;
/// fn sendable_by_hyper<B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static>() {}
/// sendable_by_hyper::<GatewayBody>();
/// ```
pub struct GatewayBody {
    inner: SecurityBody,
    _in_flight: InFlight,
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = <SecurityBody as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Records a refusal the security layer never saw (the 400, 414 or 431 for a request hyper
/// could not parse, or the 431 over `max_header_bytes`) in the audit log, as the layer
/// records its own: action `invalid_input`, outcome `denied`, the socket peer as client.
fn audit_refusal(
    live: &Live,
    peer: SocketAddr,
    r: &Rejection,
    (method, path): (&str, &str),
    request_id: &str,
) {
    use portcullis::audit::{AuditEvent, AuditSink, Outcome, now_ms, uuid_v7};
    let Some(writer) = live.stores().audit_writer() else {
        return;
    };
    writer.record(AuditEvent {
        id: uuid_v7(),
        ts_ms: now_ms(),
        action: r.action(),
        outcome: Outcome::Denied,
        principal: None,
        client_ip: Some(portcullis::client_ip::canonical_ip(peer.ip()).to_string()),
        method: method.to_string(),
        route: "*".to_string(),
        path: path.to_string(),
        status: r.status().as_u16(),
        request_id: request_id.to_string(),
        metadata: serde_json::Value::Object(r.audit_metadata()),
    });
}

/// The method and target of a partial head, for the audit: both only when its request line
/// is complete and readable (the target cut at 1 KiB).
fn request_line(head: &[u8]) -> (&str, &str) {
    let line = head
        .iter()
        .position(|&b| b == b'\n')
        .and_then(|end| std::str::from_utf8(&head[..end]).ok());
    let mut words = line.unwrap_or("").trim_end_matches('\r').split(' ');
    match (words.next(), words.next(), words.next(), words.next()) {
        (Some(m), Some(t), Some(_), None)
            if !m.is_empty() && m.bytes().all(|b| b.is_ascii_alphabetic()) =>
        {
            let mut cut = t.len().min(1024);
            while !t.is_char_boundary(cut) {
                cut -= 1;
            }
            (m, &t[..cut])
        }
        _ => ("", ""),
    }
}

/// What hyper answered, by itself, to a request it could not parse.
fn unparsable(too_large: bool) -> Rejection {
    unparsable_status(if too_large {
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    } else {
        StatusCode::BAD_REQUEST
    })
}

/// The refusal for hyper's answer `status` to a request it could not parse.
fn unparsable_status(status: StatusCode) -> Rejection {
    let (code, message) = match status {
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => return Rejection::headers_too_large(),
        StatusCode::URI_TOO_LONG => ("uri_too_long", "Request target too long"),
        _ => ("malformed_request", "Request could not be parsed"),
    };
    Rejection::new(
        status,
        code,
        message,
        portcullis::audit::AuditAction::InvalidInput,
        portcullis::Control::ServerLimits,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const DATE: &str = "Mon, 07 Dec 2026 00:34:52 GMT";

    #[test]
    fn hyper_error_heads_are_recognised_at_the_end_of_a_write() {
        for (line, status) in [
            ("HTTP/1.1 400 Bad Request", StatusCode::BAD_REQUEST),
            ("HTTP/1.1 414 URI Too Long", StatusCode::URI_TOO_LONG),
            (
                "HTTP/1.1 431 Request Header Fields Too Large",
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ),
        ] {
            for middle in ["connection: close\r\n", ""] {
                let head = format!("{line}\r\n{middle}content-length: 0\r\ndate: {DATE}\r\n\r\n");
                assert_eq!(
                    hyper_error_head(head.as_bytes()),
                    Some((head.len(), status, DATE.as_bytes())),
                    "{head}"
                );
                // After the end of an earlier response in the same buffer.
                let both = format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok{head}");
                assert_eq!(
                    hyper_error_head(both.as_bytes()).map(|(len, ..)| len),
                    Some(head.len())
                );
            }
        }
    }

    #[test]
    fn responses_of_ours_are_not_mistaken_for_hyper_error_heads() {
        for bytes in [
            // Any header of ours between the status line and the end.
            format!(
                "HTTP/1.1 400 Bad Request\r\nx-request-id: 1\r\ncontent-length: 0\r\ndate: {DATE}\r\n\r\n"
            ),
            format!("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\ndate: {DATE}\r\n\r\n"),
            format!("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: {DATE}\r\n\r\nx"),
            format!("HTTP/1.1 400 Bad Request\r\ncontent-length: 5\r\ndate: {DATE}\r\n\r\n"),
            format!("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: {DATE}x\r\n\r\n"),
            "content-length: 0\r\ndate: Mon, 07 Dec 2026 00:34:52 GMT\r\n\r\n".to_string(),
            " GMT\r\n\r\n".to_string(),
            String::new(),
        ] {
            assert_eq!(hyper_error_head(bytes.as_bytes()), None, "{bytes}");
        }
    }

    #[test]
    fn a_write_counts_as_stalled_only_while_it_waits_without_a_byte_moving() {
        let limit = Duration::from_secs(1);
        let state = ConnState::new();
        let at = |ms: u64| state.started + Duration::from_millis(ms);
        assert!(!state.write_stalled(at(0), limit), "nothing waits");
        state.note_write(&Poll::Pending);
        assert!(
            !state.write_stalled(at(100), limit),
            "the first look starts the count"
        );
        assert!(!state.write_stalled(at(900), limit));
        assert!(
            state.write_stalled(at(1100), limit),
            "a second without a byte"
        );
        // Bytes moved: the count starts again.
        state.note_write(&Poll::Ready(Ok(10)));
        assert!(!state.write_stalled(at(5000), limit));
        state.note_write(&Poll::Pending);
        assert!(!state.write_stalled(at(6000), limit));
        state.note_write(&Poll::Ready(Ok(10)));
        state.note_write(&Poll::Pending);
        assert!(
            !state.write_stalled(at(7500), limit),
            "progress between two looks is no stall"
        );
        // A flush that went through (TLS) ends the wait as a write does.
        state.write_waits();
        state.write_done();
        assert!(!state.write_stalled(at(20_000), limit));
    }

    #[test]
    fn unparsable_statuses_map_to_their_refusals() {
        assert_eq!(
            unparsable_status(StatusCode::BAD_REQUEST).code(),
            "malformed_request"
        );
        assert_eq!(
            unparsable_status(StatusCode::URI_TOO_LONG).code(),
            "uri_too_long"
        );
        assert_eq!(
            unparsable_status(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE).code(),
            "headers_too_large"
        );
        assert_eq!(unparsable(true).status(), 431);
        assert_eq!(unparsable(false).status(), 400);
    }
}

//! The traffic listener: accepting connections, the server limits, graceful draining.
//!
//! Each connection is served by hyper-util's `auto` builder (HTTP/1.1, and HTTP/2 with prior
//! knowledge), with upgrades enabled for WebSocket passthrough. Over TLS the protocol is the
//! one ALPN chose (`h2` or `http/1.1`; HTTP/1.1 when the client offered none), and every
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
//!   large for that buffer, or with more than 100 fields, gets hyper's own bare 431 and the
//!   connection is closed. Over HTTP/2 the header list is capped `HEADER_SLACK` bytes above
//!   the limit: h2 answers 431 itself, or sends GOAWAY (`ENHANCE_YOUR_CALM`) for a list far
//!   over the cap.
//! - `header_read_timeout`: the TLS handshake, then the first request's headers, must each
//!   complete within it from the moment the connection is accepted (or the handshake ends); on a kept-alive HTTP/1 connection, from the first
//!   byte of the next request. A client trickling header bytes (slowloris) has its
//!   connection closed at the deadline, without a response; other connections are unaffected.
//! - `idle_timeout`: a connection with no request in flight and no bytes moving for this
//!   long is closed (HTTP/1) or sent GOAWAY (HTTP/2). A connection that never completes a
//!   first request is closed after `header_read_timeout`.
//! - `request_timeout` and the upstream timeouts: see [`crate::proxy`].
//! - Refusals the security layer never sees — the JSON 431 over `max_header_bytes`, and
//!   hyper's own bare 400 or 431 for a request it cannot parse — are audited like the
//!   layer's: `invalid_input`, `denied`, the socket peer, and the rejection's `code`
//!   (`headers_too_large` or `malformed_request`), `control` and `reason` in `metadata`.
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

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
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
use crate::reload::Live;
use crate::tls::TlsAcceptorHandle;

/// How far above `max_header_bytes` hyper's own read-buffer cap sits: header blocks in
/// between get the JSON 431, larger ones hyper's bare 431.
pub const HEADER_SLACK: usize = 8 * 1024;

/// hyper's smallest allowed read buffer.
const MIN_BUF: usize = 8 * 1024;

/// The smallest HTTP/1 read-buffer cap: one read takes up to this much of a request body.
/// It also bounds a header block (hyper answers a bare 431 when one fills the buffer), so
/// a connection holds at most this much of an unfinished head.
const BODY_READ: usize = 64 * 1024;

/// A connection stream: TCP, or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// The HTTP version a TLS client chose by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// `h2`.
    Http2,
    /// `http/1.1`, or no ALPN at all.
    Http1,
}

/// A finished TLS handshake: the decrypted stream and the protocol agreed on.
pub struct TlsConnection {
    /// The stream to serve HTTP on.
    pub io: Box<dyn Io>,
    /// The protocol ALPN chose.
    pub alpn: Alpn,
}

/// Turns an accepted TCP stream into a TLS stream; [`TlsAcceptorHandle`] is the gateway's.
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
pub struct Server {
    listener: TcpListener,
    live: Live,
    tls: Option<Arc<dyn TlsAcceptor>>,
    slots: Arc<Semaphore>,
}

impl Server {
    /// A server on a bound listener, serving the live config; `tls` terminates TLS when set.
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
pub struct Drain {
    done: mpsc::Receiver<()>,
}

impl Drain {
    /// Waits up to `timeout`; true when every connection finished.
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
        let io = TokioIo::new(TrackedIo {
            inner: io,
            state: state.clone(),
            _permit: permit,
        });
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
        let audit_live = live.clone();
        let service = ConnService {
            live,
            peer,
            https,
            state: state.clone(),
            max_header_bytes: limits.max_header_bytes,
        };
        let conn = builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(conn);
        // The watchdog is lazy: nothing wakes it per request. When its timer fires it looks
        // at what the connection did (requests in flight, last byte moved) and either acts
        // or sleeps until the deadline that activity implies. The futures live across
        // iterations, so a wake-up for socket readiness costs one poll of each.
        let stop = crate::server::stopped_owned(shutdown);
        tokio::pin!(stop);
        let (_, first) = state.verdict(&limits);
        let timer = tokio::time::sleep_until(first.into());
        tokio::pin!(timer);
        let mut draining = false;
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
                            let r = unparsable(h.is_parse_too_large());
                            let id = RequestId::generate();
                            audit_refusal(&audit_live, peer, &r, ("", ""), id.as_str());
                        }
                    }
                    return;
                }
                _ = stop.as_mut(), if !draining => {
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
                _ = timer.as_mut() => {
                    let (verdict, recheck) = state.verdict(&limits);
                    match verdict {
                        Verdict::Silent => {
                            tracing::debug!(%peer, "no request within the header read timeout: closing");
                            return;
                        }
                        Verdict::Idle if draining => return,
                        Verdict::Idle => {
                            tracing::debug!(%peer, "idle: closing");
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
}

/// What a connection has done, shared by its IO, its service and its watchdog.
struct ConnState {
    started: Instant,
    /// Milliseconds from `started` to the last byte read or written.
    last_activity_ms: AtomicU64,
    bytes_read: AtomicU64,
    requests: AtomicU64,
    in_flight: AtomicUsize,
}

impl ConnState {
    fn new() -> Self {
        ConnState {
            started: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_activity_ms.store(ms, Ordering::Relaxed);
    }

    fn verdict(&self, limits: &ConnectionLimits) -> (Verdict, Instant) {
        let now = Instant::now();
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return (Verdict::Busy, now + limits.idle_timeout);
        }
        if self.requests.load(Ordering::Acquire) == 0 {
            let deadline = self.started + limits.header_read_timeout;
            // Nothing wakes the watchdog when the first request comes and goes, so it looks
            // again no later than an idle timeout from now.
            return if now >= deadline {
                (Verdict::Silent, now)
            } else {
                (Verdict::Wait, deadline.min(now + limits.idle_timeout))
            };
        }
        let last =
            self.started + Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed));
        let deadline = last + limits.idle_timeout;
        if now >= deadline {
            (Verdict::Idle, now + limits.idle_timeout)
        } else {
            (Verdict::Wait, deadline)
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
struct TrackedIo<I> {
    inner: I,
    state: Arc<ConnState>,
    _permit: OwnedSemaphorePermit,
}

impl<I: Io> AsyncRead for TrackedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
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
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.state.touch();
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.state.touch();
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
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

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<GatewayBody>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<GatewayBody>, Infallible>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
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
        Box::pin(async move {
            let res = if let Some((live, peer, method, path)) = refused {
                let id = RequestId::generate();
                tracing::info!(
                    request_id = id.as_str(),
                    "request headers over max_header_bytes: 431"
                );
                let r = Rejection::headers_too_large();
                audit_refusal(&live, peer, &r, (method.as_str(), &path), id.as_str());
                let mut res = r.into_response_with_id(id.as_str()).map(SecurityBody::from);
                generation
                    .config
                    .headers
                    .security
                    .apply(res.headers_mut(), https);
                res
            } else {
                let service = generation.service.clone();
                match service.oneshot(req).await {
                    Ok(res) => res,
                    Err(never) => match never {},
                }
            };
            Ok(res.map(|body| GatewayBody {
                inner: body,
                _in_flight: guard,
            }))
        })
    }
}

/// The bytes of the header fields as sent over HTTP/1 (`name: value\r\n`).
fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum()
}

/// The response body, keeping the request counted as in flight until it is sent.
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

/// Records a refusal the security layer never saw (hyper's own 400 or 431 for a request it
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

/// What hyper answered, by itself, to a request it could not parse.
fn unparsable(too_large: bool) -> Rejection {
    if too_large {
        return Rejection::headers_too_large();
    }
    Rejection::new(
        http::StatusCode::BAD_REQUEST,
        "malformed_request",
        "Request could not be parsed",
        portcullis::audit::AuditAction::InvalidInput,
        portcullis::Control::ServerLimits,
    )
}

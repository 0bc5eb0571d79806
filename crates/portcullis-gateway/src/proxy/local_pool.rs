//! Per-core threading: this thread's keep-alive HTTP/1.1 connections to the upstream.
//!
//! Each worker thread keeps its own idle connections, so a request, its upstream connection
//! and its response never leave the thread, and no lock or pool machinery sits between them
//! (hyper-util's pooled client pays for a shared checkout and one spawned task per request to
//! return the connection). Two kinds wait in two lists: the connections bodiless requests
//! use, which the request's own task writes and reads (`h1`), and hyper's connections, each
//! with its own task and request channel, for requests with a body and upgrades. A
//! connection goes back to its thread's list when its response body ends, and is taken by
//! the next request, newest first.
//!
//! What a pool must get right, and this one does:
//! - a request that never left on a reused connection the upstream had just closed is sent
//!   again on another one (the upstream's keep-alive timeout racing our reuse); so is a
//!   bodiless GET, HEAD or OPTIONS whose reused connection died before any answer (as nginx
//!   does); any other request that may have reached the upstream is never repeated;
//! - a connection whose response body was not read to its end, that failed, that was
//!   upgraded (101), or whose answer ended before the request's body was sent whole (an
//!   application refusing an upload early) is never reused: the next request would wait
//!   behind the rest of that body;
//! - idle connections are closed once `upstream_idle_timeout` passes (a task per worker
//!   thread sweeps them, so they close on time even when no request comes), and at most
//!   [`MAX_IDLE`] of each kind wait per thread;
//! - the connect is bounded by `upstream_connect_timeout` (504 when it passes; a refusal is
//!   502), and the URI is sent in origin form with the client's `Host`.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::thread::LocalKey;
use std::time::Duration;

use bytes::Bytes;
use http::uri::Authority;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{BodyProgress, BodyState, BoxError, ProxyBody, ProxyInner, SendError, h1};

/// The most idle connections one thread keeps for one upstream.
pub const MAX_IDLE: usize = 1024;

type Sender = SendRequest<ProxyBody>;

/// A connection that can wait in an idle list.
pub trait Reusable: Sized + 'static {
    /// Whether the upstream closed it (or it can serve no more).
    fn is_closed(&mut self) -> bool;
}

impl Reusable for Sender {
    fn is_closed(&mut self) -> bool {
        SendRequest::is_closed(self)
    }
}

impl Reusable for h1::Conn {
    fn is_closed(&mut self) -> bool {
        h1::Conn::is_closed(self)
    }
}

struct Idle<C> {
    conn: C,
    since: Instant,
}

/// One proxy's idle connections on this thread, oldest first.
pub struct IdleList<C> {
    proxy: Weak<ProxyInner>,
    timeout: Duration,
    conns: Vec<Idle<C>>,
}

impl<C> IdleList<C> {
    /// Closes the connections idle for longer than the timeout.
    fn expire(&mut self, now: Instant) {
        let timeout = self.timeout;
        let expired = self
            .conns
            .iter()
            .take_while(|c| now.saturating_duration_since(c.since) >= timeout)
            .count();
        self.conns.drain(..expired);
    }
}

/// This thread's idle lists of one kind of connection, per proxy still alive.
pub type Lists<C> = LocalKey<RefCell<Vec<IdleList<C>>>>;

thread_local! {
    /// This thread's idle hyper connections (requests with a body, upgrades), per proxy
    /// still alive (a reload makes a new proxy; the old one's connections close once it is
    /// gone).
    static IDLE: RefCell<Vec<IdleList<Sender>>> = const { RefCell::new(Vec::new()) };
    /// The same for the connections bodiless requests use (see `h1`).
    pub static IDLE_H1: RefCell<Vec<IdleList<h1::Conn>>> = const { RefCell::new(Vec::new()) };
    /// Whether this thread's sweeper task runs.
    static SWEEPING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the thread is still able to keep connections (its locals not yet torn down).
pub fn available() -> bool {
    IDLE.try_with(|_| ()).is_ok() && IDLE_H1.try_with(|_| ()).is_ok()
}

/// Takes this thread's newest idle connection to `proxy`, closing expired and dead ones.
pub fn checkout<C: Reusable>(lists: &'static Lists<C>, proxy: &Arc<ProxyInner>) -> Option<C> {
    lists
        .try_with(|all| {
            let mut all = all.borrow_mut();
            let me = Arc::as_ptr(proxy);
            let list = all
                .iter_mut()
                .find(|l| std::ptr::eq(l.proxy.as_ptr(), me))?;
            let now = Instant::now();
            while let Some(mut c) = list.conns.pop() {
                if now.saturating_duration_since(c.since) >= list.timeout {
                    // The rest are older still.
                    list.conns.clear();
                    return None;
                }
                if !c.conn.is_closed() {
                    return Some(c.conn);
                }
            }
            None
        })
        .ok()
        .flatten()
}

/// Returns a connection whose exchange is over to this thread's list for `proxy`.
pub fn checkin<C: Reusable>(lists: &'static Lists<C>, proxy: &Weak<ProxyInner>, mut conn: C) {
    if conn.is_closed() {
        return;
    }
    let start_sweeper = lists
        .try_with(|all| {
            let mut all = all.borrow_mut();
            let now = Instant::now();
            let list = match all.iter().position(|l| l.proxy.ptr_eq(proxy)) {
                Some(i) => &mut all[i],
                None => {
                    let Some(p) = proxy.upgrade() else {
                        return false;
                    };
                    // A reload left lists of proxies no request uses any more: close them.
                    all.retain(|l| l.proxy.strong_count() > 0);
                    all.push(IdleList {
                        proxy: proxy.clone(),
                        timeout: p.idle_timeout,
                        conns: Vec::new(),
                    });
                    let last = all.len() - 1;
                    &mut all[last]
                }
            };
            list.expire(now);
            if list.conns.len() < MAX_IDLE && !list.timeout.is_zero() {
                list.conns.push(Idle { conn, since: now });
            }
            !SWEEPING.replace(true)
        })
        .unwrap_or(false);
    if start_sweeper {
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn(sweep())),
            Err(_) => {
                let _ = SWEEPING.try_with(|s| s.set(false));
            }
        }
    }
}

/// Closes the expired connections of one kind; the sweep period those lists want.
fn expire_all<C>(lists: &'static Lists<C>) -> Option<Duration> {
    lists
        .try_with(|all| {
            let mut all = all.borrow_mut();
            let now = Instant::now();
            all.retain(|l| l.proxy.strong_count() > 0);
            for list in all.iter_mut() {
                list.expire(now);
            }
            // Half the shortest timeout, so a connection closes at most 50% late.
            all.iter().map(|l| l.timeout / 2).min()
        })
        .ok()
        .flatten()
}

/// Closes this thread's expired idle connections, on time even when no request comes.
async fn sweep() {
    loop {
        let period = [expire_all(&IDLE), expire_all(&IDLE_H1)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(Duration::from_secs(1))
            .clamp(Duration::from_millis(50), Duration::from_secs(30));
        tokio::time::sleep(period).await;
    }
}

/// Opens a TCP connection to the upstream (`TCP_NODELAY`), within `connect_timeout`.
pub async fn open(
    authority: &Authority,
    connect_timeout: Duration,
) -> Result<TcpStream, SendError> {
    let port = authority.port_u16().unwrap_or(80);
    let host = authority.host();
    let open = async {
        let literal = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>();
        let addrs: Vec<SocketAddr> = match literal {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host, port)).await?.collect(),
        };
        let mut last = std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{host} has no address"),
        );
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(last)
    };
    let stream = match tokio::time::timeout(connect_timeout, open).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(SendError::Connect(e)),
        Err(_) => return Err(SendError::ConnectTimeout),
    };
    stream.set_nodelay(true).map_err(SendError::Connect)?;
    Ok(stream)
}

/// Opens a new hyper connection to the upstream, within `connect_timeout`.
async fn connect(authority: &Authority, connect_timeout: Duration) -> Result<Sender, SendError> {
    let stream = open(authority, connect_timeout).await?;
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(SendError::Http)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection closed with an error");
        }
    });
    Ok(sender)
}

/// Sends `req` (origin-form URI, `Host` set) over this thread's connections to `proxy`'s
/// upstream; the response body returns the connection when it ends.
///
/// `request_body` is how far the request's body got (`None`: it has none): an answer that ends
/// before the body did leaves its connection busy sending the rest, so that connection is
/// not reused (the next request would wait behind a body that may never come).
pub async fn send(
    proxy: &Arc<ProxyInner>,
    mut req: Request<ProxyBody>,
    request_body: Option<&Arc<BodyProgress>>,
) -> Result<Response<ProxyBody>, SendError> {
    // A bodiless GET, HEAD or OPTIONS that dies on a reused connection before any answer
    // goes out once more on a new one, the way nginx retries on a failed keep-alive
    // connection: the upstream may have closed it just as it left (it cannot have acted on
    // a request it never read, and these methods are safe to repeat anyway).
    let mut fresh_only = false;
    loop {
        let pooled = if fresh_only {
            None
        } else {
            checkout(&IDLE, proxy)
        };
        let (mut sender, reused) = match pooled {
            Some(s) => (s, true),
            None => (
                connect(&proxy.authority, proxy.connect_timeout).await?,
                false,
            ),
        };
        // A connection whose last response just ended may still be finishing it; one that
        // closed meanwhile is passed over. (A fresh one takes its first request at once.)
        if reused
            && std::future::poll_fn(|cx| sender.poll_ready(cx))
                .await
                .is_err()
        {
            continue;
        }
        let spare = if reused { replayable(&req) } else { None };
        match sender.try_send_request(req).await {
            Ok(res) => {
                let back = (res.status() != StatusCode::SWITCHING_PROTOCOLS).then(|| Back {
                    sender,
                    proxy: Arc::downgrade(proxy),
                    request_body: request_body.cloned(),
                });
                return Ok(res.map(|body| PooledBody::new(body, back).boxed_unsync()));
            }
            Err(mut e) => match (e.take_message(), spare) {
                // It never left, and the connection had served before: the upstream closed
                // it meanwhile. Another connection, fresh if need be.
                (Some(r), _) if reused => req = r,
                // It left, and the connection died before any answer.
                (None, Some(again)) if closed_before_answer(e.error()) => {
                    tracing::debug!(error = %e.error(), "reused upstream connection closed; sending the request again on a new one");
                    req = again;
                    fresh_only = true;
                }
                _ => return Err(SendError::Http(e.into_error())),
            },
        }
    }
}

/// A copy of a request that may be sent again: GET, HEAD or OPTIONS without a body.
pub(super) fn replayable(req: &Request<ProxyBody>) -> Option<Request<ProxyBody>> {
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe || !req.body().is_end_stream() {
        return None;
    }
    let mut copy = Request::new(super::empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

/// The connection ended before any of the answer came: closed, reset, or a broken pipe.
pub(super) fn closed_before_answer(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() || e.is_canceled() {
        return true;
    }
    super::io_cause(e, |kind| {
        matches!(
            kind,
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::UnexpectedEof
        )
    })
}

/// What a response body gives back when it ends: its connection, to the pool it came from,
/// once the request's body (if any) has been sent whole.
struct Back {
    sender: Sender,
    proxy: Weak<ProxyInner>,
    request_body: Option<Arc<BodyProgress>>,
}

/// The upstream's response body; gives its connection back when it ends.
struct PooledBody {
    inner: Incoming,
    back: Option<Back>,
}

impl PooledBody {
    fn new(inner: Incoming, back: Option<Back>) -> PooledBody {
        let mut body = PooledBody { inner, back };
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        let Some(back) = self.back.take() else {
            return;
        };
        // An answer that came before the request's body ended (an early refusal, say): the
        // connection is still sending it, or broken. Dropped, it finishes and closes.
        if back
            .request_body
            .is_some_and(|p| p.get() != BodyState::Done)
        {
            return;
        }
        checkin(&IDLE, &back.proxy, back.sender);
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if this.inner.is_end_stream() {
                    this.release();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                // A broken exchange: the connection is not reused.
                this.back = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.release();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

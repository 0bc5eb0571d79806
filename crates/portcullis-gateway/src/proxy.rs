//! The reverse proxy: the service the [`SecurityLayer`](portcullis::SecurityLayer) wraps.
//!
//! It forwards what the layer let through to `server.upstream` over pooled keep-alive
//! connections, streaming bodies both ways without buffering them (with per-core threading,
//! a request without a body is written and its answer read by the gateway's own HTTP/1.1
//! code in the request's task, see `proxy/h1.rs`; other requests go through hyper's client):
//!
//! - the URI is the canonical path and query the layer left in the request (never re-derived
//!   from the raw request line), sent to the upstream as HTTP/1.1;
//! - hop-by-hop headers are removed both ways (`Connection` and the headers it names but
//!   `Content-Type`, which the layer judged the body by,
//!   `Keep-Alive`, `Proxy-Connection`, `Proxy-Authorization`, `Proxy-Authenticate`, `Proxy`
//!   (httpoxy), `TE` except `trailers`, `Trailer` (kept on a response,
//!   where it announces the trailer fields the client may receive),
//!   `Transfer-Encoding`, `Upgrade` except on an upgrade);
//! - `Host` is the client's; `X-Forwarded-For` gets the peer appended (after the inbound
//!   value, which the layer kept only from a trusted proxy), `X-Forwarded-Proto` and
//!   `X-Forwarded-Host` are the trusted inbound values or ours, and `Forwarded` (RFC 7239)
//!   gets our hop appended — after a trusted proxy's `Forwarded`, or, when that proxy sent
//!   only `X-Forwarded-*`, after the client's element built from them (the resolved client,
//!   its scheme and host), so both families name the same client;
//! - the principal travels as `x-portcullis-user` and `x-portcullis-roles`;
//! - WebSocket upgrades (`Upgrade: websocket`) are tunnelled once the upstream answers 101;
//!   no other protocol is: a request asking for one (`h2c`, whose tunnel would carry HTTP/2
//!   requests past the layer) goes on as a plain request without its `Upgrade`;
//! - an unreachable upstream is 502 `upstream_unavailable`, a slow one 504
//!   `upstream_timeout`, a client that does not finish its request in `request_timeout`
//!   408 `request_timeout`: the one JSON error, never internal detail.
//!
//! The timeouts of `[server]`:
//! - `upstream_connect_timeout` bounds the TCP connect to the upstream (504 when it passes;
//!   a refused connection is 502);
//! - `upstream_idle_timeout` is how long an idle keep-alive connection to the upstream is
//!   kept (default 4 s, below Node's 5 s: the gateway closes it before the application does);
//! - `upstream_timeout` bounds the wait for the upstream's response headers once the request
//!   is sent, which includes the time the upstream takes to read a streamed body (504);
//! - `request_timeout` bounds the whole request from the moment the layer hands it over:
//!   receiving the client's body and waiting for the response headers (408 if the gateway
//!   was waiting for more of the client's body, else 504: an upstream that stops taking a
//!   body the client sends is the upstream's delay, not the client's);
//! - a body earns time beyond both: as long as it keeps arriving, up to one second per
//!   [`MIN_BODY_RATE`] bytes (1 KiB) received, so a 100 MiB upload over a slow link is not
//!   cut at 30 s while a client trickling its body slower than that still is (nginx bounds
//!   only the pause between reads, which a trickle never exceeds).
//!
//! Response bodies stream without a deadline (downloads, server-sent events); a connection
//! with a response in flight is never closed as idle, unless its client stops taking the
//! response's bytes for `idle_timeout` (see [`crate::server`]); over HTTP/2, where one stream
//! can stall while its connection stays busy, each stream is watched alone and reset (its
//! upstream body dropped) when its client takes nothing for `idle_timeout`. A WebSocket
//! tunnel is closed (both sides) once no byte has crossed it either way for
//! `tunnel_idle_timeout` (default 5 min): an idle tunnel would otherwise hold its connection
//! slot and an upstream connection forever. Applications that keep quiet sockets open send
//! pings within it.
//!
//! # The CSP nonce and the upstream's HTML
//!
//! When the route's CSP carries a nonce, the layer puts a fresh [`Nonce`] in the request's
//! extensions and the rendered policy on the response. The proxy makes the upstream's HTML
//! match it, by `server.upstream_kind`:
//!
//! - `nextjs`: the upstream request carries the same policy as the response
//!   (`Content-Security-Policy`, or `-Report-Only` when the policy is report-only) with this
//!   request's nonce, and the nonce alone as `x-nonce`. Next.js (13.4+) reads the nonce from
//!   the request's CSP and puts it on every script it emits; `x-nonce` is for application
//!   code that follows Next's CSP guide (`headers().get('x-nonce')`). Client-sent copies of
//!   these headers never reach the upstream (the layer strips them; so does the proxy). The
//!   response passes as it is; the layer makes nonce'd HTML `Cache-Control: no-store`.
//! - any other upstream: HTML responses stream through the nonce rewrite
//!   ([`portcullis::headers::nonce_html`]), which puts the nonce on the `<script>`,
//!   `<style>`, `<link>` and `<meta>` elements whose `nonce` is the
//!   `server.nonce_placeholder` marker and removes every other script, style or link
//!   `nonce`; `Content-Length` and `ETag` are dropped (the length changes) and
//!   the response is `Cache-Control: no-store`. Requests that accept HTML (a page, or a form
//!   POST answered with one) ask the upstream for `Accept-Encoding: identity`, because the
//!   rewrite reads plain HTML only (so such pages reach the browser uncompressed); a
//!   compressed HTML response passes untouched with a warning (its placeholders then stay,
//!   and the CSP blocks those scripts). A HEAD gets the head its GET would (no length, no
//!   validators, no-store); non-HTML and 204/304 responses pass untouched.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Extensions, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Frame, SizeHint};
use hyper::upgrade::OnUpgrade;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use portcullis::audit::AuditAction;
use portcullis::auth::BoxFuture;
use portcullis::client_ip::{IpText, PeerAddr, canonical_ip};
use portcullis::headers::nonce_html::{self, NonceRewriter};
use portcullis::layer::{Https, MatchedRoute};
use portcullis::policy::CspSetting;
use portcullis::request_id::X_REQUEST_ID;
use portcullis::{Control, Csp, Nonce, Principal, Rejection, RequestId};
use tokio::time::{Instant, Sleep};

use crate::config::{ConfigError, GatewayConfig, ServerConfig, Threading, UpstreamKind};

mod h1;
mod local_pool;

/// A boxed error, as bodies carry them.
///
/// ```
/// use portcullis_gateway::proxy::BoxError;
/// let e: BoxError = "upstream hung up".into();
/// assert_eq!(e.to_string(), "upstream hung up");
/// ```
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// The body of the upstream request and of the proxy's response.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use portcullis_gateway::proxy::{BoxError, ProxyBody};
/// let body: ProxyBody = Full::new(Bytes::from_static(b"hello")).map_err(BoxError::from).boxed_unsync();
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// assert_eq!(body.collect().await.unwrap().to_bytes(), &b"hello"[..]);
/// # });
/// ```
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// The identity headers the upstream may rely on (inbound copies are stripped by the layer).
///
/// ```
/// use portcullis_gateway::proxy::X_PORTCULLIS_USER;
/// // In the application behind the gateway: who is calling.
/// # let req = http::Request::get("/api/me").header("x-portcullis-user", "alice").body(()).unwrap();
/// let user = req.headers().get(X_PORTCULLIS_USER).and_then(|v| v.to_str().ok());
/// assert_eq!(user, Some("alice"));
/// ```
pub const X_PORTCULLIS_USER: HeaderName = HeaderName::from_static("x-portcullis-user");
/// The principal's roles, comma-joined.
///
/// ```
/// use portcullis_gateway::proxy::X_PORTCULLIS_ROLES;
/// # let req = http::Request::get("/api/me").header("x-portcullis-roles", "user,admin").body(()).unwrap();
/// let roles = req.headers().get(X_PORTCULLIS_ROLES).and_then(|v| v.to_str().ok()).unwrap_or("");
/// let roles: Vec<&str> = roles.split(',').filter(|r| !r.is_empty()).collect();
/// assert_eq!(roles, ["user", "admin"]);
/// ```
pub const X_PORTCULLIS_ROLES: HeaderName = HeaderName::from_static("x-portcullis-roles");

/// The client's address as the gateway resolved it (the socket peer, or the first untrusted
/// hop of `X-Forwarded-For` behind `trusted_proxies`): what rate limits and the audit log go
/// by, so the application need not walk the forwarding headers again with the same trust.
///
/// ```
/// use portcullis_gateway::proxy::X_PORTCULLIS_CLIENT_IP;
/// # let req = http::Request::get("/").header("x-portcullis-client-ip", "203.0.113.7").body(()).unwrap();
/// let ip: Option<std::net::IpAddr> = req.headers().get(X_PORTCULLIS_CLIENT_IP)
///     .and_then(|v| v.to_str().ok()?.parse().ok());
/// assert_eq!(ip, Some("203.0.113.7".parse().unwrap()));
/// ```
pub const X_PORTCULLIS_CLIENT_IP: HeaderName = HeaderName::from_static("x-portcullis-client-ip");

/// The client address the layer resolved, when it knows one, as text: the hop's own when the
/// client is the socket peer (no trusted proxy in between), so it is not formatted twice.
fn client_ip_of(extensions: &Extensions, hop: &Hop) -> Option<IpText> {
    let ip = extensions
        .get::<portcullis::layer::RequestContext>()
        .map(|c| c.client_ip)
        .or_else(|| extensions.get::<portcullis::ClientIp>().copied())?
        .0;
    match &hop.peer {
        Some((peer, text)) if *peer == ip => Some(*text),
        _ => (!ip.is_unspecified()).then(|| IpText::of(ip)),
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const PROXY: HeaderName = HeaderName::from_static("proxy");
/// The nonce alone, for Next.js application code (Next's CSP guide reads it).
///
/// ```
/// use portcullis_gateway::proxy::X_NONCE;
/// assert_eq!(X_NONCE, "x-nonce"); // what Next.js's CSP guide reads: headers().get('x-nonce')
/// ```
pub const X_NONCE: HeaderName = HeaderName::from_static("x-nonce");

/// The reverse proxy to one upstream. Cheap to clone: clones share the connection pool.
///
/// ```
/// use portcullis_gateway::{config::GatewayConfig, proxy::Proxy};
/// let config = GatewayConfig::from_str("server.upstream = \"http://127.0.0.1:3000\"", "portcullis.toml")?;
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let proxy = Proxy::for_config(&config)?;
/// let same_pool = proxy.clone();
/// assert_eq!(same_pool.upstream_authority(), "127.0.0.1:3000");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<ProxyInner>,
}

struct ProxyInner {
    /// The shared pool (work-stealing threading).
    client: UpstreamClient,
    /// The same without idle connections: a replay goes out on a new connection.
    fresh: UpstreamClient,
    /// Per-core threading: each thread keeps its own connections (see `local_pool`).
    pool_per_thread: bool,
    connect_timeout: Duration,
    /// How long an idle upstream connection is kept.
    idle_timeout: Duration,
    scheme: Scheme,
    authority: Authority,
    upstream_timeout: Duration,
    request_timeout: Duration,
    /// How long a WebSocket tunnel may stay silent both ways.
    tunnel_idle_timeout: Duration,
    /// How long an HTTP/2 client may leave its response's next bytes untaken
    /// (`idle_timeout`).
    stream_stall_timeout: Duration,
    upstream_kind: UpstreamKind,
    /// The CSP of each route, for the Next.js request header.
    csps: RouteCsps,
    /// The placeholder rewrite for other upstreams' HTML.
    rewriter: NonceRewriter,
}

/// A pooled HTTP/1.1 client to the upstream.
type UpstreamClient = Client<HttpConnector, ProxyBody>;

/// A client whose connections are spawned on the runtime that first uses it; with
/// `keep_idle` false it keeps no idle connection, so every request opens a new one.
fn upstream_client(
    connect_timeout: Duration,
    idle_timeout: Duration,
    keep_idle: bool,
) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(idle_timeout);
    if !keep_idle {
        builder.pool_max_idle_per_host(0);
    }
    builder.build(connector)
}

/// The CSP each route sends, by route pattern, resolved the way the layer resolves it, so
/// the policy Next.js reads on its request is the one the browser gets on the response.
///
/// ```
/// use portcullis_gateway::{config::GatewayConfig, proxy::RouteCsps};
/// let config = GatewayConfig::from_str("server.upstream = \"http://127.0.0.1:3000\"", "portcullis.toml")?;
/// let csps = RouteCsps::of(&config);
/// assert!(format!("{csps:?}").contains("layer: Some(")); // the default [headers] csp
/// assert!(format!("{:?}", RouteCsps::default()).contains("layer: None"));
/// # Ok::<(), portcullis_gateway::config::ConfigErrors>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct RouteCsps {
    /// `[headers] csp`, for routes that inherit it and for the default (`"*"`).
    layer: Option<Arc<Csp>>,
    /// `[[route]]` patterns and their CSP (`None`: `csp = false`).
    routes: HashMap<String, Option<Arc<Csp>>>,
}

impl RouteCsps {
    /// The CSPs of a config's `[headers]` and `[[route]]`s.
    ///
    /// ```
    /// use portcullis_gateway::{config::GatewayConfig, proxy::RouteCsps};
    /// let csps = RouteCsps::of(&GatewayConfig::from_str(r#"
    /// server.upstream = "http://127.0.0.1:3000"
    /// server.upstream_kind = "nextjs"
    /// route = [{ path = "/api/**", csp = false }]
    /// "#, "portcullis.toml")?);
    /// assert!(format!("{csps:?}").contains(r#""/api/**": None"#)); // no CSP for the API routes
    /// # Ok::<(), portcullis_gateway::config::ConfigErrors>(())
    /// ```
    pub fn of(config: &GatewayConfig) -> RouteCsps {
        let layer = config.headers.effective_csp().map(Arc::new);
        let routes = config
            .routes
            .iter()
            .map(|r| {
                let csp = match r.policy.csp_setting() {
                    CspSetting::Inherit => layer.clone(),
                    CspSetting::Off => None,
                    CspSetting::Custom(c) => Some(c.clone()),
                };
                (r.path.clone(), csp)
            })
            .collect();
        RouteCsps { layer, routes }
    }

    /// The CSP of the route the layer matched (the layer-wide one for the default route).
    fn for_route(&self, route: Option<&MatchedRoute>) -> Option<&Csp> {
        match route.and_then(|r| self.routes.get(&*r.0)) {
            Some(csp) => csp.as_deref(),
            None => self.layer.as_deref(),
        }
    }
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("upstream", &self.inner.authority)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// The proxy `serve` runs: to `server.upstream`, with the routes' CSPs for the Next.js
    /// request header; must be called within a Tokio runtime.
    ///
    /// ```
    /// use portcullis_gateway::{config::GatewayConfig, proxy::Proxy};
    /// let config = GatewayConfig::from_str(r#"
    /// server.upstream = "http://127.0.0.1:3000"
    /// server.upstream_kind = "nextjs"
    /// "#, "portcullis.toml")?;
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let proxy = Proxy::for_config(&config)?;
    /// assert_eq!(proxy.upstream_authority(), "127.0.0.1:3000");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn for_config(config: &GatewayConfig) -> Result<Proxy, ConfigError> {
        Proxy::build(&config.server, RouteCsps::of(config))
    }

    /// A proxy to `server.upstream` with its timeouts, knowing no CSP (a Next.js upstream
    /// gets none on its requests; see [`Proxy::for_config`]); must be called within a Tokio
    /// runtime.
    ///
    /// ```
    /// use portcullis_gateway::{config::GatewayConfig, proxy::Proxy};
    /// let config = GatewayConfig::from_str("server.upstream = \"https://app.internal\"", "portcullis.toml")?;
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let err = Proxy::new(&config.server).unwrap_err();
    /// assert_eq!(err.key, "server.upstream");
    /// assert_eq!(err.reason, "only http:// upstreams are supported in this build");
    /// # });
    /// # Ok::<(), portcullis_gateway::config::ConfigErrors>(())
    /// ```
    pub fn new(server: &ServerConfig) -> Result<Proxy, ConfigError> {
        Proxy::build(server, RouteCsps::default())
    }

    fn build(server: &ServerConfig, csps: RouteCsps) -> Result<Proxy, ConfigError> {
        let bad = |reason: &str| ConfigError {
            key: "server.upstream".to_string(),
            reason: reason.to_string(),
        };
        let upstream = server
            .upstream
            .as_ref()
            .ok_or_else(|| bad("required: the URL of the application behind the gateway"))?;
        let scheme = upstream.scheme().cloned().unwrap_or(Scheme::HTTP);
        if scheme != Scheme::HTTP {
            return Err(bad("only http:// upstreams are supported in this build"));
        }
        let authority = upstream
            .authority()
            .cloned()
            .ok_or_else(|| bad("the upstream URL has no host"))?;
        let rewriter = NonceRewriter::new(&server.nonce_placeholder).map_err(|e| ConfigError {
            key: "server.nonce_placeholder".to_string(),
            reason: e.to_string(),
        })?;
        Ok(Proxy {
            inner: Arc::new(ProxyInner {
                client: upstream_client(
                    server.upstream_connect_timeout,
                    server.upstream_idle_timeout,
                    true,
                ),
                fresh: upstream_client(
                    server.upstream_connect_timeout,
                    server.upstream_idle_timeout,
                    false,
                ),
                connect_timeout: server.upstream_connect_timeout,
                idle_timeout: server.upstream_idle_timeout,
                pool_per_thread: server.threading == Threading::PerCore,
                scheme,
                authority,
                upstream_timeout: server.upstream_timeout,
                request_timeout: server.request_timeout,
                tunnel_idle_timeout: server.tunnel_idle_timeout,
                stream_stall_timeout: server.idle_timeout,
                upstream_kind: server.upstream_kind,
                csps,
                rewriter,
            }),
        })
    }

    /// Sends `req` over this thread's connections (`local`, per-core) or the shared pool.
    async fn send(
        &self,
        req: Request<ProxyBody>,
        local: bool,
        progress: Option<&Arc<BodyProgress>>,
    ) -> Result<Response<ProxyBody>, SendError> {
        if local {
            return local_pool::send(&self.inner, req, progress).await;
        }
        // As on the per-core pool: a bodiless GET, HEAD or OPTIONS whose connection died
        // before any answer goes out once more, on a new connection. (hyper-util does not
        // say whether the connection was a reused one; these methods are safe to repeat.)
        let spare = local_pool::replayable(&req);
        let res = match self.inner.client.request(req).await {
            Ok(res) => res,
            Err(e) => match spare {
                Some(again) if !e.is_connect() && pooled_closed_before_answer(&e) => {
                    tracing::debug!(error = %ErrorChain(&e), "upstream connection closed before an answer; sending the request again on a new one");
                    self.inner
                        .fresh
                        .request(again)
                        .await
                        .map_err(SendError::Pooled)?
                }
                _ => return Err(SendError::Pooled(e)),
            },
        };
        Ok(res.map(|b| b.map_err(BoxError::from).boxed_unsync()))
    }

    /// The upstream's `host:port`.
    ///
    /// ```
    /// # use portcullis_gateway::proxy::Proxy;
    /// # let config = portcullis_gateway::config::GatewayConfig::from_str("server.upstream = \"http://127.0.0.1:3000\"", "portcullis.toml")?;
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let proxy = Proxy::for_config(&config)?;
    /// let authority = proxy.upstream_authority();
    /// assert_eq!((authority.host(), authority.port_u16()), ("127.0.0.1", Some(3000)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn upstream_authority(&self) -> &Authority {
        &self.inner.authority
    }

    /// Forwards one request and returns the upstream's response, or the JSON error.
    ///
    /// ```no_run
    /// use bytes::Bytes;
    /// use http_body_util::Empty;
    /// use portcullis_gateway::{config::GatewayConfig, proxy::Proxy};
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// let proxy = Proxy::for_config(&GatewayConfig::from_file("portcullis.toml")?)?;
    /// let req = http::Request::get("/api/items").header("host", "app.example.com").body(Empty::<Bytes>::new())?;
    /// let res = proxy.forward(req).await; // the upstream's answer, or 502, 504 or 408 as JSON
    /// println!("{}", res.status());
    /// # Ok(()) }
    /// ```
    pub async fn forward<B>(self, req: Request<B>) -> Response<ProxyBody>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let start = Instant::now();
        let body_timeout = self.inner.request_timeout;
        let (mut parts, body) = req.into_parts();
        let mut extensions = std::mem::take(&mut parts.extensions);
        let mut client_upgrade = extensions.remove::<OnUpgrade>();
        let extensions = extensions;
        // Looked up when an answer or a log line needs it (most requests need neither).
        let request_id = || RequestId::of(&extensions).map_or("", RequestId::as_str);
        let upgrade = parts.version == Version::HTTP_11 && is_upgrade(&parts.headers);
        let http2 = parts.version == Version::HTTP_2;
        let method = parts.method.clone();

        // A request without a body (most GETs) needs no deadline or progress on it.
        let (body, progress) = if body.is_end_stream() {
            (empty(), None)
        } else {
            let progress = Arc::new(BodyProgress::default());
            let body = DeadlineBody::new(body, start, body_timeout, progress.clone());
            (UnsyncBoxBody::new(body), Some(progress))
        };
        let body_state = || progress.as_ref().map_or(BodyState::Done, |p| p.get());
        // Per-core threading sends over this thread's connections, unless the thread is
        // exiting; then the shared pool, which wants the absolute URI.
        let local = self.inner.pool_per_thread && local_pool::available();
        // The head is built in microseconds: `start` stands for now (one clock read fewer).
        let wait = self.inner.upstream_timeout.min(body_timeout);
        // A bodiless request on this thread's connections: its head is written as bytes and
        // sent by the gateway's own HTTP/1.1 code (`h1`); any other, through hyper's client.
        let direct = local
            && !upgrade
            && progress.is_none()
            && parts
                .headers
                .get_all(header::CONTENT_LENGTH)
                .iter()
                .all(|v| v.as_bytes() == b"0");
        let sent = if direct {
            let mut head = Vec::with_capacity(256 + 64 * parts.headers.len());
            self.write_upstream_head(&mut head, &parts, &extensions);
            tokio::time::timeout(wait, h1::send(&self.inner, &head, &method))
                .await
                .map_err(drop)
        } else {
            let mut upstream_req = match self.upstream_request(parts, &extensions, upgrade, !local)
            {
                Ok(mut head) => {
                    // hyper's client sends a GET, HEAD or CONNECT whose body has no length
                    // as bodiless, dropping the body unread (past the body limit too): a body
                    // of unknown length goes chunked, said outright.
                    if progress.is_some() && !head.headers.contains_key(header::CONTENT_LENGTH) {
                        head.headers.insert(
                            header::TRANSFER_ENCODING,
                            HeaderValue::from_static("chunked"),
                        );
                    }
                    Request::from_parts(head, body)
                }
                Err(r) => return error_response(r, request_id()),
            };
            self.transform_request(&mut upstream_req, &extensions);
            // Boxed: hyper's client future is the largest part of this one, and a request
            // with a body (or an upgrade) is worth the allocation; a bodiless one is not.
            Box::pin(within(
                self.send(upstream_req, local, progress.as_ref()),
                start,
                wait,
                progress.as_deref(),
            ))
            .await
        };
        let mut res = match sent {
            Ok(Ok(res)) => res,
            Ok(Err(e)) => {
                let r = classify_error(&e, body_state());
                tracing::warn!(request_id = request_id(), upstream = %self.inner.authority, error = %ErrorChain(&e), "upstream request failed: {}", r.code());
                return error_response(r, request_id());
            }
            Err(_) => {
                // The client's fault only if its body kept the gateway waiting; an upstream
                // that stopped taking the body is the upstream's delay.
                let r = if body_state() == BodyState::WaitingForClient {
                    request_timeout()
                } else {
                    upstream_timeout()
                };
                tracing::warn!(request_id = request_id(), upstream = %self.inner.authority, "upstream request timed out: {}", r.code());
                return error_response(r, request_id());
            }
        };

        if res.status() == StatusCode::SWITCHING_PROTOCOLS {
            let (Some(client_side), true) = (client_upgrade.take(), upgrade) else {
                tracing::warn!(
                    request_id = request_id(),
                    "upstream switched protocols without being asked"
                );
                return error_response(upstream_unavailable(), request_id());
            };
            let upstream_side = hyper::upgrade::on(&mut res);
            tokio::spawn(tunnel(
                client_side,
                upstream_side,
                request_id().to_string(),
                self.inner.tunnel_idle_timeout,
            ));
            let (mut rparts, _) = res.into_parts();
            let upgrade_to = rparts.headers.get(header::UPGRADE).cloned();
            strip_hop_by_hop(&mut rparts.headers);
            if let Some(proto) = upgrade_to {
                rparts.headers.insert(header::UPGRADE, proto);
                rparts
                    .headers
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            }
            return Response::from_parts(rparts, empty());
        }

        let (mut rparts, rbody) = res.into_parts();
        // `Trailer` is this hop's, but it also announces the trailer fields the body ends
        // with, which the client's hop sends only when announced: the announcement is kept
        // (as Go's ReverseProxy does).
        // Most answers carry no hop-by-hop field: one look at each name.
        if rparts.headers.keys().any(|n| HOP_BY_HOP.contains(n)) {
            let announced: Vec<HeaderValue> = rparts
                .headers
                .get_all(header::TRAILER)
                .iter()
                .cloned()
                .collect();
            strip_hop_by_hop(&mut rparts.headers);
            for v in announced {
                rparts.headers.append(header::TRAILER, v);
            }
        }
        let res = Response::from_parts(rparts, rbody);
        let res = self.transform_response(res, &extensions, &method);
        if http2 && !res.body().is_end_stream() {
            // One HTTP/2 stream can stop taking its response while its connection stays
            // busy (other streams, pings): the connection's watchdog cannot see it.
            let (parts, body) = res.into_parts();
            let guarded = StallGuard::start(body, self.inner.stream_stall_timeout, request_id());
            return Response::from_parts(parts, UnsyncBoxBody::new(guarded));
        }
        res
    }

    /// The nonce on the upstream request: the CSP header for Next.js, or a plain-HTML ask
    /// for the placeholder rewrite (see the module docs).
    fn transform_request(&self, req: &mut Request<ProxyBody>, extensions: &Extensions) {
        let nonce = Nonce::of(extensions);
        match self.inner.upstream_kind {
            UpstreamKind::Nextjs => {
                let headers = req.headers_mut();
                // The layer already strips client-sent copies; a second look costs nothing
                // and keeps this hook right on its own.
                headers.remove(header::CONTENT_SECURITY_POLICY);
                headers.remove(header::CONTENT_SECURITY_POLICY_REPORT_ONLY);
                headers.remove(X_NONCE);
                let csp = self.inner.csps.for_route(MatchedRoute::of(extensions));
                if let (Some(nonce), Some(csp)) = (nonce, csp) {
                    headers.insert(csp.header_name(), csp.render(Some(nonce)));
                    if let Ok(v) = HeaderValue::from_str(nonce.as_str()) {
                        headers.insert(X_NONCE, v);
                    }
                }
            }
            UpstreamKind::Generic => {
                // Any method: a form POST is answered with a page too (the form again, with
                // its errors).
                if nonce.is_some() && accepts_html(req.headers()) {
                    req.headers_mut().insert(
                        header::ACCEPT_ENCODING,
                        HeaderValue::from_static("identity"),
                    );
                }
            }
        }
    }

    /// The placeholder rewrite of a generic upstream's HTML (see the module docs).
    fn transform_response(
        &self,
        res: Response<ProxyBody>,
        extensions: &Extensions,
        method: &Method,
    ) -> Response<ProxyBody> {
        if self.inner.upstream_kind != UpstreamKind::Generic {
            return res;
        }
        let Some(nonce) = Nonce::of(extensions) else {
            return res;
        };
        let status = res.status();
        if status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return res;
        }
        let (mut parts, body) = res.into_parts();
        if !nonce_html::should_rewrite(&parts.headers) {
            return Response::from_parts(parts, body);
        }
        let rewriter = self.inner.rewriter.clone().charset_from(&parts.headers);
        nonce_html::prepare_response_headers(&mut parts.headers);
        if *method == Method::HEAD {
            // No body to rewrite, but the head a GET would get: no upstream length (the
            // rewrite changes it), no validators, no-store.
            return Response::from_parts(parts, body);
        }
        Response::from_parts(parts, UnsyncBoxBody::new(rewriter.rewrite(body, nonce)))
    }

    /// The upstream request's head: URI, cleaned headers, forwarding and identity headers.
    fn upstream_request(
        &self,
        mut parts: http::request::Parts,
        extensions: &Extensions,
        upgrade: bool,
        absolute: bool,
    ) -> Result<http::request::Parts, Rejection> {
        let client_host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = if absolute {
            Uri::builder()
                .scheme(self.inner.scheme.clone())
                .authority(self.inner.authority.clone())
                .path_and_query(pq)
                .build()
                .map_err(|_| Rejection::invalid_path("Malformed path"))?
        } else {
            Uri::from(pq)
        };
        parts.version = Version::HTTP_11;

        let headers = &mut parts.headers;
        let te_trailers = te_trailers(headers);
        let upgrade_to = upgrade
            .then(|| headers.get(header::UPGRADE).cloned())
            .flatten();
        strip_hop_by_hop(headers);
        if te_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        if let Some(proto) = upgrade_to {
            headers.insert(header::UPGRADE, proto);
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        // HTTP/2 splits cookies over several fields; HTTP/1.1 wants one.
        join_cookies(headers);
        match &client_host {
            Some(host) => {
                headers.insert(header::HOST, host.clone());
            }
            // An HTTP/1.0 client may send none; the upstream's name stands in.
            None => {
                if let Ok(v) = HeaderValue::from_str(self.inner.authority.as_str()) {
                    headers.insert(header::HOST, v);
                }
            }
        }

        let hop = this_hop(extensions);
        // The client's element, before our hop changes the fields it is read from.
        let mut element = Vec::with_capacity(64);
        if !headers.contains_key(FORWARDED)
            && headers.contains_key(X_FORWARDED_FOR)
            && let Some(client) = client_ip_of(extensions, &hop)
        {
            push_client_element(&mut element, headers, client);
        }
        if let Some((_, peer)) = &hop.peer {
            append_list(headers, X_FORWARDED_FOR, peer.as_str().to_string());
        }
        // One hashed lookup per name (entry), not a look and then an insert.
        if let Entry::Vacant(v) = headers.entry(X_FORWARDED_PROTO) {
            v.insert(HeaderValue::from_static(hop.proto));
        }
        if let Some(host) = &client_host
            && let Entry::Vacant(v) = headers.entry(X_FORWARDED_HOST)
        {
            v.insert(host.clone());
        }
        hop.write_element(&mut element, client_host.as_ref());
        append_list(
            headers,
            FORWARDED,
            String::from_utf8(element).unwrap_or_default(),
        );

        // The layer strips client copies already (step 3); this keeps the proxy right on its
        // own, with a look at each name before paying for a hashed removal per header.
        if headers.keys().any(|n| {
            n == X_PORTCULLIS_USER || n == X_PORTCULLIS_ROLES || n == X_PORTCULLIS_CLIENT_IP
        }) {
            headers.remove(X_PORTCULLIS_USER);
            headers.remove(X_PORTCULLIS_ROLES);
            headers.remove(X_PORTCULLIS_CLIENT_IP);
        }
        if let Some(ip) = client_ip_of(extensions, &hop)
            && let Ok(v) = HeaderValue::from_str(ip.as_str())
        {
            headers.insert(X_PORTCULLIS_CLIENT_IP, v);
        }
        // The request's one id, as the client's answer and the audit log carry it, so the
        // application's logs join them (a client's copies go: at most one, and ours).
        if let Some(id) = RequestId::of(extensions) {
            headers.insert(X_REQUEST_ID, id.header_value());
        }
        if let Some(p) = extensions.get::<Principal>() {
            match (
                HeaderValue::from_str(&p.id),
                HeaderValue::from_str(&p.roles.join(",")),
            ) {
                (Ok(user), Ok(roles)) => {
                    headers.insert(X_PORTCULLIS_USER, user);
                    headers.insert(X_PORTCULLIS_ROLES, roles);
                }
                // A principal that cannot be written as a header is not sent at all: the
                // upstream then sees an anonymous request, never a mangled identity.
                _ => tracing::warn!("principal id or roles are not valid header values"),
            }
        }
        Ok(parts)
    }
}

impl Proxy {
    /// The upstream request head of a bodiless request, as HTTP/1.1 bytes for `h1`: the
    /// fields [`Proxy::upstream_request`] and [`Proxy::transform_request`] make (a unit test
    /// holds the two to each other), written in one pass over the client's fields instead of
    /// being inserted into and removed from a header map. Origin-form target, no upgrade.
    fn write_upstream_head(
        &self,
        out: &mut Vec<u8>,
        parts: &http::request::Parts,
        extensions: &Extensions,
    ) {
        fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        let headers = &parts.headers;
        out.extend_from_slice(parts.method.as_str().as_bytes());
        out.push(b' ');
        let target = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");

        // The fields `Connection` names are this hop's too (but `Content-Type`).
        let named: Vec<HeaderName> = if headers.contains_key(header::CONNECTION) {
            connection_named(headers).collect()
        } else {
            Vec::new()
        };
        // Found in the pass below (fields it skips), not by lookups of their own.
        let mut te_trailers = false;
        let mut host = None;
        let nonce = Nonce::of(extensions);
        let nextjs = self.inner.upstream_kind == UpstreamKind::Nextjs;
        let identity = self.inner.upstream_kind == UpstreamKind::Generic
            && nonce.is_some()
            && accepts_html(headers);
        let (mut cookies, mut xff, mut forwarded, mut xfp, mut xfh) =
            (0, false, false, false, false);
        for (name, value) in headers {
            if *name == header::TE {
                te_trailers |= te_names_trailers(value.as_bytes());
            } else if *name == header::HOST {
                host = host.or(Some(value));
            }
            if HOP_BY_HOP.contains(name)
                || named.contains(name)
                || *name == header::HOST
                || *name == X_PORTCULLIS_USER
                || *name == X_PORTCULLIS_ROLES
                || *name == X_PORTCULLIS_CLIENT_IP
                || *name == X_REQUEST_ID
                || (nextjs
                    && (*name == header::CONTENT_SECURITY_POLICY
                        || *name == header::CONTENT_SECURITY_POLICY_REPORT_ONLY
                        || *name == X_NONCE))
                || (identity && *name == header::ACCEPT_ENCODING)
            {
                continue;
            }
            // Joined or extended below.
            if *name == header::COOKIE {
                cookies += 1;
                continue;
            }
            if *name == X_FORWARDED_FOR {
                xff = true;
                continue;
            }
            if *name == FORWARDED {
                forwarded = true;
                continue;
            }
            xfp |= *name == X_FORWARDED_PROTO;
            xfh |= *name == X_FORWARDED_HOST;
            line(out, name.as_str().as_bytes(), value.as_bytes());
        }
        if te_trailers {
            out.extend_from_slice(b"te: trailers\r\n");
        }
        // The client's `Host` (the first), or an absolute target's authority.
        let from_target = host
            .is_none()
            .then(|| parts.uri.authority())
            .flatten()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
        let client_host = host.or(from_target.as_ref());
        match client_host {
            Some(host) => line(out, b"host", host.as_bytes()),
            // An HTTP/1.0 client may send none; the upstream's name stands in.
            None => line(out, b"host", self.inner.authority.as_str().as_bytes()),
        }
        // HTTP/2 splits cookies over several fields; HTTP/1.1 wants one.
        if cookies > 0 {
            out.extend_from_slice(b"cookie: ");
            for (i, v) in headers.get_all(header::COOKIE).iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b"; ");
                }
                out.extend_from_slice(v.as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
        let hop = this_hop(extensions);
        match &hop.peer {
            Some((_, peer)) => write_list(out, headers, X_FORWARDED_FOR, xff, |o| {
                o.extend_from_slice(peer.as_bytes());
            }),
            // Nothing of ours to add: the inbound fields as they came.
            None if xff => {
                for v in headers.get_all(X_FORWARDED_FOR) {
                    line(out, X_FORWARDED_FOR.as_str().as_bytes(), v.as_bytes());
                }
            }
            None => {}
        }
        if !xfp {
            line(
                out,
                X_FORWARDED_PROTO.as_str().as_bytes(),
                hop.proto.as_bytes(),
            );
        }
        if let Some(host) = client_host.filter(|_| !xfh) {
            line(out, X_FORWARDED_HOST.as_str().as_bytes(), host.as_bytes());
        }
        let client = client_ip_of(extensions, &hop);
        write_list(out, headers, FORWARDED, forwarded, |o| {
            if xff
                && !forwarded
                && let Some(client) = client
            {
                push_client_element(o, headers, client);
            }
            hop.write_element(o, client_host);
        });
        if let Some(id) = RequestId::of(extensions) {
            line(
                out,
                X_REQUEST_ID.as_str().as_bytes(),
                id.as_str().as_bytes(),
            );
        }
        if let Some(ip) = client {
            line(
                out,
                X_PORTCULLIS_CLIENT_IP.as_str().as_bytes(),
                ip.as_bytes(),
            );
        }
        if let Some(p) = extensions.get::<Principal>() {
            match (
                HeaderValue::from_str(&p.id),
                HeaderValue::from_str(&p.roles.join(",")),
            ) {
                (Ok(user), Ok(roles)) => {
                    line(out, X_PORTCULLIS_USER.as_str().as_bytes(), user.as_bytes());
                    line(
                        out,
                        X_PORTCULLIS_ROLES.as_str().as_bytes(),
                        roles.as_bytes(),
                    );
                }
                _ => tracing::warn!("principal id or roles are not valid header values"),
            }
        }
        if nextjs {
            let csp = self.inner.csps.for_route(MatchedRoute::of(extensions));
            if let (Some(nonce), Some(csp)) = (nonce, csp) {
                line(
                    out,
                    csp.header_name().as_str().as_bytes(),
                    csp.render(Some(nonce)).as_bytes(),
                );
                if HeaderValue::from_str(nonce.as_str()).is_ok() {
                    line(out, X_NONCE.as_str().as_bytes(), nonce.as_str().as_bytes());
                }
            }
        }
        if identity {
            out.extend_from_slice(b"accept-encoding: identity\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// Writes a comma-separated list field: the inbound fields' items (when `inbound`), then
/// `item`, as one field — what [`append_list`] makes of them.
fn write_list(
    out: &mut Vec<u8>,
    headers: &HeaderMap,
    name: HeaderName,
    inbound: bool,
    item: impl FnOnce(&mut Vec<u8>),
) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    if inbound {
        for v in headers
            .get_all(&name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
        {
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b", ");
        }
    }
    item(out);
    out.extend_from_slice(b"\r\n");
}

/// The comma-separated items of a list field's value, trimmed, empty ones skipped.
pub(crate) fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Whether the client accepts trailers (`TE: trailers`, with or without parameters).
pub(crate) fn te_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .any(|v| te_names_trailers(v.as_bytes()))
}

/// Whether one `TE` field value lists `trailers` (with or without parameters).
pub(crate) fn te_names_trailers(value: &[u8]) -> bool {
    list_items(value).any(|t| {
        t.split(|&b| b == b';')
            .next()
            .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"))
    })
}

impl<B> tower::Service<Request<B>> for Proxy
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<Response<ProxyBody>, std::convert::Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        // Mapped, not awaited in an `async` block: the forwarding future (a few KiB) is moved
        // once, into the box, instead of once more into the block on its first poll.
        Box::pin(futures_util::FutureExt::map(self.clone().forward(req), Ok))
    }
}

/// Copies bytes both ways between the upgraded client and upstream connections, until either
/// side closes or no byte has crossed either way for `idle` (then both are closed).
async fn tunnel(client: OnUpgrade, upstream: OnUpgrade, request_id: String, idle: Duration) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(request_id, error = %e, "upgrade failed");
            return;
        }
    };
    let start = Instant::now();
    let heard = AtomicU64::new(0);
    let mut client = Heard::new(TokioIo::new(client), &heard, start);
    let mut upstream = Heard::new(TokioIo::new(upstream), &heard, start);
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    tokio::pin!(copy);
    loop {
        let deadline = start + Duration::from_millis(heard.load(Ordering::Relaxed)) + idle;
        tokio::select! {
            done = &mut copy => {
                match done {
                    Ok((up, down)) => tracing::debug!(request_id, up, down, "upgraded connection closed"),
                    Err(e) => tracing::debug!(request_id, error = %e, "upgraded connection ended"),
                }
                return;
            }
            _ = tokio::time::sleep_until(deadline) => {
                let last = start + Duration::from_millis(heard.load(Ordering::Relaxed));
                if Instant::now() >= last + idle {
                    tracing::info!(request_id, idle_secs = idle.as_secs(), "upgraded connection idle: closed");
                    return;
                }
            }
        }
    }
}

/// An upgraded connection that notes, in milliseconds since `start`, when it last read a
/// byte (in `heard`, which both sides of a tunnel share).
struct Heard<'a, T> {
    io: T,
    heard: &'a AtomicU64,
    start: Instant,
}

impl<'a, T> Heard<'a, T> {
    fn new(io: T, heard: &'a AtomicU64, start: Instant) -> Self {
        Heard { io, heard, start }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Heard<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            let ms = self.start.elapsed().as_millis() as u64;
            self.heard.store(ms, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Heard<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// An HTTP/2 response body whose client must keep taking it: when the server has handed
/// the client a frame (or the head) and not asked for the next one for `limit` — the
/// stream's flow-control window stays shut — the upstream body is dropped (its connection
/// closed) and the stream ends in an error. Waiting on the upstream (a quiet event stream,
/// a long poll) is never a stall: the server is asking then.
struct StallGuard {
    shared: Arc<StallShared>,
    /// The watchdog, stopped with the body: a finished response leaves no task behind.
    watchdog: tokio::task::AbortHandle,
}

impl Drop for StallGuard {
    fn drop(&mut self) {
        self.watchdog.abort();
    }
}

struct StallShared {
    body: std::sync::Mutex<Option<ProxyBody>>,
    start: Instant,
    /// Milliseconds since `start` when the server last got a frame (or the head), so waits
    /// on the client from then; [`StallShared::ASKING`] while it waits on the upstream;
    /// [`StallShared::DONE`] once the body has ended.
    handed_ms: AtomicU64,
}

impl StallShared {
    const ASKING: u64 = u64::MAX;
    const DONE: u64 = u64::MAX - 1;

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(Self::DONE - 1)
    }
}

impl StallGuard {
    /// Wraps `body` and starts its watchdog.
    fn start(body: ProxyBody, limit: Duration, request_id: &str) -> StallGuard {
        let shared = Arc::new(StallShared {
            body: std::sync::Mutex::new(Some(body)),
            start: Instant::now(),
            handed_ms: AtomicU64::new(0),
        });
        let watched = Arc::downgrade(&shared);
        let request_id = request_id.to_string();
        let watchdog = tokio::spawn(async move {
            let tick = (limit / 4).max(Duration::from_millis(10));
            loop {
                tokio::time::sleep(tick).await;
                // The response went away (finished, or the stream was reset): done.
                let Some(shared) = watched.upgrade() else {
                    return;
                };
                let handed = shared.handed_ms.load(Ordering::Relaxed);
                if handed == StallShared::DONE {
                    return;
                }
                if handed != StallShared::ASKING
                    && shared.now_ms().saturating_sub(handed)
                        >= u64::try_from(limit.as_millis()).unwrap_or(u64::MAX)
                {
                    let body = shared.body.lock().unwrap_or_else(|p| p.into_inner()).take();
                    drop(body);
                    tracing::info!(
                        request_id,
                        "an HTTP/2 client took no byte of its response within the idle timeout: stream ended"
                    );
                    return;
                }
            }
        });
        StallGuard {
            shared,
            watchdog: watchdog.abort_handle(),
        }
    }
}

impl Body for StallGuard {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let shared = &self.shared;
        let mut slot = shared.body.lock().unwrap_or_else(|p| p.into_inner());
        let Some(body) = slot.as_mut() else {
            return Poll::Ready(Some(Err("the client stopped taking the response".into())));
        };
        let polled = Pin::new(body).poll_frame(cx);
        let handed = match &polled {
            Poll::Pending => StallShared::ASKING,
            Poll::Ready(Some(Ok(_))) => shared.now_ms(),
            Poll::Ready(_) => StallShared::DONE,
        };
        shared.handed_ms.store(handed, Ordering::Relaxed);
        polled
    }

    fn is_end_stream(&self) -> bool {
        let slot = self.shared.body.lock().unwrap_or_else(|p| p.into_inner());
        // A body dropped for a stall has not ended: the next poll says why, so the stream
        // is reset rather than closed as if complete.
        slot.as_ref().is_some_and(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let slot = self.shared.body.lock().unwrap_or_else(|p| p.into_inner());
        slot.as_ref()
            .map_or_else(SizeHint::default, |b| b.size_hint())
    }
}

/// True when the client may take HTML for an answer: no `Accept`, or one that names
/// `text/html` or `application/xhtml+xml` (browsers' navigations do; their script, style and
/// image requests do not, so those keep their compression).
fn accepts_html(headers: &HeaderMap) -> bool {
    let mut accepts = headers.get_all(header::ACCEPT).iter().peekable();
    if accepts.peek().is_none() {
        return true;
    }
    accepts
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|item| item.split(';').next())
        .map(str::trim)
        .any(|t| {
            t.eq_ignore_ascii_case("text/html") || t.eq_ignore_ascii_case("application/xhtml+xml")
        })
}

/// True when the request asks for a WebSocket (`Connection: upgrade` + `Upgrade: websocket`,
/// one field naming that one protocol): the only upgrade the gateway tunnels. Any other
/// (`h2c` above all: an upstream that took it would then read HTTP/2 streams the layer never
/// sees) goes on as a plain request, its `Upgrade` dropped with the other hop-by-hop fields,
/// as nginx and Envoy do unless told otherwise.
fn is_upgrade(headers: &HeaderMap) -> bool {
    let mut protocols = headers.get_all(header::UPGRADE).iter();
    let websocket = match (protocols.next(), protocols.next()) {
        (Some(only), None) => only
            .as_bytes()
            .trim_ascii()
            .eq_ignore_ascii_case(b"websocket"),
        _ => false,
    };
    websocket && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// The fields `Connection` names as this hop's, which go with it — but `Content-Type`, which
/// says how to read the body the layer judged by it (the content-type allowlist, the form
/// `_method` scan): without it, the application would read those bytes its own way (Rack and
/// Rails take a POST without `Content-Type` for a form, `_method` override included).
fn connection_named(headers: &HeaderMap) -> impl Iterator<Item = HeaderName> + '_ {
    connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .filter(|n| *n != header::CONTENT_TYPE)
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes the hop-by-hop headers: those `Connection` names (never `Content-Type`), then the
/// fixed list.
///
/// ```
/// use http::{HeaderMap, HeaderValue};
/// use portcullis_gateway::proxy::strip_hop_by_hop;
/// let mut headers = HeaderMap::new();
/// headers.insert("connection", HeaderValue::from_static("keep-alive, x-trace"));
/// headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
/// headers.insert("x-trace", HeaderValue::from_static("1")); // named by Connection
/// headers.insert("content-type", HeaderValue::from_static("text/html"));
/// strip_hop_by_hop(&mut headers);
/// assert_eq!(headers.keys().collect::<Vec<_>>(), ["content-type"]);
/// ```
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one look at each name instead of a removal per hop-by-hop
    // name. (Without `Connection`, no other header is named hop-by-hop either.)
    if !headers.keys().any(|n| HOP_BY_HOP.contains(n)) {
        return;
    }
    let named: Vec<HeaderName> = connection_named(headers).collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The hop-by-hop headers every message loses (besides those `Connection` names). With them
/// `Proxy-Authorization` and `Proxy-Authenticate` (credentials and challenges for a proxy,
/// which the gateway never asks for: a client's proxy password is no business of the
/// application) and `Proxy`, which no client needs to send and CGI-style servers expose as
/// the `HTTP_PROXY` environment variable their HTTP clients then use (httpoxy, CVE-2016-5385).
const HOP_BY_HOP: [HeaderName; 10] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    PROXY,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined: Vec<&[u8]> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if let Ok(v) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        headers.insert(header::COOKIE, v);
    }
}

/// Appends `item` to a comma-separated list header, joining repeated fields into one.
fn append_list(headers: &mut HeaderMap, name: HeaderName, item: String) {
    match headers.entry(name) {
        // The common case: we are the first hop. The string becomes the value (checked, not
        // copied).
        Entry::Vacant(v) => {
            if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(item)) {
                v.insert(value);
            }
        }
        Entry::Occupied(mut o) => {
            let mut parts: Vec<String> = o
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect();
            parts.push(item);
            // Replaces every field of that name with the one joined list.
            if let Ok(value) = HeaderValue::from_str(&parts.join(", ")) {
                o.insert(value);
            }
        }
    }
}

/// This hop, for the forwarding fields: the scheme the client used and the peer's address.
struct Hop {
    proto: &'static str,
    peer: Option<(IpAddr, IpText)>,
}

fn this_hop(extensions: &Extensions) -> Hop {
    let proto = if extensions.get::<Https>().is_some() {
        "https"
    } else {
        "http"
    };
    let peer = extensions.get::<PeerAddr>().map(|p| {
        let ip = canonical_ip(p.0.ip());
        (ip, IpText::of(ip))
    });
    Hop { proto, peer }
}

/// Appends the client's `Forwarded` element and `", "`, for a request whose trusted proxy in
/// front sent `X-Forwarded-For` but no `Forwarded` (the layer keeps either only from a trusted
/// proxy; the callers check): `for=` the client the layer resolved, with that proxy's
/// `X-Forwarded-Proto` and `X-Forwarded-Host` (the first of each). Without it, an application
/// reading `Forwarded` (Spring's, for one) would take the proxy for the client, and our hop's
/// scheme for the client's. A trusted `Forwarded` is kept as it came instead.
fn push_client_element(out: &mut Vec<u8>, headers: &HeaderMap, client: IpText) {
    let first = |name| {
        headers
            .get_all(name)
            .iter()
            .flat_map(|v| list_items(v.as_bytes()))
            .next()
            .and_then(|v| std::str::from_utf8(v).ok())
    };
    push_forwarded_for(out, Some(client.as_bytes()));
    if let Some(proto) = first(X_FORWARDED_PROTO) {
        out.extend_from_slice(b";proto=");
        push_forwarded_value(out, proto);
    }
    if let Some(host) = first(X_FORWARDED_HOST) {
        out.extend_from_slice(b";host=");
        push_forwarded_value(out, host);
    }
    out.extend_from_slice(b", ");
}

/// Appends `for=` and the address as text (an IPv6 one bracketed and quoted), or `unknown`.
fn push_forwarded_for(out: &mut Vec<u8>, ip: Option<&[u8]>) {
    out.extend_from_slice(b"for=");
    match ip {
        Some(v6) if v6.contains(&b':') => {
            out.extend_from_slice(b"\"[");
            out.extend_from_slice(v6);
            out.extend_from_slice(b"]\"");
        }
        Some(v4) => out.extend_from_slice(v4),
        None => out.extend_from_slice(b"unknown"),
    }
}

impl Hop {
    /// Our hop as an RFC 7239 `Forwarded` element: `for=…;proto=…;host=…`.
    fn write_element(&self, out: &mut Vec<u8>, host: Option<&HeaderValue>) {
        push_forwarded_for(out, self.peer.as_ref().map(|(_, text)| text.as_bytes()));
        out.extend_from_slice(b";proto=");
        out.extend_from_slice(self.proto.as_bytes());
        if let Some(host) = host.and_then(|h| h.to_str().ok()) {
            out.extend_from_slice(b";host=");
            push_forwarded_value(out, host);
        }
    }
}

/// Appends a `Forwarded` parameter value: a token as is, anything else as a quoted string.
fn push_forwarded_value(out: &mut Vec<u8>, v: &str) {
    let v = v.as_bytes();
    if !v.is_empty() && v.iter().all(|&b| TCHAR[usize::from(b)]) {
        out.extend_from_slice(v);
        return;
    }
    out.push(b'"');
    // Runs without a `\` or `"` are copied whole; those two are escaped.
    let mut rest = v;
    while let Some(at) = rest.iter().position(|&b| b == b'\\' || b == b'"') {
        out.extend_from_slice(&rest[..at]);
        out.push(b'\\');
        out.push(rest[at]);
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
    out.push(b'"');
}

/// RFC 9110 `tchar`: the bytes of a token, one table lookup each.
const TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    t
};

/// 502: the upstream could not be reached or broke the exchange.
///
/// ```
/// use portcullis_gateway::proxy::upstream_unavailable;
/// let r = upstream_unavailable();
/// assert_eq!((r.status().as_u16(), r.code()), (502, "upstream_unavailable"));
/// let body: serde_json::Value = serde_json::from_slice(&r.body_json("req-1")).unwrap();
/// assert_eq!(body["code"], "upstream_unavailable");
/// ```
pub fn upstream_unavailable() -> Rejection {
    Rejection::new(
        StatusCode::BAD_GATEWAY,
        "upstream_unavailable",
        "Upstream unavailable",
        AuditAction::SecurityEvent,
        Control::Internal,
    )
}

/// 504: the upstream did not answer in time.
///
/// ```
/// use portcullis_gateway::proxy::upstream_timeout;
/// let r = upstream_timeout();
/// assert_eq!((r.status().as_u16(), r.code()), (504, "upstream_timeout"));
/// ```
pub fn upstream_timeout() -> Rejection {
    Rejection::new(
        StatusCode::GATEWAY_TIMEOUT,
        "upstream_timeout",
        "Upstream timed out",
        AuditAction::SecurityEvent,
        Control::Internal,
    )
}

/// 408: the client did not send its request in time.
///
/// ```
/// use portcullis_gateway::proxy::request_timeout;
/// let r = request_timeout();
/// assert_eq!((r.status().as_u16(), r.code()), (408, "request_timeout"));
/// ```
pub fn request_timeout() -> Rejection {
    Rejection::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        "Request timed out",
        AuditAction::SecurityEvent,
        Control::ServerLimits,
    )
}

/// 400: the client's body broke off (or was cut by the body limit, which the layer then
/// answers with 413 instead).
fn request_body_incomplete() -> Rejection {
    Rejection::new(
        StatusCode::BAD_REQUEST,
        "request_body_incomplete",
        "Request body could not be read",
        AuditAction::InvalidInput,
        Control::Body,
    )
}

/// Why a request got no response from the upstream.
#[derive(Debug)]
enum SendError {
    /// The TCP connect (or the name lookup) failed.
    Connect(std::io::Error),
    /// The connect did not finish within `upstream_connect_timeout`.
    ConnectTimeout,
    /// The exchange failed once the connection was up.
    Http(hyper::Error),
    /// A bodiless request's exchange failed once the connection was up (see `h1`).
    Exchange(h1::Error),
    /// The shared pool (work-stealing threading) failed.
    Pooled(hyper_util::client::legacy::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(_) => f.write_str("connect"),
            SendError::ConnectTimeout => f.write_str("connect: timed out"),
            SendError::Http(_) | SendError::Exchange(_) => f.write_str("exchange"),
            SendError::Pooled(e) => write!(f, "{e}"),
        }
    }
}

impl StdError for SendError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            SendError::Connect(e) => Some(e),
            SendError::ConnectTimeout => None,
            SendError::Http(e) => Some(e),
            SendError::Exchange(e) => Some(e),
            SendError::Pooled(e) => e.source(),
        }
    }
}

fn classify_error(e: &SendError, body: BodyState) -> Rejection {
    match body {
        BodyState::TimedOut => return request_timeout(),
        BodyState::Failed => return request_body_incomplete(),
        _ => {}
    }
    let pooled = match e {
        SendError::ConnectTimeout => return upstream_timeout(),
        SendError::Connect(_) | SendError::Http(_) | SendError::Exchange(_) => {
            return upstream_unavailable();
        }
        SendError::Pooled(e) => e,
    };
    let timed_out = io_cause(pooled, |kind| kind == std::io::ErrorKind::TimedOut);
    if pooled.is_connect() && timed_out {
        upstream_timeout()
    } else {
        upstream_unavailable()
    }
}

/// Whether the shared pool's error is a connection that ended before any answer came.
fn pooled_closed_before_answer(e: &hyper_util::client::legacy::Error) -> bool {
    let mut cause = StdError::source(e);
    while let Some(c) = cause {
        if let Some(h) = c.downcast_ref::<hyper::Error>() {
            return local_pool::closed_before_answer(h);
        }
        cause = c.source();
    }
    false
}

/// Whether an I/O error among `e`'s causes (its sources, not `e` itself) has a kind `wanted`
/// accepts.
fn io_cause(e: &dyn StdError, wanted: impl Fn(std::io::ErrorKind) -> bool) -> bool {
    let mut source = e.source();
    while let Some(s) = source {
        if s.downcast_ref::<std::io::Error>()
            .is_some_and(|io| wanted(io.kind()))
        {
            return true;
        }
        source = s.source();
    }
    false
}

fn error_response(r: Rejection, request_id: &str) -> Response<ProxyBody> {
    r.into_response_with_id(request_id).map(|b| {
        http_body_util::Full::new(b)
            .map_err(|never| match never {})
            .boxed_unsync()
    })
}

fn empty() -> ProxyBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Displays an error with its sources, for the log.
struct ErrorChain<'a>(&'a dyn StdError);

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

/// How far the client's request body got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyState {
    /// On its way, or not asked for yet: what comes next is up to the upstream taking it.
    Reading = 0,
    Done = 1,
    Failed = 2,
    TimedOut = 3,
    /// The gateway is waiting for the client to send more.
    WaitingForClient = 4,
}

/// The slowest average rate, in bytes per second, at which a request body earns time beyond
/// `request_timeout` (and `upstream_timeout`, while the upstream takes it): a large upload
/// that keeps coming at least this fast is never cut for taking long, while a client that
/// trickles its body slower is cut once the timeout and what it earned have passed.
///
/// ```
/// assert_eq!(portcullis_gateway::proxy::MIN_BODY_RATE, 1024);
/// ```
pub const MIN_BODY_RATE: u64 = 1024;

/// How far the client's request body got, and the time it earned beyond the timeouts.
#[derive(Debug, Default)]
pub(crate) struct BodyProgress {
    state: AtomicU8,
    /// Bytes received so far.
    bytes: AtomicU64,
    /// When the last of them arrived, in microseconds since the request began.
    last_us: AtomicU64,
}

impl BodyProgress {
    /// Notes `n` more bytes, arrived `since_start` into the request.
    fn received(&self, n: usize, since_start: Duration) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        let us = u64::try_from(since_start.as_micros()).unwrap_or(u64::MAX);
        self.last_us.store(us, Ordering::Relaxed);
    }

    /// The time the body earned beyond the timeouts: how long it kept arriving, up to one
    /// second per [`MIN_BODY_RATE`] bytes.
    pub(crate) fn earned(&self) -> Duration {
        let by_rate = self.bytes.load(Ordering::Relaxed).saturating_mul(1_000_000) / MIN_BODY_RATE;
        Duration::from_micros(self.last_us.load(Ordering::Relaxed).min(by_rate))
    }

    pub(crate) fn get(&self) -> BodyState {
        match self.state.load(Ordering::Acquire) {
            0 => BodyState::Reading,
            1 => BodyState::Done,
            2 => BodyState::Failed,
            3 => BodyState::TimedOut,
            _ => BodyState::WaitingForClient,
        }
    }

    fn set(&self, s: BodyState) {
        self.state.store(s as u8, Ordering::Release);
    }
}

/// Runs `fut` until `start + wait`, plus the time the request body earned while it arrived
/// (see [`MIN_BODY_RATE`]); `Err` once that passes.
async fn within<F: Future>(
    fut: F,
    start: Instant,
    wait: Duration,
    progress: Option<&BodyProgress>,
) -> Result<F::Output, ()> {
    let Some(progress) = progress else {
        return tokio::time::timeout(wait, fut).await.map_err(drop);
    };
    let mut fut = std::pin::pin!(fut);
    loop {
        match tokio::time::timeout_at(start + wait + progress.earned(), fut.as_mut()).await {
            Ok(out) => return Ok(out),
            // The body earned more time meanwhile.
            Err(_) if Instant::now() < start + wait + progress.earned() => {}
            Err(_) => return Err(()),
        }
    }
}

/// The request body was not received within `request_timeout`.
#[derive(Debug)]
struct RequestBodyTimeout;

impl std::fmt::Display for RequestBodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body was not received in time")
    }
}

impl StdError for RequestBodyTimeout {}

/// The client's body on its way upstream: fails once `request_timeout`, plus the time the
/// body earned (see [`MIN_BODY_RATE`]), passes while waiting for the client, and records how
/// far it got so errors can be told apart.
struct DeadlineBody<B> {
    inner: B,
    start: Instant,
    request_timeout: Duration,
    /// `progress` says `WaitingForClient` (kept here too, to set it once per wait).
    waiting: bool,
    /// Armed the first time the client keeps the body waiting.
    sleep: Option<Pin<Box<Sleep>>>,
    progress: Arc<BodyProgress>,
}

impl<B: Body> DeadlineBody<B> {
    fn new(
        inner: B,
        start: Instant,
        request_timeout: Duration,
        progress: Arc<BodyProgress>,
    ) -> Self {
        if inner.is_end_stream() {
            progress.set(BodyState::Done);
        }
        DeadlineBody {
            inner,
            start,
            request_timeout,
            waiting: false,
            sleep: None,
            progress,
        }
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.progress.received(data.len(), this.start.elapsed());
                }
                if this.inner.is_end_stream() {
                    this.progress.set(BodyState::Done);
                } else if this.waiting {
                    this.progress.set(BodyState::Reading);
                }
                this.waiting = false;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.progress.set(BodyState::Failed);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.progress.set(BodyState::Done);
                Poll::Ready(None)
            }
            Poll::Pending => {
                if !this.waiting {
                    this.waiting = true;
                    this.progress.set(BodyState::WaitingForClient);
                }
                let deadline = this.start + this.request_timeout + this.progress.earned();
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.deadline() != deadline {
                    // The body earned more time since the sleep was set.
                    sleep.as_mut().reset(deadline);
                }
                if sleep.as_mut().poll(cx).is_ready() {
                    this.progress.set(BodyState::TimedOut);
                    return Poll::Ready(Some(Err(Box::new(RequestBodyTimeout))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The proxy on its own (without the layer in front): forged identity headers never
    /// reach the upstream, and the principal's, when there is one, replace them.
    #[tokio::test]
    async fn forged_identity_headers_are_dropped_and_the_principal_sent() {
        let config = crate::config::GatewayConfig::from_str(
            "[server]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:9\"\n",
            "test.toml",
        )
        .unwrap();
        let proxy = Proxy::for_config(&config).unwrap();
        let head = |principal: Option<Principal>| {
            let (mut parts, ()) = Request::builder()
                .uri("/api/x")
                .header("host", "app.example")
                .header("x-portcullis-user", "root")
                .header("X-Portcullis-Roles", "admin")
                .body(())
                .unwrap()
                .into_parts();
            let mut extensions = std::mem::take(&mut parts.extensions);
            if let Some(p) = principal {
                extensions.insert(p);
            }
            proxy
                .upstream_request(parts, &extensions, false, false)
                .unwrap()
                .headers
        };
        let anonymous = head(None);
        assert!(!anonymous.contains_key(X_PORTCULLIS_USER));
        assert!(!anonymous.contains_key(X_PORTCULLIS_ROLES));
        let alice = head(Some(Principal::new(
            "alice",
            ["user", "ops"],
            portcullis::auth::AuthMethod::Jwt,
        )));
        assert_eq!(alice.get_all(X_PORTCULLIS_USER).iter().count(), 1);
        assert_eq!(alice[X_PORTCULLIS_USER], "alice");
        assert_eq!(alice[X_PORTCULLIS_ROLES], "user,ops");
    }

    /// What the upstream gets, as sorted `name: value` lines after the request line.
    fn lines_of(head: &[u8]) -> (String, Vec<String>) {
        let text = String::from_utf8_lossy(head).into_owned();
        assert!(text.ends_with("\r\n\r\n"), "{text:?}");
        let mut lines = text.split("\r\n").filter(|l| !l.is_empty());
        let first = lines.next().unwrap_or_default().to_string();
        let mut fields: Vec<String> = lines.map(str::to_string).collect();
        fields.sort();
        (first, fields)
    }

    /// The bytes the bodiless path writes (`write_upstream_head`) carry exactly the fields
    /// the header-map path (`upstream_request` + `transform_request`) makes, case by case.
    #[tokio::test]
    async fn the_direct_head_has_the_fields_of_the_header_map_path() {
        use std::net::SocketAddr;
        type Case = (
            &'static str,
            &'static str,
            Vec<(&'static str, &'static [u8])>,
        );
        let cases: Vec<Case> = vec![
            (
                "GET",
                "/",
                vec![
                    ("host", b"app.example"),
                    ("accept", b"*/*"),
                    ("user-agent", b"t/1"),
                ],
            ),
            (
                "GET",
                "/a/b?c=d&e",
                vec![
                    ("host", b"app.example:8443"),
                    ("cookie", b"a=1"),
                    ("cookie", b"b=2"),
                    ("x-forwarded-for", b" 1.1.1.1, 2.2.2.2 "),
                    ("x-forwarded-for", b"3.3.3.3"),
                    ("forwarded", b"for=1.1.1.1;proto=https"),
                    ("x-forwarded-proto", b"https"),
                    ("x-forwarded-host", b"front.example"),
                ],
            ),
            (
                "GET",
                "/hop",
                vec![
                    ("host", b"app.example"),
                    (
                        "connection",
                        b"keep-alive, x-secret, X-Forwarded-For, cookie",
                    ),
                    ("x-secret", b"1"),
                    ("x-forwarded-for", b"9.9.9.9"),
                    ("cookie", b"gone=1"),
                    ("te", b"gzip, trailers;q=0.5"),
                    ("keep-alive", b"timeout=5"),
                    ("proxy-connection", b"keep-alive"),
                    ("upgrade", b"websocket"),
                    ("trailer", b"x-sum"),
                    ("transfer-encoding", b"chunked"),
                ],
            ),
            (
                "GET",
                "/named-content-type",
                vec![
                    ("host", b"app.example"),
                    ("connection", b"Content-Type, x-hop"),
                    ("content-type", b"text/plain"),
                    ("x-hop", b"1"),
                ],
            ),
            ("GET", "http://app.example:8080/x?y", vec![]),
            ("HEAD", "/no-host", vec![("accept", b"text/html")]),
            (
                "DELETE",
                "/forged",
                vec![
                    ("host", b"app.example"),
                    ("x-portcullis-user", b"root"),
                    ("X-Portcullis-Roles", b"admin"),
                    ("content-length", b"0"),
                ],
            ),
            (
                "GET",
                "/page",
                vec![
                    ("host", b"app.example"),
                    ("accept", b"text/html,application/xhtml+xml"),
                    ("accept-encoding", b"gzip, br"),
                    ("content-security-policy", b"default-src *"),
                    ("x-nonce", b"forged"),
                ],
            ),
            (
                "OPTIONS",
                "/",
                vec![
                    ("host", b"app.example"),
                    ("x-forwarded-for", b"obs\xfftext"),
                ],
            ),
        ];
        let peers: [Option<SocketAddr>; 3] = [
            Some("203.0.113.7:5000".parse().unwrap()),
            Some("[2001:db8::1]:5000".parse().unwrap()),
            None,
        ];
        for kind in ["generic", "nextjs"] {
            let config = crate::config::GatewayConfig::from_str(
                &format!(
                    "[server]\nlisten = \"127.0.0.1:0\"\nupstream = \"http://127.0.0.1:9\"\nupstream_kind = \"{kind}\"\n"
                ),
                "test.toml",
            )
            .unwrap();
            let proxy = Proxy::for_config(&config).unwrap();
            for (method, uri, fields) in &cases {
                for peer in peers {
                    for extras in 0..4 {
                        let nonce = Nonce::generate();
                        let parts = || {
                            let mut b = Request::builder().method(*method).uri(*uri);
                            for (n, v) in fields {
                                b = b.header(*n, HeaderValue::from_bytes(v).unwrap());
                            }
                            let (mut parts, ()) = b.body(()).unwrap().into_parts();
                            let mut x = std::mem::take(&mut parts.extensions);
                            if let Some(peer) = peer {
                                x.insert(PeerAddr(peer));
                            }
                            if extras & 1 == 1 {
                                x.insert(Https);
                                x.insert(Principal::new(
                                    "alice",
                                    ["user", "ops"],
                                    portcullis::auth::AuthMethod::Jwt,
                                ));
                            }
                            if extras & 2 == 2 {
                                x.insert(nonce.clone());
                            }
                            (parts, x)
                        };
                        let (p, x) = parts();
                        let mut direct = Vec::new();
                        proxy.write_upstream_head(&mut direct, &p, &x);
                        let (p, x) = parts();
                        let head = proxy.upstream_request(p, &x, false, false).unwrap();
                        let mut req = Request::from_parts(head, empty());
                        proxy.transform_request(&mut req, &x);
                        let mut mapped = format!(
                            "{} {} HTTP/1.1\r\n",
                            req.method(),
                            req.uri().path_and_query().map_or("/", |pq| pq.as_str())
                        )
                        .into_bytes();
                        for (n, v) in req.headers() {
                            mapped.extend_from_slice(n.as_str().as_bytes());
                            mapped.extend_from_slice(b": ");
                            mapped.extend_from_slice(v.as_bytes());
                            mapped.extend_from_slice(b"\r\n");
                        }
                        mapped.extend_from_slice(b"\r\n");
                        assert_eq!(
                            lines_of(&direct),
                            lines_of(&mapped),
                            "{kind} {method} {uri} peer {peer:?} extras {extras}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("proxy-connection", "keep-alive".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::TRAILER, "x-sum".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert("accept", "*/*".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("accept"));

        // Each one alone, in any case, without a `Connection` header to name it.
        for name in [
            "Keep-Alive",
            "proxy-connection",
            "Proxy-Authorization",
            "proxy-authenticate",
            "Proxy",
            "TE",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "connection",
        ] {
            let mut h = HeaderMap::new();
            h.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                "x".parse().unwrap(),
            );
            h.insert("accept", "*/*".parse().unwrap());
            strip_hop_by_hop(&mut h);
            assert_eq!(h.len(), 1, "{name}: {h:?}");
        }
        // Content-Type stays, whoever names it: the layer judged the body by it.
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "Content-Type, x-hop".parse().unwrap());
        h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        h.insert("x-hop", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["content-type"]);
        // None at all: untouched.
        let mut h = HeaderMap::new();
        h.insert("accept", "*/*".parse().unwrap());
        h.insert("x-keep", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn the_first_hop_starts_the_list() {
        let mut h = HeaderMap::new();
        append_list(&mut h, X_FORWARDED_FOR, "10.0.0.9".to_string());
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.9");
        append_list(&mut h, X_FORWARDED_FOR, "10.0.0.10".to_string());
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.9, 10.0.0.10");
    }

    #[test]
    fn forwarded_values_are_tokens_or_escaped_quoted_strings() {
        for (value, written) in [
            ("example.com", "example.com"),
            ("a:1", "\"a:1\""),
            ("a\"b\\c", "\"a\\\"b\\\\c\""),
            ("", "\"\""),
            ("a!#$%&'*+-.^_`|~Z9", "a!#$%&'*+-.^_`|~Z9"),
            ("a b", "\"a b\""),
            ("a,b", "\"a,b\""),
        ] {
            let mut out = Vec::new();
            push_forwarded_value(&mut out, value);
            assert_eq!(out, written.as_bytes(), "{value:?}");
        }
    }

    #[test]
    fn forwarded_quotes_ipv6_and_hosts_with_ports() {
        let element = |peer: &str, proto, host| {
            let mut out = Vec::new();
            let ip = peer.parse().unwrap();
            let hop = Hop {
                proto,
                peer: Some((ip, IpText::of(ip))),
            };
            hop.write_element(&mut out, Some(&HeaderValue::from_static(host)));
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            element("::1", "http", "example.com:8080"),
            "for=\"[::1]\";proto=http;host=\"example.com:8080\""
        );
        assert_eq!(
            element("10.1.2.3", "https", "example.com"),
            "for=10.1.2.3;proto=https;host=example.com"
        );
    }

    #[test]
    fn list_headers_are_joined_then_appended() {
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, "1.1.1.1".parse().unwrap());
        h.append(X_FORWARDED_FOR, "2.2.2.2".parse().unwrap());
        append_list(&mut h, X_FORWARDED_FOR, "10.0.0.1".to_string());
        assert_eq!(h[X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 10.0.0.1");
        assert_eq!(
            h.get_all(X_FORWARDED_FOR).iter().count(),
            1,
            "one joined field"
        );
    }

    #[test]
    fn html_is_accepted_by_navigations_and_clients_without_accept() {
        let mut h = HeaderMap::new();
        assert!(accepts_html(&h));
        h.insert(
            header::ACCEPT,
            "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"
                .parse()
                .unwrap(),
        );
        assert!(accepts_html(&h));
        h.insert(header::ACCEPT, "*/*".parse().unwrap());
        assert!(!accepts_html(&h));
        h.insert(header::ACCEPT, "application/json".parse().unwrap());
        assert!(!accepts_html(&h));
    }

    #[test]
    fn upgrade_needs_both_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert!(!is_upgrade(&h));
        h.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        assert!(is_upgrade(&h));
        h.insert(header::UPGRADE, " WebSocket ".parse().unwrap());
        assert!(is_upgrade(&h));
    }

    #[test]
    fn only_websocket_is_an_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            "Upgrade, HTTP2-Settings".parse().unwrap(),
        );
        for other in ["h2c", "websocket, h2c", "h2c, websocket", "TLS/1.0", ""] {
            h.insert(header::UPGRADE, other.parse().unwrap());
            assert!(!is_upgrade(&h), "{other:?}");
        }
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.append(header::UPGRADE, "h2c".parse().unwrap());
        assert!(!is_upgrade(&h), "two Upgrade fields");
    }
}

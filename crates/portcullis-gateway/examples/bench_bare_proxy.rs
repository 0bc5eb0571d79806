//! A reference point for the benchmarks: the least a thread-per-core hyper reverse proxy does.
//!
//! One current-thread runtime per core, each with its own `SO_REUSEPORT` listener and its own
//! idle HTTP/1.1 connections to the upstream; every response gets the same 11 constant headers
//! nginx adds in `bench/nginx.conf.tmpl`, and the request gets `X-Forwarded-For`. No routing,
//! no limits, no timeouts, no audit: what the HTTP stacks and the runtime cost alone, to
//! compare the gateway's per-request work against (see `BENCHMARKS.md`, session 5).
//!
//! ```text
//! cargo run --profile dist -p portcullis-gateway --example bench_bare_proxy -- 127.0.0.1:18004 127.0.0.1:18001
//! ```

use std::cell::RefCell;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

#[global_allocator]
static ALLOCATOR: portcullis_alloc::MiMalloc = portcullis_alloc::MiMalloc;

type Body = UnsyncBoxBody<Bytes, hyper::Error>;

/// The headers nginx's benchmark config adds, as constants.
const HEADERS: [(&str, &str); 11] = [
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "strict-origin-when-cross-origin"),
    (
        "permissions-policy",
        "camera=(), microphone=(), geolocation=(), payment=()",
    ),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("x-permitted-cross-domain-policies", "none"),
    ("x-xss-protection", "0"),
    (
        "content-security-policy",
        "default-src 'self'; script-src 'self' 'strict-dynamic'; style-src 'self'; \
         img-src 'self' data:; font-src 'self'; connect-src 'self'; object-src 'none'; \
         base-uri 'self'; form-action 'self'; frame-ancestors 'none'",
    ),
    ("cache-control", "no-store"),
    ("x-request-id", "0123456789abcdef0123456789abcdef"),
];

/// [`HEADERS`] as header fields, checked once: `from_static` outside a const context checks
/// every byte at run time, about 5k instructions a response for these 11.
static FIELDS: std::sync::LazyLock<Vec<(HeaderName, HeaderValue)>> =
    std::sync::LazyLock::new(|| {
        HEADERS
            .iter()
            .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
            .collect()
    });
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const LOOPBACK: HeaderValue = HeaderValue::from_static("127.0.0.1");

thread_local! {
    /// This thread's idle connections to the upstream.
    static IDLE: RefCell<Vec<SendRequest<Incoming>>> = const { RefCell::new(Vec::new()) };
}

fn bad_gateway() -> Response<Body> {
    let mut res = Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
    *res.status_mut() = StatusCode::BAD_GATEWAY;
    res
}

/// An idle connection of this thread, or a new one.
async fn sender(upstream: SocketAddr) -> Option<SendRequest<Incoming>> {
    while let Some(mut s) = IDLE.with(|idle| idle.borrow_mut().pop()) {
        if s.ready().await.is_ok() {
            return Some(s);
        }
    }
    let tcp = tokio::net::TcpStream::connect(upstream).await.ok()?;
    tcp.set_nodelay(true).ok()?;
    let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .ok()?;
    tokio::task::spawn_local(conn);
    Some(s)
}

async fn proxy(
    mut req: Request<Incoming>,
    upstream: SocketAddr,
) -> Result<Response<Body>, hyper::Error> {
    let Some(mut s) = sender(upstream).await else {
        return Ok(bad_gateway());
    };
    let origin_form = req.uri().path_and_query().cloned();
    *req.uri_mut() = origin_form.map(Into::into).unwrap_or_default();
    req.headers_mut().insert(X_FORWARDED_FOR, LOOPBACK);
    let res = s.send_request(req).await?;
    // hyper queues the next request on this connection until the response body is read.
    IDLE.with(|idle| idle.borrow_mut().push(s));
    let (mut parts, body) = res.into_parts();
    for (name, value) in FIELDS.iter() {
        parts.headers.insert(name.clone(), value.clone());
    }
    Ok(Response::from_parts(parts, body.boxed_unsync()))
}

fn serve(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(listen),
            socket2::Type::STREAM,
            None,
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&listen.into())?;
        socket.listen(4096)?;
        let listener = tokio::net::TcpListener::from_std(socket.into())?;
        loop {
            let (tcp, _) = listener.accept().await?;
            tcp.set_nodelay(true)?;
            let service = hyper::service::service_fn(move |req| proxy(req, upstream));
            tokio::task::spawn_local(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(upstream)) = (
        args.get(1).and_then(|a| a.parse::<SocketAddr>().ok()),
        args.get(2).and_then(|a| a.parse::<SocketAddr>().ok()),
    ) else {
        eprintln!("usage: bench_bare_proxy LISTEN_ADDR:PORT UPSTREAM_ADDR:PORT");
        std::process::exit(2);
    };
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    let threads: Vec<_> = (0..workers)
        .map(|_| std::thread::spawn(move || serve(listen, upstream)))
        .collect();
    for t in threads {
        match t.join() {
            Ok(Err(e)) => {
                eprintln!("bench_bare_proxy: {e}");
                std::process::exit(1);
            }
            Ok(Ok(())) => {}
            Err(_) => std::process::exit(1),
        }
    }
}

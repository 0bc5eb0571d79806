//! The admin listener, separate from traffic: `/healthz` and `/readyz`.
//!
//! - `GET /healthz` → 200 `{"status":"ok"}` while the process serves.
//! - `GET /readyz` → 200 `{"status":"ok","upstream":"ok"}` when the upstream accepts a TCP
//!   connection within [`READY_TIMEOUT`], else 503
//!   `{"status":"unavailable","upstream":"unreachable"}`.
//!
//! Anything else is 404. Bind it to loopback or a private network: it is not behind the
//! security layer.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::reload::Live;

/// How long `/readyz` waits for the upstream to accept a connection.
///
/// ```
/// # use std::time::Duration;
/// assert_eq!(portcullis_gateway::admin::READY_TIMEOUT, Duration::from_secs(1));
/// ```
pub const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves the admin endpoints until `shutdown` turns true.
///
/// ```no_run
/// # use std::sync::Arc;
/// use portcullis_gateway::{admin, config::{GatewayConfig, Stores}, reload::{Generation, Live}};
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// # let config = GatewayConfig::from_file("portcullis.toml")?;
/// # let stores = Arc::new(Stores::default());
/// # let live = Live::new(Generation::build(config, &stores)?, stores);
/// let (stop, shutdown) = tokio::sync::watch::channel(false);
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:9901").await?;
/// tokio::spawn(admin::serve(listener, live, shutdown));
/// // ... on SIGTERM:
/// stop.send(true)?;
/// # Ok(()) }
/// ```
pub async fn serve(listener: TcpListener, live: Live, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = crate::server::stopped(&mut shutdown) => return,
        };
        let live = live.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, live.clone()));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(tcp), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

async fn handle(req: Request<Incoming>, live: Live) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(json(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"status":"method_not_allowed"}"#,
        ));
    }
    Ok(match req.uri().path() {
        "/healthz" => json(StatusCode::OK, r#"{"status":"ok"}"#),
        "/readyz" => {
            let upstream = live.current().proxy.upstream_authority().clone();
            let port = upstream.port_u16().unwrap_or(80);
            let target = format!("{}:{port}", upstream.host());
            match tokio::time::timeout(READY_TIMEOUT, TcpStream::connect(target)).await {
                Ok(Ok(_)) => json(StatusCode::OK, r#"{"status":"ok","upstream":"ok"}"#),
                _ => json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    r#"{"status":"unavailable","upstream":"unreachable"}"#,
                ),
            }
        }
        _ => json(StatusCode::NOT_FOUND, r#"{"status":"not_found"}"#),
    })
}

fn json(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

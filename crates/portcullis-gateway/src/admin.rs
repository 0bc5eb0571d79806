//! The admin listener, separate from traffic: `/healthz` and `/readyz`.
//!
//! - `GET /healthz` → 200 `{"status":"ok"}` while the process serves.
//! - `GET /readyz` → whether the gateway can serve traffic now (upstream and stores
//!   reachable), each part checked at once within [`READY_TIMEOUT`]:
//!   `{"status":"ok","upstream":"ok","rate_limit_store":"ok","audit_store":"ok"}`.
//!   - `upstream`: `"ok"` when it accepts a TCP connection, else `"unreachable"`.
//!   - `rate_limit_store`: `"ok"` when the store answers a ping on its own connection (Redis
//!     `PING`, the SQLite file taking its write lock; memory always), else `"unreachable"`.
//!   - `audit_store`: `"ok"` when the store answers (PostgreSQL `SELECT 1`, the SQLite file
//!     taking its write lock; JSONL and stdout always) and no events wait in the spool;
//!     `"spooling"` when it answers but refused events wait in the spool; `"unreachable"`
//!     when it does not answer.
//!
//!   The status is 503 `"unavailable"` exactly when traffic is being refused: the upstream
//!   is unreachable, or the rate-limit store is and `storage.on_store_error = "closed"`
//!   (every rate-limited request then gets 503). With `"open"` requests pass unlimited, and
//!   an audit store that is down loses nothing (events spool), so those stay 200 with the
//!   part named, for alerting without pulling the instance out of a load balancer.
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

use crate::config::OnStoreError;
use crate::reload::Live;

/// How long `/readyz` waits for the upstream to accept a connection, and for each store to
/// answer (the checks run at the same time, so the answer comes within about this long).
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
        "/readyz" => readiness(&live).await,
        _ => json(StatusCode::NOT_FOUND, r#"{"status":"not_found"}"#),
    })
}

/// `/readyz`: the upstream and both stores, checked concurrently, each within
/// [`READY_TIMEOUT`] (see the module docs for the fields).
async fn readiness(live: &Live) -> Response<Full<Bytes>> {
    let generation = live.current();
    let upstream = async {
        let upstream = generation.proxy.upstream_authority();
        let port = upstream.port_u16().unwrap_or(80);
        let target = format!("{}:{port}", upstream.host());
        matches!(
            tokio::time::timeout(READY_TIMEOUT, TcpStream::connect(target)).await,
            Ok(Ok(_))
        )
    };
    let rate_limit = async {
        // The store the generation in force was built with (cached in `Stores`).
        match live.stores().rate_limit_store(&generation.config.storage) {
            Ok(store) => matches!(
                tokio::time::timeout(READY_TIMEOUT, store.ping()).await,
                Ok(Ok(()))
            ),
            Err(_) => false,
        }
    };
    let audit = async {
        let Some(writer) = live.stores().audit_writer() else {
            return "ok"; // nothing is audited, so nothing can fail
        };
        match tokio::time::timeout(READY_TIMEOUT, writer.ping()).await {
            Ok(Ok(())) if writer.counters().pending == 0 => "ok",
            Ok(Ok(())) => "spooling",
            _ => "unreachable",
        }
    };
    let (upstream_ok, rate_limit_ok, audit) = tokio::join!(upstream, rate_limit, audit);
    let refusing = !upstream_ok
        || (!rate_limit_ok && generation.config.storage.on_store_error == OnStoreError::Closed);
    let word = |ok: bool| if ok { "ok" } else { "unreachable" };
    let body = format!(
        r#"{{"status":"{}","upstream":"{}","rate_limit_store":"{}","audit_store":"{audit}"}}"#,
        if refusing { "unavailable" } else { "ok" },
        word(upstream_ok),
        word(rate_limit_ok),
    );
    let status = if refusing {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    json(status, body)
}

fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(body.into()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

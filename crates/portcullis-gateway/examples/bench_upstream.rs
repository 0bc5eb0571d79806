//! The bare upstream of the benchmarks (`bench/run.sh`): the fastest plain server we can put
//! behind the gateway and nginx, so that what they add is what is measured.
//!
//! It answers `{"ok":true}` with 200 on every path and method, over HTTP/1.1 keep-alive, on a
//! multi-threaded runtime; a request body (the 64 KiB POST scenario) is read to the end and
//! discarded before the answer, as an application would.
//!
//! ```text
//! cargo run --release -p portcullis-gateway --example bench_upstream -- 127.0.0.1:3000
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

const BODY: &[u8] = br#"{"ok":true}"#;

/// Drains the request body, then answers the fixed JSON body.
async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut body = req.into_body();
    // Frames are dropped as they arrive: nothing is buffered whatever the size.
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            break;
        }
    }
    let mut res = Response::new(Full::new(Bytes::from_static(BODY)));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    Ok(res)
}

#[tokio::main]
async fn main() {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".to_string())
        .parse()
        .expect("usage: bench_upstream [ADDR:PORT]");
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("the listen address must be free");
    eprintln!(
        "bench_upstream listening on http://{}",
        listener
            .local_addr()
            .expect("a bound listener has an address")
    );
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(conn) => conn,
            // Out of file descriptors or a reset before accept: keep serving the others.
            Err(_) => continue,
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(tcp), service_fn(answer))
                .await;
        });
    }
}

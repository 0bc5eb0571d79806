//! Shared by the gateway's process tests: a real upstream server, the `portcullis` binary
//! started on a temporary config, and small HTTP clients.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type TestBody = BoxBody<Bytes, BoxError>;

// One `free_port` for both crates' tests (the library's harness holds it).
#[path = "../../../portcullis/tests/common/ports.rs"]
mod ports;

// Real Redis and PostgreSQL servers, as the library's store tests start them.
#[path = "../../../portcullis/tests/common/services.rs"]
pub mod services;

/// See the library harness's `ports::free_port`.
pub fn free_port() -> u16 {
    ports::free_port()
}

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
}

/// A small HTTP server behind the gateway.
///
/// - `/echo/**`, `/upload/**`: the request body streamed back as the response body;
/// - `/big/N`: N bytes of [`pattern`], streamed;
/// - `/consume/**`: reads the whole body, then answers its length;
/// - `/slow/MS`: answers after MS milliseconds;
/// - `/ws`: a WebSocket echo (one frame at a time);
/// - anything else: `hello`, with `Server` and `X-Powered-By` banners.
///
/// Every request is recorded.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let up = Upstream {
            addr,
            seen: Arc::default(),
        };
        let state = up.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.handle(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        up
    }

    pub fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream saw a request")
    }

    async fn handle(&self, mut req: Request<Incoming>) -> Response<TestBody> {
        self.seen.lock().unwrap().push(Seen {
            method: req.method().to_string(),
            uri: req.uri().to_string(),
            headers: req.headers().clone(),
        });
        let path = req.uri().path().to_string();
        if path.starts_with("/echo") || path.starts_with("/upload") {
            return Response::new(req.into_body().map_err(BoxError::from).boxed());
        }
        if path.starts_with("/consume") {
            let body = req.into_body().collect().await;
            return Response::new(match body {
                Ok(b) => Full::new(Bytes::from(b.to_bytes().len().to_string()))
                    .map_err(|never| match never {})
                    .boxed(),
                Err(_) => full("body error"),
            });
        }
        if let Some(n) = path.strip_prefix("/big/") {
            let n: u64 = n.parse().expect("a byte count");
            return Response::new(Pattern::new(n).boxed());
        }
        if let Some(ms) = path.strip_prefix("/slow/") {
            let ms: u64 = ms.parse().expect("milliseconds");
            tokio::time::sleep(Duration::from_millis(ms)).await;
            return Response::new(full("slow done"));
        }
        if path == "/ws" {
            let key = req
                .headers()
                .get("sec-websocket-key")
                .cloned()
                .unwrap_or_else(|| http::HeaderValue::from_static(""));
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = on_upgrade.await {
                    ws_echo(TokioIo::new(upgraded)).await;
                }
            });
            let mut res = Response::new(full(""));
            *res.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = res.headers_mut();
            h.insert("upgrade", "websocket".parse().unwrap());
            h.insert("connection", "Upgrade".parse().unwrap());
            h.insert("sec-websocket-accept", key);
            return res;
        }
        let mut res = Response::new(full("hello"));
        if path.ends_with("/cached") {
            // An application that marks its answer for shared caches.
            res.headers_mut().insert(
                "cache-control",
                "public, max-age=3600, s-maxage=600".parse().unwrap(),
            );
        }
        res.headers_mut()
            .insert("server", "upstream/1.0".parse().unwrap());
        res.headers_mut()
            .insert("x-powered-by", "Express".parse().unwrap());
        res.headers_mut()
            .insert("content-type", "text/plain".parse().unwrap());
        res
    }
}

pub fn full(s: &'static str) -> TestBody {
    Full::new(Bytes::from_static(s.as_bytes()))
        .map_err(|never| match never {})
        .boxed()
}

/// Echoes WebSocket frames: reads a masked client frame, answers the same payload unmasked.
async fn ws_echo(mut io: TokioIo<hyper::upgrade::Upgraded>) {
    loop {
        let mut head = [0u8; 2];
        if io.read_exact(&mut head).await.is_err() {
            return;
        }
        let opcode = head[0] & 0x0f;
        let mut len = u64::from(head[1] & 0x7f);
        if len == 126 {
            let mut b = [0u8; 2];
            io.read_exact(&mut b).await.unwrap();
            len = u64::from(u16::from_be_bytes(b));
        } else if len == 127 {
            let mut b = [0u8; 8];
            io.read_exact(&mut b).await.unwrap();
            len = u64::from_be_bytes(b);
        }
        let mut mask = [0u8; 4];
        if head[1] & 0x80 != 0 {
            io.read_exact(&mut mask).await.unwrap();
        }
        let mut payload = vec![0u8; len as usize];
        io.read_exact(&mut payload).await.unwrap();
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        if opcode == 0x8 {
            let _ = io.write_all(&[0x88, 0]).await;
            return;
        }
        let frame = ws_frame(opcode, &payload, None);
        io.write_all(&frame).await.unwrap();
    }
}

/// A WebSocket frame (FIN set), masked when `mask` is given (client to server).
pub fn ws_frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    if payload.len() < 126 {
        f.push(m | payload.len() as u8);
    } else {
        f.push(m | 126);
        f.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    match mask {
        Some(k) => {
            f.extend_from_slice(&k);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => f.extend_from_slice(payload),
    }
    f
}

/// Byte `i` of the test pattern.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// A body of `n` pattern bytes in 64 KiB chunks, generated as it is read.
pub struct Pattern {
    offset: u64,
    end: u64,
}

impl Pattern {
    pub fn new(n: u64) -> Self {
        Pattern { offset: 0, end: n }
    }

    pub fn boxed(self) -> TestBody {
        BodyExt::boxed(self)
    }
}

impl Body for Pattern {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.offset >= self.end {
            return Poll::Ready(None);
        }
        let n = (self.end - self.offset).min(64 * 1024);
        let chunk: Vec<u8> = (self.offset..self.offset + n).map(pattern_byte).collect();
        self.offset += n;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.offset >= self.end
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.end - self.offset)
    }
}

/// Reads a body to the end, checking it is the pattern; returns its length.
pub async fn check_pattern(mut body: Incoming) -> u64 {
    let mut at = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("the body streams to the end");
        if let Some(data) = frame.data_ref() {
            for (i, b) in data.iter().enumerate() {
                assert_eq!(*b, pattern_byte(at + i as u64), "byte {}", at + i as u64);
            }
            at += data.len() as u64;
        }
    }
    at
}

/// The `portcullis` binary running on a temporary config; killed when dropped.
pub struct Gateway {
    pub child: Child,
    pub port: u16,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
}

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

/// A fresh temporary directory.
pub fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "portcullis-gw-{}-{}",
        std::process::id(),
        NEXT_DIR.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    dir
}

/// A config with `[server]` pointing at `upstream`, `server_extra` lines added to `[server]`,
/// then `routes` (TOML), then a catch-all route without rate limit.
pub fn config(port: u16, upstream: SocketAddr, server_extra: &str, routes: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nupstream = \"http://{upstream}\"\n{server_extra}\n\
         {routes}\n\
         [[route]]\npath = \"/**\"\nrate_limit = false\n"
    )
}

impl Gateway {
    /// Starts the gateway on `config_text` (which must listen on `port`) and waits until it
    /// accepts connections.
    pub async fn start(port: u16, config_text: &str) -> Gateway {
        let dir = temp_dir();
        let config = dir.join("portcullis.toml");
        std::fs::write(&config, config_text).expect("write the config");
        let log = dir.join("stderr.log");
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create the log"))
            .spawn()
            .expect("start portcullis");
        let mut gw = Gateway {
            child,
            port,
            dir,
            config,
            log,
        };
        gw.wait_ready().await;
        gw
    }

    async fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the gateway exited with {status}: {}", self.logs());
            }
            if self.logs().contains("listening on")
                && TcpStream::connect(("127.0.0.1", self.port)).await.is_ok()
            {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the gateway did not start: {}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Sends a signal with `kill`.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// Waits for the process to exit, up to `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < timeout,
                "the gateway did not exit: {}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A log line containing `needle` appears within `timeout`.
    pub async fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.logs().contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// The peak resident memory of the process in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An HTTP/1.1 client.
pub fn client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// An HTTP/2 prior-knowledge client.
pub fn h2_client() -> Client<HttpConnector, TestBody> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// Sends `req` and reads the whole response.
pub async fn send(client: &Client<HttpConnector, TestBody>, req: Request<TestBody>) -> Reply {
    let res = client.request(req).await.expect("the request is answered");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("the body is read").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// GET `url` with extra headers.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(&client(), req.body(full("")).unwrap()).await
}

/// Writes raw bytes on a new connection and reads until the server closes it or `timeout`.
pub async fn raw(port: u16, request: &[u8], timeout: Duration) -> String {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, tcp.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// An HS256 token signed with `secret` for `sub` and `roles`, with the `iss` and `aud` the
/// gateway expects when its config names none (`portcullis`), valid for an hour.
pub fn hs256_token(secret: &str, sub: &str, roles: &[&str]) -> String {
    portcullis::auth::jwt::mint_hs256(
        &portcullis::auth::Secret::new(secret.as_bytes().to_vec()),
        sub,
        roles,
        Duration::from_secs(3600),
        "portcullis",
        "portcullis",
    )
    .expect("a token")
}

/// One HTTP/1.1 answer as read off the wire.
#[derive(Debug)]
pub struct RawAnswer {
    pub status: u16,
    /// The status line and header fields, without the blank line.
    pub head: String,
    pub body: Vec<u8>,
}

impl RawAnswer {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Splits what a server sent on one connection into its answers (`Content-Length` or chunked
/// bodies; a body without either runs to the end; a body cut short keeps what came).
pub fn raw_answers(mut bytes: &[u8]) -> Vec<RawAnswer> {
    let mut out = Vec::new();
    while let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        bytes = &bytes[end + 4..];
        let status = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP answer: {head:?}"));
        let mut answer = RawAnswer {
            status,
            head,
            body: Vec::new(),
        };
        if status == 100 {
            out.push(answer);
            continue;
        }
        if let Some(n) = answer
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            let n = n.min(bytes.len());
            answer.body = bytes[..n].to_vec();
            bytes = &bytes[n..];
        } else if answer
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let Some(line) = bytes.windows(2).position(|w| w == b"\r\n") else {
                    bytes = &[];
                    break;
                };
                let size = usize::from_str_radix(
                    String::from_utf8_lossy(&bytes[..line])
                        .split(';')
                        .next()
                        .unwrap_or("")
                        .trim(),
                    16,
                )
                .unwrap_or(0);
                bytes = &bytes[line + 2..];
                let take = size.min(bytes.len());
                answer.body.extend_from_slice(&bytes[..take]);
                bytes = &bytes[(take + 2).min(bytes.len())..];
                if size == 0 {
                    break;
                }
            }
        } else {
            answer.body = bytes.to_vec();
            bytes = &[];
        }
        out.push(answer);
    }
    out
}

/// Reads from `tcp` until the server closes it; returns what was read and whether it closed
/// within `timeout`.
pub async fn read_until_closed(tcp: &mut TcpStream, timeout: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let closed = tokio::time::timeout(timeout, async {
        let mut buf = [0u8; 4096];
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (out, closed)
}

/// Reads one whole response with a `Content-Length` body from a kept-alive connection.
pub async fn read_response(tcp: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = tokio::time::timeout_at(deadline.into(), tcp.read(&mut b))
            .await
            .expect("a response in time")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&b[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("a content-length");
            if buf.len() >= end + 4 + len {
                return text;
            }
        }
    }
}

/// PEM armour (RFC 7468) for test certificates and keys, so rcgen's `pem` feature and its
/// second base64 stay out of the build.
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Reads one request head off a raw upstream's connection (the tests' upstreams get no
/// bodies on these paths); `None` once the connection ends, with whatever partial head came
/// in left in `buf`.
pub async fn read_request_head(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let mut b = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match tcp.read(&mut b).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&b[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.drain(..end);
    Some(head)
}

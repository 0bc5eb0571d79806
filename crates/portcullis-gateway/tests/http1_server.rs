//! The gateway's own HTTP/1.1 server path (`server/h1.rs`), end to end on the real binary and
//! raw client sockets: bodiless requests are read and answered by the gateway's reader and
//! writer, and the first request it does not serve (a body, an upgrade, HTTP/1.0, a head it
//! cannot or will not parse) hands the connection, with every byte read so far, to hyper.
//!
//! What is checked, byte for byte on the wire where it matters:
//! - pipelined requests across the hand-off are answered in order, each once, and a request
//!   body reaches the upstream exactly once;
//! - a WebSocket upgrade after a served GET on the same connection is tunnelled both ways;
//! - `Connection: close` from the client, and draining on SIGTERM, answer with
//!   `connection: close` and close the socket after the answer;
//! - the answers carry one valid `date`, a request id and the security headers, no banner,
//!   the upstream's status line;
//! - framing: `Content-Length`, chunked, HEAD, 204 and 304, a bogus length on a 204,
//!   trailers only for a client that sent `TE: trailers`, and a streamed body that is not
//!   held back;
//! - `header_read_timeout` on a stalled head of a kept-alive connection, `idle_timeout`;
//! - the JSON 431 and 400 for heads hyper refuses, after a request served on the fast path.
//!
//! HTTP/2 with prior knowledge on the plain port is covered by
//! `proxy.rs::http2_prior_knowledge_clients_are_served`.
//!
//! The upstream is a raw TCP server ([`RawUpstream`]) whose answers are scripted by path
//! (see [`script`]) and which records every request it got, with its body.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long any single wait for the gateway may take before the test fails (generous: the
/// tests run on loaded machines).
const PATIENCE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// The scripted upstream.
// ---------------------------------------------------------------------------------------

/// One request as the upstream got it.
#[derive(Debug, Clone)]
struct Got {
    method: String,
    target: String,
    /// The head, field names lowercased, without the request line.
    fields: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Got {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `METHOD target`.
    fn line(&self) -> String {
        format!("{} {}", self.method, self.target)
    }
}

/// What the upstream does for one request.
struct Script {
    /// The writes of the answer, each after its pause.
    writes: Vec<(Duration, Vec<u8>)>,
    /// After the answer, echo every byte the connection sends (an upgrade).
    echo: bool,
}

impl Script {
    fn once(bytes: impl Into<Vec<u8>>) -> Script {
        Script {
            writes: vec![(Duration::ZERO, bytes.into())],
            echo: false,
        }
    }
}

/// The body of `/sized`.
const SIZED_LEN: usize = 1234;

/// The upstream's answer to `method target` with `body`:
///
/// - `/ws`: 101 to `websocket`, then an echo of every byte;
/// - `/not-found`: 404 with a 9-byte body;
/// - `/sized`: 1234 bytes with `Content-Length` (none for HEAD);
/// - `/chunked`: a chunked `hello, chunked world`;
/// - `/trailers`: a chunked `abcdef` announcing and sending the trailer `x-checksum: abc`;
/// - `/stream`: the head and a first chunk (`first`), then after a second `second`;
/// - `/no-content`, `/no-content-bogus-length` (with `content-length: 5` and no body),
///   `/not-modified`;
/// - `/dated`: with the upstream's own `date`;
/// - `/slow`: the default answer after a second;
/// - anything else: `METHOD target` (and `:body` when there is one) with `Content-Length`,
///   a `server` and an `x-powered-by` banner; HEAD gets the head only.
fn script(method: &str, target: &str, body: &[u8]) -> Script {
    let path = target.split('?').next().unwrap_or(target);
    match path {
        "/ws" => Script {
            echo: true,
            ..Script::once(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
                 sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
            )
        },
        "/not-found" => Script::once(
            "HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\ncontent-length: 9\r\n\r\nnot found",
        ),
        "/sized" => {
            let mut answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {SIZED_LEN}\r\n\r\n"
            )
            .into_bytes();
            if method != "HEAD" {
                answer.extend(std::iter::repeat_n(b'x', SIZED_LEN));
            }
            Script::once(answer)
        }
        "/chunked" => Script::once(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n\
             7\r\nhello, \r\n8\r\nchunked \r\n5\r\nworld\r\n0\r\n\r\n",
        ),
        "/trailers" => Script::once(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\
             trailer: x-checksum\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\nx-checksum: abc\r\n\r\n",
        ),
        "/stream" => Script {
            writes: vec![
                (
                    Duration::ZERO,
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n"
                        .to_vec(),
                ),
                (
                    Duration::from_secs(1),
                    b"6\r\nsecond\r\n0\r\n\r\n".to_vec(),
                ),
            ],
            echo: false,
        },
        "/no-content" => Script::once("HTTP/1.1 204 No Content\r\nx-done: yes\r\n\r\n"),
        "/no-content-bogus-length" => Script::once(
            "HTTP/1.1 204 No Content\r\nx-done: yes\r\ncontent-length: 5\r\n\r\n",
        ),
        "/not-modified" => Script::once("HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\n\r\n"),
        "/dated" => Script::once(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ndate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
             content-length: 5\r\n\r\ndated",
        ),
        _ => {
            let mut text = format!("{method} {target}").into_bytes();
            if !body.is_empty() {
                text.push(b':');
                text.extend_from_slice(body);
            }
            let mut answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nserver: upstream/1.0\r\n\
                 x-powered-by: Express\r\ncontent-length: {}\r\n\r\n",
                text.len()
            )
            .into_bytes();
            if method != "HEAD" {
                answer.extend_from_slice(&text);
            }
            let pause = if path == "/slow" {
                Duration::from_secs(1)
            } else {
                Duration::ZERO
            };
            Script {
                writes: vec![(pause, answer)],
                echo: false,
            }
        }
    }
}

/// The raw upstream on loopback; keeps every connection alive until the gateway closes it.
struct RawUpstream {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Got>>>,
}

impl RawUpstream {
    async fn start() -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let log = got.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve_upstream(tcp, log.clone()));
            }
        });
        RawUpstream { addr, got }
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// `METHOD target` of every request, in the order they arrived.
    fn lines(&self) -> Vec<String> {
        self.got().iter().map(Got::line).collect()
    }

    /// Waits until the upstream has got a request for `target`.
    async fn wait_for(&self, target: &str) {
        let start = Instant::now();
        while !self.got().iter().any(|g| g.target == target) {
            assert!(
                start.elapsed() < PATIENCE,
                "the upstream never got {target}: {:?}",
                self.lines()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn serve_upstream(mut tcp: TcpStream, log: Arc<Mutex<Vec<Got>>>) {
    let mut buf = Vec::new();
    loop {
        let Some(end) =
            fill_until(&mut tcp, &mut buf, |b| find(b, b"\r\n\r\n").map(|i| i + 4)).await
        else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next().unwrap_or_default().split(' ');
        let method = request_line.next().unwrap_or_default().to_string();
        let target = request_line.next().unwrap_or_default().to_string();
        let fields: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let value = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let body = if value("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let Some((body, used)) = fill_until(&mut tcp, &mut buf, |b| {
                decode_chunked(b).map(|(body, _, used)| (body, used))
            })
            .await
            else {
                return;
            };
            buf.drain(..used);
            body
        } else if let Some(n) = value("content-length").and_then(|v| v.parse::<usize>().ok()) {
            if fill_until(&mut tcp, &mut buf, |b| (b.len() >= n).then_some(()))
                .await
                .is_none()
            {
                return;
            }
            buf.drain(..n).collect()
        } else {
            Vec::new()
        };
        let answer = script(&method, &target, &body);
        log.lock().unwrap().push(Got {
            method,
            target,
            fields,
            body,
        });
        for (pause, bytes) in answer.writes {
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            if tcp.write_all(&bytes).await.is_err() {
                return;
            }
        }
        if answer.echo {
            if !buf.is_empty() && tcp.write_all(&buf).await.is_err() {
                return;
            }
            let mut b = [0u8; 4096];
            loop {
                match tcp.read(&mut b).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if tcp.write_all(&b[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
}

/// Reads into `buf` until `done` finds what it wants in it; `None` when the connection ends
/// first.
async fn fill_until<T>(
    tcp: &mut TcpStream,
    buf: &mut Vec<u8>,
    done: impl Fn(&[u8]) -> Option<T>,
) -> Option<T> {
    let mut b = [0u8; 16 * 1024];
    loop {
        if let Some(t) = done(buf) {
            return Some(t);
        }
        match tcp.read(&mut b).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&b[..n]),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A whole chunked body at the start of `bytes`, strictly framed: the decoded data, the
/// trailer lines, and how many bytes it took. `None` when incomplete; panics when malformed.
fn decode_chunked(mut bytes: &[u8]) -> Option<(Vec<u8>, Vec<String>, usize)> {
    let total = bytes.len();
    let mut body = Vec::new();
    loop {
        let eol = find(bytes, b"\r\n")?;
        let line = lossy(&bytes[..eol]);
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or_else(|_| panic!("a bad chunk-size line {line:?}"));
        bytes = &bytes[eol + 2..];
        if size == 0 {
            let mut trailers = Vec::new();
            loop {
                let eol = find(bytes, b"\r\n")?;
                let line = lossy(&bytes[..eol]);
                bytes = &bytes[eol + 2..];
                if line.is_empty() {
                    return Some((body, trailers, total - bytes.len()));
                }
                trailers.push(line);
            }
        }
        if bytes.len() < size + 2 {
            return None;
        }
        assert_eq!(
            &bytes[size..size + 2],
            b"\r\n",
            "chunk data not ended by CRLF"
        );
        body.extend_from_slice(&bytes[..size]);
        bytes = &bytes[size + 2..];
    }
}

// ---------------------------------------------------------------------------------------
// The client side: answers read off a raw connection.
// ---------------------------------------------------------------------------------------

/// One answer as read off the wire.
#[derive(Debug)]
struct Answer {
    /// The status line.
    line: String,
    status: u16,
    /// The header fields, names lowercased, in order.
    fields: Vec<(String, String)>,
    /// The body, decoded when chunked.
    body: Vec<u8>,
    /// The trailer lines of a chunked body.
    trailers: Vec<String>,
    /// The body's bytes as they were on the wire (chunk framing included).
    wire_body: Vec<u8>,
}

impl Answer {
    /// Every value of field `name`.
    fn all(&self, name: &str) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The one value of field `name`; panics when it comes more than once.
    fn header(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(all.len() <= 1, "{name} {} times: {self:?}", all.len());
        all.first().copied()
    }

    fn text(&self) -> String {
        lossy(&self.body)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// The answer at the start of `bytes` to a `method` request, and its length on the wire;
/// `None` when it is not all there yet. Bodies are framed as a client must read them
/// (none for HEAD, 1xx, 204 and 304); a body without framing never counts as complete.
fn parse_answer(bytes: &[u8], method: &str) -> Option<(Answer, usize)> {
    if bytes.len() >= 7 {
        assert!(
            bytes.starts_with(b"HTTP/1."),
            "not the start of an answer: {:?}",
            lossy(bytes)
        );
    }
    let end = find(bytes, b"\r\n\r\n")? + 4;
    let head = lossy(&bytes[..end - 4]);
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default().to_string();
    let status: u16 = line
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a bad status line: {line:?}"));
    let fields = lines
        .map(|l| {
            let (n, v) = l
                .split_once(':')
                .unwrap_or_else(|| panic!("a bad field line {l:?}"));
            (n.to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    let mut answer = Answer {
        line,
        status,
        fields,
        body: Vec::new(),
        trailers: Vec::new(),
        wire_body: Vec::new(),
    };
    let rest = &bytes[end..];
    let bodiless =
        method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304;
    let used = if bodiless {
        0
    } else if answer
        .header("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        let (body, trailers, used) = decode_chunked(rest)?;
        answer.body = body;
        answer.trailers = trailers;
        used
    } else if let Some(n) = answer.header("content-length") {
        let n: usize = n.parse().expect("a numeric content-length");
        if rest.len() < n {
            return None;
        }
        answer.body = rest[..n].to_vec();
        n
    } else {
        return None;
    };
    answer.wire_body = rest[..used].to_vec();
    Some((answer, end + used))
}

/// Reads the answers to requests with these `methods` off `tcp`, in order; panics when they
/// have not all come within [`PATIENCE`]. Also returns any bytes after the last one.
async fn read_answers(tcp: &mut TcpStream, methods: &[&str]) -> (Vec<Answer>, Vec<u8>) {
    let deadline = Instant::now() + PATIENCE;
    let mut bytes = Vec::new();
    let mut b = [0u8; 16 * 1024];
    loop {
        let mut answers = Vec::new();
        let mut at = 0;
        for method in methods {
            match parse_answer(&bytes[at..], method) {
                Some((answer, used)) => {
                    answers.push(answer);
                    at += used;
                }
                None => break,
            }
        }
        if answers.len() == methods.len() {
            return (answers, bytes[at..].to_vec());
        }
        let read = tokio::time::timeout_at(deadline.into(), tcp.read(&mut b)).await;
        match read {
            Ok(Ok(n)) if n > 0 => bytes.extend_from_slice(&b[..n]),
            Ok(_) => panic!(
                "closed after {} of {} answers: {:?}",
                answers.len(),
                methods.len(),
                lossy(&bytes)
            ),
            Err(_) => panic!(
                "{} of {} answers in time: {:?}",
                answers.len(),
                methods.len(),
                lossy(&bytes)
            ),
        }
    }
}

/// Reads exactly one answer to `method` and nothing after it.
async fn read_answer(tcp: &mut TcpStream, method: &str) -> Answer {
    let (mut answers, rest) = read_answers(tcp, &[method]).await;
    assert!(
        rest.is_empty(),
        "bytes after the answer: {:?}",
        lossy(&rest)
    );
    answers.remove(0)
}

/// `METHOD target HTTP/1.1` with `host` and the `extra` field lines (each ending in CRLF).
fn request(method: &str, target: &str, extra: &str) -> String {
    format!("{method} {target} HTTP/1.1\r\nhost: portcullis.test\r\n{extra}\r\n")
}

/// Sends `GET target` (with the `extra` field lines) on `tcp` and reads its answer.
async fn get_on(tcp: &mut TcpStream, target: &str, extra: &str) -> Answer {
    tcp.write_all(request("GET", target, extra).as_bytes())
        .await
        .unwrap();
    read_answer(tcp, "GET").await
}

async fn connect(gw: &Gateway) -> TcpStream {
    TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap()
}

async fn gateway(up: &RawUpstream, server_extra: &str) -> Gateway {
    let port = free_port();
    Gateway::start(port, &config(port, up.addr, server_extra, "")).await
}

/// What every answer the gateway writes carries: one `date` (an IMF-fixdate, about now), one
/// non-empty `x-request-id`, the security headers, and neither `server` nor `x-powered-by`.
fn assert_gateway_fields(a: &Answer, what: &str) {
    let dates = a.all("date");
    assert_eq!(dates.len(), 1, "{what}: {a:?}");
    let date = httpdate::parse_http_date(dates[0])
        .unwrap_or_else(|e| panic!("{what}: a bad date {:?}: {e}", dates[0]));
    assert_eq!(
        httpdate::fmt_http_date(date),
        dates[0],
        "{what}: not an IMF-fixdate"
    );
    let skew = match SystemTime::now().duration_since(date) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    assert!(skew < Duration::from_secs(60), "{what}: date {}", dates[0]);
    let ids = a.all("x-request-id");
    assert_eq!(ids.len(), 1, "{what}: {a:?}");
    assert!(!ids[0].is_empty(), "{what}");
    assert_eq!(
        a.header("x-content-type-options"),
        Some("nosniff"),
        "{what}"
    );
    assert_eq!(a.header("x-frame-options"), Some("DENY"), "{what}");
    assert!(a.header("content-security-policy").is_some(), "{what}");
    assert!(a.all("server").is_empty(), "{what}: {a:?}");
    assert!(a.all("x-powered-by").is_empty(), "{what}: {a:?}");
}

// ---------------------------------------------------------------------------------------
// 1. Pipelining across the hand-off to hyper.
// ---------------------------------------------------------------------------------------

/// Sends `requests` (method, target) in one write, the POST with body `hello`; checks the
/// answers come in order, each with its body, and the upstream got each request once.
async fn pipelined(requests: &[(&str, &str)]) {
    let up = RawUpstream::start().await;
    let gw = gateway(&up, "").await;
    let mut tcp = connect(&gw).await;
    let mut bytes = String::new();
    for (method, target) in requests {
        if *method == "POST" {
            bytes.push_str(&request(
                method,
                target,
                "content-type: text/plain\r\ncontent-length: 5\r\n",
            ));
            bytes.push_str("hello");
        } else {
            bytes.push_str(&request(method, target, ""));
        }
    }
    tcp.write_all(bytes.as_bytes()).await.unwrap();
    let methods: Vec<&str> = requests.iter().map(|(m, _)| *m).collect();
    let (answers, rest) = read_answers(&mut tcp, &methods).await;
    assert!(
        rest.is_empty(),
        "bytes after the answers: {:?}",
        lossy(&rest)
    );
    for ((method, target), a) in requests.iter().zip(&answers) {
        assert_eq!(a.line, "HTTP/1.1 200 OK", "{method} {target}: {a:?}");
        assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
        assert!(a.header("x-request-id").is_some(), "{method} {target}");
        assert!(a.header("connection").is_none(), "{method} {target}: {a:?}");
        match *method {
            "POST" => assert_eq!(a.text(), format!("POST {target}:hello")),
            "HEAD" => {
                assert!(a.body.is_empty());
                assert_eq!(
                    a.header("content-length"),
                    Some(format!("HEAD {target}").len().to_string().as_str()),
                    "HEAD keeps the upstream's length"
                );
            }
            _ => assert_eq!(a.text(), format!("{method} {target}")),
        }
    }
    // Each request reached the upstream once, in order; the body exactly once.
    let expected: Vec<String> = requests.iter().map(|(m, t)| format!("{m} {t}")).collect();
    assert_eq!(up.lines(), expected);
    let bodies: Vec<Vec<u8>> = up
        .got()
        .into_iter()
        .filter(|g| !g.body.is_empty())
        .map(|g| g.body)
        .collect();
    assert_eq!(bodies, [b"hello".to_vec()], "the POST body, once");
    // The connection is still open and serves on.
    assert_eq!(get_on(&mut tcp, "/after", "").await.text(), "GET /after");
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_requests_are_answered_in_order_across_the_hand_off_to_hyper() {
    pipelined(&[
        ("GET", "/a"),
        ("GET", "/b"),
        ("POST", "/echo"),
        ("GET", "/c"),
        ("HEAD", "/d"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_requests_after_a_leading_post_are_answered_in_order_by_hyper() {
    pipelined(&[
        ("POST", "/echo"),
        ("GET", "/a"),
        ("GET", "/b"),
        ("GET", "/c"),
        ("HEAD", "/d"),
    ])
    .await;
}

// ---------------------------------------------------------------------------------------
// 2. An upgrade in the middle of a connection.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_upgrade_after_a_served_get_on_the_same_connection_is_tunnelled() {
    let up = RawUpstream::start().await;
    let gw = gateway(&up, "").await;
    let mut tcp = connect(&gw).await;
    let first = get_on(&mut tcp, "/a", "").await;
    assert_eq!(
        (first.status, first.text().as_str()),
        (200, "GET /a"),
        "{first:?}"
    );

    tcp.write_all(
        request(
            "GET",
            "/ws",
            "upgrade: websocket\r\nconnection: Upgrade\r\n\
             sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n",
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let switched = read_answer(&mut tcp, "GET").await;
    assert_eq!(
        switched.line, "HTTP/1.1 101 Switching Protocols",
        "{switched:?}"
    );
    assert_eq!(
        switched.header("upgrade").map(str::to_ascii_lowercase),
        Some("websocket".to_string())
    );
    assert_eq!(
        switched.header("connection").map(str::to_ascii_lowercase),
        Some("upgrade".to_string())
    );
    assert_eq!(
        switched.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );

    // Raw bytes both ways through the tunnel (the upstream echoes them).
    for msg in [&b"ping through the tunnel"[..], &[0xa5u8; 5000][..]] {
        tcp.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(PATIENCE, tcp.read_exact(&mut got))
            .await
            .expect("the echo arrives")
            .unwrap();
        assert_eq!(got, msg);
    }

    let got = up.got();
    assert_eq!(up.lines(), ["GET /a", "GET /ws"]);
    assert_eq!(got[1].field("upgrade"), Some("websocket"));
    assert_eq!(
        got[1].field("connection").map(str::to_ascii_lowercase),
        Some("upgrade".to_string())
    );
    assert_eq!(
        got[1].field("sec-websocket-key"),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );
}

// ---------------------------------------------------------------------------------------
// 3. `Connection: close` from the client.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn connection_close_from_the_client_is_answered_with_connection_close_then_the_socket_closes()
{
    let up = RawUpstream::start().await;
    let gw = gateway(&up, "").await;
    for (n, value) in ["close", "keep-alive, close", "Keep-Alive , CLOSE"]
        .iter()
        .enumerate()
    {
        let target = format!("/close/{n}");
        let mut tcp = connect(&gw).await;
        // A request pipelined after the closing one is never served.
        let bytes = format!(
            "{}{}",
            request("GET", &target, &format!("connection: {value}\r\n")),
            request("GET", "/never", "")
        );
        tcp.write_all(bytes.as_bytes()).await.unwrap();
        let (out, closed) = read_until_closed(&mut tcp, PATIENCE).await;
        assert!(closed, "{value}: the connection stayed open");
        let (a, used) = parse_answer(&out, "GET")
            .unwrap_or_else(|| panic!("{value}: no whole answer: {:?}", lossy(&out)));
        assert_eq!(used, out.len(), "{value}: more after it: {:?}", lossy(&out));
        assert_eq!(a.line, "HTTP/1.1 200 OK", "{value}");
        assert_eq!(a.text(), format!("GET {target}"), "{value}");
        assert_eq!(a.header("connection"), Some("close"), "{value}: {a:?}");
        assert_gateway_fields(&a, value);
    }
    assert_eq!(up.lines(), ["GET /close/0", "GET /close/1", "GET /close/2"]);
    // Hop-by-hop: the client's `Connection` did not reach the upstream.
    assert!(up.got().iter().all(|g| g.field("connection").is_none()));
}

// ---------------------------------------------------------------------------------------
// 4. The fields of every answer.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn answers_carry_one_date_a_request_id_and_the_security_headers_and_no_banner() {
    let up = RawUpstream::start().await;
    let gw = gateway(&up, "").await;
    let mut tcp = connect(&gw).await;
    let requests = [
        ("GET", "/x"),
        ("GET", "/not-found"),
        ("HEAD", "/x"),
        ("GET", "/chunked"),
        ("GET", "/no-content"),
        ("GET", "/not-modified"),
        ("GET", "/dated"),
    ];
    let bytes: String = requests.iter().map(|(m, t)| request(m, t, "")).collect();
    tcp.write_all(bytes.as_bytes()).await.unwrap();
    let methods: Vec<&str> = requests.iter().map(|(m, _)| *m).collect();
    let (answers, rest) = read_answers(&mut tcp, &methods).await;
    assert!(rest.is_empty(), "{:?}", lossy(&rest));
    let ids: Vec<&str> = answers
        .iter()
        .map(|a| a.header("x-request-id").unwrap_or_default())
        .collect();
    for (i, ((method, target), a)) in requests.iter().zip(&answers).enumerate() {
        let what = format!("{method} {target}");
        if *target == "/dated" {
            // The upstream's own date is kept, and not doubled.
            assert_eq!(a.all("date"), ["Sun, 06 Nov 1994 08:49:37 GMT"], "{a:?}");
            continue;
        }
        assert_gateway_fields(a, &what);
        assert!(!ids[..i].contains(&ids[i]), "{what}: a repeated request id");
    }
    assert_eq!(answers[0].line, "HTTP/1.1 200 OK");
    assert_eq!(answers[1].line, "HTTP/1.1 404 Not Found");
    assert_eq!(answers[1].text(), "not found");
    assert_eq!(answers[4].line, "HTTP/1.1 204 No Content");
    assert_eq!(answers[5].line, "HTTP/1.1 304 Not Modified");
    assert_eq!(answers[6].text(), "dated");
}

// ---------------------------------------------------------------------------------------
// 5. Framing.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_with_content_length_passes_with_that_length() {
    let up = RawUpstream::start().await;
    let gw = gateway(&up, "").await;
    let mut tcp = connect(&gw).await;
    let a = get_on(&mut tcp, "/sized", "").await;
    assert_eq!(a.line, "HTTP/1.1 200 OK");
    assert_eq!(a.header("content-length"), Some("1234"));
    assert!(a.header("transfer-encoding").is_none(), "{a:?}");
    assert_eq!(a.body, vec![b'x'; SIZED_LEN]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_answer_reaches_the_client_chunked_with_the_same_body() {
    let up = RawUpstream::start().await;
    let gw = gateway(&up, "").await;
    let mut tcp = connect(&gw).await;
    let a = get_on(&mut tcp, "/chunked", "").await;
    assert_eq!(a.line, "HTTP/1.1 200 OK");
    assert_eq!(a.header("transfer-encoding"), Some("chunked"), "{a:?}");
    assert!(a.header("content-length").is_none(), "{a:?}");
    assert_eq!(a.text(), "hello, chunked world");
    assert!(a.trailers.is_empty(), "{a:?}");
    assert!(a.wire_body.ends_with(b"\r\n0\r\n\r\n"), "{a:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_head_answer_keeps_the_upstream_length_and_has_no_body_bytes() {
    let up = RawUpstream::start().await;
    let gw = gateway(&up, "").await;
    let mut tcp = connect(&gw).await;
    // The GET's answer must start right after the HEAD answer's head.
    let bytes = format!(
        "{}{}",
        request("HEAD", "/sized", ""),
        request("GET", "/next", "")
    );
    tcp.write_all(bytes.as_bytes()).await.unwrap();
    let (answers, rest) = read_answers(&mut tcp, &["HEAD", "GET"]).await;
    assert!(rest.is_empty(), "{:?}", lossy(&rest));
    let head = &answers[0];
    assert_eq!(head.line, "HTTP/1.1 200 OK");
    assert_eq!(head.header("content-length"), Some("1234"));
    assert!(head.header("transfer-encoding").is_none(), "{head:?}");
    assert!(head.wire_body.is_empty());
    assert_gateway_fields(head, "HEAD");
    assert_eq!(answers[1].text(), "GET /next");
    assert_eq!(up.lines(), ["HEAD /sized", "GET /next"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_content_and_not_modified_have_no_body_and_no_transfer_encoding() {
    let up = RawUpstream::start().await;
    let gw = gateway(&up, "").await;
    let mut tcp = connect(&gw).await;
    let targets = [
        "/no-content",
        "/not-modified",
        "/no-content-bogus-length",
        "/next",
    ];
    let bytes: String = targets.iter().map(|t| request("GET", t, "")).collect();
    tcp.write_all(bytes.as_bytes()).await.unwrap();
    // Each answer follows the previous head directly: no body bytes between them.
    let (answers, rest) = read_answers(&mut tcp, &["GET"; 4]).await;
    assert!(rest.is_empty(), "{:?}", lossy(&rest));
    for (target, a) in targets[..3].iter().zip(&answers) {
        assert!(a.wire_body.is_empty(), "{target}");
        assert!(a.header("transfer-encoding").is_none(), "{target}: {a:?}");
        assert_gateway_fields(a, target);
    }
    assert_eq!(answers[0].line, "HTTP/1.1 204 No Content");
    assert_eq!(answers[0].header("x-done"), Some("yes"));
    assert!(answers[0].header("content-length").is_none(), "{answers:?}");
    assert_eq!(answers[1].line, "HTTP/1.1 304 Not Modified");
    assert_eq!(answers[1].header("etag"), Some("\"v1\""));
    // The upstream's bogus `content-length: 5` on a 204 is not passed on.
    assert_eq!(answers[2].line, "HTTP/1.1 204 No Content");
    assert_eq!(answers[2].header("x-done"), Some("yes"));
    assert!(
        answers[2].header("content-length").is_none(),
        "{:?}",
        answers[2]
    );
    assert_eq!(answers[3].text(), "GET /next");
}

// ---------------------------------------------------------------------------------------
// 6. Streaming.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_answer_is_not_held_back() {
    let up = RawUpstream::start().await;
    let gw = gateway(&up, "").await;
    let mut tcp = connect(&gw).await;
    // A first request warms the upstream connection up.
    get_on(&mut tcp, "/warm", "").await;

    tcp.write_all(request("GET", "/stream", "").as_bytes())
        .await
        .unwrap();
    let sent = Instant::now();
    let mut bytes = Vec::new();
    let mut b = [0u8; 4096];
    // The head and the first chunk, without waiting for the upstream's pause.
    let first_at = loop {
        if let Some(end) = find(&bytes, b"\r\n\r\n")
            && find(&bytes[end..], b"first").is_some()
        {
            break sent.elapsed();
        }
        let n = tokio::time::timeout(PATIENCE, tcp.read(&mut b))
            .await
            .expect("the first chunk in time")
            .unwrap();
        assert!(n > 0, "closed early: {:?}", lossy(&bytes));
        bytes.extend_from_slice(&b[..n]);
    };
    assert!(
        first_at < Duration::from_millis(500),
        "the head and first chunk took {first_at:?}: {:?}",
        lossy(&bytes)
    );
    assert!(
        find(&bytes, b"second").is_none(),
        "the rest came too early: {:?}",
        lossy(&bytes)
    );
    // Then the rest.
    let a = loop {
        if let Some((a, used)) = parse_answer(&bytes, "GET") {
            assert_eq!(used, bytes.len());
            break a;
        }
        let n = tokio::time::timeout(PATIENCE, tcp.read(&mut b))
            .await
            .expect("the rest in time")
            .unwrap();
        assert!(n > 0, "closed early: {:?}", lossy(&bytes));
        bytes.extend_from_slice(&b[..n]);
    };
    let all_at = sent.elapsed();
    assert!(all_at >= Duration::from_millis(900), "{all_at:?}");
    assert_eq!(a.line, "HTTP/1.1 200 OK");
    assert_eq!(a.header("transfer-encoding"), Some("chunked"));
    assert_eq!(a.text(), "firstsecond");
    assert!(a.wire_body.ends_with(b"0\r\n\r\n"));
}

// ---------------------------------------------------------------------------------------
// 7. Trailers.
// ---------------------------------------------------------------------------------------

/// server/h1.rs: "trailers sent when the client said `TE: trailers`". The upstream announces
/// them (`trailer: x-checksum`) and sends them. (Both HTTP/1 writers, hyper's and the
/// gateway's, send only the trailer fields the response's `Trailer` names, so the proxy keeps
/// that announcement on the response while it drops the other hop-by-hop fields.)
#[tokio::test(flavor = "multi_thread")]
async fn trailers_reach_a_client_that_sent_te_trailers() {
    let up = RawUpstream::start().await;
    let gw = gateway(&up, "").await;
    let mut tcp = connect(&gw).await;
    let a = get_on(&mut tcp, "/trailers", "te: trailers\r\n").await;
    assert_eq!(a.line, "HTTP/1.1 200 OK");
    assert_eq!(a.header("transfer-encoding"), Some("chunked"));
    assert_eq!(a.text(), "abcdef");
    assert_eq!(a.trailers, ["x-checksum: abc"], "{:?}", lossy(&a.wire_body));
    assert!(
        a.wire_body.ends_with(b"\r\n0\r\nx-checksum: abc\r\n\r\n"),
        "{:?}",
        lossy(&a.wire_body)
    );
    // The client's TE: trailers went on to the upstream.
    assert_eq!(up.got()[0].field("te"), Some("trailers"));
}

#[tokio::test(flavor = "multi_thread")]
async fn trailers_are_not_sent_to_a_client_without_te_trailers() {
    let up = RawUpstream::start().await;
    let gw = gateway(&up, "").await;
    let mut tcp = connect(&gw).await;
    let a = get_on(&mut tcp, "/trailers", "").await;
    assert_eq!(a.line, "HTTP/1.1 200 OK");
    assert_eq!(a.header("transfer-encoding"), Some("chunked"));
    assert_eq!(a.text(), "abcdef");
    assert!(a.trailers.is_empty(), "{:?}", lossy(&a.wire_body));
    assert!(
        a.wire_body.ends_with(b"\r\n0\r\n\r\n"),
        "{:?}",
        lossy(&a.wire_body)
    );
    assert!(up.got()[0].field("te").is_none());
}

/// The trailers frame itself survives the proxy and the security layer: an HTTP/2 client
/// (whose server writes trailers without looking at a `Trailer` field) gets it.
#[tokio::test(flavor = "multi_thread")]
async fn trailers_reach_an_http2_client_that_sent_te_trailers() {
    use http_body_util::BodyExt;
    let up = RawUpstream::start().await;
    let gw = gateway(&up, "").await;
    let req = http::Request::get(gw.url("/trailers"))
        .header("te", "trailers")
        .body(full(""))
        .unwrap();
    let res = h2_client().request(req).await.expect("an answer");
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.expect("the whole body");
    let trailers = body.trailers().cloned().expect("trailers");
    assert_eq!(trailers.len(), 1, "{trailers:?}");
    assert_eq!(trailers["x-checksum"], "abc");
    assert_eq!(&body.to_bytes()[..], b"abcdef");
}

// ---------------------------------------------------------------------------------------
// 8 and 9. Timeouts on kept-alive connections.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_head_on_a_kept_alive_connection_gets_408_at_header_read_timeout() {
    let up = RawUpstream::start().await;
    let gw = gateway(&up, "header_read_timeout = \"1s\"\nidle_timeout = \"30s\"").await;
    let mut tcp = connect(&gw).await;
    assert_eq!(get_on(&mut tcp, "/first", "").await.text(), "GET /first");
    // Past the header timeout while idle: idle time is not the head's.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tcp.write_all(b"GET /stalled HTTP/1.1\r\nhost: portcullis.test\r\nx-half: ")
        .await
        .unwrap();
    let started = Instant::now();
    let (out, closed) = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert!(closed, "the stalled connection stayed open");
    let (a, _) = parse_answer(&out, "GET").expect("an answer");
    assert_eq!(a.status, 408, "{:?}", lossy(&out));
    assert_eq!(a.header("connection"), Some("close"));
    assert_gateway_fields(&a, "408");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
    assert_eq!(up.lines(), ["GET /first"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_kept_alive_connection_is_closed_at_idle_timeout_and_new_ones_are_served() {
    let up = RawUpstream::start().await;
    let gw = gateway(&up, "idle_timeout = \"1s\"\nheader_read_timeout = \"5s\"").await;
    let mut tcp = connect(&gw).await;
    assert_eq!(get_on(&mut tcp, "/first", "").await.text(), "GET /first");
    let started = Instant::now();
    let (out, closed) = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    let took = started.elapsed();
    assert!(closed, "the idle connection stayed open");
    assert!(out.is_empty(), "{:?}", lossy(&out));
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
    let mut fresh = connect(&gw).await;
    fresh
        .write_all(request("GET", "/second", "").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_answer(&mut fresh, "GET").await.text(), "GET /second");
}

// ---------------------------------------------------------------------------------------
// 10. Heads hyper refuses, after a request served on the fast path.
// ---------------------------------------------------------------------------------------

/// Sends a good GET on a new connection and reads its answer, then sends `bad`: the one
/// answer to `bad`, and whether the gateway then closed the connection (with nothing more).
async fn after_a_good_request(gw: &Gateway, bad: &[u8]) -> (Answer, bool) {
    let mut tcp = connect(gw).await;
    let good = get_on(&mut tcp, "/good", "").await;
    assert_eq!((good.status, good.text().as_str()), (200, "GET /good"));
    tcp.write_all(bad).await.unwrap();
    let (mut answers, rest) = read_answers(&mut tcp, &["GET"]).await;
    assert!(rest.is_empty(), "more after the answer: {:?}", lossy(&rest));
    let (more, closed) = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    assert!(more.is_empty(), "more after the answer: {:?}", lossy(&more));
    (answers.remove(0), closed)
}

/// `a` is the JSON error `status` / `code`, with its request id, one date and the security
/// headers, and no banner.
fn assert_json_error(a: &Answer, status: u16, code: &str, what: &str) {
    assert_eq!(a.status, status, "{what}: {a:?}");
    assert_eq!(a.header("content-type"), Some("application/json"), "{what}");
    assert_eq!(
        a.header("content-length"),
        Some(a.body.len().to_string().as_str()),
        "{what}"
    );
    let body = a.json();
    assert_eq!(body["code"], code, "{what}: {body}");
    let id = a.header("x-request-id").expect("a request id");
    assert!(!id.is_empty(), "{what}");
    assert_eq!(body["request_id"], id, "{what}: {body}");
    assert_eq!(
        a.header("x-content-type-options"),
        Some("nosniff"),
        "{what}"
    );
    assert_eq!(a.header("x-frame-options"), Some("DENY"), "{what}");
    // The CSP too, as on every refusal of the layer's, with no nonce in it.
    let csp = a.header("content-security-policy").unwrap_or_default();
    assert!(csp.starts_with("default-src 'self'"), "{what}: {a:?}");
    assert!(!csp.contains("nonce"), "{what}: {csp}");
    assert_eq!(a.all("date").len(), 1, "{what}: {a:?}");
    assert!(a.all("server").is_empty(), "{what}: {a:?}");
}

/// A head hyper refused: answered with `connection: close`, and the connection closed.
fn assert_closed_by_hyper(a: &Answer, closed: bool, what: &str) {
    assert_eq!(a.header("connection"), Some("close"), "{what}: {a:?}");
    assert!(closed, "{what}: the connection stayed open after {a:?}");
}

/// server.rs: "a header block too large for that buffer [...] is refused by hyper itself and
/// the connection is closed; the answer is still the JSON 431". (After a served request,
/// the gateway's own reader may take such a head whole in one read: it leaves any head over
/// the cap to hyper, not to the service's own 431 over `max_header_bytes`, which keeps the
/// connection.)
#[tokio::test(flavor = "multi_thread")]
async fn a_head_over_the_read_buffer_cap_after_a_good_request_gets_the_json_431_and_a_close() {
    let up = RawUpstream::start().await;
    let gw = gateway(&up, "").await;
    // Over the 64 KiB read-buffer cap (the default max_header_bytes is 16 KiB).
    let huge = format!(
        "GET /huge HTTP/1.1\r\nhost: portcullis.test\r\nx-huge: {}\r\n\r\n",
        "h".repeat(70 * 1024)
    );
    let (a, closed) = after_a_good_request(&gw, huge.as_bytes()).await;
    assert_json_error(&a, 431, "headers_too_large", "70 KiB head");
    assert_eq!(a.line, "HTTP/1.1 431 Request Header Fields Too Large");
    assert_eq!(up.lines(), ["GET /good"]);
    assert_closed_by_hyper(&a, closed, "70 KiB head");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_head_with_101_fields_after_a_good_request_gets_the_json_431_and_a_close() {
    let up = RawUpstream::start().await;
    let gw = gateway(&up, "").await;
    let fields: String = (0..100).map(|i| format!("x-field-{i}: {i}\r\n")).collect();
    // `host` and 100 more: 101 fields.
    let many = request("GET", "/many", &fields);
    let (a, closed) = after_a_good_request(&gw, many.as_bytes()).await;
    assert_json_error(&a, 431, "headers_too_large", "101 fields");
    assert_eq!(a.line, "HTTP/1.1 431 Request Header Fields Too Large");
    assert_eq!(up.lines(), ["GET /good"]);
    assert_closed_by_hyper(&a, closed, "101 fields");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_head_after_a_good_request_gets_the_json_400_and_a_close() {
    let up = RawUpstream::start().await;
    let gw = gateway(&up, "").await;
    let (a, closed) = after_a_good_request(&gw, b"GET / HTTP/1.1\r\nbad header\r\n\r\n").await;
    assert_json_error(&a, 400, "malformed_request", "a field line without a colon");
    assert_eq!(a.line, "HTTP/1.1 400 Bad Request");
    assert_eq!(up.lines(), ["GET /good"]);
    assert_closed_by_hyper(&a, closed, "a field line without a colon");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http_1_0_request_after_a_served_one_is_answered_as_http_1_0_and_closed() {
    let up = RawUpstream::start().await;
    let gw = gateway(&up, "").await;
    let mut tcp = connect(&gw).await;
    assert_eq!(get_on(&mut tcp, "/first", "").await.text(), "GET /first");
    tcp.write_all(b"GET /old HTTP/1.0\r\nhost: portcullis.test\r\n\r\n")
        .await
        .unwrap();
    let (out, closed) = read_until_closed(&mut tcp, PATIENCE).await;
    assert!(closed, "{:?}", lossy(&out));
    let (a, used) = parse_answer(&out, "GET").expect("a whole answer");
    assert_eq!(used, out.len(), "{:?}", lossy(&out));
    assert_eq!(a.line, "HTTP/1.0 200 OK");
    assert_eq!(a.text(), "GET /old");
    assert_eq!(up.lines(), ["GET /first", "GET /old"]);
}

// ---------------------------------------------------------------------------------------
// 12. Draining.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_the_request_in_flight_finish_with_connection_close() {
    let up = RawUpstream::start().await;
    let mut gw = gateway(&up, "shutdown_timeout = \"10s\"").await;
    // An idle kept-alive connection, and one with a request the upstream answers in 1 s.
    let mut idle = connect(&gw).await;
    idle.write_all(request("GET", "/first", "").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_answer(&mut idle, "GET").await.text(), "GET /first");
    let mut busy = connect(&gw).await;
    busy.write_all(request("GET", "/slow", "").as_bytes())
        .await
        .unwrap();
    up.wait_for("/slow").await;
    gw.signal("-TERM");

    // The idle connection is closed without waiting for the busy one.
    let started = Instant::now();
    let (out, closed) = read_until_closed(&mut idle, PATIENCE).await;
    assert!(closed && out.is_empty(), "{closed}: {:?}", lossy(&out));
    let idle_closed = started.elapsed();

    let (out, closed) = read_until_closed(&mut busy, PATIENCE).await;
    assert!(closed, "the busy connection stayed open: {:?}", lossy(&out));
    let (a, used) =
        parse_answer(&out, "GET").unwrap_or_else(|| panic!("no whole answer: {:?}", lossy(&out)));
    assert_eq!(used, out.len(), "{:?}", lossy(&out));
    assert_eq!(a.line, "HTTP/1.1 200 OK");
    assert_eq!(a.text(), "GET /slow");
    assert_eq!(a.header("connection"), Some("close"), "{a:?}");
    assert_gateway_fields(&a, "the drained answer");
    assert!(
        idle_closed < Duration::from_millis(700),
        "the idle connection was closed after {idle_closed:?}"
    );

    let status = gw.wait_exit(PATIENCE).await;
    assert_eq!(status.code(), Some(0), "{}", gw.logs());
}

/// A client that hangs up while its response is awaited cancels the request: the gateway
/// drops the upstream exchange (the upstream sees its connection closed) instead of waiting
/// for an answer nobody will read, as hyper does.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_hangs_up_cancels_its_request_upstream() {
    // An upstream that reads one request head, never answers, and reports when the gateway
    // closes the connection.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<Instant>();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        fill_until(&mut tcp, &mut buf, |b| find(b, b"\r\n\r\n")).await;
        let mut b = [0u8; 1024];
        while let Ok(n) = tcp.read(&mut b).await {
            if n == 0 {
                break;
            }
        }
        let _ = tx.send(Instant::now());
    });
    let port = free_port();
    let gw = Gateway::start(
        port,
        &config(
            port,
            addr,
            "upstream_timeout = \"30s\"\nrequest_timeout = \"30s\"",
            "",
        ),
    )
    .await;
    let mut tcp = connect(&gw).await;
    tcp.write_all(request("GET", "/hang", "").as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hung_up = Instant::now();
    drop(tcp);
    let closed = tokio::time::timeout(PATIENCE, rx)
        .await
        .expect("the upstream connection stayed open after the client left")
        .unwrap();
    assert!(
        closed.duration_since(hung_up) < Duration::from_secs(5),
        "closed {:?} after the client left",
        closed.duration_since(hung_up)
    );
    // The gateway serves on.
    let mut tcp = connect(&gw).await;
    tcp.write_all(request("GET", "/next", "connection: close\r\n").as_bytes())
        .await
        .unwrap();
    let (out, _) = read_until_closed(&mut tcp, PATIENCE).await;
    assert!(out.starts_with(b"HTTP/1.1 "), "{}", lossy(&out));
}

//! How the gateway reads the upstream's answers to requests without a body (per-core
//! threading, `proxy/h1.rs`): the framing of the body (`Content-Length`, chunked with
//! extensions and trailers, close-delimited, bodiless statuses and HEAD), the answers it
//! refuses with a 502 (ambiguous lengths, `Transfer-Encoding` on HTTP/1.0, a bad status
//! line, a head too large), broken chunked bodies, and which upstream connections go back to
//! the keep-alive pool afterwards.
//!
//! The upstream is a raw TCP server that answers each request with bytes scripted by the
//! request's path (see [`answer_for`]), often in several writes with pauses between them so
//! the gateway sees partial heads, chunk-size lines and bodies. It numbers its connections
//! and logs which connection carried each request. The gateway runs with `workers = 1`, so
//! every request shares one thread's pool and reuse is observable.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// The pause between the writes of a split answer: long enough for the gateway to read and
/// parse each piece on its own.
const PAUSE: Duration = Duration::from_millis(20);

/// What the upstream does once an answer is written.
#[derive(Clone, Copy, PartialEq)]
enum Then {
    /// Waits for the next request on the connection.
    KeepAlive,
    /// Closes the connection.
    Close,
}

/// One scripted answer: its bytes, in the writes they go out in, `pause` apart ([`PAUSE`]
/// unless said otherwise).
struct Answer {
    writes: Vec<Vec<u8>>,
    pause: Duration,
    then: Then,
}

impl Answer {
    /// The answer in one write.
    fn once(bytes: impl AsRef<[u8]>) -> Answer {
        Answer::pieces(&[bytes.as_ref()])
    }

    /// The answer in these writes.
    fn pieces(pieces: &[&[u8]]) -> Answer {
        Answer {
            writes: pieces.iter().map(|p| p.to_vec()).collect(),
            pause: PAUSE,
            then: Then::KeepAlive,
        }
    }

    /// And the upstream closes the connection after it.
    fn then_close(mut self) -> Answer {
        self.then = Then::Close;
        self
    }
}

/// The chunked body of `/chunked`, decoded.
const CHUNKED_BODY: &str = "hello, chunked world!";
/// The length of `/two-mib`'s body.
const TWO_MIB: usize = 2 * 1024 * 1024;

/// The end of [`huge_head`]'s answer: its last field, the blank line, the body.
const HUGE_HEAD_END: &[u8] = b"\r\ncontent-length: 2\r\n\r\nok";

/// An answer with a 410 KiB head (over the gateway's 400 KiB limit) and a 2-byte body.
fn huge_head() -> Vec<u8> {
    let mut head = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
    head.resize(head.len() + 410 * 1024, b'a');
    head.extend_from_slice(HUGE_HEAD_END);
    head
}

/// The upstream's script: what it answers to a request for `path`.
fn answer_for(path: &str) -> Answer {
    match path {
        // Chunk extensions, a chunk-size line split after its first digit, a chunk's data
        // and its CRLF split, the last chunk's line split between CR and LF, the end of the
        // trailer section apart.
        "/chunked" => Answer::pieces(&[
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n5;name=value\r\nhello\r\n",
            b"1",
            b"0 ;a=\"b c\"\r\n, chunk",
            b"ed world!\r",
            b"\n0\r",
            b"\n",
            b"\r\n",
        ]),
        "/trailers" => Answer::pieces(&[
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n3\r\nabc\r\n",
            b"3\r\ndef\r\n0\r\nx-checksum: abc\r\n",
            b"\r\n",
        ]),
        // HTTP/1.1 without a length or a coding: the body runs until the upstream closes.
        "/until-close" => Answer::pieces(&[
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\npart one, ",
            b"part two",
        ])
        .then_close(),
        "/early-hints" => Answer::pieces(&[
            b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nfinal",
        ]),
        // Answers the gateway must refuse (502).
        "/conflicting-length" => Answer::once(
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
        ),
        "/signed-length" => Answer::once("HTTP/1.1 200 OK\r\ncontent-length: +3\r\n\r\nabc"),
        "/chunked-on-http-1-0" => Answer::once(
            "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ),
        "/bad-status-line" => Answer::once("HTTP/1.1 two hundred OK\r\ncontent-length: 2\r\n\r\nok"),
        // A head of 410 KiB (over the 400 KiB limit): its first 410 KiB, then its end well
        // after (the gateway has passed the limit on a partial head by then); or all of it
        // in one write.
        "/huge-head" => {
            let head = huge_head();
            let (start, end) = head.split_at(head.len() - HUGE_HEAD_END.len());
            Answer {
                pause: Duration::from_millis(200),
                ..Answer::pieces(&[start, end])
            }
        }
        "/huge-head-in-one-write" => Answer::once(huge_head()),
        // More bytes after a complete answer: the connection is out of step.
        "/extra-bytes" => Answer::once("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA"),
        "/smuggled-answer" => Answer::once(
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nWRONG",
        ),
        // Broken chunked bodies; the upstream keeps the connection open unless it says.
        "/bare-lf-chunk-size" => Answer::once(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
        ),
        "/17-digit-chunk-size" => Answer::once(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n00000000000000005\r\nhello\r\n0\r\n\r\n",
        ),
        "/chunk-longer-than-its-size" => Answer::once(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello, world\r\n0\r\n\r\n",
        ),
        "/closed-mid-chunk" => Answer::pieces(&[
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
            b"10\r\nonly part",
        ])
        .then_close(),
        // `Connection: close` on HTTP/1.1; the upstream keeps the connection open all the
        // same, so only the gateway's reading of the field keeps it out of the pool.
        "/says-close" => {
            Answer::once("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 5\r\n\r\nhello")
        }
        // HTTP/1.0, even with `Connection: keep-alive`: not reused either.
        "/http-1-0-keep-alive" => Answer::once(
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 5\r\n\r\nhello",
        ),
        // For a HEAD request: the length of the body a GET would get, and no body.
        "/head" => Answer::once(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 9\r\n\r\n",
        ),
        "/not-modified" => Answer::once("HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\n\r\n"),
        "/no-content" => Answer::once("HTTP/1.1 204 No Content\r\nx-done: yes\r\n\r\n"),
        "/fine-thanks" => Answer::once(
            "HTTP/1.1 200 Fine Thanks\r\ncontent-type: text/plain\r\ncontent-length: 4\r\n\r\nfine",
        ),
        // 2 MiB of pattern bytes, 64 KiB a write, without pauses.
        "/two-mib" => {
            let mut writes = vec![
                format!("HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {TWO_MIB}\r\n\r\n")
                    .into_bytes(),
            ];
            let body: Vec<u8> = (0..TWO_MIB as u64).map(pattern_byte).collect();
            writes.extend(body.chunks(64 * 1024).map(<[u8]>::to_vec));
            Answer {
                writes,
                pause: Duration::ZERO,
                then: Then::KeepAlive,
            }
        }
        _ => Answer::once("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"),
    }
}

/// The scripted upstream on loopback.
struct Scripted {
    addr: std::net::SocketAddr,
    connections: Arc<AtomicUsize>,
    /// Each request line, with the number (from 1) of the connection it came on.
    requests: Arc<Mutex<Vec<(usize, String)>>>,
}

impl Scripted {
    async fn start() -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (c, r) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let number = c.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::spawn(serve(tcp, number, r.clone()));
            }
        });
        Scripted {
            addr,
            connections,
            requests,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<(usize, String)> {
        self.requests.lock().unwrap().clone()
    }

    /// The number of the connection that carried the last request for `path`.
    fn connection_of(&self, path: &str) -> usize {
        self.requests()
            .iter()
            .rev()
            .find(|(_, line)| line.split(' ').nth(1) == Some(path))
            .unwrap_or_else(|| panic!("no request for {path}: {:?}", self.requests()))
            .0
    }
}

/// Answers the requests of one connection from the script.
async fn serve(mut tcp: TcpStream, number: usize, log: Arc<Mutex<Vec<(usize, String)>>>) {
    let mut buf = Vec::new();
    while let Some(head) = read_request_head(&mut tcp, &mut buf).await {
        let line = head.lines().next().unwrap_or_default().to_string();
        let path = line.split(' ').nth(1).unwrap_or("/").to_string();
        log.lock().unwrap().push((number, line));
        let answer = answer_for(&path);
        for (i, piece) in answer.writes.iter().enumerate() {
            if i > 0 && !answer.pause.is_zero() {
                tokio::time::sleep(answer.pause).await;
            }
            if tcp.write_all(piece).await.is_err() {
                return;
            }
        }
        if answer.then == Then::Close {
            let _ = tcp.shutdown().await;
            return;
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The gateway in front of `up`: per-core threading, one worker (one pool).
async fn gateway(up: &Scripted) -> Gateway {
    let port = free_port();
    let server = "workers = 1\nthreading = \"per-core\"";
    Gateway::start(port, &config(port, up.addr, server, "")).await
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    TestBody,
>;

/// `method path` through the gateway with the hyper client, read whole.
async fn request(client: &Client, gw: &Gateway, method: Method, path: &str) -> Reply {
    let req = http::Request::builder()
        .method(method)
        .uri(gw.url(path))
        .body(full(""))
        .unwrap();
    send(client, req).await
}

async fn get_via(client: &Client, gw: &Gateway, path: &str) -> Reply {
    request(client, gw, Method::GET, path).await
}

/// GETs `/next` and asserts the gateway served it (`200 ok`); `what` names the case.
async fn next_is_served(client: &Client, gw: &Gateway, what: &str) {
    let next = get_via(client, gw, "/next").await;
    assert_eq!(
        (next.status, next.text().as_str()),
        (StatusCode::OK, "ok"),
        "{what}"
    );
}

/// `method path` on a new raw connection with `Connection: close`: every byte the gateway
/// sent, and whether it closed the connection within 10 seconds.
async fn raw_request(gw: &Gateway, method: &str, path: &str) -> (Vec<u8>, bool) {
    let mut tcp = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    let req =
        format!("{method} {path} HTTP/1.1\r\nhost: portcullis.test\r\nconnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    read_until_closed(&mut tcp, Duration::from_secs(10)).await
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Whether `bytes` (what follows a head) is a chunked body read through its last chunk and
/// the end of its trailer section.
fn chunked_to_the_end(mut bytes: &[u8]) -> bool {
    loop {
        let Some(eol) = find(bytes, b"\r\n") else {
            return false;
        };
        let line = lossy(&bytes[..eol]);
        let Ok(size) = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
        else {
            return false;
        };
        bytes = &bytes[eol + 2..];
        if size == 0 {
            return bytes.starts_with(b"\r\n") || find(bytes, b"\r\n\r\n").is_some();
        }
        if bytes.len() < size + 2 || &bytes[size..size + 2] != b"\r\n" {
            return false;
        }
        bytes = &bytes[size + 2..];
    }
}

/// Whether `bytes`, all a client got on a connection, make a complete 2xx answer: the body
/// as long as its `Content-Length`, a chunked body through its last chunk, or (neither) a
/// body that ran until the close.
fn complete_success(bytes: &[u8]) -> bool {
    let Some(end) = find(bytes, b"\r\n\r\n") else {
        return false;
    };
    let answer = RawAnswer {
        status: lossy(bytes.get(9..12).unwrap_or_default())
            .parse()
            .unwrap_or(0),
        head: lossy(&bytes[..end]),
        body: bytes[end + 4..].to_vec(),
    };
    if !(200..300).contains(&answer.status) {
        return false;
    }
    if answer
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().ends_with("chunked"))
    {
        return chunked_to_the_end(&answer.body);
    }
    match answer.header("content-length") {
        Some(n) => n.parse::<usize>().is_ok_and(|n| answer.body.len() >= n),
        None => true,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_answer_split_across_writes_arrives_whole_and_its_connection_is_reused() {
    let up = Scripted::start().await;
    let gw = gateway(&up).await;
    let client = client();
    for round in 0..2 {
        let r = get_via(&client, &gw, "/chunked").await;
        assert_eq!(r.status, StatusCode::OK, "round {round}: {}", r.text());
        assert_eq!(r.text(), CHUNKED_BODY, "round {round}");
        assert_eq!(r.headers["content-type"], "text/plain");
    }
    assert_eq!(up.requests().len(), 2);
    assert_eq!(
        up.connections(),
        1,
        "the second GET reuses the connection: {:?}",
        up.requests()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_answer_with_trailers_is_complete_and_its_connection_is_reused() {
    let up = Scripted::start().await;
    let gw = gateway(&up).await;
    let client = client();
    let r = get_via(&client, &gw, "/trailers").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text(), "abcdef");
    next_is_served(&client, &gw, "after it").await;
    assert_eq!(
        up.connections(),
        1,
        "the trailers ended the answer cleanly: {:?}",
        up.requests()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_close_delimited_answer_arrives_whole_and_the_next_request_opens_a_new_connection() {
    let up = Scripted::start().await;
    let gw = gateway(&up).await;
    let client = client();
    let r = get_via(&client, &gw, "/until-close").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text(), "part one, part two");
    next_is_served(&client, &gw, "after it").await;
    assert_eq!(up.connections(), 2, "{:?}", up.requests());
    assert_ne!(up.connection_of("/next"), up.connection_of("/until-close"));
}

#[tokio::test(flavor = "multi_thread")]
async fn early_hints_and_100_continue_are_skipped_for_the_final_answer() {
    let up = Scripted::start().await;
    let gw = gateway(&up).await;
    let client = client();
    let r = get_via(&client, &gw, "/early-hints").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text(), "final");
    assert!(!r.headers.contains_key("link"), "{:?}", r.headers);
    // On the wire: the 200 comes first, no 1xx before it.
    let (out, closed) = raw_request(&gw, "GET", "/early-hints").await;
    assert!(closed);
    let text = lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    let answers = raw_answers(&out);
    assert_eq!(answers.len(), 1, "{text}");
    assert_eq!(answers[0].body, b"final");
    // The answer ended cleanly after the 1xx ones: the connection was reused.
    assert_eq!(up.connections(), 1, "{:?}", up.requests());
}

#[tokio::test(flavor = "multi_thread")]
async fn ambiguous_or_unreadable_answers_are_a_502_json_error() {
    let up = Scripted::start().await;
    let gw = gateway(&up).await;
    let client = client();
    for (path, why) in [
        ("/conflicting-length", "conflicting Content-Length"),
        ("/signed-length", "bad Content-Length"),
        ("/chunked-on-http-1-0", "Transfer-Encoding on HTTP/1.0"),
        ("/bad-status-line", "malformed head"),
        ("/huge-head", "head too large"),
    ] {
        let r = get_via(&client, &gw, path).await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{path}: {}", r.text());
        assert_eq!(r.headers["content-type"], "application/json", "{path}");
        let body = r.json();
        assert_eq!(body["code"], "upstream_unavailable", "{path}: {body}");
        let id = r
            .headers
            .get("x-request-id")
            .unwrap_or_else(|| panic!("{path}: no x-request-id: {:?}", r.headers));
        assert!(!id.is_empty(), "{path}");
        assert_eq!(body["request_id"], id.to_str().unwrap(), "{path}");
        // Refused for the reason the rule gives, by the gateway's own reader.
        let logged = format!("invalid answer: {why}");
        assert!(
            gw.wait_log(&logged, Duration::from_secs(2)).await,
            "{path}: no {logged:?} in the log: {}",
            gw.logs()
        );
    }
    // Each went out once (none is repeated), each on a connection of its own.
    let requests = up.requests();
    assert_eq!(requests.len(), 5, "{requests:?}");
    assert_eq!(up.connections(), 5, "{requests:?}");
    // And the gateway serves on.
    let r = get_via(&client, &gw, "/next").await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "ok"));
}

/// The limit holds however the head arrives: here in one write, which the gateway may take
/// in a single read that goes past 400 KiB.
#[tokio::test(flavor = "multi_thread")]
async fn a_head_over_400_kib_is_a_502_even_when_it_arrives_in_one_write() {
    let up = Scripted::start().await;
    let gw = gateway(&up).await;
    for round in 0..3 {
        // A raw client: a hyper client would refuse a head this large itself.
        let (out, closed) = raw_request(&gw, "GET", "/huge-head-in-one-write").await;
        assert!(closed, "round {round}");
        let text = lossy(&out);
        assert!(
            text.starts_with("HTTP/1.1 502 "),
            "round {round}: the 410 KiB head was passed on ({} bytes): {:?}...",
            out.len(),
            &text[..text.len().min(80)]
        );
        let answers = raw_answers(&out);
        let body: serde_json::Value = serde_json::from_slice(&answers[0].body).unwrap();
        assert_eq!(body["code"], "upstream_unavailable", "round {round}");
        assert!(answers[0].header("x-request-id").is_some(), "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_after_a_complete_answer_keep_its_connection_out_of_the_pool() {
    for path in ["/extra-bytes", "/smuggled-answer"] {
        let up = Scripted::start().await;
        let gw = gateway(&up).await;
        let client = client();
        let r = get_via(&client, &gw, path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
        assert_eq!(r.text(), "ok", "{path}");
        // The next answer comes from a new connection, not from the leftover bytes.
        next_is_served(&client, &gw, path).await;
        assert_eq!(up.connections(), 2, "{path}: {:?}", up.requests());
        assert_ne!(up.connection_of("/next"), up.connection_of(path), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_chunked_body_is_cut_off_and_the_next_request_gets_a_new_connection() {
    let up = Scripted::start().await;
    let gw = gateway(&up).await;
    let client = client();
    for path in [
        "/bare-lf-chunk-size",
        "/17-digit-chunk-size",
        "/chunk-longer-than-its-size",
        "/closed-mid-chunk",
    ] {
        // A raw client: the answer breaks off before the last chunk.
        let (out, closed) = raw_request(&gw, "GET", path).await;
        assert!(closed, "{path}: the gateway kept the connection open");
        assert!(
            !complete_success(&out),
            "{path}: a broken body passed for a complete answer: {:?}",
            lossy(&out)
        );
        assert!(!out.ends_with(b"0\r\n\r\n"), "{path}: {:?}", lossy(&out));
        next_is_served(&client, &gw, path).await;
        assert_ne!(up.connection_of("/next"), up.connection_of(path), "{path}");

        // The hyper client: the request or the body read fails.
        let req = http::Request::get(gw.url(path)).body(full("")).unwrap();
        let outcome = match client.request(req).await {
            Err(e) => Err(format!("request: {e}")),
            Ok(res) => {
                let status = res.status();
                match res.into_body().collect().await {
                    Ok(body) => Ok((status, body.to_bytes())),
                    Err(e) => Err(format!("body: {e}")),
                }
            }
        };
        assert!(
            outcome.is_err(),
            "{path}: the client read a whole answer: {outcome:?}"
        );
        next_is_served(&client, &gw, path).await;
        assert_ne!(up.connection_of("/next"), up.connection_of(path), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_close_or_http_1_0_keeps_the_connection_out_of_the_pool() {
    // The upstream keeps these connections open: only the answer's head says not to reuse.
    for path in ["/says-close", "/http-1-0-keep-alive"] {
        let up = Scripted::start().await;
        let gw = gateway(&up).await;
        let client = client();
        let r = get_via(&client, &gw, path).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text());
        assert_eq!(r.text(), "hello", "{path}");
        next_is_served(&client, &gw, path).await;
        assert_eq!(up.connections(), 2, "{path}: {:?}", up.requests());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_head_answer_has_its_length_and_no_body_and_the_connection_is_reused() {
    let up = Scripted::start().await;
    let gw = gateway(&up).await;
    let client = client();
    let r = request(&client, &gw, Method::HEAD, "/head").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-length"], "9");
    assert!(r.body.is_empty());
    // On the wire: the head, then nothing.
    let (out, closed) = raw_request(&gw, "HEAD", "/head").await;
    assert!(closed);
    let text = lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    let end = find(&out, b"\r\n\r\n").expect("a whole head");
    assert_eq!(end + 4, out.len(), "a body after the HEAD answer: {text:?}");
    assert!(
        text.to_ascii_lowercase()
            .contains("\r\ncontent-length: 9\r\n"),
        "{text}"
    );
    next_is_served(&client, &gw, "after it").await;
    let requests = up.requests();
    assert!(
        requests[..2]
            .iter()
            .all(|(_, line)| line == "HEAD /head HTTP/1.1"),
        "{requests:?}"
    );
    assert_eq!(
        up.connections(),
        1,
        "the bodiless HEAD answers left the connection in step: {requests:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn not_modified_and_no_content_pass_through_and_the_connection_is_reused() {
    let up = Scripted::start().await;
    let gw = gateway(&up).await;
    let client = client();
    let r = get_via(&client, &gw, "/not-modified").await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers["etag"], "\"v1\"");
    assert!(r.body.is_empty());
    let r = get_via(&client, &gw, "/no-content").await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(r.headers["x-done"], "yes");
    assert!(r.body.is_empty());
    next_is_served(&client, &gw, "after it").await;
    assert_eq!(up.connections(), 1, "{:?}", up.requests());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_custom_reason_phrase_reaches_the_client() {
    let up = Scripted::start().await;
    let gw = gateway(&up).await;
    let (out, closed) = raw_request(&gw, "GET", "/fine-thanks").await;
    assert!(closed);
    let text = lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200 Fine Thanks\r\n"), "{text}");
    let answers = raw_answers(&out);
    assert_eq!(answers.len(), 1, "{text}");
    assert_eq!(answers[0].body, b"fine");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_two_mib_body_in_64_kib_writes_arrives_intact() {
    let up = Scripted::start().await;
    let gw = gateway(&up).await;
    let client = client();
    let r = get_via(&client, &gw, "/two-mib").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-length"], TWO_MIB.to_string().as_str());
    assert_eq!(r.body.len(), TWO_MIB);
    let expected: Vec<u8> = (0..TWO_MIB as u64).map(pattern_byte).collect();
    if let Some(at) = r.body.iter().zip(&expected).position(|(a, b)| a != b) {
        panic!("the body differs from byte {at}");
    }
    next_is_served(&client, &gw, "after it").await;
    assert_eq!(up.connections(), 1, "{:?}", up.requests());
}

//! Body size and content type (DESIGN §2 step 12) over real TCP.
//!
//! Two handler styles read the whole body: the `Bytes` extractor and a stream collected with
//! `BodyExt::collect`. When a streamed body passes the limit, `LimitedBody` errors and sets a
//! flag; the layer then replaces whatever the handler answered with its own JSON 413.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::routing::post;
use common::*;
use http_body_util::BodyExt;
use portcullis::audit::{AuditEvent, MemorySink, Outcome};
use portcullis::body_limit::check_declared_length;
use portcullis::policy::ReportOnly;
use portcullis::{Control, Policy, Preset, SecurityLayer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: usize = 1024;

/// Both handler styles, under `/`, `/json/` (JSON only) and `/trial/` (report-only body).
async fn start(sink: &MemorySink) -> SocketAddr {
    let limited = || Policy::preset(Preset::Public).max_body(LIMIT as u64);
    let layer = SecurityLayer::builder()
        .default_policy(limited())
        .route("/json/**", limited().content_types(["application/json"]))
        .route(
            "/trial/**",
            limited().report_only(ReportOnly::Controls(vec![Control::Body])),
        )
        .audit(Arc::new(sink.clone()))
        .build()
        .expect("valid layer");
    let mut app = Router::new();
    for prefix in ["", "/json", "/trial"] {
        app = app
            .route(
                &format!("{prefix}/bytes"),
                post(|b: Bytes| async move { b.len().to_string() })
                    .get(|| async { "no body needed" }),
            )
            .route(
                &format!("{prefix}/stream"),
                // Swallows a body error and answers 200: the layer must still answer 413.
                post(|b: Body| async move {
                    match b.collect().await {
                        Ok(c) => c.to_bytes().len().to_string(),
                        Err(e) => format!("handler swallowed: {e}"),
                    }
                }),
            );
    }
    serve_with(app, layer).await
}

const HANDLERS: [&str; 2] = ["/bytes", "/stream"];

/// Reads one response (skipping interim 1xx ones, which are reported) without waiting for the
/// connection to close: the head, then a `Content-Length` or chunked body.
async fn read_reply<R: AsyncReadExt + Unpin>(r: &mut R, deadline: Duration) -> (Reply, bool) {
    let start = Instant::now();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut saw_interim = false;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            if head.starts_with("http/1.1 1") {
                saw_interim = true;
                buf.drain(..end + 4);
                continue;
            }
            let body = buf.len() - end - 4;
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let done = match length {
                Some(n) => body >= n,
                None if head.contains("transfer-encoding: chunked") => buf.ends_with(b"0\r\n\r\n"),
                None => false,
            };
            if done {
                break;
            }
        }
        let left = deadline.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, r.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    (parse_raw(&buf), saw_interim)
}

/// Writes `raw` and reads one response; returns it and how long it took.
async fn exchange(addr: SocketAddr, raw: &[u8]) -> (Reply, Duration) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let t = Instant::now();
    s.write_all(raw).await.expect("write");
    let (reply, _) = read_reply(&mut s, Duration::from_secs(5)).await;
    (reply, t.elapsed())
}

/// A chunked request of `sizes` chunks, sent whole.
fn chunked(path: &str, extra_headers: &str, sizes: &[usize]) -> Vec<u8> {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{extra_headers}Transfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for &n in sizes {
        raw.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        raw.extend(std::iter::repeat_n(b'a', n));
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    raw
}

fn assert_json_413(r: &Reply, context: &str) {
    assert_eq!(r.status, 413, "{context}: {}", r.text());
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "{context}: the layer's JSON, not axum's text"
    );
    let v = r.json();
    assert_eq!(v["code"], "body_too_large", "{context}");
    assert_eq!(v["request_id"], r.header("x-request-id").unwrap_or("-"));
    assert!(!r.text().contains("handler"), "{context}: {}", r.text());
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
}

fn events_for(sink: &MemorySink, path: &str) -> Vec<AuditEvent> {
    sink.events()
        .into_iter()
        .filter(|e| e.path == path)
        .collect()
}

fn assert_one_event(sink: &MemorySink, path: &str, action: &str, outcome: Outcome, status: u16) {
    let events = events_for(sink, path);
    assert_eq!(events.len(), 1, "{path}: {events:?}");
    let e = &events[0];
    assert_eq!(e.action.as_str(), action, "{path}");
    assert_eq!(e.outcome, outcome, "{path}");
    assert_eq!(e.status, status, "{path}");
    assert_eq!(e.method, "POST");
    assert_eq!(e.client_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(e.metadata["control"], "body");
}

#[tokio::test]
async fn declared_length_over_the_limit_is_refused_before_the_body_is_sent() {
    let sink = MemorySink::default();
    let addr = start(&sink).await;
    for path in HANDLERS {
        // Headers only: the body never comes, so an answer proves none was waited for.
        let raw = format!(
            "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/octet-stream\r\nContent-Length: 100000\r\n\r\n"
        );
        let (r, took) = exchange(addr, raw.as_bytes()).await;
        assert_json_413(&r, path);
        assert!(took < Duration::from_secs(2), "{path}: took {took:?}");
        assert_one_event(&sink, path, "body_too_large", Outcome::Denied, 413);
        assert_eq!(
            events_for(&sink, path)[0].metadata["code"],
            "body_too_large"
        );
    }
}

#[tokio::test]
async fn expect_continue_over_the_limit_gets_413_and_no_continue() {
    let addr = start(&MemorySink::default()).await;
    for path in HANDLERS {
        let raw = format!(
            "POST {path} HTTP/1.1\r\nHost: test\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n"
        );
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(raw.as_bytes()).await.unwrap();
        let (r, saw_continue) = read_reply(&mut s, Duration::from_secs(5)).await;
        assert_json_413(&r, path);
        assert!(!saw_continue, "{path}: 100 Continue invited the body");
    }
}

#[tokio::test]
async fn oversized_declared_body_is_not_parsed_as_a_next_request() {
    let addr = start(&MemorySink::default()).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: test\r\n\r\n";
    let body = format!("{}{smuggled}", "a".repeat(2000 - smuggled.len()));
    let raw = format!("POST /bytes HTTP/1.1\r\nHost: test\r\nContent-Length: 2000\r\n\r\n{body}");
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut all = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut all)).await;
    let text = String::from_utf8_lossy(&all);
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
}

#[tokio::test]
async fn body_exactly_at_the_limit_is_accepted() {
    let sink = MemorySink::default();
    let addr = start(&sink).await;
    for path in HANDLERS {
        for n in [0, 1, LIMIT - 1, LIMIT] {
            let r = send(addr, "POST", path, &[], vec![b'x'; n]).await;
            assert_eq!(r.status, 200, "{path} {n}: {}", r.text());
            assert_eq!(r.text(), n.to_string());
        }
        let r = send(addr, "POST", path, &[], vec![b'x'; LIMIT + 1]).await;
        assert_json_413(&r, path);
    }
    assert!(sink.events().iter().all(|e| e.status == 413));
}

#[tokio::test]
async fn chunked_body_under_the_limit_is_accepted() {
    let addr = start(&MemorySink::default()).await;
    for path in HANDLERS {
        for sizes in [&[300, 300, 300][..], &[1000, 24], &[LIMIT], &[1; 10]] {
            let (r, _) = exchange(addr, &chunked(path, "", sizes)).await;
            assert_eq!(r.status, 200, "{path} {sizes:?}: {}", r.text());
            assert_eq!(r.text(), sizes.iter().sum::<usize>().to_string());
        }
    }
}

#[tokio::test]
async fn chunked_body_over_the_limit_gets_the_layers_json_413() {
    let sink = MemorySink::default();
    let addr = start(&sink).await;
    for path in HANDLERS {
        // One byte over, over in the first chunk, and over after many small chunks.
        for sizes in [&[1000, 25][..], &[LIMIT + 1], &[100; 11]] {
            let (r, _) = exchange(addr, &chunked(path, "", sizes)).await;
            assert_json_413(&r, &format!("{path} {sizes:?}"));
        }
        let events = events_for(&sink, path);
        assert_eq!(events.len(), 3, "{events:?}");
        for e in &events {
            assert_eq!(e.action.as_str(), "body_too_large");
            assert_eq!(e.outcome, Outcome::Denied);
            assert_eq!(e.status, 413);
        }
    }
}

/// A transfer coding other than `chunked` (`gzip, chunked`): hyper takes the chunks off, but
/// the body would reach the application still gzipped with nothing saying so. Refused with
/// the JSON 501 (RFC 9112 §6.1), audited, the application never called.
#[tokio::test]
async fn a_transfer_coding_other_than_chunked_is_refused_with_501() {
    let sink = MemorySink::default();
    let addr = start(&sink).await;
    for (i, coding) in ["gzip, chunked", "deflate,chunked", "x-custom , Chunked"]
        .iter()
        .enumerate()
    {
        let path = format!("/bytes?try={i}");
        let raw = chunked(&path, "", &[10]).into_iter().collect::<Vec<u8>>();
        let raw = String::from_utf8(raw).unwrap().replace(
            "Transfer-Encoding: chunked",
            &format!("Transfer-Encoding: {coding}"),
        );
        let (r, _) = exchange(addr, raw.as_bytes()).await;
        assert_eq!(r.status, 501, "{coding}: {}", r.text());
        assert_eq!(
            r.header("content-type"),
            Some("application/json"),
            "{coding}"
        );
        let body: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
        assert_eq!(body["code"], "unsupported_transfer_coding", "{coding}");
    }
    let refused = sink
        .events()
        .iter()
        .filter(|e| e.status == 501 && e.outcome == Outcome::Denied)
        .count();
    assert_eq!(refused, 3);
    // `chunked` alone, in any case, is the one coding understood.
    let raw = String::from_utf8(chunked("/bytes", "", &[10]))
        .unwrap()
        .replace("Transfer-Encoding: chunked", "Transfer-Encoding: CHUNKED");
    let (r, _) = exchange(addr, raw.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "10");
}

#[tokio::test]
async fn content_length_next_to_chunked_is_counted_as_chunked() {
    // hyper reads such a body as chunked (RFC 9112 §6.3), so the declared 5 cannot vouch for it.
    let addr = start(&MemorySink::default()).await;
    for path in HANDLERS {
        let (r, _) = exchange(addr, &chunked(path, "Content-Length: 5\r\n", &[1500])).await;
        assert_json_413(&r, path);
    }
}

/// Streams a chunked body of up to `cap` bytes while reading the response; returns the
/// response, the bytes written when it arrived, and how the writer ended.
async fn endless_upload(addr: SocketAddr, path: &str, cap: u64) -> (Reply, Duration, u64, String) {
    let (mut rd, mut wr) = TcpStream::connect(addr).await.unwrap().into_split();
    let written = Arc::new(AtomicU64::new(0));
    let counter = written.clone();
    let head = format!("POST {path} HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n");
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut frame = b"2000\r\n".to_vec();
        frame.extend_from_slice(&[b'a'; 0x2000]);
        frame.extend_from_slice(b"\r\n");
        while counter.load(Ordering::Relaxed) < cap {
            wr.write_all(&frame).await.map_err(|e| e.to_string())?;
            counter.fetch_add(0x2000, Ordering::Relaxed);
        }
        wr.write_all(b"0\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    });
    let t = Instant::now();
    let (reply, _) = read_reply(&mut rd, Duration::from_secs(10)).await;
    let took = t.elapsed();
    let at_reply = written.load(Ordering::Relaxed);
    // The server closes the connection, so the writer fails soon; never let it run on.
    let ended = match tokio::time::timeout(Duration::from_secs(5), writer).await {
        Ok(Ok(Ok(()))) => "finished".to_string(),
        Ok(Ok(Err(e))) => format!("write failed: {e}"),
        Ok(Err(e)) => format!("writer panicked: {e}"),
        Err(_) => "still blocked".to_string(),
    };
    (reply, took, at_reply, ended)
}

#[tokio::test]
async fn endless_chunked_body_is_answered_without_being_read() {
    // 64 MiB against a 1 KiB limit: more than any socket buffers could absorb.
    const CAP: u64 = 64 << 20;
    let sink = MemorySink::default();
    let addr = start(&sink).await;
    for path in HANDLERS {
        let (r, took, at_reply, ended) = endless_upload(addr, path, CAP).await;
        assert_json_413(&r, path);
        assert!(
            took < Duration::from_secs(5),
            "{path}: answered after {took:?}"
        );
        assert!(at_reply < CAP, "{path}: the whole body was sent first");
        // Not "finished" (the server read it all) nor "still blocked" (it holds the
        // connection open unread): the server closed it.
        assert!(ended.starts_with("write failed"), "{path}: writer {ended}");
        assert_eq!(events_for(&sink, path).len(), 1);
    }
}

#[tokio::test]
async fn a_body_is_exactly_its_content_length() {
    // hyper frames the body by Content-Length: bytes past it are the next request on the
    // connection, never part of this body; a short body is an error the handler sees (axum
    // answers its own 400). Neither can carry more than the declared, checked length.
    let addr = start(&MemorySink::default()).await;
    let raw = "POST /bytes HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\n0123456789EXTRA";
    let (r, _) = exchange(addr, raw.as_bytes()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "10");

    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /bytes HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\n01234")
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    let (r, _) = read_reply(&mut s, Duration::from_secs(5)).await;
    assert_eq!(r.status, 400, "{}", r.text());
}

#[tokio::test]
async fn malformed_content_length_is_refused_with_400() {
    // hyper refuses these itself, before the layer runs (plain 400, no JSON, no audit event);
    // `check_declared_length` below covers servers that pass them through.
    let addr = start(&MemorySink::default()).await;
    for lengths in [
        &["abc"][..],
        &["-1"],
        &["+5"],
        &["5, 6"],
        &["5", "6"],
        &["99999999999999999999999"],
        &[""],
    ] {
        let mut raw = "POST /bytes HTTP/1.1\r\nHost: test\r\nConnection: close\r\n".to_string();
        for l in lengths {
            raw.push_str(&format!("Content-Length: {l}\r\n"));
        }
        raw.push_str("\r\nhello");
        let (r, _) = exchange(addr, raw.as_bytes()).await;
        assert_eq!(r.status, 400, "{lengths:?}: {}", r.text());
        assert!(!r.text().contains('5'), "{lengths:?}: the handler ran");
    }
    // Identical duplicates are one length.
    let raw = "POST /bytes HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello";
    let (r, _) = exchange(addr, raw.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "5");
}

#[test]
fn the_layers_own_length_check_refuses_malformed_values() {
    for lengths in [
        &["abc"][..],
        &["-1"],
        &["+5"],
        &[" 5"],
        &["5, 6"],
        &["5", "6"],
        &["5", "x"],
        &["99999999999999999999999"],
        &[""],
    ] {
        let mut h = http::HeaderMap::new();
        for l in lengths {
            h.append("content-length", l.parse().unwrap());
        }
        let r = check_declared_length(&h, 100).expect_err("malformed");
        assert_eq!(r.status(), 400, "{lengths:?}");
        assert_eq!(r.code(), "invalid_content_length");
        assert_eq!(r.action().as_str(), "invalid_input");
    }
    let mut h = http::HeaderMap::new();
    h.append("content-length", "100".parse().unwrap());
    h.append("content-length", "100".parse().unwrap());
    assert!(check_declared_length(&h, 100).is_ok());
    h.insert("content-length", "101".parse().unwrap());
    assert_eq!(check_declared_length(&h, 100).unwrap_err().status(), 413);
    assert!(check_declared_length(&http::HeaderMap::new(), 0).is_ok());
}

#[tokio::test]
async fn content_type_allowlist() {
    let sink = MemorySink::default();
    let addr = start(&sink).await;
    let body = r#"{"a":1}"#;
    for ct in [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/json;charset=UTF-8",
    ] {
        let r = send(addr, "POST", "/json/bytes", &[("content-type", ct)], body).await;
        assert_eq!(r.status, 200, "{ct}: {}", r.text());
        assert_eq!(r.text(), body.len().to_string());
    }
    for ct in [
        "text/plain",
        "application/jsonp",
        "application/json-patch+json",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "json",
        "",
    ] {
        let r = send(addr, "POST", "/json/bytes", &[("content-type", ct)], body).await;
        assert_eq!(r.status, 415, "{ct:?}: {}", r.text());
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.json()["code"], "unsupported_media_type", "{ct:?}");
    }
    // A body without a content type.
    let r = send(addr, "POST", "/json/bytes", &[], body).await;
    assert_eq!(r.status, 415);
    // No body: nothing to check.
    let r = fetch(addr, "/json/bytes").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = send(addr, "POST", "/json/bytes", &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    // A chunked body is a body.
    let (r, _) = exchange(addr, &chunked("/json/bytes", "", &[10])).await;
    assert_eq!(r.status, 415, "{}", r.text());
    let (r, _) = exchange(
        addr,
        &chunked("/json/bytes", "Content-Type: application/json\r\n", &[10]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Two different content types: the application might parse the other one.
    let (r, _) = exchange(
        addr,
        &chunked(
            "/json/bytes",
            "Content-Type: application/json\r\nContent-Type: text/plain\r\n",
            &[10],
        ),
    )
    .await;
    assert_eq!(r.status, 415, "{}", r.text());

    let refused: Vec<_> = events_for(&sink, "/json/bytes");
    assert_eq!(refused.len(), 7 + 1 + 1 + 1, "{refused:?}");
    for e in refused {
        assert_eq!(e.action.as_str(), "invalid_input");
        assert_eq!(e.outcome, Outcome::Denied);
        assert_eq!(e.status, 415);
        assert_eq!(e.metadata["code"], "unsupported_media_type");
    }
}

#[tokio::test]
async fn report_only_body_control_lets_an_oversized_body_through_and_audits_it() {
    let sink = MemorySink::default();
    let addr = start(&sink).await;
    for path in ["/trial/bytes", "/trial/stream"] {
        let r = send(addr, "POST", path, &[], vec![b'x'; 2 * LIMIT]).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.text(), (2 * LIMIT).to_string());
        assert_one_event(&sink, path, "body_too_large", Outcome::ReportOnly, 413);
    }
    // A chunked oversized body is let through too (it is not counted in report-only mode).
    let (r, _) = exchange(addr, &chunked("/trial/stream", "", &[LIMIT, LIMIT])).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), (2 * LIMIT).to_string());
    // The enforcing routes next door still refuse.
    let r = send(addr, "POST", "/bytes", &[], vec![b'x'; 2 * LIMIT]).await;
    assert_json_413(&r, "/bytes");
}

/// Sends `body` over HTTP/2 (prior knowledge) as a stream of unknown length: no
/// `Content-Length`, and HTTP/2 has no `Transfer-Encoding`.
async fn send_h2_stream(addr: SocketAddr, path: &str, content_type: &str, body: Vec<u8>) -> Reply {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let frames = vec![Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(
        body,
    )))];
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", content_type)
        .body(StreamBody::new(futures_util::stream::iter(frames)))
        .expect("valid request");
    let res = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("no timeout")
        .expect("request succeeds");
    assert_eq!(res.version(), http::Version::HTTP_2);
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.expect("body").to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

#[tokio::test]
async fn http2_body_without_length_is_counted() {
    let addr = start(&MemorySink::default()).await;
    for path in HANDLERS {
        let r = send_h2_stream(addr, path, "application/json", vec![b'x'; LIMIT]).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let r = send_h2_stream(addr, path, "application/json", vec![b'x'; 5 * LIMIT]).await;
        assert_json_413(&r, path);
    }
}

#[tokio::test]
async fn http2_body_without_length_is_held_to_the_content_type_allowlist() {
    let addr = start(&MemorySink::default()).await;
    let r = send_h2_stream(addr, "/json/bytes", "text/plain", b"hello".to_vec()).await;
    assert_eq!(r.status, 415, "{}", r.text());
    let r = send_h2_stream(addr, "/json/bytes", "application/json", b"{}".to_vec()).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn report_only_counts_a_chunked_body_and_audits_it() {
    let sink = MemorySink::default();
    let addr = start(&sink).await;
    for path in ["/trial/bytes", "/trial/stream"] {
        let (r, _) = exchange(addr, &chunked(path, "", &[LIMIT, LIMIT])).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), (2 * LIMIT).to_string());
        assert_one_event(&sink, path, "body_too_large", Outcome::ReportOnly, 413);
    }
    // Under the limit: nothing to report.
    let (r, _) = exchange(addr, &chunked("/trial/stream", "", &[10])).await;
    assert_eq!(r.status, 200);
    assert_eq!(events_for(&sink, "/trial/stream").len(), 1);
}

//! Server limits against slow and oversized clients, on the real binary over real sockets.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn gateway(up: &Upstream, server_extra: &str) -> Gateway {
    let port = free_port();
    Gateway::start(port, &config(port, up.addr, server_extra, "")).await
}

/// Sends one keep-alive GET on `tcp` and reads its whole response (`hello`, 5 bytes).
async fn keep_alive_get(tcp: &mut TcpStream, path: &str) -> String {
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_response(tcp).await
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_headers_get_431() {
    let up = Upstream::start().await;
    let gw = gateway(&up, "max_header_bytes = 4096").await;

    // Over the limit but within hyper's buffer: the JSON error.
    let big = "a".repeat(6000);
    let r = get(&gw.url("/x"), &[("x-big", &big)]).await;
    assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(r.json()["code"], "headers_too_large");
    assert_eq!(r.headers["x-content-type-options"], "nosniff");
    assert!(r.headers.contains_key("x-request-id"));

    // Well over it, but within hyper's 64 KiB read buffer: still the JSON error.
    let large = "d".repeat(40 * 1024);
    let r = get(&gw.url("/x"), &[("x-large", &large)]).await;
    assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(r.json()["code"], "headers_too_large");

    // Far over it: hyper refuses it before the service, and the connection is closed; the
    // answer is still the JSON error.
    let huge = "b".repeat(64 * 1024);
    let req = format!("GET /x HTTP/1.1\r\nHost: t\r\nX-Huge: {huge}\r\n\r\n");
    let out = raw(gw.port, req.as_bytes(), Duration::from_secs(5)).await;
    let (a, body) = json_answer(&out);
    assert_eq!(a.status, 431, "{out}");
    assert_eq!(body["code"], "headers_too_large", "{out}");
    assert_eq!(a.header("connection"), Some("close"), "{out}");
    assert_eq!(a.header("x-content-type-options"), Some("nosniff"), "{out}");

    // Under the limit: served; and nothing oversized reached the upstream.
    let r = get(&gw.url("/x"), &[("x-ok", &"c".repeat(3000))]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(up.hits(), 1);

    // HTTP/2 gets the same JSON error.
    let res = h2_client()
        .request(
            http::Request::get(gw.url("/x"))
                .header("x-big", big.as_str())
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    // Far over the HTTP/2 header-list cap: refused by h2 itself, with 431 or, this far
    // over, GOAWAY (ENHANCE_YOUR_CALM).
    let res = h2_client()
        .request(
            http::Request::get(gw.url("/x"))
                .header("x-huge", huge.as_str())
                .body(full(""))
                .unwrap(),
        )
        .await;
    match res {
        Ok(res) => assert_eq!(res.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(e) => assert!(format!("{e:?}").contains("GoAway"), "{e:?}"),
    }
    assert_eq!(up.hits(), 1);
}

/// Trickles a request head one byte every 500 ms; returns how long until the server closed.
async fn slowloris(tcp: TcpStream) -> Duration {
    let started = Instant::now();
    let (mut rd, mut wr) = tcp.into_split();
    let writer = tokio::spawn(async move {
        for b in b"GET /x HTTP/1.1\r\nHost: t\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter() {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut out)).await;
    writer.abort();
    assert!(
        out.is_empty() || out.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_is_dropped_at_the_header_timeout_while_others_are_served() {
    let up = Upstream::start().await;
    let gw = gateway(&up, "header_read_timeout = \"2s\"").await;
    let tcp = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    let slow = tokio::spawn(slowloris(tcp));
    // Meanwhile, normal requests on other connections are served promptly.
    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(get(&gw.url("/x"), &[]).await.status, StatusCode::OK);
        assert!(started.elapsed() < Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let took = slow.await.unwrap();
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_millis(3500),
        "closed after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_on_a_kept_alive_connection_is_dropped_too() {
    let up = Upstream::start().await;
    let gw = gateway(&up, "header_read_timeout = \"1s\"\nidle_timeout = \"30s\"").await;
    let mut tcp = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    let first = keep_alive_get(&mut tcp, "/x").await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let took = slowloris(tcp).await;
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_millis(2500),
        "closed after {took:?}"
    );
}

/// Reads until the gateway closes the idle connection (sending nothing more): how long that
/// took.
async fn idle_close(tcp: &mut TcpStream) -> Duration {
    let started = Instant::now();
    let (rest, closed) = read_until_closed(tcp, Duration::from_secs(4)).await;
    assert!(closed, "the idle connection stayed open");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_keep_alive_connections_are_closed_after_idle_timeout() {
    let up = Upstream::start().await;
    let gw = gateway(&up, "idle_timeout = \"1s\"\nheader_read_timeout = \"5s\"").await;
    let mut tcp = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    assert!(
        keep_alive_get(&mut tcp, "/x")
            .await
            .starts_with("HTTP/1.1 200")
    );
    let took = idle_close(&mut tcp).await;
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_millis(2500),
        "closed after {took:?}"
    );
}

/// The idle clock restarts at the last request: a connection used again just before its
/// idle timeout is closed a whole timeout after that use, never sooner, and not much later.
#[tokio::test(flavor = "multi_thread")]
async fn idle_timeout_counts_from_the_last_request_not_the_first() {
    let up = Upstream::start().await;
    let gw = gateway(&up, "idle_timeout = \"1s\"\nheader_read_timeout = \"5s\"").await;
    let mut tcp = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    for i in 0..4 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        let answer = keep_alive_get(&mut tcp, "/x").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "request {i}: {answer}");
    }
    let took = idle_close(&mut tcp).await;
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(1800),
        "closed {took:?} after the last request"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_time_between_requests_is_not_cut_by_the_header_timeout() {
    let up = Upstream::start().await;
    let gw = gateway(&up, "idle_timeout = \"5s\"\nheader_read_timeout = \"1s\"").await;
    let mut tcp = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    assert!(
        keep_alive_get(&mut tcp, "/x")
            .await
            .starts_with("HTTP/1.1 200")
    );
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(
        keep_alive_get(&mut tcp, "/x")
            .await
            .starts_with("HTTP/1.1 200")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_that_sends_nothing_is_closed_at_the_header_timeout() {
    let up = Upstream::start().await;
    let gw = gateway(&up, "header_read_timeout = \"1s\"\nidle_timeout = \"30s\"").await;
    let mut tcp = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut tcp, Duration::from_secs(4)).await;
    assert!(closed);
    assert!(started.elapsed() < Duration::from_millis(2500));
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_max_connections_wait_for_a_free_slot() {
    let up = Upstream::start().await;
    let gw = gateway(&up, "max_connections = 2\nidle_timeout = \"30s\"").await;
    let mut a = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    let mut b = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    assert!(
        keep_alive_get(&mut a, "/x")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        keep_alive_get(&mut b, "/x")
            .await
            .starts_with("HTTP/1.1 200")
    );

    // The third connection is not accepted while both slots are held.
    let mut c = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    c.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let waited = tokio::time::timeout(Duration::from_millis(700), c.read(&mut buf)).await;
    assert!(waited.is_err(), "the third connection was served at once");

    // Closing one frees its slot: the third is served.
    drop(a);
    let n = tokio::time::timeout(Duration::from_secs(3), c.read(&mut buf))
        .await
        .expect("served once a slot is free")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_body_slower_than_request_timeout_is_408() {
    let up = Upstream::start().await;
    let gw = gateway(&up, "request_timeout = \"1s\"").await;
    let mut tcp = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    tcp.write_all(
        b"POST /consume HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    let started = Instant::now();
    let (out, _) = read_until_closed(&mut tcp, Duration::from_secs(4)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(out.contains("\"code\":\"request_timeout\""), "{out}");
    assert!(started.elapsed() < Duration::from_millis(2500));
}

/// A body that keeps coming at a steady pace (far above `MIN_BODY_RATE`) earns the time it
/// takes: a 3 s upload passes `request_timeout` and `upstream_timeout` of 1 s each, as a
/// large upload over a slow link must. One that trickles below the rate is still cut at the
/// timeout, with the client's 408.
#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_keeps_coming_outlasts_the_timeouts_and_a_trickle_does_not() {
    use portcullis_gateway::proxy::MIN_BODY_RATE;
    let up = Upstream::start().await;
    let gw = gateway(&up, "request_timeout = \"1s\"\nupstream_timeout = \"1s\"").await;
    // Sends `chunks` chunks of `size` bytes, one every `every`; the answer.
    let upload = |chunks: usize, size: usize, every: Duration| {
        let port = gw.port;
        async move {
            let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let total = chunks * size;
            tcp.write_all(
                format!(
                    "POST /consume/up HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\n\
                     Content-Length: {total}\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .unwrap();
            let started = Instant::now();
            let (mut rx, mut tx) = tcp.into_split();
            let sender = tokio::spawn(async move {
                for _ in 0..chunks {
                    if tx.write_all(&vec![b'x'; size]).await.is_err() {
                        break;
                    }
                    tokio::time::sleep(every).await;
                }
                tx
            });
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), rx.read_to_end(&mut out)).await;
            sender.abort();
            (
                String::from_utf8_lossy(&out).into_owned(),
                started.elapsed(),
            )
        }
    };
    // 300 KiB over 3 s: 100 KiB/s.
    let (out, took) = upload(30, 10 * 1024, Duration::from_millis(100)).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.ends_with(&(300 * 1024).to_string()),
        "the upstream read it all: {out}"
    );
    assert!(took > Duration::from_millis(2500), "{took:?}");
    // 20 bytes a second, far below the rate: cut at the timeout.
    const { assert!(20 < MIN_BODY_RATE) };
    let (out, took) = upload(100, 2, Duration::from_millis(100)).await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(out.contains("\"code\":\"request_timeout\""), "{out}");
    assert!(took < Duration::from_millis(2500), "{took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_stops_taking_the_body_is_504_not_the_clients_408() {
    // The upstream answers /slow/… after 5 s without reading the body: once the sockets
    // between are full, the gateway waits on the upstream, not on the client, which has
    // its whole body ready to send.
    let up = Upstream::start().await;
    let port = free_port();
    let routes = "[[route]]\npath = \"/slow/**\"\nmax_body = \"128MiB\"\nrate_limit = false\n";
    let gw = Gateway::start(
        port,
        &config(port, up.addr, "upstream_timeout = \"1s\"", routes),
    )
    .await;
    let mut tcp = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    let size = 64 * 1024 * 1024;
    tcp.write_all(
        format!("POST /slow/5000 HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: {size}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let (mut rx, mut tx) = tcp.into_split();
    let sender = tokio::spawn(async move {
        let chunk = vec![b'x'; 64 * 1024];
        let mut sent = 0;
        while sent < size {
            if tx.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
    });
    // The answer, without waiting for the connection to close.
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(out.windows(4).any(|w| w == b"\r\n\r\n") && out.ends_with(b"}")) {
        match tokio::time::timeout_at(deadline.into(), rx.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    sender.abort();
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 504"), "{out}");
    assert!(out.contains("\"code\":\"upstream_timeout\""), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_doubled_or_malformed_host_is_a_400_that_never_reaches_the_upstream() {
    let up = Upstream::start().await;
    let gw = gateway(&up, "").await;
    for (what, head) in [
        ("no Host", "GET /x HTTP/1.1\r\nConnection: close\r\n\r\n"),
        (
            "two Hosts",
            "GET /x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\nConnection: close\r\n\r\n",
        ),
        (
            "user info",
            "GET /x HTTP/1.1\r\nHost: evil.example@good.example\r\nConnection: close\r\n\r\n",
        ),
        (
            "a space",
            "GET /x HTTP/1.1\r\nHost: good.example evil\r\nConnection: close\r\n\r\n",
        ),
    ] {
        let out = raw(gw.port, head.as_bytes(), Duration::from_secs(5)).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{what}: {out}");
        assert!(out.contains("\"code\":\"invalid_host\""), "{what}: {out}");
        assert!(
            out.to_ascii_lowercase().contains("x-request-id:"),
            "{what}: {out}"
        );
    }
    assert_eq!(up.hits(), 0);
    // An HTTP/1.0 request may leave Host out.
    let out = raw(gw.port, b"GET /x HTTP/1.0\r\n\r\n", Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.0 200"), "{out}");
    assert_eq!(up.hits(), 1);
}

/// The gateway with `server_extra` in `[server]` and a JSON-lines audit log: it and the log.
async fn audited_gateway(up: &Upstream, server_extra: &str) -> (Gateway, std::path::PathBuf) {
    let log = temp_dir().join("audit.jsonl");
    let port = free_port();
    let text = format!(
        "{}[storage]\naudit = \"jsonl://{}\"\n",
        config(port, up.addr, server_extra, ""),
        log.display()
    );
    (Gateway::start(port, &text).await, log)
}

/// The audit log's text and its rows.
fn audit_rows(log: &std::path::Path) -> (String, Vec<serde_json::Value>) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let events = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (text, events)
}

/// A client that stops reading its response (slow read) holds its connection, and the
/// upstream connection streaming to it, only until `idle_timeout`; one that reads slowly
/// but steadily keeps it.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_its_response_is_closed_at_idle_timeout() {
    const SIZE: u64 = 256 * 1024 * 1024;
    let up = Upstream::start().await;
    let gw = gateway(&up, "idle_timeout = \"1s\"").await;
    let connect = || async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut tcp = socket
            .connect(([127, 0, 0, 1], gw.port).into())
            .await
            .unwrap();
        let req = format!("GET /big/{SIZE} HTTP/1.1\r\nHost: t\r\nAccept: */*\r\n\r\n");
        tcp.write_all(req.as_bytes()).await.unwrap();
        tcp
    };
    let mut stalled = connect().await;
    let mut steady = connect().await;
    // One reads nothing for 3 s; the other a little every 200 ms.
    let mut steady_got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let n = tokio::time::timeout(Duration::from_secs(2), steady.read(&mut buf[..4096]))
            .await
            .expect("the steady reader's response keeps coming")
            .unwrap();
        assert!(n > 0, "the steady reader's connection was closed");
        steady_got += n;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(steady_got > 0);
    // The stalled one was closed: what its socket holds, then the end, well short of SIZE.
    let mut got = 0u64;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got += n as u64,
            Err(_) => panic!("the stalled connection is still open after {got} bytes"),
        }
        assert!(got < SIZE / 2, "the stalled client's response kept coming");
    }
}

/// The same over HTTP/2, per stream: a stream whose client leaves its window shut ends (reset,
/// never cut short as if complete) at `idle_timeout`, its upstream connection released, while
/// another stream of the same connection, read slowly but steadily, keeps going.
#[tokio::test(flavor = "multi_thread")]
async fn an_http2_stream_whose_client_stops_reading_ends_at_idle_timeout() {
    use http_body_util::BodyExt;
    const SIZE: u64 = 64 * 1024 * 1024;
    let up = Upstream::start().await;
    let gw = gateway(&up, "idle_timeout = \"1s\"").await;
    let h2 = h2_client();
    let get_big = || {
        h2.request(
            http::Request::get(gw.url(&format!("/big/{SIZE}")))
                .body(full(""))
                .unwrap(),
        )
    };
    let stalled = get_big().await.expect("an answer");
    let steady = get_big().await.expect("an answer");
    assert_eq!(stalled.version(), http::Version::HTTP_2);
    assert_eq!(stalled.status(), StatusCode::OK);
    let mut steady = steady.into_body();
    let mut steady_got = 0usize;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let frame = tokio::time::timeout(Duration::from_secs(2), steady.frame())
            .await
            .expect("the steady reader's response keeps coming")
            .expect("more of it")
            .expect("not reset");
        steady_got += frame.data_ref().map_or(0, |d| d.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(steady_got > 0);
    // The stalled stream: what its window let through, then an error, far short of SIZE.
    let mut stalled = stalled.into_body();
    let mut got = 0u64;
    let ended_in_error = loop {
        match tokio::time::timeout(Duration::from_secs(5), stalled.frame()).await {
            Ok(Some(Ok(f))) => got += f.data_ref().map_or(0, |d| d.len() as u64),
            Ok(Some(Err(_))) => break true,
            Ok(None) => break false,
            Err(_) => panic!("the stalled stream is still open after {got} bytes"),
        }
        assert!(got < SIZE / 2, "the stalled stream kept coming");
    };
    assert!(
        ended_in_error,
        "reset, not ended as if complete ({got} bytes)"
    );
    assert!(
        gw.wait_log("took no byte of its response", Duration::from_secs(2))
            .await,
        "{}",
        gw.logs()
    );
}

/// The proxy's own refusals — 504 for an upstream too slow to answer, 408 for a body too slow
/// to arrive, 400 for a body that broke off — are audited like the layer's: `denied`, with
/// their code, the route and path, and the request id the answer carried.
#[tokio::test(flavor = "multi_thread")]
async fn the_proxys_own_refusals_are_audited() {
    let up = Upstream::start().await;
    let (mut gw, log) = audited_gateway(
        &up,
        "request_timeout = \"1s\"\nupstream_timeout = \"500ms\"",
    )
    .await;
    let slow = get(&gw.url("/slow/3000"), &[]).await;
    assert_eq!(slow.status, StatusCode::GATEWAY_TIMEOUT);
    let slow_id = slow.headers["x-request-id"].to_str().unwrap().to_string();

    let mut tcp = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    tcp.write_all(
        b"POST /consume/late HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    let (out, _) = read_until_closed(&mut tcp, Duration::from_secs(4)).await;
    let out = String::from_utf8_lossy(&out).into_owned();
    let (late, _) = json_answer(&out);
    assert_eq!(late.status, 408, "{out}");
    let late_id = late
        .header("x-request-id")
        .expect("a request id")
        .to_string();

    let mut tcp = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    tcp.write_all(
        b"POST /consume/cut HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    tcp.shutdown().await.unwrap();
    let (out, _) = read_until_closed(&mut tcp, Duration::from_secs(4)).await;
    let out = String::from_utf8_lossy(&out).into_owned();
    let (cut, _) = json_answer(&out);
    assert_eq!(cut.status, 400, "{out}");
    let cut_id = cut
        .header("x-request-id")
        .expect("a request id")
        .to_string();

    gw.signal("-TERM");
    assert!(gw.wait_exit(Duration::from_secs(10)).await.success());
    let (text, events) = audit_rows(&log);
    for (id, status, code, path) in [
        (&slow_id, 504, "upstream_timeout", "/slow/3000"),
        (&late_id, 408, "request_timeout", "/consume/late"),
        (&cut_id, 400, "request_body_incomplete", "/consume/cut"),
    ] {
        let rows: Vec<_> = events
            .iter()
            .filter(|e| e["request_id"] == id.as_str())
            .collect();
        assert_eq!(rows.len(), 1, "{code}: one audit row: {text}");
        let e = rows[0];
        assert_eq!(e["status"], status, "{text}");
        assert_eq!(e["outcome"], "denied", "{text}");
        assert_eq!(e["metadata"]["code"], code, "{text}");
        assert_eq!(e["path"], path, "{text}");
        assert_eq!(e["client_ip"], "127.0.0.1", "{text}");
    }
    if let Some(dir) = log.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A head begun but not ended within `header_read_timeout` (counted from the connection's
/// start for its first request) gets the JSON 408 `request_timeout`, with the security
/// headers and `connection: close`, and the audit log shows it with the request line it had.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_first_head_gets_the_json_408_and_is_audited() {
    let up = Upstream::start().await;
    let (mut gw, log) = audited_gateway(&up, "header_read_timeout = \"1s\"").await;
    let started = Instant::now();
    let mut tcp = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    // Half a second of silence counts against the head too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    tcp.write_all(b"GET /slow/path?q=1 HTTP/1.1\r\nHost: t\r\nX-Half: ")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2400),
        "answered after {took:?}"
    );
    let out = String::from_utf8_lossy(&out).into_owned();
    let (a, body) = json_answer(&out);
    assert_eq!(a.status, 408, "{out}");
    assert_eq!(body["code"], "request_timeout", "{out}");
    assert_eq!(a.header("connection"), Some("close"), "{out}");
    assert_eq!(a.header("x-content-type-options"), Some("nosniff"), "{out}");
    let id = a.header("x-request-id").expect("a request id").to_string();
    assert_eq!(body["request_id"], id.as_str(), "{out}");
    assert_eq!(up.hits(), 0);
    // A head with no complete request line is answered too, and audited without one.
    let out = raw(gw.port, b"GE", Duration::from_secs(5)).await;
    assert_eq!(json_answer(&out).0.status, 408, "{out}");
    gw.signal("-TERM");
    assert!(gw.wait_exit(Duration::from_secs(10)).await.success());

    let (text, events) = audit_rows(&log);
    let slow = events
        .iter()
        .find(|e| e["request_id"] == id.as_str())
        .unwrap_or_else(|| panic!("no audit row for {id}: {text}"));
    assert_eq!(slow["status"], 408, "{text}");
    assert_eq!(slow["outcome"], "denied", "{text}");
    assert_eq!(slow["method"], "GET", "{text}");
    assert_eq!(slow["path"], "/slow/path?q=1", "{text}");
    assert_eq!(slow["client_ip"], "127.0.0.1", "{text}");
    assert_eq!(slow["metadata"]["code"], "request_timeout", "{text}");
    let bare = events.iter().filter(|e| e["status"] == 408).count();
    assert_eq!(bare, 2, "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_before_the_layer_are_audited_too() {
    let up = Upstream::start().await;
    let (mut gw, log) = audited_gateway(&up, "max_header_bytes = 4096").await;
    // hyper's own 400: a folded header line it will not parse.
    let out = raw(
        gw.port,
        b"GET /folded HTTP/1.1\r\nHost: t\r\nX-Folded: a\r\n  b\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let (a, body) = json_answer(&out);
    assert_eq!(a.status, 400, "{out}");
    assert_eq!(body["code"], "malformed_request", "{out}");
    let folded_id = a.header("x-request-id").expect("a request id").to_string();
    assert_eq!(body["request_id"], folded_id.as_str(), "{out}");
    // hyper's own 431: a header block larger than its read buffer.
    let huge = "h".repeat(70 * 1024);
    let req = format!("GET /huge HTTP/1.1\r\nHost: t\r\nX-Huge: {huge}\r\n\r\n");
    let out = raw(gw.port, req.as_bytes(), Duration::from_secs(5)).await;
    let (a, _) = json_answer(&out);
    assert_eq!(a.status, 431, "{out}");
    let huge_id = a.header("x-request-id").expect("a request id").to_string();
    // The JSON 431 over max_header_bytes, answered before the layer.
    let r = get(&gw.url("/big"), &[("x-big", &"b".repeat(6000))]).await;
    assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let id = r.headers["x-request-id"].to_str().unwrap().to_string();
    gw.signal("-TERM");
    assert!(gw.wait_exit(Duration::from_secs(10)).await.success());

    let (text, events) = audit_rows(&log);
    let find = |status: u64, code: &str| {
        events.iter().any(|e| {
            e["status"] == status
                && e["action"] == "invalid_input"
                && e["outcome"] == "denied"
                && e["client_ip"] == "127.0.0.1"
                && e["metadata"]["code"] == code
                && e["metadata"]["control"] == "server_limits"
                && e["metadata"]["reason"]
                    .as_str()
                    .is_some_and(|r| !r.is_empty())
        })
    };
    assert!(find(400, "malformed_request"), "{text}");
    assert!(find(431, "headers_too_large"), "{text}");
    // The audit rows carry the request ids the answers gave.
    for (id, status) in [(&folded_id, 400), (&huge_id, 431)] {
        assert!(
            events
                .iter()
                .any(|e| e["request_id"] == id.as_str() && e["status"] == status),
            "{id}: {text}"
        );
    }
    assert!(
        events
            .iter()
            .any(|e| e["request_id"] == id.as_str() && e["path"] == "/big"),
        "{text}"
    );
    assert_eq!(up.hits(), 0);
    if let Some(dir) = log.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The one answer in `out`, which must be the JSON error (`content-type`, a `date`, and a
/// `content-length` matching the body): the answer and its parsed body.
fn json_answer(out: &str) -> (RawAnswer, serde_json::Value) {
    let mut answers = raw_answers(out.as_bytes());
    assert_eq!(answers.len(), 1, "{out}");
    let a = answers.remove(0);
    let json = json_body(&a, out);
    (a, json)
}

/// The JSON error's body of `a` (`out`: what to show on failure).
fn json_body(a: &RawAnswer, out: &str) -> serde_json::Value {
    assert_eq!(a.header("content-type"), Some("application/json"), "{out}");
    assert_eq!(
        a.header("content-length"),
        Some(a.body.len().to_string().as_str()),
        "{out}"
    );
    assert!(a.header("date").is_some(), "{out}");
    serde_json::from_slice(&a.body).expect("a JSON body")
}

#[tokio::test(flavor = "multi_thread")]
async fn unparsable_requests_get_the_json_error_even_after_pipelined_ones() {
    let up = Upstream::start().await;
    let gw = gateway(&up, "").await;
    for (what, bad) in [
        (
            "header line without a colon",
            "GET /x HTTP/1.1\r\nHost: t\r\nNo colon here\r\n\r\n",
        ),
        ("request line", "GARBAGE\r\n\r\n"),
        ("bad version", "GET /x HTTP/9.9\r\nHost: t\r\n\r\n"),
        (
            "control byte in a value",
            "GET /x HTTP/1.1\r\nHost: t\r\nX-A: a\x01b\r\n\r\n",
        ),
    ] {
        // Alone.
        let out = raw(gw.port, bad.as_bytes(), Duration::from_secs(5)).await;
        let (a, body) = json_answer(&out);
        assert_eq!(a.status, 400, "{what}: {out}");
        assert_eq!(body["code"], "malformed_request", "{what}: {out}");
        assert_eq!(a.header("connection"), Some("close"), "{what}: {out}");
        assert_eq!(a.header("x-frame-options"), Some("DENY"), "{what}: {out}");
        assert!(a.header("server").is_none(), "{what}: {out}");
        // After two good requests in the same write: both answered in full first.
        let req =
            format!("GET /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n{bad}");
        let out = raw(gw.port, req.as_bytes(), Duration::from_secs(5)).await;
        let answers = raw_answers(out.as_bytes());
        assert_eq!(answers.len(), 3, "{what}: {out}");
        for good in &answers[..2] {
            assert_eq!(good.status, 200, "{what}: {out}");
            assert_eq!(good.body, b"hello", "{what}: {out}");
        }
        assert_eq!(answers[2].status, 400, "{what}: {out}");
        let body = json_body(&answers[2], &out);
        assert_eq!(body["code"], "malformed_request", "{what}: {out}");
    }
    assert_eq!(up.hits(), 8);
}

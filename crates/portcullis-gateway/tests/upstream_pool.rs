//! The upstream connections (per-core threading: each worker's own keep-alive pool;
//! work-stealing: hyper-util's shared one), against raw TCP upstreams that behave the way real ones do: closing idle keep-alive
//! connections at any moment, dropping a connection mid-exchange, counting connections.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the raw upstream does after answering a request.
#[derive(Clone, Copy, PartialEq)]
enum AfterAnswer {
    /// Keeps the connection for the next request.
    KeepAlive,
    /// Closes it at once, without `Connection: close`: the way an upstream whose keep-alive
    /// timeout just passed looks to a pool that reuses the connection.
    Close,
    /// Says `Connection: close`, then closes.
    SaysClose,
    /// Answers as HTTP/1.0 without keep-alive (old or minimal servers), then closes.
    Http10,
}

/// A raw HTTP/1.1 upstream on loopback, counting connections and requests.
struct RawUpstream {
    port: u16,
    connections: Arc<AtomicUsize>,
    /// Connections the gateway closed (read returned end of file).
    closed: Arc<AtomicUsize>,
    requests: Arc<std::sync::Mutex<Vec<String>>>,
}

impl RawUpstream {
    /// Answers every request with `200 ok`, except a request whose line contains `drop`: that
    /// one is read whole, then the connection is closed without an answer.
    async fn start(after: AfterAnswer) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, d, r) = (connections.clone(), closed.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let (d, r) = (d.clone(), r.clone());
                tokio::spawn(async move {
                    if serve(tcp, after, r).await {
                        d.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        RawUpstream {
            port,
            connections,
            closed,
            requests,
        }
    }

    fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn closed_by_the_gateway(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// Serves one connection; true when the gateway closed it.
async fn serve(
    mut tcp: TcpStream,
    after: AfterAnswer,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
) -> bool {
    let mut buf = Vec::new();
    loop {
        let Some(head) = read_request_head(&mut tcp, &mut buf).await else {
            return buf.is_empty();
        };
        let line = head.lines().next().unwrap_or_default().to_string();
        seen.lock().unwrap().push(head);
        if line.contains("drop") {
            return false;
        }
        let answer = match after {
            AfterAnswer::KeepAlive | AfterAnswer::Close => {
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"
            }
            AfterAnswer::SaysClose => {
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"
            }
            AfterAnswer::Http10 => "HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
        };
        if tcp.write_all(answer.as_bytes()).await.is_err() || after != AfterAnswer::KeepAlive {
            return false;
        }
    }
}

/// GET `path` through the gateway on the client's kept-alive connection.
async fn get_via(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        TestBody,
    >,
    gw: &Gateway,
    path: &str,
) -> Reply {
    send(
        client,
        http::Request::get(gw.url(path)).body(full("")).unwrap(),
    )
    .await
}

async fn gateway(up: &RawUpstream) -> Gateway {
    gateway_with(up, "per-core").await
}

async fn gateway_with(up: &RawUpstream, threading: &str) -> Gateway {
    let port = free_port();
    // One worker: every request shares one pool, so reuse is observable.
    let server = format!("workers = 1\nthreading = \"{threading}\"");
    Gateway::start(port, &config(port, up.addr(), &server, "")).await
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_connections_are_reused() {
    let up = RawUpstream::start(AfterAnswer::KeepAlive).await;
    let gw = gateway(&up).await;
    let client = client();
    for i in 0..20 {
        let r = get_via(&client, &gw, &format!("/n/{i}")).await;
        assert_eq!(r.status, StatusCode::OK, "{i}: {}", r.text());
        assert_eq!(r.text(), "ok");
    }
    assert_eq!(
        up.connections(),
        1,
        "20 requests in a row share one connection"
    );
    // Origin form, the client's Host.
    let requests = up.requests();
    assert!(
        requests[0].starts_with("GET /n/0 HTTP/1.1\r\n"),
        "{}",
        requests[0]
    );
    assert!(
        requests[0]
            .to_ascii_lowercase()
            .contains(&format!("\r\nhost: 127.0.0.1:{}\r\n", gw.port)),
        "{}",
        requests[0]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_the_upstream_closed_is_replaced_not_a_502() {
    for threading in ["per-core", "work-stealing"] {
        for after in [
            AfterAnswer::Close,
            AfterAnswer::SaysClose,
            AfterAnswer::Http10,
        ] {
            one_request_per_connection(after, threading).await;
        }
    }
}

/// An upstream that closes every connection after one answer, however it says so.
async fn one_request_per_connection(after: AfterAnswer, threading: &str) {
    let up = RawUpstream::start(after).await;
    let gw = gateway_with(&up, threading).await;
    let client = client();
    // Back to back: the pool often takes the connection before it has seen the close, so
    // the request is refused unsent and goes out again on a new connection.
    for i in 0..60 {
        let r = get_via(&client, &gw, &format!("/n/{i}")).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{threading}, request {i}: {}",
            r.text()
        );
        if i % 20 == 19 {
            // And after a pause, with the close long seen.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let requests = up.requests();
    assert_eq!(requests.len(), 60, "each request reached the upstream once");
    assert_eq!(up.connections(), 60);
    assert!(
        !gw.logs().contains("upstream request failed"),
        "{}",
        gw.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_that_reached_the_upstream_is_never_sent_twice() {
    for threading in ["per-core", "work-stealing"] {
        a_post_is_sent_once(threading).await;
    }
}

async fn a_post_is_sent_once(threading: &str) {
    let up = RawUpstream::start(AfterAnswer::KeepAlive).await;
    let gw = gateway_with(&up, threading).await;
    let client = client();
    let first = get_via(&client, &gw, "/warm").await;
    assert_eq!(first.status, StatusCode::OK);
    // On the pooled connection, the upstream reads the request and hangs up unanswered.
    let r = send(
        &client,
        http::Request::post(gw.url("/drop/1"))
            .body(full(""))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert_eq!(r.json()["code"], "upstream_unavailable");
    let drops = up
        .requests()
        .iter()
        .filter(|h| h.starts_with("POST /drop/1 "))
        .count();
    assert_eq!(
        drops,
        1,
        "{threading}: the POST must not be repeated: {:?}",
        up.requests()
    );
    // The broken connection is not reused; the next request gets a new one.
    let after = get_via(&client, &gw, "/after").await;
    assert_eq!(after.status, StatusCode::OK, "{}", after.text());
    assert_eq!(up.connections(), 2, "{threading}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_that_came_before_the_request_body_ended_does_not_lend_its_connection() {
    // The upstream answers at once, without reading the body (an application refusing an
    // upload early, or answering before it reads). The first client's body then stalls: its
    // connection is still busy sending it, and must not be handed to the next request,
    // which would wait behind the stalled body until upstream_timeout (504).
    let up = RawUpstream::start(AfterAnswer::KeepAlive).await;
    let port = free_port();
    let server = "workers = 1\nthreading = \"per-core\"\nupstream_timeout = \"1s\"\nrequest_timeout = \"20s\"";
    let gw = Gateway::start(port, &config(port, up.addr(), server, "")).await;
    let post = |path: &str, length: usize, body: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nSec-Fetch-Site: same-origin\r\nContent-Length: {length}\r\n\r\n{body}"
        )
    };
    let mut stalled = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    stalled
        .write_all(post("/early/1", 1000, "0123456789").as_bytes())
        .await
        .unwrap();
    let first = read_response(&mut stalled).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");

    let mut next = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    next.write_all(post("/early/2", 2, "hi").as_bytes())
        .await
        .unwrap();
    let second = read_response(&mut next).await;
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert_eq!(up.connections(), 2, "the busy connection was not reused");
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_response_the_client_abandoned_does_not_poison_the_pool() {
    // An upstream whose body the client never reads to its end: that connection cannot be
    // reused (its rest is still on the wire), and must not be.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let c = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(head) = read_request_head(&mut tcp, &mut buf).await {
                    if head.contains("/big") {
                        // Announces 1 MiB, sends 1 KiB, then waits.
                        let announced = "HTTP/1.1 200 OK\r\ncontent-length: 1048576\r\n\r\n";
                        let _ = tcp.write_all(announced.as_bytes()).await;
                        let _ = tcp.write_all(&[b'x'; 1024]).await;
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    }
                    let answer = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if tcp.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let port = free_port();
    let gw = Gateway::start(port, &config(port, up_addr, "workers = 1", "")).await;

    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut b = [0u8; 512];
    let n = tcp.read(&mut b).await.unwrap();
    assert!(String::from_utf8_lossy(&b[..n]).starts_with("HTTP/1.1 200"));
    drop(tcp);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let client = client();
    for i in 0..5 {
        let r = get_via(&client, &gw, &format!("/small/{i}")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.text(), "ok");
    }
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http_1_0_request_without_host_gets_the_upstream_s_name() {
    let up = RawUpstream::start(AfterAnswer::KeepAlive).await;
    let gw = gateway(&up).await;
    let out = raw(
        gw.port,
        b"GET /old HTTP/1.0\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"),
        "{out}"
    );
    let head = up
        .requests()
        .pop()
        .expect("the request reached the upstream");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("\r\nhost: 127.0.0.1:{}\r\n", up.port)),
        "{head}"
    );
}

/// Idle connections to the upstream close once `upstream_idle_timeout` passes, with no
/// request to notice it: in both threading models.
#[tokio::test(flavor = "multi_thread")]
async fn idle_upstream_connections_close_after_the_idle_timeout() {
    for threading in ["per-core", "work-stealing"] {
        let up = RawUpstream::start(AfterAnswer::KeepAlive).await;
        let port = free_port();
        let extra =
            format!("workers = 1\nthreading = \"{threading}\"\nupstream_idle_timeout = \"1s\"");
        let gw = Gateway::start(port, &config(port, up.addr(), &extra, "")).await;
        let client = client();
        let r = get_via(&client, &gw, "/a").await;
        assert_eq!(r.status, StatusCode::OK);
        // Reused while it is fresh.
        let r = get_via(&client, &gw, "/b").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(up.connections(), 1, "{threading}");
        assert_eq!(up.closed_by_the_gateway(), 0, "{threading}");
        // Closed by the gateway, unprompted, within a few timeouts.
        let deadline = std::time::Instant::now() + Duration::from_secs(8);
        while up.closed_by_the_gateway() == 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            up.closed_by_the_gateway(),
            1,
            "{threading}: the idle connection was not closed"
        );
        // The next request opens a new one.
        let r = get_via(&client, &gw, "/c").await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(up.connections(), 2, "{threading}");
    }
}

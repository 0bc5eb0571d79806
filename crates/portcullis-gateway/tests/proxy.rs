//! The reverse proxy, end to end: the `portcullis` binary between a test client and a real
//! upstream server.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use portcullis::auth::{AuthMethod, AuthOutcome, Authenticator, BoxFuture, Principal};
use portcullis::client_ip::PeerAddr;
use portcullis_gateway::config::GatewayConfig;
use portcullis_gateway::proxy::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::{Layer, ServiceExt};

async fn gateway(up: &Upstream, server_extra: &str, routes: &str) -> Gateway {
    let port = free_port();
    Gateway::start(port, &config(port, up.addr, server_extra, routes)).await
}

/// A gateway in front of `upstream` with `tables` (routes, `[storage]`, `[ban]` …) and its
/// admin listener on a free port, once that listens: the gateway and the admin base URL.
async fn admin_gateway(upstream: std::net::SocketAddr, tables: &str) -> (Gateway, String) {
    let admin = free_port();
    let port = free_port();
    let extra = format!("admin_listen = \"127.0.0.1:{admin}\"");
    let gw = Gateway::start(port, &config(port, upstream, &extra, tables)).await;
    assert!(
        gw.wait_log("admin listening on", Duration::from_secs(2))
            .await
    );
    (gw, format!("http://127.0.0.1:{admin}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn get_is_forwarded_with_security_headers_and_without_banners() {
    let up = Upstream::start().await;
    let gw = gateway(&up, "", "").await;
    let r = get(
        &gw.url("/api//x/./y?q=1"),
        &[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=6.6.6.6"),
            ("x-portcullis-user", "admin"),
            ("x-portcullis-roles", "admin"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "hello");
    assert_eq!(r.headers["x-content-type-options"], "nosniff");
    assert_eq!(r.headers["x-frame-options"], "DENY");
    assert!(r.headers.contains_key("content-security-policy"));
    assert!(r.headers.contains_key("x-request-id"));
    assert!(!r.headers.contains_key("server"), "{:?}", r.headers);
    assert!(!r.headers.contains_key("x-powered-by"));

    let seen = up.last();
    assert_eq!(seen.uri, "/api/x/y?q=1");
    let h = &seen.headers;
    let host = format!("127.0.0.1:{}", gw.port);
    assert_eq!(h["host"], host.as_str());
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], host.as_str());
    assert_eq!(
        h["forwarded"],
        format!("for=127.0.0.1;proto=http;host=\"{host}\"").as_str()
    );
    assert!(!h.contains_key("x-portcullis-user"));
    assert!(!h.contains_key("x-portcullis-roles"));
    assert!(
        !h.contains_key("x-hop"),
        "Connection-named headers are hop-by-hop"
    );
    assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
}

/// Behind a trusted proxy that sends `X-Forwarded-*` but no `Forwarded`, the `Forwarded`
/// field begins with the client's element as that proxy saw it — the client the gateway
/// resolved (never a value the client wrote further left), the proxy's scheme and host — so
/// an application reading `Forwarded` agrees with one reading `X-Forwarded-*`. The bodiless
/// path (the gateway's own head writer) and hyper's client path write the same.
#[tokio::test(flavor = "multi_thread")]
async fn behind_a_trusted_proxy_forwarded_names_the_client_its_proxy_saw() {
    let up = Upstream::start().await;
    let gw = gateway(&up, "trusted_proxies = [\"127.0.0.1\"]", "").await;
    let host = format!("127.0.0.1:{}", gw.port);
    let ours = format!("for=127.0.0.1;proto=http;host=\"{host}\"");
    let client = client();
    let up = &up;
    for method in [Method::GET, Method::POST] {
        let send = |fields: &[(&str, &str)]| {
            let mut req = Request::builder()
                .method(method.clone())
                .uri(gw.url("/api/x"))
                .header("sec-fetch-site", "same-origin");
            for (k, v) in fields {
                req = req.header(*k, *v);
            }
            // A bodiless GET takes the gateway's own path, a POST with a body hyper's.
            let body = if method == Method::GET { "" } else { "x" };
            let req = req.body(full(body)).unwrap();
            let client = client.clone();
            async move {
                let res = client.request(req).await.unwrap();
                assert_eq!(res.status(), StatusCode::OK);
                up.last().headers
            }
        };
        let h = send(&[
            ("x-forwarded-for", "6.6.6.6, 203.0.113.7"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "www.example.com"),
        ])
        .await;
        assert_eq!(h["x-portcullis-client-ip"], "203.0.113.7", "{method}");
        assert_eq!(h["x-forwarded-for"], "6.6.6.6, 203.0.113.7, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(
            h["forwarded"],
            format!("for=203.0.113.7;proto=https;host=www.example.com, {ours}").as_str(),
            "{method}"
        );
        // An IPv6 client, and a proxy that names no scheme or host.
        let h = send(&[("x-forwarded-for", "2001:db8::7")]).await;
        assert_eq!(
            h["forwarded"],
            format!("for=\"[2001:db8::7]\", {ours}").as_str(),
            "{method}"
        );
        // A trusted proxy's own `Forwarded` goes on as it came, our hop after it.
        let h = send(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("forwarded", "for=203.0.113.7;proto=https"),
        ])
        .await;
        assert_eq!(
            h["forwarded"],
            format!("for=203.0.113.7;proto=https, {ours}").as_str(),
            "{method}"
        );
        // Without `X-Forwarded-For`, our hop alone.
        assert_eq!(send(&[]).await["forwarded"], ours.as_str(), "{method}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn large_bodies_stream_both_ways_in_bounded_memory() {
    const SIZE: u64 = 50 * 1024 * 1024;
    let up = Upstream::start().await;
    let gw = gateway(
        &up,
        "",
        "[[route]]\npath = \"/upload/**\"\nmax_body = \"100MiB\"\nrate_limit = false\n",
    )
    .await;
    let client = client();

    // Up: 50 MiB to an upstream that echoes it back while it arrives.
    let req = Request::post(gw.url("/upload/file"))
        .header("content-type", "application/octet-stream")
        .body(Pattern::new(SIZE).boxed())
        .unwrap();
    let res = client.request(req).await.expect("the upload is answered");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(check_pattern(res.into_body()).await, SIZE);

    // Down: 50 MiB streamed from the upstream.
    let req = Request::get(gw.url(&format!("/big/{SIZE}")))
        .body(full(""))
        .unwrap();
    let res = client.request(req).await.expect("the download is answered");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-length"], SIZE.to_string().as_str());
    assert_eq!(check_pattern(res.into_body()).await, SIZE);

    let peak = gw.peak_rss_kib();
    eprintln!("gateway peak RSS: {peak} KiB");
    assert!(
        peak < 100 * 1024,
        "the gateway peaked at {peak} KiB moving 100 MiB"
    );
}

/// A WebSocket opened through the gateway on `port`, once the 101 has arrived.
async fn open_websocket(port: u16) -> TcpStream {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        tcp.read_exact(&mut b).await.expect("a response head");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: dghlihnhbxbszsbub25jzq=="),
        "{head}"
    );
    tcp
}

/// Sends `msg` as a masked binary frame and expects the upstream's echo.
async fn echo(tcp: &mut TcpStream, msg: &[u8]) {
    tcp.write_all(&ws_frame(0x2, msg, Some([1, 2, 3, 4])))
        .await
        .unwrap();
    let expected = ws_frame(0x2, msg, None);
    let mut got = vec![0u8; expected.len()];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut got))
        .await
        .expect("the echo arrives")
        .unwrap();
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn websocket_frames_are_echoed_through_the_tunnel() {
    let up = Upstream::start().await;
    let gw = gateway(&up, "", "").await;
    let mut tcp = open_websocket(gw.port).await;
    for msg in [&b"hello"[..], &[7u8; 300][..]] {
        echo(&mut tcp, msg).await;
    }
}

/// A tunnel that carries bytes stays open past `tunnel_idle_timeout`; one silent both ways
/// for that long is closed, so idle sockets cannot hold connection slots forever.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_websocket_tunnel_is_closed_after_tunnel_idle_timeout() {
    let up = Upstream::start().await;
    let gw = gateway(&up, "tunnel_idle_timeout = \"1s\"", "").await;
    let mut tcp = open_websocket(gw.port).await;
    // Busy for 2.5 s, a frame every 400 ms: never idle for a whole second.
    let busy = std::time::Instant::now();
    let quiet = loop {
        echo(&mut tcp, b"ping").await;
        let last = std::time::Instant::now();
        if busy.elapsed() > Duration::from_millis(2500) {
            break last;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    };
    // Then silent: closed about a second after the last byte.
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut b))
        .await
        .expect("the gateway closes the idle tunnel")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed, not a byte");
    let waited = quiet.elapsed();
    assert!(
        (Duration::from_millis(800)..Duration::from_millis(2500)).contains(&waited),
        "closed after {waited:?}"
    );
    assert!(
        gw.wait_log("upgraded connection idle", Duration::from_secs(2))
            .await,
        "{}",
        gw.logs()
    );
}

/// A handshake from a page of another site (its `Origin`) is refused with the CSRF 403
/// before the upstream sees it: the tunnel would carry the user's cookies both ways
/// (cross-site WebSocket hijacking). The same origin's handshake opens the tunnel.
#[tokio::test(flavor = "multi_thread")]
async fn a_cross_site_websocket_handshake_is_refused() {
    let up = Upstream::start().await;
    let gw = gateway(&up, "", "").await;
    let handshake = |origin: &str| {
        format!(
            "GET /ws HTTP/1.1\r\nHost: localhost:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Origin: {origin}\r\nCookie: session=s3cr3t\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            gw.port
        )
    };
    let out = raw(
        gw.port,
        handshake("https://evil.example").as_bytes(),
        Duration::from_secs(3),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert!(out.contains("csrf_origin_mismatch"), "{out}");
    assert_eq!(up.hits(), 0);
    let same = format!("http://localhost:{}", gw.port);
    let out = raw(gw.port, handshake(&same).as_bytes(), Duration::from_secs(2)).await;
    assert!(out.starts_with("HTTP/1.1 101"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_credentials_and_the_httpoxy_header_never_reach_the_upstream() {
    let up = Upstream::start().await;
    let gw = gateway(&up, "", "").await;
    // A bodiless GET (the gateway's own HTTP/1.1 path) and a POST with a body (hyper's).
    for (what, request) in [
        (
            "GET",
            "GET /x HTTP/1.1\r\nHost: localhost\r\nProxy: http://evil.example:8080\r\n\
             Proxy-Authorization: Basic dXNlcjpwYXNz\r\n\r\n",
        ),
        (
            "POST",
            "POST /consume HTTP/1.1\r\nHost: localhost\r\nProxy: http://evil.example:8080\r\n\
             Proxy-Authorization: Basic dXNlcjpwYXNz\r\nContent-Type: text/plain\r\n\
             Content-Length: 2\r\nSec-Fetch-Site: same-origin\r\n\r\nhi",
        ),
    ] {
        let mut tcp = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        let out = read_response(&mut tcp).await;
        assert!(out.starts_with("HTTP/1.1 200"), "{what}: {out}");
        let seen = up.last();
        for name in ["proxy", "proxy-authorization"] {
            assert!(
                seen.headers.get(name).is_none(),
                "{what}: {name} reached the upstream: {:?}",
                seen.headers
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_content_type_named_by_connection_still_reaches_the_upstream() {
    // The layer judged the body by its Content-Type (a JSON body is not scanned for a form's
    // `_method`); without it, Rack and Rails would read the same bytes as a form and honour
    // `_method=DELETE` on a route that allows no DELETE.
    let up = Upstream::start().await;
    let routes =
        "[[route]]\npath = \"/consume/**\"\nmethods = [\"GET\", \"POST\"]\nrate_limit = false\n";
    let gw = gateway(&up, "", routes).await;
    for (what, request) in [
        (
            "POST",
            "POST /consume/x HTTP/1.1\r\nHost: localhost\r\nConnection: Content-Type\r\n\
             Content-Type: application/json\r\nContent-Length: 14\r\n\
             Sec-Fetch-Site: same-origin\r\n\r\n_method=DELETE",
        ),
        (
            "GET",
            "GET /consume/y HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive, content-type\r\n\
             Content-Type: application/json\r\n\r\n",
        ),
    ] {
        let mut tcp = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        let out = read_response(&mut tcp).await;
        assert!(out.starts_with("HTTP/1.1 200"), "{what}: {out}");
        let seen = up.last();
        assert_eq!(
            seen.headers.get("content-type").map(|v| v.as_bytes()),
            Some(&b"application/json"[..]),
            "{what}: {:?}",
            seen.headers
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_h2c_upgrade_is_never_tunnelled_to_the_upstream() {
    // h2c smuggling: an upstream that switched to HTTP/2 over the tunnel would take every
    // later request on it straight from the client, past the layer. The test upstream
    // answers 101 to anything at /ws, as such an upstream would.
    let up = Upstream::start().await;
    let gw = gateway(&up, "", "").await;
    for (what, request) in [
        (
            "bodiless GET",
            "GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\n\
             Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        ),
        (
            "POST with a body",
            "POST /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\
             HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nContent-Type: text/plain\r\n\
             Content-Length: 2\r\nSec-Fetch-Site: same-origin\r\n\r\nhi",
        ),
        (
            "websocket beside h2c",
            "GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\n\
             Upgrade: websocket, h2c\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n",
        ),
    ] {
        let hits = up.hits();
        let mut tcp = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut b))
                .await
                .expect("an answer in time")
                .expect("an answer head");
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(
            !head.starts_with("HTTP/1.1 101"),
            "{what}: switched protocols: {head}"
        );
        assert_eq!(up.hits(), hits + 1, "{what}: reached the upstream once");
        let seen = up.last();
        assert!(
            seen.headers.get("upgrade").is_none(),
            "{what}: the upstream was asked to upgrade: {:?}",
            seen.headers
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_upstream_is_502_json() {
    let port = free_port();
    let dead: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gw = Gateway::start(port, &config(port, dead, "", "")).await;
    let r = get(&gw.url("/x"), &[]).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(r.headers["content-type"], "application/json");
    let j = r.json();
    assert_eq!(j["code"], "upstream_unavailable");
    assert_eq!(j["error"], "Upstream unavailable");
    assert_eq!(j["request_id"], r.headers["x-request-id"].to_str().unwrap());
    assert!(
        !r.text().contains("refused"),
        "no internal detail: {}",
        r.text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_upstream_is_504_json() {
    let up = Upstream::start().await;
    let gw = gateway(&up, "upstream_timeout = \"300ms\"", "").await;
    let started = std::time::Instant::now();
    let r = get(&gw.url("/slow/3000"), &[]).await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.json()["code"], "upstream_timeout");
    assert!(started.elapsed() < Duration::from_secs(2));
    // A fast request on the same gateway is unaffected.
    assert_eq!(get(&gw.url("/slow/10"), &[]).await.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn layer_rejections_never_reach_the_upstream() {
    let up = Upstream::start().await;
    let gw = gateway(&up, "", "").await;
    let client = client();
    let r = send(
        &client,
        Request::delete(gw.url("/api/x")).body(full("")).unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.json()["code"], "method_not_allowed");
    for path in ["/api/a%2fb", "/api/../../etc/passwd", "/api/%252e%252e/x"] {
        let r = get(&gw.url(path), &[]).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(r.json()["code"], "invalid_path", "{path}");
    }
    assert_eq!(up.hits(), 0, "{:?}", up.seen.lock().unwrap());
    assert_eq!(get(&gw.url("/api/x"), &[]).await.status, StatusCode::OK);
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_prior_knowledge_clients_are_served() {
    let up = Upstream::start().await;
    let gw = gateway(&up, "", "").await;
    let h2 = h2_client();
    let res = h2
        .request(
            Request::get(gw.url("/api/h2"))
                .header("cookie", "a=1")
                .header("cookie", "b=2")
                .body(full(""))
                .unwrap(),
        )
        .await
        .expect("the h2 request is answered");
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().contains_key("x-content-type-options"));
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hello");
    let seen = up.last();
    assert_eq!(seen.uri, "/api/h2");
    let host = format!("127.0.0.1:{}", gw.port);
    assert_eq!(seen.headers["host"], host.as_str());
    assert_eq!(seen.headers["cookie"], "a=1; b=2");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
}

/// Authenticates whoever names themselves in `x-demo-user` (a test stand-in for JWT).
struct DemoAuth;

impl Authenticator for DemoAuth {
    fn authenticate<'a>(&'a self, parts: &'a http::request::Parts) -> BoxFuture<'a, AuthOutcome> {
        Box::pin(async move {
            match parts
                .headers
                .get("x-demo-user")
                .and_then(|v| v.to_str().ok())
            {
                Some(user) => AuthOutcome::Authenticated(Principal::new(
                    user,
                    ["user", "editor"],
                    AuthMethod::Custom,
                )),
                None => AuthOutcome::NoCredentials,
            }
        })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_principal_reaches_the_upstream_as_identity_headers() {
    let up = Upstream::start().await;
    let text = format!("[server]\nupstream = \"http://{}\"\n", up.addr);
    let config = GatewayConfig::from_str(&text, "inline.toml").unwrap();
    let proxy = Proxy::new(&config.server).unwrap();
    let layer = portcullis::SecurityLayer::builder()
        .authenticator(Arc::new(DemoAuth))
        .no_rate_limiter()
        .build()
        .unwrap();
    let service = layer.layer(proxy);
    let mut req = Request::get("/api/me")
        .header("host", "app.example")
        .header("x-demo-user", "alice")
        .header("x-portcullis-user", "mallory")
        .body(Full::new(Bytes::new()))
        .unwrap();
    req.extensions_mut()
        .insert(PeerAddr("[::1]:4444".parse().unwrap()));
    let res = service.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let h = up.last().headers;
    assert_eq!(h["x-portcullis-user"], "alice");
    assert_eq!(h["x-portcullis-roles"], "user,editor");
    assert_eq!(h["x-forwarded-for"], "::1");
    assert_eq!(h["forwarded"], "for=\"[::1]\";proto=http;host=app.example");
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_listener_answers_health_and_readiness() {
    let up = Upstream::start().await;
    let (_gw, base) = admin_gateway(up.addr, "").await;
    let r = get(&format!("{base}/healthz"), &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), r#"{"status":"ok"}"#);
    let r = get(&format!("{base}/readyz"), &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["upstream"], "ok");
    assert_eq!(r.json()["rate_limit_store"], "ok");
    assert_eq!(r.json()["audit_store"], "ok");

    // With the upstream gone, the gateway is alive but not ready.
    let dead: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let (_gw, base) = admin_gateway(dead, "").await;
    assert_eq!(
        get(&format!("{base}/healthz"), &[]).await.status,
        StatusCode::OK
    );
    let r = get(&format!("{base}/readyz"), &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["status"], "unavailable");
}

/// With `upstream_kind = "nextjs"`, a page's data request (`/_next/data/<id>/<page>.json`)
/// is judged by the page's route (here one that allows only POST): the build id is in every
/// page, so a guard on the page alone would leave its server-side props open. A generic
/// upstream keeps the data path's own route.
#[tokio::test(flavor = "multi_thread")]
async fn nextjs_data_requests_are_judged_by_their_pages_route() {
    let up = Upstream::start().await;
    let routes = "[[route]]\npath = \"/dashboard/**\"\nmethods = [\"POST\"]\n";
    let next = gateway(&up, "upstream_kind = \"nextjs\"", routes).await;
    let generic = gateway(&up, "", routes).await;
    let data = "/_next/data/Xk2_9/dashboard/billing.json";
    assert_eq!(get(&next.url("/dashboard/billing"), &[]).await.status, 405);
    let r = get(&next.url(data), &[]).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.json()["code"], "method_not_allowed");
    assert_eq!(get(&generic.url(data), &[]).await.status, StatusCode::OK);
    assert_eq!(up.hits(), 1);
}

/// `/metrics` counts what the controls decided, in the Prometheus text format: the rate
/// limit's allowed and refused requests, the bans in force, and the audit events by action.
#[tokio::test(flavor = "multi_thread")]
async fn admin_metrics_count_refusals_bans_and_audit_events() {
    let up = Upstream::start().await;
    let log = temp_dir().join("audit.jsonl");
    let tables = format!(
        "[[route]]\npath = \"/limited/**\"\nrate_limit = {{ requests = 2, window = \"1m\" }}\n\
         [storage]\naudit = \"jsonl://{}\"\n[ban]\noffences = 2\nwithin = \"10m\"\nban_for = \"15m\"\n",
        log.display()
    );
    let (gw, admin) = admin_gateway(up.addr, &tables).await;
    let metrics_url = format!("{admin}/metrics");
    let r = get(&metrics_url, &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let before = r.text();
    assert!(
        before.contains("# TYPE portcullis_rate_limit_requests_total counter\n"),
        "{before}"
    );
    assert!(
        before.contains("\nportcullis_rate_limit_requests_total{decision=\"allowed\"} 0\n"),
        "{before}"
    );
    assert!(before.contains("\nportcullis_bans_active 0\n"), "{before}");
    assert!(
        !before.contains("portcullis_audit_events_total{"),
        "{before}"
    );

    // Two allowed, two refused (the second refusal is the second offence: a ban), then
    // refused as banned.
    let statuses = [
        get(&gw.url("/limited/a"), &[]).await.status,
        get(&gw.url("/limited/a"), &[]).await.status,
        get(&gw.url("/limited/a"), &[]).await.status,
        get(&gw.url("/limited/a"), &[]).await.status,
        get(&gw.url("/elsewhere"), &[]).await.status,
    ];
    assert_eq!(statuses.map(|s| s.as_u16()), [200, 200, 429, 429, 403]);

    let after = get(&metrics_url, &[]).await.text();
    for line in [
        "portcullis_rate_limit_requests_total{decision=\"allowed\"} 2",
        "portcullis_rate_limit_requests_total{decision=\"limited\"} 2",
        "portcullis_store_errors_total{user=\"rate_limit\"} 0",
        "portcullis_bans_active 1",
        "portcullis_audit_events_total{action=\"rate_limit_exceeded\",outcome=\"denied\"} 2",
        "portcullis_audit_spool_pending 0",
    ] {
        assert!(after.lines().any(|l| l == line), "no {line:?} in\n{after}");
    }
    // The ban's start and the refused request: both audited as `banned`.
    let banned = after
        .lines()
        .find_map(|l| {
            l.strip_prefix("portcullis_audit_events_total{action=\"banned\",outcome=\"denied\"} ")
        })
        .and_then(|n| n.parse::<u64>().ok());
    assert!(banned.is_some_and(|n| n >= 1), "{after}");
    let enqueued = after
        .lines()
        .find_map(|l| l.strip_prefix("portcullis_audit_pipeline_events_total{stage=\"enqueued\"} "))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(enqueued.is_some_and(|n| n >= 3), "{after}");
    // Every sample line belongs to a family declared above it.
    for l in after.lines().filter(|l| !l.starts_with('#')) {
        let name = l.split(['{', ' ']).next().unwrap();
        assert!(after.contains(&format!("# TYPE {name} ")), "{l}");
    }
}

/// The ban on the test client, listed and lifted through the admin listener; other sites'
/// pages and DNS-rebound host names are refused, and a lifted client's offences start over.
#[tokio::test(flavor = "multi_thread")]
async fn admin_lists_and_lifts_bans() {
    let up = Upstream::start().await;
    let tables = "[[route]]\npath = \"/limited/**\"\nrate_limit = { requests = 1, window = \"1m\" }\n\
                  [ban]\noffences = 2\nwithin = \"10m\"\nban_for = \"15m\"\n";
    let (gw, admin) = admin_gateway(up.addr, tables).await;
    let bans_url = format!("{admin}/bans");
    assert_eq!(
        get(&bans_url, &[]).await.json()["bans"],
        serde_json::json!([])
    );
    let statuses = [
        get(&gw.url("/limited/a"), &[]).await.status,
        get(&gw.url("/limited/a"), &[]).await.status,
        get(&gw.url("/limited/a"), &[]).await.status,
        get(&gw.url("/elsewhere"), &[]).await.status,
    ];
    assert_eq!(statuses.map(|s| s.as_u16()), [200, 429, 429, 403]);
    let listed = get(&bans_url, &[]).await.json();
    assert_eq!(listed["bans"][0]["client"], "127.0.0.1", "{listed}");
    let left = listed["bans"][0]["seconds_left"].as_u64().unwrap();
    assert!((890..=900).contains(&left), "{listed}");

    let hc = client();
    let delete = |query: &str, headers: &[(&str, &str)]| {
        let mut req = http::Request::delete(format!("{bans_url}{query}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        send(&hc, req.body(full("")).unwrap())
    };
    // Another site's page, or one reaching this port through a rebound DNS name: refused.
    let r = delete("?client=127.0.0.1", &[("origin", "https://evil.example")]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = delete("?client=127.0.0.1", &[("sec-fetch-site", "cross-site")]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = delete(
        "?client=127.0.0.1",
        &[("host", "rebound.evil.example:9901")],
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(get(&gw.url("/elsewhere"), &[]).await.status, 403);
    // Malformed: 400.
    assert_eq!(
        delete("?client=nope", &[]).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(delete("", &[]).await.status, StatusCode::BAD_REQUEST);

    let r = delete("?client=127.0.0.1", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["was_banned"], true);
    assert_eq!(
        get(&bans_url, &[]).await.json()["bans"],
        serde_json::json!([])
    );
    assert_eq!(get(&gw.url("/elsewhere"), &[]).await.status, 200);
    // Its offences were forgotten: one more refusal is not a ban yet.
    assert_eq!(get(&gw.url("/limited/a"), &[]).await.status, 429);
    assert_eq!(get(&gw.url("/elsewhere"), &[]).await.status, 200);
    let r = delete("?client=127.0.0.1", &[]).await;
    assert_eq!(r.json()["was_banned"], false);
    // The address is read percent-decoded; an IPv6 client is its /64.
    let r = delete("?client=2001%3Adb8%3A%3A7", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.json()["client"], "2001:db8::/64");
}

/// `/readyz` polled until its body is `want` (Redis reconnects in the background), or the
/// last answer after `within`.
async fn readyz_until(base: &str, want: &str, within: Duration) -> Reply {
    let deadline = std::time::Instant::now() + within;
    loop {
        let r = get(&format!("{base}/readyz"), &[]).await;
        if r.text() == want || std::time::Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The original ask: `/readyz` means "upstream and stores reachable". With Redis down and
/// `on_store_error = "closed"` every rate-limited request gets 503, so readiness is 503 too,
/// naming the store; when Redis is back, so is readiness.
#[tokio::test(flavor = "multi_thread")]
async fn readyz_reports_a_redis_outage_as_unavailable_when_failing_closed() {
    let up = Upstream::start().await;
    let mut redis = services::RedisServer::start();
    let storage = format!(
        "[storage]
rate_limit = \"{}\"\non_store_error = \"closed\"\n\
         [[route]]\npath = \"/limited/**\"\nrate_limit = \"1000/1m\"\n",
        redis.url()
    );
    let (gw, base) = admin_gateway(up.addr, &storage).await;
    let all_ok = r#"{"status":"ok","upstream":"ok","rate_limit_store":"ok","audit_store":"ok"}"#;
    let r = readyz_until(&base, all_ok, Duration::from_secs(3)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text(), all_ok);
    assert_eq!(get(&gw.url("/limited/x"), &[]).await.status, StatusCode::OK);

    redis.kill();
    let down = r#"{"status":"unavailable","upstream":"ok","rate_limit_store":"unreachable","audit_store":"ok"}"#;
    let r = readyz_until(&base, down, Duration::from_secs(3)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(r.text(), down);
    // What readiness says is what traffic gets.
    assert_eq!(
        get(&gw.url("/limited/x"), &[]).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    redis.restart();
    let r = readyz_until(&base, all_ok, Duration::from_secs(10)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
}

/// With `on_store_error = "open"` a Redis outage lets requests through unlimited: the
/// gateway still serves, so readiness stays 200 and names the store for alerting.
#[tokio::test(flavor = "multi_thread")]
async fn readyz_names_a_redis_outage_but_stays_ready_when_failing_open() {
    let up = Upstream::start().await;
    let mut redis = services::RedisServer::start();
    let storage = format!(
        "[storage]
rate_limit = \"{}\"\non_store_error = \"open\"\naudit = \"stdout\"\n\
         [[route]]\npath = \"/limited/**\"\nrate_limit = \"1000/1m\"\n",
        redis.url()
    );
    let (gw, base) = admin_gateway(up.addr, &storage).await;
    let all_ok = r#"{"status":"ok","upstream":"ok","rate_limit_store":"ok","audit_store":"ok"}"#;
    assert_eq!(
        readyz_until(&base, all_ok, Duration::from_secs(3))
            .await
            .text(),
        all_ok
    );
    redis.kill();
    let open =
        r#"{"status":"ok","upstream":"ok","rate_limit_store":"unreachable","audit_store":"ok"}"#;
    let r = readyz_until(&base, open, Duration::from_secs(3)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text(), open);
    assert_eq!(get(&gw.url("/limited/x"), &[]).await.status, StatusCode::OK);
}

/// A PostgreSQL audit store that stops answering is named (`SELECT 1` on the writer's
/// connection fails), but the gateway stays ready: events wait in the spool, no request is
/// refused. When the database is back, so is `"ok"`.
#[tokio::test(flavor = "multi_thread")]
async fn readyz_names_a_postgres_audit_outage_without_turning_unready() {
    let up = Upstream::start().await;
    let mut pg = services::PostgresServer::start();
    let storage = format!("[storage]\naudit = \"{}\"\n", pg.url());
    let (_gw, base) = admin_gateway(up.addr, &storage).await;
    let all_ok = r#"{"status":"ok","upstream":"ok","rate_limit_store":"ok","audit_store":"ok"}"#;
    let r = readyz_until(&base, all_ok, Duration::from_secs(5)).await;
    assert_eq!(r.text(), all_ok);

    pg.stop_immediate();
    let down =
        r#"{"status":"ok","upstream":"ok","rate_limit_store":"ok","audit_store":"unreachable"}"#;
    let r = readyz_until(&base, down, Duration::from_secs(5)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text(), down);

    pg.restart();
    let r = readyz_until(&base, all_ok, Duration::from_secs(10)).await;
    assert_eq!(r.text(), all_ok);
}

/// A body without a length on a GET (or HEAD) reaches the upstream, and the body limit holds
/// for it: hyper's client would send such a request bodiless, dropping the body unread and
/// unlimited, unless the gateway says `Transfer-Encoding: chunked`.
#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_get_body_reaches_the_upstream_and_is_limited() {
    let up = Upstream::start().await;
    let gw = gateway(
        &up,
        "",
        "[[route]]\npath = \"/echo/**\"\nmax_body = \"1KiB\"\nrate_limit = false\n",
    )
    .await;
    let send = |body: String| {
        let port = gw.port;
        async move {
            let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let req = format!(
                "GET /echo/search HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
                 Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                body.len()
            );
            tcp.write_all(req.as_bytes()).await.unwrap();
            let (out, _) = read_until_closed(&mut tcp, Duration::from_secs(3)).await;
            String::from_utf8_lossy(&out).into_owned()
        }
    };
    let query = r#"{"query":{"match":{"title":"gateway"}}}"#;
    let out = send(query.to_string()).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains(query), "the upstream echoes the body: {out}");
    let out = send("x".repeat(4096)).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(out.contains("\"code\":\"body_too_large\""), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_body_over_max_body_is_cut_with_413() {
    let up = Upstream::start().await;
    let gw = gateway(
        &up,
        "",
        "[[route]]\npath = \"/consume/**\"\nmax_body = \"1KiB\"\nrate_limit = false\n",
    )
    .await;
    // No Content-Length: the limit is enforced on the stream.
    let mut tcp = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    let chunk = format!("400\r\n{}\r\n", "x".repeat(1024));
    let mut req = String::from(
        "POST /consume/x HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n",
    );
    for _ in 0..4 {
        req.push_str(&chunk);
    }
    req.push_str("0\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let (out, _) = read_until_closed(&mut tcp, Duration::from_secs(3)).await;
    let out = String::from_utf8_lossy(&out);
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(out.contains("\"code\":\"body_too_large\""), "{out}");
}

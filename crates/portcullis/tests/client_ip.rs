//! Client address (DESIGN §2 step 4) over real TCP: the socket peer, trusted proxies and
//! `X-Forwarded-For` walked from the right; plus a table of `resolve()` cases.

mod common;

use std::net::{IpAddr, SocketAddr};

use axum::Router;
use axum::routing::get;
use common::*;
use http::{HeaderMap, HeaderValue};
use portcullis::client_ip::{TrustedProxies, resolve};
use portcullis::{ClientIp, SecurityLayer};

/// A layer trusting `trusted`, in front of `/ip` (the `ClientIp` extractor) and `echo`.
async fn start(trusted: &[&str]) -> SocketAddr {
    let layer = SecurityLayer::builder()
        .trusted_proxies(trusted.iter().copied())
        .build()
        .expect("valid trusted proxies");
    serve_with(app(), layer).await
}

fn app() -> Router {
    Router::new()
        .route(
            "/ip",
            get(|ip: ClientIp| async move { format!("{ip} {}", ip.key()) }),
        )
        .fallback(echo)
}

/// The client address the application saw for a request with these headers.
async fn seen(addr: SocketAddr, headers: &[(&str, &str)]) -> String {
    let r = send(addr, "GET", "/echo", headers, "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["client_ip"]
        .as_str()
        .expect("the layer sets ClientIp")
        .to_string()
}

#[tokio::test]
async fn without_trusted_proxies_forwarded_for_is_ignored_and_stripped() {
    let addr = start(&[]).await;
    let r = send(
        addr,
        "GET",
        "/echo",
        &[("x-forwarded-for", "1.2.3.4"), ("x-real-ip", "1.2.3.4")],
        "",
    )
    .await;
    let v = r.json();
    assert_eq!(v["client_ip"], "127.0.0.1");
    assert!(v["headers"].get("x-forwarded-for").is_none(), "{v}");
    assert!(v["headers"].get("x-real-ip").is_none(), "{v}");
}

#[tokio::test]
async fn an_untrusted_peer_cannot_choose_its_address_even_next_to_a_trusted_range() {
    // The peer is 127.0.0.1; trusting only 10/8 must not make its XFF believed.
    let addr = start(&["10.0.0.0/8"]).await;
    assert_eq!(
        seen(addr, &[("x-forwarded-for", "10.0.0.1")]).await,
        "127.0.0.1"
    );
}

#[tokio::test]
async fn trusted_proxy_forwarded_for_names_the_client() {
    let addr = start(&["127.0.0.1/32"]).await;
    assert_eq!(
        seen(addr, &[("x-forwarded-for", "203.0.113.9")]).await,
        "203.0.113.9"
    );
    // No header from a trusted proxy: the proxy itself is the client.
    assert_eq!(seen(addr, &[]).await, "127.0.0.1");
}

#[tokio::test]
async fn spoofed_leftmost_values_do_not_change_the_client() {
    let addr = start(&["127.0.0.1/32"]).await;
    for xff in [
        "6.6.6.6, 203.0.113.9",
        "6.6.6.6,203.0.113.9",
        "127.0.0.1, 6.6.6.6, 1.1.1.1, 203.0.113.9",
        "garbage, 203.0.113.9",
    ] {
        assert_eq!(
            seen(addr, &[("x-forwarded-for", xff)]).await,
            "203.0.113.9",
            "{xff}"
        );
    }
}

#[tokio::test]
async fn several_forwarded_for_lines_are_one_list_in_order() {
    let addr = start(&["127.0.0.1/32"]).await;
    let two_lines = [
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-for", "203.0.113.9"),
    ];
    assert_eq!(seen(addr, &two_lines).await, "203.0.113.9");
    let reversed = [
        ("x-forwarded-for", "203.0.113.9"),
        ("x-forwarded-for", "6.6.6.6"),
    ];
    assert_eq!(seen(addr, &reversed).await, "6.6.6.6");
    let mixed = [
        ("x-forwarded-for", "6.6.6.6, 7.7.7.7"),
        ("x-forwarded-for", "203.0.113.9, 127.0.0.1"),
    ];
    assert_eq!(seen(addr, &mixed).await, "203.0.113.9");
}

#[tokio::test]
async fn trusted_hops_on_the_right_are_skipped() {
    let addr = start(&["127.0.0.1/32", "10.0.0.0/8"]).await;
    assert_eq!(
        seen(addr, &[("x-forwarded-for", "203.0.113.9, 10.0.0.1")]).await,
        "203.0.113.9"
    );
    assert_eq!(
        seen(
            addr,
            &[(
                "x-forwarded-for",
                "6.6.6.6, 203.0.113.9, 10.1.1.1, 10.0.0.2"
            )]
        )
        .await,
        "203.0.113.9"
    );
    // Every hop trusted: the leftmost trusted hop is the best we know.
    assert_eq!(
        seen(addr, &[("x-forwarded-for", "10.9.9.9, 10.0.0.1")]).await,
        "10.9.9.9"
    );
}

#[tokio::test]
async fn garbage_entries_never_let_the_client_choose() {
    let addr = start(&["127.0.0.1/32"]).await;
    let cases = [
        // Garbage left of a readable hop: the readable one is nearer, so it wins.
        ("nonsense, 203.0.113.9", "203.0.113.9"),
        // Garbage as the nearest hop: stop at the trusted peer, believe nothing further left.
        ("6.6.6.6, nonsense", "127.0.0.1"),
        ("6.6.6.6, 999.1.1.1", "127.0.0.1"),
        ("6.6.6.6, unknown", "127.0.0.1"),
        ("6.6.6.6, 203.0.113.9/24", "127.0.0.1"),
        ("6.6.6.6, fe80::1%eth0", "127.0.0.1"),
        // Empty entries are skipped.
        (" , ,203.0.113.9, ,", "203.0.113.9"),
        (",,,", "127.0.0.1"),
        ("\"203.0.113.9\"", "203.0.113.9"),
    ];
    for (xff, want) in cases {
        assert_eq!(seen(addr, &[("x-forwarded-for", xff)]).await, want, "{xff}");
    }
}

#[tokio::test]
async fn ipv6_hops_are_read_with_or_without_brackets_and_port() {
    let addr = start(&["127.0.0.1/32"]).await;
    for xff in [
        "2001:db8::5",
        "[2001:db8::5]:8443",
        "[2001:db8::5]",
        "6.6.6.6, 2001:DB8::5",
    ] {
        assert_eq!(
            seen(addr, &[("x-forwarded-for", xff)]).await,
            "2001:db8::5",
            "{xff}"
        );
    }
}

#[tokio::test]
async fn ipv4_mapped_hops_are_ipv4() {
    let addr = start(&["127.0.0.1/32"]).await;
    for xff in [
        "::ffff:203.0.113.9",
        "[::ffff:203.0.113.9]:443",
        "::FFFF:cb00:7109",
    ] {
        assert_eq!(
            seen(addr, &[("x-forwarded-for", xff)]).await,
            "203.0.113.9",
            "{xff}"
        );
    }
    // A mapped trusted hop is trusted as its IPv4 self.
    assert_eq!(
        seen(
            addr,
            &[("x-forwarded-for", "203.0.113.9, ::ffff:127.0.0.1")]
        )
        .await,
        "203.0.113.9"
    );
}

#[tokio::test]
async fn a_thousand_entry_list_is_handled() {
    let addr = start(&["127.0.0.1/32", "10.0.0.0/8"]).await;
    let spoofed: Vec<String> = (0..999)
        .map(|i| format!("6.6.{}.{}", i / 256, i % 256))
        .collect();
    let xff = format!("{}, 203.0.113.9", spoofed.join(", "));
    assert_eq!(
        seen(addr, &[("x-forwarded-for", &xff)]).await,
        "203.0.113.9"
    );

    let trusted: Vec<String> = (0..999)
        .map(|i| format!("10.0.{}.{}", i / 256, i % 256))
        .collect();
    let xff = format!("198.51.100.4, {}", trusted.join(", "));
    assert_eq!(
        seen(addr, &[("x-forwarded-for", &xff)]).await,
        "198.51.100.4"
    );

    let garbage = vec!["x"; 1000].join(",");
    assert_eq!(
        seen(addr, &[("x-forwarded-for", &garbage)]).await,
        "127.0.0.1"
    );
}

#[tokio::test]
async fn a_non_ascii_line_does_not_hide_the_hop_a_proxy_appended_to_it() {
    // A proxy that appends the peer it saw to the client's last XFF line produces
    // `<client bytes>, <real client>`. Client bytes outside visible ASCII are legal obs-text;
    // the real client on that line must still win over the client's earlier line.
    let addr = start(&["127.0.0.1/32"]).await;
    let mut raw = format!(
        "GET /echo HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: "
    )
    .into_bytes();
    raw.extend_from_slice(b"\xff\xfe, 203.0.113.9\r\n\r\n");
    let r = send_raw(addr, &raw).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["client_ip"], "203.0.113.9");
}

#[tokio::test]
async fn the_client_ip_extractor_works_in_a_handler() {
    let addr = start(&["127.0.0.1/32"]).await;
    let r = send(
        addr,
        "GET",
        "/ip",
        &[("x-forwarded-for", "203.0.113.9")],
        "",
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "203.0.113.9 203.0.113.9");
    let r = send(
        addr,
        "GET",
        "/ip",
        &[("x-forwarded-for", "2001:db8:1:2:aaaa::1")],
        "",
    )
    .await;
    assert_eq!(r.text(), "2001:db8:1:2:aaaa::1 2001:db8:1:2::/64");
}

#[tokio::test]
async fn the_extractor_falls_back_to_the_peer_without_the_layer() {
    let addr = serve(app()).await;
    let r = send(addr, "GET", "/ip", &[("x-forwarded-for", "6.6.6.6")], "").await;
    assert_eq!(r.text(), "127.0.0.1 127.0.0.1");
}

/// Serves `app` behind `layer` on `[::1]`, or `None` when the OS has no IPv6 loopback.
async fn serve_ipv6(layer: SecurityLayer) -> Option<SocketAddr> {
    use axum::ServiceExt;
    use tower::Layer;
    let listener = match tokio::net::TcpListener::bind("[::1]:0").await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("skipping the IPv6 listener test: cannot bind [::1]: {e}");
            return None;
        }
    };
    let addr = listener.local_addr().expect("local addr");
    let svc = layer.layer(app());
    tokio::spawn(async move {
        let make = ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info::<
            SocketAddr,
        >(svc);
        axum::serve(listener, make).await.expect("server runs");
    });
    Some(addr)
}

#[tokio::test]
async fn ipv6_peer_is_the_client_and_keys_group_by_64() {
    let layer = SecurityLayer::builder().build().unwrap();
    let Some(addr) = serve_ipv6(layer).await else {
        return;
    };
    let r = send(addr, "GET", "/ip", &[("x-forwarded-for", "6.6.6.6")], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "::1 ::/64");

    // ::1 as a trusted proxy: two clients of one /64 share a key, another /64 does not.
    let layer = SecurityLayer::builder()
        .trusted_proxies(["::1/128"])
        .build()
        .unwrap();
    let Some(addr) = serve_ipv6(layer).await else {
        return;
    };
    let key_of = |xff: &'static str| async move {
        let r = send(addr, "GET", "/ip", &[("x-forwarded-for", xff)], "").await;
        r.text().split(' ').nth(1).unwrap_or_default().to_string()
    };
    let a = key_of("2001:db8:1:2:aaaa::1").await;
    let b = key_of("2001:db8:1:2:bbbb:cccc:dddd:eeee").await;
    let c = key_of("2001:db8:1:3::1").await;
    assert_eq!(a, "2001:db8:1:2::/64");
    assert_eq!(a, b);
    assert_ne!(a, c);
    // An IPv4 client behind the IPv6 proxy keys on its own address.
    assert_eq!(key_of("::ffff:203.0.113.9").await, "203.0.113.9");
}

fn headers(lines: &[&str]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for l in lines {
        h.append("x-forwarded-for", HeaderValue::from_str(l).unwrap());
    }
    h
}

#[test]
fn resolve_table() {
    let trusted =
        TrustedProxies::parse(["10.0.0.0/8", "192.168.1.1", "2001:db8:ffff::/48"]).unwrap();
    let none = TrustedProxies::none();
    // (peer, XFF lines, trusted?, expected client)
    let rows: &[(&str, &[&str], bool, &str)] = &[
        ("198.51.100.7", &["1.1.1.1"], true, "198.51.100.7"),
        ("198.51.100.7", &["1.1.1.1"], false, "198.51.100.7"),
        ("10.0.0.1", &["1.1.1.1"], false, "10.0.0.1"),
        ("10.0.0.1", &[], true, "10.0.0.1"),
        ("10.0.0.1", &[""], true, "10.0.0.1"),
        ("10.0.0.1", &["203.0.113.9"], true, "203.0.113.9"),
        ("10.0.0.1", &["6.6.6.6, 203.0.113.9"], true, "203.0.113.9"),
        ("10.0.0.1", &["203.0.113.9, 10.2.3.4"], true, "203.0.113.9"),
        (
            "10.0.0.1",
            &["203.0.113.9, 192.168.1.1, 10.2.3.4"],
            true,
            "203.0.113.9",
        ),
        ("10.0.0.1", &["192.168.1.2, 10.2.3.4"], true, "192.168.1.2"),
        ("10.0.0.1", &["10.3.3.3, 10.2.3.4"], true, "10.3.3.3"),
        ("10.0.0.1", &["6.6.6.6", "203.0.113.9"], true, "203.0.113.9"),
        (
            "10.0.0.1",
            &["203.0.113.9", "10.9.9.9"],
            true,
            "203.0.113.9",
        ),
        ("10.0.0.1", &["6.6.6.6, nonsense"], true, "10.0.0.1"),
        (
            "10.0.0.1",
            &["6.6.6.6, nonsense, 10.4.4.4"],
            true,
            "10.4.4.4",
        ),
        ("10.0.0.1", &["nonsense, 203.0.113.9"], true, "203.0.113.9"),
        ("10.0.0.1", &["203.0.113.9:51234"], true, "203.0.113.9"),
        ("10.0.0.1", &["[2001:db8::1]:443"], true, "2001:db8::1"),
        ("10.0.0.1", &["[2001:db8::1]"], true, "2001:db8::1"),
        ("10.0.0.1", &["2001:db8::1"], true, "2001:db8::1"),
        ("10.0.0.1", &["::ffff:203.0.113.9"], true, "203.0.113.9"),
        (
            "10.0.0.1",
            &["203.0.113.9, ::ffff:10.1.1.1"],
            true,
            "203.0.113.9",
        ),
        ("::ffff:10.0.0.1", &["203.0.113.9"], true, "203.0.113.9"),
        (
            "::ffff:198.51.100.7",
            &["203.0.113.9"],
            true,
            "198.51.100.7",
        ),
        (
            "2001:db8:ffff:1::1",
            &["2001:db8:1::9"],
            true,
            "2001:db8:1::9",
        ),
        (
            "2001:db8:fffe::1",
            &["2001:db8:1::9"],
            true,
            "2001:db8:fffe::1",
        ),
        ("10.0.0.1", &["\"203.0.113.9\""], true, "203.0.113.9"),
        ("10.0.0.1", &[" , 203.0.113.9 ,  "], true, "203.0.113.9"),
        ("10.0.0.1", &["203.0.113.9 203.0.113.10"], true, "10.0.0.1"),
        ("10.0.0.1", &["1.2.3.4.5"], true, "10.0.0.1"),
    ];
    assert!(rows.len() >= 20);
    for (peer, lines, use_trusted, want) in rows {
        let t = if *use_trusted { &trusted } else { &none };
        let peer: IpAddr = peer.parse().unwrap();
        let got = resolve(peer, &headers(lines), t);
        assert_eq!(got.to_string(), *want, "peer {peer}, xff {lines:?}");
    }
}

#[test]
fn resolve_never_returns_a_mapped_address() {
    let t = TrustedProxies::parse(["0.0.0.0/0"]).unwrap();
    let got = resolve(
        "::ffff:127.0.0.1".parse().unwrap(),
        &headers(&["::ffff:10.0.0.1"]),
        &t,
    );
    assert_eq!(got.to_string(), "10.0.0.1");
    assert!(got.is_ipv4());
}

/// Collects the messages of the events logged while it is the thread's subscriber.
struct Logged(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

struct Message<'a>(&'a mut String);

impl tracing::field::Visit for Message<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0.push_str(&format!("{value:?}"));
        }
    }
}

impl tracing::Subscriber for Logged {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut message = String::new();
        event.record(&mut Message(&mut message));
        self.0.lock().expect("not poisoned").push(message);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn requests_without_a_peer_address_are_warned_about_once_per_layer() {
    use portcullis::client_ip::PeerAddr;
    use tower::{Layer, ServiceExt};

    let logged = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let subscriber = Logged(logged.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    tracing::subscriber::with_default(subscriber, || {
        runtime.block_on(async {
            let app = SecurityLayer::builder()
                .build()
                .expect("the secure defaults build")
                .layer(app());
            let get = || http::Request::get("/ip").body(axum::body::Body::empty());
            // With a peer address: nothing to say.
            let mut req = get().expect("a request");
            req.extensions_mut()
                .insert(PeerAddr("192.0.2.7:5000".parse().expect("an address")));
            assert_eq!(
                app.clone().oneshot(req).await.expect("answered").status(),
                200
            );
            assert!(logged.lock().expect("not poisoned").is_empty());
            // Without one (a server that gives no ConnectInfo), every client is 0.0.0.0:
            // one rate-limit and brute-force bucket for all. Said once, not per request.
            for _ in 0..3 {
                let res = app.clone().oneshot(get().expect("a request")).await;
                assert_eq!(res.expect("answered").status(), 200);
            }
        });
    });
    let logged = logged.lock().expect("not poisoned");
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert!(
        logged[0].contains("without a peer address"),
        "{}",
        logged[0]
    );
    assert!(
        logged[0].contains("into_make_service_with_connect_info"),
        "{}",
        logged[0]
    );
}

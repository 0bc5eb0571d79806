//! Raw HTTP/1.1 requests, hand-written attacks and mutations of them, sent over real sockets
//! to the real binary in front of a real upstream: request smuggling (`Content-Length` with
//! `Transfer-Encoding`, doubled lengths, odd chunk sizes), path variants of a protected
//! prefix, forged identity and proxy headers, bad hosts, pipelining, h2c upgrades, and
//! whatever the mutations make of them. Whatever comes in:
//!
//! - the gateway keeps running and never answers 5xx (the upstream is healthy);
//! - every answer carries `X-Request-Id` and the security headers, never the upstream's
//!   banners; every 4xx of the gateway's own is the JSON error;
//! - the upstream never sees a request under `/api/admin` without the `admin` role, under
//!   `/api/user` without a principal, an unsafe method on either (no input can sign a CSRF
//!   token), a client's `x-middleware-*` header, or both `Content-Length` and
//!   `Transfer-Encoding`.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[allow(dead_code)]
#[path = "../../../fuzz/src/replay.rs"]
mod replay;

const SECRET: &str = "raw-attacks-test-secret-of-at-least-32-bytes";

fn token(sub: &str, roles: &[&str]) -> String {
    hs256_token(SECRET, sub, roles)
}

/// The hand-written attacks (the mutations start from these).
fn seeds() -> Vec<Vec<u8>> {
    let user = format!("Authorization: Bearer {}\r\n", token("alice", &["user"]));
    let admin = format!("Authorization: Bearer {}\r\n", token("root", &["admin"]));
    let h = "Host: gw.test\r\n";
    let mut out: Vec<String> = vec![
        format!("GET /hello HTTP/1.1\r\n{h}\r\n"),
        format!("GET /api/admin/users HTTP/1.1\r\n{h}{admin}\r\n"),
        format!("GET /api/admin/users HTTP/1.1\r\n{h}{user}\r\n"),
        format!("GET /api/user/notes HTTP/1.1\r\n{h}{user}\r\n"),
        format!(
            "POST /api/user/notes HTTP/1.1\r\n{h}{user}Content-Type: application/json\r\nContent-Length: 2\r\nSec-Fetch-Site: same-origin\r\n\r\n{{}}"
        ),
        // Smuggling: CL.TE, TE.CL, doubled and odd lengths, obfuscated TE.
        format!(
            "POST /hello HTTP/1.1\r\n{h}Content-Length: 6\r\nTransfer-Encoding: chunked\r\nSec-Fetch-Site: same-origin\r\n\r\n0\r\n\r\nGET /api/admin/users HTTP/1.1\r\n{h}\r\n"
        ),
        format!(
            "POST /hello HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\nContent-Length: 3\r\nSec-Fetch-Site: same-origin\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n"
        ),
        format!(
            "POST /hello HTTP/1.1\r\n{h}Content-Length: 5\r\nContent-Length: 6\r\nSec-Fetch-Site: same-origin\r\n\r\nhello!"
        ),
        format!(
            "POST /hello HTTP/1.1\r\n{h}Content-Length: +5\r\nSec-Fetch-Site: same-origin\r\n\r\nhello"
        ),
        format!(
            "POST /hello HTTP/1.1\r\n{h}Transfer-Encoding: xchunked\r\nSec-Fetch-Site: same-origin\r\n\r\n0\r\n\r\n"
        ),
        format!(
            "POST /hello HTTP/1.1\r\n{h}Transfer-Encoding : chunked\r\nSec-Fetch-Site: same-origin\r\n\r\n0\r\n\r\n"
        ),
        format!(
            "POST /hello HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\nSec-Fetch-Site: same-origin\r\n\r\n0\r\n\r\n"
        ),
        format!(
            "POST /hello HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\nSec-Fetch-Site: same-origin\r\n\r\nffffffffffffffffff\r\nx\r\n0\r\n\r\n"
        ),
        format!(
            "POST /hello HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\nSec-Fetch-Site: same-origin\r\n\r\n5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\n"
        ),
        format!(
            "POST /hello HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\nSec-Fetch-Site: same-origin\r\n\r\n5\nhello\n0\n\n"
        ),
        // Path variants of the protected prefix.
        format!("GET /api//admin/users HTTP/1.1\r\n{h}{user}\r\n"),
        format!("GET /api/%61dmin/users HTTP/1.1\r\n{h}{user}\r\n"),
        format!("GET /API/admin/users HTTP/1.1\r\n{h}{user}\r\n"),
        format!("GET /api/x/../admin/users HTTP/1.1\r\n{h}{user}\r\n"),
        format!("GET /api/admin;x/users HTTP/1.1\r\n{h}{user}\r\n"),
        format!("GET /api/admin%2fusers HTTP/1.1\r\n{h}{user}\r\n"),
        format!("GET http://gw.test/api/admin/users HTTP/1.1\r\n{h}{user}\r\n"),
        format!("GET http://evil.example/api/admin/users HTTP/1.1\r\n{h}{user}\r\n"),
        format!("GET /api/admin/users/..%2f HTTP/1.1\r\n{h}{user}\r\n"),
        format!("GET * HTTP/1.1\r\n{h}\r\n"),
        // Forged identity and proxy headers, Next.js internals.
        format!(
            "GET /api/admin/users HTTP/1.1\r\n{h}x-middleware-subrequest: middleware\r\nx-portcullis-user: root\r\nx-portcullis-roles: admin\r\n\r\n"
        ),
        format!(
            "GET /hello HTTP/1.1\r\n{h}X-Forwarded-For: 1.2.3.4\r\nForwarded: for=5.6.7.8\r\nX-Original-URL: /api/admin/users\r\n\r\n"
        ),
        // Hosts, versions, upgrades, pipelining, expectations.
        "GET /hello HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_string(),
        "GET /hello HTTP/1.1\r\nHost: evil@gw.test\r\n\r\n".to_string(),
        "GET /hello HTTP/1.0\r\n\r\n".to_string(),
        format!(
            "GET /hello HTTP/1.1\r\n{h}Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        ),
        format!(
            "GET /hello HTTP/1.1\r\n{h}Connection: keep-alive, x-portcullis-user\r\nx-portcullis-user: root\r\n\r\n"
        ),
        format!(
            "GET /hello HTTP/1.1\r\n{h}\r\nGET /api/admin/users HTTP/1.1\r\n{h}\r\nGET /hello HTTP/1.1\r\n{h}\r\n"
        ),
        format!(
            "POST /hello HTTP/1.1\r\n{h}Expect: 100-continue\r\nContent-Length: 5\r\nSec-Fetch-Site: same-origin\r\n\r\nhello"
        ),
        format!("DELETE /hello HTTP/1.1\r\n{h}\r\n"),
        format!(
            "POST /hello HTTP/1.1\r\n{h}Origin: https://evil.example\r\nSec-Fetch-Site: cross-site\r\nContent-Length: 0\r\n\r\n"
        ),
        format!(
            "GET /hello HTTP/1.1\r\n{h}X-Long: {}\r\n\r\n",
            "a".repeat(20_000)
        ),
        "\r\n\r\nGET /hello HTTP/1.1\r\nHost: gw.test\r\n\r\n".to_string(),
    ];
    out.push(format!("GET /hello HTTP/1.1\r\n{h}X-Nul: a\0b\r\n\r\n"));
    out.into_iter().map(String::into_bytes).collect()
}

/// Sends `input` on a fresh connection; reads until the gateway closes, or falls silent for
/// 400 ms once it has answered (3 s before the first byte: the header and request timeouts
/// end what never gets an answer sooner, and a loaded CI machine may be slow to answer).
async fn exchange(port: u16, input: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
    let Ok(mut tcp) = TcpStream::connect(("127.0.0.1", port)).await else {
        panic!("the gateway stopped accepting connections");
    };
    let _ = tcp.write_all(&input).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let wait = if out.is_empty() { 3000 } else { 400 };
        match tokio::time::timeout(Duration::from_millis(wait), tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    (input, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_attacks_and_their_mutations_never_crash_leak_or_bypass() {
    // SAFETY: set before any thread of this test binary reads the environment; only the
    // gateway child process reads this variable.
    unsafe { std::env::set_var("PC_RAW_ATTACKS_SECRET", SECRET) };
    let up = Upstream::start().await;
    let port = free_port();
    let routes = "[[route]]\npath = \"/api/admin/**\"\npreset = \"strict\"\nmethods = [\"GET\", \"POST\"]\nroles = [\"admin\"]\nrate_limit = false\n\
                  [[route]]\npath = \"/api/user/**\"\npreset = \"authenticated\"\nrate_limit = false\n";
    // Hundreds of refused requests from one address: the ban list would rightly shut it out
    // and hide what each attack gets; bans have their own test (tests/bans.rs).
    let text = format!(
        "{}\n[ban]\noffences = 0\n[auth]\nfailed_limit = 1000000\n[auth.jwt]\nsecret_env = \"PC_RAW_ATTACKS_SECRET\"\n[csrf]\nsecret_env = \"PC_RAW_ATTACKS_SECRET\"\n",
        config(
            port,
            up.addr,
            "header_read_timeout = \"1s\"\nrequest_timeout = \"2s\"",
            routes
        )
    );
    let mut gw = Gateway::start(port, &text).await;

    let seeds = seeds();
    let rounds = replay::env_number("PORTCULLIS_FUZZ_ROUNDS", 15);
    let mut rng =
        replay::Rng(replay::env_number("PORTCULLIS_FUZZ_SEED", 0x7a11_5eed_0bad_cafe) | 1);
    let mut inputs = seeds.clone();
    for _ in 0..rounds {
        for seed in &seeds {
            let other = &seeds[rng.below(seeds.len())];
            inputs.push(replay::mutate(&mut rng, seed, other));
        }
    }
    let count = inputs.len();
    // 24 connections at a time.
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(24));
    let mut running = tokio::task::JoinSet::new();
    for input in inputs {
        let slot = slots.clone().acquire_owned().await.expect("the semaphore");
        running.spawn(async move {
            let done = exchange(port, input).await;
            drop(slot);
            done
        });
    }
    let mut results: Vec<(Vec<u8>, Vec<u8>)> = Vec::with_capacity(count);
    while let Some(done) = running.join_next().await {
        results.push(done.expect("an exchange"));
    }
    assert_eq!(results.len(), count);

    let mut answered = 0;
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for (input, output) in &results {
        let shown = || {
            format!(
                "input {:?}\noutput {:?}",
                String::from_utf8_lossy(input),
                String::from_utf8_lossy(output)
            )
        };
        for a in raw_answers(output) {
            answered += 1;
            *statuses.entry(a.status).or_default() += 1;
            if a.status == 100 {
                continue;
            }
            assert!(a.status < 500, "{}: {}", a.status, shown());
            assert!(
                a.header("x-request-id").is_some(),
                "no request id: {}",
                shown()
            );
            assert_eq!(
                a.header("x-content-type-options"),
                Some("nosniff"),
                "{}",
                shown()
            );
            assert!(a.header("server").is_none(), "a banner: {}", shown());
            assert!(a.header("x-powered-by").is_none(), "a banner: {}", shown());
            // The gateway's own refusals are the JSON error; the upstream's answers are "hello".
            let complete = a
                .header("content-length")
                .and_then(|v| v.parse::<usize>().ok())
                .is_none_or(|n| n == a.body.len());
            if a.status >= 400 && !a.body.is_empty() && complete {
                let json: serde_json::Value = serde_json::from_slice(&a.body)
                    .unwrap_or_else(|e| panic!("{} not JSON ({e}): {}", a.status, shown()));
                assert!(json["code"].is_string(), "{}", shown());
                assert_eq!(
                    json["request_id"].as_str(),
                    a.header("x-request-id"),
                    "{}",
                    shown()
                );
            }
        }
    }
    eprintln!(
        "{count} inputs, {answered} answers: {statuses:?}; the upstream saw {}",
        up.hits()
    );
    assert!(
        answered >= count / 2,
        "{answered} answers to {count} inputs"
    );

    // What reached the upstream.
    for seen in up.seen.lock().unwrap().iter() {
        let path = seen.uri.split('?').next().unwrap_or("").to_string();
        let roles = seen
            .headers
            .get("x-portcullis-roles")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let under = |prefix: &str| {
            path.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        if under("/api/admin") {
            assert!(roles.split(',').any(|r| r.trim() == "admin"), "{seen:?}");
        }
        let protected = under("/api/user") || under("/api/admin");
        if protected {
            assert!(seen.headers.contains_key("x-portcullis-user"), "{seen:?}");
            assert!(matches!(seen.method.as_str(), "GET" | "HEAD"), "{seen:?}");
        }
        assert!(
            !seen
                .headers
                .keys()
                .any(|k| k.as_str().starts_with("x-middleware-")),
            "{seen:?}"
        );
        assert!(
            !(seen.headers.contains_key("content-length")
                && seen.headers.contains_key("transfer-encoding")),
            "{seen:?}"
        );
    }

    // Still up, still serving.
    assert!(
        gw.child.try_wait().expect("the child's state").is_none(),
        "the gateway exited"
    );
    let r = get(&gw.url("/hello"), &[]).await;
    assert_eq!(r.status, http::StatusCode::OK);
}

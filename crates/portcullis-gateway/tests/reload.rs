//! Hot reload (file change, SIGHUP, bad configs), start-up errors and graceful shutdown.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::{Request, StatusCode};

fn policy(port: u16, up: &Upstream, methods: &str) -> String {
    config(
        port,
        up.addr,
        "",
        &format!("[[route]]\npath = \"/api/**\"\nmethods = {methods}\nrate_limit = false\n"),
    )
}

async fn post_status(gw: &Gateway) -> StatusCode {
    send(
        &client(),
        Request::post(gw.url("/api/x")).body(full("")).unwrap(),
    )
    .await
    .status
}

/// Polls until a POST gets `want`, up to `timeout`.
async fn wait_post(gw: &Gateway, want: StatusCode, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if post_status(gw).await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_config_file_applies_within_seconds() {
    let up = Upstream::start().await;
    let port = free_port();
    let gw = Gateway::start(port, &policy(port, &up, "[\"GET\"]")).await;
    assert_eq!(post_status(&gw).await, StatusCode::METHOD_NOT_ALLOWED);
    std::fs::write(&gw.config, policy(port, &up, "[\"GET\", \"POST\"]")).unwrap();
    assert!(
        wait_post(&gw, StatusCode::OK, Duration::from_secs(4)).await,
        "{}",
        gw.logs()
    );
    assert!(gw.logs().contains("config reloaded (file change)"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_config() {
    let up = Upstream::start().await;
    let port = free_port();
    let gw = Gateway::start(port, &policy(port, &up, "[\"GET\"]")).await;
    gw.signal("-HUP");
    assert!(
        gw.wait_log("config reloaded (SIGHUP)", Duration::from_secs(3))
            .await,
        "{}",
        gw.logs()
    );
    std::fs::write(&gw.config, policy(port, &up, "[\"GET\", \"POST\"]")).unwrap();
    gw.signal("-HUP");
    assert!(wait_post(&gw, StatusCode::OK, Duration::from_secs(3)).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_new_config_is_refused_and_the_old_one_keeps_serving() {
    let up = Upstream::start().await;
    let port = free_port();
    let gw = Gateway::start(port, &policy(port, &up, "[\"GET\"]")).await;
    let bad = policy(port, &up, "[\"GET\", \"POST\"]").replace(
        "rate_limit = false\n",
        "rate_limit = false\nbogus = 1\nmax_body = \"lots\"\n",
    );
    std::fs::write(&gw.config, bad).unwrap();
    let file = gw.config.display().to_string();
    assert!(
        gw.wait_log(
            "config reload (file change) refused",
            Duration::from_secs(4)
        )
        .await,
        "{}",
        gw.logs()
    );
    let logs = gw.logs();
    assert!(
        logs.contains(&format!("{file}: route[0].bogus: unknown key")),
        "{logs}"
    );
    assert!(
        logs.contains(&format!("{file}: route[0].max_body:")),
        "{logs}"
    );
    // The old policy still holds, and the gateway still serves.
    assert_eq!(post_status(&gw).await, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(get(&gw.url("/api/x"), &[]).await.status, StatusCode::OK);
    // Fixing the file applies it.
    std::fs::write(&gw.config, policy(port, &up, "[\"GET\", \"POST\"]")).unwrap();
    assert!(wait_post(&gw, StatusCode::OK, Duration::from_secs(4)).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_config_at_start_exits_2_with_every_error() {
    let dir = temp_dir();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"nope\"\nupstream = \"ftp://x\"\n[[route]]\npath = \"/a\"\nbogus = 1\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    for key in ["server.listen", "server.upstream", "route[0].bogus"] {
        assert!(err.contains(&format!("{file}: {key}: ")), "{key}: {err}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_the_request_in_flight_then_exits_0() {
    let up = Upstream::start().await;
    let port = free_port();
    let mut gw = Gateway::start(
        port,
        &config(port, up.addr, "shutdown_timeout = \"10s\"", ""),
    )
    .await;
    let url = gw.url("/slow/1500");
    let slow = tokio::spawn(async move { get(&url, &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.signal("-TERM");

    // New connections are refused once the listener is closed, while the request runs.
    let start = Instant::now();
    let refused = loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            break true;
        }
        if start.elapsed() > Duration::from_secs(1) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(refused, "new connections were still accepted");
    assert!(!slow.is_finished(), "the slow request ended too early");

    let r = slow.await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "slow done");
    let status = gw.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "{}", gw.logs());
    assert!(gw.logs().contains("SIGTERM"));
}

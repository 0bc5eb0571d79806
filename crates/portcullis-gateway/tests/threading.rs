//! `[server] threading` and `workers`: per-core workers with `SO_REUSEPORT` listeners, and the
//! work-stealing runtime, on the real binary over real sockets.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The names of the gateway's threads.
fn thread_names(gw: &Gateway) -> Vec<String> {
    let dir = format!("/proc/{}/task", gw.pid());
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read /proc/PID/task")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    names.sort();
    names
}

/// `connections` keep-alive connections at once, each sending `requests` GETs; every
/// response must be a 200 with the upstream's body.
async fn load(port: u16, connections: usize, requests: usize) {
    let mut tasks = Vec::new();
    for c in 0..connections {
        tasks.push(tokio::spawn(async move {
            let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            for r in 0..requests {
                let req = format!("GET /c{c}/r{r} HTTP/1.1\r\nHost: t\r\n\r\n");
                tcp.write_all(req.as_bytes()).await.unwrap();
                let text = read_response(&mut tcp).await;
                assert!(text.starts_with("HTTP/1.1 200"), "{text}");
                assert!(text.ends_with("hello"), "{text}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

/// The gateway on `server_extra`, started, with the line announcing its port already logged
/// (the port opens only once that line is written).
async fn gateway(up: &Upstream, server_extra: &str) -> Gateway {
    let port = free_port();
    let gw = Gateway::start(port, &config(port, up.addr, server_extra, "")).await;
    assert!(
        gw.logs()
            .contains(&format!("listening on http://127.0.0.1:{port}")),
        "{}",
        gw.logs()
    );
    gw
}

#[tokio::test(flavor = "multi_thread")]
async fn per_core_workers_share_one_port() {
    let up = Upstream::start().await;
    let gw = gateway(
        &up,
        "threading = \"per-core\"\nworkers = 3\nadmin_listen = false",
    )
    .await;
    let names = thread_names(&gw);
    // `comm` is cut at 15 bytes: `portcullis-work`.
    assert_eq!(
        names
            .iter()
            .filter(|n| n.starts_with("portcullis-work"))
            .count(),
        3,
        "{names:?}"
    );

    // Many connections at once: the kernel spreads them over the three listeners, and every
    // one is served on its worker's own upstream pool.
    load(gw.port, 48, 5).await;
    assert_eq!(up.hits(), 48 * 5);

    // HTTP/2 with prior knowledge too.
    let res = send(
        &h2_client(),
        http::Request::get(gw.url("/h2")).body(full("")).unwrap(),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.text(), "hello");
}

#[tokio::test(flavor = "multi_thread")]
async fn work_stealing_runs_one_runtime_of_workers_threads() {
    let up = Upstream::start().await;
    let gw = gateway(
        &up,
        "threading = \"work-stealing\"\nworkers = 3\nadmin_listen = false",
    )
    .await;
    let names = thread_names(&gw);
    assert!(
        !names.iter().any(|n| n.starts_with("portcullis-work")),
        "{names:?}"
    );
    // Three workers, plus any blocking-pool thread (same name) the audit writer started.
    assert!(
        names
            .iter()
            .filter(|n| n.starts_with("tokio-rt-worker"))
            .count()
            >= 3,
        "{names:?}"
    );
    load(gw.port, 24, 5).await;
    assert_eq!(up.hits(), 24 * 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn max_connections_holds_across_per_core_workers() {
    let up = Upstream::start().await;
    let gw = gateway(
        &up,
        "workers = 4\nmax_connections = 2\nidle_timeout = \"30s\"\nadmin_listen = false",
    )
    .await;
    let mut a = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    let mut b = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
    for tcp in [&mut a, &mut b] {
        tcp.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        assert!(read_response(tcp).await.starts_with("HTTP/1.1 200"));
    }
    // Whichever listener the next connections land on, none is served while both slots are
    // held.
    let mut waiting = Vec::new();
    for _ in 0..3 {
        let mut c = TcpStream::connect(("127.0.0.1", gw.port)).await.unwrap();
        c.write_all(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        waiting.push(c);
    }
    let mut buf = [0u8; 64];
    for c in &mut waiting {
        let early = tokio::time::timeout(Duration::from_millis(300), c.read(&mut buf)).await;
        assert!(early.is_err(), "a connection over the limit was served");
    }
    // Closing both frees two slots: two of the waiting ones are served.
    drop(a);
    drop(b);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut served = 0;
    for c in &mut waiting {
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), c.read(&mut buf)).await
        {
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            served += 1;
        }
    }
    assert_eq!(served, 2, "two freed slots serve two waiting connections");
}

/// Starts `portcullis serve` on `config_text` and expects it to exit at once; its stderr.
fn refused_start(config_text: &str) -> String {
    let dir = temp_dir();
    let path = dir.join("portcullis.toml");
    std::fs::write(&path, config_text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("the gateway started on a port another process holds");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let _ = std::fs::remove_dir_all(dir);
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_port_another_process_holds_is_refused_not_shared() {
    let up = Upstream::start().await;
    // Another program on the port, with SO_REUSEPORT as a second gateway would have it: a
    // bind with SO_REUSEPORT alone would succeed and split the traffic with it.
    let other = {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.set_reuse_port(true).unwrap();
        s.bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        s.listen(16).unwrap();
        s
    };
    let port = other.local_addr().unwrap().as_socket().unwrap().port();
    for threading in ["per-core", "work-stealing"] {
        let extra = format!("threading = \"{threading}\"\nadmin_listen = false");
        let stderr = refused_start(&config(port, up.addr, &extra, ""));
        assert!(
            stderr.contains(&format!(
                "cannot listen on 127.0.0.1:{port} (server.listen)"
            )),
            "{threading}: {stderr}"
        );
    }
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_threading_model_is_a_config_error() {
    let dir = temp_dir();
    let path = dir.join("portcullis.toml");
    std::fs::write(
        &path,
        "[server]\nupstream = \"http://127.0.0.1:1\"\nthreading = \"fast\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("server.threading: unknown value \"fast\""),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

//! A real Next.js App Router app (`tests/nextjs-app`) behind `portcullis serve` with
//! `upstream_kind = "nextjs"`, checked in headless Chromium: every script Next emits carries
//! the nonce of the response's CSP (which the gateway put on Next's request), the page
//! hydrates, and the browser reports no CSP violation.
//!
//! The first run installs `next`, `react` and `react-dom` (pinned in the app's
//! `package.json` and lockfile) with npm and runs `next build`; later runs reuse
//! `node_modules` and `.next` unless a source file is newer than the build.

mod browser;
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::{Gateway, free_port};
use http::StatusCode;

/// The app's folder.
fn app_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/nextjs-app")
}

/// The newest modification time among the app's sources.
fn newest_source(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut stack = vec![dir.join("app")];
    for f in ["next.config.mjs", "package.json", "package-lock.json"] {
        stack.push(dir.join(f));
    }
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            for entry in std::fs::read_dir(&p)
                .expect("read the app folder")
                .flatten()
            {
                stack.push(entry.path());
            }
        } else if let Ok(m) = meta.modified() {
            newest = newest.max(m);
        }
    }
    newest
}

fn next_command(dir: &Path) -> Command {
    let mut cmd = Command::new("node");
    cmd.arg("node_modules/next/dist/bin/next")
        .current_dir(dir)
        .env("NEXT_TELEMETRY_DISABLED", "1")
        .stdin(Stdio::null());
    cmd
}

/// Runs `next build` unless `.next` is newer than every source; returns the time it took.
fn build_if_stale(dir: &Path) -> Duration {
    let start = Instant::now();
    let built = std::fs::metadata(dir.join(".next/BUILD_ID")).and_then(|m| m.modified());
    if built.is_ok_and(|b| b >= newest_source(dir)) {
        return Duration::ZERO;
    }
    let out = next_command(dir)
        .arg("build")
        .output()
        .expect("run next build");
    assert!(
        out.status.success(),
        "next build failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed()
}

/// `next start` on a loopback port, in its own process group; stopped when dropped.
struct NextServer {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl NextServer {
    async fn start(dir: &Path) -> NextServer {
        use std::os::unix::process::CommandExt;
        let port = free_port();
        let log = common::temp_dir().join("next.log");
        let out = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log)
            .expect("create the log");
        let child = next_command(dir)
            .args(["start", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(out.try_clone().expect("the log again"))
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("start next");
        let mut server = NextServer { child, port, log };
        let start = Instant::now();
        loop {
            if let Some(status) = server.child.try_wait().expect("next's status") {
                panic!("next start exited with {status}: {}", server.logs());
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return server;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "next start did not listen within 30 s: {}",
                server.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NextServer {
    fn drop(&mut self) {
        // The group this test created (`next start` and anything it spawned): TERM, then
        // KILL if it has not exited within 5 s.
        let group = format!("-{}", self.child.id());
        let signal = |sig: &str| {
            let _ = Command::new("kill")
                .args(["-s", sig, "--", &group])
                .stderr(Stdio::null())
                .status();
        };
        signal("TERM");
        let start = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) {
            if start.elapsed() > Duration::from_secs(5) {
                signal("KILL");
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(dir) = self.log.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn next_scripts_carry_the_gateway_nonce_and_the_page_hydrates() {
    browser::require_tool(browser::CHROMIUM, "chromium");
    browser::require_tool("node", "nodejs");
    let dir = app_dir();
    let total = Instant::now();
    let install = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || {
            browser::npm_install(&dir, "node_modules/next/package.json")
        })
        .await
        .expect("npm install")
    };
    let build = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || build_if_stale(&dir))
            .await
            .expect("next build")
    };
    let next = NextServer::start(&dir).await;
    let port = free_port();
    let upstream = format!("127.0.0.1:{}", next.port).parse().unwrap();
    let gw = Gateway::start(
        port,
        &common::config(port, upstream, "upstream_kind = \"nextjs\"", ""),
    )
    .await;

    // Straight from Next, the page has no nonce: the one below comes from the gateway.
    let direct = common::get(&format!("http://127.0.0.1:{}/", next.port), &[]).await;
    assert_eq!(direct.status, StatusCode::OK, "{}", next.logs());
    let direct_tags = browser::script_tags(&direct.text());
    assert!(!direct_tags.is_empty(), "{}", direct.text());
    assert!(
        direct_tags.iter().all(|(_, n)| n.is_none()),
        "{direct_tags:#?}"
    );

    let url = gw.url("/");
    let started = Instant::now();
    let report = tokio::task::spawn_blocking(move || {
        browser::probe(&serde_json::json!({
            "url": url,
            "read": ["#via-gateway", "#counter"],
            // React marks a hydrated element with its fiber.
            "waitFor": "(() => { const b = document.querySelector('#counter'); \
                         return !!b && Object.keys(b).some(k => k.startsWith('__reactFiber')); })()",
            "click": "#counter",
            "clicks": 3,
        }))
    })
    .await
    .expect("the probe thread");
    let browse = started.elapsed();

    assert_eq!(report["status"], 200, "{report}\n{}", next.logs());
    let csp = report["csp"].as_str().expect("a CSP header");
    let nonce = browser::csp_nonce(csp).expect("a nonce in the CSP");
    assert_eq!(report["cache_control"], "no-store", "{report}");
    assert_eq!(report["before"]["#via-gateway"], "csp-on-request");

    // Every script Next emitted carries the response's nonce.
    let html = report["html"].as_str().expect("the HTML");
    let tags = browser::script_tags(html);
    assert!(tags.len() >= 2, "{html}");
    for (tag, n) in &tags {
        assert_eq!(n.as_deref(), Some(nonce.as_str()), "{tag}");
    }
    // The page hydrated: the client component's button counts.
    assert_eq!(report["before"]["#counter"], "count: 0", "{report}");
    assert_eq!(report["after"]["#counter"], "count: 3", "{report}");
    assert_eq!(
        report["violations"],
        serde_json::json!([]),
        "CSP violations: {report}"
    );
    eprintln!(
        "nextjs: npm install {:.1}s, next build {:.1}s, browser {:.1}s, total {:.1}s ({} scripts nonce'd)",
        install.as_secs_f32(),
        build.as_secs_f32(),
        browse.as_secs_f32(),
        total.elapsed().as_secs_f32(),
        tags.len()
    );
}

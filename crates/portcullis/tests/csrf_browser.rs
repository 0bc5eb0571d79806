//! CSRF in a real browser: Debian's headless Chromium, driven by playwright-core
//! (tests/browser/csrf.mjs), against an axum app behind `SecurityLayer` with token-mode CSRF.
//!
//! The app's page runs under the strict nonce CSP and loads the helper as a file (served by
//! the layer at /.well-known/portcullis/csrf.js); it posts
//! with `csrfFetch` (200), recovers from a forged token cookie through the token endpoint (also
//! while other GETs reset that cookie under it), is refused without the helper, and submits a form filled by `portcullisCsrf.fillForms` (200).
//! Attacker pages on another site (127.0.0.2) and on a sibling origin of the same site
//! (127.0.0.1, another port) submit a form and fire a `fetch` at the app: all refused, and the
//! app's counter shows only the legitimate posts.
//!
//! Needs `/usr/bin/chromium`, `node` and `npm` (`bash scripts/test.sh` installs them); the test
//! installs playwright-core into tests/browser/node_modules on first run.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::{Html, IntoResponse};
use axum::routing::{get, post};
use common::serve_with;
use portcullis::audit::{MemorySink, Outcome};
use portcullis::csrf::CsrfGuard;
use portcullis::policy::CsrfMode;
use portcullis::{CspNonce, Policy, Preset, SecurityLayer};
use tokio::net::TcpListener;

const CHROMIUM: &str = "/usr/bin/chromium";

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn require(bin: &str, what: &str) {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "{what} ({bin}) is not installed: run `bash scripts/test.sh`, which installs it"
    );
}

/// Installs playwright-core into tests/browser/node_modules unless it is there.
fn ensure_playwright() {
    let dir = browser_dir();
    if dir
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        return;
    }
    require("npm", "npm");
    let status = std::process::Command::new("npm")
        .args(["install", "--prefix"])
        .arg(&dir)
        .args(["--no-audit", "--no-fund", "--loglevel=error"])
        .status()
        .expect("npm runs");
    assert!(
        status.success(),
        "`npm install --prefix {}` failed: run `bash scripts/test.sh`",
        dir.display()
    );
}

const APP_JS: &str = r#"
const out = {};
const post = (url, init) => csrfFetch(url, Object.assign({ method: 'POST' }, init));
out.first = (await post('/api/counter', { headers: { 'Content-Type': 'application/json' }, body: '{}' })).status;

// A stale or forged cookie: the helper must fetch a fresh token once and retry.
document.cookie = '__Host-csrf=' + 'A'.repeat(86) + '; Path=/; Secure; SameSite=Strict';
out.cookie_forged = document.cookie.indexOf('A'.repeat(86)) >= 0;
out.retried = (await post('/api/counter', { body: '{}' })).status;

// The same, while other GETs carrying the forged cookie are in flight: each of them sets a
// fresh token cookie of its own, and whichever lands last is the one the retry must send.
document.cookie = '__Host-csrf=' + 'B'.repeat(86) + '; Path=/; Secure; SameSite=Strict';
const racing = [1, 2, 3].map((n) => fetch('/slow?n=' + n, { cache: 'no-store' }));
out.raced = (await post('/api/counter-race', { body: '{}' })).status;
await Promise.all(racing);

// Without the helper: no token header.
const plain = await fetch('/api/counter', { method: 'POST', body: '{}' });
out.plain = plain.status;
out.plain_code = (await plain.json()).code;

out.filled = await portcullisCsrf.fillForms(document);
out.field = document.querySelector('#note input[name="csrf_token"]').value.length;
document.body.dataset.result = JSON.stringify(out);
"#;

#[derive(Clone)]
struct Counter(Arc<AtomicU64>);

async fn page(nonce: CspNonce) -> Html<String> {
    let n = nonce.as_str();
    Html(format!(
        r#"<!doctype html><html><head><title>notes</title>
<link rel="icon" href="data:,">
<script src="/.well-known/portcullis/csrf.js" nonce="{n}"></script>
<script type="module" src="/app.js" nonce="{n}"></script></head>
<body><form id="note" method="post" action="/api/counter-form">
<input name="note" value="hello"><button id="note-submit" type="submit">save</button></form>
</body></html>"#
    ))
}

/// A GET that lands at a spread of moments: 0, 10, 20 or 30 ms after it arrives.
async fn slow(axum::extract::RawQuery(q): axum::extract::RawQuery) -> &'static str {
    let n: u64 = q
        .as_deref()
        .and_then(|q| q.strip_prefix("n="))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(10 * (n % 4))).await;
    "ok"
}

fn js(body: &'static str) -> impl IntoResponse {
    ([("content-type", "text/javascript; charset=utf-8")], body)
}

async fn start_app(audit: MemorySink) -> (SocketAddr, Counter) {
    let counter = Counter(Arc::new(AtomicU64::new(0)));
    let csrf = CsrfGuard::builder().build().expect("valid CSRF settings");
    let layer = SecurityLayer::builder()
        .no_rate_limiter()
        .default_policy(Policy::preset(Preset::Public).csrf(CsrfMode::OriginAndToken))
        .csrf_guard(Arc::new(csrf))
        .audit(Arc::new(audit))
        .build()
        .expect("valid layer");
    let bump = |State(c): State<Counter>| async move {
        let n = c.0.fetch_add(1, Ordering::SeqCst) + 1;
        axum::Json(serde_json::json!({ "count": n }))
    };
    let app = Router::new()
        .route("/", get(page))
        .route("/app.js", get(|| async { js(APP_JS) }))
        .route("/api/counter", post(bump))
        .route("/api/counter-form", post(bump))
        .route("/api/counter-race", post(bump))
        .route("/slow", get(slow))
        .with_state(counter.clone());
    (serve_with(app, layer).await, counter)
}

/// A page on another origin that attacks the app as soon as it loads.
async fn start_attacker(bind: &str, app: SocketAddr) -> SocketAddr {
    let html = format!(
        r#"<!doctype html><html><body>
<form id="f" method="POST" action="http://{app}/api/counter-form">
<input name="csrf_token" value="forged"><input name="note" value="pwned"></form>
<script>
fetch('http://{app}/api/counter', {{ method: 'POST', credentials: 'include', body: 'x' }})
  .catch(() => null)
  .finally(() => document.getElementById('f').submit());
</script></body></html>"#
    );
    let app = Router::new().route("/", get(move || async move { Html(html) }));
    let listener = TcpListener::bind(bind).await.expect("bind attacker origin");
    let addr = listener.local_addr().expect("attacker address");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("attacker serves") });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csrf_fetch_works_and_cross_site_posts_are_refused_in_chromium() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run `bash scripts/test.sh`, which installs Debian's chromium"
    );
    require("node", "Node.js");
    ensure_playwright();

    // A first Chromium start on a fresh machine can stall (caches being built): one retry,
    // with fresh servers so that the audit log and the counter hold one run only.
    let mut output = None;
    let mut servers = None;
    for attempt in 1..=2 {
        let audit = MemorySink::default();
        let (app, counter) = start_app(audit.clone()).await;
        let cross_site = start_attacker("127.0.0.2:0", app).await;
        let same_site = start_attacker("127.0.0.1:0", app).await;
        let log_path = std::env::temp_dir().join(format!(
            "portcullis-csrf-mjs-{}-{attempt}.log",
            std::process::id()
        ));
        let log = std::fs::File::create(&log_path).expect("create the driver's log");
        let mut cmd = tokio::process::Command::new("node");
        cmd.arg(browser_dir().join("csrf.mjs"))
            .arg(format!("http://{app}"))
            .arg(format!("http://{cross_site}"))
            .arg(format!("http://{same_site}"))
            .current_dir(browser_dir())
            .stdout(std::process::Stdio::piped())
            .stderr(log)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        // `spawn`, not `output`: `output` would pipe stderr over the log file.
        let child = cmd.spawn().expect("node runs");
        let done = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await;
        let driver_log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let _ = std::fs::remove_file(&log_path);
        match done {
            Ok(out) => {
                output = Some((out.expect("node runs"), driver_log));
                servers = Some((audit, counter));
                break;
            }
            Err(_) => eprintln!(
                "csrf.mjs attempt {attempt} did not finish within 60 s; its log:\n{driver_log}"
            ),
        }
    }
    let (audit, counter) = servers.expect("the browser run finishes within 60 s (two attempts)");
    let (output, driver_log) = output.expect("an output with the servers");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
        panic!("csrf.mjs printed no report.\nstdout: {stdout}\nlog: {driver_log}")
    });
    // What the driver saw, step by step, for any assertion below that fails.
    eprintln!("{driver_log}");
    assert_eq!(report["errors"], serde_json::json!([]), "{report:#}");

    // The page ran under the strict nonce CSP: no inline script was needed.
    let csp = report["csp"].as_str().unwrap_or_default();
    assert!(
        csp.contains("script-src 'self' 'nonce-") && csp.contains("'strict-dynamic'"),
        "{csp}"
    );
    let page = &report["app"];
    assert_eq!(page["first"], 200, "csrfFetch POST: {report:#}");
    assert_eq!(page["cookie_forged"], true, "{report:#}");
    assert_eq!(
        page["retried"], 200,
        "csrfFetch after a forged cookie: {report:#}"
    );
    assert_eq!(
        page["raced"], 200,
        "csrfFetch after a forged cookie, racing GETs that reset it: {report:#}"
    );
    assert_eq!(page["plain"], 403, "fetch without the helper: {report:#}");
    assert_eq!(page["plain_code"], "csrf_token_invalid");
    assert_eq!(page["filled"], 1, "{report:#}");
    assert_eq!(page["field"], 86, "{report:#}");
    assert_eq!(report["form"], 200, "form filled by fillForms: {report:#}");

    // The attackers' forms, as the browser saw them.
    let attackers = report["attackers"].as_array().expect("attacker runs");
    assert_eq!(attackers.len(), 2, "{report:#}");
    for a in attackers {
        let responses = a["responses"].as_array().expect("responses");
        let form = responses
            .iter()
            .find(|r| r["path"] == "/api/counter-form" && r["method"] == "POST")
            .unwrap_or_else(|| panic!("{}: no form POST seen: {report:#}", a["origin"]));
        assert_eq!(form["status"], 403, "{}: {report:#}", a["origin"]);
    }
    // Every refusal, as the server saw it: the page's two token refusals (the forged cookie
    // before the retry, the post without the helper), and per attacker its fetch and its form,
    // refused on their origin before any token was looked at. The raced post was refused once
    // or, when a racing GET reset the cookie while its retry was in flight, twice.
    let raced_refusals = audit
        .events()
        .iter()
        .filter(|e| e.path == "/api/counter-race")
        .inspect(|e| assert_eq!(e.metadata["code"], "csrf_token_invalid", "{e:?}"))
        .count();
    assert!((1..=2).contains(&raced_refusals), "{raced_refusals}");
    let mut refused: Vec<(String, String)> = audit
        .events()
        .iter()
        .filter(|e| e.outcome == Outcome::Denied && e.path != "/api/counter-race")
        .map(|e| {
            assert_eq!(e.status, 403);
            (
                e.metadata["code"].as_str().unwrap_or("").to_string(),
                e.path.clone(),
            )
        })
        .collect();
    refused.sort();
    let want = [
        ("csrf_origin_mismatch", "/api/counter"),
        ("csrf_origin_mismatch", "/api/counter"),
        ("csrf_origin_mismatch", "/api/counter-form"),
        ("csrf_origin_mismatch", "/api/counter-form"),
        ("csrf_token_invalid", "/api/counter"),
        ("csrf_token_invalid", "/api/counter"),
    ]
    .map(|(c, p)| (c.to_string(), p.to_string()));
    assert_eq!(refused, want, "{report:#}");
    // First post, the retried one, the raced one and the form: nothing from the attackers.
    assert_eq!(counter.0.load(Ordering::SeqCst), 4, "{report:#}");
}

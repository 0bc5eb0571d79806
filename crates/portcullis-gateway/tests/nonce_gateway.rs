//! The CSP nonce for the upstream's HTML, through the `portcullis` process: the placeholder
//! rewrite in front of a plain HTML upstream (and in headless Chromium), and the Next.js mode
//! that puts the response's CSP on the upstream request.

mod browser;
mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::{Gateway, Reply, Seen, TestBody, free_port, full};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>untouched</title></head>
<body>
<p id="marked">not run</p><p id="unmarked">not run</p><p id="forged">not run</p><p id="external">not run</p>
<script nonce="{{portcullis-nonce}}">document.title = 'nonce-ok'; document.getElementById('marked').textContent = 'ran';</script>
<script>document.getElementById('unmarked').textContent = 'ran';</script>
<script nonce="abc">document.getElementById('forged').textContent = 'ran';</script>
<script nonce="{{portcullis-nonce}}" src="/app.js"></script>
<p id="text">{{portcullis-nonce}}</p>
</body></html>
"#;

const APP_JS: &str = "document.getElementById('external').textContent = 'ran';\n";

const JSON: &str = r#"{"html":"<script nonce=\"{{portcullis-nonce}}\"></script>"}"#;

/// Not real gzip: the gateway must pass it on byte for byte, whatever it is.
const GZIP_BYTES: &[u8] =
    b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03<script nonce=\"{{portcullis-nonce}}\">";

/// Bytes of the large page on each side of the pause.
const HALF: usize = 1024 * 1024;

/// A plain HTML application:
///
/// - `/page`: [`PAGE`], with `Content-Length`; `/app.js`: [`APP_JS`];
/// - `/data.json`: [`JSON`]; `/gzip`: HTML labelled `Content-Encoding: gzip`;
/// - `/big`: 2 MiB of HTML with a marked script at both ends, sent in two halves: the
///   second waits until the test has read the first through the gateway;
/// - `/empty`: 204 and `/cached`: 304, both labelled HTML.
#[derive(Clone)]
struct HtmlApp {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Lets `/big` send its second half.
    release: Arc<Notify>,
}

impl HtmlApp {
    async fn start() -> HtmlApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let app = HtmlApp {
            addr: listener.local_addr().expect("address"),
            seen: Arc::default(),
            release: Arc::new(Notify::new()),
        };
        let state = app.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.handle(req)) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        app
    }

    fn seen(&self, path: &str) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|s| s.uri.starts_with(path))
            .cloned()
            .unwrap_or_else(|| panic!("the upstream saw no request for {path}"))
    }

    fn handle(&self, req: Request<Incoming>) -> Response<TestBody> {
        self.seen.lock().unwrap().push(Seen {
            method: req.method().to_string(),
            uri: req.uri().to_string(),
            headers: req.headers().clone(),
        });
        let (status, content_type, body): (StatusCode, &str, TestBody) = match req.uri().path() {
            "/page" => (StatusCode::OK, "text/html; charset=utf-8", full(PAGE)),
            "/app.js" => (StatusCode::OK, "text/javascript", full(APP_JS)),
            "/data.json" => (StatusCode::OK, "application/json", full(JSON)),
            "/gzip" => {
                let mut res = Response::new(bytes(GZIP_BYTES));
                let h = res.headers_mut();
                h.insert("content-type", "text/html".parse().unwrap());
                h.insert("content-encoding", "gzip".parse().unwrap());
                h.insert("content-length", GZIP_BYTES.len().into());
                return res;
            }
            "/big" => (StatusCode::OK, "text/html", self.big_page()),
            "/empty" => (StatusCode::NO_CONTENT, "text/html", full("")),
            "/cached" => (StatusCode::NOT_MODIFIED, "text/html", full("")),
            _ => (StatusCode::NOT_FOUND, "text/plain", full("not found")),
        };
        let mut res = Response::new(body);
        *res.status_mut() = status;
        res.headers_mut()
            .insert("content-type", content_type.parse().unwrap());
        res.headers_mut()
            .insert("etag", "\"upstream-etag\"".parse().unwrap());
        res
    }

    /// `/big`: the first half at once, the second after [`HtmlApp::release`].
    fn big_page(&self) -> TestBody {
        let (tx, rx) = mpsc::channel::<Bytes>(4);
        let release = self.release.clone();
        tokio::spawn(async move {
            let head = "<!doctype html><script nonce=\"{{portcullis-nonce}}\">first()</script>\n";
            let _ = tx.send(Bytes::from(head)).await;
            for chunk in filler(HALF) {
                let _ = tx.send(chunk).await;
            }
            release.notified().await;
            for chunk in filler(HALF) {
                let _ = tx.send(chunk).await;
            }
            let tail = "<script nonce=\"{{portcullis-nonce}}\">last()</script>\n";
            let _ = tx.send(Bytes::from(tail)).await;
        });
        ChannelBody(rx).boxed()
    }
}

/// `n` bytes of paragraphs, in 16 KiB chunks.
fn filler(n: usize) -> Vec<Bytes> {
    let line = "<p>lorem ipsum dolor sit amet, consectetur adipiscing elit</p>\n";
    let text = line.repeat(n / line.len() + 1);
    Bytes::from(text[..n].to_string())
        .chunks(16 * 1024)
        .map(Bytes::copy_from_slice)
        .collect()
}

fn bytes(b: &'static [u8]) -> TestBody {
    Full::new(Bytes::from_static(b))
        .map_err(|never| match never {})
        .boxed()
}

/// A response body fed by a channel.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = common::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, common::BoxError>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// The gateway in front of the HTML app, with `server_extra` in `[server]`.
async fn gateway(app: &HtmlApp, server_extra: &str, routes: &str) -> Gateway {
    let port = free_port();
    Gateway::start(port, &common::config(port, app.addr, server_extra, routes)).await
}

fn header<'a>(r: &'a Reply, name: &str) -> &'a str {
    r.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header: {:?}", r.headers))
        .to_str()
        .unwrap()
}

/// The response's CSP nonce.
fn nonce_of(r: &Reply) -> String {
    let csp = header(r, "content-security-policy");
    browser::csp_nonce(csp).unwrap_or_else(|| panic!("no nonce in the CSP: {csp}"))
}

/// `Content-Length`, when present, is the body's length.
fn assert_length_fixed(r: &Reply) {
    if let Some(len) = r.headers.get("content-length") {
        assert_eq!(
            len.to_str().unwrap(),
            r.body.len().to_string(),
            "a stale Content-Length"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_marked_scripts_get_the_response_nonce() {
    let app = HtmlApp::start().await;
    let gw = gateway(&app, "", "").await;
    let res = common::get(
        &gw.url("/page"),
        &[
            ("accept", "text/html,application/xhtml+xml,*/*;q=0.8"),
            ("accept-encoding", "gzip, br"),
        ],
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    let nonce = nonce_of(&res);
    let tags = browser::script_tags(&res.text());
    let nonces: Vec<Option<&str>> = tags.iter().map(|(_, n)| n.as_deref()).collect();
    assert_eq!(
        nonces,
        [Some(nonce.as_str()), None, None, Some(nonce.as_str())],
        "{tags:#?}"
    );
    // The marker outside a script's nonce attribute is left as it was.
    assert!(
        res.text()
            .contains(r#"<p id="text">{{portcullis-nonce}}</p>"#)
    );
    assert_length_fixed(&res);
    assert_eq!(header(&res, "cache-control"), "no-store");
    assert!(res.headers.get("etag").is_none(), "{:?}", res.headers);
    // The page was asked for uncompressed, so the rewrite could read it.
    assert_eq!(app.seen("/page").headers["accept-encoding"], "identity");

    // A second response has a new nonce.
    let again = common::get(&gw.url("/page"), &[]).await;
    assert_ne!(nonce_of(&again), nonce);
    assert!(again.text().contains(&nonce_of(&again)));
}

/// A form POST is answered with a page too (the form again, with its errors): the upstream
/// is asked for it uncompressed and its marked scripts get the nonce, as for a GET. Asked
/// with the browser's `Accept-Encoding`, a compressing application would send it gzipped and
/// the placeholders would stay.
#[tokio::test(flavor = "multi_thread")]
async fn a_page_answering_a_form_post_is_rewritten_too() {
    let app = HtmlApp::start().await;
    let gw = gateway(&app, "", "").await;
    let req = Request::post(gw.url("/page"))
        .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .header("accept-encoding", "gzip, deflate, br")
        .header("content-type", "application/x-www-form-urlencoded")
        .header("sec-fetch-site", "same-origin")
        .body(full("name="))
        .unwrap();
    let res = common::send(&common::client(), req).await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(app.seen("/page").method, "POST");
    assert_eq!(app.seen("/page").headers["accept-encoding"], "identity");
    let nonce = nonce_of(&res);
    let nonces: Vec<Option<String>> = browser::script_tags(&res.text())
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    assert_eq!(nonces, [Some(nonce.clone()), None, None, Some(nonce)]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configured_placeholder_replaces_the_default() {
    let app = HtmlApp::start().await;
    let gw = gateway(&app, "nonce_placeholder = \"abc\"", "").await;
    let res = common::get(&gw.url("/page"), &[]).await;
    let nonce = nonce_of(&res);
    let nonces: Vec<Option<String>> = browser::script_tags(&res.text())
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    // Only the script marked `abc` is blessed now; the default marker is not.
    assert_eq!(nonces, [None, None, Some(nonce), None]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_two_mebibyte_page_streams_through_the_rewrite() {
    let app = HtmlApp::start().await;
    let gw = gateway(&app, "", "").await;
    let res = common::client()
        .request(
            Request::get(gw.url("/big"))
                .header("accept", "text/html")
                .body(full(""))
                .unwrap(),
        )
        .await
        .expect("response head");
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().get("content-length").is_none());
    let csp = res.headers()["content-security-policy"].to_str().unwrap();
    let nonce = browser::csp_nonce(csp).expect("a nonce");
    let mut body = res.into_body();
    let mut got = Vec::new();
    // The first half arrives while the upstream still holds back the second.
    let first_half = tokio::time::timeout(Duration::from_secs(10), async {
        while got.len() < HALF {
            let frame = body.frame().await.expect("more body").expect("a frame");
            if let Some(d) = frame.data_ref() {
                got.extend_from_slice(d);
            }
        }
    })
    .await;
    assert!(
        first_half.is_ok(),
        "the first MiB did not arrive before the rest was sent: the page was buffered"
    );
    app.release.notify_one();
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame.expect("the body streams to the end").data_ref() {
            got.extend_from_slice(d);
        }
    }
    let html = String::from_utf8(got).expect("UTF-8");
    let marked = format!(r#"<script nonce="{nonce}">"#);
    assert!(html.starts_with(&format!("<!doctype html>{marked}first()")));
    assert!(html.ends_with(&format!("{marked}last()</script>\n")));
    assert!(html.len() > 2 * HALF);
    assert!(!html.contains("{{portcullis-nonce}}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn json_passes_untouched_with_its_compression_asked_for() {
    let app = HtmlApp::start().await;
    let gw = gateway(&app, "", "").await;
    let res = common::get(
        &gw.url("/data.json"),
        &[("accept", "application/json"), ("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.text(), JSON);
    assert_eq!(header(&res, "etag"), "\"upstream-etag\"");
    assert_length_fixed(&res);
    assert_eq!(app.seen("/data.json").headers["accept-encoding"], "gzip");
}

#[tokio::test(flavor = "multi_thread")]
async fn gzip_encoded_html_passes_untouched_with_a_warning() {
    let app = HtmlApp::start().await;
    let gw = gateway(&app, "", "").await;
    let res = common::get(
        &gw.url("/gzip"),
        &[("accept", "text/html"), ("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(&res.body[..], GZIP_BYTES);
    assert_eq!(header(&res, "content-encoding"), "gzip");
    assert_eq!(header(&res, "content-length"), GZIP_BYTES.len().to_string());
    // The CSP still carries a nonce, which the untouched placeholder does not match.
    nonce_of(&res);
    assert!(
        gw.wait_log("compressed HTML passed through", Duration::from_secs(5))
            .await,
        "{}",
        gw.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn head_gets_the_head_of_a_rewritten_get_and_204_304_pass_untouched() {
    let app = HtmlApp::start().await;
    let gw = gateway(&app, "", "").await;
    let head = common::send(
        &common::client(),
        Request::head(gw.url("/page")).body(full("")).unwrap(),
    )
    .await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    // The GET's body is rewritten, so its length is not the upstream's: HEAD says none, as
    // the GET does, and carries the same no-store.
    let get = common::get(&gw.url("/page"), &[]).await;
    assert!(get.headers.get("content-length").is_none());
    assert!(head.headers.get("content-length").is_none());
    assert!(head.headers.get("etag").is_none());
    assert_eq!(
        header(&head, "cache-control"),
        header(&get, "cache-control")
    );
    nonce_of(&head);
    for (path, status) in [
        ("/empty", StatusCode::NO_CONTENT),
        ("/cached", StatusCode::NOT_MODIFIED),
    ] {
        let res = common::get(&gw.url(path), &[("if-none-match", "\"upstream-etag\"")]).await;
        assert_eq!(res.status, status, "{path}");
        assert!(res.body.is_empty(), "{path}");
        assert_eq!(header(&res, "etag"), "\"upstream-etag\"", "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_without_csp_is_not_rewritten() {
    let app = HtmlApp::start().await;
    let gw = gateway(&app, "", "[[route]]\npath = \"/page\"\ncsp = false\n").await;
    let res = common::get(&gw.url("/page"), &[]).await;
    assert!(res.headers.get("content-security-policy").is_none());
    assert_eq!(res.text(), PAGE);
    assert_eq!(header(&res, "content-length"), PAGE.len().to_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn nextjs_mode_sends_the_response_csp_on_the_upstream_request() {
    let app = HtmlApp::start().await;
    let gw = gateway(&app, "upstream_kind = \"nextjs\"", "").await;
    let res = common::get(
        &gw.url("/page"),
        &[
            ("content-security-policy", "script-src * 'unsafe-inline'"),
            ("content-security-policy-report-only", "script-src *"),
            ("x-nonce", "forged-by-the-client"),
        ],
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    let seen = app.seen("/page");
    let csp = header(&res, "content-security-policy");
    assert_eq!(seen.headers["content-security-policy"], csp);
    assert_eq!(
        seen.headers
            .get_all("content-security-policy")
            .iter()
            .count(),
        1
    );
    assert!(
        seen.headers
            .get("content-security-policy-report-only")
            .is_none()
    );
    assert_eq!(seen.headers["x-nonce"], nonce_of(&res).as_str());
    // Next.js writes its own nonces: the HTML passes as the upstream sent it.
    assert_eq!(res.text(), PAGE);
    assert_eq!(header(&res, "cache-control"), "no-store");

    // Each request its own nonce, on both sides.
    let again = common::get(&gw.url("/page"), &[]).await;
    assert_ne!(nonce_of(&again), nonce_of(&res));
    assert_eq!(
        app.seen("/page").headers["x-nonce"],
        nonce_of(&again).as_str()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nextjs_mode_uses_the_routes_own_csp_and_sends_none_where_it_is_off() {
    let app = HtmlApp::start().await;
    let routes = "[[route]]\npath = \"/page\"\ncsp = \"script-src 'self' 'nonce'; object-src 'none'\"\n\
                  [[route]]\npath = \"/data.json\"\ncsp = false\n";
    let gw = gateway(&app, "upstream_kind = \"nextjs\"", routes).await;
    let res = common::get(&gw.url("/page"), &[]).await;
    let nonce = nonce_of(&res);
    assert_eq!(
        header(&res, "content-security-policy"),
        format!("script-src 'self' 'nonce-{nonce}'; object-src 'none'")
    );
    assert_eq!(
        app.seen("/page").headers["content-security-policy"],
        header(&res, "content-security-policy")
    );

    let res = common::get(
        &gw.url("/data.json"),
        &[
            ("content-security-policy", "script-src *"),
            ("x-nonce", "x"),
        ],
    )
    .await;
    assert!(res.headers.get("content-security-policy").is_none());
    let seen = app.seen("/data.json");
    assert!(seen.headers.get("content-security-policy").is_none());
    assert!(seen.headers.get("x-nonce").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn in_chromium_only_the_marked_scripts_run() {
    let app = HtmlApp::start().await;
    let gw = gateway(&app, "", "").await;
    let url = gw.url("/page");
    let report = tokio::task::spawn_blocking(move || {
        browser::probe(&serde_json::json!({
            "url": url,
            "read": ["#marked", "#unmarked", "#forged", "#external", "#text"],
        }))
    })
    .await
    .expect("the probe thread");
    let csp = report["csp"].as_str().expect("a CSP header");
    let nonce = browser::csp_nonce(csp).expect("a nonce");
    assert_eq!(report["status"], 200, "{report}");
    assert_eq!(report["title"], "nonce-ok", "{report}");
    let text = |sel: &str| report["after"][sel].as_str().unwrap_or("").to_string();
    assert_eq!(text("#marked"), "ran", "{report}");
    assert_eq!(text("#external"), "ran", "{report}");
    assert_eq!(text("#unmarked"), "not run", "{report}");
    assert_eq!(text("#forged"), "not run", "{report}");
    assert_eq!(text("#text"), "{{portcullis-nonce}}");
    // The DOM's scripts: the marked ones carry the response's nonce, the others none.
    let dom_nonces: Vec<&str> = report["scripts"]
        .as_array()
        .expect("scripts")
        .iter()
        .map(|s| s["nonce"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        dom_nonces,
        [nonce.as_str(), "", "", nonce.as_str()],
        "{report}"
    );
    // Exactly the two unmarked inline scripts were blocked.
    let violations = report["violations"].as_array().expect("violations");
    assert_eq!(violations.len(), 2, "{report}");
    for v in violations {
        assert_eq!(v["blocked"], "inline", "{report}");
        assert!(
            v["directive"]
                .as_str()
                .unwrap_or("")
                .starts_with("script-src"),
            "{report}"
        );
    }
}

/// `report_only = ["csp"]` on a route: its CSP goes out as
/// `Content-Security-Policy-Report-Only` (nonce and all, so the page's marked scripts match
/// it), while other routes keep enforcing.
#[tokio::test(flavor = "multi_thread")]
async fn a_route_can_report_its_csp_only() {
    let app = HtmlApp::start().await;
    let routes = "[[route]]\npath = \"/page\"\nreport_only = [\"csp\"]\n";
    let gw = gateway(&app, "", routes).await;
    let res = common::get(&gw.url("/page"), &[("accept", "text/html")]).await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(
        res.headers.get("content-security-policy").is_none(),
        "{:?}",
        res.headers
    );
    let reported = header(&res, "content-security-policy-report-only");
    assert!(reported.starts_with("default-src 'self'"), "{reported}");
    let nonce = browser::csp_nonce(reported).expect("a nonce in the reported CSP");
    let tags = browser::script_tags(&res.text());
    assert_eq!(tags[0].1.as_deref(), Some(nonce.as_str()), "{tags:#?}");
    // Elsewhere the policy is enforced.
    let other = common::get(&gw.url("/data.json"), &[]).await;
    assert!(other.headers.get("content-security-policy").is_some());
    assert!(
        other
            .headers
            .get("content-security-policy-report-only")
            .is_none()
    );
}

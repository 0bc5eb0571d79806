//! The streaming HTML nonce rewrite: which elements get the nonce (only scripts and styles
//! with the placeholder), which lose it (forged ones), chunk boundaries, streaming a 10 MiB
//! page with bounded memory, malformed markup, and the whole path through `SecurityLayer` the
//! way the gateway uses it.

mod common;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body as AxumBody;
use axum::extract::Request;
use axum::middleware::{Next, from_fn};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use common::*;
use http::header::{CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use portcullis::headers::nonce_html::{
    DEFAULT_MARKER, NonceRewriter, prepare_response_headers, rewrite_body, should_rewrite,
};
use portcullis::{Nonce, Preset, SecurityLayer};
use tokio::sync::mpsc;

const P: &str = DEFAULT_MARKER;

/// Rewrites `html` fed in chunks of `size` bytes (0: one chunk).
async fn rewrite_in_chunks(html: &[u8], size: usize, nonce: &Nonce, marker: &str) -> Vec<u8> {
    let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = if size == 0 {
        vec![Ok(Frame::data(Bytes::copy_from_slice(html)))]
    } else {
        html.chunks(size)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect()
    };
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
    let out = rewrite_body(body, nonce, marker)
        .collect()
        .await
        .expect("the rewrite succeeds")
        .to_bytes();
    out.to_vec()
}

async fn rewrite(html: &str, nonce: &Nonce) -> String {
    String::from_utf8(rewrite_in_chunks(html.as_bytes(), 0, nonce, P).await).expect("utf-8")
}

/// The nonce attribute values in `html`, in order (double-quoted, as lol_html writes them).
fn nonces_in(html: &str) -> Vec<String> {
    html.match_indices("nonce=\"")
        .map(|(i, m)| {
            let rest = &html[i + m.len()..];
            rest[..rest.find('"').unwrap_or(rest.len())].to_string()
        })
        .collect()
}

/// A body fed from a channel, so a test decides when input arrives and when it ends.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

// --- which elements get the nonce ---

#[tokio::test]
async fn placeholder_is_replaced_in_scripts_and_styles_whatever_the_spelling() {
    let n = Nonce::generate();
    let real = format!(r#"nonce="{}""#, n.as_str());
    let cases = [
        format!(r#"<script nonce="{P}">a()</script>"#),
        format!(r#"<script nonce='{P}'>a()</script>"#),
        format!(r#"<script nonce={P}>a()</script>"#),
        format!(r#"<script src="/a.js" nonce="{P}" defer></script>"#),
        format!(r#"<script nonce="{P}" type="module" src="/m.js"></script>"#),
        format!(r#"<script type=module nonce = "{P}" async></script>"#),
        format!(r#"<SCRIPT NONCE="{P}">a()</SCRIPT>"#),
        format!(r#"<ScRiPt NoNcE='{P}'>a()</sCrIpT>"#),
        format!("<script\n\tnonce=\"{P}\"\n>a()</script>"),
        format!(r#"<style nonce="{P}">p {{ color: red }}</style>"#),
        format!(r#"<STYLE media="screen" NONCE={P}>p{{}}</STYLE>"#),
        format!(r#"<svg><script nonce="{P}">a()</script></svg>"#),
    ];
    for html in cases {
        let out = rewrite(&html, &n).await;
        assert_eq!(out.matches(&real).count(), 1, "{html} -> {out}");
        assert!(!out.contains(P), "{html} -> {out}");
        assert_eq!(
            out.to_ascii_lowercase().matches("nonce").count(),
            1,
            "{out}"
        );
    }
}

#[tokio::test]
async fn other_attributes_and_content_survive_the_rewrite() {
    let n = Nonce::generate();
    let html = format!(
        r#"<!doctype html><html><head><script src="/a.js" nonce="{P}" integrity="sha384-x" crossorigin></script></head><body><p class=x>é ✓</p></body></html>"#
    );
    let out = rewrite(&html, &n).await;
    assert_eq!(
        out,
        format!(
            r#"<!doctype html><html><head><script src="/a.js" integrity="sha384-x" crossorigin nonce="{}"></script></head><body><p class=x>é ✓</p></body></html>"#,
            n.as_str()
        )
    );
}

#[tokio::test]
async fn scripts_without_the_placeholder_are_untouched() {
    let n = Nonce::generate();
    let html =
        r#"<script>inline()</script><script src="/b.js"></script><style>p{}</style><p>hi</p>"#;
    assert_eq!(rewrite(html, &n).await, html);
}

#[tokio::test]
async fn forged_nonces_are_removed() {
    let n = Nonce::generate();
    let cases = [
        (
            r#"<script nonce="guess">evil()</script>"#,
            "<script>evil()</script>",
        ),
        (
            r#"<script nonce='a' src=x></script>"#,
            "<script src=x></script>",
        ),
        (
            r#"<SCRIPT NONCE=guess>e()</SCRIPT>"#,
            "<SCRIPT>e()</SCRIPT>",
        ),
        (r#"<style nonce="guess">p{}</style>"#, "<style>p{}</style>"),
        ("<script nonce>e()</script>", "<script>e()</script>"),
        // Near misses of the marker are forgeries too.
        (
            r#"<script nonce=" {{portcullis-nonce}}">e()</script>"#,
            "<script>e()</script>",
        ),
        (
            r#"<script nonce="{{PORTCULLIS-NONCE}}">e()</script>"#,
            "<script>e()</script>",
        ),
        (
            r#"<script nonce="&#123;&#123;portcullis-nonce}}">e()</script>"#,
            "<script>e()</script>",
        ),
    ];
    for (html, want) in cases {
        assert_eq!(rewrite(html, &n).await, want, "{html}");
    }
    // Even a forged copy of the real nonce goes: only the placeholder is trusted.
    let copied = format!(r#"<script nonce="{}">e()</script>"#, n.as_str());
    assert_eq!(rewrite(&copied, &n).await, "<script>e()</script>");
}

#[tokio::test]
async fn the_marker_elsewhere_is_never_replaced_by_the_nonce() {
    let n = Nonce::generate();
    let html = format!(
        r#"<p>{P}</p><div data-x="{P}" title='{P}'></div><!-- {P} --><img nonce="{P}" src=a.png><script>var m = "{P}";</script><textarea><script nonce="{P}"></script></textarea><iframe srcdoc="<script nonce='{P}'></script>"></iframe><template><p>{P}</p></template>"#
    );
    let out = rewrite(&html, &n).await;
    assert_eq!(out, html, "nothing here is a nonce a CSP or Vite reads");
    assert!(!out.contains(n.as_str()));
}

/// A CSP nonce covers `<link>` too (stylesheets, preloads), and Vite's `html.cspNonce`
/// hands the nonce to its runtime in `<meta property="csp-nonce">`: both get it where marked.
/// Another nonce on a link goes, as on a script; one on a meta is the application's own.
#[tokio::test]
async fn marked_links_and_vites_nonce_meta_get_the_nonce() {
    let n = Nonce::generate();
    let html = format!(
        r#"<meta property="csp-nonce" nonce="{P}"><LINK rel="modulepreload" href="/m.js" nonce="{P}"><link rel=stylesheet nonce="forged" href=a.css><meta name="x" nonce="app-own"><link rel=stylesheet href=b.css>"#
    );
    let out = rewrite(&html, &n).await;
    assert_eq!(
        out,
        format!(
            r#"<meta property="csp-nonce" nonce="{0}"><LINK rel="modulepreload" href="/m.js" nonce="{0}"><link rel=stylesheet href=a.css><meta name="x" nonce="app-own"><link rel=stylesheet href=b.css>"#,
            n.as_str()
        )
    );
}

#[tokio::test]
async fn a_custom_marker_replaces_only_itself() {
    let n = Nonce::generate();
    let html = format!(r#"<script nonce="[[app-7f3a]]"></script><script nonce="{P}"></script>"#);
    let out = rewrite_in_chunks(html.as_bytes(), 0, &n, "[[app-7f3a]]").await;
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!(
            r#"<script nonce="{}"></script><script></script>"#,
            n.as_str()
        )
    );
}

// --- chunking and streaming ---

#[tokio::test]
async fn a_placeholder_split_across_one_byte_chunks_is_replaced() {
    let n = Nonce::generate();
    let html = format!(
        r#"<!doctype html><title>t</title><script src="/a.js" nonce="{P}"></script><p>text {P}</p><style nonce='{P}'>p{{}}</style><script nonce="forged">x</script>"#
    );
    let whole = rewrite_in_chunks(html.as_bytes(), 0, &n, P).await;
    for size in [1, 2, 3, 7, 16] {
        let chunked = rewrite_in_chunks(html.as_bytes(), size, &n, P).await;
        assert_eq!(chunked, whole, "chunks of {size}");
    }
    let out = String::from_utf8(whole).unwrap();
    assert_eq!(nonces_in(&out), [n.as_str(), n.as_str()]);
    assert!(out.contains(&format!("<p>text {P}</p>")));
}

#[tokio::test]
async fn a_10_mib_page_streams_out_before_its_input_ends() {
    const CHUNK: usize = 64 * 1024;
    const TOTAL: usize = 10 * 1024 * 1024;
    let n = Nonce::generate();
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let mut body = std::pin::pin!(rewrite_body(ChannelBody(rx), &n, P));

    // Each chunk: filler text and one placeholder script, so tags straddle chunk edges.
    let piece = format!(
        r#"<p>{}</p><script nonce="{P}">f()</script>"#,
        "x".repeat(997)
    );
    let mut input = Vec::with_capacity(TOTAL + CHUNK);
    while input.len() < TOTAL {
        input.extend_from_slice(piece.as_bytes());
    }
    let placeholders = input.len() / piece.len();

    let mut out = Vec::with_capacity(input.len() * 2);
    let mut largest_frame = 0;
    for chunk in input.chunks(CHUNK) {
        tx.send(Bytes::copy_from_slice(chunk)).await.expect("send");
        // Output for this chunk arrives while the input is still open.
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("output arrives before the input ends")
            .expect("a frame")
            .expect("no error");
        let data = frame.into_data().expect("data");
        largest_frame = largest_frame.max(data.len());
        out.extend_from_slice(&data);
    }
    let before_end = out.len();
    assert!(
        before_end + 2 * piece.len() >= input.len(),
        "only {before_end} of {} bytes came out before the end",
        input.len()
    );
    drop(tx);
    while let Some(frame) = body.frame().await {
        out.extend_from_slice(&frame.expect("no error").into_data().expect("data"));
    }
    // Every frame is about one input chunk: nothing piles up.
    assert!(
        largest_frame < CHUNK * 2,
        "a frame of {largest_frame} bytes"
    );
    let out = String::from_utf8(out).expect("utf-8");
    assert_eq!(out.matches(n.as_str()).count(), placeholders);
    assert!(!out.contains(P));
}

#[tokio::test]
async fn a_tag_over_the_memory_limit_lets_the_rest_pass_unchanged() {
    let n = Nonce::generate();
    let huge = "a".repeat(300 * 1024);
    let html = format!(
        r#"<script nonce="{P}">one()</script><script title="{huge}" nonce="{P}">two()</script><script nonce="{P}">three()</script><script nonce="forged"></script>"#
    );
    let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = html
        .as_bytes()
        .chunks(8 * 1024)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let body = NonceRewriter::default().memory_limit(64 * 1024).rewrite(
        http_body_util::StreamBody::new(futures_util::stream::iter(chunks)),
        &n,
    );
    let out = String::from_utf8(body.collect().await.expect("no error").to_bytes().to_vec())
        .expect("utf-8");
    // Before the limit: rewritten. After it: the page as it came, so the later placeholder
    // stays a placeholder (blocked by the CSP), never the nonce.
    assert!(out.starts_with(&format!(r#"<script nonce="{}">one()</script>"#, n.as_str())));
    assert!(out.ends_with(&format!(
        r#"<script title="{huge}" nonce="{P}">two()</script><script nonce="{P}">three()</script><script nonce="forged"></script>"#
    )));
    assert_eq!(out.matches(n.as_str()).count(), 1);
}

// --- robustness ---

#[tokio::test]
async fn malformed_html_does_not_panic() {
    let n = Nonce::generate();
    let cases: Vec<Vec<u8>> = vec![
        b"<script nonce=".to_vec(),
        b"<script nonce=\"{{portcullis-nonce}}".to_vec(),
        b"<script nonce='{{portcullis-nonce}}'".to_vec(),
        b"</script><script></style><style nonce=\"x\"".to_vec(),
        b"<<<>>><!-- <script nonce=\"{{portcullis-nonce}}\"> -->".to_vec(),
        b"<select><xmp><script nonce=\"{{portcullis-nonce}}\">x</script></select>".to_vec(),
        b"<svg><style nonce=\"{{portcullis-nonce}}\">a{}</style><math><mi><script nonce=a></script>".to_vec(),
        b"<table><script nonce=\"{{portcullis-nonce}}\"></script><tr><td><style nonce=b>".to_vec(),
        b"<!doctype><![CDATA[<script nonce=\"{{portcullis-nonce}}\">]]>".to_vec(),
        b"<plaintext><script nonce=\"{{portcullis-nonce}}\"></script>".to_vec(),
        b"<script\0 nonce\0=\"{{portcullis-nonce}}\">\xff\xfe</script>".to_vec(),
        b"\xef\xbb\xbf<script nonce=\"{{portcullis-nonce}}\"></script>".to_vec(),
        b"\xff\xfe<\0s\0c\0r\0i\0p\0t\0>\0".to_vec(),
        b"<script nonce=\"{{portcullis-nonce}}\"/><p>after".to_vec(),
        b"<script nonce=\"{{portcullis-nonce}}\" nonce=\"{{portcullis-nonce}}\">".to_vec(),
        Vec::new(),
    ];
    // Plus pseudo-random soup of markup-ish bytes.
    let alphabet = b"<>/=\"' \nscriptnoce{}-!?&;\0\xff";
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut soups = Vec::new();
    for _ in 0..200 {
        let len = (seed % 300) as usize;
        let mut s = Vec::with_capacity(len);
        for _ in 0..len {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            s.push(alphabet[(seed >> 33) as usize % alphabet.len()]);
        }
        soups.push(s);
    }
    for html in cases.iter().chain(&soups) {
        for size in [0, 1, 5] {
            let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = if size == 0 {
                vec![Ok(Frame::data(Bytes::copy_from_slice(html)))]
            } else {
                html.chunks(size)
                    .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                    .collect()
            };
            let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
            // Whatever comes out, no panic; errors are allowed but none is expected.
            let out = rewrite_body(body, &n, P).collect().await;
            assert!(out.is_ok(), "{:?}", String::from_utf8_lossy(html));
        }
    }
}

#[tokio::test]
async fn inline_svg_and_select_pages_rewrite_without_errors() {
    let n = Nonce::generate();
    let html = format!(
        r#"<svg viewBox="0 0 10 10"><style>circle{{fill:red}}</style><circle r=5 /></svg><select><option>a</option></select><math><mi>x</mi></math><script nonce="{P}">ok()</script>"#
    );
    let out = rewrite(&html, &n).await;
    assert_eq!(nonces_in(&out), [n.as_str()]);
}

// --- non-HTML ---

#[test]
fn non_html_is_left_to_pass_through() {
    let mut h = http::HeaderMap::new();
    for ct in [
        "application/json",
        "text/plain",
        "text/css",
        "image/svg+xml",
        "application/javascript",
    ] {
        h.insert(CONTENT_TYPE, ct.parse().unwrap());
        assert!(!should_rewrite(&h), "{ct}");
    }
    h.remove(CONTENT_TYPE);
    assert!(!should_rewrite(&h), "no content type");
    h.insert(CONTENT_TYPE, "text/html".parse().unwrap());
    h.insert(CONTENT_ENCODING, "br".parse().unwrap());
    assert!(!should_rewrite(&h), "compressed HTML passes through");
}

// --- end to end through SecurityLayer ---

/// What the gateway does with an upstream response: rewrite HTML with the request's nonce.
async fn nonce_rewrite(req: Request, next: Next) -> Response {
    let nonce = req.extensions().get::<Nonce>().cloned();
    let res = next.run(req).await;
    match nonce {
        Some(nonce) if should_rewrite(res.headers()) => {
            let (mut parts, body) = res.into_parts();
            prepare_response_headers(&mut parts.headers);
            Response::from_parts(parts, AxumBody::new(rewrite_body(body, &nonce, P)))
        }
        _ => res,
    }
}

fn upstream_page() -> String {
    format!(
        r#"<!doctype html><html><head><style nonce="{P}">body{{margin:0}}</style><script src="/app.js" nonce="{P}"></script></head><body><p>{P}</p><script nonce="injected">alert(1)</script><script>legacy()</script></body></html>"#
    )
}

fn app() -> Router {
    Router::new()
        .route("/page", get(|| async { Html(upstream_page()) }))
        .route(
            "/cached-page",
            get(|| async {
                (
                    [(CACHE_CONTROL, "public, max-age=600")],
                    Html(upstream_page()),
                )
                    .into_response()
            }),
        )
        .route(
            "/api/data",
            get(|| async {
                (
                    [(CONTENT_TYPE, "application/json")],
                    format!(r#"{{"html":"<script nonce=\"{P}\"></script>"}}"#),
                )
            }),
        )
        .route(
            "/gzip-page",
            get(|| async {
                (
                    [(CONTENT_TYPE, "text/html"), (CONTENT_ENCODING, "gzip")],
                    Bytes::from_static(b"\x1f\x8b not really gzip {{portcullis-nonce}}"),
                )
            }),
        )
        .layer(from_fn(nonce_rewrite))
}

/// The nonce in a CSP header value.
fn nonce_in_csp(csp: &str) -> String {
    let start = csp.find("'nonce-").expect("a nonce source") + "'nonce-".len();
    let len = csp[start..].find('\'').expect("closing quote");
    csp[start..start + len].to_string()
}

#[tokio::test]
async fn through_the_security_layer_the_page_nonce_matches_the_csp() {
    let addr = serve_with(app(), SecurityLayer::new(Preset::Public)).await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let r = fetch(addr, "/page").await;
        assert_eq!(r.status, 200);
        let csp = r.header("content-security-policy").expect("a CSP");
        let nonce = nonce_in_csp(csp);
        let page = r.text();
        assert_eq!(nonces_in(&page), [nonce.as_str(), nonce.as_str()], "{page}");
        assert!(
            page.contains(&format!("<p>{P}</p>")),
            "text keeps the marker"
        );
        assert!(
            page.contains("<script>alert(1)</script>"),
            "forged nonce removed"
        );
        assert!(page.contains("<script>legacy()</script>"));
        assert_eq!(r.header("cache-control"), Some("no-store"));
        assert!(r.headers.get(CONTENT_LENGTH).is_none());
        seen.push(nonce);
    }
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 3, "a fresh nonce per response");

    let r = fetch(addr, "/cached-page").await;
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(nonces_in(&r.text()).len(), 2);
}

#[tokio::test]
async fn through_the_security_layer_non_html_and_compressed_html_pass_untouched() {
    let addr = serve_with(app(), SecurityLayer::new(Preset::Public)).await;
    let r = fetch(addr, "/api/data").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.text(),
        format!(r#"{{"html":"<script nonce=\"{P}\"></script>"}}"#)
    );
    let r = fetch(addr, "/gzip-page").await;
    assert_eq!(
        r.body,
        Bytes::from_static(b"\x1f\x8b not really gzip {{portcullis-nonce}}")
    );
    assert_eq!(r.header("content-encoding"), Some("gzip"));
}

#[tokio::test]
async fn a_full_body_rewrites_like_a_streamed_one() {
    let n = Nonce::generate();
    let html = upstream_page();
    let full = rewrite_body(Full::new(Bytes::from(html.clone())), &n, P)
        .collect()
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(full, rewrite_in_chunks(html.as_bytes(), 3, &n, P).await);
}

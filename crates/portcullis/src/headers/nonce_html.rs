//! The streaming HTML nonce rewrite, for applications that cannot read the nonce themselves.
//!
//! The application marks the scripts and styles it vouches for with a placeholder nonce,
//! `nonce="{{portcullis-nonce}}"` ([`DEFAULT_MARKER`], or a marker of its own); each response
//! then gets the response's real [`Nonce`] in exactly those places, and nowhere else:
//!
//! - `<script>`, `<style>`, `<link>` (stylesheets and preloads, which a CSP nonce covers too)
//!   and `<meta>` (Vite's `html.cspNonce` hands the nonce to its runtime in
//!   `<meta property="csp-nonce">`) whose (first) `nonce` attribute is exactly the marker: the
//!   value becomes the real nonce;
//! - `<script>`, `<style>` or `<link>` with any other `nonce` value: the attribute is
//!   **removed**, so an injected `<script nonce="guess">` can never run, whatever it guessed;
//! - those without `nonce`, a `<meta>` with another `nonce`, and every other element, text,
//!   comment or attribute (including the marker written anywhere else): left exactly as they
//!   are. The real nonce is only ever written into the `nonce` attribute of those four
//!   elements.
//!
//! Nonce-ing *every* script instead would bless injected ones and defeat the CSP
//! (shared/DESIGN.md §4).
//!
//! The rewrite streams: [`NonceBody`] feeds each chunk of the upstream body to
//! [`lol_html`]'s `Send` rewriter and hands on whatever it emits, so a 10 MiB page is never
//! held in memory. lol_html buffers only a start tag that spans chunks; its memory is capped
//! ([`DEFAULT_MEMORY_LIMIT`], 1 MiB). A page that goes over the cap (a single tag of more than
//! 1 MiB) is not cut short: the rest of it passes through untouched, with a warning, which
//! fails closed — placeholders left in the rest do not match the CSP nonce, so those scripts
//! are blocked, never blessed.
//!
//! Parsing is non-strict: where markup is ambiguous without a DOM (such as `<select><xmp>`),
//! lol_html guesses instead of aborting the page. A wrong guess can only cause a placeholder
//! script to stay blocked, or a nonce to be written into something the browser reads as text:
//! it never puts a nonce on an element the application did not mark.
//!
//! **Choose your own marker.** The default marker is public; anyone who can inject markup into
//! the page can write it too. Where injection is a concern (that is what the CSP is for),
//! configure a marker that is specific to your deployment, kept out of user-visible content.
//!
//! # Use in a proxy
//!
//! ```
//! use bytes::Bytes;
//! use http::{HeaderMap, Response};
//! use http_body_util::{BodyExt, Full};
//! use portcullis::Nonce;
//! use portcullis::headers::nonce_html::{self, DEFAULT_MARKER};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! // The upstream's response, and the nonce the SecurityLayer put in the request extensions.
//! let upstream = Response::builder()
//!     .header("content-type", "text/html; charset=utf-8")
//!     .header("content-length", "95")
//!     .body(Full::new(Bytes::from_static(
//!         br#"<script nonce="{{portcullis-nonce}}">app()</script><script nonce="guess">evil()</script>"#,
//!     )))
//!     .unwrap();
//! let nonce = Nonce::generate();
//!
//! let (mut parts, body) = upstream.into_parts();
//! assert!(nonce_html::should_rewrite(&parts.headers));
//! nonce_html::prepare_response_headers(&mut parts.headers);
//! let body = nonce_html::rewrite_body(body, &nonce, DEFAULT_MARKER);
//!
//! let html = body.collect().await.unwrap().to_bytes();
//! assert_eq!(
//!     html,
//!     format!(r#"<script nonce="{}">app()</script><script>evil()</script>"#, nonce.as_str())
//! );
//! assert!(parts.headers.get("content-length").is_none());
//! assert_eq!(parts.headers["cache-control"], "no-store");
//! # });
//! ```
//!
//! # Compressed responses
//!
//! The rewrite reads plain HTML only; it does not decode. A proxy should ask the upstream for
//! `Accept-Encoding: identity` on routes that may return HTML. A compressed HTML response that
//! arrives anyway is passed through untouched ([`should_rewrite`] says `false` and logs a
//! warning): its placeholders stay, do not match the nonce, and those scripts are blocked, so
//! the failure is visible and safe.

use std::borrow::Cow;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use encoding_rs::Encoding;
use http::HeaderMap;
use http::header::{self, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use lol_html::errors::RewritingError;
use lol_html::send::{Element, HtmlRewriter, Settings};
use lol_html::{
    AsciiCompatibleEncoding, ElementContentHandlers, MemorySettings, OutputSink, Selector,
};

use crate::headers::csp::Nonce;

/// Errors of a rewritten body: the upstream body's own, or the rewriter's.
///
/// ```
/// use portcullis::headers::nonce_html::BoxError;
/// let e: BoxError = "upstream connection reset".into();
/// assert_eq!(e.to_string(), "upstream connection reset");
/// ```
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The default placeholder value of a script's or style's `nonce` attribute.
///
/// ```
/// assert_eq!(portcullis::headers::nonce_html::DEFAULT_MARKER, "{{portcullis-nonce}}");
/// ```
pub const DEFAULT_MARKER: &str = "{{portcullis-nonce}}";

/// The default cap on the rewriter's own buffers, per response: 1 MiB.
///
/// ```
/// assert_eq!(portcullis::headers::nonce_html::DEFAULT_MEMORY_LIMIT, 1 << 20);
/// ```
pub const DEFAULT_MEMORY_LIMIT: usize = 1 << 20;

/// The longest marker accepted.
const MAX_MARKER: usize = 64;

/// Elements a CSP nonce applies to, and `<meta>` (where Vite's `html.cspNonce` hands the
/// nonce to its runtime), when they carry a `nonce` attribute (names match in any case, as
/// in HTML).
static NONCED: LazyLock<Selector> = LazyLock::new(|| {
    "script[nonce], style[nonce], link[nonce], meta[nonce]"
        .parse()
        .expect("a valid selector (checked by unit tests)")
});

/// Why a marker was refused.
///
/// ```
/// use portcullis::headers::nonce_html::NonceRewriter;
/// let err = NonceRewriter::new("").unwrap_err();
/// assert_eq!(err.to_string(), r#"nonce marker "": must be 1 to 64 visible ASCII characters without quotes, < > or &"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkerError {
    /// The marker as given.
    pub marker: String,
}

impl fmt::Display for MarkerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "nonce marker {:?}: must be 1 to {MAX_MARKER} visible ASCII characters without quotes, < > or &",
            self.marker
        )
    }
}

impl std::error::Error for MarkerError {}

/// The rewrite's settings: the marker, the document's character encoding and the memory cap.
/// Build one at start-up and call [`rewrite`](NonceRewriter::rewrite) per response.
///
/// ```
/// use portcullis::headers::nonce_html::NonceRewriter;
/// let rewriter = NonceRewriter::new("{{my-app-nonce-7f3a}}")?.memory_limit(256 * 1024);
/// assert_eq!(rewriter.marker(), "{{my-app-nonce-7f3a}}");
/// # Ok::<(), portcullis::headers::nonce_html::MarkerError>(())
/// ```
#[derive(Debug, Clone)]
pub struct NonceRewriter {
    /// `None`: no marker matches, every script and style nonce is removed.
    marker: Option<Arc<str>>,
    encoding: AsciiCompatibleEncoding,
    memory_limit: usize,
}

impl Default for NonceRewriter {
    /// The [`DEFAULT_MARKER`], UTF-8 and [`DEFAULT_MEMORY_LIMIT`].
    ///
    /// ```
    /// use portcullis::headers::nonce_html::{NonceRewriter, DEFAULT_MARKER};
    /// assert_eq!(NonceRewriter::default().marker(), DEFAULT_MARKER);
    /// ```
    fn default() -> Self {
        NonceRewriter {
            marker: Some(Arc::from(DEFAULT_MARKER)),
            encoding: AsciiCompatibleEncoding::utf_8(),
            memory_limit: DEFAULT_MEMORY_LIMIT,
        }
    }
}

impl NonceRewriter {
    /// A rewriter for `marker`: 1 to 64 visible ASCII characters without quotes, `<`, `>` or
    /// `&` (the same rule as the gateway's `nonce_placeholder`). An empty marker would bless
    /// every injected `<script nonce>`, hence the check.
    ///
    /// ```
    /// use portcullis::headers::nonce_html::NonceRewriter;
    /// assert!(NonceRewriter::new("{{portcullis-nonce}}").is_ok());
    /// assert!(NonceRewriter::new("has space").is_err());
    /// assert!(NonceRewriter::new("\"quoted\"").is_err());
    /// ```
    pub fn new(marker: &str) -> Result<NonceRewriter, MarkerError> {
        let ok = !marker.is_empty()
            && marker.len() <= MAX_MARKER
            && marker
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"\"'<>&".contains(&b));
        if !ok {
            return Err(MarkerError {
                marker: marker.to_string(),
            });
        }
        Ok(NonceRewriter {
            marker: Some(Arc::from(marker)),
            ..NonceRewriter::default()
        })
    }

    /// A rewriter that matches no marker: every script and style nonce is removed. What
    /// [`rewrite_body`] falls back to when given an invalid marker.
    fn blessing_nothing() -> NonceRewriter {
        NonceRewriter {
            marker: None,
            ..NonceRewriter::default()
        }
    }

    /// The marker (empty for the fallback that matches none).
    ///
    /// ```
    /// use portcullis::headers::nonce_html::NonceRewriter;
    /// assert_eq!(NonceRewriter::new("[[n]]").unwrap().marker(), "[[n]]");
    /// ```
    pub fn marker(&self) -> &str {
        self.marker.as_deref().unwrap_or("")
    }

    /// Caps the rewriter's own buffers per response (default [`DEFAULT_MEMORY_LIMIT`]).
    /// Past the cap the rest of the page passes through untouched (see the module docs).
    ///
    /// ```
    /// use portcullis::headers::nonce_html::NonceRewriter;
    /// let r = NonceRewriter::default().memory_limit(64 * 1024);
    /// ```
    #[must_use]
    pub fn memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = bytes;
        self
    }

    /// Reads the document's encoding from the response's `Content-Type` charset. UTF-8 (the
    /// default) when there is none or it is unknown; tags and nonces are ASCII, so this only
    /// matters for how attribute bytes are read and re-written.
    ///
    /// ```
    /// use http::HeaderMap;
    /// use portcullis::headers::nonce_html::NonceRewriter;
    /// let mut h = HeaderMap::new();
    /// h.insert("content-type", "text/html; charset=Shift_JIS".parse().unwrap());
    /// let r = NonceRewriter::default().charset_from(&h);
    /// ```
    #[must_use]
    pub fn charset_from(mut self, headers: &HeaderMap) -> Self {
        if let Some(enc) = charset(headers).and_then(AsciiCompatibleEncoding::new) {
            self.encoding = enc;
        }
        self
    }

    /// Wraps `body` so that it streams out rewritten with `nonce`.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, Full};
    /// use portcullis::Nonce;
    /// use portcullis::headers::nonce_html::NonceRewriter;
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let rewriter = NonceRewriter::new("[[nonce]]").unwrap();
    /// let nonce = Nonce::generate();
    /// let page = Full::new(Bytes::from_static(b"<style nonce='[[nonce]]'>p{}</style>"));
    /// let out = rewriter.rewrite(page, &nonce).collect().await.unwrap().to_bytes();
    /// assert_eq!(out, format!(r#"<style nonce="{}">p{{}}</style>"#, nonce.as_str()));
    /// # });
    /// ```
    pub fn rewrite<B>(&self, body: B, nonce: &Nonce) -> NonceBody<B> {
        let out = Arc::new(Mutex::new(BytesMut::new()));
        let marker = self.marker.clone();
        let nonce = nonce.clone();
        let handler = move |el: &mut Element<'_, '_>| {
            place_nonce(el, marker.as_deref(), &nonce);
            Ok(())
        };
        let settings = Settings::new_send()
            .append_element_content_handler((
                Cow::Borrowed(&*NONCED),
                ElementContentHandlers::default().element(handler),
            ))
            .with_encoding(self.encoding)
            .with_strict(false)
            .with_memory_settings(
                MemorySettings::new()
                    .with_max_allowed_memory_usage(self.memory_limit)
                    .with_graceful_bail_out_on_memory_limit_exceeded(true),
            );
        let rewriter = HtmlRewriter::new(settings, Sink(out.clone()));
        NonceBody {
            inner: body,
            state: Mutex::new(State::Rewriting(Box::new(rewriter))),
            out,
            trailers: None,
        }
    }
}

/// The rule, for one `<script nonce>`, `<style nonce>`, `<link nonce>` or `<meta nonce>`
/// start tag.
fn place_nonce(el: &mut Element<'_, '_>, marker: Option<&str>, nonce: &Nonce) {
    // Browsers read the first of duplicate attributes; so does `get_attribute`.
    let marked = el
        .get_attribute("nonce")
        .is_some_and(|v| marker.is_some_and(|m| v == m));
    if !marked && el.tag_name().eq_ignore_ascii_case("meta") {
        // No CSP reads a meta's nonce: another value is the application's own business.
        return;
    }
    // Removes every `nonce` attribute, duplicates included.
    el.remove_attribute("nonce");
    if marked {
        // The name is a valid attribute name, so this cannot fail.
        let _ = el.set_attribute("nonce", nonce.as_str());
    }
}

/// Rewrites an HTML body so the scripts and styles that carry `marker` get `nonce`; see the
/// module docs for the rule. The result streams chunk by chunk.
///
/// An invalid marker (see [`NonceRewriter::new`]) is logged and matches nothing: every script
/// and style nonce is then removed, which blocks them rather than bless anything.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use portcullis::Nonce;
/// use portcullis::headers::nonce_html::{rewrite_body, DEFAULT_MARKER};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let nonce = Nonce::generate();
/// let page = Full::new(Bytes::from_static(
///     b"<SCRIPT NONCE={{portcullis-nonce}} src=/app.js></SCRIPT><p>{{portcullis-nonce}}</p>",
/// ));
/// let out = rewrite_body(page, &nonce, DEFAULT_MARKER).collect().await.unwrap().to_bytes();
/// // The marker in the text is left alone; only the script's attribute gets the nonce.
/// assert_eq!(
///     out,
///     format!(r#"<SCRIPT src=/app.js nonce="{}"></SCRIPT><p>{{{{portcullis-nonce}}}}</p>"#, nonce.as_str())
/// );
/// # });
/// ```
pub fn rewrite_body<B>(body: B, nonce: &Nonce, marker: &str) -> NonceBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let rewriter = NonceRewriter::new(marker).unwrap_or_else(|e| {
        tracing::error!(error = %e, "invalid nonce marker: removing every script and style nonce");
        NonceRewriter::blessing_nothing()
    });
    rewriter.rewrite(body, nonce)
}

/// True when a response with these headers is HTML the rewrite can read: `Content-Type`
/// `text/html` or `application/xhtml+xml` (any case, any parameters), no `Content-Encoding`
/// other than `identity`, a charset (if any) that is ASCII-compatible, and not a partial
/// (`Content-Range`) response.
///
/// HTML that is compressed or in UTF-16 is passed through untouched with a warning: its
/// placeholders then stay, and the CSP blocks those scripts (see the module docs).
///
/// ```
/// use http::HeaderMap;
/// use portcullis::headers::nonce_html::should_rewrite;
/// let mut h = HeaderMap::new();
/// h.insert("content-type", "Text/HTML; charset=utf-8".parse().unwrap());
/// assert!(should_rewrite(&h));
/// h.insert("content-encoding", "gzip".parse().unwrap());
/// assert!(!should_rewrite(&h));
/// h.insert("content-type", "application/json".parse().unwrap());
/// h.remove("content-encoding");
/// assert!(!should_rewrite(&h));
/// ```
pub fn should_rewrite(headers: &HeaderMap) -> bool {
    if !is_html(headers) {
        return false;
    }
    let encoded = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .any(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case(b"identity"));
    if encoded {
        tracing::warn!(
            "compressed HTML passed through without the nonce rewrite; ask the upstream for Accept-Encoding: identity"
        );
        return false;
    }
    if charset(headers).is_some_and(|enc| AsciiCompatibleEncoding::new(enc).is_none()) {
        tracing::warn!(
            "HTML in a non-ASCII-compatible charset passed through without the nonce rewrite"
        );
        return false;
    }
    // A byte range of the page: offsets would no longer match, and the fragment is no page.
    !headers.contains_key(header::CONTENT_RANGE)
}

/// Fixes the headers of a response whose body is rewritten: removes `Content-Length` (the
/// length changes), `ETag` and content digests (they describe the upstream's bytes), and sets
/// `Cache-Control: no-store` (nonce'd HTML must never be served twice).
///
/// ```
/// use http::HeaderMap;
/// use portcullis::headers::nonce_html::prepare_response_headers;
/// let mut h = HeaderMap::new();
/// h.insert("content-length", "1234".parse().unwrap());
/// h.insert("cache-control", "public, max-age=600".parse().unwrap());
/// prepare_response_headers(&mut h);
/// assert!(h.get("content-length").is_none());
/// assert_eq!(h["cache-control"], "no-store");
/// ```
pub fn prepare_response_headers(headers: &mut HeaderMap) {
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::ETAG);
    headers.remove("content-digest");
    headers.remove("repr-digest");
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// True when some `Content-Type` value is HTML. With several values, rewriting whenever one
/// is HTML errs on the safe side: rewriting non-HTML blesses nothing.
fn is_html(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONTENT_TYPE)
        .iter()
        .any(|v| html_media_type(v.as_bytes()))
}

/// Whether one `Content-Type` value names HTML (`text/html` or `application/xhtml+xml`, any
/// case, parameters ignored).
pub(crate) fn html_media_type(value: &[u8]) -> bool {
    // Asked of every response the layer decorates: the names are compared at the start of
    // the value (most types differ in their first byte) instead of first splitting it.
    let value = value.trim_ascii_start();
    let is = |name: &[u8]| {
        value.len() >= name.len()
            && value[..name.len()].eq_ignore_ascii_case(name)
            && value[name.len()..]
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                .is_none_or(|&b| b == b';')
    };
    is(b"text/html") || is(b"application/xhtml+xml")
}

/// The encoding named by the `charset` parameter of the (first HTML) `Content-Type`.
fn charset(headers: &HeaderMap) -> Option<&'static Encoding> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    value.split(';').skip(1).find_map(|param| {
        let (name, label) = param.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("charset") {
            return None;
        }
        Encoding::for_label(label.trim().trim_matches('"').as_bytes())
    })
}

/// Collects what lol_html emits until the body hands it on. The lock is never contended: the
/// rewriter writes while the body polls, never at the same time.
struct Sink(Arc<Mutex<BytesMut>>);

impl OutputSink for Sink {
    fn handle_chunk(&mut self, chunk: &[u8]) {
        lock(&self.0).extend_from_slice(chunk);
    }
}

fn lock(out: &Mutex<BytesMut>) -> std::sync::MutexGuard<'_, BytesMut> {
    out.lock().unwrap_or_else(PoisonError::into_inner)
}

enum State {
    Rewriting(Box<HtmlRewriter<'static, Sink>>),
    /// The rewriter gave up (memory cap): the rest goes out as it came.
    Passthrough,
    Done,
}

pin_project_lite::pin_project! {
    /// A body rewritten by [`rewrite_body`] or [`NonceRewriter::rewrite`]: `Send` and `Sync`,
    /// `Data = Bytes`, errors boxed. Each upstream chunk goes through the rewriter and what it
    /// emits is handed on at once; upstream trailers follow the last data.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body::Body;
    /// use http_body_util::Full;
    /// use portcullis::Nonce;
    /// use portcullis::headers::nonce_html::{rewrite_body, NonceBody, DEFAULT_MARKER};
    /// fn is_body<B: Body<Data = Bytes> + Send + Sync + 'static>(_: &B) {}
    /// let body: NonceBody<Full<Bytes>> = rewrite_body(Full::new(Bytes::new()), &Nonce::generate(), DEFAULT_MARKER);
    /// is_body(&body);
    /// ```
    pub struct NonceBody<B> {
        #[pin]
        inner: B,
        // A `Mutex` only to make the body `Sync`; it is reached through `get_mut`, never locked.
        state: Mutex<State>,
        out: Arc<Mutex<BytesMut>>,
        trailers: Option<HeaderMap>,
    }
}

impl<B> fmt::Debug for NonceBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NonceBody").finish_non_exhaustive()
    }
}

impl<B> Body for NonceBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            {
                let mut out = lock(this.out);
                if !out.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(out.split().freeze()))));
                }
            }
            let state = this.state.get_mut().unwrap_or_else(PoisonError::into_inner);
            if matches!(state, State::Done) {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => feed(state, data, this.out)?,
                    Err(frame) => {
                        // Trailers end the body; other frame kinds are not HTML.
                        if let Ok(t) = frame.into_trailers() {
                            *this.trailers = Some(t);
                            finish(state)?;
                        }
                    }
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => finish(state)?,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let done = self
            .state
            .try_lock()
            .is_ok_and(|s| matches!(*s, State::Done));
        done && self.trailers.is_none() && lock(&self.out).is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Writes one upstream chunk to the rewriter (or straight out, after a bail-out).
fn feed(state: &mut State, mut data: impl Buf, out: &Mutex<BytesMut>) -> Result<(), BoxError> {
    while data.has_remaining() {
        let chunk = data.chunk();
        let n = chunk.len();
        match state {
            State::Rewriting(rw) => {
                if let Err(e) = rw.write(chunk) {
                    bail_out(state, e)?;
                }
            }
            State::Passthrough => lock(out).extend_from_slice(chunk),
            State::Done => return Err("nonce rewrite: data after the end of the body".into()),
        }
        data.advance(n);
    }
    Ok(())
}

/// Ends the document: lol_html emits what it still holds.
fn finish(state: &mut State) -> Result<(), BoxError> {
    if let State::Rewriting(rw) = std::mem::replace(state, State::Done)
        && let Err(e) = rw.end()
    {
        bail_out(state, e)?;
        *state = State::Done;
    }
    Ok(())
}

/// After a memory-limit error lol_html has already flushed the unparsed input, untouched, so
/// the page continues as it came. Any other error leaves the output inconsistent: the body
/// fails and the client sees a cut response rather than a wrong one.
fn bail_out(state: &mut State, e: RewritingError) -> Result<(), BoxError> {
    if let RewritingError::MemoryLimitExceeded(_) = e {
        tracing::warn!(
            "nonce rewrite over its memory limit: the rest of the page passes through unchanged"
        );
        *state = State::Passthrough;
        Ok(())
    } else {
        *state = State::Done;
        Err(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Full, StreamBody};

    use super::*;

    /// The same answers as the definition: the part before the first `;`, trimmed, is one
    /// of the two names in any case.
    #[test]
    fn html_media_type_is_the_trimmed_essence_compared() {
        let definition = |v: &[u8]| {
            let essence = v
                .split(|&b| b == b';')
                .next()
                .unwrap_or_default()
                .trim_ascii();
            essence.eq_ignore_ascii_case(b"text/html")
                || essence.eq_ignore_ascii_case(b"application/xhtml+xml")
        };
        let cases: &[&[u8]] = &[
            b"text/html",
            b"TEXT/HTML",
            b" text/html ",
            b"text/html;charset=utf-8",
            b"text/html ; charset=utf-8",
            b"text/html\t;x",
            b"text/htmlx",
            b"text/html x",
            b"text/htm",
            b"text/plain",
            b"application/json",
            b"application/xhtml+xml",
            b"Application/XHTML+XML; q=1",
            b"application/xhtml+xmlx",
            b"",
            b";",
            b" ;text/html",
            b"\x0ctext/html\x0c",
            b"text/html;",
            b"texthtml",
        ];
        for v in cases {
            assert_eq!(
                html_media_type(v),
                definition(v),
                "{:?}",
                String::from_utf8_lossy(v)
            );
        }
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime")
            .block_on(f)
    }

    fn rewrite_with(html: &str, marker: &str, nonce: &Nonce) -> String {
        let body = rewrite_body(Full::new(Bytes::from(html.to_string())), nonce, marker);
        let out = run(body.collect()).expect("rewrites").to_bytes();
        String::from_utf8(out.to_vec()).expect("utf-8")
    }

    fn rewrite(html: &str, nonce: &Nonce) -> String {
        rewrite_with(html, DEFAULT_MARKER, nonce)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn the_selector_parses() {
        let _ = &*NONCED;
    }

    #[test]
    fn placeholder_becomes_the_nonce() {
        let n = Nonce::generate();
        let out = rewrite(r#"<script nonce="{{portcullis-nonce}}">a()</script>"#, &n);
        assert_eq!(
            out,
            format!(r#"<script nonce="{}">a()</script>"#, n.as_str())
        );
    }

    #[test]
    fn forged_and_empty_nonces_are_removed() {
        let n = Nonce::generate();
        assert_eq!(
            rewrite(r#"<script nonce="guess">x()</script>"#, &n),
            "<script>x()</script>"
        );
        assert_eq!(
            rewrite("<style nonce>p{}</style>", &n),
            "<style>p{}</style>"
        );
        assert_eq!(
            rewrite(r#"<script nonce="">x()</script>"#, &n),
            "<script>x()</script>"
        );
    }

    #[test]
    fn the_first_of_duplicate_nonce_attributes_decides() {
        let n = Nonce::generate();
        let out = rewrite(
            r#"<script nonce="guess" nonce="{{portcullis-nonce}}"></script>"#,
            &n,
        );
        assert_eq!(out, "<script></script>");
        let out = rewrite(
            r#"<script nonce="{{portcullis-nonce}}" nonce="guess"></script>"#,
            &n,
        );
        assert_eq!(out, format!(r#"<script nonce="{}"></script>"#, n.as_str()));
    }

    #[test]
    fn an_invalid_marker_blesses_nothing() {
        let n = Nonce::generate();
        let out = rewrite_with(r#"<script nonce="">x()</script>"#, "", &n);
        assert_eq!(out, "<script>x()</script>");
        let out = rewrite_with(r#"<script nonce="a b">x()</script>"#, "a b", &n);
        assert_eq!(out, "<script>x()</script>");
    }

    #[test]
    fn markers_are_validated() {
        assert!(NonceRewriter::new("{{portcullis-nonce}}").is_ok());
        assert!(NonceRewriter::new(&"x".repeat(64)).is_ok());
        for bad in [
            "",
            "a b",
            "a\"b",
            "a'b",
            "<x>",
            "a&b",
            "é",
            "\t",
            &"x".repeat(65),
        ] {
            assert!(NonceRewriter::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn should_rewrite_reads_type_encoding_charset_and_range() {
        assert!(should_rewrite(&headers(&[("content-type", "text/html")])));
        assert!(should_rewrite(&headers(&[(
            "content-type",
            " APPLICATION/XHTML+XML ;charset=UTF-8"
        )])));
        assert!(should_rewrite(&headers(&[
            ("content-type", "text/html"),
            ("content-encoding", "identity")
        ])));
        assert!(should_rewrite(&headers(&[(
            "content-type",
            "text/html; charset=windows-1252"
        )])));
        assert!(!should_rewrite(&headers(&[])));
        assert!(!should_rewrite(&headers(&[("content-type", "text/plain")])));
        assert!(!should_rewrite(&headers(&[("content-type", "text/htmlx")])));
        for enc in ["gzip", "br", "identity, gzip", "zstd"] {
            assert!(
                !should_rewrite(&headers(&[
                    ("content-type", "text/html"),
                    ("content-encoding", enc)
                ])),
                "{enc}"
            );
        }
        assert!(!should_rewrite(&headers(&[(
            "content-type",
            "text/html; charset=\"utf-16le\""
        )])));
        assert!(!should_rewrite(&headers(&[
            ("content-type", "text/html"),
            ("content-range", "bytes 0-99/1000")
        ])));
    }

    #[test]
    fn charset_is_read_from_the_content_type() {
        let h = headers(&[("content-type", "text/html; Charset=\"Shift_JIS\"")]);
        assert_eq!(charset(&h), Some(encoding_rs::SHIFT_JIS));
        assert_eq!(charset(&headers(&[("content-type", "text/html")])), None);
        assert_eq!(
            charset(&headers(&[("content-type", "text/html; charset=nope")])),
            None
        );
    }

    #[test]
    fn a_latin1_page_keeps_its_bytes() {
        let n = Nonce::generate();
        let h = headers(&[("content-type", "text/html; charset=iso-8859-1")]);
        let page: &[u8] =
            b"<p>caf\xe9</p><script title=\"d\xe9j\xe0\" nonce=\"{{portcullis-nonce}}\"></script>";
        let body = NonceRewriter::default()
            .charset_from(&h)
            .rewrite(Full::new(Bytes::from_static(page)), &n);
        let out = run(body.collect()).unwrap().to_bytes();
        let want = [
            &b"<p>caf\xe9</p><script title=\"d\xe9j\xe0\" nonce=\""[..],
            n.as_str().as_bytes(),
            b"\"></script>",
        ]
        .concat();
        assert_eq!(out, want);
    }

    #[test]
    fn trailers_follow_the_rewritten_data() {
        let n = Nonce::generate();
        let mut t = HeaderMap::new();
        t.insert("x-checksum", HeaderValue::from_static("1"));
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(
                b"<script nonce=\"{{portcullis-",
            ))),
            Ok(Frame::data(Bytes::from_static(b"nonce}}\"></script>"))),
            Ok(Frame::trailers(t.clone())),
        ];
        let body = rewrite_body(
            StreamBody::new(futures_util::stream::iter(frames)),
            &n,
            DEFAULT_MARKER,
        );
        let collected = run(body.collect()).unwrap();
        assert_eq!(collected.trailers(), Some(&t));
        assert_eq!(
            collected.to_bytes(),
            format!(r#"<script nonce="{}"></script>"#, n.as_str())
        );
    }

    #[test]
    fn upstream_errors_pass_on() {
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(Bytes::from_static(b"<p>hi"))),
            Err(std::io::Error::other("upstream reset")),
        ];
        let body = rewrite_body(
            StreamBody::new(futures_util::stream::iter(frames)),
            &Nonce::generate(),
            DEFAULT_MARKER,
        );
        let err = run(body.collect()).unwrap_err();
        assert_eq!(err.to_string(), "upstream reset");
    }

    #[test]
    fn an_empty_body_ends_at_once() {
        let body = rewrite_body(Full::new(Bytes::new()), &Nonce::generate(), DEFAULT_MARKER);
        let out = run(body.collect()).unwrap();
        assert!(out.to_bytes().is_empty());
    }

    #[test]
    fn prepare_removes_length_and_validators_and_sets_no_store() {
        let mut h = headers(&[
            ("content-length", "10"),
            ("etag", "\"abc\""),
            ("cache-control", "public"),
            ("content-type", "text/html"),
        ]);
        prepare_response_headers(&mut h);
        assert!(h.get("content-length").is_none());
        assert!(h.get("etag").is_none());
        assert_eq!(h["cache-control"], "no-store");
        assert_eq!(h["content-type"], "text/html");
    }
}

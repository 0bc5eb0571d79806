//! The gateway's own HTTP/1.1 reader and writer for the common request: one without a body.
//!
//! hyper's server costs about a quarter of the gateway's instructions per request: its
//! dispatcher, its body channel, its boxed service future. Most requests to a web application
//! are bodiless GETs, which need none of that, so a connection starts here: each request
//! head is parsed with `httparse` (what hyper itself uses, with hyper's defaults), passed to
//! the same service hyper would call, and its response written back, on the connection's own
//! task. The first request this reader does not serve hands the connection, with every byte
//! read so far, to hyper for the rest of its life, so hyper decides everything unusual
//! exactly as it did before — and answers everything malformed with the same JSON errors
//! (see the `server` module):
//!
//! - a head `httparse` refuses, or longer than the read buffer's cap (a malformed line,
//!   obs-fold, a control byte, more than 100 fields, HTTP/2's preface);
//! - any version but HTTP/1.1, `CONNECT`, a target over [`MAX_TARGET`] bytes or one `http`
//!   cannot parse;
//! - a body or the talk of one: `Transfer-Encoding`, a `Content-Length` other than `0`,
//!   `Expect`;
//! - an upgrade: `Upgrade`, or `Connection: upgrade`.
//!
//! What it writes is what hyper writes: the status line (with a custom reason phrase), the
//! response's fields, the security headers (which the layer leaves to this writer as
//! pre-encoded lines when it can, see `DeferSecurityHeaders`), `date`, and the framing — the response's `Content-Length`, else the
//! body's exact size, else `Transfer-Encoding: chunked` (trailers sent when the client said
//! `TE: trailers`, those the response's `Trailer` names); no body for HEAD, 1xx, 204 and 304. `Connection: close` from the client
//! (or from the response, or a draining server) is answered with `connection: close` and the
//! connection closes after the response. A client that hangs up while its response is
//! awaited cancels the request, as with hyper. A body that fails, or ends short of its
//! `Content-Length`, ends the connection so the client sees the response cut off. A
//! connection's first head must arrive within `header_read_timeout` of its start, a
//! kept-alive connection's next head within `header_read_timeout` of its first byte (the
//! idle time before it is the watchdog's, see `server`); a head begun but not ended by then
//! is answered with the JSON 408 `request_timeout`, audited, and the connection closed.

use std::future::poll_fn;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::Empty;
use hyper::body::Body;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use portcullis::headers::security::DeferredSecurityHeaders;
use portcullis::layer::DeferSecurityHeaders;

use super::{ConnService, ConnState, GatewayBody, Io, TrackedIo};
use crate::proxy::{list_items, te_names_trailers};

/// The longest request target this reader takes; longer ones go to hyper (which refuses
/// those over 64 KiB with 414).
pub const MAX_TARGET: usize = 8 * 1024;
/// How long the 408 for a head past `header_read_timeout` may take to write.
const WRITE_GRACE: Duration = Duration::from_secs(1);
/// The most header fields this reader takes, as hyper (which refuses more with 431).
const MAX_FIELDS: usize = 100;
/// Body data up to this size is copied next to the head and goes out in the same write.
const COALESCE: usize = 16 * 1024;

/// How the connection left this reader.
pub enum Outcome<I> {
    /// It is over: closed by either side, timed out, or broken.
    Done,
    /// A request only hyper serves: hyper takes the connection, starting with these bytes.
    HandOff(TrackedIo<I>, BytesMut),
}

/// Serves the connection's bodiless HTTP/1.1 requests until one needs hyper.
pub async fn serve<I: Io>(
    mut io: TrackedIo<I>,
    service: ConnService,
    state: Arc<ConnState>,
    header_read_timeout: Duration,
    read_cap: usize,
) -> Outcome<I> {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut out = Vec::with_capacity(4 * 1024);
    loop {
        if state.draining.load(Ordering::Acquire) {
            let _ = io.shutdown().await;
            return Outcome::Done;
        }
        // The next head; a slow one has `header_read_timeout` from its first byte.
        let mut deadline = None;
        let head = loop {
            if !buf.is_empty() {
                match parse(&mut buf, read_cap) {
                    Parsed::Simple(head) => break head,
                    Parsed::Other => return Outcome::HandOff(io, buf),
                    Parsed::Partial if buf.len() >= read_cap => {
                        return Outcome::HandOff(io, buf);
                    }
                    Parsed::Partial => {
                        deadline.get_or_insert_with(|| {
                            // The first head counts from the connection's start.
                            let from = if state.requests.load(Ordering::Acquire) == 0 {
                                tokio::time::Instant::from_std(state.started)
                            } else {
                                tokio::time::Instant::now()
                            };
                            from + header_read_timeout
                        });
                    }
                }
            }
            make_room(&mut buf);
            let read = io.read_buf(&mut buf);
            let read = match deadline {
                None => read.await,
                Some(at) => match tokio::time::timeout_at(at, read).await {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::debug!(
                            "request head not received within header_read_timeout: 408, closing"
                        );
                        let mut date = Vec::with_capacity(29);
                        push_date(&mut date);
                        let answer = service.head_timeout_answer(&buf, &date);
                        // A client that reads nothing does not hold the connection longer.
                        let write = async {
                            io.write_all(&answer).await?;
                            io.shutdown().await
                        };
                        let _ = tokio::time::timeout(WRITE_GRACE, write).await;
                        return Outcome::Done;
                    }
                },
            };
            match read {
                Ok(0) | Err(_) => return Outcome::Done,
                Ok(_) => {}
            }
        };
        let Head {
            request,
            close,
            is_head,
            te_trailers,
        } = head;
        // While the response is awaited the socket is still read, as hyper does: a client
        // that hangs up cancels its request (and the upstream exchange with it). Once the
        // client has pipelined something, that waits in the buffer and reading stops.
        let response = service.respond(request);
        tokio::pin!(response);
        let response = loop {
            if !buf.is_empty() {
                break response.await;
            }
            make_room(&mut buf);
            tokio::select! {
                biased;
                response = &mut response => break response,
                read = io.read_buf(&mut buf) => match read {
                    Ok(0) | Err(_) => {
                        tracing::debug!("client closed the connection with a request in flight: cancelled");
                        return Outcome::Done;
                    }
                    Ok(_) => {}
                },
            }
        };
        let close = close || state.draining.load(Ordering::Acquire);
        match write_response(&mut io, &mut out, response, is_head, close, te_trailers).await {
            Ok(true) => {}
            Ok(false) => {
                let _ = io.shutdown().await;
                return Outcome::Done;
            }
            Err(()) => return Outcome::Done,
        }
    }
}

/// A request head this reader serves, and what its response needs to know.
struct Head {
    request: Request<Empty<Bytes>>,
    /// The client asked to close after this response.
    close: bool,
    /// A HEAD request: the response has no body.
    is_head: bool,
    /// The client accepts trailers (`TE: trailers`).
    te_trailers: bool,
}

// One per request, moved once: boxing the head would cost an allocation instead.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    /// A whole head this reader serves, taken off the buffer.
    Simple(Head),
    /// Not a whole head yet.
    Partial,
    /// For hyper to read: the buffer is left as it was.
    Other,
}

/// Parses the head at the start of `buf`; see the module docs for which heads are served.
/// A head longer than `read_cap` (hyper's read buffer) is hyper's to refuse, however it came.
fn parse(buf: &mut BytesMut, read_cap: usize) -> Parsed {
    // Left uninitialised: httparse writes the fields it finds (100 empty ones would be
    // 3 KiB written per request for nothing).
    let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_FIELDS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(buf, &mut fields) {
        Ok(httparse::Status::Complete(len)) if len > read_cap => return Parsed::Other,
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    if parsed.version != Some(1) {
        return Parsed::Other;
    }
    let (Some(method), Some(target)) = (parsed.method, parsed.path) else {
        return Parsed::Other;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Other;
    };
    if method == Method::CONNECT || target.len() > MAX_TARGET {
        return Parsed::Other;
    }
    let (mut close, mut te_trailers) = (false, false);
    // Where the target and each field's value lie in the head, to share its bytes.
    let base = buf.as_ptr() as usize;
    let target_at = target.as_ptr() as usize - base;
    let target_end = target_at + target.len();
    let mut found = Vec::with_capacity(parsed.headers.len());
    for field in parsed.headers.iter() {
        let name = field.name.as_bytes();
        let value = field.value;
        if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
            || (name.eq_ignore_ascii_case(b"content-length") && value != b"0")
        {
            return Parsed::Other;
        }
        if name.eq_ignore_ascii_case(b"connection") {
            for token in list_items(value) {
                if token.eq_ignore_ascii_case(b"upgrade") {
                    return Parsed::Other;
                }
                close |= token.eq_ignore_ascii_case(b"close");
            }
        }
        if name.eq_ignore_ascii_case(b"te") {
            te_trailers |= te_names_trailers(value);
        }
        let Ok(name) = HeaderName::from_bytes(name) else {
            return Parsed::Other;
        };
        let at = value.as_ptr() as usize - base;
        found.push((name, at, at + value.len()));
    }

    let bytes = buf.split_to(len).freeze();
    let Ok(uri) = Uri::from_maybe_shared(bytes.slice(target_at..target_end)) else {
        // Put the head back for hyper, which answers it.
        return restore(buf, bytes);
    };
    // Room for the fields the proxy adds (forwarding, identity) without growing the map.
    let mut headers = HeaderMap::with_capacity(found.len() + 8);
    for (name, at, end) in found {
        match HeaderValue::from_maybe_shared(bytes.slice(at..end)) {
            Ok(value) => {
                headers.append(name, value);
            }
            Err(_) => return restore(buf, bytes),
        }
    }
    let is_head = method == Method::HEAD;
    let mut request = Request::new(Empty::new());
    // This writer writes the security headers itself, from pre-encoded bytes.
    request.extensions_mut().insert(DeferSecurityHeaders);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Parsed::Simple(Head {
        request,
        close,
        is_head,
        te_trailers,
    })
}

/// Puts a head taken off the buffer back in front of it, for hyper.
fn restore(buf: &mut BytesMut, head: Bytes) -> Parsed {
    let mut whole = BytesMut::with_capacity(head.len() + buf.len());
    whole.extend_from_slice(&head);
    whole.extend_from_slice(buf);
    *buf = whole;
    Parsed::Other
}

/// Makes room in the read buffer before a read.
fn make_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(8 * 1024);
    }
}

/// How the response body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    None,
    /// Exactly this many bytes.
    Length(u64),
    Chunked,
}

/// Writes `response`; `Ok(true)` when the connection may take another request.
async fn write_response<I: Io>(
    io: &mut TrackedIo<I>,
    out: &mut Vec<u8>,
    response: Response<GatewayBody>,
    is_head: bool,
    close: bool,
    te_trailers: bool,
) -> Result<bool, ()> {
    let (parts, body) = response.into_parts();
    let ended = body.is_end_stream();
    let (framing, close, trailer_names) =
        response_head(out, &parts, ended, body.size_hint().exact(), is_head, close);

    let mut body = pin!(body);
    let mut sent: u64 = 0;
    let mut trailers = None;
    if framing != Framing::None {
        loop {
            // A frame ready now goes out with what is written already; otherwise that goes
            // out first (the head of a streamed response is not held back).
            let now = body
                .as_mut()
                .poll_frame(&mut Context::from_waker(Waker::noop()));
            let next = match now {
                Poll::Ready(next) => next,
                Poll::Pending => {
                    flush(io, out).await?;
                    poll_fn(|cx| body.as_mut().poll_frame(cx)).await
                }
            };
            let frame = match next {
                None => break,
                Some(Ok(frame)) => frame,
                // The client sees the response cut off.
                Some(Err(_)) => return Err(()),
            };
            let data = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        trailers = Some(t);
                    }
                    continue;
                }
            };
            if data.is_empty() {
                continue;
            }
            sent += data.len() as u64;
            match framing {
                Framing::Length(n) if sent > n => return Err(()),
                Framing::Chunked => {
                    push_hex(out, data.len());
                    out.extend_from_slice(b"\r\n");
                    push_data(io, out, &data).await?;
                    out.extend_from_slice(b"\r\n");
                }
                _ => push_data(io, out, &data).await?,
            }
        }
        match framing {
            Framing::Length(n) if sent != n => {
                flush(io, out).await?;
                return Err(());
            }
            Framing::Chunked => {
                out.extend_from_slice(b"0\r\n");
                // As hyper: only to a client that said `TE: trailers`, only the fields the
                // response's `Trailer` names, never one that frames, routes or authenticates.
                if let Some(trailers) = trailers.filter(|_| te_trailers) {
                    for (name, value) in trailers
                        .iter()
                        .filter(|(n, _)| trailer_names.contains(n) && valid_trailer(n))
                    {
                        out.extend_from_slice(name.as_str().as_bytes());
                        out.extend_from_slice(b": ");
                        out.extend_from_slice(value.as_bytes());
                        out.extend_from_slice(b"\r\n");
                    }
                }
                out.extend_from_slice(b"\r\n");
            }
            _ => {}
        }
    }
    flush(io, out).await?;
    // The body (and with it the request's in-flight count) is dropped on return, once all
    // of it is written.
    Ok(!close)
}

/// Writes the response head into `out` (hyper's rules, proto/h1/role.rs `Server::encode`),
/// for a body that has `ended` or has an `exact` size; returns the body's framing, whether
/// the connection closes after the response, and the fields the response names as trailers.
fn response_head(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    ended: bool,
    exact: Option<u64>,
    is_head: bool,
    mut close: bool,
) -> (Framing, bool, Vec<HeaderName>) {
    let status = parts.status;
    // hyper's rules (proto/h1/role.rs, `Server::encode`): 1xx, 204 and 304 have no length;
    // HEAD keeps the length but has no body.
    let can_length = !(status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED);
    let can_body = can_length && !is_head;
    let exact = if ended { Some(0) } else { exact };
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    match parts.extensions.get::<hyper::ext::ReasonPhrase>() {
        Some(reason) => out.extend_from_slice(reason.as_bytes()),
        None => out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes()),
    }
    out.extend_from_slice(b"\r\n");
    let mut length: Option<u64> = None;
    let mut has_date = false;
    let mut trailer_names: Vec<HeaderName> = Vec::new();
    for (name, value) in &parts.headers {
        if *name == header::TRANSFER_ENCODING {
            continue;
        }
        if *name == header::CONNECTION {
            close |= list_items(value.as_bytes()).any(|t| t.eq_ignore_ascii_case(b"close"));
            continue;
        }
        if *name == header::CONTENT_LENGTH {
            // An ended body's length is 0 whatever the field says (HEAD keeps the field: it
            // is the length a GET would get).
            if !can_length || (ended && !is_head) {
                continue;
            }
            let n = std::str::from_utf8(value.as_bytes())
                .ok()
                .and_then(|v| v.parse::<u64>().ok());
            match (n, length) {
                (Some(n), None) => length = Some(n),
                // The same length twice: written once.
                (Some(n), Some(l)) if n == l => continue,
                // A length that cannot frame the body: the body ends the connection.
                _ => {
                    close = true;
                    continue;
                }
            }
        }
        if *name == header::TRAILER {
            if !can_body {
                continue;
            }
            if let Ok(v) = value.to_str() {
                trailer_names.extend(
                    v.split(',')
                        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok()),
                );
            }
        }
        has_date |= *name == header::DATE;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // The security headers the layer left for this writer (`DeferSecurityHeaders`).
    if let Some(deferred) = parts.extensions.get::<DeferredSecurityHeaders>() {
        deferred.write_to(out);
    }
    let framing = match (length, exact) {
        // The body's own length frames it; the field, when there is one, is as it came (a
        // field that says otherwise ends the connection after the response: never out of
        // step).
        (Some(field), Some(n)) => {
            close |= field != n && can_body;
            Framing::Length(n)
        }
        (Some(n), None) => Framing::Length(n),
        (None, Some(n)) => {
            // An empty body's implicit `content-length: 0` is not for HEAD.
            if can_length && (n > 0 || !is_head) {
                out.extend_from_slice(b"content-length: ");
                push_decimal(out, n);
                out.extend_from_slice(b"\r\n");
            }
            Framing::Length(n)
        }
        (None, None) if can_body => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Framing::Chunked
        }
        (None, None) => Framing::None,
    };
    let framing = if can_body { framing } else { Framing::None };
    if !has_date {
        out.extend_from_slice(b"date: ");
        push_date(out);
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");

    (framing, close, trailer_names)
}

/// Whether a field may be sent as a trailer (hyper's list: not one that frames, routes or
/// authenticates the message).
fn valid_trailer(name: &HeaderName) -> bool {
    !matches!(
        *name,
        header::AUTHORIZATION
            | header::CACHE_CONTROL
            | header::CONTENT_ENCODING
            | header::CONTENT_LENGTH
            | header::CONTENT_RANGE
            | header::CONTENT_TYPE
            | header::HOST
            | header::MAX_FORWARDS
            | header::SET_COOKIE
            | header::TRAILER
            | header::TRANSFER_ENCODING
            | header::TE
    )
}

/// Adds body data: copied after what is pending when small, else written after it.
async fn push_data<I: Io>(
    io: &mut TrackedIo<I>,
    out: &mut Vec<u8>,
    data: &Bytes,
) -> Result<(), ()> {
    if data.len() <= COALESCE {
        out.extend_from_slice(data);
        if out.len() >= 4 * COALESCE {
            flush(io, out).await?;
        }
        return Ok(());
    }
    flush(io, out).await?;
    io.write_all(data).await.map_err(|_| ())
}

/// Writes what is pending.
async fn flush<I: Io>(io: &mut TrackedIo<I>, out: &mut Vec<u8>) -> Result<(), ()> {
    if out.is_empty() {
        return Ok(());
    }
    let res = io.write_all(out).await;
    out.clear();
    res.map_err(|_| ())
}

fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn push_hex(out: &mut Vec<u8>, n: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = HEX[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// The `date` value (IMF-fixdate), formatted once a second per thread.
fn push_date(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, String)> = const { std::cell::RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let _ = DATE.try_with(|date| {
        let mut date = date.borrow_mut();
        if date.0 != secs {
            *date = (secs, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(date.1.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> (Parsed, BytesMut) {
        let mut buf = BytesMut::from(text.as_bytes());
        (parse(&mut buf, 64 * 1024), buf)
    }

    fn simple(text: &str) -> (Head, BytesMut) {
        match parse_text(text) {
            (Parsed::Simple(h), rest) => (h, rest),
            (Parsed::Partial, _) => panic!("partial: {text:?}"),
            (Parsed::Other, _) => panic!("handed to hyper: {text:?}"),
        }
    }

    #[test]
    fn bodiless_http_1_1_requests_are_served_here() {
        let (h, rest) = simple(
            "GET /a/b?c=d HTTP/1.1\r\nHost: app\r\nCookie: x=1\r\ncookie: y=2\r\nContent-Length: 0\r\n\r\nGET /next",
        );
        assert_eq!(h.request.method(), Method::GET);
        assert_eq!(h.request.uri(), "/a/b?c=d");
        assert_eq!(h.request.version(), Version::HTTP_11);
        assert_eq!(h.request.headers()["host"], "app");
        assert_eq!(h.request.headers().get_all("cookie").iter().count(), 2);
        assert_eq!(h.request.headers()["content-length"], "0");
        assert!(!h.close && !h.is_head && !h.te_trailers);
        assert_eq!(&rest[..], b"GET /next", "the pipelined bytes stay");
        let (h, _) =
            simple("HEAD / HTTP/1.1\r\nconnection: keep-alive, Close\r\nte: trailers;q=1\r\n\r\n");
        assert!(h.close && h.is_head && h.te_trailers);
        let (h, _) = simple("OPTIONS * HTTP/1.1\r\nhost: app\r\n\r\n");
        assert_eq!(h.request.uri(), "*");
        let (h, _) = simple("GET http://app.example/x HTTP/1.1\r\nhost: app\r\n\r\n");
        assert_eq!(h.request.uri().host(), Some("app.example"));
    }

    #[test]
    fn everything_else_is_left_to_hyper_untouched() {
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_TARGET));
        let many: String = (0..=MAX_FIELDS).map(|i| format!("x-{i}: 1\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        for text in [
            "POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: 0\r\ncontent-length: 1\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: 00\r\n\r\n",
            "GET / HTTP/1.1\r\nexpect: 100-continue\r\n\r\n",
            "GET /ws HTTP/1.1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
            "GET / HTTP/1.1\r\nconnection: Upgrade\r\n\r\n",
            "GET / HTTP/1.0\r\n\r\n",
            "CONNECT app:443 HTTP/1.1\r\nhost: app:443\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET / HTTP/1.1\r\nbad header\r\n\r\n",
            "GET / HTTP/1.1\r\nx: a\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nx: a\0b\r\n\r\n",
            "GET /a b HTTP/1.1\r\n\r\n",
            &long,
            &many,
        ] {
            let (parsed, rest) = parse_text(text);
            assert!(matches!(parsed, Parsed::Other), "served here: {text:?}");
            assert_eq!(&rest[..], text.as_bytes(), "hyper gets every byte");
        }
        assert!(matches!(
            parse_text("GET / HTTP/1.1\r\nhost: a").0,
            Parsed::Partial
        ));
    }

    #[test]
    fn a_head_put_back_for_hyper_keeps_what_followed_it() {
        let mut buf = BytesMut::from(&b"rest"[..]);
        assert!(matches!(
            restore(&mut buf, Bytes::from_static(b"HEAD\r\n\r\n")),
            Parsed::Other
        ));
        assert_eq!(&buf[..], b"HEAD\r\n\r\nrest");
    }

    /// The head `response_head` writes (the `date` value blanked) and its framing.
    fn head_of(
        status: u16,
        fields: &[(&str, &str)],
        (ended, exact): (bool, Option<u64>),
        is_head: bool,
        close: bool,
    ) -> (String, Framing, bool) {
        let mut res = Response::new(());
        *res.status_mut() = StatusCode::from_u16(status).unwrap();
        for (n, v) in fields {
            res.headers_mut().append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let (parts, ()) = res.into_parts();
        let mut out = Vec::new();
        let (framing, close, _) = response_head(&mut out, &parts, ended, exact, is_head, close);
        let text = String::from_utf8(out).unwrap();
        let text = match text.find("date: ") {
            Some(at) => format!("{}date: D{}", &text[..at], &text[at + 35..]),
            None => text,
        };
        (text, framing, close)
    }

    #[test]
    fn response_heads_follow_hypers_rules() {
        const OPEN: (bool, Option<u64>) = (false, None);
        let x = [("x-request-id", "r1")];
        // A known length is written when the response has none; unknown is chunked.
        assert_eq!(
            head_of(200, &x, (false, Some(5)), false, false),
            (
                "HTTP/1.1 200 OK\r\nx-request-id: r1\r\ncontent-length: 5\r\ndate: D\r\n\r\n"
                    .into(),
                Framing::Length(5),
                false
            )
        );
        assert_eq!(
            head_of(200, &x, OPEN, false, false),
            ("HTTP/1.1 200 OK\r\nx-request-id: r1\r\ntransfer-encoding: chunked\r\ndate: D\r\n\r\n".into(), Framing::Chunked, false)
        );
        // The response's own length frames a body of unknown size; an ended body is 0.
        assert_eq!(
            head_of(200, &[("content-length", "7")], OPEN, false, false).1,
            Framing::Length(7)
        );
        assert_eq!(
            head_of(200, &[("content-length", "7")], (true, None), false, false),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 0\r\ndate: D\r\n\r\n".into(),
                Framing::Length(0),
                false
            )
        );
        // A field that disagrees with the body's size: framed by the body, then closed.
        let (_, framing, close) = head_of(
            200,
            &[("content-length", "7")],
            (false, Some(5)),
            false,
            false,
        );
        assert_eq!((framing, close), (Framing::Length(5), true));
        // HEAD: the length a GET would get, no body, no implicit zero.
        assert_eq!(
            head_of(200, &[("content-length", "9")], (true, None), true, false),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 9\r\ndate: D\r\n\r\n".into(),
                Framing::None,
                false
            )
        );
        assert_eq!(
            head_of(404, &[], (false, Some(30)), true, false),
            (
                "HTTP/1.1 404 Not Found\r\ncontent-length: 30\r\ndate: D\r\n\r\n".into(),
                Framing::None,
                false
            )
        );
        assert_eq!(
            head_of(200, &[], (true, None), true, false).0,
            "HTTP/1.1 200 OK\r\ndate: D\r\n\r\n"
        );
        // 204 and 304: no length, no coding, no body.
        for status in [204, 304] {
            let (text, framing, _) = head_of(
                status,
                &[("content-length", "5"), ("etag", "\"v\"")],
                (true, None),
                false,
                false,
            );
            assert!(
                !text.contains("content-length") && !text.contains("transfer-encoding"),
                "{text}"
            );
            assert!(text.contains("etag: \"v\"\r\n"), "{text}");
            assert_eq!(framing, Framing::None);
        }
        // Our framing only: a coding or a Connection field of the response is not passed on.
        let (text, _, close) = head_of(
            200,
            &[("transfer-encoding", "gzip"), ("connection", "close")],
            (false, Some(2)),
            false,
            false,
        );
        assert!(
            !text.contains("transfer-encoding") && text.ends_with("connection: close\r\n\r\n"),
            "{text}"
        );
        assert!(close);
        // A date of the response's own is kept, none added.
        let (text, _, _) = head_of(
            200,
            &[("date", "Mon, 07 Dec 2026 00:00:00 GMT")],
            (true, None),
            false,
            false,
        );
        assert_eq!(text.matches("date: ").count(), 1, "{text}");
        // A client's Connection: close is answered in kind.
        assert!(
            head_of(200, &x, (true, None), false, true)
                .0
                .ends_with("connection: close\r\n\r\n")
        );
    }

    #[test]
    fn deferred_security_headers_follow_the_responses_own_fields() {
        let set = portcullis::headers::security::SecurityHeaders::none()
            .set("x-frame-options", "DENY")
            .unwrap();
        let mut res = Response::new(());
        res.headers_mut()
            .insert("x-request-id", HeaderValue::from_static("r1"));
        let deferred = set.defer(res.headers_mut(), false).unwrap();
        res.extensions_mut().insert(deferred);
        let (parts, ()) = res.into_parts();
        let mut out = Vec::new();
        response_head(&mut out, &parts, true, None, false, false);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\nx-request-id: r1\r\nx-frame-options: DENY\r\ncontent-length: 0\r\n"),
            "{text}"
        );
    }

    #[test]
    fn a_custom_reason_phrase_is_written_as_it_came() {
        let mut res = Response::new(());
        res.extensions_mut()
            .insert(hyper::ext::ReasonPhrase::from_static(b"Fine Thanks"));
        let (parts, ()) = res.into_parts();
        let mut out = Vec::new();
        response_head(&mut out, &parts, true, None, false, false);
        assert!(out.starts_with(b"HTTP/1.1 200 Fine Thanks\r\n"));
    }

    #[test]
    fn numbers_and_dates_are_written_as_http_wants() {
        let mut out = Vec::new();
        push_decimal(&mut out, 0);
        out.push(b' ');
        push_decimal(&mut out, u64::MAX);
        out.push(b' ');
        push_hex(&mut out, 0);
        out.push(b' ');
        push_hex(&mut out, 0x1f40);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "0 18446744073709551615 0 1f40"
        );
        let mut date = Vec::new();
        push_date(&mut date);
        let date = String::from_utf8(date).unwrap();
        assert_eq!(date.len(), 29, "{date}");
        assert!(date.ends_with(" GMT"), "{date}");
        assert!(httpdate::parse_http_date(&date).is_ok(), "{date}");
    }
}

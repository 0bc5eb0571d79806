//! Per-core threading: the upstream exchange of a request without a body, written and read in
//! the request's own task over this thread's keep-alive connections.
//!
//! hyper's client connection runs as a task of its own, fed through a channel: every exchange
//! wakes that task, then the request's, and pays for the channel both ways. A request without
//! a body (most GETs) needs nothing to run beside it, so the gateway writes its head and reads
//! the answer itself: one task, no channel. A request with a body, and an upgrade, keep
//! hyper's connection (`local_pool`), where the answer may come while the body still goes out.
//!
//! The answer is read the way hyper's client reads it (RFC 9112 §6.3), and strictly where a
//! lenient reader would let the upstream put the connection out of step:
//! - 1xx answers other than 101 are skipped; a HEAD request and 1xx, 204 and 304 answers have
//!   no body;
//! - `Transfer-Encoding` whose last coding is `chunked` is a chunked body (any
//!   `Content-Length` beside it is dropped), any other `Transfer-Encoding` a body that ends
//!   when the connection closes; on an HTTP/1.0 answer it is an error;
//! - `Content-Length` must be digits; several values must agree;
//! - neither: the body ends when the connection closes;
//! - chunk-size lines end in CRLF (a bare LF is an error), with at most 16 hex digits and
//!   [`MAX_LINE`] bytes; trailers become a trailers frame;
//! - at most [`MAX_HEAD`] bytes and [`MAX_FIELDS`] fields of head, as hyper's client.
//!
//! A connection goes back to the thread's idle list only when its answer was read to the end
//! as HTTP/1.1 without `Connection: close` and nothing followed it; every other one is closed.

use std::future::poll_fn;
use std::io;
use std::pin::{Pin, pin};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::local_pool::{self, IDLE_H1};
use super::{BoxError, ProxyBody, ProxyInner, SendError, list_items};

/// The longest answer head read (status line and fields), as hyper's client.
pub const MAX_HEAD: usize = 400 * 1024;
/// The most fields in an answer head, or in its trailers, as hyper's client.
pub const MAX_FIELDS: usize = 100;
/// The longest chunk-size line (size and extensions).
pub const MAX_LINE: usize = 4096;
/// Room made in the read buffer before a read.
const READ_CHUNK: usize = 16 * 1024;

/// Why an exchange failed.
#[derive(Debug)]
pub enum Error {
    /// Nothing of the request was written: the connection was closed already.
    Unsent(io::Error),
    /// The request was written, and the connection ended before any of the answer came.
    NoAnswer(Option<io::Error>),
    /// Reading the answer failed part way.
    Read(io::Error),
    /// The answer is not HTTP/1.x the gateway can read.
    Invalid(&'static str),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Unsent(_) => f.write_str("writing the request"),
            Error::NoAnswer(None) => {
                f.write_str("the upstream closed the connection without answering")
            }
            Error::NoAnswer(Some(_)) => f.write_str("the connection broke before an answer"),
            Error::Read(_) => f.write_str("reading the answer"),
            Error::Invalid(why) => write!(f, "invalid answer: {why}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Unsent(e) | Error::NoAnswer(Some(e)) | Error::Read(e) => Some(e),
            Error::NoAnswer(None) | Error::Invalid(_) => None,
        }
    }
}

/// Sends a bodiless request (its head written by `Proxy::write_upstream_head`) over this
/// thread's connections to `proxy`'s upstream and reads the answer's head; the body reads the rest and gives the
/// connection back when it ends.
///
/// A request that never left on a reused connection (the upstream had closed it) goes out on
/// another; a GET, HEAD or OPTIONS whose reused connection died before any answer goes out
/// once more on a new one, the way nginx retries; any other request that may have reached the
/// upstream is never repeated.
pub async fn send(
    proxy: &Arc<ProxyInner>,
    head: &[u8],
    method: &Method,
) -> Result<Response<ProxyBody>, SendError> {
    let replayable = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    let mut fresh_only = false;
    loop {
        let pooled = if fresh_only {
            None
        } else {
            local_pool::checkout(&IDLE_H1, proxy)
        };
        let reused = pooled.is_some();
        let mut conn = match pooled {
            Some(c) => c,
            None => Conn::new(local_pool::open(&proxy.authority, proxy.connect_timeout).await?),
        };
        match conn.exchange(head, method).await {
            Ok(answer) => return Ok(answer.into_response(conn, Arc::downgrade(proxy))),
            Err(e @ Error::Unsent(_)) if reused => {
                tracing::debug!(error = %super::ErrorChain(&e), "reused upstream connection closed; sending the request on another");
            }
            Err(e @ Error::NoAnswer(_)) if reused && replayable => {
                tracing::debug!(error = %super::ErrorChain(&e), "reused upstream connection closed before an answer; sending the request again on a new one");
                fresh_only = true;
            }
            Err(e) => return Err(SendError::Exchange(e)),
        }
    }
}

/// One keep-alive connection to the upstream, with what was read of it and not yet used.
pub struct Conn {
    tcp: TcpStream,
    buf: BytesMut,
}

impl Conn {
    fn new(tcp: TcpStream) -> Conn {
        Conn {
            tcp,
            buf: BytesMut::new(),
        }
    }

    /// Whether the upstream closed this idle connection or sent something unasked. Costs no
    /// system call unless the socket was seen readable.
    pub fn is_closed(&mut self) -> bool {
        if !self.buf.is_empty() {
            return true;
        }
        let mut probe = [0u8; 1];
        !matches!(self.tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Reads more of the connection into the buffer; `Ok(0)` at its end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_CHUNK);
        }
        pin!(self.tcp.read_buf(&mut self.buf)).poll(cx)
    }

    /// Writes the request head and reads the answer's, skipping 1xx answers but 101.
    async fn exchange(&mut self, head: &[u8], method: &Method) -> Result<Head, Error> {
        let mut sent = 0;
        while sent < head.len() {
            match self.tcp.write(&head[sent..]).await {
                Ok(0) if sent == 0 => {
                    return Err(Error::Unsent(io::ErrorKind::WriteZero.into()));
                }
                Ok(0) => return Err(Error::NoAnswer(Some(io::ErrorKind::WriteZero.into()))),
                Ok(n) => sent += n,
                Err(e) if sent == 0 => return Err(Error::Unsent(e)),
                Err(e) => return Err(Error::NoAnswer(Some(e))),
            }
        }
        let mut answered = false;
        loop {
            if !self.buf.is_empty() {
                answered = true;
                match parse_head(&mut self.buf, method)? {
                    Parsed::Head(head) => return Ok(head),
                    Parsed::Informational => continue,
                    Parsed::Partial if self.buf.len() >= MAX_HEAD => {
                        return Err(Error::Invalid("head too large"));
                    }
                    Parsed::Partial => {}
                }
            }
            match poll_fn(|cx| self.poll_fill(cx)).await {
                Ok(0) if answered => return Err(Error::Invalid("closed within the head")),
                Ok(0) => return Err(Error::NoAnswer(None)),
                Ok(_) => {}
                Err(e) if answered => return Err(Error::Read(e)),
                Err(e) => return Err(Error::NoAnswer(Some(e))),
            }
        }
    }
}

/// An answer's head, and how its body is framed.
struct Head {
    response: Response<()>,
    framing: Framing,
    keep_alive: bool,
}

impl Head {
    fn into_response(self, conn: Conn, pool: Weak<ProxyInner>) -> Response<ProxyBody> {
        let mut body = UpstreamBody {
            conn: Some(conn),
            framing: self.framing,
            keep_alive: self.keep_alive,
            pool,
        };
        if matches!(body.framing, Framing::Length(0)) {
            body.finish();
        }
        self.response.map(|()| body.boxed_unsync())
    }
}

enum Parsed {
    Head(Head),
    /// A 1xx answer other than 101, taken off the buffer.
    Informational,
    Partial,
}

/// How an answer's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// After this many more bytes (none: no body).
    Length(u64),
    Chunked(Chunk),
    /// When the connection closes.
    UntilClose,
    /// Read to its end, or broken off.
    Done,
}

/// Where a chunked body's reader stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// At a chunk-size line.
    Size,
    /// Within a chunk's data: this many bytes to go.
    Data(u64),
    /// At the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: the trailer fields and the blank line.
    Trailers,
}

/// Parses an answer head at the start of `buf`, taking it off the buffer when complete.
fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Parsed, Error> {
    // Left uninitialised: httparse writes the fields it finds.
    let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_FIELDS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut fields,
    ) {
        // A read may complete a head past the limit in one go: the limit holds all the same.
        Ok(httparse::Status::Complete(len)) if len > MAX_HEAD => {
            return Err(Error::Invalid("head too large"));
        }
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(Error::Invalid("too many fields")),
        Err(_) => return Err(Error::Invalid("malformed head")),
    };
    let code = parsed.code.unwrap_or_default();
    let status = StatusCode::from_u16(code).map_err(|_| Error::Invalid("bad status code"))?;
    if status.is_informational() && code != 101 {
        buf.advance(len);
        return Ok(Parsed::Informational);
    }
    let version = if parsed.version == Some(1) {
        Version::HTTP_11
    } else {
        Version::HTTP_10
    };
    let reason = parsed
        .reason
        .filter(|r| Some(*r) != status.canonical_reason())
        .map(|r| Bytes::copy_from_slice(r.as_bytes()));
    // Where each field's value lies in the head, to share the head's bytes instead of copying.
    let base = buf.as_ptr() as usize;
    let mut found = Vec::with_capacity(parsed.headers.len());
    for field in parsed.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| Error::Invalid("bad field name"))?;
        let start = field.value.as_ptr() as usize - base;
        found.push((name, start, start + field.value.len()));
    }
    let bytes = buf.split_to(len).freeze();

    // Room for what the layer adds on the way back (its `reserve(16)`: CSP, RateLimit,
    // X-Request-Id, Cache-Control…), so the map is never grown and rehashed per response.
    let mut headers = HeaderMap::with_capacity(found.len() + 16);
    let mut keep_alive = version == Version::HTTP_11;
    let mut chunked = None;
    let mut length: Option<u64> = None;
    for (name, start, end) in found {
        let value = HeaderValue::from_maybe_shared(bytes.slice(start..end))
            .map_err(|_| Error::Invalid("bad field value"))?;
        if name == header::CONNECTION {
            if list_items(value.as_bytes()).any(|t| t.eq_ignore_ascii_case(b"close")) {
                keep_alive = false;
            }
        } else if name == header::TRANSFER_ENCODING {
            // The last coding of the last field decides.
            if let Some(last) = list_items(value.as_bytes()).last() {
                chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
            } else if chunked.is_none() {
                chunked = Some(false);
            }
        } else if name == header::CONTENT_LENGTH {
            for t in list_items(value.as_bytes()) {
                let n = content_length(t).ok_or(Error::Invalid("bad Content-Length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(Error::Invalid("conflicting Content-Length"));
                }
                length = Some(n);
            }
            if length.is_none() {
                return Err(Error::Invalid("bad Content-Length"));
            }
        }
        headers.append(name, value);
    }

    let bodiless = *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless {
        Framing::Length(0)
    } else if let Some(chunked) = chunked {
        if version == Version::HTTP_10 {
            return Err(Error::Invalid("Transfer-Encoding on HTTP/1.0"));
        }
        // The body is decoded and framed anew: the length beside a coding means nothing.
        headers.remove(header::CONTENT_LENGTH);
        if chunked {
            Framing::Chunked(Chunk::Size)
        } else {
            Framing::UntilClose
        }
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    if framing == Framing::UntilClose || code == 101 {
        keep_alive = false;
    }

    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    if let Some(reason) = reason
        && let Ok(reason) = hyper::ext::ReasonPhrase::try_from(reason)
    {
        response.extensions_mut().insert(reason);
    }
    Ok(Parsed::Head(Head {
        response,
        framing,
        keep_alive,
    }))
}

/// A `Content-Length` value: 1 to 19 digits, nothing else.
fn content_length(t: &[u8]) -> Option<u64> {
    if t.is_empty() || t.len() > 19 || !t.iter().all(u8::is_ascii_digit) {
        return None;
    }
    t.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// A chunk-size line without its CRLF: 1 to 16 hex digits, then optional whitespace and
/// `;` extensions of visible characters, spaces, tabs and `"`.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return None;
    }
    let rest = &line[digits..];
    let rest = &rest[rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count()..];
    if !rest.is_empty()
        && (rest[0] != b';'
            || !rest
                .iter()
                .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b)))
    {
        return None;
    }
    let mut n = 0u64;
    for &d in &line[..digits] {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d - b'A' + 10,
        };
        n = (n << 4) | u64::from(v);
    }
    Some(n)
}

fn broken(why: &'static str) -> BoxError {
    Box::new(Error::Invalid(why))
}

/// The upstream's answer body, read off its connection; gives the connection back to the
/// thread's idle list when the answer ends cleanly.
struct UpstreamBody {
    /// `None` once the body ended.
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
    pool: Weak<ProxyInner>,
}

impl UpstreamBody {
    /// The answer is over: the connection goes back if it can serve again.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        if let Some(conn) = self.conn.take()
            && self.keep_alive
            && conn.buf.is_empty()
        {
            local_pool::checkin(&IDLE_H1, &self.pool, conn);
        }
    }

    /// The answer broke off: the connection is closed.
    fn fail(&mut self, e: BoxError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.framing = Framing::Done;
        self.conn = None;
        Poll::Ready(Some(Err(e)))
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let framing = this.framing;
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            // What the buffer holds for this step; `None`: read more first.
            let need_more = match framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(0) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(left) | Framing::Chunked(Chunk::Data(left)) => {
                    if conn.buf.is_empty() {
                        true
                    } else {
                        let n = usize::try_from(left)
                            .unwrap_or(usize::MAX)
                            .min(conn.buf.len());
                        let data = conn.buf.split_to(n).freeze();
                        let left = left - n as u64;
                        if let Framing::Length(_) = framing {
                            this.framing = Framing::Length(left);
                            if left == 0 {
                                this.finish();
                            }
                        } else {
                            this.framing = Framing::Chunked(if left == 0 {
                                Chunk::DataEnd
                            } else {
                                Chunk::Data(left)
                            });
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::UntilClose => {
                    if conn.buf.is_empty() {
                        true
                    } else {
                        let data = conn.buf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::Chunked(Chunk::Size) => match conn.buf[..conn.buf.len().min(MAX_LINE + 2)]
                    .iter()
                    .position(|&b| b == b'\n')
                {
                    Some(lf) => {
                        if lf == 0 || conn.buf[lf - 1] != b'\r' {
                            return this.fail(broken("chunk-size line not ended by CRLF"));
                        }
                        let Some(size) = chunk_size(&conn.buf[..lf - 1]) else {
                            return this.fail(broken("bad chunk size"));
                        };
                        conn.buf.advance(lf + 1);
                        this.framing = Framing::Chunked(if size == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data(size)
                        });
                        continue;
                    }
                    None if conn.buf.len() > MAX_LINE + 1 => {
                        return this.fail(broken("chunk-size line too long"));
                    }
                    None => true,
                },
                Framing::Chunked(Chunk::DataEnd) => {
                    if conn.buf.len() < 2 {
                        true
                    } else if conn.buf.starts_with(b"\r\n") {
                        conn.buf.advance(2);
                        this.framing = Framing::Chunked(Chunk::Size);
                        continue;
                    } else {
                        return this.fail(broken("chunk data not followed by CRLF"));
                    }
                }
                Framing::Chunked(Chunk::Trailers) => {
                    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
                    match httparse::parse_headers(&conn.buf, &mut fields) {
                        Ok(httparse::Status::Complete((len, fields))) => {
                            let mut trailers = HeaderMap::new();
                            for f in fields.iter() {
                                match (
                                    HeaderName::from_bytes(f.name.as_bytes()),
                                    HeaderValue::from_bytes(f.value),
                                ) {
                                    (Ok(n), Ok(v)) => {
                                        trailers.append(n, v);
                                    }
                                    _ => return this.fail(broken("bad trailer field")),
                                }
                            }
                            conn.buf.advance(len);
                            this.finish();
                            if trailers.is_empty() {
                                return Poll::Ready(None);
                            }
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        Ok(httparse::Status::Partial) if conn.buf.len() <= MAX_HEAD => true,
                        _ => return this.fail(broken("bad trailers")),
                    }
                }
            };
            debug_assert!(need_more);
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if this.framing == Framing::UntilClose => {
                    this.framing = Framing::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(broken("connection closed within the body")),
                Ok(_) => {}
                Err(e) => return this.fail(Box::new(Error::Read(e))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done | Framing::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str, method: Method) -> Result<Parsed, Error> {
        parse_head(&mut BytesMut::from(text.as_bytes()), &method)
    }

    fn framing(text: &str) -> (Framing, bool, HeaderMap) {
        match head(text, Method::GET) {
            Ok(Parsed::Head(h)) => (h.framing, h.keep_alive, h.response.headers().clone()),
            Ok(Parsed::Informational) => panic!("informational: {text:?}"),
            Ok(Parsed::Partial) => panic!("partial: {text:?}"),
            Err(e) => panic!("{e}: {text:?}"),
        }
    }

    fn invalid(text: &str) -> String {
        match head(text, Method::GET) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted: {text:?}"),
        }
    }

    #[test]
    fn bodies_are_framed_as_rfc_9112_says() {
        let (f, ka, _) = framing("HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n");
        assert_eq!((f, ka), (Framing::Length(12), true));
        let (f, ka, h) = framing(
            "HTTP/1.1 200 OK\r\ncontent-length: 12\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
        );
        assert_eq!((f, ka), (Framing::Chunked(Chunk::Size), true));
        assert!(
            !h.contains_key(header::CONTENT_LENGTH),
            "the length beside a coding is dropped"
        );
        let (f, ka, _) = framing("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n");
        assert_eq!((f, ka), (Framing::UntilClose, false));
        let (f, ka, _) = framing("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!((f, ka), (Framing::UntilClose, false));
        let (f, ka, _) =
            framing("HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\ncontent-length: 3\r\n\r\n");
        assert_eq!((f, ka), (Framing::Length(3), true));
        let (_, ka, _) = framing(
            "HTTP/1.1 200 OK\r\nconnection: keep-alive, Close\r\ncontent-length: 0\r\n\r\n",
        );
        assert!(!ka);
        let (_, ka, _) = framing("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n");
        assert!(!ka, "HTTP/1.0 answers close");
        for bodiless in ["204 No Content", "304 Not Modified"] {
            let (f, _, _) = framing(&format!("HTTP/1.1 {bodiless}\r\ncontent-length: 9\r\n\r\n"));
            assert_eq!(f, Framing::Length(0));
        }
        match head("HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", Method::HEAD) {
            Ok(Parsed::Head(h)) => {
                assert_eq!(h.framing, Framing::Length(0));
                assert_eq!(h.response.headers()[header::CONTENT_LENGTH], "9");
            }
            _ => panic!("HEAD answer not parsed"),
        }
        let (f, ka, _) = framing("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n");
        assert_eq!((f, ka), (Framing::Length(0), false));
    }

    #[test]
    fn ambiguous_lengths_and_bad_heads_are_refused() {
        assert!(
            invalid("HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n")
                .contains("conflicting")
        );
        assert!(invalid("HTTP/1.1 200 OK\r\ncontent-length: 3, 4\r\n\r\n").contains("conflicting"));
        for bad in ["+3", "-1", "0x10", "3 4", "", "99999999999999999999"] {
            assert!(
                invalid(&format!("HTTP/1.1 200 OK\r\ncontent-length: {bad}\r\n\r\n"))
                    .contains("Content-Length"),
                "{bad:?}"
            );
        }
        assert!(
            invalid("HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").contains("HTTP/1.0")
        );
        assert!(invalid("HTTP/1.1 200 OK\r\nbad field\r\n\r\n").contains("malformed"));
        assert!(invalid("HTTP/1.1 200 OK\r\n folded\r\n\r\n").contains("malformed"));
        assert!(invalid("HTTP/2.0 200 OK\r\n\r\n").contains("malformed"));
        assert!(invalid("HTTP/1.1 099 Low\r\n\r\n").contains("status"));
        let many: String = (0..=MAX_FIELDS).map(|i| format!("x-{i}: 1\r\n")).collect();
        assert!(invalid(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")).contains("too many"));
    }

    #[test]
    fn informational_answers_are_skipped_and_partial_heads_wait() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\n"[..],
        );
        assert!(matches!(
            parse_head(&mut buf, &Method::GET),
            Ok(Parsed::Informational)
        ));
        assert_eq!(&buf[..], b"HTTP/1.1 200 OK\r\n");
        assert!(matches!(
            parse_head(&mut buf, &Method::GET),
            Ok(Parsed::Partial)
        ));
    }

    #[test]
    fn a_custom_reason_phrase_is_kept_and_values_share_the_head() {
        let Ok(Parsed::Head(h)) = head(
            "HTTP/1.1 200 Fine Thanks\r\nx-a: b\r\ncontent-length: 0\r\n\r\n",
            Method::GET,
        ) else {
            panic!("not parsed");
        };
        let reason = h
            .response
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .expect("the reason");
        assert_eq!(reason.as_bytes(), b"Fine Thanks");
        assert_eq!(h.response.headers()["x-a"], "b");
        let Ok(Parsed::Head(h)) = head("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", Method::GET)
        else {
            panic!("not parsed");
        };
        assert!(
            h.response
                .extensions()
                .get::<hyper::ext::ReasonPhrase>()
                .is_none()
        );
    }

    #[test]
    fn chunk_sizes_are_hex_with_optional_extensions() {
        assert_eq!(chunk_size(b"1a"), Some(26));
        assert_eq!(chunk_size(b"FF;name=value"), Some(255));
        assert_eq!(chunk_size(b"10 ; ext=\"quoted\""), Some(16));
        assert_eq!(chunk_size(b"ffffffffffffffff"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"g",
            b"-1",
            b"1 2",
            b"11111111111111111",
            b"a;\x01",
            b"a\r",
            b";x",
        ] {
            assert_eq!(chunk_size(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn content_lengths_are_plain_digits() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b"18446744073709551615"), None, "20 digits");
        assert_eq!(
            content_length(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        assert_eq!(content_length(b"1_0"), None);
    }
}

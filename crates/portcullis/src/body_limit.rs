//! Streaming body limit and content-type allowlist.
//!
//! A declared `Content-Length` over the limit is refused with 413 before a byte is read. A body
//! without one (chunked, or HTTP/2 data frames) is counted as it streams and cut with an error
//! the moment the count passes the limit; the layer then answers 413 whatever the handler made
//! of the error. `Content-Length` is never trusted to be the whole story: a body that sends
//! more than it declared is cut too.
//!
//! ```
//! use portcullis::body_limit::check_declared_length;
//! let mut h = http::HeaderMap::new();
//! h.insert("content-length", "2048".parse().unwrap());
//! assert!(check_declared_length(&h, 1024).is_err());
//! assert!(check_declared_length(&h, 4096).is_ok());
//! ```

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http::header;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::error::Rejection;
use crate::methods::MultipartOverrideScan;

/// The error a [`LimitedBody`] yields once the limit is passed.
///
/// ```
/// use std::sync::{Arc, atomic::AtomicBool};
/// use bytes::Bytes;
/// use http_body_util::{BodyExt, Full};
/// use portcullis::body_limit::{BodyTooLarge, LimitedBody};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let flag = Arc::new(AtomicBool::new(false));
/// let body = LimitedBody::new(Full::new(Bytes::from("0123456789")), 4, flag);
/// let err = body.collect().await.unwrap_err();
/// assert_eq!(err.downcast_ref::<BodyTooLarge>(), Some(&BodyTooLarge { limit: 4 }));
/// assert_eq!(err.to_string(), "request body exceeds the limit of 4 bytes");
/// # });
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyTooLarge {
    /// The limit in bytes.
    pub limit: u64,
}

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "request body exceeds the limit of {} bytes", self.limit)
    }
}

impl std::error::Error for BodyTooLarge {}

/// Refuses a declared `Content-Length` over `limit` (and a malformed one).
///
/// ```
/// use portcullis::body_limit::check_declared_length;
/// let mut h = http::HeaderMap::new();
/// assert!(check_declared_length(&h, 10).is_ok());
/// h.insert("content-length", "11".parse().unwrap());
/// assert_eq!(check_declared_length(&h, 10).unwrap_err().status(), 413);
/// h.insert("content-length", "+5".parse().unwrap());
/// assert_eq!(check_declared_length(&h, 10).unwrap_err().code(), "invalid_content_length");
/// ```
pub fn check_declared_length(headers: &HeaderMap, limit: u64) -> Result<(), Rejection> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = values.next() else {
        return Ok(());
    };
    let parse = |v: &http::HeaderValue| {
        v.to_str()
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok())
    };
    let Some(n) = parse(first) else {
        return Err(bad_length());
    };
    // Differing duplicate lengths are a smuggling attempt.
    for v in values {
        if parse(v) != Some(n) {
            return Err(bad_length());
        }
    }
    if n > limit {
        return Err(Rejection::body_too_large(limit));
    }
    Ok(())
}

fn bad_length() -> Rejection {
    Rejection::new(
        http::StatusCode::BAD_REQUEST,
        "invalid_content_length",
        "Malformed Content-Length",
        crate::audit::AuditAction::InvalidInput,
        crate::error::Control::Body,
    )
}

/// True when the request announces a body (a non-zero length or a transfer coding).
///
/// ```
/// use portcullis::body_limit::has_body;
/// let mut h = http::HeaderMap::new();
/// assert!(!has_body(&h));
/// h.insert("content-length", "0".parse().unwrap());
/// assert!(!has_body(&h));
/// h.insert("transfer-encoding", "chunked".parse().unwrap());
/// assert!(has_body(&h));
/// ```
pub fn has_body(headers: &HeaderMap) -> bool {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return true;
    }
    // `Content-Length: 00` is no body either; an unreadable length counts as a body, so the
    // content-type check is not skipped on a malformed value.
    match headers.get(header::CONTENT_LENGTH) {
        Some(v) => v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) != Some(0),
        None => false,
    }
}

/// Whether every transfer coding the request names is `chunked`: the only one a server
/// decodes (RFC 9112 §6.1). With another (`gzip, chunked`), the body the application gets
/// would still be coded while no header says so: such a request is refused (501).
///
/// ```
/// use portcullis::body_limit::chunked_only;
/// let mut h = http::HeaderMap::new();
/// h.insert("transfer-encoding", "chunked".parse().unwrap());
/// assert!(chunked_only(&h));
/// h.insert("transfer-encoding", "gzip, chunked".parse().unwrap());
/// assert!(!chunked_only(&h));
/// assert!(chunked_only(&http::HeaderMap::new()));
/// ```
pub fn chunked_only(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .all(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Refuses a request body whose content type is not in `allowed` (`type/subtype` or
/// `type/*`, lower-case). Parameters such as `charset` are ignored; a body without a
/// content type, or with several differing ones, is refused.
///
/// ```
/// use portcullis::body_limit::check_content_type;
/// let mut h = http::HeaderMap::new();
/// h.insert("content-type", "application/json; charset=utf-8".parse().unwrap());
/// h.insert("content-length", "2".parse().unwrap());
/// assert!(check_content_type(&h, &["application/json".into()]).is_ok());
/// assert!(check_content_type(&h, &["text/*".into()]).is_err());
/// ```
pub fn check_content_type(headers: &HeaderMap, allowed: &[String]) -> Result<(), Rejection> {
    check_body_content_type(headers, allowed, has_body(headers))
}

/// [`check_content_type`] for a caller that knows better than the headers whether a body
/// comes: an HTTP/2 request may stream one with neither `Content-Length` nor
/// `Transfer-Encoding`, so pass `has_body(headers) || !body.is_end_stream()`.
///
/// ```
/// use portcullis::body_limit::check_body_content_type;
/// let mut h = http::HeaderMap::new();
/// h.insert("content-type", "text/plain".parse().unwrap());
/// let json = ["application/json".to_string()];
/// assert!(check_body_content_type(&h, &json, false).is_ok());
/// assert!(check_body_content_type(&h, &json, true).is_err());
/// ```
pub fn check_body_content_type(
    headers: &HeaderMap,
    allowed: &[String],
    body: bool,
) -> Result<(), Rejection> {
    if !body {
        return Ok(());
    }
    let mut values = headers.get_all(header::CONTENT_TYPE).iter();
    let Some(ct) = values.next().and_then(|v| v.to_str().ok()) else {
        return Err(Rejection::unsupported_media_type());
    };
    // Frameworks disagree on which duplicate wins (first in Node and Go, last or joined
    // elsewhere): checking only the first would let the application parse the second.
    if values.any(|v| v.as_bytes() != ct.as_bytes()) {
        return Err(Rejection::unsupported_media_type());
    }
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let Some((ty, _)) = essence.split_once('/') else {
        return Err(Rejection::unsupported_media_type());
    };
    let ok = allowed.iter().any(|a| match a.strip_suffix("/*") {
        Some(prefix) => prefix == ty,
        None => *a == essence,
    });
    if ok {
        Ok(())
    } else {
        Err(Rejection::unsupported_media_type())
    }
}

pin_project! {
    /// A request body that errors with [`BodyTooLarge`] once more than its limit has streamed
    /// through, and records that it did so the layer can answer 413. Its data is [`Bytes`]
    /// (zero-copy for `Bytes` bodies), so a body the layer had to read first (a form a guard
    /// inspected) can be replayed in its place.
    ///
    /// ```
    /// use std::sync::{Arc, atomic::{AtomicBool, Ordering}};
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, Full};
    /// use portcullis::body_limit::LimitedBody;
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let tripped = Arc::new(AtomicBool::new(false));
    /// let body = LimitedBody::new(Full::new(Bytes::from("0123456789")), 4, tripped.clone());
    /// assert!(body.collect().await.is_err());
    /// assert!(tripped.load(Ordering::Acquire));
    /// # });
    /// ```
    pub struct LimitedBody<B> {
        #[pin]
        inner: Option<B>,
        replay: Option<Bytes>,
        remaining: u64,
        limit: u64,
        tripped: Option<Arc<AtomicBool>>,
        cut: bool,
        // A multipart form read for `_method` as it streams (see `scanning_overrides`).
        scan: Option<Box<OverrideWatch>>,
    }
}

/// A multipart body's `_method` scan, and what it holds back until the verdict.
struct OverrideWatch {
    scan: Box<MultipartOverrideScan>,
    /// Set when a `_method` field names a refused method.
    refused: Arc<AtomicBool>,
    /// Cut the body then (else only note it: report-only).
    cut: bool,
    /// The last data frame, held until the next one or the verdict: the application never
    /// has the whole body before the scan has judged it.
    held: Option<Bytes>,
    /// Trailers that came after the held data.
    trailers: Option<Frame<Bytes>>,
    finished: bool,
}

impl OverrideWatch {
    /// The verdict on the whole body: `Some` error when it must be cut.
    fn conclude(&mut self) -> Option<Box<dyn std::error::Error + Send + Sync>> {
        if self.scan.allows() {
            return None;
        }
        self.refused.store(true, Ordering::Release);
        self.cut.then(|| Box::new(MethodOverrideRefused) as _)
    }
}

/// The error a multipart body ends with when a `_method` field in it names a method the
/// route refuses; the layer answers 405.
#[derive(Debug)]
struct MethodOverrideRefused;

impl std::fmt::Display for MethodOverrideRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the form asks for a method the route does not allow")
    }
}

impl std::error::Error for MethodOverrideRefused {}

impl<B> LimitedBody<B> {
    /// Wraps `inner` with no limit.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, Full};
    /// use portcullis::body_limit::LimitedBody;
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let body = LimitedBody::unlimited(Full::new(Bytes::from(vec![7u8; 100_000])));
    /// assert_eq!(body.collect().await.unwrap().to_bytes().len(), 100_000);
    /// # });
    /// ```
    pub fn unlimited(inner: B) -> Self {
        LimitedBody {
            inner: Some(inner),
            replay: None,
            remaining: u64::MAX,
            limit: u64::MAX,
            tripped: None,
            cut: true,
            scan: None,
        }
    }

    /// Wraps `inner`, cutting it after `limit` bytes and setting `tripped` when it does.
    ///
    /// ```
    /// use std::sync::{Arc, atomic::{AtomicBool, Ordering}};
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, Full};
    /// use portcullis::body_limit::LimitedBody;
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let tripped = Arc::new(AtomicBool::new(false));
    /// let body = LimitedBody::new(Full::new(Bytes::from("hello")), 5, tripped.clone());
    /// // Exactly at the limit: every byte arrives and nothing trips.
    /// assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
    /// assert!(!tripped.load(Ordering::Acquire));
    /// # });
    /// ```
    pub fn new(inner: B, limit: u64, tripped: Arc<AtomicBool>) -> Self {
        LimitedBody {
            inner: Some(inner),
            replay: None,
            remaining: limit,
            limit,
            tripped: Some(tripped),
            cut: true,
            scan: None,
        }
    }

    /// Wraps `inner` for report-only mode: sets `tripped` once more than `limit` bytes have
    /// streamed through, but lets every byte pass.
    ///
    /// ```
    /// use std::sync::{Arc, atomic::{AtomicBool, Ordering}};
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, Full};
    /// use portcullis::body_limit::LimitedBody;
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let tripped = Arc::new(AtomicBool::new(false));
    /// let body = LimitedBody::observing(Full::new(Bytes::from("0123456789")), 4, tripped.clone());
    /// assert_eq!(body.collect().await.unwrap().to_bytes(), "0123456789");
    /// assert!(tripped.load(Ordering::Acquire));
    /// # });
    /// ```
    pub fn observing(inner: B, limit: u64, tripped: Arc<AtomicBool>) -> Self {
        LimitedBody {
            cut: false,
            ..LimitedBody::new(inner, limit, tripped)
        }
    }

    /// Reads the body for a `_method` field as it streams (a multipart form on a route
    /// that refuses some method), holding its last frame back until the verdict: when a field
    /// names a refused method, `refused` is set and, with `cut`, the body ends in an error
    /// before the application has it whole.
    pub(crate) fn scanning_overrides(
        mut self,
        scan: Box<MultipartOverrideScan>,
        refused: Arc<AtomicBool>,
        cut: bool,
    ) -> Self {
        self.scan = Some(Box::new(OverrideWatch {
            scan,
            refused,
            cut,
            held: None,
            trailers: None,
            finished: false,
        }));
        self
    }

    /// A body the layer already read in full (within its limit), replayed as one frame.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body::Body;
    /// use http_body_util::{BodyExt, Empty};
    /// use portcullis::body_limit::LimitedBody;
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let body = LimitedBody::<Empty<Bytes>>::buffered(Bytes::from("csrf_token=abc"));
    /// assert_eq!(body.size_hint().exact(), Some(14));
    /// assert_eq!(body.collect().await.unwrap().to_bytes(), "csrf_token=abc");
    /// # });
    /// ```
    pub fn buffered(bytes: Bytes) -> Self {
        LimitedBody {
            inner: None,
            replay: (!bytes.is_empty()).then_some(bytes),
            remaining: u64::MAX,
            limit: u64::MAX,
            tripped: None,
            cut: true,
            scan: None,
        }
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        if let Some(bytes) = this.replay.take() {
            return Poll::Ready(Some(Ok(Frame::data(bytes))));
        }
        let Some(watch) = this.scan.as_deref_mut() else {
            return poll_limited(
                this.inner,
                cx,
                this.remaining,
                *this.limit,
                this.tripped.as_ref(),
                *this.cut,
            );
        };
        loop {
            if watch.finished {
                return Poll::Ready(watch.trailers.take().map(Ok));
            }
            let polled = ready!(poll_limited(
                this.inner.as_mut(),
                cx,
                this.remaining,
                *this.limit,
                this.tripped.as_ref(),
                *this.cut,
            ));
            match polled {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        watch.scan.feed(&data);
                        if watch.cut && watch.scan.refused() {
                            // Known before the end: the rest need not come.
                            watch.held = None;
                            watch.finished = true;
                            return Poll::Ready(watch.conclude().map(Err));
                        }
                        if let Some(before) = watch.held.replace(data) {
                            return Poll::Ready(Some(Ok(Frame::data(before))));
                        }
                    }
                    Err(trailers) => {
                        watch.trailers = Some(trailers);
                        if let Some(e) = watch.conclude() {
                            watch.finished = true;
                            watch.trailers = None;
                            return Poll::Ready(Some(Err(e)));
                        }
                        watch.finished = true;
                        if let Some(last) = watch.held.take() {
                            return Poll::Ready(Some(Ok(Frame::data(last))));
                        }
                    }
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    watch.finished = true;
                    if let Some(e) = watch.conclude() {
                        return Poll::Ready(Some(Err(e)));
                    }
                    if let Some(last) = watch.held.take() {
                        return Poll::Ready(Some(Ok(Frame::data(last))));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if let Some(watch) = &self.scan {
            return watch.finished && watch.held.is_none() && watch.trailers.is_none();
        }
        self.replay.is_none() && self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let Some(inner) = &self.inner else {
            return SizeHint::with_exact(self.replay.as_ref().map_or(0, |b| b.len() as u64));
        };
        let mut hint = inner.size_hint();
        if self.cut && self.limit != u64::MAX {
            if hint.lower() > self.remaining {
                return hint;
            }
            match hint.upper() {
                Some(u) if u <= self.remaining => {}
                _ => hint.set_upper(self.remaining.saturating_add(1)),
            }
        }
        hint
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The next frame of `inner`, cut (or, without `cut`, only noted in `tripped`) once more than
/// `limit` bytes have come.
fn poll_limited<B>(
    inner: Pin<&mut Option<B>>,
    cx: &mut Context<'_>,
    remaining: &mut u64,
    limit: u64,
    tripped: Option<&Arc<AtomicBool>>,
    cut: bool,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let Some(inner) = inner.as_pin_mut() else {
        return Poll::Ready(None);
    };
    match inner.poll_frame(cx) {
        Poll::Ready(Some(Ok(frame))) => {
            let frame = frame.map_data(|mut d| d.copy_to_bytes(d.remaining()));
            if let Some(data) = frame.data_ref() {
                let n = data.remaining() as u64;
                if n > *remaining {
                    *remaining = 0;
                    if let Some(flag) = tripped {
                        flag.store(true, Ordering::Release);
                    }
                    if cut {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit }))));
                    }
                } else {
                    *remaining -= n;
                }
            }
            Poll::Ready(Some(Ok(frame)))
        }
        Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
        Poll::Ready(None) => Poll::Ready(None),
        Poll::Pending => Poll::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    #[tokio::test]
    async fn chunked_body_is_cut_past_the_limit() {
        let chunks = (0..10).map(|_| {
            Ok::<_, std::convert::Infallible>(Frame::data(bytes::Bytes::from(vec![0u8; 100])))
        });
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        let flag = Arc::new(AtomicBool::new(false));
        let limited = LimitedBody::new(body, 550, flag.clone());
        let Err(err) = limited.collect().await else {
            panic!("must be cut")
        };
        assert!(err.downcast_ref::<BodyTooLarge>().is_some());
        assert!(flag.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn body_at_the_limit_passes() {
        let chunks = (0..5).map(|_| {
            Ok::<_, std::convert::Infallible>(Frame::data(bytes::Bytes::from(vec![0u8; 100])))
        });
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        let flag = Arc::new(AtomicBool::new(false));
        let out = LimitedBody::new(body, 500, flag.clone())
            .collect()
            .await
            .unwrap();
        assert_eq!(out.to_bytes().len(), 500);
        assert!(!flag.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn observing_body_flags_but_passes_every_byte() {
        let chunks = (0..10).map(|_| {
            Ok::<_, std::convert::Infallible>(Frame::data(bytes::Bytes::from(vec![0u8; 100])))
        });
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        let flag = Arc::new(AtomicBool::new(false));
        let out = LimitedBody::observing(body, 550, flag.clone())
            .collect()
            .await
            .unwrap();
        assert_eq!(out.to_bytes().len(), 1000);
        assert!(flag.load(Ordering::Acquire));
    }

    #[test]
    fn zero_length_spelled_otherwise_is_no_body() {
        let allowed = ["application/json".to_string()];
        let mut h = HeaderMap::new();
        h.insert("content-length", "00".parse().unwrap());
        assert!(check_content_type(&h, &allowed).is_ok());
        h.insert("content-length", "x".parse().unwrap());
        assert!(check_content_type(&h, &allowed).is_err());
    }

    #[test]
    fn differing_duplicate_content_types_are_refused() {
        let allowed = ["application/json".to_string()];
        let mut h = HeaderMap::new();
        h.insert("content-length", "2".parse().unwrap());
        h.append("content-type", "application/json".parse().unwrap());
        assert!(check_content_type(&h, &allowed).is_ok());
        h.append("content-type", "application/json".parse().unwrap());
        assert!(check_content_type(&h, &allowed).is_ok());
        h.append("content-type", "text/plain".parse().unwrap());
        assert_eq!(
            check_content_type(&h, &allowed).unwrap_err().status(),
            http::StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }

    #[test]
    fn conflicting_lengths_are_refused() {
        let mut h = HeaderMap::new();
        h.append("content-length", "5".parse().unwrap());
        h.append("content-length", "50".parse().unwrap());
        assert_eq!(check_declared_length(&h, 100).unwrap_err().status(), 400);
        let mut h = HeaderMap::new();
        h.insert("content-length", "+5".parse().unwrap());
        assert!(check_declared_length(&h, 100).is_err());
    }
}

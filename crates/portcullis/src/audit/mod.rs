//! Security events.
//!
//! Every denial and every report-only decision becomes an [`AuditEvent`] handed to an
//! [`AuditSink`] off the request path. Events never hold secrets: no tokens, cookies,
//! passwords or `Authorization` values; the layer only puts in what is listed below, and the
//! [`AuditWriter`] scrubs what slips through ([`redact`]) before anything is stored.
//!
//! The production sink is the [`AuditWriter`]: `record` puts the event on a bounded queue and
//! returns at once; a background task writes batches to an [`AuditStore`] chosen by URL
//! ([`open_store`]: `sqlite://PATH`, `postgres://…`, `jsonl://PATH`, `stdout`). When the store
//! fails, batches go to an append-only [`spool`] file and are replayed, in order, once it
//! answers again; event ids are UUIDv7 and the database stores ignore duplicate ids, so a
//! replay after a crash never counts an event twice.
//!
//! ```
//! use portcullis::audit::{AuditSink, MemorySink};
//! let sink = MemorySink::default();
//! assert!(sink.events().is_empty());
//! ```
//!
//! ```no_run
//! # async fn run() -> Result<(), portcullis::audit::AuditError> {
//! use std::sync::Arc;
//! use portcullis::audit::{AuditWriter, WriterConfig};
//! let writer = AuditWriter::open("sqlite://audit.db", WriterConfig::new("audit-spool")).await?;
//! let layer = portcullis::SecurityLayer::builder().audit(Arc::new(writer.clone()));
//! // ... serve; then, on shutdown:
//! writer.shutdown().await?;
//! # Ok(()) }
//! ```

pub mod jsonl;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "postgres")]
mod postgres_tls;
pub mod query;
pub mod redact;
pub mod spool;
#[cfg(feature = "sqlite")]
pub mod sqlite;
mod store;
pub mod summary;
pub mod writer;

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

pub use query::{AuditQuery, TailCursor};
pub use redact::Redactor;
pub use store::{AuditError, AuditStore, StoreOptions, open_store};
pub use summary::{
    ActionCount, AuditSummary, FOLD_CAP, NamedCount, Offender, Summarizer, SummaryQuery,
};
pub use writer::{AuditCounters, AuditWriter, WriterConfig};

/// What happened, as stored in the `action` column.
///
/// ```
/// use portcullis::audit::AuditAction;
/// assert_eq!(AuditAction::RateLimitExceeded.as_str(), "rate_limit_exceeded");
/// assert_eq!(serde_json::to_string(&AuditAction::Forbidden).unwrap(), r#""forbidden""#);
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// Missing or invalid credentials.
    UnauthorizedAccess,
    /// Valid credentials without the route's roles.
    Forbidden,
    /// A rate limit refused the request.
    RateLimitExceeded,
    /// The CSRF origin check or token failed.
    CsrfValidationFailed,
    /// A malformed request: path, host, content type, lengths.
    InvalidInput,
    /// A method outside the route's allowlist.
    MethodNotAllowed,
    /// A body over the route's limit.
    BodyTooLarge,
    /// The client is banned.
    Banned,
    /// Anything else of note, such as a store failure.
    SecurityEvent,
    /// An allowed request on a route that audits allowed requests.
    RequestAllowed,
}

impl AuditAction {
    /// The action's name in storage.
    ///
    /// ```
    /// use portcullis::audit::AuditAction;
    /// assert_eq!(AuditAction::CsrfValidationFailed.as_str(), "csrf_validation_failed");
    /// assert_eq!(AuditAction::from_name(AuditAction::Banned.as_str()), Some(AuditAction::Banned));
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::UnauthorizedAccess => "unauthorized_access",
            AuditAction::Forbidden => "forbidden",
            AuditAction::RateLimitExceeded => "rate_limit_exceeded",
            AuditAction::CsrfValidationFailed => "csrf_validation_failed",
            AuditAction::InvalidInput => "invalid_input",
            AuditAction::MethodNotAllowed => "method_not_allowed",
            AuditAction::BodyTooLarge => "body_too_large",
            AuditAction::Banned => "banned",
            AuditAction::SecurityEvent => "security_event",
            AuditAction::RequestAllowed => "request_allowed",
        }
    }

    /// Every action, in declaration order.
    ///
    /// ```
    /// use portcullis::audit::AuditAction;
    /// assert_eq!(AuditAction::ALL.len(), 10);
    /// assert!(AuditAction::ALL.iter().all(|a| AuditAction::from_name(a.as_str()) == Some(*a)));
    /// ```
    pub const ALL: [AuditAction; 10] = [
        AuditAction::UnauthorizedAccess,
        AuditAction::Forbidden,
        AuditAction::RateLimitExceeded,
        AuditAction::CsrfValidationFailed,
        AuditAction::InvalidInput,
        AuditAction::MethodNotAllowed,
        AuditAction::BodyTooLarge,
        AuditAction::Banned,
        AuditAction::SecurityEvent,
        AuditAction::RequestAllowed,
    ];

    /// Parses a stored action name.
    ///
    /// ```
    /// use portcullis::audit::AuditAction;
    /// assert_eq!(AuditAction::from_name("forbidden"), Some(AuditAction::Forbidden));
    /// assert_eq!(AuditAction::from_name("nope"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<AuditAction> {
        AuditAction::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

/// The decision recorded.
///
/// ```
/// use portcullis::audit::Outcome;
/// assert_eq!(serde_json::to_string(&Outcome::ReportOnly).unwrap(), r#""report_only""#);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The request was refused.
    Denied,
    /// The request went through.
    Allowed,
    /// A control would have refused, but runs in report-only mode.
    ReportOnly,
}

impl Outcome {
    /// The outcome's name in storage.
    ///
    /// ```
    /// use portcullis::audit::Outcome;
    /// assert_eq!(Outcome::ReportOnly.as_str(), "report_only");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Denied => "denied",
            Outcome::Allowed => "allowed",
            Outcome::ReportOnly => "report_only",
        }
    }

    /// Every outcome, in declaration order.
    ///
    /// ```
    /// use portcullis::audit::Outcome;
    /// assert_eq!(Outcome::ALL.map(Outcome::as_str), ["denied", "allowed", "report_only"]);
    /// ```
    pub const ALL: [Outcome; 3] = [Outcome::Denied, Outcome::Allowed, Outcome::ReportOnly];

    /// Parses a stored outcome name.
    ///
    /// ```
    /// use portcullis::audit::Outcome;
    /// assert_eq!(Outcome::from_name("denied"), Some(Outcome::Denied));
    /// assert_eq!(Outcome::from_name("Denied"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == name)
    }
}

/// One security event: the columns of the `audit_events` table (DESIGN §5).
///
/// Serialized (spool, JSON lines, `audit query --format json`) with the field names below;
/// `ts_ms` is the `ts` column. JSON lines and `audit query --format json` also write `ts` as
/// RFC 3339 ([`AuditEvent::ts_rfc3339`]); reading needs only `ts_ms`.
///
/// ```
/// use portcullis::audit::{AuditAction, AuditEvent, Outcome, now_ms, uuid_v7};
/// let event = AuditEvent {
///     id: uuid_v7(),
///     ts_ms: now_ms(),
///     action: AuditAction::RateLimitExceeded,
///     outcome: Outcome::Denied,
///     principal: None,
///     client_ip: Some("203.0.113.7".into()),
///     method: "GET".into(),
///     route: "/api/**".into(),
///     path: "/api/notes".into(),
///     status: 429,
///     request_id: "req-1".into(),
///     metadata: serde_json::json!({"code": "rate_limited"}),
/// };
/// let json = serde_json::to_value(&event).unwrap();
/// assert_eq!(json["action"], "rate_limit_exceeded");
/// assert_eq!(json["outcome"], "denied");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Event id: a UUIDv7, so ids sort by time and a replayed event keeps its identity.
    pub id: String,
    /// Time in milliseconds since the Unix epoch (the `ts` column).
    pub ts_ms: u64,
    /// What happened.
    pub action: AuditAction,
    /// The decision.
    pub outcome: Outcome,
    /// The principal's id, when authenticated.
    pub principal: Option<String>,
    /// The resolved client address.
    pub client_ip: Option<String>,
    /// The request method.
    pub method: String,
    /// The matched route pattern.
    pub route: String,
    /// The canonical path (never the query string, which may carry secrets).
    pub path: String,
    /// The response status.
    pub status: u16,
    /// The request id.
    pub request_id: String,
    /// Extra facts: the control, the machine code, the reason. Never secrets.
    pub metadata: serde_json::Value,
}

impl AuditEvent {
    /// `ts` as RFC 3339 UTC with milliseconds, e.g. `2026-01-02T03:04:05.678Z`.
    ///
    /// ```
    /// # let event = portcullis::audit::AuditEvent {
    /// #     id: portcullis::audit::uuid_v7(),
    /// #     ts_ms: 1_767_323_045_678,
    /// #     action: portcullis::audit::AuditAction::Forbidden,
    /// #     outcome: portcullis::audit::Outcome::Denied,
    /// #     principal: Some("alice".into()),
    /// #     client_ip: Some("203.0.113.7".into()),
    /// #     method: "POST".into(),
    /// #     route: "/api/admin/**".into(),
    /// #     path: "/api/admin/users".into(),
    /// #     status: 403,
    /// #     request_id: "req-1".into(),
    /// #     metadata: serde_json::json!({"code": "forbidden"}),
    /// # };
    /// assert_eq!(event.ts_ms, 1_767_323_045_678);
    /// assert_eq!(event.ts_rfc3339(), "2026-01-02T03:04:05.678Z");
    /// ```
    pub fn ts_rfc3339(&self) -> String {
        format_rfc3339_ms(self.ts_ms)
    }
}

/// Formats Unix milliseconds as RFC 3339 UTC with milliseconds.
///
/// ```
/// assert_eq!(portcullis::audit::format_rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
/// assert_eq!(portcullis::audit::format_rfc3339_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
/// ```
pub fn format_rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        ms % 1000
    )
}

/// Milliseconds since the Unix epoch, now.
///
/// ```
/// use portcullis::audit::{format_rfc3339_ms, now_ms};
/// let ms = now_ms();
/// assert!(ms > 1_600_000_000_000); // after September 2020
/// assert!(format_rfc3339_ms(ms).ends_with('Z'));
/// ```
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Where events go. `record` must not block: sinks queue and write elsewhere.
///
/// ```
/// use std::sync::{Arc, atomic::{AtomicU64, Ordering}};
/// use portcullis::audit::{AuditEvent, AuditSink};
/// /// Counts events instead of storing them.
/// #[derive(Default)]
/// struct Counter(AtomicU64);
/// impl AuditSink for Counter {
///     fn record(&self, _: AuditEvent) {
///         self.0.fetch_add(1, Ordering::Relaxed);
///     }
/// }
/// let counter = Arc::new(Counter::default());
/// let layer = portcullis::SecurityLayer::builder().audit(counter.clone()).build().unwrap();
/// # let event = portcullis::audit::AuditEvent {
/// #     id: portcullis::audit::uuid_v7(),
/// #     ts_ms: 0,
/// #     action: portcullis::audit::AuditAction::Forbidden,
/// #     outcome: portcullis::audit::Outcome::Denied,
/// #     principal: Some("alice".into()),
/// #     client_ip: Some("203.0.113.7".into()),
/// #     method: "POST".into(),
/// #     route: "/api/admin/**".into(),
/// #     path: "/api/admin/users".into(),
/// #     status: 403,
/// #     request_id: "req-1".into(),
/// #     metadata: serde_json::json!({"code": "forbidden"}),
/// # };
/// counter.record(event);
/// assert_eq!(counter.0.load(Ordering::Relaxed), 1);
/// ```
pub trait AuditSink: Send + Sync + 'static {
    /// Hands an event to the sink.
    fn record(&self, event: AuditEvent);
}

/// A sink that keeps events in memory, for tests and small tools.
///
/// ```
/// use portcullis::audit::{AuditSink, MemorySink};
/// let sink = MemorySink::default();
/// let shared = sink.clone(); // clones share the events
/// # let event = portcullis::audit::AuditEvent {
/// #     id: portcullis::audit::uuid_v7(),
/// #     ts_ms: 0,
/// #     action: portcullis::audit::AuditAction::Forbidden,
/// #     outcome: portcullis::audit::Outcome::Denied,
/// #     principal: Some("alice".into()),
/// #     client_ip: Some("203.0.113.7".into()),
/// #     method: "POST".into(),
/// #     route: "/api/admin/**".into(),
/// #     path: "/api/admin/users".into(),
/// #     status: 403,
/// #     request_id: "req-1".into(),
/// #     metadata: serde_json::json!({"code": "forbidden"}),
/// # };
/// shared.record(event);
/// assert_eq!(sink.events().len(), 1);
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    events: Arc<Mutex<Vec<AuditEvent>>>,
}

impl MemorySink {
    /// A copy of the events recorded so far.
    ///
    /// ```
    /// use portcullis::audit::{AuditAction, AuditSink, MemorySink};
    /// let sink = MemorySink::default();
    /// # let event = portcullis::audit::AuditEvent {
    /// #     id: portcullis::audit::uuid_v7(),
    /// #     ts_ms: 0,
    /// #     action: portcullis::audit::AuditAction::Banned,
    /// #     outcome: portcullis::audit::Outcome::Denied,
    /// #     principal: Some("alice".into()),
    /// #     client_ip: Some("203.0.113.7".into()),
    /// #     method: "POST".into(),
    /// #     route: "/api/admin/**".into(),
    /// #     path: "/api/admin/users".into(),
    /// #     status: 403,
    /// #     request_id: "req-1".into(),
    /// #     metadata: serde_json::json!({"code": "forbidden"}),
    /// # };
    /// sink.record(event);
    /// assert_eq!(sink.events()[0].action, AuditAction::Banned);
    /// ```
    pub fn events(&self) -> Vec<AuditEvent> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl AuditSink for MemorySink {
    fn record(&self, event: AuditEvent) {
        if let Ok(mut e) = self.events.lock() {
            e.push(event);
        }
    }
}

/// A sink that writes each event as one JSON line through `tracing` (target `portcullis::audit`).
///
/// ```
/// use std::sync::Arc;
/// use portcullis::audit::TracingSink;
/// use portcullis::SecurityLayer;
/// // Events become `tracing` lines with target `portcullis::audit`.
/// let layer = SecurityLayer::builder().audit(Arc::new(TracingSink)).build().unwrap();
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingSink;

impl AuditSink for TracingSink {
    fn record(&self, event: AuditEvent) {
        if let Ok(line) = serde_json::to_string(&event) {
            tracing::info!(target: "portcullis::audit", "{line}");
        }
    }
}

/// A fresh UUIDv7 (time-ordered) as text: 48 bits of Unix milliseconds, then random bits.
///
/// ```
/// let a = portcullis::audit::uuid_v7();
/// assert_eq!(a.len(), 36);
/// assert_eq!(&a[14..15], "7");
/// ```
pub fn uuid_v7() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut b: [u8; 16] = crate::random::bytes();
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    b[6] = (b[6] & 0x0f) | 0x70;
    b[8] = (b[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(HEX[(byte >> 4) as usize] as char);
        s.push(HEX[(byte & 15) as usize] as char);
    }
    s
}

//! Security events.
//!
//! Every denial and every report-only decision becomes an [`AuditEvent`] handed to an
//! [`AuditSink`] off the request path. Events never hold secrets: no tokens, cookies,
//! passwords or `Authorization` values; the layer only puts in what is listed below.
//!
//! ```
//! use portcullis::audit::{AuditSink, MemorySink};
//! let sink = MemorySink::default();
//! assert!(sink.events().is_empty());
//! ```

use std::sync::{Arc, Mutex};

use serde::Serialize;

/// What happened, as stored in the `action` column.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
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
}

/// The decision recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The request was refused.
    Denied,
    /// The request went through.
    Allowed,
    /// A control would have refused, but runs in report-only mode.
    ReportOnly,
}

/// One security event: the columns of the `audit_events` table.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    /// Event id.
    pub id: String,
    /// Time in milliseconds since the Unix epoch.
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

/// Where events go. `record` must not block: sinks queue and write elsewhere.
pub trait AuditSink: Send + Sync + 'static {
    /// Hands an event to the sink.
    fn record(&self, event: AuditEvent);
}

/// A sink that keeps events in memory, for tests and small tools.
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    events: Arc<Mutex<Vec<AuditEvent>>>,
}

impl MemorySink {
    /// A copy of the events recorded so far.
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

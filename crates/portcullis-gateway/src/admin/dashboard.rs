//! The admin dashboard: one page that shows what the gateway refused and who keeps trying,
//! read from the audit store and the gateway's counters.
//!
//! - `GET /` → the page (`/dashboard.js`, `/dashboard.css` and `/favicon.svg` beside it; no
//!   inline script or style, under `default-src 'none'`).
//! - `GET /api/summary?window=1h` → counts over the window (the audit store's
//!   [`AuditStore::summary`]: events by action, top offenders with their bans, refused
//!   users, rate-limited routes, refusals over time) with the process's counters and the
//!   bans in force.
//! - `GET /api/events?window=1h&action=&ip=&user=&route=&limit=100` → the newest matching
//!   audit events, newest first (at most 1000).
//! - `GET /api/actions` → the action names the filters accept.
//!
//! The audit log holds what clients sent (paths, user names): the page writes every value as
//! text, never as markup, and its CSP allows no inline script. A request from a page of
//! another origin (`Sec-Fetch-Site` other than `same-origin` or `none`, or another `Origin`)
//! or to a `Host` that is neither an address, `localhost` nor one of `[server] admin_hosts`
//! is refused with 403, so a web page can neither read the log through a local admin port
//! nor reach it by DNS rebinding. With `[server] admin_token_env` the token is asked for
//! first (see the [admin module](super)).

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use portcullis::audit::{AuditAction, AuditQuery, AuditSummary, SummaryQuery, now_ms};

use super::{Counters, json};
use crate::reload::Live;

/// The longest window the dashboard counts over.
///
/// ```
/// assert_eq!(portcullis_gateway::admin::dashboard::MAX_WINDOW.as_secs(), 90 * 86_400);
/// ```
pub const MAX_WINDOW: std::time::Duration = std::time::Duration::from_secs(90 * 86_400);

/// The most events `/api/events` returns.
///
/// ```
/// assert_eq!(portcullis_gateway::admin::dashboard::MAX_EVENTS, 1000);
/// ```
pub const MAX_EVENTS: u32 = 1000;

const PAGE: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");
const ICON: &str = include_str!("dashboard/favicon.svg");

/// The page's policy: its own script and style files, its own JSON, nothing else.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// True for the paths this module answers.
pub(super) fn serves(path: &str) -> bool {
    matches!(
        path,
        "/" | "/dashboard.js"
            | "/dashboard.css"
            | "/favicon.svg"
            | "/api/summary"
            | "/api/events"
            | "/api/actions"
    )
}

/// Answers a `GET` or `HEAD` to one of [`serves`]'s paths.
/// The listener has checked the request comes from this machine's names and pages.
pub(super) async fn handle<B>(req: &Request<B>, live: &Live) -> Response<Full<Bytes>> {
    let query = req.uri().query().unwrap_or("");
    match req.uri().path() {
        "/" => asset(PAGE, "text/html; charset=utf-8"),
        "/dashboard.js" => asset(SCRIPT, "text/javascript; charset=utf-8"),
        "/dashboard.css" => asset(STYLE, "text/css; charset=utf-8"),
        "/favicon.svg" => asset(ICON, "image/svg+xml"),
        "/api/actions" => {
            let names: Vec<&str> = AuditAction::ALL.iter().map(|a| a.as_str()).collect();
            json(
                StatusCode::OK,
                serde_json::json!({ "actions": names }).to_string(),
            )
        }
        "/api/summary" => summary(query, live).await,
        _ => events(query, live).await,
    }
}

/// A static file of the page, with the page's CSP (harmless on the script and style).
fn asset(body: &'static str, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut res = super::respond(
        StatusCode::OK,
        content_type,
        Bytes::from_static(body.as_bytes()),
    );
    res.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    res
}

/// The query's parameters, the last value of each name winning.
fn params(query: &str) -> std::collections::HashMap<String, String> {
    form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn bad_request(reason: String) -> Response<Full<Bytes>> {
    json(
        StatusCode::BAD_REQUEST,
        serde_json::json!({"status": "bad_request", "reason": reason}).to_string(),
    )
}

/// `window=` as milliseconds: a duration (`15m`, `1h`, `7d`) up to [`MAX_WINDOW`]; 1 h when
/// absent.
fn window_ms(p: &std::collections::HashMap<String, String>) -> Result<u64, String> {
    let Some(w) = p.get("window") else {
        return Ok(3_600_000);
    };
    let d = crate::config::values::parse_duration(w).map_err(|e| format!("window: {e}"))?;
    if d > MAX_WINDOW {
        return Err(format!("window: {w:?} is longer than 90 days"));
    }
    Ok(d.as_millis() as u64)
}

/// `GET /api/summary`.
async fn summary(query: &str, live: &Live) -> Response<Full<Bytes>> {
    let p = params(query);
    let window = match window_ms(&p) {
        Ok(w) => w,
        Err(e) => return bad_request(e),
    };
    let now = now_ms();
    let counters = Counters::gather(live);
    let writer = live.stores().audit_writer();
    let (store, summary, error) = match &writer {
        None => (None, None, Some("audit is off".to_string())),
        Some(w) => {
            // Until one past now, so an event of this very millisecond counts.
            let q = SummaryQuery::new(now.saturating_sub(window), now + 1);
            match w.store().summary(&q).await {
                Ok(s) => (Some(w.store().describe()), Some(s), None),
                Err(e) => {
                    tracing::warn!(error = %e, "the dashboard could not summarise the audit log");
                    (Some(w.store().describe()), None, Some(e.to_string()))
                }
            }
        }
    };
    let bans = counters.bans.as_ref();
    let summary = summary.map(|s| with_bans(s, bans));
    let body = serde_json::json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "now_ms": now,
        "window_ms": window,
        "audit_store": store,
        "summary": summary,
        "summary_error": error,
        "counters": counters.to_json(),
        "bans": bans.map(|list| list.iter().map(|(client, left)| serde_json::json!({
            "client": client,
            "seconds_left": left.as_millis().div_ceil(1000) as u64,
        })).collect::<Vec<_>>()),
    });
    json(StatusCode::OK, body.to_string())
}

/// The summary as JSON, each offender with `banned_seconds_left` (`null` when not banned):
/// a ban is held by the client's key ([`portcullis::ClientIp::key`]: its address, or its /64
/// for IPv6).
fn with_bans(
    summary: AuditSummary,
    bans: Option<&Vec<(String, std::time::Duration)>>,
) -> serde_json::Value {
    let mut value = serde_json::to_value(&summary).unwrap_or_default();
    if let Some(offenders) = value.get_mut("offenders").and_then(|o| o.as_array_mut()) {
        for o in offenders {
            let key = o
                .get("client_ip")
                .and_then(|c| c.as_str())
                .and_then(|c| c.parse::<std::net::IpAddr>().ok())
                .map(|ip| portcullis::ClientIp(ip).key());
            let left = key.and_then(|k| {
                bans?
                    .iter()
                    .find(|(client, _)| *client == k)
                    .map(|(_, left)| left.as_millis().div_ceil(1000) as u64)
            });
            if let Some(o) = o.as_object_mut() {
                o.insert("banned_seconds_left".into(), left.into());
            }
        }
    }
    value
}

/// `GET /api/events`.
async fn events(query: &str, live: &Live) -> Response<Full<Bytes>> {
    let p = params(query);
    let window = match window_ms(&p) {
        Ok(w) => w,
        Err(e) => return bad_request(e),
    };
    let limit = match p.get("limit").map(|l| l.parse::<u32>()) {
        None => 100,
        Some(Ok(n)) if (1..=MAX_EVENTS).contains(&n) => n,
        Some(_) => return bad_request(format!("limit: must be 1 to {MAX_EVENTS}")),
    };
    let now = now_ms();
    let mut q = AuditQuery::new()
        .since_ms(now.saturating_sub(window))
        .limit(limit);
    let nonempty = |k: &str| p.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    if let Some(a) = nonempty("action") {
        match action_filter(a) {
            Ok(a) => q.action = Some(a),
            Err(e) => return bad_request(format!("action: {e}")),
        }
    }
    if let Some(ip) = nonempty("ip") {
        match ip_filter(ip) {
            Ok(ip) => q.ip = Some(ip),
            Err(e) => return bad_request(format!("ip: {e}")),
        }
    }
    q.user = nonempty("user").map(str::to_string);
    q.route = nonempty("route").map(str::to_string);
    let Some(writer) = live.stores().audit_writer() else {
        return json(
            StatusCode::OK,
            r#"{"status":"audit_off","reason":"audit is off","events":[]}"#,
        );
    };
    match writer.store().query(&q).await {
        Ok(mut events) => {
            events.reverse(); // newest first
            json(
                StatusCode::OK,
                serde_json::json!({"status": "ok", "events": events}).to_string(),
            )
        }
        Err(e) => json(
            StatusCode::OK,
            serde_json::json!({"status": "unreadable", "reason": e.to_string(), "events": []})
                .to_string(),
        ),
    }
}

/// An action filter: one of the stored action names ([`AuditAction::as_str`]).
///
/// ```
/// use portcullis_gateway::admin::dashboard::action_filter;
/// assert_eq!(action_filter("forbidden").as_deref(), Ok("forbidden"));
/// assert!(action_filter("forbiden").unwrap_err().contains("expected one of"));
/// ```
pub fn action_filter(s: &str) -> Result<String, String> {
    match AuditAction::from_name(s) {
        Some(a) => Ok(a.as_str().to_string()),
        None => {
            let known: Vec<&str> = AuditAction::ALL.iter().map(|a| a.as_str()).collect();
            Err(format!(
                "unknown action {s:?}; expected one of {}",
                known.join(", ")
            ))
        }
    }
}

/// An address filter, written as the gateway stores addresses (as `IpAddr` writes them, so
/// `::FFFF:10.0.0.9` finds `10.0.0.9` and `2001:DB8::1` finds `2001:db8::1`). A CIDR range
/// is refused rather than compared as text, which would match nothing.
///
/// ```
/// use portcullis_gateway::admin::dashboard::ip_filter;
/// assert_eq!(ip_filter("::ffff:10.0.0.9").as_deref(), Ok("10.0.0.9"));
/// assert!(ip_filter("10.0.0.0/8").unwrap_err().contains("range"));
/// ```
pub fn ip_filter(s: &str) -> Result<String, String> {
    if let Ok(ip) = s.trim().parse::<std::net::IpAddr>() {
        // The gateway records IPv4-mapped IPv6 peers as IPv4 (DESIGN §2 step 4).
        return Ok(ip.to_canonical().to_string());
    }
    if s.contains('/') {
        return Err(format!(
            "{s:?} is a range; give one address (such as 203.0.113.7 or 2001:db8::1)"
        ));
    }
    Err(format!(
        "{s:?} is not an IP address (such as 203.0.113.7 or 2001:db8::1)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_filters_are_single_addresses_in_stored_form() {
        assert_eq!(ip_filter("10.0.0.9").as_deref(), Ok("10.0.0.9"));
        assert_eq!(ip_filter("::ffff:10.0.0.9").as_deref(), Ok("10.0.0.9"));
        assert_eq!(ip_filter("2001:DB8::1").as_deref(), Ok("2001:db8::1"));
        assert!(ip_filter("999.1.1.1").is_err());
        assert!(ip_filter("1.2.3.0/24").unwrap_err().contains("range"));
    }

    #[test]
    fn action_filters_name_a_known_action() {
        assert_eq!(action_filter("forbidden").as_deref(), Ok("forbidden"));
        let err = action_filter("Forbidden").unwrap_err();
        assert!(err.contains("rate_limit_exceeded"), "{err}");
    }
}

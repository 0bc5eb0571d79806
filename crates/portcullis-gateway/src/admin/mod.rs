//! The admin listener, separate from traffic: `/healthz`, `/readyz`, `/metrics`, `/bans` and
//! the dashboard.
//!
//! - `GET /healthz` → 200 `{"status":"ok"}` while the process serves.
//! - `GET /readyz` → whether the gateway can serve traffic now (upstream and stores
//!   reachable), each part checked at once within [`READY_TIMEOUT`]:
//!   `{"status":"ok","upstream":"ok","rate_limit_store":"ok","audit_store":"ok"}`.
//!   - `upstream`: `"ok"` when it accepts a TCP connection, else `"unreachable"`.
//!   - `rate_limit_store`: `"ok"` when the store answers a ping on its own connection (Redis
//!     `PING`, the SQLite file taking its write lock; memory always), else `"unreachable"`.
//!   - `audit_store`: `"ok"` when the store answers (PostgreSQL `SELECT 1`, the SQLite file
//!     taking its write lock; JSONL and stdout always) and no events wait in the spool;
//!     `"spooling"` when it answers but refused events wait in the spool; `"unreachable"`
//!     when it does not answer.
//!
//!   The status is 503 `"unavailable"` exactly when traffic is being refused: the upstream
//!   is unreachable, or the rate-limit store is and `storage.on_store_error = "closed"`
//!   (every rate-limited request then gets 503). With `"open"` requests pass unlimited, and
//!   an audit store that is down loses nothing (events spool), so those stay 200 with the
//!   part named, for alerting without pulling the instance out of a load balancer.
//!
//! - `GET /metrics` → the gateway's counters in the Prometheus text format (0.0.4), since
//!   the process started and across config reloads:
//!   - `portcullis_rate_limit_requests_total{decision}`: requests a rate limit let through
//!     (`allowed`) or refused with 429 (`limited`);
//!   - `portcullis_store_errors_total{user}`: rate-limit store failures met by the rate limit
//!     (`rate_limit`), the failed-authentication limit (`brute_force`) and the ban list
//!     (`ban_list`), each answered by `storage.on_store_error`;
//!   - `portcullis_bans_active`: clients banned now (with `[ban]` on);
//!   - `portcullis_audit_events_total{action,outcome}`: audit events by action (the refusals:
//!     `rate_limit_exceeded`, `csrf_validation_failed`, …) and outcome;
//!   - `portcullis_audit_pipeline_events_total{stage}`: what became of them (`enqueued`,
//!     `written`, `spooled`, `replayed`, `dropped`), and `portcullis_audit_spool_pending`,
//!     the events waiting in the spool for the store.
//!
//! - `GET /bans` → the bans in force (with `[ban]` on), longest first:
//!   `{"bans":[{"client":"203.0.113.7","seconds_left":840}]}` (IPv6 clients by /64).
//! - `DELETE /bans?client=ADDRESS` → lifts the ban on the client holding `ADDRESS` (any
//!   address of an IPv6 /64) and forgets its offences, on every replica sharing the store:
//!   200 `{"status":"lifted","was_banned":true}`; 404 `{"status":"bans_off"}` with `[ban]`
//!   off; 400 for a missing or malformed address.
//! - `GET /` → the dashboard (see [`dashboard`]): refusals, top offenders, bans (with a
//!   button to lift them), rate-limited routes and the audit log, read from the audit store.
//!
//! The dashboard, its JSON and the ban endpoints are refused with 403 when the request comes
//! from a page of another origin (`Sec-Fetch-Site` other than `same-origin` or `none`, or an
//! `Origin` other than the listener's own), or names a `Host` that is neither an address,
//! `localhost` nor one of `[server] admin_hosts` (DNS rebinding): a web page must not read
//! the log or lift bans through a local admin port.
//!
//! With `[server] admin_token_env`, every endpoint but `/healthz` and `/readyz` asks for the
//! token: `Authorization: Bearer TOKEN`, or HTTP Basic credentials with the token as password
//! (any user name), which browsers prompt for; else 401 with a Basic challenge.
//!
//! Anything else is 404. Every answer carries `X-Content-Type-Options: nosniff`,
//! `X-Frame-Options: DENY`, `Referrer-Policy: no-referrer`,
//! `Cross-Origin-Resource-Policy: same-origin` and `Cross-Origin-Opener-Policy: same-origin`. Bind it to loopback or a private network: it
//! is not behind the security layer.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use portcullis::audit::{AuditAction, AuditCounters, Outcome};

use crate::config::OnStoreError;
use crate::reload::Live;

pub mod dashboard;

/// How long `/readyz` waits for the upstream to accept a connection, and for each store to
/// answer (the checks run at the same time, so the answer comes within about this long).
///
/// ```
/// # use std::time::Duration;
/// assert_eq!(portcullis_gateway::admin::READY_TIMEOUT, Duration::from_secs(1));
/// ```
pub const READY_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves the admin endpoints until `shutdown` turns true.
///
/// ```no_run
/// # use std::sync::Arc;
/// use portcullis_gateway::{admin, config::{GatewayConfig, Stores}, reload::{Generation, Live}};
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// # let config = GatewayConfig::from_file("portcullis.toml")?;
/// # let stores = Arc::new(Stores::default());
/// # let live = Live::new(Generation::build(config, &stores)?, stores);
/// let (stop, shutdown) = tokio::sync::watch::channel(false);
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:9901").await?;
/// tokio::spawn(admin::serve(listener, live, shutdown));
/// // ... on SIGTERM:
/// stop.send(true)?;
/// # Ok(()) }
/// ```
pub async fn serve(listener: TcpListener, live: Live, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = crate::server::stopped(&mut shutdown) => return,
        };
        let live = live.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, live.clone()));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(tcp), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

async fn handle(req: Request<Incoming>, live: Live) -> Result<Response<Full<Bytes>>, Infallible> {
    if !matches!(req.uri().path(), "/healthz" | "/readyz")
        && let Some(token) = &live.current().config.server.admin_token
        && !authorized(req.headers(), token.expose())
    {
        return Ok(unauthorized());
    }
    // What reads the log or lifts bans answers only this machine's names and pages.
    let path = req.uri().path();
    if (path == "/bans" || dashboard::serves(path))
        && let Err(reason) = local_request(&req, &live.current().config.server.admin_hosts)
    {
        return Ok(forbidden(reason));
    }
    if req.method() == Method::DELETE && req.uri().path() == "/bans" {
        return Ok(lift_ban(&req, &live).await);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(json(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"status":"method_not_allowed"}"#,
        ));
    }
    Ok(match req.uri().path() {
        "/healthz" => json(StatusCode::OK, r#"{"status":"ok"}"#),
        "/readyz" => readiness(&live).await,
        "/metrics" => metrics(&live),
        "/bans" => bans(&live),
        path if dashboard::serves(path) => dashboard::handle(&req, &live).await,
        _ => json(StatusCode::NOT_FOUND, r#"{"status":"not_found"}"#),
    })
}

/// Why a request for the dashboard or the bans is refused, if it is: it must name this
/// machine in `Host` (an address, `localhost`, or one of `admin_hosts`), not a DNS name a
/// web page could point here by rebinding; and when a browser sends it, it must come from
/// the listener's own pages (`Sec-Fetch-Site: same-origin` or `none`, `Origin` this
/// listener's), never from another site's.
fn local_request<B>(req: &Request<B>, admin_hosts: &[String]) -> Result<(), &'static str> {
    let h = req.headers();
    let host = h
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !local_host_name(host) && !admin_hosts.iter().any(|a| host_is(host, a)) {
        return Err(
            "the admin listener answers only to an address, localhost or a name in [server] admin_hosts",
        );
    }
    let site = h.get("sec-fetch-site").map(HeaderValue::as_bytes);
    if site.is_some_and(|s| s != b"same-origin" && s != b"none") {
        return Err("a page of another site cannot use the admin listener");
    }
    if let Some(origin) = h.get(header::ORIGIN) {
        let own = origin
            .as_bytes()
            .strip_prefix(b"http://")
            .is_some_and(|rest| rest.eq_ignore_ascii_case(host.as_bytes()));
        if !own {
            return Err("a page of another origin cannot use the admin listener");
        }
    }
    Ok(())
}

/// True when the request carries the admin token: `Authorization: Bearer TOKEN`, or Basic
/// credentials (any user name) whose password is the token. Compared in constant time.
fn authorized(headers: &http::HeaderMap, token: &[u8]) -> bool {
    use base64::Engine as _;
    use subtle::ConstantTimeEq as _;
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let v = value.as_bytes();
    let (scheme, rest) = match v.iter().position(|&b| b == b' ') {
        Some(i) => (&v[..i], v[i + 1..].trim_ascii()),
        None => return false,
    };
    let given = if scheme.eq_ignore_ascii_case(b"bearer") {
        rest.to_vec()
    } else if scheme.eq_ignore_ascii_case(b"basic") {
        let Ok(pair) = base64::engine::general_purpose::STANDARD.decode(rest) else {
            return false;
        };
        match pair.iter().position(|&b| b == b':') {
            Some(i) => pair[i + 1..].to_vec(),
            None => return false,
        }
    } else {
        return false;
    };
    bool::from(given.ct_eq(token))
}

/// 401 with a Basic challenge, so a browser asks for the token.
fn unauthorized() -> Response<Full<Bytes>> {
    let mut res = json(
        StatusCode::UNAUTHORIZED,
        r#"{"status":"unauthorized","reason":"the admin listener needs its token (server.admin_token_env): Authorization: Bearer TOKEN, or Basic credentials with the token as password"}"#,
    );
    res.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(r#"Basic realm="portcullis admin", charset="UTF-8""#),
    );
    res
}

/// `host` (maybe with a port) is the name `name`.
fn host_is(host: &str, name: &str) -> bool {
    without_port(host).eq_ignore_ascii_case(name)
}

/// A `Host` value without its port: `[::1]:9901` → `[::1]`, `localhost:9901` → `localhost`;
/// a bare IPv6 address has colons too and stays whole.
fn without_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => host,
    }
}

/// The admin listener's headers on every answer: no sniffing, no framing, no referrer, not
/// readable by other origins' pages.
fn harden<B>(mut res: Response<B>) -> Response<B> {
    let h = res.headers_mut();
    for (name, value) in [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cross-origin-resource-policy", "same-origin"),
        ("cross-origin-opener-policy", "same-origin"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    res
}

/// `/readyz`: the upstream and both stores, checked concurrently, each within
/// [`READY_TIMEOUT`] (see the module docs for the fields).
async fn readiness(live: &Live) -> Response<Full<Bytes>> {
    let generation = live.current();
    let upstream = async {
        let upstream = generation.proxy.upstream_authority();
        let port = upstream.port_u16().unwrap_or(80);
        let target = format!("{}:{port}", upstream.host());
        matches!(
            tokio::time::timeout(READY_TIMEOUT, TcpStream::connect(target)).await,
            Ok(Ok(_))
        )
    };
    let rate_limit = async {
        // The store the generation in force was built with (cached in `Stores`).
        match live.stores().rate_limit_store(&generation.config.storage) {
            Ok(store) => matches!(
                tokio::time::timeout(READY_TIMEOUT, store.ping()).await,
                Ok(Ok(()))
            ),
            Err(_) => false,
        }
    };
    let audit = async {
        let Some(writer) = live.stores().audit_writer() else {
            return "ok"; // nothing is audited, so nothing can fail
        };
        match tokio::time::timeout(READY_TIMEOUT, writer.ping()).await {
            Ok(Ok(())) if writer.counters().pending == 0 => "ok",
            Ok(Ok(())) => "spooling",
            _ => "unreachable",
        }
    };
    let (upstream_ok, rate_limit_ok, audit) = tokio::join!(upstream, rate_limit, audit);
    let refusing = !upstream_ok
        || (!rate_limit_ok && generation.config.storage.on_store_error == OnStoreError::Closed);
    let word = |ok: bool| if ok { "ok" } else { "unreachable" };
    let body = format!(
        r#"{{"status":"{}","upstream":"{}","rate_limit_store":"{}","audit_store":"{audit}"}}"#,
        if refusing { "unavailable" } else { "ok" },
        word(upstream_ok),
        word(rate_limit_ok),
    );
    let status = if refusing {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    json(status, body)
}

/// The ban list of the config in force (the one its layer holds), `None` with `[ban]` off.
fn ban_list(live: &Live) -> Option<std::sync::Arc<portcullis::ban::BanList>> {
    let generation = live.current();
    let config = &generation.config;
    live.stores()
        .ban_list(&config.ban, &config.storage)
        .ok()
        .flatten()
}

/// `GET /bans`: the bans in force.
fn bans(live: &Live) -> Response<Full<Bytes>> {
    let list = ban_list(live).map(|b| b.list()).unwrap_or_default();
    let bans: Vec<serde_json::Value> = list
        .into_iter()
        .map(|(client, left)| {
            serde_json::json!({
                "client": client,
                "seconds_left": left.as_millis().div_ceil(1000) as u64,
            })
        })
        .collect();
    json(
        StatusCode::OK,
        serde_json::json!({ "bans": bans }).to_string(),
    )
}

/// `DELETE /bans?client=ADDRESS`: lifts a ban (see the module docs).
async fn lift_ban<B>(req: &Request<B>, live: &Live) -> Response<Full<Bytes>> {
    let client = req.uri().query().and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "client")
            .map(|(_, v)| v.into_owned())
    });
    let Some(ip) = client.and_then(|c| c.parse::<std::net::IpAddr>().ok()) else {
        return json(
            StatusCode::BAD_REQUEST,
            r#"{"status":"bad_request","reason":"?client= must be one IP address"}"#,
        );
    };
    let Some(bans) = ban_list(live) else {
        return json(StatusCode::NOT_FOUND, r#"{"status":"bans_off"}"#);
    };
    let key = portcullis::ClientIp(ip).key();
    match bans.lift(&key).await {
        Ok(was) => {
            tracing::warn!(client = %key, was_banned = was, "ban lifted by hand");
            json(
                StatusCode::OK,
                serde_json::json!({"status": "lifted", "client": key, "was_banned": was})
                    .to_string(),
            )
        }
        Err(e) => {
            tracing::error!(client = %key, error = %e, "lifting a ban failed");
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                r#"{"status":"unavailable","reason":"the rate-limit store did not answer"}"#,
            )
        }
    }
}

/// `Host` names this machine by address or as `localhost` (with or without a port): not a
/// DNS name a web page could point here by rebinding.
fn local_host_name(host: &str) -> bool {
    let name = without_port(host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// `/metrics`: the counters in the Prometheus text format (see the module docs).
fn metrics(live: &Live) -> Response<Full<Bytes>> {
    let c = Counters::gather(live);
    let mut out = Metrics::default();
    out.family(
        "portcullis_build_info",
        "gauge",
        "The running build, in its labels.",
    );
    out.sample(
        "portcullis_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    out.family(
        "portcullis_rate_limit_requests_total",
        "counter",
        "Requests a rate limit decided: let through (allowed) or refused with 429 (limited).",
    );
    for (decision, n) in [("allowed", c.allowed), ("limited", c.limited)] {
        out.sample(
            "portcullis_rate_limit_requests_total",
            &[("decision", decision)],
            n,
        );
    }
    out.family(
        "portcullis_store_errors_total",
        "counter",
        "Rate-limit store failures, by the control that met them; storage.on_store_error answered each.",
    );
    for (user, n) in c.store_errors {
        out.sample("portcullis_store_errors_total", &[("user", user)], n);
    }
    out.family(
        "portcullis_bans_active",
        "gauge",
        "Clients banned now (0 while [ban] is off).",
    );
    let banned = c.bans.as_ref().map_or(0, Vec::len);
    out.sample("portcullis_bans_active", &[], banned as u64);

    if let Some((pipeline, by_action)) = &c.audit {
        out.family(
            "portcullis_audit_events_total",
            "counter",
            "Audit events recorded, by action and outcome.",
        );
        for (action, outcome, n) in by_action {
            out.sample(
                "portcullis_audit_events_total",
                &[("action", action.as_str()), ("outcome", outcome.as_str())],
                *n,
            );
        }
        out.family(
            "portcullis_audit_pipeline_events_total",
            "counter",
            "Audit events by what became of them: queued, written to the store, spooled while it was down, replayed from the spool, or dropped.",
        );
        for (stage, n) in pipeline_stages(pipeline) {
            out.sample(
                "portcullis_audit_pipeline_events_total",
                &[("stage", stage)],
                n,
            );
        }
        out.family(
            "portcullis_audit_spool_pending",
            "gauge",
            "Audit events waiting in the spool for the store.",
        );
        out.sample("portcullis_audit_spool_pending", &[], pipeline.pending);
    }

    respond(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        out.text,
    )
}

/// Audit events recorded, by action and outcome.
type EventsByAction = Vec<(AuditAction, Outcome, u64)>;

/// The process's counters, since it started and across reloads: what `/metrics` exposes and
/// the dashboard shows.
struct Counters {
    /// Requests a rate limit let through.
    allowed: u64,
    /// Requests a rate limit refused with 429.
    limited: u64,
    /// Rate-limit store failures by the control that met them.
    store_errors: [(&'static str, u64); 3],
    /// The bans in force, longest first; `None` with `[ban]` off.
    bans: Option<Vec<(String, Duration)>>,
    /// The audit pipeline's counters and the events by action; `None` with audit off.
    audit: Option<(AuditCounters, EventsByAction)>,
}

impl Counters {
    fn gather(live: &Live) -> Self {
        let generation = live.current();
        let config = &generation.config;
        let stores = live.stores();
        let limits = stores.limiter_stats();
        // The cached trackers of the config in force (the same ones its layer holds).
        let brute_force = stores.failed_auth(&config.auth, &config.storage).ok();
        let bans = ban_list(live);
        Counters {
            allowed: limits.allowed.get(),
            limited: limits.limited.get(),
            store_errors: [
                ("rate_limit", limits.store_errors.get()),
                ("brute_force", brute_force.map_or(0, |t| t.store_errors())),
                ("ban_list", bans.as_ref().map_or(0, |b| b.store_errors())),
            ],
            bans: bans.map(|b| b.list()),
            audit: stores
                .audit_writer()
                .map(|w| (w.counters(), w.events_by_action())),
        }
    }

    /// The dashboard's `counters` object.
    fn to_json(&self) -> serde_json::Value {
        let errors: serde_json::Map<String, serde_json::Value> = self
            .store_errors
            .iter()
            .map(|(user, n)| (user.to_string(), (*n).into()))
            .collect();
        let audit = self.audit.as_ref().map(|(pipeline, _)| {
            let mut stages: serde_json::Map<String, serde_json::Value> = pipeline_stages(pipeline)
                .into_iter()
                .map(|(stage, n)| (stage.to_string(), n.into()))
                .collect();
            stages.insert("pending".into(), pipeline.pending.into());
            stages
        });
        serde_json::json!({
            "rate_limit": {"allowed": self.allowed, "limited": self.limited},
            "store_errors": errors,
            "audit": audit,
        })
    }
}

/// The audit pipeline's stages and their counts.
fn pipeline_stages(c: &AuditCounters) -> [(&'static str, u64); 5] {
    [
        ("enqueued", c.enqueued),
        ("written", c.written),
        ("spooled", c.spooled),
        ("replayed", c.replayed),
        ("dropped", c.dropped),
    ]
}

/// The Prometheus text exposition format, written line by line. Label values here are our
/// own names (no quotes, backslashes or newlines to escape).
#[derive(Default)]
struct Metrics {
    text: String,
}

impl Metrics {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        use std::fmt::Write as _;
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        use std::fmt::Write as _;
        self.text.push_str(name);
        for (i, (k, v)) in labels.iter().enumerate() {
            let _ = write!(self.text, "{}{k}=\"{v}\"", if i == 0 { "{" } else { "," });
        }
        if !labels.is_empty() {
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }
}

fn forbidden(reason: &str) -> Response<Full<Bytes>> {
    json(
        StatusCode::FORBIDDEN,
        serde_json::json!({"status": "forbidden", "reason": reason}).to_string(),
    )
}

fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    respond(status, "application/json", body)
}

/// An answer of the admin listener: never cached, with [`harden`]'s headers.
fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(body.into()));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    harden(res)
}

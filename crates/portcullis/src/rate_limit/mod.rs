//! Rate limiting: sliding window and GCRA over memory, SQLite and Redis, with IETF headers.
//!
//! A route's [`Policy`](crate::Policy) holds one or more limits ([`RateLimitSpec`]); the
//! [`RateLimiter`] guard (step 10 of the layer) builds one key per limit — the route *pattern*,
//! the limit, and the subject (client address by /64 for IPv6, user, API key, a header, or the
//! whole route) — and asks its [`RateLimitStore`] to decide them together: the request is
//! charged only when every limit allows it, and a refusal names the violated limit.
//!
//! Because the key holds the route pattern, never the raw URL, `?x=1` or `/api//x` cannot
//! reset a counter, and because the subject comes from the trusted-proxy resolver, a spoofed
//! `X-Forwarded-For` cannot either.
//!
//! Responses of limited routes carry the IETF draft headers
//! (`RateLimit-Policy: "default";q=60;w=60`, `RateLimit: "default";r=59;t=42`), optionally
//! the legacy `RateLimit-Limit/Remaining/Reset` triplet, and on 429 `Retry-After` and a JSON
//! `retry_after`.
//!
//! When the store fails, [`OnStoreError`] decides: `Closed` answers 503, `Open` lets the
//! request through; either way the incident is logged once, counted, and every decision
//! taken without the store is audited.
//!
//! ```
//! use std::sync::Arc;
//! use portcullis::rate_limit::{RateLimiter, memory::MemoryStore};
//! use portcullis::{SecurityLayer, Preset};
//! let limiter = RateLimiter::new(Arc::new(MemoryStore::new(100_000)));
//! let layer = SecurityLayer::builder()
//!     .default_policy(Preset::Public) // 60 requests per minute per IP
//!     .rate_limiter(Arc::new(limiter))
//!     .build()
//!     .unwrap();
//! ```

pub mod algorithm;
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sqlite")]
pub mod sqlite;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;

use crate::audit::AuditAction;
use crate::auth::{AuthMethod, BoxFuture};
use crate::error::Rejection;
use crate::layer::{Exchange, Guard};
use crate::policy::{RateKey, RateLimitSpec};
use crate::shared::Counter;
use algorithm::{Rule, Verdict};

/// A monotonic-enough clock in microseconds since the Unix epoch.
///
/// ```
/// use std::sync::Arc;
/// use portcullis::rate_limit::{Clock, memory::MemoryStore};
/// /// A clock that never moves.
/// struct Frozen;
/// impl Clock for Frozen {
///     fn now_us(&self) -> u64 {
///         1_700_000_000_000_000
///     }
/// }
/// assert_eq!(Frozen.now_us(), 1_700_000_000_000_000);
/// let store = MemoryStore::with_clock(1000, Arc::new(Frozen));
/// ```
pub trait Clock: Send + Sync + 'static {
    /// Now, in µs since the Unix epoch.
    fn now_us(&self) -> u64;
}

/// The system clock.
///
/// ```
/// use portcullis::rate_limit::{Clock, SystemClock};
/// let now = SystemClock.now_us();
/// assert!(now > 1_600_000_000_000_000); // after September 2020
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_us(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64)
    }
}

/// A clock that moves only when told (tests).
///
/// ```
/// use portcullis::rate_limit::{ManualClock, Clock};
/// let c = ManualClock::new(10);
/// c.advance(5);
/// assert_eq!(c.now_us(), 15);
/// ```
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock standing at `us`.
    ///
    /// ```
    /// use portcullis::rate_limit::{Clock, ManualClock};
    /// assert_eq!(ManualClock::new(42).now_us(), 42);
    /// ```
    pub fn new(us: u64) -> Self {
        ManualClock(AtomicU64::new(us))
    }

    /// Moves the clock forward.
    ///
    /// ```
    /// use portcullis::rate_limit::{Clock, ManualClock};
    /// let clock = ManualClock::new(1_000);
    /// clock.advance(2_000_000);
    /// assert_eq!(clock.now_us(), 2_001_000);
    /// ```
    pub fn advance(&self, us: u64) {
        self.0.fetch_add(us, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_us(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// One limit to check and charge for one request.
///
/// ```
/// use portcullis::policy::Algorithm;
/// use portcullis::rate_limit::{Charge, algorithm::Rule, memory::MemoryStore};
/// let store = MemoryStore::new(1000);
/// let rule = Rule::new(3, 60_000_000, Algorithm::FixedWindow, 0);
/// // An expensive request costs the whole limit.
/// let charge = Charge { key: "/api/export|default|ip:203.0.113.7", rule, cost: 3 };
/// let verdict = store.decide_now(&[charge]).unwrap()[0];
/// assert!(verdict.allowed && verdict.remaining == 0);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Charge<'a> {
    /// The full key: route pattern, limit and subject.
    pub key: &'a str,
    /// The limit.
    pub rule: Rule,
    /// The request's cost.
    pub cost: u32,
}

/// A store failure (connection refused, timeout, I/O error).
///
/// ```
/// use portcullis::rate_limit::StoreError;
/// let e = StoreError::new("redis unreachable");
/// assert_eq!(e, StoreError("redis unreachable".into()));
/// assert_eq!(e.to_string(), "redis unreachable");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl StoreError {
    /// An error with a message (never holding secrets).
    ///
    /// ```
    /// use portcullis::rate_limit::StoreError;
    /// assert_eq!(StoreError::new("timeout").0, "timeout");
    /// ```
    pub fn new(msg: impl Into<String>) -> Self {
        StoreError(msg.into())
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

/// Where counters live. `decide` checks every charge and, only when all allow, charges them
/// all — atomically with respect to concurrent decisions on the same keys.
///
/// ```
/// use portcullis::auth::BoxFuture;
/// use portcullis::rate_limit::{Charge, RateLimitStore, StoreError, algorithm::Verdict};
/// /// A store that is always down (to test `on_store_error`).
/// struct Down;
/// impl RateLimitStore for Down {
///     fn decide<'a>(&'a self, _: &'a [Charge<'a>]) -> BoxFuture<'a, Result<Vec<Verdict>, StoreError>> {
///         Box::pin(async { Err(StoreError::new("store down")) })
///     }
///     fn name(&self) -> &'static str {
///         "down"
///     }
/// }
/// assert!(Down.decide_now(&[]).is_none()); // decided asynchronously only
/// ```
pub trait RateLimitStore: Send + Sync + 'static {
    /// Decides the charges together; one verdict per charge, in order.
    fn decide<'a>(
        &'a self,
        charges: &'a [Charge<'a>],
    ) -> BoxFuture<'a, Result<Vec<Verdict>, StoreError>>;

    /// The same decision, when the store can take it without waiting (an in-process store):
    /// the limiter then skips the boxed future of [`RateLimitStore::decide`]. A store that
    /// answers here must answer [`RateLimitStore::decide`] the same way, and must answer
    /// here always or never: the limiter asks once, with no charges, when it is built, and
    /// then builds a request's keys only for the path the store takes. Default: `None`
    /// (always asked through `decide`).
    ///
    /// ```
    /// use portcullis::rate_limit::algorithm::Rule;
    /// use portcullis::rate_limit::{Charge, RateLimitStore};
    /// use portcullis::rate_limit::memory::MemoryStore;
    /// use portcullis::policy::Algorithm;
    ///
    /// let store: &dyn RateLimitStore = &MemoryStore::new(1000);
    /// let charge = Charge { key: "k", rule: Rule::new(1, 60_000_000, Algorithm::FixedWindow, 0), cost: 1 };
    /// let first = store.decide_now(&[charge]).unwrap().unwrap();
    /// assert!(first[0].allowed);
    /// ```
    fn decide_now(&self, charges: &[Charge<'_>]) -> Option<Result<Vec<Verdict>, StoreError>> {
        let _ = charges;
        None
    }

    /// The store's kind, for logs and metrics.
    fn name(&self) -> &'static str;

    /// Whether the store can decide now, for readiness checks: a round trip through the
    /// connection decisions use (no new connection per probe), charging nothing. Default:
    /// `Ok` (an in-process store is always there).
    ///
    /// ```
    /// use portcullis::rate_limit::{RateLimitStore, memory::MemoryStore, sqlite::SqliteStore};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// assert!(MemoryStore::new(1000).ping().await.is_ok());
    /// assert!(SqliteStore::open(":memory:").unwrap().ping().await.is_ok());
    /// # });
    /// ```
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    /// Records that `key` (a client key) is banned until `until_unix_ms`, for the other
    /// replicas sharing the store to find ([`RateLimitStore::bans`]); a later end wins over
    /// an earlier one. Default: `Ok` without storing anything (an in-process store has no
    /// one to share with; the [`BanList`](crate::ban::BanList) keeps its own copy).
    ///
    /// ```
    /// use portcullis::rate_limit::{RateLimitStore, sqlite::SqliteStore};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let store = SqliteStore::open(":memory:").unwrap();
    /// store.ban("203.0.113.7", u64::MAX / 2).await.unwrap();
    /// assert_eq!(store.bans().await.unwrap(), [("203.0.113.7".to_string(), u64::MAX / 2)]);
    /// # });
    /// ```
    fn ban<'a>(
        &'a self,
        key: &'a str,
        until_unix_ms: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let _ = (key, until_unix_ms);
        Box::pin(async { Ok(()) })
    }

    /// The bans still running (client key, end in ms since the Unix epoch), dropping those
    /// that have run out. Default: none.
    ///
    /// ```
    /// use portcullis::rate_limit::{RateLimitStore, memory::MemoryStore};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// assert!(MemoryStore::new(1000).bans().await.unwrap().is_empty());
    /// # });
    /// ```
    fn bans(&self) -> BoxFuture<'_, Result<Vec<(String, u64)>, StoreError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// Lifts the ban on `key` and forgets the count kept under `counter` (as if never
    /// charged): what an operator lifting a ban by hand means, so that the client's next
    /// refusal does not ban it again at once. Default: `Ok` (nothing stored).
    ///
    /// ```
    /// use portcullis::rate_limit::{RateLimitStore, sqlite::SqliteStore};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let store = SqliteStore::open(":memory:").unwrap();
    /// store.ban("203.0.113.7", u64::MAX / 2).await.unwrap();
    /// store.lift_ban("203.0.113.7", "ban-offences|203.0.113.7").await.unwrap();
    /// assert!(store.bans().await.unwrap().is_empty());
    /// # });
    /// ```
    fn lift_ban<'a>(
        &'a self,
        key: &'a str,
        counter: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let _ = (key, counter);
        Box::pin(async { Ok(()) })
    }
}

/// Milliseconds since the Unix epoch, by the system clock: the time bans are stored in.
pub(crate) fn unix_ms() -> u64 {
    SystemClock.now_us() / 1000
}

/// A store's outage as one of its users (the rate limiter, the brute-force limit, the ban
/// list) lives it: each failure counted, the first of an outage and its end logged once each
/// rather than per request. The flag is read before it is written, so the answered path of
/// every request stays a plain load.
#[derive(Debug)]
pub(crate) struct StoreOutage {
    /// Whose store, for the log: "rate-limit", "brute-force", "ban-list".
    what: &'static str,
    down: AtomicBool,
    errors: AtomicU64,
}

impl StoreOutage {
    pub(crate) const fn new(what: &'static str) -> Self {
        StoreOutage {
            what,
            down: AtomicBool::new(false),
            errors: AtomicU64::new(0),
        }
    }

    /// Counts a failure of `store` while `doing` something; logs the first of an outage.
    #[cold]
    pub(crate) fn failed(
        &self,
        store: &str,
        e: &StoreError,
        mode: OnStoreError,
        doing: &'static str,
    ) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if !self.down.swap(true, Ordering::AcqRel) {
            tracing::error!(store, error = %e, ?mode, doing, what = self.what,
                "store failed; applying on_store_error until it recovers");
        }
    }

    /// Notes that `store` answered; logs the end of an outage.
    #[inline]
    pub(crate) fn answered(&self, store: &str) {
        if self.down.load(Ordering::Relaxed) && self.down.swap(false, Ordering::AcqRel) {
            tracing::warn!(store, what = self.what, "store recovered");
        }
    }

    /// Failures counted so far.
    pub(crate) fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

/// What to do when the store fails.
///
/// ```
/// use std::sync::Arc;
/// use portcullis::rate_limit::{OnStoreError, RateLimiter, memory::MemoryStore};
/// assert_eq!(OnStoreError::default(), OnStoreError::Closed);
/// let limiter = RateLimiter::new(Arc::new(MemoryStore::new(1000))).on_store_error(OnStoreError::Open);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnStoreError {
    /// Refuse with 503 (the default: an attacker cannot switch limits off by breaking Redis).
    #[default]
    Closed,
    /// Let the request through.
    Open,
}

/// Which response headers describe the limits.
///
/// ```
/// use std::sync::Arc;
/// use portcullis::rate_limit::{HeaderStyle, RateLimiter, memory::MemoryStore};
/// assert_eq!(HeaderStyle::default(), HeaderStyle::Draft);
/// let quiet = RateLimiter::new(Arc::new(MemoryStore::new(1000))).header_style(HeaderStyle::None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderStyle {
    /// `RateLimit-Policy` and `RateLimit` (IETF draft).
    #[default]
    Draft,
    /// The draft headers plus `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`.
    DraftAndLegacy,
    /// No headers except `Retry-After` on 429.
    None,
}

/// Counters of the limiter, for metrics and tests.
///
/// ```
/// use std::sync::Arc;
/// use portcullis::rate_limit::{RateLimiter, memory::MemoryStore};
/// let limiter = RateLimiter::new(Arc::new(MemoryStore::new(1000)));
/// let stats = limiter.stats();
/// assert_eq!(stats.allowed.get(), 0);
/// assert_eq!(stats.limited.get(), 0);
/// ```
#[derive(Debug, Default)]
pub struct LimiterStats {
    /// Requests allowed.
    pub allowed: Counter,
    /// Requests refused with 429.
    pub limited: Counter,
    /// Decisions taken without the store (failures).
    pub store_errors: Counter,
}

/// The rate-limit guard for [`SecurityLayer`](crate::SecurityLayer)'s step 10.
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use portcullis::policy::{RateKey, RateLimitSpec};
/// use portcullis::rate_limit::{RateLimiter, memory::MemoryStore};
/// use portcullis::{Policy, SecurityLayer};
/// use tower::{Layer, ServiceExt};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let once_a_minute = RateLimitSpec::new(1, Duration::from_secs(60), RateKey::Route);
/// let layer = SecurityLayer::bare()
///     .default_policy(Policy::open().rate_limits([once_a_minute]))
///     .rate_limiter(Arc::new(RateLimiter::new(Arc::new(MemoryStore::new(1000)))))
///     .build()
///     .unwrap();
/// let app = layer.layer(axum::Router::new().fallback(|| async { "ok" }));
/// let get = || http::Request::get("/").body(axum::body::Body::empty()).unwrap();
/// assert_eq!(app.clone().oneshot(get()).await.unwrap().status(), 200);
/// let refused = app.oneshot(get()).await.unwrap();
/// assert_eq!(refused.status(), 429);
/// assert!(refused.headers().contains_key("retry-after"));
/// # });
/// ```
pub struct RateLimiter {
    store: Arc<dyn RateLimitStore>,
    on_error: OnStoreError,
    headers: HeaderStyle,
    outage: StoreOutage,
    stats: Arc<LimiterStats>,
    /// The store decides at once ([`RateLimitStore::decide_now`]), asked when built.
    at_once: bool,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("store", &self.store.name())
            .field("on_error", &self.on_error)
            .finish()
    }
}

impl RateLimiter {
    /// A limiter over `store`, failing closed, with the draft headers.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use portcullis::rate_limit::{RateLimiter, memory::MemoryStore};
    /// let limiter = RateLimiter::new(Arc::new(MemoryStore::new(100_000)));
    /// assert!(format!("{limiter:?}").contains("memory"));
    /// ```
    pub fn new(store: Arc<dyn RateLimitStore>) -> Self {
        RateLimiter {
            at_once: store.decide_now(&[]).is_some(),
            store,
            on_error: OnStoreError::Closed,
            headers: HeaderStyle::Draft,
            outage: StoreOutage::new("rate-limit"),
            stats: Arc::new(LimiterStats::default()),
        }
    }

    /// Chooses the failure mode.
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use portcullis::auth::BoxFuture;
    /// use portcullis::policy::{RateKey, RateLimitSpec};
    /// use portcullis::rate_limit::{Charge, OnStoreError, RateLimitStore, RateLimiter, StoreError, algorithm::Verdict};
    /// use portcullis::{Policy, SecurityLayer};
    /// use tower::{Layer, ServiceExt};
    /// struct Down;
    /// impl RateLimitStore for Down {
    ///     fn decide<'a>(&'a self, _: &'a [Charge<'a>]) -> BoxFuture<'a, Result<Vec<Verdict>, StoreError>> {
    ///         Box::pin(async { Err(StoreError::new("store down")) })
    ///     }
    ///     fn name(&self) -> &'static str { "down" }
    /// }
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let status = |mode| async move {
    ///     let limiter = RateLimiter::new(Arc::new(Down)).on_store_error(mode);
    ///     let layer = SecurityLayer::bare()
    ///         .default_policy(Policy::open().rate_limits([RateLimitSpec::new(9, Duration::from_secs(60), RateKey::Ip)]))
    ///         .rate_limiter(Arc::new(limiter))
    ///         .build()
    ///         .unwrap();
    ///     let app = layer.layer(axum::Router::new().fallback(|| async { "ok" }));
    ///     app.oneshot(http::Request::get("/").body(axum::body::Body::empty()).unwrap()).await.unwrap().status()
    /// };
    /// assert_eq!(status(OnStoreError::Closed).await, 503);
    /// assert_eq!(status(OnStoreError::Open).await, 200);
    /// # });
    /// ```
    pub fn on_store_error(mut self, mode: OnStoreError) -> Self {
        self.on_error = mode;
        self
    }

    /// Chooses the response headers.
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use portcullis::policy::{RateKey, RateLimitSpec};
    /// use portcullis::rate_limit::{HeaderStyle, RateLimiter, memory::MemoryStore};
    /// use portcullis::{Policy, SecurityLayer};
    /// use tower::{Layer, ServiceExt};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let limiter = RateLimiter::new(Arc::new(MemoryStore::new(1000))).header_style(HeaderStyle::DraftAndLegacy);
    /// let layer = SecurityLayer::bare()
    ///     .default_policy(Policy::open().rate_limits([RateLimitSpec::new(60, Duration::from_secs(60), RateKey::Ip)]))
    ///     .rate_limiter(Arc::new(limiter))
    ///     .build()
    ///     .unwrap();
    /// let app = layer.layer(axum::Router::new().fallback(|| async { "ok" }));
    /// let res = app.oneshot(http::Request::get("/").body(axum::body::Body::empty()).unwrap()).await.unwrap();
    /// assert_eq!(res.headers()["ratelimit-policy"], r#""default";q=60;w=60"#);
    /// assert_eq!(res.headers()["ratelimit-limit"], "60");
    /// assert_eq!(res.headers()["ratelimit-remaining"], "59");
    /// # });
    /// ```
    pub fn header_style(mut self, style: HeaderStyle) -> Self {
        self.headers = style;
        self
    }

    /// The limiter's counters.
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use portcullis::policy::{RateKey, RateLimitSpec};
    /// use portcullis::rate_limit::{RateLimiter, memory::MemoryStore};
    /// use portcullis::{Policy, SecurityLayer};
    /// use tower::{Layer, ServiceExt};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let limiter = Arc::new(RateLimiter::new(Arc::new(MemoryStore::new(1000))));
    /// let layer = SecurityLayer::bare()
    ///     .default_policy(Policy::open().rate_limits([RateLimitSpec::new(1, Duration::from_secs(60), RateKey::Route)]))
    ///     .rate_limiter(limiter.clone())
    ///     .build()
    ///     .unwrap();
    /// let app = layer.layer(axum::Router::new().fallback(|| async { "ok" }));
    /// for _ in 0..3 {
    ///     let _ = app.clone().oneshot(http::Request::get("/").body(axum::body::Body::empty()).unwrap()).await;
    /// }
    /// let stats = limiter.stats();
    /// assert_eq!(stats.allowed.get(), 1);
    /// assert_eq!(stats.limited.get(), 2);
    /// # });
    /// ```
    pub fn stats(&self) -> Arc<LimiterStats> {
        self.stats.clone()
    }

    /// Counts into `stats` rather than fresh counters, so limiters built one after another
    /// (a gateway's config reloads) keep one running count.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use portcullis::rate_limit::{LimiterStats, RateLimiter, memory::MemoryStore};
    /// let stats = Arc::new(LimiterStats::default());
    /// let store = Arc::new(MemoryStore::new(1000));
    /// let limiter = RateLimiter::new(store).with_stats(stats.clone());
    /// assert!(Arc::ptr_eq(&limiter.stats(), &stats));
    /// ```
    pub fn with_stats(mut self, stats: Arc<LimiterStats>) -> Self {
        self.stats = stats;
        self
    }

    /// Decides `limits` for `subject`s computed from the request, charging only if all allow.
    async fn decide(&self, parts: &Parts, exchange: &mut Exchange<'_>) -> Result<(), Rejection> {
        let decided = {
            let policy = exchange.policy();
            let limits = policy.limits();
            let keys = Keys::of(limits, policy.limit_texts(), parts, exchange);
            self.store.decide(keys.charges(limits).as_slice()).await
        };
        self.conclude(decided, exchange)
    }

    /// [`RateLimiter::decide`] for a store that decides without waiting; `None` otherwise
    /// (before any key is built: `decide` builds them).
    fn decide_now(&self, parts: &Parts, exchange: &mut Exchange) -> Option<Result<(), Rejection>> {
        if !self.at_once {
            return None;
        }
        let decided = {
            let policy = exchange.policy();
            let limits = policy.limits();
            let keys = Keys::of(limits, policy.limit_texts(), parts, exchange);
            self.store.decide_now(keys.charges(limits).as_slice())?
        };
        Some(self.conclude(decided, exchange))
    }

    /// The verdicts (or the store's failure) as the request's outcome and headers.
    fn conclude(
        &self,
        decided: Result<Vec<Verdict>, StoreError>,
        exchange: &mut Exchange,
    ) -> Result<(), Rejection> {
        let verdicts = match decided {
            Ok(v) => {
                self.outage.answered(self.store.name());
                v
            }
            Err(e) => return self.store_failed(&e, exchange),
        };
        // The policy is read while the fields are added: two fields of the exchange, no
        // reference count taken on the policy every worker shares.
        let (policy, fields) = exchange.policy_and_fields();
        let limits = policy.limits();
        let violated = verdicts.iter().position(|v| !v.allowed);
        match violated {
            None => {
                self.stats.allowed.add(1);
                render_headers(
                    self.headers,
                    limits,
                    policy.limit_texts(),
                    &verdicts,
                    |k, v| fields.push(k, v),
                );
                Ok(())
            }
            Some(i) => Err(self.refusal(i, policy, &verdicts)),
        }
    }

    /// The 429 for a request limit `i` refused (out of line: refusals are the rare path, and
    /// the message formatting would crowd the allowed path's code).
    #[cold]
    #[inline(never)]
    fn refusal(&self, i: usize, policy: &crate::Policy, verdicts: &[Verdict]) -> Rejection {
        let limits = policy.limits();
        self.stats.limited.add(1);
        let retry = verdicts
            .iter()
            .filter(|v| !v.allowed)
            .map(|v| v.retry_after_us)
            .max()
            .unwrap_or(0)
            .div_ceil(1_000_000)
            .max(1);
        let mut r = Rejection::rate_limited(retry).with_message(format!(
            "Rate limit \"{}\" exceeded: {} requests per {} s",
            limits[i].name,
            limits[i].requests,
            rule_of(&limits[i]).window_secs()
        ));
        let mut headers = Vec::with_capacity(5);
        render_headers(
            self.headers,
            limits,
            policy.limit_texts(),
            verdicts,
            |k, v| headers.push((k, v)),
        );
        for (k, v) in headers {
            r = r.with_header(k, v);
        }
        r
    }

    #[cold]
    #[inline(never)]
    fn store_failed(&self, e: &StoreError, exchange: &mut Exchange) -> Result<(), Rejection> {
        self.stats.store_errors.add(1);
        self.outage
            .failed(self.store.name(), e, self.on_error, "decide");
        match self.on_error {
            OnStoreError::Closed => Err(Rejection::store_unavailable()),
            OnStoreError::Open => {
                exchange.note(
                    AuditAction::SecurityEvent,
                    "rate_limit_store_error",
                    "rate-limit store failed; request let through (on_store_error = open)",
                );
                Ok(())
            }
        }
    }
}

impl Guard for RateLimiter {
    fn check<'a>(
        &'a self,
        parts: &'a Parts,
        exchange: &'a mut Exchange,
    ) -> BoxFuture<'a, Result<(), Rejection>> {
        Box::pin(self.decide(parts, exchange))
    }

    fn check_now(&self, parts: &Parts, exchange: &mut Exchange) -> Option<Result<(), Rejection>> {
        self.decide_now(parts, exchange)
    }
}

/// The keys of a request's limits. One limit (the common case) needs no vectors of keys and
/// charges.
enum Keys {
    One(String),
    Many(Vec<String>),
}

/// The charges of a request's limits, borrowing their [`Keys`].
enum Charges<'a> {
    One([Charge<'a>; 1]),
    Many(Vec<Charge<'a>>),
}

impl Keys {
    fn of(limits: &[RateLimitSpec], texts: &LimitTexts, parts: &Parts, x: &Exchange) -> Keys {
        match (limits, &*texts.limits) {
            ([only], [text]) => Keys::One(key_for(only, text, parts, x)),
            _ => Keys::Many(
                limits
                    .iter()
                    .zip(texts.limits.iter())
                    .map(|(l, t)| key_for(l, t, parts, x))
                    .collect(),
            ),
        }
    }

    fn charges<'a>(&'a self, limits: &[RateLimitSpec]) -> Charges<'a> {
        let charge = |l: &RateLimitSpec, key: &'a str| Charge {
            key,
            rule: rule_of(l),
            cost: l.cost.max(1),
        };
        match self {
            Keys::One(key) => match limits.first() {
                Some(l) => Charges::One([charge(l, key)]),
                None => Charges::Many(Vec::new()),
            },
            Keys::Many(keys) => {
                Charges::Many(limits.iter().zip(keys).map(|(l, k)| charge(l, k)).collect())
            }
        }
    }
}

impl<'a> Charges<'a> {
    fn as_slice(&self) -> &[Charge<'a>] {
        match self {
            Charges::One(one) => one,
            Charges::Many(many) => many,
        }
    }
}

/// The executable rule of a spec.
///
/// ```
/// use std::time::Duration;
/// use portcullis::policy::{RateKey, RateLimitSpec};
/// use portcullis::rate_limit::rule_of;
/// let rule = rule_of(&RateLimitSpec::new(60, Duration::from_secs(60), RateKey::Ip));
/// assert_eq!((rule.limit, rule.window_us, rule.window_secs()), (60, 60_000_000, 60));
/// ```
pub fn rule_of(spec: &RateLimitSpec) -> Rule {
    Rule::new(
        spec.requests,
        spec.window.as_micros().min(u128::from(u64::MAX)) as u64,
        spec.algorithm,
        spec.burst,
    )
}

/// The key of one limit for one request: route pattern, limit and subject.
fn key_for(spec: &RateLimitSpec, text: &LimitText, parts: &Parts, x: &Exchange) -> String {
    // Built by hand (this runs on every request): `ROUTE|NAME:LIMIT/WINDOW_USAlgorithm|SUBJECT`,
    // the middle rendered once per policy.
    let route = x.route();
    let mut key = String::with_capacity(route.len() + text.key.len() + 48);
    key.push_str(route);
    key.push('|');
    key.push_str(&text.key);
    let ip = |key: &mut String| {
        key.push_str("ip:");
        x.client_ip().push_key(key);
    };
    match &spec.key {
        RateKey::Ip => ip(&mut key),
        RateKey::User => match x.principal() {
            Some(p) => {
                // An API key's id and a token's subject are named by different people: a
                // user who could pick the sub `ci-bot` must not spend the key `ci-bot`'s quota.
                key.push_str(if p.method == AuthMethod::ApiKey {
                    "key:"
                } else {
                    "user:"
                });
                key.push_str(&p.id);
            }
            None => ip(&mut key),
        },
        RateKey::ApiKey => match x.principal() {
            Some(p) if p.method == AuthMethod::ApiKey => {
                key.push_str("key:");
                key.push_str(&p.id);
            }
            _ => ip(&mut key),
        },
        RateKey::Header(name) => match parts
            .headers
            .get(name.as_str())
            .and_then(|v| v.to_str().ok())
        {
            Some(v) => {
                key.push_str("h:");
                // At most 128 bytes, cut on a character boundary (the value is ASCII).
                key.push_str(v.get(..v.len().min(128)).unwrap_or(v));
            }
            None => ip(&mut key),
        },
        RateKey::Route => key.push_str("route"),
    }
    key
}

/// The algorithm's name as its `Debug` form spells it (part of stored keys: never change). No
/// catch-all arm: a new algorithm must be given its name here.
fn algorithm_name(a: crate::policy::Algorithm) -> &'static str {
    match a {
        crate::policy::Algorithm::SlidingWindow => "SlidingWindow",
        crate::policy::Algorithm::TokenBucket => "TokenBucket",
        crate::policy::Algorithm::FixedWindow => "FixedWindow",
    }
}

/// Appends `n` in decimal (two digits at a time, no formatting machinery or UTF-8 check).
fn push_decimal(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// What the limiter writes for a policy's limits, rendered once when the limits are set (see
/// [`Policy`](crate::Policy)): the `RateLimit-Policy` field, and for each limit the middle of
/// its store key and the start of its `RateLimit` item.
#[derive(Debug, Clone, Default)]
pub(crate) struct LimitTexts {
    policy: Option<HeaderValue>,
    limits: Box<[LimitText]>,
}

/// One limit's constant texts.
#[derive(Debug, Clone)]
struct LimitText {
    /// `NAME:LIMIT/WINDOW_USAlgorithm|`: the key between the route and the subject (part of
    /// stored keys: never change).
    key: Box<str>,
    /// `"NAME";r=`: the limit's `RateLimit` item up to its remaining count.
    item: Box<str>,
}

impl LimitTexts {
    /// The texts of `limits`.
    pub(crate) fn of(limits: &[RateLimitSpec]) -> Self {
        let texts = limits
            .iter()
            .map(|l| {
                let rule = rule_of(l);
                let mut key = String::with_capacity(l.name.len() + 48);
                key.push_str(&l.name);
                key.push(':');
                push_decimal(&mut key, u64::from(rule.limit));
                key.push('/');
                push_decimal(&mut key, rule.window_us);
                key.push_str(algorithm_name(rule.algorithm));
                key.push('|');
                let mut item = String::with_capacity(l.name.len() + 8);
                push_sf_string(&mut item, &l.name);
                item.push_str(";r=");
                LimitText {
                    key: key.into(),
                    item: item.into(),
                }
            })
            .collect();
        LimitTexts {
            policy: policy_field(limits),
            limits: texts,
        }
    }

    /// The `RateLimit-Policy` field (`None` without limits).
    pub(crate) fn policy_field(&self) -> Option<&HeaderValue> {
        self.policy.as_ref()
    }
}

/// The `RateLimit-Policy` field for `limits`: `"name";q=REQUESTS;w=SECONDS, …`.
fn policy_field(limits: &[RateLimitSpec]) -> Option<HeaderValue> {
    if limits.is_empty() {
        return None;
    }
    let mut policy = String::with_capacity(32 * limits.len());
    for l in limits {
        if !policy.is_empty() {
            policy.push_str(", ");
        }
        push_sf_string(&mut policy, &l.name);
        policy.push_str(";q=");
        push_decimal(&mut policy, u64::from(l.requests));
        policy.push_str(";w=");
        push_decimal(&mut policy, rule_of(l).window_secs());
    }
    // Cloned onto every response of the route: static bytes, no shared count to bump.
    crate::shared::static_value(&policy)
}

/// The response headers for the limits' verdicts, handed to `emit` one by one. `texts` are
/// [`LimitTexts::of`] `limits`.
fn render_headers(
    style: HeaderStyle,
    limits: &[RateLimitSpec],
    texts: &LimitTexts,
    verdicts: &[Verdict],
    mut emit: impl FnMut(HeaderName, HeaderValue),
) {
    if style == HeaderStyle::None || limits.is_empty() {
        return;
    }
    let mut state = String::with_capacity(32 * limits.len());
    for (t, v) in texts.limits.iter().zip(verdicts) {
        if !state.is_empty() {
            state.push_str(", ");
        }
        state.push_str(&t.item);
        push_decimal(&mut state, u64::from(v.remaining));
        state.push_str(";t=");
        push_decimal(&mut state, v.reset_us.div_ceil(1_000_000));
    }
    // The string becomes the header value as it is (checked, not copied). At its exact length
    // (a shrink in place), the bytes take it over without allocating a shared header.
    state.shrink_to_fit();
    if let (Some(p), Ok(s)) = (
        texts.policy_field(),
        HeaderValue::from_maybe_shared(bytes::Bytes::from(state)),
    ) {
        emit(RATELIMIT_POLICY, p.clone());
        emit(RATELIMIT, s);
    }
    if style == HeaderStyle::DraftAndLegacy {
        // The most restrictive limit speaks for the triplet.
        if let Some((l, v)) = limits.iter().zip(verdicts).min_by_key(|(_, v)| v.remaining) {
            emit(
                HeaderName::from_static("ratelimit-limit"),
                HeaderValue::from(l.requests),
            );
            emit(
                HeaderName::from_static("ratelimit-remaining"),
                HeaderValue::from(v.remaining),
            );
            emit(
                HeaderName::from_static("ratelimit-reset"),
                HeaderValue::from(v.reset_us.div_ceil(1_000_000)),
            );
        }
    }
}

/// A structured-field string: quoted, with `"` and `\` escaped and non-printables dropped.
fn push_sf_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => {}
        }
    }
    out.push('"');
}

/// Adds the header map to `out` (helper for stores' tests).
///
/// ```
/// use http::{HeaderMap, HeaderName, HeaderValue};
/// use portcullis::rate_limit::append_all;
/// let mut out = HeaderMap::new();
/// let name = HeaderName::from_static("ratelimit");
/// append_all(&mut out, vec![(name.clone(), HeaderValue::from_static("a")), (name, HeaderValue::from_static("b"))]);
/// assert_eq!(out.get_all("ratelimit").iter().count(), 2);
/// ```
#[doc(hidden)]
pub fn append_all(out: &mut HeaderMap, headers: Vec<(HeaderName, HeaderValue)>) {
    for (k, v) in headers {
        out.append(k, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_written_as_display_writes_them() {
        let mut values = vec![
            0,
            1,
            9,
            10,
            99,
            100,
            999_999,
            1_000_000,
            10_000_000,
            u64::MAX,
        ];
        values.extend((0..64).map(|i| 1u64 << i));
        for n in values {
            let mut s = String::from("k:");
            push_decimal(&mut s, n);
            assert_eq!(s, format!("k:{n}"));
        }
    }

    #[test]
    fn hand_built_keys_spell_numbers_and_algorithms_as_format_did() {
        // Stored keys (Redis, SQLite) must not change across versions.
        for n in [
            0u64,
            7,
            10,
            59,
            1_000_000,
            60_000_000,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut s = String::from("x");
            push_decimal(&mut s, n);
            assert_eq!(s, format!("x{n}"));
        }
        for a in [
            crate::policy::Algorithm::SlidingWindow,
            crate::policy::Algorithm::TokenBucket,
            crate::policy::Algorithm::FixedWindow,
        ] {
            assert_eq!(algorithm_name(a), format!("{a:?}"));
        }
        let mut s = String::new();
        push_sf_string(&mut s, "a \"b\\ c\u{7f}é");
        assert_eq!(s, "\"a \\\"b\\\\ c\"");
    }
    use std::time::Duration;

    #[test]
    fn limit_texts_spell_the_key_and_item_as_before() {
        // The key's middle as `key_for` spelled it before it was rendered once per policy.
        let specs = [
            RateLimitSpec::new(100, Duration::from_secs(60), RateKey::Ip).named("api"),
            RateLimitSpec::new(5, Duration::from_millis(1500), RateKey::User)
                .named("a \"b\"")
                .algorithm(crate::policy::Algorithm::TokenBucket),
        ];
        let texts = LimitTexts::of(&specs);
        assert_eq!(&*texts.limits[0].key, "api:100/60000000SlidingWindow|");
        assert_eq!(&*texts.limits[0].item, "\"api\";r=");
        assert_eq!(&*texts.limits[1].key, "a \"b\":5/1500000TokenBucket|");
        assert_eq!(&*texts.limits[1].item, "\"a \\\"b\\\"\";r=");
        assert_eq!(
            texts.policy_field().unwrap(),
            "\"api\";q=100;w=60, \"a \\\"b\\\"\";q=5;w=2"
        );
        assert!(LimitTexts::of(&[]).policy_field().is_none());
    }

    #[test]
    fn headers_follow_the_draft() {
        let l = RateLimitSpec::new(60, Duration::from_secs(60), RateKey::Ip);
        let v = Verdict {
            allowed: true,
            remaining: 59,
            reset_us: 41_500_000,
            retry_after_us: 0,
        };
        let mut h = Vec::new();
        let texts = LimitTexts::of(std::slice::from_ref(&l));
        render_headers(HeaderStyle::DraftAndLegacy, &[l], &texts, &[v], |k, v| {
            h.push((k, v))
        });
        let get = |n: &str| {
            h.iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.to_str().unwrap().to_string())
        };
        assert_eq!(get("ratelimit-policy").unwrap(), "\"default\";q=60;w=60");
        assert_eq!(get("ratelimit").unwrap(), "\"default\";r=59;t=42");
        assert_eq!(get("ratelimit-remaining").unwrap(), "59");
    }
}

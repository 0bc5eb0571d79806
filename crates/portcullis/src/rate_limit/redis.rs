//! The Redis store: shared counters for several gateway replicas.
//!
//! Every decision is exactly one round trip: one Lua script (sent with `EVALSHA`, falling back
//! to `EVAL` when the server does not have it cached) reads every limit's state, evaluates them
//! with the same arithmetic as [`algorithm`](super::algorithm), and writes them only if all
//! allow. The script reads the time from Redis itself (`TIME`), so replicas with skewed clocks
//! agree. Keys carry a configurable prefix and a TTL just past their expiry, so Redis never
//! fills with dead keys. The connection reconnects by itself; while Redis is unreachable each
//! decision fails fast (bounded by a timeout) and the limiter's `on_store_error` applies.
//!
//! ```no_run
//! # async fn run() -> Result<(), portcullis::rate_limit::StoreError> {
//! use portcullis::rate_limit::{redis::RedisStore, RateLimiter};
//! let store = RedisStore::connect("redis://127.0.0.1:6379", None, "portcullis:").await?;
//! let limiter = RateLimiter::new(std::sync::Arc::new(store));
//! # Ok(()) }
//! ```

use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, Script};
use tokio::sync::Mutex;

use super::algorithm::Verdict;
use super::{Charge, RateLimitStore, StoreError};
use crate::auth::BoxFuture;
use crate::policy::Algorithm;

/// The decision script.
///
/// ```
/// use portcullis::rate_limit::redis::SCRIPT;
/// // The script reads the time from Redis, so replicas with skewed clocks agree.
/// assert!(SCRIPT.contains("redis.call('TIME')"));
/// ```
pub const SCRIPT: &str = include_str!("redis.lua");

/// How long one decision may take before the store counts as failed.
///
/// ```
/// use std::time::Duration;
/// use portcullis::rate_limit::redis::DEFAULT_TIMEOUT;
/// assert_eq!(DEFAULT_TIMEOUT, Duration::from_millis(500));
/// ```
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);

/// The Redis [`RateLimitStore`].
///
/// ```
/// use std::sync::Arc;
/// use portcullis::rate_limit::{OnStoreError, RateLimiter, redis::RedisStore};
/// // `new` only reads the URL: the store connects on its first decision.
/// let store = RedisStore::new("redis://127.0.0.1:6379", std::env::var("REDIS_PASSWORD").ok(), "portcullis:")?;
/// assert!(!format!("{store:?}").contains("6379")); // `Debug` never shows the connection
/// let limiter = RateLimiter::new(Arc::new(store)).on_store_error(OnStoreError::Closed);
/// # Ok::<(), portcullis::rate_limit::StoreError>(())
/// ```
pub struct RedisStore {
    client: redis::Client,
    conn: Mutex<Option<ConnectionManager>>,
    last_attempt: Mutex<Option<Instant>>,
    script: Script,
    prefix: String,
    timeout: Duration,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The connection info may hold a password: never print it.
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to `url` (`redis://HOST:PORT[/DB]`), with an optional password (from an
    /// environment variable, never the config file) and a key prefix. Succeeds even when Redis
    /// is down; the first decisions then fail and the limiter's failure mode applies until it
    /// is back.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use portcullis::rate_limit::{RateLimiter, redis::RedisStore};
    /// # async fn run() -> Result<(), portcullis::rate_limit::StoreError> {
    /// let password = std::env::var("REDIS_PASSWORD").ok();
    /// let store = RedisStore::connect("redis://127.0.0.1:6379/0", password, "portcullis:").await?;
    /// let limiter = RateLimiter::new(Arc::new(store));
    /// # Ok(()) }
    /// ```
    pub async fn connect(
        url: &str,
        password: Option<String>,
        prefix: &str,
    ) -> Result<Self, StoreError> {
        let store = Self::new(url, password, prefix)?;
        let _ = store.connection().await;
        Ok(store)
    }

    /// Like [`connect`](Self::connect) without the first connection attempt: the store
    /// connects on its first decision (for callers that are not async).
    ///
    /// ```
    /// use portcullis::rate_limit::redis::RedisStore;
    /// assert!(RedisStore::new("redis://127.0.0.1:6379/0", None, "portcullis:").is_ok());
    /// assert!(RedisStore::new("not a url", None, "portcullis:").is_err());
    /// ```
    pub fn new(url: &str, password: Option<String>, prefix: &str) -> Result<Self, StoreError> {
        let mut info = url
            .into_connection_info()
            .map_err(|e| StoreError::new(format!("bad redis URL: {}", redis_reason(&e))))?;
        if let Some(pw) = password {
            let redis_info = info.redis_settings().clone().set_password(pw);
            info = info.set_redis_settings(redis_info);
        }
        let client = redis::Client::open(info)
            .map_err(|e| StoreError::new(format!("bad redis URL: {}", redis_reason(&e))))?;
        let store = RedisStore {
            client,
            conn: Mutex::new(None),
            last_attempt: Mutex::new(None),
            script: Script::new(SCRIPT),
            prefix: prefix.to_string(),
            timeout: DEFAULT_TIMEOUT,
        };
        Ok(store)
    }

    /// Sets the per-decision timeout.
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::rate_limit::redis::RedisStore;
    /// let store = RedisStore::new("redis://127.0.0.1:6379", None, "portcullis:")?
    ///     .with_timeout(Duration::from_millis(100));
    /// # Ok::<(), portcullis::rate_limit::StoreError>(())
    /// ```
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        // Not connected yet: try at most every 250 ms, so a dead Redis is not hammered.
        {
            let mut last = self.last_attempt.lock().await;
            if last.is_some_and(|t| t.elapsed() < Duration::from_millis(250)) {
                return Err(StoreError::new("redis unreachable"));
            }
            *last = Some(Instant::now());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1);
        let conn = tokio::time::timeout(
            self.timeout * 2,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| StoreError::new("redis connect timed out"))?
        .map_err(|e| StoreError::new(format!("redis connect failed: {}", redis_reason(&e))))?;
        *guard = Some(conn.clone());
        Ok(conn)
    }
}

fn alg_code(a: Algorithm) -> u8 {
    match a {
        Algorithm::SlidingWindow => 1,
        Algorithm::TokenBucket => 2,
        Algorithm::FixedWindow => 3,
    }
}

impl RateLimitStore for RedisStore {
    fn decide<'a>(
        &'a self,
        charges: &'a [Charge<'a>],
    ) -> BoxFuture<'a, Result<Vec<Verdict>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.connection().await?;
            let mut inv = self.script.prepare_invoke();
            for c in charges {
                inv.key(format!("{}{}", self.prefix, c.key));
                inv.arg(alg_code(c.rule.algorithm))
                    .arg(c.rule.limit)
                    .arg(c.rule.window_us)
                    .arg(c.rule.burst)
                    .arg(c.cost);
            }
            let deadline = tokio::time::Instant::now() + self.timeout;
            let mut answer = tokio::time::timeout_at(deadline, inv.invoke_async(&mut conn)).await;
            // A connection that broke since the last decision (Redis restarted, a failover)
            // fails the first command on it while the manager reconnects: one more try on
            // the new connection, within the same time budget, so the first request after a
            // restart is not refused.
            if let Ok(Err(e)) = &answer
                && (e.is_connection_dropped() || e.is_io_error())
            {
                answer = tokio::time::timeout_at(deadline, inv.invoke_async(&mut conn)).await;
            }
            let flat: Vec<i64> = answer
                .map_err(|_| StoreError::new("redis decision timed out"))?
                .map_err(|e| StoreError::new(format!("redis error: {}", redis_reason(&e))))?;
            if flat.len() != charges.len() * 4 {
                return Err(StoreError::new("redis script returned a malformed answer"));
            }
            Ok(flat
                .chunks(4)
                .map(|r| Verdict {
                    allowed: r[0] == 1,
                    remaining: r[1].clamp(0, i64::from(u32::MAX)) as u32,
                    reset_us: r[2].max(0) as u64,
                    retry_after_us: r[3].max(0) as u64,
                })
                .collect())
        })
    }

    fn name(&self) -> &'static str {
        "redis"
    }

    /// `ZADD <prefix>bans GT until key`: one sorted set of bans scored by their end, where a
    /// later end replaces an earlier one.
    fn ban<'a>(
        &'a self,
        key: &'a str,
        until_unix_ms: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut conn = self.connection().await?;
            let mut cmd = redis::cmd("ZADD");
            cmd.arg(format!("{}bans", self.prefix))
                .arg("GT")
                .arg(until_unix_ms)
                .arg(key);
            let _: i64 = tokio::time::timeout(self.timeout, cmd.query_async(&mut conn))
                .await
                .map_err(|_| StoreError::new("redis ban timed out"))?
                .map_err(|e| StoreError::new(format!("redis error: {}", redis_reason(&e))))?;
            Ok(())
        })
    }

    /// Drops the bans that ran out (`ZREMRANGEBYSCORE -inf now`) and reads the others
    /// (`ZRANGEBYSCORE (now +inf WITHSCORES`, at most [`MAX_LOCAL_BANS`]), in one round trip.
    ///
    /// [`MAX_LOCAL_BANS`]: crate::ban::MAX_LOCAL_BANS
    fn bans(&self) -> BoxFuture<'_, Result<Vec<(String, u64)>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.connection().await?;
            let key = format!("{}bans", self.prefix);
            let now = super::unix_ms();
            let mut pipe = redis::pipe();
            pipe.cmd("ZREMRANGEBYSCORE")
                .arg(&key)
                .arg("-inf")
                .arg(now)
                .ignore()
                .cmd("ZRANGEBYSCORE")
                .arg(&key)
                .arg(format!("({now}"))
                .arg("+inf")
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(0)
                .arg(crate::ban::MAX_LOCAL_BANS);
            let (live,): (Vec<(String, f64)>,) =
                tokio::time::timeout(self.timeout, pipe.query_async(&mut conn))
                    .await
                    .map_err(|_| StoreError::new("redis bans timed out"))?
                    .map_err(|e| StoreError::new(format!("redis error: {}", redis_reason(&e))))?;
            // Scores are whole milliseconds, exact in an f64 until the year 287396.
            Ok(live
                .into_iter()
                .map(|(k, until)| (k, until.max(0.0) as u64))
                .collect())
        })
    }

    /// `ZREM <prefix>bans key` and `DEL <prefix>counter`, in one round trip.
    fn lift_ban<'a>(
        &'a self,
        key: &'a str,
        counter: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut conn = self.connection().await?;
            let mut pipe = redis::pipe();
            pipe.cmd("ZREM")
                .arg(format!("{}bans", self.prefix))
                .arg(key)
                .ignore()
                .cmd("DEL")
                .arg(format!("{}{counter}", self.prefix))
                .ignore();
            let (): () = tokio::time::timeout(self.timeout, pipe.query_async(&mut conn))
                .await
                .map_err(|_| StoreError::new("redis lift ban timed out"))?
                .map_err(|e| StoreError::new(format!("redis error: {}", redis_reason(&e))))?;
            Ok(())
        })
    }

    /// `PING` through the decisions' own connection manager, bounded by the store's timeout.
    ///
    /// ```no_run
    /// use portcullis::rate_limit::{RateLimitStore, redis::RedisStore};
    /// # async fn run() -> Result<(), portcullis::rate_limit::StoreError> {
    /// let store = RedisStore::connect("redis://127.0.0.1:6379", None, "portcullis:").await?;
    /// store.ping().await?; // Err while Redis is down; the manager reconnects by itself
    /// # Ok(()) }
    /// ```
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let mut conn = self.connection().await?;
            let pong: String =
                tokio::time::timeout(self.timeout, redis::cmd("PING").query_async(&mut conn))
                    .await
                    .map_err(|_| StoreError::new("redis ping timed out"))?
                    .map_err(|e| StoreError::new(format!("redis error: {}", redis_reason(&e))))?;
            if pong == "PONG" {
                Ok(())
            } else {
                Err(StoreError::new("redis answered PING with something else"))
            }
        })
    }
}

/// A short reason for an error, without the connection details (which may hold a password).
fn redis_reason(e: &redis::RedisError) -> String {
    format!("{:?}", e.kind())
}

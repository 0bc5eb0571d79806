//! Failed authentications per client: the brute-force limit.
//!
//! [`FailedAuthTracker`] counts refused credentials per key (the client address,
//! [`ClientIp::key`](crate::ClientIp::key), which groups IPv6 by /64) with the rate limiter's
//! sliding window, in a [`RateLimitStore`] — in memory by default, or the same SQLite or Redis
//! store the rate limits use, so several gateway replicas share one count. Once a key reaches
//! the limit (10 per 15 min by default, the seed's `authLimiter`), it gets 429 on
//! authenticated routes until enough failures have slid out of the window. Only refused
//! credentials count: requests without credentials, and successes, do not (a success does not
//! reset the count either, so one valid account cannot launder guesses at others).
//!
//! [`SecurityLayer`](crate::SecurityLayer) asks once the credentials are judged, with one
//! store operation per request: a refused guess is counted and checked at once
//! ([`FailedAuthTracker::count_failure`]), so a burst of guesses sent together gets `limit`
//! answers and 429s, never an answer each; accepted credentials are checked
//! ([`FailedAuthTracker::check`]), so a client past the limit gets 429 whatever it sends and a
//! right guess is not told apart from a wrong one.
//!
//! When the store fails, [`OnStoreError`] decides, as for the rate limits: `Closed` (the
//! default) refuses requests with credentials on authenticated routes with 503 while the
//! store is down — good and bad credentials alike, so guessing is neither unlimited nor told
//! apart from a right guess — and `Open` lets them through to the verdict of their
//! credentials. The outage is logged once, its end once, and every failure is counted
//! ([`FailedAuthTracker::store_errors`]).
//!
//! ```
//! # futures_util::FutureExt::now_or_never(async {
//! use std::time::Duration;
//! use portcullis::auth::{Blocked, FailedAuthTracker};
//! let t = FailedAuthTracker::new(3, Duration::from_secs(900));
//! for _ in 0..3 {
//!     assert!(t.check("203.0.113.7").await.is_ok());
//!     let _ = t.record_failure("203.0.113.7").await;
//! }
//! let Err(Blocked::RetryAfter(retry_after)) = t.check("203.0.113.7").await else { panic!() };
//! // Blocked until enough failures slide out: at most two windows.
//! assert!(retry_after <= Duration::from_secs(1800));
//! assert!(t.check("198.51.100.1").await.is_ok());
//! # }).expect("the memory store answers at once");
//! ```

use std::sync::Arc;
use std::time::Duration;

use crate::policy::Algorithm;
use crate::rate_limit::algorithm::{Rule, Verdict};
use crate::rate_limit::memory::MemoryStore;
use crate::rate_limit::{Charge, OnStoreError, RateLimitStore, StoreError, StoreOutage};

/// Why a client may not try to authenticate now ([`FailedAuthTracker::check`]).
///
/// ```
/// use std::time::Duration;
/// use portcullis::auth::Blocked;
/// assert_ne!(Blocked::RetryAfter(Duration::from_secs(60)), Blocked::StoreUnavailable);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Blocked {
    /// Too many failed authentications: a try fits again after this long (429).
    RetryAfter(Duration),
    /// The store is down and [`OnStoreError::Closed`] applies (503).
    StoreUnavailable,
}

/// Keys the default in-memory store tracks at most.
const MEMORY_KEYS: usize = 100_000;

/// Counts failed authentications per client key; see the [module docs](self).
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use portcullis::auth::FailedAuthTracker;
/// use portcullis::SecurityLayer;
/// let tracker = FailedAuthTracker::new(5, Duration::from_secs(600));
/// let layer = SecurityLayer::builder()
///     .failed_auth(Some(Arc::new(tracker)))
///     .build()
///     .unwrap();
/// ```
pub struct FailedAuthTracker {
    limit: u32,
    window: Duration,
    store: Arc<dyn RateLimitStore>,
    on_error: OnStoreError,
    /// Raised while the store fails, so an outage is logged once (not per request).
    outage: StoreOutage,
}

impl std::fmt::Debug for FailedAuthTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailedAuthTracker")
            .field("limit", &self.limit)
            .field("window", &self.window)
            .field("store", &self.store.name())
            .field("on_store_error", &self.on_error)
            .finish()
    }
}

impl Default for FailedAuthTracker {
    /// 10 failures per 15 minutes, in memory.
    fn default() -> Self {
        FailedAuthTracker::new(10, Duration::from_secs(15 * 60))
    }
}

impl FailedAuthTracker {
    /// Blocks a key after `limit` failures within `window`, counted in memory.
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::auth::FailedAuthTracker;
    /// let t = FailedAuthTracker::new(5, Duration::from_secs(600));
    /// assert_eq!((t.limit(), t.window()), (5, Duration::from_secs(600)));
    /// ```
    pub fn new(limit: u32, window: Duration) -> Self {
        Self::with_store(limit, window, Arc::new(MemoryStore::new(MEMORY_KEYS)))
    }

    /// The same, counted in `store` (the rate limiter's, to share counts between replicas).
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use portcullis::auth::FailedAuthTracker;
    /// use portcullis::rate_limit::{ManualClock, memory::MemoryStore};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let clock = Arc::new(ManualClock::new(1_700_000_000_000_000));
    /// let store = Arc::new(MemoryStore::with_clock(1000, clock.clone()));
    /// let t = FailedAuthTracker::with_store(1, Duration::from_secs(60), store);
    /// assert!(t.record_failure("203.0.113.7").await.is_err()); // the limit is reached
    /// assert!(t.check("203.0.113.7").await.is_err());
    /// clock.advance(120_000_000); // two windows later, the failure has slid out
    /// assert!(t.check("203.0.113.7").await.is_ok());
    /// # });
    /// ```
    pub fn with_store(limit: u32, window: Duration, store: Arc<dyn RateLimitStore>) -> Self {
        FailedAuthTracker {
            limit: limit.max(1),
            window,
            store,
            on_error: OnStoreError::Closed,
            outage: StoreOutage::new("brute-force"),
        }
    }

    /// What a store failure does: [`OnStoreError::Closed`] (the default) refuses authenticated
    /// routes with 503 while it lasts, [`OnStoreError::Open`] lets requests through to
    /// authentication uncounted.
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use portcullis::auth::{Blocked, FailedAuthTracker};
    /// use portcullis::rate_limit::{Charge, OnStoreError, RateLimitStore, StoreError, algorithm::Verdict};
    /// # use portcullis::auth::BoxFuture;
    /// struct Down;
    /// impl RateLimitStore for Down {
    ///     fn decide<'a>(&'a self, _: &'a [Charge<'a>]) -> BoxFuture<'a, Result<Vec<Verdict>, StoreError>> {
    ///         Box::pin(async { Err(StoreError::new("down")) })
    ///     }
    ///     fn name(&self) -> &'static str { "down" }
    /// }
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let closed = FailedAuthTracker::with_store(5, Duration::from_secs(60), Arc::new(Down));
    /// assert_eq!(closed.check("203.0.113.7").await, Err(Blocked::StoreUnavailable));
    /// let open = FailedAuthTracker::with_store(5, Duration::from_secs(60), Arc::new(Down))
    ///     .on_store_error(OnStoreError::Open);
    /// assert_eq!(open.check("203.0.113.7").await, Ok(()));
    /// assert_eq!(open.store_errors(), 1);
    /// # });
    /// ```
    pub fn on_store_error(mut self, mode: OnStoreError) -> Self {
        self.on_error = mode;
        self
    }

    /// Store failures seen so far (each check or count that could not reach the store).
    ///
    /// ```
    /// use portcullis::auth::FailedAuthTracker;
    /// assert_eq!(FailedAuthTracker::default().store_errors(), 0);
    /// ```
    pub fn store_errors(&self) -> u64 {
        self.outage.errors()
    }

    /// Counts a store failure, logging the first of an outage.
    #[cold]
    fn store_failed(&self, e: &StoreError, doing: &'static str) {
        self.outage
            .failed(self.store.name(), e, self.on_error, doing);
    }

    /// Notes that the store answered, logging the end of an outage.
    fn store_answered(&self) {
        self.outage.answered(self.store.name());
    }

    /// The limit.
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::auth::FailedAuthTracker;
    /// assert_eq!(FailedAuthTracker::default().limit(), 10);
    /// // A limit of zero would block everyone: it is raised to one.
    /// assert_eq!(FailedAuthTracker::new(0, Duration::from_secs(60)).limit(), 1);
    /// ```
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The window.
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::auth::FailedAuthTracker;
    /// assert_eq!(FailedAuthTracker::default().window(), Duration::from_secs(15 * 60));
    /// ```
    pub fn window(&self) -> Duration {
        self.window
    }

    fn rule(&self) -> Rule {
        Rule::new(
            self.limit,
            self.window.as_micros().min(u128::from(u64::MAX)) as u64,
            Algorithm::SlidingWindow,
            0,
        )
    }

    fn key(key: &str) -> String {
        format!("auth-failures|{key}")
    }

    /// Charges `cost` failures to `key`: the store's verdict on the charge.
    async fn charge(&self, key: &str, cost: u32) -> Result<Option<Verdict>, StoreError> {
        let k = Self::key(key);
        let charge = [Charge {
            key: &k,
            rule: self.rule(),
            cost,
        }];
        Ok(self.store.decide(&charge).await?.into_iter().next())
    }

    /// `Err` when `key` may not try now: blocked after too many failures, or the store is
    /// down under [`OnStoreError::Closed`]. Charges nothing.
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::auth::{Blocked, FailedAuthTracker};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let t = FailedAuthTracker::new(2, Duration::from_secs(60));
    /// assert!(t.check("203.0.113.7").await.is_ok());
    /// let _ = t.record_failure("203.0.113.7").await;
    /// let _ = t.record_failure("203.0.113.7").await;
    /// let Err(Blocked::RetryAfter(retry_after)) = t.check("203.0.113.7").await else { panic!() };
    /// assert!(retry_after >= Duration::from_secs(1));
    /// # });
    /// ```
    pub async fn check(&self, key: &str) -> Result<(), Blocked> {
        match self.charge(key, 0).await {
            Ok(Some(v)) if v.remaining == 0 => {
                // Blocked: a charge of one is refused (so nothing is counted) and says when a
                // try will fit again.
                let wait = match self.charge(key, 1).await {
                    Ok(v) => v.map_or(0, |v| v.retry_after_us),
                    Err(_) => 0,
                };
                self.store_answered();
                Err(Blocked::RetryAfter(Duration::from_micros(
                    wait.max(1_000_000),
                )))
            }
            Ok(_) => {
                self.store_answered();
                Ok(())
            }
            Err(e) => {
                self.store_failed(&e, "check");
                match self.on_error {
                    OnStoreError::Closed => Err(Blocked::StoreUnavailable),
                    OnStoreError::Open => Ok(()),
                }
            }
        }
    }

    /// Counts a failed authentication for `key` and says whether it fits the limit, in one
    /// store operation (so guesses sent at once are each counted before any is answered):
    /// `Ok` within it (this failure may reach it), [`Blocked::RetryAfter`] past it (the
    /// failure is refused, not counted), [`Blocked::StoreUnavailable`] while the store is down
    /// under [`OnStoreError::Closed`]. [`SecurityLayer`](crate::SecurityLayer) answers the
    /// first with 401, the others with 429 and 503.
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::auth::{Blocked, FailedAuthTracker};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let t = FailedAuthTracker::new(2, Duration::from_secs(60));
    /// assert_eq!(t.count_failure("203.0.113.7").await, Ok(()));
    /// assert_eq!(t.count_failure("203.0.113.7").await, Ok(())); // the second reaches the limit
    /// assert!(matches!(t.count_failure("203.0.113.7").await, Err(Blocked::RetryAfter(_))));
    /// assert!(t.check("203.0.113.7").await.is_err());
    /// # });
    /// ```
    pub async fn count_failure(&self, key: &str) -> Result<(), Blocked> {
        match self.charge(key, 1).await {
            Ok(v) => {
                self.store_answered();
                match v {
                    Some(v) if !v.allowed => Err(Blocked::RetryAfter(Duration::from_micros(
                        v.retry_after_us.max(1_000_000),
                    ))),
                    _ => Ok(()),
                }
            }
            Err(e) => {
                self.store_failed(&e, "count");
                match self.on_error {
                    OnStoreError::Closed => Err(Blocked::StoreUnavailable),
                    OnStoreError::Open => Ok(()),
                }
            }
        }
    }

    /// Counts a failed authentication for `key`; `Err(retry_after)` when `key` is now blocked.
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::auth::FailedAuthTracker;
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let t = FailedAuthTracker::new(2, Duration::from_secs(60));
    /// assert!(t.record_failure("203.0.113.7").await.is_ok());
    /// // The second failure reaches the limit: the key is now blocked.
    /// assert!(t.record_failure("203.0.113.7").await.is_err());
    /// assert!(t.record_failure("198.51.100.1").await.is_ok());
    /// # });
    /// ```
    pub async fn record_failure(&self, key: &str) -> Result<(), Duration> {
        match self.charge(key, 1).await {
            Ok(v) => {
                self.store_answered();
                match v {
                    Some(v) if !v.allowed => Err(Duration::from_micros(v.retry_after_us.max(1))),
                    Some(v) if v.remaining == 0 => Err(Duration::from_micros(v.reset_us.max(1))),
                    _ => Ok(()),
                }
            }
            Err(e) => {
                // The request is refused (401) either way; the failure goes uncounted.
                self.store_failed(&e, "count");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::ManualClock;

    fn now<F: std::future::Future>(f: F) -> F::Output {
        futures_util::FutureExt::now_or_never(f).expect("the memory store answers at once")
    }

    #[test]
    fn blocks_after_the_limit_and_forgets_with_time() {
        let clock = Arc::new(ManualClock::new(1_000_000_000_000));
        let store = Arc::new(MemoryStore::with_clock(1000, clock.clone()));
        let t = FailedAuthTracker::with_store(3, Duration::from_secs(60), store);
        for _ in 0..3 {
            assert!(now(t.check("a")).is_ok());
            let _ = now(t.record_failure("a"));
        }
        let Err(Blocked::RetryAfter(wait)) = now(t.check("a")) else {
            panic!("blocked after the limit")
        };
        assert!(wait <= Duration::from_secs(120), "{wait:?}");
        assert!(now(t.check("b")).is_ok(), "other clients are unaffected");
        // Checking does not count: still exactly blocked, not more.
        for _ in 0..5 {
            assert!(now(t.check("a")).is_err());
        }
        clock.advance(121_000_000);
        assert!(
            now(t.check("a")).is_ok(),
            "failures slide out of the window"
        );
    }

    #[test]
    fn the_failure_that_reaches_the_limit_says_so() {
        let t = FailedAuthTracker::new(2, Duration::from_secs(60));
        assert!(now(t.record_failure("k")).is_ok());
        assert!(now(t.record_failure("k")).is_err());
    }
}

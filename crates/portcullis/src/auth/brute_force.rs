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
//! When the store fails, the tracker lets the request through to authentication (which still
//! refuses bad credentials) and logs the failure: the brute-force limit slows guessing down;
//! it is not what keeps an attacker out.
//!
//! ```
//! # futures_util::FutureExt::now_or_never(async {
//! use std::time::Duration;
//! use portcullis::auth::FailedAuthTracker;
//! let t = FailedAuthTracker::new(3, Duration::from_secs(900));
//! for _ in 0..3 {
//!     assert!(t.check("203.0.113.7").await.is_ok());
//!     let _ = t.record_failure("203.0.113.7").await;
//! }
//! let retry_after = t.check("203.0.113.7").await.unwrap_err();
//! // Blocked until enough failures slide out: at most two windows.
//! assert!(retry_after <= Duration::from_secs(1800));
//! assert!(t.check("198.51.100.1").await.is_ok());
//! # }).expect("the memory store answers at once");
//! ```

use std::sync::Arc;
use std::time::Duration;

use crate::policy::Algorithm;
use crate::rate_limit::algorithm::Rule;
use crate::rate_limit::memory::MemoryStore;
use crate::rate_limit::{Charge, RateLimitStore};

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
}

impl std::fmt::Debug for FailedAuthTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailedAuthTracker")
            .field("limit", &self.limit)
            .field("window", &self.window)
            .field("store", &self.store.name())
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
        }
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

    /// `Err(retry_after)` when `key` is blocked. Charges nothing.
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::auth::FailedAuthTracker;
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let t = FailedAuthTracker::new(2, Duration::from_secs(60));
    /// assert!(t.check("203.0.113.7").await.is_ok());
    /// let _ = t.record_failure("203.0.113.7").await;
    /// let _ = t.record_failure("203.0.113.7").await;
    /// let retry_after = t.check("203.0.113.7").await.unwrap_err();
    /// assert!(retry_after >= Duration::from_secs(1));
    /// # });
    /// ```
    pub async fn check(&self, key: &str) -> Result<(), Duration> {
        let k = Self::key(key);
        let peek = [Charge {
            key: &k,
            rule: self.rule(),
            cost: 0,
        }];
        match self.store.decide(&peek).await {
            Ok(v) if v.first().is_some_and(|v| v.remaining == 0) => {
                // Blocked: a charge of one is refused (so nothing is counted) and says when a
                // try will fit again.
                let one = [Charge {
                    key: &k,
                    rule: self.rule(),
                    cost: 1,
                }];
                let wait = match self.store.decide(&one).await {
                    Ok(v) => v.first().map_or(0, |v| v.retry_after_us),
                    Err(_) => 0,
                };
                Err(Duration::from_micros(wait.max(1_000_000)))
            }
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(store = self.store.name(), error = %e,
                    "brute-force store failed; letting the request through to authentication");
                Ok(())
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
        let k = Self::key(key);
        let one = [Charge {
            key: &k,
            rule: self.rule(),
            cost: 1,
        }];
        match self.store.decide(&one).await {
            Ok(v) => match v.first() {
                Some(v) if !v.allowed => Err(Duration::from_micros(v.retry_after_us.max(1))),
                Some(v) if v.remaining == 0 => Err(Duration::from_micros(v.reset_us.max(1))),
                _ => Ok(()),
            },
            Err(e) => {
                tracing::warn!(store = self.store.name(), error = %e,
                    "brute-force store failed; failure not counted");
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
        let wait = now(t.check("a")).unwrap_err();
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

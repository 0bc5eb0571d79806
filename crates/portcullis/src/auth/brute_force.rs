//! Failed authentications per client: the brute-force limit.
//!
//! [`FailedAuthTracker`] counts refused credentials per key (the client address,
//! [`ClientIp::key`](crate::ClientIp::key), which groups IPv6 by /64) over a sliding window;
//! once a key reaches the limit (10 per 15 min by default, the seed's `authLimiter`), it is
//! blocked on authenticated routes until its oldest failure leaves the window. Only refused
//! credentials count: requests without credentials, and successes, do not (a success does
//! not reset the count either, so one valid account cannot launder guesses at others).
//!
//! It lives in memory, sharded, with a bounded number of keys: when full, expired entries go
//! first, then the entry idle the longest.
//!
//! ```
//! use std::time::Duration;
//! use portcullis::auth::FailedAuthTracker;
//! let t = FailedAuthTracker::new(3, Duration::from_secs(900));
//! for _ in 0..3 {
//!     assert!(t.check("203.0.113.7").is_ok());
//!     t.record_failure("203.0.113.7");
//! }
//! let retry_after = t.check("203.0.113.7").unwrap_err();
//! assert!(retry_after <= Duration::from_secs(900));
//! assert!(t.check("198.51.100.1").is_ok());
//! ```

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

/// Counts failed authentications per client key; see the [module docs](self).
#[derive(Debug)]
pub struct FailedAuthTracker {
    limit: u32,
    window: Duration,
    max_keys_per_shard: usize,
    hasher: RandomState,
    shards: Vec<Mutex<HashMap<String, VecDeque<Instant>>>>,
}

impl Default for FailedAuthTracker {
    /// 10 failures per 15 minutes.
    fn default() -> Self {
        FailedAuthTracker::new(10, Duration::from_secs(15 * 60))
    }
}

impl FailedAuthTracker {
    /// Blocks a key after `limit` failures within `window`; tracks up to 100 000 keys.
    pub fn new(limit: u32, window: Duration) -> Self {
        FailedAuthTracker {
            limit: limit.max(1),
            window,
            max_keys_per_shard: 100_000 / SHARDS,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Sets how many keys are tracked at most.
    ///
    /// ```
    /// let t = portcullis::auth::FailedAuthTracker::default().max_keys(10_000);
    /// ```
    #[must_use]
    pub fn max_keys(mut self, max: usize) -> Self {
        self.max_keys_per_shard = (max / SHARDS).max(1);
        self
    }

    /// The limit.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// The window.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// `Err(retry_after)` when `key` is blocked.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }

    /// Counts a failed authentication for `key`; `Err(retry_after)` when `key` is now blocked.
    pub fn record_failure(&self, key: &str) -> Result<(), Duration> {
        self.record_failure_at(key, Instant::now())
    }

    /// Forgets `key` (an operator unblocking a client).
    pub fn reset(&self, key: &str) {
        self.shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }

    /// The number of keys tracked.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// True when no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, key: &str) -> &Mutex<HashMap<String, VecDeque<Instant>>> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        &self.shards[i]
    }

    pub(crate) fn check_at(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(times) = shard.get_mut(key) else {
            return Ok(());
        };
        self.expire(times, now);
        if times.is_empty() {
            shard.remove(key);
            return Ok(());
        }
        self.verdict(times, now)
    }

    pub(crate) fn record_failure_at(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !shard.contains_key(key) && shard.len() >= self.max_keys_per_shard {
            self.make_room(&mut shard, now);
        }
        let times = shard.entry(key.to_string()).or_default();
        self.expire(times, now);
        times.push_back(now);
        // Only the newest `limit` failures can matter.
        while times.len() > self.limit as usize {
            times.pop_front();
        }
        self.verdict(times, now)
    }

    fn expire(&self, times: &mut VecDeque<Instant>, now: Instant) {
        while times
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.window)
        {
            times.pop_front();
        }
    }

    fn verdict(&self, times: &VecDeque<Instant>, now: Instant) -> Result<(), Duration> {
        if times.len() < self.limit as usize {
            return Ok(());
        }
        let oldest = times.front().copied().unwrap_or(now);
        let retry = (oldest + self.window).saturating_duration_since(now);
        Err(retry.max(Duration::from_secs(1)))
    }

    fn make_room(&self, shard: &mut HashMap<String, VecDeque<Instant>>, now: Instant) {
        shard.retain(|_, times| {
            times
                .back()
                .is_some_and(|t| now.saturating_duration_since(*t) < self.window)
        });
        if shard.len() >= self.max_keys_per_shard
            && let Some(idle) = shard
                .iter()
                .min_by_key(|(_, times)| times.back().copied())
                .map(|(k, _)| k.clone())
        {
            shard.remove(&idle);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn blocks_at_the_limit_and_not_before() {
        let t = FailedAuthTracker::default();
        let now = Instant::now();
        for i in 0..9 {
            assert!(
                t.record_failure_at("a", now + Duration::from_secs(i))
                    .is_ok()
            );
        }
        assert!(t.check_at("a", now + MIN).is_ok());
        assert!(t.record_failure_at("a", now + MIN).is_err());
        let wait = t.check_at("a", now + MIN).unwrap_err();
        assert_eq!(wait, 14 * MIN);
        assert!(t.check_at("b", now + MIN).is_ok());
    }

    #[test]
    fn failures_leave_the_window() {
        let t = FailedAuthTracker::new(2, 10 * MIN);
        let now = Instant::now();
        t.record_failure_at("a", now).ok();
        t.record_failure_at("a", now + MIN).ok();
        assert!(t.check_at("a", now + 2 * MIN).is_err());
        // The first failure leaves at 10 min: one left, under the limit.
        assert!(t.check_at("a", now + 10 * MIN).is_ok());
        assert!(t.check_at("a", now + 11 * MIN).is_ok());
        assert!(t.is_empty(), "fully expired keys are dropped");
    }

    #[test]
    fn retry_after_counts_from_the_oldest_failure_in_the_window() {
        let t = FailedAuthTracker::new(3, 15 * MIN);
        let now = Instant::now();
        for m in [0, 5, 6] {
            t.record_failure_at("a", now + m * MIN).ok();
        }
        assert_eq!(t.check_at("a", now + 7 * MIN), Err(8 * MIN));
        // A further failure while blocked keeps the newest three: blocked until 5 + 15 min.
        t.record_failure_at("a", now + 8 * MIN).ok();
        assert_eq!(t.check_at("a", now + 8 * MIN), Err(12 * MIN));
    }

    #[test]
    fn reset_unblocks() {
        let t = FailedAuthTracker::new(1, MIN);
        t.record_failure("a").ok();
        assert!(t.check("a").is_err());
        t.reset("a");
        assert!(t.check("a").is_ok());
    }

    #[test]
    fn key_count_is_bounded() {
        let t = FailedAuthTracker::new(5, MIN).max_keys(SHARDS * 4);
        let now = Instant::now();
        for i in 0..1000 {
            t.record_failure_at(&format!("10.0.{}.{}", i / 256, i % 256), now)
                .ok();
        }
        assert!(t.len() <= SHARDS * 4);
        // The newest key is still tracked.
        assert!(t.record_failure_at("10.0.3.231", now).is_ok());
        assert_eq!(
            t.shard("10.0.3.231")
                .lock()
                .unwrap()
                .get("10.0.3.231")
                .map(VecDeque::len),
            Some(2)
        );
    }
}

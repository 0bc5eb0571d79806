//! The in-memory store: sharded, lock-light, bounded, and self-cleaning.
//!
//! Keys are hashed with a per-store random SipHash key (so clients cannot aim collisions) into
//! 64-bit ids spread over 64 mutex-guarded shards; each entry holds the 16-byte [`Cell`] and an
//! expiry, about 40–70 bytes per tracked key with the table's slack. Expired entries are swept
//! from a shard when it is touched after its sweep time, and a hard cap bounds the number of
//! keys: at the cap, after a sweep, the entry closest to expiry among a small sample is evicted
//! (and counted) — unlike governor, which never forgets a key.
//!
//! ```
//! use portcullis::rate_limit::{memory::MemoryStore, RateLimitStore, Charge};
//! use portcullis::rate_limit::algorithm::Rule;
//! use portcullis::policy::Algorithm;
//! # tokio_test_block_on(async {
//! let store = MemoryStore::new(10_000);
//! let rule = Rule::new(1, 60_000_000, Algorithm::SlidingWindow, 0);
//! let charge = [Charge { key: "route|ip:1.2.3.4", rule, cost: 1 }];
//! assert!(store.decide(&charge).await.unwrap()[0].allowed);
//! assert!(!store.decide(&charge).await.unwrap()[0].allowed);
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     futures_util::FutureExt::now_or_never(f).expect("memory store is synchronous")
//! # }
//! ```

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::algorithm::{Cell, Verdict};
use super::{Charge, Clock, RateLimitStore, StoreError, SystemClock};
use crate::auth::BoxFuture;

const SHARDS: usize = 64;
const SWEEP_EVERY_US: u64 = 10_000_000;

/// Keys are already uniformly distributed 64-bit hashes: hash them as themselves.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Clone, Copy)]
struct Entry {
    cell: Cell,
    /// Expiry in seconds since the Unix epoch (u32 lasts until 2106).
    expires_s: u32,
}

impl Entry {
    /// A cell just charged by `c`, kept until it has aged out.
    fn charged(c: &Charge<'_>, cell: Cell) -> Entry {
        let expires_us = c.rule.expires_at(&cell);
        Entry {
            cell,
            expires_s: expires_us.div_ceil(1_000_000).min(u64::from(u32::MAX)) as u32,
        }
    }
}

struct Shard {
    map: HashMap<u64, Entry, BuildHasherDefault<IdHasher>>,
    next_sweep_us: u64,
}

/// A shard's lock and map header, aligned to 128 bytes: on cache lines of their own, so
/// threads charging keys of different shards never write to a line another shard uses.
#[repr(align(128))]
struct Padded(Mutex<Shard>);

impl std::ops::Deref for Padded {
    type Target = Mutex<Shard>;

    fn deref(&self) -> &Mutex<Shard> {
        &self.0
    }
}

/// The in-memory [`RateLimitStore`].
///
/// ```
/// use std::sync::Arc;
/// use portcullis::rate_limit::{RateLimiter, memory::MemoryStore};
/// let store = Arc::new(MemoryStore::new(100_000));
/// let limiter = RateLimiter::new(store.clone());
/// assert!(store.is_empty());
/// ```
pub struct MemoryStore {
    shards: Box<[Padded]>,
    per_shard_cap: usize,
    hasher: RandomState,
    clock: Arc<dyn Clock>,
    evictions: AtomicU64,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("keys", &self.len())
            .field("evictions", &self.evictions())
            .finish()
    }
}

impl MemoryStore {
    /// A store tracking at most `max_keys` keys, rounded up to a multiple of its 64 shards
    /// (so at least 64; 100 tracks up to 128), on the system clock.
    ///
    /// ```
    /// use portcullis::policy::Algorithm;
    /// use portcullis::rate_limit::{Charge, algorithm::Rule, memory::MemoryStore};
    /// let store = MemoryStore::new(10_000);
    /// let rule = Rule::new(1, 60_000_000, Algorithm::SlidingWindow, 0);
    /// assert!(store.decide_now(&[Charge { key: "k", rule, cost: 1 }]).unwrap()[0].allowed);
    /// assert_eq!(store.len(), 1);
    /// // Many clients: the oldest keys make room, the store stays bounded.
    /// let small = MemoryStore::new(100);
    /// for i in 0..5_000 {
    ///     let key = format!("ip:{i}");
    ///     small.decide_now(&[Charge { key: &key, rule, cost: 1 }]).unwrap();
    /// }
    /// assert!(small.len() <= 128);
    /// ```
    pub fn new(max_keys: usize) -> Self {
        Self::with_clock(max_keys, Arc::new(SystemClock))
    }

    /// A store on a given clock (tests move a manual clock forward).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use portcullis::policy::Algorithm;
    /// use portcullis::rate_limit::{Charge, ManualClock, algorithm::Rule, memory::MemoryStore};
    /// let clock = Arc::new(ManualClock::new(1_700_000_000_000_000));
    /// let store = MemoryStore::with_clock(10_000, clock.clone());
    /// let charge = [Charge { key: "k", rule: Rule::new(1, 1_000_000, Algorithm::FixedWindow, 0), cost: 1 }];
    /// assert!(store.decide_now(&charge).unwrap()[0].allowed);
    /// assert!(!store.decide_now(&charge).unwrap()[0].allowed);
    /// clock.advance(1_000_000); // the next window
    /// assert!(store.decide_now(&charge).unwrap()[0].allowed);
    /// ```
    pub fn with_clock(max_keys: usize, clock: Arc<dyn Clock>) -> Self {
        let per_shard_cap = max_keys.div_ceil(SHARDS).max(1);
        let shards = (0..SHARDS)
            .map(|_| {
                Padded(Mutex::new(Shard {
                    map: HashMap::default(),
                    next_sweep_us: 0,
                }))
            })
            .collect();
        MemoryStore {
            shards,
            per_shard_cap,
            hasher: RandomState::new(),
            clock,
            evictions: AtomicU64::new(0),
        }
    }

    /// Keys currently tracked.
    ///
    /// ```
    /// use portcullis::policy::Algorithm;
    /// use portcullis::rate_limit::{Charge, algorithm::Rule, memory::MemoryStore};
    /// let store = MemoryStore::new(10_000);
    /// let rule = Rule::new(10, 60_000_000, Algorithm::SlidingWindow, 0);
    /// for key in ["a", "b", "a"] {
    ///     store.decide_now(&[Charge { key, rule, cost: 1 }]).unwrap();
    /// }
    /// assert_eq!(store.len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |s| s.map.len()))
            .sum()
    }

    /// True when no key is tracked.
    ///
    /// ```
    /// use portcullis::rate_limit::memory::MemoryStore;
    /// assert!(MemoryStore::new(1000).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys evicted at the cap so far.
    ///
    /// ```
    /// use portcullis::policy::Algorithm;
    /// use portcullis::rate_limit::{Charge, algorithm::Rule, memory::MemoryStore};
    /// let store = MemoryStore::new(64); // the smallest store: one key per shard
    /// let rule = Rule::new(10, 60_000_000, Algorithm::SlidingWindow, 0);
    /// for i in 0..200 {
    ///     let key = format!("client-{i}");
    ///     store.decide_now(&[Charge { key: &key, rule, cost: 1 }]).unwrap();
    /// }
    /// assert!(store.len() <= 64);
    /// assert!(store.evictions() >= 200 - 64);
    /// ```
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Removes every expired entry now.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use portcullis::policy::Algorithm;
    /// use portcullis::rate_limit::{Charge, ManualClock, algorithm::Rule, memory::MemoryStore};
    /// let clock = Arc::new(ManualClock::new(1_700_000_000_000_000));
    /// let store = MemoryStore::with_clock(10_000, clock.clone());
    /// let rule = Rule::new(1, 1_000_000, Algorithm::FixedWindow, 0);
    /// store.decide_now(&[Charge { key: "k", rule, cost: 1 }]).unwrap();
    /// clock.advance(5_000_000);
    /// store.sweep();
    /// assert!(store.is_empty());
    /// ```
    pub fn sweep(&self) {
        let now_s = (self.clock.now_us() / 1_000_000) as u32;
        for shard in self.shards.iter() {
            if let Ok(mut s) = shard.lock() {
                s.map.retain(|_, e| e.expires_s > now_s);
            }
        }
    }

    fn id(&self, key: &str) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(key.as_bytes());
        h.finish()
    }

    /// Decides synchronously (the async trait method wraps this).
    ///
    /// ```
    /// use portcullis::policy::Algorithm;
    /// use portcullis::rate_limit::{Charge, algorithm::Rule, memory::MemoryStore};
    /// let store = MemoryStore::new(10_000);
    /// let per_second = Rule::new(10, 1_000_000, Algorithm::SlidingWindow, 0);
    /// let per_minute = Rule::new(1, 60_000_000, Algorithm::SlidingWindow, 0);
    /// let charges = [
    ///     Charge { key: "s|ip:203.0.113.7", rule: per_second, cost: 1 },
    ///     Charge { key: "m|ip:203.0.113.7", rule: per_minute, cost: 1 },
    /// ];
    /// assert!(store.decide_now(&charges).unwrap().iter().all(|v| v.allowed));
    /// // The per-minute limit refuses, so the per-second one is not charged either.
    /// let again = store.decide_now(&charges).unwrap();
    /// assert!(again[0].allowed && !again[1].allowed);
    /// assert_eq!(again[0].remaining, 9);
    /// ```
    pub fn decide_now(&self, charges: &[Charge<'_>]) -> Result<Vec<Verdict>, StoreError> {
        let now = self.clock.now_us();
        let now_s = (now / 1_000_000) as u32;
        if let [c] = charges {
            return self.decide_one(c, now, now_s).map(|v| vec![v]);
        }
        let ids: Vec<u64> = charges.iter().map(|c| self.id(c.key)).collect();
        // Lock the shards involved in ascending order, so concurrent multi-limit requests
        // cannot deadlock, and hold them until every limit has been checked and charged.
        let mut wanted: Vec<usize> = ids.iter().map(|id| (*id as usize) % SHARDS).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut guards: Vec<(usize, MutexGuard<'_, Shard>)> = Vec::with_capacity(wanted.len());
        for i in wanted {
            let g = self.shards[i]
                .lock()
                .map_err(|_| StoreError::new("memory store shard poisoned"))?;
            guards.push((i, g));
        }
        let shard_of = |guards: &mut Vec<(usize, MutexGuard<'_, Shard>)>, id: u64| {
            let i = (id as usize) % SHARDS;
            guards.iter().position(|(j, _)| *j == i).unwrap_or(0)
        };
        let mut verdicts = Vec::with_capacity(charges.len());
        let mut cells = Vec::with_capacity(charges.len());
        for (c, &id) in charges.iter().zip(&ids) {
            let g = shard_of(&mut guards, id);
            // A stale cell needs no special case: every algorithm ages it by the clock.
            let cell = guards[g]
                .1
                .map
                .get(&id)
                .map_or_else(Cell::default, |e| e.cell);
            let (v, new) = c.rule.evaluate(cell, now, c.cost);
            verdicts.push(v);
            cells.push(new);
        }
        let all_allowed = verdicts.iter().all(|v| v.allowed);
        if !all_allowed {
            // Nothing is charged; report the untouched limits as they stand.
            for ((c, &id), v) in charges.iter().zip(&ids).zip(verdicts.iter_mut()) {
                if v.allowed {
                    let g = shard_of(&mut guards, id);
                    let cell = guards[g]
                        .1
                        .map
                        .get(&id)
                        .map_or_else(Cell::default, |e| e.cell);
                    *v = c.rule.evaluate(cell, now, 0).0;
                }
            }
        }
        if all_allowed {
            for ((c, &id), cell) in charges.iter().zip(&ids).zip(cells) {
                let g = shard_of(&mut guards, id);
                self.charge(&mut guards[g].1, id, c, cell, now);
            }
        }
        for (_, g) in guards.iter_mut() {
            Self::sweep_due(g, now, now_s);
        }
        Ok(verdicts)
    }

    /// Stores a charged cell, making room first for a new key.
    fn charge(&self, shard: &mut Shard, id: u64, c: &Charge<'_>, cell: Cell, now: u64) {
        let entry = Entry::charged(c, cell);
        match shard.map.get_mut(&id) {
            Some(e) => *e = entry,
            None => {
                self.make_room(shard, now);
                shard.map.insert(id, entry);
            }
        }
    }

    /// Drops a shard's expired entries when its sweep is due.
    fn sweep_due(shard: &mut Shard, now: u64, now_s: u32) {
        if now >= shard.next_sweep_us {
            shard.map.retain(|_, e| e.expires_s > now_s);
            shard.next_sweep_us = now + SWEEP_EVERY_US;
        }
    }

    /// One charge (the common case): one shard, no bookkeeping of several.
    fn decide_one(&self, c: &Charge<'_>, now: u64, now_s: u32) -> Result<Verdict, StoreError> {
        let id = self.id(c.key);
        let mut shard = self.shards[(id as usize) % SHARDS]
            .lock()
            .map_err(|_| StoreError::new("memory store shard poisoned"))?;
        // A tracked key (the common case) is looked up once, and charged in place.
        let v = match shard.map.get_mut(&id) {
            Some(e) => {
                let (v, new) = c.rule.evaluate(e.cell, now, c.cost);
                if v.allowed {
                    *e = Entry::charged(c, new);
                }
                v
            }
            None => {
                let (v, new) = c.rule.evaluate(Cell::default(), now, c.cost);
                if v.allowed {
                    self.charge(&mut shard, id, c, new, now);
                }
                v
            }
        };
        Self::sweep_due(&mut shard, now, now_s);
        Ok(v)
    }

    fn make_room(&self, shard: &mut Shard, now: u64) {
        if shard.map.len() < self.per_shard_cap {
            return;
        }
        let now_s = (now / 1_000_000) as u32;
        shard.map.retain(|_, e| e.expires_s > now_s);
        shard.next_sweep_us = now + SWEEP_EVERY_US;
        if shard.map.len() < self.per_shard_cap {
            return;
        }
        let victim = shard
            .map
            .iter()
            .take(16)
            .min_by_key(|(_, e)| e.expires_s)
            .map(|(k, _)| *k);
        if let Some(k) = victim {
            shard.map.remove(&k);
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl RateLimitStore for MemoryStore {
    fn decide<'a>(
        &'a self,
        charges: &'a [Charge<'a>],
    ) -> BoxFuture<'a, Result<Vec<Verdict>, StoreError>> {
        let out = MemoryStore::decide_now(self, charges);
        Box::pin(std::future::ready(out))
    }

    fn decide_now(&self, charges: &[Charge<'_>]) -> Option<Result<Vec<Verdict>, StoreError>> {
        Some(MemoryStore::decide_now(self, charges))
    }

    fn name(&self) -> &'static str {
        "memory"
    }

    /// Forgets `counter` (bans live in the [`BanList`](crate::ban::BanList) itself).
    fn lift_ban<'a>(
        &'a self,
        _key: &'a str,
        counter: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let id = self.id(counter);
        let out = match self.shards[(id as usize) % SHARDS].lock() {
            Ok(mut shard) => {
                shard.map.remove(&id);
                Ok(())
            }
            Err(_) => Err(StoreError::new("memory store shard poisoned")),
        };
        Box::pin(std::future::ready(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Algorithm;
    use crate::rate_limit::ManualClock;
    use crate::rate_limit::algorithm::Rule;

    #[test]
    fn expired_keys_are_swept_and_the_cap_holds() {
        let clock = Arc::new(ManualClock::new(1_000_000_000_000));
        let store = MemoryStore::with_clock(640, clock.clone());
        let rule = Rule::new(5, 1_000_000, Algorithm::FixedWindow, 0);
        for i in 0..2000 {
            let key = format!("k{i}");
            store
                .decide_now(&[Charge {
                    key: &key,
                    rule,
                    cost: 1,
                }])
                .unwrap();
        }
        assert!(store.len() <= 640 + SHARDS, "{}", store.len());
        assert!(store.evictions() > 0);
        clock.advance(30_000_000);
        store.sweep();
        assert_eq!(store.len(), 0);
    }

    #[test]
    fn multi_limit_charges_nothing_when_one_refuses() {
        let clock = Arc::new(ManualClock::new(5_000_000_000));
        let store = MemoryStore::with_clock(1000, clock);
        let per_sec = Rule::new(1, 1_000_000, Algorithm::SlidingWindow, 0);
        let per_hour = Rule::new(100, 3_600_000_000, Algorithm::SlidingWindow, 0);
        let charges = [
            Charge {
                key: "a|s",
                rule: per_sec,
                cost: 1,
            },
            Charge {
                key: "a|h",
                rule: per_hour,
                cost: 1,
            },
        ];
        let v = store.decide_now(&charges).unwrap();
        assert!(v.iter().all(|v| v.allowed));
        assert_eq!(v[1].remaining, 99);
        let v = store.decide_now(&charges).unwrap();
        assert!(!v[0].allowed);
        // The hourly limit was not charged by the refused request.
        assert_eq!(v[1].remaining, 99);
    }
}

//! The ban list: repeat offenders refused on every route for a while (step 5 of the layer).
//!
//! [`BanList`] counts *offences* per client key ([`ClientIp::key`], which groups IPv6 by
//! /64) with the rate limiter's sliding window, in a [`RateLimitStore`] — in memory, or the
//! rate limits' SQLite or Redis store so replicas share the count. The offence that reaches
//! the limit bans the key for `ban_for`: the layer then answers every request from it with
//! 403 `banned` and a `Retry-After`, before any other per-route step. An offence after a ban
//! has run out, while the window still holds the earlier ones, bans again at once.
//!
//! Checking must cost nothing on the hot path: bans are read from a small local map, and not
//! even that (no lock, no hash, no key built) while no ban is live — one atomic load. Shared
//! stores carry the bans between replicas: each ban is also written to the store
//! ([`RateLimitStore::ban`]), and every replica loads the live bans from it
//! ([`RateLimitStore::bans`]) at most every [`REFRESH_EVERY`], lazily, from a request that
//! finds the last load older than that (on the Tokio runtime it runs on; none is started
//! without one). An in-process store (one that decides at once, such as the memory store)
//! has nothing to share and is never asked.
//!
//! Which refusals are offences is the layer's choice (see
//! [`SecurityLayerBuilder::ban_list`](crate::SecurityLayerBuilder::ban_list)): path and host
//! attacks, CSRF failures, and 429s; never a store outage's 503, and never a refusal that
//! was only reported.
//!
//! When the store fails, [`OnStoreError`] decides, as for the rate limits: `Closed` (the
//! default) counts the offence in a local fallback store instead, so breaking the store does
//! not switch bans off (they then hold on this replica only); `Open` leaves it uncounted.
//!
//! ```
//! use std::time::Duration;
//! use portcullis::ban::BanList;
//! let bans = BanList::new(3, Duration::from_secs(60), Duration::from_secs(900));
//! assert_eq!(bans.record_offence_now("203.0.113.7"), Some(None));
//! assert_eq!(bans.record_offence_now("203.0.113.7"), Some(None));
//! // The third offence within the minute places the ban.
//! assert_eq!(bans.record_offence_now("203.0.113.7"), Some(Some(Duration::from_secs(900))));
//! assert!(bans.is_banned("203.0.113.7").unwrap() <= Duration::from_secs(900));
//! assert_eq!(bans.is_banned("198.51.100.1"), None);
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::client_ip::ClientIp;
use crate::policy::Algorithm;
use crate::rate_limit::algorithm::{Rule, Verdict};
use crate::rate_limit::memory::MemoryStore;
use crate::rate_limit::{
    Charge, Clock, OnStoreError, RateLimitStore, StoreError, StoreOutage, SystemClock,
};

/// How often a replica loads the bans other replicas placed in a shared store.
///
/// ```
/// assert_eq!(portcullis::ban::REFRESH_EVERY, std::time::Duration::from_secs(2));
/// ```
pub const REFRESH_EVERY: Duration = Duration::from_secs(2);

/// Bans held locally at most; past it, the ban closest to its end is dropped for a new one.
///
/// ```
/// assert_eq!(portcullis::ban::MAX_LOCAL_BANS, 100_000);
/// ```
pub const MAX_LOCAL_BANS: usize = 100_000;

/// Keys the memory stores (the default one, and the fallback of a shared one) track at most.
const MEMORY_KEYS: usize = 100_000;

/// Bans repeat offenders; see the [module docs](self).
///
/// ```
/// use std::{sync::Arc, time::Duration};
/// use portcullis::{SecurityLayer, ban::BanList};
/// let bans = BanList::new(100, Duration::from_secs(600), Duration::from_secs(900));
/// let layer = SecurityLayer::builder().ban_list(Some(Arc::new(bans))).build().unwrap();
/// ```
pub struct BanList {
    inner: Arc<Inner>,
}

struct Inner {
    offences: u32,
    within: Duration,
    ban_for: Duration,
    store: Arc<dyn RateLimitStore>,
    /// The store decides at once: in-process, nothing to share or refresh.
    at_once: bool,
    /// Counts offences while a shared store is down (under [`OnStoreError::Closed`]).
    fallback: Option<MemoryStore>,
    on_error: OnStoreError,
    clock: Arc<dyn Clock>,
    /// Client key → end of its ban (ms since the Unix epoch).
    local: Mutex<HashMap<String, u64>>,
    /// The keys the shared store held at the last refresh: one of them gone from it at the
    /// next was lifted there (by hand, on any replica).
    in_store: Mutex<std::collections::HashSet<String>>,
    /// Entries of `local`, read without the lock: zero on the hot path means "no one".
    live: AtomicUsize,
    /// The last refresh from the store began (ms since the Unix epoch).
    last_refresh_ms: AtomicU64,
    refreshing: AtomicBool,
    outage: StoreOutage,
}

impl std::fmt::Debug for BanList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = &self.inner;
        f.debug_struct("BanList")
            .field("offences", &i.offences)
            .field("within", &i.within)
            .field("ban_for", &i.ban_for)
            .field("store", &i.store.name())
            .field("on_store_error", &i.on_error)
            .field("banned", &i.live.load(Ordering::Relaxed))
            .finish()
    }
}

impl BanList {
    /// Bans a key for `ban_for` once it commits `offences` offences within `within`, counted
    /// in memory. An `offences` of zero is raised to one.
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::ban::BanList;
    /// let bans = BanList::new(100, Duration::from_secs(600), Duration::from_secs(900));
    /// assert_eq!(bans.offences(), 100);
    /// assert_eq!((bans.within(), bans.ban_for()), (Duration::from_secs(600), Duration::from_secs(900)));
    /// ```
    pub fn new(offences: u32, within: Duration, ban_for: Duration) -> Self {
        Self::with_store(
            offences,
            within,
            ban_for,
            Arc::new(MemoryStore::new(MEMORY_KEYS)),
        )
    }

    /// The same, counted in `store` (the rate limiter's, to share offences and bans between
    /// replicas).
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use portcullis::ban::BanList;
    /// use portcullis::rate_limit::sqlite::SqliteStore;
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let store = Arc::new(SqliteStore::open(":memory:").unwrap());
    /// let bans = BanList::with_store(1, Duration::from_secs(60), Duration::from_secs(60), store);
    /// assert_eq!(bans.record_offence("203.0.113.7").await, Ok(Some(Duration::from_secs(60))));
    /// assert!(bans.is_banned("203.0.113.7").is_some());
    /// # });
    /// ```
    pub fn with_store(
        offences: u32,
        within: Duration,
        ban_for: Duration,
        store: Arc<dyn RateLimitStore>,
    ) -> Self {
        let at_once = store.decide_now(&[]).is_some();
        BanList {
            inner: Arc::new(Inner {
                offences: offences.max(1),
                within,
                ban_for,
                at_once,
                fallback: None,
                store,
                on_error: OnStoreError::Closed,
                clock: Arc::new(SystemClock),
                local: Mutex::new(HashMap::new()),
                in_store: Mutex::new(std::collections::HashSet::new()),
                live: AtomicUsize::new(0),
                last_refresh_ms: AtomicU64::new(0),
                refreshing: AtomicBool::new(false),
                outage: StoreOutage::new("ban-list"),
            }),
        }
        .with_fallback()
    }

    /// A shared store under [`OnStoreError::Closed`] gets its local fallback counter.
    fn with_fallback(mut self) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.fallback = (!inner.at_once && inner.on_error == OnStoreError::Closed)
                .then(|| MemoryStore::with_clock(MEMORY_KEYS, inner.clock.clone()));
        }
        self
    }

    /// What a store failure does to an offence: [`OnStoreError::Closed`] (the default) counts
    /// it in a local fallback store, so bans still happen (on this replica), and
    /// [`OnStoreError::Open`] leaves it uncounted. Checking never touches the store.
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use portcullis::ban::BanList;
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
    /// let minute = Duration::from_secs(60);
    /// let closed = BanList::with_store(1, minute, minute, Arc::new(Down));
    /// assert!(closed.record_offence("203.0.113.7").await.unwrap().is_some());
    /// let open = BanList::with_store(1, minute, minute, Arc::new(Down)).on_store_error(OnStoreError::Open);
    /// assert!(open.record_offence("203.0.113.7").await.is_err());
    /// assert_eq!(open.store_errors(), 1);
    /// # });
    /// ```
    pub fn on_store_error(mut self, mode: OnStoreError) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.on_error = mode;
        }
        self.with_fallback()
    }

    /// Reads the time from `clock` (tests move a manual clock forward). The store counts
    /// offences on its own clock.
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use portcullis::ban::BanList;
    /// use portcullis::rate_limit::{ManualClock, memory::MemoryStore};
    /// let clock = Arc::new(ManualClock::new(1_700_000_000_000_000));
    /// let store = Arc::new(MemoryStore::with_clock(1000, clock.clone()));
    /// let bans = BanList::with_store(1, Duration::from_secs(60), Duration::from_secs(10), store)
    ///     .clock(clock.clone());
    /// bans.record_offence_now("k");
    /// assert_eq!(bans.is_banned("k"), Some(Duration::from_secs(10)));
    /// clock.advance(10_000_000);
    /// assert_eq!(bans.is_banned("k"), None);
    /// ```
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.clock = clock;
        }
        self.with_fallback()
    }

    /// Offences that place a ban.
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::ban::BanList;
    /// assert_eq!(BanList::new(0, Duration::from_secs(1), Duration::from_secs(1)).offences(), 1);
    /// ```
    pub fn offences(&self) -> u32 {
        self.inner.offences
    }

    /// The window the offences are counted in.
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::ban::BanList;
    /// assert_eq!(BanList::new(5, Duration::from_secs(60), Duration::from_secs(1)).within(), Duration::from_secs(60));
    /// ```
    pub fn within(&self) -> Duration {
        self.inner.within
    }

    /// How long a ban lasts.
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::ban::BanList;
    /// assert_eq!(BanList::new(5, Duration::from_secs(60), Duration::from_secs(900)).ban_for(), Duration::from_secs(900));
    /// ```
    pub fn ban_for(&self) -> Duration {
        self.inner.ban_for
    }

    /// Store failures seen so far (offences that could not be counted, bans that could not be
    /// written or loaded).
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::ban::BanList;
    /// assert_eq!(BanList::new(5, Duration::from_secs(60), Duration::from_secs(60)).store_errors(), 0);
    /// ```
    pub fn store_errors(&self) -> u64 {
        self.inner.outage.errors()
    }

    /// Bans in force here now (with a shared store, as of the last refresh from it, at most
    /// a couple of seconds old).
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::ban::BanList;
    /// let bans = BanList::new(1, Duration::from_secs(60), Duration::from_secs(30));
    /// assert_eq!(bans.banned_now(), 0);
    /// bans.record_offence_now("203.0.113.7");
    /// assert_eq!(bans.banned_now(), 1);
    /// ```
    pub fn banned_now(&self) -> usize {
        self.list().len()
    }

    /// How long `key` stays banned, or `None`. Reads only the local map (and not even that
    /// while no ban is live); with a shared store, may start a refresh from it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::ban::BanList;
    /// let bans = BanList::new(1, Duration::from_secs(60), Duration::from_secs(30));
    /// assert_eq!(bans.is_banned("203.0.113.7"), None);
    /// bans.record_offence_now("203.0.113.7");
    /// assert_eq!(bans.is_banned("203.0.113.7"), Some(Duration::from_secs(30)));
    /// ```
    pub fn is_banned(&self, key: &str) -> Option<Duration> {
        self.inner.maybe_refresh(&self.inner);
        if self.inner.live.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.inner.lookup(key)
    }

    /// [`is_banned`](Self::is_banned) for a client: its key is built only while some ban is
    /// live. The layer's check (step 5).
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::{ClientIp, ban::BanList};
    /// let bans = BanList::new(1, Duration::from_secs(60), Duration::from_secs(30));
    /// let client = ClientIp("2001:db8::1".parse().unwrap());
    /// bans.record_offence_now(&client.key());
    /// // Its whole /64 is banned.
    /// assert!(bans.is_client_banned(ClientIp("2001:db8::2".parse().unwrap())).is_some());
    /// ```
    #[inline]
    pub fn is_client_banned(&self, client: ClientIp) -> Option<Duration> {
        self.inner.maybe_refresh(&self.inner);
        if self.inner.live.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.inner.lookup(&client.key())
    }

    /// Counts an offence for `key` when the store decides at once (an in-process store):
    /// `Some(Some(ban_for))` when it placed a ban, `Some(None)` when it did not, and `None`
    /// when the store must be waited for ([`record_offence`](Self::record_offence) then).
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::ban::BanList;
    /// let bans = BanList::new(2, Duration::from_secs(60), Duration::from_secs(30));
    /// assert_eq!(bans.record_offence_now("k"), Some(None));
    /// assert_eq!(bans.record_offence_now("k"), Some(Some(Duration::from_secs(30))));
    /// ```
    pub fn record_offence_now(&self, key: &str) -> Option<Option<Duration>> {
        let i = &self.inner;
        if !i.at_once {
            return None;
        }
        let k = Inner::store_key(key);
        let charge = [i.charge(&k)];
        let decided = i.store.decide_now(&charge)?;
        Some(match decided {
            Ok(v) => {
                i.store_answered();
                i.settle(key, &v).then_some(i.ban_for)
            }
            Err(e) => {
                // An in-process store that fails has no fallback worth having.
                i.store_failed(&e, "count");
                None
            }
        })
    }

    /// Counts an offence for `key`: `Ok(Some(ban_for))` when it placed a ban (also written to
    /// a shared store, for the other replicas), `Ok(None)` when it did not, `Err` when the
    /// store failed under [`OnStoreError::Open`] (the offence went uncounted).
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::ban::BanList;
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let bans = BanList::new(2, Duration::from_secs(60), Duration::from_secs(30));
    /// assert_eq!(bans.record_offence("k").await, Ok(None));
    /// assert_eq!(bans.record_offence("k").await, Ok(Some(Duration::from_secs(30))));
    /// assert_eq!(bans.record_offence("other").await, Ok(None));
    /// # });
    /// ```
    pub async fn record_offence(&self, key: &str) -> Result<Option<Duration>, StoreError> {
        let i = &self.inner;
        let k = Inner::store_key(key);
        let charge = [i.charge(&k)];
        let verdicts = match i.store.decide(&charge).await {
            Ok(v) => {
                i.store_answered();
                v
            }
            Err(e) => {
                i.store_failed(&e, "count");
                match &i.fallback {
                    Some(f) => f.decide_now(&charge)?,
                    None => return Err(e),
                }
            }
        };
        if !i.settle(key, &verdicts) {
            return Ok(None);
        }
        if !i.at_once {
            let until = i.now_ms().saturating_add(duration_ms(i.ban_for));
            if let Err(e) = i.store.ban(key, until).await {
                // Banned here all the same; the other replicas do not learn of it.
                i.store_failed(&e, "ban");
            }
        }
        Ok(Some(i.ban_for))
    }

    /// Lifts the ban on `key` (a client key, [`ClientIp::key`]) and forgets its offences, so
    /// its next refusal counts as a first one: here at once, in a shared store for every
    /// replica (each drops it at its next refresh, within [`REFRESH_EVERY`]). Returns whether
    /// a ban was in force here.
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::ban::BanList;
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let bans = BanList::new(2, Duration::from_secs(60), Duration::from_secs(30));
    /// bans.record_offence_now("203.0.113.7");
    /// bans.record_offence_now("203.0.113.7");
    /// assert!(bans.is_banned("203.0.113.7").is_some());
    /// assert_eq!(bans.lift("203.0.113.7").await, Ok(true));
    /// assert_eq!(bans.is_banned("203.0.113.7"), None);
    /// // Its offences are forgotten too: one more is not a ban.
    /// assert_eq!(bans.record_offence_now("203.0.113.7"), Some(None));
    /// assert_eq!(bans.lift("203.0.113.7").await, Ok(false));
    /// # });
    /// ```
    pub async fn lift(&self, key: &str) -> Result<bool, StoreError> {
        let i = &self.inner;
        let was = {
            let mut local = i.local.lock().unwrap_or_else(PoisonError::into_inner);
            let was = local.remove(key).is_some_and(|until| until > i.now_ms());
            i.live.store(local.len(), Ordering::Relaxed);
            was
        };
        let counter = Inner::store_key(key);
        if let Some(f) = &i.fallback {
            // Offences counted here while the shared store was down.
            let _ = f.lift_ban(key, &counter).await;
        }
        match i.store.lift_ban(key, &counter).await {
            Ok(()) => {
                i.store_answered();
                Ok(was)
            }
            Err(e) => {
                i.store_failed(&e, "lift");
                Err(e)
            }
        }
    }

    /// The bans in force here, longest first: client key and time left (with a shared
    /// store, as of the last refresh from it, at most [`REFRESH_EVERY`] old).
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::ban::BanList;
    /// let bans = BanList::new(1, Duration::from_secs(60), Duration::from_secs(30));
    /// bans.record_offence_now("203.0.113.7");
    /// let list = bans.list();
    /// assert_eq!(list.len(), 1);
    /// assert_eq!(list[0].0, "203.0.113.7");
    /// assert!(list[0].1 <= Duration::from_secs(30));
    /// ```
    pub fn list(&self) -> Vec<(String, Duration)> {
        let i = &self.inner;
        i.maybe_refresh(i);
        let now = i.now_ms();
        let local = i.local.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<(String, Duration)> = local
            .iter()
            .filter(|&(_, &until)| until > now)
            .map(|(k, &until)| (k.clone(), Duration::from_millis(until - now)))
            .collect();
        out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        out
    }

    /// Loads the live bans from the store into the local map now (what the lazy refresh does
    /// every [`REFRESH_EVERY`]); returns how many it loaded.
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use portcullis::ban::BanList;
    /// use portcullis::rate_limit::sqlite::SqliteStore;
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let store = Arc::new(SqliteStore::open(":memory:").unwrap());
    /// let minute = Duration::from_secs(60);
    /// let a = BanList::with_store(1, minute, minute, store.clone());
    /// let b = BanList::with_store(1, minute, minute, store);
    /// a.record_offence("203.0.113.7").await.unwrap();
    /// assert_eq!(b.refresh().await, Ok(1));
    /// assert!(b.is_banned("203.0.113.7").is_some());
    /// # });
    /// ```
    pub async fn refresh(&self) -> Result<usize, StoreError> {
        self.inner.refresh().await
    }
}

fn duration_ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

impl Inner {
    fn store_key(key: &str) -> String {
        format!("ban-offences|{key}")
    }

    fn charge<'a>(&self, key: &'a str) -> Charge<'a> {
        Charge {
            key,
            rule: Rule::new(
                self.offences,
                self.within.as_micros().min(u128::from(u64::MAX)) as u64,
                Algorithm::SlidingWindow,
                0,
            ),
            cost: 1,
        }
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_us() / 1000
    }

    /// Whether the verdict on an offence bans the key, and if so bans it here. Reaching the
    /// limit bans; so does an offence refused because the window is still full (the key's
    /// ban ran out, and it offends again).
    fn settle(&self, key: &str, verdicts: &[Verdict]) -> bool {
        let bans = verdicts
            .first()
            .is_some_and(|v| !v.allowed || v.remaining == 0);
        if bans {
            let until = self.now_ms().saturating_add(duration_ms(self.ban_for));
            self.insert(key, until);
        }
        bans
    }

    fn lookup(&self, key: &str) -> Option<Duration> {
        let now = self.now_ms();
        let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        match local.get(key) {
            Some(&until) if until > now => Some(Duration::from_millis(until - now)),
            Some(_) => {
                // Run out: dropped, so the count of live bans can fall back to zero.
                local.remove(key);
                self.live.store(local.len(), Ordering::Relaxed);
                None
            }
            None => None,
        }
    }

    /// Bans `key` until `until` (ms) here, keeping the later end of two bans; drops run-out
    /// bans, and the one closest to its end when the map is full.
    fn insert(&self, key: &str, until: u64) {
        let now = self.now_ms();
        if until <= now {
            return;
        }
        let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = local.get_mut(key) {
            *old = (*old).max(until);
            return;
        }
        if local.len() >= MAX_LOCAL_BANS {
            local.retain(|_, &mut u| u > now);
        }
        if local.len() >= MAX_LOCAL_BANS
            && let Some(first) = local
                .iter()
                .min_by_key(|(_, u)| **u)
                .map(|(k, _)| k.clone())
        {
            local.remove(&first);
        }
        local.insert(key.to_string(), until);
        self.live.store(local.len(), Ordering::Relaxed);
    }

    /// Starts a refresh from a shared store when the last began [`REFRESH_EVERY`] ago and none
    /// is running, on the current Tokio runtime (none without one).
    #[inline]
    fn maybe_refresh(&self, this: &Arc<Inner>) {
        if self.at_once {
            return;
        }
        let now = self.now_ms();
        let last = self.last_refresh_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < duration_ms(REFRESH_EVERY) {
            return;
        }
        self.start_refresh(this, now);
    }

    #[cold]
    fn start_refresh(&self, this: &Arc<Inner>, now: u64) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        self.last_refresh_ms.store(now, Ordering::Relaxed);
        let this = this.clone();
        handle.spawn(async move {
            let _ = this.refresh().await;
            this.refreshing.store(false, Ordering::Release);
        });
    }

    async fn refresh(&self) -> Result<usize, StoreError> {
        let bans = match self.store.bans().await {
            Ok(b) => {
                self.store_answered();
                b
            }
            Err(e) => {
                self.store_failed(&e, "load bans");
                return Err(e);
            }
        };
        let n = bans.len();
        let now = self.now_ms();
        {
            // A ban the store held last time and holds no more was lifted (by hand, on any
            // replica): dropped here too. Bans only this replica knows (placed while the
            // store was down, or just now) stay until they run out.
            let held: std::collections::HashSet<String> =
                bans.iter().map(|(k, _)| k.clone()).collect();
            let mut seen = self.in_store.lock().unwrap_or_else(PoisonError::into_inner);
            let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
            local.retain(|k, &mut u| u > now && (held.contains(k) || !seen.contains(k)));
            self.live.store(local.len(), Ordering::Relaxed);
            *seen = held;
        }
        for (key, until) in bans.into_iter().take(MAX_LOCAL_BANS) {
            self.insert(&key, until);
        }
        Ok(n)
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::ManualClock;

    fn list(offences: u32, within_s: u64, ban_s: u64) -> (BanList, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(1_700_000_000_000_000));
        let store = Arc::new(MemoryStore::with_clock(1000, clock.clone()));
        let bans = BanList::with_store(
            offences,
            Duration::from_secs(within_s),
            Duration::from_secs(ban_s),
            store,
        )
        .clock(clock.clone());
        (bans, clock)
    }

    #[test]
    fn bans_at_the_limit_and_forgets_when_the_ban_ends() {
        let (bans, clock) = list(3, 60, 10);
        assert_eq!(bans.inner.live.load(Ordering::Relaxed), 0);
        for _ in 0..2 {
            assert_eq!(bans.record_offence_now("a"), Some(None));
        }
        assert_eq!(bans.is_banned("a"), None);
        assert_eq!(
            bans.record_offence_now("a"),
            Some(Some(Duration::from_secs(10)))
        );
        assert_eq!(bans.is_banned("a"), Some(Duration::from_secs(10)));
        assert_eq!(bans.is_banned("b"), None, "other keys are unaffected");
        clock.advance(10_000_000);
        assert_eq!(bans.is_banned("a"), None);
        assert_eq!(
            bans.inner.live.load(Ordering::Relaxed),
            0,
            "a run-out ban no longer costs a lookup"
        );
        // The window still holds three offences: the next one bans again at once.
        assert!(bans.record_offence_now("a").unwrap().is_some());
    }

    #[test]
    fn the_local_map_is_bounded() {
        let (bans, _) = list(1, 60, 60);
        for i in 0..MAX_LOCAL_BANS + 10 {
            bans.inner.insert(&format!("k{i}"), u64::MAX);
        }
        assert_eq!(bans.inner.local.lock().unwrap().len(), MAX_LOCAL_BANS);
    }
}

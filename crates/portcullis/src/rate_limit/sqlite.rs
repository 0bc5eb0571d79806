//! The SQLite store: the embedded, persistent default for a single gateway.
//!
//! One connection lives on its own thread (SQLite connections are not `Sync`, and the request
//! path must never block a runtime thread on disk). Decisions queue to it; it takes the queued
//! ones in arrival order inside one short `BEGIN IMMEDIATE` transaction — each decision reads
//! its cells, evaluates, and writes only if every limit allows — and commits, so concurrent
//! requests can never over-admit. The database runs in WAL mode with `synchronous = NORMAL`,
//! and expired rows are swept in the background in small batches (the seed deleted old rows
//! on every request).
//!
//! ```no_run
//! use portcullis::rate_limit::{sqlite::SqliteStore, RateLimiter};
//! let store = SqliteStore::open("portcullis-ratelimit.db").expect("writable path");
//! let limiter = RateLimiter::new(std::sync::Arc::new(store));
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use super::algorithm::{Cell, Rule, Verdict};
use super::{Charge, Clock, RateLimitStore, StoreError, SystemClock};
use crate::auth::BoxFuture;

const SWEEP_EVERY: Duration = Duration::from_secs(30);
const SWEEP_BATCH: i64 = 1000;
const MAX_BATCH: usize = 256;

struct Job {
    charges: Vec<(String, Rule, u32)>,
    reply: oneshot::Sender<Result<Vec<Verdict>, StoreError>>,
}

/// What the worker thread is asked: decisions (batched into one transaction), or bans.
enum Work {
    Decide(Job),
    Ban {
        key: String,
        until_ms: u64,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Bans {
        reply: oneshot::Sender<Result<Vec<(String, u64)>, StoreError>>,
    },
    Lift {
        key: String,
        counter: String,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

/// The SQLite [`RateLimitStore`].
///
/// ```
/// use std::sync::Arc;
/// use portcullis::rate_limit::{RateLimiter, sqlite::SqliteStore};
/// let store = SqliteStore::open(":memory:")?; // a file path in production
/// let limiter = RateLimiter::new(Arc::new(store));
/// # Ok::<(), portcullis::rate_limit::StoreError>(())
/// ```
pub struct SqliteStore {
    tx: mpsc::SyncSender<Work>,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

fn open_db(path: &Path) -> Result<Connection, StoreError> {
    let err = |e: rusqlite::Error| StoreError::new(format!("sqlite {}: {e}", path.display()));
    let conn = Connection::open(path).map_err(err)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(err)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(err)?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS rate_limits (
             key TEXT PRIMARY KEY,
             a INTEGER NOT NULL,
             b INTEGER NOT NULL,
             c INTEGER NOT NULL,
             expires_at INTEGER NOT NULL
         ) WITHOUT ROWID;
         CREATE INDEX IF NOT EXISTS rate_limits_expires ON rate_limits (expires_at);
         CREATE TABLE IF NOT EXISTS bans (
             key TEXT PRIMARY KEY,
             until_ms INTEGER NOT NULL
         ) WITHOUT ROWID;",
    )
    .map_err(err)?;
    Ok(conn)
}

impl SqliteStore {
    /// Opens (or creates) the database at `path` on the system clock.
    ///
    /// ```
    /// use portcullis::policy::Algorithm;
    /// use portcullis::rate_limit::{Charge, RateLimitStore, algorithm::Rule, sqlite::SqliteStore};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let store = SqliteStore::open(":memory:").unwrap();
    /// let charge = [Charge { key: "k", rule: Rule::new(1, 60_000_000, Algorithm::SlidingWindow, 0), cost: 1 }];
    /// assert!(store.decide(&charge).await.unwrap()[0].allowed);
    /// assert!(!store.decide(&charge).await.unwrap()[0].allowed);
    /// # });
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with_clock(path, Arc::new(SystemClock))
    }

    /// Opens the database with a given clock (tests).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use portcullis::policy::Algorithm;
    /// use portcullis::rate_limit::{Charge, ManualClock, RateLimitStore, algorithm::Rule, sqlite::SqliteStore};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let clock = Arc::new(ManualClock::new(1_700_000_000_000_000));
    /// let store = SqliteStore::open_with_clock(":memory:", clock.clone()).unwrap();
    /// let charge = [Charge { key: "k", rule: Rule::new(1, 1_000_000, Algorithm::FixedWindow, 0), cost: 1 }];
    /// assert!(store.decide(&charge).await.unwrap()[0].allowed);
    /// assert!(!store.decide(&charge).await.unwrap()[0].allowed);
    /// clock.advance(1_000_000);
    /// assert!(store.decide(&charge).await.unwrap()[0].allowed);
    /// # });
    /// ```
    pub fn open_with_clock(
        path: impl AsRef<Path>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let conn = open_db(&path)?;
        let (tx, rx) = mpsc::sync_channel::<Work>(4096);
        let worker_path = path.clone();
        thread::Builder::new()
            .name("portcullis-sqlite-ratelimit".into())
            .spawn(move || worker(conn, rx, clock, worker_path))
            .map_err(|e| StoreError::new(format!("cannot start the sqlite thread: {e}")))?;
        Ok(SqliteStore { tx, path })
    }

    /// The database file.
    ///
    /// ```
    /// use portcullis::rate_limit::sqlite::SqliteStore;
    /// let store = SqliteStore::open(":memory:").unwrap();
    /// assert_eq!(store.path(), std::path::Path::new(":memory:"));
    /// ```
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn worker(mut conn: Connection, rx: mpsc::Receiver<Work>, clock: Arc<dyn Clock>, path: PathBuf) {
    let mut last_sweep = Instant::now();
    loop {
        let first = match rx.recv_timeout(SWEEP_EVERY) {
            Ok(work) => Some(work),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut jobs: Vec<Job> = Vec::new();
        let mut other = Vec::new();
        let mut next = first;
        while let Some(work) = next.take() {
            match work {
                Work::Decide(j) => jobs.push(j),
                w => other.push(w),
            }
            if jobs.len() + other.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        for work in other {
            ban_work(&conn, work, &clock, &path);
        }
        if !jobs.is_empty() {
            let now = clock.now_us();
            let results = decide_batch(&mut conn, &jobs, now);
            match results {
                Ok(verdicts) => {
                    for (job, v) in jobs.into_iter().zip(verdicts) {
                        let _ = job.reply.send(Ok(v));
                    }
                }
                Err(e) => {
                    let e = StoreError::new(format!("sqlite {}: {e}", path.display()));
                    for job in jobs {
                        let _ = job.reply.send(Err(e.clone()));
                    }
                }
            }
        }
        if last_sweep.elapsed() >= SWEEP_EVERY {
            last_sweep = Instant::now();
            let now = clock.now_us() as i64;
            let _ = conn.execute(
                "DELETE FROM rate_limits WHERE key IN
                   (SELECT key FROM rate_limits WHERE expires_at < ?1 LIMIT ?2)",
                params![now, SWEEP_BATCH],
            );
        }
    }
}

/// A ban written or the live bans read (rare: one per ban placed, one per replica every
/// [`REFRESH_EVERY`](crate::ban::REFRESH_EVERY)).
fn ban_work(conn: &Connection, work: Work, clock: &Arc<dyn Clock>, path: &Path) {
    let err = |e: rusqlite::Error| StoreError::new(format!("sqlite {}: {e}", path.display()));
    let as_sql = |ms: u64| ms.min(i64::MAX as u64) as i64;
    match work {
        Work::Decide(_) => {}
        Work::Ban {
            key,
            until_ms,
            reply,
        } => {
            let done = conn
                .execute(
                    "INSERT INTO bans (key, until_ms) VALUES (?1, ?2)
                     ON CONFLICT(key) DO UPDATE SET until_ms = max(until_ms, excluded.until_ms)",
                    params![key, as_sql(until_ms)],
                )
                .map(drop)
                .map_err(err);
            let _ = reply.send(done);
        }
        Work::Bans { reply } => {
            let now = as_sql(clock.now_us() / 1000);
            let read = || -> rusqlite::Result<Vec<(String, u64)>> {
                conn.execute("DELETE FROM bans WHERE until_ms <= ?1", params![now])?;
                let mut stmt = conn.prepare_cached(
                    "SELECT key, until_ms FROM bans WHERE until_ms > ?1 LIMIT ?2",
                )?;
                let rows = stmt
                    .query_map(params![now, crate::ban::MAX_LOCAL_BANS as i64], |r| {
                        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
                    })?;
                rows.collect()
            };
            let _ = reply.send(read().map_err(err));
        }
        Work::Lift {
            key,
            counter,
            reply,
        } => {
            let done = conn
                .execute("DELETE FROM bans WHERE key = ?1", params![key])
                .and_then(|_| {
                    conn.execute("DELETE FROM rate_limits WHERE key = ?1", params![counter])
                })
                .map(drop)
                .map_err(err);
            let _ = reply.send(done);
        }
    }
}

fn decide_batch(
    conn: &mut Connection,
    jobs: &[Job],
    now: u64,
) -> rusqlite::Result<Vec<Vec<Verdict>>> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut out = Vec::with_capacity(jobs.len());
    {
        let mut get = tx.prepare_cached("SELECT a, b, c FROM rate_limits WHERE key = ?1")?;
        let mut put = tx.prepare_cached(
            "INSERT INTO rate_limits (key, a, b, c, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(key) DO UPDATE SET a = excluded.a, b = excluded.b, c = excluded.c,
                                            expires_at = excluded.expires_at",
        )?;
        for job in jobs {
            let mut cells = Vec::with_capacity(job.charges.len());
            for (key, _, _) in &job.charges {
                let cell = get
                    .query_row(params![key], |r| {
                        Ok(Cell {
                            a: r.get::<_, i64>(0)? as u64,
                            b: r.get::<_, i64>(1)? as u32,
                            c: r.get::<_, i64>(2)? as u32,
                        })
                    })
                    .optional()?
                    .unwrap_or_default();
                cells.push(cell);
            }
            let evaluated: Vec<(Verdict, Cell)> = job
                .charges
                .iter()
                .zip(&cells)
                .map(|((_, rule, cost), cell)| rule.evaluate(*cell, now, *cost))
                .collect();
            let all = evaluated.iter().all(|(v, _)| v.allowed);
            let mut verdicts = Vec::with_capacity(evaluated.len());
            for (((key, rule, _), (v, new)), old) in job.charges.iter().zip(evaluated).zip(&cells) {
                if all {
                    put.execute(params![
                        key,
                        new.a as i64,
                        i64::from(new.b),
                        i64::from(new.c),
                        rule.expires_at(&new).min(i64::MAX as u64) as i64
                    ])?;
                    verdicts.push(v);
                } else if v.allowed {
                    verdicts.push(rule.evaluate(*old, now, 0).0);
                } else {
                    verdicts.push(v);
                }
            }
            out.push(verdicts);
        }
    }
    tx.commit()?;
    Ok(out)
}

/// The worker's answer to work handed to it (or why it could not be).
async fn answer<T>(
    sent: Result<(), mpsc::TrySendError<Work>>,
    rx: oneshot::Receiver<Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match sent {
        Ok(()) => rx
            .await
            .unwrap_or_else(|_| Err(StoreError::new("sqlite rate-limit thread stopped"))),
        Err(mpsc::TrySendError::Full(_)) => Err(StoreError::new("sqlite rate-limit queue is full")),
        Err(mpsc::TrySendError::Disconnected(_)) => {
            Err(StoreError::new("sqlite rate-limit thread stopped"))
        }
    }
}

impl RateLimitStore for SqliteStore {
    fn decide<'a>(
        &'a self,
        charges: &'a [Charge<'a>],
    ) -> BoxFuture<'a, Result<Vec<Verdict>, StoreError>> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            charges: charges
                .iter()
                .map(|c| (c.key.to_string(), c.rule, c.cost))
                .collect(),
            reply,
        };
        let sent = self.tx.try_send(Work::Decide(job));
        Box::pin(answer(sent, rx))
    }

    fn ban<'a>(
        &'a self,
        key: &'a str,
        until_unix_ms: u64,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let (reply, rx) = oneshot::channel();
        let sent = self.tx.try_send(Work::Ban {
            key: key.to_string(),
            until_ms: until_unix_ms,
            reply,
        });
        Box::pin(answer(sent, rx))
    }

    fn bans(&self) -> BoxFuture<'_, Result<Vec<(String, u64)>, StoreError>> {
        let (reply, rx) = oneshot::channel();
        let sent = self.tx.try_send(Work::Bans { reply });
        Box::pin(answer(sent, rx))
    }

    fn lift_ban<'a>(
        &'a self,
        key: &'a str,
        counter: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let (reply, rx) = oneshot::channel();
        let sent = self.tx.try_send(Work::Lift {
            key: key.to_string(),
            counter: counter.to_string(),
            reply,
        });
        Box::pin(answer(sent, rx))
    }

    fn name(&self) -> &'static str {
        "sqlite"
    }

    /// A decision without charges: the worker thread takes the database's write lock and
    /// commits, so a file that became read-only, locked or unusable shows here.
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        let decided = self.decide(&[]);
        Box::pin(async move { decided.await.map(drop) })
    }
}

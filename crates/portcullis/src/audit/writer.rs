//! The audit writer: a bounded queue off the request path, batched writes, and a spool so
//! nothing acknowledged is lost.
//!
//! - [`AuditSink::record`] never blocks on the store and never awaits: it puts the event on a
//!   bounded queue. When the queue is full (or the writer has shut down), the event is
//!   appended to the spool file directly, counted as `spooled`; only if the spool cannot take
//!   it either (disk full) is it counted as `dropped` and logged. Back-pressure is therefore
//!   counted, never silent, and never slows a request beyond one buffered file append.
//! - One background task redacts events ([`Redactor`]) and writes them in batches: when
//!   `batch_size` events are queued, or `batch_delay` after the first of a batch.
//! - When a write fails (database down, disk full, timeout), the batch is appended to the
//!   spool and `fsync`'d. The writer retries with exponential back-off, replaying the spool
//!   in order before writing anything new; the store ignores ids it already has, so a batch
//!   that was stored but reported as failed is not counted twice.
//! - On start, a spool left by a previous run is replayed first.
//! - [`AuditWriter::flush`] and [`AuditWriter::shutdown`] drain the queue and try the spool
//!   once more, for tests and graceful shutdown.
//!
//! An event is *acknowledged* once it is in the store (`written`) or in the spool (`spooled`):
//! either survives the process being killed. Appends that overflow the queue reach the disk
//! (`fsync`) at the writer's next tick, at most `batch_delay` later; batches refused by the
//! store are `fsync`'d at once.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::redact::Redactor;
use super::spool::Spool;
use super::store::{AuditError, AuditStore, StoreOptions, open_store};
use super::{AuditAction, AuditEvent, AuditSink, Outcome};

/// How the writer batches, retries and keeps events.
///
/// ```
/// use std::time::Duration;
/// use portcullis::audit::{Redactor, WriterConfig};
/// let config = WriterConfig::new("/var/lib/portcullis/audit-spool")
///     .batching(1000, Duration::from_millis(500))
///     .retention(Duration::from_secs(90 * 86_400))
///     .redactor(Redactor::new().sensitive_field("ssn"));
/// assert_eq!(config.batch_size, 1000);
/// assert_eq!(config.retention_batch, 1000);
/// ```
#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// The spool folder (one writer per folder).
    pub spool_dir: PathBuf,
    /// Events the queue holds before `record` spools directly (default 16 384).
    pub queue_capacity: usize,
    /// Events per write (default 500).
    pub batch_size: usize,
    /// The longest an event waits for its batch to fill (default 200 ms).
    pub batch_delay: Duration,
    /// The first retry delay after a failed write (default 250 ms); doubles up to `retry_max`.
    pub retry_min: Duration,
    /// The longest retry delay (default 10 s).
    pub retry_max: Duration,
    /// A write that takes longer counts as failed (default 10 s).
    pub write_timeout: Duration,
    /// Delete events older than this (`None`: keep everything). Database stores only.
    pub retention: Option<Duration>,
    /// How often retention runs (default 5 min).
    pub retention_interval: Duration,
    /// Rows deleted per statement (default 1000), so retention never holds long locks.
    pub retention_batch: u32,
    /// What is scrubbed before storage.
    pub redactor: Redactor,
    /// Options for [`open_store`] (used by [`AuditWriter::open`]).
    pub store_options: StoreOptions,
}

impl WriterConfig {
    /// The defaults, spooling to `spool_dir`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::audit::WriterConfig;
    /// let config = WriterConfig::new("audit-spool");
    /// assert_eq!(config.spool_dir, std::path::Path::new("audit-spool"));
    /// assert_eq!((config.queue_capacity, config.batch_size), (16_384, 500));
    /// assert_eq!(config.batch_delay, Duration::from_millis(200));
    /// assert_eq!(config.retention, None);
    /// ```
    pub fn new(spool_dir: impl Into<PathBuf>) -> Self {
        WriterConfig {
            spool_dir: spool_dir.into(),
            queue_capacity: 16_384,
            batch_size: 500,
            batch_delay: Duration::from_millis(200),
            retry_min: Duration::from_millis(250),
            retry_max: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            retention: None,
            retention_interval: Duration::from_secs(300),
            retention_batch: 1000,
            redactor: Redactor::new(),
            store_options: StoreOptions::default(),
        }
    }

    /// Sets the queue capacity.
    ///
    /// ```
    /// use portcullis::audit::WriterConfig;
    /// assert_eq!(WriterConfig::new("audit-spool").queue_capacity(1024).queue_capacity, 1024);
    /// assert_eq!(WriterConfig::new("audit-spool").queue_capacity(0).queue_capacity, 1);
    /// ```
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = n.max(1);
        self
    }

    /// Sets the batch size and delay.
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::audit::WriterConfig;
    /// let config = WriterConfig::new("audit-spool").batching(0, Duration::from_millis(50));
    /// assert_eq!((config.batch_size, config.batch_delay), (1, Duration::from_millis(50)));
    /// ```
    pub fn batching(mut self, size: usize, delay: Duration) -> Self {
        self.batch_size = size.max(1);
        self.batch_delay = delay;
        self
    }

    /// Sets the retry back-off.
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::audit::WriterConfig;
    /// let config = WriterConfig::new("audit-spool").retry(Duration::from_secs(1), Duration::from_millis(10));
    /// // The longest delay is never shorter than the first.
    /// assert_eq!(config.retry_max, Duration::from_secs(1));
    /// ```
    pub fn retry(mut self, min: Duration, max: Duration) -> Self {
        self.retry_min = min;
        self.retry_max = max.max(min);
        self
    }

    /// Sets the write timeout.
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::audit::WriterConfig;
    /// let config = WriterConfig::new("audit-spool").write_timeout(Duration::from_secs(2));
    /// assert_eq!(config.write_timeout, Duration::from_secs(2));
    /// ```
    pub fn write_timeout(mut self, t: Duration) -> Self {
        self.write_timeout = t;
        self
    }

    /// Keeps events for `keep` (e.g. 90 days).
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::audit::WriterConfig;
    /// let config = WriterConfig::new("audit-spool").retention(Duration::from_secs(90 * 86_400));
    /// assert_eq!(config.retention, Some(Duration::from_secs(90 * 86_400)));
    /// ```
    pub fn retention(mut self, keep: Duration) -> Self {
        self.retention = Some(keep);
        self
    }

    /// Sets the redactor.
    ///
    /// ```
    /// use portcullis::audit::{Redactor, WriterConfig};
    /// let config = WriterConfig::new("audit-spool").redactor(Redactor::new().sensitive_field("ssn"));
    /// assert!(config.redactor.is_sensitive_key("customer_ssn"));
    /// ```
    pub fn redactor(mut self, r: Redactor) -> Self {
        self.redactor = r;
        self
    }

    /// Sets the store options.
    ///
    /// ```
    /// use portcullis::audit::{StoreOptions, WriterConfig};
    /// let config = WriterConfig::new("audit-spool").store_options(StoreOptions {
    ///     postgres_password: std::env::var("AUDIT_DB_PASSWORD").ok(),
    ///     ..StoreOptions::default()
    /// });
    /// assert_eq!(config.store_options.jsonl_keep, None);
    /// ```
    pub fn store_options(mut self, o: StoreOptions) -> Self {
        self.store_options = o;
        self
    }
}

/// The writer's counters, for metrics.
///
/// ```
/// use portcullis::audit::AuditCounters;
/// let c = AuditCounters { enqueued: 10, written: 7, spooled: 3, ..AuditCounters::default() };
/// assert_eq!(c.acknowledged(), 10);
/// assert_eq!(serde_json::to_value(c).unwrap()["dropped"], 0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct AuditCounters {
    /// Events put on the queue.
    pub enqueued: u64,
    /// Events stored by a direct write.
    pub written: u64,
    /// Events appended to the spool (refused batches and queue overflow).
    pub spooled: u64,
    /// Events moved from the spool to the store.
    pub replayed: u64,
    /// Events lost: the queue was full and the spool could not take them either.
    pub dropped: u64,
    /// Events waiting in the spool now.
    pub pending: u64,
}

impl AuditCounters {
    /// Events acknowledged: in the store or in the spool.
    ///
    /// ```
    /// use portcullis::audit::AuditCounters;
    /// let c = AuditCounters { written: 5, spooled: 2, dropped: 1, ..AuditCounters::default() };
    /// assert_eq!(c.acknowledged(), 7); // dropped events were never acknowledged
    /// ```
    pub fn acknowledged(&self) -> u64 {
        self.written + self.spooled
    }
}

#[derive(Debug, Default)]
struct Counters {
    enqueued: AtomicU64,
    written: AtomicU64,
    spooled: AtomicU64,
    replayed: AtomicU64,
    dropped: AtomicU64,
    /// Events recorded, by action and outcome (`[action as usize][outcome as usize]`).
    by_action: [[AtomicU64; Outcome::ALL.len()]; AuditAction::ALL.len()],
}

// Events are nearly every message; boxing them would cost an allocation per `record`.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Event(AuditEvent),
    Flush(oneshot::Sender<Result<(), AuditError>>),
    Shutdown(oneshot::Sender<Result<(), AuditError>>),
}

struct Shared {
    spool: Arc<Spool>,
    counters: Counters,
    redactor: Redactor,
    store: Arc<dyn AuditStore>,
    config: WriterConfig,
}

/// The [`AuditSink`] that stores events; cheap to clone (clones share the queue).
///
/// ```
/// use std::sync::Arc;
/// use portcullis::audit::{AuditQuery, AuditSink, AuditWriter, WriterConfig};
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// # let spool = std::env::temp_dir().join(format!("portcullis-doc-{}-writer", std::process::id()));
/// # let _ = std::fs::remove_dir_all(&spool);
/// let writer = AuditWriter::open("sqlite://:memory:", WriterConfig::new(&spool)).await.unwrap();
/// let layer = portcullis::SecurityLayer::builder().audit(Arc::new(writer.clone())).build().unwrap();
/// # let event = portcullis::audit::AuditEvent {
/// #     id: portcullis::audit::uuid_v7(),
/// #     ts_ms: 0,
/// #     action: portcullis::audit::AuditAction::Forbidden,
/// #     outcome: portcullis::audit::Outcome::Denied,
/// #     principal: Some("alice".into()),
/// #     client_ip: Some("203.0.113.7".into()),
/// #     method: "POST".into(),
/// #     route: "/api/admin/**".into(),
/// #     path: "/api/admin/users".into(),
/// #     status: 403,
/// #     request_id: "req-1".into(),
/// #     metadata: serde_json::json!({"code": "forbidden"}),
/// # };
/// writer.record(event); // returns at once
/// writer.flush().await.unwrap();
/// assert_eq!(writer.store().query(&AuditQuery::new()).await.unwrap().len(), 1);
/// writer.shutdown().await.unwrap();
/// # std::fs::remove_dir_all(&spool).ok();
/// # });
/// ```
#[derive(Clone)]
pub struct AuditWriter {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
    retention: Arc<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for AuditWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditWriter")
            .field("store", &self.shared.store.describe())
            .field("spool", &self.shared.spool.dir())
            .field("counters", &self.counters())
            .finish()
    }
}

impl AuditWriter {
    /// Opens the store `url` names ([`open_store`]) and starts a writer on it. Must be called
    /// inside a tokio runtime.
    ///
    /// ```
    /// use portcullis::audit::{AuditError, AuditStore, AuditWriter, WriterConfig};
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// # let spool = std::env::temp_dir().join(format!("portcullis-doc-{}-writer-open", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&spool);
    /// let writer = AuditWriter::open("sqlite://:memory:", WriterConfig::new(&spool)).await.unwrap();
    /// assert_eq!(writer.store().describe(), "sqlite::memory:");
    /// let bad = AuditWriter::open("mysql://db/audit", WriterConfig::new(&spool)).await;
    /// assert!(matches!(bad, Err(AuditError::Config(_))));
    /// writer.shutdown().await.unwrap();
    /// # std::fs::remove_dir_all(&spool).ok();
    /// # });
    /// ```
    pub async fn open(url: &str, config: WriterConfig) -> Result<AuditWriter, AuditError> {
        let store = open_store(url, &config.store_options).await?;
        AuditWriter::start(store, config)
    }

    /// Starts a writer on `store`: opens the spool and spawns the background task, which
    /// replays a leftover spool before anything else. Must be called inside a tokio runtime.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use portcullis::audit::{AuditError, AuditWriter, WriterConfig, sqlite::SqliteAuditStore};
    /// # let spool = std::env::temp_dir().join(format!("portcullis-doc-{}-writer-start", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&spool);
    /// let store = Arc::new(SqliteAuditStore::open(":memory:").unwrap());
    /// // Outside a tokio runtime there is nowhere to run the background task.
    /// let outside = AuditWriter::start(store.clone(), WriterConfig::new(&spool));
    /// assert!(matches!(outside, Err(AuditError::Config(_))));
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let writer = AuditWriter::start(store, WriterConfig::new(&spool)).unwrap();
    /// writer.shutdown().await.unwrap();
    /// # });
    /// # std::fs::remove_dir_all(&spool).ok();
    /// ```
    pub fn start(
        store: Arc<dyn AuditStore>,
        config: WriterConfig,
    ) -> Result<AuditWriter, AuditError> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| AuditError::Config("the audit writer needs a tokio runtime".into()))?;
        let spool = Spool::open(&config.spool_dir).map_err(|e| {
            AuditError::Config(format!("spool {}: {e}", config.spool_dir.display()))
        })?;
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let shared = Arc::new(Shared {
            spool: Arc::new(spool),
            counters: Counters::default(),
            redactor: config.redactor.clone(),
            store,
            config,
        });
        handle.spawn(Task::new(shared.clone()).run(rx));
        let retention = shared.config.retention.map(|keep| {
            let s = shared.clone();
            handle.spawn(async move {
                loop {
                    tokio::time::sleep(s.config.retention_interval).await;
                    if let Err(e) = apply_retention(&s, keep).await {
                        tracing::warn!(target: "portcullis::audit", "retention: {e}");
                    }
                }
            })
        });
        Ok(AuditWriter {
            tx,
            shared,
            retention: Arc::new(retention),
        })
    }

    /// The counters now.
    ///
    /// ```
    /// use portcullis::audit::{AuditSink, AuditWriter, WriterConfig};
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// # let spool = std::env::temp_dir().join(format!("portcullis-doc-{}-writer-counters", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&spool);
    /// let writer = AuditWriter::open("sqlite://:memory:", WriterConfig::new(&spool)).await.unwrap();
    /// # let event = portcullis::audit::AuditEvent {
    /// #     id: portcullis::audit::uuid_v7(),
    /// #     ts_ms: 0,
    /// #     action: portcullis::audit::AuditAction::Forbidden,
    /// #     outcome: portcullis::audit::Outcome::Denied,
    /// #     principal: Some("alice".into()),
    /// #     client_ip: Some("203.0.113.7".into()),
    /// #     method: "POST".into(),
    /// #     route: "/api/admin/**".into(),
    /// #     path: "/api/admin/users".into(),
    /// #     status: 403,
    /// #     request_id: "req-1".into(),
    /// #     metadata: serde_json::json!({"code": "forbidden"}),
    /// # };
    /// writer.record(event);
    /// writer.flush().await.unwrap();
    /// let c = writer.counters();
    /// assert_eq!((c.enqueued, c.written, c.dropped, c.pending), (1, 1, 0, 0));
    /// writer.shutdown().await.unwrap();
    /// # std::fs::remove_dir_all(&spool).ok();
    /// # });
    /// ```
    pub fn counters(&self) -> AuditCounters {
        let c = &self.shared.counters;
        AuditCounters {
            enqueued: c.enqueued.load(Ordering::Relaxed),
            written: c.written.load(Ordering::Relaxed),
            spooled: c.spooled.load(Ordering::Relaxed),
            replayed: c.replayed.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            pending: self.shared.spool.pending(),
        }
    }

    /// Events recorded since the writer started, by action and outcome, whatever became of
    /// them (stored, spooled or dropped): the pairs seen at least once, in the order of
    /// [`AuditAction::ALL`] and [`Outcome::ALL`].
    ///
    /// ```
    /// use portcullis::audit::{AuditAction, AuditSink, AuditWriter, Outcome, WriterConfig};
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// # let spool = std::env::temp_dir().join(format!("portcullis-doc-{}-writer-by-action", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&spool);
    /// let writer = AuditWriter::open("sqlite://:memory:", WriterConfig::new(&spool)).await.unwrap();
    /// # let event = |action, outcome| portcullis::audit::AuditEvent {
    /// #     id: portcullis::audit::uuid_v7(),
    /// #     ts_ms: 0,
    /// #     action,
    /// #     outcome,
    /// #     principal: None,
    /// #     client_ip: Some("203.0.113.7".into()),
    /// #     method: "GET".into(),
    /// #     route: "/**".into(),
    /// #     path: "/".into(),
    /// #     status: 429,
    /// #     request_id: "req-1".into(),
    /// #     metadata: serde_json::json!({}),
    /// # };
    /// writer.record(event(AuditAction::RateLimitExceeded, Outcome::Denied));
    /// writer.record(event(AuditAction::RateLimitExceeded, Outcome::Denied));
    /// writer.record(event(AuditAction::CsrfValidationFailed, Outcome::ReportOnly));
    /// assert_eq!(writer.events_by_action(), [
    ///     (AuditAction::RateLimitExceeded, Outcome::Denied, 2),
    ///     (AuditAction::CsrfValidationFailed, Outcome::ReportOnly, 1),
    /// ]);
    /// writer.shutdown().await.unwrap();
    /// # std::fs::remove_dir_all(&spool).ok();
    /// # });
    /// ```
    pub fn events_by_action(&self) -> Vec<(AuditAction, Outcome, u64)> {
        let counts = &self.shared.counters.by_action;
        AuditAction::ALL
            .into_iter()
            .flat_map(|a| Outcome::ALL.into_iter().map(move |o| (a, o)))
            .filter_map(|(a, o)| {
                let n = counts[a as usize][o as usize].load(Ordering::Relaxed);
                (n > 0).then_some((a, o, n))
            })
            .collect()
    }

    /// The store events go to.
    ///
    /// ```
    /// use portcullis::audit::{AuditQuery, AuditSink, AuditWriter, WriterConfig};
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// # let spool = std::env::temp_dir().join(format!("portcullis-doc-{}-writer-store", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&spool);
    /// let writer = AuditWriter::open("sqlite://:memory:", WriterConfig::new(&spool)).await.unwrap();
    /// # let event = portcullis::audit::AuditEvent {
    /// #     id: portcullis::audit::uuid_v7(),
    /// #     ts_ms: 0,
    /// #     action: portcullis::audit::AuditAction::Forbidden,
    /// #     outcome: portcullis::audit::Outcome::Denied,
    /// #     principal: Some("alice".into()),
    /// #     client_ip: Some("203.0.113.7".into()),
    /// #     method: "POST".into(),
    /// #     route: "/api/admin/**".into(),
    /// #     path: "/api/admin/users".into(),
    /// #     status: 403,
    /// #     request_id: "req-1".into(),
    /// #     metadata: serde_json::json!({"code": "forbidden"}),
    /// # };
    /// writer.record(event);
    /// writer.flush().await.unwrap();
    /// let found = writer.store().query(&AuditQuery::new().user("alice")).await.unwrap();
    /// assert_eq!(found.len(), 1);
    /// writer.shutdown().await.unwrap();
    /// # std::fs::remove_dir_all(&spool).ok();
    /// # });
    /// ```
    pub fn store(&self) -> &Arc<dyn AuditStore> {
        &self.shared.store
    }

    /// Asks the store whether it answers now ([`AuditStore::ping`]), for readiness checks.
    /// Events waiting in the spool ([`AuditCounters::pending`]) show a store that refused
    /// writes even when it answers a ping.
    ///
    /// ```
    /// use portcullis::audit::{AuditWriter, WriterConfig};
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// # let spool = std::env::temp_dir().join(format!("portcullis-doc-{}-writer-ping", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&spool);
    /// let writer = AuditWriter::open("sqlite://:memory:", WriterConfig::new(&spool)).await.unwrap();
    /// assert!(writer.ping().await.is_ok());
    /// assert_eq!(writer.counters().pending, 0);
    /// writer.shutdown().await.unwrap();
    /// # std::fs::remove_dir_all(&spool).ok();
    /// # });
    /// ```
    pub async fn ping(&self) -> Result<(), AuditError> {
        self.shared.store.ping().await
    }

    /// Writes everything recorded so far, then tries to replay the spool (whatever the
    /// back-off). `Ok` when every event is in the store; [`AuditError::Pending`] when some
    /// wait in the spool (they are safe, and replayed when the store answers).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use portcullis::auth::BoxFuture;
    /// use portcullis::audit::{AuditError, AuditEvent, AuditSink, AuditStore, AuditWriter, WriterConfig};
    /// /// A store that is down.
    /// struct Down;
    /// impl AuditStore for Down {
    ///     fn describe(&self) -> String {
    ///         "down".into()
    ///     }
    ///     fn write<'a>(&'a self, _: &'a [AuditEvent]) -> BoxFuture<'a, Result<(), AuditError>> {
    ///         Box::pin(async { Err(AuditError::Unavailable("connection refused".into())) })
    ///     }
    /// }
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// # let spool = std::env::temp_dir().join(format!("portcullis-doc-{}-writer-flush", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&spool);
    /// let writer = AuditWriter::start(Arc::new(Down), WriterConfig::new(&spool)).unwrap();
    /// # let event = portcullis::audit::AuditEvent {
    /// #     id: portcullis::audit::uuid_v7(),
    /// #     ts_ms: 0,
    /// #     action: portcullis::audit::AuditAction::Forbidden,
    /// #     outcome: portcullis::audit::Outcome::Denied,
    /// #     principal: Some("alice".into()),
    /// #     client_ip: Some("203.0.113.7".into()),
    /// #     method: "POST".into(),
    /// #     route: "/api/admin/**".into(),
    /// #     path: "/api/admin/users".into(),
    /// #     status: 403,
    /// #     request_id: "req-1".into(),
    /// #     metadata: serde_json::json!({"code": "forbidden"}),
    /// # };
    /// writer.record(event);
    /// // The event is safe in the spool, not yet in the store.
    /// assert!(matches!(writer.flush().await, Err(AuditError::Pending { spooled: 1, .. })));
    /// # std::fs::remove_dir_all(&spool).ok();
    /// # });
    /// ```
    pub async fn flush(&self) -> Result<(), AuditError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Flush(reply))
            .await
            .map_err(|_| AuditError::Closed)?;
        rx.await.map_err(|_| AuditError::Closed)?
    }

    /// Flushes, then stops the background tasks. Later `record`s go to the spool, for the
    /// next writer to replay.
    ///
    /// ```
    /// use portcullis::audit::{AuditError, AuditSink, AuditWriter, WriterConfig};
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// # let spool = std::env::temp_dir().join(format!("portcullis-doc-{}-writer-shutdown", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&spool);
    /// let writer = AuditWriter::open("sqlite://:memory:", WriterConfig::new(&spool)).await.unwrap();
    /// writer.shutdown().await.unwrap();
    /// assert_eq!(writer.flush().await, Err(AuditError::Closed));
    /// # let event = portcullis::audit::AuditEvent {
    /// #     id: portcullis::audit::uuid_v7(),
    /// #     ts_ms: 0,
    /// #     action: portcullis::audit::AuditAction::Forbidden,
    /// #     outcome: portcullis::audit::Outcome::Denied,
    /// #     principal: Some("alice".into()),
    /// #     client_ip: Some("203.0.113.7".into()),
    /// #     method: "POST".into(),
    /// #     route: "/api/admin/**".into(),
    /// #     path: "/api/admin/users".into(),
    /// #     status: 403,
    /// #     request_id: "req-1".into(),
    /// #     metadata: serde_json::json!({"code": "forbidden"}),
    /// # };
    /// writer.record(event); // kept in the spool for the next writer
    /// assert_eq!(writer.counters().spooled, 1);
    /// # std::fs::remove_dir_all(&spool).ok();
    /// # });
    /// ```
    pub async fn shutdown(&self) -> Result<(), AuditError> {
        if let Some(h) = self.retention.as_ref() {
            h.abort();
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Shutdown(reply))
            .await
            .map_err(|_| AuditError::Closed)?;
        rx.await.map_err(|_| AuditError::Closed)?
    }

    /// Deletes events older than the configured retention now (in batches); returns how many.
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::audit::{AuditQuery, AuditSink, AuditWriter, WriterConfig, now_ms};
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// # let spool = std::env::temp_dir().join(format!("portcullis-doc-{}-writer-retention", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&spool);
    /// let config = WriterConfig::new(&spool).retention(Duration::from_secs(30 * 86_400));
    /// let writer = AuditWriter::open("sqlite://:memory:", config).await.unwrap();
    /// # let old = portcullis::audit::AuditEvent {
    /// #     id: portcullis::audit::uuid_v7(),
    /// #     ts_ms: 1_000,
    /// #     action: portcullis::audit::AuditAction::Forbidden,
    /// #     outcome: portcullis::audit::Outcome::Denied,
    /// #     principal: Some("alice".into()),
    /// #     client_ip: Some("203.0.113.7".into()),
    /// #     method: "POST".into(),
    /// #     route: "/api/admin/**".into(),
    /// #     path: "/api/admin/users".into(),
    /// #     status: 403,
    /// #     request_id: "req-1".into(),
    /// #     metadata: serde_json::json!({"code": "forbidden"}),
    /// # };
    /// # let new = portcullis::audit::AuditEvent {
    /// #     id: portcullis::audit::uuid_v7(),
    /// #     ts_ms: now_ms(),
    /// #     action: portcullis::audit::AuditAction::Forbidden,
    /// #     outcome: portcullis::audit::Outcome::Denied,
    /// #     principal: Some("alice".into()),
    /// #     client_ip: Some("203.0.113.7".into()),
    /// #     method: "POST".into(),
    /// #     route: "/api/admin/**".into(),
    /// #     path: "/api/admin/users".into(),
    /// #     status: 403,
    /// #     request_id: "req-1".into(),
    /// #     metadata: serde_json::json!({"code": "forbidden"}),
    /// # };
    /// writer.record(old);
    /// writer.record(new);
    /// writer.flush().await.unwrap();
    /// assert_eq!(writer.apply_retention().await.unwrap(), 1);
    /// assert_eq!(writer.store().query(&AuditQuery::new()).await.unwrap().len(), 1);
    /// writer.shutdown().await.unwrap();
    /// # std::fs::remove_dir_all(&spool).ok();
    /// # });
    /// ```
    pub async fn apply_retention(&self) -> Result<u64, AuditError> {
        match self.shared.config.retention {
            Some(keep) => apply_retention(&self.shared, keep).await,
            None => Ok(0),
        }
    }
}

impl AuditSink for AuditWriter {
    fn record(&self, event: AuditEvent) {
        let c = &self.shared.counters;
        c.by_action[event.action as usize][event.outcome as usize].fetch_add(1, Ordering::Relaxed);
        let Err(full) = self.tx.try_send(Msg::Event(event)) else {
            c.enqueued.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Msg::Event(mut e) = full.into_inner() else {
            return;
        };
        // Over capacity (or shut down): one buffered append, fsync'd by the writer's next tick.
        self.shared.redactor.redact_event(&mut e);
        match self.shared.spool.append(std::slice::from_ref(&e), false) {
            Ok(()) => {
                c.spooled.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => {
                c.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    target: "portcullis::audit",
                    event_id = %e.id,
                    "audit event dropped: queue full and spool failed: {err}"
                );
            }
        }
    }
}

async fn apply_retention(s: &Shared, keep: Duration) -> Result<u64, AuditError> {
    let cutoff = super::now_ms().saturating_sub(keep.as_millis() as u64);
    let batch = s.config.retention_batch.max(1);
    let mut total = 0;
    loop {
        let n = s.store.delete_older_than(cutoff, batch).await?;
        total += n;
        if n < u64::from(batch) {
            return Ok(total);
        }
        // Let writes in between.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The background task's state.
struct Task {
    s: Arc<Shared>,
    batch: Vec<AuditEvent>,
    batch_started: Instant,
    /// The store failed and the spool holds refused batches: new batches queue behind them.
    degraded: bool,
    next_retry: Instant,
    backoff: Duration,
    last_error: String,
    /// Events of the current replay file already stored (skipped if a replay resumes).
    replay_done: u64,
}

impl Task {
    fn new(s: Arc<Shared>) -> Task {
        let backoff = s.config.retry_min;
        Task {
            s,
            batch: Vec::new(),
            batch_started: Instant::now(),
            // A leftover spool is replayed before anything else.
            degraded: true,
            next_retry: Instant::now(),
            backoff,
            last_error: String::new(),
            replay_done: 0,
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let cap = self.s.config.batch_size.max(1);
        let mut msgs = Vec::with_capacity(cap);
        self.replay().await;
        loop {
            let deadline = if !self.batch.is_empty() {
                Some(self.batch_started + self.s.config.batch_delay)
            } else if self.s.spool.pending() > 0 || self.degraded {
                Some(
                    self.next_retry
                        .max(Instant::now() + self.s.config.batch_delay),
                )
            } else {
                None
            };
            let got = match deadline {
                Some(d) => tokio::time::timeout_at(d, rx.recv_many(&mut msgs, cap))
                    .await
                    .ok(),
                None => Some(rx.recv_many(&mut msgs, cap).await),
            };
            match got {
                Some(0) => {
                    // Every writer handle is gone: store what is left and stop.
                    let _ = self.drain().await;
                    return;
                }
                Some(_) => {
                    for m in msgs.drain(..) {
                        match m {
                            Msg::Event(mut e) => {
                                self.s.redactor.redact_event(&mut e);
                                if self.batch.is_empty() {
                                    self.batch_started = Instant::now();
                                }
                                self.batch.push(e);
                                if self.batch.len() >= cap {
                                    self.commit().await;
                                }
                            }
                            Msg::Flush(reply) => {
                                let _ = reply.send(self.drain().await);
                            }
                            Msg::Shutdown(reply) => {
                                let _ = reply.send(self.drain().await);
                                return;
                            }
                        }
                    }
                }
                None => {
                    let now = Instant::now();
                    if !self.batch.is_empty()
                        && now >= self.batch_started + self.s.config.batch_delay
                    {
                        self.commit().await;
                    } else if (self.s.spool.pending() > 0 || self.degraded)
                        && now >= self.next_retry
                    {
                        self.replay().await;
                    }
                }
            }
            // Batched fsync of queue-overflow appends.
            if self.s.spool.is_dirty() {
                let spool = self.s.spool.clone();
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || spool.sync()).await {
                    tracing::error!(target: "portcullis::audit", "spool fsync: {e}");
                }
            }
        }
    }

    /// Flush: the batch, the spool (ignoring back-off), an fsync; the verdict.
    async fn drain(&mut self) -> Result<(), AuditError> {
        self.commit().await;
        if self.s.spool.pending() > 0 || self.degraded {
            self.next_retry = Instant::now();
            self.replay().await;
        }
        let spool = self.s.spool.clone();
        let _ = tokio::task::spawn_blocking(move || spool.sync()).await;
        match self.s.spool.pending() {
            0 => Ok(()),
            n => Err(AuditError::Pending {
                spooled: n,
                last_error: self.last_error.clone(),
            }),
        }
    }

    /// Writes the current batch, or spools it while the store is down.
    async fn commit(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        if self.degraded && Instant::now() >= self.next_retry {
            self.replay().await;
        }
        let batch = std::mem::take(&mut self.batch);
        if self.degraded {
            self.spool(batch).await;
            return;
        }
        match self.write(&batch).await {
            Ok(()) => {
                self.s
                    .counters
                    .written
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                // Queue overflow may have spooled events meanwhile.
                if self.s.spool.pending() > 0 {
                    self.replay().await;
                }
            }
            Err(e) => {
                self.failed(e);
                self.spool(batch).await;
            }
        }
    }

    async fn write(&self, batch: &[AuditEvent]) -> Result<(), AuditError> {
        match tokio::time::timeout(self.s.config.write_timeout, self.s.store.write(batch)).await {
            Ok(r) => r,
            Err(_) => Err(AuditError::unavailable("write timed out")),
        }
    }

    fn failed(&mut self, e: AuditError) {
        if !self.degraded || self.last_error.is_empty() {
            tracing::warn!(
                target: "portcullis::audit",
                "{} failed, spooling audit events: {e}",
                self.s.store.describe()
            );
        }
        self.last_error = e.to_string();
        self.degraded = true;
        self.next_retry = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(self.s.config.retry_max);
    }

    /// Appends a refused batch to the spool and fsyncs it.
    async fn spool(&mut self, batch: Vec<AuditEvent>) {
        let n = batch.len() as u64;
        let spool = self.s.spool.clone();
        let r = tokio::task::spawn_blocking(move || {
            let r = spool.append(&batch, true);
            (r, batch)
        })
        .await;
        let c = &self.s.counters;
        match r {
            Ok((Ok(()), _)) => {
                c.spooled.fetch_add(n, Ordering::Relaxed);
            }
            Ok((Err(e), batch)) => {
                c.dropped.fetch_add(n, Ordering::Relaxed);
                tracing::error!(
                    target: "portcullis::audit",
                    first_id = %batch.first().map_or("", |e| e.id.as_str()),
                    "{n} audit events dropped: store and spool both failed: {e}"
                );
            }
            Err(e) => {
                c.dropped.fetch_add(n, Ordering::Relaxed);
                tracing::error!(target: "portcullis::audit", "{n} audit events dropped: {e}");
            }
        }
    }

    /// Replays the spool into the store, oldest first. Leaves `degraded` false on success.
    async fn replay(&mut self) {
        // A few rounds: overflow appends may arrive while a file is replayed.
        for _ in 0..4 {
            let spool = self.s.spool.clone();
            let taken = tokio::task::spawn_blocking(move || spool.take_for_replay()).await;
            let path = match taken {
                Ok(Ok(Some(p))) => p,
                Ok(Ok(None)) => {
                    self.recovered();
                    return;
                }
                Ok(Err(e)) => {
                    self.failed(AuditError::unavailable(format!("spool: {e}")));
                    return;
                }
                Err(e) => {
                    self.failed(AuditError::unavailable(format!("spool task: {e}")));
                    return;
                }
            };
            if let Err(e) = self.replay_file(path).await {
                self.failed(e);
                return;
            }
        }
        if self.s.spool.pending() == 0 {
            self.recovered();
        }
    }

    fn recovered(&mut self) {
        if self.degraded && !self.last_error.is_empty() {
            tracing::info!(
                target: "portcullis::audit",
                "{} is back; the audit spool is replayed",
                self.s.store.describe()
            );
        }
        self.degraded = false;
        self.backoff = self.s.config.retry_min;
        self.last_error.clear();
    }

    async fn replay_file(&mut self, path: PathBuf) -> Result<(), AuditError> {
        let batch = self.s.config.batch_size;
        let skip = self.replay_done;
        let p = path.clone();
        let mut reader = tokio::task::spawn_blocking(move || Spool::read(&p, skip, batch))
            .await
            .map_err(|e| AuditError::unavailable(format!("spool task: {e}")))?
            .map_err(|e| AuditError::unavailable(format!("spool read: {e}")))?;
        let mut lines = skip;
        loop {
            let (r, events, read) = tokio::task::spawn_blocking(move || {
                let mut read = 0;
                let events = reader.next_batch(&mut read);
                (reader, events, read)
            })
            .await
            .map_err(|e| AuditError::unavailable(format!("spool task: {e}")))?;
            reader = r;
            let events = events.map_err(|e| AuditError::unavailable(format!("spool read: {e}")))?;
            if events.is_empty() && read == 0 {
                break;
            }
            if !events.is_empty() {
                self.write(&events).await?;
            }
            lines += read;
            self.replay_done = lines;
            self.s
                .counters
                .replayed
                .fetch_add(events.len() as u64, Ordering::Relaxed);
        }
        let spool = self.s.spool.clone();
        tokio::task::spawn_blocking(move || spool.finish_replay(&path, lines))
            .await
            .map_err(|e| AuditError::unavailable(format!("spool task: {e}")))?
            .map_err(|e| AuditError::unavailable(format!("spool remove: {e}")))?;
        self.replay_done = 0;
        Ok(())
    }
}

//! The storage side of the audit log: one async trait over every store, and the URL that
//! picks one.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use super::AuditEvent;
use super::query::{AuditQuery, TailCursor};
use super::summary::{AuditSummary, FOLD_CAP, SummaryQuery};
#[cfg(any(feature = "sqlite", feature = "postgres"))]
use super::{AuditAction, Outcome};
use crate::auth::BoxFuture;

/// Why an audit store or the writer failed.
///
/// ```
/// use portcullis::audit::AuditError;
/// let e = AuditError::Pending { spooled: 3, last_error: "timeout".into() };
/// assert_eq!(e.to_string(), "3 audit events wait in the spool (store: timeout)");
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditError {
    /// The storage URL or an option is wrong; retrying will not help.
    Config(String),
    /// The store did not take the batch (database down, disk full, timeout); worth a retry.
    Unavailable(String),
    /// The store cannot do this (querying `stdout`, for instance).
    Unsupported(&'static str),
    /// Events wait in the spool because the store is down: they are safe, not yet stored.
    Pending {
        /// Events in the spool.
        spooled: u64,
        /// The store's last error.
        last_error: String,
    },
    /// The writer has shut down.
    Closed,
}

impl AuditError {
    pub(crate) fn unavailable(what: impl fmt::Display) -> Self {
        AuditError::Unavailable(what.to_string())
    }
}

impl fmt::Display for AuditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuditError::Config(m) => write!(f, "audit store configuration: {m}"),
            AuditError::Unavailable(m) => write!(f, "audit store unavailable: {m}"),
            AuditError::Unsupported(m) => write!(f, "not supported by this audit store: {m}"),
            AuditError::Pending {
                spooled,
                last_error,
            } => write!(
                f,
                "{spooled} audit events wait in the spool (store: {last_error})"
            ),
            AuditError::Closed => f.write_str("the audit writer has shut down"),
        }
    }
}

impl std::error::Error for AuditError {}

/// A place events are stored: SQLite, PostgreSQL, a JSON-lines file, standard output.
///
/// `write` stores one batch, all or nothing as far as the store allows, and ignores events
/// whose id is already stored (so replays are idempotent). The writer calls it from one task
/// at a time.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use portcullis::auth::BoxFuture;
/// use portcullis::audit::{AuditError, AuditEvent, AuditStore};
/// /// Keeps the ids only.
/// #[derive(Default)]
/// struct Ids(Mutex<Vec<String>>);
/// impl AuditStore for Ids {
///     fn describe(&self) -> String {
///         "ids".into()
///     }
///     fn write<'a>(&'a self, batch: &'a [AuditEvent]) -> BoxFuture<'a, Result<(), AuditError>> {
///         self.0.lock().unwrap().extend(batch.iter().map(|e| e.id.clone()));
///         Box::pin(async { Ok(()) })
///     }
/// }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = Ids::default();
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
/// store.write(&[event]).await.unwrap();
/// assert_eq!(store.0.lock().unwrap().len(), 1);
/// // The defaults: no retention, no queries.
/// assert_eq!(store.delete_older_than(u64::MAX, 100).await, Ok(0));
/// assert!(store.query(&portcullis::audit::AuditQuery::new()).await.is_err());
/// # });
/// ```
pub trait AuditStore: Send + Sync + 'static {
    /// A short description for logs, without credentials (`sqlite:/var/lib/audit.db`).
    fn describe(&self) -> String;

    /// Stores a batch.
    fn write<'a>(&'a self, batch: &'a [AuditEvent]) -> BoxFuture<'a, Result<(), AuditError>>;

    /// Deletes at most `limit` events older than `cutoff_ms`; returns how many went. Stores
    /// without retention (files, stdout) delete nothing.
    fn delete_older_than(
        &self,
        cutoff_ms: u64,
        limit: u32,
    ) -> BoxFuture<'_, Result<u64, AuditError>> {
        let _ = (cutoff_ms, limit);
        Box::pin(async { Ok(0) })
    }

    /// Events matching `query`, oldest first (the newest `limit` of them).
    fn query<'a>(
        &'a self,
        query: &'a AuditQuery,
    ) -> BoxFuture<'a, Result<Vec<AuditEvent>, AuditError>> {
        let _ = query;
        Box::pin(async { Err(AuditError::Unsupported("query")) })
    }

    /// Events stored after `cursor` (in storage order) and the cursor to continue from;
    /// [`TailCursor::Start`] means "from now on" and returns no events.
    fn tail<'a>(
        &'a self,
        cursor: &'a TailCursor,
        limit: u32,
    ) -> BoxFuture<'a, Result<(Vec<AuditEvent>, TailCursor), AuditError>> {
        let _ = (cursor, limit);
        Box::pin(async { Err(AuditError::Unsupported("tail")) })
    }

    /// Counts over the window of `q` ([`AuditSummary`]). The database stores count in SQL
    /// and the JSON-lines store folds its files; this default folds what [`AuditStore::query`]
    /// returns for the window, at most [`FOLD_CAP`] events (the newest), and sets
    /// [`AuditSummary::truncated`] when it got that many. A store that cannot `query`
    /// returns that error.
    ///
    /// ```
    /// use portcullis::audit::{AuditError, AuditStore, SummaryQuery, jsonl::StdoutStore};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let q = SummaryQuery::new(0, 60_000);
    /// assert_eq!(StdoutStore.summary(&q).await, Err(AuditError::Unsupported("query")));
    /// # });
    /// ```
    fn summary<'a>(
        &'a self,
        q: &'a SummaryQuery,
    ) -> BoxFuture<'a, Result<AuditSummary, AuditError>> {
        Box::pin(super::summary::fold_query(self, q, FOLD_CAP))
    }

    /// Whether the store answers now, for readiness checks: a trivial round trip on the
    /// connection writes use (PostgreSQL `SELECT 1`, SQLite taking its write lock). Default:
    /// `Ok` (files and stdout have nothing to ask; their failures show as spooled events).
    ///
    /// ```
    /// use portcullis::audit::{AuditStore, StoreOptions, open_store};
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let store = open_store("sqlite://:memory:", &StoreOptions::default()).await.unwrap();
    /// assert!(store.ping().await.is_ok());
    /// # });
    /// ```
    fn ping(&self) -> BoxFuture<'_, Result<(), AuditError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Options that do not fit in the storage URL.
///
/// ```
/// use portcullis::audit::{AuditStore, StoreOptions, open_store};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let options = StoreOptions {
///     postgres_password: std::env::var("AUDIT_DB_PASSWORD").ok(),
///     jsonl_keep: Some(10),
///     ..StoreOptions::default()
/// };
/// assert!(!format!("{options:?}").contains("AUDIT_DB_PASSWORD"));
/// let store = open_store("stdout", &options).await.unwrap();
/// assert_eq!(store.describe(), "stdout");
/// # });
/// ```
#[derive(Clone, Default)]
pub struct StoreOptions {
    /// The PostgreSQL password (from `postgres_password_env`; never in the URL of a file).
    pub postgres_password: Option<String>,
    /// PEM CA certificates that verify the PostgreSQL server with `sslmode=require`, instead
    /// of the system's bundle.
    pub postgres_ca_file: Option<PathBuf>,
    /// JSON lines: rotate when the file reaches this many bytes (default 64 MiB).
    pub jsonl_max_bytes: Option<u64>,
    /// JSON lines: how many rotated files to keep, `PATH.1` … `PATH.N` (default 5).
    pub jsonl_keep: Option<u32>,
}

impl fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreOptions")
            .field(
                "postgres_password",
                &self.postgres_password.as_ref().map(|_| "[redacted]"),
            )
            .field("postgres_ca_file", &self.postgres_ca_file)
            .field("jsonl_max_bytes", &self.jsonl_max_bytes)
            .field("jsonl_keep", &self.jsonl_keep)
            .finish()
    }
}

/// Opens the store a storage URL names: `sqlite://PATH`, `postgres://…` (or `postgresql://`),
/// `jsonl://PATH` or `stdout`.
///
/// SQLite and JSON-lines files are created (and migrated) here; PostgreSQL connects lazily, so a
/// gateway starts while its database is down, and its events wait in the spool.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use portcullis::audit::{open_store, StoreOptions};
/// assert!(open_store("mysql://db", &StoreOptions::default()).await.is_err());
/// assert!(open_store("stdout", &StoreOptions::default()).await.is_ok());
/// # });
/// ```
pub async fn open_store(
    url: &str,
    options: &StoreOptions,
) -> Result<Arc<dyn AuditStore>, AuditError> {
    if url == "stdout" {
        return Ok(Arc::new(super::jsonl::StdoutStore));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(unknown_scheme(url));
    };
    let file = || -> Result<PathBuf, AuditError> {
        if rest.is_empty() {
            Err(AuditError::Config(format!("{url:?} names no file")))
        } else {
            Ok(PathBuf::from(rest))
        }
    };
    match scheme {
        #[cfg(feature = "sqlite")]
        "sqlite" => {
            let path = file()?;
            let store =
                tokio::task::spawn_blocking(move || super::sqlite::SqliteAuditStore::open(path))
                    .await
                    .map_err(|e| AuditError::unavailable(format!("open task: {e}")))??;
            Ok(Arc::new(store))
        }
        "jsonl" => {
            let mut store = super::jsonl::JsonlStore::open(file()?)?;
            if let Some(max) = options.jsonl_max_bytes {
                store = store.max_bytes(max);
            }
            if let Some(keep) = options.jsonl_keep {
                store = store.keep(keep);
            }
            Ok(Arc::new(store))
        }
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => {
            Ok(Arc::new(super::postgres::PostgresAuditStore::with_ca_file(
                url,
                options.postgres_password.as_deref(),
                options.postgres_ca_file.as_deref(),
            )?))
        }
        _ => Err(unknown_scheme(url)),
    }
}

fn unknown_scheme(url: &str) -> AuditError {
    AuditError::Config(format!(
        "{url:?}: expected sqlite://PATH, postgres://…, jsonl://PATH or stdout{}",
        if cfg!(all(feature = "sqlite", feature = "postgres")) {
            ""
        } else {
            " (some stores are disabled by crate features)"
        }
    ))
}

/// An event from stored columns; an action or outcome this version does not know is kept in
/// the metadata (`stored_action`, `stored_outcome`) rather than failing the whole query.
#[allow(clippy::too_many_arguments)]
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn build_event(
    id: String,
    ts_ms: u64,
    action: &str,
    outcome: &str,
    principal: Option<String>,
    client_ip: Option<String>,
    method: String,
    route: String,
    path: String,
    status: u16,
    request_id: String,
    metadata: &str,
) -> AuditEvent {
    let mut metadata: serde_json::Value =
        serde_json::from_str(metadata).unwrap_or_else(|_| serde_json::json!({}));
    let action = AuditAction::from_name(action).unwrap_or_else(|| {
        metadata["stored_action"] = action.into();
        AuditAction::SecurityEvent
    });
    let outcome = Outcome::from_name(outcome).unwrap_or_else(|| {
        metadata["stored_outcome"] = outcome.into();
        Outcome::Denied
    });
    AuditEvent {
        id,
        ts_ms,
        action,
        outcome,
        principal,
        client_ip,
        method,
        route,
        path,
        status,
        request_id,
        metadata,
    }
}

//! `sqlite://PATH`: the embedded default.
//!
//! WAL mode, `synchronous = NORMAL`, migrations applied at open (tracked in
//! `portcullis_audit_migrations`, so the file can be shared with the rate-limit store). One
//! transaction per batch of `INSERT OR IGNORE` (duplicate ids are ignored, which makes spool
//! replays idempotent). The connection is used from `spawn_blocking`, never on a runtime
//! thread. `ts` is stored as Unix milliseconds (`INTEGER`), `metadata` as JSON text.
//!
//! ```no_run
//! # async fn run() -> Result<(), portcullis::audit::AuditError> {
//! use portcullis::audit::{AuditStore, AuditQuery, sqlite::SqliteAuditStore};
//! let store = SqliteAuditStore::open("audit.db")?;
//! let recent = store.query(&AuditQuery::new().action("forbidden").limit(20)).await?;
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, Row, params, params_from_iter};

use super::AuditEvent;
use super::query::{AuditQuery, Dialect, SqlParam, TailCursor};
use super::store::{AuditError, AuditStore};
use super::summary::{
    ActionCount, AuditSummary, NamedCount, Offender, SqlStatement, SummaryQuery, SummaryRows,
    SummarySql, count,
};
use crate::auth::BoxFuture;

/// Schema changes, applied in order; the index is the version.
const MIGRATIONS: &[&str] = &["CREATE TABLE audit_events (
         id TEXT PRIMARY KEY,
         ts INTEGER NOT NULL,
         action TEXT NOT NULL,
         outcome TEXT NOT NULL,
         principal TEXT,
         client_ip TEXT,
         method TEXT NOT NULL,
         route TEXT NOT NULL,
         path TEXT NOT NULL,
         status INTEGER NOT NULL,
         request_id TEXT NOT NULL,
         metadata TEXT NOT NULL DEFAULT '{}'
     );
     CREATE INDEX audit_events_ts ON audit_events (ts);
     CREATE INDEX audit_events_action ON audit_events (action, ts);
     CREATE INDEX audit_events_principal ON audit_events (principal, ts);
     CREATE INDEX audit_events_client_ip ON audit_events (client_ip, ts);"];

const COLUMNS: &str = "id, ts, action, outcome, principal, client_ip, method, route, path, status, request_id, metadata";

/// The SQLite [`AuditStore`].
///
/// ```
/// use portcullis::audit::{AuditQuery, AuditStore, sqlite::SqliteAuditStore};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = SqliteAuditStore::open(":memory:").unwrap(); // a file path in production
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
/// // Writing the same event twice stores it once (spool replays are idempotent).
/// store.write(&[event.clone()]).await.unwrap();
/// store.write(&[event]).await.unwrap();
/// assert_eq!(store.query(&AuditQuery::new()).await.unwrap().len(), 1);
/// # });
/// ```
#[derive(Clone)]
pub struct SqliteAuditStore {
    conn: Arc<Mutex<Connection>>,
    /// A second, read-only connection for `query`, `summary` and `tail`, opened on first use:
    /// in WAL mode a read on it never waits for the writer, nor the writer for a long read (a
    /// dashboard counting a week). Unused for an in-memory database, which exists only on
    /// its one connection.
    reader: Arc<Mutex<Option<Connection>>>,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteAuditStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteAuditStore")
            .field("path", &self.path)
            .finish()
    }
}

fn err(path: &Path) -> impl Fn(rusqlite::Error) -> AuditError + '_ {
    move |e| AuditError::unavailable(format!("sqlite {}: {e}", path.display()))
}

impl SqliteAuditStore {
    /// Opens (or creates) the database at `path` and applies pending migrations. Blocking.
    ///
    /// ```
    /// use portcullis::audit::{AuditQuery, AuditStore, sqlite::SqliteAuditStore};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let store = SqliteAuditStore::open(":memory:").unwrap();
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
    /// let found = store.query(&AuditQuery::new().action("forbidden")).await.unwrap();
    /// assert_eq!(found[0].principal.as_deref(), Some("alice"));
    /// # });
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<Self, AuditError> {
        let path = path.as_ref().to_path_buf();
        let e = err(&path);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|x| AuditError::Config(format!("{}: {x}", dir.display())))?;
        }
        let mut conn = Connection::open(&path)
            .map_err(|x| AuditError::Config(format!("sqlite {}: {x}", path.display())))?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(&e)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(&e)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(&e)?;
        migrate(&mut conn).map_err(&e)?;
        drop(e);
        Ok(SqliteAuditStore {
            conn: Arc::new(Mutex::new(conn)),
            reader: Arc::new(Mutex::new(None)),
            path,
        })
    }

    /// The database file.
    ///
    /// ```
    /// use portcullis::audit::sqlite::SqliteAuditStore;
    /// let store = SqliteAuditStore::open(":memory:").unwrap();
    /// assert_eq!(store.path(), std::path::Path::new(":memory:"));
    /// ```
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the connection in `spawn_blocking`.
    fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, AuditError>> {
        let conn = self.conn.clone();
        let path = self.path.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
                f(&mut c).map_err(err(&path))
            })
            .await
            .map_err(|e| AuditError::unavailable(format!("sqlite task: {e}")))?
        })
    }
}

impl SqliteAuditStore {
    /// Runs the read `f` in `spawn_blocking` on the reader connection (see the field), or on
    /// the one connection of an in-memory database. A failed read closes the reader; the
    /// next one opens it again.
    fn reading<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, AuditError>> {
        // `:memory:` and `""` (a private temporary file) exist on their one connection.
        let name = self.path.as_os_str();
        if name.is_empty() || name == ":memory:" {
            return self.blocking(f);
        }
        let reader = self.reader.clone();
        let path = self.path.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut slot = reader.lock().unwrap_or_else(|p| p.into_inner());
                let conn = match slot.take() {
                    Some(c) => c,
                    None => open_reader(&path).map_err(err(&path))?,
                };
                let mut conn = conn;
                let out = f(&mut conn).map_err(err(&path));
                if out.is_ok() {
                    *slot = Some(conn);
                }
                out
            })
            .await
            .map_err(|e| AuditError::unavailable(format!("sqlite task: {e}")))?
        })
    }
}

/// A read-only connection to the database at `path`.
fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    use rusqlite::OpenFlags;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS portcullis_audit_migrations (
             version INTEGER PRIMARY KEY,
             applied_at INTEGER NOT NULL
         )",
    )?;
    let done: i64 = tx.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM portcullis_audit_migrations",
        [],
        |r| r.get(0),
    )?;
    for (i, m) in MIGRATIONS.iter().enumerate().skip(done as usize) {
        tx.execute_batch(m)?;
        tx.execute(
            "INSERT INTO portcullis_audit_migrations (version, applied_at) VALUES (?1, ?2)",
            params![i as i64 + 1, super::now_ms() as i64],
        )?;
    }
    tx.commit()
}

fn to_sql(p: &SqlParam) -> rusqlite::types::Value {
    match p {
        SqlParam::Int(i) => rusqlite::types::Value::Integer(*i),
        SqlParam::Text(t) => rusqlite::types::Value::Text(t.clone()),
    }
}

/// Runs `st` and maps each row.
fn rows<T>(
    c: &Connection,
    st: &SqlStatement,
    f: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    c.prepare_cached(&st.sql)?
        .query_map(params_from_iter(st.params.iter().map(to_sql)), f)?
        .collect()
}

/// `(name, count)` rows.
fn named(c: &Connection, st: &SqlStatement) -> rusqlite::Result<Vec<NamedCount>> {
    rows(c, st, |r| {
        Ok(NamedCount {
            name: r.get(0)?,
            count: count(r.get(1)?),
        })
    })
}

/// Every statement of a summary, in one read transaction: one consistent picture.
fn summary_rows(c: &mut Connection, sql: &SummarySql) -> rusqlite::Result<SummaryRows> {
    let tx = c.transaction()?;
    let by_action = rows(&tx, &sql.by_action, |r| {
        Ok(ActionCount {
            action: r.get(0)?,
            outcome: r.get(1)?,
            count: count(r.get(2)?),
        })
    })?;
    let offenders = rows(&tx, &sql.offenders, |r| {
        Ok(Offender {
            client_ip: r.get(0)?,
            denied: count(r.get(1)?),
            last_ms: count(r.get(2)?),
            actions: Vec::new(),
        })
    })?;
    let offender_actions = match sql.offender_actions(&offenders) {
        Some(st) => rows(&tx, &st, |r| Ok((r.get(0)?, r.get(1)?, count(r.get(2)?))))?,
        None => Vec::new(),
    };
    let denied_users = named(&tx, &sql.denied_users)?;
    let rate_limited_routes = named(&tx, &sql.rate_limited_routes)?;
    let denied_timeline = rows(&tx, &sql.denied_timeline, |r| {
        Ok((r.get(0)?, count(r.get(1)?)))
    })?;
    tx.commit()?;
    Ok(SummaryRows {
        by_action,
        offenders,
        offender_actions,
        denied_users,
        rate_limited_routes,
        denied_timeline,
    })
}

/// Reads `COLUMNS` starting at column `at`.
fn event_from_row(r: &Row<'_>, at: usize) -> rusqlite::Result<AuditEvent> {
    let action: String = r.get(at + 2)?;
    let outcome: String = r.get(at + 3)?;
    let metadata: String = r.get(at + 11)?;
    Ok(super::store::build_event(
        r.get(at)?,
        r.get::<_, i64>(at + 1)?.max(0) as u64,
        &action,
        &outcome,
        r.get(at + 4)?,
        r.get(at + 5)?,
        r.get(at + 6)?,
        r.get(at + 7)?,
        r.get(at + 8)?,
        r.get::<_, i64>(at + 9)?.clamp(0, 999) as u16,
        r.get(at + 10)?,
        &metadata,
    ))
}

impl AuditStore for SqliteAuditStore {
    /// Takes the write lock and lets it go: a file that became read-only or unusable shows.
    fn ping(&self) -> BoxFuture<'_, Result<(), AuditError>> {
        self.blocking(|c| c.execute_batch("BEGIN IMMEDIATE; ROLLBACK"))
    }

    fn describe(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }

    fn write<'a>(&'a self, batch: &'a [AuditEvent]) -> BoxFuture<'a, Result<(), AuditError>> {
        let batch = batch.to_vec();
        self.blocking(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            {
                let mut st = tx.prepare_cached(
                    "INSERT OR IGNORE INTO audit_events (id, ts, action, outcome, principal, \
                     client_ip, method, route, path, status, request_id, metadata) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                )?;
                for e in &batch {
                    st.execute(params![
                        e.id,
                        e.ts_ms as i64,
                        e.action.as_str(),
                        e.outcome.as_str(),
                        e.principal,
                        e.client_ip,
                        e.method,
                        e.route,
                        e.path,
                        e.status,
                        e.request_id,
                        e.metadata.to_string(),
                    ])?;
                }
            }
            tx.commit()
        })
    }

    fn delete_older_than(
        &self,
        cutoff_ms: u64,
        limit: u32,
    ) -> BoxFuture<'_, Result<u64, AuditError>> {
        self.blocking(move |c| {
            c.execute(
                "DELETE FROM audit_events WHERE rowid IN \
                 (SELECT rowid FROM audit_events WHERE ts < ?1 ORDER BY ts LIMIT ?2)",
                params![cutoff_ms.min(i64::MAX as u64) as i64, limit],
            )
            .map(|n| n as u64)
        })
    }

    fn query<'a>(
        &'a self,
        query: &'a AuditQuery,
    ) -> BoxFuture<'a, Result<Vec<AuditEvent>, AuditError>> {
        let f = query.sql_filter(Dialect::Sqlite);
        let limit = query.limit_or_default();
        self.reading(move |c| {
            let sql = format!(
                "SELECT {COLUMNS} FROM audit_events{} ORDER BY ts DESC, rowid DESC LIMIT {limit}",
                f.clause
            );
            let mut st = c.prepare(&sql)?;
            let mut rows: Vec<AuditEvent> = st
                .query_map(params_from_iter(f.params.iter().map(to_sql)), |r| {
                    event_from_row(r, 0)
                })?
                .collect::<rusqlite::Result<_>>()?;
            rows.reverse();
            Ok(rows)
        })
    }

    /// `GROUP BY` over the window (the `ts` index), in one read transaction; see
    /// [`AuditStore::summary`].
    fn summary<'a>(
        &'a self,
        q: &'a SummaryQuery,
    ) -> BoxFuture<'a, Result<AuditSummary, AuditError>> {
        let sql = SummarySql::new(q, Dialect::Sqlite);
        self.reading(move |c| summary_rows(c, &sql).map(|rows| sql.assemble(rows)))
    }

    fn tail<'a>(
        &'a self,
        cursor: &'a TailCursor,
        limit: u32,
    ) -> BoxFuture<'a, Result<(Vec<AuditEvent>, TailCursor), AuditError>> {
        let after = match cursor {
            TailCursor::Row(r) => Some(*r),
            _ => None,
        };
        self.reading(move |c| {
            let Some(after) = after else {
                let max: i64 = c.query_row(
                    "SELECT COALESCE(MAX(rowid), 0) FROM audit_events",
                    [],
                    |r| r.get(0),
                )?;
                return Ok((Vec::new(), TailCursor::Row(max)));
            };
            let mut st = c.prepare_cached(&format!(
                "SELECT rowid, {COLUMNS} FROM audit_events WHERE rowid > ?1 ORDER BY rowid LIMIT ?2"
            ))?;
            let mut last = after;
            let rows = st
                .query_map(params![after, limit], |r| {
                    Ok((r.get::<_, i64>(0)?, event_from_row(r, 1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let events = rows
                .into_iter()
                .map(|(rowid, e)| {
                    last = rowid;
                    e
                })
                .collect();
            Ok((events, TailCursor::Row(last)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditAction, Outcome, uuid_v7};

    fn event(ts_ms: u64) -> AuditEvent {
        AuditEvent {
            id: uuid_v7(),
            ts_ms,
            action: AuditAction::RateLimitExceeded,
            outcome: Outcome::Denied,
            principal: None,
            client_ip: Some("203.0.113.7".into()),
            method: "GET".into(),
            route: "/api/**".into(),
            path: "/api/x".into(),
            status: 429,
            request_id: "req".into(),
            metadata: serde_json::json!({}),
        }
    }

    fn temp_db(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-sqlite-reader-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("audit.db")
    }

    /// A long read (a dashboard counting a week) holds the reader, not the writer's
    /// connection: events are still stored meanwhile, and reads see what was written since
    /// the reader opened.
    // The reader's lock is held across the write on purpose: that is the long read.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test(flavor = "multi_thread")]
    async fn reads_do_not_hold_up_writes() {
        let path = temp_db("long-read");
        let store = SqliteAuditStore::open(&path).unwrap();
        store.write(&[event(1)]).await.unwrap();
        assert_eq!(store.query(&AuditQuery::new()).await.unwrap().len(), 1);
        {
            // The reader, busy in a read transaction.
            let mut slot = store.reader.lock().unwrap();
            let reader = slot.as_mut().expect("the first query opened the reader");
            let tx = reader.transaction().unwrap();
            let n: i64 = tx
                .query_row("SELECT count(*) FROM audit_events", [], |r| r.get(0))
                .unwrap();
            assert_eq!(n, 1);
            let write =
                tokio::time::timeout(Duration::from_secs(2), store.write(&[event(2), event(3)]))
                    .await;
            assert!(matches!(write, Ok(Ok(()))), "the write waited for the read");
            drop(tx);
        }
        let all = store.query(&AuditQuery::new()).await.unwrap();
        assert_eq!(all.iter().map(|e| e.ts_ms).collect::<Vec<_>>(), [1, 2, 3]);
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[tokio::test]
    async fn an_in_memory_database_is_read_on_its_one_connection() {
        let store = SqliteAuditStore::open(":memory:").unwrap();
        store.write(&[event(7)]).await.unwrap();
        assert_eq!(store.query(&AuditQuery::new()).await.unwrap().len(), 1);
        assert!(store.reader.lock().unwrap().is_none());
    }
}

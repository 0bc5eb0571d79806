//! `postgres://…`: a PostgreSQL server, for fleets of gateways and long retention.
//!
//! - Connects lazily and again whenever the connection is lost, so a gateway starts while its
//!   database is down (its events wait in the spool) and picks the database up when it comes
//!   back.
//! - Migrations run on each new connection, inside a transaction holding an advisory lock,
//!   tracked in `portcullis_audit_migrations`: several gateways may start at once.
//! - A batch is one statement, `INSERT … SELECT … FROM unnest($1, …, $12) ON CONFLICT (id) DO
//!   NOTHING`: twelve array parameters whatever the batch size, atomic, and idempotent.
//! - `id` is a `uuid`, `ts` a `timestamptz`, `metadata` a `jsonb`; `seq` (an identity column)
//!   orders rows for `audit tail`.
//! - Reads (`query`, `summary`, `tail`) go over a second connection, opened on the first
//!   read: a dashboard counting a week never queues the audit writer's inserts behind it (a
//!   connection runs one statement at a time). A summary runs in one read-only
//!   `REPEATABLE READ` transaction, so its counts are of one snapshot.
//! - TLS with `sslmode=require` in the URL (rustls): the server's certificate is verified
//!   against a CA file ([`PostgresAuditStore::with_ca_file`], the gateway's
//!   `postgres_ca_file`) or the system's CA bundle, and for the host the URL names, like
//!   libpq's `verify-full`. A connection that cannot be verified fails; it is never downgraded.
//!   Without `sslmode=require` the connection is plain TCP (or a Unix socket,
//!   `host=/run/postgresql`): there is no opportunistic, unverified TLS.
//!
//! ```no_run
//! # async fn run() -> Result<(), portcullis::audit::AuditError> {
//! use portcullis::audit::postgres::PostgresAuditStore;
//! let local = PostgresAuditStore::new("postgres://audit@127.0.0.1:5432/audit", Some("pw"))?;
//! let managed = PostgresAuditStore::with_ca_file(
//!     "postgres://audit@db.example.com/audit?sslmode=require",
//!     Some("pw"),
//!     Some(std::path::Path::new("/etc/portcullis/db-ca.pem")),
//! )?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};
use tokio_postgres::config::SslMode;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Config, GenericClient, IsolationLevel, NoTls, Row, Statement};

use super::AuditEvent;
use super::postgres_tls::RustlsMakeConnect;
use super::query::{AuditQuery, Dialect, SqlParam, TailCursor};
use super::store::{AuditError, AuditStore, build_event};
use super::summary::{
    ActionCount, AuditSummary, NamedCount, Offender, SqlStatement, SummaryQuery, SummaryRows,
    SummarySql, count,
};
use crate::auth::BoxFuture;

/// An arbitrary, fixed advisory-lock key for migrations.
const MIGRATION_LOCK: i64 = 0x706f_7274_6375_6c6c;

/// Schema changes, applied in order; the index is the version.
const MIGRATIONS: &[&str] = &["CREATE TABLE audit_events (
         seq bigint GENERATED ALWAYS AS IDENTITY,
         id uuid PRIMARY KEY,
         ts timestamptz NOT NULL,
         action text NOT NULL,
         outcome text NOT NULL,
         principal text,
         client_ip text,
         method text NOT NULL,
         route text NOT NULL,
         path text NOT NULL,
         status integer NOT NULL,
         request_id text NOT NULL,
         metadata jsonb NOT NULL DEFAULT '{}'
     );
     CREATE UNIQUE INDEX audit_events_seq ON audit_events (seq);
     CREATE INDEX audit_events_ts ON audit_events (ts);
     CREATE INDEX audit_events_action ON audit_events (action, ts);
     CREATE INDEX audit_events_principal ON audit_events (principal, ts);
     CREATE INDEX audit_events_client_ip ON audit_events (client_ip, ts);"];

const INSERT: &str = "INSERT INTO audit_events \
     (id, ts, action, outcome, principal, client_ip, method, route, path, status, request_id, metadata) \
     SELECT u.id::uuid, timestamptz 'epoch' + u.ts * interval '1 millisecond', u.action, u.outcome, \
            u.principal, u.client_ip, u.method, u.route, u.path, u.status, u.request_id, u.metadata::jsonb \
     FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], \
                 $7::text[], $8::text[], $9::text[], $10::int4[], $11::text[], $12::text[]) \
          AS u(id, ts, action, outcome, principal, client_ip, method, route, path, status, request_id, metadata) \
     ON CONFLICT (id) DO NOTHING";

const SELECT: &str = "SELECT seq, id::text, (extract(epoch FROM ts) * 1000)::bigint, action, outcome, \
     principal, client_ip, method, route, path, status, request_id, metadata::text FROM audit_events";

/// The PostgreSQL [`AuditStore`].
///
/// ```
/// use portcullis::audit::{AuditStore, postgres::PostgresAuditStore};
/// // Nothing connects yet: the store connects on its first write.
/// let store = PostgresAuditStore::new("postgres://audit@db.example.com/audit", None).unwrap();
/// assert!(store.describe().starts_with("postgres:audit@db.example.com"));
/// ```
pub struct PostgresAuditStore {
    config: Config,
    describe: String,
    /// Set with `sslmode=require`.
    tls: Option<RustlsMakeConnect>,
    /// The writes' connection (and readiness).
    conn: Mutex<Option<Connected>>,
    /// The reads' connection, held for the length of each read.
    reader: Mutex<Option<Client>>,
}

struct Connected {
    client: Arc<Client>,
    insert: Statement,
}

impl fmt::Debug for PostgresAuditStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresAuditStore")
            .field("target", &self.describe)
            .finish()
    }
}

fn pg_err(e: tokio_postgres::Error) -> AuditError {
    match e.as_db_error() {
        Some(db) => AuditError::unavailable(format!("postgres: {db}")),
        None => {
            let mut msg = format!("postgres: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            AuditError::unavailable(msg)
        }
    }
}

impl PostgresAuditStore {
    /// A store for `url` (a libpq-style URL or key=value string); `password` overrides one in
    /// the URL. Does not connect yet. With `sslmode=require` the server is verified against
    /// the system's CA bundle (see [`PostgresAuditStore::with_ca_file`]).
    ///
    /// ```
    /// use portcullis::audit::{AuditStore, postgres::PostgresAuditStore};
    /// let password = std::env::var("AUDIT_DB_PASSWORD").ok();
    /// let store = PostgresAuditStore::new("postgres://audit:test-only@db.example.com/audit", password.as_deref())?;
    /// assert!(!store.describe().contains("test-only")); // never the password
    /// assert!(PostgresAuditStore::new("postgres://db.example.com/audit?sslmode=bogus", None).is_err());
    /// # Ok::<(), portcullis::audit::AuditError>(())
    /// ```
    pub fn new(url: &str, password: Option<&str>) -> Result<Self, AuditError> {
        Self::with_ca_file(url, password, None)
    }

    /// Like [`PostgresAuditStore::new`], trusting the CA certificates in `ca_file` (PEM)
    /// instead of the system's bundle for `sslmode=require`. A CA file without
    /// `sslmode=require` is refused: it would suggest a TLS connection that is not made.
    ///
    /// ```
    /// use portcullis::audit::postgres::PostgresAuditStore;
    /// let err = PostgresAuditStore::with_ca_file(
    ///     "postgres://audit@db.example.com/audit",
    ///     None,
    ///     Some(std::path::Path::new("/etc/portcullis/db-ca.pem")),
    /// )
    /// .unwrap_err();
    /// assert!(err.to_string().contains("sslmode=require"));
    /// ```
    pub fn with_ca_file(
        url: &str,
        password: Option<&str>,
        ca_file: Option<&Path>,
    ) -> Result<Self, AuditError> {
        let mut config: Config = url
            .parse()
            .map_err(|e| AuditError::Config(format!("postgres URL: {e}")))?;
        let tls = match config.get_ssl_mode() {
            SslMode::Require => Some(RustlsMakeConnect::new(ca_file)?),
            _ if ca_file.is_some() => {
                return Err(AuditError::Config(
                    "a postgres CA file is only used with sslmode=require in the URL".into(),
                ));
            }
            _ => None,
        };
        if let Some(pw) = password {
            config.password(pw);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config.application_name("portcullis-audit");
        let hosts: Vec<String> = config
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .collect();
        let describe = format!(
            "postgres{}:{}@{}:{}/{}",
            if tls.is_some() { "+tls" } else { "" },
            config.get_user().unwrap_or(""),
            hosts.join(","),
            config
                .get_ports()
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(","),
            config.get_dbname().unwrap_or("")
        );
        Ok(PostgresAuditStore {
            config,
            describe,
            tls,
            conn: Mutex::new(None),
            reader: Mutex::new(None),
        })
    }

    /// The connection, opened (and migrated) if there is none or it was lost.
    async fn connected(&self) -> Result<(Arc<Client>, Statement), AuditError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref()
            && !c.client.is_closed()
        {
            return Ok((c.client.clone(), c.insert.clone()));
        }
        *slot = None;
        let client = self.open().await?;
        let insert = client.prepare(INSERT).await.map_err(pg_err)?;
        let client = Arc::new(client);
        *slot = Some(Connected {
            client: client.clone(),
            insert: insert.clone(),
        });
        Ok((client, insert))
    }

    /// A new connection, migrated. Its task ends when the server goes away; the next use
    /// reconnects.
    async fn open(&self) -> Result<Client, AuditError> {
        let mut client = match &self.tls {
            Some(tls) => {
                let (client, connection) =
                    self.config.connect(tls.clone()).await.map_err(pg_err)?;
                tokio::spawn(connection);
                client
            }
            None => {
                let (client, connection) = self.config.connect(NoTls).await.map_err(pg_err)?;
                tokio::spawn(connection);
                client
            }
        };
        migrate(&mut client).await.map_err(pg_err)?;
        Ok(client)
    }

    /// Forgets a connection that failed, so the next call reconnects.
    async fn reset_if_closed(&self, e: &tokio_postgres::Error) {
        if lost(e) {
            *self.conn.lock().await = None;
        }
    }

    /// The reads' connection, opened if there is none or it was lost (a closed client is
    /// replaced here), held until the guard drops: a summary's transaction needs it to itself.
    async fn reader(&self) -> Result<MappedMutexGuard<'_, Client>, AuditError> {
        let mut slot = self.reader.lock().await;
        if slot.as_ref().is_none_or(Client::is_closed) {
            *slot = None;
            *slot = Some(self.open().await?);
        }
        MutexGuard::try_map(slot, Option::as_mut)
            .map_err(|_| AuditError::unavailable("postgres: no read connection"))
    }

    /// Runs one read on the reads' connection.
    async fn select(&self, sql: &str, params: &[SqlParam]) -> Result<Vec<Row>, AuditError> {
        let client = self.reader().await?;
        select_on(&*client, sql, params).await.map_err(pg_err)
    }
}

/// Whether `e` says the connection is gone (rather than a statement failing on it).
fn lost(e: &tokio_postgres::Error) -> bool {
    e.is_closed() || e.as_db_error().is_none()
}

/// Runs `sql` with `params` bound on `client` (a connection or a transaction).
async fn select_on(
    client: &impl GenericClient,
    sql: &str,
    params: &[SqlParam],
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let owned: Vec<Box<dyn ToSql + Sync + Send>> = params
        .iter()
        .map(|p| -> Box<dyn ToSql + Sync + Send> {
            match p {
                SqlParam::Int(i) => Box::new(*i),
                SqlParam::Text(t) => Box::new(t.clone()),
            }
        })
        .collect();
    let refs: Vec<&(dyn ToSql + Sync)> =
        owned.iter().map(|b| &**b as &(dyn ToSql + Sync)).collect();
    client.query(sql, &refs).await
}

/// Runs `st` on `client` and maps each row.
async fn rows<T>(
    client: &impl GenericClient,
    st: &SqlStatement,
    f: impl FnMut(&Row) -> Result<T, tokio_postgres::Error>,
) -> Result<Vec<T>, tokio_postgres::Error> {
    select_on(client, &st.sql, &st.params)
        .await?
        .iter()
        .map(f)
        .collect()
}

/// `(name, count)` rows.
async fn named(
    client: &impl GenericClient,
    st: &SqlStatement,
) -> Result<Vec<NamedCount>, tokio_postgres::Error> {
    rows(client, st, |r| {
        Ok(NamedCount {
            name: r.try_get(0)?,
            count: count(r.try_get(1)?),
        })
    })
    .await
}

/// The summary's statements, in turn on `client`.
async fn summary_rows(
    client: &impl GenericClient,
    sql: &SummarySql,
) -> Result<SummaryRows, tokio_postgres::Error> {
    let by_action = rows(client, &sql.by_action, |r| {
        Ok(ActionCount {
            action: r.try_get(0)?,
            outcome: r.try_get(1)?,
            count: count(r.try_get(2)?),
        })
    })
    .await?;
    let offenders = rows(client, &sql.offenders, |r| {
        Ok(Offender {
            client_ip: r.try_get(0)?,
            denied: count(r.try_get(1)?),
            last_ms: count(r.try_get(2)?),
            actions: Vec::new(),
        })
    })
    .await?;
    let offender_actions = match sql.offender_actions(&offenders) {
        Some(st) => {
            rows(client, &st, |r| {
                Ok((r.try_get(0)?, r.try_get(1)?, count(r.try_get(2)?)))
            })
            .await?
        }
        None => Vec::new(),
    };
    Ok(SummaryRows {
        by_action,
        offenders,
        offender_actions,
        denied_users: named(client, &sql.denied_users).await?,
        rate_limited_routes: named(client, &sql.rate_limited_routes).await?,
        denied_timeline: rows(client, &sql.denied_timeline, |r| {
            Ok((r.try_get(0)?, count(r.try_get(1)?)))
        })
        .await?,
    })
}

async fn migrate(client: &mut Client) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS portcullis_audit_migrations (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let done: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM portcullis_audit_migrations",
            &[],
        )
        .await?
        .get(0);
    for (i, m) in MIGRATIONS.iter().enumerate().skip(done as usize) {
        tx.batch_execute(m).await?;
        tx.execute(
            "INSERT INTO portcullis_audit_migrations (version) VALUES ($1)",
            &[&(i as i32 + 1)],
        )
        .await?;
    }
    tx.commit().await
}

fn event_from_row(r: &Row) -> Result<AuditEvent, tokio_postgres::Error> {
    let metadata: String = r.try_get(12)?;
    Ok(build_event(
        r.try_get(1)?,
        r.try_get::<_, i64>(2)?.max(0) as u64,
        r.try_get(3)?,
        r.try_get(4)?,
        r.try_get(5)?,
        r.try_get(6)?,
        r.try_get(7)?,
        r.try_get(8)?,
        r.try_get(9)?,
        r.try_get::<_, i32>(10)?.clamp(0, 999) as u16,
        r.try_get(11)?,
        &metadata,
    ))
}

fn events(rows: &[Row]) -> Result<Vec<AuditEvent>, AuditError> {
    rows.iter()
        .map(|r| event_from_row(r).map_err(pg_err))
        .collect()
}

impl AuditStore for PostgresAuditStore {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    /// `SELECT 1` on the writes' connection (reconnecting, as a write would, when it is lost).
    fn ping(&self) -> BoxFuture<'_, Result<(), AuditError>> {
        Box::pin(async move {
            let (client, _) = self.connected().await?;
            match client.simple_query("SELECT 1").await {
                Ok(_) => Ok(()),
                Err(e) => {
                    self.reset_if_closed(&e).await;
                    Err(pg_err(e))
                }
            }
        })
    }

    fn write<'a>(&'a self, batch: &'a [AuditEvent]) -> BoxFuture<'a, Result<(), AuditError>> {
        Box::pin(async move {
            let (client, insert) = self.connected().await?;
            let n = batch.len();
            let mut id = Vec::with_capacity(n);
            let mut ts = Vec::with_capacity(n);
            let mut action = Vec::with_capacity(n);
            let mut outcome = Vec::with_capacity(n);
            let mut principal = Vec::with_capacity(n);
            let mut client_ip = Vec::with_capacity(n);
            let mut method = Vec::with_capacity(n);
            let mut route = Vec::with_capacity(n);
            let mut path = Vec::with_capacity(n);
            let mut status = Vec::with_capacity(n);
            let mut request_id = Vec::with_capacity(n);
            let mut metadata = Vec::with_capacity(n);
            for e in batch {
                id.push(e.id.as_str());
                ts.push(e.ts_ms.min(i64::MAX as u64) as i64);
                action.push(e.action.as_str());
                outcome.push(e.outcome.as_str());
                principal.push(e.principal.as_deref());
                client_ip.push(e.client_ip.as_deref());
                method.push(e.method.as_str());
                route.push(e.route.as_str());
                path.push(e.path.as_str());
                status.push(i32::from(e.status));
                request_id.push(e.request_id.as_str());
                metadata.push(e.metadata.to_string());
            }
            let r = client
                .execute(
                    &insert,
                    &[
                        &id,
                        &ts,
                        &action,
                        &outcome,
                        &principal,
                        &client_ip,
                        &method,
                        &route,
                        &path,
                        &status,
                        &request_id,
                        &metadata,
                    ],
                )
                .await;
            match r {
                Ok(_) => Ok(()),
                Err(e) => {
                    self.reset_if_closed(&e).await;
                    Err(pg_err(e))
                }
            }
        })
    }

    fn delete_older_than(
        &self,
        cutoff_ms: u64,
        limit: u32,
    ) -> BoxFuture<'_, Result<u64, AuditError>> {
        Box::pin(async move {
            let (client, _) = self.connected().await?;
            let r = client
                .execute(
                    "DELETE FROM audit_events WHERE id IN (SELECT id FROM audit_events \
                     WHERE ts < timestamptz 'epoch' + $1::bigint * interval '1 millisecond' \
                     ORDER BY ts LIMIT $2::bigint)",
                    &[&(cutoff_ms.min(i64::MAX as u64) as i64), &i64::from(limit)],
                )
                .await;
            match r {
                Ok(n) => Ok(n),
                Err(e) => {
                    self.reset_if_closed(&e).await;
                    Err(pg_err(e))
                }
            }
        })
    }

    fn query<'a>(
        &'a self,
        query: &'a AuditQuery,
    ) -> BoxFuture<'a, Result<Vec<AuditEvent>, AuditError>> {
        Box::pin(async move {
            let f = query.sql_filter(Dialect::Postgres);
            let sql = format!(
                "{SELECT}{} ORDER BY ts DESC, seq DESC LIMIT {}",
                f.clause,
                query.limit_or_default()
            );
            let rows = self.select(&sql, &f.params).await?;
            let mut out = events(&rows)?;
            out.reverse();
            Ok(out)
        })
    }

    /// `GROUP BY` over the window (the `ts` index); see [`AuditStore::summary`]. The
    /// statements run in one read-only `REPEATABLE READ` transaction on the reads'
    /// connection: one snapshot, whatever is written meanwhile.
    fn summary<'a>(
        &'a self,
        q: &'a SummaryQuery,
    ) -> BoxFuture<'a, Result<AuditSummary, AuditError>> {
        Box::pin(async move {
            let sql = SummarySql::new(q, Dialect::Postgres);
            let mut client = self.reader().await?;
            let tx = client
                .build_transaction()
                .isolation_level(IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await
                .map_err(pg_err)?;
            let rows = summary_rows(&tx, &sql).await.map_err(pg_err)?;
            // Nothing to keep: ending it lets the snapshot go at once.
            tx.rollback().await.map_err(pg_err)?;
            Ok(sql.assemble(rows))
        })
    }

    fn tail<'a>(
        &'a self,
        cursor: &'a TailCursor,
        limit: u32,
    ) -> BoxFuture<'a, Result<(Vec<AuditEvent>, TailCursor), AuditError>> {
        Box::pin(async move {
            let TailCursor::Row(after) = cursor else {
                let rows = self
                    .select("SELECT COALESCE(MAX(seq), 0) FROM audit_events", &[])
                    .await?;
                let max: i64 = rows.first().map_or(0, |r| r.get(0));
                return Ok((Vec::new(), TailCursor::Row(max)));
            };
            let sql = format!(
                "{SELECT} WHERE seq > $1 ORDER BY seq LIMIT {}",
                limit.max(1)
            );
            let rows = self.select(&sql, &[SqlParam::Int(*after)]).await?;
            let last = rows.last().map_or(*after, |r| r.get::<_, i64>(0));
            Ok((events(&rows)?, TailCursor::Row(last)))
        })
    }
}

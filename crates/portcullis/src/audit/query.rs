//! Reading the audit log back: filters shared by every store, and the cursor `tail` follows.
//!
//! The database stores turn an [`AuditQuery`] into one indexed `SELECT` (see [`SqlFilter`]);
//! the JSON-lines store scans its files with [`AuditQuery::matches`]. Results are the newest
//! `limit` matches, returned oldest first.
//!
//! ```
//! use portcullis::audit::AuditQuery;
//! let q = AuditQuery::new().since_ms(1_000).action("rate_limit_exceeded").limit(50);
//! assert_eq!(q.limit_or_default(), 50);
//! ```

use super::AuditEvent;

/// The default number of events a query returns.
pub const DEFAULT_LIMIT: u32 = 100;

/// Filters over the audit log; every one set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Events at or after this time (Unix milliseconds).
    pub since_ms: Option<u64>,
    /// Events strictly before this time (Unix milliseconds).
    pub until_ms: Option<u64>,
    /// Only this action (`rate_limit_exceeded`, …).
    pub action: Option<String>,
    /// Only this principal.
    pub user: Option<String>,
    /// Only this client address.
    pub ip: Option<String>,
    /// Only this route pattern (`/api/admin/**`) or, failing that, this canonical path.
    pub route: Option<String>,
    /// At most this many events (default [`DEFAULT_LIMIT`]).
    pub limit: Option<u32>,
}

impl AuditQuery {
    /// A query matching everything (up to the default limit).
    pub fn new() -> Self {
        Self::default()
    }

    /// Events at or after `ms`.
    pub fn since_ms(mut self, ms: u64) -> Self {
        self.since_ms = Some(ms);
        self
    }

    /// Events before `ms`.
    pub fn until_ms(mut self, ms: u64) -> Self {
        self.until_ms = Some(ms);
        self
    }

    /// Only `action`.
    pub fn action(mut self, action: impl Into<String>) -> Self {
        self.action = Some(action.into());
        self
    }

    /// Only `user`.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Only `ip`.
    pub fn ip(mut self, ip: impl Into<String>) -> Self {
        self.ip = Some(ip.into());
        self
    }

    /// Only `route` (pattern or canonical path).
    pub fn route(mut self, route: impl Into<String>) -> Self {
        self.route = Some(route.into());
        self
    }

    /// At most `n` events.
    pub fn limit(mut self, n: u32) -> Self {
        self.limit = Some(n);
        self
    }

    /// The limit in force.
    pub fn limit_or_default(&self) -> u32 {
        self.limit.unwrap_or(DEFAULT_LIMIT)
    }

    /// True when `e` passes every filter (used where there is no SQL).
    pub fn matches(&self, e: &AuditEvent) -> bool {
        self.since_ms.is_none_or(|s| e.ts_ms >= s)
            && self.until_ms.is_none_or(|u| e.ts_ms < u)
            && self
                .action
                .as_deref()
                .is_none_or(|a| e.action.as_str() == a)
            && self
                .user
                .as_deref()
                .is_none_or(|u| e.principal.as_deref() == Some(u))
            && self
                .ip
                .as_deref()
                .is_none_or(|ip| e.client_ip.as_deref() == Some(ip))
            && self
                .route
                .as_deref()
                .is_none_or(|r| e.route == r || e.path == r)
    }

    /// The `WHERE` clause and its parameters in `dialect`.
    pub fn sql_filter(&self, dialect: Dialect) -> SqlFilter {
        let mut f = SqlFilter {
            clause: String::new(),
            params: Vec::new(),
        };
        let cond = |f: &mut SqlFilter, sql: &str, p: SqlParam| {
            f.params.push(p);
            let n = f.params.len();
            let ph = match dialect {
                Dialect::Sqlite => format!("?{n}"),
                Dialect::Postgres => format!("${n}"),
            };
            f.clause.push_str(if f.clause.is_empty() {
                " WHERE "
            } else {
                " AND "
            });
            f.clause.push_str(&sql.replace("{}", &ph));
        };
        let ts = |op: &str| match dialect {
            Dialect::Sqlite => format!("ts {op} {{}}"),
            Dialect::Postgres => {
                format!("ts {op} timestamptz 'epoch' + {{}}::bigint * interval '1 millisecond'")
            }
        };
        if let Some(s) = self.since_ms {
            cond(&mut f, &ts(">="), SqlParam::Int(clamp(s)));
        }
        if let Some(u) = self.until_ms {
            cond(&mut f, &ts("<"), SqlParam::Int(clamp(u)));
        }
        if let Some(a) = &self.action {
            cond(&mut f, "action = {}", SqlParam::Text(a.clone()));
        }
        if let Some(u) = &self.user {
            cond(&mut f, "principal = {}", SqlParam::Text(u.clone()));
        }
        if let Some(ip) = &self.ip {
            cond(&mut f, "client_ip = {}", SqlParam::Text(ip.clone()));
        }
        if let Some(r) = &self.route {
            // Same parameter twice: SQLite's ?N and Postgres' $N may be repeated.
            f.params.push(SqlParam::Text(r.clone()));
            let n = f.params.len();
            let ph = match dialect {
                Dialect::Sqlite => format!("?{n}"),
                Dialect::Postgres => format!("${n}"),
            };
            f.clause.push_str(if f.clause.is_empty() {
                " WHERE "
            } else {
                " AND "
            });
            f.clause.push_str(&format!("(route = {ph} OR path = {ph})"));
        }
        f
    }
}

fn clamp(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// The SQL flavour a filter is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `?1` placeholders, `ts` in Unix milliseconds.
    Sqlite,
    /// `$1` placeholders, `ts` a `timestamptz`.
    Postgres,
}

/// A `WHERE` clause (empty, or starting with a space) and its parameters in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlFilter {
    /// ` WHERE a = ?1 AND …`, or empty.
    pub clause: String,
    /// The parameters, `?1`/`$1` first.
    pub params: Vec<SqlParam>,
}

/// One bound parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlParam {
    /// An integer (times in milliseconds).
    Int(i64),
    /// Text.
    Text(String),
}

/// Where `tail` goes on from, in the store's own storage order — never by time alone, because
/// events replayed from the spool arrive later than their `ts` says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TailCursor {
    /// Not started: the first call returns nothing and positions at the end.
    #[default]
    Start,
    /// After this insertion sequence (SQLite `rowid`, PostgreSQL `seq`).
    Row(i64),
    /// After this byte offset of the file with this inode (JSON lines).
    File {
        /// The inode of the file being followed, to notice rotation.
        inode: u64,
        /// The byte offset after the last complete line read.
        offset: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_filter_numbers_placeholders_in_order() {
        let q = AuditQuery::new()
            .since_ms(5)
            .action("forbidden")
            .route("/api/**");
        let f = q.sql_filter(Dialect::Sqlite);
        assert_eq!(
            f.clause,
            " WHERE ts >= ?1 AND action = ?2 AND (route = ?3 OR path = ?3)"
        );
        assert_eq!(f.params.len(), 3);
        let f = q.sql_filter(Dialect::Postgres);
        assert!(f.clause.contains("$1::bigint"), "{}", f.clause);
        assert!(f.clause.contains("route = $3 OR path = $3"));
    }

    #[test]
    fn empty_query_has_no_where() {
        assert_eq!(AuditQuery::new().sql_filter(Dialect::Sqlite).clause, "");
    }
}

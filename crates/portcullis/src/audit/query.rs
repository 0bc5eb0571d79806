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
///
/// ```
/// use portcullis::audit::{AuditQuery, query::DEFAULT_LIMIT};
/// assert_eq!(AuditQuery::new().limit_or_default(), DEFAULT_LIMIT);
/// assert_eq!(DEFAULT_LIMIT, 100);
/// ```
pub const DEFAULT_LIMIT: u32 = 100;

/// Filters over the audit log; every one set must match.
///
/// ```
/// use portcullis::audit::AuditQuery;
/// let q = AuditQuery::new().user("alice").action("forbidden").limit(20);
/// assert_eq!(q.user.as_deref(), Some("alice"));
/// assert_eq!(q.since_ms, None);
/// ```
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
    ///
    /// ```
    /// use portcullis::audit::AuditQuery;
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
    /// assert!(AuditQuery::new().matches(&event));
    /// assert_eq!(AuditQuery::new(), AuditQuery::default());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Events at or after `ms`.
    ///
    /// ```
    /// use portcullis::audit::AuditQuery;
    /// # let event = portcullis::audit::AuditEvent {
    /// #     id: portcullis::audit::uuid_v7(),
    /// #     ts_ms: 5_000,
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
    /// assert!(AuditQuery::new().since_ms(5_000).matches(&event)); // inclusive
    /// assert!(!AuditQuery::new().since_ms(5_001).matches(&event));
    /// ```
    pub fn since_ms(mut self, ms: u64) -> Self {
        self.since_ms = Some(ms);
        self
    }

    /// Events before `ms`.
    ///
    /// ```
    /// use portcullis::audit::AuditQuery;
    /// # let event = portcullis::audit::AuditEvent {
    /// #     id: portcullis::audit::uuid_v7(),
    /// #     ts_ms: 5_000,
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
    /// assert!(AuditQuery::new().until_ms(5_001).matches(&event));
    /// assert!(!AuditQuery::new().until_ms(5_000).matches(&event)); // exclusive
    /// ```
    pub fn until_ms(mut self, ms: u64) -> Self {
        self.until_ms = Some(ms);
        self
    }

    /// Only `action`.
    ///
    /// ```
    /// use portcullis::audit::{AuditAction, AuditQuery};
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
    /// assert!(AuditQuery::new().action(AuditAction::Forbidden.as_str()).matches(&event));
    /// assert!(!AuditQuery::new().action("rate_limit_exceeded").matches(&event));
    /// ```
    pub fn action(mut self, action: impl Into<String>) -> Self {
        self.action = Some(action.into());
        self
    }

    /// Only `user`.
    ///
    /// ```
    /// use portcullis::audit::AuditQuery;
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
    /// assert_eq!(event.principal.as_deref(), Some("alice"));
    /// assert!(AuditQuery::new().user("alice").matches(&event));
    /// assert!(!AuditQuery::new().user("bob").matches(&event));
    /// ```
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// Only `ip`.
    ///
    /// ```
    /// use portcullis::audit::AuditQuery;
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
    /// assert_eq!(event.client_ip.as_deref(), Some("203.0.113.7"));
    /// assert!(AuditQuery::new().ip("203.0.113.7").matches(&event));
    /// assert!(!AuditQuery::new().ip("203.0.113.8").matches(&event));
    /// ```
    pub fn ip(mut self, ip: impl Into<String>) -> Self {
        self.ip = Some(ip.into());
        self
    }

    /// Only `route` (pattern or canonical path).
    ///
    /// ```
    /// use portcullis::audit::AuditQuery;
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
    /// assert_eq!((event.route.as_str(), event.path.as_str()), ("/api/admin/**", "/api/admin/users"));
    /// assert!(AuditQuery::new().route("/api/admin/**").matches(&event));
    /// assert!(AuditQuery::new().route("/api/admin/users").matches(&event));
    /// ```
    pub fn route(mut self, route: impl Into<String>) -> Self {
        self.route = Some(route.into());
        self
    }

    /// At most `n` events.
    ///
    /// ```
    /// use portcullis::audit::AuditQuery;
    /// assert_eq!(AuditQuery::new().limit(20).limit_or_default(), 20);
    /// ```
    pub fn limit(mut self, n: u32) -> Self {
        self.limit = Some(n);
        self
    }

    /// The limit in force.
    ///
    /// ```
    /// use portcullis::audit::AuditQuery;
    /// assert_eq!(AuditQuery::new().limit_or_default(), 100);
    /// assert_eq!(AuditQuery::new().limit(5).limit_or_default(), 5);
    /// ```
    pub fn limit_or_default(&self) -> u32 {
        self.limit.unwrap_or(DEFAULT_LIMIT)
    }

    /// True when `e` passes every filter (used where there is no SQL).
    ///
    /// ```
    /// use portcullis::audit::AuditQuery;
    /// # let event = portcullis::audit::AuditEvent {
    /// #     id: portcullis::audit::uuid_v7(),
    /// #     ts_ms: 5_000,
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
    /// let q = AuditQuery::new().since_ms(1_000).user("alice").action("forbidden");
    /// assert!(q.matches(&event));
    /// assert!(!q.clone().ip("198.51.100.1").matches(&event)); // every filter must match
    /// ```
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
    ///
    /// ```
    /// use portcullis::audit::AuditQuery;
    /// use portcullis::audit::query::{Dialect, SqlParam};
    /// let f = AuditQuery::new().action("forbidden").user("alice").sql_filter(Dialect::Sqlite);
    /// assert_eq!(f.clause, " WHERE action = ?1 AND principal = ?2");
    /// assert_eq!(f.params, [SqlParam::Text("forbidden".into()), SqlParam::Text("alice".into())]);
    /// ```
    pub fn sql_filter(&self, dialect: Dialect) -> SqlFilter {
        let mut f = SqlFilter {
            clause: String::new(),
            params: Vec::new(),
        };
        let cond = |f: &mut SqlFilter, sql: &str, p: SqlParam| {
            f.params.push(p);
            f.and(&sql.replace("{}", &dialect.placeholder(f.params.len())));
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
            cond(
                &mut f,
                "(route = {} OR path = {})",
                SqlParam::Text(r.clone()),
            );
        }
        f
    }
}

fn clamp(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// The SQL flavour a filter is written in.
///
/// ```
/// use portcullis::audit::AuditQuery;
/// use portcullis::audit::query::Dialect;
/// let q = AuditQuery::new().user("alice");
/// assert_eq!(q.sql_filter(Dialect::Sqlite).clause, " WHERE principal = ?1");
/// assert_eq!(q.sql_filter(Dialect::Postgres).clause, " WHERE principal = $1");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `?1` placeholders, `ts` in Unix milliseconds.
    Sqlite,
    /// `$1` placeholders, `ts` a `timestamptz`.
    Postgres,
}

/// A `WHERE` clause (empty, or starting with a space) and its parameters in order.
///
/// ```
/// use portcullis::audit::AuditQuery;
/// use portcullis::audit::query::{Dialect, SqlFilter};
/// let f: SqlFilter = AuditQuery::new().sql_filter(Dialect::Postgres);
/// assert!(f.clause.is_empty() && f.params.is_empty()); // no filter, no WHERE
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlFilter {
    /// ` WHERE a = ?1 AND …`, or empty.
    pub clause: String,
    /// The parameters, `?1`/`$1` first.
    pub params: Vec<SqlParam>,
}

impl Dialect {
    /// The placeholder of the `n`th parameter (from 1): `?n` or `$n`.
    ///
    /// ```
    /// use portcullis::audit::query::Dialect;
    /// assert_eq!(Dialect::Sqlite.placeholder(2), "?2");
    /// assert_eq!(Dialect::Postgres.placeholder(2), "$2");
    /// ```
    pub fn placeholder(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => format!("${n}"),
        }
    }
}

impl SqlFilter {
    /// Adds `cond` to the clause: ` WHERE cond` when it is empty, else ` AND cond`.
    ///
    /// ```
    /// use portcullis::audit::AuditQuery;
    /// use portcullis::audit::query::Dialect;
    /// let mut f = AuditQuery::new().sql_filter(Dialect::Sqlite);
    /// f.and("outcome = 'denied'");
    /// f.and("client_ip IS NOT NULL");
    /// assert_eq!(f.clause, " WHERE outcome = 'denied' AND client_ip IS NOT NULL");
    /// ```
    pub fn and(&mut self, cond: &str) {
        self.clause.push_str(if self.clause.is_empty() {
            " WHERE "
        } else {
            " AND "
        });
        self.clause.push_str(cond);
    }
}

/// One bound parameter.
///
/// ```
/// use portcullis::audit::AuditQuery;
/// use portcullis::audit::query::{Dialect, SqlParam};
/// let f = AuditQuery::new().since_ms(1_000).sql_filter(Dialect::Sqlite);
/// assert_eq!(f.clause, " WHERE ts >= ?1");
/// assert_eq!(f.params, [SqlParam::Int(1_000)]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlParam {
    /// An integer (times in milliseconds).
    Int(i64),
    /// Text.
    Text(String),
}

/// Where `tail` goes on from, in the store's own storage order — never by time alone, because
/// events replayed from the spool arrive later than their `ts` says.
///
/// ```
/// use portcullis::audit::{AuditStore, TailCursor, sqlite::SqliteAuditStore};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = SqliteAuditStore::open(":memory:").unwrap();
/// // From `Start`: no events, and a cursor at the end of the log.
/// let (none, cursor) = store.tail(&TailCursor::Start, 100).await.unwrap();
/// assert!(none.is_empty() && cursor == TailCursor::Row(0));
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
/// let (new, _) = store.tail(&cursor, 100).await.unwrap();
/// assert_eq!(new.len(), 1);
/// # });
/// ```
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

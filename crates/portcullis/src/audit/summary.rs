//! Counts over a window of the audit log, for dashboards: totals per action and outcome, the
//! clients and principals refused most often, the routes that hit rate limits, and denials
//! over time.
//!
//! [`AuditStore::summary`] answers a [`SummaryQuery`]. The
//! database stores count with `GROUP BY` over the window (the `ts` index), so a dashboard may
//! ask every few seconds on a log of millions of rows; the JSON-lines store folds its files
//! line by line with a [`Summarizer`]; other stores fold what `query` returns, at most
//! [`FOLD_CAP`] events (and say so in [`AuditSummary::truncated`]).
//!
//! ```
//! use portcullis::audit::{AuditStore, SummaryQuery, sqlite::SqliteAuditStore};
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let store = SqliteAuditStore::open(":memory:").unwrap();
//! let now = portcullis::audit::now_ms();
//! let last_hour = SummaryQuery::new(now - 3_600_000, now).top(10).buckets(60);
//! let summary = store.summary(&last_hour).await.unwrap();
//! assert_eq!(summary.total, 0);
//! assert_eq!(summary.denied_timeline.len(), 60); // one count a minute
//! # });
//! ```

use std::cmp::Ordering;
use std::collections::HashMap;

use serde::Serialize;

use super::query::AuditQuery;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
use super::query::{Dialect, SqlParam};
use super::store::{AuditError, AuditStore};
use super::{AuditAction, AuditEvent, Outcome};

/// At most this many events are folded by the default [`AuditStore::summary`] (stores that
/// only implement `query`); past it the summary covers the newest `FOLD_CAP` events of the
/// window and says [`AuditSummary::truncated`].
///
/// ```
/// assert_eq!(portcullis::audit::FOLD_CAP, 100_000);
/// ```
pub const FOLD_CAP: u32 = 100_000;

/// The largest `top` and `buckets`.
const MAX_PARAM: u32 = 1000;

/// What to count: events with `since_ms <= ts < until_ms`.
///
/// Values of `top` and `buckets` outside `1..=1000` (set on the fields directly) are clamped
/// the way the builder methods clamp them.
///
/// ```
/// use portcullis::audit::SummaryQuery;
/// let q = SummaryQuery::new(0, 60_000);
/// assert_eq!((q.top, q.buckets), (20, 60));
/// assert_eq!(q.bucket_ms(), 1_000);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryQuery {
    /// Start of the window, Unix milliseconds, inclusive.
    pub since_ms: u64,
    /// End of the window, Unix milliseconds, exclusive.
    pub until_ms: u64,
    /// How many offenders, users and routes to list (default 20).
    pub top: u32,
    /// How many slices the denial timeline has (default 60).
    pub buckets: u32,
}

impl SummaryQuery {
    /// The window `[since_ms, until_ms)`, top 20, 60 buckets.
    ///
    /// ```
    /// use portcullis::audit::SummaryQuery;
    /// let q = SummaryQuery::new(1_000, 2_000);
    /// assert_eq!(q, SummaryQuery { since_ms: 1_000, until_ms: 2_000, top: 20, buckets: 60 });
    /// ```
    pub fn new(since_ms: u64, until_ms: u64) -> Self {
        SummaryQuery {
            since_ms,
            until_ms,
            top: 20,
            buckets: 60,
        }
    }

    /// Lists at most `n` offenders, users and routes (clamped to `1..=1000`).
    ///
    /// ```
    /// use portcullis::audit::SummaryQuery;
    /// assert_eq!(SummaryQuery::new(0, 1).top(5).top, 5);
    /// assert_eq!(SummaryQuery::new(0, 1).top(0).top, 1);
    /// assert_eq!(SummaryQuery::new(0, 1).top(5_000).top, 1_000);
    /// ```
    pub fn top(mut self, n: u32) -> Self {
        self.top = n.clamp(1, MAX_PARAM);
        self
    }

    /// Splits the denial timeline in `n` slices (clamped to `1..=1000`).
    ///
    /// ```
    /// use portcullis::audit::SummaryQuery;
    /// assert_eq!(SummaryQuery::new(0, 1).buckets(12).buckets, 12);
    /// assert_eq!(SummaryQuery::new(0, 1).buckets(0).buckets, 1);
    /// assert_eq!(SummaryQuery::new(0, 1).buckets(u32::MAX).buckets, 1_000);
    /// ```
    pub fn buckets(mut self, n: u32) -> Self {
        self.buckets = n.clamp(1, MAX_PARAM);
        self
    }

    /// The width of one timeline slice: `ceil((until - since) / buckets)`, at least 1.
    ///
    /// ```
    /// use portcullis::audit::SummaryQuery;
    /// assert_eq!(SummaryQuery::new(0, 100).buckets(3).bucket_ms(), 34);
    /// assert_eq!(SummaryQuery::new(0, 5).buckets(60).bucket_ms(), 1);
    /// assert_eq!(SummaryQuery::new(9, 9).bucket_ms(), 1); // an empty window
    /// ```
    pub fn bucket_ms(&self) -> u64 {
        self.until_ms
            .saturating_sub(self.since_ms)
            .div_ceil(u64::from(self.bucket_count()))
            .max(1)
    }

    /// `top`, clamped.
    pub(crate) fn top_count(&self) -> u32 {
        self.top.clamp(1, MAX_PARAM)
    }

    /// `buckets`, clamped.
    pub(crate) fn bucket_count(&self) -> u32 {
        self.buckets.clamp(1, MAX_PARAM)
    }

    /// The query that reads the window back.
    pub(crate) fn window(&self) -> AuditQuery {
        AuditQuery::new()
            .since_ms(self.since_ms)
            .until_ms(self.until_ms)
    }

    fn contains(&self, ts_ms: u64) -> bool {
        self.since_ms <= ts_ms && ts_ms < self.until_ms
    }
}

/// A name and how many events had it.
///
/// ```
/// use portcullis::audit::NamedCount;
/// let n = NamedCount { name: "alice".into(), count: 3 };
/// assert_eq!(serde_json::to_value(&n).unwrap(), serde_json::json!({"name": "alice", "count": 3}));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NamedCount {
    /// The principal, route or action.
    pub name: String,
    /// How many events.
    pub count: u64,
}

/// How many events had this action and outcome.
///
/// ```
/// use portcullis::audit::{ActionCount, AuditAction, Outcome};
/// let c = ActionCount {
///     action: AuditAction::Forbidden.as_str().into(),
///     outcome: Outcome::Denied.as_str().into(),
///     count: 2,
/// };
/// assert_eq!(serde_json::to_value(&c).unwrap()["action"], "forbidden");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ActionCount {
    /// The stored action name ([`AuditAction::as_str`]).
    pub action: String,
    /// The stored outcome name ([`Outcome::as_str`]).
    pub outcome: String,
    /// How many events.
    pub count: u64,
}

/// A client refused often in the window.
///
/// ```
/// use portcullis::audit::{NamedCount, Offender};
/// let o = Offender {
///     client_ip: "203.0.113.7".into(),
///     denied: 5,
///     last_ms: 1_000,
///     actions: vec![NamedCount { name: "rate_limit_exceeded".into(), count: 5 }],
/// };
/// assert_eq!(serde_json::to_value(&o).unwrap()["denied"], 5);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Offender {
    /// The client address.
    pub client_ip: String,
    /// Its denied events in the window.
    pub denied: u64,
    /// The time of its newest denied event (Unix milliseconds).
    pub last_ms: u64,
    /// Its denied events by action, most frequent first (then by name).
    pub actions: Vec<NamedCount>,
}

/// Counts over a window of the audit log.
///
/// Lists are ordered by count, largest first, ties by name (byte order); offenders with the
/// same count by their newest denial, latest first, then by address.
///
/// ```
/// use portcullis::audit::{AuditSummary, SummaryQuery, Summarizer};
/// let summary: AuditSummary = Summarizer::new(&SummaryQuery::new(0, 1_000).buckets(4)).finish();
/// assert_eq!(summary.total, 0);
/// assert_eq!(summary.bucket_ms, 250);
/// assert_eq!(summary.denied_timeline, [0, 0, 0, 0]);
/// assert!(!summary.truncated);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AuditSummary {
    /// Start of the window, inclusive.
    pub since_ms: u64,
    /// End of the window, exclusive.
    pub until_ms: u64,
    /// The width of one [`denied_timeline`](Self::denied_timeline) slice.
    pub bucket_ms: u64,
    /// All events in the window.
    pub total: u64,
    /// The `denied` ones among them.
    pub denied: u64,
    /// Every (action, outcome) pair seen, by count, then action, then outcome. The database
    /// stores count the names as stored, so a name this version does not know appears as is
    /// (where `query` would read it as `security_event` or `denied`).
    pub by_action: Vec<ActionCount>,
    /// The clients (with a known address) with the most denied events, at most `top`.
    pub offenders: Vec<Offender>,
    /// The principals with the most denied events, at most `top`.
    pub denied_users: Vec<NamedCount>,
    /// Routes by `rate_limit_exceeded` events (any outcome), at most `top`.
    pub rate_limited_routes: Vec<NamedCount>,
    /// Denied events per slice: entry `i` counts `[since + i*bucket_ms, since + (i+1)*bucket_ms)`.
    pub denied_timeline: Vec<u64>,
    /// True when a fold stopped at [`FOLD_CAP`] events: the counts cover only the newest ones.
    pub truncated: bool,
}

/// Folds events one at a time into an [`AuditSummary`]: for stores without SQL, and the
/// reference the SQL stores are tested against. Events outside the window are ignored.
///
/// ```
/// use portcullis::audit::{AuditAction, Outcome, SummaryQuery, Summarizer};
/// # let event = |ts_ms: u64, ip: &str| portcullis::audit::AuditEvent {
/// #     id: portcullis::audit::uuid_v7(),
/// #     ts_ms,
/// #     action: AuditAction::Forbidden,
/// #     outcome: Outcome::Denied,
/// #     principal: Some("alice".into()),
/// #     client_ip: Some(ip.into()),
/// #     method: "POST".into(),
/// #     route: "/api/admin/**".into(),
/// #     path: "/api/admin/users".into(),
/// #     status: 403,
/// #     request_id: "req-1".into(),
/// #     metadata: serde_json::json!({"code": "forbidden"}),
/// # };
/// let mut s = Summarizer::new(&SummaryQuery::new(1_000, 2_000).buckets(2));
/// s.add(&event(1_000, "203.0.113.7")); // the first millisecond counts
/// s.add(&event(1_600, "203.0.113.7"));
/// s.add(&event(2_000, "198.51.100.1")); // the end is exclusive
/// let summary = s.finish();
/// assert_eq!((summary.total, summary.denied), (2, 2));
/// assert_eq!(summary.denied_timeline, [1, 1]);
/// assert_eq!(summary.offenders[0].client_ip, "203.0.113.7");
/// assert_eq!(summary.offenders[0].last_ms, 1_600);
/// assert_eq!(summary.denied_users[0].count, 2);
/// ```
#[derive(Debug, Clone)]
pub struct Summarizer {
    query: SummaryQuery,
    bucket_ms: u64,
    total: u64,
    by_action: HashMap<(&'static str, &'static str), u64>,
    offenders: HashMap<String, OffenderTally>,
    denied_users: HashMap<String, u64>,
    rate_limited_routes: HashMap<String, u64>,
    timeline: Vec<u64>,
}

#[derive(Debug, Clone, Default)]
struct OffenderTally {
    denied: u64,
    last_ms: u64,
    actions: HashMap<&'static str, u64>,
}

impl Summarizer {
    /// An empty fold over `q`'s window.
    ///
    /// ```
    /// use portcullis::audit::{SummaryQuery, Summarizer};
    /// let s = Summarizer::new(&SummaryQuery::new(0, 10).buckets(5));
    /// assert_eq!(s.finish().denied_timeline.len(), 5);
    /// ```
    pub fn new(q: &SummaryQuery) -> Self {
        Summarizer {
            query: q.clone(),
            bucket_ms: q.bucket_ms(),
            total: 0,
            by_action: HashMap::new(),
            offenders: HashMap::new(),
            denied_users: HashMap::new(),
            rate_limited_routes: HashMap::new(),
            timeline: vec![0; q.bucket_count() as usize],
        }
    }

    /// Counts `e` if it falls in the window.
    ///
    /// ```
    /// use portcullis::audit::{SummaryQuery, Summarizer};
    /// # let event = portcullis::audit::AuditEvent {
    /// #     id: portcullis::audit::uuid_v7(),
    /// #     ts_ms: 5,
    /// #     action: portcullis::audit::AuditAction::RateLimitExceeded,
    /// #     outcome: portcullis::audit::Outcome::ReportOnly,
    /// #     principal: None,
    /// #     client_ip: None,
    /// #     method: "GET".into(),
    /// #     route: "/api/**".into(),
    /// #     path: "/api/notes".into(),
    /// #     status: 429,
    /// #     request_id: "req-1".into(),
    /// #     metadata: serde_json::json!({}),
    /// # };
    /// let mut s = Summarizer::new(&SummaryQuery::new(0, 10));
    /// s.add(&event); // a report-only rate-limit event on /api/**
    /// let summary = s.finish();
    /// assert_eq!(summary.rate_limited_routes[0].name, "/api/**");
    /// assert!(summary.offenders.is_empty()); // not denied
    /// ```
    pub fn add(&mut self, e: &AuditEvent) {
        if !self.query.contains(e.ts_ms) {
            return;
        }
        self.total += 1;
        *self
            .by_action
            .entry((e.action.as_str(), e.outcome.as_str()))
            .or_default() += 1;
        if e.action == AuditAction::RateLimitExceeded {
            *self.rate_limited_routes.entry(e.route.clone()).or_default() += 1;
        }
        if e.outcome != Outcome::Denied {
            return;
        }
        let i = (e.ts_ms - self.query.since_ms) / self.bucket_ms;
        let i = bucket_index(i, self.timeline.len());
        if let Some(slot) = self.timeline.get_mut(i) {
            *slot += 1;
        }
        if let Some(user) = &e.principal {
            *self.denied_users.entry(user.clone()).or_default() += 1;
        }
        if let Some(ip) = &e.client_ip {
            let t = self.offenders.entry(ip.clone()).or_default();
            t.denied += 1;
            t.last_ms = t.last_ms.max(e.ts_ms);
            *t.actions.entry(e.action.as_str()).or_default() += 1;
        }
    }

    /// The summary: sorted, cut to `top`.
    ///
    /// ```
    /// use portcullis::audit::{SummaryQuery, Summarizer};
    /// let summary = Summarizer::new(&SummaryQuery::new(10, 20)).finish();
    /// assert_eq!((summary.since_ms, summary.until_ms, summary.bucket_ms), (10, 20, 1));
    /// ```
    pub fn finish(self) -> AuditSummary {
        let top = self.query.top_count() as usize;
        let by_action = self
            .by_action
            .into_iter()
            .map(|((action, outcome), count)| ActionCount {
                action: action.into(),
                outcome: outcome.into(),
                count,
            })
            .collect();
        let offenders: Vec<Offender> = self
            .offenders
            .into_iter()
            .map(|(client_ip, t)| Offender {
                client_ip,
                denied: t.denied,
                last_ms: t.last_ms,
                actions: t
                    .actions
                    .into_iter()
                    .map(|(name, count)| NamedCount {
                        name: name.into(),
                        count,
                    })
                    .collect(),
            })
            .collect();
        let named = |m: HashMap<String, u64>| -> Vec<NamedCount> {
            m.into_iter()
                .map(|(name, count)| NamedCount { name, count })
                .collect()
        };
        let mut summary = AuditSummary {
            since_ms: self.query.since_ms,
            until_ms: self.query.until_ms,
            bucket_ms: self.bucket_ms,
            total: self.total,
            denied: 0,
            by_action,
            offenders,
            denied_users: named(self.denied_users),
            rate_limited_routes: named(self.rate_limited_routes),
            denied_timeline: self.timeline,
            truncated: false,
        };
        normalize(&mut summary, top);
        summary
    }
}

/// A bucket index, clamped into `0..len` (a time rounded at the window's end).
fn bucket_index(i: u64, len: usize) -> usize {
    usize::try_from(i).map_or(len.saturating_sub(1), |i| i.min(len.saturating_sub(1)))
}

/// Count descending, then name ascending.
fn named_order(a: &NamedCount, b: &NamedCount) -> Ordering {
    b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name))
}

/// Denials descending, newest denial first, then address ascending.
fn offender_order(a: &Offender, b: &Offender) -> Ordering {
    b.denied
        .cmp(&a.denied)
        .then_with(|| b.last_ms.cmp(&a.last_ms))
        .then_with(|| a.client_ip.cmp(&b.client_ip))
}

/// Sorts every list and cuts the top lists to `top`: the one place the orders are decided, for
/// the fold and the SQL stores alike (whose SQL orders and limits the same way).
fn normalize(s: &mut AuditSummary, top: usize) {
    s.denied = s
        .by_action
        .iter()
        .filter(|a| a.outcome == Outcome::Denied.as_str())
        .map(|a| a.count)
        .sum();
    s.by_action.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.action.cmp(&b.action))
            .then_with(|| a.outcome.cmp(&b.outcome))
    });
    s.offenders.sort_by(offender_order);
    s.offenders.truncate(top);
    for o in &mut s.offenders {
        o.actions.sort_by(named_order);
    }
    for list in [&mut s.denied_users, &mut s.rate_limited_routes] {
        list.sort_by(named_order);
        list.truncate(top);
    }
}

/// The default [`AuditStore::summary`]: folds the newest `cap` events of the window that
/// `store.query` returns.
pub(crate) async fn fold_query<S: AuditStore + ?Sized>(
    store: &S,
    q: &SummaryQuery,
    cap: u32,
) -> Result<AuditSummary, AuditError> {
    let events = store.query(&q.window().limit(cap)).await?;
    let mut s = Summarizer::new(q);
    for e in &events {
        s.add(e);
    }
    let mut summary = s.finish();
    summary.truncated = events.len() >= cap as usize;
    Ok(summary)
}

/// One SQL statement and its parameters.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[derive(Debug, Clone)]
pub(crate) struct SqlStatement {
    pub(crate) sql: String,
    pub(crate) params: Vec<SqlParam>,
}

/// The `GROUP BY` statements of a summary, in one dialect. Each reads `audit_events` over the
/// window with the `WHERE` clause of [`AuditQuery::sql_filter`] (so the `ts` index serves
/// them), and returns:
/// - `by_action`: `(action, outcome, count)`;
/// - `offenders`: `(client_ip, count, newest ts in ms)`, the top `top`;
/// - `denied_users`, `rate_limited_routes`: `(name, count)`, the top `top`;
/// - `denied_timeline`: `(bucket index, count)`.
///
/// Ties are ordered as [`normalize`] orders them, in byte order (`COLLATE "C"` in
/// PostgreSQL, whose default collation may not be), so the cut at `top` is the fold's.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[derive(Debug, Clone)]
pub(crate) struct SummarySql {
    dialect: Dialect,
    query: SummaryQuery,
    pub(crate) by_action: SqlStatement,
    pub(crate) offenders: SqlStatement,
    pub(crate) denied_users: SqlStatement,
    pub(crate) rate_limited_routes: SqlStatement,
    pub(crate) denied_timeline: SqlStatement,
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
impl SummarySql {
    pub(crate) fn new(q: &SummaryQuery, dialect: Dialect) -> Self {
        let base = q.window().sql_filter(dialect);
        let ph = |n: usize| dialect.placeholder(n);
        let (ts_ms, max_ts_ms, bytes) = match dialect {
            Dialect::Sqlite => ("ts", "max(ts)".to_string(), ""),
            Dialect::Postgres => (
                "(extract(epoch FROM ts) * 1000)::bigint",
                "(extract(epoch FROM max(ts)) * 1000)::bigint".to_string(),
                " COLLATE \"C\"",
            ),
        };
        // Appends ` AND cond` (or ` WHERE cond`) to the window's clause, with extra params
        // numbered after the window's.
        let stmt = |select: &str, cond: &str, rest: &str, extra: Vec<SqlParam>| {
            let mut f = base.clone();
            if !cond.is_empty() {
                f.and(cond);
            }
            f.params.extend(extra);
            SqlStatement {
                sql: format!("{select} FROM audit_events{}{rest}", f.clause),
                params: f.params,
            }
        };
        let n = base.params.len();
        let (p1, p2) = (ph(n + 1), ph(n + 2));
        let denied = || SqlParam::Text(Outcome::Denied.as_str().into());
        let top = || SqlParam::Int(i64::from(q.top_count()));
        let since = match dialect {
            Dialect::Sqlite => ph(1),
            Dialect::Postgres => format!("{}::bigint", ph(1)),
        };
        // The window's first parameter is `since` (see `AuditQuery::sql_filter`).
        debug_assert!(matches!(base.params.first(), Some(SqlParam::Int(_))));
        SummarySql {
            dialect,
            query: q.clone(),
            by_action: stmt(
                "SELECT action, outcome, count(*)",
                "",
                " GROUP BY action, outcome",
                Vec::new(),
            ),
            offenders: stmt(
                &format!("SELECT client_ip, count(*) AS n, {max_ts_ms} AS newest"),
                &format!("outcome = {p1} AND client_ip IS NOT NULL"),
                &format!(
                    " GROUP BY client_ip ORDER BY n DESC, newest DESC, client_ip{bytes} LIMIT {p2}"
                ),
                vec![denied(), top()],
            ),
            denied_users: stmt(
                "SELECT principal, count(*) AS n",
                &format!("outcome = {p1} AND principal IS NOT NULL"),
                &format!(" GROUP BY principal ORDER BY n DESC, principal{bytes} LIMIT {p2}"),
                vec![denied(), top()],
            ),
            rate_limited_routes: stmt(
                "SELECT route, count(*) AS n",
                &format!("action = {p1}"),
                &format!(" GROUP BY route ORDER BY n DESC, route{bytes} LIMIT {p2}"),
                vec![
                    SqlParam::Text(AuditAction::RateLimitExceeded.as_str().into()),
                    top(),
                ],
            ),
            // Integer division: `ts >= since` in the window, so this is the floor.
            denied_timeline: stmt(
                &format!(
                    "SELECT ({ts_ms} - {since}) / {} AS bucket, count(*)",
                    match dialect {
                        Dialect::Sqlite => p2.clone(),
                        Dialect::Postgres => format!("{p2}::bigint"),
                    }
                ),
                &format!("outcome = {p1}"),
                " GROUP BY bucket",
                vec![
                    denied(),
                    SqlParam::Int(i64::try_from(q.bucket_ms()).unwrap_or(i64::MAX)),
                ],
            ),
        }
    }

    /// `(client_ip, action, count)` of the denied events of `offenders` in the window: their
    /// breakdown, one statement whatever their number; `None` without offenders.
    pub(crate) fn offender_actions(&self, offenders: &[Offender]) -> Option<SqlStatement> {
        if offenders.is_empty() {
            return None;
        }
        let mut f = self.query.window().sql_filter(self.dialect);
        f.params
            .push(SqlParam::Text(Outcome::Denied.as_str().into()));
        let outcome = self.dialect.placeholder(f.params.len());
        let mut list = Vec::with_capacity(offenders.len());
        for o in offenders {
            f.params.push(SqlParam::Text(o.client_ip.clone()));
            list.push(self.dialect.placeholder(f.params.len()));
        }
        f.and(&format!(
            "outcome = {outcome} AND client_ip IN ({})",
            list.join(", ")
        ));
        Some(SqlStatement {
            sql: format!(
                "SELECT client_ip, action, count(*) FROM audit_events{} GROUP BY client_ip, action",
                f.clause
            ),
            params: f.params,
        })
    }

    /// Assembles the statements' rows into the summary, in the fold's orders.
    pub(crate) fn assemble(&self, rows: SummaryRows) -> AuditSummary {
        let q = &self.query;
        let buckets = q.bucket_count() as usize;
        let mut timeline = vec![0; buckets];
        for (i, count) in rows.denied_timeline {
            // Negative only if a row escaped the window; clamp either way.
            let i = bucket_index(u64::try_from(i).unwrap_or(0), buckets);
            if let Some(slot) = timeline.get_mut(i) {
                *slot += count;
            }
        }
        let mut offenders = rows.offenders;
        for (ip, action, count) in rows.offender_actions {
            if let Some(o) = offenders.iter_mut().find(|o| o.client_ip == ip) {
                o.actions.push(NamedCount {
                    name: action,
                    count,
                });
            }
        }
        let mut summary = AuditSummary {
            since_ms: q.since_ms,
            until_ms: q.until_ms,
            bucket_ms: q.bucket_ms(),
            total: rows.by_action.iter().map(|a| a.count).sum(),
            denied: 0,
            by_action: rows.by_action,
            offenders,
            denied_users: rows.denied_users,
            rate_limited_routes: rows.rate_limited_routes,
            denied_timeline: timeline,
            truncated: false,
        };
        normalize(&mut summary, q.top_count() as usize);
        summary
    }
}

/// What the [`SummarySql`] statements returned, converted to Rust types.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[derive(Debug, Clone, Default)]
pub(crate) struct SummaryRows {
    pub(crate) by_action: Vec<ActionCount>,
    /// With empty `actions`: they come from `offender_actions`.
    pub(crate) offenders: Vec<Offender>,
    pub(crate) offender_actions: Vec<(String, String, u64)>,
    pub(crate) denied_users: Vec<NamedCount>,
    pub(crate) rate_limited_routes: Vec<NamedCount>,
    pub(crate) denied_timeline: Vec<(i64, u64)>,
}

/// A count from SQL (`count(*)` is never negative).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts_ms: u64, action: AuditAction, outcome: Outcome) -> AuditEvent {
        AuditEvent {
            id: crate::audit::uuid_v7(),
            ts_ms,
            action,
            outcome,
            principal: None,
            client_ip: None,
            method: "GET".into(),
            route: "/r".into(),
            path: "/r".into(),
            status: 403,
            request_id: "t".into(),
            metadata: serde_json::json!({}),
        }
    }

    fn denied(ts_ms: u64, ip: Option<&str>, user: Option<&str>) -> AuditEvent {
        let mut e = ev(ts_ms, AuditAction::Forbidden, Outcome::Denied);
        e.client_ip = ip.map(Into::into);
        e.principal = user.map(Into::into);
        e
    }

    fn fold(q: &SummaryQuery, events: &[AuditEvent]) -> AuditSummary {
        let mut s = Summarizer::new(q);
        for e in events {
            s.add(e);
        }
        s.finish()
    }

    fn nc(name: &str, count: u64) -> NamedCount {
        NamedCount {
            name: name.into(),
            count,
        }
    }

    #[test]
    fn window_start_is_inclusive_and_end_exclusive() {
        let q = SummaryQuery::new(100, 200).buckets(10);
        let s = fold(
            &q,
            &[
                denied(99, None, None),
                denied(100, None, None),
                denied(199, None, None),
                denied(200, None, None),
            ],
        );
        assert_eq!(s.total, 2);
        assert_eq!(s.denied_timeline, [1, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn buckets_split_the_window_by_ceil_width() {
        // 10 ms in 3 buckets: width 4, buckets [0,4) [4,8) [8,10).
        let q = SummaryQuery::new(0, 10).buckets(3);
        assert_eq!(q.bucket_ms(), 4);
        let events: Vec<_> = (0..10).map(|t| denied(t, None, None)).collect();
        let s = fold(&q, &events);
        assert_eq!(s.denied_timeline, [4, 4, 2]);
        assert_eq!(s.bucket_ms, 4);
        // More buckets than milliseconds: width 1, the tail stays empty.
        let q = SummaryQuery::new(0, 3).buckets(5);
        let s = fold(&q, &events);
        assert_eq!(s.denied_timeline, [1, 1, 1, 0, 0]);
    }

    #[test]
    fn timeline_counts_only_denied_events() {
        let q = SummaryQuery::new(0, 10).buckets(1);
        let s = fold(
            &q,
            &[
                ev(1, AuditAction::Forbidden, Outcome::Denied),
                ev(2, AuditAction::RequestAllowed, Outcome::Allowed),
                ev(3, AuditAction::MethodNotAllowed, Outcome::ReportOnly),
            ],
        );
        assert_eq!((s.total, s.denied_timeline.as_slice()), (3, &[1][..]));
    }

    #[test]
    fn empty_and_inverted_windows_count_nothing() {
        for q in [SummaryQuery::new(5, 5), SummaryQuery::new(9, 2)] {
            let s = fold(&q, &[denied(5, Some("a"), None), denied(2, None, None)]);
            assert_eq!(s.total, 0);
            assert_eq!(s.bucket_ms, 1);
            assert_eq!(s.denied_timeline, vec![0; 60]);
        }
    }

    #[test]
    fn out_of_range_fields_are_clamped() {
        let q = SummaryQuery {
            since_ms: 0,
            until_ms: 10,
            top: 0,
            buckets: 0,
        };
        let s = fold(
            &q,
            &[denied(1, Some("a"), None), denied(2, Some("b"), None)],
        );
        assert_eq!(s.denied_timeline, [2]);
        assert_eq!(s.offenders.len(), 1);
    }

    #[test]
    fn by_action_orders_by_count_then_action_then_outcome() {
        let q = SummaryQuery::new(0, 100);
        let mut events = Vec::new();
        for _ in 0..2 {
            events.push(ev(1, AuditAction::RateLimitExceeded, Outcome::ReportOnly));
            events.push(ev(1, AuditAction::RateLimitExceeded, Outcome::Denied));
            events.push(ev(1, AuditAction::Banned, Outcome::Denied));
        }
        events.push(ev(1, AuditAction::Forbidden, Outcome::Denied));
        events.push(ev(1, AuditAction::Forbidden, Outcome::Denied));
        events.push(ev(1, AuditAction::Forbidden, Outcome::Denied));
        events.push(ev(1, AuditAction::RequestAllowed, Outcome::Allowed));
        let s = fold(&q, &events);
        let got: Vec<_> = s
            .by_action
            .iter()
            .map(|a| (a.action.as_str(), a.outcome.as_str(), a.count))
            .collect();
        assert_eq!(
            got,
            [
                ("forbidden", "denied", 3),
                ("banned", "denied", 2),
                ("rate_limit_exceeded", "denied", 2),
                ("rate_limit_exceeded", "report_only", 2),
                ("request_allowed", "allowed", 1),
            ]
        );
        assert_eq!(s.total, 10);
    }

    #[test]
    fn offenders_tie_on_newest_denial_then_address() {
        let q = SummaryQuery::new(0, 1000);
        let mut events = vec![
            // b and c: 2 denials, newest 50; a: 2 denials, newest 40; d: 3 denials.
            denied(10, Some("b"), None),
            denied(50, Some("b"), None),
            denied(50, Some("c"), None),
            denied(20, Some("c"), None),
            denied(40, Some("a"), None),
            denied(30, Some("a"), None),
            denied(1, Some("d"), None),
            denied(2, Some("d"), None),
            denied(3, Some("d"), None),
            // Not denials, and a denial without an address: not offenders.
            ev(900, AuditAction::Forbidden, Outcome::ReportOnly),
            denied(999, None, None),
        ];
        let mut allowed = ev(999, AuditAction::RequestAllowed, Outcome::Allowed);
        allowed.client_ip = Some("a".into());
        events.push(allowed);
        let s = fold(&q, &events);
        let got: Vec<_> = s
            .offenders
            .iter()
            .map(|o| (o.client_ip.as_str(), o.denied, o.last_ms))
            .collect();
        assert_eq!(got, [("d", 3, 3), ("b", 2, 50), ("c", 2, 50), ("a", 2, 40)]);
    }

    #[test]
    fn offender_actions_order_by_count_then_name() {
        let q = SummaryQuery::new(0, 1000);
        let mut events = Vec::new();
        for (action, n) in [
            (AuditAction::RateLimitExceeded, 2),
            (AuditAction::Banned, 2),
            (AuditAction::Forbidden, 3),
            (AuditAction::InvalidInput, 1),
        ] {
            for t in 0..n {
                let mut e = ev(t, action, Outcome::Denied);
                e.client_ip = Some("203.0.113.7".into());
                events.push(e);
            }
        }
        let s = fold(&q, &events);
        assert_eq!(s.offenders.len(), 1);
        assert_eq!(s.offenders[0].denied, 8);
        assert_eq!(
            s.offenders[0].actions,
            [
                nc("forbidden", 3),
                nc("banned", 2),
                nc("rate_limit_exceeded", 2),
                nc("invalid_input", 1)
            ]
        );
    }

    #[test]
    fn top_cuts_users_routes_and_offenders_after_ordering() {
        let q = SummaryQuery::new(0, 1000).top(2);
        let mut events = Vec::new();
        for (user, n) in [("carol", 1), ("bob", 2), ("alice", 2), ("dave", 3)] {
            for t in 0..n {
                events.push(denied(t, Some(user), Some(user)));
            }
        }
        // A report-only denial neither counts for users nor offenders.
        let mut r = denied(5, Some("zed"), Some("zed"));
        r.outcome = Outcome::ReportOnly;
        events.extend([r.clone(), r.clone(), r.clone(), r]);
        for (route, n) in [("/b", 2), ("/a", 2), ("/c", 1)] {
            for t in 0..n {
                let mut e = ev(t, AuditAction::RateLimitExceeded, Outcome::ReportOnly);
                e.route = route.into();
                events.push(e);
            }
        }
        let s = fold(&q, &events);
        assert_eq!(s.denied_users, [nc("dave", 3), nc("alice", 2)]);
        assert_eq!(s.rate_limited_routes, [nc("/a", 2), nc("/b", 2)]);
        let ips: Vec<_> = s.offenders.iter().map(|o| o.client_ip.as_str()).collect();
        assert_eq!(ips, ["dave", "alice"]); // alice and bob tie on count and newest
    }

    #[test]
    fn names_order_by_bytes() {
        let q = SummaryQuery::new(0, 10);
        let s = fold(
            &q,
            &[
                denied(1, None, Some("alice")),
                denied(1, None, Some("Bob")),
                denied(1, None, Some("émile")),
                denied(1, None, Some("zoe")),
            ],
        );
        let names: Vec<_> = s.denied_users.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["Bob", "alice", "zoe", "émile"]);
    }

    /// Answers `query` with `n` copies of one event in the window (or all it is asked for).
    struct Copies(Option<usize>);

    impl AuditStore for Copies {
        fn describe(&self) -> String {
            "copies".into()
        }
        fn write<'a>(
            &'a self,
            _: &'a [AuditEvent],
        ) -> crate::auth::BoxFuture<'a, Result<(), AuditError>> {
            Box::pin(async { Ok(()) })
        }
        fn query<'a>(
            &'a self,
            query: &'a AuditQuery,
        ) -> crate::auth::BoxFuture<'a, Result<Vec<AuditEvent>, AuditError>> {
            let n = self.0.unwrap_or(query.limit_or_default() as usize);
            let e = denied(query.since_ms.unwrap_or(0), Some("a"), None);
            Box::pin(async move { Ok(vec![e; n]) })
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime builds")
            .block_on(f)
    }

    #[test]
    fn a_fold_that_reaches_its_cap_says_truncated() {
        let q = SummaryQuery::new(10, 20);
        let s = block_on(fold_query(&Copies(None), &q, 3)).expect("folds");
        assert!(s.truncated);
        assert_eq!(s.total, 3);
        let s = block_on(fold_query(&Copies(Some(2)), &q, 3)).expect("folds");
        assert!(!s.truncated);
        assert_eq!(s.total, 2);
    }

    #[test]
    fn the_default_summary_asks_for_fold_cap_events_and_marks_truncation() {
        let q = SummaryQuery::new(10, 20);
        let s = block_on(Copies(None).summary(&q)).expect("folds");
        assert!(s.truncated);
        assert_eq!(s.total, u64::from(FOLD_CAP));
        let s = block_on(Copies(Some(FOLD_CAP as usize - 1)).summary(&q)).expect("folds");
        assert!(!s.truncated);
    }

    #[test]
    fn stores_that_cannot_query_cannot_summarize() {
        let q = SummaryQuery::new(10, 20);
        let e = block_on(crate::audit::jsonl::StdoutStore.summary(&q));
        assert_eq!(e, Err(AuditError::Unsupported("query")));
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn postgres_statements_number_parameters_after_the_window() {
        let q = SummaryQuery::new(1, 2).top(3);
        let sql = SummarySql::new(&q, Dialect::Postgres);
        assert!(
            sql.offenders
                .sql
                .contains("outcome = $3 AND client_ip IS NOT NULL"),
            "{}",
            sql.offenders.sql
        );
        assert!(sql.offenders.sql.ends_with("LIMIT $4"));
        assert_eq!(sql.offenders.params.len(), 4);
        let offender = |ip: &str| Offender {
            client_ip: ip.into(),
            denied: 1,
            last_ms: 0,
            actions: Vec::new(),
        };
        let a = sql
            .offender_actions(&[offender("x"), offender("y")])
            .expect("a statement");
        assert!(a.sql.contains("client_ip IN ($4, $5)"), "{}", a.sql);
        assert_eq!(a.params.len(), 5);
        assert!(sql.offender_actions(&[]).is_none());
    }
}

//! The audit log in a real SQLite file: events from the layer over real TCP, the stored rows
//! and columns, duplicates ignored, retention, queries, and the JSON-lines store beside it.

mod audit_common;
mod common;

use std::sync::Arc;
use std::time::Duration;

use audit_common::{check, config, event, flush_all};
use common::services::TempDir;
use portcullis::audit::jsonl::JsonlStore;
use portcullis::audit::sqlite::SqliteAuditStore;
use portcullis::audit::{AuditQuery, AuditSink, AuditStore, AuditWriter, TailCursor, now_ms};

#[tokio::test]
async fn denials_and_report_only_decisions_are_stored_with_every_column() {
    let dir = TempDir::new("audit-sqlite");
    let db = dir.0.join("audit.db");
    let writer = AuditWriter::open(
        &format!("sqlite://{}", db.display()),
        config(&dir.0.join("spool")),
    )
    .await
    .unwrap();
    let addr = audit_common::serve(Arc::new(writer.clone())).await;
    let expected = audit_common::run(addr).await;
    writer.flush().await.unwrap();

    let stored = writer
        .store()
        .query(&AuditQuery::new().limit(100))
        .await
        .unwrap();
    check(&stored, &expected);
    let c = writer.counters();
    assert_eq!(c.written, expected.len() as u64, "{c:?}");
    assert_eq!((c.spooled, c.dropped, c.pending), (0, 0, 0), "{c:?}");

    // The columns as another SQLite client sees them.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let (ts, metadata, status): (i64, String, i64) = conn
        .query_row(
            "SELECT ts, metadata, status FROM audit_events WHERE action = 'body_too_large'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert!((now_ms() as i64 - ts) < 60_000);
    assert_eq!(status, 413);
    let m: serde_json::Value = serde_json::from_str(&metadata).unwrap();
    assert_eq!(m["code"], "body_too_large");
    assert_eq!(m["control"], "body");
    let indexes: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'audit_events' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for want in [
        "audit_events_action",
        "audit_events_client_ip",
        "audit_events_principal",
        "audit_events_ts",
    ] {
        assert!(indexes.iter().any(|i| i == want), "{indexes:?}");
    }
    writer.shutdown().await.unwrap();
}

#[tokio::test]
async fn filters_select_by_action_user_ip_route_and_time() {
    let dir = TempDir::new("audit-sqlite-query");
    let store = SqliteAuditStore::open(dir.0.join("a.db")).unwrap();
    let now = now_ms();
    let mut events = Vec::new();
    for i in 0..30u64 {
        let mut e = event(format!("q{i}"), now - 60_000 + i * 1000);
        if i % 3 == 0 {
            e.action = portcullis::audit::AuditAction::Forbidden;
            e.principal = Some("bob".into());
        }
        if i % 5 == 0 {
            e.client_ip = Some("198.51.100.7".into());
            e.route = "/api/admin/**".into();
        }
        events.push(e);
    }
    store.write(&events).await.unwrap();
    let q = |q: AuditQuery| {
        let store = store.clone();
        async move { store.query(&q).await.unwrap() }
    };
    assert_eq!(q(AuditQuery::new().action("forbidden")).await.len(), 10);
    assert_eq!(q(AuditQuery::new().user("bob")).await.len(), 10);
    assert_eq!(q(AuditQuery::new().ip("198.51.100.7")).await.len(), 6);
    assert_eq!(q(AuditQuery::new().route("/api/admin/**")).await.len(), 6);
    assert_eq!(q(AuditQuery::new().route("/api/load/x")).await.len(), 30);
    let recent = q(AuditQuery::new().since_ms(now - 40_500)).await;
    assert_eq!(recent.len(), 10);
    let window = q(AuditQuery::new()
        .since_ms(now - 60_000)
        .until_ms(now - 55_000))
    .await;
    assert_eq!(window.len(), 5);
    // The newest `limit`, oldest first.
    let last3 = q(AuditQuery::new().limit(3)).await;
    let ids: Vec<_> = last3.iter().map(|e| e.request_id.as_str()).collect();
    assert_eq!(ids, ["q27", "q28", "q29"]);
}

#[tokio::test]
async fn duplicate_ids_are_ignored_and_tail_follows_inserts() {
    let dir = TempDir::new("audit-sqlite-dup");
    let store = SqliteAuditStore::open(dir.0.join("a.db")).unwrap();
    let (_, mut cursor) = store.tail(&TailCursor::Start, 100).await.unwrap();
    let batch: Vec<_> = (0..10).map(|i| event(format!("d{i}"), now_ms())).collect();
    store.write(&batch).await.unwrap();
    store.write(&batch).await.unwrap();
    store.write(&batch[3..5]).await.unwrap();
    assert_eq!(store.query(&AuditQuery::new()).await.unwrap().len(), 10);
    let (tailed, next) = store.tail(&cursor, 100).await.unwrap();
    assert_eq!(tailed.len(), 10);
    cursor = next;
    let (tailed, _) = store.tail(&cursor, 100).await.unwrap();
    assert!(tailed.is_empty());
}

#[tokio::test]
async fn retention_deletes_old_rows_in_batches() {
    let dir = TempDir::new("audit-sqlite-retention");
    let db = format!("sqlite://{}", dir.0.join("a.db").display());
    let mut cfg = config(&dir.0.join("spool")).retention(Duration::from_secs(90 * 86_400));
    cfg.retention_batch = 7;
    let writer = AuditWriter::open(&db, cfg).await.unwrap();
    let old = now_ms() - 91 * 86_400_000;
    for i in 0..40 {
        writer.record(event(format!("old{i}"), old + i));
    }
    for i in 0..5 {
        writer.record(event(format!("new{i}"), now_ms()));
    }
    writer.flush().await.unwrap();
    assert_eq!(writer.apply_retention().await.unwrap(), 40);
    let left = writer.store().query(&AuditQuery::new()).await.unwrap();
    assert_eq!(left.len(), 5);
    assert!(left.iter().all(|e| e.request_id.starts_with("new")));
    writer.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_full_queue_spools_instead_of_dropping() {
    let dir = TempDir::new("audit-sqlite-full");
    let db = format!("sqlite://{}", dir.0.join("a.db").display());
    let writer = AuditWriter::open(&db, config(&dir.0.join("spool")).queue_capacity(4))
        .await
        .unwrap();
    for i in 0..2000 {
        writer.record(event(format!("burst{i}"), now_ms()));
    }
    let c = writer.counters();
    assert!(c.spooled > 0, "a 4-slot queue overflowed: {c:?}");
    assert_eq!(c.dropped, 0);
    assert_eq!(c.enqueued + c.spooled, 2000);
    flush_all(&writer).await;
    let stored = writer
        .store()
        .query(&AuditQuery::new().limit(5000))
        .await
        .unwrap();
    assert_eq!(stored.len(), 2000);
    let c = writer.counters();
    assert_eq!(c.pending, 0);
    assert_eq!(c.replayed, c.spooled, "{c:?}");
    writer.shutdown().await.unwrap();
}

#[tokio::test]
async fn jsonl_store_appends_rotates_and_queries() {
    let dir = TempDir::new("audit-jsonl");
    let path = dir.0.join("audit.jsonl");
    let store = JsonlStore::open(&path).unwrap().max_bytes(8 * 1024).keep(3);
    let (_, cursor) = store.tail(&TailCursor::Start, 100).await.unwrap();
    let mut all = Vec::new();
    for b in 0..10 {
        let batch: Vec<_> = (0..20)
            .map(|i| event(format!("j{b}-{i}"), now_ms()))
            .collect();
        store.write(&batch).await.unwrap();
        all.extend(batch);
    }
    let rotated = |i: u32| dir.0.join(format!("audit.jsonl.{i}"));
    assert!(rotated(1).exists() && rotated(3).exists() && !rotated(4).exists());
    assert!(std::fs::metadata(&path).unwrap().len() <= 8 * 1024);
    for line in std::fs::read_to_string(&path).unwrap().lines() {
        serde_json::from_str::<serde_json::Value>(line).expect("one JSON object per line");
    }
    // What is kept is found; a replayed duplicate is reported once.
    store.write(&all[all.len() - 3..]).await.unwrap();
    let found = store.query(&AuditQuery::new().limit(1000)).await.unwrap();
    assert!(found.len() >= 40 && found.len() < 200, "{}", found.len());
    let mut ids: Vec<_> = found.iter().map(|e| &e.id).collect();
    ids.dedup();
    assert_eq!(ids.len(), found.len());
    assert_eq!(found.last().unwrap().request_id, "j9-19");
    // Tail across rotations sees the newest lines.
    let (tailed, _) = store.tail(&cursor, 10_000).await.unwrap();
    assert!(tailed.iter().any(|e| e.request_id == "j9-19"));
}

/// Every JSON line carries DESIGN §5's `ts` (RFC 3339 UTC, milliseconds) beside `ts_ms`, and
/// lines written before `ts` existed (`ts_ms` only) are still read and filtered by time.
#[tokio::test]
async fn jsonl_lines_carry_an_rfc3339_ts_and_old_lines_still_read() {
    let dir = TempDir::new("audit-jsonl-ts");
    let path = dir.0.join("audit.jsonl");
    // 2026-12-07T21:08:33.123Z
    let ts_ms = 1_796_677_713_123;
    let old = event("old-line".into(), ts_ms - 1);
    let mut old_line = serde_json::to_string(&old).unwrap();
    assert!(!old_line.contains(r#""ts":"#), "{old_line}");
    old_line.push('\n');
    std::fs::write(&path, old_line).unwrap();

    let store = JsonlStore::open(&path).unwrap();
    store
        .write(&[event("new-line".into(), ts_ms)])
        .await
        .unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let new: serde_json::Value = serde_json::from_str(text.lines().nth(1).unwrap()).unwrap();
    assert_eq!(new["ts"], "2026-12-07T21:08:33.123Z");
    assert_eq!(new["ts_ms"], ts_ms);
    assert_eq!(new["request_id"], "new-line");

    let found = store.query(&AuditQuery::new()).await.unwrap();
    let ids: Vec<_> = found.iter().map(|e| e.request_id.as_str()).collect();
    assert_eq!(ids, ["old-line", "new-line"]);
    assert_eq!(found[1].ts_ms, ts_ms);
    let since = store
        .query(&AuditQuery::new().since_ms(ts_ms - 1).until_ms(ts_ms))
        .await
        .unwrap();
    assert_eq!(since.len(), 1);
    assert_eq!(since[0].request_id, "old-line");
}

/// The SQL `GROUP BY` summary equals the fold of the same events, for varied queries.
#[tokio::test]
async fn sqlite_summary_counts_what_a_fold_of_the_events_counts() {
    let dir = TempDir::new("audit-sqlite-summary");
    let store = SqliteAuditStore::open(dir.0.join("a.db")).unwrap();
    let events = audit_common::random_events(7, 600);
    for batch in events.chunks(100) {
        store.write(batch).await.unwrap();
    }
    audit_common::check_summaries(&store, &events).await;
}

/// The streaming fold over the JSON-lines files (rotated ones included) counts a replayed
/// duplicate once, like `query`.
#[tokio::test]
async fn jsonl_summary_counts_every_file_and_each_id_once() {
    let dir = TempDir::new("audit-jsonl-summary");
    let store = JsonlStore::open(dir.0.join("audit.jsonl"))
        .unwrap()
        .max_bytes(64 * 1024)
        .keep(100);
    let events = audit_common::random_events(11, 600);
    for batch in events.chunks(100) {
        store.write(batch).await.unwrap();
    }
    store.write(&events[250..300]).await.unwrap(); // a replay
    assert!(dir.0.join("audit.jsonl.1").exists(), "rotated");
    audit_common::check_summaries(&store, &events).await;
}

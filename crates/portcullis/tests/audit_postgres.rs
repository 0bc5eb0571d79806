//! The audit log in a real PostgreSQL server (a throwaway cluster per test): the stored rows,
//! the migration, retention, and the fault test — the server stopped while events keep coming,
//! then restarted: every event arrives exactly once.

mod audit_common;
mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use audit_common::{check, config, event, flush_all};
use common::services::{PostgresServer, TempDir};
use portcullis::audit::postgres::PostgresAuditStore;
use portcullis::audit::{AuditQuery, AuditSink, AuditStore, AuditWriter, TailCursor, now_ms};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_are_stored_in_postgres_with_every_column() {
    let pg = PostgresServer::start();
    let dir = TempDir::new("audit-pg");
    let writer = AuditWriter::open(&pg.url(), config(&dir.0.join("spool")))
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

    // Column types and indexes as the migration made them.
    let types = pg.psql(
        "SELECT string_agg(column_name || ':' || data_type, ',' ORDER BY ordinal_position) \
         FROM information_schema.columns WHERE table_name = 'audit_events'",
    );
    for want in [
        "id:uuid",
        "ts:timestamp with time zone",
        "metadata:jsonb",
        "status:integer",
        "request_id:text",
    ] {
        assert!(types.contains(want), "{types}");
    }
    let indexes = pg.psql(
        "SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes \
         WHERE tablename = 'audit_events'",
    );
    for want in [
        "audit_events_action",
        "audit_events_client_ip",
        "audit_events_principal",
        "audit_events_ts",
        "audit_events_pkey",
    ] {
        assert!(indexes.contains(want), "{indexes}");
    }
    let rate = &expected
        .iter()
        .find(|x| x.status == 429)
        .unwrap()
        .request_id;
    let row = pg.psql(&format!(
        "SELECT action || '|' || outcome || '|' || principal || '|' || route || '|' || path || '|' \
         || status || '|' || (metadata->>'code') || '|' || (now() - ts < interval '1 minute') \
         FROM audit_events WHERE request_id = '{rate}'"
    ));
    assert_eq!(
        row,
        "rate_limit_exceeded|denied|alice|/api/limited/**|/api/limited/report|429|rate_limited|true"
    );
    assert_eq!(
        pg.psql("SELECT max(version) FROM portcullis_audit_migrations"),
        "1"
    );

    // Tail sees new rows in insertion order.
    let (_, cursor) = writer.store().tail(&TailCursor::Start, 10).await.unwrap();
    writer.record(event("after-tail".into(), now_ms()));
    writer.flush().await.unwrap();
    let (tailed, _) = writer.store().tail(&cursor, 10).await.unwrap();
    assert_eq!(tailed.len(), 1);
    assert_eq!(tailed[0].request_id, "after-tail");
    writer.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_mid_load_then_restarted_keeps_every_event_exactly_once() {
    let mut pg = PostgresServer::start();
    let dir = TempDir::new("audit-pg-fault");
    let writer = AuditWriter::open(&pg.url(), config(&dir.0.join("spool")))
        .await
        .unwrap();
    writer.flush().await.unwrap(); // connected and migrated

    const N: usize = 1500;
    let producer = {
        let w = writer.clone();
        tokio::spawn(async move {
            for i in 0..N {
                w.record(event(format!("fault-{i}"), now_ms()));
                if i % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(8)).await;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    pg.stop_immediate();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let during = writer.counters();
    pg.restart();
    producer.await.unwrap();
    flush_all(&writer).await;

    let c = writer.counters();
    assert!(
        during.spooled > 0,
        "the outage sent batches to the spool: {during:?}"
    );
    assert_eq!(c.dropped, 0, "{c:?}");
    assert_eq!(c.pending, 0, "{c:?}");
    let counts = pg.psql(
        "SELECT count(*) || '|' || count(DISTINCT id) || '|' || count(DISTINCT request_id) \
         FROM audit_events WHERE request_id LIKE 'fault-%'",
    );
    assert_eq!(counts, format!("{N}|{N}|{N}"), "counters: {c:?}");
    let stored: HashSet<String> = writer
        .store()
        .query(&AuditQuery::new().limit(N as u32 + 10))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.request_id)
        .collect();
    assert!((0..N).all(|i| stored.contains(&format!("fault-{i}"))));
    writer.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_started_while_postgres_is_down_spools_then_delivers() {
    let mut pg = PostgresServer::start();
    pg.stop_immediate();
    let dir = TempDir::new("audit-pg-down");
    let mut cfg = config(&dir.0.join("spool")).retention(Duration::from_secs(90 * 86_400));
    cfg.retention_batch = 3;
    let writer = AuditWriter::open(&pg.url(), cfg).await.unwrap();
    let old = now_ms() - 100 * 86_400_000;
    for i in 0..10 {
        writer.record(event(format!("old-{i}"), old + i));
    }
    for i in 0..20 {
        writer.record(event(format!("down-{i}"), now_ms()));
    }
    assert!(matches!(
        writer.flush().await,
        Err(portcullis::audit::AuditError::Pending { spooled: 30, .. })
    ));
    pg.restart();
    flush_all(&writer).await;
    assert_eq!(pg.psql("SELECT count(*) FROM audit_events"), "30");
    // Retention deletes the old rows, a few per statement.
    assert_eq!(writer.apply_retention().await.unwrap(), 10);
    assert_eq!(pg.psql("SELECT count(*) FROM audit_events"), "20");
    writer.shutdown().await.unwrap();
}

/// A CA made for one test, and PEM files of its certificates.
struct TestCa(rcgen::CertifiedIssuer<'static, rcgen::KeyPair>);

impl TestCa {
    fn new() -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().expect("CA key");
        TestCa(rcgen::CertifiedIssuer::self_signed(params, key).expect("CA certificate"))
    }

    fn pem(&self) -> String {
        pem("CERTIFICATE", self.0.der())
    }

    /// A server certificate and key (PEM) for `names` (host names or IP addresses).
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).expect("leaf params");
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.0).expect("leaf certificate");
        (
            pem("CERTIFICATE", cert.der()),
            pem("PRIVATE KEY", &key.serialize_der()),
        )
    }
}

/// PEM armour (RFC 7468), so rcgen's `pem` feature stays out of the build.
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Writes one event through `store`, returning the error text on failure.
async fn write_one(store: &PostgresAuditStore, request_id: &str) -> Result<(), String> {
    store
        .write(&[event(request_id.to_string(), now_ms())])
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_reaches_a_tls_only_server_and_verifies_it() {
    let ca = TestCa::new();
    let (cert, key) = ca.leaf(&["127.0.0.1"]);
    let pg = PostgresServer::start_tls(&cert, &key);
    let dir = TempDir::new("audit-pg-tls");
    let ca_file = dir.0.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let require = format!("{}?sslmode=require", pg.url());

    // The server takes TLS only: a plain connection is turned away.
    let plain = PostgresAuditStore::new(&pg.url(), None).unwrap();
    let err = write_one(&plain, "plain").await.unwrap_err();
    assert!(
        err.contains("no encryption") || err.contains("pg_hba"),
        "{err}"
    );

    // Verified against the CA file: the event is stored over TLS.
    let tls = PostgresAuditStore::with_ca_file(&require, None, Some(&ca_file)).unwrap();
    assert!(
        tls.describe().starts_with("postgres+tls:"),
        "{}",
        tls.describe()
    );
    write_one(&tls, "over-tls").await.unwrap();
    assert_eq!(
        pg.psql("SELECT request_id FROM audit_events"),
        "over-tls",
        "exactly the TLS write is stored"
    );
    assert_eq!(
        pg.psql(
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = 'portcullis-audit'"
        ),
        "t",
        "the store's connection is encrypted"
    );

    // Another CA's certificate is not trusted: nothing is written.
    let other = TestCa::new();
    let other_file = dir.0.join("other-ca.pem");
    std::fs::write(&other_file, other.pem()).unwrap();
    let wrong_ca = PostgresAuditStore::with_ca_file(&require, None, Some(&other_file)).unwrap();
    let err = write_one(&wrong_ca, "wrong-ca").await.unwrap_err();
    assert!(err.contains("certificate"), "{err}");

    // The right CA, the wrong name: the certificate is for 127.0.0.1, not localhost.
    let by_name = format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=require",
        pg.port
    );
    let wrong_name = PostgresAuditStore::with_ca_file(&by_name, None, Some(&ca_file)).unwrap();
    let err = write_one(&wrong_name, "wrong-name").await.unwrap_err();
    assert!(err.contains("certificate"), "{err}");

    // The system bundle does not hold the test CA either.
    let system = PostgresAuditStore::new(&require, None);
    if let Ok(system) = system {
        let err = write_one(&system, "system-roots").await.unwrap_err();
        assert!(err.contains("certificate"), "{err}");
    }
    assert_eq!(pg.psql("SELECT count(*) FROM audit_events"), "1");
}

#[test]
fn a_ca_file_that_holds_no_certificate_is_a_config_error() {
    let dir = TempDir::new("audit-pg-ca");
    let empty = dir.0.join("empty.pem");
    std::fs::write(&empty, "no certificate here\n").unwrap();
    let url = "postgres://audit@db.example.com/audit?sslmode=require";
    let err = PostgresAuditStore::with_ca_file(url, None, Some(&empty)).unwrap_err();
    assert!(
        err.to_string().contains("no usable CA certificate"),
        "{err}"
    );
    let err =
        PostgresAuditStore::with_ca_file(url, None, Some(&dir.0.join("missing.pem"))).unwrap_err();
    assert!(err.to_string().contains("cannot read"), "{err}");
}

/// The SQL `GROUP BY` summary (timestamptz buckets, byte-order ties) equals the fold of the
/// same events, for varied queries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_summary_counts_what_a_fold_of_the_events_counts() {
    let pg = PostgresServer::start();
    let store = PostgresAuditStore::new(&pg.url(), None).unwrap();
    let events = audit_common::random_events(13, 600);
    for batch in events.chunks(100) {
        store.write(batch).await.unwrap();
    }
    audit_common::check_summaries(&store, &events).await;
    // A linguistic collation ("alice" before "Bob") must not change the ties' byte order.
    pg.psql(
        "ALTER TABLE audit_events ALTER COLUMN principal TYPE text COLLATE \"und-x-icu\", \
         ALTER COLUMN client_ip TYPE text COLLATE \"und-x-icu\", \
         ALTER COLUMN route TYPE text COLLATE \"und-x-icu\"",
    );
    assert_eq!(
        pg.psql("SELECT string_agg(DISTINCT principal, ',' ORDER BY principal) FROM audit_events"),
        "alice,Bob,émile,zoe",
        "the columns now sort linguistically"
    );
    audit_common::check_summaries(&store, &events).await;
}

/// A summary is one snapshot: while a writer keeps adding denials on the same store, every
/// summary's parts (totals by action, offenders, routes, timeline) count the same events.
/// Run one statement after another outside a transaction, they drift apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_summary_taken_while_events_arrive_counts_one_snapshot() {
    use portcullis::audit::SummaryQuery;
    let pg = PostgresServer::start();
    let store = Arc::new(PostgresAuditStore::new(&pg.url(), None).unwrap());
    let base = now_ms() - 60_000;
    store.write(&[event("seed".into(), base)]).await.unwrap();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..400u64 {
                let batch: Vec<_> = (0..5)
                    .map(|j| event(format!("r{i}-{j}"), base + i))
                    .collect();
                store.write(&batch).await.unwrap();
            }
        })
    };
    let q = SummaryQuery::new(base, base + 1_000);
    let mut seen = HashSet::new();
    while !writer.is_finished() {
        let s = store.summary(&q).await.unwrap();
        // `event` is a denied rate-limit refusal of one client and one route.
        let by_action: u64 = s.by_action.iter().map(|a| a.count).sum();
        let timeline: u64 = s.denied_timeline.iter().sum();
        let routes: u64 = s.rate_limited_routes.iter().map(|r| r.count).sum();
        let offender: u64 = s.offenders.iter().map(|o| o.denied).sum();
        assert_eq!(
            (s.denied, by_action, timeline, routes, offender),
            (s.total, s.total, s.total, s.total, s.total),
            "one summary, several counts"
        );
        seen.insert(s.total);
    }
    writer.await.unwrap();
    assert!(
        seen.len() > 1,
        "the summaries ran while the events arrived: {seen:?}"
    );
    assert_eq!(store.summary(&q).await.unwrap().total, 2_001);
}

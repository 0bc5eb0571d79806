//! Crash tests: a writer process is killed with SIGKILL mid-load; a new writer on the same
//! store and spool replays what was left. Every event the dead process had acknowledged
//! (recorded, then reported written or spooled by a flush) is stored, and none twice.
//!
//! The writer process is this test binary run again with `PORTCULLIS_SPOOL_CHILD` set: the
//! `spool_child_process` test then acts as the writer and prints `ACK <round>` after each
//! acknowledged round of events.

mod audit_common;
mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use audit_common::{config, event, flush_all};
use common::services::TempDir;
use portcullis::audit::{AuditError, AuditEvent, AuditSink, AuditStore, AuditWriter, now_ms};

const PER_ROUND: usize = 50;
const CHILD_ENV: &str = "PORTCULLIS_SPOOL_CHILD";
const MODE_ENV: &str = "PORTCULLIS_SPOOL_MODE";

/// A store that is always down.
struct DownStore;

impl AuditStore for DownStore {
    fn describe(&self) -> String {
        "down".into()
    }

    fn write<'a>(
        &'a self,
        _: &'a [AuditEvent],
    ) -> portcullis::auth::BoxFuture<'a, Result<(), AuditError>> {
        Box::pin(async { Err(AuditError::Unavailable("connection refused".into())) })
    }
}

fn db_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("audit.db").display())
}

/// The writer process (only when started by a crash test).
#[test]
fn spool_child_process() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let down = std::env::var(MODE_ENV).as_deref() == Ok("down");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        // A small queue, so bursts overflow into the spool directly.
        let cfg = config(&dir.join("spool")).queue_capacity(8);
        let writer = if down {
            AuditWriter::start(Arc::new(DownStore), cfg).unwrap()
        } else {
            AuditWriter::open(&db_url(&dir), cfg).await.unwrap()
        };
        for round in 0.. {
            for i in 0..PER_ROUND {
                writer.record(event(format!("r{round}-{i}"), now_ms()));
            }
            let flushed = writer.flush().await;
            let c = writer.counters();
            let recorded = ((round + 1) * PER_ROUND) as u64;
            let acked = match flushed {
                Ok(()) => c.acknowledged() == recorded,
                Err(AuditError::Pending { .. }) => c.acknowledged() == recorded && c.dropped == 0,
                Err(_) => false,
            };
            if acked {
                println!("ACK {round}");
            }
        }
    });
}

/// Runs the writer process until it acknowledged `rounds` rounds, kills it with SIGKILL, and
/// returns the last acknowledged round.
fn run_and_kill(dir: &Path, mode: &str, rounds: usize) -> usize {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "spool_child_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, dir)
        .env(MODE_ENV, mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut last = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if let Some(r) = line
            .strip_prefix("ACK ")
            .and_then(|r| r.trim().parse().ok())
        {
            last = Some(r);
            if r + 1 >= rounds {
                // Mid-load: the next round is already being recorded.
                std::thread::sleep(Duration::from_millis(3));
                break;
            }
        }
        assert!(Instant::now() < deadline, "the writer process is too slow");
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    last.expect("the writer process acknowledged some rounds")
}

async fn assert_every_acked_event_once(dir: &Path, last_round: usize) {
    let writer = AuditWriter::open(&db_url(dir), config(&dir.join("spool")))
        .await
        .unwrap();
    flush_all(&writer).await;
    assert_eq!(writer.counters().pending, 0);
    writer.shutdown().await.unwrap();
    assert!(!dir.join("spool/audit-spool.jsonl").exists());
    assert!(!dir.join("spool/audit-spool.replay.jsonl").exists());

    let conn = rusqlite::Connection::open(dir.join("audit.db")).unwrap();
    let dupes: i64 = conn
        .query_row(
            "SELECT count(*) FROM (SELECT request_id FROM audit_events GROUP BY request_id HAVING count(*) > 1)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(dupes, 0, "no event stored twice");
    let mut st = conn
        .prepare("SELECT count(*) FROM audit_events WHERE request_id = ?1")
        .unwrap();
    for round in 0..=last_round {
        for i in 0..PER_ROUND {
            let id = format!("r{round}-{i}");
            let n: i64 = st.query_row([&id], |r| r.get(0)).unwrap();
            assert_eq!(n, 1, "acknowledged event {id} is stored exactly once");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_sigkill_of_the_writer() {
    let dir = TempDir::new("audit-crash");
    let last = run_and_kill(&dir.0, "up", 40);
    assert_every_acked_event_once(&dir.0, last).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_spooled_while_the_store_is_down_survive_sigkill() {
    let dir = TempDir::new("audit-crash-down");
    let last = run_and_kill(&dir.0, "down", 20);
    let spool = std::fs::metadata(dir.0.join("spool/audit-spool.jsonl"))
        .map(|m| m.len())
        .unwrap_or(0)
        + std::fs::metadata(dir.0.join("spool/audit-spool.replay.jsonl"))
            .map(|m| m.len())
            .unwrap_or(0);
    assert!(spool > 0, "the dead writer left its events in the spool");
    assert_every_acked_event_once(&dir.0, last).await;
}

/// The spool folder is private: created 0700 with 0600 files, one left too open is narrowed,
/// and one that belongs to another user is refused (whoever writes there could plant events
/// the store would replay as audit rows).
#[cfg(unix)]
#[test]
fn the_spool_folder_is_private_and_a_foreign_one_is_refused() {
    use portcullis::audit::spool::{SPOOL_FILE, Spool};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let base = std::env::temp_dir().join(format!("pc-spool-private-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let dir = base.join("new");
    let spool = Spool::open(&dir).expect("a new folder");
    spool
        .append(&[event("r1".into(), 1_700_000_000_000)], true)
        .expect("append");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(SPOOL_FILE)), 0o600);
    drop(spool);

    let open = base.join("open");
    std::fs::create_dir_all(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    Spool::open(&open).expect("our own folder");
    assert_eq!(mode(&open), 0o700, "narrowed");

    let foreign = base.join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::set_permissions(&foreign, std::fs::Permissions::from_mode(0o777)).unwrap();
    // Only root can give a folder away; CI runs the tests as root.
    if std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).is_ok() {
        let Err(err) = Spool::open(&foreign) else {
            panic!("a folder of another user is refused")
        };
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
        assert!(err.to_string().contains("uid 65534"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&base);
}

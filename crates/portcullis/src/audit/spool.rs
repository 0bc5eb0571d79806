//! The local spool: where events wait while the store is down or the queue is full.
//!
//! Two JSON-lines files in the spool folder:
//! - `audit-spool.jsonl`, append-only: batches the store refused, and events that found the
//!   queue full. Appends are `fsync`'d per batch (refused batches) or by the writer's next
//!   tick (queue overflow, so a burst does not pay one `fsync` per event);
//! - `audit-spool.replay.jsonl`: the spool being replayed. Replay starts by renaming the
//!   append file to this name (atomic), so appends never race a replay; after every event in
//!   it reached the store, it is removed (atomic too). A crash in between leaves it in place
//!   and the next writer replays it first; the store ignores the ids it already has.
//!
//! A torn last line (the process died mid-append, before that batch was acknowledged) is
//! skipped with a warning. One writer per spool folder.
//!
//! The folder is private: created 0700 (one too open is narrowed), its files 0600, and one
//! that belongs to another user is refused — whoever can write there could plant events the
//! store would replay as audit rows, and whoever can read there reads the events.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::AuditEvent;

/// The append file's name.
///
/// ```
/// use portcullis::audit::spool::{SPOOL_FILE, Spool};
/// # let dir = std::env::temp_dir().join(format!("portcullis-doc-{}-spool-file", std::process::id()));
/// # let _ = std::fs::remove_dir_all(&dir);
/// let spool = Spool::open(&dir).unwrap();
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
/// spool.append(&[event], true).unwrap();
/// assert!(dir.join(SPOOL_FILE).exists());
/// # std::fs::remove_dir_all(&dir).ok();
/// ```
pub const SPOOL_FILE: &str = "audit-spool.jsonl";
/// The name of the spool being replayed.
///
/// ```
/// use portcullis::audit::spool::{REPLAY_FILE, SPOOL_FILE, Spool};
/// # let dir = std::env::temp_dir().join(format!("portcullis-doc-{}-spool-replay-file", std::process::id()));
/// # let _ = std::fs::remove_dir_all(&dir);
/// let spool = Spool::open(&dir).unwrap();
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
/// spool.append(&[event], true).unwrap();
/// let replay = spool.take_for_replay().unwrap().unwrap();
/// assert_eq!(replay, dir.join(REPLAY_FILE));
/// assert!(!dir.join(SPOOL_FILE).exists()); // renamed, not copied
/// # std::fs::remove_dir_all(&dir).ok();
/// ```
pub const REPLAY_FILE: &str = "audit-spool.replay.jsonl";

/// The spool folder and its two files.
///
/// ```
/// use portcullis::audit::spool::Spool;
/// # let dir = std::env::temp_dir().join(format!("portcullis-doc-{}-spool", std::process::id()));
/// # let _ = std::fs::remove_dir_all(&dir);
/// let spool = Spool::open(&dir).unwrap();
/// # let a = portcullis::audit::AuditEvent {
/// #     id: portcullis::audit::uuid_v7(),
/// #     ts_ms: 1,
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
/// # let b = portcullis::audit::AuditEvent {
/// #     id: portcullis::audit::uuid_v7(),
/// #     ts_ms: 2,
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
/// spool.append(&[a, b], true).unwrap();
/// // Later, when the store answers again: replay in order, then remove the file.
/// let file = spool.take_for_replay().unwrap().unwrap();
/// let mut reader = Spool::read(&file, 0, 100).unwrap();
/// let mut lines = 0;
/// let events = reader.next_batch(&mut lines).unwrap();
/// assert_eq!(events.iter().map(|e| e.ts_ms).collect::<Vec<_>>(), [1, 2]);
/// spool.finish_replay(&file, lines).unwrap();
/// assert_eq!(spool.pending(), 0);
/// # std::fs::remove_dir_all(&dir).ok();
/// ```
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    state: Mutex<State>,
    /// Events in the spool files not yet replayed.
    pending: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    file: Option<File>,
    /// Appended since the last `fsync`.
    dirty: bool,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, counting the events a previous run left.
    ///
    /// ```
    /// use portcullis::audit::spool::Spool;
    /// # let dir = std::env::temp_dir().join(format!("portcullis-doc-{}-spool-open", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&dir);
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
    /// Spool::open(&dir).unwrap().append(&[event], true).unwrap();
    /// // A new process finds what the last one left.
    /// assert_eq!(Spool::open(&dir).unwrap().pending(), 1);
    /// # std::fs::remove_dir_all(&dir).ok();
    /// ```
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Spool> {
        let dir = dir.into();
        private_dir(&dir)?;
        let mut pending = 0;
        for name in [REPLAY_FILE, SPOOL_FILE] {
            if let Ok(f) = File::open(dir.join(name)) {
                pending += BufReader::new(f)
                    .split(b'\n')
                    .filter(|l| l.as_ref().is_ok_and(|l| !l.is_empty()))
                    .count() as u64;
            }
        }
        Ok(Spool {
            dir,
            state: Mutex::new(State::default()),
            pending: AtomicU64::new(pending),
        })
    }

    /// The spool folder.
    ///
    /// ```
    /// use portcullis::audit::spool::Spool;
    /// # let dir = std::env::temp_dir().join(format!("portcullis-doc-{}-spool-dir", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// let spool = Spool::open(&dir).unwrap();
    /// assert_eq!(spool.dir(), dir);
    /// # std::fs::remove_dir_all(&dir).ok();
    /// ```
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Events waiting in the spool.
    ///
    /// ```
    /// use portcullis::audit::spool::Spool;
    /// # let dir = std::env::temp_dir().join(format!("portcullis-doc-{}-spool-pending", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// let spool = Spool::open(&dir).unwrap();
    /// assert_eq!(spool.pending(), 0);
    /// # let a = portcullis::audit::AuditEvent {
    /// #     id: portcullis::audit::uuid_v7(),
    /// #     ts_ms: 1,
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
    /// # let b = portcullis::audit::AuditEvent {
    /// #     id: portcullis::audit::uuid_v7(),
    /// #     ts_ms: 2,
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
    /// spool.append(&[a, b], false).unwrap();
    /// assert_eq!(spool.pending(), 2);
    /// # std::fs::remove_dir_all(&dir).ok();
    /// ```
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves a usable file handle; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `events` (one write), then `fsync`s if `sync`, else marks the file for the next
    /// [`Spool::sync`].
    ///
    /// ```
    /// use portcullis::audit::spool::Spool;
    /// # let dir = std::env::temp_dir().join(format!("portcullis-doc-{}-spool-append", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// let spool = Spool::open(&dir).unwrap();
    /// # let a = portcullis::audit::AuditEvent {
    /// #     id: portcullis::audit::uuid_v7(),
    /// #     ts_ms: 1,
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
    /// # let b = portcullis::audit::AuditEvent {
    /// #     id: portcullis::audit::uuid_v7(),
    /// #     ts_ms: 2,
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
    /// spool.append(&[a], true).unwrap(); // on disk now
    /// assert!(!spool.is_dirty());
    /// spool.append(&[b], false).unwrap(); // on disk at the next `sync`
    /// assert!(spool.is_dirty());
    /// # std::fs::remove_dir_all(&dir).ok();
    /// ```
    pub fn append(&self, events: &[AuditEvent], sync: bool) -> io::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(events.len() * 320);
        for e in events {
            serde_json::to_writer(&mut buf, e).map_err(io::Error::other)?;
            buf.push(b'\n');
        }
        let mut st = self.lock();
        if st.file.is_none() {
            let mut options = OpenOptions::new();
            options.create(true).append(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let f = options.open(self.dir.join(SPOOL_FILE))?;
            st.file = Some(f);
        }
        let f = st.file.as_mut().expect("opened above");
        if let Err(e) = f.write_all(&buf) {
            // A partial line may be left; a newline keeps the next append parseable.
            let _ = f.write_all(b"\n");
            st.file = None;
            return Err(e);
        }
        if sync {
            f.sync_data()?;
        } else {
            st.dirty = true;
        }
        self.pending
            .fetch_add(events.len() as u64, Ordering::AcqRel);
        Ok(())
    }

    /// `fsync`s appends not yet synced.
    ///
    /// ```
    /// use portcullis::audit::spool::Spool;
    /// # let dir = std::env::temp_dir().join(format!("portcullis-doc-{}-spool-sync", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// let spool = Spool::open(&dir).unwrap();
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
    /// spool.append(&[event], false).unwrap();
    /// spool.sync().unwrap();
    /// assert!(!spool.is_dirty());
    /// # std::fs::remove_dir_all(&dir).ok();
    /// ```
    pub fn sync(&self) -> io::Result<()> {
        let mut st = self.lock();
        if st.dirty {
            if let Some(f) = &st.file {
                f.sync_data()?;
            }
            st.dirty = false;
        }
        Ok(())
    }

    /// True when appends wait for an `fsync`.
    ///
    /// ```
    /// use portcullis::audit::spool::Spool;
    /// # let dir = std::env::temp_dir().join(format!("portcullis-doc-{}-spool-dirty", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// let spool = Spool::open(&dir).unwrap();
    /// assert!(!spool.is_dirty());
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
    /// spool.append(&[event], false).unwrap();
    /// assert!(spool.is_dirty());
    /// # std::fs::remove_dir_all(&dir).ok();
    /// ```
    pub fn is_dirty(&self) -> bool {
        self.lock().dirty
    }

    /// The file to replay next: a leftover replay file, or the append file renamed to it.
    /// `None` when the spool is empty.
    ///
    /// ```
    /// use portcullis::audit::spool::Spool;
    /// # let dir = std::env::temp_dir().join(format!("portcullis-doc-{}-spool-take", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// let spool = Spool::open(&dir).unwrap();
    /// assert_eq!(spool.take_for_replay().unwrap(), None); // nothing to replay
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
    /// spool.append(&[event], true).unwrap();
    /// let file = spool.take_for_replay().unwrap().unwrap();
    /// // Until it is finished, the same file is handed out again (after a crash, too).
    /// assert_eq!(spool.take_for_replay().unwrap(), Some(file));
    /// # std::fs::remove_dir_all(&dir).ok();
    /// ```
    pub fn take_for_replay(&self) -> io::Result<Option<PathBuf>> {
        let replay = self.dir.join(REPLAY_FILE);
        if replay.exists() {
            return Ok(Some(replay));
        }
        let mut st = self.lock();
        let active = self.dir.join(SPOOL_FILE);
        match fs::metadata(&active) {
            Ok(m) if m.len() > 0 => {}
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        }
        if let Some(f) = st.file.take() {
            f.sync_data()?;
        }
        st.dirty = false;
        fs::rename(&active, &replay)?;
        sync_dir(&self.dir)?;
        Ok(Some(replay))
    }

    /// Reads a spool file in batches of `batch` events, skipping the first `skip` events (ones
    /// already replayed from it) and unreadable lines (a torn last append).
    ///
    /// ```
    /// use portcullis::audit::spool::Spool;
    /// # let dir = std::env::temp_dir().join(format!("portcullis-doc-{}-spool-read", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// let spool = Spool::open(&dir).unwrap();
    /// # let a = portcullis::audit::AuditEvent {
    /// #     id: portcullis::audit::uuid_v7(),
    /// #     ts_ms: 1,
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
    /// # let b = portcullis::audit::AuditEvent {
    /// #     id: portcullis::audit::uuid_v7(),
    /// #     ts_ms: 2,
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
    /// spool.append(&[a, b], true).unwrap();
    /// let file = spool.take_for_replay().unwrap().unwrap();
    /// // Resume a replay after the first event.
    /// let mut reader = Spool::read(&file, 1, 100).unwrap();
    /// let mut lines = 0;
    /// let rest = reader.next_batch(&mut lines).unwrap();
    /// assert_eq!((rest.len(), rest[0].ts_ms, lines), (1, 2, 2));
    /// # std::fs::remove_dir_all(&dir).ok();
    /// ```
    pub fn read(path: &Path, skip: u64, batch: usize) -> io::Result<SpoolReader> {
        Ok(SpoolReader {
            lines: BufReader::with_capacity(1 << 16, File::open(path)?).split(b'\n'),
            skip,
            batch: batch.max(1),
            path: path.to_path_buf(),
        })
    }

    /// Removes a fully replayed file; `events` were in it.
    ///
    /// ```
    /// use portcullis::audit::spool::Spool;
    /// # let dir = std::env::temp_dir().join(format!("portcullis-doc-{}-spool-finish", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// let spool = Spool::open(&dir).unwrap();
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
    /// spool.append(&[event], true).unwrap();
    /// let file = spool.take_for_replay().unwrap().unwrap();
    /// spool.finish_replay(&file, 1).unwrap();
    /// assert!(!file.exists());
    /// assert_eq!(spool.pending(), 0);
    /// # std::fs::remove_dir_all(&dir).ok();
    /// ```
    pub fn finish_replay(&self, path: &Path, events: u64) -> io::Result<()> {
        fs::remove_file(path)?;
        sync_dir(&self.dir)?;
        let _ = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| {
                Some(p.saturating_sub(events))
            });
        Ok(())
    }
}

/// Batches of events read from a spool file.
///
/// ```
/// use portcullis::audit::spool::{Spool, SpoolReader};
/// # let dir = std::env::temp_dir().join(format!("portcullis-doc-{}-spool-reader", std::process::id()));
/// # let _ = std::fs::remove_dir_all(&dir);
/// let spool = Spool::open(&dir).unwrap();
/// # let a = portcullis::audit::AuditEvent {
/// #     id: portcullis::audit::uuid_v7(),
/// #     ts_ms: 1,
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
/// # let b = portcullis::audit::AuditEvent {
/// #     id: portcullis::audit::uuid_v7(),
/// #     ts_ms: 2,
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
/// # let c = portcullis::audit::AuditEvent {
/// #     id: portcullis::audit::uuid_v7(),
/// #     ts_ms: 3,
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
/// spool.append(&[a, b, c], true).unwrap();
/// let file = spool.take_for_replay().unwrap().unwrap();
/// let mut reader: SpoolReader = Spool::read(&file, 0, 2).unwrap();
/// let mut lines = 0;
/// let mut sizes = Vec::new();
/// loop {
///     let batch = reader.next_batch(&mut lines).unwrap();
///     if batch.is_empty() {
///         break;
///     }
///     sizes.push(batch.len());
/// }
/// assert_eq!((sizes, lines), (vec![2, 1], 3));
/// # std::fs::remove_dir_all(&dir).ok();
/// ```
#[derive(Debug)]
pub struct SpoolReader {
    lines: io::Split<BufReader<File>>,
    skip: u64,
    batch: usize,
    path: PathBuf,
}

impl SpoolReader {
    /// The next batch; empty at the end. Counts lines (skipped included) in `lines_read`.
    ///
    /// ```
    /// use std::io::Write;
    /// use portcullis::audit::spool::Spool;
    /// # let dir = std::env::temp_dir().join(format!("portcullis-doc-{}-spool-next", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// let spool = Spool::open(&dir).unwrap();
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
    /// spool.append(&[event], true).unwrap();
    /// let file = spool.take_for_replay().unwrap().unwrap();
    /// // A torn last line (a crash mid-append) is counted and skipped.
    /// std::fs::OpenOptions::new().append(true).open(&file).unwrap().write_all(b"{\"id\":").unwrap();
    /// let mut lines = 0;
    /// let batch = Spool::read(&file, 0, 100).unwrap().next_batch(&mut lines).unwrap();
    /// assert_eq!((batch.len(), lines), (1, 2));
    /// # std::fs::remove_dir_all(&dir).ok();
    /// ```
    pub fn next_batch(&mut self, lines_read: &mut u64) -> io::Result<Vec<AuditEvent>> {
        let mut out = Vec::with_capacity(self.batch);
        while out.len() < self.batch {
            let Some(line) = self.lines.next() else { break };
            let line = line?;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            *lines_read += 1;
            if self.skip > 0 {
                self.skip -= 1;
                continue;
            }
            match serde_json::from_slice::<AuditEvent>(&line) {
                Ok(e) => out.push(e),
                Err(e) => tracing::warn!(
                    target: "portcullis::audit",
                    "skipping an unreadable line of {}: {e}",
                    self.path.display()
                ),
            }
        }
        Ok(out)
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates the spool folder (mode 0700) or checks the one there: it must belong to this
/// process's user, or another local user could plant events for the store to replay (forged
/// audit rows) or read the events spooled; one too open is narrowed to 0700.
#[cfg(unix)]
fn private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    // The owner of /proc/self is the process's effective user; elsewhere, that of a file it
    // creates.
    let me = match fs::metadata("/proc/self") {
        Ok(m) => m.uid(),
        Err(_) => {
            let probe = dir.join(".owner-probe");
            let uid = File::create(&probe)
                .and_then(|f| f.metadata())
                .map(|m| m.uid());
            let _ = fs::remove_file(&probe);
            uid?
        }
    };
    let foreign = |uid: u32, what: &str| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{what} belongs to uid {uid}, not to this process's user (uid {me}): another \
                 user could plant or read audit events there; use a folder of the gateway's own"
            ),
        )
    };
    let link = fs::symlink_metadata(dir)?;
    if link.file_type().is_symlink() && link.uid() != me {
        return Err(foreign(link.uid(), "the spool folder's symlink"));
    }
    let meta = fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other("the spool path is not a folder"));
    }
    if meta.uid() != me {
        return Err(foreign(meta.uid(), "the spool folder"));
    }
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn private_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)
}

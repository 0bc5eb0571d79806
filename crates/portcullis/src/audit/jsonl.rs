//! `jsonl://PATH` and `stdout`: one JSON object per line.
//!
//! Each line is an [`AuditEvent`] with, beside `ts_ms` (Unix milliseconds), the `ts` column
//! of DESIGN §5 as RFC 3339 UTC with milliseconds (`"ts":"2026-12-07T21:08:33.123Z"`), for
//! people and log collectors. Readers go by `ts_ms`, so files written before `ts` was added
//! read the same.
//!
//! The file is appended to and `fsync`'d per batch. When it would grow past `max_bytes`
//! (default 64 MiB) it is rotated: `PATH.N-1` → `PATH.N`, …, `PATH` → `PATH.1`, keeping
//! `keep` old files (default 5); the oldest is deleted. That is the retention of this store.
//!
//! A file cannot ignore duplicate ids the way a database does: an event replayed from the
//! spool after a crash (stored, but the crash came before the spool knew) may appear twice.
//! Readers that need exactly-once counts dedupe by `id`, which `audit query` does.
//!
//! ```no_run
//! use portcullis::audit::jsonl::JsonlStore;
//! let store = JsonlStore::open("/var/log/portcullis/audit.jsonl").unwrap().max_bytes(16 << 20).keep(10);
//! ```

use std::collections::{HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::AuditEvent;
use super::query::{AuditQuery, TailCursor};
use super::store::{AuditError, AuditStore};
use super::summary::{AuditSummary, Summarizer, SummaryQuery};
use crate::auth::BoxFuture;

/// The JSON-lines file [`AuditStore`].
///
/// ```
/// use portcullis::audit::{AuditQuery, AuditStore, jsonl::JsonlStore};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// # let path = std::env::temp_dir().join(format!("portcullis-doc-{}-jsonl-store.jsonl", std::process::id()));
/// # let _ = std::fs::remove_file(&path);
/// let store = JsonlStore::open(&path).unwrap();
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
/// let text = std::fs::read_to_string(&path).unwrap();
/// assert!(text.starts_with('{') && text.ends_with("}\n")); // one JSON object per line
/// assert!(text.contains(r#""ts":"1970-01-01T00:00:00.000Z""#) && text.contains(r#""ts_ms":0"#));
/// assert_eq!(store.query(&AuditQuery::new()).await.unwrap().len(), 1);
/// # std::fs::remove_file(&path).ok();
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct JsonlStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: Mutex<Option<File>>,
}

impl JsonlStore {
    /// Opens (or creates) the file at `path`.
    ///
    /// ```
    /// use portcullis::audit::jsonl::JsonlStore;
    /// # let path = std::env::temp_dir().join(format!("portcullis-doc-{}-jsonl-open.jsonl", std::process::id()));
    /// # let _ = std::fs::remove_file(&path);
    /// let store = JsonlStore::open(&path)?;
    /// assert!(path.exists()); // created at once, so a bad path fails at start-up
    /// # std::fs::remove_file(&path).ok();
    /// # Ok::<(), portcullis::audit::AuditError>(())
    /// ```
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, AuditError> {
        let path = path.into();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)
                .map_err(|e| AuditError::Config(format!("{}: {e}", dir.display())))?;
        }
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| AuditError::Config(format!("{}: {e}", path.display())))?;
        Ok(JsonlStore {
            inner: Arc::new(Inner {
                path,
                max_bytes: 64 << 20,
                keep: 5,
                file: Mutex::new(None),
            }),
        })
    }

    /// Rotates when the file would exceed `bytes`.
    ///
    /// ```
    /// use portcullis::audit::{AuditQuery, AuditStore, jsonl::JsonlStore};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// # let path = std::env::temp_dir().join(format!("portcullis-doc-{}-jsonl-max.jsonl", std::process::id()));
    /// # let _ = std::fs::remove_file(&path);
    /// let store = JsonlStore::open(&path).unwrap().max_bytes(1); // rotate before every write
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
    /// store.write(&[a]).await.unwrap();
    /// store.write(&[b]).await.unwrap();
    /// let rotated = std::path::PathBuf::from(format!("{}.1", path.display()));
    /// assert!(rotated.exists());
    /// // Queries read the rotated files too.
    /// assert_eq!(store.query(&AuditQuery::new()).await.unwrap().len(), 2);
    /// # std::fs::remove_file(&rotated).ok();
    /// # std::fs::remove_file(&path).ok();
    /// # });
    /// ```
    pub fn max_bytes(self, bytes: u64) -> Self {
        self.with(|i| i.max_bytes = bytes.max(1))
    }

    /// Keeps `n` rotated files.
    ///
    /// ```
    /// use portcullis::audit::{AuditQuery, AuditStore, jsonl::JsonlStore};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// # let path = std::env::temp_dir().join(format!("portcullis-doc-{}-jsonl-keep.jsonl", std::process::id()));
    /// # let _ = std::fs::remove_file(&path);
    /// // Keep no rotated file: a full file is deleted.
    /// let store = JsonlStore::open(&path).unwrap().max_bytes(1).keep(0);
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
    /// store.write(&[a]).await.unwrap();
    /// store.write(&[b]).await.unwrap();
    /// let left = store.query(&AuditQuery::new()).await.unwrap();
    /// assert_eq!(left.len(), 1);
    /// assert_eq!(left[0].ts_ms, 2);
    /// # std::fs::remove_file(&path).ok();
    /// # });
    /// ```
    pub fn keep(self, n: u32) -> Self {
        self.with(|i| i.keep = n)
    }

    fn with(self, f: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = Arc::try_unwrap(self.inner).unwrap_or_else(|a| Inner {
            path: a.path.clone(),
            max_bytes: a.max_bytes,
            keep: a.keep,
            file: Mutex::new(None),
        });
        f(&mut inner);
        JsonlStore {
            inner: Arc::new(inner),
        }
    }

    /// The live file; rotated ones are `PATH.1` (newest) … `PATH.N`.
    ///
    /// ```
    /// use portcullis::audit::jsonl::JsonlStore;
    /// # let path = std::env::temp_dir().join(format!("portcullis-doc-{}-jsonl-path.jsonl", std::process::id()));
    /// # let _ = std::fs::remove_file(&path);
    /// let store = JsonlStore::open(&path).unwrap();
    /// assert_eq!(store.path(), path);
    /// # std::fs::remove_file(&path).ok();
    /// ```
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Every file, oldest first.
    fn files(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = (1..=self.inner.keep)
            .rev()
            .map(|i| rotated(&self.inner.path, i))
            .collect();
        out.push(self.inner.path.clone());
        out
    }
}

fn rotated(path: &Path, i: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

impl Inner {
    fn append(&self, buf: &[u8]) -> io::Result<()> {
        let mut slot = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        let len = slot
            .as_ref()
            .map_or(Ok(0), |f| f.metadata().map(|m| m.len()))?;
        if len > 0 && len + buf.len() as u64 > self.max_bytes {
            *slot = None;
            self.rotate()?;
            *slot = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)?,
            );
        }
        let f = slot.as_mut().expect("opened above");
        if let Err(e) = f.write_all(buf) {
            *slot = None;
            return Err(e);
        }
        f.sync_data()
    }

    fn rotate(&self) -> io::Result<()> {
        if self.keep == 0 {
            return fs::remove_file(&self.path);
        }
        let _ = fs::remove_file(rotated(&self.path, self.keep));
        for i in (1..self.keep).rev() {
            let from = rotated(&self.path, i);
            if from.exists() {
                fs::rename(&from, rotated(&self.path, i + 1))?;
            }
        }
        fs::rename(&self.path, rotated(&self.path, 1))
    }
}

/// One line as written: `ts` first, for whoever reads the file by eye, then the event.
#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    #[serde(flatten)]
    event: &'a AuditEvent,
}

fn serialize(batch: &[AuditEvent]) -> Result<Vec<u8>, AuditError> {
    let mut buf = Vec::with_capacity(batch.len() * 350);
    for e in batch {
        let line = Line {
            ts: e.ts_rfc3339(),
            event: e,
        };
        serde_json::to_writer(&mut buf, &line).map_err(AuditError::unavailable)?;
        buf.push(b'\n');
    }
    Ok(buf)
}

/// Complete lines of `f` from `offset`; returns the events and the offset after the last
/// complete line.
fn read_from(f: &mut File, offset: u64, limit: usize) -> io::Result<(Vec<AuditEvent>, u64)> {
    f.seek(SeekFrom::Start(offset))?;
    let mut r = BufReader::new(f);
    let mut out = Vec::new();
    let mut pos = offset;
    let mut line = Vec::new();
    while out.len() < limit {
        line.clear();
        let n = r.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            break; // End, or a line still being written.
        }
        pos += n as u64;
        if let Ok(e) = serde_json::from_slice::<AuditEvent>(&line) {
            out.push(e);
        }
    }
    Ok((out, pos))
}

/// Calls `f` with each event of `files` (oldest first) that matches `query`, once per id: a
/// replayed duplicate keeps its first position. Unreadable lines are skipped; missing files
/// are nothing to read.
fn scan(
    files: &[PathBuf],
    query: &AuditQuery,
    mut f: impl FnMut(AuditEvent),
) -> Result<(), AuditError> {
    let mut seen = HashSet::new();
    for path in files {
        let Ok(file) = File::open(path) else { continue };
        for line in BufReader::new(file).split(b'\n') {
            let line =
                line.map_err(|e| AuditError::unavailable(format!("{}: {e}", path.display())))?;
            let Ok(e) = serde_json::from_slice::<AuditEvent>(&line) else {
                continue;
            };
            if query.matches(&e) && seen.insert(e.id.clone()) {
                f(e);
            }
        }
    }
    Ok(())
}

impl AuditStore for JsonlStore {
    fn describe(&self) -> String {
        format!("jsonl:{}", self.inner.path.display())
    }

    fn write<'a>(&'a self, batch: &'a [AuditEvent]) -> BoxFuture<'a, Result<(), AuditError>> {
        Box::pin(async move {
            let buf = serialize(batch)?;
            let inner = self.inner.clone();
            tokio::task::spawn_blocking(move || inner.append(&buf))
                .await
                .map_err(|e| AuditError::unavailable(format!("jsonl task: {e}")))?
                .map_err(|e| AuditError::unavailable(format!("{}: {e}", self.inner.path.display())))
        })
    }

    fn query<'a>(
        &'a self,
        query: &'a AuditQuery,
    ) -> BoxFuture<'a, Result<Vec<AuditEvent>, AuditError>> {
        let files = self.files();
        let query = query.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let limit = query.limit_or_default() as usize;
                let mut out = VecDeque::with_capacity(limit.min(4096));
                scan(&files, &query, |e| {
                    if out.len() == limit {
                        out.pop_front();
                    }
                    if limit > 0 {
                        out.push_back(e);
                    }
                })?;
                let mut v: Vec<AuditEvent> = out.into();
                // Stable: file order breaks ties within a millisecond.
                v.sort_by_key(|e| e.ts_ms);
                Ok(v)
            })
            .await
            .map_err(|e| AuditError::unavailable(format!("jsonl task: {e}")))?
        })
    }

    /// Folds every file, line by line, with a [`Summarizer`] (no cap: a file store has no
    /// index to count with); duplicate ids count once, as in `query`.
    fn summary<'a>(
        &'a self,
        q: &'a SummaryQuery,
    ) -> BoxFuture<'a, Result<AuditSummary, AuditError>> {
        let files = self.files();
        let q = q.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut s = Summarizer::new(&q);
                scan(&files, &q.window(), |e| s.add(&e))?;
                Ok(s.finish())
            })
            .await
            .map_err(|e| AuditError::unavailable(format!("jsonl task: {e}")))?
        })
    }

    fn tail<'a>(
        &'a self,
        cursor: &'a TailCursor,
        limit: u32,
    ) -> BoxFuture<'a, Result<(Vec<AuditEvent>, TailCursor), AuditError>> {
        let path = self.inner.path.clone();
        let previous = rotated(&path, 1);
        let cursor = cursor.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let io = |e: io::Error| AuditError::unavailable(format!("{}: {e}", path.display()));
                let mut f = File::open(&path).map_err(io)?;
                let meta = f.metadata().map_err(io)?;
                let limit = limit.max(1) as usize;
                let (inode, offset) = match cursor {
                    TailCursor::File { inode, offset } => (inode, offset),
                    _ => {
                        return Ok((
                            Vec::new(),
                            TailCursor::File {
                                inode: meta.ino(),
                                offset: meta.len(),
                            },
                        ));
                    }
                };
                if inode != meta.ino() {
                    // Rotated: finish the old file (now PATH.1), then start the new one.
                    let mut events = Vec::new();
                    if let Ok(mut old) = File::open(&previous)
                        && old.metadata().is_ok_and(|m| m.ino() == inode)
                    {
                        let (ev, _) = read_from(&mut old, offset, limit).map_err(io)?;
                        events = ev;
                    }
                    let (more, pos) = read_from(&mut f, 0, limit).map_err(io)?;
                    events.extend(more);
                    return Ok((
                        events,
                        TailCursor::File {
                            inode: meta.ino(),
                            offset: pos,
                        },
                    ));
                }
                let start = if meta.len() < offset { 0 } else { offset };
                let (events, pos) = read_from(&mut f, start, limit).map_err(io)?;
                Ok((events, TailCursor::File { inode, offset: pos }))
            })
            .await
            .map_err(|e| AuditError::unavailable(format!("jsonl task: {e}")))?
        })
    }
}

/// `stdout`: one JSON object per line on standard output (for log collectors). Cannot be
/// queried.
///
/// ```
/// use portcullis::audit::{AuditError, AuditQuery, AuditStore, jsonl::StdoutStore};
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// assert_eq!(StdoutStore.describe(), "stdout");
/// assert_eq!(StdoutStore.query(&AuditQuery::new()).await.unwrap_err(), AuditError::Unsupported("query"));
/// # });
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct StdoutStore;

impl AuditStore for StdoutStore {
    fn describe(&self) -> String {
        "stdout".into()
    }

    fn write<'a>(&'a self, batch: &'a [AuditEvent]) -> BoxFuture<'a, Result<(), AuditError>> {
        Box::pin(async move {
            let buf = serialize(batch)?;
            tokio::task::spawn_blocking(move || {
                let mut out = io::stdout().lock();
                out.write_all(&buf)?;
                out.flush()
            })
            .await
            .map_err(|e| AuditError::unavailable(format!("stdout task: {e}")))?
            .map_err(|e| AuditError::unavailable(format!("stdout: {e}")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditAction, Outcome};

    /// `stdout` and `jsonl://` share `serialize`: both write `ts` beside `ts_ms`.
    #[test]
    fn lines_carry_ts_and_ts_ms_and_read_back() {
        let event = AuditEvent {
            id: "id-1".into(),
            ts_ms: 1_796_677_713_123,
            action: AuditAction::Forbidden,
            outcome: Outcome::Denied,
            principal: None,
            client_ip: None,
            method: "GET".into(),
            route: "/**".into(),
            path: "/".into(),
            status: 403,
            request_id: "r".into(),
            metadata: serde_json::Value::Null,
        };
        let buf = serialize(std::slice::from_ref(&event)).expect("serializes");
        let text = String::from_utf8(buf).expect("UTF-8");
        assert!(
            text.starts_with(
                r#"{"ts":"2026-12-07T21:08:33.123Z","id":"id-1","ts_ms":1796677713123,"#
            ),
            "{text}"
        );
        assert!(text.ends_with("}\n"));
        let back: AuditEvent = serde_json::from_str(&text).expect("reads back");
        assert_eq!(back, event);
    }
}

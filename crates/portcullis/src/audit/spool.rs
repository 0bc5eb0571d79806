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

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::AuditEvent;

/// The append file's name.
pub const SPOOL_FILE: &str = "audit-spool.jsonl";
/// The name of the spool being replayed.
pub const REPLAY_FILE: &str = "audit-spool.replay.jsonl";

/// The spool folder and its two files.
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
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Spool> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
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
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Events waiting in the spool.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves a usable file handle; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `events` (one write), then `fsync`s if `sync`, else marks the file for the next
    /// [`Spool::sync`].
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
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(SPOOL_FILE))?;
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
    pub fn is_dirty(&self) -> bool {
        self.lock().dirty
    }

    /// The file to replay next: a leftover replay file, or the append file renamed to it.
    /// `None` when the spool is empty.
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
    pub fn read(path: &Path, skip: u64, batch: usize) -> io::Result<SpoolReader> {
        Ok(SpoolReader {
            lines: BufReader::with_capacity(1 << 16, File::open(path)?).split(b'\n'),
            skip,
            batch: batch.max(1),
            path: path.to_path_buf(),
        })
    }

    /// Removes a fully replayed file; `events` were in it.
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
#[derive(Debug)]
pub struct SpoolReader {
    lines: io::Split<BufReader<File>>,
    skip: u64,
    batch: usize,
    path: PathBuf,
}

impl SpoolReader {
    /// The next batch; empty at the end. Counts lines (skipped included) in `lines_read`.
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

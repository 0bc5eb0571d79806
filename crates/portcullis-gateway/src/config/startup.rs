//! What `serve` can only find out by trying, tried ahead by `check-config`: the security
//! layer with its stores, the TLS certificate and key, the audit store and its spool.
//!
//! Each check makes the same call `serve` makes at start (so the two can never disagree on
//! what is acceptable), and files or folders that exist only because of the check are
//! removed afterwards: a check leaves the machine as it found it.

use std::path::{Path, PathBuf};

use portcullis::audit::AuditError;
use portcullis::audit::jsonl::JsonlStore;
use portcullis::audit::spool::Spool;
use portcullis::audit::sqlite::SqliteAuditStore;

use super::{AuditStore, ConfigError, GatewayConfig};
use crate::tls::TlsAcceptorHandle;

impl GatewayConfig {
    /// Everything `serve` would refuse at start that the file alone does not show: the
    /// security layer (the SQLite rate-limit store opened), a `[server.tls]` certificate or
    /// key that does not load, and a SQLite or JSONL audit store (or the audit spool) that
    /// cannot be opened or created. Every problem is returned, each on its key. Network
    /// stores (Redis, PostgreSQL) are not contacted: `serve` starts without them too.
    ///
    /// ```
    /// use portcullis_gateway::config::GatewayConfig;
    /// # let dir = std::env::temp_dir().join(format!("portcullis-doc-startup-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// std::fs::write(dir.join("not-a-folder"), "")?;
    /// let text = r#"
    /// server.upstream = "http://127.0.0.1:3000"
    /// storage.audit = "jsonl://not-a-folder/audit.jsonl"
    /// "#;
    /// let config = GatewayConfig::from_str(text, &dir.join("portcullis.toml").display().to_string())?;
    /// let errors = config.startup_errors();
    /// assert_eq!(errors[0].key, "storage.audit");
    /// assert!(errors[0].reason.contains("not-a-folder"), "{}", errors[0]);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn startup_errors(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if let Err(e) = self.security_layer() {
            errors.push(e);
        }
        if let Some(tls) = &self.server.tls
            && let Err(e) = TlsAcceptorHandle::from_config(tls)
        {
            errors.push(e.to_config_error(tls));
        }
        if let Err(e) = self.try_audit_store() {
            errors.push(ConfigError {
                key: "storage.audit".into(),
                reason: e.to_string(),
            });
        }
        errors
    }

    /// Opens the file audit store and the spool as `Stores::open_audit` does, then undoes
    /// what the opening created.
    fn try_audit_store(&self) -> Result<(), AuditError> {
        match &self.storage.audit {
            AuditStore::Sqlite(path) => {
                // SQLite may add its journal files beside the database.
                let created = Created::before(path, &["-wal", "-shm", "-journal"]);
                let opened = SqliteAuditStore::open(path).map(drop);
                created.remove();
                opened?;
            }
            AuditStore::Jsonl(path) => {
                let created = Created::before(path, &[]);
                let opened = JsonlStore::open(path).map(drop);
                created.remove();
                opened?;
            }
            // Not contacted: `serve` starts while the database is down (events spool).
            AuditStore::Postgres(_) | AuditStore::Stdout => {}
        }
        let spool = self.audit_spool_dir();
        let created = Created::before_dir(&spool);
        let opened = Spool::open(&spool).map(drop);
        created.remove();
        // The same words as the writer's own refusal (`AuditWriter::start`).
        opened.map_err(|e| AuditError::Config(format!("spool {}: {e}", spool.display())))
    }
}

/// The files and folders a check may create that did not exist before it.
struct Created {
    files: Vec<PathBuf>,
    /// Deepest first, so each is empty by the time it is removed.
    dirs: Vec<PathBuf>,
}

impl Created {
    /// Notes, before opening `file`, which of it, its `suffixes` siblings and its folders
    /// are missing.
    fn before(file: &Path, suffixes: &[&str]) -> Created {
        let mut files = vec![file.to_path_buf()];
        for suffix in suffixes {
            let mut name = file.as_os_str().to_os_string();
            name.push(suffix);
            files.push(PathBuf::from(name));
        }
        files.retain(|f| f.symlink_metadata().is_err());
        Created {
            files,
            dirs: file.parent().map(missing_dirs).unwrap_or_default(),
        }
    }

    /// Notes, before creating the folder `dir`, which of it and its parents are missing.
    fn before_dir(dir: &Path) -> Created {
        Created {
            files: Vec::new(),
            dirs: missing_dirs(dir),
        }
    }

    /// Removes what was missing before and exists now. Best effort: a folder something
    /// else wrote into meanwhile is not empty, and stays.
    fn remove(self) {
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// `dir` and its ancestors that do not exist, deepest first.
fn missing_dirs(dir: &Path) -> Vec<PathBuf> {
    dir.ancestors()
        .filter(|d| !d.as_os_str().is_empty())
        .take_while(|d| d.symlink_metadata().is_err())
        .map(Path::to_path_buf)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_the_check_created_is_removed() {
        let base = std::env::temp_dir().join(format!("pc-startup-created-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        std::fs::write(base.join("kept.jsonl"), "{}\n").unwrap();
        // An existing file and folder stay.
        let kept = Created::before(&base.join("kept.jsonl"), &[]);
        assert!(kept.files.is_empty() && kept.dirs.is_empty());
        kept.remove();
        assert!(base.join("kept.jsonl").exists());
        // New folders and a new file go, deepest first.
        let file = base.join("a/b/audit.db");
        let created = Created::before(&file, &["-wal"]);
        assert_eq!(created.dirs, [base.join("a/b"), base.join("a")]);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, "").unwrap();
        created.remove();
        assert!(!base.join("a").exists());
        std::fs::remove_dir_all(&base).unwrap();
    }
}

//! Hot reload: the live configuration, swapped whole on SIGHUP or when the file changes.
//!
//! A [`Generation`] is one validated config with the security layer and proxy built from
//! it. Each request reads the current generation once and keeps it to the end, so a reload
//! never mixes two policies in one request. A new file is loaded, validated and built
//! before the swap; if any of that fails, every error is logged as `FILE: KEY: REASON` and
//! the previous generation keeps serving.
//!
//! The file is polled every second (modification time and length), so no watcher crate or
//! platform API is needed, and editors that replace the file are handled like those that
//! rewrite it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use portcullis::layer::SecurityService;
use tokio::signal::unix::Signal;
use tokio::sync::watch;
use tower::Layer;

use crate::config::{ConfigError, ConfigErrors, GatewayConfig, ServerConfig, Stores};
use crate::proxy::Proxy;

/// How often the config file is checked for changes.
///
/// ```
/// # use std::time::Duration;
/// assert_eq!(portcullis_gateway::reload::POLL_INTERVAL, Duration::from_secs(1));
/// ```
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The service requests go through: the security layer around the proxy.
///
/// ```
/// use bytes::Bytes;
/// use http_body_util::Empty;
/// use portcullis_gateway::{config::{GatewayConfig, Stores}, reload::{GatewayService, Generation}};
/// use tower::ServiceExt;
/// let toml = r#"
/// server.upstream = "http://127.0.0.1:3000"
/// route = [{ path = "/**", methods = ["GET"] }]
/// "#;
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let service: GatewayService = Generation::build(GatewayConfig::from_str(toml, "portcullis.toml")?, &Stores::default())?.service;
/// let delete = http::Request::delete("/items/1").header("host", "gw.example.com").body(Empty::<Bytes>::new())?;
/// assert_eq!(service.oneshot(delete).await?.status(), 405); // refused before the proxy
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub type GatewayService = SecurityService<Proxy>;

/// One validated configuration and what was built from it.
///
/// ```
/// use portcullis_gateway::{config::{GatewayConfig, Stores}, reload::Generation};
/// let config = GatewayConfig::from_str("server.upstream = \"http://127.0.0.1:3000\"", "portcullis.toml")?;
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let generation = Generation::build(config, &Stores::default())?;
/// assert_eq!(generation.proxy.upstream_authority(), "127.0.0.1:3000");
/// assert!(generation.config.routes.is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Generation {
    /// The config.
    pub config: Arc<GatewayConfig>,
    /// The security layer around the proxy.
    pub service: GatewayService,
    /// The proxy alone (for readiness checks).
    pub proxy: Proxy,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("proxy", &self.proxy)
            .finish_non_exhaustive()
    }
}

impl Generation {
    /// Builds the layer and the proxy; must be called within a Tokio runtime. Stores
    /// (rate-limit counters, the brute-force tracker) come from `stores`, so they outlive
    /// the generation when the storage settings stay the same.
    ///
    /// ```
    /// use portcullis_gateway::{config::{GatewayConfig, Stores}, reload::Generation};
    /// // The file is valid, but this build cannot proxy to it:
    /// let config = GatewayConfig::from_str("server.upstream = \"https://app.internal\"", "portcullis.toml")?;
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let err = Generation::build(config, &Stores::default()).unwrap_err();
    /// assert_eq!(err.to_string(), "server.upstream: only http:// upstreams are supported in this build");
    /// # });
    /// # Ok::<(), portcullis_gateway::config::ConfigErrors>(())
    /// ```
    pub fn build(config: GatewayConfig, stores: &Stores) -> Result<Generation, ConfigError> {
        let layer = config.security_layer_with(stores)?;
        let proxy = Proxy::for_config(&config)?;
        Ok(Generation {
            service: layer.layer(proxy.clone()),
            proxy,
            config: Arc::new(config),
        })
    }
}

/// The generation in force, shared by every connection.
///
/// ```
/// # use std::sync::Arc;
/// use portcullis_gateway::{config::{GatewayConfig, Stores}, reload::{Generation, Live}};
/// let config = GatewayConfig::from_str("server.upstream = \"http://127.0.0.1:3000\"", "portcullis.toml")?;
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let stores = Arc::new(Stores::default());
/// let live = Live::new(Generation::build(config, &stores)?, stores);
/// let for_a_connection = live.clone(); // clones share the generation in force
/// assert!(Arc::ptr_eq(&live.current(), &for_a_connection.current()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct Live {
    current: Arc<RwLock<Arc<Generation>>>,
    stores: Arc<Stores>,
}

impl Live {
    /// Starts with `generation`, built from `stores`.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// use portcullis_gateway::{config::{GatewayConfig, Stores}, reload::{Generation, Live}};
    /// let config = GatewayConfig::from_str("server.upstream = \"http://127.0.0.1:3000\"", "portcullis.toml")?;
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let stores = Arc::new(Stores::default());
    /// let live = Live::new(Generation::build(config, &stores)?, stores);
    /// assert_eq!(live.current().proxy.upstream_authority(), "127.0.0.1:3000");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(generation: Generation, stores: Arc<Stores>) -> Self {
        Live {
            current: Arc::new(RwLock::new(Arc::new(generation))),
            stores,
        }
    }

    /// The generation in force.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// # let config = portcullis_gateway::config::GatewayConfig::from_str("server.upstream = \"http://127.0.0.1:3000\"", "portcullis.toml")?;
    /// # let stores = std::sync::Arc::new(portcullis_gateway::config::Stores::default());
    /// # let live = portcullis_gateway::reload::Live::new(portcullis_gateway::reload::Generation::build(config, &stores)?, stores);
    /// // Read once per request, and kept to its end: a reload never mixes two policies.
    /// let generation = live.current();
    /// assert_eq!(generation.config.server.upstream_kind, portcullis_gateway::config::UpstreamKind::Generic);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn current(&self) -> Arc<Generation> {
        // A poisoned lock still holds a complete generation: the swap is one assignment.
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The stores shared by every generation.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// # let config = portcullis_gateway::config::GatewayConfig::from_str("server.upstream = \"http://127.0.0.1:3000\"", "portcullis.toml")?;
    /// # let stores = std::sync::Arc::new(portcullis_gateway::config::Stores::default());
    /// # let live = portcullis_gateway::reload::Live::new(portcullis_gateway::reload::Generation::build(config, &stores)?, stores);
    /// // No `open_audit` was called: nothing is audited, and nothing needs flushing.
    /// assert!(live.stores().audit_writer().is_none());
    /// live.stores().shutdown_audit().await;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn stores(&self) -> &Stores {
        &self.stores
    }

    fn replace(&self, generation: Generation) {
        let new = Arc::new(generation);
        match self.current.write() {
            Ok(mut g) => *g = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }
}

/// Loads `path`, builds a generation and swaps it in; on any error the old one stays.
///
/// ```
/// # use std::{path::Path, sync::Arc};
/// use portcullis_gateway::reload::reload;
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// # let config = portcullis_gateway::config::GatewayConfig::from_str("server.upstream = \"http://127.0.0.1:3000\"", "portcullis.toml")?;
/// # let stores = std::sync::Arc::new(portcullis_gateway::config::Stores::default());
/// # let live = portcullis_gateway::reload::Live::new(portcullis_gateway::reload::Generation::build(config, &stores)?, stores);
/// let before = live.current();
/// let err = reload(Path::new("/no/such/portcullis.toml"), &live).await.unwrap_err();
/// assert!(err.to_string().starts_with("/no/such/portcullis.toml: cannot read the file"));
/// assert!(Arc::ptr_eq(&before, &live.current())); // the previous generation keeps serving
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub async fn reload(path: &Path, live: &Live) -> Result<(), ConfigErrors> {
    let file = path.display().to_string();
    let config = GatewayConfig::from_file(path)?;
    live.stores
        .open_audit(&config)
        .await
        .map_err(|e| ConfigErrors {
            file: file.clone(),
            errors: vec![e],
        })?;
    let generation = Generation::build(config, &live.stores).map_err(|e| ConfigErrors {
        file: file.clone(),
        errors: vec![e],
    })?;
    for w in generation.config.unapplied_settings() {
        tracing::warn!("{file}: {}: warning: {}", w.key, w.reason);
    }
    let old = live.current();
    for key in restart_only_changes(&old.config.server, &generation.config.server) {
        tracing::warn!("{file}: {key}: changed; takes effect after a restart");
    }
    live.replace(generation);
    Ok(())
}

/// `[server]` keys that only apply when the process starts.
fn restart_only_changes(old: &ServerConfig, new: &ServerConfig) -> Vec<&'static str> {
    let mut keys = Vec::new();
    if old.listen != new.listen {
        keys.push("server.listen");
    }
    if old.admin_listen != new.admin_listen {
        keys.push("server.admin_listen");
    }
    if old.max_connections != new.max_connections {
        keys.push("server.max_connections");
    }
    if old.workers != new.workers {
        keys.push("server.workers");
    }
    if old.threading != new.threading {
        keys.push("server.threading");
    }
    if old.tls.is_some() != new.tls.is_some() {
        keys.push("server.tls");
    }
    keys
}

/// What change detection compares: a file's modification and change times, length, inode
/// and device, so an in-place write, a same-length rewrite and an editor's rename-over all
/// count. `None` when the file cannot be read.
///
/// ```
/// use portcullis_gateway::reload::FileStamp;
/// let path = std::env::temp_dir().join(format!("portcullis-doc-stamp-{}.toml", std::process::id()));
/// std::fs::write(&path, "auth.failed_limit = 5\n")?;
/// let loaded = FileStamp::of(&path);
/// std::fs::write(&path, "auth.failed_limit = 10\n")?;
/// assert_ne!(FileStamp::of(&path), loaded); // a change: the watcher reloads
/// # std::fs::remove_file(&path)?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    modified: SystemTime,
    changed: (i64, i64),
    len: u64,
    inode: u64,
    device: u64,
}

impl FileStamp {
    /// Takes the stamp of `path` now. Take it *before* reading the file, so a write that
    /// lands between the read and the watcher's start is still seen as a change.
    ///
    /// ```
    /// use portcullis_gateway::reload::FileStamp;
    /// assert!(FileStamp::of(std::path::Path::new("/no/such/file")).is_none());
    /// ```
    pub fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            modified: meta.modified().ok()?,
            changed: (meta.ctime(), meta.ctime_nsec()),
            len: meta.len(),
            inode: meta.ino(),
            device: meta.dev(),
        })
    }
}

/// Reloads on SIGHUP and when the file changes, until `shutdown` turns true. `hangup` must
/// be registered before the process announces it is ready, or an early SIGHUP kills it.
/// `loaded` is the file's stamp from before the serving config was read: any later write,
/// even one made before this task first runs, is a change.
///
/// ```no_run
/// # use std::path::PathBuf;
/// use tokio::signal::unix::{SignalKind, signal};
/// use portcullis_gateway::reload::{self, FileStamp};
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// let path = PathBuf::from("portcullis.toml");
/// let loaded = FileStamp::of(&path); // before the file is read
/// # let config = portcullis_gateway::config::GatewayConfig::from_file(&path)?;
/// # let stores = std::sync::Arc::new(portcullis_gateway::config::Stores::default());
/// # let live = portcullis_gateway::reload::Live::new(portcullis_gateway::reload::Generation::build(config, &stores)?, stores);
/// let hangup = signal(SignalKind::hangup())?; // before the process says it is ready
/// let (_stop, shutdown) = tokio::sync::watch::channel(false);
/// tokio::spawn(reload::watch(path, loaded, live, hangup, shutdown));
/// # Ok(()) }
/// ```
pub async fn watch(
    path: PathBuf,
    loaded: Option<FileStamp>,
    live: Live,
    mut hangup: Signal,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last = loaded;
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let why = tokio::select! {
            _ = crate::server::stopped(&mut shutdown) => return,
            _ = hangup.recv() => "SIGHUP",
            _ = tick.tick() => {
                let now = FileStamp::of(&path);
                if now == last || now.is_none() {
                    continue;
                }
                "file change"
            }
        };
        last = FileStamp::of(&path);
        match reload(&path, &live).await {
            Ok(()) => tracing::info!(
                "config reloaded ({why}): {} route(s)",
                live.current().config.routes.len()
            ),
            Err(errors) => {
                for line in errors.to_string().lines() {
                    tracing::error!("{line}");
                }
                tracing::error!("config reload ({why}) refused; the previous config keeps serving");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FileStamp;

    #[test]
    fn a_stamp_sees_appends_and_rename_over_with_the_same_length() {
        let dir = std::env::temp_dir().join(format!("portcullis-stamp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.toml");
        std::fs::write(&path, "a = 1\n").unwrap();
        let first = FileStamp::of(&path);
        assert!(first.is_some());
        assert_eq!(FileStamp::of(&path), first, "nothing changed");
        // An editor's save: a new file renamed over the old one, same length.
        let tmp = dir.join("p.toml.tmp");
        std::fs::write(&tmp, "a = 2\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let renamed = FileStamp::of(&path);
        assert_ne!(renamed, first, "same length, new inode");
        std::fs::write(&path, "a = 2\nb = 3\n").unwrap();
        assert_ne!(FileStamp::of(&path), renamed, "longer");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(FileStamp::of(&path), None);
    }
}

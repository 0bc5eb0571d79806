//! The gateway's configuration file: TOML, one file, every control.
//!
//! The file is parsed into a `toml::Table` and walked by hand (see `schema`), so that a
//! single run reports *every* error with its full key path, such as `route[2].path`,
//! `server.trusted_proxies[1]` or `auth.jwt.secret_env`. Indexes of `[[route]]` and
//! `[[auth.api_keys]]` count from 0 in file order. Unknown keys are errors everywhere.
//!
//! Secrets are never written in the file: keys such as `secret_env` name an environment
//! variable, read at load time into a [`Secret`] whose `Debug` prints `[redacted]`.
//! Relative paths (TLS files, SQLite and JSONL stores, `jwks_file`, `spool_dir`) are relative
//! to the directory of the config file.
//!
//! ```
//! use portcullis_gateway::config::GatewayConfig;
//! let text = r#"
//! [server]
//! upstream = "http://127.0.0.1:3000"
//!
//! [[route]]
//! path = "/api/public/**"
//! preset = "public"
//! rate_limit = "100/1m"
//! "#;
//! let config = GatewayConfig::from_str(text, "portcullis.toml").unwrap();
//! assert_eq!(config.routes[0].policy.limits()[0].requests, 100);
//! let layer = config.security_layer().unwrap();
//! ```

mod load;
mod schema;
mod startup;
pub mod values;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::Uri;
use portcullis::audit::StoreOptions;
use portcullis::audit::writer::{AuditWriter, WriterConfig};
use portcullis::auth::FailedAuthTracker;
use portcullis::ban::BanList;
use portcullis::cors::Cors;
use portcullis::headers::security::SecurityHeaders;
use portcullis::methods::MethodSet;
use portcullis::rate_limit::RateLimiter;
use portcullis::rate_limit::memory::MemoryStore;
use portcullis::rate_limit::redis::RedisStore;
use portcullis::rate_limit::sqlite::SqliteStore;
use portcullis::{Csp, Policy, Preset, SecurityLayer};

pub use values::{AuditStore, RateLimitStore, parse_duration};

/// The key of a TOML syntax error.
///
/// ```
/// use portcullis_gateway::config::{GatewayConfig, SYNTAX_KEY};
/// let err = GatewayConfig::from_str("[server\nlisten = 1", "portcullis.toml").unwrap_err();
/// assert_eq!(err.errors[0].key, SYNTAX_KEY);
/// assert!(err.to_string().starts_with("portcullis.toml: line 1, column 8: "), "{err}");
/// ```
pub const SYNTAX_KEY: &str = "(syntax)";
/// The key of an error reading the file itself.
///
/// ```
/// use portcullis_gateway::config::{FILE_KEY, GatewayConfig};
/// let err = GatewayConfig::from_file("/no/such/portcullis.toml").unwrap_err();
/// assert_eq!(err.errors[0].key, FILE_KEY);
/// assert!(err.to_string().starts_with("/no/such/portcullis.toml: cannot read the file: "), "{err}");
/// ```
pub const FILE_KEY: &str = "(file)";

/// The shortest HMAC secret accepted, in bytes (the output size of SHA-256).
///
/// ```
/// use portcullis_gateway::config::{GatewayConfig, MIN_HMAC_SECRET_BYTES};
/// # unsafe { std::env::set_var("DOC_SHORT_JWT_SECRET", "too-short") };
/// let err = GatewayConfig::from_str(r#"
/// server.upstream = "http://127.0.0.1:3000"
/// auth.jwt.secret_env = "DOC_SHORT_JWT_SECRET"
/// "#, "portcullis.toml").unwrap_err();
/// assert_eq!(err.errors[0].key, "auth.jwt.secret_env");
/// assert!(err.errors[0].reason.contains(&format!("is 9 bytes; use at least {MIN_HMAC_SECRET_BYTES}")));
/// ```
pub const MIN_HMAC_SECRET_BYTES: usize = 32;

/// One problem in the config file: where (`route[2].path`) and what.
///
/// ```
/// use portcullis_gateway::config::GatewayConfig;
/// let err = &GatewayConfig::from_str(r#"
/// server.upstream = "http://127.0.0.1:3000"
/// server.listen_addr = "0.0.0.0:80"
/// "#, "portcullis.toml").unwrap_err().errors[0];
/// assert_eq!(err.key, "server.listen_addr");
/// assert!(err.reason.starts_with("unknown key; expected one of listen, upstream,"));
/// assert!(err.to_string().starts_with("server.listen_addr: unknown key;"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The full key path, or [`SYNTAX_KEY`] / [`FILE_KEY`] for problems with the file as a
    /// whole.
    pub key: String,
    /// What is wrong, for a human.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.starts_with('(') {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.key, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one config file.
///
/// Displays as one line per error: `FILE: KEY: REASON`, or `FILE: line L, column C: MESSAGE`
/// for a syntax error.
///
/// ```
/// use portcullis_gateway::config::GatewayConfig;
/// let toml = r#"
/// server.upstream = "ftp://127.0.0.1"
/// server.workers = -1
/// "#;
/// let err = GatewayConfig::from_str(toml, "portcullis.toml").unwrap_err();
/// assert_eq!((err.file.as_str(), err.errors.len()), ("portcullis.toml", 2));
/// assert_eq!(err.to_string(), "\
/// portcullis.toml: server.upstream: \"ftp://127.0.0.1\" must be an http:// or https:// URL
/// portcullis.toml: server.workers: -1 is out of range (0..=4096)");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The file as named by the user.
    pub file: String,
    /// The errors, in file order, cross-section checks last.
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: {e}", self.file)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A secret read from the environment. `Debug` never shows it.
///
/// ```
/// use portcullis_gateway::config::Secret;
/// let secret = Secret::new("test-only-secret");
/// assert_eq!(format!("{secret:?}"), "[redacted]");
/// assert_eq!(secret.expose(), b"test-only-secret");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps secret bytes.
    ///
    /// ```
    /// use portcullis_gateway::config::Secret;
    /// let from_str = Secret::new("test-only");
    /// let from_bytes = Secret::new(b"test-only".to_vec());
    /// assert_eq!(from_str, from_bytes);
    /// ```
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into())
    }

    /// The secret bytes; hand them to the control that needs them and nowhere else.
    ///
    /// ```
    /// use portcullis_gateway::config::Secret;
    /// let secret = Secret::new("test-only-secret");
    /// assert_eq!(secret.expose(), b"test-only-secret");
    /// assert_eq!(secret.expose().len(), 16);
    /// ```
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// What a config is loaded for: serving needs an upstream, tools (`token`) do not, and the
/// audit reader needs no secret but the audit store's.
///
/// ```
/// use portcullis_gateway::config::{GatewayConfig, Purpose};
/// // A tool may read a file without [server] upstream; `serve` may not.
/// assert!(GatewayConfig::from_str_for("", "portcullis.toml", Purpose::Tool).is_ok());
/// let err = GatewayConfig::from_str_for("", "portcullis.toml", Purpose::Serve).unwrap_err();
/// assert_eq!(err.errors[0].key, "server.upstream");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// `serve` and `check-config`: `server.upstream` is required.
    Serve,
    /// Command-line tools that read only parts of the file (`token` signs with the JWT
    /// secret, so every secret is read).
    Tool,
    /// `audit query` and `audit tail`: only `[storage] postgres_password_env` is read from
    /// the environment. Every other `*_env` name is checked but not read, and its secret is
    /// left unset, so a config loaded so reads the audit log and must not serve.
    ///
    /// ```
    /// use portcullis_gateway::config::{GatewayConfig, Purpose};
    /// // The JWT secret's variable need not be set to find the audit store.
    /// let toml = r#"
    /// auth.jwt.secret_env = "DOC_AUDIT_UNSET_JWT_SECRET"
    /// storage.audit = "jsonl:///var/log/portcullis/audit.jsonl"
    /// "#;
    /// assert!(GatewayConfig::from_str_for(toml, "portcullis.toml", Purpose::Tool).is_err());
    /// let config = GatewayConfig::from_str_for(toml, "portcullis.toml", Purpose::AuditReader)?;
    /// assert!(config.auth.jwt.unwrap().secret.is_none()); // not read
    /// # Ok::<(), portcullis_gateway::config::ConfigErrors>(())
    /// ```
    AuditReader,
}

/// The whole gateway configuration, validated.
///
/// ```
/// use portcullis_gateway::config::GatewayConfig;
/// let config = GatewayConfig::from_str(r#"
/// server.upstream = "http://127.0.0.1:3000"
/// [[route]]
/// path = "/api/**"
/// "#, "portcullis.toml")?;
/// assert_eq!(config.routes[0].path, "/api/**");
/// assert!(config.cors.is_none()); // no [cors]: no CORS headers
/// # Ok::<(), portcullis_gateway::config::ConfigErrors>(())
/// ```
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// `[server]`: listeners, upstream, proxies, limits, timeouts.
    pub server: ServerConfig,
    /// `[storage]`: where rate-limit counters and audit events live.
    pub storage: StorageConfig,
    /// `[auth]`, `[auth.jwt]`, `[[auth.api_keys]]`.
    pub auth: AuthConfig,
    /// `[audit]`.
    pub audit: AuditConfig,
    /// `[ban]`: the ban list of repeat offenders.
    pub ban: BanConfig,
    /// `[csrf]`.
    pub csrf: CsrfConfig,
    /// `[headers]`: security headers and the layer-wide CSP.
    pub headers: HeadersConfig,
    /// `[cors]` (no CORS headers when absent).
    pub cors: Option<CorsConfig>,
    /// `[[route]]`, in file order.
    pub routes: Vec<RouteConfig>,
}

/// The kind of application behind the gateway.
///
/// ```
/// use portcullis_gateway::config::{GatewayConfig, UpstreamKind};
/// let config = GatewayConfig::from_str(r#"
/// server.upstream = "http://127.0.0.1:3000"
/// server.upstream_kind = "nextjs"
/// "#, "portcullis.toml")?;
/// assert_eq!(config.server.upstream_kind, UpstreamKind::Nextjs);
/// # Ok::<(), portcullis_gateway::config::ConfigErrors>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamKind {
    /// Any HTTP application: the HTML rewrite nonces scripts that carry the placeholder.
    Generic,
    /// Next.js: the CSP with its nonce is also set on the upstream request.
    Nextjs,
}

/// How the gateway spreads connections over its worker threads (`server.threading`).
///
/// ```
/// use portcullis_gateway::config::Threading;
/// assert_eq!(Threading::default(), Threading::PerCore);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Threading {
    /// `"per-core"` (default): each worker thread runs its own single-threaded runtime, its own
    /// `SO_REUSEPORT` listener (the kernel spreads new connections over them) and its own
    /// pool of upstream connections, so a request never crosses threads. Fastest for many
    /// short requests; a connection stays on the thread that accepted it.
    #[default]
    PerCore,
    /// `"work-stealing"`: one listener and one multi-threaded runtime whose idle threads take
    /// work from busy ones, and one shared upstream pool. Evens out uneven loads (a few
    /// connections doing heavy work, such as RS256 verification or long streams) at the cost
    /// of cross-thread wake-ups on every request.
    WorkStealing,
}

/// `[server]`.
///
/// ```
/// # use std::time::Duration;
/// use portcullis_gateway::config::GatewayConfig;
/// let server = GatewayConfig::from_str(r#"
/// [server]
/// upstream = "http://127.0.0.1:3000"
/// admin_listen = false
/// request_timeout = "5s"
/// "#, "portcullis.toml")?.server;
/// assert_eq!(server.listen.to_string(), "127.0.0.1:8080"); // the default
/// assert_eq!((server.admin_listen, server.request_timeout), (None, Duration::from_secs(5)));
/// # Ok::<(), portcullis_gateway::config::ConfigErrors>(())
/// ```
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where the gateway listens (default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// The application behind the gateway (required for `serve`).
    pub upstream: Option<Uri>,
    /// What kind of application it is (default generic).
    pub upstream_kind: UpstreamKind,
    /// Proxies whose `X-Forwarded-For` is believed (CIDR blocks or addresses, validated).
    pub trusted_proxies: Vec<String>,
    /// Accepted `Host` values (empty: any).
    pub allowed_hosts: Vec<String>,
    /// The admin listener (health, readiness, metrics, bans, the dashboard); `127.0.0.1:9901`
    /// unless set, `false` for none.
    pub admin_listen: Option<SocketAddr>,
    /// True when `admin_listen` was written in the file (then failing to bind it is fatal).
    pub admin_listen_explicit: bool,
    /// The admin listener's token (`admin_token_env`): when set, every admin endpoint but
    /// `/healthz` and `/readyz` asks for it, as `Authorization: Bearer TOKEN` or as the
    /// password of HTTP Basic credentials (any user name; browsers prompt for it).
    pub admin_token: Option<Secret>,
    /// Host names the admin listener's dashboard and ban endpoints answer besides addresses
    /// and `localhost` (`["gateway-1.internal"]`; lower case, without port).
    pub admin_hosts: Vec<String>,
    /// The most request-header bytes accepted (431 beyond; default 16384).
    pub max_header_bytes: usize,
    /// The most concurrent connections (default 10000).
    pub max_connections: usize,
    /// Time allowed to receive the request headers (default 10 s).
    pub header_read_timeout: Duration,
    /// Time allowed for the whole request (default 30 s), plus what a body that keeps
    /// arriving earns (see [`crate::proxy::MIN_BODY_RATE`]).
    pub request_timeout: Duration,
    /// Keep-alive idle time, and how long a client may leave its response untaken (default
    /// 60 s).
    pub idle_timeout: Duration,
    /// Time allowed to connect to the upstream (default 5 s).
    pub upstream_connect_timeout: Duration,
    /// Time allowed for the upstream's response (default 30 s).
    pub upstream_timeout: Duration,
    /// How long an idle keep-alive connection to the upstream is kept (default 4 s: below the
    /// 5 s keep-alive timeout of Node's HTTP server, so the gateway, not the application,
    /// closes it, and never sends a request on a connection the application is closing).
    pub upstream_idle_timeout: Duration,
    /// How long an upgraded connection (a WebSocket tunnel) may carry no byte either way
    /// before it is closed (default 5 min, Envoy's stream idle timeout).
    pub tunnel_idle_timeout: Duration,
    /// Time given to open requests on shutdown (default 30 s).
    pub shutdown_timeout: Duration,
    /// The most concurrent streams on one HTTP/2 connection (default 100).
    pub http2_max_concurrent_streams: u32,
    /// Worker threads (0: one per core).
    pub workers: usize,
    /// How connections are spread over the workers (default per-core).
    pub threading: Threading,
    /// The nonce marker in upstream HTML (default `{{portcullis-nonce}}`).
    pub nonce_placeholder: String,
    /// `[server.tls]`: serve HTTPS.
    pub tls: Option<TlsConfig>,
}

/// `[server.tls]`.
///
/// ```
/// use portcullis_gateway::config::GatewayConfig;
/// let toml = r#"
/// server.upstream = "http://127.0.0.1:3000"
/// server.tls = { cert = "tls/cert.pem", key = "tls/key.pem" }
/// "#;
/// // Relative paths are resolved against the config file's directory, and must exist.
/// let err = GatewayConfig::from_str(toml, "/nonexistent/portcullis.toml").unwrap_err();
/// assert_eq!(err.errors[0].key, "server.tls.cert");
/// assert_eq!(err.errors[0].reason, "file /nonexistent/tls/cert.pem does not exist");
/// ```
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// The certificate chain (PEM); the file exists.
    pub cert: PathBuf,
    /// The private key (PEM); the file exists.
    pub key: PathBuf,
    /// A plain-HTTP listener that redirects to HTTPS.
    pub redirect_http_listen: Option<SocketAddr>,
}

/// What the gateway does when a store (rate limit) fails.
///
/// ```
/// use portcullis_gateway::config::{GatewayConfig, OnStoreError};
/// let config = GatewayConfig::from_str(r#"
/// server.upstream = "http://127.0.0.1:3000"
/// storage.on_store_error = "open"
/// "#, "portcullis.toml")?;
/// assert_eq!(config.storage.on_store_error, OnStoreError::Open);
/// # Ok::<(), portcullis_gateway::config::ConfigErrors>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    /// Refuse the request (503): the default.
    Closed,
    /// Let it through and count the failure.
    Open,
}

impl From<OnStoreError> for portcullis::rate_limit::OnStoreError {
    fn from(mode: OnStoreError) -> Self {
        match mode {
            OnStoreError::Closed => portcullis::rate_limit::OnStoreError::Closed,
            OnStoreError::Open => portcullis::rate_limit::OnStoreError::Open,
        }
    }
}

/// Where the gateway keeps state of its own when the config names no place (the audit spool
/// of a database store): systemd's `$STATE_DIRECTORY` (`StateDirectory=`), else
/// `$XDG_STATE_HOME/portcullis`, else `~/.local/state/portcullis` — a folder that survives a
/// reboot and that other users cannot write (the spool refuses one they own) — and the temp
/// folder only when there is no home.
///
/// ```
/// # unsafe { std::env::set_var("STATE_DIRECTORY", "/var/lib/portcullis") };
/// assert_eq!(portcullis_gateway::config::state_dir(), std::path::Path::new("/var/lib/portcullis"));
/// # unsafe { std::env::remove_var("STATE_DIRECTORY") };
/// ```
pub fn state_dir() -> PathBuf {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    if let Some(dirs) = std::env::var_os("STATE_DIRECTORY").filter(|v| !v.is_empty()) {
        // systemd lists several folders with ':' when the unit names several.
        if let Some(first) = std::env::split_paths(&dirs)
            .next()
            .filter(|p| p.is_absolute())
        {
            return first;
        }
    }
    if let Some(state) = var("XDG_STATE_HOME") {
        return state.join("portcullis");
    }
    if let Some(home) = var("HOME") {
        return home.join(".local/state/portcullis");
    }
    std::env::temp_dir().join("portcullis")
}

/// `[storage]`.
///
/// ```
/// # use std::path::PathBuf;
/// use portcullis_gateway::config::{AuditStore, GatewayConfig, RateLimitStore};
/// let storage = GatewayConfig::from_str(r#"
/// server.upstream = "http://127.0.0.1:3000"
/// storage.rate_limit = "sqlite://counters.db"
/// "#, "/etc/portcullis/portcullis.toml")?.storage;
/// assert_eq!(storage.rate_limit, RateLimitStore::Sqlite(PathBuf::from("/etc/portcullis/counters.db")));
/// assert_eq!(storage.audit, AuditStore::Sqlite(PathBuf::from("/etc/portcullis/portcullis-audit.db")));
/// assert_eq!(storage.redis_prefix, "portcullis:");
/// # Ok::<(), portcullis_gateway::config::ConfigErrors>(())
/// ```
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Where rate-limit counters live (default memory).
    pub rate_limit: RateLimitStore,
    /// The Redis password, from `redis_password_env`.
    pub redis_password: Option<Secret>,
    /// The prefix of every Redis key (default `portcullis:`).
    pub redis_prefix: String,
    /// Where audit events go (default `sqlite://portcullis-audit.db`).
    pub audit: AuditStore,
    /// The PostgreSQL password, from `postgres_password_env`.
    pub postgres_password: Option<Secret>,
    /// PEM CA certificates for a `postgres://…?sslmode=require` audit store (default: the
    /// system's bundle).
    pub postgres_ca_file: Option<PathBuf>,
    /// Fail closed (default) or open when a store is down.
    pub on_store_error: OnStoreError,
}

/// A JWT signature algorithm accepted by `[auth.jwt] algorithms`.
///
/// ```
/// use portcullis_gateway::config::JwtAlgorithm;
/// let alg = JwtAlgorithm::from_name("ES256").unwrap();
/// assert_eq!(alg, JwtAlgorithm::Es256);
/// assert!(!alg.is_hmac()); // needs public_key_env, jwks_file or jwks_url
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256.
    Hs256,
    /// HMAC with SHA-384.
    Hs384,
    /// HMAC with SHA-512.
    Hs512,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// RSASSA-PSS with SHA-384.
    Ps384,
    /// RSASSA-PSS with SHA-512.
    Ps512,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// ECDSA on P-384 with SHA-384.
    Es384,
    /// Ed25519.
    EdDsa,
}

impl JwtAlgorithm {
    /// Every algorithm, in the order names are listed in errors.
    ///
    /// ```
    /// use portcullis_gateway::config::JwtAlgorithm;
    /// assert_eq!(JwtAlgorithm::ALL.iter().filter(|a| a.is_hmac()).count(), 3);
    /// assert!(JwtAlgorithm::ALL.iter().all(|a| JwtAlgorithm::from_name(a.name()) == Some(*a)));
    /// ```
    pub const ALL: [JwtAlgorithm; 12] = [
        JwtAlgorithm::Hs256,
        JwtAlgorithm::Hs384,
        JwtAlgorithm::Hs512,
        JwtAlgorithm::Rs256,
        JwtAlgorithm::Rs384,
        JwtAlgorithm::Rs512,
        JwtAlgorithm::Ps256,
        JwtAlgorithm::Ps384,
        JwtAlgorithm::Ps512,
        JwtAlgorithm::Es256,
        JwtAlgorithm::Es384,
        JwtAlgorithm::EdDsa,
    ];

    /// The name as in a JWT header (`HS256`, `EdDSA`).
    ///
    /// ```
    /// use portcullis_gateway::config::JwtAlgorithm;
    /// assert_eq!(JwtAlgorithm::Hs256.name(), "HS256");
    /// assert_eq!(JwtAlgorithm::EdDsa.name(), "EdDSA");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            JwtAlgorithm::Hs256 => "HS256",
            JwtAlgorithm::Hs384 => "HS384",
            JwtAlgorithm::Hs512 => "HS512",
            JwtAlgorithm::Rs256 => "RS256",
            JwtAlgorithm::Rs384 => "RS384",
            JwtAlgorithm::Rs512 => "RS512",
            JwtAlgorithm::Ps256 => "PS256",
            JwtAlgorithm::Ps384 => "PS384",
            JwtAlgorithm::Ps512 => "PS512",
            JwtAlgorithm::Es256 => "ES256",
            JwtAlgorithm::Es384 => "ES384",
            JwtAlgorithm::EdDsa => "EdDSA",
        }
    }

    /// Parses a name exactly as in a JWT header.
    ///
    /// ```
    /// use portcullis_gateway::config::JwtAlgorithm;
    /// assert_eq!(JwtAlgorithm::from_name("RS256"), Some(JwtAlgorithm::Rs256));
    /// assert_eq!(JwtAlgorithm::from_name("rs256"), None); // exact, as in a JWT header
    /// assert_eq!(JwtAlgorithm::from_name("none"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<JwtAlgorithm> {
        JwtAlgorithm::ALL.into_iter().find(|a| a.name() == name)
    }

    /// True for the HMAC algorithms, which use the shared secret.
    ///
    /// ```
    /// use portcullis_gateway::config::JwtAlgorithm;
    /// assert!(JwtAlgorithm::Hs512.is_hmac());
    /// assert!(!JwtAlgorithm::Rs256.is_hmac());
    /// ```
    pub fn is_hmac(self) -> bool {
        matches!(
            self,
            JwtAlgorithm::Hs256 | JwtAlgorithm::Hs384 | JwtAlgorithm::Hs512
        )
    }
}

/// `[auth]`.
///
/// ```
/// # use std::time::Duration;
/// use portcullis_gateway::config::GatewayConfig;
/// let auth = GatewayConfig::from_str(r#"
/// server.upstream = "http://127.0.0.1:3000"
/// auth.failed_limit = 5
/// "#, "portcullis.toml")?.auth;
/// assert_eq!(auth.failed_limit, 5);
/// assert_eq!((auth.cookie.as_str(), auth.failed_window), ("authToken", Duration::from_secs(900)));
/// assert!(auth.jwt.is_none() && auth.api_keys.is_empty());
/// # Ok::<(), portcullis_gateway::config::ConfigErrors>(())
/// ```
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// The cookie a JWT may come in (default `authToken`).
    pub cookie: String,
    /// Failed authentications per client address before it is refused (default 10).
    pub failed_limit: u32,
    /// The window of `failed_limit` (default 15 min).
    pub failed_window: Duration,
    /// `[auth.jwt]`.
    pub jwt: Option<JwtConfig>,
    /// `[[auth.api_keys]]`.
    pub api_keys: Vec<ApiKeyConfig>,
}

/// `[auth.jwt]`.
///
/// ```
/// # use std::time::Duration;
/// use portcullis_gateway::config::{GatewayConfig, JwtAlgorithm};
/// # unsafe { std::env::set_var("DOC_JWT_SECRET", "test-only-jwt-secret-of-32-bytes-or-more") };
/// let jwt = GatewayConfig::from_str(r#"
/// server.upstream = "http://127.0.0.1:3000"
/// auth.jwt = { secret_env = "DOC_JWT_SECRET", issuer = "https://id.example.com" }
/// "#, "portcullis.toml")?.auth.jwt.unwrap();
/// assert_eq!(jwt.algorithms, [JwtAlgorithm::Hs256]); // the default with a secret
/// assert_eq!((jwt.roles_claim.as_str(), jwt.leeway), ("roles", Duration::from_secs(60)));
/// assert_eq!(format!("{:?}", jwt.secret), "Some([redacted])");
/// # Ok::<(), portcullis_gateway::config::ConfigErrors>(())
/// ```
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// The HMAC secret, from `secret_env` (at least 32 bytes).
    pub secret: Option<Secret>,
    /// A PEM public key, from `public_key_env`.
    pub public_key_pem: Option<String>,
    /// A JWKS file.
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL (`http://` or `https://`).
    pub jwks_url: Option<Uri>,
    /// The CA certificates (PEM) trusted for an `https://` JWKS URL; the system bundle when
    /// unset.
    pub jwks_ca_file: Option<PathBuf>,
    /// The algorithm allowlist, each backed by a key source.
    pub algorithms: Vec<JwtAlgorithm>,
    /// The exact `iss` required.
    pub issuer: Option<String>,
    /// Accepted `aud` values (any one suffices).
    pub audience: Vec<String>,
    /// The claim holding the roles; dots walk into objects (default `roles`).
    pub roles_claim: String,
    /// Clock leeway for `exp`/`nbf` (default 60 s).
    pub leeway: Duration,
    /// The required `typ` header.
    pub typ: Option<String>,
}

/// A SHA-256 digest of an API key. `Debug` shows only its start.
///
/// ```
/// use portcullis_gateway::config::ApiKeyHash;
/// let hash = ApiKeyHash([0xab; 32]);
/// assert_eq!(format!("{hash:?}"), "sha256:abababab…");
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ApiKeyHash(pub [u8; 32]);

impl fmt::Debug for ApiKeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sha256:{:02x}{:02x}{:02x}{:02x}…",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

/// `[[auth.api_keys]]`.
///
/// ```
/// # use std::time::{Duration, UNIX_EPOCH};
/// use portcullis_gateway::config::GatewayConfig;
/// let key = &GatewayConfig::from_str(r#"
/// server.upstream = "http://127.0.0.1:3000"
/// [[auth.api_keys]]
/// id = "ci"
/// hash = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
/// roles = ["deploy"]
/// expires = 2030-01-01T00:00:00Z
/// "#, "portcullis.toml")?.auth.api_keys[0];
/// assert_eq!((key.id.as_str(), key.hash.0), ("ci", [0; 32]));
/// assert_eq!(key.roles, ["deploy"]);
/// assert_eq!(key.expires, Some(UNIX_EPOCH + Duration::from_secs(1_893_456_000)));
/// # Ok::<(), portcullis_gateway::config::ConfigErrors>(())
/// ```
#[derive(Debug, Clone)]
pub struct ApiKeyConfig {
    /// The key's id (the principal id).
    pub id: String,
    /// The SHA-256 of the key.
    pub hash: ApiKeyHash,
    /// The principal's roles.
    pub roles: Vec<String>,
    /// When the key stops working.
    pub expires: Option<SystemTime>,
}

/// `[ban]`: clients whose requests keep being refused (path and host attacks, CSRF failures,
/// 429s) are refused on every route for a while, with 403 `banned`. Offences and bans are kept
/// in the rate-limit store, so replicas sharing Redis or a SQLite file share them. Off unless
/// `offences` is set: a ban shuts an address out of every route, and one address can be many
/// people (an office behind NAT, a misconfigured `trusted_proxies`), so it is the operator's
/// call, with a threshold that fits their traffic.
///
/// ```
/// # use std::time::Duration;
/// use portcullis_gateway::config::GatewayConfig;
/// let ban = GatewayConfig::from_str(r#"
/// server.upstream = "http://127.0.0.1:3000"
/// ban.offences = 100
/// ban.ban_for = "1h"
/// "#, "portcullis.toml")?.ban;
/// assert_eq!((ban.offences, ban.within, ban.ban_for), (100, Duration::from_secs(600), Duration::from_secs(3600)));
/// # Ok::<(), portcullis_gateway::config::ConfigErrors>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanConfig {
    /// Refusals that ban a client (default 0: no bans; 100 is a reasonable start).
    pub offences: u32,
    /// The window the refusals are counted in (default 10 min).
    pub within: Duration,
    /// How long a ban lasts (default 15 min).
    pub ban_for: Duration,
}

/// `[audit]`.
///
/// ```
/// # use std::{path::Path, time::Duration};
/// use portcullis_gateway::config::GatewayConfig;
/// let audit = GatewayConfig::from_str(r#"
/// server.upstream = "http://127.0.0.1:3000"
/// audit.spool_dir = "spool"
/// "#, "/srv/gateway/portcullis.toml")?.audit;
/// assert_eq!(audit.retention, Duration::from_secs(90 * 86_400)); // the default
/// assert_eq!(audit.spool_dir.as_deref(), Some(Path::new("/srv/gateway/spool")));
/// # Ok::<(), portcullis_gateway::config::ConfigErrors>(())
/// ```
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// How long events are kept (default 90 days).
    pub retention: Duration,
    /// Where events wait while the store is down: a private folder (0700, refused when it
    /// belongs to another user). Default: beside a file store (`audit.db.spool`), else
    /// `audit-<listen port>.spool` in [`state_dir`].
    pub spool_dir: Option<PathBuf>,
}

/// How the origin check treats requests with neither `Sec-Fetch-Site` nor `Origin`.
///
/// ```
/// use portcullis_gateway::config::{CsrfStrictness, GatewayConfig};
/// let config = GatewayConfig::from_str(r#"
/// server.upstream = "http://127.0.0.1:3000"
/// csrf.mode = "strict"
/// "#, "portcullis.toml")?;
/// assert_eq!(config.csrf.mode, CsrfStrictness::Strict);
/// # Ok::<(), portcullis_gateway::config::ConfigErrors>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsrfStrictness {
    /// Allowed (non-browser clients): the default.
    Lenient,
    /// Refused.
    Strict,
}

/// `[csrf]`.
///
/// ```
/// use portcullis_gateway::config::GatewayConfig;
/// let csrf = GatewayConfig::from_str(r#"
/// server.upstream = "http://127.0.0.1:3000"
/// [csrf]
/// trusted_origins = ["https://admin.example.com"]
/// bypass = ["/webhooks/**"]
/// "#, "portcullis.toml")?.csrf;
/// assert_eq!(csrf.trusted_origins, ["https://admin.example.com"]);
/// assert_eq!(csrf.bypass, ["/webhooks/**"]);
/// assert!(csrf.secret.is_none() && !csrf.insecure_dev);
/// # Ok::<(), portcullis_gateway::config::ConfigErrors>(())
/// ```
#[derive(Debug, Clone)]
pub struct CsrfConfig {
    /// Lenient (default) or strict.
    pub mode: CsrfStrictness,
    /// The token HMAC secret, from `secret_env`.
    pub secret: Option<Secret>,
    /// Older secrets still accepted, from `previous_secret_envs`.
    pub previous_secrets: Vec<Secret>,
    /// Other origins allowed to send unsafe requests.
    pub trusted_origins: Vec<String>,
    /// The origin the gateway is reached at (when `Host` cannot tell).
    pub public_origin: Option<String>,
    /// Path globs the CSRF check skips (webhooks).
    pub bypass: Vec<String>,
    /// Allows the token cookie without `__Host-`/`Secure` over plain HTTP (development).
    pub insecure_dev: bool,
}

/// `[headers]`.
///
/// ```
/// use portcullis_gateway::config::GatewayConfig;
/// let headers = GatewayConfig::from_str(r#"
/// server.upstream = "http://127.0.0.1:3000"
/// headers.hsts = false
/// headers.csp = "default-src 'self'; frame-ancestors 'none'"
/// "#, "portcullis.toml")?.headers;
/// assert!(headers.security.entries().all(|(name, _)| name != "strict-transport-security"));
/// assert_eq!(headers.csp.unwrap().to_string(), "default-src 'self'; frame-ancestors 'none'");
/// # Ok::<(), portcullis_gateway::config::ConfigErrors>(())
/// ```
#[derive(Debug, Clone)]
pub struct HeadersConfig {
    /// The security headers, overrides applied.
    pub security: SecurityHeaders,
    /// The layer-wide CSP (`None`: `csp = false`).
    pub csp: Option<Csp>,
    /// Send the CSP as `Content-Security-Policy-Report-Only`.
    pub csp_report_only: bool,
}

impl HeadersConfig {
    /// The layer-wide CSP as sent: [`HeadersConfig::csp`] with `csp_report_only` applied.
    ///
    /// ```
    /// use portcullis_gateway::config::GatewayConfig;
    /// let headers = GatewayConfig::from_str(r#"
    /// server.upstream = "http://127.0.0.1:3000"
    /// headers.csp_report_only = true
    /// "#, "portcullis.toml")?.headers;
    /// assert_eq!(headers.effective_csp().unwrap().header_name(), "content-security-policy-report-only");
    /// # Ok::<(), portcullis_gateway::config::ConfigErrors>(())
    /// ```
    pub fn effective_csp(&self) -> Option<Csp> {
        self.csp
            .clone()
            .map(|c| c.report_only(self.csp_report_only))
    }
}

/// `[cors]`.
///
/// ```
/// # use std::time::Duration;
/// use portcullis_gateway::config::GatewayConfig;
/// let cors = GatewayConfig::from_str(r#"
/// server.upstream = "http://127.0.0.1:3000"
/// cors = { allow_origins = ["https://app.example.com"], max_age = "10m" }
/// "#, "portcullis.toml")?.cors.unwrap();
/// assert_eq!(cors.allow_origins, ["https://app.example.com"]);
/// assert_eq!((cors.allow_credentials, cors.max_age), (false, Some(Duration::from_secs(600))));
/// # Ok::<(), portcullis_gateway::config::ConfigErrors>(())
/// ```
#[derive(Debug, Clone)]
pub struct CorsConfig {
    /// Exact origins allowed, or `["*"]`: every origin (no credentials).
    pub allow_origins: Vec<String>,
    /// Send `Access-Control-Allow-Credentials: true` to them.
    pub allow_credentials: bool,
    /// Methods allowed cross-origin (default: the route's).
    pub allow_methods: Option<MethodSet>,
    /// Request headers allowed cross-origin.
    pub allow_headers: Vec<String>,
    /// Response headers exposed to scripts.
    pub expose_headers: Vec<String>,
    /// How long browsers cache a preflight.
    pub max_age: Option<Duration>,
}

/// `[[route]]`: a glob pattern and its policy.
///
/// ```
/// use portcullis::Preset;
/// use portcullis_gateway::config::GatewayConfig;
/// let route = &GatewayConfig::from_str(r#"
/// server.upstream = "http://127.0.0.1:3000"
/// [[route]]
/// path = "/api/upload"
/// max_body = "10MiB"
/// "#, "portcullis.toml")?.routes[0];
/// assert_eq!((route.path.as_str(), route.preset), ("/api/upload", Preset::Public)); // the default preset
/// assert_eq!(route.policy.max_body_bytes(), Some(10 << 20));
/// # Ok::<(), portcullis_gateway::config::ConfigErrors>(())
/// ```
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// The glob pattern (`/api/admin/**`).
    pub path: String,
    /// The preset the policy started from.
    pub preset: Preset,
    /// Whether the file names the preset (`public` is the default when it does not).
    pub preset_written: bool,
    /// The policy, overrides applied.
    pub policy: Policy,
}

/// Reads an environment variable; the seam unit tests replace.
pub(crate) type Env<'a> = &'a dyn Fn(&str) -> Result<String, std::env::VarError>;

fn process_env(name: &str) -> Result<String, std::env::VarError> {
    std::env::var(name)
}

impl GatewayConfig {
    /// Reads and validates a config file for `serve`.
    ///
    /// ```
    /// use portcullis_gateway::config::GatewayConfig;
    /// let path = std::env::temp_dir().join(format!("portcullis-doc-from-file-{}.toml", std::process::id()));
    /// std::fs::write(&path, "server.upstream = \"http://127.0.0.1:3000\"\n").unwrap();
    /// let config = GatewayConfig::from_file(&path)?;
    /// assert_eq!(config.server.upstream.unwrap().to_string(), "http://127.0.0.1:3000/");
    /// # std::fs::remove_file(&path).ok();
    /// # Ok::<(), portcullis_gateway::config::ConfigErrors>(())
    /// ```
    pub fn from_file(path: impl AsRef<Path>) -> Result<GatewayConfig, ConfigErrors> {
        GatewayConfig::load(path, Purpose::Serve)
    }

    /// Reads and validates a config file for `purpose`.
    ///
    /// ```
    /// use portcullis_gateway::config::{GatewayConfig, Purpose};
    /// let path = std::env::temp_dir().join(format!("portcullis-doc-load-{}.toml", std::process::id()));
    /// std::fs::write(&path, "auth.failed_limit = 3\n").unwrap(); // no [server] upstream
    /// assert_eq!(GatewayConfig::load(&path, Purpose::Tool)?.auth.failed_limit, 3);
    /// let err = GatewayConfig::load(&path, Purpose::Serve).unwrap_err();
    /// assert_eq!(err.errors[0].key, "server.upstream");
    /// # std::fs::remove_file(&path).ok();
    /// # Ok::<(), portcullis_gateway::config::ConfigErrors>(())
    /// ```
    pub fn load(path: impl AsRef<Path>, purpose: Purpose) -> Result<GatewayConfig, ConfigErrors> {
        let path = path.as_ref();
        let file = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => GatewayConfig::parse(&text, &file, purpose, &process_env),
            Err(e) => Err(ConfigErrors {
                file,
                errors: vec![ConfigError {
                    key: FILE_KEY.to_string(),
                    reason: format!("cannot read the file: {e}"),
                }],
            }),
        }
    }

    /// Validates config text for `serve`; `file_name` names it in errors and anchors relative
    /// paths.
    ///
    /// ```
    /// use portcullis_gateway::config::GatewayConfig;
    /// let toml = r#"
    /// server.upstream = "http://127.0.0.1:3000"
    /// [[route]]
    /// path = "/api/**"
    /// preset = "authenticated"
    /// "#;
    /// let report = GatewayConfig::from_str(toml, "portcullis.toml").unwrap_err().to_string();
    /// assert!(report.starts_with("portcullis.toml: route[0].preset: routes requiring auth need an authenticator"));
    /// assert!(report.contains("\nportcullis.toml: route[0].preset: preset \"authenticated\" uses CSRF tokens"));
    /// ```
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(text: &str, file_name: &str) -> Result<GatewayConfig, ConfigErrors> {
        GatewayConfig::parse(text, file_name, Purpose::Serve, &process_env)
    }

    /// Validates config text for `purpose`.
    ///
    /// ```
    /// use portcullis_gateway::config::{GatewayConfig, Purpose};
    /// # unsafe { std::env::set_var("DOC_TOKEN_SECRET", "test-only-secret-for-minting-tokens") };
    /// // `portcullis token` reads [auth.jwt] only: no upstream needed.
    /// let toml = r#"auth.jwt.secret_env = "DOC_TOKEN_SECRET""#;
    /// let config = GatewayConfig::from_str_for(toml, "portcullis.toml", Purpose::Tool)?;
    /// assert!(config.server.upstream.is_none());
    /// assert!(config.auth.jwt.unwrap().secret.is_some());
    /// # Ok::<(), portcullis_gateway::config::ConfigErrors>(())
    /// ```
    pub fn from_str_for(
        text: &str,
        file_name: &str,
        purpose: Purpose,
    ) -> Result<GatewayConfig, ConfigErrors> {
        GatewayConfig::parse(text, file_name, purpose, &process_env)
    }

    fn parse(
        text: &str,
        file_name: &str,
        purpose: Purpose,
        env: Env<'_>,
    ) -> Result<GatewayConfig, ConfigErrors> {
        let fail = |errors| ConfigErrors {
            file: file_name.to_string(),
            errors,
        };
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| fail(vec![load::syntax_error(text, &e)]))?;
        let base = Path::new(file_name)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut loader = load::Loader {
            errs: schema::Errors::default(),
            env,
            base,
            purpose,
        };
        let config = loader.config(&table, purpose);
        match config {
            Some(config) if loader.errs.is_empty() => Ok(config),
            _ if loader.errs.is_empty() => Err(fail(vec![ConfigError {
                key: FILE_KEY.to_string(),
                reason: "the config was refused without a reason (a bug: please report it)"
                    .to_string(),
            }])),
            _ => Err(fail(loader.errs.into_vec())),
        }
    }

    /// Builds the library's [`SecurityLayer`] from the routes, presets and overrides, trusted
    /// proxies, allowed hosts, headers, CSP and CORS.
    ///
    /// ```
    /// # use axum::{Router, body::Body};
    /// use portcullis_gateway::config::GatewayConfig;
    /// # use tower::{Layer, ServiceExt};
    /// let layer = GatewayConfig::from_str(r#"
    /// server.upstream = "http://127.0.0.1:3000"
    /// route = [{ path = "/api/**", methods = ["GET"] }]
    /// "#, "portcullis.toml")?.security_layer()?;
    /// let app = layer.layer(Router::new().fallback(|| async { "ok" }));
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let post = http::Request::post("/api/items").header("host", "gw.example.com").body(Body::empty())?;
    /// assert_eq!(app.oneshot(post).await?.status(), 405);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn security_layer(&self) -> Result<SecurityLayer, ConfigError> {
        self.security_layer_with(&Stores::default())
    }

    /// The layer for this config, reusing the stores of `stores` when the storage settings
    /// are unchanged (so a hot reload keeps the rate-limit counters).
    ///
    /// ```
    /// # use axum::{Router, body::Body};
    /// use portcullis_gateway::config::{GatewayConfig, Stores};
    /// # use tower::{Layer, ServiceExt};
    /// let config = GatewayConfig::from_str(r#"
    /// server.upstream = "http://127.0.0.1:3000"
    /// route = [{ path = "/**", rate_limit = { requests = 1, window = "1m", key = "route" } }]
    /// "#, "portcullis.toml")?;
    /// let stores = Stores::default();
    /// # let app = |layer: portcullis::SecurityLayer| layer.layer(Router::new().fallback(|| async { "ok" }));
    /// # let get = || http::Request::get("/").header("host", "gw.example.com").body(Body::empty()).unwrap();
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// assert_eq!(app(config.security_layer_with(&stores)?).oneshot(get()).await?.status(), 200);
    /// // A reload builds a new layer from the same stores: the counter carries over.
    /// assert_eq!(app(config.security_layer_with(&stores)?).oneshot(get()).await?.status(), 429);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn security_layer_with(&self, stores: &Stores) -> Result<SecurityLayer, ConfigError> {
        let csp = self.headers.effective_csp();
        let limiter = RateLimiter::new(stores.rate_limit_store(&self.storage)?)
            .on_store_error(self.storage.on_store_error.into())
            .with_stats(stores.limiter_stats());
        let mut builder = SecurityLayer::builder()
            // Real clients on the wire: HTTP/1.1 without Host is refused (RFC 9112 §3.2).
            .require_host(true)
            // A page's props at /_next/data/<id>/<page>.json: judged by the page's route.
            .nextjs_data_routes(self.server.upstream_kind == UpstreamKind::Nextjs)
            // The proxy reads the request id, route and nonce: one extension holds them.
            .request_extensions(portcullis::layer::RequestExtensions::Context)
            .failed_auth(Some(stores.failed_auth(&self.auth, &self.storage)?))
            .ban_list(stores.ban_list(&self.ban, &self.storage)?)
            .trusted_proxies(self.server.trusted_proxies.iter().cloned())
            .security_headers(Some(self.headers.security.clone()))
            .csp(csp)
            .cors(self.cors.as_ref().map(CorsConfig::to_cors).transpose()?)
            .rate_limiter(Arc::new(limiter));
        if !self.server.allowed_hosts.is_empty() {
            builder = builder.allowed_hosts(self.server.allowed_hosts.iter().cloned());
        }
        for route in &self.routes {
            builder = builder.route(&route.path, route.policy.clone());
        }
        if let Some(auth) = crate::auth::authenticator(&self.auth)? {
            builder = builder.authenticator(auth);
        }
        if let Some(writer) = stores.audit_writer() {
            builder = builder.audit(Arc::new(writer));
        }
        builder = builder.csrf_guard(stores.csrf_guard(&self.csrf)?);
        builder.build().map_err(|e| {
            let key = if e.key == "trusted_proxies" {
                "server.trusted_proxies".to_string()
            } else {
                self.routes
                    .iter()
                    .position(|r| e.key == format!("route {:?}", r.path))
                    .map_or(e.key.clone(), |i| format!("route[{i}].path"))
            };
            ConfigError {
                key,
                reason: e.reason,
            }
        })
    }

    /// A route without a `preset` (so public) inside a broader route that requires
    /// authentication: the most specific route wins, so a route added "just to narrow the
    /// methods" of `/api/x` under `/api/**` makes `/api/x` public. Warned, not refused: a
    /// public hole may be meant, and then `preset = "public"` says so.
    fn unprotected_routes(&self) -> Vec<ConfigError> {
        use portcullis::route::{CanonicalPath, RouteTable};
        let mut warnings = Vec::new();
        for (i, narrow) in self.routes.iter().enumerate() {
            if narrow.preset_written || narrow.policy.requires_auth() {
                continue;
            }
            // A path the narrow pattern matches: its wildcards filled in.
            let Ok(sample) =
                CanonicalPath::parse(&narrow.path.replace("**", "x").replace('*', "x"))
            else {
                continue;
            };
            for broad in &self.routes {
                if broad.path == narrow.path || !broad.policy.requires_auth() {
                    continue;
                }
                let mut table = RouteTable::new(false);
                if table.insert(&broad.path, true).is_err() {
                    continue;
                }
                if table.lookup(&sample).is_ok_and(|m| *m.value) {
                    warnings.push(ConfigError {
                        key: format!("route[{i}].preset"),
                        reason: format!(
                            "{} names no preset, so it is public, inside {} which requires \
                             authentication (preset {:?}): the most specific route wins, so \
                             {} is open to anyone; set preset = \"{}\" (or \"public\" if that \
                             is meant)",
                            narrow.path,
                            broad.path,
                            broad.preset.name(),
                            narrow.path,
                            broad.preset.name()
                        ),
                    });
                    break;
                }
            }
        }
        warnings
    }

    /// Settings that are valid but will not do what they seem to; `check-config` shows them
    /// as warnings, and `serve` logs them. One: an origin `[cors]` allows that
    /// `csrf.trusted_origins` does not list, whose unsafe requests (POST, PUT, PATCH, DELETE)
    /// the CSRF origin check still refuses (Go's `CrossOriginProtection` semantics: CORS lets
    /// a page read answers, it does not make its writes same-origin).
    ///
    /// ```
    /// use portcullis_gateway::config::GatewayConfig;
    /// let config = GatewayConfig::from_str("server.upstream = \"http://127.0.0.1:3000\"", "portcullis.toml")?;
    /// for warning in config.unapplied_settings() {
    ///     eprintln!("portcullis.toml: {}: warning: {}", warning.key, warning.reason);
    /// }
    /// assert!(config.unapplied_settings().is_empty()); // this build applies every setting
    /// # Ok::<(), portcullis_gateway::config::ConfigErrors>(())
    /// ```
    pub fn unapplied_settings(&self) -> Vec<ConfigError> {
        let mut warnings = self.unprotected_routes();
        for (i, cidr) in self.server.trusted_proxies.iter().enumerate() {
            if cidr.ends_with("/0") {
                warnings.push(ConfigError {
                    key: format!("server.trusted_proxies[{i}]"),
                    reason: format!(
                        "{cidr} trusts every address: any client can then pick its own address \
                         with X-Forwarded-For (rate limits, bans and the audit log go by it); \
                         list the proxies' own addresses"
                    ),
                });
            }
        }
        for (i, route) in self.routes.iter().enumerate() {
            let limits = route.policy.limits();
            let by_header = limits
                .iter()
                .find(|l| matches!(l.key, portcullis::policy::RateKey::Header(_)));
            // Another limit on the client's address or identity bounds the client; alone, a
            // header the client writes does not.
            let bounded = limits
                .iter()
                .any(|l| !matches!(l.key, portcullis::policy::RateKey::Header(_)));
            if let (Some(spec), false) = (by_header, bounded)
                && let portcullis::policy::RateKey::Header(name) = &spec.key
            {
                warnings.push(ConfigError {
                    key: format!("route[{i}].rate_limit"),
                    reason: format!(
                        "{} is limited only per value of {name}, which the client sends: a \
                         client sending a new value each time gets a new quota; add a limit \
                         with key = \"ip\" (or \"user\"), unless a proxy in front sets {name} \
                         and drops the client's own",
                        route.path
                    ),
                });
            }
        }
        if let Some(url) = self.auth.jwt.as_ref().and_then(|j| j.jwks_url.as_ref())
            && url.scheme_str() == Some("http")
            && !is_loopback_host(url.host().unwrap_or_default())
        {
            warnings.push(ConfigError {
                key: "auth.jwt.jwks_url".to_string(),
                reason: format!(
                    "{url} is plain http: whoever is on the network between the gateway and \
                     the issuer can hand it keys of their own, and sign tokens for any user and \
                     role; use https:// (jwks_ca_file names a private CA)"
                ),
            });
        }
        let Some(cors) = &self.cors else {
            return warnings;
        };
        // Both lists hold exact origins, as validated at load: lower case, no slash, no `*`.
        for (i, origin) in cors.allow_origins.iter().enumerate() {
            if origin == "*" {
                // Reads from anywhere, by design; writes still need the CSRF check's say.
                continue;
            }
            use portcullis::csrf::fetch_metadata::serialized_origin;
            let same = serialized_origin(origin);
            if self
                .csrf
                .trusted_origins
                .iter()
                .any(|t| serialized_origin(t) == same)
            {
                continue;
            }
            warnings.push(ConfigError {
                key: format!("cors.allow_origins[{i}]"),
                reason: format!(
                    "{origin} is allowed by CORS but not in csrf.trusted_origins: the CSRF \
                     origin check refuses its POST, PUT, PATCH and DELETE requests on routes \
                     where CSRF is on; add it there to let it write"
                ),
            });
        }
        warnings
    }
}

/// `localhost` or a loopback address (`127.0.0.0/8`, `[::1]`): traffic that never leaves the
/// machine.
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl CorsConfig {
    /// The library's CORS settings.
    ///
    /// ```
    /// use portcullis_gateway::config::GatewayConfig;
    /// let cors = GatewayConfig::from_str(r#"
    /// server.upstream = "http://127.0.0.1:3000"
    /// cors.allow_origins = ["https://app.example.com"]
    /// "#, "portcullis.toml")?.cors.unwrap().to_cors()?;
    /// assert!(cors.allows_origin("https://app.example.com"));
    /// assert!(!cors.allows_origin("https://evil.example.com"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn to_cors(&self) -> Result<Cors, ConfigError> {
        let err = |key: &str| {
            let key = key.to_string();
            move |e: portcullis::cors::CorsError| ConfigError {
                key: key.clone(),
                reason: e.to_string(),
            }
        };
        let mut cors = Cors::new().allow_credentials(self.allow_credentials);
        if self.allow_origins.iter().any(|o| o == "*") {
            cors = cors.allow_any_origin();
        }
        for (i, origin) in self
            .allow_origins
            .iter()
            .enumerate()
            .filter(|(_, o)| *o != "*")
        {
            cors = cors
                .allow_origin(origin)
                .map_err(err(&format!("cors.allow_origins[{i}]")))?;
        }
        if let Some(methods) = &self.allow_methods {
            cors = cors.allow_methods(methods.methods().iter().cloned());
        }
        if !self.allow_headers.is_empty() {
            cors = cors
                .allow_headers(&self.allow_headers)
                .map_err(err("cors.allow_headers"))?;
        }
        if !self.expose_headers.is_empty() {
            cors = cors
                .expose_headers(&self.expose_headers)
                .map_err(err("cors.expose_headers"))?;
        }
        if let Some(age) = self.max_age {
            cors = cors.max_age(age);
        }
        Ok(cors)
    }
}

impl StorageConfig {
    /// The audit store as a URL for `portcullis::audit::open_store`.
    ///
    /// ```
    /// use portcullis_gateway::config::GatewayConfig;
    /// let config = GatewayConfig::from_str(r#"
    /// server.upstream = "http://127.0.0.1:3000"
    /// storage.audit = "jsonl://audit/events.jsonl"
    /// "#, "/etc/portcullis/portcullis.toml")?;
    /// assert_eq!(config.storage.audit_url(), "jsonl:///etc/portcullis/audit/events.jsonl");
    /// # Ok::<(), portcullis_gateway::config::ConfigErrors>(())
    /// ```
    pub fn audit_url(&self) -> String {
        match &self.audit {
            AuditStore::Sqlite(p) => format!("sqlite://{}", p.display()),
            AuditStore::Postgres(u) => u.clone(),
            AuditStore::Jsonl(p) => format!("jsonl://{}", p.display()),
            AuditStore::Stdout => "stdout".to_string(),
        }
    }

    /// What opening the audit store needs beyond its URL: the PostgreSQL password and CA
    /// file. The gateway's writer and `portcullis audit` both open the store with these.
    ///
    /// ```
    /// use portcullis_gateway::config::GatewayConfig;
    /// # unsafe { std::env::set_var("DOC_PG_PASSWORD", "test-only-pg-password") };
    /// let options = GatewayConfig::from_str(r#"
    /// server.upstream = "http://127.0.0.1:3000"
    /// storage = { audit = "postgres://gateway@db.internal/audit", postgres_password_env = "DOC_PG_PASSWORD" }
    /// "#, "portcullis.toml")?.storage.store_options();
    /// assert_eq!(options.postgres_password.as_deref(), Some("test-only-pg-password"));
    /// assert!(options.postgres_ca_file.is_none());
    /// # Ok::<(), portcullis_gateway::config::ConfigErrors>(())
    /// ```
    pub fn store_options(&self) -> StoreOptions {
        StoreOptions {
            postgres_password: self
                .postgres_password
                .as_ref()
                .map(|p| String::from_utf8_lossy(p.expose()).into_owned()),
            postgres_ca_file: self.postgres_ca_file.clone(),
            ..StoreOptions::default()
        }
    }
}

impl GatewayConfig {
    /// The audit spool folder: `audit.spool_dir`, or beside the file store (for a database,
    /// in [`state_dir`] under the listen port), so two gateways never share one.
    pub(crate) fn audit_spool_dir(&self) -> PathBuf {
        self.audit.spool_dir.clone().unwrap_or_else(|| {
            let beside = |p: &Path| {
                let mut name = p.file_name().unwrap_or_default().to_os_string();
                name.push(".spool");
                p.with_file_name(name)
            };
            match &self.storage.audit {
                AuditStore::Sqlite(p) | AuditStore::Jsonl(p) => beside(p),
                // In the state folder, named after the listen port: gateways on one machine
                // listen on different ones.
                AuditStore::Postgres(_) | AuditStore::Stdout => {
                    state_dir().join(format!("audit-{}.spool", self.server.listen.port()))
                }
            }
        })
    }
}

/// Stores kept across hot reloads: a reload that leaves `[storage]` unchanged keeps the same
/// rate-limit store, so counters survive it.
///
/// ```
/// # use std::sync::Arc;
/// use portcullis_gateway::config::{GatewayConfig, Stores};
/// let config = GatewayConfig::from_str("server.upstream = \"http://127.0.0.1:3000\"", "portcullis.toml")?;
/// let stores = Stores::default();
/// let before = stores.rate_limit_store(&config.storage)?;
/// let after_reload = stores.rate_limit_store(&config.storage)?; // [storage] unchanged
/// assert!(Arc::ptr_eq(&before, &after_reload));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Default)]
pub struct Stores {
    csrf_secret: std::sync::OnceLock<portcullis::csrf::token::Secret>,
    audit: std::sync::Mutex<Option<(String, AuditWriter)>>,
    failed_auth: std::sync::Mutex<Option<CachedTracker>>,
    bans: std::sync::Mutex<Option<CachedBans>>,
    /// The rate limiters' counters, one running count across reloads (`/metrics`).
    limiter_stats: Arc<portcullis::rate_limit::LimiterStats>,
    rate_limit: std::sync::Mutex<
        Option<(
            RateLimitStore,
            Arc<dyn portcullis::rate_limit::RateLimitStore>,
        )>,
    >,
}

impl fmt::Debug for Stores {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}

/// A brute-force tracker with the (limit, window) it was built for.
type CachedTracker = (
    (u32, Duration, OnStoreError),
    Arc<FailedAuthTracker>,
    Arc<dyn portcullis::rate_limit::RateLimitStore>,
);

/// A ban list with the settings and store it was built for.
type CachedBans = (
    (BanConfig, OnStoreError),
    Arc<BanList>,
    Arc<dyn portcullis::rate_limit::RateLimitStore>,
);

/// Keys the in-memory rate-limit store tracks at most.
const MEMORY_KEYS: usize = 1_000_000;

impl Stores {
    /// The CSRF guard of `[csrf]`. Without `secret_env` the guard signs with a random secret
    /// drawn once per process and kept across reloads, so tokens survive a reload (but not a
    /// restart, and are not shared between replicas: set `secret_env` for that).
    ///
    /// ```
    /// # use axum::{Router, body::Body};
    /// use portcullis::{Preset, SecurityLayer};
    /// use portcullis_gateway::config::Stores;
    /// # use tower::{Layer, ServiceExt};
    /// # let config = portcullis_gateway::config::GatewayConfig::from_str("server.upstream = \"http://127.0.0.1:3000\"", "portcullis.toml")?;
    /// let guard = Stores::default().csrf_guard(&config.csrf)?;
    /// let layer = SecurityLayer::bare().default_policy(Preset::Public).csrf_guard(guard).build()?;
    /// let app = layer.layer(Router::new().fallback(|| async { "ok" }));
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let post = http::Request::post("/notes")
    ///     .header("host", "app.example.com")
    ///     .header("origin", "https://evil.example")
    ///     .body(Body::empty())?;
    /// assert_eq!(app.oneshot(post).await?.status(), 403); // cross-site
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn csrf_guard(&self, csrf: &CsrfConfig) -> Result<Arc<dyn portcullis::Guard>, ConfigError> {
        use portcullis::csrf::{CsrfGuard, Mode, token::Secret as CsrfSecret};
        let err = |key: &str, e: &dyn std::fmt::Display| ConfigError {
            key: key.to_string(),
            reason: e.to_string(),
        };
        let mut secrets = Vec::new();
        if let Some(s) = &csrf.secret {
            secrets.push(
                CsrfSecret::new(s.expose().to_vec()).map_err(|e| err("csrf.secret_env", &e))?,
            );
            for (i, p) in csrf.previous_secrets.iter().enumerate() {
                secrets.push(
                    CsrfSecret::new(p.expose().to_vec())
                        .map_err(|e| err(&format!("csrf.previous_secret_envs[{i}]"), &e))?,
                );
            }
        } else {
            secrets.push(self.csrf_secret.get_or_init(CsrfSecret::generate).clone());
        }
        let guard = CsrfGuard::builder()
            .mode(match csrf.mode {
                CsrfStrictness::Lenient => Mode::Lenient,
                CsrfStrictness::Strict => Mode::Strict,
            })
            .trusted_origins(csrf.trusted_origins.iter().cloned())
            .public_origins(csrf.public_origin.iter().cloned())
            .bypass(csrf.bypass.iter().cloned())
            .secrets(secrets)
            .insecure_dev(csrf.insecure_dev)
            .build()
            .map_err(|e| err("csrf", &e))?;
        Ok(Arc::new(guard))
    }

    /// Opens the audit writer `config` names (replaying a leftover spool first), or keeps the
    /// open one when the store and spool are unchanged. Call it before
    /// [`GatewayConfig::security_layer_with`] in a server; tools that build a layer without it
    /// (`check-config`) get a layer that audits nowhere.
    ///
    /// ```
    /// use portcullis_gateway::config::{GatewayConfig, Stores};
    /// let toml = r#"
    /// server.upstream = "http://127.0.0.1:3000"
    /// storage.audit = "sqlite://:memory:"
    /// "#;
    /// # let spool = std::env::temp_dir().join(format!("portcullis-doc-open-audit-{}", std::process::id()));
    /// # let toml = format!("{toml}audit.spool_dir = {spool:?}\n");
    /// let config = GatewayConfig::from_str(&toml, "portcullis.toml")?;
    /// let stores = Stores::default();
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// stores.open_audit(&config).await?;
    /// assert!(stores.audit_writer().is_some());
    /// stores.shutdown_audit().await;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # std::fs::remove_dir_all(&spool).ok();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub async fn open_audit(&self, config: &GatewayConfig) -> Result<(), ConfigError> {
        let url = config.storage.audit_url();
        let spool = config.audit_spool_dir();
        let ca = config
            .storage
            .postgres_ca_file
            .as_deref()
            .unwrap_or(Path::new(""));
        let ident = format!("{url}|{}|{}", spool.display(), ca.display());
        let old = {
            let cached = self
                .audit
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if cached.as_ref().is_some_and(|(k, _)| *k == ident) {
                return Ok(());
            }
            cached.as_ref().map(|(_, w)| w.clone())
        };
        let mut wc = WriterConfig::new(spool).retention(config.audit.retention);
        wc.store_options = config.storage.store_options();
        let writer = AuditWriter::open(&url, wc).await.map_err(|e| ConfigError {
            key: "storage.audit".into(),
            reason: e.to_string(),
        })?;
        *self
            .audit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((ident, writer));
        if let Some(old) = old {
            let _ = old.shutdown().await;
        }
        Ok(())
    }

    /// The counters every rate limiter built from these stores counts into: requests
    /// allowed, refused and decided without the store, since the process started, across
    /// reloads.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// use portcullis_gateway::config::Stores;
    /// let stores = Stores::default();
    /// assert!(Arc::ptr_eq(&stores.limiter_stats(), &stores.limiter_stats()));
    /// assert_eq!(stores.limiter_stats().allowed.get(), 0);
    /// ```
    pub fn limiter_stats(&self) -> Arc<portcullis::rate_limit::LimiterStats> {
        self.limiter_stats.clone()
    }

    /// The open audit writer, if any.
    ///
    /// ```
    /// use portcullis_gateway::config::Stores;
    /// // Until `open_audit`, there is no writer: a layer built from these stores audits nowhere.
    /// assert!(Stores::default().audit_writer().is_none());
    /// ```
    pub fn audit_writer(&self) -> Option<AuditWriter> {
        self.audit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(|(_, w)| w.clone())
    }

    /// Writes out every queued event (graceful shutdown).
    ///
    /// ```
    /// use portcullis_gateway::config::Stores;
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let stores = Stores::default();
    /// // ... serve; then, once the connections have drained:
    /// stores.shutdown_audit().await; // no writer open: returns at once
    /// # });
    /// ```
    pub async fn shutdown_audit(&self) {
        let Some(w) = self.audit_writer() else {
            return;
        };
        match w.shutdown().await {
            Ok(()) => tracing::info!("audit log flushed to the store"),
            // Not lost: the spool keeps them, and the next start replays them.
            Err(e) => tracing::warn!(
                error = %e,
                "audit store unreachable at shutdown: events wait in the spool for the next start"
            ),
        }
    }

    /// The brute-force tracker of `[auth]`, counting in the rate-limit store (so replicas
    /// sharing Redis share the count), kept while its settings are unchanged.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// use portcullis_gateway::config::{GatewayConfig, Stores};
    /// let config = GatewayConfig::from_str("server.upstream = \"http://127.0.0.1:3000\"", "portcullis.toml")?;
    /// let stores = Stores::default();
    /// let tracker = stores.failed_auth(&config.auth, &config.storage)?;
    /// assert!(Arc::ptr_eq(&tracker, &stores.failed_auth(&config.auth, &config.storage)?));
    /// let mut stricter = config.auth.clone();
    /// stricter.failed_limit = 3;
    /// assert!(!Arc::ptr_eq(&tracker, &stores.failed_auth(&stricter, &config.storage)?));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn failed_auth(
        &self,
        auth: &AuthConfig,
        storage: &StorageConfig,
    ) -> Result<Arc<FailedAuthTracker>, ConfigError> {
        let store = self.rate_limit_store(storage)?;
        let want = (
            auth.failed_limit,
            auth.failed_window,
            storage.on_store_error,
        );
        let mut cached = match self.failed_auth.lock() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        if let Some((k, t, s)) = cached.as_ref()
            && *k == want
            && Arc::ptr_eq(s, &store)
        {
            return Ok(t.clone());
        }
        let t = Arc::new(
            FailedAuthTracker::with_store(want.0, want.1, store.clone())
                .on_store_error(want.2.into()),
        );
        *cached = Some((want, t.clone(), store));
        Ok(t)
    }

    /// The ban list of `[ban]` (`None` with `offences = 0`), over the rate-limit store (so
    /// replicas sharing Redis share offences and bans), kept while its settings and store
    /// are unchanged: a reload keeps the bans.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// use portcullis_gateway::config::{GatewayConfig, Stores};
    /// let config = GatewayConfig::from_str("server.upstream = \"http://127.0.0.1:3000\"\nban.offences = 100", "portcullis.toml")?;
    /// let stores = Stores::default();
    /// let bans = stores.ban_list(&config.ban, &config.storage)?.expect("on with offences set");
    /// assert!(Arc::ptr_eq(&bans, &stores.ban_list(&config.ban, &config.storage)?.unwrap()));
    /// let mut off = config.ban.clone();
    /// off.offences = 0;
    /// assert!(stores.ban_list(&off, &config.storage)?.is_none());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn ban_list(
        &self,
        ban: &BanConfig,
        storage: &StorageConfig,
    ) -> Result<Option<Arc<BanList>>, ConfigError> {
        if ban.offences == 0 {
            return Ok(None);
        }
        let store = self.rate_limit_store(storage)?;
        let want = (ban.clone(), storage.on_store_error);
        let mut cached = self
            .bans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((k, b, s)) = cached.as_ref()
            && *k == want
            && Arc::ptr_eq(s, &store)
        {
            return Ok(Some(b.clone()));
        }
        let b = Arc::new(
            BanList::with_store(ban.offences, ban.within, ban.ban_for, store.clone())
                .on_store_error(want.1.into()),
        );
        *cached = Some((want, b.clone(), store));
        Ok(Some(b))
    }

    /// The rate-limit store `storage` names, opened once and reused while it is unchanged.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// use portcullis_gateway::config::{GatewayConfig, RateLimitStore, Stores};
    /// let config = GatewayConfig::from_str("server.upstream = \"http://127.0.0.1:3000\"", "portcullis.toml")?;
    /// let stores = Stores::default();
    /// let mut storage = config.storage.clone();
    /// let memory = stores.rate_limit_store(&storage)?;
    /// storage.rate_limit = RateLimitStore::Sqlite(":memory:".into());
    /// let sqlite = stores.rate_limit_store(&storage)?; // the setting changed: a new store
    /// assert!(!Arc::ptr_eq(&memory, &sqlite));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn rate_limit_store(
        &self,
        storage: &StorageConfig,
    ) -> Result<Arc<dyn portcullis::rate_limit::RateLimitStore>, ConfigError> {
        let mut cached = self.rate_limit.lock().map_err(|_| ConfigError {
            key: "storage.rate_limit".into(),
            reason: "store cache poisoned".into(),
        })?;
        if let Some((kind, store)) = cached.as_ref()
            && *kind == storage.rate_limit
        {
            return Ok(store.clone());
        }
        let err = |e: portcullis::rate_limit::StoreError| ConfigError {
            key: "storage.rate_limit".into(),
            reason: e.to_string(),
        };
        let store: Arc<dyn portcullis::rate_limit::RateLimitStore> = match &storage.rate_limit {
            RateLimitStore::Memory => Arc::new(MemoryStore::new(MEMORY_KEYS)),
            RateLimitStore::Sqlite(path) => Arc::new(SqliteStore::open(path).map_err(err)?),
            RateLimitStore::Redis(url) => Arc::new(
                RedisStore::new(
                    url,
                    storage
                        .redis_password
                        .as_ref()
                        .map(|p| String::from_utf8_lossy(p.expose()).into_owned()),
                    &storage.redis_prefix,
                )
                .map_err(err)?,
            ),
        };
        *cached = Some((storage.rate_limit.clone(), store.clone()));
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use portcullis::Control;
    use portcullis::policy::{Algorithm, CspSetting, CsrfMode, RateKey, ReportOnly};

    use super::*;

    const JWT_SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn env(name: &str) -> Result<String, std::env::VarError> {
        match name {
            "JWT_SECRET" | "CSRF_SECRET" => Ok(JWT_SECRET.to_string()),
            "SHORT_SECRET" => Ok("short".to_string()),
            _ => Err(std::env::VarError::NotPresent),
        }
    }

    fn load(text: &str) -> Result<GatewayConfig, ConfigErrors> {
        GatewayConfig::parse(text, "test.toml", Purpose::Serve, &env)
    }

    fn errors(text: &str) -> Vec<ConfigError> {
        load(text).expect_err("the config should be refused").errors
    }

    const HEAD: &str = "[server]\nupstream = \"http://127.0.0.1:3000\"\n\
        [auth.jwt]\nsecret_env = \"JWT_SECRET\"\n[csrf]\nsecret_env = \"CSRF_SECRET\"\n";

    #[test]
    fn a_postgres_ca_file_needs_sslmode_require_and_an_existing_file() {
        let ca = std::env::temp_dir().join(format!("portcullis-ca-{}.pem", std::process::id()));
        std::fs::write(&ca, "not read by the config loader").unwrap();
        let storage = |audit: &str, ca: &Path| {
            format!(
                "{HEAD}[storage]\naudit = \"{audit}\"\npostgres_ca_file = \"{}\"\n",
                ca.display()
            )
        };
        let tls = "postgres://audit@db.example.com:5432/audit?sslmode=require";
        let c = load(&storage(tls, &ca)).unwrap();
        assert_eq!(c.storage.postgres_ca_file.as_deref(), Some(ca.as_path()));
        for (audit, file, reason) in [
            (
                "postgres://audit@db.example.com/audit",
                ca.as_path(),
                "only used with sslmode=require",
            ),
            (
                "jsonl://audit.jsonl",
                ca.as_path(),
                "only used with a postgres://",
            ),
            (tls, Path::new("/no/such/ca.pem"), "does not exist"),
        ] {
            let errs = errors(&storage(audit, file));
            assert!(
                errs.iter()
                    .any(|e| e.key == "storage.postgres_ca_file" && e.reason.contains(reason)),
                "{audit}: {errs:?}"
            );
        }
        let _ = std::fs::remove_file(&ca);
    }

    #[test]
    fn the_postgres_ca_file_reaches_the_audit_store() {
        let dir = std::env::temp_dir().join(format!("portcullis-ca-open-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        let text = |ca: &Path| {
            format!(
                "{HEAD}[audit]\nspool_dir = \"{}\"\n\
                 [storage]\naudit = \"postgres://audit@127.0.0.1:1/audit?sslmode=require\"\n\
                 postgres_ca_file = \"{}\"\n",
                dir.join("spool").display(),
                ca.display()
            )
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Not PEM: opening the store reads the file and says so.
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let config = load(&text(&ca)).unwrap();
        let err = rt
            .block_on(Stores::default().open_audit(&config))
            .unwrap_err();
        assert_eq!(err.key, "storage.audit");
        assert!(err.reason.contains("no usable CA certificate"), "{err:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn strict_route_with_overrides_maps_onto_the_policy() {
        let c = load(&format!(
            "{HEAD}[[route]]\npath = \"/api/admin/**\"\npreset = \"strict\"\n\
             max_body = \"100KiB\"\nrate_limit = \"5/1h\"\nroles = [\"admin\"]\n"
        ))
        .unwrap();
        let p = &c.routes[0].policy;
        assert_eq!(c.routes[0].preset, Preset::Strict);
        assert_eq!(p.max_body_bytes(), Some(100 * 1024));
        assert_eq!(p.limits().len(), 1);
        assert_eq!(p.limits()[0].requests, 5);
        assert_eq!(p.limits()[0].window, Duration::from_secs(3600));
        // The preset decides whose requests count together.
        assert_eq!(p.limits()[0].key, RateKey::User);
        assert!(p.requires_auth());
        assert_eq!(p.any_roles(), ["admin"]);
        assert_eq!(p.allowed_methods().allow_header(), "POST");
        assert_eq!(p.csrf_mode(), CsrfMode::OriginAndToken);
    }

    #[test]
    fn the_admin_token_comes_from_the_environment_and_is_long() {
        let with = |var: &str| {
            HEAD.replacen(
                "[server]\n",
                &format!("[server]\nadmin_token_env = \"{var}\"\n"),
                1,
            )
        };
        let c = load(&with("JWT_SECRET")).unwrap();
        let token = c.server.admin_token.as_ref().expect("a token");
        assert_eq!(token.expose(), JWT_SECRET.as_bytes());
        assert!(!format!("{:?}", c.server).contains(JWT_SECRET));
        assert!(load(HEAD).unwrap().server.admin_token.is_none());
        for var in ["SHORT_SECRET", "UNSET_VAR"] {
            let e = errors(&with(var));
            assert_eq!(e.len(), 1, "{e:?}");
            assert_eq!(e[0].key, "server.admin_token_env");
        }
    }

    /// `"csp"` in `report_only` sends the route's own CSP, or else the layer-wide one, as
    /// report-only; a route without a CSP cannot report one.
    #[test]
    fn a_route_reports_its_csp_only_when_asked() {
        let c = load(&format!(
            "{HEAD}[[route]]\npath = \"/a/**\"\nreport_only = [\"csp\", \"rate_limit\"]\n\
             [[route]]\npath = \"/b/**\"\ncsp = \"default-src 'none'\"\nreport_only = [\"csp\"]\n\
             [[route]]\npath = \"/c/**\"\n"
        ))
        .unwrap();
        let csp = |i: usize| match c.routes[i].policy.csp_setting() {
            CspSetting::Custom(csp) => Some(csp.clone()),
            _ => None,
        };
        let a = csp(0).expect("the layer-wide CSP, reported");
        assert!(a.is_report_only());
        assert_eq!(
            a.render(None),
            c.headers.effective_csp().unwrap().render(None)
        );
        assert_eq!(
            c.routes[0].policy.report_only_mode(),
            &ReportOnly::Controls(vec![Control::RateLimit])
        );
        let b = csp(1).expect("the route's own CSP, reported");
        assert!(b.is_report_only());
        assert_eq!(b.render(None).to_str().unwrap(), "default-src 'none'");
        assert!(csp(2).is_none(), "other routes inherit the enforced one");

        for route in [
            "csp = false\nreport_only = [\"csp\"]",
            "report_only = [\"csp\"]",
        ] {
            let headers = if route.starts_with("csp") {
                ""
            } else {
                "[headers]\ncsp = false\n"
            };
            let e = errors(&format!(
                "{HEAD}{headers}[[route]]\npath = \"/x\"\n{route}\n"
            ));
            assert_eq!(e.len(), 1, "{e:?}");
            assert_eq!(e[0].key, "route[0].report_only");
            assert!(e[0].reason.contains("sends none"), "{e:?}");
        }
    }

    #[test]
    fn every_override_reaches_the_policy() {
        let c = load(&format!(
            "{HEAD}[[route]]\npath = \"/api/hooks/*\"\nmethods = [\"post\", \"PUT\"]\n\
             all_roles = [\"a\", \"b\"]\ncontent_types = [\"application/json\"]\ncsrf = \"off\"\n\
             csp = false\nreport_only = [\"rate_limit\", \"csrf\"]\naudit_allowed = true\n\
             cache = \"default\"\nmax_body = 2048\n\
             rate_limit = [{{requests = 3, window = \"10s\", key = \"header:x-tenant\", algorithm = \"token_bucket\", burst = 2, name = \"burst\"}}, \"100/1d\"]\n"
        ))
        .unwrap();
        let p = &c.routes[0].policy;
        assert_eq!(p.allowed_methods().allow_header(), "POST, PUT");
        assert_eq!(p.required_roles(), ["a", "b"]);
        assert!(p.requires_auth());
        assert_eq!(
            p.allowed_content_types(),
            Some(&["application/json".to_string()][..])
        );
        assert_eq!(p.csrf_mode(), CsrfMode::Off);
        assert!(matches!(p.csp_setting(), CspSetting::Off));
        assert_eq!(
            p.report_only_mode(),
            &ReportOnly::Controls(vec![Control::RateLimit, Control::Csrf])
        );
        assert!(p.audits_allowed());
        assert!(!p.is_no_store());
        assert_eq!(p.max_body_bytes(), Some(2048));
        let l = p.limits();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].name, "burst");
        assert_eq!(l[0].key, RateKey::Header("x-tenant".into()));
        assert_eq!(l[0].algorithm, Algorithm::TokenBucket);
        assert_eq!(l[0].burst, 2);
        assert_eq!(l[1].name, "limit2");
        assert_eq!(l[1].key, RateKey::Ip);
        assert_eq!(l[1].window, Duration::from_secs(86_400));
    }

    #[test]
    fn public_route_defaults_to_the_preset() {
        let c = load("[server]\nupstream = \"http://x\"\n[[route]]\npath = \"/api/**\"\n").unwrap();
        let p = &c.routes[0].policy;
        assert_eq!(p.preset_of(), Some(Preset::Public));
        assert_eq!(p.limits()[0].requests, 60);
        assert!(!p.requires_auth());
        let c = load(
            "[server]\nupstream = \"http://x\"\n[[route]]\npath = \"/a\"\nrate_limit = false\n",
        )
        .unwrap();
        assert!(c.routes[0].policy.limits().is_empty());
    }

    #[test]
    fn every_error_is_collected() {
        let errs = errors(
            "[server]\nlisten = \"nope\"\nbogus = 1\n[[route]]\npath = \"/a/**/b/**\"\n\
             [[route]]\npath = \"/c\"\npreset = \"admin\"\nmax_body = \"lots\"\n",
        );
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"server.listen"), "{keys:?}");
        assert!(keys.contains(&"server.bogus"), "{keys:?}");
        assert!(keys.contains(&"server.upstream"), "{keys:?}");
        assert!(keys.contains(&"route[1].preset"), "{keys:?}");
        assert!(keys.contains(&"route[1].max_body"), "{keys:?}");
    }

    #[test]
    fn duplicate_routes_name_the_first() {
        let errs = errors(
            "[server]\nupstream = \"http://x\"\n[[route]]\npath = \"/a/*\"\n[[route]]\npath = \"/a/*\"\n",
        );
        assert_eq!(errs[0].key, "route[1].path");
        assert!(errs[0].reason.contains("route[0]"), "{}", errs[0].reason);
    }

    #[test]
    fn short_hmac_secrets_are_refused() {
        let errs = errors(
            "[server]\nupstream = \"http://x\"\n[auth.jwt]\nsecret_env = \"SHORT_SECRET\"\n",
        );
        assert_eq!(errs[0].key, "auth.jwt.secret_env");
        assert!(errs[0].reason.contains("at least 32"));
    }

    #[test]
    fn tools_do_not_need_an_upstream() {
        assert!(load("").is_err());
        assert!(GatewayConfig::parse("", "t.toml", Purpose::Tool, &env).is_ok());
    }

    #[test]
    fn syntax_errors_give_line_and_column() {
        let errs = errors("[server]\nlisten = \n");
        assert_eq!(errs[0].key, SYNTAX_KEY);
        assert!(
            errs[0].reason.starts_with("line 2, column "),
            "{}",
            errs[0].reason
        );
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let c = load(HEAD).unwrap();
        let dbg = format!("{c:?}");
        assert!(!dbg.contains(JWT_SECRET));
        assert!(dbg.contains("[redacted]"));
    }

    #[test]
    fn the_layer_builds_from_a_config() {
        let c = load(
            "[server]\nupstream = \"http://x\"\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\n\
             allowed_hosts = [\"example.com\"]\n[cors]\nallow_origins = [\"https://app.example.com\"]\n\
             [headers]\ncsp = \"default-src 'self'\"\nset = { \"x-frame-options\" = \"SAMEORIGIN\" }\n\
             [[route]]\npath = \"/api/**\"\n",
        )
        .unwrap();
        c.security_layer().unwrap();
        // The CORS origin the CSRF check does not trust is pointed out.
        let w = c.unapplied_settings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].key, "cors.allow_origins[0]");
        assert!(
            w[0].reason.contains("csrf.trusted_origins"),
            "{}",
            w[0].reason
        );
        let c = GatewayConfig::from_str(
            "[server]\nupstream = \"http://127.0.0.1:3000\"\n\
             [cors]\nallow_origins = [\"https://app.example.com\"]\n\
             [csrf]\ntrusted_origins = [\"https://app.example.com\"]\n",
            "portcullis.toml",
        )
        .unwrap();
        assert!(c.unapplied_settings().is_empty());
        // The same origin written with its default port is the same origin.
        let c = GatewayConfig::from_str(
            "[server]
upstream = \"http://127.0.0.1:3000\"\n\
             [cors]\nallow_origins = [\"https://app.example.com:443\"]\n\
             [csrf]\ntrusted_origins = [\"https://app.example.com\"]\n",
            "portcullis.toml",
        )
        .unwrap();
        assert!(c.unapplied_settings().is_empty());
    }

    #[test]
    fn a_route_without_a_preset_inside_a_protected_one_is_pointed_out() {
        let text = |preset: &str| {
            format!(
                "[server]\nupstream = \"http://127.0.0.1:3000\"\n\
                 [auth.jwt]\nsecret_env = \"JWT_SECRET\"\n[csrf]\nsecret_env = \"JWT_SECRET\"\n\
                 [[route]]\npath = \"/api/**\"\npreset = \"strict\"\n\
                 [[route]]\npath = \"/api/x\"\n{preset}methods = [\"GET\"]\n\
                 [[route]]\npath = \"/static/*.js\"\n"
            )
        };
        let w = load(&text("")).unwrap().unapplied_settings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].key, "route[1].preset");
        assert!(w[0].reason.contains("/api/**"), "{}", w[0].reason);
        // Trusting every address is pointed out too.
        let c = load(
            "[server]\nupstream = \"http://x\"\ntrusted_proxies = [\"10.0.0.0/8\", \"::/0\"]\n",
        )
        .unwrap();
        let w = c.unapplied_settings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].key, "server.trusted_proxies[1]");
        // Said on purpose: no warning.
        let w = load(&text("preset = \"public\"\n"))
            .unwrap()
            .unapplied_settings();
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn a_jwks_url_over_plain_http_off_the_machine_is_pointed_out() {
        let text = |url: &str| {
            format!(
                "[server]\nupstream = \"http://127.0.0.1:3000\"\n\
                 [auth.jwt]\njwks_url = \"{url}\"\nalgorithms = [\"RS256\"]\n"
            )
        };
        let w = load(&text("http://keycloak:8080/realms/main/certs"))
            .unwrap()
            .unapplied_settings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].key, "auth.jwt.jwks_url");
        assert!(w[0].reason.contains("https://"), "{}", w[0].reason);
        for quiet in [
            "https://id.example.com/jwks.json",
            "http://127.0.0.1:8081/jwks.json",
            "http://localhost:8081/jwks.json",
            "http://[::1]:8081/jwks.json",
        ] {
            let w = load(&text(quiet)).unwrap().unapplied_settings();
            assert!(w.is_empty(), "{quiet}: {w:?}");
        }
    }

    #[test]
    fn cors_star_allows_every_origin_alone_and_without_credentials() {
        let c =
            load("[server]\nupstream = \"http://x\"\n[cors]\nallow_origins = [\"*\"]\n").unwrap();
        let cors = c.cors.as_ref().unwrap().to_cors().unwrap();
        assert!(cors.allows_origin("https://anyone.example"));
        assert!(c.unapplied_settings().is_empty());
        let errs = errors(
            "[server]\nupstream = \"http://x\"\n[cors]\nallow_origins = [\"*\"]\nallow_credentials = true\n",
        );
        assert_eq!(errs[0].key, "cors.allow_credentials", "{errs:?}");
        let errs = errors(
            "[server]\nupstream = \"http://x\"\n[cors]\nallow_origins = [\"*\", \"https://a.example\"]\n",
        );
        assert_eq!(errs[0].key, "cors.allow_origins[0]", "{errs:?}");
    }

    #[test]
    fn a_burst_without_an_algorithm_asks_for_the_token_bucket() {
        let c = load(
            "[server]\nupstream = \"http://x\"\n[[route]]\npath = \"/x\"\n\
             rate_limit = { requests = 5, window = \"1m\", burst = 3 }\n",
        )
        .unwrap();
        let limit = &c.routes[0].policy.limits()[0];
        assert_eq!(limit.algorithm, portcullis::policy::Algorithm::TokenBucket);
        assert_eq!(limit.burst, 3);
    }

    #[test]
    fn presets_with_tokens_need_a_csrf_secret() {
        let errs = errors(
            "[server]\nupstream = \"http://x\"\n[auth.jwt]\nsecret_env = \"JWT_SECRET\"\n\
             [[route]]\npath = \"/api/**\"\npreset = \"authenticated\"\n",
        );
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].key, "route[0].preset");
        assert!(
            errs[0]
                .reason
                .contains("uses CSRF tokens, which need [csrf] secret_env")
        );
        let c = load(
            "[server]\nupstream = \"http://x\"\n[auth.jwt]\nsecret_env = \"JWT_SECRET\"\n\
             [[route]]\npath = \"/api/**\"\npreset = \"authenticated\"\ncsrf = \"origin\"\n",
        );
        assert!(c.is_ok());
    }

    #[test]
    fn auth_presets_need_an_authenticator() {
        let errs = errors(
            "[server]\nupstream = \"http://x\"\n[csrf]\nsecret_env = \"CSRF_SECRET\"\n\
             [[route]]\npath = \"/a\"\npreset = \"strict\"\n\
             [[route]]\npath = \"/b\"\nauth = true\n",
        );
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["route[0].preset", "route[1].auth"]);
    }

    #[test]
    fn jwt_algorithms_are_bound_to_key_sources() {
        let errs = errors(
            "[server]\nupstream = \"http://x\"\n[auth.jwt]\nsecret_env = \"JWT_SECRET\"\n\
             algorithms = [\"RS256\"]\n",
        );
        let reasons: Vec<&str> = errs.iter().map(|e| e.reason.as_str()).collect();
        assert!(
            reasons
                .iter()
                .any(|r| r.contains("RS256 needs public_key_env")),
            "{reasons:?}"
        );
        assert!(
            reasons.iter().any(|r| r.contains("no HS256/HS384/HS512")),
            "{reasons:?}"
        );
    }

    #[test]
    fn unknown_keys_inside_rate_limit_tables_are_refused() {
        let errs = errors(
            "[server]\nupstream = \"http://x\"\n[[route]]\npath = \"/a\"\n\
             rate_limit = [\"1/1s\", {requests = 1, window = \"1s\", per = \"ip\"}]\n",
        );
        assert_eq!(errs[0].key, "route[0].rate_limit[1].per");
    }
}

//! `portcullis demo`: the gateway in front of a built-in app that reproduces the seed's
//! examples, with nothing to set up.
//!
//! One command starts two servers in one process:
//!
//! - the demo app ([`app`]) on a free loopback port: `/api/public-data`, `/api/user/notes`,
//!   `/api/sensitive-operation`, `/api/admin/users`, a login form for `alice`/`alice` and
//!   `admin`/`admin`, and a notes page that posts with the CSRF helper under a nonce CSP;
//! - the gateway in front of it, on `--listen` (default `127.0.0.1:8080`), running the
//!   embedded [`CONFIG_TEMPLATE`]: the seed's presets on the seed's routes.
//!
//! The config is written to a fresh private temporary directory (with the SQLite audit file
//! next to it) and served exactly as `portcullis serve --config` would serve it. Its JWT and
//! CSRF secrets are random for each run and reach it through the environment variables
//! [`JWT_SECRET_ENV`] and [`CSRF_SECRET_ENV`], which the binary sets for itself from
//! [`fresh_secrets`] before any thread starts. The demo then prints the URLs, a development
//! token for each demo user, and curl lines that show each control answering. Ctrl-C (or
//! SIGTERM) stops the gateway gracefully, then the app, and removes the directory.

pub mod app;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::config::{ConfigErrors, GatewayConfig};
use crate::serve::ServeError;

/// The gateway config the demo runs; `{{listen}}` and `{{upstream}}` are filled in at start.
///
/// ```
/// use portcullis_gateway::demo::CONFIG_TEMPLATE;
/// assert!(CONFIG_TEMPLATE.contains("listen = \"{{listen}}\"\nupstream = \"{{upstream}}\""));
/// assert_eq!(CONFIG_TEMPLATE.matches("[[route]]").count(), 8);
/// ```
pub const CONFIG_TEMPLATE: &str = include_str!("config.toml");

/// The environment variable holding this run's JWT secret (`[auth.jwt] secret_env`).
///
/// ```
/// use portcullis_gateway::demo::{CONFIG_TEMPLATE, JWT_SECRET_ENV};
/// assert!(CONFIG_TEMPLATE.contains(&format!("[auth.jwt]\nsecret_env = \"{JWT_SECRET_ENV}\"")));
/// ```
pub const JWT_SECRET_ENV: &str = "PORTCULLIS_DEMO_JWT_SECRET";

/// The environment variable holding this run's CSRF secret (`[csrf] secret_env`).
///
/// ```
/// use portcullis_gateway::demo::{CONFIG_TEMPLATE, CSRF_SECRET_ENV};
/// assert!(CONFIG_TEMPLATE.contains(&format!("[csrf]\nsecret_env = \"{CSRF_SECRET_ENV}\"")));
/// ```
pub const CSRF_SECRET_ENV: &str = "PORTCULLIS_DEMO_CSRF_SECRET";

/// Where the demo listens unless `--listen` says otherwise.
///
/// ```
/// use portcullis_gateway::demo::{DEFAULT_LISTEN, parse_listen};
/// assert_eq!(parse_listen(DEFAULT_LISTEN)?.to_string(), "127.0.0.1:8080");
/// # Ok::<(), portcullis_gateway::demo::DemoError>(())
/// ```
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// How long the printed tokens and login sessions last.
///
/// ```
/// use portcullis_gateway::demo::TOKEN_TTL;
/// assert_eq!(TOKEN_TTL.as_secs(), 8 * 3600); // a working day
/// ```
pub const TOKEN_TTL: Duration = Duration::from_secs(8 * 3600);

/// Exit status of a bad `--listen` (as for a usage error).
const EXIT_USAGE: u8 = 2;

/// Why the demo could not run.
///
/// ```
/// use portcullis_gateway::demo::{DemoError, parse_listen};
/// let err = parse_listen("localhost:8080").unwrap_err();
/// assert!(matches!(err, DemoError::Listen(_)));
/// assert_eq!(err.to_string(), r#"--listen: "localhost:8080" is not a socket address; write IP:PORT such as "127.0.0.1:8080""#);
/// ```
#[derive(Debug)]
pub enum DemoError {
    /// `--listen` is not a usable address.
    Listen(String),
    /// A file, directory or socket could not be set up.
    Io {
        /// What was being done.
        what: String,
        /// The system's error.
        source: std::io::Error,
    },
    /// The embedded config was refused (a bug, or an environment without the secrets).
    Config(ConfigErrors),
    /// A development token could not be minted.
    Token(String),
    /// The gateway stopped with an error.
    Serve(ServeError),
}

impl fmt::Display for DemoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DemoError::Listen(reason) => write!(f, "--listen: {reason}"),
            DemoError::Io { what, source } => write!(f, "{what}: {source}"),
            DemoError::Config(errors) => write!(f, "the embedded demo config: {errors}"),
            DemoError::Token(reason) => write!(f, "cannot mint the demo tokens: {reason}"),
            DemoError::Serve(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for DemoError {}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DemoError {
    let what = what.into();
    move |source| DemoError::Io { what, source }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_hex<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the OS random generator must be available");
    hex(&bytes)
}

/// Fresh secrets for one run, as (environment variable, value) pairs: 256 random bits each,
/// hex-encoded. The binary puts them in its own environment before starting any thread, and
/// the embedded config names those variables.
///
/// ```
/// use portcullis_gateway::demo::{self, CSRF_SECRET_ENV, JWT_SECRET_ENV};
/// let [(jwt_var, jwt), (csrf_var, csrf)] = demo::fresh_secrets();
/// assert_eq!((jwt_var, csrf_var), (JWT_SECRET_ENV, CSRF_SECRET_ENV));
/// assert!(jwt.len() == 64 && jwt.bytes().all(|b| b.is_ascii_hexdigit())); // 256 bits
/// assert_ne!(jwt, csrf);
/// ```
pub fn fresh_secrets() -> [(&'static str, String); 2] {
    [
        (JWT_SECRET_ENV, random_hex::<32>()),
        (CSRF_SECRET_ENV, random_hex::<32>()),
    ]
}

/// The embedded config with the gateway's address, the app's and the admin listener's filled
/// in.
///
/// ```
/// use portcullis_gateway::{config::GatewayConfig, demo};
/// # for (var, value) in demo::fresh_secrets() { unsafe { std::env::set_var(var, value) } }
/// let text = demo::config_text(
///     "127.0.0.1:8080".parse()?,
///     "127.0.0.1:41234".parse()?,
///     "127.0.0.1:9901".parse()?,
/// );
/// assert!(text.contains("upstream = \"http://127.0.0.1:41234\""));
/// let config = GatewayConfig::from_str(&text, "portcullis.toml")?; // with the secrets set
/// assert_eq!(config.routes.len(), 8);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn config_text(listen: SocketAddr, upstream: SocketAddr, admin: SocketAddr) -> String {
    CONFIG_TEMPLATE
        .replace("{{listen}}", &listen.to_string())
        .replace("{{upstream}}", &format!("http://{upstream}"))
        .replace("{{admin}}", &admin.to_string())
}

/// A free loopback port for the demo's admin listener (the banner names it): not the fixed
/// 9901, which a gateway already running, or a second demo, may hold.
async fn admin_address() -> Result<SocketAddr, DemoError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .and_then(|l| l.local_addr())
        .map_err(io_error("cannot find a port for the admin listener"))
}

/// Parses `--listen`: an `IP:PORT` with a port other than 0 (the printed URLs name it).
///
/// ```
/// use portcullis_gateway::demo::parse_listen;
/// assert_eq!(parse_listen("0.0.0.0:8080")?.port(), 8080);
/// assert!(parse_listen("127.0.0.1:0").unwrap_err().to_string().ends_with("choose a port other than 0"));
/// # Ok::<(), portcullis_gateway::demo::DemoError>(())
/// ```
pub fn parse_listen(s: &str) -> Result<SocketAddr, DemoError> {
    let addr: SocketAddr = s.parse().map_err(|_| {
        DemoError::Listen(format!(
            "{s:?} is not a socket address; write IP:PORT such as \"127.0.0.1:8080\""
        ))
    })?;
    if addr.port() == 0 {
        return Err(DemoError::Listen(format!(
            "{s:?}: choose a port other than 0"
        )));
    }
    Ok(addr)
}

/// A private temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir, DemoError> {
        use std::os::unix::fs::DirBuilderExt;
        let path = std::env::temp_dir().join(format!(
            "portcullis-demo-{}-{}",
            std::process::id(),
            random_hex::<4>()
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(io_error(format!("cannot create {}", path.display())))?;
        Ok(TempDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `portcullis demo`: runs until SIGINT or SIGTERM. The secrets of [`fresh_secrets`] must be
/// in the environment already.
///
/// ```no_run
/// use portcullis_gateway::demo;
/// // As the binary does for `portcullis demo`, before any thread starts:
/// for (var, value) in demo::fresh_secrets() {
///     unsafe { std::env::set_var(var, value) };
/// }
/// let status: std::process::ExitCode = demo::main(demo::DEFAULT_LISTEN);
/// ```
pub fn main(listen: &str) -> ExitCode {
    let listen = match parse_listen(listen) {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("portcullis demo: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portcullis demo: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(listen));
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis demo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Starts the app and the gateway in front of it, prints the banner, and serves until
/// SIGINT or SIGTERM.
///
/// ```no_run
/// use portcullis_gateway::demo;
/// # async fn f() -> Result<(), demo::DemoError> {
/// // The secrets of `fresh_secrets` are in the environment already.
/// let listen = demo::parse_listen("127.0.0.1:8080")?;
/// demo::run(listen).await?; // until Ctrl-C
/// # Ok(()) }
/// ```
pub async fn run(listen: SocketAddr) -> Result<(), DemoError> {
    let dir = TempDir::new()?;
    let app_listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(io_error("cannot listen for the demo app on 127.0.0.1"))?;
    let upstream = app_listener
        .local_addr()
        .map_err(io_error("the demo app's address"))?;
    // Fail before printing anything when the address is taken; the gateway binds it again
    // at once.
    drop(
        TcpListener::bind(listen)
            .await
            .map_err(io_error(format!("cannot listen on {listen}")))?,
    );

    let path = dir.path().join("portcullis.toml");
    let admin_listen = admin_address().await?;
    std::fs::write(&path, config_text(listen, upstream, admin_listen))
        .map_err(io_error(format!("cannot write {}", path.display())))?;
    let loaded = crate::reload::FileStamp::of(&path);
    let config = GatewayConfig::from_file(&path).map_err(DemoError::Config)?;
    let jwt = config
        .auth
        .jwt
        .clone()
        .ok_or_else(|| DemoError::Token("the embedded config has no [auth.jwt]".into()))?;
    let mint = |user: &app::DemoUser| {
        crate::auth::mint(&jwt, user.name, &[user.role.to_string()], TOKEN_TTL)
            .map_err(DemoError::Token)
    };
    let [alice, admin] = &app::DEMO_USERS;
    let tokens = Tokens {
        alice: mint(alice)?,
        admin: mint(admin)?,
    };

    let app = app::router(Arc::new(app::DemoApp::new(jwt.clone(), TOKEN_TTL)));
    let (stop_app, app_stopped) = tokio::sync::oneshot::channel::<()>();
    let app_task = tokio::spawn(async move {
        axum::serve(app_listener, app)
            .with_graceful_shutdown(async {
                let _ = app_stopped.await;
            })
            .await
    });

    println!("{}", banner(listen, upstream, admin_listen, &path, &tokens));
    let served = crate::serve::run(&path, loaded, config).await;

    let _ = stop_app.send(());
    match tokio::time::timeout(Duration::from_secs(2), app_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!("the demo app stopped with an error: {e}"),
        Ok(Err(e)) => tracing::warn!("the demo app failed: {e}"),
        Err(_) => tracing::warn!("the demo app did not stop in time"),
    }
    served.map_err(DemoError::Serve)
}

/// The development tokens printed for the two demo users.
struct Tokens {
    alice: String,
    admin: String,
}

/// What the demo prints: where to go, the tokens, and curl lines that show each control
/// answering, each under a comment saying what it should answer.
fn banner(
    listen: SocketAddr,
    upstream: SocketAddr,
    admin_listen: SocketAddr,
    config: &Path,
    tokens: &Tokens,
) -> String {
    // A wildcard listen address is reached through loopback.
    let host = if listen.ip().is_unspecified() {
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port())
    } else {
        listen
    };
    let g = format!("http://{host}");
    let json = "-H 'Content-Type: application/json'";
    let alice = r#"-H "Authorization: Bearer $ALICE""#;
    let admin = r#"-H "Authorization: Bearer $ADMIN""#;
    let csrf = r#"-H "X-CSRF-Token: $(awk '$6 == "csrf" {print $7}' demo.jar)""#;
    let controls = [
        (
            "200, with the security headers, RateLimit headers and a nonce CSP",
            format!("curl -i {g}/api/public-data"),
        ),
        (
            "60 a minute per address, then 429 with Retry-After",
            format!(
                "for i in $(seq 100); do curl -s -o /dev/null -w '%{{http_code}}\\n' {g}/api/public-data; done | sort | uniq -c"
            ),
        ),
        (
            "405 with Allow: GET, HEAD: a method the route does not list",
            format!("curl -i -X DELETE {g}/api/public-data"),
        ),
        ("401: not logged in", format!("curl -i {g}/api/user/notes")),
        (
            "403: a POST without a CSRF token",
            format!("curl -i -X POST {alice} {json} -d '{{\"text\":\"hi\"}}' {g}/api/user/notes"),
        ),
        (
            "403 as alice, 200 as admin",
            format!("curl -i {alice} {g}/api/admin/users\n  curl -i {admin} {g}/api/admin/users"),
        ),
        (
            "403: the same route once the path is made canonical, so the same policy",
            format!("curl -i --path-as-is {alice} '{g}/api//admin/./users'"),
        ),
        (
            "400: an encoded slash is ambiguous, so it is refused",
            format!("curl -i '{g}/api/admin%2fusers'"),
        ),
    ];
    let browser = [
        (
            "303 with Set-Cookie: authToken (HttpOnly, SameSite=Lax)",
            format!(
                "curl -si -c demo.jar -d username=alice -d password=alice {g}/login | grep -i '^set-cookie'"
            ),
        ),
        (
            "200: alice's notes; the gateway also sets the csrf cookie",
            format!("curl -s -b demo.jar -c demo.jar {g}/api/user/notes"),
        ),
        (
            "201: the token sent back as X-CSRF-Token",
            format!(
                "curl -i -b demo.jar {csrf} {json} -d '{{\"text\":\"hello\"}}' {g}/api/user/notes"
            ),
        ),
        (
            "413: over the route's 100 KiB",
            format!(
                "head -c 200000 /dev/zero | curl -i -b demo.jar {csrf} {json} --data-binary @- {g}/api/sensitive-operation"
            ),
        ),
    ];
    let lines = |list: &[(&str, String)]| {
        list.iter()
            .map(|(what, cmd)| format!("  # {what}\n  {cmd}\n"))
            .collect::<String>()
    };
    format!(
        "\
Portcullis demo: the gateway in front of a built-in app that reproduces the seed's examples.

  Open     {g}/login (alice/alice or admin/admin), then {g}/notes
  Gateway  {g}  every request passes the controls of the embedded config
  App      http://{upstream}  the app alone, on loopback (the same routes, no controls)
  Admin    http://{admin_listen}/  the dashboard: refusals, offenders, bans, the audit log
  Config   {config}  (removed on exit)

Development tokens for this run (HS256 with a random per-run key, valid {ttl} h); paste them
into a shell:

  export ALICE='{alice_token}'
  export ADMIN='{admin_token}'

Each control answering:

{controls}
Logged in like a browser, with the CSRF token from the `csrf` cookie the gateway sets:

{browser}
Ctrl-C stops the demo.",
        config = config.display(),
        ttl = TOKEN_TTL.as_secs() / 3600,
        alice_token = tokens.alice,
        admin_token = tokens.admin,
        controls = lines(&controls),
        browser = lines(&browser),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_fresh_and_long_enough() {
        let [(a_name, a), (b_name, b)] = fresh_secrets();
        assert_eq!((a_name, b_name), (JWT_SECRET_ENV, CSRF_SECRET_ENV));
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_ne!(a, fresh_secrets()[0].1);
    }

    #[test]
    fn listen_needs_a_real_port() {
        assert!(parse_listen("127.0.0.1:8080").is_ok());
        assert!(parse_listen("127.0.0.1:0").is_err());
        assert!(parse_listen("localhost").is_err());
    }
}

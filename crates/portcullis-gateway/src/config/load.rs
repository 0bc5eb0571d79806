//! The walk over the parsed file: one method per section, every problem recorded with its
//! key path, cross-section checks (authenticator, CSRF secret) at the route level.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use portcullis::client_ip::Cidr;
use portcullis::cors::Cors;
use portcullis::headers::security::{HstsMode, SecurityHeaders};
use portcullis::methods::MethodSet;
use portcullis::policy::{Algorithm, CspSetting, CsrfMode, RateKey, RateLimitSpec, ReportOnly};
use portcullis::route::RouteTable;
use portcullis::{Control, Csp, Policy, Preset};
use toml::{Table, Value};

use super::schema::{Errors, Item, Section, expected, strings_of};
use super::values::{
    AuditStore, RateLimitStore, check_content_type, check_cookie_name, check_env_name,
    check_header_name, check_label, check_rate_key_header, parse_audit_store, parse_csp,
    parse_duration, parse_duration_or_zero, parse_host, parse_origin, parse_rate,
    parse_rate_limit_store, parse_rfc3339, parse_sha256, parse_size, parse_upstream,
    parse_url_with_path, resolve_path,
};
use super::{
    ApiKeyConfig, ApiKeyHash, AuditConfig, AuthConfig, BanConfig, ConfigError, CorsConfig,
    CsrfConfig, CsrfStrictness, Env, GatewayConfig, HeadersConfig, JwtAlgorithm, JwtConfig,
    MIN_HMAC_SECRET_BYTES, OnStoreError, Purpose, RouteConfig, SYNTAX_KEY, Secret, ServerConfig,
    StorageConfig, Threading, TlsConfig, UpstreamKind,
};

/// True when two listeners could not both bind: the same port (not 0, which picks a free
/// one) on the same address, or on any address when either is the wildcard.
fn same_listen_port(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Renders a TOML syntax error as `line L, column C: MESSAGE`.
pub(super) fn syntax_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let mut at = e.span().map_or(0, |s| s.start).min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit_once('\n')
        .map_or(before, |(_, l)| l)
        .chars()
        .count()
        + 1;
    ConfigError {
        key: SYNTAX_KEY.to_string(),
        reason: format!("line {line}, column {column}: {}", e.message().trim()),
    }
}

/// The section `name` of `root`; a missing one is empty, so its defaults apply.
fn section_or_empty<'t>(
    root: &mut Section<'t>,
    name: &'static str,
    errs: &mut Errors,
    empty: &'t Table,
) -> Section<'t> {
    root.section(name, errs)
        .unwrap_or_else(|| Section::at(name.to_string(), empty))
}

/// Walks the file; every problem goes to `errs`.
pub(super) struct Loader<'e> {
    pub(super) errs: Errors,
    pub(super) env: Env<'e>,
    pub(super) base: PathBuf,
    pub(super) purpose: Purpose,
}

/// What the cross-section checks need to know about `[auth]` and `[csrf]`.
struct Present {
    authenticator: bool,
    csrf_secret: bool,
    /// The layer-wide CSP as sent (`[headers]`), for routes that report it only.
    layer_csp: Option<Csp>,
}

impl Loader<'_> {
    pub(super) fn config(&mut self, table: &Table, purpose: Purpose) -> Option<GatewayConfig> {
        let mut root = Section::root(table);
        let empty = Table::new();
        let server = section_or_empty(&mut root, "server", &mut self.errs, &empty);
        let storage = section_or_empty(&mut root, "storage", &mut self.errs, &empty);
        let auth = section_or_empty(&mut root, "auth", &mut self.errs, &empty);
        let audit = section_or_empty(&mut root, "audit", &mut self.errs, &empty);
        let ban = section_or_empty(&mut root, "ban", &mut self.errs, &empty);
        let csrf = section_or_empty(&mut root, "csrf", &mut self.errs, &empty);
        let headers = section_or_empty(&mut root, "headers", &mut self.errs, &empty);
        let cors = root.section("cors", &mut self.errs);
        let mut present = Present {
            authenticator: auth.table().contains_key("jwt")
                || auth.table().contains_key("api_keys"),
            csrf_secret: csrf.table().contains_key("secret_env"),
            layer_csp: None,
        };
        let server = self.server(server, purpose);
        let storage = self.storage(storage);
        let auth = self.auth(auth);
        let audit = self.audit(audit);
        let ban = self.ban(ban);
        let csrf = self.csrf(csrf);
        let headers = self.headers(headers);
        present.layer_csp = headers.as_ref().and_then(|h| h.effective_csp());
        let cors = cors.map(|s| self.cors(s));
        let routes = root.sections("route", &mut self.errs);
        let routes = self.routes(routes, &present);
        root.finish(&mut self.errs);
        Some(GatewayConfig {
            server: server?,
            storage: storage?,
            auth: auth?,
            audit: audit?,
            ban: ban?,
            csrf: csrf?,
            headers: headers?,
            cors: cors.flatten(),
            routes,
        })
    }

    /// A secret from the environment variable named at `name`; HMAC secrets are checked
    /// for length.
    fn env_secret(
        &mut self,
        sec: &mut Section<'_>,
        name: &'static str,
        hmac: bool,
    ) -> Option<Secret> {
        let var = sec.string(name, &mut self.errs)?;
        self.read_env(&sec.key(name), var, hmac)
    }

    /// The secret at `name` when the purpose needs it: `Some(None)` when it does not (the
    /// variable's name is still checked), `None` after an error.
    fn optional_secret(
        &mut self,
        sec: &mut Section<'_>,
        name: &'static str,
        hmac: bool,
    ) -> Option<Option<Secret>> {
        let key = sec.key(name);
        if self.reads_secret(&key) {
            return self.env_secret(sec, name, hmac).map(Some);
        }
        let var = sec.string(name, &mut self.errs)?;
        self.env_name_only(&key, var).then_some(None)
    }

    /// Whether the config's purpose uses the secret at `key`: `audit query` needs only the
    /// audit store's password, and an operator reading the log should not need the JWT or
    /// CSRF secrets in their environment.
    fn reads_secret(&self, key: &str) -> bool {
        match self.purpose {
            Purpose::Serve | Purpose::Tool => true,
            Purpose::AuditReader => key == "storage.postgres_password_env",
        }
    }

    /// Checks `var` is a variable name without reading it; false (with the error) if not.
    fn env_name_only(&mut self, key: &str, var: &str) -> bool {
        match check_env_name(var) {
            Ok(_) => true,
            Err(reason) => {
                self.errs.push(key, reason);
                false
            }
        }
    }

    fn read_env(&mut self, key: &str, var: &str, hmac: bool) -> Option<Secret> {
        if let Err(reason) = check_env_name(var) {
            self.errs.push(key, reason);
            return None;
        }
        match (self.env)(var) {
            Ok(v) if !v.is_empty() => {
                if hmac && v.len() < MIN_HMAC_SECRET_BYTES {
                    self.errs.push(
                        key,
                        format!(
                            "the HMAC secret in {var} is {} bytes; use at least {MIN_HMAC_SECRET_BYTES} (e.g. `openssl rand -base64 48`)",
                            v.len()
                        ),
                    );
                    return None;
                }
                Some(Secret::new(v))
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                self.errs.push(
                    key,
                    format!("environment variable {var} is not valid UTF-8"),
                );
                None
            }
            _ if looks_like_a_secret(var) => {
                self.errs.push(
                    key,
                    format!(
                        "the environment variable named here ({} characters, mixed case) is not \
                         set; is it the secret itself? Name the variable that holds it",
                        var.len()
                    ),
                );
                None
            }
            _ => {
                self.errs
                    .push(key, format!("environment variable {var} is not set"));
                None
            }
        }
    }

    fn duration(
        &mut self,
        sec: &mut Section<'_>,
        name: &'static str,
        default: Duration,
    ) -> Option<Duration> {
        if !sec.has(name) {
            return Some(default);
        }
        sec.parsed(name, &mut self.errs, parse_duration)
    }

    fn socket_addr(&mut self, sec: &mut Section<'_>, name: &'static str) -> Option<SocketAddr> {
        sec.parsed(name, &mut self.errs, |s| {
            s.parse::<SocketAddr>().map_err(|_| {
                format!("{s:?} is not a socket address; write IP:PORT such as \"127.0.0.1:8080\" or \"[::1]:8080\"")
            })
        })
    }

    fn file_path(
        &mut self,
        sec: &mut Section<'_>,
        name: &'static str,
        must_exist: bool,
    ) -> Option<PathBuf> {
        let p = sec.string(name, &mut self.errs)?;
        if p.is_empty() {
            self.errs.push(sec.key(name), "the path is empty");
            return None;
        }
        let path = resolve_path(&self.base, p);
        if must_exist && !path.is_file() {
            self.errs.push(
                sec.key(name),
                format!("file {} does not exist", path.display()),
            );
            return None;
        }
        Some(path)
    }

    /// A list of strings each checked by `check`, errors at the item's key.
    fn checked_list<T>(
        &mut self,
        items: Vec<Item<'_>>,
        check: impl Fn(&str) -> Result<T, String>,
    ) -> Vec<T> {
        items
            .into_iter()
            .filter_map(|it| match check(it.value) {
                Ok(v) => Some(v),
                Err(reason) => {
                    self.errs.push(it.key, reason);
                    None
                }
            })
            .collect()
    }

    fn list<T>(
        &mut self,
        sec: &mut Section<'_>,
        name: &'static str,
        check: impl Fn(&str) -> Result<T, String>,
    ) -> Vec<T> {
        match sec.strings(name, &mut self.errs) {
            Some(items) => self.checked_list(items, check),
            None => Vec::new(),
        }
    }

    fn choice<T: Copy>(
        &mut self,
        sec: &mut Section<'_>,
        name: &'static str,
        options: &[(&str, T)],
        default: T,
    ) -> Option<T> {
        if !sec.has(name) {
            return Some(default);
        }
        sec.parsed(name, &mut self.errs, |s| {
            options
                .iter()
                .find(|(n, _)| *n == s)
                .map(|(_, v)| *v)
                .ok_or_else(|| {
                    let names: Vec<String> =
                        options.iter().map(|(n, _)| format!("{n:?}")).collect();
                    format!("unknown value {s:?}; expected one of {}", names.join(", "))
                })
        })
    }

    fn server(&mut self, mut s: Section<'_>, purpose: Purpose) -> Option<ServerConfig> {
        let listen = if s.has("listen") {
            self.socket_addr(&mut s, "listen")
        } else {
            Some(SocketAddr::from(([127, 0, 0, 1], 8080)))
        };
        let upstream = if s.has("upstream") {
            s.parsed("upstream", &mut self.errs, parse_upstream)
                .map(Some)
        } else {
            if purpose == Purpose::Serve {
                self.errs.push(
                    s.key("upstream"),
                    "required: the URL of the application behind the gateway",
                );
            }
            Some(None)
        };
        let upstream_kind = self.choice(
            &mut s,
            "upstream_kind",
            &[
                ("generic", UpstreamKind::Generic),
                ("nextjs", UpstreamKind::Nextjs),
            ],
            UpstreamKind::Generic,
        );
        let trusted_proxies = self.list(&mut s, "trusted_proxies", |c| {
            Cidr::parse(c).map(|_| c.trim().to_string())
        });
        let allowed_hosts = self.list(&mut s, "allowed_hosts", parse_host);
        let admin_hosts = self.list(&mut s, "admin_hosts", parse_host);
        let admin_token = if s.has("admin_token_env") {
            self.optional_secret(&mut s, "admin_token_env", true)
        } else {
            Some(None)
        };
        // On by default on loopback; `admin_listen = false` turns it off. Only an explicit
        // address must bind: the default one is skipped with a warning when taken.
        let admin_explicit = s.has("admin_listen");
        let admin_listen = match s.value("admin_listen") {
            None => Some(Some(SocketAddr::from(([127, 0, 0, 1], 9901)))),
            Some(Value::Boolean(false)) => Some(None),
            Some(_) => self.socket_addr(&mut s, "admin_listen").map(Some),
        };
        let e = &mut self.errs;
        let max_header_bytes = s
            .integer("max_header_bytes", e, 1024..=1 << 20)
            .map_or(Some(16_384), |v| usize::try_from(v).ok());
        let max_connections = s
            .integer("max_connections", e, 1..=10_000_000)
            .map_or(Some(10_000), |v| usize::try_from(v).ok());
        let workers = s
            .integer("workers", e, 0..=4096)
            .map_or(Some(0), |v| usize::try_from(v).ok());
        let threading = self.choice(
            &mut s,
            "threading",
            &[
                ("per-core", Threading::PerCore),
                ("work-stealing", Threading::WorkStealing),
            ],
            Threading::PerCore,
        );
        let header_read_timeout =
            self.duration(&mut s, "header_read_timeout", Duration::from_secs(10));
        let request_timeout = self.duration(&mut s, "request_timeout", Duration::from_secs(30));
        let idle_timeout = self.duration(&mut s, "idle_timeout", Duration::from_secs(60));
        let upstream_connect_timeout =
            self.duration(&mut s, "upstream_connect_timeout", Duration::from_secs(5));
        let upstream_timeout = self.duration(&mut s, "upstream_timeout", Duration::from_secs(30));
        let upstream_idle_timeout =
            self.duration(&mut s, "upstream_idle_timeout", Duration::from_secs(4));
        let tunnel_idle_timeout =
            self.duration(&mut s, "tunnel_idle_timeout", Duration::from_secs(300));
        let shutdown_timeout = self.duration(&mut s, "shutdown_timeout", Duration::from_secs(30));
        let http2_max_concurrent_streams = s
            .integer("http2_max_concurrent_streams", &mut self.errs, 1..=10_000)
            .map_or(Some(100), |v| u32::try_from(v).ok());
        let nonce_placeholder = if s.has("nonce_placeholder") {
            s.parsed("nonce_placeholder", &mut self.errs, |p| {
                let ok = !p.is_empty()
                    && p.len() <= 64
                    && p.bytes()
                        .all(|b| b.is_ascii_graphic() && !b"\"'<>&".contains(&b));
                if ok {
                    Ok(p.to_string())
                } else {
                    Err(format!(
                        "{p:?} must be 1 to 64 visible ASCII characters without quotes, < > or &"
                    ))
                }
            })
        } else {
            Some("{{portcullis-nonce}}".to_string())
        };
        let tls = match s.section("tls", &mut self.errs) {
            Some(t) => self.tls(t).map(Some),
            None => Some(None),
        };
        // The admin listener binds after the traffic one: on the same port it could never
        // start, and an explicit `admin_listen` that cannot bind stops `serve`.
        if admin_explicit
            && let (Some(l), Some(Some(a))) = (listen, admin_listen)
            && same_listen_port(l, a)
        {
            self.errs.push(
                s.key("admin_listen"),
                format!(
                    "{a} takes the port of server.listen ({l}); the admin listener needs its own port"
                ),
            );
        }
        s.finish(&mut self.errs);
        Some(ServerConfig {
            listen: listen?,
            upstream: upstream?,
            upstream_kind: upstream_kind?,
            trusted_proxies,
            allowed_hosts,
            admin_hosts,
            admin_token: admin_token?,
            admin_listen: admin_listen?,
            admin_listen_explicit: admin_explicit,
            max_header_bytes: max_header_bytes?,
            max_connections: max_connections?,
            header_read_timeout: header_read_timeout?,
            request_timeout: request_timeout?,
            idle_timeout: idle_timeout?,
            upstream_connect_timeout: upstream_connect_timeout?,
            upstream_timeout: upstream_timeout?,
            upstream_idle_timeout: upstream_idle_timeout?,
            tunnel_idle_timeout: tunnel_idle_timeout?,
            shutdown_timeout: shutdown_timeout?,
            http2_max_concurrent_streams: http2_max_concurrent_streams?,
            workers: workers?,
            threading: threading?,
            nonce_placeholder: nonce_placeholder?,
            tls: tls?,
        })
    }

    fn tls(&mut self, mut t: Section<'_>) -> Option<TlsConfig> {
        let (has_cert, has_key) = (t.has("cert"), t.has("key"));
        if has_cert != has_key {
            let (missing, other) = if has_cert {
                ("key", "cert")
            } else {
                ("cert", "key")
            };
            self.errs
                .push(t.key(missing), format!("required together with {other}"));
        } else if !has_cert {
            self.errs
                .push(t.key("cert"), "required: [server.tls] needs cert and key");
        }
        let cert = self.file_path(&mut t, "cert", true);
        let key = self.file_path(&mut t, "key", true);
        let redirect = if t.has("redirect_http_listen") {
            self.socket_addr(&mut t, "redirect_http_listen").map(Some)
        } else {
            Some(None)
        };
        t.finish(&mut self.errs);
        Some(TlsConfig {
            cert: cert?,
            key: key?,
            redirect_http_listen: redirect?,
        })
    }

    fn storage(&mut self, mut s: Section<'_>) -> Option<StorageConfig> {
        let base = self.base.clone();
        let rate_limit = if s.has("rate_limit") {
            s.parsed("rate_limit", &mut self.errs, |v| {
                parse_rate_limit_store(v, &base)
            })
        } else {
            Some(RateLimitStore::Memory)
        };
        let redis_password = if s.has("redis_password_env") {
            if matches!(rate_limit, Some(ref r) if !matches!(r, RateLimitStore::Redis(_))) {
                self.errs.push(
                    s.key("redis_password_env"),
                    "only used with a redis:// or rediss:// rate_limit store",
                );
            }
            self.optional_secret(&mut s, "redis_password_env", false)
        } else {
            Some(None)
        };
        let redis_prefix = if s.has("redis_prefix") {
            s.parsed("redis_prefix", &mut self.errs, |p| {
                if p.is_empty()
                    || p.bytes()
                        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
                {
                    Err(format!("{p:?} must be non-empty and without spaces"))
                } else {
                    Ok(p.to_string())
                }
            })
        } else {
            Some("portcullis:".to_string())
        };
        let audit = if s.has("audit") {
            s.parsed("audit", &mut self.errs, |v| parse_audit_store(v, &base))
        } else {
            Some(AuditStore::Sqlite(resolve_path(
                &base,
                "portcullis-audit.db",
            )))
        };
        let postgres_password = if s.has("postgres_password_env") {
            if matches!(audit, Some(ref a) if !matches!(a, AuditStore::Postgres(_))) {
                self.errs.push(
                    s.key("postgres_password_env"),
                    "only used with a postgres:// audit store",
                );
            }
            self.optional_secret(&mut s, "postgres_password_env", false)
        } else {
            Some(None)
        };
        let postgres_ca_file = if s.has("postgres_ca_file") {
            match &audit {
                Some(AuditStore::Postgres(url)) if !url.contains("sslmode=require") => {
                    self.errs.push(
                        s.key("postgres_ca_file"),
                        "only used with sslmode=require in the postgres:// URL (without it the \
                         connection is not encrypted)",
                    );
                }
                Some(AuditStore::Postgres(_)) | None => {}
                Some(_) => self.errs.push(
                    s.key("postgres_ca_file"),
                    "only used with a postgres:// audit store",
                ),
            }
            self.file_path(&mut s, "postgres_ca_file", true).map(Some)
        } else {
            Some(None)
        };
        let on_store_error = self.choice(
            &mut s,
            "on_store_error",
            &[
                ("closed", OnStoreError::Closed),
                ("open", OnStoreError::Open),
            ],
            OnStoreError::Closed,
        );
        s.finish(&mut self.errs);
        Some(StorageConfig {
            rate_limit: rate_limit?,
            redis_password: redis_password?,
            redis_prefix: redis_prefix?,
            audit: audit?,
            postgres_password: postgres_password?,
            postgres_ca_file: postgres_ca_file?,
            on_store_error: on_store_error?,
        })
    }

    fn auth(&mut self, mut s: Section<'_>) -> Option<AuthConfig> {
        let cookie = if s.has("cookie") {
            s.parsed("cookie", &mut self.errs, check_cookie_name)
        } else {
            Some("authToken".to_string())
        };
        let failed_limit = s
            .integer("failed_limit", &mut self.errs, 1..=1_000_000)
            .map_or(Some(10), |v| u32::try_from(v).ok());
        let failed_window = self.duration(&mut s, "failed_window", Duration::from_secs(15 * 60));
        let jwt = match s.section("jwt", &mut self.errs) {
            Some(j) => self.jwt(j).map(Some),
            None => Some(None),
        };
        let key_sections = s.sections("api_keys", &mut self.errs);
        let mut api_keys: Vec<ApiKeyConfig> = Vec::new();
        let mut ids: Vec<(String, String)> = Vec::new();
        let mut keys_ok = true;
        for k in key_sections {
            let path = k.path().to_string();
            match self.api_key(k) {
                Some(key) => {
                    if let Some((_, first)) = ids.iter().find(|(id, _)| *id == key.id) {
                        self.errs.push(
                            format!("{path}.id"),
                            format!("duplicate id {:?} (also {first})", key.id),
                        );
                    }
                    ids.push((key.id.clone(), path));
                    api_keys.push(key);
                }
                None => keys_ok = false,
            }
        }
        s.finish(&mut self.errs);
        Some(AuthConfig {
            cookie: cookie?,
            failed_limit: failed_limit?,
            failed_window: failed_window?,
            jwt: jwt?,
            api_keys: keys_ok.then_some(api_keys)?,
        })
    }

    fn jwt(&mut self, mut j: Section<'_>) -> Option<JwtConfig> {
        let sources = ["secret_env", "public_key_env", "jwks_file", "jwks_url"].map(|k| j.has(k));
        if !sources.iter().any(|&b| b) {
            self.errs.push(
                j.path().to_string(),
                "no key source: set secret_env, public_key_env, jwks_file or jwks_url",
            );
        }
        let [has_secret, has_pem, has_jwks_file, has_jwks_url] = sources;
        let has_public = has_pem || has_jwks_file || has_jwks_url;
        let secret = if has_secret {
            self.optional_secret(&mut j, "secret_env", true)
        } else {
            Some(None)
        };
        let public_key_pem = if has_pem {
            let key = j.key("public_key_env");
            self.optional_secret(&mut j, "public_key_env", false)
                .and_then(|s| {
                    let Some(s) = s else { return Some(None) };
                    let pem = String::from_utf8_lossy(s.expose()).into_owned();
                    if pem.trim_start().starts_with("-----BEGIN ") {
                        Some(Some(pem))
                    } else {
                        self.errs.push(
                            key,
                            "the environment variable does not hold a PEM key (-----BEGIN …)",
                        );
                        None
                    }
                })
        } else {
            Some(None)
        };
        let jwks_file = if has_jwks_file {
            self.file_path(&mut j, "jwks_file", true).map(Some)
        } else {
            Some(None)
        };
        let jwks_url = if has_jwks_url {
            j.parsed("jwks_url", &mut self.errs, parse_url_with_path)
                .map(Some)
        } else {
            Some(None)
        };
        let jwks_ca_file = if j.has("jwks_ca_file") {
            self.file_path(&mut j, "jwks_ca_file", true).map(Some)
        } else {
            Some(None)
        };
        let algorithms = if j.has("algorithms") {
            let key = j.key("algorithms");
            let algs = self.list(&mut j, "algorithms", |a| {
                if a.eq_ignore_ascii_case("none") {
                    return Err("alg \"none\" (unsigned tokens) is never accepted".to_string());
                }
                JwtAlgorithm::from_name(a).ok_or_else(|| {
                    let names: Vec<&str> = JwtAlgorithm::ALL.iter().map(|a| a.name()).collect();
                    format!(
                        "unknown algorithm {a:?}; expected one of {}",
                        names.join(", ")
                    )
                })
            });
            // The allowlist is bound to the keys: an algorithm with no key of its kind is a
            // mistake, and so is a key no allowed algorithm uses.
            if let Some(a) = algs.iter().find(|a| a.is_hmac()).filter(|_| !has_secret) {
                self.errs
                    .push(key.clone(), format!("{} needs secret_env", a.name()));
            }
            if let Some(a) = algs.iter().find(|a| !a.is_hmac()).filter(|_| !has_public) {
                self.errs.push(
                    key.clone(),
                    format!("{} needs public_key_env, jwks_file or jwks_url", a.name()),
                );
            }
            if has_secret && !algs.is_empty() && !algs.iter().any(|a| a.is_hmac()) {
                self.errs.push(
                    key.clone(),
                    "secret_env is set but no HS256/HS384/HS512 algorithm is allowed",
                );
            }
            if has_public && !algs.is_empty() && !algs.iter().any(|a| !a.is_hmac()) {
                self.errs.push(
                    key,
                    "a public key source is set but only HMAC algorithms are allowed",
                );
            }
            Some(algs)
        } else if has_public {
            self.errs.push(
                j.key("algorithms"),
                "required with public_key_env, jwks_file or jwks_url: list what the keys use, e.g. [\"RS256\"]",
            );
            None
        } else {
            Some(vec![JwtAlgorithm::Hs256])
        };
        let issuer = j.string("issuer", &mut self.errs).map(str::to_string);
        let audience = match j.value("audience") {
            None => Vec::new(),
            Some(Value::String(a)) => vec![a.clone()],
            Some(v @ Value::Array(_)) => strings_of(&j.key("audience"), v, &mut self.errs)
                .unwrap_or_default()
                .into_iter()
                .map(|i| i.value.to_string())
                .collect(),
            Some(other) => {
                self.errs.push(
                    j.key("audience"),
                    expected("a string or an array of strings", other),
                );
                Vec::new()
            }
        };
        let roles_claim = if j.has("roles_claim") {
            j.parsed("roles_claim", &mut self.errs, |c| {
                if c.split('.').all(|p| !p.is_empty()) {
                    Ok(c.to_string())
                } else {
                    Err(format!("{c:?} is not a claim path; write a name or dotted names such as \"realm_access.roles\""))
                }
            })
        } else {
            Some("roles".to_string())
        };
        let leeway = if j.has("leeway") {
            j.parsed("leeway", &mut self.errs, |v| {
                let d = parse_duration_or_zero(v)?;
                if d > MAX_LEEWAY {
                    return Err(format!(
                        "{v:?} is over {} s: a leeway that long keeps expired tokens alive; \
                         fix the clocks instead",
                        MAX_LEEWAY.as_secs()
                    ));
                }
                Ok(d)
            })
        } else {
            Some(Duration::from_secs(60))
        };
        let typ = j.string("typ", &mut self.errs).map(str::to_string);
        j.finish(&mut self.errs);
        Some(JwtConfig {
            secret: secret?,
            public_key_pem: public_key_pem?,
            jwks_file: jwks_file?,
            jwks_url: jwks_url?,
            jwks_ca_file: jwks_ca_file?,
            algorithms: algorithms?,
            issuer,
            audience,
            roles_claim: roles_claim?,
            leeway: leeway?,
            typ,
        })
    }

    fn api_key(&mut self, mut k: Section<'_>) -> Option<ApiKeyConfig> {
        let id = k
            .required_string("id", &mut self.errs)
            .and_then(|id| match check_label(id) {
                Ok(id) => Some(id),
                Err(reason) => {
                    self.errs.push(k.key("id"), reason);
                    None
                }
            });
        let hash = if k.has("hash") {
            k.parsed("hash", &mut self.errs, parse_sha256)
        } else {
            self.errs.push(
                k.key("hash"),
                "required: \"sha256:<64 hex>\" (see `portcullis apikey new`)",
            );
            None
        };
        let roles = self.list(&mut k, "roles", check_label);
        let expires = match k.value("expires") {
            None => Some(None),
            Some(v) => match parse_rfc3339(v) {
                Ok(t) => Some(Some(t)),
                Err(reason) => {
                    self.errs.push(k.key("expires"), reason);
                    None
                }
            },
        };
        k.finish(&mut self.errs);
        Some(ApiKeyConfig {
            id: id?,
            hash: ApiKeyHash(hash?),
            roles,
            expires: expires?,
        })
    }

    fn audit(&mut self, mut a: Section<'_>) -> Option<AuditConfig> {
        let retention = self.duration(&mut a, "retention", Duration::from_secs(90 * 86_400));
        let spool_dir = if a.has("spool_dir") {
            self.file_path(&mut a, "spool_dir", false).map(Some)
        } else {
            Some(None)
        };
        a.finish(&mut self.errs);
        Some(AuditConfig {
            retention: retention?,
            spool_dir: spool_dir?,
        })
    }

    fn ban(&mut self, mut b: Section<'_>) -> Option<BanConfig> {
        let offences = b
            .integer("offences", &mut self.errs, 0..=1_000_000)
            .map_or(Some(0), |v| u32::try_from(v).ok());
        let within = self.duration(&mut b, "within", Duration::from_secs(10 * 60));
        let ban_for = self.duration(&mut b, "ban_for", Duration::from_secs(15 * 60));
        b.finish(&mut self.errs);
        Some(BanConfig {
            offences: offences?,
            within: within?,
            ban_for: ban_for?,
        })
    }

    fn csrf(&mut self, mut c: Section<'_>) -> Option<CsrfConfig> {
        let mode = self.choice(
            &mut c,
            "mode",
            &[
                ("lenient", CsrfStrictness::Lenient),
                ("strict", CsrfStrictness::Strict),
            ],
            CsrfStrictness::Lenient,
        );
        let secret = if c.has("secret_env") {
            self.optional_secret(&mut c, "secret_env", true)
        } else {
            Some(None)
        };
        let previous = c
            .strings("previous_secret_envs", &mut self.errs)
            .unwrap_or_default();
        if !previous.is_empty() && !c.has("secret_env") {
            self.errs.push(
                c.key("previous_secret_envs"),
                "needs secret_env: previous secrets only verify old tokens",
            );
        }
        let mut previous_secrets = Vec::new();
        let mut previous_ok = true;
        for item in previous {
            if !self.reads_secret(&item.key) {
                previous_ok &= self.env_name_only(&item.key, item.value);
                continue;
            }
            match self.read_env(&item.key, item.value, true) {
                Some(s) => previous_secrets.push(s),
                None => previous_ok = false,
            }
        }
        let trusted_origins = self.list(&mut c, "trusted_origins", parse_origin);
        let public_origin = if c.has("public_origin") {
            c.parsed("public_origin", &mut self.errs, parse_origin)
                .map(Some)
        } else {
            Some(None)
        };
        let bypass = match c.strings("bypass", &mut self.errs) {
            Some(items) => self.globs(items),
            None => Vec::new(),
        };
        let insecure_dev = c.boolean("insecure_dev", &mut self.errs).unwrap_or(false);
        c.finish(&mut self.errs);
        Some(CsrfConfig {
            mode: mode?,
            secret: secret?,
            previous_secrets: previous_ok.then_some(previous_secrets)?,
            trusted_origins,
            public_origin: public_origin?,
            bypass,
            insecure_dev,
        })
    }

    /// Validates globs with the library's route table, duplicates included.
    fn globs(&mut self, items: Vec<Item<'_>>) -> Vec<String> {
        let mut table = RouteTable::new(());
        let mut out = Vec::new();
        for it in items {
            match table.insert(it.value, ()) {
                Ok(()) => out.push(it.value.to_string()),
                Err(e) => self.errs.push(it.key, e.reason),
            }
        }
        out
    }

    fn headers(&mut self, mut h: Section<'_>) -> Option<HeadersConfig> {
        let mut security = SecurityHeaders::default();
        let mut ok = true;
        match h.value("hsts") {
            None => {}
            Some(Value::Boolean(false)) => {
                security = security.remove("strict-transport-security");
            }
            Some(Value::String(v)) if check_hsts(v).is_err() => {
                ok = false;
                let reason = check_hsts(v).err().unwrap_or_default();
                self.errs.push(h.key("hsts"), format!("{v:?}: {reason}"));
            }
            Some(Value::String(v)) => match security.clone().set("strict-transport-security", v) {
                Ok(s) => security = s,
                Err(e) => {
                    ok = false;
                    self.errs
                        .push(h.key("hsts"), format!("{v:?}: {}", e.reason));
                }
            },
            Some(other) => {
                ok = false;
                self.errs.push(
                    h.key("hsts"),
                    expected(
                        "a header value such as \"max-age=63072000; includeSubDomains\" or false",
                        other,
                    ),
                );
            }
        }
        // On by default: the gateway sends HSTS only on requests it received over TLS, or that
        // a trusted proxy says came over HTTPS (`X-Forwarded-Proto: https`).
        let https_only = h.boolean("hsts_https_only", &mut self.errs).unwrap_or(true);
        security = security.hsts_mode(if https_only {
            HstsMode::HttpsOnly
        } else {
            HstsMode::Always
        });
        // Every key of `set` is a header name: the section has no schema to finish.
        if let Some(set) = h.section("set", &mut self.errs) {
            for (name, value) in set.entries() {
                let key = set.key(name);
                match value {
                    Value::String(v) => match security.clone().set(name, v) {
                        Ok(s) => security = s,
                        Err(e) => {
                            ok = false;
                            self.errs.push(key, e.reason);
                        }
                    },
                    other => {
                        ok = false;
                        self.errs.push(key, expected("a string", other));
                    }
                }
            }
        }
        for name in self.list(&mut h, "remove", check_header_name) {
            security = security.remove(&name);
        }
        let csp = match h.value("csp") {
            None => Some(Some(Csp::default())),
            Some(Value::Boolean(false)) => Some(None),
            Some(Value::String(p)) => match parse_csp(p) {
                Ok(c) => Some(Some(c)),
                Err(reason) => {
                    self.errs.push(h.key("csp"), reason);
                    None
                }
            },
            Some(other) => {
                self.errs
                    .push(h.key("csp"), expected("a policy string or false", other));
                None
            }
        };
        let csp_report_only = h
            .boolean("csp_report_only", &mut self.errs)
            .unwrap_or(false);
        h.finish(&mut self.errs);
        Some(HeadersConfig {
            security: ok.then_some(security)?,
            csp: csp?,
            csp_report_only,
        })
    }

    fn cors(&mut self, mut c: Section<'_>) -> Option<CorsConfig> {
        let origins = c
            .strings("allow_origins", &mut self.errs)
            .unwrap_or_default();
        let mut allow_origins = Vec::new();
        let any = origins.iter().any(|it| it.value == "*");
        for it in origins.iter().filter(|it| it.value == "*") {
            // Every origin: for public, cookie-less APIs; alone, and without credentials
            // (browsers refuse `*` with credentials, and a list beside it means nothing).
            if origins.len() > 1 {
                self.errs.push(
                    it.key.clone(),
                    "\"*\" allows every origin: it stands alone, not beside listed origins",
                );
            }
        }
        if any && origins.len() == 1 {
            allow_origins.push("*".to_string());
        }
        for it in origins.into_iter().filter(|it| it.value != "*") {
            // Our own check first (exact lowercase origins), then the library's.
            let checked = parse_origin(it.value).and_then(|o| {
                Cors::new()
                    .allow_origin(&o)
                    .map(|_| o)
                    .map_err(|e| e.to_string())
            });
            match checked {
                Ok(o) => allow_origins.push(o),
                Err(reason) => self.errs.push(it.key, reason),
            }
        }
        let allow_credentials = c
            .boolean("allow_credentials", &mut self.errs)
            .unwrap_or(false);
        if any && allow_credentials {
            self.errs.push(
                c.key("allow_credentials"),
                "allow_origins = [\"*\"] cannot go with credentials: browsers refuse \
                 `Access-Control-Allow-Origin: *` on credentialed requests, and reflecting every \
                 origin with credentials would let any site read users' data; list the origins",
            );
        }
        let allow_methods = match c.strings("allow_methods", &mut self.errs) {
            Some(items) => {
                let key = c.key("allow_methods");
                let names: Vec<&str> = items.iter().map(|i| i.value).collect();
                match MethodSet::parse(names) {
                    Ok(m) => Some(Some(m)),
                    Err(reason) => {
                        self.errs.push(key, reason);
                        None
                    }
                }
            }
            None => Some(None),
        };
        let allow_headers = self.list(&mut c, "allow_headers", check_header_name);
        let expose_headers = self.list(&mut c, "expose_headers", check_header_name);
        let max_age = if c.has("max_age") {
            c.parsed("max_age", &mut self.errs, parse_duration)
                .map(Some)
        } else {
            Some(None)
        };
        c.finish(&mut self.errs);
        Some(CorsConfig {
            allow_origins,
            allow_credentials,
            allow_methods: allow_methods?,
            allow_headers,
            expose_headers,
            max_age: max_age?,
        })
    }

    fn routes(&mut self, sections: Vec<Section<'_>>, present: &Present) -> Vec<RouteConfig> {
        let mut table = RouteTable::new(());
        let mut accepted: Vec<(usize, String)> = Vec::new();
        let mut out = Vec::new();
        for (i, mut r) in sections.into_iter().enumerate() {
            if let Some(path) = r.required_string("path", &mut self.errs) {
                if let Some(c) = path
                    .chars()
                    .find(|c| matches!(c, ' ' | '#' | '?') || c.is_control())
                {
                    self.errs.push(
                        r.key("path"),
                        format!(
                            "{path:?} holds {c:?}, which no request path does (a target's `?` \
                             starts its query, `#` is never sent): the route could never match"
                        ),
                    );
                }
                match table.insert(path, ()) {
                    Ok(()) => accepted.push((i, path.to_string())),
                    Err(e) => {
                        // A valid pattern refused by the table is a duplicate: find of
                        // which route, by pairing it with each accepted one alone.
                        let valid = RouteTable::new(()).insert(path, ()).is_ok();
                        let first = accepted.iter().filter(|_| valid).find(|(_, p)| {
                            let mut one = RouteTable::new(());
                            one.insert(p, ()).is_ok() && one.insert(path, ()).is_err()
                        });
                        let reason = match first {
                            Some((j, _)) => format!("{} (same as route[{j}].path)", e.reason),
                            None => e.reason,
                        };
                        self.errs.push(r.key("path"), reason);
                    }
                }
            }
            if let Some(route) = self.route(&mut r, present) {
                out.push(route);
            }
            r.finish(&mut self.errs);
        }
        out
    }

    /// One `[[route]]`: the preset's policy with the overrides applied.
    /// `report_only = ["csp"]`: the route's CSP (its own, or else the layer-wide one) goes
    /// out as `Content-Security-Policy-Report-Only`. False (with the error pushed) when the
    /// route has no CSP to report on.
    fn csp_report_only(&mut self, r: &Section<'_>, policy: &mut Policy, present: &Present) -> bool {
        let csp = match policy.csp_setting() {
            CspSetting::Custom(c) => Some((**c).clone()),
            CspSetting::Inherit => present.layer_csp.clone(),
            CspSetting::Off => None,
        };
        let Some(csp) = csp else {
            self.errs.push(
                r.key("report_only"),
                "\"csp\" reports a CSP, but this route sends none (csp = false here or in [headers])",
            );
            return false;
        };
        *policy = policy
            .clone()
            .csp(CspSetting::Custom(Arc::new(csp.report_only(true))));
        true
    }

    fn route(&mut self, r: &mut Section<'_>, present: &Present) -> Option<RouteConfig> {
        let path = r.string("path", &mut self.errs);
        let preset = if r.has("preset") {
            r.parsed("preset", &mut self.errs, |p| {
                Preset::from_name(p).ok_or_else(|| {
                    format!("unknown preset {p:?}; expected one of \"public\", \"authenticated\", \"strict\"")
                })
            })
        } else {
            Some(Preset::Public)
        };
        let base = Policy::preset(preset.unwrap_or(Preset::Public));
        let default_key = base.limits().first().map_or(RateKey::Ip, |l| l.key.clone());
        let mut policy = base;
        let mut ok = preset.is_some();

        if let Some(items) = r.strings("methods", &mut self.errs) {
            let risky = items.iter().find(|i| {
                i.value.eq_ignore_ascii_case("TRACE") || i.value.eq_ignore_ascii_case("CONNECT")
            });
            if let Some(m) = risky {
                ok = false;
                self.errs.push(
                    r.key("methods"),
                    format!(
                        "{:?} is not served through the gateway: TRACE echoes the request \
                         (cookies and tokens included) back to a script (cross-site tracing), \
                         and CONNECT asks for a tunnel, not a resource",
                        m.value
                    ),
                );
            }
            match MethodSet::parse(items.iter().map(|i| i.value)) {
                Ok(m) => policy = policy.method_set(m),
                Err(reason) => {
                    ok = false;
                    self.errs.push(r.key("methods"), reason);
                }
            }
        }
        let auth = r.boolean("auth", &mut self.errs);
        if let Some(a) = auth {
            policy = policy.auth(a);
        }
        let roles = self.list(r, "roles", check_label);
        let all_roles = self.list(r, "all_roles", check_label);
        if auth == Some(false) && !(roles.is_empty() && all_roles.is_empty()) {
            ok = false;
            self.errs.push(
                r.key("auth"),
                "auth = false contradicts roles/all_roles, which need a principal",
            );
        }
        policy = policy.roles(roles.clone()).all_roles(all_roles.clone());

        if let Some(v) = r.value("rate_limit") {
            match self.rate_limits(&r.key("rate_limit"), v, &default_key) {
                Some(limits) => policy = policy.rate_limits(limits),
                None => ok = false,
            }
        }
        if let Some(v) = r.value("max_body") {
            match parse_size(v) {
                Ok(n) => policy = policy.max_body(n),
                Err(reason) => {
                    ok = false;
                    self.errs.push(r.key("max_body"), reason);
                }
            }
        }
        if let Some(items) = r.strings("content_types", &mut self.errs) {
            policy = policy.content_types(self.checked_list(items, check_content_type));
        }
        let csrf = self.choice(
            r,
            "csrf",
            &[
                ("off", CsrfMode::Off),
                ("origin", CsrfMode::Origin),
                ("token", CsrfMode::OriginAndToken),
            ],
            policy.csrf_mode(),
        );
        match csrf {
            Some(mode) => policy = policy.csrf(mode),
            None => ok = false,
        }
        match r.value("csp") {
            None => {}
            Some(Value::Boolean(false)) => policy = policy.csp(CspSetting::Off),
            Some(Value::String(p)) => match parse_csp(p) {
                Ok(c) => policy = policy.csp(CspSetting::Custom(Arc::new(c))),
                Err(reason) => {
                    ok = false;
                    self.errs.push(r.key("csp"), reason);
                }
            },
            Some(other) => {
                ok = false;
                self.errs
                    .push(r.key("csp"), expected("a policy string or false", other));
            }
        }
        match r.value("report_only") {
            None => {}
            Some(Value::Boolean(b)) => {
                policy = policy.report_only(if *b { ReportOnly::All } else { ReportOnly::Off });
            }
            Some(v @ Value::Array(_)) => {
                let mut items =
                    strings_of(&r.key("report_only"), v, &mut self.errs).unwrap_or_default();
                // `"csp"`: the route's CSP is sent as Content-Security-Policy-Report-Only.
                let before = items.len();
                items.retain(|i| i.value != "csp");
                if items.len() != before {
                    ok &= self.csp_report_only(r, &mut policy, present);
                }
                let controls = self.checked_list(items, |n| {
                    Control::from_name(n).ok_or_else(|| {
                        format!("unknown control {n:?}; expected one of \"cors\", \"methods\", \"auth\", \"roles\", \"rate_limit\", \"csrf\", \"body\", \"ban\", \"csp\"")
                    })
                });
                policy = policy.report_only(if controls.is_empty() {
                    ReportOnly::Off
                } else {
                    ReportOnly::Controls(controls)
                });
            }
            Some(other) => {
                ok = false;
                self.errs.push(
                    r.key("report_only"),
                    expected("true, false or a list of control names", other),
                );
            }
        }
        if let Some(b) = r.boolean("audit_allowed", &mut self.errs) {
            policy = policy.audit_allowed(b);
        }
        match self.choice(
            r,
            "cache",
            &[("no-store", true), ("default", false)],
            policy.is_no_store(),
        ) {
            Some(no_store) => policy = policy.no_store(no_store),
            None => ok = false,
        }

        // Cross-section checks: what the route asks for must exist elsewhere in the file.
        if policy.requires_auth() && !present.authenticator {
            let key = if !roles.is_empty() {
                "roles"
            } else if !all_roles.is_empty() {
                "all_roles"
            } else if auth == Some(true) {
                "auth"
            } else {
                "preset"
            };
            ok = false;
            self.errs.push(
                r.key(key),
                "routes requiring auth need an authenticator: add [auth.jwt] or [[auth.api_keys]]",
            );
        }
        if policy.csrf_mode() == CsrfMode::OriginAndToken && !present.csrf_secret {
            let reason = if r.has("csrf") {
                "csrf = \"token\" needs [csrf] secret_env".to_string()
            } else {
                format!(
                    "preset {:?} uses CSRF tokens, which need [csrf] secret_env (or set csrf = \"origin\")",
                    preset.map_or("public", Preset::name)
                )
            };
            let key = if r.has("csrf") { "csrf" } else { "preset" };
            ok = false;
            self.errs.push(r.key(key), reason);
        }
        Some(RouteConfig {
            path: path?.to_string(),
            preset: preset?,
            preset_written: r.has("preset"),
            policy: ok.then_some(policy)?,
        })
    }

    /// `rate_limit = "10/1m" | { … } | [ … ] | false`.
    fn rate_limits(
        &mut self,
        key: &str,
        v: &Value,
        default_key: &RateKey,
    ) -> Option<Vec<RateLimitSpec>> {
        match v {
            Value::Boolean(false) => Some(Vec::new()),
            Value::String(s) => match parse_rate(s) {
                Ok((n, w)) => Some(vec![RateLimitSpec::new(n, w, default_key.clone())]),
                Err(reason) => {
                    self.errs.push(key, reason);
                    None
                }
            },
            Value::Table(t) => self
                .rate_limit_table(Section::at(key.to_string(), t), default_key, "default")
                .map(|l| vec![l]),
            Value::Array(items) => {
                let mut out: Vec<RateLimitSpec> = Vec::new();
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    let item_key = format!("{key}[{i}]");
                    let default_name = if i == 0 {
                        "default".to_string()
                    } else {
                        format!("limit{}", i + 1)
                    };
                    let spec = match item {
                        Value::String(s) => match parse_rate(s) {
                            Ok((n, w)) => {
                                let mut l = RateLimitSpec::new(n, w, default_key.clone());
                                l.name = default_name;
                                Some(l)
                            }
                            Err(reason) => {
                                self.errs.push(&item_key, reason);
                                None
                            }
                        },
                        Value::Table(t) => self.rate_limit_table(
                            Section::at(item_key.clone(), t),
                            default_key,
                            &default_name,
                        ),
                        other => {
                            self.errs
                                .push(&item_key, expected("\"REQUESTS/WINDOW\" or a table", other));
                            None
                        }
                    };
                    match spec {
                        Some(l) if out.iter().any(|o| o.name == l.name) => {
                            ok = false;
                            self.errs.push(
                                format!("{item_key}.name"),
                                format!(
                                    "duplicate limit name {:?}; give each limit its own name",
                                    l.name
                                ),
                            );
                        }
                        Some(l) => out.push(l),
                        None => ok = false,
                    }
                }
                ok.then_some(out)
            }
            other => {
                self.errs.push(
                    key,
                    expected(
                        "\"REQUESTS/WINDOW\", a table, a list of those, or false",
                        other,
                    ),
                );
                None
            }
        }
    }

    fn rate_limit_table(
        &mut self,
        mut t: Section<'_>,
        default_key: &RateKey,
        default_name: &str,
    ) -> Option<RateLimitSpec> {
        let requests = if t.has("requests") {
            t.integer("requests", &mut self.errs, 1..=i64::from(u32::MAX))
                .and_then(|n| u32::try_from(n).ok())
        } else {
            self.errs.push(t.key("requests"), "required");
            None
        };
        let window = if t.has("window") {
            t.parsed("window", &mut self.errs, parse_duration)
        } else {
            self.errs.push(t.key("window"), "required");
            None
        };
        let key = if t.has("key") {
            t.parsed("key", &mut self.errs, |k| match k {
                "ip" => Ok(RateKey::Ip),
                "user" => Ok(RateKey::User),
                "api_key" => Ok(RateKey::ApiKey),
                "route" => Ok(RateKey::Route),
                _ => match k.strip_prefix("header:") {
                    Some(h) => check_rate_key_header(h).map(RateKey::Header),
                    None => Err(format!(
                        "unknown key {k:?}; expected \"ip\", \"user\", \"api_key\", \"route\" or \"header:NAME\""
                    )),
                },
            })
        } else {
            Some(default_key.clone())
        };
        // A burst only means something to the token bucket: one without an algorithm asks
        // for it; with a window algorithm named it is refused below.
        let default_algorithm = if t.has("burst") && !t.has("algorithm") {
            Algorithm::TokenBucket
        } else {
            Algorithm::SlidingWindow
        };
        let algorithm = self.choice(
            &mut t,
            "algorithm",
            &[
                ("sliding_window", Algorithm::SlidingWindow),
                ("token_bucket", Algorithm::TokenBucket),
                ("fixed_window", Algorithm::FixedWindow),
            ],
            default_algorithm,
        );
        let burst = t
            .integer("burst", &mut self.errs, 0..=i64::from(u32::MAX))
            .map_or(Some(0), |n| u32::try_from(n).ok());
        let name = if t.has("name") {
            t.parsed("name", &mut self.errs, check_label)
        } else {
            Some(default_name.to_string())
        };
        if burst.is_some_and(|b| b > 0) && algorithm.is_some_and(|a| a != Algorithm::TokenBucket) {
            self.errs.push(
                t.key("burst"),
                "burst applies to algorithm = \"token_bucket\" (the default when burst is \
                 set) only; the windows allow `requests` per window",
            );
        }
        t.finish(&mut self.errs);
        let mut spec = RateLimitSpec::new(requests?, window?, key?);
        spec.algorithm = algorithm?;
        spec.burst = burst?;
        spec.name = name?;
        Some(spec)
    }
}

/// Whether an unset "variable name" looks like a secret pasted in its place (long, with
/// lower case, where names are UPPER_SNAKE): such a name is not echoed in the error.
fn looks_like_a_secret(var: &str) -> bool {
    var.len() >= 20 && var.bytes().any(|b| b.is_ascii_lowercase())
}

/// The longest `[auth.jwt] leeway` taken: clock skew is seconds, not hours.
const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// Checks an HSTS value (RFC 6797 §6.1): a `max-age` in seconds, and otherwise only
/// `includeSubDomains` and `preload`, once each, separated by `;`.
fn check_hsts(v: &str) -> Result<(), String> {
    let mut max_age = false;
    let mut seen: Vec<String> = Vec::new();
    for d in v.split(';').map(str::trim).filter(|d| !d.is_empty()) {
        let (name, value) = match d.split_once('=') {
            Some((n, val)) => (
                n.trim().to_ascii_lowercase(),
                Some(val.trim().trim_matches('"')),
            ),
            None => (d.to_ascii_lowercase(), None),
        };
        if seen.contains(&name) {
            return Err(format!("{name} appears twice"));
        }
        match (name.as_str(), value) {
            ("max-age", Some(n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
                max_age = true;
            }
            ("max-age", _) => return Err("max-age must be a number of seconds".into()),
            ("includesubdomains" | "preload", None) => {}
            (other, _) => {
                return Err(format!(
                    "unknown directive {other:?}; expected max-age=SECONDS, includeSubDomains, preload"
                ));
            }
        }
        seen.push(name);
    }
    if max_age {
        Ok(())
    } else {
        Err("max-age=SECONDS is required".into())
    }
}

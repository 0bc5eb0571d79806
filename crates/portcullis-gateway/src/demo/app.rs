//! The demo application behind the gateway: the seed's four API routes, a login form that
//! issues the `authToken` cookie, and a notes page that posts with the CSRF helper.
//!
//! | route | answers |
//! |---|---|
//! | `GET /api/public-data` | some public data |
//! | `GET /api/user/notes` | the caller's notes |
//! | `POST /api/user/notes` | adds a note (`{"text": "…"}`), answers 201 with every note |
//! | `POST /api/sensitive-operation` | `{"success": true}` |
//! | `GET /api/admin/users` | the demo users |
//! | `GET /login`, `POST /login` | the form; checks a demo user and sets `authToken` |
//! | `POST /logout` | clears `authToken` |
//! | `GET /`, `GET /notes` | the pages; `/static/*` their script and style |
//!
//! The app holds no security logic of its own beyond what any app behind the gateway would:
//! it trusts the caller's identity in `x-portcullis-user` and `x-portcullis-roles`, which the
//! gateway sets after authenticating and strips from what clients send, and it listens on
//! loopback only. It still refuses a request without that identity, and the admin route
//! without the admin role, so a gateway misconfiguration shows as an error rather than as
//! data.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, State};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use http::header::{CACHE_CONTROL, CONTENT_TYPE, LOCATION, SET_COOKIE};
use http::request::Parts;
use http::{HeaderValue, StatusCode};
use serde_json::json;
use subtle::ConstantTimeEq;

use crate::config::JwtConfig;
use crate::proxy::{X_PORTCULLIS_ROLES, X_PORTCULLIS_USER};

/// The cookie the login form sets and the gateway reads (`[auth] cookie`).
///
/// ```
/// use portcullis_gateway::demo::{CONFIG_TEMPLATE, app::AUTH_COOKIE};
/// assert!(CONFIG_TEMPLATE.contains(&format!("[auth]\ncookie = \"{AUTH_COOKIE}\"")));
/// ```
pub const AUTH_COOKIE: &str = "authToken";

/// Where the pages load the CSRF helper from: the gateway's CSRF guard serves the library's
/// client script there.
///
/// ```
/// use portcullis_gateway::demo::app::CSRF_HELPER_PATH;
/// assert_eq!(CSRF_HELPER_PATH, "/.well-known/portcullis/csrf.js");
/// ```
pub const CSRF_HELPER_PATH: &str = portcullis::csrf::CLIENT_JS_PATH;

/// The longest note accepted, in characters.
///
/// ```
/// use portcullis_gateway::demo::app::MAX_NOTE_CHARS;
/// assert_eq!(MAX_NOTE_CHARS, 500); // characters, not bytes
/// ```
pub const MAX_NOTE_CHARS: usize = 500;

/// The most notes kept per user; the oldest go first.
///
/// ```
/// use portcullis_gateway::demo::app::MAX_NOTES_PER_USER;
/// assert_eq!(MAX_NOTES_PER_USER, 100);
/// ```
pub const MAX_NOTES_PER_USER: usize = 100;

/// A demo account: the password is the user name.
///
/// ```
/// use portcullis_gateway::demo::app::DEMO_USERS;
/// let alice = DEMO_USERS[0];
/// assert_eq!((alice.name, alice.role), ("alice", "user"));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct DemoUser {
    /// The user name, which is also the principal id.
    pub name: &'static str,
    password: &'static str,
    /// The user's one role.
    pub role: &'static str,
}

/// `alice` (role `user`) and `admin` (role `admin`).
///
/// ```
/// use portcullis_gateway::demo::app::{DEMO_USERS, check_login};
/// for user in DEMO_USERS {
///     assert!(check_login(user.name, user.name).is_some()); // the password is the name
/// }
/// assert!(DEMO_USERS.iter().any(|u| u.role == "admin"));
/// ```
pub const DEMO_USERS: [DemoUser; 2] = [
    DemoUser {
        name: "alice",
        password: "alice",
        role: "user",
    },
    DemoUser {
        name: "admin",
        password: "admin",
        role: "admin",
    },
];

/// The demo user with these credentials. Every account is compared, in constant time, so
/// the time taken says nothing about which part was wrong.
///
/// ```
/// use portcullis_gateway::demo::app::check_login;
/// assert_eq!(check_login("admin", "admin").map(|u| u.role), Some("admin"));
/// assert!(check_login("alice", "wrong").is_none());
/// ```
pub fn check_login(name: &str, password: &str) -> Option<DemoUser> {
    let mut found = None;
    for user in DEMO_USERS {
        let name_ok = user.name.as_bytes().ct_eq(name.as_bytes());
        let password_ok = user.password.as_bytes().ct_eq(password.as_bytes());
        if bool::from(name_ok & password_ok) {
            found = Some(user);
        }
    }
    found
}

/// One note.
#[derive(Debug, Clone, serde::Serialize)]
struct Note {
    id: u64,
    text: String,
    created_at: u64,
}

/// The app's state: the key to mint session tokens with, and the notes.
///
/// ```
/// # use std::{sync::Arc, time::Duration};
/// use portcullis_gateway::demo::app::{DemoApp, router};
/// # unsafe { std::env::set_var("DOC_DEMO_JWT_SECRET", "test-only-jwt-secret-of-32-bytes-or-more") };
/// # let toml = r#"auth.jwt.secret_env = "DOC_DEMO_JWT_SECRET""#;
/// # let jwt = portcullis_gateway::config::GatewayConfig::from_str_for(toml, "portcullis.toml", portcullis_gateway::config::Purpose::Tool)?.auth.jwt.unwrap();
/// let app = Arc::new(DemoApp::new(jwt, Duration::from_secs(3600)));
/// assert!(format!("{app:?}").contains("session_ttl: 3600s"));
/// let routes = router(app); // an axum Router, to serve on loopback
/// # Ok::<(), portcullis_gateway::config::ConfigErrors>(())
/// ```
pub struct DemoApp {
    jwt: JwtConfig,
    session_ttl: Duration,
    notes: Mutex<HashMap<String, Vec<Note>>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for DemoApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoApp")
            .field("session_ttl", &self.session_ttl)
            .finish_non_exhaustive()
    }
}

impl DemoApp {
    /// An app whose logins mint tokens with `jwt` (the gateway's `[auth.jwt]`), valid for
    /// `session_ttl`.
    ///
    /// ```
    /// # use std::{sync::Arc, time::Duration};
    /// use axum::body::Body;
    /// use portcullis_gateway::demo::app::{DemoApp, router};
    /// use tower::ServiceExt;
    /// # unsafe { std::env::set_var("DOC_DEMO_JWT_SECRET", "test-only-jwt-secret-of-32-bytes-or-more") };
    /// # let toml = r#"auth.jwt.secret_env = "DOC_DEMO_JWT_SECRET""#;
    /// # let jwt = portcullis_gateway::config::GatewayConfig::from_str_for(toml, "portcullis.toml", portcullis_gateway::config::Purpose::Tool)?.auth.jwt.unwrap();
    /// let app = router(Arc::new(DemoApp::new(jwt, Duration::from_secs(3600))));
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let login = http::Request::post("/login").body(Body::from("username=alice&password=alice"))?;
    /// let res = app.oneshot(login).await?;
    /// assert_eq!(res.status(), 303);
    /// assert!(res.headers()["set-cookie"].to_str()?.starts_with("authToken=ey")); // a JWT
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(jwt: JwtConfig, session_ttl: Duration) -> Self {
        DemoApp {
            jwt,
            session_ttl,
            notes: Mutex::default(),
            next_id: 1.into(),
        }
    }

    fn notes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Note>>> {
        // A panic mid-update leaves at worst one note half-added: keep serving.
        self.notes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The app's routes.
///
/// ```
/// # use std::{sync::Arc, time::Duration};
/// use axum::body::Body;
/// use portcullis_gateway::demo::app::{DemoApp, router};
/// use tower::ServiceExt;
/// # unsafe { std::env::set_var("DOC_DEMO_JWT_SECRET", "test-only-jwt-secret-of-32-bytes-or-more") };
/// # let toml = r#"auth.jwt.secret_env = "DOC_DEMO_JWT_SECRET""#;
/// # let jwt = portcullis_gateway::config::GatewayConfig::from_str_for(toml, "portcullis.toml", portcullis_gateway::config::Purpose::Tool)?.auth.jwt.unwrap();
/// let app = router(Arc::new(DemoApp::new(jwt, Duration::from_secs(3600))));
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let anonymous = http::Request::get("/api/user/notes").body(Body::empty())?;
/// assert_eq!(app.clone().oneshot(anonymous).await?.status(), 401);
/// let alice = http::Request::get("/api/user/notes").header("x-portcullis-user", "alice").body(Body::empty())?;
/// assert_eq!(app.oneshot(alice).await?.status(), 200);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn router(app: Arc<DemoApp>) -> Router {
    Router::new()
        .route("/", get(|| async { page(INDEX_HTML) }))
        .route("/notes", get(|| async { page(&notes_html()) }))
        // Browsers ask for it on every page; an empty answer keeps their consoles quiet.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route(
            "/static/notes.js",
            get(|| async { asset("application/javascript; charset=utf-8", NOTES_JS) }),
        )
        .route(
            "/static/demo.css",
            get(|| async { asset("text/css; charset=utf-8", DEMO_CSS) }),
        )
        .route("/api/public-data", get(public_data))
        .route("/api/user/notes", get(list_notes).post(add_note))
        .route("/api/sensitive-operation", post(sensitive_operation))
        .route("/api/admin/users", get(admin_users))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "not found") })
        .with_state(app)
}

const INDEX_HTML: &str = include_str!("pages/index.html");
const LOGIN_HTML: &str = include_str!("pages/login.html");
const NOTES_HTML: &str = include_str!("pages/notes.html");
const NOTES_JS: &str = include_str!("pages/notes.js");
const DEMO_CSS: &str = include_str!("pages/demo.css");

fn notes_html() -> String {
    NOTES_HTML.replace("{{csrf-helper}}", CSRF_HELPER_PATH)
}

fn page(html: &str) -> Response {
    Html(html.to_string()).into_response()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// The gateway's error shape, for the app's own refusals.
fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({ "error": message, "code": code })),
    )
        .into_response()
}

/// The caller as the gateway vouches for it.
///
/// ```
/// use axum::{Router, body::Body, routing::get};
/// use portcullis_gateway::demo::app::Caller;
/// use tower::ServiceExt;
/// async fn whoami(caller: Caller) -> String { format!("{} {:?}", caller.id, caller.roles) }
/// let app = Router::new().route("/whoami", get(whoami));
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let req = http::Request::get("/whoami")
///     .header("x-portcullis-user", "alice")
///     .header("x-portcullis-roles", "user,editor")
///     .body(Body::empty())?;
/// let body = axum::body::to_bytes(app.oneshot(req).await?.into_body(), 1024).await?;
/// assert_eq!(body, r#"alice ["user", "editor"]"#);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Caller {
    /// The principal id.
    pub id: String,
    /// The principal's roles.
    pub roles: Vec<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let header = |name| {
            parts
                .headers
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
        };
        let Some(id) = header(X_PORTCULLIS_USER).filter(|id| !id.is_empty()) else {
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "authentication required",
            ));
        };
        let roles = header(X_PORTCULLIS_ROLES)
            .unwrap_or("")
            .split(',')
            .filter(|r| !r.is_empty())
            .map(str::to_string)
            .collect();
        Ok(Caller {
            id: id.to_string(),
            roles,
        })
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn public_data() -> Response {
    axum::Json(json!({
        "data": ["public", "information"],
        "served_at": now_secs(),
    }))
    .into_response()
}

async fn list_notes(State(app): State<Arc<DemoApp>>, caller: Caller) -> Response {
    let notes = app.notes().get(&caller.id).cloned().unwrap_or_default();
    axum::Json(json!({ "user": caller.id, "notes": notes })).into_response()
}

async fn add_note(State(app): State<Arc<DemoApp>>, caller: Caller, body: Bytes) -> Response {
    #[derive(serde::Deserialize)]
    struct NewNote {
        text: String,
    }
    let Ok(new) = serde_json::from_slice::<NewNote>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_input",
            "send JSON: {\"text\": \"…\"}",
        );
    };
    let text = new.text.trim();
    if text.is_empty() || text.chars().count() > MAX_NOTE_CHARS {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_input",
            "a note is 1 to 500 characters",
        );
    }
    let note = Note {
        id: app
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        text: text.to_string(),
        created_at: now_secs(),
    };
    let notes = {
        let mut all = app.notes();
        let mine = all.entry(caller.id.clone()).or_default();
        if mine.len() >= MAX_NOTES_PER_USER {
            mine.remove(0);
        }
        mine.push(note.clone());
        mine.clone()
    };
    (
        StatusCode::CREATED,
        axum::Json(json!({ "user": caller.id, "note": note, "notes": notes })),
    )
        .into_response()
}

async fn sensitive_operation(caller: Caller, body: Bytes) -> Response {
    axum::Json(json!({
        "success": true,
        "by": caller.id,
        "received_bytes": body.len(),
    }))
    .into_response()
}

async fn admin_users(State(app): State<Arc<DemoApp>>, caller: Caller) -> Response {
    if !caller.roles.iter().any(|r| r == "admin") {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the admin role is required",
        );
    }
    let notes = app.notes();
    let users: Vec<_> = DEMO_USERS
        .iter()
        .map(|u| {
            json!({
                "name": u.name,
                "role": u.role,
                "notes": notes.get(u.name).map_or(0, Vec::len),
            })
        })
        .collect();
    axum::Json(json!({ "users": users, "asked_by": caller.id })).into_response()
}

fn login_html(message: &str) -> String {
    LOGIN_HTML.replace("{{message}}", message)
}

async fn login_page() -> Response {
    page(&login_html(""))
}

/// `POST /login` with `username` and `password` form fields: a 303 to `/notes` with the
/// `authToken` cookie, or the form again with 401.
async fn login(State(app): State<Arc<DemoApp>>, body: Bytes) -> Response {
    let (mut name, mut password) = (String::new(), String::new());
    for (key, value) in form_urlencoded::parse(&body) {
        match key.as_ref() {
            "username" => name = value.into_owned(),
            "password" => password = value.into_owned(),
            _ => {}
        }
    }
    let Some(user) = check_login(&name, &password) else {
        let html = login_html(r#"<p class="error">Unknown user or wrong password.</p>"#);
        return (StatusCode::UNAUTHORIZED, Html(html)).into_response();
    };
    let token = match crate::auth::mint(
        &app.jwt,
        user.name,
        &[user.role.to_string()],
        app.session_ttl,
    ) {
        Ok(t) => t,
        Err(reason) => {
            tracing::error!("demo login: cannot mint a token: {reason}");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "cannot log in now",
            );
        }
    };
    // Not `Secure`: the demo is plain HTTP on loopback. HttpOnly keeps it from scripts;
    // SameSite=Lax keeps it off cross-site subrequests and POSTs.
    let cookie = format!(
        "{AUTH_COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}",
        app.session_ttl.as_secs()
    );
    redirect("/notes", &cookie)
}

/// `POST /logout`: clears the cookie and goes back to the form.
async fn logout() -> Response {
    redirect(
        "/login",
        &format!("{AUTH_COOKIE}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"),
    )
}

fn redirect(to: &'static str, cookie: &str) -> Response {
    let mut res = StatusCode::SEE_OTHER.into_response();
    let h = res.headers_mut();
    h.insert(LOCATION, HeaderValue::from_static(to));
    match HeaderValue::from_str(cookie) {
        Ok(v) => {
            h.insert(SET_COOKIE, v);
        }
        Err(_) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "cannot set the cookie",
            );
        }
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_logins_are_checked() {
        assert_eq!(check_login("alice", "alice").map(|u| u.role), Some("user"));
        assert_eq!(check_login("admin", "admin").map(|u| u.role), Some("admin"));
        assert!(check_login("alice", "admin").is_none());
        assert!(check_login("admin", "alice").is_none());
        assert!(check_login("alice", "").is_none());
        assert!(check_login("", "").is_none());
    }

    #[test]
    fn the_notes_page_nonces_only_its_own_scripts() {
        let html = notes_html();
        assert!(html.contains(&format!(
            r#"<script src="{CSRF_HELPER_PATH}" nonce="{{{{portcullis-nonce}}}}">"#
        )));
        assert!(html.contains(r#"<script src="/static/notes.js" nonce="{{portcullis-nonce}}""#));
        // The CSP check: one inline script without a nonce, which must stay blocked.
        assert_eq!(html.matches("<script>").count(), 1);
    }
}

//! Policies and presets: what each route requires.
//!
//! A [`Policy`] says which methods a route takes, whether it needs a principal and which
//! roles, its rate limits, body limit and content types, its CSRF mode, its CSP and whether it
//! runs in report-only mode. The three presets carry the seed's values (shared/DESIGN.md §3)
//! and every field can be overridden per route.
//!
//! | preset | auth | methods | rate limit | body | CSRF |
//! |---|---|---|---|---|---|
//! | public | no | GET, HEAD, POST | 60 / 1 min per IP | 1 MiB | origin check |
//! | authenticated | yes | GET, HEAD, POST, PUT, PATCH, DELETE | 20 / 1 h per user | 5 MiB | origin check + token |
//! | strict | yes | POST | 10 / 1 min per user | 512 KiB | origin check + token |
//!
//! ```
//! use portcullis::{Policy, Preset};
//! let p = Policy::preset(Preset::Strict).roles(["admin"]).max_body(100 * 1024);
//! assert!(p.requires_auth());
//! assert_eq!(p.max_body_bytes(), Some(100 * 1024));
//! ```

use std::sync::Arc;
use std::time::Duration;

use http::Method;

use crate::error::Control;
use crate::headers::csp::Csp;
use crate::methods::MethodSet;

/// The three presets of the seed.
///
/// ```
/// use portcullis::{Policy, Preset};
/// let p = Policy::preset(Preset::Authenticated);
/// assert!(p.requires_auth());
/// assert_eq!(p.max_body_bytes(), Some(5 * 1024 * 1024));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Preset {
    /// Anyone may call; 60/min per IP; 1 MiB; origin-checked CSRF.
    Public,
    /// A principal is required; 20/h per user; 5 MiB; origin check + CSRF token.
    Authenticated,
    /// A principal is required; POST only; 10/min per user; 512 KiB; origin check + token.
    Strict,
}

impl Preset {
    /// Parses `public`, `authenticated` or `strict`.
    ///
    /// ```
    /// use portcullis::Preset;
    /// assert_eq!(Preset::from_name("strict"), Some(Preset::Strict));
    /// assert_eq!(Preset::from_name("Strict"), None);
    /// ```
    pub fn from_name(name: &str) -> Option<Preset> {
        match name {
            "public" => Some(Preset::Public),
            "authenticated" => Some(Preset::Authenticated),
            "strict" => Some(Preset::Strict),
            _ => None,
        }
    }

    /// The preset's name.
    ///
    /// ```
    /// use portcullis::Preset;
    /// assert_eq!(Preset::Authenticated.name(), "authenticated");
    /// assert_eq!(Preset::from_name(Preset::Public.name()), Some(Preset::Public));
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Preset::Public => "public",
            Preset::Authenticated => "authenticated",
            Preset::Strict => "strict",
        }
    }
}

/// Whose requests a rate limit counts together.
///
/// ```
/// use portcullis::{Policy, Preset, policy::RateKey};
/// assert_eq!(Policy::preset(Preset::Public).limits()[0].key, RateKey::Ip);
/// assert_eq!(Policy::preset(Preset::Strict).limits()[0].key, RateKey::User);
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    /// The client address (IPv6 by /64).
    Ip,
    /// The principal's id (falls back to the client address when anonymous). A principal
    /// of an API key is counted apart from a token's subject of the same name.
    User,
    /// The API key id (falls back to the client address for requests without an API key,
    /// JWT-authenticated ones included).
    ApiKey,
    /// The value of a request header (falls back to the client address when absent). Only
    /// for a header a proxy in front sets and strips from clients (a tenant id, say): a header
    /// the client writes gives a new quota for each new value. Never a client-address header
    /// such as `X-Real-IP`: use [`RateKey::Ip`] with trusted proxies.
    Header(String),
    /// Every client of the route together.
    Route,
}

/// The rate-limit algorithm.
///
/// ```
/// use std::time::Duration;
/// use portcullis::policy::{Algorithm, RateKey, RateLimitSpec};
/// let l = RateLimitSpec::new(10, Duration::from_secs(1), RateKey::Ip);
/// assert_eq!(l.algorithm, Algorithm::SlidingWindow);
/// assert_eq!(Algorithm::default(), Algorithm::SlidingWindow);
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Algorithm {
    /// Sliding-window counter (weighted two-window approximation).
    #[default]
    SlidingWindow,
    /// GCRA token bucket.
    TokenBucket,
    /// Fixed window: cheapest, allows bursts at window edges.
    FixedWindow,
}

/// One limit: `requests` per `window`, counted per `key`.
///
/// ```
/// use std::time::Duration;
/// use portcullis::policy::{RateKey, RateLimitSpec};
/// let l = RateLimitSpec::new(100, Duration::from_secs(60), RateKey::Header("x-tenant".into()));
/// assert_eq!((l.name.as_str(), l.cost, l.burst), ("default", 1, 0));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RateLimitSpec {
    /// The limit's name in `RateLimit-Policy` and 429 bodies.
    pub name: String,
    /// Requests allowed per window.
    pub requests: u32,
    /// The window length.
    pub window: Duration,
    /// Whose requests are counted together.
    pub key: RateKey,
    /// The algorithm.
    pub algorithm: Algorithm,
    /// Burst capacity of the token bucket (0 = `requests`).
    pub burst: u32,
    /// What one request costs (default 1).
    pub cost: u32,
}

impl RateLimitSpec {
    /// `requests` per `window` per `key`, sliding window.
    ///
    /// ```
    /// use portcullis::policy::{RateLimitSpec, RateKey};
    /// let l = RateLimitSpec::new(60, std::time::Duration::from_secs(60), RateKey::Ip);
    /// assert_eq!(l.requests, 60);
    /// ```
    pub fn new(requests: u32, window: Duration, key: RateKey) -> Self {
        RateLimitSpec {
            name: "default".to_string(),
            requests,
            window,
            key,
            algorithm: Algorithm::SlidingWindow,
            burst: 0,
            cost: 1,
        }
    }

    /// Names the limit (shown in `RateLimit-Policy` and 429 bodies).
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::policy::{RateKey, RateLimitSpec};
    /// let l = RateLimitSpec::new(10, Duration::from_secs(1), RateKey::Ip).named("burst");
    /// assert_eq!(l.name, "burst");
    /// ```
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// Chooses the algorithm.
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::policy::{Algorithm, RateKey, RateLimitSpec};
    /// let l = RateLimitSpec::new(10, Duration::from_secs(1), RateKey::Ip)
    ///     .algorithm(Algorithm::TokenBucket);
    /// assert_eq!(l.algorithm, Algorithm::TokenBucket);
    /// ```
    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// Sets the token bucket's burst capacity.
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::policy::{Algorithm, RateKey, RateLimitSpec};
    /// let l = RateLimitSpec::new(10, Duration::from_secs(1), RateKey::Ip)
    ///     .algorithm(Algorithm::TokenBucket)
    ///     .burst(50);
    /// assert_eq!(l.burst, 50);
    /// ```
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = burst;
        self
    }

    /// Sets the cost of one request.
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::policy::{RateKey, RateLimitSpec};
    /// let l = RateLimitSpec::new(100, Duration::from_secs(60), RateKey::User);
    /// assert_eq!(l.clone().cost(5).cost, 5);
    /// // A cost of zero is raised to one.
    /// assert_eq!(l.cost(0).cost, 1);
    /// ```
    pub fn cost(mut self, cost: u32) -> Self {
        self.cost = cost.max(1);
        self
    }

    /// Checks the limit as [`SecurityLayerBuilder::build`](crate::SecurityLayerBuilder::build)
    /// does: at least one request, a window longer than zero, a name of printable ASCII (it
    /// is written in the `RateLimit` headers, where anything else would be dropped), and a
    /// valid header name for [`RateKey::Header`]. A limit that fails would otherwise be
    /// silently weaker than written: a zero window never refuses, a misspelt header counts
    /// per address.
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::policy::{RateKey, RateLimitSpec};
    /// let minute = Duration::from_secs(60);
    /// assert!(RateLimitSpec::new(10, minute, RateKey::Ip).validate().is_ok());
    /// assert!(RateLimitSpec::new(0, minute, RateKey::Ip).validate().is_err());
    /// assert!(RateLimitSpec::new(10, Duration::ZERO, RateKey::Ip).validate().is_err());
    /// assert!(RateLimitSpec::new(10, minute, RateKey::Header("x tenant".into())).validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<(), String> {
        let name = &self.name;
        if self.requests == 0 {
            return Err(format!("limit {name:?} must allow at least one request"));
        }
        if self.window.is_zero() {
            return Err(format!("limit {name:?} needs a window longer than zero"));
        }
        if name.is_empty() || !name.bytes().all(|b| (b' '..=b'~').contains(&b)) {
            return Err(format!(
                "limit name {name:?} must be non-empty printable ASCII"
            ));
        }
        if let RateKey::Header(h) = &self.key
            && http::HeaderName::from_bytes(h.as_bytes()).is_err()
        {
            return Err(format!(
                "limit {name:?} is keyed on {h:?}, which is not a header name"
            ));
        }
        Ok(())
    }
}

/// CSRF protection for unsafe methods.
///
/// ```
/// use portcullis::{Policy, Preset, policy::CsrfMode};
/// assert_eq!(Policy::preset(Preset::Public).csrf_mode(), CsrfMode::Origin);
/// assert_eq!(Policy::preset(Preset::Strict).csrf_mode(), CsrfMode::OriginAndToken);
/// assert_eq!(Policy::open().csrf_mode(), CsrfMode::Off);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CsrfMode {
    /// No CSRF check.
    Off,
    /// Fetch-Metadata / Origin check only.
    Origin,
    /// Origin check plus the signed double-submit token.
    OriginAndToken,
}

/// Which controls only report (decide, audit, count) instead of refusing.
///
/// ```
/// use portcullis::{Control, Policy, Preset, policy::ReportOnly};
/// let p = Policy::preset(Preset::Public).report_only(ReportOnly::Controls(vec![Control::RateLimit]));
/// assert!(p.report_only_mode().covers(Control::RateLimit));
/// assert!(!p.report_only_mode().covers(Control::Csrf));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ReportOnly {
    /// Every control enforces.
    #[default]
    Off,
    /// Every control that can report only does (path and header hygiene always enforce).
    All,
    /// Only these controls report only.
    Controls(Vec<Control>),
}

impl ReportOnly {
    /// True when `control` only reports under this setting.
    ///
    /// ```
    /// use portcullis::{Control, policy::ReportOnly};
    /// assert!(ReportOnly::All.covers(Control::Csrf));
    /// // Path hygiene always enforces.
    /// assert!(!ReportOnly::All.covers(Control::Path));
    /// assert!(!ReportOnly::Off.covers(Control::Csrf));
    /// ```
    pub fn covers(&self, control: Control) -> bool {
        let enforced_always = matches!(
            control,
            Control::Path | Control::ServerLimits | Control::Internal
        );
        !enforced_always
            && match self {
                ReportOnly::Off => false,
                ReportOnly::All => true,
                ReportOnly::Controls(list) => list.contains(&control),
            }
    }
}

/// The CSP of a route.
///
/// ```
/// use std::sync::Arc;
/// use portcullis::{Csp, Policy, policy::CspSetting};
/// let p = Policy::open().csp(CspSetting::Custom(Arc::new(Csp::parse("default-src 'none'")?)));
/// assert!(matches!(p.csp_setting(), CspSetting::Custom(csp) if csp.get("default-src").is_some()));
/// assert!(matches!(Policy::open().csp_setting(), CspSetting::Inherit));
/// # Ok::<(), portcullis::headers::csp::CspError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub enum CspSetting {
    /// The layer-wide CSP (if any).
    #[default]
    Inherit,
    /// No CSP on this route.
    Off,
    /// This route's own CSP.
    Custom(Arc<Csp>),
}

/// Checks a content type for a route's allowlist ([`Policy::content_types`]): `type/subtype`
/// or `type/*`, without parameters; returns it in lower case. One that is not (`"json"`,
/// `"application/json; charset=utf-8"`) would never match a request, refusing every body.
///
/// ```
/// use portcullis::policy::check_content_type;
/// assert_eq!(check_content_type("Application/JSON").unwrap(), "application/json");
/// assert_eq!(check_content_type("image/*").unwrap(), "image/*");
/// assert!(check_content_type("json").is_err());
/// assert!(check_content_type("application/json; charset=utf-8").is_err());
/// ```
pub fn check_content_type(s: &str) -> Result<String, String> {
    let t = s.trim().to_ascii_lowercase();
    let token = |p: &str| {
        !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    match t.split_once('/') {
        Some((ty, sub)) if token(ty) && (sub == "*" || token(sub)) => Ok(t),
        _ => Err(format!(
            "{s:?} is not a content type; write type/subtype such as \"application/json\""
        )),
    }
}

/// Checks a role a route requires: one a principal can hold, so not empty and without
/// commas (roles travel comma-joined in `x-portcullis-roles`) or control characters. A role
/// no principal can hold would shut the route to everyone.
///
/// ```
/// use portcullis::policy::check_role;
/// assert!(check_role("admin").is_ok());
/// assert!(check_role("").is_err());
/// assert!(check_role("admin,ops").is_err());
/// ```
pub fn check_role(role: &str) -> Result<(), String> {
    if role.is_empty() || role.contains(',') || role.chars().any(char::is_control) {
        return Err(format!(
            "role {role:?} can never be held: roles are not empty and hold no comma or control character"
        ));
    }
    Ok(())
}

/// What a route requires.
///
/// ```
/// use portcullis::{Policy, Preset};
/// let p = Policy::preset(Preset::Public).max_body(64 * 1024);
/// assert_eq!(p.preset_of(), Some(Preset::Public));
/// assert_eq!(p.max_body_bytes(), Some(64 * 1024));
/// assert!(!p.requires_auth());
/// ```
#[derive(Debug, Clone)]
pub struct Policy {
    preset: Option<Preset>,
    methods: MethodSet,
    auth: bool,
    roles: Vec<String>,
    all_roles: Vec<String>,
    rate_limits: Vec<RateLimitSpec>,
    /// The limiter's texts for `rate_limits` (`RateLimit-Policy` among them), rendered once
    /// (set with them).
    limit_texts: crate::rate_limit::LimitTexts,
    max_body: Option<u64>,
    content_types: Option<Vec<String>>,
    csrf: CsrfMode,
    csp: CspSetting,
    no_store: bool,
    report_only: ReportOnly,
    audit_allowed: bool,
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

impl Policy {
    /// A policy that restricts nothing: any method, no auth, no limits, no CSRF check.
    ///
    /// ```
    /// use portcullis::Policy;
    /// let p = Policy::open();
    /// assert!(p.allowed_methods().is_any());
    /// assert!(!p.requires_auth());
    /// assert!(p.limits().is_empty());
    /// assert_eq!(p.max_body_bytes(), None);
    /// ```
    pub fn open() -> Self {
        Policy {
            preset: None,
            methods: MethodSet::any(),
            auth: false,
            roles: Vec::new(),
            all_roles: Vec::new(),
            rate_limits: Vec::new(),
            limit_texts: crate::rate_limit::LimitTexts::default(),
            max_body: None,
            content_types: None,
            csrf: CsrfMode::Off,
            csp: CspSetting::Inherit,
            no_store: false,
            report_only: ReportOnly::Off,
            audit_allowed: false,
        }
    }

    /// The preset's policy (shared/DESIGN.md §3).
    ///
    /// ```
    /// use portcullis::{Policy, Preset};
    /// let p = Policy::preset(Preset::Strict);
    /// assert_eq!(p.allowed_methods().allow_header(), "POST");
    /// assert_eq!(p.limits()[0].requests, 10);
    /// assert_eq!(p.max_body_bytes(), Some(512 * 1024));
    /// ```
    pub fn preset(preset: Preset) -> Self {
        use Method as M;
        let (methods, auth, limit, body, csrf) = match preset {
            Preset::Public => (
                vec![M::GET, M::HEAD, M::POST],
                false,
                RateLimitSpec::new(60, Duration::from_secs(60), RateKey::Ip),
                MIB,
                CsrfMode::Origin,
            ),
            Preset::Authenticated => (
                vec![M::GET, M::HEAD, M::POST, M::PUT, M::PATCH, M::DELETE],
                true,
                RateLimitSpec::new(20, Duration::from_secs(3600), RateKey::User),
                5 * MIB,
                CsrfMode::OriginAndToken,
            ),
            Preset::Strict => (
                vec![M::POST],
                true,
                RateLimitSpec::new(10, Duration::from_secs(60), RateKey::User),
                512 * KIB,
                CsrfMode::OriginAndToken,
            ),
        };
        Policy {
            preset: Some(preset),
            methods: MethodSet::new(methods),
            auth,
            limit_texts: crate::rate_limit::LimitTexts::of(std::slice::from_ref(&limit)),
            rate_limits: vec![limit],
            max_body: Some(body),
            csrf,
            no_store: true,
            ..Policy::open()
        }
    }

    /// Replaces the method allowlist.
    ///
    /// ```
    /// use http::Method;
    /// use portcullis::{Policy, Preset};
    /// let p = Policy::preset(Preset::Public).methods([Method::GET, Method::HEAD]);
    /// assert_eq!(p.allowed_methods().allow_header(), "GET, HEAD");
    /// assert!(!p.allowed_methods().allows(&Method::POST));
    /// ```
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = MethodSet::new(methods);
        self
    }

    /// Replaces the method allowlist with a prepared set.
    ///
    /// ```
    /// use portcullis::{Policy, methods::MethodSet};
    /// let p = Policy::open().method_set(MethodSet::parse(["get", "put"]).unwrap());
    /// assert_eq!(p.allowed_methods().allow_header(), "GET, PUT");
    /// ```
    pub fn method_set(mut self, methods: MethodSet) -> Self {
        self.methods = methods;
        self
    }

    /// Requires (or not) an authenticated principal. Roles ([`Policy::roles`],
    /// [`Policy::all_roles`]) always require one, whatever the order of the calls: `false`
    /// never leaves a role requirement unchecked.
    ///
    /// ```
    /// use portcullis::{Policy, Preset};
    /// assert!(Policy::open().auth(true).requires_auth());
    /// assert!(!Policy::preset(Preset::Authenticated).auth(false).requires_auth());
    /// assert!(Policy::open().roles(["admin"]).auth(false).requires_auth());
    /// ```
    pub fn auth(mut self, required: bool) -> Self {
        self.auth = required;
        self
    }

    /// Requires any one of `roles` (implies authentication).
    ///
    /// ```
    /// use portcullis::Policy;
    /// let p = Policy::open().roles(["admin", "ops"]);
    /// assert_eq!(p.any_roles(), ["admin", "ops"]);
    /// assert!(p.requires_auth());
    /// ```
    pub fn roles<I, R>(mut self, roles: I) -> Self
    where
        I: IntoIterator<Item = R>,
        R: Into<String>,
    {
        self.roles = roles.into_iter().map(Into::into).collect();
        if !self.roles.is_empty() {
            self.auth = true;
        }
        self
    }

    /// Requires every one of `roles` (implies authentication).
    ///
    /// ```
    /// use portcullis::Policy;
    /// let p = Policy::open().all_roles(["billing", "write"]);
    /// assert_eq!(p.required_roles(), ["billing", "write"]);
    /// assert!(p.requires_auth());
    /// ```
    pub fn all_roles<I, R>(mut self, roles: I) -> Self
    where
        I: IntoIterator<Item = R>,
        R: Into<String>,
    {
        self.all_roles = roles.into_iter().map(Into::into).collect();
        if !self.all_roles.is_empty() {
            self.auth = true;
        }
        self
    }

    /// Replaces the rate limits (an empty list disables rate limiting).
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::{Policy, Preset, policy::{RateKey, RateLimitSpec}};
    /// let p = Policy::preset(Preset::Public).rate_limits([
    ///     RateLimitSpec::new(5, Duration::from_secs(1), RateKey::Ip).named("burst"),
    ///     RateLimitSpec::new(1000, Duration::from_secs(3600), RateKey::Ip).named("hourly"),
    /// ]);
    /// assert_eq!(p.limits().len(), 2);
    /// assert!(p.rate_limits([]).limits().is_empty());
    /// ```
    pub fn rate_limits(mut self, limits: impl IntoIterator<Item = RateLimitSpec>) -> Self {
        self.rate_limits = limits.into_iter().collect();
        self.limit_texts = crate::rate_limit::LimitTexts::of(&self.rate_limits);
        self
    }

    /// Sets the body limit in bytes.
    ///
    /// ```
    /// use portcullis::Policy;
    /// assert_eq!(Policy::open().max_body(4096).max_body_bytes(), Some(4096));
    /// ```
    pub fn max_body(mut self, bytes: u64) -> Self {
        self.max_body = Some(bytes);
        self
    }

    /// Removes the body limit.
    ///
    /// ```
    /// use portcullis::{Policy, Preset};
    /// let p = Policy::preset(Preset::Public).unlimited_body();
    /// assert_eq!(p.max_body_bytes(), None);
    /// ```
    pub fn unlimited_body(mut self) -> Self {
        self.max_body = None;
        self
    }

    /// Accepts only these content types (`application/json`, `text/*`) for requests with a
    /// body; others get 415.
    ///
    /// ```
    /// use portcullis::Policy;
    /// let p = Policy::open().content_types(["Application/JSON ", "text/*"]);
    /// assert_eq!(p.allowed_content_types().unwrap(), ["application/json", "text/*"]);
    /// ```
    pub fn content_types<I, R>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = R>,
        R: Into<String>,
    {
        self.content_types = Some(
            types
                .into_iter()
                .map(|t| t.into().trim().to_ascii_lowercase())
                .collect(),
        );
        self
    }

    /// Sets the CSRF mode.
    ///
    /// ```
    /// use portcullis::{Policy, Preset, policy::CsrfMode};
    /// let p = Policy::preset(Preset::Authenticated).csrf(CsrfMode::Origin);
    /// assert_eq!(p.csrf_mode(), CsrfMode::Origin);
    /// ```
    pub fn csrf(mut self, mode: CsrfMode) -> Self {
        self.csrf = mode;
        self
    }

    /// Sets the route's CSP.
    ///
    /// ```
    /// use portcullis::{Policy, policy::CspSetting};
    /// let p = Policy::open().csp(CspSetting::Off);
    /// assert!(matches!(p.csp_setting(), CspSetting::Off));
    /// ```
    pub fn csp(mut self, csp: CspSetting) -> Self {
        self.csp = csp;
        self
    }

    /// Adds `Cache-Control: no-store` to responses without a `Cache-Control`, and puts it in
    /// place of the application's on answers to authenticated requests (API routes).
    ///
    /// ```
    /// use portcullis::{Policy, Preset};
    /// assert!(Policy::preset(Preset::Public).is_no_store());
    /// assert!(!Policy::preset(Preset::Public).no_store(false).is_no_store());
    /// ```
    pub fn no_store(mut self, on: bool) -> Self {
        self.no_store = on;
        self
    }

    /// Sets report-only mode.
    ///
    /// ```
    /// use portcullis::{Control, Policy, Preset, policy::ReportOnly};
    /// let p = Policy::preset(Preset::Strict).report_only(ReportOnly::All);
    /// assert!(p.report_only_mode().covers(Control::RateLimit));
    /// ```
    pub fn report_only(mut self, mode: ReportOnly) -> Self {
        self.report_only = mode;
        self
    }

    /// Audits allowed requests on this route too.
    ///
    /// ```
    /// use portcullis::{Policy, Preset};
    /// assert!(Policy::preset(Preset::Strict).audit_allowed(true).audits_allowed());
    /// ```
    pub fn audit_allowed(mut self, on: bool) -> Self {
        self.audit_allowed = on;
        self
    }

    /// The preset this policy started from.
    ///
    /// ```
    /// use portcullis::{Policy, Preset};
    /// assert_eq!(Policy::preset(Preset::Strict).roles(["admin"]).preset_of(), Some(Preset::Strict));
    /// assert_eq!(Policy::open().preset_of(), None);
    /// ```
    pub fn preset_of(&self) -> Option<Preset> {
        self.preset
    }

    /// The method allowlist.
    ///
    /// ```
    /// use portcullis::{Policy, Preset};
    /// let p = Policy::preset(Preset::Authenticated);
    /// assert_eq!(p.allowed_methods().allow_header(), "GET, HEAD, POST, PUT, PATCH, DELETE");
    /// assert!(!p.allowed_methods().allows(&http::Method::OPTIONS));
    /// ```
    pub fn allowed_methods(&self) -> &MethodSet {
        &self.methods
    }

    /// True when a principal is required.
    ///
    /// ```
    /// use portcullis::{Policy, Preset};
    /// assert!(!Policy::preset(Preset::Public).requires_auth());
    /// assert!(Policy::preset(Preset::Public).roles(["user"]).requires_auth());
    /// ```
    pub fn requires_auth(&self) -> bool {
        self.auth || !self.roles.is_empty() || !self.all_roles.is_empty()
    }

    /// Roles of which any one suffices.
    ///
    /// ```
    /// use portcullis::{Policy, Preset};
    /// assert!(Policy::preset(Preset::Strict).any_roles().is_empty());
    /// assert_eq!(Policy::preset(Preset::Strict).roles(["admin"]).any_roles(), ["admin"]);
    /// ```
    pub fn any_roles(&self) -> &[String] {
        &self.roles
    }

    /// Roles that are all required.
    ///
    /// ```
    /// use portcullis::Policy;
    /// let p = Policy::open().roles(["a", "b"]).all_roles(["c"]);
    /// assert_eq!(p.required_roles(), ["c"]);
    /// assert_eq!(p.any_roles(), ["a", "b"]);
    /// ```
    pub fn required_roles(&self) -> &[String] {
        &self.all_roles
    }

    /// The rate limits.
    ///
    /// ```
    /// use std::time::Duration;
    /// use portcullis::{Policy, Preset};
    /// let p = Policy::preset(Preset::Authenticated);
    /// let l = &p.limits()[0];
    /// assert_eq!((l.requests, l.window), (20, Duration::from_secs(3600)));
    /// ```
    pub fn limits(&self) -> &[RateLimitSpec] {
        &self.rate_limits
    }

    /// The rate limiter's texts for [`Policy::limits`], rendered once.
    pub(crate) fn limit_texts(&self) -> &crate::rate_limit::LimitTexts {
        &self.limit_texts
    }

    /// The body limit.
    ///
    /// ```
    /// use portcullis::{Policy, Preset};
    /// assert_eq!(Policy::preset(Preset::Public).max_body_bytes(), Some(1024 * 1024));
    /// assert_eq!(Policy::open().max_body_bytes(), None);
    /// ```
    pub fn max_body_bytes(&self) -> Option<u64> {
        self.max_body
    }

    /// The content-type allowlist.
    ///
    /// ```
    /// use portcullis::{Policy, Preset};
    /// assert_eq!(Policy::preset(Preset::Public).allowed_content_types(), None);
    /// let p = Policy::open().content_types(["application/json"]);
    /// assert_eq!(p.allowed_content_types().unwrap(), ["application/json"]);
    /// ```
    pub fn allowed_content_types(&self) -> Option<&[String]> {
        self.content_types.as_deref()
    }

    /// The CSRF mode.
    ///
    /// ```
    /// use portcullis::{Policy, Preset, policy::CsrfMode};
    /// assert_eq!(Policy::preset(Preset::Authenticated).csrf_mode(), CsrfMode::OriginAndToken);
    /// ```
    pub fn csrf_mode(&self) -> CsrfMode {
        self.csrf
    }

    /// The CSP setting.
    ///
    /// ```
    /// use portcullis::{Policy, Preset, policy::CspSetting};
    /// assert!(matches!(Policy::preset(Preset::Public).csp_setting(), CspSetting::Inherit));
    /// ```
    pub fn csp_setting(&self) -> &CspSetting {
        &self.csp
    }

    /// True when responses get `Cache-Control: no-store` by default.
    ///
    /// ```
    /// use portcullis::{Policy, Preset};
    /// assert!(Policy::preset(Preset::Strict).is_no_store());
    /// assert!(!Policy::open().is_no_store());
    /// ```
    pub fn is_no_store(&self) -> bool {
        self.no_store
    }

    /// The report-only setting.
    ///
    /// ```
    /// use portcullis::{Policy, policy::ReportOnly};
    /// assert_eq!(Policy::open().report_only_mode(), &ReportOnly::Off);
    /// ```
    pub fn report_only_mode(&self) -> &ReportOnly {
        &self.report_only
    }

    /// True when allowed requests are audited.
    ///
    /// ```
    /// use portcullis::{Policy, Preset};
    /// assert!(!Policy::preset(Preset::Public).audits_allowed());
    /// ```
    pub fn audits_allowed(&self) -> bool {
        self.audit_allowed
    }
}

impl From<Preset> for Policy {
    fn from(p: Preset) -> Self {
        Policy::preset(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limit_policy_field_follows_the_limits() {
        let p = Policy::preset(Preset::Public);
        assert_eq!(
            p.limit_texts().policy_field().unwrap(),
            "\"default\";q=60;w=60"
        );
        let p = p.rate_limits([
            RateLimitSpec::new(10, Duration::from_secs(1), RateKey::Ip).named("burst"),
            RateLimitSpec::new(1000, Duration::from_secs(3600), RateKey::User).named("a \"b\""),
        ]);
        assert_eq!(
            p.limit_texts().policy_field().unwrap(),
            "\"burst\";q=10;w=1, \"a \\\"b\\\"\";q=1000;w=3600"
        );
        assert!(p.rate_limits([]).limit_texts().policy_field().is_none());
        assert!(Policy::open().limit_texts().policy_field().is_none());
    }

    #[test]
    fn presets_carry_the_seed_values() {
        let p = Policy::preset(Preset::Public);
        assert!(!p.requires_auth());
        assert_eq!(p.allowed_methods().allow_header(), "GET, HEAD, POST");
        assert_eq!(p.limits()[0].requests, 60);
        assert_eq!(p.max_body_bytes(), Some(MIB));
        let s = Policy::preset(Preset::Strict);
        assert!(s.requires_auth());
        assert_eq!(s.allowed_methods().allow_header(), "POST");
        assert_eq!(s.max_body_bytes(), Some(512 * KIB));
        assert_eq!(s.csrf_mode(), CsrfMode::OriginAndToken);
        let a = Policy::preset(Preset::Authenticated);
        assert_eq!(a.limits()[0].window, Duration::from_secs(3600));
        assert_eq!(a.max_body_bytes(), Some(5 * MIB));
    }

    #[test]
    fn report_only_never_covers_path_hygiene() {
        assert!(!ReportOnly::All.covers(Control::Path));
        assert!(ReportOnly::All.covers(Control::Csrf));
        assert!(ReportOnly::Controls(vec![Control::RateLimit]).covers(Control::RateLimit));
        assert!(!ReportOnly::Controls(vec![Control::RateLimit]).covers(Control::Csrf));
    }
}

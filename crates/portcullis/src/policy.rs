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
    pub fn from_name(name: &str) -> Option<Preset> {
        match name {
            "public" => Some(Preset::Public),
            "authenticated" => Some(Preset::Authenticated),
            "strict" => Some(Preset::Strict),
            _ => None,
        }
    }

    /// The preset's name.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Public => "public",
            Preset::Authenticated => "authenticated",
            Preset::Strict => "strict",
        }
    }
}

/// Whose requests a rate limit counts together.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RateKey {
    /// The client address (IPv6 by /64).
    Ip,
    /// The principal's id (falls back to the client address when anonymous).
    User,
    /// The API key id (falls back to the client address).
    ApiKey,
    /// The value of a request header (falls back to the client address when absent).
    Header(String),
    /// Every client of the route together.
    Route,
}

/// The rate-limit algorithm.
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
    pub fn named(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// Chooses the algorithm.
    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// Sets the token bucket's burst capacity.
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = burst;
        self
    }

    /// Sets the cost of one request.
    pub fn cost(mut self, cost: u32) -> Self {
        self.cost = cost.max(1);
        self
    }
}

/// CSRF protection for unsafe methods.
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

/// What a route requires.
#[derive(Debug, Clone)]
pub struct Policy {
    preset: Option<Preset>,
    methods: MethodSet,
    auth: bool,
    roles: Vec<String>,
    all_roles: Vec<String>,
    rate_limits: Vec<RateLimitSpec>,
    /// `RateLimit-Policy` for `rate_limits`, rendered once (set with them).
    rate_limit_policy: Option<http::HeaderValue>,
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
    pub fn open() -> Self {
        Policy {
            preset: None,
            methods: MethodSet::any(),
            auth: false,
            roles: Vec::new(),
            all_roles: Vec::new(),
            rate_limits: Vec::new(),
            rate_limit_policy: None,
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
            rate_limit_policy: crate::rate_limit::policy_field(std::slice::from_ref(&limit)),
            rate_limits: vec![limit],
            max_body: Some(body),
            csrf,
            no_store: true,
            ..Policy::open()
        }
    }

    /// Replaces the method allowlist.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = MethodSet::new(methods);
        self
    }

    /// Replaces the method allowlist with a prepared set.
    pub fn method_set(mut self, methods: MethodSet) -> Self {
        self.methods = methods;
        self
    }

    /// Requires (or not) an authenticated principal.
    pub fn auth(mut self, required: bool) -> Self {
        self.auth = required;
        self
    }

    /// Requires any one of `roles` (implies authentication).
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
    pub fn rate_limits(mut self, limits: impl IntoIterator<Item = RateLimitSpec>) -> Self {
        self.rate_limits = limits.into_iter().collect();
        self.rate_limit_policy = crate::rate_limit::policy_field(&self.rate_limits);
        self
    }

    /// Sets the body limit in bytes.
    pub fn max_body(mut self, bytes: u64) -> Self {
        self.max_body = Some(bytes);
        self
    }

    /// Removes the body limit.
    pub fn unlimited_body(mut self) -> Self {
        self.max_body = None;
        self
    }

    /// Accepts only these content types (`application/json`, `text/*`) for requests with a
    /// body; others get 415.
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
    pub fn csrf(mut self, mode: CsrfMode) -> Self {
        self.csrf = mode;
        self
    }

    /// Sets the route's CSP.
    pub fn csp(mut self, csp: CspSetting) -> Self {
        self.csp = csp;
        self
    }

    /// Adds `Cache-Control: no-store` to responses without a `Cache-Control` (API routes).
    pub fn no_store(mut self, on: bool) -> Self {
        self.no_store = on;
        self
    }

    /// Sets report-only mode.
    pub fn report_only(mut self, mode: ReportOnly) -> Self {
        self.report_only = mode;
        self
    }

    /// Audits allowed requests on this route too.
    pub fn audit_allowed(mut self, on: bool) -> Self {
        self.audit_allowed = on;
        self
    }

    /// The preset this policy started from.
    pub fn preset_of(&self) -> Option<Preset> {
        self.preset
    }

    /// The method allowlist.
    pub fn allowed_methods(&self) -> &MethodSet {
        &self.methods
    }

    /// True when a principal is required.
    pub fn requires_auth(&self) -> bool {
        self.auth
    }

    /// Roles of which any one suffices.
    pub fn any_roles(&self) -> &[String] {
        &self.roles
    }

    /// Roles that are all required.
    pub fn required_roles(&self) -> &[String] {
        &self.all_roles
    }

    /// The rate limits.
    pub fn limits(&self) -> &[RateLimitSpec] {
        &self.rate_limits
    }

    /// The `RateLimit-Policy` field of [`Policy::limits`].
    pub(crate) fn rate_limit_policy_field(&self) -> Option<&http::HeaderValue> {
        self.rate_limit_policy.as_ref()
    }

    /// The body limit.
    pub fn max_body_bytes(&self) -> Option<u64> {
        self.max_body
    }

    /// The content-type allowlist.
    pub fn allowed_content_types(&self) -> Option<&[String]> {
        self.content_types.as_deref()
    }

    /// The CSRF mode.
    pub fn csrf_mode(&self) -> CsrfMode {
        self.csrf
    }

    /// The CSP setting.
    pub fn csp_setting(&self) -> &CspSetting {
        &self.csp
    }

    /// True when responses get `Cache-Control: no-store` by default.
    pub fn is_no_store(&self) -> bool {
        self.no_store
    }

    /// The report-only setting.
    pub fn report_only_mode(&self) -> &ReportOnly {
        &self.report_only
    }

    /// True when allowed requests are audited.
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
            p.rate_limit_policy_field().unwrap(),
            "\"default\";q=60;w=60"
        );
        let p = p.rate_limits([
            RateLimitSpec::new(10, Duration::from_secs(1), RateKey::Ip).named("burst"),
            RateLimitSpec::new(1000, Duration::from_secs(3600), RateKey::User).named("a \"b\""),
        ]);
        assert_eq!(
            p.rate_limit_policy_field().unwrap(),
            "\"burst\";q=10;w=1, \"a \\\"b\\\"\";q=1000;w=3600"
        );
        assert!(p.rate_limits([]).rate_limit_policy_field().is_none());
        assert!(Policy::open().rate_limit_policy_field().is_none());
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

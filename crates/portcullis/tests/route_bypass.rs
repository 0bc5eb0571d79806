//! The bypass attack table: path variants of a protected prefix, sent as raw request lines.
//!
//! `/api/admin/**` requires an admin; everything else is public. No authenticator is
//! configured, so the admin policy always answers 401. Every variant must either be refused
//! with 400 (by our layer with `invalid_path`/`invalid_host`, or by hyper before the layer sees
//! the request) or land on the admin policy (401, audit route `/api/admin/**`) — never on the
//! public policy, and never on the admin handler (whose body is `ADMIN-SECRET`).
//!
//! A property test then throws random paths over risky fragments at `CanonicalPath::parse`
//! and the route table, and compares the guard with a model of a lenient application.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::routing::{any, get};
use common::*;
use portcullis::audit::{MemorySink, Outcome};
use portcullis::route::{CanonicalPath, RouteTable};
use portcullis::{Policy, Preset, SecurityLayer};

const SECRET: &str = "ADMIN-SECRET";
const ADMIN_ROUTE: &str = "/api/admin/**";

/// How a variant is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handled {
    /// Our layer refused it: 400 with code `invalid_path`.
    Layer,
    /// Our host check refused it: 400 with code `invalid_host`.
    Host,
    /// hyper refused the request line before the layer ran: a bare 400, no JSON, no audit.
    Hyper,
    /// Canonicalized onto the admin policy: 401, audited under `/api/admin/**` with this
    /// canonical path.
    Admin(&'static str),
}

use Handled::{Admin, Host, Hyper, Layer};

/// One row: a label, the raw request target (`HOST` stands for the server's address; control
/// bytes are sent as they are) and the expected handling.
const VARIANTS: &[(&str, &str, Handled)] = &[
    // Repeated slashes.
    ("leading //", "//api/admin/users", Admin("/api/admin/users")),
    (
        "inner // before admin",
        "/api//admin/users",
        Admin("/api/admin/users"),
    ),
    (
        "inner // after admin",
        "/api/admin//users",
        Admin("/api/admin/users"),
    ),
    ("/// everywhere", "///api///admin", Admin("/api/admin")),
    (
        "trailing //",
        "/api/admin/users//",
        Admin("/api/admin/users/"),
    ),
    // Raw dot segments.
    (
        "/./ before admin",
        "/api/./admin/users",
        Admin("/api/admin/users"),
    ),
    (
        "x/../ before admin",
        "/api/x/../admin/users",
        Admin("/api/admin/users"),
    ),
    (
        "x/../ at root",
        "/x/../api/admin/users",
        Admin("/api/admin/users"),
    ),
    (
        "trailing /.",
        "/api/admin/users/.",
        Admin("/api/admin/users/"),
    ),
    (
        "/./ and trailing /",
        "/api/admin/./users/",
        Admin("/api/admin/users/"),
    ),
    (
        "leading /./",
        "/./api/admin/users",
        Admin("/api/admin/users"),
    ),
    ("trailing /..", "/api/admin/users/..", Admin("/api/admin/")),
    (
        "deep ../../..",
        "/a/b/c/../../../api/admin/users",
        Admin("/api/admin/users"),
    ),
    // Percent-encoded dot segments.
    (
        "%2e segment",
        "/api/%2e/admin/users",
        Admin("/api/admin/users"),
    ),
    (
        "%2E segment",
        "/api/%2E/admin/users",
        Admin("/api/admin/users"),
    ),
    (
        "%2e%2e segment",
        "/api/x/%2e%2e/admin/users",
        Admin("/api/admin/users"),
    ),
    (
        "%2E%2e segment",
        "/api/x/%2E%2e/admin/users",
        Admin("/api/admin/users"),
    ),
    (
        ".%2e segment",
        "/api/x/.%2e/admin/users",
        Admin("/api/admin/users"),
    ),
    (
        "%2e. segment",
        "/api/x/%2e./admin/users",
        Admin("/api/admin/users"),
    ),
    (
        "public-data/%2e%2e",
        "/api/public-data/%2e%2e/admin/users",
        Admin("/api/admin/users"),
    ),
    (
        "admin/%2e%2e/admin",
        "/api/admin/%2e%2e/admin/users",
        Admin("/api/admin/users"),
    ),
    (
        "trailing %2e",
        "/api/admin/users/%2e",
        Admin("/api/admin/users/"),
    ),
    ("%2e%2e above root", "/%2e%2e/api/admin/users", Layer),
    // Encoded unreserved letters.
    ("%61dmin", "/api/%61dmin/users", Admin("/api/admin/users")),
    ("%61pi", "/%61pi/admin/users", Admin("/api/admin/users")),
    ("admi%6e", "/api/admi%6e/users", Admin("/api/admin/users")),
    (
        "every letter encoded",
        "/%61%70%69/%61%64%6d%69%6e/%75%73%65%72%73",
        Admin("/api/admin/users"),
    ),
    (
        "%7e tilde",
        "/api/admin/%7eusers",
        Admin("/api/admin/~users"),
    ),
    // Encoded slash and backslash.
    ("%2f", "/api%2fadmin/users", Layer),
    ("%2F", "/api%2Fadmin", Layer),
    ("%5c", "/api/admin%5cusers", Layer),
    ("%5C", "/api%5Cadmin%5Cusers", Layer),
    // Raw backslash.
    ("raw \\ separators", "/api\\admin\\users", Layer),
    ("raw ..\\", "/api/x/..\\admin/users", Layer),
    ("target starting with \\", "\\api\\admin\\users", Hyper),
    // Double encoding.
    ("%252f", "/api%252fadmin/users", Layer),
    ("%252e%252e", "/api/x/%252e%252e/admin/users", Layer),
    ("%255c", "/api%255cadmin/users", Layer),
    ("%2525", "/api/admin/%2525", Layer),
    ("%2500", "/api/admin/users%2500", Layer),
    (
        "%25 then escaped hex digits",
        "/api/x/%25%32%65%25%32%65/admin/users",
        Layer,
    ),
    // `;` path parameters.
    ("admin;x", "/api/admin;x/users", Layer),
    ("api;", "/api;/admin/users", Layer),
    (";jsessionid", "/api/admin/users;jsessionid=1", Layer),
    ("..; at root", "/..;/api/admin/users", Layer),
    ("x/..;/", "/api/x/..;/admin/users", Layer),
    ("%3b", "/api/admin%3busers", Layer),
    ("%3B", "/api%3B/admin/users", Layer),
    // Trailing dots and spaces.
    ("admin.", "/api/admin./users", Layer),
    ("admin..", "/api/admin../users", Layer),
    ("admin%20", "/api/admin%20/users", Layer),
    ("admin%20%20", "/api/admin%20%20/users", Layer),
    ("admin%09", "/api/admin%09/users", Layer),
    ("users.", "/api/admin/users.", Layer),
    ("admin%2e", "/api/admin%2e/users", Layer),
    ("admin + no-break space", "/api/admin%c2%a0/users", Layer),
    // NUL, CR, LF and other controls, encoded.
    ("%00 inside", "/api/admin%00/users", Layer),
    ("%00 at end", "/api/admin/users%00", Layer),
    ("%00 segment then ..", "/%00/../api/admin/users", Layer),
    ("%0d", "/api%0d/admin/users", Layer),
    ("%0a", "/api/admin%0a/users", Layer),
    (
        "%0d%0a header injection",
        "/api/admin/users%0d%0aX-Injected:%201",
        Layer,
    ),
    ("%0b", "/api/admin%0b/users", Layer),
    ("%7f", "/api/admin%7f/users", Layer),
    // Controls sent raw: the request line does not survive hyper's parser.
    ("raw NUL", "/api/admin\0/users", Hyper),
    ("raw CR", "/api/admin\r/users", Hyper),
    ("raw LF", "/api/admin\n/users", Hyper),
    ("raw tab", "/api/admin\t/users", Hyper),
    ("raw VT", "/api/admin\x0b/users", Hyper),
    ("raw DEL", "/api/admin\x7f/users", Hyper),
    ("raw space", "/api/admin /users", Hyper),
    // Overlong and otherwise invalid UTF-8.
    ("overlong / %c0%af", "/api%c0%afadmin/users", Layer),
    ("overlong / %e0%80%af", "/api/%e0%80%afadmin/users", Layer),
    (
        "overlong .. %c0%ae%c0%ae",
        "/api/x/%c0%ae%c0%ae/admin/users",
        Layer,
    ),
    ("overlong \\ %c1%9c", "/api%c1%9cadmin/users", Layer),
    (
        "overlong 4-byte .",
        "/api/x/%f0%80%80%ae%f0%80%80%ae/admin/users",
        Layer,
    ),
    ("lone lead byte + %2e", "/api/x/%c0%2e/admin/users", Layer),
    ("surrogate", "/api/adm%ed%a0%80in/users", Layer),
    // Full-width forms.
    ("full-width /", "/api%ef%bc%8fadmin/users", Layer),
    (
        "full-width ..",
        "/api/x/%ef%bc%8e%ef%bc%8e/admin/users",
        Layer,
    ),
    ("full-width \\", "/api%ef%bc%bcadmin/users", Layer),
    ("full-width a", "/api/%ef%bd%81dmin/users", Layer),
    (
        "full-width admin",
        "/api/%EF%BD%81%EF%BD%84%EF%BD%8D%EF%BD%89%EF%BD%8E/users",
        Layer,
    ),
    ("raw UTF-8 full-width /", "/api\u{FF0F}admin/users", Layer),
    // Other Unicode look-alikes and invisible characters.
    ("division slash", "/api%e2%88%95admin/users", Layer),
    ("fraction slash", "/api%e2%81%84admin/users", Layer),
    (
        "two dot leader (NFKC ..)",
        "/api/x/%e2%80%a5/admin/users",
        Layer,
    ),
    (
        "dotless i (upper-cases to I)",
        "/api/adm%c4%b1n/users",
        Layer,
    ),
    ("math bold a (NFKC a)", "/api/%f0%9d%90%9admin/users", Layer),
    ("circled a (NFKC a)", "/api/%e2%93%90dmin/users", Layer),
    ("soft hyphen", "/api/ad%c2%admin/users", Layer),
    ("zero-width space", "/api/admin%e2%80%8b/users", Layer),
    (
        "Greek question mark (NFKC ;)",
        "/api/admin%cd%be/users",
        Layer,
    ),
    ("yen sign (cp932 \\)", "/api%c2%a5admin/users", Layer),
    // Absolute-form request targets.
    (
        "absolute, our host",
        "http://HOST/api/admin/users",
        Admin("/api/admin/users"),
    ),
    (
        "absolute, https scheme",
        "https://HOST/api/admin/users",
        Admin("/api/admin/users"),
    ),
    (
        "absolute, upper-case scheme",
        "HTTP://HOST/api/admin/users",
        Admin("/api/admin/users"),
    ),
    (
        "absolute with //./",
        "http://HOST//api/./admin/users",
        Admin("/api/admin/users"),
    ),
    (
        "absolute with x/../",
        "http://HOST/api/x/../admin/users",
        Admin("/api/admin/users"),
    ),
    ("absolute with %2f", "http://HOST/api%2fadmin/users", Layer),
    (
        "absolute, other host",
        "http://evil.example/api/admin/users",
        Host,
    ),
    (
        "absolute, userinfo",
        "http://user@HOST/api/admin/users",
        Host,
    ),
    ("absolute, IPv6 host", "http://[::1]/api/admin/users", Host),
    (
        "absolute, two ports",
        "http://HOST:80/api/admin/users",
        Hyper,
    ),
    ("authority-form", "HOST", Layer),
    ("asterisk-form", "*", Layer),
    ("no leading /", "api/admin/users", Hyper),
    // Letter case: the folded form must not select a stronger route than the exact one.
    ("API upper-case", "/API/admin/users", Layer),
    ("ADMIN upper-case", "/api/ADMIN/users", Layer),
    ("Title Case", "/Api/Admin/Users", Layer),
    ("Admin, no tail", "/api/Admin", Layer),
    ("%41DMIN", "/api/%41DMIN/users", Layer),
    (
        "USERS upper-case (same route folded)",
        "/api/admin/USERS",
        Admin("/api/admin/USERS"),
    ),
    // `..` above the root.
    ("/../ at root", "/../api/admin/users", Layer),
    ("../../ from /api", "/api/../../admin", Layer),
    ("../../../ from admin", "/api/admin/../../../x", Layer),
    // Query and fragment tricks.
    (
        "?/../ in query",
        "/api/admin/users?/../public-data",
        Admin("/api/admin/users"),
    ),
    (
        "public-data/../admin",
        "/api/public-data/../admin/users",
        Admin("/api/admin/users"),
    ),
    (
        "public-data%2f..%2f",
        "/api/public-data%2f..%2fadmin/users",
        Layer,
    ),
    (
        "public-data/..%2f",
        "/api/public-data/..%2fadmin/users",
        Layer,
    ),
    (
        "#/../ fragment",
        "/api/admin/users#/../../public-data",
        Admin("/api/admin/users"),
    ),
    (
        "encoded ../ in query",
        "/api/admin/users?x=%2f..%2f",
        Admin("/api/admin/users"),
    ),
    // Malformed escapes.
    ("lone %", "/api/admin/%", Layer),
    ("%zz", "/api/admin/%zz", Layer),
    ("%2 truncated", "/api/admin/%2", Layer),
    ("% before /", "/api%/admin/users", Layer),
    ("%%32%66", "/api/admin/%%32%66", Layer),
    ("IIS %u002f", "/api/admin/%u002f", Layer),
    // Plain spellings of the protected prefix.
    ("exact", "/api/admin/users", Admin("/api/admin/users")),
    (
        "trailing /",
        "/api/admin/users/",
        Admin("/api/admin/users/"),
    ),
    ("prefix only", "/api/admin", Admin("/api/admin")),
    ("prefix with /", "/api/admin/", Admin("/api/admin/")),
    ("literal /**", "/api/admin/**", Admin("/api/admin/**")),
];

async fn start(sink: MemorySink) -> SocketAddr {
    let layer = SecurityLayer::builder()
        .default_policy(Preset::Public)
        .route(
            ADMIN_ROUTE,
            Policy::preset(Preset::Authenticated).roles(["admin"]),
        )
        .audit(Arc::new(sink))
        .build()
        .expect("valid policy");
    let router = Router::new()
        .route("/api/admin/users", any(|| async { SECRET }))
        .route("/api/public-data", get(|| async { "public" }))
        .fallback(echo);
    serve_with(router, layer).await
}

#[tokio::test]
async fn path_variants_of_a_protected_prefix_are_refused_or_land_on_its_policy() {
    assert!(VARIANTS.len() >= 70, "only {} variants", VARIANTS.len());
    let sink = MemorySink::default();
    let addr = start(sink.clone()).await;
    let host = addr.to_string();
    let mut failures = Vec::new();
    let mut tally = [0usize; 4];

    for &(label, target, expected) in VARIANTS {
        let target = target.replace("HOST", &host);
        let before = sink.events().len();
        let r = raw_get(addr, &target).await;
        let events = sink.events();
        let new = &events[before..];
        let code = r.json()["code"].as_str().map(str::to_string);

        // The safety property itself, whatever the expected row says.
        let safe = match r.status {
            400 => true,
            401 => new.len() == 1 && new[0].route == ADMIN_ROUTE,
            _ => false,
        };
        if !safe || r.text().contains(SECRET) {
            failures.push(format!(
                "BYPASS {label} {target:?}: {} {}",
                r.status,
                r.text()
            ));
            continue;
        }

        // The handling this row documents.
        let got = match (r.status, code.as_deref()) {
            (400, Some("invalid_path")) => Some(Layer),
            (400, Some("invalid_host")) => Some(Host),
            (400, None) if r.header("x-request-id").is_none() && new.is_empty() => Some(Hyper),
            (401, Some("unauthorized")) => Some(Admin("")),
            _ => None,
        };
        let ok = match (expected, got) {
            (Admin(path), Some(Admin(_))) => {
                new[0].path == path
                    && new[0].status == 401
                    && new[0].outcome == Outcome::Denied
                    && new[0].action.as_str() == "unauthorized_access"
            }
            (Layer | Host, Some(g)) if g == expected => {
                // Refused in step 2: one audit event, before any route was chosen.
                new.len() == 1
                    && new[0].route == "*"
                    && new[0].status == 400
                    && new[0].metadata["code"].as_str() == code.as_deref()
                    && new[0].request_id == r.header("x-request-id").unwrap_or_default()
                    // What the client sent (canonical where it got that far), for whoever
                    // reads the audit.
                    && !new[0].path.is_empty()
                    && new[0].path != "(invalid)"
            }
            (Hyper, Some(Hyper)) => true,
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "{label} {target:?}: expected {expected:?}, got {} {} (audit: {:?})",
                r.status,
                r.text(),
                new.iter()
                    .map(|e| (&e.route, &e.path, e.status))
                    .collect::<Vec<_>>()
            ));
        }
        tally[match expected {
            Layer => 0,
            Host => 1,
            Hyper => 2,
            Admin(_) => 3,
        }] += 1;
    }

    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let [layer, host_refused, hyper, admin] = tally;
    println!(
        "{} variants: {layer} refused by the layer (invalid_path), {host_refused} by the host \
         check (invalid_host), {hyper} by hyper's parser, {admin} on the admin policy",
        VARIANTS.len()
    );
    // The bulk is decided by our layer, not by the HTTP parser in front of it.
    assert!(
        hyper * 10 <= VARIANTS.len(),
        "{hyper} of {} variants only stopped by hyper",
        VARIANTS.len()
    );
}

/// An absolute-form target names one of our resources only as http or https: `ftp://` or a
/// made-up scheme is refused (400 `invalid_host`), never routed on its path.
#[tokio::test]
async fn absolute_form_targets_with_another_scheme_are_refused() {
    let addr = start(MemorySink::default()).await;
    for scheme in ["ftp", "ws", "gopher", "x-made-up"] {
        let r = raw_get(addr, &format!("{scheme}://{addr}/api/public-data")).await;
        assert_eq!(r.status, 400, "{scheme}: {}", r.text());
        assert_eq!(r.json()["code"], "invalid_host", "{scheme}");
    }
    for scheme in ["http", "HTTP"] {
        let r = raw_get(addr, &format!("{scheme}://{addr}/api/public-data")).await;
        assert_eq!(r.status, 200, "{scheme}: {}", r.text());
    }
}

/// A path refused at step 2 is audited as the client sent it (an authority-form target
/// whole), cut at 1 KiB: what an operator needs to see what was tried.
#[tokio::test]
async fn a_refused_path_is_audited_as_sent() {
    let sink = MemorySink::default();
    let addr = start(sink.clone()).await;
    let long = format!("/api/admin%2f{}", "a".repeat(3000));
    let authority = addr.to_string();
    for (target, audited) in [
        ("/api/admin%2fusers", "/api/admin%2fusers".to_string()),
        (
            "/api/admin/..%5c..%5cx",
            "/api/admin/..%5c..%5cx".to_string(),
        ),
        ("/api/;x/admin/users", "/api/;x/admin/users".to_string()),
        (authority.as_str(), authority.clone()),
        (long.as_str(), format!("{}…", &long[..1024])),
    ] {
        let before = sink.events().len();
        let r = raw_get(addr, target).await;
        assert_eq!(r.status, 400, "{target}: {}", r.text());
        let events = sink.events();
        let new = &events[before..];
        assert_eq!(new.len(), 1, "{target}");
        assert_eq!(new[0].path, audited, "{target}");
        assert_eq!(new[0].route, "*", "{target}");
    }
}

/// Variants that legitimately name another resource: they land on the public policy, and the
/// application sees exactly the path the guard matched.
#[tokio::test]
async fn near_misses_reach_the_application_as_the_guard_saw_them() {
    let sink = MemorySink::default();
    let addr = start(sink).await;
    for (target, app_path) in [
        ("/api/administrator", "/api/administrator"),
        ("/api/admin-panel/users", "/api/admin-panel/users"),
        ("/api/xadmin/users", "/api/xadmin/users"),
        ("/api/admin%3f/users", "/api/admin%3F/users"),
        ("/api/admin%23/users", "/api/admin%23/users"),
        ("/admin/api/users", "/admin/api/users"),
        ("/api/public-data#/../admin/users", "/api/public-data"),
        ("/api/public-data?/../admin/users", "/api/public-data"),
    ] {
        let r = raw_get(addr, target).await;
        assert_eq!(r.status, 200, "{target}: {}", r.text());
        assert!(!r.text().contains(SECRET), "{target}");
        if app_path == "/api/public-data" {
            assert_eq!(r.text(), "public", "{target}");
        } else {
            let v = r.json();
            assert_eq!(v["path"], app_path, "{target}");
            assert_eq!(v["route"], "*", "{target}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Property test: random paths over risky fragments.

/// splitmix64: small, deterministic, good enough to pick fragments.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const FRAGMENTS: &[&str] = &[
    "/",
    ".",
    "..",
    "%2e",
    "%2f",
    "%5c",
    ";",
    "admin",
    "api",
    "users",
    "%25",
    "%00",
    "A",
    // Extras: escaped hex digits (double encoding in disguise), other spellings of the same
    // bytes, and whole prefixes so the protected route is hit often.
    "%41",
    "%32",
    "%66",
    "%2E",
    "%3b",
    "%20",
    "%7e",
    "\\",
    "ADMIN",
    "%c0%ae",
    "%ef%bc%8f",
    "/api",
    "/admin",
    "/api/admin",
];

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Decodes every valid `%XX` once; leaves the rest alone.
fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%'
            && let (Some(h), Some(l)) = (
                s.get(i + 1).copied().and_then(hex),
                s.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(h << 4 | l);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

/// The segments a lenient application would route on: decodes repeatedly, stops at NUL,
/// treats `\` as `/`, drops `;` parameters, strips trailing dots and spaces, resolves dot
/// segments (clamping at the root) and ignores case.
fn lenient_segments(raw: &str) -> Vec<String> {
    let mut b = raw.as_bytes().to_vec();
    for _ in 0..3 {
        let d = percent_decode(&b);
        if d == b {
            break;
        }
        b = d;
    }
    if let Some(nul) = b.iter().position(|&c| c == 0) {
        b.truncate(nul);
    }
    let text = String::from_utf8_lossy(&b).replace('\\', "/");
    let mut out: Vec<String> = Vec::new();
    for seg in text.split('/') {
        let seg = seg.split(';').next().unwrap_or_default();
        match seg {
            ".." => {
                out.pop();
            }
            s => {
                let s = s.trim_end_matches(['.', ' ']);
                if !s.is_empty() {
                    out.push(s.to_ascii_lowercase());
                }
            }
        }
    }
    out
}

fn table() -> RouteTable<&'static str> {
    let mut t = RouteTable::new("public");
    t.insert("/api/admin/**", "admin").expect("valid pattern");
    t.insert("/api/**", "api").expect("valid pattern");
    t.insert("/api/public-data", "public-data")
        .expect("valid pattern");
    t
}

#[test]
fn random_paths_canonicalize_to_fixed_points_that_route_like_a_lenient_app() {
    let table = table();
    let mut rng = Rng(0x5EED_B0A7_5EED_B0A7);
    let (mut accepted, mut refused, mut admin_like, mut admin_guarded) = (0, 0, 0, 0);
    for _ in 0..20_000 {
        let mut raw = match rng.below(10) {
            0 => String::new(),
            1 | 2 => "/api/admin".to_string(),
            _ => "/".to_string(),
        };
        for _ in 0..1 + rng.below(12) {
            raw.push_str(FRAGMENTS[rng.below(FRAGMENTS.len())]);
        }
        let lenient = lenient_segments(&raw);
        let lenient_admin = lenient.len() >= 2 && lenient[0] == "api" && lenient[1] == "admin";
        admin_like += usize::from(lenient_admin);

        let Ok(path) = CanonicalPath::parse(&raw) else {
            refused += 1;
            continue;
        };
        accepted += 1;
        let c = path.as_str();
        assert!(c.starts_with('/'), "{raw:?} -> {c:?}");
        for bad in ["//", "/./", "/../", "\\", ";"] {
            assert!(!c.contains(bad), "{raw:?} -> {c:?} contains {bad:?}");
        }
        assert!(
            !c.ends_with("/.") && !c.ends_with("/.."),
            "{raw:?} -> {c:?}"
        );
        // Escapes left in the canonical form are upper-case and never of unreserved bytes.
        for (i, _) in c.match_indices('%') {
            let esc = &c[i + 1..i + 3];
            assert!(
                esc.bytes()
                    .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()),
                "{raw:?} -> {c:?}"
            );
            let v = u8::from_str_radix(esc, 16).expect("hex escape");
            assert!(
                !(v.is_ascii_alphanumeric() || b"-._~".contains(&v)),
                "{raw:?} -> {c:?} keeps an escaped unreserved byte"
            );
        }
        // A fixed point: canonicalizing again changes nothing.
        assert_eq!(
            CanonicalPath::parse(c).as_ref(),
            Ok(&path),
            "{raw:?} -> {c:?} is not a fixed point"
        );
        // The guard and a lenient application read the same segments.
        assert_eq!(lenient_segments(c), lenient, "{raw:?} -> {c:?}");

        let exact = table.lookup(&path).map(|m| m.pattern);
        let again = CanonicalPath::parse(c).expect("fixed point");
        assert_eq!(
            table.lookup(&again).map(|m| m.pattern),
            exact,
            "{raw:?} -> {c:?}"
        );
        // What a lenient application would treat as admin is refused (a case variant of a
        // stronger route: `Err`) or guarded as admin.
        if lenient_admin && let Ok(p) = exact {
            assert_eq!(p, "/api/admin/**", "{raw:?} -> {c:?} routes weaker");
            admin_guarded += 1;
        }
    }
    println!(
        "{accepted} accepted, {refused} refused, {admin_like} admin-like ({admin_guarded} \
         accepted on the admin route)"
    );
    // The run is not vacuous.
    assert!(accepted > 2_000 && refused > 2_000, "{accepted}/{refused}");
    assert!(
        admin_like > 1_500 && admin_guarded > 150,
        "{admin_like}/{admin_guarded}"
    );
}

/// A path past `MAX_PATH_LEN` is "too long", not "malformed": 414 `uri_too_long` (RFC 9110
/// §15.5.15), as one JSON error, audited; the longest accepted path still reaches its policy.
#[tokio::test]
async fn a_path_over_the_limit_is_414() {
    use portcullis::route::MAX_PATH_LEN;
    let sink = MemorySink::default();
    let addr = start(sink.clone()).await;
    let over = format!("/api/admin/{}", "a".repeat(MAX_PATH_LEN));
    let r = raw_get(addr, &over).await;
    assert_eq!(r.status, 414, "{}", r.text());
    assert_eq!(r.json()["code"], "uri_too_long");
    assert!(r.header("x-request-id").is_some());
    let events = sink.events();
    let last = events.last().expect("audited");
    assert_eq!((last.status, last.route.as_str()), (414, "*"));
    assert_eq!(last.action.as_str(), "invalid_input");

    let longest = format!(
        "/api/admin/{}",
        "a".repeat(MAX_PATH_LEN - "/api/admin/".len())
    );
    let r = raw_get(addr, &longest).await;
    assert_eq!(r.status, 401, "{}", r.text());
}

/// Applications decode escaped punctuation before routing (Go's `ServeMux`, Spring, Django,
/// ASP.NET Core, Next.js): `/odata/%24batch` is their `/odata/$batch`. A route naming such a
/// character guards its escaped spellings too, while the application still gets the path as
/// the client wrote it.
#[tokio::test]
async fn escaped_punctuation_lands_on_the_route_it_decodes_to() {
    let sink = MemorySink::default();
    let layer = SecurityLayer::builder()
        .default_policy(Preset::Public)
        .route("/odata/$batch", Preset::Authenticated)
        .route("/v1/projects/*:cancel", Preset::Authenticated)
        .route("/@admin/**", Preset::Authenticated)
        .audit(Arc::new(sink.clone()))
        .build()
        .expect("valid policy");
    let addr = serve_with(Router::new().fallback(echo), layer).await;
    for (target, route, path) in [
        ("/odata/$batch", "/odata/$batch", "/odata/$batch"),
        ("/odata/%24batch", "/odata/$batch", "/odata/%24batch"),
        (
            "/v1/projects/p1%3acancel",
            "/v1/projects/*:cancel",
            "/v1/projects/p1%3Acancel",
        ),
        ("/%40admin/users", "/@admin/**", "/%40admin/users"),
        ("/x/../%40admin/%2e/users", "/@admin/**", "/%40admin/users"),
    ] {
        let event = refused_401(addr, &sink, target).await;
        assert_eq!(event.route, route, "{target}");
        assert_eq!(event.path, path, "{target}");
    }
    // A case variant of the escaped form is refused; other names stay public, as sent.
    assert_eq!(raw_get(addr, "/%40ADMIN/users").await.status, 400);
    let r = raw_get(addr, "/odata/%24metadata").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["path"], "/odata/%24metadata");
}

/// `GET target` answered 401 with exactly one audit event: that event.
async fn refused_401(
    addr: SocketAddr,
    sink: &MemorySink,
    target: &str,
) -> portcullis::audit::AuditEvent {
    let before = sink.events().len();
    let r = raw_get(addr, target).await;
    assert_eq!(r.status, 401, "{target}: {}", r.text());
    let mut events = sink.events();
    assert_eq!(events.len(), before + 1, "{target}");
    events.swap_remove(before)
}

/// Next.js serves a page's server-side props at `/_next/data/<build id>/<page>.json`, and the
/// build id is in every page: with `nextjs_data_routes`, that request gets its page's route,
/// under any base path, nested pages, `index.json` and path variants included. A page without
/// a route of its own leaves the data path to its own route; without the option, nothing
/// changes.
#[tokio::test]
async fn nextjs_data_requests_get_their_pages_route() {
    let sink = MemorySink::default();
    let build = |next: bool| {
        SecurityLayer::builder()
            .default_policy(Preset::Public)
            .route("/dashboard/**", Preset::Authenticated)
            .route(
                "/docs/app/**",
                Policy::preset(Preset::Authenticated).roles(["admin"]),
            )
            .route("/", Preset::Authenticated)
            .route(
                "/_next/**",
                Policy::preset(Preset::Public).methods([http::Method::GET]),
            )
            .audit(Arc::new(sink.clone()))
            .nextjs_data_routes(next)
            .build()
            .expect("valid policy")
    };
    let addr = serve_with(Router::new().fallback(echo), build(true)).await;
    for (target, route) in [
        ("/_next/data/b1d-9x/dashboard.json", "/dashboard/**"),
        (
            "/_next/data/b1d-9x/dashboard/settings.json",
            "/dashboard/**",
        ),
        (
            "/_next/data/b1d-9x/dashboard/settings.json?tab=2",
            "/dashboard/**",
        ),
        (
            "/_next/data/b1d-9x//dashboard/./a/../settings.json",
            "/dashboard/**",
        ),
        ("/_next/data/b1d-9x/%64ashboard.json", "/dashboard/**"),
        ("/_next/data/b1d-9x/index.json", "/"),
        ("/docs/_next/data/b1d-9x/app.json", "/docs/app/**"),
        ("/docs/_next/data/b1d-9x/app/keys.json", "/docs/app/**"),
    ] {
        let event = refused_401(addr, &sink, target).await;
        assert_eq!(event.route, route, "{target}");
    }
    // Pages without a route of their own, and what is not a data request, keep the data
    // path's route (here a GET-only public one).
    for target in [
        "/_next/data/b1d-9x/about.json",
        "/_next/data/b1d-9x/dashboard",
        "/_next/data/dashboard.json",
        "/_next/static/chunks/dashboard.json",
    ] {
        let r = raw_get(addr, target).await;
        assert_eq!(r.status, 200, "{target}: {}", r.text());
    }
    // A case variant of a guarded page is refused, as the page itself would be.
    assert_eq!(
        raw_get(addr, "/_next/data/b1d-9x/DASHBOARD/settings.json")
            .await
            .status,
        400
    );
    // Off (the default): the data path's own route.
    let addr = serve_with(Router::new().fallback(echo), build(false)).await;
    let r = raw_get(addr, "/_next/data/b1d-9x/dashboard/settings.json").await;
    assert_eq!(r.status, 200, "{}", r.text());
}

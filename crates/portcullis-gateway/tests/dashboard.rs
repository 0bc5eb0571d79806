//! The admin dashboard through the gateway process: its JSON counts what the gateway refused
//! (read back from the real SQLite audit store), it refuses other sites and rebound host
//! names, and in headless Chromium it shows offenders, writes client-chosen names as text,
//! and lifts a ban.

mod browser;
mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;

const SECRET: &str = "dashboard-test-secret-0123456789abcdef";

/// Rate limit 1/min on `/limited/**` (two 429s make a ban), GET only on `/get-only`, and
/// `/admin/**` for the role `admin`.
const TABLES: &str = "[[route]]\npath = \"/limited/**\"\nrate_limit = { requests = 1, window = \"1m\" }\n\
    [[route]]\npath = \"/get-only\"\nmethods = [\"GET\"]\n\
    [[route]]\npath = \"/admin/**\"\npreset = \"authenticated\"\nroles = [\"admin\"]\ncsrf = \"origin\"\n\
    [ban]\noffences = 2\nwithin = \"10m\"\nban_for = \"15m\"\n";

/// A gateway with an admin listener (and `server_extra`), and the admin base URL.
async fn gateway(up: &Upstream, server_extra: &str) -> (Gateway, String) {
    // Every test sets the same value, so concurrent tests agree on it.
    unsafe { std::env::set_var("PC_DASHBOARD_SECRET", SECRET) };
    let admin = free_port();
    let port = free_port();
    let extra = format!("admin_listen = \"127.0.0.1:{admin}\"\n{server_extra}");
    let text = format!(
        "{}\n[auth.jwt]\nsecret_env = \"PC_DASHBOARD_SECRET\"\n",
        config(port, up.addr, &extra, TABLES)
    );
    let gw = Gateway::start(port, &text).await;
    assert!(
        gw.wait_log("admin listening on", Duration::from_secs(2))
            .await
    );
    (gw, format!("http://127.0.0.1:{admin}"))
}

/// Refusals from 127.0.0.1: 403 (role), 405, 429 ×2 (the second places the ban, audited as
/// `banned` too), 403 (banned): six denied events. Returns the user name the forbidden token
/// carried.
async fn refusals(gw: &Gateway) -> &'static str {
    let user = "<img src=x onerror=\"window.__pwned=1\">";
    let token = hs256_token(SECRET, user, &["user"]);
    let auth = format!("Bearer {token}");
    let r = get(&gw.url("/admin/users"), &[("authorization", &auth)]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    let hc = client();
    let post = http::Request::post(gw.url("/get-only"))
        .body(full(""))
        .unwrap();
    assert_eq!(send(&hc, post).await.status, StatusCode::METHOD_NOT_ALLOWED);
    let statuses = [
        get(&gw.url("/limited/a"), &[]).await.status,
        get(&gw.url("/limited/a"), &[]).await.status,
        get(&gw.url("/limited/b"), &[]).await.status,
        get(&gw.url("/elsewhere"), &[]).await.status,
    ];
    assert_eq!(statuses.map(|s| s.as_u16()), [200, 429, 429, 403]);
    user
}

/// `/api/summary` once the audit writer has stored `denied` refusals (it writes in batches).
async fn summary_with(admin: &str, denied: u64) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = get(&format!("{admin}/api/summary?window=15m"), &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let v = r.json();
        let got: u64 = v["summary"]["by_action"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|c| c["outcome"] == "denied")
                    .map(|c| c["count"].as_u64().unwrap_or(0))
                    .sum()
            })
            .unwrap_or(0);
        if got >= denied || std::time::Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn count(v: &serde_json::Value, action: &str) -> u64 {
    v["summary"]["by_action"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["action"] == action && c["outcome"] == "denied")
        .map(|c| c["count"].as_u64().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn summary_and_events_count_what_was_refused() {
    let up = Upstream::start().await;
    let (gw, admin) = gateway(&up, "").await;
    let empty = summary_with(&admin, 0).await;
    assert_eq!(empty["summary"]["total"], 0, "{empty}");
    assert_eq!(
        empty["summary"]["denied_timeline"]
            .as_array()
            .unwrap()
            .len(),
        60
    );
    assert!(
        empty["audit_store"]
            .as_str()
            .unwrap()
            .starts_with("sqlite:"),
        "{empty}"
    );

    let user = refusals(&gw).await;
    let v = summary_with(&admin, 6).await;
    let s = &v["summary"];
    assert_eq!(s["denied"], 6, "{v}");
    assert_eq!(count(&v, "rate_limit_exceeded"), 2, "{v}");
    assert_eq!(count(&v, "method_not_allowed"), 1, "{v}");
    assert_eq!(count(&v, "forbidden"), 1, "{v}");
    // The ban placed, and the request it refused.
    assert_eq!(count(&v, "banned"), 2, "{v}");
    // The one client, with its refusals by action, and its ban.
    let o = &s["offenders"][0];
    assert_eq!(o["client_ip"], "127.0.0.1", "{v}");
    assert_eq!(o["denied"], 6, "{v}");
    assert_eq!(
        o["actions"],
        serde_json::json!([
            {"name": "banned", "count": 2},
            {"name": "rate_limit_exceeded", "count": 2},
            {"name": "forbidden", "count": 1},
            {"name": "method_not_allowed", "count": 1},
        ]),
        "{v}"
    );
    let left = o["banned_seconds_left"].as_u64().expect("banned");
    assert!((880..=900).contains(&left), "{v}");
    assert_eq!(s["offenders"].as_array().unwrap().len(), 1);
    assert_eq!(
        s["rate_limited_routes"],
        serde_json::json!([{"name": "/limited/**", "count": 2}])
    );
    assert_eq!(
        s["denied_users"],
        serde_json::json!([{"name": user, "count": 1}])
    );
    let timeline: u64 = s["denied_timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(timeline, 6, "{v}");
    // The process's counters and the bans in force.
    assert_eq!(v["counters"]["rate_limit"]["limited"], 2, "{v}");
    assert_eq!(v["bans"][0]["client"], "127.0.0.1", "{v}");

    // The log itself, newest first, filtered as the CLI filters.
    let events = |q: &str| {
        let url = format!("{admin}/api/events?{q}");
        async move { get(&url, &[]).await }
    };
    let r = events("action=rate_limit_exceeded").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let list = r.json()["events"].as_array().unwrap().clone();
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[0]["path"], "/limited/b", "newest first: {list:?}");
    assert_eq!(list[1]["path"], "/limited/a");
    assert!(list[0]["ts_ms"].as_u64() >= list[1]["ts_ms"].as_u64());
    let r = events("ip=%3A%3Affff%3A127.0.0.1&limit=2").await;
    assert_eq!(r.json()["events"].as_array().unwrap().len(), 2);
    assert_eq!(r.json()["events"][0]["action"], "banned");
    let r = events(&format!("user={}", urlencode(user))).await;
    assert_eq!(r.json()["events"][0]["action"], "forbidden");
    let r = events("route=%2Fget-only").await;
    assert_eq!(r.json()["events"][0]["status"], 405);
    // Nothing secret reaches the page: the forbidden request's token is nowhere.
    let all = events("").await.text();
    assert!(!all.contains("Bearer") && !all.contains("eyJ"), "{all}");
    for (q, needle) in [
        ("action=forbiden", "unknown action"),
        ("ip=10.0.0.0%2F8", "range"),
        ("window=91d", "90 days"),
        ("window=soon", "window"),
        ("limit=0", "limit"),
        ("limit=5000", "limit"),
    ] {
        let r = events(q).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}: {}", r.text());
        assert!(r.json()["reason"].as_str().unwrap().contains(needle), "{q}");
    }
    let r = events("action=").await;
    assert_eq!(r.status, StatusCode::OK, "an empty filter is no filter");
    assert_eq!(r.json()["events"].as_array().unwrap().len(), 6);
    let r = get(&format!("{admin}/api/actions"), &[]).await;
    assert!(
        r.json()["actions"]
            .as_array()
            .unwrap()
            .contains(&"csrf_validation_failed".into())
    );
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Another site's page, or a name rebound to this machine, reads nothing and lifts nothing;
/// the names in `admin_hosts` are served.
#[tokio::test(flavor = "multi_thread")]
async fn other_sites_and_rebound_names_are_refused() {
    let up = Upstream::start().await;
    let (_gw, admin) = gateway(&up, "admin_hosts = [\"gw-1.internal\"]").await;
    let port = admin.rsplit(':').next().unwrap().to_string();
    let page = get(&format!("{admin}/"), &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.starts_with("default-src 'none'; script-src 'self';"),
        "{csp}"
    );
    assert_eq!(page.headers["x-frame-options"], "DENY");
    assert_eq!(page.headers["x-content-type-options"], "nosniff");
    assert_eq!(page.headers["cache-control"], "no-store");
    assert!(
        page.text()
            .contains("<script src=\"/dashboard.js\" defer></script>")
    );
    let js = get(&format!("{admin}/dashboard.js"), &[]).await;
    assert_eq!(js.headers["content-type"], "text/javascript; charset=utf-8");
    assert!(
        !js.text().contains("innerHTML"),
        "values are written as text"
    );

    let own_origin = format!("http://127.0.0.1:{port}");
    let rebound = format!("rebound.evil.example:{port}");
    let internal = format!("GW-1.internal:{port}");
    let hc = client();
    for path in ["/", "/api/summary", "/api/events", "/bans", "/dashboard.js"] {
        for (headers, want) in [
            (vec![("sec-fetch-site", "cross-site")], 403),
            (vec![("sec-fetch-site", "same-site")], 403),
            (vec![("origin", "http://localhost:3000")], 403),
            (vec![("origin", "null")], 403),
            (vec![("host", rebound.as_str())], 403),
            (vec![("host", internal.as_str())], 200),
            (
                vec![
                    ("sec-fetch-site", "same-origin"),
                    ("origin", own_origin.as_str()),
                ],
                200,
            ),
            (vec![("sec-fetch-site", "none")], 200),
        ] {
            let r = get(&format!("{admin}{path}"), &headers).await;
            assert_eq!(r.status.as_u16(), want, "{path} {headers:?}: {}", r.text());
        }
    }
    // Lifting: refused from another site, allowed from the dashboard's own origin.
    for (headers, want) in [
        (vec![("origin", "https://evil.example")], 403),
        (vec![("sec-fetch-site", "cross-site")], 403),
        (vec![("host", rebound.as_str())], 403),
        (
            vec![
                ("sec-fetch-site", "same-origin"),
                ("origin", own_origin.as_str()),
            ],
            200,
        ),
    ] {
        let mut req = http::Request::delete(format!("{admin}/bans?client=203.0.113.9"));
        for (k, v) in &headers {
            req = req.header(*k, *v);
        }
        let r = send(&hc, req.body(full("")).unwrap()).await;
        assert_eq!(r.status.as_u16(), want, "{headers:?}: {}", r.text());
    }
    // Unknown paths stay 404 and other methods 405.
    assert_eq!(get(&format!("{admin}/api/nope"), &[]).await.status, 404);
    let post = http::Request::post(format!("{admin}/api/summary"))
        .body(full(""))
        .unwrap();
    assert_eq!(send(&hc, post).await.status, 405);
}

/// In Chromium the page loads under its CSP without a violation, shows the offender, its ban
/// and the refused user's name as text (a name chosen by a client is never markup), and its
/// Lift button lifts the ban.
#[tokio::test(flavor = "multi_thread")]
async fn in_chromium_the_dashboard_shows_offenders_and_lifts_a_ban() {
    let up = Upstream::start().await;
    let (gw, admin) = gateway(&up, "").await;
    let user = refusals(&gw).await;
    summary_with(&admin, 6).await;
    let url = format!("{admin}/");
    let report = tokio::task::spawn_blocking(move || {
        browser::probe(&serde_json::json!({
            "url": url,
            "waitFor": "document.body.dataset.loaded === 'true' && document.querySelectorAll('#events tbody tr').length === 6",
            "read": ["#offenders tbody", "#users tbody", "#bans tbody", "#routes tbody", "#c-denied", "#c-bans", "#events tbody"],
            "click": "#bans button",
            "acceptDialogs": true,
            "waitAfter": "document.querySelector('#bans tbody').textContent.includes('Nobody is banned')",
        }))
    })
    .await
    .expect("the probe thread");
    assert_eq!(report["status"], 200, "{report}");
    assert_eq!(report["title"], "Portcullis admin");
    assert_eq!(report["violations"], serde_json::json!([]), "{report}");
    let console: Vec<&str> = report["console"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c.as_str())
        .filter(|c| c.starts_with("error") || c.starts_with("pageerror"))
        .collect();
    assert!(console.is_empty(), "{console:?}");
    let before = |sel: &str| report["before"][sel].as_str().unwrap_or("").to_string();
    let after = |sel: &str| report["after"][sel].as_str().unwrap_or("").to_string();
    assert!(before("#offenders tbody").contains("127.0.0.1"), "{report}");
    assert!(before("#offenders tbody").contains("banned"), "{report}");
    assert!(before("#bans tbody").contains("127.0.0.1"), "{report}");
    assert_eq!(before("#c-denied"), "6");
    assert_eq!(before("#c-bans"), "1");
    assert!(before("#routes tbody").contains("/limited/**"));
    // The name is shown as the text it is.
    assert!(before("#users tbody").contains(user), "{report}");
    assert!(before("#events tbody").contains(user), "{report}");
    // Lifted: from the page, and in the gateway.
    assert!(
        after("#bans tbody").contains("Nobody is banned"),
        "{report}"
    );
    assert_eq!(
        get(&format!("{admin}/bans"), &[]).await.json()["bans"],
        serde_json::json!([])
    );
    assert_eq!(get(&gw.url("/elsewhere"), &[]).await.status, 200);
    // The page's own requests were not audited as refusals.
    let v = summary_with(&admin, 6).await;
    assert_eq!(v["summary"]["offenders"][0]["denied"], 6, "{v}");
}

/// With `admin_token_env`, everything but the health checks asks for the token, as a bearer
/// token or a Basic password (browsers prompt for it); a wrong one is 401 with a challenge.
#[tokio::test(flavor = "multi_thread")]
async fn an_admin_token_guards_everything_but_the_health_checks() {
    const TOKEN: &str = "dashboard-admin-token-0123456789abcdef";
    unsafe { std::env::set_var("PC_DASHBOARD_ADMIN_TOKEN", TOKEN) };
    let up = Upstream::start().await;
    let (_gw, admin) = gateway(&up, "admin_token_env = \"PC_DASHBOARD_ADMIN_TOKEN\"").await;
    let b64 = |s: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    let bearer = format!("Bearer {TOKEN}");
    let basic = format!("Basic {}", b64(&format!("ops:{TOKEN}")));
    let wrong_basic = format!("Basic {}", b64("ops:guess"));
    let no_colon = format!("Basic {}", b64(TOKEN));
    let truncated = format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]);
    for path in ["/", "/api/summary", "/api/events", "/metrics", "/bans"] {
        let url = format!("{admin}{path}");
        for auth in [
            None,
            Some("Bearer"),
            Some(wrong_basic.as_str()),
            Some(no_colon.as_str()),
            Some(truncated.as_str()),
        ] {
            let headers: Vec<(&str, &str)> =
                auth.map(|a| ("authorization", a)).into_iter().collect();
            let r = get(&url, &headers).await;
            assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path} {auth:?}");
            assert_eq!(
                r.headers["www-authenticate"],
                "Basic realm=\"portcullis admin\", charset=\"UTF-8\""
            );
            assert!(!r.text().contains(TOKEN));
        }
        for auth in [&bearer, &basic] {
            let r = get(&url, &[("authorization", auth)]).await;
            assert_eq!(r.status, StatusCode::OK, "{path} {auth}: {}", r.text());
        }
    }
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            get(&format!("{admin}{path}"), &[]).await.status,
            StatusCode::OK
        );
    }
    // Lifting a ban needs it too.
    let hc = client();
    let delete = |auth: Option<&str>| {
        let mut req = http::Request::delete(format!("{admin}/bans?client=203.0.113.9"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        send(&hc, req.body(full("")).unwrap())
    };
    assert_eq!(delete(None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(delete(Some(&bearer)).await.status, StatusCode::OK);
}

/// An audit log sent to stdout cannot be read back: the dashboard says so (and still shows
/// the counters and bans) instead of failing.
#[tokio::test(flavor = "multi_thread")]
async fn a_log_that_cannot_be_read_back_is_named_not_failed() {
    let up = Upstream::start().await;
    let admin = free_port();
    let port = free_port();
    let text = config(
        port,
        up.addr,
        &format!("admin_listen = \"127.0.0.1:{admin}\""),
        "[storage]\naudit = \"stdout\"\n",
    );
    let gw = Gateway::start(port, &text).await;
    assert!(
        gw.wait_log("admin listening on", Duration::from_secs(2))
            .await
    );
    let admin = format!("http://127.0.0.1:{admin}");
    let v = get(&format!("{admin}/api/summary"), &[]).await.json();
    assert_eq!(v["summary"], serde_json::Value::Null, "{v}");
    assert!(
        v["summary_error"]
            .as_str()
            .unwrap()
            .contains("not supported by this audit store"),
        "{v}"
    );
    assert_eq!(v["counters"]["rate_limit"]["limited"], 0, "{v}");
    let r = get(&format!("{admin}/api/events"), &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["status"], "unreadable", "{}", r.text());
    assert_eq!(r.json()["events"], serde_json::json!([]));
}

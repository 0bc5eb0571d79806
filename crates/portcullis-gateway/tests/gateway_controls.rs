//! Controls through the gateway process, configured from TOML: roles (401 vs 403), the
//! principal reaching the upstream, API keys, and the seed's rate-limit check.

mod common;

use std::time::Duration;

use common::*;

const SECRET: &str = "gateway-controls-test-secret-0123456789";

fn token(sub: &str, roles: &[&str]) -> String {
    hs256_token(SECRET, sub, roles)
}

async fn gateway(routes: &str, extra_top: &str) -> (Gateway, Upstream) {
    // Every test sets the same value, so concurrent tests agree on it.
    unsafe { std::env::set_var("PC_GW_CONTROLS_SECRET", SECRET) };
    let upstream = Upstream::start().await;
    let port = free_port();
    let text = format!(
        "{}\n[auth.jwt]\nsecret_env = \"PC_GW_CONTROLS_SECRET\"\n{extra_top}\n",
        config(port, upstream.addr, "", routes)
    );
    (Gateway::start(port, &text).await, upstream)
}

const ROUTES: &str = "[[route]]\npath = \"/api/admin/**\"\npreset = \"authenticated\"\n\
    roles = [\"admin\"]\ncsrf = \"origin\"\n\
    [[route]]\npath = \"/api/user/**\"\npreset = \"authenticated\"\ncsrf = \"origin\"\n";

#[tokio::test]
async fn roles_answer_401_then_403_then_200() {
    let (gw, up) = gateway(ROUTES, "").await;
    let r = get(&gw.url("/api/user/notes"), &[]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.headers["www-authenticate"], "Bearer");
    assert_eq!(r.json()["code"], "unauthorized");

    let r = get(
        &gw.url("/api/user/notes"),
        &[("authorization", "Bearer not.a.token")],
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.headers["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );

    let alice = format!("Bearer {}", token("alice", &["user"]));
    let r = get(&gw.url("/api/user/notes"), &[("authorization", &alice)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = up.last();
    assert_eq!(seen.headers["x-portcullis-user"], "alice");
    assert_eq!(seen.headers["x-portcullis-roles"], "user");
    assert!(
        !seen.headers.contains_key("authorization")
            || seen.headers["authorization"] == alice.as_str()
    );

    let r = get(&gw.url("/api/admin/users"), &[("authorization", &alice)]).await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["code"], "forbidden");

    let admin = format!("Bearer {}", token("root", &["admin"]));
    let r = get(&gw.url("/api/admin/users"), &[("authorization", &admin)]).await;
    assert_eq!(r.status, 200);

    // The cookie the seed used works too, and forged identity headers never pass.
    let cookie = format!("authToken={}", token("alice", &["user"]));
    let r = get(
        &gw.url("/api/user/notes"),
        &[
            ("cookie", &cookie),
            ("x-portcullis-user", "root"),
            ("x-portcullis-roles", "admin"),
        ],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(up.last().headers["x-portcullis-user"], "alice");
    assert_eq!(up.last().headers["x-portcullis-roles"], "user");

    // A forged identity header alone does not authenticate.
    let r = get(
        &gw.url("/api/admin/users"),
        &[
            ("x-portcullis-user", "root"),
            ("x-portcullis-roles", "admin"),
        ],
    )
    .await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn api_keys_from_the_config_authenticate() {
    let key = "pk_gateway-controls-test-key";
    let hash = portcullis::auth::api_key::hash_key(key);
    let keys =
        format!("[[auth.api_keys]]\nid = \"ci-bot\"\nhash = \"{hash}\"\nroles = [\"admin\"]\n");
    let (gw, up) = gateway(ROUTES, &keys).await;
    let r = get(&gw.url("/api/admin/users"), &[("x-api-key", key)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.last().headers["x-portcullis-user"], "ci-bot");
    let r = get(
        &gw.url("/api/admin/users"),
        &[("authorization", &format!("ApiKey {key}"))],
    )
    .await;
    assert_eq!(r.status, 200);
    let r = get(&gw.url("/api/admin/users"), &[("x-api-key", "pk_wrong")]).await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn seed_check_100_requests_give_60_then_429_through_the_gateway() {
    let (gw, up) = gateway(
        "[[route]]\npath = \"/api/public-data\"\npreset = \"public\"\n",
        "",
    )
    .await;
    let client = client();
    let mut ok = 0;
    let mut first_429 = None;
    for _ in 0..100 {
        let req = http::Request::get(gw.url("/api/public-data?x=1"))
            .body(full(""))
            .unwrap();
        let r = send(&client, req).await;
        match r.status.as_u16() {
            200 => ok += 1,
            429 => {
                if first_429.is_none() {
                    first_429 = Some(r);
                }
            }
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(ok, 60);
    assert_eq!(up.hits(), 60, "refused requests never reach the upstream");
    let r = first_429.expect("429s after the limit");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    // At most 61 s: a burst taken at the very start of a minute fits again a sixtieth of a
    // minute after that minute ends (the sliding window weighs the previous minute's 60).
    assert!((1..=61).contains(&retry), "Retry-After {retry}");
    assert_eq!(r.json()["code"], "rate_limited");
    assert_eq!(r.headers["ratelimit-policy"], "\"default\";q=60;w=60");
}

#[tokio::test]
async fn denials_reach_the_audit_log_and_shutdown_flushes_it() {
    let dir = temp_dir();
    let db = dir.join("audit.db");
    let (mut gw, _up) = gateway(
        ROUTES,
        &format!("[storage]\naudit = \"sqlite://{}\"\n", db.display()),
    )
    .await;
    let r = get(
        &gw.url("/api/user/notes"),
        &[("authorization", "Bearer forged.token.value")],
    )
    .await;
    assert_eq!(r.status, 401);
    let request_id = r.headers["x-request-id"].to_str().unwrap().to_string();
    let req = http::Request::delete(gw.url("/api/public"))
        .body(full(""))
        .unwrap();
    let _ = send(&client(), req).await;
    gw.signal("-TERM");
    let status = gw.wait_exit(Duration::from_secs(10)).await;
    assert!(status.success(), "{}", gw.logs());

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["audit", "query", "--format", "json", "--store"])
        .arg(format!("sqlite://{}", db.display()))
        .output()
        .expect("audit query runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("unauthorized_access"), "{text}");
    assert!(text.contains(&request_id), "{text}");
    assert!(
        !text.contains("forged.token.value"),
        "no token in the audit log"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn csrf_through_the_gateway_token_origin_and_client_helper() {
    let (gw, up) = gateway(
        "[[route]]\npath = \"/api/user/**\"\npreset = \"authenticated\"\n",
        "[csrf]\nsecret_env = \"PC_GW_CONTROLS_SECRET\"\ninsecure_dev = true\n",
    )
    .await;
    let alice = format!("Bearer {}", token("alice", &["user"]));
    let post = |headers: Vec<(String, String)>| {
        let mut req = http::Request::post(gw.url("/api/user/notes"));
        for (k, v) in headers {
            req = req.header(k, v);
        }
        req.body(full("{}")).unwrap()
    };
    let client = client();
    let auth = ("authorization".to_string(), alice.clone());

    // No token: refused, and the upstream never sees it.
    let r = send(&client, post(vec![auth.clone()])).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["code"], "csrf_token_invalid");
    assert_eq!(up.hits(), 0);

    // A GET issues the token cookie; echoed in the header it passes.
    let r = get(&gw.url("/api/user/notes"), &[("authorization", &alice)]).await;
    assert_eq!(r.status, 200);
    let cookie = r
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("csrf="))
        .expect("a csrf cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let token_value = cookie.trim_start_matches("csrf=").to_string();
    let r = send(
        &client,
        post(vec![
            auth.clone(),
            ("cookie".into(), cookie.clone()),
            ("x-csrf-token".into(), token_value.clone()),
        ]),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());

    // A cross-site browser request is refused on its origin, token or not.
    let r = send(
        &client,
        post(vec![
            auth,
            ("cookie".into(), cookie),
            ("x-csrf-token".into(), token_value),
            ("sec-fetch-site".into(), "cross-site".into()),
            ("origin".into(), "https://evil.example".into()),
        ]),
    )
    .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["code"], "csrf_origin_mismatch");

    // The client helper is served by the gateway itself.
    let r = get(&gw.url("/.well-known/portcullis/csrf.js"), &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("csrfFetch"));
}

/// An authenticated answer is `no-store` whatever the application said (a `public` answer
/// for alice must not be served to bob by a CDN); an anonymous one keeps the application's.
#[tokio::test]
async fn authenticated_answers_are_no_store_even_when_the_upstream_says_public() {
    let (gw, _up) = gateway(ROUTES, "").await;
    let alice = format!("Bearer {}", token("alice", &["user"]));
    let r = get(&gw.url("/api/user/cached"), &[("authorization", &alice)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let values: Vec<_> = r.headers.get_all("cache-control").iter().collect();
    assert_eq!(values, ["no-store"]);
    let r = get(&gw.url("/cached"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers["cache-control"],
        "public, max-age=3600, s-maxage=600"
    );
}

/// The upstream gets the request's one id — the one the client's answer and the audit log
/// carry — so the application's logs join them: generated when the client sent none, and
/// never the client's extra copies. Bodiless requests (the gateway's own reader) and bodies
/// (hyper's) alike.
#[tokio::test]
async fn the_upstream_gets_the_request_id_the_client_was_answered_with() {
    let (gw, up) = gateway(ROUTES, "").await;
    let ids = |seen: &Seen| -> Vec<String> {
        seen.headers
            .get_all("x-request-id")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    };
    let r = get(&gw.url("/plain"), &[]).await;
    let answered = r.headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(ids(&up.last()), [answered]);

    let r = get(
        &gw.url("/plain"),
        &[("x-request-id", "trace-42"), ("x-request-id", "trace-43")],
    )
    .await;
    assert_eq!(r.headers["x-request-id"], "trace-42");
    assert_eq!(ids(&up.last()), ["trace-42"]);

    // The client's address as the gateway resolved it travels too; a client's copy never.
    let seen = up.last();
    let client_ips: Vec<_> = seen
        .headers
        .get_all("x-portcullis-client-ip")
        .iter()
        .collect();
    assert_eq!(client_ips, ["127.0.0.1"]);
    get(&gw.url("/plain"), &[("x-portcullis-client-ip", "6.6.6.6")]).await;
    let client_ips: Vec<_> = up
        .last()
        .headers
        .get_all("x-portcullis-client-ip")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(client_ips, ["127.0.0.1"]);

    let r = get(&gw.url("/plain"), &[("x-request-id", "<script>")]).await;
    let answered = r.headers["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(answered, "<script>");
    assert_eq!(ids(&up.last()), [answered]);

    let req = http::Request::post(gw.url("/echo"))
        .header("x-request-id", "trace-44")
        .header("content-type", "text/plain")
        .body(full("a body"))
        .unwrap();
    let r = send(&client(), req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(ids(&up.last()), ["trace-44"]);
    assert_eq!(up.last().headers["x-portcullis-client-ip"], "127.0.0.1");
}

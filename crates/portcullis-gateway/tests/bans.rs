//! The ban list through the gateway process: `[ban]` from TOML, repeat offenders refused on
//! every route with 403 `banned`, and the audit rows that say so.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn repeated_path_attacks_get_the_client_banned_and_audited() {
    let up = Upstream::start().await;
    let dir = temp_dir();
    let log = dir.join("audit.jsonl");
    let port = free_port();
    let mut gw = Gateway::start(
        port,
        &format!(
            "{}[storage]\naudit = \"jsonl://{}\"\n\
             [ban]\noffences = 3\nwithin = \"1m\"\nban_for = \"30s\"\n",
            config(port, up.addr, "", ""),
            log.display()
        ),
    )
    .await;
    let r = get(&gw.url("/notes"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    for _ in 0..3 {
        let r = get(&gw.url("/a%2fb"), &[]).await;
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(r.json()["code"], "invalid_path");
    }
    let r = get(&gw.url("/notes"), &[]).await;
    assert_eq!(r.status, 403, "{}", r.text());
    let body = r.json();
    assert_eq!(body["code"], "banned");
    assert!(body["error"].is_string());
    let id = r.headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(body["request_id"], id.as_str());
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    gw.signal("-TERM");
    assert!(gw.wait_exit(Duration::from_secs(10)).await.success());

    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let events: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let banned: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["action"] == "banned" && e["outcome"] == "denied")
        .collect();
    assert_eq!(banned.len(), 2, "{text}");
    // The third offence began the ban ...
    assert_eq!(banned[0]["status"], 400, "{text}");
    assert_eq!(banned[0]["client_ip"], "127.0.0.1");
    assert_eq!(banned[0]["metadata"]["ban_for"], 30);
    assert_eq!(banned[0]["metadata"]["offences"], 3);
    assert_eq!(banned[0]["metadata"]["offence"], "invalid_path");
    // ... and the next request was refused for it.
    assert_eq!(banned[1]["status"], 403, "{text}");
    assert_eq!(banned[1]["path"], "/notes");
    assert_eq!(banned[1]["request_id"], id.as_str());
    assert_eq!(banned[1]["metadata"]["code"], "banned");
}

#[tokio::test]
async fn ban_settings_are_checked() {
    let up = Upstream::start().await;
    let base = config(free_port(), up.addr, "", "");
    for (ban, key) in [
        ("within = \"0s\"", "ban.within"),
        ("ban_for = \"0s\"", "ban.ban_for"),
        ("offences = -1", "ban.offences"),
        ("after = 3", "ban.after"),
    ] {
        let text = format!("{base}[ban]\n{ban}\n");
        let err = portcullis_gateway::config::GatewayConfig::from_str(&text, "p.toml")
            .expect_err(ban)
            .to_string();
        assert!(err.contains(key), "{ban}: {err}");
    }
    let off = format!("{base}[ban]\noffences = 0\n");
    let config = portcullis_gateway::config::GatewayConfig::from_str(&off, "p.toml").unwrap();
    assert_eq!(config.ban.offences, 0);
}

/// Off unless asked for: an address can be many people, so a flood of refusals from one
/// (here 150 path attacks, as an attack table sends) bans no one by default.
#[tokio::test]
async fn bans_are_off_unless_configured() {
    let up = Upstream::start().await;
    let port = free_port();
    let gw = Gateway::start(port, &config(port, up.addr, "", "")).await;
    for _ in 0..150 {
        assert_eq!(get(&gw.url("/a%2fb"), &[]).await.status, 400);
    }
    let r = get(&gw.url("/notes"), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

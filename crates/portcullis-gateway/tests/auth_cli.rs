//! `portcullis token` and `portcullis apikey new`, checked against the authenticators the same
//! config builds.

use std::process::Command;

use portcullis_gateway::config::{GatewayConfig, Purpose};

const SECRET: &str = "0123456789abcdef0123456789abcdef-test-only";

fn temp_config(body: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut rnd = [0u8; 8];
    getrandom::fill(&mut rnd).expect("random");
    let dir = std::env::temp_dir().join(format!(
        "pc-auth-cli-{}",
        rnd.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("portcullis.toml");
    std::fs::write(&file, body).expect("write config");
    (dir, file)
}

const CONFIG: &str = "[server]\nupstream = \"http://127.0.0.1:9\"\n\
    [auth.jwt]\nsecret_env = \"PC_TEST_JWT_SECRET\"\n\
    [csrf]\nsecret_env = \"PC_TEST_JWT_SECRET\"\n\
    [[route]]\npath = \"/api/admin/**\"\npreset = \"authenticated\"\nroles = [\"admin\"]\n";

/// `portcullis token ARGS --config FILE` with the secret set: the token it prints.
fn mint(file: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("token")
        .args(args)
        .arg("--config")
        .arg(file)
        .env("PC_TEST_JWT_SECRET", SECRET)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// `token` verified by the authenticator the config at `file` builds.
async fn verify(file: &std::path::Path, token: &str) -> portcullis::Principal {
    unsafe { std::env::set_var("PC_TEST_JWT_SECRET", SECRET) };
    let config = GatewayConfig::load(file, Purpose::Tool).expect("valid config");
    let jwt =
        portcullis_gateway::auth::jwt_authenticator(config.auth.jwt.as_ref().unwrap(), "authToken")
            .expect("authenticator");
    jwt.verify(token).await.expect("the minted token verifies")
}

#[tokio::test]
async fn minted_tokens_verify_with_the_configured_authenticator() {
    let (dir, file) = temp_config(CONFIG);
    let token = mint(
        &file,
        &[
            "--sub", "alice", "--role", "admin", "--role", "user", "--ttl", "1h",
        ],
    );
    assert_eq!(token.split('.').count(), 3);
    assert!(!token.contains(SECRET));
    let p = verify(&file, &token).await;
    assert_eq!(p.id, "alice");
    assert!(p.has_role("admin") && p.has_role("user"));
    let _ = std::fs::remove_dir_all(dir);
}

/// `--role` goes where `[auth.jwt] roles_claim` tells the verifier to read roles: nested for
/// Keycloak's `realm_access.roles`, under the whole name for a URL-like claim.
#[tokio::test]
async fn minted_roles_go_where_roles_claim_points() {
    for claim in ["realm_access.roles", "https://example.com/roles"] {
        let (dir, file) = temp_config(&CONFIG.replace(
            "[auth.jwt]\n",
            &format!("[auth.jwt]\nroles_claim = {claim:?}\n"),
        ));
        let token = mint(&file, &["--sub", "bob", "--role", "admin"]);
        let p = verify(&file, &token).await;
        assert!(p.has_role("admin"), "{claim}: {:?}", p.roles);
        use base64::Engine;
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap();
        let claims: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        let roles = if claim.contains('/') {
            &claims[claim]
        } else {
            &claims["realm_access"]["roles"]
        };
        assert_eq!(roles, &serde_json::json!(["admin"]), "{claims}");
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// `token` signs with the HMAC algorithm the verifier allows: the first of `[auth.jwt]
/// algorithms` (HS384 or HS512 when those are all it takes), never a fixed HS256.
#[tokio::test]
async fn minted_tokens_use_the_configured_hmac_algorithm() {
    const LONG: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    for (algorithms, alg) in [
        ("[\"HS512\"]", "HS512"),
        ("[\"HS384\", \"HS512\"]", "HS384"),
        ("[\"HS256\"]", "HS256"),
    ] {
        // A variable of its own: the other tests set PC_TEST_JWT_SECRET to a shorter one.
        let config = CONFIG
            .replace("\"PC_TEST_JWT_SECRET\"", "\"PC_TEST_JWT_SECRET_LONG\"")
            .replace(
                "[auth.jwt]\n",
                &format!("[auth.jwt]\nalgorithms = {algorithms}\n"),
            );
        let (dir, file) = temp_config(&config);
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["token", "--sub", "alice", "--role", "admin", "--config"])
            .arg(&file)
            .env("PC_TEST_JWT_SECRET_LONG", LONG)
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
        use base64::Engine;
        let header = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap();
        let header: serde_json::Value = serde_json::from_slice(&header).unwrap();
        assert_eq!(header["alg"], alg, "{algorithms}");
        unsafe { std::env::set_var("PC_TEST_JWT_SECRET_LONG", LONG) };
        let config = GatewayConfig::load(&file, Purpose::Tool).expect("valid config");
        let jwt = portcullis_gateway::auth::jwt_authenticator(
            config.auth.jwt.as_ref().unwrap(),
            "authToken",
        )
        .expect("authenticator");
        let p = jwt.verify(&token).await.expect("the minted token verifies");
        assert!(p.has_role("admin"), "{algorithms}");
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A subject or role the gateway would refuse is never minted.
#[test]
fn token_refuses_subjects_and_roles_the_gateway_would_refuse() {
    let (dir, file) = temp_config(CONFIG);
    for args in [
        ["--sub", "", "--role", "user"],
        ["--sub", "a\nb", "--role", "user"],
        ["--sub", "alice", "--role", "user,admin"],
        ["--sub", "alice", "--role", ""],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("token")
            .args(args)
            .arg("--config")
            .arg(&file)
            .env("PC_TEST_JWT_SECRET", SECRET)
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--sub") || err.contains("--role"), "{err}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn token_without_a_secret_is_refused_with_exit_2() {
    let (dir, file) = temp_config(CONFIG);
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["token", "--sub", "alice", "--config"])
        .arg(&file)
        .env_remove("PC_TEST_JWT_SECRET")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("auth.jwt.secret_env"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_new_api_key_is_printed_once_and_its_entry_holds_only_the_hash() {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["apikey", "new", "--id", "ci-bot", "--role", "deploy"])
        .output()
        .expect("runs");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let key = text
        .lines()
        .find_map(|l| l.strip_prefix("API key (shown once; store it now): "))
        .expect("the key line")
        .to_string();
    let entry: String = text
        .lines()
        .skip_while(|l| !l.starts_with("[[auth.api_keys]]"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        !entry.contains(&key),
        "the entry must not hold the key itself"
    );
    let (dir, file) = temp_config(&format!(
        "[server]\nupstream = \"http://127.0.0.1:9\"\n{entry}"
    ));
    let config = GatewayConfig::load(&file, Purpose::Tool).expect("the pasted entry is valid");
    let auth = portcullis_gateway::auth::api_key_authenticator(&config.auth.api_keys).unwrap();
    let p = auth.verify(&key).expect("the printed key verifies");
    assert_eq!(p.id, "ci-bot");
    assert!(p.has_role("deploy"));
    assert!(auth.verify("pk_not-the-key").is_err());
    let _ = std::fs::remove_dir_all(dir);
}

/// An id or role `check-config` would refuse in the printed entry is refused at once with
/// exit 2, and no key is printed.
#[test]
fn apikey_new_refuses_ids_and_roles_the_config_would_refuse() {
    for args in [
        ["--id", "ci-bot", "--role", "a,b"],
        ["--id", "ci-bot", "--role", ""],
        ["--id", "ci-bot", "--role", "a\u{1b}[31m"],
        ["--id", "ci-bot", "--role", "domain admins"],
        ["--id", "", "--role", "deploy"],
        ["--id", "ci bot", "--role", "deploy"],
        ["--id", "ci\"bot", "--role", "deploy"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["apikey", "new"])
            .args(args)
            .output()
            .expect("runs");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let flag = if args[1] == "ci-bot" {
            "--role"
        } else {
            "--id"
        };
        assert!(err.contains(flag), "{args:?}: {err}");
    }
}

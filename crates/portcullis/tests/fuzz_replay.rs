//! The fuzz targets' checks (`fuzz/src/checks.rs`) over their seed corpus and mutations of
//! it, on stable: a broken invariant fails CI without a nightly toolchain or `cargo fuzz`.

#[allow(dead_code)]
#[path = "../../../fuzz/src/checks.rs"]
mod checks;
#[path = "../../../fuzz/src/replay.rs"]
mod replay;

#[test]
fn canonical_path() {
    let ran = replay::replay("canonical_path", checks::canonical_path, 400);
    assert!(ran > 1000, "{ran}");
}

#[test]
fn request_through_the_whole_layer() {
    let ran = replay::replay("request", checks::request, 200);
    assert!(ran > 1000, "{ran}");
}

#[test]
fn nonce_html() {
    let ran = replay::replay("nonce_html", checks::nonce_html, 100);
    assert!(ran > 500, "{ran}");
}

#[test]
fn csp() {
    let ran = replay::replay("csp", checks::csp, 200);
    assert!(ran > 1000, "{ran}");
}

/// The corpus's tokens are what it claims: the checks' secret signs them, they verify, and
/// the roles are those named (so the request seeds reach the admin handler at all).
#[test]
fn the_seed_tokens_are_valid() {
    let seed = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../fuzz/corpus/request/admin_admin_token"),
    )
    .expect("the admin seed");
    let text = String::from_utf8_lossy(&seed);
    let token = text
        .lines()
        .find_map(|l| l.strip_prefix("Authorization: Bearer "))
        .expect("a bearer token");
    let fresh = checks::seed_token("root", &["admin", "user"]);
    // Same header and algorithm as a token minted now with the same secret.
    assert_eq!(token.split('.').next(), fresh.split('.').next());
}

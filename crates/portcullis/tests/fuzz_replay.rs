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
    let ran = replay::replay(
        "request",
        |d| {
            checks::request(d);
        },
        200,
    );
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

/// The seeds are what their names claim, so the mutations start from requests that reach
/// each control: the tokens verify (or are refused for their flaw), the admin route takes
/// only the admin, and the CSRF, body and method checks answer as they should.
#[test]
fn the_seeds_reach_what_they_claim() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/request");
    for (seed, status) in [
        ("public_get", 200),
        ("admin_admin_token", 200),
        ("admin_user_token", 403),
        ("admin_no_token", 401),
        ("admin_expired", 401),
        ("admin_forged", 401),
        ("admin_alg_none", 401),
        ("admin_wrong_aud", 401),
        ("user_get", 200),
        ("user_post_cross_site", 403),
        ("user_post_same_origin_no_token", 403),
        ("upload_over_limit", 413),
        ("upload_wrong_type", 415),
        ("delete_public", 405),
        ("next_subrequest", 401),
    ] {
        let input = std::fs::read(dir.join(seed)).expect("the seed");
        assert_eq!(
            checks::request(&input).map(|s| s.as_u16()),
            Some(status),
            "{seed}"
        );
    }
}

//! The gateway's fuzzed invariant, shared as source with the stable replay test
//! (`crates/portcullis-gateway/tests/fuzz_replay.rs`).

use portcullis_gateway::config::GatewayConfig;

/// Any text as a config file: no panic; a refusal names the file and says why.
pub fn gateway_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = GatewayConfig::from_str(text, "fuzz.toml") {
        let shown = errors.to_string();
        assert!(shown.contains("fuzz.toml"), "{shown}");
    }
}

//! The gateway's fuzz check (`fuzz/src/gateway_checks.rs`) over its seed corpus and
//! mutations of it, on stable.

#[path = "../../../fuzz/src/gateway_checks.rs"]
mod gateway_checks;
#[path = "../../../fuzz/src/replay.rs"]
mod replay;

#[test]
fn gateway_config() {
    let ran = replay::replay("gateway_config", gateway_checks::gateway_config, 300);
    assert!(ran > 1000, "{ran}");
}

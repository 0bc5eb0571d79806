//! The checks behind the fuzz targets in `fuzz_targets/`. The same source files run, on
//! stable, in the ordinary test suite (`crates/*/tests/fuzz_replay.rs`).

pub mod checks;
pub mod gateway_checks;

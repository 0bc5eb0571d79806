//! The `portcullis` gateway: the library's controls in front of any HTTP application,
//! configured by one TOML file.
//!
//! The binary (`src/main.rs`) is a thin command line over this crate; everything a test or
//! another tool would also want lives here.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod auth;
pub mod config;
pub mod demo;
pub mod jwks_https;
pub mod proxy;
pub mod reload;
pub mod serve;
pub mod server;
pub mod tls;

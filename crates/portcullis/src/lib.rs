//! # Portcullis
//!
//! The security layer web APIs keep hand-writing, done once: canonical routing, header
//! hygiene, client addresses behind proxies, method and body limits, security headers with
//! CSP nonces, CORS, authentication, roles, rate limits, CSRF and audit — as tower layers for
//! axum, hyper or tonic.
//!
//! Each control works alone; [`SecurityLayer`] composes them in the fixed order documented in
//! [`layer`].
//!
//! ```
//! use axum::{Router, routing::{get, post}};
//! use portcullis::{SecurityLayer, Policy, Preset};
//!
//! let security = SecurityLayer::builder()
//!     .default_policy(Preset::Public)
//!     .route("/api/admin/**", Policy::preset(Preset::Strict).roles(["admin"]))
//!     .trusted_proxies(["10.0.0.0/8"])
//!     .build()
//!     .expect("valid policy");
//! let app: Router = Router::new()
//!     .route("/api/public-data", get(|| async { "data" }))
//!     .route("/api/admin/users", post(|| async { "ok" }))
//!     .layer(security);
//! ```
//!
//! Serve it with `into_make_service_with_connect_info::<SocketAddr>()` (or, on another
//! server, insert a [`client_ip::PeerAddr`] in each request's extensions), so the layer knows
//! each client's address: without one, every request counts as the one client `0.0.0.0` for
//! the rate limits and the brute-force limit, and the layer logs a warning once. Route
//! patterns match the path the layer sees: on a router nested with `Router::nest`, that is the
//! path without the nest's prefix (see [`SecurityLayer`]).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod audit;
pub mod auth;
pub mod ban;
pub mod body_limit;
pub mod client_ip;
pub mod cors;
pub mod csrf;
pub mod error;
pub mod headers;
pub mod inbound;
pub mod layer;
pub mod methods;
pub mod policy;
mod random;
pub mod rate_limit;
pub mod request_id;
pub mod route;
pub mod shared;

pub use auth::Principal;
pub use client_ip::ClientIp;
pub use error::{Control, Rejection};
pub use headers::csp::{Csp, CspNonce, Nonce};
pub use layer::{Exchange, Guard, SecurityLayer, SecurityLayerBuilder};
pub use policy::{Policy, Preset};
pub use request_id::RequestId;
pub use route::CanonicalPath;

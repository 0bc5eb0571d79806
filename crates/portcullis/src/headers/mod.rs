//! Response headers: the security defaults, the CSP with its per-response nonce, and the
//! streaming HTML nonce rewrite.

pub mod csp;
pub mod nonce_html;
pub mod security;

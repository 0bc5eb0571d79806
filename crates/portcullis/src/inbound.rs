//! Inbound header stripping: headers a client must never be able to set.
//!
//! Removed from every request before any control or the application sees it: our own
//! identity headers (`x-portcullis-*`), Next.js internals (`x-middleware-subrequest`, the
//! header behind CVE-2025-29927, and every `x-middleware-*`, `x-invoke-*`, `x-matched-path`,
//! `x-now-route-matches`, `x-nextjs-data`), URL-override headers (`x-original-url`,
//! `x-rewrite-url`), a client-sent `content-security-policy` or `x-nonce`, and — unless the
//! peer is a trusted proxy — `forwarded` and every `x-forwarded-*`, plus the other headers
//! common client-address libraries read (`x-real-ip`, `x-client-ip`, `true-client-ip`,
//! `cf-connecting-ip`, `fastly-client-ip`, `x-cluster-client-ip`, `x-forwarded`,
//! `forwarded-for`, `x-appengine-user-ip`, `cf-pseudo-ipv4`, `client-ip` (Rack's and many
//! PHP helpers' first pick), `x-original-forwarded-for`) and the host-override headers
//! proxies set (`x-original-host`, `x-host`).
//!
//! Names are matched with `_` read as `-`: CGI, WSGI, PHP and Rack expose both
//! `X_Forwarded_For` and `X-Forwarded-For` as `HTTP_X_FORWARDED_FOR`, so an underscore
//! spelling would otherwise slip a forged header past this list.
//!
//! ```
//! use portcullis::inbound::InboundHeaders;
//! let mut h = http::HeaderMap::new();
//! h.insert("x-middleware-subrequest", "middleware".parse().unwrap());
//! h.insert("x-portcullis-user", "admin".parse().unwrap());
//! h.insert("accept", "*/*".parse().unwrap());
//! InboundHeaders::default().strip(&mut h, false);
//! assert_eq!(h.len(), 1);
//! ```

use http::{HeaderMap, HeaderName};

/// Which inbound headers are stripped.
///
/// ```
/// use portcullis::inbound::InboundHeaders;
/// let mut h = http::HeaderMap::new();
/// h.insert("x-forwarded-for", "6.6.6.6".parse().unwrap());
/// h.insert("x_real_ip", "6.6.6.6".parse().unwrap());
/// // From an untrusted peer, forged forwarding headers go, underscore spellings too.
/// InboundHeaders::default().strip(&mut h, false);
/// assert!(h.is_empty());
/// ```
#[derive(Debug, Clone)]
pub struct InboundHeaders {
    exact: Vec<HeaderName>,
    prefixes: Vec<String>,
    forwarded_exact: Vec<HeaderName>,
    forwarded_prefixes: Vec<String>,
    filter: Prefilter,
}

/// Which names could be on the lists, by first byte (with `_` read as `-`): bit `len` for an
/// exact name of that length (under 64 bytes), bit 0 for a prefix or a longer name, which
/// sends every name with that first byte to the full check. Most request headers (`host`,
/// `accept`, `cookie`, `user-agent`, `sec-fetch-*`…) are passed over on one lookup.
#[derive(Clone)]
struct Prefilter([u64; 128]);

impl Prefilter {
    fn of(h: &InboundHeaders) -> Prefilter {
        let mut bits = [0u64; 128];
        let mut add = |name: &str, exact: bool| {
            let bit = if exact && name.len() < 64 {
                name.len()
            } else {
                0
            };
            bits[Prefilter::slot(name)] |= 1 << bit;
        };
        for n in h.exact.iter().chain(&h.forwarded_exact) {
            add(n.as_str(), true);
        }
        for p in h.prefixes.iter().chain(&h.forwarded_prefixes) {
            if p.is_empty() {
                // Matches every name.
                return Prefilter([1; 128]);
            }
            add(p, false);
        }
        Prefilter(bits)
    }

    /// A name's entry: its first byte, `_` read as `-`.
    fn slot(name: &str) -> usize {
        let first = name
            .bytes()
            .next()
            .map_or(b'-', |b| if b == b'_' { b'-' } else { b });
        usize::from(first & 127)
    }

    fn may_hit(&self, name: &str) -> bool {
        let m = self.0[Prefilter::slot(name)];
        m & 1 != 0 || (name.len() < 64 && m & (1 << name.len()) != 0)
    }
}

impl std::fmt::Debug for Prefilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Prefilter")
    }
}

/// Headers that carry a client's address as a proxy (or the client) wrote it, besides the
/// `x-forwarded-*` family: stripped from requests whose peer is not a trusted proxy, and no
/// key to count a client by (the client address comes from the peer and a right-to-left walk
/// of `X-Forwarded-For`, [`crate::client_ip`]).
///
/// ```
/// assert!(portcullis::inbound::CLIENT_ADDRESS_HEADERS.contains(&"x-real-ip"));
/// ```
pub const CLIENT_ADDRESS_HEADERS: [&str; 13] = [
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
    "x-forwarded",
    "forwarded-for",
    "x-appengine-user-ip",
    "cf-pseudo-ipv4",
    "client-ip",
    "x-original-forwarded-for",
];

impl Default for InboundHeaders {
    fn default() -> Self {
        let names =
            |list: &[&'static str]| list.iter().map(|n| HeaderName::from_static(n)).collect();
        InboundHeaders {
            exact: names(&[
                "x-matched-path",
                "x-now-route-matches",
                "x-nextjs-data",
                "x-original-url",
                "x-rewrite-url",
                "content-security-policy",
                "content-security-policy-report-only",
                "x-nonce",
            ]),
            prefixes: vec![
                "x-portcullis-".to_string(),
                "x-middleware-".to_string(),
                "x-invoke-".to_string(),
            ],
            forwarded_exact: CLIENT_ADDRESS_HEADERS
                .iter()
                .chain(&["x-original-host", "x-host"])
                .map(|n| HeaderName::from_static(n))
                .collect(),
            forwarded_prefixes: vec!["x-forwarded-".to_string()],
            filter: Prefilter([0; 128]),
        }
        .refiltered()
    }
}

impl InboundHeaders {
    /// Also strips `name` (exact, case-insensitive; `_` and `-` are the same).
    ///
    /// ```
    /// use http::HeaderName;
    /// use portcullis::inbound::InboundHeaders;
    /// let strip = InboundHeaders::default().also(HeaderName::from_static("x-user-id"));
    /// let mut h = http::HeaderMap::new();
    /// h.insert("x_user_id", "42".parse().unwrap());
    /// strip.strip(&mut h, true);
    /// assert!(h.is_empty());
    /// ```
    pub fn also(mut self, name: HeaderName) -> Self {
        let dashed = name.as_str().replace('_', "-");
        self.exact
            .push(HeaderName::try_from(dashed).unwrap_or(name));
        self.refiltered()
    }

    /// Also strips every header starting with `prefix` (case-insensitive; `_` and `-` are the
    /// same).
    ///
    /// ```
    /// use portcullis::inbound::InboundHeaders;
    /// let strip = InboundHeaders::default().also_prefix("X-Internal-");
    /// let mut h = http::HeaderMap::new();
    /// h.insert("x-internal-role", "admin".parse().unwrap());
    /// h.insert("x-request-id", "abc".parse().unwrap());
    /// strip.strip(&mut h, false);
    /// assert_eq!(h.keys().collect::<Vec<_>>(), ["x-request-id"]);
    /// ```
    pub fn also_prefix(mut self, prefix: &str) -> Self {
        self.prefixes
            .push(prefix.to_ascii_lowercase().replace('_', "-"));
        self.refiltered()
    }

    /// Whether `name` is on the lists (the full check, after the prefilter).
    fn hit(&self, name: &str, peer_trusted: bool) -> bool {
        // No proxy writes an underscore spelling, so one is dropped even from a trusted peer.
        let underscored = name.contains('_');
        let n: std::borrow::Cow<'_, str> = if underscored {
            name.replace('_', "-").into()
        } else {
            name.into()
        };
        let n = n.as_ref();
        self.exact.iter().any(|e| e.as_str() == n)
            || self.prefixes.iter().any(|p| n.starts_with(p.as_str()))
            || ((!peer_trusted || underscored)
                && (self.forwarded_exact.iter().any(|e| e.as_str() == n)
                    || self
                        .forwarded_prefixes
                        .iter()
                        .any(|p| n.starts_with(p.as_str()))))
    }

    /// Recomputes the prefilter after the lists changed.
    fn refiltered(mut self) -> Self {
        self.filter = Prefilter::of(&self);
        self
    }

    /// Removes the spoofable headers. `peer_trusted` keeps the forwarding headers a trusted
    /// proxy added.
    ///
    /// ```
    /// use portcullis::inbound::InboundHeaders;
    /// let mut h = http::HeaderMap::new();
    /// h.insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
    /// h.insert("x-original-url", "/admin".parse().unwrap());
    /// // A trusted proxy's forwarding header is kept; a URL override never is.
    /// InboundHeaders::default().strip(&mut h, true);
    /// assert!(h.contains_key("x-forwarded-for"));
    /// assert!(!h.contains_key("x-original-url"));
    /// ```
    pub fn strip(&self, headers: &mut HeaderMap, peer_trusted: bool) {
        let mut doomed: Vec<HeaderName> = Vec::new();
        for name in headers.keys() {
            if self.filter.may_hit(name.as_str()) && self.hit(name.as_str(), peer_trusted) {
                doomed.push(name.clone());
            }
        }
        for name in doomed {
            headers.remove(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The prefilter passes over a name only when the full check would keep it: every listed
    /// name and prefix, spelled with `-` and `_`, cut short, lengthened, and common headers.
    #[test]
    fn the_prefilter_never_passes_over_a_listed_name() {
        let lists = [
            InboundHeaders::default(),
            InboundHeaders::default()
                .also(HeaderName::from_static("x-user-id"))
                .also_prefix("Internal_")
                .also(HeaderName::from_static(
                    "a-name-of-seventy-bytes-which-is-longer-than-the-sixty-four-of-a-bit",
                )),
            InboundHeaders::default().also_prefix(""),
        ];
        for h in &lists {
            let mut names: Vec<String> = [
                "host",
                "accept",
                "cookie",
                "content-type",
                "content-length",
                "user-agent",
                "sec-fetch-site",
                "authorization",
                "origin",
                "x-request-id",
                "_x_nonce",
            ]
            .map(String::from)
            .to_vec();
            let listed = h
                .exact
                .iter()
                .chain(&h.forwarded_exact)
                .map(|n| n.as_str().to_string());
            for n in listed.chain(h.prefixes.iter().chain(&h.forwarded_prefixes).cloned()) {
                for v in [
                    n.clone(),
                    format!("{n}x"),
                    format!("{n}-y"),
                    n.replace('-', "_"),
                ] {
                    names.push(v.clone());
                    names.push(v[..v.len() / 2].to_string());
                }
            }
            for n in names.iter().filter(|n| !n.is_empty()) {
                for trusted in [false, true] {
                    if h.hit(n, trusted) {
                        assert!(h.filter.may_hit(n), "{n}");
                    }
                }
            }
            assert!(!h.filter.may_hit("host") || h.prefixes.iter().any(String::is_empty));
        }
    }

    #[test]
    fn strips_forged_identity_and_framework_headers() {
        let mut h = HeaderMap::new();
        for n in [
            "x-middleware-subrequest",
            "x-middleware-rewrite",
            "x-invoke-path",
            "x-portcullis-roles",
            "X-Original-URL",
            "x-nonce",
            "content-security-policy",
            "x-forwarded-for",
            "forwarded",
            "x-real-ip",
            "client-ip",
            "x-original-host",
            "x-host",
            "x-original-forwarded-for",
        ] {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                "x".parse().unwrap(),
            );
        }
        h.insert("authorization", "Bearer t".parse().unwrap());
        InboundHeaders::default().strip(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
    }

    #[test]
    fn underscore_spellings_are_stripped_too() {
        let mut h = HeaderMap::new();
        for n in [
            "x_forwarded_for",
            "X_Middleware_Subrequest",
            "x_portcullis_user",
        ] {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                "x".parse().unwrap(),
            );
        }
        h.insert("x_custom_thing", "kept".parse().unwrap());
        InboundHeaders::default().strip(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x_custom_thing"));
    }

    #[test]
    fn extra_names_match_either_spelling() {
        let strip = InboundHeaders::default()
            .also(HeaderName::from_static("x_tenant_id"))
            .also_prefix("X-Internal_");
        let mut h = HeaderMap::new();
        for n in [
            "x-tenant-id",
            "x_tenant_id",
            "x-internal-a",
            "x_internal_b",
            "accept",
        ] {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                "x".parse().unwrap(),
            );
        }
        strip.strip(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
    }

    #[test]
    fn trusted_proxy_keeps_forwarding_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "1.2.3.4".parse().unwrap());
        h.insert("x_forwarded_for", "6.6.6.6".parse().unwrap());
        h.insert("x-portcullis-user", "admin".parse().unwrap());
        InboundHeaders::default().strip(&mut h, true);
        assert!(h.contains_key("x-forwarded-for"));
        assert!(!h.contains_key("x_forwarded_for"));
        assert!(!h.contains_key("x-portcullis-user"));
    }
}

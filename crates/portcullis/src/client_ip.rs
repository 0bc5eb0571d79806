//! The client's address, from the socket and trusted proxies.
//!
//! The socket peer is the client unless it is a trusted proxy (a CIDR list). Then
//! `X-Forwarded-For` is walked from the right, skipping trusted hops, and the first untrusted
//! hop is the client: a value the client wrote itself (the leftmost entries) can never choose
//! the key. IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) count as IPv4, and rate-limit keys
//! group IPv6 clients by /64, since one subscriber usually holds a whole /64 — except NAT64
//! addresses (`64:ff9b::/96` and the local-use `64:ff9b:1::/48`), where each IPv4 client
//! behind the translator has its own address: grouped by /64, one abuser would ban them all.
//!
//! ```
//! use portcullis::client_ip::{TrustedProxies, resolve};
//! use http::HeaderMap;
//! let trusted = TrustedProxies::parse(["10.0.0.0/8"]).unwrap();
//! let mut h = HeaderMap::new();
//! h.insert("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.0.0.2".parse().unwrap());
//! let ip = resolve("10.0.0.1".parse().unwrap(), &h, &trusted);
//! assert_eq!(ip.to_string(), "203.0.113.9");
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use http::HeaderMap;
use http::request::Parts;

/// The peer socket address, inserted as a request extension by a server that is not axum
/// (axum's `ConnectInfo<SocketAddr>` is read as well).
///
/// ```
/// use portcullis::client_ip::{PeerAddr, peer_of};
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(PeerAddr("198.51.100.7:443".parse().unwrap()));
/// let (parts, ()) = req.into_parts();
/// assert_eq!(peer_of(&parts), Some("198.51.100.7".parse().unwrap()));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// One CIDR block.
///
/// ```
/// use portcullis::client_ip::Cidr;
/// let net = Cidr::parse("2001:db8::/32").unwrap();
/// assert!(net.contains("2001:db8:1::5".parse().unwrap()));
/// assert!(!net.contains("2001:db9::5".parse().unwrap()));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `2001:db8::/32` or a bare address (a /32 or /128).
    ///
    /// ```
    /// use portcullis::client_ip::Cidr;
    /// assert!(Cidr::parse("10.0.0.0/8").unwrap().contains("10.1.2.3".parse().unwrap()));
    /// assert!(Cidr::parse("10.0.0.0/33").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let parsed: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?;
        let max = if parsed.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => {
                let p: u8 = p
                    .parse()
                    .map_err(|_| format!("{s:?} has a bad prefix length"))?;
                if p > max {
                    return Err(format!("{s:?} has a prefix longer than {max}"));
                }
                p
            }
        };
        let addr = canonical_ip(parsed);
        // An IPv4-mapped block (`::ffff:10.0.0.0/104`) is the IPv4 block `10.0.0.0/8`, since
        // addresses are compared after folding; a shorter prefix would mix in native IPv6.
        let prefix = match (parsed, addr) {
            (IpAddr::V6(_), IpAddr::V4(_)) if prefix < 96 => {
                return Err(format!(
                    "{s:?} spans IPv4-mapped and native IPv6 addresses; list them separately"
                ));
            }
            (IpAddr::V6(_), IpAddr::V4(_)) => prefix - 96,
            _ => prefix,
        };
        Ok(Cidr { addr, prefix })
    }

    /// True when `ip` is inside this block.
    ///
    /// ```
    /// use portcullis::client_ip::Cidr;
    /// let net = Cidr::parse("192.168.0.0/16").unwrap();
    /// assert!(net.contains("192.168.4.2".parse().unwrap()));
    /// // IPv4-mapped IPv6 addresses count as IPv4.
    /// assert!(net.contains("::ffff:192.168.4.2".parse().unwrap()));
    /// assert!(!net.contains("10.0.0.1".parse().unwrap()));
    /// ```
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical_ip(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The proxies whose `X-Forwarded-For` is believed.
///
/// ```
/// use portcullis::client_ip::TrustedProxies;
/// let trusted = TrustedProxies::parse(["10.0.0.0/8", "fd00::/8"]).unwrap();
/// assert!(trusted.contains("10.20.30.40".parse().unwrap()));
/// assert!(trusted.contains("fd12::1".parse().unwrap()));
/// assert!(!trusted.contains("203.0.113.1".parse().unwrap()));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Vec<Cidr>,
}

impl TrustedProxies {
    /// Trusts no proxy: the socket peer is always the client.
    ///
    /// ```
    /// use portcullis::client_ip::TrustedProxies;
    /// let trusted = TrustedProxies::none();
    /// assert!(trusted.is_empty());
    /// assert!(!trusted.contains("127.0.0.1".parse().unwrap()));
    /// ```
    pub fn none() -> Self {
        TrustedProxies::default()
    }

    /// Parses a CIDR list; the error names the bad entry.
    ///
    /// ```
    /// use portcullis::client_ip::TrustedProxies;
    /// assert!(TrustedProxies::parse(["10.0.0.0/8", "127.0.0.1"]).is_ok());
    /// let err = TrustedProxies::parse(["10.0.0.0/8", "proxy.internal"]).unwrap_err();
    /// assert!(err.contains("proxy.internal"));
    /// ```
    pub fn parse<'a>(list: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let nets = list
            .into_iter()
            .map(Cidr::parse)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustedProxies { nets })
    }

    /// True when `ip` is a trusted proxy.
    ///
    /// ```
    /// use portcullis::client_ip::TrustedProxies;
    /// let trusted = TrustedProxies::parse(["127.0.0.1"]).unwrap();
    /// assert!(trusted.contains("127.0.0.1".parse().unwrap()));
    /// assert!(!trusted.contains("127.0.0.2".parse().unwrap()));
    /// ```
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(ip))
    }

    /// True when no proxy is trusted.
    ///
    /// ```
    /// use portcullis::client_ip::TrustedProxies;
    /// assert!(TrustedProxies::parse([]).unwrap().is_empty());
    /// assert!(!TrustedProxies::parse(["10.0.0.0/8"]).unwrap().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }
}

/// Folds an IPv4-mapped IPv6 address into IPv4.
///
/// ```
/// use std::net::IpAddr;
/// use portcullis::client_ip::canonical_ip;
/// let mapped: IpAddr = "::ffff:203.0.113.9".parse().unwrap();
/// assert_eq!(canonical_ip(mapped), "203.0.113.9".parse::<IpAddr>().unwrap());
/// let v6: IpAddr = "2001:db8::1".parse().unwrap();
/// assert_eq!(canonical_ip(v6), v6);
/// ```
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// A NAT64 address ([RFC 6052], [RFC 8215]): one IPv4 client behind a translator.
///
/// [RFC 6052]: https://www.rfc-editor.org/rfc/rfc6052
/// [RFC 8215]: https://www.rfc-editor.org/rfc/rfc8215
enum Nat64 {
    /// In the well-known prefix `64:ff9b::/96`, carrying this IPv4 address in its last 32 bits.
    WellKnown(Ipv4Addr),
    /// In the local-use `64:ff9b:1::/48`, where the operator's prefix length places the IPv4
    /// address: the whole address stands for one client.
    LocalUse,
}

/// Whether `ip` is a NAT64 address, and of which kind.
fn nat64(ip: Ipv6Addr) -> Option<Nat64> {
    let bits = u128::from(ip);
    if bits >> 32 == 0x0064_ff9b_0000_0000_0000_0000 {
        // The low 32 bits are the IPv4 address; truncation is the point.
        Some(Nat64::WellKnown(Ipv4Addr::from(bits as u32)))
    } else if bits >> 80 == 0x0064_ff9b_0001 {
        Some(Nat64::LocalUse)
    } else {
        None
    }
}

/// Appends `ip` as text, exactly as its `Display` writes it (see [`IpText`]).
///
/// ```
/// let mut s = String::from("for=");
/// portcullis::client_ip::push_ip(&mut s, "192.0.2.60".parse().unwrap());
/// assert_eq!(s, "for=192.0.2.60");
/// ```
pub fn push_ip(out: &mut String, ip: IpAddr) {
    out.push_str(IpText::of(ip).as_str());
}

/// An address as text, on the stack: exactly what its `Display` writes, IPv4 digit by digit
/// (this runs on every request, for rate-limit keys and forwarding headers, and `Display`
/// goes through the formatting machinery for each octet), IPv6 through `Display`.
///
/// ```
/// use portcullis::client_ip::IpText;
/// assert_eq!(IpText::of("192.0.2.60".parse().unwrap()).as_str(), "192.0.2.60");
/// let v6 = "::ffff:192.0.2.1".parse().unwrap();
/// assert_eq!(IpText::of(v6).as_str(), "::ffff:192.0.2.1");
/// ```
#[derive(Clone, Copy)]
pub struct IpText {
    buf: [u8; 45],
    len: usize,
}

impl IpText {
    /// Formats `ip`.
    ///
    /// ```
    /// # use portcullis::client_ip::IpText;
    /// assert_eq!(IpText::of("2001:db8::1".parse().unwrap()).as_str(), "2001:db8::1");
    /// ```
    pub fn of(ip: IpAddr) -> IpText {
        let mut buf = [0u8; 45];
        let len = match ip {
            IpAddr::V4(v4) => {
                let mut n = 0;
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        buf[n] = b'.';
                        n += 1;
                    }
                    if octet >= 100 {
                        buf[n] = b'0' + octet / 100;
                        n += 1;
                    }
                    if octet >= 10 {
                        buf[n] = b'0' + octet / 10 % 10;
                        n += 1;
                    }
                    buf[n] = b'0' + octet % 10;
                    n += 1;
                }
                n
            }
            IpAddr::V6(v6) => {
                use std::io::Write;
                let mut rest = &mut buf[..];
                // 45 bytes hold the longest form (`ffff:…:255.255.255.255`).
                let _ = write!(rest, "{v6}");
                45 - rest.len()
            }
        };
        IpText { buf, len }
    }

    /// The text.
    ///
    /// ```
    /// # use portcullis::client_ip::IpText;
    /// assert_eq!(IpText::of("10.0.0.1".parse().unwrap()).as_str().len(), 8);
    /// ```
    pub fn as_str(&self) -> &str {
        // Digits, dots, colons and hex letters only.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// The text's bytes, for a writer of bytes (no UTF-8 check).
    ///
    /// ```
    /// # use portcullis::client_ip::IpText;
    /// assert_eq!(IpText::of("10.0.0.1".parse().unwrap()).as_bytes(), b"10.0.0.1");
    /// ```
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::fmt::Debug for IpText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses one `X-Forwarded-For` entry: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:443`, optionally quoted.
fn parse_hop(entry: &str) -> Option<IpAddr> {
    let e = entry.trim().trim_matches('"');
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Some(canonical_ip(ip));
    }
    if let Ok(sa) = e.parse::<SocketAddr>() {
        return Some(canonical_ip(sa.ip()));
    }
    // Bracketed IPv6 without a port, as RFC 7239 writes it and some proxies copy into XFF.
    if let Some(inner) = e.strip_prefix('[').and_then(|r| r.strip_suffix(']'))
        && let Ok(ip) = inner.parse::<Ipv6Addr>()
    {
        return Some(canonical_ip(IpAddr::V6(ip)));
    }
    None
}

/// Resolves the client address for a request from `peer`.
///
/// ```
/// use portcullis::client_ip::{TrustedProxies, resolve};
/// let mut h = http::HeaderMap::new();
/// h.insert("x-forwarded-for", "1.1.1.1".parse().unwrap());
/// // An untrusted peer is the client, whatever it claims.
/// let none = TrustedProxies::none();
/// assert_eq!(resolve("203.0.113.9".parse().unwrap(), &h, &none).to_string(), "203.0.113.9");
/// let proxies = TrustedProxies::parse(["10.0.0.0/8"]).unwrap();
/// assert_eq!(resolve("10.0.0.1".parse().unwrap(), &h, &proxies).to_string(), "1.1.1.1");
/// ```
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let peer = canonical_ip(peer);
    if !trusted.contains(peer) {
        return peer;
    }
    let mut nearest_trusted = peer;
    // Several X-Forwarded-For lines form one list, in order; walk it from the right. Lines are
    // split as bytes: a line holding non-ASCII bytes (legal obs-text) must not vanish from the
    // walk, or a proxy that appended the real hop to it would be skipped in favour of lines
    // further left, which the client wrote.
    for line in headers.get_all("x-forwarded-for").iter().rev() {
        for entry in line.as_bytes().rsplit(|b| *b == b',') {
            if entry.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match std::str::from_utf8(entry).ok().and_then(parse_hop) {
                Some(ip) if trusted.contains(ip) => nearest_trusted = ip,
                Some(ip) => return ip,
                // A hop we cannot read was written by someone we do not trust: stop at the last
                // trusted hop rather than believe anything further left.
                None => return nearest_trusted,
            }
        }
    }
    nearest_trusted
}

/// The peer address of a request, from [`PeerAddr`] or axum's `ConnectInfo<SocketAddr>`.
///
/// ```
/// use std::net::SocketAddr;
/// use axum::extract::ConnectInfo;
/// use portcullis::client_ip::peer_of;
/// let (parts, ()) = http::Request::new(()).into_parts();
/// assert_eq!(peer_of(&parts), None);
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(ConnectInfo("192.0.2.1:8080".parse::<SocketAddr>().unwrap()));
/// let (parts, ()) = req.into_parts();
/// assert_eq!(peer_of(&parts), Some("192.0.2.1".parse().unwrap()));
/// ```
pub fn peer_of(parts: &Parts) -> Option<IpAddr> {
    if let Some(p) = parts.extensions.get::<PeerAddr>() {
        return Some(p.0.ip());
    }
    parts
        .extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

/// The resolved client address; a request extension and an axum extractor.
///
/// ```
/// use portcullis::ClientIp;
/// let ip = ClientIp("198.51.100.23".parse().unwrap());
/// assert_eq!(ip.to_string(), "198.51.100.23");
/// assert_eq!(ip.key(), "198.51.100.23");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientIp(pub IpAddr);

impl ClientIp {
    /// The key under which this client is counted: the address for IPv4, the /64 for IPv6.
    /// A NAT64 address is one IPv4 client behind a translator: the well-known prefix
    /// `64:ff9b::/96` counts as the IPv4 address it carries, and an address in the local-use
    /// `64:ff9b:1::/48` (whose prefix length the operator chooses) counts alone.
    ///
    /// ```
    /// use portcullis::client_ip::ClientIp;
    /// let a = ClientIp("2001:db8:1:2:aaaa::1".parse().unwrap());
    /// let b = ClientIp("2001:db8:1:2:bbbb::9".parse().unwrap());
    /// assert_eq!(a.key(), b.key());
    /// assert_eq!(a.key(), "2001:db8:1:2::/64");
    /// // Two IPv4 clients reaching an IPv6-only server through NAT64 stay apart.
    /// assert_eq!(ClientIp("64:ff9b::c633:6407".parse().unwrap()).key(), "198.51.100.7");
    /// assert_eq!(ClientIp("64:ff9b:1:a::cb00:7109".parse().unwrap()).key(), "64:ff9b:1:a::cb00:7109/128");
    /// ```
    pub fn key(&self) -> String {
        let mut out = String::with_capacity(24);
        self.push_key(&mut out);
        out
    }

    /// Appends [`key`](Self::key) to `out`, without a separate allocation.
    ///
    /// ```
    /// use portcullis::client_ip::ClientIp;
    /// let mut key = String::from("ip:");
    /// ClientIp("::ffff:198.51.100.4".parse().unwrap()).push_key(&mut key);
    /// assert_eq!(key, "ip:198.51.100.4");
    /// ```
    pub fn push_key(&self, out: &mut String) {
        use std::fmt::Write;
        // Fold first: an IPv4-mapped address left in a hand-built `ClientIp` would otherwise
        // put every IPv4 client in the one bucket `::/64`. Writing to a String cannot fail.
        match canonical_ip(self.0) {
            v4 @ IpAddr::V4(_) => push_ip(out, v4),
            IpAddr::V6(v6) => match nat64(v6) {
                Some(Nat64::WellKnown(v4)) => push_ip(out, IpAddr::V4(v4)),
                Some(Nat64::LocalUse) => {
                    let _ = write!(out, "{v6}/128");
                }
                None => {
                    let net = Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1));
                    let _ = write!(out, "{net}/64");
                }
            },
        }
    }

    /// The unspecified address, used when no peer address is known.
    ///
    /// ```
    /// use portcullis::ClientIp;
    /// assert_eq!(ClientIp::unknown().to_string(), "0.0.0.0");
    /// assert!(ClientIp::unknown().0.is_unspecified());
    /// ```
    pub fn unknown() -> Self {
        ClientIp(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }
}

impl std::fmt::Display for ClientIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let context = || {
            parts
                .extensions
                .get::<crate::layer::RequestContext>()
                .map(|c| c.client_ip)
        };
        Ok(parts
            .extensions
            .get::<ClientIp>()
            .copied()
            .or_else(context)
            .unwrap_or_else(|| {
                peer_of(parts).map_or_else(ClientIp::unknown, |p| ClientIp(canonical_ip(p)))
            }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_text_is_display() {
        let mut ips: Vec<IpAddr> = [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.0.1",
            "192.0.2.60",
            "::",
            "::1",
            "2001:db8::7",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
            "fe80::1:2:3:4",
            "1:0:0:1::1",
        ]
        .iter()
        .map(|t| t.parse().unwrap())
        .collect();
        for i in 0..2000u32 {
            let x = i.wrapping_mul(2_654_435_761);
            ips.push(IpAddr::V4(Ipv4Addr::from(x)));
            ips.push(IpAddr::V6(Ipv6Addr::from(u128::from(x) << (i % 97))));
        }
        for ip in ips {
            assert_eq!(IpText::of(ip).as_str(), ip.to_string());
        }
    }

    #[test]
    fn push_ip_writes_what_display_writes() {
        let mut cases: Vec<IpAddr> = [
            "0.0.0.0",
            "1.2.3.4",
            "9.10.99.100",
            "127.0.0.1",
            "255.255.255.255",
            "10.200.0.9",
            "::1",
            "2001:db8::1",
            "::ffff:1.2.3.4",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        cases.extend((0..=255u8).map(|b| IpAddr::V4(Ipv4Addr::new(b, 255 - b, b / 3, b % 7))));
        for ip in cases {
            let mut s = String::from("x");
            push_ip(&mut s, ip);
            assert_eq!(s, format!("x{ip}"));
        }
    }

    fn xff(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", v.parse().unwrap());
        h
    }

    #[test]
    fn untrusted_peer_ignores_forwarded_for() {
        let t = TrustedProxies::parse(["10.0.0.0/8"]).unwrap();
        let ip = resolve("198.51.100.7".parse().unwrap(), &xff("1.1.1.1"), &t);
        assert_eq!(ip.to_string(), "198.51.100.7");
    }

    #[test]
    fn spoofed_leftmost_value_does_not_change_the_client() {
        let t = TrustedProxies::parse(["10.0.0.0/8"]).unwrap();
        let peer = "10.0.0.1".parse().unwrap();
        let a = resolve(peer, &xff("203.0.113.9"), &t);
        let b = resolve(peer, &xff("1.2.3.4, 203.0.113.9"), &t);
        let c = resolve(peer, &xff("garbage, 203.0.113.9, 10.9.9.9"), &t);
        assert_eq!(a, b);
        assert_eq!(a, c);
    }

    #[test]
    fn mapped_ipv6_folds_to_ipv4() {
        let t = TrustedProxies::parse(["127.0.0.1"]).unwrap();
        let ip = resolve(
            "::ffff:127.0.0.1".parse().unwrap(),
            &xff("[::ffff:203.0.113.9]:443"),
            &t,
        );
        assert_eq!(ip.to_string(), "203.0.113.9");
    }

    #[test]
    fn unreadable_hop_stops_at_the_nearest_trusted_proxy() {
        let t = TrustedProxies::parse(["10.0.0.0/8"]).unwrap();
        let ip = resolve(
            "10.0.0.1".parse().unwrap(),
            &xff("1.2.3.4, nonsense, 10.0.0.5"),
            &t,
        );
        assert_eq!(ip.to_string(), "10.0.0.5");
    }

    #[test]
    fn non_ascii_line_does_not_hide_the_hop_a_proxy_appended_to_it() {
        let t = TrustedProxies::parse(["10.0.0.0/8"]).unwrap();
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "6.6.6.6".parse().unwrap());
        h.append(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"\xff\xfe, 203.0.113.9").unwrap(),
        );
        let ip = resolve("10.0.0.1".parse().unwrap(), &h, &t);
        assert_eq!(ip.to_string(), "203.0.113.9");
        // Unreadable bytes as the nearest hop stop the walk at the proxy.
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "6.6.6.6".parse().unwrap());
        h.append(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"\xff").unwrap(),
        );
        let ip = resolve("10.0.0.1".parse().unwrap(), &h, &t);
        assert_eq!(ip.to_string(), "10.0.0.1");
    }

    #[test]
    fn bracketed_ipv6_without_port_is_read() {
        let t = TrustedProxies::parse(["10.0.0.0/8"]).unwrap();
        let ip = resolve("10.0.0.1".parse().unwrap(), &xff("[2001:db8::7]"), &t);
        assert_eq!(ip.to_string(), "2001:db8::7");
    }

    #[test]
    fn mapped_cidr_is_the_ipv4_block() {
        let c = Cidr::parse("::ffff:10.0.0.0/104").unwrap();
        assert!(c.contains("10.200.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.200.0.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("::ffff:0.0.0.0/95").is_err());
    }

    #[test]
    fn key_folds_mapped_addresses() {
        let a = ClientIp("::ffff:203.0.113.9".parse().unwrap());
        let b = ClientIp("::ffff:198.51.100.1".parse().unwrap());
        assert_eq!(a.key(), "203.0.113.9");
        assert_ne!(a.key(), b.key());
    }

    #[test]
    fn nat64_clients_are_counted_apart() {
        let key = |s: &str| ClientIp(s.parse().unwrap()).key();
        // The well-known prefix: the IPv4 client it carries, the same key as over IPv4.
        assert_eq!(key("64:ff9b::203.0.113.9"), "203.0.113.9");
        assert_eq!(key("64:ff9b::cb00:7109"), key("203.0.113.9"));
        assert_ne!(key("64:ff9b::203.0.113.9"), key("64:ff9b::203.0.113.10"));
        // Only the /96: the rest of 64:ff9b::/64 is ordinary IPv6, grouped by /64.
        assert_eq!(key("64:ff9b::1:cb00:7109"), "64:ff9b::/64");
        // The local-use /48: each address alone, whatever prefix length the operator chose.
        assert_eq!(key("64:ff9b:1::cb00:7109"), "64:ff9b:1::cb00:7109/128");
        assert_ne!(
            key("64:ff9b:1:0:cb:0:7109:0"),
            key("64:ff9b:1:0:cb:0:710a:0")
        );
        // Its neighbours are not NAT64.
        assert_eq!(key("64:ff9b:2::1"), "64:ff9b:2::/64");
        assert_eq!(key("64:ff9a::203.0.113.9"), "64:ff9a::/64");
    }

    #[test]
    fn bad_cidrs_are_refused() {
        for c in ["10.0.0.0/33", "nonsense", "::/129", "10.0.0.0/x"] {
            assert!(Cidr::parse(c).is_err(), "{c}");
        }
    }
}

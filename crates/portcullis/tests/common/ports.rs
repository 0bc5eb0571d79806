//! Loopback ports for servers the tests start themselves. Shared by both crates' test
//! harnesses (the gateway's includes this file by path).

/// A loopback port nothing listens on, for a server a test starts itself.
///
/// Taking a port from `bind(0)` and releasing it races: until the server binds it, the kernel
/// may hand the same port to any other socket, an outgoing connection's or another test's
/// `bind(0)` (seen in CI: "Address already in use"). So the port comes from below the
/// kernel's ephemeral range (`ip_local_port_range`), where neither ever lands, checked free
/// by binding it; a per-process counter, starting at an offset taken from the process id,
/// keeps this process's tests (and other test binaries) off each other's ports.
pub fn free_port() -> u16 {
    use std::sync::atomic::AtomicU32;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FLOOR: u32 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768)
        .min(65_535);
    if ephemeral_low > FLOOR + 1_000 {
        let span = ephemeral_low - FLOOR;
        let start = (u64::from(std::process::id()) * 7_919 % u64::from(span)) as u32;
        for _ in 0..span {
            let i = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let port = FLOOR + (start + i % span) % span;
            if let Ok(port) = u16::try_from(port)
                && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            {
                return port;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

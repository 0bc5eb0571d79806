//! Randomness from the operating system's generator.
//!
//! Nonces and request ids are drawn from `getrandom` (the kernel CSPRNG). To keep the cost of
//! one system call off every response, each thread refills a small buffer from the OS and hands
//! out fresh, never-reused bytes from it.

use std::cell::RefCell;

const BUFFER: usize = 4096;

struct Pool {
    bytes: [u8; BUFFER],
    used: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = const { RefCell::new(Pool { bytes: [0; BUFFER], used: BUFFER }) };
}

/// Fills `out` with bytes from the operating system's generator.
///
/// # Panics
/// Panics if the OS generator fails, which on Linux only happens before the pool is seeded at
/// boot; continuing with predictable nonces would be worse than stopping.
pub(crate) fn fill(out: &mut [u8]) {
    if out.len() > BUFFER / 4 {
        getrandom::fill(out).expect("the OS random generator must be available");
        return;
    }
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.used + out.len() > BUFFER {
            getrandom::fill(&mut pool.bytes).expect("the OS random generator must be available");
            pool.used = 0;
        }
        let start = pool.used;
        out.copy_from_slice(&pool.bytes[start..start + out.len()]);
        // Wipe what was handed out so no byte is ever given twice or left readable.
        pool.bytes[start..start + out.len()].fill(0);
        pool.used += out.len();
    });
}

/// Returns `N` fresh random bytes.
pub(crate) fn bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    fill(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_distinct() {
        let a: [u8; 16] = bytes();
        let b: [u8; 16] = bytes();
        assert_ne!(a, b);
        assert_ne!(a, [0; 16]);
    }

    #[test]
    fn refills_across_the_buffer_edge() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..600 {
            assert!(seen.insert(bytes::<16>()));
        }
    }
}

//! Measures the memory store's bytes per tracked key at one million keys with a counting
//! allocator (this test binary only), and checks the target of at most 128 bytes.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use portcullis::policy::Algorithm;
use portcullis::rate_limit::Charge;
use portcullis::rate_limit::algorithm::Rule;
use portcullis::rate_limit::memory::MemoryStore;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - layout.size() as isize, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn one_million_keys_cost_at_most_128_bytes_each() {
    const KEYS: usize = 1_000_000;
    let store = MemoryStore::new(KEYS + KEYS / 4);
    let rule = Rule::new(60, 60_000_000, Algorithm::SlidingWindow, 0);
    let before = LIVE.load(Ordering::Relaxed);
    let mut key = String::with_capacity(64);
    for i in 0..KEYS {
        key.clear();
        use std::fmt::Write;
        let _ = write!(
            key,
            "/api/**|default|ip:10.{}.{}.{}",
            i >> 16,
            (i >> 8) & 255,
            i & 255
        );
        store
            .decide_now(&[Charge {
                key: &key,
                rule,
                cost: 1,
            }])
            .expect("memory store answers");
    }
    let after = LIVE.load(Ordering::Relaxed);
    assert_eq!(store.len(), KEYS, "no key was evicted below the cap");
    let per_key = (after - before) as f64 / KEYS as f64;
    println!("memory store: {per_key:.1} bytes per tracked key at {KEYS} keys");
    assert!(per_key <= 128.0, "{per_key} bytes per key");
}

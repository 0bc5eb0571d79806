//! State every worker thread touches on every request, laid out so the threads do not write
//! to one cache line: on a multi-threaded runtime, a line written by every request moves
//! between the cores on each write, which costs more than the work around it.
//!
//! - [`Counter`]: an event count split in stripes, one per thread (modulo the stripe count),
//!   summed when read.
//! - `static_value`: a header value that never changes, kept once for the process, so
//!   cloning it onto a response copies a pointer instead of counting a reference shared by
//!   every thread.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use http::HeaderValue;

/// Stripes per [`Counter`]: threads beyond this share one (still far fewer writers a line).
const STRIPES: usize = 8;

/// One stripe, alone on its cache lines (two: adjacent-line prefetch pairs them).
#[derive(Default)]
#[repr(align(128))]
struct Stripe(AtomicU64);

/// Hands each thread its stripe, in order of first use.
static NEXT_STRIPE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// This thread's stripe.
fn stripe() -> usize {
    STRIPE.with(|s| {
        let mut i = s.get();
        if i == usize::MAX {
            i = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES;
            s.set(i);
        }
        i
    })
}

/// An event count that threads add to without contending: each adds to its own stripe, and
/// [`Counter::get`] sums the stripes.
///
/// ```
/// use portcullis::shared::Counter;
/// let c = Counter::default();
/// c.add(2);
/// std::thread::scope(|s| {
///     s.spawn(|| c.add(3));
/// });
/// assert_eq!(c.get(), 5);
/// ```
#[derive(Default)]
pub struct Counter {
    stripes: [Stripe; STRIPES],
}

impl Counter {
    /// Adds `n`.
    ///
    /// ```
    /// let c = portcullis::shared::Counter::default();
    /// c.add(1);
    /// assert_eq!(c.get(), 1);
    /// ```
    pub fn add(&self, n: u64) {
        self.stripes[stripe()].0.fetch_add(n, Ordering::Relaxed);
    }

    /// The count: every stripe's, summed (adds racing the read may or may not be in it).
    ///
    /// ```
    /// assert_eq!(portcullis::shared::Counter::default().get(), 0);
    /// ```
    pub fn get(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

impl std::fmt::Debug for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

/// The texts [`static_value`] has kept, each once.
static TEXTS: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());

/// `text` as a header value whose clones share static bytes: no reference count to bump
/// (and bounce between cores) per response. `None` if `text` is not a valid header value.
///
/// Each distinct text is kept for the rest of the process, once however often it is asked
/// for: meant for the few values a configuration renders (a policy's `RateLimit-Policy`),
/// never for values that vary per request.
pub(crate) fn static_value(text: &str) -> Option<HeaderValue> {
    // Checked before it is kept: an invalid text is never stored.
    HeaderValue::from_str(text).ok()?;
    let mut texts = TEXTS.lock().unwrap_or_else(PoisonError::into_inner);
    let kept: &'static str = match texts.get(text) {
        Some(kept) => kept,
        None => {
            let kept: &'static str = Box::leak(text.into());
            texts.insert(kept);
            kept
        }
    };
    drop(texts);
    HeaderValue::from_maybe_shared(Bytes::from_static(kept.as_bytes())).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_sums_every_threads_stripe() {
        let c = Counter::default();
        std::thread::scope(|s| {
            for _ in 0..(STRIPES * 2) {
                s.spawn(|| {
                    for _ in 0..1000 {
                        c.add(1);
                    }
                });
            }
        });
        assert_eq!(c.get(), (STRIPES * 2 * 1000) as u64);
    }

    #[test]
    fn static_values_are_kept_once_and_checked() {
        let a = static_value("\"default\";q=10;w=1").expect("valid");
        let b = static_value(&String::from("\"default\";q=10;w=1")).expect("valid");
        assert_eq!(a, b);
        // The same kept bytes, not a second copy.
        assert_eq!(a.as_bytes().as_ptr(), b.as_bytes().as_ptr());
        assert!(static_value("bad\nvalue").is_none());
        let kept = TEXTS.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(!kept.contains("bad\nvalue"));
    }
}

//! The rate-limit arithmetic, as pure functions of a small state cell and the time.
//!
//! Every store keeps the same [`Cell`] per key and calls [`Rule::evaluate`], so memory,
//! SQLite and Redis (whose Lua script mirrors this file) agree to the microsecond.
//!
//! - **Sliding window** (the weighted two-window approximation of @upstash/ratelimit): the
//!   previous window's count weighs in proportion to how much of it still overlaps the sliding
//!   window: `prev × (W − elapsed) / W + curr`. Integer arithmetic, no floating point.
//! - **GCRA** (token bucket): a theoretical arrival time `tat`; a request of cost `c` is allowed
//!   when `max(tat, now) + c·T − now ≤ B·T`, with `T = W / limit` and burst `B`.
//! - **Fixed window**: a counter per aligned window; cheapest, allows 2× bursts at edges.
//!
//! ```
//! use portcullis::rate_limit::algorithm::{Rule, Cell};
//! use portcullis::policy::Algorithm;
//! let rule = Rule::new(2, 1_000_000, Algorithm::SlidingWindow, 0);
//! let (v1, c) = rule.evaluate(Cell::default(), 5_000_000, 1);
//! let (v2, c) = rule.evaluate(c, 5_000_001, 1);
//! let (v3, _) = rule.evaluate(c, 5_000_002, 1);
//! assert!(v1.allowed && v2.allowed && !v3.allowed);
//! ```

use crate::policy::Algorithm;

/// The per-key state. Sliding/fixed window: `a` = window index, `b` = current count,
/// `c` = previous count. GCRA: `a` = theoretical arrival time (µs).
///
/// ```
/// use portcullis::policy::Algorithm;
/// use portcullis::rate_limit::algorithm::{Cell, Rule};
/// let rule = Rule::new(5, 1_000_000, Algorithm::FixedWindow, 0);
/// let (_, cell) = rule.evaluate(Cell::default(), 7_250_000, 1);
/// // Fixed window: `a` is the window index, `b` the count in it.
/// assert_eq!(cell, Cell { a: 7, b: 1, c: 0 });
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cell {
    /// Window index or TAT.
    pub a: u64,
    /// Current window's count.
    pub b: u32,
    /// Previous window's count.
    pub c: u32,
}

/// The outcome of one rule for one request.
///
/// ```
/// use portcullis::policy::Algorithm;
/// use portcullis::rate_limit::algorithm::{Cell, Rule};
/// let rule = Rule::new(1, 1_000_000, Algorithm::FixedWindow, 0);
/// let (ok, cell) = rule.evaluate(Cell::default(), 5_500_000, 1);
/// assert!(ok.allowed && ok.remaining == 0);
/// let (refused, _) = rule.evaluate(cell, 5_500_000, 1);
/// assert!(!refused.allowed);
/// assert_eq!(refused.retry_after_us, 500_000); // the window ends in half a second
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// True when the rule allows the request.
    pub allowed: bool,
    /// Requests left after this one (or now, when refused).
    pub remaining: u32,
    /// Microseconds until the quota is replenished.
    pub reset_us: u64,
    /// Microseconds until a retry may succeed (0 when allowed).
    pub retry_after_us: u64,
}

/// One limit in executable form.
///
/// ```
/// use portcullis::policy::Algorithm;
/// use portcullis::rate_limit::algorithm::Rule;
/// let rule = Rule::new(100, 60_000_000, Algorithm::TokenBucket, 20);
/// assert_eq!((rule.limit, rule.window_us, rule.burst), (100, 60_000_000, 20));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Requests per window.
    pub limit: u32,
    /// Window length in microseconds.
    pub window_us: u64,
    /// The algorithm.
    pub algorithm: Algorithm,
    /// Token-bucket burst capacity (0 = `limit`).
    pub burst: u32,
}

impl Rule {
    /// A rule; `window_us` is clamped to at least 1 µs and `limit` to at least 1.
    ///
    /// ```
    /// use portcullis::policy::Algorithm;
    /// use portcullis::rate_limit::algorithm::Rule;
    /// let rule = Rule::new(0, 0, Algorithm::SlidingWindow, 0);
    /// assert_eq!((rule.limit, rule.window_us), (1, 1)); // clamped
    /// ```
    pub fn new(limit: u32, window_us: u64, algorithm: Algorithm, burst: u32) -> Self {
        Rule {
            limit: limit.max(1),
            window_us: window_us.max(1),
            algorithm,
            burst,
        }
    }

    /// The window in whole seconds (at least 1), for headers.
    ///
    /// ```
    /// use portcullis::policy::Algorithm;
    /// use portcullis::rate_limit::algorithm::Rule;
    /// assert_eq!(Rule::new(10, 1_500_000, Algorithm::SlidingWindow, 0).window_secs(), 2);
    /// assert_eq!(Rule::new(10, 1, Algorithm::SlidingWindow, 0).window_secs(), 1);
    /// ```
    pub fn window_secs(&self) -> u64 {
        self.window_us.div_ceil(1_000_000).max(1)
    }

    /// Evaluates a request of `cost` at `now_us`; returns the verdict and the state to store
    /// (unchanged when refused).
    ///
    /// ```
    /// use portcullis::policy::Algorithm;
    /// use portcullis::rate_limit::algorithm::{Cell, Rule};
    /// let rule = Rule::new(2, 1_000_000, Algorithm::TokenBucket, 0);
    /// let (a, cell) = rule.evaluate(Cell::default(), 10_000_000, 1);
    /// let (b, cell) = rule.evaluate(cell, 10_000_000, 1);
    /// let (c, same) = rule.evaluate(cell, 10_000_000, 1);
    /// assert!(a.allowed && b.allowed && !c.allowed);
    /// assert_eq!(same, cell); // a refusal leaves the state as it was
    /// ```
    pub fn evaluate(&self, cell: Cell, now_us: u64, cost: u32) -> (Verdict, Cell) {
        match self.algorithm {
            Algorithm::SlidingWindow => self.sliding(cell, now_us, cost),
            Algorithm::TokenBucket => self.gcra(cell, now_us, cost),
            Algorithm::FixedWindow => self.fixed(cell, now_us, cost),
        }
    }

    /// When the state stops mattering (µs): after this a fresh cell is equivalent.
    ///
    /// ```
    /// use portcullis::policy::Algorithm;
    /// use portcullis::rate_limit::algorithm::{Cell, Rule};
    /// let rule = Rule::new(5, 1_000_000, Algorithm::FixedWindow, 0);
    /// let (_, cell) = rule.evaluate(Cell::default(), 7_250_000, 1);
    /// assert_eq!(rule.expires_at(&cell), 8_000_000); // the end of window 7
    /// ```
    pub fn expires_at(&self, cell: &Cell) -> u64 {
        match self.algorithm {
            Algorithm::SlidingWindow => cell.a.saturating_add(2).saturating_mul(self.window_us),
            Algorithm::FixedWindow => cell.a.saturating_add(1).saturating_mul(self.window_us),
            Algorithm::TokenBucket => cell.a,
        }
    }

    fn sliding(&self, cell: Cell, now: u64, cost: u32) -> (Verdict, Cell) {
        let w = u128::from(self.window_us);
        let idx = now / self.window_us;
        let elapsed = u128::from(now % self.window_us);
        let (curr, prev) = if cell.a == idx {
            (cell.b, cell.c)
        } else if cell.a.checked_add(1) == Some(idx) {
            (0, cell.b)
        } else {
            (0, 0)
        };
        let limit = u128::from(self.limit);
        let prev_w = u128::from(prev) * (w - elapsed);
        let used = |curr: u32| prev_w + u128::from(curr) * w;
        let cap = limit * w;
        let allowed = used(curr.saturating_add(cost)) <= cap;
        let curr_after = if allowed {
            curr.saturating_add(cost)
        } else {
            curr
        };
        let remaining = (cap.saturating_sub(used(curr_after)) / w) as u32;
        let to_window_end = (w - elapsed) as u64;
        // When a request of `cost` fits, counting `curr` in this window.
        let wait = |curr: u32, cost: u32| -> u64 {
            if u128::from(curr) + u128::from(cost) <= limit && prev > 0 {
                // Within this window, once enough of the previous window has slid out.
                let room = (limit - u128::from(curr) - u128::from(cost)) * w;
                let max_left = room / u128::from(prev);
                (w - elapsed).saturating_sub(max_left) as u64
            } else if cost <= self.limit {
                // In the next window, when this window's count has slid out enough.
                let e = if curr == 0 {
                    0
                } else {
                    let room = (limit - u128::from(cost)) * w;
                    w.saturating_sub(room / u128::from(curr))
                };
                to_window_end + e as u64
            } else {
                2 * self.window_us
            }
        };
        let retry_after_us = if allowed { 0 } else { wait(curr, cost) };
        // What `RateLimit: t` says: with nothing left, when the next request fits (so it
        // agrees with `Retry-After`); else when this window's count starts to slide out.
        let reset_us = if remaining == 0 {
            wait(curr_after, 1).max(1)
        } else if curr_after > 0 || prev > 0 {
            to_window_end
        } else {
            0
        };
        let new = if allowed {
            Cell {
                a: idx,
                b: curr_after,
                c: prev,
            }
        } else {
            cell
        };
        (
            Verdict {
                allowed,
                remaining,
                reset_us,
                retry_after_us: retry_after_us.max(u64::from(!allowed)),
            },
            new,
        )
    }

    fn gcra(&self, cell: Cell, now: u64, cost: u32) -> (Verdict, Cell) {
        let t = (self.window_us / u64::from(self.limit)).max(1);
        let burst = if self.burst == 0 {
            self.limit
        } else {
            self.burst
        };
        let tolerance = t.saturating_mul(u64::from(burst));
        let tat = cell.a.max(now);
        let new_tat = tat.saturating_add(t.saturating_mul(u64::from(cost)));
        let allowed = new_tat - now <= tolerance;
        let tat_after = if allowed { new_tat } else { tat };
        let remaining = (tolerance.saturating_sub(tat_after - now) / t) as u32;
        let retry_after_us = if allowed {
            0
        } else if u64::from(cost) > u64::from(burst) {
            2 * self.window_us
        } else {
            (new_tat - tolerance - now).max(1)
        };
        let new = if allowed {
            Cell {
                a: new_tat,
                b: 0,
                c: 0,
            }
        } else {
            cell
        };
        (
            Verdict {
                allowed,
                remaining,
                reset_us: tat_after - now,
                retry_after_us,
            },
            new,
        )
    }

    fn fixed(&self, cell: Cell, now: u64, cost: u32) -> (Verdict, Cell) {
        let idx = now / self.window_us;
        let to_end = self.window_us - now % self.window_us;
        let count = if cell.a == idx { cell.b } else { 0 };
        let allowed = u64::from(count) + u64::from(cost) <= u64::from(self.limit);
        let after = if allowed { count + cost } else { count };
        let retry_after_us = if allowed {
            0
        } else if cost > self.limit {
            2 * self.window_us
        } else {
            to_end
        };
        let new = if allowed {
            Cell {
                a: idx,
                b: after,
                c: 0,
            }
        } else {
            cell
        };
        (
            Verdict {
                allowed,
                remaining: self.limit.saturating_sub(after),
                reset_us: to_end,
                retry_after_us,
            },
            new,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    fn run(rule: &Rule, times: &[u64]) -> Vec<bool> {
        let mut cell = Cell::default();
        times
            .iter()
            .map(|&t| {
                let (v, c) = rule.evaluate(cell, t, 1);
                cell = c;
                v.allowed
            })
            .collect()
    }

    #[test]
    fn sliding_window_admits_exactly_the_limit_in_one_window() {
        let r = Rule::new(60, 60 * S, Algorithm::SlidingWindow, 0);
        let times: Vec<u64> = (0..100).map(|i| 120 * S + i * 1000).collect();
        let got = run(&r, &times);
        assert_eq!(got.iter().filter(|a| **a).count(), 60);
        assert!(got[..60].iter().all(|a| *a));
    }

    #[test]
    fn sliding_window_weighs_the_previous_window() {
        let r = Rule::new(10, 10 * S, Algorithm::SlidingWindow, 0);
        let mut cell = Cell::default();
        for i in 0..10 {
            let (v, c) = r.evaluate(cell, 100 * S + i, 1);
            assert!(v.allowed);
            cell = c;
        }
        // At the very start of the next window, the previous 10 still weigh fully.
        let (v, _) = r.evaluate(cell, 110 * S, 1);
        assert!(!v.allowed);
        // Half-way through the next window half of them have slid out: 5 more fit.
        let mut allowed = 0;
        let mut c2 = cell;
        for i in 0..10 {
            let (v, c) = r.evaluate(c2, 115 * S + i, 1);
            if v.allowed {
                allowed += 1;
                c2 = c;
            }
        }
        assert_eq!(allowed, 5);
        // Two windows later everything is forgotten.
        let (v, _) = r.evaluate(cell, 121 * S, 1);
        assert_eq!(v.remaining, 9);
    }

    #[test]
    fn sliding_retry_after_is_when_a_request_fits_again() {
        let r = Rule::new(10, 10 * S, Algorithm::SlidingWindow, 0);
        let mut cell = Cell::default();
        for i in 0..10 {
            cell = r.evaluate(cell, 100 * S + i, 1).1;
        }
        let (v, _) = r.evaluate(cell, 105 * S, 1);
        assert!(!v.allowed);
        let retry = v.retry_after_us;
        let (before, _) = r.evaluate(cell, 105 * S + retry - 2, 1);
        let (after, _) = r.evaluate(cell, 105 * S + retry, 1);
        assert!(!before.allowed, "retry_after must not be early");
        assert!(after.allowed, "retry_after must be enough");
    }

    #[test]
    fn sliding_retry_after_of_a_burst_at_a_window_start_passes_the_window_end() {
        // 60 a minute, all taken in the window's first instant: the 61st fits again only once
        // a sixtieth of them has slid out of the next window, 61 s later, not 60 (the
        // integration tests' Retry-After bounds rest on this).
        let r = Rule::new(60, 60 * S, Algorithm::SlidingWindow, 0);
        let mut cell = Cell::default();
        for _ in 0..60 {
            cell = r.evaluate(cell, 120 * S, 1).1;
        }
        let (v, _) = r.evaluate(cell, 120 * S, 1);
        assert!(!v.allowed);
        assert_eq!(v.retry_after_us, 61 * S);
        assert!(!r.evaluate(cell, 120 * S + 61 * S - 1, 1).0.allowed);
        assert!(r.evaluate(cell, 120 * S + 61 * S, 1).0.allowed);
    }

    #[test]
    fn gcra_allows_burst_then_paces() {
        let r = Rule::new(10, 10 * S, Algorithm::TokenBucket, 5);
        let mut cell = Cell::default();
        let t0 = 50 * S;
        for _ in 0..5 {
            let (v, c) = r.evaluate(cell, t0, 1);
            assert!(v.allowed);
            cell = c;
        }
        let (v, _) = r.evaluate(cell, t0, 1);
        assert!(!v.allowed);
        assert_eq!(v.retry_after_us, S);
        // One emission interval later exactly one more fits.
        let (v, c) = r.evaluate(cell, t0 + S, 1);
        assert!(v.allowed);
        assert!(!r.evaluate(c, t0 + S, 1).0.allowed);
    }

    #[test]
    fn gcra_cost_counts_several_tokens() {
        let r = Rule::new(10, 10 * S, Algorithm::TokenBucket, 0);
        let (v, c) = r.evaluate(Cell::default(), 7 * S, 4);
        assert!(v.allowed);
        assert_eq!(v.remaining, 6);
        let (v, c) = r.evaluate(c, 7 * S, 6);
        assert!(v.allowed);
        assert_eq!(v.remaining, 0);
        assert!(!r.evaluate(c, 7 * S, 1).0.allowed);
        // A cost over the burst never fits.
        assert!(!r.evaluate(Cell::default(), 7 * S, 11).0.allowed);
    }

    #[test]
    fn fixed_window_resets_at_the_edge() {
        let r = Rule::new(3, 10 * S, Algorithm::FixedWindow, 0);
        let got = run(&r, &[0, 1, 2, 3, 10 * S - 1, 10 * S, 10 * S + 1]);
        assert_eq!(got, [true, true, true, false, false, true, true]);
    }

    #[test]
    fn clock_going_forward_never_grants_more_than_the_limit_per_window() {
        for alg in [
            Algorithm::SlidingWindow,
            Algorithm::FixedWindow,
            Algorithm::TokenBucket,
        ] {
            let r = Rule::new(20, 10 * S, alg, 0);
            let mut cell = Cell::default();
            let mut admitted: Vec<u64> = Vec::new();
            let mut t = 1000 * S;
            for i in 0..5000u64 {
                t += (i * 7919) % 50_000;
                let (v, c) = r.evaluate(cell, t, 1);
                if v.allowed {
                    admitted.push(t);
                    cell = c;
                }
            }
            // In any window of length W at most 2×limit (fixed-window edge), and for the
            // sliding window and GCRA at most limit (+burst) — check the weak bound for all.
            for (i, &a) in admitted.iter().enumerate() {
                let n = admitted[i..]
                    .iter()
                    .take_while(|&&b| b < a + 10 * S)
                    .count();
                assert!(n <= 40, "{alg:?}: {n} in one window");
            }
        }
    }

    /// `RateLimit: t` never says more than the window while quota is left, and with none
    /// left it says what `Retry-After` says: when the next request fits.
    #[test]
    fn sliding_window_reset_is_within_the_window_and_agrees_with_retry_after() {
        let w = 60 * S;
        let r = Rule::new(10, w, Algorithm::SlidingWindow, 0);
        let mut cell = Cell::default();
        let mut now = 7 * w + 13 * S;
        for step in 0..400u64 {
            let (v, c) = r.evaluate(cell, now, 1);
            cell = c;
            if v.remaining > 0 {
                assert!(v.reset_us <= w, "step {step}: t {} > w", v.reset_us);
            } else {
                assert!(v.reset_us > 0, "step {step}");
            }
            if !v.allowed {
                assert_eq!(v.reset_us, v.retry_after_us, "step {step}");
                // And it is right: a request then fits.
                let (then, _) = r.evaluate(cell, now + v.retry_after_us, 1);
                assert!(then.allowed, "step {step}");
            }
            now += (step % 7 + 1) * S / 2;
        }
    }
}

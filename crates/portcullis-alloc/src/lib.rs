//! The global allocator of the `portcullis` binary: mimalloc, called the way its fast path
//! wants.
//!
//! The `mimalloc` crate's `GlobalAlloc` passes every allocation to `mi_malloc_aligned`, with
//! the layout's alignment. In mimalloc 3, that call takes the plain fast path only for blocks
//! of at most 1 KiB; a larger block with any alignment at all (even 1 or 8) goes through
//! `mi_theap_malloc_zero_aligned_at_overalloc`, which allocates `size + align - 1` bytes on
//! the slow path. A gateway does that several times a request: a header map's entries, a
//! boxed request future, hyper's buffers (see purpleprotocol/mimalloc_rust#170).
//!
//! Every mimalloc block is aligned to a machine word, so [`MiMalloc`] asks for a plain block
//! (`mi_malloc`, `mi_zalloc`, `mi_realloc`) whenever the layout's alignment is at most
//! [`PLAIN_ALIGN`], and for an aligned one otherwise. On the gateway this cut about 1.6k of
//! 55k instructions per proxied request (`bench/callgrind.sh`).
//!
//! This is the workspace's one crate with `unsafe` code: the library and the gateway forbid
//! it, and a `GlobalAlloc` cannot be written without it.
//!
//! ```
//! #[global_allocator]
//! static ALLOCATOR: portcullis_alloc::MiMalloc = portcullis_alloc::MiMalloc;
//!
//! let v: Vec<u64> = (0..1000).collect();
//! assert_eq!(v.iter().sum::<u64>(), 499_500);
//! ```

#![no_std]
#![warn(missing_docs)]

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::c_void;

use libmimalloc_sys as ffi;

/// The largest alignment every mimalloc block has: a machine word.
///
/// ```
/// assert_eq!(portcullis_alloc::PLAIN_ALIGN, core::mem::size_of::<usize>());
/// ```
pub const PLAIN_ALIGN: usize = core::mem::size_of::<usize>();

/// mimalloc as a [`GlobalAlloc`], with plain calls where they are aligned enough.
///
/// ```
/// use core::alloc::{GlobalAlloc, Layout};
///
/// let layout = Layout::from_size_align(4096, 8).unwrap();
/// // SAFETY: the layout has a non-zero size, and the block is freed with the same layout.
/// unsafe {
///     let p = portcullis_alloc::MiMalloc.alloc(layout);
///     assert!(!p.is_null());
///     portcullis_alloc::MiMalloc.dealloc(p, layout);
/// }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct MiMalloc;

// SAFETY: every block comes from mimalloc with at least the layout's size and alignment
// (a plain block is word-aligned, and only layouts aligned to at most a word take one), and
// every block goes back to mimalloc's `mi_free`, which takes plain and aligned blocks alike.
// `mi_realloc` keeps a plain block plain; an aligned one is reallocated with its alignment.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain FFI calls; mimalloc returns null when out of memory.
        unsafe {
            if layout.align() <= PLAIN_ALIGN {
                ffi::mi_malloc(layout.size()).cast()
            } else {
                ffi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe {
            if layout.align() <= PLAIN_ALIGN {
                ffi::mi_zalloc(layout.size()).cast()
            } else {
                ffi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: the caller passes a block this allocator returned.
        unsafe { ffi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller passes a block this allocator returned with `layout`.
        unsafe {
            if layout.align() <= PLAIN_ALIGN {
                ffi::mi_realloc(ptr.cast(), new_size).cast()
            } else {
                ffi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes around mimalloc's small/large boundaries, and the alignments Rust types use.
    const SIZES: [usize; 14] = [
        1,
        7,
        8,
        24,
        48,
        100,
        1000,
        1024,
        1025,
        1500,
        4096,
        8200,
        70_000,
        5 << 20,
    ];
    const ALIGNS: [usize; 8] = [1, 2, 4, 8, 16, 64, 128, 4096];

    #[test]
    fn blocks_have_the_size_and_alignment_asked_for() {
        for size in SIZES {
            for align in ALIGNS {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: non-zero size; freed with the same layout.
                unsafe {
                    let p = MiMalloc.alloc(layout);
                    assert!(!p.is_null(), "{size} bytes aligned to {align}");
                    assert_eq!(p as usize % align, 0, "{size} bytes aligned to {align}");
                    p.write_bytes(0xa5, size);
                    MiMalloc.dealloc(p, layout);
                }
            }
        }
    }

    #[test]
    fn zeroed_blocks_are_zero() {
        for size in SIZES {
            for align in ALIGNS {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: non-zero size; freed with the same layout.
                unsafe {
                    // Dirty a block of this size first, so a reused one would show.
                    let d = MiMalloc.alloc(layout);
                    d.write_bytes(0xff, size);
                    MiMalloc.dealloc(d, layout);
                    let p = MiMalloc.alloc_zeroed(layout);
                    assert_eq!(p as usize % align, 0);
                    let bytes = core::slice::from_raw_parts(p, size);
                    assert!(
                        bytes.iter().all(|&b| b == 0),
                        "{size} bytes aligned to {align}"
                    );
                    MiMalloc.dealloc(p, layout);
                }
            }
        }
    }

    #[test]
    fn realloc_keeps_the_contents_and_the_alignment() {
        for align in ALIGNS {
            for (from, to) in [
                (8, 2000),
                (1000, 1030),
                (5000, 100),
                (100, 70_000),
                (24, 24),
            ] {
                let layout = Layout::from_size_align(from, align).unwrap();
                // SAFETY: non-zero sizes; each block is freed with its current layout.
                unsafe {
                    let p = MiMalloc.alloc(layout);
                    for i in 0..from {
                        p.add(i).write(i as u8);
                    }
                    let q = MiMalloc.realloc(p, layout, to);
                    assert!(!q.is_null());
                    assert_eq!(q as usize % align, 0, "{from} -> {to} aligned to {align}");
                    for i in 0..from.min(to) {
                        assert_eq!(
                            q.add(i).read(),
                            i as u8,
                            "{from} -> {to} aligned to {align}"
                        );
                    }
                    MiMalloc.dealloc(q, Layout::from_size_align(to, align).unwrap());
                }
            }
        }
    }
}

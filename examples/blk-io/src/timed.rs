//! [`TimedHal`]: a `Hal` wrapper that adds up the time spent in `share` and
//! `unshare`, for the benchmark's profile pass ([`crate::bench::matrix`]).
//!
//! Time is in [`platform::arch::cycles`] ticks (the generic timer's virtual
//! count on aarch64, the TSC on x86_64): cheap to read, and only compared
//! with other ticks of the same run. Timing is off until
//! [`enable`], so that the measured rounds pay nothing but a
//! load. State in statics, plain loads and stores: see [`crate::TrapHal`].

use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use virtio_drivers::{BufferDirection, Hal, PhysAddr};

static ON: AtomicBool = AtomicBool::new(false);
static SHARE: AtomicU64 = AtomicU64::new(0);
static UNSHARE: AtomicU64 = AtomicU64::new(0);

/// Ticks spent in the `Hal`'s `share` and `unshare` so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HalTime {
    /// In `share`.
    pub share: u64,
    /// In `unshare`.
    pub unshare: u64,
}

impl HalTime {
    /// The time between `before` and `self`.
    pub fn since(self, before: HalTime) -> HalTime {
        HalTime {
            share: self.share.saturating_sub(before.share),
            unshare: self.unshare.saturating_sub(before.unshare),
        }
    }
}

/// A `Hal` that delegates to `H` and, while enabled, adds up the ticks each
/// `share` and `unshare` takes.
#[derive(Debug)]
pub struct TimedHal<H>(PhantomData<H>);

/// Turns timing on or off (for every `TimedHal`).
pub fn enable(on: bool) {
    ON.store(on, Relaxed);
}

/// The ticks added up so far.
pub fn time() -> HalTime {
    HalTime {
        share: SHARE.load(Relaxed),
        unshare: UNSHARE.load(Relaxed),
    }
}

fn timed<T>(into: &AtomicU64, f: impl FnOnce() -> T) -> T {
    if !ON.load(Relaxed) {
        return f();
    }
    let start = platform::arch::cycles();
    let r = f();
    let spent = platform::arch::cycles().wrapping_sub(start);
    into.store(into.load(Relaxed).wrapping_add(spent), Relaxed);
    r
}

// SAFETY: every method is `H`'s, with the same arguments and results.
unsafe impl<H: Hal> Hal for TimedHal<H> {
    fn dma_alloc(pages: usize, direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        H::dma_alloc(pages, direction)
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: forwarded from the caller.
        unsafe { H::dma_dealloc(paddr, vaddr, pages) }
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        // SAFETY: forwarded from the caller.
        unsafe { H::mmio_phys_to_virt(paddr, size) }
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
        // SAFETY: forwarded from the caller.
        timed(&SHARE, || unsafe { H::share(buffer, direction) })
    }

    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
        // SAFETY: forwarded from the caller.
        timed(&UNSHARE, || unsafe { H::unshare(paddr, buffer, direction) })
    }
}

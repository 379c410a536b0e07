//! [`TrapHal`]: a `Hal` wrapper for the stale-buffer probe.
//!
//! It delegates everything to `H`, and can
//!
//! * **watch** a buffer: the next time the driver shares a buffer starting
//!   at that address, the device address `H::share` returned is recorded
//!   ([`TrapHal::recorded`]);
//! * **arm** a stale address for a buffer: the next time the driver shares
//!   a buffer starting at that address, `H::share` is *not* called and the
//!   stale device address is returned instead; the matching `unshare` is
//!   skipped too (`H` never saw that share).
//!
//! `Hal` has no `self`, so the trap's state is in statics: one trap per
//! program, whatever `H`. Single CPU with interrupts masked: plain atomic
//! loads and stores (no read-modify-write, which needs exclusive accesses
//! that do not work on aarch64 with the MMU off).

use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};

use virtio_drivers::{BufferDirection, Hal, PhysAddr};

static WATCH_PTR: AtomicUsize = AtomicUsize::new(0);
static RECORDED: AtomicU64 = AtomicU64::new(0);
static RECORDED_SET: AtomicBool = AtomicBool::new(false);
static ARM_PTR: AtomicUsize = AtomicUsize::new(0);
static ARM_ADDR: AtomicU64 = AtomicU64::new(0);
static SKIP_PTR: AtomicUsize = AtomicUsize::new(0);
static SKIP_ADDR: AtomicU64 = AtomicU64::new(0);
static SUBSTITUTED: AtomicBool = AtomicBool::new(false);
static SHARES: AtomicU64 = AtomicU64::new(0);
static UNSHARES: AtomicU64 = AtomicU64::new(0);

/// A `Hal` that delegates to `H`, with a trap for one buffer (see the
/// module docs).
#[derive(Debug)]
pub struct TrapHal<H>(PhantomData<H>);

impl<H: Hal> TrapHal<H> {
    /// Records the device address of the next share of a buffer that
    /// starts at `buffer` (forgets any earlier record).
    pub fn watch(buffer: *const u8) {
        RECORDED_SET.store(false, Relaxed);
        WATCH_PTR.store(buffer as usize, Relaxed);
    }

    /// The device address recorded by [`watch`](Self::watch), once the
    /// buffer was shared.
    pub fn recorded() -> Option<PhysAddr> {
        RECORDED_SET.load(Relaxed).then(|| RECORDED.load(Relaxed))
    }

    /// The next share of a buffer that starts at `buffer` returns `stale`
    /// without calling `H::share`, and its unshare is skipped.
    ///
    /// # Safety
    ///
    /// The device will DMA to `stale` as if it were the buffer: the caller
    /// must be sure that nothing the program relies on can be reached
    /// there (e.g. it is an IOVA nothing is mapped at, reserved so nothing
    /// will be, or, without an IOMMU, the buffer's own physical address).
    pub unsafe fn arm(buffer: *const u8, stale: PhysAddr) {
        SUBSTITUTED.store(false, Relaxed);
        ARM_ADDR.store(stale, Relaxed);
        ARM_PTR.store(buffer as usize, Relaxed);
    }

    /// Cancels an armed substitution that has not happened, and a watch.
    pub fn disarm() {
        ARM_PTR.store(0, Relaxed);
        WATCH_PTR.store(0, Relaxed);
    }

    /// Whether the armed stale address was handed to the driver.
    pub fn substituted() -> bool {
        SUBSTITUTED.load(Relaxed)
    }

    /// Shares and unshares passed on to `H` so far.
    pub fn delegated() -> (u64, u64) {
        (SHARES.load(Relaxed), UNSHARES.load(Relaxed))
    }
}

fn bump(counter: &AtomicU64) {
    counter.store(counter.load(Relaxed).wrapping_add(1), Relaxed);
}

// SAFETY: every method delegates to `H`, which upholds the contract,
// except the one share `arm` substitutes, whose soundness the caller of the
// unsafe `arm` vouched for; its unshare is skipped because `H` never
// shared it.
unsafe impl<H: Hal> Hal for TrapHal<H> {
    fn dma_alloc(pages: usize, direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        H::dma_alloc(pages, direction)
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: forwarded unchanged from our caller, who upholds the contract.
        unsafe { H::dma_dealloc(paddr, vaddr, pages) }
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        // SAFETY: forwarded unchanged.
        unsafe { H::mmio_phys_to_virt(paddr, size) }
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
        let ptr = buffer.as_ptr().cast::<u8>() as usize;
        let armed = ARM_PTR.load(Relaxed);
        if armed != 0 && armed == ptr {
            let stale = ARM_ADDR.load(Relaxed);
            ARM_PTR.store(0, Relaxed);
            SKIP_ADDR.store(stale, Relaxed);
            SKIP_PTR.store(ptr, Relaxed);
            SUBSTITUTED.store(true, Relaxed);
            return stale;
        }
        bump(&SHARES);
        // SAFETY: forwarded unchanged.
        let addr = unsafe { H::share(buffer, direction) };
        let watched = WATCH_PTR.load(Relaxed);
        if watched != 0 && watched == ptr {
            WATCH_PTR.store(0, Relaxed);
            RECORDED.store(addr, Relaxed);
            RECORDED_SET.store(true, Relaxed);
        }
        addr
    }

    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
        let ptr = buffer.as_ptr().cast::<u8>() as usize;
        let skip = SKIP_PTR.load(Relaxed);
        if skip != 0 && skip == ptr && SKIP_ADDR.load(Relaxed) == paddr {
            SKIP_PTR.store(0, Relaxed);
            return;
        }
        bump(&UNSHARES);
        // SAFETY: forwarded unchanged; `paddr` came from `H::share` (the
        // substituted one is filtered out above).
        unsafe { H::unshare(paddr, buffer, direction) }
    }
}

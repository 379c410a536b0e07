//! Memory for the SMMU's queues, stream table, context descriptors and page
//! tables: a bump allocator over one block of the platform's frame pool,
//! handing out power-of-two sizes aligned to their size (the SMMU's queue and
//! table bases need that), zeroed. Single CPU with interrupts masked: plain
//! loads and stores.

use core::sync::atomic::{AtomicUsize, Ordering};

use iova_core::{FrameAllocator, PhysAddr};
use platform::frames::Frames;

/// The pool.
pub struct Pool {
    block: Frames,
    next: AtomicUsize,
    freed: AtomicUsize,
}

impl Pool {
    /// A pool over `block` (identity-mapped: physical address = pointer).
    pub fn new(block: Frames) -> Self {
        Self {
            block,
            next: AtomicUsize::new(0),
            freed: AtomicUsize::new(0),
        }
    }

    /// The block: physical start and length.
    pub fn range(&self) -> (u64, u64) {
        (self.block.phys(), self.block.len() as u64)
    }

    /// Bytes handed out (with alignment padding).
    pub fn used(&self) -> usize {
        self.next.load(Ordering::Relaxed)
    }

    /// Frees seen (a bump pool does not reuse memory).
    pub fn freed(&self) -> usize {
        self.freed.load(Ordering::Relaxed)
    }
}

// SAFETY: every allocation is a fresh, zeroed, size-aligned range of a block
// this program owns and never hands out twice; memory is identity mapped and
// QEMU's SMMU is coherent with the CPU.
unsafe impl FrameAllocator for Pool {
    fn alloc_zeroed(&self, size: usize) -> Option<PhysAddr> {
        if !size.is_power_of_two() {
            return None;
        }
        let base = self.block.phys() as usize;
        let used = self.next.load(Ordering::Relaxed);
        let start = (base + used).checked_next_multiple_of(size)?;
        let end = start.checked_add(size)?;
        if end > base + self.block.len() {
            return None;
        }
        self.next.store(end - base, Ordering::Relaxed);
        // SAFETY: inside our block, never handed out before.
        unsafe { core::ptr::write_bytes(start as *mut u8, 0, size) };
        Some(PhysAddr(start as u64))
    }

    unsafe fn free(&self, _: PhysAddr, _: usize) {
        let n = self.freed.load(Ordering::Relaxed);
        self.freed.store(n + 1, Ordering::Relaxed);
    }

    fn phys_to_virt(&self, pa: PhysAddr) -> *mut u8 {
        pa.0 as *mut u8
    }
}

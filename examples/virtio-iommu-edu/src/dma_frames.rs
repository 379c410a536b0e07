//! [`DmaFrames`]: the `iova_core::FrameAllocator` behind the blk scenario's
//! `DmaShares` (virtqueue memory and bounce pages), over one block of the
//! platform's frame pool.
//!
//! Unlike the platform's bump allocator it takes memory back: every
//! virtio-blk request bounces its 16-byte header and 1-byte status into
//! pages of their own, so the benchmark's 2176 requests would otherwise need
//! thousands of frames. Power-of-two blocks, aligned to their size (what the
//! trait promises), from a free list per size or bumped from the block;
//! zeroed on allocation. A freed block holds the list's link in its first
//! word: nothing else may touch it once freed (the trait's contract).

use iova_core::{FrameAllocator, PhysAddr};
use platform::frames::{FRAME_SIZE, Frames};

/// Block sizes kept: 4 KiB << 0..ORDERS (up to 64 KiB).
const ORDERS: usize = 5;

struct Inner {
    base: usize,
    end: usize,
    next: usize,
    /// Head of each order's free list (0: empty).
    free: [usize; ORDERS],
    in_use: usize,
    high_water: usize,
}

/// What the pool has done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaFramesStats {
    /// Bytes handed out and not yet freed.
    pub in_use: usize,
    /// The most bytes handed out at once.
    pub high_water: usize,
    /// Bytes of the block ever bumped (the rest was never touched).
    pub bumped: usize,
}

/// Zeroed power-of-two frames with reuse; see the module docs.
pub struct DmaFrames {
    inner: spin::Mutex<Inner>,
}

fn order_of(size: usize) -> Option<usize> {
    let size = size.max(FRAME_SIZE);
    if !size.is_power_of_two() {
        return None;
    }
    let order = (size / FRAME_SIZE).trailing_zeros() as usize;
    (order < ORDERS).then_some(order)
}

impl DmaFrames {
    /// A pool over `block` (identity-mapped: physical address = pointer),
    /// which it owns for the rest of the program.
    pub fn new(block: Frames) -> Self {
        let base = block.phys() as usize;
        let end = base + block.len();
        Self {
            inner: spin::Mutex::new(Inner {
                base,
                end,
                next: base,
                free: [0; ORDERS],
                in_use: 0,
                high_water: 0,
            }),
        }
    }

    /// Counts so far.
    pub fn stats(&self) -> DmaFramesStats {
        let i = self.inner.lock();
        DmaFramesStats {
            in_use: i.in_use,
            high_water: i.high_water,
            bumped: i.next - i.base,
        }
    }
}

// SAFETY: a block is handed out either fresh from the bump region (never
// handed out before, inside the block this pool owns) or from a free list
// (freed by its owner, who no longer touches it); never twice at once. It is
// zeroed before it is returned, aligned to its size (bumped blocks are
// aligned up; a freed block kept its alignment), and identity-mapped, so
// `phys_to_virt` is the identity. QEMU's DMA is coherent with the CPU.
unsafe impl FrameAllocator for DmaFrames {
    fn alloc_zeroed(&self, size: usize) -> Option<PhysAddr> {
        let order = order_of(size)?;
        let bytes = FRAME_SIZE << order;
        let mut i = self.inner.lock();
        let start = if i.free[order] != 0 {
            let head = i.free[order];
            // SAFETY: `head` is a freed block of ours; its first word holds
            // the next link (written by `free`).
            i.free[order] = unsafe { core::ptr::read(head as *const usize) };
            head
        } else {
            let start = i.next.checked_next_multiple_of(bytes)?;
            let end = start.checked_add(bytes)?;
            if end > i.end {
                return None;
            }
            i.next = end;
            start
        };
        i.in_use += bytes;
        i.high_water = i.high_water.max(i.in_use);
        // SAFETY: [start, start + bytes) is ours and nobody else's now.
        unsafe { core::ptr::write_bytes(start as *mut u8, 0, bytes) };
        Some(PhysAddr(start as u64))
    }

    unsafe fn free(&self, pa: PhysAddr, size: usize) {
        let Some(order) = order_of(size) else {
            return;
        };
        let at = pa.0 as usize;
        let mut i = self.inner.lock();
        if at < i.base || at >= i.next || !at.is_multiple_of(FRAME_SIZE << order) {
            // Not a block of ours: keep it out of the lists (a caller bug;
            // leak it).
            return;
        }
        // SAFETY: the caller gives the block back (from `alloc_zeroed` with
        // this size) and no longer touches it; its first word is the link.
        unsafe { core::ptr::write(at as *mut usize, i.free[order]) };
        i.free[order] = at;
        i.in_use = i.in_use.saturating_sub(FRAME_SIZE << order);
    }

    fn phys_to_virt(&self, pa: PhysAddr) -> *mut u8 {
        pa.0 as usize as *mut u8
    }
}

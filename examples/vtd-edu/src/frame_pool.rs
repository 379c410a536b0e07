//! [`FramePool`]: frames that are freed and handed out again, for the `blk`
//! scenarios (the unit's structures, the domain's page tables, the
//! virtqueue and the bounce pages of `iova-virtio-hal`).
//!
//! The checks' `TablePool` is a bump allocator, which is enough for a few
//! dozen mappings. virtio-blk through `DmaShares` allocates and frees two
//! bounce pages per request (header and status), thousands of times in the
//! benchmark, so this pool reuses what is freed: one bit per 4 KiB frame of
//! a block of the platform pool. An allocation of `size` bytes (a power of
//! two) is a run of free frames aligned to `size`, first fit.

use core::sync::atomic::{AtomicU64, Ordering};

use iova_core::{FrameAllocator, PhysAddr};
use platform::frames::{FRAME_SIZE, Frames};
use spin::Mutex;

/// Frames a pool can hold (one bit each).
pub const MAX_FRAMES: usize = 256;
const WORDS: usize = MAX_FRAMES / 64;

/// A pool of reusable, zeroed frames over one block (identity mapped: a
/// frame's physical address is its pointer).
pub struct FramePool {
    /// Owned for the program's life (never handed back to the platform).
    _block: Frames,
    base: u64,
    frames: usize,
    used: Mutex<[u64; WORDS]>,
    allocs: AtomicU64,
    frees: AtomicU64,
    bad_frees: AtomicU64,
    peak: AtomicU64,
}

impl FramePool {
    /// A pool over `block` (at most [`MAX_FRAMES`] of it is used).
    pub fn new(block: Frames) -> Self {
        let frames = (block.len() / FRAME_SIZE).min(MAX_FRAMES);
        let base = block.phys();
        Self {
            _block: block,
            base,
            frames,
            used: Mutex::new([0; WORDS]),
            allocs: AtomicU64::new(0),
            frees: AtomicU64::new(0),
            bad_frees: AtomicU64::new(0),
            peak: AtomicU64::new(0),
        }
    }

    /// Frames handed out now.
    pub fn in_use(&self) -> usize {
        self.used
            .lock()
            .iter()
            .map(|w| w.count_ones() as usize)
            .sum()
    }

    /// Most frames in use at once so far.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Allocations and frees so far, and frees of something the pool never
    /// handed out (ignored).
    pub fn stats(&self) -> (u64, u64, u64) {
        (
            self.allocs.load(Ordering::Relaxed),
            self.frees.load(Ordering::Relaxed),
            self.bad_frees.load(Ordering::Relaxed),
        )
    }

    /// The frame range `[first, first + count)` of an allocation, if it is
    /// one the pool could have made.
    fn span(&self, pa: PhysAddr, size: usize) -> Option<(usize, usize)> {
        if !size.is_power_of_two() || size < FRAME_SIZE {
            return None;
        }
        let off = pa.0.checked_sub(self.base)? as usize;
        if !off.is_multiple_of(FRAME_SIZE) {
            return None;
        }
        let (first, count) = (off / FRAME_SIZE, size / FRAME_SIZE);
        (first.checked_add(count)? <= self.frames).then_some((first, count))
    }
}

fn is_used(map: &[u64; WORDS], i: usize) -> bool {
    map[i / 64] & 1 << (i % 64) != 0
}

fn set(map: &mut [u64; WORDS], first: usize, count: usize, used: bool) {
    for i in first..first + count {
        if used {
            map[i / 64] |= 1 << (i % 64);
        } else {
            map[i / 64] &= !(1 << (i % 64));
        }
    }
}

// SAFETY: an allocation is a run of frames of the pool's block whose bits
// were clear (not handed out) and are set until `free` clears them; it is
// zeroed before it is returned, its physical address is aligned to its
// size (the search starts at the first aligned frame and steps by the
// size), and memory is identity mapped, so `phys_to_virt` is the identity.
unsafe impl FrameAllocator for FramePool {
    fn alloc_zeroed(&self, size: usize) -> Option<PhysAddr> {
        if !size.is_power_of_two() {
            return None;
        }
        let size = size.max(FRAME_SIZE);
        let count = size / FRAME_SIZE;
        let mut map = self.used.lock();
        // First fit over runs whose physical address is aligned to `size`.
        let skew = (self.base % size as u64) as usize / FRAME_SIZE;
        let mut first = (count - skew) % count;
        while first + count <= self.frames {
            if (first..first + count).all(|i| !is_used(&map, i)) {
                set(&mut map, first, count, true);
                let in_use: u64 = map.iter().map(|w| u64::from(w.count_ones())).sum();
                drop(map);
                self.peak.fetch_max(in_use, Ordering::Relaxed);
                self.allocs.fetch_add(1, Ordering::Relaxed);
                let pa = self.base + (first * FRAME_SIZE) as u64;
                // SAFETY: frames of our block that nobody holds (their bits
                // were clear), identity mapped.
                unsafe { core::ptr::write_bytes(pa as usize as *mut u8, 0, size) };
                return Some(PhysAddr(pa));
            }
            first += count;
        }
        None
    }

    unsafe fn free(&self, pa: PhysAddr, size: usize) {
        let Some((first, count)) = self.span(pa, size.max(FRAME_SIZE)) else {
            self.bad_frees.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut map = self.used.lock();
        if !(first..first + count).all(|i| is_used(&map, i)) {
            // Not (all) handed out: a double free or a size that does not
            // match. Leave the map alone rather than free a neighbour.
            drop(map);
            self.bad_frees.fetch_add(1, Ordering::Relaxed);
            return;
        }
        set(&mut map, first, count, false);
        drop(map);
        self.frees.fetch_add(1, Ordering::Relaxed);
    }

    fn phys_to_virt(&self, pa: PhysAddr) -> *mut u8 {
        pa.0 as usize as *mut u8
    }
}

//! Frames that are freed and reused, for the virtio-blk scenarios.
//!
//! The SMMU's bump [`Pool`](crate::pool::Pool) never reuses memory, which
//! is right for the edu scenarios (a handful of tables, then exit) but not
//! for a virtio driver behind the SMMU: every request bounces its 16-byte
//! header and 1-byte status into pages of their own, and the page tables
//! under a freed IOVA come and go. The benchmark issues over 2000 requests,
//! far more pages than the platform pool holds, so these frames come back.
//!
//! A bitmap over one block of the platform's frame pool: one bit per 4 KiB
//! frame, power-of-two sizes aligned to their size (what
//! [`FrameAllocator`] promises), first fit. Zeroed on allocation. A free
//! that does not match an allocation is counted and ignored, never a
//! panic. Identity-mapped memory: a frame's physical address is its
//! pointer.

use iova_core::{FrameAllocator, PhysAddr};
use platform::frames::{FRAME_SIZE, Frames};
use spin::Mutex;

/// The most frames one bitmap covers.
pub const MAX_FRAMES: usize = 512;
const WORDS: usize = MAX_FRAMES / 64;

#[derive(Debug, Default, Clone, Copy)]
struct State {
    used: [u64; WORDS],
    in_use: usize,
    peak: usize,
    allocs: u64,
    frees: u64,
    bad_frees: u64,
    failed: u64,
}

impl State {
    fn is_set(&self, i: usize) -> bool {
        self.used[i / 64] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, i: usize, on: bool) {
        if on {
            self.used[i / 64] |= 1 << (i % 64);
        } else {
            self.used[i / 64] &= !(1 << (i % 64));
        }
    }
}

/// What the allocator has done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameStats {
    /// Frames it manages.
    pub frames: usize,
    /// Frames allocated now.
    pub in_use: usize,
    /// The most frames allocated at once.
    pub peak: usize,
    /// Allocations made.
    pub allocs: u64,
    /// Frees accepted.
    pub frees: u64,
    /// Frees that matched no allocation (ignored).
    pub bad_frees: u64,
    /// Allocations refused (out of frames, bad size).
    pub failed: u64,
}

/// A freeing frame allocator over one block of frames (see the module
/// docs).
pub struct BitmapFrames {
    block: Frames,
    frames: usize,
    state: Mutex<State>,
}

impl BitmapFrames {
    /// An allocator over `block` (its first [`MAX_FRAMES`] frames).
    pub fn new(block: Frames) -> Self {
        let frames = (block.len() / FRAME_SIZE).min(MAX_FRAMES);
        Self {
            block,
            frames,
            state: Mutex::new(State::default()),
        }
    }

    /// Counts so far.
    pub fn stats(&self) -> FrameStats {
        let s = *self.state.lock();
        FrameStats {
            frames: self.frames,
            in_use: s.in_use,
            peak: s.peak,
            allocs: s.allocs,
            frees: s.frees,
            bad_frees: s.bad_frees,
            failed: s.failed,
        }
    }

    /// The frame index of `pa` and the frames `size` covers, if `pa` is a
    /// correctly aligned frame of the block.
    fn index(&self, pa: PhysAddr, size: usize) -> Option<(usize, usize)> {
        let pages = size.div_ceil(FRAME_SIZE).max(1);
        let off = pa.0.checked_sub(self.block.phys())?;
        let i = usize::try_from(off / FRAME_SIZE as u64).ok()?;
        let aligned = off % FRAME_SIZE as u64 == 0;
        (aligned && i.checked_add(pages)? <= self.frames).then_some((i, pages))
    }
}

// SAFETY: a frame is handed out only while its bits are clear and its bits
// stay set until `free`, so no two live allocations overlap; each is zeroed
// before it is returned, aligned to its (power-of-two) size, inside a block
// this allocator owns (taken from the platform pool, never handed out
// elsewhere), and identity mapped; QEMU's SMMU and devices are coherent.
unsafe impl FrameAllocator for BitmapFrames {
    fn alloc_zeroed(&self, size: usize) -> Option<PhysAddr> {
        let mut s = self.state.lock();
        if size == 0 || !size.is_power_of_two() {
            s.failed += 1;
            return None;
        }
        let pages = size.div_ceil(FRAME_SIZE).max(1);
        let align = size.max(FRAME_SIZE) as u64;
        let base = self.block.phys();
        let Some(first) = base.checked_next_multiple_of(align) else {
            s.failed += 1;
            return None;
        };
        let mut i = ((first - base) / FRAME_SIZE as u64) as usize;
        while i + pages <= self.frames {
            if (i..i + pages).all(|k| !s.is_set(k)) {
                for k in i..i + pages {
                    s.set(k, true);
                }
                s.in_use += pages;
                s.peak = s.peak.max(s.in_use);
                s.allocs += 1;
                drop(s);
                let pa = base + (i * FRAME_SIZE) as u64;
                // SAFETY: these frames are inside our block and were free:
                // nobody else holds them.
                unsafe { core::ptr::write_bytes(pa as *mut u8, 0, pages * FRAME_SIZE) };
                return Some(PhysAddr(pa));
            }
            i += pages;
        }
        s.failed += 1;
        None
    }

    unsafe fn free(&self, pa: PhysAddr, size: usize) {
        let mut s = self.state.lock();
        match self.index(pa, size) {
            Some((i, pages)) if (i..i + pages).all(|k| s.is_set(k)) => {
                for k in i..i + pages {
                    s.set(k, false);
                }
                s.in_use -= pages;
                s.frees += 1;
            }
            _ => s.bad_frees += 1,
        }
    }

    fn phys_to_virt(&self, pa: PhysAddr) -> *mut u8 {
        pa.0 as *mut u8
    }
}

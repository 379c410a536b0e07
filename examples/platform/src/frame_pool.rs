//! [`FramePool`]: an [`iova_core::FrameAllocator`] that takes frames back,
//! over one block of the platform's [`frames`](crate::frames) pool.
//!
//! The platform's bump allocator never reuses memory, which suits tables
//! built once. A virtio driver behind an IOMMU is different: every
//! virtio-blk request bounces its 16-byte header and 1-byte status into
//! pages of their own and frees them afterwards, and page tables under a
//! freed IOVA come and go; the blk benchmark's 2176 requests would need
//! thousands of frames from a bump allocator.
//!
//! One bit per 4 KiB frame says whether it is handed out, and a second bit
//! marks the first frame of each allocation, so a free is accepted only if
//! it names exactly one live allocation: its first frame and its length.
//! Anything else (a double free, a size that does not match, an address
//! outside the block or not aligned to its size) is counted in
//! [`FramePoolStats::bad_frees`] and changes nothing; it never panics.
//!
//! An allocation of `size` bytes (a power of two; below a frame it takes a
//! whole frame) is a run of free frames whose physical address is aligned
//! to `size`, first fit, zeroed before it is returned. Memory is identity
//! mapped, so a frame's physical address is its pointer.

use iova_core::{FrameAllocator, PhysAddr};
use spin::Mutex;

use crate::frames::{FRAME_SIZE, Frames, POOL_SIZE};

/// The most frames one pool manages: the whole platform pool, so any block
/// [`crate::frames::FrameAllocator`] hands out fits.
pub const MAX_FRAMES: usize = POOL_SIZE / FRAME_SIZE;
const WORDS: usize = MAX_FRAMES.div_ceil(64);

/// What a pool has done.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FramePoolStats {
    /// Frames the pool manages.
    pub frames: usize,
    /// Frames handed out now.
    pub in_use: usize,
    /// The most frames handed out at once.
    pub peak: usize,
    /// Allocations made.
    pub allocs: u64,
    /// Frees accepted.
    pub frees: u64,
    /// Frees that named no live allocation (ignored).
    pub bad_frees: u64,
    /// Allocations refused (size not a power of two, or no aligned run
    /// of free frames).
    pub failed: u64,
}

/// A set of frame indices, one bit each.
#[derive(Debug, Clone, Copy)]
struct Bits([u64; WORDS]);

impl Bits {
    /// The bits `[first, first + count)` as `(word, mask)` pieces.
    fn pieces(first: usize, count: usize) -> impl Iterator<Item = (usize, u64)> {
        let end = first + count;
        let mut at = first;
        core::iter::from_fn(move || {
            if at >= end {
                return None;
            }
            let word = at / 64;
            let lo = at % 64;
            let hi = (end - word * 64).min(64);
            let ones = if hi - lo == 64 {
                u64::MAX
            } else {
                ((1u64 << (hi - lo)) - 1) << lo
            };
            at = (word + 1) * 64;
            Some((word, ones))
        })
    }

    fn all_clear(&self, first: usize, count: usize) -> bool {
        Self::pieces(first, count).all(|(w, m)| self.0[w] & m == 0)
    }

    fn all_set(&self, first: usize, count: usize) -> bool {
        Self::pieces(first, count).all(|(w, m)| self.0[w] & m == m)
    }

    fn set(&mut self, first: usize, count: usize, on: bool) {
        for (w, m) in Self::pieces(first, count) {
            if on {
                self.0[w] |= m;
            } else {
                self.0[w] &= !m;
            }
        }
    }

    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1 << (i % 64)) != 0
    }

    /// The lowest clear bit below `limit`.
    fn first_clear(&self, limit: usize) -> Option<usize> {
        let (w, word) = self.0.iter().enumerate().find(|(_, w)| **w != u64::MAX)?;
        let i = w * 64 + (!word).trailing_zeros() as usize;
        (i < limit).then_some(i)
    }
}

#[derive(Debug)]
struct State {
    /// Frames handed out.
    used: Bits,
    /// The first frame of each live allocation.
    starts: Bits,
    stats: FramePoolStats,
}

/// Zeroed power-of-two frames that are freed and handed out again; see the
/// module docs.
#[derive(Debug)]
pub struct FramePool {
    /// Owned for the program's life (the platform never takes it back).
    _block: Frames,
    base: u64,
    frames: usize,
    state: Mutex<State>,
}

impl FramePool {
    /// A pool over `block` (its first [`MAX_FRAMES`] frames, which is all of
    /// any block the platform pool hands out).
    pub fn new(block: Frames) -> Self {
        let frames = (block.len() / FRAME_SIZE).min(MAX_FRAMES);
        let stats = FramePoolStats {
            frames,
            ..FramePoolStats::default()
        };
        Self {
            base: block.phys(),
            _block: block,
            frames,
            state: Mutex::new(State {
                used: Bits([0; WORDS]),
                starts: Bits([0; WORDS]),
                stats,
            }),
        }
    }

    /// Counts so far.
    pub fn stats(&self) -> FramePoolStats {
        self.state.lock().stats
    }

    /// Frames an allocation of `size` bytes takes, if `size` is one the
    /// pool can serve (non-zero, a power of two).
    fn frames_for(size: usize) -> Option<usize> {
        (size != 0 && size.is_power_of_two()).then(|| size.max(FRAME_SIZE) / FRAME_SIZE)
    }

    /// The lowest free run of `count` frames whose address is aligned to
    /// `count` frames.
    fn find(&self, used: &Bits, count: usize) -> Option<usize> {
        if count == 1 {
            return used.first_clear(self.frames);
        }
        let align = (count * FRAME_SIZE) as u64;
        let aligned = self.base.checked_next_multiple_of(align)?;
        let mut first = usize::try_from((aligned - self.base) / FRAME_SIZE as u64).ok()?;
        while first.checked_add(count)? <= self.frames {
            if used.all_clear(first, count) {
                return Some(first);
            }
            first += count;
        }
        None
    }

    /// The frame index of the live allocation at `pa` of `size` bytes, and
    /// its length in frames, if exactly that allocation exists.
    fn live(&self, s: &State, pa: PhysAddr, size: usize) -> Option<(usize, usize)> {
        let count = Self::frames_for(size)?;
        let off = pa.0.checked_sub(self.base)?;
        if !pa.0.is_multiple_of((count * FRAME_SIZE) as u64) {
            return None;
        }
        let first = usize::try_from(off / FRAME_SIZE as u64).ok()?;
        let end = first.checked_add(count)?;
        let exact = end <= self.frames
            && s.starts.get(first)
            && s.used.all_set(first, count)
            && s.starts.all_clear(first + 1, count - 1)
            // The allocation does not go on past `end`.
            && (end == self.frames || !s.used.get(end) || s.starts.get(end));
        exact.then_some((first, count))
    }
}

// SAFETY: a run of frames is handed out only while its `used` bits are
// clear, and they stay set until a `free` that names exactly that
// allocation clears them, so no two live allocations overlap and none is
// handed out twice. Every frame is inside the block this pool owns (taken
// from the platform pool, which never hands it out again), zeroed before it
// is returned, aligned to its power-of-two size (`find` starts at the first
// aligned frame and steps by the size; a single frame is always aligned),
// and identity mapped, so `phys_to_virt` is the identity. QEMU's IOMMUs and
// devices are coherent with the CPU.
unsafe impl FrameAllocator for FramePool {
    fn alloc_zeroed(&self, size: usize) -> Option<PhysAddr> {
        let mut s = self.state.lock();
        let Some((first, count)) =
            Self::frames_for(size).and_then(|count| Some((self.find(&s.used, count)?, count)))
        else {
            s.stats.failed += 1;
            return None;
        };
        s.used.set(first, count, true);
        s.starts.set(first, 1, true);
        s.stats.in_use += count;
        s.stats.peak = s.stats.peak.max(s.stats.in_use);
        s.stats.allocs += 1;
        drop(s);
        let pa = self.base + (first * FRAME_SIZE) as u64;
        // SAFETY: these frames are inside our block and were free until
        // just now: nobody else refers to them.
        unsafe { core::ptr::write_bytes(pa as usize as *mut u8, 0, count * FRAME_SIZE) };
        Some(PhysAddr(pa))
    }

    unsafe fn free(&self, pa: PhysAddr, size: usize) {
        let mut s = self.state.lock();
        match self.live(&s, pa, size) {
            Some((first, count)) => {
                s.used.set(first, count, false);
                s.starts.set(first, 1, false);
                s.stats.in_use -= count;
                s.stats.frees += 1;
            }
            None => s.stats.bad_frees += 1,
        }
    }

    fn phys_to_virt(&self, pa: PhysAddr) -> *mut u8 {
        pa.0 as usize as *mut u8
    }
}

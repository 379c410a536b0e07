//! A bump allocator of zeroed 4 KiB frames from a static pool in `.bss`.
//!
//! Memory is identity-mapped on both targets (aarch64: MMU off; x86_64: the
//! boot stub maps 0-4 GiB 1:1), so a frame's address is both the pointer the
//! CPU uses and the physical address a device is given. Frames are never
//! freed; the examples are short-lived.
//!
//! The pool sits inside the image, so on x86_64 it is below 256 MiB, where
//! edu's default `dma_mask` does not clamp addresses.

use core::cell::UnsafeCell;
use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

/// Size of one frame.
pub const FRAME_SIZE: usize = 4096;
/// Size of the whole pool.
pub const POOL_SIZE: usize = 8 * 1024 * 1024;

#[repr(C, align(4096))]
struct Pool(UnsafeCell<[u8; POOL_SIZE]>);

// SAFETY: the pool is only reached through the single `FrameAllocator`
// (see `TAKEN`), which hands out disjoint ranges; the examples are single-threaded.
unsafe impl Sync for Pool {}

static POOL: Pool = Pool(UnsafeCell::new([0; POOL_SIZE]));
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Why an allocation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FramesError {
    /// `count` was zero.
    ZeroCount,
    /// Not enough frames left in the pool.
    Exhausted {
        /// Bytes requested (including alignment padding).
        requested: usize,
        /// Bytes left.
        left: usize,
    },
    /// The alignment is not a power of two, or less than a frame.
    BadAlign(usize),
}

impl fmt::Display for FramesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroCount => f.write_str("zero-frame allocation"),
            Self::Exhausted { requested, left } => {
                write!(
                    f,
                    "frame pool exhausted: {requested:#x} bytes requested, {left:#x} left"
                )
            }
            Self::BadAlign(a) => write!(f, "bad frame alignment {a:#x}"),
        }
    }
}

/// Hands out zeroed, frame-aligned blocks of the static pool.
#[derive(Debug)]
pub struct FrameAllocator {
    next: usize,
    end: usize,
}

impl FrameAllocator {
    /// The allocator; `None` if it was already taken (there is only one pool).
    pub fn take() -> Option<Self> {
        // A plain load + store rather than a swap: with the MMU off (aarch64)
        // exclusive loads/stores on Device memory are not guaranteed to work,
        // and we are single-threaded with interrupts masked.
        if TAKEN.load(Ordering::Relaxed) {
            return None;
        }
        TAKEN.store(true, Ordering::Relaxed);
        let start = POOL.0.get() as usize;
        Some(Self {
            next: start,
            end: start + POOL_SIZE,
        })
    }

    /// Bytes still available.
    pub fn remaining(&self) -> usize {
        self.end - self.next
    }

    /// `count` contiguous zeroed frames, 4 KiB aligned.
    pub fn alloc(&mut self, count: usize) -> Result<Frames, FramesError> {
        self.alloc_aligned(count, FRAME_SIZE)
    }

    /// `count` contiguous zeroed frames aligned to `align` bytes (a power of
    /// two, at least [`FRAME_SIZE`]).
    pub fn alloc_aligned(&mut self, count: usize, align: usize) -> Result<Frames, FramesError> {
        if count == 0 {
            return Err(FramesError::ZeroCount);
        }
        if !align.is_power_of_two() || align < FRAME_SIZE {
            return Err(FramesError::BadAlign(align));
        }
        let left = self.remaining();
        let exhausted = FramesError::Exhausted {
            requested: count.saturating_mul(FRAME_SIZE),
            left,
        };
        let start = self.next.checked_next_multiple_of(align).ok_or(exhausted)?;
        let len = count.checked_mul(FRAME_SIZE).ok_or(exhausted)?;
        let end = start.checked_add(len).ok_or(exhausted)?;
        if end > self.end {
            return Err(exhausted);
        }
        self.next = end;
        // SAFETY: [start, end) lies inside POOL (checked above) and was never
        // handed out before (`next` only grows), so nothing else refers to it.
        unsafe { core::ptr::write_bytes(start as *mut u8, 0, len) };
        Ok(Frames { addr: start, len })
    }
}

/// A block of frames owned by the caller.
///
/// Access the contents with [`Frames::as_mut_slice`] only while no device is
/// writing to them; put [`crate::arch::dma_barrier`] between CPU accesses and
/// starting or completing a DMA.
#[derive(Debug)]
pub struct Frames {
    addr: usize,
    len: usize,
}

impl Frames {
    /// Physical (= bus, without an IOMMU) address.
    pub fn phys(&self) -> u64 {
        self.addr as u64
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false; blocks have at least one frame.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The contents.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: the block is inside the static pool, identity-mapped, and owned
        // exclusively by `self` (the allocator never hands it out again); the
        // borrow of `self` prevents aliasing from the CPU side.
        unsafe { core::slice::from_raw_parts_mut(self.addr as *mut u8, self.len) }
    }
}

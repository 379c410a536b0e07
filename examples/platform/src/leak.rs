//! [`leak`] and [`leak_slice`]: put a value somewhere `'static` without a
//! heap, for what a `Hal` with no `self` must reach (drivers, domains, IOVA
//! allocators, DMA tables) but `main` builds from what it finds at run time.
//!
//! The value is moved into fresh frames of the platform's bump allocator,
//! which never hands them out again, and lent out as `&'static mut`. It is
//! never dropped; the examples exit instead.

use core::mem::{align_of, size_of};

use crate::frames::{FRAME_SIZE, FrameAllocator, FramesError};

/// Fresh frames for `n` values of `T`, aligned for `T`.
fn place<T>(frames: &mut FrameAllocator, n: usize) -> Result<*mut T, FramesError> {
    // Saturating: an impossible size is refused by the allocator.
    let bytes = size_of::<T>().saturating_mul(n);
    let count = bytes.div_ceil(FRAME_SIZE).max(1);
    let block = frames.alloc_aligned(count, align_of::<T>().max(FRAME_SIZE))?;
    Ok(block.phys() as usize as *mut T)
}

/// Moves `value` into frames of `frames` for the rest of the program.
pub fn leak<T>(frames: &mut FrameAllocator, value: T) -> Result<&'static mut T, FramesError> {
    let p = place::<T>(frames, 1)?;
    // SAFETY: `p` is the start of fresh frames (enough for a `T`, aligned
    // for it, identity mapped) that the bump allocator never hands out
    // again; dropping the `Frames` handle does not free them. So the `T`
    // written there stays valid, and this is the only reference, forever.
    unsafe {
        p.write(value);
        Ok(&mut *p)
    }
}

/// [`leak`] for `n` values, each made by `init`.
pub fn leak_slice<T>(
    frames: &mut FrameAllocator,
    n: usize,
    mut init: impl FnMut() -> T,
) -> Result<&'static mut [T], FramesError> {
    let p = place::<T>(frames, n)?;
    for i in 0..n {
        // SAFETY: element `i` of the fresh block, sized and aligned for `n`
        // values of `T`.
        unsafe { p.add(i).write(init()) };
    }
    // SAFETY: as in `leak`; all `n` elements were written above.
    Ok(unsafe { core::slice::from_raw_parts_mut(p, n) })
}

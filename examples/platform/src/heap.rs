//! The examples' heap, for what needs `alloc` (virtio-drivers keeps each
//! request's indirect descriptor list in a `Box`).
//!
//! Empty until [`init`] gives it frames of the platform pool; an allocation
//! before that fails (and `alloc` then aborts with the allocation error).
//! Heap memory is identity mapped like the rest of the pool, so a boxed
//! buffer's address is its physical address.

use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{self, NonNull};

use linked_list_allocator::Heap;
use spin::Mutex;

use crate::frames::{FrameAllocator, FramesError};

struct Locked(Mutex<Heap>);

#[global_allocator]
static HEAP: Locked = Locked(Mutex::new(Heap::empty()));

// SAFETY: `Heap` hands out disjoint blocks of at least the layout's size and
// alignment from memory it owns (given by `init`), and takes back only what
// it handed out (the caller's promise for `dealloc`); the lock serialises it.
unsafe impl GlobalAlloc for Locked {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.0
            .lock()
            .allocate_first_fit(layout)
            .map_or(ptr::null_mut(), NonNull::as_ptr)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Some(p) = NonNull::new(ptr) {
            // SAFETY: `ptr` came from `alloc` with `layout` (caller's promise).
            unsafe { self.0.lock().deallocate(p, layout) };
        }
    }
}

/// Gives the heap `frames` frames of the pool (once; later calls add
/// nothing and return the heap's size). Returns the heap's size in bytes.
pub fn init(pool: &mut FrameAllocator, frames: usize) -> Result<usize, FramesError> {
    let mut heap = HEAP.0.lock();
    if heap.size() > 0 {
        return Ok(heap.size());
    }
    let block = pool.alloc(frames)?;
    // The block is the heap's from now on (the pool never hands it out
    // again, and nothing frees it).
    let (start, len) = (block.phys() as usize as *mut u8, block.len());
    // SAFETY: [start, start + len) is a block of the static pool that nobody
    // else owns (just taken), identity mapped, and at least
    // one frame, larger than the heap's bookkeeping.
    unsafe { heap.init(start, len) };
    Ok(len)
}

//! DMA memory for the driver's request slots and event buffers, from the
//! caller's [`Hal`] (`virtio_drivers` keeps its own `Dma` type private).

use core::marker::PhantomData;
use core::ptr::NonNull;

use virtio_drivers::{BufferDirection, Hal, PAGE_SIZE, PhysAddr};

/// Zeroed, physically contiguous pages from `H`, returned on drop.
pub(crate) struct DmaRegion<H: Hal> {
    paddr: PhysAddr,
    vaddr: NonNull<u8>,
    pages: usize,
    _hal: PhantomData<H>,
}

// SAFETY: the region is plain memory owned by this value; accesses go
// through raw pointers under the driver's lock.
unsafe impl<H: Hal> Send for DmaRegion<H> {}

impl<H: Hal> DmaRegion<H> {
    /// At least `bytes` bytes (whole pages), or `None` if `H` has none.
    pub(crate) fn new(bytes: usize, dir: BufferDirection) -> Option<Self> {
        let pages = bytes.div_ceil(PAGE_SIZE).max(1);
        let (paddr, vaddr) = H::dma_alloc(pages, dir);
        // Build the region only on success: an eagerly built one (as with
        // `then_some`) would be dropped on failure, handing the `Hal` a
        // dangling pointer to free.
        if paddr == 0 {
            return None;
        }
        Some(Self {
            paddr,
            vaddr,
            pages,
            _hal: PhantomData,
        })
    }

    /// The CPU's pointer to byte `offset` (callers stay inside the region).
    pub(crate) fn ptr(&self, offset: usize) -> *mut u8 {
        debug_assert!(offset < self.pages * PAGE_SIZE);
        self.vaddr.as_ptr().wrapping_add(offset)
    }
}

impl<H: Hal> Drop for DmaRegion<H> {
    fn drop(&mut self) {
        // SAFETY: allocated by `H::dma_alloc` with these values in `new`,
        // freed once; the driver drops regions only when the device no
        // longer uses them (after a completed reset, or never).
        let _ = unsafe { H::dma_dealloc(self.paddr, self.vaddr, self.pages) };
    }
}

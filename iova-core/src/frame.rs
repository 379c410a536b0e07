//! Memory for page tables and queues.

use crate::addr::PhysAddr;

/// Hands out zeroed, aligned frames of physical memory and translates between
/// their physical and virtual addresses.
///
/// A hypervisor's memory is usually not identity mapped, so the page-table
/// engine never dereferences a physical address: it asks [`phys_to_virt`].
///
/// # Safety
///
/// An implementation guarantees that:
/// - [`alloc_zeroed`] returns the physical address of `size` bytes, aligned to
///   `size` (always a power of two), all zero, not in use by anything else, and
///   not handed out again until [`free`] is called with the same address and size;
/// - for every byte of such a frame, [`phys_to_virt`] returns a pointer valid
///   for reads and writes (including atomic ones) for as long as the frame is
///   allocated, and the memory is shared coherently with the IOMMU's table walker
///   or the caller arranges cache maintenance ([`crate::CacheMaintenance`]).
///
/// [`alloc_zeroed`]: FrameAllocator::alloc_zeroed
/// [`free`]: FrameAllocator::free
/// [`phys_to_virt`]: FrameAllocator::phys_to_virt
pub unsafe trait FrameAllocator: Sync {
    /// A zeroed frame of `size` bytes aligned to `size`, or `None` when out of memory.
    fn alloc_zeroed(&self, size: usize) -> Option<PhysAddr>;

    /// Returns a frame obtained from [`alloc_zeroed`](FrameAllocator::alloc_zeroed).
    ///
    /// # Safety
    ///
    /// `pa` and `size` come from one earlier `alloc_zeroed` call, the frame is not
    /// freed twice, and nothing (CPU or IOMMU) will access it afterwards.
    unsafe fn free(&self, pa: PhysAddr, size: usize);

    /// The CPU's pointer to the physical address `pa` of an allocated frame.
    fn phys_to_virt(&self, pa: PhysAddr) -> *mut u8;
}

// SAFETY: forwards to `T`, which upholds the contract.
unsafe impl<T: FrameAllocator + ?Sized> FrameAllocator for &T {
    fn alloc_zeroed(&self, size: usize) -> Option<PhysAddr> {
        (**self).alloc_zeroed(size)
    }
    unsafe fn free(&self, pa: PhysAddr, size: usize) {
        // SAFETY: the caller upholds `free`'s contract for `T`.
        unsafe { (**self).free(pa, size) }
    }
    fn phys_to_virt(&self, pa: PhysAddr) -> *mut u8 {
        (**self).phys_to_virt(pa)
    }
}

// SAFETY: forwards to `T`, which upholds the contract.
#[cfg(feature = "alloc")]
unsafe impl<T: FrameAllocator + Send + ?Sized> FrameAllocator for alloc::sync::Arc<T> {
    fn alloc_zeroed(&self, size: usize) -> Option<PhysAddr> {
        (**self).alloc_zeroed(size)
    }
    unsafe fn free(&self, pa: PhysAddr, size: usize) {
        // SAFETY: the caller upholds `free`'s contract for `T`.
        unsafe { (**self).free(pa, size) }
    }
    fn phys_to_virt(&self, pa: PhysAddr) -> *mut u8 {
        (**self).phys_to_virt(pa)
    }
}

//! [`IommuHal`]: `virtio_drivers::Hal` over a [`DmaShares`] table.

use core::marker::PhantomData;
use core::ptr::NonNull;

use iova_core::{IommuDomain, Iova};
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

use crate::shares::DmaShares;

/// Where an [`IommuHal`] finds its table. `Hal`'s methods have no `self`,
/// so the table is a `'static` the platform sets up before the first device
/// (a `spin::Once`, or a leaked box).
pub trait HalContext<const N: usize = 64>: 'static {
    /// The IOMMU domain the devices using this `Hal` are attached to.
    type Domain: IommuDomain + ?Sized + 'static;

    /// The table. Called on every `Hal` method.
    fn shares() -> &'static DmaShares<'static, Self::Domain, N>;

    /// The CPU's pointer to MMIO at `paddr` (a BAR the transport found), as
    /// [`Hal::mmio_phys_to_virt`] asks.
    ///
    /// # Safety
    ///
    /// As for [`Hal::mmio_phys_to_virt`]: `paddr` and `size` describe a
    /// valid MMIO region, and the pointer returned must be valid for it.
    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8>;
}

/// A [`Hal`] whose device addresses are IOVAs of one IOMMU domain: the
/// device reaches what the driver shares, while it is shared, and nothing
/// else; with a bounce pool ([`DmaShares::with_pool`]), also the pool's
/// slots, which hold copies of small shares, for as long as the table lives.
///
/// `Hal` cannot return errors. A failed `dma_alloc` returns address 0
/// (which virtio-drivers turns into `Error::DmaError`); a failed `share`
/// returns [`DmaShares::poison`], an IOVA that is never mapped, so the
/// device's access faults in the IOMMU (and QEMU, for one, then marks the
/// device broken: its status gains `DEVICE_NEEDS_RESET`). A failed
/// `unshare` or `dma_dealloc` keeps the memory from reuse. Every failure is
/// counted and kept: check [`DmaShares::take_error`].
pub struct IommuHal<C, const N: usize = 64>(PhantomData<C>);

// SAFETY: `dma_alloc` returns frames from a `FrameAllocator` (zeroed,
// page aligned because every allocation is a power of two of at least a
// page and aligned to its size, valid while allocated, not aliased) and
// frees them only in `dma_dealloc`; `share`/`unshare` follow `DmaShares`'
// contracts, which are those of `Hal`'s callers.
unsafe impl<C: HalContext<N>, const N: usize> Hal for IommuHal<C, N> {
    fn dma_alloc(pages: usize, direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        match C::shares().alloc(pages, direction) {
            Ok((dev, cpu)) => (dev.0, cpu),
            Err(_) => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: the caller passes back what `dma_alloc` returned and no
        // longer uses the memory.
        match unsafe { C::shares().dealloc(Iova(paddr), vaddr, pages) } {
            Ok(()) => 0,
            // Not ours: a caller bug, reported (virtio-drivers asserts on it).
            Err(crate::ShareError::NotShared) => -1,
            // Kept from reuse and recorded; virtio-drivers would panic on a
            // non-zero result, and there is nothing the driver could do.
            Err(_) => 0,
        }
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, size: usize) -> NonNull<u8> {
        // SAFETY: forwarded from the caller.
        unsafe { C::mmio_phys_to_virt(paddr, size) }
    }

    unsafe fn share(buffer: NonNull<[u8]>, direction: BufferDirection) -> PhysAddr {
        let shares = C::shares();
        // SAFETY: `Hal::share`'s caller guarantees the buffer is valid and
        // unused by others until the matching `unshare`.
        match unsafe { shares.share(buffer, direction) } {
            Ok(dev) => dev.0,
            Err(_) => shares.poison().0,
        }
    }

    unsafe fn unshare(paddr: PhysAddr, buffer: NonNull<[u8]>, direction: BufferDirection) {
        // SAFETY: as `Hal::unshare`'s caller guarantees. A failure is
        // recorded in the table.
        let _ = unsafe { C::shares().unshare(Iova(paddr), buffer, direction) };
    }
}

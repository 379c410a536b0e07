//! [`DirectHal`]: device addresses are physical addresses.
//!
//! For the benchmark's baseline (the device bypasses the IOMMU) and its
//! pre-mapped floor (a translated domain that maps all of the platform's
//! memory at IOVA = physical address once, so no share maps anything).
//! DMA memory comes from a [`FramePool`] set once with [`DirectHal::use_pool`];
//! buffers are shared where they are (memory is identity mapped).

use core::ptr::NonNull;

use iova_core::{Error, FrameAllocator, IommuDomain, IotlbGather, Iova, Prot};
use platform::BootInfo;
use platform::frame_pool::FramePool;
use platform::frames::FRAME_SIZE;
use spin::Once;
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

static POOL: Once<&'static FramePool> = Once::new();

/// A `Hal` whose device addresses are physical addresses.
#[derive(Debug)]
pub struct DirectHal;

impl DirectHal {
    /// Takes DMA memory from `pool` from now on (the first call wins).
    pub fn use_pool(pool: &'static FramePool) {
        POOL.call_once(|| pool);
    }
}

/// Bytes for `pages` pages: a power of two, as the pool hands out.
fn bytes(pages: usize) -> Option<usize> {
    pages.checked_mul(FRAME_SIZE)?.checked_next_power_of_two()
}

// SAFETY: `dma_alloc` hands out zeroed, page-aligned memory of the pool (or
// fails with address 0), which is identity mapped, so the pointer and the
// physical address agree; `dma_dealloc` gives back exactly what was
// allocated (the pool ignores anything else and counts it). Shared buffers
// are used where they are: without an IOMMU, or behind an identity-mapped
// domain, the physical address is the device address.
unsafe impl Hal for DirectHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let got = POOL
            .get()
            .zip(bytes(pages))
            .and_then(|(pool, size)| pool.alloc_zeroed(size));
        match got.and_then(|pa| Some((pa.0, NonNull::new(pa.0 as usize as *mut u8)?))) {
            Some((pa, ptr)) if pa != 0 => (pa, ptr),
            _ => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(paddr: PhysAddr, _vaddr: NonNull<u8>, pages: usize) -> i32 {
        if let (Some(pool), Some(size)) = (POOL.get(), bytes(pages)) {
            // SAFETY: virtio-drivers frees only what `dma_alloc` gave it,
            // once the device no longer uses it.
            unsafe { pool.free(iova_core::PhysAddr(paddr), size) };
        }
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as usize as *mut u8).unwrap_or(NonNull::dangling())
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr().cast::<u8>() as usize as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// Maps all of RAM (every region the boot code found, whole granules) into
/// `domain` at IOVA = physical address, read-write, and flushes: the domain
/// of [`crate::bench::Policy::Premapped`], in which [`DirectHal`]'s
/// addresses (stack, heap, frames) all translate.
pub fn premap_ram<D: IommuDomain + ?Sized>(domain: &D, boot: &BootInfo) -> Result<u64, Error> {
    let mut gather = IotlbGather::new();
    let mut mapped = 0;
    for (start, len) in ram_granules(domain, boot) {
        domain.map(
            Iova(start),
            iova_core::PhysAddr(start),
            len,
            Prot::RW,
            &mut gather,
        )?;
        mapped += len;
    }
    domain.flush(&mut gather)?;
    Ok(mapped)
}

/// Undoes [`premap_ram`] (unmaps and flushes): for a domain that must be
/// empty when its last endpoint leaves it (virtio-iommu frees it then).
pub fn unmap_ram<D: IommuDomain + ?Sized>(domain: &D, boot: &BootInfo) -> Result<(), Error> {
    let mut gather = IotlbGather::new();
    for (start, len) in ram_granules(domain, boot) {
        domain.unmap(Iova(start), len, &mut gather)?;
    }
    domain.flush(&mut gather)
}

/// The whole granules of each RAM region, `(start, len)`.
fn ram_granules<'b, D: IommuDomain + ?Sized>(
    domain: &D,
    boot: &'b BootInfo,
) -> impl Iterator<Item = (u64, u64)> + 'b {
    let g = domain.granule();
    boot.ram().iter().filter_map(move |&(base, size)| {
        let start = base.next_multiple_of(g);
        let end = base.saturating_add(size) & !(g - 1);
        (end > start).then_some((start, end - start))
    })
}

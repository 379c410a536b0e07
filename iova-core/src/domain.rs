//! What the two-step API drives: an IOMMU domain.
//!
//! [`IommuDomain`] is the trait every backend implements. Backends that walk
//! page tables (SMMUv3, VT-d) get it from [`PageTableDomain`], the generic
//! engine plus the backend's [`IotlbInvalidate`]; backends that map by request
//! (virtio-iommu) implement it directly.

use crate::addr::{Iova, PhysAddr};
use crate::cache::{CacheMaintenance, Coherent};
use crate::error::Error;
use crate::frame::FrameAllocator;
use crate::gather::IotlbGather;
use crate::prot::Prot;
use crate::pt::{PageTable, PtFormat};

/// An address space that devices are attached to.
///
/// `map` and `unmap` only write the domain's translation structures (or queue
/// requests) and record in the gather what must be invalidated; nothing is
/// guaranteed visible to, or gone from, the device until `flush` returns `Ok`.
/// Calls on disjoint ranges may run concurrently.
pub trait IommuDomain: Sync {
    /// The smallest page the domain maps (a power of two).
    fn granule(&self) -> u64;

    /// Maps `[iova, iova + len)` to `[pa, pa + len)`; all granule aligned.
    /// On error nothing of this call stays mapped.
    fn map(
        &self,
        iova: Iova,
        pa: PhysAddr,
        len: u64,
        prot: Prot,
        gather: &mut IotlbGather,
    ) -> Result<(), Error>;

    /// Unmaps `[iova, iova + len)`; returns how many bytes were mapped there.
    fn unmap(&self, iova: Iova, len: u64, gather: &mut IotlbGather) -> Result<u64, Error>;

    /// Makes everything `gather` records take effect on the device: one
    /// invalidation batch and one completion wait. On success the gather is
    /// empty again; on error it keeps everything, so the flush can be retried.
    fn flush(&self, gather: &mut IotlbGather) -> Result<(), Error>;
}

/// Invalidation of one IOMMU's caches for one address space (its unit and its
/// ASID, VMID or domain ID).
///
/// # Safety
///
/// `invalidate` returns `Ok` only once every translation and walk-cache entry
/// for the gather's ranges is gone from every unit that walks the table,
/// because the engine then returns the gather's freed tables to the frame
/// allocator.
pub unsafe trait IotlbInvalidate: Sync {
    /// Invalidates what `gather` describes and waits (bounded) for completion.
    fn invalidate(&self, gather: &IotlbGather) -> Result<(), Error>;
}

/// A domain made of the generic page-table engine and a backend's invalidation.
pub struct PageTableDomain<
    F: PtFormat,
    A: FrameAllocator,
    I: IotlbInvalidate,
    C: CacheMaintenance = Coherent,
> {
    table: PageTable<F, A, C>,
    inval: I,
}

impl<F: PtFormat, A: FrameAllocator, I: IotlbInvalidate, C: CacheMaintenance>
    PageTableDomain<F, A, I, C>
{
    /// Combines a table and the invalidation for the unit that walks it.
    pub fn new(table: PageTable<F, A, C>, inval: I) -> Self {
        Self { table, inval }
    }

    /// The page table.
    pub fn table(&self) -> &PageTable<F, A, C> {
        &self.table
    }

    /// The invalidation half.
    pub fn invalidator(&self) -> &I {
        &self.inval
    }
}

impl<F: PtFormat, A: FrameAllocator, I: IotlbInvalidate, C: CacheMaintenance> IommuDomain
    for PageTableDomain<F, A, I, C>
{
    fn granule(&self) -> u64 {
        self.table.granule()
    }

    fn map(
        &self,
        iova: Iova,
        pa: PhysAddr,
        len: u64,
        prot: Prot,
        gather: &mut IotlbGather,
    ) -> Result<(), Error> {
        self.table.map(iova, pa, len, prot, gather)
    }

    fn unmap(&self, iova: Iova, len: u64, gather: &mut IotlbGather) -> Result<u64, Error> {
        self.table.unmap(iova, len, gather)
    }

    fn flush(&self, gather: &mut IotlbGather) -> Result<(), Error> {
        if gather.is_empty() {
            return Ok(());
        }
        self.inval.invalidate(gather)?;
        // SAFETY: `IotlbInvalidate`'s contract: `Ok` means the invalidation of
        // the gather's ranges has completed on every unit walking this table.
        unsafe { self.table.release_tables(gather) };
        gather.clear_ranges();
        Ok(())
    }
}

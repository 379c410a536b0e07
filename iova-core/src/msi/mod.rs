//! MSI windows: interrupt doorbells mapped at fixed IOVAs of a domain.
//!
//! Where a device's MSI is a DMA write (the GICv3 ITS's `GITS_TRANSLATER` on
//! Arm, any doorbell behind an IOMMU that remaps MSIs as ordinary writes),
//! the write goes through the device's domain like every other DMA: without
//! a translation for the doorbell, the interrupt is lost as a fault. An
//! [`MsiWindow`] is what Linux's MSI cookie is (`iommu_get_msi_cookie` and
//! `iommu_dma_get_msi_page` in `drivers/iommu/dma-iommu.c`), for any
//! [`IommuDomain`]:
//!
//! - a fixed IOVA range of the domain, by default Linux's
//!   [`MSI_IOVA_BASE`] / [`MSI_IOVA_LENGTH`] (`0x800_0000`, 1 MiB), which is
//!   [reserved](IovaAllocator::reserve) in the domain's IOVA allocator, so
//!   that no DMA buffer is ever handed an address in it;
//! - doorbell pages mapped into it on demand by
//!   [`map_doorbell`](MsiWindow::map_doorbell), which returns the IOVA of the
//!   doorbell register itself (the page's IOVA plus the register's offset in
//!   its page): the address to program into the device's MSI capability.
//!   The same page asked for again returns the same IOVA and maps nothing;
//!   distinct pages get distinct window pages, until the window is full;
//! - each page mapped [`DOORBELL_PROT`] (write, device memory, no execute:
//!   Linux's `IOMMU_WRITE | IOMMU_MMIO | IOMMU_NOEXEC`), with one flush for
//!   each page added;
//! - unmapped and flushed on [`teardown`](MsiWindow::teardown).
//!
//! # Write-only, and what each format makes of it
//!
//! The window asks for write access only: a device has no reason to read a
//! doorbell. Whether it gets exactly that depends on the domain's format:
//!
//! - Arm LPAE stage 2 ([`LpaeS2`](crate::formats::lpae::LpaeS2)) has
//!   separate read and write permissions: the page is write-only (S2AP =
//!   `0b10`), and a device read of the doorbell faults;
//! - Arm LPAE stage 1 ([`LpaeS1`](crate::formats::lpae::LpaeS1)) has no
//!   write-only encoding (AP\[2\] = 0 is read-write): the page is read-write,
//!   as on every LPAE IOMMU and in Linux;
//! - x86-64 formats cannot express write-only either (and on x86 MSIs are
//!   not DMA writes that the IOMMU translates, but interrupt requests).
//!
//! # Nested translation
//!
//! The window belongs in the stage that the device's MSI address is an input
//! of. With stage 1 or stage 2 alone that is the domain the device is
//! attached to. With nested translation and a guest-owned stage 1, the guest
//! maps its MSI IOVA to the IPA where it sees its (virtual) doorbell, and the
//! hypervisor places its window over the stage-2 domain at exactly that IPA
//! ([`MsiWindow::at`] with the guest's doorbell page), so that
//! [`map_doorbell`](MsiWindow::map_doorbell) of the real doorbell returns
//! the IPA the guest's mapping points to.
//!
//! # Teardown and drop
//!
//! [`teardown`](MsiWindow::teardown) unmaps every doorbell page with one
//! flush and reports a failed flush (the window comes back, its pages gone
//! from the tables, their invalidation still pending, to retry). Dropping a
//! window does the same, as dropping an [`IovaState`](crate::IovaState)
//! does; a drop cannot return an error, so a failed flush is reported
//! through [`warn_event!`](crate::warn_event) (features `log`, `defmt`) and
//! the device may keep reaching the doorbell until the next successful flush
//! of the domain. The reserved range stays a hole of the allocator for good
//! (holes cannot be given back), so no DMA buffer is ever placed where a
//! stale doorbell translation could still be cached.
//!
//! ```
//! # #[cfg(feature = "fakes")] {
//! use iova_core::fakes::{Access, fake_domain};
//! use iova_core::formats::lpae::LpaeS2;
//! use iova_core::iova_alloc::{IovaAllocator, IovaAllocatorConfig};
//! use iova_core::msi::{MSI_IOVA_BASE, MsiWindow};
//! use iova_core::{Iova, IovaRange, PhysAddr};
//!
//! let (domain, _frames) = fake_domain(LpaeS2::new(40, 48).unwrap());
//! let aperture = IovaRange::new(Iova(0), 1 << 32).unwrap();
//! let iovas = IovaAllocator::with_capacity(IovaAllocatorConfig::new(aperture, 0x1000), 16, 1).unwrap();
//! let mut window = MsiWindow::<_, 4>::new(&domain, &iovas).unwrap();
//!
//! // GITS_TRANSLATER of QEMU virt's ITS: the device is told this IOVA.
//! let msi = window.map_doorbell(PhysAddr(0x0809_0040)).unwrap();
//! assert_eq!(msi, Iova(MSI_IOVA_BASE.0 + 0x40));
//! assert_eq!(domain.device_access(msi, Access::Write), Ok(PhysAddr(0x0809_0040)));
//! assert!(domain.device_access(msi, Access::Read).is_err()); // write-only at stage 2
//! // No DMA buffer is ever placed in the window.
//! let a = iovas.alloc(0, 1 << 20, 1 << 20).unwrap();
//! assert!(!a.range().overlaps(&window.range()));
//! # iovas.free(0, a).unwrap();
//! window.teardown().unwrap();
//! assert!(domain.device_access(msi, Access::Write).is_err());
//! # }
//! ```

#[cfg(test)]
mod tests;

use core::fmt;

use crate::addr::{Iova, IovaRange, PhysAddr};
use crate::dma::Returned;
use crate::domain::IommuDomain;
use crate::error::Error;
use crate::gather::IotlbGather;
use crate::iova_alloc::{IovaAllocError, IovaAllocator};
use crate::prot::Prot;

/// Linux's default MSI window base (`MSI_IOVA_BASE`).
pub const MSI_IOVA_BASE: Iova = Iova(0x800_0000);

/// Linux's default MSI window length (`MSI_IOVA_LENGTH`): 1 MiB.
pub const MSI_IOVA_LENGTH: u64 = 0x10_0000;

/// How doorbell pages are mapped: write, device memory, no execute (Linux's
/// `IOMMU_WRITE | IOMMU_MMIO | IOMMU_NOEXEC`). See the
/// [module docs](self) for what each format grants.
pub const DOORBELL_PROT: Prot = Prot::WRITE.union(Prot::MMIO).union(Prot::NOEXEC);

/// Why an MSI window could not be set up or a doorbell not mapped. Every
/// error changes nothing, except [`MsiError::Flush`] (see there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum MsiError {
    /// The window holds no address.
    ZeroSize,
    /// The window's base or size is not a multiple of the domain's granule
    /// (the granule is given), or the granule is not a power of two.
    Misaligned(u64),
    /// The window's end overflows.
    Overflow,
    /// The window is not inside the IOVA allocator's aperture (the domain's
    /// IOVA space), given as `[start, end)`.
    OutsideAperture(IovaRange),
    /// A live allocation of the IOVA allocator overlaps the window: a DMA
    /// buffer already has an address in it.
    RangeInUse,
    /// The allocator refused the reservation for another cause (no extent
    /// slot left to split a free extent).
    Reserve(IovaAllocError),
    /// Every page of the window holds another doorbell.
    WindowFull,
    /// The window's bookkeeping (its const capacity `N`) holds as many
    /// doorbells as it can.
    StorageFull,
    /// The domain refused to map the doorbell page (the window lies beyond
    /// what its tables reach, it cannot express [`DOORBELL_PROT`], no memory
    /// for a table, or the page is already mapped by someone else). Nothing
    /// was mapped.
    Map(Error),
    /// The flush that makes the doorbell visible (or a pending one before it)
    /// failed. The page stays mapped and recorded with its invalidation
    /// pending: the next [`map_doorbell`](MsiWindow::map_doorbell) (or
    /// [`flush`](MsiWindow::flush)) retries the flush, and only then returns
    /// the IOVA.
    Flush(Error),
}

impl fmt::Display for MsiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ZeroSize => f.write_str("MSI window is empty"),
            Self::Misaligned(g) => write!(f, "MSI window not aligned to the granule {g:#x}"),
            Self::Overflow => f.write_str("MSI window end overflows"),
            Self::OutsideAperture(a) => write!(
                f,
                "MSI window outside the aperture [{:#x}, {:#x})",
                a.start.0, a.end.0
            ),
            Self::RangeInUse => f.write_str("MSI window overlaps a live IOVA allocation"),
            Self::Reserve(e) => write!(f, "MSI window not reserved: {e}"),
            Self::WindowFull => f.write_str("every page of the MSI window holds a doorbell"),
            Self::StorageFull => f.write_str("MSI window bookkeeping full"),
            Self::Map(e) => write!(f, "doorbell not mapped: {e}"),
            Self::Flush(e) => write!(f, "doorbell mapping not flushed: {e}"),
        }
    }
}

impl core::error::Error for MsiError {}

/// The crate's [`Error`] for an MSI window error, for callers that report
/// both through one type: the domain's own error for `Map` and `Flush`, and
/// the nearest general cause otherwise.
impl From<MsiError> for Error {
    fn from(e: MsiError) -> Self {
        match e {
            MsiError::ZeroSize => Error::ZeroLength,
            MsiError::Misaligned(_) => Error::Misaligned,
            MsiError::Overflow => Error::Overflow,
            MsiError::OutsideAperture(_) => Error::OutOfRange,
            MsiError::RangeInUse => Error::Iova(IovaAllocError::RangeInUse),
            MsiError::Reserve(e) => Error::Iova(e),
            MsiError::WindowFull => Error::Iova(IovaAllocError::NoSpace),
            MsiError::StorageFull => Error::StorageFull,
            MsiError::Map(e) | MsiError::Flush(e) => e,
        }
    }
}

/// One doorbell page of a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Doorbell {
    /// The doorbell page's physical address (granule aligned).
    pub page: PhysAddr,
    /// The IOVA it is mapped at (granule aligned).
    pub iova: Iova,
}

/// A domain's MSI window: see the [module docs](self).
///
/// `N` is how many doorbell pages it can track (a GICv3 system with one ITS
/// needs one). Methods take `&mut self`: share a window between CPUs behind
/// a lock.
#[must_use = "dropping an MSI window unmaps its doorbells at once"]
pub struct MsiWindow<'a, D: IommuDomain + ?Sized, const N: usize> {
    domain: &'a D,
    range: IovaRange,
    granule: u64,
    doorbells: heapless::Vec<Doorbell, N>,
    pending: IotlbGather,
}

impl<D: IommuDomain + ?Sized, const N: usize> fmt::Debug for MsiWindow<'_, D, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MsiWindow")
            .field("range", &self.range)
            .field("granule", &self.granule)
            .field("doorbells", &self.doorbells)
            .field("needs_flush", &self.needs_flush())
            .finish_non_exhaustive()
    }
}

impl<'a, D: IommuDomain + ?Sized, const N: usize> MsiWindow<'a, D, N> {
    /// A window at Linux's default place, [`MSI_IOVA_BASE`] /
    /// [`MSI_IOVA_LENGTH`]; see [`at`](Self::at).
    pub fn new(domain: &'a D, iovas: &IovaAllocator<'_>) -> Result<Self, MsiError> {
        Self::at(domain, iovas, MSI_IOVA_BASE, MSI_IOVA_LENGTH)
    }

    /// A window of `size` bytes at `base` in `domain`, reserved in `iovas`
    /// (the allocator that hands out the domain's IOVAs). Maps nothing yet.
    ///
    /// # Errors
    ///
    /// [`MsiError::ZeroSize`], [`MsiError::Overflow`],
    /// [`MsiError::Misaligned`] (base or size not a multiple of the domain's
    /// granule), [`MsiError::OutsideAperture`] (not inside `iovas`'
    /// aperture), [`MsiError::RangeInUse`] (an allocation of `iovas`
    /// overlaps it), [`MsiError::Reserve`]. Nothing is reserved on error.
    ///
    /// A range that is already a hole of `iovas` (another window's) is
    /// reserved again without complaint, as the allocator does; two windows
    /// over one range of one domain then collide on their first doorbell
    /// ([`MsiError::Map`] with [`Error::AlreadyMapped`]).
    pub fn at(
        domain: &'a D,
        iovas: &IovaAllocator<'_>,
        base: Iova,
        size: u64,
    ) -> Result<Self, MsiError> {
        if size == 0 {
            return Err(MsiError::ZeroSize);
        }
        let range = IovaRange::new(base, size).map_err(|_| MsiError::Overflow)?;
        let granule = domain.granule();
        if !granule.is_power_of_two() || !base.is_aligned(granule) || size % granule != 0 {
            return Err(MsiError::Misaligned(granule));
        }
        let aperture = iovas.aperture();
        if !aperture.contains_range(&range) {
            return Err(MsiError::OutsideAperture(aperture));
        }
        iovas.reserve(range).map_err(|e| match e {
            IovaAllocError::RangeInUse => MsiError::RangeInUse,
            e => MsiError::Reserve(e),
        })?;
        Ok(Self {
            domain,
            range,
            granule,
            doorbells: heapless::Vec::new(),
            pending: IotlbGather::new(),
        })
    }

    /// The window, `[base, base + size)`.
    pub fn range(&self) -> IovaRange {
        self.range
    }

    /// The size of a doorbell page: the domain's granule.
    pub fn page_size(&self) -> u64 {
        self.granule
    }

    /// The doorbell pages mapped now, in the order they were mapped.
    pub fn doorbells(&self) -> &[Doorbell] {
        &self.doorbells
    }

    /// How many doorbell pages the window can hold: its pages, or `N` if
    /// fewer.
    pub fn capacity(&self) -> usize {
        let pages = self.range.len() / self.granule;
        usize::try_from(pages).map_or(N, |p| p.min(N))
    }

    /// Whether an invalidation waits for a flush (after a failed one).
    pub fn needs_flush(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The IOVA of the doorbell register at `doorbell`, if its page is mapped
    /// (and flushed).
    pub fn iova_of(&self, doorbell: PhysAddr) -> Option<Iova> {
        if self.needs_flush() {
            return None;
        }
        let page = doorbell.align_down(self.granule);
        self.doorbells
            .iter()
            .find(|d| d.page == page)
            .map(|d| Iova(d.iova.0 + doorbell.offset_in(self.granule)))
    }

    /// Maps the page holding the doorbell register at `doorbell` into the
    /// window (if it is not mapped yet) and returns the register's IOVA: the
    /// page's IOVA plus the register's offset in its page. The first free
    /// page of the window is used; one flush makes it visible. A page mapped
    /// before is found again: same IOVA, no map, no flush.
    ///
    /// # Errors
    ///
    /// [`MsiError::WindowFull`], [`MsiError::StorageFull`],
    /// [`MsiError::Map`] (nothing mapped), [`MsiError::Flush`] (see there).
    pub fn map_doorbell(&mut self, doorbell: PhysAddr) -> Result<Iova, MsiError> {
        self.flush()?;
        let g = self.granule;
        let page = doorbell.align_down(g);
        let offset = doorbell.offset_in(g);
        if let Some(d) = self.doorbells.iter().find(|d| d.page == page) {
            return Ok(Iova(d.iova.0 + offset));
        }
        if self.doorbells.is_full() {
            return Err(MsiError::StorageFull);
        }
        let pages = self.range.len() / g;
        let free = (0..pages)
            .map(|i| Iova(self.range.start.0 + i * g))
            .find(|iova| self.doorbells.iter().all(|d| d.iova != *iova))
            .ok_or(MsiError::WindowFull)?;
        self.domain
            .map(free, page, g, DOORBELL_PROT, &mut self.pending)
            .map_err(MsiError::Map)?;
        // Cannot fail: checked for room above.
        let _ = self.doorbells.push(Doorbell { page, iova: free });
        self.flush()?;
        Ok(Iova(free.0 + offset))
    }

    /// Retries a pending flush (after [`MsiError::Flush`]); nothing to do
    /// otherwise.
    pub fn flush(&mut self) -> Result<(), MsiError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.domain
            .flush(&mut self.pending)
            .map_err(MsiError::Flush)
    }

    /// Unmaps every doorbell page and flushes once; afterwards the device's
    /// MSI writes to the window fault. The window's range stays reserved in
    /// the allocator.
    ///
    /// If the domain fails, the window comes back with the error: the pages
    /// unmapped so far are gone from it (their invalidation pending), the
    /// others still recorded. Retry, or drop it (which tries once more).
    // The window comes back by value on failure: there may be no heap to box it.
    #[allow(clippy::result_large_err)]
    pub fn teardown(mut self) -> Result<(), Returned<Self>> {
        match self.unmap_all() {
            Ok(()) => Ok(()),
            Err(error) => Err(Returned { error, state: self }),
        }
    }

    fn unmap_all(&mut self) -> Result<(), Error> {
        while let Some(&d) = self.doorbells.last() {
            self.domain.unmap(d.iova, self.granule, &mut self.pending)?;
            self.doorbells.pop();
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        self.domain.flush(&mut self.pending)
    }
}

impl<D: IommuDomain + ?Sized, const N: usize> Drop for MsiWindow<'_, D, N> {
    fn drop(&mut self) {
        if let Err(e) = self.unmap_all() {
            // A drop cannot return the error: say what the device may still reach.
            let first = self
                .doorbells
                .first()
                .map_or(self.range.start.0, |d| d.iova.0);
            crate::warn_event!(
                "iova-core: MSI window at {:#x} not torn down ({}); a doorbell may stay reachable from {:#x}",
                self.range.start.0,
                e,
                first
            );
        }
    }
}

//! The backend half of an iova-core domain: invalidation of one domain ID on
//! one unit, so that `PageTableDomain<SecondLevel, _, VtdInvalidator>` is an
//! [`iova_core::IommuDomain`] and the whole two-step API runs over VT-d.
//!
//! One flush is one batch and one wait: write-buffer flush first where
//! CAP.RWBF; for removed entries one page-selective descriptor per gathered
//! range that fits the maximum address mask (MAMV), with the leaf-only hint
//! when no table was removed; one domain-selective descriptor instead when
//! the unit has no PSI or the ranges need more than the configured limit;
//! with CAP.CM, the new entries too (the unit may have cached them as not
//! present). New entries on a unit without CM need nothing.

use iova_core::{Error, FrameAllocator, IotlbGather, IotlbInvalidate};

use crate::descriptor::Descriptor;
use crate::regs::Mmio;
use crate::unit::{VtdError, VtdUnit};

/// Descriptors one flush can hold before it falls back to domain-selective.
const BATCH: usize = 64;

/// Invalidation of domain `did` on a unit.
#[derive(Debug)]
pub struct VtdInvalidator<'u, M: Mmio, A: FrameAllocator> {
    unit: &'u VtdUnit<M, A>,
    did: u16,
    /// First-level translation for this PASID (PASID-based invalidation).
    first_level: Option<u32>,
}

impl<'u, M: Mmio, A: FrameAllocator> VtdInvalidator<'u, M, A> {
    /// Invalidation of `did` on `unit`; refuses a domain ID the unit does not
    /// have (or 0 in caching mode, where it is reserved).
    pub fn new(unit: &'u VtdUnit<M, A>, did: u16) -> Result<Self, VtdError> {
        unit.check_did(did)?;
        Ok(Self {
            unit,
            did,
            first_level: None,
        })
    }

    /// Invalidation of a first-level domain (scalable mode) attached as
    /// RID_PASID (requests without a PASID): PASID-based IOTLB descriptors
    /// instead of IOTLB ones.
    pub fn first_level(unit: &'u VtdUnit<M, A>, did: u16) -> Result<Self, VtdError> {
        Self::first_level_pasid(unit, did, 0)
    }

    /// Invalidation of a first-level domain attached to `pasid`.
    pub fn first_level_pasid(
        unit: &'u VtdUnit<M, A>,
        did: u16,
        pasid: u32,
    ) -> Result<Self, VtdError> {
        unit.first_level_format()?;
        unit.check_did(did)?;
        Ok(Self {
            unit,
            did,
            first_level: Some(pasid),
        })
    }

    /// The domain ID.
    pub fn did(&self) -> u16 {
        self.did
    }

    /// The unit.
    pub fn unit(&self) -> &'u VtdUnit<M, A> {
        self.unit
    }

    /// The descriptors a flush of `gather` submits (before its wait).
    pub fn batch(&self, gather: &IotlbGather) -> heapless::Vec<Descriptor, BATCH> {
        let unit = self.unit;
        let mut batch = heapless::Vec::new();
        let removed = gather.has_unmapped() || gather.tables_changed() || gather.freed_tables() > 0;
        let mut fine = true;
        if removed {
            let leaf_only = !gather.tables_changed() && gather.freed_tables() == 0;
            for r in gather.ranges() {
                fine &= unit.range_invalidations(
                    self.did,
                    self.first_level,
                    r.start.0,
                    r.end.0,
                    leaf_only,
                    &mut batch,
                );
            }
        }
        if unit.features().cap.caching_mode() {
            if let Some(m) = gather.mapped_span() {
                // A not-present entry may be cached at any level: no hint.
                fine &= unit.range_invalidations(
                    self.did,
                    self.first_level,
                    m.start.0,
                    m.end.0,
                    false,
                    &mut batch,
                );
            }
        }
        if !fine {
            batch.clear();
            // Cannot fail: the vector is empty.
            let _ = batch.push(unit.domain_invalidation(self.did, self.first_level));
        }
        batch
    }
}

// SAFETY: `invalidate` returns Ok only after the unit reported completion of
// every descriptor covering the gather's ranges for this domain (the wait
// descriptor's status write, or each register invalidation's IVT clearing),
// and page-selective invalidation without the leaf hint, or domain-selective
// invalidation, also drops paging-structure caches; so no translation or
// cached table pointer of the ranges is left when the engine frees tables.
unsafe impl<M: Mmio, A: FrameAllocator> IotlbInvalidate for VtdInvalidator<'_, M, A> {
    fn invalidate(&self, gather: &IotlbGather) -> Result<(), Error> {
        let batch = self.batch(gather);
        if batch.is_empty() && !gather.has_mapped() {
            return Ok(());
        }
        // New or removed entries must be out of the write buffer first.
        self.unit.flush_write_buffer()?;
        self.unit.submit(&batch)?;
        Ok(())
    }
}

/// Invalidation of one domain on several units: a domain whose devices sit
/// behind more than one DRHD (each unit has its own caches, and may know the
/// domain under its own domain ID). A flush submits one batch with one wait
/// to each unit, in order, and fails on the first unit that fails (the
/// gather is then kept whole, so a retry invalidates every unit again).
///
/// The table must suit every unit: a depth each unit's SAGAW has, input and
/// output addresses within each unit's MGAW (the format of the unit with the
/// smallest), superpages only where all have them.
#[derive(Debug)]
pub struct VtdMultiInvalidator<'u, M: Mmio, A: FrameAllocator, const N: usize> {
    units: heapless::Vec<VtdInvalidator<'u, M, A>, N>,
}

impl<'u, M: Mmio, A: FrameAllocator, const N: usize> VtdMultiInvalidator<'u, M, A, N> {
    /// No units yet.
    pub const fn new() -> Self {
        Self {
            units: heapless::Vec::new(),
        }
    }

    /// Adds a unit's invalidation; `Err` gives it back when `N` are held.
    pub fn push(
        &mut self,
        inval: VtdInvalidator<'u, M, A>,
    ) -> Result<(), VtdInvalidator<'u, M, A>> {
        self.units.push(inval)
    }

    /// The units' invalidations.
    pub fn units(&self) -> &[VtdInvalidator<'u, M, A>] {
        &self.units
    }
}

impl<M: Mmio, A: FrameAllocator, const N: usize> Default for VtdMultiInvalidator<'_, M, A, N> {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: Ok only after every unit's invalidation returned Ok, which (see
// `VtdInvalidator`) means that unit holds nothing of the gather's ranges;
// the table is walked only by these units.
unsafe impl<M: Mmio, A: FrameAllocator, const N: usize> IotlbInvalidate
    for VtdMultiInvalidator<'_, M, A, N>
{
    fn invalidate(&self, gather: &IotlbGather) -> Result<(), Error> {
        self.units.iter().try_for_each(|u| u.invalidate(gather))
    }
}

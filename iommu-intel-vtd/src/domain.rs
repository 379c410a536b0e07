//! Domains: an iova-core page table that VT-d units walk, tagged with a
//! domain ID on each, plus the units' invalidation. [`VtdDomain`]
//! implements [`iova_core::IommuDomain`], so the whole two-step API runs
//! over VT-d.
//!
//! One flush is one batch and one wait: write-buffer flush first where
//! CAP.RWBF; for removed entries one page-selective descriptor per gathered
//! range that fits the maximum address mask (MAMV), with the leaf-only hint
//! when no table was removed; one domain-selective descriptor instead when
//! the unit has no PSI or the ranges need more than the configured limit;
//! with CAP.CM, the new entries too (the unit may have cached them as not
//! present). New entries on a unit without CM need nothing.
//!
//! # Attaching, and teardown
//!
//! [`VtdUnit::attach`] points a device's entry (the legacy context entry,
//! or in scalable mode its RID_PASID entry; [`VtdUnit::attach_pasid`] for
//! other PASIDs) at a domain, and the domain records the endpoint. An
//! endpoint already attached elsewhere (another domain, pass-through) is
//! moved: its old entry is made not present and invalidated first, as
//! [`VtdUnit::set_context`] does, and the domain it left forgets it.
//! [`VtdUnit::detach`] blocks the endpoint again.
//!
//! Dropping a domain first blocks every endpoint whose entry still points
//! at it (entry not present, then the context-cache or PASID-cache and
//! IOTLB invalidations with their wait), then, if it was ever attached,
//! drops whatever the units still cache under its domain IDs (one batch and
//! wait per unit), and only then frees its tables and domain IDs. If a unit
//! does not complete those invalidations, the tables and IDs are leaked
//! instead: freeing them could let a device walk reused memory.

use core::mem::ManuallyDrop;
use core::ops::Deref;
use core::sync::atomic::{AtomicBool, Ordering};

use iova_core::formats::x86_64::X86_64;
use iova_core::pt::PtFormat;
use iova_core::{
    CacheMaintenance, Error, FrameAllocator, IommuDomain, IotlbGather, IotlbInvalidate, Iova,
    PageTable, PageTableDomain, PhysAddr, Prot,
};

use crate::acpi::dmar::Bdf;
use crate::context::ContextState;
use crate::descriptor::Descriptor;
use crate::error::VtdError;
use crate::regs::Mmio;
use crate::second_level::SecondLevel;
use crate::unit::VtdUnit;

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

/// Endpoints one domain can be attached to at once.
pub const MAX_ENDPOINTS: usize = 16;

/// Where a domain is attached: a device, and in scalable mode the PASID
/// of its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Endpoint {
    /// The device.
    pub dev: Bdf,
    /// The PASID whose entry points at the domain; 0 for requests without
    /// a PASID (the legacy context entry, or RID_PASID in scalable mode).
    pub pasid: u32,
}

impl Endpoint {
    /// The `pasid` argument of the unit's entry updates.
    fn slot(self) -> Option<u32> {
        (self.pasid != 0).then_some(self.pasid)
    }
}

impl core::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        if self.pasid == 0 {
            write!(f, "{}", self.dev)
        } else {
            write!(f, "{} PASID {:#x}", self.dev, self.pasid)
        }
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for crate::second_level::SecondLevel {}
    impl Sealed for iova_core::formats::x86_64::X86_64 {}
}

/// A page-table format VT-d walks for a domain: [`SecondLevel`], or x86-64
/// 4-level paging ([`X86_64`], first level, scalable mode). Sealed: the
/// entry it makes points the unit at the domain's own table.
pub trait VtdFormat: PtFormat + sealed::Sealed {
    /// The context (or PASID) entry for a table of this format at `root`,
    /// tagged with `did`.
    fn entry(&self, did: u16, root: u64) -> ContextState;
}

impl VtdFormat for SecondLevel {
    fn entry(&self, did: u16, root: u64) -> ContextState {
        ContextState::Translated {
            did,
            root,
            aw: self.context_aw(),
        }
    }
}

impl VtdFormat for X86_64 {
    fn entry(&self, did: u16, root: u64) -> ContextState {
        ContextState::FirstLevel { did, root }
    }
}

/// Cache maintenance of a domain's tables: that of its units' walks (none
/// when they snoop).
#[derive(Clone, Copy)]
pub struct VtdCache(Option<&'static dyn CacheMaintenance>);

impl core::fmt::Debug for VtdCache {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(if self.is_coherent() {
            "VtdCache(coherent)"
        } else {
            "VtdCache(maintained)"
        })
    }
}

impl CacheMaintenance for VtdCache {
    fn is_coherent(&self) -> bool {
        self.0.is_none_or(|c| c.is_coherent())
    }
    fn clean(&self, pa: PhysAddr, len: u64) {
        if let Some(c) = self.0 {
            c.clean(pa, len);
        }
    }
    fn invalidate(&self, pa: PhysAddr, len: u64) {
        if let Some(c) = self.0 {
            c.invalidate(pa, len);
        }
    }
    fn complete(&self) {
        if let Some(c) = self.0 {
            c.complete();
        }
    }
}

/// The page-table domain inside a [`VtdDomain`].
pub type VtdTableDomain<'u, M, A, T, F, const N: usize> =
    PageTableDomain<F, T, VtdMultiInvalidator<'u, M, A, N>, VtdCache>;

/// A domain: a page table of format `F` (second level by default) whose
/// frames come from `T`, walked by `N` units (one by default), each of which
/// tags it with a domain ID of its own; the endpoints attached to it.
/// Dereferences to the [`PageTableDomain`] of its table and invalidation;
/// see the [module docs](self) for attaching and teardown.
pub struct VtdDomain<
    'u,
    M: Mmio,
    A: FrameAllocator,
    T: FrameAllocator,
    F: VtdFormat = SecondLevel,
    const N: usize = 1,
> {
    inner: ManuallyDrop<VtdTableDomain<'u, M, A, T, F, N>>,
    /// (index of the unit, endpoint) of every attach since the last detach
    /// of that endpoint; some may have been moved elsewhere since.
    endpoints: spin::Mutex<heapless::Vec<(usize, Endpoint), MAX_ENDPOINTS>>,
    /// An entry pointed at the domain at some point.
    used: AtomicBool,
}

impl<M: Mmio, A: FrameAllocator, T: FrameAllocator, F: VtdFormat, const N: usize> core::fmt::Debug
    for VtdDomain<'_, M, A, T, F, N>
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let dids: heapless::Vec<u16, N> =
            self.invalidator().units().iter().map(|u| u.did()).collect();
        f.debug_struct("VtdDomain")
            .field("root", &self.table().root())
            .field("dids", &dids)
            .field("pasid", &self.pasid())
            .finish_non_exhaustive()
    }
}

impl<'u, M: Mmio, A: FrameAllocator, T: FrameAllocator, F: VtdFormat, const N: usize> Deref
    for VtdDomain<'u, M, A, T, F, N>
{
    type Target = VtdTableDomain<'u, M, A, T, F, N>;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl<M: Mmio, A: FrameAllocator, T: FrameAllocator, F: VtdFormat, const N: usize> IommuDomain
    for VtdDomain<'_, M, A, T, F, N>
{
    fn granule(&self) -> u64 {
        self.inner.granule()
    }
    fn map(
        &self,
        iova: Iova,
        pa: PhysAddr,
        len: u64,
        prot: Prot,
        gather: &mut IotlbGather,
    ) -> Result<(), Error> {
        self.inner.map(iova, pa, len, prot, gather)
    }
    fn unmap(&self, iova: Iova, len: u64, gather: &mut IotlbGather) -> Result<u64, Error> {
        self.inner.unmap(iova, len, gather)
    }
    fn flush(&self, gather: &mut IotlbGather) -> Result<(), Error> {
        self.inner.flush(gather)
    }
}

impl<'u, M: Mmio, A: FrameAllocator, T: FrameAllocator, const N: usize>
    VtdDomain<'u, M, A, T, SecondLevel, N>
{
    /// A second-level domain of format `fmt` walked by `units`: `fmt` must
    /// suit each ([`VtdUnit::check_second_level`]; for several units, the
    /// format of the one with the smallest widths), and each gives the
    /// domain a domain ID.
    pub fn second_level(
        units: [&'u VtdUnit<M, A>; N],
        tables: T,
        fmt: SecondLevel,
    ) -> Result<Self, VtdError> {
        units.iter().try_for_each(|u| u.check_second_level(&fmt))?;
        Self::build(units, tables, fmt, None)
    }
}

impl<'u, M: Mmio, A: FrameAllocator, T: FrameAllocator, const N: usize>
    VtdDomain<'u, M, A, T, X86_64, N>
{
    /// A first-level domain (x86-64 4-level paging, 1 GiB pages where every
    /// unit has CAP.FL1GP) walked by `units`, for the requests of `pasid`
    /// (0: requests without a PASID, through RID_PASID): its invalidations
    /// are PASID-based, tagged with it.
    pub fn first_level(
        units: [&'u VtdUnit<M, A>; N],
        tables: T,
        pasid: u32,
    ) -> Result<Self, VtdError> {
        let (mut huge, mut oa) = (true, 52);
        for u in &units {
            u.first_level_format()?;
            u.check_pasid(pasid)?;
            huge &= u.features().cap.first_level_1g();
            oa = oa.min(u.address_width());
        }
        let fmt = X86_64::new(4, huge, oa).map_err(|_| VtdError::BadAddressWidth(oa))?;
        Self::build(units, tables, fmt, Some(pasid))
    }
}

impl<'u, M: Mmio, A: FrameAllocator, T: FrameAllocator, F: VtdFormat, const N: usize>
    VtdDomain<'u, M, A, T, F, N>
{
    fn build(
        units: [&'u VtdUnit<M, A>; N],
        tables: T,
        fmt: F,
        first_level: Option<u32>,
    ) -> Result<Self, VtdError> {
        const { assert!(N > 0, "a domain needs a unit") };
        let mut inval = VtdMultiInvalidator::<'u, M, A, N>::new();
        let give_back = |inval: &VtdMultiInvalidator<'u, M, A, N>| {
            for i in inval.units() {
                i.unit.free_did(i.did);
            }
        };
        for unit in units {
            let did = match unit.alloc_did() {
                Ok(did) => did,
                Err(e) => {
                    give_back(&inval);
                    return Err(e);
                }
            };
            // Cannot fail: `N` units, `N` places.
            let _ = inval.push(VtdInvalidator {
                unit,
                did,
                first_level,
            });
        }
        let cache = VtdCache(units.iter().find_map(|u| u.walk_cache()));
        match PageTable::with_cache(fmt, tables, cache) {
            Ok(table) => Ok(Self {
                inner: ManuallyDrop::new(PageTableDomain::new(table, inval)),
                endpoints: spin::Mutex::new(heapless::Vec::new()),
                used: AtomicBool::new(false),
            }),
            Err(e) => {
                give_back(&inval);
                Err(match e {
                    Error::NoMemory => VtdError::NoMemory,
                    e => VtdError::Table(e),
                })
            }
        }
    }

    /// The domain ID on its (first) unit.
    pub fn did(&self) -> u16 {
        self.invalidator().units()[0].did
    }

    /// The PASID whose requests a first-level domain translates; `None`
    /// for second-level domains (which any PASID may use).
    pub fn pasid(&self) -> Option<u32> {
        self.invalidator().units()[0].first_level
    }

    /// Endpoints whose entries point at the domain now.
    pub fn attached(&self) -> usize {
        let eps = self.endpoints.lock();
        eps.iter().filter(|&&(i, e)| self.points_at(i, e)).count()
    }

    /// The entry the domain's endpoints on unit `i` hold.
    fn entry_on(&self, i: usize) -> ContextState {
        let did = self.invalidator().units()[i].did;
        self.table().format().entry(did, self.table().root().0)
    }

    /// Whether `e`'s entry on unit `i` points at the domain.
    fn points_at(&self, i: usize, e: Endpoint) -> bool {
        self.invalidator().units()[i]
            .unit
            .entry_is(e.dev, e.pasid, &self.entry_on(i))
    }

    /// Where `unit` is among the domain's units.
    fn index_of(&self, unit: &VtdUnit<M, A>) -> Result<usize, VtdError> {
        self.invalidator()
            .units()
            .iter()
            .position(|i| core::ptr::eq(i.unit, unit))
            .ok_or(VtdError::ForeignDomain)
    }
}

impl<M: Mmio, A: FrameAllocator, T: FrameAllocator, F: VtdFormat, const N: usize> Drop
    for VtdDomain<'_, M, A, T, F, N>
{
    fn drop(&mut self) {
        let endpoints = core::mem::take(self.endpoints.get_mut());
        let mut quiet = true;
        for &(i, e) in &endpoints {
            let want = self.entry_on(i);
            let unit = self.invalidator().units()[i].unit;
            let blocked = unit.update(e.dev, e.slot(), false, |now| {
                Ok((now == want).then_some(ContextState::NotPresent))
            });
            quiet &= blocked.is_ok();
        }
        if self.used.load(Ordering::Acquire) {
            for i in self.invalidator().units() {
                quiet &= i.unit.forget_domain(i.did, i.first_level).is_ok();
            }
        }
        if !quiet {
            iova_core::warn_event!("VT-d: domain teardown not invalidated: its tables are leaked");
            return;
        }
        for i in self.invalidator().units() {
            i.unit.free_did(i.did);
        }
        // SAFETY: dropped once, here. No entry points at the table any
        // more (made not present above, or moved elsewhere through the
        // unit, which invalidated it then), and the units hold nothing
        // cached under its domain IDs.
        unsafe { ManuallyDrop::drop(&mut self.inner) };
    }
}

impl<M: Mmio, A: FrameAllocator> VtdUnit<M, A> {
    /// A second-level domain of the deepest format this unit walks up to
    /// `max_levels` ([`second_level_format`](Self::second_level_format)),
    /// tables from `tables`, with a domain ID of this unit.
    pub fn second_level_domain<T: FrameAllocator>(
        &self,
        tables: T,
        max_levels: usize,
    ) -> Result<VtdDomain<'_, M, A, T>, VtdError> {
        VtdDomain::second_level([self], tables, self.second_level_format(max_levels)?)
    }

    /// A first-level domain ([`first_level_format`](Self::first_level_format))
    /// for the requests of `pasid` (0: requests without a PASID), with a
    /// domain ID of this unit.
    pub fn first_level_domain<T: FrameAllocator>(
        &self,
        tables: T,
        pasid: u32,
    ) -> Result<VtdDomain<'_, M, A, T, X86_64>, VtdError> {
        VtdDomain::first_level([self], tables, pasid)
    }

    /// Points `dev`'s requests without a PASID (its context entry, or in
    /// scalable mode its RID_PASID entry) at `domain`, which must be walked
    /// by this unit. What the entry held before (another domain,
    /// pass-through) is made not present and invalidated first; attaching
    /// again to the same domain does nothing. See the
    /// [module docs](crate::domain).
    pub fn attach<T: FrameAllocator, F: VtdFormat, const N: usize>(
        &self,
        dev: Bdf,
        domain: &VtdDomain<'_, M, A, T, F, N>,
    ) -> Result<(), VtdError> {
        self.attach_endpoint(Endpoint { dev, pasid: 0 }, domain)
    }

    /// Points the requests of `dev` tagged with `pasid` at `domain`
    /// (scalable mode), as [`attach`](Self::attach) does. A first-level
    /// domain takes only the PASID it was built for.
    pub fn attach_pasid<T: FrameAllocator, F: VtdFormat, const N: usize>(
        &self,
        dev: Bdf,
        pasid: u32,
        domain: &VtdDomain<'_, M, A, T, F, N>,
    ) -> Result<(), VtdError> {
        self.check_pasid(pasid)?;
        self.attach_endpoint(Endpoint { dev, pasid }, domain)
    }

    fn attach_endpoint<T: FrameAllocator, F: VtdFormat, const N: usize>(
        &self,
        ep: Endpoint,
        domain: &VtdDomain<'_, M, A, T, F, N>,
    ) -> Result<(), VtdError> {
        let i = domain.index_of(self)?;
        if let Some(p) = domain.pasid().filter(|&p| p != ep.pasid) {
            return Err(VtdError::PasidMismatch {
                domain: p,
                requested: ep.pasid,
            });
        }
        let want = domain.entry_on(i);
        let mut eps = domain.endpoints.lock();
        let known = eps.contains(&(i, ep));
        if !known && eps.is_full() {
            eps.retain(|&(j, e)| domain.points_at(j, e));
            if eps.is_full() {
                return Err(VtdError::DomainFull);
            }
        }
        domain.used.store(true, Ordering::Release);
        let r = self.update(ep.dev, ep.slot(), false, |now| {
            Ok((now != want).then_some(want))
        });
        // Recorded whenever the entry may point at the domain: also after a
        // failure past the write (an invalidation that did not complete).
        if !known && (r.is_ok() || self.entry_is(ep.dev, ep.pasid, &want)) {
            // Cannot fail: room was made above.
            let _ = eps.push((i, ep));
        }
        r
    }

    /// Blocks `dev`'s requests without a PASID, which must be attached to
    /// `domain` ([`VtdError::NotAttached`] otherwise, nothing changed).
    pub fn detach<T: FrameAllocator, F: VtdFormat, const N: usize>(
        &self,
        dev: Bdf,
        domain: &VtdDomain<'_, M, A, T, F, N>,
    ) -> Result<(), VtdError> {
        self.detach_endpoint(Endpoint { dev, pasid: 0 }, domain)
    }

    /// Blocks the requests of `dev` tagged with `pasid`, which must be
    /// attached to `domain`.
    pub fn detach_pasid<T: FrameAllocator, F: VtdFormat, const N: usize>(
        &self,
        dev: Bdf,
        pasid: u32,
        domain: &VtdDomain<'_, M, A, T, F, N>,
    ) -> Result<(), VtdError> {
        self.check_pasid(pasid)?;
        self.detach_endpoint(Endpoint { dev, pasid }, domain)
    }

    fn detach_endpoint<T: FrameAllocator, F: VtdFormat, const N: usize>(
        &self,
        ep: Endpoint,
        domain: &VtdDomain<'_, M, A, T, F, N>,
    ) -> Result<(), VtdError> {
        let i = domain.index_of(self)?;
        let want = domain.entry_on(i);
        let mut eps = domain.endpoints.lock();
        self.update(ep.dev, ep.slot(), false, |now| {
            if now == want {
                Ok(Some(ContextState::NotPresent))
            } else {
                Err(VtdError::NotAttached(ep))
            }
        })?;
        eps.retain(|&x| x != (i, ep));
        Ok(())
    }
}

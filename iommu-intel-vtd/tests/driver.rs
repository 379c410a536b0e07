//! The driver against the fake unit: probe, context states, both table
//! depths, every descriptor, invalidation counts, faults, and tests that fail
//! if the driver forgets an invalidation.

#![cfg(feature = "fakes")]

use std::sync::Arc;
use std::vec::Vec;

use iova_core::fakes::FakeFrames;
use iova_core::iova_alloc::{IovaAllocator, IovaAllocatorConfig};
use iova_core::pt::PtFormat;
use iova_core::{
    DmaMapper, IommuDomain, IotlbGather, IotlbInvalidate, Iova, IovaRange, PageTable,
    PageTableDomain, PhysAddr, Prot,
};

use iommu_intel_vtd::descriptor::{self, ContextScope, Descriptor, IotlbScope};
use iommu_intel_vtd::fake::{Dma, FakeVtd, QEMU_CAP_39, QEMU_CAP_48, QEMU_ECAP};
use iommu_intel_vtd::regs;
use iommu_intel_vtd::{
    Bdf, ContextState, FaultReason, FaultRecord, SecondLevel, UnitConfig, VtdDomain, VtdError,
    VtdInvalidator, VtdUnit,
};

#[path = "driver/attach.rs"]
mod attach;
#[path = "driver/dmar_tables.rs"]
mod dmar_tables;
#[path = "driver/registers.rs"]
mod registers;

const EDU: Bdf = Bdf::new(0, 1, 0);
const OTHER: Bdf = Bdf::new(0, 2, 0);
const FAR: Bdf = Bdf::new(3, 0, 0);
const CM: u64 = 1 << 7;
const RWBF: u64 = 1 << 4;
const QI: u64 = 1 << 1;

type Unit<'f> = VtdUnit<&'f FakeVtd, Arc<FakeFrames>>;
type Domain<'u, 'f> = VtdDomain<'u, &'f FakeVtd, Arc<FakeFrames>, Arc<FakeFrames>>;
/// A table and invalidation that the unit knows nothing of, for tests of
/// [`VtdUnit::set_context`] itself.
type RawDomain<'u, 'f> =
    PageTableDomain<SecondLevel, Arc<FakeFrames>, VtdInvalidator<'u, &'f FakeVtd, Arc<FakeFrames>>>;

/// Cache maintenance for the fake's non-coherent walker (QEMU's ECAP has
/// C = 0): counts cleaned bytes. The fake reads host memory, so nothing
/// needs writing back; the counts show the driver asked.
struct CountingCache(std::sync::atomic::AtomicU64);

impl iova_core::CacheMaintenance for CountingCache {
    fn is_coherent(&self) -> bool {
        false
    }
    fn clean(&self, _: PhysAddr, len: u64) {
        self.0.fetch_add(len, std::sync::atomic::Ordering::Relaxed);
    }
    fn invalidate(&self, _: PhysAddr, _: u64) {}
    fn complete(&self) {}
}

static CLEANED: CountingCache = CountingCache(std::sync::atomic::AtomicU64::new(0));

fn cfg() -> UnitConfig {
    UnitConfig {
        walk_cache: Some(&CLEANED),
        ..UnitConfig::default()
    }
}

fn fake(cap: u64, ecap: u64) -> (Arc<FakeFrames>, FakeVtd) {
    let frames = Arc::new(FakeFrames::new());
    let f = FakeVtd::new(Arc::clone(&frames), cap, ecap);
    (frames, f)
}

fn unit<'f>(f: &'f FakeVtd, frames: &Arc<FakeFrames>) -> Unit<'f> {
    VtdUnit::new(f, Arc::clone(frames), cfg()).unwrap()
}

/// A second-level domain of `levels` levels (at most) with the unit's next
/// free domain ID.
fn domain<'u, 'f>(u: &'u Unit<'f>, frames: &Arc<FakeFrames>, levels: usize) -> Domain<'u, 'f> {
    u.second_level_domain(Arc::clone(frames), levels).unwrap()
}

fn attach(u: &Unit<'_>, d: &Domain<'_, '_>, dev: Bdf) {
    u.attach(dev, d).unwrap();
}

fn raw_domain<'u, 'f>(
    u: &'u Unit<'f>,
    frames: &Arc<FakeFrames>,
    did: u16,
    levels: usize,
) -> RawDomain<'u, 'f> {
    let fmt = u.second_level_format(levels).unwrap();
    let table = PageTable::new(fmt, Arc::clone(frames)).unwrap();
    PageTableDomain::new(table, VtdInvalidator::new(u, did).unwrap())
}

/// Points `dev` at a raw domain with `set_context`.
///
/// # Safety
///
/// `did` is not held by a [`VtdDomain`] of `u` nor by its pass-through
/// entries, its present entries all point at `d`, and `d` outlives every
/// DMA the test makes through them.
unsafe fn raw_attach(u: &Unit<'_>, d: &RawDomain<'_, '_>, dev: Bdf, did: u16) {
    let aw = d.table().format().context_aw();
    let state = ContextState::Translated {
        did,
        root: d.table().root().0,
        aw,
    };
    // SAFETY: the caller's contract is `set_context`'s.
    unsafe { u.set_context(dev, state, false) }.unwrap();
}

fn faults(u: &Unit<'_>) -> Vec<FaultRecord> {
    let mut v = Vec::new();
    u.drain_faults(|r| v.push(r)).unwrap();
    v
}

fn map(d: &impl IommuDomain, iova: u64, pa: u64, len: u64, prot: Prot) {
    let mut g = IotlbGather::new();
    d.map(Iova(iova), PhysAddr(pa), len, prot, &mut g).unwrap();
    d.flush(&mut g).unwrap();
}

fn unmap(d: &impl IommuDomain, iova: u64, len: u64) {
    let mut g = IotlbGather::new();
    d.unmap(Iova(iova), len, &mut g).unwrap();
    d.flush(&mut g).unwrap();
}

#[test]
fn probe_takes_over_with_queued_invalidation() {
    for (cap, levels) in [(QEMU_CAP_39, 3), (QEMU_CAP_48, 4)] {
        let (frames, f) = fake(cap, QEMU_ECAP);
        let u = unit(&f, &frames);
        assert!(u.queued_invalidation());
        assert_eq!(u.features().max_levels(), Some(levels));
        assert_eq!(u.second_level_format(5).unwrap().levels(), levels);
        let s = f.stats();
        assert_eq!(s.root_pointer_sets, 1);
        assert_eq!(s.descriptors[descriptor::TYPE_CONTEXT as usize], 1);
        assert_eq!(s.descriptors[descriptor::TYPE_IOTLB as usize], 1);
        assert_eq!(s.descriptors[descriptor::TYPE_WAIT as usize], 1);
        assert_eq!(s.status_writes, 1);
        assert_eq!(s.unknown_accesses, 0);
        let c = u.counters().snapshot();
        assert_eq!(
            (c.context, c.iotlb_global, c.waits, c.wait_descriptors),
            (1, 1, 1, 1)
        );
        assert!(!u.translation_enabled().unwrap());
        let status = u.global_status().unwrap();
        assert_eq!(
            status & (regs::G_TE | regs::G_SRTP | regs::G_QIE),
            regs::G_SRTP | regs::G_QIE
        );
        // Translation off: DMA is untranslated.
        assert_eq!(f.translate(EDU, 0x1234, Dma::Read), Ok(0x1234));
        u.enable_translation().unwrap();
        assert!(u.translation_enabled().unwrap());
        assert_eq!(u.global_status().unwrap(), status | regs::G_TE);
        u.shutdown().unwrap();
        assert_eq!(frames.live(), 0, "the unit frees its root table and queue");
    }
}

#[test]
fn a_non_coherent_walker_needs_cache_maintenance() {
    let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP);
    assert_eq!(
        VtdUnit::new(&f, Arc::clone(&frames), UnitConfig::default()).err(),
        Some(VtdError::NonCoherentWalker)
    );
    // A coherent unit (ECAP.C) needs none, and gets none.
    let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP | 1);
    let u = VtdUnit::new(&f, Arc::clone(&frames), UnitConfig::default()).unwrap();
    let d = domain(&u, &frames, 4);
    attach(&u, &d, EDU);
    // A non-coherent one has its tables and queue cleaned.
    let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP);
    let before = CLEANED.0.load(std::sync::atomic::Ordering::Relaxed);
    let u = unit(&f, &frames);
    let d = domain(&u, &frames, 4);
    attach(&u, &d, EDU);
    let after = CLEANED.0.load(std::sync::atomic::Ordering::Relaxed);
    // Root table (4 KiB), three descriptors, the root entry and the
    // context entry at least (other tests run concurrently: at least).
    assert!(after - before >= 4096 + 3 * 16 + 16 + 16);
}

#[test]
fn probe_refuses_what_it_cannot_drive() {
    let (frames, f) = fake(QEMU_CAP_48 & !(0x1f << 8), QEMU_ECAP);
    assert_eq!(
        VtdUnit::new(&f, Arc::clone(&frames), cfg()).err(),
        Some(VtdError::NoDmaTranslation)
    );
    let (frames, f) = fake(QEMU_CAP_48 | 7, QEMU_ECAP);
    assert_eq!(
        VtdUnit::new(&f, Arc::clone(&frames), cfg()).err(),
        Some(VtdError::NoDomains)
    );
    // Fault records at 0x3f0 * 16: beyond a 4 KiB block.
    let (frames, f) = fake((QEMU_CAP_48 & !(0x3ff << 24)) | 0x3f0 << 24, QEMU_ECAP);
    assert!(matches!(
        VtdUnit::new(&f, Arc::clone(&frames), cfg()).err(),
        Some(VtdError::RegistersTooSmall {
            needed: 0x3f10,
            have: 4096
        })
    ));
    for n in 0..3 {
        let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP);
        frames.fail_after(n);
        assert_eq!(
            VtdUnit::new(&f, Arc::clone(&frames), cfg()).err(),
            Some(VtdError::NoMemory)
        );
        assert_eq!(frames.live(), 0, "nothing leaked after {n} allocations");
    }
    // Nothing was programmed by a refused probe.
    assert_eq!(f.stats().root_pointer_sets, 0);
}

#[test]
fn devices_without_a_context_entry_are_blocked_and_reported() {
    let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP);
    let u = unit(&f, &frames);
    let d = domain(&u, &frames, 4);
    attach(&u, &d, EDU);
    u.enable_translation().unwrap();
    // Same bus as a present entry: context not present.
    assert_eq!(
        f.translate(OTHER, 0x1000, Dma::Write),
        Err(FaultReason::ContextNotPresent)
    );
    let r = faults(&u);
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].source, r[0].reason, r[0].address),
        (OTHER, FaultReason::ContextNotPresent, 0x1000)
    );
    assert_eq!(r[0].access, iommu_intel_vtd::fault::AccessKind::Write);
    // A bus with no context table: root not present.
    assert_eq!(
        f.translate(FAR, 0x2000, Dma::Read),
        Err(FaultReason::RootNotPresent)
    );
    let r = faults(&u);
    assert_eq!(
        (r[0].source, r[0].reason),
        (FAR, FaultReason::RootNotPresent)
    );
    assert_eq!(r[0].access, iommu_intel_vtd::fault::AccessKind::Read);
    assert_eq!(u.counters().snapshot().faults, 2);
    assert!(faults(&u).is_empty(), "records are cleared");
}

#[test]
fn translated_dma_at_both_depths_with_permissions() {
    for (cap, levels) in [(QEMU_CAP_39, 3), (QEMU_CAP_48, 4)] {
        let (frames, f) = fake(cap, QEMU_ECAP);
        let u = unit(&f, &frames);
        let d = domain(&u, &frames, levels);
        attach(&u, &d, EDU);
        u.enable_translation().unwrap();
        let iova = 0x40_0000_0000 - 0x10_0000; // near the top of 39 bits
        map(&d, iova, 0x1234_5000, 0x2000, Prot::RW);
        map(&d, iova + 0x2000, 0x7000, 0x1000, Prot::READ);
        assert_eq!(f.translate(EDU, iova + 0x1010, Dma::Write), Ok(0x1234_6010));
        assert_eq!(f.translate(EDU, iova + 0x2004, Dma::Read), Ok(0x7004));
        assert_eq!(
            f.translate(EDU, iova + 0x2004, Dma::Write),
            Err(FaultReason::WriteDenied)
        );
        // Another device on the same domain would be compressed with EDU's
        // record if it were the same SID; it is not.
        assert_eq!(
            f.translate(EDU, iova + 0x3000, Dma::Read),
            Err(FaultReason::ReadDenied)
        );
        let r = faults(&u);
        assert_eq!(r.len(), 1, "one record per source ID until cleared");
        assert_eq!(
            (r[0].reason, r[0].address),
            (FaultReason::WriteDenied, iova + 0x2000)
        );
        // Beyond the table's (and MGAW's) width.
        assert_eq!(
            f.translate(EDU, 1 << (9 * levels + 12), Dma::Read),
            Err(FaultReason::BeyondAddressWidth)
        );
    }
}

#[test]
fn pass_through_only_where_offered() {
    let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP);
    let u = unit(&f, &frames);
    u.pass_through(EDU).unwrap();
    u.enable_translation().unwrap();
    assert_eq!(f.translate(EDU, 0xabc_d000, Dma::Write), Ok(0xabc_d000));
    // The widest AW the unit has, and a domain ID of its own (the first).
    assert_eq!(u.context(EDU), ContextState::PassThrough { did: 1, aw: 2 });
    u.pass_through(OTHER).unwrap();
    assert_eq!(
        u.context(OTHER),
        ContextState::PassThrough { did: 1, aw: 2 }
    );
    assert_eq!(domain(&u, &frames, 4).did(), 2, "not the pass-through ID");
    let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP & !(1 << 6));
    let u = unit(&f, &frames);
    assert_eq!(u.pass_through(EDU), Err(VtdError::PassThroughUnsupported));
    // SAFETY: refused before anything is written.
    let raw = unsafe { u.set_context(EDU, ContextState::PassThrough { did: 3, aw: 3 }, false) };
    assert_eq!(raw, Err(VtdError::PassThroughUnsupported));
    assert_eq!(domain(&u, &frames, 4).did(), 1, "no ID taken");
}

#[test]
fn context_changes_invalidate_the_cached_entry() {
    let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP);
    let u = unit(&f, &frames);
    let a = domain(&u, &frames, 4);
    let b = domain(&u, &frames, 4);
    map(&a, 0x10_0000, 0xa000, 0x1000, Prot::RW);
    map(&b, 0x10_0000, 0xb000, 0x1000, Prot::RW);
    attach(&u, &a, EDU);
    u.enable_translation().unwrap();
    assert_eq!(f.translate(EDU, 0x10_0000, Dma::Read), Ok(0xa000));
    assert!(f.cached_contexts() == 1 && f.cached_translations() == 1);
    // Move the device to domain 2: the old context entry and domain 1's
    // translations must not be used any more.
    assert_eq!((a.did(), b.did()), (1, 2));
    attach(&u, &b, EDU);
    assert_eq!(f.translate(EDU, 0x10_0000, Dma::Read), Ok(0xb000));
    assert_eq!((a.attached(), b.attached()), (0, 1));
    // Same domain ID, new table (e.g. the domain was rebuilt): translations
    // cached under the domain ID must go too.
    let did = u.alloc_domain_id().unwrap();
    let c = raw_domain(&u, &frames, did, 4);
    let c2 = raw_domain(&u, &frames, did, 4);
    map(&c, 0x10_0000, 0xc000, 0x1000, Prot::RW);
    map(&c2, 0x10_0000, 0xd000, 0x1000, Prot::RW);
    // SAFETY: `did` is the test's own; its entry points at `c`, then at
    // `c2` (the move invalidates `c`'s); both outlive the DMA below.
    unsafe { raw_attach(&u, &c, EDU, did) };
    assert_eq!(f.translate(EDU, 0x10_0000, Dma::Read), Ok(0xc000));
    // SAFETY: as above.
    unsafe { raw_attach(&u, &c2, EDU, did) };
    assert_eq!(f.translate(EDU, 0x10_0000, Dma::Read), Ok(0xd000));
    // Pass-through, then detach: blocked again.
    u.pass_through(EDU).unwrap();
    assert_eq!(f.translate(EDU, 0x10_0000, Dma::Read), Ok(0x10_0000));
    u.block(EDU).unwrap();
    assert_eq!(
        f.translate(EDU, 0x10_0000, Dma::Read),
        Err(FaultReason::ContextNotPresent)
    );
    assert_eq!(u.context(EDU), ContextState::NotPresent);
    // Domain IDs the unit does not have.
    assert_eq!(VtdInvalidator::new(&u, 0).map(|_| ()), Ok(()));
    let state = ContextState::Translated {
        did,
        root: 0x1234,
        aw: 2,
    };
    // SAFETY: refused before anything is written (the root is unaligned).
    let r = unsafe { u.set_context(EDU, state, false) };
    assert!(matches!(r, Err(VtdError::FrameUnreachable(0x1234))));
    let state = ContextState::Translated {
        did,
        root: 0x1000,
        aw: 3,
    };
    // SAFETY: refused before anything is written (no 5-level tables).
    let r = unsafe { u.set_context(EDU, state, false) };
    assert!(matches!(r, Err(VtdError::LevelsUnsupported(5))));
}

#[test]
fn fault_processing_disable_suppresses_translation_faults() {
    let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP);
    let u = unit(&f, &frames);
    let did = u.alloc_domain_id().unwrap();
    let d = raw_domain(&u, &frames, did, 4);
    let state = ContextState::Translated {
        did,
        root: d.table().root().0,
        aw: 2,
    };
    // SAFETY: the test's own domain ID, for `d` only, which outlives the DMA.
    unsafe { u.set_context(EDU, state, true) }.unwrap();
    u.enable_translation().unwrap();
    assert_eq!(
        f.translate(EDU, 0x5000, Dma::Write),
        Err(FaultReason::WriteDenied)
    );
    assert!(faults(&u).is_empty());
}

/// An invalidator that does nothing: what a driver that forgets looks like.
struct Forgetful;
// SAFETY: deliberately wrong, only used to show the fake catches it; the
// fake's tables are never freed while it could walk them (frames are
// reclaimed only when the test ends).
unsafe impl IotlbInvalidate for Forgetful {
    fn invalidate(&self, _: &IotlbGather) -> Result<(), iova_core::Error> {
        Ok(())
    }
}

#[test]
fn a_forgotten_iotlb_invalidation_leaves_a_stale_translation() {
    let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP);
    let u = unit(&f, &frames);
    let fmt = u.second_level_format(4).unwrap();
    let broken = PageTableDomain::new(PageTable::new(fmt, Arc::clone(&frames)).unwrap(), Forgetful);
    let did = u.alloc_domain_id().unwrap();
    let state = ContextState::Translated {
        did,
        root: broken.table().root().0,
        aw: 2,
    };
    // SAFETY: the missing invalidation is the point; it stays harmless
    // because the fake only reports the addresses a DMA would reach, and
    // `broken`'s tables outlive every translation the test asks for.
    unsafe { u.set_context(EDU, state, false) }.unwrap();
    u.enable_translation().unwrap();
    let mut g = IotlbGather::new();
    broken
        .map(Iova(0x20_0000), PhysAddr(0x9000), 0x1000, Prot::RW, &mut g)
        .unwrap();
    broken.flush(&mut g).unwrap();
    assert_eq!(f.translate(EDU, 0x20_0000, Dma::Write), Ok(0x9000));
    broken.unmap(Iova(0x20_0000), 0x1000, &mut g).unwrap();
    broken.flush(&mut g).unwrap();
    // The fake still uses the cached translation: the bug is visible.
    assert_eq!(f.translate(EDU, 0x20_0000, Dma::Write), Ok(0x9000));

    // The real invalidator removes it.
    let d = domain(&u, &frames, 4);
    assert_eq!(d.did(), 2);
    attach(&u, &d, OTHER);
    map(&d, 0x20_0000, 0x9000, 0x1000, Prot::RW);
    assert_eq!(f.translate(OTHER, 0x20_0000, Dma::Write), Ok(0x9000));
    let before = u.counters().snapshot();
    unmap(&d, 0x20_0000, 0x1000);
    let delta = u.counters().snapshot().since(&before);
    assert_eq!(
        (delta.iotlb_page, delta.waits, delta.iotlb_domain),
        (1, 1, 0)
    );
    assert_eq!(
        f.translate(OTHER, 0x20_0000, Dma::Write),
        Err(FaultReason::WriteDenied)
    );
}

#[test]
fn freed_tables_drop_the_paging_structure_cache() {
    // Unmapping a whole 2 MiB span frees its last-level table: the flush must
    // not carry the leaf-only hint, or the unit keeps walking the freed table.
    let (frames, f) = fake(QEMU_CAP_48 & !(3 << 34), QEMU_ECAP); // no superpages
    let u = unit(&f, &frames);
    let d = domain(&u, &frames, 4);
    attach(&u, &d, EDU);
    u.enable_translation().unwrap();
    map(&d, 0x40_0000, 0x1_0000, 0x1000, Prot::RW);
    assert_eq!(f.translate(EDU, 0x40_0000, Dma::Read), Ok(0x1_0000));
    let hints = f.stats().psi_leaf_hint;
    unmap(&d, 0x40_0000, 0x20_0000);
    assert_eq!(
        f.stats().psi_leaf_hint,
        hints,
        "tables changed: no leaf hint"
    );
    map(&d, 0x40_0000, 0x2_0000, 0x1000, Prot::RW);
    assert_eq!(f.translate(EDU, 0x40_0000, Dma::Read), Ok(0x2_0000));
    // A leaf-only unmap carries the hint.
    unmap(&d, 0x40_0000, 0x1000);
    assert_eq!(f.stats().psi_leaf_hint, hints + 1);
    assert_eq!(
        f.translate(EDU, 0x40_0000, Dma::Read),
        Err(FaultReason::ReadDenied)
    );
}

#[test]
fn two_step_batches_flush_once() {
    let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP);
    let u = unit(&f, &frames);
    let d = domain(&u, &frames, 4);
    attach(&u, &d, EDU);
    u.enable_translation().unwrap();
    let aperture = IovaRange::new(Iova(0x1_0000_0000), 1 << 32).unwrap();
    let iovas =
        IovaAllocator::with_capacity(IovaAllocatorConfig::new(aperture, 0x1000), 64, 1).unwrap();
    let cpu = || 0;
    let mapper = DmaMapper::new(&d, &iovas, &cpu).unwrap();
    let mut state = mapper.try_alloc(64 * 0x1000, 0x1000).unwrap();
    let pa = |i: u64| 0x100_0000 + i * 0x3000; // scattered
    let before = u.counters().snapshot();
    for i in 0..64 {
        state
            .link(i * 0x1000, PhysAddr(pa(i)), 0x1000, Prot::RW)
            .unwrap();
    }
    state.sync().unwrap();
    let linked = u.counters().snapshot().since(&before);
    assert_eq!(
        linked.waits, 0,
        "new entries need no invalidation without CM"
    );
    for i in 0..64 {
        let iova = state.dma_addr(i * 0x1000 + 8).unwrap().0;
        assert_eq!(f.translate(EDU, iova, Dma::Read), Ok(pa(i) + 8));
    }
    let before = u.counters().snapshot();
    state.unlink(0, 64 * 0x1000).unwrap();
    state.sync().unwrap();
    let unlinked = u.counters().snapshot().since(&before);
    assert_eq!(
        (
            unlinked.iotlb_page,
            unlinked.waits,
            unlinked.wait_descriptors
        ),
        (1, 1, 1)
    );
    for i in 0..64 {
        let iova = state.dma_addr(i * 0x1000).unwrap().0;
        assert_eq!(
            f.translate(EDU, iova, Dma::Read),
            Err(FaultReason::ReadDenied)
        );
        faults(&u);
    }
    // Three disjoint ranges: three page-selective descriptors, one wait.
    for i in [0, 10, 20] {
        state
            .link(i * 0x1000, PhysAddr(pa(i)), 0x1000, Prot::RW)
            .unwrap();
    }
    state.sync().unwrap();
    let before = u.counters().snapshot();
    for i in [0, 10, 20] {
        state.unlink(i * 0x1000, 0x1000).unwrap();
    }
    state.sync().unwrap();
    let three = u.counters().snapshot().since(&before);
    assert_eq!((three.iotlb_page, three.waits), (3, 1));
    state.destroy().unwrap();
}

/// Deferred invalidation: 16 unlinks wait in a flush queue; one queue
/// flush is one batch of IOTLB descriptors and one wait.
#[test]
fn a_flush_queue_is_one_wait_for_many_unlinks() {
    use iova_core::flush_queue::{DeferLimits, FlushQueue};
    let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP);
    let u = unit(&f, &frames);
    let d = domain(&u, &frames, 4);
    attach(&u, &d, EDU);
    u.enable_translation().unwrap();
    let aperture = IovaRange::new(Iova(0x1_0000_0000), 1 << 32).unwrap();
    let iovas =
        IovaAllocator::with_capacity(IovaAllocatorConfig::new(aperture, 0x1000), 64, 1).unwrap();
    let cpu = || 0;
    let clock = || 0u64;
    let limits = DeferLimits {
        max_entries: 16,
        max_bytes: u64::MAX,
        max_age: u64::MAX,
    };
    let queue = FlushQueue::with_capacity(limits, &clock, 16);
    let mapper = DmaMapper::new(&d, &iovas, &cpu)
        .unwrap()
        .with_flush_queue(&queue);
    let before = u.counters().snapshot();
    let mut gone = Vec::new();
    for i in 0..16u64 {
        let mut st = mapper.try_alloc(0x1000, 0x1000).unwrap();
        st.link(0, PhysAddr(0x100_0000 + i * 0x3000), 0x1000, Prot::RW)
            .unwrap();
        st.sync().unwrap();
        assert!(f.translate(EDU, st.iova().0, Dma::Read).is_ok());
        gone.push(st.iova().0);
        st.destroy().unwrap();
        if i < 15 {
            assert_eq!(u.counters().snapshot().since(&before).waits, 0, "deferred");
            assert!(
                f.translate(EDU, gone[0], Dma::Read).is_ok(),
                "stale until the flush"
            );
        }
    }
    let c = u.counters().snapshot().since(&before);
    assert_eq!(c.waits, 1, "one wait for 16 unlinks");
    assert!(c.iotlb_page + c.iotlb_domain >= 1 && c.iotlb_page <= 8);
    for iova in gone {
        assert!(f.translate(EDU, iova, Dma::Read).is_err(), "never after");
    }
    faults(&u);
}

/// The core's model of adjacent states over second-level domains of both
/// depths: after every step the device reaches exactly the live links (the
/// fake's IOTLB keeps what was not invalidated, as hardware does).
#[test]
fn adjacent_states_model() {
    let (seeds, steps) = if cfg!(miri) { (1, 80) } else { (6, 600) };
    for (cap, levels) in [(QEMU_CAP_39, 3), (QEMU_CAP_48, 4)] {
        for seed in 0..seeds {
            let (frames, f) = fake(cap, QEMU_ECAP);
            let u = unit(&f, &frames);
            let d = domain(&u, &frames, levels);
            attach(&u, &d, EDU);
            u.enable_translation().unwrap();
            let run = iova_core::fakes::AdjacentStates {
                window: IovaRange::new(Iova(0x40_0000_0000 >> 2), 24 * 0x1000).unwrap(),
                pa_base: PhysAddr(0x8000_0000),
                seed,
                steps,
            };
            iova_core::fakes::check_adjacent_states(&d, run, &|iova| {
                f.translate(EDU, iova.0, Dma::Read).ok().map(PhysAddr)
            });
        }
    }
}

#[test]
fn too_many_blocks_fall_back_to_domain_selective() {
    // MAMV 0: one page per descriptor, more than psi_limit of them.
    let cap = QEMU_CAP_48 & !(0x3f << 48);
    let (frames, f) = fake(cap, QEMU_ECAP);
    let u = unit(&f, &frames);
    let d = domain(&u, &frames, 4);
    attach(&u, &d, EDU);
    u.enable_translation().unwrap();
    map(&d, 0x10_0000, 0x10_0000, 0x40_000, Prot::RW);
    let before = u.counters().snapshot();
    unmap(&d, 0x10_0000, 0x4000);
    let small = u.counters().snapshot().since(&before);
    assert_eq!((small.iotlb_page, small.iotlb_domain), (4, 0));
    assert_eq!(
        f.translate(EDU, 0x10_2000, Dma::Read),
        Err(FaultReason::ReadDenied)
    );
    let before = u.counters().snapshot();
    unmap(&d, 0x10_4000, 0x3c_000);
    let big = u.counters().snapshot().since(&before);
    assert_eq!((big.iotlb_page, big.iotlb_domain, big.waits), (0, 1, 1));
    // Without PSI at all: domain-selective.
    let (frames, f) = fake(QEMU_CAP_48 & !(1 << 39), QEMU_ECAP);
    let u = unit(&f, &frames);
    let d = domain(&u, &frames, 4);
    attach(&u, &d, EDU);
    u.enable_translation().unwrap();
    map(&d, 0x10_0000, 0x10_0000, 0x1000, Prot::RW);
    assert!(f.translate(EDU, 0x10_0000, Dma::Read).is_ok());
    let before = u.counters().snapshot();
    unmap(&d, 0x10_0000, 0x1000);
    let c = u.counters().snapshot().since(&before);
    assert_eq!((c.iotlb_page, c.iotlb_domain), (0, 1));
    assert!(f.translate(EDU, 0x10_0000, Dma::Read).is_err());
}

#[test]
fn caching_mode_invalidates_new_entries_too() {
    let (frames, f) = fake(QEMU_CAP_48 | CM, QEMU_ECAP);
    let u = unit(&f, &frames);
    assert!(matches!(
        VtdInvalidator::new(&u, 0),
        Err(VtdError::BadDomainId(0))
    ));
    u.enable_translation().unwrap();
    // The unit caches EDU's not-present context entry...
    assert_eq!(
        f.translate(EDU, 0x10_0000, Dma::Read),
        Err(FaultReason::RootNotPresent)
    );
    faults(&u);
    let d = domain(&u, &frames, 4);
    attach(&u, &d, EDU);
    // ...and the driver invalidated it when making the entry present.
    assert_eq!(
        f.translate(EDU, 0x10_0000, Dma::Read),
        Err(FaultReason::ReadDenied)
    );
    faults(&u);
    // Now a not-present translation is cached; mapping must invalidate it.
    let before = u.counters().snapshot();
    map(&d, 0x10_0000, 0x5000, 0x1000, Prot::RW);
    let c = u.counters().snapshot().since(&before);
    assert_eq!((c.iotlb_page, c.waits), (1, 1));
    assert_eq!(f.translate(EDU, 0x10_0000, Dma::Read), Ok(0x5000));

    // The same with a forgetful driver keeps faulting: the test would catch it.
    let fmt = u.second_level_format(4).unwrap();
    let broken = PageTableDomain::new(PageTable::new(fmt, Arc::clone(&frames)).unwrap(), Forgetful);
    let state = ContextState::Translated {
        did: u.alloc_domain_id().unwrap(),
        root: broken.table().root().0,
        aw: 2,
    };
    // SAFETY: as in the test above: a forgotten invalidation whose only
    // effect is the fault the fake reports.
    unsafe { u.set_context(OTHER, state, false) }.unwrap();
    assert!(f.translate(OTHER, 0x30_0000, Dma::Read).is_err());
    let mut g = IotlbGather::new();
    broken
        .map(Iova(0x30_0000), PhysAddr(0x6000), 0x1000, Prot::RW, &mut g)
        .unwrap();
    broken.flush(&mut g).unwrap();
    assert_eq!(
        f.translate(OTHER, 0x30_0000, Dma::Read),
        Err(FaultReason::ReadDenied)
    );
}

#[test]
fn register_based_invalidation_and_write_buffer_flush() {
    let (frames, f) = fake(QEMU_CAP_48 | RWBF, QEMU_ECAP & !QI);
    let u = unit(&f, &frames);
    assert!(!u.queued_invalidation());
    let s = f.stats();
    assert_eq!(
        s.register_invalidations, 2,
        "global context + global IOTLB at probe"
    );
    assert_eq!(s.descriptors.iter().sum::<u64>(), 0);
    let d = domain(&u, &frames, 4);
    let wbf = f.stats().write_buffer_flushes;
    attach(&u, &d, EDU);
    assert_eq!(
        f.stats().write_buffer_flushes,
        wbf + 1,
        "RWBF: flushed after the context entry"
    );
    u.enable_translation().unwrap();
    map(&d, 0x10_0000, 0x8000, 0x2000, Prot::RW);
    assert_eq!(
        f.stats().write_buffer_flushes,
        wbf + 2,
        "RWBF: flushed after new entries"
    );
    assert_eq!(f.translate(EDU, 0x10_1000, Dma::Read), Ok(0x9000));
    let before = f.stats().register_invalidations;
    unmap(&d, 0x10_0000, 0x2000);
    assert_eq!(f.stats().register_invalidations, before + 1);
    assert_eq!(
        f.translate(EDU, 0x10_1000, Dma::Read),
        Err(FaultReason::ReadDenied)
    );
    assert_eq!(f.stats().ignored_register_invalidations, 0);
    let c = u.counters().snapshot();
    assert_eq!(c.waits, 0);
    assert!(c.register_invalidations >= 3);
    assert_eq!(
        u.submit(&[Descriptor::pasid_cache(descriptor::PasidCacheScope::Global)]),
        Err(VtdError::RegisterInvalidationFailed)
    );
    u.submit(&[Descriptor::wait_interrupt()]).unwrap();
    // Context change through CCMD, device-selective.
    u.detach(EDU, &d).unwrap();
    assert_eq!(
        f.translate(EDU, 0x10_1000, Dma::Read),
        Err(FaultReason::ContextNotPresent)
    );
}

#[test]
fn a_queue_error_is_reported_with_the_descriptor_and_the_queue_recovers() {
    let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP);
    let u = unit(&f, &frames);
    let bad = Descriptor {
        lo: descriptor::TYPE_IOTLB | 1 << 4 | 1 << 8,
        hi: 0,
    };
    let good = Descriptor::context(ContextScope::Global);
    let err = u.submit(&[good, bad]).unwrap_err();
    assert_eq!(
        err,
        VtdError::QueueError {
            index: 4,
            descriptor: bad
        }
    );
    assert_eq!(u.counters().snapshot().queue_errors, 1);
    // PASID-cache invalidation is invalid in legacy mode; page-selective
    // with a mask above MAMV and an unaligned address too.
    for bad in [
        Descriptor {
            lo: descriptor::TYPE_PASID_CACHE,
            hi: 0,
        },
        Descriptor::iotlb(
            IotlbScope::Pages {
                did: 1,
                addr: 0,
                mask: 19,
                leaf_only: false,
            },
            false,
            false,
        ),
        Descriptor::iotlb(
            IotlbScope::Pages {
                did: 1,
                addr: 0x1000,
                mask: 1,
                leaf_only: false,
            },
            false,
            false,
        ),
    ] {
        assert!(
            matches!(u.submit(&[bad]), Err(VtdError::QueueError { descriptor, .. }) if descriptor == bad)
        );
    }
    // Two refused descriptors in one batch: the first is reported, both are
    // replaced, the batch's wait completes.
    let bad2 = Descriptor {
        lo: descriptor::TYPE_IOTLB | 1 << 4 | 1 << 12,
        hi: 0,
    };
    let before = u.counters().snapshot();
    assert!(matches!(
        u.submit(&[bad, good, bad2]),
        Err(VtdError::QueueError { descriptor, .. }) if descriptor == bad
    ));
    assert_eq!(u.counters().snapshot().since(&before).queue_errors, 2);
    // Still usable.
    u.submit(&[Descriptor::iotlb(IotlbScope::Domain(1), true, true)])
        .unwrap();
    u.invalidate_all().unwrap();
}

#[test]
fn a_wait_that_never_completes_times_out() {
    let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP);
    let config = UnitConfig {
        wait: iova_core::hw::WaitBudget::polls(1000),
        ..cfg()
    };
    let u = VtdUnit::new(&f, Arc::clone(&frames), config).unwrap();
    f.stall_waits(true);
    assert_eq!(
        u.invalidate_all(),
        Err(VtdError::Timeout(
            iommu_intel_vtd::error::Wait::InvalidationWait
        ))
    );
    let d = domain(&u, &frames, 4);
    let mut g = IotlbGather::new();
    d.map(Iova(0x1000), PhysAddr(0x1000), 0x1000, Prot::RW, &mut g)
        .unwrap();
    d.flush(&mut g).unwrap();
    d.unmap(Iova(0x1000), 0x1000, &mut g).unwrap();
    assert_eq!(d.flush(&mut g), Err(iova_core::Error::Timeout));
    assert!(!g.is_empty(), "a failed flush keeps the gather");
    f.stall_waits(false);
    d.flush(&mut g).unwrap();
}

#[test]
#[should_panic(expected = "both status write and interrupt")]
fn the_fake_aborts_like_qemu_on_a_wait_with_both_flags() {
    let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP);
    let u = unit(&f, &frames);
    let both = Descriptor {
        lo: descriptor::TYPE_WAIT | descriptor::WAIT_SW | descriptor::WAIT_IF,
        hi: 0x1000,
    };
    let _ = u.submit(&[both]);
}

#[test]
fn interrupt_waits_are_accepted_by_the_fake() {
    let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP);
    let u = unit(&f, &frames);
    u.submit(&[Descriptor::wait_interrupt()]).unwrap();
    assert_eq!(f.stats().wait_interrupts, 1);
}

#[test]
fn fault_overflow_is_reported_and_recording_resumes() {
    let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP); // one fault record
    let u = unit(&f, &frames);
    u.enable_translation().unwrap();
    assert!(f.translate(EDU, 0x1000, Dma::Read).is_err());
    assert!(f.translate(EDU, 0x2000, Dma::Read).is_err()); // compressed
    assert!(f.translate(OTHER, 0x3000, Dma::Read).is_err()); // overflow
    let mut v = Vec::new();
    let s = u.drain_faults(|r| v.push(r)).unwrap();
    assert_eq!((s.records, s.overflow), (1, true));
    assert_eq!((v[0].source, v[0].address), (EDU, 0x1000));
    assert!(f.translate(OTHER, 0x4000, Dma::Write).is_err());
    let v = faults(&u);
    assert_eq!((v[0].source, v[0].address), (OTHER, 0x4000));
    // Eight records: read from FSTS.FRI round the ring.
    let (frames, f) = fake(QEMU_CAP_48 | 7 << 40, QEMU_ECAP);
    let u = unit(&f, &frames);
    u.enable_translation().unwrap();
    for bus in 0..10u8 {
        assert!(f.translate(Bdf::new(bus, 0, 0), 0x1000, Dma::Read).is_err());
    }
    let mut v = Vec::new();
    let s = u.drain_faults(|r| v.push(r)).unwrap();
    assert_eq!((s.records, s.overflow), (8, true));
    assert_eq!(
        v.iter().map(|r| r.source.bus).collect::<Vec<_>>(),
        (0..8).collect::<Vec<_>>()
    );
}

#[test]
fn superpages_where_the_unit_has_them() {
    let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP);
    let u = unit(&f, &frames);
    let d = domain(&u, &frames, 4);
    attach(&u, &d, EDU);
    u.enable_translation().unwrap();
    map(&d, 0x4000_0000, 0x8000_0000, 0x4000_0000, Prot::RW);
    map(&d, 0x8020_0000, 0x20_0000, 0x20_0000, Prot::READ);
    let sizes: Vec<_> = d
        .table()
        .translate(Iova(0x4000_1000))
        .into_iter()
        .chain(d.table().translate(Iova(0x8020_1000)))
        .map(|t| t.page_size)
        .collect();
    assert_eq!(sizes, [1 << 30, 1 << 21]);
    assert_eq!(f.translate(EDU, 0x4123_4567, Dma::Write), Ok(0x8123_4567));
    assert_eq!(f.translate(EDU, 0x803f_fff0, Dma::Read), Ok(0x3f_fff0));
    assert_eq!(
        f.translate(EDU, 0x803f_fff0, Dma::Write),
        Err(FaultReason::WriteDenied)
    );
    // A unit without SLLPS gets 4 KiB pages only, and refuses PS entries.
    let (frames, f) = fake(QEMU_CAP_48 & !(3 << 34), QEMU_ECAP);
    let u = unit(&f, &frames);
    let d = domain(&u, &frames, 4);
    attach(&u, &d, EDU);
    u.enable_translation().unwrap();
    map(&d, 0x20_0000, 0x20_0000, 0x20_0000, Prot::RW);
    assert_eq!(
        d.table().translate(Iova(0x20_0000)).unwrap().page_size,
        0x1000
    );
    assert_eq!(f.translate(EDU, 0x3f_f000, Dma::Read), Ok(0x3f_f000));
}

mod scalable {
    use super::*;
    use iommu_intel_vtd::fake::{CAP_FL1GP, QEMU_ECAP_FLTS, QEMU_ECAP_SCALABLE};
    use iova_core::formats::x86_64::X86_64;

    const UPPER: Bdf = Bdf::new(0, 0x10, 0); // devfn 0x80: the upper context table

    fn scalable_unit<'f>(f: &'f FakeVtd, frames: &Arc<FakeFrames>) -> Unit<'f> {
        let config = UnitConfig {
            scalable: true,
            ..cfg()
        };
        VtdUnit::new(f, Arc::clone(frames), config).unwrap()
    }

    type FlDomain<'u, 'f> = VtdDomain<'u, &'f FakeVtd, Arc<FakeFrames>, Arc<FakeFrames>, X86_64>;

    /// A first-level domain for requests without a PASID.
    fn fl_domain<'u, 'f>(u: &'u Unit<'f>, frames: &Arc<FakeFrames>) -> FlDomain<'u, 'f> {
        u.first_level_domain(Arc::clone(frames), 0).unwrap()
    }

    #[test]
    fn scalable_mode_needs_smts() {
        let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP);
        let config = UnitConfig {
            scalable: true,
            ..cfg()
        };
        assert_eq!(
            VtdUnit::new(&f, Arc::clone(&frames), config).err(),
            Some(VtdError::ScalableUnsupported)
        );
        // Nor without queued invalidation.
        let (frames2, f2) = fake(QEMU_CAP_48, iommu_intel_vtd::fake::QEMU_ECAP_SCALABLE & !QI);
        let config = UnitConfig {
            scalable: true,
            ..cfg()
        };
        assert_eq!(
            VtdUnit::new(&f2, Arc::clone(&frames2), config).err(),
            Some(VtdError::ScalableUnsupported)
        );
        // Legacy mode has no first level.
        let u = unit(&f, &frames);
        assert_eq!(
            u.first_level_format().err(),
            Some(VtdError::FirstLevelUnsupported)
        );
        let state = ContextState::FirstLevel {
            did: 1,
            root: 0x1000,
        };
        // SAFETY: refused before anything is written.
        let r = unsafe { u.set_context(EDU, state, false) };
        assert_eq!(r, Err(VtdError::FirstLevelUnsupported));
        assert_eq!(
            u.first_level_domain(Arc::clone(&frames), 0).err(),
            Some(VtdError::FirstLevelUnsupported)
        );
    }

    #[test]
    fn second_level_in_scalable_mode_at_both_depths() {
        for (cap, levels) in [(QEMU_CAP_39, 3), (QEMU_CAP_48, 4)] {
            let (frames, f) = fake(cap, QEMU_ECAP_SCALABLE);
            let u = scalable_unit(&f, &frames);
            assert!(u.scalable());
            let s = f.stats();
            assert_eq!(
                s.descriptors[descriptor::TYPE_PASID_CACHE as usize],
                1,
                "global PASID-cache at probe"
            );
            let d = domain(&u, &frames, levels);
            attach(&u, &d, EDU);
            attach(&u, &d, UPPER);
            u.enable_translation().unwrap();
            map(&d, 0x40_0000, 0x1234_5000, 0x1000, Prot::RW);
            for dev in [EDU, UPPER] {
                assert_eq!(f.translate(dev, 0x40_0008, Dma::Write), Ok(0x1234_5008));
            }
            assert_eq!(
                u.context(EDU),
                ContextState::Translated {
                    did: 1,
                    root: d.table().root().0,
                    aw: levels as u8 - 2
                }
            );
            let before = u.counters().snapshot();
            unmap(&d, 0x40_0000, 0x1000);
            let c = u.counters().snapshot().since(&before);
            assert_eq!((c.iotlb_page, c.pasid_iotlb, c.waits), (1, 0, 1));
            assert_eq!(
                f.translate(EDU, 0x40_0008, Dma::Write),
                Err(FaultReason::WriteDenied)
            );
            assert_eq!(faults(&u)[0].reason, FaultReason::WriteDenied);
            // Another device of the bus, never attached: its context entry is absent.
            assert_eq!(
                f.translate(OTHER, 0x40_0008, Dma::Read),
                Err(FaultReason::ContextNotPresent)
            );
            faults(&u);
            drop(d);
            u.shutdown().unwrap();
            assert_eq!(frames.live(), 0, "PASID directories and tables are freed");
        }
    }

    #[test]
    fn pasid_entry_changes_are_invalidated() {
        let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP_SCALABLE);
        let u = scalable_unit(&f, &frames);
        let did = u.alloc_domain_id().unwrap();
        let a = raw_domain(&u, &frames, did, 4);
        let b = raw_domain(&u, &frames, did, 4); // same domain ID, new table
        map(&a, 0x10_0000, 0xa000, 0x1000, Prot::RW);
        map(&b, 0x10_0000, 0xb000, 0x1000, Prot::RW);
        // SAFETY: the test's own domain ID, on `a` then `b` (moving the entry
        // invalidates `a`'s); both outlive the DMA below.
        unsafe { raw_attach(&u, &a, EDU, did) };
        u.enable_translation().unwrap();
        assert_eq!(f.translate(EDU, 0x10_0000, Dma::Read), Ok(0xa000));
        let before = u.counters().snapshot();
        // SAFETY: as above.
        unsafe { raw_attach(&u, &b, EDU, did) };
        let c = u.counters().snapshot().since(&before);
        assert_eq!(
            (c.pasid_cache, c.iotlb_domain, c.waits, c.context),
            (1, 1, 1, 0)
        );
        assert_eq!(f.translate(EDU, 0x10_0000, Dma::Read), Ok(0xb000));
        // A domain moving into the entry costs the same.
        let d = domain(&u, &frames, 4);
        map(&d, 0x10_0000, 0xe000, 0x1000, Prot::RW);
        let before = u.counters().snapshot();
        attach(&u, &d, EDU);
        let c = u.counters().snapshot().since(&before);
        assert_eq!(
            (c.pasid_cache, c.iotlb_domain, c.waits, c.context),
            (1, 1, 1, 0)
        );
        assert_eq!(f.translate(EDU, 0x10_0000, Dma::Read), Ok(0xe000));
        u.pass_through(EDU).unwrap();
        assert_eq!(f.translate(EDU, 0x10_0000, Dma::Read), Ok(0x10_0000));
        u.block(EDU).unwrap();
        assert_eq!(
            f.translate(EDU, 0x10_0000, Dma::Read),
            Err(FaultReason::PasidEntryNotPresent)
        );
        let r = faults(&u);
        assert_eq!(
            (r[0].source, r[0].reason),
            (EDU, FaultReason::PasidEntryNotPresent)
        );
        assert_eq!(u.context(EDU), ContextState::NotPresent);
    }

    /// The adjacent-states model over a first-level domain.
    #[test]
    fn adjacent_states_model_first_level() {
        let (seeds, steps) = if cfg!(miri) { (1, 80) } else { (6, 600) };
        for seed in 0..seeds {
            let (frames, f) = fake(QEMU_CAP_48 | CAP_FL1GP, QEMU_ECAP_FLTS);
            let u = scalable_unit(&f, &frames);
            let d = fl_domain(&u, &frames);
            u.attach(EDU, &d).unwrap();
            u.enable_translation().unwrap();
            let run = iova_core::fakes::AdjacentStates {
                window: IovaRange::new(Iova(0x40_0000_0000), 24 * 0x1000).unwrap(),
                pa_base: PhysAddr(0x8000_0000),
                seed,
                steps,
            };
            iova_core::fakes::check_adjacent_states(&d, run, &|iova| {
                f.translate(EDU, iova.0, Dma::Read).ok().map(PhysAddr)
            });
        }
    }

    #[test]
    fn first_level_translation_with_pasid_based_invalidation() {
        let (frames, f) = fake(QEMU_CAP_48 | CAP_FL1GP, QEMU_ECAP_FLTS);
        let u = scalable_unit(&f, &frames);
        // x-flts units have no second level in scalable mode.
        let sl = raw_domain(&u, &frames, 1, 4);
        let state = ContextState::Translated {
            did: 1,
            root: sl.table().root().0,
            aw: 2,
        };
        // SAFETY: refused before anything is written.
        let r = unsafe { u.set_context(EDU, state, false) };
        assert_eq!(r, Err(VtdError::SecondLevelUnsupported));
        assert_eq!(
            u.second_level_domain(Arc::clone(&frames), 4).err(),
            Some(VtdError::SecondLevelUnsupported)
        );
        let d = fl_domain(&u, &frames);
        assert_eq!((d.did(), d.pasid()), (1, Some(0)));
        u.attach(EDU, &d).unwrap();
        u.enable_translation().unwrap();
        let mut g = IotlbGather::new();
        d.map(
            Iova(0x10_0000_0000),
            PhysAddr(0x5000),
            0x1000,
            Prot::RW,
            &mut g,
        )
        .unwrap();
        d.map(
            Iova(0x10_0000_1000),
            PhysAddr(0x6000),
            0x1000,
            Prot::READ,
            &mut g,
        )
        .unwrap();
        d.map(
            Iova(0x4000_0000),
            PhysAddr(0x8000_0000),
            0x4000_0000,
            Prot::RW,
            &mut g,
        )
        .unwrap();
        d.flush(&mut g).unwrap();
        assert_eq!(
            d.table().translate(Iova(0x4000_0000)).unwrap().page_size,
            1 << 30
        );
        assert_eq!(f.translate(EDU, 0x10_0000_0010, Dma::Write), Ok(0x5010));
        assert_eq!(f.translate(EDU, 0x10_0000_1010, Dma::Read), Ok(0x6010));
        assert_eq!(f.translate(EDU, 0x7fff_ffff, Dma::Read), Ok(0xbfff_ffff));
        assert_eq!(
            f.translate(EDU, 0x10_0000_1010, Dma::Write),
            Err(FaultReason::ScalableWriteDenied)
        );
        assert_eq!(faults(&u)[0].reason, FaultReason::ScalableWriteDenied);
        assert_eq!(
            f.translate(EDU, 0x8000_0000_0000, Dma::Read),
            Err(FaultReason::NonCanonical)
        );
        faults(&u);
        let before = u.counters().snapshot();
        d.unmap(Iova(0x10_0000_0000), 0x1000, &mut g).unwrap();
        d.flush(&mut g).unwrap();
        let c = u.counters().snapshot().since(&before);
        assert_eq!(
            (c.pasid_iotlb, c.iotlb_page, c.iotlb_domain, c.waits),
            (1, 0, 0, 1)
        );
        assert_eq!(
            f.translate(EDU, 0x10_0000_0010, Dma::Write),
            Err(FaultReason::FirstLevelNotPresent)
        );
        assert_eq!(
            u.context(EDU),
            ContextState::FirstLevel {
                did: 1,
                root: d.table().root().0
            }
        );
    }

    /// First-level translation takes canonical addresses only: the domain
    /// maps the lower half, below bit 47, up to its last page, and an
    /// allocator over the top of its input range hands out IOVAs the unit
    /// translates.
    #[test]
    fn first_level_iovas_are_the_lower_canonical_half() {
        let (frames, f) = fake(QEMU_CAP_48 | CAP_FL1GP, QEMU_ECAP_FLTS);
        let u = scalable_unit(&f, &frames);
        let d = fl_domain(&u, &frames);
        u.attach(EDU, &d).unwrap();
        u.enable_translation().unwrap();
        let top = 1u64 << 47;
        assert_eq!(d.table().ia_bits(), 47);
        assert_eq!(d.table().input_range().end, Iova(top));
        let mut g = IotlbGather::new();
        for iova in [top, (1 << 48) - 0x1000, 0xffff_8000_0000_0000] {
            assert_eq!(
                d.map(Iova(iova), PhysAddr(0x5000), 0x1000, Prot::RW, &mut g),
                Err(iova_core::Error::OutOfRange),
                "{iova:#x}"
            );
        }
        assert!(g.is_empty());
        // The unit itself refuses what is not canonical, as QEMU does.
        assert_eq!(
            f.translate(EDU, top, Dma::Read),
            Err(FaultReason::NonCanonical)
        );
        assert_eq!(faults(&u)[0].reason, FaultReason::NonCanonical);
        let last = IovaRange::new(Iova(top - 0x1000), 0x1000).unwrap();
        assert!(d.table().input_range().contains_range(&last));
        let iovas =
            IovaAllocator::with_capacity(IovaAllocatorConfig::new(last, 0x1000), 8, 1).unwrap();
        let cpu = || 0;
        let mapper = DmaMapper::new(&d, &iovas, &cpu).unwrap();
        let m = mapper.map(PhysAddr(0x7000), 0x1000, Prot::RW).unwrap();
        assert_eq!(m.addr(), Iova(top - 0x1000));
        assert_eq!(f.translate(EDU, top - 8, Dma::Write), Ok(0x7ff8));
        mapper.unmap(m).unwrap();
        assert_eq!(
            f.translate(EDU, top - 8, Dma::Write),
            Err(FaultReason::FirstLevelNotPresent)
        );
    }

    #[test]
    fn first_level_needs_pasid_based_invalidation() {
        // An IOTLB (type 2) invalidation does not reach first-level
        // translations: a driver that used it would leave them stale.
        let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP_FLTS);
        let u = scalable_unit(&f, &frames);
        let d = fl_domain(&u, &frames);
        u.attach(EDU, &d).unwrap();
        u.enable_translation().unwrap();
        let mut g = IotlbGather::new();
        d.map(Iova(0x20_0000), PhysAddr(0x5000), 0x1000, Prot::RW, &mut g)
            .unwrap();
        d.flush(&mut g).unwrap();
        assert_eq!(f.translate(EDU, 0x20_0000, Dma::Read), Ok(0x5000));
        d.unmap(Iova(0x20_0000), 0x1000, &mut g).unwrap();
        u.submit(&[Descriptor::iotlb(IotlbScope::Domain(d.did()), false, false)])
            .unwrap();
        assert_eq!(f.translate(EDU, 0x20_0000, Dma::Read), Ok(0x5000), "stale");
        d.flush(&mut g).unwrap();
        assert_eq!(
            f.translate(EDU, 0x20_0000, Dma::Read),
            Err(FaultReason::FirstLevelNotPresent)
        );
    }

    #[test]
    fn caching_mode_in_scalable_mode() {
        let (frames, f) = fake(QEMU_CAP_48 | CM, QEMU_ECAP_SCALABLE);
        let u = scalable_unit(&f, &frames);
        let d = domain(&u, &frames, 4);
        attach(&u, &d, EDU);
        u.enable_translation().unwrap();
        u.detach(EDU, &d).unwrap();
        // The not-present PASID entry gets cached...
        assert_eq!(
            f.translate(EDU, 0x1000, Dma::Read),
            Err(FaultReason::PasidEntryNotPresent)
        );
        faults(&u);
        // ...and making it present again invalidates it.
        map(&d, 0x1000, 0x7000, 0x1000, Prot::RW);
        attach(&u, &d, EDU);
        assert_eq!(f.translate(EDU, 0x1000, Dma::Read), Ok(0x7000));
    }

    #[test]
    fn pasid_descriptors_are_refused_in_legacy_mode() {
        let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP_SCALABLE);
        let u = unit(&f, &frames);
        assert!(!u.scalable());
        for d in [
            Descriptor::pasid_cache(descriptor::PasidCacheScope::Global),
            Descriptor::pasid_iotlb(descriptor::PasidIotlbScope::Pasid { did: 1, pasid: 0 }),
        ] {
            assert!(matches!(u.submit(&[d]), Err(VtdError::QueueError { .. })));
        }
    }
}

#[test]
fn queues_wrap_in_both_descriptor_sizes() {
    use iommu_intel_vtd::fake::QEMU_ECAP_SCALABLE;
    for scalable in [false, true] {
        let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP_SCALABLE);
        let config = UnitConfig { scalable, ..cfg() };
        let u = VtdUnit::new(&f, Arc::clone(&frames), config).unwrap();
        let batch = [Descriptor::iotlb(IotlbScope::Domain(1), false, false); 5];
        for _ in 0..100 {
            u.submit(&batch).unwrap();
        }
        // A batch longer than the queue is split, each part with its wait.
        let before = u.counters().snapshot();
        u.submit(&[Descriptor::iotlb(IotlbScope::Domain(2), false, false); 300])
            .unwrap();
        assert_eq!(u.counters().snapshot().since(&before).waits, 3);
        let s = f.stats();
        assert_eq!(
            s.descriptors[descriptor::TYPE_IOTLB as usize],
            1 + 500 + 300
        );
        // An error in a wide queue is reported at its index too.
        let bad = Descriptor {
            lo: descriptor::TYPE_CONTEXT | 1 << 4 | 1 << 6,
            hi: 0,
        };
        let Err(VtdError::QueueError { index, descriptor }) = u.submit(&[bad]) else {
            panic!("no queue error");
        };
        assert_eq!(descriptor, bad);
        let entries = if scalable { 128 } else { 256 };
        // Probe (3 or 4 descriptors) + 100 * 6 + 300 + 3 waits, modulo the ring.
        let probe = if scalable { 4 } else { 3 };
        assert_eq!(index, (probe + 600 + 303) % entries);
        u.invalidate_all().unwrap();
    }
}

#[test]
fn reserved_regions_are_identity_mapped_for_their_devices() {
    use crate::dmar_tables::{dmar, drhd, rmrr, scope};
    use iommu_intel_vtd::reserved::{ReservedRegions, map_reserved_regions, reserved_regions_for};
    let table = dmar(&[
        drhd(1, 0xfed9_0000, &[]),
        rmrr(0x000e_0000, 0x000f_ffff, &[scope(1, 0, 0, &[(1, 0)])]),
        rmrr(0x3000_0000, 0x2fff_ffff, &[scope(1, 0, 0, &[(1, 0)])]), // limit < base
        rmrr(0x4000_0000, 0x4000_0fff, &[scope(1, 0, 0, &[(2, 0)])]), // another device
    ]);
    let d = iommu_intel_vtd::Dmar::parse(&table).unwrap();
    assert_eq!(
        reserved_regions_for(&d, 0, EDU, |_| None).collect::<Vec<_>>(),
        [(0xe_0000, 0x2_0000)]
    );
    let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP);
    let u = unit(&f, &frames);
    let dom = domain(&u, &frames, 4);
    let mut g = IotlbGather::new();
    let done = map_reserved_regions(&d, 0, EDU, |_| None, &dom, &mut g).unwrap();
    dom.flush(&mut g).unwrap();
    assert_eq!(
        done,
        ReservedRegions {
            mapped: 1,
            malformed: 1
        }
    );
    attach(&u, &dom, EDU);
    u.enable_translation().unwrap();
    assert_eq!(f.translate(EDU, 0xf_f123, Dma::Write), Ok(0xf_f123));
    assert_eq!(
        f.translate(EDU, 0x4000_0000, Dma::Read),
        Err(FaultReason::ReadDenied)
    );
    // Mapping them twice is refused, not silently merged.
    assert_eq!(
        map_reserved_regions(&d, 0, EDU, |_| None, &dom, &mut g),
        Err(iova_core::Error::AlreadyMapped)
    );
    dom.flush(&mut g).unwrap();
}

#[test]
fn one_domain_on_two_units_is_invalidated_on_both() {
    use iommu_intel_vtd::VtdMultiInvalidator;
    let frames = Arc::new(FakeFrames::new());
    let f1 = FakeVtd::new(Arc::clone(&frames), QEMU_CAP_48, QEMU_ECAP);
    let f2 = FakeVtd::new(
        Arc::clone(&frames),
        QEMU_CAP_39 | 2 << 8 | 0x4 << 8,
        QEMU_ECAP,
    );
    let u1 = unit(&f1, &frames);
    let u2 = unit(&f2, &frames);
    // Both units walk 4-level tables here (the second one's SAGAW has both),
    // within the second one's 39 bits.
    let fmt = u2.second_level_format(4).unwrap();
    assert_eq!(fmt.levels(), 4);
    let wide = u1.second_level_format(4).unwrap();
    assert_eq!(
        u2.check_second_level(&wide),
        Err(VtdError::Format(
            iommu_intel_vtd::second_level::FormatError::BadAddressWidth(48)
        ))
    );
    let mut inval: VtdMultiInvalidator<'_, _, _, 2> = VtdMultiInvalidator::new();
    inval.push(VtdInvalidator::new(&u1, 1).unwrap()).unwrap();
    inval.push(VtdInvalidator::new(&u2, 7).unwrap()).unwrap();
    assert!(
        inval.push(VtdInvalidator::new(&u2, 8).unwrap()).is_err(),
        "full"
    );
    assert_eq!(
        VtdDomain::second_level([&u1, &u2], Arc::clone(&frames), wide).err(),
        Some(VtdError::Format(
            iommu_intel_vtd::second_level::FormatError::BadAddressWidth(48)
        ))
    );
    let d = VtdDomain::second_level([&u1, &u2], Arc::clone(&frames), fmt).unwrap();
    let dids: Vec<_> = d.invalidator().units().iter().map(|i| i.did()).collect();
    assert_eq!(dids, [1, 1], "each unit's own first ID");
    u1.attach(EDU, &d).unwrap();
    u2.attach(FAR, &d).unwrap();
    // A domain of the first unit only cannot be attached through the second.
    let only1 = domain(&u1, &frames, 4);
    assert_eq!(u2.attach(FAR, &only1), Err(VtdError::ForeignDomain));
    assert_eq!(
        u2.context(FAR),
        ContextState::Translated {
            did: 1,
            root: d.table().root().0,
            aw: 2
        }
    );
    u1.enable_translation().unwrap();
    u2.enable_translation().unwrap();
    let mut g = IotlbGather::new();
    d.map(Iova(0x10_0000), PhysAddr(0x3000), 0x1000, Prot::RW, &mut g)
        .unwrap();
    d.flush(&mut g).unwrap();
    assert_eq!(f1.translate(EDU, 0x10_0000, Dma::Read), Ok(0x3000));
    assert_eq!(f2.translate(FAR, 0x10_0000, Dma::Read), Ok(0x3000));
    d.unmap(Iova(0x10_0000), 0x1000, &mut g).unwrap();
    d.flush(&mut g).unwrap();
    assert!(f1.translate(EDU, 0x10_0000, Dma::Read).is_err());
    assert!(f2.translate(FAR, 0x10_0000, Dma::Read).is_err());
    for u in [&u1, &u2] {
        let c = u.counters().snapshot();
        assert_eq!(c.iotlb_page, 1);
    }
    // Dropping it blocks its devices on both units.
    drop(d);
    assert_eq!(u1.context(EDU), ContextState::NotPresent);
    assert_eq!(u2.context(FAR), ContextState::NotPresent);
    assert_eq!(
        f2.translate(FAR, 0x10_0000, Dma::Read),
        Err(FaultReason::ContextNotPresent)
    );
}

/// Random map / unmap / flush sequences against a plain model: after every
/// flush the fake unit (with its IOTLB, paging-structure and PASID caches
/// warmed by DMA before the flush) must translate exactly as the model says,
/// across modes, caching mode, small MAMV (many page-selective blocks) and a
/// small PSI limit (domain-selective fallback).
#[test]
fn random_sequences_never_leave_stale_translations() {
    use iommu_intel_vtd::fake::{CAP_FL1GP, QEMU_ECAP_FLTS, QEMU_ECAP_SCALABLE};
    use std::collections::BTreeMap;
    let mamv2 = (QEMU_CAP_48 & !(0x3f << 48)) | 2 << 48;
    let configs = [
        ("legacy", QEMU_CAP_48, QEMU_ECAP, false, 16),
        ("legacy CM", QEMU_CAP_48 | CM, QEMU_ECAP, false, 16),
        ("legacy MAMV 2", mamv2, QEMU_ECAP, false, 3),
        ("register-based", QEMU_CAP_48, QEMU_ECAP & !QI, false, 16),
        ("scalable SL", QEMU_CAP_48, QEMU_ECAP_SCALABLE, false, 16),
        (
            "first level",
            QEMU_CAP_48 | CAP_FL1GP,
            QEMU_ECAP_FLTS,
            true,
            16,
        ),
        ("first level MAMV 2 CM", mamv2 | CM, QEMU_ECAP_FLTS, true, 2),
    ];
    for (name, cap, ecap, fl, psi_limit) in configs {
        let (frames, f) = fake(cap, ecap);
        let config = UnitConfig {
            scalable: ecap & (1 << 43) != 0,
            psi_limit,
            ..cfg()
        };
        let u = VtdUnit::new(&f, Arc::clone(&frames), config).unwrap();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ cap;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        // Both formats behind one closure-driven harness.
        let sl = (!fl).then(|| domain(&u, &frames, 4));
        let flt = fl.then(|| u.first_level_domain(Arc::clone(&frames), 0).unwrap());
        let dom: &dyn IommuDomain = match (&sl, &flt) {
            (Some(d), _) => {
                u.attach(EDU, d).unwrap();
                d
            }
            (_, Some(d)) => {
                u.attach(EDU, d).unwrap();
                d
            }
            _ => unreachable!(),
        };
        u.enable_translation().unwrap();
        // IOVA page -> (pa, writable); mappings as (start page, pages).
        let mut model: BTreeMap<u64, (u64, bool)> = BTreeMap::new();
        let mut maps: Vec<(u64, u64)> = Vec::new();
        let mut g = IotlbGather::new();
        // Pages of IOVA space in play (16 MiB; 4 MiB under Miri, still two
        // 2 MiB slots), and one full check per configuration under Miri,
        // which runs every step thousands of times slower.
        let (window, steps) = if cfg!(miri) {
            (1024u64, 100)
        } else {
            (4096, 1500)
        };
        for step in 0..steps {
            match rnd(10) {
                0..=3 => {
                    let big = rnd(8) == 0;
                    let pages = if big { 512 } else { 1 + rnd(40) };
                    let start = if big {
                        rnd(window / 512) * 512
                    } else {
                        rnd(window - pages)
                    };
                    if (start..start + pages).any(|p| model.contains_key(&p)) {
                        continue;
                    }
                    let pa = 0x1_0000_0000 + rnd(1 << 12) * 0x20_0000;
                    let w = rnd(2) == 0;
                    let prot = if w { Prot::RW } else { Prot::READ };
                    dom.map(Iova(start << 12), PhysAddr(pa), pages << 12, prot, &mut g)
                        .unwrap();
                    for k in 0..pages {
                        model.insert(start + k, (pa + (k << 12), w));
                    }
                    maps.push((start, pages));
                }
                4..=6 if !maps.is_empty() => {
                    let (start, pages) = maps.swap_remove(rnd(maps.len() as u64) as usize);
                    dom.unmap(Iova(start << 12), pages << 12, &mut g).unwrap();
                    for k in 0..pages {
                        model.remove(&(start + k));
                    }
                }
                7 => dom.flush(&mut g).unwrap(),
                _ => {}
            }
            // Warm the caches with DMA at random places (stale is allowed
            // before a flush; faults are drained, not checked).
            for _ in 0..4 {
                let _ = f.translate(EDU, rnd(window) << 12, Dma::Read);
            }
            u.drain_faults(|_| {}).unwrap();
            if step % 100 == 99 {
                dom.flush(&mut g).unwrap();
                for page in 0..window {
                    let got = f.translate(EDU, (page << 12) | 0x18, Dma::Write);
                    let want = match model.get(&page) {
                        Some(&(pa, true)) => Some(pa | 0x18),
                        _ => None,
                    };
                    assert_eq!(got.ok(), want, "{name}: step {step}, page {page:#x}");
                    if want.is_none() {
                        if let Some(&(pa, false)) = model.get(&page) {
                            assert_eq!(f.translate(EDU, page << 12, Dma::Read), Ok(pa), "{name}");
                        }
                    }
                    u.drain_faults(|_| {}).unwrap();
                }
            }
        }
    }
}

#[test]
fn fault_events_raise_the_configured_interrupt() {
    let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP);
    let u = unit(&f, &frames);
    u.enable_translation().unwrap();
    // Masked (the reset state): the event is held as pending.
    assert!(f.translate(EDU, 0x1000, Dma::Read).is_err());
    assert!(u.fault_interrupt_pending().unwrap());
    assert!(f.fault_interrupts().is_empty());
    faults(&u);
    // Unmasking with an event pending sends it.
    u.enable_fault_interrupt(0xfee0_0000, 0x51).unwrap();
    assert_eq!(f.fault_interrupts(), [(0xfee0_0000, 0x51)]);
    assert!(!u.fault_interrupt_pending().unwrap());
    // A new fault with none pending raises it; a second one while the first
    // is still recorded does not (PPF was already set).
    assert!(f.translate(OTHER, 0x2000, Dma::Read).is_err());
    assert_eq!(f.fault_interrupts().len(), 2);
    assert!(f.translate(OTHER, 0x3000, Dma::Read).is_err());
    assert_eq!(f.fault_interrupts().len(), 2);
    assert_eq!(faults(&u).len(), 1);
    assert!(f.translate(OTHER, 0x4000, Dma::Read).is_err());
    assert_eq!(f.fault_interrupts().len(), 3);
    u.disable_fault_interrupt().unwrap();
    faults(&u);
    assert!(f.translate(OTHER, 0x5000, Dma::Read).is_err());
    assert_eq!(f.fault_interrupts().len(), 3);
    assert!(u.fault_interrupt_pending().unwrap());
    assert_eq!(f.stats().unknown_accesses, 0);
}

#[test]
fn five_level_tables_where_sagaw_has_them() {
    // SAGAW 5-level only, MGAW 57.
    let cap = (QEMU_CAP_48 & !(0x1f << 8) & !(0x3f << 16)) | 0x8 << 8 | 56 << 16;
    let (frames, f) = fake(cap, QEMU_ECAP);
    let u = unit(&f, &frames);
    assert!(
        u.second_level_format(4).is_err(),
        "4 levels are not in SAGAW"
    );
    let d = domain(&u, &frames, 5);
    assert_eq!(
        (d.table().format().levels(), d.table().format().ia_bits()),
        (5, 57)
    );
    attach(&u, &d, EDU);
    assert_eq!(
        u.context(EDU),
        ContextState::Translated {
            did: 1,
            root: d.table().root().0,
            aw: 3
        }
    );
    u.enable_translation().unwrap();
    let high = 0x100_0000_0000_0000; // bit 56
    map(&d, high, 0x7000, 0x1000, Prot::RW);
    assert_eq!(f.translate(EDU, high + 0x10, Dma::Write), Ok(0x7010));
    unmap(&d, high, 0x1000);
    assert_eq!(
        f.translate(EDU, high + 0x10, Dma::Write),
        Err(FaultReason::WriteDenied)
    );
}

#[test]
fn second_level_iovas_stay_below_mgaw() {
    // SAGAW 3- and 4-level, MGAW 39: 4-level tables reach bit 47, but the
    // unit faults on IOVAs at or above 1 << 39 (QEMU's range check, too).
    let cap = (QEMU_CAP_48 & !(0x3f << 16)) | 38 << 16;
    let (frames, f) = fake(cap, QEMU_ECAP);
    let u = unit(&f, &frames);
    let d = domain(&u, &frames, 4);
    assert_eq!(d.table().format().levels(), 4);
    assert_eq!(d.table().format().context_aw(), 2);
    assert_eq!(
        (d.table().format().ia_bits(), d.table().ia_bits()),
        (39, 39)
    );
    attach(&u, &d, EDU);
    u.enable_translation().unwrap();
    let top = 1u64 << 39;
    let mut g = IotlbGather::new();
    for (iova, len) in [(top, 0x1000), (top - 0x1000, 0x2000), (1 << 47, 0x1000)] {
        assert_eq!(
            d.map(Iova(iova), PhysAddr(0x5000), len, Prot::RW, &mut g),
            Err(iova_core::Error::OutOfRange),
            "{iova:#x}"
        );
    }
    assert!(g.is_empty());
    assert_eq!(
        f.translate(EDU, top, Dma::Read),
        Err(FaultReason::BeyondAddressWidth)
    );
    faults(&u);
    map(&d, top - 0x1000, 0x5000, 0x1000, Prot::RW);
    assert_eq!(f.translate(EDU, top - 8, Dma::Write), Ok(0x5ff8));
}

#[test]
fn dropping_a_translating_unit_keeps_devices_confined() {
    let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP);
    let u = unit(&f, &frames);
    u.enable_translation().unwrap();
    let live = frames.live();
    drop(u);
    // Still translating (blocking), with the tables left in place.
    assert_eq!(
        f.translate(EDU, 0x1000, Dma::Read),
        Err(FaultReason::RootNotPresent)
    );
    assert_eq!(frames.live(), live);
}

#[test]
fn a_unit_left_running_is_taken_over() {
    // "Firmware" leaves translation and the queue on with its own tables.
    let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP);
    // Neither is dropped while the new driver runs: that would stop the unit.
    let firmware = core::mem::ManuallyDrop::new(unit(&f, &frames));
    let d = core::mem::ManuallyDrop::new(raw_domain(&firmware, &frames, 1, 4));
    map(&*d, 0x1000, 0x9000, 0x1000, Prot::RW);
    // SAFETY: no domain of `firmware` holds ID 1; `d` lives as long as the
    // unit can walk it (until the new driver replaces the root table).
    unsafe { raw_attach(&firmware, &d, EDU, 1) };
    firmware.enable_translation().unwrap();
    assert_eq!(f.translate(EDU, 0x1000, Dma::Read), Ok(0x9000));
    // The new driver stops it, installs an empty root table and starts over:
    // nothing cached from before survives.
    let u = unit(&f, &frames);
    assert!(!u.translation_enabled().unwrap());
    u.enable_translation().unwrap();
    assert_eq!(
        f.translate(EDU, 0x1000, Dma::Read),
        Err(FaultReason::RootNotPresent)
    );
    assert_eq!(f.stats().root_pointer_sets, 2);
    // Its queue works from a fresh head.
    u.invalidate_all().unwrap();
    // Done: give the firmware's memory back (leak checkers see every other).
    drop(u);
    drop(core::mem::ManuallyDrop::into_inner(d));
    drop(core::mem::ManuallyDrop::into_inner(firmware));
}

#[test]
fn the_platform_address_width_bounds_tables_and_mappings() {
    let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP);
    // The fake's frames live at 256 GiB: beyond a 36-bit platform.
    let narrow = UnitConfig {
        address_width: Some(36),
        ..cfg()
    };
    assert!(matches!(
        VtdUnit::new(&f, Arc::clone(&frames), narrow).err(),
        Some(VtdError::FrameUnreachable(_))
    ));
    assert_eq!(frames.live(), 0);
    let forty = UnitConfig {
        address_width: Some(40),
        ..cfg()
    };
    let u = VtdUnit::new(&f, Arc::clone(&frames), forty).unwrap();
    assert_eq!(u.address_width(), 40);
    let d = domain(&u, &frames, 4);
    assert_eq!(d.table().format().oa_bits(), 40);
    let mut g = IotlbGather::new();
    assert_eq!(
        d.map(Iova(0x1000), PhysAddr(1 << 40), 0x1000, Prot::RW, &mut g),
        Err(iova_core::Error::OutOfRange)
    );
    d.map(
        Iova(0x1000),
        PhysAddr((1 << 40) - 0x1000),
        0x1000,
        Prot::RW,
        &mut g,
    )
    .unwrap();
    d.flush(&mut g).unwrap();
    // A wider request than MGAW is clamped to MGAW.
    let (frames, f) = fake(QEMU_CAP_39, QEMU_ECAP);
    let wide = UnitConfig {
        address_width: Some(52),
        ..cfg()
    };
    assert_eq!(
        VtdUnit::new(&f, Arc::clone(&frames), wide)
            .unwrap()
            .address_width(),
        39
    );
}

#[test]
fn arbitrary_capability_values_never_panic_the_driver() {
    let mut seed = 0x243f_6a88_85a3_08d3u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut probed = 0;
    let rounds = if cfg!(miri) { 60 } else { 300 };
    for _ in 0..rounds {
        // Random everywhere but where the fault records and IOTLB registers
        // sit (mostly beyond 4 KiB otherwise, which probe just refuses).
        let cap = (next() & !(0x3ff << 24) & !(0xf8 << 40)) | 0x22 << 24;
        let ecap = (next() & !(0x3ff << 8)) | 0xf << 8;
        let (frames, f) = fake(cap, ecap);
        let config = UnitConfig {
            scalable: next() & 1 == 0,
            wait: iova_core::hw::WaitBudget::polls(1000),
            ..cfg()
        };
        let Ok(u) = VtdUnit::new(&f, Arc::clone(&frames), config) else {
            continue;
        };
        probed += 1;
        // Whatever it accepted must work within what it claims.
        if let Ok(fmt) = u.second_level_format(5) {
            let t = PageTable::new(fmt, Arc::clone(&frames)).unwrap();
            let levels = fmt.context_aw();
            let root = t.root().0;
            let state = ContextState::Translated {
                did: 1,
                root,
                aw: levels,
            };
            // SAFETY: no domain of the unit exists, and the entry is made
            // not present again before `t` goes; nothing DMAs meanwhile.
            let _ = unsafe { u.set_context(EDU, state, false) };
            let _ = u.block(EDU);
            // The same through a domain, which blocks EDU again when dropped
            // (or leaks its tables if this unit does not complete that: they
            // come from a borrowed allocator, so nothing else leaks).
            if let Ok(d) = u.second_level_domain(&*frames, 5) {
                let _ = u.attach(EDU, &d);
                let _ = u.pass_through(OTHER);
            }
        }
        let _ = u.invalidate_all();
        u.drain_faults(|_| {}).unwrap();
    }
    // About one in ten random units is one the driver can take.
    assert!(
        probed > rounds / 30,
        "only {probed} of {rounds} random units probed"
    );
}

#[test]
fn requests_with_pasids_use_their_own_entries() {
    use iommu_intel_vtd::fake::{QEMU_ECAP_FLTS, QEMU_ECAP_SCALABLE};
    const PASID_20: u64 = 1 << 40 | 19 << 35; // ECAP.PASID, PSS 19: 20-bit PASIDs
    let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP_FLTS | PASID_20);
    let config = UnitConfig {
        scalable: true,
        ..cfg()
    };
    let u = VtdUnit::new(&f, Arc::clone(&frames), config).unwrap();
    let fl = |pasid| u.first_level_domain(Arc::clone(&frames), pasid).unwrap();
    let a = fl(5);
    let b = fl(9);
    assert_eq!((a.did(), b.did()), (1, 2));
    u.attach_pasid(EDU, 5, &a).unwrap();
    u.attach_pasid(EDU, 9, &b).unwrap();
    assert_eq!(
        u.pasid_context(EDU, 5),
        ContextState::FirstLevel {
            did: 1,
            root: a.table().root().0
        }
    );
    u.enable_translation().unwrap();
    let mut g = IotlbGather::new();
    a.map(Iova(0x10_0000), PhysAddr(0xa000), 0x1000, Prot::RW, &mut g)
        .unwrap();
    a.flush(&mut g).unwrap();
    b.map(Iova(0x10_0000), PhysAddr(0xb000), 0x1000, Prot::RW, &mut g)
        .unwrap();
    b.flush(&mut g).unwrap();
    assert_eq!(f.translate_pasid(EDU, 5, 0x10_0008, Dma::Write), Ok(0xa008));
    assert_eq!(f.translate_pasid(EDU, 9, 0x10_0008, Dma::Write), Ok(0xb008));
    // Requests without a PASID use RID_PASID (0), which has no entry.
    assert_eq!(
        f.translate(EDU, 0x10_0008, Dma::Read),
        Err(FaultReason::PasidEntryNotPresent)
    );
    faults(&u);
    // PASID 100 is in a directory entry without a table.
    assert_eq!(
        f.translate_pasid(EDU, 100, 0x10_0008, Dma::Read),
        Err(FaultReason::PasidDirNotPresent)
    );
    let r = faults(&u);
    assert_eq!(
        (r[0].reason, r[0].pasid),
        (FaultReason::PasidDirNotPresent, Some(100))
    );
    // Unmapping in PASID 5's domain leaves PASID 9's translation alone.
    let before = u.counters().snapshot();
    a.unmap(Iova(0x10_0000), 0x1000, &mut g).unwrap();
    a.flush(&mut g).unwrap();
    assert_eq!(u.counters().snapshot().since(&before).pasid_iotlb, 1);
    assert_eq!(
        f.translate_pasid(EDU, 5, 0x10_0008, Dma::Write),
        Err(FaultReason::FirstLevelNotPresent)
    );
    let r = faults(&u);
    assert_eq!((r[0].source, r[0].pasid), (EDU, Some(5)));
    assert_eq!(f.translate_pasid(EDU, 9, 0x10_0008, Dma::Write), Ok(0xb008));
    // Limits: the driver's one-page directory, and units without PASIDs.
    assert_eq!(
        u.block_pasid(EDU, iommu_intel_vtd::context::scalable::MAX_PASIDS),
        Err(VtdError::PasidOutOfRange(
            iommu_intel_vtd::context::scalable::MAX_PASIDS
        ))
    );
    // Detach PASID 9: blocked, the entry invalidated.
    u.detach_pasid(EDU, 9, &b).unwrap();
    assert_eq!(
        f.translate_pasid(EDU, 9, 0x10_0008, Dma::Read),
        Err(FaultReason::PasidEntryNotPresent)
    );
    faults(&u);
    drop((a, b));
    u.shutdown().unwrap();
    assert_eq!(
        frames.live(),
        0,
        "PASID tables of every directory entry are freed"
    );

    // No ECAP.PASID: only RID_PASID.
    let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP_SCALABLE);
    let u = VtdUnit::new(&f, Arc::clone(&frames), config).unwrap();
    assert_eq!(
        u.pass_through_pasid(EDU, 5),
        Err(VtdError::PasidUnsupported)
    );
    // Legacy units have no PASIDs at all.
    let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP);
    let u = unit(&f, &frames);
    assert_eq!(u.block_pasid(EDU, 0), Err(VtdError::ScalableUnsupported));
}

//! Fault injection against the fake VT-d unit: the frame allocator running
//! dry at every allocation an attach makes (a bus's context table in legacy
//! mode; in scalable mode a device's PASID directory, its half-bus context
//! table and its PASID tables; a domain's second-level root) and while
//! mapping. Each must end in a typed error with nothing changed: the device
//! still blocked or its previous entry intact, no frame held, no
//! invalidation issued; and work once memory is back.
#![cfg(feature = "fakes")]

use std::sync::Arc;

use iommu_intel_vtd::fake::{Dma, FakeVtd, QEMU_CAP_48, QEMU_ECAP, QEMU_ECAP_SCALABLE};
use iommu_intel_vtd::{Bdf, ContextState, FaultReason, UnitConfig, VtdDomain, VtdError, VtdUnit};
use iova_core::fakes::FakeFrames;
use iova_core::{Error, FrameAllocator, IommuDomain, IotlbGather, Iova, PageTable};
use iova_core::{PhysAddr, Prot};

const K4: u64 = 0x1000;
const M2: u64 = 0x20_0000;
const EDU: Bdf = Bdf::new(0, 1, 0);
const OTHER: Bdf = Bdf::new(0, 2, 0);
/// A device on a bus nobody uses yet.
const FAR: Bdf = Bdf::new(3, 0, 0);
/// ECAP.PASID with PSS 19 (20-bit PASIDs).
const PASID_20: u64 = 1 << 40 | 19 << 35;

type Unit<'f> = VtdUnit<&'f FakeVtd, Arc<FakeFrames>>;
type Domain<'u, 'f> = VtdDomain<'u, &'f FakeVtd, Arc<FakeFrames>, Arc<FakeFrames>>;

/// QEMU's walker does not snoop (ECAP.C = 0); the fake reads memory
/// directly, so cleaning nothing is enough.
struct NoCache;

impl iova_core::CacheMaintenance for NoCache {
    fn is_coherent(&self) -> bool {
        false
    }
    fn clean(&self, _: PhysAddr, _: u64) {}
    fn invalidate(&self, _: PhysAddr, _: u64) {}
    fn complete(&self) {}
}

static NO_CACHE: NoCache = NoCache;

fn unit<'f>(f: &'f FakeVtd, frames: &Arc<FakeFrames>, scalable: bool) -> Unit<'f> {
    let config = UnitConfig {
        walk_cache: Some(&NO_CACHE),
        scalable,
        ..UnitConfig::default()
    };
    VtdUnit::new(f, Arc::clone(frames), config).unwrap()
}

/// A 4-level second-level domain with the unit's next domain ID (`did`).
fn domain<'u, 'f>(u: &'u Unit<'f>, frames: &Arc<FakeFrames>, did: u16) -> Domain<'u, 'f> {
    let d = u.second_level_domain(Arc::clone(frames), 4).unwrap();
    assert_eq!(d.did(), did);
    d
}

fn translated(d: &Domain<'_, '_>) -> ContextState {
    ContextState::Translated {
        did: d.did(),
        root: d.table().root().0,
        aw: d.table().format().context_aw(),
    }
}

fn map(d: &Domain<'_, '_>, iova: u64, pa: u64, len: u64) {
    let mut g = IotlbGather::new();
    d.map(Iova(iova), PhysAddr(pa), len, Prot::RW, &mut g)
        .unwrap();
    d.flush(&mut g).unwrap();
}

/// The root entry (two qwords) of `bus`, as in memory.
fn root_entry(frames: &FakeFrames, u: &Unit<'_>, bus: u8) -> [u64; 2] {
    let p = frames.phys_to_virt(u.root_table()).cast::<u64>();
    let i = 2 * usize::from(bus);
    // SAFETY: the unit's root table, a live 4 KiB frame; i + 1 < 512.
    unsafe { [p.add(i).read_volatile(), p.add(i + 1).read_volatile()] }
}

fn drain(u: &Unit<'_>) -> Vec<FaultReason> {
    let mut v = Vec::new();
    u.drain_faults(|r| v.push(r.reason)).unwrap();
    v
}

/// Legacy mode: a device on a new bus needs the bus's context table. Without
/// memory the attach fails with `NoMemory` and writes nothing (the root
/// entry stays not present, no invalidation), the device stays blocked, the
/// devices already attached keep translating, and the attach works once
/// memory is back. A domain whose second-level root cannot be allocated
/// never exists, so there is nothing to attach.
#[test]
fn legacy_attach_without_memory_for_a_context_table_leaves_the_device_blocked() {
    let frames = Arc::new(FakeFrames::new());
    let f = FakeVtd::new(Arc::clone(&frames), QEMU_CAP_48, QEMU_ECAP);
    let u = unit(&f, &frames, false);
    let d = domain(&u, &frames, 1);
    u.attach(EDU, &d).unwrap();
    u.enable_translation().unwrap();
    map(&d, 0x10_0000, 0x4_5000, K4);

    let live = frames.live();
    frames.fail_after(0);
    let fmt = u.second_level_format(4).unwrap();
    assert_eq!(
        PageTable::new(fmt, Arc::clone(&frames)).err(),
        Some(Error::NoMemory),
        "no second-level root"
    );
    let before = u.counters().snapshot();
    assert_eq!(u.attach(FAR, &d), Err(VtdError::NoMemory));
    assert_eq!(u.pass_through(FAR), Err(VtdError::NoMemory));
    assert_eq!(frames.live(), live, "nothing held");
    assert_eq!(frames.bad_frees(), 0);
    assert_eq!(u.counters().snapshot(), before, "nothing invalidated");
    assert_eq!(u.context(FAR), ContextState::NotPresent);
    assert_eq!(root_entry(&frames, &u, FAR.bus), [0, 0]);
    assert_eq!(
        f.translate(FAR, 0x10_0000, Dma::Read),
        Err(FaultReason::RootNotPresent)
    );
    assert_eq!(drain(&u), [FaultReason::RootNotPresent]);
    assert_eq!(u.context(EDU), translated(&d), "the other device intact");
    assert_eq!(f.translate(EDU, 0x10_0008, Dma::Write), Ok(0x4_5008));

    frames.unlimited();
    u.attach(FAR, &d).unwrap();
    assert_eq!(frames.live(), live + 1, "one context table");
    assert_eq!(f.translate(FAR, 0x10_0010, Dma::Read), Ok(0x4_5010));
    let d2 = domain(&u, &frames, 2);
    assert_eq!(frames.live(), live + 2);
    drop(d2);
}

/// Scalable mode, first attach of a device: a PASID directory, the context
/// table of its half bus when new, and the PASID table holding RID_PASID.
/// Running dry after each of them gives `NoMemory` with nothing changed:
/// no context or root entry written, no frame held, no invalidation, the
/// device blocked. A device beside an attached one needs no context table;
/// the same holds there. Then both attaches work.
#[test]
fn scalable_first_attach_without_memory_builds_nothing() {
    let frames = Arc::new(FakeFrames::new());
    let f = FakeVtd::new(Arc::clone(&frames), QEMU_CAP_48, QEMU_ECAP_SCALABLE);
    let u = unit(&f, &frames, true);
    let d = domain(&u, &frames, 1);
    u.attach(EDU, &d).unwrap();
    u.enable_translation().unwrap();
    map(&d, 0x10_0000, 0x4_5000, K4);
    let edu_root = root_entry(&frames, &u, 0);

    // FAR: directory, context table, PASID table. OTHER: directory, PASID table.
    for (dev, allocations) in [(FAR, 3), (OTHER, 2)] {
        for left in 0..allocations {
            let live = frames.live();
            let before = u.counters().snapshot();
            frames.fail_after(left);
            assert_eq!(
                u.attach(dev, &d),
                Err(VtdError::NoMemory),
                "{dev:?}, {left} allocations left"
            );
            assert_eq!(frames.live(), live, "{dev:?}, {left}: nothing held");
            assert_eq!(frames.bad_frees(), 0);
            assert_eq!(u.counters().snapshot(), before, "nothing invalidated");
            assert_eq!(u.context(dev), ContextState::NotPresent);
            let blocked = if dev == FAR {
                assert_eq!(root_entry(&frames, &u, FAR.bus), [0, 0], "{left}");
                FaultReason::RootNotPresent
            } else {
                assert_eq!(root_entry(&frames, &u, 0), edu_root);
                FaultReason::ContextNotPresent
            };
            assert_eq!(f.translate(dev, 0x10_0000, Dma::Read), Err(blocked));
            assert_eq!(drain(&u), [blocked], "{dev:?}, {left}");
        }
        frames.unlimited();
        let live = frames.live();
        u.attach(dev, &d).unwrap();
        assert_eq!(frames.live(), live + allocations);
        assert_eq!(f.translate(dev, 0x10_0008, Dma::Write), Ok(0x4_5008));
    }
    assert_eq!(u.context(EDU), translated(&d));
    assert_eq!(f.translate(EDU, 0x10_0010, Dma::Read), Ok(0x4_5010));
}

/// Scalable mode with PASIDs: a PASID whose directory entry has no table
/// yet needs a new PASID table. Without memory, `set_pasid` fails with
/// `NoMemory`; the PASID stays blocked, the device's other entries (here
/// RID_PASID) are intact and keep translating, nothing is held; then it works.
#[test]
fn a_pasid_table_that_cannot_be_allocated_leaves_the_other_entries_intact() {
    let frames = Arc::new(FakeFrames::new());
    let f = FakeVtd::new(
        Arc::clone(&frames),
        QEMU_CAP_48,
        QEMU_ECAP_SCALABLE | PASID_20,
    );
    let u = unit(&f, &frames, true);
    let d = domain(&u, &frames, 1);
    let d2 = domain(&u, &frames, 2);
    u.attach(EDU, &d).unwrap();
    u.enable_translation().unwrap();
    map(&d, 0x10_0000, 0x4_5000, K4);
    map(&d2, 0x10_0000, 0x7_7000, K4);

    let live = frames.live();
    let before = u.counters().snapshot();
    frames.fail_after(0);
    // PASID 100 is in directory entry 1, which has no table.
    assert_eq!(u.attach_pasid(EDU, 100, &d2), Err(VtdError::NoMemory));
    assert_eq!(frames.live(), live);
    assert_eq!(u.counters().snapshot(), before, "nothing invalidated");
    assert_eq!(u.pasid_context(EDU, 100), ContextState::NotPresent);
    assert_eq!(
        f.translate_pasid(EDU, 100, 0x10_0000, Dma::Read),
        Err(FaultReason::PasidDirNotPresent)
    );
    assert_eq!(drain(&u), [FaultReason::PasidDirNotPresent]);
    assert_eq!(u.context(EDU), translated(&d), "RID_PASID intact");
    assert_eq!(f.translate(EDU, 0x10_0008, Dma::Write), Ok(0x4_5008));
    // PASID 5 shares RID_PASID's table: no allocation, so it works dry.
    u.attach_pasid(EDU, 5, &d2).unwrap();
    assert_eq!(
        f.translate_pasid(EDU, 5, 0x10_0008, Dma::Read),
        Ok(0x7_7008)
    );

    frames.unlimited();
    u.attach_pasid(EDU, 100, &d2).unwrap();
    assert_eq!(frames.live(), live + 1, "one PASID table");
    assert_eq!(
        f.translate_pasid(EDU, 100, 0x10_0008, Dma::Read),
        Ok(0x7_7008)
    );
    assert_eq!(f.translate(EDU, 0x10_0008, Dma::Read), Ok(0x4_5008));
}

/// Mapping into an attached domain with the tables' allocator running dry
/// after 0, 1 or 2 of the 3 new tables: `NoMemory`, nothing published (the
/// gather is empty, the flush invalidates nothing), every frame back, the
/// device still faults there, and the map works once memory is back. In
/// legacy and scalable mode.
#[test]
fn mapping_without_memory_for_tables_maps_nothing_and_keeps_nothing() {
    for (ecap, scalable) in [(QEMU_ECAP, false), (QEMU_ECAP_SCALABLE, true)] {
        let frames = Arc::new(FakeFrames::new());
        let f = FakeVtd::new(Arc::clone(&frames), QEMU_CAP_48, ecap);
        let u = unit(&f, &frames, scalable);
        let d = domain(&u, &frames, 1);
        u.attach(EDU, &d).unwrap();
        u.enable_translation().unwrap();
        let iova = 0x40_0000_0000;
        for tables_left in 0..3 {
            let live = frames.live();
            let before = u.counters().snapshot();
            frames.fail_after(tables_left);
            let mut g = IotlbGather::new();
            assert_eq!(
                d.map(Iova(iova), PhysAddr(0x4_5000), K4, Prot::RW, &mut g),
                Err(Error::NoMemory)
            );
            assert!(g.is_empty(), "nothing published");
            assert_eq!(frames.live(), live, "{tables_left} tables returned");
            d.flush(&mut g).unwrap();
            assert_eq!(u.counters().snapshot(), before, "nothing to invalidate");
            assert!(f.translate(EDU, iova, Dma::Read).is_err());
            assert_eq!(drain(&u).len(), 1);
        }
        frames.unlimited();
        let live = frames.live();
        map(&d, iova, 0x4_5000, K4);
        assert_eq!(frames.live(), live + 3);
        assert_eq!(f.translate(EDU, iova + 8, Dma::Write), Ok(0x4_5008));
    }
}

/// A map spanning two leaf tables with memory for the first only: the page
/// mapped in the first is taken back and kept in the gather, whose flush
/// issues an IOTLB invalidation; the device sees nothing; the retry maps
/// both pages; emptying and dropping the domain returns every table.
#[test]
fn running_dry_mid_map_unwinds_and_the_flush_invalidates_the_unwound_page() {
    let frames = Arc::new(FakeFrames::new());
    let f = FakeVtd::new(Arc::clone(&frames), QEMU_CAP_48, QEMU_ECAP);
    let u = unit(&f, &frames, false);
    let d = domain(&u, &frames, 1);
    u.attach(EDU, &d).unwrap();
    u.enable_translation().unwrap();
    let base = frames.live();
    // Levels 3 and 2 and the first leaf table; not the second leaf table.
    frames.fail_after(3);
    let mut g = IotlbGather::new();
    assert_eq!(
        d.map(Iova(M2 - K4), PhysAddr(0x8_0000), 2 * K4, Prot::RW, &mut g),
        Err(Error::NoMemory)
    );
    assert!(g.has_unmapped(), "the unwound page is for the flush");
    let before = u.counters().snapshot();
    d.flush(&mut g).unwrap();
    let after = u.counters().snapshot();
    assert!(
        after.iotlb_page + after.iotlb_domain + after.iotlb_global
            > before.iotlb_page + before.iotlb_domain + before.iotlb_global,
        "an IOTLB invalidation"
    );
    for a in [M2 - K4, M2] {
        assert!(f.translate(EDU, a, Dma::Read).is_err());
    }
    drain(&u);
    frames.unlimited();
    map(&d, M2 - K4, 0x8_0000, 2 * K4);
    assert_eq!(f.translate(EDU, M2 - 8, Dma::Read), Ok(0x8_0ff8));
    assert_eq!(f.translate(EDU, M2 + 8, Dma::Read), Ok(0x8_1008));
    let mut g = IotlbGather::new();
    assert_eq!(d.unmap(Iova(0), 1 << 39, &mut g), Ok(2 * K4));
    d.flush(&mut g).unwrap();
    u.detach(EDU, &d).unwrap();
    drop(d);
    assert_eq!(
        frames.live(),
        base - 1,
        "every table returned, the root too"
    );
    assert_eq!(frames.bad_frees(), 0);
}

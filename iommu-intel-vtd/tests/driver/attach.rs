//! The attach model: domains that know their endpoints, refuse what they
//! cannot hold, and detach every endpoint before their tables are freed.

use std::sync::Mutex;

use iova_core::{DeviceError, FrameAllocator};

use super::*;
use iommu_intel_vtd::domain::{Endpoint, MAX_ENDPOINTS, VtdFormat};
use iommu_intel_vtd::fake::{CAP_FL1GP, FakeStats, QEMU_ECAP_FLTS, QEMU_ECAP_SCALABLE};

/// ECAP.PASID with PSS 19 (20-bit PASIDs).
const PASID_20: u64 = 1 << 40 | 19 << 35;

/// What the unit and the fake looked like when a table frame was freed.
#[derive(Debug, Clone, Copy)]
struct AtFree {
    /// Whether the entries of EDU and OTHER were present.
    present: [bool; 2],
    /// Whether a DMA of EDU was translated.
    reached: bool,
    /// Context-cache (legacy) or PASID-cache (scalable) invalidations since
    /// the drop began.
    entry_invalidations: u64,
    /// IOTLB (or PASID-based IOTLB) invalidations since then.
    iotlb_invalidations: u64,
    /// Wait descriptors completed since then.
    waits: u64,
    /// Translations the fake still cached.
    cached: usize,
}

/// Frames for a domain's tables that look, at every free, at whether the
/// unit could still reach them.
struct Witness<'a> {
    frames: Arc<FakeFrames>,
    fake: &'a FakeVtd,
    unit: &'a Unit<'a>,
    /// The fake's records when the drop began; `None`: not watching.
    armed: Mutex<Option<FakeStats>>,
    seen: Mutex<Vec<AtFree>>,
}

impl<'a> Witness<'a> {
    fn new(frames: &Arc<FakeFrames>, fake: &'a FakeVtd, unit: &'a Unit<'a>) -> Self {
        Self {
            frames: Arc::clone(frames),
            fake,
            unit,
            armed: Mutex::new(None),
            seen: Mutex::new(Vec::new()),
        }
    }

    fn arm(&self) {
        *self.armed.lock().unwrap() = Some(self.fake.stats());
    }
}

// SAFETY: forwards to `FakeFrames`, which upholds the contract; it only
// looks at the unit and the fake before each free.
unsafe impl FrameAllocator for Witness<'_> {
    fn alloc_zeroed(&self, size: usize) -> Option<PhysAddr> {
        self.frames.alloc_zeroed(size)
    }

    unsafe fn free(&self, pa: PhysAddr, size: usize) {
        if let Some(before) = self.armed.lock().unwrap().clone() {
            let now = self.fake.stats();
            let scalable = self.unit.scalable();
            let kinds = |k: u64| now.descriptors[k as usize] - before.descriptors[k as usize];
            let entry = if scalable {
                descriptor::TYPE_PASID_CACHE
            } else {
                descriptor::TYPE_CONTEXT
            };
            let cached = self.fake.cached_translations();
            let at = AtFree {
                present: [EDU, OTHER].map(|d| self.unit.context(d) != ContextState::NotPresent),
                reached: self.fake.translate(EDU, 0x10_0000, Dma::Read).is_ok(),
                entry_invalidations: kinds(entry),
                iotlb_invalidations: kinds(descriptor::TYPE_IOTLB)
                    + kinds(descriptor::TYPE_PASID_IOTLB),
                waits: now.status_writes - before.status_writes,
                cached,
            };
            self.seen.lock().unwrap().push(at);
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { self.frames.free(pa, size) }
    }

    fn phys_to_virt(&self, pa: PhysAddr) -> *mut u8 {
        self.frames.phys_to_virt(pa)
    }
}

fn scalable_unit<'f>(f: &'f FakeVtd, frames: &Arc<FakeFrames>) -> Unit<'f> {
    let config = UnitConfig {
        scalable: true,
        ..cfg()
    };
    VtdUnit::new(f, Arc::clone(frames), config).unwrap()
}

/// Attaches EDU and OTHER to `d`, lets EDU's DMA warm the fake's caches,
/// drops `d` and checks what the tables' frees saw.
fn drop_while_attached<F: VtdFormat>(
    u: &Unit<'_>,
    f: &FakeVtd,
    frames: &FakeFrames,
    w: &Witness<'_>,
    d: VtdDomain<'_, &FakeVtd, Arc<FakeFrames>, &Witness<'_>, F>,
) {
    let did = d.did();
    u.attach(EDU, &d).unwrap();
    u.attach(OTHER, &d).unwrap();
    assert_eq!(d.attached(), 2);
    u.enable_translation().unwrap();
    map(&d, 0x10_0000, 0x5000, 0x1000, Prot::RW);
    map(&d, 0x4000_0000, 0x6000, 0x1000, Prot::RW);
    assert_eq!(f.translate(EDU, 0x10_0008, Dma::Read), Ok(0x5008));
    assert!(f.cached_translations() > 0);
    let live = frames.live();
    w.arm();
    drop(d);
    let seen = w.seen.lock().unwrap().clone();
    // Root, one level-3 table, two level-2 and two leaf tables.
    assert_eq!(seen.len(), 6, "every table frame freed");
    assert_eq!(frames.live(), live - seen.len());
    for at in &seen {
        assert_eq!(at.present, [false, false], "{at:?}");
        assert!(!at.reached, "{at:?}");
        // One per endpoint, then the domain's own.
        assert!(at.entry_invalidations >= 3, "{at:?}");
        assert!(at.iotlb_invalidations >= 3, "{at:?}");
        assert!(at.waits >= 3, "{at:?}");
        assert_eq!(at.cached, 0, "{at:?}");
    }
    assert_eq!(u.context(EDU), ContextState::NotPresent);
    assert!(f.translate(EDU, 0x10_0008, Dma::Read).is_err());
    faults(u);
    // The domain ID went back to the unit.
    assert_eq!(u.alloc_domain_id(), Ok(did));
}

/// A domain dropped while devices are attached makes their entries not
/// present, invalidates the context (or PASID) cache and the IOTLB and
/// waits, and only then frees its tables: at every free the fake neither
/// holds the entries nor translates the device's DMA.
#[test]
fn dropping_an_attached_domain_detaches_it_before_freeing_its_tables() {
    // Legacy mode, second level.
    let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP);
    let u = unit(&f, &frames);
    let w = Witness::new(&frames, &f, &u);
    let d = u.second_level_domain(&w, 4).unwrap();
    drop_while_attached(&u, &f, &frames, &w, d);
    // Scalable mode, second level.
    let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP_SCALABLE);
    let u = scalable_unit(&f, &frames);
    let w = Witness::new(&frames, &f, &u);
    let d = u.second_level_domain(&w, 4).unwrap();
    drop_while_attached(&u, &f, &frames, &w, d);
    // Scalable mode, first level (RID_PASID).
    let (frames, f) = fake(QEMU_CAP_48 | CAP_FL1GP, QEMU_ECAP_FLTS);
    let u = scalable_unit(&f, &frames);
    let w = Witness::new(&frames, &f, &u);
    let d = u.first_level_domain(&w, 0).unwrap();
    drop_while_attached(&u, &f, &frames, &w, d);
}

/// When the unit does not complete the teardown's invalidations, the
/// domain's tables and ID are leaked, not freed.
#[test]
fn a_teardown_the_unit_does_not_complete_leaks_the_tables() {
    let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP);
    let config = UnitConfig {
        wait: iova_core::hw::WaitBudget::polls(1000),
        ..cfg()
    };
    let u = VtdUnit::new(&f, Arc::clone(&frames), config).unwrap();
    // Tables from a borrowed allocator: the leaked table then holds no
    // reference that would keep the fake memory alive.
    let d = u.second_level_domain(&*frames, 4).unwrap();
    let did = d.did();
    u.attach(EDU, &d).unwrap();
    map(&d, 0x10_0000, 0x5000, 0x1000, Prot::RW);
    let live = frames.live();
    f.stall_waits(true);
    drop(d);
    f.stall_waits(false);
    assert_eq!(frames.live(), live, "nothing freed");
    assert_eq!(frames.bad_frees(), 0);
    assert_ne!(u.alloc_domain_id(), Ok(did), "the ID stays taken");
}

#[test]
fn attach_detach_and_attach_again() {
    let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP);
    let u = unit(&f, &frames);
    let d = domain(&u, &frames, 4);
    map(&d, 0x10_0000, 0x5000, 0x1000, Prot::RW);
    u.enable_translation().unwrap();
    u.attach(EDU, &d).unwrap();
    assert_eq!(d.attached(), 1);
    assert_eq!(f.translate(EDU, 0x10_0008, Dma::Read), Ok(0x5008));
    let before = u.counters().snapshot();
    u.detach(EDU, &d).unwrap();
    let c = u.counters().snapshot().since(&before);
    assert_eq!((c.context, c.iotlb_domain, c.waits), (1, 1, 1));
    assert_eq!(d.attached(), 0);
    assert_eq!(u.context(EDU), ContextState::NotPresent);
    assert_eq!(
        f.translate(EDU, 0x10_0008, Dma::Read),
        Err(FaultReason::ContextNotPresent)
    );
    faults(&u);
    // Detaching again: refused, nothing issued.
    let before = u.counters().snapshot();
    assert_eq!(
        u.detach(EDU, &d),
        Err(VtdError::NotAttached(Endpoint { dev: EDU, pasid: 0 }))
    );
    assert_eq!(u.counters().snapshot(), before);
    u.attach(EDU, &d).unwrap();
    assert_eq!(d.attached(), 1);
    assert_eq!(f.translate(EDU, 0x10_0008, Dma::Read), Ok(0x5008));
}

/// Attaching twice to the same domain does nothing; attaching to another
/// domain moves the endpoint, and the domain it left neither detaches it
/// nor blocks it when dropped.
#[test]
fn attaching_again_and_moving_between_domains() {
    let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP);
    let u = unit(&f, &frames);
    let a = domain(&u, &frames, 4);
    let b = domain(&u, &frames, 4);
    map(&a, 0x10_0000, 0xa000, 0x1000, Prot::RW);
    map(&b, 0x10_0000, 0xb000, 0x1000, Prot::RW);
    u.enable_translation().unwrap();
    attach(&u, &a, EDU);
    let (before, stats) = (u.counters().snapshot(), f.stats());
    attach(&u, &a, EDU);
    assert_eq!(u.counters().snapshot(), before, "nothing issued");
    assert_eq!(f.stats(), stats, "nothing written");
    assert_eq!(a.attached(), 1);
    assert_eq!(f.translate(EDU, 0x10_0000, Dma::Read), Ok(0xa000));
    // Move: the old entry is invalidated first (context + domain 1's IOTLB).
    let before = u.counters().snapshot();
    attach(&u, &b, EDU);
    let c = u.counters().snapshot().since(&before);
    assert_eq!((c.context, c.iotlb_domain, c.waits), (1, 1, 1));
    assert_eq!((a.attached(), b.attached()), (0, 1));
    assert_eq!(f.translate(EDU, 0x10_0000, Dma::Read), Ok(0xb000));
    // The domain it left refuses to detach it, and changes nothing.
    assert_eq!(
        u.detach(EDU, &a),
        Err(VtdError::NotAttached(Endpoint { dev: EDU, pasid: 0 }))
    );
    let entry = u.context(EDU);
    let before = u.counters().snapshot();
    drop(a);
    assert_eq!(u.context(EDU), entry, "still in b");
    assert_eq!(f.translate(EDU, 0x10_0000, Dma::Read), Ok(0xb000));
    let c = u.counters().snapshot().since(&before);
    assert_eq!((c.context, c.waits), (1, 1), "only domain 1's own caches");
    // Pass-through and blocking take the endpoint over the same way.
    u.pass_through(EDU).unwrap();
    assert_eq!(b.attached(), 0);
    assert_eq!(f.translate(EDU, 0x12_3000, Dma::Read), Ok(0x12_3000));
    attach(&u, &b, EDU);
    u.block(EDU).unwrap();
    assert_eq!(b.attached(), 0);
    assert_eq!(
        u.detach(EDU, &b),
        Err(VtdError::NotAttached(Endpoint { dev: EDU, pasid: 0 }))
    );
}

#[test]
fn detaching_a_device_that_was_never_attached_changes_nothing() {
    let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP);
    let u = unit(&f, &frames);
    let d = domain(&u, &frames, 4);
    attach(&u, &d, EDU);
    let (live, before) = (frames.live(), u.counters().snapshot());
    for dev in [OTHER, FAR] {
        assert_eq!(
            u.detach(dev, &d),
            Err(VtdError::NotAttached(Endpoint { dev, pasid: 0 }))
        );
    }
    assert_eq!((frames.live(), u.counters().snapshot()), (live, before));
    assert_eq!(d.attached(), 1);
    assert_eq!(
        iova_core::Error::from(VtdError::NotAttached(Endpoint { dev: FAR, pasid: 0 })),
        iova_core::Error::Device(DeviceError::NotAttached(0x300))
    );
}

/// A domain tracks at most `MAX_ENDPOINTS` endpoints: one more is refused
/// with nothing written; an endpoint that moved elsewhere frees its place.
#[test]
fn a_full_domain_refuses_another_endpoint() {
    let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP);
    let u = unit(&f, &frames);
    let a = domain(&u, &frames, 4);
    let b = domain(&u, &frames, 4);
    map(&a, 0x10_0000, 0xa000, 0x1000, Prot::RW);
    u.enable_translation().unwrap();
    let dev = |i: usize| Bdf::new(1, i as u8, 0);
    for i in 0..MAX_ENDPOINTS {
        attach(&u, &a, dev(i));
    }
    assert_eq!(a.attached(), MAX_ENDPOINTS);
    let extra = dev(MAX_ENDPOINTS);
    let (live, before) = (frames.live(), u.counters().snapshot());
    assert_eq!(u.attach(extra, &a), Err(VtdError::DomainFull));
    assert_eq!((frames.live(), u.counters().snapshot()), (live, before));
    assert_eq!(u.context(extra), ContextState::NotPresent);
    assert_eq!(
        iova_core::Error::from(VtdError::DomainFull),
        iova_core::Error::Device(DeviceError::DomainFull)
    );
    // Another domain takes one over: room again.
    attach(&u, &b, dev(3));
    attach(&u, &a, extra);
    assert_eq!(a.attached(), MAX_ENDPOINTS);
    assert_eq!(f.translate(extra, 0x10_0000, Dma::Read), Ok(0xa000));
    drop(a);
    for i in (0..=MAX_ENDPOINTS).filter(|&i| i != 3) {
        assert_eq!(u.context(dev(i)), ContextState::NotPresent, "{i}");
    }
    assert_eq!(
        u.context(dev(3)),
        ContextState::Translated {
            did: b.did(),
            root: b.table().root().0,
            aw: 2
        }
    );
}

/// With CAP.ND = 0 the unit has 16 domain IDs, of which 1..=15 are handed
/// out; then domains, pass-through and raw IDs are refused with nothing
/// held, and a dropped domain's ID is handed out again.
#[test]
fn domain_ids_run_out_and_come_back() {
    let (frames, f) = fake(QEMU_CAP_48 & !7, QEMU_ECAP);
    let u = unit(&f, &frames);
    assert_eq!(u.features().cap.domains(), 16);
    let mut all: Vec<_> = (0..15).map(|_| domain(&u, &frames, 4)).collect();
    let dids: Vec<_> = all.iter().map(|d| d.did()).collect();
    assert_eq!(dids, (1..=15).collect::<Vec<_>>());
    let live = frames.live();
    assert_eq!(
        u.second_level_domain(Arc::clone(&frames), 4).err(),
        Some(VtdError::DomainIdsExhausted)
    );
    assert_eq!(u.alloc_domain_id(), Err(VtdError::DomainIdsExhausted));
    assert_eq!(u.pass_through(EDU), Err(VtdError::DomainIdsExhausted));
    assert_eq!(frames.live(), live, "nothing held");
    assert_eq!(u.context(EDU), ContextState::NotPresent);
    assert_eq!(
        iova_core::Error::from(VtdError::DomainIdsExhausted),
        iova_core::Error::Device(DeviceError::IdsExhausted)
    );
    drop(all.remove(6));
    assert_eq!(domain(&u, &frames, 4).did(), 7);
    // A unit with more IDs than the driver hands out stops at its limit.
    let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP);
    let u = unit(&f, &frames);
    assert_eq!(u.features().cap.domains(), 1 << 16);
    let n = (1..iommu_intel_vtd::MAX_ALLOCATED_DIDS)
        .take_while(|_| u.alloc_domain_id().is_ok())
        .count();
    assert_eq!(n as u32, iommu_intel_vtd::MAX_ALLOCATED_DIDS - 1);
    assert_eq!(u.alloc_domain_id(), Err(VtdError::DomainIdsExhausted));
}

/// Scalable mode: a second-level domain serves any PASID (and RID_PASID);
/// a first-level one only the PASID it was built for. Dropping a domain
/// blocks its PASIDs and leaves the device's others alone.
#[test]
fn domains_attach_to_pasids() {
    let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP_SCALABLE | PASID_20);
    let u = scalable_unit(&f, &frames);
    let a = domain(&u, &frames, 4);
    let b = domain(&u, &frames, 4);
    map(&a, 0x10_0000, 0xa000, 0x1000, Prot::RW);
    map(&b, 0x10_0000, 0xb000, 0x1000, Prot::RW);
    u.enable_translation().unwrap();
    u.attach_pasid(EDU, 5, &a).unwrap();
    u.attach(EDU, &a).unwrap();
    u.attach_pasid(EDU, 9, &b).unwrap();
    assert_eq!((a.attached(), b.attached()), (2, 1));
    assert_eq!(f.translate_pasid(EDU, 5, 0x10_0008, Dma::Read), Ok(0xa008));
    assert_eq!(f.translate(EDU, 0x10_0008, Dma::Read), Ok(0xa008));
    assert_eq!(f.translate_pasid(EDU, 9, 0x10_0008, Dma::Read), Ok(0xb008));
    assert_eq!(
        u.detach_pasid(EDU, 5, &b),
        Err(VtdError::NotAttached(Endpoint { dev: EDU, pasid: 5 }))
    );
    assert_eq!(
        u.attach_pasid(EDU, 1 << 20, &a),
        Err(VtdError::PasidOutOfRange(1 << 20))
    );
    drop(a);
    for pasid in [0, 5] {
        assert_eq!(u.pasid_context(EDU, pasid), ContextState::NotPresent);
        assert_eq!(
            f.translate_pasid(EDU, pasid, 0x10_0008, Dma::Read),
            Err(FaultReason::PasidEntryNotPresent)
        );
        faults(&u);
    }
    assert_eq!(f.translate_pasid(EDU, 9, 0x10_0008, Dma::Read), Ok(0xb008));
    u.detach_pasid(EDU, 9, &b).unwrap();
    assert_eq!(b.attached(), 0);

    // First level: the domain's PASID only.
    let (frames, f) = fake(QEMU_CAP_48 | CAP_FL1GP, QEMU_ECAP_FLTS | PASID_20);
    let u = scalable_unit(&f, &frames);
    let fl = u.first_level_domain(Arc::clone(&frames), 7).unwrap();
    assert_eq!(fl.pasid(), Some(7));
    let mismatch = |requested| VtdError::PasidMismatch {
        domain: 7,
        requested,
    };
    assert_eq!(u.attach_pasid(EDU, 8, &fl), Err(mismatch(8)));
    assert_eq!(u.attach(EDU, &fl), Err(mismatch(0)));
    assert_eq!(u.pasid_context(EDU, 8), ContextState::NotPresent);
    u.attach_pasid(EDU, 7, &fl).unwrap();
    map(&fl, 0x10_0000, 0xc000, 0x1000, Prot::RW);
    u.enable_translation().unwrap();
    assert_eq!(f.translate_pasid(EDU, 7, 0x10_0008, Dma::Read), Ok(0xc008));
    let before = u.counters().snapshot();
    unmap(&fl, 0x10_0000, 0x1000);
    let c = u.counters().snapshot().since(&before);
    assert_eq!((c.pasid_iotlb, c.iotlb_page), (1, 0), "tagged with PASID 7");
    assert!(f.translate_pasid(EDU, 7, 0x10_0008, Dma::Read).is_err());
    faults(&u);
    drop(fl);
    assert_eq!(u.pasid_context(EDU, 7), ContextState::NotPresent);

    // Legacy mode has no PASIDs.
    let (frames, f) = fake(QEMU_CAP_48, QEMU_ECAP);
    let u = unit(&f, &frames);
    let d = domain(&u, &frames, 4);
    assert_eq!(
        u.attach_pasid(EDU, 5, &d),
        Err(VtdError::ScalableUnsupported)
    );
    assert_eq!(d.attached(), 0);
}

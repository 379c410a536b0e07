//! Register access through iova-core's `Mmio`: a block too small for the
//! registers the unit describes is refused at probe, and an access the block
//! refuses later is a typed error that changes nothing; no panic either way.

use std::sync::Arc;

use iommu_intel_vtd::caps::Features;
use iommu_intel_vtd::fake::{FakeVtd, QEMU_CAP_48, QEMU_ECAP};
use iommu_intel_vtd::regs::{self, Mmio, MmioError, Width};
use iommu_intel_vtd::{Bdf, ContextState, UnitConfig, VtdError, VtdUnit};
use iova_core::fakes::FakeFrames;
use iova_core::{DeviceError, Error, PhysAddr};

const EDU: Bdf = Bdf::new(0, 1, 0);

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

fn cfg() -> UnitConfig {
    UnitConfig {
        walk_cache: Some(&NO_CACHE),
        ..UnitConfig::default()
    }
}

#[test]
fn a_block_too_small_for_the_id_registers_is_refused_at_probe() {
    let frames = Arc::new(FakeFrames::new());
    let f = FakeVtd::qemu(Arc::clone(&frames), 48).with_register_size(0x10);
    let refused = MmioError::OutOfRange {
        offset: regs::ECAP,
        width: Width::W64,
        size: 0x10,
    };
    assert_eq!(Features::read(&f), Err(refused));
    let e = VtdUnit::new(&f, Arc::clone(&frames), cfg()).err();
    assert_eq!(e, Some(VtdError::Register(refused)));
    assert_eq!(
        Error::from(VtdError::Register(refused)),
        Error::Device(DeviceError::RegisterAccess(refused))
    );
    assert_eq!(f.stats().root_pointer_sets, 0, "nothing programmed");
    assert_eq!(frames.live(), 0, "nothing allocated");
}

#[test]
fn a_block_smaller_than_the_registers_cap_and_ecap_place_is_refused_at_probe() {
    let needed = Features::from_raw(0x10, QEMU_CAP_48, QEMU_ECAP).register_span();
    let frames = Arc::new(FakeFrames::new());
    let f = FakeVtd::qemu(Arc::clone(&frames), 48).with_register_size(needed - 8);
    // The block's own size bounds it even when the config claims more.
    let config = UnitConfig {
        register_size: 0x10000,
        ..cfg()
    };
    let e = VtdUnit::new(&f, Arc::clone(&frames), config).err();
    assert_eq!(
        e,
        Some(VtdError::RegistersTooSmall {
            needed,
            have: needed - 8
        })
    );
    assert_eq!(
        Error::from(e.unwrap()),
        Error::Device(DeviceError::BadGeometry)
    );
    assert_eq!(f.stats().root_pointer_sets, 0, "nothing programmed");
    assert_eq!(frames.live(), 0, "nothing allocated");
    // Exactly the span is enough.
    let f = FakeVtd::qemu(Arc::clone(&frames), 48).with_register_size(needed);
    VtdUnit::new(&f, Arc::clone(&frames), config).unwrap();
}

#[test]
fn a_refused_access_after_probe_is_a_typed_error_and_changes_nothing() {
    let frames = Arc::new(FakeFrames::new());
    let f = FakeVtd::qemu(Arc::clone(&frames), 48);
    let u = VtdUnit::new(&f, Arc::clone(&frames), cfg()).unwrap();
    let gcmd = VtdError::Register(MmioError::Width {
        offset: regs::GCMD,
        width: Width::W32,
    });
    f.refuse_access(Some(regs::GCMD));
    assert_eq!(u.enable_translation(), Err(gcmd));
    assert_eq!(u.translation_enabled(), Ok(false));
    f.refuse_access(Some(regs::GSTS));
    assert_eq!(
        u.global_status(),
        Err(VtdError::Register(MmioError::Width {
            offset: regs::GSTS,
            width: Width::W32
        }))
    );
    assert_eq!(
        u.translation_enabled(),
        Err(VtdError::Register(MmioError::Width {
            offset: regs::GSTS,
            width: Width::W32
        }))
    );
    f.refuse_access(Some(regs::FECTL));
    assert!(matches!(
        u.enable_fault_interrupt(0xfee0_0000, 0x51),
        Err(VtdError::Register(_))
    ));
    assert!(matches!(
        u.fault_interrupt_pending(),
        Err(VtdError::Register(_))
    ));
    f.refuse_access(Some(regs::FSTS));
    assert!(matches!(u.drain_faults(|_| {}), Err(VtdError::Register(_))));
    // A refused queue tail: the batch is not run and the error says why.
    f.refuse_access(Some(regs::IQT));
    let before = f.stats().status_writes;
    assert_eq!(
        u.invalidate_all(),
        Err(VtdError::Register(MmioError::Width {
            offset: regs::IQT,
            width: Width::W64
        }))
    );
    assert_eq!(f.stats().status_writes, before, "the unit ran nothing");
    assert_eq!(f.fault_interrupts(), [], "the interrupt stayed masked");
    // Once the block takes accesses again, the unit works.
    f.refuse_access(None);
    u.invalidate_all().unwrap();
    assert!(f.stats().status_writes > before);
    u.enable_translation().unwrap();
    assert_eq!(u.translation_enabled(), Ok(true));
    u.block(EDU).unwrap();
    assert_eq!(u.context(EDU), ContextState::NotPresent);
    assert_eq!(u.drain_faults(|_| {}).unwrap().records, 0);
    u.shutdown().unwrap();
    assert_eq!(frames.live(), 0);
}

#[test]
fn a_unit_whose_status_cannot_be_read_keeps_its_tables_when_dropped() {
    let frames = Arc::new(FakeFrames::new());
    let f = FakeVtd::qemu(Arc::clone(&frames), 48);
    let u = VtdUnit::new(&f, Arc::clone(&frames), cfg()).unwrap();
    let live = frames.live();
    assert!(live > 0);
    // Translation might be on: the unit might still walk its tables.
    f.refuse_access(Some(regs::GSTS));
    drop(u);
    assert_eq!(
        frames.live(),
        live,
        "tables leaked, not freed under the unit"
    );
    // Readable status, translation off: freed.
    f.refuse_access(None);
    let frames = Arc::new(FakeFrames::new());
    let f = FakeVtd::qemu(Arc::clone(&frames), 48);
    drop(VtdUnit::new(&f, Arc::clone(&frames), cfg()).unwrap());
    assert_eq!(frames.live(), 0);
    assert_eq!(f.size(), iommu_intel_vtd::fake::DEFAULT_REGISTER_SIZE);
}

#[test]
fn a_small_wait_budget_bounds_a_stalled_wait() {
    let frames = Arc::new(FakeFrames::new());
    let f = FakeVtd::qemu(Arc::clone(&frames), 48);
    let config = UnitConfig {
        wait: iova_core::hw::WaitBudget::polls(3),
        ..cfg()
    };
    assert_eq!(
        UnitConfig::default().wait,
        iova_core::hw::WaitBudget::DEFAULT
    );
    let u = VtdUnit::new(&f, Arc::clone(&frames), config).unwrap();
    f.stall_waits(true);
    assert_eq!(
        u.invalidate_all(),
        Err(VtdError::Timeout(iommu_intel_vtd::Wait::InvalidationWait))
    );
    f.stall_waits(false);
    u.invalidate_all().unwrap();
}

//! Interrupt remapping against the fake unit: refusals, the entry, MSI and
//! RTE layouts checked bit by bit against the specification, delivery
//! through the fake's table walk, source validation, compatibility format,
//! entry cache invalidation (and that the fake really caches), counters,
//! and drop.

#![cfg(feature = "fakes")]

use std::sync::Arc;
use std::vec::Vec;

use iova_core::fakes::FakeFrames;
use iova_core::{FrameAllocator, PhysAddr};

use iommu_intel_vtd::fake::{Delivered, FakeVtd, QEMU_CAP_48, QEMU_ECAP};
use iommu_intel_vtd::intremap::entry::{remappable_msi, remappable_rte};
use iommu_intel_vtd::regs::{self, Mmio};
use iommu_intel_vtd::{
    Bdf, DeliveryMode, DestinationMode, FaultReason, FaultRecord, IrConfig, IrtIndex, Irte,
    IrteError, MsiMessage, SourceValidation, TriggerMode, UnitConfig, VtdError, VtdUnit,
};

const EDU: Bdf = Bdf::new(0, 1, 0);
/// The I/O APIC's source ID on QEMU's q35 (00:1f.7 in the DMAR's device scope).
const IOAPIC: Bdf = Bdf::new(0, 0x1f, 7);
const QI: u64 = 1 << 1;

type Unit<'f> = VtdUnit<&'f FakeVtd, Arc<FakeFrames>>;

struct NoCache;

impl iova_core::CacheMaintenance for NoCache {
    fn is_coherent(&self) -> bool {
        false
    }
    fn clean(&self, _: PhysAddr, _: u64) {}
    fn invalidate(&self, _: PhysAddr, _: u64) {}
    fn complete(&self) {}
}

static CACHE: NoCache = NoCache;

fn fake(ir: bool, eim: bool) -> (Arc<FakeFrames>, FakeVtd) {
    let frames = Arc::new(FakeFrames::new());
    let hw = FakeVtd::qemu(Arc::clone(&frames), 48).with_interrupt_remapping(ir, eim);
    (frames, hw)
}

fn unit<'f>(hw: &'f FakeVtd, frames: &Arc<FakeFrames>) -> Unit<'f> {
    let config = UnitConfig {
        walk_cache: Some(&CACHE),
        ..UnitConfig::default()
    };
    VtdUnit::new(hw, Arc::clone(frames), config).unwrap()
}

fn faults(u: &Unit<'_>) -> Vec<FaultRecord> {
    let mut v = Vec::new();
    u.drain_faults(|r| v.push(r)).unwrap();
    v
}

fn gsts(hw: &FakeVtd) -> u32 {
    hw.read32(regs::GSTS).unwrap()
}

fn requester(rid: Bdf, sq: u8) -> SourceValidation {
    SourceValidation::Requester {
        rid: rid.source_id(),
        ignore_function_bits: sq,
    }
}

fn msi(hw: &FakeVtd, from: Bdf, m: MsiMessage) -> Result<Delivered, FaultReason> {
    hw.deliver_msi(from, m.address, m.data)
}

/// Overwrites the low qword of entry `index` behind the driver's back.
fn poke_low(frames: &FakeFrames, table: PhysAddr, index: u16, lo: u64) {
    let p = frames
        .phys_to_virt(PhysAddr(table.0 + 16 * u64::from(index)))
        .cast::<u64>();
    // SAFETY: the table is a live allocation of `frames` (the interrupt
    // remapping of the test holds it); the entry is 16-byte aligned.
    unsafe { core::sync::atomic::AtomicU64::from_ptr(p) }
        .store(lo, core::sync::atomic::Ordering::SeqCst);
}

#[test]
fn refusals_at_enable_change_nothing() {
    // No ECAP.IR.
    let (frames, hw) = fake(false, false);
    let u = unit(&hw, &frames);
    let live = frames.live();
    let before = hw.stats();
    assert_eq!(
        u.enable_interrupt_remapping(IrConfig::default()).err(),
        Some(VtdError::InterruptRemappingUnsupported)
    );
    assert_eq!(frames.live(), live);
    assert_eq!(hw.stats(), before);
    assert_eq!(hw.read64(regs::IRTA).unwrap(), 0);

    // No queued invalidation: the entry cache cannot be invalidated.
    let frames = Arc::new(FakeFrames::new());
    let hw = FakeVtd::new(Arc::clone(&frames), QEMU_CAP_48, QEMU_ECAP & !QI);
    let u = unit(&hw, &frames);
    assert!(!u.queued_invalidation());
    assert_eq!(
        u.enable_interrupt_remapping(IrConfig::default()).err(),
        Some(VtdError::InterruptRemappingNeedsQueue)
    );
    assert_eq!(hw.read64(regs::IRTA).unwrap(), 0);

    // x2APIC without ECAP.EIM; table sizes that are not 2..=65536 powers of two.
    let (frames, hw) = fake(true, false);
    let u = unit(&hw, &frames);
    let live = frames.live();
    let x2apic = IrConfig {
        x2apic: true,
        ..IrConfig::default()
    };
    assert_eq!(
        u.enable_interrupt_remapping(x2apic).err(),
        Some(VtdError::ExtendedInterruptModeUnsupported)
    );
    for entries in [0, 1, 3, 100, 65535, 65537, 131072, u32::MAX] {
        let c = IrConfig {
            entries,
            ..IrConfig::default()
        };
        assert_eq!(
            u.enable_interrupt_remapping(c).err(),
            Some(VtdError::BadInterruptTableSize(entries))
        );
    }
    // No frames.
    frames.fail_after(0);
    assert_eq!(
        u.enable_interrupt_remapping(IrConfig::default()).err(),
        Some(VtdError::NoMemory)
    );
    // The table but no bitmap: the table is given back.
    frames.fail_after(1);
    assert_eq!(
        u.enable_interrupt_remapping(IrConfig::default()).err(),
        Some(VtdError::NoMemory)
    );
    frames.unlimited();
    assert_eq!(frames.live(), live);
    assert_eq!(frames.bad_frees(), 0);
    assert_eq!(hw.read64(regs::IRTA).unwrap(), 0);
    assert_eq!(gsts(&hw) & (regs::G_IRE | regs::G_SIRTP), 0);
    // None of these left the unit taken.
    assert!(u.enable_interrupt_remapping(IrConfig::default()).is_ok());
}

#[test]
fn enable_points_the_unit_at_the_table_and_invalidates_globally() {
    let (frames, hw) = fake(true, true);
    let u = unit(&hw, &frames);
    let before = u.counters().snapshot();
    let ir = u.enable_interrupt_remapping(IrConfig::default()).unwrap();
    let spent = u.counters().snapshot().since(&before);
    assert_eq!((spent.iec, spent.iec_global, spent.waits), (1, 1, 1));
    assert_eq!(hw.stats().iec_global, 1);
    assert_eq!((ir.entries(), ir.x2apic()), (256, false));
    // 256 entries: S = 7, no EIME.
    assert_eq!(hw.read64(regs::IRTA).unwrap(), ir.table().0 | 7);
    assert_eq!(ir.table().0 % 4096, 0);
    let g = gsts(&hw);
    assert_ne!(g & regs::G_IRE, 0);
    assert_ne!(g & regs::G_SIRTP, 0);
    assert_eq!(g & regs::G_CFI, 0);
    // Only one at a time per unit.
    assert_eq!(
        u.enable_interrupt_remapping(IrConfig::default()).err(),
        Some(VtdError::InterruptRemappingActive)
    );
    drop(ir);

    // The largest table, x2APIC: 1 MiB in one aligned allocation, S = 15, EIME.
    let big = IrConfig {
        entries: 65536,
        x2apic: true,
        ..IrConfig::default()
    };
    let ir = u.enable_interrupt_remapping(big).unwrap();
    assert_eq!(ir.table().0 % (1 << 20), 0);
    assert_eq!(
        hw.read64(regs::IRTA).unwrap(),
        ir.table().0 | regs::IRTA_EIME | 15
    );
    assert!(ir.x2apic());
    drop(ir);
    // The smallest: S = 0.
    let small = IrConfig {
        entries: 2,
        ..IrConfig::default()
    };
    let ir = u.enable_interrupt_remapping(small).unwrap();
    assert_eq!(hw.read64(regs::IRTA).unwrap(), ir.table().0);
}

#[test]
fn entries_run_out_and_come_back() {
    let (frames, hw) = fake(true, false);
    let u = unit(&hw, &frames);
    let ir = u
        .enable_interrupt_remapping(IrConfig {
            entries: 4,
            ..IrConfig::default()
        })
        .unwrap();
    let got: Vec<IrtIndex> = (0..4).map(|_| ir.alloc().unwrap()).collect();
    let mut values: Vec<u16> = got.iter().map(|i| i.get()).collect();
    values.sort();
    assert_eq!(values, [0, 1, 2, 3]);
    assert_eq!(ir.alloc(), Err(VtdError::InterruptTableFull));
    assert_eq!(ir.allocated(), 4);
    ir.free(got[2]).unwrap();
    assert_eq!(ir.alloc(), Ok(got[2]));
    assert_eq!(ir.alloc(), Err(VtdError::InterruptTableFull));
}

#[test]
fn bad_entries_and_indices_are_refused_and_change_nothing() {
    let (frames, hw) = fake(true, false);
    let u = unit(&hw, &frames);
    let ir = u.enable_interrupt_remapping(IrConfig::default()).unwrap();
    let i = ir.alloc().unwrap();
    ir.program(i, &Irte::fixed(1, 0x30, SourceValidation::None))
        .unwrap();
    let entry = ir.read_entry(i).unwrap();
    let before = u.counters().snapshot();
    let fixed = |dst, vector, source| Irte::fixed(dst, vector, source);
    let cases = [
        (
            fixed(0x100, 0x30, SourceValidation::None),
            IrteError::DestinationOutOfRange(0x100),
        ),
        (
            fixed(1, 15, SourceValidation::None),
            IrteError::ReservedVector(15),
        ),
        (
            Irte {
                delivery: DeliveryMode::LowestPriority,
                ..fixed(1, 0, SourceValidation::None)
            },
            IrteError::ReservedVector(0),
        ),
        (
            fixed(1, 0x30, requester(EDU, 4)),
            IrteError::BadSourceQualifier(4),
        ),
        (
            fixed(1, 0x30, SourceValidation::BusRange { first: 5, last: 3 }),
            IrteError::BadBusRange { first: 5, last: 3 },
        ),
    ];
    for (irte, e) in cases {
        assert_eq!(ir.program(i, &irte), Err(VtdError::BadIrte(e)), "{irte:?}");
    }
    assert_eq!(ir.read_entry(i).unwrap(), entry);
    assert_eq!(u.counters().snapshot().since(&before).iec, 0);
    // Vectors are not checked where the delivery mode ignores them.
    let nmi = Irte {
        delivery: DeliveryMode::Nmi,
        ..fixed(1, 0, SourceValidation::None)
    };
    assert_eq!(ir.program(i, &nmi), Ok(()));

    // An index not allocated (never, or freed) and a double free.
    let j = ir.alloc().unwrap();
    ir.free(j).unwrap();
    let before = u.counters().snapshot();
    let good = fixed(1, 0x30, SourceValidation::None);
    assert_eq!(
        ir.program(j, &good),
        Err(VtdError::InterruptIndexNotAllocated(j.get()))
    );
    assert_eq!(
        ir.free(j),
        Err(VtdError::InterruptIndexNotAllocated(j.get()))
    );
    assert_eq!(u.counters().snapshot().since(&before).iec, 0);
    assert_eq!(
        ir.read_entry(j),
        Err(VtdError::InterruptIndexNotAllocated(j.get()))
    );

    // An index of a larger table (another unit's) is beyond this one.
    let (frames2, hw2) = fake(true, false);
    let u2 = unit(&hw2, &frames2);
    let ir2 = u2.enable_interrupt_remapping(IrConfig::default()).unwrap();
    let far = (0..3).map(|_| ir2.alloc().unwrap()).last().unwrap();
    drop(ir);
    let ir = u
        .enable_interrupt_remapping(IrConfig {
            entries: 2,
            ..IrConfig::default()
        })
        .unwrap();
    assert_eq!(far.get(), 2);
    assert_eq!(
        ir.program(far, &good),
        Err(VtdError::InterruptIndexOutOfRange(2))
    );
    assert_eq!(ir.free(far), Err(VtdError::InterruptIndexOutOfRange(2)));
}

#[test]
fn entry_layout_matches_the_specification() {
    // Remapped format: P 0, DM 2, RH 3, TM 4, DLM 7:5, V 23:16, xAPIC DST
    // 47:40; SID 79:64, SQ 81:80, SVT 83:82.
    let e = Irte::fixed(0x12, 0x41, requester(EDU, 3));
    assert_eq!(e.encode(false), [0x0000_1200_0041_0001, 0x0007_0008]);
    // x2APIC: the whole DST field.
    let e = Irte::fixed(0x1234_5678, 0x41, SourceValidation::None);
    assert_eq!(e.encode(true), [0x1234_5678_0041_0001, 0]);
    // Logical, lowest priority (with the redirection hint), level, bus range.
    let e = Irte {
        destination: 0x0f,
        vector: 0xfe,
        delivery: DeliveryMode::LowestPriority,
        trigger: TriggerMode::Level,
        destination_mode: DestinationMode::Logical,
        source: SourceValidation::BusRange { first: 2, last: 5 },
    };
    assert_eq!(e.encode(false), [0x0000_0f00_00fe_003d, 0x0008_0205]);
    for (mode, code) in [
        (DeliveryMode::Fixed, 0),
        (DeliveryMode::LowestPriority, 1),
        (DeliveryMode::Smi, 2),
        (DeliveryMode::Nmi, 4),
        (DeliveryMode::Init, 5),
        (DeliveryMode::ExtInt, 7),
    ] {
        assert_eq!(mode.code(), code);
        assert_eq!(DeliveryMode::from_code(code), Some(mode));
    }
    assert_eq!(DeliveryMode::from_code(3), None);
    assert_eq!(DeliveryMode::from_code(6), None);

    // The driver writes exactly that into the table.
    let (frames, hw) = fake(true, false);
    let u = unit(&hw, &frames);
    let ir = u.enable_interrupt_remapping(IrConfig::default()).unwrap();
    let i = ir.alloc().unwrap();
    ir.program(i, &Irte::fixed(0x12, 0x41, requester(EDU, 3)))
        .unwrap();
    assert_eq!(
        ir.read_entry(i).unwrap(),
        [0x0000_1200_0041_0001, 0x0007_0008]
    );
}

#[test]
fn msi_and_rte_layouts_match_the_specification() {
    // MSI address: 0xFEE in 31:20, handle 14:0 in 19:5, format (remappable)
    // bit 4, SHV bit 3 clear, handle 15 in bit 2.
    assert_eq!(
        remappable_msi(5),
        MsiMessage {
            address: 0xfee0_00b0,
            data: 0
        }
    );
    assert_eq!(remappable_msi(0x8123).address, 0xfee0_2474);
    assert_eq!(remappable_msi(0xffff).address, 0xfeef_fff4);
    // RTE: vector 7:0, handle 15 in bit 11, polarity 13, trigger 15, mask
    // 16, format 48, handle 14:0 in 63:49.
    assert_eq!(
        remappable_rte(0x8123, 0x41, TriggerMode::Level, true, true),
        0x0247_0000_0001_a841
    );
    assert_eq!(
        remappable_rte(1, 0x30, TriggerMode::Edge, false, false),
        0x0003_0000_0000_0030
    );

    let (frames, hw) = fake(true, false);
    let u = unit(&hw, &frames);
    let ir = u.enable_interrupt_remapping(IrConfig::default()).unwrap();
    let i = ir.alloc().unwrap();
    assert_eq!(ir.msi(i), remappable_msi(i.get()));
    assert_eq!(
        ir.ioapic_rte(i, 0x41, TriggerMode::Edge, false, true),
        remappable_rte(i.get(), 0x41, TriggerMode::Edge, false, true)
    );
}

#[test]
fn msi_and_ioapic_interrupts_are_delivered_as_programmed() {
    let (frames, hw) = fake(true, false);
    let u = unit(&hw, &frames);
    let ir = u.enable_interrupt_remapping(IrConfig::default()).unwrap();
    let i = ir.alloc().unwrap();
    ir.program(i, &Irte::fixed(3, 0x41, requester(EDU, 0)))
        .unwrap();
    assert_eq!(
        msi(&hw, EDU, ir.msi(i)),
        Ok(Delivered {
            destination: 3,
            vector: 0x41,
            delivery: DeliveryMode::Fixed,
            trigger: TriggerMode::Edge,
            destination_mode: DestinationMode::Physical,
            index: Some(i.get()),
        })
    );
    let pin = ir.alloc().unwrap();
    let level = Irte {
        trigger: TriggerMode::Level,
        destination_mode: DestinationMode::Logical,
        ..Irte::fixed(0x80, 0x52, requester(IOAPIC, 0))
    };
    ir.program(pin, &level).unwrap();
    let rte = ir.ioapic_rte(pin, 0x52, TriggerMode::Level, true, false);
    let d = hw.deliver_ioapic(IOAPIC, rte).unwrap();
    assert_eq!(
        (
            d.destination,
            d.vector,
            d.trigger,
            d.destination_mode,
            d.index
        ),
        (
            0x80,
            0x52,
            TriggerMode::Level,
            DestinationMode::Logical,
            Some(pin.get())
        )
    );
    // x2APIC destinations go through whole.
    let (frames, hw) = fake(true, true);
    let u = unit(&hw, &frames);
    let ir = u
        .enable_interrupt_remapping(IrConfig {
            x2apic: true,
            ..IrConfig::default()
        })
        .unwrap();
    let i = ir.alloc().unwrap();
    ir.program(i, &Irte::fixed(0x1_0042, 0x99, SourceValidation::None))
        .unwrap();
    let d = msi(&hw, EDU, ir.msi(i)).unwrap();
    assert_eq!((d.destination, d.vector), (0x1_0042, 0x99));
    assert!(faults(&u).is_empty());
}

/// Programs `source` into entry `i` and sends an MSI from each of `pass`
/// (delivered) and `fail` (blocked, fault 0x26 naming the index).
fn check_sources(
    u: &Unit<'_>,
    hw: &FakeVtd,
    ir: &iommu_intel_vtd::InterruptRemapping<'_, &FakeVtd, Arc<FakeFrames>>,
    i: IrtIndex,
    source: SourceValidation,
    pass: &[Bdf],
    fail: &[Bdf],
) {
    ir.program(i, &Irte::fixed(1, 0x40, source)).unwrap();
    for &dev in pass {
        assert_eq!(
            msi(hw, dev, ir.msi(i)).map(|d| d.vector),
            Ok(0x40),
            "{source:?} {dev}"
        );
    }
    for &dev in fail {
        assert_eq!(
            msi(hw, dev, ir.msi(i)),
            Err(FaultReason::InterruptSourceInvalid),
            "{source:?} {dev}"
        );
        let f = faults(u);
        assert_eq!(f.len(), 1, "{source:?} {dev}");
        assert_eq!(f[0].source, dev);
        assert_eq!(f[0].reason, FaultReason::InterruptSourceInvalid);
        assert_eq!(f[0].interrupt_index(), Some(i.get()));
    }
    assert!(faults(u).is_empty());
}

#[test]
fn source_validation_by_requester_qualifier_and_bus_range() {
    let (frames, hw) = fake(true, false);
    let u = unit(&hw, &frames);
    let ir = u.enable_interrupt_remapping(IrConfig::default()).unwrap();
    let i = ir.alloc().unwrap();
    let dev = Bdf::new(1, 2, 4);
    let f = |n| Bdf::new(1, 2, n);
    // SQ 0: the exact requester ID.
    check_sources(
        &u,
        &hw,
        &ir,
        i,
        requester(dev, 0),
        &[dev],
        &[f(5), f(0), Bdf::new(1, 3, 4), Bdf::new(0, 2, 4)],
    );
    // SQ 1: bit 2 ignored.
    check_sources(
        &u,
        &hw,
        &ir,
        i,
        requester(dev, 1),
        &[f(0), f(4)],
        &[f(1), f(6)],
    );
    // SQ 2: bits 2:1 ignored.
    check_sources(
        &u,
        &hw,
        &ir,
        i,
        requester(dev, 2),
        &[f(0), f(2), f(4), f(6)],
        &[f(1), f(7)],
    );
    // SQ 3: every function of the device.
    check_sources(
        &u,
        &hw,
        &ir,
        i,
        requester(dev, 3),
        &(0..8).map(f).collect::<Vec<_>>(),
        &[Bdf::new(1, 3, 0), Bdf::new(1, 1, 7)],
    );
    // A bus range, both ends included.
    check_sources(
        &u,
        &hw,
        &ir,
        i,
        SourceValidation::BusRange { first: 2, last: 4 },
        &[Bdf::new(2, 0, 0), Bdf::new(3, 5, 1), Bdf::new(4, 31, 7)],
        &[Bdf::new(1, 31, 7), Bdf::new(5, 0, 0)],
    );
    // No validation.
    check_sources(
        &u,
        &hw,
        &ir,
        i,
        SourceValidation::None,
        &[EDU, Bdf::new(0xff, 31, 7)],
        &[],
    );
}

#[test]
fn compatibility_format_is_blocked_unless_asked_for() {
    // edu's compatibility-format MSI: APIC ID 3 in address 19:12, vector 0x41.
    let (address, data) = (0xfee0_3000, 0x41);
    let rte = 0x0300_0000_0000_0041u64;
    let (frames, hw) = fake(true, true);
    let u = unit(&hw, &frames);
    let ir = u.enable_interrupt_remapping(IrConfig::default()).unwrap();
    assert!(!ir.compatibility_format());
    assert_eq!(
        hw.deliver_msi(EDU, address, data),
        Err(FaultReason::CompatibilityFormatBlocked)
    );
    let f = faults(&u);
    assert_eq!(f.len(), 1);
    assert_eq!(
        (f[0].source, f[0].reason),
        (EDU, FaultReason::CompatibilityFormatBlocked)
    );
    assert_eq!(
        hw.deliver_ioapic(IOAPIC, rte),
        Err(FaultReason::CompatibilityFormatBlocked)
    );
    assert_eq!(faults(&u).len(), 1);
    drop(ir);

    let ir = u
        .enable_interrupt_remapping(IrConfig {
            allow_compatibility_format: true,
            ..IrConfig::default()
        })
        .unwrap();
    assert!(ir.compatibility_format());
    assert_ne!(gsts(&hw) & regs::G_CFI, 0);
    let passed = Delivered {
        destination: 3,
        vector: 0x41,
        delivery: DeliveryMode::Fixed,
        trigger: TriggerMode::Edge,
        destination_mode: DestinationMode::Physical,
        index: None,
    };
    assert_eq!(hw.deliver_msi(EDU, address, data), Ok(passed));
    assert_eq!(hw.deliver_ioapic(IOAPIC, rte), Ok(passed));
    assert!(faults(&u).is_empty());
    drop(ir);
    // Dropping turned CFI off with IRE.
    assert_eq!(gsts(&hw) & (regs::G_CFI | regs::G_IRE), 0);

    // In x2APIC mode compatibility format stays blocked, CFI or not.
    let ir = u
        .enable_interrupt_remapping(IrConfig {
            allow_compatibility_format: true,
            x2apic: true,
            ..IrConfig::default()
        })
        .unwrap();
    assert_eq!(
        hw.deliver_msi(EDU, address, data),
        Err(FaultReason::CompatibilityFormatBlocked)
    );
    drop(ir);
}

#[test]
fn a_changed_entry_takes_effect_after_program_and_counts_exactly() {
    let (frames, hw) = fake(true, false);
    let u = unit(&hw, &frames);
    let ir = u.enable_interrupt_remapping(IrConfig::default()).unwrap();
    let i = ir.alloc().unwrap();
    let before = u.counters().snapshot();
    ir.program(i, &Irte::fixed(1, 0x41, requester(EDU, 0)))
        .unwrap();
    let spent = u.counters().snapshot().since(&before);
    assert_eq!((spent.iec, spent.iec_global, spent.waits), (1, 0, 1));
    assert_eq!(msi(&hw, EDU, ir.msi(i)).unwrap().vector, 0x41);
    assert_eq!(hw.cached_irtes(), 1);

    // Same source, new vector and destination: one store, one invalidation.
    let before = u.counters().snapshot();
    let iec_before = hw.stats().iec_index;
    ir.program(i, &Irte::fixed(2, 0x42, requester(EDU, 0)))
        .unwrap();
    let spent = u.counters().snapshot().since(&before);
    assert_eq!((spent.iec, spent.iec_global, spent.waits), (1, 0, 1));
    assert_eq!(hw.stats().iec_index, iec_before + 1);
    let d = msi(&hw, EDU, ir.msi(i)).unwrap();
    assert_eq!((d.destination, d.vector), (2, 0x42));

    // Another source: through not present, so two invalidations.
    let other = Bdf::new(0, 2, 0);
    let before = u.counters().snapshot();
    ir.program(i, &Irte::fixed(2, 0x43, requester(other, 0)))
        .unwrap();
    let spent = u.counters().snapshot().since(&before);
    assert_eq!((spent.iec, spent.waits), (2, 2));
    assert_eq!(msi(&hw, other, ir.msi(i)).unwrap().vector, 0x43);
    assert_eq!(
        msi(&hw, EDU, ir.msi(i)),
        Err(FaultReason::InterruptSourceInvalid)
    );
    assert_eq!(faults(&u).len(), 1);

    // invalidate_all: one global; free: one index-selective, then not present.
    let before = u.counters().snapshot();
    ir.invalidate_all().unwrap();
    ir.free(i).unwrap();
    let spent = u.counters().snapshot().since(&before);
    assert_eq!((spent.iec, spent.iec_global, spent.waits), (2, 1, 2));
    assert_eq!(msi(&hw, other, ir.msi(i)), Err(FaultReason::IrteNotPresent));
    let f = faults(&u);
    assert_eq!(f.len(), 1);
    assert_eq!(
        (f[0].reason, f[0].interrupt_index()),
        (FaultReason::IrteNotPresent, Some(i.get()))
    );

    // Drop: one more global invalidation.
    let before = u.counters().snapshot();
    drop(ir);
    let spent = u.counters().snapshot().since(&before);
    assert_eq!((spent.iec, spent.iec_global), (1, 1));
}

#[test]
fn the_fake_caches_entries_until_invalidated() {
    let (frames, hw) = fake(true, false);
    let u = unit(&hw, &frames);
    let ir = u.enable_interrupt_remapping(IrConfig::default()).unwrap();
    let (i, j) = (ir.alloc().unwrap(), ir.alloc().unwrap());
    ir.program(i, &Irte::fixed(1, 0x41, SourceValidation::None))
        .unwrap();
    assert_eq!(msi(&hw, EDU, ir.msi(i)).unwrap().vector, 0x41);
    let reads = hw.stats().irte_reads;
    // Changing the table without an invalidation: the old entry is still used.
    let [lo, _] = Irte::fixed(1, 0x77, SourceValidation::None).encode(false);
    poke_low(&frames, ir.table(), i.get(), lo);
    assert_eq!(msi(&hw, EDU, ir.msi(i)).unwrap().vector, 0x41);
    assert_eq!(hw.stats().irte_reads, reads);
    assert!(hw.stats().irte_cache_hits >= 1);
    // An invalidation of another index leaves it cached.
    ir.program(j, &Irte::fixed(1, 0x50, SourceValidation::None))
        .unwrap();
    assert_eq!(msi(&hw, EDU, ir.msi(i)).unwrap().vector, 0x41);
    // A global one drops it.
    ir.invalidate_all().unwrap();
    assert_eq!(msi(&hw, EDU, ir.msi(i)).unwrap().vector, 0x77);
    assert_eq!(hw.stats().irte_reads, reads + 1);
    // Made not present behind the driver's back: cached as present until invalidated.
    poke_low(&frames, ir.table(), i.get(), 0);
    assert_eq!(msi(&hw, EDU, ir.msi(i)).unwrap().vector, 0x77);
    ir.invalidate_all().unwrap();
    assert_eq!(msi(&hw, EDU, ir.msi(i)), Err(FaultReason::IrteNotPresent));
    assert_eq!(faults(&u).len(), 1);
}

#[test]
fn the_fake_blocks_bad_requests_and_entries() {
    let (frames, hw) = fake(true, false);
    let u = unit(&hw, &frames);
    let ir = u
        .enable_interrupt_remapping(IrConfig {
            entries: 16,
            ..IrConfig::default()
        })
        .unwrap();
    // Beyond the table: fault 0x21 with the index.
    assert_eq!(
        msi(&hw, EDU, remappable_msi(16)),
        Err(FaultReason::InterruptIndexBeyondTable)
    );
    let f = faults(&u);
    assert_eq!(
        (f[0].reason, f[0].interrupt_index()),
        (FaultReason::InterruptIndexBeyondTable, Some(16))
    );
    // A reserved bit of a present entry (bit 12): fault 0x24.
    let i = ir.alloc().unwrap();
    let [lo, _] = Irte::fixed(1, 0x41, SourceValidation::None).encode(false);
    poke_low(&frames, ir.table(), i.get(), lo | 1 << 12);
    ir.invalidate_all().unwrap();
    assert_eq!(msi(&hw, EDU, ir.msi(i)), Err(FaultReason::IrteReserved));
    // Posted format (IM) without posted-interrupt support is reserved too.
    poke_low(&frames, ir.table(), i.get(), lo | 1 << 15);
    ir.invalidate_all().unwrap();
    assert_eq!(
        msi(&hw, Bdf::new(0, 3, 0), ir.msi(i)),
        Err(FaultReason::IrteReserved)
    );
    // An MSI outside the interrupt address range is a reserved request.
    assert_eq!(
        hw.deliver_msi(EDU, 0x1_fee0_0010, 0),
        Err(FaultReason::InterruptRequestReserved)
    );
    let reasons: Vec<FaultReason> = faults(&u).iter().map(|r| r.reason).collect();
    assert!(reasons.contains(&FaultReason::IrteReserved));
    // A subhandle (SHV) adds the data to the handle.
    ir.program(i, &Irte::fixed(1, 0x41, SourceValidation::None))
        .unwrap();
    let base = remappable_msi(0);
    assert_eq!(
        hw.deliver_msi(EDU, base.address | 1 << 3, u32::from(i.get()))
            .map(|d| d.index),
        Ok(Some(i.get()))
    );
}

#[test]
fn drop_turns_remapping_off_and_frees_the_table() {
    let (frames, hw) = fake(true, false);
    let u = unit(&hw, &frames);
    let live = frames.live();
    let ir = u.enable_interrupt_remapping(IrConfig::default()).unwrap();
    assert_eq!(frames.live(), live + 2);
    let i = ir.alloc().unwrap();
    ir.program(i, &Irte::fixed(1, 0x41, SourceValidation::None))
        .unwrap();
    let globals = hw.stats().iec_global;
    drop(ir);
    assert_eq!(gsts(&hw) & regs::G_IRE, 0);
    assert_eq!(hw.stats().iec_global, globals + 1);
    assert_eq!(hw.cached_irtes(), 0);
    assert_eq!(frames.live(), live);
    assert_eq!(frames.bad_frees(), 0);
    // Remapping off: compatibility-format interrupts pass untouched.
    assert_eq!(
        hw.deliver_msi(EDU, 0xfee0_1000, 0x41).map(|d| d.index),
        Ok(None)
    );

    // A unit that does not confirm IRE off keeps (leaks) the table.
    let ir = u.enable_interrupt_remapping(IrConfig::default()).unwrap();
    hw.refuse_access(Some(regs::GCMD));
    drop(ir);
    hw.refuse_access(None);
    assert_ne!(gsts(&hw) & regs::G_IRE, 0);
    assert_eq!(frames.live(), live + 1);
    // The unit is free again; enabling turns the old remapping off first.
    let ir = u.enable_interrupt_remapping(IrConfig::default()).unwrap();
    assert_ne!(gsts(&hw) & regs::G_IRE, 0);
    drop(ir);
    assert_eq!(gsts(&hw) & regs::G_IRE, 0);
}

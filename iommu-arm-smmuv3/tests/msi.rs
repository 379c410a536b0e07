//! MSI windows (`iova_core::msi::MsiWindow`) on SMMUv3 domains, against the
//! fake SMMU: an MSI is a DMA write, so the fake's walk of a write to the
//! doorbell IOVA must reach the doorbell's physical address through a
//! stage-1 domain, a stage-2 domain, and a nested attachment (where the
//! hypervisor's window sits in stage 2 at the IPA the guest's stage-1 MSI
//! mapping points to); reads of a stage-2 doorbell fault; after teardown
//! the write faults and is reported.
#![cfg(feature = "fakes")]

use std::sync::Arc;

use iommu_arm_smmuv3::cmd::op;
use iommu_arm_smmuv3::event::{Stage, code};
use iommu_arm_smmuv3::fake::{DmaFault, FakeSmmu, QEMU_10_VIRT};
use iommu_arm_smmuv3::regs::Mmio;
use iommu_arm_smmuv3::{Config, Event, FaultKind, Smmu};
use iova_core::fakes::{FAKE_PHYS_BASE, FakeFrames};
use iova_core::iova_alloc::{IovaAllocator, IovaAllocatorConfig};
use iova_core::msi::{MSI_IOVA_BASE, MsiWindow};
use iova_core::{FrameAllocator, IommuDomain, IotlbGather, Iova, IovaRange, PhysAddr, Prot};

const K4: u64 = 0x1000;
const SID: u32 = 8;
/// GITS_TRANSLATER of QEMU virt's ITS (outside fake memory: reached by
/// translation only).
const TRANSLATER: PhysAddr = PhysAddr(0x0809_0040);

fn mem() -> Arc<FakeFrames> {
    Arc::new(FakeFrames::new())
}

/// The allocator of a domain's IOVAs (or a guest's IPAs): the low 4 GiB,
/// where Linux's default MSI window lies.
fn low4g() -> IovaAllocator<'static> {
    let aperture = IovaRange::new(Iova(0), 1 << 32).unwrap();
    IovaAllocator::with_capacity(IovaAllocatorConfig::new(aperture, K4), 16, 1).unwrap()
}

fn events<M: Mmio, A: FrameAllocator>(smmu: &Smmu<M, A>) -> Vec<Event> {
    let mut v = Vec::new();
    let r = smmu.drain_events(|e| v.push(e)).unwrap();
    assert!(!r.lost_events());
    v
}

fn read_mem(mem: &FakeFrames, pa: PhysAddr, len: usize) -> Vec<u8> {
    let p = mem.phys_to_virt(pa);
    // SAFETY: a page the test allocated; nothing writes it concurrently.
    unsafe { std::slice::from_raw_parts(p, len).to_vec() }
}

fn syncs(fake: &FakeSmmu) -> usize {
    fake.commands()
        .iter()
        .filter(|c| c.opcode() == op::CMD_SYNC)
        .count()
}

#[test]
fn stage_1_window_routes_the_msi_write_to_the_doorbell() {
    let m = mem();
    let fake = FakeSmmu::new(Arc::clone(&m), QEMU_10_VIRT);
    let smmu = Smmu::new(&fake, Arc::clone(&m), Config::default()).unwrap();
    let d = smmu.s1_domain(Arc::clone(&m), 48).unwrap();
    smmu.attach_s1(SID, &d).unwrap();
    let iovas = low4g();
    let mut w = MsiWindow::<_, 4>::new(&d, &iovas).unwrap();
    let msi = w.map_doorbell(TRANSLATER).unwrap();
    assert_eq!(msi, Iova(MSI_IOVA_BASE.0 + 0x40));
    // The device's MSI write, as the SMMU translates it.
    assert_eq!(fake.translate(SID, msi, true), Ok(TRANSLATER));
    // Stage 1 cannot express write-only: the doorbell is readable too.
    assert_eq!(fake.translate(SID, msi, false), Ok(TRANSLATER));
    // An MSI is an ordinary DMA write: with a doorbell in memory, the
    // EventID lands at the register's offset.
    let bell = m.alloc_zeroed(K4 as usize).unwrap();
    let msi2 = w.map_doorbell(PhysAddr(bell.0 + 0x40)).unwrap();
    assert_eq!(msi2, Iova(MSI_IOVA_BASE.0 + K4 + 0x40));
    fake.dma_write(SID, msi2, &7u32.to_le_bytes()).unwrap();
    assert_eq!(read_mem(&m, PhysAddr(bell.0 + 0x40), 4), 7u32.to_le_bytes());
    assert!(events(&smmu).is_empty());

    fake.clear_commands();
    w.teardown().unwrap();
    assert_eq!(syncs(&fake), 1, "one CMD_SYNC for the whole teardown");
    assert_eq!(
        fake.dma_write(SID, msi, &0u32.to_le_bytes()),
        Err(DmaFault::Terminated(Some(code::F_TRANSLATION)))
    );
    let ev = events(&smmu);
    assert_eq!(ev.len(), 1);
    assert_eq!(
        (ev[0].kind, ev[0].sid, ev[0].addr, ev[0].read, ev[0].stage),
        (
            FaultKind::Translation,
            SID,
            Some(msi.0),
            Some(false),
            Stage::One
        )
    );
}

#[test]
fn stage_2_window_is_write_only() {
    let m = mem();
    let fake = FakeSmmu::new(Arc::clone(&m), QEMU_10_VIRT);
    let smmu = Smmu::new(&fake, Arc::clone(&m), Config::default()).unwrap();
    let d = smmu.s2_domain(Arc::clone(&m), 40).unwrap();
    smmu.attach_s2(SID, &d).unwrap();
    // The guest's IPA space: the hypervisor hands out IPAs from it.
    let ipas = low4g();
    let mut w = MsiWindow::<_, 4>::new(&d, &ipas).unwrap();
    let msi = w.map_doorbell(TRANSLATER).unwrap();
    assert_eq!(msi, Iova(MSI_IOVA_BASE.0 + 0x40));
    assert_eq!(fake.translate(SID, msi, true), Ok(TRANSLATER));
    // Write-only at stage 2 (S2AP = 0b10): a read of the doorbell faults.
    assert_eq!(
        fake.translate(SID, msi, false),
        Err(DmaFault::Terminated(Some(code::F_PERMISSION)))
    );
    let ev = events(&smmu);
    assert_eq!(
        (ev[0].kind, ev[0].stage, ev[0].read, ev[0].ipa),
        (
            FaultKind::Permission,
            Stage::Two,
            Some(true),
            Some(MSI_IOVA_BASE.0)
        )
    );
    let bell = m.alloc_zeroed(K4 as usize).unwrap();
    let msi2 = w.map_doorbell(PhysAddr(bell.0 + 0x40)).unwrap();
    fake.dma_write(SID, msi2, &3u32.to_le_bytes()).unwrap();
    assert_eq!(read_mem(&m, PhysAddr(bell.0 + 0x40), 4), 3u32.to_le_bytes());
    assert!(fake.dma_read(SID, msi2, 4).is_err());
    let _ = events(&smmu);

    fake.clear_commands();
    w.teardown().unwrap();
    assert_eq!(syncs(&fake), 1);
    assert_eq!(
        fake.dma_write(SID, msi, &0u32.to_le_bytes()),
        Err(DmaFault::Terminated(Some(code::F_TRANSLATION)))
    );
    let ev = events(&smmu);
    assert_eq!(
        (ev[0].kind, ev[0].stage, ev[0].ipa),
        (FaultKind::Translation, Stage::Two, Some(MSI_IOVA_BASE.0))
    );
}

/// Nested, stage 1 owned by a guest: the guest maps its MSI IOVA to where it
/// sees its ITS doorbell (an IPA); the hypervisor's window over stage 2 sits
/// at exactly that IPA, so its `map_doorbell` of the real doorbell returns
/// the IPA the guest's mapping points to.
#[test]
fn nested_window_sits_in_stage_2_at_the_guest_doorbell_ipa() {
    let m = mem();
    let fake = FakeSmmu::new(Arc::clone(&m), QEMU_10_VIRT);
    let smmu = Smmu::new(&fake, Arc::clone(&m), Config::default()).unwrap();
    let s2 = smmu.s2_domain(Arc::clone(&m), 44).unwrap();
    // The guest's memory (its CD and stage-1 tables live there): identity.
    let mut g = IotlbGather::new();
    s2.map(
        Iova(FAKE_PHYS_BASE),
        PhysAddr(FAKE_PHYS_BASE),
        256 << 20,
        Prot::RW,
        &mut g,
    )
    .unwrap();
    s2.flush(&mut g).unwrap();
    let s1 = smmu.s1_domain(Arc::clone(&m), 48).unwrap();
    smmu.attach_nested(SID, &s1, &s2).unwrap();

    // The guest: its virtual ITS's GITS_TRANSLATER is at this IPA.
    let guest_translater = PhysAddr(0x0809_0040);
    let guest_iovas = low4g();
    let mut guest = MsiWindow::<_, 1>::new(&s1, &guest_iovas).unwrap();
    let msi = guest.map_doorbell(guest_translater).unwrap();
    assert_eq!(msi, Iova(MSI_IOVA_BASE.0 + 0x40));

    // The hypervisor: the real doorbell (here a page of memory, so the
    // write can be seen) at the guest's doorbell IPA, in stage 2.
    let real = m.alloc_zeroed(K4 as usize).unwrap();
    let ipas = low4g();
    let mut host =
        MsiWindow::<_, 1>::at(&s2, &ipas, Iova(guest_translater.align_down(K4).0), K4).unwrap();
    let ipa = host.map_doorbell(PhysAddr(real.0 + 0x40)).unwrap();
    assert_eq!(
        ipa.0, guest_translater.0,
        "the IPA the guest's MSI mapping points to"
    );

    // IOVA -> IPA (guest stage 1) -> PA (hypervisor stage 2).
    assert_eq!(fake.translate(SID, msi, true), Ok(PhysAddr(real.0 + 0x40)));
    fake.dma_write(SID, msi, &9u32.to_le_bytes()).unwrap();
    assert_eq!(read_mem(&m, PhysAddr(real.0 + 0x40), 4), 9u32.to_le_bytes());
    // Stage 1 grants read, stage 2 does not: the combined access is write-only.
    assert_eq!(
        fake.translate(SID, msi, false),
        Err(DmaFault::Terminated(Some(code::F_PERMISSION)))
    );
    let ev = events(&smmu);
    assert_eq!(
        (ev[0].kind, ev[0].stage, ev[0].addr, ev[0].ipa),
        (
            FaultKind::Permission,
            Stage::Two,
            Some(msi.0),
            Some(guest_translater.0 & !0xfff)
        )
    );

    // The hypervisor takes the doorbell away: the guest's MSI faults at stage 2.
    host.teardown().unwrap();
    assert_eq!(
        fake.dma_write(SID, msi, &0u32.to_le_bytes()),
        Err(DmaFault::Terminated(Some(code::F_TRANSLATION)))
    );
    let ev = events(&smmu);
    assert_eq!(
        (ev[0].kind, ev[0].stage, ev[0].addr, ev[0].ipa),
        (
            FaultKind::Translation,
            Stage::Two,
            Some(msi.0),
            Some(guest_translater.0 & !0xfff)
        )
    );
    guest.teardown().unwrap();
}

/// A window placed where the domain's tables do not reach (a 32-bit IPA
/// space under an allocator that claims more) is refused by the domain at
/// the first doorbell, with nothing mapped.
#[test]
fn a_stage_2_window_beyond_the_ipa_size_is_refused() {
    let m = mem();
    let fake = FakeSmmu::new(Arc::clone(&m), QEMU_10_VIRT);
    let smmu = Smmu::new(&fake, Arc::clone(&m), Config::default()).unwrap();
    let d = smmu.s2_domain(Arc::clone(&m), 32).unwrap();
    let aperture = IovaRange::new(Iova(0), 1 << 40).unwrap();
    let ipas = IovaAllocator::with_capacity(IovaAllocatorConfig::new(aperture, K4), 16, 1).unwrap();
    let mut w = MsiWindow::<_, 1>::at(&d, &ipas, Iova(1 << 33), K4).unwrap();
    assert_eq!(
        w.map_doorbell(TRANSLATER),
        Err(iova_core::MsiError::Map(iova_core::Error::OutOfRange))
    );
    assert!(w.doorbells().is_empty());
}

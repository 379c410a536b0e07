//! Fault injection against the fake SMMUv3: the frame allocator running dry
//! at every allocation the driver makes (queues and stream table at bring-up,
//! level-2 stream tables, context descriptors and CD tables, page tables
//! while mapping), and a CMD_SYNC that never completes reached through a
//! domain's `IommuDomain::flush`, and register accesses the `Mmio` refuses.
//! Each must end in a typed error with nothing changed (no frame held, the
//! stream as it was, no command refused) and work again once the fault is
//! gone.
#![cfg(feature = "fakes")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use iommu_arm_smmuv3::cmd::op;
use iommu_arm_smmuv3::event::code;
use iommu_arm_smmuv3::fake::{DmaFault, FakeSmmu, QEMU_10_VIRT};
use iommu_arm_smmuv3::regs::{Mmio, off};
use iommu_arm_smmuv3::{
    Command, Config, FaultKind, IdRegs, Smmu, SmmuError, Ste, StreamTableFormat,
};
use iova_core::fakes::FakeFrames;
use iova_core::hw::{MmioError, WaitBudget, Width};
use iova_core::{
    DeviceError, Error, FrameAllocator, IommuDomain, IotlbGather, Iova, PhysAddr, Prot,
};

const K4: u64 = 0x1000;
const M2: u64 = 0x20_0000;
const SID: u32 = 8;

type TestSmmu<'f> = Smmu<&'f FakeSmmu, Arc<FakeFrames>>;

fn mem() -> Arc<FakeFrames> {
    Arc::new(FakeFrames::new())
}

fn page(mem: &FakeFrames) -> PhysAddr {
    mem.alloc_zeroed(K4 as usize).unwrap()
}

fn read_mem(mem: &FakeFrames, pa: PhysAddr, len: usize) -> Vec<u8> {
    let p = mem.phys_to_virt(pa);
    // SAFETY: a page the test allocated; nothing writes it concurrently.
    unsafe { std::slice::from_raw_parts(p, len).to_vec() }
}

fn map<D: IommuDomain>(d: &D, iova: u64, pa: PhysAddr, len: u64) {
    let mut g = IotlbGather::new();
    d.map(Iova(iova), pa, len, Prot::RW, &mut g).unwrap();
    d.flush(&mut g).unwrap();
}

/// Unmaps `[iova, iova + len)`, expecting `mapped` bytes there.
fn unmap<D: IommuDomain>(d: &D, iova: u64, len: u64, mapped: u64) {
    let mut g = IotlbGather::new();
    assert_eq!(d.unmap(Iova(iova), len, &mut g), Ok(mapped));
    d.flush(&mut g).unwrap();
}

/// Event kinds drained, asserting none was lost.
fn event_kinds<M: Mmio>(smmu: &Smmu<M, Arc<FakeFrames>>) -> Vec<FaultKind> {
    let mut v = Vec::new();
    let r = smmu.drain_events(|e| v.push(e.kind)).unwrap();
    assert!(!r.lost_events());
    v
}

/// QEMU 10's ID registers with 8 SubstreamID bits.
fn with_substreams() -> IdRegs {
    let mut id = QEMU_10_VIRT;
    id.idr[1] |= 8 << 6;
    id
}

/// Bring-up allocates the stream table (linear, or the level-1 table of a
/// two-level one), then the command queue, then the event queue. Running dry
/// at each gives `NoMemory`, returns whatever was allocated, leaves the SMMU
/// disabled with no queue or table programmed, and the same SMMU comes up
/// once memory is back.
#[test]
fn bring_up_without_memory_returns_everything_and_leaves_the_smmu_off() {
    for (config, format) in [
        (Config::default(), StreamTableFormat::TwoLevel { split: 6 }),
        (
            Config::default().with_sid_bits(8),
            StreamTableFormat::Linear,
        ),
    ] {
        let m = mem();
        let fake = FakeSmmu::new(Arc::clone(&m), QEMU_10_VIRT);
        for allocations_left in 0..3 {
            m.fail_after(allocations_left);
            let r = Smmu::new(&fake, Arc::clone(&m), config);
            assert_eq!(
                r.err(),
                Some(SmmuError::NoMemory),
                "{format:?}, {allocations_left} allocations left"
            );
            assert_eq!(m.live(), 0, "{format:?}: everything returned");
            assert_eq!(m.bad_frees(), 0);
            assert!(!fake.enabled());
            assert_eq!(fake.read32(off::CR0).unwrap(), 0, "queues off");
            assert_eq!(
                fake.read64(off::STRTAB_BASE).unwrap(),
                0,
                "no table programmed"
            );
            assert_eq!(
                fake.read64(off::CMDQ_BASE).unwrap(),
                0,
                "no queue programmed"
            );
            assert!(fake.commands().is_empty());
        }
        // Three allocations are all bring-up needs.
        m.fail_after(3);
        let smmu = Smmu::new(&fake, Arc::clone(&m), config).unwrap();
        assert_eq!(smmu.layout().stream_table, format);
        assert_eq!(m.live(), 3);
        assert!(fake.enabled());
        m.unlimited();
        let p = page(&m);
        smmu.set_bypass(SID).unwrap();
        fake.dma_write(SID, Iova(p.0), b"up").unwrap();
        assert_eq!(read_mem(&m, p, 2), b"up");
        assert_eq!(smmu.last_command_error(), None);
    }
}

/// The first use of a StreamID in a two-level table allocates its level-2
/// table. Without memory, every way of writing an STE fails with `NoMemory`
/// before anything is written: no level-1 descriptor, no command, the stream
/// still unknown to the SMMU (C_BAD_STREAMID), the domain not holding it.
/// With memory back, the same attach works.
#[test]
fn a_level_2_table_that_cannot_be_allocated_leaves_the_stream_denied() {
    let m = mem();
    let fake = FakeSmmu::new(Arc::clone(&m), QEMU_10_VIRT);
    let smmu = Smmu::new(&fake, Arc::clone(&m), Config::default()).unwrap();
    let s1 = smmu.s1_domain(Arc::clone(&m), 48).unwrap();
    let s2 = smmu.s2_domain(Arc::clone(&m), 40).unwrap();
    let p = page(&m);
    map(&s1, 0x5000, p, K4);
    let live = m.live();
    fake.clear_commands();
    m.fail_after(0);
    assert_eq!(smmu.attach_s1(SID, &s1), Err(SmmuError::NoMemory));
    assert_eq!(smmu.attach_s2(SID, &s2), Err(SmmuError::NoMemory));
    assert_eq!(smmu.set_bypass(SID), Err(SmmuError::NoMemory));
    assert_eq!(smmu.set_abort(SID), Err(SmmuError::NoMemory));
    assert_eq!((s1.attached(), s2.attached()), (0, 0));
    assert_eq!(smmu.l2_tables(), 0);
    assert_eq!(m.live(), live, "nothing allocated");
    assert_eq!(smmu.ste(SID).unwrap(), Ste::invalid());
    assert!(fake.commands().is_empty(), "nothing to invalidate");
    assert_eq!(
        fake.dma_write(SID, Iova(0x5000), b"x"),
        Err(DmaFault::Terminated(Some(code::C_BAD_STREAMID))),
        "still no level-2 table for the range"
    );
    assert_eq!(event_kinds(&smmu), [FaultKind::BadStreamId]);

    m.unlimited();
    smmu.attach_s1(SID, &s1).unwrap();
    assert_eq!((smmu.l2_tables(), m.live()), (1, live + 1));
    assert_eq!(s1.attached(), 1);
    fake.dma_write(SID, Iova(0x5008), b"l2").unwrap();
    assert_eq!(read_mem(&m, PhysAddr(p.0 + 8), 2), b"l2");
    assert_eq!(smmu.last_command_error(), None);
}

/// A stage-1 domain allocates its page-table root, then its context
/// descriptor; a stage-2 domain only its root. Running dry at each gives a
/// typed error, returns the root, and gives back the ASID, so the next
/// domain gets the same one.
#[test]
fn a_domain_without_memory_for_its_root_or_cd_returns_both_and_its_id() {
    let m = mem();
    let fake = FakeSmmu::new(Arc::clone(&m), QEMU_10_VIRT);
    let smmu = Smmu::new(&fake, Arc::clone(&m), Config::default()).unwrap();
    let live = m.live();
    m.fail_after(0);
    assert_eq!(
        smmu.s1_domain(Arc::clone(&m), 48).err(),
        Some(SmmuError::Table(Error::NoMemory)),
        "no root"
    );
    assert_eq!(
        smmu.s2_domain(Arc::clone(&m), 40).err(),
        Some(SmmuError::Table(Error::NoMemory)),
        "no root"
    );
    assert_eq!(m.live(), live);
    m.fail_after(1);
    assert_eq!(
        smmu.s1_domain(Arc::clone(&m), 48).err(),
        Some(SmmuError::NoMemory),
        "root, but no CD"
    );
    assert_eq!(m.live(), live, "the root is freed");
    assert_eq!(m.bad_frees(), 0);
    assert_eq!(smmu.last_command_error(), None);

    m.unlimited();
    let s1 = smmu.s1_domain(Arc::clone(&m), 48).unwrap();
    assert_eq!(
        s1.invalidator().asid(),
        1,
        "the failed domains' ASID came back"
    );
    let s2 = smmu.s2_domain(Arc::clone(&m), 40).unwrap();
    assert_eq!(s2.invalidator().vmid(), 1);
    assert_eq!(m.live(), live + 3, "two roots and a CD");
    let p = page(&m);
    map(&s1, 0x7000, p, K4);
    smmu.attach_s1(SID, &s1).unwrap();
    fake.dma_write(SID, Iova(0x7000), b"cd").unwrap();
    assert_eq!(read_mem(&m, p, 2), b"cd");
}

/// The first SubstreamID attach of a stream allocates its CD table (and,
/// when the stream's range has none yet, a level-2 stream table). Running
/// dry at either gives `NoMemory` and changes nothing: the stream keeps its
/// STE (aborting, or unknown), has no CD table, holds no frame, and the
/// domain records no substream. Then the attach works.
#[test]
fn a_cd_table_that_cannot_be_completed_is_not_kept() {
    let m = mem();
    let fake = FakeSmmu::new(Arc::clone(&m), with_substreams());
    let smmu = Smmu::new(&fake, Arc::clone(&m), Config::default()).unwrap();
    let d = smmu.s1_domain(Arc::clone(&m), 48).unwrap();
    let p = page(&m);
    map(&d, 0x5000, p, K4);

    // A stream that aborts (its level-2 table exists): no CD table.
    smmu.set_abort(SID).unwrap();
    let live = m.live();
    fake.clear_commands();
    m.fail_after(0);
    assert_eq!(smmu.attach_s1_ssid(SID, 1, &d), Err(SmmuError::NoMemory));
    assert_eq!(smmu.cd_table(SID), None);
    assert_eq!(smmu.ste(SID).unwrap(), Ste::abort(), "still aborting");
    assert_eq!(d.attached_substreams(), 0);
    assert_eq!(m.live(), live);
    assert!(fake.commands().is_empty());
    assert_eq!(
        fake.dma_write_ssid(SID, Some(1), Iova(0x5000), b"x"),
        Err(DmaFault::Terminated(None))
    );

    // A stream in a range without a level-2 table: the CD table is
    // allocated, the level-2 table is not.
    let far = 0x400;
    assert_eq!(smmu.l2_tables(), 1);
    m.fail_after(1);
    assert_eq!(smmu.attach_s1_ssid(far, 1, &d), Err(SmmuError::NoMemory));
    assert_eq!(smmu.cd_table(far), None, "the CD table is not kept");
    assert_eq!(m.live(), live, "nothing held");
    assert_eq!(m.bad_frees(), 0);
    assert_eq!(smmu.l2_tables(), 1);
    assert_eq!(smmu.ste(far).unwrap(), Ste::invalid());
    assert_eq!(d.attached_substreams(), 0);
    assert_eq!(
        fake.dma_write_ssid(far, Some(1), Iova(0x5000), b"x"),
        Err(DmaFault::Terminated(Some(code::C_BAD_STREAMID)))
    );
    assert_eq!(event_kinds(&smmu), [FaultKind::BadStreamId]);

    m.unlimited();
    for sid in [SID, far] {
        smmu.attach_s1_ssid(sid, 1, &d).unwrap();
        fake.dma_write_ssid(sid, Some(1), Iova(0x5000), &sid.to_le_bytes())
            .unwrap();
        assert_eq!(read_mem(&m, p, 4), sid.to_le_bytes());
    }
    assert_eq!(d.attached_substreams(), 2);
    assert_eq!(m.live(), live + 3, "two CD tables and a level-2 table");

    // The same path refusing a stream in use with a single CD keeps no
    // table either.
    let single = SID + 1;
    smmu.attach_s1(single, &d).unwrap();
    let live = m.live();
    assert_eq!(
        smmu.attach_s1_ssid(single, 1, &d),
        Err(SmmuError::Busy(single))
    );
    assert_eq!((smmu.cd_table(single), m.live()), (None, live));
    assert_eq!(smmu.last_command_error(), None);
}

/// Mapping into an attached stage-1 or stage-2 domain with the tables' frame
/// allocator running dry after each number of the new tables it needs: the map
/// fails with `NoMemory`, nothing was published (nothing to flush), every
/// frame is back, the device still faults at the address, and the map works
/// once memory is back.
#[test]
fn mapping_without_memory_for_tables_maps_nothing_and_keeps_nothing() {
    let m = mem();
    let fake = FakeSmmu::new(Arc::clone(&m), QEMU_10_VIRT);
    let smmu = Smmu::new(&fake, Arc::clone(&m), Config::default()).unwrap();
    let s1 = smmu.s1_domain(Arc::clone(&m), 48).unwrap();
    let s2 = smmu.s2_domain(Arc::clone(&m), 40).unwrap();
    smmu.attach_s1(SID, &s1).unwrap();
    smmu.attach_s2(SID + 1, &s2).unwrap();
    let iova = 0x40_0000_0000;
    // Stage 1, 48 bits: levels 1, 2 and 3 below the level-0 root.
    check_map_oom(&m, &fake, &smmu, &s1, SID, iova, 3);
    // Stage 2, 40 bits: levels 2 and 3 below the concatenated level-1 root.
    check_map_oom(&m, &fake, &smmu, &s2, SID + 1, 0x80_0000_0000, 2);
}

fn check_map_oom<D: IommuDomain>(
    m: &FakeFrames,
    fake: &FakeSmmu,
    smmu: &TestSmmu<'_>,
    d: &D,
    sid: u32,
    iova: u64,
    tables: usize,
) {
    let p = page(m);
    for tables_left in 0..tables {
        let live = m.live();
        fake.clear_commands();
        m.fail_after(tables_left);
        let mut g = IotlbGather::new();
        assert_eq!(
            d.map(Iova(iova), p, K4, Prot::RW, &mut g),
            Err(Error::NoMemory)
        );
        assert!(g.is_empty(), "nothing published");
        assert_eq!(m.live(), live, "{tables_left} tables returned");
        assert_eq!(d.flush(&mut g), Ok(()));
        assert!(fake.commands().is_empty());
        assert_eq!(
            fake.dma_write(sid, Iova(iova), b"x"),
            Err(DmaFault::Terminated(Some(code::F_TRANSLATION)))
        );
        assert_eq!(event_kinds(smmu), [FaultKind::Translation]);
    }
    m.unlimited();
    let live = m.live();
    map(d, iova, p, K4);
    assert_eq!(m.live(), live + tables);
    fake.dma_write(sid, Iova(iova + 4), b"map").unwrap();
    assert_eq!(read_mem(m, PhysAddr(p.0 + 4), 3), b"map");
    unmap(d, iova, K4, K4);
    assert_eq!(smmu.last_command_error(), None);
}

/// A map spanning two level-3 tables with memory for the first only: the
/// page mapped in the first table is taken back and left in the gather for
/// the flush (the SMMU could have walked it), the flush invalidates it, the
/// device sees nothing, and once the domain is emptied and dropped every
/// frame it used is back.
#[test]
fn running_dry_mid_map_unwinds_and_the_flush_covers_the_unwound_page() {
    let m = mem();
    let fake = FakeSmmu::new(Arc::clone(&m), QEMU_10_VIRT);
    let smmu = Smmu::new(&fake, Arc::clone(&m), Config::default()).unwrap();
    let base = m.live();
    let d = smmu.s1_domain(Arc::clone(&m), 48).unwrap();
    smmu.attach_s1(SID, &d).unwrap();
    let (p0, p1) = (page(&m), page(&m));
    // Level 1, level 2 and the first level 3; not the second level 3.
    m.fail_after(3);
    let mut g = IotlbGather::new();
    assert_eq!(
        d.map(Iova(M2 - K4), p0, 2 * K4, Prot::RW, &mut g),
        Err(Error::NoMemory)
    );
    assert!(g.has_unmapped(), "the unwound page is for the flush");
    fake.clear_commands();
    d.flush(&mut g).unwrap();
    assert!(
        fake.commands()
            .iter()
            .any(|c| c.opcode() != iommu_arm_smmuv3::cmd::op::CMD_SYNC),
        "an invalidation before the sync"
    );
    for a in [M2 - K4, M2] {
        assert_eq!(
            fake.dma_write(SID, Iova(a), b"x"),
            Err(DmaFault::Terminated(Some(code::F_TRANSLATION)))
        );
    }
    event_kinds(&smmu);
    m.unlimited();
    let mut g = IotlbGather::new();
    d.map(Iova(M2 - K4), p0, K4, Prot::RW, &mut g).unwrap();
    d.map(Iova(M2), p1, K4, Prot::RW, &mut g).unwrap();
    d.flush(&mut g).unwrap();
    fake.dma_write(SID, Iova(M2 - 2), b"span").unwrap();
    assert_eq!(read_mem(&m, PhysAddr(p0.0 + K4 - 2), 2), b"sp");
    assert_eq!(read_mem(&m, p1, 2), b"an");
    unmap(&d, 0, 1 << 39, 2 * K4);
    smmu.detach_s1(SID, &d).unwrap();
    drop(d);
    // The two data pages and the level-2 stream table stay.
    assert_eq!(m.live(), base + 3, "every table and the CD returned");
    assert_eq!(m.bad_frees(), 0);
    assert_eq!(smmu.last_command_error(), None);
}

/// A CMD_SYNC that never completes, reached through the domain's flush:
/// the wait is bounded and gives `Error::Timeout`; the gather keeps its
/// work (and the emptied level-3 table is not freed, as the SMMU may still
/// walk it), so the flush can be retried; after the SMMU resumes, the retry
/// succeeds, frees the table, the unmapped page faults, and the queue and
/// domain keep working.
#[test]
fn a_flush_whose_sync_never_completes_times_out_and_can_be_retried() {
    let m = mem();
    let fake = FakeSmmu::new(Arc::clone(&m), QEMU_10_VIRT);
    let smmu = Smmu::new(
        &fake,
        Arc::clone(&m),
        Config::default().with_wait(WaitBudget::polls(1000)),
    )
    .unwrap();
    let s1 = smmu.s1_domain(Arc::clone(&m), 48).unwrap();
    let s2 = smmu.s2_domain(Arc::clone(&m), 40).unwrap();
    smmu.attach_s1(SID, &s1).unwrap();
    smmu.attach_s2(SID + 1, &s2).unwrap();
    check_flush_timeout(&m, &fake, &smmu, &s1, SID);
    check_flush_timeout(&m, &fake, &smmu, &s2, SID + 1);
}

fn check_flush_timeout<D: IommuDomain>(
    m: &FakeFrames,
    fake: &FakeSmmu,
    smmu: &TestSmmu<'_>,
    d: &D,
    sid: u32,
) {
    let (a, b, c) = (page(m), page(m), page(m));
    map(d, 0x5000, a, K4);
    map(d, M2, b, K4);
    // The device uses both: the SMMU caches the translations.
    fake.dma_write(sid, Iova(0x5000), b"a").unwrap();
    fake.dma_write(sid, Iova(M2), b"b").unwrap();

    let mut g = IotlbGather::new();
    // Covering the whole level-3 table of M2: the table is emptied.
    assert_eq!(d.unmap(Iova(M2), M2, &mut g), Ok(K4));
    let live = m.live();
    fake.set_stalled(true);
    for _ in 0..2 {
        assert_eq!(d.flush(&mut g), Err(Error::Timeout));
        assert!(g.has_unmapped(), "the gather keeps its work");
        assert!(g.tables_changed());
        assert_eq!(m.live(), live, "the emptied table is not freed yet");
    }
    // Why: until the invalidation completes, the stale translation works.
    fake.dma_write(sid, Iova(M2), b"s").unwrap();
    assert_eq!(read_mem(m, b, 1), b"s");
    fake.set_stalled(false);
    assert_eq!(d.flush(&mut g), Ok(()));
    assert!(g.is_empty());
    assert_eq!(m.live(), live - 1, "the table is freed after the flush");
    assert_eq!(
        fake.dma_write(sid, Iova(M2), b"x"),
        Err(DmaFault::Terminated(Some(code::F_TRANSLATION)))
    );
    assert_eq!(event_kinds(smmu), [FaultKind::Translation]);
    assert_eq!(smmu.last_command_error(), None);

    // The queue and the domain carry on: map, unmap, flush, translations right.
    map(d, M2, c, K4);
    fake.dma_write(sid, Iova(M2 + 1), b"c").unwrap();
    assert_eq!(read_mem(m, PhysAddr(c.0 + 1), 1), b"c");
    assert_eq!(read_mem(m, b, 1), b"s", "the old page is not reached");
    fake.dma_write(sid, Iova(0x5001), b"a").unwrap();
    assert_eq!(read_mem(m, PhysAddr(a.0 + 1), 1), b"a");
    unmap(d, 0x5000, K4, K4);
    assert_eq!(
        fake.dma_read(sid, Iova(0x5000), 1),
        Err(DmaFault::Terminated(Some(code::F_TRANSLATION)))
    );
    unmap(d, M2, K4, K4);
    assert_eq!(event_kinds(smmu), [FaultKind::Translation]);
    smmu.submit(&[]).unwrap();
}

/// The fake's registers through an `Mmio` that refuses every access to one
/// offset while armed, as a bus that faults there would. The refused access
/// does not reach the fake.
struct Refusing<'f> {
    fake: &'f FakeSmmu,
    /// The refused offset; `usize::MAX`: none.
    offset: AtomicUsize,
    refused: AtomicUsize,
}

impl<'f> Refusing<'f> {
    fn new(fake: &'f FakeSmmu) -> Self {
        Self {
            fake,
            offset: AtomicUsize::new(usize::MAX),
            refused: AtomicUsize::new(0),
        }
    }
    fn refuse(&self, offset: usize) {
        self.offset.store(offset, Ordering::Relaxed);
    }
    fn allow(&self) {
        self.offset.store(usize::MAX, Ordering::Relaxed);
    }
    /// Accesses refused so far.
    fn refused(&self) -> usize {
        self.refused.load(Ordering::Relaxed)
    }
    fn check(&self, offset: usize, width: Width) -> Result<(), MmioError> {
        if offset == self.offset.load(Ordering::Relaxed) {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(MmioError::Width { offset, width });
        }
        Ok(())
    }
}

impl Mmio for Refusing<'_> {
    fn size(&self) -> usize {
        self.fake.size()
    }
    fn read32(&self, offset: usize) -> Result<u32, MmioError> {
        self.check(offset, Width::W32)?;
        self.fake.read32(offset)
    }
    fn write32(&self, offset: usize, value: u32) -> Result<(), MmioError> {
        self.check(offset, Width::W32)?;
        self.fake.write32(offset, value)
    }
    fn read64(&self, offset: usize) -> Result<u64, MmioError> {
        self.check(offset, Width::W64)?;
        self.fake.read64(offset)
    }
    fn write64(&self, offset: usize, value: u64) -> Result<(), MmioError> {
        self.check(offset, Width::W64)?;
        self.fake.write64(offset, value)
    }
}

fn refused(offset: usize, width: Width) -> SmmuError {
    SmmuError::Register(MmioError::Width { offset, width })
}

/// Every register bring-up touches, refused in turn: `Smmu::new` fails with
/// `SmmuError::Register` naming that access, returns every frame, leaves
/// translation off, and the same SMMU comes up once the access works. The
/// refusal ends any wait at once (one refused access, no polling of it).
#[test]
fn a_refused_register_access_at_bring_up_is_typed_and_returns_everything() {
    let m = mem();
    let fake = FakeSmmu::new(Arc::clone(&m), QEMU_10_VIRT);
    let regs = Refusing::new(&fake);
    let w32 = [
        off::IDR0,
        off::IDR5,
        off::AIDR,
        off::GBPA,
        off::CR0,
        off::CR0ACK,
        off::IRQ_CTRL,
        off::IRQ_CTRLACK,
        off::CR1,
        off::CR2,
        off::STRTAB_BASE_CFG,
        off::CMDQ_PROD,
        off::CMDQ_CONS,
        off::GERROR,
        off::GERRORN,
        off::EVENTQ_PROD,
        off::EVENTQ_CONS,
    ];
    let w64 = [off::STRTAB_BASE, off::CMDQ_BASE, off::EVENTQ_BASE];
    let cases = w32
        .iter()
        .map(|&o| (o, Width::W32))
        .chain(w64.iter().map(|&o| (o, Width::W64)));
    for (offset, width) in cases {
        regs.refuse(offset);
        let before = regs.refused();
        let r = Smmu::new(&regs, Arc::clone(&m), Config::default());
        assert_eq!(r.err(), Some(refused(offset, width)), "{offset:#x}");
        assert_eq!(regs.refused() - before, 1, "{offset:#x}: not polled");
        assert_eq!(m.live(), 0, "{offset:#x}: every frame returned");
        assert!(!fake.enabled(), "{offset:#x}");
        regs.allow();
    }
    let smmu = Smmu::new(&regs, Arc::clone(&m), Config::default()).unwrap();
    assert!(fake.enabled());
    let p = page(&m);
    smmu.set_bypass(SID).unwrap();
    fake.dma_write(SID, Iova(p.0), b"up").unwrap();
    assert_eq!(read_mem(&m, p, 2), b"up");
}

/// Refused accesses once the driver runs, with the default (10 M poll) wait:
/// each operation fails at once with the typed error (the core's
/// `DeviceError::RegisterAccess` through `IommuDomain`), the driver keeps
/// its state, and the same operation works once the access does.
#[test]
fn a_refused_register_access_in_operation_is_typed_at_once_and_recoverable() {
    let m = mem();
    let fake = FakeSmmu::new(Arc::clone(&m), QEMU_10_VIRT);
    let regs = Refusing::new(&fake);
    let smmu = Smmu::new(&regs, Arc::clone(&m), Config::default()).unwrap();
    let d = smmu.s1_domain(Arc::clone(&m), 48).unwrap();
    smmu.attach_s1(SID, &d).unwrap();

    // A submission whose completion cannot be read.
    fake.clear_commands();
    regs.refuse(off::CMDQ_CONS);
    assert_eq!(
        smmu.submit(&[Command::cfgi_ste(SID, true)]),
        Err(refused(off::CMDQ_CONS, Width::W32))
    );
    assert_eq!(regs.refused(), 1, "the wait ended at the refusal");
    regs.allow();
    smmu.submit(&[Command::cfgi_cd_all(SID)]).unwrap();
    let ops: Vec<u8> = fake.commands().iter().map(Command::opcode).collect();
    assert_eq!(
        ops,
        [op::CFGI_STE, op::CMD_SYNC, op::CFGI_CD_ALL, op::CMD_SYNC],
        "the queue carried on, every command once"
    );

    // A flush whose commands cannot be published: the gather keeps its work.
    let p = page(&m);
    map(&d, 0x5000, p, K4);
    fake.dma_write(SID, Iova(0x5000), b"a").unwrap();
    let mut g = IotlbGather::new();
    assert_eq!(d.unmap(Iova(0x5000), K4, &mut g), Ok(K4));
    regs.refuse(off::CMDQ_PROD);
    let e = Error::Device(DeviceError::RegisterAccess(MmioError::Width {
        offset: off::CMDQ_PROD,
        width: Width::W32,
    }));
    assert_eq!(d.flush(&mut g), Err(e));
    assert!(g.has_unmapped(), "the gather keeps its work");
    regs.allow();
    assert_eq!(d.flush(&mut g), Ok(()));
    assert!(g.is_empty());
    assert_eq!(
        fake.dma_write(SID, Iova(0x5000), b"x"),
        Err(DmaFault::Terminated(Some(code::F_TRANSLATION)))
    );

    // A drain that cannot read the producer index hands over nothing.
    assert!(fake.dma_read(SID, Iova(0x6000), 4).is_err());
    regs.refuse(off::EVENTQ_PROD);
    let mut seen = Vec::new();
    assert_eq!(
        smmu.drain_events(|e| seen.push(e.kind)),
        Err(refused(off::EVENTQ_PROD, Width::W32))
    );
    assert!(seen.is_empty());
    regs.allow();
    assert_eq!(
        event_kinds(&smmu),
        [FaultKind::Translation, FaultKind::Translation]
    );

    // The interrupt and error registers.
    regs.refuse(off::IRQ_CTRLACK);
    assert_eq!(
        smmu.set_interrupts(true, true),
        Err(refused(off::IRQ_CTRLACK, Width::W32))
    );
    regs.refuse(off::GERRORN);
    assert_eq!(smmu.global_errors(), Err(refused(off::GERRORN, Width::W32)));
    regs.allow();
    smmu.set_interrupts(false, false).unwrap();
    assert_eq!(smmu.global_errors(), Ok(0));
    assert_eq!(smmu.last_command_error(), None);
}

/// A drain whose consumer-index write is refused has handed its records over
/// (and counted them); the next drain hands over nothing twice and publishes
/// the consumer index, so the SMMU sees the slots free even when no new
/// event arrived.
#[test]
fn a_refused_consumer_index_write_is_published_by_the_next_drain() {
    let m = mem();
    let fake = FakeSmmu::new(Arc::clone(&m), QEMU_10_VIRT);
    let regs = Refusing::new(&fake);
    let smmu = Smmu::new(&regs, Arc::clone(&m), Config::default()).unwrap();
    for i in 0..3u64 {
        assert_eq!(
            fake.dma_write(SID, Iova(0x1000 * i), b"x"),
            Err(DmaFault::Terminated(Some(code::C_BAD_STREAMID)))
        );
    }
    regs.refuse(off::EVENTQ_CONS);
    let mut n = 0;
    assert_eq!(
        smmu.drain_events(|_| n += 1),
        Err(refused(off::EVENTQ_CONS, Width::W32))
    );
    assert_eq!(n, 3, "the records were handed over before the refusal");
    assert_eq!(smmu.counters().events, 3);
    assert_eq!(fake.read32(off::EVENTQ_CONS).unwrap(), 0, "not published");
    regs.allow();
    assert_eq!(event_kinds(&smmu), [], "nothing handed over twice");
    assert_eq!(
        fake.read32(off::EVENTQ_CONS).unwrap(),
        3,
        "the slots are free for the SMMU"
    );
    assert_eq!(smmu.counters().events, 3);
}

/// A driver dropped while CR0 cannot be written: no panic, translation stays
/// on, and the queues and tables the SMMU may still read are kept, not freed
/// under it.
#[test]
fn a_drop_that_cannot_disable_the_smmu_keeps_its_memory() {
    let m = mem();
    let fake = FakeSmmu::new(Arc::clone(&m), QEMU_10_VIRT);
    let regs = Refusing::new(&fake);
    let smmu = Smmu::new(&regs, Arc::clone(&m), Config::default()).unwrap();
    let live = m.live();
    assert!(live > 0);
    regs.refuse(off::CR0);
    drop(smmu);
    assert_eq!(regs.refused(), 1);
    assert!(fake.enabled());
    assert_eq!(m.live(), live, "queues and stream table kept");
}

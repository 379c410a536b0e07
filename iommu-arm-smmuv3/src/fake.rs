//! A fake SMMUv3 behind [`Mmio`], for host tests: ours and users'.
//!
//! It behaves like the hardware as far as a driver can tell, and is stricter
//! than QEMU's model where the architecture is:
//!
//! - a register frame of [`off::FRAME_SIZE`] bytes behind
//!   [`iova_core::hw::Mmio`]: an access past it or misaligned is refused as
//!   [`check_access`] says and changes nothing; registers at their widths (a
//!   64-bit read of a 32-bit register reads 0, as on QEMU, and is counted in
//!   [`FakeSmmu::bad_accesses`]); CR0ACK and GBPA.UPDATE follow writes at
//!   once;
//! - the command queue is consumed from memory when CMDQ_PROD is written
//!   (as QEMU does). Unknown opcodes, and commands for a stage the ID
//!   registers do not offer, stop the queue with CMDQ_CONS.ERR = ILL and
//!   GERROR.CMDQ_ERR until the error is acknowledged through GERRORN;
//! - it caches STEs (until CFGI_STE / CFGI_STE_RANGE / CFGI_ALL), CDs (until
//!   CFGI_CD / CFGI_CD_ALL only: a CFGI_STE does not drop them), leaf TLB
//!   entries tagged by VMID and ASID (until a TLBI that covers them), and
//!   walk-cache entries (table pointers, dropped only by TLBIs with Leaf = 0
//!   or by ASID/VMID/all). TLBI_S2_IPA leaves combined stage-1+2 entries
//!   alone, as the architecture allows;
//! - translations walk STE -> CD -> stage-1 tables and/or stage-2 tables in
//!   fake memory ([`FakeFrames`]), check AF and permissions (a nested access
//!   that stage 1 allows and stage 2 denies is a stage-2 fault, with its IPA,
//!   also when it hits a combined TLB entry), and write event
//!   records to the event queue (overflow toggles EVENTQ_PROD.OVFLG, or with
//!   [`FakeSmmu::set_qemu_event_abort`] raises GERROR.EVENTQ_ABT_ERR as QEMU
//!   does);
//! - devices DMA with [`FakeSmmu::dma_read`] / [`FakeSmmu::dma_write`]; an
//!   MSI is one of those writes (to the doorbell's IOVA), translated like
//!   any other: [`FakeSmmu::translate`] with `write` shows where it lands;
//! - [`FakeSmmu::set_non_coherent`] makes it a non-coherent SMMU: it sees
//!   only what the CPU cleaned, and its event records reach the CPU only
//!   when invalidated (its [`iova_core::CacheMaintenance`] implementation is
//!   the CPU's cache).
//!
//! Both stages walk 4, 16 and 64 KiB granules (as IDR5 offers); two-level
//! CD tables, stalls, ATS and PRI are not modelled.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::vec::Vec;

use iova_core::fakes::{FAKE_PHYS_BASE, FakeFrames};
use iova_core::hw::{MmioError, Width, check_access};
use iova_core::{FrameAllocator, Iova, PhysAddr};

use crate::cmd::{Command, op};
use crate::event::{Event, FaultClass, Stage, code};
use crate::features::IdRegs;
use crate::regs::{Mmio, cr0, gbpa, gerror, idr0, off, queue};
use crate::ste::{self, Ste};

/// ID registers of QEMU 10.0 `-M virt,iommu=smmuv3` (stage 1 + 2, nested).
pub const QEMU_10_VIRT: IdRegs = IdRegs {
    idr: [0x0D44_101B, 0x0273_0010, 0, 0x1414, 0, 0x74],
    aidr: 1,
};
/// ID registers of QEMU 10.0 `-M virt-9.1,iommu=smmuv3` (stage 1 only).
pub const QEMU_10_VIRT_9_1: IdRegs = IdRegs {
    idr: [0x0D44_101A, 0x0273_0010, 0, 0x1404, 0, 0x74],
    aidr: 1,
};
/// ID registers of QEMU 7.2 (stage 1 only, 8-bit VMIDs).
pub const QEMU_7_2: IdRegs = IdRegs {
    idr: [0x0D40_101A, 0x0273_0010, 0, 0x1404, 0, 0x74],
    aidr: 1,
};

/// Why a fake device access failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaFault {
    /// The SMMU terminated the transaction; `event` is the record it wrote
    /// (or would have written: see [`FakeSmmu::events_written`]), `None` for
    /// aborts that record nothing (STE Config = abort, GBPA abort).
    Terminated(Option<u8>),
    /// The translated address is outside fake memory.
    BusError(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Tag {
    /// Stage-1 (or combined nested) entry.
    S1 { vmid: u16, asid: u16 },
    /// Stage-2-only entry.
    S2 { vmid: u16 },
}

#[derive(Clone, Copy, Debug)]
struct TlbEntry {
    tag: Tag,
    base: u64,
    size: u64,
    pa: u64,
    read: bool,
    write: bool,
    /// For a combined stage-1+2 entry: its stage-2 half, so that an access
    /// stage 1 allows and stage 2 denies is reported as a stage-2 fault.
    s2: Option<S2Half>,
}

/// The stage-2 half of a combined (nested) TLB entry.
#[derive(Clone, Copy, Debug)]
struct S2Half {
    /// The IPA of the entry's page.
    ipa: u64,
    /// Stage 1's permissions (the entry's own are both stages' together).
    s1_read: bool,
    s1_write: bool,
    /// STE.S2R: whether stage-2 faults are recorded.
    record: bool,
}

/// A cached table pointer: the table at `level` that covers `base..base+span`.
#[derive(Clone, Copy, Debug)]
struct WalkEntry {
    tag: Tag,
    level: u32,
    base: u64,
    span: u64,
    table: u64,
}

#[derive(Default)]
struct Regs {
    cr0: u32,
    cr1: u32,
    cr2: u32,
    gbpa: u32,
    irq_ctrl: u32,
    gerror: u32,
    gerrorn: u32,
    strtab_base: u64,
    strtab_cfg: u32,
    cmdq_base: u64,
    cmdq_prod: u32,
    cmdq_cons: u32,
    evtq_base: u64,
    evtq_prod: u32,
    evtq_cons: u32,
    /// GERROR and event-queue MSI configuration (address, data, attributes).
    msi_cfg: [(u64, u32, u32); 2],
}

struct State {
    id: IdRegs,
    r: Regs,
    ste_cache: BTreeMap<u32, Ste>,
    /// Cached CDs by (StreamID, CD index).
    cd_cache: BTreeMap<(u32, u32), [u64; 8]>,
    /// SubstreamID of the transaction being translated (for event records).
    cur_ssid: Option<u32>,
    tlb: Vec<TlbEntry>,
    walk: Vec<WalkEntry>,
    commands: Vec<Command>,
    forced_errors: BTreeSet<u8>,
    stalled: bool,
    qemu_event_abort: bool,
    /// Non-coherent mode: memory as the SMMU sees it (what the CPU cleaned,
    /// what the SMMU wrote), by doubleword; absent words read as zero.
    view: Option<BTreeMap<u64, u64>>,
    bad_accesses: usize,
    /// Interrupt pulses: event queue, global error.
    irqs: (usize, usize),
    reads: usize,
    writes: usize,
    events_written: usize,
    events_lost: usize,
    tlb_hits: usize,
    walks: usize,
}

/// The fake SMMUv3; see the [module docs](self).
pub struct FakeSmmu {
    mem: Arc<FakeFrames>,
    mem_bytes: u64,
    s: Mutex<State>,
}

/// Reads a field of `width` bits at `shift`.
fn bits(v: u64, shift: u32, width: u32) -> u64 {
    (v >> shift) & ((1 << width) - 1)
}

/// What the walk concluded.
struct Walked {
    pa: u64,
    base: u64,
    size: u64,
    read: bool,
    write: bool,
}

struct Fault {
    code: u8,
    addr: u64,
    ipa: u64,
    stage: Stage,
    class: FaultClass,
    record: bool,
}

impl Fault {
    fn cfg(code: u8) -> Self {
        Self {
            code,
            addr: 0,
            ipa: 0,
            stage: Stage::One,
            class: FaultClass::Input,
            record: true,
        }
    }
}

/// A decoded stage-2 configuration.
#[derive(Clone, Copy)]
struct S2 {
    vmid: u16,
    ia_bits: u32,
    gshift: u32,
    start: u32,
    ttb: u64,
    record: bool,
    oa_bits: u32,
}

impl FakeSmmu {
    /// A fake SMMU with ID registers `id`, whose tables, queues and DMA
    /// targets are in `mem` (which must be [`FakeFrames::new`]'s default
    /// 256 MiB, or larger).
    pub fn new(mem: Arc<FakeFrames>, id: IdRegs) -> Self {
        Self::with_memory(mem, 256 << 20, id)
    }

    /// As [`new`](Self::new), for a `FakeFrames::with_capacity(mem_bytes)`.
    pub fn with_memory(mem: Arc<FakeFrames>, mem_bytes: u64, id: IdRegs) -> Self {
        Self {
            mem,
            mem_bytes,
            s: Mutex::new(State {
                id,
                r: Regs {
                    gbpa: 0x1000,
                    ..Regs::default()
                },
                ste_cache: BTreeMap::new(),
                cd_cache: BTreeMap::new(),
                cur_ssid: None,
                tlb: Vec::new(),
                walk: Vec::new(),
                commands: Vec::new(),
                forced_errors: BTreeSet::new(),
                stalled: false,
                qemu_event_abort: false,
                view: None,
                bad_accesses: 0,
                irqs: (0, 0),
                reads: 0,
                writes: 0,
                events_written: 0,
                events_lost: 0,
                tlb_hits: 0,
                walks: 0,
            }),
        }
    }

    /// Every command consumed so far (including refused ones).
    pub fn commands(&self) -> Vec<Command> {
        self.s.lock().unwrap().commands.clone()
    }

    /// Forgets the command log.
    pub fn clear_commands(&self) {
        self.s.lock().unwrap().commands.clear();
    }

    /// Commands with `opcode` are refused (CERROR_ILL) from now on.
    pub fn refuse_opcode(&self, opcode: u8) {
        self.s.lock().unwrap().forced_errors.insert(opcode);
    }

    /// Stops (or resumes) consuming commands and acknowledging CR0 writes.
    pub fn set_stalled(&self, stalled: bool) {
        let mut s = self.s.lock().unwrap();
        s.stalled = stalled;
        if !stalled {
            self.consume(&mut s);
        }
    }

    /// On a full event queue, raise GERROR.EVENTQ_ABT_ERR and drop the record
    /// (QEMU's behaviour) instead of toggling EVENTQ_PROD.OVFLG.
    pub fn set_qemu_event_abort(&self, on: bool) {
        self.s.lock().unwrap().qemu_event_abort = on;
    }

    /// Makes the SMMU non-coherent: from now on it sees only what the CPU
    /// cleaned (through this fake's [`iova_core::CacheMaintenance`] implementation,
    /// which tests hand to [`crate::Smmu::with_cache`]), and the CPU sees its
    /// event records only after invalidating them. Call before bring-up.
    pub fn set_non_coherent(&self) {
        let mut s = self.s.lock().unwrap();
        s.view.get_or_insert_with(BTreeMap::new);
        s.id.idr[0] &= !idr0::COHACC;
    }

    /// Toggles GERROR `bits` that are not already pending (as the SMMU does
    /// when it detects those conditions).
    pub fn raise_gerror(&self, bits: u32) {
        let mut s = self.s.lock().unwrap();
        raise_gerror(&mut s, bits);
    }

    /// Register accesses inside the frame at a width the register does not
    /// have, or where no register is (read as 0, writes ignored). Accesses
    /// refused with an [`MmioError`] are not counted: they were not made.
    pub fn bad_accesses(&self) -> usize {
        self.s.lock().unwrap().bad_accesses
    }

    /// Interrupt pulses so far: (event queue, global error). Like QEMU, the
    /// event interrupt pulses for each record written while
    /// IRQ_CTRL.EVENTQ_IRQEN is set, the global-error one for each GERROR
    /// bit raised while GERROR_IRQEN is set.
    pub fn interrupts(&self) -> (usize, usize) {
        self.s.lock().unwrap().irqs
    }

    /// Register reads and writes so far (any width).
    pub fn register_accesses(&self) -> (usize, usize) {
        let s = self.s.lock().unwrap();
        (s.reads, s.writes)
    }

    /// Event records written to the queue.
    pub fn events_written(&self) -> usize {
        self.s.lock().unwrap().events_written
    }

    /// Event records dropped because the queue was full.
    pub fn events_lost(&self) -> usize {
        self.s.lock().unwrap().events_lost
    }

    /// Translations answered from the TLB.
    pub fn tlb_hits(&self) -> usize {
        self.s.lock().unwrap().tlb_hits
    }

    /// Translations that walked the tables.
    pub fn walks(&self) -> usize {
        self.s.lock().unwrap().walks
    }

    /// Cached TLB entries.
    pub fn tlb_entries(&self) -> usize {
        self.s.lock().unwrap().tlb.len()
    }

    /// Cached STEs.
    pub fn cached_stes(&self) -> usize {
        self.s.lock().unwrap().ste_cache.len()
    }

    /// Cached CDs.
    pub fn cached_cds(&self) -> usize {
        self.s.lock().unwrap().cd_cache.len()
    }

    /// Whether SMMUEN is set.
    pub fn enabled(&self) -> bool {
        self.s.lock().unwrap().r.cr0 & cr0::SMMUEN != 0
    }

    /// A device on stream `sid` reads `len` bytes at `iova`.
    pub fn dma_read(&self, sid: u32, iova: Iova, len: usize) -> Result<Vec<u8>, DmaFault> {
        self.dma_read_ssid(sid, None, iova, len)
    }

    /// A device on stream `sid` writes `data` at `iova`.
    pub fn dma_write(&self, sid: u32, iova: Iova, data: &[u8]) -> Result<(), DmaFault> {
        self.dma_write_ssid(sid, None, iova, data)
    }

    /// As [`dma_read`](Self::dma_read), with a SubstreamID (PASID).
    pub fn dma_read_ssid(
        &self,
        sid: u32,
        ssid: Option<u32>,
        iova: Iova,
        len: usize,
    ) -> Result<Vec<u8>, DmaFault> {
        let mut out = vec![0; len];
        self.dma(sid, ssid, iova.0, &mut out, false)?;
        Ok(out)
    }

    /// As [`dma_write`](Self::dma_write), with a SubstreamID (PASID).
    pub fn dma_write_ssid(
        &self,
        sid: u32,
        ssid: Option<u32>,
        iova: Iova,
        data: &[u8],
    ) -> Result<(), DmaFault> {
        let mut buf = data.to_vec();
        self.dma(sid, ssid, iova.0, &mut buf, true)
    }

    /// The physical address `iova` reaches on stream `sid` for a read or a
    /// write (recording events as a real access would).
    pub fn translate(&self, sid: u32, iova: Iova, write: bool) -> Result<PhysAddr, DmaFault> {
        let mut s = self.s.lock().unwrap();
        s.cur_ssid = None;
        self.translate_locked(&mut s, sid, iova.0, write)
            .map(PhysAddr)
    }

    fn dma(
        &self,
        sid: u32,
        ssid: Option<u32>,
        iova: u64,
        buf: &mut [u8],
        write: bool,
    ) -> Result<(), DmaFault> {
        let mut s = self.s.lock().unwrap();
        s.cur_ssid = ssid;
        let mut done = 0;
        while done < buf.len() {
            let a = iova + done as u64;
            let n = ((0x1000 - (a & 0xfff)) as usize).min(buf.len() - done);
            let pa = self.translate_locked(&mut s, sid, a, write)?;
            if !self.in_mem(pa, n as u64) {
                return Err(DmaFault::BusError(pa));
            }
            let p = self.mem.phys_to_virt(PhysAddr(pa));
            // SAFETY: bounds checked against fake memory; tests own the data pages.
            unsafe {
                if write {
                    core::ptr::copy_nonoverlapping(buf[done..].as_ptr(), p, n);
                } else {
                    core::ptr::copy_nonoverlapping(p, buf[done..].as_mut_ptr(), n);
                }
            }
            done += n;
        }
        Ok(())
    }

    fn in_mem(&self, pa: u64, len: u64) -> bool {
        pa >= FAKE_PHYS_BASE
            && pa
                .checked_add(len)
                .is_some_and(|e| e <= FAKE_PHYS_BASE + self.mem_bytes)
    }

    /// What the SMMU reads at `pa`: memory, or for a non-coherent SMMU
    /// what was last cleaned there (zero if never).
    fn smmu_read(&self, s: &State, pa: u64) -> Option<u64> {
        match &s.view {
            Some(view) if self.in_mem(pa, 8) && pa % 8 == 0 => {
                Some(view.get(&pa).copied().unwrap_or(0))
            }
            _ => self.cpu_read_u64(pa),
        }
    }

    /// The SMMU writes `v` at `pa` (for a non-coherent SMMU, only the CPU's
    /// invalidate makes it visible to the CPU).
    fn smmu_write(&self, s: &mut State, pa: u64, v: u64) -> bool {
        if !self.in_mem(pa, 8) || pa % 8 != 0 {
            return false;
        }
        match &mut s.view {
            Some(view) => {
                view.insert(pa, v);
                true
            }
            None => self.cpu_write_u64(pa, v),
        }
    }

    fn cpu_read_u64(&self, pa: u64) -> Option<u64> {
        if pa % 8 != 0 || !self.in_mem(pa, 8) {
            return None;
        }
        let p = self.mem.phys_to_virt(PhysAddr(pa)).cast::<u64>();
        // SAFETY: in fake memory, aligned; racing CPU writes are 64-bit too.
        Some(unsafe { p.read_volatile() })
    }

    fn cpu_write_u64(&self, pa: u64, v: u64) -> bool {
        if pa % 8 != 0 || !self.in_mem(pa, 8) {
            return false;
        }
        let p = self.mem.phys_to_virt(PhysAddr(pa)).cast::<u64>();
        // SAFETY: as in `cpu_read_u64`.
        unsafe { p.write_volatile(v) };
        true
    }

    // ---- command queue ----

    fn consume(&self, s: &mut State) {
        if s.stalled
            || s.r.cr0 & cr0::CMDQEN == 0
            || (s.r.gerror ^ s.r.gerrorn) & gerror::CMDQ_ERR != 0
        {
            return;
        }
        let log2 = (s.r.cmdq_base & queue::BASE_LOG2SIZE_MASK) as u32;
        let mask = (2u32 << log2) - 1;
        let base = s.r.cmdq_base & queue::BASE_ADDR_MASK;
        let prod = s.r.cmdq_prod & mask;
        while s.r.cmdq_cons & mask != prod {
            let cons = s.r.cmdq_cons & mask;
            let at = base + u64::from(cons & ((1 << log2) - 1)) * 16;
            let err = match (self.smmu_read(s, at), self.smmu_read(s, at + 8)) {
                (Some(a), Some(b)) => {
                    let c = Command([a, b]);
                    s.commands.push(c);
                    self.execute(s, &c)
                }
                _ => Err(2), // CERROR_ABT
            };
            if let Err(code) = err {
                s.r.cmdq_cons = cons | u32::from(code) << queue::CONS_ERR_SHIFT;
                raise_gerror(s, gerror::CMDQ_ERR);
                return;
            }
            s.r.cmdq_cons = (cons + 1) & mask;
        }
    }

    /// Executes one command; `Err(code)` is CMDQ_CONS.ERR.
    fn execute(&self, s: &mut State, c: &Command) -> Result<(), u8> {
        let opc = c.opcode();
        if s.forced_errors.contains(&opc) {
            return Err(1);
        }
        let i0 = s.id.idr[0];
        let s1 = i0 & idr0::S1P != 0;
        let s2 = i0 & idr0::S2P != 0;
        let vmid_of = |v: u16| if s2 { v } else { 0 };
        match opc {
            0x01 | 0x02 => {} // PREFETCH_CONFIG / PREFETCH_ADDR
            op::CFGI_STE => {
                s.ste_cache.remove(&c.sid());
            }
            op::CFGI_STE_RANGE => {
                let range = (c.0[1] & 0x1f) as u32;
                if range >= 31 {
                    s.ste_cache.clear();
                    // CFGI_ALL drops every cached configuration.
                    s.cd_cache.clear();
                } else {
                    let n = 1u64 << (range + 1);
                    let lo = u64::from(c.sid()) & !(n - 1);
                    s.ste_cache
                        .retain(|&k, _| !(lo..lo + n).contains(&u64::from(k)));
                }
            }
            op::CFGI_CD => {
                s.cd_cache.remove(&(c.sid(), c.ssid()));
            }
            op::CFGI_CD_ALL => {
                let sid = c.sid();
                s.cd_cache.retain(|&(k, _), _| k != sid);
            }
            op::TLBI_NH_ALL | op::TLBI_NH_ASID | op::TLBI_NH_VA | 0x13 => {
                if !s1 {
                    return Err(1);
                }
                let vmid = vmid_of(c.vmid());
                let asid = c.asid();
                let (lo, len) = tlbi_span(c)?;
                let leaf = c.leaf();
                let hit = |t: Tag, base: u64, size: u64| match (opc, t) {
                    (op::TLBI_NH_ALL, Tag::S1 { vmid: v, .. }) => v == vmid,
                    (op::TLBI_NH_ASID, Tag::S1 { vmid: v, asid: a }) => v == vmid && a == asid,
                    (op::TLBI_NH_VA, Tag::S1 { vmid: v, asid: a }) => {
                        v == vmid && a == asid && overlaps(base, size, lo, len)
                    }
                    (0x13, Tag::S1 { vmid: v, .. }) => v == vmid && overlaps(base, size, lo, len),
                    _ => false,
                };
                s.tlb.retain(|e| !hit(e.tag, e.base, e.size));
                let by_addr = matches!(opc, op::TLBI_NH_VA | 0x13);
                s.walk
                    .retain(|w| !(hit(w.tag, w.base, w.span) && (!by_addr || !leaf)));
            }
            op::TLBI_EL2_ALL => {
                if i0 & idr0::HYP == 0 {
                    return Err(1);
                }
            }
            op::TLBI_S12_VMALL => {
                if !s2 {
                    return Err(1);
                }
                let vmid = c.vmid();
                let hit = |t: Tag| matches!(t, Tag::S1 { vmid: v, .. } | Tag::S2 { vmid: v } if v == vmid);
                s.tlb.retain(|e| !hit(e.tag));
                s.walk.retain(|w| !hit(w.tag));
            }
            op::TLBI_S2_IPA => {
                if !s2 {
                    return Err(1);
                }
                let vmid = c.vmid();
                let (lo, len) = tlbi_span(c)?;
                let leaf = c.leaf();
                let hit = |t: Tag, base: u64, size: u64| {
                    t == Tag::S2 { vmid } && overlaps(base, size, lo, len)
                };
                s.tlb.retain(|e| !hit(e.tag, e.base, e.size));
                if !leaf {
                    s.walk.retain(|w| !hit(w.tag, w.base, w.span));
                }
            }
            op::TLBI_NSNH_ALL => {
                s.tlb.clear();
                s.walk.clear();
            }
            op::CMD_SYNC => {
                if bits(c.0[0], 12, 2) == 3 {
                    return Err(1);
                }
            }
            _ => return Err(1),
        }
        Ok(())
    }

    // ---- events ----

    fn record(&self, s: &mut State, sid: u32, f: &Fault, read: bool) {
        if !f.record || s.r.cr0 & cr0::EVENTQEN == 0 {
            return;
        }
        let mut raw = Event::encode(f.code, sid, f.addr, f.ipa, read, f.stage, f.class);
        if let Some(ssid) = s.cur_ssid {
            // SSV and SubstreamID.
            raw[0] |= 1 << 11 | u64::from(ssid & 0xf_ffff) << 12;
        }
        let log2 = (s.r.evtq_base & queue::BASE_LOG2SIZE_MASK) as u32;
        let mask = (2u32 << log2) - 1;
        let (prod, cons) = (s.r.evtq_prod & mask, s.r.evtq_cons & mask);
        if prod.wrapping_sub(cons) & mask == 1 << log2 {
            s.events_lost += 1;
            if s.qemu_event_abort {
                raise_gerror(s, gerror::EVENTQ_ABT_ERR);
            } else if (s.r.evtq_prod ^ s.r.evtq_cons) & queue::OVFLG == 0 {
                s.r.evtq_prod ^= queue::OVFLG;
            }
            return;
        }
        let at = (s.r.evtq_base & queue::BASE_ADDR_MASK) + u64::from(prod & ((1 << log2) - 1)) * 32;
        for (i, w) in raw.iter().enumerate() {
            if !self.smmu_write(s, at + 8 * i as u64, *w) {
                raise_gerror(s, gerror::EVENTQ_ABT_ERR);
                return;
            }
        }
        s.events_written += 1;
        s.r.evtq_prod = (s.r.evtq_prod & queue::OVFLG) | ((prod + 1) & mask);
        if s.r.irq_ctrl & crate::regs::irq_ctrl::EVENTQ_IRQEN != 0 {
            s.irqs.0 += 1;
        }
    }

    // ---- translation ----

    fn translate_locked(
        &self,
        s: &mut State,
        sid: u32,
        iova: u64,
        write: bool,
    ) -> Result<u64, DmaFault> {
        if s.r.cr0 & cr0::SMMUEN == 0 {
            return if s.r.gbpa & gbpa::ABORT != 0 {
                Err(DmaFault::Terminated(None))
            } else {
                Ok(iova)
            };
        }
        match self.translate_inner(s, sid, iova, write) {
            Ok(pa) => Ok(pa),
            Err(None) => Err(DmaFault::Terminated(None)),
            Err(Some(f)) => {
                self.record(s, sid, &f, !write);
                Err(DmaFault::Terminated(Some(f.code)))
            }
        }
    }

    fn fetch_ste(&self, s: &State, sid: u32) -> Result<Ste, Fault> {
        let cfg = s.r.strtab_cfg;
        let log2 = cfg & 0x3f;
        if log2 < 32 && sid >> log2 != 0 {
            return Err(Fault::cfg(code::C_BAD_STREAMID));
        }
        let base = s.r.strtab_base & 0x000f_ffff_ffff_ffc0;
        let at = if bits(u64::from(cfg), 16, 2) == 1 {
            let split = bits(u64::from(cfg), 6, 5) as u32;
            let l1 = self
                .smmu_read(s, base + 8 * u64::from(sid >> split))
                .ok_or(Fault::cfg(code::F_STE_FETCH))?;
            let span = (l1 & 0x1f) as u32;
            if span == 0 {
                return Err(Fault::cfg(code::C_BAD_STREAMID));
            }
            let idx = u64::from(sid) & ((1 << split) - 1);
            if span > split + 1 || idx >> (span - 1) != 0 {
                return Err(Fault::cfg(code::C_BAD_STE));
            }
            (l1 & ste::L1_L2PTR_MASK) + 64 * idx
        } else {
            base + 64 * u64::from(sid)
        };
        let mut w = [0; 8];
        for (i, x) in w.iter_mut().enumerate() {
            *x = self
                .smmu_read(s, at + 8 * i as u64)
                .ok_or(Fault::cfg(code::F_STE_FETCH))?;
        }
        Ok(Ste(w))
    }

    fn decode_s2(&self, s: &State, st: &Ste) -> Option<S2> {
        let w2 = st.0[2];
        let oas = match s.id.idr[5] & 7 {
            0 => 32,
            1 => 36,
            2 => 40,
            3 => 42,
            4 => 44,
            5 => 48,
            _ => 52,
        };
        let ps = match bits(w2, 48, 3) {
            0 => 32,
            1 => 36,
            2 => 40,
            3 => 42,
            4 => 44,
            5 => 48,
            _ => 52,
        };
        let oa_bits = u32::min(ps, oas).min(48);
        let t0sz = bits(w2, 32, 6) as u32;
        let ia_bits = 64 - t0sz;
        let gshift = match bits(w2, 46, 2) {
            0 if s.id.idr[5] & crate::regs::idr5::GRAN4K != 0 => 12,
            2 if s.id.idr[5] & crate::regs::idr5::GRAN16K != 0 => 14,
            1 if s.id.idr[5] & crate::regs::idr5::GRAN64K != 0 => 16,
            _ => return None,
        };
        if w2 & ste::S2AA64 == 0
            || w2 & (ste::S2ENDI | ste::S2S) != 0
            || t0sz > 39
            || ia_bits > oa_bits
        {
            return None;
        }
        let sl0 = bits(w2, 38, 2) as u32;
        if sl0 == 3 {
            return None;
        }
        let start = if gshift == 12 { 2 - sl0 } else { 3 - sl0 };
        // Root index bits: at most a full level + 4 (16 concatenated tables).
        let stride = gshift - 3;
        let covered = gshift + stride * (4 - start);
        if ia_bits > covered + 4 || ia_bits + stride <= covered {
            return None;
        }
        Some(S2 {
            vmid: (w2 & 0xffff) as u16,
            ia_bits,
            gshift,
            start,
            ttb: st.0[3] & ste::S2TTB_MASK,
            record: w2 & ste::S2R != 0,
            oa_bits,
        })
    }

    fn translate_inner(
        &self,
        s: &mut State,
        sid: u32,
        iova: u64,
        write: bool,
    ) -> Result<u64, Option<Fault>> {
        let st = match s.ste_cache.get(&sid) {
            Some(st) => *st,
            None => {
                let st = self.fetch_ste(s, sid).map_err(Some)?;
                if !st.is_valid() {
                    return Err(Some(Fault::cfg(code::C_BAD_STE)));
                }
                s.ste_cache.insert(sid, st);
                st
            }
        };
        let config = st.config();
        if config & 0b100 == 0 {
            return Err(None);
        }
        if config == ste::CONFIG_BYPASS {
            return Ok(iova);
        }
        let i0 = s.id.idr[0];
        let want_s1 = config & 1 != 0;
        let want_s2 = config & 2 != 0;
        if (want_s1 && i0 & idr0::S1P == 0) || (want_s2 && i0 & idr0::S2P == 0) {
            return Err(Some(Fault::cfg(code::C_BAD_STE)));
        }
        let s2 = if want_s2 {
            Some(
                self.decode_s2(s, &st)
                    .ok_or(Some(Fault::cfg(code::C_BAD_STE)))?,
            )
        } else {
            None
        };
        if !want_s1 {
            let s2 = s2.expect("stage 2 decoded above");
            return self.stage2(s, &s2, iova, iova, write, FaultClass::Input);
        }
        let cd_max = bits(st.0[0], 59, 5) as u32;
        let ssid_size = (s.id.idr[1] >> 6) & 0x1f;
        // One CD, or a linear CD table (S1Fmt = 0) within IDR1.SSIDSIZE.
        if cd_max > ssid_size
            || (cd_max != 0 && bits(st.0[0], 4, 2) != 0)
            || st.0[1] & ste::S1STALLD != 0
        {
            return Err(Some(Fault::cfg(code::C_BAD_STE)));
        }
        let index = match (s.cur_ssid, cd_max) {
            (Some(_), 0) => return Err(Some(Fault::cfg(code::C_BAD_SUBSTREAMID))),
            (Some(x), n) if x >> n != 0 => return Err(Some(Fault::cfg(code::C_BAD_SUBSTREAMID))),
            (Some(x), _) => x,
            (None, 0) => 0,
            (None, _) => match bits(st.0[1], 0, 2) {
                0b01 => return Ok(iova),
                0b10 => 0,
                _ => return Err(Some(Fault::cfg(code::F_STREAM_DISABLED))),
            },
        };
        // The CD, through stage 2 when nested.
        let cd = match s.cd_cache.get(&(sid, index)) {
            Some(cd) => *cd,
            None => {
                let ptr = st.cd_ptr() + 64 * u64::from(index);
                let pa = match &s2 {
                    Some(s2) => self.stage2(s, s2, iova, ptr, false, FaultClass::Cd)?,
                    None => ptr,
                };
                let mut w = [0; 8];
                for (i, x) in w.iter_mut().enumerate() {
                    *x = self
                        .smmu_read(s, pa + 8 * i as u64)
                        .ok_or(Some(Fault::cfg(code::F_CD_FETCH)))?;
                }
                let w0 = w[0];
                let t0sz = bits(w0, 0, 6);
                let ok = w0 & crate::cd::V != 0
                    && w0 & crate::cd::AA64 != 0
                    && w0 & crate::cd::A != 0
                    && w0 & (crate::cd::S | crate::cd::HA | crate::cd::HD | crate::cd::ENDI) == 0
                    && (16..=39).contains(&t0sz)
                    && granule_shift(s.id.idr[5], bits(w0, 6, 2)).is_some();
                if !ok {
                    return Err(Some(Fault::cfg(code::C_BAD_CD)));
                }
                s.cd_cache.insert((sid, index), w);
                w
            }
        };
        let vmid = s2.map_or(0, |x| x.vmid);
        let asid = (cd[0] >> 48) as u16;
        let tag = Tag::S1 { vmid, asid };
        let fault = |code, record| Fault {
            code,
            addr: iova,
            ipa: 0,
            stage: Stage::One,
            class: FaultClass::Input,
            record,
        };
        let record = cd[0] & crate::cd::R != 0;
        let ia_bits = 64 - bits(cd[0], 0, 6) as u32;
        if iova >> ia_bits != 0 {
            return Err(Some(fault(code::F_TRANSLATION, record)));
        }
        if let Some(pa) = self.tlb_lookup(s, tag, iova, write, record, &fault)? {
            return Ok(pa);
        }
        s.walks += 1;
        let ips = match bits(cd[0], 32, 3) {
            0 => 32,
            1 => 36,
            2 => 40,
            3 => 42,
            4 => 44,
            _ => 48,
        };
        let gshift = granule_shift(s.id.idr[5], bits(cd[0], 6, 2)).unwrap_or(12);
        let w = self.walk(
            s,
            tag,
            cd[1] & crate::cd::TTB_MASK,
            ia_bits,
            gshift,
            None,
            iova,
            ips,
            s2.as_ref(),
            false,
            &|code, record_it| fault(code, record_it && record),
        )?;
        let (mut pa, mut r, mut wr) = (w.pa, w.read, w.write);
        let (mut base, mut size) = (w.base, w.size);
        let mut half = None;
        if let Some(s2) = &s2 {
            // The output is an IPA; the combined entry is one page of stage 2's leaf.
            let ipa = pa;
            let w2 = self.walk_s2(s, s2, iova, ipa, FaultClass::Input)?;
            half = Some(S2Half {
                ipa: ipa & !0xfff,
                s1_read: r,
                s1_write: wr,
                record: s2.record,
            });
            pa = w2.pa;
            r &= w2.read;
            wr &= w2.write;
            base = iova & !0xfff;
            size = 0x1000;
        }
        let e = TlbEntry {
            tag,
            base,
            size,
            pa: pa & !(size - 1),
            read: r,
            write: wr,
            s2: half,
        };
        s.tlb.push(e);
        check_perm(&e, iova, write, &|c| fault(c, record))
    }

    fn tlb_lookup(
        &self,
        s: &mut State,
        tag: Tag,
        a: u64,
        write: bool,
        _record: bool,
        fault: &dyn Fn(u8, bool) -> Fault,
    ) -> Result<Option<u64>, Option<Fault>> {
        if let Some(e) = s
            .tlb
            .iter()
            .find(|e| e.tag == tag && e.base <= a && a - e.base < e.size)
            .copied()
        {
            s.tlb_hits += 1;
            let rec = _record;
            return check_perm(&e, a, write, &|c| fault(c, rec)).map(Some);
        }
        Ok(None)
    }

    fn stage2(
        &self,
        s: &mut State,
        s2: &S2,
        iova: u64,
        ipa: u64,
        write: bool,
        class: FaultClass,
    ) -> Result<u64, Option<Fault>> {
        let tag = Tag::S2 { vmid: s2.vmid };
        let record = s2.record;
        let f = move |code, rec: bool| Fault {
            code,
            addr: iova,
            ipa,
            stage: Stage::Two,
            class,
            record: rec && record,
        };
        if let Some(pa) = self.tlb_lookup(s, tag, ipa, write, true, &f)? {
            return Ok(pa);
        }
        s.walks += 1;
        let w = self.walk_s2(s, s2, iova, ipa, class)?;
        let e = TlbEntry {
            tag,
            base: w.base,
            size: w.size,
            pa: w.pa & !(w.size - 1),
            read: w.read,
            write: w.write,
            s2: None,
        };
        s.tlb.push(e);
        check_perm(&e, ipa, write, &|c| f(c, true))
    }

    fn walk_s2(
        &self,
        s: &mut State,
        s2: &S2,
        iova: u64,
        ipa: u64,
        class: FaultClass,
    ) -> Result<Walked, Option<Fault>> {
        let record = s2.record;
        let f = move |code, rec: bool| Fault {
            code,
            addr: iova,
            ipa,
            stage: Stage::Two,
            class,
            record: rec && record,
        };
        if ipa >> s2.ia_bits != 0 {
            return Err(Some(f(code::F_TRANSLATION, true)));
        }
        self.walk(
            s,
            Tag::S2 { vmid: s2.vmid },
            s2.ttb,
            s2.ia_bits,
            s2.gshift,
            Some(s2.start),
            ipa,
            s2.oa_bits,
            None,
            true,
            &f,
        )
    }

    /// Walks 4 KiB-granule tables from `ttb` for `a`. Stage-1 table addresses
    /// go through `nest` (stage 2) when nested.
    #[allow(clippy::too_many_arguments)]
    fn walk(
        &self,
        s: &mut State,
        tag: Tag,
        ttb: u64,
        ia_bits: u32,
        gshift: u32,
        start: Option<u32>,
        a: u64,
        oa_bits: u32,
        nest: Option<&S2>,
        stage2: bool,
        fault: &dyn Fn(u8, bool) -> Fault,
    ) -> Result<Walked, Option<Fault>> {
        let stride = gshift - 3;
        let start = start.unwrap_or_else(|| 4 - (ia_bits - gshift).div_ceil(stride));
        let mut level = start;
        let mut table = ttb;
        // Resume from the deepest cached table pointer.
        if let Some(w) = s
            .walk
            .iter()
            .filter(|w| w.tag == tag && w.base <= a && a - w.base < w.span)
            .max_by_key(|w| w.level)
        {
            level = w.level;
            table = w.table;
        }
        loop {
            let shift = gshift + stride * (3 - level);
            let idx_bits = if level == start {
                ia_bits - shift
            } else {
                stride
            };
            let idx = (a >> shift) & ((1 << idx_bits) - 1);
            let mut at = table + 8 * idx;
            if let Some(s2) = nest {
                at = self.stage2(s, s2, a, at, false, FaultClass::TableWalk)?;
            }
            let d = self
                .smmu_read(s, at)
                .ok_or(Some(fault(code::F_WALK_EABT, true)))?;
            if d & 1 == 0 {
                return Err(Some(fault(code::F_TRANSLATION, true)));
            }
            let out = d & 0x0000_ffff_ffff_f000 & !((1u64 << gshift) - 1);
            if level < 3 && d & 2 != 0 {
                let span = 1u64 << shift;
                s.walk.push(WalkEntry {
                    tag,
                    level: level + 1,
                    base: a & !(span - 1),
                    span,
                    table: out,
                });
                table = out;
                level += 1;
                continue;
            }
            // Blocks: levels 1 and 2 with 4 KiB, level 2 only with 16/64 KiB
            // (their level-1 blocks need 52-bit addresses).
            let block_ok = level == 2 || (level == 1 && gshift == 12);
            if (level == 3 && d & 2 == 0) || (level < 3 && !block_ok) {
                return Err(Some(fault(code::F_TRANSLATION, true)));
            }
            if d & (1 << 10) == 0 {
                return Err(Some(fault(code::F_ACCESS, true)));
            }
            if out >> oa_bits != 0 {
                return Err(Some(fault(code::F_ADDR_SIZE, true)));
            }
            let size = 1u64 << shift;
            let (read, write) = if stage2 {
                (d & (1 << 6) != 0, d & (1 << 7) != 0)
            } else {
                (true, d & (1 << 7) == 0)
            };
            return Ok(Walked {
                pa: (out & !(size - 1)) | (a & (size - 1)),
                base: a & !(size - 1),
                size,
                read,
                write,
            });
        }
    }

    // ---- registers ----

    fn read_reg32(&self, s: &mut State, o: usize) -> Option<u32> {
        let r = &s.r;
        Some(match o {
            off::IDR0..=off::IDR5 => s.id.idr[(o - off::IDR0) / 4],
            off::IIDR => 0,
            off::AIDR => s.id.aidr,
            off::CR0 => r.cr0,
            off::CR0ACK => {
                if s.stalled {
                    return Some(0xdead_0000);
                }
                r.cr0
            }
            off::CR1 => r.cr1,
            off::CR2 => r.cr2,
            off::STATUSR => 0,
            off::GBPA => r.gbpa,
            off::IRQ_CTRL | off::IRQ_CTRLACK => r.irq_ctrl,
            off::GERROR => r.gerror,
            off::GERRORN => r.gerrorn,
            off::STRTAB_BASE_CFG => r.strtab_cfg,
            off::CMDQ_PROD => r.cmdq_prod,
            off::CMDQ_CONS => r.cmdq_cons,
            off::EVENTQ_PROD => r.evtq_prod,
            off::EVENTQ_CONS => r.evtq_cons,
            off::GERROR_IRQ_CFG1 => r.msi_cfg[0].1,
            off::GERROR_IRQ_CFG2 => r.msi_cfg[0].2,
            off::EVENTQ_IRQ_CFG1 => r.msi_cfg[1].1,
            off::EVENTQ_IRQ_CFG2 => r.msi_cfg[1].2,
            _ => {
                let (reg, hi) = (o & !7, o & 4 != 0);
                let v = self.read_reg64(s, reg)?;
                if hi { (v >> 32) as u32 } else { v as u32 }
            }
        })
    }

    fn read_reg64(&self, s: &State, o: usize) -> Option<u64> {
        Some(match o {
            off::STRTAB_BASE => s.r.strtab_base,
            off::CMDQ_BASE => s.r.cmdq_base,
            off::EVENTQ_BASE => s.r.evtq_base,
            off::GERROR_IRQ_CFG0 => s.r.msi_cfg[0].0,
            off::EVENTQ_IRQ_CFG0 => s.r.msi_cfg[1].0,
            _ => return None,
        })
    }

    fn write_reg32(&self, s: &mut State, o: usize, v: u32) -> bool {
        match o {
            off::CR0 => {
                if !s.stalled {
                    s.r.cr0 = v & 0x1df;
                    self.consume(s);
                }
            }
            off::CR1 => s.r.cr1 = v,
            off::CR2 => s.r.cr2 = v,
            off::GBPA => {
                if v & gbpa::UPDATE != 0 {
                    s.r.gbpa = v & !gbpa::UPDATE;
                }
            }
            off::IRQ_CTRL => s.r.irq_ctrl = v,
            off::GERRORN => {
                s.r.gerrorn = v;
                self.consume(s);
            }
            off::STRTAB_BASE_CFG => {
                if s.r.cr0 & cr0::SMMUEN == 0 {
                    s.r.strtab_cfg = v;
                }
            }
            off::CMDQ_PROD => {
                s.r.cmdq_prod = v;
                self.consume(s);
            }
            off::CMDQ_CONS => {
                if s.r.cr0 & cr0::CMDQEN == 0 {
                    s.r.cmdq_cons = v;
                }
            }
            off::EVENTQ_PROD => {
                if s.r.cr0 & cr0::EVENTQEN == 0 {
                    s.r.evtq_prod = v;
                }
            }
            off::EVENTQ_CONS => s.r.evtq_cons = v,
            off::GERROR_IRQ_CFG1 => s.r.msi_cfg[0].1 = v,
            off::GERROR_IRQ_CFG2 => s.r.msi_cfg[0].2 = v,
            off::EVENTQ_IRQ_CFG1 => s.r.msi_cfg[1].1 = v,
            off::EVENTQ_IRQ_CFG2 => s.r.msi_cfg[1].2 = v,
            _ => {
                let (reg, hi) = (o & !7, o & 4 != 0);
                let Some(old) = self.read_reg64(s, reg) else {
                    return false;
                };
                let new = if hi {
                    (old & 0xffff_ffff) | u64::from(v) << 32
                } else {
                    (old & !0xffff_ffff) | u64::from(v)
                };
                return self.write_reg64(s, reg, new);
            }
        }
        true
    }

    fn write_reg64(&self, s: &mut State, o: usize, v: u64) -> bool {
        let (enabled, bit) = match o {
            off::STRTAB_BASE => (&mut s.r.strtab_base, cr0::SMMUEN),
            off::CMDQ_BASE => (&mut s.r.cmdq_base, cr0::CMDQEN),
            off::EVENTQ_BASE => (&mut s.r.evtq_base, cr0::EVENTQEN),
            off::GERROR_IRQ_CFG0 => {
                s.r.msi_cfg[0].0 = v;
                return true;
            }
            off::EVENTQ_IRQ_CFG0 => {
                s.r.msi_cfg[1].0 = v;
                return true;
            }
            _ => return false,
        };
        // Base registers are ignored while their unit is enabled.
        if s.r.cr0 & bit == 0 {
            *enabled = v;
        }
        true
    }
}

/// Toggles the GERROR `bits` not already pending, pulsing the global-error
/// interrupt if it is enabled.
fn raise_gerror(s: &mut State, bits: u32) {
    let new = bits & !(s.r.gerror ^ s.r.gerrorn);
    if new != 0 {
        s.r.gerror ^= new;
        if s.r.irq_ctrl & crate::regs::irq_ctrl::GERROR_IRQEN != 0 {
            s.irqs.1 += 1;
        }
    }
}

/// log2 of the granule a CD.TG0 code selects, if IDR5 offers it.
fn granule_shift(idr5: u32, tg0: u64) -> Option<u32> {
    match tg0 {
        0 if idr5 & crate::regs::idr5::GRAN4K != 0 => Some(12),
        2 if idr5 & crate::regs::idr5::GRAN16K != 0 => Some(14),
        1 if idr5 & crate::regs::idr5::GRAN64K != 0 => Some(16),
        _ => None,
    }
}

fn overlaps(base: u64, size: u64, lo: u64, len: u64) -> bool {
    base < lo.saturating_add(len) && lo < base.saturating_add(size)
}

/// The address span a TLBI_NH_VA / TLBI_S2_IPA covers: one page, or the range form.
fn tlbi_span(c: &Command) -> Result<(u64, u64), u8> {
    let addr = c.addr();
    match bits(c.0[1], 10, 2) {
        0 => Ok((addr, 0x1000)),
        tg => {
            let r = c.range().ok_or(1u8)?;
            // TG 1, 2, 3: 4, 16, 64 KiB pages.
            Ok((addr, r.pages() << (10 + 2 * tg)))
        }
    }
}

fn check_perm(
    e: &TlbEntry,
    a: u64,
    write: bool,
    fault: &dyn Fn(u8) -> Fault,
) -> Result<u64, Option<Fault>> {
    if (write && !e.write) || (!write && !e.read) {
        let mut f = fault(code::F_PERMISSION);
        if let Some(h) = e.s2 {
            if (write && h.s1_write) || (!write && h.s1_read) {
                // Stage 1 allows it: stage 2's permission denied it.
                f.stage = Stage::Two;
                f.ipa = h.ipa + (a - e.base);
                f.record = h.record;
            }
        }
        return Err(Some(f));
    }
    Ok(e.pa + (a - e.base))
}

/// The CPU side of a non-coherent fake: cleaning copies memory into what
/// the SMMU sees; invalidating copies what the SMMU wrote back. (For a
/// coherent fake these are no-ops.)
impl iova_core::CacheMaintenance for FakeSmmu {
    fn is_coherent(&self) -> bool {
        self.s.lock().unwrap().view.is_none()
    }
    fn clean(&self, pa: PhysAddr, len: u64) {
        let mut s = self.s.lock().unwrap();
        if s.view.is_none() {
            return;
        }
        let (lo, hi) = (pa.0 & !7, (pa.0 + len + 7) & !7);
        for w in (lo..hi).step_by(8) {
            if let Some(v) = self.cpu_read_u64(w) {
                s.view.as_mut().expect("checked above").insert(w, v);
            }
        }
    }
    fn invalidate(&self, pa: PhysAddr, len: u64) {
        let s = self.s.lock().unwrap();
        let Some(view) = &s.view else {
            return;
        };
        let (lo, hi) = (pa.0 & !7, (pa.0 + len + 7) & !7);
        for w in (lo..hi).step_by(8) {
            self.cpu_write_u64(w, view.get(&w).copied().unwrap_or(0));
        }
    }
    fn complete(&self) {}
}

impl Mmio for FakeSmmu {
    fn size(&self) -> usize {
        off::FRAME_SIZE
    }
    fn read32(&self, offset: usize) -> Result<u32, MmioError> {
        check_access(off::FRAME_SIZE, offset, Width::W32)?;
        let mut s = self.s.lock().unwrap();
        s.reads += 1;
        Ok(match self.read_reg32(&mut s, offset) {
            Some(v) => v,
            None => {
                s.bad_accesses += 1;
                0
            }
        })
    }
    fn write32(&self, offset: usize, value: u32) -> Result<(), MmioError> {
        check_access(off::FRAME_SIZE, offset, Width::W32)?;
        let mut s = self.s.lock().unwrap();
        s.writes += 1;
        if !self.write_reg32(&mut s, offset, value) {
            s.bad_accesses += 1;
        }
        Ok(())
    }
    fn read64(&self, offset: usize) -> Result<u64, MmioError> {
        check_access(off::FRAME_SIZE, offset, Width::W64)?;
        let mut s = self.s.lock().unwrap();
        s.reads += 1;
        Ok(match self.read_reg64(&s, offset) {
            Some(v) => v,
            None => {
                // QEMU: RAZ for 64-bit reads of 32-bit registers.
                s.bad_accesses += 1;
                0
            }
        })
    }
    fn write64(&self, offset: usize, value: u64) -> Result<(), MmioError> {
        check_access(off::FRAME_SIZE, offset, Width::W64)?;
        let mut s = self.s.lock().unwrap();
        s.writes += 1;
        if !self.write_reg64(&mut s, offset, value) {
            s.bad_accesses += 1;
        }
        Ok(())
    }
}

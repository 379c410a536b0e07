//! The driver: bring-up, stream table updates, command submission, event
//! draining and counters.

use iova_core::hw::{Counter, WaitBudget};
use iova_core::{FrameAllocator, PhysAddr};
use spin::Mutex;

use crate::cache::SmmuCache;
use crate::cd::{CD_BYTES, Cd};
use crate::cmd::{Command, CommandCounters, CommandCounts};
use crate::error::{CommandError, SmmuError, Wait};
use crate::event::Event;
use crate::features::{Features, IdRegs, StreamTableLevels};
use crate::queue::{CmdQueue, DmaBuf, DrainReport, EventQueue, Hw, wait};
use crate::regs::{Mmio, cr0, cr1, cr2, gbpa, gerror, irq_ctrl, off};
use crate::ste::Ste;
use crate::strtab::{StreamTable, StreamTableFormat};

/// Choices the driver makes within what the hardware offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// log2 of the command queue entries wanted (clamped to IDR1.CMDQS).
    pub cmdq_log2: u32,
    /// log2 of the event queue entries wanted (clamped to IDR1.EVENTQS).
    pub evtq_log2: u32,
    /// StreamID bits the stream table covers (clamped to IDR1.SIDSIZE).
    pub sid_bits: u32,
    /// Build a two-level table when the SMMU offers one and `sid_bits`
    /// exceeds this (a linear table of more StreamIDs wastes memory).
    pub linear_max_sid_bits: u32,
    /// STEs per level-2 table, log2 (6, 8 or 10).
    pub l2_split: u32,
    /// How long any wait on the hardware (CR0ACK, GBPA.UPDATE, IRQ_CTRLACK,
    /// room in the command queue, a CMD_SYNC) lasts before it gives up with
    /// [`SmmuError::Timeout`]. Default [`WaitBudget::DEFAULT`].
    pub wait: WaitBudget,
    /// Without range invalidation, per-page TLBIs of one flush beyond this
    /// many become one invalidation of the whole ASID / VMID.
    pub tlbi_page_threshold: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            cmdq_log2: 8,
            evtq_log2: 7,
            sid_bits: 16,
            linear_max_sid_bits: 8,
            l2_split: 6,
            wait: WaitBudget::DEFAULT,
            tlbi_page_threshold: 64,
        }
    }
}

impl Config {
    /// Sets `sid_bits`.
    pub fn with_sid_bits(mut self, bits: u32) -> Self {
        self.sid_bits = bits;
        self
    }
    /// Sets `evtq_log2`.
    pub fn with_evtq_log2(mut self, log2: u32) -> Self {
        self.evtq_log2 = log2;
        self
    }
    /// Sets `cmdq_log2`.
    pub fn with_cmdq_log2(mut self, log2: u32) -> Self {
        self.cmdq_log2 = log2;
        self
    }
    /// Sets `linear_max_sid_bits`.
    pub fn with_linear_max_sid_bits(mut self, bits: u32) -> Self {
        self.linear_max_sid_bits = bits;
        self
    }
    /// Sets `wait`.
    pub fn with_wait(mut self, wait: WaitBudget) -> Self {
        self.wait = wait;
        self
    }
    /// Sets `tlbi_page_threshold`.
    pub fn with_tlbi_page_threshold(mut self, n: u32) -> Self {
        self.tlbi_page_threshold = n;
        self
    }
}

/// What a user can read about the driver's work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub struct Counters {
    /// Commands issued, by kind (CMD_SYNCs in `commands.sync`).
    pub commands: CommandCounts,
    /// Event records drained.
    pub events: u64,
    /// Drains that found events lost (overflow or write abort).
    pub event_losses: u64,
    /// STE writes.
    pub ste_writes: u64,
}

/// The state of the queues and tables the SMMU was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub struct Layout {
    /// Command queue entries.
    pub cmdq_entries: u32,
    /// Event queue entries.
    pub evtq_entries: u32,
    /// Stream table format.
    pub stream_table: StreamTableFormat,
    /// StreamID bits covered.
    pub sid_bits: u32,
    /// Whether GBPA.ABORT reads back set (QEMU 7.2 does not implement GBPA).
    pub gbpa_abort: bool,
}

/// An MSI target for one of the SMMU's interrupt sources.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Msi {
    /// Doorbell address (4-byte aligned, up to 52 bits).
    pub addr: u64,
    /// Data written to the doorbell.
    pub data: u32,
    /// MemAttr of the write (bits 3:0; 0x1 = Device-nGnRE).
    pub memattr: u32,
}

/// A small bitmap allocator of ASIDs or VMIDs (1..limit; 0 stays reserved:
/// VMID 0 tags stage-1-only streams, ASID 0 is never handed out).
pub(crate) struct IdAlloc {
    bits: [u64; 16],
    limit: u32,
}

impl IdAlloc {
    fn new(id_bits: u32) -> Self {
        let mut bits = [0; 16];
        bits[0] = 1; // ID 0 is reserved
        Self {
            bits,
            limit: (1u32 << id_bits).min(1024),
        }
    }
    pub(crate) fn alloc(&mut self) -> Option<u16> {
        (1..self.limit)
            .find(|&i| self.bits[i as usize / 64] & 1 << (i % 64) == 0)
            .map(|i| {
                self.bits[i as usize / 64] |= 1 << (i % 64);
                i as u16
            })
    }
    pub(crate) fn free(&mut self, id: u16) {
        if id != 0 && u32::from(id) < self.limit {
            self.bits[id as usize / 64] &= !(1 << (id % 64));
        }
    }
}

/// An SMMUv3 brought up by this driver ([`Smmu::new`], or
/// [`Smmu::with_cache`] for one that does not snoop the CPUs' caches).
///
/// `M` reaches its registers; `A` provides the memory of its queues, stream
/// table and context descriptors (page tables come from each domain's own
/// allocator). All methods take `&self`; the command queue, event queue and
/// stream table each have a lock.
pub struct Smmu<M: Mmio, A: FrameAllocator> {
    pub(crate) mmio: M,
    pub(crate) frames: A,
    features: Features,
    layout: Layout,
    pub(crate) config: Config,
    pub(crate) cmdq: Mutex<CmdQueue>,
    evtq: Mutex<EventQueue>,
    strtab: Mutex<Option<StreamTable>>,
    pub(crate) cmd_counts: CommandCounters,
    events: Counter,
    event_losses: Counter,
    ste_writes: Counter,
    pub(crate) asids: Mutex<IdAlloc>,
    pub(crate) vmids: Mutex<IdAlloc>,
    pub(crate) cache: SmmuCache,
    pub(crate) cd_tables:
        Mutex<heapless::Vec<crate::substream::CdTable, { crate::substream::MAX_CD_TABLES }>>,
}

/// Reads and decodes the ID registers without touching anything else.
///
/// # Errors
///
/// [`SmmuError::RegistersTooSmall`] for a register block smaller than the
/// frame ([`off::FRAME_SIZE`] bytes; no register is accessed then),
/// [`SmmuError::Register`] for an access `mmio` refused, and
/// [`SmmuError::Unsupported`] for hardware the driver cannot drive.
pub fn probe(mmio: &impl Mmio) -> Result<Features, SmmuError> {
    let have = mmio.size();
    if have < off::FRAME_SIZE {
        return Err(SmmuError::RegistersTooSmall {
            needed: off::FRAME_SIZE,
            have,
        });
    }
    Ok(Features::decode(&IdRegs::read(mmio)?)?)
}

impl<M: Mmio, A: FrameAllocator> Smmu<M, A> {
    /// Probes the SMMU and brings it up in the architected order:
    ///
    /// 1. GBPA.ABORT, so nothing bypasses while translation is off;
    /// 2. SMMUEN, queues off (wait for CR0ACK), interrupts off (the driver
    ///    polls; wait for IRQ_CTRLACK);
    /// 3. CR1/CR2, the stream table (every STE invalid: default deny), the
    ///    command queue, which is enabled and used to invalidate all cached
    ///    configuration and TLB entries;
    /// 4. the event queue, global errors acknowledged;
    /// 5. SMMUEN.
    ///
    /// The stream-table format is chosen here once (two-level when the SMMU
    /// offers it and [`Config::sid_bits`] exceeds
    /// [`Config::linear_max_sid_bits`]). Keep that choice for the life of
    /// the machine: QEMU's model never forgets a two-level format once set.
    ///
    /// # Errors
    ///
    /// Those of [`probe`], before any register is written (a register block
    /// too small for the frame, hardware the driver cannot drive); then
    /// [`SmmuError::NoMemory`], [`SmmuError::Timeout`] (bounded by
    /// [`Config::wait`]), [`SmmuError::AlreadyEnabled`] or
    /// [`SmmuError::Register`] from the bring-up, which gives back the memory
    /// it allocated (unless the SMMU would not disable: then, as when the
    /// driver is dropped, it is kept rather than freed under the SMMU).
    pub fn new(mmio: M, frames: A, config: Config) -> Result<Self, SmmuError> {
        Self::build(mmio, frames, config, SmmuCache::COHERENT)
    }

    /// As [`new`](Self::new), for an SMMU that may not snoop the CPUs'
    /// caches: `cache` cleans what the driver writes for the SMMU (commands,
    /// stream table, CDs, and the page tables of this SMMU's domains) and
    /// invalidates event records before they are read. Table walks and queue
    /// accesses are then programmed non-cacheable, outer shareable. Needed
    /// when IDR0.COHACC = 0 (which [`new`](Self::new) refuses).
    pub fn with_cache(
        mmio: M,
        frames: A,
        config: Config,
        cache: &'static dyn iova_core::CacheMaintenance,
    ) -> Result<Self, SmmuError> {
        Self::build(mmio, frames, config, SmmuCache::new(cache))
    }

    fn build(mmio: M, frames: A, config: Config, cache: SmmuCache) -> Result<Self, SmmuError> {
        let features = probe(&mmio)?;
        let coherent = iova_core::CacheMaintenance::is_coherent(&cache);
        if !features.coherent && coherent {
            return Err(SmmuError::Unsupported(
                crate::features::Unsupported::NotCoherent,
            ));
        }
        let budget = config.wait;
        // 1-2: abort while disabled, then disable.
        mmio.write32(off::GBPA, gbpa::UPDATE | gbpa::ABORT)?;
        wait(&budget, Wait::GbpaUpdate, || {
            Ok(mmio.read32(off::GBPA)? & gbpa::UPDATE == 0)
        })?;
        let gbpa_abort = mmio.read32(off::GBPA)? & gbpa::ABORT != 0;
        if !gbpa_abort {
            iova_core::warn_event!(
                "smmuv3: GBPA.ABORT did not stick: streams bypass while the SMMU is off"
            );
        }
        write_cr0(&mmio, 0, &budget).map_err(|e| match e {
            SmmuError::Timeout(_) => SmmuError::AlreadyEnabled,
            e => e,
        })?;
        // This driver polls: no interrupt may fire behind its back.
        mmio.write32(off::IRQ_CTRL, 0)?;
        wait(&budget, Wait::IrqCtrlAck, || {
            Ok(mmio.read32(off::IRQ_CTRLACK)? == 0)
        })?;

        // 3: tables and command queue.
        // Coherent: write-back, inner shareable; else non-cacheable, outer
        // shareable (what the driver cleans to).
        let (sh, ca) = if coherent {
            (cr1::ISH, cr1::WB)
        } else {
            (cr1::OSH, cr1::NC)
        };
        mmio.write32(
            off::CR1,
            sh << cr1::TABLE_SH_SHIFT
                | ca << cr1::TABLE_OC_SHIFT
                | ca << cr1::TABLE_IC_SHIFT
                | sh << cr1::QUEUE_SH_SHIFT
                | ca << cr1::QUEUE_OC_SHIFT
                | ca << cr1::QUEUE_IC_SHIFT,
        )?;
        mmio.write32(off::CR2, cr2::RECINVSID | cr2::PTM)?;

        let sid_bits = config.sid_bits.min(features.sid_bits);
        let format = if features.st_levels == StreamTableLevels::TwoLevel
            && sid_bits > config.linear_max_sid_bits
        {
            StreamTableFormat::TwoLevel {
                split: match config.l2_split {
                    0..=6 => 6,
                    7..=8 => 8,
                    _ => 10,
                },
            }
        } else {
            StreamTableFormat::Linear
        };
        let format = match format {
            StreamTableFormat::TwoLevel { split } => StreamTableFormat::TwoLevel {
                split: split.min(sid_bits),
            },
            f => f,
        };
        let cmdq_log2 = config.cmdq_log2.clamp(1, features.cmdq_log2.min(19));
        let evtq_log2 = config.evtq_log2.clamp(0, features.evtq_log2.min(19));
        let strtab = StreamTable::new(&frames, format, sid_bits, cache)?;
        let cmdq_mem = DmaBuf::alloc(&frames, 16 << cmdq_log2, &cache);
        let evtq_mem = DmaBuf::alloc(&frames, 32 << evtq_log2, &cache);
        let (cmdq_mem, evtq_mem) = match (cmdq_mem, evtq_mem) {
            (Ok(c), Ok(e)) => (c, e),
            (c, e) => {
                // SAFETY: never handed to the SMMU.
                unsafe {
                    strtab.free(&frames);
                    if let Ok(c) = c {
                        c.free(&frames);
                    }
                    if let Ok(e) = e {
                        e.free(&frames);
                    }
                }
                return Err(SmmuError::NoMemory);
            }
        };
        let cmdq = CmdQueue::new(cmdq_mem, cmdq_log2, budget, cache);
        let evtq = EventQueue::new(evtq_mem, evtq_log2, cache);

        let smmu = Self {
            layout: Layout {
                cmdq_entries: 1 << cmdq_log2,
                evtq_entries: 1 << evtq_log2,
                stream_table: format,
                sid_bits,
                gbpa_abort,
            },
            features,
            config,
            cmdq: Mutex::new(cmdq),
            evtq: Mutex::new(evtq),
            strtab: Mutex::new(Some(strtab)),
            cmd_counts: CommandCounters::default(),
            events: Counter::new(),
            event_losses: Counter::new(),
            ste_writes: Counter::new(),
            asids: Mutex::new(IdAlloc::new(features.asid_bits)),
            vmids: Mutex::new(IdAlloc::new(features.vmid_bits)),
            mmio,
            frames,
            cache,
            cd_tables: Mutex::new(heapless::Vec::new()),
        };
        smmu.bring_up()?;
        Ok(smmu)
    }

    /// The registers and the command counters, for the command queue.
    pub(crate) fn hw(&self) -> Hw<'_, M> {
        Hw {
            mmio: &self.mmio,
            counts: &self.cmd_counts,
        }
    }

    fn bring_up(&self) -> Result<(), SmmuError> {
        let m = &self.mmio;
        let budget = self.config.wait;
        {
            let st = self.strtab.lock();
            let st = st.as_ref().ok_or(SmmuError::NoMemory)?;
            m.write64(off::STRTAB_BASE, st.base_reg())?;
            m.write32(off::STRTAB_BASE_CFG, st.cfg_reg())?;
        }
        {
            let q = self.cmdq.lock();
            m.write64(off::CMDQ_BASE, q.base_reg())?;
            m.write32(off::CMDQ_PROD, 0)?;
            m.write32(off::CMDQ_CONS, 0)?;
        }
        // Clear errors left from before us.
        let pending = m.read32(off::GERROR)? ^ m.read32(off::GERRORN)?;
        if pending != 0 {
            m.write32(off::GERRORN, m.read32(off::GERRORN)? ^ pending)?;
        }
        crate::barrier::publish();
        write_cr0(m, cr0::CMDQEN, &budget)?;
        // Nothing cached from before us may survive.
        let inval = [
            Command::cfgi_all(),
            Command::tlbi_nsnh_all(),
            Command::tlbi_el2_all(),
        ];
        let n = if self.features.hyp { 3 } else { 2 };
        self.cmdq.lock().submit(self.hw(), &inval[..n])?;
        {
            let q = self.evtq.lock();
            m.write64(off::EVENTQ_BASE, q.base_reg())?;
            m.write32(off::EVENTQ_PROD, 0)?;
            m.write32(off::EVENTQ_CONS, 0)?;
        }
        write_cr0(m, cr0::CMDQEN | cr0::EVENTQEN, &budget)?;
        write_cr0(m, cr0::CMDQEN | cr0::EVENTQEN | cr0::SMMUEN, &budget)?;
        Ok(())
    }

    /// What the hardware offers.
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// The queues and table the driver built.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The allocator of queues, stream table and CDs.
    pub fn frames(&self) -> &A {
        &self.frames
    }

    /// A snapshot of the counters. Takes no lock: it never waits for a
    /// submission in progress.
    pub fn counters(&self) -> Counters {
        Counters {
            commands: self.cmd_counts.snapshot(),
            events: self.events.get(),
            event_losses: self.event_losses.get(),
            ste_writes: self.ste_writes.get(),
        }
    }

    /// Whether the driver maintains caches for this SMMU (it does not snoop).
    pub fn maintains_caches(&self) -> bool {
        !iova_core::CacheMaintenance::is_coherent(&self.cache)
    }

    /// The most recent command the SMMU refused.
    pub fn last_command_error(&self) -> Option<CommandError> {
        self.cmdq.lock().last_error
    }

    /// Queues `cmds` and one CMD_SYNC, and waits (bounded) for completion.
    ///
    /// A command the SMMU refuses is reported (the first one, as
    /// [`SmmuError::Command`]), replaced by a CMD_SYNC so the queue carries
    /// on, and every other command still completes.
    pub fn submit(&self, cmds: &[Command]) -> Result<(), SmmuError> {
        self.cmdq.lock().submit(self.hw(), cmds)
    }

    /// Level-2 stream tables allocated so far.
    pub fn l2_tables(&self) -> usize {
        self.strtab
            .lock()
            .as_ref()
            .map_or(0, StreamTable::l2_tables)
    }

    /// The STE of `sid` as it is in memory (invalid if never written).
    pub fn ste(&self, sid: u32) -> Result<Ste, SmmuError> {
        let mut st = self.strtab.lock();
        let st = st.as_mut().ok_or(SmmuError::NoMemory)?;
        Ok(st
            .with_slot(&self.frames, sid, false, |s| s.read())?
            .unwrap_or_default())
    }

    /// Writes the STE of `sid` in the architected order and makes the SMMU
    /// use it. This is the low-level entry point under the attach methods:
    /// an STE written here is not tracked by any domain. The order: a live
    /// entry is first made invalid and invalidated (break-before-make), then
    /// words 1-7 are written, then word 0 with V, then CFGI_STE (Leaf = 0,
    /// which also covers a new level-1 descriptor) and CFGI_CD_ALL, and one
    /// CMD_SYNC.
    ///
    /// If the SMMU fails a command on the way, the error is returned and the
    /// entry may be left invalid (the stream denied), never half-written.
    ///
    /// # Safety
    ///
    /// The SMMU reads what `ste` points at and lets the stream's device reach
    /// what that describes. So, until the entry of `sid` has been replaced
    /// (by this function, an attach, [`set_abort`](Self::set_abort),
    /// [`set_bypass`](Self::set_bypass) or [`detach`](Self::detach)) and
    /// that call has returned:
    /// - the memory `ste` points at (the context descriptor or CD table at
    ///   S1ContextPtr, the stage-2 tables at S2TTB, and every descriptor and
    ///   table reachable from them) stays allocated to this use and holds
    ///   valid descriptors;
    /// - the translations they describe give the device access only to
    ///   memory the caller lets it write and read.
    pub unsafe fn write_ste(&self, sid: u32, ste: &Ste) -> Result<(), SmmuError> {
        self.install_ste(sid, ste)
    }

    /// [`write_ste`](Self::write_ste) for entries whose targets the driver
    /// keeps alive: its domains' (which detach their streams before freeing
    /// anything) and the abort, bypass and invalid entries, which point at
    /// nothing.
    pub(crate) fn install_ste(&self, sid: u32, ste: &Ste) -> Result<(), SmmuError> {
        let mut st = self.strtab.lock();
        let st = st.as_mut().ok_or(SmmuError::NoMemory)?;
        let inval = [Command::cfgi_ste(sid, false), Command::cfgi_cd_all(sid)];
        let old = st
            .with_slot(&self.frames, sid, true, |s| s.read())?
            .unwrap_or_default();
        if old == *ste {
            return Ok(());
        }
        let cache = &self.cache;
        if old.is_valid() {
            st.with_slot(&self.frames, sid, false, |s| {
                s.write_word(0, 0);
                s.clean(cache, 0, 1);
            })?;
            self.cmdq.lock().submit(self.hw(), &inval)?;
        }
        st.with_slot(&self.frames, sid, false, |s| {
            for i in 1..8 {
                s.write_word(i, ste.0[i]);
            }
            s.clean(cache, 1, 7);
            crate::barrier::publish();
            s.write_word(0, ste.0[0]);
            s.clean(cache, 0, 1);
        })?;
        self.ste_writes.incr();
        self.cmdq.lock().submit(self.hw(), &inval)
    }

    /// Makes `sid` abort without recording events (an attached-but-blocked stream).
    pub fn set_abort(&self, sid: u32) -> Result<(), SmmuError> {
        self.install_ste(sid, &Ste::abort())
    }

    /// Makes `sid` bypass translation.
    pub fn set_bypass(&self, sid: u32) -> Result<(), SmmuError> {
        self.install_ste(sid, &Ste::bypass())
    }

    /// Returns `sid` to the default: invalid, so its transactions are
    /// terminated and reported (C_BAD_STE).
    pub fn detach(&self, sid: u32) -> Result<(), SmmuError> {
        self.install_ste(sid, &Ste::invalid())
    }

    /// Allocates and writes a context descriptor (valid word last).
    pub(crate) fn alloc_cd(&self, cd: &Cd) -> Result<PhysAddr, SmmuError> {
        let buf = DmaBuf::alloc(&self.frames, CD_BYTES, &self.cache)?;
        for i in 1..8 {
            buf.write(i, cd.0[i]);
        }
        buf.clean(&self.cache, 1, 7);
        crate::barrier::publish();
        buf.write(0, cd.0[0]);
        buf.clean(&self.cache, 0, 1);
        crate::barrier::publish();
        // From now on the domain owns the CD by its address.
        Ok(buf.pa)
    }

    /// Frees a CD from [`alloc_cd`](Self::alloc_cd).
    ///
    /// # Safety
    ///
    /// No STE points at it and its configuration was invalidated.
    pub(crate) unsafe fn free_cd(&self, pa: PhysAddr) {
        // SAFETY: the caller's promise; allocated with this size.
        unsafe { DmaBuf::view(&self.frames, pa, CD_BYTES).free(&self.frames) }
    }

    /// Hands every pending event record to `f`, and reports lost events
    /// (queue overflow, event write aborts) so none goes unnoticed.
    ///
    /// # Errors
    ///
    /// [`SmmuError::Register`] when the [`Mmio`] refused an access: the
    /// drain stopped there. The records already handed to `f` are consumed
    /// (and counted in [`Counters::events`]), the rest stay queued for the
    /// next drain.
    pub fn drain_events(&self, f: impl FnMut(Event)) -> Result<DrainReport, SmmuError> {
        let mut r = DrainReport::default();
        let done = self.evtq.lock().drain(&self.mmio, f, &mut r);
        self.events.add(u64::from(r.events));
        if r.lost_events() {
            self.event_losses.incr();
            iova_core::warn_event!(
                "smmuv3: events lost (overflow {}, write abort {})",
                r.overflowed,
                r.write_aborted
            );
        }
        done?;
        Ok(r)
    }

    /// Lets the SMMU raise its event-queue and global-error interrupts
    /// (wired or MSI, as the platform connects them), or stops it. The driver
    /// itself polls; a platform that takes the interrupts calls
    /// [`drain_events`](Self::drain_events) / [`global_errors`](Self::global_errors)
    /// from its handlers. Waits (bounded) for IRQ_CTRLACK.
    pub fn set_interrupts(&self, events: bool, gerror: bool) -> Result<(), SmmuError> {
        let v = if events { irq_ctrl::EVENTQ_IRQEN } else { 0 }
            | if gerror { irq_ctrl::GERROR_IRQEN } else { 0 };
        let m = &self.mmio;
        m.write32(off::IRQ_CTRL, v)?;
        wait(&self.config.wait, Wait::IrqCtrlAck, || {
            Ok(m.read32(off::IRQ_CTRLACK)? == v)
        })
    }

    /// Where the event-queue and global-error interrupts go as MSIs: a
    /// doorbell address (bits 51:2) and the data written to it, with the
    /// MSI write's memory attributes (MemAttr, 0x1 = Device-nGnRE). Needs
    /// IDR0.MSI; program it before [`set_interrupts`](Self::set_interrupts).
    /// `None` turns MSIs off for that source (a wired interrupt is used, if
    /// any).
    pub fn set_msi(&self, events: Option<Msi>, gerror: Option<Msi>) -> Result<(), SmmuError> {
        if !self.features.msi {
            return Err(SmmuError::Unsupported(crate::features::Unsupported::NoMsi));
        }
        let m = &self.mmio;
        for (msi, cfg0, cfg1, cfg2) in [
            (
                events,
                off::EVENTQ_IRQ_CFG0,
                off::EVENTQ_IRQ_CFG1,
                off::EVENTQ_IRQ_CFG2,
            ),
            (
                gerror,
                off::GERROR_IRQ_CFG0,
                off::GERROR_IRQ_CFG1,
                off::GERROR_IRQ_CFG2,
            ),
        ] {
            let msi = msi.unwrap_or(Msi {
                addr: 0,
                data: 0,
                memattr: 0,
            });
            // Address 0 disables the MSI.
            m.write64(cfg0, msi.addr & 0x000f_ffff_ffff_fffc)?;
            m.write32(cfg1, msi.data)?;
            m.write32(cfg2, msi.memattr & 0xf)?;
        }
        Ok(())
    }

    /// Global errors pending now (GERROR ^ GERRORN), acknowledging all but
    /// CMDQ_ERR (which the command queue handles itself).
    pub fn global_errors(&self) -> Result<u32, SmmuError> {
        let m = &self.mmio;
        let pending = (m.read32(off::GERROR)? ^ m.read32(off::GERRORN)?) & gerror::ALL;
        let ack = pending & !gerror::CMDQ_ERR;
        if ack != 0 {
            m.write32(off::GERRORN, m.read32(off::GERRORN)? ^ ack)?;
        }
        if pending & gerror::SFM_ERR != 0 {
            return Err(SmmuError::ServiceFailure);
        }
        Ok(pending)
    }
}

impl<M: Mmio, A: FrameAllocator> Drop for Smmu<M, A> {
    /// Disables translation and the queues (GBPA stays abort), then returns
    /// the queues and stream table. If the SMMU does not acknowledge (or a
    /// register access on the way is refused), the memory is leaked rather
    /// than freed under its feet, with a warning: a drop cannot return the
    /// error.
    fn drop(&mut self) {
        if let Err(e) = write_cr0(&self.mmio, 0, &self.config.wait) {
            iova_core::warn_event!(
                "smmuv3: translation not disabled on drop ({}): queues and tables leaked",
                e
            );
            return;
        }
        if let Some(st) = self.strtab.lock().take() {
            // SAFETY: translation is off (acknowledged), so nothing reads the table.
            unsafe { st.free(&self.frames) };
        }
        self.free_cd_tables();
        let dummy = || DmaBuf::view(&self.frames, PhysAddr(0), 0);
        let c = core::mem::replace(&mut self.cmdq.lock().mem, dummy());
        let e = core::mem::replace(&mut self.evtq.lock().mem, dummy());
        // SAFETY: the queues are disabled (acknowledged).
        unsafe {
            c.free(&self.frames);
            e.free(&self.frames);
        }
    }
}

fn write_cr0(m: &impl Mmio, v: u32, budget: &WaitBudget) -> Result<(), SmmuError> {
    m.write32(off::CR0, v)?;
    wait(budget, Wait::Cr0Ack, || Ok(m.read32(off::CR0ACK)? == v))
}

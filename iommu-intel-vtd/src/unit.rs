//! One remapping unit: probe, root and context tables, global commands,
//! fault recording.
//!
//! [`VtdUnit::new`] reads VER/CAP/ECAP, refuses what it cannot drive, takes
//! the unit over (translation and queued invalidation off), installs an empty
//! root table (every device blocked once translation is on), enables queued
//! invalidation where ECAP.QI offers it, and invalidates the context cache
//! and IOTLB globally. Devices are then given a context entry with
//! [`VtdUnit::set_context`], and [`VtdUnit::enable_translation`] turns
//! remapping on.

use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use iova_core::{FrameAllocator, PhysAddr};

use crate::acpi::dmar::Bdf;
use crate::caps::Features;
use crate::context::{ContextState, root_entry};
use crate::counters::Counters;
use crate::descriptor::{ContextScope, Descriptor, IotlbScope};
use crate::fault::{FaultRecord, FaultSummary};
use crate::queue::Invalidation;
use crate::regs::{self, Mmio};
use crate::second_level::{FormatError, SecondLevel};

/// Why the driver refused or failed an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum VtdError {
    /// SAGAW is zero: the unit cannot translate DMA (interrupt remapping only).
    NoDmaTranslation,
    /// ND is a reserved encoding: no domain IDs.
    NoDomains,
    /// The register offsets in CAP/ECAP need more than the register block has.
    RegistersTooSmall {
        /// Bytes the decoded offsets need.
        needed: usize,
        /// Bytes of the block.
        have: usize,
    },
    /// MGAW below 32 bits or above 64.
    BadAddressWidth(u32),
    /// The frame allocator returned nothing.
    NoMemory,
    /// A frame is not 4 KiB aligned or is beyond what the unit can address.
    FrameUnreachable(u64),
    /// A bounded poll expired (what was being waited for).
    Timeout(&'static str),
    /// The unit stopped the invalidation queue (FSTS.IQE) on this descriptor.
    QueueError {
        /// Index of the descriptor in the queue (IQH).
        index: usize,
        /// The descriptor the unit refused.
        descriptor: Descriptor,
    },
    /// A register-based invalidation reported failure (IAIG/CAIG = 0).
    RegisterInvalidationFailed,
    /// The domain ID is beyond what CAP.ND allows, or reserved (0 with CM).
    BadDomainId(u16),
    /// Pass-through was asked of a unit without ECAP.PT.
    PassThroughUnsupported,
    /// A second-level table of this format cannot be walked by the unit.
    Format(FormatError),
    /// The table's depth is not in SAGAW.
    LevelsUnsupported(usize),
}

impl fmt::Display for VtdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoDmaTranslation => f.write_str("VT-d: unit has no DMA translation (SAGAW 0)"),
            Self::NoDomains => f.write_str("VT-d: reserved ND encoding"),
            Self::RegistersTooSmall { needed, have } => write!(
                f,
                "VT-d: registers need {needed:#x} bytes, block has {have:#x}"
            ),
            Self::BadAddressWidth(w) => write!(f, "VT-d: unusable MGAW {w}"),
            Self::NoMemory => f.write_str("VT-d: out of frames"),
            Self::FrameUnreachable(pa) => write!(f, "VT-d: frame {pa:#x} unusable"),
            Self::Timeout(what) => write!(f, "VT-d: timed out waiting for {what}"),
            Self::QueueError { index, descriptor } => write!(
                f,
                "VT-d: invalidation queue error at descriptor {index}: {descriptor:?}"
            ),
            Self::RegisterInvalidationFailed => {
                f.write_str("VT-d: register-based invalidation failed")
            }
            Self::BadDomainId(d) => write!(f, "VT-d: domain ID {d} not usable"),
            Self::PassThroughUnsupported => f.write_str("VT-d: no pass-through (ECAP.PT = 0)"),
            Self::Format(e) => write!(f, "VT-d: second-level format: {e:?}"),
            Self::LevelsUnsupported(l) => write!(f, "VT-d: {l}-level tables not in SAGAW"),
        }
    }
}

impl From<FormatError> for VtdError {
    fn from(e: FormatError) -> Self {
        Self::Format(e)
    }
}

/// Error code carried in [`iova_core::Error::Device`] for a queue error.
pub const DEVICE_ERROR_QUEUE: u32 = 0x1;
/// Error code carried in [`iova_core::Error::Device`] for a failed register
/// invalidation.
pub const DEVICE_ERROR_REGISTER: u32 = 0x2;

impl From<VtdError> for iova_core::Error {
    fn from(e: VtdError) -> Self {
        match e {
            VtdError::Timeout(_) => Self::Timeout,
            VtdError::NoMemory => Self::NoMemory,
            VtdError::FrameUnreachable(_) => Self::TableUnreachable,
            VtdError::QueueError { .. } => Self::Device(DEVICE_ERROR_QUEUE),
            VtdError::RegisterInvalidationFailed => Self::Device(DEVICE_ERROR_REGISTER),
            _ => Self::OutOfRange,
        }
    }
}

/// Driver settings.
#[derive(Debug, Clone, Copy)]
pub struct UnitConfig {
    /// Bytes of the register block (the DRHD's register set size; 4 KiB
    /// when the table does not say).
    pub register_size: usize,
    /// How many times a status is polled before [`VtdError::Timeout`].
    pub poll_limit: u32,
    /// Most page-selective descriptors one flush issues before it uses one
    /// domain-selective invalidation instead.
    pub psi_limit: usize,
}

impl Default for UnitConfig {
    fn default() -> Self {
        Self {
            register_size: 4096,
            poll_limit: 10_000_000,
            psi_limit: 16,
        }
    }
}

const FRAME: usize = 4096;

/// One VT-d remapping unit in legacy translation mode.
pub struct VtdUnit<M: Mmio, A: FrameAllocator> {
    pub(crate) regs: M,
    pub(crate) frames: A,
    pub(crate) features: Features,
    pub(crate) config: UnitConfig,
    root: PhysAddr,
    /// Context table of each bus (0: none yet).
    context_tables: spin::Mutex<[u64; 256]>,
    pub(crate) inval: spin::Mutex<Invalidation>,
    pub(crate) counters: Counters,
}

impl<M: Mmio, A: FrameAllocator> fmt::Debug for VtdUnit<M, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VtdUnit")
            .field("features", &self.features)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl<M: Mmio, A: FrameAllocator> VtdUnit<M, A> {
    /// Probes and initialises the unit behind `regs` (see the module docs).
    /// Translation stays off until [`enable_translation`](Self::enable_translation).
    pub fn new(regs: M, frames: A, config: UnitConfig) -> Result<Self, VtdError> {
        let features = Features::from_raw(
            regs.read32(regs::VER),
            regs.read64(regs::CAP),
            regs.read64(regs::ECAP),
        );
        let cap = features.cap;
        if features.max_levels().is_none() {
            return Err(VtdError::NoDmaTranslation);
        }
        if cap.domains() == 0 {
            return Err(VtdError::NoDomains);
        }
        if !(32..=64).contains(&cap.mgaw()) {
            return Err(VtdError::BadAddressWidth(cap.mgaw()));
        }
        let needed = features.register_span();
        if needed > config.register_size {
            return Err(VtdError::RegistersTooSmall {
                needed,
                have: config.register_size,
            });
        }
        let root = alloc_frame(&frames, cap.mgaw())?;
        let inval = match Invalidation::new(&frames, &features) {
            Ok(i) => i,
            Err(e) => {
                // SAFETY: allocated above, never published to the unit.
                unsafe { frames.free(root, FRAME) };
                return Err(e);
            }
        };
        let unit = Self {
            regs,
            frames,
            features,
            config,
            root,
            context_tables: spin::Mutex::new([0; 256]),
            inval: spin::Mutex::new(inval),
            counters: Counters::default(),
        };
        unit.take_over()?;
        Ok(unit)
    }

    fn take_over(&self) -> Result<(), VtdError> {
        // Firmware may have left the unit running; stop it before replacing
        // its tables and queue.
        if self.gsts() & regs::G_TE != 0 {
            self.global_command(regs::G_TE, false)?;
        }
        if self.gsts() & regs::G_QIE != 0 {
            self.global_command(regs::G_QIE, false)?;
        }
        self.regs
            .write64(regs::RTADDR, self.root.0 | regs::RTADDR_TTM_LEGACY);
        self.one_shot(regs::G_SRTP, "root table pointer")?;
        self.inval.lock().enable(self)?;
        self.submit(&[
            Descriptor::context(ContextScope::Global),
            Descriptor::iotlb(IotlbScope::Global, false, false),
        ])
    }

    /// What the unit can do.
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// The driver's counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Physical address of the root table.
    pub fn root_table(&self) -> PhysAddr {
        self.root
    }

    /// Whether invalidations go through the queue (ECAP.QI) rather than the
    /// registers.
    pub fn queued_invalidation(&self) -> bool {
        self.inval.lock().is_queued()
    }

    /// The deepest second-level format the unit walks, limited to
    /// `max_levels` (e.g. 4 to stay with 48-bit tables).
    pub fn second_level_format(&self, max_levels: usize) -> Result<SecondLevel, VtdError> {
        let levels = (3..=max_levels.min(5))
            .rev()
            .find(|&l| self.features.cap.supports_levels(l))
            .ok_or(VtdError::LevelsUnsupported(max_levels))?;
        Ok(SecondLevel::for_unit(self.features.cap, levels)?)
    }

    pub(crate) fn gsts(&self) -> u32 {
        self.regs.read32(regs::GSTS)
    }

    fn poll(&self, what: &'static str, mut done: impl FnMut() -> bool) -> Result<(), VtdError> {
        for _ in 0..self.config.poll_limit.max(1) {
            if done() {
                return Ok(());
            }
            core::hint::spin_loop();
        }
        if done() {
            Ok(())
        } else {
            Err(VtdError::Timeout(what))
        }
    }

    /// Turns an enable bit of GCMD (TE, QIE) on or off and waits for GSTS to agree.
    pub(crate) fn global_command(&self, bit: u32, on: bool) -> Result<(), VtdError> {
        let persistent = self.gsts() & !regs::G_ONE_SHOT;
        let value = if on {
            persistent | bit
        } else {
            persistent & !bit
        };
        self.regs.write32(regs::GCMD, value);
        self.poll("global status", || (self.gsts() & bit != 0) == on)
    }

    /// Issues a one-shot command (SRTP) and waits for its status bit.
    fn one_shot(&self, bit: u32, what: &'static str) -> Result<(), VtdError> {
        let persistent = self.gsts() & !regs::G_ONE_SHOT;
        self.regs.write32(regs::GCMD, persistent | bit);
        self.poll(what, || self.gsts() & bit != 0)
    }

    /// Flushes the unit's write buffer (needed after table updates when
    /// CAP.RWBF is set; a no-op otherwise).
    pub fn flush_write_buffer(&self) -> Result<(), VtdError> {
        if !self.features.cap.rwbf() {
            return Ok(());
        }
        let persistent = self.gsts() & !regs::G_ONE_SHOT;
        self.regs.write32(regs::GCMD, persistent | regs::G_WBF);
        self.counters
            .write_buffer_flushes
            .fetch_add(1, Ordering::Relaxed);
        self.poll("write buffer flush", || self.gsts() & regs::G_WBF == 0)
    }

    /// Turns DMA remapping on: from now on devices without a present
    /// context entry are blocked.
    pub fn enable_translation(&self) -> Result<(), VtdError> {
        self.global_command(regs::G_TE, true)
    }

    /// Turns DMA remapping off (all DMA passes untranslated).
    pub fn disable_translation(&self) -> Result<(), VtdError> {
        self.global_command(regs::G_TE, false)
    }

    /// Whether remapping is on (GSTS.TES).
    pub fn translation_enabled(&self) -> bool {
        self.gsts() & regs::G_TE != 0
    }

    fn entry(&self, table: u64, index: usize) -> &AtomicU64 {
        let p = self.frames.phys_to_virt(PhysAddr(table)).cast::<u64>();
        // SAFETY: `table` is a 4 KiB frame this unit allocated (root or
        // context table) and never frees while the unit lives; `index` < 512
        // (callers pass 2 * entry + half with entry < 256); the frame
        // allocator makes it valid for atomic access, 8-byte aligned.
        unsafe { AtomicU64::from_ptr(p.add(index & 511)) }
    }

    /// The context entry of `dev` as the tables in memory hold it.
    pub fn context(&self, dev: Bdf) -> ContextState {
        let tables = self.context_tables.lock();
        let table = tables[usize::from(dev.bus)];
        if table == 0 {
            return ContextState::NotPresent;
        }
        let i = 2 * usize::from(dev.devfn());
        ContextState::decode([
            self.entry(table, i).load(Ordering::Acquire),
            self.entry(table, i + 1).load(Ordering::Acquire),
        ])
    }

    /// Sets what happens to `dev`'s DMA, in the order the specification
    /// requires: a present entry is first made not present and its cached
    /// copies and translations invalidated (one batch, one wait); then the
    /// new entry is written, high half first, so the unit never sees a
    /// present entry with a half-written domain or width. With CAP.CM a
    /// newly present entry is invalidated too (the unit may have cached the
    /// not-present one); otherwise only the write buffer is flushed.
    ///
    /// `fpd` disables fault recording for the device.
    pub fn set_context(&self, dev: Bdf, state: ContextState, fpd: bool) -> Result<(), VtdError> {
        let cap = self.features.cap;
        match state {
            ContextState::PassThrough { did, aw } => {
                if !self.features.ecap.pass_through() {
                    return Err(VtdError::PassThroughUnsupported);
                }
                self.check_did(did)?;
                if !cap.supports_levels(usize::from(aw) + 2) {
                    return Err(VtdError::LevelsUnsupported(usize::from(aw) + 2));
                }
            }
            ContextState::Translated { did, root, aw } => {
                self.check_did(did)?;
                if !cap.supports_levels(usize::from(aw) + 2) {
                    return Err(VtdError::LevelsUnsupported(usize::from(aw) + 2));
                }
                if root & 0xfff != 0 || root >> cap.mgaw().min(63) != 0 {
                    return Err(VtdError::FrameUnreachable(root));
                }
            }
            ContextState::NotPresent => {}
            ContextState::Other { .. } => return Err(VtdError::LevelsUnsupported(0)),
        }
        let mut tables = self.context_tables.lock();
        let bus = usize::from(dev.bus);
        if tables[bus] == 0 {
            if state == ContextState::NotPresent {
                return Ok(());
            }
            let table = alloc_frame(&self.frames, cap.mgaw())?;
            let [lo, hi] = root_entry(table.0);
            self.entry(self.root.0, 2 * bus + 1)
                .store(hi, Ordering::Release);
            self.entry(self.root.0, 2 * bus)
                .store(lo, Ordering::Release);
            tables[bus] = table.0;
            fence(Ordering::SeqCst);
            // A unit in caching mode may hold the not-present root entry
            // (as context-cache entries of the bus).
            if cap.caching_mode() {
                self.submit(&[Descriptor::context(ContextScope::Global)])?;
            }
        }
        let table = tables[bus];
        let i = 2 * usize::from(dev.devfn());
        let (lo, hi) = (self.entry(table, i), self.entry(table, i + 1));
        let old = ContextState::decode([lo.load(Ordering::Acquire), hi.load(Ordering::Acquire)]);
        if let Some(old_did) = old.did() {
            lo.store(0, Ordering::Release);
            fence(Ordering::SeqCst);
            self.flush_write_buffer()?;
            self.submit(&[
                Descriptor::context(ContextScope::Device {
                    did: old_did,
                    sid: dev.source_id(),
                    function_mask: 0,
                }),
                Descriptor::iotlb(IotlbScope::Domain(old_did), false, false),
            ])?;
        }
        if let Some(did) = state.did() {
            let [new_lo, new_hi] = state.encode(fpd);
            hi.store(new_hi, Ordering::Release);
            fence(Ordering::SeqCst);
            lo.store(new_lo, Ordering::Release);
            fence(Ordering::SeqCst);
            if cap.caching_mode() {
                // Not-present entries are cached with domain ID 0.
                self.submit(&[
                    Descriptor::context(ContextScope::Device {
                        did: 0,
                        sid: dev.source_id(),
                        function_mask: 0,
                    }),
                    Descriptor::iotlb(IotlbScope::Domain(did), false, false),
                ])?;
            } else {
                self.flush_write_buffer()?;
            }
        }
        Ok(())
    }

    pub(crate) fn check_did(&self, did: u16) -> Result<(), VtdError> {
        if u32::from(did) >= self.features.cap.domains()
            || (did == 0 && self.features.cap.caching_mode())
        {
            return Err(VtdError::BadDomainId(did));
        }
        Ok(())
    }

    /// Reads every fault record with F set (starting at FSTS.FRI), hands it
    /// to `sink` and clears it; clears and reports a primary fault overflow.
    pub fn drain_faults(&self, mut sink: impl FnMut(FaultRecord)) -> FaultSummary {
        let cap = self.features.cap;
        let (base, n) = (cap.fault_record_offset(), cap.fault_records());
        let fsts = self.regs.read32(regs::FSTS);
        let first = (fsts >> regs::FSTS_FRI_SHIFT & 0xff) as usize % n;
        let mut summary = FaultSummary::default();
        for k in 0..n {
            let off = base + 16 * ((first + k) % n);
            let hi = self.regs.read64(off + 8);
            if hi & regs::FRCD_F == 0 {
                continue;
            }
            let lo = self.regs.read64(off);
            // F is write-1-to-clear in bit 31 of the record's last dword.
            self.regs.write32(off + 12, 1 << 31);
            sink(FaultRecord::decode(lo, hi));
            summary.records += 1;
        }
        if fsts & regs::FSTS_PFO != 0 {
            self.regs.write32(regs::FSTS, regs::FSTS_PFO);
            summary.overflow = true;
        }
        self.counters
            .faults
            .fetch_add(summary.records as u64, Ordering::Relaxed);
        summary
    }

    /// Reads a 32-bit word of a frame this unit owns (the wait status).
    pub(crate) fn read_status(&self, pa: PhysAddr) -> u32 {
        let p = self.frames.phys_to_virt(pa).cast::<u32>();
        // SAFETY: `pa` is the status frame the invalidation state allocated
        // and keeps for the unit's life; 4-byte aligned.
        unsafe { AtomicU32::from_ptr(p) }.load(Ordering::Acquire)
    }

    pub(crate) fn poll_limit(&self) -> u32 {
        self.config.poll_limit.max(1)
    }
}

impl<M: Mmio, A: FrameAllocator> Drop for VtdUnit<M, A> {
    fn drop(&mut self) {
        // Stop the unit walking memory we are about to free; if it does not
        // stop, keep (leak) the memory rather than free what it may read.
        let stopped = self.global_command(regs::G_TE, false).is_ok()
            && (!self.inval.lock().is_queued() || self.global_command(regs::G_QIE, false).is_ok());
        if !stopped {
            return;
        }
        let tables = self.context_tables.lock();
        for &t in tables.iter().filter(|&&t| t != 0) {
            // SAFETY: allocated by `set_context`, unreachable now that the
            // unit is off and the root table goes with it.
            unsafe { self.frames.free(PhysAddr(t), FRAME) };
        }
        // SAFETY: as above.
        unsafe { self.frames.free(self.root, FRAME) };
        self.inval.lock().free(&self.frames);
    }
}

/// A zeroed 4 KiB frame the unit can address.
pub(crate) fn alloc_frame<A: FrameAllocator>(frames: &A, mgaw: u32) -> Result<PhysAddr, VtdError> {
    let pa = frames.alloc_zeroed(FRAME).ok_or(VtdError::NoMemory)?;
    if pa.0 & 0xfff != 0 || (mgaw < 64 && pa.0 >> mgaw != 0) {
        // SAFETY: just allocated, never published.
        unsafe { frames.free(pa, FRAME) };
        return Err(VtdError::FrameUnreachable(pa.0));
    }
    Ok(pa)
}

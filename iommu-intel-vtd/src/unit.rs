//! One remapping unit: probe and bring-up, global commands, domain IDs,
//! shutdown. Its root, context and PASID tables are in [`tables`], its
//! fault recording in [`crate::fault`], its invalidation in
//! [`crate::queue`].
//!
//! [`VtdUnit::new`] reads VER/CAP/ECAP, refuses what it cannot drive, takes
//! the unit over (translation and queued invalidation off), installs an empty
//! root table (every device blocked once translation is on) in legacy or
//! scalable mode, enables queued invalidation where ECAP.QI offers it, and
//! invalidates the context cache, PASID cache and IOTLB globally. Devices
//! are then given what their DMA gets: a domain ([`VtdUnit::attach`], see
//! [`crate::domain`]), pass-through ([`VtdUnit::pass_through`]) or nothing
//! ([`VtdUnit::block`]), in scalable mode also per PASID; and
//! [`VtdUnit::enable_translation`] turns remapping on. Dropping a unit whose
//! translation is on leaves it on; [`VtdUnit::shutdown`] turns it off.

pub mod tables;

use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use iova_core::formats::x86_64::X86_64;
use iova_core::hw::WaitBudget;
use iova_core::{CacheMaintenance, FrameAllocator, PhysAddr};

use crate::caps::Features;
use crate::context::{self, scalable};
use crate::counters::Counters;
use crate::queue::Invalidation;
use crate::regs::{self, Mmio};
use crate::second_level::{FormatError, SecondLevel};

use crate::error::Wait;
pub use crate::error::{REJECTED_BY_QUEUE, REJECTED_BY_REGISTER, VtdError};

/// Driver settings.
#[derive(Clone, Copy)]
pub struct UnitConfig {
    /// Bytes of the register block (the DRHD's register set size; 4 KiB
    /// when the table does not say).
    pub register_size: usize,
    /// How long a status is polled before [`VtdError::Timeout`] (every
    /// wait of the unit: global commands, queue space, invalidation waits,
    /// register-based invalidations).
    pub wait: WaitBudget,
    /// Most page-selective descriptors one flush issues before it uses one
    /// domain-selective invalidation instead.
    pub psi_limit: usize,
    /// Scalable translation mode (needs ECAP.SMTS): PASID tables, and
    /// first-level translation where ECAP.FLTS offers it.
    pub scalable: bool,
    /// How to write CPU caches back before the unit reads its root,
    /// context and PASID tables and the invalidation queue, for units whose
    /// walks do not snoop (ECAP.C = 0, as QEMU reports). Required for such a
    /// unit. Its [`VtdDomain`](crate::VtdDomain)s' tables get it too; tables
    /// programmed with [`VtdUnit::set_context`] need the same (build them
    /// with `PageTable::with_cache`).
    pub walk_cache: Option<&'static dyn CacheMaintenance>,
    /// The platform's DMA address width (the DMAR's host address width):
    /// the unit's tables and every output address stay below it. `None`:
    /// the unit's MGAW.
    pub address_width: Option<u32>,
}

impl fmt::Debug for UnitConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnitConfig")
            .field("register_size", &self.register_size)
            .field("wait", &self.wait)
            .field("psi_limit", &self.psi_limit)
            .field("scalable", &self.scalable)
            .field("walk_cache", &self.walk_cache.is_some())
            .field("address_width", &self.address_width)
            .finish()
    }
}

impl Default for UnitConfig {
    fn default() -> Self {
        Self {
            register_size: 4096,
            wait: WaitBudget::DEFAULT,
            psi_limit: 16,
            scalable: false,
            walk_cache: None,
            address_width: None,
        }
    }
}

pub(crate) const FRAME: usize = 4096;

/// Domain IDs the driver hands out (to the domains it builds, for
/// pass-through, and through [`VtdUnit::alloc_domain_id`]) run from 1 up to
/// CAP.ND's count, at most this many; IDs from here up, where ND has them,
/// are never handed out.
pub const MAX_ALLOCATED_DIDS: u32 = 4096;

/// The domain IDs in use.
struct DomainIds {
    used: [u64; MAX_ALLOCATED_DIDS as usize / 64],
    limit: u32,
    /// The ID of pass-through entries, once one was made.
    pass_through: Option<u16>,
}

impl DomainIds {
    fn new(domains: u32) -> Self {
        let mut used = [0; MAX_ALLOCATED_DIDS as usize / 64];
        // ID 0 is never handed out: caching mode reserves it (it tags
        // cached not-present entries).
        used[0] = 1;
        Self {
            used,
            limit: domains.min(MAX_ALLOCATED_DIDS),
            pass_through: None,
        }
    }

    fn alloc(&mut self) -> Option<u16> {
        let did = (1..self.limit).find(|&d| self.used[d as usize / 64] & 1 << (d % 64) == 0)?;
        self.used[did as usize / 64] |= 1 << (did % 64);
        Some(did as u16)
    }

    fn free(&mut self, did: u16) {
        if did != 0 && u32::from(did) < self.limit {
            self.used[usize::from(did) / 64] &= !(1 << (did % 64));
        }
    }
}

/// One VT-d remapping unit in legacy translation mode.
pub struct VtdUnit<M: Mmio, A: FrameAllocator> {
    pub(crate) regs: M,
    pub(crate) frames: A,
    pub(crate) features: Features,
    pub(crate) config: UnitConfig,
    root: PhysAddr,
    /// Context table of each bus (legacy: index = bus), or of each half bus
    /// (scalable: index = 2 * bus + devfn / 128); 0: none yet.
    context_tables: spin::Mutex<[u64; 512]>,
    scalable: bool,
    /// Physical addresses the unit is given (tables, output addresses) are
    /// below `1 << oa_bits`.
    oa_bits: u32,
    /// Cache maintenance for a walker without ECAP.C; `None` when coherent.
    cache: Option<&'static dyn CacheMaintenance>,
    pub(crate) inval: spin::Mutex<Invalidation>,
    pub(crate) counters: Counters,
    dids: spin::Mutex<DomainIds>,
    /// An [`InterruptRemapping`](crate::intremap::InterruptRemapping) of
    /// this unit is alive.
    pub(crate) ir_live: AtomicBool,
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
        let features = Features::read(&regs)?;
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
        let oa_bits = config
            .address_width
            .map_or(cap.mgaw(), |w| w.min(cap.mgaw()));
        if oa_bits < 32 {
            return Err(VtdError::BadAddressWidth(oa_bits));
        }
        // Scalable mode's PASID-cache and PASID-based IOTLB invalidations
        // exist only as queued descriptors.
        if config.scalable
            && !(features.ecap.scalable_mode() && features.ecap.queued_invalidation())
        {
            return Err(VtdError::ScalableUnsupported);
        }
        if !features.ecap.coherent() && config.walk_cache.is_none() {
            return Err(VtdError::NonCoherentWalker);
        }
        let needed = features.register_span();
        let have = regs.size().min(config.register_size);
        if needed > have {
            return Err(VtdError::RegistersTooSmall { needed, have });
        }
        let root = alloc_frame(&frames, oa_bits)?;
        let inval = match Invalidation::new(&frames, oa_bits, config.scalable, &features) {
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
            context_tables: spin::Mutex::new([0; 512]),
            scalable: config.scalable,
            oa_bits,
            cache: if features.ecap.coherent() {
                None
            } else {
                config.walk_cache
            },
            inval: spin::Mutex::new(inval),
            counters: Counters::default(),
            dids: spin::Mutex::new(DomainIds::new(cap.domains())),
            ir_live: AtomicBool::new(false),
        };
        unit.take_over()?;
        Ok(unit)
    }

    fn take_over(&self) -> Result<(), VtdError> {
        // Firmware may have left the unit running; stop it before replacing
        // its tables and queue.
        if self.gsts()? & regs::G_TE != 0 {
            self.global_command(regs::G_TE, false, Wait::TranslationEnable)?;
        }
        if self.gsts()? & regs::G_QIE != 0 {
            self.global_command(regs::G_QIE, false, Wait::QueuedInvalidationEnable)?;
        }
        let ttm = if self.scalable {
            regs::RTADDR_TTM_SCALABLE
        } else {
            regs::RTADDR_TTM_LEGACY
        };
        // The zeroed root table (and the queue) must be in memory before
        // the unit reads them.
        self.publish(self.root.0, FRAME);
        self.regs.write64(regs::RTADDR, self.root.0 | ttm)?;
        self.one_shot(regs::G_SRTP, Wait::RootTablePointer)?;
        self.inval.lock().enable(self)?;
        self.invalidate_all()
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
    /// `max_levels` (e.g. 4 to stay with 48-bit tables); IOVAs below
    /// `1 << MGAW`.
    pub fn second_level_format(&self, max_levels: usize) -> Result<SecondLevel, VtdError> {
        let levels = (3..=max_levels.min(5))
            .rev()
            .find(|&l| self.features.cap.supports_levels(l))
            .ok_or(VtdError::LevelsUnsupported(max_levels))?;
        Ok(
            SecondLevel::new(levels, self.features.cap.sllps(), self.oa_bits.min(52))?
                .with_mgaw(self.features.cap.mgaw()),
        )
    }

    /// Physical address width the unit is given: MGAW, or less where
    /// [`UnitConfig::address_width`] says so.
    pub fn address_width(&self) -> u32 {
        self.oa_bits
    }

    /// Whether the unit runs in scalable mode.
    pub fn scalable(&self) -> bool {
        self.scalable
    }

    /// The first-level format (x86-64 4-level paging, 1 GiB pages where
    /// CAP.FL1GP) for [`ContextState::FirstLevel`](crate::ContextState::FirstLevel) domains.
    pub fn first_level_format(&self) -> Result<X86_64, VtdError> {
        if !self.scalable || !self.features.ecap.first_level_translation() {
            return Err(VtdError::FirstLevelUnsupported);
        }
        X86_64::new(4, self.features.cap.first_level_1g(), self.oa_bits.min(52))
            .map_err(|_| VtdError::BadAddressWidth(self.oa_bits))
    }

    /// Refuses a second-level format the unit cannot walk: a depth not in
    /// SAGAW, input addresses beyond MGAW, output addresses beyond the
    /// unit's address width, superpages beyond CAP.SLLPS, SNP without
    /// ECAP.SC, or second level in scalable mode without ECAP.SLTS.
    pub fn check_second_level(&self, fmt: &SecondLevel) -> Result<(), VtdError> {
        use iova_core::pt::PtFormat;
        let (cap, ecap) = (self.features.cap, self.features.ecap);
        if self.scalable && !ecap.second_level_translation() {
            return Err(VtdError::SecondLevelUnsupported);
        }
        if !cap.supports_levels(fmt.levels()) {
            return Err(VtdError::LevelsUnsupported(fmt.levels()));
        }
        if fmt.ia_bits() > cap.mgaw() {
            return Err(FormatError::BadAddressWidth(fmt.ia_bits()).into());
        }
        if fmt.oa_bits() > self.oa_bits {
            return Err(FormatError::BadAddressWidth(fmt.oa_bits()).into());
        }
        if fmt.sllps() & !cap.sllps() != 0 {
            return Err(FormatError::SuperpagesUnsupported.into());
        }
        if fmt.snoop() && !ecap.snoop_control() {
            return Err(FormatError::SnoopUnsupported.into());
        }
        Ok(())
    }

    /// Cache maintenance for what the unit walks; `None` when it snoops.
    pub(crate) fn walk_cache(&self) -> Option<&'static dyn CacheMaintenance> {
        self.cache
    }

    /// Makes CPU writes to `[pa, pa + len)` visible to a walker that does
    /// not snoop CPU caches (ECAP.C = 0); nothing on a coherent unit.
    pub(crate) fn publish(&self, pa: u64, len: usize) {
        if let Some(c) = self.cache {
            c.clean(PhysAddr(pa), len as u64);
            c.complete();
        }
    }

    pub(crate) fn gsts(&self) -> Result<u32, VtdError> {
        Ok(self.regs.read32(regs::GSTS)?)
    }

    /// Polls `done` within [`UnitConfig::wait`]; a refused register access
    /// ends the wait with its error.
    pub(crate) fn poll(
        &self,
        what: Wait,
        mut done: impl FnMut() -> Result<bool, VtdError>,
    ) -> Result<(), VtdError> {
        self.config
            .wait
            .until(|| match done() {
                Ok(false) => None,
                Ok(true) => Some(Ok(())),
                Err(e) => Some(Err(e)),
            })
            .map_err(|_| VtdError::Timeout(what))?
    }

    /// Turns an enable bit of GCMD (TE, QIE) on or off and waits (`what`) for
    /// GSTS to agree.
    pub(crate) fn global_command(&self, bit: u32, on: bool, what: Wait) -> Result<(), VtdError> {
        let persistent = self.gsts()? & !regs::G_ONE_SHOT;
        let value = if on {
            persistent | bit
        } else {
            persistent & !bit
        };
        self.regs.write32(regs::GCMD, value)?;
        self.poll(what, || Ok((self.gsts()? & bit != 0) == on))
    }

    /// Issues a one-shot command (SRTP) and waits for its status bit.
    pub(crate) fn one_shot(&self, bit: u32, what: Wait) -> Result<(), VtdError> {
        let persistent = self.gsts()? & !regs::G_ONE_SHOT;
        self.regs.write32(regs::GCMD, persistent | bit)?;
        self.poll(what, || Ok(self.gsts()? & bit != 0))
    }

    /// Flushes the unit's write buffer (needed after table updates when
    /// CAP.RWBF is set; a no-op otherwise).
    pub fn flush_write_buffer(&self) -> Result<(), VtdError> {
        if !self.features.cap.rwbf() {
            return Ok(());
        }
        let persistent = self.gsts()? & !regs::G_ONE_SHOT;
        self.regs.write32(regs::GCMD, persistent | regs::G_WBF)?;
        self.counters.write_buffer_flushes.incr();
        self.poll(Wait::WriteBufferFlush, || {
            Ok(self.gsts()? & regs::G_WBF == 0)
        })
    }

    /// Turns DMA remapping on: from now on devices without a present
    /// context entry are blocked.
    pub fn enable_translation(&self) -> Result<(), VtdError> {
        self.global_command(regs::G_TE, true, Wait::TranslationEnable)
    }

    /// Turns DMA remapping off (all DMA passes untranslated).
    pub fn disable_translation(&self) -> Result<(), VtdError> {
        self.global_command(regs::G_TE, false, Wait::TranslationEnable)
    }

    /// The global status register (GSTS) as the unit reports it; the
    /// [`regs`] `G_*` constants name its bits (TES, IRTPS, IRES,
    /// CFIS, ...). Reading it has no side effect.
    ///
    /// # Errors
    ///
    /// [`VtdError::Register`] if the register access is refused.
    pub fn global_status(&self) -> Result<u32, VtdError> {
        self.gsts()
    }

    /// Whether remapping is on (GSTS.TES).
    pub fn translation_enabled(&self) -> Result<bool, VtdError> {
        Ok(self.gsts()? & regs::G_TE != 0)
    }

    fn entry(&self, table: u64, index: usize) -> &AtomicU64 {
        let p = self.frames.phys_to_virt(PhysAddr(table)).cast::<u64>();
        // SAFETY: `table` is a 4 KiB frame this unit allocated (root or
        // context table) and never frees while the unit lives; `index` < 512
        // (callers pass 2 * entry + half with entry < 256); the frame
        // allocator makes it valid for atomic access, 8-byte aligned.
        unsafe { AtomicU64::from_ptr(p.add(index & 511)) }
    }

    /// A domain ID that no domain of this unit holds, for entries written
    /// with [`set_context`](Self::set_context); it stays taken until
    /// [`free_domain_id`](Self::free_domain_id).
    pub fn alloc_domain_id(&self) -> Result<u16, VtdError> {
        self.alloc_did()
    }

    /// Gives back a domain ID from [`alloc_domain_id`](Self::alloc_domain_id).
    ///
    /// # Safety
    ///
    /// `did` came from `alloc_domain_id` and was not freed since, no present
    /// entry carries it, and the unit's caches hold nothing tagged with it
    /// (every entry that carried it was replaced through this unit, and
    /// every translation of its table invalidated): the next domain given
    /// the ID must not find anything of the old one.
    pub unsafe fn free_domain_id(&self, did: u16) {
        self.free_did(did)
    }

    pub(crate) fn alloc_did(&self) -> Result<u16, VtdError> {
        self.dids.lock().alloc().ok_or(VtdError::DomainIdsExhausted)
    }

    pub(crate) fn free_did(&self, did: u16) {
        let mut ids = self.dids.lock();
        if ids.pass_through != Some(did) {
            ids.free(did);
        }
    }

    /// Reads a 32-bit word of a frame this unit owns (the wait status).
    pub(crate) fn read_status(&self, pa: PhysAddr) -> u32 {
        let p = self.frames.phys_to_virt(pa).cast::<u32>();
        // SAFETY: `pa` is the status frame the invalidation state allocated
        // and keeps for the unit's life; 4-byte aligned.
        unsafe { AtomicU32::from_ptr(p) }.load(Ordering::Acquire)
    }
}

impl<M: Mmio, A: FrameAllocator> VtdUnit<M, A> {
    /// Turns remapping off (from now on DMA is untranslated, and nothing is
    /// blocked) and queued invalidation off, then frees the unit's tables
    /// and queue. Dropping a unit whose translation is on keeps it on and
    /// leaks them instead, so that devices stay confined.
    pub fn shutdown(self) -> Result<(), VtdError> {
        self.disable_translation()?;
        drop(self);
        Ok(())
    }
}

impl<M: Mmio, A: FrameAllocator> Drop for VtdUnit<M, A> {
    fn drop(&mut self) {
        // With translation on, the unit keeps walking these tables and
        // devices stay confined by them: keep (leak) them rather than turn
        // protection off behind the caller's back (`shutdown` does that).
        // A refused GSTS read leaves the state unknown: the unit may still
        // walk them, so they are leaked too.
        match self.translation_enabled() {
            Ok(false) => {}
            Ok(true) => return,
            Err(e) => {
                iova_core::warn_event!(
                    "VT-d: unit dropped, status unreadable ({}): tables leaked",
                    e
                );
                return;
            }
        }
        // Stop the queue before freeing it; if it does not stop, leak.
        if self.inval.lock().is_queued()
            && self
                .global_command(regs::G_QIE, false, Wait::QueuedInvalidationEnable)
                .is_err()
        {
            return;
        }
        let tables = self.context_tables.lock();
        for &t in tables.iter().filter(|&&t| t != 0) {
            if self.scalable {
                for e in 0..128 {
                    let ctx = self.entry(t, 4 * e).load(Ordering::Acquire);
                    if ctx & scalable::CTX_P == 0 {
                        continue;
                    }
                    let dir = ctx & context::ADDR_MASK;
                    for d in 0..512 {
                        let de = self.entry(dir, d).load(Ordering::Acquire);
                        if de & scalable::PDE_P != 0 {
                            // SAFETY: a PASID table allocated by
                            // `set_scalable`, unreachable now.
                            unsafe { self.frames.free(PhysAddr(de & context::ADDR_MASK), FRAME) };
                        }
                    }
                    // SAFETY: the device's PASID directory, allocated by
                    // `new_scalable_device`, unreachable now.
                    unsafe { self.frames.free(PhysAddr(dir), FRAME) };
                }
            }
            // SAFETY: a context table allocated by `set_legacy` or
            // `new_scalable_device`, unreachable now that the unit is off
            // and the root table goes with it.
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

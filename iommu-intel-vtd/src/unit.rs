//! One remapping unit: probe, root, context and PASID tables, global
//! commands, fault recording.
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

use core::fmt;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use iova_core::formats::x86_64::X86_64;
use iova_core::{CacheMaintenance, DeviceError, FrameAllocator, PhysAddr};

use crate::acpi::dmar::Bdf;
use crate::caps::Features;
use crate::context::{self, ContextState, root_entry, scalable};
use crate::counters::Counters;
use crate::descriptor::{ContextScope, Descriptor, IotlbScope, PasidCacheScope, PasidIotlbScope};
use crate::domain::Endpoint;
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
    /// Scalable mode was asked of a unit without ECAP.SMTS (or without
    /// queued invalidation, which scalable mode needs).
    ScalableUnsupported,
    /// The unit does not snoop CPU caches when it walks tables (ECAP.C = 0)
    /// and [`UnitConfig::walk_cache`] gives no way to clean them.
    NonCoherentWalker,
    /// A PASID other than 0 was asked of a unit without ECAP.PASID.
    PasidUnsupported,
    /// The PASID is beyond what the unit (ECAP.PSS) or the driver's
    /// one-page PASID directory supports.
    PasidOutOfRange(u32),
    /// First-level translation needs scalable mode and ECAP.FLTS.
    FirstLevelUnsupported,
    /// Second-level translation in scalable mode needs ECAP.SLTS.
    SecondLevelUnsupported,
    /// A second-level table of this format cannot be walked by the unit.
    Format(FormatError),
    /// The table's depth is not in SAGAW.
    LevelsUnsupported(usize),
    /// No domain ID left to hand out (CAP.ND's count, at most
    /// [`MAX_ALLOCATED_DIDS`]).
    DomainIdsExhausted,
    /// The domain is attached to [`MAX_ENDPOINTS`](crate::domain::MAX_ENDPOINTS)
    /// endpoints already.
    DomainFull,
    /// The endpoint's entry does not point at the domain it was to be
    /// detached from.
    NotAttached(Endpoint),
    /// The domain's tables are not walked by this unit (it was built for
    /// other units).
    ForeignDomain,
    /// A first-level domain translates the requests of one PASID (its
    /// invalidations are tagged with it), not those of another.
    PasidMismatch {
        /// The PASID the domain was built for.
        domain: u32,
        /// The PASID asked for.
        requested: u32,
    },
    /// The page-table engine could not build the domain's table.
    Table(iova_core::Error),
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
            Self::ScalableUnsupported => f.write_str("VT-d: no scalable mode (ECAP.SMTS = 0)"),
            Self::NonCoherentWalker => f.write_str(
                "VT-d: table walks are not coherent (ECAP.C = 0) and no cache maintenance was given",
            ),
            Self::PasidUnsupported => f.write_str("VT-d: no PASID support (ECAP.PASID = 0)"),
            Self::PasidOutOfRange(p) => write!(f, "VT-d: PASID {p:#x} out of range"),
            Self::FirstLevelUnsupported => {
                f.write_str("VT-d: no first-level translation (scalable mode and ECAP.FLTS)")
            }
            Self::SecondLevelUnsupported => {
                f.write_str("VT-d: no second-level translation in scalable mode (ECAP.SLTS = 0)")
            }
            Self::Format(e) => write!(f, "VT-d: second-level format: {e:?}"),
            Self::LevelsUnsupported(l) => write!(f, "VT-d: {l}-level tables not in SAGAW"),
            Self::DomainIdsExhausted => f.write_str("VT-d: no domain ID left"),
            Self::DomainFull => f.write_str("VT-d: domain attached to too many endpoints"),
            Self::NotAttached(e) => write!(f, "VT-d: {e} is not attached to that domain"),
            Self::ForeignDomain => f.write_str("VT-d: the domain is not walked by this unit"),
            Self::PasidMismatch { domain, requested } => write!(
                f,
                "VT-d: first-level domain of PASID {domain:#x} attached as PASID {requested:#x}"
            ),
            Self::Table(e) => write!(f, "VT-d: page table: {e}"),
        }
    }
}

impl From<FormatError> for VtdError {
    fn from(e: FormatError) -> Self {
        Self::Format(e)
    }
}

/// [`DeviceError::CommandRejected`] reason for a descriptor the unit
/// refused (FSTS.IQE).
pub const REJECTED_BY_QUEUE: u8 = 1;
/// [`DeviceError::CommandRejected`] reason for a register-based invalidation
/// that reported failure.
pub const REJECTED_BY_REGISTER: u8 = 2;

impl From<VtdError> for iova_core::Error {
    /// Each error maps to the core error naming the same cause.
    fn from(e: VtdError) -> Self {
        use iova_core::Error as E;
        match e {
            VtdError::Timeout(_) => E::Timeout,
            VtdError::NoMemory => E::NoMemory,
            VtdError::FrameUnreachable(_) => E::TableUnreachable,
            VtdError::QueueError { descriptor, .. } => E::Device(DeviceError::CommandRejected {
                opcode: descriptor.kind() as u8,
                reason: REJECTED_BY_QUEUE,
            }),
            VtdError::RegisterInvalidationFailed => E::Device(DeviceError::CommandRejected {
                opcode: 0,
                reason: REJECTED_BY_REGISTER,
            }),
            VtdError::BadDomainId(d) => E::Device(DeviceError::IdOutOfRange(u32::from(d))),
            VtdError::PasidOutOfRange(p) | VtdError::PasidMismatch { requested: p, .. } => {
                E::Device(DeviceError::IdOutOfRange(p))
            }
            VtdError::DomainIdsExhausted => E::Device(DeviceError::IdsExhausted),
            VtdError::DomainFull => E::Device(DeviceError::DomainFull),
            VtdError::NotAttached(e) => {
                E::Device(DeviceError::NotAttached(u32::from(e.dev.source_id())))
            }
            VtdError::Table(e) => e,
            VtdError::NonCoherentWalker => E::Device(DeviceError::NonCoherentWalker),
            VtdError::NoDmaTranslation
            | VtdError::NoDomains
            | VtdError::PassThroughUnsupported
            | VtdError::ScalableUnsupported
            | VtdError::PasidUnsupported
            | VtdError::FirstLevelUnsupported
            | VtdError::SecondLevelUnsupported
            | VtdError::ForeignDomain => E::Device(DeviceError::Unsupported),
            VtdError::RegistersTooSmall { .. }
            | VtdError::BadAddressWidth(_)
            | VtdError::Format(_)
            | VtdError::LevelsUnsupported(_) => E::Device(DeviceError::BadGeometry),
        }
    }
}

/// Driver settings.
#[derive(Clone, Copy)]
pub struct UnitConfig {
    /// Bytes of the register block (the DRHD's register set size; 4 KiB
    /// when the table does not say).
    pub register_size: usize,
    /// How many times a status is polled before [`VtdError::Timeout`].
    pub poll_limit: u32,
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
            .field("poll_limit", &self.poll_limit)
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
            poll_limit: 10_000_000,
            psi_limit: 16,
            scalable: false,
            walk_cache: None,
            address_width: None,
        }
    }
}

const FRAME: usize = 4096;

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
        let features = Features::read(&regs);
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
        let have = regs
            .size()
            .map_or(config.register_size, |s| s.min(config.register_size));
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
        let ttm = if self.scalable {
            regs::RTADDR_TTM_SCALABLE
        } else {
            regs::RTADDR_TTM_LEGACY
        };
        // The zeroed root table (and the queue) must be in memory before
        // the unit reads them.
        self.publish(self.root.0, FRAME);
        self.regs.write64(regs::RTADDR, self.root.0 | ttm);
        self.one_shot(regs::G_SRTP, "root table pointer")?;
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
    /// CAP.FL1GP) for [`ContextState::FirstLevel`] domains.
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

    /// What the tables in memory say about `dev` (the legacy context entry,
    /// or in scalable mode the RID_PASID entry of its PASID table).
    pub fn context(&self, dev: Bdf) -> ContextState {
        let tables = self.context_tables.lock();
        self.entry_state(&tables, dev, 0)
    }

    /// What the entry of `dev`'s `pasid` holds (legacy mode: the context
    /// entry, which `pasid` 0 stands for).
    fn entry_state(&self, tables: &[u64; 512], dev: Bdf, pasid: u32) -> ContextState {
        if self.scalable {
            if pasid >= scalable::MAX_PASIDS {
                return ContextState::NotPresent;
            }
            return match self.pasid_entry_of(tables, dev, pasid) {
                Some((t, i)) => scalable::decode_pasid_entry([
                    self.entry(t, i).load(Ordering::Acquire),
                    self.entry(t, i + 1).load(Ordering::Acquire),
                    self.entry(t, i + 2).load(Ordering::Acquire),
                ]),
                None => ContextState::NotPresent,
            };
        }
        let table = tables[usize::from(dev.bus)];
        if table == 0 || pasid != 0 {
            return ContextState::NotPresent;
        }
        let i = 2 * usize::from(dev.devfn());
        ContextState::decode([
            self.entry(table, i).load(Ordering::Acquire),
            self.entry(table, i + 1).load(Ordering::Acquire),
        ])
    }

    fn validate(&self, state: &ContextState) -> Result<(), VtdError> {
        let (cap, ecap) = (self.features.cap, self.features.ecap);
        let reachable = |root: u64| root & 0xfff == 0 && root >> self.oa_bits.min(63) == 0;
        let levels = |aw: u8| {
            let l = usize::from(aw) + 2;
            if cap.supports_levels(l) {
                Ok(())
            } else {
                Err(VtdError::LevelsUnsupported(l))
            }
        };
        match *state {
            ContextState::PassThrough { did, aw } => {
                if !ecap.pass_through() {
                    return Err(VtdError::PassThroughUnsupported);
                }
                self.check_did(did)?;
                levels(aw)
            }
            ContextState::Translated { did, root, aw } => {
                if self.scalable && !ecap.second_level_translation() {
                    return Err(VtdError::SecondLevelUnsupported);
                }
                self.check_did(did)?;
                levels(aw)?;
                if !reachable(root) {
                    return Err(VtdError::FrameUnreachable(root));
                }
                Ok(())
            }
            ContextState::FirstLevel { did, root } => {
                if !self.scalable || !ecap.first_level_translation() {
                    return Err(VtdError::FirstLevelUnsupported);
                }
                self.check_did(did)?;
                if !reachable(root) {
                    return Err(VtdError::FrameUnreachable(root));
                }
                Ok(())
            }
            ContextState::NotPresent => Ok(()),
            ContextState::Other { .. } => Err(VtdError::LevelsUnsupported(0)),
        }
    }

    /// Sets what happens to `dev`'s DMA, in the order the specification
    /// requires: a present entry is first made not present and its cached
    /// copies and translations invalidated (one batch, one wait); then the
    /// new entry is written with its present bit last, so the unit never
    /// sees a present entry with a half-written domain or width. With CAP.CM
    /// a newly present entry is invalidated too (the unit may have cached the
    /// not-present one); otherwise only the write buffer is flushed.
    ///
    /// Legacy mode programs the context entry. Scalable mode gives the
    /// device a context entry, a PASID directory and a PASID table once, and
    /// then programs the RID_PASID (PASID 0) entry: second-level, first-level
    /// or pass-through; not present blocks the device.
    ///
    /// `fpd` disables fault recording for the device.
    ///
    /// [`attach`](Self::attach) does this for a [`VtdDomain`](crate::VtdDomain),
    /// [`pass_through`](Self::pass_through) and [`block`](Self::block) for
    /// the states without a table, all safely.
    ///
    /// # Safety
    ///
    /// For a present `state`: its domain ID is one no
    /// [`VtdDomain`](crate::VtdDomain) of this unit holds and not the unit's
    /// pass-through ID (take one with [`alloc_domain_id`](Self::alloc_domain_id)),
    /// and is used with one table only (or only for pass-through): the unit
    /// tags cached translations with it alone.
    ///
    /// For [`ContextState::Translated`] and [`ContextState::FirstLevel`]:
    /// `root` is the root of a table of that format (second level of the
    /// depth `aw` gives; x86-64 4-level paging) whose frames stay allocated,
    /// and are not reused, until the entry is replaced (by any call of this
    /// unit) and that call returned `Ok`; and every change to the table is
    /// followed by an invalidation of the domain ID (as a
    /// [`VtdInvalidator`](crate::VtdInvalidator) does) that completes before
    /// memory a removed entry pointed to is reused.
    pub unsafe fn set_context(
        &self,
        dev: Bdf,
        state: ContextState,
        fpd: bool,
    ) -> Result<(), VtdError> {
        self.update(dev, None, fpd, |_| Ok(Some(state)))
    }

    /// Blocks `dev`'s requests without a PASID (its context entry, or in
    /// scalable mode its RID_PASID entry, not present; faults are recorded),
    /// invalidating what the unit cached of the entry before.
    pub fn block(&self, dev: Bdf) -> Result<(), VtdError> {
        self.update(dev, None, false, |_| Ok(Some(ContextState::NotPresent)))
    }

    /// Blocks the requests of `dev` tagged with `pasid` (scalable mode).
    pub fn block_pasid(&self, dev: Bdf, pasid: u32) -> Result<(), VtdError> {
        self.update(dev, Some(pasid), false, |_| {
            Ok(Some(ContextState::NotPresent))
        })
    }

    /// Lets `dev`'s requests without a PASID through untranslated (needs
    /// ECAP.PT). Pass-through entries are tagged with a domain ID of their
    /// own, taken from the unit's on first use and kept.
    pub fn pass_through(&self, dev: Bdf) -> Result<(), VtdError> {
        self.pass_through_at(dev, None)
    }

    /// Lets the requests of `dev` tagged with `pasid` through untranslated
    /// (scalable mode, ECAP.PT).
    pub fn pass_through_pasid(&self, dev: Bdf, pasid: u32) -> Result<(), VtdError> {
        self.pass_through_at(dev, Some(pasid))
    }

    fn pass_through_at(&self, dev: Bdf, pasid: Option<u32>) -> Result<(), VtdError> {
        if let Some(p) = pasid {
            self.check_pasid(p)?;
        }
        if !self.features.ecap.pass_through() {
            return Err(VtdError::PassThroughUnsupported);
        }
        let aw = self.features.max_levels().map_or(1, |l| (l - 2) as u8);
        let pasid = pasid.unwrap_or(0);
        // Pass-through entries are written under this lock only, so the ID
        // taken here is not used by anyone else until the write succeeds.
        let mut tables = self.context_tables.lock();
        let (did, fresh) = {
            let mut ids = self.dids.lock();
            match ids.pass_through {
                Some(did) => (did, false),
                None => {
                    let did = ids.alloc().ok_or(VtdError::DomainIdsExhausted)?;
                    ids.pass_through = Some(did);
                    (did, true)
                }
            }
        };
        let state = ContextState::PassThrough { did, aw };
        let r = self.write(&mut tables, dev, pasid, state, false);
        if r.is_err() && fresh && self.entry_state(&tables, dev, pasid) != state {
            let mut ids = self.dids.lock();
            ids.pass_through = None;
            ids.free(did);
        }
        r
    }

    /// Under the context-table lock: `decide` is given what the entry of
    /// `dev` (requests without a PASID for `None`) holds and returns what it
    /// is to hold (`None`: leave it as it is), which is then written as
    /// [`set_context`](Self::set_context) describes.
    pub(crate) fn update(
        &self,
        dev: Bdf,
        pasid: Option<u32>,
        fpd: bool,
        decide: impl FnOnce(ContextState) -> Result<Option<ContextState>, VtdError>,
    ) -> Result<(), VtdError> {
        if let Some(p) = pasid {
            self.check_pasid(p)?;
        }
        let pasid = pasid.unwrap_or(0);
        let mut tables = self.context_tables.lock();
        let Some(state) = decide(self.entry_state(&tables, dev, pasid))? else {
            return Ok(());
        };
        self.write(&mut tables, dev, pasid, state, fpd)
    }

    /// Writes the entry of `dev`'s `pasid` (0: requests without a PASID),
    /// as [`set_context`](Self::set_context) describes.
    fn write(
        &self,
        tables: &mut [u64; 512],
        dev: Bdf,
        pasid: u32,
        state: ContextState,
        fpd: bool,
    ) -> Result<(), VtdError> {
        self.validate(&state)?;
        if self.scalable {
            self.set_scalable(tables, dev, pasid, state, fpd)
        } else {
            self.set_legacy(tables, dev, state, fpd)
        }
    }

    /// Whether the entry of `dev`'s `pasid` (0: requests without a PASID)
    /// holds `state`.
    pub(crate) fn entry_is(&self, dev: Bdf, pasid: u32, state: &ContextState) -> bool {
        let tables = self.context_tables.lock();
        self.entry_state(&tables, dev, pasid) == *state
    }

    /// Refuses a PASID the unit cannot program: legacy mode, a PASID other
    /// than 0 without ECAP.PASID, or one beyond `2^(PSS + 1)` and
    /// [`scalable::MAX_PASIDS`].
    pub(crate) fn check_pasid(&self, pasid: u32) -> Result<(), VtdError> {
        if !self.scalable {
            return Err(VtdError::ScalableUnsupported);
        }
        let ecap = self.features.ecap;
        if pasid != 0 && !ecap.pasid() {
            return Err(VtdError::PasidUnsupported);
        }
        let limit = if ecap.pasid() {
            (1u64 << ecap.pasid_bits()).min(u64::from(scalable::MAX_PASIDS))
        } else {
            1
        };
        if u64::from(pasid) >= limit {
            return Err(VtdError::PasidOutOfRange(pasid));
        }
        Ok(())
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

    /// Drops everything the unit may have cached under domain `did`:
    /// context (legacy) or PASID-cache entries tagged with it, and its
    /// translations (second-level ones, or those of the first-level
    /// `pasid`). One batch, one wait.
    pub(crate) fn forget_domain(&self, did: u16, first_level: Option<u32>) -> Result<(), VtdError> {
        let tlb = match first_level {
            Some(pasid) => Descriptor::pasid_iotlb(PasidIotlbScope::Pasid { did, pasid }),
            None => Descriptor::iotlb(IotlbScope::Domain(did), false, false),
        };
        let entries = if self.scalable {
            Descriptor::pasid_cache(PasidCacheScope::Domain(did))
        } else {
            Descriptor::context(ContextScope::Domain(did))
        };
        self.flush_write_buffer()?;
        self.submit(&[entries, tlb])
    }

    fn set_legacy(
        &self,
        tables: &mut [u64; 512],
        dev: Bdf,
        state: ContextState,
        fpd: bool,
    ) -> Result<(), VtdError> {
        let cap = self.features.cap;
        let bus = usize::from(dev.bus);
        if tables[bus] == 0 {
            if state == ContextState::NotPresent {
                return Ok(());
            }
            let table = alloc_frame(&self.frames, self.oa_bits)?;
            let [lo, hi] = root_entry(table.0);
            self.entry(self.root.0, 2 * bus + 1)
                .store(hi, Ordering::Release);
            self.entry(self.root.0, 2 * bus)
                .store(lo, Ordering::Release);
            tables[bus] = table.0;
            fence(Ordering::SeqCst);
            self.publish(self.root.0 + 16 * bus as u64, 16);
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
        let at = table + 16 * u64::from(dev.devfn());
        if let Some(old_did) = old.did() {
            lo.store(0, Ordering::Release);
            fence(Ordering::SeqCst);
            self.publish(at, 16);
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
            self.publish(at, 16);
            self.announce_present(dev, did, None)?;
        }
        Ok(())
    }

    /// After an entry became present: with CM, invalidate what the unit may
    /// have cached of the not-present one (a context entry, tagged with
    /// domain ID 0, or the PASID entry `pasid`); otherwise flush the write
    /// buffer.
    fn announce_present(&self, dev: Bdf, did: u16, pasid: Option<u32>) -> Result<(), VtdError> {
        if !self.features.cap.caching_mode() {
            return self.flush_write_buffer();
        }
        let first = match pasid {
            Some(pasid) => Descriptor::pasid_cache(PasidCacheScope::Pasid { did, pasid }),
            None => Descriptor::context(ContextScope::Device {
                did: 0,
                sid: dev.source_id(),
                function_mask: 0,
            }),
        };
        self.submit(&[
            first,
            Descriptor::iotlb(IotlbScope::Domain(did), false, false),
        ])
    }

    /// The PASID directory of `dev`, if it has a scalable context entry.
    fn device_dir(&self, tables: &[u64; 512], dev: Bdf) -> Option<u64> {
        let devfn = usize::from(dev.devfn());
        let table = tables[2 * usize::from(dev.bus) + devfn / 128];
        if table == 0 {
            return None;
        }
        let ctx = self.entry(table, 4 * (devfn % 128)).load(Ordering::Acquire);
        (ctx & scalable::CTX_P != 0).then_some(ctx & context::ADDR_MASK)
    }

    /// The PASID table entry for `pasid` in directory `dir` (table frame,
    /// qword index), if its table exists.
    fn pasid_slot(&self, dir: u64, pasid: u32) -> Option<(u64, usize)> {
        let de = self
            .entry(dir, (pasid >> 6) as usize)
            .load(Ordering::Acquire);
        (de & scalable::PDE_P != 0).then_some((de & context::ADDR_MASK, 8 * (pasid & 63) as usize))
    }

    fn pasid_entry_of(&self, tables: &[u64; 512], dev: Bdf, pasid: u32) -> Option<(u64, usize)> {
        self.pasid_slot(self.device_dir(tables, dev)?, pasid)
    }

    /// What the PASID table holds for `dev`'s `pasid` (scalable mode);
    /// [`ContextState::NotPresent`] without an entry.
    pub fn pasid_context(&self, dev: Bdf, pasid: u32) -> ContextState {
        if !self.scalable {
            return ContextState::NotPresent;
        }
        let tables = self.context_tables.lock();
        self.entry_state(&tables, dev, pasid)
    }

    /// Sets what requests of `dev` tagged with `pasid` get (scalable mode):
    /// as [`set_context`](Self::set_context) does for requests without a
    /// PASID (which use RID_PASID, PASID 0). PASIDs other than 0 need
    /// ECAP.PASID and must be below `2^(PSS + 1)` and [`scalable::MAX_PASIDS`].
    ///
    /// [`attach_pasid`](Self::attach_pasid),
    /// [`pass_through_pasid`](Self::pass_through_pasid) and
    /// [`block_pasid`](Self::block_pasid) are the safe forms.
    ///
    /// # Safety
    ///
    /// As for [`set_context`](Self::set_context).
    pub unsafe fn set_pasid(
        &self,
        dev: Bdf,
        pasid: u32,
        state: ContextState,
        fpd: bool,
    ) -> Result<(), VtdError> {
        self.update(dev, Some(pasid), fpd, |_| Ok(Some(state)))
    }

    fn set_scalable(
        &self,
        tables: &mut [u64; 512],
        dev: Bdf,
        pasid: u32,
        state: ContextState,
        fpd: bool,
    ) -> Result<(), VtdError> {
        let existing = self.device_dir(tables, dev);
        if existing.is_none() && state == ContextState::NotPresent {
            return Ok(());
        }
        // A new device gets its PASID table before its directory and
        // context entry are built: running out of memory for it afterwards
        // left a half-built device (a present context entry over an empty
        // directory, two frames held). Found by tests/fault_injection.rs.
        let mut spare = match existing {
            Some(_) => None,
            None => Some(alloc_frame(&self.frames, self.oa_bits)?),
        };
        let dir = match existing {
            Some(d) => d,
            None => match self.new_scalable_device(tables, dev) {
                Ok(d) => d,
                Err(e) => {
                    if let Some(pt) = spare {
                        // SAFETY: just allocated, never published.
                        unsafe { self.frames.free(pt, FRAME) };
                    }
                    return Err(e);
                }
            },
        };
        let slot = self.pasid_slot(dir, pasid);
        if let Some(pt) = spare.filter(|_| slot.is_some()) {
            // Not reached (a new directory is empty); never leak the frame.
            // SAFETY: just allocated, never published.
            unsafe { self.frames.free(pt, FRAME) };
        }
        let (pt, i) = match slot {
            Some(slot) => slot,
            None if state == ContextState::NotPresent => return Ok(()),
            None => {
                let pt = match spare.take() {
                    Some(pt) => pt,
                    None => alloc_frame(&self.frames, self.oa_bits)?,
                };
                self.publish(pt.0, FRAME);
                let at = dir + 8 * u64::from(pasid >> 6);
                self.entry(dir, (pasid >> 6) as usize)
                    .store(scalable::dir_entry(pt.0), Ordering::Release);
                fence(Ordering::SeqCst);
                self.publish(at, 8);
                (pt.0, 8 * (pasid & 63) as usize)
            }
        };
        let q0 = self.entry(pt, i);
        let old = scalable::decode_pasid_entry([
            q0.load(Ordering::Acquire),
            self.entry(pt, i + 1).load(Ordering::Acquire),
            self.entry(pt, i + 2).load(Ordering::Acquire),
        ]);
        let at = pt + 8 * i as u64;
        if let Some(old_did) = old.did() {
            q0.store(0, Ordering::Release);
            fence(Ordering::SeqCst);
            self.publish(at, 64);
            self.flush_write_buffer()?;
            let tlb = match old {
                ContextState::FirstLevel { .. } => {
                    Descriptor::pasid_iotlb(PasidIotlbScope::Pasid {
                        did: old_did,
                        pasid,
                    })
                }
                _ => Descriptor::iotlb(IotlbScope::Domain(old_did), false, false),
            };
            self.submit(&[
                Descriptor::pasid_cache(PasidCacheScope::Pasid {
                    did: old_did,
                    pasid,
                }),
                tlb,
            ])?;
        }
        if let Some(did) = state.did() {
            let e = scalable::pasid_entry(&state, fpd);
            for (k, &v) in e.iter().enumerate().skip(1) {
                self.entry(pt, i + k).store(v, Ordering::Release);
            }
            fence(Ordering::SeqCst);
            // Everything but the present bit reaches memory first.
            self.publish(at, 64);
            q0.store(e[0], Ordering::Release);
            fence(Ordering::SeqCst);
            self.publish(at, 64);
            self.announce_present(dev, did, Some(pasid))?;
        }
        Ok(())
    }

    /// First attach of a device in scalable mode: the context table half
    /// (if new) and a PASID directory, then the context entry pointing to
    /// it, each written before what points to it. Returns the directory.
    fn new_scalable_device(&self, tables: &mut [u64; 512], dev: Bdf) -> Result<u64, VtdError> {
        let devfn = usize::from(dev.devfn());
        let half = 2 * usize::from(dev.bus) + devfn / 128;
        let dir = alloc_frame(&self.frames, self.oa_bits)?;
        self.publish(dir.0, FRAME);
        let mut new_table = false;
        if tables[half] == 0 {
            match alloc_frame(&self.frames, self.oa_bits) {
                Ok(t) => {
                    self.publish(t.0, FRAME);
                    tables[half] = t.0;
                    new_table = true;
                }
                Err(e) => {
                    // SAFETY: just allocated, never published.
                    unsafe { self.frames.free(dir, FRAME) };
                    return Err(e);
                }
            }
        }
        let table = tables[half];
        let c = scalable::context_entry(dir.0);
        let at = 4 * (devfn % 128);
        for k in (1..4).rev() {
            self.entry(table, at + k).store(c[k], Ordering::Release);
        }
        fence(Ordering::SeqCst);
        self.publish(table + 8 * at as u64, 32);
        self.entry(table, at).store(c[0], Ordering::Release);
        fence(Ordering::SeqCst);
        self.publish(table + 8 * at as u64, 32);
        if new_table {
            let bus = usize::from(dev.bus);
            let [lo, hi] = scalable::root_entry(tables[2 * bus], tables[2 * bus + 1]);
            self.entry(self.root.0, 2 * bus + 1)
                .store(hi, Ordering::Release);
            self.entry(self.root.0, 2 * bus)
                .store(lo, Ordering::Release);
            fence(Ordering::SeqCst);
            self.publish(self.root.0 + 16 * bus as u64, 16);
            if self.features.cap.caching_mode() {
                self.submit(&[Descriptor::context(ContextScope::Global)])?;
            }
        } else if self.features.cap.caching_mode() {
            self.submit(&[Descriptor::context(ContextScope::Device {
                did: 0,
                sid: dev.source_id(),
                function_mask: 0,
            })])?;
        }
        Ok(dir.0)
    }

    pub(crate) fn check_did(&self, did: u16) -> Result<(), VtdError> {
        if u32::from(did) >= self.features.cap.domains()
            || (did == 0 && self.features.cap.caching_mode())
        {
            return Err(VtdError::BadDomainId(did));
        }
        Ok(())
    }

    /// Has the unit signal new faults with the message-signalled interrupt
    /// `data` written to `addr` (on x86, `0xFEE0_0000 | apic_id << 12` and
    /// the vector), then unmasks it. The unit raises it when a fault record
    /// becomes pending with none pending before; read and clear the records
    /// with [`drain_faults`](Self::drain_faults) so that the next fault
    /// raises it again.
    pub fn enable_fault_interrupt(&self, addr: u64, data: u32) {
        self.regs.write32(regs::FECTL, regs::FECTL_IM);
        self.regs.write32(regs::FEDATA, data);
        self.regs.write32(regs::FEADDR, addr as u32);
        self.regs.write32(regs::FEUADDR, (addr >> 32) as u32);
        self.regs.write32(regs::FECTL, 0);
    }

    /// Masks the fault event interrupt (the reset state).
    pub fn disable_fault_interrupt(&self) {
        self.regs.write32(regs::FECTL, regs::FECTL_IM);
    }

    /// Whether a fault event arrived while the interrupt was masked
    /// (FECTL.IP); unmasking sends it.
    pub fn fault_interrupt_pending(&self) -> bool {
        self.regs.read32(regs::FECTL) & regs::FECTL_IP != 0
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
            crate::warn_event!("VT-d: primary fault overflow: faults were lost");
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
        if self.translation_enabled() {
            return;
        }
        // Stop the queue before freeing it; if it does not stop, leak.
        if self.inval.lock().is_queued() && self.global_command(regs::G_QIE, false).is_err() {
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

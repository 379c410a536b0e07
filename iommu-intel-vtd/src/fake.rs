//! A fake VT-d unit behind mocked MMIO, for host tests (ours and users').
//!
//! [`FakeVtd`] implements [`Mmio`] and behaves like a unit (modelled on the
//! specification and on what was measured of QEMU's model):
//!
//! - global commands take effect synchronously (SRTP latches RTADDR, TE, QIE,
//!   WBF), register-based context and IOTLB invalidation run on the register
//!   write and are ignored while queued invalidation is on;
//! - the invalidation queue is processed from memory on each IQT write:
//!   context-cache, IOTLB (global, domain, page-selective with address mask
//!   and leaf hint), wait (status write or interrupt), with QEMU's reserved
//!   bit checks; a bad descriptor sets FSTS.IQE and stops the queue at it;
//!   **a wait asking for both status write and interrupt panics** (QEMU
//!   aborts);
//! - [`FakeVtd::translate`] is a device's DMA: it uses cached context entries,
//!   cached translations and cached non-leaf entries (paging-structure cache)
//!   until they are invalidated, walks root -> context -> second-level table
//!   otherwise, checks reserved bits and permissions, and records faults in
//!   the fault recording registers with QEMU's compression (one pending
//!   record per source ID) and overflow (FSTS.PFO);
//! - with CAP.CM it also caches not-present context entries and not-present
//!   translations, so a driver that does not invalidate after making an
//!   entry present keeps faulting;
//! - in scalable mode (RTADDR.TTM = 01 with ECAP.SMTS) it walks scalable
//!   root and context entries, the PASID directory and table (RID_PASID, or
//!   the PASID of [`FakeVtd::translate_pasid`]), caches PASID entries until a
//!   PASID-cache invalidation, and walks second-level or first-level (x86-64)
//!   tables; first-level translations are dropped only by PASID-based IOTLB
//!   invalidations, which it accepts only in a 256-bit queue (as QEMU);
//! - a fault that makes a record pending raises the fault event interrupt
//!   ([`FakeVtd::fault_interrupts`]), or sets FECTL.IP while it is masked;
//! - with ECAP.IR ([`FakeVtd::with_interrupt_remapping`]) it latches IRTA on
//!   SIRTP and honours IRE and CFI; [`FakeVtd::deliver_msi`] and
//!   [`FakeVtd::deliver_ioapic`] are interrupt requests: remappable ones are
//!   looked up in the table (index within IRTA.S, P, reserved bits, source
//!   validation by SVT/SQ/SID or bus range), compatibility-format ones are
//!   blocked (fault 0x25) unless CFI is set and EIME clear; faults are
//!   recorded like DMA faults, with the interrupt index in FI. Entries read
//!   are **cached until an interrupt entry cache invalidation** (global, or
//!   index-selective with its mask) covers them, so a driver that changes
//!   an entry without one keeps getting the old entry. (QEMU caches
//!   nothing and lets compatibility-format MSIs through even with CFI
//!   clear; the fake is stricter, as hardware is.)

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::vec::Vec;

use iova_core::fakes::FakeFrames;
use iova_core::{FrameAllocator, PhysAddr};

use crate::acpi::dmar::Bdf;
use crate::caps::{Capability, ExtCapability};
use crate::descriptor;
use crate::fault::FaultReason;
use crate::intremap::entry::{
    IRTE_DM, IRTE_FPD, IRTE_IM, IRTE_P, IRTE_RESERVED_HI, IRTE_RESERVED_LO, IRTE_TM,
    IRTE_XAPIC_RESERVED, MSI_REMAPPABLE, MSI_SHV, RTE_REMAPPABLE,
};
use crate::intremap::{DeliveryMode, DestinationMode, TriggerMode};
use crate::regs::{self, Mmio, MmioError, Width};
use iova_core::hw::check_access;

/// QEMU 10's default CAP with `aw-bits=48`.
pub const QEMU_CAP_48: u64 = 0x00D2_008C_222F_0606;
/// QEMU's CAP with `aw-bits=39`.
pub const QEMU_CAP_39: u64 = 0x00D2_008C_2226_0206;
/// QEMU's default ECAP under TCG.
pub const QEMU_ECAP: u64 = 0x0000_0000_00F0_0F4A;
/// QEMU's ECAP with `x-scalable-mode=on` (SMTS, SLTS, SRS).
pub const QEMU_ECAP_SCALABLE: u64 = 0x0000_4800_80F0_0F4A;
/// QEMU 10's ECAP with `x-scalable-mode=on,x-flts=on` (SMTS, FLTS, no SLTS).
pub const QEMU_ECAP_FLTS: u64 = 0x0000_8800_00F0_0F4A;
/// CAP.FS1GP: first-level 1 GiB pages (QEMU 10 with `x-flts=on`).
pub const CAP_FL1GP: u64 = 1 << 56;
/// ECAP.IR: interrupt remapping (set in [`QEMU_ECAP`]).
pub const ECAP_IR: u64 = 1 << 3;
/// ECAP.EIM: extended interrupt mode (QEMU with `eim=on`).
pub const ECAP_EIM: u64 = 1 << 4;

/// An interrupt as it reaches the interrupt controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// APIC ID (or logical destination).
    pub destination: u32,
    /// Vector.
    pub vector: u8,
    /// Delivery mode.
    pub delivery: DeliveryMode,
    /// Trigger mode.
    pub trigger: TriggerMode,
    /// Destination mode.
    pub destination_mode: DestinationMode,
    /// The remapping entry used; `None`: a compatibility-format request
    /// let through (CFI, or remapping off).
    pub index: Option<u16>,
}

/// The interrupt remapping table latched by SIRTP.
#[derive(Debug, Clone, Copy)]
struct Irt {
    base: u64,
    entries: u32,
    eime: bool,
}

/// Bytes of a fake unit's register block unless
/// [`FakeVtd::with_register_size`] says otherwise: a page, as QEMU's unit
/// and the DMAR's default register set size.
pub const DEFAULT_REGISTER_SIZE: usize = 4096;

/// Bytes of fake physical memory the fake reads tables from: that of
/// [`FakeFrames::new`]. Table pointers outside it are access faults.
pub const FAKE_MEMORY: u64 = 256 << 20;

/// A DMA direction, as the device sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dma {
    /// The device reads memory.
    Read,
    /// The device writes memory.
    Write,
}

/// What the fake did, for assertions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FakeStats {
    /// Descriptors processed, by type (index = type, 0..16).
    pub descriptors: [u64; 16],
    /// Page-selective IOTLB descriptors processed with the leaf hint.
    pub psi_leaf_hint: u64,
    /// Status writes done by wait descriptors.
    pub status_writes: u64,
    /// Wait descriptors that raised the completion interrupt.
    pub wait_interrupts: u64,
    /// Register-based context/IOTLB invalidations performed.
    pub register_invalidations: u64,
    /// Register-based invalidations ignored because queued invalidation was on.
    pub ignored_register_invalidations: u64,
    /// Write-buffer flushes requested.
    pub write_buffer_flushes: u64,
    /// SRTP commands.
    pub root_pointer_sets: u64,
    /// Translations answered from the IOTLB.
    pub iotlb_hits: u64,
    /// Table walks.
    pub walks: u64,
    /// Context entries answered from the context cache.
    pub context_hits: u64,
    /// Accesses to offsets the fake does not implement.
    pub unknown_accesses: u64,
    /// Global interrupt entry cache invalidations processed.
    pub iec_global: u64,
    /// Index-selective interrupt entry cache invalidations processed.
    pub iec_index: u64,
    /// Interrupt remapping entries read from memory.
    pub irte_reads: u64,
    /// Interrupt requests answered from the interrupt entry cache.
    pub irte_cache_hits: u64,
    /// SIRTP commands.
    pub irt_pointer_sets: u64,
}

/// What a resolved context (and PASID) entry says to walk.
#[derive(Debug, Clone, Copy)]
struct Walk {
    did: u16,
    /// First-level translation for this PASID; `None`: second level.
    fl: Option<u32>,
    root: u64,
    levels: usize,
    /// Input address width in bits.
    width: u32,
    fpd: bool,
}

#[derive(Debug, Clone, Copy)]
struct CachedTranslation {
    /// Output address of the leaf (aligned to `size`), or `None` for a
    /// cached not-present entry (caching mode).
    pa: Option<u64>,
    size: u64,
    perms: u64,
    first_level: bool,
    pasid: u32,
}

#[derive(Debug)]
struct State {
    cap: Capability,
    ecap: ExtCapability,
    gsts: u32,
    rtaddr: u64,
    root: Option<u64>,
    ccmd: u64,
    iva: u64,
    iotlb_reg: u64,
    fsts: u32,
    fectl: u32,
    iqa: u64,
    iqh: u64,
    iqt: u64,
    ics: u32,
    frcd: Vec<[u64; 2]>,
    next_frcd: usize,
    /// Context entries by source ID (raw lo, hi).
    context_cache: BTreeMap<u16, [u64; 2]>,
    /// Leaf translations by (domain, IOVA of the leaf).
    /// Keyed by (domain, PASID for first level or `u32::MAX`, IOVA).
    iotlb: BTreeMap<(u16, u32, u64), CachedTranslation>,
    /// Non-leaf entries by (domain, PASID for first level or `u32::MAX`,
    /// level, IOVA >> the level's entry shift).
    pscache: BTreeMap<(u16, u32, usize, u64), u64>,
    /// PASID entries (first three qwords) by (source ID, PASID).
    pasid_cache: BTreeMap<(u16, u32), [u64; 3]>,
    /// RTADDR.TTM was scalable when the root pointer was set.
    scalable: bool,
    stats: FakeStats,
    stall_waits: bool,
    /// Bytes of the register block.
    register_size: usize,
    /// An offset whose accesses are refused.
    refused: Option<usize>,
    fedata: u32,
    feaddr: u64,
    /// Fault event messages sent (address, data).
    fault_messages: Vec<(u64, u32)>,
    irta: u64,
    irt: Option<Irt>,
    /// Interrupt remapping entries by index (raw lo, hi).
    irte_cache: BTreeMap<u16, [u64; 2]>,
}

/// A fake VT-d unit over fake physical memory.
#[derive(Debug)]
pub struct FakeVtd {
    frames: Arc<FakeFrames>,
    state: Mutex<State>,
}

const CC_RESERVED: u64 = 0xfffc_0000_0000_f1c0;
const IOTLB_RESERVED: [u64; 2] = [0xffff_ffff_0000_f100, 0xf80];
const WAIT_RESERVED: [u64; 2] = [0xffff_f180, 0b11];
const PASID_RESERVED: [u64; 2] = [0xfff0_0000_0000_f1c0, 0xf80];
/// QEMU's `VTD_INV_DESC_IEC_RSVD`.
const IEC_RESERVED: u64 = 0xffff_0000_07ff_f1e0;

impl FakeVtd {
    /// A unit with these CAP and ECAP values whose tables and queue live in
    /// `frames`.
    pub fn new(frames: Arc<FakeFrames>, cap: u64, ecap: u64) -> Self {
        let cap = Capability(cap);
        Self {
            frames,
            state: Mutex::new(State {
                cap,
                ecap: ExtCapability(ecap),
                gsts: 0,
                rtaddr: 0,
                root: None,
                ccmd: 0,
                iva: 0,
                iotlb_reg: 0,
                fsts: 0,
                fectl: regs::FECTL_IM,
                iqa: 0,
                iqh: 0,
                iqt: 0,
                ics: 0,
                frcd: vec![[0; 2]; cap.fault_records()],
                next_frcd: 0,
                context_cache: BTreeMap::new(),
                iotlb: BTreeMap::new(),
                pscache: BTreeMap::new(),
                pasid_cache: BTreeMap::new(),
                scalable: false,
                stats: FakeStats::default(),
                stall_waits: false,
                register_size: DEFAULT_REGISTER_SIZE,
                refused: None,
                fedata: 0,
                feaddr: 0,
                fault_messages: Vec::new(),
                irta: 0,
                irt: None,
                irte_cache: BTreeMap::new(),
            }),
        }
    }

    /// The same unit with a register block of `size` bytes (default
    /// [`DEFAULT_REGISTER_SIZE`]): accesses beyond it are refused.
    pub fn with_register_size(self, size: usize) -> Self {
        self.lock().register_size = size;
        self
    }

    /// The same unit with ECAP.IR (interrupt remapping) and ECAP.EIM
    /// (x2APIC destinations) set as given.
    pub fn with_interrupt_remapping(self, ir: bool, eim: bool) -> Self {
        {
            let mut s = self.lock();
            let mut e = s.ecap.0 & !(ECAP_IR | ECAP_EIM);
            if ir {
                e |= ECAP_IR;
            }
            if eim {
                e |= ECAP_EIM;
            }
            s.ecap = ExtCapability(e);
        }
        self
    }

    /// From now on, every access at `offset` (`None`: none) is refused with
    /// [`MmioError::Width`], as by a block that does not take it, and
    /// changes nothing: the driver's handling of a refused access, tested.
    pub fn refuse_access(&self, offset: Option<usize>) {
        self.lock().refused = offset;
    }

    fn check(&self, offset: usize, width: Width) -> Result<(), MmioError> {
        let s = self.lock();
        check_access(s.register_size, offset, width)?;
        if s.refused == Some(offset) {
            return Err(MmioError::Width { offset, width });
        }
        Ok(())
    }

    /// The state; a panic while it was held (the deliberate one on a bad
    /// wait descriptor) does not make every later access panic too.
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// QEMU's defaults for `aw-bits` 39 or 48.
    pub fn qemu(frames: Arc<FakeFrames>, aw_bits: u32) -> Self {
        let cap = if aw_bits == 39 {
            QEMU_CAP_39
        } else {
            QEMU_CAP_48
        };
        Self::new(frames, cap, QEMU_ECAP)
    }

    /// What the fake did so far.
    pub fn stats(&self) -> FakeStats {
        self.lock().stats.clone()
    }

    /// Cached translations (leaf and not-present) now held.
    pub fn cached_translations(&self) -> usize {
        self.lock().iotlb.len()
    }

    /// Cached interrupt remapping entries now held.
    pub fn cached_irtes(&self) -> usize {
        self.lock().irte_cache.len()
    }

    /// Cached context entries now held.
    pub fn cached_contexts(&self) -> usize {
        self.lock().context_cache.len()
    }

    /// When set, wait descriptors complete without writing their status
    /// (the driver's bounded poll must time out).
    pub fn stall_waits(&self, stall: bool) {
        self.lock().stall_waits = stall;
    }

    /// Fault event interrupts sent so far, as (message address, data).
    pub fn fault_interrupts(&self) -> Vec<(u64, u32)> {
        self.lock().fault_messages.clone()
    }

    /// The raw fault recording registers (lo, hi).
    pub fn fault_registers(&self) -> Vec<[u64; 2]> {
        self.lock().frcd.clone()
    }

    /// A DMA of `access` by `dev` at `iova`: the physical address it reaches,
    /// or the fault reason (recorded in the fault registers unless
    /// suppressed by FPD, compressed, or lost to overflow).
    pub fn translate(&self, dev: Bdf, iova: u64, access: Dma) -> Result<u64, FaultReason> {
        self.dma(dev, None, iova, access)
    }

    /// A DMA tagged with `pasid` (scalable mode; a legacy unit refuses it as
    /// an invalid context).
    pub fn translate_pasid(
        &self,
        dev: Bdf,
        pasid: u32,
        iova: u64,
        access: Dma,
    ) -> Result<u64, FaultReason> {
        self.dma(dev, Some(pasid), iova, access)
    }

    fn dma(
        &self,
        dev: Bdf,
        pasid: Option<u32>,
        iova: u64,
        access: Dma,
    ) -> Result<u64, FaultReason> {
        let mut s = self.lock();
        let (result, fpd) = self.translate_locked(&mut s, dev.source_id(), pasid, iova, access);
        if let Err(reason) = result {
            let qualified = !matches!(
                reason,
                FaultReason::RootNotPresent
                    | FaultReason::ContextNotPresent
                    | FaultReason::ContextInvalid
                    | FaultReason::RootReserved
                    | FaultReason::ContextReserved
            );
            if !(qualified && fpd) {
                s.record_fault(dev.source_id(), iova, access, reason, pasid);
            }
        }
        result
    }

    /// An MSI write by `source` of `data` to `address`: where the interrupt
    /// goes, or the fault reason (recorded in the fault registers unless the
    /// entry's FPD suppresses it, compressed, or lost to overflow). A
    /// remappable-format request while remapping is off is refused as
    /// reserved, unrecorded.
    pub fn deliver_msi(
        &self,
        source: Bdf,
        address: u64,
        data: u32,
    ) -> Result<Delivered, FaultReason> {
        let mut s = self.lock();
        let sid = source.source_id();
        if address >> 32 != 0 || (address >> 20) & 0xfff != 0xfee {
            return s.ir_fault(sid, 0, FaultReason::InterruptRequestReserved);
        }
        if address & MSI_REMAPPABLE == 0 {
            let compat = Delivered {
                destination: ((address >> 12) & 0xff) as u32,
                vector: data as u8,
                delivery: DeliveryMode::from_code(((data >> 8) & 7) as u8)
                    .ok_or(FaultReason::InterruptRequestReserved)?,
                trigger: if data & 1 << 15 != 0 {
                    TriggerMode::Level
                } else {
                    TriggerMode::Edge
                },
                destination_mode: if address & 1 << 2 != 0 {
                    DestinationMode::Logical
                } else {
                    DestinationMode::Physical
                },
                index: None,
            };
            return s.compatibility(sid, compat);
        }
        let handle = ((address >> 5) & 0x7fff) as u32 | (((address >> 2) & 1) as u32) << 15;
        let index = if address & MSI_SHV != 0 {
            if data >> 16 != 0 {
                return s.ir_fault(sid, 0, FaultReason::InterruptRequestReserved);
            }
            handle + (data & 0xffff)
        } else {
            handle
        };
        self.remap(&mut s, sid, index)
    }

    /// An interrupt from an I/O APIC (whose source ID is `source`) with
    /// redirection table entry `rte`: as [`deliver_msi`](Self::deliver_msi).
    pub fn deliver_ioapic(&self, source: Bdf, rte: u64) -> Result<Delivered, FaultReason> {
        let mut s = self.lock();
        let sid = source.source_id();
        if rte & RTE_REMAPPABLE == 0 {
            let compat = Delivered {
                destination: (rte >> 56) as u32,
                vector: rte as u8,
                delivery: DeliveryMode::from_code(((rte >> 8) & 7) as u8)
                    .ok_or(FaultReason::InterruptRequestReserved)?,
                trigger: if rte & 1 << 15 != 0 {
                    TriggerMode::Level
                } else {
                    TriggerMode::Edge
                },
                destination_mode: if rte & 1 << 11 != 0 {
                    DestinationMode::Logical
                } else {
                    DestinationMode::Physical
                },
                index: None,
            };
            return s.compatibility(sid, compat);
        }
        // Bits 10:8 and 47:17 are reserved in remappable format.
        if rte & (0x7 << 8 | 0x7fff_fffe_0000) != 0 {
            return s.ir_fault(sid, 0, FaultReason::InterruptRequestReserved);
        }
        let index = (rte >> 49) as u32 | (((rte >> 11) & 1) as u32) << 15;
        self.remap(&mut s, sid, index)
    }

    /// A remappable request naming entry `index`.
    fn remap(&self, s: &mut State, sid: u16, index: u32) -> Result<Delivered, FaultReason> {
        if s.gsts & regs::G_IRE == 0 {
            return Err(FaultReason::InterruptRequestReserved);
        }
        let Some(irt) = s.irt else {
            return s.ir_fault(sid, 0, FaultReason::InterruptTableAccess);
        };
        // The index is 16 bits; with a subhandle it may carry past them.
        let Ok(i16) = u16::try_from(index) else {
            return s.ir_fault(sid, 0, FaultReason::InterruptIndexBeyondTable);
        };
        if index >= irt.entries {
            return s.ir_fault(sid, i16, FaultReason::InterruptIndexBeyondTable);
        }
        let [lo, hi] = match s.irte_cache.get(&i16) {
            Some(&e) => {
                s.stats.irte_cache_hits += 1;
                e
            }
            None => {
                let at = irt.base + 16 * u64::from(index);
                if !self.in_frames(at) {
                    return s.ir_fault(sid, i16, FaultReason::InterruptTableAccess);
                }
                s.stats.irte_reads += 1;
                [self.read_mem(at), self.read_mem(at + 8)]
            }
        };
        let fpd = lo & IRTE_FPD != 0;
        let qualified = |s: &mut State, reason| {
            if fpd {
                Err(reason)
            } else {
                s.ir_fault(sid, i16, reason)
            }
        };
        if lo & IRTE_P == 0 {
            return qualified(s, FaultReason::IrteNotPresent);
        }
        let delivery = DeliveryMode::from_code(((lo >> 5) & 7) as u8);
        let svt = (hi >> 18) & 3;
        // Posted format (IM) is reserved without CAP.PI, which the fake
        // never has.
        let reserved = lo & (IRTE_RESERVED_LO | IRTE_IM) != 0
            || (!irt.eime && lo & IRTE_XAPIC_RESERVED != 0)
            || hi & IRTE_RESERVED_HI != 0
            || svt == 3
            || delivery.is_none();
        let Some(delivery) = delivery.filter(|_| !reserved) else {
            return qualified(s, FaultReason::IrteReserved);
        };
        // Hardware caches what it read of a valid entry until told otherwise.
        s.irte_cache.insert(i16, [lo, hi]);
        let want = hi as u16;
        let source_ok = match svt {
            0 => true,
            1 => {
                let mask = [0xffffu16, 0xfffb, 0xfff9, 0xfff8][((hi >> 16) & 3) as usize];
                sid & mask == want & mask
            }
            _ => {
                let bus = (sid >> 8) as u8;
                ((want >> 8) as u8..=want as u8).contains(&bus)
            }
        };
        if !source_ok {
            return qualified(s, FaultReason::InterruptSourceInvalid);
        }
        Ok(Delivered {
            destination: if irt.eime {
                (lo >> 32) as u32
            } else {
                ((lo >> 40) & 0xff) as u32
            },
            vector: (lo >> 16) as u8,
            delivery,
            trigger: if lo & IRTE_TM != 0 {
                TriggerMode::Level
            } else {
                TriggerMode::Edge
            },
            destination_mode: if lo & IRTE_DM != 0 {
                DestinationMode::Logical
            } else {
                DestinationMode::Physical
            },
            index: Some(i16),
        })
    }

    fn read_mem(&self, pa: u64) -> u64 {
        let p = self.frames.phys_to_virt(PhysAddr(pa)).cast::<u64>();
        // SAFETY: tests point the fake only at frames of `frames`, which stay
        // allocated while the driver uses them; reads are aligned.
        unsafe { core::sync::atomic::AtomicU64::from_ptr(p) }
            .load(core::sync::atomic::Ordering::Acquire)
    }

    fn write_mem32(&self, pa: u64, v: u32) {
        let p = self.frames.phys_to_virt(PhysAddr(pa)).cast::<u32>();
        // SAFETY: as in `read_mem`; the status word is 4-byte aligned.
        unsafe { core::sync::atomic::AtomicU32::from_ptr(p) }
            .store(v, core::sync::atomic::Ordering::Release)
    }

    fn in_frames(&self, pa: u64) -> bool {
        let base = iova_core::fakes::FAKE_PHYS_BASE;
        (base..base + FAKE_MEMORY).contains(&pa)
    }

    /// The legacy context entry of `sid` (cached, or read and cached).
    fn legacy_context(&self, s: &mut State, sid: u16) -> Result<[u64; 2], FaultReason> {
        if let Some(&c) = s.context_cache.get(&sid) {
            s.stats.context_hits += 1;
            if c[0] & 1 == 0 {
                return Err(FaultReason::ContextNotPresent);
            }
            return Ok(c);
        }
        let (lo, hi) = self.read_context(s, sid, 16)?;
        if hi & !0xff_ffff != 0 || hi & 1 << 7 != 0 || lo & 0xff0 != 0 {
            return Err(FaultReason::ContextReserved);
        }
        let tt = (lo >> 2) & 3;
        let valid_tt = match tt {
            0 => true,
            1 => s.ecap.device_tlb(),
            2 => s.ecap.pass_through(),
            _ => false,
        };
        let levels = (hi & 7) as usize + 2;
        if !valid_tt || !s.cap.supports_levels(levels) {
            return Err(FaultReason::ContextInvalid);
        }
        s.context_cache.insert(sid, [lo, hi]);
        Ok([lo, hi])
    }

    /// Reads the first two qwords of `sid`'s context entry (`size` bytes per
    /// entry: 16 legacy, 32 scalable) through the root entry.
    fn read_context(&self, s: &mut State, sid: u16, size: u64) -> Result<(u64, u64), FaultReason> {
        let root = s.root.ok_or(FaultReason::RootTableAccess)?;
        let bus = u64::from(sid >> 8);
        let devfn = u64::from(sid & 0xff);
        let re = root + bus * 16;
        if !self.in_frames(re) {
            return Err(FaultReason::RootTableAccess);
        }
        let (rlo, rhi) = (self.read_mem(re), self.read_mem(re + 8));
        // Scalable mode: the low half points to devfn 0-127, the high half to 128-255.
        let (half, index) = if size == 32 {
            (if devfn < 128 { rlo } else { rhi }, devfn % 128)
        } else {
            (rlo, devfn)
        };
        let not_present = |s: &mut State| {
            if s.cap.caching_mode() {
                s.context_cache.insert(sid, [0, 0]);
            }
        };
        if half & 1 == 0 {
            not_present(s);
            return Err(FaultReason::RootNotPresent);
        }
        let reserved = |e: u64| e & 0xffe != 0 || (e & !0xfff) >> s.cap.mgaw() != 0;
        if (size == 16 && rhi != 0) || reserved(rlo) || (size == 32 && reserved(rhi)) {
            return Err(FaultReason::RootReserved);
        }
        let ce = (half & !0xfff) + index * size;
        if !self.in_frames(ce) {
            return Err(FaultReason::ContextTableAccess);
        }
        let (lo, hi) = (self.read_mem(ce), self.read_mem(ce + 8));
        if lo & 1 == 0 {
            not_present(s);
            return Err(FaultReason::ContextNotPresent);
        }
        Ok((lo, hi))
    }

    /// Scalable mode: context entry, then the RID_PASID entry; returns the
    /// PASID entry's first three qwords and the PASID.
    fn scalable_pasid_entry(
        &self,
        s: &mut State,
        sid: u16,
        request_pasid: Option<u32>,
    ) -> Result<([u64; 3], u32), (FaultReason, bool)> {
        let ctx = match s.context_cache.get(&sid).copied() {
            Some(c) => {
                s.stats.context_hits += 1;
                if c[0] & 1 == 0 {
                    return Err((FaultReason::ContextNotPresent, false));
                }
                c
            }
            None => {
                let (lo, q1) = self.read_context(s, sid, 32).map_err(|e| (e, false))?;
                let mgaw = s.cap.mgaw();
                if lo & 0x1e0 != 0
                    || (mgaw < 64 && (lo & !0xfff) >> mgaw != 0)
                    || q1 & 0xffff_ffff_ffe0_0000 != 0
                {
                    return Err((FaultReason::ContextReserved, false));
                }
                s.context_cache.insert(sid, [lo, q1]);
                [lo, q1]
            }
        };
        let pasid = request_pasid.unwrap_or((ctx[1] & 0xf_ffff) as u32);
        if let Some(&pe) = s.pasid_cache.get(&(sid, pasid)) {
            if pe[0] & 1 == 0 {
                return Err((FaultReason::PasidEntryNotPresent, pe[0] & 2 != 0));
            }
            return Ok((pe, pasid));
        }
        let pdts = (ctx[0] >> 9) & 7;
        if u64::from(pasid >> 6) >= 1 << (pdts + 7) {
            return Err((FaultReason::PasidEntryInvalid, false));
        }
        let de = (ctx[0] & !0xfff) + u64::from(pasid >> 6) * 8;
        if !self.in_frames(de) {
            return Err((FaultReason::Other(0x50), false));
        }
        let dir = self.read_mem(de);
        if dir & 1 == 0 {
            return Err((FaultReason::PasidDirNotPresent, dir & 2 != 0));
        }
        let at = (dir & !0xfff) + u64::from(pasid & 63) * 64;
        if !self.in_frames(at) {
            return Err((FaultReason::Other(0x58), false));
        }
        let pe = [
            self.read_mem(at),
            self.read_mem(at + 8),
            self.read_mem(at + 16),
        ];
        let fpd = pe[0] & 2 != 0;
        if pe[0] & 1 == 0 {
            if s.cap.caching_mode() {
                s.pasid_cache.insert((sid, pasid), pe);
            }
            return Err((FaultReason::PasidEntryNotPresent, fpd));
        }
        let valid = match (pe[0] >> 6) & 7 {
            1 => s.ecap.first_level_translation() && (pe[2] >> 2) & 3 == 0,
            2 => {
                s.ecap.second_level_translation()
                    && s.cap.supports_levels(((pe[0] >> 2) & 7) as usize + 2)
            }
            4 => s.ecap.pass_through(),
            _ => false,
        };
        if !valid {
            return Err((FaultReason::PasidEntryInvalid, fpd));
        }
        s.pasid_cache.insert((sid, pasid), pe);
        Ok((pe, pasid))
    }

    fn translate_locked(
        &self,
        s: &mut State,
        sid: u16,
        request_pasid: Option<u32>,
        iova: u64,
        access: Dma,
    ) -> (Result<u64, FaultReason>, bool) {
        if s.gsts & regs::G_TE == 0 {
            return (Ok(iova), false);
        }
        if request_pasid.is_some() && !s.scalable {
            return (Err(FaultReason::ContextInvalid), false);
        }
        let walk = if s.scalable {
            let (pe, pasid) = match self.scalable_pasid_entry(s, sid, request_pasid) {
                Ok(p) => p,
                Err((e, fpd)) => return (Err(e), fpd),
            };
            let fpd = pe[0] & 2 != 0;
            let did = pe[1] as u16;
            let aw_bits = 30 + 9 * ((pe[0] >> 2) & 7) as u32;
            match (pe[0] >> 6) & 7 {
                4 => return (Ok(iova), fpd),
                1 => Walk {
                    did,
                    fl: Some(pasid),
                    root: pe[2] & !0xfff,
                    levels: 4,
                    width: aw_bits.min(s.cap.mgaw()),
                    fpd,
                },
                _ => Walk {
                    did,
                    fl: None,
                    root: pe[0] & !0xfff,
                    levels: ((pe[0] >> 2) & 7) as usize + 2,
                    width: aw_bits.min(s.cap.mgaw()),
                    fpd,
                },
            }
        } else {
            let [lo, hi] = match self.legacy_context(s, sid) {
                Ok(c) => c,
                Err(e) => return (Err(e), false),
            };
            let fpd = lo & 2 != 0;
            if (lo >> 2) & 3 == 2 {
                return (Ok(iova), fpd);
            }
            let levels = (hi & 7) as usize + 2;
            Walk {
                did: (hi >> 8) as u16,
                fl: None,
                root: lo & !0xfff,
                levels,
                width: (12 + 9 * levels as u32).min(s.cap.mgaw()),
                fpd,
            }
        };
        (self.walk(s, &walk, iova, access), walk.fpd)
    }

    fn walk(&self, s: &mut State, w: &Walk, iova: u64, access: Dma) -> Result<u64, FaultReason> {
        let fl = w.fl.is_some();
        if fl {
            // Canonical for the width: bits above it copy the top bit.
            let top = iova >> (w.width - 1);
            if top != 0 && top != u64::MAX >> (w.width - 1) {
                return Err(FaultReason::NonCanonical);
            }
        } else if w.width < 64 && iova >> w.width != 0 {
            return Err(FaultReason::BeyondAddressWidth);
        }
        let denied = match (access, fl) {
            (Dma::Read, _) => FaultReason::ReadDenied,
            (Dma::Write, false) => FaultReason::WriteDenied,
            (Dma::Write, true) => FaultReason::ScalableWriteDenied,
        };
        let need = match access {
            Dma::Read => 1,
            Dma::Write => 2,
        };
        let did = w.did;
        let pasid = w.fl.unwrap_or(0);
        let key_iova = if fl { iova & ((1 << 48) - 1) } else { iova };
        let tag = if fl { pasid } else { u32::MAX };
        for size in [1u64 << 12, 1 << 21, 1 << 30] {
            if let Some(t) = s.iotlb.get(&(did, tag, key_iova & !(size - 1))).copied() {
                if t.size != size || t.first_level != fl || t.pasid != pasid {
                    continue;
                }
                s.stats.iotlb_hits += 1;
                return match t.pa {
                    Some(pa) if t.perms & need != 0 => {
                        self.check_output(Ok(pa | (iova & (size - 1))))
                    }
                    Some(_) => Err(denied),
                    None if fl => Err(FaultReason::FirstLevelNotPresent),
                    None => Err(denied),
                };
            }
        }
        s.stats.walks += 1;
        let mut table = w.root;
        let mut perms = 3;
        let mut user = true;
        let mgaw = s.cap.mgaw();
        for depth in 0..w.levels {
            let level = w.levels - depth;
            let shift = 12 + 9 * (level as u32 - 1);
            let key = (did, tag, level, key_iova >> shift);
            let raw = match s.pscache.get(&key) {
                Some(&raw) => raw,
                None => {
                    let pa = table + ((iova >> shift) & 511) * 8;
                    if !self.in_frames(pa) {
                        return Err(FaultReason::PagingEntryAccess);
                    }
                    self.read_mem(pa)
                }
            };
            let present = if fl { raw & 1 != 0 } else { raw & 3 != 0 };
            if !present {
                if s.cap.caching_mode() {
                    s.iotlb.insert(
                        (did, tag, key_iova & !0xfff),
                        CachedTranslation {
                            pa: None,
                            size: 1 << 12,
                            perms: 0,
                            first_level: fl,
                            pasid,
                        },
                    );
                }
                return Err(if fl {
                    FaultReason::FirstLevelNotPresent
                } else {
                    denied
                });
            }
            let addr_hi = raw & 0x000f_ffff_ffff_f000;
            let leaf = level == 1 || raw & 1 << 7 != 0;
            let bad_ps = raw & 1 << 7 != 0
                && match (level, fl) {
                    (2, false) => !s.cap.superpage_2m(),
                    (3, false) => !s.cap.superpage_1g(),
                    (2, true) => false,
                    (3, true) => !s.cap.first_level_1g(),
                    _ => true,
                };
            let reserved_bit = !fl && raw & 1 << 11 != 0 && !s.ecap.snoop_control();
            if (mgaw < 52 && addr_hi >> mgaw != 0) || reserved_bit || bad_ps {
                return Err(if fl {
                    FaultReason::FirstLevelReserved
                } else {
                    FaultReason::PagingReserved
                });
            }
            if fl {
                perms &= 1 | (raw & 2);
                user &= raw & 4 != 0;
            } else {
                perms &= raw & 3;
            }
            if leaf {
                if !user {
                    return Err(FaultReason::PrivilegeViolation);
                }
                let size = 1u64 << shift;
                let pa = addr_hi & !(size - 1);
                s.iotlb.insert(
                    (did, tag, key_iova & !(size - 1)),
                    CachedTranslation {
                        pa: Some(pa),
                        size,
                        perms,
                        first_level: fl,
                        pasid,
                    },
                );
                return if perms & need != 0 {
                    self.check_output(Ok(pa | (iova & (size - 1))))
                } else {
                    Err(denied)
                };
            }
            s.pscache.insert(key, raw);
            table = addr_hi;
        }
        Err(denied)
    }

    fn check_output(&self, r: Result<u64, FaultReason>) -> Result<u64, FaultReason> {
        match r {
            Ok(pa) if (0xfee0_0000..0xfef0_0000).contains(&pa) => {
                Err(FaultReason::InterruptAddress)
            }
            r => r,
        }
    }

    fn process_queue(&self, s: &mut State) {
        if s.gsts & regs::G_QIE == 0 || s.fsts & regs::FSTS_IQE != 0 {
            return;
        }
        // IQA.DW (256-bit descriptors) counts only with scalable-mode support.
        let wide = s.iqa & 1 << 11 != 0 && s.ecap.scalable_mode();
        let (size, shift) = if wide { (32u64, 5) } else { (16, 4) };
        let entries = (4096 / size) << (s.iqa & 7);
        let tail = s.iqt >> shift;
        if tail >= entries || s.iqt & ((1 << shift) - 1) != 0 {
            s.fsts |= regs::FSTS_IQE;
            return;
        }
        let base = s.iqa & !0xfff;
        while (s.iqh >> shift) != tail {
            let at = base + (s.iqh >> shift) * size;
            let (lo, hi) = (self.read_mem(at), self.read_mem(at + 8));
            let upper_zero = !wide || (self.read_mem(at + 16) == 0 && self.read_mem(at + 24) == 0);
            // Like QEMU: PASID-based IOTLB descriptors need a 256-bit queue.
            let narrow_piotlb = !wide && lo & 0xf == descriptor::TYPE_PASID_IOTLB;
            if !upper_zero || narrow_piotlb || !self.process_descriptor(s, lo, hi) {
                s.fsts |= regs::FSTS_IQE;
                return;
            }
            s.iqh = (((s.iqh >> shift) + 1) % entries) << shift;
        }
    }

    fn process_descriptor(&self, s: &mut State, lo: u64, hi: u64) -> bool {
        let kind = ((lo >> 5) & 0x70) | (lo & 0xf);
        let ok = match kind {
            descriptor::TYPE_CONTEXT => {
                lo & CC_RESERVED == 0 && hi == 0 && s.invalidate_context(lo)
            }
            descriptor::TYPE_IOTLB => {
                lo & IOTLB_RESERVED[0] == 0
                    && hi & IOTLB_RESERVED[1] == 0
                    && s.invalidate_iotlb((lo >> 4) & 3, (lo >> 16) as u16, hi)
            }
            descriptor::TYPE_DEVICE_TLB => true,
            descriptor::TYPE_IEC => {
                lo & IEC_RESERVED == 0
                    && hi == 0
                    && s.ecap.interrupt_remapping()
                    && s.invalidate_iec(lo)
            }
            descriptor::TYPE_WAIT => {
                let (sw, irq) = (lo & descriptor::WAIT_SW != 0, lo & descriptor::WAIT_IF != 0);
                assert!(
                    !(sw && irq),
                    "wait descriptor with both status write and interrupt: QEMU aborts"
                );
                if lo & WAIT_RESERVED[0] != 0 || hi & WAIT_RESERVED[1] != 0 || !(sw || irq) {
                    false
                } else if sw {
                    if !s.stall_waits {
                        self.write_mem32(hi, (lo >> 32) as u32);
                        s.stats.status_writes += 1;
                    }
                    true
                } else {
                    s.ics |= 1;
                    s.stats.wait_interrupts += 1;
                    true
                }
            }
            descriptor::TYPE_PASID_CACHE if s.scalable => {
                lo & PASID_RESERVED[0] == 0 && hi == 0 && s.invalidate_pasid_cache(lo)
            }
            descriptor::TYPE_PASID_IOTLB if s.scalable => {
                lo & PASID_RESERVED[0] == 0
                    && hi & PASID_RESERVED[1] == 0
                    && s.invalidate_pasid_iotlb(lo, hi)
            }
            // PASID-based descriptors exist only in scalable mode.
            _ => false,
        };
        if ok {
            s.stats.descriptors[kind as usize & 15] += 1;
        }
        ok
    }

    fn gcmd(&self, s: &mut State, v: u32) {
        if v & regs::G_SRTP != 0 {
            s.root = Some(s.rtaddr & !0xfff);
            s.scalable = (s.rtaddr >> 10) & 3 == 1 && s.ecap.scalable_mode();
            s.context_cache.clear();
            s.pasid_cache.clear();
            s.gsts |= regs::G_SRTP;
            s.stats.root_pointer_sets += 1;
        }
        if v & regs::G_WBF != 0 {
            s.stats.write_buffer_flushes += 1;
        }
        let ir = s.ecap.interrupt_remapping();
        if v & regs::G_SIRTP != 0 && ir {
            // The entry cache is left as it was: software invalidates it
            // after pointing the unit at a table.
            let irta = s.irta;
            s.irt = Some(Irt {
                base: irta & !0xfff,
                entries: 2 << (irta & regs::IRTA_S_MASK),
                eime: irta & regs::IRTA_EIME != 0 && s.ecap.eim(),
            });
            s.gsts |= regs::G_SIRTP;
            s.stats.irt_pointer_sets += 1;
        }
        let enables: &[u32] = if ir {
            &[regs::G_TE, regs::G_QIE, regs::G_IRE, regs::G_CFI]
        } else {
            &[regs::G_TE, regs::G_QIE]
        };
        for &bit in enables {
            let on = v & bit != 0;
            if on != (s.gsts & bit != 0) {
                if on {
                    s.gsts |= bit;
                    if bit == regs::G_QIE {
                        s.iqh = 0;
                    }
                } else {
                    s.gsts &= !bit;
                }
            }
        }
    }
}

impl State {
    /// Records an interrupt-remapping fault (FI = index << 48) and returns it.
    fn ir_fault<T>(&mut self, sid: u16, index: u16, reason: FaultReason) -> Result<T, FaultReason> {
        self.record_frcd(
            sid,
            u64::from(index) << 48,
            u64::from(reason.code()) << 32 | u64::from(sid),
        );
        Err(reason)
    }

    /// A compatibility-format request: through only with remapping off, or
    /// with CFI set and EIME clear.
    fn compatibility(&mut self, sid: u16, d: Delivered) -> Result<Delivered, FaultReason> {
        if self.gsts & regs::G_IRE == 0 {
            return Ok(d);
        }
        let eime = self.irt.is_some_and(|t| t.eime);
        if self.gsts & regs::G_CFI == 0 || eime {
            return self.ir_fault(sid, 0, FaultReason::CompatibilityFormatBlocked);
        }
        Ok(d)
    }

    fn invalidate_iec(&mut self, lo: u64) -> bool {
        if lo & descriptor::IEC_INDEX == 0 {
            self.irte_cache.clear();
            self.stats.iec_global += 1;
            return true;
        }
        let im = ((lo >> 27) & 0x1f) as u32;
        if im > self.ecap.mhmv() {
            return false;
        }
        let first = u32::from((lo >> 32) as u16) & !((1 << im) - 1);
        let end = first + (1 << im);
        self.irte_cache
            .retain(|&i, _| !(first..end).contains(&u32::from(i)));
        self.stats.iec_index += 1;
        true
    }

    fn invalidate_context(&mut self, lo: u64) -> bool {
        match (lo >> 4) & 3 {
            1 => self.context_cache.clear(),
            2 => {
                let did = (lo >> 16) as u16;
                self.context_cache
                    .retain(|_, c| (c[1] >> 8) as u16 != did || c[0] & 1 == 0);
            }
            3 => {
                let sid = (lo >> 32) as u16;
                let mask = match (lo >> 48) & 3 {
                    0 => 0xffff,
                    fm => 0xffffu16 << fm,
                };
                self.context_cache.retain(|&k, _| k & mask != sid & mask);
            }
            _ => return false,
        }
        true
    }

    fn invalidate_iotlb(&mut self, g: u64, did: u16, hi: u64) -> bool {
        match g {
            1 => {
                self.iotlb.clear();
                self.pscache.clear();
            }
            2 => {
                self.iotlb.retain(|&(d, _, _), t| d != did || t.first_level);
                self.pscache
                    .retain(|&(d, tag, _, _), _| d != did || tag != u32::MAX);
            }
            3 => {
                let am = (hi & 0x3f) as u32;
                if am > self.cap.mamv() || !self.cap.psi() {
                    return false;
                }
                let size = 1u64 << (12 + am);
                let addr = hi & !0xfff;
                if addr & (size - 1) != 0 {
                    return false;
                }
                self.drop_pages(did, false, 0, addr, size, hi & 1 << 6 != 0);
            }
            _ => return false,
        }
        true
    }

    /// Drops cached translations (and, without the leaf hint, non-leaf
    /// entries) of domain `did` overlapping `[addr, addr + size)`, of the
    /// first level (for `pasid`) or of the second level.
    fn drop_pages(
        &mut self,
        did: u16,
        fl: bool,
        pasid: u32,
        addr: u64,
        size: u64,
        leaf_only: bool,
    ) {
        let end = addr + size;
        self.iotlb.retain(|&(d, _, base), t| {
            d != did
                || t.first_level != fl
                || (fl && t.pasid != pasid)
                || base + t.size <= addr
                || base >= end
        });
        if leaf_only {
            self.stats.psi_leaf_hint += 1;
            return;
        }
        let want = if fl { pasid } else { u32::MAX };
        self.pscache.retain(|&(d, tag, level, prefix), _| {
            let shift = 12 + 9 * (level as u32 - 1);
            let start = prefix << shift;
            d != did || tag != want || start.saturating_add(1 << shift) <= addr || start >= end
        });
    }

    fn invalidate_pasid_cache(&mut self, lo: u64) -> bool {
        let did = (lo >> 16) as u16;
        let pasid = ((lo >> 32) & 0xf_ffff) as u32;
        match (lo >> 4) & 3 {
            0 => self.pasid_cache.retain(|_, e| e[1] as u16 != did),
            1 => self
                .pasid_cache
                .retain(|&(_, p), e| !(p == pasid && (e[1] as u16 == did || e[0] & 1 == 0))),
            3 => self.pasid_cache.clear(),
            _ => return false,
        }
        true
    }

    fn invalidate_pasid_iotlb(&mut self, lo: u64, hi: u64) -> bool {
        let did = (lo >> 16) as u16;
        let pasid = ((lo >> 32) & 0xf_ffff) as u32;
        match (lo >> 4) & 3 {
            2 => {
                self.iotlb
                    .retain(|&(d, _, _), t| d != did || !t.first_level || t.pasid != pasid);
                self.pscache
                    .retain(|&(d, tag, _, _), _| d != did || tag != pasid);
            }
            3 => {
                let am = (hi & 0x3f) as u32;
                let size = 1u64 << (12 + am);
                let addr = hi & !0xfff;
                if am > self.cap.mamv().max(9) || addr & (size - 1) != 0 {
                    return false;
                }
                self.drop_pages(did, true, pasid, addr, size, hi & 1 << 6 != 0);
            }
            _ => return false,
        }
        true
    }

    fn record_fault(
        &mut self,
        sid: u16,
        iova: u64,
        access: Dma,
        reason: FaultReason,
        pasid: Option<u32>,
    ) {
        let t = match access {
            Dma::Read => 1u64 << 62,
            Dma::Write => 0,
        };
        // Like QEMU: PV reads all ones for requests without a PASID.
        let pv = match pasid {
            Some(p) => u64::from(p & 0xf_ffff) << 40 | 1 << 31,
            None => 0xffff << 40,
        };
        self.record_frcd(
            sid,
            iova & !0xfff,
            t | pv | u64::from(reason.code()) << 32 | u64::from(sid),
        );
    }

    /// Fills the next fault record with `lo` and `hi` (F added), unless the
    /// records overflowed or one of `sid` is pending already (QEMU's
    /// compression).
    fn record_frcd(&mut self, sid: u16, lo: u64, hi: u64) {
        if self.fsts & regs::FSTS_PFO != 0 {
            return;
        }
        if self
            .frcd
            .iter()
            .any(|r| r[1] & regs::FRCD_F != 0 && r[1] as u16 == sid)
        {
            return;
        }
        let i = self.next_frcd;
        if self.frcd[i][1] & regs::FRCD_F != 0 {
            self.fsts |= regs::FSTS_PFO;
            return;
        }
        self.frcd[i] = [lo, regs::FRCD_F | hi];
        if !self
            .frcd
            .iter()
            .enumerate()
            .any(|(j, r)| j != i && r[1] & regs::FRCD_F != 0)
        {
            self.fsts =
                (self.fsts & !(0xff << regs::FSTS_FRI_SHIFT)) | (i as u32) << regs::FSTS_FRI_SHIFT;
            // PPF went from clear to set: a fault event.
            self.fault_event();
        }
        self.next_frcd = (i + 1) % self.frcd.len();
    }

    fn fault_event(&mut self) {
        if self.fectl & regs::FECTL_IM != 0 {
            self.fectl |= regs::FECTL_IP;
        } else {
            self.fault_messages.push((self.feaddr, self.fedata));
        }
    }

    fn fsts(&self) -> u32 {
        let ppf = if self.frcd.iter().any(|r| r[1] & regs::FRCD_F != 0) {
            regs::FSTS_PPF
        } else {
            0
        };
        (self.fsts & !regs::FSTS_PPF) | ppf
    }

    fn fault_slot(&self, offset: usize) -> Option<(usize, usize)> {
        let base = self.cap.fault_record_offset();
        let rel = offset.checked_sub(base)?;
        let i = rel / 16;
        (i < self.frcd.len()).then_some((i, rel % 16))
    }
}

impl FakeVtd {
    fn raw_read32(&self, offset: usize) -> u32 {
        let s = self.lock();
        match offset {
            regs::VER => 0x10,
            regs::GSTS => s.gsts,
            regs::FSTS => s.fsts(),
            regs::FECTL => s.fectl,
            regs::ICS => s.ics,
            o if o % 8 == 4 => {
                drop(s);
                (self.raw_read64(o - 4) >> 32) as u32
            }
            o => {
                drop(s);
                self.raw_read64(o) as u32
            }
        }
    }

    fn raw_read64(&self, offset: usize) -> u64 {
        let mut s = self.lock();
        let iro = s.ecap.iotlb_offset();
        match offset {
            regs::CAP => s.cap.0,
            regs::ECAP => s.ecap.0,
            regs::RTADDR => s.rtaddr,
            regs::CCMD => s.ccmd,
            regs::IQH => s.iqh,
            regs::IQT => s.iqt,
            regs::IQA => s.iqa,
            regs::IRTA => s.irta,
            o if o == iro => s.iva,
            o if o == iro + 8 => s.iotlb_reg,
            o => match s.fault_slot(o) {
                Some((i, 0)) => s.frcd[i][0],
                Some((i, 8)) => s.frcd[i][1],
                _ => {
                    s.stats.unknown_accesses += 1;
                    0
                }
            },
        }
    }

    fn raw_write32(&self, offset: usize, v: u32) {
        let mut s = self.lock();
        match offset {
            regs::GCMD => self.gcmd(&mut s, v),
            regs::FSTS => {
                let w1c = v & (regs::FSTS_PFO | regs::FSTS_IQE | regs::FSTS_ICE | regs::FSTS_ITE);
                s.fsts &= !w1c;
            }
            regs::FECTL => {
                let pending = s.fectl & regs::FECTL_IP != 0;
                s.fectl = (s.fectl & regs::FECTL_IP) | (v & regs::FECTL_IM);
                // Unmasking sends what arrived while masked.
                if pending && v & regs::FECTL_IM == 0 {
                    s.fectl &= !regs::FECTL_IP;
                    let (a, d) = (s.feaddr, s.fedata);
                    s.fault_messages.push((a, d));
                }
            }
            regs::FEDATA => s.fedata = v,
            regs::FEADDR => s.feaddr = (s.feaddr & !0xffff_ffff) | u64::from(v & !3),
            regs::FEUADDR => s.feaddr = (s.feaddr & 0xffff_ffff) | u64::from(v) << 32,
            regs::ICS => s.ics &= !(v & 1),
            o => match s.fault_slot(o) {
                Some((i, 12)) if v & 1 << 31 != 0 => s.frcd[i][1] &= !regs::FRCD_F,
                Some(_) => {}
                None => {
                    drop(s);
                    // A 32-bit write to the high half of a 64-bit register
                    // (CCMD at 0x2c triggers the command, as on QEMU).
                    if o % 8 == 4 {
                        let low = self.raw_read64(o - 4) as u32;
                        self.raw_write64(o - 4, u64::from(low) | u64::from(v) << 32);
                    } else {
                        self.lock().stats.unknown_accesses += 1;
                    }
                }
            },
        }
    }

    fn raw_write64(&self, offset: usize, v: u64) {
        let mut s = self.lock();
        let iro = s.ecap.iotlb_offset();
        let qi = s.gsts & regs::G_QIE != 0;
        match offset {
            regs::RTADDR => s.rtaddr = v,
            regs::CCMD => {
                s.ccmd = v;
                if v & regs::CCMD_ICC != 0 {
                    if qi {
                        s.stats.ignored_register_invalidations += 1;
                        return;
                    }
                    let g = (v >> 61) & 3;
                    let lo = g << 4
                        | (v & 0xffff) << 16
                        | ((v >> 16) & 0xffff) << 32
                        | ((v >> 32) & 3) << 48;
                    let ok = s.invalidate_context(lo);
                    s.stats.register_invalidations += 1;
                    s.ccmd =
                        (v & !regs::CCMD_ICC) | if ok { g << regs::CCMD_CAIG_SHIFT } else { 0 };
                }
            }
            regs::IQT => {
                s.iqt = v;
                self.process_queue(&mut s);
            }
            regs::IQA => s.iqa = v,
            regs::IRTA => s.irta = v,
            o if o == iro => s.iva = v,
            o if o == iro + 8 => {
                s.iotlb_reg = v;
                if v & regs::IOTLB_IVT != 0 {
                    if qi {
                        s.stats.ignored_register_invalidations += 1;
                        return;
                    }
                    let g = (v >> 60) & 3;
                    let did = (v >> 32) as u16;
                    let iva = s.iva;
                    let ok = s.invalidate_iotlb(g, did, iva);
                    s.stats.register_invalidations += 1;
                    s.iotlb_reg =
                        (v & !regs::IOTLB_IVT) | if ok { g << regs::IOTLB_IAIG_SHIFT } else { 0 };
                }
            }
            o => match s.fault_slot(o) {
                Some((i, 8)) if v & regs::FRCD_F != 0 => s.frcd[i][1] &= !regs::FRCD_F,
                Some(_) => {}
                None => s.stats.unknown_accesses += 1,
            },
        }
    }
}

/// The registers of a block of [`Mmio::size`] bytes: an access
/// outside it or misaligned is refused as [`check_access`] says, and one at
/// the offset given to [`FakeVtd::refuse_access`] with [`MmioError::Width`];
/// a refused access reaches nothing.
impl Mmio for FakeVtd {
    fn size(&self) -> usize {
        self.lock().register_size
    }
    fn read32(&self, offset: usize) -> Result<u32, MmioError> {
        self.check(offset, Width::W32)?;
        Ok(self.raw_read32(offset))
    }
    fn read64(&self, offset: usize) -> Result<u64, MmioError> {
        self.check(offset, Width::W64)?;
        Ok(self.raw_read64(offset))
    }
    fn write32(&self, offset: usize, value: u32) -> Result<(), MmioError> {
        self.check(offset, Width::W32)?;
        self.raw_write32(offset, value);
        Ok(())
    }
    fn write64(&self, offset: usize, value: u64) -> Result<(), MmioError> {
        self.check(offset, Width::W64)?;
        self.raw_write64(offset, value);
        Ok(())
    }
}

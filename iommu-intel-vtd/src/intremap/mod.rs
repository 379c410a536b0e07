//! Interrupt remapping (VT-d specification chapter 5 and 9.10): a table of
//! entries that say which vector goes to which APIC, and which requester
//! may raise it; devices and I/O APICs then send remappable-format requests
//! that name an entry instead of a destination.
//!
//! [`VtdUnit::enable_interrupt_remapping`] builds the table from the unit's
//! frames, points the unit at it (IRTA, GCMD.SIRTP), drops whatever the unit
//! cached (global interrupt entry cache invalidation), sets GCMD.CFI as
//! [`IrConfig::allow_compatibility_format`] says and turns remapping on
//! (GCMD.IRE). [`InterruptRemapping`] then hands out entries
//! ([`alloc`](InterruptRemapping::alloc)), writes them
//! ([`program`](InterruptRemapping::program), followed by an index-selective
//! invalidation and its wait), and composes the requests that name them
//! ([`msi`](InterruptRemapping::msi), [`ioapic_rte`](InterruptRemapping::ioapic_rte)).
//! Dropping it turns remapping off and frees the table once the unit
//! confirmed.
//!
//! The entry cache is invalidated only by a queued descriptor, so interrupt
//! remapping needs queued invalidation (ECAP.QI). Posted interrupts (IRTE
//! mode 1) are not supported.

pub mod entry;

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering, fence};

use iova_core::{FrameAllocator, PhysAddr};

use crate::descriptor::{Descriptor, IecScope};
use crate::error::{VtdError, Wait};
use crate::regs::{self, Mmio};
use crate::unit::{FRAME, VtdUnit};

pub use entry::{
    DeliveryMode, DestinationMode, Irte, MsiMessage, SourceValidation, TriggerMode,
};

/// Most entries a table can hold (IRTA.S = 15).
pub const MAX_ENTRIES: u32 = 65536;

/// Interrupt remapping settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IrConfig {
    /// Entries: a power of two, 2..=65536 (IRTA.S = log2(entries) - 1).
    /// Default 256.
    pub entries: u32,
    /// Extended interrupt mode (IRTA.EIME): 32-bit x2APIC destinations.
    /// Needs ECAP.EIM ([`VtdError::ExtendedInterruptModeUnsupported`]
    /// otherwise; QEMU accepts EIME without it, so the driver checks).
    /// Default false.
    pub x2apic: bool,
    /// Let compatibility-format interrupts through (GCMD.CFI). Default
    /// false: they are blocked (fault reason 0x25). A compatibility-format
    /// request names its destination and vector itself, bypassing the table
    /// and its source validation, so any device that can write the
    /// interrupt address range can then raise any vector on any CPU. Set it
    /// only while something (legacy firmware, an unconverted driver) still
    /// needs it.
    pub allow_compatibility_format: bool,
}

impl Default for IrConfig {
    fn default() -> Self {
        Self {
            entries: 256,
            x2apic: false,
            allow_compatibility_format: false,
        }
    }
}

/// An index into the interrupt remapping table, allocated by
/// [`InterruptRemapping::alloc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct IrtIndex(u16);

impl IrtIndex {
    /// The index (the interrupt handle of remappable requests).
    pub fn get(self) -> u16 {
        self.0
    }
}

/// Which entries are handed out, and where the search starts.
struct Slots {
    next: u32,
    used: u32,
}

/// Interrupt remapping on one unit: its table, and the entries handed out.
/// At most one per unit lives at a time.
pub struct InterruptRemapping<'u, M: Mmio, A: FrameAllocator> {
    unit: &'u VtdUnit<M, A>,
    table: PhysAddr,
    table_bytes: usize,
    /// One bit per entry: allocated.
    bitmap: PhysAddr,
    bitmap_bytes: usize,
    entries: u32,
    x2apic: bool,
    cfi: bool,
    slots: spin::Mutex<Slots>,
}

impl<M: Mmio, A: FrameAllocator> fmt::Debug for InterruptRemapping<'_, M, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InterruptRemapping")
            .field("table", &self.table)
            .field("entries", &self.entries)
            .field("x2apic", &self.x2apic)
            .field("compatibility_format", &self.cfi)
            .finish_non_exhaustive()
    }
}

impl<M: Mmio, A: FrameAllocator> VtdUnit<M, A> {
    /// Sets up interrupt remapping (see the [module docs](crate::intremap)):
    /// a zeroed table of `config.entries` entries from the unit's frames
    /// (one contiguous, size-aligned allocation: 1 MiB for 65536 entries),
    /// IRTA and SIRTP, a global interrupt entry cache invalidation and its
    /// wait, CFI as asked, then IRE. Remapping left on by firmware is turned
    /// off first.
    ///
    /// # Errors
    ///
    /// Refused with nothing written: [`VtdError::InterruptRemappingUnsupported`]
    /// (no ECAP.IR), [`VtdError::InterruptRemappingNeedsQueue`] (no ECAP.QI),
    /// [`VtdError::ExtendedInterruptModeUnsupported`] (`x2apic` without
    /// ECAP.EIM), [`VtdError::BadInterruptTableSize`],
    /// [`VtdError::InterruptRemappingActive`] (this unit has one live
    /// already), [`VtdError::NoMemory`] / [`VtdError::FrameUnreachable`]
    /// (no frames, or frames beyond the unit's address width). A register
    /// access, timeout or queue error after the table was published turns
    /// remapping off again (the table is freed if the unit confirms).
    pub fn enable_interrupt_remapping(
        &self,
        config: IrConfig,
    ) -> Result<InterruptRemapping<'_, M, A>, VtdError> {
        let ecap = self.features.ecap;
        if !ecap.interrupt_remapping() {
            return Err(VtdError::InterruptRemappingUnsupported);
        }
        if !self.queued_invalidation() {
            return Err(VtdError::InterruptRemappingNeedsQueue);
        }
        if config.x2apic && !ecap.eim() {
            return Err(VtdError::ExtendedInterruptModeUnsupported);
        }
        let n = config.entries;
        if !(2..=MAX_ENTRIES).contains(&n) || !n.is_power_of_two() {
            return Err(VtdError::BadInterruptTableSize(n));
        }
        if self
            .ir_live
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(VtdError::InterruptRemappingActive);
        }
        let table_bytes = (n as usize * 16).max(FRAME);
        let bitmap_bytes = (n as usize / 8).max(FRAME);
        let table = match self.alloc_region(table_bytes) {
            Ok(t) => t,
            Err(e) => {
                self.ir_live.store(false, Ordering::Release);
                return Err(e);
            }
        };
        let bitmap = match self.alloc_region(bitmap_bytes) {
            Ok(b) => b,
            Err(e) => {
                // SAFETY: just allocated, never published.
                unsafe { self.frames.free(table, table_bytes) };
                self.ir_live.store(false, Ordering::Release);
                return Err(e);
            }
        };
        // From here on, dropping `ir` undoes what was done (remapping off,
        // table freed once the unit confirms, the unit free again).
        let ir = InterruptRemapping {
            unit: self,
            table,
            table_bytes,
            bitmap,
            bitmap_bytes,
            entries: n,
            x2apic: config.x2apic,
            cfi: config.allow_compatibility_format,
            slots: spin::Mutex::new(Slots { next: 0, used: 0 }),
        };
        ir.start()?;
        Ok(ir)
    }

    /// A zeroed, `bytes`-aligned region the unit can address.
    fn alloc_region(&self, bytes: usize) -> Result<PhysAddr, VtdError> {
        let pa = self.frames.alloc_zeroed(bytes).ok_or(VtdError::NoMemory)?;
        let bits = self.address_width();
        let end = pa.0.checked_add(bytes as u64);
        if pa.0 % bytes as u64 != 0 || (bits < 64 && end.is_none_or(|e| e > 1 << bits)) {
            // SAFETY: just allocated, never published.
            unsafe { self.frames.free(pa, bytes) };
            return Err(VtdError::FrameUnreachable(pa.0));
        }
        Ok(pa)
    }
}

impl<M: Mmio, A: FrameAllocator> InterruptRemapping<'_, M, A> {
    fn start(&self) -> Result<(), VtdError> {
        let unit = self.unit;
        if unit.gsts()? & regs::G_IRE != 0 {
            unit.global_command(regs::G_IRE, false, Wait::InterruptRemappingEnable)?;
        }
        unit.publish(self.table.0, self.table_bytes);
        let s = u64::from(self.entries.trailing_zeros() - 1);
        let eime = if self.x2apic { regs::IRTA_EIME } else { 0 };
        unit.regs.write64(regs::IRTA, self.table.0 | eime | s)?;
        unit.one_shot(regs::G_SIRTP, Wait::InterruptTablePointer)?;
        self.invalidate_all()?;
        // Compatibility format is decided before remapping goes on, so that
        // no compatibility-format request slips through in between.
        let cfis = unit.gsts()? & regs::G_CFI != 0;
        if cfis != self.cfi {
            unit.global_command(regs::G_CFI, self.cfi, Wait::CompatibilityFormat)?;
        }
        unit.global_command(regs::G_IRE, true, Wait::InterruptRemappingEnable)
    }

    /// Entries of the table.
    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// Whether destinations are x2APIC IDs (IRTA.EIME).
    pub fn x2apic(&self) -> bool {
        self.x2apic
    }

    /// Whether compatibility-format interrupts are let through (GCMD.CFI).
    pub fn compatibility_format(&self) -> bool {
        self.cfi
    }

    /// Physical address of the table.
    pub fn table(&self) -> PhysAddr {
        self.table
    }

    /// Entries handed out now.
    pub fn allocated(&self) -> u32 {
        self.slots.lock().used
    }

    fn qword(&self, base: PhysAddr, index: usize) -> &AtomicU64 {
        let p = self.unit.frames.phys_to_virt(base).cast::<u64>();
        // SAFETY: `base` is the table or the bitmap, allocated in
        // `enable_interrupt_remapping` and freed only by `drop`; callers
        // keep `index` below its qwords (2 per entry, 1 per 64 entries),
        // 8-byte aligned as the frame is.
        unsafe { AtomicU64::from_ptr(p.add(index)) }
    }

    fn is_allocated(&self, index: u16) -> bool {
        let i = usize::from(index);
        self.qword(self.bitmap, i / 64).load(Ordering::Relaxed) & 1 << (i % 64) != 0
    }

    fn set_allocated(&self, index: u16, on: bool) {
        let i = usize::from(index);
        let w = self.qword(self.bitmap, i / 64);
        if on {
            w.fetch_or(1 << (i % 64), Ordering::Relaxed);
        } else {
            w.fetch_and(!(1 << (i % 64)), Ordering::Relaxed);
        }
    }

    /// Hands out an entry (not present until [`program`](Self::program)).
    ///
    /// # Errors
    ///
    /// [`VtdError::InterruptTableFull`] when every entry is allocated.
    pub fn alloc(&self) -> Result<IrtIndex, VtdError> {
        let mut slots = self.slots.lock();
        if slots.used == self.entries {
            return Err(VtdError::InterruptTableFull);
        }
        let n = self.entries;
        let free = (0..n)
            .map(|k| ((slots.next + k) % n) as u16)
            .find(|&i| !self.is_allocated(i))
            .ok_or(VtdError::InterruptTableFull)?;
        self.set_allocated(free, true);
        slots.used += 1;
        slots.next = (u32::from(free) + 1) % n;
        Ok(IrtIndex(free))
    }

    fn check_index(&self, index: IrtIndex) -> Result<usize, VtdError> {
        if u32::from(index.0) >= self.entries {
            return Err(VtdError::InterruptIndexOutOfRange(index.0));
        }
        if !self.is_allocated(index.0) {
            return Err(VtdError::InterruptIndexNotAllocated(index.0));
        }
        Ok(2 * usize::from(index.0))
    }

    /// Writes entry `index` (present last), then invalidates it
    /// (index-selective, and waits).
    ///
    /// An entry that is present already is rewritten in place: when only
    /// its low qword changes (vector, destination, modes), with one 64-bit
    /// store, so the unit sees the old entry or the new one; when its
    /// source validation changes, it is made not present first, so that no
    /// request is checked against one entry's source and delivered by
    /// another's destination (a request in that window is blocked, fault
    /// 0x22).
    ///
    /// # Errors
    ///
    /// Refused with nothing written: [`VtdError::InterruptIndexOutOfRange`],
    /// [`VtdError::InterruptIndexNotAllocated`], [`VtdError::BadIrte`] (an
    /// APIC ID above 0xFF without x2APIC mode, a vector below 16 for fixed or
    /// lowest-priority delivery, SQ above 3, an empty bus range). The
    /// invalidation's [`VtdError::Timeout`] or [`VtdError::QueueError`]
    /// after the entry was written.
    pub fn program(&self, index: IrtIndex, entry: &Irte) -> Result<(), VtdError> {
        let _slots = self.slots.lock();
        let q = self.check_index(index)?;
        entry.check(self.x2apic).map_err(VtdError::BadIrte)?;
        let [lo, hi] = entry.encode(self.x2apic);
        let (wlo, whi) = (self.qword(self.table, q), self.qword(self.table, q + 1));
        let at = self.table.0 + 8 * q as u64;
        if whi.load(Ordering::Relaxed) != hi {
            if wlo.load(Ordering::Relaxed) & entry::IRTE_P != 0 {
                wlo.store(0, Ordering::Release);
                fence(Ordering::SeqCst);
                self.unit.publish(at, 16);
                self.invalidate(index)?;
            }
            whi.store(hi, Ordering::Release);
            fence(Ordering::SeqCst);
            self.unit.publish(at, 16);
        }
        wlo.store(lo, Ordering::Release);
        fence(Ordering::SeqCst);
        self.unit.publish(at, 16);
        self.invalidate(index)
    }

    /// What entry `index` holds now (the two raw qwords), for diagnostics.
    pub fn read_entry(&self, index: IrtIndex) -> Result<[u64; 2], VtdError> {
        let q = self.check_index(index)?;
        Ok([
            self.qword(self.table, q).load(Ordering::Acquire),
            self.qword(self.table, q + 1).load(Ordering::Acquire),
        ])
    }

    /// Makes entry `index` not present, invalidates it (and waits), and
    /// gives the index back.
    ///
    /// # Errors
    ///
    /// [`VtdError::InterruptIndexOutOfRange`] or
    /// [`VtdError::InterruptIndexNotAllocated`] (freed twice), nothing
    /// changed. If the invalidation fails the index stays allocated (the
    /// unit may still hold the entry), the error is returned, and freeing
    /// it again retries.
    pub fn free(&self, index: IrtIndex) -> Result<(), VtdError> {
        let mut slots = self.slots.lock();
        let q = self.check_index(index)?;
        let at = self.table.0 + 8 * q as u64;
        self.qword(self.table, q).store(0, Ordering::Release);
        fence(Ordering::SeqCst);
        self.qword(self.table, q + 1).store(0, Ordering::Release);
        fence(Ordering::SeqCst);
        self.unit.publish(at, 16);
        self.invalidate(index)?;
        self.set_allocated(index.0, false);
        slots.used -= 1;
        Ok(())
    }

    fn invalidate(&self, index: IrtIndex) -> Result<(), VtdError> {
        self.unit.submit(&[Descriptor::iec(IecScope::Index {
            index: index.0,
            mask: 0,
        })])
    }

    /// The remappable-format MSI that names entry `index` (address
    /// `0xFEE0_0000 | handle`, data 0, SHV clear), for the device's MSI or
    /// MSI-X registers.
    pub fn msi(&self, index: IrtIndex) -> MsiMessage {
        entry::remappable_msi(index.0)
    }

    /// The remappable-format I/O APIC redirection table entry (64 bits)
    /// that names entry `index`. `vector` must equal the entry's (the I/O
    /// APIC matches EOIs of level-triggered interrupts by it); `trigger`
    /// and the polarity are the pin's.
    pub fn ioapic_rte(
        &self,
        index: IrtIndex,
        vector: u8,
        trigger: TriggerMode,
        active_low: bool,
        masked: bool,
    ) -> u64 {
        entry::remappable_rte(index.0, vector, trigger, active_low, masked)
    }

    /// Drops every entry the unit cached (global interrupt entry cache
    /// invalidation) and waits.
    pub fn invalidate_all(&self) -> Result<(), VtdError> {
        self.unit.submit(&[Descriptor::iec(IecScope::Global)])
    }
}

impl<M: Mmio, A: FrameAllocator> Drop for InterruptRemapping<'_, M, A> {
    /// Turns remapping (and compatibility format) off, drops the unit's
    /// cached entries, and frees the table once GSTS.IRES reads clear; if
    /// the unit does not confirm, the table is leaked (the unit may still
    /// read it).
    fn drop(&mut self) {
        let unit = self.unit;
        let off = unit
            .global_command(regs::G_IRE, false, Wait::InterruptRemappingEnable)
            .and_then(|()| {
                if unit.gsts()? & regs::G_CFI != 0 {
                    unit.global_command(regs::G_CFI, false, Wait::CompatibilityFormat)?;
                }
                Ok(())
            });
        if let Err(e) = self.invalidate_all() {
            iova_core::warn_event!("VT-d: interrupt entry cache invalidation failed: {}", e);
        }
        match off {
            Ok(()) => {
                // SAFETY: allocated in `enable_interrupt_remapping`; with
                // IRE off the unit no longer reads the table.
                unsafe { unit.frames.free(self.table, self.table_bytes) };
            }
            Err(e) => iova_core::warn_event!(
                "VT-d: interrupt remapping not confirmed off ({}): table leaked",
                e
            ),
        }
        // SAFETY: the bitmap is the driver's own, never given to the unit.
        unsafe { unit.frames.free(self.bitmap, self.bitmap_bytes) };
        unit.ir_live.store(false, Ordering::Release);
    }
}

//! Primary fault records (VT-d specification 7.2 and 11.4.14).
//!
//! Each fault recording register is 128 bits: the low half holds the faulting
//! address (4 KiB aligned), the high half the fault flag F (bit 63, write 1
//! to clear), the request type T (bit 62: 1 = read), the reason FR (39:32),
//! the PASID and whether it is present (PV 59:40, PP 31), and the source ID
//! (15:0). A fault of an interrupt request (interrupt remapping, reasons
//! 0x20..=0x27) carries the interrupt index in bits 63:48 of the low half
//! instead of an address; [`VtdUnit::drain_faults`] returns both kinds.
//!
//! [`VtdUnit::drain_faults`] reads and clears them;
//! [`VtdUnit::enable_fault_interrupt`] has the unit signal new ones.

use core::fmt;

use iova_core::FrameAllocator;

use crate::acpi::dmar::Bdf;
use crate::error::VtdError;
use crate::regs::{self, Mmio};
use crate::unit::VtdUnit;

/// Why the unit blocked a request (the FR field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum FaultReason {
    /// 0x1: the root entry for the bus is not present.
    RootNotPresent,
    /// 0x2: the context entry for the device is not present.
    ContextNotPresent,
    /// 0x3: the context entry is invalid (bad TT or AW).
    ContextInvalid,
    /// 0x4: the address is beyond the guest address width.
    BeyondAddressWidth,
    /// 0x5: a write was denied (no W permission, or not present).
    WriteDenied,
    /// 0x6: a read was denied (no R permission, or not present).
    ReadDenied,
    /// 0x7: reading a paging entry failed.
    PagingEntryAccess,
    /// 0x8: reading the root table failed.
    RootTableAccess,
    /// 0x9: reading the context table failed.
    ContextTableAccess,
    /// 0xA: a reserved bit is set in a root entry.
    RootReserved,
    /// 0xB: a reserved bit is set in a context entry.
    ContextReserved,
    /// 0xC: a reserved bit is set in a paging entry.
    PagingReserved,
    /// 0xD: the translation type of the context entry forbids the request.
    TranslationTypeBlocked,
    /// 0xE: the output address is in the interrupt address range.
    InterruptAddress,
    /// 0x20: a reserved field of the interrupt request is set.
    InterruptRequestReserved,
    /// 0x21: the interrupt index is beyond the table (IRTA.S).
    InterruptIndexBeyondTable,
    /// 0x22: the interrupt remapping entry is not present.
    IrteNotPresent,
    /// 0x23: reading the interrupt remapping table failed (IRTA points
    /// beyond the address width, or the access failed).
    InterruptTableAccess,
    /// 0x24: a reserved field of a present interrupt remapping entry is set.
    IrteReserved,
    /// 0x25: a compatibility-format interrupt was blocked (GSTS.CFIS clear,
    /// or IRTA.EIME set).
    CompatibilityFormatBlocked,
    /// 0x26: the requester failed the entry's source validation (SID, SQ,
    /// SVT).
    InterruptSourceInvalid,
    /// 0x27: reading the posted interrupt descriptor failed.
    PostedDescriptorAccess,
    /// 0x51: the PASID directory entry is not present (scalable mode).
    PasidDirNotPresent,
    /// 0x59: the PASID table entry is not present (scalable mode).
    PasidEntryNotPresent,
    /// 0x5B: the PASID table entry is invalid (translation type or width).
    PasidEntryInvalid,
    /// 0x71: a first-level paging entry is not present.
    FirstLevelNotPresent,
    /// 0x72: a reserved bit is set in a first-level paging entry.
    FirstLevelReserved,
    /// 0x80: the address is not canonical for first-level translation.
    NonCanonical,
    /// 0x81: a user request hit a supervisor-only first-level page.
    PrivilegeViolation,
    /// 0x85: a write was denied (scalable mode).
    ScalableWriteDenied,
    /// Any other code.
    Other(u8),
}

impl FaultReason {
    /// Decodes the FR field.
    pub fn from_code(code: u8) -> Self {
        match code {
            0x1 => Self::RootNotPresent,
            0x2 => Self::ContextNotPresent,
            0x3 => Self::ContextInvalid,
            0x4 => Self::BeyondAddressWidth,
            0x5 => Self::WriteDenied,
            0x6 => Self::ReadDenied,
            0x7 => Self::PagingEntryAccess,
            0x8 => Self::RootTableAccess,
            0x9 => Self::ContextTableAccess,
            0xa => Self::RootReserved,
            0xb => Self::ContextReserved,
            0xc => Self::PagingReserved,
            0xd => Self::TranslationTypeBlocked,
            0xe => Self::InterruptAddress,
            0x20 => Self::InterruptRequestReserved,
            0x21 => Self::InterruptIndexBeyondTable,
            0x22 => Self::IrteNotPresent,
            0x23 => Self::InterruptTableAccess,
            0x24 => Self::IrteReserved,
            0x25 => Self::CompatibilityFormatBlocked,
            0x26 => Self::InterruptSourceInvalid,
            0x27 => Self::PostedDescriptorAccess,
            0x51 => Self::PasidDirNotPresent,
            0x59 => Self::PasidEntryNotPresent,
            0x5b => Self::PasidEntryInvalid,
            0x71 => Self::FirstLevelNotPresent,
            0x72 => Self::FirstLevelReserved,
            0x80 => Self::NonCanonical,
            0x81 => Self::PrivilegeViolation,
            0x85 => Self::ScalableWriteDenied,
            c => Self::Other(c),
        }
    }

    /// Whether the fault was an interrupt request's (interrupt remapping,
    /// reasons 0x20..=0x27) rather than a DMA request's.
    pub fn is_interrupt(self) -> bool {
        (0x20..=0x27).contains(&self.code())
    }

    /// The FR code.
    pub fn code(self) -> u8 {
        match self {
            Self::RootNotPresent => 0x1,
            Self::ContextNotPresent => 0x2,
            Self::ContextInvalid => 0x3,
            Self::BeyondAddressWidth => 0x4,
            Self::WriteDenied => 0x5,
            Self::ReadDenied => 0x6,
            Self::PagingEntryAccess => 0x7,
            Self::RootTableAccess => 0x8,
            Self::ContextTableAccess => 0x9,
            Self::RootReserved => 0xa,
            Self::ContextReserved => 0xb,
            Self::PagingReserved => 0xc,
            Self::TranslationTypeBlocked => 0xd,
            Self::InterruptAddress => 0xe,
            Self::InterruptRequestReserved => 0x20,
            Self::InterruptIndexBeyondTable => 0x21,
            Self::IrteNotPresent => 0x22,
            Self::InterruptTableAccess => 0x23,
            Self::IrteReserved => 0x24,
            Self::CompatibilityFormatBlocked => 0x25,
            Self::InterruptSourceInvalid => 0x26,
            Self::PostedDescriptorAccess => 0x27,
            Self::PasidDirNotPresent => 0x51,
            Self::PasidEntryNotPresent => 0x59,
            Self::PasidEntryInvalid => 0x5b,
            Self::FirstLevelNotPresent => 0x71,
            Self::FirstLevelReserved => 0x72,
            Self::NonCanonical => 0x80,
            Self::PrivilegeViolation => 0x81,
            Self::ScalableWriteDenied => 0x85,
            Self::Other(c) => c,
        }
    }
}

/// Whether the faulting request read or wrote memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum AccessKind {
    /// A DMA read (device reads memory).
    Read,
    /// A DMA write (device writes memory).
    Write,
}

/// One primary fault record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FaultRecord {
    /// The requester.
    pub source: Bdf,
    /// The faulting address, 4 KiB aligned (the record's FI field). For an
    /// interrupt request ([`FaultReason::is_interrupt`]) FI holds the
    /// interrupt index in bits 63:48 instead
    /// ([`interrupt_index`](Self::interrupt_index)).
    pub address: u64,
    /// Read or write (interrupt requests are writes).
    pub access: AccessKind,
    /// Why it was blocked.
    pub reason: FaultReason,
    /// The PASID of the request, if it carried one (PP set). QEMU fills PV
    /// with ones for requests without a PASID, so PV is read only with PP.
    pub pasid: Option<u32>,
}

impl FaultRecord {
    /// Decodes a record's two halves (F is not checked here).
    pub fn decode(lo: u64, hi: u64) -> Self {
        Self {
            source: Bdf::from_source_id(hi as u16),
            address: lo & !0xfff,
            access: if hi & 1 << 62 != 0 {
                AccessKind::Read
            } else {
                AccessKind::Write
            },
            reason: FaultReason::from_code((hi >> 32) as u8),
            pasid: (hi & 1 << 31 != 0).then_some(((hi >> 40) & 0xf_ffff) as u32),
        }
    }
}

impl FaultRecord {
    /// The index of the interrupt remapping entry the faulting interrupt
    /// request named (FI bits 63:48), for interrupt-remapping faults; `None`
    /// for DMA faults. (For a fault found before the index was computed,
    /// e.g. a blocked compatibility-format request, the unit reports 0.)
    pub fn interrupt_index(&self) -> Option<u16> {
        self.reason
            .is_interrupt()
            .then_some((self.address >> 48) as u16)
    }
}

impl fmt::Display for FaultRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(index) = self.interrupt_index() {
            return write!(
                f,
                "interrupt request fault from {}, index {}: {:?} (reason {:#x})",
                self.source,
                index,
                self.reason,
                self.reason.code()
            );
        }
        write!(
            f,
            "DMA {} fault from {} at {:#x}: {:?} (reason {:#x})",
            match self.access {
                AccessKind::Read => "read",
                AccessKind::Write => "write",
            },
            self.source,
            self.address,
            self.reason,
            self.reason.code()
        )?;
        if let Some(p) = self.pasid {
            write!(f, ", PASID {p:#x}")?;
        }
        Ok(())
    }
}

/// What one pass over the fault recording registers found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FaultSummary {
    /// Records read and cleared.
    pub records: usize,
    /// FSTS.PFO was set: faults were lost because every record was full.
    pub overflow: bool,
}

impl<M: Mmio, A: FrameAllocator> VtdUnit<M, A> {
    /// Has the unit signal new faults with the message-signalled interrupt
    /// `data` written to `addr` (on x86, `0xFEE0_0000 | apic_id << 12` and
    /// the vector), then unmasks it. The unit raises it when a fault record
    /// becomes pending with none pending before; read and clear the records
    /// with [`drain_faults`](Self::drain_faults) so that the next fault
    /// raises it again.
    ///
    /// # Errors
    ///
    /// [`VtdError::Register`] if a register write is refused; the interrupt
    /// stays masked (the mask is written first and unmasked last).
    pub fn enable_fault_interrupt(&self, addr: u64, data: u32) -> Result<(), VtdError> {
        self.regs.write32(regs::FECTL, regs::FECTL_IM)?;
        self.regs.write32(regs::FEDATA, data)?;
        self.regs.write32(regs::FEADDR, addr as u32)?;
        self.regs.write32(regs::FEUADDR, (addr >> 32) as u32)?;
        self.regs.write32(regs::FECTL, 0)?;
        Ok(())
    }

    /// Masks the fault event interrupt (the reset state).
    ///
    /// # Errors
    ///
    /// [`VtdError::Register`] if the FECTL write is refused.
    pub fn disable_fault_interrupt(&self) -> Result<(), VtdError> {
        Ok(self.regs.write32(regs::FECTL, regs::FECTL_IM)?)
    }

    /// Whether a fault event arrived while the interrupt was masked
    /// (FECTL.IP); unmasking sends it.
    ///
    /// # Errors
    ///
    /// [`VtdError::Register`] if the FECTL read is refused.
    pub fn fault_interrupt_pending(&self) -> Result<bool, VtdError> {
        Ok(self.regs.read32(regs::FECTL)? & regs::FECTL_IP != 0)
    }

    /// Reads every fault record with F set (starting at FSTS.FRI), hands it
    /// to `sink` and clears it; clears and reports a primary fault overflow.
    ///
    /// # Errors
    ///
    /// [`VtdError::Register`] if a register access is refused; the records
    /// handed to `sink` before it were cleared, the others are left as they
    /// were. (Probe checked that every fault record lies inside the block,
    /// so only an [`Mmio`] that refuses accesses inside it does this.)
    pub fn drain_faults(
        &self,
        mut sink: impl FnMut(FaultRecord),
    ) -> Result<FaultSummary, VtdError> {
        let cap = self.features.cap;
        let (base, n) = (cap.fault_record_offset(), cap.fault_records());
        let fsts = self.regs.read32(regs::FSTS)?;
        let first = (fsts >> regs::FSTS_FRI_SHIFT & 0xff) as usize % n;
        let mut summary = FaultSummary::default();
        for k in 0..n {
            let off = base + 16 * ((first + k) % n);
            let hi = self.regs.read64(off + 8)?;
            if hi & regs::FRCD_F == 0 {
                continue;
            }
            let lo = self.regs.read64(off)?;
            // F is write-1-to-clear in bit 31 of the record's last dword.
            self.regs.write32(off + 12, 1 << 31)?;
            self.counters.faults.incr();
            sink(FaultRecord::decode(lo, hi));
            summary.records += 1;
        }
        if fsts & regs::FSTS_PFO != 0 {
            self.regs.write32(regs::FSTS, regs::FSTS_PFO)?;
            summary.overflow = true;
            iova_core::warn_event!("VT-d: primary fault overflow: faults were lost");
        }
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_a_record_measured_on_qemu() {
        // edu at 00:01.0 writing an unmapped IOVA; PV reads all ones without PP.
        let r = FaultRecord::decode(0x1_2345_6000, 0x80FF_FF05_0000_0008);
        assert_eq!(r.source, Bdf::new(0, 1, 0));
        assert_eq!(r.address, 0x1_2345_6000);
        assert_eq!(r.access, AccessKind::Write);
        assert_eq!(r.reason, FaultReason::WriteDenied);
        assert_eq!(r.pasid, None);
        let r = FaultRecord::decode(
            0x5000,
            3 << 62 | 0x12345 << 40 | 0x02 << 32 | 1 << 31 | 0x0110,
        );
        assert_eq!(r.access, AccessKind::Read);
        assert_eq!(r.reason, FaultReason::ContextNotPresent);
        assert_eq!(r.pasid, Some(0x12345));
        assert_eq!(r.source, Bdf::new(1, 2, 0));
    }

    #[test]
    fn decodes_an_interrupt_remapping_record() {
        // QEMU's layout: FI = index << 48, SID, FR, no T, PV or PP.
        let r = FaultRecord::decode(0x1234 << 48, 1 << 63 | 0x26 << 32 | 0x0108);
        assert_eq!(r.reason, FaultReason::InterruptSourceInvalid);
        assert!(r.reason.is_interrupt());
        assert_eq!(r.interrupt_index(), Some(0x1234));
        assert_eq!(r.source, Bdf::new(1, 1, 0));
        assert_eq!(r.access, AccessKind::Write);
        let text = std::format!("{r}");
        assert!(text.starts_with("interrupt request fault from"), "{text}");
        assert!(text.contains("index 4660"), "{text}");
        // A DMA fault has no interrupt index, whatever its address.
        let d = FaultRecord::decode(0xffff_0000_0000_0000, 1 << 63 | 0x05 << 32);
        assert_eq!(d.interrupt_index(), None);
        let names = [
            FaultReason::InterruptRequestReserved,
            FaultReason::InterruptIndexBeyondTable,
            FaultReason::IrteNotPresent,
            FaultReason::InterruptTableAccess,
            FaultReason::IrteReserved,
            FaultReason::CompatibilityFormatBlocked,
            FaultReason::InterruptSourceInvalid,
            FaultReason::PostedDescriptorAccess,
        ];
        for (k, reason) in names.into_iter().enumerate() {
            assert_eq!(FaultReason::from_code(0x20 + k as u8), reason);
            assert!(reason.is_interrupt());
        }
        assert!(!FaultReason::from_code(0x1f).is_interrupt());
        assert!(!FaultReason::from_code(0x28).is_interrupt());
    }

    #[test]
    fn reason_codes_round_trip() {
        for c in 0..=0xffu8 {
            assert_eq!(FaultReason::from_code(c).code(), c);
        }
        assert_eq!(FaultReason::from_code(0x58), FaultReason::Other(0x58));
        assert_eq!(
            FaultReason::from_code(0x59),
            FaultReason::PasidEntryNotPresent
        );
    }
}

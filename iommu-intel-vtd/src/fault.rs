//! Primary fault records (VT-d specification 7.2 and 11.4.14).
//!
//! Each fault recording register is 128 bits: the low half holds the faulting
//! address (4 KiB aligned), the high half the fault flag F (bit 63, write 1
//! to clear), the request type T (bit 62: 1 = read), the reason FR (39:32),
//! the PASID and whether it is present (PV 59:40, PP 31), and the source ID
//! (15:0).
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
    /// The faulting address, 4 KiB aligned.
    pub address: u64,
    /// Read or write.
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

impl fmt::Display for FaultRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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

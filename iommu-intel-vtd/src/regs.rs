//! Register offsets and bit fields of a remapping unit (VT-d specification,
//! chapter 11), and MMIO access to them.
//!
//! Registers are reached through [`Mmio`] (iova-core's, re-exported here), so
//! the driver runs against real hardware ([`MmioRegion`]) and against the
//! host fake the same way.

/// Version register (32 bits).
pub const VER: usize = 0x00;
/// Capability register (64 bits).
pub const CAP: usize = 0x08;
/// Extended capability register (64 bits).
pub const ECAP: usize = 0x10;
/// Global command register (32 bits).
pub const GCMD: usize = 0x18;
/// Global status register (32 bits).
pub const GSTS: usize = 0x1c;
/// Root table address register (64 bits).
pub const RTADDR: usize = 0x20;
/// Context command register (64 bits).
pub const CCMD: usize = 0x28;
/// Fault status register (32 bits).
pub const FSTS: usize = 0x34;
/// Fault event control register (32 bits).
pub const FECTL: usize = 0x38;
/// Fault event data register (32 bits): the MSI data.
pub const FEDATA: usize = 0x3c;
/// Fault event address register (32 bits): the MSI address.
pub const FEADDR: usize = 0x40;
/// Fault event upper address register (32 bits).
pub const FEUADDR: usize = 0x44;
/// Invalidation queue head (64 bits).
pub const IQH: usize = 0x80;
/// Invalidation queue tail (64 bits).
pub const IQT: usize = 0x88;
/// Invalidation queue address (64 bits).
pub const IQA: usize = 0x90;
/// Invalidation completion status (32 bits).
pub const ICS: usize = 0x9c;
/// Invalidation queue error record (64 bits).
pub const IQERCD: usize = 0xb0;
/// Interrupt remapping table address (64 bits).
pub const IRTA: usize = 0xb8;

/// IRTA: extended interrupt mode enable (x2APIC destinations).
pub const IRTA_EIME: u64 = 1 << 11;
/// IRTA: table size field S, bits 3:0 (`2^(S + 1)` entries).
pub const IRTA_S_MASK: u64 = 0xf;

/// GCMD/GSTS: translation enable / status.
pub const G_TE: u32 = 1 << 31;
/// GCMD/GSTS: set root table pointer / status.
pub const G_SRTP: u32 = 1 << 30;
/// GCMD/GSTS: set fault log / status.
pub const G_SFL: u32 = 1 << 29;
/// GCMD/GSTS: advanced fault logging.
pub const G_EAFL: u32 = 1 << 28;
/// GCMD/GSTS: write buffer flush / status (set while the flush runs).
pub const G_WBF: u32 = 1 << 27;
/// GCMD/GSTS: queued invalidation enable / status.
pub const G_QIE: u32 = 1 << 26;
/// GCMD/GSTS: interrupt remapping enable / status.
pub const G_IRE: u32 = 1 << 25;
/// GCMD/GSTS: set interrupt remap table pointer.
pub const G_SIRTP: u32 = 1 << 24;
/// GCMD/GSTS: compatibility format interrupts.
pub const G_CFI: u32 = 1 << 23;
/// GSTS bits that report one-shot commands; they must not be written back
/// into GCMD as if they were enables.
pub const G_ONE_SHOT: u32 = G_SRTP | G_SFL | G_WBF | G_SIRTP;

/// RTADDR: translation table mode, legacy (root/context entries of 128 bits).
pub const RTADDR_TTM_LEGACY: u64 = 0 << 10;
/// RTADDR: translation table mode, scalable.
pub const RTADDR_TTM_SCALABLE: u64 = 1 << 10;

/// CCMD: invalidate context cache (set by software, cleared by hardware).
pub const CCMD_ICC: u64 = 1 << 63;
/// CCMD: global invalidation request.
pub const CCMD_GLOBAL: u64 = 1 << 61;
/// CCMD: domain-selective invalidation request.
pub const CCMD_DOMAIN: u64 = 2 << 61;
/// CCMD: device-selective invalidation request.
pub const CCMD_DEVICE: u64 = 3 << 61;
/// CCMD: actual invalidation granularity (hardware), bits 60:59.
pub const CCMD_CAIG_SHIFT: u32 = 59;

/// IOTLB register (at ECAP.IRO * 16 + 8): invalidate IOTLB.
pub const IOTLB_IVT: u64 = 1 << 63;
/// IOTLB register: global.
pub const IOTLB_GLOBAL: u64 = 1 << 60;
/// IOTLB register: domain-selective.
pub const IOTLB_DOMAIN: u64 = 2 << 60;
/// IOTLB register: page-selective (address and mask in IVA).
pub const IOTLB_PAGE: u64 = 3 << 60;
/// IOTLB register: actual granularity (hardware), bits 58:57; 0 = failed.
pub const IOTLB_IAIG_SHIFT: u32 = 57;
/// IOTLB register: drain reads.
pub const IOTLB_DR: u64 = 1 << 49;
/// IOTLB register: drain writes.
pub const IOTLB_DW: u64 = 1 << 48;
/// IVA: invalidation hint (only leaves changed; keep paging-structure caches).
pub const IVA_IH: u64 = 1 << 6;

/// FSTS: primary fault overflow (RW1C).
pub const FSTS_PFO: u32 = 1 << 0;
/// FSTS: primary pending fault (a fault record has F set).
pub const FSTS_PPF: u32 = 1 << 1;
/// FSTS: invalidation queue error (RW1C).
pub const FSTS_IQE: u32 = 1 << 4;
/// FSTS: invalidation completion error (RW1C).
pub const FSTS_ICE: u32 = 1 << 5;
/// FSTS: invalidation time-out error (RW1C).
pub const FSTS_ITE: u32 = 1 << 6;
/// FSTS: fault record index, bits 15:8.
pub const FSTS_FRI_SHIFT: u32 = 8;

/// FECTL: interrupt mask.
pub const FECTL_IM: u32 = 1 << 31;
/// FECTL: interrupt pending (an event arrived while masked).
pub const FECTL_IP: u32 = 1 << 30;

/// Fault record, high half: fault (RW1C), bit 63.
pub const FRCD_F: u64 = 1 << 63;

/// Register access, shared with the other backends: the driver reaches the
/// unit's registers through [`Mmio`] ([`MmioRegion`] on hardware, the fake in
/// tests), 32- and 64-bit accesses at naturally aligned offsets; an access
/// outside the block is refused with an [`MmioError`], never made.
pub use iova_core::hw::{Mmio, MmioError, MmioRegion, Width};

//! Register offsets and fields of the SMMUv3 programming interface, and the
//! [`Mmio`] access the driver uses: [`iova_core::hw`]'s, re-exported here.
//!
//! Every register is accessed at its architected width: 32-bit registers with
//! 32-bit accesses, and only the `*_BASE` and `*_IRQ_CFG0` registers with
//! 64-bit ones. Real SMMUs may treat other widths as RAZ/WI, and QEMU's model
//! does exactly that (a 64-bit read of IDR0 returns 0).
//!
//! The register block must span the whole frame, pages 0 and 1
//! ([`off::FRAME_SIZE`] bytes): [`crate::probe`] and [`crate::Smmu::new`]
//! refuse a smaller one with [`crate::SmmuError::RegistersTooSmall`], so a
//! driver that probed never meets an out-of-range access. An [`Mmio`] that
//! refuses an access anyway gives [`crate::SmmuError::Register`].

pub use iova_core::hw::{Mmio, MmioError, MmioRegion};

/// Page 0 offsets.
pub mod off {
    /// Identification register 0 (features).
    pub const IDR0: usize = 0x00;
    /// Identification register 1 (queue and table sizes).
    pub const IDR1: usize = 0x04;
    /// Identification register 2 (VATOS).
    pub const IDR2: usize = 0x08;
    /// Identification register 3 (RIL, HAD, BBML, ...).
    pub const IDR3: usize = 0x0c;
    /// Identification register 4 (implementation defined).
    pub const IDR4: usize = 0x10;
    /// Identification register 5 (OAS, granules).
    pub const IDR5: usize = 0x14;
    /// Implementation identification.
    pub const IIDR: usize = 0x18;
    /// Architecture revision.
    pub const AIDR: usize = 0x1c;
    /// Global control 0 (enables).
    pub const CR0: usize = 0x20;
    /// Acknowledge of CR0.
    pub const CR0ACK: usize = 0x24;
    /// Global control 1 (table and queue memory attributes).
    pub const CR1: usize = 0x28;
    /// Global control 2.
    pub const CR2: usize = 0x2c;
    /// Global status.
    pub const STATUSR: usize = 0x40;
    /// Global bypass attributes (what happens while SMMUEN = 0).
    pub const GBPA: usize = 0x44;
    /// Interrupt enables.
    pub const IRQ_CTRL: usize = 0x50;
    /// Acknowledge of IRQ_CTRL.
    pub const IRQ_CTRLACK: usize = 0x54;
    /// Global errors (toggled by the SMMU).
    pub const GERROR: usize = 0x60;
    /// Global error acknowledge (toggled by software).
    pub const GERRORN: usize = 0x64;
    /// GERROR MSI address (64-bit).
    pub const GERROR_IRQ_CFG0: usize = 0x68;
    /// GERROR MSI data.
    pub const GERROR_IRQ_CFG1: usize = 0x70;
    /// GERROR MSI memory attributes.
    pub const GERROR_IRQ_CFG2: usize = 0x74;
    /// Stream table base (64-bit).
    pub const STRTAB_BASE: usize = 0x80;
    /// Stream table format and size.
    pub const STRTAB_BASE_CFG: usize = 0x88;
    /// Command queue base (64-bit).
    pub const CMDQ_BASE: usize = 0x90;
    /// Command queue producer index (software).
    pub const CMDQ_PROD: usize = 0x98;
    /// Command queue consumer index and error (SMMU).
    pub const CMDQ_CONS: usize = 0x9c;
    /// Event queue base (64-bit).
    pub const EVENTQ_BASE: usize = 0xa0;
    /// Event queue producer index (SMMU), on page 1.
    pub const EVENTQ_PROD: usize = 0x1_00a8;
    /// Event queue consumer index (software), on page 1.
    pub const EVENTQ_CONS: usize = 0x1_00ac;
    /// Event queue MSI address (64-bit).
    pub const EVENTQ_IRQ_CFG0: usize = 0xb0;
    /// Event queue MSI data.
    pub const EVENTQ_IRQ_CFG1: usize = 0xb8;
    /// Event queue MSI memory attributes.
    pub const EVENTQ_IRQ_CFG2: usize = 0xbc;
    /// Size of the register frame: pages 0 and 1.
    pub const FRAME_SIZE: usize = 0x2_0000;
}

/// IDR0 fields.
pub mod idr0 {
    /// Stage 2 translation supported.
    pub const S2P: u32 = 1 << 0;
    /// Stage 1 translation supported.
    pub const S1P: u32 = 1 << 1;
    /// Translation table formats, bits 3:2 (0b10 AArch64, 0b11 both).
    pub const TTF_SHIFT: u32 = 2;
    /// Coherent access to tables, queues and translated memory.
    pub const COHACC: u32 = 1 << 4;
    /// Broadcast TLB maintenance.
    pub const BTM: u32 = 1 << 5;
    /// Hardware translation table update (access flag / dirty), bits 7:6.
    pub const HTTU_SHIFT: u32 = 6;
    /// Hypervisor stage 1 contexts (EL2).
    pub const HYP: u32 = 1 << 9;
    /// PCIe ATS.
    pub const ATS: u32 = 1 << 10;
    /// 16-bit ASIDs.
    pub const ASID16: u32 = 1 << 12;
    /// MSIs.
    pub const MSI: u32 = 1 << 13;
    /// WFE wake-up events.
    pub const SEV: u32 = 1 << 14;
    /// PRI.
    pub const PRI: u32 = 1 << 16;
    /// 16-bit VMIDs.
    pub const VMID16: u32 = 1 << 18;
    /// Two-level context-descriptor tables.
    pub const CD2L: u32 = 1 << 19;
    /// Endianness of tables, bits 22:21 (0b00 mixed, 0b10 LE, 0b11 BE).
    pub const TTENDIAN_SHIFT: u32 = 21;
    /// Stall model, bits 25:24.
    pub const STALL_MODEL_SHIFT: u32 = 24;
    /// Terminate model: aborted transactions may be RAZ/WI instead of aborted.
    pub const TERM_MODEL: u32 = 1 << 26;
    /// Stream table levels, bits 28:27 (0 linear only, 1 two-level too).
    pub const ST_LEVEL_SHIFT: u32 = 27;
}

/// IDR1 fields.
pub mod idr1 {
    /// Bits of StreamID, bits 5:0.
    pub const SIDSIZE_SHIFT: u32 = 0;
    /// Bits of SubstreamID, bits 10:6.
    pub const SSIDSIZE_SHIFT: u32 = 6;
    /// log2 of the largest PRI queue, bits 15:11.
    pub const PRIQS_SHIFT: u32 = 11;
    /// log2 of the largest event queue, bits 20:16.
    pub const EVENTQS_SHIFT: u32 = 16;
    /// log2 of the largest command queue, bits 25:21.
    pub const CMDQS_SHIFT: u32 = 21;
    /// Queue base registers are fixed by the implementation.
    pub const QUEUES_PRESET: u32 = 1 << 29;
    /// Table base registers are fixed by the implementation.
    pub const TABLES_PRESET: u32 = 1 << 30;
}

/// IDR3 fields.
pub mod idr3 {
    /// Hierarchical attribute disable (CD.HAD).
    pub const HAD: u32 = 1 << 2;
    /// Stage 2 XN encodings of FEAT_XNX.
    pub const XNX: u32 = 1 << 4;
    /// Range invalidation (TLBI with NUM/SCALE).
    pub const RIL: u32 = 1 << 10;
    /// Break-before-make level, bits 12:11.
    pub const BBML_SHIFT: u32 = 11;
}

/// IDR5 fields.
pub mod idr5 {
    /// Output address size code, bits 2:0.
    pub const OAS_MASK: u32 = 0x7;
    /// 4 KiB translation granule.
    pub const GRAN4K: u32 = 1 << 4;
    /// 16 KiB translation granule.
    pub const GRAN16K: u32 = 1 << 5;
    /// 64 KiB translation granule.
    pub const GRAN64K: u32 = 1 << 6;
    /// Virtual address extension, bits 11:10.
    pub const VAX_SHIFT: u32 = 10;
}

/// CR0 / CR0ACK fields.
pub mod cr0 {
    /// Translation enabled.
    pub const SMMUEN: u32 = 1 << 0;
    /// PRI queue enabled.
    pub const PRIQEN: u32 = 1 << 1;
    /// Event queue enabled.
    pub const EVENTQEN: u32 = 1 << 2;
    /// Command queue enabled.
    pub const CMDQEN: u32 = 1 << 3;
}

/// CR1 fields: memory attributes of table walks and queue accesses.
pub mod cr1 {
    /// Table shareability, bits 11:10.
    pub const TABLE_SH_SHIFT: u32 = 10;
    /// Table outer cacheability, bits 9:8.
    pub const TABLE_OC_SHIFT: u32 = 8;
    /// Table inner cacheability, bits 7:6.
    pub const TABLE_IC_SHIFT: u32 = 6;
    /// Queue shareability, bits 5:4.
    pub const QUEUE_SH_SHIFT: u32 = 4;
    /// Queue outer cacheability, bits 3:2.
    pub const QUEUE_OC_SHIFT: u32 = 2;
    /// Queue inner cacheability, bits 1:0.
    pub const QUEUE_IC_SHIFT: u32 = 0;
    /// Cacheability: non-cacheable.
    pub const NC: u32 = 0;
    /// Cacheability: write-back.
    pub const WB: u32 = 1;
    /// Shareability: outer shareable.
    pub const OSH: u32 = 2;
    /// Shareability: inner shareable.
    pub const ISH: u32 = 3;
}

/// CR2 fields.
pub mod cr2 {
    /// Record C_BAD_STREAMID events for out-of-range StreamIDs.
    pub const RECINVSID: u32 = 1 << 1;
    /// Private TLB maintenance: ignore broadcast TLBIs from the CPUs.
    pub const PTM: u32 = 1 << 2;
}

/// GBPA fields.
pub mod gbpa {
    /// Write with the new value; reads 1 until the update took effect.
    pub const UPDATE: u32 = 1 << 31;
    /// Abort every transaction while SMMUEN = 0.
    pub const ABORT: u32 = 1 << 20;
}

/// GERROR / GERRORN fields.
pub mod gerror {
    /// A command could not be processed (see CMDQ_CONS.ERR).
    pub const CMDQ_ERR: u32 = 1 << 0;
    /// An event could not be written (queue access abort).
    pub const EVENTQ_ABT_ERR: u32 = 1 << 2;
    /// A PRI queue write aborted.
    pub const PRIQ_ABT_ERR: u32 = 1 << 3;
    /// MSI write aborts (command sync, event, PRI, GERROR), bits 7:4.
    pub const MSI_ABT_ERRS: u32 = 0xf << 4;
    /// Service failure mode: the SMMU stopped translating.
    pub const SFM_ERR: u32 = 1 << 8;
    /// Every architected error bit.
    pub const ALL: u32 = 0x1fd;
}

/// IRQ_CTRL fields.
pub mod irq_ctrl {
    /// GERROR interrupt.
    pub const GERROR_IRQEN: u32 = 1 << 0;
    /// Event queue interrupt.
    pub const EVENTQ_IRQEN: u32 = 1 << 2;
}

/// STRTAB_BASE / STRTAB_BASE_CFG fields.
pub mod strtab {
    /// Read-allocate hint.
    pub const BASE_RA: u64 = 1 << 62;
    /// Table address, bits 51:6.
    pub const BASE_ADDR_MASK: u64 = 0x000f_ffff_ffff_ffc0;
    /// Format, bits 17:16 (0 linear, 1 two-level).
    pub const CFG_FMT_SHIFT: u32 = 16;
    /// Two-level split, bits 10:6.
    pub const CFG_SPLIT_SHIFT: u32 = 6;
    /// log2 of the number of StreamIDs covered, bits 5:0.
    pub const CFG_LOG2SIZE_MASK: u32 = 0x3f;
}

/// CMDQ_BASE / EVENTQ_BASE and the index registers.
pub mod queue {
    /// Read-allocate (command queue) / write-allocate (event queue) hint.
    pub const BASE_ALLOC: u64 = 1 << 62;
    /// Queue address, bits 51:5.
    pub const BASE_ADDR_MASK: u64 = 0x000f_ffff_ffff_ffe0;
    /// log2 of the number of entries, bits 4:0.
    pub const BASE_LOG2SIZE_MASK: u64 = 0x1f;
    /// CMDQ_CONS.ERR, bits 30:24.
    pub const CONS_ERR_SHIFT: u32 = 24;
    /// EVENTQ_PROD.OVFLG / EVENTQ_CONS.OVACKFLG.
    pub const OVFLG: u32 = 1 << 31;
}

/// Extracts `width` bits at `shift`.
pub(crate) const fn field(v: u32, shift: u32, width: u32) -> u32 {
    (v >> shift) & ((1 << width) - 1)
}

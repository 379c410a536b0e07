//! Context descriptors (64 bytes): the stage-1 translation regime of a stream.

use crate::features::size_code;
use iova_core::formats::lpae::Granule;

/// Size of a CD in bytes.
pub const CD_BYTES: usize = 64;

/// Word 0: T0SZ, bits 5:0.
pub const T0SZ_SHIFT: u32 = 0;
/// Word 0: TG0, bits 7:6 (0 = 4 KiB, 1 = 64 KiB, 2 = 16 KiB).
pub const TG0_SHIFT: u32 = 6;
/// Word 0: IR0, bits 9:8.
pub const IR0_SHIFT: u32 = 8;
/// Word 0: OR0, bits 11:10.
pub const OR0_SHIFT: u32 = 10;
/// Word 0: SH0, bits 13:12.
pub const SH0_SHIFT: u32 = 12;
/// Word 0: EPD0 (TTB0 walks disabled), bit 14.
pub const EPD0: u64 = 1 << 14;
/// Word 0: ENDI (big-endian), bit 15.
pub const ENDI: u64 = 1 << 15;
/// Word 0: EPD1 (TTB1 walks disabled), bit 30.
pub const EPD1: u64 = 1 << 30;
/// Word 0: valid, bit 31.
pub const V: u64 = 1 << 31;
/// Word 0: IPS, bits 34:32.
pub const IPS_SHIFT: u32 = 32;
/// Word 0: AFFD (access-flag faults disabled), bit 35.
pub const AFFD: u64 = 1 << 35;
/// Word 0: AA64 (AArch64 tables), bit 41.
pub const AA64: u64 = 1 << 41;
/// Word 0: HD (hardware dirty), bit 42.
pub const HD: u64 = 1 << 42;
/// Word 0: HA (hardware access flag), bit 43.
pub const HA: u64 = 1 << 43;
/// Word 0: S (stall), bit 44.
pub const S: u64 = 1 << 44;
/// Word 0: R (record faults), bit 45.
pub const R: u64 = 1 << 45;
/// Word 0: A (abort terminated transactions), bit 46.
pub const A: u64 = 1 << 46;
/// Word 0: ASET (ASID set not shared with the CPUs' broadcast TLBIs), bit 47.
pub const ASET: u64 = 1 << 47;
/// Word 0: ASID, bits 63:48.
pub const ASID_SHIFT: u32 = 48;
/// Word 1: TTB0, bits 51:4.
pub const TTB_MASK: u64 = 0x000f_ffff_ffff_fff0;

/// What a stage-1 context needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CdConfig {
    /// ASID tagging the TLB entries.
    pub asid: u16,
    /// Input size in bits (T0SZ = 64 - this; 25..=48).
    pub ia_bits: u32,
    /// Intermediate physical (output) size in bits (IPS).
    pub oa_bits: u32,
    /// Physical (or, nested, intermediate physical) address of the root table.
    pub ttb0: u64,
    /// MAIR the leaf descriptors' AttrIndx select from.
    pub mair: u64,
}

/// A context descriptor, as the eight doublewords the SMMU reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Cd(pub [u64; 8]);

impl Cd {
    /// A valid AArch64 stage-1 context with a 4 KiB granule, TTB0 only
    /// (TTB1 disabled), write-back inner-shareable walks, faults recorded
    /// (R) and aborted (A), access-flag faults enabled, no stalls.
    pub const fn s1(c: &CdConfig) -> Self {
        Self::s1_granule(c, Granule::K4)
    }

    /// As [`Cd::s1`], with the tables' granule in TG0.
    pub const fn s1_granule(c: &CdConfig, granule: Granule) -> Self {
        let mut w = [0; 8];
        w[0] = (64 - c.ia_bits as u64) << T0SZ_SHIFT
            | granule.tg0() << TG0_SHIFT
            | 1 << IR0_SHIFT
            | 1 << OR0_SHIFT
            | 3 << SH0_SHIFT
            | EPD1
            | V
            | size_code(c.oa_bits) << IPS_SHIFT
            | AA64
            | R
            | A
            | ASET
            | (c.asid as u64) << ASID_SHIFT;
        w[1] = c.ttb0 & TTB_MASK;
        w[3] = c.mair;
        Cd(w)
    }

    /// With non-cacheable, outer-shareable table walks when `non_coherent`
    /// (for an SMMU the driver maintains caches for).
    pub const fn with_walk_attrs(mut self, non_coherent: bool) -> Self {
        if non_coherent {
            let m = 3 << IR0_SHIFT | 3 << OR0_SHIFT | 3 << SH0_SHIFT;
            self.0[0] = (self.0[0] & !m) | 2 << SH0_SHIFT;
        }
        self
    }

    /// Whether V is set.
    pub const fn is_valid(&self) -> bool {
        self.0[0] & V != 0
    }

    /// The ASID.
    pub const fn asid(&self) -> u16 {
        (self.0[0] >> ASID_SHIFT) as u16
    }

    /// The input size in bits.
    pub const fn ia_bits(&self) -> u32 {
        64 - (self.0[0] & 0x3f) as u32
    }

    /// TTB0.
    pub const fn ttb0(&self) -> u64 {
        self.0[1] & TTB_MASK
    }
}

//! Stream table entries (64 bytes, eight little-endian doublewords) and the
//! level-1 descriptors of a two-level stream table.

use crate::features::size_code;
use iova_core::formats::lpae::Granule;

/// Size of an STE in bytes.
pub const STE_BYTES: usize = 64;

/// Word 0: valid.
pub const V: u64 = 1 << 0;
/// Word 0: Config, bits 3:1.
pub const CONFIG_SHIFT: u32 = 1;
/// Config: abort every transaction, record nothing.
pub const CONFIG_ABORT: u64 = 0b000;
/// Config: bypass both stages.
pub const CONFIG_BYPASS: u64 = 0b100;
/// Config: stage 1 translate, stage 2 bypass.
pub const CONFIG_S1: u64 = 0b101;
/// Config: stage 1 bypass, stage 2 translate.
pub const CONFIG_S2: u64 = 0b110;
/// Config: both stages (nested).
pub const CONFIG_NESTED: u64 = 0b111;
/// Word 0: S1Fmt, bits 5:4 (0 = one CD, linear).
pub const S1FMT_SHIFT: u32 = 4;
/// Word 0: S1ContextPtr, bits 51:6.
pub const S1_CTX_PTR_MASK: u64 = 0x000f_ffff_ffff_ffc0;
/// Word 0: S1CDMax, bits 63:59 (0 = one CD).
pub const S1CDMAX_SHIFT: u32 = 59;

/// Word 1: S1DSS, bits 1:0.
pub const S1DSS_SHIFT: u32 = 0;
/// S1DSS: transactions without a SubstreamID use CD 0.
pub const S1DSS_SUBSTREAM0: u64 = 0b10;
/// Word 1: S1CIR (CD fetch inner cacheability), bits 3:2.
pub const S1CIR_SHIFT: u32 = 2;
/// Word 1: S1COR, bits 5:4.
pub const S1COR_SHIFT: u32 = 4;
/// Word 1: S1CSH, bits 7:6.
pub const S1CSH_SHIFT: u32 = 6;
/// Word 1: S1STALLD (stall disable), bit 27.
pub const S1STALLD: u64 = 1 << 27;
/// Word 1: STRW, bits 31:30 (0 = NS-EL1 stream world).
pub const STRW_SHIFT: u32 = 30;
/// Word 1: SHCFG, bits 45:44 (1 = use the incoming shareability).
pub const SHCFG_SHIFT: u32 = 44;
/// SHCFG: use incoming.
pub const SHCFG_INCOMING: u64 = 1;

/// Word 2: S2VMID, bits 15:0.
pub const S2VMID_MASK: u64 = 0xffff;
/// Word 2: S2T0SZ, bits 37:32.
pub const S2T0SZ_SHIFT: u32 = 32;
/// Word 2: S2SL0, bits 39:38.
pub const S2SL0_SHIFT: u32 = 38;
/// Word 2: S2IR0, bits 41:40.
pub const S2IR0_SHIFT: u32 = 40;
/// Word 2: S2OR0, bits 43:42.
pub const S2OR0_SHIFT: u32 = 42;
/// Word 2: S2SH0, bits 45:44.
pub const S2SH0_SHIFT: u32 = 44;
/// Word 2: S2TG, bits 47:46 (0 = 4 KiB).
pub const S2TG_SHIFT: u32 = 46;
/// Word 2: S2PS, bits 50:48.
pub const S2PS_SHIFT: u32 = 48;
/// Word 2: S2AA64 (AArch64 stage-2 tables), bit 51.
pub const S2AA64: u64 = 1 << 51;
/// Word 2: S2ENDI (big-endian walks), bit 52.
pub const S2ENDI: u64 = 1 << 52;
/// Word 2: S2AFFD (access-flag faults disabled), bit 53.
pub const S2AFFD: u64 = 1 << 53;
/// Word 2: S2PTW (stage-1 walks to device memory fault), bit 54.
pub const S2PTW: u64 = 1 << 54;
/// Word 2: S2S (stall), bit 57.
pub const S2S: u64 = 1 << 57;
/// Word 2: S2R (record faults), bit 58.
pub const S2R: u64 = 1 << 58;
/// Word 3: S2TTB, bits 51:4.
pub const S2TTB_MASK: u64 = 0x000f_ffff_ffff_fff0;

/// Cacheability code: write-back, read/write-allocate.
pub const WBRWA: u64 = 1;
/// Shareability code: inner shareable.
pub const ISH: u64 = 3;

/// Level-1 descriptor: Span, bits 4:0 (level-2 table covers 2^(Span-1) STEs; 0 = invalid).
pub const L1_SPAN_MASK: u64 = 0x1f;
/// Level-1 descriptor: L2Ptr, bits 51:6.
pub const L1_L2PTR_MASK: u64 = 0x000f_ffff_ffff_ffc0;

/// The stage-2 part of an STE: VMID, VTCR fields and the table base.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct S2Config {
    /// VMID tagging this stream's stage-2 TLB entries.
    pub vmid: u16,
    /// Input (IPA) size in bits; S2T0SZ = 64 - this.
    pub ia_bits: u32,
    /// Starting level of the walk (0-3, as [`LpaeS2::start_level`] says; with
    /// 16 and 64 KiB granules at least 1).
    ///
    /// [`LpaeS2::start_level`]: iova_core::formats::lpae::LpaeS2::start_level
    pub start_level: u32,
    /// Output size in bits (S2PS).
    pub oa_bits: u32,
    /// Physical address of the root table (of the concatenated roots).
    pub ttb: u64,
    /// The tables' granule (S2TG).
    pub granule: Granule,
}

/// A stream table entry, as the eight doublewords the SMMU reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Ste(pub [u64; 8]);

impl Ste {
    /// An invalid entry (V = 0): the SMMU terminates the stream's
    /// transactions and records C_BAD_STE.
    pub const fn invalid() -> Self {
        Ste([0; 8])
    }

    /// Valid, Config = abort: transactions terminate, nothing is recorded.
    pub const fn abort() -> Self {
        let mut w = [0; 8];
        w[0] = V | CONFIG_ABORT << CONFIG_SHIFT;
        Ste(w)
    }

    /// Valid, Config = bypass: the stream's addresses are physical.
    pub const fn bypass() -> Self {
        let mut w = [0; 8];
        w[0] = V | CONFIG_BYPASS << CONFIG_SHIFT;
        w[1] = SHCFG_INCOMING << SHCFG_SHIFT;
        Ste(w)
    }

    /// Stage 1 through the single context descriptor at `cd` (64-byte aligned).
    pub const fn s1(cd: u64) -> Self {
        let mut w = [0; 8];
        w[0] = V | CONFIG_S1 << CONFIG_SHIFT | (cd & S1_CTX_PTR_MASK);
        w[1] = s1_word1();
        Ste(w)
    }

    /// Stage 1 through a linear table of `1 << log2` context descriptors at
    /// `table` (64-byte aligned), indexed by SubstreamID; transactions
    /// without a SubstreamID use CD 0 (S1DSS = 0b10).
    pub const fn s1_cd_table(table: u64, log2: u32) -> Self {
        let mut s = Self::s1(table);
        s.0[0] |= ((log2 & 0x1f) as u64) << S1CDMAX_SHIFT;
        s.0[1] |= S1DSS_SUBSTREAM0 << S1DSS_SHIFT;
        s
    }

    /// S1CDMax: log2 of the CD table entries (0 = one CD, no substreams).
    pub const fn s1_cd_max(&self) -> u32 {
        (self.0[0] >> S1CDMAX_SHIFT) as u32 & 0x1f
    }

    /// Stage 2 only.
    pub const fn s2(s2: &S2Config) -> Self {
        let mut w = [0; 8];
        w[0] = V | CONFIG_S2 << CONFIG_SHIFT;
        w[1] = SHCFG_INCOMING << SHCFG_SHIFT;
        w[2] = s2_word2(s2);
        w[3] = s2.ttb & S2TTB_MASK;
        Ste(w)
    }

    /// Stage 1 then stage 2: `cd` and the stage-1 tables are IPAs that stage 2 translates.
    pub const fn nested(cd_ipa: u64, s2: &S2Config) -> Self {
        let mut w = [0; 8];
        w[0] = V | CONFIG_NESTED << CONFIG_SHIFT | (cd_ipa & S1_CTX_PTR_MASK);
        w[1] = s1_word1();
        w[2] = s2_word2(s2);
        w[3] = s2.ttb & S2TTB_MASK;
        Ste(w)
    }

    /// With non-cacheable, outer-shareable CD fetches and stage-2 walks (for
    /// an SMMU the driver maintains caches for), when `non_coherent`.
    pub const fn with_walk_attrs(mut self, non_coherent: bool) -> Self {
        if non_coherent {
            let s1 = 3 << S1CIR_SHIFT | 3 << S1COR_SHIFT | 3 << S1CSH_SHIFT;
            self.0[1] = (self.0[1] & !s1) | 2 << S1CSH_SHIFT;
            if self.0[2] & S2AA64 != 0 {
                let s2 = 3 << S2IR0_SHIFT | 3 << S2OR0_SHIFT | 3 << S2SH0_SHIFT;
                self.0[2] = (self.0[2] & !s2) | 2 << S2SH0_SHIFT;
            }
        }
        self
    }

    /// Whether V is set.
    pub const fn is_valid(&self) -> bool {
        self.0[0] & V != 0
    }

    /// The Config field.
    pub const fn config(&self) -> u64 {
        (self.0[0] >> CONFIG_SHIFT) & 0b111
    }

    /// The context-descriptor pointer.
    pub const fn cd_ptr(&self) -> u64 {
        self.0[0] & S1_CTX_PTR_MASK
    }

    /// The stage-2 VMID.
    pub const fn vmid(&self) -> u16 {
        (self.0[2] & S2VMID_MASK) as u16
    }
}

const fn s1_word1() -> u64 {
    // CD fetches are write-back inner shareable (the SMMU is coherent),
    // shareability of the stream's accesses as they come in.
    WBRWA << S1CIR_SHIFT | WBRWA << S1COR_SHIFT | ISH << S1CSH_SHIFT | SHCFG_INCOMING << SHCFG_SHIFT
}

const fn s2_word2(s2: &S2Config) -> u64 {
    // SL0: with a 4 KiB granule 0 = level 2, 1 = level 1, 2 = level 0; with
    // 16 or 64 KiB 0 = level 3, 1 = level 2, 2 = level 1.
    let start = s2.start_level as u64 & 3;
    let (sl0, tg) = match s2.granule {
        Granule::K4 => (2u64.wrapping_sub(start) & 3, 0),
        Granule::K16 => (3 - start, 2),
        Granule::K64 => (3 - start, 1),
    };
    (s2.vmid as u64)
        | (64 - s2.ia_bits as u64) << S2T0SZ_SHIFT
        | sl0 << S2SL0_SHIFT
        | WBRWA << S2IR0_SHIFT
        | WBRWA << S2OR0_SHIFT
        | ISH << S2SH0_SHIFT
        | tg << S2TG_SHIFT
        | size_code(s2.oa_bits) << S2PS_SHIFT
        | S2AA64
        | S2R
}

/// A level-1 stream-table descriptor pointing at a level-2 table of
/// `1 << split` STEs.
pub const fn l1_desc(l2: u64, split: u32) -> u64 {
    (l2 & L1_L2PTR_MASK) | (split as u64 + 1)
}

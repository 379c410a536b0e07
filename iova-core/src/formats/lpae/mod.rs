//! Arm VMSAv8-64 translation tables ("LPAE"): stage 1 ([`LpaeS1`]) and
//! stage 2 ([`LpaeS2`]), each with a 4, 16 or 64 KiB [`Granule`], as Linux's
//! io-pgtable-arm offers them. Every Arm IOMMU that walks the CPU's table
//! format uses these: SMMUv3 and SMMUv2 for both stages, and a hypervisor
//! that shares its CPU stage-2 tables with an SMMU.
//!
//! # Geometry
//!
//! A table is one granule of 8-byte descriptors, so each level below the root
//! resolves `granule shift - 3` bits of the input address. The root takes
//! what is left of the input size (fewer bits, a smaller table), and at stage
//! 2 it may be up to 16 concatenated tables instead of one more level
//! ([`LpaeS2`]). With 48 bits of input:
//!
//! | granule | bits per level | levels (root bits) | blocks |
//! |---|---|---|---|
//! | 4 KiB | 9 | 4 (9) | 1 GiB at level 1, 2 MiB at level 2 |
//! | 16 KiB | 11 | 4 (1) | 32 MiB at level 2 |
//! | 64 KiB | 13 | 3 (6) | 512 MiB at level 2 |
//!
//! Input and output addresses are at most 48 bits: 52-bit addresses
//! (FEAT_LPA, FEAT_LPA2, with the level-0 and level-1 blocks they bring) are
//! not supported, and the constructors refuse them with
//! [`Error::OutOfRange`](crate::Error::OutOfRange).
//!
//! # Descriptors
//!
//! The bits both stages share are here; [`s1`] and [`s2`] have the leaf
//! attributes of each stage (the stage-1 ones are also re-exported here).
//! Leaves always have the access flag set: SMMUs (QEMU's from 9.0 on) fault
//! on AF = 0 unless hardware access-flag updates or AFFD say otherwise.

pub mod s1;
pub mod s2;

pub use s1::{
    AP_RDONLY, AP_UNPRIV, ATTR_IDX_CACHE, ATTR_IDX_DEV, ATTR_IDX_NC, ATTR_INDX_SHIFT, LpaeS1, MAIR,
    NG, PXN, UXN, leaf_attrs, leaf_prot,
};
pub use s2::LpaeS2;

#[cfg(test)]
mod tests;

/// Descriptor is valid.
pub const VALID: u64 = 1 << 0;
/// At levels 0-2: a table (not a block). At level 3: must be set (page).
pub const TABLE_OR_PAGE: u64 = 1 << 1;
/// Shareability: inner shareable.
pub const SH_IS: u64 = 3 << 8;
/// Shareability: outer shareable.
pub const SH_OS: u64 = 2 << 8;
/// Access flag.
pub const AF: u64 = 1 << 10;
/// Output address bits 47:12 (of a 4 KiB granule's descriptors; the larger
/// granules use bits 47:14 and 47:16, see [`Granule::addr_mask`]).
pub const ADDR_MASK: u64 = 0x0000_FFFF_FFFF_F000;

/// Smallest input address size in bits (T0SZ 39, the largest without FEAT_TTST).
pub const MIN_IA_BITS: u32 = 25;
/// Largest input or output address size in bits (no 52-bit FEAT_LPA/LPA2).
pub const MAX_ADDR_BITS: u32 = 48;
/// Smallest output address size in bits (PS / IPS encoding 0).
pub const MIN_OA_BITS: u32 = 32;

/// A translation granule: the page size, and the size of every table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Granule {
    /// 4 KiB.
    K4,
    /// 16 KiB.
    K16,
    /// 64 KiB.
    K64,
}

impl Granule {
    /// log2 of the granule size.
    pub const fn shift(self) -> u32 {
        match self {
            Self::K4 => 12,
            Self::K16 => 14,
            Self::K64 => 16,
        }
    }

    /// The granule size in bytes.
    pub const fn size(self) -> u64 {
        1 << self.shift()
    }

    /// The granule of a size given as its log2, if it is one.
    pub const fn from_shift(shift: u32) -> Option<Self> {
        match shift {
            12 => Some(Self::K4),
            14 => Some(Self::K16),
            16 => Some(Self::K64),
            _ => None,
        }
    }

    /// Input address bits one full table resolves (9, 11 or 13).
    pub const fn bits_per_level(self) -> u32 {
        self.shift() - 3
    }

    /// log2 of what one descriptor at architectural `level` (0-3) maps.
    pub const fn level_shift(self, level: u32) -> u32 {
        self.shift() + self.bits_per_level() * (3 - level)
    }

    /// Whether a block descriptor is allowed at `level` (0-2) with 48-bit
    /// addresses: levels 1 and 2 with 4 KiB, level 2 with 16 and 64 KiB.
    /// (Level 3 holds pages, not blocks.)
    pub const fn has_blocks_at(self, level: u32) -> bool {
        match self {
            Self::K4 => matches!(level, 1 | 2),
            Self::K16 | Self::K64 => level == 2,
        }
    }

    /// The output address bits of a table or leaf descriptor, 47 down to the
    /// granule's shift.
    pub const fn addr_mask(self) -> u64 {
        ADDR_MASK & !(self.size() - 1)
    }

    /// The TG0 encoding of TCR_ELx, VTCR_EL2 and an SMMU's CD / STE
    /// (0 = 4K, 1 = 64K, 2 = 16K).
    pub const fn tg0(self) -> u64 {
        match self {
            Self::K4 => 0,
            Self::K16 => 2,
            Self::K64 => 1,
        }
    }

    /// The TG field of range TLB invalidations (1 = 4K, 2 = 16K, 3 = 64K).
    pub const fn tlbi_tg(self) -> u64 {
        match self {
            Self::K4 => 1,
            Self::K16 => 2,
            Self::K64 => 3,
        }
    }
}

/// How a format's levels cover its input: the number of levels, the root's
/// index bits, the granule. Both stages' formats hold one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Split {
    granule: Granule,
    levels: usize,
    root_bits: u32,
    /// [`Granule::addr_mask`], for output addresses read from leaves.
    addr_mask: u64,
}

impl Split {
    /// The address bits of a table descriptor, 47:12 at every granule. Table
    /// descriptors are only written by the format's `encode_table` with the
    /// address of a table one granule long and aligned to it, so the bits
    /// below the granule are clear; a constant mask keeps the walk, which
    /// reads one table descriptor per level, free of a load.
    const TABLE_MASK: u64 = ADDR_MASK;

    /// The fewest levels of full tables that cover `ia_bits`, the root taking
    /// the rest (`ia_bits` must exceed the granule's shift).
    const fn new(granule: Granule, ia_bits: u32) -> Self {
        let bits = granule.bits_per_level();
        let above = ia_bits - granule.shift();
        let levels = above.div_ceil(bits);
        Self {
            granule,
            levels: levels as usize,
            root_bits: above - bits * (levels - 1),
            addr_mask: granule.addr_mask(),
        }
    }

    /// The architectural level (0-3) the walk starts at.
    const fn start_level(&self) -> u32 {
        4 - self.levels as u32
    }

    #[inline]
    fn index_bits(&self, depth: usize) -> u32 {
        if depth == 0 {
            self.root_bits
        } else {
            self.granule.bits_per_level()
        }
    }

    fn block_allowed(&self, depth: usize) -> bool {
        self.granule
            .has_blocks_at(self.start_level() + depth as u32)
    }

    /// Whether a descriptor at `depth` is at the last level (a page, whose
    /// bit 1 is set, rather than a block).
    #[inline]
    fn is_last(&self, depth: usize) -> bool {
        depth + 1 == self.levels
    }
}

/// The `PtFormat` of both stages: they share the descriptor layout (valid,
/// table/page, output address) and the geometry (`Split`), and differ only in
/// the leaf attributes, which each stage's module provides as `leaf_attrs`
/// and `leaf_prot` where the macro is invoked. The names it uses resolve
/// there too (each stage's module imports them).
macro_rules! lpae_format {
    ($ty:ty) => {
        impl PtFormat for $ty {
            fn levels(&self) -> usize {
                self.split.levels
            }
            fn granule_shift(&self) -> u32 {
                self.split.granule.shift()
            }
            fn index_bits(&self, depth: usize) -> u32 {
                self.split.index_bits(depth)
            }
            fn block_allowed(&self, depth: usize) -> bool {
                self.split.block_allowed(depth)
            }
            fn oa_bits(&self) -> u32 {
                self.oa_bits
            }
            #[inline]
            fn is_present(&self, _: usize, raw: u64) -> bool {
                raw & VALID != 0
            }
            #[inline]
            fn is_table(&self, depth: usize, raw: u64) -> bool {
                self.is_next_table(depth, raw) && !self.split.is_last(depth)
            }
            #[inline]
            fn is_next_table(&self, _: usize, raw: u64) -> bool {
                raw & (VALID | TABLE_OR_PAGE) == VALID | TABLE_OR_PAGE
            }
            #[inline]
            fn table_pa(&self, raw: u64) -> PhysAddr {
                // See `Split::TABLE_MASK`.
                PhysAddr(raw & Split::TABLE_MASK)
            }
            #[inline]
            fn leaf_pa(&self, _: usize, raw: u64) -> PhysAddr {
                PhysAddr(raw & self.split.addr_mask)
            }
            fn leaf_prot(&self, _: usize, raw: u64) -> Prot {
                leaf_prot(raw)
            }
            #[inline]
            fn encode_table(&self, _: usize, pa: PhysAddr) -> u64 {
                (pa.0 & Split::TABLE_MASK) | VALID | TABLE_OR_PAGE
            }
            #[inline]
            fn encode_leaf(&self, depth: usize, pa: PhysAddr, prot: Prot) -> u64 {
                let page = if self.split.is_last(depth) {
                    TABLE_OR_PAGE
                } else {
                    0
                };
                // `pa` is aligned to the leaf's size, so the bits below the
                // granule are clear already: the constant mask avoids a load.
                (pa.0 & ADDR_MASK) | page | leaf_attrs(prot)
            }
            fn supports(&self, prot: Prot) -> bool {
                prot.grants_access() && !prot.contains(Prot::MMIO | Prot::CACHE)
            }
        }
    };
}
use lpae_format;

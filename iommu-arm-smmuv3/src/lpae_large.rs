//! Arm VMSAv8-64 stage-1 descriptors with a 16 KiB or 64 KiB granule.
//!
//! The 4 KiB granule is [`iova_core::formats::lpae::LpaeS1`]; this format
//! uses the same attribute encoding (the same [`MAIR`] indices, AF and nG
//! always set) with the larger granules that IDR5.GRAN16K / GRAN64K offer:
//!
//! | granule | index bits per level | levels for 48 bits | block |
//! |---|---|---|---|
//! | 16 KiB | 11 | 4 (the root has 1 bit) | 32 MiB at level 2 |
//! | 64 KiB | 13 | 3 (the root has 6 bits) | 512 MiB at level 2 |
//!
//! (Level-1 blocks of these granules need 52-bit addresses, which we do not
//! use.) Output addresses are up to 48 bits.
//!
//! [`MAIR`]: iova_core::formats::lpae::MAIR

use iova_core::formats::lpae::{self, ADDR_MASK, TABLE_OR_PAGE, VALID};
use iova_core::{Error, PhysAddr, Prot, PtFormat};

/// A translation granule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

    /// The granule of a size, if it is one.
    pub const fn from_shift(shift: u32) -> Option<Self> {
        match shift {
            12 => Some(Self::K4),
            14 => Some(Self::K16),
            16 => Some(Self::K64),
            _ => None,
        }
    }

    /// CD.TG0 encoding (0 = 4K, 1 = 64K, 2 = 16K).
    pub const fn tg0(self) -> u64 {
        match self {
            Self::K4 => 0,
            Self::K16 => 2,
            Self::K64 => 1,
        }
    }

    /// TG field of range TLBI commands (1 = 4K, 2 = 16K, 3 = 64K).
    pub const fn tlbi_tg(self) -> u64 {
        match self {
            Self::K4 => 1,
            Self::K16 => 2,
            Self::K64 => 3,
        }
    }
}

/// LPAE stage 1 with a 16 KiB or 64 KiB granule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LpaeS1Large {
    shift: u32,
    levels: usize,
    root_bits: u32,
    oa_bits: u32,
}

impl LpaeS1Large {
    /// A format with `granule` (16K or 64K), `ia_bits` of input (25..=48)
    /// and `oa_bits` of output (32..=48).
    pub fn new(granule: Granule, ia_bits: u32, oa_bits: u32) -> Result<Self, Error> {
        if granule == Granule::K4 || !(25..=48).contains(&ia_bits) || !(32..=48).contains(&oa_bits)
        {
            return Err(Error::OutOfRange);
        }
        let shift = granule.shift();
        let bits = shift - 3;
        let above = ia_bits - shift;
        let levels = above.div_ceil(bits);
        Ok(Self {
            shift,
            levels: levels as usize,
            root_bits: above - bits * (levels - 1),
            oa_bits,
        })
    }

    /// The granule.
    pub fn granule(&self) -> Granule {
        Granule::from_shift(self.shift).unwrap_or(Granule::K4)
    }

    fn arch_level(&self, depth: usize) -> usize {
        4 - self.levels + depth
    }
}

impl PtFormat for LpaeS1Large {
    fn levels(&self) -> usize {
        self.levels
    }
    fn granule_shift(&self) -> u32 {
        self.shift
    }
    fn index_bits(&self, depth: usize) -> u32 {
        if depth == 0 {
            self.root_bits
        } else {
            self.shift - 3
        }
    }
    fn block_allowed(&self, depth: usize) -> bool {
        self.arch_level(depth) == 2
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
        raw & (VALID | TABLE_OR_PAGE) == VALID | TABLE_OR_PAGE && depth + 1 < self.levels
    }
    #[inline]
    fn table_pa(&self, raw: u64) -> PhysAddr {
        PhysAddr(raw & ADDR_MASK & !((1 << self.shift) - 1))
    }
    #[inline]
    fn leaf_pa(&self, _: usize, raw: u64) -> PhysAddr {
        PhysAddr(raw & ADDR_MASK & !((1 << self.shift) - 1))
    }
    fn leaf_prot(&self, _: usize, raw: u64) -> Prot {
        lpae::leaf_prot(raw)
    }
    #[inline]
    fn encode_table(&self, _: usize, pa: PhysAddr) -> u64 {
        (pa.0 & ADDR_MASK) | VALID | TABLE_OR_PAGE
    }
    fn encode_leaf(&self, depth: usize, pa: PhysAddr, prot: Prot) -> u64 {
        let page = if depth + 1 == self.levels {
            TABLE_OR_PAGE
        } else {
            0
        };
        (pa.0 & ADDR_MASK) | page | lpae::leaf_attrs(prot)
    }
    fn supports(&self, prot: Prot) -> bool {
        prot.grants_access() && !prot.contains(Prot::MMIO | Prot::CACHE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iova_core::formats::lpae::LpaeS1;
    use iova_core::pt::Entry;

    #[test]
    fn geometry() {
        let f = LpaeS1Large::new(Granule::K16, 48, 48).unwrap();
        assert_eq!((f.levels(), f.index_bits(0), f.index_bits(1)), (4, 1, 11));
        assert!(!f.block_allowed(1) && f.block_allowed(2) && !f.block_allowed(3));
        let f = LpaeS1Large::new(Granule::K64, 48, 48).unwrap();
        assert_eq!((f.levels(), f.index_bits(0), f.index_bits(1)), (3, 6, 13));
        assert!(!f.block_allowed(0) && f.block_allowed(1) && !f.block_allowed(2));
        let f = LpaeS1Large::new(Granule::K64, 42, 44).unwrap();
        assert_eq!((f.levels(), f.index_bits(0)), (2, 13));
        assert!(f.block_allowed(0));
        let f = LpaeS1Large::new(Granule::K16, 36, 44).unwrap();
        assert_eq!((f.levels(), f.index_bits(0)), (2, 11));
        assert_eq!(
            LpaeS1Large::new(Granule::K4, 48, 48),
            Err(Error::OutOfRange)
        );
        assert_eq!(
            LpaeS1Large::new(Granule::K16, 49, 48),
            Err(Error::OutOfRange)
        );
        for g in [Granule::K16, Granule::K64] {
            for ia in 25..=48 {
                let f = LpaeS1Large::new(g, ia, 48).unwrap();
                let bits: u32 = (0..f.levels()).map(|d| f.index_bits(d)).sum();
                assert_eq!(bits + g.shift(), ia);
            }
        }
    }

    #[test]
    fn same_attributes_as_the_4k_format() {
        let k4 = LpaeS1::va48();
        let f = LpaeS1Large::new(Granule::K64, 48, 48).unwrap();
        for prot in [
            Prot::RW,
            Prot::READ,
            Prot::RW | Prot::CACHE,
            Prot::READ | Prot::MMIO | Prot::NOEXEC,
        ] {
            // Page descriptors: identical bits at the last level.
            assert_eq!(
                f.encode_leaf(2, PhysAddr(0x1234_0000), prot),
                k4.encode_leaf(3, PhysAddr(0x1234_0000), prot)
            );
            let raw = f.encode_leaf(1, PhysAddr(0x2000_0000), prot);
            assert_eq!(
                f.decode(1, raw),
                Entry::Leaf {
                    pa: PhysAddr(0x2000_0000),
                    prot
                }
            );
        }
        // A 64K page at 0x1_0000: 0x1_0000 | VALID | PAGE | AP_UNPRIV | SH_OS | AF | nG.
        assert_eq!(
            f.encode_leaf(2, PhysAddr(0x1_0000), Prot::RW),
            0x1_0000 | 0xe43
        );
        assert_eq!(
            f.decode(0, f.encode_table(0, PhysAddr(0x4_0000))),
            Entry::Table(PhysAddr(0x4_0000))
        );
        assert_eq!(f.decode(1, 0), Entry::Invalid);
        assert_eq!(f.decode(1, 0x1_0000), Entry::Invalid);
    }

    #[test]
    fn codes() {
        assert_eq!(
            [Granule::K4, Granule::K16, Granule::K64].map(|g| (g.shift(), g.tg0(), g.tlbi_tg())),
            [(12, 0, 1), (14, 2, 2), (16, 1, 3)]
        );
        assert_eq!(Granule::from_shift(14), Some(Granule::K16));
        assert_eq!(Granule::from_shift(13), None);
    }
}

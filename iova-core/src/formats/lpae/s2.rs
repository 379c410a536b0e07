//! Stage-2 descriptors and the stage-2 format.
//!
//! Stage 2 differs from stage 1 ([`super::s1`]) in its leaf attributes:
//! S2AP has separate read and write bits (so write-only is expressible),
//! MemAttr encodes the memory type directly (no MAIR), and the root may be up
//! to 16 concatenated tables, which this format uses to save a level where
//! the architecture allows it (the start level goes into VTCR_EL2.SL0 or an
//! SMMU STE's S2SL0). Stage 2 has no privilege distinction: [`Prot::PRIV`] is
//! ignored. Leaves always have AF set.

pub use super::{ADDR_MASK, AF, SH_IS, SH_OS, TABLE_OR_PAGE, VALID};
use super::{Granule, MAX_ADDR_BITS, MIN_IA_BITS, MIN_OA_BITS, Split};
use crate::addr::PhysAddr;
use crate::error::Error;
use crate::prot::Prot;
use crate::pt::PtFormat;

/// MemAttr, bits 5:2.
pub const MEMATTR_SHIFT: u32 = 2;
/// MemAttr: normal, inner and outer write-back cacheable.
pub const MEMATTR_WB: u64 = 0b1111;
/// MemAttr: normal, inner and outer non-cacheable.
pub const MEMATTR_NC: u64 = 0b0101;
/// MemAttr: Device-nGnRE.
pub const MEMATTR_DEV: u64 = 0b0001;
/// S2AP bit 0: reads allowed.
pub const S2AP_R: u64 = 1 << 6;
/// S2AP bit 1: writes allowed.
pub const S2AP_W: u64 = 1 << 7;
/// Execute-never (bit 1 of XN).
pub const XN: u64 = 1 << 54;

/// Most root tables a stage-2 walk may start with (concatenated).
pub const MAX_CONCATENATED: u32 = 16;

/// The bits of a stage-2 leaf that `prot` decides (valid, AF, S2AP, XN,
/// MemAttr, shareability): all but the output address and the page-or-block
/// bit.
#[inline]
pub fn leaf_attrs(prot: Prot) -> u64 {
    let mut raw = VALID | AF;
    if prot.contains(Prot::READ) {
        raw |= S2AP_R;
    }
    if prot.contains(Prot::WRITE) {
        raw |= S2AP_W;
    }
    if prot.contains(Prot::NOEXEC) {
        raw |= XN;
    }
    let (attr, sh) = if prot.contains(Prot::MMIO) {
        (MEMATTR_DEV, SH_OS)
    } else if prot.contains(Prot::CACHE) {
        (MEMATTR_WB, SH_IS)
    } else {
        (MEMATTR_NC, SH_OS)
    };
    raw | attr << MEMATTR_SHIFT | sh
}

/// The permissions a stage-2 leaf's attribute bits grant: the inverse of
/// [`leaf_attrs`].
pub fn leaf_prot(raw: u64) -> Prot {
    let mut p = Prot::empty();
    if raw & S2AP_R != 0 {
        p |= Prot::READ;
    }
    if raw & S2AP_W != 0 {
        p |= Prot::WRITE;
    }
    if raw & XN != 0 {
        p |= Prot::NOEXEC;
    }
    match (raw >> MEMATTR_SHIFT) & 0xf {
        MEMATTR_WB => p |= Prot::CACHE,
        MEMATTR_DEV => p |= Prot::MMIO,
        _ => {}
    }
    p
}

/// LPAE stage 2: 4 KiB granule with 2 MiB and 1 GiB blocks, or 16 KiB /
/// 64 KiB granules with 32 MiB / 512 MiB blocks; up to 48-bit IPA and
/// output addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LpaeS2 {
    split: Split,
    ia_bits: u32,
    oa_bits: u32,
}

impl LpaeS2 {
    /// A 4 KiB-granule format for `ia_bits` of IPA (25..=48, at most
    /// `oa_bits`: the architecture requires T0SZ >= 64 - PS) and `oa_bits`
    /// of output (32..=48).
    pub fn new(ia_bits: u32, oa_bits: u32) -> Result<Self, Error> {
        Self::with_granule(Granule::K4, ia_bits, oa_bits)
    }

    /// As [`new`](Self::new), with a 4, 16 or 64 KiB granule.
    pub fn with_granule(granule: Granule, ia_bits: u32, oa_bits: u32) -> Result<Self, Error> {
        if !(MIN_OA_BITS..=MAX_ADDR_BITS).contains(&oa_bits)
            || !(MIN_IA_BITS..=MAX_ADDR_BITS).contains(&ia_bits)
            || ia_bits > oa_bits
        {
            return Err(Error::OutOfRange);
        }
        let mut split = Split::new(granule, ia_bits);
        let stride = granule.bits_per_level();
        // SL0 encodes start levels 0-2 with a 4 KiB granule and 1-3 with the
        // others (without FEAT_TTST, as on QEMU's SMMU, there are no more).
        let (lowest, highest) = match granule {
            Granule::K4 => (0, 2),
            Granule::K16 | Granule::K64 => (1, 3),
        };
        let start = |levels: usize| 4 - levels as u32;
        // Up to 16 concatenated root tables replace a level of up to 4 bits.
        // Required when the start level would not be encodable; otherwise
        // done when the root stays within 64 KiB (saving a level of walk for
        // at most 16 small tables: always the case with 4 KiB).
        let required = start(split.levels) < lowest;
        let small = 8u64 << (split.root_bits + stride) <= 0x1_0000;
        if split.root_bits <= MAX_CONCATENATED.ilog2()
            && split.levels > 1
            && start(split.levels - 1) <= highest
            && (required || small)
        {
            split.levels -= 1;
            split.root_bits += stride;
        }
        if start(split.levels) < lowest {
            return Err(Error::OutOfRange);
        }
        Ok(Self {
            split,
            ia_bits,
            oa_bits,
        })
    }

    /// The granule.
    pub const fn granule(&self) -> Granule {
        self.split.granule
    }

    /// The architectural level (0-3) the walk starts at (for SL0).
    pub const fn start_level(&self) -> u32 {
        self.split.start_level()
    }

    /// The input size in bits (for T0SZ).
    pub const fn ia_bits(&self) -> u32 {
        self.ia_bits
    }

    /// How many tables are concatenated at the root.
    pub const fn concatenated(&self) -> u32 {
        1 << self
            .split
            .root_bits
            .saturating_sub(self.split.granule.bits_per_level())
    }
}

super::lpae_format!(LpaeS2);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pt::Entry;

    #[test]
    fn geometry_and_concatenation() {
        // (ia, levels, root bits, start level, concatenated tables)
        for (ia, levels, root, start, concat) in [
            (48, 4, 9, 0, 1),
            (44, 4, 5, 0, 1),
            (43, 3, 13, 1, 16),
            (40, 3, 10, 1, 2),
            (39, 3, 9, 1, 1),
            (32, 2, 11, 2, 4),
            (30, 2, 9, 2, 1),
            (25, 2, 4, 2, 1),
        ] {
            let f = LpaeS2::new(ia, 48).unwrap();
            assert_eq!(
                (
                    f.levels(),
                    f.index_bits(0),
                    f.start_level(),
                    f.concatenated()
                ),
                (levels, root, start, concat),
                "ia {ia}"
            );
            // Every level below the root is a full 4 KiB table.
            assert!((1..f.levels()).all(|d| f.index_bits(d) == 9));
            assert_eq!(
                12 + 9 * (f.levels() as u32 - 1) + f.index_bits(0),
                ia,
                "ia {ia}"
            );
        }
        assert_eq!(LpaeS2::new(45, 44), Err(Error::OutOfRange));
        assert_eq!(LpaeS2::new(24, 44), Err(Error::OutOfRange));
        assert_eq!(LpaeS2::new(40, 52), Err(Error::OutOfRange));
    }

    #[test]
    fn large_granules() {
        // (granule, ia, levels, root bits, start level, concatenated)
        for (g, ia, levels, root, start, concat) in [
            // 16K, 48 bits: level 0 is not encodable, so 2 tables at level 1.
            (Granule::K16, 48, 3, 12, 1, 2),
            (Granule::K16, 44, 3, 8, 1, 1),
            // 16 tables of 16K would be a 256 KiB root: not worth a level.
            (Granule::K16, 40, 3, 4, 1, 1),
            (Granule::K16, 37, 2, 12, 2, 2),
            (Granule::K16, 36, 2, 11, 2, 1),
            (Granule::K64, 48, 3, 6, 1, 1),
            (Granule::K64, 44, 3, 2, 1, 1),
            (Granule::K64, 42, 2, 13, 2, 1),
            (Granule::K64, 30, 2, 1, 2, 1),
            (Granule::K64, 29, 1, 13, 3, 1),
        ] {
            let f = LpaeS2::with_granule(g, ia, 48).unwrap();
            assert_eq!(
                (
                    f.levels(),
                    f.index_bits(0),
                    f.start_level(),
                    f.concatenated()
                ),
                (levels, root, start, concat),
                "{g:?} ia {ia}"
            );
            assert_eq!(f.granule(), g);
            let bits: u32 = (0..f.levels()).map(|d| f.index_bits(d)).sum();
            assert_eq!(bits + g.shift(), ia);
            // Blocks only at level 2.
            for d in 0..f.levels() {
                assert_eq!(
                    f.block_allowed(d) && d + 1 < f.levels(),
                    4 - levels + d == 2 && d + 1 < f.levels()
                );
            }
        }
        let f = LpaeS2::with_granule(Granule::K64, 44, 44).unwrap();
        let raw = f.encode_leaf(1, PhysAddr(0x1234_0000), Prot::RW);
        assert_eq!(
            f.decode(1, raw),
            Entry::Leaf {
                pa: PhysAddr(0x1234_0000),
                prot: Prot::RW
            }
        );
    }

    #[test]
    fn blocks_at_levels_1_and_2() {
        let f = LpaeS2::new(44, 44).unwrap(); // levels 0..3
        assert!(!f.block_allowed(0) && f.block_allowed(1) && f.block_allowed(2));
        let f = LpaeS2::new(40, 44).unwrap(); // levels 1..3
        assert!(f.block_allowed(0) && f.block_allowed(1) && !f.block_allowed(2));
    }

    #[test]
    fn known_descriptor_values() {
        let f = LpaeS2::new(44, 44).unwrap();
        // Level-3 page, RW, normal NC, outer shareable:
        // VALID|PAGE (0x3) | MemAttr 0b0101 << 2 (0x14) | S2AP 0b11 << 6 (0xC0)
        // | SH 0b10 << 8 (0x200) | AF (0x400) = 0x6D7.
        assert_eq!(
            f.encode_leaf(3, PhysAddr(0x4020_1000), Prot::RW),
            0x4020_1000 | 0x6d7
        );
        // Level-2 block, write-only, cacheable, XN:
        // VALID (1) | 0b1111 << 2 (0x3C) | S2AP_W (0x80) | SH_IS (0x300) | AF | XN.
        assert_eq!(
            f.encode_leaf(
                2,
                PhysAddr(0x8000_0000),
                Prot::WRITE | Prot::CACHE | Prot::NOEXEC
            ),
            0x8000_0000 | 0x1 | 0x3c | 0x80 | 0x300 | 0x400 | 1 << 54
        );
        // Device: MemAttr 0b0001.
        let raw = f.encode_leaf(3, PhysAddr(0x1000_0000), Prot::READ | Prot::MMIO);
        assert_eq!(raw, 0x1000_0000 | 0x3 | 0x4 | 0x40 | 0x200 | 0x400);
        assert_eq!(f.encode_table(1, PhysAddr(0x4100_0000)), 0x4100_0003);
    }

    #[test]
    fn round_trips() {
        let f = LpaeS2::new(44, 44).unwrap();
        for prot in [
            Prot::RW,
            Prot::READ,
            Prot::WRITE,
            Prot::READ | Prot::CACHE,
            Prot::RW | Prot::MMIO | Prot::NOEXEC,
        ] {
            for depth in 1..4 {
                let raw = f.encode_leaf(depth, PhysAddr(0x0abc_4000_0000), prot);
                assert_eq!(
                    f.decode(depth, raw),
                    Entry::Leaf {
                        pa: PhysAddr(0x0abc_4000_0000),
                        prot
                    }
                );
            }
        }
        // PRIV is not expressible at stage 2 and reads back without it.
        let raw = f.encode_leaf(3, PhysAddr(0x1000), Prot::RW | Prot::PRIV);
        assert_eq!(f.leaf_prot(3, raw), Prot::RW);
        assert_eq!(
            f.decode(1, f.encode_table(1, PhysAddr(0x5000))),
            Entry::Table(PhysAddr(0x5000))
        );
        assert!(!f.is_table(3, 0x1003));
    }

    #[test]
    fn low_bits_clear_is_invalid() {
        let f = LpaeS2::new(40, 44).unwrap();
        for depth in 0..3 {
            assert_eq!(f.decode(depth, 0), Entry::Invalid);
            assert_eq!(f.decode(depth, 0x4000_0ffe & !1), Entry::Invalid);
        }
        assert!(!f.supports(Prot::empty()));
        assert!(!f.supports(Prot::RW | Prot::MMIO | Prot::CACHE));
        assert!(f.supports(Prot::WRITE));
    }
}

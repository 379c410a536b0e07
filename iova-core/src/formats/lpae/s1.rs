//! Stage-1 descriptors and the stage-1 format.
//!
//! Leaves always have AF and nG set (the translations belong to one ASID).
//! Memory attributes select an index of the MAIR value [`MAIR`] that the
//! backend must program: normal non-cacheable, normal write-back cacheable
//! (with [`Prot::CACHE`]), or Device-nGnRE (with [`Prot::MMIO`]). Stage 1
//! cannot express write-only: [`Prot::WRITE`] without [`Prot::READ`] maps
//! read-write, as on every LPAE IOMMU.

use super::{
    ADDR_MASK, AF, Granule, MAX_ADDR_BITS, MIN_IA_BITS, MIN_OA_BITS, SH_IS, SH_OS, Split,
    TABLE_OR_PAGE, VALID,
};
use crate::addr::PhysAddr;
use crate::error::Error;
use crate::prot::Prot;
use crate::pt::PtFormat;

/// Attribute index field, bits 4:2.
pub const ATTR_INDX_SHIFT: u32 = 2;
/// AP\[1\]: unprivileged (EL0) access allowed.
pub const AP_UNPRIV: u64 = 1 << 6;
/// AP\[2\]: read-only.
pub const AP_RDONLY: u64 = 1 << 7;
/// Not global: the translation belongs to the current ASID.
pub const NG: u64 = 1 << 11;
/// Privileged execute-never.
pub const PXN: u64 = 1 << 53;
/// (Unprivileged) execute-never.
pub const UXN: u64 = 1 << 54;

/// MAIR index of normal non-cacheable memory.
pub const ATTR_IDX_NC: u64 = 0;
/// MAIR index of normal write-back, read/write-allocate memory.
pub const ATTR_IDX_CACHE: u64 = 1;
/// MAIR index of Device-nGnRE memory.
pub const ATTR_IDX_DEV: u64 = 2;
/// The MAIR value these descriptors assume: Attr0 = 0x44 (normal NC),
/// Attr1 = 0xff (normal WB RWA), Attr2 = 0x04 (Device-nGnRE).
pub const MAIR: u64 = 0x44 | 0xff << 8 | 0x04 << 16;

/// The bits of a stage-1 leaf that `prot` decides (valid, AF, nG, AP, XN,
/// attribute index, shareability): all but the output address and the
/// page-or-block bit, which depend on the granule and level.
#[inline]
pub fn leaf_attrs(prot: Prot) -> u64 {
    let mut raw = VALID | AF | NG;
    if !prot.contains(Prot::WRITE) {
        raw |= AP_RDONLY;
    }
    if !prot.contains(Prot::PRIV) {
        raw |= AP_UNPRIV;
    }
    if prot.contains(Prot::NOEXEC) {
        raw |= UXN | PXN;
    }
    let (idx, sh) = if prot.contains(Prot::MMIO) {
        (ATTR_IDX_DEV, SH_OS)
    } else if prot.contains(Prot::CACHE) {
        (ATTR_IDX_CACHE, SH_IS)
    } else {
        (ATTR_IDX_NC, SH_OS)
    };
    raw | idx << ATTR_INDX_SHIFT | sh
}

/// The permissions a stage-1 leaf's attribute bits grant: the inverse of
/// [`leaf_attrs`].
pub fn leaf_prot(raw: u64) -> Prot {
    let mut p = Prot::READ;
    if raw & AP_RDONLY == 0 {
        p |= Prot::WRITE;
    }
    if raw & AP_UNPRIV == 0 {
        p |= Prot::PRIV;
    }
    if raw & (UXN | PXN) != 0 {
        p |= Prot::NOEXEC;
    }
    match (raw >> ATTR_INDX_SHIFT) & 7 {
        ATTR_IDX_CACHE => p |= Prot::CACHE,
        ATTR_IDX_DEV => p |= Prot::MMIO,
        _ => {}
    }
    p
}

/// LPAE stage 1 (one translation table base, TTBR0 / CD.TTB0) with a 4, 16
/// or 64 KiB granule, up to 48-bit input and output addresses. Blocks as
/// [`Granule::has_blocks_at`] says: 1 GiB and 2 MiB with 4 KiB, 32 MiB with
/// 16 KiB, 512 MiB with 64 KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LpaeS1 {
    split: Split,
    oa_bits: u32,
}

impl LpaeS1 {
    /// A 4 KiB-granule format for `ia_bits` of input (25..=48, i.e. T0SZ
    /// 16..=39) and `oa_bits` of output address (32..=48).
    pub fn new(ia_bits: u32, oa_bits: u32) -> Result<Self, Error> {
        Self::with_granule(Granule::K4, ia_bits, oa_bits)
    }

    /// As [`new`](Self::new), with a 4, 16 or 64 KiB granule.
    pub fn with_granule(granule: Granule, ia_bits: u32, oa_bits: u32) -> Result<Self, Error> {
        if !(MIN_IA_BITS..=MAX_ADDR_BITS).contains(&ia_bits)
            || !(MIN_OA_BITS..=MAX_ADDR_BITS).contains(&oa_bits)
        {
            return Err(Error::OutOfRange);
        }
        Ok(Self {
            split: Split::new(granule, ia_bits),
            oa_bits,
        })
    }

    /// The common case: 4 KiB granule, 48-bit input and output, four levels.
    pub const fn va48() -> Self {
        Self {
            split: Split::new(Granule::K4, 48),
            oa_bits: 48,
        }
    }

    /// The granule (for TCR / CD.TG0 and the TLBI granule).
    pub const fn granule(&self) -> Granule {
        self.split.granule
    }

    /// The architectural level (0-3) the walk starts at.
    pub const fn start_level(&self) -> u32 {
        self.split.start_level()
    }
}

super::lpae_format!(LpaeS1);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pt::Entry;

    #[test]
    fn geometry_of_the_large_granules() {
        let f = LpaeS1::with_granule(Granule::K16, 48, 48).unwrap();
        assert_eq!((f.levels(), f.index_bits(0), f.index_bits(1)), (4, 1, 11));
        assert!(!f.block_allowed(1) && f.block_allowed(2) && !f.block_allowed(3));
        let f = LpaeS1::with_granule(Granule::K64, 48, 48).unwrap();
        assert_eq!((f.levels(), f.index_bits(0), f.index_bits(1)), (3, 6, 13));
        assert!(!f.block_allowed(0) && f.block_allowed(1) && !f.block_allowed(2));
        let f = LpaeS1::with_granule(Granule::K64, 42, 44).unwrap();
        assert_eq!((f.levels(), f.index_bits(0)), (2, 13));
        assert!(f.block_allowed(0));
        let f = LpaeS1::with_granule(Granule::K16, 36, 44).unwrap();
        assert_eq!((f.levels(), f.index_bits(0)), (2, 11));
        // The 4 KiB granule is the same format as `new` makes.
        assert_eq!(
            LpaeS1::with_granule(Granule::K4, 48, 48),
            Ok(LpaeS1::va48())
        );
        assert_eq!(LpaeS1::new(48, 48), Ok(LpaeS1::va48()));
        assert_eq!(
            LpaeS1::with_granule(Granule::K16, 49, 48),
            Err(Error::OutOfRange)
        );
        for g in [Granule::K16, Granule::K64] {
            for ia in 25..=48 {
                let f = LpaeS1::with_granule(g, ia, 48).unwrap();
                let bits: u32 = (0..f.levels()).map(|d| f.index_bits(d)).sum();
                assert_eq!(bits + g.shift(), ia);
                assert_eq!(f.granule(), g);
            }
        }
    }

    #[test]
    fn large_granules_have_the_same_attributes_as_4k() {
        let k4 = LpaeS1::va48();
        let f = LpaeS1::with_granule(Granule::K64, 48, 48).unwrap();
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
    fn geometry_follows_t0sz() {
        let f = LpaeS1::new(48, 48).unwrap();
        assert_eq!((f.levels(), f.index_bits(0)), (4, 9));
        let f = LpaeS1::new(39, 40).unwrap();
        assert_eq!((f.levels(), f.index_bits(0)), (3, 9));
        assert!(f.block_allowed(0) && f.block_allowed(1) && !f.block_allowed(2));
        let f = LpaeS1::new(32, 40).unwrap();
        assert_eq!((f.levels(), f.index_bits(0)), (3, 2));
        assert_eq!(LpaeS1::new(49, 48), Err(Error::OutOfRange));
        assert_eq!(LpaeS1::new(24, 48), Err(Error::OutOfRange));
    }

    #[test]
    fn known_descriptor_values() {
        let f = LpaeS1::va48();
        // Level-3 page, RW, unprivileged, non-cacheable, outer shareable:
        // VALID|PAGE|AttrIndx0|AP_UNPRIV|SH_OS|AF|nG = 0xE43, plus the address.
        assert_eq!(
            f.encode_leaf(3, PhysAddr(0x4020_1000), Prot::RW),
            0x4020_1000 | 0xE43
        );
        // Level-2 block, read-only, cacheable, no exec.
        let raw = f.encode_leaf(
            2,
            PhysAddr(0x8000_0000),
            Prot::READ | Prot::CACHE | Prot::NOEXEC,
        );
        assert_eq!(
            raw,
            0x8000_0000 | 1 | 1 << 2 | 1 << 6 | 1 << 7 | 3 << 8 | 1 << 10 | 1 << 11 | 3 << 53
        );
        assert_eq!(f.encode_table(0, PhysAddr(0x4100_0000)), 0x4100_0003);
    }

    #[test]
    fn round_trips() {
        let f = LpaeS1::va48();
        for prot in [
            Prot::RW,
            Prot::READ,
            Prot::RW | Prot::PRIV,
            Prot::READ | Prot::CACHE,
            Prot::RW | Prot::MMIO | Prot::NOEXEC,
        ] {
            for depth in 1..4 {
                let raw = f.encode_leaf(depth, PhysAddr(0x1234_4000_0000), prot);
                assert_eq!(
                    f.decode(depth, raw),
                    Entry::Leaf {
                        pa: PhysAddr(0x1234_4000_0000),
                        prot
                    }
                );
            }
        }
        // Write-only cannot be expressed: it reads back as read-write.
        let raw = f.encode_leaf(3, PhysAddr(0x1000), Prot::WRITE);
        assert_eq!(f.leaf_prot(3, raw), Prot::RW);
        assert_eq!(
            f.decode(1, f.encode_table(1, PhysAddr(0x5000))),
            Entry::Table(PhysAddr(0x5000))
        );
        // A level-3 descriptor with bits 1:0 = 0b11 is a page, not a table.
        assert!(!f.is_table(3, 0x1003));
    }

    #[test]
    fn low_bits_clear_is_invalid() {
        let f = LpaeS1::va48();
        for depth in 0..4 {
            assert_eq!(f.decode(depth, 0), Entry::Invalid);
            assert_eq!(f.decode(depth, 0x4000_0800), Entry::Invalid);
        }
        assert!(!f.supports(Prot::empty()));
        assert!(!f.supports(Prot::RW | Prot::MMIO | Prot::CACHE));
    }
}

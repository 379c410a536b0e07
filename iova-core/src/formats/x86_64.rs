//! The x86-64 paging format: 4-level (48-bit) or 5-level (57-bit), 4 KiB pages,
//! 2 MiB pages, and 1 GiB pages where the IOMMU supports them. VT-d uses it for
//! first-level (scalable-mode) translation.
//!
//! The walker translates canonical addresses only (bits 63:47, or 63:56,
//! all equal). The tables map the lower canonical half: IOVAs below
//! `1 << 47` (4-level) or `1 << 56` (5-level), so an IOVA is its own
//! zero-extended address and no allocator has to hand out a sign-extended
//! upper half.
//!
//! Leaves are written with the accessed and dirty bits already set so that the
//! IOMMU never has to write them back. x86 cannot express write-only or
//! unreadable mappings: any present leaf is readable.

use crate::addr::PhysAddr;
use crate::error::Error;
use crate::prot::Prot;
use crate::pt::PtFormat;

/// Present.
pub const P: u64 = 1 << 0;
/// Writable.
pub const RW: u64 = 1 << 1;
/// User (unprivileged) accessible.
pub const US: u64 = 1 << 2;
/// Page-level write-through.
pub const PWT: u64 = 1 << 3;
/// Page-level cache disable.
pub const PCD: u64 = 1 << 4;
/// Accessed.
pub const A: u64 = 1 << 5;
/// Dirty (leaves only).
pub const D: u64 = 1 << 6;
/// Page size: a leaf at the PDPT or PD level.
pub const PS: u64 = 1 << 7;
/// Execute disable.
pub const XD: u64 = 1 << 63;

/// The x86-64 format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct X86_64 {
    levels: usize,
    huge_1g: bool,
    oa_bits: u32,
    /// Address bits of a 4 KiB page or table entry.
    addr_mask: u64,
}

impl X86_64 {
    /// `levels` is 4 or 5; `huge_1g` allows 1 GiB pages; `oa_bits` is the
    /// physical address width (32..=52).
    pub fn new(levels: usize, huge_1g: bool, oa_bits: u32) -> Result<Self, Error> {
        if !(4..=5).contains(&levels) || !(32..=52).contains(&oa_bits) {
            return Err(Error::OutOfRange);
        }
        Ok(Self {
            levels,
            huge_1g,
            oa_bits,
            addr_mask: ((1u64 << oa_bits) - 1) & !0xfff,
        })
    }

    /// 4-level paging, 1 GiB pages, 52-bit physical addresses.
    pub fn four_level() -> Self {
        Self {
            levels: 4,
            huge_1g: true,
            oa_bits: 52,
            addr_mask: ((1u64 << 52) - 1) & !0xfff,
        }
    }
}

impl PtFormat for X86_64 {
    fn levels(&self) -> usize {
        self.levels
    }
    fn granule_shift(&self) -> u32 {
        12
    }
    fn index_bits(&self, _: usize) -> u32 {
        9
    }
    fn block_allowed(&self, depth: usize) -> bool {
        let from_leaf = self.levels - 1 - depth;
        from_leaf == 1 || (from_leaf == 2 && self.huge_1g)
    }
    fn oa_bits(&self) -> u32 {
        self.oa_bits
    }
    fn max_ia_bits(&self) -> u32 {
        // The lower canonical half: the top bit the levels reach stays 0.
        12 + 9 * self.levels as u32 - 1
    }
    #[inline]
    fn is_present(&self, _: usize, raw: u64) -> bool {
        raw & P != 0
    }
    #[inline]
    fn is_table(&self, depth: usize, raw: u64) -> bool {
        self.is_next_table(depth, raw) && depth + 1 < self.levels
    }
    #[inline]
    fn is_next_table(&self, _: usize, raw: u64) -> bool {
        raw & (P | PS) == P
    }
    #[inline]
    fn table_pa(&self, raw: u64) -> PhysAddr {
        PhysAddr(raw & self.addr_mask)
    }
    #[inline]
    fn leaf_pa(&self, depth: usize, raw: u64) -> PhysAddr {
        // In a large page, bit 12 is PAT, not an address bit.
        let mask = if depth + 1 < self.levels {
            self.addr_mask & !0x1fff
        } else {
            self.addr_mask
        };
        PhysAddr(raw & mask)
    }
    fn leaf_prot(&self, _: usize, raw: u64) -> Prot {
        let mut p = Prot::READ;
        if raw & RW != 0 {
            p |= Prot::WRITE;
        }
        if raw & US == 0 {
            p |= Prot::PRIV;
        }
        if raw & XD != 0 {
            p |= Prot::NOEXEC;
        }
        if raw & PCD != 0 {
            p |= Prot::MMIO;
        } else {
            p |= Prot::CACHE;
        }
        p
    }
    #[inline]
    fn encode_table(&self, _: usize, pa: PhysAddr) -> u64 {
        (pa.0 & self.addr_mask) | P | RW | US | A
    }
    #[inline]
    fn encode_leaf(&self, depth: usize, pa: PhysAddr, prot: Prot) -> u64 {
        let mut raw = (pa.0 & self.addr_mask) | P | A;
        if depth + 1 < self.levels {
            raw |= PS;
        }
        if prot.contains(Prot::WRITE) {
            raw |= RW | D;
        }
        if !prot.contains(Prot::PRIV) {
            raw |= US;
        }
        if prot.contains(Prot::NOEXEC) {
            raw |= XD;
        }
        if prot.contains(Prot::MMIO) {
            raw |= PCD | PWT;
        }
        raw
    }
    fn supports(&self, prot: Prot) -> bool {
        prot.grants_access() && !prot.contains(Prot::MMIO | Prot::CACHE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pt::Entry;

    #[test]
    fn known_values_and_round_trips() {
        let f = X86_64::four_level();
        assert_eq!(
            f.encode_leaf(3, PhysAddr(0x20_3000), Prot::RW),
            0x20_3000 | 0x67
        );
        assert_eq!(
            f.encode_leaf(2, PhysAddr(0x4000_0000), Prot::READ),
            0x4000_0000 | 0xA5
        );
        assert_eq!(f.encode_table(0, PhysAddr(0x9000)), 0x9027);
        for depth in 1..4 {
            for prot in [
                Prot::RW | Prot::CACHE,
                Prot::READ | Prot::PRIV | Prot::CACHE,
                Prot::RW | Prot::MMIO | Prot::NOEXEC,
            ] {
                let raw = f.encode_leaf(depth, PhysAddr(0x8_0000_0000), prot);
                assert_eq!(
                    f.decode(depth, raw),
                    Entry::Leaf {
                        pa: PhysAddr(0x8_0000_0000),
                        prot
                    }
                );
            }
        }
        assert!(f.block_allowed(1) && f.block_allowed(2) && !f.block_allowed(0));
        let no1g = X86_64::new(4, false, 46).unwrap();
        assert!(!no1g.block_allowed(1) && no1g.block_allowed(2));
        let five = X86_64::new(5, true, 52).unwrap();
        assert!(five.block_allowed(2) && five.block_allowed(3) && !five.block_allowed(1));
        assert_eq!(X86_64::new(3, true, 48), Err(Error::OutOfRange));
    }

    #[test]
    fn low_bits_clear_is_invalid() {
        let f = X86_64::four_level();
        for depth in 0..4 {
            assert_eq!(f.decode(depth, 0x1234_0800), Entry::Invalid);
        }
    }
}

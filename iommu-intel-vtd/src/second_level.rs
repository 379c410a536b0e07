//! The second-level page-table format (VT-d specification 9.8), for
//! iova-core's page-table engine.
//!
//! Entries are 64 bits: R (bit 0), W (bit 1), PS (bit 7, a superpage at
//! level 2 or 3), SNP (bit 11), address bits 51:12. An entry with neither R
//! nor W is not present. Permissions are the AND of every level's, so table
//! entries carry R and W and leaves carry the mapping's permissions.
//!
//! Depth 0 is the root: level 3 for a 3-level (39-bit) table, level 4 for a
//! 4-level (48-bit) one, level 5 for 57 bits. Superpages are allowed only
//! where CAP.SLLPS says so (2 MiB at level 2, 1 GiB at level 3).
//!
//! Second-level entries can express read-only and write-only mappings.
//! [`Prot::MMIO`] cannot be expressed without memory-type support and is
//! refused; [`Prot::PRIV`] and [`Prot::NOEXEC`] have no second-level bits in
//! legacy mode (requests are neither privileged nor executable) and are
//! accepted but not stored; [`Prot::CACHE`] is the default (the unit's
//! accesses are coherent, or the caller's cache maintenance makes them so).

use iova_core::pt::PtFormat;
use iova_core::{PhysAddr, Prot};

use crate::caps::Capability;

/// Read permission.
pub const R: u64 = 1 << 0;
/// Write permission.
pub const W: u64 = 1 << 1;
/// Page size: this level-2 or level-3 entry is a superpage.
pub const PS: u64 = 1 << 7;
/// Snoop behaviour (honoured only with ECAP.SC).
pub const SNP: u64 = 1 << 11;

/// Why a second-level format cannot be built for a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum FormatError {
    /// The unit's SAGAW does not include tables of this many levels.
    LevelsUnsupported(usize),
    /// The output address width is outside 32..=52 bits, or an address
    /// width is beyond what the unit takes (its MGAW for input addresses,
    /// its address width for output ones).
    BadAddressWidth(u32),
    /// Superpages the unit does not walk (CAP.SLLPS).
    SuperpagesUnsupported,
    /// SNP in leaves, on a unit without snoop control (ECAP.SC).
    SnoopUnsupported,
}

/// Second-level tables of 3, 4 or 5 levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecondLevel {
    levels: usize,
    /// Input address bits translated: the levels' reach, or MGAW if less.
    ia_bits: u32,
    sp_2m: bool,
    sp_1g: bool,
    oa_bits: u32,
    addr_mask: u64,
    snoop: bool,
}

impl SecondLevel {
    /// A format of `levels` levels with the superpages `sllps` allows (bit 0:
    /// 2 MiB, bit 1: 1 GiB) and output addresses below `1 << oa_bits`.
    pub fn new(levels: usize, sllps: u8, oa_bits: u32) -> Result<Self, FormatError> {
        if !(3..=5).contains(&levels) {
            return Err(FormatError::LevelsUnsupported(levels));
        }
        if !(32..=52).contains(&oa_bits) {
            return Err(FormatError::BadAddressWidth(oa_bits));
        }
        Ok(Self {
            levels,
            ia_bits: 12 + 9 * levels as u32,
            sp_2m: sllps & 1 != 0,
            sp_1g: sllps & 2 != 0,
            oa_bits,
            addr_mask: ((1u64 << oa_bits) - 1) & !0xfff,
            snoop: false,
        })
    }

    /// The format a unit with capability `cap` walks with `levels` levels;
    /// input and output addresses are limited to the unit's MGAW (QEMU
    /// treats output bits above it as reserved).
    pub fn for_unit(cap: Capability, levels: usize) -> Result<Self, FormatError> {
        if !cap.supports_levels(levels) {
            return Err(FormatError::LevelsUnsupported(levels));
        }
        Ok(Self::new(levels, cap.sllps(), cap.mgaw().min(52))?.with_mgaw(cap.mgaw()))
    }

    /// Limits input addresses to `mgaw` bits: the unit faults on IOVAs at or
    /// above `1 << MGAW` even where the tables' levels reach further (a
    /// 4-level table on a unit with MGAW 39).
    pub fn with_mgaw(mut self, mgaw: u32) -> Self {
        self.ia_bits = self.ia_bits.min(mgaw);
        self
    }

    /// Sets SNP in every leaf (only for units with ECAP.SC: on others the
    /// bit is reserved).
    pub fn with_snoop(mut self, snoop: bool) -> Self {
        self.snoop = snoop;
        self
    }

    /// The input address width translated: what the levels cover (39, 48
    /// or 57 bits), or the unit's MGAW if less.
    pub fn ia_bits(&self) -> u32 {
        self.ia_bits
    }

    /// The context entry's AW field for this depth (1 = 3-level, 2 = 4-level,
    /// 3 = 5-level).
    pub fn context_aw(&self) -> u8 {
        (self.levels - 2) as u8
    }

    /// SLLPS bits this format uses (bit 0: 2 MiB, bit 1: 1 GiB).
    pub fn sllps(&self) -> u8 {
        u8::from(self.sp_2m) | u8::from(self.sp_1g) << 1
    }

    /// Whether leaves carry SNP.
    pub fn snoop(&self) -> bool {
        self.snoop
    }

    fn level(&self, depth: usize) -> usize {
        self.levels - depth
    }
}

impl PtFormat for SecondLevel {
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
        match self.level(depth) {
            2 => self.sp_2m,
            3 => self.sp_1g,
            _ => false,
        }
    }
    fn oa_bits(&self) -> u32 {
        self.oa_bits
    }
    fn max_ia_bits(&self) -> u32 {
        self.ia_bits
    }
    #[inline]
    fn is_present(&self, _: usize, raw: u64) -> bool {
        raw & (R | W) != 0
    }
    #[inline]
    fn is_table(&self, depth: usize, raw: u64) -> bool {
        raw & (R | W) != 0 && raw & PS == 0 && depth + 1 < self.levels
    }
    #[inline]
    fn table_pa(&self, raw: u64) -> PhysAddr {
        PhysAddr(raw & self.addr_mask)
    }
    #[inline]
    fn leaf_pa(&self, _: usize, raw: u64) -> PhysAddr {
        PhysAddr(raw & self.addr_mask)
    }
    fn leaf_prot(&self, _: usize, raw: u64) -> Prot {
        let mut p = Prot::CACHE;
        if raw & R != 0 {
            p |= Prot::READ;
        }
        if raw & W != 0 {
            p |= Prot::WRITE;
        }
        p
    }
    #[inline]
    fn encode_table(&self, _: usize, pa: PhysAddr) -> u64 {
        (pa.0 & self.addr_mask) | R | W
    }
    #[inline]
    fn encode_leaf(&self, depth: usize, pa: PhysAddr, prot: Prot) -> u64 {
        let mut raw = pa.0 & self.addr_mask;
        if prot.contains(Prot::READ) {
            raw |= R;
        }
        if prot.contains(Prot::WRITE) {
            raw |= W;
        }
        if depth + 1 < self.levels {
            raw |= PS;
        }
        if self.snoop {
            raw |= SNP;
        }
        raw
    }
    fn supports(&self, prot: Prot) -> bool {
        prot.grants_access() && !prot.contains(Prot::MMIO)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iova_core::pt::Entry;

    const QEMU_CAP_39: u64 = 0x00D2_008C_2226_0206;
    const QEMU_CAP_48: u64 = 0x00D2_008C_222F_0606;

    #[test]
    fn geometry_follows_the_unit() {
        let f3 = SecondLevel::for_unit(Capability(QEMU_CAP_39), 3).unwrap();
        assert_eq!(
            (f3.levels(), f3.ia_bits(), f3.context_aw(), f3.oa_bits()),
            (3, 39, 1, 39)
        );
        assert!(f3.block_allowed(0) && f3.block_allowed(1) && !f3.block_allowed(2));
        assert_eq!(
            SecondLevel::for_unit(Capability(QEMU_CAP_39), 4),
            Err(FormatError::LevelsUnsupported(4))
        );
        let f4 = SecondLevel::for_unit(Capability(QEMU_CAP_48), 4).unwrap();
        assert_eq!((f4.ia_bits(), f4.context_aw(), f4.oa_bits()), (48, 2, 48));
        assert!(!f4.block_allowed(0) && f4.block_allowed(1) && f4.block_allowed(2));
        // 4-level tables on a unit with MGAW 39: 39-bit IOVAs, AW still 4-level.
        let narrow =
            SecondLevel::for_unit(Capability(QEMU_CAP_48 & !(0x3f << 16) | 38 << 16), 4).unwrap();
        assert_eq!(
            (narrow.levels(), narrow.ia_bits(), narrow.max_ia_bits()),
            (4, 39, 39)
        );
        assert_eq!(narrow.context_aw(), 2);
        // No SLLPS: no superpages at all.
        let plain = SecondLevel::new(4, 0, 46).unwrap();
        assert!((0..4).all(|d| !plain.block_allowed(d)));
        // 2 MiB only.
        let two = SecondLevel::new(4, 1, 46).unwrap();
        assert!(!two.block_allowed(1) && two.block_allowed(2));
        assert_eq!(
            SecondLevel::new(2, 3, 46),
            Err(FormatError::LevelsUnsupported(2))
        );
        assert_eq!(
            SecondLevel::new(4, 3, 64),
            Err(FormatError::BadAddressWidth(64))
        );
    }

    #[test]
    fn known_encodings() {
        let f = SecondLevel::new(4, 3, 48).unwrap();
        assert_eq!(f.encode_table(0, PhysAddr(0x1234_5000)), 0x1234_5003);
        assert_eq!(f.encode_leaf(3, PhysAddr(0x8000), Prot::READ), 0x8001);
        assert_eq!(f.encode_leaf(3, PhysAddr(0x8000), Prot::WRITE), 0x8002);
        assert_eq!(f.encode_leaf(2, PhysAddr(0x20_0000), Prot::RW), 0x20_0083);
        assert_eq!(
            f.encode_leaf(1, PhysAddr(0x4000_0000), Prot::RW),
            0x4000_0083
        );
        // Address bits above the output width are never written.
        assert_eq!(
            f.encode_leaf(3, PhysAddr(1 << 50 | 0x1000), Prot::READ),
            0x1001
        );
        assert_eq!(
            f.with_snoop(true).encode_leaf(3, PhysAddr(0), Prot::READ),
            SNP | R
        );
    }

    #[test]
    fn round_trips_and_invalid_entries() {
        let f = SecondLevel::new(4, 3, 48).unwrap();
        for depth in 1..4 {
            for prot in [Prot::READ, Prot::WRITE, Prot::RW] {
                let raw = f.encode_leaf(depth, PhysAddr(0x40_0000_0000), prot);
                assert_eq!(
                    f.decode(depth, raw),
                    Entry::Leaf {
                        pa: PhysAddr(0x40_0000_0000),
                        prot: prot | Prot::CACHE
                    }
                );
            }
        }
        for depth in 0..3 {
            assert_eq!(
                f.decode(depth, f.encode_table(depth, PhysAddr(0x9000))),
                Entry::Table(PhysAddr(0x9000))
            );
        }
        // Granule multiples (and the engine's free-list marker, bit 11) are not present.
        for depth in 0..4 {
            assert_eq!(f.decode(depth, 0x1234_5000), Entry::Invalid);
            assert_eq!(f.decode(depth, 0x1234_5800), Entry::Invalid);
            assert_eq!(f.decode(depth, 0), Entry::Invalid);
        }
        assert!(!f.supports(Prot::READ | Prot::MMIO));
        assert!(!f.supports(Prot::CACHE));
        assert!(f.supports(Prot::WRITE | Prot::NOEXEC | Prot::PRIV));
    }
}

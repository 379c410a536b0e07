//! Invalidation descriptors (VT-d specification 6.5.2): 128 bits each,
//! written into the invalidation queue.
//!
//! Reserved bits are left zero: QEMU (and hardware) stop the queue with
//! FSTS.IQE on a reserved bit. A wait descriptor asks for a status write or
//! for an interrupt, never both: QEMU aborts on that combination.

use core::fmt;

/// Descriptor type: context-cache invalidation.
pub const TYPE_CONTEXT: u64 = 1;
/// Descriptor type: IOTLB invalidation.
pub const TYPE_IOTLB: u64 = 2;
/// Descriptor type: device-TLB invalidation.
pub const TYPE_DEVICE_TLB: u64 = 3;
/// Descriptor type: interrupt entry cache invalidation.
pub const TYPE_IEC: u64 = 4;
/// Descriptor type: invalidation wait.
pub const TYPE_WAIT: u64 = 5;
/// Descriptor type: PASID-based IOTLB invalidation.
pub const TYPE_PASID_IOTLB: u64 = 6;
/// Descriptor type: PASID-cache invalidation.
pub const TYPE_PASID_CACHE: u64 = 7;

/// Granularity field (bits 5:4): global.
const G_GLOBAL: u64 = 1 << 4;
/// Granularity field: domain-selective.
const G_DOMAIN: u64 = 2 << 4;
/// Granularity field: device- (context) or page- (IOTLB) selective.
const G_SELECTIVE: u64 = 3 << 4;
/// IOTLB descriptor: drain writes.
const IOTLB_DW: u64 = 1 << 6;
/// IOTLB descriptor: drain reads.
const IOTLB_DR: u64 = 1 << 7;
/// IOTLB descriptor, high half: invalidation hint (leaves only).
const IOTLB_IH: u64 = 1 << 6;
/// IEC descriptor: index-selective (clear: global).
pub const IEC_INDEX: u64 = 1 << 4;
/// Wait descriptor: interrupt on completion.
pub const WAIT_IF: u64 = 1 << 4;
/// Wait descriptor: status write on completion.
pub const WAIT_SW: u64 = 1 << 5;
/// Wait descriptor: fence (later descriptors wait for earlier ones).
pub const WAIT_FN: u64 = 1 << 6;

/// One 128-bit invalidation descriptor.
#[derive(Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Descriptor {
    /// Bits 63:0.
    pub lo: u64,
    /// Bits 127:64.
    pub hi: u64,
}

impl fmt::Debug for Descriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Descriptor {{ type {}, lo {:#018x}, hi {:#018x} }}",
            self.kind(),
            self.lo,
            self.hi
        )
    }
}

/// Which context-cache entries a context-cache invalidation drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextScope {
    /// Every entry.
    Global,
    /// Entries tagged with this domain ID.
    Domain(u16),
    /// The entry of one source ID (`function_mask` ignores its low 0-3
    /// function bits), which must be tagged with `did`.
    Device {
        /// Domain ID of the entry.
        did: u16,
        /// Source ID (`bus << 8 | devfn`).
        sid: u16,
        /// Function mask (FM, 0..=3).
        function_mask: u8,
    },
}

/// Which translations an IOTLB invalidation drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IotlbScope {
    /// Every translation.
    Global,
    /// Translations of one domain.
    Domain(u16),
    /// `2^mask` pages from `addr` (aligned to that size) in one domain.
    Pages {
        /// Domain ID.
        did: u16,
        /// First IOVA (aligned to `4 KiB << mask`).
        addr: u64,
        /// Address mask (AM): log2 of the number of pages.
        mask: u8,
        /// Invalidation hint: only leaf entries changed, paging-structure
        /// caches may be kept.
        leaf_only: bool,
    },
}

/// Which PASID-cache entries a PASID-cache invalidation drops (scalable mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasidCacheScope {
    /// Entries tagged with this domain ID.
    Domain(u16),
    /// The entry of one PASID in one domain.
    Pasid {
        /// Domain ID.
        did: u16,
        /// PASID (20 bits).
        pasid: u32,
    },
    /// Every entry.
    Global,
}

/// Which interrupt-remapping entries an interrupt entry cache invalidation
/// drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IecScope {
    /// Every cached entry.
    Global,
    /// `2^mask` entries from `index` (aligned to that count).
    Index {
        /// First interrupt index (IIDX).
        index: u16,
        /// Index mask (IM): log2 of the number of entries, at most ECAP.MHMV.
        mask: u8,
    },
}

/// Which first-level (PASID-tagged) translations a PASID-based IOTLB
/// invalidation drops (scalable mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasidIotlbScope {
    /// Every translation of one PASID in one domain.
    Pasid {
        /// Domain ID.
        did: u16,
        /// PASID.
        pasid: u32,
    },
    /// `2^mask` pages from `addr` of one PASID in one domain.
    Pages {
        /// Domain ID.
        did: u16,
        /// PASID.
        pasid: u32,
        /// First IOVA (aligned to `4 KiB << mask`).
        addr: u64,
        /// Address mask (AM).
        mask: u8,
        /// Only leaf entries changed.
        leaf_only: bool,
    },
}

impl Descriptor {
    /// The descriptor type (bits 3:0, and bits 11:9 as bits 6:4).
    pub fn kind(&self) -> u64 {
        ((self.lo >> 5) & 0x70) | (self.lo & 0xf)
    }

    /// A context-cache invalidation.
    pub fn context(scope: ContextScope) -> Self {
        let lo = match scope {
            ContextScope::Global => G_GLOBAL,
            ContextScope::Domain(did) => G_DOMAIN | u64::from(did) << 16,
            ContextScope::Device {
                did,
                sid,
                function_mask,
            } => {
                G_SELECTIVE
                    | u64::from(did) << 16
                    | u64::from(sid) << 32
                    | u64::from(function_mask & 3) << 48
            }
        };
        Self {
            lo: lo | TYPE_CONTEXT,
            hi: 0,
        }
    }

    /// An IOTLB invalidation; `drain` asks the unit to drain reads and writes
    /// (only where CAP.DRD/DWD say it can).
    pub fn iotlb(scope: IotlbScope, drain_reads: bool, drain_writes: bool) -> Self {
        let (g, did, hi) = match scope {
            IotlbScope::Global => (G_GLOBAL, 0, 0),
            IotlbScope::Domain(did) => (G_DOMAIN, did, 0),
            IotlbScope::Pages {
                did,
                addr,
                mask,
                leaf_only,
            } => (
                G_SELECTIVE,
                did,
                (addr & !0xfff) | if leaf_only { IOTLB_IH } else { 0 } | u64::from(mask & 0x3f),
            ),
        };
        let mut lo = TYPE_IOTLB | g | u64::from(did) << 16;
        if drain_reads {
            lo |= IOTLB_DR;
        }
        if drain_writes {
            lo |= IOTLB_DW;
        }
        Self { lo, hi }
    }

    /// A PASID-cache invalidation.
    pub fn pasid_cache(scope: PasidCacheScope) -> Self {
        let lo = match scope {
            PasidCacheScope::Domain(did) => u64::from(did) << 16,
            PasidCacheScope::Pasid { did, pasid } => {
                1 << 4 | u64::from(did) << 16 | u64::from(pasid & 0xf_ffff) << 32
            }
            PasidCacheScope::Global => 3 << 4,
        };
        Self {
            lo: lo | TYPE_PASID_CACHE,
            hi: 0,
        }
    }

    /// A PASID-based IOTLB invalidation.
    pub fn pasid_iotlb(scope: PasidIotlbScope) -> Self {
        let (g, did, pasid, hi) = match scope {
            PasidIotlbScope::Pasid { did, pasid } => (2 << 4, did, pasid, 0),
            PasidIotlbScope::Pages {
                did,
                pasid,
                addr,
                mask,
                leaf_only,
            } => (
                G_SELECTIVE,
                did,
                pasid,
                (addr & !0xfff) | if leaf_only { IOTLB_IH } else { 0 } | u64::from(mask & 0x3f),
            ),
        };
        Self {
            lo: TYPE_PASID_IOTLB | g | u64::from(did) << 16 | u64::from(pasid & 0xf_ffff) << 32,
            hi,
        }
    }

    /// An interrupt entry cache invalidation (type 4: G bit 4 set for
    /// index-selective, IM bits 31:27, IIDX bits 47:32).
    pub fn iec(scope: IecScope) -> Self {
        let lo = match scope {
            IecScope::Global => 0,
            IecScope::Index { index, mask } => {
                IEC_INDEX | u64::from(mask & 0x1f) << 27 | u64::from(index) << 32
            }
        };
        Self {
            lo: lo | TYPE_IEC,
            hi: 0,
        }
    }

    /// A wait descriptor that writes `data` to the 4-byte aligned physical
    /// address `status` when every earlier descriptor has completed.
    pub fn wait_status(status: u64, data: u32) -> Self {
        Self {
            lo: TYPE_WAIT | WAIT_SW | WAIT_FN | u64::from(data) << 32,
            hi: status & !3,
        }
    }

    /// A wait descriptor that raises the invalidation completion interrupt
    /// (and sets ICS.IWC) instead of writing memory.
    pub fn wait_interrupt() -> Self {
        Self {
            lo: TYPE_WAIT | WAIT_IF | WAIT_FN,
            hi: 0,
        }
    }
}

/// Page-selective invalidations that cover `[start, end)`: one aligned block
/// per call of `emit` (address, mask), none larger than `2^mamv` pages. One
/// block when the whole range fits in an aligned block of at most `2^mamv`
/// pages (over-invalidating the rest of the block, never under); otherwise
/// consecutive `2^mamv`-page blocks. Returns the number of blocks, or `None`
/// (emitting nothing) if more than `limit` would be needed: the caller then
/// uses a domain-selective invalidation.
pub fn page_blocks(
    start: u64,
    end: u64,
    mamv: u32,
    limit: usize,
    mut emit: impl FnMut(u64, u8),
) -> Option<usize> {
    if end <= start {
        return Some(0);
    }
    let first = start >> 12;
    let last = (end - 1) >> 12;
    // Smallest mask whose aligned block holds both the first and last page.
    let needed = 64 - (first ^ last).leading_zeros();
    // A mask is at most 51 (an address has 52 page-number bits), whatever
    // the unit claims in MAMV.
    let mamv = mamv.min(51);
    if needed <= mamv {
        emit((first << 12) & !((1u64 << (needed + 12)) - 1), needed as u8);
        return Some(1);
    }
    let block = 1u64 << mamv;
    let from = first >> mamv;
    let to = last >> mamv;
    let count = usize::try_from(to - from + 1).ok()?;
    if count > limit {
        return None;
    }
    for b in from..=to {
        emit((b * block) << 12, mamv as u8);
    }
    Some(count)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;

    /// QEMU's reserved-bit masks (`intel_iommu_internal.h`).
    const CC_RESERVED: u64 = 0xfffc_0000_0000_f1c0;
    const IOTLB_RESERVED: [u64; 2] = [0xffff_ffff_0000_f100, 0xf80];
    const WAIT_RESERVED: [u64; 2] = [0xffff_f180, 0b11];

    #[test]
    fn context_descriptors() {
        assert_eq!(
            Descriptor::context(ContextScope::Global),
            Descriptor { lo: 0x11, hi: 0 }
        );
        assert_eq!(
            Descriptor::context(ContextScope::Domain(0xabcd)).lo,
            0xabcd_0021
        );
        let d = Descriptor::context(ContextScope::Device {
            did: 5,
            sid: 0x0108,
            function_mask: 3,
        });
        assert_eq!(d.lo, 0x0003_0108_0005_0031);
        assert_eq!(d.kind(), TYPE_CONTEXT);
        for d in [d, Descriptor::context(ContextScope::Global)] {
            assert_eq!(d.lo & CC_RESERVED, 0);
            assert_eq!(d.hi, 0);
        }
    }

    #[test]
    fn iotlb_descriptors() {
        assert_eq!(Descriptor::iotlb(IotlbScope::Global, false, false).lo, 0x12);
        assert_eq!(
            Descriptor::iotlb(IotlbScope::Domain(1), true, true).lo,
            0x1_00e2
        );
        let d = Descriptor::iotlb(
            IotlbScope::Pages {
                did: 0xffff,
                addr: 0x7f_ffe0_0000,
                mask: 9,
                leaf_only: true,
            },
            false,
            true,
        );
        assert_eq!(d.lo, 0xffff_0072);
        assert_eq!(d.hi, 0x7f_ffe0_0049);
        assert_eq!(d.kind(), TYPE_IOTLB);
        assert_eq!(d.lo & IOTLB_RESERVED[0], 0);
        assert_eq!(d.hi & IOTLB_RESERVED[1], 0);
    }

    #[test]
    fn pasid_descriptors() {
        /// QEMU's `VTD_INV_DESC_PASIDC_RSVD_VAL0` and `VTD_INV_DESC_PIOTLB_RSVD_VAL0/1`.
        const PASID_RESERVED: [u64; 2] = [0xfff0_0000_0000_f1c0, 0xf80];
        let pc = Descriptor::pasid_cache(PasidCacheScope::Pasid {
            did: 3,
            pasid: 0x12345,
        });
        assert_eq!(pc.lo, 0x0001_2345_0003_0017);
        assert_eq!(pc.kind(), TYPE_PASID_CACHE);
        assert_eq!(Descriptor::pasid_cache(PasidCacheScope::Global).lo, 0x37);
        assert_eq!(
            Descriptor::pasid_cache(PasidCacheScope::Domain(9)).lo,
            0x9_0007
        );
        let pi = Descriptor::pasid_iotlb(PasidIotlbScope::Pages {
            did: 2,
            pasid: 0,
            addr: 0x10_0000,
            mask: 8,
            leaf_only: true,
        });
        assert_eq!((pi.lo, pi.hi), (0x2_0036, 0x10_0048));
        assert_eq!(pi.kind(), TYPE_PASID_IOTLB);
        let pp = Descriptor::pasid_iotlb(PasidIotlbScope::Pasid { did: 2, pasid: 5 });
        assert_eq!(pp.lo, 0x5_0002_0026);
        for d in [pc, pi, pp] {
            assert_eq!(d.lo & PASID_RESERVED[0], 0);
            assert_eq!(d.hi & PASID_RESERVED[1], 0);
        }
    }

    #[test]
    fn iec_descriptors() {
        /// QEMU's `VTD_INV_DESC_IEC_RSVD`.
        const IEC_RESERVED: u64 = 0xffff_0000_07ff_f1e0;
        let g = Descriptor::iec(IecScope::Global);
        assert_eq!((g.lo, g.hi), (0x4, 0));
        let i = Descriptor::iec(IecScope::Index {
            index: 0xfedc,
            mask: 3,
        });
        assert_eq!((i.lo, i.hi), (0xfedc_1800_0014, 0));
        assert_eq!(i.kind(), TYPE_IEC);
        for d in [g, i] {
            assert_eq!(d.lo & IEC_RESERVED, 0);
        }
    }

    #[test]
    fn wait_descriptors_never_ask_for_both_completions() {
        let w = Descriptor::wait_status(0x1234_5678, 0xdead_beef);
        assert_eq!(w.lo, 0xdead_beef_0000_0065);
        assert_eq!(w.hi, 0x1234_5678);
        assert_eq!(w.kind(), TYPE_WAIT);
        let i = Descriptor::wait_interrupt();
        for d in [w, i] {
            assert_ne!(d.lo & (WAIT_SW | WAIT_IF), WAIT_SW | WAIT_IF);
            assert_eq!(d.lo & WAIT_RESERVED[0], 0);
            assert_eq!(d.hi & WAIT_RESERVED[1], 0);
        }
        // An unaligned status address loses its low bits (reserved).
        assert_eq!(Descriptor::wait_status(0x1003, 0).hi, 0x1000);
    }

    fn blocks(start: u64, end: u64, mamv: u32, limit: usize) -> Option<Vec<(u64, u8)>> {
        let mut v = Vec::new();
        page_blocks(start, end, mamv, limit, |a, m| v.push((a, m))).map(|n| {
            assert_eq!(n, v.len());
            v
        })
    }

    #[test]
    fn page_blocks_never_overflow_whatever_mamv_says() {
        // A unit claiming MAMV 63 and a range spanning the whole address
        // space: two blocks of 2^51 pages, no shift overflow.
        assert_eq!(
            blocks(0, u64::MAX, 63, 8),
            Some(std::vec![(0, 51), (1 << 63, 51)])
        );
        assert_eq!(blocks(0x1000, 1 << 63, 63, 8), Some(std::vec![(0, 51)]));
        // Too many blocks for the limit: none emitted.
        assert_eq!(blocks(0, u64::MAX, 40, 8), None);
    }

    #[test]
    fn page_blocks_cover_the_range_with_aligned_blocks() {
        assert_eq!(blocks(0x5000, 0x6000, 18, 8), Some(std::vec![(0x5000, 0)]));
        assert_eq!(blocks(0x5000, 0x7000, 18, 8), Some(std::vec![(0x4000, 2)]));
        assert_eq!(
            blocks(0x20_0000, 0x40_0000, 18, 8),
            Some(std::vec![(0x20_0000, 9)])
        );
        // 64 pages crossing a 2 MiB boundary: one block of 4 MiB.
        assert_eq!(
            blocks(0x1f_f000, 0x23_f000, 18, 8),
            Some(std::vec![(0, 10)])
        );
        assert_eq!(blocks(0x1000, 0x1000, 18, 8), Some(std::vec![]));
        // MAMV 0: one page per block.
        assert_eq!(
            blocks(0x3000, 0x6000, 0, 8),
            Some(std::vec![(0x3000, 0), (0x4000, 0), (0x5000, 0)])
        );
        assert_eq!(blocks(0x3000, 0x6000, 0, 2), None);
        // Every page of the range lies in some block, no block exceeds 2^mamv.
        for (s, e, m) in [
            (0x1234_5000u64, 0x1334_6000u64, 4),
            (0, 1 << 39, 18),
            (0x7000, 0x9000, 1),
        ] {
            let v = blocks(s, e, m, 1 << 20).unwrap();
            for (a, mask) in &v {
                assert!(u32::from(*mask) <= m);
                assert_eq!(a % (0x1000 << mask), 0);
            }
            for page in [s, e - 0x1000, ((s + e) / 2) & !0xfff] {
                assert!(
                    v.iter()
                        .any(|&(a, mask)| a <= page && page < a + (0x1000 << mask)),
                    "{page:#x}"
                );
            }
        }
    }
}

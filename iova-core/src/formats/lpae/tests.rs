//! Both stages at every granule, through the engine: the level split, the
//! descriptor bits, map / unmap round trips with blocks at every level that
//! allows them (checked by a walk written from the architecture's rules, not
//! the format's methods), and the address limits.

use core::sync::atomic::{AtomicUsize, Ordering};
use std::alloc::{Layout, alloc_zeroed, dealloc};

use super::*;
use crate::addr::{Iova, PhysAddr};
use crate::error::Error;
use crate::frame::FrameAllocator;
use crate::gather::IotlbGather;
use crate::prot::Prot;
use crate::pt::{PageTable, PtFormat, Translation};

const GRANULES: [Granule; 3] = [Granule::K4, Granule::K16, Granule::K64];
const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    S1,
    S2,
}

/// A format of either stage, so one test body covers both.
#[derive(Clone, Copy, Debug)]
enum Lpae {
    S1(LpaeS1),
    S2(LpaeS2),
}

impl Lpae {
    fn new(stage: Stage, g: Granule, ia: u32, oa: u32) -> Result<Self, Error> {
        match stage {
            Stage::S1 => LpaeS1::with_granule(g, ia, oa).map(Self::S1),
            Stage::S2 => LpaeS2::with_granule(g, ia, oa).map(Self::S2),
        }
    }
    fn start_level(&self) -> u32 {
        match self {
            Self::S1(f) => f.start_level(),
            Self::S2(f) => f.start_level(),
        }
    }
    fn granule(&self) -> Granule {
        match self {
            Self::S1(f) => f.granule(),
            Self::S2(f) => f.granule(),
        }
    }
    /// The leaf attribute bits of `prot` at this stage.
    fn attrs(&self, prot: Prot) -> u64 {
        match self {
            Self::S1(_) => s1::leaf_attrs(prot),
            Self::S2(_) => s2::leaf_attrs(prot),
        }
    }
}

macro_rules! forward {
    ($($name:ident($($a:ident: $t:ty),*) -> $r:ty;)*) => {
        $(fn $name(&self, $($a: $t),*) -> $r {
            match self {
                Self::S1(f) => f.$name($($a),*),
                Self::S2(f) => f.$name($($a),*),
            }
        })*
    };
}

impl PtFormat for Lpae {
    forward! {
        levels() -> usize;
        granule_shift() -> u32;
        index_bits(d: usize) -> u32;
        block_allowed(d: usize) -> bool;
        oa_bits() -> u32;
        is_present(d: usize, raw: u64) -> bool;
        is_table(d: usize, raw: u64) -> bool;
        table_pa(raw: u64) -> PhysAddr;
        leaf_pa(d: usize, raw: u64) -> PhysAddr;
        leaf_prot(d: usize, raw: u64) -> Prot;
        encode_table(d: usize, pa: PhysAddr) -> u64;
        encode_leaf(d: usize, pa: PhysAddr, prot: Prot) -> u64;
        supports(prot: Prot) -> bool;
    }
}

/// Zeroed host memory posing as physical frames from `pa_base`, handed out
/// by bumping (never reused: a freed frame only counts as returned).
struct Arena {
    host: *mut u8,
    layout: Layout,
    pa_base: u64,
    next: AtomicUsize,
    live: AtomicUsize,
}

// SAFETY: the host pointer is only dereferenced through frames handed out
// once each (the bump counter is atomic).
unsafe impl Sync for Arena {}

impl Arena {
    fn new(pa_base: u64) -> Self {
        let layout = Layout::from_size_align(8 << 20, 64 << 10).unwrap();
        // SAFETY: non-zero size.
        let host = unsafe { alloc_zeroed(layout) };
        assert!(!host.is_null());
        Self {
            host,
            layout,
            pa_base,
            next: AtomicUsize::new(0),
            live: AtomicUsize::new(0),
        }
    }

    fn read(&self, pa: u64) -> u64 {
        let off = usize::try_from(pa - self.pa_base).unwrap();
        assert!(off + 8 <= self.layout.size());
        // SAFETY: in bounds (checked), 8-byte aligned (descriptor addresses).
        unsafe { self.host.add(off).cast::<u64>().read_volatile() }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.host, self.layout) };
    }
}

// SAFETY: each frame is a distinct, size-aligned run of the zeroed
// allocation (bump pointer, never reused), valid while the arena lives.
unsafe impl FrameAllocator for Arena {
    fn alloc_zeroed(&self, size: usize) -> Option<PhysAddr> {
        let mut at = 0;
        self.next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                at = n.next_multiple_of(size);
                (at + size <= self.layout.size()).then_some(at + size)
            })
            .ok()?;
        self.live.fetch_add(1, Ordering::SeqCst);
        Some(PhysAddr(self.pa_base + at as u64))
    }
    unsafe fn free(&self, _: PhysAddr, _: usize) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
    fn phys_to_virt(&self, pa: PhysAddr) -> *mut u8 {
        // SAFETY: callers pass frames of this arena, which lie inside it.
        unsafe { self.host.add((pa.0 - self.pa_base) as usize) }
    }
}

/// Walks `va` as the architecture describes, from the root at `root`: the
/// start level's table is indexed by the input bits above that level's
/// shift (so concatenated roots need nothing special), bits 1:0 tell
/// invalid, block, table and page apart. Returns the leaf's level and
/// descriptor.
fn arm_walk(
    arena: &Arena,
    root: PhysAddr,
    g: Granule,
    start: u32,
    ia: u32,
    va: u64,
) -> Option<(u32, u64)> {
    let gshift = match g {
        Granule::K4 => 12,
        Granule::K16 => 14,
        Granule::K64 => 16,
    };
    let stride = gshift - 3;
    let oa_mask = ((1u64 << 48) - 1) & !((1u64 << gshift) - 1);
    let mut table = root.0;
    for level in start..4 {
        let shift = gshift + stride * (3 - level);
        let top = if level == start { ia } else { shift + stride };
        let idx = (va >> shift) & ((1 << (top - shift)) - 1);
        let d = arena.read(table + idx * 8);
        match (d & 3, level) {
            (0 | 2, _) | (1, 3) => return None,
            (1, _) | (3, 3) => return Some((level, d)),
            _ => table = d & oa_mask,
        }
    }
    None
}

/// The page and block sizes of each granule with 48-bit addresses, largest
/// first, from the architecture's tables.
fn leaf_sizes(g: Granule) -> &'static [u64] {
    match g {
        Granule::K4 => &[GIB, 2 * MIB, 4 * KIB],
        Granule::K16 => &[32 * MIB, 16 * KIB],
        Granule::K64 => &[512 * MIB, 64 * KIB],
    }
}

#[test]
fn granule_codes() {
    assert_eq!(
        GRANULES.map(|g| (g.shift(), g.tg0(), g.tlbi_tg())),
        [(12, 0, 1), (14, 2, 2), (16, 1, 3)]
    );
    assert_eq!(Granule::from_shift(14), Some(Granule::K16));
    assert_eq!(Granule::from_shift(13), None);
    assert_eq!(GRANULES.map(Granule::size), [0x1000, 0x4000, 0x1_0000]);
    assert_eq!(GRANULES.map(Granule::bits_per_level), [9, 11, 13]);
    assert_eq!(
        GRANULES.map(Granule::addr_mask),
        [
            0x0000_ffff_ffff_f000,
            0x0000_ffff_ffff_c000,
            0x0000_ffff_ffff_0000
        ]
    );
    assert_eq!(
        GRANULES.map(|g| [0, 1, 2, 3].map(|l| g.level_shift(l))),
        [[39, 30, 21, 12], [47, 36, 25, 14], [55, 42, 29, 16]]
    );
}

#[test]
fn level_split_of_each_stage_and_granule() {
    // (stage, granule, ia, levels, root bits, start level, page sizes)
    let s4 = 1 << 12 | 1 << 21 | 1 << 30;
    let s16 = 1 << 14 | 1 << 25;
    let s64 = 1 << 16 | 1 << 29;
    for (stage, g, ia, levels, root, start, sizes) in [
        (Stage::S1, Granule::K4, 48, 4, 9, 0, s4),
        (Stage::S1, Granule::K4, 39, 3, 9, 1, s4),
        (Stage::S1, Granule::K4, 32, 3, 2, 1, s4),
        (Stage::S1, Granule::K4, 30, 2, 9, 2, 1 << 12 | 1 << 21),
        (Stage::S1, Granule::K16, 48, 4, 1, 0, s16),
        (Stage::S1, Granule::K16, 47, 3, 11, 1, s16),
        (Stage::S1, Granule::K16, 36, 2, 11, 2, s16),
        (Stage::S1, Granule::K16, 25, 1, 11, 3, 1 << 14),
        (Stage::S1, Granule::K64, 48, 3, 6, 1, s64),
        (Stage::S1, Granule::K64, 42, 2, 13, 2, s64),
        (Stage::S1, Granule::K64, 29, 1, 13, 3, 1 << 16),
        (Stage::S2, Granule::K4, 48, 4, 9, 0, s4),
        // Two concatenated tables at level 1.
        (Stage::S2, Granule::K4, 40, 3, 10, 1, s4),
        (Stage::S2, Granule::K16, 48, 3, 12, 1, s16),
        (Stage::S2, Granule::K16, 40, 3, 4, 1, s16),
        (Stage::S2, Granule::K64, 48, 3, 6, 1, s64),
        (Stage::S2, Granule::K64, 29, 1, 13, 3, 1 << 16),
    ] {
        let what = format!("{stage:?} {g:?} ia {ia}");
        let f = Lpae::new(stage, g, ia, 48).unwrap();
        assert_eq!(
            (f.levels(), f.index_bits(0), f.start_level(), f.granule()),
            (levels, root, start, g),
            "{what}"
        );
        assert!(
            (1..levels).all(|d| f.index_bits(d) == g.shift() - 3),
            "{what}"
        );
        let arena = Arena::new(0x8000_0000);
        let pt = PageTable::new(f, &arena).unwrap();
        assert_eq!(pt.page_sizes(), sizes, "{what}");
        assert_eq!(pt.granule(), g.size(), "{what}");
        assert_eq!(pt.ia_bits(), ia, "{what}");
    }
}

#[test]
fn descriptor_bits_of_each_stage_and_granule() {
    // The attribute bits each stage writes for a prot, spelled out:
    // S1: AP[2:1] (bits 7:6), UXN|PXN (54:53), AttrIndx (4:2), SH (9:8), AF (10), nG (11).
    // S2: S2AP (7:6), XN (54), MemAttr (5:2), SH (9:8), AF (10), no nG.
    let s1 = [
        (Prot::RW, 0x1 | 0x40 | 0x200 | 0x400 | 0x800),
        (Prot::RW | Prot::PRIV, 0x1 | 0x200 | 0x400 | 0x800),
        (
            Prot::READ | Prot::PRIV | Prot::CACHE | Prot::NOEXEC,
            0x1 | 0x80 | 0x4 | 0x300 | 0x400 | 0x800 | 3 << 53,
        ),
        (
            Prot::RW | Prot::MMIO,
            0x1 | 0x40 | 0x8 | 0x200 | 0x400 | 0x800,
        ),
    ];
    let s2 = [
        (Prot::RW, 0x1 | 0xc0 | 0x14 | 0x200 | 0x400),
        (Prot::RW | Prot::PRIV, 0x1 | 0xc0 | 0x14 | 0x200 | 0x400),
        (
            Prot::WRITE | Prot::CACHE | Prot::NOEXEC,
            0x1 | 0x80 | 0x3c | 0x300 | 0x400 | 1 << 54,
        ),
        (Prot::READ | Prot::MMIO, 0x1 | 0x40 | 0x4 | 0x200 | 0x400),
    ];
    for g in GRANULES {
        for (stage, table) in [(Stage::S1, &s1), (Stage::S2, &s2)] {
            let f = Lpae::new(stage, g, 48, 48).unwrap();
            let last = f.levels() - 1;
            for depth in 0..f.levels() {
                if depth != last && !f.block_allowed(depth) {
                    continue;
                }
                let page = if depth == last { 0x2 } else { 0 };
                let size = 1u64 << g.level_shift(f.start_level() + depth as u32);
                let pa = 0x0000_8000_0000_0000 | (5 * size);
                for &(prot, bits) in table {
                    let raw = f.encode_leaf(depth, PhysAddr(pa), prot);
                    assert_eq!(
                        raw,
                        pa | page | bits,
                        "{stage:?} {g:?} depth {depth} {prot:?}"
                    );
                    assert_eq!(f.leaf_pa(depth, raw), PhysAddr(pa));
                    // Stage 2 has no privilege bit.
                    let back = match stage {
                        Stage::S1 => prot,
                        Stage::S2 => prot.difference(Prot::PRIV),
                    };
                    assert_eq!(f.leaf_prot(depth, raw), back);
                }
            }
            // Tables: bits 1:0 = 0b11 and the address, nothing else.
            let t = 0x0000_4321_0000_0000 | g.size();
            assert_eq!(f.encode_table(0, PhysAddr(t)), t | 3);
            assert_eq!(f.table_pa(f.encode_table(0, PhysAddr(t))), PhysAddr(t));
            // Bits 63:48 and 11:2 are not address bits.
            assert_eq!(f.table_pa(0xffff_0000_0000_0ffc | t | 3), PhysAddr(t));
            // Nor, in a leaf, the bits below the granule (at 64 KiB, bits
            // 15:12 hold OA[51:48] under FEAT_LPA, which is not used).
            let last = f.levels() - 1;
            let raw = f.encode_leaf(last, PhysAddr(t), Prot::RW);
            let below = (g.size() - 1) & !0xfff;
            assert_eq!(f.leaf_pa(last, raw | below), PhysAddr(t), "{g:?}");
            assert_eq!(f.leaf_pa(last, raw | 0xffff << 48), PhysAddr(t));
        }
    }
}

#[test]
fn map_unmap_round_trip_with_blocks_at_each_level() {
    for stage in [Stage::S1, Stage::S2] {
        for g in GRANULES {
            // 48 bits, and a smaller input (concatenated roots at stage 2).
            for ia in [48, 40] {
                let f = Lpae::new(stage, g, ia, 48).unwrap();
                let arena = Arena::new(0x8000_0000);
                let pt = PageTable::new(f, &arena).unwrap();
                let mut gather = IotlbGather::new();
                let start = f.start_level();
                let levels: Vec<u32> = (start..4)
                    .filter(|&l| l == 3 || g.has_blocks_at(l))
                    .collect();
                let sizes: Vec<u64> = levels.iter().map(|&l| 1 << g.level_shift(l)).collect();
                let expected: Vec<u64> = leaf_sizes(g)
                    .iter()
                    .copied()
                    .filter(|&s| s < 1 << ia)
                    .collect();
                assert_eq!(sizes, expected, "{stage:?} {g:?} ia {ia}");
                for (prot, (&level, &size)) in [Prot::RW, Prot::READ | Prot::CACHE, Prot::RW]
                    .into_iter()
                    .zip(levels.iter().zip(&sizes))
                {
                    let what = format!("{stage:?} {g:?} ia {ia} level {level}");
                    let iova = 3 * size;
                    let pa = 0x0000_0100_0000_0000 + 5 * size;
                    pt.map(Iova(iova), PhysAddr(pa), size, prot, &mut gather)
                        .unwrap();
                    let off = size / 2 + 8;
                    assert_eq!(
                        pt.translate(Iova(iova + off)),
                        Some(Translation {
                            pa: PhysAddr(pa + off),
                            prot,
                            page_size: size
                        }),
                        "{what}"
                    );
                    let (at, d) = arm_walk(&arena, pt.root(), g, start, ia, iova + size - 8)
                        .unwrap_or_else(|| panic!("{what}: not mapped"));
                    let page = if level == 3 { TABLE_OR_PAGE } else { 0 };
                    assert_eq!((at, d), (level, pa | page | f.attrs(prot)), "{what}");
                    // Nothing else is mapped.
                    assert_eq!(arm_walk(&arena, pt.root(), g, start, ia, iova + size), None);
                    assert_eq!(
                        arm_walk(&arena, pt.root(), g, start, ia, iova - g.size()),
                        None
                    );
                    if size > g.size() {
                        assert_eq!(
                            pt.unmap(Iova(iova), g.size(), &mut gather),
                            Err(Error::PartialUnmap),
                            "{what}"
                        );
                    }
                    let mut gather = IotlbGather::new();
                    assert_eq!(pt.unmap(Iova(iova), size, &mut gather), Ok(size), "{what}");
                    assert_eq!(gather.page_sizes(), size, "{what}");
                    assert_eq!(pt.translate(Iova(iova + off)), None, "{what}");
                    assert_eq!(
                        arm_walk(&arena, pt.root(), g, start, ia, iova + off),
                        None,
                        "{what}"
                    );
                    // SAFETY: no hardware walks this table.
                    unsafe { pt.release_tables(&mut gather) };
                }
                // SAFETY: as above.
                unsafe { pt.release_tables(&mut gather) };
                drop(pt);
                assert_eq!(arena.live.load(Ordering::SeqCst), 0);
            }
        }
    }
}

#[test]
fn output_address_limits() {
    for stage in [Stage::S1, Stage::S2] {
        for g in GRANULES {
            let what = format!("{stage:?} {g:?}");
            let gran = g.size();
            let f = Lpae::new(stage, g, 40, 40).unwrap();
            let arena = Arena::new(0x8000_0000);
            let pt = PageTable::new(f, &arena).unwrap();
            let mut gather = IotlbGather::new();
            let top = 1u64 << 40;
            for (pa, len) in [(top, gran), (top - gran, 2 * gran), (1 << 48, gran)] {
                assert_eq!(
                    pt.map(Iova(0), PhysAddr(pa), len, Prot::RW, &mut gather),
                    Err(Error::OutOfRange),
                    "{what} pa {pa:#x}"
                );
                assert_eq!(pt.translate(Iova(0)), None, "{what}");
            }
            // The input side too.
            assert_eq!(
                pt.map(Iova(top), PhysAddr(0), gran, Prot::RW, &mut gather),
                Err(Error::OutOfRange)
            );
            pt.map(Iova(0), PhysAddr(top - gran), gran, Prot::RW, &mut gather)
                .unwrap();
            assert_eq!(pt.translate(Iova(8)).unwrap().pa, PhysAddr(top - gran + 8));

            // Tables in frames above the output size cannot be pointed to.
            let high = Arena::new(1 << 40);
            let f = Lpae::new(stage, g, 36, 36).unwrap();
            assert!(
                matches!(PageTable::new(f, &high), Err(Error::TableUnreachable)),
                "{what}"
            );
            assert_eq!(high.live.load(Ordering::SeqCst), 0);

            // 52-bit addresses (FEAT_LPA / LPA2) are refused.
            for (ia, oa) in [(48, 52), (52, 52), (52, 48), (49, 48), (48, 49), (24, 48)] {
                assert_eq!(
                    Lpae::new(stage, g, ia, oa).map(|_| ()),
                    Err(Error::OutOfRange),
                    "{what} ia {ia} oa {oa}"
                );
            }
            assert_eq!(
                Lpae::new(stage, g, 48, 31).map(|_| ()),
                Err(Error::OutOfRange)
            );
        }
    }
}

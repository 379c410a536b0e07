//! The generic page-table engine against the fake IOMMU.
#![cfg(feature = "fakes")]

use std::sync::Mutex;

use iova_core::fakes::{Access, FakeFrames, Fault, Leaf, fake_domain};
use iova_core::formats::lpae::LpaeS1;
use iova_core::formats::x86_64::X86_64;
use iova_core::{
    CacheMaintenance, Error, IommuDomain, IotlbGather, Iova, PageTable, PhysAddr, Prot, PtFormat,
};

const K4: u64 = 0x1000;
const M2: u64 = 0x20_0000;
const G1: u64 = 0x4000_0000;

fn map_flush<D: IommuDomain>(d: &D, iova: u64, pa: u64, len: u64, prot: Prot) -> Result<(), Error> {
    let mut g = IotlbGather::new();
    let r = d.map(Iova(iova), PhysAddr(pa), len, prot, &mut g);
    d.flush(&mut g).unwrap();
    r
}

fn unmap_flush<D: IommuDomain>(d: &D, iova: u64, len: u64) -> Result<u64, Error> {
    let mut g = IotlbGather::new();
    let r = d.unmap(Iova(iova), len, &mut g);
    d.flush(&mut g).unwrap();
    r
}

fn sizes(leaves: &[Leaf]) -> Vec<u64> {
    leaves.iter().map(|l| l.size).collect()
}

#[test]
fn uses_the_largest_page_that_fits() {
    fn leaf_sizes<F: PtFormat>(fmt: F) -> Vec<u64> {
        let (d, _) = fake_domain(fmt);
        // 4 KiB up to the 2 MiB boundary, then blocks, then a 1 GiB block, then pages.
        let (iova, pa) = (G1 - M2 - K4, 0x1_0000_0000 - M2 - K4);
        map_flush(&d, iova, pa, K4 + M2 + G1 + K4, Prot::RW).unwrap();
        sizes(&d.leaves())
    }
    assert_eq!(leaf_sizes(LpaeS1::va48()), vec![K4, M2, G1, K4]);
    assert_eq!(leaf_sizes(X86_64::four_level()), vec![K4, M2, G1, K4]);
}

#[test]
fn a_gigabyte_of_2m_aligned_memory_is_512_blocks() {
    let (d, _) = fake_domain(LpaeS1::va48());
    map_flush(&d, 0x40_0000_0000 + M2, 0x8000_0000 + M2, G1, Prot::RW).unwrap();
    let leaves = d.leaves();
    assert_eq!(leaves.len(), 512);
    assert!(leaves.iter().all(|l| l.size == M2));
}

#[test]
fn no_1g_blocks_where_the_format_forbids_them() {
    let (d, _) = fake_domain(X86_64::new(4, false, 46).unwrap());
    map_flush(&d, G1, G1, G1, Prot::RW).unwrap();
    assert_eq!(d.leaves().len(), 512);
}

#[test]
fn translations_and_permissions() {
    let (d, _) = fake_domain(LpaeS1::va48());
    map_flush(&d, 0x10_0000, 0x8765_4000, 2 * K4, Prot::READ).unwrap();
    assert_eq!(
        d.device_access(Iova(0x10_1abc), Access::Read),
        Ok(PhysAddr(0x8765_5abc))
    );
    assert_eq!(
        d.device_access(Iova(0x10_1abc), Access::Write),
        Err(Fault::Permission(Iova(0x10_1abc), Access::Write))
    );
    assert_eq!(
        d.device_access(Iova(0x10_2000), Access::Read),
        Err(Fault::Translation(Iova(0x10_2000)))
    );
    let t = d.table().translate(Iova(0x10_0008)).unwrap();
    assert_eq!((t.pa, t.page_size), (PhysAddr(0x8765_4008), K4));
}

#[test]
fn bad_arguments_change_nothing() {
    let (d, frames) = fake_domain(LpaeS1::va48());
    let mut g = IotlbGather::new();
    let live = frames.live();
    let cases: [(u64, u64, u64, Prot, Error); 8] = [
        (0, 0, 0, Prot::RW, Error::ZeroLength),
        (0x800, 0, K4, Prot::RW, Error::Misaligned),
        (0, 0x800, K4, Prot::RW, Error::Misaligned),
        (0, 0, 0x800, Prot::RW, Error::Misaligned),
        (1 << 48, 0, K4, Prot::RW, Error::OutOfRange),
        ((1 << 48) - K4, 0, 2 * K4, Prot::RW, Error::OutOfRange),
        (0, 1 << 48, K4, Prot::RW, Error::OutOfRange),
        (0, 0, K4, Prot::empty(), Error::InvalidProt),
    ];
    for (iova, pa, len, prot, err) in cases {
        assert_eq!(
            d.map(Iova(iova), PhysAddr(pa), len, prot, &mut g),
            Err(err),
            "{iova:#x} {pa:#x} {len:#x}"
        );
    }
    assert_eq!(
        d.map(Iova(!0xfffu64), PhysAddr(0), 2 * K4, Prot::RW, &mut g),
        Err(Error::Overflow)
    );
    assert_eq!(
        d.map(Iova(0), PhysAddr(!0xfffu64), 2 * K4, Prot::RW, &mut g),
        Err(Error::Overflow)
    );
    assert_eq!(d.unmap(Iova(0x10), K4, &mut g), Err(Error::Misaligned));
    assert_eq!(d.unmap(Iova(0), 0, &mut g), Err(Error::ZeroLength));
    assert!(g.is_empty());
    assert_eq!(frames.live(), live);
    assert!(d.leaves().is_empty());
}

/// The single-granule fast path and the general path agree at the edges of
/// the input and output ranges.
#[test]
fn the_last_granule_of_both_ranges_maps_and_the_next_does_not() {
    fn check<F: PtFormat>(fmt: F) {
        let oa = 1u64 << fmt.oa_bits();
        let (d, _frames) = fake_domain(fmt);
        let ia = 1u64 << d.table().ia_bits();
        assert_eq!(map_flush(&d, ia - K4, oa - K4, K4, Prot::RW), Ok(()));
        assert_eq!(
            d.device_access(Iova(ia - 8), Access::Write),
            Ok(PhysAddr(oa - 8))
        );
        for (iova, pa) in [(ia, 0), (0, oa), (ia - K4, oa), (ia, oa - K4)] {
            assert_eq!(
                map_flush(&d, iova, pa, K4, Prot::RW),
                Err(Error::OutOfRange),
                "{iova:#x} -> {pa:#x}"
            );
        }
        assert_eq!(map_flush(&d, 0, !0xfff, K4, Prot::RW), Err(Error::Overflow));
        assert_eq!(d.leaves().len(), 1);
    }
    check(LpaeS1::va48());
    check(X86_64::four_level());
}

/// x86-64 walkers translate canonical addresses only (bits 63 down to the
/// top translated bit all equal), so the tables map the lower half: below bit
/// 47 with 4 levels, 56 with 5. Addresses the levels reach above that are
/// refused on every path (single granule, runs, unmap, translate).
#[test]
fn x86_64_tables_map_only_the_lower_canonical_half() {
    for (fmt, bits) in [
        (X86_64::four_level(), 47),
        (X86_64::new(5, true, 52).unwrap(), 56),
    ] {
        let top = 1u64 << bits;
        let (d, frames) = fake_domain(fmt);
        assert_eq!(d.table().ia_bits(), bits);
        let live = frames.live();
        let mut g = IotlbGather::new();
        for (iova, len) in [
            (top, K4),
            (2 * top - K4, K4),
            (top - K4, 2 * K4),
            (top - G1, 2 * G1),
            (top, M2),
            (!(top - 1), K4),
        ] {
            assert_eq!(
                d.map(Iova(iova), PhysAddr(G1), len, Prot::RW, &mut g),
                Err(Error::OutOfRange),
                "map {iova:#x} + {len:#x}"
            );
            assert_eq!(
                d.unmap(Iova(iova), len, &mut g),
                Err(Error::OutOfRange),
                "unmap {iova:#x} + {len:#x}"
            );
            assert_eq!(d.table().translate(Iova(iova)), None);
        }
        assert!(g.is_empty());
        assert_eq!(frames.live(), live);
        assert!(d.leaves().is_empty());
        // The last page and the last 2 MiB block below the limit map.
        map_flush(&d, top - K4, 0x5000, K4, Prot::RW).unwrap();
        map_flush(&d, top - 2 * M2, 0x4000_0000, M2, Prot::RW).unwrap();
        assert_eq!(
            d.device_access(Iova(top - 8), Access::Write),
            Ok(PhysAddr(0x5ff8))
        );
        let t = d.table().translate(Iova(top - 2 * M2 + 0x10)).unwrap();
        assert_eq!((t.pa, t.page_size), (PhysAddr(0x4000_0010), M2));
        assert_eq!(unmap_flush(&d, top - 2 * M2, 2 * M2), Ok(M2 + K4));
    }
}

/// Single pages take a walk compiled for the tree's shape; every shape (2 to
/// 5 levels, narrow roots) puts them where the fake's own walker finds them.
#[test]
fn single_pages_land_right_in_every_geometry() {
    fn check<F: PtFormat>(fmt: F) {
        let (d, _frames) = fake_domain(fmt);
        let ia = 1u64 << d.table().ia_bits();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut pages: Vec<u64> = (0..40)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % ia) & !(K4 - 1)
            })
            .chain([0, K4, ia - K4])
            .collect();
        pages.sort_unstable();
        pages.dedup();
        let pa_of = |iova: u64| (iova ^ 0x5555_5000) & ((1 << 40) - 1);
        for &iova in &pages {
            map_flush(&d, iova, pa_of(iova), K4, Prot::RW).unwrap();
        }
        let leaves = d.leaves();
        let found: Vec<(u64, u64, u64)> =
            leaves.iter().map(|l| (l.iova.0, l.pa.0, l.size)).collect();
        let expected: Vec<(u64, u64, u64)> = pages.iter().map(|&i| (i, pa_of(i), K4)).collect();
        assert_eq!(found, expected, "ia {ia:#x}");
        for &iova in &pages {
            assert_eq!(
                d.device_access(Iova(iova + 0x123), Access::Read),
                Ok(PhysAddr(pa_of(iova) + 0x123))
            );
            assert_eq!(
                map_flush(&d, iova, 0, K4, Prot::RW),
                Err(Error::AlreadyMapped)
            );
        }
        for &iova in &pages {
            assert_eq!(unmap_flush(&d, iova, K4), Ok(K4));
        }
        assert!(d.leaves().is_empty());
    }
    for ia_bits in [25, 30, 36, 39, 40, 47, 48] {
        check(LpaeS1::new(ia_bits, 48).unwrap());
    }
    check(X86_64::four_level());
    check(X86_64::new(5, true, 52).unwrap());
}

#[test]
fn overlapping_map_is_refused_and_unwound() {
    let (d, _) = fake_domain(LpaeS1::va48());
    map_flush(&d, 0x20_5000, 0x9000_0000, K4, Prot::RW).unwrap();
    // A 16 KiB map whose third page collides: the first two must be unwound.
    assert_eq!(
        map_flush(&d, 0x20_3000, 0xa000_0000, 4 * K4, Prot::RW),
        Err(Error::AlreadyMapped)
    );
    assert_eq!(d.leaves().len(), 1);
    assert_eq!(d.leaves()[0].iova, Iova(0x20_5000));
    // A block over an existing page, and a page under an existing block.
    assert_eq!(
        map_flush(&d, 0, 0, M2 * 2, Prot::RW),
        Err(Error::AlreadyMapped)
    );
    map_flush(&d, 0x40_0000, 0x40_0000, M2, Prot::RW).unwrap();
    assert_eq!(
        map_flush(&d, 0x40_1000, 0, K4, Prot::RW),
        Err(Error::AlreadyMapped)
    );
    assert_eq!(d.leaves().len(), 2);
}

#[test]
fn unmap_refuses_to_split_a_block() {
    let (d, _) = fake_domain(LpaeS1::va48());
    map_flush(&d, M2, M2, M2, Prot::RW).unwrap();
    assert_eq!(unmap_flush(&d, M2, K4), Err(Error::PartialUnmap));
    assert_eq!(unmap_flush(&d, M2 + K4, M2), Err(Error::PartialUnmap));
    assert_eq!(d.leaves().len(), 1);
    assert_eq!(unmap_flush(&d, 0, 3 * M2), Ok(M2));
    assert!(d.leaves().is_empty());
}

#[test]
fn out_of_memory_mid_map_leaves_nothing_mapped() {
    let (d, frames) = fake_domain(LpaeS1::va48());
    // The range spans two level-3 tables; allow the tables of the first only.
    frames.fail_after(3);
    let mut g = IotlbGather::new();
    assert_eq!(
        d.map(
            Iova(M2 - K4),
            PhysAddr(0x4000_0000 - K4),
            2 * K4,
            Prot::RW,
            &mut g
        ),
        Err(Error::NoMemory)
    );
    assert!(d.leaves().is_empty());
    // The unwound page is in the gather (it was briefly visible).
    assert!(g.has_unmapped());
    d.flush(&mut g).unwrap();
    frames.unlimited();
    map_flush(&d, M2 - K4, 0x4000_0000 - K4, 2 * K4, Prot::RW).unwrap();
    assert_eq!(d.leaves().len(), 2);
}

/// A fresh walk builds its missing tables unseen and publishes them at once:
/// running out of memory part-way publishes none and keeps none.
#[test]
fn out_of_memory_while_building_new_tables_publishes_nothing() {
    for tables_left in 0..3 {
        let (d, frames) = fake_domain(LpaeS1::va48());
        let live = frames.live();
        frames.fail_after(tables_left);
        let mut g = IotlbGather::new();
        assert_eq!(
            d.map(Iova(G1), PhysAddr(G1), K4, Prot::RW, &mut g),
            Err(Error::NoMemory)
        );
        assert!(g.is_empty(), "nothing was published, nothing to flush");
        assert_eq!(frames.live(), live, "{tables_left} tables allocated");
        assert_eq!(d.tables(), 1, "only the root");
        frames.unlimited();
        map_flush(&d, G1, G1, K4, Prot::RW).unwrap();
        assert_eq!(d.tables(), 4);
    }
}

#[test]
fn missing_flush_leaves_a_stale_translation() {
    let (d, _) = fake_domain(LpaeS1::va48());
    map_flush(&d, 0x7000, 0x8000_7000, K4, Prot::RW).unwrap();
    assert_eq!(
        d.device_access(Iova(0x7000), Access::Read),
        Ok(PhysAddr(0x8000_7000))
    );
    let mut g = IotlbGather::new();
    assert_eq!(d.unmap(Iova(0x7000), K4, &mut g), Ok(K4));
    // Not flushed yet: the IOTLB still answers.
    assert_eq!(
        d.device_access(Iova(0x7000), Access::Read),
        Ok(PhysAddr(0x8000_7000))
    );
    assert_eq!(g.min_page_size(), Some(K4));
    assert!(!g.tables_changed());
    d.flush(&mut g).unwrap();
    assert!(d.device_access(Iova(0x7000), Access::Read).is_err());
}

#[test]
fn tables_emptied_by_a_covering_unmap_are_freed_only_after_the_flush() {
    let (d, frames) = fake_domain(LpaeS1::va48());
    let base = frames.live();
    map_flush(&d, 0x40_0000_0000, 0x1000_0000, 4 * K4, Prot::RW).unwrap();
    assert_eq!(frames.live(), base + 3, "L1, L2 and L3 tables");
    let mut g = IotlbGather::new();
    // The unmap covers the whole 1 GiB span of the level-1 entry.
    assert_eq!(d.unmap(Iova(0x40_0000_0000), G1, &mut g), Ok(4 * K4));
    assert_eq!(g.freed_tables(), 2);
    assert!(g.tables_changed());
    assert_eq!(frames.live(), base + 3, "not freed before the flush");
    d.invalidator().fail_next_flushes(1);
    assert_eq!(d.flush(&mut g), Err(Error::Timeout));
    assert_eq!(frames.live(), base + 3, "not freed after a failed flush");
    d.flush(&mut g).unwrap();
    assert_eq!(frames.live(), base + 1);
    assert_eq!(frames.bad_frees(), 0);
    assert!(g.is_empty());
}

#[test]
fn a_block_replaces_an_empty_table() {
    let (d, frames) = fake_domain(LpaeS1::va48());
    map_flush(&d, M2, M2, K4, Prot::RW).unwrap();
    unmap_flush(&d, M2, K4).unwrap();
    let live = frames.live();
    let mut g = IotlbGather::new();
    d.map(Iova(M2), PhysAddr(0x8000_0000), M2, Prot::RW, &mut g)
        .unwrap();
    assert_eq!(g.freed_tables(), 1);
    d.flush(&mut g).unwrap();
    assert_eq!(frames.live(), live - 1);
    assert_eq!(sizes(&d.leaves()), vec![M2]);
}

#[test]
fn reclaim_frees_tables_emptied_piecemeal() {
    let (d, frames) = fake_domain(LpaeS1::va48());
    let base = frames.live();
    map_flush(&d, 0x1000, 0x1000, K4, Prot::RW).unwrap();
    unmap_flush(&d, 0x1000, K4).unwrap();
    assert_eq!(frames.live(), base + 3);
    let mut table = PageTable::new(LpaeS1::va48(), FakeFrames::new()).unwrap();
    let mut g = IotlbGather::new();
    table
        .map(Iova(0x5000), PhysAddr(0x5000), K4, Prot::RW, &mut g)
        .unwrap();
    table.unmap(Iova(0x5000), K4, &mut g).unwrap();
    assert_eq!(table.frames().live(), 4);
    assert_eq!(table.reclaim_empty(&mut g), Ok(3));
    // SAFETY: nothing walks this table but the test.
    unsafe { table.release_tables(&mut g) };
    g.clear_ranges();
    assert_eq!(table.frames().live(), 1);
}

#[test]
fn a_gather_holding_another_tables_frees_is_refused() {
    let (a, _) = fake_domain(LpaeS1::va48());
    let (b, _) = fake_domain(LpaeS1::va48());
    map_flush(&a, 0, 0, K4, Prot::RW).unwrap();
    let mut g = IotlbGather::new();
    a.unmap(Iova(0), G1, &mut g).unwrap();
    assert!(g.freed_tables() > 0);
    assert_eq!(
        b.map(Iova(0), PhysAddr(0), K4, Prot::RW, &mut g),
        Err(Error::ForeignGather)
    );
    // Flushing it through the wrong domain frees nothing of `a`'s.
    b.flush(&mut g).unwrap();
    assert_eq!(a.table().frames().bad_frees(), 0);
}

#[test]
fn dropping_a_table_frees_every_frame() {
    let frames = FakeFrames::new();
    {
        let table = PageTable::new(X86_64::four_level(), &frames).unwrap();
        let mut g = IotlbGather::new();
        for i in 0..64 {
            table
                .map(
                    Iova(i * G1 + i * K4),
                    PhysAddr(i * K4),
                    K4,
                    Prot::RW,
                    &mut g,
                )
                .unwrap();
        }
        assert!(frames.live() > 64);
    }
    assert_eq!(frames.live(), 0);
    assert_eq!(frames.bad_frees(), 0);
}

#[derive(Default)]
struct CountingCache {
    cleans: Mutex<Vec<(u64, u64)>>,
    completes: Mutex<usize>,
}

impl CacheMaintenance for CountingCache {
    fn is_coherent(&self) -> bool {
        false
    }
    fn clean(&self, pa: PhysAddr, len: u64) {
        self.cleans.lock().unwrap().push((pa.0, len));
    }
    fn invalidate(&self, _: PhysAddr, _: u64) {}
    fn complete(&self) {
        *self.completes.lock().unwrap() += 1;
    }
}

#[test]
fn non_coherent_walkers_get_every_written_entry_cleaned() {
    let frames = FakeFrames::new();
    let table = PageTable::with_cache(LpaeS1::va48(), &frames, CountingCache::default()).unwrap();
    let mut g = IotlbGather::new();
    table
        .map(
            Iova(0x10_0000),
            PhysAddr(0x10_0000),
            16 * K4,
            Prot::RW,
            &mut g,
        )
        .unwrap();
    let cleans = table_cache(&table).cleans.lock().unwrap().clone();
    // Root (whole table); three new tables, each cleaned whole once linked to
    // the next; the one root entry that publishes them; one run of 16 leaves.
    let leaf_run = cleans.iter().filter(|&&(_, len)| len == 16 * 8).count();
    assert_eq!(leaf_run, 1, "{cleans:x?}");
    assert_eq!(cleans.iter().filter(|&&(_, len)| len == 4096).count(), 4);
    assert_eq!(cleans.iter().filter(|&&(_, len)| len == 8).count(), 1);
    assert_eq!(cleans.len(), 6);
    let completes = *table_cache(&table).completes.lock().unwrap();
    table.unmap(Iova(0x10_0000), 16 * K4, &mut g).unwrap();
    assert_eq!(
        table_cache(&table).cleans.lock().unwrap().len(),
        cleans.len() + 1
    );
    assert!(*table_cache(&table).completes.lock().unwrap() > completes);
}

fn table_cache<F: PtFormat, A: iova_core::FrameAllocator>(
    t: &PageTable<F, A, CountingCache>,
) -> &CountingCache {
    t.cache()
}

#[test]
fn tables_out_of_the_formats_reach_are_refused() {
    // Fake frames live at 256 GiB; a 32-bit output size cannot point there.
    let frames = FakeFrames::new();
    let r = PageTable::new(X86_64::new(4, true, 32).unwrap(), &frames);
    assert!(matches!(r, Err(Error::TableUnreachable)));
    assert_eq!(frames.live(), 0);
}

/// Unmaps `[iova, iova + len)` and checks the result against the leaves that
/// were there: the bytes they held, what the gather records (one range, the
/// sizes removed, `freed` tables), and that every other leaf is left alone.
fn unmap_and_check<F: PtFormat>(
    d: &iova_core::fakes::FakeDomain<F>,
    iova: u64,
    len: u64,
    freed: usize,
) -> IotlbGather {
    let before = d.leaves();
    let inside = |l: &Leaf| iova <= l.iova.0 && l.iova.0 + l.size <= iova + len;
    let bytes: u64 = before.iter().filter(|l| inside(l)).map(|l| l.size).sum();
    let page_sizes = before
        .iter()
        .filter(|l| inside(l))
        .fold(0, |acc, l| acc | l.size);
    let mut g = IotlbGather::new();
    assert_eq!(
        d.unmap(Iova(iova), len, &mut g),
        Ok(bytes),
        "{iova:#x}+{len:#x}"
    );
    let kept: Vec<Leaf> = before.into_iter().filter(|l| !inside(l)).collect();
    assert_eq!(d.leaves(), kept, "{iova:#x}+{len:#x}");
    assert_eq!(g.page_sizes(), page_sizes);
    assert_eq!(g.has_unmapped(), bytes > 0);
    assert_eq!(g.freed_tables(), freed);
    assert_eq!(g.tables_changed(), freed > 0);
    if bytes > 0 || freed > 0 {
        let range = iova_core::IovaRange::new(Iova(iova), len).unwrap();
        assert_eq!(g.ranges(), &[range]);
    } else {
        assert!(g.is_empty());
    }
    g
}

#[test]
fn unmap_runs_cross_leaf_tables_skip_holes_and_keep_their_neighbours() {
    fn check<F: PtFormat>(fmt: F) {
        let (d, frames) = fake_domain(fmt);
        // Pages M2 - 9 .. M2 + 8, two leaf tables; holes at M2 - 5 and M2 + 3.
        for i in (0..17).filter(|&i| i != 4 && i != 12) {
            let iova = M2 - 9 * K4 + i * K4;
            map_flush(&d, iova, 0x1000_0000 + iova, K4, Prot::RW).unwrap();
        }
        let tables = frames.live();
        // All but the first page (a neighbour kept below the range).
        let mut g = unmap_and_check(&d, M2 - 8 * K4, 16 * K4, 0);
        assert_eq!(d.leaves().len(), 1);
        d.flush(&mut g).unwrap();
        assert_eq!(frames.live(), tables, "a partly covered table stays");
        // Nothing left there: nothing to record.
        let mut g = unmap_and_check(&d, M2 - 8 * K4, 16 * K4, 0);
        d.flush(&mut g).unwrap();
    }
    check(LpaeS1::va48());
    check(X86_64::four_level());
}

#[test]
fn a_run_ending_at_a_leaf_tables_end_stops_there() {
    let (d, _) = fake_domain(LpaeS1::va48());
    map_flush(&d, M2 - 4 * K4, 0x1000_0000, 5 * K4, Prot::RW).unwrap();
    let mut g = unmap_and_check(&d, M2 - 4 * K4, 4 * K4, 0);
    assert_eq!(sizes(&d.leaves()), vec![K4]);
    assert_eq!(d.leaves()[0].iova, Iova(M2));
    // And one that starts at a table's first entry.
    g = {
        d.flush(&mut g).unwrap();
        unmap_and_check(&d, M2, K4, 0)
    };
    d.flush(&mut g).unwrap();
    assert!(d.leaves().is_empty());
}

#[test]
fn blocks_inside_an_unmapped_range_go_with_the_pages_around_them() {
    fn check<F: PtFormat>(fmt: F) {
        let (d, _) = fake_domain(fmt);
        // Pages, a 2 MiB block, pages: one map, identity-mapped so the block fits.
        map_flush(&d, M2 - 2 * K4, M2 - 2 * K4, M2 + 4 * K4, Prot::RW).unwrap();
        assert_eq!(sizes(&d.leaves()), vec![K4, K4, M2, K4, K4]);
        let mut g = unmap_and_check(&d, M2 - 2 * K4, M2 + 4 * K4, 0);
        assert_eq!(g.page_sizes(), K4 | M2);
        d.flush(&mut g).unwrap();
        assert!(d.leaves().is_empty());
    }
    check(LpaeS1::va48());
    check(X86_64::four_level());
}

#[test]
fn an_unmap_covering_a_leaf_tables_span_frees_it_one_not_covering_it_does_not() {
    let (d, frames) = fake_domain(X86_64::four_level());
    // Every page of [M2, 2 M2) but two, and one page beyond.
    for i in (0..513).filter(|&i| i != 7 && i != 300) {
        map_flush(&d, M2 + i * K4, 0x1000_0000 + i * K4, K4, Prot::RW).unwrap();
    }
    let live = frames.live();
    // All pages but the first: the table stays, emptied of those.
    let mut g = unmap_and_check(&d, M2 + K4, M2 - K4, 0);
    d.flush(&mut g).unwrap();
    assert_eq!(frames.live(), live);
    // The whole span: the table goes, after the flush; the page beyond stays.
    let mut g = unmap_and_check(&d, M2, M2, 1);
    assert_eq!(frames.live(), live);
    d.flush(&mut g).unwrap();
    assert_eq!(frames.live(), live - 1);
    assert_eq!(d.leaves().len(), 1);
    assert_eq!(d.tables(), frames.live());
    assert_eq!(frames.bad_frees(), 0);
}

#[test]
fn random_unmaps_over_three_leaf_tables_match_the_leaves_they_cover() {
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let base = 0x40_0000_0000;
    for _ in 0..if cfg!(miri) { 3 } else { 300 } {
        let (d, frames) = fake_domain(LpaeS1::va48());
        // Three 2 MiB spans of pages at random (sparse to dense), or, for the
        // middle one sometimes, one block.
        let block = next(3) == 0;
        for span in 0..3 {
            let start = base + span * M2;
            if span == 1 && block {
                map_flush(&d, start, start, M2, Prot::RW).unwrap();
                continue;
            }
            let density = 1 + next(8);
            for i in 0..512 {
                if next(8) < density {
                    map_flush(&d, start + i * K4, start + i * K4, K4, Prot::RW).unwrap();
                }
            }
        }
        // A range of whole pages, its ends often at a table boundary.
        let mut end = || {
            let page = base + next(3 * 512 + 1) * K4;
            if next(4) == 0 { page & !(M2 - 1) } else { page }
        };
        let (x, y) = (end(), end());
        let (a, b) = (x.min(y), x.max(y).max(x.min(y) + K4));
        if block && [a, b].iter().any(|&e| base + M2 < e && e < base + 2 * M2) {
            let before = d.leaves();
            let mut g = IotlbGather::new();
            assert_eq!(d.unmap(Iova(a), b - a, &mut g), Err(Error::PartialUnmap));
            assert!(g.is_empty());
            assert_eq!(d.leaves(), before);
            continue;
        }
        // Leaf tables whose whole span the range covers are freed (a block's
        // span has none).
        let leaves = d.leaves();
        let freed = (0..3)
            .map(|s| base + s * M2)
            .filter(|&s| a <= s && s + M2 <= b)
            .filter(|&s| {
                leaves
                    .iter()
                    .any(|l| l.size == K4 && s <= l.iova.0 && l.iova.0 < s + M2)
            })
            .count();
        let live = frames.live();
        let mut g = unmap_and_check(&d, a, b - a, freed);
        d.flush(&mut g).unwrap();
        assert_eq!(frames.live(), live - freed);
        assert_eq!(d.tables(), frames.live(), "no table leaked or lost");
        assert_eq!(frames.bad_frees(), 0);
    }
}

#[test]
fn a_non_coherent_walker_gets_each_leaf_tables_cleared_run_cleaned() {
    let frames = FakeFrames::new();
    let table = PageTable::with_cache(LpaeS1::va48(), &frames, CountingCache::default()).unwrap();
    let mut g = IotlbGather::new();
    table
        .map(Iova(M2 - 8 * K4), PhysAddr(0), 16 * K4, Prot::RW, &mut g)
        .unwrap();
    let before = table_cache(&table).cleans.lock().unwrap().len();
    assert_eq!(table.unmap(Iova(M2 - 8 * K4), 16 * K4, &mut g), Ok(16 * K4));
    let cleans = table_cache(&table).cleans.lock().unwrap()[before..].to_vec();
    // Entries 504..511 of one leaf table and 0..7 of the next.
    assert_eq!(cleans.len(), 2, "{cleans:x?}");
    assert_eq!(cleans[0].0 % 4096, 504 * 8);
    assert_eq!(cleans[1].0 % 4096, 0);
    assert!(cleans.iter().all(|&(_, len)| len == 8 * 8));
}

//! Tests of the IOVA allocator.

use super::tlsf::SCAN_LIMIT;
use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::vec::Vec;

const G: u64 = 4096;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn range(start: u64, len: u64) -> IovaRange {
    IovaRange::new(Iova(start), len).unwrap()
}

/// An allocator over `[start, start + len)`.
fn make(start: u64, len: u64, slots: usize, cpus: usize) -> IovaAllocator<'static> {
    let config = IovaAllocatorConfig::new(range(start, len), G);
    // Owned storage where the crate can own it, so that Miri's leak check
    // stays meaningful; leaked for the test otherwise.
    #[cfg(feature = "alloc")]
    return IovaAllocator::with_capacity(config, slots, cpus).unwrap();
    #[cfg(not(feature = "alloc"))]
    {
        let slots = Vec::from_iter((0..slots).map(|_| ExtentSlot::new())).leak();
        let cpus = Vec::from_iter((0..cpus).map(|_| CpuCache::new())).leak();
        IovaAllocator::new(config, slots, cpus).unwrap()
    }
}

/// Checks the backing allocator's structure.
fn check(a: &IovaAllocator<'_>) {
    let ap = a.aperture();
    a.backing
        .lock()
        .check(&a.slots, ap.start.get() >> a.shift, ap.end.get() >> a.shift);
}

/// Everything a failed call must leave unchanged (apart from hit/miss counts).
fn snapshot(a: &IovaAllocator<'_>) -> (u64, u64, u64, u64, u64, u64) {
    let s = a.stats();
    (
        s.live_allocations,
        s.live_bytes,
        s.cached_ranges,
        s.free_bytes,
        s.free_extents,
        s.extent_slots_used,
    )
}

fn forge(a: &IovaAlloc) -> IovaAlloc {
    IovaAlloc::from_raw(a.raw)
}

#[test]
fn allocator_is_send_and_sync() {
    fn assert<T: Send + Sync>() {}
    assert::<IovaAllocator<'static>>();
    assert::<IovaAlloc>();
    assert::<CpuCache>();
    assert::<ExtentSlot>();
}

#[test]
fn config_errors() {
    let mut slots = [const { ExtentSlot::new() }; 4];
    let mut cpus = [const { CpuCache::new() }; 1];
    let ap = range(0x10000, 0x10000);
    for g in [0, 3, 4095, 4097] {
        assert_eq!(
            IovaAllocator::new(IovaAllocatorConfig::new(ap, g), &mut slots, &mut cpus).unwrap_err(),
            IovaAllocError::InvalidGranule
        );
    }
    for bad in [
        range(0x10800, 0x10000),
        range(0x10000, 0x10800),
        range(0x10000, 0),
    ] {
        assert_eq!(
            IovaAllocator::new(IovaAllocatorConfig::new(bad, G), &mut slots, &mut cpus)
                .unwrap_err(),
            IovaAllocError::InvalidAperture
        );
    }
    assert_eq!(
        IovaAllocator::new(IovaAllocatorConfig::new(ap, G), &mut [], &mut cpus).unwrap_err(),
        IovaAllocError::NoExtentSlots
    );
    // A granule of one byte and a huge granule both work.
    let a = IovaAllocator::new(
        IovaAllocatorConfig::new(range(1, 10), 1),
        &mut slots,
        &mut [],
    )
    .unwrap();
    let x = a.alloc(0, 3, 1).unwrap();
    assert_eq!(x.range(), range(1, 3));
    a.free(0, x).unwrap();
    drop(a);
    let a = IovaAllocator::new(
        IovaAllocatorConfig::new(range(1 << 62, 1 << 62), 1 << 62),
        &mut slots,
        &mut [],
    )
    .unwrap();
    let x = a.alloc(0, 1, 1).unwrap();
    assert_eq!(x.range(), range(1 << 62, 1 << 62));
    assert_eq!(a.alloc(0, 1, 1).unwrap_err(), IovaAllocError::NoSpace);
    a.free(0, x).unwrap();
}

#[test]
fn request_errors_change_nothing() {
    let a = make(G, 1 << 30, 16, 2);
    let keep = a.alloc(0, G, G).unwrap();
    let before = snapshot(&a);
    assert_eq!(a.alloc(0, 0, G).unwrap_err(), IovaAllocError::ZeroSize);
    assert_eq!(
        a.alloc(0, G, 0).unwrap_err(),
        IovaAllocError::InvalidAlignment
    );
    assert_eq!(
        a.alloc(0, G, 3 * G).unwrap_err(),
        IovaAllocError::InvalidAlignment
    );
    assert_eq!(
        a.alloc(0, u64::MAX, G).unwrap_err(),
        IovaAllocError::Overflow
    );
    assert_eq!(
        a.alloc(0, u64::MAX - 100, G).unwrap_err(),
        IovaAllocError::Overflow
    );
    assert_eq!(a.alloc(0, 2 << 30, G).unwrap_err(), IovaAllocError::NoSpace);
    assert_eq!(a.alloc(0, 1 << 30, G).unwrap_err(), IovaAllocError::NoSpace);
    assert_eq!(a.alloc(0, G, 1 << 63).unwrap_err(), IovaAllocError::NoSpace);
    assert_eq!(
        a.reserve(range(G, 0)).unwrap_err(),
        IovaAllocError::ZeroSize
    );
    assert_eq!(snapshot(&a), before);
    check(&a);
    a.free(0, keep).unwrap();
}

#[test]
fn sizes_round_to_granule_and_small_alignments_to_granule() {
    let a = make(0x10_0000, 64 * MIB, 64, 0);
    let x = a.alloc(0, 1, 1).unwrap();
    assert_eq!(x.range().len(), G);
    let y = a.alloc(0, G + 1, 16).unwrap();
    assert_eq!(y.range().len(), 2 * G);
    assert!(y.range().start.is_aligned(G));
    assert!(!x.range().overlaps(&y.range()));
    assert_eq!(
        a.stats().live_bytes,
        3 * G,
        "no caches: no rounding to powers of two"
    );
    a.free(0, x).unwrap();
    a.free(0, y).unwrap();
    check(&a);
    assert_eq!(a.stats().free_extents, 1);
}

#[test]
fn exhausting_the_aperture_and_coalescing() {
    const N: u64 = if cfg!(miri) { 40 } else { 300 };
    let a = make(7 * G, N * G, 2 * N as usize, 0);
    let mut live = Vec::new();
    loop {
        match a.alloc(0, G, G) {
            Ok(x) => live.push(x),
            Err(e) => {
                assert_eq!(e, IovaAllocError::NoSpace);
                break;
            }
        }
    }
    assert_eq!(live.len() as u64, N);
    let s = a.stats();
    assert_eq!(
        (s.free_bytes, s.free_extents, s.live_allocations),
        (0, 0, N)
    );
    check(&a);
    // Free in a scrambled order: every free merges with what it can.
    let mut order: Vec<usize> = (0..live.len()).collect();
    order.sort_by_key(|i| (i * 7919) % live.len());
    let mut slots: Vec<Option<IovaAlloc>> = live.into_iter().map(Some).collect();
    for i in order {
        a.free(0, slots[i].take().unwrap()).unwrap();
        check(&a);
    }
    let s = a.stats();
    assert_eq!(
        (s.free_bytes, s.free_extents, s.extent_slots_used),
        (N * G, 1, 1)
    );
    assert_eq!(s.live_allocations, 0);
    // The whole aperture is one extent again.
    let all = a.alloc(0, N * G, G).unwrap();
    assert_eq!(all.range(), a.aperture());
    a.free(0, all).unwrap();
}

#[test]
fn extent_slot_exhaustion_changes_nothing() {
    // Two slots: the aperture, plus one remainder.
    let a = make(0, 64 * G, 2, 0);
    let before = snapshot(&a);
    // 0 is 16-granule aligned, so this goes at the start: only a tail.
    let x = a.alloc(0, G, 16 * G).unwrap();
    assert_eq!(x.range().start, Iova(0));
    let s = a.stats();
    assert_eq!(s.extent_slots_used, 2);
    let before2 = snapshot(&a);
    // Needs another slot for the remainder: none left.
    assert_eq!(a.alloc(0, G, G).unwrap_err(), IovaAllocError::NoExtentSlots);
    assert_eq!(snapshot(&a), before2);
    // The exact remaining size needs no new slot.
    let y = a.alloc(0, 63 * G, G).unwrap();
    a.free(0, x).unwrap();
    a.free(0, y).unwrap();
    assert_eq!(snapshot(&a), before);

    // A hole in the middle of the only extent needs a second slot.
    let a = make(0, 64 * G, 1, 0);
    assert_eq!(
        a.reserve(range(8 * G, G)).unwrap_err(),
        IovaAllocError::NoExtentSlots
    );
    // At an edge it does not.
    a.reserve(range(0, G)).unwrap();
    check(&a);
    assert_eq!(a.stats().free_bytes, 63 * G);
}

#[test]
fn head_and_tail_split_needs_two_slots() {
    let a = make(G, 64 * G, 2, 0);
    let before = snapshot(&a);
    // 16 granules aligned to 16 granules inside [1, 65): at 16, head [1,16), tail [32,65).
    assert_eq!(
        a.alloc(0, 16 * G, 16 * G).unwrap_err(),
        IovaAllocError::NoExtentSlots
    );
    assert_eq!(snapshot(&a), before);
    let a = make(G, 64 * G, 3, 0);
    let x = a.alloc(0, 16 * G, 16 * G).unwrap();
    assert_eq!(x.range(), range(16 * G, 16 * G));
    assert_eq!(a.stats().free_extents, 2);
    check(&a);
    a.free(0, x).unwrap();
    assert_eq!(a.stats().free_extents, 1);
}

#[test]
fn placement_prefers_an_aligned_end() {
    // [1, 48): 16 aligned to 16 fits at 16 (two remainders) or at 32 (one).
    let a = make(G, 47 * G, 2, 0);
    let x = a.alloc(0, 16 * G, 16 * G).unwrap();
    assert_eq!(x.range(), range(32 * G, 16 * G));
    a.free(0, x).unwrap();
}

#[test]
fn double_and_foreign_frees_are_detected() {
    for cpus in [0, 2] {
        let a = make(0x1000_0000, 64 * MIB, 32, cpus);
        let b = make(0x1000_0000, 64 * MIB, 32, cpus);
        let x = a.alloc(0, G, G).unwrap();
        let y = b.alloc(0, G, G).unwrap();
        assert_eq!(x.range(), y.range(), "same configuration, same answer");
        let before_a = snapshot(&a);
        // Freed to the wrong allocator.
        assert_eq!(
            a.free(0, forge(&y)).unwrap_err(),
            IovaAllocError::ForeignAllocation
        );
        assert_eq!(snapshot(&a), before_a);
        b.free(0, y).unwrap();

        let stale = forge(&x);
        a.free(0, x).unwrap();
        let before = snapshot(&a);
        assert_eq!(a.free(0, stale).unwrap_err(), IovaAllocError::DoubleFree);
        assert_eq!(snapshot(&a), before);
        // The slot is reused (from the cache or the backing allocator);
        // the stale handle still does not free the new allocation.
        let again = a.alloc(0, G, G).unwrap();
        assert_eq!(again.range().start, Iova(0x1000_0000));
        let before = snapshot(&a);
        assert_eq!(
            a.free(1, IovaAlloc::from_raw(stale_raw(&again, -1)))
                .unwrap_err(),
            IovaAllocError::DoubleFree
        );
        assert_eq!(snapshot(&a), before);
        // A forged index or range.
        let mut raw = again.raw;
        raw.index = 1_000_000;
        assert_eq!(
            a.free(0, IovaAlloc::from_raw(raw)).unwrap_err(),
            IovaAllocError::ForeignAllocation
        );
        let mut raw = again.raw;
        raw.range = range(0x1000_0000 + G, G);
        assert_eq!(
            a.free(0, IovaAlloc::from_raw(raw)).unwrap_err(),
            IovaAllocError::ForeignAllocation
        );
        let mut raw = again.raw;
        raw.range = range(0x1000_0000, 2 * G);
        assert_eq!(
            a.free(0, IovaAlloc::from_raw(raw)).unwrap_err(),
            IovaAllocError::ForeignAllocation
        );
        assert_eq!(snapshot(&a), before);
        check(&a);
        a.free(0, again).unwrap();
        a.flush_caches();
        check(&a);
        assert_eq!(a.stats().free_extents, 1);
    }
}

/// The raw handle of `a` with its generation moved by `delta`.
fn stale_raw(a: &IovaAlloc, delta: i64) -> RawIovaAlloc {
    let mut raw = a.raw;
    raw.generation = raw.generation.wrapping_add_signed(delta);
    raw
}

#[test]
fn raw_round_trip() {
    let a = make(0, 16 * MIB, 8, 1);
    let x = a.alloc(0, 5 * G, G).unwrap();
    let r = x.range();
    let raw = x.into_raw();
    assert_eq!(raw.range(), r);
    a.free(0, IovaAlloc::from_raw(raw)).unwrap();
    assert_eq!(
        a.free(0, IovaAlloc::from_raw(raw)).unwrap_err(),
        IovaAllocError::DoubleFree
    );
}

#[test]
fn out_of_range_cpu_uses_the_shared_path() {
    let a = make(0, 16 * MIB, 64, 2);
    let x = a.alloc(2, G, G).unwrap();
    let y = a.alloc(usize::MAX, G, G).unwrap();
    assert_eq!(a.stats().uncached_cpu, 2);
    assert_eq!(a.stats().cache_hits + a.stats().cache_misses, 0);
    a.free(7, x).unwrap();
    a.free(usize::MAX, y).unwrap();
    let s = a.stats();
    assert_eq!((s.uncached_cpu, s.cached_ranges, s.free_extents), (4, 0, 1));
    // Through a `CurrentCpu` that returns nonsense.
    let x = a.alloc_current(&|| 1000, G, G).unwrap();
    a.free_current(&|| 1000, x).unwrap();
    assert_eq!(a.stats().cached_ranges, 0);
    // No caches at all: nothing counted.
    let a = make(0, 16 * MIB, 64, 0);
    let x = a.alloc(5, G, G).unwrap();
    a.free(5, x).unwrap();
    assert_eq!(a.stats().uncached_cpu, 0);
}

struct FixedCpu(usize);

impl CurrentCpu for FixedCpu {
    fn current_cpu(&self) -> usize {
        self.0
    }
}

#[test]
fn per_cpu_cache_hits_and_rounding() {
    let a = make(0x4000_0000, GIB, 256, 2);
    let cpu = FixedCpu(1);
    let x = a.alloc_current(&cpu, 3 * G, G).unwrap();
    assert_eq!(x.range().len(), 3 * G, "the range is what was asked for");
    assert!(
        x.range().start.is_aligned(4 * G),
        "the extent is a naturally aligned power of two"
    );
    assert_eq!(a.stats().live_bytes, 4 * G);
    assert_eq!(a.stats().cache_misses, 1);
    let start = x.range().start;
    a.free_current(&cpu, x).unwrap();
    assert_eq!(a.stats().cached_ranges, 1);
    // Same class, alignment up to the class size: a hit, same extent.
    let y = a.alloc_current(&cpu, 4 * G, 4 * G).unwrap();
    assert_eq!(y.range().start, start);
    assert_eq!(y.range().len(), 4 * G);
    let s = a.stats();
    assert_eq!((s.cache_hits, s.cached_ranges), (1, 0));
    a.free(1, y).unwrap();
    // A larger alignment bypasses the cache.
    let z = a.alloc(1, 4 * G, 2 * MIB).unwrap();
    assert!(z.range().start.is_aligned(2 * MIB));
    let s = a.stats();
    assert_eq!((s.cache_hits, s.cached_ranges), (1, 1));
    // The other CPU has its own cache: a miss.
    let w = a.alloc(0, 4 * G, G).unwrap();
    assert_eq!(a.stats().cache_misses, 2);
    // Large sizes are not rounded and not cached.
    let big = a.alloc(0, 33 * G, G).unwrap();
    assert_eq!(a.stats().live_bytes, 4 * G + 4 * G + 33 * G);
    a.free(0, big).unwrap();
    assert_eq!(a.stats().cached_ranges, 1);
    // A range with a large alignment but cache-able size is cached when freed.
    a.free(0, z).unwrap();
    a.free(0, w).unwrap();
    assert_eq!(a.stats().cached_ranges, 3);
    check(&a);
    assert_eq!(a.flush_caches(), 3);
    check(&a);
    let s = a.stats();
    assert_eq!((s.cached_ranges, s.free_extents, s.live_bytes), (0, 1, 0));
}

#[test]
fn magazines_spill_to_depot_and_backing() {
    // Slots for the 352 single-granule allocations and a margin: `stats()`
    // visits every slot, once per free below.
    let a = make(0, GIB, 512, 2);
    // Enough frees that the depot fills and five magazines spill, ending
    // with a full loaded magazine.
    let n = (2 + DEPOT_MAGS + 5) * MAG_SIZE;
    let mut live: Vec<_> = (0..n).map(|_| a.alloc(0, G, G).unwrap()).collect();
    let cap = max_cached_ranges(2) as u64;
    while let Some(x) = live.pop() {
        a.free(0, x).unwrap();
        assert!(a.stats().cached_ranges <= cap);
    }
    check(&a);
    let s = a.stats();
    // One class on one CPU: two magazines and the depot.
    assert_eq!(
        s.cached_ranges,
        (2 * MAG_SIZE + DEPOT_MAGS * MAG_SIZE) as u64
    );
    // Reuse drains the magazines and then the depot.
    let again: Vec<_> = (0..(2 + DEPOT_MAGS) * MAG_SIZE)
        .map(|_| a.alloc(0, G, G).unwrap())
        .collect();
    assert_eq!(a.stats().cache_hits, ((2 + DEPOT_MAGS) * MAG_SIZE) as u64);
    assert_eq!(a.stats().cached_ranges, 0);
    // CPU 1 refills from the depot what CPU 0 spilled.
    for x in again {
        a.free(0, x).unwrap();
    }
    let hits = a.stats().cache_hits;
    let x = a.alloc(1, G, G).unwrap();
    assert_eq!(
        a.stats().cache_hits,
        hits + 1,
        "a full magazine came from the depot"
    );
    a.free(1, x).unwrap();
    a.flush_caches();
    check(&a);
    assert_eq!(a.stats().free_extents, 1);
    assert_eq!(a.stats().extent_slots_used, 1);
}

#[test]
fn exhaustion_flushes_the_caches() {
    // 64 granules, all freed into CPU 0's cache, then one request for all of them.
    let a = make(0, 64 * G, 128, 1);
    let live: Vec<_> = (0..64).map(|_| a.alloc(0, G, G).unwrap()).collect();
    assert_eq!(a.alloc(0, G, G).unwrap_err(), IovaAllocError::NoSpace);
    for x in live {
        a.free(0, x).unwrap();
    }
    assert_eq!(a.stats().cached_ranges, 64);
    assert_eq!(a.stats().free_bytes, 0);
    let all = a.alloc(0, 64 * G, G).unwrap();
    assert_eq!(all.range(), a.aperture());
    assert_eq!(a.stats().cached_ranges, 0);
    a.free(0, all).unwrap();
    check(&a);

    // Out of slots with everything cached: the flush merges and frees slots.
    let a = make(0, 4096 * G, 66, 1);
    let live: Vec<_> = (0..65).map(|_| a.alloc(0, G, G).unwrap()).collect();
    assert_eq!(a.alloc(0, G, G).unwrap_err(), IovaAllocError::NoExtentSlots);
    for x in live {
        a.free(0, x).unwrap();
    }
    let x = a.alloc(0, 128 * G, G).unwrap();
    assert_eq!(a.stats().extent_slots_used, 2);
    a.free(0, x).unwrap();
}

#[test]
fn alignment_up_to_1gib_in_a_48_bit_aperture() {
    let a = make(G, (1 << 48) - G, 1024, 4);
    let mut live = Vec::new();
    for (i, (size, align)) in [
        (G, 2 * MIB),
        (2 * MIB, 2 * MIB),
        (5 * MIB, 2 * MIB),
        (GIB, GIB),
        (G, GIB),
        (3 * GIB + 5, GIB),
        (2 * MIB, GIB),
        (512 * GIB, 512 * GIB),
        (G, 1 << 47),
        (7 * G, 64 * 1024),
    ]
    .into_iter()
    .enumerate()
    {
        let x = a.alloc(i % 4, size, align).unwrap();
        assert!(
            x.range().start.is_aligned(align),
            "{size:#x} aligned {align:#x}: {:?}",
            x.range()
        );
        assert!(x.range().len() >= size && x.range().len() < size + G);
        assert!(a.aperture().contains_range(&x.range()));
        for y in &live {
            assert!(!x.range().overlaps(&IovaAlloc::range(y)));
        }
        live.push(x);
        check(&a);
    }
    // The top half is taken by the granule at 2^47.
    assert_eq!(
        a.alloc(0, 1 << 47, 1 << 47).unwrap_err(),
        IovaAllocError::NoSpace
    );
    for x in live {
        a.free(0, x).unwrap();
    }
    a.flush_caches();
    check(&a);
    assert_eq!(a.stats().free_extents, 1);
    // Now the top half is free again (found by the bounded scan: the
    // extent is one granule short of what the good-fit search wants).
    let x = a.alloc(0, 1 << 47, 1 << 47).unwrap();
    assert_eq!(x.range().start, Iova(1 << 47));
    a.free(0, x).unwrap();
}

#[test]
fn exactly_sized_aligned_extent_is_found_by_the_bounded_scan() {
    // The whole aperture is one 1 GiB-aligned gigabyte: the good-fit search
    // (which wants 2 GiB - 4 KiB) fails, the scan finds it.
    let a = make(GIB, GIB, 8, 0);
    let x = a.alloc(0, GIB, GIB).unwrap();
    assert_eq!(x.range(), a.aperture());
    a.free(0, x).unwrap();
    // Same with a hole making an exact 2 MiB block.
    let a = make(0, 8 * MIB, 8, 0);
    a.reserve(range(0, 2 * MIB - G)).unwrap();
    a.reserve(range(4 * MIB, 4 * MIB)).unwrap();
    let x = a.alloc(0, 2 * MIB, 2 * MIB).unwrap();
    assert_eq!(x.range(), range(2 * MIB, 2 * MIB));
    a.free(0, x).unwrap();
}

#[test]
fn holes_are_respected() {
    // Granules in the aperture (fewer under Miri: every allocation below is
    // interpreted); the last hole starts two granules before its end.
    const P: u64 = if cfg!(miri) { 160 } else { 512 };
    let a = make(0x10_0000, P * G, 1024, 2);
    let holes = [
        range(0x10_0000, G),                     // at the start
        range(0x10_0000 + 10 * G + 5, 3),        // a few bytes: the whole granule
        range(0x10_0000 + 100 * G, 20 * G),      // inside
        range(0x10_0000 + (P - 2) * G, 100 * G), // past the end: clipped
        range(0, 0x1000),                        // outside: ignored
        range(0x10_0000 + 105 * G, 2 * G),       // inside an earlier hole
    ];
    for h in holes {
        a.reserve(h).unwrap();
        check(&a);
    }
    let hole_granules = 1 + 1 + 20 + 2;
    assert_eq!(a.stats().free_bytes, (P - hole_granules) * G);
    let mut live = Vec::new();
    let mut cpu = 0;
    while let Ok(x) = a.alloc(cpu % 3, G, G) {
        cpu += 1;
        for h in &holes {
            let h = IovaRange {
                start: h.start.align_down(G),
                end: h.end.align_up(G).unwrap(),
            };
            assert!(
                !x.range().overlaps(&h),
                "{:?} overlaps hole {h:?}",
                x.range()
            );
        }
        live.push(x);
    }
    assert_eq!(live.len() as u64, P - hole_granules);
    for x in live {
        a.free(0, x).unwrap();
    }
    a.flush_caches();
    check(&a);
    // Holes split the aperture into [1, 10), [11, 100), [120, P - 2).
    assert_eq!(a.stats().free_extents, 3);
}

#[test]
fn reserve_after_allocations() {
    let a = make(0, 64 * MIB, 256, 1);
    let x = a.alloc(0, 2 * MIB, 2 * MIB).unwrap();
    let before = snapshot(&a);
    let r = x.range();
    assert_eq!(
        a.reserve(range(r.start.get() + G, 1)).unwrap_err(),
        IovaAllocError::RangeInUse
    );
    assert_eq!(
        a.reserve(range(0, 64 * MIB)).unwrap_err(),
        IovaAllocError::RangeInUse
    );
    assert_eq!(snapshot(&a), before);
    // A cached (freed) range is no obstacle: it is flushed first.
    let c = a.alloc(0, G, G).unwrap();
    let cr = c.range();
    a.free(0, c).unwrap();
    assert_eq!(a.stats().cached_ranges, 1);
    a.reserve(cr).unwrap();
    check(&a);
    assert_eq!(a.stats().cached_ranges, 0);
    // Allocations never land in the hole afterwards.
    for _ in 0..100 {
        let y = a.alloc(0, G, G).unwrap();
        assert!(!y.range().overlaps(&cr));
        let _leaked = y.into_raw();
    }
    a.free(0, x).unwrap();
    check(&a);
}

#[test]
fn search_work_does_not_grow_with_live_allocations() {
    // Under Miri every allocation is interpreted (and each borrow of the slot
    // array is retagged whole): two sizes still show the bound.
    let sizes: &[u64] = if cfg!(miri) {
        &[64, 128]
    } else {
        &[64, 1024, 16384]
    };
    for &n in sizes {
        // 2n granules, all allocated, then every second one freed: n free
        // single granules at odd granule numbers, n live allocations.
        let a = make(0, 2 * n * G, 4 * n as usize, 0);
        let live: Vec<_> = (0..2 * n).map(|_| a.alloc(0, G, G).unwrap()).collect();
        let mut kept = Vec::new();
        for x in live {
            if (x.range().start.get() / G) % 2 == 1 {
                a.free(0, x).unwrap();
            } else {
                kept.push(x);
            }
        }
        assert_eq!(a.stats().free_extents, n);
        // A granule aligned to two granules fits nowhere: the scan gives up.
        assert_eq!(a.alloc(0, G, 2 * G).unwrap_err(), IovaAllocError::NoSpace);
        let steps = a.backing.lock().last_steps;
        assert!(
            steps <= SCAN_LIMIT,
            "{steps} steps for {n} live allocations"
        );
        // A plain granule is found without any scan.
        let y = a.alloc(0, G, G).unwrap();
        assert_eq!(a.backing.lock().last_steps, 0);
        a.free(0, y).unwrap();
        for x in kept {
            a.free(0, x).unwrap();
        }
        assert_eq!(a.stats().free_extents, 1);
    }
}

#[test]
fn extent_slots_needed_is_enough() {
    let max_live = 200;
    let a = make(0, 4096 * G, extent_slots_needed(max_live, 0, 0), 0);
    // Bad case: every allocation leaves a free gap before it.
    let all: Vec<_> = (0..max_live)
        .map(|_| a.alloc(0, G, 2 * G).unwrap())
        .collect();
    assert!(a.stats().extent_slots_used <= a.stats().extent_slots_total);
    assert_eq!(a.stats().free_extents, max_live as u64);
    for x in all {
        a.free(0, x).unwrap();
    }
    assert!(extent_slots_needed(usize::MAX, 1, 1) == usize::MAX);
    assert_eq!(extent_slots_needed(10, 2, 0), 23);
}

#[cfg(feature = "alloc")]
#[test]
fn owned_storage() {
    let a =
        IovaAllocator::with_capacity(IovaAllocatorConfig::new(range(0, GIB), G), 128, 4).unwrap();
    assert_eq!(a.cpu_count(), 4);
    let x = a.alloc(3, G, G).unwrap();
    a.free(3, x).unwrap();
    assert_eq!(
        IovaAllocator::with_capacity(IovaAllocatorConfig::new(range(0, GIB), G), 0, 4).unwrap_err(),
        IovaAllocError::NoExtentSlots
    );
    let _: &IovaAllocator<'static> = &a;
}

#[test]
fn threads_on_different_and_shared_cpus() {
    use std::sync::Mutex;
    const THREADS: usize = 8;
    const ITERS: usize = if cfg!(miri) { 40 } else { 3000 };
    let a = make(0x1000_0000, 64 * MIB, 8192, 4);
    let owned: Mutex<BTreeMap<u64, u64>> = Mutex::new(BTreeMap::new());
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (a, owned) = (&a, &owned);
            s.spawn(move || {
                // Threads 0..4 own a CPU each, 4..7 share CPUs 0..2, 7 has none.
                let cpu = if t == 7 { 100 } else { t % 4 };
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (t as u64 + 1);
                let mut next = move || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                let mut mine: Vec<IovaAlloc> = Vec::new();
                for _ in 0..ITERS {
                    if mine.len() < 24 && next() % 3 != 0 {
                        let size = (next() % 40 + 1) * G - next() % G;
                        let align = G << (next() % 10);
                        let x = match a.alloc(cpu, size, align) {
                            Ok(x) => x,
                            Err(IovaAllocError::NoSpace) => continue,
                            Err(e) => panic!("{e:?}"),
                        };
                        let r = x.range();
                        assert!(r.start.is_aligned(align));
                        let mut map = owned.lock().unwrap();
                        if let Some((_, &end)) = map.range(..r.end.get()).next_back() {
                            assert!(end <= r.start.get(), "handed out twice: {r:?}");
                        }
                        map.insert(r.start.get(), r.end.get());
                        drop(map);
                        mine.push(x);
                    } else if !mine.is_empty() {
                        let i = (next() % mine.len() as u64) as usize;
                        let x = mine.swap_remove(i);
                        owned.lock().unwrap().remove(&x.range().start.get());
                        a.free(cpu, x).unwrap();
                    }
                    if next() % 1000 == 0 {
                        a.flush_caches();
                    }
                }
                for x in mine {
                    owned.lock().unwrap().remove(&x.range().start.get());
                    a.free(cpu, x).unwrap();
                }
            });
        }
    });
    let s = a.stats();
    assert_eq!((s.live_allocations, s.live_bytes), (0, 0));
    assert!(s.cache_hits > 0);
    a.flush_caches();
    check(&a);
    let s = a.stats();
    assert_eq!(
        (s.free_extents, s.free_bytes, s.extent_slots_used),
        (1, 64 * MIB, 1)
    );
}

// ---- property test against a model ----

#[derive(Debug, Clone)]
enum Op {
    Alloc {
        cpu: usize,
        size: u64,
        align_shift: u32,
    },
    Free {
        pick: usize,
        cpu: usize,
    },
    DoubleFree {
        pick: usize,
    },
    Reserve {
        start: u64,
        len: u64,
    },
    Flush,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..4usize, 1..(80 * G), 0..16u32).prop_map(|(cpu, size, align_shift)| Op::Alloc { cpu, size, align_shift }),
        4 => (any::<usize>(), 0..4usize).prop_map(|(pick, cpu)| Op::Free { pick, cpu }),
        1 => any::<usize>().prop_map(|pick| Op::DoubleFree { pick }),
        1 => (0..(1100 * G), 1..(8 * G)).prop_map(|(start, len)| Op::Reserve { start, len }),
        1 => Just(Op::Flush),
    ]
}

const AP_START: u64 = 16 * G;
const AP_LEN: u64 = 1024 * G;

fn expanded(h: IovaRange) -> Option<(u64, u64)> {
    let s = h.start.get().max(AP_START) / G * G;
    let e = h.end.get().min(AP_START + AP_LEN).div_ceil(G) * G;
    (s < e).then_some((s, e))
}

/// The extent behind an allocation: with caches, small sizes are rounded
/// up to a power of two of granules.
fn extent(x: &IovaAlloc, cpus: usize) -> IovaRange {
    let r = x.range();
    let n = r.len() / G;
    let n = if cpus > 0 && n <= 32 {
        n.next_power_of_two()
    } else {
        n
    };
    range(r.start.get(), n * G)
}

fn run_model(ops: Vec<Op>, slots: usize, cpus: usize) -> Result<(), TestCaseError> {
    let a = make(AP_START, AP_LEN, slots, cpus);
    let mut live: Vec<(IovaAlloc, u64, u64)> = Vec::new();
    let mut freed: Vec<RawIovaAlloc> = Vec::new();
    let mut holes: Vec<(u64, u64)> = Vec::new();
    for op in ops {
        match op {
            Op::Alloc {
                cpu,
                size,
                align_shift,
            } => {
                let align = 1u64 << (align_shift + 8);
                match a.alloc(cpu, size, align) {
                    Ok(x) => live.push((x, size, align)),
                    Err(IovaAllocError::NoSpace) | Err(IovaAllocError::NoExtentSlots) => {}
                    Err(e) => return Err(TestCaseError::fail(format!("alloc: {e:?}"))),
                }
            }
            Op::Free { pick, cpu } => {
                if !live.is_empty() {
                    let (x, _, _) = live.swap_remove(pick % live.len());
                    freed.push(x.raw);
                    a.free(cpu, x)
                        .map_err(|e| TestCaseError::fail(format!("free: {e:?}")))?;
                }
            }
            Op::DoubleFree { pick } => {
                if !freed.is_empty() {
                    let before = snapshot(&a);
                    let r = a.free(0, IovaAlloc::from_raw(freed[pick % freed.len()]));
                    prop_assert_eq!(r, Err(IovaAllocError::DoubleFree));
                    prop_assert_eq!(snapshot(&a), before);
                }
            }
            Op::Reserve { start, len } => {
                let h = range(start, len);
                let overlap = expanded(h).is_some_and(|(s, e)| {
                    live.iter()
                        .any(|(x, _, _)| extent(x, cpus).overlaps(&range(s, e - s)))
                });
                match a.reserve(h) {
                    Ok(()) => {
                        prop_assert!(!overlap);
                        holes.extend(expanded(h));
                    }
                    Err(IovaAllocError::RangeInUse) => prop_assert!(overlap),
                    Err(IovaAllocError::NoExtentSlots) => prop_assert!(!overlap),
                    Err(e) => return Err(TestCaseError::fail(format!("reserve: {e:?}"))),
                }
            }
            Op::Flush => {
                a.flush_caches();
            }
        }
        check(&a);
        // The model's invariants.
        let mut by_start = BTreeMap::new();
        for (x, size, align) in &live {
            let r = x.range();
            prop_assert_eq!(r.len(), size.div_ceil(G) * G);
            let r = extent(x, cpus);
            prop_assert!(a.aperture().contains_range(&r));
            prop_assert!(r.start.is_aligned((*align).max(G)));
            for &(s, e) in &holes {
                prop_assert!(
                    !r.overlaps(&range(s, e - s)),
                    "{:?} in hole {:#x}..{:#x}",
                    r,
                    s,
                    e
                );
            }
            by_start.insert(r.start.get(), r.end.get());
        }
        prop_assert_eq!(by_start.len(), live.len());
        let mut prev_end = 0;
        for (s, e) in by_start {
            prop_assert!(s >= prev_end, "overlapping live ranges");
            prev_end = e;
        }
        prop_assert_eq!(a.stats().live_allocations, live.len() as u64);
    }
    // Free everything: the free extents are exactly the aperture minus holes.
    for (x, _, _) in live {
        a.free(0, x)
            .map_err(|e| TestCaseError::fail(format!("free: {e:?}")))?;
    }
    a.flush_caches();
    check(&a);
    let mut covered = std::vec![false; (AP_LEN / G) as usize];
    for (s, e) in holes {
        for g in (s - AP_START) / G..(e - AP_START) / G {
            covered[g as usize] = true;
        }
    }
    let free_granules = covered.iter().filter(|c| !**c).count() as u64;
    let segments = covered
        .iter()
        .enumerate()
        .filter(|&(i, c)| !*c && (i == 0 || covered[i - 1]))
        .count() as u64;
    let s = a.stats();
    prop_assert_eq!(s.free_bytes, free_granules * G);
    prop_assert_eq!(s.free_extents, segments);
    prop_assert_eq!(s.extent_slots_used, segments);
    prop_assert_eq!(
        (s.live_allocations, s.live_bytes, s.cached_ranges),
        (0, 0, 0)
    );
    Ok(())
}

/// Operations per case, and slots for the roomy models (every step checks
/// `stats()`, which visits every slot). Miri runs every case about 1000 times
/// slower: a few short cases over fewer slots still cover the code.
const MODEL_OPS: usize = if cfg!(miri) { 40 } else { 200 };
const MODEL_SLOTS: usize = if cfg!(miri) { 256 } else { 4096 };

proptest! {
    #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 3 } else { 256 }))]

    #[test]
    fn model_with_caches(ops in proptest::collection::vec(op(), 1..MODEL_OPS)) {
        run_model(ops, MODEL_SLOTS, 3)?;
    }

    #[test]
    fn model_without_caches(ops in proptest::collection::vec(op(), 1..MODEL_OPS)) {
        run_model(ops, MODEL_SLOTS, 0)?;
    }

    #[test]
    fn model_with_few_slots(ops in proptest::collection::vec(op(), 1..MODEL_OPS)) {
        run_model(ops, 12, 2)?;
    }
}

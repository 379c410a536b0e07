//! Benchmarks of iova-core: the page-table engine side by side with the
//! `aarch64-paging` and `x86_64` crates, the two-step API over the fake
//! domain, and the IOVA allocator. See `BENCHMARKS.md` at the repository root
//! for what each benchmark does and does not measure.
//!
//! Run with `cargo bench -p iova-core --features fakes --bench engine`. After
//! criterion's own report, a summary table (medians of this run's samples, and
//! the ratios ours / theirs) is printed. A filter argument (`-- unlink_256`)
//! selects criterion's groups and the paired comparisons alike.

use std::alloc::{Layout, alloc_zeroed};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::ptr::NonNull;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode};

use iova_core::fakes::fake_domain;
use iova_core::formats::lpae::LpaeS1;
use iova_core::formats::x86_64::X86_64;
use iova_core::iova_alloc::{IovaAlloc, IovaAllocator, IovaAllocatorConfig};
use iova_core::{
    DmaMapper, FrameAllocator, IommuDomain, IotlbGather, Iova, IovaRange, PageTable, PhysAddr,
    Prot, PtFormat,
};

use aarch64_paging::paging::{
    Attributes, Constraints, MemoryRegion, PageTable as ArmPageTable, PhysicalAddress, RootTable,
    Translation, TranslationRegime, VaRange,
};
use x86_64::structures::paging::{
    FrameAllocator as X86FrameAllocator, Mapper, OffsetPageTable, Page, PageTable as X86PageTable,
    PageTableFlags, PhysFrame, Size4KiB, Translate,
};
use x86_64::{PhysAddr as X86PhysAddr, VirtAddr};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const PAGE: u64 = 4 * KIB;

// ---------------------------------------------------------------------------
// Samples for the summary table.
// ---------------------------------------------------------------------------

/// Nanoseconds per iteration of every call criterion made to each benchmark,
/// in call order (warm-up calls first, then one call per sample).
static SAMPLES: Mutex<BTreeMap<String, Vec<f64>>> = Mutex::new(BTreeMap::new());

fn record(id: &str, iters: u64, elapsed: Duration) -> Duration {
    let per_iter = elapsed.as_nanos() as f64 / iters.max(1) as f64;
    SAMPLES
        .lock()
        .unwrap()
        .entry(id.to_owned())
        .or_default()
        .push(per_iter);
    elapsed
}

/// Median ns per iteration over the last `samples` calls (the measurement
/// phase: criterion calls the routine once per sample after warming up).
fn median_ns(id: &str, samples: usize) -> Option<f64> {
    let map = SAMPLES.lock().unwrap();
    let all = map.get(id)?;
    let mut last: Vec<f64> = all[all.len().saturating_sub(samples)..].to_vec();
    last.sort_by(f64::total_cmp);
    let n = last.len();
    Some(if n % 2 == 1 {
        last[n / 2]
    } else {
        (last[n / 2 - 1] + last[n / 2]) / 2.0
    })
}

// ---------------------------------------------------------------------------
// The frame arena: one memory source for all three page-table implementations.
// ---------------------------------------------------------------------------

/// Where the arena's frames start in "physical" address space, if the host
/// allows (a fixed offset from their host virtual addresses, so no
/// implementation can confuse the two).
const PA_BASE: u64 = 0x8000_0000;
const ARENA_BYTES: usize = 64 << 20;

/// A bump allocator of 4 KiB frames over host memory. Frames are never freed
/// one by one: [`Arena::reset`] starts over, outside the timed sections.
///
/// Every implementation pays for zeroing each new table exactly once, inside
/// the timed section: ours and aarch64-paging through the allocator (their
/// contracts ask for zeroed tables), the x86_64 crate itself (it zeroes the
/// frames it gets, so its allocator hands them out as they are).
struct Arena {
    base: *mut u8,
    /// The physical address of `base`.
    pa_base: u64,
    /// `base - pa_base`: the host address of physical address 0, so that
    /// translating is one add, as in the x86_64 crate's `OffsetPageTable`.
    phys_zero: *mut u8,
    next: AtomicUsize,
}

// SAFETY: the arena only hands out disjoint frames (an atomic bump pointer);
// the raw base pointer is shared read-only.
unsafe impl Sync for Arena {}
// SAFETY: as above; the memory is owned by the arena (leaked, never freed).
unsafe impl Send for Arena {}

impl Arena {
    fn leak() -> &'static Arena {
        let layout = Layout::from_size_align(ARENA_BYTES, PAGE as usize).unwrap();
        // SAFETY: non-zero size.
        let base = unsafe { alloc_zeroed(layout) };
        assert!(!base.is_null());
        // Fault every page in now, not during the first measurement.
        // SAFETY: `base` points to `ARENA_BYTES` writable bytes.
        unsafe { std::ptr::write_bytes(base, 0, ARENA_BYTES) };
        // Below the host address (valgrind maps the heap low), page aligned.
        let pa_base = PA_BASE.min((base as u64 / 2) & !(PAGE - 1));
        Box::leak(Box::new(Arena {
            base,
            pa_base,
            phys_zero: base.wrapping_sub(pa_base as usize),
            next: AtomicUsize::new(0),
        }))
    }

    /// A 4 KiB frame (4 KiB aligned, contents undefined), as a physical address.
    #[inline]
    fn frame(&self) -> u64 {
        let off = self.next.fetch_add(PAGE as usize, Ordering::Relaxed);
        assert!(off + PAGE as usize <= ARENA_BYTES, "bench arena exhausted");
        self.pa_base + off as u64
    }

    /// A zeroed 4 KiB frame.
    #[inline]
    fn frame_zeroed(&self) -> u64 {
        let pa = self.frame();
        // SAFETY: a frame just handed out: 4 KiB of arena memory nobody else uses.
        unsafe { std::ptr::write_bytes(self.va(pa), 0, PAGE as usize) };
        pa
    }

    #[inline]
    fn va(&self, pa: u64) -> *mut u8 {
        self.phys_zero.wrapping_add(pa as usize)
    }

    /// `phys + offset == virt`, for the x86_64 crate's `OffsetPageTable`.
    fn phys_offset(&self) -> u64 {
        self.base as u64 - self.pa_base
    }

    /// Starts over. No table built from the arena may be alive.
    fn reset(&self) {
        self.next.store(0, Ordering::Relaxed);
    }
}

// SAFETY: frames are 4 KiB, 4 KiB aligned (so aligned to any power-of-two
// size up to 4 KiB), zeroed here, and handed out once until `reset`, which the
// benchmarks call only when no table is alive. `phys_to_virt` maps into the
// arena, which is never freed.
unsafe impl FrameAllocator for Arena {
    #[inline]
    fn alloc_zeroed(&self, size: usize) -> Option<PhysAddr> {
        assert!(size <= PAGE as usize && size.is_power_of_two());
        Some(PhysAddr(self.frame_zeroed()))
    }
    #[inline]
    unsafe fn free(&self, _pa: PhysAddr, _size: usize) {}
    #[inline]
    fn phys_to_virt(&self, pa: PhysAddr) -> *mut u8 {
        self.va(pa.0)
    }
}

/// The arena as `aarch64-paging` wants it.
struct ArmFrames(&'static Arena);

impl Translation for ArmFrames {
    #[inline]
    fn allocate_table(&mut self) -> (NonNull<ArmPageTable>, PhysicalAddress) {
        let pa = self.0.frame_zeroed();
        (
            self.physical_to_virtual(PhysicalAddress(pa as usize)),
            PhysicalAddress(pa as usize),
        )
    }
    #[inline]
    unsafe fn deallocate_table(&mut self, _page_table: NonNull<ArmPageTable>) {}
    #[inline]
    fn physical_to_virtual(&self, pa: PhysicalAddress) -> NonNull<ArmPageTable> {
        NonNull::new(self.0.va(pa.0 as u64).cast()).unwrap()
    }
}

/// The arena as the `x86_64` crate wants it.
struct X86Frames(&'static Arena);

// SAFETY: every frame is a fresh, unused 4 KiB frame of the arena (not
// zeroed: the x86_64 crate zeroes the tables it creates).
unsafe impl X86FrameAllocator<Size4KiB> for X86Frames {
    #[inline]
    fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
        Some(PhysFrame::containing_address(X86PhysAddr::new(
            self.0.frame(),
        )))
    }
}

// ---------------------------------------------------------------------------
// 1. Mapping N scattered 4 KiB pages into a fresh table.
// ---------------------------------------------------------------------------

const MAP_NS: [usize; 4] = [1, 64, 4096, 262_144];
const IOVA_BASE: u64 = 64 * GIB;
const TARGET_PA_BASE: u64 = 0x1_0000_0000;

/// A small deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// `n` distinct pages picked at random from a window of `8 n` pages (rounded
/// up to a power of two), in random order, and as many random target pages in
/// a 64 GiB physical range.
fn scatter(n: usize) -> Vec<(u64, u64)> {
    let window = (8 * n).next_power_of_two();
    let mut pages: Vec<u32> = (0..window as u32).collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ n as u64);
    for i in 0..n {
        let j = i + (rng.next() % (window - i) as u64) as usize;
        pages.swap(i, j);
    }
    pages[..n]
        .iter()
        .map(|&p| {
            let iova = IOVA_BASE + u64::from(p) * PAGE;
            let pa = TARGET_PA_BASE + (rng.next() & ((64 * GIB - 1) & !(PAGE - 1)));
            (iova, pa)
        })
        .collect()
}

/// Fresh tables mapped per timed chunk: small N are batched so that one clock
/// read covers at least a few hundred maps.
fn tables_per_chunk(n: usize) -> usize {
    (256 / n).max(1)
}

/// Maps the pages of `pages` into `iters` fresh tables (made by `make`, outside
/// the timed section) and returns the time spent in `map` only.
fn time_map<T>(
    arena: &'static Arena,
    pages: &[(u64, u64)],
    iters: u64,
    mut make: impl FnMut(&'static Arena) -> T,
    mut map: impl FnMut(&mut T, u64, u64),
) -> Duration {
    let per_chunk = tables_per_chunk(pages.len()) as u64;
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let k = left.min(per_chunk);
        arena.reset();
        let mut tables: Vec<T> = (0..k).map(|_| make(arena)).collect();
        let start = Instant::now();
        for t in tables.iter_mut() {
            for &(iova, pa) in pages {
                map(t, iova, pa);
            }
        }
        total += start.elapsed();
        black_box(&mut tables);
        drop(tables);
        left -= k;
    }
    arena.reset();
    total
}

/// Our engine and the gather its maps record into.
struct Ours<F: PtFormat> {
    table: PageTable<F, &'static Arena>,
    gather: IotlbGather,
}

fn ours_new<F: PtFormat + Copy>(fmt: F) -> impl FnMut(&'static Arena) -> Ours<F> {
    move |arena| Ours {
        table: PageTable::new(fmt, arena).unwrap(),
        gather: IotlbGather::new(),
    }
}

#[inline]
fn ours_map<F: PtFormat>(t: &mut Ours<F>, iova: u64, pa: u64) {
    t.table
        .map(Iova(iova), PhysAddr(pa), PAGE, Prot::RW, &mut t.gather)
        .unwrap();
}

/// The same map with a fresh gather for every page (as if each map were
/// flushed on its own): shows the engine's cost without the gather's range
/// merging, which scattered pages make expensive.
#[inline]
fn ours_map_own_gather<F: PtFormat>(t: &mut Ours<F>, iova: u64, pa: u64) {
    let mut gather = IotlbGather::new();
    t.table
        .map(Iova(iova), PhysAddr(pa), PAGE, Prot::RW, &mut gather)
        .unwrap();
    black_box(&gather);
}

/// The attributes that make `aarch64-paging` write the very descriptor our
/// LPAE format writes for `Prot::RW` (checked in `check_map_equivalence`).
fn arm_attrs() -> Attributes {
    Attributes::VALID
        | Attributes::ATTRIBUTE_INDEX_0
        | Attributes::OUTER_SHAREABLE
        | Attributes::USER
        | Attributes::ACCESSED
        | Attributes::NON_GLOBAL
}

fn arm_new(arena: &'static Arena) -> RootTable<ArmFrames> {
    RootTable::new(
        ArmFrames(arena),
        0,
        TranslationRegime::El1And0,
        VaRange::Lower,
    )
}

#[inline]
fn arm_map(t: &mut RootTable<ArmFrames>, iova: u64, pa: u64) {
    let region = MemoryRegion::new(iova as usize, (iova + PAGE) as usize);
    t.map_range(
        &region,
        PhysicalAddress(pa as usize),
        arm_attrs(),
        Constraints::empty(),
    )
    .unwrap();
}

struct X86 {
    mapper: OffsetPageTable<'static>,
    frames: X86Frames,
}

fn x86_new(arena: &'static Arena) -> X86 {
    let root = arena.frame_zeroed();
    // SAFETY: `root` is a fresh zeroed 4 KiB frame of the arena, which maps
    // every frame at `phys_offset`; nothing else references it until the
    // table is dropped, before the next `Arena::reset`.
    let mapper = unsafe {
        OffsetPageTable::new(
            &mut *arena.va(root).cast::<X86PageTable>(),
            VirtAddr::new(arena.phys_offset()),
        )
    };
    X86 {
        mapper,
        frames: X86Frames(arena),
    }
}

fn x86_flags() -> PageTableFlags {
    PageTableFlags::PRESENT
        | PageTableFlags::WRITABLE
        | PageTableFlags::USER_ACCESSIBLE
        | PageTableFlags::ACCESSED
        | PageTableFlags::DIRTY
}

#[inline]
fn x86_map(t: &mut X86, iova: u64, pa: u64) {
    let page = Page::<Size4KiB>::containing_address(VirtAddr::new(iova));
    let frame = PhysFrame::containing_address(X86PhysAddr::new(pa));
    // SAFETY: the table is not in use by any CPU; the frame is never accessed.
    unsafe { t.mapper.map_to(page, frame, x86_flags(), &mut t.frames) }
        .unwrap()
        .ignore();
}

/// Before timing anything: all three implementations map the same pages to
/// the same places (and ours writes the same LPAE descriptors as
/// aarch64-paging).
fn check_map_equivalence(arena: &'static Arena) {
    let pages = scatter(4096);
    let lpae = LpaeS1::va48();

    let mut ours = ours_new(lpae)(arena);
    let mut arm = arm_new(arena);
    for &(iova, pa) in &pages {
        ours_map(&mut ours, iova, pa);
        arm_map(&mut arm, iova, pa);
    }
    for &(iova, pa) in &pages {
        let t = ours.table.translate(Iova(iova)).unwrap();
        assert_eq!((t.pa, t.page_size), (PhysAddr(pa), PAGE));
        let mut seen = 0;
        arm.walk_range(
            &MemoryRegion::new(iova as usize, (iova + PAGE) as usize),
            &mut |_, d, level| {
                assert_eq!(level, 3);
                let raw = d.output_address().0 as u64 | d.flags().bits() as u64;
                assert_eq!(raw, lpae.encode_leaf(3, PhysAddr(pa), Prot::RW));
                seen += 1;
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(seen, 1);
    }
    drop((ours, arm));
    arena.reset();

    let mut ours = ours_new(X86_64::four_level())(arena);
    let mut x86 = x86_new(arena);
    for &(iova, pa) in &pages {
        ours_map(&mut ours, iova, pa);
        x86_map(&mut x86, iova, pa);
    }
    for &(iova, pa) in &pages {
        assert_eq!(
            ours.table.translate(Iova(iova + 8)).unwrap().pa,
            PhysAddr(pa + 8)
        );
        assert_eq!(
            x86.mapper.translate_addr(VirtAddr::new(iova + 8)),
            Some(X86PhysAddr::new(pa + 8))
        );
    }
    drop((ours, x86));
    arena.reset();
}

fn map_sample_size(n: usize) -> usize {
    if n >= 262_144 { 10 } else { 20 }
}

/// The implementations compared in benchmark 1.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Impl {
    /// Our engine, one gather for the whole table.
    Ours,
    /// Our engine, a fresh gather per map.
    OursGatherPerMap,
    /// aarch64-paging (LPAE) or the x86_64 crate (x86-64).
    Theirs,
}

const FORMATS: [(&str, &str); 2] = [("lpae_s1", "aarch64-paging"), ("x86_64", "x86_64-crate")];

impl Impl {
    fn name(self, theirs: &'static str) -> &'static str {
        match self {
            Impl::Ours => "ours",
            Impl::OursGatherPerMap => "ours-gather-per-map",
            Impl::Theirs => theirs,
        }
    }
}

/// Times `iters` fresh tables of `format` with `pages` mapped by `imp`.
fn run_map(
    format: &str,
    imp: Impl,
    arena: &'static Arena,
    pages: &[(u64, u64)],
    iters: u64,
) -> Duration {
    let lpae = format == "lpae_s1";
    match (imp, lpae) {
        (Impl::Ours, true) => time_map(arena, pages, iters, ours_new(LpaeS1::va48()), ours_map),
        (Impl::Ours, false) => time_map(
            arena,
            pages,
            iters,
            ours_new(X86_64::four_level()),
            ours_map,
        ),
        (Impl::OursGatherPerMap, true) => time_map(
            arena,
            pages,
            iters,
            ours_new(LpaeS1::va48()),
            ours_map_own_gather,
        ),
        (Impl::OursGatherPerMap, false) => time_map(
            arena,
            pages,
            iters,
            ours_new(X86_64::four_level()),
            ours_map_own_gather,
        ),
        (Impl::Theirs, true) => time_map(arena, pages, iters, arm_new, arm_map),
        (Impl::Theirs, false) => time_map(arena, pages, iters, x86_new, x86_map),
    }
}

fn bench_map(c: &mut Criterion, arena: &'static Arena) {
    check_map_equivalence(arena);
    for (format, theirs) in FORMATS {
        let mut group = c.benchmark_group(format!("map_scattered_4k/{format}"));
        group.warm_up_time(Duration::from_millis(300));
        for n in MAP_NS {
            let pages = scatter(n);
            group.sample_size(map_sample_size(n));
            let ms = if n >= 262_144 { 2000 } else { 1000 };
            group.measurement_time(Duration::from_millis(ms));
            group.sampling_mode(if n >= 4096 {
                SamplingMode::Flat
            } else {
                SamplingMode::Auto
            });
            for imp in [Impl::Ours, Impl::OursGatherPerMap, Impl::Theirs] {
                let name = imp.name(theirs);
                let id = format!("map/{format}/{name}/{n}");
                group.bench_function(BenchmarkId::new(name, n), |b| {
                    b.iter_custom(|iters| {
                        record(&id, iters, run_map(format, imp, arena, &pages, iters))
                    })
                });
            }
        }
        group.finish();
    }
}

/// Rounds of the paired comparison.
const PAIRED_ROUNDS: usize = 21;

/// Ours / theirs measured in alternating rounds (ours first in even rounds,
/// theirs first in odd ones), so that slow drifts of a shared machine hit both
/// alike. Returns, per (format, N), the medians of ours and theirs (ns per N
/// pages) and the median of the per-round ratios.
fn paired_map(arena: &'static Arena) -> Vec<(&'static str, usize, f64, f64, f64)> {
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut out = Vec::new();
    for (format, _) in FORMATS {
        for n in MAP_NS {
            let pages = scatter(n);
            // About 64 Ki page maps per round.
            let iters = (65_536 / n).max(1) as u64;
            let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            for round in 0..PAIRED_ROUNDS {
                let order = if round % 2 == 0 {
                    [Impl::Ours, Impl::Theirs]
                } else {
                    [Impl::Theirs, Impl::Ours]
                };
                let mut t = [0.0; 2];
                for imp in order {
                    let ns =
                        run_map(format, imp, arena, &pages, iters).as_nanos() as f64 / iters as f64;
                    t[usize::from(imp == Impl::Theirs)] = ns;
                }
                ours.push(t[0]);
                theirs.push(t[1]);
                ratios.push(t[0] / t[1]);
            }
            out.push((
                format,
                n,
                median(&mut ours),
                median(&mut theirs),
                median(&mut ratios),
            ));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// 2. Linking a 2 MiB-aligned 1 GiB range in one call.
// ---------------------------------------------------------------------------

/// 2 MiB aligned, not 1 GiB aligned: the engine must use 2 MiB blocks.
const LINK_PA: u64 = 5 * GIB + 2 * MIB;
const LINK_SAMPLES: usize = 30;

fn bench_link_1g(c: &mut Criterion) {
    let (domain, _frames) = fake_domain(LpaeS1::va48());
    let aperture = IovaRange::new(Iova(4 * GIB), 64 * GIB).unwrap();
    let iovas =
        IovaAllocator::with_capacity(IovaAllocatorConfig::new(aperture, PAGE), 64, 1).unwrap();
    let cpu = || 0usize;
    let mapper = DmaMapper::new(&domain, &iovas, &cpu).unwrap();

    // What one link writes: 512 block entries of 2 MiB, nothing else.
    let mut state = mapper.try_alloc(GIB, 2 * MIB).unwrap();
    state.link(0, PhysAddr(LINK_PA), GIB, Prot::RW).unwrap();
    state.sync().unwrap();
    let leaves = domain.leaves();
    assert_eq!(leaves.len(), 512, "entries written by one 1 GiB link");
    assert!(leaves.iter().all(|l| l.size == 2 * MIB));
    assert_eq!(domain.invalidator().flushes(), 1);
    state.destroy().unwrap();
    assert!(domain.leaves().is_empty());
    ENTRIES_1G.store(leaves.len(), Ordering::Relaxed);

    let mut group = c.benchmark_group("link_1g_2m_blocks");
    group.warm_up_time(Duration::from_millis(300));
    group.measurement_time(Duration::from_millis(1000));
    group.sample_size(LINK_SAMPLES);
    // `with_sync`: time link alone, or link + sync (try_alloc and destroy untimed).
    for (name, with_sync) in [("link", false), ("link+sync", true)] {
        let id = format!("link1g/{name}");
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut state = mapper.try_alloc(GIB, 2 * MIB).unwrap();
                    let start = Instant::now();
                    state.link(0, PhysAddr(LINK_PA), GIB, Prot::RW).unwrap();
                    if with_sync {
                        state.sync().unwrap();
                    }
                    total += start.elapsed();
                    state.destroy().unwrap();
                }
                record(&id, iters, total)
            })
        });
    }
    group.finish();
}

static ENTRIES_1G: AtomicUsize = AtomicUsize::new(0);

// ---------------------------------------------------------------------------
// 3. Unlinking 256 contiguous 4 KiB pages in one call.
// ---------------------------------------------------------------------------

const UNLINK_PAGES: u64 = 256;
const UNLINK_BATCH: u64 = 16;
const UNLINK_SAMPLES: usize = 30;
/// The anchor from the brief: Linux's generic page-table code, i7-12700.
const LINUX_UNMAP_256_NS: f64 = 353.0;

fn bench_unlink_256(c: &mut Criterion) {
    let (domain, _frames) = fake_domain(LpaeS1::va48());
    let aperture = IovaRange::new(Iova(4 * GIB), 64 * GIB).unwrap();
    let iovas =
        IovaAllocator::with_capacity(IovaAllocatorConfig::new(aperture, PAGE), 1024, 1).unwrap();
    let cpu = || 0usize;
    let mapper = DmaMapper::new(&domain, &iovas, &cpu).unwrap();
    let mut rng = Rng(0x1234_5678);
    let pas: Vec<u64> = (0..UNLINK_PAGES)
        .map(|_| TARGET_PA_BASE + (rng.next() & ((64 * GIB - 1) & !(PAGE - 1))))
        .collect();
    let len = UNLINK_PAGES * PAGE;

    let linked_state = || {
        let mut s = mapper.try_alloc(len, PAGE).unwrap();
        for (i, &pa) in pas.iter().enumerate() {
            s.link(i as u64 * PAGE, PhysAddr(pa), PAGE, Prot::RW)
                .unwrap();
        }
        s.sync().unwrap();
        s
    };
    // Sanity: one unlink call removes exactly the 256 leaves.
    let before = domain.leaves().len();
    let mut s = linked_state();
    assert_eq!(domain.leaves().len(), before + UNLINK_PAGES as usize);
    s.unlink(0, len).unwrap();
    s.sync().unwrap();
    assert_eq!(domain.leaves().len(), before);
    s.free().unwrap();

    let mut group = c.benchmark_group("unlink_256x4k");
    group.warm_up_time(Duration::from_millis(300));
    group.measurement_time(Duration::from_millis(500));
    group.sample_size(UNLINK_SAMPLES);

    // The two-step API: `IovaState::unlink` of 256 adjacent page links, and the
    // `sync` that follows it, timed separately over batches of states.
    for (name, part) in [("IovaState::unlink", 0), ("IovaState::sync", 1)] {
        let id = format!("unlink/{name}");
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    let k = left.min(UNLINK_BATCH);
                    let mut states: Vec<_> = (0..k).map(|_| linked_state()).collect();
                    let t0 = Instant::now();
                    for s in states.iter_mut() {
                        s.unlink(0, len).unwrap();
                    }
                    let t1 = Instant::now();
                    for s in states.iter_mut() {
                        s.sync().unwrap();
                    }
                    let t2 = Instant::now();
                    total += if part == 0 { t1 - t0 } else { t2 - t1 };
                    for s in states {
                        s.free().unwrap();
                    }
                    left -= k;
                }
                record(&id, iters, total)
            })
        });
    }

    // The engine alone (what Linux's number measures): `PageTable::unmap` of a
    // 1 MiB range holding 256 page leaves written by 256 maps.
    let table = domain.table();
    let id = "unlink/PageTable::unmap".to_owned();
    group.bench_function("PageTable::unmap", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let k = left.min(UNLINK_BATCH);
                // Each range in its own leaf table, 2 MiB apart.
                let bases: Vec<u64> = (0..k).map(|j| 256 * GIB + j * 2 * MIB).collect();
                let mut g = IotlbGather::new();
                for &base in &bases {
                    for (i, &pa) in pas.iter().enumerate() {
                        table
                            .map(
                                Iova(base + i as u64 * PAGE),
                                PhysAddr(pa),
                                PAGE,
                                Prot::RW,
                                &mut g,
                            )
                            .unwrap();
                    }
                }
                domain.flush(&mut g).unwrap();
                let mut gathers: Vec<IotlbGather> = (0..k).map(|_| IotlbGather::new()).collect();
                let t0 = Instant::now();
                for (&base, g) in bases.iter().zip(gathers.iter_mut()) {
                    black_box(table.unmap(Iova(base), len, g).unwrap());
                }
                total += t0.elapsed();
                for mut g in gathers {
                    domain.flush(&mut g).unwrap();
                }
                left -= k;
            }
            record(&id, iters, total)
        })
    });
    group.finish();
}

// ---------------------------------------------------------------------------
// 3b. Unmapping 256 contiguous 4 KiB pages: ours and theirs, paired.
// ---------------------------------------------------------------------------

/// Ranges unmapped per timed batch, each 256 pages in a leaf table of its own.
const UNMAP_RANGES: usize = 16;
/// Batches per implementation per round.
const UNMAP_BATCHES: usize = 16;
const UNMAP_ROUNDS: usize = 31;
/// Where range `j` starts for the engine and the two crates: 2 MiB apart.
const UNMAP_BASE: u64 = 256 * GIB;

/// A flush that does nothing: the unlink cells measure the unmap and the link
/// bookkeeping, not an IOTLB (their `sync` is outside the timed section anyway).
struct NoFlush;

// SAFETY: no IOMMU walks the bench's tables, so there is nothing to
// invalidate; the tables freed after a flush go back to the arena, whose
// `free` does nothing (frames are reused only after `Arena::reset`).
unsafe impl iova_core::IotlbInvalidate for NoFlush {
    fn invalidate(&self, _: &IotlbGather) -> Result<(), iova_core::Error> {
        Ok(())
    }
}

type BenchDomain<F> = iova_core::PageTableDomain<F, &'static Arena, NoFlush>;

fn bench_domain<F: PtFormat>(fmt: F, arena: &'static Arena) -> BenchDomain<F> {
    iova_core::PageTableDomain::new(PageTable::new(fmt, arena).unwrap(), NoFlush)
}

/// One implementation's side of the comparison. Every side unmaps the same
/// 256 pages per range, into tables that stay allocated (no side frees a
/// table: a 1 MiB range is half its leaf table's span).
trait UnmapSide {
    /// Untimed: maps the 256 pages of every range.
    fn map_all(&mut self, pas: &[u64]);
    /// Timed: unmaps range `j`.
    fn unmap(&mut self, j: usize);
    /// Untimed: whatever the unmaps left behind (gathers to flush, states to free).
    fn settle(&mut self);
    /// Whether page `i` of range `j` is mapped (for the check before timing).
    fn mapped(&self, j: usize, i: u64) -> bool;
}

fn unmap_base(j: usize) -> u64 {
    UNMAP_BASE + j as u64 * 2 * MIB
}

/// `PageTable::unmap` of each range into a fresh gather.
struct EngineSide<'d, F: PtFormat> {
    domain: &'d BenchDomain<F>,
    gathers: Vec<IotlbGather>,
}

impl<'d, F: PtFormat> EngineSide<'d, F> {
    fn new(domain: &'d BenchDomain<F>) -> Self {
        Self {
            domain,
            gathers: (0..UNMAP_RANGES).map(|_| IotlbGather::new()).collect(),
        }
    }
}

impl<F: PtFormat> UnmapSide for EngineSide<'_, F> {
    fn map_all(&mut self, pas: &[u64]) {
        let mut g = IotlbGather::new();
        for j in 0..UNMAP_RANGES {
            for (i, &pa) in pas.iter().enumerate() {
                let iova = Iova(unmap_base(j) + i as u64 * PAGE);
                self.domain
                    .map(iova, PhysAddr(pa), PAGE, Prot::RW, &mut g)
                    .unwrap();
            }
        }
        self.domain.flush(&mut g).unwrap();
    }
    #[inline]
    fn unmap(&mut self, j: usize) {
        let len = UNLINK_PAGES * PAGE;
        let table = self.domain.table();
        let n = table.unmap(Iova(unmap_base(j)), len, &mut self.gathers[j]);
        black_box(n.unwrap());
    }
    fn settle(&mut self) {
        for g in &mut self.gathers {
            self.domain.flush(g).unwrap();
        }
    }
    fn mapped(&self, j: usize, i: u64) -> bool {
        let iova = Iova(unmap_base(j) + i * PAGE);
        self.domain.table().translate(iova).is_some()
    }
}

/// `IovaState::unlink` of 256 adjacent one-page links, over the same engine
/// (the flush that follows, in `settle`, is a no-op and untimed).
struct UnlinkSide<'d, F: PtFormat> {
    mapper: DmaMapper<'d, BenchDomain<F>>,
    states: Vec<iova_core::IovaState<'d, BenchDomain<F>, Vec<iova_core::Link>>>,
}

/// IOVAs for an unlink side: room for twice the ranges of a batch, so that
/// freed ranges (and their leaf tables) come back and the arena lasts.
fn unlink_iovas() -> IovaAllocator<'static> {
    let aperture = IovaRange::new(Iova(UNMAP_BASE), 2 * UNMAP_RANGES as u64 * 2 * MIB).unwrap();
    IovaAllocator::with_capacity(IovaAllocatorConfig::new(aperture, PAGE), 64, 1).unwrap()
}

static CPU0: fn() -> usize = || 0;

impl<'d, F: PtFormat> UnlinkSide<'d, F> {
    fn new(domain: &'d BenchDomain<F>, iovas: &'d IovaAllocator<'static>) -> Self {
        Self {
            mapper: DmaMapper::new(domain, iovas, &CPU0).unwrap(),
            states: Vec::new(),
        }
    }
}

impl<F: PtFormat> UnmapSide for UnlinkSide<'_, F> {
    fn map_all(&mut self, pas: &[u64]) {
        let len = UNLINK_PAGES * PAGE;
        for _ in 0..UNMAP_RANGES {
            // 2 MiB aligned: each range alone in its leaf table, as for the others.
            let mut s = self.mapper.try_alloc(len, 2 * MIB).unwrap();
            for (i, &pa) in pas.iter().enumerate() {
                s.link(i as u64 * PAGE, PhysAddr(pa), PAGE, Prot::RW)
                    .unwrap();
            }
            s.sync().unwrap();
            self.states.push(s);
        }
    }
    #[inline]
    fn unmap(&mut self, j: usize) {
        black_box(self.states[j].unlink(0, UNLINK_PAGES * PAGE)).unwrap();
    }
    fn settle(&mut self) {
        for s in self.states.drain(..) {
            s.free().unwrap();
        }
    }
    fn mapped(&self, j: usize, i: u64) -> bool {
        let iova = Iova(self.states[j].iova().0 + i * PAGE);
        self.mapper.domain().table().translate(iova).is_some()
    }
}

/// aarch64-paging: one `map_range` of the whole range without
/// `Attributes::VALID`, its way of making entries invalid.
struct ArmSide(RootTable<ArmFrames>);

impl UnmapSide for ArmSide {
    fn map_all(&mut self, pas: &[u64]) {
        for j in 0..UNMAP_RANGES {
            for (i, &pa) in pas.iter().enumerate() {
                arm_map(&mut self.0, unmap_base(j) + i as u64 * PAGE, pa);
            }
        }
    }
    #[inline]
    fn unmap(&mut self, j: usize) {
        let base = unmap_base(j) as usize;
        let region = MemoryRegion::new(base, base + (UNLINK_PAGES * PAGE) as usize);
        self.0
            .map_range(
                &region,
                PhysicalAddress(0),
                Attributes::empty(),
                Constraints::empty(),
            )
            .unwrap();
    }
    fn settle(&mut self) {}
    fn mapped(&self, j: usize, i: u64) -> bool {
        let va = (unmap_base(j) + i * PAGE) as usize;
        let mut valid = false;
        self.0
            .walk_range(
                &MemoryRegion::new(va, va + PAGE as usize),
                &mut |_, d, _| {
                    valid |= d.is_valid();
                    Ok(())
                },
            )
            .unwrap();
        valid
    }
}

/// The `x86_64` crate: `Mapper::unmap` of each page (flush ignored).
struct X86Side(X86);

impl UnmapSide for X86Side {
    fn map_all(&mut self, pas: &[u64]) {
        for j in 0..UNMAP_RANGES {
            for (i, &pa) in pas.iter().enumerate() {
                x86_map(&mut self.0, unmap_base(j) + i as u64 * PAGE, pa);
            }
        }
    }
    #[inline]
    fn unmap(&mut self, j: usize) {
        for i in 0..UNLINK_PAGES {
            let va = VirtAddr::new(unmap_base(j) + i * PAGE);
            let page = Page::<Size4KiB>::containing_address(va);
            self.0.mapper.unmap(page).unwrap().1.ignore();
        }
    }
    fn settle(&mut self) {}
    fn mapped(&self, j: usize, i: u64) -> bool {
        let va = VirtAddr::new(unmap_base(j) + i * PAGE);
        self.0.mapper.translate_addr(va).is_some()
    }
}

/// The cells of the comparison, in the order they are reported.
const UNMAP_CELLS: [&str; 6] = [
    "ours PageTable::unmap, LPAE s1",
    "ours PageTable::unmap, x86-64",
    "ours IovaState::unlink, LPAE s1",
    "ours IovaState::unlink, x86-64",
    "aarch64-paging",
    "x86_64 crate",
];
/// Index of the first peer in `UNMAP_CELLS`.
const UNMAP_PEERS: usize = 4;

/// Nanoseconds per unmap of one 256-page range: `UNMAP_BATCHES` batches of
/// `UNMAP_RANGES` timed unmaps, each batch mapped and settled untimed.
fn time_unmap(side: &mut dyn UnmapSide, pas: &[u64]) -> f64 {
    let mut total = Duration::ZERO;
    for _ in 0..UNMAP_BATCHES {
        side.map_all(pas);
        let start = Instant::now();
        for j in 0..UNMAP_RANGES {
            side.unmap(j);
        }
        total += start.elapsed();
        side.settle();
    }
    total.as_nanos() as f64 / (UNMAP_BATCHES * UNMAP_RANGES) as f64
}

/// Per round, ns per 256-page unmap of every cell; the cells take turns at
/// going first (round `r` starts at cell `r mod 6`), so that a slow phase of
/// the shared machine hits all of them alike.
fn paired_unmap(arena: &'static Arena) -> Vec<[f64; 6]> {
    let mut rng = Rng(0x1234_5678);
    let pas: Vec<u64> = (0..UNLINK_PAGES)
        .map(|_| TARGET_PA_BASE + (rng.next() & ((64 * GIB - 1) & !(PAGE - 1))))
        .collect();
    arena.reset();
    let domains = (
        bench_domain(LpaeS1::va48(), arena),
        bench_domain(X86_64::four_level(), arena),
        bench_domain(LpaeS1::va48(), arena),
        bench_domain(X86_64::four_level(), arena),
    );
    let iovas = [unlink_iovas(), unlink_iovas()];
    let mut sides: [Box<dyn UnmapSide>; 6] = [
        Box::new(EngineSide::new(&domains.0)),
        Box::new(EngineSide::new(&domains.1)),
        Box::new(UnlinkSide::new(&domains.2, &iovas[0])),
        Box::new(UnlinkSide::new(&domains.3, &iovas[1])),
        Box::new(ArmSide(arm_new(arena))),
        Box::new(X86Side(x86_new(arena))),
    ];
    // Every side maps and then unmaps exactly the 256 pages of each range.
    for (side, name) in sides.iter_mut().zip(UNMAP_CELLS) {
        side.map_all(&pas);
        for j in 0..UNMAP_RANGES {
            assert!((0..UNLINK_PAGES).all(|i| side.mapped(j, i)), "{name}");
            side.unmap(j);
            assert!((0..UNLINK_PAGES).all(|i| !side.mapped(j, i)), "{name}");
        }
        side.settle();
    }
    let mut rounds = Vec::with_capacity(UNMAP_ROUNDS);
    for r in 0..UNMAP_ROUNDS {
        let mut t = [0.0; 6];
        for k in 0..6 {
            let c = (r + k) % 6;
            t[c] = time_unmap(&mut *sides[c], &pas);
        }
        rounds.push(t);
    }
    drop(sides);
    drop(domains);
    arena.reset();
    rounds
}

// ---------------------------------------------------------------------------
// 4. IOVA alloc + free pairs with many live allocations.
// ---------------------------------------------------------------------------

const LIVE: [usize; 6] = [0, 10, 100, 1000, 10_000, 100_000];
const ALLOC_SAMPLES: usize = 30;

/// The paths measured: name, CPU index (1 has no cache: the backing allocator),
/// size.
const ALLOC_PATHS: [(&str, usize, u64); 3] = [
    ("4k_cpu0_cached", 0, PAGE),
    ("4k_uncached_cpu", 1, PAGE),
    ("256k_backing", 0, 256 * KIB),
];

/// An allocator holding `live` allocations of 4-64 KiB, interleaved with as
/// many free holes (allocate `2 live`, free every other one, flush the caches).
fn allocator_with_live(live: usize) -> (IovaAllocator<'static>, Vec<IovaAlloc>) {
    let aperture = IovaRange::new(Iova(4 * GIB), 1 << 42).unwrap();
    let iovas =
        IovaAllocator::with_capacity(IovaAllocatorConfig::new(aperture, PAGE), 4 * live + 4096, 1)
            .unwrap();
    let mut rng = Rng(0xdead_beef ^ live as u64);
    let mut kept = Vec::with_capacity(live);
    for _ in 0..live {
        let size = (1 + rng.next() % 16) * PAGE;
        kept.push(iovas.alloc(0, size, PAGE).unwrap());
        let hole = iovas.alloc(0, (1 + rng.next() % 16) * PAGE, PAGE).unwrap();
        iovas.free(0, hole).unwrap();
    }
    iovas.flush_caches();
    (iovas, kept)
}

fn bench_iova(c: &mut Criterion) {
    let mut group = c.benchmark_group("iova_alloc_free");
    group.warm_up_time(Duration::from_millis(300));
    group.measurement_time(Duration::from_millis(700));
    group.sample_size(ALLOC_SAMPLES);
    for live in LIVE {
        let (iovas, kept) = allocator_with_live(live);
        for (path, cpu, size) in ALLOC_PATHS {
            let id = format!("iova/{path}/{live}");
            group.bench_function(BenchmarkId::new(path, live), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let a = iovas.alloc(cpu, black_box(size), PAGE).unwrap();
                        iovas.free(cpu, black_box(a)).unwrap();
                    }
                    record(&id, iters, start.elapsed())
                })
            });
        }
        for a in kept {
            iovas.free(0, a).unwrap();
        }
    }
    group.finish();
}

// ---------------------------------------------------------------------------
// Machine and summary.
// ---------------------------------------------------------------------------

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')))
        .map_or("unknown CPU".to_owned(), |(_, m)| m.trim().to_owned());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let rustc =
        std::process::Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map_or("rustc (unknown version)".to_owned(), |s| {
                s.trim().to_owned()
            });
    format!("{model}, {cpus} logical CPUs; {rustc}")
}

fn fmt_ns(ns: Option<f64>) -> String {
    match ns {
        None => "-".to_owned(),
        Some(v) if v >= 1e6 => format!("{:.2} ms", v / 1e6),
        Some(v) if v >= 1e4 => format!("{:.1} us", v / 1e3),
        Some(v) => format!("{v:.1} ns"),
    }
}

fn fmt_ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".to_owned(),
    }
}

fn print_summary(paired: &[(&str, usize, f64, f64, f64)], unmap: &[[f64; 6]]) {
    println!();
    println!("==================== summary (medians of this run) ====================");
    println!("machine: {}", machine());
    println!();
    println!("1. map N scattered 4 KiB pages into a fresh table (time per N pages; per page)");
    println!("   criterion medians; ours-g1 = ours with a fresh gather per map (no range merging)");
    println!(
        "{:<8} {:>7} | {:>10} {:>8} | {:>8} | {:>10} {:>8} | {:>6} {:>8}  theirs",
        "format", "N", "ours", "/page", "ours-g1", "theirs", "/page", "ratio", "g1-ratio"
    );
    for (format, theirs) in FORMATS {
        for n in MAP_NS {
            let s = map_sample_size(n);
            let o = median_ns(&format!("map/{format}/ours/{n}"), s);
            let o1 = median_ns(&format!("map/{format}/ours-gather-per-map/{n}"), s);
            let t = median_ns(&format!("map/{format}/{theirs}/{n}"), s);
            println!(
                "{:<8} {:>7} | {:>10} {:>8} | {:>8} | {:>10} {:>8} | {:>6} {:>8}  {theirs}",
                format,
                n,
                fmt_ns(o),
                fmt_ns(o.map(|v| v / n as f64)),
                fmt_ns(o1.map(|v| v / n as f64)),
                fmt_ns(t),
                fmt_ns(t.map(|v| v / n as f64)),
                fmt_ratio(o, t),
                fmt_ratio(o1, t),
            );
        }
    }
    if !paired.is_empty() {
        println!();
        println!(
            "   paired: {PAIRED_ROUNDS} alternating rounds of ours and theirs, ~64 Ki page maps each"
        );
        println!(
            "{:<8} {:>7} | {:>10} {:>10} | {:>6}",
            "format", "N", "ours/page", "theirs/page", "ratio"
        );
        let mut met = true;
        for &(format, n, o, t, r) in paired {
            met &= r < 1.0;
            println!(
                "{:<8} {:>7} | {:>10} {:>10} | {:>6.2}",
                format,
                n,
                fmt_ns(Some(o / n as f64)),
                fmt_ns(Some(t / n as f64)),
                r
            );
        }
        println!(
            "   target (ours faster than both at every N, paired ratios): {}",
            if met { "met" } else { "NOT met" }
        );
    }
    println!();
    let link = median_ns("link1g/link", LINK_SAMPLES);
    let link_sync = median_ns("link1g/link+sync", LINK_SAMPLES);
    println!("2. link a 2 MiB-aligned 1 GiB range (one link) over the fake LPAE domain");
    println!(
        "   entries written: {} x 2 MiB blocks; link {} per GiB; link+sync {} per GiB ({} per entry)",
        ENTRIES_1G.load(Ordering::Relaxed),
        fmt_ns(link),
        fmt_ns(link_sync),
        fmt_ns(link_sync.map(|v| v / 512.0)),
    );
    println!();
    println!("3. unlink 256 contiguous 4 KiB pages in one call (fake LPAE domain)");
    for name in ["IovaState::unlink", "IovaState::sync", "PageTable::unmap"] {
        let v = median_ns(&format!("unlink/{name}"), UNLINK_SAMPLES);
        println!(
            "   {:<18} {:>10}   ratio to Linux generic pt ({LINUX_UNMAP_256_NS} ns, i7-12700): {}",
            name,
            fmt_ns(v),
            fmt_ratio(v, Some(LINUX_UNMAP_256_NS))
        );
    }
    print_unmap_summary(unmap);
    println!();
    println!("4. IOVA alloc+free pair (median ns per pair) vs live allocations held");
    print!("   {:>8}", "live");
    for (path, _, _) in ALLOC_PATHS {
        print!(" | {:>16} {:>6}", path, "x0");
    }
    println!();
    for live in LIVE {
        print!("   {live:>8}");
        for (path, _, _) in ALLOC_PATHS {
            let v = median_ns(&format!("iova/{path}/{live}"), ALLOC_SAMPLES);
            let base = median_ns(&format!("iova/{path}/0"), ALLOC_SAMPLES);
            print!(" | {:>16} {:>6}", fmt_ns(v), fmt_ratio(v, base));
        }
        println!();
    }
    print!("   {:>8}", "max/min");
    for (path, _, _) in ALLOC_PATHS {
        let vals: Vec<f64> = LIVE
            .iter()
            .filter_map(|l| median_ns(&format!("iova/{path}/{l}"), ALLOC_SAMPLES))
            .collect();
        let max = vals.iter().copied().fold(f64::NAN, f64::max);
        let min = vals.iter().copied().fold(f64::NAN, f64::min);
        print!(" | {:>16} {:>6}", "", fmt_ratio(Some(max), Some(min)));
    }
    println!();
    println!("=========================================================================");
}

/// The median and the quartiles of `v`, and its extremes.
fn spread(mut v: Vec<f64>) -> [f64; 5] {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    [at(0.5), at(0.25), at(0.75), v[0], v[v.len() - 1]]
}

fn print_unmap_summary(rounds: &[[f64; 6]]) {
    if rounds.is_empty() {
        return;
    }
    println!();
    println!(
        "3b. unmap 256 contiguous 4 KiB pages (one range), paired: {UNMAP_ROUNDS} rounds, \
         {} unmaps per cell per round",
        UNMAP_BATCHES * UNMAP_RANGES
    );
    println!("    ratio: per-round ours / peer; median [quartiles] (min-max)");
    println!(
        "{:<33} {:>9} {:>8} | {:>28} | {:>28} | {:>28}",
        "cell", "median", "/page", "/ aarch64-paging", "/ x86_64 crate", "/ faster peer"
    );
    let ratio = |c: usize, peer: Option<usize>| {
        spread(
            rounds
                .iter()
                .map(|t| t[c] / peer.map_or(t[UNMAP_PEERS].min(t[UNMAP_PEERS + 1]), |p| t[p]))
                .collect(),
        )
    };
    let fmt = |[m, q1, q3, lo, hi]: [f64; 5]| format!("{m:.2} [{q1:.2}-{q3:.2}] ({lo:.2}-{hi:.2})");
    let mut met = true;
    for (c, name) in UNMAP_CELLS.iter().enumerate() {
        let ns = spread(rounds.iter().map(|t| t[c]).collect())[0];
        let ours = c < UNMAP_PEERS;
        let faster = ratio(c, None);
        met &= !ours || faster[0] <= 0.5;
        println!(
            "{:<33} {:>9} {:>8} | {:>28} | {:>28} | {:>28}",
            name,
            fmt_ns(Some(ns)),
            fmt_ns(Some(ns / UNLINK_PAGES as f64)),
            fmt(ratio(c, Some(UNMAP_PEERS))),
            fmt(ratio(c, Some(UNMAP_PEERS + 1))),
            if ours { fmt(faster) } else { "-".to_owned() },
        );
    }
    println!(
        "    target (every ours cell <= 0.5 of the faster peer, median ratio): {}",
        if met { "met" } else { "NOT met" }
    );
}

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    if bench_mode {
        println!("machine: {}", machine());
    }
    let arena = Arena::leak();
    let mut c = Criterion::default().configure_from_args();
    bench_map(&mut c, arena);
    bench_link_1g(&mut c);
    bench_unlink_256(&mut c);
    bench_iova(&mut c);
    c.final_summary();
    if bench_mode {
        // The paired comparisons follow criterion's filter (a substring of
        // their group's name), so that one can be run alone.
        let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
        let wanted = |group: &str| filter.as_deref().is_none_or(|f| group.contains(f));
        let paired = if wanted("map_scattered_4k") {
            paired_map(arena)
        } else {
            Vec::new()
        };
        let unmap = if wanted("unlink_256x4k") {
            paired_unmap(arena)
        } else {
            Vec::new()
        };
        print_summary(&paired, &unmap);
    }
}

//! Several threads mapping into one domain at once.
//!
//! - [`shared_mapper_threads_link_and_unlink_disjoint_ranges`]: 4 threads share
//!   one [`DmaMapper`] (one allocator, so their IOVA ranges interleave inside
//!   the same 2 MiB and 1 GiB regions and share tables) and allocate, link,
//!   sync, unlink and destroy states of random sizes, 2 MiB-aligned ones
//!   included. Each thread checks its own translations as it goes; after every
//!   round the tables hold exactly the union of the threads' links, and no
//!   page-table frame is lost, leaked or freed twice.
//! - [`racing_table_installs_keep_exactly_one_table`]: threads map interleaved
//!   4 KiB pages of tables that do not exist yet, straight into a
//!   [`PageTable`], so they race to install the same tables; the losers of the
//!   compare-and-swap must free their table. Then they unmap whole tables at
//!   once, freeing tables under the same parent concurrently.
#![cfg(feature = "fakes")]

use std::cell::Cell;
use std::sync::Barrier;
use std::thread;

use iova_core::dma::DefaultLinks;
use iova_core::fakes::{Access, FakeDomain, FakeFrames, Fault, Leaf, count_tables, fake_domain};
use iova_core::formats::lpae::LpaeS1;
use iova_core::formats::x86_64::X86_64;
use iova_core::iova_alloc::{IovaAllocator, IovaAllocatorConfig, extent_slots_needed};
use iova_core::pt::Translation;
use iova_core::{
    DmaMapper, IotlbGather, Iova, IovaRange, IovaState, Link, PageTable, PhysAddr, Prot, PtFormat,
};

const THREADS: usize = 4;
const G: u64 = 0x1000;
const M2: u64 = 0x20_0000;
const G1: u64 = 0x4000_0000;
const PA_BASE: u64 = 0x8000_0000;

type State<'a, F> = IovaState<'a, FakeDomain<F>, DefaultLinks>;

thread_local! {
    static CPU: Cell<usize> = const { Cell::new(0) };
}

/// Each worker thread sets its own CPU index, so the allocator's per-CPU
/// caches are exercised too.
static CURRENT_CPU: fn() -> usize = || CPU.with(Cell::get);

fn assert_send<T: Send>() {}
fn assert_sync<T: Sync>() {}

#[test]
fn mapper_domain_allocator_and_states_can_be_shared() {
    assert_sync::<DmaMapper<'static, FakeDomain<LpaeS1>>>();
    assert_send::<DmaMapper<'static, FakeDomain<LpaeS1>>>();
    assert_sync::<FakeDomain<X86_64>>();
    assert_sync::<IovaAllocator<'static>>();
    assert_send::<State<'static, LpaeS1>>();
    assert_sync::<PageTable<LpaeS1, &'static FakeFrames>>();
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Permissions as the format stores them.
fn eprot<F: PtFormat>(fmt: &F, prot: Prot) -> Prot {
    let d = fmt.levels() - 1;
    fmt.leaf_prot(d, fmt.encode_leaf(d, PhysAddr(0), prot))
}

/// The leaves the engine writes for `link` of a state at `base`: the largest
/// of 1 GiB, 2 MiB and 4 KiB that fits at each step (both formats here have all
/// three).
fn leaves_of<F: PtFormat>(fmt: &F, base: u64, l: &Link, out: &mut Vec<Leaf>) {
    let start = l.offset & !(G - 1);
    let stop = (l.offset + l.len).div_ceil(G) * G;
    let (mut a, end) = (base + start, base + stop);
    let mut p = l.pa.0 & !(G - 1);
    while a < end {
        let size = [G1, M2, G]
            .into_iter()
            .find(|&s| (a | p) % s == 0 && end - a >= s)
            .unwrap();
        out.push(Leaf {
            iova: Iova(a),
            pa: PhysAddr(p),
            size,
            prot: eprot(fmt, l.prot),
        });
        a += size;
        p += size;
    }
}

/// A thread's own state, with the links the thread believes it holds.
struct Owned<'a, F: PtFormat> {
    state: State<'a, F>,
    links: Vec<Link>,
}

struct Worker<'a, F: PtFormat> {
    mapper: DmaMapper<'a, FakeDomain<F>>,
    rng: Rng,
    owned: Vec<Owned<'a, F>>,
}

impl<'a, F: PtFormat> Worker<'a, F> {
    fn domain(&self) -> &'a FakeDomain<F> {
        self.mapper.domain()
    }

    fn pa_for(&mut self, iova: u64) -> u64 {
        if self.rng.below(2) == 0 {
            // Congruent modulo 2 MiB: blocks where the span allows.
            PA_BASE + self.rng.below(512) * M2 + iova % M2
        } else {
            PA_BASE + self.rng.below(1 << 20) * G + iova % G
        }
    }

    fn prot(&mut self) -> Prot {
        [Prot::RW, Prot::READ, Prot::RW | Prot::NOEXEC][self.rng.below(3) as usize]
    }

    /// The device sees `l` of a synced state at `base` exactly.
    fn check_linked(&mut self, base: u64, l: &Link) {
        let mid = self.rng.below(l.len);
        let prot = eprot(self.domain().table().format(), l.prot);
        for off in [0, mid, l.len - 1] {
            let iova = Iova(base + l.offset + off);
            let pa = PhysAddr(l.pa.0 + off);
            let d = self.domain();
            assert_eq!(d.device_access(iova, Access::Read), Ok(pa), "{l:x?}");
            let write = d.device_access(iova, Access::Write);
            if prot.contains(Prot::WRITE) {
                assert_eq!(write, Ok(pa), "{l:x?}");
            } else {
                assert_eq!(write, Err(Fault::Permission(iova, Access::Write)));
            }
        }
    }

    /// Nothing translates `l`'s span any more (after a sync).
    fn check_gone(&mut self, base: u64, l: &Link) {
        let start = l.offset & !(G - 1);
        let stop = (l.offset + l.len).div_ceil(G) * G;
        let mid = start + self.rng.below(stop - start);
        for off in [start, mid, stop - 1] {
            let iova = Iova(base + off);
            assert_eq!(
                self.domain().device_access(iova, Access::Read),
                Err(Fault::Translation(iova)),
                "stale translation after unlink + sync of {l:x?}"
            );
        }
    }

    fn link(&mut self, i: usize, offset: u64, len: u64) {
        let base = self.owned[i].state.iova().0;
        let pa = self.pa_for(base + offset);
        let prot = self.prot();
        let o = &mut self.owned[i];
        o.state.link(offset, PhysAddr(pa), len, prot).unwrap();
        let l = Link {
            offset,
            len,
            pa: PhysAddr(pa),
            prot,
        };
        let at = o.links.partition_point(|x| x.offset < offset);
        o.links.insert(at, l);
    }

    fn alloc_and_fill(&mut self) {
        let (size, align) = match self.rng.below(4) {
            0 => ((1 + self.rng.below(16)) * G - self.rng.below(G), G),
            1 => (G * (1 + self.rng.below(64)), 0x1_0000),
            _ => (M2 * (1 + self.rng.below(2)) + G * self.rng.below(3), M2),
        };
        let state = self.mapper.try_alloc(size, align).unwrap();
        self.owned.push(Owned {
            state,
            links: Vec::new(),
        });
        let i = self.owned.len() - 1;
        // 1 to 4 pieces cut at granule boundaries; the first may start inside one.
        let head = if self.rng.below(3) == 0 {
            self.rng.below(G.min(size))
        } else {
            0
        };
        let mut cuts: Vec<u64> = (0..self.rng.below(4))
            .map(|_| self.rng.below(size.div_ceil(G)) * G)
            .filter(|&c| c > head && c < size)
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut at = head;
        for end in cuts.into_iter().chain([size]) {
            self.link(i, at, end - at);
            at = end;
        }
        self.sync_and_check(i);
    }

    fn sync_and_check(&mut self, i: usize) {
        self.owned[i].state.sync().unwrap();
        let base = self.owned[i].state.iova().0;
        assert_eq!(self.owned[i].state.links(), &self.owned[i].links[..]);
        for l in self.owned[i].links.clone() {
            self.check_linked(base, &l);
        }
    }

    fn unlink_some(&mut self) {
        let i = self.rng.below(self.owned.len() as u64) as usize;
        let n = self.owned[i].links.len();
        if n == 0 {
            return;
        }
        // One link, or a run of adjacent ones.
        let first = self.rng.below(n as u64) as usize;
        let mut last = first;
        while last + 1 < n
            && self.rng.below(2) == 0
            && self.owned[i].links[last + 1].offset
                == self.owned[i].links[last].offset + self.owned[i].links[last].len
        {
            last += 1;
        }
        let o = &mut self.owned[i];
        let (from, to) = (o.links[first], o.links[last]);
        o.state
            .unlink(from.offset, to.offset + to.len - from.offset)
            .unwrap();
        let gone: Vec<Link> = o.links.drain(first..=last).collect();
        o.state.sync().unwrap();
        let base = o.state.iova().0;
        for l in gone {
            self.check_gone(base, &l);
        }
    }

    /// Links the first granule-aligned hole of a state, if it has one.
    fn relink(&mut self) {
        let i = self.rng.below(self.owned.len() as u64) as usize;
        let o = &self.owned[i];
        let size = o.state.size();
        let mut at = 0;
        let mut hole = None;
        for l in o.links.iter().chain([&Link {
            offset: size.div_ceil(G) * G,
            len: 0,
            pa: PhysAddr(0),
            prot: Prot::RW,
        }]) {
            let start = l.offset & !(G - 1);
            if start > at {
                hole = Some((at, start.min(size)));
                break;
            }
            at = (l.offset + l.len).div_ceil(G) * G;
        }
        if let Some((from, to)) = hole {
            self.link(i, from, to - from);
            self.sync_and_check(i);
        }
    }

    fn run(&mut self, iters: usize) {
        for _ in 0..iters {
            match self.rng.below(10) {
                0..=3 if self.owned.len() < 3 => self.alloc_and_fill(),
                4..=5 if !self.owned.is_empty() => self.unlink_some(),
                6..=7 if !self.owned.is_empty() => self.relink(),
                8 if !self.owned.is_empty() => {
                    let i = self.rng.below(self.owned.len() as u64) as usize;
                    let o = self.owned.swap_remove(i);
                    o.state.destroy().unwrap();
                }
                _ if !self.owned.is_empty() => {
                    let i = self.rng.below(self.owned.len() as u64) as usize;
                    let base = self.owned[i].state.iova().0;
                    for l in self.owned[i].links.clone() {
                        self.check_linked(base, &l);
                    }
                }
                _ => {}
            }
        }
        for o in &mut self.owned {
            o.state.sync().unwrap();
        }
    }
}

/// The tables hold exactly the threads' links, and the frames are exactly the
/// reachable tables.
/// Returns the 2 MiB blocks in the tables and how many 2 MiB regions hold
/// ranges of more than one thread.
fn check_union<F: PtFormat>(
    domain: &FakeDomain<F>,
    frames: &FakeFrames,
    owned: &[Vec<Owned<'_, F>>],
) -> (usize, usize) {
    let fmt = domain.table().format();
    let mut want = Vec::new();
    let mut ranges = Vec::new();
    let mut owners = std::collections::BTreeMap::<u64, std::collections::BTreeSet<usize>>::new();
    for (t, mine) in owned.iter().enumerate() {
        for o in mine {
            assert!(!o.state.needs_sync());
            assert_eq!(o.state.links(), &o.links[..]);
            let r = o.state.range();
            ranges.push((r.start.0, r.end.0));
            for region in r.start.0 / M2..=(r.end.0 - 1) / M2 {
                owners.entry(region).or_default().insert(t);
            }
            for l in &o.links {
                leaves_of(fmt, r.start.0, l, &mut want);
            }
        }
    }
    ranges.sort_unstable();
    assert!(
        ranges.windows(2).all(|w| w[0].1 <= w[1].0),
        "IOVA ranges overlap"
    );
    want.sort_unstable_by_key(|l| l.iova);
    let got = domain.leaves();
    assert!(
        got == want,
        "tables differ from the union of the threads' links"
    );
    assert_eq!(frames.bad_frees(), 0);
    assert_eq!(frames.live(), domain.tables(), "page-table frames leaked");
    (
        got.iter().filter(|l| l.size == M2).count(),
        owners.values().filter(|t| t.len() > 1).count(),
    )
}

/// Returns the 2 MiB blocks seen and the 2 MiB regions seen shared by threads.
fn shared_mapper_run<F: PtFormat + Copy>(
    fmt: F,
    seed: u64,
    rounds: usize,
    iters: usize,
) -> (usize, usize) {
    let (domain, frames) = fake_domain(fmt);
    // Ranges on both sides of a 1 GiB boundary.
    let aperture = IovaRange::new(Iova(G1 - 0x800_0000), 0x1000_0000).unwrap();
    let iovas = IovaAllocator::with_capacity(
        IovaAllocatorConfig::new(aperture, G),
        extent_slots_needed(3 * THREADS, 0, THREADS),
        THREADS,
    )
    .unwrap();
    let (mut blocks, mut shared) = (0, 0);
    {
        let mapper = DmaMapper::new(&domain, &iovas, &CURRENT_CPU).unwrap();
        let mut owned: Vec<Vec<Owned<'_, F>>> = (0..THREADS).map(|_| Vec::new()).collect();
        for round in 0..rounds {
            let barrier = Barrier::new(THREADS);
            owned = thread::scope(|s| {
                let handles: Vec<_> = owned
                    .drain(..)
                    .enumerate()
                    .map(|(t, mine)| {
                        let barrier = &barrier;
                        s.spawn(move || {
                            CPU.with(|c| c.set(t));
                            let mut w = Worker {
                                mapper,
                                rng: Rng(seed
                                    ^ ((round as u64) << 32)
                                    ^ ((t as u64 + 1) * 0x9e37_79b9)),
                                owned: mine,
                            };
                            barrier.wait();
                            w.run(iters);
                            w.owned
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let (b, sh) = check_union(&domain, &frames, &owned);
            blocks += b;
            shared += sh;
        }
        for o in owned.into_iter().flatten() {
            o.state.destroy().unwrap();
        }
        assert!(domain.leaves().is_empty());
        assert_eq!(frames.live(), domain.tables());
        assert_eq!(iovas.stats().live_allocations, 0);
    }
    drop(iovas);
    drop(domain);
    assert_eq!(frames.live(), 0);
    assert_eq!(frames.bad_frees(), 0);
    (blocks, shared)
}

/// Operations per thread and run (Miri is about 1000 times slower).
const OPS: usize = if cfg!(miri) { 8 } else { 300 };

#[test]
fn shared_mapper_threads_link_and_unlink_disjoint_ranges() {
    let (mut blocks, mut shared) = (0, 0);
    for seed in 0..if cfg!(miri) { 1 } else { 12u64 } {
        let seed = 0x5eed_0000_0001 + seed * 0x1234_5678_9abc;
        for (b, s) in [
            shared_mapper_run(LpaeS1::va48(), seed, 6, OPS),
            shared_mapper_run(X86_64::four_level(), seed, 6, OPS),
        ] {
            blocks += b;
            shared += s;
        }
    }
    eprintln!("2 MiB blocks seen: {blocks}; 2 MiB regions shared by threads: {shared}");
    // Whether the generator reached these depends on how many operations ran;
    // Miri runs too few to count on it (it is there for undefined behaviour).
    if !cfg!(miri) {
        assert!(blocks > 0, "no 2 MiB block was ever mapped");
        assert!(shared > 0, "the threads never shared a 2 MiB region");
    }
}

/// 2 MiB regions raced over; the span straddles a 512 GiB boundary, so two
/// tables are raced over at every level below the root.
const REGIONS: u64 = 64;
const RACE_BASE: u64 = (512 << 30) - (REGIONS / 2) * M2;
/// Pages each thread maps in each region.
const PAGES_PER_REGION: u64 = 4;

fn race_round<F: PtFormat + Copy>(fmt: F, frames: &FakeFrames) -> usize {
    let table = PageTable::new(fmt, frames).unwrap();
    let root_only = frames.live();
    let allocated = frames.total_allocated();
    let pa_of = |iova: u64| PA_BASE + (iova - RACE_BASE) * 3;
    let page = |t: usize, k: u64| {
        // Consecutive pages of a thread go to consecutive regions, and
        // neighbouring pages of a region belong to different threads.
        let region = k % REGIONS;
        let slot = (k / REGIONS) * THREADS as u64 + t as u64;
        RACE_BASE + region * M2 + slot * G
    };
    let barrier = Barrier::new(THREADS);
    thread::scope(|s| {
        for t in 0..THREADS {
            let (table, barrier) = (&table, &barrier);
            s.spawn(move || {
                let mut g = IotlbGather::new();
                barrier.wait();
                for k in 0..REGIONS * PAGES_PER_REGION {
                    let iova = page(t, k);
                    table
                        .map(Iova(iova), PhysAddr(pa_of(iova)), G, Prot::RW, &mut g)
                        .unwrap();
                }
                assert_eq!(g.freed_tables(), 0);
            });
        }
    });
    let prot = eprot(&fmt, Prot::RW);
    for t in 0..THREADS {
        for k in 0..REGIONS * PAGES_PER_REGION {
            let iova = page(t, k);
            assert_eq!(
                table.translate(Iova(iova + 8)),
                Some(Translation {
                    pa: PhysAddr(pa_of(iova) + 8),
                    prot,
                    page_size: G,
                })
            );
        }
    }
    // Root, two tables at each of the two middle levels, one per region below.
    let expected = 1 + 2 + 2 + REGIONS as usize;
    assert_eq!(
        count_tables(&fmt, frames, table.root()),
        expected,
        "a table was installed twice or lost"
    );
    assert_eq!(
        frames.live(),
        root_only + expected - 1,
        "a lost race leaked its table"
    );
    assert_eq!(frames.bad_frees(), 0);
    let lost_races = frames.total_allocated() - allocated - (expected - 1);

    // Each thread unmaps whole regions (every fourth): the regions' tables are
    // detached from the same parents at once.
    thread::scope(|s| {
        for t in 0..THREADS {
            let (table, barrier) = (&table, &barrier);
            s.spawn(move || {
                let mut g = IotlbGather::new();
                barrier.wait();
                let mine: Vec<u64> = (0..REGIONS)
                    .filter(|r| r % THREADS as u64 == t as u64)
                    .collect();
                for &r in &mine {
                    let bytes = table.unmap(Iova(RACE_BASE + r * M2), M2, &mut g).unwrap();
                    assert_eq!(bytes, PAGES_PER_REGION * THREADS as u64 * G);
                }
                assert_eq!(g.freed_tables(), mine.len());
                // SAFETY: no hardware walks this table, and no software walker
                // runs while the threads unmap.
                unsafe { table.release_tables(&mut g) };
            });
        }
    });
    assert_eq!(table.translate(Iova(page(0, 0))), None);
    assert_eq!(count_tables(&fmt, frames, table.root()), 5);
    assert_eq!(frames.live(), root_only + 4);
    assert_eq!(frames.bad_frees(), 0);
    drop(table);
    assert_eq!(frames.live(), 0);
    lost_races
}

#[test]
fn racing_table_installs_keep_exactly_one_table() {
    let frames = FakeFrames::with_capacity(8 << 20);
    let mut lost = 0;
    for _ in 0..if cfg!(miri) { 2 } else { 40 } {
        lost += race_round(LpaeS1::va48(), &frames);
        lost += race_round(X86_64::four_level(), &frames);
    }
    eprintln!("install races lost (and their tables freed): {lost}");
    if !cfg!(miri) && thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
        assert!(lost > 0, "the threads never raced to install a table");
    }
}

//! Deferred invalidation: the flush queue's limits, reuse rules, exhaustion
//! and failures, against the fake domain (whose IOTLB keeps what was not
//! flushed, so a stale translation shows).
#![cfg(feature = "fakes")]

use std::sync::atomic::{AtomicU64, Ordering};

use iova_core::fakes::{Access, FakeDomain, FakeFrames, Fault, fake_domain};
use iova_core::flush_queue::{DeferLimits, DeferredSlot, FlushQueue};
use iova_core::formats::lpae::LpaeS1;
use iova_core::iova_alloc::{IovaAllocError, IovaAllocator, IovaAllocatorConfig};
use iova_core::{DmaMapper, Error, Iova, IovaRange, PhysAddr, Prot};

const K4: u64 = 0x1000;
const M2: u64 = 0x20_0000;
const PA: u64 = 0x8000_0000;

static CPU0: fn() -> usize = || 0;

struct Env {
    domain: FakeDomain<LpaeS1>,
    frames: std::sync::Arc<FakeFrames>,
    iovas: IovaAllocator<'static>,
    clock: TestClock,
}

/// A clock the test sets.
struct TestClock(AtomicU64);

impl iova_core::flush_queue::Clock for TestClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

fn rig(window: u64) -> Env {
    let (domain, frames) = fake_domain(LpaeS1::va48());
    let aperture = IovaRange::new(Iova(0x40_0000_0000), window).unwrap();
    let iovas =
        IovaAllocator::with_capacity(IovaAllocatorConfig::new(aperture, K4), 256, 1).unwrap();
    Env {
        domain,
        frames,
        iovas,
        clock: TestClock(AtomicU64::new(0)),
    }
}

impl Env {
    fn queue(&self, limits: DeferLimits, slots: usize) -> FlushQueue<'_> {
        FlushQueue::with_capacity(limits, &self.clock, slots)
    }
    fn mapper<'a>(&'a self, q: &'a FlushQueue<'a>) -> DmaMapper<'a, FakeDomain<LpaeS1>> {
        DmaMapper::new(&self.domain, &self.iovas, &CPU0)
            .unwrap()
            .with_flush_queue(q)
    }
    fn read(&self, iova: Iova) -> Result<PhysAddr, Fault> {
        self.domain.device_access(iova, Access::Read)
    }
    fn flushes(&self) -> usize {
        self.domain.invalidator().flushes()
    }
}

const WIDE: DeferLimits = DeferLimits {
    max_entries: 1000,
    max_bytes: u64::MAX,
    max_age: u64::MAX,
};

#[test]
fn unlinks_wait_for_one_flush_that_covers_them_all() {
    let env = rig(1 << 30);
    let q = env.queue(
        DeferLimits {
            max_entries: 8,
            ..WIDE
        },
        64,
    );
    let m = env.mapper(&q);
    let mut iovas = Vec::new();
    let mut states: Vec<_> = (0..8)
        .map(|i| {
            let mut s = m.try_alloc(K4, K4).unwrap();
            s.link(0, PhysAddr(PA + i * 3 * K4), K4, Prot::RW).unwrap();
            s.sync().unwrap();
            iovas.push(s.iova());
            s
        })
        .collect();
    let after_maps = env.flushes();
    for &iova in &iovas {
        env.read(iova).unwrap(); // cached in the fake IOTLB
    }
    // Seven destroys: their unlinks wait, and so do their IOVAs.
    for s in states.drain(..7) {
        s.destroy().unwrap();
    }
    assert_eq!(env.flushes(), after_maps, "no flush below the limit");
    assert_eq!((q.pending(), q.pending_iovas()), (7, 7));
    assert!(
        env.domain.leaves().len() == 1,
        "the entries are gone at once"
    );
    assert_eq!(
        env.read(iovas[0]),
        Ok(PhysAddr(PA)),
        "the device may still reach unlinked memory until the queue flushes"
    );
    let g = q.generation();
    // The eighth reaches max_entries: one flush for all eight.
    states.pop().unwrap().destroy().unwrap();
    assert_eq!(env.flushes(), after_maps + 1);
    assert_eq!(q.generation(), g + 1);
    assert_eq!((q.pending(), q.pending_iovas()), (0, 0));
    for &iova in &iovas {
        assert_eq!(env.read(iova), Err(Fault::Translation(iova)), "never after");
    }
    let c = q.counters();
    assert_eq!((c.deferred, c.flushes, c.by_entries), (8, 1, 1));
    assert_eq!(env.iovas.stats().live_allocations, 0, "every IOVA freed");
}

#[test]
fn an_iova_is_never_handed_out_again_before_its_flush() {
    // A window of exactly one state.
    let env = rig(4 * K4);
    let q = env.queue(WIDE, 8);
    let m = env.mapper(&q);
    let mut s = m.try_alloc(4 * K4, K4).unwrap();
    s.link(0, PhysAddr(PA), 4 * K4, Prot::RW).unwrap();
    s.sync().unwrap();
    env.read(s.iova()).unwrap();
    s.destroy().unwrap();
    assert_eq!(
        m.try_alloc(K4, K4).err(),
        Some(Error::Iova(IovaAllocError::NoSpace)),
        "the range waits in the queue"
    );
    m.flush_deferred().unwrap();
    assert_eq!(q.counters().explicit, 1);
    let again = m.try_alloc(4 * K4, K4).unwrap();
    assert_eq!(
        env.read(again.iova()),
        Err(Fault::Translation(again.iova())),
        "handed out again only once the old translation is gone"
    );
}

#[test]
fn freed_tables_wait_for_the_flush_too() {
    let env = rig(1 << 30);
    let q = env.queue(WIDE, 8);
    let m = env.mapper(&q);
    let mut s = m.try_alloc(M2, M2).unwrap();
    // Memory that is not 2 MiB aligned: 512 pages in a last-level table,
    // which the unlink of the whole 2 MiB frees.
    s.link(0, PhysAddr(PA + K4), M2, Prot::RW).unwrap();
    s.sync().unwrap();
    let tables = env.frames.live();
    s.destroy().unwrap();
    assert_eq!(
        env.frames.live(),
        tables,
        "emptied tables kept until the flush"
    );
    m.flush_deferred().unwrap();
    assert!(env.frames.live() < tables, "and released after it");
}

#[test]
fn bytes_age_and_storage_limits_each_flush() {
    // Bytes: 3 pages allowed.
    let env = rig(1 << 30);
    let q = env.queue(
        DeferLimits {
            max_bytes: 3 * K4,
            ..WIDE
        },
        64,
    );
    let m = env.mapper(&q);
    let mut s = m.try_alloc(8 * K4, K4).unwrap();
    s.link(0, PhysAddr(PA), 8 * K4, Prot::RW).unwrap();
    s.sync().unwrap();
    s.unlink(0, 8 * K4).unwrap();
    s.sync().unwrap();
    assert_eq!((q.counters().by_bytes, q.pending()), (1, 0));
    s.free().unwrap();

    // Age: the clock moves past max_age.
    let env2 = rig(1 << 30);
    let q = env2.queue(
        DeferLimits {
            max_age: 100,
            ..WIDE
        },
        64,
    );
    let m = env2.mapper(&q);
    let mut s = m.try_alloc(K4, K4).unwrap();
    s.link(0, PhysAddr(PA), K4, Prot::RW).unwrap();
    s.sync().unwrap();
    env2.clock.0.store(1000, Ordering::SeqCst);
    s.unlink(0, K4).unwrap();
    s.sync().unwrap();
    assert_eq!(q.pending(), 1, "young");
    m.flush_expired().unwrap();
    assert_eq!(q.pending(), 1, "still young: flush_expired flushes nothing");
    env2.clock.0.store(1099, Ordering::SeqCst);
    m.flush_expired().unwrap();
    assert_eq!(q.pending(), 1);
    env2.clock.0.store(1100, Ordering::SeqCst);
    m.flush_expired().unwrap();
    assert_eq!((q.pending(), q.counters().by_age), (0, 1));
    s.free().unwrap();

    // Storage: two slots; the third freed state flushes the queue and is
    // freed at once.
    let env3 = rig(1 << 30);
    let q = env3.queue(WIDE, 2);
    let m = env3.mapper(&q);
    for _ in 0..3 {
        let mut s = m.try_alloc(K4, K4).unwrap();
        s.link(0, PhysAddr(PA), K4, Prot::RW).unwrap();
        s.sync().unwrap();
        s.destroy().unwrap();
    }
    assert_eq!(q.counters().by_full, 1);
    assert_eq!(env3.iovas.stats().live_allocations, 0);
    assert_eq!(q.pending_iovas(), 0);
}

#[test]
fn relinking_an_unlinked_range_flushes_first() {
    let env = rig(1 << 30);
    let q = env.queue(WIDE, 8);
    let m = env.mapper(&q);
    let mut s = m.try_alloc(2 * K4, K4).unwrap();
    s.link(0, PhysAddr(PA), K4, Prot::RW).unwrap();
    s.link(K4, PhysAddr(PA + K4), K4, Prot::RW).unwrap();
    s.sync().unwrap();
    let iova = s.iova();
    env.read(iova).unwrap();
    s.unlink(0, K4).unwrap();
    s.sync().unwrap();
    assert_eq!(env.read(iova), Ok(PhysAddr(PA)), "stale, as allowed");
    // Elsewhere in the state: no flush needed.
    s.unlink(K4, K4).unwrap();
    assert_eq!(q.counters().flushes, 0);
    s.link(0, PhysAddr(0x9000_0000), K4, Prot::RW).unwrap();
    assert_eq!(q.counters().by_relink, 1, "the old translation went first");
    s.sync().unwrap();
    assert_eq!(env.read(iova), Ok(PhysAddr(0x9000_0000)));
    s.destroy().unwrap();
    m.flush_deferred().unwrap();
    assert_eq!(env.iovas.stats().live_allocations, 0);
}

#[test]
fn a_failed_queue_flush_keeps_everything_and_is_retried() {
    let env = rig(1 << 30);
    let q = env.queue(
        DeferLimits {
            max_entries: 2,
            ..WIDE
        },
        8,
    );
    let m = env.mapper(&q);
    let mut a = m.try_alloc(K4, K4).unwrap();
    let mut b = m.try_alloc(K4, K4).unwrap();
    for s in [&mut a, &mut b] {
        s.link(0, PhysAddr(PA), K4, Prot::RW).unwrap();
        s.sync().unwrap();
        env.read(s.iova()).unwrap();
    }
    let ia = a.iova();
    a.destroy().unwrap();
    env.domain.invalidator().fail_next_flushes(1);
    let r = b.destroy().unwrap_err();
    assert_eq!(r.error, Error::Timeout);
    assert_eq!((q.pending(), q.pending_iovas()), (2, 1));
    assert_eq!(q.counters().failed, 1);
    assert_eq!(env.read(ia), Ok(PhysAddr(PA)), "nothing was invalidated");
    let b = r.state;
    assert!(!b.is_linked());
    b.destroy().unwrap();
    assert_eq!((q.pending(), q.pending_iovas()), (0, 0));
    assert_eq!(env.read(ia), Err(Fault::Translation(ia)));
    assert_eq!(env.iovas.stats().live_allocations, 0);
}

#[test]
fn a_queue_serves_one_domain_only() {
    let env = rig(1 << 30);
    let other = rig(1 << 30);
    let q = env.queue(WIDE, 8);
    let m = env.mapper(&q);
    let mut s = m.try_alloc(K4, K4).unwrap();
    s.link(0, PhysAddr(PA), K4, Prot::RW).unwrap();
    s.sync().unwrap();
    s.unlink(0, K4).unwrap();
    let m2 = DmaMapper::new(&other.domain, &other.iovas, &CPU0)
        .unwrap()
        .with_flush_queue(&q);
    let mut t = m2.try_alloc(K4, K4).unwrap();
    t.link(0, PhysAddr(PA), K4, Prot::RW).unwrap();
    t.sync().unwrap();
    assert_eq!(t.unlink(0, K4), Err(Error::ForeignGather));
    assert_eq!(t.links().len(), 1, "nothing changed");
    assert!(other.domain.leaves().len() == 1);
    // Strict teardown through a strict mapper of its own.
    drop(t.destroy());
    s.destroy().unwrap();
    m.flush_deferred().unwrap();
}

#[test]
fn borrowed_storage_works_without_a_heap() {
    let env = rig(1 << 30);
    let mut slots = [const { DeferredSlot::new() }; 4];
    let clock = || 0u64;
    let q = FlushQueue::new(WIDE, &clock, &mut slots);
    let m = env.mapper(&q);
    for _ in 0..6 {
        let mapping = m.map(PhysAddr(PA), K4, Prot::READ).unwrap();
        m.unmap(mapping).unwrap();
    }
    // Five flushes of the queue would be wrong: two (storage full at the
    // fifth, and the explicit one).
    assert_eq!(q.counters().by_full, 1);
    m.flush_deferred().unwrap();
    assert_eq!(q.counters().flushes, 2);
    assert_eq!(env.iovas.stats().live_allocations, 0);
}

/// Random link / unlink / sync / destroy / flush over several states: the
/// device never reaches memory outside what the model allows (live links,
/// or unlinks of the current queue generation), and no IOVA of a waiting
/// range is handed out.
#[test]
fn random_sequences_keep_the_window_and_the_reuse_rule() {
    let (seeds, steps): (u64, u32) = if cfg!(miri) { (2, 150) } else { (16, 800) };
    for seed in 0..seeds {
        let env = rig(32 * K4);
        let q = env.queue(
            DeferLimits {
                max_entries: 5,
                max_bytes: 12 * K4,
                max_age: u64::MAX,
            },
            6,
        );
        let m = env.mapper(&q);
        let mut x = (seed + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        // Per page of the window: the memory linked there now, and memory
        // unlinked in each queue generation (reachable until it flushes).
        let pages = 32usize;
        let mut live: Vec<Option<u64>> = vec![None; pages];
        let mut stale: Vec<Vec<(u64, u64)>> = vec![Vec::new(); pages];
        let mut held: Vec<(u64, u64, u64)> = Vec::new(); // waiting IOVA ranges: (start, end, generation)
        let mut states = Vec::new();
        let page = |iova: u64| ((iova - 0x40_0000_0000) / K4) as usize;
        for step in 0..steps {
            match rnd(10) {
                0 | 1 if states.len() < 6 => {
                    let size = (1 << rnd(3)) * K4;
                    match m.try_alloc(size, K4) {
                        Ok(s) => {
                            let (a, b) = (s.iova().0, s.iova().0 + size);
                            let g = q.generation();
                            for &(hs, he, hg) in &held {
                                assert!(
                                    hg < g || he <= a || b <= hs,
                                    "seed {seed} step {step}: IOVA {a:#x} reused while waiting"
                                );
                            }
                            states.push(s);
                        }
                        Err(Error::Iova(IovaAllocError::NoSpace)) => {}
                        Err(e) => panic!("{e:?}"),
                    }
                }
                2..=4 if !states.is_empty() => {
                    let i = rnd(states.len() as u64) as usize;
                    let s = &mut states[i];
                    let n = s.range().len() / K4;
                    let off = rnd(n) * K4;
                    let pa = PA + rnd(1 << 20) * K4;
                    let free = !s
                        .links()
                        .iter()
                        .any(|l| l.offset <= off && off < l.offset + l.len);
                    if free {
                        s.link(off, PhysAddr(pa), K4, Prot::RW).unwrap();
                        live[page(s.iova().0 + off)] = Some(pa);
                    }
                }
                5 | 6 if !states.is_empty() => {
                    let i = rnd(states.len() as u64) as usize;
                    let s = &mut states[i];
                    if let Some(l) = s.links().first().copied() {
                        let iova = s.iova().0 + l.offset;
                        let g = q.generation();
                        s.unlink(l.offset, l.len).unwrap();
                        let p = page(iova);
                        stale[p].push((live[p].take().unwrap(), g));
                    }
                }
                7 if !states.is_empty() => {
                    let i = rnd(states.len() as u64) as usize;
                    states[i].sync().unwrap();
                }
                8 if !states.is_empty() => {
                    let s = states.swap_remove(rnd(states.len() as u64) as usize);
                    let (a, b) = (s.iova().0, s.range().end.0);
                    let g = q.generation();
                    for off in s.links().iter().map(|l| l.offset) {
                        let p = page(a + off);
                        stale[p].push((live[p].take().unwrap(), g));
                    }
                    let had_deferred = (page(a)..page(b)).any(|p| !stale[p].is_empty());
                    s.destroy().unwrap();
                    if had_deferred && q.generation() == g {
                        held.push((a, b, g));
                    }
                }
                9 => m.flush_deferred().unwrap(),
                _ => continue,
            }
            // What the device reaches: live memory, stale memory of a
            // generation not yet flushed, or nothing.
            let g = q.generation();
            for p in 0..pages {
                stale[p].retain(|&(_, sg)| sg >= g);
                let iova = Iova(0x40_0000_0000 + p as u64 * K4);
                let ok = match env.read(iova) {
                    Err(_) => true,
                    Ok(pa) => live[p] == Some(pa.0) || stale[p].iter().any(|&(s, _)| s == pa.0),
                };
                assert!(
                    ok,
                    "seed {seed} step {step}: page {p} reaches memory it must not"
                );
            }
            held.retain(|&(_, _, hg)| hg >= g);
        }
        for s in states {
            s.destroy().unwrap();
        }
        m.flush_deferred().unwrap();
        assert_eq!(env.iovas.stats().live_allocations, 0, "seed {seed}");
        assert!(env.domain.leaves().is_empty());
    }
}

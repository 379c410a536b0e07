//! Loom model of the IOVA allocator's per-CPU caches: two CPUs allocating
//! and freeing, one of them spilling a full magazine into the shared depot
//! while the other refills from it, explored over every interleaving (up to
//! loom's preemption bound). Under `cfg(loom)` the allocator's locks are
//! loom's and a magazine holds two entries, so spills happen within a few
//! operations.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p iova-core --release --test
//! loom_alloc` (`cargo xtask test loom` does).
#![cfg(loom)]

use std::sync::Mutex;

use iova_core::iova_alloc::{CpuCache, ExtentSlot, IovaAlloc, IovaAllocatorConfig};
use iova_core::{Iova, IovaAllocator, IovaRange};

const G: u64 = 0x1000;
const BASE: u64 = 0x10_0000;
const PAGES: u64 = 16;

/// Every range handed out and not yet freed, across both CPUs.
struct Live(Mutex<Vec<(u64, u64)>>);

impl Live {
    fn add(&self, a: &IovaAlloc) {
        let r = a.range();
        let (s, e) = (r.start.get(), r.end.get());
        let mut live = self.0.lock().unwrap();
        for &(ls, le) in live.iter() {
            assert!(
                e <= ls || le <= s,
                "[{s:#x}, {e:#x}) handed out while [{ls:#x}, {le:#x}) is live"
            );
        }
        live.push((s, e));
    }
    fn remove(&self, a: &IovaAlloc) {
        let s = a.range().start.get();
        self.0.lock().unwrap().retain(|&(ls, _)| ls != s);
    }
}

fn leak<T>(v: T) -> &'static mut T {
    Box::leak(Box::new(v))
}

#[test]
fn a_magazine_spilled_by_one_cpu_is_refilled_by_another_and_nothing_is_handed_out_twice() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(|| {
        let slots = leak(
            (0..PAGES as usize + 4)
                .map(|_| ExtentSlot::new())
                .collect::<Vec<_>>(),
        );
        let cpus = leak((0..2).map(|_| CpuCache::new()).collect::<Vec<_>>());
        let aperture = IovaRange::new(Iova(BASE), PAGES * G).unwrap();
        let iovas: &'static IovaAllocator<'static> =
            leak(IovaAllocator::new(IovaAllocatorConfig::new(aperture, G), slots, cpus).unwrap());
        let live: &'static Live = leak(Live(Mutex::new(Vec::new())));

        // CPU 0: five single-page allocations, freed: two magazines of two
        // fill, the fifth free spills the older magazine to the depot.
        let spiller = loom::thread::spawn(move || {
            let mut held = Vec::new();
            for _ in 0..5 {
                let a = iovas.alloc(0, G, G).unwrap();
                live.add(&a);
                held.push(a);
            }
            for a in held {
                live.remove(&a);
                iovas.free(0, a).unwrap();
            }
        });
        // CPU 1: takes pages while CPU 0 works (from the backing allocator,
        // or the depot once the magazine is there) and gives them back.
        let taker = loom::thread::spawn(move || {
            let mut held = Vec::new();
            for _ in 0..2 {
                let a = iovas.alloc(1, G, G).unwrap();
                live.add(&a);
                held.push(a);
            }
            for a in held {
                live.remove(&a);
                iovas.free(1, a).unwrap();
            }
        });
        spiller.join().unwrap();
        taker.join().unwrap();

        let s = iovas.stats();
        assert_eq!((s.live_allocations, s.live_bytes), (0, 0));
        iovas.flush_caches();
        let s = iovas.stats();
        assert_eq!(s.cached_ranges, 0);
        assert_eq!(s.free_bytes, PAGES * G, "every page came back");
        assert_eq!(s.free_extents, 1, "and merged into one extent");
    });
}

//! Loom models of the page-table engine's concurrency: every interleaving
//! (and every weak-memory outcome loom models) of
//! - two CPUs installing the same missing tables for disjoint pages, and
//! - a software walker (`translate`) racing an unmap that detaches and frees
//!   the table it is walking, and
//! - an unmap clearing a run of pages racing a mapper and a walker in the
//!   same leaf table.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p iova-core --release --test
//! loom_table` (`cargo xtask test loom` does). Under `cfg(loom)` the engine's
//! entries are loom atomics; the frames below are arrays of them.
#![cfg(loom)]

use std::collections::HashMap;
use std::sync::Mutex;

use iova_core::pt::{PageTable, PtFormat};
use iova_core::{FrameAllocator, IotlbGather, Iova, PhysAddr, Prot};
use loom::sync::Arc;
use loom::sync::atomic::{AtomicU64, Ordering};

/// Three levels of four-entry tables over 4 KiB pages (an 18-bit IOVA
/// space): tiny tables keep loom's state small, the protocol is the same.
struct Tiny;

const PRESENT: u64 = 1;
const TABLE: u64 = 2;
const READ: u64 = 4;
const WRITE: u64 = 8;
const PA_MASK: u64 = ((1 << 48) - 1) & !0x1f;

impl PtFormat for Tiny {
    fn levels(&self) -> usize {
        3
    }
    fn granule_shift(&self) -> u32 {
        12
    }
    fn index_bits(&self, _: usize) -> u32 {
        2
    }
    fn block_allowed(&self, _: usize) -> bool {
        false
    }
    fn oa_bits(&self) -> u32 {
        48
    }
    fn is_present(&self, _: usize, raw: u64) -> bool {
        raw & PRESENT != 0
    }
    fn is_table(&self, depth: usize, raw: u64) -> bool {
        depth < 2 && raw & (PRESENT | TABLE) == PRESENT | TABLE
    }
    fn table_pa(&self, raw: u64) -> PhysAddr {
        PhysAddr(raw & PA_MASK)
    }
    fn leaf_pa(&self, _: usize, raw: u64) -> PhysAddr {
        PhysAddr(raw & PA_MASK & !0xfff)
    }
    fn leaf_prot(&self, _: usize, raw: u64) -> Prot {
        let mut p = Prot::empty();
        p.set(Prot::READ, raw & READ != 0);
        p.set(Prot::WRITE, raw & WRITE != 0);
        p
    }
    fn encode_table(&self, _: usize, pa: PhysAddr) -> u64 {
        pa.0 | PRESENT | TABLE
    }
    fn encode_leaf(&self, _: usize, pa: PhysAddr, prot: Prot) -> u64 {
        let mut raw = pa.0 | PRESENT;
        if prot.contains(Prot::READ) {
            raw |= READ;
        }
        if prot.contains(Prot::WRITE) {
            raw |= WRITE;
        }
        raw
    }
}

/// What a freed frame's entries are overwritten with: a table pointer to
/// memory that is no frame, so a walker still reading a freed table fails
/// loudly instead of silently reading reused memory.
const POISON: u64 = 0xdead_0000 | PRESENT | TABLE;

struct Frame {
    entries: Box<[AtomicU64]>,
    freed: bool,
}

/// Frames made of loom atomics, at made-up physical addresses.
#[derive(Default)]
struct LoomFrames {
    frames: Mutex<HashMap<u64, Frame>>,
    next: Mutex<u64>,
}

impl LoomFrames {
    fn live(&self) -> usize {
        self.frames
            .lock()
            .unwrap()
            .values()
            .filter(|f| !f.freed)
            .count()
    }
}

// SAFETY: frames are zeroed (fresh atomics), aligned to their size (the
// made-up addresses are), never handed out twice, and stay allocated (only
// poisoned) after `free`, so every pointer given out stays valid.
unsafe impl FrameAllocator for LoomFrames {
    fn alloc_zeroed(&self, size: usize) -> Option<PhysAddr> {
        let mut next = self.next.lock().unwrap();
        let pa = (*next).max(0x10_0000).next_multiple_of(size as u64);
        *next = pa + size as u64;
        let entries = (0..size / 8).map(|_| AtomicU64::new(0)).collect();
        self.frames.lock().unwrap().insert(
            pa,
            Frame {
                entries,
                freed: false,
            },
        );
        Some(PhysAddr(pa))
    }

    unsafe fn free(&self, pa: PhysAddr, _size: usize) {
        let mut frames = self.frames.lock().unwrap();
        let frame = frames
            .get_mut(&pa.0)
            .expect("freeing a frame never allocated");
        assert!(!frame.freed, "double free of {pa:?}");
        frame.freed = true;
        for e in frame.entries.iter() {
            e.store(POISON, Ordering::Relaxed);
        }
    }

    fn phys_to_virt(&self, pa: PhysAddr) -> *mut u8 {
        let frames = self.frames.lock().unwrap();
        let frame = frames.get(&pa.0).unwrap_or_else(|| {
            panic!("walked to {pa:?}, which is no frame: a freed table was read")
        });
        frame.entries.as_ptr() as *mut u8
    }
}

/// A fresh allocator for one execution of a model, leaked (a few hundred
/// bytes) so that the table and the threads can hold `&'static` to it.
fn frames() -> &'static LoomFrames {
    Box::leak(Box::default())
}

const PA1: u64 = 0x8000_0000;
const PA2: u64 = 0x9000_0000;

#[test]
fn concurrent_installs_of_the_same_tables_keep_both_pages_and_leak_nothing() {
    loom::model(|| {
        let frames = frames();
        let table = Arc::new(PageTable::new(Tiny, frames).unwrap());
        // Two pages under the same missing level-1 and level-2 tables.
        let threads: Vec<_> = [(0x0000, PA1), (0x1000, PA2)]
            .into_iter()
            .map(|(iova, pa)| {
                let table = Arc::clone(&table);
                loom::thread::spawn(move || {
                    let mut gather = IotlbGather::new();
                    table
                        .map(Iova(iova), PhysAddr(pa), 0x1000, Prot::RW, &mut gather)
                        .unwrap();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(
            table.translate(Iova(0x0010)).unwrap().pa,
            PhysAddr(PA1 + 0x10)
        );
        assert_eq!(
            table.translate(Iova(0x1010)).unwrap().pa,
            PhysAddr(PA2 + 0x10)
        );
        // Root, one level-1 and one level-2 table: the loser's chain was freed.
        assert_eq!(frames.live(), 3);
    });
}

#[test]
fn a_walker_never_reads_a_table_freed_under_it() {
    loom::model(|| {
        let frames = frames();
        let table = Arc::new(PageTable::new(Tiny, frames).unwrap());
        let mut gather = IotlbGather::new();
        table
            .map(Iova(0x0000), PhysAddr(PA1), 0x1000, Prot::RW, &mut gather)
            .unwrap();
        let walker = {
            let table = Arc::clone(&table);
            loom::thread::spawn(move || table.translate(Iova(0x0010)).map(|t| t.pa))
        };
        // Unmap the level-1 table's whole span: it is detached and freed.
        let mut gather = IotlbGather::new();
        assert_eq!(table.unmap(Iova(0), 0x1_0000, &mut gather).unwrap(), 0x1000);
        // SAFETY: no IOMMU walks this table; only the software walker, which
        // release_tables waits for.
        unsafe { table.release_tables(&mut gather) };
        let seen = walker.join().unwrap();
        assert!(
            seen.is_none() || seen == Some(PhysAddr(PA1 + 0x10)),
            "the walker saw {seen:?}"
        );
        assert_eq!(frames.live(), 1, "only the root is left");
    });
}

#[test]
fn clearing_pages_races_a_mapper_and_a_walker_in_the_same_leaf_table() {
    const PA3: u64 = 0xa000_0000;
    loom::model(|| {
        let frames = frames();
        let table = Arc::new(PageTable::new(Tiny, frames).unwrap());
        let mut gather = IotlbGather::new();
        for (iova, pa) in [(0x0000, PA1), (0x1000, PA2)] {
            table
                .map(Iova(iova), PhysAddr(pa), 0x1000, Prot::RW, &mut gather)
                .unwrap();
        }
        let mapper = {
            let table = Arc::clone(&table);
            loom::thread::spawn(move || {
                let mut gather = IotlbGather::new();
                table
                    .map(Iova(0x2000), PhysAddr(PA3), 0x1000, Prot::RW, &mut gather)
                    .unwrap();
            })
        };
        let walker = {
            let table = Arc::clone(&table);
            loom::thread::spawn(move || table.translate(Iova(0x1010)).map(|t| t.pa))
        };
        // Two of the leaf table's four entries: the table stays.
        let mut gather = IotlbGather::new();
        assert_eq!(table.unmap(Iova(0), 0x2000, &mut gather).unwrap(), 0x2000);
        assert_eq!(gather.freed_tables(), 0);
        mapper.join().unwrap();
        let seen = walker.join().unwrap();
        assert!(
            seen.is_none() || seen == Some(PhysAddr(PA2 + 0x10)),
            "the walker saw {seen:?}"
        );
        assert_eq!(table.translate(Iova(0x0010)), None);
        assert_eq!(table.translate(Iova(0x1010)), None);
        assert_eq!(
            table.translate(Iova(0x2010)).unwrap().pa,
            PhysAddr(PA3 + 0x10)
        );
        assert_eq!(frames.live(), 3);
    });
}

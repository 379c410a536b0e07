//! An in-memory IOMMU for tests: ours, and users' own.
//!
//! - [`FakeFrames`] hands out zeroed host memory as "physical" frames whose
//!   physical addresses differ from their virtual ones (so code that confuses
//!   the two fails), counts live frames (so leaks show) and can be told to run
//!   dry after a number of allocations (fault injection).
//! - [`FakeIotlb`] is a device-side TLB: [`FakeDomain::device_access`] looks a
//!   translation up in it first and walks the tables in memory only on a miss,
//!   so a translation that was unmapped but not flushed keeps working, exactly
//!   the stale behaviour a missing invalidation causes on hardware. It counts
//!   flushes and can be told to fail them.
//!
//! ```
//! use iova_core::fakes::{Access, fake_domain};
//! use iova_core::formats::lpae::LpaeS1;
//! use iova_core::{IommuDomain, IotlbGather, Iova, PhysAddr, Prot};
//!
//! let (domain, frames) = fake_domain(LpaeS1::va48());
//! let mut gather = IotlbGather::new();
//! domain.map(Iova(0x1000), PhysAddr(0x8000_0000), 0x1000, Prot::RW, &mut gather).unwrap();
//! domain.flush(&mut gather).unwrap();
//! assert_eq!(domain.device_access(Iova(0x1010), Access::Write), Ok(PhysAddr(0x8000_0010)));
//! assert_eq!(domain.invalidator().flushes(), 1);
//! assert!(frames.live() > 0);
//! ```

mod adjacent_states;
pub mod corpus;
pub use adjacent_states::{AdjacentStates, check_adjacent_states};

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::vec::Vec;

use crate::addr::{Iova, PhysAddr};
use crate::domain::{IotlbInvalidate, PageTableDomain};
use crate::error::Error;
use crate::frame::FrameAllocator;
use crate::gather::IotlbGather;
use crate::prot::Prot;
use crate::pt::{Entry, PageTable, PtFormat};

/// Where fake physical memory starts: 256 GiB, so that fake physical addresses
/// differ from host virtual ones and fit every format's output size.
pub const FAKE_PHYS_BASE: u64 = 0x40_0000_0000;

const FRAME: usize = 4096;

/// Host memory posing as physical frames: one zeroed arena handed out in 4 KiB
/// frames (runs of frames for larger tables), at physical addresses from
/// [`FAKE_PHYS_BASE`].
#[derive(Debug)]
pub struct FakeFrames {
    /// The host allocation; `base` is its first 4 KiB-aligned byte.
    raw: *mut u8,
    base: *mut u8,
    bytes: usize,
    arena: Mutex<Arena>,
    /// Allocations left before `alloc_zeroed` fails; `usize::MAX` for no limit.
    budget: AtomicUsize,
    bad_frees: AtomicUsize,
    total: AtomicUsize,
}

#[derive(Debug)]
struct Arena {
    used: Vec<u64>,
    /// Frames each live allocation holds, by first frame.
    live: HashMap<usize, usize>,
    hint: usize,
}

// SAFETY: the arena pointer is only dereferenced through frames handed out under
// the mutex; the struct owns the allocation.
unsafe impl Send for FakeFrames {}
// SAFETY: as above; all bookkeeping is behind the mutex or atomics.
unsafe impl Sync for FakeFrames {}

impl Default for FakeFrames {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeFrames {
    /// 256 MiB of fake physical memory (host memory is committed lazily), or
    /// 16 MiB under Miri, which really initialises every byte.
    pub fn new() -> Self {
        Self::with_capacity(if cfg!(miri) { 16 << 20 } else { 256 << 20 })
    }

    /// `bytes` of fake physical memory (rounded up to 4 KiB).
    pub fn with_capacity(bytes: usize) -> Self {
        let frames = bytes.div_ceil(FRAME).max(1);
        let bytes = frames * FRAME;
        // SAFETY: non-zero size, valid alignment.
        let raw = unsafe { std::alloc::alloc_zeroed(Self::layout(bytes)) };
        assert!(!raw.is_null(), "cannot reserve fake physical memory");
        // SAFETY: the allocation has FRAME spare bytes for the rounding.
        let base = unsafe { raw.add(raw.align_offset(FRAME)) };
        Self {
            raw,
            base,
            bytes,
            arena: Mutex::new(Arena {
                used: vec![0; frames.div_ceil(64)],
                live: HashMap::new(),
                hint: 0,
            }),
            budget: AtomicUsize::new(usize::MAX),
            bad_frees: AtomicUsize::new(0),
            total: AtomicUsize::new(0),
        }
    }

    fn layout(bytes: usize) -> std::alloc::Layout {
        // Host alignment 16 lets the system allocator use calloc's lazily zeroed
        // pages (a 4 KiB alignment made it zero all 256 MiB up front, ~0.1 s per
        // domain); one spare frame lets the arena start 4 KiB aligned anyway, so
        // frames are page aligned for the CPU too, as on a machine.
        std::alloc::Layout::from_size_align(bytes + FRAME, 16).expect("arena layout")
    }

    /// Allocations currently live.
    pub fn live(&self) -> usize {
        self.arena.lock().unwrap().live.len()
    }

    /// Allocations made since creation.
    pub fn total_allocated(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Frees of frames that were not allocated (or of the wrong size).
    pub fn bad_frees(&self) -> usize {
        self.bad_frees.load(Ordering::Relaxed)
    }

    /// After `n` more successful allocations, every allocation fails.
    pub fn fail_after(&self, n: usize) {
        self.budget.store(n, Ordering::SeqCst);
    }

    /// Removes the limit set by [`fail_after`](Self::fail_after).
    pub fn unlimited(&self) {
        self.budget.store(usize::MAX, Ordering::SeqCst);
    }
}

impl Arena {
    fn is_used(&self, f: usize) -> bool {
        self.used[f / 64] & 1 << (f % 64) != 0
    }
    fn set(&mut self, f: usize, used: bool) {
        if used {
            self.used[f / 64] |= 1 << (f % 64);
        } else {
            self.used[f / 64] &= !(1 << (f % 64));
        }
    }
    /// First free run of `n` frames aligned to `n`, searching from the hint.
    fn find(&self, n: usize, frames: usize) -> Option<usize> {
        let start = (self.hint / n * n).min(frames);
        (start..frames)
            .step_by(n)
            .chain((0..start).step_by(n))
            .filter(|f| f + n <= frames)
            .find(|&f| (f..f + n).all(|g| !self.is_used(g)))
    }
}

impl Drop for FakeFrames {
    fn drop(&mut self) {
        // SAFETY: allocated in `with_capacity` with this layout.
        unsafe { std::alloc::dealloc(self.raw, Self::layout(self.bytes)) }
    }
}

// SAFETY: every frame handed out is a zeroed, size-aligned run of the arena that
// is marked used until freed; `phys_to_virt` maps the fixed physical window
// onto the arena.
unsafe impl FrameAllocator for FakeFrames {
    fn alloc_zeroed(&self, size: usize) -> Option<PhysAddr> {
        if !size.is_power_of_two() {
            return None;
        }
        if self
            .budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| match b {
                usize::MAX => Some(b),
                0 => None,
                b => Some(b - 1),
            })
            .is_err()
        {
            return None;
        }
        let n = size.div_ceil(FRAME);
        let mut arena = self.arena.lock().unwrap();
        let first = arena.find(n, self.bytes / FRAME)?;
        for f in first..first + n {
            arena.set(f, true);
        }
        arena.live.insert(first, n);
        arena.hint = first + n;
        drop(arena);
        // SAFETY: the run lies inside the arena and is ours alone now.
        unsafe { core::ptr::write_bytes(self.base.add(first * FRAME), 0, n * FRAME) };
        self.total.fetch_add(1, Ordering::Relaxed);
        Some(PhysAddr(FAKE_PHYS_BASE + (first * FRAME) as u64))
    }

    unsafe fn free(&self, pa: PhysAddr, size: usize) {
        let Some(first) =
            pa.0.checked_sub(FAKE_PHYS_BASE)
                .map(|o| o as usize / FRAME)
                .filter(|_| pa.is_aligned(FRAME as u64))
        else {
            self.bad_frees.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let mut arena = self.arena.lock().unwrap();
        match arena.live.get(&first) {
            Some(&n) if n == size.div_ceil(FRAME) => {
                arena.live.remove(&first);
                for f in first..first + n {
                    arena.set(f, false);
                }
            }
            _ => {
                self.bad_frees.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn phys_to_virt(&self, pa: PhysAddr) -> *mut u8 {
        self.base
            .wrapping_add(pa.0.wrapping_sub(FAKE_PHYS_BASE) as usize)
    }
}

/// Kind of device access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The device reads memory.
    Read,
    /// The device writes memory.
    Write,
}

/// Why a fake device access failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Nothing translates the IOVA.
    Translation(Iova),
    /// A translation exists but does not allow the access.
    Permission(Iova, Access),
}

#[derive(Clone, Copy, Debug)]
struct TlbEntry {
    pa: PhysAddr,
    prot: Prot,
}

/// The device-side TLB of the fake IOMMU, and its invalidation.
#[derive(Debug)]
pub struct FakeIotlb {
    granule: u64,
    tlb: Mutex<HashMap<u64, TlbEntry>>,
    flushes: AtomicUsize,
    fail_flushes: AtomicUsize,
    hits: AtomicUsize,
    walks: AtomicUsize,
}

impl FakeIotlb {
    fn new(granule: u64) -> Self {
        Self {
            granule,
            tlb: Mutex::new(HashMap::new()),
            flushes: AtomicUsize::new(0),
            fail_flushes: AtomicUsize::new(0),
            hits: AtomicUsize::new(0),
            walks: AtomicUsize::new(0),
        }
    }

    /// Invalidations requested (successful or not).
    pub fn flushes(&self) -> usize {
        self.flushes.load(Ordering::SeqCst)
    }

    /// Device accesses answered from the TLB.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// Device accesses that walked the tables.
    pub fn walks(&self) -> usize {
        self.walks.load(Ordering::SeqCst)
    }

    /// Translations cached now.
    pub fn cached(&self) -> usize {
        self.tlb.lock().unwrap().len()
    }

    /// The next `n` invalidations fail with [`Error::Timeout`] and change nothing.
    pub fn fail_next_flushes(&self, n: usize) {
        self.fail_flushes.store(n, Ordering::SeqCst);
    }
}

// SAFETY: the fake's walker keeps no pointer into the tables between accesses
// (it caches leaf results only), so once the cached leaves of the gather's
// ranges are dropped nothing can reach a freed table.
unsafe impl IotlbInvalidate for FakeIotlb {
    fn invalidate(&self, gather: &IotlbGather) -> Result<(), Error> {
        self.flushes.fetch_add(1, Ordering::SeqCst);
        if self
            .fail_flushes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Error::Timeout);
        }
        let ranges = gather.ranges();
        self.tlb
            .lock()
            .unwrap()
            .retain(|&page, _| !ranges.iter().any(|r| r.start.0 <= page && page < r.end.0));
        Ok(())
    }
}

/// A page-table domain over fake memory with a fake IOTLB.
pub type FakeDomain<F> = PageTableDomain<F, Arc<FakeFrames>, FakeIotlb>;

/// A fresh fake domain of format `fmt`, and its frame allocator.
pub fn fake_domain<F: PtFormat>(fmt: F) -> (FakeDomain<F>, Arc<FakeFrames>) {
    fake_domain_in(fmt, FakeFrames::new())
}

/// A fresh fake domain of format `fmt` whose tables come from `frames` (for
/// example a smaller arena, where every byte of it costs: under a sanitizer).
///
/// # Panics
///
/// If `frames` cannot hold the root table.
pub fn fake_domain_in<F: PtFormat>(fmt: F, frames: FakeFrames) -> (FakeDomain<F>, Arc<FakeFrames>) {
    let frames = Arc::new(frames);
    let table = PageTable::new(fmt, Arc::clone(&frames)).expect("fake frames do not run dry");
    let granule = table.granule();
    (PageTableDomain::new(table, FakeIotlb::new(granule)), frames)
}

/// How many tables are reachable from `root` (the root included), read from
/// fake memory: with nobody mapping concurrently, every live frame of a table
/// should be one of them (or waiting in a gather to be freed).
pub fn count_tables<F: PtFormat>(fmt: &F, frames: &FakeFrames, root: PhysAddr) -> usize {
    Walker::new(fmt, frames).count_tables(root, 0)
}

/// A leaf found by [`FakeDomain::leaves`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// First IOVA the leaf maps.
    pub iova: Iova,
    /// Output address.
    pub pa: PhysAddr,
    /// Size of the page or block.
    pub size: u64,
    /// Permissions.
    pub prot: Prot,
}

/// An independent walker over the tables in memory, used as the test oracle.
struct Walker<'t, F: PtFormat> {
    fmt: &'t F,
    frames: &'t FakeFrames,
    shifts: Vec<u32>,
}

impl<'t, F: PtFormat> Walker<'t, F> {
    fn new(fmt: &'t F, frames: &'t FakeFrames) -> Self {
        let levels = fmt.levels();
        let mut shifts = vec![0; levels];
        let mut s = fmt.granule_shift();
        for d in (0..levels).rev() {
            shifts[d] = s;
            s += fmt.index_bits(d);
        }
        Self {
            fmt,
            frames,
            shifts,
        }
    }

    fn read(&self, table: PhysAddr, idx: usize) -> u64 {
        let p = self.frames.phys_to_virt(table).cast::<u64>();
        // SAFETY: tests only walk tables reachable from a live root; entries are
        // read atomically-sized and aligned, as the engine writes them.
        unsafe { core::sync::atomic::AtomicU64::from_ptr(p.add(idx)).load(Ordering::Acquire) }
    }

    fn walk(&self, root: PhysAddr, iova: u64) -> Option<(PhysAddr, Prot)> {
        let mut table = root;
        for d in 0..self.fmt.levels() {
            let idx = ((iova >> self.shifts[d]) & ((1 << self.fmt.index_bits(d)) - 1)) as usize;
            match self.fmt.decode(d, self.read(table, idx)) {
                Entry::Invalid => return None,
                Entry::Table(t) => table = t,
                Entry::Leaf { pa, prot } => {
                    let off = iova & ((1 << self.shifts[d]) - 1);
                    return Some((PhysAddr(pa.0 + off), prot));
                }
            }
        }
        None
    }

    fn count_tables(&self, table: PhysAddr, depth: usize) -> usize {
        1 + (0..1usize << self.fmt.index_bits(depth))
            .filter_map(|i| match self.fmt.decode(depth, self.read(table, i)) {
                Entry::Table(t) => Some(self.count_tables(t, depth + 1)),
                _ => None,
            })
            .sum::<usize>()
    }

    fn collect(&self, table: PhysAddr, depth: usize, base: u64, out: &mut Vec<Leaf>) {
        for i in 0..1usize << self.fmt.index_bits(depth) {
            let iova = base + ((i as u64) << self.shifts[depth]);
            match self.fmt.decode(depth, self.read(table, i)) {
                Entry::Invalid => {}
                Entry::Table(t) => self.collect(t, depth + 1, iova, out),
                Entry::Leaf { pa, prot } => out.push(Leaf {
                    iova: Iova(iova),
                    pa,
                    size: 1 << self.shifts[depth],
                    prot,
                }),
            }
        }
    }
}

impl<F: PtFormat> PageTableDomain<F, Arc<FakeFrames>, FakeIotlb> {
    /// What the device gets when it accesses `iova`: the TLB first, then a walk
    /// of the tables in memory (whose result is cached).
    pub fn device_access(&self, iova: Iova, access: Access) -> Result<PhysAddr, Fault> {
        let tlb = self.invalidator();
        let page = iova.align_down(tlb.granule).0;
        let cached = tlb.tlb.lock().unwrap().get(&page).copied();
        let entry = match cached {
            Some(e) => {
                tlb.hits.fetch_add(1, Ordering::SeqCst);
                e
            }
            None => {
                tlb.walks.fetch_add(1, Ordering::SeqCst);
                let walker = Walker::new(self.table().format(), self.table().frames());
                let (pa, prot) = walker
                    .walk(self.table().root(), page)
                    .ok_or(Fault::Translation(iova))?;
                let e = TlbEntry { pa, prot };
                tlb.tlb.lock().unwrap().insert(page, e);
                e
            }
        };
        let needed = match access {
            Access::Read => Prot::READ,
            Access::Write => Prot::WRITE,
        };
        if !entry.prot.contains(needed) {
            return Err(Fault::Permission(iova, access));
        }
        Ok(PhysAddr(entry.pa.0 + iova.offset_in(tlb.granule)))
    }

    /// Tables reachable from the root, the root included ([`count_tables`]).
    pub fn tables(&self) -> usize {
        count_tables(
            self.table().format(),
            self.table().frames(),
            self.table().root(),
        )
    }

    /// Every leaf in the tables, in IOVA order (what a walker would find now,
    /// ignoring the TLB).
    pub fn leaves(&self) -> Vec<Leaf> {
        let walker = Walker::new(self.table().format(), self.table().frames());
        let mut out = Vec::new();
        walker.collect(self.table().root(), 0, 0, &mut out);
        out
    }
}

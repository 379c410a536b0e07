//! The IOVA allocator: aligned ranges from an aperture minus reserved holes.
//!
//! [`IovaAllocator`] hands out IOVA ranges from an aperture `[start, end)`
//! in units of a *granule* (any power of two, usually the smallest IOMMU page
//! size), skipping holes punched with [`IovaAllocator::reserve`] (MSI
//! doorbells, firmware ranges, whatever the IOMMU reports as reserved).
//! Requests name an explicit alignment, so 2 MiB and 1 GiB blocks can be
//! mapped with block descriptors.
//!
//! ```
//! use iova_core::addr::{Iova, IovaRange};
//! use iova_core::iova_alloc::{CpuCache, ExtentSlot, IovaAllocator, IovaAllocatorConfig};
//!
//! // Caller-provided storage: no heap needed.
//! let mut slots = [const { ExtentSlot::new() }; 64];
//! let mut cpus = [const { CpuCache::new() }; 2];
//! let aperture = IovaRange::new(Iova(0x1_0000_0000), 1 << 40).unwrap();
//! let iovas = IovaAllocator::new(IovaAllocatorConfig::new(aperture, 4096), &mut slots, &mut cpus)?;
//!
//! // An MSI doorbell page the device must never see as memory.
//! iovas.reserve(IovaRange::new(Iova(0x1_0800_0000), 0x1000).unwrap())?;
//!
//! let a = iovas.alloc(0, 0x4000, 0x1000)?; // 16 KiB on CPU 0 (per-CPU cache)
//! let b = iovas.alloc(1, 3 << 30, 1 << 30)?; // 3 GiB aligned to 1 GiB
//! assert_eq!(b.range().start.get() % (1 << 30), 0);
//! iovas.free(0, a)?;
//! iovas.free(1, b)?;
//! # Ok::<(), iova_core::iova_alloc::IovaAllocError>(())
//! ```
//!
//! # Design
//!
//! Two layers, after Linux's `iova.c` (rbtree + per-CPU "rcache"
//! magazines), with the rbtree replaced by something whose worst case does
//! not grow with the number of live allocations.
//!
//! **Backing allocator** (`tlsf.rs`): a TLSF-style segregated free-extent
//! allocator over granule numbers. Every non-hole extent of the aperture is
//! one [`ExtentSlot`] (free, allocated or cached), linked to its physical
//! neighbours by index; free extents additionally sit in one of 1024 size
//! classes (64 power-of-two levels, each split into 16), with a two-level
//! bitmap of non-empty classes.
//!
//! - *Allocation* of `n` granules aligned to `a`: one bitmap search finds the
//!   first class whose every extent holds `n + a - 1` granules (enough for an
//!   aligned `n` anywhere inside), O(1). If that class does not exist, at
//!   most 16 extents of the largest smaller classes (down to the class of
//!   `n`) are tried: this finds exactly-sized or luckily aligned extents, e.g.
//!   a 1 GiB-aligned 1 GiB extent for a 1 GiB request, which the good-fit
//!   search alone would miss. Then the head and tail remainders are split
//!   off (at most two new slots; the placement prefers an end that leaves
//!   only one). The price of alignment is the search for `n + a - 1`: a
//!   1 GiB-aligned 1 GiB request wants a free extent of almost 2 GiB (or the
//!   bounded scan's luck), and the remainders stay free for others.
//! - *Free* merges with the free physical neighbours and reinserts: O(1).
//! - *Reserve* walks the extents in address order: O(extents). It is meant
//!   for set-up time, though it also works later (it fails with
//!   [`IovaAllocError::RangeInUse`] if a live allocation overlaps the hole).
//!
//! Like every good-fit allocator this can fail although a suitable extent
//! exists deeper in a list: the bounded scan trades that for a bounded worst
//! case.
//!
//! **Per-CPU caches** (`cache.rs`): for sizes of 1 to 32 granules, requests
//! are rounded up to a power of two and aligned to it (like Linux's
//! `alloc_iova_fast`), so a freed range of that size suits any later request
//! of the same class with an alignment up to its size. Freed ranges go into
//! the CPU's magazines (two of 32 entries per class, behind the CPU's own
//! spin lock); full magazines move to a shared depot (4 per class), and when
//! that is full one magazine goes back to the backing allocator. Requests
//! with a larger alignment than their rounded size bypass the caches. When
//! the backing allocator runs out of space or slots, all caches are flushed
//! and the request is retried once. [`IovaAlloc::range`] is the requested
//! size rounded up to the granule; the extent behind it may be larger
//! (rounded to the power of two), and [`IovaAllocStats::live_bytes`] counts
//! the extents. With no [`CpuCache`] storage, nothing is cached or rounded.
//!
//! **Handles**: [`IovaAlloc`] is neither `Clone` nor `Copy` and is consumed
//! by [`IovaAllocator::free`]. It carries the slot index, the slot's
//! generation (bumped on every hand-out) and the allocator's identity, so a
//! free is O(1) without a search, and a handle freed twice (through
//! [`RawIovaAlloc`]) or given to the wrong allocator is rejected with a typed
//! error instead of corrupting anything. The slot's tag is an atomic, so the
//! per-CPU free path validates the handle without the backing lock.
//! (Generations have 62 bits and allocator identities 32 bits: a stale raw
//! handle could only be mistaken for a live one after 2^62 reuses of its slot,
//! or after 2^32 allocators were created.)
//!
//! # Complexity
//!
//! | operation | bound |
//! |---|---|
//! | `alloc` hitting the cache | O(1): one uncontended lock, one CAS |
//! | `alloc` from the backing allocator | O(1): bitmap search + at most 16 extents inspected + split |
//! | `alloc` when space or slots ran out | + one [`flush_caches`](IovaAllocator::flush_caches) |
//! | `free` | O(1); O(32) when it spills a magazine to the backing allocator |
//! | `flush_caches` | O(cached ranges) <= O(cpus * 384 + 768) |
//! | `reserve` | O(extents) (+ a flush if the hole overlaps a cached range) |
//!
//! None of these depends on the number of live allocations except
//! `reserve`.
//!
//! # Storage
//!
//! [`IovaAllocator::new`] borrows the slot and per-CPU storage from the
//! caller; with the `alloc` feature, `IovaAllocator::with_capacity` owns
//! it. Both give the same type. [`extent_slots_needed`] computes how many
//! slots a workload needs; running out is
//! [`IovaAllocError::NoExtentSlots`], which changes nothing.
//!
//! # CPUs and locks
//!
//! Methods name a CPU index (`cpu`), which picks the [`CpuCache`]; a
//! [`CurrentCpu`] implementation can supply it instead (`*_current`
//! methods). An index without a cache is not an error: the request takes the
//! shared path (the backing allocator) and
//! [`IovaAllocStats::uncached_cpu`] counts it. Using one index from several
//! CPUs is correct, only slower. All locks are spin locks: a caller that
//! allocates from interrupt context must keep interrupts off around calls
//! that could be interrupted on the same CPU index (as Linux does), or the
//! interrupt handler spins forever on the lock its own CPU holds.

mod cache;
mod sync;
mod tlsf;

#[cfg(test)]
mod tests;

use core::fmt;
use core::ops::Deref;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::addr::{Iova, IovaRange, Overflow, align_up};

pub use cache::CpuCache;
use cache::{CACHE_CLASSES, DEPOT_MAGS, Depot, MAG_SIZE};
use sync::Mutex;
pub use tlsf::ExtentSlot;
use tlsf::{
    ALLOCATED, BackingError, CACHED, NIL, ReserveError, Tlsf, next_gen, tag, tag_gen, tag_state,
};

/// Errors of the IOVA allocator.
///
/// Every error leaves the allocator unchanged: no range is handed out,
/// freed or reserved. (An allocation that fails for lack of space or slots
/// has flushed the per-CPU caches back to the backing allocator first, which
/// changes no live allocation.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum IovaAllocError {
    /// The configured granule is zero or not a power of two.
    InvalidGranule,
    /// The aperture is empty, or its start or end is not a multiple of the
    /// granule.
    InvalidAperture,
    /// A size (or reserved range) of zero bytes.
    ZeroSize,
    /// The alignment is zero or not a power of two.
    InvalidAlignment,
    /// Rounding the size up to the granule overflows.
    Overflow,
    /// No free extent of the aperture fits the request (after flushing the
    /// per-CPU caches).
    NoSpace,
    /// The extent slots are all in use (after flushing the per-CPU caches),
    /// or none was provided.
    NoExtentSlots,
    /// The allocation was not handed out by this allocator.
    ForeignAllocation,
    /// The allocation was already freed.
    DoubleFree,
    /// A reservation overlaps a live allocation.
    RangeInUse,
    /// The heap could not provide the storage asked for
    /// (`IovaAllocator::with_capacity`).
    OutOfMemory,
}

impl fmt::Display for IovaAllocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InvalidGranule => "granule is not a power of two",
            Self::InvalidAperture => "aperture is empty or not granule-aligned",
            Self::ZeroSize => "size is zero",
            Self::InvalidAlignment => "alignment is not a power of two",
            Self::Overflow => "size overflows when rounded to the granule",
            Self::NoSpace => "no free IOVA range fits",
            Self::NoExtentSlots => "out of extent slots",
            Self::ForeignAllocation => "allocation does not belong to this allocator",
            Self::DoubleFree => "allocation was already freed",
            Self::RangeInUse => "range overlaps a live allocation",
            Self::OutOfMemory => "out of heap memory",
        })
    }
}

impl core::error::Error for IovaAllocError {}

impl From<Overflow> for IovaAllocError {
    fn from(_: Overflow) -> Self {
        Self::Overflow
    }
}

/// What an [`IovaAllocator`] manages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct IovaAllocatorConfig {
    /// The addresses that may be handed out, `[start, end)`; both ends are
    /// multiples of `granule`.
    pub aperture: IovaRange,
    /// The allocation unit, a power of two (usually the smallest page size
    /// of the IOMMU). Sizes round up to it; alignments below it are raised
    /// to it.
    pub granule: u64,
}

impl IovaAllocatorConfig {
    /// A configuration for `aperture` in units of `granule`.
    pub const fn new(aperture: IovaRange, granule: u64) -> Self {
        Self { aperture, granule }
    }
}

/// Supplies the index of the CPU the caller runs on, for the per-CPU caches
/// (see [`IovaAllocator::alloc_current`]).
///
/// The index need not be stable (a thread may migrate between reading it and
/// using the cache); it only has to be mostly right for the caches to be
/// uncontended. Closures `Fn() -> usize` implement it.
pub trait CurrentCpu {
    /// The current CPU's index, `0..cpu_count` (other values use the shared
    /// path).
    fn current_cpu(&self) -> usize;
}

impl<F: Fn() -> usize> CurrentCpu for F {
    fn current_cpu(&self) -> usize {
        self()
    }
}

/// A range handed out by [`IovaAllocator::alloc`].
///
/// Give it back with [`IovaAllocator::free`]; dropping it leaks the range.
/// It is neither `Clone` nor `Copy`, so it cannot be freed twice by accident.
#[must_use = "dropping an IovaAlloc leaks its IOVA range; give it to IovaAllocator::free"]
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct IovaAlloc {
    raw: RawIovaAlloc,
}

impl IovaAlloc {
    /// The allocated range: the requested size rounded up to the granule,
    /// aligned as requested.
    #[inline]
    pub fn range(&self) -> IovaRange {
        self.raw.range
    }

    /// Turns the handle into plain, copyable data (e.g. to store it where a
    /// move-only type does not fit). Freeing it twice through
    /// [`from_raw`](Self::from_raw) is detected, not undefined.
    #[inline]
    pub fn into_raw(self) -> RawIovaAlloc {
        self.raw
    }

    /// Rebuilds a handle from [`into_raw`](Self::into_raw).
    #[inline]
    pub fn from_raw(raw: RawIovaAlloc) -> Self {
        Self { raw }
    }
}

/// The plain data of an [`IovaAlloc`]: range, slot index, slot generation
/// and the identity of the allocator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RawIovaAlloc {
    range: IovaRange,
    index: u32,
    owner: u32,
    generation: u64,
}

impl RawIovaAlloc {
    /// The allocated range.
    #[inline]
    pub fn range(&self) -> IovaRange {
        self.range
    }
}

/// A snapshot of an allocator's counters.
///
/// Counters are updated without a common lock, so a snapshot taken while
/// other CPUs allocate may be slightly inconsistent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IovaAllocStats {
    /// Allocations handed out and not yet freed.
    pub live_allocations: u64,
    /// Bytes of the extents behind the live allocations (cache-able sizes
    /// are rounded up to a power of two of granules).
    pub live_bytes: u64,
    /// Freed ranges held by the per-CPU caches and the depot.
    pub cached_ranges: u64,
    /// Allocations served by a per-CPU cache.
    pub cache_hits: u64,
    /// Cache-able allocations the caches could not serve.
    pub cache_misses: u64,
    /// Calls naming a CPU index that has no cache (served by the shared
    /// path).
    pub uncached_cpu: u64,
    /// Bytes in free extents of the backing allocator (not counting cached
    /// ranges).
    pub free_bytes: u64,
    /// Free extents in the backing allocator (1 for an untouched aperture
    /// without holes).
    pub free_extents: u64,
    /// Extent slots in use (free, allocated or cached extents).
    pub extent_slots_used: u64,
    /// Extent slots available in total.
    pub extent_slots_total: u64,
}

/// The most ranges the per-CPU caches of `cpus` CPUs and the depot can hold.
pub const fn max_cached_ranges(cpus: usize) -> usize {
    let per_cpu = CACHE_CLASSES * 2 * MAG_SIZE;
    let depot = CACHE_CLASSES * DEPOT_MAGS * MAG_SIZE;
    cpus.saturating_mul(per_cpu).saturating_add(depot)
}

/// Extent slots enough for `max_live` live allocations with `holes`
/// reserved ranges and `cpus` per-CPU caches, without ever flushing the
/// caches for lack of slots.
///
/// Free extents are separated by allocations or holes, so with `k`
/// allocated-or-cached extents there are at most `k + holes + 1` free ones.
/// Passing `cpus = 0` gives the bound without caches; the allocator then
/// flushes the caches when it runs out, which works but is slow.
pub const fn extent_slots_needed(max_live: usize, holes: usize, cpus: usize) -> usize {
    let cached = if cpus == 0 {
        0
    } else {
        max_cached_ranges(cpus)
    };
    max_live
        .saturating_add(cached)
        .saturating_mul(2)
        .saturating_add(holes)
        .saturating_add(1)
}

/// Borrowed or owned storage.
enum Storage<'a, T> {
    Borrowed(&'a [T]),
    #[cfg(feature = "alloc")]
    Owned(alloc::boxed::Box<[T]>),
}

impl<T> Deref for Storage<'_, T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match self {
            Storage::Borrowed(s) => s,
            #[cfg(feature = "alloc")]
            Storage::Owned(s) => s,
        }
    }
}

/// Shared counters.
#[derive(Default)]
struct Counters {
    live_allocations: AtomicU64,
    live_bytes: AtomicU64,
    cached_ranges: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    uncached_cpu: AtomicU64,
}

/// A validated request.
struct Request {
    /// Requested size in bytes, rounded up to the granule.
    bytes: u64,
    /// Extent length in granules.
    len: u64,
    /// Alignment in granules.
    align: u64,
    /// Cache class, if the caches may serve the request.
    class: Option<usize>,
}

/// Hands out IOVA ranges; see the [module documentation](self).
///
/// `'a` is the lifetime of caller-provided storage (`'static` for
/// `with_capacity`, feature `alloc`). The allocator is `Sync`: any
/// number of CPUs may use it at once.
pub struct IovaAllocator<'a> {
    aperture: IovaRange,
    granule: u64,
    shift: u32,
    owner: u32,
    slots: Storage<'a, ExtentSlot>,
    cpus: Storage<'a, CpuCache>,
    backing: Mutex<Tlsf>,
    depot: Mutex<Depot>,
    stats: Counters,
}

/// Identities for handles; 0 is never used.
static NEXT_OWNER: AtomicU32 = AtomicU32::new(1);

impl<'a> IovaAllocator<'a> {
    /// An allocator over `config.aperture` that keeps its extents in `slots`
    /// and its per-CPU caches in `cpus` (one per CPU index; may be empty to
    /// disable caching). Both are reset.
    ///
    /// At most `u32::MAX - 1` slots are used.
    ///
    /// # Errors
    ///
    /// [`InvalidGranule`](IovaAllocError::InvalidGranule),
    /// [`InvalidAperture`](IovaAllocError::InvalidAperture), or
    /// [`NoExtentSlots`](IovaAllocError::NoExtentSlots) if `slots` is empty.
    pub fn new(
        config: IovaAllocatorConfig,
        slots: &'a mut [ExtentSlot],
        cpus: &'a mut [CpuCache],
    ) -> Result<Self, IovaAllocError> {
        let usable = slots.len().min(NIL as usize);
        let slots = slots.get_mut(..usable).unwrap_or_default();
        for c in cpus.iter_mut() {
            *c = CpuCache::new();
        }
        Self::build(config, Storage::Borrowed(slots), Storage::Borrowed(cpus))
    }

    fn build(
        config: IovaAllocatorConfig,
        slots: Storage<'a, ExtentSlot>,
        cpus: Storage<'a, CpuCache>,
    ) -> Result<Self, IovaAllocError> {
        let IovaAllocatorConfig { aperture, granule } = config;
        if !granule.is_power_of_two() {
            return Err(IovaAllocError::InvalidGranule);
        }
        if aperture.is_empty()
            || !aperture.start.is_aligned(granule)
            || !aperture.end.is_aligned(granule)
        {
            return Err(IovaAllocError::InvalidAperture);
        }
        let shift = granule.trailing_zeros();
        let mut backing = Tlsf::new();
        backing
            .init(
                &slots,
                aperture.start.get() >> shift,
                aperture.len() >> shift,
            )
            .map_err(|_| IovaAllocError::NoExtentSlots)?;
        Ok(Self {
            aperture,
            granule,
            shift,
            owner: loop {
                let id = NEXT_OWNER.fetch_add(1, Ordering::Relaxed);
                if id != 0 {
                    break id;
                }
            },
            slots,
            cpus,
            backing: Mutex::new(backing),
            depot: Mutex::new(Depot::new()),
            stats: Counters::default(),
        })
    }

    /// The aperture.
    #[inline]
    pub fn aperture(&self) -> IovaRange {
        self.aperture
    }

    /// The granule: every range starts and ends on a multiple of it.
    #[inline]
    pub fn granule(&self) -> u64 {
        self.granule
    }

    /// How many CPU indices have a per-CPU cache.
    #[inline]
    pub fn cpu_count(&self) -> usize {
        self.cpus.len()
    }

    /// Allocates `size` bytes (rounded up to the granule) at an address
    /// aligned to `align` (a power of two; values below the granule mean the
    /// granule), using the cache of CPU `cpu`.
    ///
    /// # Errors
    ///
    /// [`ZeroSize`](IovaAllocError::ZeroSize),
    /// [`InvalidAlignment`](IovaAllocError::InvalidAlignment),
    /// [`Overflow`](IovaAllocError::Overflow),
    /// [`NoSpace`](IovaAllocError::NoSpace),
    /// [`NoExtentSlots`](IovaAllocError::NoExtentSlots).
    pub fn alloc(&self, cpu: usize, size: u64, align: u64) -> Result<IovaAlloc, IovaAllocError> {
        let req = self.request(size, align)?;
        if let (Some(cache), Some(class)) = (self.cpu_cache(cpu), req.class) {
            if let Some(a) = self.alloc_cached(cache, class, &req) {
                self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(a);
            }
            self.stats.cache_misses.fetch_add(1, Ordering::Relaxed);
        }
        self.alloc_backing(&req)
    }

    /// [`alloc`](Self::alloc) on the CPU `cpu` names.
    pub fn alloc_current<C: CurrentCpu + ?Sized>(
        &self,
        cpu: &C,
        size: u64,
        align: u64,
    ) -> Result<IovaAlloc, IovaAllocError> {
        self.alloc(cpu.current_cpu(), size, align)
    }

    /// Gives back a range from [`alloc`](Self::alloc), into the cache of CPU
    /// `cpu` if its size is cached.
    ///
    /// # Errors
    ///
    /// [`ForeignAllocation`](IovaAllocError::ForeignAllocation) if another
    /// allocator handed it out, [`DoubleFree`](IovaAllocError::DoubleFree) if
    /// it was freed already (possible only through [`RawIovaAlloc`]).
    pub fn free(&self, cpu: usize, a: IovaAlloc) -> Result<(), IovaAllocError> {
        let raw = a.raw;
        if raw.owner != self.owner {
            return Err(IovaAllocError::ForeignAllocation);
        }
        let Some(slot) = self.slots.get(raw.index as usize) else {
            return Err(IovaAllocError::ForeignAllocation);
        };
        let live = tag(raw.generation, ALLOCATED);
        if slot
            .tag
            .compare_exchange(
                live,
                tag(raw.generation, CACHED),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return Err(IovaAllocError::DoubleFree);
        }
        // The slot is ours now (cached state): its extent cannot change.
        let (start, len) = (slot.start(), slot.len());
        if raw.range.start.get() >> self.shift != start || raw.range.len() > len << self.shift {
            // Not what this slot handed out: undo.
            slot.tag.store(live, Ordering::Release);
            return Err(IovaAllocError::ForeignAllocation);
        }
        self.stats.live_allocations.fetch_sub(1, Ordering::Relaxed);
        self.stats
            .live_bytes
            .fetch_sub(len << self.shift, Ordering::Relaxed);

        let class = len.trailing_zeros() as usize;
        let cacheable = len.is_power_of_two() && class < CACHE_CLASSES && start & (len - 1) == 0;
        if cacheable {
            if let Some(cache) = self.cpu_cache(cpu) {
                if let Ok(spill) = cache.push(&self.depot, class, raw.index) {
                    self.stats.cached_ranges.fetch_add(1, Ordering::Relaxed);
                    if let Some(mag) = spill {
                        self.return_cached(mag.entries());
                    }
                    return Ok(());
                }
            }
        }
        self.backing.lock().release(&self.slots, raw.index);
        Ok(())
    }

    /// [`free`](Self::free) on the CPU `cpu` names.
    pub fn free_current<C: CurrentCpu + ?Sized>(
        &self,
        cpu: &C,
        a: IovaAlloc,
    ) -> Result<(), IovaAllocError> {
        self.free(cpu.current_cpu(), a)
    }

    /// Makes `range` unavailable for allocation (a hole): expanded outward
    /// to whole granules; parts outside the aperture or already reserved are
    /// ignored. Holes cannot be removed again.
    ///
    /// An allocation blocks the whole extent behind it, including the part
    /// beyond [`IovaAlloc::range`] when its size was rounded up for the
    /// caches. Free ranges in the per-CPU caches are flushed if they are in
    /// the way. O(number of extents).
    ///
    /// # Errors
    ///
    /// [`ZeroSize`](IovaAllocError::ZeroSize) for an empty range,
    /// [`RangeInUse`](IovaAllocError::RangeInUse) if a live allocation
    /// overlaps it, [`NoExtentSlots`](IovaAllocError::NoExtentSlots) if it
    /// splits a free extent and no slot is left.
    pub fn reserve(&self, range: IovaRange) -> Result<(), IovaAllocError> {
        if range.is_empty() {
            return Err(IovaAllocError::ZeroSize);
        }
        let rs = range.start.get().max(self.aperture.start.get());
        let re = range.end.get().min(self.aperture.end.get());
        if rs >= re {
            return Ok(());
        }
        // `re <= aperture.end`, which is granule-aligned: cannot overflow.
        let (rs, re) = (rs >> self.shift, align_up(re, self.granule)? >> self.shift);
        let mut result = self.backing.lock().reserve(&self.slots, rs, re);
        if result == Err(ReserveError::InUse) || result == Err(ReserveError::NoSlots) {
            // Perhaps only cached ranges are in the way (or hold the slots).
            if self.flush_caches() > 0 {
                result = self.backing.lock().reserve(&self.slots, rs, re);
            }
        }
        result.map_err(|e| match e {
            ReserveError::InUse => IovaAllocError::RangeInUse,
            ReserveError::NoSlots => IovaAllocError::NoExtentSlots,
        })
    }

    /// Returns every range held by the per-CPU caches and the depot to the
    /// backing allocator (where it merges with its free neighbours), e.g.
    /// before a domain goes idle. Returns how many ranges were returned.
    ///
    /// Concurrent frees may refill the caches while this runs.
    pub fn flush_caches(&self) -> usize {
        let mut returned = 0;
        for cache in self.cpus.iter() {
            for class in 0..CACHE_CLASSES {
                let (loaded, prev) = cache.take(class);
                returned += loaded.entries().len() + prev.entries().len();
                self.return_cached(loaded.entries());
                self.return_cached(prev.entries());
            }
        }
        for class in 0..CACHE_CLASSES {
            for _ in 0..DEPOT_MAGS {
                let Some(mag) = self.depot.lock().take(class) else {
                    break;
                };
                returned += mag.entries().len();
                self.return_cached(mag.entries());
            }
        }
        returned
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> IovaAllocStats {
        let b = self.backing.lock().counts();
        let total = self.slots.len() as u64;
        IovaAllocStats {
            live_allocations: self.stats.live_allocations.load(Ordering::Relaxed),
            live_bytes: self.stats.live_bytes.load(Ordering::Relaxed),
            cached_ranges: self.stats.cached_ranges.load(Ordering::Relaxed),
            cache_hits: self.stats.cache_hits.load(Ordering::Relaxed),
            cache_misses: self.stats.cache_misses.load(Ordering::Relaxed),
            uncached_cpu: self.stats.uncached_cpu.load(Ordering::Relaxed),
            free_bytes: b.free_granules << self.shift,
            free_extents: b.free_extents,
            extent_slots_used: total - b.unused_slots,
            extent_slots_total: total,
        }
    }

    /// Validates a request and works out extent length, alignment and cache
    /// class.
    fn request(&self, size: u64, align: u64) -> Result<Request, IovaAllocError> {
        if size == 0 {
            return Err(IovaAllocError::ZeroSize);
        }
        if !align.is_power_of_two() {
            return Err(IovaAllocError::InvalidAlignment);
        }
        let bytes = align_up(size, self.granule)?;
        let n = bytes >> self.shift;
        let mut a = align.max(self.granule) >> self.shift;
        let mut len = n;
        let mut class = None;
        if !self.cpus.is_empty() && n <= 1 << (CACHE_CLASSES - 1) {
            len = n.next_power_of_two();
            if a <= len {
                class = Some(len.trailing_zeros() as usize);
            }
            a = a.max(len);
        }
        if len > self.aperture.len() >> self.shift {
            return Err(IovaAllocError::NoSpace);
        }
        Ok(Request {
            bytes,
            len,
            align: a,
            class,
        })
    }

    /// The cache of `cpu`, counting indices without one.
    fn cpu_cache(&self, cpu: usize) -> Option<&CpuCache> {
        let cache = self.cpus.get(cpu);
        if cache.is_none() && !self.cpus.is_empty() {
            self.stats.uncached_cpu.fetch_add(1, Ordering::Relaxed);
        }
        cache
    }

    fn alloc_cached(&self, cache: &CpuCache, class: usize, req: &Request) -> Option<IovaAlloc> {
        let i = cache.pop(&self.depot, class)?;
        self.stats.cached_ranges.fetch_sub(1, Ordering::Relaxed);
        let slot = self.slots.get(i as usize)?;
        let t = slot.tag.load(Ordering::Acquire);
        if tag_state(t) != CACHED {
            return None;
        }
        let g = next_gen(tag_gen(t));
        slot.tag
            .compare_exchange(t, tag(g, ALLOCATED), Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        Some(self.handle(i, slot.start(), req, g))
    }

    fn alloc_backing(&self, req: &Request) -> Result<IovaAlloc, IovaAllocError> {
        let mut r = self.backing.lock().alloc(&self.slots, req.len, req.align);
        if r.is_err() && self.flush_caches() > 0 {
            r = self.backing.lock().alloc(&self.slots, req.len, req.align);
        }
        match r {
            Ok((i, start, g)) => Ok(self.handle(i, start, req, g)),
            Err(BackingError::NoSpace) => Err(IovaAllocError::NoSpace),
            Err(BackingError::NoSlots) => Err(IovaAllocError::NoExtentSlots),
        }
    }

    fn handle(&self, index: u32, start: u64, req: &Request, generation: u64) -> IovaAlloc {
        self.stats.live_allocations.fetch_add(1, Ordering::Relaxed);
        self.stats
            .live_bytes
            .fetch_add(req.len << self.shift, Ordering::Relaxed);
        let start = start << self.shift;
        IovaAlloc {
            raw: RawIovaAlloc {
                // `start + bytes <= aperture.end`: no overflow.
                range: IovaRange {
                    start: Iova(start),
                    end: Iova(start + req.bytes),
                },
                index,
                owner: self.owner,
                generation,
            },
        }
    }

    /// Gives cached entries back to the backing allocator.
    fn return_cached(&self, entries: &[u32]) {
        if entries.is_empty() {
            return;
        }
        let mut backing = self.backing.lock();
        for &i in entries {
            backing.release(&self.slots, i);
        }
        drop(backing);
        self.stats
            .cached_ranges
            .fetch_sub(entries.len() as u64, Ordering::Relaxed);
    }
}

#[cfg(feature = "alloc")]
impl IovaAllocator<'static> {
    /// An allocator that owns its storage: `max_extents` extent slots (see
    /// [`extent_slots_needed`]; at most `u32::MAX - 1` are used) and caches
    /// for `cpus` CPU indices.
    ///
    /// # Errors
    ///
    /// As [`new`](Self::new) (`max_extents == 0` is
    /// [`NoExtentSlots`](IovaAllocError::NoExtentSlots)), or
    /// [`OutOfMemory`](IovaAllocError::OutOfMemory).
    pub fn with_capacity(
        config: IovaAllocatorConfig,
        max_extents: usize,
        cpus: usize,
    ) -> Result<Self, IovaAllocError> {
        use alloc::vec::Vec;
        let max_extents = max_extents.min(NIL as usize);
        let mut slots = Vec::new();
        slots
            .try_reserve_exact(max_extents)
            .map_err(|_| IovaAllocError::OutOfMemory)?;
        slots.resize_with(max_extents, ExtentSlot::new);
        let mut caches = Vec::new();
        caches
            .try_reserve_exact(cpus)
            .map_err(|_| IovaAllocError::OutOfMemory)?;
        caches.resize_with(cpus, CpuCache::new);
        Self::build(
            config,
            Storage::Owned(slots.into_boxed_slice()),
            Storage::Owned(caches.into_boxed_slice()),
        )
    }
}

impl fmt::Debug for IovaAllocator<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IovaAllocator")
            .field("aperture", &self.aperture)
            .field("granule", &self.granule)
            .field("cpus", &self.cpus.len())
            .field("extent_slots", &self.slots.len())
            .finish_non_exhaustive()
    }
}

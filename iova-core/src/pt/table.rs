//! The generic radix page-table engine.
//!
//! # Concurrency
//!
//! Every operation takes `&self`. Callers on several CPUs may map and unmap at
//! once as long as their ranges are disjoint, which the IOVA allocator
//! guarantees: each range has one owner until it is freed. New tables are
//! installed with compare-and-swap (the loser frees its unpublished table and
//! uses the winner's). A table is detached and freed only by an unmap whose
//! range covers the table's whole span, or by a map that puts a block where an
//! empty table was: that caller owns the span, so no other caller can be
//! walking below it. Tables emptied piece by piece stay until the same span is
//! unmapped whole, [`PageTable::reclaim_empty`] runs with exclusive access, or
//! the table is dropped. This is the rule Linux's io-pgtable follows.
//!
//! # Freeing after the flush
//!
//! A detached table may still be cached by the IOMMU's walk caches, so it goes
//! onto the gather's list ([`IotlbGather`]) and returns to the frame allocator
//! only in [`PageTable::release_tables`], which the backend calls after the
//! invalidation that made it unreachable has completed.

#[cfg(not(loom))]
use core::hint::spin_loop;
#[cfg(not(loom))]
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};
#[cfg(loom)]
use loom::hint::spin_loop;
// `cfg(loom)`: the table's entries and walker count are loom's atomics, so
// that `tests/loom_table.rs` explores every interleaving of concurrent
// installs; the frames then hold loom atomics (see that test's allocator).
#[cfg(loom)]
use loom::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};

use crate::addr::{Iova, IovaRange, PhysAddr};
use crate::cache::{CacheMaintenance, Coherent};
use crate::error::Error;
use crate::frame::FrameAllocator;
use crate::gather::IotlbGather;
use crate::prot::Prot;
use crate::pt::format::{Entry, PtFormat};

/// Deepest tree the engine handles (x86 5-level paging has 5).
pub const MAX_LEVELS: usize = 6;

/// Per-depth arrays are this long (a power of two, so masking a depth with
/// `GEO_SLOTS - 1` proves it in bounds without a check).
const GEO_SLOTS: usize = 8;

/// Marks a freed table's first entry as a link in the gather's free list. Bits
/// 1:0 stay clear, so every supported format reads the entry as not present.
const FREE_LINK: u64 = 1 << 11;

/// The shape of a tree, computed once from the format.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    levels: usize,
    /// log2 of the span of one entry at each depth.
    shift: [u32; GEO_SLOTS],
    /// Index bits of the table at each depth.
    bits: [u32; GEO_SLOTS],
    /// `(1 << bits[d]) - 1`.
    mask: [u64; GEO_SLOTS],
    /// Whether a leaf may sit at each depth.
    leaf: [bool; GEO_SLOTS],
    ia_bits: u32,
    /// The smallest page.
    granule: u64,
    /// IOVAs end at or below this (`1 << ia_bits`).
    ia_limit: u64,
    /// Output addresses end at or below this (`1 << oa_bits`, or `u64::MAX`).
    oa_limit: u64,
    /// The highest IOVA and output address at which a granule fits below the limits.
    ia_last_page: u64,
    oa_last_page: u64,
    /// `levels` when the tree has the common shape of [`Shape4K`], else 0.
    shape_4k: usize,
}

impl Geometry {
    fn new<F: PtFormat>(fmt: &F) -> Result<Self, Error> {
        let levels = fmt.levels();
        if levels == 0 || levels > MAX_LEVELS {
            return Err(Error::OutOfRange);
        }
        let mut g = Geometry {
            levels,
            shift: [0; GEO_SLOTS],
            bits: [0; GEO_SLOTS],
            mask: [0; GEO_SLOTS],
            leaf: [false; GEO_SLOTS],
            ia_bits: 0,
            granule: 1 << fmt.granule_shift(),
            ia_limit: 0,
            oa_limit: 0,
            ia_last_page: 0,
            oa_last_page: 0,
            shape_4k: 0,
        };
        let mut shift = fmt.granule_shift();
        for d in (0..levels).rev() {
            let bits = fmt.index_bits(d);
            if bits == 0 || bits > 16 {
                return Err(Error::OutOfRange);
            }
            g.shift[d] = shift;
            g.bits[d] = bits;
            g.mask[d] = (1 << bits) - 1;
            g.leaf[d] = d == levels - 1 || fmt.block_allowed(d);
            shift += bits;
        }
        // Freed tables go back to the frame allocator with one size, so every
        // table below the root has the same width.
        if g.bits[1..levels].windows(2).any(|w| w[0] != w[1]) {
            return Err(Error::OutOfRange);
        }
        if shift >= 64 || fmt.oa_bits() > 64 {
            return Err(Error::OutOfRange);
        }
        g.ia_bits = shift.min(fmt.max_ia_bits());
        g.ia_limit = 1 << g.ia_bits;
        g.oa_limit = match fmt.oa_bits() {
            64 => u64::MAX,
            bits => 1 << bits,
        };
        // Both limits are at least one granule.
        if g.ia_limit < g.granule || g.oa_limit < g.granule {
            return Err(Error::OutOfRange);
        }
        g.ia_last_page = g.ia_limit - g.granule;
        g.oa_last_page = g.oa_limit - g.granule;
        if g.granule == 1 << 12 && g.bits[1..levels].iter().all(|&b| b == 9) {
            g.shape_4k = levels;
        }
        Ok(g)
    }

    #[inline]
    fn index(&self, iova: u64, depth: usize) -> usize {
        let d = depth & (GEO_SLOTS - 1); // a no-op for valid depths; spares the bounds checks
        ((iova >> self.shift[d]) & self.mask[d]) as usize
    }

    #[inline]
    fn table_bytes(&self, depth: usize) -> usize {
        8 << self.bits[depth]
    }

    #[inline]
    fn granule(&self) -> u64 {
        self.granule
    }
}

/// Where the walk finds a depth's index bits. The walk is written once over
/// this and compiled both for any geometry ([`AnyShape`]) and, with constant
/// shifts and a fixed number of levels, for the shape nearly every format has
/// ([`Shape4K`]): mapping scattered pages is mostly walking.
trait Shape: Copy {
    /// Number of levels.
    fn levels(self, geo: &Geometry) -> usize;
    /// The index of `iova`'s entry in its table at `depth`.
    fn index(self, geo: &Geometry, iova: u64, depth: usize) -> usize;
}

/// The geometry as computed at run time.
#[derive(Clone, Copy)]
struct AnyShape;

impl Shape for AnyShape {
    #[inline]
    fn levels(self, geo: &Geometry) -> usize {
        geo.levels
    }
    #[inline]
    fn index(self, geo: &Geometry, iova: u64, depth: usize) -> usize {
        geo.index(iova, depth)
    }
}

/// `LEVELS` levels over a 4 KiB granule with 9 index bits at every depth below
/// the root (x86-64 4- and 5-level, LPAE 4K at 39 to 48 bits, VT-d second
/// level); the root may be narrower.
#[derive(Clone, Copy)]
struct Shape4K<const LEVELS: usize>;

impl<const LEVELS: usize> Shape for Shape4K<LEVELS> {
    #[inline]
    fn levels(self, _: &Geometry) -> usize {
        LEVELS
    }
    #[inline]
    fn index(self, geo: &Geometry, iova: u64, depth: usize) -> usize {
        let shift = 12 + 9 * (LEVELS - 1 - depth) as u32;
        let mask = if depth == 0 { geo.mask[0] } else { 0x1ff };
        ((iova >> shift) & mask) as usize
    }
}

/// What [`PageTable::translate`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    /// The output address for the IOVA asked about.
    pub pa: PhysAddr,
    /// The leaf's permissions.
    pub prot: Prot,
    /// Size of the leaf (page or block) that maps it.
    pub page_size: u64,
}

/// A page table of format `F` whose tables come from `A`, with cache
/// maintenance `C` for walkers that do not snoop CPU caches.
pub struct PageTable<F: PtFormat, A: FrameAllocator, C: CacheMaintenance = Coherent> {
    fmt: F,
    frames: A,
    cache: C,
    geo: Geometry,
    root: PhysAddr,
    /// Software walkers ([`PageTable::translate`]) in flight; table release waits for zero.
    walkers: AtomicUsize,
    /// Tells this table's freed tables apart from others' in a gather.
    id: u64,
}

static NEXT_TABLE_ID: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(1);

impl<F: PtFormat, A: FrameAllocator> PageTable<F, A> {
    /// An empty table for a coherent walker.
    pub fn new(fmt: F, frames: A) -> Result<Self, Error> {
        Self::with_cache(fmt, frames, Coherent)
    }
}

impl<F: PtFormat, A: FrameAllocator, C: CacheMaintenance> PageTable<F, A, C> {
    /// An empty table; entries are cleaned with `cache` after every write when
    /// the walker is not coherent.
    pub fn with_cache(fmt: F, frames: A, cache: C) -> Result<Self, Error> {
        let geo = Geometry::new(&fmt)?;
        let root = alloc_table(&geo, &frames, geo.table_bytes(0))?;
        let pt = Self {
            fmt,
            frames,
            cache,
            geo,
            root,
            walkers: AtomicUsize::new(0),
            id: NEXT_TABLE_ID.fetch_add(1, Ordering::Relaxed),
        };
        pt.clean(root, geo.table_bytes(0));
        pt.complete();
        Ok(pt)
    }

    /// Physical address of the root table (for TTBR, VTTBR, SLPTPTR, ...).
    pub fn root(&self) -> PhysAddr {
        self.root
    }

    /// The format.
    pub fn format(&self) -> &F {
        &self.fmt
    }

    /// The frame allocator the tables come from.
    pub fn frames(&self) -> &A {
        &self.frames
    }

    /// The cache maintenance used for a non-coherent walker.
    pub fn cache(&self) -> &C {
        &self.cache
    }

    /// Input address bits: IOVAs must be below `1 << ia_bits()`. What the
    /// levels reach, or less where the format says so
    /// ([`PtFormat::max_ia_bits`]); an IOVA aperture must end at or below
    /// this.
    pub fn ia_bits(&self) -> u32 {
        self.geo.ia_bits
    }

    /// The IOVAs this table maps, `[0, 1 << ia_bits())`: an allocator's
    /// aperture must lie within it.
    pub fn input_range(&self) -> IovaRange {
        IovaRange {
            start: Iova(0),
            end: Iova(self.geo.ia_limit),
        }
    }

    /// The smallest page size.
    pub fn granule(&self) -> u64 {
        self.geo.granule()
    }

    /// Bitmap of the page and block sizes this table can map (bit `n`: `1 << n`).
    pub fn page_sizes(&self) -> u64 {
        (0..self.geo.levels)
            .filter(|&d| self.geo.leaf[d])
            .fold(0, |acc, d| acc | 1 << self.geo.shift[d])
    }

    #[inline]
    fn entry(&self, table: PhysAddr, idx: usize) -> &AtomicU64 {
        let base = self.frames.phys_to_virt(table).cast::<u64>();
        // SAFETY: `table` is a table this engine allocated and has not freed (we
        // only reach tables through live entries of tables we own, and a table is
        // freed only after it was detached and no software walker is left);
        // `idx` is below the table's entry count (masked by `Geometry::index`);
        // the frame allocator's contract makes the memory valid for atomic access
        // and 8-byte aligned (frames are aligned to their size).
        #[cfg(not(loom))]
        return unsafe { AtomicU64::from_ptr(base.add(idx)) };
        // SAFETY: as above; under loom the frames are arrays of loom atomics.
        #[cfg(loom)]
        return unsafe { &*base.add(idx).cast::<AtomicU64>() };
    }

    /// The entries of `table`, a table at `depth`.
    #[inline]
    fn entries(&self, table: PhysAddr, depth: usize) -> &[AtomicU64] {
        let base = self.frames.phys_to_virt(table).cast::<AtomicU64>();
        // SAFETY: as in `entry`, for every index below the table's entry
        // count; a table at `depth` holds `1 << bits[depth]` entries.
        unsafe { core::slice::from_raw_parts(base, 1 << self.geo.bits[depth]) }
    }

    #[inline]
    fn clean(&self, pa: PhysAddr, len: usize) {
        if !self.cache.is_coherent() {
            self.cache.clean(pa, len as u64);
        }
    }

    #[inline]
    fn clean_entries(&self, table: PhysAddr, first: usize, last: usize) {
        if !self.cache.is_coherent() {
            self.cache.clean(
                PhysAddr(table.0 + first as u64 * 8),
                (last - first + 1) as u64 * 8,
            );
        }
    }

    #[inline]
    fn complete(&self) {
        if !self.cache.is_coherent() {
            self.cache.complete();
        }
    }

    fn check_range(&self, iova: Iova, len: u64) -> Result<u64, Error> {
        if len == 0 {
            return Err(Error::ZeroLength);
        }
        let g = self.geo.granule();
        if !iova.is_aligned(g) || len & (g - 1) != 0 {
            return Err(Error::Misaligned);
        }
        let end = iova.checked_add(len)?.0;
        if end > self.geo.ia_limit {
            return Err(Error::OutOfRange);
        }
        Ok(end)
    }

    fn check_gather(&self, gather: &IotlbGather) -> Result<(), Error> {
        if gather.accepts_freed_from(self.id) {
            Ok(())
        } else {
            Err(Error::ForeignGather)
        }
    }

    /// Maps `[iova, iova + len)` to `[pa, pa + len)` with `prot`, using the
    /// largest page or block that fits at each step. Writes entries only: the
    /// gather records what the backend's flush must do.
    ///
    /// On error nothing of this call stays mapped (what it had written is
    /// unmapped again and recorded in `gather`).
    #[inline]
    pub fn map(
        &self,
        iova: Iova,
        pa: PhysAddr,
        len: u64,
        prot: Prot,
        gather: &mut IotlbGather,
    ) -> Result<(), Error> {
        self.check_gather(gather)?;
        let geo = &self.geo;
        // One granule, all in reach: the common scattered case, checked in one
        // go. Anything else takes the checks below, which name the error.
        if len == geo.granule
            && (iova.0 | pa.0) & (geo.granule - 1) == 0
            && iova.0 <= geo.ia_last_page
            && pa.0 <= geo.oa_last_page
            && self.fmt.supports(prot)
        {
            let (iova, pa) = (iova.0, pa.0);
            return match geo.shape_4k {
                3 => self.map_granule(Shape4K::<3>, iova, pa, prot, gather),
                4 => self.map_granule(Shape4K::<4>, iova, pa, prot, gather),
                5 => self.map_granule(Shape4K::<5>, iova, pa, prot, gather),
                _ => self.map_granule(AnyShape, iova, pa, prot, gather),
            };
        }
        self.check_range(iova, len)?;
        if !pa.is_aligned(self.geo.granule()) {
            return Err(Error::Misaligned);
        }
        if pa.checked_add(len)?.0 > self.geo.oa_limit {
            return Err(Error::OutOfRange);
        }
        if !self.fmt.supports(prot) {
            return Err(Error::InvalidProt);
        }
        self.map_runs(iova.0, pa.0, len, prot, gather)
    }

    /// The general case of [`map`](Self::map), arguments checked: runs of the
    /// largest leaves that fit.
    #[inline(never)]
    fn map_runs(
        &self,
        iova: u64,
        pa: u64,
        len: u64,
        prot: Prot,
        gather: &mut IotlbGather,
    ) -> Result<(), Error> {
        let mut done = 0;
        while done < len {
            let (n, result) = self.map_run(iova + done, pa + done, len - done, prot, gather);
            done += n;
            if let Err(e) = result {
                if done > 0 {
                    // Removes exactly the leaves this call wrote, so nothing can
                    // straddle the range's ends.
                    self.unmap_range(iova, iova + done, gather);
                }
                self.complete();
                return Err(e);
            }
        }
        self.complete();
        gather.add_mapped(Iova(iova), len);
        Ok(())
    }

    /// Maps one granule: the scattered case, which needs no search for the
    /// page size and no run.
    #[inline]
    fn map_granule<S: Shape>(
        &self,
        shape: S,
        iova: u64,
        pa: u64,
        prot: Prot,
        gather: &mut IotlbGather,
    ) -> Result<(), Error> {
        let depth = shape.levels(&self.geo) - 1;
        let table = self.walk_alloc(shape, iova, depth)?;
        let idx = shape.index(&self.geo, iova, depth);
        let slot = self.entry(table, idx);
        // At the last depth a present entry is always a leaf.
        if self.fmt.is_present(depth, slot.load(Ordering::Acquire)) {
            return Err(Error::AlreadyMapped);
        }
        slot.store(
            self.fmt.encode_leaf(depth, PhysAddr(pa), prot),
            Ordering::Release,
        );
        self.clean_entries(table, idx, idx);
        self.complete();
        gather.record_mapped(iova, iova + self.geo.granule());
        Ok(())
    }

    /// Writes a run of same-sized leaves into one table; returns the bytes mapped,
    /// and the error that stopped the run early, if any.
    fn map_run(
        &self,
        iova: u64,
        pa: u64,
        remaining: u64,
        prot: Prot,
        gather: &mut IotlbGather,
    ) -> (u64, Result<(), Error>) {
        let geo = &self.geo;
        // One granule (the common scattered case) needs no search.
        let depth = if remaining == geo.granule() {
            geo.levels - 1
        } else {
            let Some(d) = (0..geo.levels).find(|&d| {
                let size = 1u64 << geo.shift[d];
                geo.leaf[d] && (iova | pa) & (size - 1) == 0 && remaining >= size
            }) else {
                return (0, Err(Error::Misaligned));
            };
            d
        };
        let table = match self.walk_alloc(AnyShape, iova, depth) {
            Ok(t) => t,
            Err(e) => return (0, Err(e)),
        };
        let size = 1u64 << geo.shift[depth];
        let first = geo.index(iova, depth);
        let count = ((remaining >> geo.shift[depth]) as usize).min((1 << geo.bits[depth]) - first);
        let mut written = 0;
        let mut result = Ok(());
        for i in 0..count {
            let slot = self.entry(table, first + i);
            let raw = slot.load(Ordering::Acquire);
            let off = i as u64 * size;
            let leaf = self.fmt.encode_leaf(depth, PhysAddr(pa + off), prot);
            if self.fmt.is_present(depth, raw) {
                if !self.fmt.is_table(depth, raw)
                    || !self.subtree_is_empty(self.fmt.table_pa(raw), depth + 1)
                {
                    result = Err(Error::AlreadyMapped);
                    break;
                }
                // An empty table where a block fits: we own the whole span, so
                // nobody else walks below it; replace it and free it after the flush.
                slot.store(leaf, Ordering::Release);
                let mut none = 0;
                self.free_subtree(self.fmt.table_pa(raw), depth + 1, gather, &mut none);
                gather.add_table_change(Iova(iova + off), size);
            } else {
                slot.store(leaf, Ordering::Release);
            }
            written += 1;
        }
        if written > 0 {
            self.clean_entries(table, first, first + written - 1);
        }
        (written as u64 * size, result)
    }

    /// The table at `depth` covering `iova`, installing missing tables on the way.
    #[inline]
    fn walk_alloc<S: Shape>(&self, shape: S, iova: u64, depth: usize) -> Result<PhysAddr, Error> {
        let mut table = self.root;
        for d in 0..depth {
            let idx = shape.index(&self.geo, iova, d);
            let raw = self.entry(table, idx).load(Ordering::Acquire);
            table = if self.fmt.is_next_table(d, raw) {
                self.fmt.table_pa(raw)
            } else {
                match self.install_tables(table, idx, d, raw, iova, depth)? {
                    (t, reached) if reached == depth => return Ok(t),
                    // Another CPU installed this level first: go on below it.
                    (t, _) => t,
                }
            };
        }
        Ok(table)
    }

    /// Entry `idx` of `parent` (at `depth`) held `raw`, which is not a table:
    /// builds the missing tables down to `target` where nothing can see them,
    /// and publishes them all with one compare-and-swap. Returns the table at
    /// `target`, or, when another CPU installed a table there first, that
    /// table and `depth + 1` (the walk goes on from it).
    #[cold]
    #[inline(never)]
    fn install_tables(
        &self,
        parent: PhysAddr,
        idx: usize,
        depth: usize,
        raw: u64,
        iova: u64,
        target: usize,
    ) -> Result<(PhysAddr, usize), Error> {
        if self.fmt.is_present(depth, raw) {
            return Err(Error::AlreadyMapped);
        }
        // Every table below the root has the same size (`Geometry::new`).
        let bytes = self.geo.table_bytes(1);
        let mut chain = [PhysAddr(0); MAX_LEVELS];
        let new = &mut chain[..target - depth];
        for d in 0..new.len() {
            match alloc_table(&self.geo, &self.frames, bytes) {
                Ok(t) => new[d] = t,
                Err(e) => {
                    self.free_unpublished(&new[..d]);
                    return Err(e);
                }
            }
            if d > 0 {
                let at = depth + d;
                let slot = self.entry(new[d - 1], self.geo.index(iova, at));
                slot.store(self.fmt.encode_table(at, new[d]), Ordering::Relaxed);
            }
        }
        for &t in new.iter() {
            self.clean(t, bytes);
        }
        let slot = self.entry(parent, idx);
        match slot.compare_exchange(
            raw,
            self.fmt.encode_table(depth, new[0]),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                self.clean_entries(parent, idx, idx);
                Ok((new[new.len() - 1], target))
            }
            Err(cur) => {
                self.free_unpublished(new);
                if self.fmt.is_table(depth, cur) {
                    Ok((self.fmt.table_pa(cur), depth + 1))
                } else {
                    Err(Error::AlreadyMapped)
                }
            }
        }
    }

    /// Returns tables that were allocated but never linked into the tree.
    fn free_unpublished(&self, tables: &[PhysAddr]) {
        for &t in tables {
            // SAFETY: `t` came from `alloc_zeroed` with the size of a table
            // below the root and was never published, so nothing else can
            // reach it.
            unsafe { self.frames.free(t, self.geo.table_bytes(1)) };
        }
    }

    fn subtree_is_empty(&self, table: PhysAddr, depth: usize) -> bool {
        (0..1usize << self.geo.bits[depth]).all(|i| {
            let raw = self.entry(table, i).load(Ordering::Acquire);
            !self.fmt.is_present(depth, raw)
                || (self.fmt.is_table(depth, raw)
                    && self.subtree_is_empty(self.fmt.table_pa(raw), depth + 1))
        })
    }

    /// Puts `table` and every table below it on the gather's free list; returns
    /// the bytes of leaves that were still in it and records their sizes.
    fn free_subtree(
        &self,
        table: PhysAddr,
        depth: usize,
        gather: &mut IotlbGather,
        page_sizes: &mut u64,
    ) -> u64 {
        let mut bytes = 0;
        for i in 0..1usize << self.geo.bits[depth] {
            let raw = self.entry(table, i).load(Ordering::Acquire);
            if !self.fmt.is_present(depth, raw) {
                continue;
            }
            if self.fmt.is_table(depth, raw) {
                bytes += self.free_subtree(self.fmt.table_pa(raw), depth + 1, gather, page_sizes);
            } else {
                bytes += 1 << self.geo.shift[depth];
                *page_sizes |= 1 << self.geo.shift[depth];
            }
        }
        let next = gather
            .push_freed(self.id, table)
            .map_or(0, |n| n.0 | FREE_LINK);
        self.entry(table, 0).store(next, Ordering::Release);
        bytes
    }

    /// Unmaps every leaf in `[iova, iova + len)` and returns how many bytes were
    /// mapped there. Holes are skipped. A block that lies partly outside the range
    /// is [`Error::PartialUnmap`], checked before anything changes.
    pub fn unmap(&self, iova: Iova, len: u64, gather: &mut IotlbGather) -> Result<u64, Error> {
        let end = self.check_range(iova, len)?;
        self.check_gather(gather)?;
        for probe in [iova.0, end - 1] {
            if let Some((start, size)) = self.leaf_at(probe) {
                if start < iova.0 || start + size > end {
                    return Err(Error::PartialUnmap);
                }
            }
        }
        Ok(self.unmap_range(iova.0, end, gather))
    }

    fn unmap_range(&self, start: u64, end: u64, gather: &mut IotlbGather) -> u64 {
        let mut sizes = 0;
        let mut tables = false;
        let bytes = self.unmap_level(self.root, 0, start, end, gather, &mut sizes, &mut tables);
        self.complete();
        if bytes > 0 {
            gather.add_unmapped(Iova(start), end - start, sizes);
        }
        if tables {
            gather.add_table_change(Iova(start), end - start);
        }
        bytes
    }

    #[allow(clippy::too_many_arguments)]
    fn unmap_level(
        &self,
        table: PhysAddr,
        depth: usize,
        start: u64,
        end: u64,
        gather: &mut IotlbGather,
        sizes: &mut u64,
        tables: &mut bool,
    ) -> u64 {
        if depth + 1 == self.geo.levels {
            return self.unmap_pages(table, depth, start, end, sizes);
        }
        let size = 1u64 << self.geo.shift[depth];
        let mut a = start;
        let mut bytes = 0;
        let mut dirty: Option<(usize, usize)> = None;
        while a < end {
            let idx = self.geo.index(a, depth);
            let slot_start = a & !(size - 1);
            let slot_end = slot_start + size;
            let next = slot_end.min(end);
            let slot = self.entry(table, idx);
            let raw = slot.load(Ordering::Acquire);
            if self.fmt.is_table(depth, raw) {
                let child = self.fmt.table_pa(raw);
                if a == slot_start && next == slot_end {
                    slot.store(0, Ordering::Release);
                    dirty = Some(dirty.map_or((idx, idx), |(f, _)| (f, idx)));
                    bytes += self.free_subtree(child, depth + 1, gather, sizes);
                    *tables = true;
                } else {
                    bytes += self.unmap_level(child, depth + 1, a, next, gather, sizes, tables);
                }
            } else if self.fmt.is_present(depth, raw) {
                // `unmap` checked that no block straddles the range's ends.
                slot.store(0, Ordering::Release);
                dirty = Some(dirty.map_or((idx, idx), |(f, _)| (f, idx)));
                bytes += size;
                *sizes |= size;
            }
            a = next;
        }
        if let Some((first, last)) = dirty {
            self.clean_entries(table, first, last);
        }
        bytes
    }

    /// [`unmap_level`](Self::unmap_level) in a last-level table, where every
    /// present entry is a page: `[start, end)` is one run of entries in it.
    fn unmap_pages(
        &self,
        table: PhysAddr,
        depth: usize,
        start: u64,
        end: u64,
        sizes: &mut u64,
    ) -> u64 {
        let shift = self.geo.shift[depth];
        let first = self.geo.index(start, depth);
        let run = &self.entries(table, depth)[first..first + ((end - start) >> shift) as usize];
        let mut cleared = 0u64;
        for slot in run {
            // Relaxed: the range is the caller's alone, so nobody else writes
            // these entries, and a page entry carries nothing a walker must see
            // ordered before it (software walkers read an old page or none; the
            // flush orders the clears before the IOMMU's next walk). Holes are
            // zero already (the engine writes nothing else into a live table):
            // storing without a branch changes nothing there.
            cleared += u64::from(self.fmt.is_present(depth, slot.load(Ordering::Relaxed)));
            slot.store(0, Ordering::Relaxed);
        }
        if cleared > 0 {
            *sizes |= 1 << shift;
            // The whole run: cleaning the holes in it too is harmless.
            self.clean_entries(table, first, first + run.len() - 1);
        }
        cleared << shift
    }

    /// The leaf covering `iova`, as (start, size).
    fn leaf_at(&self, iova: u64) -> Option<(u64, u64)> {
        let mut table = self.root;
        for d in 0..self.geo.levels {
            let raw = self
                .entry(table, self.geo.index(iova, d))
                .load(Ordering::Acquire);
            if !self.fmt.is_present(d, raw) {
                return None;
            }
            if !self.fmt.is_table(d, raw) {
                let size = 1u64 << self.geo.shift[d];
                return Some((iova & !(size - 1), size));
            }
            table = self.fmt.table_pa(raw);
        }
        None
    }

    /// Where `iova` translates to, as the walker would see it in memory (the
    /// IOTLB may still hold older translations until the next flush).
    ///
    /// Safe to call while other CPUs map and unmap: [`release_tables`] waits
    /// for software walks in flight before freeing detached tables. So do not
    /// flush from an interrupt handler that can interrupt a `translate` on the
    /// same CPU.
    ///
    /// [`release_tables`]: PageTable::release_tables
    pub fn translate(&self, iova: Iova) -> Option<Translation> {
        if iova.0 >> self.geo.ia_bits != 0 {
            return None;
        }
        self.walkers.fetch_add(1, Ordering::SeqCst);
        // Pairs with the fence in `release_tables`: either that one sees this
        // walker, or this walk sees the detach (the store-buffering pattern:
        // without both fences, each side may read the other's old value).
        fence(Ordering::SeqCst);
        let mut table = self.root;
        let mut found = None;
        for d in 0..self.geo.levels {
            let raw = self
                .entry(table, self.geo.index(iova.0, d))
                .load(Ordering::Acquire);
            match self.fmt.decode(d, raw) {
                Entry::Invalid => break,
                Entry::Table(next) => table = next,
                Entry::Leaf { pa, prot } => {
                    let size = 1u64 << self.geo.shift[d];
                    found = Some(Translation {
                        pa: PhysAddr(pa.0 + iova.offset_in(size)),
                        prot,
                        page_size: size,
                    });
                    break;
                }
            }
        }
        self.walkers.fetch_sub(1, Ordering::SeqCst);
        found
    }

    /// Returns the tables that `gather` holds to the frame allocator.
    ///
    /// # Safety
    ///
    /// The invalidation covering `gather` has completed on every IOMMU that
    /// walks this table, so no walker holds a pointer to those tables. (Tables
    /// that another page table put in `gather` are left alone.)
    pub unsafe fn release_tables(&self, gather: &mut IotlbGather) {
        let mut next = gather.take_freed(self.id);
        // A software walker that started before the tables were detached may
        // still be reading them; it finishes in a bounded number of steps.
        // The fence orders the detaching stores before the count is read
        // (see `translate`).
        fence(Ordering::SeqCst);
        while self.walkers.load(Ordering::SeqCst) != 0 {
            spin_loop();
        }
        while let Some(table) = next {
            let link = self.entry(table, 0).load(Ordering::Acquire);
            next = (link & FREE_LINK != 0).then_some(PhysAddr(link & !FREE_LINK));
            // SAFETY: the table was allocated by this engine with the size of a
            // non-root table, detached from the tree, pushed once on the list, and
            // the caller guarantees no hardware walker can reach it any more.
            unsafe { self.frames.free(table, self.geo.table_bytes(1)) };
        }
    }

    /// Detaches every table that holds no valid entry (the root excepted) and
    /// puts it on `gather`'s free list. Needs exclusive access, because emptiness
    /// is only stable when nobody else maps.
    pub fn reclaim_empty(&mut self, gather: &mut IotlbGather) -> Result<usize, Error> {
        self.check_gather(gather)?;
        let before = gather.freed_tables();
        self.reclaim_level(self.root, 0, 0, gather);
        Ok(gather.freed_tables() - before)
    }

    fn reclaim_level(
        &self,
        table: PhysAddr,
        depth: usize,
        base: u64,
        gather: &mut IotlbGather,
    ) -> bool {
        let mut empty = true;
        for i in 0..1usize << self.geo.bits[depth] {
            let slot = self.entry(table, i);
            let raw = slot.load(Ordering::Acquire);
            if !self.fmt.is_present(depth, raw) {
                continue;
            }
            let span = base + ((i as u64) << self.geo.shift[depth]);
            if self.fmt.is_table(depth, raw)
                && self.reclaim_level(self.fmt.table_pa(raw), depth + 1, span, gather)
            {
                slot.store(0, Ordering::Release);
                self.clean_entries(table, i, i);
                let mut none = 0;
                self.free_subtree(self.fmt.table_pa(raw), depth + 1, gather, &mut none);
                gather.add_table_change(Iova(span), 1 << self.geo.shift[depth]);
            } else {
                empty = false;
            }
        }
        self.complete();
        empty
    }

    fn free_all(&mut self, table: PhysAddr, depth: usize) {
        if depth + 1 < self.geo.levels {
            for i in 0..1usize << self.geo.bits[depth] {
                let raw = self.entry(table, i).load(Ordering::Acquire);
                if self.fmt.is_table(depth, raw) {
                    self.free_all(self.fmt.table_pa(raw), depth + 1);
                }
            }
        }
        // SAFETY: `table` was allocated by this engine with this depth's size and
        // is reachable from the root; `Drop` owns the tree exclusively and the
        // owner detached it from the hardware before dropping (see `Drop`).
        unsafe { self.frames.free(table, self.geo.table_bytes(depth)) };
    }
}

/// A zeroed table the format can point to: a frame above the format's output
/// size would be silently truncated by the entry encoding.
fn alloc_table<A: FrameAllocator>(
    geo: &Geometry,
    frames: &A,
    bytes: usize,
) -> Result<PhysAddr, Error> {
    let pa = frames.alloc_zeroed(bytes).ok_or(Error::NoMemory)?;
    let bytes = bytes as u64;
    let reachable = geo
        .oa_limit
        .checked_sub(bytes)
        .is_some_and(|last| pa.0 <= last);
    if !reachable || !pa.is_aligned(bytes) {
        // SAFETY: just allocated with this size, never published.
        unsafe { frames.free(pa, bytes as usize) };
        return Err(Error::TableUnreachable);
    }
    Ok(pa)
}

/// Dropping a page table frees every table in it. Its owner (a backend domain)
/// must first make sure no IOMMU can walk it any more: detach it from every
/// device and invalidate.
impl<F: PtFormat, A: FrameAllocator, C: CacheMaintenance> Drop for PageTable<F, A, C> {
    fn drop(&mut self) {
        let root = self.root;
        self.free_all(root, 0);
    }
}

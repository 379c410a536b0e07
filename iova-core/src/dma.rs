//! The two-step DMA mapping API: reserve once, link many pieces, sync once.
//!
//! This follows Linux 6.16's `dma_iova_try_alloc` / `dma_iova_link` /
//! `dma_iova_sync` / `dma_iova_unlink` / `dma_iova_destroy` / `dma_iova_free`,
//! with these differences:
//!
//! - [`DmaMapper::try_alloc_with`] (and `try_alloc`, feature `alloc`) takes a size and an explicit alignment (2 MiB or
//!   1 GiB alignment lets the engine use blocks), not a physical address.
//! - The state ([`IovaState`]) remembers every link: overlapping links,
//!   unlinking what was never linked (or half a link), and freeing while linked
//!   are errors that change nothing, instead of silent corruption.
//! - [`IovaState::free`] and [`IovaState::destroy`] consume the state, so it
//!   cannot be used again; dropping a state destroys it.
//! - [`IovaState::unlink`] only records what must be invalidated: the next
//!   [`IovaState::sync`] flushes links and unlinks together, with exactly one
//!   backend flush. An IOVA returns to the allocator only after the flush that
//!   removed its translations has completed.
//! - Non-coherent devices get cache maintenance: [`IovaState::link`] cleans
//!   the pieces, `sync` waits once for all cleans, and
//!   [`IovaState::sync_for_cpu`] invalidates before the CPU reads.
//!
//! Offsets are byte offsets into the state. A piece of physical memory must
//! sit at the same offset inside a granule as its IOVA (`offset % granule ==
//! pa % granule`). Only the lowest link may start inside a granule and only the
//! highest may end inside one, because the granule it shares cannot be mapped
//! twice.

use core::fmt;

use crate::addr::{Iova, IovaRange, PhysAddr, align_up, checked_end};
use crate::cache::CacheMaintenance;
use crate::domain::IommuDomain;
use crate::error::Error;
use crate::flush_queue::FlushQueue;
use crate::gather::IotlbGather;
use crate::iova_alloc::{CurrentCpu, IovaAlloc, IovaAllocator};
use crate::prot::Prot;

/// One linked piece of a state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Link {
    /// Byte offset of the piece in the state.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Physical address of the piece's first byte.
    pub pa: PhysAddr,
    /// What the device may do with it.
    pub prot: Prot,
}

impl Link {
    fn end(&self) -> u64 {
        self.offset + self.len
    }
    /// The granule-rounded span the link occupies, `[start, end)`.
    fn span(&self, granule: u64) -> (u64, u64) {
        (
            self.offset & !(granule - 1),
            (self.end() + granule - 1) & !(granule - 1),
        )
    }
}

/// Where a state keeps its links, sorted by offset.
///
/// Implemented for `heapless::Vec<Link, N>` (no heap: a state holds at most `N`
/// links) and, with the `alloc` feature, for `alloc::vec::Vec<Link>`.
pub trait LinkStore {
    /// The links, sorted by offset.
    fn links(&self) -> &[Link];
    /// Inserts at `index`, or [`Error::StorageFull`] leaving the store unchanged.
    fn insert(&mut self, index: usize, link: Link) -> Result<(), Error>;
    /// Removes `links()[start..end]`.
    fn remove(&mut self, start: usize, end: usize);
}

impl<const N: usize> LinkStore for heapless::Vec<Link, N> {
    fn links(&self) -> &[Link] {
        self
    }
    fn insert(&mut self, index: usize, link: Link) -> Result<(), Error> {
        heapless::Vec::insert(self, index, link).map_err(|_| Error::StorageFull)
    }
    fn remove(&mut self, start: usize, end: usize) {
        let n = end - start;
        let len = self.len();
        self.copy_within(end..len, start);
        self.truncate(len - n);
    }
}

#[cfg(feature = "alloc")]
impl LinkStore for alloc::vec::Vec<Link> {
    fn links(&self) -> &[Link] {
        self
    }
    fn insert(&mut self, index: usize, link: Link) -> Result<(), Error> {
        self.try_reserve(1).map_err(|_| Error::StorageFull)?;
        alloc::vec::Vec::insert(self, index, link);
        Ok(())
    }
    fn remove(&mut self, start: usize, end: usize) {
        self.drain(start..end);
    }
}

/// The default link store: a `Vec` with `alloc`.
#[cfg(feature = "alloc")]
pub type DefaultLinks = alloc::vec::Vec<Link>;

/// A cheap handle tying a domain, an IOVA allocator, the cache maintenance of
/// the devices attached to the domain and its flush policy. `Copy`: every
/// state carries one.
///
/// The policy is strict unless [`with_flush_queue`](Self::with_flush_queue)
/// names a [`FlushQueue`]: then unlinks are invalidated in batches, with a
/// bounded window in which the device may still reach unlinked memory (see
/// [`crate::flush_queue`]).
pub struct DmaMapper<'a, D: IommuDomain + ?Sized> {
    domain: &'a D,
    iovas: &'a IovaAllocator<'a>,
    cpu: &'a (dyn CurrentCpu + Sync),
    /// `None` for coherent devices (asked once, in `with_cache`): the
    /// per-share syncs then cost no call.
    cache: Option<&'a dyn CacheMaintenance>,
    queue: Option<&'a FlushQueue<'a>>,
}

impl<D: IommuDomain + ?Sized> Clone for DmaMapper<'_, D> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<D: IommuDomain + ?Sized> Copy for DmaMapper<'_, D> {}

impl<D: IommuDomain + ?Sized> fmt::Debug for DmaMapper<'_, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaMapper")
            .field("granule", &self.domain.granule())
            .finish_non_exhaustive()
    }
}

impl<'a, D: IommuDomain + ?Sized> DmaMapper<'a, D> {
    /// A mapper for coherent devices. The allocator's granule must be a
    /// multiple of the domain's ([`Error::Misaligned`] otherwise).
    pub fn new(
        domain: &'a D,
        iovas: &'a IovaAllocator<'a>,
        cpu: &'a (dyn CurrentCpu + Sync),
    ) -> Result<Self, Error> {
        let g = domain.granule();
        if !g.is_power_of_two() || iovas.granule() % g != 0 {
            return Err(Error::Misaligned);
        }
        Ok(Self {
            domain,
            iovas,
            cpu,
            cache: None,
            queue: None,
        })
    }

    /// The same mapper for devices that need cache maintenance (whether
    /// they do is read once, here: [`CacheMaintenance::is_coherent`]).
    pub fn with_cache(self, cache: &'a dyn CacheMaintenance) -> Self {
        Self {
            cache: (!cache.is_coherent()).then_some(cache),
            ..self
        }
    }

    /// The same mapper with deferred invalidation: states' unlinks wait in
    /// `queue`, which must serve this domain and this IOVA allocator only
    /// (see [`crate::flush_queue`] for what the device may reach, and until
    /// when).
    pub fn with_flush_queue(self, queue: &'a FlushQueue<'a>) -> Self {
        Self {
            queue: Some(queue),
            ..self
        }
    }

    /// The flush queue, if the policy is deferred.
    pub fn flush_queue(&self) -> Option<&'a FlushQueue<'a>> {
        self.queue
    }

    /// Flushes the flush queue now, if anything waits in it (a no-op under
    /// the strict policy). On error the queue keeps everything.
    pub fn flush_deferred(&self) -> Result<(), Error> {
        match self.queue {
            Some(q) => q.flush(self.domain, self.iovas, self.cpu.current_cpu(), false),
            None => Ok(()),
        }
    }

    /// Flushes the flush queue if one of its limits is reached, its age
    /// among them: call it from a periodic tick to make the age limit a
    /// bound in time.
    pub fn flush_expired(&self) -> Result<(), Error> {
        match self.queue {
            Some(q) => q.flush(self.domain, self.iovas, self.cpu.current_cpu(), true),
            None => Ok(()),
        }
    }

    /// The domain.
    pub fn domain(&self) -> &'a D {
        self.domain
    }

    /// The domain's granule.
    pub fn granule(&self) -> u64 {
        self.domain.granule()
    }

    /// Reserves `size` bytes of IOVA space aligned to `align` (rounded up to
    /// at least the granule), keeping links in `links` (which must be empty).
    pub fn try_alloc_with<S: LinkStore>(
        &self,
        size: u64,
        align: u64,
        links: S,
    ) -> Result<IovaState<'a, D, S>, Error> {
        if size == 0 {
            return Err(Error::ZeroLength);
        }
        if !align.is_power_of_two() {
            return Err(Error::Misaligned);
        }
        if !links.links().is_empty() {
            return Err(Error::StillLinked);
        }
        let align = align.max(self.iovas.granule());
        let rounded = align_up(size, self.iovas.granule())?;
        let alloc = self.iovas.alloc(self.cpu.current_cpu(), rounded, align)?;
        Ok(IovaState {
            mapper: *self,
            base: alloc.range().start,
            alloc: Some(alloc),
            size,
            links,
            pending: IotlbGather::new(),
            cleans_pending: false,
            deferred: None,
        })
    }

    /// [`try_alloc_with`](Self::try_alloc_with) with a heap-backed link store.
    #[cfg(feature = "alloc")]
    pub fn try_alloc(
        &self,
        size: u64,
        align: u64,
    ) -> Result<IovaState<'a, D, DefaultLinks>, Error> {
        self.try_alloc_with(size, align, DefaultLinks::new())
    }

    /// One-shot: maps `[pa, pa + len)` at a fresh IOVA and syncs. The device
    /// address is [`Mapping::addr`]; drop the mapping or pass it to
    /// [`unmap`](Self::unmap) to tear it down.
    pub fn map(&self, pa: PhysAddr, len: u64, prot: Prot) -> Result<Mapping<'a, D>, Error> {
        let off = pa.offset_in(self.granule());
        let size = checked_end(off, len)?;
        let mut state = self.try_alloc_with(size, 1, heapless::Vec::new())?;
        state.link(off, pa, len, prot)?;
        state.sync()?;
        Ok(Mapping {
            addr: Iova(state.base.0 + off),
            len,
            state,
        })
    }

    /// One-shot scatter-gather: maps the physical `pieces` back to back into
    /// one contiguous IOVA range and syncs once. The first piece may start and
    /// the last may end inside a granule; every other boundary must be granule
    /// aligned. Returns the state; the device address of the first byte is
    /// `state.dma_addr(state.links()[0].offset)`.
    pub fn map_sg_with<S: LinkStore>(
        &self,
        pieces: &[(PhysAddr, u64)],
        prot: Prot,
        links: S,
    ) -> Result<IovaState<'a, D, S>, Error> {
        let first = pieces.first().ok_or(Error::ZeroLength)?;
        let mut size = first.0.offset_in(self.granule());
        for &(_, len) in pieces {
            size = checked_end(size, len)?;
        }
        let mut state = self.try_alloc_with(size, 1, links)?;
        let mut offset = first.0.offset_in(self.granule());
        for &(pa, len) in pieces {
            if let Err(e) = state.link(offset, pa, len, prot) {
                // Unwind what the earlier pieces linked; the error is the link's.
                let _ = state.destroy();
                return Err(e);
            }
            offset += len;
        }
        match state.sync() {
            Ok(()) => Ok(state),
            Err(e) => {
                let _ = state.destroy();
                Err(e)
            }
        }
    }

    /// [`map_sg_with`](Self::map_sg_with) with a heap-backed link store.
    #[cfg(feature = "alloc")]
    pub fn map_sg(
        &self,
        pieces: &[(PhysAddr, u64)],
        prot: Prot,
    ) -> Result<IovaState<'a, D, DefaultLinks>, Error> {
        self.map_sg_with(pieces, prot, DefaultLinks::new())
    }

    /// One-shot teardown of a [`map`](Self::map): unmaps, flushes and frees the IOVA.
    // The mapping comes back by value on failure: there may be no heap to box it.
    #[allow(clippy::result_large_err)]
    pub fn unmap(&self, mapping: Mapping<'a, D>) -> Result<(), Returned<Mapping<'a, D>>> {
        let Mapping { addr, len, state } = mapping;
        state.destroy().map_err(|r| Returned {
            error: r.error,
            state: Mapping {
                addr,
                len,
                state: r.state,
            },
        })
    }
}

/// A state handed back by an operation that consumes it, with why it failed.
/// Nothing was changed that would make the state unusable: retry, or drop it.
pub struct Returned<S> {
    /// Why the operation failed.
    pub error: Error,
    /// The state, as it was before the call (or with its links already gone, for
    /// [`IovaState::destroy`] when only the flush failed).
    pub state: S,
}

impl<S> fmt::Debug for Returned<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Returned")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// A one-shot mapping made by [`DmaMapper::map`].
#[must_use = "dropping a mapping unmaps it at once"]
pub struct Mapping<'a, D: IommuDomain + ?Sized> {
    addr: Iova,
    len: u64,
    state: IovaState<'a, D, heapless::Vec<Link, 1>>,
}

impl<D: IommuDomain + ?Sized> Mapping<'_, D> {
    /// The address the device uses for the first byte.
    pub fn addr(&self) -> Iova {
        self.addr
    }
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }
    /// Always false: a mapping covers at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }
    /// Invalidates CPU caches for the mapping before the CPU reads what the
    /// device wrote (non-coherent devices only; a no-op otherwise).
    pub fn sync_for_cpu(&self) {
        self.state.sync_for_cpu(0, self.state.size);
    }
}

/// A reserved IOVA range and what is linked into it.
///
/// Dropping a state destroys it: its links are unmapped, flushed and the IOVA
/// range freed. If that flush fails the IOVA range is leaked rather than handed
/// out again while stale translations may remain.
#[must_use = "dropping a state unmaps and frees it at once"]
pub struct IovaState<'a, D: IommuDomain + ?Sized, S: LinkStore> {
    mapper: DmaMapper<'a, D>,
    base: Iova,
    alloc: Option<IovaAlloc>,
    size: u64,
    links: S,
    pending: IotlbGather,
    cleans_pending: bool,
    /// Unlinks waiting in the mapper's flush queue: the queue generation
    /// they belong to and the IOVA span they cover, `[lo, hi)`.
    deferred: Option<Deferred>,
}

#[derive(Clone, Copy, Debug)]
struct Deferred {
    generation: u64,
    lo: u64,
    hi: u64,
}

impl<D: IommuDomain + ?Sized, S: LinkStore> fmt::Debug for IovaState<'_, D, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IovaState")
            .field("base", &self.base)
            .field("size", &self.size)
            .field("links", &self.links.links())
            .finish_non_exhaustive()
    }
}

impl<'a, D: IommuDomain + ?Sized, S: LinkStore> IovaState<'a, D, S> {
    /// The first IOVA of the reserved range.
    pub fn iova(&self) -> Iova {
        self.base
    }

    /// The size asked for at allocation.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The reserved range (the size rounded up to the granule).
    pub fn range(&self) -> IovaRange {
        self.alloc.as_ref().map_or(
            IovaRange {
                start: self.base,
                end: self.base,
            },
            |a| a.range(),
        )
    }

    /// The device address of byte `offset` of the state.
    pub fn dma_addr(&self, offset: u64) -> Result<Iova, Error> {
        if offset >= self.size {
            return Err(Error::OutOfRange);
        }
        Ok(Iova(self.base.0 + offset))
    }

    /// The current links, sorted by offset.
    pub fn links(&self) -> &[Link] {
        self.links.links()
    }

    /// Whether anything is linked.
    pub fn is_linked(&self) -> bool {
        !self.links.links().is_empty()
    }

    /// Whether links or unlinks wait for a [`sync`](Self::sync).
    pub fn needs_sync(&self) -> bool {
        !self.pending.is_empty() || self.cleans_pending
    }

    /// Links `[pa, pa + len)` at `offset`: writes translation entries, no IOTLB
    /// work. The device may use it only after the next [`sync`](Self::sync).
    ///
    /// # Errors
    ///
    /// [`Error::ZeroLength`], [`Error::Overflow`], [`Error::OutOfRange`] (past
    /// the state's size), [`Error::InvalidProt`], [`Error::Misaligned`] (see the
    /// module docs), [`Error::AlreadyMapped`] (overlaps a link), and whatever
    /// the domain reports ([`Error::NoMemory`], ...). On every error nothing of
    /// this call is mapped: what the domain had written is unwound before it
    /// returns, and the state's links are as before.
    pub fn link(&mut self, offset: u64, pa: PhysAddr, len: u64, prot: Prot) -> Result<(), Error> {
        if len == 0 {
            return Err(Error::ZeroLength);
        }
        let end = checked_end(offset, len)?;
        pa.checked_add(len)?;
        if end > self.size {
            return Err(Error::OutOfRange);
        }
        if !prot.grants_access() {
            return Err(Error::InvalidProt);
        }
        let g = self.mapper.granule();
        if offset % g != pa.offset_in(g) {
            return Err(Error::Misaligned);
        }
        let link = Link {
            offset,
            len,
            pa,
            prot,
        };
        let (start, stop) = link.span(g);
        let links = self.links.links();
        let idx = links.partition_point(|l| l.offset < offset);
        let prev = idx.checked_sub(1).map(|i| links[i]);
        let next = links.get(idx).copied();
        if prev.is_some_and(|p| p.span(g).1 > start) || next.is_some_and(|n| n.span(g).0 < stop) {
            return Err(Error::AlreadyMapped);
        }
        let partial_start = offset % g != 0;
        let partial_end = end % g != 0;
        if (partial_start && prev.is_some())
            || (partial_end && next.is_some())
            || prev.is_some_and(|p| p.end() % g != 0)
            || next.is_some_and(|n| n.offset % g != 0)
        {
            return Err(Error::Misaligned);
        }
        let iova = Iova(self.base.0 + start);
        self.flush_before_relink(iova.0, self.base.0 + stop)?;
        self.links.insert(idx, link)?;
        let mapped = self.mapper.domain.map(
            iova,
            pa.align_down(g),
            stop - start,
            prot,
            &mut self.pending,
        );
        if let Err(e) = mapped {
            self.links.remove(idx, idx + 1);
            return Err(e);
        }
        if let Some(cache) = self.mapper.cache {
            cache.clean(pa, len);
            self.cleans_pending = true;
        }
        Ok(())
    }

    /// Makes every link and unlink since the last sync take effect: waits for the
    /// cache cleans (once), then one backend flush. On error the pending work is
    /// kept and `sync` may be retried.
    ///
    /// Under a deferred policy unlinks are not part of that flush: `sync`
    /// flushes the mapper's queue only if one of its limits is reached (see
    /// [`crate::flush_queue`]).
    pub fn sync(&mut self) -> Result<(), Error> {
        if let (true, Some(cache)) = (self.cleans_pending, self.mapper.cache) {
            cache.complete();
            self.cleans_pending = false;
        }
        if !self.pending.is_empty() {
            self.mapper.domain.flush(&mut self.pending)?;
        }
        match self.mapper.queue {
            Some(q) => q.flush_if_due(
                self.mapper.domain,
                self.mapper.iovas,
                self.mapper.cpu.current_cpu(),
            ),
            None => Ok(()),
        }
    }

    /// Unlinks `[offset, offset + len)`, which must be exactly one link or several
    /// adjacent links. The translations stay usable by the device until the next
    /// [`sync`](Self::sync) (or `free`/`destroy`), which invalidates them.
    ///
    /// # Errors
    ///
    /// [`Error::ZeroLength`], [`Error::Overflow`], [`Error::OutOfRange`],
    /// [`Error::NotMapped`] (a part was never linked), [`Error::PartialUnmap`]
    /// (the range cuts a link), or the domain's error. Nothing changes on error.
    pub fn unlink(&mut self, offset: u64, len: u64) -> Result<(), Error> {
        if len == 0 {
            return Err(Error::ZeroLength);
        }
        let end = checked_end(offset, len)?;
        if end > self.size {
            return Err(Error::OutOfRange);
        }
        let links = self.links.links();
        let first = links.partition_point(|l| l.end() <= offset);
        let last = first + links[first..].partition_point(|l| l.offset < end);
        let run = &links[first..last];
        // The links are sorted and disjoint: those that start at `offset` and
        // end at `end` cover the range exactly when their lengths add up to it.
        let exact = run.first().is_some_and(|l| l.offset == offset)
            && run.last().is_some_and(|l| l.end() == end)
            && run.iter().map(|l| l.len).sum::<u64>() == len;
        if !exact {
            return Err(uncovered(run, offset, end));
        }
        let g = self.mapper.granule();
        let start = links[first].span(g).0;
        let stop = links[last - 1].span(g).1;
        self.unmap(start, stop)?;
        self.links.remove(first, last);
        Ok(())
    }

    /// Unmaps `[start, stop)` (offsets) into the state's gather, or into the
    /// flush queue under a deferred policy.
    fn unmap(&mut self, start: u64, stop: u64) -> Result<(), Error> {
        let (iova, end) = (self.base.0 + start, self.base.0 + stop);
        let Some(q) = self.mapper.queue else {
            self.mapper
                .domain
                .unmap(Iova(iova), end - iova, &mut self.pending)?;
            return Ok(());
        };
        let generation = q.unmap(self.mapper.domain, Iova(iova), end - iova)?;
        self.deferred = Some(match self.deferred {
            Some(d) if d.generation == generation => Deferred {
                generation,
                lo: d.lo.min(iova),
                hi: d.hi.max(end),
            },
            _ => Deferred {
                generation,
                lo: iova,
                hi: end,
            },
        });
        Ok(())
    }

    /// Before `[iova, end)` is linked again: if this state unlinked part of
    /// it and the queue has not flushed that yet, flush now, or the device
    /// could keep using the old translation after the new link's sync.
    fn flush_before_relink(&mut self, iova: u64, end: u64) -> Result<(), Error> {
        let (Some(q), Some(d)) = (self.mapper.queue, self.deferred) else {
            return Ok(());
        };
        if q.generation() > d.generation {
            self.deferred = None;
            return Ok(());
        }
        if iova < d.hi && d.lo < end {
            q.flush_for_relink(
                self.mapper.domain,
                self.mapper.iovas,
                self.mapper.cpu.current_cpu(),
                d.generation,
            )?;
            self.deferred = None;
        }
        Ok(())
    }

    /// Invalidates the CPU caches for the linked bytes in `[offset, offset +
    /// len)`, once the device has written them and before the CPU reads them.
    /// Needed only for non-coherent devices (a no-op otherwise); all invalidates
    /// are issued, then one wait.
    pub fn sync_for_cpu(&self, offset: u64, len: u64) {
        let Some(cache) = self.mapper.cache else {
            return;
        };
        let end = offset.saturating_add(len);
        for l in self.links.links() {
            let from = l.offset.max(offset);
            let to = l.end().min(end);
            if from < to {
                cache.invalidate(PhysAddr(l.pa.0 + (from - l.offset)), to - from);
            }
        }
        cache.complete();
    }

    /// Cleans the CPU caches for the linked bytes in `[offset, offset + len)`
    /// and waits, once the CPU has written them and before the device reads
    /// them: for memory that stays linked while the CPU rewrites it (a bounce
    /// pool mapped once), where no [`link`](Self::link) cleans it. Needed only
    /// for non-coherent devices (a no-op otherwise).
    pub fn sync_for_device(&self, offset: u64, len: u64) {
        let Some(cache) = self.mapper.cache else {
            return;
        };
        let end = offset.saturating_add(len);
        for l in self.links.links() {
            let from = l.offset.max(offset);
            let to = l.end().min(end);
            if from < to {
                cache.clean(PhysAddr(l.pa.0 + (from - l.offset)), to - from);
            }
        }
        cache.complete();
    }

    /// Unlinks everything still linked, flushes, and frees the IOVA range.
    ///
    /// If the flush fails, the state comes back with no links (their entries are
    /// gone, their invalidation still pending): retry, or drop it (which leaks
    /// the IOVA range rather than reuse it unflushed).
    // The state comes back by value on failure: there may be no heap to box it.
    #[allow(clippy::result_large_err)]
    pub fn destroy(mut self) -> Result<(), Returned<Self>> {
        if let Err(error) = self.unlink_all() {
            return Err(Returned { error, state: self });
        }
        self.free()
    }

    /// Frees the IOVA range. The state must hold no link
    /// ([`Error::StillLinked`] otherwise); pending unlinks are flushed first.
    #[allow(clippy::result_large_err)]
    pub fn free(mut self) -> Result<(), Returned<Self>> {
        if self.is_linked() {
            return Err(Returned {
                error: Error::StillLinked,
                state: self,
            });
        }
        if let Err(error) = self.sync() {
            return Err(Returned { error, state: self });
        }
        if let Err(error) = self.release_iova() {
            return Err(Returned { error, state: self });
        }
        Ok(())
    }

    fn unlink_all(&mut self) -> Result<(), Error> {
        let g = self.mapper.granule();
        while let Some(first) = self.links.links().first().copied() {
            // Unmap each run of adjacent links with one call.
            let links = self.links.links();
            let mut n = 1;
            while n < links.len() && links[n].offset == links[n - 1].end() {
                n += 1;
            }
            let start = first.span(g).0;
            let stop = links[n - 1].span(g).1;
            self.unmap(start, stop)?;
            self.links.remove(0, n);
        }
        Ok(())
    }

    /// Gives the IOVA range back: at once, or under a deferred policy once
    /// the queue has flushed this state's unlinks. On error the state keeps it.
    fn release_iova(&mut self) -> Result<(), Error> {
        let Some(alloc) = self.alloc.take() else {
            return Ok(());
        };
        let cpu = self.mapper.cpu.current_cpu();
        match (self.mapper.queue, self.deferred) {
            (Some(q), Some(d)) => q
                .release(
                    self.mapper.domain,
                    self.mapper.iovas,
                    cpu,
                    alloc,
                    d.generation,
                )
                .map_err(|(e, alloc)| {
                    self.alloc = Some(alloc);
                    e
                }),
            _ => {
                // Only fails for a foreign or stale handle, which ours never is.
                let _ = self.mapper.iovas.free(cpu, alloc);
                Ok(())
            }
        }
    }
}

/// Why the links `run` (those that overlap `[offset, end)`, sorted) do not
/// cover it exactly: the first gap or cut from `offset` up.
#[cold]
fn uncovered(run: &[Link], offset: u64, end: u64) -> Error {
    let mut at = offset;
    for l in run {
        if l.offset > at {
            return Error::NotMapped;
        }
        if l.offset < at || l.end() > end {
            return Error::PartialUnmap;
        }
        at = l.end();
    }
    Error::NotMapped
}

impl<D: IommuDomain + ?Sized, S: LinkStore> Drop for IovaState<'_, D, S> {
    fn drop(&mut self) {
        if self.alloc.is_none() {
            return;
        }
        if !(self.unlink_all().is_ok() && self.sync().is_ok() && self.release_iova().is_ok()) {
            // Leak the IOVA range (the allocator keeps it live forever): handing
            // it out again could let a device use a stale translation.
            let leaked = self.alloc.take().map_or(0, |a| a.range().start.0);
            crate::warn_event!(
                "iova-core: flush failed while dropping a state; leaking IOVA {:#x}",
                leaked
            );
        }
    }
}

//! [`DmaShares`]: DMA memory and shared buffers, each mapped in an IOMMU domain.

use core::fmt;
use core::ptr::{self, NonNull};

use iova_core::hw::Counter;
use iova_core::{
    DmaMapper, Error, FrameAllocator, IommuDomain, Iova, IovaRange, IovaState, Link, PhysAddr,
    Prot, Returned,
};
use spin::Mutex;
use virtio_drivers::{BufferDirection, PAGE_SIZE};

use crate::layout::{Layout, Span};
use crate::memory::CpuMemory;
use crate::pool::{Pool, PoolConfig, Use};

mod park;

/// The most physical pieces one share may be made of: a bounced head, a
/// bounced tail, and up to six physically separate runs of whole granules.
pub const MAX_PIECES: usize = 8;

pub(crate) type Links = heapless::Vec<Link, MAX_PIECES>;

/// Why a DMA allocation, share or teardown failed. Whatever failed to be set
/// up was unwound: nothing of it is mapped, no frame of it is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ShareError {
    /// Zero pages or an empty buffer.
    Empty,
    /// The size or the buffer's end overflows the address space.
    Overflow,
    /// No frame for the DMA memory or for a bounce page.
    NoMemory,
    /// The buffer is not memory a device may be given ([`CpuMemory`] said so),
    /// or a physical discontinuity falls inside a granule, which could be
    /// mapped only by exposing the neighbouring memory.
    Untranslatable,
    /// The buffer is scattered over more physical runs than [`MAX_PIECES`].
    Scattered,
    /// Every one of the table's slots holds a live allocation or share.
    Full,
    /// Linking or syncing in the domain failed (the IOVA space is exhausted,
    /// no page-table memory, the flush timed out, ...).
    Map(Error),
    /// An unshare or deallocation names a device address (or a buffer, or a
    /// size) that no live share or allocation has.
    NotShared,
    /// Tearing a mapping down failed (unmap or flush). Its memory is kept,
    /// never reused, since the device may still reach it;
    /// [`DmaShares::reclaim`] retries.
    Teardown(Error),
    /// A [`PoolConfig`] out of bounds (see its fields).
    InvalidConfig,
}

impl fmt::Display for ShareError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShareError::Empty => f.write_str("empty DMA buffer"),
            ShareError::Overflow => f.write_str("DMA buffer overflows the address space"),
            ShareError::NoMemory => f.write_str("no frame for DMA memory or a bounce page"),
            ShareError::Untranslatable => {
                f.write_str("buffer cannot be mapped without exposing its neighbours")
            }
            ShareError::Scattered => f.write_str("buffer is made of too many physical runs"),
            ShareError::Full => f.write_str("too many live DMA shares"),
            ShareError::Map(e) => write!(f, "mapping failed: {e}"),
            ShareError::NotShared => f.write_str("no live share at that device address"),
            ShareError::Teardown(e) => write!(f, "teardown failed, memory quarantined: {e}"),
            ShareError::InvalidConfig => f.write_str("bounce pool configuration out of bounds"),
        }
    }
}

/// What the table has done since it was made.
///
/// What a share cost: a share copied into a pool slot (`pool_shares`) maps
/// nothing and flushes nothing; every other share is one IOVA state, linked
/// in one domain map call per piece (`maps`), synced with one flush, and
/// flushed once more on unshare. `maps` and `flushes` count every call the
/// table made (the pool's one map and flush at creation and its flush at
/// drop included), so a difference of two snapshots is exact.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShareCounters {
    /// DMA allocations made ([`DmaShares::alloc`]).
    pub allocs: u64,
    /// DMA allocations torn down.
    pub deallocs: u64,
    /// Buffers shared ([`DmaShares::share`]).
    pub shares: u64,
    /// Shares torn down.
    pub unshares: u64,
    /// Mapped shares with at least one bounced part (a partial granule
    /// copied into a bounce page or a pool frame).
    pub bounced: u64,
    /// Bytes of partial granules copied to and from bounce pages and pool
    /// frames.
    pub bounce_bytes: u64,
    /// Shares copied whole into a pool slot: no map, no flush.
    pub pool_shares: u64,
    /// Bytes copied into and out of pool slots for `pool_shares`.
    pub pool_bytes: u64,
    /// Partial granules of mapped shares held in a pool frame instead of a
    /// freshly allocated bounce page.
    pub pool_bounces: u64,
    /// Times the pool had no free slot, so the share (or the partial
    /// granule) took the path without the pool.
    pub pool_fallbacks: u64,
    /// Shares that took the kept mapping of the same buffer (deferred
    /// policy only, see [`DmaShares::parked`]): no map, no sync.
    pub reused: u64,
    /// Domain map calls (one per linked piece).
    pub maps: u64,
    /// IOTLB flushes asked of the domain (failed ones included).
    pub flushes: u64,
    /// Calls that failed (each also recorded for [`DmaShares::take_error`]).
    pub failures: u64,
}

#[derive(Default)]
struct Counters {
    allocs: Counter,
    deallocs: Counter,
    shares: Counter,
    unshares: Counter,
    bounced: Counter,
    bounce_bytes: Counter,
    pool_shares: Counter,
    pool_bytes: Counter,
    pool_bounces: Counter,
    pool_fallbacks: Counter,
    reused: Counter,
    maps: Counter,
    flushes: Counter,
    failures: Counter,
}

/// A bounce page standing in for a partial granule of a shared buffer.
#[derive(Clone, Copy)]
struct Bounce {
    frame: PhysAddr,
    /// The part of the buffer it holds; at `part.va % granule` in the frame.
    part: Span,
    /// The pool slot whose first granule `frame` is, or `None` for a frame
    /// of its own.
    slot: Option<usize>,
}

/// What a successful share did, for the counters.
struct Shared {
    dev: Iova,
    /// Bytes copied in (whole buffer for a pool share, else bounced parts).
    copied: usize,
    pooled: bool,
    pool_bounces: usize,
}

enum Held {
    /// [`DmaShares::alloc`] memory: one frame of `size` bytes.
    Memory { frame: PhysAddr, size: usize },
    /// A shared driver buffer.
    Buffer {
        buf: Span,
        direction: BufferDirection,
        bounces: heapless::Vec<Bounce, 2>,
    },
}

impl Held {
    fn bounces(&self) -> heapless::Vec<Bounce, 2> {
        match self {
            Held::Buffer { bounces, .. } => bounces.clone(),
            Held::Memory { .. } => heapless::Vec::new(),
        }
    }
}

struct Entry<'a, D: IommuDomain + ?Sized> {
    /// The device address handed out.
    dev: u64,
    held: Held,
    state: IovaState<'a, D, Links>,
    /// Its teardown failed: kept until [`DmaShares::reclaim`] succeeds.
    stuck: bool,
    /// Unshared under a deferred policy, its mapping kept for the next
    /// share of the same buffer: since when, in the flush queue's ticks
    /// (see [`park`]).
    parked: Option<u64>,
}

/// DMA memory and shared buffers of virtio devices, each mapped in one IOMMU
/// domain with the two-step API: the table behind [`crate::IommuHal`].
///
/// - [`alloc`](Self::alloc): zeroed frames mapped at a fresh IOVA (rings,
///   request headers).
/// - [`share`](Self::share): a driver buffer mapped for one transfer. Whole
///   granules are mapped where they are; a partial first or last granule is
///   *bounced*: copied into a bounce page of its own at the same offset, so
///   the device reaches the buffer's bytes and zeros, never the memory around
///   the buffer (what Linux does for untrusted devices, at granule rather than
///   whole-buffer grain). One sync per share.
/// - [`unshare`](Self::unshare): unmaps and syncs (strict: the IOTLB is
///   flushed before the call returns), then copies bounced parts back for
///   `DeviceToDriver` and `Both`, then frees the bounce pages.
///
/// With a bounce pool ([`with_pool`](Self::with_pool)), a share of at most
/// the pool's threshold is instead copied into a slot mapped once, for no map
/// and no flush, and `unshare` copies it back, zeroes what it copied in, and
/// frees the slot; partial granules of larger shares are bounced into slots
/// rather than fresh frames. The device can then reach the pool (and only
/// its own table's pool) for as long as the table lives; see the crate docs
/// for the trade. A full pool falls back to mapping, as without one.
///
/// At most `N` allocations and mapped shares are live at once (pool shares
/// take no table entry). A failed share gets
/// [`poison`](Self::poison), a device address that is never mapped, so a
/// device given it faults instead of reaching memory; the `Hal` methods
/// cannot return errors, so every failure is also counted and kept for
/// [`take_error`](Self::take_error).
pub struct DmaShares<'a, D: IommuDomain + ?Sized, const N: usize = 64> {
    mapper: DmaMapper<'a, D>,
    frames: &'a (dyn FrameAllocator + 'a),
    memory: &'a (dyn CpuMemory + 'a),
    /// Size of a bounce page: the domain's granule, at least a CPU page.
    granule: usize,
    live: Mutex<heapless::Vec<Entry<'a, D>, N>>,
    /// Reserved IOVA ranges that are never mapped: the poison address, and
    /// IOVA 0 if the allocator ever hands it out (virtio-drivers takes a DMA
    /// address of 0 for failure).
    reserved: Mutex<heapless::Vec<IovaState<'a, D, Links>, 2>>,
    poison: u64,
    counters: Counters,
    last_error: Mutex<Option<ShareError>>,
    /// The bounce pool ([`with_pool`](Self::with_pool)), if any.
    pool: Option<Pool<'a, D>>,
    /// Running totals of the parked mappings in `live`.
    park: park::Totals,
}

impl<D: IommuDomain + ?Sized, const N: usize> fmt::Debug for DmaShares<'_, D, N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaShares")
            .field("granule", &self.granule)
            .field("poison", &format_args!("{:#x}", self.poison))
            .field("pool", &self.pool_range())
            .field("counters", &self.counters())
            .finish_non_exhaustive()
    }
}

impl<'a, D: IommuDomain + ?Sized, const N: usize> DmaShares<'a, D, N> {
    /// A table mapping through `mapper`, taking DMA memory and bounce pages
    /// from `frames` and translating driver buffers with `memory`.
    ///
    /// # Errors
    ///
    /// [`ShareError::Map`] if the poison address cannot be reserved, or the
    /// domain's granule is not a power of two.
    pub fn new(
        mapper: DmaMapper<'a, D>,
        frames: &'a (dyn FrameAllocator + 'a),
        memory: &'a (dyn CpuMemory + 'a),
    ) -> Result<Self, ShareError> {
        let g = mapper.granule();
        if !g.is_power_of_two() || g > 1 << 30 {
            return Err(ShareError::Map(Error::Misaligned));
        }
        let granule = (g as usize).max(PAGE_SIZE);
        let mut shares = Self {
            mapper,
            frames,
            memory,
            granule,
            live: Mutex::new(heapless::Vec::new()),
            reserved: Mutex::new(heapless::Vec::new()),
            poison: 0,
            counters: Counters::default(),
            last_error: Mutex::new(None),
            pool: None,
            park: park::Totals::default(),
        };
        let poison = shares.reserve(granule as u64)?;
        shares.poison = poison.iova().0;
        // Capacity 2: the poison and at most one zero guard.
        let _ = shares.reserved.get_mut().push(poison);
        Ok(shares)
    }

    /// A table as [`new`](Self::new) makes, with a bounce pool: `config.slots`
    /// slots of `config.slot_size` bytes in one frame from `frames`, mapped
    /// read-write in the domain now (one map, one flush) and unmapped when the
    /// table is dropped. Buffers of at most `config.threshold` bytes are then
    /// copied into a slot on `share`, with no map and no flush; partial
    /// granules of larger buffers are bounced into slots instead of fresh
    /// frames. The device can reach every slot for as long as the table
    /// lives (see the crate docs for the trade).
    ///
    /// # Errors
    ///
    /// [`ShareError::InvalidConfig`] if `config` is out of bounds,
    /// [`Overflow`](ShareError::Overflow), [`NoMemory`](ShareError::NoMemory)
    /// for the pool's frame, [`Map`](ShareError::Map) as for `new` or if the
    /// pool cannot be mapped. Nothing is held on error.
    pub fn with_pool(
        mapper: DmaMapper<'a, D>,
        frames: &'a (dyn FrameAllocator + 'a),
        memory: &'a (dyn CpuMemory + 'a),
        config: PoolConfig,
    ) -> Result<Self, ShareError> {
        // Dropping `shares` on error gives the poison range back.
        let mut shares = Self::new(mapper, frames, memory)?;
        let (slots, bytes) = config.region(shares.granule)?;
        let frame = frames.alloc_zeroed(bytes).ok_or(ShareError::NoMemory)?;
        let state = match shares.map(&[(frame, bytes as u64)], 0, bytes as u64, Prot::RW) {
            Ok(s) => s,
            Err(e) => {
                // SAFETY: allocated above, never mapped (the map unwound).
                unsafe { frames.free(frame, bytes) };
                return Err(e);
            }
        };
        shares.pool = Some(Pool::new(state, frames, frame, bytes, slots, &config));
        Ok(shares)
    }

    /// The device addresses of the bounce pool, if the table has one: the
    /// device may reach all of it, read and write, while the table lives.
    pub fn pool_range(&self) -> Option<IovaRange> {
        let (start, end) = self.pool.as_ref()?.range();
        Some(IovaRange {
            start: Iova(start),
            end: Iova(end),
        })
    }

    /// Free slots of the bounce pool (0 without a pool).
    pub fn pool_free(&self) -> usize {
        self.pool
            .as_ref()
            .map_or(0, |p| p.count(|u| *u == Use::Free))
    }

    /// The device address every failed share returns: reserved, never mapped.
    pub fn poison(&self) -> Iova {
        Iova(self.poison)
    }

    /// The size of a bounce page (the domain's granule, at least 4 KiB).
    pub fn granule(&self) -> usize {
        self.granule
    }

    /// The mapper the table maps through.
    pub fn mapper(&self) -> &DmaMapper<'a, D> {
        &self.mapper
    }

    /// Live allocations and shares (stuck ones and pool shares included,
    /// parked mappings not).
    pub fn live(&self) -> usize {
        let pooled = self.pool.as_ref().map_or(0, |p| {
            p.count(|u| matches!(u, Use::Share { .. } | Use::Releasing))
        });
        let live = self.live.lock();
        live.iter().filter(|e| e.parked.is_none()).count() + pooled
    }

    /// Allocations and shares whose teardown failed and that are kept.
    pub fn stuck(&self) -> usize {
        self.live.lock().iter().filter(|e| e.stuck).count()
    }

    /// What the table has done so far.
    pub fn counters(&self) -> ShareCounters {
        let c = &self.counters;
        let get = Counter::get;
        ShareCounters {
            allocs: get(&c.allocs),
            deallocs: get(&c.deallocs),
            shares: get(&c.shares),
            unshares: get(&c.unshares),
            bounced: get(&c.bounced),
            bounce_bytes: get(&c.bounce_bytes),
            pool_shares: get(&c.pool_shares),
            pool_bytes: get(&c.pool_bytes),
            pool_bounces: get(&c.pool_bounces),
            pool_fallbacks: get(&c.pool_fallbacks),
            reused: get(&c.reused),
            maps: get(&c.maps),
            flushes: get(&c.flushes),
            failures: get(&c.failures),
        }
    }

    /// The most recent failure since the last call, if any.
    pub fn take_error(&self) -> Option<ShareError> {
        self.last_error.lock().take()
    }

    /// Records `e` for [`take_error`](Self::take_error) and passes it on.
    pub(crate) fn failed<T>(&self, e: ShareError) -> Result<T, ShareError> {
        self.counters.failures.incr();
        iova_core::warn_event!("DMA share failed: {:?}", e);
        *self.last_error.lock() = Some(e);
        Err(e)
    }

    /// `pages` zeroed, page-aligned CPU pages mapped at a fresh IOVA; returns
    /// the device address and the CPU pointer. The device may only read
    /// `DriverToDevice` memory; it may read and write the rest (QEMU reads
    /// back fields of the used ring it writes, as hardware may).
    ///
    /// # Errors
    ///
    /// [`ShareError::Empty`], [`Overflow`](ShareError::Overflow),
    /// [`NoMemory`](ShareError::NoMemory), [`Full`](ShareError::Full),
    /// [`Map`](ShareError::Map).
    pub fn alloc(
        &self,
        pages: usize,
        direction: BufferDirection,
    ) -> Result<(Iova, NonNull<u8>), ShareError> {
        let r = self.try_alloc(pages, direction);
        match r {
            Ok(_) => self.counters.allocs.incr(),
            Err(e) => return self.failed(e),
        }
        r
    }

    fn try_alloc(
        &self,
        pages: usize,
        direction: BufferDirection,
    ) -> Result<(Iova, NonNull<u8>), ShareError> {
        let size = alloc_size(pages, self.granule)?;
        self.ensure_room()?;
        let frame = self.frames.alloc_zeroed(size).ok_or(ShareError::NoMemory)?;
        let prot = match direction {
            BufferDirection::DriverToDevice => Prot::READ,
            BufferDirection::DeviceToDriver | BufferDirection::Both => Prot::RW,
        };
        let pieces = [(frame, size as u64)];
        let state = match self.map(&pieces, 0, size as u64, prot) {
            Ok(s) => s,
            Err(e) => {
                // SAFETY: allocated above, never mapped (the map unwound).
                unsafe { self.frames.free(frame, size) };
                return Err(e);
            }
        };
        let dev = state.iova();
        let cpu = self.frames.phys_to_virt(frame);
        if cpu.is_null() || cpu as usize % PAGE_SIZE != 0 {
            // `Hal` promises page-aligned pointers; the platform broke that.
            // If the teardown fails the frame stays allocated: it may still
            // be reachable.
            if self.destroy(state).is_ok() {
                // SAFETY: allocated above; its mapping was torn down and flushed.
                unsafe { self.frames.free(frame, size) };
            }
            return Err(ShareError::Untranslatable);
        }
        self.insert(Entry {
            dev: dev.0,
            held: Held::Memory { frame, size },
            state,
            stuck: false,
            parked: None,
        })?;
        Ok((dev, NonNull::new(cpu).ok_or(ShareError::Untranslatable)?))
    }

    /// Tears down an [`alloc`](Self::alloc): unmaps, syncs, frees the frame.
    ///
    /// # Errors
    ///
    /// [`ShareError::NotShared`] if `dev`, `cpu` and `pages` are not those of
    /// one live allocation (nothing changes); [`ShareError::Teardown`] if the
    /// unmap or flush failed (the frame is kept: see [`reclaim`](Self::reclaim)).
    ///
    /// # Safety
    ///
    /// Neither the CPU nor the driver uses the memory afterwards.
    pub unsafe fn dealloc(
        &self,
        dev: Iova,
        cpu: NonNull<u8>,
        pages: usize,
    ) -> Result<(), ShareError> {
        let size = alloc_size(pages, self.granule).ok();
        let found = self.remove(|e| {
            e.dev == dev.0
                && matches!(e.held, Held::Memory { frame, size: s }
                    if Some(s) == size && self.frames.phys_to_virt(frame) == cpu.as_ptr())
        });
        let Some(entry) = found else {
            return self.failed(ShareError::NotShared);
        };
        match self.teardown(entry) {
            Ok(()) => {
                self.counters.deallocs.incr();
                Ok(())
            }
            Err(e) => self.failed(e),
        }
    }

    /// Maps `buffer` for the device, as `direction` says it will be used, and
    /// syncs; returns the device address of its first byte. With a pool, a
    /// buffer of at most the threshold is copied into a free slot instead
    /// (no map, no sync), whichever its direction. Under a deferred policy a
    /// buffer of whole granules whose mapping was kept after its last
    /// unshare (see [`parked`](Self::parked)) gets that mapping back, if it
    /// is the same buffer, direction and physical pages: no map, no sync.
    ///
    /// # Errors
    ///
    /// [`ShareError::Empty`], [`Overflow`](ShareError::Overflow),
    /// [`Untranslatable`](ShareError::Untranslatable),
    /// [`Scattered`](ShareError::Scattered),
    /// [`NoMemory`](ShareError::NoMemory), [`Full`](ShareError::Full),
    /// [`Map`](ShareError::Map).
    ///
    /// # Safety
    ///
    /// `buffer` is valid for reads for the duration of the call, and stays
    /// valid (for writes too, unless `direction` is `DriverToDevice`) until
    /// [`unshare`](Self::unshare) returns.
    pub unsafe fn share(
        &self,
        buffer: NonNull<[u8]>,
        direction: BufferDirection,
    ) -> Result<Iova, ShareError> {
        // SAFETY: forwarded from the caller.
        match unsafe { self.try_share(buffer, direction) } {
            Ok(s) => {
                let c = &self.counters;
                c.shares.incr();
                if s.pooled {
                    c.pool_shares.incr();
                    c.pool_bytes.add(s.copied as u64);
                } else if s.copied > 0 {
                    c.bounced.incr();
                    c.bounce_bytes.add(s.copied as u64);
                }
                c.pool_bounces.add(s.pool_bounces as u64);
                Ok(s.dev)
            }
            Err(e) => self.failed(e),
        }
    }

    unsafe fn try_share(
        &self,
        buffer: NonNull<[u8]>,
        direction: BufferDirection,
    ) -> Result<Shared, ShareError> {
        let buf = Span {
            va: buffer.as_ptr() as *mut u8 as usize,
            len: buffer.len(),
        };
        if buf.len == 0 {
            return Err(ShareError::Empty);
        }
        buf.va.checked_add(buf.len).ok_or(ShareError::Overflow)?;
        // A share the full pool turned away bounces without it too: one
        // fallback per share.
        let mut pool = self.pool.as_ref();
        if let Some(p) = pool.filter(|p| p.takes(buf.len)) {
            match p.take(Use::Share { buf, direction }) {
                Some(i) => {
                    // A free slot holds zeros (or the device's own writes), so
                    // a buffer the device only writes needs nothing copied
                    // in: what it does not write comes back as zeros, and a
                    // virtio driver reads only the used length.
                    let copied = if direction == BufferDirection::DeviceToDriver {
                        0
                    } else {
                        // SAFETY: the buffer is readable (caller); it is not
                        // pool memory, to which nobody but the table has a
                        // pointer.
                        unsafe { p.copy_in(i, 0, buffer.cast::<u8>().as_ptr(), buf.len) };
                        buf.len
                    };
                    return Ok(Shared {
                        dev: p.dev(i),
                        copied,
                        pooled: true,
                        pool_bounces: 0,
                    });
                }
                None => {
                    self.counters.pool_fallbacks.incr();
                    pool = None;
                }
            }
        }
        let g = self.granule;
        let layout = Layout::of(buf.va, buf.len, g);
        if let (None, Some(middle), None) = (layout.head, layout.middle, layout.tail) {
            if let Some(dev) = self.reuse(middle, direction)? {
                self.counters.reused.incr();
                return Ok(Shared {
                    dev,
                    copied: 0,
                    pooled: false,
                    pool_bounces: 0,
                });
            }
        }
        self.ensure_room()?;

        let mut pieces: heapless::Vec<(PhysAddr, u64), MAX_PIECES> = heapless::Vec::new();
        let mut bounces: heapless::Vec<Bounce, 2> = heapless::Vec::new();
        let built = (|| {
            if let Some(head) = layout.head {
                // SAFETY: the head is part of the buffer, readable (caller).
                let b = unsafe { self.bounce_in(pool, buffer, head)? };
                let _ = bounces.push(b);
                let _ = pieces.push((PhysAddr(b.frame.0 + (head.va % g) as u64), head.len as u64));
            }
            if let Some(middle) = layout.middle {
                self.translate(middle, &mut pieces)?;
            }
            if let Some(tail) = layout.tail {
                // SAFETY: the tail is part of the buffer, readable (caller).
                let b = unsafe { self.bounce_in(pool, buffer, tail)? };
                let _ = bounces.push(b);
                pieces
                    .push((b.frame, tail.len as u64))
                    .map_err(|_| ShareError::Scattered)?;
            }
            Ok(())
        })();
        let prot = match direction {
            BufferDirection::DriverToDevice => Prot::READ,
            BufferDirection::DeviceToDriver => Prot::WRITE,
            BufferDirection::Both => Prot::RW,
        };
        let first = (buf.va % g) as u64;
        let mapped = built.and_then(|()| self.map(&pieces, first, first + buf.len as u64, prot));
        let state = match mapped {
            Ok(s) => s,
            Err(e) => {
                self.free_bounces(&bounces);
                return Err(e);
            }
        };
        let dev = state.dma_addr(first).map_err(ShareError::Map)?;
        let copied = bounces.iter().map(|b| b.part.len).sum();
        let pool_bounces = bounces.iter().filter(|b| b.slot.is_some()).count();
        self.insert(Entry {
            dev: dev.0,
            held: Held::Buffer {
                buf,
                direction,
                bounces,
            },
            state,
            stuck: false,
            parked: None,
        })?;
        Ok(Shared {
            dev,
            copied,
            pooled: false,
            pool_bounces,
        })
    }

    /// Tears down a [`share`](Self::share): unmaps and syncs, then copies the
    /// bounced parts back into the buffer (unless `direction` is
    /// `DriverToDevice`) and frees the bounce pages (zeroing what they held
    /// if they are pool slots). A share in a pool slot is copied back the
    /// same way, the slot's bytes zeroed and the slot freed: it was never
    /// mapped, so nothing is unmapped or flushed. Under a deferred policy
    /// (the mapper has a flush queue) a share of whole granules keeps its
    /// mapping instead, parked for the buffer's next share, within the
    /// queue's limits (see the crate docs); the device may reach the buffer
    /// until it is evicted and the queue flushed.
    ///
    /// # Errors
    ///
    /// [`ShareError::NotShared`] if `dev`, `buffer` and `direction` are not
    /// those of one live share (nothing changes); [`ShareError::Teardown`] if
    /// the unmap or flush failed: the bounced parts are still copied back, but
    /// the bounce pages are kept (see [`reclaim`](Self::reclaim)) and the
    /// device may still reach the buffer's whole granules (or, when parking,
    /// if the teardown of a parked mapping it evicted failed: that one is
    /// kept).
    ///
    /// # Safety
    ///
    /// `buffer` is the one given to `share`, valid for writes (unless
    /// `direction` is `DriverToDevice`) and not accessed by anybody else
    /// during the call.
    pub unsafe fn unshare(
        &self,
        dev: Iova,
        buffer: NonNull<[u8]>,
        direction: BufferDirection,
    ) -> Result<(), ShareError> {
        let want = Span {
            va: buffer.as_ptr() as *mut u8 as usize,
            len: buffer.len(),
        };
        let pooled = self
            .pool
            .as_ref()
            .and_then(|p| Some((p, p.take_share(dev, want, direction)?)));
        if let Some((pool, i)) = pooled {
            if direction != BufferDirection::DriverToDevice {
                // SAFETY: the buffer is writable for `want.len` bytes
                // (caller) and is not pool memory.
                unsafe { pool.copy_out(i, 0, buffer.cast::<u8>().as_ptr(), want.len) };
                self.counters.pool_bytes.add(want.len as u64);
            }
            pool.zero(i, 0, want.len);
            pool.release(i);
            self.counters.unshares.incr();
            return Ok(());
        }
        let shared = |e: &Entry<'a, D>| {
            e.dev == dev.0
                && !e.stuck
                && e.parked.is_none()
                && matches!(&e.held, Held::Buffer { buf, direction: d, .. } if *buf == want && *d == direction)
        };
        // Deferred: the buffer stays reachable until a queue flush anyway;
        // keep its mapping for the buffer's next share.
        if let Some(parked) = self.park(shared, direction) {
            self.counters.unshares.incr();
            // An error is an evicted mapping's teardown (kept stuck).
            return parked.or_else(|e| self.failed(e));
        }
        let Some(entry) = self.remove(shared) else {
            return self.failed(ShareError::NotShared);
        };
        if direction != BufferDirection::DriverToDevice {
            // Non-coherent devices: drop stale CPU lines before the CPU reads.
            entry.state.sync_for_cpu(0, entry.state.size());
        }
        let bounces = entry.held.bounces();
        // Unmap first: what is copied back is then what the device left
        // when it lost access, not something it can still change.
        let torn = self.teardown_mapping(entry);
        if direction != BufferDirection::DriverToDevice {
            for b in &bounces {
                // SAFETY: the bounce frame is still allocated (teardown frees
                // nothing of a share) and `b.part` lies in the buffer, which
                // the caller lets us write.
                unsafe { self.copy_out(buffer, b) };
                self.counters.bounce_bytes.add(b.part.len as u64);
            }
        }
        match torn {
            Ok(()) => {
                self.free_bounces(&bounces);
                self.counters.unshares.incr();
                Ok(())
            }
            Err(e) => self.failed(e),
        }
    }

    /// Retries the teardown of stuck allocations and shares; returns how many
    /// were released.
    pub fn reclaim(&self) -> usize {
        let mut released = 0;
        while let Some(entry) = self.remove_first_stuck() {
            let bounces = entry.held.bounces();
            match self.teardown(entry) {
                Ok(()) => {
                    self.free_bounces(&bounces);
                    released += 1;
                }
                // Put back (by `teardown_mapping`); try the others next time.
                Err(_) => break,
            }
        }
        released
    }

    /// Maps `pieces` back to back from offset `first` of a fresh state of
    /// `size` bytes and syncs; on error nothing stays mapped.
    fn map(
        &self,
        pieces: &[(PhysAddr, u64)],
        first: u64,
        size: u64,
        prot: Prot,
    ) -> Result<IovaState<'a, D, Links>, ShareError> {
        let mut state = self.reserve(size)?;
        let mut offset = first;
        for &(pa, len) in pieces {
            if let Err(e) = state.link(offset, pa, len, prot) {
                // A state that never synced a link has no flush pending that
                // could fail; if destroy fails anyway, dropping the state
                // leaks the IOVA rather than reuse it.
                let _ = self.destroy(state);
                return Err(ShareError::Map(e));
            }
            self.counters.maps.incr();
            offset += len;
        }
        if state.needs_sync() {
            self.counters.flushes.incr();
        }
        if let Err(e) = state.sync() {
            let _ = self.destroy(state);
            return Err(ShareError::Map(e));
        }
        Ok(state)
    }

    /// [`IovaState::destroy`], counting the flush it asks for.
    #[allow(clippy::result_large_err)]
    fn destroy(
        &self,
        state: IovaState<'a, D, Links>,
    ) -> Result<(), Returned<IovaState<'a, D, Links>>> {
        // Under a deferred policy the unlinks wait in the mapper's flush
        // queue instead (its own counters count its flushes).
        if (state.is_linked() || state.needs_sync()) && self.mapper.flush_queue().is_none() {
            self.counters.flushes.incr();
        }
        state.destroy()
    }

    /// A fresh IOVA state of `size` bytes whose device address is not 0.
    fn reserve(&self, size: u64) -> Result<IovaState<'a, D, Links>, ShareError> {
        let state = self
            .mapper
            .try_alloc_with(size, 1, Links::new())
            .map_err(ShareError::Map)?;
        if state.iova().0 != 0 {
            return Ok(state);
        }
        // virtio-drivers reads a DMA address of 0 as failure: keep IOVA 0
        // reserved (unmapped) for good and take another range.
        if let Err(state) = self.reserved.lock().push(state) {
            drop(state);
            return Err(ShareError::Map(Error::OutOfRange));
        }
        self.mapper
            .try_alloc_with(size, 1, Links::new())
            .map_err(ShareError::Map)
    }

    /// Appends the physical runs of the whole granules `middle` to `pieces`.
    fn translate(
        &self,
        middle: Span,
        pieces: &mut heapless::Vec<(PhysAddr, u64), MAX_PIECES>,
    ) -> Result<(), ShareError> {
        let g = self.granule;
        let mut at = middle.va;
        while at < middle.end() {
            let want = middle.end() - at;
            let (pa, run) = self
                .memory
                .virt_to_phys(at, want)
                .ok_or(ShareError::Untranslatable)?;
            let run = run.min(want);
            // A run must be whole granules, or mapping it would expose the
            // memory that shares its first or last granule.
            if run == 0 || pa.0 % g as u64 != 0 || run % g != 0 {
                return Err(ShareError::Untranslatable);
            }
            match pieces.last_mut() {
                Some(last) if last.0.0 + last.1 == pa.0 => last.1 += run as u64,
                _ => pieces
                    .push((pa, run as u64))
                    .map_err(|_| ShareError::Scattered)?,
            }
            at += run;
        }
        Ok(())
    }

    /// A bounce page holding `part` of `buffer` at `part.va % granule`.
    /// (Pointers come from `buffer`, never from the address in `part`, so
    /// they keep the buffer's provenance.)
    ///
    /// # Safety
    ///
    /// `buffer` is readable and `part` lies in it.
    unsafe fn bounce_in(
        &self,
        pool: Option<&Pool<'a, D>>,
        buffer: NonNull<[u8]>,
        part: Span,
    ) -> Result<Bounce, ShareError> {
        if let Some(pool) = pool {
            match pool.take(Use::Bounce) {
                Some(i) => {
                    // SAFETY: `part` is readable (caller) and not pool memory;
                    // it fits in the slot's first granule at its offset.
                    unsafe {
                        pool.copy_in(
                            i,
                            part.va % self.granule,
                            part_of(buffer, part).cast_const(),
                            part.len,
                        )
                    };
                    return Ok(Bounce {
                        frame: pool.pa(i),
                        part,
                        slot: Some(i),
                    });
                }
                None => self.counters.pool_fallbacks.incr(),
            }
        }
        let frame = self
            .frames
            .alloc_zeroed(self.granule)
            .ok_or(ShareError::NoMemory)?;
        let dst = self.frames.phys_to_virt(frame);
        // SAFETY: `part` is readable (caller); the frame is ours, `granule`
        // bytes, and `part` fits in it at its offset (it never spans two
        // granules); the two do not overlap (the frame was free).
        unsafe {
            ptr::copy_nonoverlapping(
                part_of(buffer, part).cast_const(),
                dst.add(part.va % self.granule),
                part.len,
            )
        };
        Ok(Bounce {
            frame,
            part,
            slot: None,
        })
    }

    /// Copies a bounce page's part back into `buffer`.
    ///
    /// # Safety
    ///
    /// `b.frame` is allocated, `buffer` is writable and `b.part` lies in it.
    unsafe fn copy_out(&self, buffer: NonNull<[u8]>, b: &Bounce) {
        if let (Some(pool), Some(i)) = (&self.pool, b.slot) {
            // SAFETY: `b.part` lies in the writable buffer (caller), which is
            // not pool memory.
            unsafe {
                pool.copy_out(
                    i,
                    b.part.va % self.granule,
                    part_of(buffer, b.part),
                    b.part.len,
                )
            };
            return;
        }
        let src = self.frames.phys_to_virt(b.frame);
        // SAFETY: as the caller guarantees; the frame and the buffer are
        // distinct memory.
        unsafe {
            ptr::copy_nonoverlapping(
                src.add(b.part.va % self.granule),
                part_of(buffer, b.part),
                b.part.len,
            )
        };
    }

    /// Frees bounce pages, or zeroes and frees their pool slots. Only once
    /// the share's own mapping of them is gone (or never was).
    fn free_bounces(&self, bounces: &[Bounce]) {
        for b in bounces {
            match (&self.pool, b.slot) {
                (Some(pool), Some(i)) => {
                    pool.zero(i, b.part.va % self.granule, b.part.len);
                    pool.release(i);
                }
                // SAFETY: allocated by `bounce_in`; unmapped and flushed (or
                // never mapped), so the device cannot reach it any more.
                _ => unsafe { self.frames.free(b.frame, self.granule) },
            }
        }
    }

    /// Room for one more entry: a full table first gives up its oldest
    /// parked mapping.
    fn ensure_room(&self) -> Result<(), ShareError> {
        if !self.live.lock().is_full() {
            return Ok(());
        }
        match self.unpark_oldest() {
            Some(entry) => self.teardown_mapping(entry),
            None => Err(ShareError::Full),
        }
    }

    /// Records a new entry; a table filled meanwhile unwinds it.
    fn insert(&self, entry: Entry<'a, D>) -> Result<(), ShareError> {
        let Err(entry) = self.live.lock().push(entry) else {
            return Ok(());
        };
        let bounces = entry.held.bounces();
        // On failure it is kept stuck (or leaked): never freed while reachable.
        if self.teardown(entry).is_ok() {
            self.free_bounces(&bounces);
        }
        Err(ShareError::Full)
    }

    fn remove(&self, pred: impl Fn(&Entry<'a, D>) -> bool) -> Option<Entry<'a, D>> {
        let mut live = self.live.lock();
        let i = live.iter().position(pred)?;
        Some(live.swap_remove(i))
    }

    fn remove_first_stuck(&self) -> Option<Entry<'a, D>> {
        self.remove(|e| e.stuck)
    }

    /// Unmaps, syncs and frees the IOVA; then frees an allocation's frame.
    /// Bounce pages are the caller's to free.
    fn teardown(&self, entry: Entry<'a, D>) -> Result<(), ShareError> {
        let frame = match entry.held {
            Held::Memory { frame, size } => Some((frame, size)),
            Held::Buffer { .. } => None,
        };
        self.teardown_mapping(entry)?;
        if let Some((frame, size)) = frame {
            // SAFETY: from `alloc`; unmapped and flushed just now.
            unsafe { self.frames.free(frame, size) };
        }
        Ok(())
    }

    /// Destroys the entry's state; on failure puts the entry back, stuck
    /// (or, if the table has filled up meanwhile, leaks it: its memory must
    /// not be reused while the device may reach it).
    ///
    /// Under a deferred policy the device may still reach what the state
    /// mapped until the mapper's flush queue is flushed; memory that goes
    /// back to the frame allocator or the pool (an allocation, bounce pages)
    /// must not be reused before that, so the queue is flushed first. If
    /// that flush fails the memory is leaked, never reused.
    fn teardown_mapping(&self, entry: Entry<'a, D>) -> Result<(), ShareError> {
        let Entry {
            dev, held, state, ..
        } = entry;
        let gives_back = match &held {
            Held::Memory { .. } => true,
            Held::Buffer { bounces, .. } => !bounces.is_empty(),
        };
        match self.destroy(state) {
            Ok(()) if gives_back => self.mapper.flush_deferred().map_err(ShareError::Teardown),
            Ok(()) => Ok(()),
            Err(r) => {
                let kept = Entry {
                    dev,
                    held,
                    state: r.state,
                    stuck: true,
                    parked: None,
                };
                if let Err(kept) = self.live.lock().push(kept) {
                    core::mem::forget(kept);
                }
                Err(ShareError::Teardown(r.error))
            }
        }
    }
}

impl<D: IommuDomain + ?Sized, const N: usize> Drop for DmaShares<'_, D, N> {
    fn drop(&mut self) {
        // Whatever the driver left: torn down, memory freed where that worked.
        let entries: heapless::Vec<Entry<'_, D>, N> = core::mem::take(self.live.get_mut());
        for entry in entries {
            let bounces = entry.held.bounces();
            if self.teardown(entry).is_ok() {
                self.free_bounces(&bounces);
            }
        }
        // Stuck entries were pushed back by `teardown_mapping`: leak them.
        for kept in core::mem::take(self.live.get_mut()) {
            core::mem::forget(kept);
        }
        if let Some(pool) = self.pool.take() {
            // A slot still bouncing for a leaked entry may be reachable
            // through that entry's mapping, which nothing will flush now.
            let held = pool.count(|u| *u == Use::Bounce) > 0;
            let (state, frame, bytes) = pool.into_parts();
            // Under a deferred policy the pool's unlink waits in the flush
            // queue: flush it before the frame goes back.
            let gone = self.destroy(state).is_ok() && self.mapper.flush_deferred().is_ok();
            if gone && !held {
                // SAFETY: the pool's frame; its only other mappings were the
                // shares', torn down and flushed above, and its own mapping
                // just now.
                unsafe { self.frames.free(frame, bytes) };
            }
        }
    }
}

/// The pointer to `part` of `buffer` (which contains it).
fn part_of(buffer: NonNull<[u8]>, part: Span) -> *mut u8 {
    let base = buffer.cast::<u8>();
    base.as_ptr().wrapping_add(part.va - base.as_ptr() as usize)
}

/// Bytes to allocate for `pages` CPU pages: a power of two (what a
/// [`FrameAllocator`] hands out), at least one granule so that the device
/// reaches nothing beyond the allocation.
fn alloc_size(pages: usize, granule: usize) -> Result<usize, ShareError> {
    if pages == 0 {
        return Err(ShareError::Empty);
    }
    let bytes = pages.checked_mul(PAGE_SIZE).ok_or(ShareError::Overflow)?;
    bytes
        .max(granule)
        .checked_next_power_of_two()
        .ok_or(ShareError::Overflow)
}

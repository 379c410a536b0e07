//! Deferred invalidation: unlinks wait in a flush queue, and one backend
//! flush covers the whole queue.
//!
//! In the default, strict policy every [`IovaState::sync`] that follows an
//! unlink flushes the IOTLB, so a buffer is unreachable when the call
//! returns. That flush (a command-queue or invalidation-queue round trip, or
//! a virtio-iommu request) is most of what an IOMMU costs per I/O. A
//! [`FlushQueue`] trades a bounded window of reachability for it, as Linux's
//! DMA-FQ ("lazy") mode does:
//!
//! - [`IovaState::unlink`] (and `free`, `destroy`, dropping a state) still
//!   removes the translation entries at once, but records what must be
//!   invalidated in the queue's gather instead of the state's, and the IOVA
//!   range of a freed state waits in the queue instead of going back to the
//!   allocator.
//! - The queue is flushed with one backend flush, after which its IOVA
//!   ranges are freed and its emptied tables released: when a
//!   [`DeferLimits`] bound is reached (checked by every `sync`, `free` and
//!   `destroy` of a state using the queue, and by
//!   [`DmaMapper::flush_expired`]), on [`DmaMapper::flush_deferred`], when
//!   its storage for IOVA ranges is full, and before a state links a range
//!   that it unlinked since the last flush.
//!
//! # The exposure window
//!
//! After `unlink` returns, the device may still reach the memory that was
//! linked there, through translations its IOTLB cached, until the next
//! queue flush completes; never after it. Which flush that is: the first
//! `sync`/`free`/`destroy` (of any state on the queue) that finds a limit
//! reached, or an explicit [`DmaMapper::flush_deferred`] /
//! [`DmaMapper::flush_expired`]. So:
//!
//! - at most `max_entries` unlinks and `max_bytes` bytes are reachable
//!   beyond their unlink at any time a state's `sync` has returned;
//! - the age bound holds only if something calls into the queue at least
//!   that often: there is no timer in a `no_std` crate. Call
//!   [`DmaMapper::flush_expired`] from a periodic tick (or idle loop) to
//!   make `max_age` a bound on time, not only on the next operation.
//!
//! What never happens, whatever the limits: an IOVA is handed out again, or
//! a page-table frame reused, before the flush that removed its
//! translations has completed. The memory behind an unlinked range is the
//! caller's: if it is reused before the queue flushes, the device may still
//! read or write it. Memory that must not be reachable (a frame given back
//! to an allocator, say) should be released only once
//! [`FlushQueue::generation`] has passed the value read after the unlink.
//!
//! One queue serves one domain and one IOVA allocator: a second domain is
//! refused ([`Error::ForeignGather`]). Its lock is held while the domain
//! unmaps into the queue and while the queue is flushed, so unlinks of all
//! CPUs on the domain go through it one at a time.
//!
//! [`IovaState::sync`]: crate::IovaState::sync
//! [`IovaState::unlink`]: crate::IovaState::unlink
//! [`DmaMapper::flush_expired`]: crate::DmaMapper::flush_expired
//! [`DmaMapper::flush_deferred`]: crate::DmaMapper::flush_deferred

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use spin::Mutex;

use crate::addr::Iova;
use crate::domain::IommuDomain;
use crate::error::Error;
use crate::gather::IotlbGather;
use crate::hw::Counter;
use crate::iova_alloc::{IovaAlloc, IovaAllocator};

/// When a [`FlushQueue`] must be flushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeferLimits {
    /// Unlinks that may wait (each `unlink` call, or each run of adjacent
    /// links a `destroy` removes, counts one).
    pub max_entries: u32,
    /// Bytes of unlinked ranges that may wait.
    pub max_bytes: u64,
    /// Ticks of the queue's clock the oldest waiting unlink may wait (see the
    /// module docs on when this is checked).
    pub max_age: u64,
}

impl DeferLimits {
    /// Linux's DMA-FQ figures: 256 entries and 10 ms (`ticks_per_ms` is the
    /// clock's rate), with at most 4 MiB waiting.
    pub const fn linux_like(ticks_per_ms: u64) -> Self {
        Self {
            max_entries: 256,
            max_bytes: 4 << 20,
            max_age: 10 * ticks_per_ms,
        }
    }
}

/// Reads a monotonic clock, in ticks of the caller's choice (the unit of
/// [`DeferLimits::max_age`]). Closures `Fn() -> u64` implement it.
pub trait Clock: Sync {
    /// The current time in ticks.
    fn now(&self) -> u64;
}

impl<F: Fn() -> u64 + Sync> Clock for F {
    fn now(&self) -> u64 {
        self()
    }
}

/// Storage for one IOVA range waiting in a [`FlushQueue`].
// Its own lock (only ever taken under the queue's, so never contended)
// keeps the queue covariant in its lifetime, as a shared slice.
#[derive(Debug, Default)]
pub struct DeferredSlot(Mutex<Option<IovaAlloc>>);

impl DeferredSlot {
    /// An empty slot.
    pub const fn new() -> Self {
        Self(Mutex::new(None))
    }
}

/// Why a queue was flushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reason {
    Entries,
    Bytes,
    Age,
    Full,
    Relink,
    Explicit,
}

/// What a [`FlushQueue`] has done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueCounters {
    /// Unlinks recorded in the queue.
    pub deferred: u64,
    /// Bytes they unlinked.
    pub deferred_bytes: u64,
    /// IOVA ranges that waited in the queue.
    pub deferred_iovas: u64,
    /// Completed queue flushes (each one backend flush), by reason: a limit
    /// on entries, bytes or age, the IOVA storage full, a state relinking a
    /// range it unlinked, or an explicit call.
    pub flushes: u64,
    /// ... because of `max_entries`.
    pub by_entries: u64,
    /// ... because of `max_bytes`.
    pub by_bytes: u64,
    /// ... because of `max_age`.
    pub by_age: u64,
    /// ... because the IOVA storage was full.
    pub by_full: u64,
    /// ... before a relink of an unlinked range.
    pub by_relink: u64,
    /// ... on [`DmaMapper::flush_deferred`](crate::DmaMapper::flush_deferred).
    pub explicit: u64,
    /// Flushes the backend failed (the queue kept everything).
    pub failed: u64,
}

#[derive(Default)]
struct Counters {
    deferred: Counter,
    deferred_bytes: Counter,
    deferred_iovas: Counter,
    by_entries: Counter,
    by_bytes: Counter,
    by_age: Counter,
    by_full: Counter,
    by_relink: Counter,
    explicit: Counter,
    failed: Counter,
}

enum Slots<'a> {
    Borrowed(&'a [DeferredSlot]),
    #[cfg(feature = "alloc")]
    Owned(alloc::boxed::Box<[DeferredSlot]>),
}

impl Slots<'_> {
    fn get(&self) -> &[DeferredSlot] {
        match self {
            Slots::Borrowed(s) => s,
            #[cfg(feature = "alloc")]
            Slots::Owned(s) => s,
        }
    }
}

struct Inner {
    /// Address of the domain the queue serves, once one used it.
    domain: Option<usize>,
    gather: IotlbGather,
    /// Slots `[0, held)` hold a range.
    held: usize,
    entries: u32,
    bytes: u64,
    /// Clock reading at the first unlink since the last flush.
    since: u64,
}

/// A flush queue for one domain: see the [module docs](self).
pub struct FlushQueue<'a> {
    limits: DeferLimits,
    clock: &'a dyn Clock,
    slots: Slots<'a>,
    inner: Mutex<Inner>,
    /// Completed flushes. Written under the lock, after the flush.
    generation: AtomicU64,
    counters: Counters,
}

impl fmt::Debug for FlushQueue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlushQueue")
            .field("limits", &self.limits)
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

impl<'a> FlushQueue<'a> {
    /// A queue that flushes at `limits`, reads `clock` for their age, and
    /// keeps up to `slots.len()` waiting IOVA ranges in `slots` (emptied).
    /// No heap: size `slots` at setup.
    pub fn new(limits: DeferLimits, clock: &'a dyn Clock, slots: &'a mut [DeferredSlot]) -> Self {
        for s in slots.iter_mut() {
            *s = DeferredSlot::new();
        }
        Self::build(limits, clock, Slots::Borrowed(&*slots))
    }

    /// [`new`](Self::new) with `slots` ranges of heap storage.
    #[cfg(feature = "alloc")]
    pub fn with_capacity(limits: DeferLimits, clock: &'a dyn Clock, slots: usize) -> Self {
        let storage = (0..slots).map(|_| DeferredSlot::new()).collect();
        Self::build(limits, clock, Slots::Owned(storage))
    }

    fn build(limits: DeferLimits, clock: &'a dyn Clock, slots: Slots<'a>) -> Self {
        Self {
            limits,
            clock,
            slots,
            inner: Mutex::new(Inner {
                domain: None,
                gather: IotlbGather::new(),
                held: 0,
                entries: 0,
                bytes: 0,
                since: 0,
            }),
            generation: AtomicU64::new(0),
            counters: Counters::default(),
        }
    }

    /// The limits.
    pub fn limits(&self) -> DeferLimits {
        self.limits
    }

    /// The queue's clock now, in the ticks of [`DeferLimits::max_age`] (for
    /// callers that keep other deferred state under the same limits).
    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    /// How many queue flushes have completed. An unlink recorded before this
    /// was read as `g` is unreachable once `generation() > g`.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Unlinks waiting for the next flush.
    pub fn pending(&self) -> u32 {
        self.inner.lock().entries
    }

    /// Bytes of unlinked ranges waiting for the next flush.
    pub fn pending_bytes(&self) -> u64 {
        self.inner.lock().bytes
    }

    /// IOVA ranges waiting for the next flush.
    pub fn pending_iovas(&self) -> usize {
        self.inner.lock().held
    }

    /// What the queue has done so far.
    pub fn counters(&self) -> QueueCounters {
        let c = &self.counters;
        let get = Counter::get;
        let by = [
            &c.by_entries,
            &c.by_bytes,
            &c.by_age,
            &c.by_full,
            &c.by_relink,
            &c.explicit,
        ];
        QueueCounters {
            deferred: get(&c.deferred),
            deferred_bytes: get(&c.deferred_bytes),
            deferred_iovas: get(&c.deferred_iovas),
            flushes: by.iter().map(|a| get(a)).sum(),
            by_entries: get(&c.by_entries),
            by_bytes: get(&c.by_bytes),
            by_age: get(&c.by_age),
            by_full: get(&c.by_full),
            by_relink: get(&c.by_relink),
            explicit: get(&c.explicit),
            failed: get(&c.failed),
        }
    }

    fn bind<D: IommuDomain + ?Sized>(inner: &mut Inner, domain: &D) -> Result<(), Error> {
        let id = domain as *const D as *const () as usize;
        match inner.domain {
            Some(d) if d != id => Err(Error::ForeignGather),
            _ => {
                inner.domain = Some(id);
                Ok(())
            }
        }
    }

    /// Unmaps `[iova, iova + len)` from `domain` into the queue; returns the
    /// generation the unlink belongs to (see [`generation`](Self::generation)).
    /// Nothing changes on error.
    pub(crate) fn unmap<D: IommuDomain + ?Sized>(
        &self,
        domain: &D,
        iova: Iova,
        len: u64,
    ) -> Result<u64, Error> {
        let mut inner = self.inner.lock();
        Self::bind(&mut inner, domain)?;
        domain.unmap(iova, len, &mut inner.gather)?;
        if inner.entries == 0 {
            inner.since = self.clock.now();
        }
        inner.entries = inner.entries.saturating_add(1);
        inner.bytes = inner.bytes.saturating_add(len);
        self.counters.deferred.incr();
        self.counters.deferred_bytes.add(len);
        Ok(self.generation.load(Ordering::Relaxed))
    }

    /// Frees `alloc` once the unlinks of generation `unlinked` are flushed:
    /// now if they already are, else with the queue's next flush (flushing
    /// first if its storage is full). On error `alloc` comes back.
    pub(crate) fn release<D: IommuDomain + ?Sized>(
        &self,
        domain: &D,
        iovas: &IovaAllocator<'_>,
        cpu: usize,
        alloc: IovaAlloc,
        unlinked: u64,
    ) -> Result<(), (Error, IovaAlloc)> {
        let mut inner = self.inner.lock();
        if self.generation.load(Ordering::Relaxed) > unlinked {
            drop(inner);
            // Only fails for a foreign or stale handle, which ours never is.
            let _ = iovas.free(cpu, alloc);
            return Ok(());
        }
        if let Err(e) = Self::bind(&mut inner, domain) {
            return Err((e, alloc));
        }
        if inner.held == self.slots.get().len() {
            if let Err(e) = self.flush_locked(&mut inner, domain, iovas, cpu, Reason::Full) {
                return Err((e, alloc));
            }
            drop(inner);
            let _ = iovas.free(cpu, alloc);
            return Ok(());
        }
        *self.slots.get()[inner.held].0.lock() = Some(alloc);
        inner.held += 1;
        self.counters.deferred_iovas.incr();
        Ok(())
    }

    /// Flushes if a limit is reached.
    pub(crate) fn flush_if_due<D: IommuDomain + ?Sized>(
        &self,
        domain: &D,
        iovas: &IovaAllocator<'_>,
        cpu: usize,
    ) -> Result<(), Error> {
        let mut inner = self.inner.lock();
        let Some(reason) = self.due(&inner) else {
            return Ok(());
        };
        self.flush_locked(&mut inner, domain, iovas, cpu, reason)
    }

    /// Flushes unless the unlinks of generation `unlinked` already are.
    pub(crate) fn flush_for_relink<D: IommuDomain + ?Sized>(
        &self,
        domain: &D,
        iovas: &IovaAllocator<'_>,
        cpu: usize,
        unlinked: u64,
    ) -> Result<(), Error> {
        let mut inner = self.inner.lock();
        if self.generation.load(Ordering::Relaxed) > unlinked {
            return Ok(());
        }
        self.flush_locked(&mut inner, domain, iovas, cpu, Reason::Relink)
    }

    /// Flushes now, if anything waits.
    pub(crate) fn flush<D: IommuDomain + ?Sized>(
        &self,
        domain: &D,
        iovas: &IovaAllocator<'_>,
        cpu: usize,
        only_if_due: bool,
    ) -> Result<(), Error> {
        let mut inner = self.inner.lock();
        let reason = match self.due(&inner) {
            Some(r) => r,
            None if only_if_due => return Ok(()),
            None => Reason::Explicit,
        };
        self.flush_locked(&mut inner, domain, iovas, cpu, reason)
    }

    fn due(&self, inner: &Inner) -> Option<Reason> {
        if inner.entries == 0 {
            return None;
        }
        let l = &self.limits;
        if inner.entries >= l.max_entries {
            Some(Reason::Entries)
        } else if inner.bytes >= l.max_bytes {
            Some(Reason::Bytes)
        } else if self.clock.now().wrapping_sub(inner.since) >= l.max_age {
            Some(Reason::Age)
        } else {
            None
        }
    }

    fn flush_locked<D: IommuDomain + ?Sized>(
        &self,
        inner: &mut Inner,
        domain: &D,
        iovas: &IovaAllocator<'_>,
        cpu: usize,
        reason: Reason,
    ) -> Result<(), Error> {
        if inner.entries == 0 && inner.held == 0 && inner.gather.is_empty() {
            return Ok(());
        }
        Self::bind(inner, domain)?;
        if let Err(e) = domain.flush(&mut inner.gather) {
            self.counters.failed.incr();
            return Err(e);
        }
        for slot in &self.slots.get()[..inner.held] {
            if let Some(alloc) = slot.0.lock().take() {
                // Only fails for a foreign or stale handle, which ours never is.
                let _ = iovas.free(cpu, alloc);
            }
        }
        inner.held = 0;
        inner.entries = 0;
        inner.bytes = 0;
        self.generation.fetch_add(1, Ordering::Release);
        let c = &self.counters;
        let by = match reason {
            Reason::Entries => &c.by_entries,
            Reason::Bytes => &c.by_bytes,
            Reason::Age => &c.by_age,
            Reason::Full => &c.by_full,
            Reason::Relink => &c.by_relink,
            Reason::Explicit => &c.explicit,
        };
        by.incr();
        Ok(())
    }
}

impl Drop for FlushQueue<'_> {
    fn drop(&mut self) {
        let inner = self.inner.get_mut();
        if inner.held > 0 || !inner.gather.is_empty() {
            // Nothing here can flush (the domain is not known by type): the
            // ranges stay allocated and the freed tables unreleased rather
            // than be reused while stale translations may remain.
            crate::warn_event!(
                "iova-core: flush queue dropped with {} IOVA ranges unflushed; leaking them",
                inner.held
            );
        }
    }
}

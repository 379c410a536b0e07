//! Parked mappings. Under a deferred policy (a mapper with a flush queue) an
//! unshared buffer stays reachable until the queue's next flush whatever the
//! table does, so instead of unlinking it at once the table keeps its
//! mapping (*parks* it) and hands it back when the driver shares the same
//! buffer again: no map, no sync. Drivers reuse their buffers (a block
//! device's data buffers, a NIC's receive ring), so a hot buffer then costs
//! what a pre-mapped one does.
//!
//! Bounds, from the queue's [`DeferLimits`]: at most `max_entries` parked
//! mappings and `max_bytes` parked bytes (the oldest goes first), none older
//! than `max_age` ticks of the queue's clock (checked whenever a mapping is
//! parked, and by [`DmaShares::flush_expired`]); a full table also gives up
//! its oldest. An evicted mapping is unlinked into the queue like any other
//! deferred unlink, so after `unshare` a buffer stays reachable until it is
//! evicted and then until the queue flushes. [`DmaShares::flush_deferred`]
//! evicts them all and flushes. Only buffers of whole granules park (a
//! bounced part gives memory back, which must not wait), and a parked
//! mapping is reused only for the same buffer, direction and physical pages.

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use iova_core::flush_queue::DeferLimits;
use iova_core::{IommuDomain, Iova, PhysAddr};
use virtio_drivers::BufferDirection;

use super::{DmaShares, Entry, Held, MAX_PIECES, ShareError};
use crate::layout::Span;

/// How many mappings are parked, their bytes, and a time no later than
/// the oldest one's parking: kept with the table's entries (changed only
/// under its lock), so that a park or share checks the limits without a
/// walk over the table.
#[derive(Default)]
pub(super) struct Totals {
    count: AtomicU64,
    bytes: AtomicU64,
    oldest: AtomicU64,
}

impl Totals {
    fn add(&self, size: u64, now: u64) {
        let count = self.count.load(Relaxed);
        if count == 0 {
            self.oldest.store(now, Relaxed);
        }
        self.count.store(count + 1, Relaxed);
        self.bytes
            .store(self.bytes.load(Relaxed).saturating_add(size), Relaxed);
    }

    /// Drops one; `oldest` stays a lower bound (refreshed by `trim`).
    fn remove(&self, size: u64) {
        self.count
            .store(self.count.load(Relaxed).saturating_sub(1), Relaxed);
        self.bytes
            .store(self.bytes.load(Relaxed).saturating_sub(size), Relaxed);
    }

    fn within(&self, now: u64, limits: &DeferLimits) -> bool {
        let count = self.count.load(Relaxed);
        count == 0
            || (count <= u64::from(limits.max_entries)
                && self.bytes.load(Relaxed) <= limits.max_bytes
                && now.wrapping_sub(self.oldest.load(Relaxed)) < limits.max_age)
    }
}

impl<'a, D: IommuDomain + ?Sized, const N: usize> DmaShares<'a, D, N> {
    /// Mappings kept after `unshare` for the same buffer's next share
    /// (deferred policy only; see the crate docs).
    pub fn parked(&self) -> usize {
        self.park.count.load(Relaxed) as usize
    }

    /// Evicts every parked mapping, then flushes the mapper's flush queue:
    /// afterwards the device reaches no unshared buffer. Without a queue,
    /// nothing waits and nothing is done.
    ///
    /// # Errors
    ///
    /// [`ShareError::Teardown`] if an unlink or the flush failed (what
    /// failed to unlink is kept, see [`reclaim`](Self::reclaim)).
    pub fn flush_deferred(&self) -> Result<(), ShareError> {
        while let Some(entry) = self.unpark_oldest() {
            self.teardown_mapping(entry)?;
        }
        self.mapper.flush_deferred().map_err(ShareError::Teardown)
    }

    /// Evicts parked mappings older than the queue's `max_age`, then
    /// flushes the queue if a limit is reached
    /// ([`DmaMapper::flush_expired`](iova_core::DmaMapper::flush_expired)):
    /// call it from a timer to bound the window in time when the driver is
    /// idle.
    ///
    /// # Errors
    ///
    /// As [`flush_deferred`](Self::flush_deferred).
    pub fn flush_expired(&self) -> Result<(), ShareError> {
        if let Some(q) = self.mapper.flush_queue() {
            self.trim(q.now(), &q.limits())?;
        }
        self.mapper.flush_expired().map_err(ShareError::Teardown)
    }

    /// Under a deferred policy, parks the live share `is_it` picks if it is
    /// one of whole granules (nothing bounced), in place, then evicts what
    /// exceeds the limits. `None`: not parked (no queue, no such share, or
    /// it has bounced parts): tear it down as usual.
    pub(super) fn park(
        &self,
        is_it: impl Fn(&Entry<'a, D>) -> bool,
        direction: BufferDirection,
    ) -> Option<Result<(), ShareError>> {
        let q = self.mapper.flush_queue()?;
        let now = q.now();
        {
            let mut live = self.live.lock();
            let e = live.iter_mut().find(|e| {
                is_it(e) && matches!(&e.held, Held::Buffer { bounces, .. } if bounces.is_empty())
            })?;
            if direction != BufferDirection::DriverToDevice {
                // Non-coherent devices: drop stale CPU lines before the CPU
                // reads.
                e.state.sync_for_cpu(0, e.state.size());
            }
            e.parked = Some(now);
            self.park.add(e.state.size(), now);
        }
        Some(self.trim(now, &q.limits()))
    }

    /// Evicts the oldest parked mappings until the rest are within `limits`.
    fn trim(&self, now: u64, limits: &DeferLimits) -> Result<(), ShareError> {
        while !self.park.within(now, limits) {
            let victim = {
                let mut live = self.live.lock();
                let oldest = live
                    .iter()
                    .enumerate()
                    .filter_map(|(i, e)| Some((i, e.parked?)))
                    .max_by_key(|&(_, since)| now.wrapping_sub(since));
                let Some((i, since)) = oldest else {
                    return Ok(());
                };
                // The bound may have been stale: it is exact now, and stays
                // a lower bound once this one goes.
                self.park.oldest.store(since, Relaxed);
                if self.park.within(now, limits) {
                    return Ok(());
                }
                let mut e = live.swap_remove(i);
                e.parked = None;
                self.park.remove(e.state.size());
                e
            };
            self.teardown_mapping(victim)?;
        }
        Ok(())
    }

    /// Takes the oldest parked mapping out of the table (to be torn down).
    pub(super) fn unpark_oldest(&self) -> Option<Entry<'a, D>> {
        let now = self.mapper.flush_queue()?.now();
        let mut live = self.live.lock();
        let (i, _) = live
            .iter()
            .enumerate()
            .filter_map(|(i, e)| Some((i, now.wrapping_sub(e.parked?))))
            .max_by_key(|&(_, age)| age)?;
        let mut e = live.swap_remove(i);
        e.parked = None;
        self.park.remove(e.state.size());
        Some(e)
    }

    /// The parked mapping of exactly `buf` (whole granules) for `direction`,
    /// made live again, if its pages are still where `buf` is: its device
    /// address. `None`: map afresh.
    pub(super) fn reuse(
        &self,
        buf: Span,
        direction: BufferDirection,
    ) -> Result<Option<Iova>, ShareError> {
        if self.parked() == 0 {
            return Ok(None);
        }
        // The CPU mapping may have changed since (memory freed and mapped
        // elsewhere): the pages must be the ones the parked links map.
        // Translated outside the table's lock (it calls the caller's code).
        let mut pieces: heapless::Vec<(PhysAddr, u64), MAX_PIECES> = heapless::Vec::new();
        if self.translate(buf, &mut pieces).is_err() {
            return Ok(None);
        }
        let mut live = self.live.lock();
        let found = live.iter_mut().find(|e| {
            e.parked.is_some()
                && matches!(&e.held, Held::Buffer { buf: b, direction: d, bounces }
                    if *b == buf && *d == direction && bounces.is_empty())
                && e.state.links().len() == pieces.len()
                && e.state
                    .links()
                    .iter()
                    .zip(&pieces)
                    .all(|(l, &(pa, len))| l.pa == pa && l.len == len)
        });
        let Some(e) = found else {
            return Ok(None);
        };
        e.parked = None;
        self.park.remove(e.state.size());
        // Non-coherent devices: what the CPU wrote since must reach memory.
        e.state.sync_for_device(0, e.state.size());
        Ok(Some(Iova(e.dev)))
    }
}

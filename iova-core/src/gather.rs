//! The IOTLB gather: what must be invalidated before a batch is complete.
//!
//! Writing and clearing entries never touches the IOTLB. Each change is recorded
//! in an [`IotlbGather`], and one backend flush later invalidates everything it
//! holds and only then frees the tables that the batch unlinked from the tree.

use crate::addr::{Iova, IovaRange, PhysAddr};

/// How many disjoint ranges a gather keeps apart before it merges the closest two.
pub const GATHER_RANGES: usize = 8;

/// What a batch of map and unmap operations requires the backend to invalidate.
///
/// A gather is `#[must_use]`: dropping one that is not empty leaks its freed
/// tables (they are never returned to the frame allocator early, which would let
/// the walker read freed memory) and, worse, leaves stale translations in the
/// IOTLB. Hand it to the domain's flush instead.
#[must_use = "a gather must be flushed, or stale translations stay in the IOTLB"]
#[derive(Debug, Default)]
pub struct IotlbGather {
    ranges: heapless::Vec<IovaRange, GATHER_RANGES>,
    page_sizes: u64,
    unmapped: bool,
    /// Span of the new entries, `[lo, hi)`; empty when `lo >= hi`. Kept apart
    /// from `ranges`: only some backends act on new entries, and mapping is
    /// the hot path.
    mapped_lo: u64,
    mapped_hi: u64,
    tables_changed: bool,
    freed: Option<PhysAddr>,
    freed_count: usize,
    /// Identity of the page table the freed tables belong to.
    freed_owner: Option<u64>,
}

impl IotlbGather {
    /// An empty gather.
    pub const fn new() -> Self {
        Self {
            ranges: heapless::Vec::new(),
            page_sizes: 0,
            unmapped: false,
            mapped_lo: u64::MAX,
            mapped_hi: 0,
            tables_changed: false,
            freed: None,
            freed_count: 0,
            freed_owner: None,
        }
    }

    /// Nothing to invalidate, nothing new to announce, and no table to free.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty() && !self.has_mapped() && self.freed.is_none()
    }

    /// The IOVA ranges whose entries were removed or replaced (what stale
    /// translations and walk caches may cover), disjoint and sorted. At most
    /// [`GATHER_RANGES`]: beyond that, the closest ranges are merged
    /// (over-invalidating, never under). New entries are in
    /// [`mapped_span`](Self::mapped_span).
    pub fn ranges(&self) -> &[IovaRange] {
        &self.ranges
    }

    /// One range covering every removed or replaced entry, if any was.
    pub fn span(&self) -> Option<IovaRange> {
        Some(IovaRange {
            start: self.ranges.first()?.start,
            end: self.ranges.last()?.end,
        })
    }

    /// One range covering every new entry, if any was written.
    pub fn mapped_span(&self) -> Option<IovaRange> {
        self.has_mapped().then_some(IovaRange {
            start: Iova(self.mapped_lo),
            end: Iova(self.mapped_hi),
        })
    }

    /// Bitmap of the leaf sizes that were unmapped (bit `n` set: a `1 << n` leaf).
    pub fn page_sizes(&self) -> u64 {
        self.page_sizes
    }

    /// The smallest leaf size unmapped, if any leaf was.
    pub fn min_page_size(&self) -> Option<u64> {
        (self.page_sizes != 0).then(|| 1u64 << self.page_sizes.trailing_zeros())
    }

    /// Valid entries were removed: stale translations may be cached.
    pub fn has_unmapped(&self) -> bool {
        self.unmapped
    }

    /// New entries were written. Coherent walkers need no invalidation for them;
    /// backends that cache non-present entries (VT-d caching mode) or that map by
    /// request (virtio-iommu) act on this.
    pub fn has_mapped(&self) -> bool {
        self.mapped_lo < self.mapped_hi
    }

    /// Table entries (not only leaves) were removed or replaced: walk caches for
    /// the ranges must be invalidated too, not only leaf TLB entries.
    pub fn tables_changed(&self) -> bool {
        self.tables_changed
    }

    /// How many tables wait to be freed after the flush.
    pub fn freed_tables(&self) -> usize {
        self.freed_count
    }

    /// Records that leaves of `page_size` bytes were removed from `[iova, iova + len)`.
    pub fn add_unmapped(&mut self, iova: Iova, len: u64, page_size: u64) {
        self.unmapped = true;
        self.page_sizes |= page_size;
        self.add_range(iova, len);
    }

    /// Records that new entries were written for `[iova, iova + len)`.
    #[inline]
    pub fn add_mapped(&mut self, iova: Iova, len: u64) {
        if len > 0 {
            self.record_mapped(iova.0, iova.0.saturating_add(len));
        }
    }

    /// [`add_mapped`](Self::add_mapped) of `[start, end)`, `start < end`.
    #[inline]
    pub(crate) fn record_mapped(&mut self, start: u64, end: u64) {
        self.mapped_lo = self.mapped_lo.min(start);
        self.mapped_hi = self.mapped_hi.max(end);
    }

    /// Records that table entries covering `[iova, iova + len)` were removed.
    pub fn add_table_change(&mut self, iova: Iova, len: u64) {
        self.tables_changed = true;
        self.add_range(iova, len);
    }

    fn add_range(&mut self, iova: Iova, len: u64) {
        if len == 0 {
            return;
        }
        let end = iova.0.saturating_add(len);
        // Fast path: growing the highest range upwards (sequential work).
        if let Some(last) = self.ranges.last_mut() {
            if last.start.0 <= iova.0 && iova.0 <= last.end.0 {
                last.end = Iova(last.end.0.max(end));
                return;
            }
        }
        let mut new = IovaRange {
            start: iova,
            end: Iova(end),
        };
        // Absorb every range that overlaps or touches the new one.
        let mut i = 0;
        while i < self.ranges.len() {
            let r = self.ranges[i];
            if r.start.0 <= new.end.0 && new.start.0 <= r.end.0 {
                new.start = Iova(r.start.0.min(new.start.0));
                new.end = Iova(r.end.0.max(new.end.0));
                self.ranges.remove(i);
            } else {
                i += 1;
            }
        }
        let pos = self
            .ranges
            .iter()
            .position(|r| r.start.0 > new.start.0)
            .unwrap_or(self.ranges.len());
        if self.ranges.insert(pos, new).is_err() {
            // Full: widen the neighbour with the smallest gap to cover the new range.
            self.absorb_into_nearest(new);
        }
    }

    fn absorb_into_nearest(&mut self, new: IovaRange) {
        let gap = |r: &IovaRange| {
            if r.end.0 <= new.start.0 {
                new.start.0 - r.end.0
            } else {
                r.start.0.saturating_sub(new.end.0)
            }
        };
        let Some((i, _)) = self.ranges.iter().enumerate().min_by_key(|(_, r)| gap(r)) else {
            return;
        };
        let r = &mut self.ranges[i];
        r.start = Iova(r.start.0.min(new.start.0));
        r.end = Iova(r.end.0.max(new.end.0));
        // Widening may have made it touch its neighbours.
        let merged = self.ranges.remove(i);
        self.add_range(merged.start, merged.len());
    }

    /// Pushes `table` on the list of freed tables and returns the old head, which
    /// the page-table engine stores in the table itself (as a non-present entry,
    /// so a stale walker reads nothing).
    pub(crate) fn push_freed(&mut self, owner: u64, table: PhysAddr) -> Option<PhysAddr> {
        self.freed_owner = Some(owner);
        self.freed_count += 1;
        self.freed.replace(table)
    }

    /// Takes the list of freed tables out of the gather: call only after the
    /// flush that made them unreachable has completed.
    pub(crate) fn take_freed(&mut self, owner: u64) -> Option<PhysAddr> {
        if self.freed_owner != Some(owner) {
            return None;
        }
        self.freed_owner = None;
        self.freed_count = 0;
        self.freed.take()
    }

    /// Whether the page table with root `owner` may add freed tables to this
    /// gather (it holds none, or only that table's).
    pub(crate) fn accepts_freed_from(&self, owner: u64) -> bool {
        self.freed_owner.is_none_or(|o| o == owner)
    }

    /// Forgets the ranges and flags after a successful flush (freed tables are
    /// taken separately, by the engine).
    pub fn clear_ranges(&mut self) {
        self.ranges.clear();
        self.page_sizes = 0;
        self.unmapped = false;
        self.mapped_lo = u64::MAX;
        self.mapped_hi = 0;
        self.tables_changed = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(a: u64, b: u64) -> IovaRange {
        IovaRange {
            start: Iova(a),
            end: Iova(b),
        }
    }

    #[test]
    fn ranges_merge_and_stay_sorted() {
        let mut g = IotlbGather::new();
        g.add_unmapped(Iova(0x5000), 0x1000, 0x1000);
        g.add_unmapped(Iova(0x1000), 0x1000, 0x1000);
        g.add_unmapped(Iova(0x2000), 0x1000, 0x20_0000);
        g.add_mapped(Iova(0x6000), 0x1000);
        g.add_mapped(Iova(0x9000), 0x1000);
        assert_eq!(g.ranges(), &[r(0x1000, 0x3000), r(0x5000, 0x6000)]);
        assert_eq!(g.mapped_span(), Some(r(0x6000, 0xa000)));
        assert_eq!(g.page_sizes(), 0x20_1000);
        assert_eq!(g.min_page_size(), Some(0x1000));
        assert!(g.has_unmapped() && g.has_mapped() && !g.tables_changed());
        g.add_table_change(Iova(0x2800), 0x3000);
        assert_eq!(g.ranges(), &[r(0x1000, 0x6000)]);
        assert_eq!(g.span(), Some(r(0x1000, 0x6000)));
        g.clear_ranges();
        assert!(g.is_empty());
    }

    #[test]
    fn a_full_gather_widens_the_nearest_range_never_drops_one() {
        let mut g = IotlbGather::new();
        for i in 0..GATHER_RANGES as u64 {
            g.add_unmapped(Iova(i * 0x10_0000), 0x1000, 0x1000);
        }
        assert_eq!(g.ranges().len(), GATHER_RANGES);
        g.add_unmapped(Iova(0x30_4000), 0x1000, 0x1000);
        assert_eq!(g.ranges().len(), GATHER_RANGES);
        // Every address ever added is still covered.
        for a in (0..GATHER_RANGES as u64)
            .map(|i| i * 0x10_0000)
            .chain([0x30_4000])
        {
            assert!(
                g.ranges().iter().any(|x| x.start.0 <= a && a < x.end.0),
                "{a:#x}"
            );
        }
        assert!(g.ranges().windows(2).all(|w| w[0].end.0 < w[1].start.0));
    }
}

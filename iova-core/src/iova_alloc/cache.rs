//! Per-CPU magazine caches and the shared depot.
//!
//! A cache entry is the index of an [`ExtentSlot`](super::ExtentSlot) in the
//! `CACHED` state whose extent is `2^class` granules, aligned to its size.
//! Each CPU holds two magazines per class (`loaded` and `prev`) behind its own
//! lock; full magazines overflow into a bounded shared depot, and when the
//! depot is full a magazine goes back to the backing allocator.

use core::fmt;
use core::mem;

use super::sync::Mutex;

/// Entries per magazine. Under loom, two: the same protocol, with magazines
/// that fill and spill within the few operations a model can afford.
pub(super) const MAG_SIZE: usize = if cfg!(loom) { 2 } else { 32 };
/// Size classes cached: `1, 2, 4, .., 2^(CACHE_CLASSES - 1)` granules.
pub(super) const CACHE_CLASSES: usize = 6;
/// Full magazines the depot keeps per class (one under loom, as above).
pub(super) const DEPOT_MAGS: usize = if cfg!(loom) { 1 } else { 4 };

/// A bounded stack of cached slot indices.
#[derive(Clone, Copy, Debug)]
pub(super) struct Magazine {
    len: usize,
    items: [u32; MAG_SIZE],
}

impl Magazine {
    pub(super) const EMPTY: Self = Self {
        len: 0,
        items: [0; MAG_SIZE],
    };

    #[inline]
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn is_full(&self) -> bool {
        self.len >= MAG_SIZE
    }

    #[inline]
    fn push(&mut self, i: u32) -> bool {
        match self.items.get_mut(self.len) {
            Some(slot) => {
                *slot = i;
                self.len += 1;
                true
            }
            None => false,
        }
    }

    #[inline]
    fn pop(&mut self) -> Option<u32> {
        self.len = self.len.checked_sub(1)?;
        self.items.get(self.len).copied()
    }

    /// The entries.
    #[inline]
    pub(super) fn entries(&self) -> &[u32] {
        self.items.get(..self.len).unwrap_or(&[])
    }
}

#[derive(Clone, Copy, Debug)]
struct CpuClass {
    loaded: Magazine,
    prev: Magazine,
}

impl CpuClass {
    const EMPTY: Self = Self {
        loaded: Magazine::EMPTY,
        prev: Magazine::EMPTY,
    };
}

/// The per-CPU cache of one CPU: storage the caller hands to
/// [`IovaAllocator::new`](super::IovaAllocator::new), one per CPU index.
///
/// It holds up to `2 * 32` recently freed ranges for each of the sizes
/// 1, 2, 4, 8, 16 and 32 granules behind its own spin lock, which is
/// uncontended as long as each CPU index is used by one CPU at a time.
pub struct CpuCache {
    classes: Mutex<[CpuClass; CACHE_CLASSES]>,
}

impl CpuCache {
    /// An empty cache.
    #[cfg(not(loom))]
    pub const fn new() -> Self {
        Self {
            classes: Mutex::new([CpuClass::EMPTY; CACHE_CLASSES]),
        }
    }

    /// An empty cache (not `const` under loom, whose locks are not).
    #[cfg(loom)]
    pub fn new() -> Self {
        Self {
            classes: Mutex::new([CpuClass::EMPTY; CACHE_CLASSES]),
        }
    }

    /// Takes a cached entry of `class`, refilling from the depot if both
    /// magazines are empty.
    pub(super) fn pop(&self, depot: &Mutex<Depot>, class: usize) -> Option<u32> {
        let mut guard = self.classes.lock();
        let cc = guard.get_mut(class)?;
        if let Some(i) = cc.loaded.pop() {
            return Some(i);
        }
        if !cc.prev.is_empty() {
            mem::swap(&mut cc.loaded, &mut cc.prev);
            return cc.loaded.pop();
        }
        let full = depot.lock().take(class)?;
        cc.loaded = full;
        cc.loaded.pop()
    }

    /// Caches `i` in `class`. When both magazines are full, the older one
    /// moves to the depot; if the depot is full too it is returned and the
    /// caller gives its entries back to the backing allocator.
    /// `Err(i)`: the class does not exist, nothing was cached.
    pub(super) fn push(
        &self,
        depot: &Mutex<Depot>,
        class: usize,
        i: u32,
    ) -> Result<Option<Magazine>, u32> {
        let mut guard = self.classes.lock();
        let Some(cc) = guard.get_mut(class) else {
            return Err(i);
        };
        if cc.loaded.push(i) {
            return Ok(None);
        }
        if !cc.prev.is_full() {
            mem::swap(&mut cc.loaded, &mut cc.prev);
            if cc.loaded.push(i) {
                return Ok(None);
            }
        }
        let spill = if depot.lock().put(class, cc.prev) {
            None
        } else {
            Some(cc.prev)
        };
        cc.prev = mem::replace(&mut cc.loaded, Magazine::EMPTY);
        if cc.loaded.push(i) {
            Ok(spill)
        } else {
            // Unreachable: the magazine was just emptied.
            Err(i)
        }
    }

    /// Empties both magazines of `class`.
    pub(super) fn take(&self, class: usize) -> (Magazine, Magazine) {
        let mut guard = self.classes.lock();
        match guard.get_mut(class) {
            Some(cc) => (
                mem::replace(&mut cc.loaded, Magazine::EMPTY),
                mem::replace(&mut cc.prev, Magazine::EMPTY),
            ),
            None => (Magazine::EMPTY, Magazine::EMPTY),
        }
    }
}

impl Default for CpuCache {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for CpuCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CpuCache").finish_non_exhaustive()
    }
}

/// Full magazines shared by all CPUs.
pub(super) struct Depot {
    mags: [[Magazine; DEPOT_MAGS]; CACHE_CLASSES],
    counts: [usize; CACHE_CLASSES],
}

impl Depot {
    pub(super) const fn new() -> Self {
        Self {
            mags: [[Magazine::EMPTY; DEPOT_MAGS]; CACHE_CLASSES],
            counts: [0; CACHE_CLASSES],
        }
    }

    /// Takes a full magazine of `class`.
    pub(super) fn take(&mut self, class: usize) -> Option<Magazine> {
        let count = self.counts.get_mut(class)?;
        *count = count.checked_sub(1)?;
        let mag = self.mags.get_mut(class)?.get_mut(*count)?;
        Some(mem::replace(mag, Magazine::EMPTY))
    }

    /// Stores `mag`; `false` if there is no room.
    fn put(&mut self, class: usize, mag: Magazine) -> bool {
        let (Some(count), Some(mags)) = (self.counts.get_mut(class), self.mags.get_mut(class))
        else {
            return false;
        };
        match mags.get_mut(*count) {
            Some(slot) => {
                *slot = mag;
                *count += 1;
                true
            }
            None => false,
        }
    }
}

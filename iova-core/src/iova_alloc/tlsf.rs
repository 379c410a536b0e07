//! The backing allocator: a TLSF-style segregated free-extent allocator.
//!
//! Everything here works in *granule units*: an extent `[start, start + len)`
//! is a range of granule numbers (`address >> granule_shift`), so the absolute
//! alignment of an address and of its granule number agree for every
//! alignment that is a multiple of the granule.
//!
//! Every extent of the aperture that is not a hole is described by one
//! [`ExtentSlot`]: free, allocated (handed out), or cached (freed into a
//! per-CPU magazine, still allocated as far as this module is concerned).
//! The slots form two kinds of lists, all by `u32` index into the slot array:
//!
//! - the *physical list*: every extent in address order (`prev`/`next`);
//!   holes are the gaps between non-contiguous neighbours;
//! - the *free lists*: one doubly linked list per size class
//!   (`fprev`/`fnext`), and the list of unused slots (`fnext`).
//!
//! Size classes follow TLSF: the first level is `floor(log2(len))` (64
//! levels), the second level splits each power-of-two range into 16 linear
//! sub-ranges (sizes below 32 granules get a class each). Two bitmaps record
//! which classes are non-empty, so "the smallest non-empty class whose every
//! extent is at least `m` granules" is two `trailing_zeros`.
//!
//! The slot fields are atomics so that the per-CPU fast path can read and
//! change a slot's tag (generation and state) without taking the lock of this
//! allocator; all other fields are only written with that lock held
//! (`Relaxed` is enough: the lock orders them).

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// "No slot": the end of a list.
pub(super) const NIL: u32 = u32::MAX;

const SL_LOG2: u32 = 4;
const SL_COUNT: usize = 1 << SL_LOG2;
const FL_COUNT: usize = 64;
/// Number of size classes.
pub(super) const CLASS_COUNT: usize = FL_COUNT * SL_COUNT;

/// How many free extents an allocation may inspect, beyond the O(1)
/// bitmap search, before it gives up (see [`Tlsf::alloc`]).
pub(super) const SCAN_LIMIT: usize = 16;

/// Slot states (low two bits of the tag).
pub(super) const UNUSED: u64 = 0;
/// In a free list.
pub(super) const FREE: u64 = 1;
/// Handed out to a caller.
pub(super) const ALLOCATED: u64 = 2;
/// Freed by its owner, held by a per-CPU cache or being returned.
pub(super) const CACHED: u64 = 3;

const STATE_MASK: u64 = 3;
const GEN_SHIFT: u32 = 2;

/// Packs a generation and a state into a tag.
#[inline]
pub(super) const fn tag(generation: u64, state: u64) -> u64 {
    (generation << GEN_SHIFT) | state
}

/// The state of a tag.
#[inline]
pub(super) const fn tag_state(t: u64) -> u64 {
    t & STATE_MASK
}

/// The generation of a tag (62 bits).
#[inline]
pub(super) const fn tag_gen(t: u64) -> u64 {
    t >> GEN_SHIFT
}

/// The generation after `g` (wraps after 2^62 hand-outs of one slot).
#[inline]
pub(super) const fn next_gen(g: u64) -> u64 {
    g.wrapping_add(1) & (u64::MAX >> GEN_SHIFT)
}

/// One node of the IOVA allocator: describes one extent of the aperture.
///
/// The allocator needs one slot per free extent and one per live (or cached)
/// allocation; see [`extent_slots_needed`](super::extent_slots_needed) for a
/// bound. Create them with [`ExtentSlot::new`] (a `const fn`, so
/// `[const { ExtentSlot::new() }; N]` works) and pass them to
/// [`IovaAllocator::new`](super::IovaAllocator::new), which resets them.
#[derive(Debug)]
pub struct ExtentSlot {
    /// Generation (high 62 bits) and state (low 2 bits).
    pub(super) tag: AtomicU64,
    /// First granule number of the extent.
    start: AtomicU64,
    /// Length in granules (at least 1 while in use).
    len: AtomicU64,
    /// Physical list: previous extent by address.
    prev: AtomicU32,
    /// Physical list: next extent by address.
    next: AtomicU32,
    /// Free list of the size class: previous.
    fprev: AtomicU32,
    /// Free list of the size class (or list of unused slots): next.
    fnext: AtomicU32,
}

impl ExtentSlot {
    /// An unused slot.
    pub const fn new() -> Self {
        Self {
            tag: AtomicU64::new(tag(0, UNUSED)),
            start: AtomicU64::new(0),
            len: AtomicU64::new(0),
            prev: AtomicU32::new(NIL),
            next: AtomicU32::new(NIL),
            fprev: AtomicU32::new(NIL),
            fnext: AtomicU32::new(NIL),
        }
    }

    #[inline]
    pub(super) fn start(&self) -> u64 {
        self.start.load(Ordering::Relaxed)
    }
    #[inline]
    pub(super) fn len(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }
    #[inline]
    fn end(&self) -> u64 {
        self.start() + self.len()
    }
    #[inline]
    fn set_extent(&self, start: u64, len: u64) {
        self.start.store(start, Ordering::Relaxed);
        self.len.store(len, Ordering::Relaxed);
    }
    #[inline]
    fn prev(&self) -> u32 {
        self.prev.load(Ordering::Relaxed)
    }
    #[inline]
    fn next(&self) -> u32 {
        self.next.load(Ordering::Relaxed)
    }
    #[inline]
    fn set_prev(&self, v: u32) {
        self.prev.store(v, Ordering::Relaxed)
    }
    #[inline]
    fn set_next(&self, v: u32) {
        self.next.store(v, Ordering::Relaxed)
    }
    #[inline]
    fn fprev(&self) -> u32 {
        self.fprev.load(Ordering::Relaxed)
    }
    #[inline]
    fn fnext(&self) -> u32 {
        self.fnext.load(Ordering::Relaxed)
    }
    #[inline]
    fn set_fprev(&self, v: u32) {
        self.fprev.store(v, Ordering::Relaxed)
    }
    #[inline]
    fn set_fnext(&self, v: u32) {
        self.fnext.store(v, Ordering::Relaxed)
    }
    #[inline]
    fn state(&self) -> u64 {
        tag_state(self.tag.load(Ordering::Acquire))
    }
    /// Keeps the generation, sets the state.
    #[inline]
    fn set_state(&self, state: u64) {
        let g = tag_gen(self.tag.load(Ordering::Relaxed));
        self.tag.store(tag(g, state), Ordering::Release);
    }
}

impl Default for ExtentSlot {
    fn default() -> Self {
        Self::new()
    }
}

/// The size class holding extents of `n >= 1` granules.
#[inline]
pub(super) const fn class_of(n: u64) -> usize {
    let fl = 63 - n.leading_zeros();
    let sl = if fl < SL_LOG2 {
        n - (1 << fl)
    } else {
        (n >> (fl - SL_LOG2)) & (SL_COUNT as u64 - 1)
    };
    fl as usize * SL_COUNT + sl as usize
}

/// The smallest extent length in class `c` (for a valid class).
#[inline]
const fn class_min(c: usize) -> u64 {
    let fl = (c / SL_COUNT) as u32;
    let sl = (c % SL_COUNT) as u64;
    if fl < SL_LOG2 {
        (1 << fl) + sl
    } else {
        (1 << fl) + (sl << (fl - SL_LOG2))
    }
}

/// The first class whose every extent has at least `m >= 1` granules
/// (`CLASS_COUNT` if there is none).
#[inline]
pub(super) const fn search_class(m: u64) -> usize {
    let c = class_of(m);
    if class_min(c) < m { c + 1 } else { c }
}

/// Where to put `n` granules aligned to `a` (a power of two) inside the
/// extent `[start, start + len)`, if they fit. Prefers a position that leaves
/// at most one remainder (so the split needs fewer slots).
#[inline]
fn place(start: u64, len: u64, n: u64, a: u64) -> Option<u64> {
    let end = start.checked_add(len)?;
    let lo = start.checked_add(a - 1)? & !(a - 1);
    if lo.checked_add(n)? > end {
        return None;
    }
    if lo == start {
        return Some(lo);
    }
    // `end - n >= lo >= start`: cannot underflow.
    let hi = (end - n) & !(a - 1);
    if hi + n == end { Some(hi) } else { Some(lo) }
}

/// Why the backing allocator could not allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BackingError {
    /// No free extent fits.
    NoSpace,
    /// A free extent fits but splitting it needs slots that are not there.
    NoSlots,
}

/// Why a reservation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReserveError {
    /// An allocated or cached extent overlaps the range.
    InUse,
    /// Punching the hole would split an extent and no slot is unused.
    NoSlots,
}

/// Counts the backing allocator keeps under its lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BackingCounts {
    pub(super) free_extents: u64,
    pub(super) free_granules: u64,
    pub(super) unused_slots: u64,
}

/// The backing allocator's state (the slots live outside, see module docs).
pub(super) struct Tlsf {
    /// Bit `fl` set iff `sl_bitmap[fl] != 0`.
    fl_bitmap: u64,
    /// Bit `sl` of entry `fl` set iff `heads[fl * SL_COUNT + sl] != NIL`.
    sl_bitmap: [u16; FL_COUNT],
    /// Heads of the free lists.
    heads: [u32; CLASS_COUNT],
    /// Lowest-address extent.
    first: u32,
    /// Head of the list of unused slots.
    unused_head: u32,
    unused_count: usize,
    free_extents: usize,
    free_granules: u64,
    /// Extents inspected by the last allocation (tests only).
    #[cfg(test)]
    pub(super) last_steps: usize,
}

impl Tlsf {
    /// An allocator with nothing in it.
    pub(super) const fn new() -> Self {
        Self {
            fl_bitmap: 0,
            sl_bitmap: [0; FL_COUNT],
            heads: [NIL; CLASS_COUNT],
            first: NIL,
            unused_head: NIL,
            unused_count: 0,
            free_extents: 0,
            free_granules: 0,
            #[cfg(test)]
            last_steps: 0,
        }
    }

    /// Resets every slot and makes `[start, start + len)` one free extent.
    ///
    /// `s.len()` must be below `NIL`; `len >= 1`.
    pub(super) fn init(
        &mut self,
        s: &[ExtentSlot],
        start: u64,
        len: u64,
    ) -> Result<(), BackingError> {
        *self = Self::new();
        for (i, slot) in s.iter().enumerate().rev() {
            slot.tag.store(tag(0, UNUSED), Ordering::Relaxed);
            slot.set_extent(0, 0);
            slot.set_prev(NIL);
            slot.set_next(NIL);
            slot.set_fprev(NIL);
            slot.set_fnext(self.unused_head);
            self.unused_head = i as u32;
            self.unused_count += 1;
        }
        let i = self.take_unused(s).ok_or(BackingError::NoSlots)?;
        s[i as usize].set_extent(start, len);
        self.first = i;
        self.insert_free(s, i);
        Ok(())
    }

    /// Counts for statistics.
    pub(super) fn counts(&self) -> BackingCounts {
        BackingCounts {
            free_extents: self.free_extents as u64,
            free_granules: self.free_granules,
            unused_slots: self.unused_count as u64,
        }
    }

    fn take_unused(&mut self, s: &[ExtentSlot]) -> Option<u32> {
        let i = self.unused_head;
        if i == NIL {
            return None;
        }
        self.unused_head = s[i as usize].fnext();
        self.unused_count -= 1;
        let slot = &s[i as usize];
        slot.set_fnext(NIL);
        slot.set_fprev(NIL);
        slot.set_prev(NIL);
        slot.set_next(NIL);
        Some(i)
    }

    fn put_unused(&mut self, s: &[ExtentSlot], i: u32) {
        let slot = &s[i as usize];
        slot.set_state(UNUSED);
        slot.set_extent(0, 0);
        slot.set_prev(NIL);
        slot.set_next(NIL);
        slot.set_fprev(NIL);
        slot.set_fnext(self.unused_head);
        self.unused_head = i;
        self.unused_count += 1;
    }

    /// Puts slot `i` (whose extent is set) into the free list of its class.
    fn insert_free(&mut self, s: &[ExtentSlot], i: u32) {
        let slot = &s[i as usize];
        let len = slot.len();
        let c = class_of(len);
        let h = self.heads[c];
        slot.set_fprev(NIL);
        slot.set_fnext(h);
        if h != NIL {
            s[h as usize].set_fprev(i);
        }
        self.heads[c] = i;
        self.sl_bitmap[c / SL_COUNT] |= 1 << (c % SL_COUNT);
        self.fl_bitmap |= 1 << (c / SL_COUNT);
        self.free_extents += 1;
        self.free_granules += len;
        slot.set_state(FREE);
    }

    /// Takes free slot `i` out of its free list (its extent must not have
    /// changed since [`insert_free`](Self::insert_free)). The state is left
    /// for the caller to set.
    fn remove_free(&mut self, s: &[ExtentSlot], i: u32) {
        let slot = &s[i as usize];
        let len = slot.len();
        let c = class_of(len);
        let (p, n) = (slot.fprev(), slot.fnext());
        if p != NIL {
            s[p as usize].set_fnext(n);
        } else {
            self.heads[c] = n;
            if n == NIL {
                self.sl_bitmap[c / SL_COUNT] &= !(1 << (c % SL_COUNT));
                if self.sl_bitmap[c / SL_COUNT] == 0 {
                    self.fl_bitmap &= !(1 << (c / SL_COUNT));
                }
            }
        }
        if n != NIL {
            s[n as usize].set_fprev(p);
        }
        slot.set_fprev(NIL);
        slot.set_fnext(NIL);
        self.free_extents -= 1;
        self.free_granules -= len;
    }

    /// Physical list: puts `new` right before `at`.
    fn link_before(&mut self, s: &[ExtentSlot], at: u32, new: u32) {
        let p = s[at as usize].prev();
        s[new as usize].set_prev(p);
        s[new as usize].set_next(at);
        if p != NIL {
            s[p as usize].set_next(new);
        } else {
            self.first = new;
        }
        s[at as usize].set_prev(new);
    }

    /// Physical list: puts `new` right after `at`.
    fn link_after(&mut self, s: &[ExtentSlot], at: u32, new: u32) {
        let n = s[at as usize].next();
        s[new as usize].set_prev(at);
        s[new as usize].set_next(n);
        if n != NIL {
            s[n as usize].set_prev(new);
        }
        s[at as usize].set_next(new);
    }

    /// Physical list: takes `i` out.
    fn unlink(&mut self, s: &[ExtentSlot], i: u32) {
        let (p, n) = (s[i as usize].prev(), s[i as usize].next());
        if p != NIL {
            s[p as usize].set_next(n);
        } else {
            self.first = n;
        }
        if n != NIL {
            s[n as usize].set_prev(p);
        }
    }

    /// The first non-empty class at or above `c`.
    #[inline]
    fn first_at_or_above(&self, c: usize) -> Option<usize> {
        if c >= CLASS_COUNT {
            return None;
        }
        let (fl, sl) = (c / SL_COUNT, c % SL_COUNT);
        let bits = self.sl_bitmap[fl] & (u16::MAX << sl);
        if bits != 0 {
            return Some(fl * SL_COUNT + bits.trailing_zeros() as usize);
        }
        let fl_bits = self.fl_bitmap & u64::MAX.checked_shl(fl as u32 + 1).unwrap_or(0);
        if fl_bits == 0 {
            return None;
        }
        let fl = fl_bits.trailing_zeros() as usize;
        Some(fl * SL_COUNT + self.sl_bitmap[fl].trailing_zeros() as usize)
    }

    /// The last non-empty class strictly below `c`.
    #[inline]
    fn last_below(&self, c: usize) -> Option<usize> {
        let c = c.min(CLASS_COUNT).checked_sub(1)?;
        let (fl, sl) = (c / SL_COUNT, c % SL_COUNT);
        let bits = self.sl_bitmap[fl] & (u16::MAX >> (SL_COUNT - 1 - sl));
        if bits != 0 {
            return Some(fl * SL_COUNT + 15 - bits.leading_zeros() as usize);
        }
        let fl_bits = self.fl_bitmap & ((1u64 << fl) - 1);
        if fl_bits == 0 {
            return None;
        }
        let fl = 63 - fl_bits.leading_zeros() as usize;
        Some(fl * SL_COUNT + 15 - self.sl_bitmap[fl].leading_zeros() as usize)
    }

    /// Allocates `n >= 1` granules aligned to `a` granules (a power of two).
    /// Returns the slot, the first granule and the slot's new generation.
    ///
    /// 1. O(1) good fit: the first non-empty class whose every extent holds
    ///    `n + a - 1` granules; its first extent surely fits.
    /// 2. Otherwise a bounded scan: at most [`SCAN_LIMIT`] extents from the
    ///    largest non-empty classes below that, down to the class of `n`
    ///    (extents there may still fit, e.g. an exactly sized, already
    ///    aligned one).
    /// 3. Split off the head and tail remainders (at most two new slots).
    pub(super) fn alloc(
        &mut self,
        s: &[ExtentSlot],
        n: u64,
        a: u64,
    ) -> Result<(u32, u64, u64), BackingError> {
        #[cfg(test)]
        {
            self.last_steps = 0;
        }
        let need = if a > 1 { n.checked_add(a - 1) } else { Some(n) };
        let good = match need {
            Some(m) => search_class(m),
            None => CLASS_COUNT,
        };
        let mut found = None;
        if let Some(c) = self.first_at_or_above(good) {
            let b = self.heads[c];
            let slot = &s[b as usize];
            found = place(slot.start(), slot.len(), n, a).map(|p| (b, p));
        }
        if found.is_none() {
            found = self.scan(s, good, n, a);
        }
        let (b, pos) = found.ok_or(BackingError::NoSpace)?;

        let slot = &s[b as usize];
        let (bs, be) = (slot.start(), slot.end());
        let head = pos > bs;
        let tail = pos + n < be;
        if self.unused_count < head as usize + tail as usize {
            return Err(BackingError::NoSlots);
        }
        self.remove_free(s, b);
        slot.set_extent(pos, n);
        if head {
            if let Some(h) = self.take_unused(s) {
                s[h as usize].set_extent(bs, pos - bs);
                self.link_before(s, b, h);
                self.insert_free(s, h);
            }
        }
        if tail {
            if let Some(t) = self.take_unused(s) {
                s[t as usize].set_extent(pos + n, be - pos - n);
                self.link_after(s, b, t);
                self.insert_free(s, t);
            }
        }
        let g = next_gen(tag_gen(slot.tag.load(Ordering::Relaxed)));
        slot.tag.store(tag(g, ALLOCATED), Ordering::Release);
        Ok((b, pos, g))
    }

    /// Step 2 of [`alloc`](Self::alloc).
    fn scan(&mut self, s: &[ExtentSlot], below: usize, n: u64, a: u64) -> Option<(u32, u64)> {
        let lowest = class_of(n);
        let mut budget = SCAN_LIMIT;
        let mut c = below;
        while let Some(cc) = self.last_below(c) {
            if cc < lowest {
                break;
            }
            let mut i = self.heads[cc];
            while i != NIL {
                if budget == 0 {
                    return None;
                }
                budget -= 1;
                #[cfg(test)]
                {
                    self.last_steps += 1;
                }
                let slot = &s[i as usize];
                if let Some(p) = place(slot.start(), slot.len(), n, a) {
                    return Some((i, p));
                }
                i = slot.fnext();
            }
            c = cc;
        }
        None
    }

    /// Returns cached slot `i` to the free lists, merging it with free
    /// physical neighbours. O(1). Returns `false` (and changes nothing) if the
    /// slot is not cached.
    pub(super) fn release(&mut self, s: &[ExtentSlot], i: u32) -> bool {
        let Some(slot) = s.get(i as usize) else {
            return false;
        };
        if slot.state() != CACHED {
            return false;
        }
        let (mut start, mut len) = (slot.start(), slot.len());
        let p = slot.prev();
        if p != NIL {
            let ps = &s[p as usize];
            if ps.state() == FREE && ps.end() == start {
                self.remove_free(s, p);
                start = ps.start();
                len += ps.len();
                self.unlink(s, p);
                self.put_unused(s, p);
            }
        }
        let n = slot.next();
        if n != NIL {
            let ns = &s[n as usize];
            if ns.state() == FREE && start + len == ns.start() {
                self.remove_free(s, n);
                len += ns.len();
                self.unlink(s, n);
                self.put_unused(s, n);
            }
        }
        slot.set_extent(start, len);
        self.insert_free(s, i);
        true
    }

    /// Removes granules `[rs, re)` from the free extents. Fails, changing
    /// nothing, if an allocated or cached extent overlaps them, or if a split
    /// needs a slot and none is unused. O(number of extents).
    pub(super) fn reserve(
        &mut self,
        s: &[ExtentSlot],
        rs: u64,
        re: u64,
    ) -> Result<(), ReserveError> {
        // Pass 1: check.
        let mut split = false;
        let mut i = self.first;
        let mut guard = s.len();
        while i != NIL && guard > 0 {
            guard -= 1;
            let slot = &s[i as usize];
            let (st, en) = (slot.start(), slot.end());
            if st >= re {
                break;
            }
            if en > rs {
                if slot.state() != FREE {
                    return Err(ReserveError::InUse);
                }
                split |= st < rs && en > re;
            }
            i = slot.next();
        }
        if split && self.unused_count == 0 {
            return Err(ReserveError::NoSlots);
        }
        // Pass 2: trim the free extents.
        let mut i = self.first;
        let mut guard = s.len();
        while i != NIL && guard > 0 {
            guard -= 1;
            let slot = &s[i as usize];
            let (st, en) = (slot.start(), slot.end());
            let next = slot.next();
            if st >= re {
                break;
            }
            if en > rs {
                self.remove_free(s, i);
                match (st < rs, en > re) {
                    (true, true) => {
                        slot.set_extent(st, rs - st);
                        self.insert_free(s, i);
                        if let Some(t) = self.take_unused(s) {
                            s[t as usize].set_extent(re, en - re);
                            self.link_after(s, i, t);
                            self.insert_free(s, t);
                        }
                    }
                    (true, false) => {
                        slot.set_extent(st, rs - st);
                        self.insert_free(s, i);
                    }
                    (false, true) => {
                        slot.set_extent(re, en - re);
                        self.insert_free(s, i);
                    }
                    (false, false) => {
                        self.unlink(s, i);
                        self.put_unused(s, i);
                    }
                }
            }
            i = next;
        }
        Ok(())
    }

    /// Checks every structural invariant (tests only). `[lo, hi)` is the
    /// aperture in granules.
    #[cfg(test)]
    pub(super) fn check(&self, s: &[ExtentSlot], lo: u64, hi: u64) {
        let mut in_phys = std::vec![false; s.len()];
        let mut i = self.first;
        let mut prev = NIL;
        let mut prev_end = lo;
        let mut prev_free = false;
        let (mut free_n, mut free_g) = (0usize, 0u64);
        while i != NIL {
            let slot = &s[i as usize];
            assert!(!in_phys[i as usize], "cycle in the physical list");
            in_phys[i as usize] = true;
            assert_eq!(slot.prev(), prev, "broken prev link");
            assert!(slot.len() > 0, "empty extent");
            assert!(slot.start() >= prev_end, "extents overlap or are unordered");
            assert!(slot.end() <= hi, "extent outside the aperture");
            let st = slot.state();
            assert_ne!(st, UNUSED, "unused slot in the physical list");
            if st == FREE {
                assert!(
                    !(prev_free && slot.start() == prev_end),
                    "adjacent free extents not merged"
                );
                free_n += 1;
                free_g += slot.len();
            }
            prev_free = st == FREE;
            prev_end = slot.end();
            prev = i;
            i = slot.next();
        }
        assert_eq!(free_n, self.free_extents);
        assert_eq!(free_g, self.free_granules);
        // Free lists and bitmaps.
        let mut listed = 0;
        for c in 0..CLASS_COUNT {
            let (fl, sl) = (c / SL_COUNT, c % SL_COUNT);
            let bit = self.sl_bitmap[fl] & (1 << sl) != 0;
            assert_eq!(
                bit,
                self.heads[c] != NIL,
                "bitmap disagrees with list of class {c}"
            );
            let mut i = self.heads[c];
            let mut p = NIL;
            while i != NIL {
                let slot = &s[i as usize];
                assert_eq!(slot.state(), FREE);
                assert!(in_phys[i as usize]);
                assert_eq!(class_of(slot.len()), c);
                assert_eq!(slot.fprev(), p);
                listed += 1;
                p = i;
                i = slot.fnext();
            }
        }
        for fl in 0..FL_COUNT {
            assert_eq!(self.fl_bitmap & (1 << fl) != 0, self.sl_bitmap[fl] != 0);
        }
        assert_eq!(listed, self.free_extents);
        // Unused slots.
        let mut unused = 0;
        let mut i = self.unused_head;
        while i != NIL {
            assert_eq!(s[i as usize].state(), UNUSED);
            assert!(!in_phys[i as usize]);
            unused += 1;
            i = s[i as usize].fnext();
        }
        assert_eq!(unused, self.unused_count);
        assert_eq!(unused + in_phys.iter().filter(|b| **b).count(), s.len());
    }
}

#[cfg(test)]
mod class_tests {
    use super::*;

    #[test]
    fn classes_are_monotonic_and_bounds_hold() {
        let mut last = 0;
        for n in 1..100_000u64 {
            let c = class_of(n);
            assert!(c >= last);
            last = c;
            assert!(class_min(c) <= n);
            assert!(class_min(c + 1) > n);
            let sc = search_class(n);
            assert!(class_min(sc) >= n);
            assert!(sc <= c + 1);
        }
        assert_eq!(class_of(u64::MAX), CLASS_COUNT - 1);
        assert_eq!(search_class(u64::MAX), CLASS_COUNT);
        for n in 1..32 {
            assert_eq!(search_class(n), class_of(n), "small sizes are exact");
        }
    }

    #[test]
    fn placement() {
        assert_eq!(place(0, 10, 4, 1), Some(0));
        assert_eq!(place(1, 10, 4, 4), Some(4));
        // Aligned end: only a head remainder.
        assert_eq!(place(1, 11, 4, 4), Some(8));
        assert_eq!(place(1, 6, 4, 4), None);
        assert_eq!(place(u64::MAX - 4, 4, 1, 8), None);
    }
}

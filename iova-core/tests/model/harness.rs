//! The model of the two-step API and the harness that checks the real one
//! against it, step by step. Shared by the property test (`tests/model.rs`,
//! which generates operations with proptest), the corpus replay
//! (`tests/fuzz_corpus.rs`) and the fuzz target (`fuzz/fuzz_targets/two_step.rs`),
//! which decode them from bytes with [`decode_ops`].
#![allow(dead_code)] // each includer uses a different part

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use iova_core::dma::DefaultLinks;
use iova_core::fakes::{Access, FakeDomain, FakeFrames, Fault, Leaf, fake_domain_in};
use iova_core::iova_alloc::{
    IovaAllocError, IovaAllocator, IovaAllocatorConfig, extent_slots_needed,
};
use iova_core::{
    DmaMapper, Error, Iova, IovaRange, IovaState, Link, Mapping, PhysAddr, Prot, PtFormat, Returned,
};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

pub const G: u64 = 0x1000;
pub const M2: u64 = 0x20_0000;
/// The aperture straddles a 1 GiB boundary, so tables of every level are shared
/// and installed on both sides.
const APERTURE_START: u64 = 0x3800_0000;
const APERTURE_LEN: u64 = 0x1000_0000;
/// Most states and mappings alive at once.
pub const MAX_HANDLES: usize = 6;
pub const PA_BASE: u64 = 0x8000_0000;

static CPU0: fn() -> usize = || 0;

type State<'a, F> = IovaState<'a, FakeDomain<F>, DefaultLinks>;

/// A page's translation: page PA and permissions as the format encodes them.
type Translated = (u64, Prot);

fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a).saturating_mul(a)
}

/// The granule-rounded span of a link, `[start, end)` in state offsets.
fn span(l: &Link) -> (u64, u64) {
    (l.offset & !(G - 1), align_up(l.offset + l.len, G))
}

/// What the model knows about one state (or one-shot mapping, or leaked state).
#[derive(Clone)]
struct Model {
    base: u64,
    size: u64,
    range_len: u64,
    /// Sorted by offset.
    links: Vec<Link>,
    /// Page IOVA -> translations unlinked since the last successful flush,
    /// which the IOTLB may still serve (page PA, permissions as encoded).
    pending: BTreeMap<u64, Vec<(u64, Prot)>>,
    /// Links or unlinks happened since the last successful flush.
    dirty: bool,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Model {{ base: {:#x}, size: {:#x}, links: [",
            self.base, self.size
        )?;
        for l in &self.links {
            write!(
                f,
                "({:#x}+{:#x} -> {:#x} {:?}) ",
                l.offset, l.len, l.pa.0, l.prot
            )?;
        }
        write!(
            f,
            "], pending pages: {:x?}, dirty: {} }}",
            self.pending.keys().collect::<Vec<_>>(),
            self.dirty
        )
    }
}

impl Model {
    fn new(base: u64, size: u64) -> Self {
        Self {
            base,
            size,
            range_len: align_up(size, G),
            links: Vec::new(),
            pending: BTreeMap::new(),
            dirty: false,
        }
    }

    fn insert(&mut self, l: Link) {
        let i = self.links.partition_point(|x| x.offset < l.offset);
        self.links.insert(i, l);
        self.dirty = true;
    }

    /// Moves the links in `[offset, end)` to the pending set.
    fn remove(&mut self, offset: u64, end: u64, geo: &Geo) {
        let (gone, kept): (Vec<Link>, Vec<Link>) = self
            .links
            .iter()
            .partition(|l| l.offset >= offset && l.offset + l.len <= end);
        for l in gone {
            self.make_pending(&l, geo);
        }
        self.links = kept;
        self.dirty = true;
    }

    fn remove_all(&mut self, geo: &Geo) {
        self.remove(0, u64::MAX, geo);
    }

    fn make_pending(&mut self, l: &Link, geo: &Geo) {
        let (s, e) = span(l);
        let pa = l.pa.0 & !(G - 1);
        let prot = geo.eprot(l.pa.0, l.prot);
        for p in (s..e).step_by(G as usize) {
            self.pending
                .entry(self.base + p)
                .or_default()
                .push((pa + (p - s), prot));
        }
    }

    fn contains(&self, iova: u64) -> bool {
        (self.base..self.base + self.range_len).contains(&iova)
    }

    /// The current translation of `page` by this state's links.
    fn translation(&self, page: u64, geo: &Geo) -> Option<(u64, Prot)> {
        let off = page - self.base;
        self.links.iter().find_map(|l| {
            let (s, e) = span(l);
            (s..e)
                .contains(&off)
                .then(|| ((l.pa.0 & !(G - 1)) + (off - s), geo.eprot(l.pa.0, l.prot)))
        })
    }
}

/// What the format does, as far as the model needs it.
struct Geo {
    /// (size, depth) of every page and block size, largest first.
    leaf_sizes: Vec<(u64, usize)>,
    oa_bits: u32,
    /// Encoding round trip of permissions (depth of the smallest page).
    eprot: Box<dyn Fn(u64, Prot) -> Prot>,
    supports: Box<dyn Fn(Prot) -> bool>,
}

impl Geo {
    fn new<F: PtFormat + Copy + 'static>(fmt: F) -> Self {
        let levels = fmt.levels();
        let mut shift = fmt.granule_shift();
        let mut leaf_sizes = Vec::new();
        for d in (0..levels).rev() {
            if d == levels - 1 || fmt.block_allowed(d) {
                leaf_sizes.push((1u64 << shift, d));
            }
            shift += fmt.index_bits(d);
        }
        leaf_sizes.reverse();
        assert_eq!(fmt.granule_shift(), 12);
        Self {
            leaf_sizes,
            oa_bits: fmt.oa_bits(),
            eprot: Box::new(move |pa, prot| {
                let d = levels - 1;
                fmt.leaf_prot(d, fmt.encode_leaf(d, PhysAddr(pa & !(G - 1)), prot))
            }),
            supports: Box::new(move |p| fmt.supports(p)),
        }
    }

    fn eprot(&self, pa: u64, prot: Prot) -> Prot {
        (self.eprot)(pa, prot)
    }

    /// The leaves the engine writes for a link: the largest page or block that
    /// fits at each step.
    fn leaves_of(&self, base: u64, l: &Link, out: &mut Vec<Leaf>) {
        let (s, e) = span(l);
        let (mut a, stop) = (base + s, base + e);
        let mut p = l.pa.0 & !(G - 1);
        let prot = self.eprot(l.pa.0, l.prot);
        while a < stop {
            let size = self
                .leaf_sizes
                .iter()
                .map(|&(sz, _)| sz)
                .find(|&sz| (a | p) % sz == 0 && stop - a >= sz)
                .expect("the granule always fits");
            out.push(Leaf {
                iova: Iova(a),
                pa: PhysAddr(p),
                size,
                prot,
            });
            a += size;
            p += size;
        }
    }

    /// The errors `state.link(offset, pa, len, prot)` may return; empty when it
    /// must succeed.
    fn link_errors(&self, m: &Model, offset: u64, pa: u64, len: u64, prot: Prot) -> Vec<Error> {
        let mut errs = Vec::new();
        if len == 0 {
            errs.push(Error::ZeroLength);
        }
        let end = offset.checked_add(len);
        if end.is_none() || pa.checked_add(len).is_none() {
            errs.push(Error::Overflow);
        }
        if end.is_some_and(|e| e > m.size) {
            errs.push(Error::OutOfRange);
        }
        if !prot.grants_access() || !(self.supports)(prot) {
            errs.push(Error::InvalidProt);
        }
        if offset % G != pa % G {
            errs.push(Error::Misaligned);
        }
        if end.is_none_or(|e| len == 0 || e > m.size) {
            return errs;
        }
        let new = Link {
            offset,
            len,
            pa: PhysAddr(pa),
            prot,
        };
        let (s, e) = span(&new);
        if m.links.iter().any(|l| {
            let (ls, le) = span(l);
            ls < e && s < le
        }) {
            errs.push(Error::AlreadyMapped);
        } else {
            // Only the lowest link may start inside a granule, only the highest
            // may end inside one.
            let mut all = m.links.clone();
            let i = all.partition_point(|x| x.offset < offset);
            all.insert(i, new);
            let n = all.len();
            let bad = all.iter().enumerate().any(|(k, l)| {
                (k > 0 && l.offset % G != 0) || (k + 1 < n && (l.offset + l.len) % G != 0)
            });
            if bad {
                errs.push(Error::Misaligned);
            }
        }
        // What the page table checks about the output range.
        let pa_span = (pa & !(G - 1)).checked_add(e - s);
        match pa_span {
            None => errs.push(Error::Overflow),
            Some(pe) if self.oa_bits < 64 && pe > 1 << self.oa_bits => errs.push(Error::OutOfRange),
            _ => {}
        }
        errs
    }
}

/// Turns the raw numbers of an `Op::Unlink` into an offset and a length: whole
/// links, runs of links, parts of links, ranges around links, random ranges,
/// and degenerate ones.
fn resolve_unlink(m: &Model, how: u8, a: u64, b: u64) -> (u64, u64) {
    let n = m.links.len();
    let pick = |x: u64| m.links[(x % n as u64) as usize];
    match how {
        0 | 1 if n > 0 => {
            let l = pick(a);
            (l.offset, l.len)
        }
        2 if n > 0 => {
            let j = (a % n as u64) as usize;
            let k = (j + (b % 3) as usize).min(n - 1);
            let (first, last) = (m.links[j], m.links[k]);
            (first.offset, last.offset + last.len - first.offset)
        }
        3 if n > 0 => {
            let l = pick(a);
            if b % 2 == 0 {
                (l.offset, (l.len - 1).max(1))
            } else {
                (l.offset + 1, l.len.saturating_sub(1).max(1))
            }
        }
        4 if n > 0 => {
            let l = pick(a);
            (l.offset.saturating_sub(G), l.len + 2 * G)
        }
        5 => ((a % m.size.div_ceil(G)) * G, (1 + b % 8) * G),
        6 => (a % (m.size + G), b % (2 * m.size)),
        _ => [(a % m.size, u64::MAX - b % G), (m.size, 1), (0, 0)][(b >> 32) as usize % 3],
    }
}

/// The errors `state.unlink(offset, len)` may return; empty when it must succeed.
fn unlink_errors(m: &Model, offset: u64, len: u64) -> Vec<Error> {
    let mut errs = Vec::new();
    if len == 0 {
        errs.push(Error::ZeroLength);
    }
    let Some(end) = offset.checked_add(len) else {
        errs.push(Error::Overflow);
        return errs;
    };
    if end > m.size {
        errs.push(Error::OutOfRange);
    }
    if !errs.is_empty() {
        return errs;
    }
    let mut covered = 0;
    let mut cut = false;
    for l in &m.links {
        let le = l.offset + l.len;
        if l.offset < end && offset < le {
            covered += le.min(end) - l.offset.max(offset);
            cut |= l.offset < offset || le > end;
        }
    }
    if covered < len {
        errs.push(Error::NotMapped);
    }
    if cut {
        errs.push(Error::PartialUnmap);
    }
    errs
}

/// Counts how often each outcome happened over all cases, so that the test
/// can tell it exercised what it claims to.
#[derive(Default)]
pub struct Coverage(pub Mutex<BTreeMap<String, u64>>);

impl Coverage {
    pub fn hit(&self, what: impl Into<String>) {
        *self.0.lock().unwrap().entry(what.into()).or_default() += 1;
    }
    pub fn count(&self, what: &str) -> u64 {
        self.0.lock().unwrap().get(what).copied().unwrap_or(0)
    }
}

fn outcome(op: &str, r: &Result<(), Error>) -> String {
    match r {
        Ok(()) => format!("{op} ok"),
        Err(e) => format!("{op} {e:?}"),
    }
}

#[derive(Clone, Debug)]
pub enum Op {
    Alloc {
        size: u64,
        align: u64,
    },
    Link {
        st: usize,
        off: (u8, u64),
        len: (u8, u64),
        pa: (u8, u64, u64),
        prot: Prot,
        oom: Option<u8>,
    },
    /// Single pages with gaps between them: many disjoint ranges in one gather.
    LinkMany {
        st: usize,
        count: u8,
        stride: u8,
        first: u64,
        pa: u64,
    },
    Unlink {
        st: usize,
        how: u8,
        a: u64,
        b: u64,
    },
    UnlinkEach {
        st: usize,
        rev: bool,
    },
    Sync {
        st: usize,
        fail: bool,
    },
    Destroy {
        st: usize,
        fail: bool,
    },
    Free {
        st: usize,
        fail: bool,
    },
    Drop {
        st: usize,
        fail: bool,
    },
    MapOne {
        pa: u64,
        len: u64,
        prot: Prot,
    },
    MapSg {
        pieces: Vec<(u64, u64)>,
        prot: Prot,
    },
    Unmap {
        m: usize,
        fail: bool,
        by_drop: bool,
    },
}

struct Harness<'a, F: PtFormat + Copy + 'static> {
    geo: Geo,
    domain: &'a FakeDomain<F>,
    frames: &'a FakeFrames,
    iovas: &'a IovaAllocator<'a>,
    mapper: DmaMapper<'a, FakeDomain<F>>,
    states: Vec<(State<'a, F>, Model)>,
    maps: Vec<(Mapping<'a, FakeDomain<F>>, Model)>,
    /// States dropped while their flush failed: their IOVA stays allocated and
    /// their translations may stay in the IOTLB forever.
    leaked: Vec<Model>,
    /// Tables on the gathers of those states, never returned.
    leaked_frames: usize,
    /// Pages the IOTLB may hold (the last access to them did not fault).
    probed: BTreeSet<u64>,
    rng: u64,
    cov: &'a Coverage,
}

impl<'a, F: PtFormat + Copy + 'static> Harness<'a, F> {
    fn rand(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn flushes(&self) -> usize {
        self.domain.invalidator().flushes()
    }

    fn live_iovas(&self) -> u64 {
        self.iovas.stats().live_allocations
    }

    fn handles(&self) -> usize {
        self.states.len() + self.maps.len()
    }

    fn models(&self) -> impl Iterator<Item = &Model> {
        self.states
            .iter()
            .map(|(_, m)| m)
            .chain(self.maps.iter().map(|(_, m)| m))
            .chain(self.leaked.iter())
    }

    fn pick(&self, st: usize) -> Option<usize> {
        (!self.states.is_empty()).then(|| st % self.states.len())
    }

    fn fail_next_flush(&self, fail: bool) {
        self.domain
            .invalidator()
            .fail_next_flushes(usize::from(fail));
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Alloc { size, align } => self.alloc(size, align)?,
            Op::Link {
                st,
                off,
                len,
                pa,
                prot,
                oom,
            } => {
                let Some(i) = self.pick(st) else {
                    return Ok(());
                };
                let (offset, len, pa) = self.resolve_link(i, off, len, pa);
                self.link(i, offset, pa, len, prot, oom)?;
            }
            Op::LinkMany {
                st,
                count,
                stride,
                first,
                pa,
            } => {
                let Some(i) = self.pick(st) else {
                    return Ok(());
                };
                let m = &self.states[i].1;
                let pages = m.size.div_ceil(G);
                let first = first % pages;
                let pa = PA_BASE + (pa % (1 << 30)) * G;
                for k in 0..u64::from(count) {
                    let off = (first + k * (u64::from(stride) + 1)) * G;
                    if off > self.states[i].1.size + G {
                        break;
                    }
                    let len = G.min(self.states[i].1.size.saturating_sub(off)).max(1);
                    self.link(i, off, pa + k * 3 * G, len, Prot::RW, None)?;
                }
            }
            Op::Unlink { st, how, a, b } => {
                let Some(i) = self.pick(st) else {
                    return Ok(());
                };
                let (offset, len) = resolve_unlink(&self.states[i].1, how, a, b);
                self.unlink(i, offset, len)?;
            }
            Op::UnlinkEach { st, rev } => {
                let Some(i) = self.pick(st) else {
                    return Ok(());
                };
                let mut links = self.states[i].1.links.clone();
                if rev {
                    links.reverse();
                }
                for l in links {
                    self.unlink(i, l.offset, l.len)?;
                }
            }
            Op::Sync { st, fail } => {
                let Some(i) = self.pick(st) else {
                    return Ok(());
                };
                self.sync(i, fail)?;
            }
            Op::Destroy { st, fail } => {
                let Some(i) = self.pick(st) else {
                    return Ok(());
                };
                self.destroy(i, fail)?;
            }
            Op::Free { st, fail } => {
                let Some(i) = self.pick(st) else {
                    return Ok(());
                };
                self.free(i, fail)?;
            }
            Op::Drop { st, fail } => {
                let Some(i) = self.pick(st) else {
                    return Ok(());
                };
                self.drop_state(i, fail)?;
            }
            Op::MapOne { pa, len, prot } => self.map_one(pa, len, prot)?,
            Op::MapSg { ref pieces, prot } => self.map_sg(pieces, prot)?,
            Op::Unmap { m, fail, by_drop } => {
                if !self.maps.is_empty() {
                    self.unmap(m % self.maps.len(), fail, by_drop)?;
                }
            }
        }
        self.check_all()
    }

    fn resolve_link(
        &self,
        i: usize,
        (ok, oa): (u8, u64),
        (lk, la): (u8, u64),
        (pk, pa, pb): (u8, u64, u64),
    ) -> (u64, u64, u64) {
        let m = &self.states[i].1;
        let pages = m.size.div_ceil(G);
        let n = m.links.len();
        let offset = match ok {
            0..=2 => (oa % pages) * G,
            3 => (oa % (m.size / M2 + 1)) * M2,
            4 => oa % m.size,
            5 if n > 0 => {
                let l = m.links[(oa % n as u64) as usize];
                l.offset + l.len
            }
            6 if n > 0 => {
                let l = m.links[(oa % n as u64) as usize];
                l.offset + oa % l.len
            }
            7 => m.size.saturating_sub(oa % (3 * G)),
            8 => u64::MAX - oa % (2 * G),
            9 | 10 => m.links.last().map_or(0, |l| align_up(l.offset + l.len, G)),
            _ => 0,
        };
        let next = m
            .links
            .iter()
            .find(|l| l.offset >= offset)
            .map(|l| l.offset);
        let room = m.size.saturating_sub(offset);
        let len = match lk {
            0..=2 => (1 + la % (room / G).clamp(1, 16)) * G,
            3 => room.max(1),
            4 => 1 + la % 0x1_0000,
            5 => M2 * (1 + la % 2) - (la >> 8) % 2 * G,
            6 => [0, u64::MAX - la % G][(la >> 20) as usize % 2],
            7 if next.is_some() => next.unwrap().saturating_sub(offset).max(1),
            8 => (1 + la % 600) * G,
            _ => (room & !(G - 1)).max(G),
        };
        let iova = m.base.wrapping_add(offset);
        let pa = match pk {
            // Congruent with the IOVA modulo 2 MiB: blocks where the span allows.
            0..=4 => PA_BASE + (pa % 64) * M2 + iova % M2,
            5 => ((pa % (1 << 34)) & !(G - 1)) | (offset % G),
            6 => (pa & !(G - 1)) | (offset.wrapping_add(1 + pb % (G - 1)) % G),
            _ => {
                if pb % 2 == 0 {
                    ((1u64 << self.geo.oa_bits) - (pa % 1024) * G) | (offset % G)
                } else {
                    ((u64::MAX - pa % (8 * G)) & !(G - 1)) | (offset % G)
                }
            }
        };
        (offset, len, pa)
    }

    fn alloc(&mut self, size: u64, align: u64) -> Result<(), TestCaseError> {
        if self.handles() >= MAX_HANDLES {
            return Ok(());
        }
        let live = self.live_iovas();
        let mut errs = Vec::new();
        if size == 0 {
            errs.push(Error::ZeroLength);
        }
        if !align.is_power_of_two() {
            errs.push(Error::Misaligned);
        }
        let used: u64 = self.models().map(|m| m.range_len + M2).sum();
        match self.mapper.try_alloc(size, align) {
            Ok(s) => {
                self.cov.hit("alloc ok");
                prop_assert!(
                    errs.is_empty(),
                    "try_alloc({size:#x}, {align:#x}) succeeded"
                );
                let r = s.range();
                prop_assert_eq!(s.size(), size);
                prop_assert_eq!(r.start, s.iova());
                prop_assert_eq!(r.len(), align_up(size, G));
                prop_assert!(r.start.0 % align.max(G) == 0, "{:?} not aligned", r);
                prop_assert!(
                    r.start.0 >= APERTURE_START && r.end.0 <= APERTURE_START + APERTURE_LEN
                );
                prop_assert!(!s.is_linked() && !s.needs_sync());
                prop_assert_eq!(self.live_iovas(), live + 1);
                let m = Model::new(r.start.0, size);
                self.states.push((s, m));
            }
            Err(e) => {
                self.cov.hit(format!("alloc {e:?}"));
                let no_space = e == Error::Iova(IovaAllocError::NoSpace) && used > APERTURE_LEN / 2;
                prop_assert!(
                    errs.contains(&e) || no_space,
                    "try_alloc({:#x}, {:#x}) = {:?}, expected one of {:?}",
                    size,
                    align,
                    e,
                    errs
                );
                prop_assert_eq!(self.live_iovas(), live);
            }
        }
        Ok(())
    }

    fn link(
        &mut self,
        i: usize,
        offset: u64,
        pa: u64,
        len: u64,
        prot: Prot,
        oom: Option<u8>,
    ) -> Result<(), TestCaseError> {
        let errs = self
            .geo
            .link_errors(&self.states[i].1, offset, pa, len, prot);
        let flushes = self.flushes();
        let (s, m) = &mut self.states[i];
        let needed_sync = s.needs_sync();
        if let Some(n) = oom {
            self.frames.fail_after(n.into());
        }
        let r = s.link(offset, PhysAddr(pa), len, prot);
        self.frames.unlimited();
        self.cov.hit(outcome("link", &r));
        match r {
            Ok(()) => {
                prop_assert!(
                    errs.is_empty(),
                    "link({offset:#x}, {pa:#x}, {len:#x}, {prot:?}) succeeded, expected one of {errs:?} ({:?})",
                    m
                );
                m.insert(Link {
                    offset,
                    len,
                    pa: PhysAddr(pa),
                    prot,
                });
            }
            Err(e) => {
                let oom_ok = e == Error::NoMemory && oom.is_some() && errs.is_empty();
                prop_assert!(
                    errs.contains(&e) || oom_ok,
                    "link({offset:#x}, {pa:#x}, {len:#x}, {prot:?}) = {e:?}, expected one of {errs:?} ({:?})",
                    m
                );
                if e != Error::NoMemory {
                    prop_assert_eq!(s.needs_sync(), needed_sync, "a refused link left work");
                }
            }
        }
        prop_assert_eq!(s.links(), &m.links[..]);
        prop_assert_eq!(self.flushes(), flushes, "link flushed");
        Ok(())
    }

    fn unlink(&mut self, i: usize, offset: u64, len: u64) -> Result<(), TestCaseError> {
        let errs = unlink_errors(&self.states[i].1, offset, len);
        let flushes = self.flushes();
        let (s, m) = &mut self.states[i];
        let needed_sync = s.needs_sync();
        let r = s.unlink(offset, len);
        self.cov.hit(outcome("unlink", &r));
        match r {
            Ok(()) => {
                prop_assert!(
                    errs.is_empty(),
                    "unlink({offset:#x}, {len:#x}) succeeded, expected one of {errs:?} ({m:?})"
                );
                m.remove(offset, offset + len, &self.geo);
            }
            Err(e) => {
                prop_assert!(
                    errs.contains(&e),
                    "unlink({offset:#x}, {len:#x}) = {e:?}, expected one of {errs:?} ({m:?})"
                );
                prop_assert_eq!(s.needs_sync(), needed_sync);
            }
        }
        prop_assert_eq!(s.links(), &m.links[..]);
        prop_assert_eq!(self.flushes(), flushes, "unlink flushed");
        Ok(())
    }

    fn sync(&mut self, i: usize, fail: bool) -> Result<(), TestCaseError> {
        let flushes = self.flushes();
        let (s, m) = &mut self.states[i];
        let work = s.needs_sync();
        prop_assert!(!m.dirty || work, "links or unlinks but nothing to sync");
        self.domain
            .invalidator()
            .fail_next_flushes(usize::from(fail));
        let r = s.sync();
        self.domain.invalidator().fail_next_flushes(0);
        self.cov.hit(outcome("sync", &r));
        prop_assert_eq!(
            self.domain.invalidator().flushes() - flushes,
            usize::from(work)
        );
        if fail && work {
            prop_assert_eq!(r, Err(Error::Timeout));
            prop_assert!(s.needs_sync(), "a failed sync dropped its work");
        } else {
            prop_assert_eq!(r, Ok(()));
            prop_assert!(!s.needs_sync());
            m.pending.clear();
            m.dirty = false;
        }
        Ok(())
    }

    fn destroy(&mut self, i: usize, fail: bool) -> Result<(), TestCaseError> {
        let (s, mut m) = self.states.remove(i);
        let (flushes, live) = (self.flushes(), self.live_iovas());
        let work = s.needs_sync() || s.is_linked();
        self.fail_next_flush(fail);
        let r = s.destroy();
        self.fail_next_flush(false);
        prop_assert_eq!(self.flushes() - flushes, usize::from(work));
        match r {
            Ok(()) => {
                self.cov.hit("destroy ok");
                prop_assert!(!(fail && work), "destroy ignored a failed flush");
                prop_assert_eq!(self.live_iovas(), live - 1);
            }
            Err(Returned { error, state }) => {
                self.cov.hit(format!("destroy {error:?}"));
                prop_assert!(fail && work);
                prop_assert_eq!(error, Error::Timeout);
                prop_assert!(!state.is_linked() && state.needs_sync());
                prop_assert_eq!(state.iova().0, m.base);
                prop_assert_eq!(self.live_iovas(), live, "IOVA freed before its flush");
                m.remove_all(&self.geo);
                self.states.insert(i, (state, m));
            }
        }
        Ok(())
    }

    fn free(&mut self, i: usize, fail: bool) -> Result<(), TestCaseError> {
        let (s, m) = self.states.remove(i);
        let (flushes, live) = (self.flushes(), self.live_iovas());
        let linked = s.is_linked();
        prop_assert_eq!(linked, !m.links.is_empty());
        let work = s.needs_sync();
        self.fail_next_flush(fail);
        let r = s.free();
        self.fail_next_flush(false);
        match r {
            Ok(()) => {
                self.cov.hit("free ok");
                prop_assert!(!linked, "freed while linked");
                prop_assert!(!(fail && work), "free ignored a failed flush");
                prop_assert_eq!(self.flushes() - flushes, usize::from(work));
                prop_assert_eq!(self.live_iovas(), live - 1);
            }
            Err(Returned { error, state }) => {
                self.cov.hit(format!("free {error:?}"));
                if linked {
                    prop_assert_eq!(error, Error::StillLinked);
                    prop_assert_eq!(self.flushes(), flushes);
                } else {
                    prop_assert!(fail && work);
                    prop_assert_eq!(error, Error::Timeout);
                    prop_assert_eq!(self.flushes() - flushes, 1);
                }
                prop_assert_eq!(state.links(), &m.links[..]);
                prop_assert_eq!(state.needs_sync(), work);
                prop_assert_eq!(self.live_iovas(), live);
                self.states.insert(i, (state, m));
            }
        }
        Ok(())
    }

    /// Whether any state or mapping other than state `skip` has unflushed work.
    fn others_dirty(&self, skip: Option<usize>) -> bool {
        self.states
            .iter()
            .enumerate()
            .any(|(k, (s, _))| Some(k) != skip && s.needs_sync())
            || self.maps.iter().any(|(_, m)| m.dirty)
    }

    fn drop_state(&mut self, i: usize, fail: bool) -> Result<(), TestCaseError> {
        // A leak is measured only when no other gather holds freed tables.
        let fail = fail && !self.others_dirty(Some(i));
        let (s, m) = self.states.remove(i);
        let work = s.needs_sync() || s.is_linked();
        self.dropped(fail, work, m, move || drop(s))
    }

    /// Drops a state or mapping through `drop_it`, with its flush failing if
    /// `fail`; `work`: it has something to flush.
    fn dropped(
        &mut self,
        fail: bool,
        work: bool,
        mut m: Model,
        drop_it: impl FnOnce(),
    ) -> Result<(), TestCaseError> {
        let (flushes, live) = (self.flushes(), self.live_iovas());
        self.fail_next_flush(fail);
        drop_it();
        self.fail_next_flush(false);
        prop_assert_eq!(self.flushes() - flushes, usize::from(work));
        if fail && work {
            self.cov.hit("drop leaked");
            prop_assert_eq!(self.live_iovas(), live, "IOVA freed despite a failed flush");
            m.remove_all(&self.geo);
            self.leaked.push(m);
            let reachable = self.domain.tables();
            let live_frames = self.frames.live();
            prop_assert!(live_frames >= reachable + self.leaked_frames);
            self.leaked_frames = live_frames - reachable;
        } else {
            self.cov.hit("drop ok");
            prop_assert_eq!(self.live_iovas(), live - 1);
        }
        Ok(())
    }

    fn map_one(&mut self, pa: u64, len: u64, prot: Prot) -> Result<(), TestCaseError> {
        if self.handles() >= MAX_HANDLES {
            return Ok(());
        }
        let off = pa % G;
        let errs = match off.checked_add(len) {
            None => vec![Error::Overflow],
            Some(0) => vec![Error::ZeroLength],
            Some(size) => {
                let mut e = self
                    .geo
                    .link_errors(&Model::new(0, size), off, pa, len, prot);
                // The IOVA is allocated before the link is tried.
                if size > u64::MAX - (G - 1) {
                    e = vec![Error::Overflow];
                } else if align_up(size, G) > APERTURE_LEN {
                    e = vec![Error::Iova(IovaAllocError::NoSpace)];
                }
                e
            }
        };
        let (flushes, live) = (self.flushes(), self.live_iovas());
        let r = self.mapper.map(PhysAddr(pa), len, prot);
        self.cov
            .hit(outcome("map", &r.as_ref().map(|_| ()).map_err(|e| *e)));
        match r {
            Ok(mp) => {
                prop_assert!(
                    errs.is_empty(),
                    "map({pa:#x}, {len:#x}, {prot:?}) succeeded, expected one of {errs:?}"
                );
                prop_assert_eq!(mp.len(), len);
                prop_assert_eq!(mp.addr().0 % G, off);
                prop_assert_eq!(self.flushes() - flushes, 1);
                prop_assert_eq!(self.live_iovas(), live + 1);
                let mut m = Model::new(mp.addr().0 - off, off + len);
                m.insert(Link {
                    offset: off,
                    len,
                    pa: PhysAddr(pa),
                    prot,
                });
                m.dirty = false;
                self.maps.push((mp, m));
            }
            Err(e) => {
                prop_assert!(
                    errs.contains(&e),
                    "map({pa:#x}, {len:#x}, {prot:?}) = {e:?}, expected one of {errs:?}"
                );
                prop_assert_eq!(self.live_iovas(), live);
            }
        }
        Ok(())
    }

    fn map_sg(&mut self, pieces: &[(u64, u64)], prot: Prot) -> Result<(), TestCaseError> {
        if self.handles() >= MAX_HANDLES {
            return Ok(());
        }
        let head = pieces[0].0 % G;
        let size = pieces
            .iter()
            .try_fold(head, |acc, &(_, len)| acc.checked_add(len));
        let mut model = Model::new(0, size.unwrap_or(0));
        let errs = match size {
            None => vec![Error::Overflow],
            Some(0) => vec![Error::ZeroLength],
            Some(size) if size > u64::MAX - (G - 1) => vec![Error::Overflow],
            Some(size) if align_up(size, G) > APERTURE_LEN => {
                vec![Error::Iova(IovaAllocError::NoSpace)]
            }
            Some(_) => {
                let mut offset = head;
                let mut errs = Vec::new();
                for &(pa, len) in pieces {
                    errs = self.geo.link_errors(&model, offset, pa, len, prot);
                    if !errs.is_empty() {
                        break;
                    }
                    model.insert(Link {
                        offset,
                        len,
                        pa: PhysAddr(pa),
                        prot,
                    });
                    offset += len;
                }
                errs
            }
        };
        let (flushes, live) = (self.flushes(), self.live_iovas());
        let r = self.mapper.map_sg(
            &pieces
                .iter()
                .map(|&(pa, len)| (PhysAddr(pa), len))
                .collect::<Vec<_>>(),
            prot,
        );
        match r {
            Ok(s) => {
                self.cov.hit("map_sg ok");
                prop_assert!(
                    errs.is_empty(),
                    "map_sg({pieces:x?}) succeeded, expected one of {errs:?}"
                );
                prop_assert_eq!(self.flushes() - flushes, 1);
                prop_assert_eq!(self.live_iovas(), live + 1);
                prop_assert!(!s.needs_sync());
                model.base = s.iova().0;
                model.dirty = false;
                prop_assert_eq!(s.links(), &model.links[..]);
                prop_assert_eq!(s.dma_addr(head), Ok(Iova(model.base + head)));
                self.states.push((s, model));
            }
            Err(e) => {
                self.cov.hit(format!("map_sg {e:?}"));
                prop_assert!(
                    errs.contains(&e),
                    "map_sg({pieces:x?}) = {e:?}, expected one of {errs:?}"
                );
                prop_assert_eq!(self.live_iovas(), live);
            }
        }
        Ok(())
    }

    fn unmap(&mut self, i: usize, fail: bool, by_drop: bool) -> Result<(), TestCaseError> {
        if by_drop {
            let fail = fail
                && !self.states.iter().any(|(s, _)| s.needs_sync())
                && self
                    .maps
                    .iter()
                    .enumerate()
                    .all(|(k, (_, m))| k == i || !m.dirty);
            let (mp, m) = self.maps.remove(i);
            // A mapping always has work: its link, or the unlink of a failed unmap.
            return self.dropped(fail, true, m, move || drop(mp));
        }
        let (mp, mut m) = self.maps.remove(i);
        let addr = mp.addr();
        let (flushes, live) = (self.flushes(), self.live_iovas());
        self.fail_next_flush(fail);
        let r = self.mapper.unmap(mp);
        self.fail_next_flush(false);
        prop_assert_eq!(self.flushes() - flushes, 1);
        match r {
            Ok(()) => {
                self.cov.hit("unmap ok");
                prop_assert!(!fail);
                prop_assert_eq!(self.live_iovas(), live - 1);
            }
            Err(Returned { error, state }) => {
                self.cov.hit(format!("unmap {error:?}"));
                prop_assert!(fail);
                prop_assert_eq!(error, Error::Timeout);
                prop_assert_eq!(state.addr(), addr);
                prop_assert_eq!(self.live_iovas(), live);
                m.remove_all(&self.geo);
                self.maps.insert(i, (state, m));
            }
        }
        Ok(())
    }

    /// What the device may see at `page`: its current translation, and stale
    /// ones the IOTLB may still hold.
    fn expect(&self, page: u64) -> (Option<Translated>, Vec<Translated>) {
        for m in self.models() {
            if m.contains(page) {
                let old = m.pending.get(&page).cloned().unwrap_or_default();
                return (m.translation(page, &self.geo), old);
            }
        }
        (None, Vec::new())
    }

    fn probe(&mut self, iova: u64) -> Result<(), TestCaseError> {
        let page = iova & !(G - 1);
        let (cur, old) = self.expect(page);
        let mut cached = false;
        for access in [Access::Read, Access::Write] {
            let need = match access {
                Access::Read => Prot::READ,
                Access::Write => Prot::WRITE,
            };
            let got = self.domain.device_access(Iova(iova), access);
            let matches = |&(pa, prot): &(u64, Prot)| match got {
                Ok(p) => prot.contains(need) && p.0 == pa + (iova - page),
                Err(Fault::Permission(at, a)) => {
                    at.0 == iova && a == access && !prot.contains(need)
                }
                Err(Fault::Translation(_)) => false,
            };
            let fault_ok = cur.is_none() && got == Err(Fault::Translation(Iova(iova)));
            let is_cur = cur.iter().any(matches);
            let is_old = old.iter().any(matches);
            prop_assert!(
                fault_ok || is_cur || is_old,
                "device {:?} at {:#x}: {:?}, expected {:?} or stale {:?}",
                access,
                iova,
                got,
                cur,
                old
            );
            if !is_cur && is_old {
                self.cov.hit("stale translation seen before sync");
            }
            cached = !matches!(got, Err(Fault::Translation(_)));
        }
        if cached {
            self.probed.insert(page);
        } else {
            self.probed.remove(&page);
        }
        Ok(())
    }

    fn check_all(&mut self) -> Result<(), TestCaseError> {
        // The states' own view.
        for (s, m) in &self.states {
            prop_assert_eq!(s.links(), &m.links[..]);
            prop_assert_eq!(s.iova().0, m.base);
            prop_assert_eq!(s.size(), m.size);
            prop_assert_eq!(s.range().len(), m.range_len);
            prop_assert!(!m.dirty || s.needs_sync());
            prop_assert_eq!(s.dma_addr(m.size - 1), Ok(Iova(m.base + m.size - 1)));
            prop_assert_eq!(s.dma_addr(m.size), Err(Error::OutOfRange));
        }
        // IOVA ranges: disjoint, in the aperture, all held by the allocator.
        let mut ranges: Vec<(u64, u64)> = self
            .models()
            .map(|m| (m.base, m.base + m.range_len))
            .collect();
        ranges.sort_unstable();
        for w in ranges.windows(2) {
            prop_assert!(w[0].1 <= w[1].0, "IOVA ranges overlap: {:x?}", w);
        }
        for &(s, e) in &ranges {
            prop_assert!(s >= APERTURE_START && e <= APERTURE_START + APERTURE_LEN);
        }
        prop_assert_eq!(self.live_iovas(), ranges.len() as u64);

        // The tables hold exactly the model's leaves.
        let mut want = Vec::new();
        for m in self.models() {
            for l in &m.links {
                self.geo.leaves_of(m.base, l, &mut want);
            }
        }
        want.sort_unstable_by_key(|l| l.iova);
        let got = self.domain.leaves();
        if got != want {
            let gs: BTreeSet<_> = got
                .iter()
                .map(|l| (l.iova, l.pa, l.size, l.prot.bits()))
                .collect();
            let ws: BTreeSet<_> = want
                .iter()
                .map(|l| (l.iova, l.pa, l.size, l.prot.bits()))
                .collect();
            let extra: Vec<_> = gs.difference(&ws).take(4).collect();
            let missing: Vec<_> = ws.difference(&gs).take(4).collect();
            prop_assert!(
                false,
                "tables differ from the model: unexpected {:x?}, missing {:x?}",
                extra,
                missing
            );
        }
        if got.iter().any(|l| l.size == M2) {
            self.cov.hit("2 MiB block in the tables");
        }

        // The device: every page that may be cached, each link's first and last
        // byte and one inside, the pages around it, a few random pages.
        let mut targets: Vec<u64> = Vec::new();
        let probed: Vec<u64> = self.probed.iter().copied().collect();
        for p in probed {
            let r = self.rand();
            targets.push(p + r % G);
        }
        let mut link_targets = Vec::new();
        for m in self.models() {
            for l in &m.links {
                let (s, e) = span(l);
                link_targets.push((m.base, l.offset, l.len, s, e));
            }
            for (&p, _) in m.pending.iter().take(4) {
                targets.push(p);
            }
        }
        for (base, off, len, s, e) in link_targets {
            let r = self.rand();
            targets.extend([
                base + off,
                base + off + len - 1,
                base + off + r % len,
                (base + s).wrapping_sub(1),
                base + e,
            ]);
        }
        for _ in 0..2 {
            let r = self.rand();
            targets.push(APERTURE_START + r % APERTURE_LEN);
        }
        for t in targets {
            self.probe(t)?;
        }

        // Frames: none freed twice; when no gather holds freed tables, the live
        // frames are exactly the reachable tables (and the leaked ones).
        prop_assert_eq!(self.frames.bad_frees(), 0);
        if !self.others_dirty(None) {
            prop_assert_eq!(
                self.frames.live(),
                self.domain.tables() + self.leaked_frames,
                "page-table frames leaked"
            );
        }
        Ok(())
    }

    fn teardown(&mut self) -> Result<(), TestCaseError> {
        while let Some((s, _)) = self.states.pop() {
            prop_assert!(s.destroy().is_ok());
        }
        while let Some((mp, _)) = self.maps.pop() {
            prop_assert!(self.mapper.unmap(mp).is_ok());
        }
        self.check_all()?;
        prop_assert!(self.domain.leaves().is_empty());
        prop_assert_eq!(self.live_iovas(), self.leaked.len() as u64);
        Ok(())
    }
}

pub fn run_case<F: PtFormat + Copy + 'static>(
    fmt: F,
    seed: u64,
    ops: &[Op],
    cov: &Coverage,
) -> Result<(), TestCaseError> {
    // The tables of a 256 MiB aperture fit in a few MiB; a small arena keeps
    // cases cheap under a sanitizer, which zeroes it all.
    let (domain, frames) = fake_domain_in(fmt, FakeFrames::with_capacity(16 << 20));
    let aperture = IovaRange::new(Iova(APERTURE_START), APERTURE_LEN).unwrap();
    let iovas = IovaAllocator::with_capacity(
        IovaAllocatorConfig::new(aperture, G),
        extent_slots_needed(2 * MAX_HANDLES, 0, 1),
        1,
    )
    .unwrap();
    let leaked_frames = {
        let mapper = DmaMapper::new(&domain, &iovas, &CPU0).unwrap();
        let mut h = Harness {
            geo: Geo::new(fmt),
            domain: &domain,
            frames: &frames,
            iovas: &iovas,
            mapper,
            states: Vec::new(),
            maps: Vec::new(),
            leaked: Vec::new(),
            leaked_frames: 0,
            probed: BTreeSet::new(),
            rng: seed | 1,
            cov,
        };
        for op in ops {
            h.step(op)?;
        }
        h.teardown()?;
        h.leaked_frames
    };
    drop(iovas);
    drop(domain);
    prop_assert_eq!(frames.live(), leaked_frames, "frames left after the domain");
    prop_assert_eq!(frames.bad_frees(), 0);
    Ok(())
}

/// Fuzz input read as a stream of numbers; reading past the end gives zeros,
/// so every input decodes.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }

    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |v, i| v | u64::from(self.u8()) << (8 * i))
    }

    /// `true` with probability about `percent` / 100.
    fn chance(&mut self, percent: u32) -> bool {
        u32::from(self.u8()) * 100 < percent * 256
    }

    fn below(&mut self, n: u64) -> u64 {
        self.u64() % n
    }

    fn pick<T: Copy>(&mut self, choices: &[T]) -> T {
        choices[usize::from(self.u8()) % choices.len()]
    }

    /// An index chosen by `weights`.
    fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u32 = weights.iter().sum();
        let mut x = u32::from(self.u8()) % total;
        weights
            .iter()
            .position(|&w| {
                let hit = x < w;
                x = x.saturating_sub(w);
                hit
            })
            .unwrap_or(0)
    }

    fn prot(&mut self) -> Prot {
        if self.chance(80) {
            self.pick(&[
                Prot::READ,
                Prot::WRITE,
                Prot::RW,
                Prot::RW | Prot::PRIV,
                Prot::READ | Prot::NOEXEC,
                Prot::RW | Prot::CACHE,
                Prot::READ | Prot::MMIO,
            ])
        } else {
            Prot::from_bits_truncate(self.u8() % 64)
        }
    }

    fn size(&mut self) -> u64 {
        match self.weighted(&[3, 3, 3, 3, 1]) {
            0 => 1 + self.below(0x1_0000),
            1 => (1 + self.below(64)) * G,
            2 => self.pick(&[M2, 2 * M2, M2 + G, 2 * M2 - G, 3 * M2 / 2]),
            3 => 1 + self.below(2 * M2),
            _ => 0,
        }
    }

    fn st(&mut self) -> usize {
        usize::from(self.u8() % 8)
    }

    /// One operation, with the shapes and weights of the property test's
    /// generator (`op_strategy` in `tests/model.rs`), so that the fuzzer
    /// starts where the properties are interesting and goes wherever the
    /// bytes take it.
    fn op(&mut self) -> Op {
        match self.weighted(&[4, 10, 2, 5, 1, 5, 1, 2, 1, 1, 1, 2]) {
            0 => Op::Alloc {
                size: self.size(),
                align: if self.chance(90) {
                    self.pick(&[G, 0x1_0000, M2])
                } else {
                    self.pick(&[0, 1, 3, 0x3000])
                },
            },
            1 => Op::Link {
                st: self.st(),
                off: (self.u8() % 12, self.u64()),
                len: (self.u8() % 10, self.u64()),
                pa: (self.u8() % 8, self.u64(), self.u64()),
                prot: self.prot(),
                oom: self.chance(15).then(|| self.u8() % 3),
            },
            2 => Op::LinkMany {
                st: self.st(),
                count: 1 + self.u8() % 13,
                stride: 1 + self.u8() % 3,
                first: self.u64(),
                pa: self.u64(),
            },
            3 => Op::Unlink {
                st: self.st(),
                how: self.u8() % 8,
                a: self.u64(),
                b: self.u64(),
            },
            4 => Op::UnlinkEach {
                st: self.st(),
                rev: self.chance(50),
            },
            5 => Op::Sync {
                st: self.st(),
                fail: self.chance(20),
            },
            6 => Op::Destroy {
                st: self.st(),
                fail: self.chance(30),
            },
            7 => Op::Free {
                st: self.st(),
                fail: self.chance(30),
            },
            8 => Op::Drop {
                st: self.st(),
                fail: self.chance(20),
            },
            9 => Op::MapOne {
                pa: match self.weighted(&[4, 1, 1]) {
                    0 => PA_BASE + self.below(1 << 32),
                    1 => (1 << 48) - self.below(0x10_0000),
                    _ => u64::MAX - self.below(0x10_0000),
                },
                len: match self.weighted(&[4, 1, 1]) {
                    0 => 1 + self.below(3 * M2),
                    1 => 0,
                    _ => u64::MAX - self.below(G),
                },
                prot: self.prot(),
            },
            10 => {
                let n = 1 + usize::from(self.u8() % 4);
                let mut pieces: Vec<(u64, u64)> = (0..n)
                    .map(|_| {
                        if self.chance(85) {
                            (PA_BASE + self.below(1 << 24) * G, (1 + self.below(64)) * G)
                        } else {
                            (self.u64(), self.below(0x2_0001))
                        }
                    })
                    .collect();
                // A first piece that may start, and a last that may end, inside a granule.
                let (head, tail) = (self.below(G), self.below(G));
                pieces[0].0 = pieces[0].0.wrapping_add(head);
                pieces[0].1 = pieces[0].1.saturating_sub(head).max(1);
                let last = pieces.len() - 1;
                pieces[last].1 = pieces[last].1.saturating_sub(tail).max(1);
                Op::MapSg {
                    pieces,
                    prot: self.prot(),
                }
            }
            _ => Op::Unmap {
                m: self.st(),
                fail: self.chance(20),
                by_drop: self.chance(50),
            },
        }
    }
}

/// Decodes fuzz input into a case for [`run_case`]: an 8-byte seed, then up
/// to 64 operations (as many as the bytes describe).
pub fn decode_ops(data: &[u8]) -> (u64, Vec<Op>) {
    let mut bytes = Bytes(data);
    let seed = bytes.u64();
    let mut ops = Vec::new();
    while !bytes.0.is_empty() && ops.len() < 64 {
        ops.push(bytes.op());
    }
    (seed, ops)
}

//! A model check for any [`IommuDomain`]: several IOVA states on adjacent
//! IOVAs, linked to physically contiguous memory, interleaved at random.
//!
//! A domain is free to batch, merge or cache what it is asked to map, but
//! whatever it does, each state's links must come and go on their own: every
//! exact link can be unlinked, `destroy` never fails because of another
//! state, and nothing stays reachable once every state is gone. Adjacent
//! states whose memory continues each other are where a domain that merges
//! across calls gets this wrong, so the check makes them the common case.
//!
//! After every step the device (the caller's closure, usually its fake
//! unit's translation) must translate each synced link to its memory and
//! nothing where no link is; a link or unlink that has not been synced may
//! still go either way, but never elsewhere.

use std::vec::Vec;

use crate::addr::{Iova, IovaRange, PhysAddr};
use crate::dma::{DmaMapper, IovaState, Link};
use crate::domain::IommuDomain;
use crate::error::Error;
use crate::iova_alloc::{IovaAllocError, IovaAllocator, IovaAllocatorConfig};
use crate::prot::Prot;

/// What to run: `seed` picks the sequence, `steps` its length.
#[derive(Clone, Copy, Debug)]
pub struct AdjacentStates {
    /// The IOVAs the states come from, a multiple of the domain's granule
    /// long; every page of it is checked after every step.
    pub window: IovaRange,
    /// The memory behind `window.start`: page `i` of the window links to
    /// `pa_base + i` granules (and now and then somewhere else, so that not
    /// every neighbour continues its memory).
    pub pa_base: PhysAddr,
    /// Seed of the sequence (any value).
    pub seed: u64,
    /// Operations to run.
    pub steps: u32,
}

/// What a page of the window should look like to the device.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Page {
    /// No link, or an unlink that has been synced: must not translate.
    Gone,
    /// Linked and synced: must translate to this.
    Live(PhysAddr),
    /// Linked or unlinked since its state's last sync: nothing, or any memory
    /// it was linked to since then (an unsynced unlink leaves the old
    /// translation usable); the last is the current link's, if linked.
    Pending(Vec<PhysAddr>),
}

const MAX_STATES: usize = 6;
const MAX_LINKS: usize = 8;

type Links = heapless::Vec<Link, MAX_LINKS>;

struct Model {
    g: u64,
    start: u64,
    pages: Vec<Page>,
}

impl Model {
    fn page(&self, iova: u64) -> usize {
        ((iova - self.start) / self.g) as usize
    }
    fn set(&mut self, iova: u64, len: u64, f: impl Fn(&mut Page, u64)) {
        let first = self.page(iova);
        for i in 0..(len / self.g) as usize {
            f(&mut self.pages[first + i], i as u64 * self.g);
        }
    }
}

/// Runs the check, panicking with the seed and step of the first mismatch.
///
/// `device(iova)` is what the device reaches when it reads `iova` now, or
/// `None` if the access faults. The domain must be empty in `window` at the
/// start; it is empty there again at the end, and every state's IOVAs are
/// back in the check's allocator, in one free extent.
///
/// # Panics
///
/// On any mismatch, or if the sequence never made two states' synced links
/// meet at a boundary with contiguous memory (the case the check is for).
pub fn check_adjacent_states<D: IommuDomain>(
    domain: &D,
    run: AdjacentStates,
    device: &dyn Fn(Iova) -> Option<PhysAddr>,
) {
    let g = domain.granule();
    let AdjacentStates {
        window,
        pa_base,
        seed,
        steps,
    } = run;
    let n_pages = window.len() / g;
    assert!(
        window.len() % g == 0 && n_pages >= 8,
        "window of at least 8 granules"
    );
    // No per-CPU caches (CPU index 1 of 1 takes the shared path), so states
    // come out packed and adjacent.
    let iovas = IovaAllocator::with_capacity(IovaAllocatorConfig::new(window, g), 64, 1)
        .expect("allocator");
    let cpu = || 1usize;
    let mapper = DmaMapper::new(domain, &iovas, &cpu).expect("mapper");
    let mut model = Model {
        g,
        start: window.start.0,
        pages: std::vec![Page::Gone; n_pages as usize],
    };
    let mut states: Vec<IovaState<'_, D, Links>> = Vec::new();
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    // Every sequence starts with the case the check is for: two states of
    // one page each, adjacent, linked to contiguous memory and synced.
    for i in 0..2u64 {
        let mut s = mapper
            .try_alloc_with(g, g, Links::new())
            .expect("prologue: try_alloc");
        let pa = PhysAddr(pa_base.0 + (s.iova().0 - window.start.0));
        s.link(0, pa, g, Prot::RW).expect("prologue: link");
        model.set(s.iova().0, g, |p, _| *p = Page::Pending(std::vec![pa]));
        states.push(s);
        assert_eq!(
            states[i as usize].iova().0,
            window.start.0 + i * g,
            "prologue: packed"
        );
    }
    for s in &mut states {
        s.sync().expect("prologue: sync");
        synced(&mut model, s);
    }
    let mut met = meetings(&model, &states);
    check(&model, device, &std::format!("seed {seed}: prologue"));
    for step in 0..steps {
        let at = |what: &str| std::format!("seed {seed} step {step}: {what}");
        match rnd(20) {
            // A new state of 1, 2 or 4 granules (sizes the allocator does
            // not round up, so states pack without gaps).
            0..=3 if states.len() < MAX_STATES => {
                let size = (1 << rnd(3)) * g;
                match mapper.try_alloc_with(size, g, Links::new()) {
                    Ok(s) => states.push(s),
                    Err(Error::Iova(IovaAllocError::NoSpace)) => {}
                    Err(e) => panic!("{}", at(&std::format!("try_alloc: {e:?}"))),
                }
            }
            // Link granules of a state, usually to the memory behind the
            // window (so neighbours, in this state or the next, continue it).
            4..=10 if !states.is_empty() => {
                let pick = rnd(states.len() as u64) as usize;
                let s = &mut states[pick];
                let pages = s.range().len() / g;
                // Half the time the whole state, so that links reach its ends.
                let (first, count) = if rnd(2) == 0 {
                    (0, pages)
                } else {
                    let first = rnd(pages);
                    (first, 1 + rnd(pages - first))
                };
                let (offset, len) = (first * g, count * g);
                let iova = s.iova().0 + offset;
                let pa = if rnd(5) == 0 {
                    PhysAddr(pa_base.0 + (n_pages + 16 + rnd(64)) * g)
                } else {
                    PhysAddr(pa_base.0 + (iova - window.start.0))
                };
                let prot = if rnd(6) == 0 { Prot::READ } else { Prot::RW };
                let taken = s
                    .links()
                    .iter()
                    .any(|l| l.offset < offset + len && offset < l.offset + l.len);
                let r = s.link(offset, pa, len, prot);
                if taken {
                    assert_eq!(r, Err(Error::AlreadyMapped), "{}", at("overlapping link"));
                } else {
                    assert_eq!(r, Ok(()), "{}", at("link"));
                    model.set(iova, len, |p, off| {
                        let now = PhysAddr(pa.0 + off);
                        match p {
                            Page::Pending(seen) => seen.push(now),
                            _ => *p = Page::Pending(std::vec![now]),
                        }
                    });
                }
            }
            // Unlink one link, or a run of adjacent ones: always allowed.
            11..=13 if states.iter().any(|s| s.is_linked()) => {
                let linked: Vec<usize> = (0..states.len())
                    .filter(|&i| states[i].is_linked())
                    .collect();
                let s = &mut states[linked[rnd(linked.len() as u64) as usize]];
                let links = s.links();
                let i = rnd(links.len() as u64) as usize;
                let mut j = i + 1;
                while j < links.len()
                    && links[j].offset == links[j - 1].offset + links[j - 1].len
                    && rnd(2) == 0
                {
                    j += 1;
                }
                let (offset, end) = (links[i].offset, links[j - 1].offset + links[j - 1].len);
                if links[j - 1].len > g && rnd(4) == 0 {
                    // Cutting a link is refused and changes nothing.
                    let before: Links = Links::from_slice(s.links()).unwrap();
                    assert_eq!(
                        s.unlink(offset, end - offset - g),
                        Err(Error::PartialUnmap),
                        "{}",
                        at("cut")
                    );
                    assert_eq!(
                        s.links(),
                        &before[..],
                        "{}",
                        at("a refused unlink changed the links")
                    );
                } else {
                    assert_eq!(s.unlink(offset, end - offset), Ok(()), "{}", at("unlink"));
                    let iova = s.iova().0 + offset;
                    model.set(iova, end - offset, |p, _| match p {
                        Page::Live(pa) => *p = Page::Pending(std::vec![*pa]),
                        Page::Pending(_) => {}
                        Page::Gone => panic!("unlinked a page the model has as gone"),
                    });
                }
            }
            // Sync a state.
            14..=17 if !states.is_empty() => {
                let pick = rnd(states.len() as u64) as usize;
                let s = &mut states[pick];
                assert_eq!(s.sync(), Ok(()), "{}", at("sync"));
                synced(&mut model, s);
            }
            // Destroy a state: never fails, whatever its neighbours hold.
            18 | 19 if !states.is_empty() => {
                let s = states.swap_remove(rnd(states.len() as u64) as usize);
                let r = s.range();
                if let Err(e) = s.destroy() {
                    panic!("{}", at(&std::format!("destroy: {:?}", e.error)));
                }
                model.set(r.start.0, r.len(), |p, _| *p = Page::Gone);
            }
            _ => continue,
        }
        met += meetings(&model, &states);
        check(&model, device, &at("device view"));
    }
    assert!(
        met > 0,
        "seed {seed}: no two states' synced links ever met with contiguous memory"
    );
    for s in states.drain(..) {
        let r = s.range();
        if let Err(e) = s.destroy() {
            panic!("seed {seed} final destroy: {:?}", e.error);
        }
        model.set(r.start.0, r.len(), |p, _| *p = Page::Gone);
    }
    check(
        &model,
        device,
        &std::format!("seed {seed}: after every state was destroyed"),
    );
    iovas.flush_caches();
    let st = iovas.stats();
    assert!(
        st.live_allocations == 0 && st.free_extents == 1 && st.free_bytes == window.len(),
        "seed {seed}: IOVAs leaked: {st:?}"
    );
}

/// A state's sync succeeded: its linked pages are live, the rest gone.
fn synced<D: IommuDomain>(model: &mut Model, s: &IovaState<'_, D, Links>) {
    let r = s.range();
    for iova in (r.start.0..r.end.0).step_by(model.g as usize) {
        let off = iova - r.start.0;
        let link = s
            .links()
            .iter()
            .find(|l| l.offset <= off && off < l.offset + l.len);
        let i = model.page(iova);
        model.pages[i] = match link {
            Some(l) => Page::Live(PhysAddr(l.pa.0 + (off - l.offset))),
            None => Page::Gone,
        };
    }
}

/// How many state boundaries have synced links on both sides whose memory
/// continues across it.
fn meetings<D: IommuDomain>(model: &Model, states: &[IovaState<'_, D, Links>]) -> u32 {
    let mut n = 0;
    for s in states {
        let end = s.range().end.0;
        if end == model.start + model.pages.len() as u64 * model.g {
            continue;
        }
        let a = &model.pages[model.page(end - model.g)];
        let b = &model.pages[model.page(end)];
        let next_is_state = states.iter().any(|t| t.iova().0 == end);
        if let (Page::Live(pa), Page::Live(pb), true) = (a, b, next_is_state) {
            if pa.0 + model.g == pb.0 {
                n += 1;
            }
        }
    }
    n
}

fn check(model: &Model, device: &dyn Fn(Iova) -> Option<PhysAddr>, what: &str) {
    for (i, page) in model.pages.iter().enumerate() {
        let iova = Iova(model.start + i as u64 * model.g);
        let got = device(iova);
        let ok = match page {
            Page::Gone => got.is_none(),
            Page::Live(pa) => got == Some(*pa),
            Page::Pending(seen) => got.is_none_or(|pa| seen.contains(&pa)),
        };
        assert!(
            ok,
            "{what}: page {i} (IOVA {:#x}) should be {page:?}, the device reaches {got:x?}",
            iova.0
        );
    }
}

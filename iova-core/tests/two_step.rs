//! The two-step API: every error path, the flush count, cache maintenance, teardown.
#![cfg(feature = "fakes")]

use std::sync::Mutex;

use iova_core::fakes::{Access, FakeDomain, Fault, fake_domain};
use iova_core::formats::lpae::LpaeS1;
use iova_core::iova_alloc::{IovaAllocator, IovaAllocatorConfig};
use iova_core::{CacheMaintenance, DmaMapper, Error, Iova, IovaRange, PhysAddr, Prot};

const K4: u64 = 0x1000;
const M2: u64 = 0x20_0000;

struct Env {
    domain: FakeDomain<LpaeS1>,
    iovas: IovaAllocator<'static>,
}

fn env() -> Env {
    let (domain, _) = fake_domain(LpaeS1::va48());
    let aperture = IovaRange::new(Iova(0x1_0000_0000), 0x10_0000_0000).unwrap();
    let iovas =
        IovaAllocator::with_capacity(IovaAllocatorConfig::new(aperture, K4), 256, 2).unwrap();
    Env { domain, iovas }
}

static CPU0: fn() -> usize = || 0;

impl Env {
    fn mapper(&self) -> DmaMapper<'_, FakeDomain<LpaeS1>> {
        DmaMapper::new(&self.domain, &self.iovas, &CPU0).unwrap()
    }
    fn read(&self, iova: Iova) -> Result<PhysAddr, Fault> {
        self.domain.device_access(iova, Access::Read)
    }
    fn flushes(&self) -> usize {
        self.domain.invalidator().flushes()
    }
}

#[test]
fn sync_is_exactly_one_flush_for_many_links() {
    let env = env();
    let m = env.mapper();
    let mut s = m.try_alloc(64 * K4, K4).unwrap();
    for i in 0..64 {
        s.link(i * K4, PhysAddr(0x8000_0000 + i * 3 * K4), K4, Prot::RW)
            .unwrap();
    }
    assert_eq!(env.flushes(), 0, "link does no IOTLB work");
    s.sync().unwrap();
    assert_eq!(env.flushes(), 1);
    for i in 0..64 {
        let iova = s.dma_addr(i * K4 + 8).unwrap();
        assert_eq!(env.read(iova), Ok(PhysAddr(0x8000_0000 + i * 3 * K4 + 8)));
    }
    s.sync().unwrap();
    assert_eq!(env.flushes(), 1, "nothing pending, no flush");
    s.unlink(0, 64 * K4).unwrap();
    s.sync().unwrap();
    assert_eq!(env.flushes(), 2);
    assert!(env.domain.leaves().is_empty());
    s.free().unwrap();
}

#[test]
fn unlinked_translations_last_until_the_sync() {
    let env = env();
    let m = env.mapper();
    let mut s = m.try_alloc(2 * K4, K4).unwrap();
    s.link(0, PhysAddr(0x9000_0000), 2 * K4, Prot::RW).unwrap();
    s.sync().unwrap();
    let iova = s.dma_addr(K4).unwrap();
    assert_eq!(env.read(iova), Ok(PhysAddr(0x9000_1000)));
    s.unlink(0, 2 * K4).unwrap();
    assert!(s.needs_sync());
    assert_eq!(
        env.read(iova),
        Ok(PhysAddr(0x9000_1000)),
        "stale until the flush"
    );
    s.sync().unwrap();
    assert_eq!(env.read(iova), Err(Fault::Translation(iova)));
    s.free().unwrap();
}

#[test]
fn link_errors_change_nothing() {
    let env = env();
    let m = env.mapper();
    let mut s = m.try_alloc(8 * K4, K4).unwrap();
    s.link(2 * K4, PhysAddr(0xa000_2000), 2 * K4, Prot::RW)
        .unwrap();
    let before = (s.links().to_vec(), env.domain.leaves());
    let cases: &[(u64, u64, u64, Prot, Error)] = &[
        (0, 0x1000, 0, Prot::RW, Error::ZeroLength),
        (8 * K4, 0x1000, K4, Prot::RW, Error::OutOfRange),
        (7 * K4, 0x1000, 2 * K4, Prot::RW, Error::OutOfRange),
        (u64::MAX - 10, 0x1000, 100, Prot::RW, Error::Overflow),
        (0, u64::MAX - 10, 100, Prot::RW, Error::Overflow),
        (0, 0x1000, K4, Prot::empty(), Error::InvalidProt),
        // offset and pa differ inside the granule
        (0x10, 0x20, 0x100, Prot::RW, Error::Misaligned),
        // overlaps the existing link, exactly and partly
        (2 * K4, 0x1000, K4, Prot::RW, Error::AlreadyMapped),
        (K4, 0x1000, 2 * K4, Prot::RW, Error::AlreadyMapped),
        (3 * K4 + 0x800, 0x800, 0x100, Prot::RW, Error::AlreadyMapped),
        // starts inside a granule but is not the lowest link
        (4 * K4 + 0x10, 0x10, K4, Prot::RW, Error::Misaligned),
        // ends inside a granule but is not the highest link
        (0, 0, 0x800, Prot::RW, Error::Misaligned),
    ];
    for &(off, pa, len, prot, err) in cases {
        assert_eq!(
            s.link(off, PhysAddr(pa), len, prot),
            Err(err),
            "{off:#x} {pa:#x} {len:#x}"
        );
        assert_eq!((s.links().to_vec(), env.domain.leaves()), before);
    }
    // The lowest link may start, and the highest may end, inside a granule.
    s.link(0x10, PhysAddr(0xb000_0010), 2 * K4 - 0x10, Prot::RW)
        .unwrap();
    s.link(4 * K4, PhysAddr(0xc000_0000), K4 + 0x20, Prot::RW)
        .unwrap();
    // Nothing may go above a link that ends inside a granule, or below one that
    // starts inside one.
    assert_eq!(
        s.link(6 * K4, PhysAddr(0xd000_0000), K4, Prot::RW),
        Err(Error::Misaligned)
    );
    s.sync().unwrap();
    let first = s.dma_addr(0x10).unwrap();
    assert_eq!(env.read(first), Ok(PhysAddr(0xb000_0010)));
    assert_eq!(
        env.read(s.dma_addr(5 * K4 + 0x1f).unwrap()),
        Ok(PhysAddr(0xc000_101f))
    );
    s.destroy().unwrap();
}

#[test]
fn a_failed_link_leaves_nothing_of_that_call_mapped() {
    let (domain, frames) = fake_domain(LpaeS1::va48());
    let aperture = IovaRange::new(Iova(0x1_0000_0000), 0x1_0000_0000).unwrap();
    let iovas =
        IovaAllocator::with_capacity(IovaAllocatorConfig::new(aperture, K4), 64, 1).unwrap();
    let m = DmaMapper::new(&domain, &iovas, &CPU0).unwrap();
    // Crosses a 2 MiB boundary: needs two level-3 tables.
    let mut s = m.try_alloc(4 * M2, M2).unwrap();
    frames.fail_after(3);
    assert_eq!(
        s.link(M2 - K4, PhysAddr(0x8000_0000 - K4), 2 * K4, Prot::RW),
        Err(Error::NoMemory)
    );
    assert!(s.links().is_empty());
    assert!(domain.leaves().is_empty());
    frames.unlimited();
    s.link(M2 - K4, PhysAddr(0x8000_0000 - K4), 2 * K4, Prot::RW)
        .unwrap();
    s.sync().unwrap();
    assert_eq!(domain.leaves().len(), 2);
    s.destroy().unwrap();
    assert!(domain.leaves().is_empty());
}

#[test]
fn unlink_errors_change_nothing() {
    let env = env();
    let m = env.mapper();
    let mut s = m.try_alloc(8 * K4, K4).unwrap();
    s.link(0, PhysAddr(0x1000_0000), 2 * K4, Prot::RW).unwrap();
    s.link(2 * K4, PhysAddr(0x2000_0000), K4, Prot::RW).unwrap();
    s.link(5 * K4, PhysAddr(0x3000_0000), K4, Prot::RW).unwrap();
    s.sync().unwrap();
    let before = (s.links().to_vec(), env.domain.leaves());
    let cases: &[(u64, u64, Error)] = &[
        (0, 0, Error::ZeroLength),
        (u64::MAX, 2, Error::Overflow),
        (7 * K4, 2 * K4, Error::OutOfRange),
        (3 * K4, K4, Error::NotMapped),
        // covers links and a hole between them
        (0, 6 * K4, Error::NotMapped),
        // half of a link
        (0, K4, Error::PartialUnmap),
        (K4, 2 * K4, Error::PartialUnmap),
        (0, 2 * K4 + 0x10, Error::PartialUnmap),
        // starts inside a link
        (0x10, 3 * K4 - 0x10, Error::PartialUnmap),
        // runs past the last link
        (5 * K4, 2 * K4, Error::NotMapped),
        // a link, then a cut one after a hole
        (2 * K4, 3 * K4 + 0x10, Error::NotMapped),
    ];
    for &(off, len, err) in cases {
        assert_eq!(s.unlink(off, len), Err(err), "{off:#x} {len:#x}");
        assert_eq!((s.links().to_vec(), env.domain.leaves()), before);
    }
    assert!(!s.needs_sync());
    // Two adjacent links in one call.
    s.unlink(0, 3 * K4).unwrap();
    assert_eq!(s.links().len(), 1);
    s.destroy().unwrap();
}

#[test]
fn free_while_linked_is_refused_and_returns_the_state() {
    let env = env();
    let m = env.mapper();
    let mut s = m.try_alloc(K4, K4).unwrap();
    s.link(0, PhysAddr(0x5000), K4, Prot::READ).unwrap();
    s.sync().unwrap();
    let r = s.free().unwrap_err();
    assert_eq!(r.error, Error::StillLinked);
    let mut s = r.state;
    assert_eq!(env.read(s.dma_addr(0).unwrap()), Ok(PhysAddr(0x5000)));
    s.unlink(0, K4).unwrap();
    // free flushes the pending unlink before the IOVA can be handed out again.
    let flushes = env.flushes();
    s.free().unwrap();
    assert_eq!(env.flushes(), flushes + 1);
    assert_eq!(env.iovas.stats().live_allocations, 0);
}

#[test]
fn try_alloc_errors() {
    let env = env();
    let m = env.mapper();
    assert_eq!(m.try_alloc(0, K4).unwrap_err(), Error::ZeroLength);
    assert_eq!(m.try_alloc(K4, 3 * K4).unwrap_err(), Error::Misaligned);
    assert!(matches!(
        m.try_alloc(u64::MAX, K4).unwrap_err(),
        Error::Overflow | Error::Iova(_)
    ));
    assert!(matches!(
        m.try_alloc(0x100_0000_0000, K4).unwrap_err(),
        Error::Iova(_)
    ));
    // Alignment is honoured, up to 1 GiB.
    for align in [K4, 0x1_0000, M2, 0x4000_0000] {
        let s = m.try_alloc(K4, align).unwrap();
        assert!(s.iova().is_aligned(align), "{:?} {align:#x}", s.iova());
        s.free().unwrap();
    }
}

#[test]
fn flush_failures_keep_the_work_and_the_iova() {
    let env = env();
    let m = env.mapper();
    let mut s = m.try_alloc(K4, K4).unwrap();
    s.link(0, PhysAddr(0x7000), K4, Prot::RW).unwrap();
    env.domain.invalidator().fail_next_flushes(1);
    assert_eq!(s.sync(), Err(Error::Timeout));
    assert!(s.needs_sync());
    s.sync().unwrap();
    s.unlink(0, K4).unwrap();
    env.domain.invalidator().fail_next_flushes(1);
    let r = s.free().unwrap_err();
    assert_eq!(r.error, Error::Timeout);
    assert_eq!(env.iovas.stats().live_allocations, 1, "not freed unflushed");
    r.state.free().unwrap();
    assert_eq!(env.iovas.stats().live_allocations, 0);
}

#[test]
fn destroy_unlinks_everything_and_frees() {
    let env = env();
    let m = env.mapper();
    let mut s = m.try_alloc(4 * M2, M2).unwrap();
    s.link(0, PhysAddr(0x4000_0000), M2, Prot::RW).unwrap();
    s.link(M2, PhysAddr(0x8000_0000), K4, Prot::RW).unwrap();
    s.link(3 * M2, PhysAddr(0xc000_0000), M2, Prot::READ)
        .unwrap();
    s.sync().unwrap();
    let probe = s.dma_addr(3 * M2 + 5).unwrap();
    assert_eq!(env.read(probe), Ok(PhysAddr(0xc000_0005)));
    let flushes = env.flushes();
    s.destroy().unwrap();
    assert_eq!(env.flushes(), flushes + 1, "destroy flushes once");
    assert!(env.domain.leaves().is_empty());
    assert_eq!(env.read(probe), Err(Fault::Translation(probe)));
    assert_eq!(env.iovas.stats().live_allocations, 0);
}

#[test]
fn dropping_a_state_destroys_it() {
    let env = env();
    let m = env.mapper();
    let probe;
    {
        let mut s = m.try_alloc(K4, K4).unwrap();
        s.link(0, PhysAddr(0x3000), K4, Prot::RW).unwrap();
        s.sync().unwrap();
        probe = s.dma_addr(0).unwrap();
        assert!(env.read(probe).is_ok());
    }
    assert_eq!(env.read(probe), Err(Fault::Translation(probe)));
    assert_eq!(env.iovas.stats().live_allocations, 0);
}

#[test]
fn a_state_whose_flush_keeps_failing_leaks_its_iova_on_drop() {
    let env = env();
    let m = env.mapper();
    let mut s = m.try_alloc(K4, K4).unwrap();
    s.link(0, PhysAddr(0x3000), K4, Prot::RW).unwrap();
    s.sync().unwrap();
    env.domain.invalidator().fail_next_flushes(100);
    drop(s);
    assert_eq!(
        env.iovas.stats().live_allocations,
        1,
        "never reused unflushed"
    );
}

#[test]
fn one_shot_map_and_unmap() {
    let env = env();
    let m = env.mapper();
    let mapping = m.map(PhysAddr(0x1234_5678), 0x2000, Prot::READ).unwrap();
    assert_eq!(mapping.addr().offset_in(K4), 0x678);
    assert_eq!(env.read(mapping.addr()), Ok(PhysAddr(0x1234_5678)));
    assert_eq!(
        env.read(Iova(mapping.addr().0 + 0x1fff)),
        Ok(PhysAddr(0x1234_7677))
    );
    assert_eq!(env.domain.leaves().len(), 3, "three granules touched");
    let addr = mapping.addr();
    m.unmap(mapping).unwrap();
    assert!(env.read(addr).is_err());
    assert_eq!(
        m.map(PhysAddr(0), 0, Prot::RW).err(),
        Some(Error::ZeroLength)
    );
    assert_eq!(env.iovas.stats().live_allocations, 0);
}

#[test]
fn one_shot_scatter_gather() {
    let env = env();
    let m = env.mapper();
    let pieces = [
        (PhysAddr(0x1_0000_0f00), 0x100),
        (PhysAddr(0x2_0000_0000), 0x2000),
        (PhysAddr(0x3_0000_0000), 0x10),
    ];
    let flushes = env.flushes();
    let s = m.map_sg(&pieces, Prot::RW).unwrap();
    assert_eq!(env.flushes(), flushes + 1);
    let base = s.dma_addr(0xf00).unwrap();
    assert_eq!(env.read(base), Ok(PhysAddr(0x1_0000_0f00)));
    assert_eq!(env.read(Iova(base.0 + 0x100)), Ok(PhysAddr(0x2_0000_0000)));
    assert_eq!(env.read(Iova(base.0 + 0x2100)), Ok(PhysAddr(0x3_0000_0000)));
    s.destroy().unwrap();
    // A middle piece that does not end on a granule is refused and unwound.
    let bad = [(PhysAddr(0x1000), 0x800), (PhysAddr(0x5000), 0x1000)];
    assert_eq!(m.map_sg(&bad, Prot::RW).err(), Some(Error::Misaligned));
    assert!(env.domain.leaves().is_empty());
    assert_eq!(m.map_sg(&[], Prot::RW).err(), Some(Error::ZeroLength));
    assert_eq!(env.iovas.stats().live_allocations, 0);
}

#[test]
fn fixed_capacity_link_store() {
    let env = env();
    let m = env.mapper();
    let mut s = m
        .try_alloc_with(4 * K4, K4, heapless::Vec::<_, 2>::new())
        .unwrap();
    s.link(0, PhysAddr(0x1000), K4, Prot::RW).unwrap();
    s.link(K4, PhysAddr(0x1000), K4, Prot::RW).unwrap();
    assert_eq!(
        s.link(2 * K4, PhysAddr(0x1000), K4, Prot::RW),
        Err(Error::StorageFull)
    );
    assert_eq!(env.domain.leaves().len(), 2);
    s.destroy().unwrap();
}

#[derive(Default)]
struct RecordingCache {
    ops: Mutex<Vec<(&'static str, u64, u64)>>,
}

impl CacheMaintenance for RecordingCache {
    fn is_coherent(&self) -> bool {
        false
    }
    fn clean(&self, pa: PhysAddr, len: u64) {
        self.ops.lock().unwrap().push(("clean", pa.0, len));
    }
    fn invalidate(&self, pa: PhysAddr, len: u64) {
        self.ops.lock().unwrap().push(("inval", pa.0, len));
    }
    fn complete(&self) {
        self.ops.lock().unwrap().push(("complete", 0, 0));
    }
}

#[test]
fn non_coherent_devices_get_batched_cache_maintenance() {
    let env = env();
    let cache = RecordingCache::default();
    let m = env.mapper().with_cache(&cache);
    let mut s = m.try_alloc(3 * K4, K4).unwrap();
    s.link(0x100, PhysAddr(0x1_0100), K4 - 0x100, Prot::RW)
        .unwrap();
    s.link(K4, PhysAddr(0x5_0000), 2 * K4, Prot::RW).unwrap();
    s.sync().unwrap();
    assert_eq!(
        *cache.ops.lock().unwrap(),
        vec![
            ("clean", 0x1_0100, 0xf00),
            ("clean", 0x5_0000, 0x2000),
            ("complete", 0, 0)
        ]
    );
    cache.ops.lock().unwrap().clear();
    s.sync_for_cpu(0x800, 0x1000);
    assert_eq!(
        *cache.ops.lock().unwrap(),
        vec![
            ("inval", 0x1_0800, 0x800),
            ("inval", 0x5_0000, 0x800),
            ("complete", 0, 0)
        ]
    );
    cache.ops.lock().unwrap().clear();
    // Rewritten in place while linked: cleaned again, only what is linked.
    s.sync_for_device(0, 0x1800);
    assert_eq!(
        *cache.ops.lock().unwrap(),
        vec![
            ("clean", 0x1_0100, 0xf00),
            ("clean", 0x5_0000, 0x800),
            ("complete", 0, 0)
        ]
    );
    s.destroy().unwrap();
}

#[test]
fn mapper_rejects_an_allocator_with_a_finer_granule() {
    let (domain, _) = fake_domain(LpaeS1::va48());
    let aperture = IovaRange::new(Iova(0), 0x1000_0000).unwrap();
    let iovas =
        IovaAllocator::with_capacity(IovaAllocatorConfig::new(aperture, 0x800), 16, 1).unwrap();
    assert_eq!(
        DmaMapper::new(&domain, &iovas, &CPU0).unwrap_err(),
        Error::Misaligned
    );
}

/// The shared model of adjacent states (also run by every backend) over the
/// fake domain, whose IOTLB keeps stale translations until a flush.
#[test]
fn adjacent_states_model() {
    let (seeds, steps) = if cfg!(miri) { (2, 120) } else { (12, 600) };
    for seed in 0..seeds {
        let (domain, _) = fake_domain(LpaeS1::va48());
        let run = iova_core::fakes::AdjacentStates {
            window: IovaRange::new(Iova(0x40_0000_0000), 24 * K4).unwrap(),
            pa_base: PhysAddr(0x8000_0000),
            seed,
            steps,
        };
        iova_core::fakes::check_adjacent_states(&domain, run, &|iova| {
            domain.device_access(iova, Access::Read).ok()
        });
        assert!(domain.leaves().is_empty(), "seed {seed}: leaves left");
    }
}

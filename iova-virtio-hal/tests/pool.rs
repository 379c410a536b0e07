//! `DmaShares` with a bounce pool against iova-core's fake IOMMU (the rig:
//! `common`): small shares cost no map and no flush, the driver's memory is
//! never mapped for them, slots never show an earlier request's bytes, and
//! every failure unwinds.

mod common;

use std::ops::Range;
use std::sync::Mutex;

use common::{Domain, HostPages, PAGE, Rig, pattern, run, with_pool_rig, with_rig};
use iova_core::fakes::{Access, FakeFrames, Fault, fake_domain};
use iova_core::formats::lpae::LpaeS1;
use iova_core::iova_alloc::IovaAllocatorConfig;
use iova_core::{
    CacheMaintenance, DmaMapper, FrameAllocator, Iova, IovaAllocator, IovaRange, PhysAddr,
};
use iova_virtio_hal::{
    DmaShares, IdentityMapped, MAX_POOL_SLOTS, PoolConfig, ShareCounters, ShareError,
};
use virtio_drivers::BufferDirection::{self, Both, DeviceToDriver, DriverToDevice};

const DEFAULT: PoolConfig = PoolConfig::DEFAULT;

fn pool_config(slots: usize) -> PoolConfig {
    PoolConfig {
        slots,
        ..PoolConfig::DEFAULT
    }
}

/// The pool's IOVA range and the physical range behind it (one frame).
fn pool_of(rig: &Rig<'_>, shares: &DmaShares<'_, Domain, 8>) -> (Range<u64>, Range<u64>) {
    let r = shares.pool_range().expect("a pool");
    let pa = rig.domain.device_access(r.start, Access::Read).unwrap().0;
    let len = r.end.0 - r.start.0;
    (r.start.0..r.end.0, pa..pa + len)
}

fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

/// Every leaf of the domain maps the pool, at the pool's IOVAs, and none
/// reaches `host`.
fn only_the_pool_is_mapped(rig: &Rig<'_>, shares: &DmaShares<'_, Domain, 8>, host: &HostPages) {
    let (iovas, pas) = pool_of(rig, shares);
    let host_pa = host.addr(0)..host.addr(host.bytes().len());
    let leaves = rig.domain.leaves();
    assert!(!leaves.is_empty());
    for l in leaves {
        let at = l.iova.0..l.iova.0 + l.size;
        let to = l.pa.0..l.pa.0 + l.size;
        assert!(iovas.start <= at.start && at.end <= iovas.end, "{l:?}");
        assert!(pas.start <= to.start && to.end <= pas.end, "{l:?}");
        assert!(
            !overlaps(&to, &host_pa),
            "the driver's memory is mapped: {l:?}"
        );
    }
    // Just outside the pool: nothing.
    for iova in [iovas.start - 1, iovas.end] {
        assert_eq!(
            rig.target(iova, Access::Read),
            Err(Fault::Translation(Iova(iova)))
        );
    }
}

/// All zero (without printing kilobytes when not).
#[track_caller]
fn assert_zero(bytes: &[u8]) {
    let nonzero = bytes.iter().filter(|&&b| b != 0).count();
    assert_eq!(nonzero, 0, "{nonzero} non-zero bytes of {}", bytes.len());
}

fn delta(after: ShareCounters, before: ShareCounters) -> (u64, u64) {
    (after.maps - before.maps, after.flushes - before.flushes)
}

#[test]
fn a_small_share_goes_through_a_slot_with_no_map_and_no_flush() {
    for direction in [DriverToDevice, DeviceToDriver, Both] {
        with_pool_rig::<8>(&IdentityMapped, DEFAULT, |rig, shares| {
            let c0 = shares.counters();
            // Made with one map and one flush, counted like the fake counts.
            assert_eq!((c0.maps, c0.flushes), (1, 1));
            assert_eq!(rig.domain.invalidator().flushes(), 1);
            let host = HostPages::new(2, 0x11);
            let data = pattern(100, 5);
            host.write(0xff0, &data); // straddles two pages
            let buf = host.slice(0xff0, 100);
            let (leaves, flushes) = (rig.leaves(), rig.domain.invalidator().flushes());
            // SAFETY: `host` outlives the share.
            let dev = unsafe { shares.share(buf, direction) }.unwrap();
            let (iovas, pas) = pool_of(rig, shares);
            assert!(iovas.contains(&dev.0));
            // A buffer the device only writes is not copied in: it sees
            // zeros, never the driver's bytes.
            let seen = rig.dev_read(dev.0, 100).unwrap();
            if direction == DeviceToDriver {
                assert_zero(&seen);
            } else {
                assert_eq!(seen, data);
            }
            let pa = rig.domain.device_access(dev, Access::Read).unwrap().0;
            assert!(pas.contains(&pa), "the device reads the pool");
            only_the_pool_is_mapped(rig, shares, &host);
            assert_eq!(rig.leaves(), leaves, "nothing mapped");
            assert_eq!(shares.live(), 1);
            // SAFETY: as shared.
            unsafe { shares.unshare(dev, buf, direction) }.unwrap();
            assert_eq!(rig.leaves(), leaves, "nothing unmapped");
            assert_eq!(
                rig.domain.invalidator().flushes(),
                flushes,
                "nothing flushed"
            );
            let c = shares.counters();
            assert_eq!(delta(c, c0), (0, 0));
            // Copied in unless the device only writes, back unless it only
            // reads.
            let copied = match direction {
                DriverToDevice | DeviceToDriver => 100,
                Both => 200,
            };
            assert_eq!(
                (c.shares, c.unshares, c.pool_shares, c.pool_bytes),
                (1, 1, 1, copied)
            );
            assert_eq!((c.bounced, c.bounce_bytes, c.pool_fallbacks), (0, 0, 0));
            assert_eq!((shares.live(), shares.pool_free()), (0, 64));
            // The driver's data is gone from the pool.
            assert_zero(&rig.dev_read(dev.0, PAGE).unwrap());
        });
    }
}

#[test]
fn a_page_aligned_page_is_copied_too_never_mapped_in_place() {
    with_pool_rig::<8>(&IdentityMapped, DEFAULT, |rig, shares| {
        let host = HostPages::new(1, 0);
        let data = pattern(PAGE, 1);
        host.write(0, &data);
        let buf = host.slice(0, PAGE);
        // SAFETY: `host` outlives the share.
        let dev = unsafe { shares.share(buf, Both) }.unwrap();
        only_the_pool_is_mapped(rig, shares, &host);
        assert_ne!(
            rig.target(dev.0, Access::Write).unwrap() as u64,
            host.addr(0)
        );
        rig.dev_write(dev.0 + 8, &[0xC3; 8]).unwrap();
        // SAFETY: as shared.
        unsafe { shares.unshare(dev, buf, Both) }.unwrap();
        assert_eq!(&host.bytes()[8..16], &[0xC3; 8]);
        assert_eq!(&host.bytes()[..8], &data[..8]);
        assert_eq!(&host.bytes()[16..], &data[16..]);
        assert_eq!(shares.counters().pool_bytes, 2 * PAGE as u64);
    });
}

#[test]
fn copy_back_follows_the_direction() {
    with_pool_rig::<8>(&IdentityMapped, DEFAULT, |rig, shares| {
        let host = HostPages::new(1, 0);
        let original = pattern(64, 9);
        for (i, direction) in [DriverToDevice, DeviceToDriver, Both]
            .into_iter()
            .enumerate()
        {
            let off = 0x100 * (i + 1);
            host.write(off, &original);
            let buf = host.slice(off, 64);
            // SAFETY: `host` outlives the share.
            let dev = unsafe { shares.share(buf, direction) }.unwrap();
            // The pool is mapped read-write: even a DriverToDevice slot can
            // be written, but nothing comes back from it.
            rig.dev_write(dev.0, &[0xC3; 10]).unwrap();
            // SAFETY: as shared.
            unsafe { shares.unshare(dev, buf, direction) }.unwrap();
            let got = &host.bytes()[off..off + 64];
            match direction {
                DriverToDevice => assert_eq!(got, &original[..]),
                // Copied in: what the device does not write survives.
                Both => {
                    assert_eq!(&got[..10], &[0xC3; 10]);
                    assert_eq!(&got[10..], &original[10..], "unwritten bytes survive");
                }
                // Not copied in: what the device does not write reads zero.
                DeviceToDriver => {
                    assert_eq!(&got[..10], &[0xC3; 10]);
                    assert_zero(&got[10..]);
                }
            }
        }
    });
}

#[test]
fn a_slot_never_shows_a_previous_requests_bytes() {
    with_pool_rig::<8>(&IdentityMapped, pool_config(1), |rig, shares| {
        let host = HostPages::new(2, 0xAA);
        let long = host.slice(0, PAGE);
        // SAFETY: `host` outlives the shares.
        let first = unsafe { shares.share(long, DriverToDevice) }.unwrap();
        // SAFETY: as shared.
        unsafe { shares.unshare(first, long, DriverToDevice) }.unwrap();
        host.write(PAGE, &[0x42; 16]);
        let short = host.slice(PAGE, 16);
        for direction in [DriverToDevice, DeviceToDriver, Both] {
            // (A `DeviceToDriver` unshare leaves zeros where the device
            // wrote nothing.)
            host.write(PAGE, &[0x42; 16]);
            // SAFETY: as above.
            let dev = unsafe { shares.share(short, direction) }.unwrap();
            assert_eq!(dev, first, "the same (only) slot");
            let seen = rig.dev_read(dev.0, PAGE).unwrap();
            if direction == DeviceToDriver {
                assert_zero(&seen);
            } else {
                assert_eq!(&seen[..16], &[0x42; 16]);
                assert_zero(&seen[16..]);
            }
            // SAFETY: as shared.
            unsafe { shares.unshare(dev, short, direction) }.unwrap();
        }
    });
}

#[test]
fn unshare_of_what_was_not_shared_keeps_the_slot() {
    with_pool_rig::<8>(&IdentityMapped, DEFAULT, |rig, shares| {
        let host = HostPages::new(1, 7);
        let buf = host.slice(0x10, 0x20);
        // SAFETY: `host` outlives the share.
        let dev = unsafe { shares.share(buf, Both) }.unwrap();
        // SAFETY: refused before anything is touched.
        unsafe {
            for (d, b, dir) in [
                (Iova(dev.0 + 1), buf, Both),
                (Iova(dev.0 + PAGE as u64), buf, Both),
                (dev, host.slice(0x10, 0x1f), Both),
                (dev, buf, DeviceToDriver),
            ] {
                assert_eq!(shares.unshare(d, b, dir), Err(ShareError::NotShared));
            }
        }
        assert_eq!((shares.live(), shares.pool_free()), (1, 63));
        assert_eq!(rig.dev_read(dev.0, 0x20).unwrap(), vec![7; 0x20]);
        // SAFETY: the real one.
        unsafe { shares.unshare(dev, buf, Both) }.unwrap();
        // SAFETY: refused: already unshared.
        let again = unsafe { shares.unshare(dev, buf, Both) };
        assert_eq!(again, Err(ShareError::NotShared));
        assert_eq!(shares.counters().failures, 5);
    });
}

#[test]
fn an_exhausted_pool_falls_back_to_mapping_and_still_works() {
    with_pool_rig::<8>(&IdentityMapped, pool_config(2), |rig, shares| {
        let host = HostPages::new(4, 0);
        let bufs: Vec<_> = (0..4).map(|i| host.slice(i * PAGE + 0x20, 0x40)).collect();
        for i in 0..4 {
            host.write(i * PAGE + 0x20, &pattern(0x40, i as u8));
        }
        let c0 = shares.counters();
        let flushes = rig.domain.invalidator().flushes();
        // SAFETY: `host` outlives the shares.
        let devs: Vec<_> = bufs
            .iter()
            .map(|&b| unsafe { shares.share(b, Both) }.unwrap())
            .collect();
        let c = shares.counters();
        assert_eq!((c.pool_shares, c.pool_fallbacks), (2, 2));
        // The two fallbacks: a bounce page each, mapped and flushed.
        assert_eq!(delta(c, c0), (2, 2));
        assert_eq!(rig.domain.invalidator().flushes() - flushes, 2);
        assert_eq!(rig.dma.live(), 1 + 2, "pool frame and two bounce pages");
        for (i, d) in devs.iter().enumerate() {
            assert_eq!(rig.dev_read(d.0, 0x40).unwrap(), pattern(0x40, i as u8));
            rig.dev_write(d.0, &[0xF0 | i as u8]).unwrap();
        }
        for (i, (&d, &b)) in devs.iter().zip(&bufs).enumerate() {
            // SAFETY: as shared.
            unsafe { shares.unshare(d, b, Both) }.unwrap();
            assert_eq!(host.bytes()[i * PAGE + 0x20], 0xF0 | i as u8);
        }
        assert_eq!(rig.dma.live(), 1);
        assert_eq!(shares.pool_free(), 2);
        assert_eq!(delta(shares.counters(), c0), (2, 4));
    });
}

#[test]
fn partial_granules_of_large_buffers_use_pool_frames() {
    with_pool_rig::<8>(&IdentityMapped, DEFAULT, |rig, shares| {
        let host = HostPages::new(4, 0xEE);
        // Head 0xff0 bytes of page 0, page 1 whole, tail 0x10 bytes of page 2.
        let (off, len) = (0x10, 0x2000);
        let original = pattern(len, 3);
        host.write(off, &original);
        let buf = host.slice(off, len);
        let frames = rig.dma.total_allocated();
        // SAFETY: `host` outlives the share.
        let dev = unsafe { shares.share(buf, Both) }.unwrap();
        assert_eq!(rig.dma.total_allocated(), frames, "no frame allocated");
        assert_eq!(shares.pool_free(), 62);
        let (iovas, pas) = pool_of(rig, shares);
        assert!(!iovas.contains(&dev.0), "mapped at an IOVA of its own");
        assert_eq!(dev.0 % PAGE as u64, off as u64);
        assert_eq!(rig.dev_read(dev.0, len).unwrap(), original);
        let at = |o: u64| rig.domain.device_access(Iova(o), Access::Read).unwrap().0;
        assert!(pas.contains(&at(dev.0)), "head in a pool frame");
        assert!(
            pas.contains(&at(dev.0 + len as u64 - 1)),
            "tail in a pool frame"
        );
        assert_eq!(at(dev.0 + 0xff0), host.addr(PAGE), "middle in place");
        let page0 = dev.0 - off as u64;
        assert_eq!(rig.dev_read(page0, off).unwrap(), vec![0; off]);
        assert_eq!(
            rig.dev_read(dev.0 + len as u64, 0x20).unwrap(),
            vec![0; 0x20]
        );
        // The device writes the buffer (what it writes next to it, in the
        // pool frames' other bytes, would stay there: its own bytes, which
        // only it can read; see the pool's invariant).
        rig.dev_write(dev.0, &vec![0xAA; len]).unwrap();
        // SAFETY: as shared.
        unsafe { shares.unshare(dev, buf, Both) }.unwrap();
        assert!(rig.dev_read(dev.0, 1).is_err(), "strict: unmapped, flushed");
        let bytes = host.bytes();
        assert!(bytes[off..off + len].iter().all(|&b| b == 0xAA));
        assert!(
            bytes[..off]
                .iter()
                .chain(&bytes[off + len..])
                .all(|&b| b == 0xEE)
        );
        let c = shares.counters();
        assert_eq!((c.bounced, c.pool_bounces, c.pool_shares), (1, 2, 0));
        assert_eq!(c.bounce_bytes, 2 * (0xff0 + 0x10));
        assert_eq!(c.maps - 1, 3, "head, middle, tail");
        assert_eq!(shares.pool_free(), 64);
        // The bytes the share put in the pool frames are zeroed.
        for slot in iovas.step_by(PAGE).take(2) {
            assert_zero(&rig.dev_read(slot, PAGE).unwrap());
        }
    });
}

#[test]
fn partial_granules_fall_back_to_bounce_pages_when_the_pool_is_full() {
    with_pool_rig::<8>(&IdentityMapped, pool_config(1), |rig, shares| {
        let host = HostPages::new(4, 0);
        let buf = host.slice(0x10, 0x2000);
        host.write(0x10, &pattern(0x2000, 4));
        // SAFETY: `host` outlives the share.
        let dev = unsafe { shares.share(buf, DeviceToDriver) }.unwrap();
        assert_eq!(rig.dma.live(), 2, "pool frame and the tail's bounce page");
        let c = shares.counters();
        assert_eq!((c.pool_bounces, c.pool_fallbacks), (1, 1));
        rig.dev_write(dev.0 + 0x1ff0, &[0x99; 0x10]).unwrap();
        // SAFETY: as shared.
        unsafe { shares.unshare(dev, buf, DeviceToDriver) }.unwrap();
        assert_eq!(&host.bytes()[0x2000..0x2010], &[0x99; 0x10]);
        assert_eq!(&host.bytes()[0x10..0x2000], &pattern(0x2000, 4)[..0x1ff0]);
        assert_eq!((rig.dma.live(), shares.pool_free()), (1, 1));
    });
}

#[test]
fn one_domains_pool_is_not_reachable_through_another() {
    let small = pool_config(4);
    with_pool_rig::<8>(&IdentityMapped, small, |a, shares_a| {
        with_pool_rig::<8>(&IdentityMapped, small, |b, shares_b| {
            let host = HostPages::new(1, 0);
            host.write(0, &[0x3C; 32]);
            let buf = host.slice(0, 32);
            // SAFETY: `host` outlives the share.
            let dev = unsafe { shares_a.share(buf, Both) }.unwrap();
            let (a_iovas, a_pas) = pool_of(a, shares_a);
            let (b_iovas, _) = pool_of(b, shares_b);
            assert_eq!(a_iovas, b_iovas, "same IOVAs in both windows");
            // B's device writes every byte of A's pool range (B's own pool,
            // at the same IOVAs): none of it lands in A's pool memory.
            let a_mem = a.dma.host_range(a_pas);
            let step = if cfg!(miri) { 61 } else { 1 };
            for iova in a_iovas.clone().step_by(step) {
                let p = b.target(iova, Access::Write).unwrap();
                assert!(!a_mem.contains(&(p as usize)), "{iova:#x}");
                // SAFETY: memory of B's rig (the rig translates only there).
                unsafe { p.write(0x77) };
            }
            let seen = a.dev_read(a_iovas.start, 4 * PAGE).unwrap();
            assert_eq!(&seen[..32], &[0x3C; 32]);
            assert_zero(&seen[32..]);
            // SAFETY: as shared.
            unsafe { shares_a.unshare(dev, buf, Both) }.unwrap();
            assert_eq!(&host.bytes()[..32], &[0x3C; 32]);
        });
    });
}

/// Host pointer range of the physical range `pas` of `frames`.
trait HostRange {
    fn host_range(&self, pas: Range<u64>) -> Range<usize>;
}

impl HostRange for FakeFrames {
    fn host_range(&self, pas: Range<u64>) -> Range<usize> {
        let start = self.phys_to_virt(PhysAddr(pas.start)) as usize;
        start..start + (pas.end - pas.start) as usize
    }
}

#[test]
fn drop_tears_the_pool_down_with_whatever_is_live() {
    // The buffers outlive the table: its drop unmaps without copying back.
    let host = HostPages::new(4, 0);
    // `run` checks afterwards that no frame is live and nothing is mapped.
    with_pool_rig::<8>(&IdentityMapped, DEFAULT, |rig, shares| {
        // SAFETY: `host` outlives the shares and the table.
        unsafe {
            shares.share(host.slice(0, 16), Both).unwrap();
            shares.share(host.slice(PAGE + 8, 2 * PAGE), Both).unwrap();
        }
        shares.alloc(1, Both).unwrap();
        assert_eq!(rig.dma.live(), 2, "the pool frame and the allocation");
        assert_eq!((shares.live(), shares.pool_free()), (3, 61));
    });
}

/// A fake domain and what a table needs, outside `run`, for tests that
/// check what happens when making or dropping the table fails.
struct Bare {
    domain: Domain,
    tables: std::sync::Arc<FakeFrames>,
    dma: FakeFrames,
    iovas: IovaAllocator<'static>,
}

impl Bare {
    fn new() -> Self {
        let (domain, tables) = fake_domain(LpaeS1::va48());
        let window = IovaRange::new(Iova(0x1_0000_0000), 1 << 32).unwrap();
        let iovas =
            IovaAllocator::with_capacity(IovaAllocatorConfig::new(window, 0x1000), 64, 1).unwrap();
        Self {
            domain,
            tables,
            dma: FakeFrames::with_capacity(1 << 20),
            iovas,
        }
    }

    fn shares(&self, config: PoolConfig) -> Result<DmaShares<'_, Domain, 8>, ShareError> {
        static CPU: fn() -> usize = || 0;
        let mapper = DmaMapper::new(&self.domain, &self.iovas, &CPU).unwrap();
        DmaShares::with_pool(mapper, &self.dma, &IdentityMapped, config)
    }

    /// Nothing is held: no frame, no mapping, the whole IOVA window free.
    fn nothing_held(&self) {
        assert_eq!(self.dma.live(), 0);
        assert_eq!(self.domain.leaves().len(), 0);
        let all = self.iovas.aperture().len();
        let whole = self.iovas.alloc(0, all, 0x1000).unwrap();
        self.iovas.free(0, whole).unwrap();
    }
}

#[test]
fn making_the_pool_refuses_bad_configs_and_unwinds_every_failure() {
    let bare = Bare::new();
    let bad = [
        PoolConfig {
            slots: 0,
            ..DEFAULT
        },
        PoolConfig {
            slots: MAX_POOL_SLOTS + 1,
            ..DEFAULT
        },
        PoolConfig {
            slot_size: 0x1800,
            ..DEFAULT
        },
        PoolConfig {
            slot_size: 0x800,
            threshold: 0x800,
            ..DEFAULT
        },
        PoolConfig {
            threshold: 0x1001,
            ..DEFAULT
        },
    ];
    for config in bad {
        let r = bare.shares(config).map(|_| ());
        assert_eq!(r, Err(ShareError::InvalidConfig), "{config:?}");
        bare.nothing_held();
    }
    let huge = PoolConfig {
        slots: 4,
        slot_size: 1 << 62,
        threshold: 0,
    };
    assert_eq!(bare.shares(huge).map(|_| ()), Err(ShareError::Overflow));
    bare.dma.fail_after(0);
    assert_eq!(bare.shares(DEFAULT).map(|_| ()), Err(ShareError::NoMemory));
    bare.dma.unlimited();
    bare.nothing_held();
    bare.tables.fail_after(0);
    assert_eq!(
        bare.shares(DEFAULT).map(|_| ()),
        Err(ShareError::Map(iova_core::Error::NoMemory))
    );
    bare.tables.unlimited();
    bare.nothing_held();
    bare.domain.invalidator().fail_next_flushes(1);
    assert_eq!(
        bare.shares(DEFAULT).map(|_| ()),
        Err(ShareError::Map(iova_core::Error::Timeout))
    );
    bare.nothing_held();
    // Rounded up to a power of two.
    let shares = bare.shares(pool_config(3)).unwrap();
    assert_eq!(shares.pool_free(), 4);
    let r = shares.pool_range().unwrap();
    assert_eq!(r.end.0 - r.start.0, 4 * PAGE as u64);
    drop(shares);
    bare.nothing_held();
}

#[test]
fn a_failed_flush_at_drop_keeps_the_pool_frame() {
    let bare = Bare::new();
    let host = HostPages::new(4, 0);
    let shares = bare.shares(DEFAULT).unwrap();
    // SAFETY: `host` outlives the shares and the table.
    unsafe {
        shares.share(host.slice(0, 16), Both).unwrap();
        // Head and tail in pool frames, mapped by the share's own state.
        shares.share(host.slice(0x10, 2 * PAGE), Both).unwrap();
    }
    bare.domain.invalidator().fail_next_flushes(usize::MAX);
    drop(shares);
    bare.domain.invalidator().fail_next_flushes(0);
    assert_eq!(bare.dma.live(), 1, "the pool's frame is kept, not freed");
    assert_eq!(bare.dma.bad_frees(), 0);
    assert_eq!(bare.domain.leaves().len(), 0, "unmapped all the same");
}

/// Sizes and data of one virtio-blk request, and what it cost.
#[derive(Debug, PartialEq, Eq)]
struct Cost {
    maps: u64,
    flushes: u64,
    pool_bytes: u64,
    bounce_bytes: u64,
    frames: usize,
}

/// A virtio-blk read as virtio-drivers makes it: a 16-byte header the device
/// reads, `len` bytes of data at `off` in its pages the device writes, and a
/// 1-byte status the device writes; shared in that order, unshared after
/// the device is done.
fn blk_read(rig: &Rig<'_>, shares: &DmaShares<'_, Domain, 8>, len: usize, off: usize) -> Cost {
    let small = HostPages::new(1, 0);
    let data = HostPages::new((off + len).div_ceil(PAGE), 0);
    let (header, status) = (small.slice(0x10, 16), small.slice(0x40, 1));
    let buf = data.slice(off, len);
    let c0 = shares.counters();
    let (flushes, frames) = (
        rig.domain.invalidator().flushes(),
        rig.dma.total_allocated(),
    );
    // SAFETY: the pages outlive the shares.
    unsafe {
        let h = shares.share(header, DriverToDevice).unwrap();
        let d = shares.share(buf, DeviceToDriver).unwrap();
        let s = shares.share(status, DeviceToDriver).unwrap();
        rig.dev_write(d.0, &pattern(len, 1)).unwrap();
        rig.dev_write(s.0, &[0]).unwrap();
        shares.unshare(h, header, DriverToDevice).unwrap();
        shares.unshare(d, buf, DeviceToDriver).unwrap();
        shares.unshare(s, status, DeviceToDriver).unwrap();
    }
    assert_eq!(data.bytes()[off..off + len], pattern(len, 1)[..]);
    let c = shares.counters();
    assert_eq!(
        (c.flushes - c0.flushes) as usize,
        rig.domain.invalidator().flushes() - flushes,
        "the table counts the flushes the domain sees"
    );
    Cost {
        maps: c.maps - c0.maps,
        flushes: c.flushes - c0.flushes,
        pool_bytes: c.pool_bytes - c0.pool_bytes,
        bounce_bytes: c.bounce_bytes - c0.bounce_bytes,
        frames: rig.dma.total_allocated() - frames,
    }
}

#[test]
fn a_blk_request_costs_what_the_docs_say() {
    let big = if cfg!(miri) { 4 * PAGE } else { 16 * PAGE };
    // (data bytes, data offset, pool?, maps, flushes, pool bytes, bounce bytes, frames)
    let rows = [
        (PAGE, 0, false, 3, 6, 0, 18, 2),
        (PAGE, 0, true, 0, 0, 16 + PAGE as u64 + 1, 0, 0),
        (big, 0, false, 3, 6, 0, 18, 2),
        (big, 0, true, 1, 2, 17, 0, 0),
        (PAGE, 0x200, false, 4, 6, 0, 18 + 2 * PAGE as u64, 4),
        (PAGE, 0x200, true, 0, 0, 16 + PAGE as u64 + 1, 0, 0),
        (big, 0x200, false, 5, 6, 0, 18 + 2 * PAGE as u64, 4),
        (big, 0x200, true, 3, 2, 17, 2 * PAGE as u64, 0),
    ];
    println!("data      off   pool  maps flushes pool-bytes bounce-bytes frames");
    // One table per policy: every request is measured as a difference.
    for pool in [false, true] {
        let check = |rig: &Rig<'_>, shares: &DmaShares<'_, Domain, 8>| {
            for &(len, off, p, maps, flushes, pool_bytes, bounce_bytes, frames) in &rows {
                if p != pool {
                    continue;
                }
                let want = Cost {
                    maps,
                    flushes,
                    pool_bytes,
                    bounce_bytes,
                    frames,
                };
                let got = blk_read(rig, shares, len, off);
                println!(
                    "{len:>6} {off:>#6x} {pool:>5} {:>5} {:>7} {:>10} {:>12} {:>6}",
                    got.maps, got.flushes, got.pool_bytes, got.bounce_bytes, got.frames
                );
                assert_eq!(got, want, "{len:#x} at {off:#x}, pool {pool}");
            }
        };
        if pool {
            with_pool_rig::<8>(&IdentityMapped, DEFAULT, check);
        } else {
            with_rig::<8>(&IdentityMapped, check);
        }
    }
}

/// xorshift64: a fixed sequence per seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

struct Live {
    host: HostPages,
    off: usize,
    len: usize,
    direction: BufferDirection,
    dev: Iova,
    /// What the driver's buffer must hold after the unshare.
    expect: Vec<u8>,
}

#[test]
fn random_shares_round_trip_and_never_expose_the_driver_or_old_bytes() {
    let rounds = if cfg!(miri) { 40 } else { 2000 };
    with_pool_rig::<8>(&IdentityMapped, pool_config(4), |rig, shares| {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut live: Vec<Live> = Vec::new();
        for round in 0..rounds {
            if live.len() < 6 && (live.is_empty() || rng.below(2) == 0) {
                let off = rng.below(2 * PAGE);
                let len = 1 + match rng.below(3) {
                    0 => rng.below(64),
                    1 => rng.below(PAGE),
                    _ => rng.below(2 * PAGE),
                };
                let direction = [DriverToDevice, DeviceToDriver, Both][rng.below(3)];
                let host = HostPages::new(4, 0xEE);
                let original = pattern(len, round as u8);
                host.write(off, &original);
                let buf = host.slice(off, len);
                // SAFETY: `host` lives in `live` until the unshare.
                let dev = unsafe { shares.share(buf, direction) }.unwrap();
                let in_pool = pool_of(rig, shares).0.contains(&dev.0);
                // A pool share the device only writes is not copied in.
                let mut expect = if in_pool && direction == DeviceToDriver {
                    vec![0; len]
                } else {
                    original
                };
                assert_eq!(rig.dev_read(dev.0, len).unwrap(), expect);
                if direction != DriverToDevice {
                    let (from, n) = (rng.below(len), rng.below(32));
                    let n = n.min(len - from);
                    let bytes = vec![0x5A ^ round as u8; n];
                    rig.dev_write(dev.0 + from as u64, &bytes).unwrap();
                    expect[from..from + n].copy_from_slice(&bytes);
                }
                if in_pool {
                    // Past the buffer, to the slot's end: zeros.
                    let end = (dev.0 as usize + len).next_multiple_of(PAGE);
                    let tail = (end - dev.0 as usize - len).min(64);
                    let beyond = rig.dev_read(dev.0 + len as u64, tail).unwrap();
                    assert!(beyond.iter().all(|&b| b == 0), "round {round}");
                }
                live.push(Live {
                    host,
                    off,
                    len,
                    direction,
                    dev,
                    expect,
                });
            } else {
                let l = live.swap_remove(rng.below(live.len()));
                let buf = l.host.slice(l.off, l.len);
                // SAFETY: as shared.
                unsafe { shares.unshare(l.dev, buf, l.direction) }.unwrap();
                let bytes = l.host.bytes();
                assert_eq!(&bytes[l.off..l.off + l.len], &l.expect[..], "round {round}");
                assert!(bytes[..l.off].iter().all(|&b| b == 0xEE));
                assert!(bytes[l.off + l.len..].iter().all(|&b| b == 0xEE));
            }
            // Pool shares never map the driver's memory.
            let (_, pool_pas) = pool_of(rig, shares);
            for l in &live {
                let pooled = pool_pas
                    .contains(&rig.domain.device_access(l.dev, Access::Read).unwrap().0)
                    && l.len <= PAGE;
                if pooled {
                    let host = l.host.addr(0)..l.host.addr(4 * PAGE);
                    for leaf in rig.domain.leaves() {
                        assert!(!overlaps(&(leaf.pa.0..leaf.pa.0 + leaf.size), &host));
                    }
                }
            }
        }
        for l in live.drain(..) {
            // SAFETY: as shared.
            unsafe { shares.unshare(l.dev, l.host.slice(l.off, l.len), l.direction) }.unwrap();
        }
        let c = shares.counters();
        assert!(
            c.pool_shares > 0 && c.pool_fallbacks > 0 && c.pool_bounces > 0,
            "{c:?}"
        );
        assert_eq!((shares.live(), shares.pool_free()), (0, 4));
    });
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
fn non_coherent_devices_get_slots_cleaned_and_invalidated() {
    static CACHE: RecordingCache = RecordingCache {
        ops: Mutex::new(Vec::new()),
    };
    run::<8>(
        &IdentityMapped,
        None,
        |m, dma, mem| DmaShares::with_pool(m.with_cache(&CACHE), dma, mem, DEFAULT),
        |rig, shares| {
            let (_, pas) = pool_of(rig, shares);
            let host = HostPages::new(1, 0);
            let buf = host.slice(0x10, 16);
            CACHE.ops.lock().unwrap().clear();
            // SAFETY: `host` outlives the share.
            let dev = unsafe { shares.share(buf, Both) }.unwrap();
            let slot = rig.domain.device_access(dev, Access::Read).unwrap().0;
            assert_eq!(slot, pas.start, "the first slot");
            assert_eq!(
                std::mem::take(&mut *CACHE.ops.lock().unwrap()),
                [("clean", slot, 16), ("complete", 0, 0)],
                "copied in, then written back for the device"
            );
            // SAFETY: as shared.
            unsafe { shares.unshare(dev, buf, Both) }.unwrap();
            assert_eq!(
                std::mem::take(&mut *CACHE.ops.lock().unwrap()),
                [
                    ("inval", slot, 16),
                    ("complete", 0, 0),
                    ("clean", slot, 16),
                    ("complete", 0, 0)
                ],
                "stale lines dropped before the copy back, zeros written back"
            );
        },
    );
}

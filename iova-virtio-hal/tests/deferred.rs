//! `DmaShares` over a mapper with a flush queue (deferred invalidation),
//! against iova-core's fake IOMMU: what stays reachable after `unshare`, and
//! until when; that no memory goes back to an allocator while the device may
//! still reach it.

mod common;

use common::{HostPages, PAGE, pattern, run};
use iova_core::fakes::{Access, Fault};
use iova_core::flush_queue::{DeferLimits, FlushQueue};
use iova_virtio_hal::{DmaShares, IdentityMapped, PoolConfig};
use virtio_drivers::BufferDirection::{DeviceToDriver, DriverToDevice};

const WIDE: DeferLimits = DeferLimits {
    max_entries: 8,
    max_bytes: u64::MAX,
    max_age: u64::MAX,
};

#[test]
fn an_unshared_buffer_is_reachable_until_the_queue_flushes_never_after() {
    let clock = || 0u64;
    let queue = FlushQueue::with_capacity(WIDE, &clock, 16);
    run::<16>(
        &IdentityMapped,
        Some(&queue),
        |m, dma, memory| DmaShares::with_pool(m, dma, memory, PoolConfig::DEFAULT),
        |rig, shares| {
            let host = HostPages::new(4, 0);
            let mut devs = Vec::new();
            // Eight 16 KiB buffers in place (above the pool's threshold).
            for i in 0..8 {
                let buf = host.slice(0, 4 * PAGE);
                // SAFETY: `host` outlives every share.
                let dev = unsafe { shares.share(buf, DeviceToDriver) }.unwrap();
                rig.dev_write(dev.0, &pattern(16, i)).unwrap();
                // SAFETY: the buffer given to `share`.
                unsafe { shares.unshare(dev, buf, DeviceToDriver) }.unwrap();
                devs.push(dev);
                if i < 7 {
                    assert_eq!(queue.pending(), i as u32 + 1, "deferred");
                    assert_eq!(
                        rig.target(devs[0].0, Access::Write).unwrap() as u64,
                        host.addr(0),
                        "stale until the queue flushes (the documented window)"
                    );
                    assert!(
                        devs[..i as usize].iter().all(|d| *d != dev),
                        "an IOVA waiting in the queue is not handed out again"
                    );
                }
            }
            // The eighth unlink reached max_entries: one flush for all.
            assert_eq!((queue.pending(), queue.counters().flushes), (0, 1));
            for dev in devs {
                assert_eq!(
                    rig.target(dev.0, Access::Write),
                    Err(Fault::Translation(dev))
                );
            }
            assert_eq!(shares.counters().failures, 0);
        },
    );
    assert_eq!(queue.pending_iovas(), 0);
}

#[test]
fn memory_goes_back_to_the_allocator_only_after_the_queue_flushed() {
    let clock = || 0u64;
    let queue = FlushQueue::with_capacity(WIDE, &clock, 16);
    run::<16>(
        &IdentityMapped,
        Some(&queue),
        |m, dma, memory| DmaShares::new(m, dma, memory),
        |rig, shares| {
            // DMA memory: its frame returns to the allocator on dealloc.
            let (dev, cpu) = shares.alloc(1, DriverToDevice).unwrap();
            let live = rig.dma.live();
            rig.dev_read(dev.0, 8).unwrap();
            let flushes = queue.counters().flushes;
            // SAFETY: nothing uses the memory afterwards.
            unsafe { shares.dealloc(dev, cpu, 1) }.unwrap();
            assert_eq!(
                queue.counters().flushes,
                flushes + 1,
                "flushed before the frame went back"
            );
            assert!(rig.dma.live() < live);
            assert_eq!(
                rig.target(dev.0, Access::Read),
                Err(Fault::Translation(dev))
            );
            // A partial granule bounced into a page of its own (no pool).
            let host = HostPages::new(2, 0xAA);
            let buf = host.slice(100, PAGE);
            // SAFETY: `host` outlives the share.
            let dev = unsafe { shares.share(buf, DeviceToDriver) }.unwrap();
            rig.dev_write(dev.0, &[1, 2, 3]).unwrap();
            let flushes = queue.counters().flushes;
            // SAFETY: the buffer given to `share`.
            unsafe { shares.unshare(dev, buf, DeviceToDriver) }.unwrap();
            assert_eq!(
                queue.counters().flushes,
                flushes + 1,
                "the bounce page went back after a flush"
            );
            assert_eq!(
                rig.target(dev.0, Access::Write),
                Err(Fault::Translation(dev))
            );
            assert_eq!(&host.bytes()[100..103], &[1, 2, 3]);
        },
    );
}

#[test]
fn small_shares_through_the_pool_need_no_queue_at_all() {
    let clock = || 0u64;
    let queue = FlushQueue::with_capacity(WIDE, &clock, 16);
    run::<16>(
        &IdentityMapped,
        Some(&queue),
        |m, dma, memory| DmaShares::with_pool(m, dma, memory, PoolConfig::DEFAULT),
        |rig, shares| {
            let host = HostPages::new(1, 0);
            let flushes = rig.domain.invalidator().flushes();
            for _ in 0..32 {
                let buf = host.slice(8, 16);
                // SAFETY: `host` outlives the share.
                let dev = unsafe { shares.share(buf, DriverToDevice) }.unwrap();
                assert_eq!(rig.dev_read(dev.0, 16).unwrap(), vec![0; 16]);
                // SAFETY: the buffer given to `share`.
                unsafe { shares.unshare(dev, buf, DriverToDevice) }.unwrap();
            }
            assert_eq!(rig.domain.invalidator().flushes(), flushes);
            assert_eq!((queue.counters().deferred, queue.pending()), (0, 0));
        },
    );
}

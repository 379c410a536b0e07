//! `DmaShares` over a mapper with a flush queue (deferred invalidation),
//! against iova-core's fake IOMMU: what stays reachable after `unshare`, and
//! until when; that no memory goes back to an allocator while the device may
//! still reach it.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use common::{HostPages, PAGE, pattern, run};
use iova_core::PhysAddr;
use iova_core::fakes::{Access, Fault};
use iova_core::flush_queue::{DeferLimits, FlushQueue};
use iova_virtio_hal::{CpuMemory, DmaShares, IdentityMapped, PoolConfig};
use virtio_drivers::BufferDirection::{DeviceToDriver, DriverToDevice};

const WIDE: DeferLimits = DeferLimits {
    max_entries: 8,
    max_bytes: u64::MAX,
    max_age: u64::MAX,
};

#[test]
fn an_unshared_buffer_is_reachable_until_evicted_and_flushed_never_after() {
    let clock = || 0u64;
    let queue = FlushQueue::with_capacity(WIDE, &clock, 16);
    run::<16>(
        &IdentityMapped,
        Some(&queue),
        |m, dma, memory| DmaShares::with_pool(m, dma, memory, PoolConfig::DEFAULT),
        |rig, shares| {
            // Nine 16 KiB buffers in place (above the pool's threshold).
            let hosts: Vec<HostPages> = (0..9).map(|_| HostPages::new(4, 0)).collect();
            let mut devs = Vec::new();
            for (i, host) in hosts.iter().enumerate() {
                let buf = host.slice(0, 4 * PAGE);
                // SAFETY: `host` outlives every share.
                let dev = unsafe { shares.share(buf, DeviceToDriver) }.unwrap();
                rig.dev_write(dev.0, &pattern(16, i as u8)).unwrap();
                // SAFETY: the buffer given to `share`.
                unsafe { shares.unshare(dev, buf, DeviceToDriver) }.unwrap();
                assert!(!devs.contains(&dev), "a kept IOVA is not handed out again");
                devs.push(dev);
                // Kept (parked) up to max_entries, then the oldest is
                // evicted into the queue: still reachable either way.
                assert_eq!(shares.parked(), (i + 1).min(8));
                assert_eq!(queue.pending(), (i as u32 + 1).saturating_sub(8));
                for (d, h) in devs.iter().zip(&hosts) {
                    assert_eq!(
                        rig.target(d.0, Access::Write).unwrap() as u64,
                        h.addr(0),
                        "reachable until the flush (the documented window)"
                    );
                }
            }
            assert_eq!(shares.live(), 0, "parked mappings are not live shares");
            shares.flush_deferred().unwrap();
            assert_eq!((shares.parked(), queue.pending()), (0, 0));
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
fn a_parked_mapping_is_reused_for_the_same_buffer_and_direction_only() {
    let clock = || 0u64;
    let queue = FlushQueue::with_capacity(WIDE, &clock, 16);
    run::<16>(
        &IdentityMapped,
        Some(&queue),
        |m, dma, memory| DmaShares::new(m, dma, memory),
        |rig, shares| {
            let share = |buf, direction| {
                // SAFETY: every buffer is host memory that outlives the table.
                unsafe { shares.share(buf, direction) }.unwrap()
            };
            let unshare = |dev, buf, direction| {
                // SAFETY: the buffer and direction given to `share` for `dev`.
                unsafe { shares.unshare(dev, buf, direction) }
            };
            let host = HostPages::new(4, 0);
            let whole = host.slice(0, 2 * PAGE);
            let a = share(whole, DeviceToDriver);
            unshare(a, whole, DeviceToDriver).unwrap();
            let c0 = shares.counters();
            let flushes = rig.domain.invalidator().flushes();
            let again = share(whole, DeviceToDriver);
            assert_eq!(again, a, "the same mapping");
            let c = shares.counters();
            assert_eq!((c.reused, c.maps), (c0.reused + 1, c0.maps), "no map");
            assert_eq!(rig.domain.invalidator().flushes(), flushes, "no sync");
            assert_eq!((shares.parked(), shares.live()), (0, 1));
            rig.dev_write(again.0 + PAGE as u64, &[7; 8]).unwrap();
            unshare(again, whole, DeviceToDriver).unwrap();
            assert_eq!(&host.bytes()[PAGE..PAGE + 8], &[7; 8]);
            // Another direction, a part of it, more of it: mapped afresh.
            let other = [
                (host.slice(0, 2 * PAGE), DriverToDevice),
                (host.slice(0, PAGE), DeviceToDriver),
                (host.slice(0, 3 * PAGE), DeviceToDriver),
            ];
            for (buf, direction) in other {
                let maps = shares.counters().maps;
                let dev = share(buf, direction);
                assert_ne!(dev, a);
                assert_eq!(shares.counters().maps, maps + 1);
                unshare(dev, buf, direction).unwrap();
            }
            // A parked mapping cannot be unshared again.
            assert!(unshare(a, whole, DeviceToDriver).is_err());
            assert_eq!(shares.parked(), 4);
        },
    );
}

/// Identity, except for one page that can be moved elsewhere.
struct Movable {
    page: u64,
    to: AtomicU64,
}

impl CpuMemory for Movable {
    fn virt_to_phys(&self, va: usize, len: usize) -> Option<(PhysAddr, usize)> {
        let va = va as u64;
        if (self.page..self.page + PAGE as u64).contains(&va) {
            let to = self.to.load(Ordering::Relaxed);
            let pa = to + (va - self.page);
            return Some((
                PhysAddr(pa),
                len.min((self.page + PAGE as u64 - va) as usize),
            ));
        }
        Some((PhysAddr(va), len))
    }
}

#[test]
fn a_parked_mapping_is_not_reused_once_its_pages_moved() {
    let clock = || 0u64;
    let queue = FlushQueue::with_capacity(WIDE, &clock, 16);
    let host = HostPages::new(1, 0);
    let elsewhere = HostPages::new(1, 0);
    let memory = Movable {
        page: host.addr(0),
        to: AtomicU64::new(host.addr(0)),
    };
    run::<16>(
        &memory,
        Some(&queue),
        |m, dma, memory| DmaShares::new(m, dma, memory),
        |rig, shares| {
            let share = |buf, direction| {
                // SAFETY: every buffer is host memory that outlives the table.
                unsafe { shares.share(buf, direction) }.unwrap()
            };
            let unshare = |dev, buf, direction| {
                // SAFETY: the buffer and direction given to `share` for `dev`.
                unsafe { shares.unshare(dev, buf, direction) }
            };
            let buf = host.slice(0, PAGE);
            let a = share(buf, DeviceToDriver);
            unshare(a, buf, DeviceToDriver).unwrap();
            memory.to.store(elsewhere.addr(0), Ordering::Relaxed);
            let b = share(buf, DeviceToDriver);
            assert_ne!(b, a, "mapped afresh");
            assert_eq!(shares.counters().reused, 0);
            assert_eq!(
                rig.target(b.0, Access::Write).unwrap() as u64,
                elsewhere.addr(0)
            );
            unshare(b, buf, DeviceToDriver).unwrap();
            assert_eq!(shares.parked(), 2);
        },
    );
}

#[test]
fn parked_mappings_go_by_age_bytes_and_a_full_table() {
    let now = AtomicU64::new(0);
    let clock = || now.load(Ordering::Relaxed);
    let limits = DeferLimits {
        max_entries: 100,
        max_bytes: 3 * PAGE as u64,
        max_age: 10,
    };
    let queue = FlushQueue::with_capacity(limits, &clock, 16);
    run::<4>(
        &IdentityMapped,
        Some(&queue),
        |m, dma, memory| DmaShares::new(m, dma, memory),
        |rig, shares| {
            let share = |buf, direction| {
                // SAFETY: every buffer is host memory that outlives the table.
                unsafe { shares.share(buf, direction) }.unwrap()
            };
            let unshare = |dev, buf, direction| {
                // SAFETY: the buffer and direction given to `share` for `dev`.
                unsafe { shares.unshare(dev, buf, direction) }
            };
            let hosts: Vec<HostPages> = (0..6).map(|_| HostPages::new(1, 0)).collect();
            let cycle = |h: &HostPages| {
                let buf = h.slice(0, PAGE);
                let dev = share(buf, DeviceToDriver);
                rig.dev_write(dev.0, &[1]).unwrap();
                unshare(dev, buf, DeviceToDriver).unwrap();
                dev
            };
            // Bytes: three pages parked at most; the oldest goes first.
            let first = cycle(&hosts[0]);
            for h in &hosts[1..4] {
                cycle(h);
            }
            assert_eq!((shares.parked(), queue.pending()), (3, 1));
            assert!(
                rig.target(first.0, Access::Write).is_ok(),
                "evicted into the queue: reachable until it flushes"
            );
            // Age: flush_expired evicts what is max_age old.
            now.store(10, Ordering::Relaxed);
            shares.flush_expired().unwrap();
            assert_eq!(shares.parked(), 0);
            // A full table (4 entries) gives up parked mappings for live
            // shares: nothing fails.
            for h in &hosts[..3] {
                cycle(h);
            }
            let live: Vec<_> = hosts[3..6]
                .iter()
                .map(|h| {
                    let buf = h.slice(0, PAGE);
                    (share(buf, DriverToDevice), buf)
                })
                .collect();
            assert_eq!((shares.live(), shares.parked()), (3, 1));
            for (dev, buf) in live {
                unshare(dev, buf, DriverToDevice).unwrap();
            }
            assert_eq!(shares.counters().failures, 0);
            shares.flush_deferred().unwrap();
            assert_eq!((shares.parked(), queue.pending()), (0, 0));
        },
    );
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

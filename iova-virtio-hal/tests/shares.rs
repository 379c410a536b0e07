//! `DmaShares` without a bounce pool against iova-core's fake IOMMU (the
//! rig: `common`).

mod common;

use std::ptr::NonNull;

use common::{HostPages, PAGE, pattern, with_rig};
use iova_core::fakes::{Access, Fault};
use iova_core::{Iova, PhysAddr};
use iova_virtio_hal::{CpuMemory, IdentityMapped, MAX_PIECES, ShareError};
use virtio_drivers::BufferDirection::{Both, DeviceToDriver, DriverToDevice};

#[test]
fn aligned_buffer_is_mapped_in_place_and_unreachable_after_unshare() {
    with_rig::<8>(&IdentityMapped, |rig, shares| {
        let host = HostPages::new(2, 0);
        let buf = host.slice(0, 2 * PAGE);
        // SAFETY: `host` outlives the share.
        let dev = unsafe { shares.share(buf, DeviceToDriver) }.unwrap();
        assert_ne!(
            dev.0,
            host.addr(0),
            "the device gets an IOVA, not the physical address"
        );
        for off in [0, 0x123, PAGE, 2 * PAGE - 1] {
            assert_eq!(
                rig.target(dev.0 + off as u64, Access::Write).unwrap() as u64,
                host.addr(off),
                "in place"
            );
        }
        let data = pattern(2 * PAGE, 7);
        rig.dev_write(dev.0, &data).unwrap();
        let flushes = rig.domain.invalidator().flushes();
        // SAFETY: same buffer as shared.
        unsafe { shares.unshare(dev, buf, DeviceToDriver) }.unwrap();
        assert!(
            rig.domain.invalidator().flushes() > flushes,
            "unshare flushed (strict)"
        );
        assert_eq!(host.bytes(), &data[..]);
        assert_eq!(
            rig.target(dev.0, Access::Write),
            Err(Fault::Translation(dev))
        );
        assert_eq!(rig.leaves(), 0);
        let c = shares.counters();
        assert_eq!(
            (c.shares, c.unshares, c.bounced, c.bounce_bytes, c.failures),
            (1, 1, 0, 0, 0)
        );
        assert_eq!(rig.dma.live(), 0);
    });
}

#[test]
fn partial_granules_are_bounced_and_the_neighbours_unreachable() {
    with_rig::<8>(&IdentityMapped, |rig, shares| {
        let host = HostPages::new(4, 0xEE);
        // Head 0xff0 bytes of page 0, all of page 1, tail 0x10 bytes of page 2.
        let (off, len) = (0x10, 0x2000);
        let original = pattern(len, 3);
        host.write(off, &original);
        let buf = host.slice(off, len);
        // SAFETY: `host` outlives the share.
        let dev = unsafe { shares.share(buf, Both) }.unwrap();
        assert_eq!(dev.0 % PAGE as u64, off as u64, "same offset in the page");
        assert_eq!(
            rig.dev_read(dev.0, len).unwrap(),
            original,
            "device reads the buffer"
        );
        // The head's page is a bounce page, the middle page is the buffer's.
        let head = rig.target(dev.0, Access::Read).unwrap() as u64;
        assert!(
            head < host.addr(0) || head >= host.addr(4 * PAGE),
            "head bounced"
        );
        assert_eq!(
            rig.target(dev.0 + 0xff0, Access::Read).unwrap() as u64,
            host.addr(PAGE)
        );
        // The bytes around the buffer in its first and last IOVA pages are zeros.
        assert_eq!(rig.dev_read(dev.0 - off as u64, off).unwrap(), vec![0; off]);
        assert_eq!(
            rig.dev_read(dev.0 + len as u64, 0x20).unwrap(),
            vec![0; 0x20]
        );
        // The device scribbles over every byte it can reach.
        let page0 = dev.0 - off as u64;
        rig.dev_write(page0, &vec![0xAA; 3 * PAGE]).unwrap();
        assert_eq!(
            rig.dev_write(page0 + 3 * PAGE as u64, &[0xAA]),
            Err(Fault::Translation(Iova(page0 + 3 * PAGE as u64)))
        );
        // SAFETY: same buffer as shared.
        unsafe { shares.unshare(dev, buf, Both) }.unwrap();
        let bytes = host.bytes();
        assert!(
            bytes[off..off + len].iter().all(|&b| b == 0xAA),
            "device data copied back"
        );
        assert!(
            bytes[..off]
                .iter()
                .chain(&bytes[off + len..])
                .all(|&b| b == 0xEE),
            "neighbours untouched"
        );
        let c = shares.counters();
        assert_eq!(c.bounced, 1);
        assert_eq!(c.bounce_bytes, 2 * (0xff0 + 0x10), "copied in and back");
        assert_eq!((rig.dma.live(), rig.leaves()), (0, 0));
    });
}

#[test]
fn small_driver_to_device_buffer_is_read_only_and_not_copied_back() {
    with_rig::<8>(&IdentityMapped, |rig, shares| {
        let host = HostPages::new(1, 0x11);
        let header = pattern(16, 9);
        host.write(0x7f3, &header);
        let buf = host.slice(0x7f3, 16);
        // SAFETY: `host` outlives the share.
        let dev = unsafe { shares.share(buf, DriverToDevice) }.unwrap();
        assert_eq!(rig.dev_read(dev.0, 16).unwrap(), header);
        assert_eq!(
            rig.dev_write(dev.0, &[0]),
            Err(Fault::Permission(dev, Access::Write))
        );
        // The driver changes its copy meanwhile: nothing may overwrite it.
        host.write(0x7f3, &[0x5A; 16]);
        // SAFETY: same buffer as shared.
        unsafe { shares.unshare(dev, buf, DriverToDevice) }.unwrap();
        assert_eq!(&host.bytes()[0x7f3..0x803], &[0x5A; 16]);
        assert_eq!(shares.counters().bounce_bytes, 16, "copied in only");
        assert_eq!(rig.dma.live(), 0);
    });
}

#[test]
fn device_to_driver_keeps_the_bytes_the_device_did_not_write() {
    with_rig::<8>(&IdentityMapped, |rig, shares| {
        let host = HostPages::new(1, 0);
        let original = pattern(100, 1);
        host.write(0x40, &original);
        let buf = host.slice(0x40, 100);
        // SAFETY: `host` outlives the share.
        let dev = unsafe { shares.share(buf, DeviceToDriver) }.unwrap();
        rig.dev_write(dev.0, &[0xC3; 10]).unwrap();
        // SAFETY: same buffer as shared.
        unsafe { shares.unshare(dev, buf, DeviceToDriver) }.unwrap();
        let got = &host.bytes()[0x40..0x40 + 100];
        assert_eq!(&got[..10], &[0xC3; 10]);
        assert_eq!(&got[10..], &original[10..]);
    });
}

#[test]
fn dma_memory_is_zeroed_mapped_by_direction_and_freed() {
    with_rig::<8>(&IdentityMapped, |rig, shares| {
        let (dev, cpu) = shares.alloc(2, Both).unwrap();
        // The CPU's view, read afresh after the device wrote (a slice held
        // across the device's write would alias it).
        // SAFETY: two pages allocated for us; nothing writes while it lives.
        let mem = || unsafe { std::slice::from_raw_parts(cpu.as_ptr(), 2 * PAGE) };
        assert!(mem().iter().all(|&b| b == 0));
        assert_eq!(cpu.as_ptr() as usize % PAGE, 0);
        rig.dev_write(dev.0 + 0x1800, &[1, 2, 3]).unwrap();
        assert_eq!(&mem()[0x1800..0x1803], &[1, 2, 3]);
        // Three pages take a four-page frame; the device reaches it all, no more.
        let (ro, ro_cpu) = shares.alloc(3, DriverToDevice).unwrap();
        assert_eq!(
            rig.dev_read(ro.0 + 4 * PAGE as u64 - 1, 1).unwrap(),
            vec![0]
        );
        assert!(rig.dev_read(ro.0 + 4 * PAGE as u64, 1).is_err());
        assert_eq!(
            rig.dev_write(ro.0, &[1]),
            Err(Fault::Permission(ro, Access::Write))
        );
        assert_eq!(rig.dma.live(), 2);
        // Wrong size: refused, still mapped.
        // SAFETY: refused before anything is freed.
        assert_eq!(
            // SAFETY: refused before the buffer is touched, or as shared.
            unsafe { shares.dealloc(dev, cpu, 1) },
            Err(ShareError::NotShared)
        );
        assert!(rig.dev_read(dev.0, 1).is_ok());
        // SAFETY: what alloc returned; not used afterwards.
        unsafe { shares.dealloc(dev, cpu, 2) }.unwrap();
        // SAFETY: as above.
        unsafe { shares.dealloc(ro, ro_cpu, 3) }.unwrap();
        assert_eq!((rig.dma.live(), rig.leaves(), shares.live()), (0, 0, 0));
        assert!(rig.dev_read(dev.0, 1).is_err(), "flushed");
        let c = shares.counters();
        assert_eq!((c.allocs, c.deallocs, c.failures), (2, 2, 1));
        assert_eq!(shares.take_error(), Some(ShareError::NotShared));
        assert_eq!(shares.take_error(), None);
    });
}

#[test]
fn unshare_of_what_was_not_shared_changes_nothing() {
    with_rig::<8>(&IdentityMapped, |rig, shares| {
        let host = HostPages::new(1, 0);
        let buf = host.slice(0x100, 0x80);
        // SAFETY: `host` outlives the share.
        let dev = unsafe { shares.share(buf, Both) }.unwrap();
        let other = host.slice(0x100, 0x40);
        // SAFETY: refused before anything is touched.
        unsafe {
            assert_eq!(
                shares.unshare(Iova(dev.0 + 0x1000), buf, Both),
                Err(ShareError::NotShared)
            );
            assert_eq!(shares.unshare(dev, other, Both), Err(ShareError::NotShared));
            assert_eq!(
                shares.unshare(dev, buf, DeviceToDriver),
                Err(ShareError::NotShared)
            );
        }
        assert_eq!(shares.live(), 1);
        assert!(rig.dev_read(dev.0, 0x80).is_ok(), "still mapped");
        assert_eq!(shares.counters().failures, 3);
        // SAFETY: the real one.
        unsafe { shares.unshare(dev, buf, Both) }.unwrap();
    });
}

#[test]
fn running_out_of_bounce_pages_unwinds_the_share() {
    with_rig::<8>(&IdentityMapped, |rig, shares| {
        let host = HostPages::new(3, 0);
        let tables = rig.tables.live();
        // Head bounce succeeds, tail bounce fails.
        rig.dma.fail_after(1);
        // SAFETY: `host` outlives the call.
        let r = unsafe { shares.share(host.slice(0x10, 0x2000), Both) };
        assert_eq!(r, Err(ShareError::NoMemory));
        assert_eq!((rig.dma.live(), rig.leaves(), shares.live()), (0, 0, 0));
        assert_eq!(rig.tables.live(), tables, "no table was built");
        rig.dma.unlimited();
        assert_eq!(shares.take_error(), Some(ShareError::NoMemory));
        // The IOVA space is whole again: the whole window but the poison page.
        let all = rig.iovas.aperture().len() - 0x1000;
        let big = rig.iovas.alloc(0, all, 0x1000).unwrap();
        rig.iovas.free(0, big).unwrap();
    });
}

#[test]
fn running_out_of_page_table_memory_mid_share_unwinds_it() {
    with_rig::<8>(&IdentityMapped, |rig, shares| {
        let host = HostPages::new(3, 0);
        rig.tables.fail_after(1); // the first missing table is built, the next not
        // SAFETY: `host` outlives the call.
        let r = unsafe { shares.share(host.slice(0x10, 0x2000), Both) };
        assert_eq!(r, Err(ShareError::Map(iova_core::Error::NoMemory)));
        assert_eq!((rig.dma.live(), rig.leaves(), shares.live()), (0, 0, 0));
        rig.tables.unlimited();
        // And DMA memory the same way.
        // Nothing was published, so DMA memory needs tables too: none to be had.
        rig.tables.fail_after(0);
        assert_eq!(
            shares.alloc(1, Both).map(|_| ()),
            Err(ShareError::Map(iova_core::Error::NoMemory))
        );
        assert_eq!((rig.dma.live(), rig.leaves(), shares.live()), (0, 0, 0));
        rig.tables.unlimited();
        assert!(
            shares.alloc(1, Both).is_ok(),
            "works again once memory is back"
        );
    });
}

#[test]
fn a_failed_flush_on_unshare_quarantines_until_reclaimed() {
    with_rig::<8>(&IdentityMapped, |rig, shares| {
        let host = HostPages::new(2, 0);
        let buf = host.slice(0x10, 0x1000);
        // SAFETY: `host` outlives the share.
        let dev = unsafe { shares.share(buf, DeviceToDriver) }.unwrap();
        rig.dev_write(dev.0, &[0x77; 0x1000]).unwrap(); // also fills the device's TLB
        rig.domain.invalidator().fail_next_flushes(1);
        // SAFETY: same buffer as shared.
        let r = unsafe { shares.unshare(dev, buf, DeviceToDriver) };
        assert!(matches!(r, Err(ShareError::Teardown(_))), "{r:?}");
        assert!(
            host.bytes()[0x10..0x1010].iter().all(|&b| b == 0x77),
            "data still copied back"
        );
        // The device still reaches the bounce pages through its stale TLB: they are kept.
        assert!(rig.dev_write(dev.0, &[1]).is_ok());
        assert_eq!((rig.dma.live(), shares.stuck()), (2, 1));
        // A second unshare is refused: the share is no longer the driver's.
        // SAFETY: refused.
        assert_eq!(
            // SAFETY: refused before the buffer is touched, or as shared.
            unsafe { shares.unshare(dev, buf, DeviceToDriver) },
            Err(ShareError::NotShared)
        );
        assert_eq!(shares.reclaim(), 1);
        assert_eq!((rig.dma.live(), shares.live(), rig.leaves()), (0, 0, 0));
        assert!(rig.dev_write(dev.0, &[1]).is_err());
    });
}

#[test]
fn a_full_table_refuses_and_unwinds() {
    with_rig::<2>(&IdentityMapped, |rig, shares| {
        let host = HostPages::new(3, 0);
        let bufs = [
            host.slice(0, 0x10),
            host.slice(PAGE, PAGE),
            host.slice(2 * PAGE + 8, 8),
        ];
        // SAFETY: `host` outlives the shares.
        unsafe {
            let a = shares.share(bufs[0], Both).unwrap();
            let b = shares.share(bufs[1], Both).unwrap();
            assert_eq!(shares.share(bufs[2], Both), Err(ShareError::Full));
            assert_eq!(shares.alloc(1, Both).map(|_| ()), Err(ShareError::Full));
            assert_eq!((rig.leaves(), rig.dma.live()), (2, 1));
            shares.unshare(a, bufs[0], Both).unwrap();
            shares.unshare(b, bufs[1], Both).unwrap();
        }
        assert_eq!(rig.dma.live(), 0);
    });
}

/// Swaps each pair of CPU pages in `[base, base + 16 pages)` physically, and
/// reports a misaligned physical address for the page at `base + 16 pages`.
struct Shuffled {
    base: usize,
}

impl CpuMemory for Shuffled {
    fn virt_to_phys(&self, va: usize, len: usize) -> Option<(PhysAddr, usize)> {
        let off = va.checked_sub(self.base)?;
        match off / PAGE {
            0..16 => {
                let page = (off / PAGE) ^ 1;
                let run = (PAGE - off % PAGE).min(len);
                Some((PhysAddr((self.base + page * PAGE + off % PAGE) as u64), run))
            }
            16 => Some((PhysAddr(va as u64 + 0x10), len.min(PAGE))),
            _ => None,
        }
    }
}

#[test]
fn scattered_physical_pages_are_mapped_where_they_are() {
    let host = HostPages::new(18, 0);
    let memory = Shuffled {
        base: host.addr(0) as usize,
    };
    with_rig::<8>(&memory, |rig, shares| {
        let buf = host.slice(0, 4 * PAGE);
        // SAFETY: `host` outlives the share.
        let dev = unsafe { shares.share(buf, Both) }.unwrap();
        for (iova_page, cpu_page) in [(0, 1), (1, 0), (2, 3), (3, 2)] {
            let at = rig
                .target(dev.0 + (iova_page * PAGE) as u64, Access::Read)
                .unwrap();
            assert_eq!(at as u64, host.addr(cpu_page * PAGE));
        }
        // SAFETY: same buffer.
        unsafe { shares.unshare(dev, buf, Both) }.unwrap();
        // Sixteen runs do not fit in MAX_PIECES links.
        const { assert!(16 > MAX_PIECES) };
        // SAFETY: refused.
        assert_eq!(
            // SAFETY: refused before the buffer is touched, or as shared.
            unsafe { shares.share(host.slice(0, 16 * PAGE), Both) },
            Err(ShareError::Scattered)
        );
        // A physical run starting inside a granule cannot be mapped in place.
        // SAFETY: refused.
        assert_eq!(
            // SAFETY: refused before the buffer is touched, or as shared.
            unsafe { shares.share(host.slice(16 * PAGE, PAGE), Both) },
            Err(ShareError::Untranslatable)
        );
        // Not memory at all.
        // SAFETY: refused.
        assert_eq!(
            // SAFETY: refused before the buffer is touched, or as shared.
            unsafe { shares.share(host.slice(17 * PAGE, PAGE), Both) },
            Err(ShareError::Untranslatable)
        );
        assert_eq!((rig.leaves(), rig.dma.live(), shares.live()), (0, 0, 0));
    });
}

#[test]
fn empty_and_wrapping_requests_are_refused() {
    with_rig::<8>(&IdentityMapped, |_, shares| {
        let host = HostPages::new(1, 0);
        // SAFETY: refused before any access.
        unsafe {
            assert_eq!(shares.share(host.slice(0, 0), Both), Err(ShareError::Empty));
            let wrap = NonNull::slice_from_raw_parts(
                NonNull::new(std::ptr::without_provenance_mut::<u8>(usize::MAX - 0xf)).unwrap(),
                0x20,
            );
            assert_eq!(shares.share(wrap, Both), Err(ShareError::Overflow));
        }
        assert_eq!(shares.alloc(0, Both).map(|_| ()), Err(ShareError::Empty));
        assert_eq!(
            shares.alloc(usize::MAX / 2, Both).map(|_| ()),
            Err(ShareError::Overflow)
        );
        assert_eq!(shares.live(), 0);
    });
}

#[test]
fn the_poison_address_is_never_mapped() {
    with_rig::<8>(&IdentityMapped, |rig, shares| {
        let host = HostPages::new(8, 0);
        let mut devs = Vec::new();
        for i in 0..8 {
            // SAFETY: `host` outlives the shares.
            devs.push(unsafe { shares.share(host.slice(i * PAGE, PAGE), Both) }.unwrap());
        }
        assert!(
            devs.iter()
                .all(|d| d.0 / PAGE as u64 != shares.poison().0 / PAGE as u64)
        );
        assert!(rig.target(shares.poison().0, Access::Read).is_err());
        for (i, d) in devs.into_iter().enumerate() {
            // SAFETY: as shared.
            unsafe { shares.unshare(d, host.slice(i * PAGE, PAGE), Both) }.unwrap();
        }
    });
}

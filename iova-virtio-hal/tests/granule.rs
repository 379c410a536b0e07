//! `DmaShares` over a virtio-iommu domain at 4 KiB, 16 KiB and 64 KiB
//! granules (iommu-virtio's fake device with `page_size_mask` from the
//! granule up, as QEMU's `granule=` sets it). `virtio_drivers::PAGE_SIZE`
//! stays 4 KiB: DMA memory, bounce pages and pool slots are rounded up to
//! whole granules, and whatever granule the device can reach holds only the
//! allocation's or the buffer's own bytes, or zeros; never a neighbour's.
//!
//! The device's view is the fake's translation ([`FakeIommu::dma`]) of
//! each IOVA, followed to host memory.
//!
//! The fake turns integers into pointers (its "physical" addresses are host
//! pointers), so Miri runs this file with permissive provenance
//! (`miri-iova-virtio-hal-granule`), apart from the crate's other tests;
//! the tests sit in a module of their own for that.

mod over_virtio_iommu {
    use std::alloc::{Layout, alloc_zeroed, dealloc};
    use std::ptr::NonNull;
    use std::sync::Mutex;

    use iommu_virtio::fake::{FakeConfig, FakeIommu, FakeTransport, HostHal, patient};
    use iommu_virtio::{VirtioDomain, VirtioIommu};
    use iova_core::fakes::{FAKE_PHYS_BASE, FakeFrames};
    use iova_core::flush_queue::{DeferLimits, FlushQueue};
    use iova_core::iova_alloc::IovaAllocatorConfig;
    use iova_core::{DmaMapper, FrameAllocator, Iova, IovaAllocator, IovaRange, PhysAddr};
    use iova_virtio_hal::{DmaShares, IdentityMapped, PoolConfig, ShareError};
    use virtio_drivers::BufferDirection::{self, Both, DeviceToDriver, DriverToDevice};
    use virtio_drivers::PAGE_SIZE;

    const EP: u32 = 0x10;
    const GRANULES: [usize; 3] = [0x1000, 0x4000, 0x1_0000];
    const DMA_BYTES: usize = 8 << 20;
    /// What the memory around every buffer holds: a byte the device must never
    /// see or change.
    const NEIGHBOUR: u8 = 0xa5;

    type Iommu = VirtioIommu<HostHal, FakeTransport, 256>;
    type Domain<'a> = VirtioDomain<'a, HostHal, FakeTransport, 256>;

    /// The fake virtio-iommu at granule `g`, domain 1 with `EP` attached, an
    /// IOVA allocator in granules, DMA memory.
    struct Rig<'a> {
        fake: &'a FakeIommu,
        iommu: &'a Iommu,
        domain: &'a Domain<'a>,
        iovas: &'a IovaAllocator<'a>,
        dma: &'a FakeFrames,
    }

    fn with_rig(g: usize, f: impl FnOnce(&Rig<'_>)) {
        let (fake, t) = FakeIommu::new(FakeConfig {
            page_size_mask: !(g as u64 - 1),
            ..FakeConfig::default()
        });
        let iommu = Iommu::new(t, patient()).unwrap();
        assert_eq!(iommu.geometry().granule, g as u64);
        let domain = Domain::new(&iommu, 1).unwrap();
        domain.attach(EP).unwrap();
        let window = IovaRange::new(Iova(0x10_0000_0000), 1 << 32).unwrap();
        let iovas = IovaAllocator::with_capacity(IovaAllocatorConfig::new(window, g as u64), 64, 1)
            .unwrap();
        let dma = FakeFrames::with_capacity(DMA_BYTES);
        let rig = Rig {
            fake: &fake,
            iommu: &iommu,
            domain: &domain,
            iovas: &iovas,
            dma: &dma,
        };
        f(&rig);
        assert_eq!(dma.bad_frees(), 0);
        assert_eq!(dma.live(), 0, "every frame went back");
        assert_eq!(fake.mappings(1), Some(vec![]), "nothing left mapped");
    }

    impl Rig<'_> {
        fn mapper(&self) -> DmaMapper<'_, Domain<'_>> {
            static CPU: fn() -> usize = || 0;
            DmaMapper::new(self.domain, self.iovas, &CPU).unwrap()
        }

        /// Where the device's access at `iova` lands: a host pointer, or `None`
        /// if the IOMMU blocks it (the fault is drained).
        fn target(&self, iova: u64, write: bool) -> Option<*mut u8> {
            let Some(pa) = self.fake.dma(EP, iova, write) else {
                while self.iommu.pop_fault().is_some() {}
                return None;
            };
            Some(
                if (FAKE_PHYS_BASE..FAKE_PHYS_BASE + DMA_BYTES as u64).contains(&pa) {
                    self.dma.phys_to_virt(PhysAddr(pa))
                } else {
                    host_ptr(pa)
                },
            )
        }

        /// The device reads `[iova, iova + len)`, one translation per 4 KiB
        /// (the smallest page any granule here maps): `None` if any is blocked.
        fn dev_read(&self, iova: u64, len: usize) -> Option<Vec<u8>> {
            let mut out = Vec::with_capacity(len);
            let (mut at, end) = (iova, iova + len as u64);
            while at < end {
                let n = (0x1000 - at % 0x1000).min(end - at) as usize;
                let p = self.target(at, false)?;
                // SAFETY: the fake translates only to memory of the test (DMA
                // frames, host buffers); `n` bytes stay inside one 4 KiB page.
                out.extend_from_slice(unsafe { std::slice::from_raw_parts(p, n) });
                at += n as u64;
            }
            Some(out)
        }

        /// The device writes `bytes` at `iova`; `false` if any part is blocked
        /// (the parts before it are written).
        fn dev_write(&self, iova: u64, bytes: &[u8]) -> bool {
            let (mut at, mut done) = (iova, 0);
            while done < bytes.len() {
                let n = ((0x1000 - at % 0x1000) as usize).min(bytes.len() - done);
                let Some(p) = self.target(at, true) else {
                    return false;
                };
                // SAFETY: as in `dev_read`.
                unsafe { p.copy_from_nonoverlapping(bytes[done..].as_ptr(), n) };
                at += n as u64;
                done += n;
            }
            true
        }

        /// The granule-aligned IOVA range around `[dev, dev + len)`: what a
        /// share of those bytes maps.
        fn around(&self, g: usize, dev: Iova, len: usize) -> (u64, usize) {
            let g = g as u64;
            let start = dev.0 & !(g - 1);
            let end = (dev.0 + len as u64).next_multiple_of(g);
            (start, (end - start) as usize)
        }
    }

    /// Host memory aligned to `align`, filled with [`NEIGHBOUR`]: the driver's
    /// buffers and the memory around them.
    struct Host {
        ptr: *mut u8,
        len: usize,
        align: usize,
    }

    /// Live host regions, to turn a physical (= host) address back into a
    /// pointer with the region's provenance.
    static HOST: Mutex<Vec<(usize, usize, SendPtr)>> = Mutex::new(Vec::new());

    #[derive(Clone, Copy)]
    struct SendPtr(*mut u8);
    // SAFETY: only used to rebuild pointers into regions the test owns.
    unsafe impl Send for SendPtr {}

    fn host_ptr(pa: u64) -> *mut u8 {
        let pa = pa as usize;
        let host = HOST.lock().unwrap();
        let &(addr, _, SendPtr(p)) = host
            .iter()
            .find(|&&(a, len, _)| (a..a + len).contains(&pa))
            .unwrap_or_else(|| {
                panic!("the device reached {pa:#x}, which is no memory of the test")
            });
        p.wrapping_add(pa - addr)
    }

    impl Host {
        fn new(len: usize, align: usize) -> Self {
            // SAFETY: non-zero size.
            let ptr = unsafe { alloc_zeroed(Layout::from_size_align(len, align).unwrap()) };
            assert!(!ptr.is_null());
            // SAFETY: just allocated, `len` bytes.
            unsafe { ptr.write_bytes(NEIGHBOUR, len) };
            HOST.lock().unwrap().push((ptr as usize, len, SendPtr(ptr)));
            Self { ptr, len, align }
        }
        fn slice(&self, off: usize, len: usize) -> NonNull<[u8]> {
            assert!(off + len <= self.len);
            // SAFETY: in bounds.
            NonNull::slice_from_raw_parts(NonNull::new(unsafe { self.ptr.add(off) }).unwrap(), len)
        }
        fn bytes(&self) -> &[u8] {
            // SAFETY: allocated and initialised; nothing writes during the borrow.
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }
        fn write(&self, off: usize, bytes: &[u8]) {
            // SAFETY: in bounds (`slice` checks); nobody else accesses it now.
            unsafe {
                self.slice(off, bytes.len())
                    .cast::<u8>()
                    .as_ptr()
                    .copy_from(bytes.as_ptr(), bytes.len())
            };
        }
    }

    impl Drop for Host {
        fn drop(&mut self) {
            HOST.lock()
                .unwrap()
                .retain(|&(a, _, _)| a != self.ptr as usize);
            // SAFETY: allocated in `new` with this layout.
            unsafe {
                dealloc(
                    self.ptr,
                    Layout::from_size_align(self.len, self.align).unwrap(),
                )
            };
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(13) ^ seed ^ 0x5a)
            .map(|b| if b == NEIGHBOUR { 0x11 } else { b })
            .collect()
    }

    #[test]
    fn dma_memory_is_whole_granules_of_its_own() {
        for g in GRANULES {
            with_rig(g, |rig| {
                let shares: DmaShares<'_, _, 8> =
                    DmaShares::new(rig.mapper(), rig.dma, &IdentityMapped).unwrap();
                assert_eq!(shares.granule(), g.max(PAGE_SIZE));
                // virtio-drivers asks for its queues in 4 KiB pages.
                for pages in [1usize, 2, 3] {
                    let (dev, cpu) = shares.alloc(pages, Both).unwrap();
                    let size = (pages * PAGE_SIZE).max(g).next_power_of_two();
                    assert_eq!(dev.0 % g as u64, 0, "granule {g:#x}");
                    assert_eq!(cpu.as_ptr() as usize % PAGE_SIZE, 0);
                    // One MAP of the whole allocation, granule aligned on both
                    // sides.
                    let maps = rig.fake.mappings(1).unwrap();
                    let m = maps.iter().find(|m| m.start == dev.0).unwrap();
                    assert_eq!(m.end + 1 - m.start, size as u64, "granule {g:#x}");
                    assert_eq!(m.phys % g as u64, 0);
                    // All of it is the allocation's zeroed memory: what the
                    // device writes anywhere in it, the CPU reads there.
                    assert_eq!(rig.dev_read(dev.0, size).unwrap(), vec![0; size]);
                    let p = pattern(size, pages as u8);
                    assert!(rig.dev_write(dev.0, &p));
                    // SAFETY: `size` bytes of the allocation (the CPU pointer
                    // covers the frame), nothing else uses them now.
                    let seen = unsafe { std::slice::from_raw_parts(cpu.as_ptr(), size) };
                    assert_eq!(seen, p.as_slice(), "granule {g:#x}, {pages} pages");
                    // Past it: not mapped.
                    assert_eq!(rig.dev_read(dev.0 + size as u64, 1), None);
                    // SAFETY: from `alloc`, not used again.
                    unsafe { shares.dealloc(dev, cpu, pages) }.unwrap();
                    assert_eq!(rig.dev_read(dev.0, 1), None, "unmapped on dealloc");
                }
                // Two allocations never share a granule.
                let (a, ca) = shares.alloc(1, DeviceToDriver).unwrap();
                let (b, cb) = shares.alloc(1, DeviceToDriver).unwrap();
                let pa = |d: Iova| rig.fake.dma(EP, d.0, true).unwrap() / g as u64;
                assert_ne!(pa(a), pa(b));
                // SAFETY: from `alloc`, not used again.
                unsafe {
                    shares.dealloc(a, ca, 1).unwrap();
                    shares.dealloc(b, cb, 1).unwrap();
                }
                assert_eq!(shares.counters().failures, 0);
            });
        }
    }

    /// Shapes of buffers at granule `g`: inside one granule, straddling two,
    /// partial at both ends around whole granules, aligned, aligned start
    /// with a partial end.
    fn shapes(g: usize) -> Vec<(usize, usize)> {
        let all = vec![
            (g + 0x10, 0x10),
            (g + 0x1000, 0x1000),
            (2 * g - 0x20, 0x40),
            (g + g / 2 + 0x123, 2 * g + 0x345),
            (g, 2 * g),
            (g, g + 1),
        ];
        if cfg!(miri) {
            all.into_iter().skip(3).take(1).collect()
        } else {
            all
        }
    }

    #[test]
    fn partial_granules_are_bounced_and_no_neighbour_byte_is_exposed() {
        for g in GRANULES {
            with_rig(g, |rig| {
                let shares: DmaShares<'_, _, 8> =
                    DmaShares::new(rig.mapper(), rig.dma, &IdentityMapped).unwrap();
                let host = Host::new(6 * g, g);
                for (i, (off, len)) in shapes(g).into_iter().enumerate() {
                    for direction in [DriverToDevice, DeviceToDriver, Both] {
                        check_share(rig, &shares, &host, g, off, len, direction, i as u8);
                    }
                }
                let c = shares.counters();
                assert_eq!((c.failures, c.shares, c.unshares), (0, c.shares, c.shares));
            });
        }
    }

    /// One share of `host[off..off + len]` for `direction`: what the device
    /// reads and writes through every granule it can reach around the buffer.
    #[allow(clippy::too_many_arguments)]
    fn check_share(
        rig: &Rig<'_>,
        shares: &DmaShares<'_, Domain<'_>, 8>,
        host: &Host,
        g: usize,
        off: usize,
        len: usize,
        direction: BufferDirection,
        seed: u8,
    ) {
        let what = format!("granule {g:#x}, {off:#x}+{len:#x} {direction:?}");
        let data = pattern(len, seed);
        host.write(off, &data);
        let buf = host.slice(off, len);
        // SAFETY: `host` outlives the share; nothing else touches it meanwhile.
        let dev = unsafe { shares.share(buf, direction) }.unwrap();
        assert_eq!(dev.0 % g as u64, (off % g) as u64, "{what}");
        let (start, span) = rig.around(g, dev, len);
        // Every mapping of the domain lies in whole granules, and those around
        // the buffer are all the device reaches.
        for m in rig.fake.mappings(1).unwrap() {
            assert_eq!((m.start % g as u64, (m.end + 1) % g as u64), (0, 0));
            assert_eq!(m.phys % g as u64, 0);
        }
        let before = (dev.0 - start) as usize;
        if direction != DeviceToDriver {
            // The device reads the buffer, and zeros around it (bounce pages),
            // never the neighbours' bytes.
            let seen = rig.dev_read(start, span).unwrap();
            assert_eq!(&seen[before..before + len], data.as_slice(), "{what}");
            assert!(
                seen[..before]
                    .iter()
                    .chain(&seen[before + len..])
                    .all(|&b| b == 0),
                "{what}: the device read bytes outside the buffer"
            );
        } else {
            assert_eq!(rig.dev_read(start, 1), None, "{what}: write-only");
        }
        if direction != DriverToDevice {
            // The device writes every byte it can reach.
            let all = pattern(span, seed ^ 0x33);
            assert!(rig.dev_write(start, &all), "{what}");
            // SAFETY: the buffer given to `share`.
            unsafe { shares.unshare(dev, buf, direction) }.unwrap();
            let now = host.bytes();
            assert_eq!(
                &now[off..off + len],
                &all[before..before + len],
                "{what}: the buffer holds what the device wrote"
            );
            assert!(
                now[..off]
                    .iter()
                    .chain(&now[off + len..])
                    .all(|&b| b == NEIGHBOUR),
                "{what}: the device changed memory next to the buffer"
            );
        } else {
            assert!(!rig.dev_write(start, &[1]), "{what}: read-only");
            // SAFETY: the buffer given to `share`.
            unsafe { shares.unshare(dev, buf, direction) }.unwrap();
            assert!(host.bytes()[..off].iter().all(|&b| b == NEIGHBOUR));
        }
        assert_eq!(rig.dev_read(dev.0, 1), None, "{what}: unmapped on unshare");
        // Back to the neighbours' byte for the next shape.
        host.write(off, &vec![NEIGHBOUR; len]);
        assert!(host.bytes().iter().all(|&b| b == NEIGHBOUR));
    }

    #[test]
    fn a_bounced_share_costs_a_granule_per_partial_end() {
        for g in GRANULES {
            with_rig(g, |rig| {
                let shares: DmaShares<'_, _, 8> =
                    DmaShares::new(rig.mapper(), rig.dma, &IdentityMapped).unwrap();
                let host = Host::new(6 * g, g);
                let frames = rig.dma.live();
                // Partial at both ends around one whole granule: two bounce
                // granules, three MAPs (head, middle in place, tail), one
                // notification.
                let buf = host.slice(g - 0x10, g + 0x20);
                let before = rig.iommu.counters();
                // SAFETY: `host` outlives the share.
                let dev = unsafe { shares.share(buf, DriverToDevice) }.unwrap();
                let c = rig.iommu.counters().since(&before);
                assert_eq!((c.map, c.notifications), (3, 1), "granule {g:#x}");
                assert_eq!(rig.dma.live(), frames + 2, "two bounce granules");
                let maps = rig.fake.mappings(1).unwrap();
                let sizes: Vec<u64> = maps
                    .iter()
                    .filter(|m| m.start >= dev.0 & !(g as u64 - 1))
                    .map(|m| m.end + 1 - m.start)
                    .collect();
                assert_eq!(sizes, [g as u64; 3], "granule {g:#x}");
                // The middle is the buffer's own granule, mapped in place.
                let mid = dev.0 + 0x10;
                assert_eq!(mid % g as u64, 0);
                assert_eq!(
                    rig.fake.dma(EP, mid, false),
                    Some(host.ptr as u64 + g as u64)
                );
                let s = shares.counters();
                assert_eq!((s.bounced, s.bounce_bytes), (1, 0x20));
                // SAFETY: the buffer given to `share`.
                unsafe { shares.unshare(dev, buf, DriverToDevice) }.unwrap();
                assert_eq!(rig.dma.live(), frames, "bounce granules freed");
            });
        }
    }

    #[test]
    fn a_pool_needs_slots_of_a_granule_and_exposes_only_its_slots() {
        for g in GRANULES {
            with_rig(g, |rig| {
                if g > PAGE_SIZE {
                    // The default 4 KiB slots cannot stand in for a partial
                    // granule: refused, nothing held.
                    assert_eq!(
                        DmaShares::<'_, _, 8>::with_pool(
                            rig.mapper(),
                            rig.dma,
                            &IdentityMapped,
                            PoolConfig::DEFAULT
                        )
                        .err(),
                        Some(ShareError::InvalidConfig),
                        "granule {g:#x}"
                    );
                    assert_eq!(rig.dma.live(), 0);
                }
                let config = PoolConfig {
                    slots: 4,
                    slot_size: g,
                    threshold: 0x1000,
                };
                let shares: DmaShares<'_, _, 8> =
                    DmaShares::with_pool(rig.mapper(), rig.dma, &IdentityMapped, config).unwrap();
                let pool = shares.pool_range().unwrap();
                assert_eq!(pool.start.0 % g as u64, 0);
                assert_eq!(pool.end.0 - pool.start.0, 4 * g as u64);
                let host = Host::new(6 * g, g);
                // A small buffer goes whole into a slot: the device reads its
                // bytes and zeros, whole slot long.
                let data = pattern(0x30, 7);
                host.write(g + 0x40, &data);
                let small = host.slice(g + 0x40, 0x30);
                let before = rig.iommu.counters();
                // SAFETY: `host` outlives the share.
                let dev = unsafe { shares.share(small, Both) }.unwrap();
                assert_eq!(rig.iommu.counters().since(&before).map, 0, "no MAP");
                assert!((pool.start..pool.end).contains(&dev));
                let slot = rig.dev_read(dev.0, g).unwrap();
                assert_eq!(&slot[..0x30], data.as_slice());
                assert!(slot[0x30..].iter().all(|&b| b == 0), "granule {g:#x}");
                assert!(rig.dev_write(dev.0, &[0x77; 0x30]));
                // SAFETY: the buffer given to `share`.
                unsafe { shares.unshare(dev, small, Both) }.unwrap();
                assert_eq!(&host.bytes()[g + 0x40..g + 0x70], &[0x77; 0x30]);
                assert!(host.bytes()[..g + 0x40].iter().all(|&b| b == NEIGHBOUR));
                assert!(host.bytes()[g + 0x70..].iter().all(|&b| b == NEIGHBOUR));
                assert!(
                    rig.dev_read(dev.0, g).unwrap().iter().all(|&b| b == 0),
                    "the slot is zeroed on unshare"
                );
                // A larger buffer's partial granules go to pool slots: nothing
                // next to the buffer is exposed, no frame is allocated.
                let frames = rig.dma.live();
                let (off, len) = (g / 2 + 0x100, 2 * g);
                check_pool_share(rig, &shares, &host, g, off, len);
                assert_eq!(rig.dma.live(), frames);
                let c = shares.counters();
                assert_eq!((c.pool_shares, c.pool_bounces, c.failures), (1, 2, 0));
                assert_eq!(shares.pool_free(), 4);
            });
        }
    }

    fn check_pool_share(
        rig: &Rig<'_>,
        shares: &DmaShares<'_, Domain<'_>, 8>,
        host: &Host,
        g: usize,
        off: usize,
        len: usize,
    ) {
        let data = pattern(len, 9);
        host.write(off, &data);
        let buf = host.slice(off, len);
        // SAFETY: `host` outlives the share.
        let dev = unsafe { shares.share(buf, Both) }.unwrap();
        assert_eq!(shares.pool_free(), 2, "head and tail in slots");
        let (start, span) = rig.around(g, dev, len);
        let before = (dev.0 - start) as usize;
        let seen = rig.dev_read(start, span).unwrap();
        assert_eq!(&seen[before..before + len], data.as_slice());
        assert!(
            seen[..before]
                .iter()
                .chain(&seen[before + len..])
                .all(|&b| b == 0),
            "granule {g:#x}: only zeros around the buffer"
        );
        let all = pattern(span, 0x44);
        assert!(rig.dev_write(start, &all));
        // SAFETY: the buffer given to `share`.
        unsafe { shares.unshare(dev, buf, Both) }.unwrap();
        let now = host.bytes();
        assert_eq!(&now[off..off + len], &all[before..before + len]);
        assert!(
            now[..off]
                .iter()
                .chain(&now[off + len..])
                .all(|&b| b == NEIGHBOUR)
        );
        host.write(off, &vec![NEIGHBOUR; len]);
    }

    const WIDE: DeferLimits = DeferLimits {
        max_entries: 8,
        max_bytes: u64::MAX,
        max_age: u64::MAX,
    };

    #[test]
    fn deferred_parks_whole_granules_only_and_the_flush_blocks_them() {
        for g in GRANULES {
            with_rig(g, |rig| {
                let clock = || 0u64;
                let queue = FlushQueue::with_capacity(WIDE, &clock, 16);
                let mapper = rig.mapper().with_flush_queue(&queue);
                let config = PoolConfig {
                    slots: 4,
                    slot_size: g,
                    threshold: 0,
                };
                let shares: DmaShares<'_, _, 8> =
                    DmaShares::with_pool(mapper, rig.dma, &IdentityMapped, config).unwrap();
                let host = Host::new(6 * g, g);
                // Whole granules: parked on unshare, reused by the next share.
                let whole = host.slice(g, 2 * g);
                // SAFETY: `host` outlives every share.
                let dev = unsafe { shares.share(whole, DeviceToDriver) }.unwrap();
                // SAFETY: the buffer given to `share`.
                unsafe { shares.unshare(dev, whole, DeviceToDriver) }.unwrap();
                assert_eq!(shares.parked(), 1, "granule {g:#x}");
                assert!(rig.fake.dma(EP, dev.0, true).is_some(), "the window");
                let before = rig.iommu.counters();
                // SAFETY: as above.
                let again = unsafe { shares.share(whole, DeviceToDriver) }.unwrap();
                assert_eq!(again, dev);
                assert_eq!(rig.iommu.counters().since(&before).map, 0);
                assert_eq!(shares.counters().reused, 1);
                // SAFETY: the buffer given to `share`.
                unsafe { shares.unshare(again, whole, DeviceToDriver) }.unwrap();
                // A partial granule (4 KiB at 16/64 KiB granules, half a page at
                // 4 KiB): bounced, never parked, unmapped and flushed at once,
                // since its bounce slot goes back.
                let part = host.slice(3 * g + 0x800, 0x800);
                // SAFETY: as above.
                let pd = unsafe { shares.share(part, DeviceToDriver) }.unwrap();
                assert_eq!(shares.counters().pool_bounces, 1);
                // SAFETY: the buffer given to `share`.
                unsafe { shares.unshare(pd, part, DeviceToDriver) }.unwrap();
                assert_eq!(shares.parked(), 1, "granule {g:#x}: not parked");
                assert_eq!(rig.target(pd.0, true), None, "blocked at once");
                shares.flush_deferred().unwrap();
                assert_eq!((shares.parked(), queue.pending()), (0, 0));
                assert_eq!(rig.target(dev.0, true), None, "blocked after the flush");
                assert!(host.bytes().iter().all(|&b| b == NEIGHBOUR));
                assert_eq!(shares.counters().failures, 0);
            });
        }
    }
}

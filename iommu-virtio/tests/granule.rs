//! The domain and the two-step API at every granule a virtio-iommu may
//! report: 4 KiB, 16 KiB and 64 KiB (QEMU's `granule=4k|16k|64k`, which
//! sets `page_size_mask` to every power of two from the granule up).
//!
//! QEMU's MAP handler takes an unaligned MAP without complaint, so the
//! driver must refuse it before the device sees it: each refusal here is
//! checked against what the fake device handled (nothing).

#![cfg(feature = "fakes")]

use iommu_virtio::fake::{FakeConfig, FakeIommu, FakeMapping, FakeTransport, HostHal, patient};
use iommu_virtio::{VirtioDomain, VirtioIommu, wire};
use iova_core::iova_alloc::IovaAllocatorConfig;
use iova_core::{DmaMapper, Error, IommuDomain, IotlbGather, Iova, IovaAllocator, IovaRange};
use iova_core::{PhysAddr, Prot};

const EP: u32 = 0x10;
const GRANULES: [u64; 3] = [0x1000, 0x4000, 0x1_0000];

type Iommu = VirtioIommu<HostHal, FakeTransport, 256>;
type Domain<'a> = VirtioDomain<'a, HostHal, FakeTransport, 256>;

/// A fake that offers every page size from `granule` up, as QEMU does,
/// with endpoint `EP` whose MSI doorbell is not granule aligned at 16 KiB
/// and 64 KiB (0xfee0_1000..=0xfee0_1fff).
fn iommu(granule: u64) -> (FakeIommu, Iommu) {
    let (fake, t) = FakeIommu::new(FakeConfig {
        page_size_mask: !(granule - 1),
        endpoints: vec![(EP, vec![(wire::RESV_MEM_T_MSI, 0xfee0_1000, 0xfee0_1fff)])],
        ..FakeConfig::default()
    });
    (fake, Iommu::new(t, patient()).unwrap())
}

/// A window of 1 GiB at 4 GiB, in `granule` units.
fn iovas(granule: u64) -> IovaAllocator<'static> {
    let window = IovaRange::new(Iova(0x1_0000_0000), 1 << 30).unwrap();
    IovaAllocator::with_capacity(IovaAllocatorConfig::new(window, granule), 64, 1).unwrap()
}

#[test]
fn the_granule_is_the_smallest_page_size_the_device_offers() {
    for g in GRANULES {
        let (_fake, io) = iommu(g);
        let geo = io.geometry();
        assert_eq!((geo.granule, geo.page_size_mask), (g, !(g - 1)));
        let d = Domain::new(&io, 1).unwrap();
        assert_eq!(d.granule(), g);
        let aperture = geo.aperture().unwrap();
        assert_eq!(aperture.start.0 % g, 0);
        assert_eq!(aperture.end.0 % g, 0);
    }
}

#[test]
fn misaligned_maps_and_unmaps_are_refused_and_nothing_reaches_the_device() {
    for g in GRANULES {
        let (fake, io) = iommu(g);
        let d = Domain::new(&io, 1).unwrap();
        d.attach(EP).unwrap();
        let handled = fake.handled().len();
        let before = io.counters();
        let mut gather = IotlbGather::new();
        let base = 0x100_0000;
        // Every offset a smaller page size would allow, and half a granule.
        let offs: Vec<u64> = [0x1000, g / 2, g - 0x1000]
            .into_iter()
            .filter(|&o| o % g != 0)
            .collect();
        // Only at 4 KiB is there no 4 KiB multiple that is misaligned.
        for &o in offs.iter().chain(&[0x800u64]) {
            for (iova, pa, len) in [
                (base + o, 0x4000_0000, g),
                (base, 0x4000_0000 + o, g),
                (base, 0x4000_0000, g + o),
                (base, 0x4000_0000, o),
            ] {
                assert_eq!(
                    d.map(Iova(iova), PhysAddr(pa), len, Prot::RW, &mut gather),
                    Err(Error::Misaligned),
                    "granule {g:#x}: map {iova:#x} -> {pa:#x} + {len:#x}"
                );
            }
            assert_eq!(
                d.unmap(Iova(base + o), g, &mut gather),
                Err(Error::Misaligned),
                "granule {g:#x}: unmap at +{o:#x}"
            );
            assert_eq!(
                d.unmap(Iova(base), g + o, &mut gather),
                Err(Error::Misaligned)
            );
        }
        assert_eq!(d.pending(), 0, "granule {g:#x}: nothing queued");
        assert_eq!(d.mappings(), 0);
        d.flush(&mut gather).unwrap();
        let c = io.counters().since(&before);
        assert_eq!((c.map, c.unmap, c.notifications), (0, 0, 0));
        assert_eq!(fake.handled().len(), handled, "the device saw nothing");
        assert_eq!(fake.mappings(1), Some(vec![]));
        // The aligned map goes through, as one MAP of its size.
        d.map(
            Iova(base),
            PhysAddr(0x4000_0000),
            3 * g,
            Prot::RW,
            &mut gather,
        )
        .unwrap();
        d.flush(&mut gather).unwrap();
        assert_eq!(
            fake.mappings(1).unwrap(),
            [FakeMapping {
                start: base,
                end: base + 3 * g - 1,
                phys: 0x4000_0000,
                flags: wire::MAP_F_READ | wire::MAP_F_WRITE,
            }]
        );
    }
}

#[test]
fn a_mapper_whose_allocator_is_finer_than_the_granule_is_refused() {
    for g in GRANULES.into_iter().filter(|&g| g > 0x1000) {
        let (_fake, io) = iommu(g);
        let d = Domain::new(&io, 1).unwrap();
        let fine = iovas(g / 4);
        let cpu = || 0;
        assert_eq!(
            DmaMapper::new(&d, &fine, &cpu).err(),
            Some(Error::Misaligned),
            "granule {g:#x}, allocator granule {:#x}",
            g / 4
        );
    }
}

/// A link of whole granules of any size is one MAP of that size: the larger
/// page sizes of the mask are used where a link allows it (the device picks
/// its own page sizes for a MAP; the driver never splits one).
#[test]
fn every_link_is_one_map_of_its_size_at_every_granule() {
    for g in GRANULES {
        let (fake, io) = iommu(g);
        let d = Domain::new(&io, 1).unwrap();
        d.attach(EP).unwrap();
        let iovas = iovas(g);
        let cpu = || 0;
        let mapper = DmaMapper::new(&d, &iovas, &cpu).unwrap();
        // Links of 1, 2, 4, 8 and 16 granules at scattered, reversed
        // physical addresses (each granule aligned, 1 MiB apart).
        let sizes = [1u64, 2, 4, 8, 16];
        let total: u64 = sizes.iter().sum::<u64>() * g;
        let pa = |i: usize| 0x8000_0000 + (sizes.len() - i) as u64 * (1 << 20);
        let before = io.counters();
        let mut state = mapper.try_alloc(total, g).unwrap();
        assert_eq!(state.iova().0 % g, 0);
        let mut at = 0;
        for (i, &n) in sizes.iter().enumerate() {
            state.link(at, PhysAddr(pa(i)), n * g, Prot::RW).unwrap();
            at += n * g;
        }
        state.sync().unwrap();
        let c = io.counters().since(&before);
        assert_eq!(
            (c.map, c.notifications),
            (sizes.len() as u64, 1),
            "granule {g:#x}: one MAP per link, one notification"
        );
        let maps = fake.mappings(1).unwrap();
        assert_eq!(maps.len(), sizes.len());
        let mut at = state.iova().0;
        for (i, &n) in sizes.iter().enumerate() {
            let m = maps.iter().find(|m| m.start == at).unwrap();
            assert_eq!(
                (m.end + 1 - m.start, m.phys),
                (n * g, pa(i)),
                "granule {g:#x}: link {i} is one MAP of {n} granules"
            );
            // The translation: first and last byte of the link, and a byte
            // in the middle.
            for off in [0, n * g / 2 + 0x123, n * g - 1] {
                assert_eq!(fake.dma(EP, at + off, true), Some(pa(i) + off));
            }
            at += n * g;
        }
        // Past the state: nothing.
        assert_eq!(fake.dma(EP, at, false), None);
        assert!(io.pop_fault().is_some());
        // Unlink the 4-granule link alone: one UNMAP of its size; its
        // neighbours stay.
        let before = io.counters();
        state.unlink(3 * g, 4 * g).unwrap();
        state.sync().unwrap();
        let c = io.counters().since(&before);
        assert_eq!((c.unmap, c.notifications), (1, 1));
        let gone = state.iova().0 + 3 * g;
        assert_eq!(fake.dma(EP, gone, false), None);
        assert_eq!(fake.dma(EP, gone + 4 * g - 1, false), None);
        assert_eq!(fake.dma(EP, gone - 1, false), Some(pa(1) + 2 * g - 1));
        assert_eq!(fake.dma(EP, gone + 4 * g, false), Some(pa(3)));
        while io.pop_fault().is_some() {}
        state.destroy().unwrap();
        assert_eq!(fake.mappings(1), Some(vec![]));
        assert_eq!(d.mappings(), 0);
    }
}

/// A link of part of a granule maps the whole granule around it (what
/// iova-core's two-step API does at any granule): the MAP the device gets
/// is granule aligned, and the device reaches the granule's other bytes.
/// Callers that must not expose them (iova-virtio-hal) bounce instead.
#[test]
fn a_partial_link_becomes_one_granule_aligned_map() {
    for g in GRANULES {
        let (fake, io) = iommu(g);
        let d = Domain::new(&io, 1).unwrap();
        d.attach(EP).unwrap();
        let iovas = iovas(g);
        let cpu = || 0;
        let mapper = DmaMapper::new(&d, &iovas, &cpu).unwrap();
        let pa = 0x9000_0000 + g + 0x200;
        let m = mapper.map(PhysAddr(pa), 0x100, Prot::READ).unwrap();
        assert_eq!(m.addr().0 % g, 0x200);
        let maps = fake.mappings(1).unwrap();
        assert_eq!(maps.len(), 1);
        assert_eq!(
            (
                maps[0].start % g,
                maps[0].end + 1 - maps[0].start,
                maps[0].phys
            ),
            (0, g, pa - 0x200),
            "granule {g:#x}"
        );
        assert_eq!(fake.dma(EP, m.addr().0 + 0xff, false), Some(pa + 0xff));
        mapper.unmap(m).map_err(|r| r.error).unwrap();
        assert_eq!(fake.mappings(1), Some(vec![]));
    }
}

#[test]
fn probe_holes_cover_whole_granules() {
    for g in GRANULES {
        let (_fake, io) = iommu(g);
        let d = Domain::new(&io, 1).unwrap();
        d.attach(EP).unwrap();
        // 32 granules around the doorbell's.
        let doorbell = 0xfee0_1000 & !(g - 1);
        let window = IovaRange::new(Iova(doorbell - 16 * g), 32 * g).unwrap();
        let iovas =
            IovaAllocator::with_capacity(IovaAllocatorConfig::new(window, g), 64, 1).unwrap();
        let info = io.probe(EP).unwrap();
        assert_eq!(info.reserve_in(&iovas).unwrap(), 1);
        // Every granule of the window but the doorbell's comes out; none
        // overlaps the granule holding 0xfee0_1000..=0xfee0_1fff.
        let hole = IovaRange::new(Iova(doorbell), g).unwrap();
        let mut got = 0;
        while let Ok(a) = iovas.alloc(0, g, g) {
            assert!(
                !a.range().overlaps(&hole),
                "granule {g:#x}: {:?}",
                a.range()
            );
            assert_eq!(a.range().start.0 % g, 0);
            got += 1;
        }
        assert_eq!(got, 31, "granule {g:#x}");
    }
}

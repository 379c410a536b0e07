//! The domain and the two-step API over the fake device.

#![cfg(feature = "fakes")]

use iommu_virtio::domain::PENDING;
use iommu_virtio::fake::{FakeConfig, FakeIommu, FakeTransport, HostHal, Misbehave, patient};
use iommu_virtio::{DriverConfig, VirtioDomain, VirtioIommu, VirtioIommuError, WaitBudget, wire};
use iova_core::iova_alloc::IovaAllocatorConfig;
use iova_core::{DmaMapper, IovaAllocator, IovaRange};
use iova_core::{Error, IommuDomain, IotlbGather, Iova, PhysAddr, Prot};

const EP: u32 = 0x10;
const G: u64 = 0x1000;

type Iommu<const Q: usize> = VirtioIommu<HostHal, FakeTransport, Q>;

fn iommu<const Q: usize>() -> (FakeIommu, Iommu<Q>) {
    let (fake, t) = FakeIommu::new(FakeConfig::default());
    (fake, Iommu::<Q>::new(t, patient()).unwrap())
}

fn scattered(i: u64) -> u64 {
    0x4000_0000 + i * 3 * G
}

#[test]
fn map_queues_without_notifying_and_flush_notifies_once() {
    let (fake, io) = iommu::<256>();
    let d: VirtioDomain<'_, _, _, 256> = VirtioDomain::new(&io, 1).unwrap();
    d.attach(EP).unwrap();
    let before = io.counters();
    let mut g = IotlbGather::new();
    for i in 0..10 {
        d.map(
            Iova(0x100_0000 + i * G),
            PhysAddr(scattered(i)),
            G,
            Prot::RW,
            &mut g,
        )
        .unwrap();
    }
    assert_eq!(
        io.counters().since(&before).notifications,
        0,
        "map never notifies"
    );
    assert_eq!(fake.mappings(1), Some(vec![]), "nothing reached the device");
    assert_eq!(d.pending(), 10);
    d.flush(&mut g).unwrap();
    assert!(g.is_empty());
    let c = io.counters().since(&before);
    assert_eq!((c.map, c.notifications, c.replies), (10, 1, 10));
    assert_eq!(fake.mappings(1).unwrap().len(), 10);
    assert_eq!(
        fake.dma(EP, 0x100_0000 + 3 * G + 8, false),
        Some(scattered(3) + 8)
    );
}

#[test]
fn every_map_is_one_request_even_when_it_continues_the_last() {
    let (fake, io) = iommu::<256>();
    let d: VirtioDomain<'_, _, _, 256> = VirtioDomain::new(&io, 1).unwrap();
    d.attach(EP).unwrap();
    let mut g = IotlbGather::new();
    // Four maps continuing each other in IOVA and physical address stay four
    // mappings (each may be unmapped alone) in one notification.
    for i in 0..4 {
        d.map(
            Iova(0x10_0000 + i * G),
            PhysAddr(0x5000_0000 + i * G),
            G,
            Prot::READ,
            &mut g,
        )
        .unwrap();
    }
    // One map of four pages is one MAP of four pages.
    d.map(
        Iova(0x20_0000),
        PhysAddr(0x6000_0000),
        4 * G,
        Prot::RW,
        &mut g,
    )
    .unwrap();
    let before = io.counters();
    d.flush(&mut g).unwrap();
    let c = io.counters().since(&before);
    assert_eq!((c.map, c.notifications), (5, 1));
    let maps = fake.mappings(1).unwrap();
    assert_eq!(maps.len(), 5);
    assert_eq!(
        (maps[4].start, maps[4].end, maps[4].phys),
        (0x20_0000, 0x20_3fff, 0x6000_0000)
    );
    assert_eq!(
        d.unmap(Iova(0x10_1000), G, &mut g),
        Ok(G),
        "one of the four"
    );
    d.flush(&mut g).unwrap();
    assert_eq!(fake.dma(EP, 0x10_1000, false), None);
    assert_eq!(fake.dma(EP, 0x10_2000, false), Some(0x5000_2000));
}

#[test]
fn unmap_covers_whole_mappings_and_a_split_never_reaches_the_device() {
    let (fake, io) = iommu::<256>();
    let d: VirtioDomain<'_, _, _, 256> = VirtioDomain::new(&io, 1).unwrap();
    d.attach(EP).unwrap();
    let mut g = IotlbGather::new();
    d.map(
        Iova(0x10_0000),
        PhysAddr(0x5000_0000),
        4 * G,
        Prot::RW,
        &mut g,
    )
    .unwrap();
    d.map(Iova(0x20_0000), PhysAddr(0x6000_0000), G, Prot::RW, &mut g)
        .unwrap();
    d.flush(&mut g).unwrap();
    let sent = fake.handled().len();
    assert_eq!(
        d.unmap(Iova(0x10_1000), G, &mut g),
        Err(Error::PartialUnmap)
    );
    assert_eq!(
        d.unmap(Iova(0x0f_f000), 2 * G, &mut g),
        Err(Error::PartialUnmap)
    );
    assert_eq!(fake.handled().len(), sent, "refused before the device");
    assert_eq!(d.mappings(), 2);
    assert_eq!(
        d.unmap(Iova(0x30_0000), G, &mut g),
        Ok(0),
        "a hole unmaps nothing"
    );
    // One call covering both mappings and the hole between them.
    assert_eq!(d.unmap(Iova(0x10_0000), 0x10_1000, &mut g), Ok(5 * G));
    assert_eq!(
        fake.dma(EP, 0x10_0000, false),
        Some(0x5000_0000),
        "until the flush"
    );
    d.flush(&mut g).unwrap();
    assert_eq!(fake.mappings(1), Some(vec![]));
    assert_eq!(fake.dma(EP, 0x10_0000, false), None);
    assert_eq!(
        io.counters().unmap,
        1,
        "one UNMAP covers both (the device skips the hole)"
    );
}

#[test]
fn unmapping_before_the_flush_cancels_the_map() {
    let (fake, io) = iommu::<256>();
    let d: VirtioDomain<'_, _, _, 256> = VirtioDomain::new(&io, 1).unwrap();
    d.attach(EP).unwrap();
    let sent = fake.handled().len();
    let mut g = IotlbGather::new();
    d.map(Iova(0x10_0000), PhysAddr(0x5000_0000), G, Prot::RW, &mut g)
        .unwrap();
    assert_eq!(d.unmap(Iova(0x10_0000), G, &mut g), Ok(G));
    d.flush(&mut g).unwrap();
    assert_eq!(fake.handled().len(), sent, "nothing to send");
    assert_eq!(d.mappings(), 0);
}

#[test]
fn bad_arguments_are_refused_before_anything_is_queued() {
    let (_fake, io) = iommu::<256>();
    let d: VirtioDomain<'_, _, _, 256> = VirtioDomain::new(&io, 1).unwrap();
    let mut g = IotlbGather::new();
    let m = |iova: u64, pa: u64, len: u64, prot: Prot, g: &mut IotlbGather| {
        d.map(Iova(iova), PhysAddr(pa), len, prot, g)
    };
    assert_eq!(
        m(0x1800, 0x1000, G, Prot::RW, &mut g),
        Err(Error::Misaligned)
    );
    assert_eq!(
        m(0x1000, 0x1000, 0, Prot::RW, &mut g),
        Err(Error::ZeroLength)
    );
    assert_eq!(
        m(0x1000, 0x1000, G, Prot::empty(), &mut g),
        Err(Error::InvalidProt)
    );
    assert_eq!(
        m(0x80_0000_0000, 0, G, Prot::RW, &mut g),
        Err(Error::OutOfRange),
        "past input_range"
    );
    assert_eq!(m(!0xfff, 0, 2 * G, Prot::RW, &mut g), Err(Error::Overflow));
    m(0x1000, 0x1000, 2 * G, Prot::RW, &mut g).unwrap();
    assert_eq!(
        m(0x2000, 0x9000, G, Prot::RW, &mut g),
        Err(Error::AlreadyMapped)
    );
    assert_eq!(d.pending(), 1);
    assert_eq!(
        VirtioDomain::<'_, _, _, 256>::new(&io, 1).err(),
        Some(VirtioIommuError::DomainInUse(1)),
        "one VirtioDomain per ID"
    );
    assert!(VirtioDomain::<'_, _, _, 256>::new(&io, 2).is_ok());
    // MMIO mappings need the MMIO feature (offered here).
    m(0x10_0000, 0x1000_0000, G, Prot::RW | Prot::MMIO, &mut g).unwrap();
    d.flush(&mut g).unwrap_err(); // domain 1 was never attached: NOENT
}

#[test]
fn a_full_batch_is_sent_in_the_middle_and_nothing_is_dropped() {
    // Q = 16: 8 requests per notification; PENDING = 128 per software batch.
    let (fake, io) = iommu::<16>();
    let d: VirtioDomain<'_, _, _, 16, 1024> = VirtioDomain::new(&io, 1).unwrap();
    d.attach(EP).unwrap();
    let before = io.counters();
    let mut g = IotlbGather::new();
    let n = PENDING as u64 + 10;
    for i in 0..n {
        d.map(
            Iova(0x100_0000 + 2 * i * G),
            PhysAddr(scattered(i)),
            G,
            Prot::READ,
            &mut g,
        )
        .unwrap();
    }
    assert_eq!(
        d.pending(),
        10,
        "the first 128 went out when the batch filled"
    );
    d.flush(&mut g).unwrap();
    let c = io.counters().since(&before);
    assert_eq!(c.map, n);
    assert_eq!(
        c.notifications,
        128 / 8 + 2,
        "16 for the first batch, 2 for the rest"
    );
    assert_eq!(fake.mappings(1).unwrap().len() as u64, n);
}

#[test]
fn a_rejected_request_stays_queued_and_the_flush_can_be_retried() {
    let (fake, io) = iommu::<256>();
    let d: VirtioDomain<'_, _, _, 256> = VirtioDomain::new(&io, 5).unwrap();
    let mut g = IotlbGather::new();
    d.map(Iova(0x10_0000), PhysAddr(0x5000_0000), G, Prot::RW, &mut g)
        .unwrap();
    // Not attached yet: the device does not know domain 5.
    let e = d.flush(&mut g).unwrap_err();
    assert_eq!(
        e,
        Error::Device(iova_core::DeviceError::RequestFailed { status: 6 })
    );
    assert!(!g.is_empty(), "the gather is kept for the retry");
    assert_eq!(d.pending(), 1);
    d.attach(EP).unwrap();
    d.flush(&mut g).unwrap();
    assert!(g.is_empty());
    assert_eq!(fake.dma(EP, 0x10_0000, true), Some(0x5000_0000));
}

#[test]
fn a_silent_device_makes_the_flush_time_out() {
    let (fake, t) = FakeIommu::new(FakeConfig::default());
    // A time budget (not a poll count), so the attach below succeeds however
    // loaded the machine is.
    let dc = DriverConfig {
        wait: WaitBudget {
            max_polls: u64::MAX,
            clock: Some((iommu_virtio::fake::host_clock_us, 300_000)),
        },
        ..Default::default()
    };
    let io = Iommu::<256>::new(t, dc).unwrap();
    let d: VirtioDomain<'_, _, _, 256> = VirtioDomain::new(&io, 1).unwrap();
    d.attach(EP).unwrap();
    let mut g = IotlbGather::new();
    d.map(Iova(0x10_0000), PhysAddr(0x5000_0000), G, Prot::RW, &mut g)
        .unwrap();
    fake.misbehave(Misbehave {
        silent: true,
        ..Default::default()
    });
    assert_eq!(d.flush(&mut g), Err(Error::Timeout));
    assert!(!g.is_empty());
}

#[test]
fn the_two_step_api_links_64_scattered_pages_with_one_notification() {
    let (fake, io) = iommu::<256>();
    let d: VirtioDomain<'_, _, _, 256> = VirtioDomain::new(&io, 1).unwrap();
    d.attach(EP).unwrap();
    let aperture = io.geometry().aperture().unwrap();
    let aperture = IovaRange::new(Iova(0x80_0000_0000 - (1 << 32)), 1 << 32)
        .ok()
        .filter(|a| aperture.contains_range(a))
        .unwrap();
    let iovas = IovaAllocator::with_capacity(IovaAllocatorConfig::new(aperture, G), 64, 1).unwrap();
    io.probe(EP).unwrap().reserve_in(&iovas).unwrap();
    let cpu = || 0;
    let mapper = DmaMapper::new(&d, &iovas, &cpu).unwrap();
    let before = io.counters();
    let mut state = mapper.try_alloc(64 * G, G).unwrap();
    for i in 0..64 {
        state
            .link(i * G, PhysAddr(scattered(i)), G, Prot::RW)
            .unwrap();
    }
    assert_eq!(io.counters().since(&before).notifications, 0);
    state.sync().unwrap();
    let c = io.counters().since(&before);
    assert_eq!(
        (c.map, c.notifications),
        (64, 1),
        "one MAP per piece, one notification"
    );
    for i in 0..64 {
        let dev = state.dma_addr(i * G + 0x10).unwrap();
        assert_eq!(fake.dma(EP, dev.0, true), Some(scattered(i) + 0x10));
    }
    // Unlink two pieces, one sync; their IOVAs fault, the others still work.
    state.unlink(5 * G, G).unwrap();
    state.unlink(9 * G, G).unwrap();
    let before = io.counters();
    state.sync().unwrap();
    let c = io.counters().since(&before);
    assert_eq!((c.unmap, c.notifications), (2, 1));
    let gone = state.dma_addr(5 * G).unwrap();
    assert_eq!(fake.dma(EP, gone.0, false), None);
    let f = io.pop_fault().unwrap();
    assert_eq!((f.endpoint, f.address), (EP, Some(gone.0)));
    assert!(
        fake.dma(EP, state.dma_addr(6 * G).unwrap().0, false)
            .is_some()
    );
    state.destroy().unwrap();
    assert_eq!(fake.mappings(1), Some(vec![]));
    assert_eq!(d.mappings(), 0);
}

#[test]
fn contiguous_links_stay_apart_and_destroy_unmaps_them_with_one_request() {
    let (fake, io) = iommu::<256>();
    let d: VirtioDomain<'_, _, _, 256> = VirtioDomain::new(&io, 1).unwrap();
    d.attach(EP).unwrap();
    let aperture = IovaRange::new(Iova(0x1_0000_0000), 1 << 30).unwrap();
    let iovas = IovaAllocator::with_capacity(IovaAllocatorConfig::new(aperture, G), 64, 1).unwrap();
    let cpu = || 0;
    let mapper = DmaMapper::new(&d, &iovas, &cpu).unwrap();
    let mut state = mapper.try_alloc(8 * G, G).unwrap();
    // Four physically contiguous links, then one link of four pages.
    for i in 0..4 {
        state
            .link(i * G, PhysAddr(0x5000_0000 + i * G), G, Prot::READ)
            .unwrap();
    }
    state
        .link(4 * G, PhysAddr(0x7000_0000), 4 * G, Prot::READ)
        .unwrap();
    state.sync().unwrap();
    assert_eq!(fake.mappings(1).unwrap().len(), 5, "one MAP per link");
    assert_eq!(io.counters().map, 5);
    assert_eq!(state.unlink(G, G), Ok(()), "each link unlinks alone");
    state.sync().unwrap();
    state.destroy().unwrap();
    assert_eq!(fake.mappings(1), Some(vec![]));
    assert_eq!(
        io.counters().unmap,
        3,
        "the single unlink, then both sides of its hole: one UNMAP each"
    );
}

#[test]
fn unmapping_more_mappings_than_a_batch_holds_is_one_request() {
    let (fake, io) = iommu::<256>();
    let d: VirtioDomain<'_, _, _, 256, 1024> = VirtioDomain::new(&io, 1).unwrap();
    d.attach(EP).unwrap();
    let mut g = IotlbGather::new();
    let n = 3 * PENDING as u64;
    for i in 0..n {
        d.map(
            Iova(0x100_0000 + i * G),
            PhysAddr(scattered(i)),
            G,
            Prot::READ,
            &mut g,
        )
        .unwrap();
    }
    d.flush(&mut g).unwrap();
    assert_eq!(fake.mappings(1).unwrap().len() as u64, n);
    let before = io.counters();
    assert_eq!(d.unmap(Iova(0x100_0000), n * G, &mut g), Ok(n * G));
    d.flush(&mut g).unwrap();
    let c = io.counters().since(&before);
    assert_eq!((c.unmap, c.notifications), (1, 1));
    assert_eq!(fake.mappings(1), Some(vec![]));
}

#[test]
fn an_unmap_mixing_live_and_queued_mappings_cancels_the_queued_ones() {
    let (fake, io) = iommu::<256>();
    let d: VirtioDomain<'_, _, _, 256> = VirtioDomain::new(&io, 1).unwrap();
    d.attach(EP).unwrap();
    let mut g = IotlbGather::new();
    d.map(Iova(0x10_0000), PhysAddr(0x5000_0000), G, Prot::RW, &mut g)
        .unwrap();
    d.flush(&mut g).unwrap();
    d.map(Iova(0x10_1000), PhysAddr(0x6000_0000), G, Prot::RW, &mut g)
        .unwrap();
    let sent = fake.handled().len();
    assert_eq!(d.unmap(Iova(0x10_0000), 2 * G, &mut g), Ok(2 * G));
    d.flush(&mut g).unwrap();
    let h = fake.handled();
    assert_eq!(
        h.len(),
        sent + 1,
        "the queued MAP was dropped, one UNMAP sent"
    );
    assert_eq!(h[sent].kind, wire::T_UNMAP);
    assert_eq!(h[sent].range, Some((0x10_0000, 0x10_0fff)));
    assert_eq!(fake.mappings(1), Some(vec![]));
}

#[test]
fn a_queue_and_batch_that_hold_everything_send_512_maps_with_one_notification() {
    let (fake, t) = FakeIommu::new(FakeConfig {
        max_queue: 1024,
        ..Default::default()
    });
    let io = Box::new(Iommu::<1024>::new(t, patient()).unwrap());
    let d: Box<VirtioDomain<'_, _, _, 1024, 1024, 512>> =
        Box::new(VirtioDomain::new(&*io, 1).unwrap());
    d.attach(EP).unwrap();
    let before = io.counters();
    let mut g = IotlbGather::new();
    for i in 0..512 {
        d.map(
            Iova(0x100_0000 + i * G),
            PhysAddr(scattered(i)),
            G,
            Prot::READ,
            &mut g,
        )
        .unwrap();
    }
    assert_eq!(d.pending(), 512);
    d.flush(&mut g).unwrap();
    let c = io.counters().since(&before);
    assert_eq!((c.map, c.notifications), (512, 1));
    assert_eq!(fake.mappings(1).unwrap().len(), 512);
}

#[test]
fn cpus_mapping_disjoint_ranges_of_one_domain_at_once_lose_nothing() {
    let (fake, io) = iommu::<64>();
    let d: VirtioDomain<'_, _, _, 64, 1024> = VirtioDomain::new(&io, 1).unwrap();
    d.attach(EP).unwrap();
    std::thread::scope(|s| {
        for cpu in 0..4u64 {
            let d = &d;
            s.spawn(move || {
                let mut g = IotlbGather::new();
                for i in 0..100 {
                    let iova = 0x1000_0000 * (cpu + 1) + i * G;
                    d.map(
                        Iova(iova),
                        PhysAddr(scattered(cpu * 1000 + i)),
                        G,
                        Prot::RW,
                        &mut g,
                    )
                    .unwrap();
                    if i % 30 == 29 {
                        d.flush(&mut g).unwrap();
                    }
                }
                d.flush(&mut g).unwrap();
            });
        }
    });
    assert_eq!(d.pending(), 0);
    assert_eq!(d.mappings(), 400);
    let maps = fake.mappings(1).unwrap();
    assert_eq!(maps.len(), 400);
    for cpu in 0..4u64 {
        for i in 0..100 {
            let iova = 0x1000_0000 * (cpu + 1) + i * G;
            assert_eq!(fake.dma(EP, iova, true), Some(scattered(cpu * 1000 + i)));
        }
    }
    assert_eq!(io.counters().map, 400);
}

#[test]
fn an_unmap_that_must_first_send_a_full_batch_still_covers_what_that_batch_mapped() {
    // P = 4: the batch fills with queued MAPs of the very range being unmapped.
    let (fake, io) = iommu::<256>();
    let d: VirtioDomain<'_, _, _, 256, 64, 4> = VirtioDomain::new(&io, 1).unwrap();
    d.attach(EP).unwrap();
    let mut g = IotlbGather::new();
    d.map(Iova(0x10_0000), PhysAddr(scattered(0)), G, Prot::RW, &mut g)
        .unwrap();
    d.flush(&mut g).unwrap();
    for i in 1..5 {
        d.map(
            Iova(0x10_0000 + i * G),
            PhysAddr(scattered(i)),
            G,
            Prot::RW,
            &mut g,
        )
        .unwrap();
    }
    assert_eq!(d.pending(), 4, "full");
    assert_eq!(d.unmap(Iova(0x10_0000), 5 * G, &mut g), Ok(5 * G));
    d.flush(&mut g).unwrap();
    assert_eq!(fake.mappings(1), Some(vec![]), "nothing left on the device");
    assert_eq!(d.mappings(), 0);
}

/// Random map / unmap / flush sequences with tiny queues and batches: after
/// every flush the device translates exactly what the caller mapped.
#[test]
fn random_sequences_keep_the_device_in_step_with_the_caller() {
    const PAGES: u64 = 16;
    const BASE: u64 = 0x100_0000;
    // Under Miri fewer and shorter sequences.
    let (seeds, steps): (u64, u32) = if cfg!(miri) { (4, 150) } else { (20, 1000) };
    for seed in 1..=seeds {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let (fake, io) = iommu::<8>();
        let d: VirtioDomain<'_, _, _, 8, 64, 4> = VirtioDomain::new(&io, 1).unwrap();
        d.attach(EP).unwrap();
        let mut model: std::collections::BTreeMap<u64, u64> = Default::default();
        let mut g = IotlbGather::new();
        let mut next_frame = 0x4000_0000u64;
        let mut rejected = 0;
        for step in 0..steps {
            match rnd(12) {
                0..=6 => {
                    let s = rnd(PAGES);
                    let k = (1 + rnd(4)).min(PAGES - s);
                    let taken = (s..s + k).any(|p| model.contains_key(&p));
                    // Half the time continue the previous page physically.
                    let pa = match s.checked_sub(1).and_then(|p| model.get(&p)) {
                        Some(&prev) if rnd(2) == 0 => prev + G,
                        _ => {
                            next_frame += 16 * G;
                            next_frame
                        }
                    };
                    let r = d.map(Iova(BASE + s * G), PhysAddr(pa), k * G, Prot::RW, &mut g);
                    if taken {
                        assert_eq!(r, Err(Error::AlreadyMapped), "seed {seed} step {step}");
                    } else {
                        assert_eq!(r, Ok(()), "seed {seed} step {step}");
                        for p in 0..k {
                            model.insert(s + p, pa + p * G);
                        }
                    }
                }
                7..=10 => {
                    let s = rnd(PAGES);
                    let k = (1 + rnd(PAGES)).min(PAGES - s);
                    let in_model = (s..s + k).filter(|p| model.contains_key(p)).count() as u64;
                    match d.unmap(Iova(BASE + s * G), k * G, &mut g) {
                        Ok(bytes) => {
                            assert_eq!(bytes, in_model * G, "seed {seed} step {step}");
                            for p in s..s + k {
                                model.remove(&p);
                            }
                        }
                        Err(Error::PartialUnmap) => {}
                        Err(e) => panic!("seed {seed} step {step}: {e:?}"),
                    }
                }
                _ => {
                    // Now and then the device refuses a whole batch (NOMEM)
                    // without acting: the flush fails, everything stays
                    // queued, and the retry below goes through.
                    if rnd(4) == 0 && d.pending() > 0 {
                        fake.misbehave(Misbehave {
                            reject: Some(8),
                            ..Default::default()
                        });
                        let e = d.flush(&mut g).unwrap_err();
                        assert_eq!(
                            e,
                            Error::Device(iova_core::DeviceError::RequestFailed { status: 8 })
                        );
                        fake.misbehave(Misbehave::default());
                        rejected += 1;
                    }
                    d.flush(&mut g).unwrap();
                    let maps = fake.mappings(1).unwrap();
                    for p in 0..PAGES {
                        let iova = BASE + p * G;
                        let dev = maps
                            .iter()
                            .find(|m| m.start <= iova && iova <= m.end)
                            .map(|m| m.phys + (iova - m.start));
                        assert_eq!(
                            dev,
                            model.get(&p).copied(),
                            "seed {seed} step {step} page {p}"
                        );
                    }
                }
            }
        }
        assert!(rejected > 0, "seed {seed}: the refusal path never ran");
    }
}

/// What endpoint `EP` reaches at `iova` in domain 1, read from the fake's
/// mappings (without raising a fault event).
fn reach(fake: &FakeIommu, iova: Iova) -> Option<PhysAddr> {
    fake.mappings(1)?
        .iter()
        .find(|m| m.start <= iova.0 && iova.0 <= m.end)
        .map(|m| PhysAddr(m.phys + (iova.0 - m.start)))
}

#[test]
fn adjacent_states_on_contiguous_memory_tear_down_on_their_own() {
    let (fake, io) = iommu::<256>();
    let d: VirtioDomain<'_, _, _, 256> = VirtioDomain::new(&io, 1).unwrap();
    d.attach(EP).unwrap();
    let window = IovaRange::new(Iova(0x40_0000_0000), 16 * G).unwrap();
    let iovas = IovaAllocator::with_capacity(IovaAllocatorConfig::new(window, G), 64, 1).unwrap();
    let cpu = || 0;
    let mapper = DmaMapper::new(&d, &iovas, &cpu).unwrap();
    let mut a = mapper.try_alloc(G, G).unwrap();
    let mut b = mapper.try_alloc(G, G).unwrap();
    assert_eq!(b.iova().0, a.iova().0 + G, "adjacent");
    a.link(0, PhysAddr(0x8000_0000), G, Prot::RW).unwrap();
    b.link(0, PhysAddr(0x8000_1000), G, Prot::RW).unwrap();
    a.sync().unwrap();
    b.sync().unwrap();
    assert_eq!(reach(&fake, b.iova()), Some(PhysAddr(0x8000_1000)));
    a.destroy().unwrap();
    assert_eq!(reach(&fake, window.start), None, "A's page is gone");
    assert_eq!(
        reach(&fake, b.iova()),
        Some(PhysAddr(0x8000_1000)),
        "B's stays"
    );
    b.destroy().unwrap();
    assert_eq!(fake.mappings(1), Some(vec![]), "nothing left on the device");
    iovas.flush_caches();
    let st = iovas.stats();
    assert_eq!(
        (st.live_allocations, st.free_bytes),
        (0, window.len()),
        "no IOVA leaked"
    );

    // Within one state: one of two adjacent, contiguous links unlinks alone.
    let mut s = mapper.try_alloc(2 * G, G).unwrap();
    s.link(0, PhysAddr(0x8000_0000), G, Prot::RW).unwrap();
    s.link(G, PhysAddr(0x8000_1000), G, Prot::RW).unwrap();
    s.sync().unwrap();
    assert_eq!(
        s.unlink(G, G),
        Ok(()),
        "an exact link can always be unlinked"
    );
    s.sync().unwrap();
    assert_eq!(
        reach(&fake, s.dma_addr(0).unwrap()),
        Some(PhysAddr(0x8000_0000))
    );
    assert_eq!(reach(&fake, s.dma_addr(G).unwrap()), None);
    let c = io.counters();
    s.destroy().unwrap();
    assert_eq!(io.counters().since(&c).notifications, 1);
    assert_eq!(fake.mappings(1), Some(vec![]));
}

/// The core's model of adjacent states, over the fake device: after every
/// step exactly the live links translate.
#[test]
fn adjacent_states_model() {
    let (seeds, steps) = if cfg!(miri) { (2, 120) } else { (12, 600) };
    for seed in 0..seeds {
        let (fake, io) = iommu::<256>();
        let d: VirtioDomain<'_, _, _, 256, 64, 8> = VirtioDomain::new(&io, 1).unwrap();
        d.attach(EP).unwrap();
        let run = iova_core::fakes::AdjacentStates {
            window: IovaRange::new(Iova(0x40_0000_0000), 24 * G).unwrap(),
            pa_base: PhysAddr(0x8000_0000),
            seed,
            steps,
        };
        iova_core::fakes::check_adjacent_states(&d, run, &|iova| reach(&fake, iova));
    }
}

/// Deferred invalidation: the UNMAPs of 16 unlinks wait; one queue flush
/// sends them with one notification (or they ride along with the next
/// MAP's notification).
#[test]
fn a_flush_queue_sends_many_unmaps_with_one_notification() {
    use iova_core::flush_queue::{DeferLimits, FlushQueue};
    let (fake, io) = iommu::<256>();
    let d: VirtioDomain<'_, _, _, 256> = VirtioDomain::new(&io, 1).unwrap();
    d.attach(EP).unwrap();
    let window = IovaRange::new(Iova(0x40_0000_0000), 1 << 30).unwrap();
    let iovas = IovaAllocator::with_capacity(IovaAllocatorConfig::new(window, G), 64, 1).unwrap();
    let cpu = || 0;
    let clock = || 0u64;
    let limits = DeferLimits {
        max_entries: 16,
        max_bytes: u64::MAX,
        max_age: u64::MAX,
    };
    let queue = FlushQueue::with_capacity(limits, &clock, 16);
    let mapper = DmaMapper::new(&d, &iovas, &cpu)
        .unwrap()
        .with_flush_queue(&queue);
    let mut states = Vec::new();
    for i in 0..16 {
        let mut st = mapper.try_alloc(G, G).unwrap();
        st.link(0, PhysAddr(scattered(i)), G, Prot::RW).unwrap();
        states.push(st);
    }
    for st in &mut states {
        st.sync().unwrap();
    }
    let gone: Vec<u64> = states.iter().map(|s| s.iova().0).collect();
    let before = io.counters();
    let last = states.pop().unwrap();
    for st in states {
        st.destroy().unwrap();
    }
    assert_eq!(io.counters().since(&before).notifications, 0, "deferred");
    assert!(
        reach(&fake, Iova(gone[0])).is_some(),
        "mapped until the flush"
    );
    last.destroy().unwrap();
    let c = io.counters().since(&before);
    assert_eq!(
        (c.unmap, c.notifications),
        (1, 1),
        "adjacent ranges: one UNMAP, one notification"
    );
    for iova in gone {
        assert_eq!(reach(&fake, Iova(iova)), None);
    }
}

#[test]
fn dropping_a_domain_leaves_no_endpoint_attached_and_no_mapping_on_the_device() {
    let (fake, io) = iommu::<256>();
    let mut g = IotlbGather::new();
    let d: VirtioDomain<'_, _, _, 256> = VirtioDomain::new(&io, 1).unwrap();
    d.attach(EP).unwrap();
    d.map(Iova(0x10_0000), PhysAddr(0x5000_0000), G, Prot::RW, &mut g)
        .unwrap();
    d.flush(&mut g).unwrap();
    assert_eq!(fake.domain_of(EP), Some(1));
    let before = io.counters();
    drop(d);
    let c = io.counters().since(&before);
    assert_eq!(
        (c.unmap, c.detach, c.notifications),
        (1, 1, 1),
        "one UNMAP and one DETACH, sent together"
    );
    assert_eq!(
        fake.domain_of(EP),
        None,
        "the endpoint left with the domain"
    );
    assert_eq!(
        fake.mappings(1),
        None,
        "the device has no domain 1 any more"
    );
    assert_eq!(fake.dma(EP, 0x10_0000, true), None, "its DMA is blocked");

    // The ID starts afresh: the same IOVA maps elsewhere.
    let d: VirtioDomain<'_, _, _, 256> = VirtioDomain::new(&io, 1).unwrap();
    d.attach(EP).unwrap();
    d.map(Iova(0x10_0000), PhysAddr(0x6000_0000), G, Prot::RW, &mut g)
        .unwrap();
    d.flush(&mut g).unwrap();
    assert_eq!(fake.dma(EP, 0x10_0000, true), Some(0x6000_0000));
}

#[test]
fn a_dropped_domain_leaves_an_endpoint_that_moved_on_alone_and_an_unused_one_sends_nothing() {
    let (fake, io) = iommu::<256>();
    let d1: VirtioDomain<'_, _, _, 256> = VirtioDomain::new(&io, 1).unwrap();
    let d2: VirtioDomain<'_, _, _, 256> = VirtioDomain::new(&io, 2).unwrap();
    d1.attach(EP).unwrap();
    assert_eq!((d1.attached_endpoints(), d2.attached_endpoints()), (1, 0));
    d2.attach(EP).unwrap();
    assert_eq!((d1.attached_endpoints(), d2.attached_endpoints()), (0, 1));
    assert_eq!(io.attached_domain(EP), Some(2));
    let before = io.counters();
    drop(d1);
    let c = io.counters().since(&before);
    assert_eq!(
        (c.requests(), c.notifications),
        (0, 0),
        "nothing to tear down"
    );
    assert_eq!(fake.domain_of(EP), Some(2), "still where it moved");
    assert_eq!(d2.attached_endpoints(), 1);
    d2.detach(EP).unwrap();
    assert_eq!(io.attached_domain(EP), None);
    let before = io.counters();
    drop(d2);
    assert_eq!(
        io.counters().since(&before).requests(),
        0,
        "detached already"
    );
    assert_eq!(io.counters().teardown_failures, 0);
}

#[test]
fn a_teardown_the_device_refuses_is_counted_and_the_next_new_of_the_id_finishes_it() {
    let (fake, io) = iommu::<256>();
    let mut g = IotlbGather::new();
    let d: VirtioDomain<'_, _, _, 256> = VirtioDomain::new(&io, 1).unwrap();
    d.attach(EP).unwrap();
    d.map(Iova(0x10_0000), PhysAddr(0x5000_0000), G, Prot::RW, &mut g)
        .unwrap();
    d.flush(&mut g).unwrap();
    let nomem = Misbehave {
        reject: Some(8),
        ..Default::default()
    };
    fake.misbehave(nomem);
    drop(d);
    assert_eq!(io.counters().teardown_failures, 1);
    assert_eq!(fake.domain_of(EP), Some(1), "the device kept it attached");
    assert_eq!(fake.mappings(1).map(|m| m.len()), Some(1));
    assert_eq!(io.attached_domain(EP), Some(1), "and so does the driver");
    // The ID is not handed out clean while the device may map into it.
    assert_eq!(
        VirtioDomain::<'_, _, _, 256>::new(&io, 1).err(),
        Some(VirtioIommuError::Request {
            request: iommu_virtio::RequestKind::Unmap,
            status: iommu_virtio::Status::NoMem
        })
    );
    fake.misbehave(Misbehave::default());
    let d: VirtioDomain<'_, _, _, 256> = VirtioDomain::new(&io, 1).unwrap();
    assert_eq!(fake.domain_of(EP), None);
    assert_eq!(fake.mappings(1), None);
    assert_eq!(d.attached_endpoints(), 0);
    assert_eq!(io.counters().teardown_failures, 1, "the retry succeeded");
}

#[test]
fn dropping_a_domain_on_a_silent_device_returns_bounded_and_is_counted() {
    let (fake, t) = FakeIommu::new(FakeConfig::default());
    let dc = DriverConfig {
        wait: WaitBudget {
            max_polls: u64::MAX,
            clock: Some((iommu_virtio::fake::host_clock_us, 300_000)),
        },
        ..Default::default()
    };
    let io = Iommu::<256>::new(t, dc).unwrap();
    let d: VirtioDomain<'_, _, _, 256> = VirtioDomain::new(&io, 1).unwrap();
    d.attach(EP).unwrap();
    fake.misbehave(Misbehave {
        silent: true,
        ..Default::default()
    });
    let t0 = std::time::Instant::now();
    drop(d);
    assert!(t0.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(io.counters().teardown_failures, 1);
    assert!(io.is_broken(), "a reply timeout stops the driver");
    assert_eq!(
        VirtioDomain::<'_, _, _, 256>::new(&io, 1).err(),
        Some(VirtioIommuError::Broken)
    );
}

#[test]
fn a_domain_with_more_endpoints_than_a_teardown_batch_detaches_them_all() {
    let n = iommu_virtio::driver::TEARDOWN_BATCH as u32 + 3;
    let (fake, t) = FakeIommu::new(FakeConfig {
        endpoints: (0..n).map(|e| (0x100 + e, vec![])).collect(),
        ..Default::default()
    });
    let io = Iommu::<256>::new(t, patient()).unwrap();
    let mut g = IotlbGather::new();
    let d: VirtioDomain<'_, _, _, 256> = VirtioDomain::new(&io, 7).unwrap();
    for e in 0..n {
        d.attach(0x100 + e).unwrap();
    }
    d.map(Iova(0x10_0000), PhysAddr(0x5000_0000), G, Prot::RW, &mut g)
        .unwrap();
    d.flush(&mut g).unwrap();
    assert_eq!(d.attached_endpoints(), n as usize);
    let before = io.counters();
    drop(d);
    let c = io.counters().since(&before);
    assert_eq!((c.unmap, c.detach, c.notifications), (1, u64::from(n), 2));
    assert_eq!(c.teardown_failures, 0);
    for e in 0..n {
        assert_eq!(fake.domain_of(0x100 + e), None, "endpoint {e}");
    }
    assert_eq!(fake.mappings(7), None);
}

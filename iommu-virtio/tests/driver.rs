//! The driver against the fake device.

#![cfg(feature = "fakes")]

use iommu_virtio::driver::{EVENT_QUEUE_SIZE, MAX_ENDPOINTS};
use iommu_virtio::fake::{FakeConfig, FakeIommu, FakeTransport, HostHal, Misbehave, patient};
use iommu_virtio::virtio_drivers::transport::DeviceStatus;
use iommu_virtio::{
    ConfigField, DriverConfig, FaultReason, Features, Geometry, QueueProblem, Request, RequestKind,
    ReservedKind, Status, VirtioIommu, VirtioIommuError, Wait, WaitBudget, wire,
};

type Driver<const Q: usize = 16> = VirtioIommu<HostHal, FakeTransport, Q>;

const EP: u32 = 0x10;

fn setup<const Q: usize>(cfg: FakeConfig, dc: DriverConfig) -> (FakeIommu, Driver<Q>) {
    let (fake, t) = FakeIommu::new(cfg);
    let d = Driver::<Q>::new(t, dc).expect("driver init");
    (fake, d)
}

fn default_pair() -> (FakeIommu, Driver) {
    setup(FakeConfig::default(), patient())
}

fn map(domain: u32, start: u64, len: u64, phys: u64, flags: u32) -> Request {
    Request::Map {
        domain,
        start,
        end: start + len - 1,
        phys,
        flags,
    }
}

fn unmap(domain: u32, start: u64, len: u64) -> Request {
    Request::Unmap {
        domain,
        start,
        end: start + len - 1,
    }
}

fn failed(request: RequestKind, status: Status) -> Result<(), VirtioIommuError> {
    Err(VirtioIommuError::Request { request, status })
}

#[test]
fn init_negotiates_reads_the_config_and_turns_bypass_off() {
    let (fake, d) = default_pair();
    let expected = Features::VERSION_1
        | Features::INPUT_RANGE
        | Features::DOMAIN_RANGE
        | Features::MAP_UNMAP
        | Features::PROBE
        | Features::MMIO
        | Features::BYPASS_CONFIG;
    assert_eq!(d.features(), expected);
    assert_eq!(
        fake.driver_features(),
        expected,
        "no ACCESS_PLATFORM, no ring features"
    );
    let g = d.geometry();
    assert_eq!(g.granule, 0x1000);
    assert_eq!((g.input_start, g.input_end), (0, 0x7f_ffff_ffff));
    assert_eq!(
        g.aperture(),
        Some(iova_core::IovaRange {
            start: iova_core::Iova(0),
            end: iova_core::Iova(0x80_0000_0000)
        })
    );
    assert_eq!((g.domain_start, g.domain_end), (0, u32::MAX));
    assert_eq!(g.probe_size, 512);
    assert!(!g.unattached_bypass);
    assert_eq!(fake.bypass(), 0, "default deny");
    assert_eq!(fake.bypass_writes(), 1);
    let ok = (DeviceStatus::ACKNOWLEDGE
        | DeviceStatus::DRIVER
        | DeviceStatus::FEATURES_OK
        | DeviceStatus::DRIVER_OK)
        .bits() as u8;
    assert_eq!(fake.status(), ok);
    // The event queue was stocked and announced once.
    assert_eq!(fake.notifications(), [0, 1]);
}

#[test]
fn bypass_is_kept_only_when_asked_and_never_written_without_bypass_config() {
    let dc = DriverConfig {
        bypass_unattached: true,
        ..patient()
    };
    let (fake, d) = setup::<16>(FakeConfig::default(), dc);
    assert_eq!(fake.bypass(), 1);
    assert!(d.geometry().unattached_bypass);

    let cfg = FakeConfig {
        features: Features::VERSION_1 | Features::MAP_UNMAP | Features::BYPASS,
        ..Default::default()
    };
    let (fake, d) = setup::<16>(cfg, patient());
    assert_eq!(
        fake.bypass_writes(),
        0,
        "writing bypass without BYPASS_CONFIG fails QEMU"
    );
    assert!(
        d.geometry().unattached_bypass,
        "F_BYPASS: the device bypasses"
    );
    assert_eq!(d.geometry().probe_size, 0, "no PROBE: probe_size not read");
    assert_eq!(
        d.attach_bypass(EP, 1),
        Err(VirtioIommuError::NotNegotiated(
            Features::BYPASS_CONFIG.bits()
        ))
    );
    assert!(matches!(
        d.probe(EP),
        Err(VirtioIommuError::NotNegotiated(_))
    ));
}

#[test]
fn a_device_without_map_unmap_or_with_a_bad_config_is_refused() {
    let (fake, t) = FakeIommu::new(FakeConfig {
        features: Features::VERSION_1 | Features::PROBE,
        ..Default::default()
    });
    let e = Driver::<16>::new(t, patient()).unwrap_err();
    assert_eq!(
        e,
        VirtioIommuError::MissingFeatures(Features::MAP_UNMAP.bits())
    );
    assert_ne!(fake.status() & DeviceStatus::FAILED.bits() as u8, 0);

    let (_fake, t) = FakeIommu::new(FakeConfig {
        page_size_mask: 0,
        ..Default::default()
    });
    assert!(matches!(
        Driver::<16>::new(t, patient()),
        Err(VirtioIommuError::BadConfig(ConfigField::PageSizeMask))
    ));
    let (_fake, t) = FakeIommu::new(FakeConfig {
        max_queue: 8,
        ..Default::default()
    });
    assert!(matches!(
        Driver::<16>::new(t, patient()),
        Err(VirtioIommuError::Queue(
            QueueProblem::RequestQueueUnavailable
        ))
    ));
}

#[test]
fn attach_detach_map_unmap_follow_the_specification() {
    let (fake, d) = default_pair();
    assert_eq!(
        d.attach(0x99, 1),
        failed(RequestKind::Attach, Status::NoEnt),
        "unknown endpoint"
    );
    d.attach(EP, 1).unwrap();
    assert_eq!(fake.domain_of(EP), Some(1));
    let rw = wire::MAP_F_READ | wire::MAP_F_WRITE;
    assert_eq!(
        d.request(map(7, 0x10_0000, 0x1000, 0x4000_0000, rw)),
        failed(RequestKind::Map, Status::NoEnt),
        "unknown domain"
    );
    assert_eq!(
        d.request(map(1, 0x10_0000, 0x1000, 0x4000_0000, 0x8)),
        failed(RequestKind::Map, Status::Inval),
        "bad flag"
    );
    assert_eq!(
        d.request(map(1, 0x10_0800, 0x1000, 0x4000_0000, rw)),
        failed(RequestKind::Map, Status::Range),
        "misaligned"
    );
    d.request(map(1, 0x10_0000, 0x2000, 0x4000_0000, rw))
        .unwrap();
    assert_eq!(
        d.request(map(1, 0x10_1000, 0x1000, 0x5000_0000, rw)),
        failed(RequestKind::Map, Status::Inval),
        "overlap"
    );
    assert_eq!(fake.dma(EP, 0x10_1234, true), Some(0x4000_1234));
    assert_eq!(
        d.request(unmap(1, 0x10_0000, 0x1000)),
        failed(RequestKind::Unmap, Status::Range),
        "split"
    );
    assert_eq!(
        fake.mappings(1).unwrap().len(),
        1,
        "a failed UNMAP removes nothing"
    );
    assert_eq!(
        d.request(unmap(9, 0x10_0000, 0x2000)),
        failed(RequestKind::Unmap, Status::NoEnt)
    );
    d.request(unmap(1, 0x10_0000, 0x2000)).unwrap();
    assert_eq!(fake.mappings(1), Some(vec![]));
    assert_eq!(d.detach(EP, 2), failed(RequestKind::Detach, Status::NoEnt));
    d.detach(EP, 1).unwrap();
    assert_eq!(fake.domain_of(EP), None);
    assert_eq!(fake.mappings(1), None, "an empty domain is freed");
    let c = d.counters();
    assert_eq!((c.attach, c.detach, c.map, c.unmap), (2, 2, 5, 3));
    assert_eq!(c.replies, c.requests());
    assert_eq!(
        c.notifications,
        c.requests(),
        "one request per call, one notification each"
    );
    assert_eq!(fake.notifications()[0], c.notifications);
}

#[test]
fn a_bypass_domain_passes_dma_through_and_refuses_maps() {
    let (fake, d) = default_pair();
    assert_eq!(fake.dma(EP, 0x1234_5000, false), None, "unattached: denied");
    d.attach_bypass(EP, 3).unwrap();
    assert_eq!(fake.dma(EP, 0x1234_5000, false), Some(0x1234_5000));
    assert_eq!(
        d.request(map(3, 0, 0x1000, 0, wire::MAP_F_READ)),
        failed(RequestKind::Map, Status::Inval)
    );
    assert_eq!(
        d.attach(EP, 3),
        failed(RequestKind::Attach, Status::Inval),
        "same domain, other bypass flag"
    );
    assert_eq!(
        d.attach(EP, 0x1_0000),
        Ok(()),
        "re-attach elsewhere detaches"
    );
    assert_eq!(fake.domain_of(EP), Some(0x1_0000));
}

#[test]
fn every_error_status_is_typed_and_undefined_ones_are_reported() {
    let (fake, d) = default_pair();
    d.attach(EP, 1).unwrap();
    for (code, status) in [
        (1, Status::IoErr),
        (2, Status::Unsupp),
        (3, Status::DevErr),
        (4, Status::Inval),
        (5, Status::Range),
        (6, Status::NoEnt),
        (7, Status::Fault),
        (8, Status::NoMem),
    ] {
        fake.misbehave(Misbehave {
            status: Some(code),
            ..Default::default()
        });
        assert_eq!(d.detach(0x20, 1), failed(RequestKind::Detach, status));
    }
    fake.misbehave(Misbehave {
        status: Some(0x42),
        ..Default::default()
    });
    assert_eq!(
        d.attach(EP, 1),
        Err(VirtioIommuError::UnknownStatus {
            request: RequestKind::Attach,
            code: 0x42
        })
    );
    fake.misbehave(Misbehave::default());
    assert!(!d.is_broken(), "error statuses do not break the driver");
    d.attach(EP, 2).unwrap();
}

#[test]
fn probe_reports_reserved_regions_which_become_allocator_holes() {
    let (_fake, d) = default_pair();
    let info = d.probe(EP).unwrap();
    assert_eq!(info.reserved.len(), 1);
    let r = info.reserved[0];
    assert_eq!(
        (r.start, r.end, r.kind),
        (0xfee0_0000, 0xfeef_ffff, ReservedKind::Msi)
    );
    assert_eq!(
        d.probe(0x77),
        Err(VirtioIommuError::Request {
            request: RequestKind::Probe,
            status: Status::NoEnt
        })
    );
    // The MSI window is never handed out.
    use iova_core::iova_alloc::IovaAllocatorConfig;
    use iova_core::{Iova, IovaAllocator, IovaRange};
    let aperture = IovaRange::new(Iova(0xfe00_0000), 0x200_0000).unwrap();
    let iovas =
        IovaAllocator::with_capacity(IovaAllocatorConfig::new(aperture, 0x1000), 64, 0).unwrap();
    assert_eq!(info.reserve_in(&iovas), Ok(1));
    let mut got = 0;
    while let Ok(a) = iovas.alloc(0, 0x10_0000, 0x10_0000) {
        assert!(!a.range().overlaps(&r.range()), "{:?}", a.range());
        got += 1;
        let _live = a.into_raw();
    }
    assert_eq!(got, 31, "everything but the 1 MiB hole");
    assert_eq!(d.counters().probe, 2);
}

#[test]
fn run_refuses_fewer_results_than_requests_and_leaves_extra_results_alone() {
    let (fake, d) = default_pair();
    d.attach(EP, 1).unwrap();
    let sent = fake.handled().len();
    let reqs = [map(1, 0x100_0000, 0x1000, 0x4000_0000, 1); 2];
    let mut short = [Ok(()); 1];
    assert_eq!(
        d.run(&reqs, &mut short),
        Err(VirtioIommuError::InvalidArgument(
            iommu_virtio::BadArgument::ResultsTooShort
        ))
    );
    assert_eq!(fake.handled().len(), sent, "nothing sent");
    let mut long = [Err(VirtioIommuError::Broken); 3];
    d.run(&reqs[..1], &mut long).unwrap();
    assert_eq!(long[0], Ok(()));
    assert_eq!(long[1..], [Err(VirtioIommuError::Broken); 2]);
    assert_eq!(fake.mappings(1).unwrap().len(), 1);
}

#[test]
fn a_full_queue_is_flushed_and_the_batch_goes_on() {
    // Q = 8: four requests per batch.
    let (fake, d) = setup::<8>(FakeConfig::default(), patient());
    d.attach(EP, 1).unwrap();
    let before = d.counters();
    let reqs: Vec<Request> = (0..10)
        .map(|i| {
            map(
                1,
                0x100_0000 + i * 0x2000,
                0x1000,
                0x4000_0000 + i * 0x1000,
                1,
            )
        })
        .collect();
    let mut results = vec![Err(VirtioIommuError::Broken); 10];
    d.run(&reqs, &mut results).unwrap();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let c = d.counters().since(&before);
    assert_eq!(c.map, 10);
    assert_eq!(c.notifications, 3, "4 + 4 + 2");
    assert_eq!(fake.mappings(1).unwrap().len(), 10, "no request dropped");
    assert_eq!(Driver::<8>::batch_capacity(), 4);
}

#[test]
fn a_batch_within_capacity_is_one_notification_and_results_keep_their_order() {
    let (fake, d) = setup::<64>(FakeConfig::default(), patient());
    d.attach(EP, 1).unwrap();
    let before = d.counters();
    let mut reqs: Vec<Request> = (0..20)
        .map(|i| map(1, 0x100_0000 + i * 0x1000, 0x1000, 0x4000_0000, 1))
        .collect();
    reqs[7] = map(1, 0x100_0000, 0x1000, 0, 1); // overlaps request 0
    reqs[13] = map(5, 0x900_0000, 0x1000, 0, 1); // unknown domain
    let mut results = vec![Ok(()); 20];
    d.run(&reqs, &mut results).unwrap();
    for (i, r) in results.iter().enumerate() {
        match i {
            7 => assert_eq!(*r, failed(RequestKind::Map, Status::Inval)),
            13 => assert_eq!(*r, failed(RequestKind::Map, Status::NoEnt)),
            _ => assert_eq!(*r, Ok(()), "{i}"),
        }
    }
    assert_eq!(d.counters().since(&before).notifications, 1);
    assert_eq!(fake.handled().len(), 21);
}

#[test]
fn a_device_that_never_answers_times_out_and_the_driver_stops() {
    // Fewer polls under Miri, where one takes far longer: the bound under
    // test is the count, not the clock.
    let dc = DriverConfig {
        wait: WaitBudget {
            max_polls: if cfg!(miri) { 2_000 } else { 200_000 },
            clock: None,
        },
        ..patient()
    };
    let (fake, d) = setup::<16>(FakeConfig::default(), dc);
    fake.misbehave(Misbehave {
        silent: true,
        ..Default::default()
    });
    let t0 = std::time::Instant::now();
    assert_eq!(d.attach(EP, 1), Err(VirtioIommuError::Timeout(Wait::Reply)));
    assert!(t0.elapsed() < std::time::Duration::from_secs(10));
    assert!(d.is_broken());
    fake.misbehave(Misbehave::default());
    assert_eq!(d.attach(EP, 1), Err(VirtioIommuError::Broken));
    assert_eq!(d.probe(EP), Err(VirtioIommuError::Broken));
}

#[test]
fn a_clock_bounds_the_wait_too() {
    let dc = DriverConfig {
        wait: WaitBudget {
            max_polls: u64::MAX,
            clock: Some((iommu_virtio::fake::host_clock_us, 50_000)),
        },
        ..patient()
    };
    let (fake, d) = setup::<16>(FakeConfig::default(), dc);
    fake.misbehave(Misbehave {
        silent: true,
        ..Default::default()
    });
    let t0 = std::time::Instant::now();
    assert_eq!(d.attach(EP, 1), Err(VirtioIommuError::Timeout(Wait::Reply)));
    let waited = t0.elapsed();
    assert!(waited >= std::time::Duration::from_millis(50), "{waited:?}");
    assert!(waited < std::time::Duration::from_secs(5), "{waited:?}");
}

#[test]
fn short_replies_and_foreign_used_entries_are_typed_errors() {
    let (fake, d) = default_pair();
    fake.misbehave(Misbehave {
        used_len: Some(2),
        ..Default::default()
    });
    assert_eq!(
        d.attach(EP, 1),
        Err(VirtioIommuError::ShortReply {
            request: RequestKind::Attach,
            used: 2,
            needed: 4
        })
    );
    assert_eq!(
        d.probe(EP),
        Err(VirtioIommuError::ShortReply {
            request: RequestKind::Probe,
            used: 2,
            needed: 516
        })
    );
    fake.misbehave(Misbehave::default());
    assert!(
        !d.is_broken(),
        "a short reply frees its slot; the queue stays usable"
    );
    d.attach(EP, 1).unwrap();
    fake.misbehave(Misbehave {
        used_id: Some(9),
        ..Default::default()
    });
    assert!(matches!(
        d.detach(EP, 1),
        Err(VirtioIommuError::BadUsedEntry(9))
    ));
    assert!(d.is_broken());
}

#[test]
fn faults_are_decoded_drained_and_the_event_queue_stays_stocked() {
    let (fake, d) = default_pair();
    d.attach(EP, 1).unwrap();
    d.request(map(1, 0x20_0000, 0x1000, 0x4000_0000, wire::MAP_F_READ))
        .unwrap();
    assert_eq!(fake.dma(EP, 0x20_0010, false), Some(0x4000_0010));
    assert_eq!(fake.dma(EP, 0x20_0010, true), None, "read-only");
    assert_eq!(fake.dma(EP, 0x30_0000, false), None, "unmapped");
    let f = d.pop_fault().unwrap();
    assert_eq!(f.reason, FaultReason::Mapping);
    assert!(f.write && !f.read);
    assert_eq!((f.endpoint, f.address), (EP, Some(0x20_0010)));
    let f = d.pop_fault().unwrap();
    assert_eq!(f.reason, FaultReason::Mapping);
    assert!(
        !f.write && !f.read,
        "a missing mapping reports no access flags"
    );
    assert_eq!(f.address, Some(0x30_0000));
    assert_eq!(d.pop_fault(), None);

    // Unknown endpoint and detached endpoint with bypass off.
    assert_eq!(fake.dma(0x20, 0x1000, true), None);
    d.detach(EP, 1).unwrap();
    assert_eq!(fake.dma(EP, 0x1000, true), None);
    assert_eq!(
        d.pop_fault().map(|f| (f.reason, f.endpoint)),
        Some((FaultReason::Unknown, 0x20))
    );
    assert_eq!(
        d.pop_fault().map(|f| (f.reason, f.endpoint)),
        Some((FaultReason::Domain, EP))
    );

    // Three rounds of a full event queue: buffers are given back each time.
    for round in 0..3 {
        for i in 0..EVENT_QUEUE_SIZE as u64 {
            assert_eq!(fake.dma(0x20, i * 4, false), None);
        }
        assert_eq!(d.poll_events(), EVENT_QUEUE_SIZE, "round {round}");
    }
    assert_eq!(fake.faults_dropped(), 0);
    let mut n = 0;
    while d.pop_fault().is_some() {
        n += 1;
    }
    assert_eq!(n, 3 * EVENT_QUEUE_SIZE);
    assert_eq!(d.counters().events, 4 + 3 * EVENT_QUEUE_SIZE as u64);

    // A truncated event is counted, not decoded.
    assert!(fake.post_raw_event(&[2, 0, 0, 0], 4));
    assert_eq!(d.pop_fault(), None);
    assert_eq!(d.counters().malformed_events, 1);
}

#[test]
fn reset_returns_the_transport_with_the_device_reset() {
    let (fake, d) = default_pair();
    d.attach(EP, 1).unwrap();
    let t = d.reset().unwrap();
    assert_eq!(fake.status(), 0);
    assert_eq!(fake.domain_of(EP), None);
    // A new driver over the same transport works.
    let d = Driver::<16>::new(t, patient()).unwrap();
    d.attach(EP, 4).unwrap();
}

#[test]
fn a_device_that_misbehaves_during_init_is_refused_with_a_typed_error() {
    let dc = DriverConfig {
        wait: WaitBudget {
            max_polls: 10_000,
            clock: None,
        },
        ..Default::default()
    };
    for (m, want) in [
        (
            Misbehave {
                stuck_reset: true,
                ..Default::default()
            },
            VirtioIommuError::Timeout(Wait::Reset),
        ),
        (
            Misbehave {
                reject_features: true,
                ..Default::default()
            },
            VirtioIommuError::FeaturesRejected,
        ),
        (
            Misbehave {
                unstable_generation: true,
                ..Default::default()
            },
            VirtioIommuError::BadConfig(ConfigField::Generation),
        ),
    ] {
        let (fake, t) = FakeIommu::new(FakeConfig::default());
        fake.misbehave(m);
        assert_eq!(Driver::<16>::new(t, dc).unwrap_err(), want, "{m:?}");
        assert_ne!(
            fake.status() & DeviceStatus::FAILED.bits() as u8,
            0,
            "{m:?}"
        );
        assert_eq!(
            fake.status() & DeviceStatus::DRIVER_OK.bits() as u8,
            0,
            "{m:?}"
        );
    }
}

#[test]
fn the_aperture_is_whole_granules_inside_the_input_range() {
    let g = |start: u64, end: u64, granule: u64| Geometry {
        page_size_mask: !(granule - 1),
        granule,
        input_start: start,
        input_end: end,
        domain_start: 0,
        domain_end: 0,
        probe_size: 0,
        unattached_bypass: false,
    };
    let r = |a: u64, b: u64| {
        Some(iova_core::IovaRange {
            start: iova_core::Iova(a),
            end: iova_core::Iova(b),
        })
    };
    assert_eq!(g(0, u64::MAX, 0x1000).aperture(), r(0, !0xfff));
    assert_eq!(g(0x800, 0x2_0fff, 0x1000).aperture(), r(0x1000, 0x2_1000));
    assert_eq!(g(0x800, 0x2_0ffe, 0x1000).aperture(), r(0x1000, 0x2_0000));
    assert_eq!(
        g(0x1001, 0x1fff, 0x1000).aperture(),
        None,
        "no whole granule"
    );
    assert_eq!(g(0, 0xffff, 0x1_0000).aperture(), r(0, 0x1_0000));
}

#[test]
fn dropping_the_driver_resets_the_device_before_freeing_its_memory() {
    let (fake, d) = default_pair();
    d.attach(EP, 1).unwrap();
    drop(d);
    assert_eq!(fake.status(), 0, "reset on drop");
    assert_eq!(fake.domain_of(EP), None);

    // A device that never finishes the reset keeps its memory (leaked, not
    // freed under it): the drop returns, bounded.
    let dc = DriverConfig {
        wait: WaitBudget {
            max_polls: 10_000,
            clock: None,
        },
        ..patient()
    };
    let (fake, d) = setup::<16>(FakeConfig::default(), dc);
    fake.misbehave(Misbehave {
        stuck_reset: true,
        ..Default::default()
    });
    let live = HostHal::dma_live();
    assert_eq!(
        d.reset().err(),
        Some(VirtioIommuError::Timeout(Wait::Reset))
    );
    assert_ne!(fake.status(), 0);
    assert_eq!(HostHal::dma_live(), live, "nothing freed under the device");
    drop(fake);
    // SAFETY: the driver is gone and so is the device thread.
    assert_eq!(unsafe { HostHal::free_leaked() }, live as usize);
}

#[test]
fn the_driver_and_a_domain_accept_virtio_drivers_mmio_transport() {
    // Type-level only (QEMU has no virtio-iommu on virtio-mmio to run it
    // against): the MMIO transport satisfies every bound the driver and the
    // `IommuDomain` implementation need.
    use virtio_drivers::transport::mmio::MmioTransport;
    fn is_iommu_domain<D: iova_core::IommuDomain>() {}
    fn is_sync<S: Sync>() {}
    is_sync::<VirtioIommu<HostHal, MmioTransport<'static>, 16>>();
    is_iommu_domain::<iommu_virtio::VirtioDomain<'static, HostHal, MmioTransport<'static>, 16, 8>>(
    );
    let _new: fn(
        MmioTransport<'static>,
        DriverConfig,
    )
        -> Result<VirtioIommu<HostHal, MmioTransport<'static>, 16>, VirtioIommuError> =
        VirtioIommu::new;
}

#[test]
fn a_queue_failure_after_the_device_saw_a_queue_resets_it_before_freeing() {
    // The request queue (4) fits, the event queue (8) does not.
    let (fake, t) = FakeIommu::new(FakeConfig {
        max_queue: 4,
        ..Default::default()
    });
    assert_eq!(
        Driver::<4>::new(t, patient()).unwrap_err(),
        VirtioIommuError::Queue(QueueProblem::EventQueueUnavailable)
    );
    assert_eq!(
        fake.status(),
        DeviceStatus::FAILED.bits() as u8,
        "reset (ACK/DRIVER/FEATURES_OK gone), then FAILED"
    );
}

#[test]
fn the_driver_tracks_attachments_and_refuses_one_past_its_table() {
    let n = MAX_ENDPOINTS as u32;
    let (fake, d) = setup::<16>(
        FakeConfig {
            endpoints: (0..=n).map(|e| (0x100 + e, vec![])).collect(),
            ..Default::default()
        },
        patient(),
    );
    for e in 0..n {
        d.attach(0x100 + e, 1).unwrap();
    }
    let sent = fake.handled().len();
    assert_eq!(d.attach(0x100 + n, 1), Err(VirtioIommuError::StorageFull));
    assert_eq!(fake.handled().len(), sent, "nothing sent");
    assert_eq!(fake.domain_of(0x100 + n), None);
    // A tracked endpoint still moves, and a detach frees a place.
    d.attach_bypass(0x100, 2).unwrap();
    assert_eq!(d.attached_domain(0x100), Some(2));
    d.detach(0x100, 2).unwrap();
    assert_eq!(d.attached_domain(0x100), None);
    // A refused ATTACH changes nothing the driver records.
    assert_eq!(
        d.attach(0x9999, 1),
        failed(RequestKind::Attach, Status::NoEnt)
    );
    assert_eq!(d.attached_domain(0x9999), None);
    d.attach(0x100 + n, 1).unwrap();
    assert_eq!(d.attached_domain(0x100 + n), Some(1));
}

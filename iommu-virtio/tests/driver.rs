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
        !d.geometry().unattached_bypass,
        "F_BYPASS offered, bypass not asked: declined"
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

/// The endpoint's DMA faults, and the driver sees a DOMAIN fault for it.
fn assert_unattached_dma_is_blocked(fake: &FakeIommu, d: &Driver, why: &str) {
    assert_eq!(fake.dma(EP, 0x1234_5000, false), None, "{why}: blocked");
    assert_eq!(
        d.pop_fault().map(|f| (f.reason, f.endpoint, f.address)),
        Some((FaultReason::Domain, EP, Some(0x1234_5000))),
        "{why}: a DOMAIN fault"
    );
}

#[test]
fn f_bypass_without_bypass_config_is_declined_unless_asked_and_unattached_dma_faults() {
    // bypass = 1 in the config: a device without BYPASS_CONFIG ignores it.
    let cfg = FakeConfig {
        features: Features::VERSION_1 | Features::MAP_UNMAP | Features::BYPASS,
        bypass: 1,
        ..Default::default()
    };
    let (fake, d) = setup::<16>(cfg, patient());
    assert_unattached_dma_is_blocked(&fake, &d, "F_BYPASS offered, not asked");
    assert!(!d.geometry().unattached_bypass);
    assert_eq!(
        fake.driver_features(),
        Features::VERSION_1 | Features::MAP_UNMAP,
        "F_BYPASS declined"
    );
    assert_eq!(d.features(), fake.driver_features());
    assert_eq!(fake.bypass_writes(), 0);
}

#[test]
fn every_offer_of_bypass_and_bypass_config_against_either_request_agrees_with_the_device() {
    const B: Features = Features::BYPASS;
    const C: Features = Features::BYPASS_CONFIG;
    const NONE: Features = Features::empty();
    // (offered, asked) -> negotiated of B | C, bypass written (None: never),
    // unattached endpoints bypass. Both offered: BYPASS_CONFIG supersedes,
    // F_BYPASS is never accepted (it would bypass whatever `bypass` says).
    let rows: [(Features, bool, Features, Option<u8>, bool); 7] = [
        (NONE, false, NONE, None, false),
        (B, false, NONE, None, false),
        (B, true, B, None, true),
        (C, false, C, Some(0), false),
        (C, true, C, Some(1), true),
        (B | C, false, C, Some(0), false),
        (B | C, true, C, Some(1), true),
    ];
    let base = FakeConfig::default().features - C;
    for (offered, asked, negotiated, written, bypass) in rows {
        // The byte the device starts with must not decide anything.
        for initial in [0u8, 1] {
            let case = format!("offered {offered:?}, asked {asked}, initial bypass {initial}");
            let (fake, t) = FakeIommu::new(FakeConfig {
                features: base | offered,
                bypass: initial,
                ..Default::default()
            });
            let dc = DriverConfig {
                bypass_unattached: asked,
                ..patient()
            };
            let d = Driver::new(t, dc).unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(d.features(), fake.driver_features(), "{case}");
            assert_eq!(fake.driver_features() & (B | C), negotiated, "{case}");
            assert_eq!(
                fake.driver_features() - (B | C),
                base & Features::SUPPORTED,
                "{case}"
            );
            match written {
                Some(v) => assert_eq!((fake.bypass_writes(), fake.bypass()), (1, v), "{case}"),
                None => assert_eq!(fake.bypass_writes(), 0, "{case}"),
            }
            assert_eq!(d.geometry().unattached_bypass, bypass, "{case}");
            if bypass {
                assert_eq!(fake.dma(EP, 0x1234_5000, true), Some(0x1234_5000), "{case}");
                assert_eq!(d.pop_fault(), None, "{case}");
            } else {
                assert_unattached_dma_is_blocked(&fake, &d, &case);
            }
            // Attached, the endpoint translates in every case.
            d.attach(EP, 1).unwrap();
            d.request(map(1, 0x10_0000, 0x1000, 0x4000_0000, wire::MAP_F_READ))
                .unwrap();
            assert_eq!(fake.dma(EP, 0x10_0008, false), Some(0x4000_0008), "{case}");
            assert_eq!(fake.dma(EP, 0x1234_5000, false), None, "{case}");
        }
    }

    // Asked for bypass, offered neither: refused before any feature is
    // accepted, as a missing required feature is.
    let (fake, t) = FakeIommu::new(FakeConfig {
        features: base,
        ..Default::default()
    });
    let dc = DriverConfig {
        bypass_unattached: true,
        ..patient()
    };
    assert_eq!(
        Driver::<16>::new(t, dc).err(),
        Some(VirtioIommuError::MissingFeatures((B | C).bits()))
    );
    assert_eq!(fake.driver_features(), NONE, "nothing accepted");
    assert_ne!(fake.status() & DeviceStatus::FAILED.bits() as u8, 0);
    assert_eq!(fake.status() & DeviceStatus::DRIVER_OK.bits() as u8, 0);
    assert_eq!(fake.bypass_writes(), 0);
    assert_eq!(fake.dma(EP, 0x1234_5000, false), None, "blocked");
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

/// Status codes, reply decoding and the mapping onto `iova_core::Error`.
mod error {
    use iommu_virtio::{BadArgument, RequestKind, Status, VirtioIommuError, Wait};

    #[test]
    fn every_status_code_round_trips_and_decodes_to_its_variant() {
        let named = [
            (0, Status::Ok),
            (1, Status::IoErr),
            (2, Status::Unsupp),
            (3, Status::DevErr),
            (4, Status::Inval),
            (5, Status::Range),
            (6, Status::NoEnt),
            (7, Status::Fault),
            (8, Status::NoMem),
        ];
        for (code, status) in named {
            assert_eq!(Status::from_code(code), status);
            assert_eq!(status.code(), code);
        }
        for code in 9..=255u8 {
            assert_eq!(Status::from_code(code), Status::Unknown(code));
            assert_eq!(Status::from_code(code).code(), code);
        }
    }

    #[test]
    fn each_argument_problem_maps_to_the_core_error_of_the_same_cause() {
        use iova_core::Error as E;
        for (arg, core) in [
            (BadArgument::ZeroLength, E::ZeroLength),
            (BadArgument::Overflow, E::Overflow),
            (BadArgument::Misaligned, E::Misaligned),
            (BadArgument::NoAccess, E::InvalidProt),
            (BadArgument::ResultsTooShort, E::StorageFull),
        ] {
            assert_eq!(
                E::from(VirtioIommuError::InvalidArgument(arg)),
                core,
                "{arg:?}"
            );
        }
        assert_eq!(
            E::from(VirtioIommuError::DomainInUse(3)),
            E::Device(iova_core::DeviceError::Busy(3))
        );
        for wait in [Wait::Reset, Wait::Reply] {
            assert_eq!(E::from(VirtioIommuError::Timeout(wait)), E::Timeout);
        }
    }

    #[test]
    fn error_statuses_become_typed_errors() {
        assert_eq!(Status::Ok.result(RequestKind::Map), Ok(()));
        assert_eq!(
            Status::Range.result(RequestKind::Unmap),
            Err(VirtioIommuError::Request {
                request: RequestKind::Unmap,
                status: Status::Range
            })
        );
        assert_eq!(
            Status::from_code(0x42).result(RequestKind::Attach),
            Err(VirtioIommuError::UnknownStatus {
                request: RequestKind::Attach,
                code: 0x42
            })
        );
        let core: iova_core::Error = Status::NoEnt.result(RequestKind::Map).unwrap_err().into();
        assert_eq!(
            core,
            iova_core::Error::Device(iova_core::DeviceError::RequestFailed { status: 6 })
        );
        assert_eq!(
            iova_core::Error::from(VirtioIommuError::Timeout(Wait::Reply)),
            iova_core::Error::Timeout
        );
        assert_eq!(
            iova_core::Error::from(VirtioIommuError::SplitsMapping),
            iova_core::Error::PartialUnmap
        );
    }
}

/// Fault events decoded.
mod fault {
    use iommu_virtio::wire;
    use iommu_virtio::{FaultReason, FaultRecord};
    use zerocopy::little_endian::{U32, U64};

    fn raw(reason: u8, flags: u32) -> wire::Fault {
        wire::Fault {
            reason,
            flags: U32::new(flags),
            endpoint: U32::new(0x10),
            address: U64::new(0xdead_b000),
            ..Default::default()
        }
    }

    #[test]
    fn reasons_flags_and_address_decode() {
        let f = FaultRecord::decode(&raw(2, 0x102));
        assert_eq!(f.reason, FaultReason::Mapping);
        assert!(f.write && !f.read && !f.exec);
        assert_eq!(f.address, Some(0xdead_b000));
        assert_eq!(f.endpoint, 0x10);
        let f = FaultRecord::decode(&raw(1, 0x5));
        assert_eq!(f.reason, FaultReason::Domain);
        assert!(f.read && f.exec && !f.write);
        assert_eq!(f.address, None, "no ADDRESS flag: the address is not valid");
        assert_eq!(FaultRecord::decode(&raw(0, 0)).reason, FaultReason::Unknown);
        assert_eq!(
            FaultRecord::decode(&raw(9, 0)).reason,
            FaultReason::Other(9)
        );
    }
}

/// Feature negotiation.
mod features {
    use iommu_virtio::Features;

    #[test]
    fn qemu_offer_negotiates_to_the_device_features_we_use() {
        // Measured on QEMU 7.2 and 10.0: dword 0 = 0x30000077, dword 1 = 0x00000101.
        let offered = Features::from_bits_retain(0x0000_0101_3000_0077);
        let accepted = offered & Features::SUPPORTED;
        assert_eq!(
            accepted,
            Features::VERSION_1
                | Features::INPUT_RANGE
                | Features::DOMAIN_RANGE
                | Features::MAP_UNMAP
                | Features::PROBE
                | Features::MMIO
                | Features::BYPASS_CONFIG
        );
        assert!(!accepted.contains(Features::ACCESS_PLATFORM));
        assert!(accepted.contains(Features::REQUIRED));
    }
}

/// PROBE property lists.
mod probe {
    use iommu_virtio::{ProbeInfo, ProbeProblem, ReservedKind, ReservedRegion, VirtioIommuError};

    fn resv(subtype: u8, start: u64, end: u64) -> [u8; 24] {
        let mut b = [0u8; 24];
        b[0..2].copy_from_slice(&1u16.to_le_bytes());
        b[2..4].copy_from_slice(&20u16.to_le_bytes());
        b[4] = subtype;
        b[8..16].copy_from_slice(&start.to_le_bytes());
        b[16..24].copy_from_slice(&end.to_le_bytes());
        b
    }

    #[test]
    fn parses_regions_skips_unknown_properties_and_stops_at_none() {
        let mut buf = [0u8; 512];
        buf[..24].copy_from_slice(&resv(1, 0xfee0_0000, 0xfeef_ffff));
        // An unknown property type 0x7 with 4 bytes of value.
        buf[24..28].copy_from_slice(&[7, 0, 4, 0]);
        buf[32..56].copy_from_slice(&resv(0, 0x1000, 0x1fff));
        let info = ProbeInfo::parse(&buf).unwrap();
        assert_eq!(info.unknown_properties, 1);
        assert_eq!(
            info.reserved.as_slice(),
            &[
                ReservedRegion {
                    start: 0xfee0_0000,
                    end: 0xfeef_ffff,
                    kind: ReservedKind::Msi
                },
                ReservedRegion {
                    start: 0x1000,
                    end: 0x1fff,
                    kind: ReservedKind::Reserved
                }
            ]
        );
        assert_eq!(info.reserved[0].range().len(), 0x10_0000);
    }

    #[test]
    fn a_region_of_the_last_byte_reserves_nothing_and_is_no_error() {
        // Its half-open range is empty, which the allocator would refuse
        // (ZeroSize): `reserve_in` must skip it, not fail the probe.
        let info = ProbeInfo::parse(&resv(1, u64::MAX, u64::MAX)).unwrap();
        assert!(info.reserved[0].range().is_empty());
        let aperture = iova_core::IovaRange {
            start: iova_core::Iova(0x1000),
            end: iova_core::Iova(1 << 48),
        };
        let iovas = iova_core::IovaAllocator::with_capacity(
            iova_core::IovaAllocatorConfig::new(aperture, 0x1000),
            8,
            0,
        )
        .unwrap();
        assert_eq!(info.reserve_in(&iovas), Ok(1));
    }

    #[test]
    fn malformed_lists_are_errors_naming_what_is_wrong() {
        let mut buf = [0u8; 24];
        buf.copy_from_slice(&resv(1, 0x2000, 0x1000));
        assert_eq!(
            ProbeInfo::parse(&buf),
            Err(VirtioIommuError::BadProbe(ProbeProblem::ResvMemReversed))
        );
        let mut short = resv(1, 0, 0xfff);
        short[2] = 40; // length past the end of the buffer
        assert_eq!(
            ProbeInfo::parse(&short),
            Err(VirtioIommuError::BadProbe(ProbeProblem::PropertyPastEnd))
        );
        let mut tiny = resv(1, 0, 0xfff);
        tiny[2] = 8; // too short for RESV_MEM
        assert_eq!(
            ProbeInfo::parse(&tiny),
            Err(VirtioIommuError::BadProbe(ProbeProblem::ResvMemTooShort))
        );
    }
}

/// The wire structures, bit for bit.
mod wire_layout {
    use core::mem::offset_of;
    use iommu_virtio::wire::*;
    use zerocopy::little_endian::{U32, U64};
    use zerocopy::{FromBytes, IntoBytes};

    #[test]
    fn sizes_and_alignment_match_the_specification() {
        assert_eq!(size_of::<ReqHead>(), 4);
        assert_eq!(size_of::<ReqTail>(), 4);
        assert_eq!(size_of::<AttachReq>(), 20);
        assert_eq!(size_of::<DetachReq>(), 20);
        assert_eq!(size_of::<MapReq>(), 36);
        assert_eq!(size_of::<UnmapReq>(), 28);
        assert_eq!(size_of::<ProbeReq>(), 72);
        assert_eq!(size_of::<ProbeProperty>() + size_of::<ResvMem>(), 24);
        assert_eq!(size_of::<Fault>(), 24);
        assert_eq!(size_of::<Config>(), 40);
        assert_eq!(align_of::<MapReq>(), 1);
        assert_eq!(align_of::<Config>(), 1);
    }

    #[test]
    fn field_offsets_match_the_specification() {
        assert_eq!(offset_of!(AttachReq, domain), 4);
        assert_eq!(offset_of!(AttachReq, endpoint), 8);
        assert_eq!(offset_of!(AttachReq, flags), 12);
        assert_eq!(offset_of!(DetachReq, endpoint), 8);
        assert_eq!(offset_of!(MapReq, domain), 4);
        assert_eq!(offset_of!(MapReq, virt_start), 8);
        assert_eq!(offset_of!(MapReq, virt_end), 16);
        assert_eq!(offset_of!(MapReq, phys_start), 24);
        assert_eq!(offset_of!(MapReq, flags), 32);
        assert_eq!(offset_of!(UnmapReq, virt_start), 8);
        assert_eq!(offset_of!(UnmapReq, virt_end), 16);
        assert_eq!(offset_of!(ProbeReq, endpoint), 4);
        assert_eq!(offset_of!(ResvMem, start), 4);
        assert_eq!(offset_of!(ResvMem, end), 12);
        assert_eq!(offset_of!(Fault, flags), 4);
        assert_eq!(offset_of!(Fault, endpoint), 8);
        assert_eq!(offset_of!(Fault, address), 16);
        assert_eq!(
            offset_of!(Config, page_size_mask),
            config_offset::PAGE_SIZE_MASK
        );
        assert_eq!(offset_of!(Config, input_start), config_offset::INPUT_START);
        assert_eq!(offset_of!(Config, input_end), config_offset::INPUT_END);
        assert_eq!(
            offset_of!(Config, domain_start),
            config_offset::DOMAIN_START
        );
        assert_eq!(offset_of!(Config, domain_end), config_offset::DOMAIN_END);
        assert_eq!(offset_of!(Config, probe_size), config_offset::PROBE_SIZE);
        assert_eq!(offset_of!(Config, bypass), config_offset::BYPASS);
    }

    #[test]
    fn a_map_request_encodes_little_endian_at_the_right_bytes() {
        let req = MapReq {
            head: ReqHead {
                kind: T_MAP,
                reserved: [0; 3],
            },
            domain: U32::new(0x0102_0304),
            virt_start: U64::new(0x1122_3344_5566_7788),
            virt_end: U64::new(0x1122_3344_5566_8787),
            phys_start: U64::new(0x0000_0000_4000_1000),
            flags: U32::new(MAP_F_READ | MAP_F_WRITE),
        };
        let b = req.as_bytes();
        assert_eq!(b[0], 3);
        assert_eq!(&b[4..8], &[4, 3, 2, 1]);
        assert_eq!(&b[8..16], &[0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]);
        assert_eq!(&b[16..18], &[0x87, 0x87]);
        assert_eq!(&b[24..32], &[0, 0x10, 0, 0x40, 0, 0, 0, 0]);
        assert_eq!(&b[32..36], &[3, 0, 0, 0]);
        assert_eq!(MapReq::read_from_bytes(b).unwrap(), req);
    }

    #[test]
    fn a_fault_decodes_from_the_bytes_qemu_writes() {
        // A write to a read-only mapping, endpoint 0x10 (00:02.0), at 0x80_0000_1004.
        let mut raw = [0u8; 24];
        raw[0] = FAULT_R_MAPPING;
        raw[4..8].copy_from_slice(&0x102u32.to_le_bytes());
        raw[8..12].copy_from_slice(&0x10u32.to_le_bytes());
        raw[16..24].copy_from_slice(&0x80_0000_1004u64.to_le_bytes());
        let f = Fault::read_from_bytes(&raw).unwrap();
        assert_eq!(f.reason, FAULT_R_MAPPING);
        assert_eq!(f.flags.get(), FAULT_F_ADDRESS | FAULT_F_WRITE);
        assert_eq!(f.endpoint.get(), 0x10);
        assert_eq!(f.address.get(), 0x80_0000_1004);
    }

    #[test]
    fn a_resv_mem_property_decodes() {
        // QEMU q35's MSI window as PROBE reports it: type 1, length 20, subtype MSI.
        let mut raw = [0u8; 24];
        raw[0..2].copy_from_slice(&1u16.to_le_bytes());
        raw[2..4].copy_from_slice(&20u16.to_le_bytes());
        raw[4] = RESV_MEM_T_MSI;
        raw[8..16].copy_from_slice(&0xfee0_0000u64.to_le_bytes());
        raw[16..24].copy_from_slice(&0xfeef_ffffu64.to_le_bytes());
        let (head, rest) = ProbeProperty::read_from_prefix(&raw).unwrap();
        assert_eq!(head.kind.get() & PROBE_T_MASK, PROBE_T_RESV_MEM);
        assert_eq!(usize::from(head.length.get()), size_of::<ResvMem>());
        let mem = ResvMem::read_from_bytes(rest).unwrap();
        assert_eq!(mem.subtype, RESV_MEM_T_MSI);
        assert_eq!((mem.start.get(), mem.end.get()), (0xfee0_0000, 0xfeef_ffff));
    }
}

/// The virtio-PCI transport over plain memory as its BAR (`VirtioPciTransport::new`, `MmioRegion`).
mod pci {
    use iommu_virtio::transport::pci::{PciBar, PciConfig, PciTransportError, VirtioPciTransport};
    use iommu_virtio::virtio_drivers::Error as VirtioError;
    use iommu_virtio::virtio_drivers::transport::{DeviceType, Transport};

    const CAP_VENDOR: u8 = 0x09;
    const CFG_NOTIFY: u8 = 2;
    const CFG_ISR: u8 = 3;
    const CFG_DEVICE: u8 = 4;
    const CFG_COMMON: u8 = 1;

    /// Config space of QEMU's virtio-iommu-pci as measured (caps at 0x84 ->
    /// 0x70 -> 0x60 -> 0x50 -> 0x40, all in BAR4).
    struct QemuLike([u32; 64]);

    impl QemuLike {
        fn new() -> Self {
            let mut c = [0u32; 64];
            c[0] = 0x1057_1af4;
            c[1] = 1 << (16 + 4);
            c[0x34 / 4] = 0x84;
            let mut cap = |at: usize, next: u8, len: u8, ty: u8, off: u32, extra: Option<u32>| {
                c[at / 4] = u32::from(CAP_VENDOR)
                    | u32::from(next) << 8
                    | u32::from(len) << 16
                    | u32::from(ty) << 24;
                c[at / 4 + 1] = 4;
                c[at / 4 + 2] = off;
                c[at / 4 + 3] = 0x1000;
                if let Some(m) = extra {
                    c[at / 4 + 4] = m;
                }
            };
            cap(0x84, 0x70, 20, 5, 0, None); // PCI_CFG: ignored
            cap(0x70, 0x60, 20, CFG_NOTIFY, 0x3000, Some(4));
            cap(0x60, 0x50, 16, CFG_DEVICE, 0x2000, None);
            cap(0x50, 0x40, 16, CFG_ISR, 0x1000, None);
            cap(0x40, 0x00, 16, CFG_COMMON, 0x0000, None);
            Self(c)
        }
    }

    impl PciConfig for QemuLike {
        fn read32(&self, offset: u16) -> u32 {
            self.0
                .get(usize::from(offset / 4))
                .copied()
                .unwrap_or(u32::MAX)
        }
    }

    /// A 16 KiB "BAR" of plain memory that the test reads and writes only
    /// through the pointer it handed the transport, as a device's registers
    /// would be: a reference to the memory would invalidate that pointer.
    struct Bar(*mut [u8; 0x4000]);

    #[repr(C, align(4096))]
    struct BarMemory([u8; 0x4000]);

    impl Bar {
        fn new() -> Self {
            Self(Box::into_raw(Box::new(BarMemory([0; 0x4000]))).cast())
        }
        fn base(&self) -> usize {
            self.0 as usize
        }
        fn get(&self, at: usize, len: usize) -> Vec<u8> {
            assert!(at + len <= 0x4000);
            // SAFETY: inside the allocation this `Bar` owns.
            unsafe { core::slice::from_raw_parts(self.0.cast::<u8>().add(at), len) }.to_vec()
        }
        fn set(&self, at: usize, bytes: &[u8]) {
            assert!(at + bytes.len() <= 0x4000);
            // SAFETY: as in `get`; the transport is not accessing it now.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    self.0.cast::<u8>().add(at),
                    bytes.len(),
                )
            };
        }
    }

    impl Drop for Bar {
        fn drop(&mut self) {
            // SAFETY: made by `Box::into_raw` in `new`, freed only here.
            drop(unsafe { Box::from_raw(self.0.cast::<BarMemory>()) });
        }
    }

    #[test]
    fn finds_the_capabilities_and_splits_64_bit_fields_into_dwords() {
        let bar = Bar::new();
        let mut bars = [None; 6];
        bars[4] = Some(PciBar {
            cpu_addr: bar.base(),
            size: 0x4000,
        });
        // SAFETY: the "BAR" is plain memory owned by this test, which
        // outlives the transport.
        let mut t = unsafe { VirtioPciTransport::new(&QemuLike::new(), &bars) }.unwrap();
        assert_eq!(t.device_type(), DeviceType::IOMMU);
        t.queue_set(1, 8, 0x1122_3344_5566_7788, 0xaabb_ccdd_0000_1000, 0x2000);
        assert_eq!(bar.get(0x16, 2), 1u16.to_le_bytes());
        assert_eq!(bar.get(0x18, 2), 8u16.to_le_bytes());
        assert_eq!(bar.get(0x20, 8), 0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(bar.get(0x28, 8), 0xaabb_ccdd_0000_1000u64.to_le_bytes());
        assert_eq!(bar.get(0x1c, 2), 1u16.to_le_bytes());
        // Device config at BAR4 + 0x2000; a u64 read is two dwords.
        bar.set(0x2000, &0xffff_ffff_ffff_f000u64.to_le_bytes());
        bar.set(0x2024, &[1]);
        assert_eq!(t.read_config_space::<u64>(0), Ok(0xffff_ffff_ffff_f000));
        assert_eq!(t.read_config_space::<u8>(0x24), Ok(1));
        t.write_config_space::<u8>(0x24, 0).unwrap();
        assert_eq!(bar.get(0x2024, 1), [0]);
        assert_eq!(
            t.read_config_space::<u32>(0x1002),
            Err(VirtioError::ConfigSpaceTooSmall)
        );
        // Queue 1's notify offset 1 x multiplier 4 -> BAR4 + 0x3004.
        bar.set(0x1e, &[1]);
        t.notify(1);
        assert_eq!(bar.get(0x3004, 2), 1u16.to_le_bytes());
    }

    #[test]
    fn a_capability_outside_the_bars_is_an_error() {
        let bars = [None; 6];
        // SAFETY: no BAR is given, so nothing is accessed.
        let e = unsafe { VirtioPciTransport::new(&QemuLike::new(), &bars) }.unwrap_err();
        assert!(matches!(e, PciTransportError::BadRegion(_)));
        let mut c = QemuLike::new();
        c.0[0] = 0x1234_1af4;
        // SAFETY: as above.
        let e = unsafe { VirtioPciTransport::new(&c, &bars) }.unwrap_err();
        assert_eq!(e, PciTransportError::BadDeviceId(0x1234));
    }
}

/// The whole driver over the virtio-PCI transport, against the fake device's
/// PCI registers ([`FakeIommu::new_pci`]), and what a register block that
/// refuses an access does to it.
mod pci_fake {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use iommu_virtio::fake::{FakeBar, FakeConfig, FakeIommu, FakePciFunction, HostHal, patient};
    use iommu_virtio::transport::pci::{PciConfig, PciTransportError, VirtioPciTransport};
    use iommu_virtio::transport::{Mmio, MmioError};
    use iommu_virtio::virtio_drivers::Error as VirtioError;
    use iommu_virtio::virtio_drivers::transport::{DeviceStatus, InterruptStatus, Transport};
    use iommu_virtio::{
        ConfigField, DriverConfig, Features, Request, VirtioIommu, VirtioIommuError, Wait,
        WaitBudget, wire,
    };
    use iova_core::hw::{Width, check_access};

    const EP: u32 = 0x10;
    /// Offsets in the common configuration (`struct virtio_pci_common_cfg`).
    const DRIVER_FEATURE: usize = 0x0c;
    const DEVICE_FEATURE: usize = 0x04;
    const DEVICE_STATUS: usize = 0x14;
    const QUEUE_SELECT: usize = 0x16;
    const QUEUE_SIZE: usize = 0x18;
    const QUEUE_ENABLE: usize = 0x1c;
    const QUEUE_DESC: usize = 0x20;
    const QUEUE_DRIVER: usize = 0x28;

    type Driver = VirtioIommu<HostHal, VirtioPciTransport<Refusing>, 16>;

    /// Which accesses a [`Refusing`] BAR refuses: those at BAR offsets in
    /// `[lo, hi)`, reads, writes or both.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Refusal {
        lo: usize,
        hi: usize,
        reads: bool,
        writes: bool,
    }

    impl Refusal {
        fn writes(lo: usize, hi: usize) -> Self {
            Self {
                lo,
                hi,
                reads: false,
                writes: true,
            }
        }
        fn reads(lo: usize, hi: usize) -> Self {
            Self {
                lo,
                hi,
                reads: true,
                writes: false,
            }
        }
    }

    #[derive(Debug, Default)]
    struct Control {
        refusal: Mutex<Option<Refusal>>,
        /// Accesses that reached the BAR.
        accesses: AtomicUsize,
        /// Writes of 1 to QUEUE_ENABLE that reached the BAR.
        enables: AtomicUsize,
    }

    /// A fake BAR behind a bus that refuses some accesses (with
    /// `MmioError::Width`, as a bus that does not take them would), and
    /// reports `size` bytes.
    #[derive(Debug)]
    struct Refusing {
        bar: FakeBar,
        size: usize,
        ctl: Arc<Control>,
    }

    impl Refusing {
        fn check(&self, offset: usize, width: Width, write: bool) -> Result<(), MmioError> {
            check_access(self.size, offset, width)?;
            let refused = self.ctl.refusal.lock().unwrap().is_some_and(|r| {
                (r.lo..r.hi).contains(&offset) && if write { r.writes } else { r.reads }
            });
            if refused {
                return Err(MmioError::Width { offset, width });
            }
            self.ctl.accesses.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    impl Mmio for Refusing {
        fn size(&self) -> usize {
            self.size
        }
        fn read8(&self, offset: usize) -> Result<u8, MmioError> {
            self.check(offset, Width::W8, false)?;
            self.bar.read8(offset)
        }
        fn read16(&self, offset: usize) -> Result<u16, MmioError> {
            self.check(offset, Width::W16, false)?;
            self.bar.read16(offset)
        }
        fn read32(&self, offset: usize) -> Result<u32, MmioError> {
            self.check(offset, Width::W32, false)?;
            self.bar.read32(offset)
        }
        fn write8(&self, offset: usize, value: u8) -> Result<(), MmioError> {
            self.check(offset, Width::W8, true)?;
            self.bar.write8(offset, value)
        }
        fn write16(&self, offset: usize, value: u16) -> Result<(), MmioError> {
            self.check(offset, Width::W16, true)?;
            if offset == QUEUE_ENABLE && value == 1 {
                self.ctl.enables.fetch_add(1, Ordering::Relaxed);
            }
            self.bar.write16(offset, value)
        }
        fn write32(&self, offset: usize, value: u32) -> Result<(), MmioError> {
            self.check(offset, Width::W32, true)?;
            self.bar.write32(offset, value)
        }
    }

    /// The fake's function with BAR 4 behind a [`Refusing`] bus of `size`
    /// bytes, refusing `refusal` from the start.
    fn refusing_bars(
        f: &FakePciFunction,
        size: usize,
        refusal: Option<Refusal>,
    ) -> ([Option<Refusing>; 6], Arc<Control>) {
        let ctl = Arc::new(Control {
            refusal: Mutex::new(refusal),
            ..Control::default()
        });
        let bars = f.bars().map(|b| {
            b.map(|bar| Refusing {
                bar,
                size,
                ctl: ctl.clone(),
            })
        });
        (bars, ctl)
    }

    /// The fake device, its function, and a transport over its BAR behind a
    /// [`Refusing`] bus.
    fn transport(
        refusal: Option<Refusal>,
    ) -> (
        FakeIommu,
        FakePciFunction,
        VirtioPciTransport<Refusing>,
        Arc<Control>,
    ) {
        let (fake, f) = FakeIommu::new_pci(FakeConfig::default());
        let (bars, ctl) = refusing_bars(&f, FakeBar::SIZE, refusal);
        let t = VirtioPciTransport::from_bars(&f, bars).expect("QEMU's layout");
        (fake, f, t, ctl)
    }

    /// A config space with one dword replaced.
    struct Edited<'a, C: PciConfig> {
        f: &'a C,
        at: u16,
        value: u32,
    }

    impl<C: PciConfig> PciConfig for Edited<'_, C> {
        fn read32(&self, offset: u16) -> u32 {
            if offset == self.at {
                self.value
            } else {
                self.f.read32(offset)
            }
        }
    }

    fn small_budget() -> DriverConfig {
        DriverConfig {
            wait: WaitBudget::polls(if cfg!(miri) { 2_000 } else { 200_000 }),
            ..patient()
        }
    }

    const FAILED: u8 = DeviceStatus::FAILED.bits() as u8;

    #[test]
    fn the_driver_runs_over_the_pci_transport_against_the_fake_device() {
        let (fake, f) = FakeIommu::new_pci(FakeConfig::default());
        let t = VirtioPciTransport::from_bars(&f, f.bars()).unwrap();
        let d: VirtioIommu<HostHal, VirtioPciTransport<FakeBar>, 16> =
            VirtioIommu::new(t, patient()).unwrap();
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
            "both dwords of the driver features reached the device"
        );
        let g = *d.geometry();
        assert_eq!((g.input_start, g.input_end), (0, 0x7f_ffff_ffff));
        assert_eq!(g.page_size_mask, !0xfff, "a u64 field read as two dwords");
        assert_eq!(g.probe_size, 512);
        assert_eq!(fake.bypass(), 0, "bypass written through the device config");
        let ok = (DeviceStatus::ACKNOWLEDGE
            | DeviceStatus::DRIVER
            | DeviceStatus::FEATURES_OK
            | DeviceStatus::DRIVER_OK)
            .bits() as u8;
        assert_eq!(fake.status(), ok);
        assert_eq!(fake.notifications(), [0, 1], "event queue announced once");

        d.attach(EP, 1).unwrap();
        let before = d.counters();
        let reqs: Vec<Request> = (0..5)
            .map(|i| Request::Map {
                domain: 1,
                start: 0x10_0000 + i * 0x1000,
                end: 0x10_0fff + i * 0x1000,
                phys: 0x4000_0000 + i * 0x3000,
                flags: wire::MAP_F_READ,
            })
            .collect();
        let mut results = vec![Err(VirtioIommuError::Broken); 5];
        d.run(&reqs, &mut results).unwrap();
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(d.counters().since(&before).notifications, 1);
        assert_eq!(fake.dma(EP, 0x10_2008, false), Some(0x4000_6008));
        assert_eq!(fake.dma(EP, 0x10_2008, true), None, "read-only");
        let fault = d.pop_fault().unwrap();
        assert_eq!((fault.endpoint, fault.address), (EP, Some(0x10_2008)));
        let info = d.probe(EP).unwrap();
        assert_eq!(
            (info.reserved[0].start, info.reserved[0].end),
            (0xfee0_0000, 0xfeef_ffff)
        );

        let t = d.reset().unwrap();
        assert_eq!(fake.status(), 0);
        assert_eq!(fake.domain_of(EP), None);
        assert_eq!(t.register_faults(), 0);
        assert_eq!(t.first_register_fault(), None);
    }

    #[test]
    fn a_bar_too_small_or_a_short_or_misaligned_structure_is_refused_at_probe() {
        let (_fake, f) = FakeIommu::new_pci(FakeConfig::default());
        // The notify structure ends at 0x4000; a 0x3800-byte BAR cannot hold it.
        let (bars, ctl) = refusing_bars(&f, 0x3800, None);
        assert_eq!(
            VirtioPciTransport::from_bars(&f, bars).unwrap_err(),
            PciTransportError::BadRegion(2)
        );
        assert_eq!(ctl.accesses.load(Ordering::Relaxed), 0, "nothing accessed");
        // A common configuration shorter than its fields.
        let short = Edited {
            f: &f,
            at: 0x4c,
            value: 0x30,
        };
        assert_eq!(
            VirtioPciTransport::from_bars(&short, f.bars()).unwrap_err(),
            PciTransportError::BadRegion(1)
        );
        // Misaligned structures: common at 0x2, notify at 0x3001.
        let odd = Edited {
            f: &f,
            at: 0x48,
            value: 0x2,
        };
        assert_eq!(
            VirtioPciTransport::from_bars(&odd, f.bars()).unwrap_err(),
            PciTransportError::MisalignedRegion(1)
        );
        let odd = Edited {
            f: &f,
            at: 0x78,
            value: 0x3001,
        };
        let shorter = Edited {
            f: &odd,
            at: 0x7c,
            value: 0xfff,
        };
        assert_eq!(
            VirtioPciTransport::from_bars(&shorter, f.bars()).unwrap_err(),
            PciTransportError::MisalignedRegion(2)
        );
        // The BAR the capabilities name is absent.
        let mut bars = f.bars();
        bars[FakePciFunction::BAR] = None;
        assert!(matches!(
            VirtioPciTransport::from_bars(&f, bars),
            Err(PciTransportError::BadRegion(_))
        ));
    }

    #[test]
    fn refused_accesses_in_transport_methods_are_counted_and_fail_the_device_safely() {
        let (fake, f, mut t, ctl) = transport(None);
        let refuse = |r: Option<Refusal>| *ctl.refusal.lock().unwrap() = r;
        // A working register block: the status reads as the device has it.
        assert_eq!(t.get_status(), DeviceStatus::empty());
        t.set_status(DeviceStatus::ACKNOWLEDGE);
        assert_eq!(t.get_status(), DeviceStatus::ACKNOWLEDGE);
        assert_ne!(t.read_device_features(), 0);
        assert_eq!(t.register_faults(), 0);

        // A queue size that cannot be read: no queue. The first refusal is kept.
        refuse(Some(Refusal::reads(QUEUE_SIZE, QUEUE_SIZE + 2)));
        assert_eq!(t.max_queue_size(0), 0);
        assert_eq!(t.register_faults(), 1);
        let first = MmioError::Width {
            offset: QUEUE_SIZE,
            width: Width::W16,
        };
        assert_eq!(t.first_register_fault(), Some(first));
        // From now on the device reads as failed (but a reset still reads 0).
        refuse(None);
        assert_eq!(
            t.get_status(),
            DeviceStatus::ACKNOWLEDGE | DeviceStatus::FAILED
        );
        assert_eq!(
            u32::from(fake.status()),
            DeviceStatus::ACKNOWLEDGE.bits(),
            "the device is unchanged"
        );

        // Features that cannot be read: none offered.
        refuse(Some(Refusal::reads(DEVICE_FEATURE, DEVICE_FEATURE + 4)));
        assert_eq!(t.read_device_features(), 0);
        assert_eq!(t.register_faults(), 3, "both halves");
        // A queue state that cannot be read: in use, so nobody sets it up.
        refuse(Some(Refusal::reads(QUEUE_ENABLE, QUEUE_ENABLE + 2)));
        assert!(t.queue_used(0));
        // An ISR that cannot be read: no interrupt.
        refuse(Some(Refusal::reads(FakeBar::ISR, FakeBar::ISR + 1)));
        assert_eq!(t.ack_interrupt().bits(), InterruptStatus::empty().bits());
        // A status that cannot be read: FAILED alone (all-ones would claim
        // DRIVER_OK).
        refuse(Some(Refusal::reads(DEVICE_STATUS, DEVICE_STATUS + 1)));
        assert_eq!(t.get_status(), DeviceStatus::FAILED);
        assert_eq!(t.register_faults(), 6);

        // A queue whose driver-area address is refused is not enabled; what
        // came before it reached the device, nothing after it did.
        refuse(Some(Refusal::writes(QUEUE_DRIVER, QUEUE_DRIVER + 4)));
        t.queue_set(0, 16, 0x1122_3344_5566_7000, 0x8000, 0x9000);
        assert_eq!(t.register_faults(), 7);
        assert_eq!(ctl.enables.load(Ordering::Relaxed), 0, "never enabled");
        refuse(None);
        let probe = f.bars()[FakePciFunction::BAR].take().unwrap();
        probe.write16(QUEUE_SELECT, 0).unwrap();
        assert_eq!(probe.read16(QUEUE_ENABLE), Ok(0));
        assert_eq!(probe.read16(QUEUE_SIZE), Ok(16));
        assert_eq!(probe.read32(QUEUE_DESC), Ok(0x5566_7000));
        assert_eq!(probe.read32(QUEUE_DESC + 4), Ok(0x1122_3344));
        assert_eq!(probe.read32(QUEUE_DRIVER), Ok(0), "refused");
        drop(probe);

        // Driver features stop at the refused dword.
        refuse(Some(Refusal::writes(DRIVER_FEATURE, DRIVER_FEATURE + 4)));
        t.write_driver_features(Features::REQUIRED.bits());
        assert_eq!(fake.driver_features(), Features::empty());
        refuse(None);

        // A notify offset beyond the notify region: dropped, counted.
        let sent = fake.notifications();
        t.notify(0x400);
        assert_eq!(fake.notifications(), sent);
        assert_eq!(t.register_faults(), 9);
        assert_eq!(t.first_register_fault(), Some(first), "still the first");
    }

    #[test]
    fn a_refused_queue_address_fails_bring_up_with_no_queue_enabled_and_nothing_leaked() {
        let live = HostHal::dma_live();
        let (fake, _f, t, ctl) = transport(Some(Refusal::writes(QUEUE_DESC, QUEUE_DESC + 4)));
        let e = Driver::new(t, small_budget()).unwrap_err();
        let VirtioIommuError::DeviceFailed(status) = e else {
            panic!("{e:?}");
        };
        assert_ne!(status & FAILED, 0, "{status:#x}");
        assert_eq!(ctl.enables.load(Ordering::Relaxed), 0, "no queue enabled");
        assert_eq!(fake.status(), 0, "reset before its memory was freed");
        assert_eq!(HostHal::dma_live(), live, "the reset completed: all freed");
        assert_eq!(fake.notifications(), [0, 0], "nothing sent");
        assert!(fake.handled().is_empty());
    }

    #[test]
    fn a_refused_notification_times_out_bounded_and_the_transport_stays_failed() {
        let live = HostHal::dma_live();
        let (fake, _f, t, ctl) = transport(None);
        let d = Driver::new(t, small_budget()).unwrap();
        d.attach(EP, 1).unwrap();
        *ctl.refusal.lock().unwrap() = Some(Refusal::writes(FakeBar::NOTIFY, FakeBar::SIZE));
        let t0 = Instant::now();
        assert_eq!(d.attach(EP, 2), Err(VirtioIommuError::Timeout(Wait::Reply)));
        assert!(t0.elapsed() < Duration::from_secs(if cfg!(miri) { 600 } else { 10 }));
        assert!(d.is_broken());
        assert_eq!(
            fake.domain_of(EP),
            Some(1),
            "the ATTACH never reached the device"
        );
        // The device still resets: its memory is freed, the transport given back.
        let t = d.reset().unwrap();
        assert_eq!(HostHal::dma_live(), live);
        assert_eq!(t.register_faults(), 1);
        assert_eq!(
            t.first_register_fault(),
            Some(MmioError::Width {
                offset: FakeBar::NOTIFY,
                width: Width::W16
            })
        );
        // It cannot tell what else did not arrive: the device reads as failed
        // from then on, so a new driver refuses it.
        *ctl.refusal.lock().unwrap() = None;
        let e = Driver::new(t, small_budget()).unwrap_err();
        assert!(
            matches!(e, VirtioIommuError::DeviceFailed(s) if s & FAILED != 0),
            "{e:?}"
        );
        assert_eq!(HostHal::dma_live(), live);
    }

    #[test]
    fn a_status_that_cannot_be_read_is_a_reset_timeout_bounded() {
        let (fake, _f, t, _ctl) = transport(Some(Refusal::reads(DEVICE_STATUS, DEVICE_STATUS + 1)));
        let dc = DriverConfig {
            wait: WaitBudget::polls(10_000),
            ..patient()
        };
        let t0 = Instant::now();
        assert_eq!(
            Driver::new(t, dc).unwrap_err(),
            VirtioIommuError::Timeout(Wait::Reset)
        );
        assert!(t0.elapsed() < Duration::from_secs(if cfg!(miri) { 600 } else { 10 }));
        assert_eq!(
            fake.status() & DeviceStatus::DRIVER_OK.bits() as u8,
            0,
            "giving up wrote FAILED, not all-ones"
        );
        assert_ne!(fake.status() & FAILED, 0);
    }

    #[test]
    fn refused_device_config_accesses_are_errors_not_register_faults() {
        let device = Refusal {
            lo: FakeBar::DEVICE,
            hi: FakeBar::NOTIFY,
            reads: true,
            writes: true,
        };
        let (_fake, _f, mut t, _ctl) = transport(Some(device));
        assert_eq!(
            t.read_config_space::<u32>(0),
            Err(VirtioError::InvalidParam)
        );
        assert_eq!(
            t.read_config_space::<u64>(0),
            Err(VirtioError::InvalidParam)
        );
        assert_eq!(
            t.write_config_space::<u8>(wire::config_offset::BYPASS, 0),
            Err(VirtioError::InvalidParam)
        );
        assert_eq!(
            t.read_config_space::<u32>(0x1000),
            Err(VirtioError::ConfigSpaceTooSmall),
            "past the device structure"
        );
        assert_eq!(t.register_faults(), 0, "reported to the caller instead");
        t.set_status(DeviceStatus::ACKNOWLEDGE);
        assert_eq!(t.get_status(), DeviceStatus::ACKNOWLEDGE, "not failed");
        t.set_status(DeviceStatus::empty());
        // Through the driver: the config field it could not read, named.
        assert_eq!(
            Driver::new(t, small_budget()).unwrap_err(),
            VirtioIommuError::BadConfig(ConfigField::PageSizeMask)
        );
    }
}

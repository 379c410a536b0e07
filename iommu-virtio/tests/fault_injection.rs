//! Fault injection through the fake device and the fake `HostHal`: the fault
//! log and the event queue overflowing, an event queue that is missing or
//! never given back, DMA memory running out, replies out of order. Each
//! case ends in a typed error or a stated degraded mode, bounded in time,
//! with the driver usable (or `Broken`) afterwards. `TESTING.md` section 2
//! names these tests.

#![cfg(feature = "fakes")]

use std::time::{Duration, Instant};

use iommu_virtio::driver::{EVENT_QUEUE_SIZE, FAULT_LOG};
use iommu_virtio::fake::{FakeConfig, FakeIommu, FakeTransport, HostHal, Misbehave, patient};
use iommu_virtio::virtio_drivers::transport::DeviceStatus;
use iommu_virtio::{
    DriverConfig, FaultReason, QueueProblem, Request, RequestKind, Status, VirtioIommu,
    VirtioIommuError, WaitBudget, wire,
};

type Driver = VirtioIommu<HostHal, FakeTransport, 16>;

/// The endpoint the default fake knows.
const EP: u32 = 0x10;
/// An endpoint the fake does not know: its DMA always faults.
const STRANGER: u32 = 0x20;
/// What a bounded wait may take at most: it must end, not be fast; Miri
/// interprets every poll, so it gets far longer.
const BOUNDED: Duration = Duration::from_secs(if cfg!(miri) { 600 } else { 5 });

fn pair() -> (FakeIommu, Driver) {
    let (fake, t) = FakeIommu::new(FakeConfig::default());
    (fake, Driver::new(t, patient()).expect("driver init"))
}

fn map(domain: u32, start: u64, len: u64, flags: u32) -> Request {
    Request::Map {
        domain,
        start,
        end: start + len - 1,
        phys: 0x4000_0000 + start,
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

/// The address of the `i`th injected fault: distinct, so order is visible.
fn fault_addr(i: usize) -> u64 {
    0x10_0000 + (i as u64) * 0x1000
}

fn driver_ok() -> u8 {
    DeviceStatus::DRIVER_OK.bits() as u8
}

fn failed() -> u8 {
    DeviceStatus::FAILED.bits() as u8
}

/// FAILED on top of what the driver had set before the queues.
fn not_reset() -> u8 {
    (DeviceStatus::ACKNOWLEDGE
        | DeviceStatus::DRIVER
        | DeviceStatus::FEATURES_OK
        | DeviceStatus::FAILED)
        .bits() as u8
}

#[test]
fn a_full_fault_log_keeps_the_oldest_counts_the_newest_and_recovers_after_draining() {
    let (fake, d) = pair();
    // More faults than the log holds, delivered a queue-full at a time and
    // taken off the event queue (poll_events) without anyone popping them.
    let total = FAULT_LOG + 2 * EVENT_QUEUE_SIZE + 3;
    let mut sent = 0;
    while sent < total {
        let n = EVENT_QUEUE_SIZE.min(total - sent);
        for i in sent..sent + n {
            assert_eq!(fake.dma(STRANGER, fault_addr(i), false), None);
        }
        assert_eq!(d.poll_events(), n, "all {n} events arrive after {sent}");
        sent += n;
    }
    assert_eq!(
        fake.faults_dropped(),
        0,
        "the driver gave every event buffer back, also with its log full"
    );
    let c = d.counters();
    assert_eq!(c.events, total as u64);
    assert_eq!(c.faults_dropped, (total - FAULT_LOG) as u64);
    assert_eq!(c.malformed_events, 0);

    // Requests still work with the log full (their wait polls events too).
    d.attach(EP, 1).unwrap();
    assert!(!d.is_broken());

    // The policy of FAULT_LOG's documentation: the oldest are kept, in
    // order, and the newest were dropped.
    for i in 0..FAULT_LOG {
        let f = d.pop_fault().expect("a kept fault");
        assert_eq!(
            (f.reason, f.endpoint, f.address),
            (FaultReason::Unknown, STRANGER, Some(fault_addr(i))),
            "fault {i}"
        );
    }
    assert_eq!(d.pop_fault(), None, "the dropped ones are gone");

    // Drained: later faults are delivered again and nothing more is dropped.
    for i in 0..EVENT_QUEUE_SIZE {
        assert_eq!(fake.dma(STRANGER, fault_addr(1000 + i), true), None);
    }
    for i in 0..EVENT_QUEUE_SIZE {
        let f = d.pop_fault().expect("a fault after the drain");
        assert_eq!(f.address, Some(fault_addr(1000 + i)));
    }
    assert_eq!(d.pop_fault(), None);
    assert_eq!(
        d.counters().faults_dropped,
        (total - FAULT_LOG) as u64,
        "no new drops once there is room"
    );
    assert_eq!(fake.faults_dropped(), 0);
}

#[test]
fn faults_beyond_the_posted_event_buffers_are_lost_at_the_device_and_delivery_resumes() {
    let (fake, d) = pair();
    // With no buffer left on the event queue the device has nowhere to put
    // a fault: it drops it (the specification's behaviour), the driver
    // never sees it, and delivery resumes once the buffers are back.
    let extra = 5;
    for i in 0..EVENT_QUEUE_SIZE + extra {
        assert_eq!(fake.dma(STRANGER, fault_addr(i), false), None);
    }
    assert_eq!(fake.faults_dropped(), extra as u64);
    for i in 0..EVENT_QUEUE_SIZE {
        assert_eq!(d.pop_fault().and_then(|f| f.address), Some(fault_addr(i)));
    }
    assert_eq!(d.pop_fault(), None);
    assert_eq!(
        d.counters().faults_dropped,
        0,
        "the driver's log never filled"
    );

    assert_eq!(fake.dma(STRANGER, fault_addr(99), false), None);
    assert_eq!(d.pop_fault().and_then(|f| f.address), Some(fault_addr(99)));
    assert_eq!(
        fake.faults_dropped(),
        extra as u64,
        "restocked: no new loss"
    );
}

#[test]
fn a_missing_or_too_small_queue_is_a_typed_error_with_nothing_left_behind() {
    let cases: [(u16, u16, VirtioIommuError); 4] = [
        (
            1,
            0,
            VirtioIommuError::Queue(QueueProblem::EventQueueUnavailable),
        ),
        (
            1,
            (EVENT_QUEUE_SIZE / 2) as u16,
            VirtioIommuError::Queue(QueueProblem::EventQueueUnavailable),
        ),
        (
            0,
            0,
            VirtioIommuError::Queue(QueueProblem::RequestQueueUnavailable),
        ),
        (
            0,
            8,
            VirtioIommuError::Queue(QueueProblem::RequestQueueUnavailable),
        ),
    ];
    for (queue, size, expected) in cases {
        let live = HostHal::dma_live();
        let (fake, t) = FakeIommu::new(FakeConfig::default());
        fake.set_max_queue_size(queue, size);
        let t0 = Instant::now();
        assert_eq!(Driver::new(t, patient()).unwrap_err(), expected);
        assert!(t0.elapsed() < BOUNDED);
        // The request queue is set up first: when it fails the device has
        // seen no queue address and is only marked FAILED; when the event
        // queue fails, the device is reset before the request queue's
        // memory is freed.
        let expected = if queue == 0 { not_reset() } else { failed() };
        assert_eq!(fake.status(), expected, "queue {queue} of size {size}");
        assert_eq!(HostHal::dma_live(), live, "queue {queue}: memory freed");
        assert!(fake.handled().is_empty(), "no request was sent");
        assert_eq!(fake.notifications(), [0, 0]);
    }
}

#[test]
fn a_device_that_never_returns_event_buffers_degrades_to_lost_faults_without_hanging() {
    let (fake, d) = pair();
    fake.misbehave(Misbehave {
        hold_events: true,
        ..Default::default()
    });
    let t0 = Instant::now();
    for i in 0..EVENT_QUEUE_SIZE + 4 {
        assert_eq!(fake.dma(STRANGER, fault_addr(i), false), None);
    }
    assert_eq!(fake.held_events(), EVENT_QUEUE_SIZE as u16);
    assert_eq!(fake.faults_dropped(), 4, "no buffer left for the rest");
    // The degraded mode: the driver sees no faults, and everything else works.
    assert_eq!(d.poll_events(), 0);
    assert_eq!(d.pop_fault(), None);
    d.attach(EP, 1).unwrap();
    let batch = [map(1, 0x20_0000, 0x1000, wire::MAP_F_READ)];
    let mut results = [Err(VirtioIommuError::Broken)];
    d.run(&batch, &mut results).unwrap();
    assert_eq!(results, [Ok(())]);
    assert_eq!(d.counters().events, 0);
    assert!(!d.is_broken());
    // The reset takes the buffers back from the device: bounded, and a new
    // driver on the same transport gets its faults again.
    let t = d.reset().expect("the reset completes");
    assert!(t0.elapsed() < BOUNDED);
    assert_eq!(fake.status(), 0);
    assert_eq!(fake.held_events(), 0, "the reset took the buffers back");
    fake.misbehave(Misbehave::default());
    let d = Driver::new(t, patient()).unwrap();
    assert_eq!(fake.dma(STRANGER, fault_addr(50), false), None);
    assert_eq!(d.pop_fault().and_then(|f| f.address), Some(fault_addr(50)));
}

#[test]
fn dma_memory_running_out_at_each_bring_up_allocation_is_no_dma_memory_and_leaks_nothing() {
    let live = HostHal::dma_live();
    let calls = HostHal::dma_calls();
    let (fake, d) = pair();
    let needed = HostHal::dma_calls() - calls;
    assert!(
        needed >= 5,
        "two queues, request slots, event buffers, PROBE: {needed}"
    );
    drop(d);
    drop(fake);
    assert_eq!(HostHal::dma_live(), live);

    for budget in 0..needed {
        let (fake, t) = FakeIommu::new(FakeConfig::default());
        HostHal::limit_dma(Some(budget));
        let result = Driver::new(t, patient());
        HostHal::limit_dma(None);
        assert_eq!(
            result.err(),
            Some(VirtioIommuError::NoDmaMemory),
            "allocation {budget} of {needed} failing"
        );
        assert_eq!(HostHal::dma_live(), live, "allocation {budget}: all freed");
        // The first two allocations are the request queue's rings
        // (virtio-drivers' split layout: driver area, device area): until
        // both exist the device knows no address and is only marked FAILED;
        // after that it is reset before the memory is freed.
        let expected = if budget < 2 { not_reset() } else { failed() };
        assert_eq!(fake.status(), expected, "allocation {budget}");
        assert_eq!(fake.status() & driver_ok(), 0, "never DRIVER_OK");
        assert!(fake.handled().is_empty(), "nothing was sent");
        assert_eq!(fake.notifications(), [0, 0]);
        assert_eq!(fake.faults_dropped(), 0);
    }

    // With exactly what it needs, bring-up succeeds.
    let (fake, t) = FakeIommu::new(FakeConfig::default());
    HostHal::limit_dma(Some(needed));
    let d = Driver::new(t, patient());
    HostHal::limit_dma(None);
    let d = d.expect("enough memory");
    d.attach(EP, 1).unwrap();
    assert_eq!(fake.domain_of(EP), Some(1));
}

#[test]
fn batches_probes_and_faults_need_no_dma_memory_after_bring_up() {
    let (fake, d) = pair();
    HostHal::limit_dma(Some(0));
    let calls = HostHal::dma_calls();
    d.attach(EP, 1).unwrap();
    // Three batches' worth, so the queue fills and is reused.
    let n = 3 * Driver::batch_capacity();
    let maps: Vec<Request> = (0..n)
        .map(|i| map(1, 0x100_0000 + i as u64 * 0x1000, 0x1000, wire::MAP_F_READ))
        .collect();
    let mut results = vec![Err(VirtioIommuError::Broken); n];
    let r = d.run(&maps, &mut results);
    let probe = d.probe(EP);
    assert_eq!(fake.dma(STRANGER, 0x1000, false), None);
    let fault = d.pop_fault();
    let unmaps: Vec<Request> = (0..n)
        .map(|i| unmap(1, 0x100_0000 + i as u64 * 0x1000, 0x1000))
        .collect();
    let mut unmapped = vec![Err(VirtioIommuError::Broken); n];
    let u = d.run(&unmaps, &mut unmapped);
    let after = HostHal::dma_calls();
    HostHal::limit_dma(None);
    assert_eq!(r, Ok(()));
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(probe.map(|p| p.reserved.len()), Ok(1));
    assert_eq!(fault.and_then(|f| f.address), Some(0x1000));
    assert_eq!(u, Ok(()));
    assert!(unmapped.iter().all(Result::is_ok), "{unmapped:?}");
    assert_eq!(fake.mappings(1), Some(vec![]));
    assert_eq!(after, calls, "no allocation after bring-up");
    assert!(!d.is_broken());
}

#[test]
fn replies_out_of_order_within_a_batch_reach_their_own_requests() {
    let (fake, d) = pair();
    d.attach(EP, 1).unwrap();
    fake.misbehave(Misbehave {
        reverse_replies: true,
        ..Default::default()
    });
    // Outcomes that differ by position, over more than one batch (the queue
    // holds 8 requests), so a reply matched to the wrong request shows.
    let inval = Err(VirtioIommuError::Request {
        request: RequestKind::Map,
        status: Status::Inval,
    });
    let mut batch = Vec::new();
    let mut expected = Vec::new();
    for i in 0..6u64 {
        let at = 0x200_0000 + i * 0x10_0000;
        batch.push(map(1, at, 0x1000, wire::MAP_F_READ));
        expected.push(Ok(()));
        batch.push(map(1, at, 0x1000, wire::MAP_F_READ)); // overlaps the one before
        expected.push(inval);
        batch.push(unmap(7, at, 0x1000)); // no such domain
        expected.push(Err(VirtioIommuError::Request {
            request: RequestKind::Unmap,
            status: Status::NoEnt,
        }));
    }
    let mut results = vec![Err(VirtioIommuError::Broken); batch.len()];
    d.run(&batch, &mut results).unwrap();
    assert_eq!(results, expected);
    assert_eq!(fake.mappings(1).map(|m| m.len()), Some(6));
    assert!(!d.is_broken());
    // PROBE and single requests too, and the queue stays in step afterwards.
    assert_eq!(d.probe(EP).map(|p| p.reserved.len()), Ok(1));
    fake.misbehave(Misbehave::default());
    d.request(unmap(1, 0x200_0000, 0x1000)).unwrap();
    assert_eq!(fake.mappings(1).map(|m| m.len()), Some(5));
    assert_eq!(d.counters().replies, 1 + batch.len() as u64 + 2);
}

#[test]
fn a_used_entry_returned_twice_never_passes_for_the_success_of_an_unexecuted_request() {
    let (fake, d) = pair();
    fake.misbehave(Misbehave {
        duplicate_used: true,
        ..Default::default()
    });
    d.attach(EP, 1).unwrap();
    assert_eq!(fake.handled().len(), 1);
    // The copy is still on the used ring. The next request gets the same
    // descriptor head and slot back, so the copy looks like its reply; the
    // device (silent now) never executes it. The driver must not call it a
    // success, nor a plain failure: the tail it pre-set was never written,
    // so the used ring is out of step with the requests and the driver
    // stops, as for a foreign used entry.
    fake.misbehave(Misbehave {
        duplicate_used: true,
        silent: true,
        ..Default::default()
    });
    let t0 = Instant::now();
    assert!(matches!(
        d.detach(EP, 1),
        Err(VirtioIommuError::BadUsedEntry(_))
    ));
    assert!(t0.elapsed() < BOUNDED);
    assert!(d.is_broken());
    assert_eq!(fake.handled().len(), 1, "the device did not execute it");
    assert_eq!(fake.domain_of(EP), Some(1), "still attached");
    fake.misbehave(Misbehave::default());
    assert_eq!(d.attach(EP, 2), Err(VirtioIommuError::Broken));
    assert_eq!(d.probe(EP).err(), Some(VirtioIommuError::Broken));
    // The reset is bounded, and a new driver on the transport is in step.
    let t = d.reset().expect("the reset completes");
    let d = Driver::new(t, patient()).unwrap();
    d.attach(EP, 2).unwrap();
    assert_eq!(fake.domain_of(EP), Some(2));
}

#[test]
fn giving_up_on_a_device_whose_reset_sticks_leaks_the_memory_it_knows_instead_of_freeing_it() {
    // The bring-up reset completes, the one after the failure sticks: the
    // device may still write its queues, so their memory must stay
    // allocated (leaked), and the wait for the reset is bounded.
    let quick = DriverConfig {
        wait: WaitBudget {
            max_polls: 10_000,
            clock: None,
        },
        ..DriverConfig::default()
    };
    let sticky = Misbehave {
        stuck_reset: true,
        resets_before_stuck: 1,
        ..Default::default()
    };
    // Memory for the request slots (the 5th allocation, after the two
    // queues' two rings each) fails: four rings known to the device.
    let live = HostHal::dma_live();
    let (fake, t) = FakeIommu::new(FakeConfig::default());
    fake.misbehave(sticky);
    HostHal::limit_dma(Some(4));
    let t0 = Instant::now();
    let result = Driver::new(t, quick);
    HostHal::limit_dma(None);
    assert_eq!(result.err(), Some(VirtioIommuError::NoDmaMemory));
    assert!(t0.elapsed() < BOUNDED);
    assert_eq!(HostHal::dma_live(), live + 4, "both queues' rings kept");
    assert_ne!(fake.status() & failed(), 0, "marked FAILED");
    assert_eq!(fake.status() & driver_ok(), 0);

    drop(fake);

    // The event queue missing: the request queue's two rings are known.
    let live = HostHal::dma_live();
    let (fake, t) = FakeIommu::new(FakeConfig::default());
    fake.misbehave(sticky);
    fake.set_max_queue_size(1, 0);
    assert_eq!(
        Driver::new(t, quick).err(),
        Some(VirtioIommuError::Queue(QueueProblem::EventQueueUnavailable))
    );
    assert_eq!(
        HostHal::dma_live(),
        live + 2,
        "the request queue's rings kept"
    );
    assert_ne!(fake.status() & failed(), 0);
    drop(fake);
    // SAFETY: both drivers are gone and so are both fake devices.
    assert_eq!(unsafe { HostHal::free_leaked() }, 4 + 2, "both leaks");
}

//! What the driver logs through `iova_core::warn_event!` (feature `log`):
//! conditions a caller cannot see in a return value. One test in its own
//! binary, because the logger is global.

#![cfg(all(feature = "fakes", feature = "log"))]

use std::sync::Mutex;

use iommu_virtio::fake::{FakeConfig, FakeIommu, HostHal, Misbehave, patient};
use iommu_virtio::transport::pci::VirtioPciTransport;
use iommu_virtio::virtio_drivers::transport::Transport;
use iommu_virtio::{VirtioDomain, VirtioIommu};

static RECORDS: Mutex<Vec<(log::Level, String)>> = Mutex::new(Vec::new());

struct Collect;

impl log::Log for Collect {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        RECORDS
            .lock()
            .unwrap()
            .push((record.level(), record.args().to_string()));
    }
    fn flush(&self) {}
}

fn take() -> Vec<(log::Level, String)> {
    std::mem::take(&mut *RECORDS.lock().unwrap())
}

#[test]
fn refused_register_accesses_and_failed_teardowns_are_logged_once_per_cause() {
    log::set_logger(&Collect).unwrap();
    log::set_max_level(log::LevelFilter::Trace);

    // A notify offset beyond the notify region, a hundred times: one warning
    // (a poll loop does not flood the log), every one counted.
    let (fake, f) = FakeIommu::new_pci(FakeConfig::default());
    let mut t = VirtioPciTransport::from_bars(&f, f.bars()).unwrap();
    for _ in 0..100 {
        t.notify(0x400);
    }
    assert_eq!(t.register_faults(), 100);
    let logged = take();
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged[0].0, log::Level::Warn);
    assert!(
        logged[0].1.contains("queue notification refused") && logged[0].1.contains("0x1000"),
        "names the access and the offset: {}",
        logged[0].1
    );
    // Another cause is logged again.
    t.notify(0x401);
    assert_eq!(take().len(), 1);
    drop(fake);

    // A teardown the device refuses: Drop cannot return it, so it is logged.
    let (fake, t) = FakeIommu::new(FakeConfig::default());
    let iommu: VirtioIommu<HostHal, _, 16> = VirtioIommu::new(t, patient()).unwrap();
    let domain: VirtioDomain<'_, _, _, 16> = VirtioDomain::new(&iommu, 1).unwrap();
    domain.attach(0x10).unwrap();
    fake.misbehave(Misbehave {
        reject: Some(8),
        ..Default::default()
    });
    drop(domain);
    assert_eq!(iommu.counters().teardown_failures, 1);
    let logged = take();
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert!(
        logged[0].1.contains("teardown of domain 1 failed"),
        "{}",
        logged[0].1
    );
}

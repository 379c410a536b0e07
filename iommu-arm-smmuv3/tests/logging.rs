//! What the driver logs through `iova_core::warn_event!` (feature `log`):
//! conditions a caller cannot see in a return value. One test in its own
//! binary, because the logger is global.
#![cfg(all(feature = "fakes", feature = "log"))]

use std::sync::{Arc, Mutex};

use iommu_arm_smmuv3::fake::{FakeSmmu, QEMU_10_VIRT};
use iommu_arm_smmuv3::{Command, Config, Smmu, SmmuError};
use iova_core::fakes::FakeFrames;
use iova_core::hw::WaitBudget;
use iova_core::{IommuDomain, IotlbGather, Iova, Prot};

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

/// The one warning logged since the last call, checked to be a warning
/// containing every one of `words`.
fn warned(words: &[&str]) {
    let logged = take();
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(logged[0].0, log::Level::Warn);
    for w in words {
        assert!(logged[0].1.contains(w), "{w:?} in {:?}", logged[0].1);
    }
}

#[test]
fn refused_commands_lost_events_and_failed_teardowns_are_logged() {
    log::set_logger(&Collect).unwrap();
    log::set_max_level(log::LevelFilter::Trace);

    let m = Arc::new(FakeFrames::new());
    let fake = FakeSmmu::new(Arc::clone(&m), QEMU_10_VIRT);
    let config = Config::default()
        .with_evtq_log2(1)
        .with_wait(WaitBudget::polls(100));
    let smmu = Smmu::new(&fake, Arc::clone(&m), config).unwrap();
    assert_eq!(take(), [], "a clean bring-up logs nothing");

    // A refused command: named with its opcode.
    fake.refuse_opcode(0x7e);
    let bad = Command([0x7e, 0]);
    assert!(matches!(smmu.submit(&[bad]), Err(SmmuError::Command(_))));
    warned(&["command 0x7e", "refused"]);

    // Events lost to a full queue (two entries, three faults).
    for i in 0..3u64 {
        assert!(fake.dma_read(8, Iova(i * 0x1000), 4).is_err());
    }
    let r = smmu.drain_events(|_| {}).unwrap();
    assert!(r.overflowed);
    warned(&["events lost", "overflow true"]);

    // A domain whose teardown cannot complete (its CMD_SYNC never does)
    // keeps its tables and says so. It keeps its allocator too: held by a
    // static, so that leak checkers (Miri's) see it is kept on purpose.
    static KEPT: Mutex<Vec<Arc<FakeFrames>>> = Mutex::new(Vec::new());
    KEPT.lock().unwrap().push(Arc::clone(&m));
    let d = smmu.s1_domain(Arc::clone(&m), 48).unwrap();
    smmu.attach_s1(8, &d).unwrap();
    let mut g = IotlbGather::new();
    let page = iova_core::FrameAllocator::alloc_zeroed(&*m, 0x1000).unwrap();
    d.map(Iova(0x1000), page, 0x1000, Prot::RW, &mut g).unwrap();
    d.flush(&mut g).unwrap();
    fake.set_stalled(true);
    drop(d);
    warned(&["stage-1 domain", "not torn down", "leaked"]);

    // A driver whose SMMU does not acknowledge the disable.
    drop(smmu);
    warned(&["translation not disabled on drop", "Cr0Ack", "leaked"]);
    assert!(fake.enabled());
}

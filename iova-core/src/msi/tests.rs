//! The MSI window against the fake domain: every error path, the reservation,
//! on-demand idempotence, the descriptor bits each LPAE stage gets, teardown
//! and drop.
#![cfg(feature = "fakes")]

use super::*;
use crate::fakes::{Access, FakeDomain, Fault, fake_domain};
use crate::formats::lpae::{Granule, LpaeS1, LpaeS2, s1, s2};
use crate::frame::FrameAllocator;
use crate::iova_alloc::IovaAllocatorConfig;
use crate::pt::PtFormat;

const K4: u64 = 0x1000;
/// QEMU virt's GITS_TRANSLATER (ITS frame at 0x0808_0000, translation frame
/// 64 KiB above, register at 0x40).
const TRANSLATER: PhysAddr = PhysAddr(0x0809_0040);

fn allocator(start: u64, len: u64) -> IovaAllocator<'static> {
    let aperture = IovaRange::new(Iova(start), len).unwrap();
    IovaAllocator::with_capacity(IovaAllocatorConfig::new(aperture, K4), 16, 1).unwrap()
}

/// The allocator the default window sits in: the low 4 GiB.
fn low4g() -> IovaAllocator<'static> {
    allocator(0, 1 << 32)
}

fn s2_domain() -> FakeDomain<LpaeS2> {
    fake_domain(LpaeS2::new(40, 48).unwrap()).0
}

fn s1_domain() -> FakeDomain<LpaeS1> {
    fake_domain(LpaeS1::va48()).0
}

/// The raw leaf descriptor that maps `iova`, read from the tables in memory
/// (an independent walk, not the engine's `translate`).
fn leaf_raw<F: PtFormat>(d: &FakeDomain<F>, iova: u64) -> Option<u64> {
    let fmt = d.table().format();
    let levels = fmt.levels();
    let mut shifts = vec![0; levels];
    let mut s = fmt.granule_shift();
    for depth in (0..levels).rev() {
        shifts[depth] = s;
        s += fmt.index_bits(depth);
    }
    let mut table = d.table().root();
    for (depth, &shift) in shifts.iter().enumerate() {
        let idx = (iova >> shift) & ((1 << fmt.index_bits(depth)) - 1);
        let p = d.table().frames().phys_to_virt(table).cast::<u64>();
        // SAFETY: `table` is a live table of this domain (its root, or one a
        // present table entry points to); `idx` is within its entries; nobody
        // writes the tables while the test reads them.
        let raw = unsafe { p.add(idx as usize).read_volatile() };
        if !fmt.is_present(depth, raw) {
            return None;
        }
        if !fmt.is_table(depth, raw) {
            return Some(raw);
        }
        table = fmt.table_pa(raw);
    }
    None
}

#[test]
fn stage_2_maps_the_doorbell_write_only_device_memory_at_the_default_window() {
    let d = s2_domain();
    let iovas = low4g();
    let mut w = MsiWindow::<_, 4>::new(&d, &iovas).unwrap();
    assert_eq!(
        w.range(),
        IovaRange::new(MSI_IOVA_BASE, MSI_IOVA_LENGTH).unwrap()
    );
    assert_eq!((w.page_size(), w.capacity()), (K4, 4));
    let before = d.invalidator().flushes();
    let msi = w.map_doorbell(TRANSLATER).unwrap();
    assert_eq!(
        msi,
        Iova(0x800_0040),
        "the window's first page plus the offset"
    );
    assert_eq!(
        d.invalidator().flushes(),
        before + 1,
        "one flush for the page"
    );
    assert_eq!(
        w.doorbells(),
        [Doorbell {
            page: PhysAddr(0x0809_0000),
            iova: Iova(0x800_0000)
        }]
    );
    assert_eq!(w.iova_of(PhysAddr(0x0809_0044)), Some(Iova(0x800_0044)));
    assert_eq!(w.iova_of(PhysAddr(0x0900_0000)), None);

    let raw = leaf_raw(&d, 0x800_0000).unwrap();
    assert_eq!(raw & s2::S2AP_W, s2::S2AP_W, "writable");
    assert_eq!(raw & s2::S2AP_R, 0, "not readable: S2AP = 0b10");
    assert_eq!(
        (raw >> s2::MEMATTR_SHIFT) & 0xf,
        s2::MEMATTR_DEV,
        "Device-nGnRE"
    );
    assert_eq!(raw & s2::XN, s2::XN, "execute-never");
    assert_eq!(raw & 0xffff_ffff_f000, 0x0809_0000);

    assert_eq!(d.device_access(msi, Access::Write), Ok(TRANSLATER));
    assert_eq!(
        d.device_access(msi, Access::Read),
        Err(Fault::Permission(msi, Access::Read))
    );
    w.teardown().unwrap();
}

#[test]
fn stage_1_cannot_express_write_only_and_grants_read_too() {
    let d = s1_domain();
    let iovas = low4g();
    let mut w = MsiWindow::<_, 1>::new(&d, &iovas).unwrap();
    let msi = w.map_doorbell(TRANSLATER).unwrap();
    let raw = leaf_raw(&d, msi.0).unwrap();
    assert_eq!(raw & s1::AP_RDONLY, 0, "AP[2] = 0: read-write");
    assert_eq!(
        (raw >> s1::ATTR_INDX_SHIFT) & 7,
        s1::ATTR_IDX_DEV,
        "Device-nGnRE"
    );
    assert_eq!(raw & (s1::UXN | s1::PXN), s1::UXN | s1::PXN);
    assert_eq!(d.device_access(msi, Access::Write), Ok(TRANSLATER));
    // Documented: stage 1 has no write-only encoding.
    assert_eq!(d.device_access(msi, Access::Read), Ok(TRANSLATER));
    w.teardown().unwrap();
}

#[test]
fn the_reservation_keeps_every_allocation_out_of_the_window() {
    let d = s2_domain();
    // An aperture that is the window and one page on either side.
    let base = MSI_IOVA_BASE.0;
    let iovas = allocator(base - K4, MSI_IOVA_LENGTH + 2 * K4);
    // Without the window the allocator would hand out its pages.
    let probe = iovas.alloc(0, 3 * K4, K4).unwrap();
    assert!(
        probe
            .range()
            .overlaps(&IovaRange::new(MSI_IOVA_BASE, MSI_IOVA_LENGTH).unwrap())
    );
    iovas.free(0, probe).unwrap();

    let w = MsiWindow::<_, 1>::new(&d, &iovas).unwrap();
    let a = iovas.alloc(0, K4, K4).unwrap();
    let b = iovas.alloc(0, K4, K4).unwrap();
    for r in [a.range(), b.range()] {
        assert!(!r.overlaps(&w.range()), "{r:?} is in the window");
    }
    assert_eq!(iovas.alloc(0, K4, K4), Err(IovaAllocError::NoSpace));
    assert_eq!(iovas.alloc(0, 2 * K4, K4), Err(IovaAllocError::NoSpace));
    iovas.free(0, a).unwrap();
    iovas.free(0, b).unwrap();
    // Torn down, the window stays a hole.
    w.teardown().unwrap();
    assert_eq!(iovas.alloc(0, 2 * K4, K4), Err(IovaAllocError::NoSpace));
}

#[test]
fn the_same_page_twice_is_one_mapping_and_one_flush() {
    let d = s2_domain();
    let iovas = low4g();
    let mut w = MsiWindow::<_, 4>::new(&d, &iovas).unwrap();
    let first = w.map_doorbell(TRANSLATER).unwrap();
    let flushes = d.invalidator().flushes();
    // Another register of the same page: same page IOVA, its own offset.
    let again = w.map_doorbell(PhysAddr(0x0809_0048)).unwrap();
    assert_eq!(again, Iova(first.0 + 8));
    assert_eq!(w.map_doorbell(TRANSLATER), Ok(first));
    assert_eq!(d.invalidator().flushes(), flushes, "no second flush");
    assert_eq!(d.leaves().len(), 1, "no second map");
    assert_eq!(w.doorbells().len(), 1);
    w.teardown().unwrap();
}

#[test]
fn distinct_doorbells_get_distinct_pages_until_the_window_is_full() {
    let d = s2_domain();
    let iovas = low4g();
    let mut w = MsiWindow::<_, 8>::at(&d, &iovas, Iova(0x1000_0000), 3 * K4).unwrap();
    assert_eq!(w.capacity(), 3, "the window's pages, fewer than N");
    let bells = [0x0809_0040u64, 0x0a09_0040, 0x0b09_0040];
    let mut got = Vec::new();
    for (i, pa) in bells.into_iter().enumerate() {
        let flushes = d.invalidator().flushes();
        let msi = w.map_doorbell(PhysAddr(pa)).unwrap();
        assert_eq!(msi, Iova(0x1000_0000 + i as u64 * K4 + 0x40));
        assert_eq!(d.invalidator().flushes(), flushes + 1);
        got.push(msi);
    }
    for (msi, pa) in got.iter().zip(bells) {
        assert_eq!(d.device_access(*msi, Access::Write), Ok(PhysAddr(pa)));
    }
    let leaves = d.leaves().len();
    assert_eq!(
        w.map_doorbell(PhysAddr(0x0c09_0040)),
        Err(MsiError::WindowFull)
    );
    assert_eq!(d.leaves().len(), leaves, "nothing mapped");
    // A page already in the window is still found.
    assert_eq!(w.map_doorbell(PhysAddr(0x0a09_0040)), Ok(got[1]));
    w.teardown().unwrap();
}

#[test]
fn the_bookkeeping_limit_is_a_typed_error() {
    let d = s2_domain();
    let iovas = low4g();
    let mut w = MsiWindow::<_, 1>::new(&d, &iovas).unwrap();
    assert_eq!(w.capacity(), 1);
    w.map_doorbell(TRANSLATER).unwrap();
    assert_eq!(
        w.map_doorbell(PhysAddr(0x0a09_0040)),
        Err(MsiError::StorageFull)
    );
    assert_eq!(d.leaves().len(), 1);
    w.teardown().unwrap();
}

#[test]
fn bad_windows_are_refused_and_reserve_nothing() {
    let d = s2_domain();
    let iovas = allocator(0x1000_0000, 1 << 24);
    let check_free = |base: u64| {
        // Nothing was reserved: a window there can still be made.
        let w = MsiWindow::<_, 1>::at(&d, &iovas, Iova(base), K4).unwrap();
        drop(w);
    };
    type W<'a> = MsiWindow<'a, FakeDomain<LpaeS2>, 1>;
    assert_eq!(
        W::at(&d, &iovas, Iova(0x1000_0000), 0).unwrap_err(),
        MsiError::ZeroSize
    );
    assert_eq!(
        W::at(&d, &iovas, Iova(u64::MAX - K4 + 1), 2 * K4).unwrap_err(),
        MsiError::Overflow
    );
    assert_eq!(
        W::at(&d, &iovas, Iova(0x1000_0800), K4).unwrap_err(),
        MsiError::Misaligned(K4)
    );
    assert_eq!(
        W::at(&d, &iovas, Iova(0x1000_0000), K4 + 4).unwrap_err(),
        MsiError::Misaligned(K4)
    );
    let aperture = iovas.aperture();
    // Linux's default lies below this aperture.
    assert_eq!(
        W::new(&d, &iovas).unwrap_err(),
        MsiError::OutsideAperture(aperture)
    );
    // Half in, half out.
    assert_eq!(
        W::at(&d, &iovas, Iova(0x1100_0000 - K4), 2 * K4).unwrap_err(),
        MsiError::OutsideAperture(aperture)
    );
    // A live DMA buffer in the way.
    let buf = iovas.alloc(0, K4, K4).unwrap();
    let at = buf.range().start;
    assert_eq!(W::at(&d, &iovas, at, K4).unwrap_err(), MsiError::RangeInUse);
    iovas.free(0, buf).unwrap();
    check_free(0x1000_0000);
    check_free(at.0);
    check_free(0x10ff_f000);
}

#[test]
fn an_allocator_without_a_slot_for_the_hole_is_a_typed_error() {
    let d = s2_domain();
    let aperture = IovaRange::new(Iova(0), 1 << 32).unwrap();
    // One extent slot: the untouched aperture. A hole inside splits it.
    let iovas = IovaAllocator::with_capacity(IovaAllocatorConfig::new(aperture, K4), 1, 0).unwrap();
    assert_eq!(
        MsiWindow::<_, 1>::new(&d, &iovas).unwrap_err(),
        MsiError::Reserve(IovaAllocError::NoExtentSlots)
    );
    // Nothing reserved: the whole aperture can still be allocated.
    let all = iovas.alloc(0, 1 << 32, K4).unwrap();
    iovas.free(0, all).unwrap();
}

#[test]
fn a_window_beyond_the_tables_reach_fails_to_map_and_records_nothing() {
    // A 32-bit IPA space under an allocator that claims more.
    let d = fake_domain(LpaeS2::new(32, 48).unwrap()).0;
    let iovas = allocator(0, 1 << 40);
    let mut w = MsiWindow::<_, 1>::at(&d, &iovas, Iova(1 << 33), K4).unwrap();
    assert_eq!(
        w.map_doorbell(TRANSLATER),
        Err(MsiError::Map(Error::OutOfRange))
    );
    assert!(w.doorbells().is_empty() && !w.needs_flush());
    assert!(d.leaves().is_empty());
}

#[test]
fn no_table_memory_is_a_map_error_and_the_next_try_works() {
    let (d, frames) = fake_domain(LpaeS2::new(40, 48).unwrap());
    let iovas = low4g();
    let mut w = MsiWindow::<_, 1>::new(&d, &iovas).unwrap();
    frames.fail_after(0);
    assert_eq!(
        w.map_doorbell(TRANSLATER),
        Err(MsiError::Map(Error::NoMemory))
    );
    assert!(w.doorbells().is_empty());
    assert!(d.leaves().is_empty());
    frames.unlimited();
    assert_eq!(w.map_doorbell(TRANSLATER), Ok(Iova(0x800_0040)));
    w.teardown().unwrap();
}

#[test]
fn a_failed_flush_is_retried_before_the_iova_is_handed_out() {
    let d = s2_domain();
    let iovas = low4g();
    let mut w = MsiWindow::<_, 2>::new(&d, &iovas).unwrap();
    d.invalidator().fail_next_flushes(1);
    let flushes = d.invalidator().flushes();
    assert_eq!(
        w.map_doorbell(TRANSLATER),
        Err(MsiError::Flush(Error::Timeout))
    );
    assert!(w.needs_flush());
    assert_eq!(w.iova_of(TRANSLATER), None, "not handed out unflushed");
    assert_eq!(w.doorbells().len(), 1, "kept for the retry");
    // The retry flushes first, then finds the page: no second map.
    assert_eq!(w.map_doorbell(TRANSLATER), Ok(Iova(0x800_0040)));
    assert_eq!(d.invalidator().flushes(), flushes + 2);
    assert!(!w.needs_flush());
    assert_eq!(d.leaves().len(), 1);
    // A flush that fails again leaves everything as it was.
    d.invalidator().fail_next_flushes(1);
    assert_eq!(
        w.map_doorbell(PhysAddr(0x0a09_0040)),
        Err(MsiError::Flush(Error::Timeout))
    );
    assert_eq!(w.flush(), Ok(()));
    assert_eq!(w.iova_of(PhysAddr(0x0a09_0040)), Some(Iova(0x800_1040)));
    w.teardown().unwrap();
}

#[test]
fn teardown_unmaps_every_doorbell_with_one_flush() {
    let d = s2_domain();
    let iovas = low4g();
    let mut w = MsiWindow::<_, 4>::new(&d, &iovas).unwrap();
    let a = w.map_doorbell(TRANSLATER).unwrap();
    let b = w.map_doorbell(PhysAddr(0x0a09_0040)).unwrap();
    // The device has used both: the IOTLB holds them.
    assert!(d.device_access(a, Access::Write).is_ok());
    assert!(d.device_access(b, Access::Write).is_ok());
    let flushes = d.invalidator().flushes();
    w.teardown().unwrap();
    assert_eq!(d.invalidator().flushes(), flushes + 1);
    assert!(d.leaves().is_empty());
    assert_eq!(
        d.device_access(a, Access::Write),
        Err(Fault::Translation(a))
    );
    assert_eq!(
        d.device_access(b, Access::Write),
        Err(Fault::Translation(b))
    );
}

#[test]
fn a_failed_teardown_flush_comes_back_to_be_retried() {
    let d = s2_domain();
    let iovas = low4g();
    let mut w = MsiWindow::<_, 4>::new(&d, &iovas).unwrap();
    let msi = w.map_doorbell(TRANSLATER).unwrap();
    assert!(d.device_access(msi, Access::Write).is_ok());
    d.invalidator().fail_next_flushes(1);
    let r = w.teardown().unwrap_err();
    assert_eq!(r.error, Error::Timeout);
    let w = r.state;
    assert!(w.doorbells().is_empty() && w.needs_flush());
    assert!(d.leaves().is_empty(), "the entry is gone from the tables");
    // Unflushed, the device's IOTLB still has it: why the error matters.
    assert_eq!(d.device_access(msi, Access::Write), Ok(TRANSLATER));
    w.teardown().unwrap();
    assert_eq!(
        d.device_access(msi, Access::Write),
        Err(Fault::Translation(msi))
    );
}

#[test]
fn dropping_a_window_unmaps_and_flushes() {
    let d = s2_domain();
    let iovas = low4g();
    let mut w = MsiWindow::<_, 4>::new(&d, &iovas).unwrap();
    let msi = w.map_doorbell(TRANSLATER).unwrap();
    assert!(d.device_access(msi, Access::Write).is_ok());
    let flushes = d.invalidator().flushes();
    drop(w);
    assert_eq!(d.invalidator().flushes(), flushes + 1);
    assert_eq!(
        d.device_access(msi, Access::Write),
        Err(Fault::Translation(msi))
    );
    // An empty window drops without a flush.
    let w = MsiWindow::<_, 4>::at(&d, &iovas, Iova(0x2000_0000), K4).unwrap();
    drop(w);
    assert_eq!(d.invalidator().flushes(), flushes + 1);
}

#[test]
fn a_drop_whose_flush_fails_still_removes_the_entries_and_does_not_panic() {
    let d = s2_domain();
    let iovas = low4g();
    let mut w = MsiWindow::<_, 4>::new(&d, &iovas).unwrap();
    let msi = w.map_doorbell(TRANSLATER).unwrap();
    d.invalidator().fail_next_flushes(1);
    drop(w);
    assert!(d.leaves().is_empty());
    // The window's range stays reserved, so nothing else is placed where
    // the stale translation is.
    assert!(MsiWindow::<_, 1>::new(&d, &iovas).is_ok());
    let _ = msi;
}

#[test]
fn a_64k_granule_maps_64k_doorbell_pages_and_wants_64k_alignment() {
    let d = fake_domain(LpaeS2::with_granule(Granule::K64, 40, 48).unwrap()).0;
    let iovas = low4g();
    assert_eq!(
        MsiWindow::<_, 1>::at(&d, &iovas, Iova(0x800_1000), 0x1_0000).unwrap_err(),
        MsiError::Misaligned(0x1_0000)
    );
    let mut w = MsiWindow::<_, 4>::new(&d, &iovas).unwrap();
    assert_eq!((w.page_size(), w.capacity()), (0x1_0000, 4));
    let msi = w.map_doorbell(TRANSLATER).unwrap();
    // The 64 KiB page at 0x0809_0000 holds the register at 0x40.
    assert_eq!(msi, Iova(0x800_0040));
    assert_eq!(
        w.map_doorbell(PhysAddr(0x0809_f000)),
        Ok(Iova(0x800_f000)),
        "the same 64 KiB page"
    );
    assert_eq!(d.device_access(msi, Access::Write), Ok(TRANSLATER));
    w.teardown().unwrap();
}

#[test]
fn errors_name_their_cause_and_convert_to_the_crate_error() {
    let cases = [
        (MsiError::ZeroSize, Error::ZeroLength),
        (MsiError::Misaligned(K4), Error::Misaligned),
        (MsiError::Overflow, Error::Overflow),
        (
            MsiError::OutsideAperture(IovaRange::new(Iova(0), K4).unwrap()),
            Error::OutOfRange,
        ),
        (
            MsiError::RangeInUse,
            Error::Iova(IovaAllocError::RangeInUse),
        ),
        (
            MsiError::Reserve(IovaAllocError::NoExtentSlots),
            Error::Iova(IovaAllocError::NoExtentSlots),
        ),
        (MsiError::WindowFull, Error::Iova(IovaAllocError::NoSpace)),
        (MsiError::StorageFull, Error::StorageFull),
        (MsiError::Map(Error::NoMemory), Error::NoMemory),
        (MsiError::Flush(Error::Timeout), Error::Timeout),
    ];
    let mut texts = std::collections::HashSet::new();
    for (e, general) in cases {
        assert_eq!(Error::from(e), general);
        assert!(texts.insert(e.to_string()), "{e}: text shared");
    }
    assert_eq!(
        MsiError::OutsideAperture(IovaRange::new(Iova(0x1000), K4).unwrap()).to_string(),
        "MSI window outside the aperture [0x1000, 0x2000)"
    );
}

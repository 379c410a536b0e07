//! Scenarios `blk` and `blk-bench`: a virtio-blk-pci disk
//! (`iommu_platform=on`) behind the virtio-iommu, driven by virtio-drivers'
//! `VirtIOBlk` through `iova-virtio-hal`'s `IommuHal`, so that every address
//! the disk is given is an IOVA of one virtio-iommu domain.
//!
//! Bring-up: one PCI enumeration for both functions (`1af4:1057` and
//! `1af4:1042`), the iommu-virtio driver with `bypass = 0` (the disk cannot
//! reach memory before it is attached), PROBE of the disk's endpoint (its
//! reserved regions become IOVA holes), domain 1 with the disk attached.
//! Then a `'static` [`DmaShares`] over a `DmaMapper` of that domain
//! ([`FramePool`] for virtqueue memory and bounce pages, identity-mapped
//! CPU memory), the `Hal` `TrapHal<IommuHal<BlkHal>>`, and virtio-drivers'
//! own `PciTransport` wrapped in `AccessPlatform`.
//!
//! - `blk`: `blk_io::check` (13 writes and 27 reads of several shapes; the
//!   host checks the image afterwards); no fault may arrive during it. Then
//!   the stale probe: the buffer B the driver unshared is read into again
//!   through its old IOVA A (reserved first, so nothing reuses it): the
//!   read must not land (canary intact, no successful completion) and the
//!   virtio-iommu must report a MAPPING fault for the disk's endpoint at an
//!   address inside `[A, A + 8 KiB)`.
//! - `blk-bench`: the check, then `blk_io::bench` (sequential 4 KiB and
//!   64 KiB reads of 8 MiB) with the MAP / UNMAP / notification counts.
//!
//! Strict mode: the domain's "flush" is the batch of MAP or UNMAP requests
//! sent with one notification and acknowledged; every `share` is one sync
//! (its MAPs) and every `unshare` another (its UNMAPs), so an unshared
//! buffer is unreachable before `unshare` returns.

use core::cell::RefCell;
use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::Ordering;

use blk_io::probe::{self, PROBE_BYTES};
use blk_io::{AccessPlatform, BlkDevice, BlkError, Context, Counters, SCRATCH_BYTES, TrapHal};
use iommu_virtio::transport::pci::{
    IOMMU_DEVICE_ID, PciBar, PciTransportError, VirtioPciTransport,
};
use iommu_virtio::virtio_drivers::PhysAddr as BusAddr;
use iommu_virtio::virtio_drivers::transport::pci::PciTransport;
use iommu_virtio::{
    CounterSnapshot, DriverConfig, FaultReason, FaultRecord, VirtioDomain, VirtioIommuError,
    WaitBudget,
};
use iova_core::iova_alloc::{CpuCache, ExtentSlot, IovaAllocatorConfig};
use iova_core::{DmaMapper, Error as CoreError, Iova, IovaAllocator, IovaRange};
use iova_virtio_hal::{DmaShares, HalContext, IdentityMapped, IommuHal, ShareCounters, ShareError};
use platform::frame_pool::FramePool;
use platform::frames::{FRAME_SIZE, FrameAllocator, FramesError};
use platform::leak::leak;
use platform::virtio_pci::{VirtioSetupError, open_virtio_functions};
use platform::{BootInfo, demo, println};

use blk_io::DirectHal;
use blk_io::bench::{Costs, Policy, PolicyTables, Setup, Workload};
use iommu_virtio::virtio_drivers::Hal as VirtioHal;
use iova_core::flush_queue::DeferredSlot;
use platform::leak::leak_slice;
use platform::virtio_pci::VirtioFunction;

use crate::discover::{DiscoverError, Firmware};
use crate::{Config, Domain, FRAME, HAL_END, HAL_FRAMES, HAL_NEXT, IOVA_BASE, Iommu, NAME, now_us};

/// Frames of the [`FramePool`]: the virtqueue (2 blocks) and the bounce pages
/// of the requests in flight (up to 16, at most 4 each), and the two bounce
/// pools, with room.
const DMA_FRAMES: usize = 1024;
/// Slots of the share table: the queue's allocations and the four shares of
/// each of 16 requests in flight (indirect list, header, data, status),
/// with room for what the stale probe leaves behind.
const SLOTS: usize = 80;
/// IOVA ranges the flush queue can hold.
const QUEUE_SLOTS: usize = 256;
/// Heap for virtio-drivers' indirect descriptor lists (64 KiB).
const HEAP_FRAMES: usize = 16;
/// The benchmark's pre-mapped domain (all of RAM at IOVA = physical address).
const PREMAPPED_DOMAIN: u32 = 2;
/// The benchmark's bypass domain (its baseline).
const BYPASS_DOMAIN: u32 = 3;
/// Extent slots of the IOVA allocator.
const IOVA_SLOTS: usize = 256;
/// The IOVA window: 4 GiB at [`IOVA_BASE`].
const IOVA_WINDOW: u64 = 1 << 32;

/// Which of the two scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// Check + stale probe.
    Blk,
    /// Check + benchmark.
    Bench,
}

impl Scenario {
    /// The scenario `-append` names, if it is one of these.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "blk" => Some(Self::Blk),
            "blk-bench" => Some(Self::Bench),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Blk => "blk",
            Self::Bench => "blk-bench",
        }
    }
}

/// Why a blk scenario failed.
#[derive(Debug)]
pub enum Error {
    Setup(VirtioSetupError),
    Transport(PciTransportError),
    Iommu(VirtioIommuError),
    Core(CoreError),
    Frames(FramesError),
    Blk(BlkError),
    Share(ShareError),
    NoFrameAllocator,
    Check(&'static str, u64),
    Discover(DiscoverError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Setup(e) => write!(f, "{e}"),
            Self::Transport(e) => write!(f, "virtio-pci: {e}"),
            Self::Iommu(e) => write!(f, "virtio-iommu: {e}"),
            Self::Core(e) => write!(f, "iova-core: {e}"),
            Self::Frames(e) => write!(f, "{e}"),
            Self::Blk(e) => write!(f, "{e}"),
            Self::Share(e) => write!(f, "DmaShares: {e}"),
            Self::NoFrameAllocator => f.write_str("frame allocator already taken"),
            Self::Check(what, at) => write!(f, "{what} ({at:#x})"),
            Self::Discover(e) => write!(f, "{e}"),
        }
    }
}

macro_rules! from {
    ($($t:ty => $v:ident),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Self::$v(e)
            }
        }
    )*};
}
from!(VirtioSetupError => Setup, PciTransportError => Transport, VirtioIommuError => Iommu,
      CoreError => Core, FramesError => Frames, BlkError => Blk, ShareError => Share,
      DiscoverError => Discover);

fn check(ok: bool, what: &'static str, value: u64) -> Result<(), Error> {
    if ok {
        Ok(())
    } else {
        Err(Error::Check(what, value))
    }
}

type Shares = DmaShares<'static, Domain<'static>, SLOTS>;

// `Hal` has no `self`: the driver, the domain, the allocator and the table
// are leaked into frames of the platform pool by `run`, which sets this
// once for the `Hal` to find its tables (one per policy, strict for the
// check).
static TABLES: spin::Once<PolicyTables<Shares>> = spin::Once::new();
/// One CPU.
static CPU: fn() -> usize = || 0;

/// Where `IommuHal` finds the table.
struct BlkHal;

impl HalContext<SLOTS> for BlkHal {
    type Domain = Domain<'static>;

    fn shares() -> &'static Shares {
        // `run` sets the table before the transport (the first user of the
        // `Hal`) exists; nothing reaches here earlier.
        match TABLES.get() {
            Some(t) => t.current(),
            None => {
                platform::report_fatal(format_args!("IommuHal used before its table was set up"))
            }
        }
    }

    unsafe fn mmio_phys_to_virt(paddr: BusAddr, _size: usize) -> NonNull<u8> {
        // Identity-mapped MMIO; the transport only asks for BARs it found.
        NonNull::new(paddr as usize as *mut u8).unwrap_or(NonNull::dangling())
    }
}

type H = IommuHal<BlkHal, SLOTS>;
type Dev<'t> = BlkDevice<'t, TrapHal<H>, AccessPlatform<PciTransport>>;

/// Every fault the driver has (after polling the event queue).
fn drain(iommu: &Iommu, mut each: impl FnMut(FaultRecord)) -> usize {
    let mut n = 0;
    iommu.poll_events();
    while let Some(f) = iommu.pop_fault() {
        each(f);
        n += 1;
    }
    n
}

fn counters(iommu: &Iommu) -> Counters {
    let c = iommu.counters();
    Counters {
        maps: c.map,
        flushes: c.notifications,
    }
}

/// What the table did between two snapshots.
#[derive(Debug, Clone, Copy)]
struct ShareDelta {
    allocs: u64,
    shares: u64,
    bounced: u64,
    bounce_bytes: u64,
    unshares: u64,
}

impl ShareDelta {
    fn between(now: &ShareCounters, before: &ShareCounters) -> Self {
        Self {
            allocs: now.allocs - before.allocs,
            shares: now.shares - before.shares,
            bounced: now.bounced - before.bounced,
            bounce_bytes: now.bounce_bytes - before.bounce_bytes,
            unshares: now.unshares - before.unshares,
        }
    }
}

impl fmt::Display for ShareDelta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} allocs + {} shares ({} bounced, {} bytes copied), {} unshares",
            self.allocs, self.shares, self.bounced, self.bounce_bytes, self.unshares
        )
    }
}

fn request_summary(c: &CounterSnapshot) -> impl fmt::Display + '_ {
    struct S<'a>(&'a CounterSnapshot);
    impl fmt::Display for S<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(
                f,
                "{} MAP + {} UNMAP requests in {} notifications",
                self.0.map, self.0.unmap, self.0.notifications
            )
        }
    }
    S(c)
}

/// The table must have recorded no failure.
fn shares_clean(shares: &Shares, when: &'static str) -> Result<ShareCounters, Error> {
    if let Some(e) = shares.take_error() {
        println!("{NAME}: DmaShares error {when}: {e}");
        return Err(Error::Share(e));
    }
    let c = shares.counters();
    check(c.failures == 0, "DmaShares failures", c.failures)?;
    Ok(c)
}

/// Runs `scenario`; prints what it proved.
pub fn run(boot: &BootInfo, scenario: Scenario) -> Result<(), Error> {
    demo!(
        "iommu",
        "virtio-iommu-pci, driven by iommu-virtio; strict: every unshare is an UNMAP the device acknowledged before it returns"
    );
    let [viommu, blk] = open_virtio_functions(
        boot,
        NAME,
        [IOMMU_DEVICE_ID, blk_io::pci::VIRTIO_BLK_DEVICE_ID],
    )?;
    // The disk's endpoint ID as the firmware gives it, never assumed.
    let firmware = Firmware::find(boot, viommu.bdf)?;
    let endpoint = firmware.endpoint("virtio-blk", blk.bdf)?;
    println!(
        "{NAME}: virtio-iommu at {}, virtio-blk at {} (endpoint {endpoint:#x})",
        viommu.bdf, blk.bdf
    );

    let mut frames = FrameAllocator::take().ok_or(Error::NoFrameAllocator)?;
    platform::heap::init(&mut frames, HEAP_FRAMES)?;
    let hal = frames.alloc(HAL_FRAMES)?;
    HAL_END.store(hal.phys() as usize + hal.len(), Ordering::Relaxed);
    HAL_NEXT.store(hal.phys() as usize, Ordering::Relaxed);

    let mut bars = [None; 6];
    for (slot, bar) in bars.iter_mut().zip(viommu.bars) {
        *slot = bar.map(|(cpu, size)| PciBar {
            cpu_addr: cpu as usize,
            size,
        });
    }
    // SAFETY: the BARs were assigned and enabled by `open_virtio_functions`,
    // are identity mapped, and only this transport touches them.
    let transport = unsafe { VirtioPciTransport::new(&Config(viommu), &bars)? };
    let config = DriverConfig {
        wait: WaitBudget::polls(200_000_000).with_clock(now_us, 2_000_000),
        bypass_unattached: false,
    };
    let iommu: &'static Iommu = leak(&mut frames, Iommu::new(transport, config)?)?;
    let g = *iommu.geometry();
    check(
        !g.unattached_bypass,
        "bypass is still on for unattached endpoints",
        1,
    )?;
    println!(
        "{NAME}: virtio-iommu up: granule {:#x}, input {:#x}..={:#x}, bypass = 0 (the disk cannot DMA until attached)",
        g.granule, g.input_start, g.input_end
    );
    let info = iommu.probe(endpoint)?;
    let domain: &'static Domain<'static> = leak(&mut frames, VirtioDomain::new(iommu, 1)?)?;
    domain.attach(endpoint)?;
    println!("{NAME}: virtio-blk (endpoint {endpoint:#x}) attached to domain 1");

    let window = IovaRange::new(Iova(IOVA_BASE), IOVA_WINDOW).map_err(CoreError::from)?;
    g.aperture()
        .filter(|a| a.contains_range(&window))
        .ok_or(Error::Check(
            "IOVA window outside the input range",
            IOVA_BASE,
        ))?;
    let slots = leak(&mut frames, [const { ExtentSlot::new() }; IOVA_SLOTS])?;
    let cpus = leak(&mut frames, [const { CpuCache::new() }; 1])?;
    let iovas = IovaAllocator::new(
        IovaAllocatorConfig::new(window, g.granule.max(FRAME)),
        slots,
        cpus,
    )
    .map_err(CoreError::from)?;
    let iovas: &'static IovaAllocator<'static> = leak(&mut frames, iovas)?;
    let holes = info.reserve_in(iovas).map_err(CoreError::from)?;
    for r in &info.reserved {
        println!(
            "{NAME}: PROBE endpoint {endpoint:#x}: reserved {:#x}..={:#x} ({:?}), an IOVA hole",
            r.start, r.end, r.kind
        );
    }
    let mapper = DmaMapper::new(domain, iovas, &CPU)?;
    let dma = frames.alloc(DMA_FRAMES)?;
    let dma_frames: &'static FramePool = leak(&mut frames, FramePool::new(dma))?;
    let shares: &'static Shares = leak(
        &mut frames,
        DmaShares::new(mapper, dma_frames, &IdentityMapped)?,
    )?;
    // Pool slots of at least a granule (the pool's size kept).
    let granule = shares.granule();
    let pool = blk_io::bench::pool_at(blk_io::bench::POOL, granule);
    let deferred_pool = blk_io::bench::pool_at(blk_io::bench::DEFERRED_POOL, granule);
    let pooled = DmaShares::with_pool(mapper, dma_frames, &IdentityMapped, pool)?;
    let queue_slots = leak_slice(&mut frames, QUEUE_SLOTS, DeferredSlot::new)?;
    let queue = leak(&mut frames, blk_io::bench::flush_queue(queue_slots))?;
    let deferred = DmaShares::with_pool(
        mapper.with_flush_queue(queue),
        dma_frames,
        &IdentityMapped,
        deferred_pool,
    )?;
    let tables = PolicyTables::new(
        shares,
        leak(&mut frames, pooled)?,
        leak(&mut frames, deferred)?,
    );
    let tables = TABLES.call_once(|| tables);
    println!(
        "{NAME}: DmaShares over domain 1: IOVAs {:#x}..{:#x} ({holes} PROBE holes), poison IOVA {:#x}, bounce granule {:#x}; pools of {} x {:#x}-byte slots",
        IOVA_BASE,
        IOVA_BASE + IOVA_WINDOW,
        shares.poison().0,
        shares.granule(),
        pool.slots,
        pool.slot_size
    );

    // Granule aligned, so that the check's aligned buffers are mapped in
    // place where they are whole granules, and bounced where not.
    let mut scratch = frames.alloc_aligned(SCRATCH_BYTES / FRAME_SIZE, granule)?;
    let scratch = scratch.as_mut_slice();

    let pci = blk_io::pci::pci_transport::<H>(&blk)?;
    let transport =
        RefCell::new(AccessPlatform::new(pci).map_err(|(e, _)| BlkError::BypassesIommu(e))?);
    let before_init = iommu.counters();
    let mut dev: Dev<'_> = BlkDevice::new(&transport)?;
    let init = iommu.counters().since(&before_init);
    let mut count = || counters(iommu);
    let mut ctx = Context {
        name: NAME,
        iommu: "virtio-iommu",
        counters: &mut count,
    };
    blk_io::announce(&ctx, &blk, &dev);
    println!(
        "{NAME}: virtqueue set up through the domain: {}",
        request_summary(&init)
    );
    let early = drain(iommu, |f| println!("{NAME}: fault before the check: {f:?}"));
    check(early == 0, "faults before the check", early as u64)?;

    // The check: every DMA must go to an IOVA we mapped.
    let before = iommu.counters();
    let shares_before = shares.counters();
    let report = blk_io::check(&mut dev, scratch, &mut ctx)?;
    let during = drain(iommu, |f| println!("{NAME}: fault during the check: {f:?}"));
    let c = iommu.counters().since(&before);
    check(during == 0, "faults during the check", during as u64)?;
    check(
        c.events == 0 && c.faults_dropped == 0,
        "fault events during the check",
        c.events,
    )?;
    let sc = shares_clean(shares, "after the check")?;
    let sc_check = ShareDelta::between(&sc, &shares_before);
    println!(
        "{NAME}: check: {} requests, 0 faults, 0 fault events: every DMA of the disk went to an IOVA we mapped",
        report.requests
    );
    println!(
        "{NAME}: check: {}; DmaShares: {}",
        request_summary(&c),
        sc_check
    );
    demo!(
        "fault",
        "none during the check: every DMA of the disk went to an IOVA mapped for it"
    );
    demo!(
        "flushes",
        "check: {} for {} shares ({} bounced), one notification per share and per unshare; virtqueue: {} allocs, {} MAP",
        request_summary(&c),
        sc_check.shares,
        sc_check.bounced,
        sc.allocs,
        init.map
    );

    if scenario == Scenario::Blk {
        stale_probe(
            iommu,
            iovas,
            &mut dev,
            scratch,
            &mut ctx,
            endpoint,
            &mut |_, _| Ok(()),
        )?;
    }
    drop(dev);
    drop(transport);
    if scenario == Scenario::Blk {
        // Deferred invalidation: B's mapping is kept by the table or its
        // UNMAP waits in the flush queue; once the table has evicted and
        // flushed, B's old IOVA must be blocked as under strict.
        let shares = tables.select(Policy::Deferred);
        let pci = blk_io::pci::pci_transport::<H>(&blk)?;
        let transport =
            RefCell::new(AccessPlatform::new(pci).map_err(|(e, _)| BlkError::BypassesIommu(e))?);
        let mut dev: Dev<'_> = BlkDevice::new(&transport)?;
        stale_probe(
            iommu,
            iovas,
            &mut dev,
            scratch,
            &mut ctx,
            endpoint,
            &mut |a, ctx| Ok(probe::settle_deferred(ctx, shares, a)?),
        )?;
        drop(dev);
        tables.select(Policy::Strict);
        println!(
            "{NAME}: deferred probe: after the queue flush B's old IOVA is blocked, as under strict"
        );
        // The bounce pool: a small buffer never reaches the device itself.
        let shares = tables.select(Policy::Pool);
        let pool = shares
            .pool_range()
            .ok_or(Error::Check("the pool table has no pool", 0))?;
        let pci = blk_io::pci::pci_transport::<H>(&blk)?;
        let transport =
            RefCell::new(AccessPlatform::new(pci).map_err(|(e, _)| BlkError::BypassesIommu(e))?);
        let mut dev: Dev<'_> = BlkDevice::new(&transport)?;
        // SAFETY: `pool` is the pool table's bounce pool, which the device
        // may write at any time and which holds nothing between shares.
        unsafe { probe::pool_read(&mut dev, scratch, &mut ctx, pool.start.0..pool.end.0) }?;
        drop(dev);
        tables.select(Policy::Strict);
    }
    if scenario == Scenario::Bench {
        let mut bufs = frames.alloc(blk_io::bench::MATRIX_BUFFER_BYTES / FRAME_SIZE)?;
        // The device frees a domain, mappings and all, when its last
        // endpoint leaves; the disk leaves domain 1 for the baseline and the
        // pre-mapped runs, so an idle edu (never given Bus-Master) stays
        // attached to keep domain 1 and its bounce pools alive.
        let anchor = platform::pci::discover(boot)
            .ok()
            .and_then(|host| host.find(platform::edu::VENDOR_ID, platform::edu::DEVICE_ID))
            .ok_or(Error::Check(
                "blk-bench needs an edu device to keep domain 1 attached while the disk moves",
                0,
            ))?;
        domain.attach(firmware.endpoint("edu", anchor.bdf)?)?;
        let premapped: &'static Domain<'static> =
            leak(&mut frames, VirtioDomain::new(iommu, PREMAPPED_DOMAIN)?)?;
        DirectHal::use_pool(dma_frames);
        let before = iommu.counters();
        let mut bench = Bench {
            boot,
            iommu,
            endpoint,
            function: &blk,
            domain,
            premapped,
            tables,
        };
        blk_io::bench::matrix(&mut bench, bufs.as_mut_slice())?;
        let faults = drain(iommu, |f| {
            println!("{NAME}: fault during the benchmark: {f:?}")
        });
        check(faults == 0, "faults during the benchmark", faults as u64)?;
        shares_clean(shares, "after the benchmark")?;
        println!(
            "{NAME}: blk-bench: 0 faults during the benchmark; {}",
            request_summary(&iommu.counters().since(&before))
        );
    }
    let stats = dma_frames.stats();
    println!(
        "{NAME}: after the scenario: {} live DMA shares, frame pool {} KiB in use (high water {} KiB of {} KiB, {} bad frees); totals {}",
        shares.live(),
        (stats.in_use * FRAME_SIZE) >> 10,
        (stats.peak * FRAME_SIZE) >> 10,
        (stats.frames * FRAME_SIZE) >> 10,
        stats.bad_frees,
        request_summary(&iommu.counters())
    );
    check(
        stats.bad_frees == 0,
        "frames freed that were not allocated",
        stats.bad_frees,
    )?;
    // Totals since boot, for xtask to hold against QEMU's trace.
    let c = iommu.counters();
    println!("{NAME}: trace-count: map={}", c.map);
    println!("{NAME}: trace-count: unmap={}", c.unmap);
    println!("{NAME}: scenario `{}` passed", scenario.name());
    demo!("result", "OK");
    Ok(())
}

/// The virtio-iommu side of the same-boot benchmark: which domain the disk's
/// endpoint is attached to, and which `Hal` drives it, per policy.
struct Bench<'f> {
    boot: &'f BootInfo,
    iommu: &'static Iommu,
    endpoint: u32,
    function: &'f VirtioFunction,
    /// The domain `iova-virtio-hal` maps in.
    domain: &'static Domain<'static>,
    /// All of RAM at IOVA = physical address.
    premapped: &'static Domain<'static>,
    tables: &'static PolicyTables<Shares>,
}

impl Bench<'_> {
    /// The disk through a fresh transport and `HAL`; reset and dropped after.
    fn disk<HAL: VirtioHal>(
        &self,
        work: &mut Workload<'_>,
        costs: &mut dyn FnMut() -> Costs,
    ) -> Result<(), Error> {
        Ok(blk_io::bench::with_pci_disk::<HAL>(
            self.function,
            work,
            costs,
        )?)
    }

    fn costs(&self) -> Costs {
        let c = self.iommu.counters();
        let s = self.tables.current().counters();
        Costs {
            maps: c.map,
            flushes: c.notifications,
            bounce_bytes: s.bounce_bytes + s.pool_bytes,
        }
    }
}

impl Setup for Bench<'_> {
    type Error = Error;

    fn backend(&self) -> &'static str {
        "virtio-iommu"
    }

    fn policies(&self) -> &[Policy] {
        &[
            Policy::Baseline,
            Policy::Premapped,
            Policy::Strict,
            Policy::Pool,
            Policy::Deferred,
        ]
    }

    fn with_disk(&mut self, policy: Policy, work: &mut Workload<'_>) -> Result<(), Error> {
        let (iommu, ep) = (self.iommu, self.endpoint);
        let result = match policy {
            Policy::Baseline => {
                iommu.attach_bypass(ep, BYPASS_DOMAIN)?;
                self.disk::<DirectHal>(work, &mut || self.costs())
            }
            Policy::Premapped => {
                // The device creates the domain at its first attach and
                // frees it (mappings and all) when its last endpoint leaves:
                // map after attaching, unmap before leaving.
                self.premapped.attach(ep)?;
                blk_io::premap_ram(self.premapped, self.boot)?;
                let r = self.disk::<DirectHal>(work, &mut || self.costs());
                blk_io::unmap_ram(self.premapped, self.boot)?;
                r
            }
            _ => {
                self.domain.attach(ep)?;
                let shares = self.tables.select(policy);
                let r = self.disk::<H>(work, &mut || self.costs());
                self.tables.select(Policy::Strict);
                // What the deferred table's queue holds goes first.
                shares.flush_deferred()?;
                if let Some(e) = shares.take_error() {
                    println!(
                        "{NAME}: blk-bench: {} policy: DmaShares failed: {e}",
                        policy.name()
                    );
                    return Err(Error::Share(e));
                }
                r
            }
        };
        // Back to where the scenario left it: the disk in domain 1.
        self.domain.attach(ep)?;
        result
    }
}

/// The stale-buffer probe: B unshared, then read into through its old IOVA.
fn stale_probe(
    iommu: &Iommu,
    iovas: &IovaAllocator<'_>,
    dev: &mut Dev<'_>,
    scratch: &mut [u8],
    ctx: &mut Context<'_>,
    endpoint: u32,
    settle: &mut dyn FnMut(u64, &Context<'_>) -> Result<(), Error>,
) -> Result<(), Error> {
    let a = probe::record(dev, scratch, ctx)?;
    // Under a deferred policy B's translation may remain until this.
    settle(a, ctx)?;
    let len = PROBE_BYTES as u64;
    // Nothing may be mapped at A again: the stale read must find it empty.
    let range = IovaRange::new(Iova(a), len).map_err(CoreError::from)?;
    iovas.reserve(range).map_err(CoreError::from)?;
    println!(
        "{NAME}: stale probe: IOVA {a:#x}..{:#x} of the unshared B reserved in the allocator",
        a + len
    );
    let before = iommu.counters();
    // SAFETY: A is an IOVA of our domain that nothing is mapped at (B was
    // unshared: UNMAP acknowledged) and nothing will be (reserved above), so
    // the device can reach nothing through it.
    let seen = unsafe { probe::stale_read(dev, scratch, ctx, a) }?;
    check(
        seen.blocked(),
        "stale probe: the read through the unshared buffer's old IOVA was not blocked",
        seen.first_changed.unwrap_or(0) as u64,
    )?;
    let mut first: Option<FaultRecord> = None;
    let mut outside = 0u64;
    let mut offsets: heapless::Vec<u64, 8> = heapless::Vec::new();
    let total = drain(iommu, |f| {
        let hit = f.endpoint == endpoint
            && f.reason == FaultReason::Mapping
            && f.address.is_some_and(|x| x >= a && x < a + len);
        if hit {
            first.get_or_insert(f);
            let _ = offsets.push(f.address.unwrap_or(a) - a);
        } else {
            outside += 1;
            println!("{NAME}: stale probe: other fault {f:?}");
        }
    });
    let c = iommu.counters().since(&before);
    let f = first.ok_or(Error::Check(
        "stale probe: no MAPPING fault for the disk inside [A, A + 8 KiB)",
        a,
    ))?;
    check(
        outside == 0,
        "stale probe: faults outside [A, A + 8 KiB)",
        outside,
    )?;
    let at = f.address.unwrap_or(0);
    println!(
        "{NAME}: stale probe: blocked: {:?}, canary intact; virtio-iommu fault {:?} endpoint {:#x} address {at:#x} (A + {:#x}) flags {:#x}; {total} fault records, all for the disk inside [A, A + 8 KiB) (at A + {:x?}), {} fault events, {} dropped",
        seen.outcome,
        f.reason,
        f.endpoint,
        at - a,
        f.flags,
        offsets.as_slice(),
        c.events,
        c.faults_dropped
    );
    demo!(
        "fault",
        "{:?} fault for the disk (endpoint {:#x}) at {at:#x}, inside the unshared buffer's old IOVA range [{a:#x}, {:#x})",
        f.reason,
        f.endpoint,
        a + len
    );
    Ok(())
}

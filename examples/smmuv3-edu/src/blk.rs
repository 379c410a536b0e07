//! The `blk` and `blk-bench` scenarios: a virtio-blk-pci disk
//! (`iommu_platform=on,disable-legacy=on`) behind the SMMU, driven by
//! virtio-drivers' `VirtIOBlk` through `iova-virtio-hal`'s [`IommuHal`]:
//! every address the device is given is an IOVA of one stage-1 domain,
//! mapped while the driver shares the buffer and unmapped (range TLBI +
//! CMD_SYNC) before `unshare` returns.
//!
//! Order matters for default deny: the SMMU is brought up (GBPA = abort,
//! every STE invalid) *before* the blk function gets Bus-Master, and its
//! StreamID is attached to the domain only then; the device cannot reach
//! memory until the driver hands it IOVAs.
//!
//! - `blk`: `blk_io::check` (the host verifies the image afterwards), then
//!   the event queue must be empty (every DMA went to an IOVA we mapped);
//!   then the stale-buffer probe: the device address A of the 8 KiB buffer
//!   B is reserved in the IOVA allocator after B was unshared, and a read
//!   given A must be blocked (canary intact, not completed) with a
//!   translation fault for the blk StreamID inside `[A, A + 8 KiB)`.
//! - `blk-bench`: the check, then `blk_io::bench` through the SMMU.
//!
//! Everything the `Hal` reaches is `'static` (it has no `self`): the
//! driver, the domain, the IOVA allocator and the [`DmaShares`] table are
//! placed in frames of the platform pool that are never handed out again
//! ([`platform::leak`]); no heap. DMA memory, bounce pages and page tables
//! come from a [`FramePool`] block, which reuses what is freed.

use core::cell::RefCell;
use core::fmt;
use core::ptr::NonNull;

use blk_io::DirectHal;
use blk_io::bench::{Costs, Policy, PolicyTables, Setup, Workload};
use blk_io::probe::{self, PROBE_BYTES};
use blk_io::{AccessPlatform, BlkDevice, BlkError, Context, Counters, SCRATCH_BYTES, TrapHal};
use iommu_arm_smmuv3::{
    CommandCounts, Config, DrainReport, Event, FaultKind, MmioRegion, S1Domain, Smmu, SmmuError,
};
use iova_core::flush_queue::DeferredSlot;
use iova_core::iova_alloc::{CpuCache, ExtentSlot, IovaAllocatorConfig, extent_slots_needed};
use iova_core::{DmaMapper, Error as CoreError, Iova, IovaAllocator, IovaRange};
use iova_virtio_hal::{DmaShares, HalContext, IdentityMapped, IommuHal, ShareCounters, ShareError};
use platform::dtb::Fdt;
use platform::frame_pool::FramePool;
use platform::frames::{FRAME_SIZE, FrameAllocator as PlatformFrames, FramesError};
use platform::leak::{leak, leak_slice};
use platform::virtio_pci::VirtioFunction;
use platform::{BootInfo, demo, println};
use spin::Once;
use virtio_drivers::Hal as VirtioHal;
use virtio_drivers::transport::pci::PciTransport;

use crate::dt::{self, DtError, SmmuNode};
use crate::{APERTURE, NAME, PAGE};

/// Slots of the share table: the queue's allocations, the four shares of
/// each of 16 requests in flight (indirect list, header, data, status), and
/// the ones a blocked request leaves behind (the device is reset instead of
/// completing it), with room to spare.
const SLOTS: usize = 80;
/// Frames for the SMMU's queues and tables, page tables, DMA memory and
/// bounce pages, and the two bounce pools (4 MiB of the 8 MiB platform pool).
const DMA_FRAMES: usize = 1024;
/// IOVA ranges the flush queue can hold.
const QUEUE_SLOTS: usize = 256;
/// Heap for virtio-drivers' indirect descriptor lists (64 KiB).
const HEAP_FRAMES: usize = 16;
/// Event queue: 2048 entries. QEMU records faults in 4-byte pieces; the
/// probe's blocked read must not overflow it.
const EVTQ_LOG2: u32 = 11;
/// Live IOVA ranges at most: every slot, plus the table's poison address.
const MAX_LIVE: usize = SLOTS + 2;
/// Reserved holes: the probe's range.
const HOLES: usize = 2;
/// The IOVA allocator's per-CPU caches (one CPU).
const CPUS: usize = 1;

/// The variant: check + probe, or check + benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// `blk`.
    Check,
    /// `blk-bench`.
    Bench,
}

impl Scenario {
    /// The scenario named `s` (`-append`), if it is one of these.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "blk" => Some(Self::Check),
            "blk-bench" => Some(Self::Bench),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Check => "blk",
            Self::Bench => "blk-bench",
        }
    }
}

/// Why a blk scenario failed.
#[derive(Debug)]
pub enum Error {
    /// The virtio-blk scenario (device, transport, I/O, data).
    Blk(BlkError),
    /// The SMMU driver.
    Smmu(SmmuError),
    /// iova-core (IOVA allocator, mapper).
    Core(CoreError),
    /// The share table.
    Share(ShareError),
    /// The platform frame pool.
    Frames(FramesError),
    /// The device tree.
    Dt(DtError),
    /// The frame allocator was already taken.
    NoFrameAllocator,
    /// A check failed.
    Check(&'static str, u64),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Blk(e) => write!(f, "{e}"),
            Self::Smmu(e) => write!(f, "smmuv3: {e}"),
            Self::Core(e) => write!(f, "iova-core: {e}"),
            Self::Share(e) => write!(f, "iova-virtio-hal: {e}"),
            Self::Frames(e) => write!(f, "{e}"),
            Self::Dt(e) => write!(f, "{e}"),
            Self::NoFrameAllocator => f.write_str("frame allocator already taken"),
            Self::Check(what, at) => write!(f, "{what} ({at:#x})"),
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
from!(BlkError => Blk, SmmuError => Smmu, CoreError => Core, ShareError => Share, FramesError => Frames, DtError => Dt);

type Frames = &'static FramePool;
/// The SMMU driver of these scenarios.
type Driver = Smmu<MmioRegion, Frames>;
/// The blk function's stage-1 domain (4 KiB granule, 48-bit IOVAs).
type Domain = S1Domain<'static, MmioRegion, Frames, Frames>;
type Shares = DmaShares<'static, Domain, SLOTS>;

/// The tables the `Hal` may use, one per policy (strict for the check); set
/// once in [`run`] before the device is initialised.
static TABLES: Once<Tables> = Once::new();
type Tables = PolicyTables<Shares>;

/// Where [`IommuHal`] finds the table.
struct Ctx;

impl HalContext<SLOTS> for Ctx {
    type Domain = Domain;

    fn shares() -> &'static Shares {
        match TABLES.get() {
            Some(t) => t.current(),
            // `run` sets it before the first transport is built: a bug here.
            None => panic!("smmuv3-edu: IommuHal used before the share table was set up"),
        }
    }

    unsafe fn mmio_phys_to_virt(paddr: u64, _size: usize) -> NonNull<u8> {
        // Identity-mapped MMIO (MMU off).
        NonNull::new(paddr as *mut u8).unwrap_or(NonNull::dangling())
    }
}

type Hal = IommuHal<Ctx, SLOTS>;
type Dev<'t> = BlkDevice<'t, TrapHal<Hal>, AccessPlatform<PciTransport>>;

/// Mappings (allocations + shares) and flushes (CMD_SYNCs; each strict
/// unmap is one TLBI batch ended by one CMD_SYNC) so far.
fn counters(shares: &Shares, smmu: &Driver) -> Counters {
    let s = shares.counters();
    Counters {
        maps: s.allocs + s.shares,
        flushes: smmu.counters().commands.sync,
    }
}

/// Drains the event queue: the count, the loss flags and the first 8.
fn drain(smmu: &Driver) -> Result<(heapless::Vec<Event, 8>, DrainReport), SmmuError> {
    let mut v = heapless::Vec::new();
    let r = smmu.drain_events(|e| {
        let _ = v.push(e);
    })?;
    Ok((v, r))
}

/// The share table must have recorded no failure.
fn no_share_errors(shares: &Shares, when: &'static str) -> Result<ShareCounters, Error> {
    let c = shares.counters();
    if let Some(e) = shares.take_error() {
        println!("{NAME}: share table error {when}: {e}");
        return Err(Error::Share(e));
    }
    if c.failures != 0 {
        return Err(Error::Check("share table counted failures", c.failures));
    }
    Ok(c)
}

/// Counts of commands between two readings.
fn since(after: CommandCounts, before: CommandCounts) -> CommandCounts {
    let mut d = after;
    d.total -= before.total;
    d.sync -= before.sync;
    d.tlbi_nh_va -= before.tlbi_nh_va;
    d.tlbi_range -= before.tlbi_range;
    d.tlbi_nh_asid -= before.tlbi_nh_asid;
    d.cfgi_ste -= before.cfgi_ste;
    d.cfgi_cd -= before.cfgi_cd;
    d.errors -= before.errors;
    d
}

/// Runs `scenario`; prints `demo: result: OK` when it passed.
pub fn run(
    boot: &BootInfo,
    fdt: &Fdt<'_>,
    node: &SmmuNode,
    scenario: Scenario,
) -> Result<(), Error> {
    let mut frames = PlatformFrames::take().ok_or(Error::NoFrameAllocator)?;
    platform::heap::init(&mut frames, HEAP_FRAMES)?;
    let mut scratch = frames.alloc(SCRATCH_BYTES / FRAME_SIZE)?;
    let block = frames.alloc_aligned(DMA_FRAMES, 0x1_0000)?;
    let dma: &'static FramePool = leak(&mut frames, FramePool::new(block))?;

    // 1. The SMMU, before the device may master the bus.
    // SAFETY: the device tree's SMMUv3 register frame, base and size as its
    // `reg` gives them, identity mapped (MMU off: device memory), driven by
    // nobody else.
    let regs = unsafe { MmioRegion::new(node.base as usize as *mut u8, node.size as usize) };
    let smmu = Smmu::new(regs, dma, Config::default().with_evtq_log2(EVTQ_LOG2))?;
    let smmu: &'static Driver = leak(&mut frames, smmu)?;
    let f = smmu.features();
    let l = smmu.layout();
    println!(
        "{NAME}: SMMUv3 at {:#x}: stage1 {} stage2 {} RIL {} ASID{} OAS {}; brought up: {:?}, cmdq {} entries, evtq {} entries, GBPA abort {}: every stream aborts until attached",
        node.base,
        f.stage1,
        f.stage2,
        f.ril,
        f.asid_bits,
        f.oas_bits,
        l.stream_table,
        l.cmdq_entries,
        l.evtq_entries,
        l.gbpa_abort
    );
    demo!(
        "iommu",
        "SMMUv3 at {:#x}, stage 1 (4 KiB granule, 48-bit IOVAs), strict: every unshare is unmapped and flushed (range TLBI + CMD_SYNC) before it returns",
        node.base
    );

    // 2. The blk function (Bus-Master on from here), its domain.
    let function = blk_io::pci::open_blk_function(boot, NAME)?;
    let sid = dt::stream_id(fdt, node, function.bdf.rid())?;
    let unattached = smmu.ste(sid)?;
    if unattached.is_valid() {
        return Err(Error::Check(
            "default deny: the blk StreamID has a valid STE before attach",
            u64::from(sid),
        ));
    }
    println!(
        "{NAME}: blk StreamID {sid:#x} before attach: STE invalid (V = 0): its DMA aborts (default deny)"
    );
    let domain: &'static Domain = leak(&mut frames, smmu.s1_domain(dma, 48)?)?;
    smmu.attach_s1(sid, domain)?;
    println!(
        "{NAME}: blk {} has StreamID {sid:#x} (iommu-map), attached to a stage-1 domain with ASID {}",
        function.bdf,
        domain.invalidator().asid()
    );

    // 3. IOVAs, the mapper and the share table, all 'static.
    let slots = leak_slice(
        &mut frames,
        extent_slots_needed(MAX_LIVE, HOLES, CPUS),
        ExtentSlot::new,
    )?;
    let cpus = leak_slice(&mut frames, CPUS, CpuCache::new)?;
    let aperture = IovaRange::new(Iova(APERTURE), 1 << 32).map_err(CoreError::from)?;
    let iovas = IovaAllocator::new(IovaAllocatorConfig::new(aperture, PAGE), slots, cpus)
        .map_err(CoreError::from)?;
    let iovas: &'static IovaAllocator<'static> = leak(&mut frames, iovas)?;
    static CPU: fn() -> usize = || 0;
    static IDENTITY: IdentityMapped = IdentityMapped;
    let mapper = DmaMapper::new(domain, iovas, &CPU)?;
    let shares: &'static Shares = leak(&mut frames, DmaShares::new(mapper, dma, &IDENTITY)?)?;
    let pooled = DmaShares::with_pool(mapper, dma, &IDENTITY, blk_io::bench::POOL)?;
    let queue_slots = leak_slice(&mut frames, QUEUE_SLOTS, DeferredSlot::new)?;
    let queue = leak(&mut frames, blk_io::bench::flush_queue(queue_slots))?;
    let deferred = DmaShares::with_pool(
        mapper.with_flush_queue(queue),
        dma,
        &IDENTITY,
        blk_io::bench::DEFERRED_POOL,
    )?;
    let tables = Tables::new(
        shares,
        leak(&mut frames, pooled)?,
        leak(&mut frames, deferred)?,
    );
    let tables = TABLES.call_once(|| tables);
    println!(
        "{NAME}: IOVAs from {APERTURE:#x} (+4 GiB); share table of {SLOTS} slots, granule {} B, poison IOVA {:#x}",
        shares.granule(),
        shares.poison().0
    );

    // 4. The device, through virtio-drivers' PciTransport.
    let pci = blk_io::pci::pci_transport::<Hal>(&function)?;
    let transport =
        RefCell::new(AccessPlatform::new(pci).map_err(|(e, _)| BlkError::BypassesIommu(e))?);
    let mut dev: Dev<'_> = BlkDevice::new(&transport)?;
    let mut count = || counters(shares, smmu);
    let mut ctx = Context {
        name: NAME,
        iommu: "SMMUv3",
        counters: &mut count,
    };
    blk_io::announce(&ctx, &function, &dev);
    let scratch = scratch.as_mut_slice();

    // 5. The I/O check; nothing may fault meanwhile.
    let (s0, c0) = (shares.counters(), smmu.counters().commands);
    let report = blk_io::check(&mut dev, scratch, &mut ctx)?;
    let (s1, c1) = (
        no_share_errors(shares, "after the check")?,
        smmu.counters().commands,
    );
    let (ev, r) = drain(smmu)?;
    if let Some(e) = ev.first() {
        println!(
            "{NAME}: unexpected event during the check: {}",
            crate::show(e)
        );
    }
    if r.events != 0 || r.lost_events() {
        return Err(Error::Check(
            "SMMU events during the check",
            u64::from(r.events),
        ));
    }
    let d = since(c1, c0);
    println!(
        "{NAME}: blk: 0 SMMU events during the check: every DMA of its {} requests went to an IOVA we mapped",
        report.requests
    );
    println!(
        "{NAME}: blk: check: {} allocations + {} shares ({} bounced, {} bytes copied), {} unshares; {} commands: {} TLBI_NH_VA ({} range), {} TLBI_NH_ASID, {} CMD_SYNC",
        s1.allocs - s0.allocs,
        s1.shares - s0.shares,
        s1.bounced - s0.bounced,
        s1.bounce_bytes - s0.bounce_bytes,
        s1.unshares - s0.unshares,
        d.total,
        d.tlbi_nh_va,
        d.tlbi_range,
        d.tlbi_nh_asid,
        d.sync
    );
    demo!(
        "fault",
        "none during the check (event queue empty): every DMA went to an IOVA we mapped"
    );
    demo!(
        "flushes",
        "{} TLBI_NH_VA ({} in range form) + {} CMD_SYNC for {} unshares; {} of {} shares bounced (partial pages)",
        d.tlbi_nh_va,
        d.tlbi_range,
        d.sync,
        s1.unshares - s0.unshares,
        s1.bounced - s0.bounced,
        s1.shares - s0.shares
    );

    if scenario == Scenario::Check {
        stale_probe(
            &mut dev,
            scratch,
            &mut ctx,
            smmu,
            iovas,
            sid,
            &mut |_, _| Ok(()),
        )?;
    }

    // 6. Teardown: the device is reset, then the driver frees its queue.
    drop(dev);
    drop(transport);
    if scenario == Scenario::Check {
        deferred_probe(&function, scratch, &mut ctx, smmu, iovas, sid, tables)?;
        // The bounce pool: a small buffer never reaches the device itself.
        let shares = tables.select(Policy::Pool);
        let pool = shares
            .pool_range()
            .ok_or(Error::Check("the pool table has no pool", 0))?;
        let pci = blk_io::pci::pci_transport::<Hal>(&function)?;
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
        let premapped: &'static Domain = leak(&mut frames, smmu.s1_domain(dma, 48)?)?;
        let ram = blk_io::premap_ram(premapped, boot)?;
        println!(
            "{NAME}: blk-bench: pre-mapped domain: {} MiB of RAM at IOVA = physical address",
            ram >> 20
        );
        DirectHal::use_pool(dma);
        let mut bench = Bench {
            smmu,
            sid,
            function: &function,
            domain,
            premapped,
            tables,
        };
        blk_io::bench::matrix(&mut bench, bufs.as_mut_slice())?;
        let (_, r) = drain(smmu)?;
        if r.events != 0 || r.lost_events() {
            return Err(Error::Check(
                "SMMU events during the benchmark",
                u64::from(r.events),
            ));
        }
        println!("{NAME}: blk-bench: 0 SMMU events during the benchmark");
    }
    let s = no_share_errors(shares, "at the end")?;
    let c = smmu.counters();
    let fs = dma.stats();
    println!(
        "{NAME}: totals: {} allocations ({} freed), {} shares ({} unshared, {} bounced), {} live{}, {} stuck; {} commands ({} CMD_SYNC, {} TLBI_NH_VA of which {} range, {} errors), {} events, {} event losses; frames: {} of {} in use, peak {}, {} allocations, {} frees, {} bad frees",
        s.allocs,
        s.deallocs,
        s.shares,
        s.unshares,
        s.bounced,
        shares.live(),
        if scenario == Scenario::Check {
            " (the blocked request's header and status: the device was reset instead)"
        } else {
            ""
        },
        shares.stuck(),
        c.commands.total,
        c.commands.sync,
        c.commands.tlbi_nh_va,
        c.commands.tlbi_range,
        c.commands.errors,
        c.events,
        c.event_losses,
        fs.in_use,
        fs.frames,
        fs.peak,
        fs.allocs,
        fs.frees,
        fs.bad_frees
    );
    if shares.stuck() != 0 || fs.bad_frees != 0 || c.commands.errors != 0 {
        return Err(Error::Check(
            "stuck shares, bad frees or refused commands",
            0,
        ));
    }
    if smmu.global_errors()? != 0 {
        return Err(Error::Check("global errors pending", 0));
    }
    // Totals since boot, for xtask to hold against QEMU's trace.
    println!("{NAME}: trace-count: cmd_sync={}", c.commands.sync);
    println!(
        "{NAME}: trace-count: cmd_tlbi_nh_va={}",
        c.commands.tlbi_nh_va
    );
    println!("{NAME}: scenario `{}` passed", scenario.name());
    demo!("result", "OK");
    Ok(())
}

/// The stale-buffer probe: B's old IOVA must be blocked, with a fault record.
/// The stale-buffer probe under deferred invalidation: the unshared buffer's
/// mapping is kept by the table or its unlink waits in the flush queue (its
/// IOVA with it); once the table has evicted and flushed, B's old IOVA must
/// be blocked exactly as under the strict policy.
fn deferred_probe(
    function: &VirtioFunction,
    scratch: &mut [u8],
    ctx: &mut Context<'_>,
    smmu: &Driver,
    iovas: &IovaAllocator<'_>,
    sid: u32,
    tables: &Tables,
) -> Result<(), Error> {
    let shares = tables.select(Policy::Deferred);
    let pci = blk_io::pci::pci_transport::<Hal>(function)?;
    let transport =
        RefCell::new(AccessPlatform::new(pci).map_err(|(e, _)| BlkError::BypassesIommu(e))?);
    let mut dev: Dev<'_> = BlkDevice::new(&transport)?;
    stale_probe(&mut dev, scratch, ctx, smmu, iovas, sid, &mut |a, ctx| {
        Ok(probe::settle_deferred(ctx, shares, a)?)
    })?;
    drop(dev);
    tables.select(Policy::Strict);
    println!(
        "{NAME}: deferred probe: after the queue flush B's old IOVA is blocked, as under strict"
    );
    Ok(())
}

fn stale_probe(
    dev: &mut Dev<'_>,
    scratch: &mut [u8],
    ctx: &mut Context<'_>,
    smmu: &Driver,
    iovas: &IovaAllocator<'_>,
    sid: u32,
    settle: &mut dyn FnMut(u64, &Context<'_>) -> Result<(), Error>,
) -> Result<(), Error> {
    let a = probe::record(dev, scratch, ctx)?;
    // Under a deferred policy B's translation may remain until this.
    settle(a, ctx)?;
    let len = PROBE_BYTES as u64;
    let range = IovaRange::new(Iova(a), len).map_err(CoreError::from)?;
    iovas.reserve(range).map_err(CoreError::from)?;
    println!(
        "{NAME}: stale probe: B's IOVA range [{a:#x}, {:#x}) reserved in the IOVA allocator: nothing is mapped there again",
        a + len
    );
    // SAFETY: `a` is an IOVA of the blk domain: B was unshared (unmapped,
    // TLBI + CMD_SYNC) and the range is now reserved, so nothing is mapped
    // there and the device can reach nothing through it.
    let seen = unsafe { probe::stale_read(dev, scratch, ctx, a) }?;
    if !seen.blocked() {
        return Err(Error::Check(
            "stale probe: the read through B's old IOVA completed or changed B",
            a,
        ));
    }
    let (ev, r) = drain(smmu)?;
    let inside = |e: &Event| e.addr.is_some_and(|x| (a..a + len).contains(&x));
    let first = ev
        .first()
        .ok_or(Error::Check("stale probe: no fault recorded", a))?;
    if let Some(bad) = ev
        .iter()
        .find(|e| e.kind != FaultKind::Translation || e.sid != sid || !inside(e))
    {
        println!(
            "{NAME}: stale probe: unexpected event: {}",
            crate::show(bad)
        );
        return Err(Error::Check(
            "stale probe: an event that is not a translation fault of B's range",
            bad.addr.unwrap_or(0),
        ));
    }
    if r.lost_events() {
        return Err(Error::Check(
            "stale probe: events lost",
            u64::from(r.events),
        ));
    }
    println!(
        "{NAME}: stale probe: SMMU fault record: {} (StreamID {sid:#x}), {} event(s), all translation faults inside [{a:#x}, {:#x})",
        crate::show(first),
        r.events,
        a + len
    );
    for (i, e) in ev.iter().enumerate() {
        println!("{NAME}: stale probe: event {i}: {}", crate::show(e));
    }
    println!(
        "{NAME}: stale probe: blocked: {:?}, canary intact; the unshared buffer is unreachable at its old IOVA",
        seen.outcome
    );
    demo!(
        "stale-fault",
        "F_TRANSLATION for StreamID {sid:#x} at IOVA {:#x} (inside B's old range [{a:#x}, {:#x})), {} event(s)",
        first.addr.unwrap_or(0),
        a + len,
        r.events
    );
    Ok(())
}

/// The SMMU side of the same-boot benchmark: which STE the blk StreamID
/// gets, and which `Hal` drives the disk, per policy.
struct Bench<'f> {
    smmu: &'static Driver,
    sid: u32,
    function: &'f VirtioFunction,
    /// The domain `iova-virtio-hal` maps in.
    domain: &'static Domain,
    /// All of the platform's memory at IOVA = physical address.
    premapped: &'static Domain,
    tables: &'static Tables,
}

impl Bench<'_> {
    /// The disk through a fresh transport and `H`; reset and dropped after.
    fn disk<H: VirtioHal>(
        &self,
        work: &mut Workload<'_>,
        costs: &mut dyn FnMut() -> Costs,
    ) -> Result<(), Error> {
        Ok(blk_io::bench::with_pci_disk::<H>(
            self.function,
            work,
            costs,
        )?)
    }

    fn syncs(&self) -> u64 {
        self.smmu.counters().commands.sync
    }
}

impl Setup for Bench<'_> {
    type Error = Error;

    fn backend(&self) -> &'static str {
        "smmuv3"
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
        let (smmu, sid) = (self.smmu, self.sid);
        smmu.detach_s1(sid, self.domain)?;
        let result = match policy {
            Policy::Baseline => {
                smmu.set_bypass(sid)?;
                self.disk::<DirectHal>(work, &mut || Costs {
                    flushes: self.syncs(),
                    ..Costs::default()
                })
            }
            Policy::Premapped => {
                smmu.attach_s1(sid, self.premapped)?;
                let r = self.disk::<DirectHal>(work, &mut || Costs {
                    flushes: self.syncs(),
                    ..Costs::default()
                });
                smmu.detach_s1(sid, self.premapped)?;
                r
            }
            _ => {
                smmu.attach_s1(sid, self.domain)?;
                let shares = self.tables.select(policy);
                let r = self.disk::<Hal>(work, &mut || {
                    let s = shares.counters();
                    Costs {
                        maps: s.maps,
                        flushes: self.syncs(),
                        bounce_bytes: s.bounce_bytes + s.pool_bytes,
                    }
                });
                self.tables.select(Policy::Strict);
                // What the deferred table's queue holds goes before the
                // domain is detached.
                shares.flush_deferred()?;
                if let Some(e) = shares.take_error() {
                    return Err(Error::Share(e));
                }
                smmu.detach_s1(sid, self.domain)?;
                r
            }
        };
        // Back to where the scenario left it: attached to its domain.
        smmu.attach_s1(sid, self.domain)?;
        result
    }
}

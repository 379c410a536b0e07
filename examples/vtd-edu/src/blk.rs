//! The `blk` and `blk-bench` scenarios: a `virtio-blk-pci` disk
//! (`iommu_platform=on,disable-legacy=on`) driven by virtio-drivers'
//! `VirtIOBlk`, every DMA of it translated by VT-d through
//! `iova-virtio-hal`'s [`IommuHal`] over a domain of `iommu-intel-vtd`.
//!
//! Bring-up, in an order that never lets the disk reach memory untranslated:
//! DMAR -> the unit covering the disk's BDF -> translation on with no
//! context entry for anybody (default deny) -> the disk's BARs and
//! Bus-Master -> a second-level domain, attached to the disk's BDF only ->
//! a `'static` [`DmaShares`] table over a [`DmaMapper`] of that domain (DMA
//! memory and bounce pages from a reusing [`FramePool`]) -> the driver.
//!
//! - `blk`: `blk_io::check` (the host verifies the image afterwards), then
//!   no fault record may exist: every DMA went to an IOVA we mapped. Then the
//!   stale probe: buffer B's old device address A is reserved in the IOVA
//!   allocator and given to the device again; the read must not complete,
//!   B's canary must survive, and the unit must hold a fault record from
//!   the disk's source-id at an address inside [A, A + 8 KiB).
//! - `blk-bench`: the check, then `blk_io::bench` (sequential 4 KiB and
//!   64 KiB reads), strict mode: every unshare is unmapped and flushed.
//!
//! `maps` are the table's allocations + shares; `flushes` are IOTLB
//! invalidation descriptors queued (each unmap's flush is one descriptor
//! plus one wait; syncs after a map queue nothing, since the unit caches
//! no not-present entries without CAP.CM).

use core::cell::RefCell;
use core::fmt;
use core::ptr::NonNull;

use blk_io::DirectHal;
use blk_io::bench::{Costs, Policy, PolicyTables, Setup, Workload};
use blk_io::probe::{self, PROBE_BYTES};
use blk_io::{AccessPlatform, BlkDevice, BlkError, Context, Counters, SCRATCH_BYTES, TrapHal};
use iommu_intel_vtd::acpi::{self, AcpiError};
use iommu_intel_vtd::regs::MmioRegion;
use iommu_intel_vtd::reserved::{map_reserved_regions, reserved_regions_for};
use iommu_intel_vtd::{Bdf, Dmar, FaultRecord, Features, UnitConfig, VtdDomain, VtdError, VtdUnit};
use iova_core::flush_queue::DeferredSlot;
use iova_core::iova_alloc::{CpuCache, ExtentSlot, IovaAllocatorConfig};
use iova_core::pt::PtFormat;
use iova_core::{
    DmaMapper, Error as CoreError, IommuDomain, IotlbGather, Iova, IovaAllocator, IovaRange,
};
use iova_virtio_hal::{DmaShares, HalContext, IommuHal, ShareError};
use platform::frame_pool::FramePool;
use platform::frames::{FRAME_SIZE, FrameAllocator, FramesError};
use platform::leak::leak;
use platform::leak::leak_slice;
use platform::pci::{self, PciError};
use platform::virtio_pci::VirtioFunction;
use platform::{BootInfo, demo, println};
use spin::Once;
use virtio_drivers::Hal as VirtioHal;
use virtio_drivers::PhysAddr;
use virtio_drivers::transport::pci::PciTransport;

use crate::{CLFLUSH, NAME, bridge_buses, rsdp, vtd_bdf};

/// Frames for the unit's structures, the domain's page tables, the
/// virtqueue and bounce pages (reused: see [`FramePool`]).
const POOL_FRAMES: usize = 1024;
/// IOVAs handed to the disk start here, far from any RAM address, inside
/// 39 bits.
const APERTURE: u64 = 0x20_0000_0000;
const APERTURE_LEN: u64 = 1 << 32;
/// Extents the IOVA allocator may track (free + live ranges).
const IOVA_SLOTS: usize = 128;
/// Live allocations + shares the DMA table holds: the virtqueue's
/// allocations, the four buffers of each of 16 requests in flight (indirect
/// list, header, data, status), and the ones the stale probe leaves behind
/// (its request is never completed), with room to spare.
const TABLE_SLOTS: usize = 80;
/// IOVA ranges the flush queue can hold.
const QUEUE_SLOTS: usize = 256;
/// Heap for virtio-drivers' indirect descriptor lists (64 KiB).
const HEAP_FRAMES: usize = 16;

/// Which scenario the command line (`-append`) asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// The check, the zero-fault requirement and the stale probe.
    Blk,
    /// The check, then the benchmark.
    Bench,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Self::Blk => "blk",
            Self::Bench => "blk-bench",
        }
    }
}

/// `blk` or `blk-bench` as a word of the command line, if there.
pub fn scenario(boot: &BootInfo) -> Option<Scenario> {
    platform::cmdline::command_line(boot)
        .split_whitespace()
        .find_map(|w| match w {
            "blk" => Some(Scenario::Blk),
            "blk-bench" => Some(Scenario::Bench),
            _ => None,
        })
}

/// Why a `blk` scenario failed.
#[derive(Debug)]
pub enum Error {
    /// The disk or its driver.
    Blk(BlkError),
    /// The DMA table (setting it up, or a failure it recorded).
    Share(ShareError),
    /// The unit.
    Vtd(VtdError),
    /// The domain, the mapper or the IOVA allocator.
    Core(CoreError),
    /// Finding the DMAR.
    Acpi(AcpiError),
    /// PCI enumeration.
    Pci(PciError),
    /// The platform's frame pool.
    Frames(FramesError),
    /// No PVH start info, so no RSDP.
    NoStartInfo,
    /// No virtio-blk function.
    NoDisk,
    /// No DMAR unit covers the disk.
    NoUnit(Bdf),
    /// A requirement of the scenario failed.
    Check(&'static str, u64),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Blk(e) => write!(f, "{e}"),
            Self::Share(e) => write!(f, "DMA table: {e}"),
            Self::Vtd(e) => write!(f, "{e}"),
            Self::Core(e) => write!(f, "iova-core: {e}"),
            Self::Acpi(e) => write!(f, "{e}"),
            Self::Pci(e) => write!(f, "{e}"),
            Self::Frames(e) => write!(f, "{e}"),
            Self::NoStartInfo => f.write_str("no PVH start info, so no RSDP"),
            Self::NoDisk => f.write_str(
                "no virtio-blk-pci (1af4:1042) function: run QEMU with -device virtio-blk-pci,...,disable-legacy=on",
            ),
            Self::NoUnit(b) => write!(f, "no DMAR unit covers {b}"),
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
from!(BlkError => Blk, ShareError => Share, VtdError => Vtd, CoreError => Core,
      AcpiError => Acpi, PciError => Pci, FramesError => Frames);

type Unit = VtdUnit<MmioRegion, &'static FramePool>;
type Domain = VtdDomain<'static, MmioRegion, &'static FramePool, &'static FramePool>;

// What the `'static` table borrows that is not built at run time; the rest
// is leaked into frames of the platform pool by `run`.
static CPU: fn() -> usize = || 0;
static CPU_MEMORY: iova_virtio_hal::IdentityMapped = iova_virtio_hal::IdentityMapped;
type Shares = DmaShares<'static, Domain, TABLE_SLOTS>;
/// The tables the `Hal` may use, one per policy (strict for the check); set
/// once by `run`.
static TABLES: Once<PolicyTables<Shares>> = Once::new();

/// Where the disk's `Hal` finds its table.
struct Ctx;

impl HalContext<TABLE_SLOTS> for Ctx {
    type Domain = Domain;

    fn shares() -> &'static DmaShares<'static, Domain, TABLE_SLOTS> {
        // `run` fills TABLES before it makes the transport or the driver,
        // the only callers of the `Hal`.
        TABLES
            .get()
            .expect("vtd-edu blk: DMA table used before it was set up")
            .current()
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        // BARs are identity mapped (uncached) by the boot stub.
        NonNull::new(paddr as usize as *mut u8).unwrap_or(NonNull::dangling())
    }
}

/// The disk's `Hal`: the IOMMU one, under the probe's trap.
type Hal = TrapHal<IommuHal<Ctx, TABLE_SLOTS>>;
type Dev<'t> = BlkDevice<'t, Hal, AccessPlatform<PciTransport>>;

/// The counters `blk-io` prints (see the module docs).
fn counters(unit: &Unit, shares: &DmaShares<'static, Domain, TABLE_SLOTS>) -> Counters {
    let s = shares.counters();
    Counters {
        maps: s.allocs + s.shares,
        flushes: unit.counters().snapshot().iotlb(),
    }
}

/// The fault records since the last drain, each printed; `(records,
/// overflow)`.
fn drain(unit: &Unit, mut each: impl FnMut(&FaultRecord)) -> Result<(usize, bool), Error> {
    let s = unit.drain_faults(|r| each(&r))?;
    Ok((s.records, s.overflow))
}

/// Runs `scenario`.
pub fn run(boot: &BootInfo, scenario: Scenario) -> Result<(), Error> {
    let label = scenario.name();
    println!("{NAME}: scenario `{label}`: virtio-blk-pci behind Intel VT-d");

    // The unit, found the way an OS finds it, before the disk may DMA.
    let rsdp = rsdp(boot).ok_or(Error::NoStartInfo)?;
    let dmar = Dmar::parse(acpi::find_table(&crate::IdentityMapped, rsdp, *b"DMAR")?)?;
    let host = pci::discover(boot)?;
    let disk_pci = host
        .functions()
        .find(|f| {
            (f.vendor, f.device)
                == (
                    platform::virtio_pci::VIRTIO_VENDOR,
                    blk_io::pci::VIRTIO_BLK_DEVICE_ID,
                )
        })
        .ok_or(Error::NoDisk)?
        .bdf;
    let disk = vtd_bdf(disk_pci);
    let drhd = dmar
        .unit_for(0, disk, |b| bridge_buses(&host, b))
        .ok_or(Error::NoUnit(disk))?;
    if !platform::arch::cpu_can_reach(drhd.register_base, drhd.register_size()) {
        return Err(Error::Check(
            "unit registers not mapped",
            drhd.register_base,
        ));
    }
    println!(
        "{NAME}: DMAR via RSDP {rsdp:#x}: {disk} is covered by the unit at {:#x}",
        drhd.register_base
    );

    let mut frames = FrameAllocator::take().ok_or(Error::Check("frame pool taken", 0))?;
    platform::heap::init(&mut frames, HEAP_FRAMES)?;
    let block = frames.alloc(POOL_FRAMES)?;
    let pool: &'static FramePool = leak(&mut frames, FramePool::new(block))?;
    let mut scratch = frames.alloc(SCRATCH_BYTES / FRAME_SIZE)?;
    let scratch = scratch.as_mut_slice();

    // SAFETY: the DRHD's register block, identity mapped and uncached by the
    // boot stub (checked reachable above), programmed by nobody else.
    let regs = unsafe {
        MmioRegion::new(
            drhd.register_base as usize as *mut u8,
            drhd.register_size() as usize,
        )
    };
    let config = UnitConfig {
        register_size: drhd.register_size() as usize,
        walk_cache: Some(&CLFLUSH),
        address_width: Some(dmar.address_bits()),
        // Second-level tables in either mode; scalable mode where the unit
        // has it (x-scalable-mode=on), through the RID_PASID entry.
        scalable: Features::read(&regs)
            .map_err(VtdError::Register)?
            .ecap
            .scalable_mode(),
        ..UnitConfig::default()
    };
    let unit = VtdUnit::new(regs, pool, config)?;
    let unit: &'static Unit = leak(&mut frames, unit)?;
    println!("{NAME}: {}", unit.features());
    unit.enable_translation()?;
    println!(
        "{NAME}: translation enabled with no context entry: {disk} is blocked until it is attached"
    );

    // Now the disk may be given memory decoding and Bus-Master.
    let function = blk_io::pci::open_blk_function(boot, NAME)?;
    if vtd_bdf(function.bdf) != disk {
        return Err(Error::Check(
            "virtio-blk moved between enumerations",
            u64::from(function.bdf.rid()),
        ));
    }

    // Never dropped: the disk stays attached for the program's life.
    let domain: &'static Domain = leak(&mut frames, unit.second_level_domain(pool, 4)?)?;
    unit.attach(disk, domain)?;
    let format = *domain.table().format();
    let did = domain.did();
    let mode = if unit.scalable() {
        "scalable mode (RID_PASID entry)"
    } else {
        "legacy mode"
    };
    println!(
        "{NAME}: {disk} attached to domain {did}: {mode}, second-level {}-level tables ({}-bit IOVAs), IOVAs at {APERTURE:#x}..{:#x}",
        format.levels(),
        format.ia_bits(),
        APERTURE + APERTURE_LEN
    );
    demo!(
        "iommu",
        "Intel VT-d at {:#x} (from ACPI DMAR), {mode}, second-level {}-level tables; {disk} in domain {did}, every other requester blocked",
        drhd.register_base,
        format.levels()
    );

    let slots = leak(&mut frames, [const { ExtentSlot::new() }; IOVA_SLOTS])?;
    let cpus = leak(&mut frames, [const { CpuCache::new() }; 1])?;
    let aperture = IovaRange::new(Iova(APERTURE), APERTURE_LEN).map_err(CoreError::from)?;
    let iovas = IovaAllocator::new(IovaAllocatorConfig::new(aperture, PAGE), slots, cpus)
        .map_err(CoreError::from)?;
    let iovas: &'static IovaAllocator<'static> = leak(&mut frames, iovas)?;

    // Reserved memory regions naming the disk (QEMU's DMAR has none): kept
    // out of the IOVA space and identity mapped before its DMA starts.
    for (base, len) in reserved_regions_for(&dmar, 0, disk, |b| bridge_buses(&host, b)) {
        let range = IovaRange::new(Iova(base), len).map_err(CoreError::from)?;
        iovas.reserve(range).map_err(CoreError::from)?;
    }
    let mut gather = IotlbGather::new();
    let rmrr = map_reserved_regions(
        &dmar,
        0,
        disk,
        |b| bridge_buses(&host, b),
        domain,
        &mut gather,
    );
    domain.flush(&mut gather)?;
    let rmrr = rmrr?;
    println!(
        "{NAME}: reserved memory regions for {disk}: {} identity mapped, {} malformed skipped",
        rmrr.mapped, rmrr.malformed
    );

    let mapper = DmaMapper::new(domain, iovas, &CPU)?;
    let shares = DmaShares::new(mapper, pool, &CPU_MEMORY)?;
    let shares: &'static DmaShares<'static, Domain, TABLE_SLOTS> = leak(&mut frames, shares)?;
    let pooled = DmaShares::with_pool(mapper, pool, &CPU_MEMORY, blk_io::bench::POOL)?;
    let queue_slots = leak_slice(&mut frames, QUEUE_SLOTS, DeferredSlot::new)?;
    let queue = leak(&mut frames, blk_io::bench::flush_queue(queue_slots))?;
    let deferred = DmaShares::with_pool(
        mapper.with_flush_queue(queue),
        pool,
        &CPU_MEMORY,
        blk_io::bench::DEFERRED_POOL,
    )?;
    let tables = PolicyTables::new(
        shares,
        leak(&mut frames, pooled)?,
        leak(&mut frames, deferred)?,
    );
    let tables = TABLES.call_once(|| tables);
    println!(
        "{NAME}: DMA table ready: granule {} bytes, poison IOVA {:#x} (reserved, never mapped)",
        shares.granule(),
        shares.poison()
    );

    let pci = blk_io::pci::pci_transport::<Hal>(&function)?;
    let transport =
        RefCell::new(AccessPlatform::new(pci).map_err(|(e, _)| BlkError::BypassesIommu(e))?);
    let mut dev: Dev<'_> = BlkDevice::new(&transport)?;
    let mut count = || counters(unit, shares);
    let mut ctx = Context {
        name: NAME,
        iommu: "Intel VT-d",
        counters: &mut count,
    };
    blk_io::announce(&ctx, &function, &dev);

    let before = unit.counters().snapshot();
    let table0 = shares.counters();
    let report = blk_io::check(&mut dev, scratch, &mut ctx)?;
    let (records, overflow) = drain(unit, |r| {
        println!("{NAME}: blk: fault during the check: {r}");
    })?;
    if records != 0 || overflow {
        return Err(Error::Check(
            "fault records during the check",
            records as u64,
        ));
    }
    let vtd = unit.counters().snapshot().since(&before);
    let table = shares.counters();
    if let Some(e) = shares.take_error() {
        return Err(Error::Share(e));
    }
    if table.failures != 0 {
        return Err(Error::Check("DMA table calls failed", table.failures));
    }
    println!(
        "{NAME}: blk: 0 fault records after the check: every DMA of {disk} went to an IOVA we mapped"
    );
    println!(
        "{NAME}: blk: check: {} requests, {} allocations + {} shares ({} with bounced parts, {} bytes bounced), {} unshares; VT-d: {} IOTLB invalidation descriptors ({} page-selective, {} domain, {} global), {} waits, {} context invalidations; no DMA table failure",
        report.requests,
        table.allocs - table0.allocs,
        table.shares - table0.shares,
        table.bounced - table0.bounced,
        table.bounce_bytes - table0.bounce_bytes,
        table.unshares - table0.unshares,
        vtd.iotlb(),
        vtd.iotlb_page,
        vtd.iotlb_domain,
        vtd.iotlb_global,
        vtd.waits,
        vtd.context
    );
    demo!(
        "fault",
        "none during the check: every DMA went to an IOVA this program mapped"
    );
    demo!(
        "flushes",
        "{} IOTLB invalidations + {} waits for {} unshares (strict: each unshare is flushed before it returns); {} shares bounced a partial page",
        vtd.iotlb(),
        vtd.waits,
        table.unshares - table0.unshares,
        table.bounced - table0.bounced
    );

    if scenario == Scenario::Blk {
        stale_probe(
            unit,
            iovas,
            disk,
            &mut dev,
            scratch,
            &mut ctx,
            &mut |_, _| Ok(()),
        )?;
    }
    drop(dev);
    drop(transport);
    if scenario == Scenario::Blk {
        // Deferred invalidation: B's mapping is kept by the table or its
        // unlink waits in the flush queue; once the table has evicted and
        // flushed, B's old IOVA must be blocked as under strict.
        let shares = tables.select(Policy::Deferred);
        let pci = blk_io::pci::pci_transport::<Hal>(&function)?;
        let transport =
            RefCell::new(AccessPlatform::new(pci).map_err(|(e, _)| BlkError::BypassesIommu(e))?);
        let mut dev: Dev<'_> = BlkDevice::new(&transport)?;
        stale_probe(
            unit,
            iovas,
            disk,
            &mut dev,
            scratch,
            &mut ctx,
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
        let premapped: &'static Domain = leak(&mut frames, unit.second_level_domain(pool, 4)?)?;
        let ram = blk_io::premap_ram(premapped, boot)?;
        println!(
            "{NAME}: blk-bench: pre-mapped domain {}: {} MiB of RAM at IOVA = physical address",
            premapped.did(),
            ram >> 20
        );
        DirectHal::use_pool(pool);
        let mut bench = Bench {
            unit,
            disk,
            function: &function,
            domain,
            premapped,
            tables,
        };
        blk_io::bench::matrix(&mut bench, bufs.as_mut_slice())?;
        println!("{NAME}: blk-bench: matrix done");
    }

    let (records, overflow) = drain(unit, |r| println!("{NAME}: blk: unexpected fault: {r}"))?;
    if records != 0 || overflow {
        return Err(Error::Check("unexpected fault records", records as u64));
    }
    if let Some(e) = shares.take_error() {
        return Err(Error::Share(e));
    }
    let t = shares.counters();
    if t.failures != 0 {
        return Err(Error::Check("DMA table calls failed", t.failures));
    }
    let c = unit.counters().snapshot();
    let fs = pool.stats();
    let (allocs, frees, bad) = (fs.allocs, fs.frees, fs.bad_frees);
    println!(
        "{NAME}: blk: totals: {} allocations, {} shares, {} unshares, {} deallocations, {} live; VT-d: {} IOTLB descriptors, {} waits, {} faults read; frame pool: {allocs} allocations, {frees} frees, {bad} bad frees, {} frames in use, peak {} of {POOL_FRAMES}",
        t.allocs,
        t.shares,
        t.unshares,
        t.deallocs,
        shares.live(),
        c.iotlb(),
        c.waits,
        c.faults,
        fs.in_use,
        fs.peak
    );
    if bad != 0 {
        return Err(Error::Check("frames freed that were not allocated", bad));
    }
    // Totals since boot, for xtask to hold against QEMU's trace.
    println!(
        "{NAME}: trace-count: wait_descriptors={}",
        c.wait_descriptors
    );
    println!("{NAME}: trace-count: iotlb_page={}", c.iotlb_page);
    println!("{NAME}: trace-count: iotlb_domain={}", c.iotlb_domain);
    println!("{NAME}: scenario `{label}` passed");
    demo!("result", "OK");
    Ok(())
}

const PAGE: u64 = FRAME_SIZE as u64;

/// The VT-d side of the same-boot benchmark: which domain (or
/// pass-through) the disk is attached to, and which `Hal` drives it, per
/// policy.
struct Bench<'f> {
    unit: &'static Unit,
    disk: Bdf,
    function: &'f VirtioFunction,
    /// The domain `iova-virtio-hal` maps in.
    domain: &'static Domain,
    /// All of RAM at IOVA = physical address.
    premapped: &'static Domain,
    tables: &'static PolicyTables<Shares>,
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

    fn waits(&self) -> u64 {
        self.unit.counters().snapshot().waits
    }
}

impl Setup for Bench<'_> {
    type Error = Error;

    fn backend(&self) -> &'static str {
        "vtd"
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
        let (unit, disk) = (self.unit, self.disk);
        let direct = |b: &Self, work: &mut Workload<'_>| {
            b.disk::<DirectHal>(work, &mut || Costs {
                flushes: b.waits(),
                ..Costs::default()
            })
        };
        let result = match policy {
            Policy::Baseline => {
                unit.pass_through(disk)?;
                direct(self, work)
            }
            Policy::Premapped => {
                unit.attach(disk, self.premapped)?;
                direct(self, work)
            }
            _ => {
                unit.attach(disk, self.domain)?;
                let shares = self.tables.select(policy);
                let r = self.disk::<IommuHal<Ctx, TABLE_SLOTS>>(work, &mut || {
                    let s = shares.counters();
                    Costs {
                        maps: s.maps,
                        flushes: self.waits(),
                        bounce_bytes: s.bounce_bytes + s.pool_bytes,
                    }
                });
                self.tables.select(Policy::Strict);
                // What the deferred table's queue holds goes first.
                shares.flush_deferred()?;
                if let Some(e) = shares.take_error() {
                    return Err(Error::Share(e));
                }
                r
            }
        };
        // Back to where the scenario left it: the disk in its domain (moved
        // out of pass-through or the pre-mapped domain, invalidated first).
        unit.attach(disk, self.domain)?;
        result
    }
}

/// The stale-buffer probe (see the module docs).
fn stale_probe(
    unit: &Unit,
    iovas: &IovaAllocator<'static>,
    disk: Bdf,
    dev: &mut Dev<'_>,
    scratch: &mut [u8],
    ctx: &mut Context<'_>,
    settle: &mut dyn FnMut(u64, &Context<'_>) -> Result<(), Error>,
) -> Result<(), Error> {
    let a = probe::record(dev, scratch, ctx)?;
    // Under a deferred policy B's translation may remain until this.
    settle(a, ctx)?;
    let len = PROBE_BYTES as u64;
    // B is whole pages, so it was mapped in place: A starts a page and its
    // IOVA range was exactly [A, A + 8 KiB). Nothing may be mapped there
    // again while the stale address is in use.
    let hole = IovaRange::new(Iova(a), len).map_err(CoreError::from)?;
    iovas.reserve(hole).map_err(CoreError::from)?;
    println!(
        "{NAME}: blk: IOVA range {a:#x}..{:#x} reserved (never mapped again)",
        a + len
    );
    // SAFETY: `a` was B's IOVA, unmapped and flushed by the unshare, and
    // reserved just now: nothing is mapped at [a, a + 8 KiB), so the device
    // can reach nothing through it (if VT-d let the DMA through anyway, it
    // would reach only B, through a stale translation).
    let seen = unsafe { probe::stale_read(dev, scratch, ctx, a) }?;
    let mut hit: Option<FaultRecord> = None;
    let mut others = 0u64;
    let (records, _) = drain(unit, |r| {
        let inside = (a..a + len).contains(&r.address);
        if hit.is_none() && r.source == disk && inside {
            hit = Some(*r);
        } else {
            others += 1;
            println!("{NAME}: blk: other fault record: {r}");
        }
    })?;
    if !seen.blocked() {
        return Err(Error::Check(
            "stale probe: the device reached the unshared buffer through its old IOVA",
            a,
        ));
    }
    let Some(fault) = hit else {
        return Err(Error::Check(
            "stale probe: no fault record from the disk inside [A, A + 8 KiB)",
            records as u64,
        ));
    };
    if fault.access != iommu_intel_vtd::fault::AccessKind::Write {
        return Err(Error::Check(
            "stale probe: the fault is not the device's write into B",
            fault.address,
        ));
    }
    println!(
        "{NAME}: blk: stale probe blocked by VT-d: B's canary intact, request not completed; fault record: {fault} (inside {a:#x}..{:#x}, source-id {:#06x}){}",
        a + len,
        disk.source_id(),
        if others > 0 {
            ", other records printed above"
        } else {
            ""
        }
    );
    demo!("fault", "{fault}: the unshared buffer's old IOVA");
    Ok(())
}

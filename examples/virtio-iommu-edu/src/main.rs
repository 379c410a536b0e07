//! `virtio-iommu-edu`: the iommu-virtio driver on QEMU's `virtio-iommu-pci`,
//! with the `edu` device doing real DMA through the mappings.
//!
//! Every run takes the endpoint ID of each device from the firmware (the
//! ACPI VIOT on q35, the device tree's `virtio,pci-iommu` node and the PCI
//! host's `iommu-map` on virt: [`discover`]; a device they do not list is
//! refused), brings the device up (PCI enumeration, BAR4, our modern PCI
//! transport, reset/negotiation/config, `bypass = 0`), PROBEs edu's endpoint
//! (its reserved regions become allocator holes) and attaches edu to domain
//! 1. Then the scenario named by `-append` runs (all of them without one):
//!
//! - `map`: a source and a sink page at IOVAs far from their physical
//!   addresses; DMA RAM -> edu -> RAM, every byte checked.
//! - `batch`: reserve 64 pages of IOVA, link 64 scattered physical pages,
//!   one `sync`: the counters must show 64 MAPs and exactly one
//!   notification; then DMA through every page (each transfer straddles two
//!   pages, so consecutive IOVAs must reach the right pieces).
//! - `unlink`: a page linked writable, DMA reaches it; unlink + sync (one
//!   UNMAP, one notification); edu's write to the old IOVA is blocked, the
//!   page unchanged, and a MAPPING fault for edu at that IOVA is drained.
//! - `readonly`: edu writes a read-only mapping: blocked, memory unchanged,
//!   MAPPING fault with the write flag.
//! - `deny`: a second edu that nobody attached writes RAM: blocked (bypass
//!   is 0), fault for its endpoint.
//! - `msi`: PROBE's reserved regions are never handed out as IOVAs.
//! - `identity`: the second edu attached to a bypass domain (ATTACH with the
//!   BYPASS flag) DMAs to physical addresses; detached again, it is denied.
//! - `adjacent`: two IOVA states on adjacent pages, linked to physically
//!   contiguous memory: each gets a MAP of its own, a DMA straddling both
//!   reaches both, and each destroy removes exactly its own page (edu's
//!   write there is blocked, the neighbour still reachable); then two
//!   adjacent contiguous links of one state, one unlinked alone.
//!
//! After the scenarios, every run drops domain 1 with a page still mapped
//! and edu attached: one UNMAP and one DETACH go out in one notification,
//! and edu's write to that IOVA is blocked (edu is attached nowhere).
//!
//! `-append blk` and `-append blk-bench` run instead the virtio-blk scenarios
//! of [`blk`] (no edu needed): a virtio-blk-pci disk behind the
//! virtio-iommu through `iova-virtio-hal`'s `Hal`.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use iommu_virtio::ProbeInfo;
use iommu_virtio::transport::pci::{
    IOMMU_DEVICE_ID, PciBar, PciConfig, PciTransportError, VirtioPciTransport,
};
use iommu_virtio::virtio_drivers::{BufferDirection, Hal, PhysAddr as BusAddr};
use iommu_virtio::{
    DriverConfig, FaultReason, VirtioDomain, VirtioIommu, VirtioIommuError, WaitBudget,
};
use iova_core::iova_alloc::{CpuCache, ExtentSlot, IovaAllocatorConfig};
use iova_core::{
    DmaMapper, Error as CoreError, IommuDomain, IotlbGather, Iova, IovaAllocator, IovaRange, Link,
    PhysAddr, Prot,
};
use platform::edu::{self, Edu, EduError};
use platform::frames::{FRAME_SIZE, FrameAllocator, Frames, FramesError};
use platform::pci::Bdf;
use platform::virtio_pci::{VirtioFunction, VirtioSetupError, open_virtio_and_edu};
use platform::{BootInfo, demo, println};

mod blk;
mod discover;

platform::entry!(main);

const NAME: &str = "virtio-iommu-edu";
/// A CPU frame: the smallest page a virtio-iommu may map. The scenarios'
/// page is the mapping granule (the device's, at least this).
const FRAME: u64 = FRAME_SIZE as u64;
/// Pages linked with one sync.
const PAGES: u64 = 64;
/// Frames for the driver's queues and request buffers.
const HAL_FRAMES: usize = 32;
/// Request queue size: 64 requests (two descriptors each) per notification,
/// so the 64-page batch fits in one.
const QUEUE: usize = 128;
/// Mappings the domain can record.
const MAPPINGS: usize = 128;
/// IOVAs are handed out from here: far above RAM on both machines, inside
/// q35's 39-bit and virt's 48-bit input range.
const IOVA_BASE: u64 = 0x40_0000_0000;

type Iommu = VirtioIommu<PoolHal, VirtioPciTransport, QUEUE>;

#[derive(Debug)]
enum Error {
    Setup(VirtioSetupError),
    Transport(PciTransportError),
    Iommu(VirtioIommuError),
    Core(CoreError),
    Edu(EduError),
    Frames(FramesError),
    NoFrameAllocator,
    Check(&'static str, u64),
    Blk(blk::Error),
    Discover(discover::DiscoverError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Setup(e) => write!(f, "{e}"),
            Self::Transport(e) => write!(f, "virtio-pci: {e}"),
            Self::Iommu(e) => write!(f, "virtio-iommu: {e}"),
            Self::Core(e) => write!(f, "iova-core: {e}"),
            Self::Edu(e) => write!(f, "{e}"),
            Self::Frames(e) => write!(f, "{e}"),
            Self::NoFrameAllocator => f.write_str("frame allocator already taken"),
            Self::Check(what, at) => write!(f, "{what} ({at:#x})"),
            Self::Blk(e) => write!(f, "{e}"),
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
      CoreError => Core, EduError => Edu, FramesError => Frames,
      discover::DiscoverError => Discover);

/// The driver's DMA memory: a bump allocator over one block of the platform
/// pool, set once in `main`. Single CPU, interrupts masked, so plain loads
/// and stores suffice (no atomic read-modify-write with the MMU off).
static HAL_NEXT: AtomicUsize = AtomicUsize::new(0);
static HAL_END: AtomicUsize = AtomicUsize::new(0);

struct PoolHal;

// SAFETY: `dma_alloc` hands out zeroed, page-aligned, never-reused pieces of
// a block `main` took from the frame pool for this purpose only; memory is
// identity mapped, so a pointer is its bus address and sharing is a no-op.
unsafe impl Hal for PoolHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (BusAddr, NonNull<u8>) {
        let next = HAL_NEXT.load(Ordering::Relaxed);
        let end = next.saturating_add(pages.saturating_mul(FRAME_SIZE));
        if next == 0 || end > HAL_END.load(Ordering::Relaxed) {
            return (0, NonNull::dangling());
        }
        HAL_NEXT.store(end, Ordering::Relaxed);
        // SAFETY: inside the block, handed out for the first time.
        unsafe { core::ptr::write_bytes(next as *mut u8, 0, end - next) };
        match NonNull::new(next as *mut u8) {
            Some(p) => (next as BusAddr, p),
            None => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(_paddr: BusAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: BusAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).unwrap_or(NonNull::dangling())
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> BusAddr {
        buffer.as_ptr().cast::<u8>() as BusAddr
    }

    unsafe fn unshare(_paddr: BusAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// The virtio-iommu's config space, for the transport.
struct Config(VirtioFunction);

impl PciConfig for Config {
    fn read32(&self, offset: u16) -> u32 {
        self.0.read32(offset)
    }
}

fn now_us() -> u64 {
    platform::time::now_us().unwrap_or(0)
}

fn pattern(page: u64, i: usize) -> u8 {
    (i.wrapping_mul(131) ^ (page as usize).wrapping_mul(37) ^ 0xa5) as u8
}

/// Takes every fault still in the log; returns how many.
fn drain_faults(iommu: &Iommu) -> usize {
    let mut n = 0;
    while iommu.pop_fault().is_some() {
        n += 1;
    }
    n
}

fn check(ok: bool, what: &'static str, value: u64) -> Result<(), Error> {
    if ok {
        Ok(())
    } else {
        Err(Error::Check(what, value))
    }
}

unsafe extern "C" {
    static __stack_bottom: u8;
}

const PAINT: u8 = 0x5a;

/// Fills the unused part of the boot stack with a pattern, to measure the
/// deepest use later (debug builds keep large structures on the stack).
#[inline(never)]
fn paint_stack() {
    let bottom = &raw const __stack_bottom as usize;
    let here = &bottom as *const usize as usize;
    // SAFETY: [bottom, here - 4 KiB) is the unused part of our own boot
    // stack (it grows down and `here` is a local of this frame).
    unsafe { core::ptr::write_bytes(bottom as *mut u8, PAINT, here - 4096 - bottom) };
}

/// Bytes of the boot stack never written since `paint_stack`.
fn stack_headroom() -> usize {
    let bottom = &raw const __stack_bottom as usize;
    let mut n = 0;
    // SAFETY: reads of our own (painted) stack below the live frames.
    while unsafe { core::ptr::read_volatile((bottom + n) as *const u8) } == PAINT {
        n += 1;
    }
    n
}

/// Everything the scenarios share.
struct Ctx<'a> {
    iommu: &'a Iommu,
    mapper: DmaMapper<'a, Domain<'a>>,
    iovas: &'a IovaAllocator<'a>,
    edu: Edu,
    second_edu: Option<(Edu, Bdf)>,
    /// The second edu's endpoint ID (from the firmware).
    second_endpoint: Option<u32>,
    frames: FrameAllocator,
    endpoint: u32,
    info: &'a ProbeInfo,
    /// What the scenarios map in: the device's granule, at least a frame.
    /// Everything mapped is whole pages of frames allocated for it, so a
    /// mapping never reaches memory the scenario did not mean to give.
    page: u64,
}

impl Ctx<'_> {
    /// `n` zeroed pages (see [`Ctx::page`]), aligned to a page.
    fn pages(&mut self, n: usize) -> Result<Frames, Error> {
        pages(&mut self.frames, self.page, n)
    }
}

/// `n` zeroed pages of `page` bytes from `frames`, aligned to `page`.
fn pages(frames: &mut FrameAllocator, page: u64, n: usize) -> Result<Frames, Error> {
    let per = (page / FRAME) as usize;
    Ok(frames.alloc_aligned(n * per, page as usize)?)
}

type Domain<'a> = VirtioDomain<'a, PoolHal, VirtioPciTransport, QUEUE, MAPPINGS>;

/// A scenario: runs on the shared context, prints what it proved.
type Scenario = fn(&mut Ctx<'_>) -> Result<(), Error>;

const SCENARIOS: [(&str, Scenario); 8] = [
    ("map", scenario_map),
    ("batch", scenario_batch),
    ("unlink", scenario_unlink),
    ("readonly", scenario_readonly),
    ("deny", scenario_deny),
    ("msi", scenario_msi),
    ("identity", scenario_identity),
    ("adjacent", scenario_adjacent),
];

fn main(boot: &BootInfo) -> Result<(), Error> {
    paint_stack();
    let result = run(boot);
    println!(
        "{NAME}: stack headroom {} KiB of the boot stack never used",
        stack_headroom() >> 10
    );
    result
}

fn run(boot: &BootInfo) -> Result<(), Error> {
    platform::banner(NAME, boot);
    let wanted = platform::cmdline::command_line(boot).trim();
    if let Some(scenario) = blk::Scenario::parse(wanted) {
        return blk::run(boot, scenario).map_err(Error::Blk);
    }
    let chosen: heapless::Vec<_, 8> = SCENARIOS
        .iter()
        .filter(|(name, _)| wanted.is_empty() || wanted == "all" || *name == wanted)
        .collect();
    if chosen.is_empty() {
        return Err(Error::Check(
            "unknown scenario (-append map|batch|unlink|readonly|deny|msi|identity|adjacent|all|blk|blk-bench)",
            0,
        ));
    }
    demo!(
        "iommu",
        "virtio-iommu-pci, driven by iommu-virtio (our modern PCI transport, virtio-drivers' split virtqueue)"
    );
    let found = open_virtio_and_edu(boot, NAME, IOMMU_DEVICE_ID)?;
    // Endpoint IDs as the firmware gives them, never assumed.
    let firmware = discover::Firmware::find(boot, found.virtio.bdf)?;
    let endpoint = firmware.endpoint("edu", found.edu_bdf)?;
    let second_endpoint = match &found.second_edu {
        Some((_, bdf)) => Some(firmware.endpoint("edu #2", *bdf)?),
        None => None,
    };

    let mut frames = FrameAllocator::take().ok_or(Error::NoFrameAllocator)?;
    let hal = frames.alloc(HAL_FRAMES)?;
    HAL_END.store(hal.phys() as usize + hal.len(), Ordering::Relaxed);
    HAL_NEXT.store(hal.phys() as usize, Ordering::Relaxed);

    let mut bars = [None; 6];
    for (slot, bar) in bars.iter_mut().zip(found.virtio.bars) {
        *slot = bar.map(|(cpu, size)| PciBar {
            cpu_addr: cpu as usize,
            size,
        });
    }
    // SAFETY: the BARs were assigned and enabled by `open_virtio_and_edu`,
    // are identity mapped, and only this transport touches them.
    let transport = unsafe { VirtioPciTransport::new(&Config(found.virtio), &bars)? };
    let config = DriverConfig {
        wait: WaitBudget::polls(200_000_000).with_clock(now_us, 2_000_000),
        bypass_unattached: false,
    };
    let iommu = Iommu::new(transport, config)?;
    let g = *iommu.geometry();
    println!(
        "{NAME}: features {:#x}, page_size_mask {:#x} (granule {:#x}), input {:#x}..={:#x}, domains {}..={}, probe_size {}",
        iommu.features().bits(),
        g.page_size_mask,
        g.granule,
        g.input_start,
        g.input_end,
        g.domain_start,
        g.domain_end,
        g.probe_size
    );
    check(
        !g.unattached_bypass,
        "bypass is still on for unattached endpoints",
        1,
    )?;
    println!("{NAME}: bypass = 0: endpoints nobody attached cannot DMA");

    let info = iommu.probe(endpoint)?;
    for r in &info.reserved {
        println!(
            "{NAME}: PROBE endpoint {endpoint:#x}: reserved {:#x}..={:#x} ({:?})",
            r.start, r.end, r.kind
        );
    }

    let domain: Domain<'_> = VirtioDomain::new(&iommu, 1)?;
    domain.attach(endpoint)?;
    println!("{NAME}: edu (endpoint {endpoint:#x}) attached to domain 1");

    // The mapping granule: the device's smallest page, at least a frame.
    let page = g.granule.max(FRAME);
    let window = IovaRange::new(Iova(IOVA_BASE), 1 << 32).map_err(CoreError::from)?;
    check(
        window.start.0 % page == 0 && window.end.0 % page == 0,
        "IOVA window not granule aligned",
        page,
    )?;
    // The window must lie inside what the device translates.
    g.aperture()
        .filter(|a| a.contains_range(&window))
        .ok_or(Error::Check(
            "IOVA window outside the input range",
            IOVA_BASE,
        ))?;
    let mut slots = [const { ExtentSlot::new() }; 32];
    let mut cpus = [const { CpuCache::new() }; 1];
    let iovas = IovaAllocator::new(
        IovaAllocatorConfig::new(window, page),
        &mut slots,
        &mut cpus,
    )
    .map_err(CoreError::from)?;
    info.reserve_in(&iovas).map_err(CoreError::from)?;
    println!(
        "{NAME}: mapping granule {page:#x}: the scenarios map whole {page:#x}-byte pages of frames allocated {page:#x}-aligned for them; IOVAs {:#x}..{:#x} in {page:#x} units, PROBE holes rounded out to them",
        window.start.0, window.end.0
    );
    let cpu = || 0;
    let mapper = DmaMapper::new(&domain, &iovas, &cpu)?;
    let mut ctx = Ctx {
        iommu: &iommu,
        mapper,
        iovas: &iovas,
        edu: found.edu,
        second_edu: found.second_edu,
        second_endpoint,
        frames,
        endpoint,
        info: &info,
        page,
    };
    for (name, scenario) in chosen {
        drain_faults(&iommu);
        scenario(&mut ctx)?;
        println!("{NAME}: scenario `{name}` passed");
    }
    check(
        domain.mappings() == 0,
        "mappings left after the scenarios",
        domain.mappings() as u64,
    )?;
    // The mapper (in `ctx`) borrows the domain; nothing uses it any more.
    let Ctx {
        mut edu,
        mut frames,
        ..
    } = ctx;
    // A page just past the allocator's window, so no IOVA state owns it.
    let spare = IovaRange::new(window.end, page).map_err(CoreError::from)?;
    g.aperture()
        .filter(|a| a.contains_range(&spare))
        .ok_or(Error::Check(
            "IOVA past the window outside the input range",
            spare.start.0,
        ))?;
    teardown(
        &iommu,
        domain,
        &mut edu,
        &mut frames,
        endpoint,
        spare.start.0,
        page,
    )?;
    let total = iommu.counters();
    println!(
        "{NAME}: totals: attach {} map {} unmap {} probe {}, notifications {}, replies {}, events {}",
        total.attach,
        total.map,
        total.unmap,
        total.probe,
        total.notifications,
        total.replies,
        total.events
    );
    demo!("result", "OK");
    Ok(())
}

fn fill(frames: &mut Frames, page: u64) {
    for (i, b) in frames.as_mut_slice().iter_mut().enumerate() {
        *b = pattern(page, i);
    }
}

/// One page through IOVAs that differ from the physical addresses.
fn scenario_map(ctx: &mut Ctx<'_>) -> Result<(), Error> {
    let page = ctx.page;
    let mut src = ctx.pages(1)?;
    let mut dst = ctx.pages(1)?;
    fill(&mut src, 999);
    dst.as_mut_slice().fill(0xee);
    let before = ctx.iommu.counters();
    let src_map = ctx.mapper.map(PhysAddr(src.phys()), page, Prot::READ)?;
    let dst_map = ctx.mapper.map(PhysAddr(dst.phys()), page, Prot::WRITE)?;
    check(
        src_map.addr().0 != src.phys(),
        "IOVA equals the physical address",
        src.phys(),
    )?;
    check(
        dst_map.addr().0 != dst.phys(),
        "IOVA equals the physical address",
        dst.phys(),
    )?;
    // SAFETY: edu reads our source page and writes our sink page, through
    // IOVAs mapped to exactly those; the CPU does not touch them meanwhile.
    unsafe {
        ctx.edu
            .dma_to_device(src_map.addr().0, 0, edu::BUFFER_SIZE)?;
        ctx.edu
            .dma_from_device(0, dst_map.addr().0, edu::BUFFER_SIZE)?;
    }
    // edu's buffer is 4 KiB: the rest of a larger page keeps its fill.
    let n = edu::BUFFER_SIZE as usize;
    let bad = dst
        .as_mut_slice()
        .iter()
        .enumerate()
        .position(|(i, &b)| b != if i < n { pattern(999, i) } else { 0xee });
    check(
        bad.is_none(),
        "byte came back wrong",
        bad.unwrap_or(0) as u64,
    )?;
    let c = ctx.iommu.counters().since(&before);
    println!(
        "{NAME}: map: 4096 bytes RAM {:#x} -> IOVA {:#x} -> edu -> IOVA {:#x} -> RAM {:#x}, every byte checked ({} MAP of {page:#x} bytes each, {} notifications)",
        src.phys(),
        src_map.addr().0,
        dst_map.addr().0,
        dst.phys(),
        c.map,
        c.notifications
    );
    demo!(
        "mapped",
        "RAM -> edu -> RAM through IOVAs {:#x} / {:#x} (physical {:#x} / {:#x})",
        src_map.addr().0,
        dst_map.addr().0,
        src.phys(),
        dst.phys()
    );
    ctx.mapper.unmap(src_map).map_err(|r| r.error)?;
    ctx.mapper.unmap(dst_map).map_err(|r| r.error)?;
    Ok(())
}

/// 64 scattered pages linked, one sync, DMA through all of them.
fn scenario_batch(ctx: &mut Ctx<'_>) -> Result<(), Error> {
    let page = ctx.page;
    let mut dst = ctx.pages(1)?;
    let sink = ctx.mapper.map(PhysAddr(dst.phys()), page, Prot::WRITE)?;
    // Piece p is page `stride * (63 - p)` of the block: reversed, and with a
    // page between pieces where the pool has room for it (up to 16 KiB
    // pages; 64 pieces of 64 KiB with gaps would take the whole pool).
    let stride = if 2 * PAGES * page <= 2 << 20 { 2 } else { 1 };
    let mut block = ctx.pages((stride * PAGES) as usize)?;
    let base = block.phys();
    let piece = |p: u64| base + stride * (PAGES - 1 - p) * page;
    for p in 0..PAGES {
        let off = (piece(p) - base) as usize;
        for (i, b) in block.as_mut_slice()[off..off + page as usize]
            .iter_mut()
            .enumerate()
        {
            *b = pattern(p, i);
        }
    }
    let mut state =
        ctx.mapper
            .try_alloc_with(PAGES * page, page, heapless::Vec::<Link, 64>::new())?;
    let before = ctx.iommu.counters();
    for p in 0..PAGES {
        state.link(p * page, PhysAddr(piece(p)), page, Prot::READ)?;
    }
    let linked = ctx.iommu.counters().since(&before);
    check(
        linked.notifications == 0,
        "link notified the device",
        linked.notifications,
    )?;
    check(
        linked.map == 0,
        "link sent a MAP before the sync",
        linked.map,
    )?;
    state.sync()?;
    let c = ctx.iommu.counters().since(&before);
    check(c.map == PAGES, "MAP requests for 64 scattered pages", c.map)?;
    check(
        c.notifications == 1,
        "notifications for one sync",
        c.notifications,
    )?;
    println!(
        "{NAME}: two-step: {PAGES} scattered pages linked at IOVA {:#x}, one sync: {} MAP requests, {} notification, {} replies (pages of {page:#x} bytes)",
        state.iova().0,
        c.map,
        c.notifications,
        c.replies
    );
    // Each transfer reads the last 2 KiB of page 2k and the first 2 KiB of
    // page 2k+1: consecutive IOVAs, physically apart and reversed.
    let half = edu::BUFFER_SIZE as usize / 2;
    let n = edu::BUFFER_SIZE as usize;
    for k in 0..PAGES / 2 {
        let from = state.dma_addr((2 * k + 1) * page - half as u64)?;
        dst.as_mut_slice().fill(0xee);
        // SAFETY: edu reads two linked pages of `block` and writes the sink.
        unsafe {
            ctx.edu.dma_to_device(from.0, 0, edu::BUFFER_SIZE)?;
            ctx.edu
                .dma_from_device(0, sink.addr().0, edu::BUFFER_SIZE)?;
        }
        let out = dst.as_mut_slice();
        let bad = (0..n).find(|&i| {
            let want = if i < half {
                pattern(2 * k, page as usize - half + i)
            } else {
                pattern(2 * k + 1, i - half)
            };
            out[i] != want
        });
        check(
            bad.is_none(),
            "byte came back wrong through the batch",
            from.0 + bad.unwrap_or(0) as u64,
        )?;
    }
    println!("{NAME}: DMA through all {PAGES} linked pages: every byte checked");
    demo!(
        "batch",
        "{PAGES} scattered pages linked, one sync = {} MAP requests, {} notification; DMA through all of them checked",
        c.map,
        c.notifications
    );
    let before = ctx.iommu.counters();
    state.destroy().map_err(|r| r.error)?;
    let c = ctx.iommu.counters().since(&before);
    println!(
        "{NAME}: destroy: {} UNMAP, {} notification for {PAGES} mappings",
        c.unmap, c.notifications
    );
    ctx.mapper.unmap(sink).map_err(|r| r.error)?;
    Ok(())
}

/// Unlink + sync, then DMA to the old IOVA: blocked, bytes unchanged, a
/// MAPPING fault for edu at that address.
fn scenario_unlink(ctx: &mut Ctx<'_>) -> Result<(), Error> {
    let page = ctx.page;
    let mut src = ctx.pages(1)?;
    fill(&mut src, 999);
    let src_map = ctx.mapper.map(PhysAddr(src.phys()), page, Prot::READ)?;
    let mut victim = ctx.pages(1)?;
    victim.as_mut_slice().fill(0x11);
    let mut vstate = ctx
        .mapper
        .try_alloc_with(page, page, heapless::Vec::<Link, 1>::new())?;
    vstate.link(0, PhysAddr(victim.phys()), page, Prot::WRITE)?;
    vstate.sync()?;
    let viova = vstate.dma_addr(0)?.0;
    // SAFETY: edu copies our source page to the victim page, both through
    // IOVAs mapped to exactly those.
    unsafe {
        ctx.edu
            .dma_to_device(src_map.addr().0, 0, edu::BUFFER_SIZE)?;
        ctx.edu.dma_from_device(0, viova, edu::BUFFER_SIZE)?;
    }
    // edu's 4 KiB buffer lands at the start of the page.
    let n = edu::BUFFER_SIZE as usize;
    let reached = victim
        .as_mut_slice()
        .iter()
        .enumerate()
        .all(|(i, &b)| b == if i < n { pattern(999, i) } else { 0x11 });
    check(
        reached,
        "DMA through the victim's IOVA did not arrive",
        viova,
    )?;
    victim.as_mut_slice().fill(0x11);
    let before = ctx.iommu.counters();
    vstate.unlink(0, page)?;
    vstate.sync()?;
    let c = ctx.iommu.counters().since(&before);
    check(
        c.unmap == 1 && c.notifications == 1,
        "unlink + sync: UNMAP/notification count",
        c.unmap,
    )?;
    // SAFETY: the IOVA no longer translates: the write must be blocked.
    unsafe { ctx.edu.dma_from_device(0, viova, 8)? };
    let untouched = victim.as_mut_slice().iter().all(|&b| b == 0x11);
    check(untouched, "DMA to an unlinked IOVA reached memory", viova)?;
    let f = ctx.iommu.pop_fault().ok_or(Error::Check(
        "no fault after DMA to an unlinked IOVA",
        viova,
    ))?;
    check(
        f.reason == FaultReason::Mapping,
        "fault reason for an unlinked IOVA",
        f.flags.into(),
    )?;
    check(
        f.endpoint == ctx.endpoint,
        "fault endpoint",
        f.endpoint.into(),
    )?;
    check(
        f.address == Some(viova),
        "fault address",
        f.address.unwrap_or(0),
    )?;
    let more = drain_faults(ctx.iommu);
    println!(
        "{NAME}: unlink: after unlink + sync (1 UNMAP, 1 notification) edu's write to IOVA {viova:#x} was blocked, page unchanged; fault {:?} endpoint {:#x} address {:#x} flags {:#x} (+{more} more, one per 4 bytes)",
        f.reason, f.endpoint, viova, f.flags
    );
    demo!(
        "fault",
        "after unlink + sync, edu's write to the old IOVA is blocked (memory unchanged) and a MAPPING fault names edu and the IOVA"
    );
    vstate.free().map_err(|r| r.error)?;
    ctx.mapper.unmap(src_map).map_err(|r| r.error)?;
    Ok(())
}

/// A read-only mapping written by the device: fault, memory unchanged.
fn scenario_readonly(ctx: &mut Ctx<'_>) -> Result<(), Error> {
    let page = ctx.page;
    let mut target = ctx.pages(1)?;
    fill(&mut target, 7);
    let ro = ctx.mapper.map(PhysAddr(target.phys()), page, Prot::READ)?;
    // SAFETY: the page is mapped read-only: the write must be blocked.
    unsafe { ctx.edu.dma_from_device(0, ro.addr().0, 8)? };
    let kept = target
        .as_mut_slice()
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern(7, i));
    check(
        kept,
        "device wrote through a read-only mapping",
        ro.addr().0,
    )?;
    let f = ctx.iommu.pop_fault().ok_or(Error::Check(
        "no fault for a write to a read-only mapping",
        ro.addr().0,
    ))?;
    check(
        f.reason == FaultReason::Mapping
            && f.write
            && f.address == Some(ro.addr().0)
            && f.endpoint == ctx.endpoint,
        "read-only fault record",
        f.flags.into(),
    )?;
    let more = drain_faults(ctx.iommu);
    println!(
        "{NAME}: read-only: edu's write to read-only IOVA {:#x} blocked, page unchanged; fault {:?} write={} flags {:#x} (+{more} more)",
        ro.addr().0,
        f.reason,
        f.write,
        f.flags
    );
    ctx.mapper.unmap(ro).map_err(|r| r.error)?;
    Ok(())
}

/// Bypass off: an endpoint nobody attached cannot DMA.
fn scenario_deny(ctx: &mut Ctx<'_>) -> Result<(), Error> {
    let Some((edu2, bdf2)) = ctx.second_edu.as_mut() else {
        return Err(Error::Check("no second edu (run with two -device edu)", 0));
    };
    let ep2 = ctx
        .second_endpoint
        .ok_or(Error::Check("no endpoint ID for edu #2", 0))?;
    let mut target = ctx.frames.alloc(1)?;
    target.as_mut_slice().fill(0x22);
    // SAFETY: nobody attached edu #2 and bypass is 0: the write to our page's
    // physical address must be blocked.
    unsafe { edu2.dma_from_device(0, target.phys(), 8)? };
    check(
        target.as_mut_slice().iter().all(|&b| b == 0x22),
        "unattached endpoint wrote memory",
        target.phys(),
    )?;
    let f = ctx.iommu.pop_fault().ok_or(Error::Check(
        "no fault for an unattached endpoint",
        target.phys(),
    ))?;
    check(
        matches!(f.reason, FaultReason::Unknown | FaultReason::Domain) && f.endpoint == ep2,
        "unattached-endpoint fault record",
        f.endpoint.into(),
    )?;
    let more = drain_faults(ctx.iommu);
    println!(
        "{NAME}: default deny: edu #2 ({bdf2}, endpoint {ep2:#x}, never attached) could not write {:#x}; fault {:?} endpoint {:#x} (+{more} more)",
        target.phys(),
        f.reason,
        f.endpoint
    );
    demo!(
        "deny",
        "a second edu nobody attached cannot DMA (bypass = 0): blocked, fault {:?} for endpoint {ep2:#x}",
        f.reason
    );
    Ok(())
}

/// PROBE's reserved regions are holes: never handed out as IOVAs.
fn scenario_msi(ctx: &mut Ctx<'_>) -> Result<(), Error> {
    let page = ctx.page;
    const MIB: u64 = 1 << 20;
    check(
        !ctx.info.reserved.is_empty(),
        "PROBE reported no reserved region",
        0,
    )?;
    for r in ctx.info.reserved.iter() {
        let start = r.start & !(16 * MIB - 1);
        let around = IovaRange::new(Iova(start), 16 * MIB).map_err(CoreError::from)?;
        let mut slots = [const { ExtentSlot::new() }; 64];
        let iovas = IovaAllocator::new(IovaAllocatorConfig::new(around, page), &mut slots, &mut [])
            .map_err(CoreError::from)?;
        ctx.info.reserve_in(&iovas).map_err(CoreError::from)?;
        let touched = ((r.end | (MIB - 1)) + 1 - (r.start & !(MIB - 1))) / MIB;
        let mut got = 0;
        while let Ok(a) = iovas.alloc(0, MIB, MIB) {
            check(
                !a.range().overlaps(&r.range()),
                "allocator handed out a reserved IOVA",
                a.range().start.0,
            )?;
            got += 1;
        }
        check(
            got == 16 - touched,
            "allocations around the reserved region",
            got,
        )?;
        println!(
            "{NAME}: PROBE hole: {:?} region {:#x}..={:#x} never handed out ({got} x 1 MiB allocated around it, none overlapping)",
            r.kind, r.start, r.end
        );
    }
    Ok(())
}

/// A bypass (identity) domain: DMA to physical addresses works; after
/// DETACH the endpoint is denied again.
fn scenario_identity(ctx: &mut Ctx<'_>) -> Result<(), Error> {
    let Some((edu2, _)) = ctx.second_edu.as_mut() else {
        return Err(Error::Check("no second edu (run with two -device edu)", 0));
    };
    let ep2 = ctx
        .second_endpoint
        .ok_or(Error::Check("no endpoint ID for edu #2", 0))?;
    let mut src = ctx.frames.alloc(1)?;
    fill(&mut src, 55);
    let mut target = ctx.frames.alloc(1)?;
    target.as_mut_slice().fill(0x33);
    ctx.iommu.attach_bypass(ep2, 2)?;
    // SAFETY: edu #2 is in a bypass domain: it reads our source page and
    // writes our target page by physical address.
    unsafe {
        edu2.dma_to_device(src.phys(), 0, edu::BUFFER_SIZE)?;
        edu2.dma_from_device(0, target.phys(), edu::BUFFER_SIZE)?;
    }
    let copied = target
        .as_mut_slice()
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern(55, i));
    check(
        copied,
        "DMA through the bypass domain did not arrive",
        target.phys(),
    )?;
    ctx.iommu.detach(ep2, 2)?;
    target.as_mut_slice().fill(0x33);
    // SAFETY: detached and bypass is 0: the write must be blocked.
    unsafe { edu2.dma_from_device(0, target.phys(), 8)? };
    check(
        target.as_mut_slice().iter().all(|&b| b == 0x33),
        "detached endpoint wrote memory",
        target.phys(),
    )?;
    let f = ctx
        .iommu
        .pop_fault()
        .ok_or(Error::Check("no fault after DETACH", target.phys()))?;
    check(
        f.endpoint == ep2,
        "fault endpoint after DETACH",
        f.endpoint.into(),
    )?;
    let more = drain_faults(ctx.iommu);
    println!(
        "{NAME}: identity: edu #2 (endpoint {ep2:#x}) in bypass domain 2 copied 4096 bytes by physical address, checked; after DETACH its write to {:#x} was blocked, fault {:?} (+{more} more)",
        target.phys(),
        f.reason
    );
    Ok(())
}

/// Drops `domain` with a page (of `page` bytes) still mapped at `iova` and
/// edu (`endpoint`) attached: the drop sends one UNMAP and one DETACH in one
/// notification, and afterwards edu's write to `iova` is blocked (attached
/// nowhere, bypass = 0) with a fault for its endpoint.
fn teardown(
    iommu: &Iommu,
    domain: Domain<'_>,
    edu: &mut Edu,
    frames: &mut FrameAllocator,
    endpoint: u32,
    iova: u64,
    page: u64,
) -> Result<(), Error> {
    let mut target = pages(frames, page, 1)?;
    fill(&mut target, 77);
    let mut gather = IotlbGather::new();
    domain.map(
        Iova(iova),
        PhysAddr(target.phys()),
        page,
        Prot::RW,
        &mut gather,
    )?;
    domain.flush(&mut gather)?;
    // SAFETY: `iova` maps to our page: edu reads it, then writes its first
    // 8 bytes back over a fill.
    unsafe { edu.dma_to_device(iova, 0, 8)? };
    target.as_mut_slice().fill(0x44);
    // SAFETY: as above.
    unsafe { edu.dma_from_device(0, iova, 8)? };
    let reached = target.as_mut_slice()[..8]
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern(77, i));
    check(reached, "DMA through domain 1 did not arrive", iova)?;
    target.as_mut_slice().fill(0x44);

    let before = iommu.counters();
    drop(domain);
    let c = iommu.counters().since(&before);
    check(
        c.unmap == 1 && c.detach == 1 && c.notifications == 1,
        "dropping domain 1: UNMAP + DETACH in one notification",
        c.requests(),
    )?;
    check(
        c.teardown_failures == 0,
        "dropping domain 1: teardown failed",
        c.teardown_failures,
    )?;
    check(
        iommu.attached_domain(endpoint).is_none(),
        "edu still recorded attached after its domain was dropped",
        endpoint.into(),
    )?;
    // SAFETY: the domain is gone and edu is attached nowhere (bypass = 0):
    // the write to our page's old IOVA must be blocked.
    unsafe { edu.dma_from_device(0, iova, 8)? };
    check(
        target.as_mut_slice().iter().all(|&b| b == 0x44),
        "edu wrote memory after its domain was dropped",
        iova,
    )?;
    let f = iommu
        .pop_fault()
        .ok_or(Error::Check("no fault after the domain was dropped", iova))?;
    check(
        matches!(f.reason, FaultReason::Unknown | FaultReason::Domain) && f.endpoint == endpoint,
        "fault record after the domain was dropped",
        f.endpoint.into(),
    )?;
    let more = drain_faults(iommu);
    println!(
        "{NAME}: teardown: dropping domain 1 with a page mapped at IOVA {iova:#x} sent {} UNMAP + {} DETACH in {} notification; edu (endpoint {endpoint:#x}) is attached nowhere and its write there was blocked, fault {:?} (+{more} more)",
        c.unmap, c.detach, c.notifications, f.reason
    );
    Ok(())
}

/// edu writes 8 bytes to `iova`; returns whether they reached `frames` (and
/// restores its contents), draining the faults a blocked write raises.
fn edu_write_reaches(
    ctx: &mut Ctx<'_>,
    iova: u64,
    frames: &mut Frames,
    at: usize,
) -> Result<bool, Error> {
    frames.as_mut_slice()[at..at + 8].fill(0x11);
    // SAFETY: `iova` is either mapped to `frames` at `at` or not mapped at
    // all; edu's write lands there or is blocked.
    unsafe { ctx.edu.dma_from_device(0, iova, 8)? };
    let reached = frames.as_mut_slice()[at..at + 8].iter().any(|&b| b != 0x11);
    frames.as_mut_slice()[at..at + 8].fill(0x11);
    drain_faults(ctx.iommu);
    Ok(reached)
}

/// Two states on adjacent IOVAs over physically contiguous pages tear down
/// on their own; so do two adjacent contiguous links of one state.
fn scenario_adjacent(ctx: &mut Ctx<'_>) -> Result<(), Error> {
    let page = ctx.page;
    let mut src = ctx.pages(1)?;
    fill(&mut src, 321);
    let src_map = ctx.mapper.map(PhysAddr(src.phys()), page, Prot::READ)?;
    // SAFETY: edu reads our source page through an IOVA mapped to it.
    unsafe {
        ctx.edu
            .dma_to_device(src_map.addr().0, 0, edu::BUFFER_SIZE)?;
    }
    let mut pair = ctx.pages(2)?;
    pair.as_mut_slice().fill(0x11);
    // CPU index 1 has no IOVA cache: fresh ranges from the shared allocator,
    // which packs them, so the two states are neighbours.
    let shared = || 1usize;
    let mapper = DmaMapper::new(ctx.mapper.domain(), ctx.iovas, &shared)?;
    let mut a = mapper.try_alloc_with(page, page, heapless::Vec::<Link, 2>::new())?;
    let mut b = mapper.try_alloc_with(page, page, heapless::Vec::<Link, 2>::new())?;
    let (ia, ib) = (a.iova().0, b.iova().0);
    check(ib == ia + page, "the two states are not adjacent", ib)?;
    let before = ctx.iommu.counters();
    a.link(0, PhysAddr(pair.phys()), page, Prot::RW)?;
    b.link(0, PhysAddr(pair.phys() + page), page, Prot::RW)?;
    a.sync()?;
    b.sync()?;
    let c = ctx.iommu.counters().since(&before);
    check(
        c.map == 2,
        "two adjacent contiguous links: MAP count",
        c.map,
    )?;
    // A write straddling both pages (2 KiB in each) reaches both through
    // one IOVA run.
    let half = (page - u64::from(edu::BUFFER_SIZE) / 2) as usize;
    // SAFETY: [ia + half, ia + half + 4 KiB) is mapped to the middle of `pair`.
    unsafe {
        ctx.edu
            .dma_from_device(0, ia + half as u64, edu::BUFFER_SIZE)?
    };
    let straddled = pair.as_mut_slice()[half..half + edu::BUFFER_SIZE as usize]
        .iter()
        .enumerate()
        .all(|(i, &byte)| byte == pattern(321, i));
    check(straddled, "a DMA across the two states did not arrive", ia)?;
    pair.as_mut_slice().fill(0x11);

    let before = ctx.iommu.counters();
    a.destroy().map_err(|r| r.error)?;
    let c = ctx.iommu.counters().since(&before);
    check(
        c.unmap == 1 && c.notifications == 1,
        "destroy A: UNMAP count",
        c.unmap,
    )?;
    check(
        !edu_write_reaches(ctx, ia, &mut pair, 0)?,
        "A's page reachable after destroy",
        ia,
    )?;
    check(
        edu_write_reaches(ctx, ib, &mut pair, page as usize)?,
        "B's page gone with A",
        ib,
    )?;
    b.destroy().map_err(|r| r.error)?;
    check(
        !edu_write_reaches(ctx, ib, &mut pair, page as usize)?,
        "B's page reachable after destroy",
        ib,
    )?;
    println!(
        "{NAME}: adjacent: states at IOVA {ia:#x} and {ib:#x} on contiguous pages {:#x}/{:#x}: one MAP each, a DMA across both arrived; destroy A removed only A's page (edu blocked there, B still reached), destroy B removed B's",
        pair.phys(),
        pair.phys() + page
    );

    // One state, two adjacent contiguous links: either unlinks alone.
    let mut s = mapper.try_alloc_with(2 * page, page, heapless::Vec::<Link, 2>::new())?;
    s.link(0, PhysAddr(pair.phys()), page, Prot::RW)?;
    s.link(page, PhysAddr(pair.phys() + page), page, Prot::RW)?;
    s.sync()?;
    let base = s.iova().0;
    s.unlink(0, page)?;
    s.sync()?;
    check(
        !edu_write_reaches(ctx, base, &mut pair, 0)?,
        "unlinked page reachable",
        base,
    )?;
    check(
        edu_write_reaches(ctx, base + page, &mut pair, page as usize)?,
        "the other link went too",
        base + page,
    )?;
    s.destroy().map_err(|r| r.error)?;
    check(
        !edu_write_reaches(ctx, base + page, &mut pair, page as usize)?,
        "page reachable after destroy",
        base + page,
    )?;
    println!(
        "{NAME}: adjacent: one state, two contiguous links at {base:#x}: unlinking the first left the second reachable; destroy removed it"
    );
    ctx.mapper.unmap(src_map).map_err(|r| r.error)?;
    Ok(())
}

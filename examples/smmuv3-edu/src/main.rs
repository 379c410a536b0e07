//! `smmuv3-edu`: the `iommu-arm-smmuv3` driver on QEMU's SMMUv3, with the
//! `edu` device doing real DMA through it.
//!
//! The SMMU's registers and the edu's StreamID come from the device tree
//! (`arm,smmu-v3` and the PCI host's `iommu-map`). The scenario is chosen
//! with `-append <name>` (read from `/chosen/bootargs`):
//!
//! - `map`: a buffer mapped at an IOVA that is not its physical address,
//!   DMA RAM -> edu -> RAM with every byte checked; then a DMA to an unmapped
//!   IOVA, reported as typed translation-fault events;
//! - `batch`: 64 scattered pages linked with one sync, DMA through all of
//!   them, the command counters for the link and the unlink batches;
//! - `stale`: unlink + sync, then a DMA to the old IOVA (whose translation
//!   QEMU had cached) cannot reach the page, and a 4 KiB fault storm (about
//!   1024 events) into a smaller event queue is reported as lost events;
//! - `storm`: a 4 KiB DMA to an unmapped IOVA (QEMU records one event per 4
//!   bytes: 1024) into a queue that holds them all: every one drained, typed,
//!   in order, none lost;
//! - `irq`: with `set_interrupts`, a fault pulses the SMMU's `eventq` SPI and
//!   a refused command its `gerror` SPI (seen pending in the GIC
//!   distributor, which is never enabled: the CPU is not interrupted);
//!   without, neither;
//! - `perm`: a read-only mapping written by the device: permission fault,
//!   memory unchanged;
//! - `second-fn`: a second edu that nobody attached tries to DMA: blocked
//!   and reported with its StreamID;
//! - `two-domains`: two edus in two domains (two ASIDs) use the same IOVA
//!   for different pages; each reaches only its own, also after one domain
//!   unmaps it;
//! - `block`: a 2 MiB-aligned mapping becomes a block entry, DMA through it;
//! - `s2`: stage-2 translation (VMID, VTTBR) as a hypervisor gives a device
//!   to a guest (`s2-16k`, `s2-64k`: with the larger granules); `nested`:
//!   stage 1 over stage 2;
//! - `gran16k`, `gran64k`: stage 1 with a 16 KiB / 64 KiB granule.
//! - `its-msi` (`-M virt,gic-version=3,its=on`): edu's MSI goes through the
//!   SMMU to the GICv3 ITS: a stage-1 domain's MSI window
//!   (`iova_core::msi::MsiWindow`, Linux's 0x800_0000 reserved in the
//!   allocator) maps the doorbell page containing `GITS_TRANSLATER`, edu is
//!   programmed with the IOVA it returns, and the MSI arrives as LPI 8192 at
//!   the CPU interface; window torn down, no LPI and a translation fault;
//!   `its-msi-s2` (with `virtualization=on`, at EL2): the same through a
//!   stage-2 domain's window (write-only at stage 2), as a hypervisor maps a
//!   guest's doorbell; the fault is a stage-2 one.
//! - `blk`, `blk-bench`: a virtio-blk-pci disk instead of edu, driven by
//!   virtio-drivers through `iova-virtio-hal`'s `IommuHal` (see [`blk`]).
//!
//! Like a hypervisor, the example stays at EL2 when QEMU enters it there
//! (`-M virt,virtualization=on`, as the stage-2 and nested rows do); on plain
//! `virt` it runs at EL1. It prints the level it runs at (`demo: el: EL2`).
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

mod blk;
mod dt;
mod pool;

use core::fmt;

use iommu_arm_smmuv3::event::Stage;
use iommu_arm_smmuv3::{
    Config, DrainReport, Event, FaultKind, Granule, LpaeS1, LpaeS2, MmioRegion, Smmu, SmmuError,
};
use iova_core::iova_alloc::{CpuCache, ExtentSlot, IovaAllocatorConfig};
use iova_core::{
    DmaMapper, Error as CoreError, IommuDomain, Iova, IovaAllocator, IovaRange, MsiError, PhysAddr,
    Prot,
};
use platform::edu::{self, Edu, EduError};
use platform::frames::{FRAME_SIZE, FrameAllocator, Frames, FramesError};
use platform::pci::{self, Bdf, CMD_BUS_MASTER, CMD_MEMORY, PciError};
use platform::{BootInfo, demo, println};

use crate::dt::DtError;
use crate::pool::Pool;

// Like a hypervisor, stay at EL2 when QEMU enters there
// (`virtualization=on`: the stage-2 and nested rows); plain `virt` runs at EL1.
platform::entry!(main, stay_at_el2);

const NAME: &str = "smmuv3-edu";
const PAGE: u64 = FRAME_SIZE as u64;
const M2: u64 = 0x20_0000;
/// Frames for the SMMU's queues, tables, CDs and page tables.
const POOL_FRAMES: usize = 96;
/// Where IOVAs are handed out: far from RAM (which starts at 1 GiB).
const APERTURE: u64 = 0x80_0000_0000;

#[derive(Debug)]
enum Error {
    Pci(PciError),
    Edu(EduError),
    Frames(FramesError),
    Core(CoreError),
    Msi(MsiError),
    Smmu(SmmuError),
    Dt(DtError),
    NoEdu(usize),
    NoFrameAllocator,
    NoDtb,
    UnknownScenario,
    Check(&'static str, u64),
    Blk(blk::Error),
    #[cfg(target_arch = "aarch64")]
    Its(platform::gic_its::ItsError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pci(e) => write!(f, "{e}"),
            Self::Edu(e) => write!(f, "{e}"),
            Self::Frames(e) => write!(f, "{e}"),
            Self::Core(e) => write!(f, "iova-core: {e}"),
            Self::Msi(e) => write!(f, "iova-core: {e}"),
            Self::Smmu(e) => write!(f, "smmuv3: {e}"),
            Self::Dt(e) => write!(f, "{e}"),
            Self::NoEdu(n) => write!(f, "this scenario needs {n} edu device(s)"),
            Self::NoFrameAllocator => f.write_str("frame allocator already taken"),
            Self::NoDtb => f.write_str("no device tree"),
            Self::UnknownScenario => f.write_str(
                "unknown scenario (-append map|batch|stale|perm|second-fn|block|s2|s2-16k|s2-64k|nested|gran16k|gran64k|two-domains|storm|irq|its-msi|its-msi-s2|blk|blk-bench)",
            ),
            Self::Check(what, at) => write!(f, "{what} (at {at:#x})"),
            Self::Blk(e) => write!(f, "{e}"),
            #[cfg(target_arch = "aarch64")]
            Self::Its(e) => write!(f, "{e}"),
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
#[cfg(target_arch = "aarch64")]
from!(platform::gic_its::ItsError => Its);
from!(PciError => Pci, EduError => Edu, FramesError => Frames, CoreError => Core, MsiError => Msi, SmmuError => Smmu, DtError => Dt);

type Driver<'p> = Smmu<MmioRegion, &'p Pool>;

/// An `edu` function with memory decoding and bus mastering on.
struct Device {
    bdf: Bdf,
    sid: u32,
    edu: Edu,
}

/// Finds up to two edu functions, assigns their BARs from one window and
/// enables them.
fn open_edus(boot: &BootInfo) -> Result<heapless::Vec<(Bdf, Edu), 2>, Error> {
    let mut host = pci::discover(boot)?;
    let mut found = heapless::Vec::<Bdf, 2>::new();
    for f in host.functions() {
        if (f.vendor, f.device) == (edu::VENDOR_ID, edu::DEVICE_ID) {
            let _ = found.push(f.bdf);
        }
    }
    let mut out = heapless::Vec::new();
    for bdf in found {
        // SAFETY: nothing else uses the edu BARs or the MMIO window.
        let bar0 = unsafe { host.assign_bar(bdf, 0)? };
        // SAFETY: edu DMAs only when we program it, with addresses the SMMU
        // translates (or blocks).
        unsafe { host.enable(bdf, CMD_MEMORY | CMD_BUS_MASTER)? };
        // SAFETY: BAR0 of an edu function, assigned and decoding; driven only by us.
        let mut e = unsafe { Edu::new(bar0.cpu_addr as usize) };
        e.check()?;
        println!("{NAME}: edu at {bdf}, BAR0 {:#x}", bar0.cpu_addr);
        let _ = out.push((bdf, e));
    }
    Ok(out)
}

/// The CPU's exception level, read now from `CurrentEL` (aarch64 only).
#[cfg(target_arch = "aarch64")]
fn exception_level() -> Option<u8> {
    Some(platform::arch::current_el())
}

#[cfg(not(target_arch = "aarch64"))]
fn exception_level() -> Option<u8> {
    None
}

fn pattern(seed: u64, i: usize) -> u8 {
    (i.wrapping_mul(131) ^ (seed as usize).wrapping_mul(71) ^ 0xa5) as u8
}

fn fill(f: &mut Frames, seed: u64) {
    for (i, b) in f.as_mut_slice().iter_mut().enumerate() {
        *b = pattern(seed, i);
    }
}

/// Drains the event queue, keeping the first 32 records.
fn drain<'p>(smmu: &Driver<'p>) -> Result<(heapless::Vec<Event, 32>, DrainReport), SmmuError> {
    let mut v = heapless::Vec::new();
    let r = smmu.drain_events(|e| {
        let _ = v.push(e);
    })?;
    Ok((v, r))
}

fn show(e: &Event) -> impl fmt::Display + '_ {
    struct S<'a>(&'a Event);
    impl fmt::Display for S<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let e = self.0;
            write!(f, "{:?} (type {:#04x}) sid {:#x}", e.kind, e.code, e.sid)?;
            if let Some(a) = e.addr {
                write!(f, " iova {a:#x}")?;
            }
            if let Some(r) = e.read {
                write!(f, " {}", if r { "read" } else { "write" })?;
            }
            if let Some(ipa) = e.ipa {
                write!(f, " ipa {ipa:#x}")?;
            }
            if let Some(class) = e.class {
                write!(f, " stage {:?} class {:?}", e.stage, class)?;
            }
            Ok(())
        }
    }
    S(e)
}

/// Checks that faults were reported for `sid`, of `kind`, at addresses in
/// `[lo, lo + len)`; returns how many were drained.
fn expect_faults<'p>(
    smmu: &Driver<'p>,
    sid: u32,
    kind: FaultKind,
    lo: u64,
    len: u64,
    read: Option<bool>,
) -> Result<(u32, DrainReport), Error> {
    let (ev, r) = drain(smmu)?;
    let first = ev.first().ok_or(Error::Check("no event reported", lo))?;
    println!("{NAME}: first event: {}", show(first));
    for e in &ev {
        if e.kind != kind || e.sid != sid {
            println!("{NAME}: unexpected event: {}", show(e));
            return Err(Error::Check(
                "wrong event kind or stream",
                u64::from(e.code),
            ));
        }
        if len != 0 && !e.addr.is_some_and(|a| (lo..lo + len).contains(&a)) {
            return Err(Error::Check(
                "event address outside the DMA",
                e.addr.unwrap_or(0),
            ));
        }
        if read.is_some() && e.read != read {
            return Err(Error::Check("event direction wrong", lo));
        }
    }
    Ok((r.events, r))
}

fn main(boot: &BootInfo) -> Result<(), Error> {
    platform::banner(NAME, boot);
    if let Some(el) = exception_level() {
        let role = match el {
            2 => "hypervisor: entered at EL2 and stayed there",
            1 => "kernel",
            _ => "firmware",
        };
        println!("{NAME}: CPU at EL{el} ({role})");
        demo!("el", "EL{el}");
    }
    let fdt = platform::firmware::device_tree(boot).ok_or(Error::NoDtb)?;
    let scenario = dt::bootargs(&fdt).unwrap_or("map").trim();
    println!("{NAME}: scenario `{scenario}`");
    let node = dt::smmu(&fdt)?;
    if let Some(s) = blk::Scenario::parse(scenario) {
        // virtio-blk instead of edu: its own bring-up (`blk`).
        return blk::run(boot, &fdt, &node, s).map_err(Error::Blk);
    }
    let edus = open_edus(boot)?;
    if edus.is_empty() {
        return Err(Error::NoEdu(1));
    }
    let mut devs = heapless::Vec::<Device, 2>::new();
    for (bdf, edu) in edus {
        let sid = dt::stream_id(&fdt, &node, bdf.rid())?;
        let _ = devs.push(Device { bdf, sid, edu });
    }
    println!(
        "{NAME}: SMMUv3 at {:#x} (+{:#x}), edu {} has StreamID {:#x}",
        node.base, node.size, devs[0].bdf, devs[0].sid
    );

    let mut frames = FrameAllocator::take().ok_or(Error::NoFrameAllocator)?;
    let pool = Pool::new(frames.alloc_aligned(POOL_FRAMES, 0x1_0000)?);
    // SAFETY: the device tree's SMMUv3 register frame, base and size as its
    // `reg` gives them, identity mapped (MMU off: device memory), driven by
    // nobody else.
    let regs = unsafe { MmioRegion::new(node.base as usize as *mut u8, node.size as usize) };
    // 256 events, enough for every scenario but `storm`, which shows a
    // queue big enough for a whole 4 KiB fault storm (2048 entries, 64 KiB).
    let evtq_log2 = if scenario == "storm" { 11 } else { 8 };
    let smmu = Smmu::new(regs, &pool, Config::default().with_evtq_log2(evtq_log2))?;
    let f = smmu.features();
    let l = smmu.layout();
    println!(
        "{NAME}: IDR: stage1 {} stage2 {} nesting {} RIL {} ASID{} VMID{} SID bits {} OAS {} coherent {}",
        f.stage1,
        f.stage2,
        f.nesting,
        f.ril,
        f.asid_bits,
        f.vmid_bits,
        f.sid_bits,
        f.oas_bits,
        f.coherent
    );
    println!(
        "{NAME}: brought up: {:?}, cmdq {} entries, evtq {} entries, GBPA abort {}",
        l.stream_table, l.cmdq_entries, l.evtq_entries, l.gbpa_abort
    );
    demo!(
        "iommu",
        "SMMUv3 at {:#x}: {:?} stream table, stage 1 {}, stage 2 {}, range TLBI {}",
        node.base,
        l.stream_table,
        f.stage1,
        f.stage2,
        f.ril
    );

    match scenario {
        "map" => map(&smmu, &pool, &mut frames, &mut devs[0]),
        "batch" => batch(&smmu, &pool, &mut frames, &mut devs[0]),
        "stale" => stale(&smmu, &pool, &mut frames, &mut devs[0]),
        "perm" => perm(&smmu, &pool, &mut frames, &mut devs[0]),
        "storm" => storm(&smmu, &pool, &mut devs[0]),
        "irq" => irq(&smmu, &fdt, &mut devs[0]),
        #[cfg(target_arch = "aarch64")]
        "its-msi" => its_msi(
            &smmu,
            &pool,
            boot,
            &fdt,
            &mut frames,
            &mut devs[0],
            Stage::One,
        ),
        #[cfg(target_arch = "aarch64")]
        "its-msi-s2" => its_msi(
            &smmu,
            &pool,
            boot,
            &fdt,
            &mut frames,
            &mut devs[0],
            Stage::Two,
        ),
        "second-fn" => second_fn(&smmu, &pool, &mut frames, &mut devs),
        "two-domains" => two_domains(&smmu, &pool, &mut frames, &mut devs),
        "block" => block(&smmu, &pool, boot, &mut frames, &mut devs[0]),
        "s2" => stage2(&smmu, &pool, &mut frames, &mut devs[0], Granule::K4),
        "s2-16k" => stage2(&smmu, &pool, &mut frames, &mut devs[0], Granule::K16),
        "s2-64k" => stage2(&smmu, &pool, &mut frames, &mut devs[0], Granule::K64),
        "nested" => nested(&smmu, &pool, &mut frames, &mut devs[0]),
        "gran16k" => granule(&smmu, &pool, &mut frames, &mut devs[0], Granule::K16),
        "gran64k" => granule(&smmu, &pool, &mut frames, &mut devs[0], Granule::K64),
        _ => Err(Error::UnknownScenario),
    }?;
    let c = smmu.counters();
    println!(
        "{NAME}: counters: {} commands ({} CMD_SYNC, {} TLBI_NH_VA of which {} range, {} TLBI_NH_ASID, {} TLBI_S2_IPA, {} CFGI_STE, {} CFGI_CD), {} errors, {} events, {} event losses, {} STE writes; {} KiB of pool used, {} frees",
        c.commands.total,
        c.commands.sync,
        c.commands.tlbi_nh_va,
        c.commands.tlbi_range,
        c.commands.tlbi_nh_asid,
        c.commands.tlbi_s2_ipa,
        c.commands.cfgi_ste,
        c.commands.cfgi_cd,
        c.commands.errors,
        c.events,
        c.event_losses,
        c.ste_writes,
        pool.used() >> 10,
        pool.freed()
    );
    if smmu.global_errors()? != 0 {
        return Err(Error::Check("global errors pending", 0));
    }
    println!("{NAME}: scenario `{scenario}` passed");
    demo!("result", "OK");
    Ok(())
}

/// An IOVA allocator over [`APERTURE`], with caller-provided storage.
macro_rules! iovas {
    ($iovas:ident) => {
        let mut slots = [const { ExtentSlot::new() }; 16];
        let mut cpus = [const { CpuCache::new() }; 1];
        let aperture = IovaRange::new(Iova(APERTURE), 1 << 32).map_err(CoreError::from)?;
        let $iovas = IovaAllocator::new(
            IovaAllocatorConfig::new(aperture, PAGE),
            &mut slots,
            &mut cpus,
        )
        .map_err(CoreError::from)?;
    };
}

fn map(
    smmu: &Driver<'_>,
    pool: &Pool,
    frames: &mut FrameAllocator,
    dev: &mut Device,
) -> Result<(), Error> {
    let d = smmu.s1_domain(pool, 48)?;
    smmu.attach_s1(dev.sid, &d)?;
    iovas!(iovas);
    let cpu = || 0;
    let mapper = DmaMapper::new(&d, &iovas, &cpu)?;
    let mut src = frames.alloc(1)?;
    let mut dst = frames.alloc(1)?;
    fill(&mut src, 1);
    dst.as_mut_slice().fill(0xee);
    let ms = mapper.map(PhysAddr(src.phys()), PAGE, Prot::READ)?;
    let md = mapper.map(PhysAddr(dst.phys()), PAGE, Prot::WRITE)?;
    if ms.addr().0 == src.phys() || md.addr().0 == dst.phys() {
        return Err(Error::Check(
            "IOVA equals the physical address",
            ms.addr().0,
        ));
    }
    println!(
        "{NAME}: source {:#x} at IOVA {:#x}, destination {:#x} at IOVA {:#x}",
        src.phys(),
        ms.addr().0,
        dst.phys(),
        md.addr().0
    );
    // SAFETY: the device reads `src` and writes `dst` through their IOVAs;
    // both are ours and the CPU does not touch them during the transfers.
    unsafe {
        dev.edu.dma_to_device(ms.addr().0, 0, edu::BUFFER_SIZE)?;
        dev.edu.dma_from_device(0, md.addr().0, edu::BUFFER_SIZE)?;
    }
    platform::arch::dma_barrier();
    if let Some(i) = dst
        .as_mut_slice()
        .iter()
        .enumerate()
        .position(|(i, &b)| b != pattern(1, i))
    {
        return Err(Error::Check("byte came back wrong", md.addr().0 + i as u64));
    }
    println!("{NAME}: 4096 bytes RAM -> edu -> RAM through the SMMU, every byte checked");
    demo!(
        "dma",
        "4096 bytes RAM -> edu -> RAM, source at IOVA {:#x} (PA {:#x}), destination at IOVA {:#x} (PA {:#x}), bytes checked",
        ms.addr().0,
        src.phys(),
        md.addr().0,
        dst.phys()
    );
    let hole = APERTURE + 0x8000_0000;
    // SAFETY: the IOVA is unmapped: the SMMU terminates the writes.
    unsafe { dev.edu.dma_from_device(0, hole, 64)? };
    let (n, _) = expect_faults(smmu, dev.sid, FaultKind::Translation, hole, 64, Some(false))?;
    println!(
        "{NAME}: DMA to unmapped IOVA {hole:#x}: {n} translation-fault events, all for StreamID {:#x} inside the 64 bytes",
        dev.sid
    );
    demo!(
        "fault",
        "64-byte DMA to unmapped IOVA {hole:#x}: {n} F_TRANSLATION events for StreamID {:#x}",
        dev.sid
    );
    mapper.unmap(ms).map_err(|r| r.error)?;
    mapper.unmap(md).map_err(|r| r.error)?;
    Ok(())
}

fn batch(
    smmu: &Driver<'_>,
    pool: &Pool,
    frames: &mut FrameAllocator,
    dev: &mut Device,
) -> Result<(), Error> {
    const N: u64 = 64;
    const CHUNK: u32 = (edu::BUFFER_SIZE as u64 / N) as u32;
    let d = smmu.s1_domain(pool, 48)?;
    smmu.attach_s1(dev.sid, &d)?;
    iovas!(iovas);
    let cpu = || 0;
    let mapper = DmaMapper::new(&d, &iovas, &cpu)?;
    // 64 pages scattered over 128 frames, linked in reverse order.
    let mut src = frames.alloc(2 * N as usize)?;
    fill(&mut src, 2);
    let base = src.phys();
    let piece = |p: u64| base + 2 * (N - 1 - p) * PAGE;
    let mut sink = frames.alloc(1)?;
    sink.as_mut_slice().fill(0);
    let mut st = mapper.try_alloc_with(N * PAGE, PAGE, heapless::Vec::<_, 64>::new())?;
    for p in 0..N {
        st.link(p * PAGE, PhysAddr(piece(p)), PAGE, Prot::READ)?;
    }
    let before = smmu.counters().commands;
    st.sync()?;
    let after = smmu.counters().commands;
    let (link_syncs, link_cmds) = (after.sync - before.sync, after.total - before.total);
    if link_syncs > 1 {
        return Err(Error::Check(
            "more than one CMD_SYNC for the link batch",
            link_syncs,
        ));
    }
    let ms = mapper.map(PhysAddr(sink.phys()), PAGE, Prot::WRITE)?;
    // One 64-byte chunk of each page into the edu buffer, then all of it back.
    for p in 0..N {
        let iova = st.dma_addr(p * PAGE + p * u64::from(CHUNK))?;
        // SAFETY: the device reads our linked pages through their IOVAs.
        unsafe { dev.edu.dma_to_device(iova.0, p as u32 * CHUNK, CHUNK)? };
    }
    // SAFETY: the device writes the sink page through its IOVA.
    unsafe { dev.edu.dma_from_device(0, ms.addr().0, edu::BUFFER_SIZE)? };
    platform::arch::dma_barrier();
    let got = sink.as_mut_slice();
    for p in 0..N {
        let off = (piece(p) - base) as usize + (p * u64::from(CHUNK)) as usize;
        for i in 0..CHUNK as usize {
            let at = p as usize * CHUNK as usize + i;
            if got[at] != pattern(2, off + i) {
                return Err(Error::Check("byte from a linked page wrong", at as u64));
            }
        }
    }
    st.unlink(0, N * PAGE)?;
    let before = smmu.counters().commands;
    st.sync()?;
    let after = smmu.counters().commands;
    let (unlink_syncs, unlink_tlbi) = (
        after.sync - before.sync,
        after.tlbi_nh_va + after.tlbi_nh_asid - before.tlbi_nh_va - before.tlbi_nh_asid,
    );
    if unlink_syncs != 1 {
        return Err(Error::Check(
            "unlink batch must take one CMD_SYNC",
            unlink_syncs,
        ));
    }
    println!(
        "{NAME}: link of {N} scattered pages + sync: {link_cmds} commands, {link_syncs} CMD_SYNC; DMA through all {N} checked; unlink + sync: {unlink_tlbi} TLBI, {unlink_syncs} CMD_SYNC"
    );
    demo!(
        "batch",
        "{N} scattered pages linked with one sync ({link_syncs} CMD_SYNC: new entries need none), DMA from every page checked, unlinked with {unlink_tlbi} TLBI + {unlink_syncs} CMD_SYNC"
    );
    st.free().map_err(|r| r.error)?;
    mapper.unmap(ms).map_err(|r| r.error)?;
    Ok(())
}

fn stale(
    smmu: &Driver<'_>,
    pool: &Pool,
    frames: &mut FrameAllocator,
    dev: &mut Device,
) -> Result<(), Error> {
    let d = smmu.s1_domain(pool, 48)?;
    smmu.attach_s1(dev.sid, &d)?;
    iovas!(iovas);
    let cpu = || 0;
    let mapper = DmaMapper::new(&d, &iovas, &cpu)?;
    let mut page = frames.alloc(1)?;
    page.as_mut_slice().fill(0x11);
    let mut st = mapper.try_alloc_with(PAGE, PAGE, heapless::Vec::<_, 1>::new())?;
    st.link(0, PhysAddr(page.phys()), PAGE, Prot::RW)?;
    st.sync()?;
    let iova = st.iova().0;
    // Warm QEMU's IOTLB: the device writes the page once through the IOVA.
    // SAFETY: the device writes our page through its IOVA.
    unsafe { dev.edu.dma_to_device(iova, 0, edu::BUFFER_SIZE)? }; // reads 0x11s
    // SAFETY: as above.
    unsafe { dev.edu.dma_from_device(0, iova, 64)? };
    // Control experiment: a page unmapped *without* the flush stays reachable,
    // because QEMU keeps its cached translation. This is what makes the check
    // below meaningful: only the driver's TLBI removes it.
    let mut ctl = frames.alloc(1)?;
    let ctl_iova = APERTURE + 0x1000_0000;
    let mut g = iova_core::IotlbGather::new();
    d.map(Iova(ctl_iova), PhysAddr(ctl.phys()), PAGE, Prot::RW, &mut g)?;
    d.flush(&mut g)?;
    // SAFETY: the device writes our control page through its IOVA.
    unsafe { dev.edu.dma_from_device(0, ctl_iova, 64)? };
    d.unmap(Iova(ctl_iova), PAGE, &mut g)?;
    ctl.as_mut_slice().fill(0x77);
    platform::arch::dma_barrier();
    // SAFETY: as above (the page is still ours; only its PTE is gone).
    unsafe { dev.edu.dma_from_device(0, ctl_iova, 64)? };
    platform::arch::dma_barrier();
    let stale_hit = ctl.as_mut_slice()[..64].iter().all(|&b| b == 0x11);
    d.flush(&mut g)?;
    ctl.as_mut_slice().fill(0x77);
    platform::arch::dma_barrier();
    // SAFETY: unmapped and invalidated: the SMMU must terminate the writes.
    unsafe { dev.edu.dma_from_device(0, ctl_iova, 64)? };
    platform::arch::dma_barrier();
    let blocked = ctl.as_mut_slice().iter().all(|&b| b == 0x77);
    drain(smmu)?;
    if !stale_hit || !blocked {
        return Err(Error::Check(
            "control: expected stale access before the TLBI, none after",
            ctl_iova,
        ));
    }
    println!(
        "{NAME}: control: PTE cleared without TLBI -> device still wrote the page (QEMU IOTLB); after the flush -> blocked"
    );
    st.unlink(0, PAGE)?;
    st.sync()?;
    page.as_mut_slice().fill(0x22);
    platform::arch::dma_barrier();
    // The edu buffer holds 0x11s: if the stale translation were used, they would land.
    // SAFETY: the IOVA is unlinked; the SMMU must terminate the writes.
    unsafe { dev.edu.dma_from_device(0, iova, 64)? };
    platform::arch::dma_barrier();
    if let Some(i) = page.as_mut_slice().iter().position(|&b| b != 0x22) {
        return Err(Error::Check(
            "device reached an unlinked page (stale IOTLB)",
            iova + i as u64,
        ));
    }
    let (n, _) = expect_faults(smmu, dev.sid, FaultKind::Translation, iova, 64, Some(false))?;
    println!(
        "{NAME}: after unlink + sync, DMA to old IOVA {iova:#x} blocked, page unchanged, {n} translation faults for StreamID {:#x}",
        dev.sid
    );
    demo!(
        "fault",
        "unlinked IOVA {iova:#x}: DMA blocked (QEMU's cached translation was invalidated), page unchanged, {n} F_TRANSLATION events"
    );
    // A 4 KiB fault storm: QEMU records one event per 4 bytes (about 1024),
    // more than the event queue holds. The driver drains and reports the loss.
    // SAFETY: as above.
    unsafe { dev.edu.dma_from_device(0, iova, edu::BUFFER_SIZE)? };
    let (n, r) = expect_faults(
        smmu,
        dev.sid,
        FaultKind::Translation,
        iova,
        PAGE,
        Some(false),
    )?;
    if !r.lost_events() || n != smmu.layout().evtq_entries {
        return Err(Error::Check(
            "fault storm: expected a full queue and reported loss",
            u64::from(n),
        ));
    }
    println!(
        "{NAME}: 4 KiB fault storm: {n} events drained (queue of {}), loss reported (overflow {}, write abort {})",
        smmu.layout().evtq_entries,
        r.overflowed,
        r.write_aborted
    );
    demo!(
        "storm",
        "4 KiB DMA to an unmapped page: {n} events drained, the rest reported lost"
    );
    st.free().map_err(|r| r.error)?;
    Ok(())
}

fn perm(
    smmu: &Driver<'_>,
    pool: &Pool,
    frames: &mut FrameAllocator,
    dev: &mut Device,
) -> Result<(), Error> {
    let d = smmu.s1_domain(pool, 48)?;
    smmu.attach_s1(dev.sid, &d)?;
    iovas!(iovas);
    let cpu = || 0;
    let mapper = DmaMapper::new(&d, &iovas, &cpu)?;
    let mut page = frames.alloc(1)?;
    fill(&mut page, 4);
    let m = mapper.map(PhysAddr(page.phys()), PAGE, Prot::READ)?;
    // Reading is allowed: the edu buffer gets the page.
    // SAFETY: the device reads our page through its IOVA.
    unsafe { dev.edu.dma_to_device(m.addr().0, 0, edu::BUFFER_SIZE)? };
    // Writing is not.
    // SAFETY: a read-only mapping: the SMMU must terminate the writes.
    unsafe { dev.edu.dma_from_device(0x100, m.addr().0 + 0x100, 64)? };
    platform::arch::dma_barrier();
    if page
        .as_mut_slice()
        .iter()
        .enumerate()
        .any(|(i, &b)| b != pattern(4, i))
    {
        return Err(Error::Check("device wrote a read-only page", m.addr().0));
    }
    let (n, _) = expect_faults(
        smmu,
        dev.sid,
        FaultKind::Permission,
        m.addr().0 + 0x100,
        64,
        Some(false),
    )?;
    println!(
        "{NAME}: write to read-only IOVA {:#x}: blocked, page unchanged, {n} permission faults",
        m.addr().0
    );
    demo!(
        "fault",
        "device write to a read-only mapping: {n} F_PERMISSION events, memory unchanged"
    );
    mapper.unmap(m).map_err(|r| r.error)?;
    Ok(())
}

fn second_fn(
    smmu: &Driver<'_>,
    pool: &Pool,
    frames: &mut FrameAllocator,
    devs: &mut heapless::Vec<Device, 2>,
) -> Result<(), Error> {
    if devs.len() < 2 {
        return Err(Error::NoEdu(2));
    }
    let d = smmu.s1_domain(pool, 48)?;
    smmu.attach_s1(devs[0].sid, &d)?;
    let mut page = frames.alloc(1)?;
    page.as_mut_slice().fill(0x33);
    let mut gather = iova_core::IotlbGather::new();
    d.map(
        Iova(APERTURE),
        PhysAddr(page.phys()),
        PAGE,
        Prot::RW,
        &mut gather,
    )?;
    d.flush(&mut gather)?;
    let other = &mut devs[1];
    println!(
        "{NAME}: second edu {} (StreamID {:#x}) was never attached",
        other.bdf, other.sid
    );
    // Neither the IOVA (mapped for the first edu only) nor the physical address works.
    for addr in [APERTURE, page.phys()] {
        // SAFETY: the stream is not attached: the SMMU must block the writes.
        unsafe { other.edu.dma_from_device(0, addr, 64)? };
    }
    platform::arch::dma_barrier();
    if page.as_mut_slice().iter().any(|&b| b != 0x33) {
        return Err(Error::Check(
            "an unattached function reached memory",
            page.phys(),
        ));
    }
    let (ev, r) = drain(smmu)?;
    let first = ev
        .first()
        .ok_or(Error::Check("no event for the unattached function", 0))?;
    println!("{NAME}: first event: {}", show(first));
    if ev.iter().any(|e| {
        e.sid != other.sid || !matches!(e.kind, FaultKind::BadSte | FaultKind::BadStreamId)
    }) {
        return Err(Error::Check(
            "wrong event for the unattached function",
            u64::from(first.code),
        ));
    }
    println!(
        "{NAME}: unattached function blocked, page unchanged, {} {:?} events with its StreamID",
        r.events, first.kind
    );
    demo!(
        "fault",
        "second edu (StreamID {:#x}, never attached): DMA blocked, {} {:?} events",
        other.sid,
        r.events,
        first.kind
    );
    // The attached one still works.
    // SAFETY: the first edu writes our page through its IOVA.
    unsafe { devs[0].edu.dma_from_device(0, APERTURE, 64)? };
    Ok(())
}

fn block(
    smmu: &Driver<'_>,
    pool: &Pool,
    boot: &BootInfo,
    frames: &mut FrameAllocator,
    dev: &mut Device,
) -> Result<(), Error> {
    // 2 MiB of RAM above the image (nothing else uses it: no heap, no firmware).
    let (_, image_end) = platform::image_range();
    let pa = image_end.next_multiple_of(M2) + M2;
    if !boot.ram().iter().any(|&(b, s)| b <= pa && pa + M2 <= b + s) {
        return Err(Error::Check("no 2 MiB of free RAM above the image", pa));
    }
    let d = smmu.s1_domain(pool, 48)?;
    smmu.attach_s1(dev.sid, &d)?;
    iovas!(iovas);
    let cpu = || 0;
    let mapper = DmaMapper::new(&d, &iovas, &cpu)?;
    let mut st = mapper.try_alloc_with(M2, M2, heapless::Vec::<_, 1>::new())?;
    st.link(0, PhysAddr(pa), M2, Prot::RW)?;
    st.sync()?;
    let iova = st.iova().0;
    let t = d
        .table()
        .translate(Iova(iova + 0x12_3456))
        .ok_or(Error::Check("block does not translate", iova))?;
    if t.page_size != M2 || t.pa.0 != pa + 0x12_3456 || iova == pa {
        return Err(Error::Check("not a 2 MiB block entry", t.page_size));
    }
    let mut src = frames.alloc(1)?;
    fill(&mut src, 7);
    let ms = mapper.map(PhysAddr(src.phys()), PAGE, Prot::READ)?;
    // SAFETY: reads our page, writes the last page of the block (free RAM we claimed).
    unsafe {
        dev.edu.dma_to_device(ms.addr().0, 0, edu::BUFFER_SIZE)?;
        dev.edu
            .dma_from_device(0, iova + M2 - PAGE, edu::BUFFER_SIZE)?;
    }
    platform::arch::dma_barrier();
    for i in 0..PAGE as usize {
        // SAFETY: RAM we claimed above, identity mapped; the DMA completed.
        let b = unsafe { core::ptr::read_volatile((pa + M2 - PAGE + i as u64) as *const u8) };
        if b != pattern(7, i) {
            return Err(Error::Check(
                "byte through the block wrong",
                pa + M2 - PAGE + i as u64,
            ));
        }
    }
    println!(
        "{NAME}: 2 MiB at IOVA {iova:#x} -> PA {pa:#x} is one block entry; DMA into its last page checked"
    );
    demo!(
        "block",
        "2 MiB-aligned link at IOVA {iova:#x} became one block entry; DMA through it checked"
    );
    st.destroy().map_err(|r| r.error)?;
    mapper.unmap(ms).map_err(|r| r.error)?;
    Ok(())
}

fn stage2(
    smmu: &Driver<'_>,
    pool: &Pool,
    frames: &mut FrameAllocator,
    dev: &mut Device,
    g: Granule,
) -> Result<(), Error> {
    let gsz = 1u64 << g.shift();
    let fmt = LpaeS2::with_granule(g, 40, smmu.features().table_oas_bits())?;
    let d = smmu.s2_domain_with(pool, fmt)?;
    smmu.attach_s2(dev.sid, &d)?;
    let ste = smmu.ste(dev.sid)?;
    println!(
        "{NAME}: stage-2 STE for StreamID {:#x}: VMID {}, {} KiB granule, start level {}, {} concatenated root tables",
        dev.sid,
        ste.vmid(),
        gsz >> 10,
        d.table().format().start_level(),
        d.table().format().concatenated()
    );
    // The "guest" sees its buffers at IPAs of its own choosing.
    let (ipa_src, ipa_dst) = (0x10_0000_0000u64, 0x10_0200_0000u64);
    let per = (gsz / PAGE) as usize;
    let mut src = frames.alloc_aligned(per, gsz as usize)?;
    let mut dst = frames.alloc_aligned(per, gsz as usize)?;
    fill(&mut src, 6);
    dst.as_mut_slice().fill(0);
    let mut gather = iova_core::IotlbGather::new();
    d.map(
        Iova(ipa_src),
        PhysAddr(src.phys()),
        gsz,
        Prot::READ,
        &mut gather,
    )?;
    d.map(
        Iova(ipa_dst),
        PhysAddr(dst.phys()),
        gsz,
        Prot::WRITE,
        &mut gather,
    )?;
    d.flush(&mut gather)?;
    // The last 4 KiB of each page: only the granule's geometry reaches it.
    let off = gsz - PAGE;
    // SAFETY: the device reads `src` and writes `dst` through their IPAs.
    unsafe {
        dev.edu.dma_to_device(ipa_src + off, 0, edu::BUFFER_SIZE)?;
        dev.edu
            .dma_from_device(0, ipa_dst + off, edu::BUFFER_SIZE)?;
    }
    platform::arch::dma_barrier();
    let got = &dst.as_mut_slice()[off as usize..];
    if got
        .iter()
        .enumerate()
        .any(|(i, &b)| b != pattern(6, off as usize + i))
    {
        return Err(Error::Check("byte through stage 2 wrong", ipa_dst + off));
    }
    d.unmap(Iova(ipa_dst), gsz, &mut gather)?;
    d.flush(&mut gather)?;
    dst.as_mut_slice().fill(0x44);
    platform::arch::dma_barrier();
    // SAFETY: unmapped at stage 2: the SMMU must terminate the writes.
    unsafe { dev.edu.dma_from_device(0, ipa_dst + off, 64)? };
    platform::arch::dma_barrier();
    if dst.as_mut_slice().iter().any(|&b| b != 0x44) {
        return Err(Error::Check(
            "device reached a page unmapped at stage 2",
            ipa_dst,
        ));
    }
    let (ev, r) = drain(smmu)?;
    let first = ev
        .first()
        .ok_or(Error::Check("no stage-2 fault reported", ipa_dst))?;
    println!("{NAME}: first event: {}", show(first));
    if first.kind != FaultKind::Translation
        || first.stage != Stage::Two
        || first.sid != dev.sid
        || first.ipa != Some((ipa_dst + off) & !0xfff)
    {
        return Err(Error::Check(
            "expected a stage-2 translation fault",
            u64::from(first.code),
        ));
    }
    println!(
        "{NAME}: stage 2 ({} KiB): 4096 bytes RAM -> edu -> RAM through IPAs checked; after unmap, {} stage-2 faults",
        gsz >> 10,
        r.events
    );
    demo!(
        "s2",
        "stage-2 translation (VMID {}, {} KiB granule): DMA through IPAs checked; unmapped IPA faults at stage 2 ({} events)",
        ste.vmid(),
        gsz >> 10,
        r.events
    );
    Ok(())
}

fn nested(
    smmu: &Driver<'_>,
    pool: &Pool,
    frames: &mut FrameAllocator,
    dev: &mut Device,
) -> Result<(), Error> {
    if !smmu.features().nesting {
        return Err(Error::Smmu(SmmuError::StageUnsupported));
    }
    let s2 = smmu.s2_domain(pool, 44)?;
    let s1 = smmu.s1_domain(pool, 48)?;
    // Stage 2 maps the pool (the CD and the stage-1 tables live there) to
    // itself, and the guest's data page at a different IPA.
    let mut dst = frames.alloc(1)?;
    dst.as_mut_slice().fill(0);
    let (pool_lo, pool_len) = pool.range();
    let ipa_data = 0x20_0000_0000u64;
    let mut g = iova_core::IotlbGather::new();
    s2.map(Iova(pool_lo), PhysAddr(pool_lo), pool_len, Prot::RW, &mut g)?;
    s2.map(Iova(ipa_data), PhysAddr(dst.phys()), PAGE, Prot::RW, &mut g)?;
    s2.flush(&mut g)?;
    let iova = 0x7000_0000u64;
    s1.map(Iova(iova), PhysAddr(ipa_data), PAGE, Prot::RW, &mut g)?;
    s1.flush(&mut g)?;
    smmu.attach_nested(dev.sid, &s1, &s2)?;
    let mut src = frames.alloc(1)?;
    fill(&mut src, 8);
    // The source: IOVA iova + PAGE -> IPA = its PA, mapped to itself at stage 2.
    s2.map(
        Iova(src.phys()),
        PhysAddr(src.phys()),
        PAGE,
        Prot::READ,
        &mut g,
    )?;
    s2.flush(&mut g)?;
    s1.map(
        Iova(iova + PAGE),
        PhysAddr(src.phys()),
        PAGE,
        Prot::READ,
        &mut g,
    )?;
    s1.flush(&mut g)?;
    // SAFETY: the device reads `src` and writes `dst` through IOVA -> IPA -> PA.
    unsafe {
        dev.edu.dma_to_device(iova + PAGE, 0, edu::BUFFER_SIZE)?;
        dev.edu.dma_from_device(0, iova, edu::BUFFER_SIZE)?;
    }
    platform::arch::dma_barrier();
    if dst
        .as_mut_slice()
        .iter()
        .enumerate()
        .any(|(i, &b)| b != pattern(8, i))
    {
        return Err(Error::Check("byte through nested translation wrong", iova));
    }
    // Take the data page away at stage 2: the combined entry must go too.
    s2.unmap(Iova(ipa_data), PAGE, &mut g)?;
    s2.flush(&mut g)?;
    dst.as_mut_slice().fill(0x55);
    platform::arch::dma_barrier();
    // SAFETY: unmapped at stage 2: the SMMU must terminate the writes.
    unsafe { dev.edu.dma_from_device(0, iova, 64)? };
    platform::arch::dma_barrier();
    if dst.as_mut_slice().iter().any(|&b| b != 0x55) {
        return Err(Error::Check(
            "device reached a page unmapped at stage 2 (nested)",
            iova,
        ));
    }
    let (ev, r) = drain(smmu)?;
    let first = ev
        .first()
        .ok_or(Error::Check("no nested fault reported", iova))?;
    println!("{NAME}: first event: {}", show(first));
    if first.stage != Stage::Two || first.sid != dev.sid {
        return Err(Error::Check(
            "expected a stage-2 fault",
            u64::from(first.code),
        ));
    }
    println!(
        "{NAME}: nested: IOVA {iova:#x} -> IPA {ipa_data:#x} -> PA {:#x}, 4096 bytes checked; stage-2 unmap faults ({} events)",
        dst.phys(),
        r.events
    );
    demo!(
        "nested",
        "stage 1 over stage 2: IOVA {iova:#x} -> IPA {ipa_data:#x} -> PA {:#x}, DMA checked; stage-2 unmap blocks it ({} events)",
        dst.phys(),
        r.events
    );
    Ok(())
}

fn granule(
    smmu: &Driver<'_>,
    pool: &Pool,
    frames: &mut FrameAllocator,
    dev: &mut Device,
    g: Granule,
) -> Result<(), Error> {
    let gsz = 1u64 << g.shift();
    let d = smmu.s1_domain_with(pool, LpaeS1::with_granule(g, 48, 44)?)?;
    smmu.attach_s1(dev.sid, &d)?;
    let per = (gsz / PAGE) as usize;
    let mut src = frames.alloc_aligned(per, gsz as usize)?;
    let mut dst = frames.alloc_aligned(per, gsz as usize)?;
    fill(&mut src, 9);
    dst.as_mut_slice().fill(0);
    let (iova_src, iova_dst) = (0x10_0000_0000u64, 0x10_0100_0000u64);
    let mut gather = iova_core::IotlbGather::new();
    d.map(
        Iova(iova_src),
        PhysAddr(src.phys()),
        gsz,
        Prot::READ,
        &mut gather,
    )?;
    d.map(
        Iova(iova_dst),
        PhysAddr(dst.phys()),
        gsz,
        Prot::RW,
        &mut gather,
    )?;
    d.flush(&mut gather)?;
    // The last 4 KiB of each granule page: only the right geometry reaches it.
    let off = gsz - PAGE;
    // SAFETY: the device reads `src` and writes `dst` through their IOVAs.
    unsafe {
        dev.edu.dma_to_device(iova_src + off, 0, edu::BUFFER_SIZE)?;
        dev.edu
            .dma_from_device(0, iova_dst + off, edu::BUFFER_SIZE)?;
    }
    platform::arch::dma_barrier();
    let got = &dst.as_mut_slice()[off as usize..];
    if got
        .iter()
        .enumerate()
        .any(|(i, &b)| b != pattern(9, off as usize + i))
    {
        return Err(Error::Check(
            "byte through the large granule wrong",
            iova_dst + off,
        ));
    }
    let before = smmu.counters().commands;
    d.unmap(Iova(iova_dst), gsz, &mut gather)?;
    d.flush(&mut gather)?;
    let after = smmu.counters().commands;
    dst.as_mut_slice().fill(0x66);
    platform::arch::dma_barrier();
    // SAFETY: unmapped: the SMMU must terminate the writes.
    unsafe { dev.edu.dma_from_device(0, iova_dst + off, 64)? };
    platform::arch::dma_barrier();
    if dst.as_mut_slice().iter().any(|&b| b != 0x66) {
        return Err(Error::Check(
            "device reached an unmapped large page",
            iova_dst,
        ));
    }
    let (n, _) = expect_faults(
        smmu,
        dev.sid,
        FaultKind::Translation,
        iova_dst + off,
        64,
        Some(false),
    )?;
    println!(
        "{NAME}: {} KiB granule: DMA through IOVA {iova_src:#x} -> {iova_dst:#x} checked; unmap = {} TLBI + {} CMD_SYNC, then {n} translation faults",
        gsz >> 10,
        after.tlbi_nh_va - before.tlbi_nh_va,
        after.sync - before.sync
    );
    demo!(
        "granule",
        "stage 1 with a {} KiB granule: DMA checked, unmapped page faults ({n} events)",
        gsz >> 10
    );
    Ok(())
}

fn two_domains(
    smmu: &Driver<'_>,
    pool: &Pool,
    frames: &mut FrameAllocator,
    devs: &mut heapless::Vec<Device, 2>,
) -> Result<(), Error> {
    if devs.len() < 2 {
        return Err(Error::NoEdu(2));
    }
    let a = smmu.s1_domain(pool, 48)?;
    let b = smmu.s1_domain(pool, 48)?;
    smmu.attach_s1(devs[0].sid, &a)?;
    smmu.attach_s1(devs[1].sid, &b)?;
    let mut pa = frames.alloc(1)?;
    let mut pb = frames.alloc(1)?;
    let mut src = frames.alloc(2)?;
    pa.as_mut_slice().fill(0);
    pb.as_mut_slice().fill(0);
    src.as_mut_slice()[..FRAME_SIZE].fill(0xaa);
    src.as_mut_slice()[FRAME_SIZE..].fill(0xbb);
    let iova = APERTURE;
    let mut g = iova_core::IotlbGather::new();
    // Same IOVA, different pages; each domain also maps its own source.
    a.map(Iova(iova), PhysAddr(pa.phys()), PAGE, Prot::WRITE, &mut g)?;
    a.map(
        Iova(iova + PAGE),
        PhysAddr(src.phys()),
        PAGE,
        Prot::READ,
        &mut g,
    )?;
    a.flush(&mut g)?;
    b.map(Iova(iova), PhysAddr(pb.phys()), PAGE, Prot::WRITE, &mut g)?;
    b.map(
        Iova(iova + PAGE),
        PhysAddr(src.phys() + PAGE),
        PAGE,
        Prot::READ,
        &mut g,
    )?;
    b.flush(&mut g)?;
    for dev in devs.iter_mut() {
        // SAFETY: each device reads its domain's source page and writes its
        // domain's page through the same IOVAs.
        unsafe {
            dev.edu.dma_to_device(iova + PAGE, 0, edu::BUFFER_SIZE)?;
            dev.edu.dma_from_device(0, iova, edu::BUFFER_SIZE)?;
        }
    }
    platform::arch::dma_barrier();
    if pa.as_mut_slice().iter().any(|&b| b != 0xaa) || pb.as_mut_slice().iter().any(|&b| b != 0xbb)
    {
        return Err(Error::Check(
            "a device reached the other domain's page",
            iova,
        ));
    }
    // Domain A unmaps the IOVA; B's translation (cached in QEMU too) stays.
    a.unmap(Iova(iova), PAGE, &mut g)?;
    a.flush(&mut g)?;
    pa.as_mut_slice().fill(0x11);
    pb.as_mut_slice().fill(0x22);
    platform::arch::dma_barrier();
    for dev in devs.iter_mut() {
        // SAFETY: as above; for the first device the IOVA is now unmapped.
        unsafe { dev.edu.dma_from_device(0, iova, 64)? };
    }
    platform::arch::dma_barrier();
    if pa.as_mut_slice().iter().any(|&b| b != 0x11) {
        return Err(Error::Check(
            "the first device reached its unmapped IOVA",
            iova,
        ));
    }
    if pb.as_mut_slice()[..64].iter().any(|&b| b != 0xbb) {
        return Err(Error::Check("the second device lost its mapping", iova));
    }
    let (n, _) = expect_faults(
        smmu,
        devs[0].sid,
        FaultKind::Translation,
        iova,
        64,
        Some(false),
    )?;
    println!(
        "{NAME}: two domains (ASIDs {} and {}) map IOVA {iova:#x} to different pages: each device reached only its own; after domain A's unmap, A's device faults ({n} events) and B's still works",
        a.invalidator().asid(),
        b.invalidator().asid()
    );
    demo!(
        "isolation",
        "two domains, same IOVA, different pages: each edu reaches only its own; unmapping in one leaves the other"
    );
    Ok(())
}

fn storm(smmu: &Driver<'_>, pool: &Pool, dev: &mut Device) -> Result<(), Error> {
    let d = smmu.s1_domain(pool, 48)?;
    smmu.attach_s1(dev.sid, &d)?;
    let hole = APERTURE + 0x4000_0000;
    // SAFETY: the IOVA is unmapped: the SMMU terminates every write.
    unsafe { dev.edu.dma_from_device(0, hole, edu::BUFFER_SIZE)? };
    let mut n = 0u64;
    let mut bad = None;
    let r = smmu.drain_events(|e| {
        let want = hole + 4 * n;
        if e.kind != FaultKind::Translation || e.sid != dev.sid || e.addr != Some(want) {
            bad.get_or_insert(n);
        }
        n += 1;
    })?;
    if let Some(i) = bad {
        return Err(Error::Check("storm: event out of order or wrong", i));
    }
    if r.lost_events() || n != u64::from(edu::BUFFER_SIZE) / 4 {
        return Err(Error::Check("storm: events lost or missing", n));
    }
    println!(
        "{NAME}: 4 KiB fault storm: all {n} translation faults drained in order (IOVA {hole:#x} + 4 * i), none lost, queue of {}",
        smmu.layout().evtq_entries
    );
    demo!(
        "storm",
        "4 KiB DMA to an unmapped IOVA: all {n} events drained, typed and in order"
    );
    Ok(())
}

/// The GIC distributor's pending state of the SMMU's SPIs, read with the
/// distributor disabled: edge-triggered SPIs latch pending without being
/// forwarded, so the CPU is never interrupted.
struct GicPeek {
    gicd: usize,
}

impl GicPeek {
    const ISPENDR: usize = 0x200;
    const ICPENDR: usize = 0x280;
    const ICFGR: usize = 0xc00;

    fn reg(&self, base: usize, intid: u32, per_word: u32) -> usize {
        self.gicd + base + 4 * (intid / per_word) as usize
    }

    /// Makes `intid` edge-triggered and clears its pending state.
    fn prepare(&self, intid: u32) {
        let cfg = self.reg(Self::ICFGR, intid, 16);
        // SAFETY: GICD registers of the distributor in the device tree,
        // 32-bit accesses; changing an SPI's trigger has no other effect.
        unsafe {
            let v = platform::mmio::read32(cfg);
            platform::mmio::write32(cfg, v | 2 << (2 * (intid % 16)));
        }
        self.clear(intid);
    }

    fn clear(&self, intid: u32) {
        // SAFETY: as in `prepare`; write-1-to-clear of one pending bit.
        unsafe { platform::mmio::write32(self.reg(Self::ICPENDR, intid, 32), 1 << (intid % 32)) };
    }

    fn pending(&self, intid: u32) -> bool {
        // SAFETY: as in `prepare`; reading pending state has no side effect.
        unsafe {
            platform::mmio::read32(self.reg(Self::ISPENDR, intid, 32)) & 1 << (intid % 32) != 0
        }
    }
}

fn irq(smmu: &Driver<'_>, fdt: &platform::dtb::Fdt<'_>, dev: &mut Device) -> Result<(), Error> {
    let gicd = dt::gic_distributor(fdt).ok_or(Error::Check("no GIC distributor in the DTB", 0))?;
    let ev = dt::smmu_intid(fdt, "eventq").ok_or(Error::Check("no eventq interrupt", 0))?;
    let ge = dt::smmu_intid(fdt, "gerror").ok_or(Error::Check("no gerror interrupt", 0))?;
    let gic = GicPeek {
        gicd: gicd as usize,
    };
    gic.prepare(ev);
    gic.prepare(ge);
    let d = smmu.s1_domain(smmu.frames(), 48)?;
    smmu.attach_s1(dev.sid, &d)?;
    let hole = APERTURE + 0x2000_0000;
    let fault = |dev: &mut Device| -> Result<(), Error> {
        // SAFETY: the IOVA is unmapped: the SMMU terminates the writes.
        unsafe { dev.edu.dma_from_device(0, hole, 4)? };
        Ok(())
    };
    let bad = iommu_arm_smmuv3::Command([0x7f, 0]);
    // Interrupts off (the driver's default): nothing pending.
    fault(dev)?;
    let _ = smmu.submit(&[bad]);
    let quiet = (gic.pending(ev), gic.pending(ge));
    drain(smmu)?;
    // On: the fault pulses eventq, the refused command gerror.
    smmu.set_interrupts(true, true)?;
    fault(dev)?;
    let ev_pending = gic.pending(ev);
    let refused = smmu.submit(&[bad]);
    let ge_pending = gic.pending(ge);
    let (events, _) = drain(smmu)?;
    smmu.set_interrupts(false, false)?;
    gic.clear(ev);
    gic.clear(ge);
    println!(
        "{NAME}: GICD at {gicd:#x}, eventq INTID {ev}, gerror INTID {ge}: interrupts off -> pending {quiet:?}; on -> eventq {ev_pending}, gerror {ge_pending} ({} event(s), command {})",
        events.len(),
        if refused.is_err() {
            "refused"
        } else {
            "accepted"
        }
    );
    if quiet != (false, false) || !ev_pending || !ge_pending || refused.is_ok() || events.is_empty()
    {
        return Err(Error::Check("SMMU interrupts did not follow IRQ_CTRL", 0));
    }
    demo!(
        "irq",
        "set_interrupts: a fault pulses the eventq SPI ({ev}), a refused command the gerror SPI ({ge}); off, neither"
    );
    Ok(())
}

/// edu's MSI through the SMMU to the GICv3 ITS: mapped doorbell -> LPI;
/// unmapped -> no LPI, a translation fault for edu's StreamID.
#[cfg(target_arch = "aarch64")]
fn its_msi(
    smmu: &Driver<'_>,
    pool: &Pool,
    boot: &BootInfo,
    fdt: &platform::dtb::Fdt<'_>,
    frames: &mut FrameAllocator,
    dev: &mut Device,
    stage: Stage,
) -> Result<(), Error> {
    use platform::gic_its::{self, GicAddrs, Its, LPI_BASE};
    let addrs = GicAddrs::from_device_tree(fdt)?;
    // SAFETY: the device tree's GICv3 and ITS, identity mapped, driven by
    // nobody else; the boot stub left DAIF masked, so enabling group 1 never
    // interrupts the CPU.
    let mut its = unsafe { Its::bring_up(addrs, frames)? };
    // The ITS sees the requester ID as DeviceID (virt's msi-map is 1:1).
    let device_id = u32::from(dev.bdf.rid());
    let event = 0u16;
    its.map_event(frames, device_id, u32::from(event), LPI_BASE)?;
    println!(
        "{NAME}: GICv3 ITS at {:#x} (GITS_TYPER {:#x}), GICD {:#x}, GICR {:#x}: DeviceID {device_id:#x} EventID {event} -> LPI {LPI_BASE} on CPU 0",
        addrs.its,
        its.typer(),
        addrs.gicd,
        addrs.gicr
    );
    if let Some(id) = gic_its::poll_lpi(1) {
        return Err(Error::Check(
            "interrupt pending before any MSI",
            u64::from(id),
        ));
    }
    let doorbell = Doorbell {
        translater: addrs.translater(),
        event,
        lpi: LPI_BASE,
    };
    match stage {
        Stage::One => {
            let d = smmu.s1_domain(pool, 48)?;
            smmu.attach_s1(dev.sid, &d)?;
            msi_through_window(smmu, boot, &d, dev, &doorbell, "its-msi", stage)
        }
        Stage::Two => {
            // A hypervisor's view: the device belongs to a guest, its MSI
            // address is an IPA, and the doorbell goes in stage 2.
            let d = smmu.s2_domain(pool, 40)?;
            smmu.attach_s2(dev.sid, &d)?;
            msi_through_window(smmu, boot, &d, dev, &doorbell, "its-msi-s2", stage)
        }
    }
}

/// Where edu's MSI must arrive: the ITS doorbell, the EventID edu sends and
/// the LPI the ITS maps it to.
#[cfg(target_arch = "aarch64")]
struct Doorbell {
    translater: u64,
    event: u16,
    lpi: u32,
}

/// edu's MSI through `d`'s MSI window: mapped, the MSI arrives as the LPI and
/// the SMMU reports nothing; torn down, no LPI and a translation fault at
/// `stage` for edu's StreamID at the doorbell's address.
#[cfg(target_arch = "aarch64")]
fn msi_through_window<D: IommuDomain>(
    smmu: &Driver<'_>,
    boot: &BootInfo,
    d: &D,
    dev: &mut Device,
    bell: &Doorbell,
    name: &str,
    stage: Stage,
) -> Result<(), Error> {
    use platform::gic_its;
    /// How long an MSI may take to arrive as an LPI (it is delivered
    /// synchronously by QEMU; the bound is for a loaded machine).
    const LPI_WAIT_MS: u64 = 200;
    let space = if stage == Stage::Two { "IPA" } else { "IOVA" };
    // The domain's address space (for stage 2 the guest's IPAs): the low
    // 4 GiB above 16 MiB, which holds Linux's MSI window at 0x800_0000.
    let mut slots = [const { ExtentSlot::new() }; 16];
    let mut cpus = [const { CpuCache::new() }; 1];
    let aperture =
        IovaRange::new(Iova(0x100_0000), (1 << 32) - 0x100_0000).map_err(CoreError::from)?;
    let iovas = IovaAllocator::new(
        IovaAllocatorConfig::new(aperture, PAGE),
        &mut slots,
        &mut cpus,
    )
    .map_err(CoreError::from)?;
    // The window is reserved in the allocator: no DMA buffer is ever handed
    // an address in it. The doorbell page is mapped write-only device memory
    // (stage 1 cannot express write-only and grants read too).
    let mut window = iova_core::MsiWindow::<_, 1>::new(d, &iovas)?;
    let msi = window.map_doorbell(PhysAddr(bell.translater))?;
    let translater = bell.translater;
    let lpi = bell.lpi;
    println!(
        "{NAME}: {name}: MSI window [{:#x}, {:#x}) reserved; doorbell page {:#x} mapped at {space} {:#x}",
        window.range().start.0,
        window.range().end.0,
        translater & !(PAGE - 1),
        msi.0 & !(PAGE - 1)
    );
    let host = pci::discover(boot)?;
    // SAFETY: edu's MSI capability; its write goes to the window's doorbell
    // address, which the SMMU maps to GITS_TRANSLATER (and later blocks).
    let cap = unsafe { edu::enable_msi(host.ecam(), dev.bdf, msi.0, bell.event)? };
    // SAFETY: bus mastering was already on (`open_edus`); the device's DMA
    // and MSI go through the SMMU.
    unsafe { host.enable(dev.bdf, CMD_BUS_MASTER)? };
    let raise = |dev: &mut Device| {
        dev.edu.raise_irq(1);
        let got = gic_its::poll_lpi(LPI_WAIT_MS);
        dev.edu.ack_irq(1);
        got
    };
    let got = raise(dev);
    if got != Some(lpi) {
        return Err(Error::Check(
            "no LPI for edu's MSI (INTID read, 0 = none)",
            u64::from(got.unwrap_or(0)),
        ));
    }
    let (ev, _) = drain(smmu)?;
    if let Some(e) = ev.first() {
        println!("{NAME}: unexpected event: {}", show(e));
        return Err(Error::Check(
            "SMMU event for a mapped doorbell",
            u64::from(e.code),
        ));
    }
    println!(
        "{NAME}: {name}: edu MSI (capability at {cap:#x}) -> {space} {:#x} -> GITS_TRANSLATER {translater:#x}: LPI {lpi} received",
        msi.0
    );
    demo!(
        "msi",
        "edu MSI to {space} {:#x}, translated by the SMMUv3 (stage {}) to GITS_TRANSLATER {translater:#x}: LPI {lpi}",
        msi.0,
        if stage == Stage::Two { 2 } else { 1 }
    );

    window.teardown().map_err(|r| r.error)?;
    if let Some(id) = raise(dev) {
        return Err(Error::Check(
            "interrupt after the MSI window was torn down",
            u64::from(id),
        ));
    }
    let (ev, r) = drain(smmu)?;
    let first = ev
        .first()
        .ok_or(Error::Check("no event for the MSI after teardown", msi.0))?;
    println!("{NAME}: first event: {}", show(first));
    for e in &ev {
        let at = match stage {
            Stage::Two => e.ipa.map(|a| a & !0xfff) == Some(msi.0 & !0xfff),
            _ => e.addr.is_some_and(|a| (msi.0..msi.0 + 4).contains(&a)),
        };
        if e.kind != FaultKind::Translation
            || e.sid != dev.sid
            || e.stage != stage
            || e.read != Some(false)
            || !at
        {
            println!("{NAME}: unexpected event: {}", show(e));
            return Err(Error::Check(
                "expected a translation fault for the MSI write",
                u64::from(e.code),
            ));
        }
    }
    println!(
        "{NAME}: {name}: MSI window torn down: no LPI, SMMU event F_TRANSLATION (stage {}) for StreamID {:#x} at {space} {:#x} ({} event(s))",
        if stage == Stage::Two { 2 } else { 1 },
        dev.sid,
        msi.0,
        r.events
    );
    demo!(
        "msi-blocked",
        "MSI window torn down: edu's MSI faults in the SMMU (F_TRANSLATION), no LPI"
    );
    Ok(())
}

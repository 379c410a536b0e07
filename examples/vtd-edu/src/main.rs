//! `vtd-edu`: QEMU's Intel VT-d (q35, `-device intel-iommu`) translating the
//! `edu` device's DMA, driven by `iommu-intel-vtd` under iova-core's
//! two-step API.
//!
//! The unit is found the way an OS finds it: the PVH start info's RSDP ->
//! XSDT -> DMAR -> the DRHD whose scope holds edu's BDF. Then:
//!
//! 1. a buffer mapped at an IOVA far from its physical address: DMA RAM ->
//!    edu -> RAM through IOVAs, every byte checked;
//! 2. 64 scattered pages linked with one sync, DMA from every one, counters
//!    show one invalidation batch (one wait) for the unlink of all 64;
//! 3. unmap + sync, then a DMA write to the old IOVA: blocked (it was cached
//!    in QEMU's IOTLB, so a missing invalidation lets it through), target
//!    bytes unchanged, a fault record with edu's source ID, the address and
//!    reason "write denied";
//! 4. a read-only mapping written by the device: fault, memory unchanged;
//! 5. a second edu with no context entry: blocked and reported;
//! 6. a 2 MiB-aligned mapping uses a superpage (where the format has 2 MiB
//!    pages: CAP.SLLPS for second level, always for first level) and DMA
//!    through it works;
//! 7. the second edu in pass-through (ECAP.PT) DMAs by physical address;
//! 8. a fault raises the fault event interrupt, seen pending in the local
//!    APIC;
//! 9. the last page of the domain's input range (below `1 << 47` with
//!    first-level tables, which map the lower canonical half only; below
//!    MGAW with second-level ones), handed out by an allocator whose
//!    aperture is that page: DMA RAM -> edu -> RAM at that IOVA, bytes
//!    checked.
//!
//! The unit runs in scalable mode where ECAP.SMTS (`x-scalable-mode=on`),
//! with first-level tables where ECAP.FLTS (`x-flts=on`), in legacy mode
//! otherwise. `-append vtd-edu.checks=3,5` runs only those checks (each
//! sets up what it needs), which is how `cargo xtask test` gives every check
//! its own pass/fail line.
//!
//! `-append blk` / `-append blk-bench` run a virtio-blk disk behind the unit
//! instead (no edu needed): see [`blk`]. `-append ir` / `-append ir-x2apic`
//! run interrupt remapping of edu's MSIs instead (two edus): see `ir`.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

mod blk;
#[cfg(target_arch = "x86_64")]
mod ir;

use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering};

use iommu_intel_vtd::acpi::dmar::{Drhd, Structure};
use iommu_intel_vtd::acpi::{self, AcpiError};
use iommu_intel_vtd::fault::AccessKind;
use iommu_intel_vtd::regs::MmioRegion;
use iommu_intel_vtd::reserved::{map_reserved_regions, reserved_regions_for};
use iommu_intel_vtd::{
    Bdf, Dmar, FaultReason, FaultRecord, Features, UnitConfig, VtdDomain, VtdError, VtdFormat,
    VtdUnit,
};
use iova_core::iova_alloc::{CpuCache, ExtentSlot, IovaAllocatorConfig};
use iova_core::pt::PtFormat;
use iova_core::{
    DmaMapper, Error as CoreError, FrameAllocator as TableFrames, IommuDomain, IotlbGather, Iova,
    IovaAllocator, IovaRange, PhysAddr, Prot,
};
// Firmware tables are read in place (`ir` and `blk` use these too).
use platform::edu::{self, Edu, EduError};
use platform::firmware::{IdentityMapped, rsdp};
use platform::frames::{FRAME_SIZE, FrameAllocator, Frames, FramesError};
use platform::pci::{self, CMD_BUS_MASTER, CMD_MEMORY, PciHost};
use platform::setup::SetupError;
use platform::{BootInfo, demo, print, println};

platform::entry!(main);

const NAME: &str = "vtd-edu";
const PAGE: u64 = FRAME_SIZE as u64;
/// Pages linked with one sync in check 2.
const SCATTERED: u64 = 64;
/// Frames for the unit (root, context tables, queue, status) and page tables.
const TABLE_FRAMES: usize = 48;
/// IOVAs start here: far from any RAM address, inside 39 bits.
const APERTURE: u64 = 0x10_0000_0000;
/// Physical RAM used for the 2 MiB superpage check (free RAM on a 512 MiB
/// q35: above the image at 16 MiB, below SeaBIOS' tables at the top).
const SUPERPAGE_PA: u64 = 0x0800_0000;
const SUPERPAGE: u64 = 0x20_0000;

#[derive(Debug)]
enum Error {
    Setup(SetupError),
    Pci(pci::PciError),
    Edu(EduError),
    Frames(FramesError),
    Core(CoreError),
    Acpi(AcpiError),
    Vtd(VtdError),
    NoStartInfo,
    NoUnit(Bdf),
    Check(&'static str, u64),
    Blk(blk::Error),
    #[cfg(target_arch = "x86_64")]
    Apic(platform::apic::ApicError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Setup(e) => write!(f, "{e}"),
            Self::Pci(e) => write!(f, "{e}"),
            Self::Edu(e) => write!(f, "{e}"),
            Self::Frames(e) => write!(f, "{e}"),
            Self::Core(e) => write!(f, "iova-core: {e}"),
            Self::Acpi(e) => write!(f, "{e}"),
            Self::Vtd(e) => write!(f, "{e}"),
            Self::NoStartInfo => f.write_str("no PVH start info, so no RSDP"),
            Self::NoUnit(b) => write!(f, "no DMAR unit covers {b}"),
            Self::Check(what, at) => write!(f, "{what} ({at:#x})"),
            Self::Blk(e) => write!(f, "{e}"),
            #[cfg(target_arch = "x86_64")]
            Self::Apic(e) => write!(f, "{e}"),
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
from!(SetupError => Setup, pci::PciError => Pci, EduError => Edu, FramesError => Frames,
      CoreError => Core, AcpiError => Acpi, VtdError => Vtd);
#[cfg(target_arch = "x86_64")]
from!(platform::apic::ApicError => Apic);

/// Frames for the unit and its page tables: a bump allocator over one block
/// of the platform pool (single CPU, so plain loads and stores).
struct TablePool {
    block: Frames,
    next: AtomicUsize,
    freed: AtomicUsize,
}

// SAFETY: frames are 4 KiB-aligned pieces of a block this program owns,
// handed out once each and zeroed; identity mapped, so the physical address
// is the pointer. Nothing asks for more than 4 KiB.
unsafe impl TableFrames for TablePool {
    fn alloc_zeroed(&self, size: usize) -> Option<PhysAddr> {
        let i = self.next.load(Ordering::Relaxed);
        if size > FRAME_SIZE || !size.is_power_of_two() || i >= self.block.len() / FRAME_SIZE {
            return None;
        }
        self.next.store(i + 1, Ordering::Relaxed);
        let pa = self.block.phys() + (i * FRAME_SIZE) as u64;
        // SAFETY: inside our block, handed out for the first time.
        unsafe { core::ptr::write_bytes(pa as *mut u8, 0, FRAME_SIZE) };
        Some(PhysAddr(pa))
    }

    unsafe fn free(&self, _: PhysAddr, _: usize) {
        let n = self.freed.load(Ordering::Relaxed);
        self.freed.store(n + 1, Ordering::Relaxed);
    }

    fn phys_to_virt(&self, pa: PhysAddr) -> *mut u8 {
        pa.0 as *mut u8
    }
}

type Unit<'p> = VtdUnit<MmioRegion, &'p TablePool>;

impl TablePool {
    /// A pool of [`TABLE_FRAMES`] frames taken from `frames`.
    fn new(frames: &mut FrameAllocator) -> Result<Self, Error> {
        Ok(Self {
            block: frames.alloc(TABLE_FRAMES)?,
            next: AtomicUsize::new(0),
            freed: AtomicUsize::new(0),
        })
    }
}

/// The unit whose registers `drhd` describes, with its tables from `pool`;
/// in scalable mode if `scalable` and the unit offers it.
fn open_unit<'p>(
    dmar: &Dmar,
    drhd: &Drhd<'_>,
    pool: &'p TablePool,
    scalable: bool,
) -> Result<Unit<'p>, Error> {
    if !platform::arch::cpu_can_reach(drhd.register_base, drhd.register_size()) {
        return Err(Error::Check(
            "unit registers not mapped",
            drhd.register_base,
        ));
    }
    // SAFETY: the DRHD's register block, identity mapped and uncached by the
    // boot stub (above 2 GiB), programmed by nobody else.
    let regs = unsafe {
        MmioRegion::new(
            drhd.register_base as usize as *mut u8,
            drhd.register_size() as usize,
        )
    };
    let offered = Features::read(&regs)
        .map_err(VtdError::Register)?
        .ecap
        .scalable_mode();
    let config = UnitConfig {
        register_size: drhd.register_size() as usize,
        walk_cache: Some(&CLFLUSH),
        address_width: Some(dmar.address_bits()),
        scalable: scalable && offered,
        ..UnitConfig::default()
    };
    Ok(VtdUnit::new(regs, pool, config)?)
}

/// Writes CPU caches back for a unit whose table walks do not snoop them
/// (ECAP.C = 0, as QEMU reports): `clflush` per 64-byte line, `mfence` to
/// complete. (Clean is all a walker needs: device writes snoop on x86.)
#[derive(Clone, Copy)]
struct Clflush;

impl iova_core::CacheMaintenance for Clflush {
    fn is_coherent(&self) -> bool {
        false
    }
    fn clean(&self, pa: PhysAddr, len: u64) {
        let start = pa.0 & !63;
        for line in (start..pa.0.saturating_add(len)).step_by(64) {
            flush_line(line);
        }
    }
    fn invalidate(&self, _: PhysAddr, _: u64) {}
    fn complete(&self) {
        platform::arch::dma_barrier();
    }
}

#[cfg(target_arch = "x86_64")]
fn flush_line(pa: u64) {
    // SAFETY: `pa` is identity-mapped memory of a table or queue we own;
    // clflush writes the line back and has no other effect.
    unsafe {
        core::arch::asm!("clflush [{}]", in(reg) pa as usize, options(nostack, preserves_flags))
    };
}

#[cfg(not(target_arch = "x86_64"))]
fn flush_line(_: u64) {}

static CLFLUSH: Clflush = Clflush;

fn vtd_bdf(b: pci::Bdf) -> Bdf {
    Bdf::new(b.bus, b.device, b.function)
}

/// A PCI bridge's secondary and subordinate bus numbers, for DMAR scopes.
fn bridge_buses(host: &PciHost, b: Bdf) -> Option<(u8, u8)> {
    let bdf = pci::Bdf::new(b.bus, b.device, b.function)?;
    let ecam = host.ecam();
    let f = ecam.function(bdf)?;
    (f.header_type & 0x7f == 1).then(|| (ecam.read8(bdf, 0x19), ecam.read8(bdf, 0x1a)))
}

fn print_structure(s: &Structure<'_>) {
    let scopes = match s {
        Structure::Drhd(u) => {
            println!(
                "{NAME}: DRHD: registers {:#x}, segment {}, flags {:#x}",
                u.register_base, u.segment, u.flags
            );
            u.scopes
        }
        Structure::Rmrr(r) => {
            println!("{NAME}: RMRR: {:#x}..={:#x}", r.base, r.limit);
            r.scopes
        }
        Structure::Atsr(a) => {
            println!("{NAME}: ATSR: flags {:#x}", a.flags);
            a.scopes
        }
        other => {
            println!("{NAME}: {other:?}");
            return;
        }
    };
    for scope in scopes {
        match scope {
            Ok(sc) => {
                print!(
                    "{NAME}:   scope {:?}, id {}, bus {:#04x}, path",
                    sc.kind, sc.enumeration_id, sc.start_bus
                );
                for (d, f) in sc.path() {
                    print!(" {d:02x}.{f}");
                }
                println!();
            }
            Err(e) => println!("{NAME}:   malformed scope: {e:?}"),
        }
    }
}

/// Which checks to run: `vtd-edu.checks=1,3` on the kernel command line
/// (`-append`) selects some; all run without it.
fn selected_checks(boot: &BootInfo) -> [bool; 10] {
    let mut all = [true; 10];
    let line = platform::cmdline::command_line(boot);
    let Some(list) = line
        .split(' ')
        .find_map(|w| w.strip_prefix("vtd-edu.checks="))
    else {
        return all;
    };
    all = [false; 10];
    for n in list.split(',').filter_map(|n| n.parse::<usize>().ok()) {
        if let Some(c) = all.get_mut(n) {
            *c = true;
        }
    }
    all
}

/// Vector the fault event interrupt is programmed with (check 8).
const FAULT_VECTOR: u8 = 0x51;

/// The local APIC, software-enabled: its ID and a reader of its interrupt
/// request register (is a vector pending?).
#[cfg(target_arch = "x86_64")]
fn local_apic() -> Option<(u8, impl Fn(u8) -> bool)> {
    const BASE: usize = 0xfee0_0000;
    const SVR: usize = 0xf0;
    // SAFETY: q35's local APIC, identity mapped (uncached) by the boot stub;
    // reading the ID and setting the software-enable bit of the spurious
    // vector register has no other effect (interrupts stay disabled).
    let id = unsafe {
        let svr = platform::mmio::read32(BASE + SVR);
        platform::mmio::write32(BASE + SVR, svr | 1 << 8 | 0xff);
        (platform::mmio::read32(BASE + 0x20) >> 24) as u8
    };
    let irr = |v: u8| {
        let reg = BASE + 0x200 + 0x10 * usize::from(v / 32);
        // SAFETY: reading an IRR register has no side effects.
        let word = unsafe { platform::mmio::read32(reg) };
        word & 1 << (v % 32) != 0
    };
    Some((id, irr))
}

#[cfg(not(target_arch = "x86_64"))]
fn local_apic() -> Option<(u8, impl Fn(u8) -> bool)> {
    None::<(u8, fn(u8) -> bool)>
}

fn pattern(page: u64, i: usize) -> u8 {
    (i.wrapping_mul(131) ^ (page as usize).wrapping_mul(37) ^ 0xa5) as u8
}

/// The faults recorded since the last call; exactly one expected.
fn one_fault(unit: &Unit<'_>) -> Result<FaultRecord, Error> {
    let mut first = None;
    let summary = unit.drain_faults(|r| {
        first.get_or_insert(r);
    })?;
    match first {
        Some(r) if summary.records == 1 && !summary.overflow => Ok(r),
        _ => Err(Error::Check(
            "expected exactly one fault record",
            summary.records as u64,
        )),
    }
}

fn check_fault(
    r: &FaultRecord,
    source: Bdf,
    address: u64,
    reasons: &[FaultReason],
    access: AccessKind,
) -> Result<(), Error> {
    if r.source != source {
        return Err(Error::Check(
            "fault from the wrong source",
            u64::from(r.source.source_id()),
        ));
    }
    if r.address != address & !0xfff {
        return Err(Error::Check("fault at the wrong address", r.address));
    }
    if !reasons.contains(&r.reason) {
        return Err(Error::Check(
            "fault with the wrong reason",
            u64::from(r.reason.code()),
        ));
    }
    if r.access != access {
        return Err(Error::Check("fault with the wrong access type", r.address));
    }
    Ok(())
}

fn main(boot: &BootInfo) -> Result<(), Error> {
    platform::banner(NAME, boot);
    if let Some(scenario) = blk::scenario(boot) {
        return blk::run(boot, scenario).map_err(Error::Blk);
    }
    #[cfg(target_arch = "x86_64")]
    if let Some(scenario) = ir::scenario(boot) {
        return ir::run(boot, scenario);
    }

    // Discovery: RSDP from the PVH start info -> DMAR.
    let rsdp = rsdp(boot).ok_or(Error::NoStartInfo)?;
    let dmar = Dmar::parse(acpi::find_table(&IdentityMapped, rsdp, *b"DMAR")?)?;
    println!(
        "{NAME}: DMAR via RSDP {rsdp:#x}: host address width {} bits, flags {:#x}",
        dmar.address_bits(),
        dmar.flags
    );
    for s in dmar.structures() {
        print_structure(&s);
    }

    let mut edu = platform::setup::open_edu(boot, NAME)?;
    let host = pci::discover(boot)?;
    let mut edus = host
        .functions()
        .filter(|f| (f.vendor, f.device) == (edu::VENDOR_ID, edu::DEVICE_ID));
    let edu_pci = edus.next().ok_or(SetupError::NoEdu)?.bdf;
    let second_pci = edus.next().map(|f| f.bdf);
    let edu_bdf = vtd_bdf(edu_pci);
    let drhd = dmar
        .unit_for(0, edu_bdf, |b| bridge_buses(&host, b))
        .ok_or(Error::NoUnit(edu_bdf))?;
    println!(
        "{NAME}: {edu_bdf} is covered by the unit at {:#x} ({} KiB registers{})",
        drhd.register_base,
        drhd.register_size() >> 10,
        if drhd.include_pci_all() {
            ", INCLUDE_PCI_ALL"
        } else {
            ", explicit scope"
        }
    );

    let mut frames = FrameAllocator::take().ok_or(Error::Check("frame pool taken", 0))?;
    let pool = TablePool::new(&mut frames)?;
    // Scalable mode where the unit has it (x-scalable-mode=on), and then
    // first-level translation where it has that (x-flts=on).
    let unit = open_unit(&dmar, &drhd, &pool, true)?;
    println!("{NAME}: {}", unit.features());
    let first_level = unit.scalable() && unit.features().ecap.first_level_translation();
    let mode = match (unit.scalable(), first_level) {
        (false, _) => "legacy mode, second-level",
        (true, false) => "scalable mode, second-level (RID_PASID entry)",
        (true, true) => "scalable mode, first-level x86-64 (RID_PASID entry)",
    };
    println!("{NAME}: translation mode: {mode}");
    let env = Env {
        boot,
        edu: &mut edu,
        frames: &mut frames,
        host: &host,
        edu_bdf,
        second_pci,
        pool: &pool,
        dmar: &dmar,
    };
    // The domain's tables come from the pool and get the unit's cache
    // maintenance; dropping it (at the end) detaches edu before they go.
    if first_level {
        let domain = unit.first_level_domain(&pool, 0)?;
        unit.attach(edu_bdf, &domain)?;
        demo!(
            "iommu",
            "Intel VT-d at {:#x} (from ACPI DMAR), {mode}, {}-bit IOVAs (the lower canonical half)",
            drhd.register_base,
            domain.table().ia_bits()
        );
        checks(env, &unit, &domain, "first-level tables")
    } else {
        let domain = unit.second_level_domain(&pool, 4)?;
        unit.attach(edu_bdf, &domain)?;
        let format = *domain.table().format();
        let levels = format.levels();
        demo!(
            "iommu",
            "Intel VT-d at {:#x} (from ACPI DMAR), {mode}, {levels}-level tables ({}-bit IOVAs)",
            drhd.register_base,
            format.ia_bits()
        );
        let desc: &str = if levels == 3 {
            "3-level tables"
        } else {
            "4-level tables"
        };
        checks(env, &unit, &domain, desc)
    }
}

/// What the checks use besides the unit and the domain.
struct Env<'a, 'p> {
    boot: &'a BootInfo,
    edu: &'a mut Edu,
    frames: &'a mut FrameAllocator,
    host: &'a PciHost,
    edu_bdf: Bdf,
    second_pci: Option<pci::Bdf>,
    pool: &'p TablePool,
    dmar: &'a Dmar<'a>,
}

type Domain<'u, 'p, F> = VtdDomain<'u, MmioRegion, &'p TablePool, &'p TablePool, F>;

/// Checks 1-9 over `domain`, which `edu` is attached to.
fn checks<F: VtdFormat>(
    env: Env<'_, '_>,
    unit: &Unit<'_>,
    domain: &Domain<'_, '_, F>,
    desc: &str,
) -> Result<(), Error> {
    let Env {
        boot,
        edu,
        frames,
        host,
        edu_bdf,
        second_pci,
        pool,
        dmar,
    } = env;
    let run = selected_checks(boot);
    unit.enable_translation()?;
    println!(
        "{NAME}: {edu_bdf} attached to domain {}; translation enabled",
        domain.did()
    );

    let mut slots = [const { ExtentSlot::new() }; 32];
    let mut cpus = [const { CpuCache::new() }; 1];
    let aperture = IovaRange::new(Iova(APERTURE), 1 << 32).map_err(CoreError::from)?;
    let iovas = IovaAllocator::new(
        IovaAllocatorConfig::new(aperture, PAGE),
        &mut slots,
        &mut cpus,
    )
    .map_err(CoreError::from)?;
    let cpu = || 0;
    let mapper = DmaMapper::new(domain, &iovas, &cpu)?;
    // Reserved memory regions naming edu (QEMU's DMAR has none): kept out of
    // the IOVA space and identity mapped before the device's DMA starts.
    for (base, len) in reserved_regions_for(dmar, 0, edu_bdf, |b| bridge_buses(host, b)) {
        let range = IovaRange::new(Iova(base), len).map_err(CoreError::from)?;
        iovas.reserve(range).map_err(CoreError::from)?;
    }
    let mut gather = IotlbGather::new();
    let rmrr = map_reserved_regions(
        dmar,
        0,
        edu_bdf,
        |b| bridge_buses(host, b),
        domain,
        &mut gather,
    );
    domain.flush(&mut gather)?;
    let rmrr = rmrr?;
    println!(
        "{NAME}: reserved memory regions for {edu_bdf}: {} identity mapped, {} malformed skipped",
        rmrr.mapped, rmrr.malformed
    );

    // 1. One buffer each way, at IOVAs unrelated to their physical addresses.
    let mut src = frames.alloc(1)?;
    let mut dst = frames.alloc(1)?;
    for (i, b) in src.as_mut_slice().iter_mut().enumerate() {
        *b = pattern(1000, i);
    }
    dst.as_mut_slice().fill(0);
    let src_map = mapper.map(PhysAddr(src.phys()), PAGE, Prot::READ)?;
    let sink = mapper.map(PhysAddr(dst.phys()), PAGE, Prot::WRITE)?;
    if src_map.addr().0 == src.phys() || sink.addr().0 == dst.phys() {
        return Err(Error::Check(
            "IOVA equals the physical address",
            sink.addr().0,
        ));
    }
    if run[1] {
        // SAFETY: the device reads `src` and writes `dst` through the IOMMU;
        // both are ours and the CPU does not touch them during the transfers.
        unsafe {
            edu.dma_to_device(src_map.addr().0, 0, edu::BUFFER_SIZE)?;
            edu.dma_from_device(0, sink.addr().0, edu::BUFFER_SIZE)?;
        }
        platform::arch::dma_barrier();
        if let Some(i) = (0..FRAME_SIZE).find(|&i| dst.as_mut_slice()[i] != pattern(1000, i)) {
            return Err(Error::Check("byte came back wrong", i as u64));
        }
        println!(
            "{NAME}: check 1 OK: 4096 bytes RAM {:#x} (IOVA {:#x}) -> edu -> RAM {:#x} (IOVA {:#x})",
            src.phys(),
            src_map.addr(),
            dst.phys(),
            sink.addr()
        );
        demo!(
            "mapped",
            "source page {:#x} at IOVA {:#x} (read-only), sink page {:#x} at IOVA {:#x} (write-only)",
            src.phys(),
            src_map.addr(),
            dst.phys(),
            sink.addr()
        );
    }

    // 2. 64 scattered pages, one sync; a slice of each DMA'd into edu.
    if run[2] {
        let mut pages = frames.alloc(2 * SCATTERED as usize)?;
        let base = pages.phys();
        let piece = |p: u64| PhysAddr(base + 2 * (SCATTERED - 1 - p) * PAGE);
        for p in 0..SCATTERED {
            let off = (piece(p).0 - base) as usize;
            for (i, b) in pages.as_mut_slice()[off..off + FRAME_SIZE]
                .iter_mut()
                .enumerate()
            {
                *b = pattern(p, i);
            }
        }
        let mut state = mapper.try_alloc_with(
            SCATTERED * PAGE,
            PAGE,
            heapless::Vec::<_, { SCATTERED as usize }>::new(),
        )?;
        let before = unit.counters().snapshot();
        for p in 0..SCATTERED {
            state.link(p * PAGE, piece(p), PAGE, Prot::READ)?;
        }
        state.sync()?;
        let link = unit.counters().snapshot().since(&before);
        let slot = edu::BUFFER_SIZE as u64 / SCATTERED;
        for p in 0..SCATTERED {
            // Slot p of edu's buffer gets bytes [p * slot, (p + 1) * slot) of page p.
            let iova = state.dma_addr(p * PAGE + p * slot)?;
            // SAFETY: the device reads a linked page of `pages`, ours and unchanged.
            unsafe { edu.dma_to_device(iova.0, (p * slot) as u32, slot as u32)? };
        }
        dst.as_mut_slice().fill(0);
        // SAFETY: the device writes `dst` through the sink mapping.
        unsafe { edu.dma_from_device(0, sink.addr().0, edu::BUFFER_SIZE)? };
        platform::arch::dma_barrier();
        for i in 0..FRAME_SIZE {
            let p = i as u64 / slot;
            if dst.as_mut_slice()[i] != pattern(p, i) {
                return Err(Error::Check("scattered page byte wrong", i as u64));
            }
        }
        let before = unit.counters().snapshot();
        state.unlink(0, SCATTERED * PAGE)?;
        state.sync()?;
        let unlink = unit.counters().snapshot().since(&before);
        if unlink.waits != 1 || unlink.iotlb() != 1 {
            return Err(Error::Check(
                "unlink of 64 pages: not one IOTLB descriptor + one wait",
                unlink.iotlb(),
            ));
        }
        println!(
            "{NAME}: check 2 OK: {SCATTERED} scattered pages linked + one sync ({} waits, {} descriptors), DMA from each; unlink + sync: {} IOTLB descriptor ({} page-selective, {} PASID-based), {} wait",
            link.waits,
            link.iotlb() + link.context,
            unlink.iotlb(),
            unlink.iotlb_page,
            unlink.pasid_iotlb,
            unlink.waits
        );
        state.destroy().map_err(|r| r.error)?;
        demo!(
            "dma",
            "4 KiB RAM -> edu -> RAM through IOVAs; {SCATTERED} scattered pages linked with one sync and read by edu; unlinked with {} descriptor + 1 wait",
            unlink.iotlb()
        );
    }

    // 3. Unmap the sink after edu wrote through it (so QEMU has it cached),
    //    then DMA to its old IOVA: blocked, bytes unchanged, fault recorded.
    if run[3] {
        dst.as_mut_slice().fill(0);
        // SAFETY: the device reads `src` and writes `dst`, both ours.
        unsafe {
            edu.dma_to_device(src_map.addr().0, 0, edu::BUFFER_SIZE)?;
            edu.dma_from_device(0, sink.addr().0, edu::BUFFER_SIZE)?;
        }
        platform::arch::dma_barrier();
        if dst.as_mut_slice()[..16] != core::array::from_fn::<u8, 16, _>(|i| pattern(1000, i)) {
            return Err(Error::Check(
                "write through the sink did not arrive",
                sink.addr().0,
            ));
        }
    }
    let old_sink = sink.addr();
    mapper.unmap(sink).map_err(|r| r.error)?;
    if run[3] {
        dst.as_mut_slice().fill(0x5a);
        platform::arch::dma_barrier();
        // SAFETY: the IOVA is unmapped; if the IOMMU let it through it would
        // only reach `dst`, which we own and do not hold references into.
        unsafe { edu.dma_from_device(0, old_sink.0, edu::BUFFER_SIZE)? };
        platform::arch::dma_barrier();
        if dst.as_mut_slice().iter().any(|&b| b != 0x5a) {
            return Err(Error::Check(
                "DMA to an unmapped IOVA reached memory",
                old_sink.0,
            ));
        }
        let f3 = one_fault(unit)?;
        check_fault(
            &f3,
            edu_bdf,
            old_sink.0,
            &[FaultReason::WriteDenied, FaultReason::FirstLevelNotPresent],
            AccessKind::Write,
        )?;
        println!(
            "{NAME}: check 3 OK: after unmap + sync, a write to IOVA {old_sink:#x} was blocked, memory unchanged; {f3}"
        );
        demo!("fault", "{f3}");
    }

    // 4. A read-only mapping written by the device.
    if run[4] {
        let mut ro = frames.alloc(1)?;
        ro.as_mut_slice().fill(0x33);
        let ro_map = mapper.map(PhysAddr(ro.phys()), PAGE, Prot::READ)?;
        // SAFETY: the mapping is read-only; a write would only reach `ro`.
        unsafe { edu.dma_from_device(0, ro_map.addr().0, edu::BUFFER_SIZE)? };
        platform::arch::dma_barrier();
        if ro.as_mut_slice().iter().any(|&b| b != 0x33) {
            return Err(Error::Check(
                "write through a read-only mapping reached memory",
                ro_map.addr().0,
            ));
        }
        let f4 = one_fault(unit)?;
        check_fault(
            &f4,
            edu_bdf,
            ro_map.addr().0,
            &[FaultReason::WriteDenied, FaultReason::ScalableWriteDenied],
            AccessKind::Write,
        )?;
        println!(
            "{NAME}: check 4 OK: write to read-only IOVA {:#x} blocked, memory unchanged; {f4}",
            ro_map.addr()
        );
        mapper.unmap(ro_map).map_err(|r| r.error)?;
    }

    // 5. A second edu with no context entry.
    match second_pci.filter(|_| run[5]) {
        Some(b) => {
            let bar = host.bar(b, 0)?;
            // SAFETY: the second edu's BAR0 as SeaBIOS assigned it; it DMAs
            // only when we start it, at an address whose page we own.
            unsafe { host.enable(b, CMD_MEMORY | CMD_BUS_MASTER)? };
            // SAFETY: BAR0 of an edu function, decoding, used by nobody else.
            let mut other = unsafe { Edu::new(bar.cpu_addr as usize) };
            other.check()?;
            let mut target = frames.alloc(1)?;
            target.as_mut_slice().fill(0x77);
            platform::arch::dma_barrier();
            // SAFETY: untranslated this would write `target`, which we own.
            unsafe { other.dma_from_device(0, target.phys(), 64)? };
            platform::arch::dma_barrier();
            if target.as_mut_slice().iter().any(|&b| b != 0x77) {
                return Err(Error::Check(
                    "device without a context entry reached memory",
                    target.phys(),
                ));
            }
            let f5 = one_fault(unit)?;
            let source = vtd_bdf(b);
            if f5.source != source
                || !matches!(
                    f5.reason,
                    FaultReason::ContextNotPresent | FaultReason::RootNotPresent
                )
            {
                return Err(Error::Check(
                    "wrong fault for the unattached device",
                    u64::from(f5.reason.code()),
                ));
            }
            println!(
                "{NAME}: check 5 OK: {source} has no context entry: its DMA was blocked; {f5}"
            );
        }
        None if run[5] => {
            println!("{NAME}: check 5 skipped: no second edu (add another -device edu)")
        }
        None => {}
    }

    // 7. Pass-through (where ECAP.PT): the second edu's DMA is untranslated.
    match second_pci.filter(|_| run[7]) {
        Some(b) if unit.features().ecap.pass_through() => {
            let source = vtd_bdf(b);
            unit.pass_through(source)?;
            let bar = host.bar(b, 0)?;
            // SAFETY: the second edu's BAR0 as SeaBIOS assigned it; it DMAs
            // only when we start it, between pages we own.
            unsafe { host.enable(b, CMD_MEMORY | CMD_BUS_MASTER)? };
            // SAFETY: BAR0 of an edu function, decoding, used by nobody else.
            let mut other = unsafe { Edu::new(bar.cpu_addr as usize) };
            other.check()?;
            let mut from = frames.alloc(1)?;
            let mut to = frames.alloc(1)?;
            for (i, b) in from.as_mut_slice().iter_mut().enumerate() {
                *b = pattern(3000, i);
            }
            to.as_mut_slice().fill(0);
            // SAFETY: untranslated, the device reads `from` and writes `to`,
            // both ours, by physical address.
            unsafe {
                other.dma_to_device(from.phys(), 0, edu::BUFFER_SIZE)?;
                other.dma_from_device(0, to.phys(), edu::BUFFER_SIZE)?;
            }
            platform::arch::dma_barrier();
            if let Some(i) = (0..FRAME_SIZE).find(|&i| to.as_mut_slice()[i] != pattern(3000, i)) {
                return Err(Error::Check("pass-through byte wrong", i as u64));
            }
            // Back to blocked.
            unit.block(source)?;
            println!(
                "{NAME}: check 7 OK: {source} in pass-through: 4096 bytes RAM {:#x} -> edu -> RAM {:#x} by physical address; blocked again after",
                from.phys(),
                to.phys()
            );
        }
        Some(_) => println!("{NAME}: check 7 skipped: no pass-through (ECAP.PT = 0)"),
        None if run[7] => {
            println!("{NAME}: check 7 skipped: no second edu (add another -device edu)")
        }
        None => {}
    }

    // 8. Fault events as interrupts: the unit's MSI lands in the local
    //    APIC (interrupts stay disabled, so it waits in the IRR).
    if run[8] {
        let Some((apic_id, irr)) = local_apic() else {
            return Err(Error::Check("no local APIC", 0));
        };
        let vector = FAULT_VECTOR;
        if irr(vector) {
            return Err(Error::Check(
                "fault vector already pending",
                u64::from(vector),
            ));
        }
        unit.enable_fault_interrupt(0xfee0_0000 | u64::from(apic_id) << 12, u32::from(vector))?;
        let nowhere = Iova(APERTURE + (1 << 32) - PAGE);
        // SAFETY: nothing is mapped there; the read is blocked.
        unsafe { edu.dma_to_device(nowhere.0, 0, 64)? };
        let raised = platform::time::poll_until(1000, || irr(vector).then_some(())).is_ok();
        let f8 = one_fault(unit)?;
        unit.disable_fault_interrupt()?;
        check_fault(
            &f8,
            edu_bdf,
            nowhere.0,
            &[FaultReason::ReadDenied, FaultReason::FirstLevelNotPresent],
            AccessKind::Read,
        )?;
        if !raised {
            return Err(Error::Check(
                "fault event interrupt did not arrive",
                u64::from(vector),
            ));
        }
        println!(
            "{NAME}: check 8 OK: the fault ({f8}) raised vector {vector:#x} at local APIC {apic_id} (IRR)"
        );
    }

    // 6. A 2 MiB superpage.
    let has_2m = domain.table().page_sizes() & SUPERPAGE != 0;
    if run[6] && has_2m {
        let in_ram = boot
            .ram()
            .iter()
            .any(|&(b, s)| b <= SUPERPAGE_PA && SUPERPAGE_PA + SUPERPAGE <= b + s);
        let (img_start, img_end) = platform::image_range();
        if !in_ram || (img_start < SUPERPAGE_PA + SUPERPAGE && SUPERPAGE_PA < img_end) {
            return Err(Error::Check(
                "superpage test memory not free RAM",
                SUPERPAGE_PA,
            ));
        }
        let last = SUPERPAGE_PA + SUPERPAGE - PAGE;
        for i in 0..FRAME_SIZE {
            // SAFETY: free RAM (checked above), identity mapped, used by nobody.
            unsafe { ((last as usize + i) as *mut u8).write_volatile(pattern(2000, i)) };
        }
        let mut big = mapper.try_alloc_with(SUPERPAGE, SUPERPAGE, heapless::Vec::<_, 1>::new())?;
        big.link(0, PhysAddr(SUPERPAGE_PA), SUPERPAGE, Prot::READ)?;
        big.sync()?;
        let size = domain
            .table()
            .translate(big.iova())
            .map(|t| t.page_size)
            .unwrap_or(0);
        if size != SUPERPAGE {
            return Err(Error::Check("2 MiB link did not use a superpage", size));
        }
        let sink = mapper.map(PhysAddr(dst.phys()), PAGE, Prot::WRITE)?;
        dst.as_mut_slice().fill(0);
        // SAFETY: the device reads the superpage (our free RAM) and writes `dst`.
        unsafe {
            edu.dma_to_device(big.dma_addr(SUPERPAGE - PAGE)?.0, 0, edu::BUFFER_SIZE)?;
            edu.dma_from_device(0, sink.addr().0, edu::BUFFER_SIZE)?;
        }
        platform::arch::dma_barrier();
        if let Some(i) = (0..FRAME_SIZE).find(|&i| dst.as_mut_slice()[i] != pattern(2000, i)) {
            return Err(Error::Check("superpage byte wrong", i as u64));
        }
        println!(
            "{NAME}: check 6 OK: 2 MiB at IOVA {:#x} -> {SUPERPAGE_PA:#x} is one superpage; DMA from its last page checked",
            big.iova()
        );
        big.destroy().map_err(|r| r.error)?;
        mapper.unmap(sink).map_err(|r| r.error)?;
    } else if run[6] {
        println!("{NAME}: check 6 skipped: the format has no 2 MiB pages here");
    }

    // 9. The last page the domain maps, from an allocator whose aperture is
    // just that page at the top of the table's input range.
    if run[9] {
        let end = domain.table().input_range().end.0;
        let last = IovaRange::new(Iova(end - PAGE), PAGE).map_err(CoreError::from)?;
        let mut slots = [const { ExtentSlot::new() }; 2];
        let mut cpus = [const { CpuCache::new() }; 1];
        let top = IovaAllocator::new(IovaAllocatorConfig::new(last, PAGE), &mut slots, &mut cpus)
            .map_err(CoreError::from)?;
        let top_mapper = DmaMapper::new(domain, &top, &cpu)?;
        let mut buf = frames.alloc(1)?;
        for (i, b) in buf.as_mut_slice().iter_mut().enumerate() {
            *b = pattern(9000, i);
        }
        let m = top_mapper.map(PhysAddr(buf.phys()), PAGE, Prot::RW)?;
        if m.addr() != last.start {
            return Err(Error::Check("not the last page", m.addr().0));
        }
        // SAFETY: the device reads and then writes `buf` through the IOMMU;
        // it is ours, and the CPU touches it only between the transfers.
        unsafe { edu.dma_to_device(m.addr().0, 0, edu::BUFFER_SIZE)? };
        platform::arch::dma_barrier();
        buf.as_mut_slice().fill(0);
        platform::arch::dma_barrier();
        // SAFETY: as above.
        unsafe { edu.dma_from_device(0, m.addr().0, edu::BUFFER_SIZE)? };
        platform::arch::dma_barrier();
        if let Some(i) = (0..FRAME_SIZE).find(|&i| buf.as_mut_slice()[i] != pattern(9000, i)) {
            return Err(Error::Check(
                "byte at the last IOVA came back wrong",
                i as u64,
            ));
        }
        let at = m.addr();
        top_mapper.unmap(m).map_err(|r| r.error)?;
        println!(
            "{NAME}: check 9 OK: 4096 bytes RAM {:#x} -> edu -> RAM through IOVA {at:#x}, the last page below 1 << {} ({desc})",
            buf.phys(),
            domain.table().ia_bits()
        );
    }

    mapper.unmap(src_map).map_err(|r| r.error)?;
    let stray = unit.drain_faults(|r| println!("{NAME}: unexpected fault: {r}"))?;
    if stray.records != 0 || stray.overflow {
        return Err(Error::Check("unexpected faults", stray.records as u64));
    }
    let c = unit.counters().snapshot();
    println!(
        "{NAME}: counters: {} context, {} PASID-cache, {} IOTLB global, {} domain, {} page-selective, {} PASID-based, {} waits, {} faults read, {} queue errors; {} table frames used",
        c.context,
        c.pasid_cache,
        c.iotlb_global,
        c.iotlb_domain,
        c.iotlb_page,
        c.pasid_iotlb,
        c.waits,
        c.faults,
        c.queue_errors,
        pool.next.load(Ordering::Relaxed)
    );

    let ran = (1..10).filter(|&n| run[n]).count();
    if ran == 9 {
        println!("{NAME}: all checks passed with {desc}");
    } else {
        println!("{NAME}: {ran} selected check(s) passed with {desc}");
    }
    demo!("result", "OK");
    Ok(())
}

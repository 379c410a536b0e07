//! `two-step-sw`: iova-core's two-step API running bare-metal, no heap.
//!
//! QEMU here has no IOMMU, so the "IOMMU" is software: an iova-core
//! `PageTable` (Arm LPAE stage 1 on aarch64, x86-64 4-level on x86_64) whose
//! tables come from the platform's frame pool, and the CPU walks it
//! (`PageTable::translate`) to turn each IOVA into the bus address handed to
//! the `edu` device. It proves the crate links and runs on both bare-metal
//! targets with caller-provided storage, and exercises reserve -> link
//! scattered pages -> one sync -> DMA -> unlink -> sync -> destroy.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

use core::fmt;
use core::sync::atomic::{AtomicUsize, Ordering};

use iova_core::iova_alloc::{CpuCache, ExtentSlot, IovaAllocatorConfig};
use iova_core::{
    DmaMapper, Error as CoreError, FrameAllocator as TableFrames, IotlbGather, IotlbInvalidate,
    Iova, IovaAllocator, IovaRange, PageTable, PageTableDomain, PhysAddr, Prot,
};
use platform::edu::{self, EduError};
use platform::frames::{FRAME_SIZE, FrameAllocator, Frames, FramesError};
use platform::setup::SetupError;
use platform::{BootInfo, demo, println};

platform::entry!(main);

const NAME: &str = "two-step-sw";
const PAGE: u64 = FRAME_SIZE as u64;
/// Pages linked into the state, scattered over twice as many frames.
const PAGES: u64 = 4;
/// Frames for page tables.
const TABLE_FRAMES: usize = 16;

#[cfg(target_arch = "aarch64")]
type Format = iova_core::formats::lpae::LpaeS1;
#[cfg(target_arch = "aarch64")]
const FORMAT: (&str, fn() -> Format) = ("LPAE stage 1", Format::va48);
#[cfg(target_arch = "x86_64")]
type Format = iova_core::formats::x86_64::X86_64;
#[cfg(target_arch = "x86_64")]
const FORMAT: (&str, fn() -> Format) = ("x86-64 4-level", Format::four_level);

#[derive(Debug)]
enum Error {
    Setup(SetupError),
    Edu(EduError),
    Frames(FramesError),
    Core(CoreError),
    NoFrameAllocator,
    Check(&'static str, u64),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Setup(e) => write!(f, "{e}"),
            Self::Edu(e) => write!(f, "{e}"),
            Self::Frames(e) => write!(f, "{e}"),
            Self::Core(e) => write!(f, "iova-core: {e}"),
            Self::NoFrameAllocator => f.write_str("frame allocator already taken"),
            Self::Check(what, at) => write!(f, "{what} (at {at:#x})"),
        }
    }
}

impl From<SetupError> for Error {
    fn from(e: SetupError) -> Self {
        Self::Setup(e)
    }
}
impl From<EduError> for Error {
    fn from(e: EduError) -> Self {
        Self::Edu(e)
    }
}
impl From<FramesError> for Error {
    fn from(e: FramesError) -> Self {
        Self::Frames(e)
    }
}
impl From<CoreError> for Error {
    fn from(e: CoreError) -> Self {
        Self::Core(e)
    }
}

/// Page-table frames for iova-core: a bump allocator over one block of the
/// platform pool. Single CPU with interrupts masked, so plain loads and
/// stores suffice (no read-modify-write atomics on Device memory, MMU off).
struct TablePool {
    block: Frames,
    next: AtomicUsize,
    freed: AtomicUsize,
}

// SAFETY: frames are 4 KiB-aligned slices of a block this program owns,
// handed out once each and zeroed here; the pool is identity mapped, so the
// physical address is the pointer. Tables never ask for more than 4 KiB.
unsafe impl TableFrames for TablePool {
    fn alloc_zeroed(&self, size: usize) -> Option<PhysAddr> {
        let i = self.next.load(Ordering::Relaxed);
        if size > FRAME_SIZE || !size.is_power_of_two() || i >= self.block.len() / FRAME_SIZE {
            return None;
        }
        self.next.store(i + 1, Ordering::Relaxed);
        let pa = self.block.phys() + (i * FRAME_SIZE) as u64;
        // SAFETY: inside our block, handed out for the first time just now.
        unsafe { core::ptr::write_bytes(pa as *mut u8, 0, FRAME_SIZE) };
        Some(PhysAddr(pa))
    }

    unsafe fn free(&self, _: PhysAddr, _: usize) {
        // A bump pool does not reuse frames; count them for the report.
        let n = self.freed.load(Ordering::Relaxed);
        self.freed.store(n + 1, Ordering::Relaxed);
    }

    fn phys_to_virt(&self, pa: PhysAddr) -> *mut u8 {
        pa.0 as *mut u8
    }
}

/// The software IOMMU's "IOTLB": there is none, so invalidation only counts.
struct Flushes(AtomicUsize);

// SAFETY: nothing caches translations or table pointers: the device's
// addresses are looked up with `PageTable::translate`, which walks the
// tables in memory every time.
unsafe impl IotlbInvalidate for Flushes {
    fn invalidate(&self, _: &IotlbGather) -> Result<(), CoreError> {
        let n = self.0.load(Ordering::Relaxed);
        self.0.store(n + 1, Ordering::Relaxed);
        Ok(())
    }
}

fn pattern(page: u64, i: usize) -> u8 {
    (i.wrapping_mul(167) ^ (page as usize).wrapping_mul(29) ^ 0x5a) as u8
}

fn main(boot: &BootInfo) -> Result<(), Error> {
    platform::banner(NAME, boot);
    let (format_name, format) = FORMAT;
    demo!(
        "iommu",
        "software: an iova-core PageTable ({format_name}) that the CPU walks for the device"
    );
    let mut edu = platform::setup::open_edu(boot, NAME)?;

    let mut frames = FrameAllocator::take().ok_or(Error::NoFrameAllocator)?;
    let pool = TablePool {
        block: frames.alloc(TABLE_FRAMES)?,
        next: AtomicUsize::new(0),
        freed: AtomicUsize::new(0),
    };
    let table = PageTable::new(format(), &pool)?;
    let domain = PageTableDomain::new(table, Flushes(AtomicUsize::new(0)));
    let flushes = || domain.invalidator().0.load(Ordering::Relaxed);

    let mut slots = [const { ExtentSlot::new() }; 16];
    let mut cpus = [const { CpuCache::new() }; 1];
    // An aperture far from RAM, so every IOVA differs from its physical address.
    let aperture = IovaRange::new(Iova(0x80_0000_0000), 1 << 32).map_err(CoreError::from)?;
    let iovas = IovaAllocator::new(
        IovaAllocatorConfig::new(aperture, PAGE),
        &mut slots,
        &mut cpus,
    )
    .map_err(CoreError::from)?;
    let cpu = || 0;
    let mapper = DmaMapper::new(&domain, &iovas, &cpu)?;

    // Source pages: every other frame of a block, linked in reverse order.
    let mut src = frames.alloc(2 * PAGES as usize)?;
    let mut dst = frames.alloc(1)?;
    let src_base = src.phys();
    let piece = |p: u64| PhysAddr(src_base + 2 * (PAGES - 1 - p) * PAGE);
    for p in 0..PAGES {
        let off = (piece(p).0 - src_base) as usize;
        for (i, b) in src.as_mut_slice()[off..off + FRAME_SIZE]
            .iter_mut()
            .enumerate()
        {
            *b = pattern(p, i);
        }
    }

    let mut state = mapper.try_alloc_with(PAGES * PAGE, PAGE, heapless::Vec::<_, 8>::new())?;
    for p in 0..PAGES {
        state.link(p * PAGE, piece(p), PAGE, Prot::READ)?;
    }
    let before = flushes();
    state.sync()?;
    let sync_flushes = flushes() - before;
    if sync_flushes != 1 {
        return Err(Error::Check(
            "sync must flush exactly once",
            sync_flushes as u64,
        ));
    }
    let sink = mapper.map(PhysAddr(dst.phys()), PAGE, Prot::WRITE)?;
    demo!(
        "mapped",
        "{PAGES} scattered pages linked at IOVA {:#x} with one sync ({sync_flushes} flush); edu's landing page at IOVA {:#x}",
        state.iova(),
        sink.addr()
    );

    // The device's view: each IOVA translated by walking the table.
    let bus = |iova: Iova| domain.table().translate(iova).map(|t| t.pa.0);
    for p in 0..PAGES {
        let iova = state.dma_addr(p * PAGE)?;
        let from = bus(iova).ok_or(Error::Check("linked page does not translate", iova.0))?;
        if from != piece(p).0 {
            return Err(Error::Check("linked page translates wrongly", iova.0));
        }
        let to = bus(sink.addr()).ok_or(Error::Check("sink does not translate", sink.addr().0))?;
        dst.as_mut_slice().fill(0xee);
        // SAFETY: the device reads a page of `src` and writes `dst`, both ours
        // and untouched by the CPU during the transfers.
        unsafe {
            edu.dma_to_device(from, 0, edu::BUFFER_SIZE)?;
            edu.dma_from_device(0, to, edu::BUFFER_SIZE)?;
        }
        if let Some(i) = dst
            .as_mut_slice()
            .iter()
            .enumerate()
            .position(|(i, &b)| b != pattern(p, i))
        {
            return Err(Error::Check("byte came back wrong", iova.0 + i as u64));
        }
    }
    demo!(
        "dma",
        "{} bytes, one page at a time: RAM (through its IOVA) -> edu -> RAM (through the sink's IOVA), every byte checked",
        PAGES * PAGE
    );

    // Unlink two pages (not adjacent: two calls), one sync for both.
    state.unlink(PAGE, PAGE)?;
    state.unlink(3 * PAGE, PAGE)?;
    let before = flushes();
    state.sync()?;
    for p in 0..PAGES {
        let gone = bus(state.dma_addr(p * PAGE)?).is_none();
        if gone != (p % 2 == 1) {
            return Err(Error::Check("wrong pages translate after unlink", p));
        }
    }
    demo!(
        "fault",
        "after unlinking pages 1 and 3 and one sync ({} flush), their IOVAs no longer translate; pages 0 and 2 still do",
        flushes() - before
    );

    let base = state.iova();
    state.destroy().map_err(|r| r.error)?;
    mapper.unmap(sink).map_err(|r| r.error)?;
    if bus(base).is_some() || iovas.stats().live_allocations != 0 {
        return Err(Error::Check("destroy left something behind", base.0));
    }
    println!(
        "{NAME}: two-step over a software {format_name} table: {PAGES} pages linked, DMA checked, unlinked, destroyed; {} flushes, {} table frames used, {} returned",
        flushes(),
        pool.next.load(Ordering::Relaxed),
        pool.freed.load(Ordering::Relaxed)
    );
    demo!("result", "OK");
    Ok(())
}

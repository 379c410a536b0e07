//! `blk-noiommu`: virtio-blk-pci (`iommu_platform=on,disable-legacy=on`)
//! with no IOMMU: the baseline for the IOMMU examples.
//!
//! The `Hal` is the identity: memory is identity-mapped, so a buffer's
//! address is its device address, and `dma_alloc` hands out frames of the
//! platform pool. The device is driven by virtio-drivers' `VirtIOBlk` over
//! its own `PciTransport` (wrapped so that the driver accepts
//! ACCESS_PLATFORM), through `blk-io`. Scenario by `-append`:
//!
//! - `check` (default): the blk-io I/O check (the host verifies the image
//!   afterwards), then the stale-buffer probe, which here must show that
//!   the device DOES reach the unshared buffer (its canary is overwritten
//!   with the sectors' data): without an IOMMU nothing stops it, and this
//!   proves the probe detects reachability. Then a control: the same read
//!   given a physical address where there is nothing (no RAM, no device)
//!   must end the way a DMA an IOMMU blocked does in QEMU: the device flags
//!   DEVICE_NEEDS_RESET and the canary stays intact.
//! - `bench`: the check, then sequential 4 KiB / 64 KiB reads of the first
//!   8 MiB (`blk-bench:` lines).
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

use core::cell::RefCell;
use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};

use blk_io::AccessPlatform;
use blk_io::probe::{self, ProbeOutcome};
use blk_io::{BlkDevice, BlkError, Context, Counters, SCRATCH_BYTES, TrapHal};
use platform::frames::{FRAME_SIZE, FrameAllocator, FramesError};
use platform::{BootInfo, demo, println};
use virtio_drivers::{BufferDirection, Hal, PhysAddr};

platform::entry!(main);

const NAME: &str = "blk-noiommu";
/// Frames for the driver's queue.
const HAL_FRAMES: usize = 8;

#[derive(Debug)]
enum Error {
    Blk(BlkError),
    Frames(FramesError),
    NoFrameAllocator,
    Check(&'static str),
    Scenario,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Blk(e) => write!(f, "{e}"),
            Self::Frames(e) => write!(f, "{e}"),
            Self::NoFrameAllocator => f.write_str("frame allocator already taken"),
            Self::Check(what) => f.write_str(what),
            Self::Scenario => f.write_str("unknown scenario (-append check|bench)"),
        }
    }
}

impl From<BlkError> for Error {
    fn from(e: BlkError) -> Self {
        Self::Blk(e)
    }
}

impl From<FramesError> for Error {
    fn from(e: FramesError) -> Self {
        Self::Frames(e)
    }
}

/// The driver's DMA memory: a bump allocator over one block of the frame
/// pool, set once in `main`. Single CPU, interrupts masked: plain loads and
/// stores (no atomic read-modify-write with the MMU off).
static HAL_NEXT: AtomicUsize = AtomicUsize::new(0);
static HAL_END: AtomicUsize = AtomicUsize::new(0);

/// No IOMMU: device addresses are physical addresses, which are the CPU's
/// addresses (identity-mapped memory).
struct IdentityHal;

// SAFETY: `dma_alloc` hands out zeroed, page-aligned, never-reused pieces of
// a block `main` took from the frame pool for this purpose only; memory is
// identity-mapped, so a pointer is its device address and sharing is a
// no-op (no bounce, no cache maintenance: QEMU's DMA is coherent).
unsafe impl Hal for IdentityHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let next = HAL_NEXT.load(Ordering::Relaxed);
        let end = next.saturating_add(pages.saturating_mul(FRAME_SIZE));
        if next == 0 || pages == 0 || end > HAL_END.load(Ordering::Relaxed) {
            return (0, NonNull::dangling());
        }
        HAL_NEXT.store(end, Ordering::Relaxed);
        // SAFETY: inside the block, handed out for the first time.
        unsafe { core::ptr::write_bytes(next as *mut u8, 0, end - next) };
        match NonNull::new(next as *mut u8) {
            Some(p) => (next as PhysAddr, p),
            None => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).unwrap_or(NonNull::dangling())
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr().cast::<u8>() as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// A physical address with nothing behind it: 256 MiB past the end of the
/// highest RAM region (2 MiB aligned).
fn nowhere(boot: &BootInfo) -> PhysAddr {
    let end = boot
        .ram()
        .iter()
        .map(|&(base, size)| base.saturating_add(size))
        .max()
        .unwrap_or(0);
    end.saturating_add(256 << 20).next_multiple_of(2 << 20)
}

type Dev<'t> = BlkDevice<
    't,
    TrapHal<IdentityHal>,
    AccessPlatform<virtio_drivers::transport::pci::PciTransport>,
>;

fn main(boot: &BootInfo) -> Result<(), Error> {
    platform::banner(NAME, boot);
    let scenario = match platform::cmdline::command_line(boot).trim() {
        "" | "check" => "check",
        "bench" => "bench",
        _ => return Err(Error::Scenario),
    };
    demo!(
        "iommu",
        "none: device addresses are physical addresses (identity Hal)"
    );
    let mut frames = FrameAllocator::take().ok_or(Error::NoFrameAllocator)?;
    // virtio-drivers' indirect descriptor lists (64 KiB).
    platform::heap::init(&mut frames, 16)?;
    let hal = frames.alloc(HAL_FRAMES)?;
    HAL_END.store(hal.phys() as usize + hal.len(), Ordering::Relaxed);
    HAL_NEXT.store(hal.phys() as usize, Ordering::Relaxed);
    let mut scratch = frames.alloc(SCRATCH_BYTES / FRAME_SIZE)?;
    let scratch_phys = scratch.phys();
    let scratch = scratch.as_mut_slice();

    let function = blk_io::pci::open_blk_function(boot, NAME)?;
    let pci = blk_io::pci::pci_transport::<IdentityHal>(&function)?;
    let transport =
        RefCell::new(AccessPlatform::new(pci).map_err(|(e, _)| BlkError::BypassesIommu(e))?);
    let mut dev: Dev<'_> = BlkDevice::new(&transport)?;
    let mut counters = Counters::default;
    let mut ctx = Context {
        name: NAME,
        iommu: "none",
        counters: &mut counters,
    };
    blk_io::announce(&ctx, &function, &dev);
    blk_io::check(&mut dev, scratch, &mut ctx)?;

    if scenario == "check" {
        let addr = probe::record(&mut dev, scratch, &mut ctx)?;
        let b = scratch_phys + (SCRATCH_BYTES - probe::PROBE_BYTES) as u64;
        if addr != b {
            return Err(Error::Check(
                "identity Hal: the probe buffer's device address is not its physical address",
            ));
        }
        // SAFETY: no IOMMU: `addr` is B's own physical address, so the
        // device can reach nothing but B through it.
        let seen = unsafe { probe::stale_read(&mut dev, scratch, &mut ctx, addr) }?;
        if seen.outcome != ProbeOutcome::Completed || !seen.got_sector_data {
            return Err(Error::Check(
                "stale probe: without an IOMMU the read through the old address should have landed in B",
            ));
        }
        println!(
            "{NAME}: stale probe: with no IOMMU the device reached the unshared buffer (canary overwritten from byte {}): the probe detects reachability",
            seen.first_changed.unwrap_or(0)
        );
        let nowhere = nowhere(boot);
        // SAFETY: nothing is at `nowhere` (no RAM: 256 MiB past the end of
        // the highest RAM region, below every PCI window and BAR on virt and
        // q35), so the device can reach nothing through it.
        let control = unsafe { probe::stale_read(&mut dev, scratch, &mut ctx, nowhere) }?;
        if control.outcome != ProbeOutcome::NeedsReset || !control.blocked() {
            return Err(Error::Check(
                "control: a read to an address with nothing there should have broken the device with the canary intact",
            ));
        }
        println!(
            "{NAME}: control: read into B given {nowhere:#x}, where nothing is: device flagged NEEDS_RESET, canary intact: what a blocked DMA looks like in QEMU"
        );
    } else {
        blk_io::bench(&mut dev, scratch, &mut ctx)?;
    }
    drop(dev);
    println!("{NAME}: scenario `{scenario}` passed");
    demo!("result", "OK");
    Ok(())
}

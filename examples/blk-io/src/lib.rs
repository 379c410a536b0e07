//! The IOMMU-independent virtio-blk scenario of the examples: generic over
//! virtio-drivers' [`Hal`](virtio_drivers::Hal) (identity, or an IOMMU
//! domain) and [`Transport`](virtio_drivers::transport::Transport).
//!
//! * [`pci`]: find the virtio-blk function (`1af4:1042`) with the platform
//!   bring-up and build virtio-drivers' own `PciTransport` on it. That is
//!   the transport users of virtio-drivers use; QEMU splits its 64-bit
//!   register writes, so it needs nothing of ours
//!   (`iommu_virtio::transport::pci::VirtioPciTransport` was not needed).
//! * [`AccessPlatform`] (re-exported from `iova-virtio-hal`): the transport
//!   wrapper that makes the driver accept VIRTIO_F_ACCESS_PLATFORM (QEMU
//!   refuses an `iommu_platform=on` device whose driver does not).
//! * [`BlkDevice`]: `VirtIOBlk` with one request at a time, every wait
//!   bounded (the `*_nb` API, polling with a platform deadline), typed
//!   errors, and the device reset on any failure so that no request
//!   outlives its buffers.
//! * [`check()`]: reads sectors 0..64 (initial pattern), writes 64..128
//!   (write pattern) in 13 requests of several shapes (16 KiB, 4 KiB across
//!   a page boundary, 512 B and 3.5 KiB at odd offsets), reads them back
//!   into another, unaligned buffer and compares. The host checks the image
//!   after QEMU exits ([`pattern`] is the contract with `xtask/src/disk.rs`).
//! * [`probe`] with [`TrapHal`]: is a buffer the driver unshared still
//!   reachable at its old device address?
//! * [`bench()`]: sequential 4 KiB / 64 KiB reads of the first 8 MiB.
//!
//! Memory for requests comes from the caller's scratch area
//! ([`SCRATCH_BYTES`], 4 KiB aligned, identity-mapped like all memory in
//! the examples): area A = the first 64 KiB (reads, read-back, benchmark),
//! area B = the next 56 KiB (writes), and the last 8 KiB are the probe's
//! buffer B.
//!
//! ```ignore
//! let function = blk_io::pci::open_blk_function(boot, NAME)?;
//! // ... attach function.bdf to an IOMMU domain, set up the Hal ...
//! let pci = blk_io::pci::pci_transport::<MyHal>(&function)?;
//! let transport = RefCell::new(AccessPlatform::new(pci).map_err(|(e, _)| e)?);
//! let mut dev = BlkDevice::<TrapHal<MyHal>, _>::new(&transport)?;
//! let mut ctx = Context { name: NAME, iommu: "SMMUv3", counters: &mut || my_counters() };
//! blk_io::check(&mut dev, scratch, &mut ctx)?;
//! let a = blk_io::probe::record(&mut dev, scratch, &mut ctx)?;
//! // reserve `a` in the IOVA allocator
//! let seen = unsafe { blk_io::probe::stale_read(&mut dev, scratch, &mut ctx, a) }?;
//! assert!(seen.blocked());
//! ```
#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod bench;
pub mod check;
mod device;
pub mod direct;
mod error;
pub mod pattern;
pub mod pci;
pub mod probe;
mod shared;
pub mod timed;
mod trap;

pub use bench::{BenchResult, bench};
pub use check::{CheckReport, check};
pub use device::{BlkDevice, CheckRead, DEFAULT_TIMEOUT_MS, IoStats, MAX_DEPTH};
pub use direct::{DirectHal, premap_ram, unmap_ram};
pub use error::{BlkError, Op};
pub use iova_virtio_hal::{AccessPlatform, BypassesIommu};
pub use shared::SharedTransport;
pub use timed::{HalTime, TimedHal};
pub use trap::TrapHal;

/// Size of the scratch area the scenarios need.
pub const SCRATCH_BYTES: usize = 128 * 1024;
const AREA_BYTES: usize = 64 * 1024;
const PAGE: usize = 4096;

/// Mapping and flush counts from the caller's IOMMU code (zero without one).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Mappings made (links, MAP requests, ...).
    pub maps: u64,
    /// Flushes issued (TLB invalidations, syncs, ...).
    pub flushes: u64,
}

impl Counters {
    /// The counts since `before`.
    pub fn since(self, before: Counters) -> Counters {
        Counters {
            maps: self.maps.saturating_sub(before.maps),
            flushes: self.flushes.saturating_sub(before.flushes),
        }
    }
}

/// What the scenarios print with: the program's name (prefix of its serial
/// lines), the IOMMU label, and the caller's counters.
pub struct Context<'a> {
    /// Prefix of serial lines, e.g. `blk-noiommu`.
    pub name: &'a str,
    /// Which IOMMU translates the device's DMA (`none`, `SMMUv3`, ...).
    pub iommu: &'a str,
    /// Current mapping/flush counts.
    pub counters: &'a mut dyn FnMut() -> Counters,
}

/// Prints that the device is up (capacity, status) and the `demo: device`
/// line, naming the function and the caller's IOMMU label.
pub fn announce<H: virtio_drivers::Hal, T: virtio_drivers::transport::Transport>(
    ctx: &Context<'_>,
    function: &platform::virtio_pci::VirtioFunction,
    dev: &BlkDevice<'_, H, T>,
) {
    platform::println!(
        "{}: virtio-blk initialised: {} sectors ({} MiB), status {:?}, ACCESS_PLATFORM accepted",
        ctx.name,
        dev.capacity(),
        dev.capacity() >> 11,
        dev.status()
    );
    platform::demo!(
        "device",
        "virtio-blk-pci at {} (requester ID {:#06x}), {} MiB disk image made at test time, virtio-drivers VirtIOBlk over its PciTransport, DMA through: {}",
        function.bdf,
        function.bdf.rid(),
        dev.capacity() >> 11,
        ctx.iommu
    );
}

/// Area A, area B and the probe page of a scratch area.
type Areas<'a> = (&'a mut [u8], &'a mut [u8], &'a mut [u8]);

/// Splits the scratch area into area A, area B and the probe page.
fn scratch_areas(scratch: &mut [u8]) -> Result<Areas<'_>, BlkError> {
    let addr = scratch.as_ptr() as usize;
    if !addr.is_multiple_of(PAGE) || scratch.len() < SCRATCH_BYTES {
        return Err(BlkError::Scratch(addr, scratch.len()));
    }
    let (a, rest) = scratch.split_at_mut(AREA_BYTES);
    let (b, rest) = rest.split_at_mut(AREA_BYTES - probe::PROBE_BYTES);
    Ok((a, b, &mut rest[..probe::PROBE_BYTES]))
}

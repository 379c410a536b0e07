//! Why a virtio-blk scenario failed.

use core::fmt;

use platform::virtio_pci::VirtioSetupError;
use virtio_drivers::transport::DeviceStatus;
use virtio_drivers::transport::pci::VirtioPciError;

use crate::pattern::Mismatch;
use iova_virtio_hal::BypassesIommu;

/// A block request's direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Device -> memory.
    Read,
    /// Memory -> device.
    Write,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Read => "read",
            Self::Write => "write",
        })
    }
}

/// Why a virtio-blk scenario failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum BlkError {
    /// PCI bring-up failed or found no virtio-blk function.
    Setup(VirtioSetupError),
    /// virtio-drivers' PCI transport refused the function.
    Transport(VirtioPciError),
    /// The device does not offer VIRTIO_F_ACCESS_PLATFORM.
    BypassesIommu(BypassesIommu),
    /// virtio-drivers reported an error (e.g. `IoError`: the device
    /// answered a request with a failure status).
    Driver(virtio_drivers::Error),
    /// After initialisation the device status lacks FEATURES_OK or
    /// DRIVER_OK, or has FAILED / DEVICE_NEEDS_RESET.
    Refused(DeviceStatus),
    /// The disk is smaller than the scenario needs (sectors found, needed).
    TooSmall(u64, u64),
    /// A request did not complete in time; the device has been reset.
    Timeout {
        /// Direction.
        op: Op,
        /// First sector.
        sector: u64,
        /// Device status when we gave up.
        status: DeviceStatus,
    },
    /// The device flagged DEVICE_NEEDS_RESET while a request was in flight
    /// (QEMU does after a DMA it could not map); it has been reset.
    NeedsReset {
        /// Direction.
        op: Op,
        /// First sector.
        sector: u64,
        /// The status read.
        status: DeviceStatus,
    },
    /// The device completed a request we did not submit; it has been reset.
    WrongToken {
        /// The request in flight.
        expected: u16,
        /// What the used ring named.
        found: u16,
    },
    /// The device was reset after an earlier failure; no more requests.
    Dead,
    /// The scratch area is not 4 KiB aligned or too small (address, length).
    Scratch(usize, usize),
    /// The benchmark's setup is unusable (what is wrong).
    Bench(&'static str),
    /// A probe found the IOMMU policy not doing what it promises.
    Probe(&'static str, u64),
    /// The IOMMU side failed (a flush, say).
    Iommu(iova_core::Error),
    /// The share table failed (an eviction or flush of a deferred table).
    Share(iova_virtio_hal::ShareError),
    /// A request's buffer is empty or not whole sectors (length).
    BadLength(usize),
    /// Data read back differs from the pattern.
    Data(Mismatch),
    /// The stale-buffer probe's trap did not see the buffer it watches
    /// (the driver never shared it, or shared a different pointer).
    TrapMissed,
}

impl fmt::Display for BlkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Setup(e) => write!(f, "{e}"),
            Self::Transport(e) => write!(f, "virtio-pci transport: {e}"),
            Self::BypassesIommu(e) => write!(f, "{e}"),
            Self::Driver(e) => write!(f, "virtio-blk: {e}"),
            Self::Refused(s) => write!(f, "virtio-blk: device status after init {s:?}"),
            Self::TooSmall(have, need) => {
                write!(f, "virtio-blk: disk has {have} sectors, {need} needed")
            }
            Self::Timeout { op, sector, status } => write!(
                f,
                "virtio-blk: {op} at sector {sector} did not complete in time (status {status:?}); device reset"
            ),
            Self::NeedsReset { op, sector, status } => write!(
                f,
                "virtio-blk: device needs reset during {op} at sector {sector} (status {status:?}); device reset"
            ),
            Self::WrongToken { expected, found } => write!(
                f,
                "virtio-blk: device completed descriptor {found}, {expected} was in flight; device reset"
            ),
            Self::Dead => f.write_str("virtio-blk: device was reset after an earlier failure"),
            Self::Bench(what) => write!(f, "benchmark setup: {what}"),
            Self::Probe(what, at) => write!(f, "probe: {what} ({at:#x})"),
            Self::Iommu(e) => write!(f, "IOMMU: {e}"),
            Self::Share(e) => write!(f, "share table: {e}"),
            Self::Scratch(a, l) => write!(
                f,
                "scratch area {a:#x} ({l:#x} bytes) is not 4 KiB aligned or smaller than {:#x}",
                crate::SCRATCH_BYTES
            ),
            Self::BadLength(l) => write!(f, "request of {l} bytes is not whole sectors"),
            Self::Data(m) => write!(f, "data check: {m}"),
            Self::TrapMissed => {
                f.write_str("stale probe: the watched buffer was never shared by the driver")
            }
        }
    }
}

macro_rules! from {
    ($($t:ty => $v:ident),*) => {$(
        impl From<$t> for BlkError {
            fn from(e: $t) -> Self {
                Self::$v(e)
            }
        }
    )*};
}
from!(VirtioSetupError => Setup, VirtioPciError => Transport, virtio_drivers::Error => Driver,
      Mismatch => Data);

//! The crate's error type.

use core::fmt;

use crate::addr::Overflow;
use crate::hw::MmioError;
use crate::iova_alloc::IovaAllocError;

/// Why an operation failed. An operation that returns an error changed nothing,
/// unless its documentation says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Error {
    /// A length or address computation overflowed.
    Overflow,
    /// A length of zero.
    ZeroLength,
    /// An address or length is not aligned as required (for a link: the offset
    /// and the physical address differ inside a granule, or an unaligned start
    /// or end is not at the lowest or highest link of the state).
    Misaligned,
    /// An address or offset lies outside what the table, the aperture or the
    /// state covers.
    OutOfRange,
    /// The protection grants no access, or asks for something the format or
    /// backend cannot express.
    InvalidProt,
    /// Part of the range is already mapped (or linked).
    AlreadyMapped,
    /// Part of the range was never mapped (or linked).
    NotMapped,
    /// An unmap would cut a block mapping or a link in two.
    PartialUnmap,
    /// The state still holds links.
    StillLinked,
    /// The gather holds tables freed by another page table: flush it first.
    ForeignGather,
    /// No memory for a page table (the frame allocator returned nothing).
    NoMemory,
    /// The frame allocator returned a table the format cannot point to (above
    /// its output address size, or misaligned).
    TableUnreachable,
    /// The bookkeeping storage (links of a state, extent slots) is full.
    StorageFull,
    /// The IOVA allocator could not satisfy the request.
    Iova(IovaAllocError),
    /// The hardware did not complete in time (bounded poll expired). The
    /// backend's own error names what it was waiting for.
    Timeout,
    /// The hardware, or the hypervisor behind a paravirtual IOMMU, refused or
    /// failed the operation, for the cause named.
    Device(DeviceError),
}

/// Why an IOMMU (or the hypervisor behind a paravirtual one) refused or failed
/// an operation, in terms every backend shares. Each backend's error type maps
/// onto it without losing the cause; the backend's own error, returned by its
/// direct API, carries the full detail (the refused command, the register).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum DeviceError {
    /// The IOMMU refused a command or invalidation descriptor: its opcode and
    /// the hardware's reason code (SMMUv3 CMDQ_CONS.ERR, VT-d 1 for an
    /// invalidation queue error, 2 for a failed register-based invalidation).
    CommandRejected {
        /// The command's opcode (descriptor type on VT-d).
        opcode: u8,
        /// The hardware's reason code.
        reason: u8,
    },
    /// A paravirtual IOMMU answered a request with an error status (the status
    /// byte as the device wrote it: for virtio-iommu, `VIRTIO_IOMMU_S_*`).
    RequestFailed {
        /// The status byte.
        status: u8,
    },
    /// The device broke its protocol (a reply shorter than its status, a
    /// buffer it was never given, an undefined status); the driver has stopped
    /// using it.
    ProtocolViolation,
    /// An earlier timeout or protocol violation made the device unusable.
    Broken,
    /// The hardware lacks a feature the operation needs, or the feature was
    /// not negotiated.
    Unsupported,
    /// The IOMMU's table walks do not snoop CPU caches and no cache
    /// maintenance was given to clean them.
    NonCoherentWalker,
    /// An ID (StreamID, SubstreamID, domain ID, PASID, endpoint ID) beyond
    /// what the hardware offers.
    IdOutOfRange(u32),
    /// No ASID, VMID or domain ID left.
    IdsExhausted,
    /// The endpoint (the ID given) is not attached to this domain.
    NotAttached(u32),
    /// The endpoint or domain (the ID given) is in use in a way the
    /// operation would silently change.
    Busy(u32),
    /// The domain is attached to as many endpoints as it can track.
    DomainFull,
    /// The IOMMU stopped on a global error.
    ServiceFailure,
    /// The IOMMU was enabled by someone else, with tables we did not write,
    /// and could not be taken over.
    AlreadyEnabled,
    /// An address size, granule or table depth the hardware cannot walk.
    BadGeometry,
    /// A register access was refused: outside the register block or
    /// misaligned (a block smaller than the registers the hardware
    /// describes). Nothing was read or written.
    RegisterAccess(MmioError),
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::CommandRejected { opcode, reason } => {
                write!(f, "command {opcode:#04x} refused (reason {reason:#x})")
            }
            Self::RequestFailed { status } => write!(f, "request failed with status {status}"),
            Self::ProtocolViolation => f.write_str("device broke its protocol"),
            Self::Broken => f.write_str("device unusable after an earlier failure"),
            Self::Unsupported => f.write_str("feature not offered by the hardware"),
            Self::NonCoherentWalker => {
                f.write_str("table walks do not snoop caches and no cache maintenance was given")
            }
            Self::IdOutOfRange(id) => write!(f, "ID {id:#x} beyond the hardware's range"),
            Self::IdsExhausted => f.write_str("no ASID, VMID or domain ID left"),
            Self::NotAttached(id) => write!(f, "endpoint {id:#x} not attached to this domain"),
            Self::Busy(id) => write!(f, "endpoint or domain {id:#x} in use"),
            Self::DomainFull => f.write_str("domain holds as many endpoints as it can track"),
            Self::ServiceFailure => f.write_str("IOMMU stopped on a global error"),
            Self::AlreadyEnabled => f.write_str("IOMMU enabled by someone else"),
            Self::BadGeometry => f.write_str("address size or granule the hardware cannot walk"),
            Self::RegisterAccess(e) => write!(f, "register access refused: {e}"),
        }
    }
}

impl From<DeviceError> for Error {
    fn from(e: DeviceError) -> Self {
        Error::Device(e)
    }
}

impl From<Overflow> for Error {
    fn from(_: Overflow) -> Self {
        Error::Overflow
    }
}

impl From<IovaAllocError> for Error {
    fn from(e: IovaAllocError) -> Self {
        Error::Iova(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Overflow => f.write_str("address arithmetic overflowed"),
            Error::ZeroLength => f.write_str("zero length"),
            Error::Misaligned => f.write_str("misaligned address or length"),
            Error::OutOfRange => f.write_str("address out of range"),
            Error::InvalidProt => f.write_str("invalid protection"),
            Error::AlreadyMapped => f.write_str("range already mapped"),
            Error::NotMapped => f.write_str("range not mapped"),
            Error::PartialUnmap => f.write_str("unmap would split a mapping"),
            Error::StillLinked => f.write_str("state still holds links"),
            Error::ForeignGather => f.write_str("gather holds another table's freed tables"),
            Error::NoMemory => f.write_str("out of page-table memory"),
            Error::TableUnreachable => f.write_str("page-table frame out of the format's reach"),
            Error::StorageFull => f.write_str("bookkeeping storage full"),
            Error::Iova(e) => write!(f, "IOVA allocation failed: {e:?}"),
            Error::Timeout => f.write_str("hardware timed out"),
            Error::Device(e) => write!(f, "device error: {e}"),
        }
    }
}

impl core::error::Error for Error {}

impl From<MmioError> for DeviceError {
    fn from(e: MmioError) -> Self {
        DeviceError::RegisterAccess(e)
    }
}

impl From<MmioError> for Error {
    fn from(e: MmioError) -> Self {
        Error::Device(DeviceError::RegisterAccess(e))
    }
}

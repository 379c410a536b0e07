//! The crate's error type.

use core::fmt;

use crate::addr::Overflow;
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
    /// The hardware did not complete in time (bounded poll expired).
    Timeout,
    /// The hardware or hypervisor reported an error; the code is backend-specific.
    Device(u32),
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
            Error::Device(c) => write!(f, "device error {c:#x}"),
        }
    }
}

impl core::error::Error for Error {}

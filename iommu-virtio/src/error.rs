//! Status codes and the driver's error type.

use core::fmt;

/// A request's status, as the device writes it in the tail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Status {
    /// 0: success.
    Ok,
    /// 1: unspecified error.
    IoErr,
    /// 2: unsupported request.
    Unsupp,
    /// 3: internal device error.
    DevErr,
    /// 4: invalid parameters.
    Inval,
    /// 5: out-of-range parameters (e.g. an UNMAP that would split a mapping).
    Range,
    /// 6: entry not found (unknown domain or endpoint).
    NoEnt,
    /// 7: bad address.
    Fault,
    /// 8: insufficient resources.
    NoMem,
    /// A code the specification does not define.
    Unknown(u8),
}

impl Status {
    /// Decodes a tail's status byte.
    pub const fn from_code(code: u8) -> Self {
        match code {
            0 => Status::Ok,
            1 => Status::IoErr,
            2 => Status::Unsupp,
            3 => Status::DevErr,
            4 => Status::Inval,
            5 => Status::Range,
            6 => Status::NoEnt,
            7 => Status::Fault,
            8 => Status::NoMem,
            c => Status::Unknown(c),
        }
    }

    /// The status byte.
    pub const fn code(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::IoErr => 1,
            Status::Unsupp => 2,
            Status::DevErr => 3,
            Status::Inval => 4,
            Status::Range => 5,
            Status::NoEnt => 6,
            Status::Fault => 7,
            Status::NoMem => 8,
            Status::Unknown(c) => c,
        }
    }

    /// `Ok(())` for [`Status::Ok`], the status as an error otherwise.
    pub fn result(self, request: RequestKind) -> Result<(), VirtioIommuError> {
        match self {
            Status::Ok => Ok(()),
            Status::Unknown(code) => Err(VirtioIommuError::UnknownStatus { request, code }),
            status => Err(VirtioIommuError::Request { request, status }),
        }
    }
}

/// Decodes a request's reply from what the device returned: `used`, the
/// length it reported writing, against the `needed` bytes the reply takes
/// (the status tail comes last, so a shorter reply carries no status), and
/// `status`, the tail's first byte. Both come from the device, so any value
/// gives a typed result.
///
/// # Errors
///
/// [`VirtioIommuError::ShortReply`] when `used < needed` (`status` is then
/// not looked at), otherwise as [`Status::result`].
pub fn decode_reply(
    request: RequestKind,
    used: u32,
    needed: u32,
    status: u8,
) -> Result<(), VirtioIommuError> {
    if used < needed {
        return Err(VirtioIommuError::ShortReply {
            request,
            used,
            needed,
        });
    }
    Status::from_code(status).result(request)
}

/// Which request a reply or an error belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum RequestKind {
    /// ATTACH.
    Attach,
    /// DETACH.
    Detach,
    /// MAP.
    Map,
    /// UNMAP.
    Unmap,
    /// PROBE.
    Probe,
}

/// Which argument was bad, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum BadArgument {
    /// A length of zero.
    ZeroLength,
    /// An address plus the length does not fit in 64 bits.
    Overflow,
    /// An address or length is not a multiple of the granule.
    Misaligned,
    /// The protection grants neither read nor write.
    NoAccess,
    /// [`VirtioIommu::run`](crate::VirtioIommu::run) was given fewer result
    /// slots than requests.
    ResultsTooShort,
}

/// Which field of the device configuration is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ConfigField {
    /// `page_size_mask` is 0 or cannot be read.
    PageSizeMask,
    /// `input_range` is empty (its end below its start) or cannot be read.
    InputRange,
    /// `domain_range` is empty (its end below its start) or cannot be read.
    DomainRange,
    /// `probe_size` is larger than
    /// [`MAX_PROBE_SIZE`](crate::driver::MAX_PROBE_SIZE) or cannot be read.
    ProbeSize,
    /// `bypass` cannot be written or read back, or did not keep the value
    /// written.
    Bypass,
    /// The configuration generation kept changing while the fields were read.
    Generation,
}

/// What is wrong with a virtqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum QueueProblem {
    /// The driver's request queue size `Q` is not a power of two from 2 to
    /// 32768.
    InvalidSize,
    /// The device has no request queue, or a smaller one than `Q`.
    RequestQueueUnavailable,
    /// The device has no event queue, or a smaller one than
    /// [`EVENT_QUEUE_SIZE`](crate::driver::EVENT_QUEUE_SIZE).
    EventQueueUnavailable,
    /// No request slot is free.
    NoFreeSlot,
    /// The request queue has no free descriptors.
    NoDescriptors,
    /// The event queue has no room for a buffer given back.
    EventQueueFull,
}

/// What is malformed in a PROBE reply's property list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum ProbeProblem {
    /// A property's length runs past the end of the list (`probe_size`).
    PropertyPastEnd,
    /// A RESV_MEM property is shorter than its 20 bytes.
    ResvMemTooShort,
    /// A RESV_MEM property ends before it starts.
    ResvMemReversed,
}

/// What a bounded wait on the device was waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Wait {
    /// The device status to read 0 after a reset.
    Reset,
    /// The replies to the requests on the queue.
    Reply,
}

/// Why a virtio-iommu operation failed. Nothing changed on the device unless
/// the variant says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum VirtioIommuError {
    /// The transport's device is not a virtio-iommu (device type).
    NotAnIommu(u32),
    /// The device does not offer a feature the driver needs: the bits of
    /// those missing. `BYPASS | BYPASS_CONFIG` (0x48): the
    /// [`DriverConfig`](crate::DriverConfig) asks for bypass of unattached
    /// endpoints and the device offers neither (either would do).
    MissingFeatures(u64),
    /// The device did not keep `FEATURES_OK` set after negotiation.
    FeaturesRejected,
    /// The device set `DEVICE_NEEDS_RESET` (or `FAILED` is set).
    DeviceFailed(u8),
    /// The device configuration is unusable: the field named.
    BadConfig(ConfigField),
    /// A queue is missing, too small, or full.
    Queue(QueueProblem),
    /// The DMA allocator returned nothing.
    NoDmaMemory,
    /// The device answered a request with an error status.
    Request {
        /// Which request.
        request: RequestKind,
        /// What it said.
        status: Status,
    },
    /// The device wrote a status code the specification does not define.
    UnknownStatus {
        /// Which request.
        request: RequestKind,
        /// The code.
        code: u8,
    },
    /// The device reported fewer bytes written than the reply needs.
    ShortReply {
        /// Which request.
        request: RequestKind,
        /// The used length it reported.
        used: u32,
        /// The bytes the reply needs.
        needed: u32,
    },
    /// The device put a buffer on the used ring that the driver has not
    /// given it (or gave twice). The driver stops using the device.
    BadUsedEntry(u32),
    /// A bounded wait ([`WaitBudget`](crate::WaitBudget)) expired, waiting
    /// for what is named. After [`Wait::Reply`] requests may still be in
    /// flight, so the driver stops using the device (every later request
    /// fails with [`VirtioIommuError::Broken`]). After [`Wait::Reset`] the
    /// device may still access the driver's memory, which is leaked rather
    /// than freed.
    Timeout(Wait),
    /// An earlier timeout or protocol violation made the device unusable.
    Broken,
    /// A PROBE reply's property list is malformed, as named.
    BadProbe(ProbeProblem),
    /// An endpoint or domain ID outside what the device supports.
    OutOfRange,
    /// The feature this needs was not negotiated (e.g. a bypass domain
    /// without `BYPASS_CONFIG`, an MMIO mapping without `MMIO`).
    NotNegotiated(u64),
    /// The range is already mapped in the domain.
    AlreadyMapped,
    /// Part of the range is not mapped in the domain.
    NotMapped,
    /// The unmap would cut a device mapping in two (the device would answer
    /// RANGE); refused before it reached the device.
    SplitsMapping,
    /// The driver's bookkeeping (mapping records, attached endpoints, domain
    /// IDs, fault buffer) is full.
    StorageFull,
    /// The domain ID (given) belongs to a live
    /// [`VirtioDomain`](crate::VirtioDomain) already.
    DomainInUse(u32),
    /// A bad argument, as named; nothing was queued or sent.
    InvalidArgument(BadArgument),
}

impl fmt::Display for VirtioIommuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAnIommu(t) => write!(f, "virtio device type {t} is not an IOMMU (23)"),
            Self::MissingFeatures(b) => write!(f, "device lacks required features {b:#x}"),
            Self::FeaturesRejected => f.write_str("device rejected the negotiated features"),
            Self::DeviceFailed(s) => write!(f, "device failed (status {s:#x})"),
            Self::BadConfig(field) => write!(f, "unusable device config: {field}"),
            Self::Queue(problem) => write!(f, "virtqueue: {problem}"),
            Self::NoDmaMemory => f.write_str("no DMA memory"),
            Self::Request { request, status } => write!(f, "{request:?} failed: {status:?}"),
            Self::UnknownStatus { request, code } => {
                write!(f, "{request:?}: undefined status {code}")
            }
            Self::ShortReply {
                request,
                used,
                needed,
            } => write!(
                f,
                "{request:?}: device wrote {used} bytes, reply needs {needed}"
            ),
            Self::BadUsedEntry(id) => write!(f, "device returned unknown buffer {id}"),
            Self::Timeout(wait) => write!(f, "device did not respond in time: {wait}"),
            Self::Broken => f.write_str("device unusable after an earlier failure"),
            Self::BadProbe(problem) => write!(f, "malformed PROBE reply: {problem}"),
            Self::OutOfRange => f.write_str("ID or address out of the device's range"),
            Self::NotNegotiated(b) => write!(f, "needs feature {b:#x}, not negotiated"),
            Self::AlreadyMapped => f.write_str("range already mapped"),
            Self::NotMapped => f.write_str("range not mapped"),
            Self::SplitsMapping => f.write_str("unmap would split a mapping"),
            Self::StorageFull => f.write_str("bookkeeping storage full"),
            Self::DomainInUse(id) => write!(f, "domain {id} belongs to a live domain already"),
            Self::InvalidArgument(arg) => write!(f, "invalid argument: {arg}"),
        }
    }
}

impl fmt::Display for BadArgument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ZeroLength => "zero length",
            Self::Overflow => "address plus length overflows",
            Self::Misaligned => "not granule aligned",
            Self::NoAccess => "protection grants no access",
            Self::ResultsTooShort => "fewer results than requests",
        })
    }
}

impl fmt::Display for ConfigField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::PageSizeMask => "page_size_mask is 0 or unreadable",
            Self::InputRange => "input_range is empty or unreadable",
            Self::DomainRange => "domain_range is empty or unreadable",
            Self::ProbeSize => "probe_size too large or unreadable",
            Self::Bypass => "bypass did not take the value written",
            Self::Generation => "config generation kept changing",
        })
    }
}

impl fmt::Display for QueueProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::InvalidSize => "queue size must be a power of two from 2 to 32768",
            Self::RequestQueueUnavailable => "request queue unavailable or too small",
            Self::EventQueueUnavailable => "event queue unavailable or too small",
            Self::NoFreeSlot => "no free request slot",
            Self::NoDescriptors => "request queue descriptors exhausted",
            Self::EventQueueFull => "event queue full",
        })
    }
}

impl fmt::Display for ProbeProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::PropertyPastEnd => "property runs past probe_size",
            Self::ResvMemTooShort => "RESV_MEM shorter than 20 bytes",
            Self::ResvMemReversed => "RESV_MEM ends before it starts",
        })
    }
}

impl fmt::Display for Wait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Reset => "reset",
            Self::Reply => "request replies",
        })
    }
}

impl core::error::Error for VirtioIommuError {}

impl From<VirtioIommuError> for iova_core::Error {
    /// Each error maps to the core error naming the same cause.
    fn from(e: VirtioIommuError) -> Self {
        use iova_core::{DeviceError as D, Error as E};
        match e {
            VirtioIommuError::Timeout(_) => E::Timeout,
            VirtioIommuError::AlreadyMapped => E::AlreadyMapped,
            VirtioIommuError::NotMapped => E::NotMapped,
            VirtioIommuError::SplitsMapping => E::PartialUnmap,
            VirtioIommuError::StorageFull => E::StorageFull,
            VirtioIommuError::DomainInUse(id) => E::Device(D::Busy(id)),
            VirtioIommuError::OutOfRange => E::OutOfRange,
            VirtioIommuError::NoDmaMemory => E::NoMemory,
            VirtioIommuError::InvalidArgument(arg) => match arg {
                BadArgument::ZeroLength => E::ZeroLength,
                BadArgument::Overflow => E::Overflow,
                BadArgument::Misaligned => E::Misaligned,
                BadArgument::NoAccess => E::InvalidProt,
                BadArgument::ResultsTooShort => E::StorageFull,
            },
            VirtioIommuError::Request { status, .. } => E::Device(D::RequestFailed {
                status: status.code(),
            }),
            VirtioIommuError::UnknownStatus { .. }
            | VirtioIommuError::ShortReply { .. }
            | VirtioIommuError::BadUsedEntry(_)
            | VirtioIommuError::BadProbe(_) => E::Device(D::ProtocolViolation),
            VirtioIommuError::Broken | VirtioIommuError::DeviceFailed(_) => E::Device(D::Broken),
            VirtioIommuError::NotAnIommu(_)
            | VirtioIommuError::MissingFeatures(_)
            | VirtioIommuError::FeaturesRejected
            | VirtioIommuError::NotNegotiated(_) => E::Device(D::Unsupported),
            VirtioIommuError::BadConfig(_) | VirtioIommuError::Queue(_) => {
                E::Device(D::BadGeometry)
            }
        }
    }
}

//! The driver's error type.

use core::fmt;

use crate::cmd::CommandErrorKind;
use crate::features::Unsupported;
use iova_core::DeviceError;
use iova_core::hw::{MmioError, Width};

/// What a bounded wait was waiting for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Wait {
    /// CR0ACK to match CR0.
    Cr0Ack,
    /// GBPA.UPDATE to clear.
    GbpaUpdate,
    /// IRQ_CTRLACK to match IRQ_CTRL.
    IrqCtrlAck,
    /// Room in the command queue.
    CmdqSpace,
    /// A CMD_SYNC to complete.
    CmdSync,
}

/// A command the SMMU refused: which one and why. The driver replaced it
/// with a CMD_SYNC and let the queue carry on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CommandError {
    /// Queue index (CMDQ_CONS.RD, wrap bit included) of the command.
    pub index: u32,
    /// Its opcode.
    pub opcode: u8,
    /// The two doublewords as they were.
    pub raw: [u64; 2],
    /// CMDQ_CONS.ERR.
    pub kind: CommandErrorKind,
}

/// Why a driver operation failed. Operations that fail change nothing unless
/// documented otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum SmmuError {
    /// The hardware lacks something the driver needs.
    Unsupported(Unsupported),
    /// The frame allocator returned nothing (or memory the SMMU cannot reach).
    NoMemory,
    /// A bounded wait on the hardware expired.
    Timeout(Wait),
    /// The SMMU refused a command (it was skipped; the others completed).
    Command(CommandError),
    /// A StreamID beyond what the SMMU or the stream table covers.
    StreamIdOutOfRange(u32),
    /// No ASID or VMID left.
    IdsExhausted,
    /// The requested translation stage is not offered by the hardware.
    StageUnsupported,
    /// A domain geometry (input/output size) the hardware cannot walk.
    BadGeometry,
    /// The SMMU was enabled before we were, with tables we did not write, and
    /// would not disable.
    AlreadyEnabled,
    /// The SMMU reported a global error that stops it (SFM_ERR).
    ServiceFailure,
    /// The SMMU has no SubstreamIDs (IDR1.SSIDSIZE = 0).
    SubstreamsUnsupported,
    /// A SubstreamID beyond the stream's CD table.
    SubstreamIdOutOfRange(u32),
    /// The stream is in use in a way the operation would silently change
    /// (attached with a single CD when a CD table is wanted).
    Busy(u32),
    /// The domain is attached to [`crate::domain::MAX_STREAMS`] streams already.
    StreamsFull,
    /// The translation granule is not offered by the SMMU (IDR5).
    GranuleUnsupported,
    /// The stream is not attached to the domain it was to be detached from.
    NotAttached(u32),
    /// A page-table engine error.
    Table(iova_core::Error),
    /// The register block is smaller than the SMMUv3 register frame (pages 0
    /// and 1, [`crate::regs::off::FRAME_SIZE`] bytes). Refused before any
    /// register is accessed.
    RegistersTooSmall {
        /// Bytes the frame needs.
        needed: usize,
        /// Bytes of the block ([`Mmio::size`](crate::Mmio::size)).
        have: usize,
    },
    /// The [`Mmio`](crate::Mmio) refused a register access (nothing was read
    /// or written there). The operation stopped at that access: what it
    /// did before stays done, as its documentation says.
    Register(MmioError),
}

impl From<MmioError> for SmmuError {
    fn from(e: MmioError) -> Self {
        Self::Register(e)
    }
}

impl From<Unsupported> for SmmuError {
    fn from(u: Unsupported) -> Self {
        Self::Unsupported(u)
    }
}

impl From<iova_core::Error> for SmmuError {
    fn from(e: iova_core::Error) -> Self {
        Self::Table(e)
    }
}

impl From<SmmuError> for iova_core::Error {
    /// Timeouts map to [`iova_core::Error::Timeout`], memory and table errors
    /// to their core equivalents, the rest to the [`DeviceError`] naming the
    /// same cause (a refused register access, and a block too small for the
    /// frame, to [`DeviceError::RegisterAccess`]).
    fn from(e: SmmuError) -> Self {
        use iova_core::Error as E;
        match e {
            SmmuError::Timeout(_) => E::Timeout,
            SmmuError::NoMemory => E::NoMemory,
            SmmuError::Table(t) => t,
            SmmuError::Command(c) => E::Device(DeviceError::CommandRejected {
                opcode: c.opcode,
                reason: c.kind.code(),
            }),
            SmmuError::Unsupported(_)
            | SmmuError::StageUnsupported
            | SmmuError::SubstreamsUnsupported => E::Device(DeviceError::Unsupported),
            SmmuError::StreamIdOutOfRange(id) | SmmuError::SubstreamIdOutOfRange(id) => {
                E::Device(DeviceError::IdOutOfRange(id))
            }
            SmmuError::IdsExhausted => E::Device(DeviceError::IdsExhausted),
            SmmuError::BadGeometry | SmmuError::GranuleUnsupported => {
                E::Device(DeviceError::BadGeometry)
            }
            SmmuError::AlreadyEnabled => E::Device(DeviceError::AlreadyEnabled),
            SmmuError::ServiceFailure => E::Device(DeviceError::ServiceFailure),
            SmmuError::NotAttached(sid) => E::Device(DeviceError::NotAttached(sid)),
            SmmuError::Busy(sid) => E::Device(DeviceError::Busy(sid)),
            SmmuError::StreamsFull => E::Device(DeviceError::DomainFull),
            SmmuError::Register(e) => E::Device(DeviceError::RegisterAccess(e)),
            // The frame's last register lies past the block: the access the
            // driver would have made there, refused.
            SmmuError::RegistersTooSmall { needed, have } => {
                E::Device(DeviceError::RegisterAccess(MmioError::OutOfRange {
                    offset: needed.saturating_sub(4),
                    width: Width::W32,
                    size: have,
                }))
            }
        }
    }
}

impl fmt::Display for SmmuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsupported(u) => write!(f, "SMMU lacks a needed feature: {u:?}"),
            Self::NoMemory => f.write_str("out of memory for SMMU structures"),
            Self::Timeout(w) => write!(f, "SMMU did not respond in time ({w:?})"),
            Self::Command(c) => write!(
                f,
                "SMMU refused command {:#04x} at queue index {:#x}: {:?} (raw {:#018x} {:#018x})",
                c.opcode, c.index, c.kind, c.raw[0], c.raw[1]
            ),
            Self::StreamIdOutOfRange(s) => write!(f, "StreamID {s:#x} out of range"),
            Self::IdsExhausted => f.write_str("no ASID/VMID left"),
            Self::StageUnsupported => f.write_str("translation stage not supported by the SMMU"),
            Self::BadGeometry => f.write_str("address sizes not supported by the SMMU"),
            Self::AlreadyEnabled => f.write_str("SMMU enabled by someone else and would not stop"),
            Self::ServiceFailure => f.write_str("SMMU entered service failure mode"),
            Self::SubstreamsUnsupported => f.write_str("SMMU has no SubstreamIDs"),
            Self::SubstreamIdOutOfRange(s) => write!(f, "SubstreamID {s:#x} out of range"),
            Self::Busy(s) => write!(
                f,
                "StreamID {s:#x} is in use with a single context descriptor"
            ),
            Self::StreamsFull => f.write_str("domain attached to too many streams"),
            Self::GranuleUnsupported => f.write_str("translation granule not offered by the SMMU"),
            Self::NotAttached(s) => write!(f, "StreamID {s:#x} is not attached to that domain"),
            Self::Table(e) => write!(f, "page table: {e}"),
            Self::RegistersTooSmall { needed, have } => write!(
                f,
                "SMMUv3 register block of {have:#x} bytes, the frame needs {needed:#x}"
            ),
            Self::Register(e) => write!(f, "SMMU register access refused: {e}"),
        }
    }
}

impl core::error::Error for SmmuError {}

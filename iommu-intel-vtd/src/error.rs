//! The driver's error type, and what its bounded waits wait for.

use core::fmt;

use iova_core::DeviceError;
use iova_core::hw::MmioError;

use crate::descriptor::Descriptor;
use crate::domain::Endpoint;
use crate::second_level::FormatError;

/// What a bounded wait on the unit was waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Wait {
    /// GSTS.TES to follow GCMD.TE (translation turned on or off).
    TranslationEnable,
    /// GSTS.QIES to follow GCMD.QIE (queued invalidation turned on or off).
    QueuedInvalidationEnable,
    /// GSTS.RTPS after GCMD.SRTP (the root table pointer latched).
    RootTablePointer,
    /// GSTS.WBFS to clear after GCMD.WBF (the write buffer flushed).
    WriteBufferFlush,
    /// Room in the invalidation queue (IQH to move on).
    QueueSpace,
    /// An invalidation wait descriptor's status write.
    InvalidationWait,
    /// CCMD.ICC to clear (a register-based context-cache invalidation).
    ContextCommand,
    /// IOTLB_REG.IVT to clear (a register-based IOTLB invalidation).
    IotlbRegister,
    /// GSTS.IRTPS after GCMD.SIRTP (the interrupt remapping table pointer
    /// latched).
    InterruptTablePointer,
    /// GSTS.IRES to follow GCMD.IRE (interrupt remapping turned on or off).
    InterruptRemappingEnable,
    /// GSTS.CFIS to follow GCMD.CFI (compatibility-format interrupts let
    /// through or blocked).
    CompatibilityFormat,
}

impl fmt::Display for Wait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::TranslationEnable => "the translation enable status (GSTS.TES)",
            Self::QueuedInvalidationEnable => "the queued invalidation status (GSTS.QIES)",
            Self::RootTablePointer => "the root table pointer (GSTS.RTPS)",
            Self::WriteBufferFlush => "the write buffer flush (GSTS.WBFS)",
            Self::QueueSpace => "room in the invalidation queue",
            Self::InvalidationWait => "an invalidation wait descriptor",
            Self::ContextCommand => "a register-based context-cache invalidation (CCMD.ICC)",
            Self::IotlbRegister => "a register-based IOTLB invalidation (IOTLB_REG.IVT)",
            Self::InterruptTablePointer => "the interrupt remapping table pointer (GSTS.IRTPS)",
            Self::InterruptRemappingEnable => "the interrupt remapping status (GSTS.IRES)",
            Self::CompatibilityFormat => "the compatibility format status (GSTS.CFIS)",
        })
    }
}

/// Why the driver refused or failed an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum VtdError {
    /// SAGAW is zero: the unit cannot translate DMA (interrupt remapping only).
    NoDmaTranslation,
    /// ND is a reserved encoding: no domain IDs.
    NoDomains,
    /// The register offsets in CAP/ECAP need more than the register block has.
    RegistersTooSmall {
        /// Bytes the decoded offsets need.
        needed: usize,
        /// Bytes of the block.
        have: usize,
    },
    /// A register access was refused (outside the register block, or
    /// misaligned): nothing was read or written. At probe this is a block
    /// too small for VER/CAP/ECAP; afterwards a block smaller than the
    /// registers the unit describes, which probe refuses with
    /// [`RegistersTooSmall`](Self::RegistersTooSmall), so only an
    /// [`Mmio`](crate::regs::Mmio) implementation that refuses accesses
    /// inside its block produces it.
    Register(MmioError),
    /// MGAW below 32 bits or above 64.
    BadAddressWidth(u32),
    /// The frame allocator returned nothing.
    NoMemory,
    /// A frame is not 4 KiB aligned or is beyond what the unit can address.
    FrameUnreachable(u64),
    /// A bounded poll expired.
    Timeout(Wait),
    /// The unit stopped the invalidation queue (FSTS.IQE) on this descriptor.
    QueueError {
        /// Index of the descriptor in the queue (IQH).
        index: usize,
        /// The descriptor the unit refused.
        descriptor: Descriptor,
    },
    /// A register-based invalidation reported failure (IAIG/CAIG = 0).
    RegisterInvalidationFailed,
    /// The domain ID is beyond what CAP.ND allows, or reserved (0 with CM).
    BadDomainId(u16),
    /// Pass-through was asked of a unit without ECAP.PT.
    PassThroughUnsupported,
    /// Scalable mode was asked of a unit without ECAP.SMTS (or without
    /// queued invalidation, which scalable mode needs).
    ScalableUnsupported,
    /// The unit does not snoop CPU caches when it walks tables (ECAP.C = 0)
    /// and [`UnitConfig::walk_cache`](crate::UnitConfig::walk_cache) gives no way to clean them.
    NonCoherentWalker,
    /// A PASID other than 0 was asked of a unit without ECAP.PASID.
    PasidUnsupported,
    /// The PASID is beyond what the unit (ECAP.PSS) or the driver's
    /// one-page PASID directory supports.
    PasidOutOfRange(u32),
    /// First-level translation needs scalable mode and ECAP.FLTS.
    FirstLevelUnsupported,
    /// Second-level translation in scalable mode needs ECAP.SLTS.
    SecondLevelUnsupported,
    /// A second-level table of this format cannot be walked by the unit.
    Format(FormatError),
    /// The table's depth is not in SAGAW.
    LevelsUnsupported(usize),
    /// No domain ID left to hand out (CAP.ND's count, at most
    /// [`MAX_ALLOCATED_DIDS`](crate::MAX_ALLOCATED_DIDS)).
    DomainIdsExhausted,
    /// The domain is attached to [`MAX_ENDPOINTS`](crate::domain::MAX_ENDPOINTS)
    /// endpoints already.
    DomainFull,
    /// The endpoint's entry does not point at the domain it was to be
    /// detached from.
    NotAttached(Endpoint),
    /// The domain's tables are not walked by this unit (it was built for
    /// other units).
    ForeignDomain,
    /// A first-level domain translates the requests of one PASID (its
    /// invalidations are tagged with it), not those of another.
    PasidMismatch {
        /// The PASID the domain was built for.
        domain: u32,
        /// The PASID asked for.
        requested: u32,
    },
    /// The page-table engine could not build the domain's table.
    Table(iova_core::Error),
    /// Interrupt remapping asked of a unit without ECAP.IR.
    InterruptRemappingUnsupported,
    /// Interrupt remapping needs queued invalidation (its entry cache is
    /// invalidated only by a queued descriptor), which the unit lacks
    /// (ECAP.QI = 0).
    InterruptRemappingNeedsQueue,
    /// x2APIC destinations (IRTA.EIME) asked of a unit without ECAP.EIM.
    ExtendedInterruptModeUnsupported,
    /// An interrupt remapping table size that is not a power of two in
    /// 2..=65536.
    BadInterruptTableSize(u32),
    /// The unit already has a live
    /// [`InterruptRemapping`](crate::intremap::InterruptRemapping).
    InterruptRemappingActive,
    /// Every entry of the interrupt remapping table is allocated.
    InterruptTableFull,
    /// The interrupt index is beyond the table's entries.
    InterruptIndexOutOfRange(u16),
    /// The interrupt index is not allocated (never, or freed already).
    InterruptIndexNotAllocated(u16),
    /// The interrupt remapping entry cannot be programmed as given.
    BadIrte(IrteError),
}

/// Why an [`Irte`](crate::intremap::Irte) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum IrteError {
    /// An APIC ID above 0xFF without x2APIC mode (IRTA.EIME).
    DestinationOutOfRange(u32),
    /// A vector below 16 for fixed or lowest-priority delivery (vectors
    /// 0-15 are reserved for exceptions).
    ReservedVector(u8),
    /// A source qualifier (SQ) above 3.
    BadSourceQualifier(u8),
    /// A bus range whose first bus is above its last.
    BadBusRange {
        /// First bus.
        first: u8,
        /// Last bus.
        last: u8,
    },
}

impl fmt::Display for IrteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DestinationOutOfRange(d) => {
                write!(f, "APIC ID {d:#x} needs x2APIC mode")
            }
            Self::ReservedVector(v) => write!(f, "vector {v} is reserved"),
            Self::BadSourceQualifier(q) => write!(f, "source qualifier {q} is not 0..=3"),
            Self::BadBusRange { first, last } => {
                write!(f, "bus range {first:#x}..={last:#x} is empty")
            }
        }
    }
}

impl fmt::Display for VtdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoDmaTranslation => f.write_str("VT-d: unit has no DMA translation (SAGAW 0)"),
            Self::NoDomains => f.write_str("VT-d: reserved ND encoding"),
            Self::RegistersTooSmall { needed, have } => write!(
                f,
                "VT-d: registers need {needed:#x} bytes, block has {have:#x}"
            ),
            Self::Register(e) => write!(f, "VT-d: {e}"),
            Self::BadAddressWidth(w) => write!(f, "VT-d: unusable MGAW {w}"),
            Self::NoMemory => f.write_str("VT-d: out of frames"),
            Self::FrameUnreachable(pa) => write!(f, "VT-d: frame {pa:#x} unusable"),
            Self::Timeout(what) => write!(f, "VT-d: timed out waiting for {what}"),
            Self::QueueError { index, descriptor } => write!(
                f,
                "VT-d: invalidation queue error at descriptor {index}: {descriptor:?}"
            ),
            Self::RegisterInvalidationFailed => {
                f.write_str("VT-d: register-based invalidation failed")
            }
            Self::BadDomainId(d) => write!(f, "VT-d: domain ID {d} not usable"),
            Self::PassThroughUnsupported => f.write_str("VT-d: no pass-through (ECAP.PT = 0)"),
            Self::ScalableUnsupported => f.write_str("VT-d: no scalable mode (ECAP.SMTS = 0)"),
            Self::NonCoherentWalker => f.write_str(
                "VT-d: table walks are not coherent (ECAP.C = 0) and no cache maintenance was given",
            ),
            Self::PasidUnsupported => f.write_str("VT-d: no PASID support (ECAP.PASID = 0)"),
            Self::PasidOutOfRange(p) => write!(f, "VT-d: PASID {p:#x} out of range"),
            Self::FirstLevelUnsupported => {
                f.write_str("VT-d: no first-level translation (scalable mode and ECAP.FLTS)")
            }
            Self::SecondLevelUnsupported => {
                f.write_str("VT-d: no second-level translation in scalable mode (ECAP.SLTS = 0)")
            }
            Self::Format(e) => write!(f, "VT-d: second-level format: {e:?}"),
            Self::LevelsUnsupported(l) => write!(f, "VT-d: {l}-level tables not in SAGAW"),
            Self::DomainIdsExhausted => f.write_str("VT-d: no domain ID left"),
            Self::DomainFull => f.write_str("VT-d: domain attached to too many endpoints"),
            Self::NotAttached(e) => write!(f, "VT-d: {e} is not attached to that domain"),
            Self::ForeignDomain => f.write_str("VT-d: the domain is not walked by this unit"),
            Self::PasidMismatch { domain, requested } => write!(
                f,
                "VT-d: first-level domain of PASID {domain:#x} attached as PASID {requested:#x}"
            ),
            Self::Table(e) => write!(f, "VT-d: page table: {e}"),
            Self::InterruptRemappingUnsupported => {
                f.write_str("VT-d: no interrupt remapping (ECAP.IR = 0)")
            }
            Self::InterruptRemappingNeedsQueue => {
                f.write_str("VT-d: interrupt remapping needs queued invalidation (ECAP.QI = 0)")
            }
            Self::ExtendedInterruptModeUnsupported => {
                f.write_str("VT-d: no x2APIC interrupt mode (ECAP.EIM = 0)")
            }
            Self::BadInterruptTableSize(n) => write!(
                f,
                "VT-d: {n} interrupt remapping entries (a power of two in 2..=65536)"
            ),
            Self::InterruptRemappingActive => {
                f.write_str("VT-d: interrupt remapping is already set up on this unit")
            }
            Self::InterruptTableFull => f.write_str("VT-d: interrupt remapping table full"),
            Self::InterruptIndexOutOfRange(i) => {
                write!(f, "VT-d: interrupt index {i} beyond the table")
            }
            Self::InterruptIndexNotAllocated(i) => {
                write!(f, "VT-d: interrupt index {i} is not allocated")
            }
            Self::BadIrte(e) => write!(f, "VT-d: interrupt remapping entry: {e}"),
        }
    }
}

impl From<MmioError> for VtdError {
    fn from(e: MmioError) -> Self {
        Self::Register(e)
    }
}

impl From<FormatError> for VtdError {
    fn from(e: FormatError) -> Self {
        Self::Format(e)
    }
}

/// [`DeviceError::CommandRejected`] reason for a descriptor the unit
/// refused (FSTS.IQE).
pub const REJECTED_BY_QUEUE: u8 = 1;
/// [`DeviceError::CommandRejected`] reason for a register-based invalidation
/// that reported failure.
pub const REJECTED_BY_REGISTER: u8 = 2;

impl From<VtdError> for iova_core::Error {
    /// Each error maps to the core error naming the same cause.
    fn from(e: VtdError) -> Self {
        use iova_core::Error as E;
        match e {
            VtdError::Timeout(_) => E::Timeout,
            VtdError::NoMemory => E::NoMemory,
            VtdError::FrameUnreachable(_) => E::TableUnreachable,
            VtdError::QueueError { descriptor, .. } => E::Device(DeviceError::CommandRejected {
                opcode: descriptor.kind() as u8,
                reason: REJECTED_BY_QUEUE,
            }),
            VtdError::RegisterInvalidationFailed => E::Device(DeviceError::CommandRejected {
                opcode: 0,
                reason: REJECTED_BY_REGISTER,
            }),
            VtdError::BadDomainId(d) => E::Device(DeviceError::IdOutOfRange(u32::from(d))),
            VtdError::PasidOutOfRange(p) | VtdError::PasidMismatch { requested: p, .. } => {
                E::Device(DeviceError::IdOutOfRange(p))
            }
            VtdError::DomainIdsExhausted => E::Device(DeviceError::IdsExhausted),
            VtdError::DomainFull => E::Device(DeviceError::DomainFull),
            VtdError::NotAttached(e) => {
                E::Device(DeviceError::NotAttached(u32::from(e.dev.source_id())))
            }
            VtdError::Table(e) => e,
            VtdError::InterruptRemappingUnsupported
            | VtdError::InterruptRemappingNeedsQueue
            | VtdError::ExtendedInterruptModeUnsupported => E::Device(DeviceError::Unsupported),
            VtdError::BadInterruptTableSize(_) => E::Device(DeviceError::BadGeometry),
            VtdError::InterruptRemappingActive => E::Device(DeviceError::Busy(0)),
            VtdError::InterruptTableFull => E::Device(DeviceError::IdsExhausted),
            VtdError::InterruptIndexOutOfRange(i) => {
                E::Device(DeviceError::IdOutOfRange(u32::from(i)))
            }
            VtdError::InterruptIndexNotAllocated(_) => E::NotMapped,
            VtdError::BadIrte(_) => E::OutOfRange,
            VtdError::NonCoherentWalker => E::Device(DeviceError::NonCoherentWalker),
            VtdError::Register(e) => E::Device(DeviceError::RegisterAccess(e)),
            VtdError::NoDmaTranslation
            | VtdError::NoDomains
            | VtdError::PassThroughUnsupported
            | VtdError::ScalableUnsupported
            | VtdError::PasidUnsupported
            | VtdError::FirstLevelUnsupported
            | VtdError::SecondLevelUnsupported
            | VtdError::ForeignDomain => E::Device(DeviceError::Unsupported),
            VtdError::RegistersTooSmall { .. }
            | VtdError::BadAddressWidth(_)
            | VtdError::Format(_)
            | VtdError::LevelsUnsupported(_) => E::Device(DeviceError::BadGeometry),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acpi::dmar::Bdf;
    use iova_core::Error as E;

    const WAITS: [Wait; 11] = [
        Wait::TranslationEnable,
        Wait::QueuedInvalidationEnable,
        Wait::RootTablePointer,
        Wait::WriteBufferFlush,
        Wait::QueueSpace,
        Wait::InvalidationWait,
        Wait::ContextCommand,
        Wait::IotlbRegister,
        Wait::InterruptTablePointer,
        Wait::InterruptRemappingEnable,
        Wait::CompatibilityFormat,
    ];

    #[test]
    fn every_wait_is_a_core_timeout_and_says_what_it_waited_for() {
        let mut texts = std::vec::Vec::new();
        for w in WAITS {
            assert_eq!(E::from(VtdError::Timeout(w)), E::Timeout);
            let text = std::format!("{}", VtdError::Timeout(w));
            assert!(text.starts_with("VT-d: timed out waiting for "), "{text}");
            assert!(!texts.contains(&text), "{text}");
            texts.push(text);
        }
    }

    #[test]
    fn errors_map_to_the_core_error_naming_the_same_cause() {
        let ep = Endpoint {
            dev: Bdf::new(0, 1, 0),
            pasid: 3,
        };
        let cases = [
            (VtdError::NoMemory, E::NoMemory),
            (VtdError::FrameUnreachable(0x1234), E::TableUnreachable),
            (
                VtdError::QueueError {
                    index: 4,
                    descriptor: Descriptor { lo: 0x12, hi: 0 },
                },
                E::Device(DeviceError::CommandRejected {
                    opcode: 2,
                    reason: REJECTED_BY_QUEUE,
                }),
            ),
            (
                VtdError::RegisterInvalidationFailed,
                E::Device(DeviceError::CommandRejected {
                    opcode: 0,
                    reason: REJECTED_BY_REGISTER,
                }),
            ),
            (
                VtdError::BadDomainId(9),
                E::Device(DeviceError::IdOutOfRange(9)),
            ),
            (
                VtdError::PasidMismatch {
                    domain: 1,
                    requested: 2,
                },
                E::Device(DeviceError::IdOutOfRange(2)),
            ),
            (
                VtdError::DomainIdsExhausted,
                E::Device(DeviceError::IdsExhausted),
            ),
            (VtdError::DomainFull, E::Device(DeviceError::DomainFull)),
            (
                VtdError::NotAttached(ep),
                E::Device(DeviceError::NotAttached(0x8)),
            ),
            (VtdError::ForeignDomain, E::Device(DeviceError::Unsupported)),
            (VtdError::Table(E::OutOfRange), E::OutOfRange),
            (
                VtdError::InterruptRemappingUnsupported,
                E::Device(DeviceError::Unsupported),
            ),
            (
                VtdError::InterruptRemappingNeedsQueue,
                E::Device(DeviceError::Unsupported),
            ),
            (
                VtdError::ExtendedInterruptModeUnsupported,
                E::Device(DeviceError::Unsupported),
            ),
            (
                VtdError::BadInterruptTableSize(3),
                E::Device(DeviceError::BadGeometry),
            ),
            (
                VtdError::InterruptRemappingActive,
                E::Device(DeviceError::Busy(0)),
            ),
            (
                VtdError::InterruptTableFull,
                E::Device(DeviceError::IdsExhausted),
            ),
            (
                VtdError::InterruptIndexOutOfRange(300),
                E::Device(DeviceError::IdOutOfRange(300)),
            ),
            (VtdError::InterruptIndexNotAllocated(7), E::NotMapped),
            (
                VtdError::BadIrte(IrteError::ReservedVector(3)),
                E::OutOfRange,
            ),
            (
                VtdError::LevelsUnsupported(5),
                E::Device(DeviceError::BadGeometry),
            ),
            (
                VtdError::NonCoherentWalker,
                E::Device(DeviceError::NonCoherentWalker),
            ),
            (
                VtdError::Register(MmioError::OutOfRange {
                    offset: 0x10,
                    width: iova_core::hw::Width::W64,
                    size: 0x10,
                }),
                E::Device(DeviceError::RegisterAccess(MmioError::OutOfRange {
                    offset: 0x10,
                    width: iova_core::hw::Width::W64,
                    size: 0x10,
                })),
            ),
        ];
        for (v, core) in cases {
            assert_eq!(E::from(v), core, "{v}");
        }
    }
}

//! The interrupt remapping table entry in remapped format (VT-d
//! specification 9.10), and the remappable-format requests that name one:
//! the MSI address/data (5.1.2.2) and the I/O APIC redirection table entry
//! (5.1.2.1).
//!
//! Low qword: P (0), FPD (1), DM (2), RH (3), TM (4), DLM (7:5), AVAIL
//! (11:8), IM (15, 0 = remapped; posted format is not supported), V (23:16),
//! DST (63:32; xAPIC: the APIC ID in 47:40, the rest reserved). High qword:
//! SID (15:0), SQ (17:16), SVT (19:18), the rest reserved.

use crate::error::IrteError;

/// IRTE low qword: present.
pub const IRTE_P: u64 = 1 << 0;
/// IRTE low qword: fault processing disable.
pub const IRTE_FPD: u64 = 1 << 1;
/// IRTE low qword: destination mode logical.
pub const IRTE_DM: u64 = 1 << 2;
/// IRTE low qword: redirection hint.
pub const IRTE_RH: u64 = 1 << 3;
/// IRTE low qword: level-triggered.
pub const IRTE_TM: u64 = 1 << 4;
/// IRTE low qword: IRTE mode (1 = posted).
pub const IRTE_IM: u64 = 1 << 15;
/// IRTE low qword bits that are reserved in remapped format (14:12, 31:24);
/// in xAPIC mode DST bits 39:32 and 63:48 are reserved too
/// ([`IRTE_XAPIC_RESERVED`]).
pub const IRTE_RESERVED_LO: u64 = 0x7 << 12 | 0xff << 24;
/// IRTE low qword bits reserved in xAPIC mode (DST other than 15:8).
pub const IRTE_XAPIC_RESERVED: u64 = 0xff << 32 | 0xffff << 48;
/// IRTE high qword bits that are reserved (127:84).
pub const IRTE_RESERVED_HI: u64 = !0xf_ffff;

/// MSI address: the interrupt address range's fixed bits 31:20.
pub const MSI_ADDRESS_BASE: u64 = 0xfee0_0000;
/// MSI address: interrupt format remappable (bit 4).
pub const MSI_REMAPPABLE: u64 = 1 << 4;
/// MSI address: subhandle valid (bit 3).
pub const MSI_SHV: u64 = 1 << 3;
/// I/O APIC RTE: interrupt format remappable (bit 48).
pub const RTE_REMAPPABLE: u64 = 1 << 48;

/// How the interrupt is delivered (DLM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DeliveryMode {
    /// 000: the vector to the destination.
    Fixed,
    /// 001: the vector to the lowest-priority processor of the destination.
    LowestPriority,
    /// 010: a system management interrupt (vector ignored).
    Smi,
    /// 100: a non-maskable interrupt (vector ignored).
    Nmi,
    /// 101: INIT (vector ignored).
    Init,
    /// 111: an external (8259-style) interrupt.
    ExtInt,
}

impl DeliveryMode {
    /// The DLM encoding.
    pub fn code(self) -> u8 {
        match self {
            Self::Fixed => 0,
            Self::LowestPriority => 1,
            Self::Smi => 2,
            Self::Nmi => 4,
            Self::Init => 5,
            Self::ExtInt => 7,
        }
    }

    /// Decodes DLM (3 and 6 are reserved: `None`).
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::Fixed,
            1 => Self::LowestPriority,
            2 => Self::Smi,
            4 => Self::Nmi,
            5 => Self::Init,
            7 => Self::ExtInt,
            _ => return None,
        })
    }

    /// Whether the vector is what the destination receives.
    fn uses_vector(self) -> bool {
        matches!(self, Self::Fixed | Self::LowestPriority)
    }
}

/// Edge or level triggered (TM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TriggerMode {
    /// Edge triggered.
    Edge,
    /// Level triggered.
    Level,
}

/// How the destination is read (DM).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum DestinationMode {
    /// An APIC ID.
    Physical,
    /// A logical destination.
    Logical,
}

/// Which requesters the unit accepts for an entry (SVT, SQ, SID). A request
/// from any other source ID is blocked with fault reason 0x26.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SourceValidation {
    /// Any requester (SVT 00).
    None,
    /// One requester ID (SVT 01), `ignore_function_bits` being SQ: 0 compares
    /// all 16 bits, 1 ignores bit 2, 2 ignores bits 2:1, 3 ignores bits 2:0
    /// (every function of the device).
    Requester {
        /// Requester ID (`bus << 8 | device << 3 | function`).
        rid: u16,
        /// SQ, 0..=3.
        ignore_function_bits: u8,
    },
    /// Any requester whose bus lies in `first..=last` (SVT 10), e.g. the
    /// buses behind a PCIe-to-PCI bridge.
    BusRange {
        /// First bus.
        first: u8,
        /// Last bus.
        last: u8,
    },
}

/// What one interrupt remapping table entry delivers, and to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Irte {
    /// APIC ID (xAPIC: 0..=0xFF; x2APIC: 32 bits), or the logical
    /// destination in [`DestinationMode::Logical`].
    pub destination: u32,
    /// The vector (16..=255 for fixed and lowest-priority delivery).
    pub vector: u8,
    /// Delivery mode.
    pub delivery: DeliveryMode,
    /// Trigger mode.
    pub trigger: TriggerMode,
    /// Destination mode.
    pub destination_mode: DestinationMode,
    /// Which requesters may use the entry.
    pub source: SourceValidation,
}

impl Irte {
    /// A fixed, edge-triggered interrupt with `vector` to the APIC ID
    /// `destination` (physical destination mode).
    pub fn fixed(destination: u32, vector: u8, source: SourceValidation) -> Self {
        Self {
            destination,
            vector,
            delivery: DeliveryMode::Fixed,
            trigger: TriggerMode::Edge,
            destination_mode: DestinationMode::Physical,
            source,
        }
    }

    /// Refuses what the unit cannot be given: a destination above 0xFF
    /// without `x2apic`, a reserved vector, SQ above 3, an empty bus range.
    pub fn check(&self, x2apic: bool) -> Result<(), IrteError> {
        if !x2apic && self.destination > 0xff {
            return Err(IrteError::DestinationOutOfRange(self.destination));
        }
        if self.delivery.uses_vector() && self.vector < 16 {
            return Err(IrteError::ReservedVector(self.vector));
        }
        match self.source {
            SourceValidation::Requester {
                ignore_function_bits: q,
                ..
            } if q > 3 => Err(IrteError::BadSourceQualifier(q)),
            SourceValidation::BusRange { first, last } if first > last => {
                Err(IrteError::BadBusRange { first, last })
            }
            _ => Ok(()),
        }
    }

    /// The entry's two qwords, present, after [`check`](Self::check).
    pub fn encode(&self, x2apic: bool) -> [u64; 2] {
        let mut lo = IRTE_P
            | u64::from(self.delivery.code()) << 5
            | u64::from(self.vector) << 16
            | if x2apic {
                u64::from(self.destination) << 32
            } else {
                u64::from(self.destination & 0xff) << 40
            };
        if self.destination_mode == DestinationMode::Logical {
            lo |= IRTE_DM;
        }
        // The hint matters only where the hardware picks among several
        // processors, which is what lowest-priority delivery asks for.
        if self.delivery == DeliveryMode::LowestPriority {
            lo |= IRTE_RH;
        }
        if self.trigger == TriggerMode::Level {
            lo |= IRTE_TM;
        }
        let hi = match self.source {
            SourceValidation::None => 0,
            SourceValidation::Requester {
                rid,
                ignore_function_bits,
            } => 1 << 18 | u64::from(ignore_function_bits & 3) << 16 | u64::from(rid),
            SourceValidation::BusRange { first, last } => {
                2 << 18 | u64::from(first) << 8 | u64::from(last)
            }
        };
        [lo, hi]
    }
}

/// An MSI (or MSI-X) message: what the device writes where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct MsiMessage {
    /// The message address (upper 32 bits zero).
    pub address: u64,
    /// The message data.
    pub data: u32,
}

/// The remappable-format MSI naming entry `index`: handle bits 14:0 in
/// address bits 19:5, handle bit 15 in address bit 2, SHV clear (the data
/// is not added to the handle, and is 0).
pub fn remappable_msi(index: u16) -> MsiMessage {
    let i = u64::from(index);
    MsiMessage {
        address: MSI_ADDRESS_BASE | (i & 0x7fff) << 5 | MSI_REMAPPABLE | (i >> 15) << 2,
        data: 0,
    }
}

/// The remappable-format I/O APIC redirection table entry naming entry
/// `index`: vector 7:0 (the entry's, for the EOI of level-triggered
/// interrupts), index bit 15 in bit 11, polarity 13, trigger 15, mask 16,
/// format 48, index bits 14:0 in 63:49.
pub fn remappable_rte(
    index: u16,
    vector: u8,
    trigger: TriggerMode,
    active_low: bool,
    masked: bool,
) -> u64 {
    let i = u64::from(index);
    u64::from(vector)
        | (i >> 15) << 11
        | u64::from(active_low) << 13
        | u64::from(trigger == TriggerMode::Level) << 15
        | u64::from(masked) << 16
        | RTE_REMAPPABLE
        | (i & 0x7fff) << 49
}

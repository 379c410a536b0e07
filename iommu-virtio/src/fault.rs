//! Fault reports from the event queue, decoded.

use crate::wire;

/// Why the device reported a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum FaultReason {
    /// The endpoint is unknown to the device (or the cause is unclassified).
    Unknown,
    /// The endpoint is not attached to any domain and may not bypass.
    Domain,
    /// No mapping at the address, or the mapping lacks the needed permission.
    Mapping,
    /// A reason code the specification does not define.
    Other(u8),
}

/// One fault event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct FaultRecord {
    /// Why.
    pub reason: FaultReason,
    /// The access was a read.
    pub read: bool,
    /// The access was a write.
    pub write: bool,
    /// The access was an instruction fetch.
    pub exec: bool,
    /// Which endpoint (for PCI: the requester ID, `bus << 8 | devfn`).
    pub endpoint: u32,
    /// The faulting address, when the device reported one.
    pub address: Option<u64>,
    /// The raw flags, including bits this driver does not name.
    pub flags: u32,
}

impl FaultRecord {
    /// Decodes the device's structure.
    pub fn decode(raw: &wire::Fault) -> Self {
        let flags = raw.flags.get();
        Self {
            reason: match raw.reason {
                wire::FAULT_R_UNKNOWN => FaultReason::Unknown,
                wire::FAULT_R_DOMAIN => FaultReason::Domain,
                wire::FAULT_R_MAPPING => FaultReason::Mapping,
                r => FaultReason::Other(r),
            },
            read: flags & wire::FAULT_F_READ != 0,
            write: flags & wire::FAULT_F_WRITE != 0,
            exec: flags & wire::FAULT_F_EXEC != 0,
            endpoint: raw.endpoint.get(),
            address: (flags & wire::FAULT_F_ADDRESS != 0).then(|| raw.address.get()),
            flags,
        }
    }
}

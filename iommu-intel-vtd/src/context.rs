//! Legacy-mode root and context entries (VT-d specification 9.1 and 9.3).
//!
//! The root table has 256 entries of 128 bits, one per bus, each pointing to
//! a context table of 256 entries of 128 bits, one per device and function.
//! A context entry decides what happens to the device's DMA:
//!
//! - not present: blocked and reported (default deny);
//! - pass-through (TT = 2, only with ECAP.PT): untranslated;
//! - translated (TT = 0): walks a second-level table, tagged with a domain ID.

/// Root entry, low half: present.
pub const ROOT_P: u64 = 1 << 0;
/// Context entry, low half: present.
pub const CTX_P: u64 = 1 << 0;
/// Context entry, low half: fault processing disable.
pub const CTX_FPD: u64 = 1 << 1;
/// Context entry, low half: translation type, bits 3:2.
pub const CTX_TT_SHIFT: u32 = 2;
/// Translation type: untranslated requests walk the second-level table.
pub const TT_MULTI_LEVEL: u64 = 0;
/// Translation type: pass-through.
pub const TT_PASS_THROUGH: u64 = 2;
/// Context entry, high half: domain ID, bits 23:8.
pub const CTX_DID_SHIFT: u32 = 8;
/// Address bits 63:12 of a table pointer.
pub const ADDR_MASK: u64 = !0xfff;

/// A root entry pointing to the context table at `context_table` (4 KiB aligned).
pub fn root_entry(context_table: u64) -> [u64; 2] {
    [(context_table & ADDR_MASK) | ROOT_P, 0]
}

/// What a context entry says about its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ContextState {
    /// DMA is blocked and faults are recorded.
    NotPresent,
    /// DMA is not translated.
    PassThrough {
        /// Domain ID (tags cached context entries).
        did: u16,
        /// AW field: the unit's largest supported width (1, 2 or 3).
        aw: u8,
    },
    /// DMA walks the second-level table at `root`.
    Translated {
        /// Domain ID (tags cached translations).
        did: u16,
        /// Physical address of the second-level root table.
        root: u64,
        /// AW field: 1 = 3-level, 2 = 4-level, 3 = 5-level.
        aw: u8,
    },
    /// A present entry of a type this driver does not program.
    Other {
        /// The raw entry.
        raw: [u64; 2],
    },
}

impl ContextState {
    /// The entry's domain ID, if it is present.
    pub fn did(&self) -> Option<u16> {
        match *self {
            Self::PassThrough { did, .. } | Self::Translated { did, .. } => Some(did),
            Self::Other { raw } => Some((raw[1] >> CTX_DID_SHIFT) as u16),
            Self::NotPresent => None,
        }
    }

    /// Encodes the state; `fpd` suppresses fault recording for the device.
    pub fn encode(&self, fpd: bool) -> [u64; 2] {
        let fpd = if fpd { CTX_FPD } else { 0 };
        match *self {
            Self::NotPresent => [0, 0],
            Self::PassThrough { did, aw } => [
                TT_PASS_THROUGH << CTX_TT_SHIFT | fpd | CTX_P,
                u64::from(did) << CTX_DID_SHIFT | u64::from(aw & 7),
            ],
            Self::Translated { did, root, aw } => [
                (root & ADDR_MASK) | TT_MULTI_LEVEL << CTX_TT_SHIFT | fpd | CTX_P,
                u64::from(did) << CTX_DID_SHIFT | u64::from(aw & 7),
            ],
            Self::Other { raw } => raw,
        }
    }

    /// Decodes a raw entry.
    pub fn decode(raw: [u64; 2]) -> Self {
        let [lo, hi] = raw;
        if lo & CTX_P == 0 {
            return Self::NotPresent;
        }
        let did = (hi >> CTX_DID_SHIFT) as u16;
        let aw = (hi & 7) as u8;
        match (lo >> CTX_TT_SHIFT) & 3 {
            TT_MULTI_LEVEL => Self::Translated {
                did,
                root: lo & ADDR_MASK,
                aw,
            },
            TT_PASS_THROUGH => Self::PassThrough { did, aw },
            _ => Self::Other { raw },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(root_entry(0x1234_5000), [0x1234_5001, 0]);
        let t = ContextState::Translated {
            did: 0x1234,
            root: 0x8_7654_3000,
            aw: 2,
        };
        assert_eq!(t.encode(false), [0x8_7654_3001, 0x12_3402]);
        assert_eq!(t.encode(true), [0x8_7654_3003, 0x12_3402]);
        let p = ContextState::PassThrough { did: 7, aw: 1 };
        assert_eq!(p.encode(false), [0x9, 0x701]);
        assert_eq!(ContextState::NotPresent.encode(true), [0, 0]);
        for s in [t, p, ContextState::NotPresent] {
            assert_eq!(ContextState::decode(s.encode(false)), s);
        }
        assert_eq!(t.did(), Some(0x1234));
        assert_eq!(ContextState::NotPresent.did(), None);
        // TT = 1 (device-TLB) is not one we program.
        let raw = [0x5 | 0x1000, 0x300];
        assert_eq!(ContextState::decode(raw), ContextState::Other { raw });
        assert_eq!(ContextState::decode(raw).did(), Some(3));
    }
}

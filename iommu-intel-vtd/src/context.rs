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
    /// DMA walks a first-level (x-86-64 format) table at `root`: scalable
    /// mode only, where ECAP.FLTS offers it.
    FirstLevel {
        /// Domain ID.
        did: u16,
        /// Physical address of the first-level root (PML4) table.
        root: u64,
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
            Self::PassThrough { did, .. }
            | Self::Translated { did, .. }
            | Self::FirstLevel { did, .. } => Some(did),
            Self::Other { raw } => Some((raw[1] >> CTX_DID_SHIFT) as u16),
            Self::NotPresent => None,
        }
    }

    /// Encodes the state as a legacy context entry; `fpd` suppresses fault
    /// recording for the device. First-level translation has no legacy
    /// encoding and gives a not-present entry (callers refuse it first).
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
            Self::FirstLevel { .. } => [0, 0],
        }
    }

    /// Decodes a raw legacy entry.
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

/// Scalable-mode entries (VT-d specification 9.2, 9.4, 9.5, 9.6): a root
/// entry points to two context tables (device-functions 0-127 and 128-255)
/// of 256-bit entries; a context entry points to a PASID directory; each
/// directory entry to a table of 64 PASID entries of 512 bits. Requests
/// without a PASID use RID_PASID, which this driver leaves at 0.
pub mod scalable {
    use super::{ADDR_MASK, ContextState};

    /// PASID entry, qword 0: present.
    pub const PE_P: u64 = 1 << 0;
    /// PASID entry, qword 0: fault processing disable.
    pub const PE_FPD: u64 = 1 << 1;
    /// PASID entry, qword 0: address width, bits 4:2.
    pub const PE_AW_SHIFT: u32 = 2;
    /// PASID entry, qword 0: PASID-granular translation type, bits 8:6.
    pub const PE_PGTT_SHIFT: u32 = 6;
    /// PGTT: first-level only.
    pub const PGTT_FIRST_LEVEL: u64 = 1;
    /// PGTT: second-level only.
    pub const PGTT_SECOND_LEVEL: u64 = 2;
    /// PGTT: nested.
    pub const PGTT_NESTED: u64 = 3;
    /// PGTT: pass-through.
    pub const PGTT_PASS_THROUGH: u64 = 4;
    /// Context entry, qword 0: present.
    pub const CTX_P: u64 = 1 << 0;
    /// PASID directory entry: present.
    pub const PDE_P: u64 = 1 << 0;

    /// A root entry pointing to the lower (devfn 0-127) and upper (128-255)
    /// context tables; 0 for a half without a table.
    pub fn root_entry(lower: u64, upper: u64) -> [u64; 2] {
        let half = |t: u64| if t == 0 { 0 } else { (t & ADDR_MASK) | 1 };
        [half(lower), half(upper)]
    }

    /// PASIDs one 4 KiB PASID directory covers: 512 entries of 64 PASIDs.
    pub const MAX_PASIDS: u32 = 512 * 64;
    /// Context entry, qword 0: PASID directory table size, bits 11:9
    /// (`2^(PDTS + 7)` entries): 2 for 512.
    pub const CTX_PDTS_512: u64 = 2 << 9;

    /// A context entry pointing to a one-page PASID directory (512 entries),
    /// RID_PASID 0.
    pub fn context_entry(pasid_dir: u64) -> [u64; 4] {
        [(pasid_dir & ADDR_MASK) | CTX_PDTS_512 | CTX_P, 0, 0, 0]
    }

    /// A PASID directory entry pointing to a PASID table.
    pub fn dir_entry(pasid_table: u64) -> u64 {
        (pasid_table & ADDR_MASK) | PDE_P
    }

    /// Encodes `state` as a PASID table entry (8 qwords). `aw` for
    /// first-level entries is 2 (48 bits: QEMU limits the IOVA with it).
    pub fn pasid_entry(state: &ContextState, fpd: bool) -> [u64; 8] {
        let fpd = if fpd { PE_FPD } else { 0 };
        let mut e = [0u64; 8];
        match *state {
            ContextState::Translated { did, root, aw } => {
                e[0] = (root & ADDR_MASK)
                    | PGTT_SECOND_LEVEL << PE_PGTT_SHIFT
                    | u64::from(aw & 7) << PE_AW_SHIFT
                    | fpd
                    | PE_P;
                e[1] = u64::from(did);
            }
            ContextState::PassThrough { did, aw } => {
                e[0] = PGTT_PASS_THROUGH << PE_PGTT_SHIFT
                    | u64::from(aw & 7) << PE_AW_SHIFT
                    | fpd
                    | PE_P;
                e[1] = u64::from(did);
            }
            ContextState::FirstLevel { did, root } => {
                e[0] = PGTT_FIRST_LEVEL << PE_PGTT_SHIFT | 2 << PE_AW_SHIFT | fpd | PE_P;
                e[1] = u64::from(did);
                // FLPM (bits 3:2) 0: 4-level paging.
                e[2] = root & ADDR_MASK;
            }
            ContextState::NotPresent | ContextState::Other { .. } => {}
        }
        e
    }

    /// Decodes the first three qwords of a PASID table entry.
    pub fn decode_pasid_entry(e: [u64; 3]) -> ContextState {
        if e[0] & PE_P == 0 {
            return ContextState::NotPresent;
        }
        let did = e[1] as u16;
        let aw = ((e[0] >> PE_AW_SHIFT) & 7) as u8;
        match (e[0] >> PE_PGTT_SHIFT) & 7 {
            PGTT_SECOND_LEVEL => ContextState::Translated {
                did,
                root: e[0] & ADDR_MASK,
                aw,
            },
            PGTT_PASS_THROUGH => ContextState::PassThrough { did, aw },
            PGTT_FIRST_LEVEL => ContextState::FirstLevel {
                did,
                root: e[2] & ADDR_MASK,
            },
            _ => ContextState::Other { raw: [e[0], e[1]] },
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

    #[test]
    fn scalable_encodings() {
        use super::scalable::*;
        assert_eq!(root_entry(0x1000, 0), [0x1001, 0]);
        assert_eq!(root_entry(0x1000, 0x2000), [0x1001, 0x2001]);
        assert_eq!(context_entry(0x5000), [0x5401, 0, 0, 0]);
        assert_eq!(dir_entry(0x6000), 0x6001);
        let sl = ContextState::Translated {
            did: 7,
            root: 0x9000,
            aw: 2,
        };
        let e = pasid_entry(&sl, false);
        assert_eq!(&e[..3], &[0x9000 | 2 << 6 | 2 << 2 | 1, 7, 0]);
        assert_eq!(pasid_entry(&sl, true)[0] & 2, 2);
        let pt = ContextState::PassThrough { did: 1, aw: 1 };
        assert_eq!(pasid_entry(&pt, false)[0], 4 << 6 | 1 << 2 | 1);
        let fl = ContextState::FirstLevel {
            did: 3,
            root: 0xa000,
        };
        let e = pasid_entry(&fl, false);
        assert_eq!(&e[..3], &[1 << 6 | 2 << 2 | 1, 3, 0xa000]);
        for s in [sl, pt, fl, ContextState::NotPresent] {
            let e = pasid_entry(&s, false);
            assert_eq!(decode_pasid_entry([e[0], e[1], e[2]]), s);
        }
        // QEMU's reserved bits of a scalable context entry: bits 8:5 of
        // qword 0, bits 63:21 of qword 1.
        let c = context_entry(0x7_f000);
        assert_eq!(c[0] & 0x1e0, 0);
        assert_eq!(c[1] & 0xffff_ffff_ffe0_0000, 0);
    }
}

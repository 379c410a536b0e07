//! Event records (32 bytes) decoded into typed fault reports.

/// Size of an event record in bytes.
pub const EVT_BYTES: usize = 32;

/// Event type codes (word 0, bits 7:0).
pub mod code {
    /// Unsupported upstream transaction.
    pub const F_UUT: u8 = 0x01;
    /// StreamID out of range of the stream table.
    pub const C_BAD_STREAMID: u8 = 0x02;
    /// Fetching the STE aborted.
    pub const F_STE_FETCH: u8 = 0x03;
    /// The STE is invalid or malformed.
    pub const C_BAD_STE: u8 = 0x04;
    /// Non-substream transaction to a stream that needs a SubstreamID.
    pub const F_STREAM_DISABLED: u8 = 0x06;
    /// Translation forbidden (e.g. an ATS-translated access while not allowed).
    pub const F_TRANS_FORBIDDEN: u8 = 0x07;
    /// SubstreamID out of range.
    pub const C_BAD_SUBSTREAMID: u8 = 0x08;
    /// Fetching the CD aborted.
    pub const F_CD_FETCH: u8 = 0x09;
    /// The CD is invalid or malformed.
    pub const C_BAD_CD: u8 = 0x0a;
    /// A table walk access aborted.
    pub const F_WALK_EABT: u8 = 0x0b;
    /// No translation for the address.
    pub const F_TRANSLATION: u8 = 0x10;
    /// The output address is beyond the configured size.
    pub const F_ADDR_SIZE: u8 = 0x11;
    /// Access flag clear.
    pub const F_ACCESS: u8 = 0x12;
    /// Permissions forbid the access.
    pub const F_PERMISSION: u8 = 0x13;
    /// TLB conflict.
    pub const F_TLB_CONFLICT: u8 = 0x20;
    /// Configuration cache conflict.
    pub const F_CFG_CONFLICT: u8 = 0x21;
}

/// What went wrong, from the event type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum FaultKind {
    /// F_TRANSLATION: nothing mapped at the address.
    Translation,
    /// F_PERMISSION: mapped, but not for this access.
    Permission,
    /// F_ACCESS: access flag clear.
    AccessFlag,
    /// F_ADDR_SIZE: output address beyond the configured size.
    AddressSize,
    /// F_WALK_EABT: a table walk read aborted.
    WalkAbort,
    /// C_BAD_STREAMID: the StreamID is beyond the stream table.
    BadStreamId,
    /// C_BAD_STE: the stream's STE is invalid (a stream nobody attached) or malformed.
    BadSte,
    /// F_STE_FETCH: fetching the STE aborted.
    SteFetch,
    /// C_BAD_CD: the context descriptor is invalid or malformed.
    BadCd,
    /// F_CD_FETCH: fetching the CD aborted.
    CdFetch,
    /// C_BAD_SUBSTREAMID.
    BadSubstreamId,
    /// F_STREAM_DISABLED.
    StreamDisabled,
    /// F_TRANS_FORBIDDEN.
    TranslationForbidden,
    /// F_UUT.
    UnsupportedTransaction,
    /// F_TLB_CONFLICT or F_CFG_CONFLICT.
    Conflict,
    /// Any other type code.
    Other(u8),
}

impl FaultKind {
    /// Classifies an event type code.
    pub const fn from_code(c: u8) -> Self {
        match c {
            code::F_TRANSLATION => Self::Translation,
            code::F_PERMISSION => Self::Permission,
            code::F_ACCESS => Self::AccessFlag,
            code::F_ADDR_SIZE => Self::AddressSize,
            code::F_WALK_EABT => Self::WalkAbort,
            code::C_BAD_STREAMID => Self::BadStreamId,
            code::C_BAD_STE => Self::BadSte,
            code::F_STE_FETCH => Self::SteFetch,
            code::C_BAD_CD => Self::BadCd,
            code::F_CD_FETCH => Self::CdFetch,
            code::C_BAD_SUBSTREAMID => Self::BadSubstreamId,
            code::F_STREAM_DISABLED => Self::StreamDisabled,
            code::F_TRANS_FORBIDDEN => Self::TranslationForbidden,
            code::F_UUT => Self::UnsupportedTransaction,
            code::F_TLB_CONFLICT | code::F_CFG_CONFLICT => Self::Conflict,
            c => Self::Other(c),
        }
    }

    /// Whether records of this kind carry the faulting address and access.
    pub const fn has_address(self) -> bool {
        matches!(
            self,
            Self::Translation
                | Self::Permission
                | Self::AccessFlag
                | Self::AddressSize
                | Self::WalkAbort
                | Self::UnsupportedTransaction
                | Self::TranslationForbidden
        )
    }
}

/// Which stage faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Stage {
    /// Stage 1 (or not a translation fault).
    One,
    /// Stage 2.
    Two,
}

/// What the faulting access was doing when the walk failed (CLASS).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum FaultClass {
    /// Fetching a CD.
    Cd,
    /// A stage-1 table walk (in a stage-2 fault).
    TableWalk,
    /// The input address itself.
    Input,
    /// Reserved encoding.
    Reserved,
}

/// A decoded event record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Event {
    /// What went wrong.
    pub kind: FaultKind,
    /// The raw type code.
    pub code: u8,
    /// StreamID of the transaction.
    pub sid: u32,
    /// SubstreamID, when the transaction had one.
    pub ssid: Option<u32>,
    /// Faulting input address (IOVA), for address-carrying kinds.
    pub addr: Option<u64>,
    /// Intermediate physical address (stage-2 faults).
    pub ipa: Option<u64>,
    /// The access was a read (`Some(false)` for a write).
    pub read: Option<bool>,
    /// The stage that faulted.
    pub stage: Stage,
    /// CLASS of the access, for address-carrying kinds.
    pub class: Option<FaultClass>,
    /// The raw record.
    pub raw: [u64; 4],
}

impl Event {
    /// Decodes the four doublewords of a record.
    pub const fn decode(raw: [u64; 4]) -> Self {
        let code = raw[0] as u8;
        let kind = FaultKind::from_code(code);
        let ssv = raw[0] & (1 << 11) != 0;
        let with_addr = kind.has_address();
        let s2 = raw[1] & (1 << 39) != 0;
        Self {
            kind,
            code,
            sid: (raw[0] >> 32) as u32,
            ssid: if ssv {
                Some(((raw[0] >> 12) & 0xf_ffff) as u32)
            } else {
                None
            },
            addr: if with_addr { Some(raw[2]) } else { None },
            ipa: if with_addr && s2 {
                Some(raw[3] & 0x000f_ffff_ffff_f000)
            } else {
                None
            },
            read: if with_addr {
                Some(raw[1] & (1 << 35) != 0)
            } else {
                None
            },
            stage: if s2 { Stage::Two } else { Stage::One },
            class: if with_addr {
                Some(match (raw[1] >> 40) & 3 {
                    0 => FaultClass::Cd,
                    1 => FaultClass::TableWalk,
                    2 => FaultClass::Input,
                    _ => FaultClass::Reserved,
                })
            } else {
                None
            },
            raw,
        }
    }

    /// Encodes a record (used by the fake SMMU and by tests).
    pub const fn encode(
        code: u8,
        sid: u32,
        addr: u64,
        ipa: u64,
        read: bool,
        stage: Stage,
        class: FaultClass,
    ) -> [u64; 4] {
        let class = match class {
            FaultClass::Cd => 0,
            FaultClass::TableWalk => 1,
            FaultClass::Input => 2,
            FaultClass::Reserved => 3,
        };
        let s2 = matches!(stage, Stage::Two) as u64;
        [
            code as u64 | (sid as u64) << 32,
            (read as u64) << 35 | s2 << 39 | class << 40,
            addr,
            ipa & 0x000f_ffff_ffff_f000,
        ]
    }
}

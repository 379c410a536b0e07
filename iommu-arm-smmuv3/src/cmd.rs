//! Command-queue entries (16 bytes: two little-endian doublewords).

use iova_core::hw::Counter;

/// Size of a command in bytes.
pub const CMD_BYTES: usize = 16;

/// Opcodes (word 0, bits 7:0).
pub mod op {
    /// Invalidate the cached STE of one StreamID.
    pub const CFGI_STE: u8 = 0x03;
    /// Invalidate cached STEs of an aligned range of StreamIDs (Range 31: all).
    pub const CFGI_STE_RANGE: u8 = 0x04;
    /// Invalidate the cached CD of a StreamID / SubstreamID.
    pub const CFGI_CD: u8 = 0x05;
    /// Invalidate every cached CD of a StreamID.
    pub const CFGI_CD_ALL: u8 = 0x06;
    /// Invalidate stage-1 TLB entries of a VMID (all ASIDs).
    pub const TLBI_NH_ALL: u8 = 0x10;
    /// Invalidate stage-1 TLB entries of an ASID.
    pub const TLBI_NH_ASID: u8 = 0x11;
    /// Invalidate stage-1 TLB entries of an address in an ASID.
    pub const TLBI_NH_VA: u8 = 0x12;
    /// Invalidate EL2 TLB entries.
    pub const TLBI_EL2_ALL: u8 = 0x20;
    /// Invalidate stage-1 and stage-2 TLB entries of a VMID.
    pub const TLBI_S12_VMALL: u8 = 0x28;
    /// Invalidate stage-2 TLB entries of an IPA.
    pub const TLBI_S2_IPA: u8 = 0x2a;
    /// Invalidate every non-secure, non-hypervisor TLB entry.
    pub const TLBI_NSNH_ALL: u8 = 0x30;
    /// Wait for completion of earlier commands.
    pub const CMD_SYNC: u8 = 0x46;
}

/// Why the SMMU refused a command (CMDQ_CONS.ERR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum CommandErrorKind {
    /// CERROR_ILL: unknown opcode, or a field the SMMU does not support.
    Illegal,
    /// CERROR_ABT: fetching the command aborted.
    Abort,
    /// CERROR_ATC_INV_SYNC: an ATC invalidation before this CMD_SYNC failed.
    AtcInvSync,
    /// A code the architecture does not define.
    Other(u8),
}

impl CommandErrorKind {
    /// Decodes CMDQ_CONS.ERR.
    pub const fn from_code(code: u8) -> Self {
        match code {
            1 => Self::Illegal,
            2 => Self::Abort,
            3 => Self::AtcInvSync,
            c => Self::Other(c),
        }
    }

    /// The CMDQ_CONS.ERR code.
    pub const fn code(self) -> u8 {
        match self {
            Self::Illegal => 1,
            Self::Abort => 2,
            Self::AtcInvSync => 3,
            Self::Other(c) => c,
        }
    }
}

/// How many pages a range TLBI covers: `(num + 1) << scale` pages of the
/// granule, from the command's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlbiRange {
    /// NUM, 0..=31.
    pub num: u8,
    /// SCALE, 0..=31.
    pub scale: u8,
}

impl TlbiRange {
    /// The smallest range command covering at least `pages` pages (1..).
    /// Rounds up: invalidating a few pages past the end costs only a refill,
    /// and it keeps a contiguous range to one command.
    pub fn covering(pages: u64) -> Option<Self> {
        if pages == 0 {
            return None;
        }
        let mut scale = 0u32;
        while pages.div_ceil(1 << scale) > 32 {
            scale += 1;
            if scale > 31 {
                return None;
            }
        }
        Some(Self {
            num: (pages.div_ceil(1 << scale) - 1) as u8,
            scale: scale as u8,
        })
    }

    /// Pages the command invalidates.
    pub const fn pages(self) -> u64 {
        (self.num as u64 + 1) << self.scale
    }
}

/// A command, as the two doublewords the SMMU reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command(pub [u64; 2]);

/// Word 1: Leaf (only last-level entries changed; walk caches may stay).
pub const LEAF: u64 = 1 << 0;
/// Word 1: TG of a range TLBI, bits 11:10 (1 = 4 KiB).
pub const TG_SHIFT: u32 = 10;
/// Word 1: TTL (level hint), bits 9:8.
pub const TTL_SHIFT: u32 = 8;
/// Word 0: NUM, bits 16:12.
pub const NUM_SHIFT: u32 = 12;
/// Word 0: SCALE, bits 24:20.
pub const SCALE_SHIFT: u32 = 20;
/// Word 0: VMID, bits 47:32.
pub const VMID_SHIFT: u32 = 32;
/// Word 0: ASID, bits 63:48.
pub const ASID_SHIFT: u32 = 48;
/// Word 0: StreamID, bits 63:32.
pub const SID_SHIFT: u32 = 32;
/// Word 0 of CMD_SYNC: CS, bits 13:12 (0 none, 1 IRQ, 2 SEV).
pub const CS_SHIFT: u32 = 12;
/// Word 1 of TLBI_NH_VA: address bits 63:12.
pub const VA_MASK: u64 = !0xfff;
/// Word 1 of TLBI_S2_IPA: address bits 51:12.
pub const IPA_MASK: u64 = 0x000f_ffff_ffff_f000;

impl Command {
    /// The opcode.
    pub const fn opcode(&self) -> u8 {
        self.0[0] as u8
    }

    /// CFGI_STE for `sid`; `leaf`: only the STE, not the CDs it points to.
    pub const fn cfgi_ste(sid: u32, leaf: bool) -> Self {
        Command([op::CFGI_STE as u64 | (sid as u64) << SID_SHIFT, leaf as u64])
    }

    /// CFGI_STE_RANGE: StreamIDs `[sid & !m, (sid & !m) + 2^(range+1))` with
    /// `m = 2^(range+1) - 1`.
    pub const fn cfgi_ste_range(sid: u32, range: u8) -> Self {
        Command([
            op::CFGI_STE_RANGE as u64 | (sid as u64) << SID_SHIFT,
            (range & 0x1f) as u64,
        ])
    }

    /// CFGI_ALL: every cached STE and CD.
    pub const fn cfgi_all() -> Self {
        Self::cfgi_ste_range(0, 31)
    }

    /// CFGI_CD for `sid`, SubstreamID 0.
    pub const fn cfgi_cd(sid: u32, leaf: bool) -> Self {
        Command([op::CFGI_CD as u64 | (sid as u64) << SID_SHIFT, leaf as u64])
    }

    /// CFGI_CD for `sid`, SubstreamID `ssid` (bits 31:12 of word 0).
    pub const fn cfgi_cd_ssid(sid: u32, ssid: u32, leaf: bool) -> Self {
        Command([
            op::CFGI_CD as u64 | ((ssid & 0xf_ffff) as u64) << 12 | (sid as u64) << SID_SHIFT,
            leaf as u64,
        ])
    }

    /// The SubstreamID field of CFGI_CD.
    pub const fn ssid(&self) -> u32 {
        ((self.0[0] >> 12) & 0xf_ffff) as u32
    }

    /// CFGI_CD_ALL for `sid`.
    pub const fn cfgi_cd_all(sid: u32) -> Self {
        Command([op::CFGI_CD_ALL as u64 | (sid as u64) << SID_SHIFT, 0])
    }

    /// TLBI_NH_ALL for `vmid`.
    pub const fn tlbi_nh_all(vmid: u16) -> Self {
        Command([op::TLBI_NH_ALL as u64 | (vmid as u64) << VMID_SHIFT, 0])
    }

    /// TLBI_NH_ASID.
    pub const fn tlbi_nh_asid(vmid: u16, asid: u16) -> Self {
        Command([
            op::TLBI_NH_ASID as u64 | (vmid as u64) << VMID_SHIFT | (asid as u64) << ASID_SHIFT,
            0,
        ])
    }

    /// TLBI_NH_VA for one 4 KiB page (or the leaf containing it).
    pub const fn tlbi_nh_va(vmid: u16, asid: u16, va: u64, leaf: bool) -> Self {
        Command([
            op::TLBI_NH_VA as u64 | (vmid as u64) << VMID_SHIFT | (asid as u64) << ASID_SHIFT,
            (va & VA_MASK) | leaf as u64,
        ])
    }

    /// TLBI_NH_VA, range form (needs IDR3.RIL), 4 KiB granule.
    pub const fn tlbi_nh_va_range(
        vmid: u16,
        asid: u16,
        va: u64,
        range: TlbiRange,
        leaf: bool,
    ) -> Self {
        Command([
            op::TLBI_NH_VA as u64
                | ((range.num & 0x1f) as u64) << NUM_SHIFT
                | ((range.scale & 0x1f) as u64) << SCALE_SHIFT
                | (vmid as u64) << VMID_SHIFT
                | (asid as u64) << ASID_SHIFT,
            (va & VA_MASK) | 1 << TG_SHIFT | leaf as u64,
        ])
    }

    /// TLBI_NH_VA, range form with granule code `tg` (1 = 4K, 2 = 16K,
    /// 3 = 64K): `(num + 1) << scale` pages of that granule.
    pub const fn tlbi_nh_va_range_tg(
        vmid: u16,
        asid: u16,
        va: u64,
        range: TlbiRange,
        tg: u64,
        leaf: bool,
    ) -> Self {
        let mut c = Self::tlbi_nh_va_range(vmid, asid, va, range, leaf);
        c.0[1] = (c.0[1] & !(3 << TG_SHIFT)) | (tg & 3) << TG_SHIFT;
        c
    }

    /// The TG field (0: not a range command).
    pub const fn tg(&self) -> u64 {
        (self.0[1] >> TG_SHIFT) & 3
    }

    /// TLBI_S2_IPA for one 4 KiB page.
    pub const fn tlbi_s2_ipa(vmid: u16, ipa: u64, leaf: bool) -> Self {
        Command([
            op::TLBI_S2_IPA as u64 | (vmid as u64) << VMID_SHIFT,
            (ipa & IPA_MASK) | leaf as u64,
        ])
    }

    /// TLBI_S2_IPA, range form.
    pub const fn tlbi_s2_ipa_range(vmid: u16, ipa: u64, range: TlbiRange, leaf: bool) -> Self {
        Command([
            op::TLBI_S2_IPA as u64
                | ((range.num & 0x1f) as u64) << NUM_SHIFT
                | ((range.scale & 0x1f) as u64) << SCALE_SHIFT
                | (vmid as u64) << VMID_SHIFT,
            (ipa & IPA_MASK) | 1 << TG_SHIFT | leaf as u64,
        ])
    }

    /// TLBI_S2_IPA, range form with granule code `tg` (see
    /// [`Command::tlbi_nh_va_range_tg`]).
    pub const fn tlbi_s2_ipa_range_tg(
        vmid: u16,
        ipa: u64,
        range: TlbiRange,
        tg: u64,
        leaf: bool,
    ) -> Self {
        let mut c = Self::tlbi_s2_ipa_range(vmid, ipa, range, leaf);
        c.0[1] = (c.0[1] & !(3 << TG_SHIFT)) | (tg & 3) << TG_SHIFT;
        c
    }

    /// TLBI_S12_VMALL for `vmid`.
    pub const fn tlbi_s12_vmall(vmid: u16) -> Self {
        Command([op::TLBI_S12_VMALL as u64 | (vmid as u64) << VMID_SHIFT, 0])
    }

    /// TLBI_EL2_ALL.
    pub const fn tlbi_el2_all() -> Self {
        Command([op::TLBI_EL2_ALL as u64, 0])
    }

    /// TLBI_NSNH_ALL.
    pub const fn tlbi_nsnh_all() -> Self {
        Command([op::TLBI_NSNH_ALL as u64, 0])
    }

    /// CMD_SYNC with no completion signal (software polls CMDQ_CONS).
    pub const fn sync() -> Self {
        Command([op::CMD_SYNC as u64, 0])
    }

    /// StreamID field of the CFGI commands.
    pub const fn sid(&self) -> u32 {
        (self.0[0] >> SID_SHIFT) as u32
    }

    /// ASID field of the TLBI commands.
    pub const fn asid(&self) -> u16 {
        (self.0[0] >> ASID_SHIFT) as u16
    }

    /// VMID field of the TLBI commands.
    pub const fn vmid(&self) -> u16 {
        (self.0[0] >> VMID_SHIFT) as u16
    }

    /// Address field of TLBI_NH_VA / TLBI_S2_IPA.
    pub const fn addr(&self) -> u64 {
        if self.opcode() == op::TLBI_S2_IPA {
            self.0[1] & IPA_MASK
        } else {
            self.0[1] & VA_MASK
        }
    }

    /// Range fields of a TLBI, if TG is set (range form).
    pub const fn range(&self) -> Option<TlbiRange> {
        if (self.0[1] >> TG_SHIFT) & 3 == 0 {
            return None;
        }
        Some(TlbiRange {
            num: ((self.0[0] >> NUM_SHIFT) & 0x1f) as u8,
            scale: ((self.0[0] >> SCALE_SHIFT) & 0x1f) as u8,
        })
    }

    /// The Leaf bit.
    pub const fn leaf(&self) -> bool {
        self.0[1] & LEAF != 0
    }
}

/// Counts of issued commands, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub struct CommandCounts {
    /// CFGI_STE.
    pub cfgi_ste: u64,
    /// CFGI_STE_RANGE (including CFGI_ALL).
    pub cfgi_ste_range: u64,
    /// CFGI_CD and CFGI_CD_ALL.
    pub cfgi_cd: u64,
    /// TLBI_NH_VA (page and range form).
    pub tlbi_nh_va: u64,
    /// TLBI_NH_VA in range form (also counted in `tlbi_nh_va`).
    pub tlbi_range: u64,
    /// TLBI_NH_ASID.
    pub tlbi_nh_asid: u64,
    /// TLBI_NH_ALL.
    pub tlbi_nh_all: u64,
    /// TLBI_S2_IPA.
    pub tlbi_s2_ipa: u64,
    /// TLBI_S12_VMALL.
    pub tlbi_s12_vmall: u64,
    /// TLBI_NSNH_ALL and TLBI_EL2_ALL.
    pub tlbi_global: u64,
    /// CMD_SYNC.
    pub sync: u64,
    /// Every command.
    pub total: u64,
    /// Commands the SMMU refused (and the driver skipped).
    pub errors: u64,
}

/// The live counters behind [`CommandCounts`].
#[derive(Debug, Default)]
pub(crate) struct CommandCounters {
    cfgi_ste: Counter,
    cfgi_ste_range: Counter,
    cfgi_cd: Counter,
    tlbi_nh_va: Counter,
    tlbi_range: Counter,
    tlbi_nh_asid: Counter,
    tlbi_nh_all: Counter,
    tlbi_s2_ipa: Counter,
    tlbi_s12_vmall: Counter,
    tlbi_global: Counter,
    sync: Counter,
    total: Counter,
    pub(crate) errors: Counter,
}

impl CommandCounters {
    /// Counts one command.
    pub(crate) fn count(&self, c: &Command) {
        self.total.incr();
        match c.opcode() {
            op::CFGI_STE => self.cfgi_ste.incr(),
            op::CFGI_STE_RANGE => self.cfgi_ste_range.incr(),
            op::CFGI_CD | op::CFGI_CD_ALL => self.cfgi_cd.incr(),
            op::TLBI_NH_VA => {
                self.tlbi_nh_va.incr();
                if c.range().is_some() {
                    self.tlbi_range.incr();
                }
            }
            op::TLBI_NH_ASID => self.tlbi_nh_asid.incr(),
            op::TLBI_NH_ALL => self.tlbi_nh_all.incr(),
            op::TLBI_S2_IPA => self.tlbi_s2_ipa.incr(),
            op::TLBI_S12_VMALL => self.tlbi_s12_vmall.incr(),
            op::TLBI_NSNH_ALL | op::TLBI_EL2_ALL => self.tlbi_global.incr(),
            op::CMD_SYNC => self.sync.incr(),
            _ => {}
        }
    }

    /// The counts now.
    pub(crate) fn snapshot(&self) -> CommandCounts {
        CommandCounts {
            cfgi_ste: self.cfgi_ste.get(),
            cfgi_ste_range: self.cfgi_ste_range.get(),
            cfgi_cd: self.cfgi_cd.get(),
            tlbi_nh_va: self.tlbi_nh_va.get(),
            tlbi_range: self.tlbi_range.get(),
            tlbi_nh_asid: self.tlbi_nh_asid.get(),
            tlbi_nh_all: self.tlbi_nh_all.get(),
            tlbi_s2_ipa: self.tlbi_s2_ipa.get(),
            tlbi_s12_vmall: self.tlbi_s12_vmall.get(),
            tlbi_global: self.tlbi_global.get(),
            sync: self.sync.get(),
            total: self.total.get(),
            errors: self.errors.get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        let n = CommandCounters::default();
        for c in [
            Command::sync(),
            Command::tlbi_nh_va(0, 1, 0, true),
            Command::tlbi_nh_va_range(0, 1, 0, TlbiRange { num: 1, scale: 0 }, true),
            Command::cfgi_all(),
        ] {
            n.count(&c);
        }
        let n = n.snapshot();
        assert_eq!(
            (
                n.total,
                n.sync,
                n.tlbi_nh_va,
                n.tlbi_range,
                n.cfgi_ste_range
            ),
            (4, 1, 2, 1, 1)
        );
    }
}

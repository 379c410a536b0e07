//! What a unit can do: VER, CAP and ECAP decoded.
//!
//! The driver adapts to these values and never assumes QEMU's; the tests
//! check the decode against values read from QEMU's model and against
//! hand-made combinations.

use core::fmt;

/// The version register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    /// Major version.
    pub major: u8,
    /// Minor version.
    pub minor: u8,
}

impl Version {
    /// Decodes VER.
    pub fn from_raw(raw: u32) -> Self {
        Self {
            major: (raw >> 4 & 0xf) as u8,
            minor: (raw & 0xf) as u8,
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

fn bits(raw: u64, lo: u32, width: u32) -> u64 {
    (raw >> lo) & ((1 << width) - 1)
}

/// The capability register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability(pub u64);

impl Capability {
    /// Number of domain IDs the unit supports (`2^(4 + 2 * ND)`).
    pub fn domains(self) -> u32 {
        match bits(self.0, 0, 3) {
            nd @ 0..=6 => 1 << (4 + 2 * nd),
            _ => 0, // reserved encoding: no usable domains
        }
    }
    /// Required write-buffer flushing (RWBF).
    pub fn rwbf(self) -> bool {
        self.0 & 1 << 4 != 0
    }
    /// Protected low/high memory regions (PLMR, PHMR).
    pub fn protected_memory_regions(self) -> (bool, bool) {
        (self.0 & 1 << 5 != 0, self.0 & 1 << 6 != 0)
    }
    /// Caching mode (CM): not-present and erroneous entries may be cached,
    /// so making an entry present needs an invalidation too.
    pub fn caching_mode(self) -> bool {
        self.0 & 1 << 7 != 0
    }
    /// Supported adjusted guest address widths (SAGAW) as a bitmap: bit 1 =
    /// 39-bit (3-level), bit 2 = 48-bit (4-level), bit 3 = 57-bit (5-level).
    pub fn sagaw(self) -> u8 {
        bits(self.0, 8, 5) as u8
    }
    /// Whether second-level tables of `levels` levels are supported.
    pub fn supports_levels(self, levels: usize) -> bool {
        (3..=5).contains(&levels) && self.sagaw() & 1 << (levels - 2) != 0
    }
    /// Maximum guest address width in bits (MGAW + 1): IOVAs must be below
    /// `1 << mgaw()`.
    pub fn mgaw(self) -> u32 {
        bits(self.0, 16, 6) as u32 + 1
    }
    /// Zero-length reads are supported (ZLR).
    pub fn zlr(self) -> bool {
        self.0 & 1 << 22 != 0
    }
    /// Offset of the first fault recording register, in bytes (FRO * 16).
    pub fn fault_record_offset(self) -> usize {
        bits(self.0, 24, 10) as usize * 16
    }
    /// Second-level large page support (SLLPS): bit 0 = 2 MiB, bit 1 = 1 GiB.
    pub fn sllps(self) -> u8 {
        bits(self.0, 34, 4) as u8
    }
    /// 2 MiB second-level superpages.
    pub fn superpage_2m(self) -> bool {
        self.sllps() & 1 != 0
    }
    /// 1 GiB second-level superpages.
    pub fn superpage_1g(self) -> bool {
        self.sllps() & 2 != 0
    }
    /// Page-selective invalidation (PSI).
    pub fn psi(self) -> bool {
        self.0 & 1 << 39 != 0
    }
    /// Number of fault recording registers (NFR + 1).
    pub fn fault_records(self) -> usize {
        bits(self.0, 40, 8) as usize + 1
    }
    /// Maximum address mask value for page-selective invalidation (MAMV):
    /// one descriptor invalidates up to `2^mamv` pages.
    pub fn mamv(self) -> u32 {
        bits(self.0, 48, 6) as u32
    }
    /// Write draining (DWD) and read draining (DRD).
    pub fn draining(self) -> (bool, bool) {
        (self.0 & 1 << 54 != 0, self.0 & 1 << 55 != 0)
    }
    /// First-level 1 GiB pages (FL1GP).
    pub fn first_level_1g(self) -> bool {
        self.0 & 1 << 56 != 0
    }
    /// Posted interrupts (PI).
    pub fn posted_interrupts(self) -> bool {
        self.0 & 1 << 59 != 0
    }
    /// First-level 5-level paging (FL5LP).
    pub fn first_level_5level(self) -> bool {
        self.0 & 1 << 60 != 0
    }
}

/// The extended capability register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtCapability(pub u64);

impl ExtCapability {
    /// Page-walk coherency (C): the walker snoops CPU caches.
    pub fn coherent(self) -> bool {
        self.0 & 1 != 0
    }
    /// Queued invalidation (QI).
    pub fn queued_invalidation(self) -> bool {
        self.0 & 1 << 1 != 0
    }
    /// Device-TLB (ATS) support (DT).
    pub fn device_tlb(self) -> bool {
        self.0 & 1 << 2 != 0
    }
    /// Interrupt remapping (IR).
    pub fn interrupt_remapping(self) -> bool {
        self.0 & 1 << 3 != 0
    }
    /// Extended interrupt mode (EIM, x2APIC).
    pub fn eim(self) -> bool {
        self.0 & 1 << 4 != 0
    }
    /// Pass-through translation type (PT).
    pub fn pass_through(self) -> bool {
        self.0 & 1 << 6 != 0
    }
    /// Snoop control (SC): the SNP bit of second-level entries is honoured.
    pub fn snoop_control(self) -> bool {
        self.0 & 1 << 7 != 0
    }
    /// Offset of the IOTLB registers (IVA, then IOTLB), in bytes (IRO * 16).
    pub fn iotlb_offset(self) -> usize {
        bits(self.0, 8, 10) as usize * 16
    }
    /// Maximum handle mask value for interrupt-entry cache invalidation.
    pub fn mhmv(self) -> u32 {
        bits(self.0, 20, 4) as u32
    }
    /// Memory type support (MTS).
    pub fn memory_types(self) -> bool {
        self.0 & 1 << 25 != 0
    }
    /// Nested translation (NEST).
    pub fn nested(self) -> bool {
        self.0 & 1 << 26 != 0
    }
    /// Page requests (PRS).
    pub fn page_requests(self) -> bool {
        self.0 & 1 << 29 != 0
    }
    /// Supervisor requests (SRS).
    pub fn supervisor_requests(self) -> bool {
        self.0 & 1 << 31 != 0
    }
    /// PASID size supported, in bits (PSS + 1), when [`pasid`](Self::pasid).
    pub fn pasid_bits(self) -> u32 {
        bits(self.0, 35, 5) as u32 + 1
    }
    /// PASID support.
    pub fn pasid(self) -> bool {
        self.0 & 1 << 40 != 0
    }
    /// Scalable-mode translation (SMTS).
    pub fn scalable_mode(self) -> bool {
        self.0 & 1 << 43 != 0
    }
    /// Second-level translation in scalable mode (SLTS).
    pub fn second_level_translation(self) -> bool {
        self.0 & 1 << 46 != 0
    }
    /// First-level translation (FLTS).
    pub fn first_level_translation(self) -> bool {
        self.0 & 1 << 47 != 0
    }
}

/// VER, CAP and ECAP of one unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// Architecture version.
    pub version: Version,
    /// Capabilities.
    pub cap: Capability,
    /// Extended capabilities.
    pub ecap: ExtCapability,
}

impl Features {
    /// Decodes the three registers.
    pub fn from_raw(ver: u32, cap: u64, ecap: u64) -> Self {
        Self {
            version: Version::from_raw(ver),
            cap: Capability(cap),
            ecap: ExtCapability(ecap),
        }
    }

    /// Reads VER, CAP and ECAP from a unit's registers (no side effects), e.g.
    /// to choose [`UnitConfig::scalable`](crate::UnitConfig) before probing.
    ///
    /// # Errors
    ///
    /// The [`MmioError`](crate::regs::MmioError) of a refused read (a block
    /// too small to hold the three registers).
    pub fn read<M: crate::regs::Mmio + ?Sized>(regs: &M) -> Result<Self, crate::regs::MmioError> {
        Ok(Self::from_raw(
            regs.read32(crate::regs::VER)?,
            regs.read64(crate::regs::CAP)?,
            regs.read64(crate::regs::ECAP)?,
        ))
    }

    /// The deepest legacy second-level table the unit supports (5, 4 or 3
    /// levels), or `None` if it supports none (a remapping-only unit).
    pub fn max_levels(&self) -> Option<usize> {
        (3..=5).rev().find(|&l| self.cap.supports_levels(l))
    }

    /// Bytes of the register block the decoded offsets need (IOTLB registers
    /// and fault records included, and IRTA with ECAP.IR).
    pub fn register_span(&self) -> usize {
        let iotlb = self.ecap.iotlb_offset() + 16;
        let faults = self.cap.fault_record_offset() + 16 * self.cap.fault_records();
        let irta = if self.ecap.interrupt_remapping() {
            crate::regs::IRTA + 8
        } else {
            0
        };
        iotlb.max(faults).max(crate::regs::IQERCD + 8).max(irta)
    }
}

impl fmt::Display for Features {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (c, e) = (self.cap, self.ecap);
        write!(
            f,
            "VT-d {}, MGAW {}, SAGAW {:#x}, {} domains, {} fault record(s) at {:#x}, superpages{}{}, QI {}, PSI {} (MAMV {}), RWBF {}, CM {}, PT {}, SC {}, scalable {}, first-level {}",
            self.version,
            c.mgaw(),
            c.sagaw(),
            c.domains(),
            c.fault_records(),
            c.fault_record_offset(),
            if c.superpage_2m() { " 2M" } else { "" },
            if c.superpage_1g() { " 1G" } else { "" },
            e.queued_invalidation(),
            c.psi(),
            c.mamv(),
            c.rwbf(),
            c.caching_mode(),
            e.pass_through(),
            e.snoop_control(),
            e.scalable_mode(),
            e.first_level_translation(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU 7.2 (and 10.0 with `pc-q35-9.1`), aw-bits=39.
    const QEMU_CAP_39: u64 = 0x00D2_008C_2226_0206;
    /// QEMU 10.0 default, aw-bits=48.
    const QEMU_CAP_48: u64 = 0x00D2_008C_222F_0606;
    /// QEMU's default ECAP under TCG (intremap on).
    const QEMU_ECAP: u64 = 0x0000_0000_00F0_0F4A;
    const QEMU_ECAP_SCALABLE: u64 = 0x0000_4800_80F0_0F4A;
    const QEMU_ECAP_FLTS: u64 = 0x0000_8800_00F0_0F4A;

    #[test]
    fn qemu_default_cap() {
        for (raw, sagaw, mgaw, levels) in [(QEMU_CAP_39, 2, 39, 3), (QEMU_CAP_48, 6, 48, 4)] {
            let c = Capability(raw);
            assert_eq!(c.domains(), 65536);
            assert!(!c.rwbf() && !c.caching_mode() && !c.zlr());
            assert_eq!(c.protected_memory_regions(), (false, false));
            assert_eq!(c.sagaw(), sagaw);
            assert_eq!(c.mgaw(), mgaw);
            assert_eq!(c.fault_record_offset(), 0x220);
            assert_eq!(c.fault_records(), 1);
            assert!(c.superpage_2m() && c.superpage_1g());
            assert!(c.psi());
            assert_eq!(c.mamv(), 18);
            assert_eq!(c.draining(), (true, true));
            assert!(!c.first_level_1g());
            let f = Features::from_raw(0x10, raw, QEMU_ECAP);
            assert_eq!(f.max_levels(), Some(levels));
            assert!(c.supports_levels(3));
            assert_eq!(c.supports_levels(4), levels == 4);
            assert!(!c.supports_levels(5) && !c.supports_levels(2));
            assert_eq!(f.version, Version { major: 1, minor: 0 });
            assert_eq!(f.register_span(), 0x230);
        }
        // caching-mode=on only sets bit 7.
        assert!(Capability(QEMU_CAP_48 | 0x80).caching_mode());
    }

    #[test]
    fn qemu_default_ecap() {
        let e = ExtCapability(QEMU_ECAP);
        assert!(e.queued_invalidation() && e.interrupt_remapping() && e.pass_through());
        assert!(!e.coherent() && !e.device_tlb() && !e.eim() && !e.snoop_control());
        assert_eq!(e.iotlb_offset(), 0xf0);
        assert_eq!(e.mhmv(), 0xf);
        assert!(!e.scalable_mode() && !e.first_level_translation());
        // intremap=off: 0xF42, IOTLB registers still at 0xF0.
        let e = ExtCapability(0xf42);
        assert!(!e.interrupt_remapping() && e.queued_invalidation() && e.pass_through());
        assert_eq!(e.iotlb_offset(), 0xf0);
        let s = ExtCapability(QEMU_ECAP_SCALABLE);
        assert!(s.scalable_mode() && s.second_level_translation() && s.supervisor_requests());
        assert!(!s.first_level_translation() && !s.pasid());
        let fl = ExtCapability(QEMU_ECAP_FLTS);
        assert!(fl.scalable_mode() && fl.first_level_translation());
        assert!(!fl.second_level_translation() && !fl.supervisor_requests());
    }

    #[test]
    fn other_combinations() {
        // ND=2 (256 domains), RWBF, CM, SAGAW 5-level only, MGAW 57, FRO 0x40
        // (offset 0x400), no superpages, no PSI, 8 fault records, MAMV 0.
        let raw = 2 | 1 << 4 | 1 << 7 | 0x8 << 8 | 56 << 16 | 0x40 << 24 | 7u64 << 40;
        let c = Capability(raw);
        assert_eq!(c.domains(), 256);
        assert!(c.rwbf() && c.caching_mode());
        assert_eq!(Features::from_raw(0x10, raw, 0).max_levels(), Some(5));
        assert_eq!(c.mgaw(), 57);
        assert_eq!(c.fault_record_offset(), 0x400);
        assert_eq!(c.fault_records(), 8);
        assert!(!c.superpage_2m() && !c.superpage_1g() && !c.psi());
        assert_eq!(c.mamv(), 0);
        // Reserved ND encoding: no domains at all.
        assert_eq!(Capability(7).domains(), 0);
        // SAGAW 0: a remapping-only unit.
        assert_eq!(Features::from_raw(0x10, 0, 0).max_levels(), None);
        // ECAP: coherent, SC, IRO 0x50 -> 0x500, PSS 19 -> 20-bit PASIDs.
        let e = ExtCapability(1 | 1 << 7 | 0x50 << 8 | 19 << 35 | 1 << 40);
        assert!(e.coherent() && e.snoop_control() && e.pasid());
        assert_eq!(e.iotlb_offset(), 0x500);
        assert_eq!(e.pasid_bits(), 20);
        assert_eq!(Features::from_raw(0x60, raw, e.0).register_span(), 0x510);
        assert_eq!(Version::from_raw(0x60).major, 6);
    }
}

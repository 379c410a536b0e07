//! The ACPI DMA Remapping Reporting table (DMAR): which remapping units
//! (DRHD) exist and which devices each covers, reserved memory that must stay
//! identity mapped (RMRR), and root ports with ATS (ATSR).
//!
//! Iteration never fails as a whole: each remapping structure comes out as a
//! [`Structure`], and one that is too short for its type, or whose length
//! would run past the table, comes out as [`Structure::Malformed`]. A
//! structure of an unknown type comes out as [`Structure::Unknown`] and is
//! skipped by its length. A length that cannot be trusted (below 4, or past
//! the end) ends the iteration, because nothing after it can be located.

use zerocopy::little_endian::{U16, U64};
use zerocopy::{FromBytes, Immutable, KnownLayout, Unaligned};

use super::{AcpiError, SDT_HEADER_LEN, verify_table};

/// DMAR flag: the platform supports interrupt remapping.
pub const FLAG_INTR_REMAP: u8 = 1 << 0;
/// DMAR flag: firmware asks the OS to opt out of x2APIC.
pub const FLAG_X2APIC_OPT_OUT: u8 = 1 << 1;
/// DMAR flag: DMA control opt-in.
pub const FLAG_DMA_CTRL_OPT_IN: u8 = 1 << 2;
/// DRHD flag: the unit covers every PCI device of its segment not listed
/// under another unit.
pub const DRHD_INCLUDE_PCI_ALL: u8 = 1 << 0;
/// ATSR flag: every root port of the segment supports ATS.
pub const ATSR_ALL_PORTS: u8 = 1 << 0;

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct DmarFixed {
    host_address_width: u8,
    flags: u8,
    reserved: [u8; 10],
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct StructHeader {
    kind: U16,
    length: U16,
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct DrhdFixed {
    header: StructHeader,
    flags: u8,
    size: u8,
    segment: U16,
    register_base: U64,
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RmrrFixed {
    header: StructHeader,
    reserved: U16,
    segment: U16,
    base: U64,
    limit: U64,
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct AtsrFixed {
    header: StructHeader,
    flags: u8,
    reserved: u8,
    segment: U16,
}

#[derive(FromBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct ScopeFixed {
    kind: u8,
    length: u8,
    flags: u8,
    reserved: u8,
    enumeration_id: u8,
    start_bus: u8,
}

/// A verified DMAR table.
#[derive(Debug, Clone, Copy)]
pub struct Dmar<'t> {
    /// Host address width: the maximum DMA physical address width is
    /// `host_address_width + 1` bits.
    pub host_address_width: u8,
    /// `FLAG_*` bits.
    pub flags: u8,
    structures: &'t [u8],
}

/// A PCI bus/device/function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Bdf {
    /// Bus number.
    pub bus: u8,
    /// Device number (0..32).
    pub device: u8,
    /// Function number (0..8).
    pub function: u8,
}

impl Bdf {
    /// `device` and `function` are masked to 5 and 3 bits.
    pub const fn new(bus: u8, device: u8, function: u8) -> Self {
        Self {
            bus,
            device: device & 0x1f,
            function: function & 7,
        }
    }

    /// Device and function as one byte, the index into a context table.
    pub const fn devfn(self) -> u8 {
        (self.device << 3) | self.function
    }

    /// The requester (source) ID the device puts on the bus: `bus << 8 | devfn`.
    pub const fn source_id(self) -> u16 {
        ((self.bus as u16) << 8) | self.devfn() as u16
    }

    /// The inverse of [`source_id`](Self::source_id).
    pub const fn from_source_id(sid: u16) -> Self {
        Self::new((sid >> 8) as u8, (sid >> 3) as u8 & 0x1f, sid as u8 & 7)
    }
}

impl core::fmt::Display for Bdf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:02x}:{:02x}.{}", self.bus, self.device, self.function)
    }
}

/// One remapping structure of the DMAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Structure<'t> {
    /// A remapping hardware unit.
    Drhd(Drhd<'t>),
    /// A reserved memory region.
    Rmrr(Rmrr<'t>),
    /// Root ports with address translation services.
    Atsr(Atsr<'t>),
    /// A structure type this parser does not decode (RHSA, ANDD, SATC, ...).
    Unknown {
        /// Structure type.
        kind: u16,
        /// The structure's bytes, header included.
        bytes: &'t [u8],
    },
    /// A structure that could not be decoded.
    Malformed {
        /// Offset of the structure from the start of the table.
        offset: usize,
        /// What was wrong.
        reason: Malformed,
    },
}

/// What was wrong with a malformed structure or device scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Malformed {
    /// Its length field is below the smallest possible, or runs past the table
    /// (iteration stops: nothing after it can be located).
    BadLength(u16),
    /// Its length is shorter than the fixed part of its type (skipped).
    TooShortForType(u16),
}

/// A DMA remapping hardware unit definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drhd<'t> {
    /// `DRHD_*` flags.
    pub flags: u8,
    /// Register set size: `4 KiB << size` (revision 3 tables; 0 before).
    pub size: u8,
    /// PCI segment.
    pub segment: u16,
    /// Physical address of the unit's registers.
    pub register_base: u64,
    /// Device scopes.
    pub scopes: DeviceScopes<'t>,
}

impl Drhd<'_> {
    /// Whether the unit covers every device of its segment not claimed by a
    /// unit with explicit scopes.
    pub fn include_pci_all(&self) -> bool {
        self.flags & DRHD_INCLUDE_PCI_ALL != 0
    }

    /// Bytes of the register set (at least 4 KiB).
    pub fn register_size(&self) -> u64 {
        4096u64 << self.size.min(40)
    }
}

/// A reserved memory region: devices in its scopes keep DMAing to
/// `[base, limit]` (inclusive), so it must stay identity mapped for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rmrr<'t> {
    /// PCI segment.
    pub segment: u16,
    /// First byte of the region (4 KiB aligned).
    pub base: u64,
    /// Last byte of the region (inclusive).
    pub limit: u64,
    /// Devices that use the region.
    pub scopes: DeviceScopes<'t>,
}

impl Rmrr<'_> {
    /// The region's length, or `None` if `limit < base` (malformed) or the
    /// region is all 2^64 bytes (not representable).
    pub fn len(&self) -> Option<u64> {
        self.limit.checked_sub(self.base)?.checked_add(1)
    }

    /// Whether the region is inverted (`limit < base`): it holds no byte. A
    /// region of all 2^64 bytes is not empty, though it has no `len`.
    pub fn is_empty(&self) -> bool {
        self.limit < self.base
    }
}

/// Root ports that support address translation services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Atsr<'t> {
    /// `ATSR_*` flags.
    pub flags: u8,
    /// PCI segment.
    pub segment: u16,
    /// Root ports (when not `ATSR_ALL_PORTS`).
    pub scopes: DeviceScopes<'t>,
}

impl Atsr<'_> {
    /// Whether every root port of the segment supports ATS.
    pub fn all_ports(&self) -> bool {
        self.flags & ATSR_ALL_PORTS != 0
    }
}

/// The device scopes of a structure (an iterator of [`DeviceScope`]s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceScopes<'t> {
    bytes: &'t [u8],
}

/// Kind of a device scope entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScopeKind {
    /// One PCI endpoint.
    PciEndpoint,
    /// A PCI bridge and everything below it.
    PciSubHierarchy,
    /// An I/O APIC (enumeration ID = its APIC ID).
    IoApic,
    /// An HPET MSI block (enumeration ID = HPET number).
    HpetMsi,
    /// An ACPI namespace device.
    AcpiNamespace,
    /// A type this parser does not know.
    Other(u8),
}

impl From<u8> for ScopeKind {
    fn from(v: u8) -> Self {
        match v {
            1 => Self::PciEndpoint,
            2 => Self::PciSubHierarchy,
            3 => Self::IoApic,
            4 => Self::HpetMsi,
            5 => Self::AcpiNamespace,
            o => Self::Other(o),
        }
    }
}

/// One device scope entry: a path from a bus through bridges to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceScope<'t> {
    /// What the entry names.
    pub kind: ScopeKind,
    /// I/O APIC ID, HPET number or ACPI device number.
    pub enumeration_id: u8,
    /// Bus the path starts on.
    pub start_bus: u8,
    path: &'t [u8],
}

impl<'t> DeviceScope<'t> {
    /// The `(device, function)` hops of the path, first one on `start_bus`.
    pub fn path(&self) -> impl Iterator<Item = (u8, u8)> + 't {
        self.path.chunks_exact(2).map(|p| (p[0], p[1]))
    }

    /// The device the path leads to. Every hop but the last is a bridge,
    /// whose secondary bus `secondary_bus` reads from PCI configuration
    /// space; `None` if a bridge does not answer or the path is empty.
    pub fn resolve(&self, mut secondary_bus: impl FnMut(Bdf) -> Option<u8>) -> Option<Bdf> {
        let mut bus = self.start_bus;
        let mut hops = self.path().peekable();
        while let Some((d, f)) = hops.next() {
            let bdf = Bdf::new(bus, d, f);
            if hops.peek().is_none() {
                return Some(bdf);
            }
            bus = secondary_bus(bdf)?;
        }
        None
    }

    /// Whether `dev` is named by this scope: it is the endpoint, or (for a
    /// sub-hierarchy) the bridge itself or on a bus in the bridge's
    /// `[secondary, subordinate]` range. `bridge_buses` reads a bridge's
    /// secondary and subordinate bus numbers.
    pub fn matches(&self, dev: Bdf, mut bridge_buses: impl FnMut(Bdf) -> Option<(u8, u8)>) -> bool {
        let Some(target) = self.resolve(|b| bridge_buses(b).map(|(s, _)| s)) else {
            return false;
        };
        match self.kind {
            ScopeKind::PciEndpoint => target == dev,
            ScopeKind::PciSubHierarchy => {
                target == dev
                    || bridge_buses(target)
                        .is_some_and(|(sec, sub)| sec <= dev.bus && dev.bus <= sub)
            }
            _ => false,
        }
    }
}

impl<'t> Iterator for DeviceScopes<'t> {
    type Item = Result<DeviceScope<'t>, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.bytes.is_empty() {
            return None;
        }
        let Ok((fixed, _)) = ScopeFixed::ref_from_prefix(self.bytes) else {
            let len = self.bytes.len() as u16;
            self.bytes = &[];
            return Some(Err(Malformed::BadLength(len)));
        };
        let len = fixed.length as usize;
        // A scope is 6 bytes and an even number of path bytes.
        if len < 6 || len > self.bytes.len() || len % 2 != 0 {
            self.bytes = &[];
            return Some(Err(Malformed::BadLength(len as u16)));
        }
        let (entry, rest) = self.bytes.split_at(len);
        self.bytes = rest;
        Some(Ok(DeviceScope {
            kind: fixed.kind.into(),
            enumeration_id: fixed.enumeration_id,
            start_bus: fixed.start_bus,
            path: &entry[6..],
        }))
    }
}

impl<'t> DeviceScopes<'t> {
    /// Whether any well-formed PCI scope names `dev` (see [`DeviceScope::matches`]).
    pub fn contains(
        &self,
        dev: Bdf,
        mut bridge_buses: impl FnMut(Bdf) -> Option<(u8, u8)>,
    ) -> bool {
        (*self)
            .filter_map(Result::ok)
            .any(|s| s.matches(dev, &mut bridge_buses))
    }
}

impl<'t> Dmar<'t> {
    /// Verifies a DMAR table (signature, length, checksum) and its fixed part.
    pub fn parse(table: &'t [u8]) -> Result<Self, AcpiError> {
        let (header, table) = verify_table(table)?;
        if &header.signature != b"DMAR" {
            return Err(AcpiError::BadSignature(header.signature));
        }
        let (fixed, structures) = DmarFixed::ref_from_prefix(&table[SDT_HEADER_LEN..])
            .map_err(|_| AcpiError::TooShort(*b"DMAR"))?;
        Ok(Self {
            host_address_width: fixed.host_address_width,
            flags: fixed.flags,
            structures,
        })
    }

    /// Maximum DMA physical address width in bits.
    pub fn address_bits(&self) -> u32 {
        u32::from(self.host_address_width) + 1
    }

    /// Every remapping structure, in table order.
    pub fn structures(&self) -> Structures<'t> {
        Structures {
            bytes: self.structures,
            offset: SDT_HEADER_LEN + core::mem::size_of::<DmarFixed>(),
        }
    }

    /// The remapping hardware units.
    pub fn units(&self) -> impl Iterator<Item = Drhd<'t>> + 't {
        self.structures().filter_map(|s| match s {
            Structure::Drhd(d) => Some(d),
            _ => None,
        })
    }

    /// The reserved memory regions.
    pub fn reserved_regions(&self) -> impl Iterator<Item = Rmrr<'t>> + 't {
        self.structures().filter_map(|s| match s {
            Structure::Rmrr(r) => Some(r),
            _ => None,
        })
    }

    /// The unit that translates `dev` on `segment`: one that lists it in its
    /// scopes, else the segment's `INCLUDE_PCI_ALL` unit.
    pub fn unit_for(
        &self,
        segment: u16,
        dev: Bdf,
        mut bridge_buses: impl FnMut(Bdf) -> Option<(u8, u8)>,
    ) -> Option<Drhd<'t>> {
        self.units()
            .find(|u| u.segment == segment && u.scopes.contains(dev, &mut bridge_buses))
            .or_else(|| {
                self.units()
                    .find(|u| u.segment == segment && u.include_pci_all())
            })
    }
}

/// Iterator over a DMAR's remapping structures.
#[derive(Debug, Clone)]
pub struct Structures<'t> {
    bytes: &'t [u8],
    offset: usize,
}

impl<'t> Iterator for Structures<'t> {
    type Item = Structure<'t>;

    fn next(&mut self) -> Option<Structure<'t>> {
        if self.bytes.is_empty() {
            return None;
        }
        let offset = self.offset;
        let stop = |this: &mut Self, len: u16| {
            this.bytes = &[];
            Some(Structure::Malformed {
                offset,
                reason: Malformed::BadLength(len),
            })
        };
        let Ok((header, _)) = StructHeader::ref_from_prefix(self.bytes) else {
            return stop(self, self.bytes.len() as u16);
        };
        let len = header.length.get();
        if (len as usize) < core::mem::size_of::<StructHeader>() || len as usize > self.bytes.len()
        {
            return stop(self, len);
        }
        let (bytes, rest) = self.bytes.split_at(len as usize);
        self.bytes = rest;
        self.offset += len as usize;
        let short = Structure::Malformed {
            offset,
            reason: Malformed::TooShortForType(len),
        };
        Some(match header.kind.get() {
            0 => match DrhdFixed::ref_from_prefix(bytes) {
                Ok((d, scopes)) => Structure::Drhd(Drhd {
                    flags: d.flags,
                    size: d.size,
                    segment: d.segment.get(),
                    register_base: d.register_base.get(),
                    scopes: DeviceScopes { bytes: scopes },
                }),
                Err(_) => short,
            },
            1 => match RmrrFixed::ref_from_prefix(bytes) {
                Ok((r, scopes)) => Structure::Rmrr(Rmrr {
                    segment: r.segment.get(),
                    base: r.base.get(),
                    limit: r.limit.get(),
                    scopes: DeviceScopes { bytes: scopes },
                }),
                Err(_) => short,
            },
            2 => match AtsrFixed::ref_from_prefix(bytes) {
                Ok((a, scopes)) => Structure::Atsr(Atsr {
                    flags: a.flags,
                    segment: a.segment.get(),
                    scopes: DeviceScopes { bytes: scopes },
                }),
                Err(_) => short,
            },
            kind => Structure::Unknown { kind, bytes },
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    extern crate std;
    use std::vec;
    use std::vec::Vec;

    use super::*;
    use iova_core::acpi::test_support::table;

    pub(crate) fn scope(kind: u8, id: u8, bus: u8, path: &[(u8, u8)]) -> Vec<u8> {
        let mut s = vec![kind, (6 + 2 * path.len()) as u8, 0, 0, id, bus];
        for &(d, f) in path {
            s.extend_from_slice(&[d, f]);
        }
        s
    }

    pub(crate) fn drhd(flags: u8, base: u64, scopes: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = scopes.concat();
        let mut s = vec![];
        s.extend_from_slice(&0u16.to_le_bytes());
        s.extend_from_slice(&((16 + body.len()) as u16).to_le_bytes());
        s.extend_from_slice(&[flags, 0]);
        s.extend_from_slice(&0u16.to_le_bytes());
        s.extend_from_slice(&base.to_le_bytes());
        s.extend_from_slice(&body);
        s
    }

    pub(crate) fn rmrr(base: u64, limit: u64, scopes: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = scopes.concat();
        let mut s = vec![];
        s.extend_from_slice(&1u16.to_le_bytes());
        s.extend_from_slice(&((24 + body.len()) as u16).to_le_bytes());
        s.extend_from_slice(&[0, 0, 0, 0]);
        s.extend_from_slice(&base.to_le_bytes());
        s.extend_from_slice(&limit.to_le_bytes());
        s.extend_from_slice(&body);
        s
    }

    fn atsr(flags: u8) -> Vec<u8> {
        let mut s = vec![2, 0, 8, 0, flags, 0, 0, 0];
        s[2] = 8;
        s
    }

    pub(crate) fn dmar(structs: &[Vec<u8>]) -> Vec<u8> {
        let mut body = vec![38, FLAG_INTR_REMAP];
        body.extend_from_slice(&[0; 10]);
        body.extend_from_slice(&structs.concat());
        table(b"DMAR", 1, &body)
    }

    /// What QEMU 10's q35 builds: one DRHD with explicit scopes (an I/O APIC,
    /// and each device of the root bus), no INCLUDE_PCI_ALL.
    fn qemu_like() -> Vec<u8> {
        dmar(&[
            drhd(
                0,
                0xfed9_0000,
                &[
                    scope(3, 0, 0xff, &[(0, 0)]),
                    scope(1, 0, 0, &[(0, 0)]),
                    scope(1, 0, 0, &[(1, 0)]),
                    scope(2, 0, 0, &[(0x1c, 0)]),
                ],
            ),
            atsr(ATSR_ALL_PORTS),
        ])
    }

    #[test]
    fn decodes_units_scopes_and_atsr() {
        let t = qemu_like();
        let d = Dmar::parse(&t).unwrap();
        assert_eq!(d.address_bits(), 39);
        assert_eq!(d.flags, FLAG_INTR_REMAP);
        let s: Vec<_> = d.structures().collect();
        assert_eq!(s.len(), 2);
        let Structure::Drhd(u) = s[0] else {
            panic!("{:?}", s[0])
        };
        assert_eq!(u.register_base, 0xfed9_0000);
        assert!(!u.include_pci_all());
        assert_eq!(u.register_size(), 4096);
        let scopes: Vec<_> = u.scopes.map(Result::unwrap).collect();
        assert_eq!(scopes.len(), 4);
        assert_eq!(scopes[0].kind, ScopeKind::IoApic);
        assert_eq!(scopes[0].start_bus, 0xff);
        assert_eq!(scopes[2].path().collect::<Vec<_>>(), [(1, 0)]);
        assert_eq!(scopes[2].resolve(|_| None), Some(Bdf::new(0, 1, 0)));
        let Structure::Atsr(a) = s[1] else {
            panic!("{:?}", s[1])
        };
        assert!(a.all_ports());
        assert_eq!(a.scopes.count(), 0);
    }

    #[test]
    fn finds_the_unit_for_a_device() {
        // Bridge 00:1c.0 has buses 2..=4 below it.
        let bridges = |b: Bdf| (b == Bdf::new(0, 0x1c, 0)).then_some((2, 4));
        let t = dmar(&[
            drhd(
                0,
                0xa000,
                &[scope(1, 0, 0, &[(1, 0)]), scope(2, 0, 0, &[(0x1c, 0)])],
            ),
            drhd(DRHD_INCLUDE_PCI_ALL, 0xb000, &[]),
        ]);
        let d = Dmar::parse(&t).unwrap();
        let unit = |bdf| d.unit_for(0, bdf, bridges).map(|u| u.register_base);
        assert_eq!(unit(Bdf::new(0, 1, 0)), Some(0xa000));
        assert_eq!(unit(Bdf::new(3, 0, 0)), Some(0xa000));
        assert_eq!(unit(Bdf::new(0, 0x1c, 0)), Some(0xa000));
        assert_eq!(unit(Bdf::new(0, 2, 0)), Some(0xb000));
        assert_eq!(unit(Bdf::new(5, 0, 0)), Some(0xb000));
        assert_eq!(d.unit_for(1, Bdf::new(0, 1, 0), bridges), None);
        // A path through a bridge: 00:1c.0 -> bus 2, then 00.0 there.
        let s = scope(1, 0, 0, &[(0x1c, 0), (0, 0)]);
        let t = dmar(&[drhd(0, 0xc000, &[s])]);
        let d = Dmar::parse(&t).unwrap();
        assert_eq!(
            d.unit_for(0, Bdf::new(2, 0, 0), bridges)
                .map(|u| u.register_base),
            Some(0xc000)
        );
        // A bridge that does not answer resolves nothing.
        assert_eq!(d.unit_for(0, Bdf::new(2, 0, 0), |_| None), None);
    }

    #[test]
    fn rmrr_regions() {
        let t = dmar(&[
            rmrr(0x000e_0000, 0x000f_ffff, &[scope(1, 0, 0, &[(0x14, 0)])]),
            rmrr(0x2000, 0x1000, &[]),
        ]);
        let d = Dmar::parse(&t).unwrap();
        let r: Vec<_> = d.reserved_regions().collect();
        assert_eq!(r[0].len(), Some(0x2_0000));
        assert!(r[0].scopes.contains(Bdf::new(0, 0x14, 0), |_| None));
        assert!(r[1].is_empty());
    }

    #[test]
    fn an_rmrr_of_the_whole_address_space_is_not_empty() {
        // `len` overflows here (the region is 2^64 bytes): that must not
        // read as an empty region.
        let t = dmar(&[rmrr(0, u64::MAX, &[]), rmrr(0x1000, 0x1000, &[])]);
        let d = Dmar::parse(&t).unwrap();
        let r: Vec<_> = d.reserved_regions().collect();
        assert_eq!(r[0].len(), None);
        assert!(!r[0].is_empty());
        assert_eq!(r[1].len(), Some(1));
        assert!(!r[1].is_empty());
    }

    #[test]
    fn unknown_and_short_structures_are_skipped_and_reported() {
        let rhsa = {
            let mut s = vec![3, 0, 20, 0];
            s.extend_from_slice(&[0; 16]);
            s
        };
        let short_drhd = vec![0, 0, 8, 0, 0, 0, 0, 0];
        let t = dmar(&[rhsa.clone(), short_drhd, drhd(1, 0xfed9_0000, &[])]);
        let d = Dmar::parse(&t).unwrap();
        let s: Vec<_> = d.structures().collect();
        assert_eq!(s.len(), 3);
        assert_eq!(
            s[0],
            Structure::Unknown {
                kind: 3,
                bytes: &rhsa[..]
            }
        );
        assert_eq!(
            s[1],
            Structure::Malformed {
                offset: 48 + 20,
                reason: Malformed::TooShortForType(8)
            }
        );
        assert!(matches!(s[2], Structure::Drhd(u) if u.include_pci_all()));
    }

    #[test]
    fn bad_lengths_stop_iteration_without_reading_past_the_table() {
        for bad_len in [0u16, 3, 0xffff, 17 + 16] {
            let mut s = drhd(0, 0x1000, &[scope(1, 0, 0, &[(1, 0)])]);
            s[2..4].copy_from_slice(&bad_len.to_le_bytes());
            let t = dmar(&[drhd(1, 0x5000, &[]), s]);
            let d = Dmar::parse(&t).unwrap();
            let all: Vec<_> = d.structures().collect();
            if bad_len == 17 + 16 {
                // Past the end of the table by 9 bytes.
                assert_eq!(all.len(), 2);
            }
            assert!(matches!(all[0], Structure::Drhd(u) if u.register_base == 0x5000));
            assert_eq!(
                all.last(),
                Some(&Structure::Malformed {
                    offset: 64,
                    reason: Malformed::BadLength(bad_len)
                }),
                "{bad_len}"
            );
        }
        // A trailing fragment shorter than a structure header.
        let t = dmar(&[vec![0, 0]]);
        let d = Dmar::parse(&t).unwrap();
        assert!(matches!(
            d.structures().collect::<Vec<_>>()[..],
            [Structure::Malformed {
                reason: Malformed::BadLength(2),
                ..
            }]
        ));
    }

    #[test]
    fn bad_scopes_are_reported() {
        for bad in [
            vec![1, 5, 0, 0, 0, 0],
            vec![1, 40, 0, 0, 0, 0, 1, 0],
            vec![1, 7, 0, 0, 0, 0, 1],
            vec![1, 2],
        ] {
            let mut body = scope(1, 0, 0, &[(2, 0)]);
            body.extend_from_slice(&bad);
            let t = dmar(&[drhd(0, 0x1000, &[body])]);
            let d = Dmar::parse(&t).unwrap();
            let u = d.units().next().unwrap();
            let scopes: Vec<_> = u.scopes.collect();
            assert_eq!(scopes.len(), 2, "{bad:?}");
            assert!(scopes[0].is_ok());
            assert!(matches!(scopes[1], Err(Malformed::BadLength(_))));
            // The good scope still matches.
            assert!(u.scopes.contains(Bdf::new(0, 2, 0), |_| None));
        }
        // An empty path names nothing.
        let t = dmar(&[drhd(0, 0x1000, &[scope(1, 0, 0, &[])])]);
        let d = Dmar::parse(&t).unwrap();
        assert!(
            !d.units()
                .next()
                .unwrap()
                .scopes
                .contains(Bdf::new(0, 0, 0), |_| None)
        );
    }

    #[test]
    fn table_level_errors() {
        let mut t = qemu_like();
        t[0] = b'X';
        iova_core::acpi::test_support::fix_checksum(&mut t);
        assert_eq!(
            Dmar::parse(&t).err(),
            Some(AcpiError::BadSignature(*b"XMAR"))
        );
        let mut t = qemu_like();
        t[50] ^= 1;
        assert_eq!(
            Dmar::parse(&t).err(),
            Some(AcpiError::BadChecksum(*b"DMAR"))
        );
        let t = table(b"DMAR", 1, &[38, 0]);
        assert_eq!(Dmar::parse(&t).err(), Some(AcpiError::TooShort(*b"DMAR")));
        // Trailing bytes after the table's length are not part of it.
        let mut t = qemu_like();
        let n = t.len();
        t.extend_from_slice(&[0xff; 16]);
        let d = Dmar::parse(&t).unwrap();
        assert_eq!(d.structures().count(), 2);
        assert_eq!(n, 48 + 16 + 8 * 4 + 8);
    }

    #[test]
    fn corrupted_tables_never_panic() {
        // Flip bytes of a real-looking table (keeping the checksum valid) and
        // walk everything; any panic or out-of-bounds read fails the test.
        let base = dmar(&[
            drhd(
                0,
                0xfed9_0000,
                &[scope(1, 0, 0, &[(1, 0)]), scope(2, 0, 0, &[(2, 0), (0, 0)])],
            ),
            rmrr(0x1000, 0x1fff, &[scope(1, 0, 0, &[(3, 0)])]),
            atsr(0),
        ]);
        let mut seed = 0x1234_5678_9abc_def0u64;
        let rounds = if cfg!(miri) { 500 } else { 20_000 };
        for _ in 0..rounds {
            let mut t = base.clone();
            for _ in 0..3 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let i = 36 + (seed as usize % (t.len() - 36));
                t[i] = (seed >> 32) as u8;
            }
            iova_core::acpi::test_support::fix_checksum(&mut t);
            let Ok(d) = Dmar::parse(&t) else { continue };
            let mut n = 0;
            for s in d.structures() {
                n += 1;
                let scopes = match s {
                    Structure::Drhd(u) => u.scopes,
                    Structure::Rmrr(r) => r.scopes,
                    Structure::Atsr(a) => a.scopes,
                    _ => continue,
                };
                for sc in scopes.flatten() {
                    let _ = sc.resolve(|b| Some(b.bus.wrapping_add(1)));
                }
            }
            assert!(n <= t.len() / 4);
            let _ = d.unit_for(0, Bdf::new(0, 1, 0), |b| Some((b.bus + 1, b.bus + 1)));
        }
    }

    #[test]
    fn bdf_source_ids() {
        let b = Bdf::new(0x12, 0x1f, 7);
        assert_eq!(b.source_id(), 0x12ff);
        assert_eq!(Bdf::from_source_id(0x0008), Bdf::new(0, 1, 0));
        assert_eq!(Bdf::from_source_id(b.source_id()), b);
        assert_eq!(std::format!("{b}"), "12:1f.7");
    }
}

//! ACPI: from the RSDP through the XSDT (or RSDT) to one table, with every
//! checksum verified and every length checked against what was read.
//!
//! Firmware tables are input we do not trust: a bad signature, checksum or
//! length is an [`AcpiError`], never a panic or a read past a table. Memory is
//! reached through [`PhysMemory`], so the parser works the same on identity
//! mapped bare metal, in a hypervisor with its own mapping, and on the host
//! over hand-built byte arrays.
//!
//! Shared by the backends: each parses its own table (VT-d's DMAR, the
//! SMMUv3's IORT, virtio-iommu's VIOT) from the bytes [`find_table`] or
//! [`verify_table`] hand it, so header, checksum and length checks are done
//! one way.

use core::fmt;

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, KnownLayout, Unaligned};

/// Read access to physical memory holding firmware tables.
pub trait PhysMemory {
    /// The `len` bytes at physical address `pa`, or `None` if they cannot be
    /// reached (not mapped, not RAM, out of range).
    fn read(&self, pa: u64, len: usize) -> Option<&[u8]>;
}

/// Why an ACPI table could not be found or used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum AcpiError {
    /// The bytes at this address could not be read.
    Unreadable(u64),
    /// The RSDP's signature is not `"RSD PTR "`.
    BadRsdpSignature,
    /// A checksum does not sum to zero (the table's signature, or `RSDP`).
    BadChecksum([u8; 4]),
    /// A table is shorter than its header, or than a structure it must hold.
    TooShort([u8; 4]),
    /// A table's signature is not the one expected (the one found).
    BadSignature([u8; 4]),
    /// The XSDT/RSDT lists no table with this signature.
    NotFound([u8; 4]),
}

impl fmt::Display for AcpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn sig(s: &[u8; 4]) -> &str {
            core::str::from_utf8(s).unwrap_or("????")
        }
        match self {
            Self::Unreadable(pa) => write!(f, "ACPI: cannot read memory at {pa:#x}"),
            Self::BadRsdpSignature => f.write_str("ACPI: bad RSDP signature"),
            Self::BadChecksum(s) => write!(f, "ACPI: {} checksum mismatch", sig(s)),
            Self::TooShort(s) => write!(f, "ACPI: {} table too short", sig(s)),
            Self::BadSignature(s) => write!(f, "ACPI: unexpected signature {}", sig(s)),
            Self::NotFound(s) => write!(f, "ACPI: no {} table", sig(s)),
        }
    }
}

/// The ACPI 1.0 part of the RSDP (20 bytes).
#[derive(FromBytes, KnownLayout, Immutable, Unaligned, Debug)]
#[repr(C)]
struct RsdpV1 {
    signature: [u8; 8],
    checksum: u8,
    oem_id: [u8; 6],
    revision: u8,
    rsdt_address: U32,
}

/// The ACPI 2.0+ RSDP (36 bytes).
#[derive(FromBytes, KnownLayout, Immutable, Unaligned, Debug)]
#[repr(C)]
struct RsdpV2 {
    v1: RsdpV1,
    length: U32,
    xsdt_address: U64,
    extended_checksum: u8,
    reserved: [u8; 3],
}

/// The header every system description table starts with (36 bytes).
#[derive(FromBytes, KnownLayout, Immutable, Unaligned, Debug, Clone, Copy)]
#[repr(C)]
pub struct SdtHeader {
    /// Four ASCII characters naming the table.
    pub signature: [u8; 4],
    /// Length of the whole table, header included.
    pub length: U32,
    /// Revision of the table's structure.
    pub revision: u8,
    /// Makes the bytes of the whole table sum to zero.
    pub checksum: u8,
    /// OEM identifier.
    pub oem_id: [u8; 6],
    /// OEM table identifier.
    pub oem_table_id: [u8; 8],
    /// OEM revision.
    pub oem_revision: U32,
    /// Vendor of the tool that built the table.
    pub creator_id: U32,
    /// Revision of that tool.
    pub creator_revision: U32,
}

/// Size of [`SdtHeader`].
pub const SDT_HEADER_LEN: usize = core::mem::size_of::<SdtHeader>();

const RSDP_SIGNATURE: &[u8; 8] = b"RSD PTR ";
const RSDP_TAG: [u8; 4] = *b"RSDP";

/// Whether `bytes` sum to zero modulo 256.
pub fn checksum_ok(bytes: &[u8]) -> bool {
    bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b)) == 0
}

/// What a verified RSDP points to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rsdp {
    /// ACPI revision (0 for ACPI 1.0, 2 for 2.0 and later).
    pub revision: u8,
    /// Physical address of the RSDT (32-bit entries).
    pub rsdt: u32,
    /// Physical address of the XSDT (64-bit entries), revision 2 and later.
    pub xsdt: Option<u64>,
}

impl Rsdp {
    /// Verifies and decodes an RSDP: signature, the 20-byte checksum and, for
    /// revision 2 and later, the extended checksum over its stated length.
    pub fn parse(bytes: &[u8]) -> Result<Self, AcpiError> {
        let (v1, _) = RsdpV1::ref_from_prefix(bytes).map_err(|_| AcpiError::TooShort(RSDP_TAG))?;
        if &v1.signature != RSDP_SIGNATURE {
            return Err(AcpiError::BadRsdpSignature);
        }
        if !checksum_ok(&bytes[..core::mem::size_of::<RsdpV1>()]) {
            return Err(AcpiError::BadChecksum(RSDP_TAG));
        }
        let mut rsdp = Rsdp {
            revision: v1.revision,
            rsdt: v1.rsdt_address.get(),
            xsdt: None,
        };
        if v1.revision >= 2 {
            let (v2, _) =
                RsdpV2::ref_from_prefix(bytes).map_err(|_| AcpiError::TooShort(RSDP_TAG))?;
            let len = v2.length.get() as usize;
            if len < core::mem::size_of::<RsdpV2>() || len > bytes.len() {
                return Err(AcpiError::TooShort(RSDP_TAG));
            }
            if !checksum_ok(&bytes[..len]) {
                return Err(AcpiError::BadChecksum(RSDP_TAG));
            }
            rsdp.xsdt = Some(v2.xsdt_address.get()).filter(|&a| a != 0);
        }
        Ok(rsdp)
    }

    /// Reads and verifies the RSDP at `pa`.
    pub fn read<M: PhysMemory + ?Sized>(mem: &M, pa: u64) -> Result<Self, AcpiError> {
        let v1 = mem
            .read(pa, core::mem::size_of::<RsdpV1>())
            .ok_or(AcpiError::Unreadable(pa))?;
        let revision = RsdpV1::ref_from_prefix(v1)
            .map_err(|_| AcpiError::TooShort(RSDP_TAG))?
            .0
            .revision;
        if revision < 2 {
            return Self::parse(v1);
        }
        let head = mem
            .read(pa, core::mem::size_of::<RsdpV2>())
            .ok_or(AcpiError::Unreadable(pa))?;
        let len = RsdpV2::ref_from_prefix(head)
            .map_err(|_| AcpiError::TooShort(RSDP_TAG))?
            .0
            .length
            .get() as usize;
        // A length beyond 4 KiB is not an RSDP; do not ask to map it.
        let len = len.clamp(core::mem::size_of::<RsdpV2>(), 4096);
        Self::parse(mem.read(pa, len).ok_or(AcpiError::Unreadable(pa))?)
    }
}

/// Verifies a whole table in `bytes`: its header fits, its length is within
/// `bytes`, its checksum is zero. Returns exactly the table's bytes.
pub fn verify_table(bytes: &[u8]) -> Result<(&SdtHeader, &[u8]), AcpiError> {
    let (header, _) =
        SdtHeader::ref_from_prefix(bytes).map_err(|_| AcpiError::TooShort(*b"????"))?;
    let len = header.length.get() as usize;
    if len < SDT_HEADER_LEN || len > bytes.len() {
        return Err(AcpiError::TooShort(header.signature));
    }
    let table = &bytes[..len];
    if !checksum_ok(table) {
        return Err(AcpiError::BadChecksum(header.signature));
    }
    Ok((header, table))
}

/// Reads the table at `pa` (header first, then its stated length) and
/// verifies it.
pub fn read_table<M: PhysMemory + ?Sized>(mem: &M, pa: u64) -> Result<&[u8], AcpiError> {
    let head = mem
        .read(pa, SDT_HEADER_LEN)
        .ok_or(AcpiError::Unreadable(pa))?;
    let (header, _) =
        SdtHeader::ref_from_prefix(head).map_err(|_| AcpiError::TooShort(*b"????"))?;
    let len = header.length.get() as usize;
    if len < SDT_HEADER_LEN {
        return Err(AcpiError::TooShort(header.signature));
    }
    let bytes = mem.read(pa, len).ok_or(AcpiError::Unreadable(pa))?;
    verify_table(bytes).map(|(_, t)| t)
}

/// Finds the table with `signature` through the RSDP at `rsdp_pa`: the XSDT
/// when the RSDP has one, the RSDT otherwise. Listed tables that cannot be
/// read or fail their checksum are skipped; the one found is verified.
pub fn find_table<M: PhysMemory + ?Sized>(
    mem: &M,
    rsdp_pa: u64,
    signature: [u8; 4],
) -> Result<&[u8], AcpiError> {
    let rsdp = Rsdp::read(mem, rsdp_pa)?;
    let (root_pa, entry_len, root_sig) = match rsdp.xsdt {
        Some(x) => (x, 8, *b"XSDT"),
        None => (u64::from(rsdp.rsdt), 4, *b"RSDT"),
    };
    let root = read_table(mem, root_pa)?;
    if root[..4] != root_sig {
        return Err(AcpiError::BadSignature(
            root[..4].try_into().unwrap_or(*b"????"),
        ));
    }
    let mut bad = None;
    for entry in root[SDT_HEADER_LEN..].chunks_exact(entry_len) {
        let pa = match entry_len {
            8 => u64::from_le_bytes(entry.try_into().unwrap_or([0; 8])),
            _ => u64::from(u32::from_le_bytes(entry.try_into().unwrap_or([0; 4]))),
        };
        let Some(head) = mem.read(pa, SDT_HEADER_LEN) else {
            continue;
        };
        if head[..4] != signature {
            continue;
        }
        match read_table(mem, pa) {
            Ok(t) => return Ok(t),
            // Another table with this signature may follow; report this
            // error only if none does.
            Err(e) => bad = Some(e),
        }
    }
    Err(bad.unwrap_or(AcpiError::NotFound(signature)))
}

/// Hand-built ACPI tables in a fake physical memory, for the backends'
/// tests of their own tables (feature `fakes`).
#[cfg(any(test, feature = "fakes"))]
pub mod test_support {
    extern crate std;
    use std::vec::Vec;

    use super::PhysMemory;

    /// A sparse physical memory: byte blobs at addresses.
    #[derive(Default)]
    pub struct Blobs(pub Vec<(u64, Vec<u8>)>);

    impl PhysMemory for Blobs {
        fn read(&self, pa: u64, len: usize) -> Option<&[u8]> {
            self.0.iter().find_map(|(base, b)| {
                let off = pa.checked_sub(*base)? as usize;
                b.get(off..off.checked_add(len)?)
            })
        }
    }

    /// Sets byte 9 (the SDT checksum) so the table sums to zero.
    pub fn fix_checksum(t: &mut [u8]) {
        t[9] = 0;
        let s = t.iter().fold(0u8, |s, &b| s.wrapping_add(b));
        t[9] = 0u8.wrapping_sub(s);
    }

    /// A table: header with `sig`, then `body`, checksummed.
    pub fn table(sig: &[u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(sig);
        t.extend_from_slice(&((36 + body.len()) as u32).to_le_bytes());
        t.push(revision);
        t.push(0);
        t.extend_from_slice(b"OEMID ");
        t.extend_from_slice(b"TABLEID ");
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(b"TEST");
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(body);
        fix_checksum(&mut t);
        t
    }

    /// An RSDP of revision 0 (RSDT only) or 2 (with an XSDT).
    pub fn rsdp(rsdt: u32, xsdt: Option<u64>) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(b"RSD PTR ");
        r.push(0);
        r.extend_from_slice(b"OEMID ");
        r.push(if xsdt.is_some() { 2 } else { 0 });
        r.extend_from_slice(&rsdt.to_le_bytes());
        let sum = r.iter().fold(0u8, |s, &b| s.wrapping_add(b));
        r[8] = 0u8.wrapping_sub(sum);
        if let Some(x) = xsdt {
            r.extend_from_slice(&36u32.to_le_bytes());
            r.extend_from_slice(&x.to_le_bytes());
            r.push(0);
            r.extend_from_slice(&[0; 3]);
            let sum = r.iter().fold(0u8, |s, &b| s.wrapping_add(b));
            r[32] = 0u8.wrapping_sub(sum);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec;

    use super::test_support::*;
    use super::*;

    fn machine(xsdt: bool) -> Blobs {
        let dmar = table(b"DMAR", 1, &[0x26, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let apic = table(b"APIC", 1, &[1, 2, 3, 4]);
        let mut b = Blobs::default();
        b.0.push((0x2000, apic));
        b.0.push((0x3000, dmar));
        if xsdt {
            let mut body = vec![];
            body.extend_from_slice(&0x2000u64.to_le_bytes());
            body.extend_from_slice(&0x3000u64.to_le_bytes());
            b.0.push((0x1000, table(b"XSDT", 1, &body)));
            b.0.push((0xe0000, rsdp(0, Some(0x1000))));
        } else {
            let mut body = vec![];
            body.extend_from_slice(&0x2000u32.to_le_bytes());
            body.extend_from_slice(&0x3000u32.to_le_bytes());
            b.0.push((0x1000, table(b"RSDT", 1, &body)));
            b.0.push((0xe0000, rsdp(0x1000, None)));
        }
        b
    }

    #[test]
    fn finds_a_table_through_xsdt_and_rsdt() {
        for xsdt in [false, true] {
            let m = machine(xsdt);
            let t = find_table(&m, 0xe0000, *b"DMAR").unwrap();
            assert_eq!(&t[..4], b"DMAR");
            assert_eq!(t.len(), 48);
            let r = Rsdp::read(&m, 0xe0000).unwrap();
            assert_eq!(r.xsdt.is_some(), xsdt);
            assert_eq!(
                find_table(&m, 0xe0000, *b"SRAT"),
                Err(AcpiError::NotFound(*b"SRAT"))
            );
        }
    }

    #[test]
    fn rsdp_errors() {
        let good = rsdp(0x1000, Some(0x2000));
        assert!(Rsdp::parse(&good).is_ok());
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(Rsdp::parse(&bad), Err(AcpiError::BadRsdpSignature));
        let mut bad = good.clone();
        bad[12] ^= 1; // inside the v1 checksum's range
        assert_eq!(Rsdp::parse(&bad), Err(AcpiError::BadChecksum(*b"RSDP")));
        let mut bad = good.clone();
        bad[25] ^= 1; // only the extended checksum covers this
        assert_eq!(Rsdp::parse(&bad), Err(AcpiError::BadChecksum(*b"RSDP")));
        assert_eq!(Rsdp::parse(&good[..20]), Err(AcpiError::TooShort(*b"RSDP")));
        assert_eq!(Rsdp::parse(&good[..10]), Err(AcpiError::TooShort(*b"RSDP")));
        // A stated length beyond the bytes is refused, not read.
        let mut long = good.clone();
        long[20..24].copy_from_slice(&1000u32.to_le_bytes());
        assert_eq!(Rsdp::parse(&long), Err(AcpiError::TooShort(*b"RSDP")));
    }

    #[test]
    fn bad_tables_are_reported_or_skipped() {
        // Corrupt the DMAR checksum: reported.
        let mut m = machine(true);
        m.0[1].1[40] ^= 0xff;
        assert_eq!(
            find_table(&m, 0xe0000, *b"DMAR"),
            Err(AcpiError::BadChecksum(*b"DMAR"))
        );
        // A DMAR whose length runs past readable memory: unreadable, not read.
        let mut m = machine(true);
        m.0[1].1[4..8].copy_from_slice(&0x10_0000u32.to_le_bytes());
        assert_eq!(
            find_table(&m, 0xe0000, *b"DMAR"),
            Err(AcpiError::Unreadable(0x3000))
        );
        // Length shorter than a header.
        let mut t = table(b"DMAR", 1, &[]);
        t[4..8].copy_from_slice(&10u32.to_le_bytes());
        assert_eq!(verify_table(&t).err(), Some(AcpiError::TooShort(*b"DMAR")));
        // An XSDT entry pointing nowhere is skipped.
        let mut m = machine(true);
        let mut body = vec![];
        body.extend_from_slice(&0xdead_0000u64.to_le_bytes());
        body.extend_from_slice(&0x3000u64.to_le_bytes());
        m.0[2].1 = table(b"XSDT", 1, &body);
        assert!(find_table(&m, 0xe0000, *b"DMAR").is_ok());
        // An RSDP pointing at something that is not an XSDT.
        let mut m = machine(true);
        m.0[3].1 = rsdp(0, Some(0x2000));
        assert_eq!(
            find_table(&m, 0xe0000, *b"DMAR"),
            Err(AcpiError::BadSignature(*b"APIC"))
        );
        assert_eq!(
            find_table(&m, 0x5000, *b"DMAR"),
            Err(AcpiError::Unreadable(0x5000))
        );
    }
}

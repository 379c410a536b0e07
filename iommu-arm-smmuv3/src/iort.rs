//! StreamIDs and SMMUv3 bases from ACPI: the IO Remapping Table (IORT, Arm
//! DEN 0049). On ACPI systems this replaces the device tree's
//! `arm,smmu-v3` node and `iommu-map`: an SMMUv3 node gives the register
//! base, and a PCI root complex node's ID mappings turn requester IDs into
//! StreamIDs of a given SMMU. Every offset and length is bounds-checked; a
//! malformed table is an error, never a panic.

use iova_core::acpi::{AcpiError, verify_table};

/// The IORT header: the standard 36 bytes, node count, node array offset,
/// a reserved word.
const IORT_HEADER_LEN: usize = 48;

/// Node types.
pub mod node {
    /// ITS group.
    pub const ITS_GROUP: u8 = 0;
    /// Named component.
    pub const NAMED_COMPONENT: u8 = 1;
    /// PCI root complex.
    pub const ROOT_COMPLEX: u8 = 2;
    /// SMMUv1/v2.
    pub const SMMU_V2: u8 = 3;
    /// SMMUv3.
    pub const SMMU_V3: u8 = 4;
}

/// Why the table was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum IortError {
    /// Not an IORT (signature), or shorter than its header.
    NotIort,
    /// The length field exceeds the bytes given.
    Truncated,
    /// The bytes do not sum to zero.
    BadChecksum,
    /// A node or ID array lies (partly) outside the table.
    BadOffset(u32),
}

/// An SMMUv3 node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmmuV3 {
    /// Offset of the node in the table (what ID mappings refer to).
    pub offset: u32,
    /// Register base address.
    pub base: u64,
    /// Flags bit 0: the SMMU's accesses are coherent (overrides IDR0.COHACC).
    pub coherent_override: bool,
    /// Model (0 = generic SMMUv3).
    pub model: u32,
}

/// An IORT, borrowed.
#[derive(Clone, Copy, Debug)]
pub struct Iort<'a> {
    t: &'a [u8],
}

fn u8_at(t: &[u8], o: usize) -> Option<u8> {
    t.get(o).copied()
}
fn u16_at(t: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        t.get(o..o.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn u32_at(t: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        t.get(o..o.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn u64_at(t: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        t.get(o..o.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// A node: its type, offset and bytes.
#[derive(Clone, Copy, Debug)]
struct Node<'a> {
    ty: u8,
    offset: u32,
    bytes: &'a [u8],
}

impl<'a> Iort<'a> {
    /// Checks the signature, length and checksum of `bytes` (the whole table,
    /// header included) and every node's bounds.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, IortError> {
        if bytes.len() < IORT_HEADER_LEN || &bytes[..4] != b"IORT" {
            return Err(IortError::NotIort);
        }
        // The IORT's own header (node count and offset) must fit too.
        if (u32_at(bytes, 4).ok_or(IortError::NotIort)? as usize) < IORT_HEADER_LEN {
            return Err(IortError::Truncated);
        }
        // Length and checksum, checked as for every ACPI table.
        let (_, t) = verify_table(bytes).map_err(|e| match e {
            AcpiError::BadChecksum(_) => IortError::BadChecksum,
            AcpiError::TooShort(_) => IortError::Truncated,
            _ => IortError::NotIort,
        })?;
        let iort = Self { t };
        for n in iort.nodes() {
            let n = n?;
            let maps = u32_at(n.bytes, 8).ok_or(IortError::BadOffset(n.offset))? as usize;
            let at = u32_at(n.bytes, 12).ok_or(IortError::BadOffset(n.offset))? as usize;
            if maps != 0
                && maps
                    .checked_mul(20)
                    .and_then(|m| m.checked_add(at))
                    .is_none_or(|end| end > n.bytes.len())
            {
                return Err(IortError::BadOffset(n.offset));
            }
        }
        Ok(iort)
    }

    fn node_at(&self, offset: u32) -> Result<Node<'a>, IortError> {
        let o = offset as usize;
        let bad = IortError::BadOffset(offset);
        let ty = u8_at(self.t, o).ok_or(bad)?;
        let len = u16_at(self.t, o + 1).ok_or(bad)? as usize;
        if len < 16 {
            return Err(bad);
        }
        let bytes = self.t.get(o..o.checked_add(len).ok_or(bad)?).ok_or(bad)?;
        Ok(Node { ty, offset, bytes })
    }

    fn nodes(&self) -> impl Iterator<Item = Result<Node<'a>, IortError>> + '_ {
        let count = u32_at(self.t, 36).unwrap_or(0);
        let first = u32_at(self.t, 40).unwrap_or(0);
        let mut at = first;
        let mut failed = false;
        (0..count).map_while(move |_| {
            if failed {
                return None;
            }
            let n = self.node_at(at);
            match n {
                Ok(node) => at = at.saturating_add(node.bytes.len() as u32),
                Err(_) => failed = true,
            }
            Some(n)
        })
    }

    /// Every SMMUv3 node.
    pub fn smmuv3_nodes(&self) -> impl Iterator<Item = SmmuV3> + '_ {
        self.nodes()
            .filter_map(Result::ok)
            .filter(|n| n.ty == node::SMMU_V3)
            .filter_map(|n| {
                Some(SmmuV3 {
                    offset: n.offset,
                    base: u64_at(n.bytes, 16)?,
                    coherent_override: u32_at(n.bytes, 24)? & 1 != 0,
                    model: u32_at(n.bytes, 40)?,
                })
            })
    }

    /// The SMMUv3 and StreamID that requester `rid` of PCI segment `segment`
    /// is mapped to, if a root complex node maps it to an SMMUv3 node.
    pub fn stream_id(&self, segment: u32, rid: u32) -> Option<(SmmuV3, u32)> {
        let rc = self
            .nodes()
            .filter_map(Result::ok)
            .find(|n| n.ty == node::ROOT_COMPLEX && u32_at(n.bytes, 28) == Some(segment))?;
        let maps = u32_at(rc.bytes, 8)? as usize;
        let at = u32_at(rc.bytes, 12)? as usize;
        for i in 0..maps {
            let m = at + 20 * i;
            let input = u32_at(rc.bytes, m)?;
            // The field holds the number of IDs minus one.
            let count = u32_at(rc.bytes, m + 4)?;
            let output = u32_at(rc.bytes, m + 8)?;
            let target = u32_at(rc.bytes, m + 12)?;
            let single = u32_at(rc.bytes, m + 16)? & 1 != 0;
            let Some(off) = rid.checked_sub(input) else {
                continue;
            };
            if off > count {
                continue;
            }
            let Some(smmu) = self.smmuv3_nodes().find(|s| s.offset == target) else {
                continue;
            };
            let sid = if single {
                output
            } else {
                output.checked_add(off)?
            };
            return Some((smmu, sid));
        }
        None
    }
}

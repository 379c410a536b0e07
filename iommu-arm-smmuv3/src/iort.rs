//! StreamIDs and SMMUv3 bases from ACPI: the IO Remapping Table (IORT, Arm
//! DEN 0049). On ACPI systems this replaces the device tree's
//! `arm,smmu-v3` node and `iommu-map`: an SMMUv3 node gives the register
//! base, and a PCI root complex node's ID mappings turn requester IDs into
//! StreamIDs of a given SMMU. Every offset and length is bounds-checked; a
//! malformed table is an error, never a panic.

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
        if bytes.len() < 48 || &bytes[..4] != b"IORT" {
            return Err(IortError::NotIort);
        }
        let len = u32_at(bytes, 4).ok_or(IortError::NotIort)? as usize;
        if len < 48 || len > bytes.len() {
            return Err(IortError::Truncated);
        }
        let t = &bytes[..len];
        if t.iter().fold(0u8, |a, &b| a.wrapping_add(b)) != 0 {
            return Err(IortError::BadChecksum);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// An IORT with one SMMUv3 (base 0x0905_0000, coherent) and one root
    /// complex (segment 0) whose RIDs 0..=0xffff map to StreamIDs 0x1_0000..,
    /// plus an ITS group that RIDs also map to (which is no IOMMU).
    fn table() -> std::vec::Vec<u8> {
        let mut t = std::vec![0u8; 48];
        t[..4].copy_from_slice(b"IORT");
        t[8] = 3; // revision
        let its_off = 48u32;
        let mut its = std::vec![0u8; 24];
        its[0] = node::ITS_GROUP;
        its[1..3].copy_from_slice(&24u16.to_le_bytes());
        its[16..20].copy_from_slice(&1u32.to_le_bytes()); // one ITS
        let smmu_off = its_off + its.len() as u32;
        let mut smmu = std::vec![0u8; 68];
        smmu[0] = node::SMMU_V3;
        smmu[1..3].copy_from_slice(&68u16.to_le_bytes());
        smmu[16..24].copy_from_slice(&0x0905_0000u64.to_le_bytes());
        smmu[24..28].copy_from_slice(&1u32.to_le_bytes());
        let mut rc = std::vec![0u8; 36 + 2 * 20];
        rc[0] = node::ROOT_COMPLEX;
        let rc_len = rc.len() as u16;
        rc[1..3].copy_from_slice(&rc_len.to_le_bytes());
        rc[8..12].copy_from_slice(&2u32.to_le_bytes()); // two mappings
        rc[12..16].copy_from_slice(&36u32.to_le_bytes());
        rc[28..32].copy_from_slice(&0u32.to_le_bytes()); // segment 0
        // Mapping 0: RIDs 0x100..=0x1ff -> the ITS (not an IOMMU).
        let m0 = [0x100u32, 0xff, 0, its_off, 0];
        // Mapping 1: RIDs 0..=0xffff -> SMMU StreamIDs 0x1_0000 + RID.
        let m1 = [0u32, 0xffff, 0x1_0000, smmu_off, 0];
        for (i, m) in [m0, m1].iter().enumerate() {
            for (j, v) in m.iter().enumerate() {
                let o = 36 + 20 * i + 4 * j;
                rc[o..o + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
        t.extend_from_slice(&its);
        t.extend_from_slice(&smmu);
        t.extend_from_slice(&rc);
        let len = t.len() as u32;
        t[4..8].copy_from_slice(&len.to_le_bytes());
        t[36..40].copy_from_slice(&3u32.to_le_bytes());
        t[40..44].copy_from_slice(&its_off.to_le_bytes());
        let sum = t.iter().fold(0u8, |a, &b| a.wrapping_add(b));
        t[9] = 0u8.wrapping_sub(sum);
        t
    }

    #[test]
    fn smmu_nodes_and_stream_ids() {
        let t = table();
        let iort = Iort::parse(&t).unwrap();
        let smmus: std::vec::Vec<_> = iort.smmuv3_nodes().collect();
        assert_eq!(smmus.len(), 1);
        assert_eq!(
            (smmus[0].base, smmus[0].coherent_override, smmus[0].model),
            (0x0905_0000, true, 0)
        );
        assert_eq!(iort.stream_id(0, 0x8), Some((smmus[0], 0x1_0008)));
        // RID 0x108: the first mapping goes to the ITS, the second to the SMMU.
        assert_eq!(iort.stream_id(0, 0x108), Some((smmus[0], 0x1_0108)));
        assert_eq!(iort.stream_id(0, 0x1_0000), None);
        assert_eq!(iort.stream_id(1, 0x8), None);
    }

    #[test]
    fn refuses_malformed_tables() {
        let t = table();
        assert!(matches!(Iort::parse(&t[..40]), Err(IortError::NotIort)));
        let mut bad = t.clone();
        bad[0] = b'X';
        assert!(matches!(Iort::parse(&bad), Err(IortError::NotIort)));
        assert!(matches!(
            Iort::parse(&t[..t.len() - 1]),
            Err(IortError::Truncated)
        ));
        let mut bad = t.clone();
        bad[50] ^= 1;
        assert!(matches!(Iort::parse(&bad), Err(IortError::BadChecksum)));
        // A node length running past the end (checksum fixed up).
        let mut bad = t.clone();
        let rc = bad.len() - 76;
        bad[rc + 1] = 0xff;
        bad[rc + 2] = 0x0f;
        fix(&mut bad);
        assert!(matches!(Iort::parse(&bad), Err(IortError::BadOffset(_))));
        // An ID array beyond its node.
        let mut bad = t.clone();
        bad[rc + 8] = 9;
        fix(&mut bad);
        assert!(matches!(Iort::parse(&bad), Err(IortError::BadOffset(_))));
    }

    fn fix(t: &mut [u8]) {
        t[9] = 0;
        let sum = t.iter().fold(0u8, |a, &b| a.wrapping_add(b));
        t[9] = 0u8.wrapping_sub(sum);
    }
}

//! Device-tree IOMMU topology shared by the backends: a PCI host bridge's
//! `iommu-map` (and `iommu-map-mask`) properties, as the Linux
//! `pci-iommu.yaml` binding defines them, turn a PCI requester ID into the
//! ID the IOMMU knows the device by (an SMMU's StreamID, a virtio-iommu's
//! endpoint ID: the *output ID* here).
//!
//! Pure functions on the property bytes (big-endian cells), so any
//! device-tree reader can feed them; bad bytes are a [`MapError`], never a
//! panic.

/// Why no output ID could be derived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum MapError {
    /// The property length is not a whole number of 4-cell entries.
    Malformed,
    /// No entry covers this requester ID for this IOMMU.
    NotMapped(u32),
    /// The entry covering the requester ID maps it past `u32::MAX`.
    Overflow,
}

impl core::fmt::Display for MapError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Malformed => f.write_str("iommu-map is not a whole number of 4-cell entries"),
            Self::NotMapped(rid) => write!(f, "iommu-map has no entry for RID {rid:#x}"),
            Self::Overflow => f.write_str("iommu-map entry maps past 32 bits"),
        }
    }
}

/// One `iommu-map` entry: `<rid-base iommu-phandle iommu-base length>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapEntry {
    /// First requester ID covered.
    pub rid_base: u32,
    /// Phandle of the IOMMU node.
    pub phandle: u32,
    /// Output ID of `rid_base`.
    pub out_base: u32,
    /// Requester IDs covered.
    pub len: u32,
}

/// Size of one entry: four 32-bit cells.
pub const ENTRY_LEN: usize = 16;

/// The entries of an `iommu-map` property value.
pub fn entries(map: &[u8]) -> Result<impl Iterator<Item = MapEntry> + '_, MapError> {
    if map.len() % ENTRY_LEN != 0 {
        return Err(MapError::Malformed);
    }
    let cell = |c: &[u8]| u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
    Ok(map.chunks_exact(ENTRY_LEN).map(move |e| MapEntry {
        rid_base: cell(&e[0..4]),
        phandle: cell(&e[4..8]),
        out_base: cell(&e[8..12]),
        len: cell(&e[12..16]),
    }))
}

/// The output ID that requester `rid` gets on the IOMMU with `phandle`
/// (`None`: any IOMMU), given the host's `iommu-map` and optional
/// `iommu-map-mask` (applied to the RID first). The first entry covering
/// the masked RID wins, as in Linux's `of_map_id`.
pub fn output_id(
    map: &[u8],
    mask: Option<u32>,
    phandle: Option<u32>,
    rid: u32,
) -> Result<u32, MapError> {
    let rid_m = rid & mask.unwrap_or(u32::MAX);
    for e in entries(map)? {
        if phandle.is_some_and(|p| p != e.phandle) {
            continue;
        }
        let Some(off) = rid_m.checked_sub(e.rid_base) else {
            continue;
        };
        if off >= e.len {
            continue;
        }
        return e.out_base.checked_add(off).ok_or(MapError::Overflow);
    }
    Err(MapError::NotMapped(rid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prop<const N: usize>(entries: [[u32; 4]; N]) -> [[u8; 16]; N] {
        entries.map(|e| {
            let mut b = [0; 16];
            for (d, c) in b.chunks_exact_mut(4).zip(e) {
                d.copy_from_slice(&c.to_be_bytes());
            }
            b
        })
    }

    #[test]
    fn maps_around_a_hole_per_phandle_and_mask() {
        // QEMU virt's virtio-iommu at RID 8: <0 &v 0 8>, <9 &v 9 0xfff7>.
        let p = prop([[0, 5, 0, 8], [9, 5, 9, 0xfff7]]);
        let p = p.as_flattened();
        assert_eq!(output_id(p, None, Some(5), 0x10), Ok(0x10));
        assert_eq!(output_id(p, None, Some(5), 7), Ok(7));
        assert_eq!(output_id(p, None, Some(5), 8), Err(MapError::NotMapped(8)));
        assert_eq!(output_id(p, None, Some(5), 0xffff), Ok(0xffff));
        assert_eq!(
            output_id(p, None, Some(5), 0x1_0000),
            Err(MapError::NotMapped(0x1_0000))
        );
        assert_eq!(
            output_id(p, None, Some(6), 0x10),
            Err(MapError::NotMapped(0x10))
        );
        // Offsets and the mask (functions of a device share one ID).
        let p = prop([[0x100, 7, 0x800, 0x100]]);
        let p = p.as_flattened();
        assert_eq!(output_id(p, Some(0xfff8), None, 0x113), Ok(0x810));
        assert_eq!(entries(p).unwrap().next().unwrap().out_base, 0x800);
    }

    #[test]
    fn malformed_and_overflowing() {
        assert_eq!(output_id(&[0; 15], None, None, 0), Err(MapError::Malformed));
        let p = prop([[0, 1, u32::MAX, 4]]);
        assert_eq!(output_id(p.as_flattened(), None, None, 0), Ok(u32::MAX));
        assert_eq!(
            output_id(p.as_flattened(), None, None, 1),
            Err(MapError::Overflow)
        );
    }
}

//! StreamIDs from the device tree: the PCI host bridge's `iommu-map` (and
//! `iommu-map-mask`) properties, as the Linux `pci-iommu.yaml` binding
//! defines them. Pure functions on the property bytes, so any device-tree
//! reader can feed them.

/// Why no StreamID could be derived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum MapError {
    /// The property length is not a whole number of 4-cell entries.
    Malformed,
    /// No entry covers the requester ID for this IOMMU.
    NotMapped(u32),
    /// An entry's StreamID range overflows 32 bits.
    Overflow,
}

/// One `iommu-map` entry: `<rid-base iommu-phandle iommu-base length>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapEntry {
    /// First requester ID covered.
    pub rid_base: u32,
    /// Phandle of the IOMMU node.
    pub phandle: u32,
    /// StreamID of `rid_base`.
    pub sid_base: u32,
    /// Requester IDs covered.
    pub len: u32,
}

/// The entries of an `iommu-map` property value.
pub fn entries(map: &[u8]) -> Result<impl Iterator<Item = MapEntry> + '_, MapError> {
    if map.len() % 16 != 0 {
        return Err(MapError::Malformed);
    }
    let cell = |c: &[u8]| u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
    Ok(map.chunks_exact(16).map(move |e| MapEntry {
        rid_base: cell(&e[0..4]),
        phandle: cell(&e[4..8]),
        sid_base: cell(&e[8..12]),
        len: cell(&e[12..16]),
    }))
}

/// The StreamID that requester `rid` gets on the IOMMU with `phandle`
/// (`None`: any IOMMU), given the host's `iommu-map` and optional
/// `iommu-map-mask` (applied to the RID first).
pub fn stream_id(
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
        return e.sid_base.checked_add(off).ok_or(MapError::Overflow);
    }
    Err(MapError::NotMapped(rid))
}

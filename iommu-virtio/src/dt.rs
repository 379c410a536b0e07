//! Which virtio-iommu translates which PCI function, from the device tree
//! (the `virtio,pci-iommu` binding, Linux's `virtio/pci-iommu.yaml`).
//!
//! A virtio-iommu that is a PCI function has a node under its PCI host
//! bridge: `compatible` is `"virtio,pci-iommu"` or `"pci1af4,1057"`, `reg`
//! is its PCI address (five cells, the BDF in bits 23:8 of the first),
//! `#iommu-cells = <1>`, and a `phandle`. The host bridge's `iommu-map`
//! (and optional `iommu-map-mask`) maps requester IDs to endpoint IDs of
//! that phandle, decoded by [`iova_core::dt`], the decoder the backends
//! share. QEMU's virt machine leaves the IOMMU's own RID out of the map
//! (`<0 &viommu 0 bdf>, <bdf+1 &viommu bdf+1 0xffff-bdf>`); a map that
//! covers it anyway is not followed: the IOMMU does not translate itself
//! ([`DtError::IsIommu`]), as with the VIOT ([`crate::viot`]).

use core::fmt;

pub use iova_core::dt::MapError;

/// The `compatible` strings of a virtio-iommu PCI function's node: the
/// binding's original one and the PCI one (vendor 0x1af4, device 0x1057)
/// that replaced it.
pub const COMPATIBLE: [&str; 2] = ["virtio,pci-iommu", "pci1af4,1057"];

/// Why the device tree gives no endpoint ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum DtError {
    /// The node's `reg` is not a five-cell PCI address.
    BadReg,
    /// The node has no `phandle`, so no `iommu-map` entry can name it.
    NoPhandle,
    /// The node's `#iommu-cells` is missing or not 1.
    IommuCells(Option<u32>),
    /// The `iommu-map` does not give one: malformed, no entry for this RID
    /// and IOMMU ([`MapError::NotMapped`]), or an ID past 32 bits.
    Map(MapError),
    /// The RID is the virtio-iommu's own.
    IsIommu(u16),
}

impl fmt::Display for DtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadReg => f.write_str("virtio-iommu node: reg is not a 5-cell PCI address"),
            Self::NoPhandle => f.write_str("virtio-iommu node has no phandle"),
            Self::IommuCells(c) => write!(f, "virtio-iommu node: #iommu-cells {c:?}, not 1"),
            Self::Map(e) => write!(f, "{e}"),
            Self::IsIommu(rid) => write!(f, "RID {rid:#x} is the virtio-iommu itself"),
        }
    }
}

impl From<MapError> for DtError {
    fn from(e: MapError) -> Self {
        Self::Map(e)
    }
}

/// A virtio-iommu PCI function's device-tree node, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct DtIommu {
    /// Its PCI bus, device, function (from `reg`).
    pub bdf: u16,
    /// Its phandle (what `iommu-map` entries name).
    pub phandle: u32,
}

impl DtIommu {
    /// Checks the node's properties: `reg` (raw bytes), `phandle` and
    /// `#iommu-cells` (as read, `None` if absent).
    pub fn from_node(
        reg: Option<&[u8]>,
        phandle: Option<u32>,
        iommu_cells: Option<u32>,
    ) -> Result<Self, DtError> {
        let reg = reg.filter(|r| r.len() == 20).ok_or(DtError::BadReg)?;
        let hi = u32::from_be_bytes([reg[0], reg[1], reg[2], reg[3]]);
        // phys.hi is 0b00000000 bbbbbbbb dddddfff 00000000 for a function's
        // own node (no address space bits, register 0).
        if hi & 0xff00_00ff != 0 {
            return Err(DtError::BadReg);
        }
        if iommu_cells != Some(1) {
            return Err(DtError::IommuCells(iommu_cells));
        }
        Ok(Self {
            bdf: (hi >> 8) as u16,
            phandle: phandle.ok_or(DtError::NoPhandle)?,
        })
    }

    /// The endpoint ID of requester `rid` from the PCI host's `iommu-map`
    /// and optional `iommu-map-mask` (property bytes as in the tree).
    pub fn endpoint_id(
        &self,
        iommu_map: &[u8],
        mask: Option<u32>,
        rid: u16,
    ) -> Result<u32, DtError> {
        if rid == self.bdf {
            return Err(DtError::IsIommu(rid));
        }
        Ok(iova_core::dt::output_id(
            iommu_map,
            mask,
            Some(self.phandle),
            u32::from(rid),
        )?)
    }
}

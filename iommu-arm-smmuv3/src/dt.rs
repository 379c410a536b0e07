//! StreamIDs from the device tree: the PCI host bridge's `iommu-map` (and
//! `iommu-map-mask`) properties, as the Linux `pci-iommu.yaml` binding
//! defines them. The decoder is shared by the backends
//! ([`iova_core::dt`]); an SMMU calls its output IDs StreamIDs.

pub use iova_core::dt::{MapEntry, MapError, entries};

/// The StreamID that requester `rid` gets on the IOMMU with `phandle`
/// (`None`: any IOMMU), given the host's `iommu-map` and optional
/// `iommu-map-mask` (applied to the RID first): [`iova_core::dt::output_id`].
pub fn stream_id(
    map: &[u8],
    mask: Option<u32>,
    phandle: Option<u32>,
    rid: u32,
) -> Result<u32, MapError> {
    iova_core::dt::output_id(map, mask, phandle, rid)
}

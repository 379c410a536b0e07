//! What the device tree says about the SMMU: its registers, and which
//! StreamID a PCI requester ID gets (the host bridge's `iommu-map`).

use platform::dtb::{DtbError, Fdt};

/// The SMMUv3 node.
#[derive(Debug, Clone, Copy)]
pub struct SmmuNode {
    /// Register frame base.
    pub base: u64,
    /// Its size.
    pub size: u64,
    /// The node's phandle (what `iommu-map` entries point at).
    pub phandle: Option<u32>,
}

/// Why the lookup failed.
#[derive(Debug, Clone, Copy)]
pub enum DtError {
    /// The tree is malformed.
    Dtb(DtbError),
    /// No `compatible = "arm,smmu-v3"` node.
    NoSmmu,
    /// The node has no `reg`.
    NoReg,
    /// The PCI host has no `iommu-map` entry for this RID that points at our SMMU.
    NoMapping(u16),
}

impl core::fmt::Display for DtError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Dtb(e) => write!(f, "device tree: {e:?}"),
            Self::NoSmmu => f.write_str("no arm,smmu-v3 node; run QEMU with -M virt,iommu=smmuv3"),
            Self::NoReg => f.write_str("arm,smmu-v3 node has no reg"),
            Self::NoMapping(rid) => write!(f, "no iommu-map entry for RID {rid:#x}"),
        }
    }
}

/// Finds the first SMMUv3.
pub fn smmu(fdt: &Fdt<'_>) -> Result<SmmuNode, DtError> {
    let node = fdt
        .find_compatible("arm,smmu-v3")
        .map_err(DtError::Dtb)?
        .ok_or(DtError::NoSmmu)?;
    let (base, size) = node.reg().next().ok_or(DtError::NoReg)?;
    Ok(SmmuNode {
        base,
        size,
        phandle: node.prop_u32("phandle"),
    })
}

/// The StreamID of requester `rid`: from the `iommu-map` (and
/// `iommu-map-mask`) of the ECAM host bridge, decoded by the driver crate.
pub fn stream_id(fdt: &Fdt<'_>, smmu: &SmmuNode, rid: u16) -> Result<u32, DtError> {
    let host = platform::firmware::pci_host_iommu_map(fdt)
        .map_err(DtError::Dtb)?
        .ok_or(DtError::NoMapping(rid))?;
    iommu_arm_smmuv3::dt::stream_id(host.map, host.mask, smmu.phandle, u32::from(rid))
        .map_err(|_| DtError::NoMapping(rid))
}

/// The GIC INTID of the SMMU interrupt called `name` (`eventq`, `priq`,
/// `cmdq-sync`, `gerror`), from its `interrupts` / `interrupt-names`
/// (three cells each: SPI = 0, number, flags).
pub fn smmu_intid(fdt: &Fdt<'_>, name: &str) -> Option<u32> {
    let node = fdt.find_compatible("arm,smmu-v3").ok()??;
    let names = node.prop("interrupt-names")?;
    let idx = names
        .split(|&b| b == 0)
        .position(|n| n == name.as_bytes())?;
    let irqs = node.prop("interrupts")?;
    let cell = |i: usize| {
        Some(u32::from_be_bytes(
            irqs.get(4 * i..4 * i + 4)?.try_into().ok()?,
        ))
    };
    let (kind, num) = (cell(3 * idx)?, cell(3 * idx + 1)?);
    // SPIs are INTIDs 32 and up; PPIs (kind 1) 16 and up.
    Some(if kind == 0 { 32 + num } else { 16 + num })
}

/// The GICv2/v3 distributor base.
pub fn gic_distributor(fdt: &Fdt<'_>) -> Option<u64> {
    ["arm,cortex-a15-gic", "arm,gic-400", "arm,gic-v3"]
        .iter()
        .find_map(|c| fdt.find_compatible(c).ok().flatten())
        .and_then(|n| n.reg().next())
        .map(|(base, _)| base)
}

/// `/chosen/bootargs` (QEMU's `-append`), if any.
pub fn bootargs<'a>(fdt: &Fdt<'a>) -> Option<&'a str> {
    fdt.nodes()
        .filter_map(Result::ok)
        .find(|n| n.depth() == 2 && n.name() == "chosen")
        .and_then(|n| n.prop_str("bootargs"))
}

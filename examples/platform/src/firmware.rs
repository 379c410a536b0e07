//! Where the firmware's descriptions are, for the examples that read them:
//! the ACPI tables through the RSDP (x86_64, PVH start info), the device
//! tree QEMU passed (aarch64), and the PCI host bridge's `iommu-map` in it.
//! What the tables say is parsed by the driver crates (`iova_core::acpi`,
//! `iova_core::dt` and the backends' own tables).

use iova_core::acpi::PhysMemory;

use crate::BootInfo;
use crate::dtb::{DtbError, Fdt};

/// Firmware tables, read where they are: the x86_64 boot stub identity-maps
/// 0-4 GiB (aarch64 runs with the MMU off). Only below 2 GiB, where q35 has
/// RAM and nothing with read side effects.
pub struct IdentityMapped;

impl PhysMemory for IdentityMapped {
    fn read(&self, pa: u64, len: usize) -> Option<&[u8]> {
        let end = pa.checked_add(len as u64)?;
        if pa == 0 || end > 0x8000_0000 {
            return None;
        }
        // SAFETY: identity-mapped RAM (or unbacked space reading as ones);
        // firmware tables are not written while we parse them.
        Some(unsafe { core::slice::from_raw_parts(pa as usize as *const u8, len) })
    }
}

/// The RSDP's physical address from the PVH start info. ACPI is reached
/// this way only on x86_64 here; on other targets (the examples are linted
/// for them too) there is none.
#[cfg(target_arch = "x86_64")]
pub fn rsdp(boot: &BootInfo) -> Option<u64> {
    boot.arch
        .start_info
        .map(|s| s.rsdp_paddr)
        .filter(|&a| a != 0)
}

/// The RSDP's physical address: none off x86_64.
#[cfg(not(target_arch = "x86_64"))]
pub fn rsdp(_: &BootInfo) -> Option<u64> {
    None
}

/// The device tree QEMU passed (aarch64 only; none on other targets).
#[cfg(target_arch = "aarch64")]
pub fn device_tree(boot: &BootInfo) -> Option<Fdt<'static>> {
    boot.arch.dtb.ok()
}

/// The device tree: none off aarch64.
#[cfg(not(target_arch = "aarch64"))]
pub fn device_tree(_: &BootInfo) -> Option<Fdt<'static>> {
    None
}

/// The PCI host bridge's requester-ID map: `iommu-map` and, if present,
/// `iommu-map-mask`, as property bytes / value.
#[derive(Debug, Clone, Copy)]
pub struct IommuMap<'a> {
    /// The `iommu-map` property value (big-endian cells).
    pub map: &'a [u8],
    /// `iommu-map-mask`, if the host has one.
    pub mask: Option<u32>,
}

/// The `iommu-map` of the ECAM host bridge (`pci-host-ecam-generic`);
/// `None` if there is no such host or it has no map.
pub fn pci_host_iommu_map<'a>(fdt: &Fdt<'a>) -> Result<Option<IommuMap<'a>>, DtbError> {
    let Some(host) = fdt.find_compatible("pci-host-ecam-generic")? else {
        return Ok(None);
    };
    Ok(host.prop("iommu-map").map(|map| IommuMap {
        map,
        mask: host.prop_u32("iommu-map-mask"),
    }))
}

//! Which endpoint ID each device has on the virtio-iommu, as the firmware
//! says: the ACPI VIOT on q35 (found through the RSDP), the device tree's
//! `virtio,pci-iommu` node and the PCI host's `iommu-map` on virt. Both are
//! parsed by `iommu-virtio` (`viot`, `dt`).
//!
//! The IOMMU the tables name must be the virtio-iommu function we opened,
//! and a device the tables do not give an endpoint ID on it is refused by
//! name: nothing is attached under a guessed ID (such as its requester ID).

use core::fmt;

use iommu_virtio::dt::{COMPATIBLE, DtError, DtIommu};
use iommu_virtio::viot::{self, IommuLocation, IommuNode, LookupError, Viot, ViotError};
use iova_core::acpi::{AcpiError, find_table};
use platform::dtb::DtbError;
use platform::firmware::{self, IdentityMapped, IommuMap};
use platform::pci::Bdf;
use platform::{BootInfo, println};

use crate::NAME;

/// Firmware tables are read in place, for the whole run.
static MEMORY: IdentityMapped = IdentityMapped;

/// Why no endpoint ID could be had from the firmware.
#[derive(Debug, Clone, Copy)]
pub enum DiscoverError {
    /// Neither an RSDP nor a device tree.
    NoFirmware,
    /// The ACPI tables lead to no usable VIOT.
    Acpi(AcpiError),
    /// The VIOT is malformed.
    Viot(ViotError),
    /// The VIOT lists no virtio-iommu PCI function.
    NoViotIommu,
    /// The device tree is malformed.
    Dtb(DtbError),
    /// No node is compatible with `virtio,pci-iommu` / `pci1af4,1057`.
    NoDtIommu,
    /// The virtio-iommu node is unusable (`reg`, `phandle`, `#iommu-cells`).
    DtNode(DtError),
    /// The PCI host bridge has no `iommu-map`.
    NoIommuMap,
    /// The firmware's virtio-iommu is not the function we opened.
    WrongIommu {
        /// Its BDF (`bus << 8 | devfn`) in the tables.
        listed: u16,
        /// The one we opened.
        opened: Bdf,
    },
    /// The VIOT gives `device` no endpoint ID on our virtio-iommu.
    NotListed {
        /// What the device is.
        device: &'static str,
        /// Where.
        bdf: Bdf,
        /// Why.
        why: LookupError,
    },
    /// The VIOT puts `device` behind another virtio-iommu.
    OtherIommu {
        /// What the device is.
        device: &'static str,
        /// Where.
        bdf: Bdf,
        /// That IOMMU's node.
        node: IommuNode,
    },
    /// The device tree's `iommu-map` gives `device` no endpoint ID on our
    /// virtio-iommu.
    NotMapped {
        /// What the device is.
        device: &'static str,
        /// Where.
        bdf: Bdf,
        /// Why.
        why: DtError,
    },
}

impl fmt::Display for DiscoverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoFirmware => f.write_str("no RSDP and no device tree: cannot tell endpoint IDs"),
            Self::Acpi(e) => write!(f, "no VIOT: {e} (run with -device virtio-iommu-pci on q35)"),
            Self::Viot(e) => write!(f, "{e}"),
            Self::NoViotIommu => f.write_str("the VIOT lists no virtio-iommu PCI function"),
            Self::Dtb(e) => write!(f, "device tree: {e:?}"),
            Self::NoDtIommu => f.write_str("device tree: no virtio,pci-iommu node"),
            Self::DtNode(e) => write!(f, "device tree: {e}"),
            Self::NoIommuMap => f.write_str("device tree: the PCI host has no iommu-map"),
            Self::WrongIommu { listed, opened } => write!(
                f,
                "the firmware's virtio-iommu is at BDF {listed:#06x}, not the function we opened ({opened})"
            ),
            Self::NotListed { device, bdf, why } => {
                write!(f, "{device} at {bdf} refused: VIOT: {why}")
            }
            Self::OtherIommu { device, bdf, node } => write!(
                f,
                "{device} at {bdf} refused: the VIOT puts it behind another virtio-iommu ({:?})",
                node.location
            ),
            Self::NotMapped { device, bdf, why } => {
                write!(f, "{device} at {bdf} refused: device tree: {why}")
            }
        }
    }
}

impl From<AcpiError> for DiscoverError {
    fn from(e: AcpiError) -> Self {
        Self::Acpi(e)
    }
}

/// What the firmware says about our virtio-iommu.
pub enum Firmware {
    /// The VIOT and our IOMMU's node in it.
    Viot(Viot<'static>, IommuNode),
    /// The device tree's node and the PCI host's map.
    Dt(DtIommu, IommuMap<'static>),
}

impl Firmware {
    /// Finds the firmware's description of the virtio-iommu at `iommu` (the
    /// function the example opened) and checks it names that function.
    pub fn find(boot: &BootInfo, iommu: Bdf) -> Result<Self, DiscoverError> {
        if let Some(rsdp) = firmware::rsdp(boot) {
            let v = Viot::parse(find_table(&MEMORY, rsdp, viot::SIGNATURE)?)
                .map_err(DiscoverError::Viot)?;
            // Segment 0: the examples have one PCI host, one ECAM.
            let mine = IommuLocation::Pci {
                segment: 0,
                bdf: iommu.rid(),
            };
            let node = match v.iommus().find(|n| n.location == mine) {
                Some(n) => n,
                None => {
                    return Err(
                        match v.iommus().find_map(|n| match n.location {
                            IommuLocation::Pci { bdf, .. } => Some(bdf),
                            IommuLocation::Mmio { .. } => None,
                        }) {
                            Some(listed) => DiscoverError::WrongIommu {
                                listed,
                                opened: iommu,
                            },
                            None => DiscoverError::NoViotIommu,
                        },
                    );
                }
            };
            println!(
                "{NAME}: VIOT via RSDP {rsdp:#x}, {} nodes: its virtio-iommu (node at {:#x}) is {iommu}, the one we opened",
                v.nodes().count(),
                node.offset
            );
            return Ok(Self::Viot(v, node));
        }
        let fdt = firmware::device_tree(boot).ok_or(DiscoverError::NoFirmware)?;
        let mut node = None;
        for c in COMPATIBLE {
            node = fdt.find_compatible(c).map_err(DiscoverError::Dtb)?;
            if node.is_some() {
                break;
            }
        }
        let node = node.ok_or(DiscoverError::NoDtIommu)?;
        let dt = DtIommu::from_node(
            node.prop("reg"),
            node.prop_u32("phandle"),
            node.prop_u32("#iommu-cells"),
        )
        .map_err(DiscoverError::DtNode)?;
        if dt.bdf != iommu.rid() {
            return Err(DiscoverError::WrongIommu {
                listed: dt.bdf,
                opened: iommu,
            });
        }
        let map = firmware::pci_host_iommu_map(&fdt)
            .map_err(DiscoverError::Dtb)?
            .ok_or(DiscoverError::NoIommuMap)?;
        println!(
            "{NAME}: device tree, PCI host iommu-map of {} entries{}: its virtio-iommu ({}, phandle {:#x}) is {iommu}, the one we opened",
            map.map.len() / iova_core::dt::ENTRY_LEN,
            if map.mask.is_some() {
                " and a mask"
            } else {
                ""
            },
            node.name(),
            dt.phandle,
        );
        Ok(Self::Dt(dt, map))
    }

    /// The endpoint ID of `device` (a name for messages) at `bdf`, from the
    /// firmware; prints where it came from.
    pub fn endpoint(&self, device: &'static str, bdf: Bdf) -> Result<u32, DiscoverError> {
        let (id, from) = match self {
            Self::Viot(v, mine) => {
                let e = v
                    .pci_endpoint(0, bdf.rid())
                    .map_err(|why| DiscoverError::NotListed { device, bdf, why })?;
                if e.iommu != *mine {
                    return Err(DiscoverError::OtherIommu {
                        device,
                        bdf,
                        node: e.iommu,
                    });
                }
                (e.id, "VIOT")
            }
            Self::Dt(dt, map) => (
                dt.endpoint_id(map.map, map.mask, bdf.rid())
                    .map_err(|why| DiscoverError::NotMapped { device, bdf, why })?,
                "the device tree",
            ),
        };
        println!("{NAME}: endpoint {id:#x} for {bdf} ({device}) from {from}");
        Ok(id)
    }
}

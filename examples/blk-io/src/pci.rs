//! Finding the virtio-blk function and building virtio-drivers'
//! `PciTransport` on it.
//!
//! The transport is virtio-drivers' own [`PciTransport`], what users of the
//! crate use. It reads the virtio capabilities through [`EcamAccess`] (our
//! ECAM behind virtio-drivers' `ConfigurationAccess`) and maps BAR regions
//! through `H::mmio_phys_to_virt` (identity here). Its 64-bit register
//! writes (queue addresses) are single 8-byte stores, which QEMU's virtio
//! PCI common-config region splits into two 4-byte accesses, so they work.

use platform::pci::{Bdf, Ecam};
use platform::virtio_pci::{VirtioFunction, open_virtio_functions};
use platform::{BootInfo, println};
use virtio_drivers::Hal;
use virtio_drivers::transport::pci::PciTransport;
use virtio_drivers::transport::pci::bus::{ConfigurationAccess, DeviceFunction, PciRoot};

use crate::BlkError;

/// PCI device ID of a modern (virtio 1.0) virtio-blk function.
pub const VIRTIO_BLK_DEVICE_ID: u16 = 0x1042;

/// virtio-drivers' `ConfigurationAccess` over our ECAM.
#[derive(Debug, Clone, Copy)]
pub struct EcamAccess(pub Ecam);

fn bdf(df: DeviceFunction) -> Bdf {
    Bdf {
        bus: df.bus,
        device: df.device & 31,
        function: df.function & 7,
    }
}

impl ConfigurationAccess for EcamAccess {
    fn read_word(&self, device_function: DeviceFunction, register_offset: u8) -> u32 {
        self.0
            .read32(bdf(device_function), u16::from(register_offset))
    }

    fn write_word(&mut self, device_function: DeviceFunction, register_offset: u8, data: u32) {
        // SAFETY: virtio-drivers writes configuration space only to size a
        // BAR (decoding off, the original value written back) and to restore
        // the command register it read; neither moves a BAR or starts DMA.
        unsafe {
            self.0
                .write32(bdf(device_function), u16::from(register_offset), data)
        }
    }

    unsafe fn unsafe_clone(&self) -> Self {
        *self
    }
}

/// Enumerates PCI and brings up the first virtio-blk function (memory BARs
/// assigned, decoding and Bus-Master on). Prints what it finds, prefixed
/// with `name`. A program that needs another virtio function too (e.g. the
/// virtio-iommu) calls `platform::virtio_pci::open_virtio_functions` with
/// both IDs instead: one enumeration for all.
pub fn open_blk_function(boot: &BootInfo, name: &str) -> Result<VirtioFunction, BlkError> {
    let [f] = open_virtio_functions(boot, name, [VIRTIO_BLK_DEVICE_ID])?;
    println!(
        "{name}: virtio-blk at {} (requester ID {:#06x})",
        f.bdf,
        f.bdf.rid()
    );
    Ok(f)
}

/// virtio-drivers' `PciTransport` on `function` (BARs must be assigned:
/// see [`open_blk_function`]). `H` is only asked to map BAR regions.
pub fn pci_transport<H: Hal>(function: &VirtioFunction) -> Result<PciTransport, BlkError> {
    let mut root = PciRoot::new(EcamAccess(*function.ecam()));
    let df = DeviceFunction {
        bus: function.bdf.bus,
        device: function.bdf.device,
        function: function.bdf.function,
    };
    Ok(PciTransport::new::<H, _>(&mut root, df)?)
}

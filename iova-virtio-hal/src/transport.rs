//! [`AccessPlatform`]: a transport whose driver accepts VIRTIO_F_ACCESS_PLATFORM.

use core::fmt;

use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{PhysAddr, Result};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// Feature bit 33: the device's DMA goes through the platform's translation
/// (the IOMMU), so the addresses it is given are IOVAs.
pub const ACCESS_PLATFORM: u64 = 1 << 33;

/// The device does not offer VIRTIO_F_ACCESS_PLATFORM: it would take every
/// address as physical and bypass the IOMMU (for QEMU, it lacks
/// `iommu_platform=on`). IOVAs must not be given to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BypassesIommu {
    /// The features the device offered.
    pub offered: u64,
}

impl fmt::Display for BypassesIommu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "device does not offer VIRTIO_F_ACCESS_PLATFORM (features {:#x}): it would bypass the IOMMU",
            self.offered
        )
    }
}

/// Wraps a transport so that the driver on top accepts
/// VIRTIO_F_ACCESS_PLATFORM, which virtio-drivers' device drivers do not ask
/// for. A device that offers the feature may refuse a driver that does not
/// accept it (QEMU does), and one that does not offer it ignores the IOMMU:
/// [`new`](Self::new) refuses that device.
pub struct AccessPlatform<T: Transport> {
    inner: T,
}

impl<T: Transport> AccessPlatform<T> {
    /// Wraps `inner` after checking that its device offers ACCESS_PLATFORM.
    ///
    /// # Errors
    ///
    /// [`BypassesIommu`] if it does not; the transport is handed back.
    pub fn new(mut inner: T) -> core::result::Result<Self, (BypassesIommu, T)> {
        let offered = inner.read_device_features();
        if offered & ACCESS_PLATFORM == 0 {
            return Err((BypassesIommu { offered }, inner));
        }
        Ok(Self { inner })
    }

    /// The wrapped transport.
    pub fn inner(&self) -> &T {
        &self.inner
    }

    /// Unwraps the transport.
    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: Transport> Transport for AccessPlatform<T> {
    fn device_type(&self) -> DeviceType {
        self.inner.device_type()
    }
    fn read_device_features(&mut self) -> u64 {
        self.inner.read_device_features()
    }
    fn write_driver_features(&mut self, driver_features: u64) {
        // Offered: checked in `new`.
        self.inner
            .write_driver_features(driver_features | ACCESS_PLATFORM);
    }
    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.inner.max_queue_size(queue)
    }
    fn notify(&mut self, queue: u16) {
        self.inner.notify(queue)
    }
    fn get_status(&self) -> DeviceStatus {
        self.inner.get_status()
    }
    fn set_status(&mut self, status: DeviceStatus) {
        self.inner.set_status(status)
    }
    fn set_guest_page_size(&mut self, guest_page_size: u32) {
        self.inner.set_guest_page_size(guest_page_size)
    }
    fn requires_legacy_layout(&self) -> bool {
        self.inner.requires_legacy_layout()
    }
    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        self.inner
            .queue_set(queue, size, descriptors, driver_area, device_area)
    }
    fn queue_unset(&mut self, queue: u16) {
        self.inner.queue_unset(queue)
    }
    fn queue_used(&mut self, queue: u16) -> bool {
        self.inner.queue_used(queue)
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        self.inner.ack_interrupt()
    }
    fn read_config_generation(&self) -> u32 {
        self.inner.read_config_generation()
    }
    fn read_config_space<V: FromBytes + IntoBytes>(&self, offset: usize) -> Result<V> {
        self.inner.read_config_space(offset)
    }
    fn write_config_space<V: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: V,
    ) -> Result<()> {
        self.inner.write_config_space(offset, value)
    }
}

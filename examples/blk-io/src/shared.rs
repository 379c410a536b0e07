//! A transport the driver and the scenario share.
//!
//! `VirtIOBlk` owns its transport and has no accessor for it, but the
//! scenario must read the device status (did the device flag
//! DEVICE_NEEDS_RESET after a blocked DMA?) and reset the device before
//! buffers it may still own go away. The caller keeps the transport in a
//! `RefCell`; the driver gets a [`SharedTransport`] that borrows it for the
//! length of each call. Single CPU, and no call of one borrows across
//! another, so a borrow never fails (each method would otherwise panic,
//! which the scenario never lets happen: it borrows only between driver
//! calls).

use core::cell::RefCell;

use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{PhysAddr, Result};

/// The driver's handle on a transport kept in a `RefCell`.
#[derive(Debug)]
pub struct SharedTransport<'t, T: Transport>(pub &'t RefCell<T>);

impl<T: Transport> Transport for SharedTransport<'_, T> {
    fn device_type(&self) -> DeviceType {
        self.0.borrow().device_type()
    }
    fn read_device_features(&mut self) -> u64 {
        self.0.borrow_mut().read_device_features()
    }
    fn write_driver_features(&mut self, driver_features: u64) {
        self.0.borrow_mut().write_driver_features(driver_features)
    }
    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.0.borrow_mut().max_queue_size(queue)
    }
    fn notify(&mut self, queue: u16) {
        self.0.borrow_mut().notify(queue)
    }
    fn get_status(&self) -> DeviceStatus {
        self.0.borrow().get_status()
    }
    fn set_status(&mut self, status: DeviceStatus) {
        self.0.borrow_mut().set_status(status)
    }
    fn set_guest_page_size(&mut self, guest_page_size: u32) {
        self.0.borrow_mut().set_guest_page_size(guest_page_size)
    }
    fn requires_legacy_layout(&self) -> bool {
        self.0.borrow().requires_legacy_layout()
    }
    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        self.0
            .borrow_mut()
            .queue_set(queue, size, descriptors, driver_area, device_area)
    }
    fn queue_unset(&mut self, queue: u16) {
        self.0.borrow_mut().queue_unset(queue)
    }
    fn queue_used(&mut self, queue: u16) -> bool {
        self.0.borrow_mut().queue_used(queue)
    }
    fn ack_interrupt(&mut self) -> InterruptStatus {
        self.0.borrow_mut().ack_interrupt()
    }
    fn read_config_generation(&self) -> u32 {
        self.0.borrow().read_config_generation()
    }
    fn read_config_space<V: zerocopy::FromBytes + zerocopy::IntoBytes>(
        &self,
        offset: usize,
    ) -> Result<V> {
        self.0.borrow().read_config_space(offset)
    }
    fn write_config_space<V: zerocopy::IntoBytes + zerocopy::Immutable>(
        &mut self,
        offset: usize,
        value: V,
    ) -> Result<()> {
        self.0.borrow_mut().write_config_space(offset, value)
    }
}

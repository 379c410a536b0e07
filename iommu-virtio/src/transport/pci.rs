//! virtio over PCI, modern interface (virtio 1.x section 4.1).
//!
//! Why not `virtio_drivers::transport::pci::PciTransport`: it writes the
//! 64-bit queue addresses with single 64-bit accesses (the specification
//! says 32-bit accesses for 64-bit fields, and QEMU's model of
//! virtio-iommu-pci decodes each field at its own width), panics on 64-bit
//! config fields and on a `queue_notify_off` outside the notify region, and
//! its `Drop` waits for the reset without a bound. It also needs its own PCI
//! root type. This one takes the function's config space through a small
//! trait and the BAR addresses the caller assigned, and never panics or
//! waits: a device that misbehaves makes accesses no-ops, which the driver
//! then sees as a bounded timeout.

use core::fmt;

use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{Error as VirtioError, PhysAddr};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::mmio::Regs;

/// PCI vendor ID of virtio devices.
pub const VENDOR_ID: u16 = 0x1af4;
/// PCI device IDs of modern virtio devices are this plus the device type.
pub const DEVICE_ID_BASE: u16 = 0x1040;
/// PCI device ID of a modern virtio-iommu.
pub const IOMMU_DEVICE_ID: u16 = DEVICE_ID_BASE + 23;

const CAP_VENDOR: u8 = 0x09;
const CFG_COMMON: u8 = 1;
const CFG_NOTIFY: u8 = 2;
const CFG_ISR: u8 = 3;
const CFG_DEVICE: u8 = 4;

/// `struct virtio_pci_common_cfg` offsets.
mod common {
    pub const DEVICE_FEATURE_SELECT: usize = 0x00;
    pub const DEVICE_FEATURE: usize = 0x04;
    pub const DRIVER_FEATURE_SELECT: usize = 0x08;
    pub const DRIVER_FEATURE: usize = 0x0c;
    pub const DEVICE_STATUS: usize = 0x14;
    pub const CONFIG_GENERATION: usize = 0x15;
    pub const QUEUE_SELECT: usize = 0x16;
    pub const QUEUE_SIZE: usize = 0x18;
    pub const QUEUE_ENABLE: usize = 0x1c;
    pub const QUEUE_NOTIFY_OFF: usize = 0x1e;
    pub const QUEUE_DESC: usize = 0x20;
    pub const QUEUE_DRIVER: usize = 0x28;
    pub const QUEUE_DEVICE: usize = 0x30;
    /// Size of the structure without the `RING_RESET`/notify-data fields.
    pub const LEN: usize = 0x38;
}

/// Read access to one PCI function's configuration space.
pub trait PciConfig {
    /// Reads the dword at `offset` (a multiple of 4, below 256).
    fn read32(&self, offset: u16) -> u32;
}

/// A BAR as the caller assigned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciBar {
    /// Where the CPU reaches the BAR (a virtual address).
    pub cpu_addr: usize,
    /// Size in bytes.
    pub size: u64,
}

/// Why [`VirtioPciTransport::new`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PciTransportError {
    /// Not a virtio vendor ID.
    NotVirtio(u16),
    /// Not a modern virtio device ID.
    BadDeviceId(u16),
    /// The function has no capability list.
    NoCapabilities,
    /// A required capability is absent (the `cfg_type`).
    MissingCapability(u8),
    /// A capability points into a BAR the caller did not provide, or past
    /// its end (the `cfg_type`).
    BadRegion(u8),
    /// The notify capability's multiplier is odd.
    BadNotifyMultiplier(u32),
}

impl fmt::Display for PciTransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotVirtio(v) => write!(f, "vendor {v:#06x} is not virtio"),
            Self::BadDeviceId(d) => write!(f, "device ID {d:#06x} is not a modern virtio device"),
            Self::NoCapabilities => f.write_str("no PCI capability list"),
            Self::MissingCapability(t) => write!(f, "virtio capability type {t} missing"),
            Self::BadRegion(t) => write!(f, "virtio capability type {t} outside its BAR"),
            Self::BadNotifyMultiplier(m) => write!(f, "odd notify_off_multiplier {m}"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Cap {
    bar: u8,
    offset: u32,
    length: u32,
}

/// The modern virtio-PCI transport.
#[derive(Debug)]
pub struct VirtioPciTransport {
    device_id: u16,
    common: Regs,
    notify: Regs,
    notify_multiplier: u32,
    isr: Regs,
    device: Option<Regs>,
}

impl VirtioPciTransport {
    /// Finds the virtio capabilities of the function behind `config` and maps
    /// them onto `bars`.
    ///
    /// # Safety
    ///
    /// Each `Some` entry of `bars` is where the CPU reaches that BAR of this
    /// function (memory decoding on), for as long as the transport lives, and
    /// nothing else accesses the device's registers meanwhile.
    pub unsafe fn new(
        config: &impl PciConfig,
        bars: &[Option<PciBar>; 6],
    ) -> Result<Self, PciTransportError> {
        let id = config.read32(0);
        let (vendor, device_id) = (id as u16, (id >> 16) as u16);
        if vendor != VENDOR_ID {
            return Err(PciTransportError::NotVirtio(vendor));
        }
        if !(DEVICE_ID_BASE + 1..=DEVICE_ID_BASE + 0x3f).contains(&device_id) {
            return Err(PciTransportError::BadDeviceId(device_id));
        }
        if (config.read32(0x04) >> 16) & (1 << 4) == 0 {
            return Err(PciTransportError::NoCapabilities);
        }
        let (mut common, mut notify, mut isr, mut device) = (None, None, None, None);
        let mut multiplier = 0;
        let mut ptr = (config.read32(0x34) & 0xfc) as u16;
        // A capability list has at most 48 entries in 256 bytes; a loop in a
        // broken list ends here.
        for _ in 0..48 {
            if ptr < 0x40 {
                break;
            }
            let head = config.read32(ptr);
            let (cap_id, next, cap_len, cfg_type) = (
                head as u8,
                ((head >> 8) as u8 & 0xfc) as u16,
                (head >> 16) as u8,
                (head >> 24) as u8,
            );
            if cap_id == CAP_VENDOR && cap_len >= 16 && ptr <= 256 - 16 {
                let cap = Cap {
                    bar: config.read32(ptr + 4) as u8,
                    offset: config.read32(ptr + 8),
                    length: config.read32(ptr + 12),
                };
                match cfg_type {
                    CFG_COMMON if common.is_none() => common = Some(cap),
                    CFG_NOTIFY if notify.is_none() && cap_len >= 20 && ptr <= 256 - 20 => {
                        notify = Some(cap);
                        multiplier = config.read32(ptr + 16);
                    }
                    CFG_ISR if isr.is_none() => isr = Some(cap),
                    CFG_DEVICE if device.is_none() => device = Some(cap),
                    _ => {}
                }
            }
            ptr = next;
        }
        if multiplier % 2 != 0 {
            return Err(PciTransportError::BadNotifyMultiplier(multiplier));
        }
        let region = |cap: Option<Cap>, kind: u8, min: usize| -> Result<Regs, PciTransportError> {
            let cap = cap.ok_or(PciTransportError::MissingCapability(kind))?;
            let bar = bars
                .get(usize::from(cap.bar))
                .copied()
                .flatten()
                .ok_or(PciTransportError::BadRegion(kind))?;
            let end = u64::from(cap.offset) + u64::from(cap.length);
            if end > bar.size || (cap.length as usize) < min {
                return Err(PciTransportError::BadRegion(kind));
            }
            // SAFETY: inside a BAR the caller vouched for (checked above).
            Ok(unsafe { Regs::new(bar.cpu_addr + cap.offset as usize, cap.length as usize) })
        };
        Ok(Self {
            device_id,
            common: region(common, CFG_COMMON, common::LEN)?,
            notify: region(notify, CFG_NOTIFY, 2)?,
            notify_multiplier: multiplier,
            isr: region(isr, CFG_ISR, 1)?,
            device: match device {
                Some(_) => Some(region(device, CFG_DEVICE, 0)?),
                None => None,
            },
        })
    }

    fn select(&mut self, queue: u16) {
        self.common.write16(common::QUEUE_SELECT, queue);
    }

    fn write64(&mut self, offset: usize, value: u64) {
        self.common.write32(offset, value as u32);
        self.common.write32(offset + 4, (value >> 32) as u32);
    }
}

/// Reads `T` (1, 2, 4 or 8 bytes; 8 as two dwords) at `offset` at its width.
fn read_sized<T: FromBytes>(regs: &Regs, offset: usize) -> Result<T, VirtioError> {
    let mut bytes = [0u8; 8];
    let n = size_of::<T>();
    let ok = match n {
        1 => regs.read8(offset).map(|v| bytes[0] = v),
        2 => regs
            .read16(offset)
            .map(|v| bytes[..2].copy_from_slice(&v.to_le_bytes())),
        4 => regs
            .read32(offset)
            .map(|v| bytes[..4].copy_from_slice(&v.to_le_bytes())),
        8 => regs.read32(offset).and_then(|lo| {
            let hi = regs.read32(offset + 4)?;
            bytes[..4].copy_from_slice(&lo.to_le_bytes());
            bytes[4..].copy_from_slice(&hi.to_le_bytes());
            Some(())
        }),
        _ => None,
    };
    ok.ok_or(VirtioError::ConfigSpaceTooSmall)?;
    T::read_from_bytes(&bytes[..n]).map_err(|_| VirtioError::InvalidParam)
}

impl Transport for VirtioPciTransport {
    fn device_type(&self) -> DeviceType {
        // `new` checked the range; types virtio-drivers does not name read as
        // `Memory` (anything but `IOMMU` makes the driver refuse the device).
        DeviceType::try_from(self.device_id - DEVICE_ID_BASE).unwrap_or(DeviceType::Memory)
    }

    fn read_device_features(&mut self) -> u64 {
        self.common.write32(common::DEVICE_FEATURE_SELECT, 0);
        let lo = self.common.read32(common::DEVICE_FEATURE).unwrap_or(0);
        self.common.write32(common::DEVICE_FEATURE_SELECT, 1);
        let hi = self.common.read32(common::DEVICE_FEATURE).unwrap_or(0);
        u64::from(lo) | (u64::from(hi) << 32)
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        self.common.write32(common::DRIVER_FEATURE_SELECT, 0);
        self.common
            .write32(common::DRIVER_FEATURE, driver_features as u32);
        self.common.write32(common::DRIVER_FEATURE_SELECT, 1);
        self.common
            .write32(common::DRIVER_FEATURE, (driver_features >> 32) as u32);
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        self.select(queue);
        self.common.read16(common::QUEUE_SIZE).map_or(0, u32::from)
    }

    fn notify(&mut self, queue: u16) {
        self.select(queue);
        let Some(off) = self.common.read16(common::QUEUE_NOTIFY_OFF) else {
            return;
        };
        // Outside the notify region the write is dropped, and the driver's
        // bounded wait reports the device as not answering.
        if let Ok(at) = usize::try_from(u64::from(off) * u64::from(self.notify_multiplier)) {
            self.notify.write16(at, queue);
        }
    }

    fn get_status(&self) -> DeviceStatus {
        let s = self.common.read8(common::DEVICE_STATUS).unwrap_or(0);
        DeviceStatus::from_bits_retain(u32::from(s))
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.common
            .write8(common::DEVICE_STATUS, status.bits() as u8);
    }

    fn set_guest_page_size(&mut self, _guest_page_size: u32) {}

    fn requires_legacy_layout(&self) -> bool {
        false
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        self.select(queue);
        self.common.write16(common::QUEUE_SIZE, size as u16);
        self.write64(common::QUEUE_DESC, descriptors);
        self.write64(common::QUEUE_DRIVER, driver_area);
        self.write64(common::QUEUE_DEVICE, device_area);
        self.common.write16(common::QUEUE_ENABLE, 1);
    }

    fn queue_unset(&mut self, _queue: u16) {
        // Modern PCI queues cannot be disabled except by a device reset.
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.select(queue);
        self.common.read16(common::QUEUE_ENABLE) == Some(1)
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        let isr = self.isr.read8(0).unwrap_or(0);
        InterruptStatus::from_bits_retain(u32::from(isr))
    }

    fn read_config_generation(&self) -> u32 {
        self.common
            .read8(common::CONFIG_GENERATION)
            .map_or(0, u32::from)
    }

    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> Result<T, VirtioError> {
        let regs = self
            .device
            .as_ref()
            .ok_or(VirtioError::ConfigSpaceMissing)?;
        read_sized(regs, offset)
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> Result<(), VirtioError> {
        let regs = self
            .device
            .as_ref()
            .ok_or(VirtioError::ConfigSpaceMissing)?;
        let b = value.as_bytes();
        let ok = match b.len() {
            1 => regs.write8(offset, b[0]),
            2 => regs.write16(offset, u16::from_le_bytes([b[0], b[1]])),
            4 => regs.write32(offset, u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            _ => false,
        };
        if ok {
            Ok(())
        } else {
            Err(VirtioError::ConfigSpaceTooSmall)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Config space of QEMU's virtio-iommu-pci as measured (caps at 0x84 ->
    /// 0x70 -> 0x60 -> 0x50 -> 0x40, all in BAR4).
    struct QemuLike([u32; 64]);

    impl QemuLike {
        fn new() -> Self {
            let mut c = [0u32; 64];
            c[0] = 0x1057_1af4;
            c[1] = 1 << (16 + 4);
            c[0x34 / 4] = 0x84;
            let mut cap = |at: usize, next: u8, len: u8, ty: u8, off: u32, extra: Option<u32>| {
                c[at / 4] = u32::from(CAP_VENDOR)
                    | u32::from(next) << 8
                    | u32::from(len) << 16
                    | u32::from(ty) << 24;
                c[at / 4 + 1] = 4;
                c[at / 4 + 2] = off;
                c[at / 4 + 3] = 0x1000;
                if let Some(m) = extra {
                    c[at / 4 + 4] = m;
                }
            };
            cap(0x84, 0x70, 20, 5, 0, None); // PCI_CFG: ignored
            cap(0x70, 0x60, 20, CFG_NOTIFY, 0x3000, Some(4));
            cap(0x60, 0x50, 16, CFG_DEVICE, 0x2000, None);
            cap(0x50, 0x40, 16, CFG_ISR, 0x1000, None);
            cap(0x40, 0x00, 16, CFG_COMMON, 0x0000, None);
            Self(c)
        }
    }

    impl PciConfig for QemuLike {
        fn read32(&self, offset: u16) -> u32 {
            self.0
                .get(usize::from(offset / 4))
                .copied()
                .unwrap_or(u32::MAX)
        }
    }

    /// A 16 KiB "BAR" of plain memory that the test reads and writes only
    /// through the pointer it handed the transport, as a device's registers
    /// would be: a reference to the memory would invalidate that pointer.
    struct Bar(*mut [u8; 0x4000]);

    #[repr(C, align(4096))]
    struct BarMemory([u8; 0x4000]);

    impl Bar {
        fn new() -> Self {
            Self(Box::into_raw(Box::new(BarMemory([0; 0x4000]))).cast())
        }
        fn base(&self) -> usize {
            self.0 as usize
        }
        fn get(&self, at: usize, len: usize) -> Vec<u8> {
            assert!(at + len <= 0x4000);
            // SAFETY: inside the allocation this `Bar` owns.
            unsafe { core::slice::from_raw_parts(self.0.cast::<u8>().add(at), len) }.to_vec()
        }
        fn set(&self, at: usize, bytes: &[u8]) {
            assert!(at + bytes.len() <= 0x4000);
            // SAFETY: as in `get`; the transport is not accessing it now.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    self.0.cast::<u8>().add(at),
                    bytes.len(),
                )
            };
        }
    }

    impl Drop for Bar {
        fn drop(&mut self) {
            // SAFETY: made by `Box::into_raw` in `new`, freed only here.
            drop(unsafe { Box::from_raw(self.0.cast::<BarMemory>()) });
        }
    }

    #[test]
    fn finds_the_capabilities_and_splits_64_bit_fields_into_dwords() {
        let bar = Bar::new();
        let mut bars = [None; 6];
        bars[4] = Some(PciBar {
            cpu_addr: bar.base(),
            size: 0x4000,
        });
        // SAFETY: the "BAR" is plain memory owned by this test, which
        // outlives the transport.
        let mut t = unsafe { VirtioPciTransport::new(&QemuLike::new(), &bars) }.unwrap();
        assert_eq!(t.device_type(), DeviceType::IOMMU);
        t.queue_set(1, 8, 0x1122_3344_5566_7788, 0xaabb_ccdd_0000_1000, 0x2000);
        assert_eq!(bar.get(0x16, 2), 1u16.to_le_bytes());
        assert_eq!(bar.get(0x18, 2), 8u16.to_le_bytes());
        assert_eq!(bar.get(0x20, 8), 0x1122_3344_5566_7788u64.to_le_bytes());
        assert_eq!(bar.get(0x28, 8), 0xaabb_ccdd_0000_1000u64.to_le_bytes());
        assert_eq!(bar.get(0x1c, 2), 1u16.to_le_bytes());
        // Device config at BAR4 + 0x2000; a u64 read is two dwords.
        bar.set(0x2000, &0xffff_ffff_ffff_f000u64.to_le_bytes());
        bar.set(0x2024, &[1]);
        assert_eq!(t.read_config_space::<u64>(0), Ok(0xffff_ffff_ffff_f000));
        assert_eq!(t.read_config_space::<u8>(0x24), Ok(1));
        t.write_config_space::<u8>(0x24, 0).unwrap();
        assert_eq!(bar.get(0x2024, 1), [0]);
        assert_eq!(
            t.read_config_space::<u32>(0x1002),
            Err(VirtioError::ConfigSpaceTooSmall)
        );
        // Queue 1's notify offset 1 x multiplier 4 -> BAR4 + 0x3004.
        bar.set(0x1e, &[1]);
        t.notify(1);
        assert_eq!(bar.get(0x3004, 2), 1u16.to_le_bytes());
    }

    #[test]
    fn a_capability_outside_the_bars_is_an_error() {
        let bars = [None; 6];
        // SAFETY: no BAR is given, so nothing is accessed.
        let e = unsafe { VirtioPciTransport::new(&QemuLike::new(), &bars) }.unwrap_err();
        assert!(matches!(e, PciTransportError::BadRegion(_)));
        let mut c = QemuLike::new();
        c.0[0] = 0x1234_1af4;
        // SAFETY: as above.
        let e = unsafe { VirtioPciTransport::new(&c, &bars) }.unwrap_err();
        assert_eq!(e, PciTransportError::BadDeviceId(0x1234));
    }
}

//! virtio over PCI, modern interface (virtio 1.x section 4.1).
//!
//! Why not `virtio_drivers::transport::pci::PciTransport`: it writes the
//! 64-bit queue addresses with single 64-bit accesses (the specification
//! says 32-bit accesses for 64-bit fields, and QEMU's model of
//! virtio-iommu-pci decodes each field at its own width), panics on 64-bit
//! config fields and on a `queue_notify_off` outside the notify region, and
//! its `Drop` waits for the reset without a bound. It also needs its own PCI
//! root type. This one takes the function's config space through a small
//! trait and its BARs as [`Mmio`] register blocks ([`MmioRegion`]s at the
//! addresses the caller assigned, with [`VirtioPciTransport::new`]), and
//! never panics or waits.
//!
//! # A register access that is refused
//!
//! Every access goes through [`Mmio`], which refuses one outside its block,
//! misaligned, or of a width the block does not take ([`MmioError`]).
//! [`VirtioPciTransport::from_bars`] refuses capabilities that do not fit
//! their BAR or are misaligned, so with [`MmioRegion`]s at aligned BAR
//! addresses only the device can cause a refusal (a `queue_notify_off`
//! beyond the notify region); another [`Mmio`] may refuse more. The device-config accesses
//! ([`Transport::read_config_space`], [`Transport::write_config_space`])
//! return the refusal as an error. The other [`Transport`] methods cannot
//! return one, and a refused access in them is handled so that the driver
//! stops, bounded, and nothing reaches the device half-done:
//!
//! - it is counted ([`VirtioPciTransport::register_faults`]), the first one
//!   kept ([`VirtioPciTransport::first_register_fault`]) and logged with
//!   `warn_event!` (features `log`, `defmt`; a refusal repeating the one
//!   before is only counted, so a poll loop does not flood the log);
//! - a refused write is dropped, and so is the rest of its register sequence
//!   (a queue whose size or addresses did not all reach the device is never
//!   enabled, a notification is not sent to a queue that was not selected);
//! - a refused read returns a value that claims nothing the device did not
//!   say: device features none, a queue's maximum size 0 (no queue), a
//!   queue's state in use (so it is not set up), the interrupt status none,
//!   the config generation all-ones (as an absent device reads), and the
//!   device status `FAILED` alone (all-ones would claim `DRIVER_OK`, and a
//!   driver that gives up writes back the status it read with `FAILED`
//!   added);
//! - from the first refusal on, a device status other than 0 reads with
//!   `FAILED` set, because the transport cannot tell what of a register
//!   sequence reached the device. The driver's bring-up then fails with
//!   [`VirtioIommuError::DeviceFailed`](crate::VirtioIommuError::DeviceFailed)
//!   (or [`Timeout(Wait::Reset)`](crate::VirtioIommuError::Timeout)); a
//!   running driver stops at its next bounded wait (a notification that did
//!   not reach the device times out). A reset that the device completes
//!   still reads 0, so the driver frees its memory after it, and leaks it
//!   otherwise.

use core::fmt;

use iova_core::hw::{Counter, Width, check_access};
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{Error as VirtioError, PhysAddr};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::{Mmio, MmioError, MmioRegion};

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
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
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
    /// its end, or describes a structure shorter than its fields (the
    /// `cfg_type`).
    BadRegion(u8),
    /// A capability's offset is not aligned as the specification requires
    /// for its structure (4 bytes for the common and device configuration,
    /// 2 for notifications; the `cfg_type`).
    MisalignedRegion(u8),
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
            Self::MisalignedRegion(t) => write!(f, "virtio capability type {t} misaligned"),
            Self::BadNotifyMultiplier(m) => write!(f, "odd notify_off_multiplier {m}"),
        }
    }
}

impl core::error::Error for PciTransportError {}

#[derive(Debug, Clone, Copy)]
struct Cap {
    bar: u8,
    offset: u32,
    length: u32,
}

/// Where one virtio structure is: `len` bytes at `offset` in BAR `bar`.
#[derive(Debug, Clone, Copy)]
struct Window {
    bar: usize,
    offset: usize,
    len: usize,
}

/// What the transport keeps of refused accesses it could not report.
#[derive(Debug, Default)]
struct Faults {
    count: Counter,
    /// The first refusal and the latest one.
    seen: spin::Mutex<Option<(MmioError, MmioError)>>,
}

/// The modern virtio-PCI transport, over the function's BARs as `M`
/// register blocks.
#[derive(Debug)]
pub struct VirtioPciTransport<M: Mmio = MmioRegion> {
    device_id: u16,
    bars: [Option<M>; 6],
    common: Window,
    notify: Window,
    notify_multiplier: u32,
    isr: Window,
    device: Option<Window>,
    faults: Faults,
}

impl VirtioPciTransport<MmioRegion> {
    /// Finds the virtio capabilities of the function behind `config` and maps
    /// them onto `bars`, each reached through an [`MmioRegion`].
    ///
    /// # Errors
    ///
    /// As [`from_bars`](Self::from_bars).
    ///
    /// # Safety
    ///
    /// Each `Some` entry of `bars` is where the CPU reaches that BAR of this
    /// function (memory decoding on), `size` bytes mapped as device memory,
    /// for as long as the transport lives, and nothing else accesses the
    /// device's registers meanwhile ([`MmioRegion::new`]'s contract for each
    /// BAR).
    pub unsafe fn new(
        config: &impl PciConfig,
        bars: &[Option<PciBar>; 6],
    ) -> Result<Self, PciTransportError> {
        let regions = bars.map(|bar| {
            bar.map(|b| {
                // A size beyond the address space cannot be mapped whole; the
                // part that can is all an access may reach.
                let size = usize::try_from(b.size).unwrap_or(usize::MAX);
                // SAFETY: the caller vouches for the BAR as `MmioRegion::new`
                // requires; a smaller size only narrows what is accessed.
                unsafe { MmioRegion::new(core::ptr::with_exposed_provenance_mut(b.cpu_addr), size) }
            })
        });
        Self::from_bars(config, regions)
    }
}

impl<M: Mmio> VirtioPciTransport<M> {
    /// Finds the virtio capabilities of the function behind `config` and maps
    /// them onto `bars` (BAR `i` at index `i`).
    ///
    /// # Errors
    ///
    /// A typed [`PciTransportError`] when `config` is not a modern virtio
    /// function, lacks a capability the transport needs, or describes a
    /// structure that does not fit in its BAR (as [`Mmio::size`] gives it),
    /// is shorter than its fields or misaligned. Nothing is accessed in the
    /// BARs.
    pub fn from_bars(
        config: &impl PciConfig,
        bars: [Option<M>; 6],
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
        // `min`: the bytes of the structure's fields the transport accesses;
        // `align`: the offset alignment the specification requires of it.
        let window = |cap: Option<Cap>, kind: u8, min: usize, align: u32| {
            let cap = cap.ok_or(PciTransportError::MissingCapability(kind))?;
            let bar = usize::from(cap.bar);
            let size = bars
                .get(bar)
                .and_then(Option::as_ref)
                .ok_or(PciTransportError::BadRegion(kind))?
                .size();
            let end = u64::from(cap.offset) + u64::from(cap.length);
            if end > size as u64 || (cap.length as usize) < min {
                return Err(PciTransportError::BadRegion(kind));
            }
            if cap.offset % align != 0 {
                return Err(PciTransportError::MisalignedRegion(kind));
            }
            Ok(Window {
                bar,
                offset: cap.offset as usize,
                len: cap.length as usize,
            })
        };
        let common = window(common, CFG_COMMON, common::LEN, 4)?;
        let notify = window(notify, CFG_NOTIFY, 2, 2)?;
        let isr = window(isr, CFG_ISR, 1, 1)?;
        let device = match device {
            Some(_) => Some(window(device, CFG_DEVICE, 0, 4)?),
            None => None,
        };
        Ok(Self {
            device_id,
            bars,
            common,
            notify,
            notify_multiplier: multiplier,
            isr,
            device,
            faults: Faults::default(),
        })
    }

    /// Register accesses refused inside [`Transport`] methods that cannot
    /// return an error (see the [module documentation](self)). Zero on a
    /// working device.
    pub fn register_faults(&self) -> u64 {
        self.faults.count.get()
    }

    /// The first of those refusals.
    pub fn first_register_fault(&self) -> Option<MmioError> {
        self.faults.seen.lock().map(|(first, _)| first)
    }

    /// The BAR behind `w` and the offset in it of `offset` in `w`, after the
    /// window's own range and alignment check.
    fn at(&self, w: Window, offset: usize, width: Width) -> Result<(&M, usize), MmioError> {
        check_access(w.len, offset, width)?;
        // `from_bars` made every window of a BAR that is present, inside it.
        let bar = self.bars.get(w.bar).and_then(Option::as_ref);
        match (bar, w.offset.checked_add(offset)) {
            (Some(bar), Some(at)) => Ok((bar, at)),
            _ => Err(MmioError::OutOfRange {
                offset,
                width,
                size: w.len,
            }),
        }
    }

    fn read8(&self, w: Window, offset: usize) -> Result<u8, MmioError> {
        let (bar, at) = self.at(w, offset, Width::W8)?;
        bar.read8(at)
    }
    fn read16(&self, w: Window, offset: usize) -> Result<u16, MmioError> {
        let (bar, at) = self.at(w, offset, Width::W16)?;
        bar.read16(at)
    }
    fn read32(&self, w: Window, offset: usize) -> Result<u32, MmioError> {
        let (bar, at) = self.at(w, offset, Width::W32)?;
        bar.read32(at)
    }
    fn write8(&self, w: Window, offset: usize, value: u8) -> Result<(), MmioError> {
        let (bar, at) = self.at(w, offset, Width::W8)?;
        bar.write8(at, value)
    }
    fn write16(&self, w: Window, offset: usize, value: u16) -> Result<(), MmioError> {
        let (bar, at) = self.at(w, offset, Width::W16)?;
        bar.write16(at, value)
    }
    fn write32(&self, w: Window, offset: usize, value: u32) -> Result<(), MmioError> {
        let (bar, at) = self.at(w, offset, Width::W32)?;
        bar.write32(at, value)
    }

    /// A 64-bit common-config field, as two dword writes (low first).
    fn write64(&self, offset: usize, value: u64) -> Result<(), MmioError> {
        self.write32(self.common, offset, value as u32)?;
        self.write32(self.common, offset + 4, (value >> 32) as u32)
    }

    fn select(&self, queue: u16) -> Result<(), MmioError> {
        self.write16(self.common, common::QUEUE_SELECT, queue)
    }

    /// `r`'s value, or `fallback` with the refusal recorded: for the
    /// [`Transport`] methods, which cannot return it.
    fn or_fault<T>(&self, what: &'static str, r: Result<T, MmioError>, fallback: T) -> T {
        match r {
            Ok(v) => v,
            Err(e) => {
                self.fault(what, e);
                fallback
            }
        }
    }

    fn fault(&self, what: &'static str, e: MmioError) {
        self.faults.count.incr();
        let mut seen = self.faults.seen.lock();
        let repeat = seen.is_some_and(|(_, last)| last == e);
        *seen = Some(seen.map_or((e, e), |(first, _)| (first, e)));
        drop(seen);
        if !repeat {
            iova_core::warn_event!(
                "virtio-pci: {} refused ({}); the device now reads as failed",
                what,
                e
            );
        }
    }
}

/// Reads `T` (1, 2, 4 or 8 bytes; 8 as two dwords) at `offset` of `w` at its
/// width.
fn read_sized<T: FromBytes, M: Mmio>(
    t: &VirtioPciTransport<M>,
    w: Window,
    offset: usize,
) -> Result<T, VirtioError> {
    let n = size_of::<T>();
    if offset.checked_add(n).is_none_or(|end| end > w.len) {
        return Err(VirtioError::ConfigSpaceTooSmall);
    }
    let mut bytes = [0u8; 8];
    let read = match n {
        1 => t.read8(w, offset).map(|v| bytes[0] = v),
        2 => t
            .read16(w, offset)
            .map(|v| bytes[..2].copy_from_slice(&v.to_le_bytes())),
        4 => t
            .read32(w, offset)
            .map(|v| bytes[..4].copy_from_slice(&v.to_le_bytes())),
        8 => t.read32(w, offset).and_then(|lo| {
            let hi = t.read32(w, offset + 4)?;
            bytes[..4].copy_from_slice(&lo.to_le_bytes());
            bytes[4..].copy_from_slice(&hi.to_le_bytes());
            Ok(())
        }),
        _ => return Err(VirtioError::InvalidParam),
    };
    // Inside the structure, so the register block refused the access itself
    // (misaligned, or a width it does not take).
    read.map_err(|_| VirtioError::InvalidParam)?;
    T::read_from_bytes(&bytes[..n]).map_err(|_| VirtioError::InvalidParam)
}

impl<M: Mmio> Transport for VirtioPciTransport<M> {
    fn device_type(&self) -> DeviceType {
        // `from_bars` checked the range; types virtio-drivers does not name
        // read as `Memory` (anything but `IOMMU` makes the driver refuse the
        // device).
        DeviceType::try_from(self.device_id - DEVICE_ID_BASE).unwrap_or(DeviceType::Memory)
    }

    fn read_device_features(&mut self) -> u64 {
        let c = self.common;
        let half = |select: u32| {
            self.write32(c, common::DEVICE_FEATURE_SELECT, select)?;
            self.read32(c, common::DEVICE_FEATURE)
        };
        // A half that cannot be read offers nothing.
        let lo = self.or_fault("device feature read", half(0), 0);
        let hi = self.or_fault("device feature read", half(1), 0);
        u64::from(lo) | (u64::from(hi) << 32)
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        let c = self.common;
        let r = (|| {
            self.write32(c, common::DRIVER_FEATURE_SELECT, 0)?;
            self.write32(c, common::DRIVER_FEATURE, driver_features as u32)?;
            self.write32(c, common::DRIVER_FEATURE_SELECT, 1)?;
            self.write32(c, common::DRIVER_FEATURE, (driver_features >> 32) as u32)
        })();
        self.or_fault("driver feature write", r, ());
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        let r = self
            .select(queue)
            .and_then(|()| self.read16(self.common, common::QUEUE_SIZE));
        // No size read: no queue.
        u32::from(self.or_fault("queue size read", r, 0))
    }

    fn notify(&mut self, queue: u16) {
        let r = self.select(queue).and_then(|()| {
            let off = self.read16(self.common, common::QUEUE_NOTIFY_OFF)?;
            // Beyond the address space is beyond the notify region.
            let at = usize::try_from(u64::from(off) * u64::from(self.notify_multiplier))
                .unwrap_or(usize::MAX);
            self.write16(self.notify, at, queue)
        });
        // A notification that does not reach the device: the driver's
        // bounded wait reports the device as not answering.
        self.or_fault("queue notification", r, ());
    }

    fn get_status(&self) -> DeviceStatus {
        let failed = DeviceStatus::FAILED.bits() as u8;
        let r = self.read8(self.common, common::DEVICE_STATUS);
        let mut s = self.or_fault("device status read", r, failed);
        if s != 0 && self.register_faults() > 0 {
            s |= failed;
        }
        DeviceStatus::from_bits_retain(u32::from(s))
    }

    fn set_status(&mut self, status: DeviceStatus) {
        let r = self.write8(self.common, common::DEVICE_STATUS, status.bits() as u8);
        self.or_fault("device status write", r, ());
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
        let c = self.common;
        // Stops at the first refusal: the queue is enabled only once its
        // size and all three addresses reached the device.
        let r = (|| {
            self.select(queue)?;
            self.write16(c, common::QUEUE_SIZE, size as u16)?;
            self.write64(common::QUEUE_DESC, descriptors)?;
            self.write64(common::QUEUE_DRIVER, driver_area)?;
            self.write64(common::QUEUE_DEVICE, device_area)?;
            self.write16(c, common::QUEUE_ENABLE, 1)
        })();
        self.or_fault("queue setup", r, ());
    }

    fn queue_unset(&mut self, _queue: u16) {
        // Modern PCI queues cannot be disabled except by a device reset.
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        let r = self
            .select(queue)
            .and_then(|()| self.read16(self.common, common::QUEUE_ENABLE));
        // A queue whose state cannot be read counts as in use, so that
        // nobody sets it up.
        self.or_fault("queue state read", r.map(|e| e == 1), true)
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        let r = self.read8(self.isr, 0);
        InterruptStatus::from_bits_retain(u32::from(self.or_fault("ISR read", r, 0)))
    }

    fn read_config_generation(&self) -> u32 {
        let r = self.read8(self.common, common::CONFIG_GENERATION);
        u32::from(self.or_fault("config generation read", r, u8::MAX))
    }

    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> Result<T, VirtioError> {
        let w = self.device.ok_or(VirtioError::ConfigSpaceMissing)?;
        read_sized(self, w, offset)
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> Result<(), VirtioError> {
        let w = self.device.ok_or(VirtioError::ConfigSpaceMissing)?;
        let b = value.as_bytes();
        if offset.checked_add(b.len()).is_none_or(|end| end > w.len) {
            return Err(VirtioError::ConfigSpaceTooSmall);
        }
        let r = match b.len() {
            1 => self.write8(w, offset, b[0]),
            2 => self.write16(w, offset, u16::from_le_bytes([b[0], b[1]])),
            4 => self.write32(w, offset, u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            _ => return Err(VirtioError::InvalidParam),
        };
        // Inside the structure: the register block refused the access itself.
        r.map_err(|_| VirtioError::InvalidParam)
    }
}

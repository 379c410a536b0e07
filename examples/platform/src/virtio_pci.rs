//! Bring-up for examples that drive a virtio PCI device next to `edu` (the
//! virtio-iommu examples): one enumeration, so every BAR comes from the same
//! window, then the virtio function's memory BARs and edu, both enabled.
//!
//! This stays driver-agnostic: it returns addresses and the function's
//! [`Bdf`], and reads configuration space through [`VirtioFunction::read32`];
//! the example adapts that to its driver's config-access trait.

use core::fmt;

use crate::edu::{self, Edu};
use crate::pci::{self, BarKind, Bdf, CMD_BUS_MASTER, CMD_MEMORY, Ecam, PciError};
use crate::setup::SetupError;
use crate::{BootInfo, demo, println};

/// Vendor ID of virtio PCI devices.
pub const VIRTIO_VENDOR: u16 = 0x1af4;

/// A virtio PCI function with its memory BARs assigned and decoding on.
#[derive(Debug, Clone, Copy)]
pub struct VirtioFunction {
    /// Where it is.
    pub bdf: Bdf,
    /// Device ID.
    pub device: u16,
    /// `(cpu address, size)` of each memory BAR, by index (a 64-bit BAR at
    /// its lower index).
    pub bars: [Option<(u64, u64)>; 6],
    ecam: Ecam,
}

impl VirtioFunction {
    /// Reads the dword at `offset` of the function's configuration space.
    pub fn read32(&self, offset: u16) -> u32 {
        self.ecam.read32(self.bdf, offset)
    }

    /// The configuration space the function sits in (for a driver's own
    /// config-access adapter, e.g. virtio-drivers' `ConfigurationAccess`).
    pub fn ecam(&self) -> &Ecam {
        &self.ecam
    }
}

/// What [`open_virtio_and_edu`] found.
#[derive(Debug)]
pub struct VirtioAndEdu {
    /// The virtio function.
    pub virtio: VirtioFunction,
    /// The edu driver.
    pub edu: Edu,
    /// Where edu is (which IOMMU ID that is, the firmware tables say).
    pub edu_bdf: Bdf,
    /// A second edu, if there is one (e.g. for an endpoint nobody attaches).
    pub second_edu: Option<(Edu, Bdf)>,
}

/// Why [`open_virtio_and_edu`] failed.
#[derive(Debug)]
pub enum VirtioSetupError {
    /// PCI enumeration, sizing or assignment failed.
    Pci(PciError),
    /// No virtio function with this device ID.
    NoVirtio(u16),
    /// Setting up edu failed.
    Edu(SetupError),
}

impl fmt::Display for VirtioSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pci(e) => write!(f, "{e}"),
            Self::NoVirtio(d) => write!(f, "no virtio device {VIRTIO_VENDOR:04x}:{d:04x} found"),
            Self::Edu(e) => write!(f, "{e}"),
        }
    }
}

impl From<PciError> for VirtioSetupError {
    fn from(e: PciError) -> Self {
        Self::Pci(e)
    }
}

/// Enumerates PCI once, assigns and enables the memory BARs of the first
/// virtio function with device ID `device` and of the first edu, and checks
/// edu. Prints what it finds, prefixed with `name`.
pub fn open_virtio_and_edu(
    boot: &BootInfo,
    name: &str,
    device: u16,
) -> Result<VirtioAndEdu, VirtioSetupError> {
    let mut host = pci::discover(boot)?;
    let ecam = *host.ecam();
    println!(
        "{name}: PCI ECAM at {:#x}, buses {:?}",
        ecam.base(),
        ecam.buses()
    );
    let (mut virtio, mut edu_fn, mut edu2_fn) = (None, None, None);
    for function in host.functions() {
        println!("{name}: pci {function}");
        if virtio.is_none() && (function.vendor, function.device) == (VIRTIO_VENDOR, device) {
            virtio = Some(function);
        }
        if (function.vendor, function.device) == (edu::VENDOR_ID, edu::DEVICE_ID) {
            if edu_fn.is_none() {
                edu_fn = Some(function);
            } else if edu2_fn.is_none() {
                edu2_fn = Some(function);
            }
        }
    }
    let vf = virtio.ok_or(VirtioSetupError::NoVirtio(device))?;
    let mut bars = [None; 6];
    let mut index = 0u8;
    while index < 6 {
        match host.bar(vf.bdf, index) {
            Ok(bar) if bar.kind != BarKind::Io => {
                // SAFETY: nothing else uses this function's BARs or the window.
                let bar = unsafe { host.assign_bar(vf.bdf, index)? };
                println!(
                    "{name}: virtio {} BAR{index} {:#x} ({} KiB)",
                    vf.bdf,
                    bar.cpu_addr,
                    bar.size >> 10
                );
                bars[usize::from(index)] = Some((bar.cpu_addr, bar.size));
                index += if bar.kind == BarKind::Mem64 { 2 } else { 1 };
            }
            Ok(_) | Err(PciError::BarNotImplemented(..)) => index += 1,
            Err(e) => return Err(e.into()),
        }
    }
    // SAFETY: the virtio device DMAs only to queues its driver sets up in
    // memory the example owns.
    unsafe { host.enable(vf.bdf, CMD_MEMORY | CMD_BUS_MASTER)? };

    let ef = edu_fn.ok_or(VirtioSetupError::Edu(SetupError::NoEdu))?;
    let e = open_edu_at(&mut host, ef.bdf, name)?;
    let second_edu = match edu2_fn {
        Some(f) => Some((open_edu_at(&mut host, f.bdf, name)?, f.bdf)),
        None => None,
    };
    demo!(
        "device",
        "virtio {VIRTIO_VENDOR:04x}:{device:04x} at {}, edu at {} (requester ID {:#x})",
        vf.bdf,
        ef.bdf,
        ef.bdf.rid()
    );
    Ok(VirtioAndEdu {
        virtio: VirtioFunction {
            bdf: vf.bdf,
            device,
            bars,
            ecam,
        },
        edu: e,
        edu_bdf: ef.bdf,
        second_edu,
    })
}

fn open_edu_at(host: &mut pci::PciHost, bdf: Bdf, name: &str) -> Result<Edu, VirtioSetupError> {
    // SAFETY: nothing else uses this edu's BAR0 or the window.
    let bar0 = unsafe { host.assign_bar(bdf, 0)? };
    // SAFETY: edu DMAs only when told to, with addresses the example owns.
    let cmd = unsafe { host.enable(bdf, CMD_MEMORY | CMD_BUS_MASTER)? };
    if cmd & (CMD_MEMORY | CMD_BUS_MASTER) != CMD_MEMORY | CMD_BUS_MASTER {
        return Err(VirtioSetupError::Edu(SetupError::NotEnabled(cmd)));
    }
    // SAFETY: BAR0 of this edu, assigned, decoding, driven by nobody else.
    let mut e = unsafe { Edu::new(bar0.cpu_addr as usize) };
    e.check()
        .map_err(|err| VirtioSetupError::Edu(SetupError::Edu(err)))?;
    println!(
        "{name}: edu at {bdf} BAR0 {:#x}, ID {:#010x}",
        bar0.cpu_addr,
        e.id()
    );
    Ok(e)
}

/// Enumerates PCI once and, for each device ID in `devices`, assigns and
/// enables (memory decoding + Bus-Master) the memory BARs of the first
/// virtio function with that ID, with no edu involved (e.g. a virtio-blk
/// disk, or a virtio-iommu and the virtio-blk behind it). All BARs come
/// from the one window, so calling this twice would hand out overlapping
/// addresses on `virt`: ask for every function in one call. Prints what it
/// finds, prefixed with `name`.
pub fn open_virtio_functions<const N: usize>(
    boot: &BootInfo,
    name: &str,
    devices: [u16; N],
) -> Result<[VirtioFunction; N], VirtioSetupError> {
    let mut host = pci::discover(boot)?;
    let ecam = *host.ecam();
    println!(
        "{name}: PCI ECAM at {:#x}, buses {:?}",
        ecam.base(),
        ecam.buses()
    );
    let mut found = [None; N];
    for function in host.functions() {
        println!("{name}: pci {function}");
        for (slot, &device) in found.iter_mut().zip(devices.iter()) {
            if slot.is_none() && (function.vendor, function.device) == (VIRTIO_VENDOR, device) {
                *slot = Some(function.bdf);
                break;
            }
        }
    }
    // Every entry is overwritten below, or the function returns an error.
    let mut out = [VirtioFunction {
        bdf: Bdf {
            bus: 0,
            device: 0,
            function: 0,
        },
        device: 0,
        bars: [None; 6],
        ecam,
    }; N];
    for (i, &device) in devices.iter().enumerate() {
        let bdf = found[i].ok_or(VirtioSetupError::NoVirtio(device))?;
        let mut bars = [None; 6];
        let mut index = 0u8;
        while index < 6 {
            match host.bar(bdf, index) {
                Ok(bar) if bar.kind != BarKind::Io => {
                    // SAFETY: nothing else uses this function's BARs or the window.
                    let bar = unsafe { host.assign_bar(bdf, index)? };
                    println!(
                        "{name}: virtio {bdf} BAR{index} {:#x} ({} KiB)",
                        bar.cpu_addr,
                        bar.size >> 10
                    );
                    bars[usize::from(index)] = Some((bar.cpu_addr, bar.size));
                    index += if bar.kind == BarKind::Mem64 { 2 } else { 1 };
                }
                Ok(_) | Err(PciError::BarNotImplemented(..)) => index += 1,
                Err(e) => return Err(e.into()),
            }
        }
        // SAFETY: a virtio device DMAs only to queues and buffers its driver
        // hands it, in memory the example owns (or, behind an IOMMU, only
        // through what the example mapped).
        unsafe { host.enable(bdf, CMD_MEMORY | CMD_BUS_MASTER)? };
        out[i] = VirtioFunction {
            bdf,
            device,
            bars,
            ecam,
        };
    }
    Ok(out)
}

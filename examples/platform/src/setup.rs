//! The bring-up every example starts with: enumerate PCI, find `edu`, give
//! it a BAR0, turn on memory decoding and bus mastering, check it answers.

use core::fmt;

use crate::edu::{self, Edu, EduError};
use crate::pci::{self, CMD_BUS_MASTER, CMD_MEMORY, PciError};
use crate::{BootInfo, demo, println};

/// Why [`open_edu`] failed.
#[derive(Debug)]
pub enum SetupError {
    /// PCI enumeration or configuration failed.
    Pci(PciError),
    /// The device did not behave like `edu`.
    Edu(EduError),
    /// No `edu` function on any bus.
    NoEdu,
    /// The command register did not take MEM + BME.
    NotEnabled(u16),
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pci(e) => write!(f, "{e}"),
            Self::Edu(e) => write!(f, "{e}"),
            Self::NoEdu => write!(
                f,
                "no edu device ({:04x}:{:04x}) found; run QEMU with -device edu",
                edu::VENDOR_ID,
                edu::DEVICE_ID
            ),
            Self::NotEnabled(cmd) => write!(
                f,
                "edu command register reads {cmd:#06x} after enabling MEM+BME"
            ),
        }
    }
}

impl From<PciError> for SetupError {
    fn from(e: PciError) -> Self {
        Self::Pci(e)
    }
}

impl From<EduError> for SetupError {
    fn from(e: EduError) -> Self {
        Self::Edu(e)
    }
}

/// Finds the first `edu`, assigns its BAR0 where no firmware did, enables
/// memory decoding and bus mastering, checks its ID and liveness registers,
/// and prints what it found (prefixed with `name`, plus the `device` demo line).
pub fn open_edu(boot: &BootInfo, name: &str) -> Result<Edu, SetupError> {
    let mut host = pci::discover(boot)?;
    let ecam = host.ecam();
    println!(
        "{name}: PCI ECAM at {:#x}, buses {:?}",
        ecam.base(),
        ecam.buses()
    );
    match host.mem32_window() {
        Some(w) => println!(
            "{name}: 32-bit MMIO window: CPU {:#x}, PCI {:#x}, size {:#x}",
            w.cpu_base, w.pci_base, w.size
        ),
        None => println!("{name}: no MMIO window to assign from (firmware assigned the BARs)"),
    }
    let mut found = None;
    for function in host.functions() {
        println!("{name}: pci {function}");
        if found.is_none() && (function.vendor, function.device) == (edu::VENDOR_ID, edu::DEVICE_ID)
        {
            found = Some(function);
        }
    }
    let function = found.ok_or(SetupError::NoEdu)?;
    let bdf = function.bdf;
    let before = host.bar(bdf, 0)?;
    // SAFETY: nothing else uses edu's BAR0 or the MMIO window.
    let bar0 = unsafe { host.assign_bar(bdf, 0)? };
    let how = if before.pci_addr == 0 {
        "assigned by us"
    } else {
        "assigned by firmware"
    };
    println!(
        "{name}: edu at {bdf}: BAR0 {:#x} ({} KiB, {how}), command {:#06x}",
        bar0.cpu_addr,
        bar0.size >> 10,
        host.command(bdf)
    );
    // SAFETY: edu only DMAs when its command register is written, which the
    // examples do only with addresses of memory they own.
    let cmd = unsafe { host.enable(bdf, CMD_MEMORY | CMD_BUS_MASTER)? };
    if cmd & (CMD_MEMORY | CMD_BUS_MASTER) != CMD_MEMORY | CMD_BUS_MASTER {
        return Err(SetupError::NotEnabled(cmd));
    }
    demo!(
        "device",
        "edu {:04x}:{:04x} at {bdf}, BAR0 {:#x} ({how}), memory decoding + bus master on",
        function.vendor,
        function.device,
        bar0.cpu_addr
    );
    // SAFETY: BAR0 of the edu function, assigned, decoding, reachable, and
    // driven by nobody else.
    let mut edu = unsafe { Edu::new(bar0.cpu_addr as usize) };
    edu.check()?;
    println!(
        "{name}: edu ID {:#010x}, liveness register inverts: OK",
        edu.id()
    );
    Ok(edu)
}

//! The I/O APIC of x86_64 `q35` (x86_64 only): the redirection table that
//! turns an interrupt pin (a GSI) into a local APIC vector.
//!
//! q35 has one I/O APIC, 24 pins, at [`IOAPIC_BASE`], the address its ACPI
//! MADT names (QEMU's fixed `IO_APIC_DEFAULT_ADDRESS`; the platform does
//! not parse ACPI tables). [`IoApic::probe`] checks the version register
//! answers there and reads how many pins it has.
//!
//! Registers are reached through a select/window pair (IOREGSEL, IOWIN),
//! so two accesses must not interleave: the crate touches the I/O APIC
//! only with interrupts masked (outside [`crate::irq`]'s waits) or from an
//! interrupt handler, which nothing interrupts.
//!
//! Redirection entries are programmed for PCI INTx: fixed delivery,
//! physical destination (one APIC ID), level triggered, active low (the
//! PCI convention, and what ACPI says for PCI GSIs without an override;
//! QEMU's I/O APIC ignores the polarity bit and treats its input as active
//! high, which is how QEMU's PCI INTx drive it).

use core::fmt;

use crate::mmio;

/// The I/O APIC's register window on q35 (and every PC QEMU models).
pub const IOAPIC_BASE: usize = 0xfec0_0000;
const IOREGSEL: usize = 0x00;
const IOWIN: usize = 0x10;
const REG_VERSION: u32 = 0x01;
const REG_REDIRECTION: u32 = 0x10;

const RTE_MASKED: u32 = 1 << 16;
const RTE_LEVEL: u32 = 1 << 15;
const RTE_ACTIVE_LOW: u32 = 1 << 13;

/// Why the I/O APIC cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoApicError {
    /// The version register does not read like an I/O APIC's (its value).
    NotThere(u32),
    /// The GSI is not one of its pins (GSI, pins it has).
    GsiOutOfRange(u32, u32),
    /// The destination APIC ID does not fit the entry's 8 bits (reaching
    /// it needs interrupt remapping).
    DestinationTooWide(u32),
}

impl fmt::Display for IoApicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotThere(v) => write!(
                f,
                "I/O APIC at {IOAPIC_BASE:#x}: version register reads {v:#010x}"
            ),
            Self::GsiOutOfRange(gsi, pins) => {
                write!(f, "I/O APIC: GSI {gsi} out of range (it has {pins} pins)")
            }
            Self::DestinationTooWide(id) => write!(
                f,
                "I/O APIC: APIC ID {id:#x} does not fit a redirection entry's 8-bit destination"
            ),
        }
    }
}

fn read(reg: u32) -> u32 {
    // SAFETY: IOAPIC_BASE is q35's I/O APIC, in the boot stub's uncached
    // identity map (2-4 GiB); selecting a register and reading the window
    // has no effect beyond the select (see the module docs on
    // interleaving).
    unsafe {
        mmio::write32(IOAPIC_BASE + IOREGSEL, reg);
        mmio::read32(IOAPIC_BASE + IOWIN)
    }
}

/// # Safety
///
/// `reg` must be a redirection entry half, and the value must not deliver
/// a vector without a returning gate (every gate 32-255 returns).
unsafe fn write(reg: u32, value: u32) {
    // SAFETY: as in `read`; the caller vouches for the value.
    unsafe {
        mmio::write32(IOAPIC_BASE + IOREGSEL, reg);
        mmio::write32(IOAPIC_BASE + IOWIN, value);
    }
}

/// The I/O APIC, answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoApic {
    version: u8,
    pins: u32,
}

impl IoApic {
    /// Reads the version register: version 0x1X or 0x2X (QEMU: 0x11 or
    /// 0x20) and the highest redirection entry.
    pub fn probe() -> Result<Self, IoApicError> {
        let v = read(REG_VERSION);
        let version = v as u8;
        if !(0x10..0x30).contains(&version) || v == u32::MAX {
            return Err(IoApicError::NotThere(v));
        }
        Ok(Self {
            version,
            pins: ((v >> 16) & 0xff) + 1,
        })
    }

    /// The version (bits 7:0 of the version register).
    pub fn version(&self) -> u8 {
        self.version
    }

    /// How many pins (redirection entries) it has.
    pub fn pins(&self) -> u32 {
        self.pins
    }

    /// Points pin `gsi` at `vector` on the CPU with APIC ID `apic_id`,
    /// level triggered, active low, masked as `masked` says.
    pub fn route_level(
        &self,
        gsi: u32,
        vector: u8,
        apic_id: u32,
        masked: bool,
    ) -> Result<(), IoApicError> {
        if gsi >= self.pins {
            return Err(IoApicError::GsiOutOfRange(gsi, self.pins));
        }
        if apic_id > 0xff {
            return Err(IoApicError::DestinationTooWide(apic_id));
        }
        let reg = REG_REDIRECTION + 2 * gsi;
        let low =
            u32::from(vector) | RTE_LEVEL | RTE_ACTIVE_LOW | if masked { RTE_MASKED } else { 0 };
        // SAFETY: a redirection entry of a pin the I/O APIC has: masked
        // first, destination next, then the vector (>= 32: its gate
        // returns) with the mask bit as asked.
        unsafe {
            write(reg, read(reg) | RTE_MASKED);
            write(reg + 1, apic_id << 24);
            write(reg, low);
        }
        Ok(())
    }
}

/// Sets or clears the mask bit of pin `gsi`'s redirection entry (nothing
/// for a pin out of the table's range). A level-triggered pin masked while
/// its line is asserted delivers when unmasked, if the line is still up.
pub(crate) fn set_masked(gsi: u32, masked: bool) {
    let Ok(ioapic) = IoApic::probe() else {
        return;
    };
    if gsi >= ioapic.pins {
        return;
    }
    let reg = REG_REDIRECTION + 2 * gsi;
    let low = read(reg);
    let low = if masked {
        low | RTE_MASKED
    } else {
        low & !RTE_MASKED
    };
    // SAFETY: the pin's own entry with only the mask bit changed; its
    // vector was programmed by `route_level` (>= 32).
    unsafe { write(reg, low) };
}

//! Driver for QEMU's `edu` educational PCI device (`hw/misc/edu.c`), used as
//! a DMA engine: it copies between bus addresses and a 4 KiB internal buffer
//! that sits at device address 0x40000.
//!
//! A transfer runs 100 ms of QEMU virtual time after it is started; we poll
//! the command register's RUN bit with a deadline. The device's DMA goes
//! through whichever IOMMU covers its bus, so a "bus address" below is an
//! IOVA when an IOMMU is translating, and a physical address otherwise.
//!
//! Interrupts: [`Edu::raise_irq`] / [`Edu::ack_irq`] set and clear the
//! interrupt status; with MSI enabled ([`enable_msi`]) raising sends one
//! MSI write (it goes through the IOMMU like any DMA).
//!
//! Note `dma_mask`: edu ANDs every DMA address with its `dma_mask` property,
//! `(1 << 28) - 1` by default. Use `-device edu,dma_mask=0xffffffffffffffff`
//! unless all bus addresses are below 256 MiB.

use core::fmt;

use crate::mmio;
use crate::pci::{Bdf, Ecam};

/// PCI vendor ID.
pub const VENDOR_ID: u16 = 0x1234;
/// PCI device ID.
pub const DEVICE_ID: u16 = 0x11e8;
/// What the identification register reads.
pub const ID_VALUE: u32 = 0x0100_00ed;
/// Device address of the internal buffer.
pub const BUFFER_ADDR: u64 = 0x40000;
/// Size of the internal buffer.
pub const BUFFER_SIZE: u32 = 0x1000;
/// BAR0 size.
pub const BAR0_SIZE: u64 = 1 << 20;
/// How long a transfer may take before we give up (the device needs 100 ms
/// of virtual time; leave plenty of room for a loaded CI machine).
pub const DMA_TIMEOUT_MS: u64 = 5000;

const REG_ID: usize = 0x00;
const REG_LIVENESS: usize = 0x04;
const REG_IRQ_STATUS: usize = 0x24;
const REG_IRQ_RAISE: usize = 0x60;
const REG_IRQ_ACK: usize = 0x64;
const REG_DMA_SRC: usize = 0x80;
const REG_DMA_DST: usize = 0x88;
const REG_DMA_COUNT: usize = 0x90;
const REG_DMA_CMD: usize = 0x98;
const CMD_RUN: u64 = 1 << 0;
const CMD_TO_RAM: u64 = 1 << 1;

/// Why an `edu` operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EduError {
    /// The ID register did not read [`ID_VALUE`] (the value read).
    BadId(u32),
    /// The liveness register did not return the inverse of what was written.
    Liveness {
        /// Value written.
        wrote: u32,
        /// Value read back.
        read: u32,
    },
    /// A transfer was already running when a new one was requested.
    Busy,
    /// The transfer did not complete in time (the command register's last value).
    Timeout(u64),
    /// Zero-length transfer.
    ZeroLength,
    /// The transfer would leave the internal buffer (offset, length).
    OutsideBuffer(u32, u32),
    /// The function has no MSI capability (ID 0x05) in its capability list.
    NoMsi,
    /// The MSI capability cannot take a 64-bit address, and the address
    /// given is above 4 GiB.
    MsiAddress(u64),
    /// The MSI enable bit did not stick (Message Control read back).
    MsiNotEnabled(u16),
}

impl fmt::Display for EduError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadId(id) => write!(
                f,
                "edu: ID register reads {id:#010x}, expected {ID_VALUE:#010x}"
            ),
            Self::Liveness { wrote, read } => {
                write!(
                    f,
                    "edu: liveness wrote {wrote:#010x}, read {read:#010x}, expected {:#010x}",
                    !wrote
                )
            }
            Self::Busy => f.write_str("edu: DMA already running"),
            Self::Timeout(cmd) => write!(
                f,
                "edu: DMA did not complete within {DMA_TIMEOUT_MS} ms (cmd {cmd:#x})"
            ),
            Self::ZeroLength => f.write_str("edu: zero-length DMA"),
            Self::OutsideBuffer(off, len) => write!(
                f,
                "edu: {len:#x} bytes at buffer offset {off:#x} exceed the {BUFFER_SIZE:#x}-byte buffer"
            ),
            Self::NoMsi => f.write_str("edu: no MSI capability"),
            Self::MsiAddress(a) => write!(
                f,
                "edu: MSI address {a:#x} needs 64 bits, the capability has 32"
            ),
            Self::MsiNotEnabled(c) => write!(
                f,
                "edu: MSI enable did not stick (Message Control {c:#06x})"
            ),
        }
    }
}

/// An `edu` device whose BAR0 is mapped.
#[derive(Debug)]
pub struct Edu {
    bar0: usize,
}

impl Edu {
    /// Wraps the device whose BAR0 the CPU reaches at `bar0`.
    ///
    /// # Safety
    ///
    /// `bar0` must be the identity-mapped CPU address of an `edu` device's
    /// BAR0 (1 MiB), with memory decoding enabled, and no other code may
    /// drive this device while the `Edu` exists.
    pub unsafe fn new(bar0: usize) -> Self {
        Self { bar0 }
    }

    fn read32(&self, offset: usize) -> u32 {
        // SAFETY: `offset` is one of the register constants above, inside the
        // 1 MiB BAR that `new`'s caller guaranteed; 4-byte aligned.
        unsafe { mmio::read32(self.bar0 + offset) }
    }

    fn write32(&mut self, offset: usize, value: u32) {
        // SAFETY: as in `read32`; only the liveness and interrupt registers
        // are written with this: the first has no side effect beyond itself,
        // the others raise or lower the device's interrupt (an MSI write to
        // the address `enable_msi`'s caller vouched for).
        unsafe { mmio::write32(self.bar0 + offset, value) }
    }

    fn read64(&self, offset: usize) -> u64 {
        // SAFETY: as in `read32`; registers at 0x80 and above accept 8-byte
        // accesses, and the offsets are 8-byte aligned.
        unsafe { mmio::read64(self.bar0 + offset) }
    }

    /// The identification register (0x010000ED: version 1.0, "ED").
    pub fn id(&self) -> u32 {
        self.read32(REG_ID)
    }

    /// Checks the ID register and that the liveness register inverts what is
    /// written to it.
    pub fn check(&mut self) -> Result<(), EduError> {
        let id = self.id();
        if id != ID_VALUE {
            return Err(EduError::BadId(id));
        }
        for wrote in [0x1234_5678, 0xa5a5_0ff0] {
            self.write32(REG_LIVENESS, wrote);
            let read = self.read32(REG_LIVENESS);
            if read != !wrote {
                return Err(EduError::Liveness { wrote, read });
            }
        }
        Ok(())
    }

    /// Sets `bits` in the interrupt status register (`0x60`): the device
    /// asserts its interrupt, which with MSI enabled is one MSI write.
    pub fn raise_irq(&mut self, bits: u32) {
        self.write32(REG_IRQ_RAISE, bits);
    }

    /// Clears `bits` in the interrupt status register (`0x64`).
    pub fn ack_irq(&mut self, bits: u32) {
        self.write32(REG_IRQ_ACK, bits);
    }

    /// The interrupt status register (`0x24`).
    pub fn irq_status(&self) -> u32 {
        self.read32(REG_IRQ_STATUS)
    }

    /// Whether a transfer is running.
    pub fn busy(&self) -> bool {
        self.read64(REG_DMA_CMD) & CMD_RUN != 0
    }

    /// Copies `len` bytes from bus address `src` into the internal buffer at
    /// `offset`, and waits for completion.
    ///
    /// After [`EduError::Timeout`] the transfer may still complete later:
    /// do not reuse the memory involved.
    ///
    /// # Safety
    ///
    /// The device will read `src..src + len` on the bus; with no IOMMU that
    /// is physical memory, which must be readable (reading has no effect on
    /// Rust's memory).
    pub unsafe fn dma_to_device(
        &mut self,
        src: u64,
        offset: u32,
        len: u32,
    ) -> Result<(), EduError> {
        check_range(offset, len)?;
        // SAFETY: the caller vouches for the bus range; the buffer range is checked.
        unsafe { self.run(src, BUFFER_ADDR + u64::from(offset), len, 0) }
    }

    /// Copies `len` bytes from the internal buffer at `offset` to bus address
    /// `dst`, and waits for completion.
    ///
    /// After [`EduError::Timeout`] the transfer may still complete later:
    /// do not reuse the memory involved.
    ///
    /// # Safety
    ///
    /// The device will write `dst..dst + len` on the bus; with no IOMMU that is
    /// physical memory, which must not be memory Rust code holds references to
    /// or relies on (e.g. a [`crate::frames::Frames`] block the caller owns).
    pub unsafe fn dma_from_device(
        &mut self,
        offset: u32,
        dst: u64,
        len: u32,
    ) -> Result<(), EduError> {
        check_range(offset, len)?;
        // SAFETY: the caller vouches for the bus range; the buffer range is checked.
        unsafe { self.run(BUFFER_ADDR + u64::from(offset), dst, len, CMD_TO_RAM) }
    }

    /// # Safety
    ///
    /// See `dma_to_device` / `dma_from_device`.
    unsafe fn run(&mut self, src: u64, dst: u64, len: u32, direction: u64) -> Result<(), EduError> {
        if self.busy() {
            return Err(EduError::Busy);
        }
        // Make the CPU's writes to the source buffer visible before the device
        // can read it.
        crate::arch::dma_barrier();
        // SAFETY: registers 0x80-0x98 of BAR0 accept 8-byte writes; the writes
        // start a DMA whose effects the caller has vouched for.
        unsafe {
            mmio::write64(self.bar0 + REG_DMA_SRC, src);
            mmio::write64(self.bar0 + REG_DMA_DST, dst);
            mmio::write64(self.bar0 + REG_DMA_COUNT, u64::from(len));
            mmio::write64(self.bar0 + REG_DMA_CMD, CMD_RUN | direction);
        }
        let result = crate::time::poll_until(DMA_TIMEOUT_MS, || (!self.busy()).then_some(()));
        // Order the completion check before the CPU reads the destination.
        crate::arch::dma_barrier();
        result.map_err(|_| EduError::Timeout(self.read64(REG_DMA_CMD)))
    }
}

/// PCI capability ID of MSI.
pub const CAP_MSI: u8 = 0x05;
const CAP_POINTER: u16 = 0x34;
const STATUS_CAP_LIST: u16 = 1 << 4;
const MSI_ENABLE: u16 = 1 << 0;
const MSI_64BIT: u16 = 1 << 7;
/// Multiple Message Enable (bits 6:4): 0 = one vector.
const MSI_MME: u16 = 7 << 4;

/// Config-space offset of `bdf`'s capability `id`, walking the list from
/// the capability pointer (bounded: at most 48 entries fit in config space).
pub fn find_capability(ecam: &Ecam, bdf: Bdf, id: u8) -> Option<u16> {
    if ecam.read16(bdf, crate::pci::reg::STATUS) & STATUS_CAP_LIST == 0 {
        return None;
    }
    let mut at = u16::from(ecam.read8(bdf, CAP_POINTER) & !3);
    for _ in 0..48 {
        if at < 0x40 {
            return None;
        }
        if ecam.read8(bdf, at) == id {
            return Some(at);
        }
        at = u16::from(ecam.read8(bdf, at + 1) & !3);
    }
    None
}

/// Programs `bdf`'s MSI capability with one vector writing `data` to bus
/// address `addr`, and enables it; returns the capability's offset.
///
/// # Safety
///
/// `bdf` must be an `edu` function on `ecam` that nobody else drives; once
/// enabled, each raised interrupt makes the device write `data` (4 bytes)
/// to `addr` on the bus, which must be sound (an interrupt controller's
/// doorbell, or an IOVA an IOMMU maps to one or blocks).
pub unsafe fn enable_msi(ecam: &Ecam, bdf: Bdf, addr: u64, data: u16) -> Result<u16, EduError> {
    let cap = find_capability(ecam, bdf, CAP_MSI).ok_or(EduError::NoMsi)?;
    let ctl = ecam.read16(bdf, cap + 2);
    let wide = ctl & MSI_64BIT != 0;
    if !wide && addr >> 32 != 0 {
        return Err(EduError::MsiAddress(addr));
    }
    // SAFETY: MSI capability registers of the caller's edu function; the
    // caller vouches for the address, written before enabling.
    unsafe {
        ecam.write16(bdf, cap + 2, ctl & !(MSI_ENABLE | MSI_MME));
        ecam.write32(bdf, cap + 4, addr as u32);
        if wide {
            ecam.write32(bdf, cap + 8, (addr >> 32) as u32);
            ecam.write16(bdf, cap + 12, data);
        } else {
            ecam.write16(bdf, cap + 8, data);
        }
        ecam.write16(bdf, cap + 2, (ctl & !MSI_MME) | MSI_ENABLE);
    }
    let now = ecam.read16(bdf, cap + 2);
    if now & MSI_ENABLE == 0 {
        return Err(EduError::MsiNotEnabled(now));
    }
    Ok(cap)
}

fn check_range(offset: u32, len: u32) -> Result<(), EduError> {
    if len == 0 {
        return Err(EduError::ZeroLength);
    }
    match offset.checked_add(len) {
        Some(end) if end <= BUFFER_SIZE => Ok(()),
        _ => Err(EduError::OutsideBuffer(offset, len)),
    }
}

//! `edu-dma`: the first system test. No IOMMU: the `edu` device DMAs with
//! physical addresses.
//!
//! Boots, enumerates PCI, finds `edu`, assigns its BAR0 if no firmware did,
//! enables memory decoding and Bus-Master, checks the ID and liveness
//! registers, then round-trips a 4 KiB pattern RAM -> device -> RAM and
//! checks every byte. The source buffer is overwritten before the second
//! transfer and the destination starts out poisoned, so the data compared
//! can only have come back from the device. A guard frame after the
//! destination checks that the device wrote exactly what was asked.
//!
//! Runs unchanged on aarch64 `virt` and x86_64 `q35`.

#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

use core::fmt;

use platform::edu::{self, Edu, EduError};
use platform::frames::{FRAME_SIZE, FrameAllocator, FramesError};
use platform::pci::{self, CMD_BUS_MASTER, CMD_MEMORY, PciError};
use platform::{BootInfo, demo, println};

platform::entry!(main);

const NAME: &str = "edu-dma";
/// Bytes moved each way: the whole edu buffer.
const LEN: usize = edu::BUFFER_SIZE as usize;
const POISON_SRC: u8 = 0x11;
const POISON_DST: u8 = 0xee;

#[derive(Debug)]
enum Error {
    Pci(PciError),
    Edu(EduError),
    Frames(FramesError),
    NoEdu,
    NoFrameAllocator,
    NotEnabled(u16),
    Mismatch {
        what: &'static str,
        offset: usize,
        expected: u8,
        found: u8,
        count: usize,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pci(e) => write!(f, "{e}"),
            Self::Edu(e) => write!(f, "{e}"),
            Self::Frames(e) => write!(f, "{e}"),
            Self::NoEdu => write!(
                f,
                "no edu device ({:04x}:{:04x}) found; run QEMU with -device edu",
                edu::VENDOR_ID,
                edu::DEVICE_ID
            ),
            Self::NoFrameAllocator => f.write_str("frame allocator already taken"),
            Self::NotEnabled(cmd) => write!(
                f,
                "edu command register reads {cmd:#06x} after enabling MEM+BME"
            ),
            Self::Mismatch {
                what,
                offset,
                expected,
                found,
                count,
            } => write!(
                f,
                "{what}: {count} byte(s) wrong, first at offset {offset:#x}: expected {expected:#04x}, found {found:#04x}"
            ),
        }
    }
}

impl From<PciError> for Error {
    fn from(e: PciError) -> Self {
        Self::Pci(e)
    }
}
impl From<EduError> for Error {
    fn from(e: EduError) -> Self {
        Self::Edu(e)
    }
}
impl From<FramesError> for Error {
    fn from(e: FramesError) -> Self {
        Self::Frames(e)
    }
}

/// The test pattern: not periodic in 256, so a transfer shifted by any
/// number of bytes would not match.
fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(167) ^ (i >> 8).wrapping_mul(59) ^ 0x3c) as u8
}

/// Checks `bytes[i] == expected(i)` for every byte.
fn verify(what: &'static str, bytes: &[u8], expected: impl Fn(usize) -> u8) -> Result<(), Error> {
    let mut first = None;
    let mut count = 0;
    for (offset, &found) in bytes.iter().enumerate() {
        if found != expected(offset) {
            count += 1;
            first.get_or_insert((offset, found));
        }
    }
    match first {
        None => Ok(()),
        Some((offset, found)) => Err(Error::Mismatch {
            what,
            offset,
            expected: expected(offset),
            found,
            count,
        }),
    }
}

fn main(boot: &BootInfo) -> Result<(), Error> {
    platform::banner(NAME, boot);
    demo!("iommu", "none (the device uses physical addresses)");

    let mut host = pci::discover(boot)?;
    let ecam = host.ecam();
    println!(
        "{NAME}: PCI ECAM at {:#x}, buses {:?}",
        ecam.base(),
        ecam.buses()
    );
    match host.mem32_window() {
        Some(w) => println!(
            "{NAME}: 32-bit MMIO window: CPU {:#x}, PCI {:#x}, size {:#x}",
            w.cpu_base, w.pci_base, w.size
        ),
        None => println!("{NAME}: no MMIO window to assign from (firmware assigned the BARs)"),
    }
    let mut found = None;
    for function in host.functions() {
        println!("{NAME}: pci {function}");
        if found.is_none() && (function.vendor, function.device) == (edu::VENDOR_ID, edu::DEVICE_ID)
        {
            found = Some(function);
        }
    }
    let function = found.ok_or(Error::NoEdu)?;
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
        "{NAME}: edu at {bdf}: BAR0 {:#x} ({} KiB, {how}), command {:#06x}",
        bar0.cpu_addr,
        bar0.size >> 10,
        host.command(bdf)
    );
    // SAFETY: edu only DMAs when its command register is written, which
    // below happens only with addresses of frames this program owns.
    let cmd = unsafe { host.enable(bdf, CMD_MEMORY | CMD_BUS_MASTER)? };
    if cmd & (CMD_MEMORY | CMD_BUS_MASTER) != CMD_MEMORY | CMD_BUS_MASTER {
        return Err(Error::NotEnabled(cmd));
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
        "{NAME}: edu ID {:#010x}, liveness register inverts: OK",
        edu.id()
    );

    let mut frames = FrameAllocator::take().ok_or(Error::NoFrameAllocator)?;
    let mut src = frames.alloc(1)?;
    // Two frames: the destination and a guard frame after it.
    let mut dst = frames.alloc(2)?;
    for (i, byte) in src.as_mut_slice().iter_mut().enumerate() {
        *byte = pattern(i);
    }
    dst.as_mut_slice().fill(POISON_DST);
    demo!(
        "mapped",
        "nothing: source {:#x} and destination {:#x} are handed to the device as physical addresses",
        src.phys(),
        dst.phys()
    );

    // SAFETY: the device reads `src`, which we own and do not touch during the transfer.
    unsafe { edu.dma_to_device(src.phys(), 0, LEN as u32)? };
    println!(
        "{NAME}: DMA {LEN} bytes RAM {:#x} -> edu {:#x}: done",
        src.phys(),
        edu::BUFFER_ADDR
    );
    // Scribble over the source: whatever arrives in `dst` must come from the device.
    src.as_mut_slice().fill(POISON_SRC);

    // SAFETY: the device writes the first LEN bytes of `dst`, which we own and
    // do not touch during the transfer.
    unsafe { edu.dma_from_device(0, dst.phys(), LEN as u32)? };
    println!(
        "{NAME}: DMA {LEN} bytes edu {:#x} -> RAM {:#x}: done",
        edu::BUFFER_ADDR,
        dst.phys()
    );

    let dst_bytes = dst.as_mut_slice();
    let (data, guard) = dst_bytes.split_at(LEN);
    verify("data returned by the device", data, pattern)?;
    verify(
        "guard frame after the destination",
        &guard[..FRAME_SIZE],
        |_| POISON_DST,
    )?;
    verify(
        "source buffer (the device must not write it)",
        src.as_mut_slice(),
        |_| POISON_SRC,
    )?;

    demo!(
        "dma",
        "{LEN} bytes RAM {:#x} -> edu buffer -> RAM {:#x}, every byte checked, guard frame untouched",
        src.phys(),
        dst.phys()
    );
    demo!("fault", "none expected, none seen");
    println!(
        "{NAME}: no IOMMU, {LEN} bytes RAM->edu->RAM at phys {:#x} -> {:#x}, OK",
        src.phys(),
        dst.phys()
    );
    demo!("result", "OK");
    Ok(())
}

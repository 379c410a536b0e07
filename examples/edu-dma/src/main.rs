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
//!
//! `-append intx` runs the `intx` scenario instead (see [`intx`]): edu's
//! legacy INTx through `platform::intx`.

#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

mod intx;

use core::fmt;

use platform::edu::{self, EduError};
use platform::frames::{FRAME_SIZE, FrameAllocator, FramesError};
use platform::setup::SetupError;
use platform::{BootInfo, demo, println};

platform::entry!(main);

pub(crate) const NAME: &str = "edu-dma";
/// Bytes moved each way: the whole edu buffer.
const LEN: usize = edu::BUFFER_SIZE as usize;
const POISON_SRC: u8 = 0x11;
const POISON_DST: u8 = 0xee;

#[derive(Debug)]
enum Error {
    Setup(SetupError),
    Edu(EduError),
    Intx(intx::IntxCheckError),
    Frames(FramesError),
    NoFrameAllocator,
    UnknownScenario(&'static str),
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
            Self::Setup(e) => write!(f, "{e}"),
            Self::Edu(e) => write!(f, "{e}"),
            Self::Intx(e) => write!(f, "{e}"),
            Self::Frames(e) => write!(f, "{e}"),
            Self::NoFrameAllocator => f.write_str("frame allocator already taken"),
            Self::UnknownScenario(s) => {
                write!(f, "unknown scenario `{s}` (none: DMA round trip; `intx`)")
            }
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

impl From<SetupError> for Error {
    fn from(e: SetupError) -> Self {
        Self::Setup(e)
    }
}
impl From<intx::IntxCheckError> for Error {
    fn from(e: intx::IntxCheckError) -> Self {
        Self::Intx(e)
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

    let mut edu = platform::setup::open_edu(boot, NAME)?;
    match platform::cmdline::command_line(boot).trim() {
        "intx" => return Ok(intx::run(boot, edu)?),
        "" => {}
        other => return Err(Error::UnknownScenario(other)),
    }

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

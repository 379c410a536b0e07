//! The I/O check: read the initial pattern, write the write pattern in
//! requests of several shapes, read it back elsewhere and compare.

use virtio_drivers::Hal;
use virtio_drivers::transport::Transport;

use crate::pattern::{Pattern, READ_INITIAL, SECTOR, WRITTEN};
use crate::{BlkDevice, BlkError, Context, Counters, scratch_areas};

/// One request of a plan: first sector, sectors, offset in its area.
type Piece = (u64, usize, usize);

/// How sectors 0..64 are read into area A: one 16 KiB request into
/// page-aligned memory, one 4 KiB request across a page boundary, then 24
/// single sectors at odd offsets (some of them straddle a page).
const READ_PLAN: [Piece; 3] = [(0, 32, 0), (32, 8, 0x4800), (40, 1, 0x6123)];
/// Offset step between the single-sector reads of the last piece.
const SINGLE_STEP: usize = 0x301;

/// How sectors 64..128 are written from area B (13 requests): 16 KiB
/// aligned; 4 KiB across a page boundary; 512 B at an odd offset; 3.5 KiB
/// at an odd offset across a page boundary; 4 KiB aligned; then eight
/// 512 B requests at odd offsets.
const WRITE_PLAN: [Piece; 6] = [
    (64, 32, 0),
    (96, 8, 0x4800),
    (104, 1, 0x6123),
    (105, 7, 0x7401),
    (112, 8, 0x9000),
    (120, 1, 0xA011),
];

/// Where the read-back lands in area A: 32 KiB at a sector-aligned but not
/// page-aligned offset, spanning nine pages.
const READ_BACK_OFFSET: usize = 0x200;

/// What [`check`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckReport {
    /// Requests issued (all completed and checked).
    pub requests: u64,
    /// Bytes the device wrote to memory (reads).
    pub bytes_read: u64,
    /// Bytes the device read from memory (writes to the disk).
    pub bytes_written: u64,
    /// The caller's counters over the check.
    pub counters: Counters,
}

/// Reads sectors `first..first + count` one request per sector, at
/// `offset`, `offset + step`, ...
fn singles(first: u64, count: usize, offset: usize) -> impl Iterator<Item = (u64, usize)> {
    (0..count).map(move |k| (first + k as u64, offset + k * SINGLE_STEP))
}

/// The check. `scratch`: at least [`crate::SCRATCH_BYTES`], 4 KiB aligned.
/// Prints what it does, and `demo: dma` / `demo: mapped` lines.
pub fn check<H: Hal, T: Transport>(
    dev: &mut BlkDevice<'_, H, T>,
    scratch: &mut [u8],
    ctx: &mut Context<'_>,
) -> Result<CheckReport, BlkError> {
    let name = ctx.name;
    if dev.capacity() < WRITTEN.end {
        return Err(BlkError::TooSmall(dev.capacity(), WRITTEN.end));
    }
    let (a, b, _) = scratch_areas(scratch)?;
    let before = (ctx.counters)();
    let stats0 = dev.stats();

    // Sectors 0..64: initial pattern.
    let mut requests = 0;
    for &(first, count, offset) in &READ_PLAN[..2] {
        let buf = &mut a[offset..offset + count * SECTOR];
        dev.read(first, buf)?;
        Pattern::Initial.check(first, buf)?;
        requests += 1;
    }
    let (first, _, offset) = READ_PLAN[2];
    let singles_n = (READ_INITIAL.end - first) as usize;
    for (s, off) in singles(first, singles_n, offset) {
        let buf = &mut a[off..off + SECTOR];
        dev.read(s, buf)?;
        Pattern::Initial.check(s, buf)?;
        requests += 1;
    }
    platform::println!(
        "{name}: read sectors {}..{} in {requests} requests (16 KiB aligned, 4 KiB across a page boundary, {singles_n} x 512 B at odd offsets): initial pattern checked",
        READ_INITIAL.start,
        READ_INITIAL.end
    );

    // Sectors 64..128: write pattern.
    let mut writes = 0;
    for &(first, count, offset) in &WRITE_PLAN[..5] {
        let buf = &mut b[offset..offset + count * SECTOR];
        Pattern::Written.fill(first, buf);
        dev.write(first, buf)?;
        writes += 1;
    }
    let (first, _, offset) = WRITE_PLAN[5];
    let last_n = (WRITTEN.end - first) as usize;
    for (s, off) in singles(first, last_n, offset) {
        let buf = &mut b[off..off + SECTOR];
        Pattern::Written.fill(s, buf);
        dev.write(s, buf)?;
        writes += 1;
    }
    platform::println!(
        "{name}: wrote sectors {}..{} ({} bytes) in {writes} requests (16 KiB and 4 KiB aligned, 4 KiB across a page boundary, 512 B and 3.5 KiB at odd offsets, {last_n} x 512 B at odd offsets)",
        WRITTEN.start,
        WRITTEN.end,
        (WRITTEN.end - WRITTEN.start) * SECTOR as u64
    );

    // Read back into a different buffer, poisoned first.
    let len = (WRITTEN.end - WRITTEN.start) as usize * SECTOR;
    let back = &mut a[READ_BACK_OFFSET..READ_BACK_OFFSET + len];
    back.fill(0xEE);
    dev.read(WRITTEN.start, back)?;
    Pattern::Written.check(WRITTEN.start, back)?;
    platform::println!(
        "{name}: read sectors {}..{} back in one {} KiB request into another buffer (page offset {READ_BACK_OFFSET:#x}): write pattern checked",
        WRITTEN.start,
        WRITTEN.end,
        len >> 10
    );

    let stats = dev.stats();
    let counters = (ctx.counters)().since(before);
    let report = CheckReport {
        requests: stats.requests - stats0.requests,
        bytes_read: stats.bytes_read - stats0.bytes_read,
        bytes_written: stats.bytes_written - stats0.bytes_written,
        counters,
    };
    platform::demo!(
        "dma",
        "virtio-blk wrote {} bytes to disk and read {} bytes in {} requests, every byte checked (IOMMU: {})",
        report.bytes_written,
        report.bytes_read,
        report.requests,
        ctx.iommu
    );
    platform::demo!(
        "mapped",
        "{} mappings, {} flushes during the check",
        counters.maps,
        counters.flushes
    );
    Ok(report)
}

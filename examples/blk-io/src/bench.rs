//! Sequential-read benchmark: the first 8 MiB of the disk with 4 KiB and
//! with 64 KiB requests, one request in flight, polled.
//!
//! Each line reads
//! `blk-bench: <label> <size> requests=<n> bytes=<b> ns=<t> MB/s=<x> maps=<m> flushes=<f>`
//! (label = the caller's IOMMU label, spaces as `_`; MB = 10^6 bytes; `ns`
//! from the platform clock; maps and flushes from the caller's counters).
//! Every sector's first 8 bytes (its number, in both patterns) are checked,
//! so the figures are for data that really arrived.

use core::fmt;

use virtio_drivers::Hal;
use virtio_drivers::transport::Transport;

use crate::pattern::{Mismatch, Pattern, SECTOR};
use crate::{BlkDevice, BlkError, Context, Counters, scratch_areas};

/// Bytes read per size.
pub const BENCH_BYTES: u64 = 8 << 20;
/// Request sizes.
pub const BENCH_SIZES: [usize; 2] = [4096, 65536];

/// One size's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchResult {
    /// Bytes per request.
    pub request_bytes: usize,
    /// Requests issued.
    pub requests: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Time taken (0 without a clock).
    pub ns: u64,
    /// The caller's counters over the run.
    pub counters: Counters,
}

impl BenchResult {
    /// Throughput in tenths of MB/s (10^6 bytes per second).
    pub fn mb_per_s_x10(&self) -> u64 {
        if self.ns == 0 {
            return 0;
        }
        ((self.bytes as u128 * 10_000) / self.ns as u128).min(u64::MAX as u128) as u64
    }
}

struct Label<'a>(&'a str);

impl fmt::Display for Label<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            fmt::Write::write_char(f, if c.is_whitespace() { '_' } else { c })?;
        }
        Ok(())
    }
}

fn now_ns() -> u64 {
    platform::time::clock()
        .map(|(ticks, hz)| (ticks as u128 * 1_000_000_000 / hz as u128) as u64)
        .unwrap_or(0)
}

/// Runs both sizes; prints a `blk-bench:` and a `demo: bench` line each.
pub fn bench<H: Hal, T: Transport>(
    dev: &mut BlkDevice<'_, H, T>,
    scratch: &mut [u8],
    ctx: &mut Context<'_>,
) -> Result<[BenchResult; 2], BlkError> {
    let need = BENCH_BYTES / SECTOR as u64;
    if dev.capacity() < need {
        return Err(BlkError::TooSmall(dev.capacity(), need));
    }
    let (a, _, _) = scratch_areas(scratch)?;
    Ok([
        run(dev, a, ctx, BENCH_SIZES[0])?,
        run(dev, a, ctx, BENCH_SIZES[1])?,
    ])
}

fn run<H: Hal, T: Transport>(
    dev: &mut BlkDevice<'_, H, T>,
    area: &mut [u8],
    ctx: &mut Context<'_>,
    size: usize,
) -> Result<BenchResult, BlkError> {
    let need = BENCH_BYTES / SECTOR as u64;
    let buf = &mut area[..size];
    let per = (size / SECTOR) as u64;
    let before = (ctx.counters)();
    let start = now_ns();
    let mut requests = 0;
    let mut sector = 0;
    while sector < need {
        dev.read(sector, buf)?;
        for (k, chunk) in buf.chunks_exact(SECTOR).enumerate() {
            let s = sector + k as u64;
            if chunk[..8] != s.to_le_bytes() {
                let offset = (0..8)
                    .find(|&j| chunk[j] != s.to_le_bytes()[j])
                    .unwrap_or(0);
                return Err(BlkError::Data(Mismatch {
                    pattern: Pattern::Initial,
                    sector: s,
                    offset,
                    expected: s.to_le_bytes()[offset],
                    found: chunk[offset],
                }));
            }
        }
        requests += 1;
        sector += per;
    }
    let ns = now_ns().saturating_sub(start);
    let r = BenchResult {
        request_bytes: size,
        requests,
        bytes: requests * size as u64,
        ns,
        counters: (ctx.counters)().since(before),
    };
    let x10 = r.mb_per_s_x10();
    platform::println!(
        "blk-bench: {} {}KiB requests={} bytes={} ns={} MB/s={}.{} maps={} flushes={}",
        Label(ctx.iommu),
        size >> 10,
        r.requests,
        r.bytes,
        r.ns,
        x10 / 10,
        x10 % 10,
        r.counters.maps,
        r.counters.flushes
    );
    platform::demo!(
        "bench",
        "{} x {} KiB sequential reads: {}.{} MB/s, {} mappings, {} flushes",
        r.requests,
        size >> 10,
        x10 / 10,
        x10 % 10,
        r.counters.maps,
        r.counters.flushes
    );
    Ok(r)
}

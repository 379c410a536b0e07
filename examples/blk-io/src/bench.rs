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

use crate::device::CheckRead;
use crate::pattern::{Mismatch, Pattern, SECTOR};
use crate::{BlkDevice, BlkError, Context, Counters, HalTime, TimedHal, scratch_areas};

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

/// A configuration of the IOMMU and of the `Hal` the disk is driven through,
/// as the same-boot benchmark ([`matrix`]) compares them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// The IOMMU lets the device through untranslated (SMMUv3 STE bypass,
    /// VT-d pass-through context, virtio-iommu bypass domain); device
    /// addresses are physical addresses ([`crate::DirectHal`]).
    Baseline,
    /// A translated domain that maps all of the platform's memory at
    /// IOVA = physical address once: what the IOMMU itself costs, with no
    /// map, unmap or flush per request ([`crate::DirectHal`]).
    Premapped,
    /// `iova-virtio-hal` in place, strict: every share mapped, every unshare
    /// unmapped and flushed before it returns.
    Strict,
    /// `iova-virtio-hal` with its mapped bounce pool, strict.
    Pool,
    /// `iova-virtio-hal` with deferred invalidation (a flush queue).
    Deferred,
}

impl Policy {
    /// The name in `blk-bench:` lines.
    pub fn name(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::Premapped => "premapped",
            Self::Strict => "strict",
            Self::Pool => "pool",
            Self::Deferred => "deferred",
        }
    }
}

/// What a request cost, from the policy's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Costs {
    /// Mappings made (links, MAP requests).
    pub maps: u64,
    /// Flushes issued (CMD_SYNCs, invalidation waits, notifications).
    pub flushes: u64,
    /// Bytes copied to or from bounce memory.
    pub bounce_bytes: u64,
}

impl Costs {
    fn since(self, before: Costs) -> Costs {
        Costs {
            maps: self.maps.saturating_sub(before.maps),
            flushes: self.flushes.saturating_sub(before.flushes),
            bounce_bytes: self.bounce_bytes.saturating_sub(before.bounce_bytes),
        }
    }
}

/// One cell of the matrix: request size and requests in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cell {
    /// Bytes per request.
    pub size: usize,
    /// Requests kept in flight.
    pub depth: usize,
}

/// The cells every policy runs, in this order.
pub const CELLS: [Cell; 4] = [
    Cell {
        size: 4096,
        depth: 1,
    },
    Cell {
        size: 4096,
        depth: 16,
    },
    Cell {
        size: 65536,
        depth: 1,
    },
    Cell {
        size: 65536,
        depth: 16,
    },
];

/// Rounds of the matrix (odd, for the median).
pub const ROUNDS: usize = 5;

/// Bytes a cell reads per round: 2 MiB of 4 KiB requests (512), 8 MiB of
/// 64 KiB (128): long enough that one round of a cell is some milliseconds
/// of TCG time, short enough that a row stays a few seconds.
fn cell_bytes(size: usize) -> u64 {
    if size <= 4096 { 2 << 20 } else { 8 << 20 }
}

/// Buffer space [`matrix`] needs: 16 requests of 64 KiB in flight.
pub const MATRIX_BUFFER_BYTES: usize = crate::MAX_DEPTH * 65536;

/// A disk [`matrix`] can read from, whatever its `Hal`.
pub trait Disk {
    /// [`BlkDevice::read_pipelined`].
    fn read_pipelined(
        &mut self,
        first: u64,
        size: usize,
        requests: u64,
        depth: usize,
        bufs: &mut [u8],
        check: &mut CheckRead<'_>,
    ) -> Result<usize, BlkError>;
}

impl<H: Hal, T: Transport> Disk for BlkDevice<'_, H, T> {
    fn read_pipelined(
        &mut self,
        first: u64,
        size: usize,
        requests: u64,
        depth: usize,
        bufs: &mut [u8],
        check: &mut CheckRead<'_>,
    ) -> Result<usize, BlkError> {
        BlkDevice::read_pipelined(self, first, size, requests, depth, bufs, check)
    }
}

/// The I/O one policy runs: the disk, and a reader of the policy's costs.
pub type Workload<'w> =
    dyn FnMut(&mut dyn Disk, &mut dyn FnMut() -> Costs) -> Result<(), BlkError> + 'w;

/// Brings the disk at `function` up through a fresh `PciTransport` and
/// `H` (timed: [`TimedHal`]), runs `work` on it, and drops it (the device is
/// reset): the body of every [`Setup::with_disk`].
pub fn with_pci_disk<H: Hal>(
    function: &platform::virtio_pci::VirtioFunction,
    work: &mut Workload<'_>,
    costs: &mut dyn FnMut() -> Costs,
) -> Result<(), BlkError> {
    let pci = crate::pci::pci_transport::<TimedHal<H>>(function)?;
    let transport = core::cell::RefCell::new(
        crate::AccessPlatform::new(pci).map_err(|(e, _)| BlkError::BypassesIommu(e))?,
    );
    let mut dev: BlkDevice<'_, TimedHal<H>, _> = BlkDevice::new(&transport)?;
    work(&mut dev, costs)
}

/// What a backend example provides to [`matrix`].
pub trait Setup {
    /// The example's error.
    type Error: From<BlkError>;
    /// `smmuv3`, `vtd` or `virtio-iommu`.
    fn backend(&self) -> &'static str;
    /// The policies to compare; the first must be [`Policy::Baseline`].
    fn policies(&self) -> &[Policy];
    /// Puts the IOMMU in the state `policy` needs, brings the disk up
    /// through the matching `Hal`, runs `work` on it, and tears it down
    /// (device reset, its memory given back, the IOMMU as before).
    fn with_disk(&mut self, policy: Policy, work: &mut Workload<'_>) -> Result<(), Self::Error>;
}

#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    ns: u64,
    requests: u64,
    costs: Costs,
    peak: usize,
}

/// One cell of the profile pass, in [`platform::arch::cycles`] ticks.
#[derive(Debug, Clone, Copy, Default)]
struct Profile {
    total: u64,
    hal: HalTime,
    requests: u64,
}

const MAX_POLICIES: usize = 5;

/// The same-boot benchmark: [`ROUNDS`] rounds, each running every policy
/// (baseline first) over every [`CELLS`] cell, so all policies see the same
/// machine; prints one `blk-bench:` line per policy and cell with the median
/// over rounds of its throughput ratio to the same round's baseline, the
/// spread (max / min of the per-round ratios) and the exact costs per
/// request. Every sector read is checked.
pub fn matrix<S: Setup>(setup: &mut S, bufs: &mut [u8]) -> Result<(), S::Error> {
    let policies: heapless::Vec<Policy, MAX_POLICIES> = setup
        .policies()
        .iter()
        .copied()
        .take(MAX_POLICIES)
        .collect();
    if policies.first() != Some(&Policy::Baseline) {
        return Err(BlkError::Bench("the first policy must be the baseline").into());
    }
    let mut samples = [[[Sample::default(); ROUNDS]; CELLS.len()]; MAX_POLICIES];
    for round in 0..ROUNDS {
        for (p, &policy) in policies.iter().enumerate() {
            let row = &mut samples[p];
            let bufs = &mut *bufs;
            setup.with_disk(policy, &mut |disk, costs| {
                for (c, cell) in CELLS.iter().enumerate() {
                    let requests = cell_bytes(cell.size) / cell.size as u64;
                    let before = costs();
                    let start = now_ns();
                    let peak = disk.read_pipelined(
                        0,
                        cell.size,
                        requests,
                        cell.depth,
                        bufs,
                        &mut check_initial,
                    )?;
                    let ns = now_ns().saturating_sub(start).max(1);
                    row[c][round] = Sample {
                        ns,
                        requests,
                        costs: costs().since(before),
                        peak,
                    };
                }
                Ok(())
            })?;
        }
    }
    // The profile pass: every policy once more, with the time in the `Hal`
    // measured (not part of the ratios, which the timing would slow).
    let mut profile = [[Profile::default(); CELLS.len()]; MAX_POLICIES];
    for (p, &policy) in policies.iter().enumerate() {
        let row = &mut profile[p];
        let bufs = &mut *bufs;
        setup.with_disk(policy, &mut |disk, _| {
            for (c, cell) in CELLS.iter().enumerate() {
                let requests = cell_bytes(cell.size) / cell.size as u64;
                crate::timed::enable(true);
                let before = crate::timed::time();
                let start = platform::arch::cycles();
                let r = disk.read_pipelined(
                    0,
                    cell.size,
                    requests,
                    cell.depth,
                    bufs,
                    &mut check_initial,
                );
                let total = platform::arch::cycles().wrapping_sub(start);
                crate::timed::enable(false);
                r?;
                row[c] = Profile {
                    total,
                    hal: crate::timed::time().since(before),
                    requests,
                };
            }
            Ok(())
        })?;
    }
    let arch = if cfg!(target_arch = "aarch64") {
        "aarch64"
    } else {
        "x86_64"
    };
    for (p, &policy) in policies.iter().enumerate() {
        for (c, cell) in CELLS.iter().enumerate() {
            let mut ratios = [0f64; ROUNDS];
            for (r, ratio) in ratios.iter_mut().enumerate() {
                // Same bytes in both: the ratio of throughputs is the inverse
                // ratio of times.
                *ratio = samples[0][c][r].ns as f64 / samples[p][c][r].ns as f64;
            }
            let (median, spread) = median_spread(&mut ratios);
            let s = &samples[p][c];
            let reqs: u64 = s.iter().map(|x| x.requests).sum();
            let per = |f: fn(&Costs) -> u64| {
                s.iter().map(|x| f(&x.costs)).sum::<u64>() as f64 / reqs as f64
            };
            let mut times = [0f64; ROUNDS];
            for (r, t) in times.iter_mut().enumerate() {
                *t = (s[r].requests * cell.size as u64) as f64 * 1000.0 / s[r].ns as f64;
            }
            let (mbps, _) = median_spread(&mut times);
            platform::println!(
                "blk-bench: backend={} arch={arch} policy={} size={} depth={} rounds={ROUNDS} ratio={median:.2} spread={spread:.2} maps_per_req={:.2} flushes_per_req={:.2} bounce_bytes_per_req={:.0} inflight={} mbps={mbps:.1}",
                setup.backend(),
                policy.name(),
                cell.size,
                cell.depth,
                per(|c| c.maps),
                per(|c| c.flushes),
                per(|c| c.bounce_bytes),
                s.iter().map(|x| x.peak).max().unwrap_or(0),
            );
            let (pr, base) = (&profile[p][c], &profile[0][c]);
            let per_req = |t: u64| t as f64 / pr.requests.max(1) as f64;
            platform::println!(
                "blk-profile: backend={} arch={arch} policy={} size={} depth={} ticks_per_req={:.0} vs_baseline={:.2} share_ticks_per_req={:.0} unshare_ticks_per_req={:.0} hal_fraction={:.2}",
                setup.backend(),
                policy.name(),
                cell.size,
                cell.depth,
                per_req(pr.total),
                pr.total as f64 / base.total.max(1) as f64,
                per_req(pr.hal.share),
                per_req(pr.hal.unshare),
                (pr.hal.share + pr.hal.unshare) as f64 / pr.total.max(1) as f64,
            );
        }
    }
    Ok(())
}

/// Sorts `v` and returns its median and max / min.
fn median_spread(v: &mut [f64; ROUNDS]) -> (f64, f64) {
    v.sort_unstable_by(|a, b| a.partial_cmp(b).unwrap_or(core::cmp::Ordering::Equal));
    let spread = if v[0] > 0.0 {
        v[ROUNDS - 1] / v[0]
    } else {
        0.0
    };
    (v[ROUNDS / 2], spread)
}

/// Every sector of the initial pattern starts with its own number.
fn check_initial(first: u64, buf: &[u8]) -> Result<(), BlkError> {
    for (k, chunk) in buf.chunks_exact(SECTOR).enumerate() {
        let s = first + k as u64;
        let want = s.to_le_bytes();
        if let Some(offset) = (0..8).find(|&j| chunk[j] != want[j]) {
            return Err(BlkError::Data(Mismatch {
                pattern: Pattern::Initial,
                sector: s,
                offset,
                expected: want[offset],
                found: chunk[offset],
            }));
        }
    }
    Ok(())
}

/// The bounce pool of the examples' pool table: 128 slots of 4 KiB, so that
/// 16 requests in flight (four buffers each) never run out; a 4 KiB request
/// is copied whole.
pub const POOL: iova_virtio_hal::PoolConfig = iova_virtio_hal::PoolConfig {
    slots: 128,
    ..iova_virtio_hal::PoolConfig::DEFAULT
};

/// The bounce pool of the examples' deferred table: as [`POOL`], but only
/// buffers of less than a page are copied. Whole pages are mapped in place,
/// and under the deferred policy their mappings are kept and reused while
/// the driver reuses the buffer, which costs less than copying a page.
pub const DEFERRED_POOL: iova_virtio_hal::PoolConfig = iova_virtio_hal::PoolConfig {
    threshold: 2048,
    ..POOL
};

/// `config` for a table whose granule is `granule` (its
/// [`DmaShares::granule`](iova_virtio_hal::DmaShares::granule)): slots of
/// at least a granule (a slot must hold a bounced partial granule), and
/// fewer of them, so the pool keeps its size (512 KiB for [`POOL`]: 128
/// slots at 4 KiB, 32 at 16 KiB, 8 at 64 KiB). The threshold stays: a
/// 4 KiB request is still copied whole.
pub const fn pool_at(
    config: iova_virtio_hal::PoolConfig,
    granule: usize,
) -> iova_virtio_hal::PoolConfig {
    if config.slot_size >= granule {
        return config;
    }
    let bytes = config.slots * config.slot_size;
    let slots = bytes / granule;
    iova_virtio_hal::PoolConfig {
        slots: if slots == 0 { 1 } else { slots },
        slot_size: granule,
        ..config
    }
}

/// The examples' flush queue for [`Policy::Deferred`]: Linux's DMA-FQ
/// figures (256 unlinks, 10 ms) and at most 4 MiB waiting, its age read in
/// the platform clock's own ticks (no conversion on every read); `slots`
/// holds the waiting IOVA ranges. Without a clock the age never runs out.
pub fn flush_queue(
    slots: &'static mut [iova_core::flush_queue::DeferredSlot],
) -> iova_core::FlushQueue<'static> {
    static CLOCK: fn() -> u64 = || platform::time::clock().map_or(0, |(ticks, _)| ticks);
    // `linux_like` takes ten of these: no overflow.
    let ticks_per_ms = platform::time::clock().map_or(u64::MAX / 10, |(_, hz)| hz / 1000);
    iova_core::FlushQueue::new(
        iova_core::DeferLimits::linux_like(ticks_per_ms),
        &CLOCK,
        slots,
    )
}

/// One share table per `iova-virtio-hal` policy on the same domain, and
/// which of them the `Hal` uses now: a `HalContext` returns
/// [`current`](Self::current), the benchmark [`select`](Self::select)s
/// between runs (never while a device is up).
pub struct PolicyTables<T: 'static> {
    strict: &'static T,
    pool: &'static T,
    deferred: &'static T,
    current: core::sync::atomic::AtomicUsize,
}

impl<T> PolicyTables<T> {
    /// The tables for [`Policy::Strict`], [`Policy::Pool`] and
    /// [`Policy::Deferred`]; strict is current.
    pub const fn new(strict: &'static T, pool: &'static T, deferred: &'static T) -> Self {
        Self {
            strict,
            pool,
            deferred,
            current: core::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Makes `policy`'s table current (strict for the others) and returns it.
    pub fn select(&self, policy: Policy) -> &'static T {
        let i = match policy {
            Policy::Pool => 1,
            Policy::Deferred => 2,
            _ => 0,
        };
        // A plain store: single CPU, and no read-modify-write (which needs
        // exclusive accesses that do not work on aarch64 with the MMU off).
        self.current.store(i, core::sync::atomic::Ordering::Relaxed);
        self.current()
    }

    /// The table the `Hal` uses now.
    pub fn current(&self) -> &'static T {
        match self.current.load(core::sync::atomic::Ordering::Relaxed) {
            1 => self.pool,
            2 => self.deferred,
            _ => self.strict,
        }
    }

    /// The strict table.
    pub fn strict(&self) -> &'static T {
        self.strict
    }
}

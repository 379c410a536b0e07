//! The stale-buffer probe: is a buffer the driver has unshared still
//! reachable by the device at the address it had?
//!
//! 1. [`record`]: read into buffer B (the last two pages of the scratch area)
//!    with [`TrapHal`] watching B: the device address A that `H::share`
//!    returned is recorded, and the driver unshares B as usual.
//! 2. The caller may reserve A in its IOVA allocator, so that nothing is
//!    mapped there again.
//! 3. [`stale_read`]: B is filled with a canary, and a read request is
//!    issued whose data buffer is B but whose device address is A (the
//!    trap substitutes it for `H::share`). The wait is bounded; then it
//!    reports whether the device completed it and whether B changed.
//!
//! With an IOMMU that did its job A is unmapped: the read must not complete
//! successfully and the canary must be intact. Checking the IOMMU's fault
//! record is the caller's job. Without an IOMMU A is B's physical address,
//! the read lands in B and the canary changes: that proves the probe sees
//! reachability when there is some.
//!
//! Why B is 8 KiB: QEMU's `address_space_map` gives a DMA whose address
//! translates to nothing (an IOMMU fault, or no RAM there) a bounce buffer
//! of at most 4 KiB per address space instead of failing, and drops the
//! data when it is unmapped. A 4 KiB stale read would therefore "complete"
//! with status OK and nothing written. With 8 KiB the second 4 KiB cannot
//! be mapped, virtio-blk calls `virtio_error` and the device flags
//! DEVICE_NEEDS_RESET ([`ProbeOutcome::NeedsReset`]), which ends the wait
//! early; the device is then reset and unusable. `blk-noiommu` shows this
//! with a physical address where nothing is.
//!
//! After a read that did not complete, the request's header and status
//! buffers are never unshared (the device is reset instead).

use iova_core::IommuDomain;
use iova_virtio_hal::DmaShares;
use virtio_drivers::transport::{DeviceStatus, Transport};
use virtio_drivers::{Hal, PhysAddr};

use crate::pattern::{Pattern, SECTOR};
use crate::{BlkDevice, BlkError, Context, TrapHal, scratch_areas};

/// First sector [`record`] reads into B (initial pattern, checked).
pub const RECORD_SECTOR: u64 = 0;
/// First sector [`stale_read`] asks for.
pub const STALE_SECTOR: u64 = 16;
/// Size of B: two pages (see the module docs).
pub const PROBE_BYTES: usize = 8192;
/// What B is filled with before the stale read.
pub const CANARY: u8 = 0xC3;

/// How the stale read ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The device completed it with status OK.
    Completed,
    /// The device completed it with an error status.
    DeviceError,
    /// The device flagged DEVICE_NEEDS_RESET (QEMU: a DMA failed to map).
    NeedsReset,
    /// No completion before the deadline.
    TimedOut,
}

/// What [`stale_read`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleProbe {
    /// The stale device address used.
    pub stale_addr: PhysAddr,
    /// How the request ended.
    pub outcome: ProbeOutcome,
    /// The first byte of B that no longer holds the canary.
    pub first_changed: Option<usize>,
    /// B holds exactly the sectors asked for.
    pub got_sector_data: bool,
    /// The device status when the request ended.
    pub status: DeviceStatus,
}

impl StaleProbe {
    /// Whether B's canary is intact.
    pub fn canary_intact(&self) -> bool {
        self.first_changed.is_none()
    }

    /// The device wrote B through the stale address.
    pub fn device_reached_buffer(&self) -> bool {
        !self.canary_intact()
    }

    /// What an IOMMU must achieve: no successful completion, canary intact.
    pub fn blocked(&self) -> bool {
        self.outcome != ProbeOutcome::Completed && self.canary_intact()
    }
}

/// Step 1: reads sectors 0..16 into B (checked), watched by the trap;
/// returns the device address `H::share` gave B. B is unshared again when
/// this returns.
pub fn record<H: Hal, T: Transport>(
    dev: &mut BlkDevice<'_, TrapHal<H>, T>,
    scratch: &mut [u8],
    ctx: &mut Context<'_>,
) -> Result<PhysAddr, BlkError> {
    let (_, _, page) = scratch_areas(scratch)?;
    TrapHal::<H>::watch(page.as_ptr());
    let read = dev.read(RECORD_SECTOR, page);
    let recorded = TrapHal::<H>::recorded();
    TrapHal::<H>::disarm();
    read?;
    Pattern::Initial.check(RECORD_SECTOR, page)?;
    let addr = recorded.ok_or(BlkError::TrapMissed)?;
    platform::println!(
        "{}: stale probe: buffer B at {:#x} shared at device address {addr:#x} for a read of sectors {}..{} (checked), then unshared",
        ctx.name,
        page.as_ptr() as usize,
        RECORD_SECTOR,
        RECORD_SECTOR + (PROBE_BYTES / SECTOR) as u64
    );
    Ok(addr)
}

/// Step 3: fills B with [`CANARY`] and reads sectors 16..32 with B's device
/// address replaced by `stale`; reports what happened. Prints it and a
/// `demo: stale` line; the verdict is the caller's.
///
/// # Safety
///
/// The device will DMA to `stale`: it must be an address at which it can
/// reach nothing but B (an unmapped, reserved IOVA; without an IOMMU, B's
/// physical address from [`record`]).
pub unsafe fn stale_read<H: Hal, T: Transport>(
    dev: &mut BlkDevice<'_, TrapHal<H>, T>,
    scratch: &mut [u8],
    ctx: &mut Context<'_>,
    stale: PhysAddr,
) -> Result<StaleProbe, BlkError> {
    let (_, _, page) = scratch_areas(scratch)?;
    page.fill(CANARY);
    // SAFETY: the caller vouches for `stale`.
    unsafe { TrapHal::<H>::arm(page.as_ptr(), stale) };
    let result = dev.read(STALE_SECTOR, page);
    let substituted = TrapHal::<H>::substituted();
    TrapHal::<H>::disarm();
    if !substituted {
        return Err(BlkError::TrapMissed);
    }
    let (outcome, status) = match result {
        Ok(()) => (ProbeOutcome::Completed, dev.status()),
        Err(BlkError::Driver(virtio_drivers::Error::IoError)) => {
            (ProbeOutcome::DeviceError, dev.status())
        }
        Err(BlkError::NeedsReset { status, .. }) => (ProbeOutcome::NeedsReset, status),
        Err(BlkError::Timeout { status, .. }) => (ProbeOutcome::TimedOut, status),
        Err(e) => return Err(e),
    };
    platform::arch::dma_barrier();
    let first_changed = page.iter().position(|&b| b != CANARY);
    let report = StaleProbe {
        stale_addr: stale,
        outcome,
        first_changed,
        got_sector_data: Pattern::Initial.check(STALE_SECTOR, page).is_ok(),
        status,
    };
    let canary = match first_changed {
        None => "B's canary intact",
        Some(_) if report.got_sector_data => "B overwritten with the sectors' data",
        Some(_) => "B partly overwritten",
    };
    platform::println!(
        "{}: stale probe: read of sectors {}..{} into B given the stale address {stale:#x}: {outcome:?}, {canary}; device status {status:?}{}",
        ctx.name,
        STALE_SECTOR,
        STALE_SECTOR + (PROBE_BYTES / SECTOR) as u64,
        if dev.is_dead() { ", device reset" } else { "" }
    );
    platform::demo!(
        "stale",
        "{} KiB read into unshared buffer B given device address {stale:#x}: {}, {canary}",
        PROBE_BYTES >> 10,
        match outcome {
            ProbeOutcome::Completed => "completed",
            ProbeOutcome::DeviceError => "completed with an error status",
            ProbeOutcome::NeedsReset => "device flagged NEEDS_RESET",
            ProbeOutcome::TimedOut => "no completion",
        }
    );
    Ok(report)
}

/// Step 2 under deferred invalidation, between [`record`] and the caller's
/// reservation of A: B (whole granules at 4 KiB, mapped in place) must still be mapped,
/// either kept by `shares` for its next share (parked) or its unlink waiting
/// in the flush queue, so that its IOVA is not handed out again and the
/// device may still reach B: the stated window. Then `shares` evicts what it
/// keeps and flushes the queue, after which A must be as dead as under the
/// strict policy, which the stale read then checks. At a granule larger
/// than B (or one B does not start on) B is bounced instead, which no
/// policy defers: then nothing of it may be kept or waiting.
pub fn settle_deferred<D: IommuDomain + ?Sized, const N: usize>(
    ctx: &Context<'_>,
    shares: &DmaShares<'_, D, N>,
    a: PhysAddr,
) -> Result<(), BlkError> {
    let queue = shares
        .mapper()
        .flush_queue()
        .ok_or(BlkError::Probe("the deferred table has no flush queue", a))?;
    let (parked, waiting, held) = (shares.parked(), queue.pending(), queue.pending_iovas());
    let g = shares.granule() as u64;
    if !a.is_multiple_of(g) || !(PROBE_BYTES as u64).is_multiple_of(g) {
        // B is not whole granules (the granule is larger than B, or B does
        // not start on one): its partial granules are bounced, a bounced
        // share never parks, and its unshare flushes the queue before the
        // bounce memory goes back. So nothing of B may wait: it is torn
        // down as under the strict policy.
        if parked != 0 || waiting != 0 {
            return Err(BlkError::Probe(
                "B was bounced, yet mappings are kept or unlinks wait after its unshare",
                a,
            ));
        }
        platform::println!(
            "{}: deferred probe: B ({} KiB at device address {a:#x}) is not whole granules of {g:#x} bytes: bounced, never kept; its unshare flushed the queue (0 kept, 0 waiting)",
            ctx.name,
            PROBE_BYTES >> 10
        );
        return Ok(());
    }
    if parked == 0 && (waiting == 0 || held == 0) {
        return Err(BlkError::Probe(
            "B's mapping was neither kept nor its unlink queued",
            a,
        ));
    }
    platform::println!(
        "{}: deferred probe: after B's unshare {parked} mapping(s) are kept for reuse and {waiting} unlink(s) and {held} IOVA range(s) wait in the flush queue (B's old IOVA is not handed out again); evicting and flushing",
        ctx.name
    );
    shares.flush_deferred().map_err(BlkError::Share)?;
    if shares.parked() != 0 || queue.pending() != 0 {
        return Err(BlkError::Probe("the flush left mappings behind", a));
    }
    Ok(())
}

/// The stale-buffer probe under the bounce pool: a 4 KiB buffer B' (the
/// first page of B) is small enough to be copied into a pool slot, so the
/// device never gets B' itself. Reads into B' once (the device address A is
/// recorded and must lie in `pool`), then reads again with A substituted
/// for the share: the device writes the pool slot, never B', whose canary
/// must be intact. Returns A.
///
/// # Safety
///
/// `pool` is the bounce pool of the table behind `H`: memory the device may
/// always write, which nothing of the program relies on between shares.
pub unsafe fn pool_read<H: Hal, T: Transport>(
    dev: &mut BlkDevice<'_, TrapHal<H>, T>,
    scratch: &mut [u8],
    ctx: &mut Context<'_>,
    pool: core::ops::Range<u64>,
) -> Result<PhysAddr, BlkError> {
    let (_, _, page) = scratch_areas(scratch)?;
    let small = &mut page[..PROBE_BYTES / 2];
    TrapHal::<H>::watch(small.as_ptr());
    let read = dev.read(RECORD_SECTOR, small);
    let recorded = TrapHal::<H>::recorded();
    TrapHal::<H>::disarm();
    read?;
    Pattern::Initial.check(RECORD_SECTOR, small)?;
    let a = recorded.ok_or(BlkError::TrapMissed)?;
    if !pool.contains(&a) {
        return Err(BlkError::Probe(
            "a 4 KiB buffer was not copied into the pool",
            a,
        ));
    }
    small.fill(CANARY);
    // SAFETY: `a` is a slot of the pool (checked above), which the caller
    // vouches the device may write.
    unsafe { TrapHal::<H>::arm(small.as_ptr(), a) };
    let result = dev.read(STALE_SECTOR, small);
    let substituted = TrapHal::<H>::substituted();
    TrapHal::<H>::disarm();
    if !substituted {
        return Err(BlkError::TrapMissed);
    }
    platform::arch::dma_barrier();
    if small.iter().any(|&b| b != CANARY) {
        return Err(BlkError::Probe(
            "the device reached the unshared buffer through its pool address",
            a,
        ));
    }
    platform::println!(
        "{}: pool probe: 4 KiB buffer B' copied into pool slot {a:#x} (pool {:#x}..{:#x}); a read given that address again after the unshare {}: it went to the pool, B' canary intact",
        ctx.name,
        pool.start,
        pool.end,
        if result.is_ok() {
            "completed"
        } else {
            "failed"
        }
    );
    result.map(|()| a)
}

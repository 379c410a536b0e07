//! [`BlkDevice`]: virtio-drivers' `VirtIOBlk` with bounded waits.

use core::cell::RefCell;
use core::hint::spin_loop;

use platform::time::Deadline;
use virtio_drivers::Hal;
use virtio_drivers::device::blk::{BlkReq, BlkResp, VirtIOBlk};
use virtio_drivers::transport::{DeviceStatus, Transport};

use crate::pattern::SECTOR;
use crate::shared::SharedTransport;
use crate::{BlkError, Op};

/// Default time a request may take before the device is given up on.
pub const DEFAULT_TIMEOUT_MS: u64 = 2000;
/// The device status is read once per this many polls of the used ring
/// (it is an MMIO read; the used ring is memory).
const STATUS_EVERY: u32 = 64;

/// Bytes and requests moved so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Requests that completed successfully.
    pub requests: u64,
    /// Bytes read by completed requests.
    pub bytes_read: u64,
    /// Bytes written by completed requests.
    pub bytes_written: u64,
}

/// A virtio-blk device driven by virtio-drivers' `VirtIOBlk`, one request
/// at a time, each waited for with a deadline (the `*_nb` API + polling the
/// used ring; no interrupts).
///
/// The transport stays in the caller's `RefCell` so that the device status
/// can be read and the device reset from here (see `shared`). On a
/// timeout, an unexpected completion or DEVICE_NEEDS_RESET the device is
/// reset at once (status 0: it stops all DMA), so no request outlives the
/// buffers it was given; after that every request returns
/// [`BlkError::Dead`]. Dropping a `BlkDevice` also resets the device
/// before the driver frees its queue memory.
pub struct BlkDevice<'t, H: Hal, T: Transport> {
    blk: VirtIOBlk<H, SharedTransport<'t, T>>,
    transport: &'t RefCell<T>,
    timeout_ms: u64,
    dead: bool,
    stats: IoStats,
}

impl<'t, H: Hal, T: Transport> BlkDevice<'t, H, T> {
    /// Initialises the device (reset, feature negotiation, queue 0,
    /// DRIVER_OK) and checks that it accepted the driver.
    pub fn new(transport: &'t RefCell<T>) -> Result<Self, BlkError> {
        let blk = VirtIOBlk::<H, _>::new(SharedTransport(transport))?;
        let mut dev = Self {
            blk,
            transport,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            dead: false,
            stats: IoStats::default(),
        };
        let status = dev.status();
        let want = DeviceStatus::FEATURES_OK | DeviceStatus::DRIVER_OK;
        let bad = DeviceStatus::FAILED | DeviceStatus::DEVICE_NEEDS_RESET;
        if !status.contains(want) || status.intersects(bad) {
            dev.reset();
            return Err(BlkError::Refused(status));
        }
        Ok(dev)
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.blk.capacity()
    }

    /// The device status register.
    pub fn status(&self) -> DeviceStatus {
        self.transport.borrow().get_status()
    }

    /// Whether the device was reset after a failure.
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// Counts so far.
    pub fn stats(&self) -> IoStats {
        self.stats
    }

    /// Sets how long one request may take.
    pub fn set_timeout_ms(&mut self, ms: u64) {
        self.timeout_ms = ms;
    }

    /// Resets the device (status 0): it stops processing its queue and all
    /// DMA. Further requests return [`BlkError::Dead`].
    pub fn reset(&mut self) {
        self.transport
            .borrow_mut()
            .set_status(DeviceStatus::empty());
        self.dead = true;
    }

    fn usable(&self, len: usize) -> Result<(), BlkError> {
        if self.dead {
            return Err(BlkError::Dead);
        }
        if len == 0 || !len.is_multiple_of(SECTOR) {
            return Err(BlkError::BadLength(len));
        }
        Ok(())
    }

    /// Waits for `token`; on any failure resets the device.
    fn wait(&mut self, token: u16, op: Op, sector: u64) -> Result<(), BlkError> {
        let mut deadline = Deadline::after_ms(self.timeout_ms);
        let mut polls = 0u32;
        loop {
            let expired = deadline.expired();
            match self.blk.peek_used() {
                Some(t) if t == token => return Ok(()),
                Some(found) => {
                    self.reset();
                    return Err(BlkError::WrongToken {
                        expected: token,
                        found,
                    });
                }
                None => {}
            }
            polls = polls.wrapping_add(1);
            if expired || polls.is_multiple_of(STATUS_EVERY) {
                let status = self.status();
                if status.contains(DeviceStatus::DEVICE_NEEDS_RESET) {
                    self.reset();
                    return Err(BlkError::NeedsReset { op, sector, status });
                }
                if expired {
                    self.reset();
                    return Err(BlkError::Timeout { op, sector, status });
                }
            }
            spin_loop();
        }
    }

    /// Reads whole sectors from `sector` into `buf`, waiting with a deadline.
    pub fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), BlkError> {
        self.usable(buf.len())?;
        let id = usize::try_from(sector).map_err(|_| BlkError::BadLength(buf.len()))?;
        let mut req = BlkReq::default();
        let mut resp = BlkResp::default();
        platform::arch::dma_barrier();
        // SAFETY: `req`, `buf` and `resp` are not touched until the request
        // is completed below, or the device is reset (it then no longer
        // accesses them) before this function returns.
        let token = unsafe { self.blk.read_blocks_nb(id, &mut req, buf, &mut resp) }?;
        self.wait(token, Op::Read, sector)?;
        // SAFETY: the same buffers as passed to `read_blocks_nb` for `token`.
        let done = unsafe { self.blk.complete_read_blocks(token, &req, buf, &mut resp) };
        platform::arch::dma_barrier();
        done?;
        self.stats.requests += 1;
        self.stats.bytes_read += buf.len() as u64;
        Ok(())
    }

    /// Writes whole sectors from `buf` at `sector`, waiting with a deadline.
    pub fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), BlkError> {
        self.usable(buf.len())?;
        let id = usize::try_from(sector).map_err(|_| BlkError::BadLength(buf.len()))?;
        let mut req = BlkReq::default();
        let mut resp = BlkResp::default();
        platform::arch::dma_barrier();
        // SAFETY: as in `read`.
        let token = unsafe { self.blk.write_blocks_nb(id, &mut req, buf, &mut resp) }?;
        self.wait(token, Op::Write, sector)?;
        // SAFETY: the same buffers as passed to `write_blocks_nb` for `token`.
        let done = unsafe { self.blk.complete_write_blocks(token, &req, buf, &mut resp) };
        done?;
        self.stats.requests += 1;
        self.stats.bytes_written += buf.len() as u64;
        Ok(())
    }
}

impl<H: Hal, T: Transport> Drop for BlkDevice<'_, H, T> {
    fn drop(&mut self) {
        // Stop the device before `VirtIOBlk` frees (and, behind an IOMMU,
        // unmaps) its queue.
        if !self.dead {
            self.reset();
        }
    }
}

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

/// The most requests [`BlkDevice::read_pipelined`] keeps in flight:
/// virtio-drivers' queue has 16 entries (one per request with indirect
/// descriptors).
pub const MAX_DEPTH: usize = 16;

/// Checks a completed buffer, given its first sector.
pub type CheckRead<'c> = dyn FnMut(u64, &[u8]) -> Result<(), BlkError> + 'c;

/// One request in flight: its buffer and the driver's header and status.
struct Slot<'b> {
    buf: &'b mut [u8],
    req: BlkReq,
    resp: BlkResp,
    token: Option<u16>,
    sector: u64,
}

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
        let found = self.wait_any(op, sector)?;
        if found != token {
            self.reset();
            return Err(BlkError::WrongToken {
                expected: token,
                found,
            });
        }
        Ok(())
    }

    /// Waits for the next completed request and returns its token; on a
    /// timeout or DEVICE_NEEDS_RESET resets the device.
    fn wait_any(&mut self, op: Op, sector: u64) -> Result<u16, BlkError> {
        let mut deadline = Deadline::after_ms(self.timeout_ms);
        let mut polls = 0u32;
        loop {
            let expired = deadline.expired();
            if let Some(t) = self.blk.peek_used() {
                return Ok(t);
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

    /// Reads `requests` requests of `size` bytes, sector after sector from
    /// `first`, keeping up to `depth` of them in flight (each in its own
    /// `size` bytes of `bufs`), and hands each completed buffer to `check`
    /// with its first sector. Returns the most requests that were in flight
    /// at once: fewer than `depth` when the queue holds fewer (without
    /// indirect descriptors each request takes three of its entries).
    pub fn read_pipelined(
        &mut self,
        first: u64,
        size: usize,
        requests: u64,
        depth: usize,
        bufs: &mut [u8],
        check: &mut CheckRead<'_>,
    ) -> Result<usize, BlkError> {
        self.usable(size)?;
        let depth = depth.clamp(1, MAX_DEPTH);
        if bufs.len() < depth * size {
            return Err(BlkError::Scratch(bufs.as_ptr() as usize, bufs.len()));
        }
        let per = (size / SECTOR) as u64;
        let mut slots: heapless::Vec<Slot<'_>, MAX_DEPTH> = heapless::Vec::new();
        for buf in bufs.chunks_exact_mut(size).take(depth) {
            let _ = slots.push(Slot {
                buf,
                req: BlkReq::default(),
                resp: BlkResp::default(),
                token: None,
                sector: 0,
            });
        }
        let (mut next, mut issued, mut done, mut peak) = (first, 0u64, 0u64, 0usize);
        let mut in_flight = 0usize;
        platform::arch::dma_barrier();
        while done < requests {
            // Fill every free slot the queue has room for.
            for slot in slots.iter_mut().filter(|s| s.token.is_none()) {
                if issued == requests {
                    break;
                }
                let id = usize::try_from(next).map_err(|_| BlkError::BadLength(size))?;
                // SAFETY: the slot's request, buffer and response are not
                // touched until its token completes below, or the device is
                // reset (it then no longer accesses them) before we return.
                let r = unsafe {
                    self.blk
                        .read_blocks_nb(id, &mut slot.req, slot.buf, &mut slot.resp)
                };
                match r {
                    Ok(token) => {
                        slot.token = Some(token);
                        slot.sector = next;
                        next += per;
                        issued += 1;
                        in_flight += 1;
                    }
                    Err(virtio_drivers::Error::QueueFull) if in_flight > 0 => break,
                    Err(e) => {
                        self.reset();
                        return Err(e.into());
                    }
                }
            }
            peak = peak.max(in_flight);
            let token = self.wait_any(Op::Read, next)?;
            let Some(slot) = slots.iter_mut().find(|s| s.token == Some(token)) else {
                self.reset();
                return Err(BlkError::WrongToken {
                    expected: slots.iter().find_map(|s| s.token).unwrap_or(0),
                    found: token,
                });
            };
            // SAFETY: the buffers passed to `read_blocks_nb` for `token`.
            let r = unsafe {
                self.blk
                    .complete_read_blocks(token, &slot.req, slot.buf, &mut slot.resp)
            };
            platform::arch::dma_barrier();
            slot.token = None;
            in_flight -= 1;
            if let Err(e) = r {
                self.reset();
                return Err(e.into());
            }
            check(slot.sector, slot.buf)?;
            done += 1;
            self.stats.requests += 1;
            self.stats.bytes_read += size as u64;
        }
        Ok(peak)
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

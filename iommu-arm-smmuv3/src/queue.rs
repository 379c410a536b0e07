//! The command and event queues: circular buffers in memory whose producer
//! and consumer indices carry a wrap bit above the index bits.

use iova_core::hw::{Expired, WaitBudget};
use iova_core::{FrameAllocator, PhysAddr};

use crate::barrier;
use crate::cache::SmmuCache;
use crate::cmd::{Command, CommandCounters, CommandErrorKind};
use crate::error::{CommandError, SmmuError, Wait};
use crate::event::Event;
use crate::regs::{Mmio, MmioError, gerror, off, queue};

/// Memory the SMMU reads or writes, seen by the CPU as doublewords.
pub(crate) struct DmaBuf {
    pub(crate) pa: PhysAddr,
    va: *mut u64,
    pub(crate) bytes: usize,
}

// SAFETY: the buffer is plain memory owned by its holder; every holder keeps
// it behind a lock (or uses it single-threaded during bring-up).
unsafe impl Send for DmaBuf {}

impl DmaBuf {
    /// `bytes` (a power of two) of zeroed memory aligned to its size, at
    /// least 64 bytes; cleaned (the zeroes made visible) for a non-coherent
    /// SMMU.
    pub(crate) fn alloc<A: FrameAllocator>(
        frames: &A,
        bytes: usize,
        cache: &SmmuCache,
    ) -> Result<Self, SmmuError> {
        let bytes = bytes.max(64);
        if !bytes.is_power_of_two() {
            return Err(SmmuError::NoMemory);
        }
        let pa = frames.alloc_zeroed(bytes).ok_or(SmmuError::NoMemory)?;
        // The SMMU registers take addresses of up to 52 bits; the frame
        // allocator's contract gives size alignment, but check both anyway.
        if pa.0 & (bytes as u64 - 1) != 0 || pa.0 >> 52 != 0 {
            // SAFETY: just allocated with this size, never used.
            unsafe { frames.free(pa, bytes) };
            return Err(SmmuError::NoMemory);
        }
        cache.clean_now(pa, bytes as u64);
        Ok(Self {
            pa,
            va: frames.phys_to_virt(pa).cast(),
            bytes,
        })
    }

    /// Cleans doublewords `[first, first + n)` for the SMMU.
    pub(crate) fn clean(&self, cache: &SmmuCache, first: usize, n: usize) {
        cache.clean_now(PhysAddr(self.pa.0 + 8 * first as u64), 8 * n as u64);
    }

    /// A view of memory allocated earlier with [`DmaBuf::alloc`] (same size).
    pub(crate) fn view<A: FrameAllocator>(frames: &A, pa: PhysAddr, bytes: usize) -> Self {
        Self {
            pa,
            va: frames.phys_to_virt(pa).cast(),
            bytes,
        }
    }

    /// Returns the memory.
    ///
    /// # Safety
    ///
    /// The SMMU no longer accesses the buffer, and `frames` is the allocator it came from.
    pub(crate) unsafe fn free<A: FrameAllocator>(self, frames: &A) {
        // SAFETY: the caller's promise; `pa`/`bytes` are what `alloc` got.
        unsafe { frames.free(self.pa, self.bytes) }
    }

    pub(crate) fn words(&self) -> usize {
        self.bytes / 8
    }

    pub(crate) fn read(&self, i: usize) -> u64 {
        assert!(i < self.words());
        // SAFETY: in bounds (checked), aligned, memory owned by this buffer.
        unsafe { self.va.add(i).read_volatile() }
    }

    pub(crate) fn write(&self, i: usize, v: u64) {
        assert!(i < self.words());
        // SAFETY: as in `read`.
        unsafe { self.va.add(i).write_volatile(v) }
    }
}

/// Index arithmetic of a queue of `1 << log2` entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueIndex {
    log2: u32,
}

impl QueueIndex {
    /// A queue of `1 << log2` entries (log2 <= 19).
    pub const fn new(log2: u32) -> Self {
        Self { log2 }
    }
    /// Entries.
    pub const fn size(self) -> u32 {
        1 << self.log2
    }
    /// The index bits and the wrap bit.
    pub const fn mask(self) -> u32 {
        (2 << self.log2) - 1
    }
    /// The slot an index points at.
    pub const fn slot(self, v: u32) -> u32 {
        v & (self.size() - 1)
    }
    /// The next index (wrapping the slot and toggling the wrap bit).
    pub const fn next(self, v: u32) -> u32 {
        (v + 1) & self.mask()
    }
    /// Entries between consumer and producer.
    pub const fn used(self, prod: u32, cons: u32) -> u32 {
        prod.wrapping_sub(cons) & self.mask()
    }
    /// No entries.
    pub const fn is_empty(self, prod: u32, cons: u32) -> bool {
        (prod & self.mask()) == (cons & self.mask())
    }
    /// All slots used: same slot, different wrap bit.
    pub const fn is_full(self, prod: u32, cons: u32) -> bool {
        self.used(prod, cons) == self.size()
    }
}

/// Polls `done` until it holds, within `budget`. A refused register access
/// ends the wait at once: polling it again would be refused again.
pub(crate) fn wait(
    budget: &WaitBudget,
    what: Wait,
    mut done: impl FnMut() -> Result<bool, MmioError>,
) -> Result<(), SmmuError> {
    let r = budget.until(|| match done() {
        Ok(true) => Some(Ok(())),
        Ok(false) => None,
        Err(e) => Some(Err(e)),
    });
    match r {
        Ok(r) => r.map_err(SmmuError::Register),
        Err(Expired) => Err(SmmuError::Timeout(what)),
    }
}

/// What the command queue reaches the hardware with: the registers, and the
/// counters it counts commands in (outside the queue's lock, so reading them
/// never waits for a submission).
pub(crate) struct Hw<'a, M> {
    pub(crate) mmio: &'a M,
    pub(crate) counts: &'a CommandCounters,
}

impl<M> Clone for Hw<'_, M> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<M> Copy for Hw<'_, M> {}

/// The command queue: software produces, the SMMU consumes.
pub(crate) struct CmdQueue {
    pub(crate) mem: DmaBuf,
    pub(crate) idx: QueueIndex,
    /// Our producer index (wrap bit included).
    prod: u32,
    /// Last consumer index read.
    cons: u32,
    /// Errors of the current batch: the first one is reported.
    batch_error: Option<CommandError>,
    /// The most recent error of all time.
    pub(crate) last_error: Option<CommandError>,
    pub(crate) wait: WaitBudget,
    cache: SmmuCache,
}

impl CmdQueue {
    pub(crate) fn new(mem: DmaBuf, log2: u32, wait: WaitBudget, cache: SmmuCache) -> Self {
        Self {
            mem,
            idx: QueueIndex::new(log2),
            prod: 0,
            cons: 0,
            batch_error: None,
            last_error: None,
            wait,
            cache,
        }
    }

    /// CMDQ_BASE value.
    pub(crate) fn base_reg(&self) -> u64 {
        (self.mem.pa.0 & queue::BASE_ADDR_MASK) | queue::BASE_ALLOC | u64::from(self.idx.log2)
    }

    fn write_entry(&self, at: u32, c: &Command) {
        let s = self.idx.slot(at) as usize * 2;
        self.mem.write(s, c.0[0]);
        self.mem.write(s + 1, c.0[1]);
        if !iova_core::CacheMaintenance::is_coherent(&self.cache) {
            // Cleaned now, waited for once when the batch is published.
            iova_core::CacheMaintenance::clean(
                &self.cache,
                PhysAddr(self.mem.pa.0 + 8 * s as u64),
                16,
            );
        }
    }

    fn read_entry(&self, at: u32) -> [u64; 2] {
        let s = self.idx.slot(at) as usize * 2;
        [self.mem.read(s), self.mem.read(s + 1)]
    }

    fn publish(&self, mmio: &impl Mmio) -> Result<(), MmioError> {
        if !iova_core::CacheMaintenance::is_coherent(&self.cache) {
            iova_core::CacheMaintenance::complete(&self.cache);
        }
        barrier::publish();
        mmio.write32(off::CMDQ_PROD, self.prod)
    }

    /// Reads CMDQ_CONS and deals with a pending command error: the refused
    /// command is recorded, overwritten with a CMD_SYNC, and the error
    /// acknowledged so the SMMU resumes at it.
    ///
    /// GERROR is read only when the SMMU has not consumed up to `target`:
    /// a refused command stops consumption, so an error can only be pending
    /// then. (One register read per poll in the common case.)
    fn refresh(&mut self, hw: Hw<'_, impl Mmio>, target: u32) -> Result<(), MmioError> {
        let mmio = hw.mmio;
        let cons = mmio.read32(off::CMDQ_CONS)?;
        self.cons = cons & self.idx.mask();
        if self.cons == target {
            return Ok(());
        }
        let pending = mmio.read32(off::GERROR)? ^ mmio.read32(off::GERRORN)?;
        if pending & gerror::CMDQ_ERR == 0 {
            return Ok(());
        }
        let raw = self.read_entry(self.cons);
        let err = CommandError {
            index: self.cons,
            opcode: raw[0] as u8,
            raw,
            kind: CommandErrorKind::from_code(((cons >> queue::CONS_ERR_SHIFT) & 0x7f) as u8),
        };
        iova_core::warn_event!(
            "smmuv3: command {:#x} at {:#x} refused: {:?}",
            err.opcode,
            err.index,
            err.kind
        );
        hw.counts.errors.incr();
        self.batch_error.get_or_insert(err);
        self.last_error = Some(err);
        self.write_entry(self.cons, &Command::sync());
        if !iova_core::CacheMaintenance::is_coherent(&self.cache) {
            iova_core::CacheMaintenance::complete(&self.cache);
        }
        barrier::publish();
        let gerrorn = mmio.read32(off::GERRORN)?;
        mmio.write32(off::GERRORN, gerrorn ^ gerror::CMDQ_ERR)
    }

    /// Appends one command, waiting (bounded) for room when the queue is full.
    pub(crate) fn push(&mut self, hw: Hw<'_, impl Mmio>, c: &Command) -> Result<(), SmmuError> {
        if self.idx.is_full(self.prod, self.cons) {
            // Let the SMMU see what we queued, then wait for it to make room.
            self.publish(hw.mmio)?;
            let budget = self.wait;
            let target = self.prod;
            wait(&budget, Wait::CmdqSpace, || {
                self.refresh(hw, target)?;
                Ok(!self.idx.is_full(self.prod, self.cons))
            })?;
        }
        self.write_entry(self.prod, c);
        self.prod = self.idx.next(self.prod);
        hw.counts.count(c);
        Ok(())
    }

    /// Appends a CMD_SYNC, publishes the batch and waits (bounded) until the
    /// SMMU consumed it. Returns the first command error of the batch, if any
    /// (the refused commands were skipped, the rest completed).
    pub(crate) fn sync(&mut self, hw: Hw<'_, impl Mmio>) -> Result<(), SmmuError> {
        self.push(hw, &Command::sync())?;
        self.publish(hw.mmio)?;
        let target = self.prod;
        let budget = self.wait;
        let r = wait(&budget, Wait::CmdSync, || {
            self.refresh(hw, target)?;
            Ok(self.cons == target)
        });
        let err = self.batch_error.take();
        r?;
        match err {
            Some(e) => Err(SmmuError::Command(e)),
            None => Ok(()),
        }
    }

    /// Queues `cmds` and one CMD_SYNC, and waits.
    pub(crate) fn submit(
        &mut self,
        hw: Hw<'_, impl Mmio>,
        cmds: &[Command],
    ) -> Result<(), SmmuError> {
        for c in cmds {
            self.push(hw, c)?;
        }
        self.sync(hw)
    }
}

/// What one drain of the event queue found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub struct DrainReport {
    /// Records handed to the callback.
    pub events: u32,
    /// The SMMU signalled overflow (EVENTQ_PROD.OVFLG toggled): events were lost.
    pub overflowed: bool,
    /// GERROR.EVENTQ_ABT_ERR: an event could not be written and was lost
    /// (QEMU reports a full queue this way).
    pub write_aborted: bool,
}

impl DrainReport {
    /// Whether events were lost.
    pub fn lost_events(&self) -> bool {
        self.overflowed || self.write_aborted
    }
}

/// The event queue: the SMMU produces, software consumes.
pub(crate) struct EventQueue {
    pub(crate) mem: DmaBuf,
    pub(crate) idx: QueueIndex,
    cons: u32,
    /// OVACKFLG we last wrote.
    ov_ack: u32,
    /// The EVENTQ_CONS value the SMMU last accepted.
    published: u32,
    cache: SmmuCache,
}

impl EventQueue {
    pub(crate) fn new(mem: DmaBuf, log2: u32, cache: SmmuCache) -> Self {
        Self {
            mem,
            idx: QueueIndex::new(log2),
            cons: 0,
            ov_ack: 0,
            published: 0,
            cache,
        }
    }

    /// EVENTQ_BASE value.
    pub(crate) fn base_reg(&self) -> u64 {
        (self.mem.pa.0 & queue::BASE_ADDR_MASK) | queue::BASE_ALLOC | u64::from(self.idx.log2)
    }

    fn publish(&mut self, mmio: &impl Mmio, cons: u32) -> Result<(), MmioError> {
        mmio.write32(off::EVENTQ_CONS, cons)?;
        self.published = cons;
        Ok(())
    }

    /// Hands every pending record to `f`, at most two queue-fulls per call
    /// (so a storm of events cannot keep us here forever), and records what
    /// it found in `report` as it goes, so a refused register access still
    /// leaves the records already handed over counted.
    pub(crate) fn drain(
        &mut self,
        mmio: &impl Mmio,
        mut f: impl FnMut(Event),
        report: &mut DrainReport,
    ) -> Result<(), MmioError> {
        let budget = 2 * self.idx.size();
        // A drain stopped by a refused write left the SMMU with slots we
        // consumed: free them now, even if no new record arrives.
        if self.published != self.cons | self.ov_ack {
            self.publish(mmio, self.cons | self.ov_ack)?;
        }
        let mut prod_reg = mmio.read32(off::EVENTQ_PROD)?;
        while report.events < budget {
            let prod = prod_reg & self.idx.mask();
            if self.idx.is_empty(prod, self.cons) {
                break;
            }
            barrier::consume();
            while !self.idx.is_empty(prod, self.cons) && report.events < budget {
                let s = self.idx.slot(self.cons) as usize * 4;
                // A non-coherent SMMU wrote the record to memory: drop any
                // stale line before reading it.
                self.cache
                    .invalidate_now(PhysAddr(self.mem.pa.0 + 8 * s as u64), 32);
                let raw = [
                    self.mem.read(s),
                    self.mem.read(s + 1),
                    self.mem.read(s + 2),
                    self.mem.read(s + 3),
                ];
                f(Event::decode(raw));
                report.events += 1;
                self.cons = self.idx.next(self.cons);
            }
            // Free the slots before looking for more.
            barrier::publish();
            self.publish(mmio, self.cons | self.ov_ack)?;
            prod_reg = mmio.read32(off::EVENTQ_PROD)?;
        }
        let ov = prod_reg & queue::OVFLG;
        if ov != self.ov_ack {
            report.overflowed = true;
            self.publish(mmio, self.cons | ov)?;
            self.ov_ack = ov;
        }
        let pending = mmio.read32(off::GERROR)? ^ mmio.read32(off::GERRORN)?;
        if pending & gerror::EVENTQ_ABT_ERR != 0 {
            report.write_aborted = true;
            let n = mmio.read32(off::GERRORN)?;
            mmio.write32(off::GERRORN, n ^ gerror::EVENTQ_ABT_ERR)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_is_bounded() {
        let mut n = 0;
        assert_eq!(
            wait(&WaitBudget::polls(10), Wait::CmdSync, || {
                n += 1;
                Ok(false)
            }),
            Err(SmmuError::Timeout(Wait::CmdSync))
        );
        assert_eq!(n, 11);
        assert_eq!(
            wait(&WaitBudget::polls(0), Wait::CmdSync, || Ok(true)),
            Ok(())
        );
    }

    #[test]
    fn a_refused_access_ends_the_wait_with_its_error() {
        let refused = MmioError::OutOfRange {
            offset: off::CMDQ_CONS,
            width: iova_core::hw::Width::W32,
            size: 0x40,
        };
        let mut n = 0;
        assert_eq!(
            wait(&WaitBudget::polls(10), Wait::CmdSync, || {
                n += 1;
                if n == 3 { Err(refused) } else { Ok(false) }
            }),
            Err(SmmuError::Register(refused))
        );
        assert_eq!(n, 3, "no poll after the refusal");
    }
}

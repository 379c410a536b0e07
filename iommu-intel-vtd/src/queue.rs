//! Submitting invalidations: the invalidation queue (ECAP.QI) with one wait
//! descriptor per batch, or the context-command and IOTLB registers when the
//! unit has no queue.
//!
//! The queue is one 4 KiB page: 256 descriptors of 128 bits, or in scalable
//! mode 128 of 256 bits (IQA.DW; QEMU refuses PASID-based IOTLB
//! descriptors in a 128-bit queue). A batch is written at the
//! tail, followed by a wait descriptor that writes a fresh sequence number to
//! a status word in memory; the tail register is written once, and the status
//! word is polled (bounded). An invalidation queue error (FSTS.IQE) is
//! reported with the descriptor at the queue head, the one the unit refused;
//! that slot is then overwritten with a global IOTLB invalidation (valid on
//! every unit, and only over-invalidates) so the queue drains and stays
//! usable.

use core::sync::atomic::{AtomicU64, Ordering, fence};

use iova_core::{FrameAllocator, PhysAddr};

use crate::caps::Features;
use crate::descriptor::{
    self, ContextScope, Descriptor, IotlbScope, PasidCacheScope, PasidIotlbScope,
};
use crate::error::{VtdError, Wait};
use crate::regs::{self, Mmio};
use crate::unit::{VtdUnit, alloc_frame};

/// Descriptors in a queue of 128-bit descriptors (one 4 KiB page).
pub const QUEUE_ENTRIES: usize = 256;
/// Descriptors in a queue of 256-bit descriptors (scalable mode).
pub const WIDE_QUEUE_ENTRIES: usize = 128;
/// The most descriptors one batch may hold besides its wait descriptor.
pub const MAX_BATCH: usize = WIDE_QUEUE_ENTRIES - 2;
/// IQA: 256-bit descriptors.
const IQA_DW: u64 = 1 << 11;

#[derive(Debug)]
pub(crate) struct Queue {
    base: PhysAddr,
    status: PhysAddr,
    tail: usize,
    seq: u32,
    /// 256-bit descriptors.
    wide: bool,
}

impl Queue {
    fn entries(&self) -> usize {
        if self.wide {
            WIDE_QUEUE_ENTRIES
        } else {
            QUEUE_ENTRIES
        }
    }

    /// IQH/IQT hold the index shifted by log2 of the descriptor size.
    fn shift(&self) -> u32 {
        if self.wide { 5 } else { 4 }
    }
}

/// How this unit invalidates.
#[derive(Debug)]
pub(crate) enum Invalidation {
    Queued(Queue),
    Registers,
}

impl Invalidation {
    pub(crate) fn new<A: FrameAllocator>(
        frames: &A,
        oa_bits: u32,
        wide: bool,
        f: &Features,
    ) -> Result<Self, VtdError> {
        if !f.ecap.queued_invalidation() {
            return Ok(Self::Registers);
        }
        let base = alloc_frame(frames, oa_bits)?;
        let status = match alloc_frame(frames, oa_bits) {
            Ok(s) => s,
            Err(e) => {
                // SAFETY: just allocated, never published.
                unsafe { frames.free(base, 4096) };
                return Err(e);
            }
        };
        Ok(Self::Queued(Queue {
            base,
            status,
            tail: 0,
            seq: 0,
            wide,
        }))
    }

    pub(crate) fn is_queued(&self) -> bool {
        matches!(self, Self::Queued(_))
    }

    /// Programs the queue (tail 0, 128-bit descriptors, one page) and enables it.
    pub(crate) fn enable<M: Mmio, A: FrameAllocator>(
        &mut self,
        unit: &VtdUnit<M, A>,
    ) -> Result<(), VtdError> {
        let Self::Queued(q) = self else {
            return Ok(());
        };
        q.tail = 0;
        unit.regs.write64(regs::IQT, 0)?;
        let dw = if q.wide { IQA_DW } else { 0 };
        unit.regs.write64(regs::IQA, q.base.0 | dw)?;
        unit.global_command(regs::G_QIE, true, Wait::QueuedInvalidationEnable)
    }

    pub(crate) fn free<A: FrameAllocator>(&mut self, frames: &A) {
        if let Self::Queued(q) = self {
            // SAFETY: allocated in `new`; the caller turned the queue off.
            unsafe {
                frames.free(q.base, 4096);
                frames.free(q.status, 4096);
            }
        }
        *self = Self::Registers;
    }
}

impl<M: Mmio, A: FrameAllocator> VtdUnit<M, A> {
    /// Makes `batch` take effect and waits for it: through the queue with
    /// one wait descriptor, or descriptor by descriptor through the
    /// registers. An empty batch does nothing.
    pub fn submit(&self, batch: &[Descriptor]) -> Result<(), VtdError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut inval = self.inval.lock();
        match &mut *inval {
            Invalidation::Queued(q) => {
                for chunk in batch.chunks(MAX_BATCH) {
                    self.submit_queued(q, chunk)?;
                }
                Ok(())
            }
            Invalidation::Registers => batch.iter().try_for_each(|d| self.submit_register(d)),
        }
    }

    /// The qwords of descriptor `index` (2, or 4 in a wide queue).
    fn slot(&self, q: &Queue, index: usize) -> [&AtomicU64; 4] {
        let p = self.frames.phys_to_virt(q.base).cast::<u64>();
        let size = if q.wide { 4 } else { 2 };
        let i = size * (index % q.entries());
        // A narrow queue has no qwords 2 and 3: they alias the first two,
        // and are only written for wide queues.
        let (a, b) = if q.wide { (i + 2, i + 3) } else { (i, i + 1) };
        // SAFETY: the queue page is ours for the unit's life; every index is
        // below 512 (entries * size = 512 qwords).
        unsafe {
            [
                AtomicU64::from_ptr(p.add(i)),
                AtomicU64::from_ptr(p.add(i + 1)),
                AtomicU64::from_ptr(p.add(a)),
                AtomicU64::from_ptr(p.add(b)),
            ]
        }
    }

    fn head(&self, q: &Queue) -> Result<usize, VtdError> {
        Ok((self.regs.read64(regs::IQH)? >> q.shift()) as usize % q.entries())
    }

    fn submit_queued(&self, q: &mut Queue, batch: &[Descriptor]) -> Result<(), VtdError> {
        // Every earlier batch was waited for, so the queue is empty unless a
        // wait timed out; make room (bounded) for the batch and its wait.
        let need = batch.len() + 1;
        let entries = q.entries();
        let free = |head: usize| (head + entries - q.tail - 1) % entries;
        self.poll(Wait::QueueSpace, || Ok(free(self.head(q)?) >= need))?;
        q.seq = q.seq.wrapping_add(1).max(1);
        let seq = q.seq;
        let wait = Descriptor::wait_status(q.status.0, seq);
        for d in batch.iter().chain(core::iter::once(&wait)) {
            let [lo, hi, q2, q3] = self.slot(q, q.tail);
            if q.wide {
                q2.store(0, Ordering::Relaxed);
                q3.store(0, Ordering::Relaxed);
            }
            lo.store(d.lo, Ordering::Relaxed);
            hi.store(d.hi, Ordering::Relaxed);
            q.tail = (q.tail + 1) % entries;
            self.counters.count_descriptor(d);
        }
        // Descriptors reach memory before the unit is told about them.
        fence(Ordering::SeqCst);
        let size = if q.wide { 32 } else { 16 };
        let first = (q.tail + entries - need) % entries;
        if first + need <= entries {
            self.publish(q.base.0 + (first * size) as u64, need * size);
        } else {
            self.publish(q.base.0 + (first * size) as u64, (entries - first) * size);
            self.publish(q.base.0, (need - (entries - first)) * size);
        }
        self.regs.write64(regs::IQT, (q.tail as u64) << q.shift())?;
        self.counters.waits.incr();
        self.wait_for(q, seq)
    }

    fn wait_for(&self, q: &mut Queue, seq: u32) -> Result<(), VtdError> {
        let mut error = None;
        // More than a condition per poll (a refused descriptor is replaced
        // and the queue restarted), so the deadline is spent by hand:
        // condition, then `expired`, then spin.
        let mut deadline = self.config.wait.start();
        loop {
            if self.read_status(q.status) == seq {
                return error.map_or(Ok(()), Err);
            }
            if self.regs.read32(regs::FSTS)? & regs::FSTS_IQE != 0 {
                let index = self.head(q)?;
                let [lo, hi, ..] = self.slot(q, index);
                let descriptor = Descriptor {
                    lo: lo.load(Ordering::Relaxed),
                    hi: hi.load(Ordering::Relaxed),
                };
                self.counters.queue_errors.incr();
                // Replace the refused descriptor, clear the error, and let
                // the unit run the rest of the batch (our wait included).
                let global = Descriptor::iotlb(IotlbScope::Global, false, false);
                lo.store(global.lo, Ordering::Relaxed);
                hi.store(global.hi, Ordering::Relaxed);
                fence(Ordering::SeqCst);
                let size = if q.wide { 32 } else { 16 };
                self.publish(q.base.0 + (index * size) as u64, size);
                self.regs.write32(regs::FSTS, regs::FSTS_IQE)?;
                self.regs.write64(regs::IQT, (q.tail as u64) << q.shift())?;
                iova_core::warn_event!(
                    "VT-d: invalidation queue error at {}: {:#x} {:#x}",
                    index,
                    descriptor.lo,
                    descriptor.hi
                );
                // Report the first refused descriptor of the batch; later
                // ones are replaced the same way so the batch drains.
                error.get_or_insert(VtdError::QueueError { index, descriptor });
            }
            if deadline.expired() {
                break;
            }
            core::hint::spin_loop();
        }
        if error.is_none() {
            iova_core::warn_event!("VT-d: invalidation wait {} timed out", seq);
        }
        Err(error.unwrap_or(VtdError::Timeout(Wait::InvalidationWait)))
    }

    fn submit_register(&self, d: &Descriptor) -> Result<(), VtdError> {
        self.counters.count_descriptor(d);
        self.counters.register_invalidations.incr();
        match d.kind() {
            descriptor::TYPE_CONTEXT => {
                // Same field positions as the descriptor, moved: granularity
                // to 62:61, FM 33:32, SID 31:16, DID 15:0.
                let g = (d.lo >> 4) & 3;
                let did = (d.lo >> 16) & 0xffff;
                let sid = (d.lo >> 32) & 0xffff;
                let fm = (d.lo >> 48) & 3;
                let cmd = regs::CCMD_ICC | g << 61 | fm << 32 | sid << 16 | did;
                self.regs.write64(regs::CCMD, cmd)?;
                let mut last = cmd;
                self.poll(Wait::ContextCommand, || {
                    last = self.regs.read64(regs::CCMD)?;
                    Ok(last & regs::CCMD_ICC == 0)
                })?;
                if (last >> regs::CCMD_CAIG_SHIFT) & 3 == 0 {
                    return Err(VtdError::RegisterInvalidationFailed);
                }
                Ok(())
            }
            descriptor::TYPE_IOTLB => {
                let base = self.features.ecap.iotlb_offset();
                let g = (d.lo >> 4) & 3;
                let did = (d.lo >> 16) & 0xffff;
                let mut cmd = regs::IOTLB_IVT | g << 60 | did << 32;
                if d.lo & 1 << 7 != 0 {
                    cmd |= regs::IOTLB_DR;
                }
                if d.lo & 1 << 6 != 0 {
                    cmd |= regs::IOTLB_DW;
                }
                if g == 3 {
                    // IVA: address | IH | AM, the descriptor's high half.
                    self.regs.write64(base, d.hi)?;
                }
                self.regs.write64(base + 8, cmd)?;
                let mut last = cmd;
                self.poll(Wait::IotlbRegister, || {
                    last = self.regs.read64(base + 8)?;
                    Ok(last & regs::IOTLB_IVT == 0)
                })?;
                if (last >> regs::IOTLB_IAIG_SHIFT) & 3 == 0 {
                    return Err(VtdError::RegisterInvalidationFailed);
                }
                Ok(())
            }
            // Register-based invalidations complete when their bit clears:
            // a wait has nothing left to wait for.
            descriptor::TYPE_WAIT => Ok(()),
            // Nothing else exists without a queue (PASID-based invalidation
            // needs scalable mode, which needs the queue): never pretend.
            _ => Err(VtdError::RegisterInvalidationFailed),
        }
    }

    /// The invalidations that make the removal of `[start, end)` from domain
    /// `did` visible: page-selective blocks where the unit has PSI and they
    /// number at most `psi_limit`, one domain-selective otherwise. Appended
    /// to `out`; returns false if `out` ran out of room (the caller then
    /// falls back to a domain-selective invalidation).
    pub(crate) fn range_invalidations<const N: usize>(
        &self,
        did: u16,
        first_level: Option<u32>,
        start: u64,
        end: u64,
        leaf_only: bool,
        out: &mut heapless::Vec<Descriptor, N>,
    ) -> bool {
        let cap = self.features.cap;
        let (dr, dw) = cap.draining();
        // PASID-based page-selective invalidation needs no CAP.PSI.
        if cap.psi() || first_level.is_some() {
            let room = (N - out.len()).min(self.config.psi_limit);
            let mut ok = true;
            let fits = descriptor::page_blocks(start, end, cap.mamv(), room, |addr, mask| {
                let d = if let Some(pasid) = first_level {
                    Descriptor::pasid_iotlb(PasidIotlbScope::Pages {
                        did,
                        pasid,
                        addr,
                        mask,
                        leaf_only,
                    })
                } else {
                    Descriptor::iotlb(
                        IotlbScope::Pages {
                            did,
                            addr,
                            mask,
                            leaf_only,
                        },
                        dr,
                        dw,
                    )
                };
                ok &= out.push(d).is_ok();
            });
            if fits.is_some() && ok {
                return true;
            }
        }
        false
    }

    /// A domain-selective IOTLB invalidation with the unit's draining, or
    /// for first-level translation of a PASID a PASID-selective one.
    pub(crate) fn domain_invalidation(&self, did: u16, first_level: Option<u32>) -> Descriptor {
        if let Some(pasid) = first_level {
            return Descriptor::pasid_iotlb(PasidIotlbScope::Pasid { did, pasid });
        }
        let (dr, dw) = self.features.cap.draining();
        Descriptor::iotlb(IotlbScope::Domain(did), dr, dw)
    }

    /// Invalidates the context cache, the PASID cache (scalable mode) and
    /// the IOTLB globally.
    pub fn invalidate_all(&self) -> Result<(), VtdError> {
        let context = Descriptor::context(ContextScope::Global);
        let iotlb = Descriptor::iotlb(IotlbScope::Global, false, false);
        if self.scalable() {
            self.submit(&[
                context,
                Descriptor::pasid_cache(PasidCacheScope::Global),
                iotlb,
            ])
        } else {
            self.submit(&[context, iotlb])
        }
    }
}

//! SubstreamIDs (PASIDs): a stream's STE points at a linear table of context
//! descriptors, one per SubstreamID, so one device can use several address
//! spaces (stage-1 domains) at once. Transactions without a SubstreamID use
//! CD 0. Needs IDR1.SSIDSIZE > 0 (QEMU's model has none).
//!
//! A CD slot is written in the architected order (words 1-7, then word 0
//! with V; a live slot is made invalid and invalidated first) and followed by
//! CFGI_CD for that SubstreamID and a CMD_SYNC.

use iova_core::{FrameAllocator, PhysAddr};

use crate::cd::{CD_BYTES, V as CD_V};
use crate::cmd::Command;
use crate::domain::{S1Domain, S1Format};
use crate::error::SmmuError;
use crate::queue::DmaBuf;
use crate::regs::Mmio;
use crate::smmu::Smmu;
use crate::ste::Ste;

/// Streams that can have a CD table at once.
pub const MAX_CD_TABLES: usize = 16;
/// log2 of the CD table entries the driver allocates at most (256 CDs, 16 KiB).
pub const MAX_CD_TABLE_LOG2: u32 = 8;

/// One stream's CD table.
pub(crate) struct CdTable {
    pub(crate) sid: u32,
    pub(crate) buf: DmaBuf,
    pub(crate) log2: u32,
}

impl<M: Mmio, A: FrameAllocator> Smmu<M, A> {
    /// SubstreamID bits the driver's CD tables cover (0: no substreams).
    pub fn substream_bits(&self) -> u32 {
        self.features().ssid_bits.min(MAX_CD_TABLE_LOG2)
    }

    /// Points SubstreamID `ssid` of stream `sid` at a stage-1 domain. The
    /// first call for a stream gives it a CD table; the stream must not be
    /// attached with a single CD then ([`SmmuError::Busy`]).
    pub fn attach_s1_ssid<T: FrameAllocator, F: S1Format>(
        &self,
        sid: u32,
        ssid: u32,
        domain: &S1Domain<'_, M, A, T, F>,
    ) -> Result<(), SmmuError> {
        let bits = self.substream_bits();
        if bits == 0 {
            return Err(SmmuError::SubstreamsUnsupported);
        }
        if ssid >> bits != 0 {
            return Err(SmmuError::SubstreamIdOutOfRange(ssid));
        }
        if domain.invalidator().nested_vmid() != 0 {
            return Err(SmmuError::BadGeometry);
        }
        let cd_words = domain.invalidator().cd_words();
        domain.add_substream(sid, ssid)?;
        let r = self.write_substream_cd(sid, ssid, Some(&cd_words));
        if r.is_err() && !self.substream_uses(sid, ssid, cd_words[1]) {
            domain.remove_substream(sid, ssid);
        }
        r
    }

    /// Detaches SubstreamID `ssid` of `sid` from `domain` (its CD becomes
    /// invalid: C_BAD_CD for that SubstreamID).
    pub fn detach_s1_ssid<T: FrameAllocator, F: S1Format>(
        &self,
        sid: u32,
        ssid: u32,
        domain: &S1Domain<'_, M, A, T, F>,
    ) -> Result<(), SmmuError> {
        if !self.substream_uses(sid, ssid, domain.invalidator().cd_words()[1]) {
            return Err(SmmuError::NotAttached(sid));
        }
        self.write_substream_cd(sid, ssid, None)?;
        domain.remove_substream(sid, ssid);
        Ok(())
    }

    /// Whether `sid`'s STE points at its CD table (it is in SubstreamID mode).
    pub(crate) fn uses_cd_table(&self, sid: u32) -> bool {
        let Some(pa) = self.cd_table(sid) else {
            return false;
        };
        self.ste(sid)
            .is_ok_and(|e| e.is_valid() && e.s1_cd_max() != 0 && e.cd_ptr() == pa.0)
    }

    /// Whether slot `ssid` of `sid`'s CD table is valid with TTB0 word `ttb`.
    pub(crate) fn substream_uses(&self, sid: u32, ssid: u32, ttb: u64) -> bool {
        let tables = self.cd_tables.lock();
        tables.iter().find(|t| t.sid == sid).is_some_and(|t| {
            (ssid >> t.log2) == 0 && {
                let at = ssid as usize * 8;
                t.buf.read(at) & CD_V != 0 && t.buf.read(at + 1) == ttb
            }
        })
    }

    /// Writes (or with `None` invalidates) CD slot `ssid` of `sid`, creating
    /// the stream's CD table on first use.
    pub(crate) fn write_substream_cd(
        &self,
        sid: u32,
        ssid: u32,
        cd: Option<&[u64; 8]>,
    ) -> Result<(), SmmuError> {
        let mut tables = self.cd_tables.lock();
        let log2 = self.substream_bits();
        let mut created = false;
        if !tables.iter().any(|t| t.sid == sid) {
            if cd.is_none() {
                return Err(SmmuError::NotAttached(sid));
            }
            if tables.is_full() {
                return Err(SmmuError::StreamsFull);
            }
            let buf = DmaBuf::alloc(&self.frames, CD_BYTES << log2, &self.cache)?;
            let _ = tables.push(CdTable { sid, buf, log2 });
            created = true;
        }
        let t = tables
            .iter()
            .find(|t| t.sid == sid)
            .ok_or(SmmuError::NotAttached(sid))?;
        if cd.is_some() {
            // The STE must point at the table. A stream in use otherwise
            // (single CD, stage 2, bypass) is not silently converted.
            let pa = t.buf.pa;
            let want = Ste::s1_cd_table(pa.0, t.log2).with_walk_attrs(self.maintains_caches());
            let pointed = self.ste(sid).and_then(|cur| {
                if cur == want {
                    Ok(())
                } else if cur.is_valid() && cur.config() != crate::ste::CONFIG_ABORT {
                    Err(SmmuError::Busy(sid))
                } else {
                    self.install_ste(sid, &want)
                }
            });
            if let Err(e) = pointed {
                // A CD table this call made that no STE word points at (the
                // level-2 stream table could not be allocated, the stream is
                // busy) is not kept: a failed attach changes nothing, and the
                // table would hold one of the MAX_CD_TABLES slots for good.
                // Found by tests/fault_injection.rs.
                if created && !self.ste(sid).is_ok_and(|s| s.cd_ptr() == pa.0) {
                    if let Some(t) = tables.pop() {
                        // SAFETY: pushed above in this call (the lock is
                        // held), and no STE ever pointed at it, so the SMMU
                        // never read it.
                        unsafe { t.buf.free(&self.frames) };
                    }
                }
                return Err(e);
            }
        }
        if ssid >> t.log2 != 0 {
            return Err(SmmuError::SubstreamIdOutOfRange(ssid));
        }
        let at = ssid as usize * 8;
        let inval = [Command::cfgi_cd_ssid(sid, ssid, true)];
        if t.buf.read(at) & CD_V != 0 {
            // Break before make.
            t.buf.write(at, 0);
            t.buf.clean(&self.cache, at, 1);
            self.submit(&inval)?;
        }
        if let Some(words) = cd {
            for (i, w) in words.iter().enumerate().skip(1) {
                t.buf.write(at + i, *w);
            }
            t.buf.clean(&self.cache, at + 1, 7);
            crate::barrier::publish();
            t.buf.write(at, words[0]);
            t.buf.clean(&self.cache, at, 1);
        }
        self.submit(&inval)
    }

    /// Frees the CD tables (the SMMU is disabled).
    pub(crate) fn free_cd_tables(&self) {
        let mut tables = self.cd_tables.lock();
        while let Some(t) = tables.pop() {
            // SAFETY: called with translation off (acknowledged): nothing
            // reads the table.
            unsafe { t.buf.free(&self.frames) };
        }
    }

    /// The physical address of `sid`'s CD table, if it has one.
    pub fn cd_table(&self, sid: u32) -> Option<PhysAddr> {
        self.cd_tables
            .lock()
            .iter()
            .find(|t| t.sid == sid)
            .map(|t| t.buf.pa)
    }
}

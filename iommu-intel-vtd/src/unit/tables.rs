//! A unit's root, context and PASID tables: what each device's (and, in
//! scalable mode, each PASID's) entry holds, and changing it in the order
//! the specification requires. The raw entry writes are `unsafe`
//! ([`VtdUnit::set_context`], [`VtdUnit::set_pasid`]); domains are
//! attached through [`crate::domain`], pass-through and blocking are safe.

use core::sync::atomic::{Ordering, fence};

use iova_core::FrameAllocator;

use super::{FRAME, VtdUnit, alloc_frame};
use crate::acpi::dmar::Bdf;
use crate::context::{self, ContextState, root_entry, scalable};
use crate::descriptor::{ContextScope, Descriptor, IotlbScope, PasidCacheScope, PasidIotlbScope};
use crate::error::VtdError;
use crate::regs::Mmio;

impl<M: Mmio, A: FrameAllocator> VtdUnit<M, A> {
    /// What the tables in memory say about `dev` (the legacy context entry,
    /// or in scalable mode the RID_PASID entry of its PASID table).
    pub fn context(&self, dev: Bdf) -> ContextState {
        let tables = self.context_tables.lock();
        self.entry_state(&tables, dev, 0)
    }

    /// What the entry of `dev`'s `pasid` holds (legacy mode: the context
    /// entry, which `pasid` 0 stands for).
    fn entry_state(&self, tables: &[u64; 512], dev: Bdf, pasid: u32) -> ContextState {
        if self.scalable {
            if pasid >= scalable::MAX_PASIDS {
                return ContextState::NotPresent;
            }
            return match self.pasid_entry_of(tables, dev, pasid) {
                Some((t, i)) => scalable::decode_pasid_entry([
                    self.entry(t, i).load(Ordering::Acquire),
                    self.entry(t, i + 1).load(Ordering::Acquire),
                    self.entry(t, i + 2).load(Ordering::Acquire),
                ]),
                None => ContextState::NotPresent,
            };
        }
        let table = tables[usize::from(dev.bus)];
        if table == 0 || pasid != 0 {
            return ContextState::NotPresent;
        }
        let i = 2 * usize::from(dev.devfn());
        ContextState::decode([
            self.entry(table, i).load(Ordering::Acquire),
            self.entry(table, i + 1).load(Ordering::Acquire),
        ])
    }

    fn validate(&self, state: &ContextState) -> Result<(), VtdError> {
        let (cap, ecap) = (self.features.cap, self.features.ecap);
        let reachable = |root: u64| root & 0xfff == 0 && root >> self.oa_bits.min(63) == 0;
        let levels = |aw: u8| {
            let l = usize::from(aw) + 2;
            if cap.supports_levels(l) {
                Ok(())
            } else {
                Err(VtdError::LevelsUnsupported(l))
            }
        };
        match *state {
            ContextState::PassThrough { did, aw } => {
                if !ecap.pass_through() {
                    return Err(VtdError::PassThroughUnsupported);
                }
                self.check_did(did)?;
                levels(aw)
            }
            ContextState::Translated { did, root, aw } => {
                if self.scalable && !ecap.second_level_translation() {
                    return Err(VtdError::SecondLevelUnsupported);
                }
                self.check_did(did)?;
                levels(aw)?;
                if !reachable(root) {
                    return Err(VtdError::FrameUnreachable(root));
                }
                Ok(())
            }
            ContextState::FirstLevel { did, root } => {
                if !self.scalable || !ecap.first_level_translation() {
                    return Err(VtdError::FirstLevelUnsupported);
                }
                self.check_did(did)?;
                if !reachable(root) {
                    return Err(VtdError::FrameUnreachable(root));
                }
                Ok(())
            }
            ContextState::NotPresent => Ok(()),
            ContextState::Other { .. } => Err(VtdError::LevelsUnsupported(0)),
        }
    }

    /// Sets what happens to `dev`'s DMA, in the order the specification
    /// requires: a present entry is first made not present and its cached
    /// copies and translations invalidated (one batch, one wait); then the
    /// new entry is written with its present bit last, so the unit never
    /// sees a present entry with a half-written domain or width. With CAP.CM
    /// a newly present entry is invalidated too (the unit may have cached the
    /// not-present one); otherwise only the write buffer is flushed.
    ///
    /// Legacy mode programs the context entry. Scalable mode gives the
    /// device a context entry, a PASID directory and a PASID table once, and
    /// then programs the RID_PASID (PASID 0) entry: second-level, first-level
    /// or pass-through; not present blocks the device.
    ///
    /// `fpd` disables fault recording for the device.
    ///
    /// [`attach`](Self::attach) does this for a [`VtdDomain`](crate::VtdDomain),
    /// [`pass_through`](Self::pass_through) and [`block`](Self::block) for
    /// the states without a table, all safely.
    ///
    /// # Safety
    ///
    /// For a present `state`: its domain ID is one no
    /// [`VtdDomain`](crate::VtdDomain) of this unit holds and not the unit's
    /// pass-through ID (take one with [`alloc_domain_id`](Self::alloc_domain_id)),
    /// and is used with one table only (or only for pass-through): the unit
    /// tags cached translations with it alone.
    ///
    /// For [`ContextState::Translated`] and [`ContextState::FirstLevel`]:
    /// `root` is the root of a table of that format (second level of the
    /// depth `aw` gives; x86-64 4-level paging) whose frames stay allocated,
    /// and are not reused, until the entry is replaced (by any call of this
    /// unit) and that call returned `Ok`; and every change to the table is
    /// followed by an invalidation of the domain ID (as a
    /// [`VtdInvalidator`](crate::VtdInvalidator) does) that completes before
    /// memory a removed entry pointed to is reused.
    pub unsafe fn set_context(
        &self,
        dev: Bdf,
        state: ContextState,
        fpd: bool,
    ) -> Result<(), VtdError> {
        self.update(dev, None, fpd, |_| Ok(Some(state)))
    }

    /// Blocks `dev`'s requests without a PASID (its context entry, or in
    /// scalable mode its RID_PASID entry, not present; faults are recorded),
    /// invalidating what the unit cached of the entry before.
    pub fn block(&self, dev: Bdf) -> Result<(), VtdError> {
        self.update(dev, None, false, |_| Ok(Some(ContextState::NotPresent)))
    }

    /// Blocks the requests of `dev` tagged with `pasid` (scalable mode).
    pub fn block_pasid(&self, dev: Bdf, pasid: u32) -> Result<(), VtdError> {
        self.update(dev, Some(pasid), false, |_| {
            Ok(Some(ContextState::NotPresent))
        })
    }

    /// Lets `dev`'s requests without a PASID through untranslated (needs
    /// ECAP.PT). Pass-through entries are tagged with a domain ID of their
    /// own, taken from the unit's on first use and kept.
    pub fn pass_through(&self, dev: Bdf) -> Result<(), VtdError> {
        self.pass_through_at(dev, None)
    }

    /// Lets the requests of `dev` tagged with `pasid` through untranslated
    /// (scalable mode, ECAP.PT).
    pub fn pass_through_pasid(&self, dev: Bdf, pasid: u32) -> Result<(), VtdError> {
        self.pass_through_at(dev, Some(pasid))
    }

    fn pass_through_at(&self, dev: Bdf, pasid: Option<u32>) -> Result<(), VtdError> {
        if let Some(p) = pasid {
            self.check_pasid(p)?;
        }
        if !self.features.ecap.pass_through() {
            return Err(VtdError::PassThroughUnsupported);
        }
        let aw = self.features.max_levels().map_or(1, |l| (l - 2) as u8);
        let pasid = pasid.unwrap_or(0);
        // Pass-through entries are written under this lock only, so the ID
        // taken here is not used by anyone else until the write succeeds.
        let mut tables = self.context_tables.lock();
        let (did, fresh) = {
            let mut ids = self.dids.lock();
            match ids.pass_through {
                Some(did) => (did, false),
                None => {
                    let did = ids.alloc().ok_or(VtdError::DomainIdsExhausted)?;
                    ids.pass_through = Some(did);
                    (did, true)
                }
            }
        };
        let state = ContextState::PassThrough { did, aw };
        let r = self.write(&mut tables, dev, pasid, state, false);
        if r.is_err() && fresh && self.entry_state(&tables, dev, pasid) != state {
            let mut ids = self.dids.lock();
            ids.pass_through = None;
            ids.free(did);
        }
        r
    }

    /// Under the context-table lock: `decide` is given what the entry of
    /// `dev` (requests without a PASID for `None`) holds and returns what it
    /// is to hold (`None`: leave it as it is), which is then written as
    /// [`set_context`](Self::set_context) describes.
    pub(crate) fn update(
        &self,
        dev: Bdf,
        pasid: Option<u32>,
        fpd: bool,
        decide: impl FnOnce(ContextState) -> Result<Option<ContextState>, VtdError>,
    ) -> Result<(), VtdError> {
        if let Some(p) = pasid {
            self.check_pasid(p)?;
        }
        let pasid = pasid.unwrap_or(0);
        let mut tables = self.context_tables.lock();
        let Some(state) = decide(self.entry_state(&tables, dev, pasid))? else {
            return Ok(());
        };
        self.write(&mut tables, dev, pasid, state, fpd)
    }

    /// Writes the entry of `dev`'s `pasid` (0: requests without a PASID),
    /// as [`set_context`](Self::set_context) describes.
    fn write(
        &self,
        tables: &mut [u64; 512],
        dev: Bdf,
        pasid: u32,
        state: ContextState,
        fpd: bool,
    ) -> Result<(), VtdError> {
        self.validate(&state)?;
        if self.scalable {
            self.set_scalable(tables, dev, pasid, state, fpd)
        } else {
            self.set_legacy(tables, dev, state, fpd)
        }
    }

    /// Whether the entry of `dev`'s `pasid` (0: requests without a PASID)
    /// holds `state`.
    pub(crate) fn entry_is(&self, dev: Bdf, pasid: u32, state: &ContextState) -> bool {
        let tables = self.context_tables.lock();
        self.entry_state(&tables, dev, pasid) == *state
    }

    /// Refuses a PASID the unit cannot program: legacy mode, a PASID other
    /// than 0 without ECAP.PASID, or one beyond `2^(PSS + 1)` and
    /// [`scalable::MAX_PASIDS`].
    pub(crate) fn check_pasid(&self, pasid: u32) -> Result<(), VtdError> {
        if !self.scalable {
            return Err(VtdError::ScalableUnsupported);
        }
        let ecap = self.features.ecap;
        if pasid != 0 && !ecap.pasid() {
            return Err(VtdError::PasidUnsupported);
        }
        let limit = if ecap.pasid() {
            (1u64 << ecap.pasid_bits()).min(u64::from(scalable::MAX_PASIDS))
        } else {
            1
        };
        if u64::from(pasid) >= limit {
            return Err(VtdError::PasidOutOfRange(pasid));
        }
        Ok(())
    }

    /// Drops everything the unit may have cached under domain `did`:
    /// context (legacy) or PASID-cache entries tagged with it, and its
    /// translations (second-level ones, or those of the first-level
    /// `pasid`). One batch, one wait.
    pub(crate) fn forget_domain(&self, did: u16, first_level: Option<u32>) -> Result<(), VtdError> {
        let tlb = match first_level {
            Some(pasid) => Descriptor::pasid_iotlb(PasidIotlbScope::Pasid { did, pasid }),
            None => Descriptor::iotlb(IotlbScope::Domain(did), false, false),
        };
        let entries = if self.scalable {
            Descriptor::pasid_cache(PasidCacheScope::Domain(did))
        } else {
            Descriptor::context(ContextScope::Domain(did))
        };
        self.flush_write_buffer()?;
        self.submit(&[entries, tlb])
    }

    fn set_legacy(
        &self,
        tables: &mut [u64; 512],
        dev: Bdf,
        state: ContextState,
        fpd: bool,
    ) -> Result<(), VtdError> {
        let cap = self.features.cap;
        let bus = usize::from(dev.bus);
        if tables[bus] == 0 {
            if state == ContextState::NotPresent {
                return Ok(());
            }
            let table = alloc_frame(&self.frames, self.oa_bits)?;
            let [lo, hi] = root_entry(table.0);
            self.entry(self.root.0, 2 * bus + 1)
                .store(hi, Ordering::Release);
            self.entry(self.root.0, 2 * bus)
                .store(lo, Ordering::Release);
            tables[bus] = table.0;
            fence(Ordering::SeqCst);
            self.publish(self.root.0 + 16 * bus as u64, 16);
            // A unit in caching mode may hold the not-present root entry
            // (as context-cache entries of the bus).
            if cap.caching_mode() {
                self.submit(&[Descriptor::context(ContextScope::Global)])?;
            }
        }
        let table = tables[bus];
        let i = 2 * usize::from(dev.devfn());
        let (lo, hi) = (self.entry(table, i), self.entry(table, i + 1));
        let old = ContextState::decode([lo.load(Ordering::Acquire), hi.load(Ordering::Acquire)]);
        let at = table + 16 * u64::from(dev.devfn());
        if let Some(old_did) = old.did() {
            lo.store(0, Ordering::Release);
            fence(Ordering::SeqCst);
            self.publish(at, 16);
            self.flush_write_buffer()?;
            self.submit(&[
                Descriptor::context(ContextScope::Device {
                    did: old_did,
                    sid: dev.source_id(),
                    function_mask: 0,
                }),
                Descriptor::iotlb(IotlbScope::Domain(old_did), false, false),
            ])?;
        }
        if let Some(did) = state.did() {
            let [new_lo, new_hi] = state.encode(fpd);
            hi.store(new_hi, Ordering::Release);
            fence(Ordering::SeqCst);
            lo.store(new_lo, Ordering::Release);
            fence(Ordering::SeqCst);
            self.publish(at, 16);
            self.announce_present(dev, did, None)?;
        }
        Ok(())
    }

    /// After an entry became present: with CM, invalidate what the unit may
    /// have cached of the not-present one (a context entry, tagged with
    /// domain ID 0, or the PASID entry `pasid`); otherwise flush the write
    /// buffer.
    fn announce_present(&self, dev: Bdf, did: u16, pasid: Option<u32>) -> Result<(), VtdError> {
        if !self.features.cap.caching_mode() {
            return self.flush_write_buffer();
        }
        let first = match pasid {
            Some(pasid) => Descriptor::pasid_cache(PasidCacheScope::Pasid { did, pasid }),
            None => Descriptor::context(ContextScope::Device {
                did: 0,
                sid: dev.source_id(),
                function_mask: 0,
            }),
        };
        self.submit(&[
            first,
            Descriptor::iotlb(IotlbScope::Domain(did), false, false),
        ])
    }

    /// The PASID directory of `dev`, if it has a scalable context entry.
    fn device_dir(&self, tables: &[u64; 512], dev: Bdf) -> Option<u64> {
        let devfn = usize::from(dev.devfn());
        let table = tables[2 * usize::from(dev.bus) + devfn / 128];
        if table == 0 {
            return None;
        }
        let ctx = self.entry(table, 4 * (devfn % 128)).load(Ordering::Acquire);
        (ctx & scalable::CTX_P != 0).then_some(ctx & context::ADDR_MASK)
    }

    /// The PASID table entry for `pasid` in directory `dir` (table frame,
    /// qword index), if its table exists.
    fn pasid_slot(&self, dir: u64, pasid: u32) -> Option<(u64, usize)> {
        let de = self
            .entry(dir, (pasid >> 6) as usize)
            .load(Ordering::Acquire);
        (de & scalable::PDE_P != 0).then_some((de & context::ADDR_MASK, 8 * (pasid & 63) as usize))
    }

    fn pasid_entry_of(&self, tables: &[u64; 512], dev: Bdf, pasid: u32) -> Option<(u64, usize)> {
        self.pasid_slot(self.device_dir(tables, dev)?, pasid)
    }

    /// What the PASID table holds for `dev`'s `pasid` (scalable mode);
    /// [`ContextState::NotPresent`] without an entry.
    pub fn pasid_context(&self, dev: Bdf, pasid: u32) -> ContextState {
        if !self.scalable {
            return ContextState::NotPresent;
        }
        let tables = self.context_tables.lock();
        self.entry_state(&tables, dev, pasid)
    }

    /// Sets what requests of `dev` tagged with `pasid` get (scalable mode):
    /// as [`set_context`](Self::set_context) does for requests without a
    /// PASID (which use RID_PASID, PASID 0). PASIDs other than 0 need
    /// ECAP.PASID and must be below `2^(PSS + 1)` and [`scalable::MAX_PASIDS`].
    ///
    /// [`attach_pasid`](Self::attach_pasid),
    /// [`pass_through_pasid`](Self::pass_through_pasid) and
    /// [`block_pasid`](Self::block_pasid) are the safe forms.
    ///
    /// # Safety
    ///
    /// As for [`set_context`](Self::set_context).
    pub unsafe fn set_pasid(
        &self,
        dev: Bdf,
        pasid: u32,
        state: ContextState,
        fpd: bool,
    ) -> Result<(), VtdError> {
        self.update(dev, Some(pasid), fpd, |_| Ok(Some(state)))
    }

    fn set_scalable(
        &self,
        tables: &mut [u64; 512],
        dev: Bdf,
        pasid: u32,
        state: ContextState,
        fpd: bool,
    ) -> Result<(), VtdError> {
        let existing = self.device_dir(tables, dev);
        if existing.is_none() && state == ContextState::NotPresent {
            return Ok(());
        }
        // A new device gets its PASID table before its directory and
        // context entry are built, so that running out of memory leaves
        // nothing half built (a present context entry over an empty
        // directory, frames held).
        let mut spare = match existing {
            Some(_) => None,
            None => Some(alloc_frame(&self.frames, self.oa_bits)?),
        };
        let dir = match existing {
            Some(d) => d,
            None => match self.new_scalable_device(tables, dev) {
                Ok(d) => d,
                Err(e) => {
                    if let Some(pt) = spare {
                        // SAFETY: just allocated, never published.
                        unsafe { self.frames.free(pt, FRAME) };
                    }
                    return Err(e);
                }
            },
        };
        let slot = self.pasid_slot(dir, pasid);
        if let Some(pt) = spare.filter(|_| slot.is_some()) {
            // Not reached (a new directory is empty); never leak the frame.
            // SAFETY: just allocated, never published.
            unsafe { self.frames.free(pt, FRAME) };
        }
        let (pt, i) = match slot {
            Some(slot) => slot,
            None if state == ContextState::NotPresent => return Ok(()),
            None => {
                let pt = match spare.take() {
                    Some(pt) => pt,
                    None => alloc_frame(&self.frames, self.oa_bits)?,
                };
                self.publish(pt.0, FRAME);
                let at = dir + 8 * u64::from(pasid >> 6);
                self.entry(dir, (pasid >> 6) as usize)
                    .store(scalable::dir_entry(pt.0), Ordering::Release);
                fence(Ordering::SeqCst);
                self.publish(at, 8);
                (pt.0, 8 * (pasid & 63) as usize)
            }
        };
        let q0 = self.entry(pt, i);
        let old = scalable::decode_pasid_entry([
            q0.load(Ordering::Acquire),
            self.entry(pt, i + 1).load(Ordering::Acquire),
            self.entry(pt, i + 2).load(Ordering::Acquire),
        ]);
        let at = pt + 8 * i as u64;
        if let Some(old_did) = old.did() {
            q0.store(0, Ordering::Release);
            fence(Ordering::SeqCst);
            self.publish(at, 64);
            self.flush_write_buffer()?;
            let tlb = match old {
                ContextState::FirstLevel { .. } => {
                    Descriptor::pasid_iotlb(PasidIotlbScope::Pasid {
                        did: old_did,
                        pasid,
                    })
                }
                _ => Descriptor::iotlb(IotlbScope::Domain(old_did), false, false),
            };
            self.submit(&[
                Descriptor::pasid_cache(PasidCacheScope::Pasid {
                    did: old_did,
                    pasid,
                }),
                tlb,
            ])?;
        }
        if let Some(did) = state.did() {
            let e = scalable::pasid_entry(&state, fpd);
            for (k, &v) in e.iter().enumerate().skip(1) {
                self.entry(pt, i + k).store(v, Ordering::Release);
            }
            fence(Ordering::SeqCst);
            // Everything but the present bit reaches memory first.
            self.publish(at, 64);
            q0.store(e[0], Ordering::Release);
            fence(Ordering::SeqCst);
            self.publish(at, 64);
            self.announce_present(dev, did, Some(pasid))?;
        }
        Ok(())
    }

    /// First attach of a device in scalable mode: the context table half
    /// (if new) and a PASID directory, then the context entry pointing to
    /// it, each written before what points to it. Returns the directory.
    fn new_scalable_device(&self, tables: &mut [u64; 512], dev: Bdf) -> Result<u64, VtdError> {
        let devfn = usize::from(dev.devfn());
        let half = 2 * usize::from(dev.bus) + devfn / 128;
        let dir = alloc_frame(&self.frames, self.oa_bits)?;
        self.publish(dir.0, FRAME);
        let mut new_table = false;
        if tables[half] == 0 {
            match alloc_frame(&self.frames, self.oa_bits) {
                Ok(t) => {
                    self.publish(t.0, FRAME);
                    tables[half] = t.0;
                    new_table = true;
                }
                Err(e) => {
                    // SAFETY: just allocated, never published.
                    unsafe { self.frames.free(dir, FRAME) };
                    return Err(e);
                }
            }
        }
        let table = tables[half];
        let c = scalable::context_entry(dir.0);
        let at = 4 * (devfn % 128);
        for k in (1..4).rev() {
            self.entry(table, at + k).store(c[k], Ordering::Release);
        }
        fence(Ordering::SeqCst);
        self.publish(table + 8 * at as u64, 32);
        self.entry(table, at).store(c[0], Ordering::Release);
        fence(Ordering::SeqCst);
        self.publish(table + 8 * at as u64, 32);
        if new_table {
            let bus = usize::from(dev.bus);
            let [lo, hi] = scalable::root_entry(tables[2 * bus], tables[2 * bus + 1]);
            self.entry(self.root.0, 2 * bus + 1)
                .store(hi, Ordering::Release);
            self.entry(self.root.0, 2 * bus)
                .store(lo, Ordering::Release);
            fence(Ordering::SeqCst);
            self.publish(self.root.0 + 16 * bus as u64, 16);
            if self.features.cap.caching_mode() {
                self.submit(&[Descriptor::context(ContextScope::Global)])?;
            }
        } else if self.features.cap.caching_mode() {
            self.submit(&[Descriptor::context(ContextScope::Device {
                did: 0,
                sid: dev.source_id(),
                function_mask: 0,
            })])?;
        }
        Ok(dir.0)
    }

    pub(crate) fn check_did(&self, did: u16) -> Result<(), VtdError> {
        if u32::from(did) >= self.features.cap.domains()
            || (did == 0 && self.features.cap.caching_mode())
        {
            return Err(VtdError::BadDomainId(did));
        }
        Ok(())
    }
}

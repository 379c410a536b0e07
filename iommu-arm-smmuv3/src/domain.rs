//! Domains: an iova-core page table plus this SMMU's invalidation for its
//! ASID (stage 1) or VMID (stage 2). [`iova_core::PageTableDomain`] turns them
//! into [`iova_core::IommuDomain`]s, so the whole two-step API runs on them.
//!
//! A flush issues, for every range the gather records: one range TLBI when
//! the SMMU has IDR3.RIL, else one TLBI per page; past the configured number
//! of per-page commands, one TLBI of the whole ASID (VMID) instead. Then one
//! CMD_SYNC for the batch. New mappings need no command (the SMMU does not
//! cache invalid entries), only a barrier so the walker sees them.

use core::sync::atomic::{AtomicU32, Ordering};

use iova_core::formats::lpae::{LpaeS1, MAIR};
use iova_core::{
    Error, FrameAllocator, IotlbGather, IotlbInvalidate, PageTable, PageTableDomain, PhysAddr,
};

use crate::cd::{Cd, CdConfig};
use crate::cmd::{Command, TlbiRange};
use crate::error::SmmuError;
use crate::lpae_large::{Granule, LpaeS1Large};
use crate::regs::Mmio;
use crate::s2::LpaeS2;
use crate::smmu::Smmu;
use crate::ste::{S2Config, Ste};

/// A stage-1 page-table format the SMMU can walk: LPAE with one of the
/// three granules.
pub trait S1Format: iova_core::PtFormat {
    /// The translation granule (for CD.TG0 and the TLBI granule).
    fn granule(&self) -> Granule;
}

impl S1Format for LpaeS1 {
    fn granule(&self) -> Granule {
        Granule::K4
    }
}

impl S1Format for LpaeS1Large {
    fn granule(&self) -> Granule {
        LpaeS1Large::granule(self)
    }
}

/// Stage-1 invalidation for one ASID, and the domain's context descriptor.
pub struct S1Inval<'s, M: Mmio, A: FrameAllocator> {
    smmu: &'s Smmu<M, A>,
    asid: u16,
    cd: PhysAddr,
    granule: Granule,
    attached: AtomicU32,
    /// VMID of the stage 2 this context is nested under (0: none).
    vmid: AtomicU32,
}

/// Stage-2 invalidation for one VMID.
pub struct S2Inval<'s, M: Mmio, A: FrameAllocator> {
    smmu: &'s Smmu<M, A>,
    vmid: u16,
    attached: AtomicU32,
    /// Also used under a stage-1 context (nested): combined entries must go too.
    nested: AtomicU32,
}

/// A stage-1 domain: LPAE stage-1 tables (format `F`, 4 KiB granule by
/// default) from `T`, ASID-tagged.
pub type S1Domain<'s, M, A, T, F = LpaeS1> = PageTableDomain<F, T, S1Inval<'s, M, A>>;
/// A stage-2 domain: LPAE stage-2 tables from `T`, VMID-tagged.
pub type S2Domain<'s, M, A, T> = PageTableDomain<LpaeS2, T, S2Inval<'s, M, A>>;

impl<M: Mmio, A: FrameAllocator> S1Inval<'_, M, A> {
    /// The domain's ASID.
    pub fn asid(&self) -> u16 {
        self.asid
    }
    /// Physical address of the domain's context descriptor.
    pub fn cd(&self) -> PhysAddr {
        self.cd
    }
    /// Streams attached now.
    pub fn attached(&self) -> u32 {
        self.attached.load(Ordering::Relaxed)
    }
}

impl<M: Mmio, A: FrameAllocator> S2Inval<'_, M, A> {
    /// The domain's VMID.
    pub fn vmid(&self) -> u16 {
        self.vmid
    }
    /// Streams attached now.
    pub fn attached(&self) -> u32 {
        self.attached.load(Ordering::Relaxed)
    }
}

enum Tag {
    S1 {
        vmid: u16,
        asid: u16,
        granule: Granule,
    },
    S2 {
        vmid: u16,
        nested: bool,
    },
}

impl<M: Mmio, A: FrameAllocator> Smmu<M, A> {
    /// A new stage-1 domain with `ia_bits` of IOVA (25..=48) and a 4 KiB
    /// granule, tables from `tables`. Its ASID's TLB entries are invalidated
    /// first (the ASID may have been used before).
    pub fn s1_domain<T: FrameAllocator>(
        &self,
        tables: T,
        ia_bits: u32,
    ) -> Result<S1Domain<'_, M, A, T>, SmmuError> {
        let f = self.features();
        if ia_bits > f.ias_s1_bits.min(48) {
            return Err(SmmuError::BadGeometry);
        }
        let fmt = LpaeS1::new(ia_bits, f.table_oas_bits()).map_err(|_| SmmuError::BadGeometry)?;
        self.s1_domain_with(tables, fmt)
    }

    /// A new stage-1 domain of format `fmt` (any granule the SMMU offers:
    /// [`LpaeS1`], or [`LpaeS1Large`] for 16 KiB / 64 KiB).
    pub fn s1_domain_with<T: FrameAllocator, F: S1Format>(
        &self,
        tables: T,
        fmt: F,
    ) -> Result<S1Domain<'_, M, A, T, F>, SmmuError> {
        let f = self.features();
        if !f.stage1 {
            return Err(SmmuError::StageUnsupported);
        }
        let granule = fmt.granule();
        let offered = match granule {
            Granule::K4 => f.granules.g4k,
            Granule::K16 => f.granules.g16k,
            Granule::K64 => f.granules.g64k,
        };
        if !offered {
            return Err(SmmuError::GranuleUnsupported);
        }
        let oa = fmt.oa_bits();
        if oa > f.table_oas_bits() {
            return Err(SmmuError::BadGeometry);
        }
        let table = PageTable::new(fmt, tables)?;
        let ia_bits = table.ia_bits();
        if !(25..=48).contains(&ia_bits) {
            return Err(SmmuError::BadGeometry);
        }
        let asid = self.asids.lock().alloc().ok_or(SmmuError::IdsExhausted)?;
        let cd = Cd::s1_granule(
            &CdConfig {
                asid,
                ia_bits,
                oa_bits: oa,
                ttb0: table.root().0,
                mair: MAIR,
            },
            granule,
        );
        let setup = self
            .submit(&[Command::tlbi_nh_asid(0, asid)])
            .and_then(|()| self.alloc_cd(&cd));
        let cd = match setup {
            Ok(pa) => pa,
            Err(e) => {
                self.asids.lock().free(asid);
                return Err(e);
            }
        };
        Ok(PageTableDomain::new(
            table,
            S1Inval {
                smmu: self,
                asid,
                cd,
                granule,
                attached: AtomicU32::new(0),
                vmid: AtomicU32::new(0),
            },
        ))
    }

    /// A new stage-2 domain with `ia_bits` of IPA (at most the OAS), tables
    /// from `tables`. Its VMID's TLB entries are invalidated first.
    pub fn s2_domain<T: FrameAllocator>(
        &self,
        tables: T,
        ia_bits: u32,
    ) -> Result<S2Domain<'_, M, A, T>, SmmuError> {
        let f = self.features();
        if !f.stage2 {
            return Err(SmmuError::StageUnsupported);
        }
        let fmt = LpaeS2::new(ia_bits, f.table_oas_bits()).map_err(|_| SmmuError::BadGeometry)?;
        let table = PageTable::new(fmt, tables)?;
        let vmid = self.vmids.lock().alloc().ok_or(SmmuError::IdsExhausted)?;
        if let Err(e) = self.submit(&[Command::tlbi_s12_vmall(vmid)]) {
            self.vmids.lock().free(vmid);
            return Err(e);
        }
        Ok(PageTableDomain::new(
            table,
            S2Inval {
                smmu: self,
                vmid,
                attached: AtomicU32::new(0),
                nested: AtomicU32::new(0),
            },
        ))
    }

    /// Points `sid` at a stage-1 domain.
    pub fn attach_s1<T: FrameAllocator, F: S1Format>(
        &self,
        sid: u32,
        domain: &S1Domain<'_, M, A, T, F>,
    ) -> Result<(), SmmuError> {
        let inval = domain.invalidator();
        if inval.vmid.load(Ordering::Relaxed) != 0 {
            // Nested contexts are tagged with their stage 2's VMID.
            return Err(SmmuError::BadGeometry);
        }
        self.write_ste(sid, &Ste::s1(inval.cd.0))?;
        inval.attached.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Points `sid` at a stage-2 domain.
    pub fn attach_s2<T: FrameAllocator>(
        &self,
        sid: u32,
        domain: &S2Domain<'_, M, A, T>,
    ) -> Result<(), SmmuError> {
        let inval = domain.invalidator();
        self.write_ste(sid, &Ste::s2(&s2_config(domain)))?;
        inval.attached.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Nested translation for `sid`: `s1`'s tables and context descriptor
    /// are read through `s2`, so their addresses (the frames `s1`'s and this
    /// SMMU's allocators hand out) must be IPAs that `s2` maps, read-write,
    /// to themselves or to wherever the caller placed them.
    pub fn attach_nested<T1: FrameAllocator, T2: FrameAllocator, F: S1Format>(
        &self,
        sid: u32,
        s1: &S1Domain<'_, M, A, T1, F>,
        s2: &S2Domain<'_, M, A, T2>,
    ) -> Result<(), SmmuError> {
        if !self.features().nesting {
            return Err(SmmuError::StageUnsupported);
        }
        let i1 = s1.invalidator();
        let i2 = s2.invalidator();
        // Stage-1 TLB entries of a nested stream are tagged with the VMID
        // too, so a context serves either plain streams or one stage 2.
        let v = i1.vmid.load(Ordering::Relaxed);
        if (v == 0 && i1.attached() != 0) || (v != 0 && v != u32::from(i2.vmid)) {
            return Err(SmmuError::BadGeometry);
        }
        i1.vmid.store(u32::from(i2.vmid), Ordering::Relaxed);
        self.write_ste(sid, &Ste::nested(i1.cd.0, &s2_config(s2)))?;
        i1.attached.fetch_add(1, Ordering::Relaxed);
        i2.attached.fetch_add(1, Ordering::Relaxed);
        i2.nested.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Detaches `sid` from a stage-1 domain: the STE becomes invalid again
    /// (default deny, reported).
    pub fn detach_s1<T: FrameAllocator, F: S1Format>(
        &self,
        sid: u32,
        domain: &S1Domain<'_, M, A, T, F>,
    ) -> Result<(), SmmuError> {
        let ste = self.ste(sid)?;
        let inval = domain.invalidator();
        if !ste.is_valid() || ste.config() != crate::ste::CONFIG_S1 || ste.cd_ptr() != inval.cd.0 {
            return Err(SmmuError::NotAttached(sid));
        }
        self.detach(sid)?;
        inval.attached.fetch_sub(1, Ordering::Relaxed);
        Ok(())
    }

    fn invalidate_tag(&self, tag: Tag, gather: &IotlbGather) -> Result<(), SmmuError> {
        if !gather.has_unmapped() && !gather.tables_changed() {
            // Only new entries: the SMMU caches no invalid entries, so making
            // the writes visible is enough.
            crate::barrier::publish();
            return Ok(());
        }
        let leaf = !gather.tables_changed();
        let ril = self.features().ril;
        let granule = match tag {
            Tag::S1 { granule, .. } => granule,
            Tag::S2 { .. } => Granule::K4,
        };
        let gsize = 1u64 << granule.shift();
        let step = gather.min_page_size().unwrap_or(gsize).max(gsize);
        let per_page: u64 = gather.ranges().iter().map(|r| r.len().div_ceil(step)).sum();
        let whole = match tag {
            Tag::S1 { vmid, asid, .. } => Command::tlbi_nh_asid(vmid, asid),
            Tag::S2 { vmid, .. } => Command::tlbi_s12_vmall(vmid),
        };
        let mut q = self.cmdq.lock();
        let m = &self.mmio;
        let mut by_whole = !ril && per_page > u64::from(self.config.tlbi_page_threshold);
        if !by_whole {
            for r in gather.ranges() {
                if ril {
                    let Some(range) = TlbiRange::covering(r.len().div_ceil(gsize)) else {
                        by_whole = true;
                        break;
                    };
                    let c = match tag {
                        Tag::S1 { vmid, asid, .. } => Command::tlbi_nh_va_range_tg(
                            vmid,
                            asid,
                            r.start.0,
                            range,
                            granule.tlbi_tg(),
                            leaf,
                        ),
                        Tag::S2 { vmid, .. } => {
                            Command::tlbi_s2_ipa_range(vmid, r.start.0, range, leaf)
                        }
                    };
                    q.push(m, &c)?;
                } else {
                    let mut a = r.start.0 & !(step - 1);
                    while a < r.end.0 {
                        let c = match tag {
                            Tag::S1 { vmid, asid, .. } => Command::tlbi_nh_va(vmid, asid, a, leaf),
                            Tag::S2 { vmid, .. } => Command::tlbi_s2_ipa(vmid, a, leaf),
                        };
                        q.push(m, &c)?;
                        a += step;
                    }
                }
            }
        }
        if by_whole {
            q.push(m, &whole)?;
        }
        if let Tag::S2 { vmid, nested: true } = tag {
            // Combined stage-1+2 entries are not removed by TLBI_S2_IPA.
            q.push(m, &Command::tlbi_nh_all(vmid))?;
        }
        q.sync(m)
    }
}

fn s2_config<M: Mmio, A: FrameAllocator, T: FrameAllocator>(d: &S2Domain<'_, M, A, T>) -> S2Config {
    let fmt = d.table().format();
    S2Config {
        vmid: d.invalidator().vmid,
        ia_bits: fmt.ia_bits(),
        start_level: fmt.start_level(),
        oa_bits: iova_core::PtFormat::oa_bits(fmt),
        ttb: d.table().root().0,
    }
}

// SAFETY: `invalidate` returns Ok only after the SMMU completed a CMD_SYNC
// that follows TLBIs covering every gathered range (or the whole ASID), with
// Leaf = 0 whenever tables were removed, so no TLB or walk-cache entry for
// the ranges survives; the SMMU is the only walker of the table.
unsafe impl<M: Mmio, A: FrameAllocator> IotlbInvalidate for S1Inval<'_, M, A> {
    fn invalidate(&self, gather: &IotlbGather) -> Result<(), Error> {
        Ok(self.smmu.invalidate_tag(
            Tag::S1 {
                vmid: self.vmid.load(Ordering::Relaxed) as u16,
                asid: self.asid,
                granule: self.granule,
            },
            gather,
        )?)
    }
}

// SAFETY: as for `S1Inval`, with TLBI_S2_IPA / TLBI_S12_VMALL for the VMID
// (and TLBI_NH_ALL for combined entries when used nested).
unsafe impl<M: Mmio, A: FrameAllocator> IotlbInvalidate for S2Inval<'_, M, A> {
    fn invalidate(&self, gather: &IotlbGather) -> Result<(), Error> {
        Ok(self.smmu.invalidate_tag(
            Tag::S2 {
                vmid: self.vmid,
                nested: self.nested.load(Ordering::Relaxed) != 0,
            },
            gather,
        )?)
    }
}

impl<M: Mmio, A: FrameAllocator> Drop for S1Inval<'_, M, A> {
    /// With no stream attached, the ASID's TLB entries are invalidated and
    /// the CD and ASID returned. A domain dropped while attached leaks both
    /// (the SMMU may still read the CD), and so does a failed invalidation.
    fn drop(&mut self) {
        if self.attached() != 0 {
            return;
        }
        let vmid = self.vmid.load(Ordering::Relaxed) as u16;
        if self
            .smmu
            .submit(&[Command::tlbi_nh_asid(vmid, self.asid)])
            .is_ok()
        {
            // SAFETY: no STE points at the CD (none attached).
            unsafe { self.smmu.free_cd(self.cd) };
            self.smmu.asids.lock().free(self.asid);
        }
    }
}

impl<M: Mmio, A: FrameAllocator> Drop for S2Inval<'_, M, A> {
    fn drop(&mut self) {
        if self.attached() == 0
            && self
                .smmu
                .submit(&[Command::tlbi_s12_vmall(self.vmid)])
                .is_ok()
        {
            self.smmu.vmids.lock().free(self.vmid);
        }
    }
}

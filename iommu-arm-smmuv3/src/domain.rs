//! Domains: an iova-core page table plus this SMMU's invalidation for its
//! ASID (stage 1) or VMID (stage 2). Each implements
//! [`iova_core::IommuDomain`], so the whole two-step API runs on them.
//!
//! A flush issues, for every range the gather records: one range TLBI when
//! the SMMU has IDR3.RIL, else one TLBI per page; past the configured number
//! of per-page commands, one TLBI of the whole ASID (VMID) instead. Then one
//! CMD_SYNC for the batch. New mappings need no command (the SMMU does not
//! cache invalid entries), only a barrier so the walker sees them.
//!
//! # MSI doorbells
//!
//! On Arm a device's MSI is a DMA write to the interrupt controller's
//! doorbell (the GICv3 ITS's `GITS_TRANSLATER`), so it goes through the SMMU
//! like any other write and needs a translation. Put the doorbell in an
//! [`iova_core::msi::MsiWindow`] over the domain and program the device's MSI
//! address with what [`map_doorbell`](iova_core::msi::MsiWindow::map_doorbell)
//! returns. The window goes in the stage that the device's MSI address is an
//! input of:
//!
//! - an [`S1Domain`]: the window's IOVA. LPAE stage 1 cannot express
//!   write-only, so the doorbell page is readable too (as in Linux);
//! - an [`S2Domain`] (a hypervisor giving the device to a guest): the
//!   window's IPA; the page is write-only (S2AP = `0b10`), a read faults;
//! - nested ([`Smmu::attach_nested`]) with a guest-owned stage 1: the guest
//!   maps its MSI IOVA to the IPA where it sees its doorbell; the hypervisor
//!   places its window over the stage-2 domain at that IPA
//!   ([`MsiWindow::at`](iova_core::msi::MsiWindow::at) with the guest's
//!   doorbell page) and maps the real doorbell there. The combined access is
//!   write-only, because stage 2 is.
//!
//! `tests/msi.rs` walks a write to the doorbell IOVA through the fake SMMU in
//! all three and checks it reaches the doorbell.
//!
//! # Teardown
//!
//! A domain remembers the streams attached to it. Dropping it first makes
//! every stream that still points at it invalid again (CFGI + CMD_SYNC),
//! invalidates its ASID / VMID, and only then frees its page tables, context
//! descriptor and ID. If the SMMU does not complete those commands, the
//! memory is leaked instead: freeing it could let a device walk reused memory.

use core::mem::ManuallyDrop;
use core::ops::Deref;
use core::sync::atomic::{AtomicU32, Ordering};

use iova_core::formats::lpae::{Granule, LpaeS1, LpaeS2, MAIR};
use iova_core::{
    Error, FrameAllocator, IommuDomain, IotlbGather, IotlbInvalidate, Iova, PageTable,
    PageTableDomain, PhysAddr, Prot,
};
use spin::Mutex;

use crate::cache::SmmuCache;
use crate::cd::{Cd, CdConfig};
use crate::cmd::{Command, TlbiRange};
use crate::error::SmmuError;
use crate::regs::Mmio;
use crate::smmu::Smmu;
use crate::ste::{self, S2Config, Ste};

/// Streams one domain can be attached to at once.
pub const MAX_STREAMS: usize = 16;

/// A stage-1 page-table format whose tables the SMMU can walk as the context
/// descriptor describes them: VMSAv8-64 stage-1 descriptors with attribute
/// indices into [`MAIR`], at the granule the format's
/// [`granule_shift`](iova_core::PtFormat::granule_shift) names (CD.TG0 and
/// the TLBI granule follow from it).
///
/// [`LpaeS1`] is such a format at every granule. The trait is kept, rather
/// than accepting any [`PtFormat`](iova_core::PtFormat), because the engine's
/// other formats (x86-64, VT-d second level) have the same shape and would
/// type-check, and the SMMU would then walk their tables as LPAE. A wrapper
/// around [`LpaeS1`] (one that adds software bits, or a test's that drops the
/// access flag) implements it to say its descriptors keep that meaning.
pub trait S1Format: iova_core::PtFormat {}

impl S1Format for LpaeS1 {}

/// Stage-1 invalidation for one ASID, and the domain's context descriptor.
pub struct S1Inval<'s, M: Mmio, A: FrameAllocator> {
    smmu: &'s Smmu<M, A>,
    asid: u16,
    cd: PhysAddr,
    granule: Granule,
    /// VMID of the stage 2 this context is nested under (0: none).
    vmid: AtomicU32,
}

/// Stage-2 invalidation for one VMID.
pub struct S2Inval<'s, M: Mmio, A: FrameAllocator> {
    smmu: &'s Smmu<M, A>,
    vmid: u16,
    granule: Granule,
    /// Streams using this stage 2 under a stage-1 context (nested): their
    /// combined entries must go too.
    nested: AtomicU32,
}

impl<M: Mmio, A: FrameAllocator> S1Inval<'_, M, A> {
    /// The context descriptor's eight doublewords, as in memory.
    pub fn cd_words(&self) -> [u64; 8] {
        let p = self.smmu.frames.phys_to_virt(self.cd).cast::<u64>();
        let mut w = [0; 8];
        for (i, x) in w.iter_mut().enumerate() {
            // SAFETY: the CD frame is allocated (64 bytes) for as long as
            // the domain exists, and only the driver writes it.
            *x = unsafe { p.add(i).read_volatile() };
        }
        w
    }

    /// VMID of the stage 2 this context is nested under (0: none).
    pub(crate) fn nested_vmid(&self) -> u32 {
        self.vmid.load(Ordering::Relaxed)
    }

    /// The domain's ASID.
    pub fn asid(&self) -> u16 {
        self.asid
    }
    /// Physical address of the domain's context descriptor.
    pub fn cd(&self) -> PhysAddr {
        self.cd
    }
    /// The tables' granule.
    pub fn granule(&self) -> Granule {
        self.granule
    }
}

impl<M: Mmio, A: FrameAllocator> S2Inval<'_, M, A> {
    /// The domain's VMID.
    pub fn vmid(&self) -> u16 {
        self.vmid
    }
}

/// The StreamIDs attached to a domain.
struct Streams(Mutex<heapless::Vec<u32, MAX_STREAMS>>);

impl Streams {
    fn new() -> Self {
        Self(Mutex::new(heapless::Vec::new()))
    }

    /// Records `sid`, first forgetting streams that `still_ours` says were
    /// re-pointed elsewhere since.
    fn add(&self, sid: u32, still_ours: impl Fn(u32) -> bool) -> Result<(), SmmuError> {
        let mut v = self.0.lock();
        if v.contains(&sid) {
            return Ok(());
        }
        if v.is_full() {
            v.retain(|&s| still_ours(s));
        }
        v.push(sid).map_err(|_| SmmuError::StreamsFull)
    }

    fn remove(&self, sid: u32) {
        self.0.lock().retain(|&s| s != sid);
    }

    fn len(&self) -> usize {
        self.0.lock().len()
    }

    fn take(&self) -> heapless::Vec<u32, MAX_STREAMS> {
        core::mem::take(&mut *self.0.lock())
    }
}

/// A stage-1 domain: LPAE stage-1 tables (format `F`, 4 KiB granule by
/// default) from `T`, tagged with an ASID. Dereferences to the
/// [`PageTableDomain`] for its table and invalidator.
pub struct S1Domain<'s, M: Mmio, A: FrameAllocator, T: FrameAllocator, F: S1Format = LpaeS1> {
    inner: ManuallyDrop<PageTableDomain<F, T, S1Inval<'s, M, A>, SmmuCache>>,
    streams: Streams,
    /// (StreamID, SubstreamID) pairs whose CD-table slot holds this domain.
    substreams: Mutex<heapless::Vec<(u32, u32), MAX_STREAMS>>,
}

/// A stage-2 domain: LPAE stage-2 tables from `T`, tagged with a VMID.
/// Dereferences to the [`PageTableDomain`] for its table and invalidator.
pub struct S2Domain<'s, M: Mmio, A: FrameAllocator, T: FrameAllocator> {
    inner: ManuallyDrop<PageTableDomain<LpaeS2, T, S2Inval<'s, M, A>, SmmuCache>>,
    streams: Streams,
}

impl<'s, M: Mmio, A: FrameAllocator, T: FrameAllocator, F: S1Format> Deref
    for S1Domain<'s, M, A, T, F>
{
    type Target = PageTableDomain<F, T, S1Inval<'s, M, A>, SmmuCache>;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl<'s, M: Mmio, A: FrameAllocator, T: FrameAllocator> Deref for S2Domain<'s, M, A, T> {
    type Target = PageTableDomain<LpaeS2, T, S2Inval<'s, M, A>, SmmuCache>;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl<M: Mmio, A: FrameAllocator, T: FrameAllocator, F: S1Format> S1Domain<'_, M, A, T, F> {
    /// Streams attached now (with a single CD; see also
    /// [`attached_substreams`](Self::attached_substreams)).
    pub fn attached(&self) -> usize {
        self.streams.len()
    }

    /// (StreamID, SubstreamID) pairs attached now.
    pub fn attached_substreams(&self) -> usize {
        self.substreams.lock().len()
    }

    pub(crate) fn add_substream(&self, sid: u32, ssid: u32) -> Result<(), SmmuError> {
        let mut v = self.substreams.lock();
        if v.contains(&(sid, ssid)) {
            return Ok(());
        }
        if v.is_full() {
            let smmu = self.inner.invalidator().smmu;
            let ttb = self.inner.invalidator().cd_words()[1];
            v.retain(|&(s, ss)| smmu.substream_uses(s, ss, ttb));
        }
        v.push((sid, ssid)).map_err(|_| SmmuError::StreamsFull)
    }

    pub(crate) fn remove_substream(&self, sid: u32, ssid: u32) {
        self.substreams.lock().retain(|&p| p != (sid, ssid));
    }
}

impl<M: Mmio, A: FrameAllocator, T: FrameAllocator> S2Domain<'_, M, A, T> {
    /// Streams attached now.
    pub fn attached(&self) -> usize {
        self.streams.len()
    }
}

macro_rules! delegate_domain {
    ($ty:ty, $($gen:tt)*) => {
        impl<$($gen)*> IommuDomain for $ty {
            fn granule(&self) -> u64 {
                self.inner.granule()
            }
            fn map(
                &self,
                iova: Iova,
                pa: PhysAddr,
                len: u64,
                prot: Prot,
                gather: &mut IotlbGather,
            ) -> Result<(), Error> {
                self.inner.map(iova, pa, len, prot, gather)
            }
            fn unmap(&self, iova: Iova, len: u64, gather: &mut IotlbGather) -> Result<u64, Error> {
                self.inner.unmap(iova, len, gather)
            }
            fn flush(&self, gather: &mut IotlbGather) -> Result<(), Error> {
                self.inner.flush(gather)
            }
        }
    };
}
delegate_domain!(S1Domain<'_, M, A, T, F>, M: Mmio, A: FrameAllocator, T: FrameAllocator, F: S1Format);
delegate_domain!(S2Domain<'_, M, A, T>, M: Mmio, A: FrameAllocator, T: FrameAllocator);

enum Tag {
    S1 {
        vmid: u16,
        asid: u16,
        granule: Granule,
    },
    S2 {
        vmid: u16,
        nested: bool,
        granule: Granule,
    },
}

fn granule_offered(f: &crate::features::Features, g: Granule) -> bool {
    match g {
        Granule::K4 => f.granules.g4k,
        Granule::K16 => f.granules.g16k,
        Granule::K64 => f.granules.g64k,
    }
}

/// Whether `ste` is a stage-1 (or nested) entry using the CD at `cd`.
fn uses_cd(ste: &Ste, cd: PhysAddr) -> bool {
    ste.is_valid()
        && matches!(ste.config(), ste::CONFIG_S1 | ste::CONFIG_NESTED)
        && ste.cd_ptr() == cd.0
}

/// Whether `ste` is a stage-2 (or nested) entry walking the tables at `root`.
fn uses_s2(ste: &Ste, root: PhysAddr) -> bool {
    ste.is_valid()
        && matches!(ste.config(), ste::CONFIG_S2 | ste::CONFIG_NESTED)
        && ste.0[3] & ste::S2TTB_MASK == root.0 & ste::S2TTB_MASK
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

    /// A new stage-1 domain of format `fmt` (an [`LpaeS1`] of any granule the
    /// SMMU offers).
    pub fn s1_domain_with<T: FrameAllocator, F: S1Format>(
        &self,
        tables: T,
        fmt: F,
    ) -> Result<S1Domain<'_, M, A, T, F>, SmmuError> {
        let f = self.features();
        if !f.stage1 {
            return Err(SmmuError::StageUnsupported);
        }
        let granule =
            Granule::from_shift(fmt.granule_shift()).ok_or(SmmuError::GranuleUnsupported)?;
        if !granule_offered(f, granule) {
            return Err(SmmuError::GranuleUnsupported);
        }
        let oa = fmt.oa_bits();
        if oa > f.table_oas_bits() {
            return Err(SmmuError::BadGeometry);
        }
        let table = PageTable::with_cache(fmt, tables, self.cache)?;
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
        )
        .with_walk_attrs(self.maintains_caches());
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
        Ok(S1Domain {
            inner: ManuallyDrop::new(PageTableDomain::new(
                table,
                S1Inval {
                    smmu: self,
                    asid,
                    cd,
                    granule,
                    vmid: AtomicU32::new(0),
                },
            )),
            streams: Streams::new(),
            substreams: Mutex::new(heapless::Vec::new()),
        })
    }

    /// A new stage-2 domain with `ia_bits` of IPA (at most the OAS) and a
    /// 4 KiB granule, tables from `tables`. Its VMID's TLB entries are
    /// invalidated first.
    pub fn s2_domain<T: FrameAllocator>(
        &self,
        tables: T,
        ia_bits: u32,
    ) -> Result<S2Domain<'_, M, A, T>, SmmuError> {
        let fmt = LpaeS2::new(ia_bits, self.features().table_oas_bits())
            .map_err(|_| SmmuError::BadGeometry)?;
        self.s2_domain_with(tables, fmt)
    }

    /// A new stage-2 domain of format `fmt` (any granule the SMMU offers).
    pub fn s2_domain_with<T: FrameAllocator>(
        &self,
        tables: T,
        fmt: LpaeS2,
    ) -> Result<S2Domain<'_, M, A, T>, SmmuError> {
        let f = self.features();
        if !f.stage2 {
            return Err(SmmuError::StageUnsupported);
        }
        if !granule_offered(f, fmt.granule()) {
            return Err(SmmuError::GranuleUnsupported);
        }
        if iova_core::PtFormat::oa_bits(&fmt) > f.table_oas_bits()
            || fmt.ia_bits() > f.ias_s2_bits()
        {
            return Err(SmmuError::BadGeometry);
        }
        let table = PageTable::with_cache(fmt, tables, self.cache)?;
        let vmid = self.vmids.lock().alloc().ok_or(SmmuError::IdsExhausted)?;
        if let Err(e) = self.submit(&[Command::tlbi_s12_vmall(vmid)]) {
            self.vmids.lock().free(vmid);
            return Err(e);
        }
        Ok(S2Domain {
            inner: ManuallyDrop::new(PageTableDomain::new(
                table,
                S2Inval {
                    smmu: self,
                    vmid,
                    granule: fmt.granule(),
                    nested: AtomicU32::new(0),
                },
            )),
            streams: Streams::new(),
        })
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
        let cd = inval.cd;
        if self.uses_cd_table(sid) {
            // SubstreamIDs in use: attach_s1_ssid(sid, 0, ..) sets CD 0.
            return Err(SmmuError::Busy(sid));
        }
        domain
            .streams
            .add(sid, |s| self.ste(s).is_ok_and(|e| uses_cd(&e, cd)))?;
        if let Err(e) =
            self.install_ste(sid, &Ste::s1(cd.0).with_walk_attrs(self.maintains_caches()))
        {
            if !self.ste(sid).is_ok_and(|e| uses_cd(&e, cd)) {
                domain.streams.remove(sid);
            }
            return Err(e);
        }
        Ok(())
    }

    /// Points `sid` at a stage-2 domain.
    pub fn attach_s2<T: FrameAllocator>(
        &self,
        sid: u32,
        domain: &S2Domain<'_, M, A, T>,
    ) -> Result<(), SmmuError> {
        let root = domain.table().root();
        if self.uses_cd_table(sid) {
            return Err(SmmuError::Busy(sid));
        }
        domain
            .streams
            .add(sid, |s| self.ste(s).is_ok_and(|e| uses_s2(&e, root)))?;
        if let Err(e) = self.install_ste(
            sid,
            &Ste::s2(&s2_config(domain)).with_walk_attrs(self.maintains_caches()),
        ) {
            if !self.ste(sid).is_ok_and(|e| uses_s2(&e, root)) {
                domain.streams.remove(sid);
            }
            return Err(e);
        }
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
        if (v == 0 && s1.attached() != 0) || (v != 0 && v != u32::from(i2.vmid)) {
            return Err(SmmuError::BadGeometry);
        }
        let (cd, root) = (i1.cd, s2.table().root());
        if self.uses_cd_table(sid) {
            return Err(SmmuError::Busy(sid));
        }
        s1.streams
            .add(sid, |s| self.ste(s).is_ok_and(|e| uses_cd(&e, cd)))?;
        if let Err(e) = s2
            .streams
            .add(sid, |s| self.ste(s).is_ok_and(|e| uses_s2(&e, root)))
        {
            s1.streams.remove(sid);
            return Err(e);
        }
        i1.vmid.store(u32::from(i2.vmid), Ordering::Relaxed);
        i2.nested.fetch_add(1, Ordering::Relaxed);
        self.install_ste(
            sid,
            &Ste::nested(cd.0, &s2_config(s2)).with_walk_attrs(self.maintains_caches()),
        )
    }

    /// Detaches `sid` from a stage-1 domain: the STE becomes invalid again
    /// (default deny, reported).
    pub fn detach_s1<T: FrameAllocator, F: S1Format>(
        &self,
        sid: u32,
        domain: &S1Domain<'_, M, A, T, F>,
    ) -> Result<(), SmmuError> {
        if !uses_cd(&self.ste(sid)?, domain.invalidator().cd) {
            return Err(SmmuError::NotAttached(sid));
        }
        self.detach(sid)?;
        domain.streams.remove(sid);
        Ok(())
    }

    /// Detaches `sid` from a stage-2 domain (also a nested stream).
    pub fn detach_s2<T: FrameAllocator>(
        &self,
        sid: u32,
        domain: &S2Domain<'_, M, A, T>,
    ) -> Result<(), SmmuError> {
        if !uses_s2(&self.ste(sid)?, domain.table().root()) {
            return Err(SmmuError::NotAttached(sid));
        }
        self.detach(sid)?;
        domain.streams.remove(sid);
        Ok(())
    }

    /// Makes every stream in `streams` that `ours` recognises invalid.
    fn detach_all(&self, streams: &[u32], ours: impl Fn(&Ste) -> bool) -> bool {
        streams.iter().all(|&sid| match self.ste(sid) {
            Ok(ste) if ours(&ste) => self.detach(sid).is_ok(),
            Ok(_) => true,
            Err(_) => false,
        })
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
            Tag::S1 { granule, .. } | Tag::S2 { granule, .. } => granule,
        };
        let gsize = 1u64 << granule.shift();
        let step = gather.min_page_size().unwrap_or(gsize).max(gsize);
        let per_page: u64 = gather.ranges().iter().map(|r| r.len().div_ceil(step)).sum();
        let whole = match tag {
            Tag::S1 { vmid, asid, .. } => Command::tlbi_nh_asid(vmid, asid),
            Tag::S2 { vmid, .. } => Command::tlbi_s12_vmall(vmid),
        };
        let mut q = self.cmdq.lock();
        let m = self.hw();
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
                        Tag::S2 { vmid, .. } => Command::tlbi_s2_ipa_range_tg(
                            vmid,
                            r.start.0,
                            range,
                            granule.tlbi_tg(),
                            leaf,
                        ),
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
        if let Tag::S2 {
            vmid, nested: true, ..
        } = tag
        {
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
        granule: fmt.granule(),
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
                granule: self.granule,
            },
            gather,
        )?)
    }
}

impl<M: Mmio, A: FrameAllocator, T: FrameAllocator, F: S1Format> Drop for S1Domain<'_, M, A, T, F> {
    fn drop(&mut self) {
        let inval = self.inner.invalidator();
        let smmu = inval.smmu;
        let cd = inval.cd;
        let vmid = inval.vmid.load(Ordering::Relaxed) as u16;
        let asid = inval.asid;
        let streams = self.streams.take();
        let ttb = inval.cd_words()[1];
        let substreams = core::mem::take(&mut *self.substreams.lock());
        let quiet = smmu.detach_all(&streams, |s| uses_cd(s, cd))
            && substreams.iter().all(|&(sid, ssid)| {
                !smmu.substream_uses(sid, ssid, ttb)
                    || smmu.write_substream_cd(sid, ssid, None).is_ok()
            })
            && smmu.submit(&[Command::tlbi_nh_asid(vmid, asid)]).is_ok();
        if quiet {
            // SAFETY: no STE points at the CD any more (made invalid and
            // invalidated above), and the ASID's TLB entries are gone.
            unsafe { smmu.free_cd(cd) };
            smmu.asids.lock().free(asid);
            // SAFETY: dropped once, here; nothing walks the tables any more.
            unsafe { ManuallyDrop::drop(&mut self.inner) };
        } else {
            // A drop cannot return the error: say why the memory is kept.
            iova_core::warn_event!(
                "smmuv3: stage-1 domain (ASID {}) not torn down: its CD, tables and ASID are leaked",
                asid
            );
        }
    }
}

impl<M: Mmio, A: FrameAllocator, T: FrameAllocator> Drop for S2Domain<'_, M, A, T> {
    fn drop(&mut self) {
        let smmu = self.inner.invalidator().smmu;
        let vmid = self.inner.invalidator().vmid;
        let root = self.inner.table().root();
        let streams = self.streams.take();
        let quiet = smmu.detach_all(&streams, |s| uses_s2(s, root))
            && smmu.submit(&[Command::tlbi_s12_vmall(vmid)]).is_ok();
        if quiet {
            smmu.vmids.lock().free(vmid);
            // SAFETY: dropped once, here; no STE walks the tables any more.
            unsafe { ManuallyDrop::drop(&mut self.inner) };
        } else {
            // A drop cannot return the error: say why the memory is kept.
            iova_core::warn_event!(
                "smmuv3: stage-2 domain (VMID {}) not torn down: its tables and VMID are leaked",
                vmid
            );
        }
    }
}

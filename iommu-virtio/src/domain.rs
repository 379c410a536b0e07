//! A virtio-iommu domain as an [`iova_core::IommuDomain`]: map by request.
//!
//! There are no page tables: `map` queues a MAP request and `unmap` an UNMAP,
//! in software, without touching the device; `flush` sends the whole batch
//! with one notification ([`VirtioIommu::run`]) and waits for every reply.
//! So the two-step API's `link`...`link` + `sync` costs one notification per
//! sync, whatever the number of pieces.
//!
//! - **One MAP per map.** Each `map` (one link of the two-step API) becomes
//!   exactly one MAP request, as large as the link. The device fails an
//!   UNMAP that would split one of its mappings (RANGE), so a MAP may cover
//!   only what a single unmap removes: two maps are never merged, even when
//!   they continue each other in IOVA and physical address, because they may
//!   belong to different IOVA states, or be unlinked one at a time. The
//!   domain remembers every mapping it asked for and refuses an unmap that
//!   would split one itself, before the device sees it
//!   ([`Error::PartialUnmap`]); the two-step API never asks for one.
//! - **Merged UNMAPs.** An unmap removes every mapping inside its range, so
//!   the UNMAPs of adjacent ranges (of one state or several) are sent as one.
//! - **Never dropped.** When the software batch is full, `map`/`unmap` send it
//!   first (a flush in the middle) and go on; when the queue is smaller than
//!   the batch, `run` sends it in queue-sized parts.
//! - **Retry.** A request the device rejects stays queued, and `flush`
//!   returns the first rejection ([`iova_core::DeviceError::RequestFailed`]
//!   with the status); the next flush sends it again. An unmap of a mapping
//!   whose MAP has not succeeded yet simply drops that MAP.
//! - **Teardown.** Dropping a domain removes what it left on the device and
//!   detaches its endpoints (see [`VirtioDomain`]).

use iova_core::{Error, IommuDomain, IotlbGather, Iova, PhysAddr, Prot};
use virtio_drivers::Hal;
use virtio_drivers::transport::Transport;

use crate::driver::{Request, VirtioIommu};
use crate::error::{BadArgument, VirtioIommuError};
use crate::features::Features;
use crate::wire;

/// Requests a domain queues, by default, before it sends them on its own
/// (`P`). 128 is what one notification carries on a 256-entry queue, QEMU's
/// maximum.
pub const PENDING: usize = 128;

/// One mapping the device has (or will have, once its MAP succeeds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    start: u64,
    /// Exclusive.
    end: u64,
    pa: u64,
    flags: u32,
    /// Its MAP is still in `pending` (not acknowledged by the device).
    queued: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// `[start, end)` -> `pa`.
    Map {
        start: u64,
        end: u64,
        pa: u64,
        flags: u32,
    },
    /// `[start, end)`.
    Unmap { start: u64, end: u64 },
}

struct State<const M: usize, const P: usize> {
    records: heapless::Vec<Record, M>,
    pending: heapless::Vec<Pending, P>,
    /// Scratch for `submit`, kept here rather than on the stack.
    requests: heapless::Vec<Request, P>,
    results: heapless::Vec<Result<(), VirtioIommuError>, P>,
}

/// A domain on a virtio-iommu, keeping up to `M` mappings and queueing up to
/// `P` requests between flushes.
///
/// The domain ID is the caller's choice (inside [`Geometry`](crate::Geometry)'s
/// domain range); one `VirtioDomain` holds an ID at a time (another
/// [`new`](Self::new) of it fails with [`VirtioIommuError::DomainInUse`]).
///
/// # Teardown
///
/// The driver records every attach and detach made through it, so a domain
/// knows its endpoints: those attached to its ID
/// ([`attached_endpoints`](Self::attached_endpoints)). Dropping the domain
/// leaves nothing of it on the device: MAPs still queued are dropped unsent;
/// if the device may hold a mapping of the domain, one UNMAP of the whole
/// input range removes them; then each endpoint attached to it is detached
/// (up to [`TEARDOWN_BATCH`](crate::driver::TEARDOWN_BATCH) requests per
/// notification, every wait bounded). So no endpoint keeps translating
/// through an ID nobody owns, and a later domain of the same ID starts
/// empty. Drop cannot return an error: when a request fails or times out,
/// the failure is counted
/// ([`CounterSnapshot::teardown_failures`](crate::CounterSnapshot::teardown_failures)),
/// the ID stays reserved and the next `new` of it finishes the teardown
/// first. ATTACH and DETACH sent with [`VirtioIommu::run`] bypass the record.
pub struct VirtioDomain<
    'a,
    H: Hal,
    T: Transport,
    const Q: usize = 256,
    const M: usize = 512,
    const P: usize = PENDING,
> {
    iommu: &'a VirtioIommu<H, T, Q>,
    id: u32,
    state: spin::Mutex<State<M, P>>,
}

impl<H: Hal, T: Transport, const Q: usize, const M: usize, const P: usize> core::fmt::Debug
    for VirtioDomain<'_, H, T, Q, M, P>
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VirtioDomain")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn flags_of(prot: Prot, mmio_ok: bool) -> Result<u32, VirtioIommuError> {
    if !prot.grants_access() {
        return Err(VirtioIommuError::InvalidArgument(BadArgument::NoAccess));
    }
    let mut f = 0;
    if prot.contains(Prot::READ) {
        f |= wire::MAP_F_READ;
    }
    if prot.contains(Prot::WRITE) {
        f |= wire::MAP_F_WRITE;
    }
    if prot.contains(Prot::MMIO) {
        if !mmio_ok {
            return Err(VirtioIommuError::NotNegotiated(Features::MMIO.bits()));
        }
        f |= wire::MAP_F_MMIO;
    }
    Ok(f)
}

impl<'a, H: Hal, T: Transport + Send, const Q: usize, const M: usize, const P: usize>
    VirtioDomain<'a, H, T, Q, M, P>
{
    /// Domain `id` on `iommu` (the device creates it at the first attach).
    ///
    /// # Errors
    ///
    /// [`VirtioIommuError::OutOfRange`] for an ID outside the device's
    /// domain range; [`VirtioIommuError::DomainInUse`] while another
    /// `VirtioDomain` holds `id`; [`VirtioIommuError::StorageFull`] when the
    /// driver tracks [`MAX_DOMAINS`](crate::driver::MAX_DOMAINS) IDs already.
    /// If an earlier domain of `id` was dropped without its teardown
    /// completing, `new` finishes it first and fails with that teardown's
    /// error if it still does not complete.
    pub fn new(iommu: &'a VirtioIommu<H, T, Q>, id: u32) -> Result<Self, VirtioIommuError> {
        iommu.check_domain(id)?;
        iommu.claim_domain(id)?;
        Ok(Self {
            iommu,
            id,
            state: spin::Mutex::new(State {
                records: heapless::Vec::new(),
                pending: heapless::Vec::new(),
                requests: heapless::Vec::new(),
                results: heapless::Vec::new(),
            }),
        })
    }

    /// The domain ID.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The device.
    pub fn iommu(&self) -> &'a VirtioIommu<H, T, Q> {
        self.iommu
    }

    /// Attaches `endpoint` (moving it from any other domain).
    pub fn attach(&self, endpoint: u32) -> Result<(), VirtioIommuError> {
        self.iommu.attach(endpoint, self.id)
    }

    /// Detaches `endpoint`.
    pub fn detach(&self, endpoint: u32) -> Result<(), VirtioIommuError> {
        self.iommu.detach(endpoint, self.id)
    }

    /// How many endpoints are attached to the domain (through the driver's
    /// [`attach`](VirtioIommu::attach), this domain's or not), which its drop
    /// detaches.
    pub fn attached_endpoints(&self) -> usize {
        self.iommu.endpoints_in(self.id)
    }

    /// How many mappings the domain records (acknowledged or queued).
    pub fn mappings(&self) -> usize {
        self.state.lock().records.len()
    }

    /// How many requests wait for the next flush.
    pub fn pending(&self) -> usize {
        self.state.lock().pending.len()
    }

    fn check_range(&self, iova: u64, pa: u64, len: u64) -> Result<u64, VirtioIommuError> {
        let g = self.iommu.geometry();
        if len == 0 {
            return Err(VirtioIommuError::InvalidArgument(BadArgument::ZeroLength));
        }
        let end = iova
            .checked_add(len)
            .ok_or(VirtioIommuError::InvalidArgument(BadArgument::Overflow))?;
        pa.checked_add(len)
            .ok_or(VirtioIommuError::InvalidArgument(BadArgument::Overflow))?;
        let gm = g.granule - 1;
        if iova & gm != 0 || pa & gm != 0 || len & gm != 0 {
            return Err(VirtioIommuError::InvalidArgument(BadArgument::Misaligned));
        }
        if iova < g.input_start || end - 1 > g.input_end {
            return Err(VirtioIommuError::OutOfRange);
        }
        Ok(end)
    }

    /// Sends the queued requests; keeps the ones the device rejected.
    fn submit(&self, st: &mut State<M, P>) -> Result<(), VirtioIommuError> {
        if st.pending.is_empty() {
            return Ok(());
        }
        let State {
            records,
            pending,
            requests,
            results,
        } = st;
        requests.clear();
        results.clear();
        for p in pending.iter() {
            let r = match *p {
                Pending::Map {
                    start,
                    end,
                    pa,
                    flags,
                } => Request::Map {
                    domain: self.id,
                    start,
                    end: end - 1,
                    phys: pa,
                    flags,
                },
                Pending::Unmap { start, end } => Request::Unmap {
                    domain: self.id,
                    start,
                    end: end - 1,
                },
            };
            // Same capacity as `pending`: neither push can fail.
            let _ = requests.push(r);
            let _ = results.push(Ok(()));
        }
        self.iommu.run(requests, results)?;
        let mut first_error = None;
        let mut i = 0;
        pending.retain(|p| {
            let r = results[i];
            i += 1;
            match (r, p) {
                (Ok(()), Pending::Map { start, .. }) => {
                    if let Ok(at) = records.binary_search_by_key(start, |r| r.start) {
                        records[at].queued = false;
                    }
                    false
                }
                (Ok(()), Pending::Unmap { .. }) => false,
                (Err(e), _) => {
                    first_error.get_or_insert(e);
                    true
                }
            }
        });
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn push(&self, st: &mut State<M, P>, p: Pending) -> Result<(), VirtioIommuError> {
        if st.pending.is_full() {
            self.submit(st)?;
        }
        st.pending
            .push(p)
            .map_err(|_| VirtioIommuError::StorageFull)
    }

    fn do_map(&self, iova: u64, pa: u64, len: u64, prot: Prot) -> Result<(), VirtioIommuError> {
        let end = self.check_range(iova, pa, len)?;
        let flags = flags_of(prot, self.iommu.features().contains(Features::MMIO))?;
        let mut st = self.state.lock();
        let idx = st.records.partition_point(|r| r.start < iova);
        let prev_overlaps = idx > 0 && st.records[idx - 1].end > iova;
        let next_overlaps = st.records.get(idx).is_some_and(|r| r.start < end);
        if prev_overlaps || next_overlaps {
            return Err(VirtioIommuError::AlreadyMapped);
        }
        if st.records.is_full() {
            return Err(VirtioIommuError::StorageFull);
        }
        self.push(
            &mut st,
            Pending::Map {
                start: iova,
                end,
                pa,
                flags,
            },
        )?;
        // Not full (checked above, and `push` does not add records).
        let _ = st.records.insert(
            idx,
            Record {
                start: iova,
                end,
                pa,
                flags,
                queued: true,
            },
        );
        Ok(())
    }

    fn do_unmap(&self, iova: u64, len: u64) -> Result<u64, VirtioIommuError> {
        let end = self.check_range(iova, 0, len)?;
        let mut st = self.state.lock();
        let first = st.records.partition_point(|r| r.end <= iova);
        let last = first + st.records[first..].partition_point(|r| r.start < end);
        let hit = &st.records[first..last];
        if hit.iter().any(|r| r.start < iova || r.end > end) {
            return Err(VirtioIommuError::SplitsMapping);
        }
        // Room for one more request first, so a failure changes nothing. This
        // may send queued MAPs of this very range, so what is live is only
        // known after it.
        if st.pending.is_full() {
            self.submit(&mut st)?;
            if st.pending.is_full() {
                return Err(VirtioIommuError::StorageFull);
            }
        }
        // Every mapping inside [iova, end) goes, so one UNMAP from the first
        // to the last live one covers them all (the device skips holes).
        let hit = &st.records[first..last];
        let live_lo = hit.iter().find(|r| !r.queued).map(|r| r.start);
        let live_hi = hit.iter().rev().find(|r| !r.queued).map(|r| r.end);
        let mut bytes = 0;
        for i in first..last {
            let r = st.records[i];
            bytes += r.end - r.start;
            if r.queued {
                // Its MAP never reached the device (or failed): drop it.
                st.pending
                    .retain(|p| !matches!(p, Pending::Map { start, .. } if *start == r.start));
            }
        }
        if let (Some(lo), Some(hi)) = (live_lo, live_hi) {
            match st.pending.last_mut() {
                Some(Pending::Unmap { end: e, .. }) if *e == lo => *e = hi,
                // Not full (made sure above; dropping MAPs only frees more).
                _ => {
                    let _ = st.pending.push(Pending::Unmap { start: lo, end: hi });
                }
            }
        }
        let removed = last - first;
        let n = st.records.len();
        st.records.copy_within(last..n, first);
        st.records.truncate(n - removed);
        Ok(bytes)
    }

    /// Sends everything queued with one notification and waits for the
    /// replies (what [`IommuDomain::flush`] does, without a gather).
    pub fn sync(&self) -> Result<(), VirtioIommuError> {
        let mut st = self.state.lock();
        self.submit(&mut st)
    }
}

impl<H: Hal, T: Transport + Send, const Q: usize, const M: usize, const P: usize> IommuDomain
    for VirtioDomain<'_, H, T, Q, M, P>
{
    fn granule(&self) -> u64 {
        self.iommu.geometry().granule
    }

    fn map(
        &self,
        iova: Iova,
        pa: PhysAddr,
        len: u64,
        prot: Prot,
        gather: &mut IotlbGather,
    ) -> Result<(), Error> {
        self.do_map(iova.0, pa.0, len, prot)?;
        gather.add_mapped(iova, len);
        Ok(())
    }

    fn unmap(&self, iova: Iova, len: u64, gather: &mut IotlbGather) -> Result<u64, Error> {
        let bytes = self.do_unmap(iova.0, len)?;
        if bytes > 0 {
            gather.add_unmapped(iova, len, self.granule());
        }
        Ok(bytes)
    }

    fn flush(&self, gather: &mut IotlbGather) -> Result<(), Error> {
        self.sync()?;
        gather.clear_ranges();
        Ok(())
    }
}

impl<H: Hal, T: Transport, const Q: usize, const M: usize, const P: usize> Drop
    for VirtioDomain<'_, H, T, Q, M, P>
{
    /// Tears the domain down on the device (see the type's documentation):
    /// MAPs still queued are dropped unsent; one UNMAP of the whole input
    /// range goes out if the device may hold a mapping of the domain, then a
    /// DETACH per attached endpoint, each wait bounded by the driver's
    /// [`WaitBudget`](crate::WaitBudget). Drop cannot return an error: a
    /// teardown that does not complete is counted
    /// ([`CounterSnapshot::teardown_failures`](crate::CounterSnapshot::teardown_failures)),
    /// logged (features `log`, `defmt`), and the ID stays reserved.
    fn drop(&mut self) {
        let st = self.state.get_mut();
        let unmap = !st.records.is_empty()
            || st
                .pending
                .iter()
                .any(|p| matches!(p, Pending::Unmap { .. }));
        self.iommu.release_domain(self.id, unmap);
    }
}

//! A fake virtio-iommu device on a host thread, and a host [`Hal`], for tests
//! (feature `fakes`).
//!
//! [`FakeIommu`] models the device as the specification describes it: it
//! reads the split virtqueues from memory (the "physical" addresses are host
//! pointers, see [`HostHal`]), keeps endpoints, domains and their mappings,
//! answers every request with the status the specification asks for
//! (including RANGE for an UNMAP that would split a mapping, NOENT for an
//! unknown domain, INVAL for a bad flag), answers PROBE with the endpoint's
//! reserved regions, and posts faults on the event queue when
//! [`FakeIommu::dma`] finds no translation. It can also misbehave on demand
//! ([`Misbehave`]): stay silent, report short used lengths, write undefined
//! status codes, return buffers it was never given, keep event buffers,
//! answer a batch out of order. [`HostHal`] can be given an allocation
//! budget ([`HostHal::limit_dma`]) to make DMA memory run out.
//!
//! The driver reaches the device through [`FakeTransport`]
//! ([`FakeIommu::new`]), or through the crate's virtio-PCI transport over
//! the device's PCI registers ([`FakeIommu::new_pci`]: a
//! [`FakePciFunction`] for its config space and a [`FakeBar`], an
//! [`Mmio`] block that decodes each register at its own width as QEMU does).
//! Both faces share the device's state and behaviour.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering, fence};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::vec::Vec;

use iova_core::hw::{Mmio, MmioError, Width, check_access};
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{BufferDirection, Error as VirtioError, Hal, PAGE_SIZE, PhysAddr};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::driver::{DriverConfig, WaitBudget};
use crate::features::Features;
use crate::wire;

/// A [`Hal`] for host tests: DMA memory from the heap, "physical" address =
/// the host pointer, so [`FakeIommu`]'s thread can follow it.
///
/// Allocation failures can be injected per thread (the driver allocates on
/// the caller's thread, and tests run in parallel): see
/// [`HostHal::limit_dma`].
#[derive(Debug)]
pub struct HostHal;

thread_local! {
    /// Allocations this thread may still make (`None`: no limit).
    static DMA_BUDGET: Cell<Option<usize>> = const { Cell::new(None) };
    /// Calls of `dma_alloc` on this thread, failed ones included.
    static DMA_CALLS: Cell<usize> = const { Cell::new(0) };
}

/// A live DMA region: the thread that allocated it, its memory and pages.
struct Region(std::thread::ThreadId, NonNull<u8>, usize);

// SAFETY: the pointer is only dereferenced by `dma_dealloc` and
// `free_leaked`, which own the region once it is taken out of the table.
unsafe impl Send for Region {}

/// Every live region, by address. One table for all threads, so that a
/// region freed on another thread than its allocator's leaves it too.
static DMA_REGIONS: Mutex<BTreeMap<usize, Region>> = Mutex::new(BTreeMap::new());

fn regions() -> MutexGuard<'static, BTreeMap<usize, Region>> {
    DMA_REGIONS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl HostHal {
    /// Lets this thread make `allocations` more `dma_alloc` calls succeed,
    /// then fail (return address 0); `None` removes the limit.
    pub fn limit_dma(allocations: Option<usize>) {
        DMA_BUDGET.with(|b| b.set(allocations));
    }

    /// DMA regions allocated on this thread and not freed yet (by any thread).
    pub fn dma_live() -> isize {
        let me = std::thread::current().id();
        regions().values().filter(|r| r.0 == me).count() as isize
    }

    /// `dma_alloc` calls on this thread so far, failed ones included.
    pub fn dma_calls() -> usize {
        DMA_CALLS.with(Cell::get)
    }

    /// Frees every region this thread allocated and nobody freed: the memory
    /// a driver leaks on purpose when its device never completes a reset.
    /// Tests call it after checking the leak, so that leak checkers (Miri)
    /// still see every other one. Returns how many regions it freed.
    ///
    /// # Safety
    ///
    /// Nothing may use those regions any more: the driver that leaked them is
    /// gone and the fake device that could reach them is dropped.
    pub unsafe fn free_leaked() -> usize {
        let me = std::thread::current().id();
        let mine: Vec<Region> = {
            let mut all = regions();
            let addrs: Vec<usize> = all
                .iter()
                .filter(|(_, r)| r.0 == me)
                .map(|(&a, _)| a)
                .collect();
            addrs.iter().filter_map(|a| all.remove(a)).collect()
        };
        for Region(_, p, pages) in &mine {
            let layout = Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE).unwrap();
            // SAFETY: allocated by `dma_alloc` with this layout and never
            // freed; the caller vouches nothing uses it.
            unsafe { dealloc(p.as_ptr(), layout) };
        }
        mine.len()
    }
}

// SAFETY: `dma_alloc` returns zeroed, page-aligned heap memory that nothing
// else uses until `dma_dealloc`; shared buffers are identity "mapped".
unsafe impl Hal for HostHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        DMA_CALLS.with(|c| c.set(c.get() + 1));
        let exhausted = DMA_BUDGET.with(|b| match b.get() {
            Some(0) => true,
            Some(n) => {
                b.set(Some(n - 1));
                false
            }
            None => false,
        });
        if exhausted {
            return (0, NonNull::dangling());
        }
        let Ok(layout) = Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE) else {
            return (0, NonNull::dangling());
        };
        // SAFETY: the layout has a non-zero size (pages >= 1 for our callers).
        let p = unsafe { alloc_zeroed(layout) };
        match NonNull::new(p) {
            Some(p) => {
                let owner = std::thread::current().id();
                regions().insert(p.as_ptr() as usize, Region(owner, p, pages));
                (p.as_ptr() as PhysAddr, p)
            }
            None => (0, NonNull::dangling()),
        }
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        // Out of the table first: once freed, the address may be handed out
        // again to another thread.
        regions().remove(&(vaddr.as_ptr() as usize));
        let layout = Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE).unwrap();
        // SAFETY: allocated by `dma_alloc` with the same layout.
        unsafe { dealloc(vaddr.as_ptr(), layout) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).unwrap_or(NonNull::dangling())
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr().cast::<u8>() as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// Ways the fake device can misbehave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Misbehave {
    /// Never take requests off the queue (a device that does not answer).
    pub silent: bool,
    /// Report this used length for every reply instead of the real one.
    pub used_len: Option<u32>,
    /// Write this status instead of the real one (the request still acts).
    pub status: Option<u8>,
    /// Answer every request with this status without acting on it (a device
    /// that refuses, e.g. NOMEM).
    pub reject: Option<u8>,
    /// Put this descriptor index on the used ring instead of the real head.
    pub used_id: Option<u32>,
    /// Change the config generation at every read of it.
    pub unstable_generation: bool,
    /// Never accept the driver's features (FEATURES_OK does not stick).
    pub reject_features: bool,
    /// Never complete a reset (the status keeps reading non-zero).
    pub stuck_reset: bool,
    /// With `stuck_reset`: how many resets still complete before they stick
    /// (0: from the first), e.g. 1 to let the driver's bring-up start and
    /// then fail the reset it does when giving up.
    pub resets_before_stuck: u32,
    /// Take event buffers for faults but never return them (the used ring
    /// of the event queue never moves); once all are taken, faults are
    /// dropped as with no buffer.
    pub hold_events: bool,
    /// Handle every request on the queue, then return them in reverse order
    /// (out-of-order completion within one batch, which the specification
    /// allows).
    pub reverse_replies: bool,
    /// Put every reply on the used ring twice (a device returning a buffer
    /// it has already returned).
    pub duplicate_used: bool,
}

/// What the fake did with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handled {
    /// The request type byte.
    pub kind: u8,
    /// The status written.
    pub status: u8,
    /// For MAP/UNMAP: the range `[start, end]`.
    pub range: Option<(u64, u64)>,
}

/// One mapping of a fake domain, `[start, end]` -> `phys`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeMapping {
    /// First IOVA.
    pub start: u64,
    /// Last IOVA (inclusive).
    pub end: u64,
    /// Physical address of `start`.
    pub phys: u64,
    /// `MAP_F_*`.
    pub flags: u32,
}

#[derive(Debug, Default)]
struct Domain {
    bypass: bool,
    endpoints: BTreeSet<u32>,
    maps: BTreeMap<u64, FakeMapping>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Queue {
    size: u16,
    desc: u64,
    driver: u64,
    device: u64,
    ready: bool,
    last_avail: u16,
    used_idx: u16,
}

#[derive(Debug)]
struct State {
    status: u8,
    device_features: u64,
    driver_features: u64,
    max_queue: [u16; 2],
    queues: [Queue; 2],
    config: wire::Config,
    generation: u32,
    pending: [bool; 2],
    stop: bool,
    endpoints: BTreeMap<u32, Vec<ResvRegion>>,
    attached: BTreeMap<u32, u32>,
    domains: BTreeMap<u32, Domain>,
    misbehave: Misbehave,
    handled: Vec<Handled>,
    notifications: [u64; 2],
    faults_dropped: u64,
    held_events: u16,
    resets_done: u32,
    bypass_writes: u32,
    pci: PciSelects,
}

/// The selector registers of the virtio-PCI common configuration.
#[derive(Debug, Default, Clone, Copy)]
struct PciSelects {
    device_feature: u32,
    driver_feature: u32,
    queue: u16,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

/// A reserved region of a fake endpoint: `(subtype, start, end)`, inclusive.
pub type ResvRegion = (u8, u64, u64);

/// Builds a [`FakeIommu`].
#[derive(Debug, Clone)]
pub struct FakeConfig {
    /// Offered features.
    pub features: Features,
    /// `page_size_mask`.
    pub page_size_mask: u64,
    /// `input_range` (inclusive).
    pub input_range: (u64, u64),
    /// `domain_range` (inclusive).
    pub domain_range: (u32, u32),
    /// `probe_size`.
    pub probe_size: u32,
    /// Initial `bypass`. Only a device that offers `BYPASS_CONFIG` looks at
    /// it (see [`FakeIommu::dma`]).
    pub bypass: u8,
    /// Largest queue size.
    pub max_queue: u16,
    /// Endpoints behind the IOMMU and their reserved regions
    /// `(subtype, start, end)`.
    pub endpoints: Vec<(u32, Vec<ResvRegion>)>,
}

impl Default for FakeConfig {
    /// What QEMU 10.0's virtio-iommu-pci offers on q35, with one endpoint
    /// 0x10 whose MSI doorbell is 0xfee00000-0xfeefffff.
    fn default() -> Self {
        Self {
            features: Features::from_bits_retain(0x0000_0101_3000_0077),
            page_size_mask: !0xfff,
            input_range: (0, 0x7f_ffff_ffff),
            domain_range: (0, u32::MAX),
            probe_size: 512,
            bypass: 1,
            max_queue: 256,
            endpoints: vec![(0x10, vec![(wire::RESV_MEM_T_MSI, 0xfee0_0000, 0xfeef_ffff)])],
        }
    }
}

/// The fake device. Dropping it stops its thread.
pub struct FakeIommu {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FakeIommu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeIommu").finish_non_exhaustive()
    }
}

/// The transport half of a [`FakeIommu`], handed to the driver.
pub struct FakeTransport {
    shared: Arc<Shared>,
}

impl FakeIommu {
    /// A device configured as `config`, with its thread running, and the
    /// transport to hand the driver.
    pub fn new(config: FakeConfig) -> (Self, FakeTransport) {
        let (me, shared) = Self::start(config);
        (me, FakeTransport { shared })
    }

    /// The same device behind a modern virtio-PCI function, laid out as
    /// QEMU's virtio-iommu-pci: its config space and its BAR 4 registers,
    /// for [`VirtioPciTransport::from_bars`](crate::transport::pci::VirtioPciTransport::from_bars).
    pub fn new_pci(config: FakeConfig) -> (Self, FakePciFunction) {
        let (me, shared) = Self::start(config);
        (me, FakePciFunction { shared })
    }

    fn start(config: FakeConfig) -> (Self, Arc<Shared>) {
        let state = State {
            status: 0,
            device_features: config.features.bits(),
            driver_features: 0,
            max_queue: [config.max_queue; 2],
            queues: [Queue::default(); 2],
            config: wire::Config {
                page_size_mask: config.page_size_mask.into(),
                input_start: config.input_range.0.into(),
                input_end: config.input_range.1.into(),
                domain_start: config.domain_range.0.into(),
                domain_end: config.domain_range.1.into(),
                probe_size: config.probe_size.into(),
                bypass: config.bypass,
                reserved: [0; 3],
            },
            generation: 0,
            pending: [false; 2],
            stop: false,
            endpoints: config.endpoints.into_iter().collect(),
            attached: BTreeMap::new(),
            domains: BTreeMap::new(),
            misbehave: Misbehave::default(),
            handled: Vec::new(),
            notifications: [0; 2],
            faults_dropped: 0,
            held_events: 0,
            resets_done: 0,
            bypass_writes: 0,
            pci: PciSelects::default(),
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            wake: Condvar::new(),
        });
        let s = shared.clone();
        let thread = std::thread::spawn(move || device_thread(&s));
        (
            Self {
                shared: shared.clone(),
                thread: Some(thread),
            },
            shared,
        )
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap()
    }

    /// Makes `queue` (0: requests, 1: events) offer at most `size` entries
    /// (0: the queue does not exist); call it before the driver starts.
    pub fn set_max_queue_size(&self, queue: u16, size: u16) {
        if let Some(m) = self.lock().max_queue.get_mut(usize::from(queue)) {
            *m = size;
        }
    }

    /// Event buffers the device has taken and not returned (see
    /// [`Misbehave::hold_events`]).
    pub fn held_events(&self) -> u16 {
        self.lock().held_events
    }

    /// Changes how the device misbehaves from now on.
    pub fn misbehave(&self, m: Misbehave) {
        self.lock().misbehave = m;
    }

    /// Every request handled so far, in order.
    pub fn handled(&self) -> Vec<Handled> {
        self.lock().handled.clone()
    }

    /// Request-queue and event-queue notifications received.
    pub fn notifications(&self) -> [u64; 2] {
        self.lock().notifications
    }

    /// The device's `bypass` config byte.
    pub fn bypass(&self) -> u8 {
        self.lock().config.bypass
    }

    /// How many times the driver wrote `bypass`.
    pub fn bypass_writes(&self) -> u32 {
        self.lock().bypass_writes
    }

    /// The driver's status byte.
    pub fn status(&self) -> u8 {
        self.lock().status
    }

    /// Features the driver accepted.
    pub fn driver_features(&self) -> Features {
        Features::from_bits_retain(self.lock().driver_features)
    }

    /// The mappings of `domain`, or `None` if it does not exist.
    pub fn mappings(&self, domain: u32) -> Option<Vec<FakeMapping>> {
        self.lock()
            .domains
            .get(&domain)
            .map(|d| d.maps.values().copied().collect())
    }

    /// The domain `endpoint` is attached to.
    pub fn domain_of(&self, endpoint: u32) -> Option<u32> {
        self.lock().attached.get(&endpoint).copied()
    }

    /// Faults lost because no event buffer was available.
    pub fn faults_dropped(&self) -> u64 {
        self.lock().faults_dropped
    }

    /// A DMA by `endpoint` at `iova`: the physical address it reaches, or
    /// `None` after posting the fault the device reports.
    ///
    /// An endpoint attached to no domain bypasses translation as the
    /// specification's "bypass mode" says: when the device offers
    /// `BYPASS_CONFIG` and `bypass` is 1 (whether or not the driver accepted
    /// `BYPASS_CONFIG`: the initial value holds then), or when the driver
    /// accepted `BYPASS`. Otherwise its DMA faults.
    pub fn dma(&self, endpoint: u32, iova: u64, write: bool) -> Option<u64> {
        let mut s = self.lock();
        let need = if write {
            wire::MAP_F_WRITE
        } else {
            wire::MAP_F_READ
        };
        let access = if write {
            wire::FAULT_F_WRITE
        } else {
            wire::FAULT_F_READ
        };
        let fault = match s.attached.get(&endpoint).and_then(|d| s.domains.get(d)) {
            None => {
                if s.unattached_bypass() {
                    return Some(iova);
                }
                let reason = if s.endpoints.contains_key(&endpoint) {
                    wire::FAULT_R_DOMAIN
                } else {
                    wire::FAULT_R_UNKNOWN
                };
                (reason, wire::FAULT_F_ADDRESS)
            }
            Some(d) if d.bypass => return Some(iova),
            Some(d) => match d.maps.range(..=iova).next_back().map(|(_, m)| *m) {
                Some(m) if iova <= m.end && m.flags & need != 0 => {
                    return Some(m.phys + (iova - m.start));
                }
                // A permission fault reports the access; a missing mapping does not.
                Some(m) if iova <= m.end => (wire::FAULT_R_MAPPING, wire::FAULT_F_ADDRESS | access),
                _ => (wire::FAULT_R_MAPPING, wire::FAULT_F_ADDRESS),
            },
        };
        let f = wire::Fault {
            reason: fault.0,
            flags: fault.1.into(),
            endpoint: endpoint.into(),
            address: iova.into(),
            ..Default::default()
        };
        s.post_event(f.as_bytes(), 24);
        None
    }

    /// Posts raw bytes on the event queue with the given used length (for
    /// malformed-event tests). Returns whether a buffer was available.
    pub fn post_raw_event(&self, bytes: &[u8], used_len: u32) -> bool {
        self.lock().post_event(bytes, used_len)
    }
}

impl Drop for FakeIommu {
    fn drop(&mut self) {
        self.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn device_thread(shared: &Shared) {
    let mut s = shared.state.lock().unwrap();
    loop {
        if s.stop {
            return;
        }
        if s.pending[0] && !s.misbehave.silent {
            s.pending[0] = false;
            s.process_requests();
            continue;
        }
        s = shared.wake.wait(s).unwrap();
    }
}

/// Microseconds since the first call, on the host's monotonic clock: a
/// [`WaitBudget`] clock for tests.
pub fn host_clock_us() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_micros() as u64
}

/// The default configuration with a time budget for replies instead of a
/// poll count, so a loaded machine cannot make a wait for the fake expire:
/// 10 s, or 10 minutes under Miri, which runs the device thread interpreted.
pub fn patient() -> DriverConfig {
    let seconds = if cfg!(miri) { 600 } else { 10 };
    DriverConfig {
        wait: WaitBudget {
            max_polls: u64::MAX,
            clock: Some((host_clock_us, seconds * 1_000_000)),
        },
        ..DriverConfig::default()
    }
}

// Ring accesses: the "physical" addresses are host pointers into memory the
// driver allocated with `HostHal` and keeps alive while the queue is set up.
// They are atomic (acquire loads, release stores) because the driver reads
// and writes the same fields from another thread: a device's DMA is not a
// Rust access, but the fake's is, and plain accesses would be a data race.
fn rd16(addr: u64) -> u16 {
    // SAFETY: see above; ring fields are naturally aligned.
    unsafe { AtomicU16::from_ptr(addr as *mut u16) }.load(Ordering::Acquire)
}
fn rd32(addr: u64) -> u32 {
    // SAFETY: see above.
    unsafe { AtomicU32::from_ptr(addr as *mut u32) }.load(Ordering::Acquire)
}
fn rd64(addr: u64) -> u64 {
    // SAFETY: see above.
    unsafe { AtomicU64::from_ptr(addr as *mut u64) }.load(Ordering::Acquire)
}
fn wr16(addr: u64, v: u16) {
    // SAFETY: see above.
    unsafe { AtomicU16::from_ptr(addr as *mut u16) }.store(v, Ordering::Release)
}
fn wr32(addr: u64, v: u32) {
    // SAFETY: see above.
    unsafe { AtomicU32::from_ptr(addr as *mut u32) }.store(v, Ordering::Release)
}

const DESC_NEXT: u16 = 1;
const DESC_WRITE: u16 = 2;

/// Reads a descriptor chain: the device-readable bytes, and the writable
/// buffers `(addr, len)`.
fn read_chain(q: &Queue, head: u16) -> (Vec<u8>, Vec<(u64, u32)>) {
    let mut out = Vec::new();
    let mut writable = Vec::new();
    let mut i = head;
    for _ in 0..q.size {
        let d = q.desc + 16 * u64::from(i % q.size);
        let (addr, len, flags, next) = (rd64(d), rd32(d + 8), rd16(d + 12), rd16(d + 14));
        if addr == 0 {
            // A descriptor the driver has already taken back (it clears the
            // address), read because of a misbehaviour such as
            // `duplicate_used`: a real device would fault on it; skip it.
        } else if flags & DESC_WRITE != 0 {
            writable.push((addr, len));
        } else {
            // SAFETY: a buffer the driver shared for reading.
            let bytes = unsafe { std::slice::from_raw_parts(addr as *const u8, len as usize) };
            out.extend_from_slice(bytes);
        }
        if flags & DESC_NEXT == 0 {
            break;
        }
        i = next;
    }
    (out, writable)
}

/// Writes `bytes` across the writable buffers; returns how many fit.
fn write_chain(writable: &[(u64, u32)], bytes: &[u8]) -> u32 {
    let mut done = 0usize;
    for &(addr, len) in writable {
        let n = (len as usize).min(bytes.len() - done);
        // SAFETY: a buffer the driver shared for writing, `len` bytes.
        unsafe { std::ptr::copy_nonoverlapping(bytes[done..].as_ptr(), addr as *mut u8, n) };
        done += n;
        if done == bytes.len() {
            break;
        }
    }
    done as u32
}

fn body<T: FromBytes>(out: &[u8]) -> Option<T> {
    T::read_from_prefix(out).ok().map(|(t, _)| t)
}

impl State {
    fn negotiated(&self, f: Features) -> bool {
        self.driver_features & f.bits() != 0
    }

    fn offered(&self, f: Features) -> bool {
        self.device_features & f.bits() != 0
    }

    /// Whether endpoints attached to no domain are in bypass mode: the two
    /// cases of the specification's definition, either one enough.
    fn unattached_bypass(&self) -> bool {
        (self.offered(Features::BYPASS_CONFIG) && self.config.bypass == 1)
            || self.negotiated(Features::BYPASS)
    }

    fn push_used(&mut self, qi: usize, id: u32, len: u32) {
        let q = &mut self.queues[qi];
        let slot = q.device + 4 + 8 * u64::from(q.used_idx % q.size);
        wr32(slot, id);
        wr32(slot + 4, len);
        q.used_idx = q.used_idx.wrapping_add(1);
        fence(Ordering::SeqCst);
        wr16(q.device + 2, q.used_idx);
    }

    fn post_event(&mut self, bytes: &[u8], used_len: u32) -> bool {
        let q = self.queues[1];
        if !q.ready || rd16(q.driver + 2) == q.last_avail {
            self.faults_dropped += 1;
            return false;
        }
        fence(Ordering::SeqCst);
        let head = rd16(q.driver + 4 + 2 * u64::from(q.last_avail % q.size));
        self.queues[1].last_avail = q.last_avail.wrapping_add(1);
        let (_, writable) = read_chain(&q, head);
        write_chain(&writable, bytes);
        if self.misbehave.hold_events {
            self.held_events += 1;
            return true;
        }
        self.push_used(1, u32::from(head), used_len);
        true
    }

    fn process_requests(&mut self) {
        let q = self.queues[0];
        if !q.ready || self.status & DeviceStatus::DRIVER_OK.bits() as u8 == 0 {
            return;
        }
        // Used entries held back to be returned in reverse order.
        let mut replies: Vec<(u32, u32)> = Vec::new();
        loop {
            let q = self.queues[0];
            let avail = rd16(q.driver + 2);
            if avail == q.last_avail {
                while let Some((id, len)) = replies.pop() {
                    self.push_used(0, id, len);
                }
                return;
            }
            fence(Ordering::SeqCst);
            let head = rd16(q.driver + 4 + 2 * u64::from(q.last_avail % q.size));
            self.queues[0].last_avail = q.last_avail.wrapping_add(1);
            let (out, writable) = read_chain(&q, head);
            let (mut reply, status_at, record) = match self.misbehave.reject {
                Some(code) => {
                    let kind = out.first().copied().unwrap_or(0);
                    let at = if kind == wire::T_PROBE {
                        self.config.probe_size.get() as usize
                    } else {
                        0
                    };
                    let mut reply = vec![0u8; at + 4];
                    reply[at] = code;
                    let rec = Handled {
                        kind,
                        status: code,
                        range: None,
                    };
                    (reply, at, rec)
                }
                None => self.handle(&out),
            };
            let mut status = reply.get(status_at).copied().unwrap_or(0);
            if let Some(forced) = self.misbehave.status {
                status = forced;
                if let Some(b) = reply.get_mut(status_at) {
                    *b = forced;
                }
            }
            let written = write_chain(&writable, &reply);
            self.handled.push(Handled { status, ..record });
            let id = self.misbehave.used_id.unwrap_or(u32::from(head));
            let len = self.misbehave.used_len.unwrap_or(written);
            let copies = if self.misbehave.duplicate_used { 2 } else { 1 };
            for _ in 0..copies {
                if self.misbehave.reverse_replies {
                    replies.push((id, len));
                } else {
                    self.push_used(0, id, len);
                }
            }
        }
    }

    /// Decodes and executes one request; returns the reply bytes, where the
    /// status byte is in them, and the record.
    fn handle(&mut self, out: &[u8]) -> (Vec<u8>, usize, Handled) {
        let kind = out.first().copied().unwrap_or(0);
        let mut record = Handled {
            kind,
            status: 0,
            range: None,
        };
        let tail = |status: u8| vec![status, 0, 0, 0];
        let status = match kind {
            wire::T_ATTACH => match body::<wire::AttachReq>(out) {
                Some(r) => self.attach(r.domain.get(), r.endpoint.get(), r.flags.get()),
                None => wire_status::INVAL,
            },
            wire::T_DETACH => match body::<wire::DetachReq>(out) {
                Some(r) => self.detach(r.domain.get(), r.endpoint.get()),
                None => wire_status::INVAL,
            },
            wire::T_MAP => match body::<wire::MapReq>(out) {
                Some(r) => {
                    record.range = Some((r.virt_start.get(), r.virt_end.get()));
                    self.map(
                        r.domain.get(),
                        r.virt_start.get(),
                        r.virt_end.get(),
                        r.phys_start.get(),
                        r.flags.get(),
                    )
                }
                None => wire_status::INVAL,
            },
            wire::T_UNMAP => match body::<wire::UnmapReq>(out) {
                Some(r) => {
                    record.range = Some((r.virt_start.get(), r.virt_end.get()));
                    self.unmap(r.domain.get(), r.virt_start.get(), r.virt_end.get())
                }
                None => wire_status::INVAL,
            },
            wire::T_PROBE => {
                let size = self.config.probe_size.get() as usize;
                let mut reply = vec![0u8; size + 4];
                let status = match body::<wire::ProbeReq>(out) {
                    Some(r) if self.negotiated(Features::PROBE) => {
                        match self.endpoints.get(&r.endpoint.get()) {
                            Some(regions) => {
                                let mut at = 0;
                                for &(subtype, start, end) in regions {
                                    let head = wire::ProbeProperty {
                                        kind: wire::PROBE_T_RESV_MEM.into(),
                                        length: 20.into(),
                                    };
                                    let mem = wire::ResvMem {
                                        subtype,
                                        reserved: [0; 3],
                                        start: start.into(),
                                        end: end.into(),
                                    };
                                    if at + 24 <= size {
                                        reply[at..at + 4].copy_from_slice(head.as_bytes());
                                        reply[at + 4..at + 24].copy_from_slice(mem.as_bytes());
                                        at += 24;
                                    }
                                }
                                wire_status::OK
                            }
                            None => wire_status::NOENT,
                        }
                    }
                    Some(_) => wire_status::UNSUPP,
                    None => wire_status::INVAL,
                };
                reply[size] = status;
                record.status = status;
                return (reply, size, record);
            }
            _ => wire_status::UNSUPP,
        };
        record.status = status;
        (tail(status), 0, record)
    }

    fn attach(&mut self, domain: u32, endpoint: u32, flags: u32) -> u8 {
        if !self.endpoints.contains_key(&endpoint) {
            return wire_status::NOENT;
        }
        if flags & !wire::ATTACH_F_BYPASS != 0 {
            return wire_status::INVAL;
        }
        let bypass = flags & wire::ATTACH_F_BYPASS != 0;
        if bypass && !self.negotiated(Features::BYPASS_CONFIG) {
            return wire_status::INVAL;
        }
        if !(self.config.domain_start.get()..=self.config.domain_end.get()).contains(&domain) {
            return wire_status::RANGE;
        }
        if self
            .domains
            .get(&domain)
            .is_some_and(|d| d.bypass != bypass)
        {
            return wire_status::INVAL;
        }
        if let Some(old) = self.attached.get(&endpoint).copied() {
            self.detach(old, endpoint);
        }
        let d = self.domains.entry(domain).or_default();
        d.bypass = bypass;
        d.endpoints.insert(endpoint);
        self.attached.insert(endpoint, domain);
        wire_status::OK
    }

    fn detach(&mut self, domain: u32, endpoint: u32) -> u8 {
        if !self.endpoints.contains_key(&endpoint) {
            return wire_status::NOENT;
        }
        let Some(d) = self.domains.get_mut(&domain) else {
            return wire_status::NOENT;
        };
        if !d.endpoints.remove(&endpoint) {
            return wire_status::INVAL;
        }
        if d.endpoints.is_empty() {
            self.domains.remove(&domain);
        }
        self.attached.remove(&endpoint);
        wire_status::OK
    }

    fn map(&mut self, domain: u32, start: u64, end: u64, phys: u64, flags: u32) -> u8 {
        let mmio_ok = self.negotiated(Features::MMIO);
        let granule = 1u64 << self.config.page_size_mask.get().trailing_zeros().min(63);
        let (lo, hi) = (self.config.input_start.get(), self.config.input_end.get());
        let Some(d) = self.domains.get_mut(&domain) else {
            return wire_status::NOENT;
        };
        if flags & !wire::MAP_F_MASK != 0 || (flags & wire::MAP_F_MMIO != 0 && !mmio_ok) {
            return wire_status::INVAL;
        }
        if d.bypass || end < start {
            return wire_status::INVAL;
        }
        if start < lo || end > hi {
            return wire_status::RANGE;
        }
        let aligned = |a: u64| a % granule == 0;
        if !aligned(start) || !aligned(phys) || !end.checked_add(1).is_none_or(aligned) {
            return wire_status::RANGE;
        }
        let overlaps = d
            .maps
            .range(..=end)
            .next_back()
            .is_some_and(|(_, m)| m.end >= start);
        if overlaps {
            return wire_status::INVAL;
        }
        d.maps.insert(
            start,
            FakeMapping {
                start,
                end,
                phys,
                flags,
            },
        );
        wire_status::OK
    }

    fn unmap(&mut self, domain: u32, start: u64, end: u64) -> u8 {
        let Some(d) = self.domains.get_mut(&domain) else {
            return wire_status::NOENT;
        };
        if d.bypass || end < start {
            return wire_status::INVAL;
        }
        let hit: Vec<FakeMapping> = d
            .maps
            .values()
            .filter(|m| m.start <= end && start <= m.end)
            .copied()
            .collect();
        if hit.iter().any(|m| m.start < start || m.end > end) {
            return wire_status::RANGE;
        }
        for m in hit {
            d.maps.remove(&m.start);
        }
        wire_status::OK
    }

    fn reset(&mut self) {
        self.status = 0;
        self.driver_features = 0;
        self.queues = [Queue::default(); 2];
        self.pending = [false; 2];
        self.held_events = 0;
        self.attached.clear();
        self.domains.clear();
    }
}

/// Status bytes, as the fake writes them.
mod wire_status {
    pub const OK: u8 = 0;
    pub const UNSUPP: u8 = 2;
    pub const INVAL: u8 = 4;
    pub const RANGE: u8 = 5;
    pub const NOENT: u8 = 6;
}

impl std::fmt::Debug for FakeTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeTransport").finish_non_exhaustive()
    }
}

impl FakeTransport {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap()
    }
}

impl Transport for FakeTransport {
    fn device_type(&self) -> DeviceType {
        DeviceType::IOMMU
    }

    fn read_device_features(&mut self) -> u64 {
        self.lock().device_features
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        self.lock().driver_features = driver_features;
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        u32::from(self.lock().max_queue_size(queue))
    }

    fn notify(&mut self, queue: u16) {
        self.lock().notify(queue);
        self.shared.wake.notify_all();
    }

    fn get_status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_retain(u32::from(self.lock().status))
    }

    fn set_status(&mut self, status: DeviceStatus) {
        self.lock().set_status(status.bits() as u8);
    }

    fn set_guest_page_size(&mut self, _guest_page_size: u32) {}

    fn requires_legacy_layout(&self) -> bool {
        false
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        let mut s = self.lock();
        if let Some(q) = s.queues.get_mut(usize::from(queue)) {
            *q = Queue {
                size: size as u16,
                desc: descriptors,
                driver: driver_area,
                device: device_area,
                ready: true,
                last_avail: 0,
                used_idx: 0,
            };
        }
    }

    fn queue_unset(&mut self, queue: u16) {
        if let Some(q) = self.lock().queues.get_mut(usize::from(queue)) {
            q.ready = false;
        }
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        self.lock()
            .queues
            .get(usize::from(queue))
            .is_some_and(|q| q.ready)
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        InterruptStatus::empty()
    }

    fn read_config_generation(&self) -> u32 {
        self.lock().read_generation()
    }

    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> Result<T, VirtioError> {
        let s = self.lock();
        let bytes = s.config.as_bytes();
        let end = offset
            .checked_add(size_of::<T>())
            .ok_or(VirtioError::ConfigSpaceTooSmall)?;
        let b = bytes
            .get(offset..end)
            .ok_or(VirtioError::ConfigSpaceTooSmall)?;
        T::read_from_bytes(b).map_err(|_| VirtioError::InvalidParam)
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> Result<(), VirtioError> {
        let v = value.as_bytes();
        // Only `bypass` is writable.
        if offset != wire::config_offset::BYPASS || v.len() != 1 {
            return Err(VirtioError::InvalidParam);
        }
        self.lock().write_bypass(v[0]);
        Ok(())
    }
}

/// What both faces of the device (the [`Transport`] and the PCI registers)
/// do on an access.
impl State {
    fn max_queue_size(&self, queue: u16) -> u16 {
        self.max_queue.get(usize::from(queue)).copied().unwrap_or(0)
    }

    fn notify(&mut self, queue: u16) {
        if let Some(p) = self.pending.get_mut(usize::from(queue)) {
            *p = true;
            self.notifications[usize::from(queue)] += 1;
        }
    }

    fn set_status(&mut self, status: u8) {
        let mut v = status;
        if v == 0 {
            if self.misbehave.stuck_reset && self.resets_done >= self.misbehave.resets_before_stuck
            {
                self.status = DeviceStatus::ACKNOWLEDGE.bits() as u8;
                return;
            }
            self.reset();
            self.resets_done += 1;
            return;
        }
        if v & DeviceStatus::FEATURES_OK.bits() as u8 != 0
            && (self.misbehave.reject_features || self.driver_features & !self.device_features != 0)
        {
            v &= !(DeviceStatus::FEATURES_OK.bits() as u8);
        }
        // DEVICE_NEEDS_RESET is the device's to set; keep it.
        v |= self.status & DeviceStatus::DEVICE_NEEDS_RESET.bits() as u8;
        self.status = v;
    }

    fn read_generation(&mut self) -> u32 {
        if self.misbehave.unstable_generation {
            self.generation = self.generation.wrapping_add(1);
        }
        self.generation
    }

    /// A write of `bypass`: taken only with BYPASS_CONFIG and a value of 0
    /// or 1; otherwise the device fails, as QEMU's does.
    fn write_bypass(&mut self, v: u8) {
        if !self.negotiated(Features::BYPASS_CONFIG) || v > 1 {
            self.status |= DeviceStatus::DEVICE_NEEDS_RESET.bits() as u8;
            return;
        }
        self.config.bypass = v;
        self.bypass_writes += 1;
    }
}

/// The virtio-PCI function of a [`FakeIommu`] made with
/// [`FakeIommu::new_pci`]: its config space (vendor and device ID, the four
/// virtio capabilities, all in BAR [`FakePciFunction::BAR`]) and its BARs.
pub struct FakePciFunction {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FakePciFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakePciFunction").finish_non_exhaustive()
    }
}

impl FakePciFunction {
    /// The BAR holding every virtio structure, as on QEMU.
    pub const BAR: usize = 4;
    /// `notify_off_multiplier`: queue `q` is notified at
    /// [`FakeBar::NOTIFY`]` + 4 * q`.
    pub const NOTIFY_MULTIPLIER: u32 = 4;

    /// The function's BARs: [`FakeBar`] at [`BAR`](Self::BAR), the others
    /// absent.
    pub fn bars(&self) -> [Option<FakeBar>; 6] {
        let mut bars = [None, None, None, None, None, None];
        bars[Self::BAR] = Some(FakeBar {
            shared: self.shared.clone(),
        });
        bars
    }

    fn config_space(offset: u16) -> u32 {
        let cap = |ty: u8, next: u8, len: u8| {
            u32::from(0x09u8) | u32::from(next) << 8 | u32::from(len) << 16 | u32::from(ty) << 24
        };
        let bar = Self::BAR as u32;
        let window = 0x1000;
        match offset {
            0x00 => 0x1057_1af4,
            // Status: capability list.
            0x04 => 1 << (16 + 4),
            0x34 => 0x40,
            // (cfg_type, next, cap_len) at 0x40, 0x50, 0x60, 0x70, then
            // (bar, offset, length) and, for notify, the multiplier.
            0x40 => cap(1, 0x50, 16),
            0x50 => cap(3, 0x60, 16),
            0x60 => cap(4, 0x70, 16),
            0x70 => cap(2, 0x00, 20),
            0x44 | 0x54 | 0x64 | 0x74 => bar,
            0x48 => FakeBar::COMMON as u32,
            0x58 => FakeBar::ISR as u32,
            0x68 => FakeBar::DEVICE as u32,
            0x78 => FakeBar::NOTIFY as u32,
            0x4c | 0x5c | 0x6c | 0x7c => window,
            0x80 => Self::NOTIFY_MULTIPLIER,
            _ => 0,
        }
    }
}

impl crate::transport::pci::PciConfig for FakePciFunction {
    fn read32(&self, offset: u16) -> u32 {
        Self::config_space(offset)
    }
}

/// BAR 4 of a [`FakePciFunction`]: the device's virtio-PCI registers, each
/// at its own width as QEMU decodes them (common configuration, ISR, device
/// configuration, notifications; 4 KiB each). An access outside the BAR or
/// misaligned is refused as [`check_access`] says, one of a register's wrong
/// width with [`MmioError::Width`], and every 64-bit access (the
/// specification has the driver split 64-bit fields into dwords). Bytes of
/// a structure that hold no register read 0 and ignore writes.
pub struct FakeBar {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FakeBar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeBar").finish_non_exhaustive()
    }
}

/// `struct virtio_pci_common_cfg`: each register's offset and width.
const COMMON_REGS: [(usize, Width); 19] = [
    (0x00, Width::W32), // device_feature_select
    (0x04, Width::W32), // device_feature
    (0x08, Width::W32), // driver_feature_select
    (0x0c, Width::W32), // driver_feature
    (0x10, Width::W16), // config_msix_vector
    (0x12, Width::W16), // num_queues
    (0x14, Width::W8),  // device_status
    (0x15, Width::W8),  // config_generation
    (0x16, Width::W16), // queue_select
    (0x18, Width::W16), // queue_size
    (0x1a, Width::W16), // queue_msix_vector
    (0x1c, Width::W16), // queue_enable
    (0x1e, Width::W16), // queue_notify_off
    (0x20, Width::W32), // queue_desc, low and high
    (0x24, Width::W32),
    (0x28, Width::W32), // queue_driver
    (0x2c, Width::W32),
    (0x30, Width::W32), // queue_device
    (0x34, Width::W32),
];

impl FakeBar {
    /// Bytes of the BAR.
    pub const SIZE: usize = 0x4000;
    /// Offset of the common configuration.
    pub const COMMON: usize = 0x0000;
    /// Offset of the ISR status byte.
    pub const ISR: usize = 0x1000;
    /// Offset of the device configuration (`struct virtio_iommu_config`).
    pub const DEVICE: usize = 0x2000;
    /// Offset of the notification region.
    pub const NOTIFY: usize = 0x3000;

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap()
    }

    /// The common-config register at `offset`, refused unless accessed at
    /// its width.
    fn common_reg(offset: usize, width: Width) -> Result<Option<usize>, MmioError> {
        match COMMON_REGS.iter().find(|&&(at, _)| at == offset) {
            Some(&(at, w)) if w == width => Ok(Some(at)),
            Some(_) => Err(MmioError::Width { offset, width }),
            // Inside a register, not at its start: refused as well.
            None if offset < 0x38 => Err(MmioError::Width { offset, width }),
            None => Ok(None),
        }
    }

    fn read(&self, offset: usize, width: Width) -> Result<u32, MmioError> {
        check_access(Self::SIZE, offset, width)?;
        let mut s = self.lock();
        let sel = usize::from(s.pci.queue);
        let q = s.queues.get(sel).copied();
        let v = match offset {
            o if o < Self::ISR => match Self::common_reg(o - Self::COMMON, width)? {
                Some(0x04) => match s.pci.device_feature {
                    0 => s.device_features as u32,
                    1 => (s.device_features >> 32) as u32,
                    _ => 0,
                },
                Some(0x00) => s.pci.device_feature,
                Some(0x08) => s.pci.driver_feature,
                Some(0x0c) => match s.pci.driver_feature {
                    0 => s.driver_features as u32,
                    1 => (s.driver_features >> 32) as u32,
                    _ => 0,
                },
                Some(0x10 | 0x1a) => 0xffff,
                Some(0x12) => 2,
                Some(0x14) => u32::from(s.status),
                Some(0x15) => s.read_generation() & 0xff,
                Some(0x16) => u32::from(s.pci.queue),
                Some(0x18) => match q {
                    Some(q) if q.size != 0 => u32::from(q.size),
                    _ => u32::from(s.max_queue_size(s.pci.queue)),
                },
                Some(0x1c) => u32::from(q.is_some_and(|q| q.ready)),
                // QEMU's notify offset of a queue is its index.
                Some(0x1e) => u32::from(s.pci.queue),
                Some(0x20) => q.map_or(0, |q| q.desc as u32),
                Some(0x24) => q.map_or(0, |q| (q.desc >> 32) as u32),
                Some(0x28) => q.map_or(0, |q| q.driver as u32),
                Some(0x2c) => q.map_or(0, |q| (q.driver >> 32) as u32),
                Some(0x30) => q.map_or(0, |q| q.device as u32),
                Some(0x34) => q.map_or(0, |q| (q.device >> 32) as u32),
                _ => 0,
            },
            o if o < Self::DEVICE => {
                if o != Self::ISR || width != Width::W8 {
                    return Err(MmioError::Width { offset, width });
                }
                0
            }
            o if o < Self::NOTIFY => {
                let at = o - Self::DEVICE;
                let bytes = s.config.as_bytes();
                let mut v = [0u8; 4];
                for (i, b) in v.iter_mut().take(width.bytes()).enumerate() {
                    *b = bytes.get(at + i).copied().unwrap_or(0);
                }
                u32::from_le_bytes(v)
            }
            _ => 0,
        };
        Ok(v)
    }

    fn write(&self, offset: usize, width: Width, v: u32) -> Result<(), MmioError> {
        check_access(Self::SIZE, offset, width)?;
        let mut s = self.lock();
        let sel = usize::from(s.pci.queue);
        let set = |q: &mut Queue, lo: bool, field: fn(&mut Queue) -> &mut u64| {
            let f = field(q);
            *f = if lo {
                (*f & !0xffff_ffff) | u64::from(v)
            } else {
                (*f & 0xffff_ffff) | u64::from(v) << 32
            };
        };
        match offset {
            o if o < Self::ISR => match Self::common_reg(o - Self::COMMON, width)? {
                Some(0x00) => s.pci.device_feature = v,
                Some(0x08) => s.pci.driver_feature = v,
                Some(0x0c) => match s.pci.driver_feature {
                    0 => s.driver_features = (s.driver_features & !0xffff_ffff) | u64::from(v),
                    1 => {
                        s.driver_features = (s.driver_features & 0xffff_ffff) | u64::from(v) << 32;
                    }
                    _ => {}
                },
                Some(0x14) => s.set_status(v as u8),
                Some(0x16) => s.pci.queue = v as u16,
                Some(0x18) => {
                    let max = s.max_queue_size(s.pci.queue);
                    if let Some(q) = s.queues.get_mut(sel) {
                        if (v as u16) <= max {
                            q.size = v as u16;
                        }
                    }
                }
                Some(0x1c) => {
                    if let Some(q) = s.queues.get_mut(sel) {
                        if v == 1 && q.size != 0 {
                            q.ready = true;
                            q.last_avail = 0;
                            q.used_idx = 0;
                        }
                    }
                }
                Some(at @ 0x20..=0x34) => {
                    if let Some(q) = s.queues.get_mut(sel) {
                        let field: fn(&mut Queue) -> &mut u64 = match at {
                            0x20 | 0x24 => |q| &mut q.desc,
                            0x28 | 0x2c => |q| &mut q.driver,
                            _ => |q| &mut q.device,
                        };
                        set(q, at % 8 == 0, field);
                    }
                }
                // Read-only registers and the MSI-X vectors (the driver
                // polls) ignore writes.
                _ => {}
            },
            o if o < Self::DEVICE => {
                if o != Self::ISR || width != Width::W8 {
                    return Err(MmioError::Width { offset, width });
                }
            }
            o if o < Self::NOTIFY => {
                // Only `bypass` is writable; the rest ignores writes.
                if o - Self::DEVICE == wire::config_offset::BYPASS && width == Width::W8 {
                    s.write_bypass(v as u8);
                }
            }
            o => {
                let queue = (o - Self::NOTIFY) / FakePciFunction::NOTIFY_MULTIPLIER as usize;
                if width == Width::W16 && (o - Self::NOTIFY) % 4 == 0 {
                    s.notify(queue as u16);
                    drop(s);
                    self.shared.wake.notify_all();
                }
            }
        }
        Ok(())
    }
}

impl Mmio for FakeBar {
    fn size(&self) -> usize {
        Self::SIZE
    }
    fn read8(&self, offset: usize) -> Result<u8, MmioError> {
        self.read(offset, Width::W8).map(|v| v as u8)
    }
    fn read16(&self, offset: usize) -> Result<u16, MmioError> {
        self.read(offset, Width::W16).map(|v| v as u16)
    }
    fn read32(&self, offset: usize) -> Result<u32, MmioError> {
        self.read(offset, Width::W32)
    }
    fn write8(&self, offset: usize, value: u8) -> Result<(), MmioError> {
        self.write(offset, Width::W8, u32::from(value))
    }
    fn write16(&self, offset: usize, value: u16) -> Result<(), MmioError> {
        self.write(offset, Width::W16, u32::from(value))
    }
    fn write32(&self, offset: usize, value: u32) -> Result<(), MmioError> {
        self.write(offset, Width::W32, value)
    }
}

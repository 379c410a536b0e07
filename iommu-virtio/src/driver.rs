//! The virtio-iommu driver: initialisation, the request queue, the event queue.
//!
//! Requests are built in per-request slots of DMA memory (head and body, then
//! the tail the device writes) and put on the request queue as two
//! descriptors. [`VirtioIommu::run`] is the batch primitive everything else
//! uses: it puts as many requests on the queue as fit, notifies the device
//! once, waits (bounded) for every reply, and goes on with the rest if the
//! queue was full. A timeout, or a used-ring entry the driver did not hand
//! out, leaves requests in an unknown state: the driver then refuses all
//! further work ([`VirtioIommuError::Broken`]) rather than reuse buffers the
//! device may still write.

use core::mem::ManuallyDrop;

use iova_core::hw::Counter;
pub use iova_core::hw::WaitBudget;

use virtio_drivers::queue::VirtQueue;
use virtio_drivers::transport::{DeviceStatus, DeviceType, Transport};
use virtio_drivers::{BufferDirection, Hal};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, IntoBytes};

use crate::dma::DmaRegion;
use crate::error::{BadArgument, ConfigField, QueueProblem, RequestKind, VirtioIommuError, Wait};
use crate::fault::FaultRecord;
use crate::features::Features;
use crate::owners::{Claim, Owners};
use crate::probe::ProbeInfo;
use crate::wire::{self, config_offset as off};

pub use crate::owners::{MAX_DOMAINS, MAX_ENDPOINTS};

/// Buffers kept on the event queue (its size).
pub const EVENT_QUEUE_SIZE: usize = 8;
/// Faults kept for [`VirtioIommu::pop_fault`] before new ones are dropped.
pub const FAULT_LOG: usize = 64;
/// The largest `probe_size` the driver accepts.
pub const MAX_PROBE_SIZE: u32 = 0x1_0000;

const REQ_QUEUE: u16 = 0;
const EVENT_QUEUE: u16 = 1;
/// Bytes per request slot: the device-readable part (at most 40 bytes) at 0,
/// the tail at [`TAIL_AT`].
const SLOT: usize = 64;
const TAIL_AT: usize = 48;
const EVENT_BUF: usize = 64;
/// Where the PROBE buffer keeps its properties (the request is at 0).
const PROBE_PROPS_AT: usize = 128;
const NO_SLOT: u16 = u16::MAX;
/// What a reply tail is filled with before the request goes out: an
/// undefined status, so a tail the device never wrote is told apart.
const UNWRITTEN: u8 = 0xff;

/// The driver's default wait for the device: 50 million polls, no clock.
///
/// More than [`WaitBudget::DEFAULT`]'s 10 million, because what answers is a
/// thread of the VMM, not hardware: the reply wait polls the used ring in
/// memory (no trap, nanoseconds per poll), so 10 million polls are about
/// 10 ms under KVM, which a host that deschedules the VMM's device thread
/// for one scheduling period can exceed; and a reply timeout stops the
/// driver for good ([`VirtioIommuError::Broken`]). The reset wait reads the
/// status register, a trap per poll, so a device that never completes its
/// reset is reported after tens of seconds at worst. Give the budget a clock
/// ([`WaitBudget::with_clock`]) to bound the wait in time instead.
pub const DEFAULT_WAIT: WaitBudget = WaitBudget::polls(50_000_000);

/// How the driver sets the device up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DriverConfig {
    /// The wait for replies and for the reset ([`DEFAULT_WAIT`] by default).
    pub wait: WaitBudget,
    /// Let endpoints nobody attached bypass translation. Off by default
    /// (default deny): the driver declines `BYPASS` and, when the device
    /// offers `BYPASS_CONFIG`, writes `bypass = 0`, so their DMA faults. On,
    /// the driver writes `bypass = 1` with `BYPASS_CONFIG`, or else accepts
    /// `BYPASS`; a device that offers neither is refused
    /// ([`VirtioIommuError::MissingFeatures`]). See the crate's
    /// "Default deny" section.
    pub bypass_unattached: bool,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            wait: DEFAULT_WAIT,
            bypass_unattached: false,
        }
    }
}

/// What the device supports, from its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Geometry {
    /// Page sizes the device maps (bit `n`: `1 << n`).
    pub page_size_mask: u64,
    /// The smallest page size: the granule of every mapping.
    pub granule: u64,
    /// First usable IOVA.
    pub input_start: u64,
    /// Last usable IOVA (inclusive).
    pub input_end: u64,
    /// First domain ID.
    pub domain_start: u32,
    /// Last domain ID (inclusive).
    pub domain_end: u32,
    /// Bytes of properties in a PROBE reply (0 without `PROBE`).
    pub probe_size: u32,
    /// Whether endpoints nobody attached bypass translation, after init:
    /// `bypass` as read back with `BYPASS_CONFIG`, otherwise whether `BYPASS`
    /// was accepted.
    pub unattached_bypass: bool,
}

impl Geometry {
    /// The usable IOVAs as a half-open range of whole granules, or `None`
    /// if not one granule fits.
    pub fn aperture(&self) -> Option<iova_core::IovaRange> {
        let g = self.granule;
        let start = self.input_start.checked_next_multiple_of(g)?;
        // One past the last byte, rounded down to a granule; an input range
        // ending at u64::MAX keeps its last whole granule out (not
        // representable as a half-open end).
        let end = match self.input_end.checked_add(1) {
            Some(e) => e & !(g - 1),
            None => !(g - 1),
        };
        (end > start).then_some(iova_core::IovaRange {
            start: iova_core::Iova(start),
            end: iova_core::Iova(end),
        })
    }

    /// Whether the device accepts `domain` as an ID.
    pub fn domain_ok(&self, domain: u32) -> bool {
        (self.domain_start..=self.domain_end).contains(&domain)
    }
}

/// One request, as the driver puts it on the queue (PROBE has its own call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Request {
    /// Attach `endpoint` to `domain` (`flags`: `wire::ATTACH_F_*`).
    Attach {
        /// Domain ID.
        domain: u32,
        /// Endpoint ID.
        endpoint: u32,
        /// Flags.
        flags: u32,
    },
    /// Detach `endpoint` from `domain`.
    Detach {
        /// Domain ID.
        domain: u32,
        /// Endpoint ID.
        endpoint: u32,
    },
    /// Map `[start, end]` (inclusive) to `phys` (`flags`: `wire::MAP_F_*`).
    Map {
        /// Domain ID.
        domain: u32,
        /// First IOVA.
        start: u64,
        /// Last IOVA.
        end: u64,
        /// Physical address of `start`.
        phys: u64,
        /// Flags.
        flags: u32,
    },
    /// Unmap `[start, end]` (inclusive).
    Unmap {
        /// Domain ID.
        domain: u32,
        /// First IOVA.
        start: u64,
        /// Last IOVA.
        end: u64,
    },
}

impl Request {
    /// Which kind of request.
    pub fn kind(&self) -> RequestKind {
        match self {
            Request::Attach { .. } => RequestKind::Attach,
            Request::Detach { .. } => RequestKind::Detach,
            Request::Map { .. } => RequestKind::Map,
            Request::Unmap { .. } => RequestKind::Unmap,
        }
    }

    /// Writes the device-readable bytes into `out`; returns their length.
    fn encode(&self, out: &mut [u8; SLOT]) -> usize {
        fn put(out: &mut [u8], bytes: &[u8]) -> usize {
            out[..bytes.len()].copy_from_slice(bytes);
            bytes.len()
        }
        let head = |kind| wire::ReqHead {
            kind,
            reserved: [0; 3],
        };
        match *self {
            Request::Attach {
                domain,
                endpoint,
                flags,
            } => put(
                out,
                wire::AttachReq {
                    head: head(wire::T_ATTACH),
                    domain: U32::new(domain),
                    endpoint: U32::new(endpoint),
                    flags: U32::new(flags),
                    reserved: [0; 4],
                }
                .as_bytes(),
            ),
            Request::Detach { domain, endpoint } => put(
                out,
                wire::DetachReq {
                    head: head(wire::T_DETACH),
                    domain: U32::new(domain),
                    endpoint: U32::new(endpoint),
                    reserved: [0; 8],
                }
                .as_bytes(),
            ),
            Request::Map {
                domain,
                start,
                end,
                phys,
                flags,
            } => put(
                out,
                wire::MapReq {
                    head: head(wire::T_MAP),
                    domain: U32::new(domain),
                    virt_start: U64::new(start),
                    virt_end: U64::new(end),
                    phys_start: U64::new(phys),
                    flags: U32::new(flags),
                }
                .as_bytes(),
            ),
            Request::Unmap { domain, start, end } => put(
                out,
                wire::UnmapReq {
                    head: head(wire::T_UNMAP),
                    domain: U32::new(domain),
                    virt_start: U64::new(start),
                    virt_end: U64::new(end),
                    reserved: [0; 4],
                }
                .as_bytes(),
            ),
        }
    }
}

/// Event counts since the driver started.
#[derive(Debug, Default)]
struct Counters {
    requests: [Counter; 5],
    notifications: Counter,
    event_notifications: Counter,
    replies: Counter,
    events: Counter,
    faults_dropped: Counter,
    malformed_events: Counter,
    teardown_failures: Counter,
}

/// A snapshot of the driver's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CounterSnapshot {
    /// ATTACH requests sent.
    pub attach: u64,
    /// DETACH requests sent.
    pub detach: u64,
    /// MAP requests sent.
    pub map: u64,
    /// UNMAP requests sent.
    pub unmap: u64,
    /// PROBE requests sent.
    pub probe: u64,
    /// Notifications of the request queue.
    pub notifications: u64,
    /// Notifications of the event queue (buffers given back).
    pub event_notifications: u64,
    /// Replies received.
    pub replies: u64,
    /// Events received.
    pub events: u64,
    /// Faults received while the fault log was full.
    pub faults_dropped: u64,
    /// Event buffers the device returned with fewer bytes than a fault.
    pub malformed_events: u64,
    /// Domain teardowns (a [`VirtioDomain`](crate::VirtioDomain) dropped)
    /// whose UNMAP or DETACH did not succeed; the ID stays reserved until
    /// the next [`VirtioDomain::new`](crate::VirtioDomain::new) of it
    /// finishes the teardown.
    pub teardown_failures: u64,
}

impl CounterSnapshot {
    /// Requests of every type.
    pub fn requests(&self) -> u64 {
        self.attach + self.detach + self.map + self.unmap + self.probe
    }

    /// What changed since `earlier`.
    pub fn since(&self, earlier: &CounterSnapshot) -> CounterSnapshot {
        CounterSnapshot {
            attach: self.attach - earlier.attach,
            detach: self.detach - earlier.detach,
            map: self.map - earlier.map,
            unmap: self.unmap - earlier.unmap,
            probe: self.probe - earlier.probe,
            notifications: self.notifications - earlier.notifications,
            event_notifications: self.event_notifications - earlier.event_notifications,
            replies: self.replies - earlier.replies,
            events: self.events - earlier.events,
            faults_dropped: self.faults_dropped - earlier.faults_dropped,
            malformed_events: self.malformed_events - earlier.malformed_events,
            teardown_failures: self.teardown_failures - earlier.teardown_failures,
        }
    }
}

/// The driver's state. Everything the device may access by DMA is in a
/// `ManuallyDrop`: dropping the driver resets the device first (bounded) and
/// frees that memory only if the reset completed; otherwise it is leaked,
/// because the device may still write it.
struct Inner<H: Hal, T: Transport, const Q: usize> {
    transport: ManuallyDrop<T>,
    req: ManuallyDrop<VirtQueue<H, Q>>,
    evt: ManuallyDrop<VirtQueue<H, EVENT_QUEUE_SIZE>>,
    slots: ManuallyDrop<DmaRegion<H>>,
    free: [u16; Q],
    free_len: usize,
    /// Per descriptor-chain head: the slot it uses, or `NO_SLOT`.
    slot_of_token: [u16; Q],
    /// Per slot: what the request was and the caller's index for it.
    slot_meta: [(RequestKind, u32); Q],
    outstanding: usize,
    probe: ManuallyDrop<Option<DmaRegion<H>>>,
    events: ManuallyDrop<DmaRegion<H>>,
    event_of_token: [u8; EVENT_QUEUE_SIZE],
    faults: heapless::Deque<FaultRecord, FAULT_LOG>,
    broken: bool,
    /// The wait for the reset on drop.
    reset_wait: WaitBudget,
    /// The fields in `ManuallyDrop` were taken or dropped already.
    released: bool,
}

impl<H: Hal, T: Transport, const Q: usize> Inner<H, T, Q> {
    /// Resets the device; frees the DMA memory if the reset completed, leaks
    /// it otherwise. Returns the reset's outcome and the transport.
    fn release(&mut self) -> (Result<(), VirtioIommuError>, T) {
        let reset = wait_reset(&mut *self.transport, &self.reset_wait);
        self.released = true;
        // SAFETY: `released` was false (callers check), so none of these was
        // taken or dropped before, and after this nothing uses them (the
        // drop below sees `released`). The DMA memory is freed only when
        // the device is reset and so no longer accesses it.
        unsafe {
            if reset.is_ok() {
                ManuallyDrop::drop(&mut self.req);
                ManuallyDrop::drop(&mut self.evt);
                ManuallyDrop::drop(&mut self.slots);
                ManuallyDrop::drop(&mut self.probe);
                ManuallyDrop::drop(&mut self.events);
            }
            (reset, ManuallyDrop::take(&mut self.transport))
        }
    }
}

impl<H: Hal, T: Transport, const Q: usize> Drop for Inner<H, T, Q> {
    fn drop(&mut self) {
        if !self.released {
            let _ = self.release();
        }
    }
}

/// A virtio-iommu device, set up and running.
///
/// `Q` is the request queue's size (a power of two no larger than the
/// device's maximum); each request takes two descriptors, so `Q / 2`
/// requests fit in one batch.
pub struct VirtioIommu<H: Hal, T: Transport, const Q: usize = 256> {
    inner: spin::Mutex<Inner<H, T, Q>>,
    /// Taken before `inner`, never after.
    owners: spin::Mutex<Owners>,
    geometry: Geometry,
    features: Features,
    config: DriverConfig,
    counters: Counters,
}

impl<H: Hal, T: Transport, const Q: usize> core::fmt::Debug for VirtioIommu<H, T, Q> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VirtioIommu")
            .field("geometry", &self.geometry)
            .field("features", &self.features)
            .finish_non_exhaustive()
    }
}

fn wait_reset<T: Transport>(t: &mut T, budget: &WaitBudget) -> Result<(), VirtioIommuError> {
    t.set_status(DeviceStatus::empty());
    budget
        .until_true(|| t.get_status() == DeviceStatus::empty())
        .map_err(|_| VirtioIommuError::Timeout(Wait::Reset))
}

/// Gives up on a device that already knows the addresses of `memory`:
/// resets it (bounded), then frees `memory`, or leaks it if the reset does not
/// complete (the device may still write it); then marks the device `FAILED`.
fn abandon<T: Transport, X>(t: &mut T, budget: &WaitBudget, memory: X) {
    if wait_reset(t, budget).is_ok() {
        drop(memory);
    } else {
        core::mem::forget(memory);
    }
    let s = t.get_status();
    t.set_status(s | DeviceStatus::FAILED);
}

/// Reads the 32-bit config word at `offset`, part of `field`.
fn read_u32<T: Transport>(
    t: &T,
    offset: usize,
    field: ConfigField,
) -> Result<u32, VirtioIommuError> {
    t.read_config_space::<u32>(offset)
        .map_err(|_| VirtioIommuError::BadConfig(field))
}

fn read_u64<T: Transport>(
    t: &T,
    offset: usize,
    field: ConfigField,
) -> Result<u64, VirtioIommuError> {
    Ok(u64::from(read_u32(t, offset, field)?) | (u64::from(read_u32(t, offset + 4, field)?) << 32))
}

/// Reads the config fields, retrying while the generation changes (bounded).
fn read_geometry<T: Transport>(t: &T, f: Features) -> Result<Geometry, VirtioIommuError> {
    for _ in 0..16 {
        let gen_before = t.read_config_generation();
        let page_size_mask = read_u64(t, off::PAGE_SIZE_MASK, ConfigField::PageSizeMask)?;
        let (input_start, input_end) = if f.contains(Features::INPUT_RANGE) {
            (
                read_u64(t, off::INPUT_START, ConfigField::InputRange)?,
                read_u64(t, off::INPUT_END, ConfigField::InputRange)?,
            )
        } else {
            (0, u64::MAX)
        };
        let (domain_start, domain_end) = if f.contains(Features::DOMAIN_RANGE) {
            (
                read_u32(t, off::DOMAIN_START, ConfigField::DomainRange)?,
                read_u32(t, off::DOMAIN_END, ConfigField::DomainRange)?,
            )
        } else {
            (0, u32::MAX)
        };
        let probe_size = if f.contains(Features::PROBE) {
            read_u32(t, off::PROBE_SIZE, ConfigField::ProbeSize)?
        } else {
            0
        };
        if t.read_config_generation() != gen_before {
            continue;
        }
        if page_size_mask == 0 {
            return Err(VirtioIommuError::BadConfig(ConfigField::PageSizeMask));
        }
        if input_end < input_start {
            return Err(VirtioIommuError::BadConfig(ConfigField::InputRange));
        }
        if domain_end < domain_start {
            return Err(VirtioIommuError::BadConfig(ConfigField::DomainRange));
        }
        if probe_size > MAX_PROBE_SIZE {
            return Err(VirtioIommuError::BadConfig(ConfigField::ProbeSize));
        }
        return Ok(Geometry {
            page_size_mask,
            granule: 1 << page_size_mask.trailing_zeros(),
            input_start,
            input_end,
            domain_start,
            domain_end,
            probe_size,
            unattached_bypass: f.contains(Features::BYPASS),
        });
    }
    Err(VirtioIommuError::BadConfig(ConfigField::Generation))
}

/// Why `VirtQueue::new` failed. The queue's rings come from the `Hal` too:
/// their allocation failing is `NoDmaMemory` (the caller may retry with more
/// memory), not a device whose queue is missing or too small.
fn queue_error(e: virtio_drivers::Error, otherwise: QueueProblem) -> VirtioIommuError {
    match e {
        virtio_drivers::Error::DmaError => VirtioIommuError::NoDmaMemory,
        _ => VirtioIommuError::Queue(otherwise),
    }
}

fn dma<H: Hal>(bytes: usize, dir: BufferDirection) -> Result<DmaRegion<H>, VirtioIommuError> {
    DmaRegion::new(bytes, dir).ok_or(VirtioIommuError::NoDmaMemory)
}

impl<H: Hal, T: Transport, const Q: usize> VirtioIommu<H, T, Q> {
    /// Resets the device behind `transport`, negotiates features, reads the
    /// configuration, sets up both queues, stocks the event queue, turns off
    /// bypass for unattached endpoints (unless `config` asks to keep it) and
    /// sets `DRIVER_OK`.
    ///
    /// On error the device is left with `FAILED` set (or still in reset).
    /// [`VirtioIommuError::MissingFeatures`] with `BYPASS | BYPASS_CONFIG`:
    /// [`DriverConfig::bypass_unattached`] asked for bypass and the device
    /// offers neither way to give it.
    pub fn new(mut transport: T, config: DriverConfig) -> Result<Self, VirtioIommuError> {
        match Self::init(&mut transport, &config) {
            Ok((features, geometry, req, evt)) => {
                Self::assemble(transport, config, features, geometry, req, evt)
            }
            Err(e) => {
                // Nothing of ours is known to the device yet (queues are set
                // up last, and abandoned with a reset if that fails).
                let s = transport.get_status();
                transport.set_status(s | DeviceStatus::FAILED);
                Err(e)
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn init(
        t: &mut T,
        config: &DriverConfig,
    ) -> Result<
        (
            Features,
            Geometry,
            VirtQueue<H, Q>,
            VirtQueue<H, EVENT_QUEUE_SIZE>,
        ),
        VirtioIommuError,
    > {
        if !Q.is_power_of_two() || Q < 2 || Q > 0x8000 {
            return Err(VirtioIommuError::Queue(QueueProblem::InvalidSize));
        }
        if t.device_type() != DeviceType::IOMMU {
            return Err(VirtioIommuError::NotAnIommu(t.device_type() as u32));
        }
        wait_reset(t, &config.wait)?;
        t.set_status(DeviceStatus::ACKNOWLEDGE);
        t.set_status(DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER);
        let offered = Features::from_bits_retain(t.read_device_features());
        if !offered.contains(Features::REQUIRED) {
            return Err(VirtioIommuError::MissingFeatures(
                (Features::REQUIRED - offered).bits(),
            ));
        }
        let bypass_features = Features::BYPASS | Features::BYPASS_CONFIG;
        if config.bypass_unattached && !offered.intersects(bypass_features) {
            return Err(VirtioIommuError::MissingFeatures(bypass_features.bits()));
        }
        let mut features = offered & Features::SUPPORTED;
        // Once accepted, F_BYPASS lets unattached endpoints through whatever
        // `bypass` says; BYPASS_CONFIG supersedes it and keeps that choice
        // the driver's.
        if !config.bypass_unattached || features.contains(Features::BYPASS_CONFIG) {
            features.remove(Features::BYPASS);
        }
        t.write_driver_features(features.bits());
        let ok = DeviceStatus::ACKNOWLEDGE | DeviceStatus::DRIVER | DeviceStatus::FEATURES_OK;
        t.set_status(ok);
        if !t.get_status().contains(DeviceStatus::FEATURES_OK) {
            return Err(VirtioIommuError::FeaturesRejected);
        }
        let mut geometry = read_geometry(t, features)?;
        if features.contains(Features::BYPASS_CONFIG) {
            let want = u8::from(config.bypass_unattached);
            t.write_config_space::<u8>(off::BYPASS, want)
                .map_err(|_| VirtioIommuError::BadConfig(ConfigField::Bypass))?;
            let now = t
                .read_config_space::<u8>(off::BYPASS)
                .map_err(|_| VirtioIommuError::BadConfig(ConfigField::Bypass))?;
            if now != want {
                return Err(VirtioIommuError::BadConfig(ConfigField::Bypass));
            }
            geometry.unattached_bypass = now == 1;
        }
        let status = t.get_status();
        if status.intersects(DeviceStatus::DEVICE_NEEDS_RESET | DeviceStatus::FAILED) {
            return Err(VirtioIommuError::DeviceFailed(status.bits() as u8));
        }
        // The queues come last: once the device knows their addresses, a
        // failure must reset it before their memory is freed.
        let req = VirtQueue::<H, Q>::new(t, REQ_QUEUE, false, false)
            .map_err(|e| queue_error(e, QueueProblem::RequestQueueUnavailable))?;
        let evt = match VirtQueue::<H, EVENT_QUEUE_SIZE>::new(t, EVENT_QUEUE, false, false) {
            Ok(evt) => evt,
            Err(e) => {
                abandon(t, &config.wait, req);
                return Err(queue_error(e, QueueProblem::EventQueueUnavailable));
            }
        };
        Ok((features, geometry, req, evt))
    }

    fn assemble(
        mut transport: T,
        config: DriverConfig,
        features: Features,
        geometry: Geometry,
        req: VirtQueue<H, Q>,
        evt: VirtQueue<H, EVENT_QUEUE_SIZE>,
    ) -> Result<Self, VirtioIommuError> {
        let probe_bytes =
            PROBE_PROPS_AT + geometry.probe_size as usize + size_of::<wire::ReqTail>();
        let memory = (|| {
            let slots = dma::<H>(Q / 2 * SLOT, BufferDirection::Both)?;
            let events = dma::<H>(
                EVENT_QUEUE_SIZE * EVENT_BUF,
                BufferDirection::DeviceToDriver,
            )?;
            let probe = match geometry.probe_size {
                0 => None,
                _ => Some(dma::<H>(probe_bytes, BufferDirection::Both)?),
            };
            Ok((slots, events, probe))
        })();
        let (slots, events, probe) = match memory {
            Ok(m) => m,
            Err(e) => {
                abandon(&mut transport, &config.wait, (req, evt));
                return Err(e);
            }
        };
        let mut free = [0u16; Q];
        for (i, f) in free.iter_mut().enumerate().take(Q / 2) {
            *f = (Q / 2 - 1 - i) as u16;
        }
        let mut inner = Inner {
            transport: ManuallyDrop::new(transport),
            req: ManuallyDrop::new(req),
            evt: ManuallyDrop::new(evt),
            slots: ManuallyDrop::new(slots),
            free,
            free_len: Q / 2,
            slot_of_token: [NO_SLOT; Q],
            slot_meta: [(RequestKind::Attach, 0); Q],
            outstanding: 0,
            probe: ManuallyDrop::new(probe),
            events: ManuallyDrop::new(events),
            event_of_token: [u8::MAX; EVENT_QUEUE_SIZE],
            faults: heapless::Deque::new(),
            broken: false,
            reset_wait: config.wait,
            released: false,
        };
        for i in 0..EVENT_QUEUE_SIZE {
            // On error `inner` is dropped: the device is reset, then the
            // memory freed (or leaked if the reset does not complete).
            inner.post_event_buffer(i)?;
        }
        inner.transport.set_status(
            DeviceStatus::ACKNOWLEDGE
                | DeviceStatus::DRIVER
                | DeviceStatus::FEATURES_OK
                | DeviceStatus::DRIVER_OK,
        );
        // A device that failed while it took the queues, or a transport that
        // could not reach a register of them (which reports the device as
        // failed, see `transport::pci`), is refused before any request:
        // dropping `inner` resets the device before its memory is freed.
        let status = inner.transport.get_status();
        if status.intersects(DeviceStatus::DEVICE_NEEDS_RESET | DeviceStatus::FAILED) {
            return Err(VirtioIommuError::DeviceFailed(status.bits() as u8));
        }
        let me = Self {
            inner: spin::Mutex::new(inner),
            owners: spin::Mutex::new(Owners::new()),
            geometry,
            features,
            config,
            counters: Counters::default(),
        };
        {
            let mut inner = me.inner.lock();
            inner.transport.notify(EVENT_QUEUE);
            me.counters.event_notifications.incr();
        }
        Ok(me)
    }

    /// What the device supports.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// The negotiated features.
    pub fn features(&self) -> Features {
        self.features
    }

    /// The driver's counters.
    pub fn counters(&self) -> CounterSnapshot {
        let c = &self.counters;
        let r = |k: RequestKind| c.requests[k as usize].get();
        CounterSnapshot {
            attach: r(RequestKind::Attach),
            detach: r(RequestKind::Detach),
            map: r(RequestKind::Map),
            unmap: r(RequestKind::Unmap),
            probe: r(RequestKind::Probe),
            notifications: c.notifications.get(),
            event_notifications: c.event_notifications.get(),
            replies: c.replies.get(),
            events: c.events.get(),
            faults_dropped: c.faults_dropped.get(),
            malformed_events: c.malformed_events.get(),
            teardown_failures: c.teardown_failures.get(),
        }
    }

    /// How many requests fit in the queue at once.
    pub const fn batch_capacity() -> usize {
        Q / 2
    }

    /// Sends `requests`: as many as fit on the queue, one notification, a
    /// bounded wait for every reply, then the rest. Each request's outcome
    /// goes to the entry of `results` at the same index (`results` must be at
    /// least as long; entries past `requests.len()` are left alone).
    /// The requests go out exactly as given (no validation: see
    /// [`VirtioDomain`](crate::VirtioDomain) for the checked interface).
    ///
    /// `Err` means the batch could not complete: [`VirtioIommuError::Timeout`]
    /// or [`VirtioIommuError::BadUsedEntry`] (the device is now unusable),
    /// [`VirtioIommuError::Broken`], or too few results
    /// ([`BadArgument::ResultsTooShort`], nothing sent). Entries of `results`
    /// for requests that never completed are left as they were.
    pub fn run(
        &self,
        requests: &[Request],
        results: &mut [Result<(), VirtioIommuError>],
    ) -> Result<(), VirtioIommuError> {
        if results.len() < requests.len() {
            return Err(VirtioIommuError::InvalidArgument(
                BadArgument::ResultsTooShort,
            ));
        }
        let mut inner = self.inner.lock();
        if inner.broken {
            return Err(VirtioIommuError::Broken);
        }
        let mut next = 0;
        while next < requests.len() {
            while next < requests.len() && inner.free_len > 0 {
                let r = &requests[next];
                inner.enqueue(r, next as u32)?;
                self.counters.requests[r.kind() as usize].incr();
                next += 1;
            }
            self.notify_and_wait(&mut inner, &mut |i, res| results[i as usize] = res)?;
        }
        Ok(())
    }

    /// One request, sent and waited for.
    pub fn request(&self, request: Request) -> Result<(), VirtioIommuError> {
        let mut result = [Ok(())];
        self.run(&[request], &mut result)?;
        result[0]
    }

    /// Attaches `endpoint` to `domain` (created by the device if new),
    /// moving it from any other domain. The driver records the attachment:
    /// dropping the [`VirtioDomain`](crate::VirtioDomain) of `domain`
    /// detaches it.
    ///
    /// # Errors
    ///
    /// [`VirtioIommuError::StorageFull`] (nothing sent) when the driver
    /// already tracks [`MAX_ENDPOINTS`] other endpoints; the request's own
    /// errors otherwise. After a failed ATTACH the driver keeps the endpoint
    /// recorded where it was.
    pub fn attach(&self, endpoint: u32, domain: u32) -> Result<(), VirtioIommuError> {
        self.check_domain(domain)?;
        self.attach_with(endpoint, domain, 0)
    }

    /// Attaches `endpoint` to `domain` as a bypass (identity) domain, as
    /// [`attach`](Self::attach) does otherwise. Needs `BYPASS_CONFIG`.
    pub fn attach_bypass(&self, endpoint: u32, domain: u32) -> Result<(), VirtioIommuError> {
        self.check_domain(domain)?;
        if !self.features.contains(Features::BYPASS_CONFIG) {
            return Err(VirtioIommuError::NotNegotiated(
                Features::BYPASS_CONFIG.bits(),
            ));
        }
        self.attach_with(endpoint, domain, wire::ATTACH_F_BYPASS)
    }

    fn attach_with(&self, endpoint: u32, domain: u32, flags: u32) -> Result<(), VirtioIommuError> {
        let mut owners = self.owners.lock();
        if !owners.can_attach(endpoint) {
            return Err(VirtioIommuError::StorageFull);
        }
        self.request(Request::Attach {
            domain,
            endpoint,
            flags,
        })?;
        // Cannot fail: checked above, under the same lock.
        owners.attach(endpoint, domain);
        Ok(())
    }

    /// Detaches `endpoint` from `domain`.
    pub fn detach(&self, endpoint: u32, domain: u32) -> Result<(), VirtioIommuError> {
        self.check_domain(domain)?;
        let mut owners = self.owners.lock();
        self.request(Request::Detach { domain, endpoint })?;
        owners.detach(endpoint, domain);
        Ok(())
    }

    /// The domain `endpoint` is attached to, as far as the driver knows: the
    /// last successful [`attach`](Self::attach) or
    /// [`attach_bypass`](Self::attach_bypass) not undone by a
    /// [`detach`](Self::detach) or a domain's teardown. Requests sent with
    /// [`run`](Self::run) are not tracked.
    pub fn attached_domain(&self, endpoint: u32) -> Option<u32> {
        self.owners.lock().domain_of(endpoint)
    }

    /// How many endpoints the driver knows attached to `domain`.
    pub(crate) fn endpoints_in(&self, domain: u32) -> usize {
        self.owners.lock().endpoints_of(domain).count()
    }

    /// Takes `domain` for a new `VirtioDomain`. An ID whose earlier teardown
    /// did not complete is torn down first.
    pub(crate) fn claim_domain(&self, domain: u32) -> Result<(), VirtioIommuError> {
        let mut owners = self.owners.lock();
        match owners.claim(domain) {
            Some(Claim::Live) => return Err(VirtioIommuError::DomainInUse(domain)),
            Some(Claim::Unclean) => self.teardown(&mut owners, domain, true)?,
            None => {}
        }
        if owners.set_claim(domain, Claim::Live) {
            Ok(())
        } else {
            Err(VirtioIommuError::StorageFull)
        }
    }

    /// Gives `domain` back when its `VirtioDomain` is dropped: its endpoints
    /// are detached and, when `unmap`, its mappings removed. If that does not
    /// complete, the failure is counted and the ID stays reserved.
    pub(crate) fn release_domain(&self, domain: u32, unmap: bool) {
        let mut owners = self.owners.lock();
        match self.teardown(&mut owners, domain, unmap) {
            Ok(()) => owners.release(domain),
            Err(e) => {
                // Drop cannot return the error: counted, logged, and the ID
                // kept so that the next `VirtioDomain::new` of it retries.
                iova_core::warn_event!("virtio-iommu: teardown of domain {} failed: {}", domain, e);
                self.counters.teardown_failures.incr();
                // Already in the table (claimed Live): cannot fail.
                owners.set_claim(domain, Claim::Unclean);
            }
        }
    }

    /// Removes what `domain` may still have on the device: with `unmap`, one
    /// UNMAP of the whole input range; then a DETACH of each endpoint
    /// attached to it. Sent in batches of up to [`TEARDOWN_BATCH`] requests,
    /// one notification each (one in all for up to that many endpoints).
    /// Endpoints whose DETACH succeeds are forgotten; the first failure is
    /// returned. NOENT for the UNMAP counts as success: the device has no
    /// such domain, so nothing maps into it.
    fn teardown(
        &self,
        owners: &mut Owners,
        domain: u32,
        mut unmap: bool,
    ) -> Result<(), VirtioIommuError> {
        let mut first_error = None;
        let mut skip = 0;
        loop {
            let mut requests = heapless::Vec::<Request, TEARDOWN_BATCH>::new();
            if unmap {
                // Fits: the batch is empty.
                let _ = requests.push(Request::Unmap {
                    domain,
                    start: self.geometry.input_start,
                    end: self.geometry.input_end,
                });
            }
            for endpoint in owners.endpoints_of(domain).skip(skip) {
                if requests.push(Request::Detach { domain, endpoint }).is_err() {
                    break;
                }
            }
            if requests.is_empty() {
                break;
            }
            let mut results = [Ok(()); TEARDOWN_BATCH];
            self.run(&requests, &mut results)?;
            for (r, result) in requests.iter().zip(results) {
                match (*r, result) {
                    (Request::Detach { endpoint, .. }, Ok(())) => owners.detach(endpoint, domain),
                    (Request::Detach { .. }, Err(e)) => {
                        skip += 1;
                        first_error.get_or_insert(e);
                    }
                    (
                        _,
                        Ok(())
                        | Err(VirtioIommuError::Request {
                            status: crate::Status::NoEnt,
                            ..
                        }),
                    ) => {}
                    (_, Err(e)) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            unmap = false;
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    pub(crate) fn check_domain(&self, domain: u32) -> Result<(), VirtioIommuError> {
        if self.geometry.domain_ok(domain) {
            Ok(())
        } else {
            Err(VirtioIommuError::OutOfRange)
        }
    }

    /// Asks the device for `endpoint`'s properties (its reserved regions).
    pub fn probe(&self, endpoint: u32) -> Result<ProbeInfo, VirtioIommuError> {
        if !self.features.contains(Features::PROBE) || self.geometry.probe_size == 0 {
            return Err(VirtioIommuError::NotNegotiated(Features::PROBE.bits()));
        }
        let size = self.geometry.probe_size as usize;
        let mut inner = self.inner.lock();
        if inner.broken {
            return Err(VirtioIommuError::Broken);
        }
        let Inner { probe, req, .. } = &mut *inner;
        let Some(buf) = probe.as_ref() else {
            return Err(VirtioIommuError::NoDmaMemory);
        };
        let base = buf.ptr(0);
        let request = wire::ProbeReq {
            head: wire::ReqHead {
                kind: wire::T_PROBE,
                reserved: [0; 3],
            },
            endpoint: U32::new(endpoint),
            reserved: [0; 64],
        };
        let reply_len = size + size_of::<wire::ReqTail>();
        // SAFETY: the probe buffer is ours, at least PROBE_PROPS_AT +
        // reply_len bytes, and the device does not access it now (no PROBE
        // is in flight: the lock is held and every wait drains the queue).
        unsafe {
            core::ptr::copy_nonoverlapping(request.as_bytes().as_ptr(), base, 72);
            core::ptr::write_bytes(base.add(PROBE_PROPS_AT), 0, size);
            core::ptr::write_bytes(base.add(PROBE_PROPS_AT + size), UNWRITTEN, 4);
        }
        // SAFETY: `base` is the probe buffer (PROBE_PROPS_AT + reply_len
        // bytes, allocated so in `assemble`); the slices end with this call,
        // before the reads below.
        let (out, reply) = unsafe { probe_slices(base, reply_len) };
        // SAFETY: the buffers stay valid and untouched until popped below
        // (or forever, if the driver breaks on a timeout).
        let token = unsafe { req.add(&[out], &mut [reply]) }
            .map_err(|_| VirtioIommuError::Queue(QueueProblem::NoDescriptors))?;
        inner.slot_of_token[usize::from(token)] = PROBE_SLOT;
        inner.outstanding += 1;
        self.counters.requests[RequestKind::Probe as usize].incr();
        let mut status = Ok(());
        self.notify_and_wait(&mut inner, &mut |_, r| status = r)?;
        status?;
        // SAFETY: the device has returned the buffer; nothing else uses it.
        let props = unsafe { core::slice::from_raw_parts(base.add(PROBE_PROPS_AT), size) };
        ProbeInfo::parse(props)
    }

    fn notify_and_wait(
        &self,
        inner: &mut Inner<H, T, Q>,
        on_reply: &mut dyn FnMut(u32, Result<(), VirtioIommuError>),
    ) -> Result<(), VirtioIommuError> {
        if inner.outstanding == 0 {
            return Ok(());
        }
        if inner.req.should_notify() {
            inner.transport.notify(REQ_QUEUE);
            self.counters.notifications.incr();
        }
        let mut deadline = self.config.wait.start();
        let probe_size = self.geometry.probe_size as usize;
        while inner.outstanding > 0 {
            let Some(token) = inner.req.peek_used() else {
                if deadline.expired() {
                    inner.broken = true;
                    return Err(VirtioIommuError::Timeout(Wait::Reply));
                }
                core::hint::spin_loop();
                continue;
            };
            let (meta, result) = inner.complete(token, probe_size)?;
            self.counters.replies.incr();
            on_reply(meta, result);
        }
        // Faults may have been posted meanwhile; keep the event queue stocked.
        self.poll_events_locked(inner);
        Ok(())
    }

    /// Takes the faults the device posted from the event queue into the
    /// fault log and gives the buffers back. Returns how many arrived.
    pub fn poll_events(&self) -> usize {
        let mut inner = self.inner.lock();
        self.poll_events_locked(&mut inner)
    }

    fn poll_events_locked(&self, inner: &mut Inner<H, T, Q>) -> usize {
        if inner.broken {
            return 0;
        }
        let mut n = 0;
        while let Some(token) = inner.evt.peek_used() {
            let Some(&index) = inner.event_of_token.get(usize::from(token)) else {
                inner.broken = true;
                break;
            };
            if usize::from(index) >= EVENT_QUEUE_SIZE {
                inner.broken = true;
                break;
            }
            let index = usize::from(index);
            let ptr = event_ptr(&inner.events, index);
            // SAFETY: event buffer `index` of the driver's; the device has
            // returned it (its token is on the used ring), and the slice ends
            // with the `pop_used` below, before the read of the buffer.
            let buf = unsafe { event_slice(ptr) };
            // SAFETY: the same buffer that was added with this token.
            let used = match unsafe { inner.evt.pop_used(token, &[], &mut [buf]) } {
                Ok(len) => len as usize,
                Err(_) => {
                    inner.broken = true;
                    break;
                }
            };
            inner.event_of_token[usize::from(token)] = u8::MAX;
            n += 1;
            self.counters.events.incr();
            if used >= size_of::<wire::Fault>() {
                // SAFETY: the device returned the buffer; it is ours to read.
                let raw = unsafe { core::ptr::read_volatile(ptr.cast::<[u8; 24]>()) };
                if let Ok(f) = wire::Fault::read_from_bytes(&raw) {
                    if inner.faults.push_back(FaultRecord::decode(&f)).is_err() {
                        self.counters.faults_dropped.incr();
                    }
                }
            } else {
                self.counters.malformed_events.incr();
            }
            if inner.post_event_buffer(index).is_err() {
                inner.broken = true;
                break;
            }
        }
        if n > 0 {
            inner.transport.notify(EVENT_QUEUE);
            self.counters.event_notifications.incr();
        }
        n
    }

    /// The oldest fault in the log (after polling the event queue).
    pub fn pop_fault(&self) -> Option<FaultRecord> {
        let mut inner = self.inner.lock();
        self.poll_events_locked(&mut inner);
        inner.faults.pop_front()
    }

    /// Whether an earlier timeout or protocol violation made the driver stop.
    pub fn is_broken(&self) -> bool {
        self.inner.lock().broken
    }

    /// Resets the device (bounded wait) and gives the transport back. The
    /// driver's DMA memory is freed only once the reset completed; after a
    /// reset timeout it is leaked, because the device may still write it.
    /// (Dropping the driver does the same, without the transport.)
    pub fn reset(self) -> Result<T, VirtioIommuError> {
        let mut inner = self.inner.into_inner();
        let (result, transport) = inner.release();
        result.map(|()| transport)
    }
}

const PROBE_SLOT: u16 = u16::MAX - 1;

/// Requests per notification in a domain's teardown.
pub const TEARDOWN_BATCH: usize = 8;

/// The PROBE buffer's request (device-readable) and reply (device-writable)
/// parts, for handing to the queue.
///
/// # Safety
///
/// `base` is the start of the driver's PROBE buffer, which holds at least
/// `PROBE_PROPS_AT + reply_len` bytes, and nothing else reads or writes
/// those bytes while the slices live (the caller picks `'a`: it must end
/// before the buffer is freed or touched through another pointer).
unsafe fn probe_slices<'a>(base: *mut u8, reply_len: usize) -> (&'a [u8], &'a mut [u8]) {
    // SAFETY: the caller vouches for the buffer and its exclusive use; the
    // request [0, 72) and the reply [PROBE_PROPS_AT, + reply_len) do not
    // overlap (72 <= PROBE_PROPS_AT).
    unsafe {
        (
            core::slice::from_raw_parts(base, size_of::<wire::ProbeReq>()),
            core::slice::from_raw_parts_mut(base.add(PROBE_PROPS_AT), reply_len),
        )
    }
}

fn slot_ptr<H: Hal>(slots: &DmaRegion<H>, slot: usize) -> *mut u8 {
    slots.ptr(slot * SLOT)
}

/// A request slot's device-readable part (`out_len` bytes) and its tail,
/// for handing to the queue.
///
/// # Safety
///
/// `ptr` is the start of one of the driver's request slots (`SLOT` bytes of
/// DMA memory), `out_len <= TAIL_AT`, and nothing else reads or writes the
/// slot while the slices live (the caller picks `'a`: it must end before the
/// slot is freed or touched through another pointer).
unsafe fn slot_slices<'a>(ptr: *mut u8, out_len: usize) -> (&'a [u8], &'a mut [u8]) {
    debug_assert!(out_len <= TAIL_AT);
    // SAFETY: the caller vouches for the slot and its exclusive use; the out
    // part [0, out_len) and the tail [TAIL_AT, TAIL_AT + 4) do not overlap.
    unsafe {
        (
            core::slice::from_raw_parts(ptr, out_len),
            core::slice::from_raw_parts_mut(ptr.add(TAIL_AT), size_of::<wire::ReqTail>()),
        )
    }
}

fn event_ptr<H: Hal>(events: &DmaRegion<H>, index: usize) -> *mut u8 {
    events.ptr(index * EVENT_BUF)
}

/// An event buffer, for handing to the event queue.
///
/// # Safety
///
/// `ptr` is the start of one of the driver's event buffers (`EVENT_BUF`
/// bytes of DMA memory), and nothing else reads or writes it while the slice
/// lives (the caller picks `'a`: it must end before the buffer is freed or
/// touched through another pointer).
unsafe fn event_slice<'a>(ptr: *mut u8) -> &'a mut [u8] {
    // SAFETY: as the caller vouches.
    unsafe { core::slice::from_raw_parts_mut(ptr, EVENT_BUF) }
}

const fn out_len(kind: RequestKind) -> usize {
    match kind {
        RequestKind::Attach | RequestKind::Detach => 20,
        RequestKind::Map => 36,
        RequestKind::Unmap => 28,
        RequestKind::Probe => 72,
    }
}

impl<H: Hal, T: Transport, const Q: usize> Inner<H, T, Q> {
    fn enqueue(&mut self, r: &Request, meta: u32) -> Result<(), VirtioIommuError> {
        let Some(slot) = self.free_len.checked_sub(1).map(|i| self.free[i]) else {
            return Err(VirtioIommuError::Queue(QueueProblem::NoFreeSlot));
        };
        let mut bytes = [0u8; SLOT];
        let len = r.encode(&mut bytes);
        let ptr = slot_ptr(&self.slots, usize::from(slot));
        // SAFETY: the slot is free: the device does not access it.
        unsafe {
            core::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr, len);
            // A tail the device never writes reads back as UNWRITTEN.
            core::ptr::write_bytes(ptr.add(TAIL_AT), UNWRITTEN, 4);
        }
        // SAFETY: a free slot of the driver's, `len <= 40 < TAIL_AT`
        // (`encode`); the slices end with the `add` below.
        let (out, tail) = unsafe { slot_slices(ptr, len) };
        // SAFETY: the slot stays valid and untouched until its token is
        // popped (or forever, if the driver breaks on a timeout).
        let token = unsafe { self.req.add(&[out], &mut [tail]) }
            .map_err(|_| VirtioIommuError::Queue(QueueProblem::NoDescriptors))?;
        self.free_len -= 1;
        self.slot_of_token[usize::from(token)] = slot;
        self.slot_meta[usize::from(slot)] = (r.kind(), meta);
        self.outstanding += 1;
        Ok(())
    }

    /// Pops the used entry `token`: checks it is ours, frees its slot and
    /// decodes the reply.
    #[allow(clippy::type_complexity)]
    fn complete(
        &mut self,
        token: u16,
        probe_size: usize,
    ) -> Result<(u32, Result<(), VirtioIommuError>), VirtioIommuError> {
        let bad = |me: &mut Self| {
            me.broken = true;
            VirtioIommuError::BadUsedEntry(u32::from(token))
        };
        let Some(&slot) = self.slot_of_token.get(usize::from(token)) else {
            return Err(bad(self));
        };
        if slot == NO_SLOT {
            return Err(bad(self));
        }
        let (kind, meta, tail_ptr, needed, used) = if slot == PROBE_SLOT {
            let Some(buf) = self.probe.as_ref() else {
                return Err(bad(self));
            };
            let base = buf.ptr(0);
            let reply_len = probe_size + size_of::<wire::ReqTail>();
            // SAFETY: the probe buffer, which the device has returned (its
            // token is on the used ring); the slices end with `pop_used`.
            let (out, reply) = unsafe { probe_slices(base, reply_len) };
            // SAFETY: the buffers added with this token.
            let used = unsafe { self.req.pop_used(token, &[out], &mut [reply]) };
            // SAFETY: inside the probe buffer.
            let tail = unsafe { base.add(PROBE_PROPS_AT + probe_size) };
            (RequestKind::Probe, 0, tail, reply_len, used)
        } else {
            let (kind, meta) = self.slot_meta[usize::from(slot)];
            let ptr = slot_ptr(&self.slots, usize::from(slot));
            // SAFETY: slot `slot` of the driver's, which the device has
            // returned (its token is on the used ring); slots hold ATTACH,
            // DETACH, MAP or UNMAP only (PROBE has its own buffer), so
            // `out_len` is at most 36 < TAIL_AT. The slices end with
            // `pop_used`.
            let (out, tail) = unsafe { slot_slices(ptr, out_len(kind)) };
            // SAFETY: the buffers added with this token.
            let used = unsafe { self.req.pop_used(token, &[out], &mut [tail]) };
            // SAFETY: inside the slot.
            let tail = unsafe { ptr.add(TAIL_AT) };
            (kind, meta, tail, size_of::<wire::ReqTail>(), used)
        };
        let Ok(used) = used else {
            return Err(bad(self));
        };
        self.slot_of_token[usize::from(token)] = NO_SLOT;
        self.outstanding -= 1;
        if slot != PROBE_SLOT {
            self.free[self.free_len] = slot;
            self.free_len += 1;
        }
        // The status is the first byte of the tail, which sits at the end of
        // what the device may write: a reply shorter than that has no status.
        // SAFETY: the device has returned the buffer, so reading it races
        // with nothing; the byte is ignored for a short reply.
        let status = unsafe { core::ptr::read_volatile(tail_ptr) };
        // `needed` is at most MAX_PROBE_SIZE + 4; saturating keeps a short
        // reply short even if that bound ever grew past u32.
        let needed = u32::try_from(needed).unwrap_or(u32::MAX);
        if status == UNWRITTEN && used >= needed {
            // The device says it wrote the tail, but it still reads as
            // `enqueue` left it: a buffer returned without a reply, e.g. a
            // used entry returned twice and matched to the next request on
            // the same head. The used ring is out of step with the requests
            // (which may run later, or twice): stop, as for a foreign entry,
            // rather than report an undefined status and carry on.
            return Err(bad(self));
        }
        let result = crate::error::decode_reply(kind, used, needed, status);
        Ok((meta, result))
    }

    fn post_event_buffer(&mut self, index: usize) -> Result<(), VirtioIommuError> {
        let ptr = event_ptr(&self.events, index);
        // SAFETY: the buffer is not on the queue, so the device does not
        // access it.
        unsafe { core::ptr::write_bytes(ptr, 0, EVENT_BUF) };
        // SAFETY: event buffer `index` of the driver's, not on the queue; the
        // slice ends with the `add` below.
        let buf = unsafe { event_slice(ptr) };
        // SAFETY: the buffer stays valid and is not touched until popped.
        let token = unsafe { self.evt.add(&[], &mut [buf]) }
            .map_err(|_| VirtioIommuError::Queue(QueueProblem::EventQueueFull))?;
        self.event_of_token[usize::from(token)] = index as u8;
        Ok(())
    }
}

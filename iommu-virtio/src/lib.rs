//! virtio-iommu driver and backend for [`iova_core`].
//!
//! A `no_std` driver for the virtio IOMMU device (virtio 1.2/1.3, device
//! type 23) and an [`iova_core::IommuDomain`] over it, so the core's
//! two-step API (`try_alloc` / `link` ... / `sync` / `unlink` / `destroy`)
//! runs on a virtio-iommu with **one notification per sync**.
//!
//! - [`transport`]: where the device is. [`transport::pci::VirtioPciTransport`]
//!   (modern virtio-PCI, every common-config field at its exact width, its
//!   BARs reached through [`iova_core::hw::Mmio`]; a register access the
//!   BAR refuses is counted, logged and makes the device read as failed) or
//!   `virtio_drivers`' `MmioTransport`; any
//!   [`virtio_drivers::transport::Transport`] works.
//! - [`VirtioIommu`] ([`driver`]): reset with a bounded wait, feature
//!   negotiation (VERSION_1, MAP_UNMAP required; INPUT_RANGE, DOMAIN_RANGE,
//!   PROBE, MMIO, BYPASS_CONFIG used when offered; BYPASS only when asked
//!   for; ACCESS_PLATFORM never, the IOMMU's own rings are untranslated), the
//!   configuration read under the generation counter ([`Geometry`]: granule
//!   from `page_size_mask`, aperture from `input_range`, domain IDs,
//!   `probe_size`), and endpoints nobody attached kept from memory unless
//!   the caller asks otherwise (see [Default deny](#default-deny)).
//!   Requests (ATTACH, with the bypass flag for
//!   identity domains; DETACH; MAP; UNMAP; PROBE) go out in batches with one
//!   notification; every reply is waited for with a bound
//!   ([`WaitBudget`], iova-core's, [`driver::DEFAULT_WAIT`] unless
//!   configured),
//!   every status decoded ([`Status`], [`VirtioIommuError`]). A device that
//!   does not answer, or returns a buffer it was not given, stops the driver
//!   ([`VirtioIommuError::Broken`]) rather than risk reused buffers.
//! - Events: the event queue is kept stocked; faults are decoded into
//!   [`FaultRecord`]s (reason, read/write/exec, endpoint, address) and drained
//!   with [`VirtioIommu::pop_fault`].
//! - [`VirtioDomain`] ([`domain`]): map by request. `map` queues one MAP (never
//!   merged with another map's, so every link can be unlinked on its own),
//!   `unmap` queues UNMAPs of whole mappings (a split is refused before the
//!   device sees it), `flush` sends the batch with one notification. A full
//!   batch is sent and the work goes on; nothing is dropped. The driver
//!   records which domain each endpoint is attached to; dropping a domain
//!   removes its mappings and detaches its endpoints (bounded, failures
//!   counted), and one domain holds an ID at a time.
//! - [`ProbeInfo`] ([`probe`]): PROBE's reserved regions (MSI doorbells,
//!   reserved ranges), which [`ProbeInfo::reserve_in`] turns into holes of an
//!   [`iova_core::IovaAllocator`].
//! - `fake` (feature `fakes`): a virtio-iommu on a host thread that reads the
//!   queues from memory and behaves as the specification says, behind a
//!   `Transport` of its own or behind virtio-PCI registers (an `Mmio` BAR for
//!   [`transport::pci::VirtioPciTransport`]), and a host [`Hal`]; it can also
//!   misbehave (silence, short replies, bad statuses).
//!
//! # End to end
//!
//! ```
//! # #[cfg(feature = "fakes")] {
//! use iommu_virtio::fake::{FakeConfig, FakeIommu, FakeTransport, HostHal};
//! use iommu_virtio::{DriverConfig, VirtioDomain, VirtioIommu};
//! use iova_core::iova_alloc::IovaAllocatorConfig;
//! use iova_core::{DmaMapper, Iova, IovaAllocator, IovaRange, PhysAddr, Prot};
//!
//! // The device (here the fake; on hardware a VirtioPciTransport).
//! let (device, transport) = FakeIommu::new(FakeConfig::default());
//! let iommu: VirtioIommu<HostHal, FakeTransport> =
//!     VirtioIommu::new(transport, DriverConfig::default()).unwrap();
//! assert!(!iommu.geometry().unattached_bypass); // default deny
//!
//! // A domain with the endpoint attached, IOVAs without the PROBE holes.
//! let domain: VirtioDomain<'_, _, _> = VirtioDomain::new(&iommu, 1).unwrap();
//! domain.attach(0x10).unwrap();
//! let window = IovaRange::new(Iova(0x40_0000_0000), 1 << 30).unwrap();
//! let iovas = IovaAllocator::with_capacity(IovaAllocatorConfig::new(window, 0x1000), 64, 1).unwrap();
//! iommu.probe(0x10).unwrap().reserve_in(&iovas).unwrap();
//! let cpu = || 0;
//! let mapper = DmaMapper::new(&domain, &iovas, &cpu).unwrap();
//!
//! // Reserve once, link scattered pages, one sync = one notification.
//! let before = iommu.counters();
//! let mut state = mapper.try_alloc(3 * 0x1000, 0x1000).unwrap();
//! for (i, pa) in [0x8000_0000u64, 0x8123_4000, 0x9000_0000].into_iter().enumerate() {
//!     state.link(i as u64 * 0x1000, PhysAddr(pa), 0x1000, Prot::RW).unwrap();
//! }
//! state.sync().unwrap();
//! let c = iommu.counters().since(&before);
//! assert_eq!((c.map, c.notifications), (3, 1));
//! let dev = state.dma_addr(0x1004).unwrap();
//! assert_eq!(device.dma(0x10, dev.0, false), Some(0x8123_4004));
//!
//! // Tear down: UNMAPs of whole mappings, one notification; then the IOVA faults.
//! state.destroy().unwrap();
//! assert_eq!(device.dma(0x10, dev.0, false), None);
//! let fault = iommu.pop_fault().unwrap();
//! assert_eq!((fault.endpoint, fault.address), (0x10, Some(dev.0)));
//! # }
//! ```
//!
//! # Default deny
//!
//! An endpoint attached to no domain reaches no memory unless
//! [`DriverConfig::bypass_unattached`] asks for it (off by default).
//! The specification puts such an endpoint in bypass mode (identity
//! translation) when the device offers BYPASS_CONFIG and its `bypass` byte
//! is 1 (even if the driver does not accept BYPASS_CONFIG), or when the
//! driver accepts BYPASS. So the driver:
//!
//! | device offers | `bypass_unattached: false` | `bypass_unattached: true` |
//! |---|---|---|
//! | neither | nothing to do: blocked | refused: [`VirtioIommuError::MissingFeatures`] with `BYPASS \| BYPASS_CONFIG` |
//! | BYPASS | BYPASS declined: blocked | BYPASS accepted: bypass |
//! | BYPASS_CONFIG | accepted, `bypass = 0` written and read back: blocked | accepted, `bypass = 1`: bypass |
//! | both | BYPASS declined, `bypass = 0`: blocked | BYPASS declined (BYPASS_CONFIG supersedes it), `bypass = 1`: bypass |
//!
//! A `bypass` byte that does not read back as written is
//! [`VirtioIommuError::BadConfig`]`(`[`ConfigField::Bypass`]`)`. After
//! bring-up, [`Geometry::unattached_bypass`] says which holds. Endpoints
//! attached to a bypass domain ([`VirtioIommu::attach_bypass`], needs
//! BYPASS_CONFIG) bypass whatever this says; a detached endpoint falls back
//! to it.
//!
//! # What comes from `virtio-drivers`, and what does not
//!
//! The split virtqueue is `virtio_drivers::queue::VirtQueue` (requests are
//! two descriptors, events one; the driver polls, so no indirect
//! descriptors or event index are negotiated). Its PCI transport is not
//! used: see [`transport::pci`] for why. Its DMA type is private, so
//! request slots come from [`Hal::dma_alloc`] directly.
//!
//! # Limits
//!
//! - The driver polls; it never enables or handles interrupts (no MSI-X on
//!   QEMU's device anyway).
//! - A batch is `Q / 2` requests per notification (two descriptors each; no
//!   indirect descriptors): 128 with QEMU's 256-entry queue, so more
//!   physically discontiguous pieces than that need more than one
//!   notification per sync (see `BENCHMARKS.md`).
//! - The virtio-mmio path (`virtio_drivers`' `MmioTransport`) is checked by
//!   type only: QEMU has no virtio-iommu on virtio-mmio to run it against.
//! - Debug builds move the driver and domain values by value several times;
//!   bare-metal programs with small stacks should build this crate with
//!   `opt-level = 1` or more (the QEMU example does).
//!
//! # Dependencies
//!
//! `virtio-drivers` (the virtqueue and the `Hal`/`Transport` traits, so the
//! driver also runs over its MMIO transport); `zerocopy` for the wire
//! structures; `spin` for the driver's and the domains' locks (short,
//! bounded critical sections, no OS to block on); `heapless` for fixed
//! capacity storage; `bitflags` for [`Features`].
//!
//! # Features
//!
//! - `fakes`: the fake device and host HAL of the `fake` module (implies `std`).
//! - `std`: builds with the standard library.
//! - `log`, `defmt`: warnings (through [`iova_core::warn_event!`]) for what a
//!   caller cannot see in a return value: a register access the PCI
//!   transport refused, a domain teardown that did not complete; `defmt`
//!   also derives `defmt::Format` for the error and record types.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

mod dma;
pub mod domain;
pub mod driver;
pub mod dt;
pub mod error;
#[cfg(feature = "fakes")]
pub mod fake;
pub mod fault;
pub mod features;
mod owners;
pub mod probe;
pub mod transport;
pub mod viot;
pub mod wire;

pub use domain::VirtioDomain;
pub use driver::{CounterSnapshot, DriverConfig, Geometry, Request, VirtioIommu, WaitBudget};
pub use error::{
    BadArgument, ConfigField, ProbeProblem, QueueProblem, RequestKind, Status, VirtioIommuError,
    Wait, decode_reply,
};
pub use fault::{FaultReason, FaultRecord};
pub use features::Features;
pub use probe::{ProbeInfo, ReservedKind, ReservedRegion};
pub use virtio_drivers::{self, Hal};

//! Intel VT-d backend for [`iova_core`]: a `no_std` driver for DMA
//! remapping units, in legacy and scalable translation modes, whose domains
//! plug into iova-core's two-step API.
//!
//! - [`acpi`]: finds the DMAR table from the RSDP and parses it (remapping
//!   units, device scopes, reserved regions, ATS root ports).
//! - [`caps`]: VER, CAP and ECAP decoded.
//! - [`regs`]: register offsets and MMIO access ([`regs::Mmio`], iova-core's
//!   [`iova_core::hw::Mmio`] re-exported).
//! - [`unit`](mod@unit): one remapping unit ([`VtdUnit`]): probe, global
//!   commands, domain IDs; [`unit::tables`]: its root, context and PASID
//!   tables (RID_PASID, and other PASIDs where ECAP.PASID).
//! - [`error`]: the error type, [`VtdError`].
//! - [`context`]: root, context and PASID entries ([`ContextState`]: not
//!   present, pass-through, second-level, first-level).
//! - [`second_level`]: the second-level page-table format for iova-core's
//!   engine ([`SecondLevel`]); first-level domains use iova-core's x86-64
//!   format ([`VtdUnit::first_level_format`]).
//! - [`descriptor`], [`queue`]: invalidation descriptors and their submission
//!   (queued with one wait per batch, 256-bit in scalable mode, or
//!   register-based without ECAP.QI).
//! - [`domain`]: [`VtdDomain`], a page table with a domain ID on each unit
//!   that walks it, an [`IommuDomain`](iova_core::IommuDomain), attached to
//!   devices with [`VtdUnit::attach`]; its invalidation, [`VtdInvalidator`]
//!   (and [`VtdMultiInvalidator`] for several units).
//! - [`fault`]: typed fault records, their reading, and the fault event
//!   interrupt.
//! - [`reserved`]: identity maps for the DMAR's reserved memory regions.
//! - [`counters`]: what the driver did.
//! - `fake` (feature `fakes`): a VT-d unit behind mocked MMIO, for tests.
//!
//! What the driver adapts to: SAGAW (3-, 4- or 5-level tables), MGAW, the
//! number of domain IDs, the fault recording registers' number and place,
//! superpages (SLLPS, FL1GP), QI, PSI and MAMV, RWBF, CM, SMTS/SLTS/FLTS, PT,
//! SC and C (non-coherent walks need [`UnitConfig::walk_cache`]). What it
//! cannot drive it refuses with a [`VtdError`] at probe or attach.
//!
//! # Attaching devices
//!
//! A [`VtdDomain`] owns its page table and a domain ID of each unit that
//! walks it (handed out by the unit, returned on drop), and records the
//! endpoints (device, and in scalable mode PASID) attached to it:
//!
//! - [`VtdUnit::attach`] / [`VtdUnit::attach_pasid`] point an endpoint's
//!   entry at the domain; an endpoint attached elsewhere is moved (its old
//!   entry made not present and invalidated first). A domain holds at most
//!   [`MAX_ENDPOINTS`](domain::MAX_ENDPOINTS) endpoints
//!   ([`VtdError::DomainFull`]); a first-level domain serves the one PASID
//!   it was built for.
//! - [`VtdUnit::detach`] / [`VtdUnit::detach_pasid`] block it again
//!   ([`VtdError::NotAttached`] if its entry does not point at the domain).
//! - Dropping a domain detaches every endpoint still pointing at it and
//!   drops what the units cached under its domain IDs, each with its wait,
//!   before the tables are freed; if a unit does not complete that, the
//!   tables are leaked instead.
//! - [`VtdUnit::pass_through`] and [`VtdUnit::block`] (and their PASID
//!   forms) set the states that need no table.
//!
//! The rule behind it: a unit may walk a table only while the table is
//! alive, and a table's frames are reused only after the unit was told to
//! forget them. [`VtdUnit::set_context`] and [`VtdUnit::set_pasid`], which
//! take a raw table root and domain ID, are therefore `unsafe`: their
//! caller keeps the table alive and invalidated until the entry is
//! replaced, and keeps the domain ID to that one table.
//!
//! A domain walked by several units ([`VtdDomain::second_level`] with the
//! units' list) has a domain ID on each; each flush invalidates on every
//! unit, and attaching goes through the unit that covers the device.
//!
//! # The two-step flow over VT-d
//!
//! On hardware the registers come from the DMAR's DRHD
//! ([`regs::MmioRegion`]); here the host fake stands in for them.
//!
//! ```
//! # #[cfg(feature = "fakes")] {
//! use std::sync::Arc;
//! use iova_core::fakes::FakeFrames;
//! use iova_core::iova_alloc::{IovaAllocator, IovaAllocatorConfig};
//! use iova_core::{DmaMapper, Iova, IovaRange, PhysAddr, Prot};
//! use iommu_intel_vtd::fake::{Dma, FakeVtd};
//! use iommu_intel_vtd::{Bdf, ContextState, FaultReason, UnitConfig, VtdUnit};
//!
//! let frames = Arc::new(FakeFrames::new());
//! let hw = FakeVtd::qemu(Arc::clone(&frames), 48);
//! // QEMU's unit does not snoop CPU caches on table walks (ECAP.C = 0): the
//! // driver needs a way to write them back (on x86, `clflush`). The fake
//! // reads memory directly, so doing nothing is enough here.
//! # struct Clflush;
//! # impl iova_core::CacheMaintenance for Clflush {
//! #     fn is_coherent(&self) -> bool { false }
//! #     fn clean(&self, _: PhysAddr, _: u64) {}
//! #     fn invalidate(&self, _: PhysAddr, _: u64) {}
//! #     fn complete(&self) {}
//! # }
//! static CACHE: Clflush = Clflush;
//! let config = UnitConfig { walk_cache: Some(&CACHE), ..UnitConfig::default() };
//! let unit = VtdUnit::new(&hw, Arc::clone(&frames), config).unwrap();
//!
//! // A domain: second-level tables the unit walks, with a domain ID of its
//! // own; edu's DMA goes through it once attached.
//! let domain = unit.second_level_domain(Arc::clone(&frames), 4).unwrap();
//! let dev = Bdf::new(0, 1, 0);
//! unit.attach(dev, &domain).unwrap();
//! unit.enable_translation().unwrap();
//!
//! let aperture = IovaRange::new(Iova(0x1_0000_0000), 1 << 30).unwrap();
//! let iovas = IovaAllocator::with_capacity(IovaAllocatorConfig::new(aperture, 0x1000), 64, 1).unwrap();
//! let cpu = || 0;
//! let mapper = DmaMapper::new(&domain, &iovas, &cpu).unwrap();
//!
//! // Reserve, link scattered pages, one sync.
//! let mut state = mapper.try_alloc(2 * 0x1000, 0x1000).unwrap();
//! state.link(0, PhysAddr(0x8000_0000), 0x1000, Prot::RW).unwrap();
//! state.link(0x1000, PhysAddr(0x9123_4000), 0x1000, Prot::RW).unwrap();
//! state.sync().unwrap();
//! let iova = state.dma_addr(0x1010).unwrap().0;
//! assert_eq!(hw.translate(dev, iova, Dma::Write), Ok(0x9123_4010));
//!
//! // Unlink + sync: one page-selective invalidation and one wait.
//! let before = unit.counters().snapshot();
//! state.unlink(0x1000, 0x1000).unwrap();
//! state.sync().unwrap();
//! let spent = unit.counters().snapshot().since(&before);
//! assert_eq!((spent.iotlb_page, spent.waits), (1, 1));
//! assert_eq!(hw.translate(dev, iova, Dma::Write), Err(FaultReason::WriteDenied));
//! let mut faults = Vec::new();
//! unit.drain_faults(|r| faults.push(r)).unwrap();
//! assert_eq!((faults[0].source, faults[0].address), (dev, iova & !0xfff));
//! state.destroy().unwrap();
//! drop(mapper);
//!
//! // Dropping the domain detaches edu (blocked again) before the tables go.
//! drop(domain);
//! assert_eq!(unit.context(dev), ContextState::NotPresent);
//! assert_eq!(hw.translate(dev, iova, Dma::Write), Err(FaultReason::ContextNotPresent));
//! # }
//! ```
//!
//! # Dependencies
//!
//! `zerocopy` reads firmware tables without `unsafe` and without reading
//! past them; `spin` serialises the invalidation interface and context-table
//! updates (no OS to block on, critical sections are short and bounded);
//! `heapless` holds one flush's descriptors without a heap; `log` and
//! `defmt` (optional features, off by default) carry warnings.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod acpi;
pub mod caps;
pub mod context;
pub mod counters;
pub mod descriptor;
pub mod domain;
pub mod error;
#[cfg(feature = "fakes")]
pub mod fake;
pub mod fault;
pub mod intremap;
pub mod queue;
pub mod regs;
pub mod reserved;
pub mod second_level;
pub mod unit;

pub use acpi::dmar::{Bdf, Dmar};
pub use caps::Features;
pub use context::ContextState;
pub use counters::CounterSnapshot;
pub use domain::{Endpoint, VtdCache, VtdDomain, VtdFormat, VtdInvalidator, VtdMultiInvalidator};
pub use error::{IrteError, VtdError, Wait};
pub use fault::{FaultReason, FaultRecord};
pub use intremap::{
    DeliveryMode, DestinationMode, InterruptRemapping, IrConfig, Irte, IrtIndex, MsiMessage,
    SourceValidation, TriggerMode,
};
pub use second_level::SecondLevel;
pub use unit::{MAX_ALLOCATED_DIDS, UnitConfig, VtdUnit};

//! Arm SMMUv3 backend for [`iova_core`].
//!
//! - [`regs`]: register offsets and fields; the registers are reached through
//!   [`iova_core::hw::Mmio`] (re-exported here with [`MmioRegion`] and
//!   [`MmioError`]) at exact widths: 32-bit registers are never read with
//!   64-bit accesses, and a block smaller than the 128 KiB register frame is
//!   refused at [`probe`];
//! - [`features`]: IDR0-IDR5 decoded into [`Features`], refusing hardware
//!   the driver cannot use;
//! - [`ste`], [`cd`], [`cmd`], [`event`]: bit-exact stream table entries,
//!   context descriptors, commands and event records;
//! - page-table formats: the core's Arm VMSAv8-64 formats
//!   ([`iova_core::formats::lpae`]), [`LpaeS1`] and [`LpaeS2`] at 4, 16 or
//!   64 KiB [`Granule`]s, re-exported here;
//! - [`Smmu`]: bring-up in the architected order with GBPA abort, a linear or
//!   two-level stream table (level-2 tables on first use; every stream not
//!   attached is invalid, so it is blocked and reported), the command queue
//!   (waits bounded by [`Config::wait`], refused commands reported and
//!   skipped), the event queue (typed [`Event`]s, overflow reported),
//!   counters;
//! - [`domain`]: stage-1 and stage-2 (4, 16 or 64 KiB granule) and nested
//!   domains implementing [`iova_core::IommuDomain`]; a flush is one batch of
//!   TLBIs (range form with IDR3.RIL) and one CMD_SYNC; dropping a domain
//!   detaches its streams before its tables are freed; MSI doorbells (the
//!   GICv3 ITS) go in an [`iova_core::msi::MsiWindow`] over the domain, in
//!   the stage the device's MSI address is an input of (see [`domain`]);
//! - [`substream`]: SubstreamIDs (PASIDs) through per-stream CD tables;
//! - [`cache`]: cache maintenance for non-coherent SMMUs;
//! - [`dt`]: StreamIDs from a PCI host's `iommu-map` device-tree property;
//!   [`iort`]: SMMUv3 bases and StreamIDs from the ACPI IORT;
//! - `fake` (feature `fakes`): a fake SMMUv3 behind [`Mmio`] for host tests.
//!
//! # Use
//!
//! ```
//! # #[cfg(feature = "fakes")] {
//! use std::sync::Arc;
//! use iommu_arm_smmuv3::fake::{FakeSmmu, QEMU_10_VIRT};
//! use iommu_arm_smmuv3::{Config, Smmu};
//! use iova_core::fakes::FakeFrames;
//! use iova_core::iova_alloc::{IovaAllocator, IovaAllocatorConfig};
//! use iova_core::{DmaMapper, Iova, IovaRange, FrameAllocator, Prot};
//!
//! let mem = Arc::new(FakeFrames::new());
//! let fake = FakeSmmu::new(Arc::clone(&mem), QEMU_10_VIRT);
//! let smmu = Smmu::new(&fake, Arc::clone(&mem), Config::default()).unwrap();
//! let domain = smmu.s1_domain(Arc::clone(&mem), 48).unwrap();
//! smmu.attach_s1(8, &domain).unwrap();
//!
//! let aperture = IovaRange::new(Iova(0x1000_0000), 0x1000_0000).unwrap();
//! let iovas = IovaAllocator::with_capacity(IovaAllocatorConfig::new(aperture, 0x1000), 64, 1).unwrap();
//! let cpu = || 0;
//! let mapper = DmaMapper::new(&domain, &iovas, &cpu).unwrap();
//! let page = mem.alloc_zeroed(0x1000).unwrap();
//! let mut state = mapper.try_alloc(0x1000, 0x1000).unwrap();
//! state.link(0, page, 0x1000, Prot::RW).unwrap();
//! state.sync().unwrap();
//! // The fake device on stream 8 writes through the SMMU.
//! fake.dma_write(8, state.iova(), &[1, 2, 3]).unwrap();
//! state.unlink(0, 0x1000).unwrap();
//! state.sync().unwrap(); // one TLBI + one CMD_SYNC
//! assert!(fake.dma_write(8, state.iova(), &[4]).is_err());
//! state.free().unwrap();
//! # }
//! ```
//!
//! The bare-metal example `examples/smmuv3-edu` runs this crate on QEMU's
//! SMMUv3 (`-M virt,iommu=smmuv3`) with the `edu` device doing DMA.
//!
//! # Limits
//!
//! SubstreamIDs through linear CD tables of up to 256 entries; the driver
//! polls ([`Smmu::set_interrupts`] lets a platform take the event and
//! global-error interrupts, wired or as MSIs with [`Smmu::set_msi`]); no
//! ATS/PRI; an SMMU that does not snoop the CPUs' caches
//! (IDR0.COHACC = 0) needs [`Smmu::with_cache`] and a
//! [`iova_core::CacheMaintenance`]; at most 1023 ASIDs
//! and VMIDs in use at once, and [`domain::MAX_STREAMS`] streams per domain.
//!
//! # Features
//!
//! - `fakes`: the `fake` SMMU (implies `std`);
//! - `log`, `defmt`: warnings through [`iova_core::warn_event!`] for
//!   conditions a caller cannot see in a return value (refused commands, lost
//!   events, a GBPA that does not abort, an SMMU that would not stop when
//!   the driver was dropped); `defmt` also derives `defmt::Format` for the
//!   error, event and counter types.
//!
//! # Dependencies
//!
//! `spin` for the locks around the queues and stream table (no OS to block
//! on; critical sections are short and bounded); `heapless` for the
//! fixed-capacity list of streams a domain is attached to.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

mod barrier;
pub mod cache;
pub mod cd;
pub mod cmd;
pub mod domain;
pub mod dt;
pub mod error;
pub mod event;
#[cfg(feature = "fakes")]
pub mod fake;
pub mod features;
pub mod iort;
pub mod queue;
pub mod regs;
pub mod smmu;
pub mod ste;
pub mod strtab;
pub mod substream;

pub use cache::SmmuCache;
pub use cmd::{Command, CommandCounts, CommandErrorKind};
pub use domain::{S1Domain, S1Format, S1Inval, S2Domain, S2Inval};
pub use error::{CommandError, SmmuError, Wait};
pub use event::{Event, FaultKind};
pub use features::{Features, IdRegs, Unsupported};
pub use iova_core::formats::lpae::{Granule, LpaeS1, LpaeS2};
pub use queue::DrainReport;
pub use regs::{Mmio, MmioError, MmioRegion};
pub use smmu::{Config, Counters, Layout, Msi, Smmu, probe};
pub use ste::Ste;
pub use strtab::StreamTableFormat;

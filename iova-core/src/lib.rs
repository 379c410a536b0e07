//! A hardware-agnostic, `no_std` core for two-step IOMMU DMA mapping.
//!
//! Linux 6.16 split DMA mapping in two: reserve an IOVA range once, write the
//! translations for many physical pieces without touching the IOTLB, then make
//! the batch visible with one flush. This crate brings that model to
//! unikernels, firmware and hypervisors, on any IOMMU that implements
//! [`IommuDomain`]:
//!
//! - [`iova_alloc`]: the IOVA allocator (aperture with holes, explicit
//!   alignment, per-CPU caches, no heap needed);
//! - [`pt`]: a generic radix page-table engine, parameterised by a
//!   [`PtFormat`], with formats in [`formats`] (Arm LPAE stage 1 and
//!   stage 2 at 4, 16 and 64 KiB granules, x86-64);
//! - [`IotlbGather`]: what a batch must invalidate, flushed once;
//! - [`dma`]: the two-step API ([`DmaMapper`], [`IovaState`]) and the one-shot
//!   `map` / `map_sg` / `unmap` built on it;
//! - [`flush_queue`]: deferred invalidation (opt-in): unlinks wait in a
//!   [`FlushQueue`] bounded by entries, bytes and age, and one flush covers
//!   them all, with the exposure window stated;
//! - [`hw`]: what the backends share on the hardware side: register access
//!   with one out-of-range policy, bounded waits, counters (and the
//!   [`warn_event!`] logging macro);
//! - [`msi`]: MSI windows ([`MsiWindow`]): interrupt doorbells mapped
//!   write-only at fixed IOVAs that the allocator never hands out, as
//!   Linux's MSI cookie does;
//! - [`acpi`] and [`dt`]: firmware discovery the backends share: the RSDP
//!   -> XSDT/RSDT walk with every checksum and length checked, and the
//!   device tree's `iommu-map` / `iommu-map-mask` decoder;
//! - `fakes` (feature `fakes`): an in-memory IOMMU with its own IOTLB, for
//!   tests;
//! - `guarantees` (documented with the `fakes` feature): the misuse the types
//!   rule out, as compile-fail examples.
//!
//! # The two-step flow
//!
//! ```
//! # #[cfg(feature = "fakes")] {
//! use iova_core::fakes::{Access, fake_domain};
//! use iova_core::formats::lpae::LpaeS1;
//! use iova_core::iova_alloc::{IovaAllocator, IovaAllocatorConfig};
//! use iova_core::{DmaMapper, Iova, IovaRange, PhysAddr, Prot};
//!
//! // A backend gives you a domain; here, the fake one.
//! let (domain, _frames) = fake_domain(LpaeS1::va48());
//! let aperture = IovaRange::new(Iova(0x1000_0000), 0x1000_0000).unwrap();
//! let iovas = IovaAllocator::with_capacity(IovaAllocatorConfig::new(aperture, 0x1000), 64, 1).unwrap();
//! let cpu = || 0; // which CPU we run on, for the allocator's per-CPU caches
//! let mapper = DmaMapper::new(&domain, &iovas, &cpu).unwrap();
//!
//! // Reserve once, link scattered pages, sync once.
//! let mut state = mapper.try_alloc(3 * 0x1000, 0x1000).unwrap();
//! for (i, pa) in [0x8000_0000u64, 0x8123_4000, 0x9000_0000].into_iter().enumerate() {
//!     state.link(i as u64 * 0x1000, PhysAddr(pa), 0x1000, Prot::RW).unwrap();
//! }
//! state.sync().unwrap(); // one IOTLB flush for the whole batch
//! let dev = state.dma_addr(0x1004).unwrap();
//! assert_eq!(domain.device_access(dev, Access::Read), Ok(PhysAddr(0x8123_4004)));
//!
//! // Tear down the same way: unlink, then sync (or destroy: unlink all + free).
//! state.unlink(0x1000, 0x1000).unwrap();
//! state.sync().unwrap();
//! assert!(domain.device_access(dev, Access::Read).is_err());
//! state.destroy().unwrap();
//! # }
//! ```
//!
//! # Features
//!
//! - `alloc`: heap-backed storage for the IOVA allocator and link lists.
//! - `std`: implies `alloc`.
//! - `fakes`: the in-memory IOMMU of `fakes` (implies `std`).
//! - `log`, `defmt`: logging and `defmt::Format` for the public types.
//!
//! # Dependencies
//!
//! `bitflags` for [`Prot`]; `zerocopy` reads ACPI headers without `unsafe`; `spin` for the allocator's and the flush queue's
//! locks (no OS to block on, and critical sections are short and bounded); `heapless` for fixed
//! capacity storage when there is no heap.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(feature = "alloc")]
extern crate alloc;

/// Reports a condition the caller cannot see in a return value (a fault
/// drained, an error a `Drop` cannot return) through the optional `log` and
/// `defmt` features; nothing when both are off.
///
/// Shared by the backends: it expands in the calling crate and tests *that*
/// crate's `log` and `defmt` features, so a crate using it declares both
/// (forwarding them to iova-core's) and depends on `log` and `defmt` under
/// those names. The arguments are evaluated (borrowed) either way, so a
/// build without logging has no unused-variable warnings.
///
/// ```ignore
/// iova_core::warn_event!("stream {:#x}: event {:#x} dropped", sid, code);
/// ```
#[macro_export]
macro_rules! warn_event {
    ($fmt:literal $(, $arg:expr)* $(,)?) => {{
        #[cfg(feature = "log")]
        ::log::warn!($fmt $(, $arg)*);
        #[cfg(feature = "defmt")]
        ::defmt::warn!($fmt $(, $arg)*);
        $(let _ = &$arg;)*
    }};
}

pub mod acpi;
pub mod addr;
pub mod cache;
pub mod dma;
pub mod domain;
pub mod dt;
pub mod error;
#[cfg(feature = "fakes")]
pub mod fakes;
pub mod flush_queue;
pub mod formats;
pub mod frame;
pub mod gather;
pub mod hw;
// Its examples run against the fakes.
#[cfg(feature = "fakes")]
pub mod guarantees;
pub mod iova_alloc;
pub mod msi;
pub mod prot;
pub mod pt;

pub use addr::{Iova, IovaRange, Overflow, PhysAddr};
pub use cache::{CacheMaintenance, Coherent};
pub use dma::{DmaMapper, IovaState, Link, LinkStore, Mapping, Returned};
pub use domain::{IommuDomain, IotlbInvalidate, PageTableDomain};
pub use error::{DeviceError, Error};
pub use flush_queue::{DeferLimits, FlushQueue};
pub use frame::FrameAllocator;
pub use gather::IotlbGather;
pub use iova_alloc::{CurrentCpu, IovaAlloc, IovaAllocError, IovaAllocator, IovaAllocatorConfig};
pub use msi::{MsiError, MsiWindow};
pub use prot::Prot;
pub use pt::{PageTable, PtFormat};

//! A [`virtio_drivers::Hal`] over [`iova_core`]'s two-step DMA API: put any
//! `virtio-drivers` device behind an IOMMU.
//!
//! Without an IOMMU a unikernel's `Hal` hands the device physical addresses,
//! and the device can reach all of memory. With [`IommuHal`], every address
//! a device gets is an IOVA of one IOMMU domain (SMMUv3, VT-d, virtio-iommu,
//! or anything implementing [`iova_core::IommuDomain`]), mapped while the
//! driver shares the buffer and unmapped, with the IOTLB flushed, before
//! `unshare` returns (strict mode).
//!
//! - [`DmaShares`] ([`shares`]): the table of live DMA allocations and shared
//!   buffers, with `&self` methods that return typed errors ([`ShareError`]),
//!   usable on its own.
//! - [`IommuHal`] ([`hal`]): the `Hal`, a thin static shim over the table a
//!   [`HalContext`] names.
//! - [`AccessPlatform`] ([`transport`]): wraps a transport so that the driver
//!   accepts VIRTIO_F_ACCESS_PLATFORM, and refuses a device that does not
//!   offer it (it would bypass the IOMMU).
//! - [`CpuMemory`] ([`memory`]): virtual-to-physical translation of driver
//!   buffers ([`IdentityMapped`] where the two are the same).
//!
//! # Partial pages are bounced
//!
//! An IOMMU maps whole granules. Mapping a 16-byte request header in place
//! would let the device read and write the rest of its page, which holds
//! whatever the driver keeps next to it. So a buffer's partial first and
//! last granules are *bounced*: copied into a zeroed page of their own at the
//! same offset, which is mapped instead; whole granules in between are mapped
//! where they are. The device reaches the buffer's bytes and zeros, never its
//! neighbours. Bounced parts are copied in on `share` for every direction (so
//! bytes the device does not write survive the copy back) and copied back on
//! `unshare` for `DeviceToDriver` and `Both`, after the unmap and flush, so
//! what the driver gets is what the device left when it lost access. This is
//! what Linux does for untrusted devices (`swiotlb` bouncing of unaligned
//! buffers), at granule rather than whole-buffer grain: large aligned
//! transfers are not copied.
//!
//! # Setting it up
//!
//! (`tests/hal.rs` does this with the fake IOMMU; the examples under
//! `examples/` do it on SMMUv3, VT-d and virtio-iommu.)
//!
//! ```text
//! static SHARES: spin::Once<DmaShares<'static, MyDomain>> = spin::Once::new();
//!
//! struct Ctx;
//! impl HalContext for Ctx {
//!     type Domain = MyDomain;
//!     fn shares() -> &'static DmaShares<'static, MyDomain> {
//!         SHARES.get().expect("set up before the first device")
//!     }
//!     unsafe fn mmio_phys_to_virt(pa: u64, _size: usize) -> NonNull<u8> {
//!         NonNull::new(pa as *mut u8).unwrap() // identity-mapped MMIO
//!     }
//! }
//!
//! // domain, iovas, cpu and frames are 'static (statics or leaked boxes).
//! let mapper = DmaMapper::new(domain, iovas, cpu)?;
//! SHARES.call_once(|| DmaShares::new(mapper, frames, &IdentityMapped).unwrap());
//! let transport = AccessPlatform::new(pci_transport).map_err(|(e, _)| e)?;
//! let mut blk = VirtIOBlk::<IommuHal<Ctx>, _>::new(transport)?;
//! ```
//!
//! # Why these dependencies
//!
//! `virtio-drivers` is the trait being implemented; `spin` for the table's
//! lock (no OS); `heapless` so the table and each share's links live without
//! a heap; `zerocopy` only because `Transport`'s config-space methods name its
//! traits.

#![cfg_attr(not(test), no_std)]

pub mod hal;
mod layout;
pub mod memory;
pub mod pool;
pub mod shares;
pub mod transport;

pub use hal::{HalContext, IommuHal};
pub use memory::{CpuMemory, IdentityMapped};
pub use pool::{MAX_POOL_SLOTS, PoolConfig};
pub use shares::{DmaShares, MAX_PIECES, ShareCounters, ShareError};
pub use transport::{ACCESS_PLATFORM, AccessPlatform, BypassesIommu};

//! A [`virtio_drivers::Hal`] over [`iova_core`]'s two-step DMA API: put any
//! `virtio-drivers` device behind an IOMMU.
//!
//! Without an IOMMU a unikernel's `Hal` hands the device physical addresses,
//! and the device can reach all of memory. With [`IommuHal`], every address
//! a device gets is an IOVA of one IOMMU domain (SMMUv3, VT-d, virtio-iommu,
//! or anything implementing [`iova_core::IommuDomain`]), mapped while the
//! driver shares the buffer and unmapped, with the IOTLB flushed, before
//! `unshare` returns (strict mode), or, with a bounce pool, copied through
//! slots mapped once (below).
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
//! # The bounce pool
//!
//! Strict mapping costs one IOVA state per share, synced with one IOTLB
//! flush, and one more flush on `unshare`: a virtio-blk request (a 16-byte
//! header, the data, a 1-byte status) is three maps and six flushes, which
//! under an emulated IOMMU dominate small I/O. [`DmaShares::with_pool`]
//! (configured by [`PoolConfig`]) adds a *bounce pool* per table, that is per
//! domain: one frame from the table's `FrameAllocator`, mapped read-write in
//! the domain once when the table is made (one map, one flush), carved into
//! fixed-size slots, and unmapped (flushed, then freed) when the table is
//! dropped. [`DmaShares::new`] makes a table without one.
//!
//! - A buffer of at most [`PoolConfig::threshold`] bytes (default 4 KiB, one
//!   slot), at any alignment, gets a free slot (one bit scan) and the device
//!   gets the slot's IOVA at offset 0. No map, no flush. `DriverToDevice`
//!   and `Both` buffers are copied into the slot; a `DeviceToDriver` buffer
//!   is not, since the device only writes it: the device sees zeros, and
//!   bytes it does not write come back as zeros (a virtio driver reads only
//!   the used length the device reports; the virtio specification tells it
//!   to ignore device-writable bytes beyond it). `unshare` copies the slot
//!   back for `DeviceToDriver` and `Both`, zeroes the bytes the share used,
//!   and frees the slot.
//! - A larger buffer is mapped as without a pool, but its partial first and
//!   last granules are bounced into pool slots instead of freshly allocated
//!   and zeroed frames (still mapped at the share's IOVA next to the whole
//!   granules: one descriptor needs contiguous device addresses). What this
//!   saves is the allocation and the zeroing of a frame; the maps and flushes
//!   stay.
//! - Zeroing: on release, of what the share put there. Invariant: a free slot
//!   holds zeros, except for bytes the device itself wrote there (it can
//!   write any slot at any time). So no driver data outlives its share in the
//!   pool, and a device never reads another request's leftover bytes.
//! - Exhaustion: a share that finds no free slot takes the path without the
//!   pool (mapped in place, bounce pages), as before; nothing fails that
//!   works without a pool. Counted in [`ShareCounters::pool_fallbacks`].
//! - Non-coherent devices: slots are cleaned after the copy in and the zeroing
//!   and invalidated before the copy back (the mapper's cache maintenance).
//!
//! The device can reach its own domain's pool, every slot of it, read and
//! write, for as long as the table lives: the copies of the domain's live
//! small shares (`DriverToDevice` and `Both` ones; a `DriverToDevice` slot is
//! writable, though nothing comes back from it), zeros, and what it wrote
//! itself. It never reaches the
//! driver's buffers through the pool, nor another domain's pool (each table
//! maps its pool only in its own domain).
//!
//! | Policy | A malicious device can reach | For how long | Cost per share |
//! |---|---|---|---|
//! | strict in place ([`DmaShares::new`]) | the buffer's whole granules in place, and bounce pages holding its partial granules (its bytes, zeros) | from `share` until `unshare` returns (unmapped, flushed) | 1 map per physical piece, 1 flush on share, 1 on unshare; per partial granule a frame allocated and zeroed, its bytes copied in (and back) |
//! | pool + strict ([`DmaShares::with_pool`]), buffer ≤ threshold | its domain's pool slots: copies of live small shares, zeros, its own writes; never the buffer | the pool: the table's life; a share's copy: from `share` until `unshare` (then zeroed) | no map, no flush; `len` bytes copied in (`DriverToDevice`, `Both`), `len` back (`DeviceToDriver`, `Both`), `len` zeroed |
//! | pool + strict, buffer > threshold | as strict in place, plus its domain's pool | as strict in place; the pool: the table's life | as strict in place, without the frame allocations: partial granules go to pool slots |
//! | pool + deferred ([`DmaShares::with_pool`] over a mapper [`with_flush_queue`](iova_core::DmaMapper::with_flush_queue)) | as pool + strict, and an unshared buffer above the threshold (its granules in place) stays reachable, read and write: its mapping is kept for the buffer's next share (*parked*, if it is whole granules) or its unlink waits in the flush queue; its IOVA is not handed out to anything else, nor any frame the table gives back, before the flush | parked: until evicted (at most [`DeferLimits`](iova_core::DeferLimits) `max_entries` mappings and `max_bytes` bytes, `max_age` old, checked when a mapping parks and on [`DmaShares::flush_expired`]); then until the flush queue flushes (the same limits on unlinks) | as pool + strict without the unshare's flush (one backend flush per queue flush); a parked buffer shared again costs no map and no sync |
//!
//! # Deferred: kept mappings
//!
//! Under a deferred policy an unshared buffer stays reachable until the
//! flush queue flushes anyway, so [`DmaShares::unshare`] does not unlink a
//! buffer of whole granules at once: it *parks* the mapping, and the next
//! [`share`](DmaShares::share) of the same buffer (same address, length and
//! direction, and the same physical pages, translated again) takes it back
//! with no map and no sync. Drivers reuse their buffers (a block device's
//! data buffers, a network device's receive ring), so hot buffers then cost
//! what a pre-mapped domain costs. Parked mappings are evicted, oldest
//! first, into the flush queue (as an ordinary deferred unlink) when there
//! are more than the queue's `max_entries` of them or `max_bytes` bytes, when
//! one is `max_age` old (checked whenever a mapping parks, and by
//! [`DmaShares::flush_expired`], which a timer may call), and when the table
//! needs room. [`DmaShares::flush_deferred`] evicts them all and flushes the
//! queue: afterwards the device reaches no unshared buffer. Shares with a
//! bounced part never park (the bounce memory goes back, which must not wait
//! for a flush). [`ShareCounters::reused`] counts the shares that took a
//! parked mapping, [`DmaShares::parked`] how many wait.
//!
//! What a virtio-blk read costs (header 16 bytes `DriverToDevice`, data
//! `DeviceToDriver` page aligned, status 1 byte `DeviceToDriver`; from the
//! counters, checked against the fake IOMMU in `tests/pool.rs`):
//!
//! | Data | Pool | Maps | Flushes | Bytes copied | Frames allocated |
//! |---|---|---|---|---|---|
//! | 4 KiB | no | 3 | 6 | 18 | 2 |
//! | 4 KiB | yes | 0 | 0 | 4113 | 0 |
//! | 64 KiB | no | 3 | 6 | 18 | 2 |
//! | 64 KiB | yes | 1 | 2 | 17 | 0 |
//!
//! (4 KiB with the pool: the header copied in, the data and the status copied
//! back, nothing copied in for them.) The pool also zeroes what each share
//! used (4113 bytes for the 4 KiB request).
//! With the data 0x200 bytes into its page, the 4 KiB read costs 4 maps
//! without the pool (the data's two partial granules are bounced) and still
//! none with it; the 64 KiB read costs 5 maps and 6 flushes without, 3 maps
//! and 2 flushes with it (its partial granules in pool slots, no frame
//! allocated).
//!
//! The default threshold is one 4 KiB slot: a request of up to 4 KiB then
//! costs no map and no flush for a copy of about 4 KiB, while an IOTLB
//! flush (a command queue round trip, or a VM exit under emulation) costs
//! far more than copying a page. Larger data keeps its single in-place map
//! and its two flushes, and copies nothing but the header and status.
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
//! // Or DmaShares::new(..) for strict mapping of every share, without a pool.
//! SHARES.call_once(|| {
//!     DmaShares::with_pool(mapper, frames, &IdentityMapped, PoolConfig::DEFAULT).unwrap()
//! });
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

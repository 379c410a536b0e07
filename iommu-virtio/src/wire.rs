//! The device's structures, bit for bit (virtio 1.2/1.3, "IOMMU device").
//!
//! Everything is little-endian and, on the wire, packed: the request bodies put
//! 64-bit fields at offsets that are not multiples of 8 once the 4-byte head is
//! counted, so the fields use `zerocopy`'s unaligned little-endian integers and
//! every structure has alignment 1 and exactly the specification's size
//! (checked by the tests below and by `const` assertions).

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Request type: attach an endpoint to a domain.
pub const T_ATTACH: u8 = 1;
/// Request type: detach an endpoint from a domain.
pub const T_DETACH: u8 = 2;
/// Request type: map a range.
pub const T_MAP: u8 = 3;
/// Request type: unmap a range.
pub const T_UNMAP: u8 = 4;
/// Request type: probe an endpoint's properties.
pub const T_PROBE: u8 = 5;

/// ATTACH flag: the domain is a bypass (identity) domain.
pub const ATTACH_F_BYPASS: u32 = 1 << 0;

/// MAP flag: the device may read.
pub const MAP_F_READ: u32 = 1 << 0;
/// MAP flag: the device may write.
pub const MAP_F_WRITE: u32 = 1 << 1;
/// MAP flag: the mapping is device memory (needs `VIRTIO_IOMMU_F_MMIO`).
pub const MAP_F_MMIO: u32 = 1 << 2;
/// Every MAP flag the specification defines.
pub const MAP_F_MASK: u32 = MAP_F_READ | MAP_F_WRITE | MAP_F_MMIO;

/// Probe property type: end of the list.
pub const PROBE_T_NONE: u16 = 0;
/// Probe property type: a reserved memory region.
pub const PROBE_T_RESV_MEM: u16 = 1;
/// The bits of a property's `type` that carry the type (the rest are reserved).
pub const PROBE_T_MASK: u16 = 0xfff;

/// RESV_MEM subtype: accesses are not translated and fault or are dropped.
pub const RESV_MEM_T_RESERVED: u8 = 0;
/// RESV_MEM subtype: a software MSI doorbell (accesses bypass translation).
pub const RESV_MEM_T_MSI: u8 = 1;

/// Fault reason: unknown endpoint, or an error the device cannot classify.
pub const FAULT_R_UNKNOWN: u8 = 0;
/// Fault reason: the endpoint is not attached to a domain.
pub const FAULT_R_DOMAIN: u8 = 1;
/// Fault reason: no mapping, or a mapping without the needed permission.
pub const FAULT_R_MAPPING: u8 = 2;

/// Fault flag: a read access.
pub const FAULT_F_READ: u32 = 1 << 0;
/// Fault flag: a write access.
pub const FAULT_F_WRITE: u32 = 1 << 1;
/// Fault flag: an instruction fetch.
pub const FAULT_F_EXEC: u32 = 1 << 2;
/// Fault flag: `address` is valid.
pub const FAULT_F_ADDRESS: u32 = 1 << 8;

/// `struct virtio_iommu_req_head`: the first 4 bytes of every request.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct ReqHead {
    /// One of the `T_*` request types.
    pub kind: u8,
    /// Reserved, zero.
    pub reserved: [u8; 3],
}

/// `struct virtio_iommu_req_tail`: the last 4 bytes, written by the device.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct ReqTail {
    /// A status code ([`crate::Status`]).
    pub status: u8,
    /// Reserved.
    pub reserved: [u8; 3],
}

/// The device-readable part of an ATTACH request (head and body).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct AttachReq {
    /// `T_ATTACH`.
    pub head: ReqHead,
    /// Domain ID.
    pub domain: U32,
    /// Endpoint ID.
    pub endpoint: U32,
    /// `ATTACH_F_*`.
    pub flags: U32,
    /// Reserved, zero.
    pub reserved: [u8; 4],
}

/// The device-readable part of a DETACH request.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct DetachReq {
    /// `T_DETACH`.
    pub head: ReqHead,
    /// Domain ID.
    pub domain: U32,
    /// Endpoint ID.
    pub endpoint: U32,
    /// Reserved, zero.
    pub reserved: [u8; 8],
}

/// The device-readable part of a MAP request. The range is inclusive.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct MapReq {
    /// `T_MAP`.
    pub head: ReqHead,
    /// Domain ID.
    pub domain: U32,
    /// First IOVA.
    pub virt_start: U64,
    /// Last IOVA (inclusive).
    pub virt_end: U64,
    /// Physical address of `virt_start`.
    pub phys_start: U64,
    /// `MAP_F_*`.
    pub flags: U32,
}

/// The device-readable part of an UNMAP request. The range is inclusive.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct UnmapReq {
    /// `T_UNMAP`.
    pub head: ReqHead,
    /// Domain ID.
    pub domain: U32,
    /// First IOVA.
    pub virt_start: U64,
    /// Last IOVA (inclusive).
    pub virt_end: U64,
    /// Reserved, zero.
    pub reserved: [u8; 4],
}

/// The device-readable part of a PROBE request; the device writes
/// `probe_size` bytes of properties and then a [`ReqTail`].
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct ProbeReq {
    /// `T_PROBE`.
    pub head: ReqHead,
    /// Endpoint ID.
    pub endpoint: U32,
    /// Reserved, zero.
    pub reserved: [u8; 64],
}

impl Default for ProbeReq {
    fn default() -> Self {
        Self {
            head: ReqHead::default(),
            endpoint: U32::ZERO,
            reserved: [0; 64],
        }
    }
}

/// `struct virtio_iommu_probe_property`: the header of each probe property.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct ProbeProperty {
    /// `PROBE_T_*` in the low 12 bits.
    pub kind: U16,
    /// Length of the value that follows, in bytes (the header excluded).
    pub length: U16,
}

/// `struct virtio_iommu_probe_resv_mem` without its header: the value of a
/// RESV_MEM property. The range is inclusive.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct ResvMem {
    /// `RESV_MEM_T_*`.
    pub subtype: u8,
    /// Reserved.
    pub reserved: [u8; 3],
    /// First address.
    pub start: U64,
    /// Last address (inclusive).
    pub end: U64,
}

/// `struct virtio_iommu_fault`: what the device posts on the event queue.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct Fault {
    /// `FAULT_R_*`.
    pub reason: u8,
    /// Reserved.
    pub reserved: [u8; 3],
    /// `FAULT_F_*`.
    pub flags: U32,
    /// Endpoint ID.
    pub endpoint: U32,
    /// Reserved.
    pub reserved2: [u8; 4],
    /// The faulting address (valid with `FAULT_F_ADDRESS`).
    pub address: U64,
}

/// `struct virtio_iommu_config`: the device-specific configuration.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct Config {
    /// Page sizes the device can map: bit `n` set means `1 << n` is supported.
    pub page_size_mask: U64,
    /// First IOVA a mapping may use.
    pub input_start: U64,
    /// Last IOVA a mapping may use (inclusive).
    pub input_end: U64,
    /// First domain ID.
    pub domain_start: U32,
    /// Last domain ID (inclusive).
    pub domain_end: U32,
    /// Bytes of properties a PROBE reply holds before its tail.
    pub probe_size: U32,
    /// 1: endpoints nobody attached bypass translation; 0: their DMA faults.
    pub bypass: u8,
    /// Reserved.
    pub reserved: [u8; 3],
}

/// Byte offsets of the [`Config`] fields, for exact-width accesses.
pub mod config_offset {
    /// `page_size_mask` (u64: two u32 accesses).
    pub const PAGE_SIZE_MASK: usize = 0x00;
    /// `input_range.start` (u64).
    pub const INPUT_START: usize = 0x08;
    /// `input_range.end` (u64).
    pub const INPUT_END: usize = 0x10;
    /// `domain_range.start` (u32).
    pub const DOMAIN_START: usize = 0x18;
    /// `domain_range.end` (u32).
    pub const DOMAIN_END: usize = 0x1c;
    /// `probe_size` (u32).
    pub const PROBE_SIZE: usize = 0x20;
    /// `bypass` (u8).
    pub const BYPASS: usize = 0x24;
}

const _: () = {
    assert!(size_of::<ReqHead>() == 4);
    assert!(size_of::<ReqTail>() == 4);
    assert!(size_of::<AttachReq>() == 20);
    assert!(size_of::<DetachReq>() == 20);
    assert!(size_of::<MapReq>() == 36);
    assert!(size_of::<UnmapReq>() == 28);
    assert!(size_of::<ProbeReq>() == 72);
    assert!(size_of::<ProbeProperty>() == 4);
    assert!(size_of::<ResvMem>() == 20);
    assert!(size_of::<Fault>() == 24);
    assert!(size_of::<Config>() == 40);
};

//! virtio-iommu driver and backend for [`iova_core`].
//!
//! Not implemented yet: this crate reserves the name and the place in the
//! workspace. The driver (transports, ATTACH/MAP/UNMAP/PROBE, events, the
//! `iova_core` domain) is tracked by its own issue.
#![no_std]

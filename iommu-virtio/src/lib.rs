//! virtio-iommu driver and backend for [`iova_core`].
//!
//! Work in progress.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

mod dma;
pub mod domain;
pub mod driver;
pub mod error;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod fault;
pub mod features;
mod mmio;
pub mod probe;
pub mod transport;
pub mod wire;

pub use domain::VirtioDomain;
pub use driver::{CounterSnapshot, DriverConfig, Geometry, Request, VirtioIommu, WaitBudget};
pub use error::{RequestKind, Status, VirtioIommuError};
pub use fault::{FaultReason, FaultRecord};
pub use features::Features;
pub use probe::{ProbeInfo, ReservedKind, ReservedRegion};
pub use virtio_drivers::{self, Hal};

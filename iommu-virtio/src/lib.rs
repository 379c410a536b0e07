//! virtio-iommu driver and backend for [`iova_core`].
//!
//! Work in progress: the wire structures ([`wire`]), feature bits
//! ([`Features`]) and status codes ([`Status`], [`VirtioIommuError`]).
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod error;
pub mod features;
pub mod wire;

pub use error::{RequestKind, Status, VirtioIommuError};
pub use features::Features;

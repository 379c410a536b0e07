//! Intel VT-d backend for [`iova_core`].
//!
//! - [`acpi`]: finds the DMAR table from the RSDP and parses it (remapping
//!   units, device scopes, reserved regions, ATS root ports).
//! - [`caps`]: VER, CAP and ECAP decoded.
//! - [`regs`]: register offsets and MMIO access ([`regs::Mmio`]).
//! - [`unit`]: one remapping unit ([`VtdUnit`]): probe, root and context
//!   tables, global commands, fault recording.
//! - [`context`]: legacy root and context entries.
//! - [`second_level`]: the second-level page-table format for iova-core's
//!   engine ([`SecondLevel`]).
//! - [`descriptor`], [`queue`]: invalidation descriptors and their submission
//!   (queued, or register-based without ECAP.QI).
//! - [`domain`]: [`VtdInvalidator`], which makes a
//!   [`PageTableDomain`](iova_core::PageTableDomain) over [`SecondLevel`] an
//!   [`IommuDomain`](iova_core::IommuDomain).
//! - [`fault`]: typed fault records.
//! - [`counters`]: what the driver did.
//! - [`fake`] (feature `fakes`): a VT-d unit behind mocked MMIO, for tests.
//!
//! # Dependencies
//!
//! `zerocopy` reads firmware tables without `unsafe` and without reading
//! past them; `spin` serialises the invalidation interface and context-table
//! updates (no OS to block on, critical sections are short and bounded);
//! `heapless` holds one flush's descriptors without a heap.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod acpi;
pub mod caps;
pub mod context;
pub mod counters;
pub mod descriptor;
pub mod domain;
#[cfg(any(test, feature = "fakes"))]
pub mod fake;
pub mod fault;
pub mod queue;
pub mod regs;
pub mod second_level;
pub mod unit;

#[cfg(test)]
mod tests;

pub use acpi::dmar::{Bdf, Dmar};
pub use caps::Features;
pub use context::ContextState;
pub use counters::CounterSnapshot;
pub use domain::VtdInvalidator;
pub use fault::{FaultReason, FaultRecord};
pub use second_level::SecondLevel;
pub use unit::{UnitConfig, VtdError, VtdUnit};

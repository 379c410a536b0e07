//! Intel VT-d backend for [`iova_core`].
//!
//! - [`acpi`]: finds the DMAR table from the RSDP and parses it (remapping
//!   units, device scopes, reserved regions, ATS root ports).
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod acpi;

//! Arm SMMUv3 backend for [`iova_core`].
//!
//! Not implemented yet: this crate reserves the name and the place in the
//! workspace. The driver (probe, stream table, command and event queues, the
//! `iova_core` domain) is tracked by its own issue.
#![no_std]

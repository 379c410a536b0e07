//! Intel VT-d backend for [`iova_core`].
//!
//! Not implemented yet: this crate reserves the name and the place in the
//! workspace. The driver (DMAR parsing, root/context tables, queued
//! invalidation, fault recording, the `iova_core` domain) is tracked by its
//! own issue.
#![no_std]

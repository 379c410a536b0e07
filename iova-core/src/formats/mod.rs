//! Page-table formats for the generic engine ([`crate::pt::PageTable`]).
//!
//! These are CPU architecture formats that several IOMMUs share, as in Linux's
//! `generic_pt`: Arm's VMSAv8-64 (LPAE) tables of both stages are walked by
//! SMMUv2 and SMMUv3 (and shared with a hypervisor's CPU stage 2), and the
//! x86-64 format is VT-d's first-level (and AMD-Vi v2) format. Formats that
//! only one IOMMU uses (VT-d second level) live in that backend's crate and
//! implement the same trait.

pub mod lpae;
pub mod x86_64;

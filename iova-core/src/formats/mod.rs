//! Page-table formats for the generic engine ([`crate::pt::PageTable`]).
//!
//! These are CPU architecture formats that several IOMMUs share, as in Linux's
//! `generic_pt`: Arm's VMSAv8-64 (LPAE) descriptors are walked by SMMUv2 and
//! SMMUv3, and the x86-64 format is VT-d's first-level (and AMD-Vi v2) format.
//! Formats that only one IOMMU uses (VT-d second level, SMMUv3 stage 2 with its
//! own attributes) live in that backend's crate and implement the same trait.

pub mod lpae;
pub mod x86_64;

/// How many levels of `bits`-wide tables cover `ia_bits` above a `granule_shift`
/// page, and how many index bits the root then has.
fn split_levels(ia_bits: u32, granule_shift: u32, bits: u32) -> (usize, u32) {
    let above = ia_bits - granule_shift;
    let levels = above.div_ceil(bits);
    (levels as usize, above - bits * (levels - 1))
}

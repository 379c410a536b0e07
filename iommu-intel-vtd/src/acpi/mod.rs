//! ACPI: from the RSDP through the XSDT (or RSDT) to one table, with every
//! checksum verified and every length checked against what was read.
//!
//! The walk and the table checks are shared by every backend and live in
//! [`iova_core::acpi`]; they are re-exported here so `iommu_intel_vtd::acpi`
//! paths keep working. What is VT-d's own is [`dmar`].

pub mod dmar;

pub use iova_core::acpi::{
    AcpiError, PhysMemory, Rsdp, SDT_HEADER_LEN, SdtHeader, checksum_ok, find_table, read_table,
    verify_table,
};

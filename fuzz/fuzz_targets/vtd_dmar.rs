//! The ACPI DMAR parser of iommu-intel-vtd and the RSDP -> XSDT/RSDT walk
//! that finds it, on arbitrary firmware bytes: no panic, no read outside the
//! table, and every structure and device scope exactly where the VT-d
//! specification's layout puts it (checks in
//! `iommu-intel-vtd/tests/fuzz_check/mod.rs`, shared with the corpus replay).
#![no_main]

#[path = "../../iommu-intel-vtd/tests/fuzz_check/mod.rs"]
#[allow(dead_code)] // the other target's checks
mod fuzz_check;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_check::dmar(data));

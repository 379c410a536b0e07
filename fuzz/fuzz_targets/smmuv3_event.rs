//! What an SMMUv3 or its firmware hands the driver: event queue records,
//! GERROR bits, the ACPI IORT and the device tree's `iommu-map`, decoded
//! consistently with the specifications, no panic (checks in
//! `iommu-arm-smmuv3/tests/fuzz_check/mod.rs`).
#![no_main]

#[path = "../../iommu-arm-smmuv3/tests/fuzz_check/mod.rs"]
mod fuzz_check;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_check::check(data));

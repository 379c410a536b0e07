//! VT-d fault recording registers (and the VER/CAP/ECAP that locate them)
//! decoded into typed fault records: every field as the specification
//! places it, no panic (checks in `iommu-intel-vtd/tests/fuzz_check/mod.rs`).
#![no_main]

#[path = "../../iommu-intel-vtd/tests/fuzz_check/mod.rs"]
#[allow(dead_code)] // the other target's checks
mod fuzz_check;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_check::fault(data));

//! What a virtio-iommu device writes: reply status tails, PROBE property
//! lists (RESV_MEM) and fault events, decoded as the specification says and
//! turned into IOVA holes, no panic (checks in
//! `iommu-virtio/tests/fuzz_check/mod.rs`).
#![no_main]

#[path = "../../iommu-virtio/tests/fuzz_check/mod.rs"]
mod fuzz_check;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_check::check(data));

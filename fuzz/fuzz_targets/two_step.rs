//! The two-step API under arbitrary sequences of alloc / link / sync / unlink
//! / destroy / free / drop and one-shot map / map_sg / unmap, with arbitrary
//! sizes, offsets and addresses, injected flush failures and page-table memory
//! exhaustion, checked against the model after every step (the harness the
//! property test uses: nothing mapped that should not be, no stale
//! translation after a sync, no frame leaked or freed twice, no panic).
#![no_main]

#[path = "../../iova-core/tests/model/harness.rs"]
mod harness;

use iova_core::formats::lpae::LpaeS1;
use iova_core::formats::x86_64::X86_64;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (seed, ops) = harness::decode_ops(data);
    let cov = harness::Coverage::default();
    for result in [
        harness::run_case(LpaeS1::va48(), seed, &ops, &cov),
        harness::run_case(X86_64::four_level(), seed, &ops, &cov),
    ] {
        if let Err(e) = result {
            panic!("{e}\n{ops:#?}");
        }
    }
});

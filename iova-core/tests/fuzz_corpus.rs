//! The fuzz corpora replayed as regression tests: every hand-built seed in
//! `fuzz/seeds/<target>/` and every input the fuzzer kept in
//! `fuzz/corpus/<target>/` (coverage it found, crashes once fixed) runs here on
//! every `cargo test`, checked by the same model as the fuzz target.
#![cfg(feature = "fakes")]

#[path = "model/harness.rs"]
mod harness;

use std::path::Path;

use harness::{Coverage, decode_ops, run_case};
use iova_core::fakes::corpus::replay;
use iova_core::formats::lpae::LpaeS1;
use iova_core::formats::x86_64::X86_64;

#[test]
fn two_step_corpus_matches_the_model() {
    let cov = Coverage::default();
    let fuzz = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz"));
    replay(fuzz, "two_step", |data| {
        let (seed, ops) = decode_ops(data);
        for result in [
            run_case(LpaeS1::va48(), seed, &ops, &cov),
            run_case(X86_64::four_level(), seed, &ops, &cov),
        ] {
            if let Err(e) = result {
                panic!("{e}\n{ops:#?}");
            }
        }
    });
}

//! The fuzz corpora replayed as regression tests: every hand-built seed in
//! `fuzz/seeds/<target>/` and every input the fuzzer kept in
//! `fuzz/corpus/<target>/` (coverage it found, crashes once fixed) runs here on
//! every `cargo test`, checked by the same model as the fuzz target.
#![cfg(feature = "fakes")]

#[path = "model/harness.rs"]
mod harness;

use std::fs;
use std::path::PathBuf;

use harness::{Coverage, decode_ops, run_case};
use iova_core::formats::lpae::LpaeS1;
use iova_core::formats::x86_64::X86_64;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut inputs = Vec::new();
    for kind in ["seeds", "corpus"] {
        let dir = fuzz.join(kind).join(target);
        let before = inputs.len();
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_file() {
                let data = fs::read(&path).unwrap();
                inputs.push((path, data));
            }
        }
        assert!(inputs.len() > before, "{}: empty", dir.display());
    }
    inputs.sort();
    inputs
}

#[test]
fn two_step_corpus_matches_the_model() {
    let cov = Coverage::default();
    // Miri is about 1000 times slower: a sample still checks the code paths.
    let step = if cfg!(miri) { 16 } else { 1 };
    for (path, data) in corpus("two_step").into_iter().step_by(step) {
        let (seed, ops) = decode_ops(&data);
        for result in [
            run_case(LpaeS1::va48(), seed, &ops, &cov),
            run_case(X86_64::four_level(), seed, &ops, &cov),
        ] {
            if let Err(e) = result {
                panic!("{}: {e}\n{ops:#?}", path.display());
            }
        }
    }
}

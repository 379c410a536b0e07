//! The `smmuv3_event` fuzz corpora replayed as regression tests: every
//! hand-built seed in `fuzz/seeds/smmuv3_event/` and every input the fuzzer
//! kept in `fuzz/corpus/smmuv3_event/` runs through the same checks as the
//! fuzz target (`fuzz_check`) on every `cargo test`.
#![cfg(feature = "fakes")]

mod fuzz_check;

use std::fs;
use std::path::PathBuf;

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
fn smmuv3_event_corpus_decodes_consistently() {
    let step = if cfg!(miri) { 16 } else { 1 };
    for (path, data) in corpus("smmuv3_event").into_iter().step_by(step) {
        let run = std::panic::catch_unwind(|| fuzz_check::check(&data));
        assert!(run.is_ok(), "{}", path.display());
    }
}

//! The `vtd_dmar` and `vtd_fault` fuzz corpora replayed as regression tests:
//! every hand-built seed in `fuzz/seeds/<target>/` and every input the fuzzer
//! kept in `fuzz/corpus/<target>/` runs through the same checks as the fuzz
//! targets (`fuzz_check`) on every `cargo test`.

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

fn replay(target: &str, check: fn(&[u8])) {
    let step = if cfg!(miri) { 16 } else { 1 };
    for (path, data) in corpus(target).into_iter().step_by(step) {
        let run = std::panic::catch_unwind(|| check(&data));
        assert!(run.is_ok(), "{}", path.display());
    }
}

#[test]
fn vtd_dmar_corpus_parses_consistently() {
    replay("vtd_dmar", fuzz_check::dmar);
}

#[test]
fn vtd_fault_corpus_decodes_as_the_specification_says() {
    replay("vtd_fault", fuzz_check::fault);
}

//! The `vtd_dmar` and `vtd_fault` fuzz corpora replayed as regression tests
//! (seeds and kept inputs, see `iova_core::fakes::corpus`), through the same
//! checks as the fuzz targets (`fuzz_check`).

mod fuzz_check;

use std::path::Path;

use iova_core::fakes::corpus::replay;

fn fuzz_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz"))
}

#[test]
fn vtd_dmar_corpus_parses_consistently() {
    replay(fuzz_dir(), "vtd_dmar", fuzz_check::dmar);
}

#[test]
fn vtd_fault_corpus_decodes_as_the_specification_says() {
    replay(fuzz_dir(), "vtd_fault", fuzz_check::fault);
}

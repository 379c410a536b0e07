//! The `smmuv3_event` fuzz corpus replayed as a regression test (seeds and
//! kept inputs, see `iova_core::fakes::corpus`), through the same checks as
//! the fuzz target (`fuzz_check`).
#![cfg(feature = "fakes")]

mod fuzz_check;

use std::path::Path;

use iova_core::fakes::corpus::replay;

fn fuzz_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz"))
}

#[test]
fn smmuv3_event_corpus_decodes_consistently() {
    replay(fuzz_dir(), "smmuv3_event", fuzz_check::check);
}

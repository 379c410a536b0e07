//! The `virtio_reply` fuzz corpus replayed as a regression test (seeds and
//! kept inputs, see `iova_core::fakes::corpus`), through the same checks as
//! the fuzz target (`fuzz_check`).

mod fuzz_check;

use std::path::Path;

use iova_core::fakes::corpus::replay;

fn fuzz_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz"))
}

#[test]
fn virtio_reply_corpus_decodes_as_the_specification_says() {
    replay(fuzz_dir(), "virtio_reply", fuzz_check::check);
}

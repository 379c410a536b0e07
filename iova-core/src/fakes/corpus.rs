//! Fuzz corpora replayed as ordinary tests, so every `cargo test` (and Miri)
//! runs what the fuzzer found.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::{fs, vec::Vec};

/// Every input of the fuzz target `target` under `fuzz_dir`: the hand-built
/// seeds in `seeds/<target>/` and the inputs the fuzzer kept in
/// `corpus/<target>/`, sorted by path.
///
/// # Panics
///
/// When either directory is missing, unreadable or empty: a test that
/// replays nothing must fail, not pass.
pub fn inputs(fuzz_dir: &Path, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut inputs = Vec::new();
    for kind in ["seeds", "corpus"] {
        let dir = fuzz_dir.join(kind).join(target);
        let before = inputs.len();
        let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .path();
            if path.is_file() {
                let data = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                inputs.push((path, data));
            }
        }
        assert!(inputs.len() > before, "{}: empty", dir.display());
    }
    inputs.sort();
    inputs
}

/// Runs `check` on every input of `target` (see [`inputs`]); under Miri, which
/// is about a thousand times slower, on every 16th.
///
/// # Panics
///
/// When `check` panics on an input, naming the input's file.
pub fn replay(fuzz_dir: &Path, target: &str, check: impl Fn(&[u8])) {
    let step = if cfg!(miri) { 16 } else { 1 };
    for (path, data) in inputs(fuzz_dir, target).into_iter().step_by(step) {
        if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
            panic!("{}: the check failed on this input", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("iova-core-corpus-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn replays_seeds_and_corpus_and_names_the_failing_input() {
        let dir = scratch("replay");
        for (kind, name, data) in [("seeds", "a", &b"ok"[..]), ("corpus", "b", b"bad")] {
            fs::create_dir_all(dir.join(kind).join("t")).unwrap();
            fs::write(dir.join(kind).join("t").join(name), data).unwrap();
        }
        let got = inputs(&dir, "t");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].1, b"bad", "sorted by path: corpus/ before seeds/");
        let seen = std::cell::Cell::new(0);
        let r = catch_unwind(AssertUnwindSafe(|| {
            replay(&dir, "t", |d| {
                seen.set(seen.get() + 1);
                assert_ne!(d, b"bad");
            })
        }));
        let msg = *r.unwrap_err().downcast::<String>().unwrap();
        assert!(msg.contains("corpus/t/b"), "{msg}");
        replay(&dir, "t", |d| assert!(d.len() >= 2));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_empty_corpus_fails() {
        let dir = scratch("empty");
        fs::create_dir_all(dir.join("seeds/t")).unwrap();
        fs::write(dir.join("seeds/t/a"), b"x").unwrap();
        fs::create_dir_all(dir.join("corpus/t")).unwrap();
        assert!(catch_unwind(|| inputs(&dir, "t")).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}

//! Every fuzz target over its corpus (`fuzz/corpus/<target>/`, seeds and
//! every input a fuzzing run found worth keeping, crashes included once
//! fixed) and over the built-in seeds: a regression in any decoder fails
//! here, without libFuzzer.

use std::path::PathBuf;

fn corpus_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus")
}

#[test]
fn every_target_runs_its_corpus_without_panicking() {
    let root = corpus_root();
    for (name, target) in tarn_verify::fuzz::TARGETS {
        let dir = root.join(name);
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}; every target needs a corpus", dir.display()));
        let mut n = 0;
        for entry in entries {
            let path = entry.expect("a corpus entry").path();
            let bytes = std::fs::read(&path).expect("a corpus file");
            let result = std::panic::catch_unwind(|| target(&bytes));
            assert!(result.is_ok(), "{name} panics on {}", path.display());
            n += 1;
        }
        assert!(n > 0, "{} is empty", dir.display());
    }
}

#[test]
fn built_in_seeds_and_their_mutations_pass() {
    for (name, bytes) in tarn_verify::fuzz::seeds() {
        let target = tarn_verify::fuzz::TARGETS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| *t)
            .expect("a seed of a known target");
        target(&bytes);
        // Every truncation, and every byte flipped: cheap mutations that
        // reach the error paths of each decoder.
        for cut in 0..bytes.len() {
            target(&bytes[..cut]);
        }
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0xff;
            target(&flipped);
        }
    }
}

//! Replays every committed fuzz input — the minimized corpora in `fuzz/corpus/<target>/` and the
//! inputs that once crashed a target, kept in `fuzz/regressions/<target>/` — through the same
//! `kiln_fuzz_entry` function the libFuzzer target calls. No fuzzing engine is needed: this is an
//! ordinary test, so CI checks that no input the fuzzer ever kept panics, aborts or hangs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

type Entry = fn(&[u8]) -> Result<(), String>;

const TARGETS: [(&str, Entry); 4] = [
    ("onnx_import", kiln_fuzz_entry::onnx::import_and_plan),
    ("bundle_load", kiln_fuzz_entry::bundle::open_verify_run),
    ("npy_read", kiln_fuzz_entry::npy::read_tensors),
    ("generation_config", kiln_fuzz_entry::generation::config_and_tokenizer),
];

/// No single input may take this long (libFuzzer ran them with `-timeout=10`).
const PER_INPUT: Duration = Duration::from_secs(20);

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

/// Runs `entry` on every file of `dir`; returns (accepted, refused).
fn replay(target: &str, entry: Entry, dir: &Path) -> (usize, usize) {
    let (mut ok, mut refused) = (0, 0);
    for file in files(dir) {
        let data = std::fs::read(&file).unwrap();
        let started = Instant::now();
        let result = std::panic::catch_unwind(|| entry(&data));
        let took = started.elapsed();
        match result {
            Ok(Ok(())) => ok += 1,
            Ok(Err(msg)) => {
                assert!(!msg.trim().is_empty(), "{target}: {} was refused with an empty message", file.display());
                refused += 1;
            }
            Err(_) => panic!("{target}: {} panicked", file.display()),
        }
        assert!(took < PER_INPUT, "{target}: {} took {took:?}", file.display());
    }
    (ok, refused)
}

#[test]
fn every_corpus_and_regression_input_is_handled() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    for (target, entry) in TARGETS {
        let corpus = root.join("corpus").join(target);
        let (ok, refused) = replay(target, entry, &corpus);
        assert!(ok + refused > 0, "{target}: no corpus in {}", corpus.display());
        // The seeds are real files kiln reads; a corpus that kiln refuses whole means the target
        // stopped reaching past the first check.
        assert!(ok > 0, "{target}: kiln accepted none of the {refused} corpus inputs");
        let (rok, rrefused) = replay(target, entry, &root.join("regressions").join(target));
        eprintln!("{target}: corpus {ok} accepted, {refused} refused; regressions {} replayed", rok + rrefused);
    }
}

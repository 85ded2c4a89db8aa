//! One function per fuzz target. `fuzz/fuzz_targets/*.rs` call these with libFuzzer's bytes and
//! `tests/fuzz_replay.rs` calls them with every committed corpus file, so CI (which has no fuzzing
//! engine) replays exactly the code that was fuzzed.
//!
//! Each function returns `Ok` when kiln accepted the input and `Err(message)` when it refused it;
//! either is fine. A panic, an abort, a hang or an allocation past the fuzzer's limit is a bug.

pub mod bundle;
pub mod generation;
pub mod npy;
pub mod onnx;

/// What the harnesses let one input allocate on purpose (arena, inputs): well under the fuzzer's
/// `-rss_limit_mb=2048`, so any allocation near that limit is one kiln did not bound.
pub const HARNESS_MEMORY: u64 = 256 << 20;

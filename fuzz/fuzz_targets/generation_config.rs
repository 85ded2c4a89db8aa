#![no_main]
//! Calls kiln_fuzz_entry::generation::config_and_tokenizer; tests/fuzz_replay.rs replays this target's corpus in CI.
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        // kiln turns some library panics into errors (it catches them around the zip reader and
        // the tokenizers library); libfuzzer-sys's abort-on-panic hook would report those as
        // crashes. A panic kiln does not catch still aborts: libfuzzer-sys aborts when one
        // unwinds out of the target.
        let _ = std::panic::take_hook();
    },
    |data: &[u8]| {
        let _ = kiln_fuzz_entry::generation::config_and_tokenizer(data);
    }
);

//! A bundle's `tokenizer.json`, parsed and used without letting the tokenizers library panic
//! through kiln. A bundle is untrusted input, and tokenizers 0.22 panics on some malformed files
//! (a `decoder` object that fits no decoder type hits an `expect` in its deserializer; found by
//! the `generation_config` fuzz target). Such panics become [`TokenizerError`]s here.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;
use tokenizers::Tokenizer;

/// The tokenizer could not be read or used; the message says why.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TokenizerError(pub String);

/// Parses `tokenizer.json` bytes.
pub fn parse(bytes: &[u8]) -> Result<Tokenizer, TokenizerError> {
    guarded(|| Tokenizer::from_bytes(bytes))?.map_err(|e| TokenizerError(e.to_string()))
}

/// Token ids of `text`; `special` matches special tokens written in the text.
pub fn encode(tok: &Tokenizer, text: &str, special: bool) -> Result<Vec<u32>, TokenizerError> {
    let enc = guarded(|| tok.encode(text, special))?.map_err(|e| TokenizerError(e.to_string()))?;
    Ok(enc.get_ids().to_vec())
}

/// The text of `ids`, special tokens skipped.
pub fn decode(tok: &Tokenizer, ids: &[u32]) -> Result<String, TokenizerError> {
    guarded(|| tok.decode(ids, true))?.map_err(|e| TokenizerError(e.to_string()))
}

thread_local! {
    /// Set while this thread runs tokenizer code: its panics are reported as errors, not printed.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, turning a panic into an error. The panic hook is wrapped once so that panics caught
/// here print nothing (the error carries the message); every other panic reaches the previous
/// hook unchanged.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, TokenizerError> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let was = GUARDED.with(|g| g.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(was));
    result.map_err(|payload| {
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("no message");
        TokenizerError(format!("the tokenizers library failed on this file: {msg}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The input the fuzzer found: a decoder object that is not JSON any decoder type accepts.
    const BAD_DECODER: &str = r#"{"version": "1.0", "model": {"type": "WordLevel", "vocab": {"a": 0}, "unk_token": "a"},
        "decoder": {"type": "WordPiece", "prefix": "@@", "cleanup": true, "x": [1, }}"#;

    #[test]
    fn a_malformed_decoder_is_an_error_not_a_panic() {
        // The library itself panics on this file (if an upgrade fixes that, this guard can go).
        let raw = panic::catch_unwind(|| Tokenizer::from_bytes(BAD_DECODER.as_bytes()).map(|_| ()));
        assert!(raw.is_err(), "tokenizers no longer panics here: {raw:?}");
        let err = parse(BAD_DECODER.as_bytes()).unwrap_err().to_string();
        assert!(!err.is_empty());
        // The hook is still there for everyone else's panics.
        assert!(panic::catch_unwind(|| panic!("elsewhere")).is_err());
    }

    #[test]
    fn a_good_tokenizer_encodes_and_decodes() {
        let good = r#"{"version": "1.0", "model": {"type": "WordLevel", "vocab": {"a": 0, "b": 1}, "unk_token": "a"},
            "pre_tokenizer": {"type": "WhitespaceSplit"}}"#;
        let tok = parse(good.as_bytes()).unwrap();
        let ids = encode(&tok, "b a b", true).unwrap();
        assert_eq!(ids, [1, 0, 1]);
        assert_eq!(decode(&tok, &ids).unwrap(), "b a b");
    }
}

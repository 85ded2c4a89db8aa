//! `generation.json`: what a bundle of a causal language model needs beyond its programs to
//! generate text — special token ids, the chat template, the context it was planned for, and
//! which inputs and outputs carry token ids, logits and the KV cache.

use serde::{Deserialize, Serialize};

/// Name of the bundle entry holding a [`GenerationConfig`] as JSON.
pub const GENERATION_ENTRY: &str = "generation.json";
/// Name of the bundle entry holding the Hugging Face `tokenizer.json`.
pub const TOKENIZER_ENTRY: &str = "tokenizer.json";

/// How a causal LM bundle is driven.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerationConfig {
    /// Token prepended by the tokenizer or the chat template, if the model has one.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// Tokens that end generation.
    #[serde(default)]
    pub eos_token_ids: Vec<u32>,
    /// Jinja chat template (Hugging Face convention: `messages`, `add_generation_prompt`).
    #[serde(default)]
    pub chat_template: Option<String>,
    /// The text of the BOS and EOS tokens, which chat templates refer to.
    #[serde(default)]
    pub bos_token: Option<String>,
    #[serde(default)]
    pub eos_token: Option<String>,
    /// Most tokens (prompt + generated) a sequence may hold: the decode plan's bound.
    pub max_context: u64,
    /// Most tokens one `prefill` call takes.
    pub prefill_max: u64,
    /// Input holding the token ids (`input_ids`).
    pub input_ids: String,
    /// Output holding the logits, `[batch, sequence, vocab]`.
    pub logits: String,
    /// Past/present pairs; empty when the model recomputes the whole sequence each token.
    #[serde(default)]
    pub kv: Vec<KvPair>,
}

/// One cached tensor: fed as `past` to a step, returned as `present` holding past + new positions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KvPair {
    pub past: String,
    pub present: String,
    /// The sequence axis of both tensors.
    pub axis: usize,
}

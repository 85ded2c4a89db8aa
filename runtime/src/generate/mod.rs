//! Text generation with a causal LM bundle: tokenize, run `prefill` on the prompt, then `decode`
//! one token at a time. The KV cache is a [`KvState`] both entry points append to in place; any
//! KV pair the compiler could not keep in place is fed back, `present` of one step as `past` of
//! the next.
//!
//! A [`LanguageModel`] is the shareable, read-only part (programs, tokenizer, `generation.json`);
//! each thread makes its own [`Generator`], which owns the sessions and the cache.

pub mod chat;
mod feeds;
pub mod sampler;
pub mod tokenizer;

use crate::bundle::LoadedBundle;
use crate::error::RuntimeError;
use crate::model::Model;
use crate::session::{Profile, Session};
use crate::state::KvState;
use crate::view::TensorRef;
use feeds::{Fed, Feeds};
use kiln_formats::generation::{GenerationConfig, GENERATION_ENTRY, TOKENIZER_ENTRY};
use kiln_formats::{DType, Tensor};
pub use sampler::{Sampler, Sampling};
use std::ops::ControlFlow;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokenizers::Tokenizer;

/// Why text could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("the bundle is not a causal language model (it has no {GENERATION_ENTRY}; compile a model with an input_ids input and a logits output)")]
    NotCausalLm,
    #[error("{GENERATION_ENTRY}: {0}")]
    Config(String),
    #[error("the bundle has no tokenizer (compile with --tokenizer FILE, or from a folder holding tokenizer.json)")]
    NoTokenizer,
    #[error("{TOKENIZER_ENTRY}: {0}")]
    Tokenizer(String),
    #[error("the bundle has no chat template ({GENERATION_ENTRY} holds none); drop --chat")]
    NoChatTemplate,
    #[error("chat template: {0}")]
    ChatTemplate(String),
    #[error("the bundle has no '{0}' entry point for this target")]
    MissingEntry(String),
    #[error("the prompt is {tokens} tokens, but the bundle was compiled for a context of {max_context} (recompile with --max-context)")]
    PromptTooLong { tokens: usize, max_context: u64 },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("entry point '{entry}': {error}")]
    Run { entry: String, error: Box<RuntimeError> },
    #[error("entry point '{entry}': {reason}")]
    Output { entry: String, reason: String },
}

/// The read-only parts of a causal LM bundle, shared by every [`Generator`] made from it.
pub struct LanguageModel {
    config: GenerationConfig,
    tokenizer: TokenizerSlot,
    prefill: Arc<Model>,
    decode: Option<Arc<Model>>,
}

/// The tokenizer, parsed the first time it is asked for. Parsing a real `tokenizer.json` is the
/// slowest part of loading (SmolLM2's 3.5 MB: ~70 ms, against ~15 ms for the bundle and its three
/// programs), and generating from token ids never needs it. It used to be parsed on a thread of
/// its own from [`LanguageModel::from_bundle`] on, which took one of two cores from the first
/// prompt's products: with an 8-token prompt of ids, 47% of the CPU time from open to the first
/// token was that parse. A program that wants it ready before its first text calls
/// [`LanguageModel::tokenizer`] once at start. A malformed file is reported by every call for
/// it, as [`GenerateError::Tokenizer`].
struct TokenizerSlot {
    bytes: Option<kiln_formats::SharedBytes>,
    ready: OnceLock<Result<Option<Tokenizer>, String>>,
}

impl TokenizerSlot {
    fn ready(tokenizer: Option<Tokenizer>) -> TokenizerSlot {
        TokenizerSlot { bytes: None, ready: OnceLock::from(Ok(tokenizer)) }
    }

    /// `bytes`, parsed when first asked for.
    fn pending(bytes: kiln_formats::SharedBytes) -> TokenizerSlot {
        TokenizerSlot { bytes: Some(bytes), ready: OnceLock::new() }
    }

    fn get(&self) -> Result<Option<&Tokenizer>, GenerateError> {
        let result = self.ready.get_or_init(|| match &self.bytes {
            Some(b) => tokenizer::parse(b.as_slice()).map(Some).map_err(|e| e.to_string()),
            None => Ok(None),
        });
        result.as_ref().map(Option::as_ref).map_err(|e| GenerateError::Tokenizer(e.clone()))
    }
}

/// What one generation did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerateStats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Time to the first generated token (the prompt's forward passes).
    pub prefill: Duration,
    /// Time of every later forward pass.
    pub decode: Duration,
    pub stop: StopReason,
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StopReason {
    /// An end-of-sequence token was generated.
    Eos,
    /// `max_tokens` were generated.
    #[default]
    MaxTokens,
    /// The context the bundle was compiled for is full.
    ContextFull,
    /// The callback asked to stop.
    Callback,
}

/// Options of one generation.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// Stop at an end-of-sequence token (it is passed to the callback, then generation ends).
    pub stop_at_eos: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions { max_tokens: 128, sampling: Sampling::default(), stop_at_eos: true }
    }
}

impl LanguageModel {
    /// The model that runs the prompt.
    pub fn prefill_model(&self) -> &Arc<Model> {
        &self.prefill
    }

    /// The model that decodes one token at a time, when the bundle has one.
    pub fn decode_model(&self) -> Option<&Arc<Model>> {
        self.decode.as_ref()
    }

    /// The causal LM in `bundle` for `target` (the first target when `None`).
    pub fn from_bundle(bundle: &LoadedBundle, target: Option<&str>) -> Result<LanguageModel, GenerateError> {
        let raw = bundle.bundle.entry(GENERATION_ENTRY).ok_or(GenerateError::NotCausalLm)?;
        let config: GenerationConfig =
            serde_json::from_slice(raw.as_slice()).map_err(|e| GenerateError::Config(e.to_string()))?;
        let tokenizer = match bundle.bundle.entry(TOKENIZER_ENTRY) {
            Some(b) => TokenizerSlot::pending(b),
            None => TokenizerSlot::ready(None),
        };
        let target = target.or_else(|| bundle.entries.first().map(|(ep, _)| ep.target.as_str()));
        // `prefill_last` computes only the logits generation reads; bundles before it, or of a
        // model whose head it could not slice, have `prefill` alone.
        let prefill = bundle
            .model("prefill_last", target)
            .or_else(|| bundle.model("prefill", target))
            .cloned()
            .ok_or_else(|| GenerateError::MissingEntry("prefill".into()))?;
        let decode = bundle.model("decode", target).cloned();
        if !config.kv.is_empty() && decode.is_none() {
            return Err(GenerateError::MissingEntry("decode".into()));
        }
        Self::with_slot(config, tokenizer, prefill, decode)
    }

    /// A language model from its parts; checks that the entry points take what the config names.
    pub fn new(
        config: GenerationConfig,
        tokenizer: Option<Tokenizer>,
        prefill: Arc<Model>,
        decode: Option<Arc<Model>>,
    ) -> Result<LanguageModel, GenerateError> {
        Self::with_slot(config, TokenizerSlot::ready(tokenizer), prefill, decode)
    }

    fn with_slot(
        config: GenerationConfig,
        tokenizer: TokenizerSlot,
        prefill: Arc<Model>,
        decode: Option<Arc<Model>>,
    ) -> Result<LanguageModel, GenerateError> {
        for (entry, model) in [("prefill", Some(&prefill)), ("decode", decode.as_ref())] {
            let Some(model) = model else { continue };
            Feeds::check(model, &config).map_err(|reason| GenerateError::Output { entry: entry.into(), reason })?;
            // Both entry points append to one cache, so they must keep the same states.
            crate::state::same_states(&prefill.program().states, &model.program().states)
                .map_err(|e| GenerateError::Output { entry: entry.into(), reason: e.to_string() })?;
        }
        Ok(LanguageModel { config, tokenizer, prefill, decode })
    }

    /// How many of the config's KV pairs the bundle keeps in place (the rest are copied).
    pub fn kv_in_place(&self) -> usize {
        self.prefill.program().states.len()
    }

    pub fn config(&self) -> &GenerationConfig {
        &self.config
    }

    /// The bundle's tokenizer (parsed by the first call), or
    /// [`GenerateError::NoTokenizer`], or [`GenerateError::Tokenizer`] when it is malformed.
    pub fn tokenizer(&self) -> Result<&Tokenizer, GenerateError> {
        self.tokenizer.get()?.ok_or(GenerateError::NoTokenizer)
    }

    /// Token ids of `text`; with `chat`, of the bundle's chat template applied to it as a user
    /// message (the template supplies any BOS, as `apply_chat_template` does).
    pub fn encode(&self, text: &str, chat: bool) -> Result<Vec<u32>, GenerateError> {
        let tok = self.tokenizer()?;
        let (text, special) = if chat {
            let template = self.config.chat_template.as_deref().ok_or(GenerateError::NoChatTemplate)?;
            let text = chat::render(template, text, self.config.bos_token.as_deref(), self.config.eos_token.as_deref())
                .map_err(|e| GenerateError::ChatTemplate(format!("{e:#}")))?;
            (text, false)
        } else {
            (text.to_string(), true)
        };
        tokenizer::encode(tok, &text, special).map_err(|e| GenerateError::Tokenizer(e.to_string()))
    }

    /// A generator with its own sessions (one per thread).
    pub fn generator(self: &Arc<Self>) -> Generator {
        Generator {
            lm: self.clone(),
            prefill: Session::new(self.prefill.clone()),
            decode: self.decode.as_ref().map(|m| Session::new(m.clone())),
            state: self.prefill.has_state().then(|| KvState::new(&self.prefill)),
        }
    }
}

/// Per-thread generation state over a shared [`LanguageModel`].
pub struct Generator {
    lm: Arc<LanguageModel>,
    prefill: Session,
    decode: Option<Session>,
    /// The KV cache kept in place, when the bundle keeps one.
    state: Option<KvState>,
}

impl Generator {
    /// Starts (or stops) recording time per op type in both sessions.
    pub fn set_profiling(&mut self, on: bool) {
        self.prefill.set_profiling(on);
        if let Some(d) = self.decode.as_mut() {
            d.set_profiling(on);
        }
    }

    /// (prefill, decode) time per op type since profiling started. The decode record covers only
    /// the generated tokens, not decode steps that fed a prompt longer than one prefill.
    pub fn take_profile(&mut self) -> (Option<Profile>, Option<Profile>) {
        (self.prefill.take_profile(), self.decode.as_mut().and_then(Session::take_profile))
    }

    /// Generates after `prompt`, calling `on_token` with each new token id as soon as it is chosen;
    /// the callback returns `ControlFlow::Break` to stop early.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        opts: &GenerateOptions,
        mut on_token: impl FnMut(u32) -> ControlFlow<()>,
    ) -> Result<GenerateStats, GenerateError> {
        let lm = self.lm.clone();
        let cfg = &lm.config;
        if prompt.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        if prompt.len() as u64 >= cfg.max_context {
            return Err(GenerateError::PromptTooLong { tokens: prompt.len(), max_context: cfg.max_context });
        }
        let mut stats = GenerateStats { prompt_tokens: prompt.len(), ..Default::default() };
        let mut sampler = Sampler::new(opts.sampling.clone());
        let started = Instant::now();
        let mut tokens: Vec<u32> = prompt.to_vec();
        let mut cache: Vec<Option<Tensor>> = Vec::new();
        let mut logits = self.forward_prompt(&tokens, &mut cache)?;
        stats.prefill = started.elapsed();
        if let Some(d) = self.decode.as_mut() {
            d.take_profile();
        }
        let mut next_start = Instant::now();
        while stats.generated_tokens < opts.max_tokens {
            let next = sampler.pick(&logits);
            tokens.push(next);
            stats.generated_tokens += 1;
            if on_token(next).is_break() {
                stats.stop = StopReason::Callback;
                break;
            }
            if opts.stop_at_eos && cfg.eos_token_ids.contains(&next) {
                stats.stop = StopReason::Eos;
                break;
            }
            if stats.generated_tokens == opts.max_tokens {
                stats.stop = StopReason::MaxTokens;
                break;
            }
            if tokens.len() as u64 >= cfg.max_context {
                stats.stop = StopReason::ContextFull;
                break;
            }
            if stats.generated_tokens == 1 {
                next_start = Instant::now();
            }
            logits = match cfg.kv.is_empty() {
                true => self.run_prefill(&tokens, &mut cache)?,
                false => self.run_decode(&tokens, &mut cache)?,
            };
        }
        if stats.generated_tokens > 1 {
            stats.decode = next_start.elapsed();
        }
        Ok(stats)
    }

    /// The last position's logits after the prompt: one prefill call when it fits, else a
    /// prefill of the first chunk and one decode step per remaining token.
    fn forward_prompt(&mut self, tokens: &[u32], cache: &mut Vec<Option<Tensor>>) -> Result<Vec<f32>, GenerateError> {
        let chunk = (self.lm.config.prefill_max as usize).max(1);
        if tokens.len() <= chunk || self.lm.config.kv.is_empty() {
            return self.run_prefill(tokens, cache);
        }
        let mut logits = self.run_prefill(&tokens[..chunk], cache)?;
        for end in chunk + 1..=tokens.len() {
            logits = self.run_decode(&tokens[..end], cache)?;
        }
        Ok(logits)
    }

    fn run_prefill(&mut self, tokens: &[u32], cache: &mut Vec<Option<Tensor>>) -> Result<Vec<f32>, GenerateError> {
        cache.clear();
        if let Some(state) = self.state.as_mut() {
            state.clear();
        }
        let pass = Pass { entry: "prefill", tokens, new: tokens.len() };
        pass.run(&self.lm.config, &mut self.prefill, cache, self.state.as_mut())
    }

    fn run_decode(&mut self, tokens: &[u32], cache: &mut Vec<Option<Tensor>>) -> Result<Vec<f32>, GenerateError> {
        let session = self.decode.as_mut().ok_or_else(|| GenerateError::MissingEntry("decode".into()))?;
        let pass = Pass { entry: "decode", tokens, new: 1 };
        pass.run(&self.lm.config, session, cache, self.state.as_mut())
    }
}

/// One forward pass: the last `new` of `tokens` through entry point `entry`.
struct Pass<'a> {
    entry: &'a str,
    tokens: &'a [u32],
    new: usize,
}

impl Pass<'_> {
    /// Runs the pass after the positions in `state` (appending to it) and in `cache` (replacing
    /// it with the presents of pairs not kept in place), and returns the last position's logits.
    fn run(
        &self,
        cfg: &GenerationConfig,
        session: &mut Session,
        cache: &mut Vec<Option<Tensor>>,
        state: Option<&mut KvState>,
    ) -> Result<Vec<f32>, GenerateError> {
        let entry = self.entry;
        let out_err = |reason: String| GenerateError::Output { entry: entry.into(), reason };
        let model = session.model().clone();
        let feeds = Feeds::build(&model, cfg, self.tokens, self.new, cache).map_err(out_err)?;
        let refs: Vec<TensorRef> = feeds
            .iter()
            .map(|f| match f {
                Fed::Owned(t) => TensorRef::from_tensor(t),
                Fed::Cache(k) => TensorRef::from_tensor(cache[*k].as_ref().expect("fed only when present")),
            })
            .collect();
        let past = self.tokens.len() - self.new;
        let run_err = |source| GenerateError::Run { entry: entry.into(), error: Box::new(source) };
        let outputs = match state {
            Some(state) if model.has_state() => {
                if state.positions() != past {
                    return Err(out_err(format!(
                        "the KV cache holds {} positions, expected {past}",
                        state.positions()
                    )));
                }
                session.run_with_state(&refs, state).map_err(run_err)?
            }
            _ => session.run(&refs).map_err(run_err)?,
        };
        drop(refs);
        let mut outputs: Vec<Option<Tensor>> = outputs.into_iter().map(Some).collect();
        let names = model.output_names();
        let find = |name: &str| names.iter().position(|n| *n == name);
        let li = find(&cfg.logits).ok_or_else(|| out_err(format!("no output '{}'", cfg.logits)))?;
        let logits = outputs[li].as_ref().map(last_row).transpose().map_err(out_err)?.unwrap_or_default();
        let kept = |past: &str| model.program().states.iter().any(|s| s.name == past);
        let mut presents = Vec::with_capacity(cfg.kv.len());
        for pair in &cfg.kv {
            presents.push(match find(&pair.present) {
                Some(i) => Some(outputs[i].take().ok_or_else(|| out_err(format!("'{}' is read twice", pair.present)))?),
                None if kept(&pair.past) => None,
                None => return Err(out_err(format!("no output '{}'", pair.present))),
            });
        }
        *cache = presents;
        Ok(logits)
    }
}

/// The logits of the last position of `[batch, sequence, vocab]` (batch 1), as f32.
fn last_row(t: &Tensor) -> Result<Vec<f32>, String> {
    let &[1, seq, vocab] = t.shape.as_slice() else {
        return Err(format!("logits have shape {:?}, expected [1, sequence, vocab]", t.shape));
    };
    if seq == 0 || vocab == 0 {
        return Err(format!("logits have shape {:?}", t.shape));
    }
    let start = (seq - 1) * vocab;
    Ok(match (t.dtype, t.as_slice::<f32>()) {
        (DType::F32, Some(v)) => v[start..start + vocab].to_vec(),
        _ => (start..start + vocab).map(|i| t.get_f64(i) as f32).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::{GenerateError, TokenizerSlot};
    use kiln_formats::SharedBytes;

    const WORDS: &str = r#"{"version": "1.0", "model": {"type": "WordLevel", "vocab": {"a": 0, "b": 1}, "unk_token": "a"},
        "pre_tokenizer": {"type": "WhitespaceSplit"}}"#;

    #[test]
    fn the_tokenizer_is_parsed_once_when_first_asked_for() {
        let slot = TokenizerSlot::pending(SharedBytes::copy_from(WORDS.as_bytes()));
        assert!(slot.ready.get().is_none(), "not parsed before it is asked for");
        let tok = slot.get().unwrap().unwrap();
        assert_eq!(super::tokenizer::encode(tok, "b a", false).unwrap(), vec![1, 0]);
        assert!(std::ptr::eq(tok, slot.get().unwrap().unwrap()), "parsed once");
        assert!(TokenizerSlot::ready(None).get().unwrap().is_none());
    }

    #[test]
    fn a_malformed_tokenizer_is_reported_by_every_call_for_it() {
        let slot = TokenizerSlot::pending(SharedBytes::copy_from(b"{\"model\": 3"));
        for _ in 0..2 {
            let err = slot.get().unwrap_err();
            assert!(matches!(&err, GenerateError::Tokenizer(m) if !m.is_empty()), "{err}");
            assert!(err.to_string().starts_with("tokenizer.json: "), "{err}");
        }
    }
}

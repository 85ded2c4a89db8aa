//! Recognising a causal language model by its signature (`input_ids` → `logits`, optionally with
//! `past…`/`present…` KV pairs) and deriving what generation needs: the `prefill` and `decode`
//! entry points' dims, and `generation.json` from the export folder's companion files.

use crate::error::CompileError;
use crate::ir::Graph;
use kiln_formats::generation::{GenerationConfig, KvPair};
use kiln_formats::{DType, Dim};
use serde_json::Value as Json;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Context planned for when neither `--max-context` nor the model's config says otherwise.
pub const DEFAULT_MAX_CONTEXT: u64 = 2048;
/// A model's configured context is capped at this by default: the decode plan holds the whole
/// cache, so an 8K or 128K context would reserve memory most runs never touch.
pub const DEFAULT_CONTEXT_CAP: u64 = 2048;
/// Largest prompt chunk one `prefill` call takes by default (attention scores grow with its square).
pub const DEFAULT_PREFILL_MAX: u64 = 1024;

/// The generation-relevant parts of a causal LM's signature.
#[derive(Clone, Debug, PartialEq)]
pub struct CausalLm {
    pub input_ids: String,
    pub logits: String,
    pub kv: Vec<KvPair>,
    /// Symbol of `input_ids`' batch axis, if symbolic.
    pub batch: Option<String>,
    /// Symbol of `input_ids`' sequence axis.
    pub sequence: String,
    /// Symbol of the past tensors' sequence axis (KV models only).
    pub past: Option<String>,
    /// Plain symbols of other inputs' axes that count the whole sequence (e.g. an attention
    /// mask's `total_sequence_length`), bounded like past + new.
    pub total: Vec<String>,
}

/// Dims of one entry point: some fixed, the rest bounded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EntrySpec {
    pub name: String,
    pub fixed: HashMap<String, i64>,
    pub bounds: BTreeMap<String, u64>,
    /// The logits of the last position only ([`crate::passes::last_position`]).
    pub last_position: bool,
}

fn plain_symbol(d: &Dim) -> Option<String> {
    let syms = d.symbols();
    let s = syms.first()?;
    (syms.len() == 1 && *d == Dim::sym(s)).then(|| s.clone())
}

/// The past input's cache key with its prefix removed: `past_key_values.0.key` → `0.key`.
fn kv_key(name: &str, prefixes: &[&str]) -> Option<String> {
    prefixes.iter().find_map(|p| name.strip_prefix(p)).map(|k| k.trim_start_matches(['.', '_']).to_string())
}

/// Recognises a causal LM: an integer rank-2 input `input_ids` with a symbolic sequence axis and a
/// rank-3 output `logits`. `Ok(None)` for any other model; an error for a causal LM whose KV
/// inputs and outputs do not pair up.
pub fn detect(g: &Graph) -> Result<Option<CausalLm>, CompileError> {
    let input = |name: &str| g.inputs.iter().map(|&i| &g.values[i]).find(|v| v.name == name);
    let Some(ids) = input("input_ids") else { return Ok(None) };
    let Some(logits) = g.outputs.iter().map(|&o| &g.values[o]).find(|v| v.name == "logits") else {
        return Ok(None);
    };
    let ids_shape = ids.shape.clone().unwrap_or_default();
    if !matches!(ids.dtype, Some(DType::I64 | DType::I32)) || ids_shape.len() != 2 {
        return Ok(None);
    }
    if logits.shape.as_ref().is_some_and(|s| s.len() != 3) {
        return Ok(None);
    }
    let Some(sequence) = plain_symbol(&ids_shape[1]) else { return Ok(None) };
    let batch = plain_symbol(&ids_shape[0]);

    let mut kv = Vec::new();
    let mut past_sym: Option<String> = None;
    for &i in &g.inputs {
        let v = &g.values[i];
        let Some(key) = kv_key(&v.name, &["past_key_values", "past"]) else { continue };
        let present = g
            .outputs
            .iter()
            .map(|&o| &g.values[o].name)
            .find(|n| kv_key(n, &["present"]).as_deref() == Some(key.as_str()))
            .ok_or_else(|| {
                CompileError::Model(format!("causal LM input '{}' has no matching present output", v.name))
            })?;
        let shape = v.shape.clone().unwrap_or_default();
        let axis = shape
            .iter()
            .enumerate()
            .rev()
            .find_map(|(a, d)| plain_symbol(d).filter(|s| Some(s) != batch.as_ref()).map(|s| (a, s)));
        let Some((axis, sym)) = axis else {
            return Err(CompileError::Model(format!(
                "causal LM input '{}' has no symbolic sequence axis (shape {shape:?})",
                v.name
            )));
        };
        if past_sym.as_ref().is_some_and(|p| *p != sym) {
            return Err(CompileError::Model(format!(
                "causal LM input '{}' counts past positions with '{sym}', other past inputs with '{}'",
                v.name,
                past_sym.unwrap_or_default()
            )));
        }
        past_sym = Some(sym);
        kv.push(KvPair { past: v.name.clone(), present: present.clone(), axis });
    }

    let known: Vec<&String> = [Some(&sequence), batch.as_ref(), past_sym.as_ref()].into_iter().flatten().collect();
    let mut total = Vec::new();
    for &i in &g.inputs {
        for d in g.values[i].shape.iter().flatten() {
            if let Some(s) = plain_symbol(d) {
                if !known.contains(&&s) && !total.contains(&s) {
                    total.push(s);
                }
            }
        }
    }
    Ok(Some(CausalLm {
        input_ids: ids.name.clone(),
        logits: logits.name.clone(),
        kv,
        batch,
        sequence,
        past: past_sym,
        total,
    }))
}

impl CausalLm {
    /// `prefill` (empty past, up to `prefill_max` new tokens) and `decode` (one token after up to
    /// `max_context - 1`) for a KV model; `prefill` alone (the whole sequence, recomputed each
    /// token) otherwise. Batch is fixed at 1.
    pub fn entry_specs(&self, max_context: u64, prefill_max: u64) -> Vec<EntrySpec> {
        let mut base = EntrySpec::default();
        if let Some(b) = &self.batch {
            base.fixed.insert(b.clone(), 1);
        }
        let mut prefill = EntrySpec { name: "prefill".into(), ..base.clone() };
        match &self.past {
            Some(past) => {
                prefill.fixed.insert(past.clone(), 0);
                prefill.bounds.insert(self.sequence.clone(), prefill_max);
                for t in &self.total {
                    prefill.bounds.insert(t.clone(), prefill_max);
                }
                let mut decode = EntrySpec { name: "decode".into(), ..base };
                decode.fixed.insert(self.sequence.clone(), 1);
                decode.bounds.insert(past.clone(), max_context.saturating_sub(1));
                for t in &self.total {
                    decode.bounds.insert(t.clone(), max_context);
                }
                vec![prefill, decode]
            }
            None => {
                prefill.bounds.insert(self.sequence.clone(), max_context);
                for t in &self.total {
                    prefill.bounds.insert(t.clone(), max_context);
                }
                vec![prefill]
            }
        }
    }
}

/// The companion files of an export folder that describe generation.
#[derive(Clone, Debug, Default)]
pub struct Companions {
    pub config: Option<Json>,
    pub generation_config: Option<Json>,
    pub tokenizer_config: Option<Json>,
    /// `chat_template.jinja` (newer transformers save the template there).
    pub chat_template: Option<String>,
}

impl Companions {
    /// Reads whichever of the files exist; a file that exists but is not valid JSON is an error.
    pub fn read(
        config: Option<&Path>,
        generation_config: Option<&Path>,
        tokenizer_config: Option<&Path>,
        chat_template: Option<&Path>,
    ) -> Result<Companions, CompileError> {
        let json = |p: Option<&Path>| -> Result<Option<Json>, CompileError> {
            let Some(p) = p else { return Ok(None) };
            let text = std::fs::read_to_string(p)
                .map_err(|e| CompileError::Options(format!("cannot read {}: {e}", p.display())))?;
            serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| CompileError::Options(format!("{} is not valid JSON: {e}", p.display())))
        };
        let chat_template = match chat_template {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| CompileError::Options(format!("cannot read {}: {e}", p.display())))?,
            ),
            None => None,
        };
        Ok(Companions {
            config: json(config)?,
            generation_config: json(generation_config)?,
            tokenizer_config: json(tokenizer_config)?,
            chat_template,
        })
    }

    /// The model's own context length, from `config.json`.
    pub fn context_length(&self) -> Option<u64> {
        let c = self.config.as_ref()?;
        ["max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "n_ctx"]
            .iter()
            .find_map(|k| c.get(*k).and_then(Json::as_u64))
    }

    fn ids(&self, key: &str) -> Vec<u32> {
        let ids = |v: &Json| -> Vec<u32> {
            match v {
                Json::Array(a) => a.iter().filter_map(Json::as_u64).map(|x| x as u32).collect(),
                v => v.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
            }
        };
        [&self.generation_config, &self.config]
            .into_iter()
            .flatten()
            .map(|c| c.get(key).map(ids).unwrap_or_default())
            .find(|v| !v.is_empty())
            .unwrap_or_default()
    }

    /// A token's text from `tokenizer_config.json`: a string or `{"content": ...}`.
    fn token_text(&self, key: &str) -> Option<String> {
        match self.tokenizer_config.as_ref()?.get(key)? {
            Json::String(s) => Some(s.clone()),
            Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_string),
            _ => None,
        }
    }

    /// The chat template: `chat_template.jinja`, else `tokenizer_config.json`'s `chat_template`
    /// (a string, or a list of named templates of which `default` is used).
    fn template(&self) -> Option<String> {
        if let Some(t) = &self.chat_template {
            return Some(t.clone());
        }
        match self.tokenizer_config.as_ref()?.get("chat_template")? {
            Json::String(s) => Some(s.clone()),
            Json::Array(list) => list
                .iter()
                .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
                .or_else(|| list.first())
                .and_then(|t| t.get("template"))
                .and_then(Json::as_str)
                .map(str::to_string),
            _ => None,
        }
    }

    /// `generation.json` for `lm` planned for `max_context` tokens and prompt chunks of `prefill_max`.
    pub fn generation_config(&self, lm: &CausalLm, max_context: u64, prefill_max: u64) -> GenerationConfig {
        GenerationConfig {
            bos_token_id: self.ids("bos_token_id").first().copied(),
            eos_token_ids: self.ids("eos_token_id"),
            chat_template: self.template(),
            bos_token: self.token_text("bos_token"),
            eos_token: self.token_text("eos_token"),
            max_context,
            prefill_max,
            input_ids: lm.input_ids.clone(),
            logits: lm.logits.clone(),
            kv: lm.kv.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Value;

    fn value(name: &str, dtype: DType, dims: &[&str]) -> Value {
        let shape = dims.iter().map(|d| d.parse::<i64>().map(Dim::Known).unwrap_or_else(|_| Dim::sym(d))).collect();
        Value { name: name.into(), dtype: Some(dtype), shape: Some(shape), ..Default::default() }
    }

    fn graph(inputs: Vec<Value>, outputs: Vec<Value>) -> Graph {
        let mut g = Graph::default();
        for v in inputs {
            g.inputs.push(g.values.len());
            g.values.push(v);
        }
        for v in outputs {
            g.outputs.push(g.values.len());
            g.values.push(v);
        }
        g
    }

    #[test]
    fn recognises_kv_pairs_and_their_axis() {
        let g = graph(
            vec![
                value("input_ids", DType::I64, &["batch", "seq"]),
                value("attention_mask", DType::I64, &["batch", "total"]),
                value("past_key_values.0.key", DType::F32, &["batch", "2", "past", "16"]),
                value("past_key_values.0.value", DType::F32, &["batch", "2", "past", "16"]),
            ],
            vec![
                value("logits", DType::F32, &["batch", "seq", "512"]),
                value("present.0.key", DType::F32, &["batch", "2", "total", "16"]),
                value("present.0.value", DType::F32, &["batch", "2", "total", "16"]),
            ],
        );
        let lm = detect(&g).unwrap().unwrap();
        assert_eq!(lm.sequence, "seq");
        assert_eq!(lm.past.as_deref(), Some("past"));
        assert_eq!(lm.total, vec!["total".to_string()]);
        assert_eq!(lm.kv.len(), 2);
        assert_eq!(
            lm.kv[1],
            KvPair { past: "past_key_values.0.value".into(), present: "present.0.value".into(), axis: 2 }
        );
        let specs = lm.entry_specs(100, 32);
        assert_eq!(specs[0].fixed.get("past"), Some(&0));
        assert_eq!(specs[0].bounds.get("seq"), Some(&32));
        assert_eq!(specs[1].fixed.get("seq"), Some(&1));
        assert_eq!(specs[1].bounds.get("past"), Some(&99));
        assert_eq!(specs[1].bounds.get("total"), Some(&100));
    }

    #[test]
    fn an_unpaired_past_input_is_named() {
        let g = graph(
            vec![
                value("input_ids", DType::I64, &["batch", "seq"]),
                value("past_key_values.3.key", DType::F32, &["batch", "2", "past", "16"]),
            ],
            vec![value("logits", DType::F32, &["batch", "seq", "512"])],
        );
        let err = detect(&g).unwrap_err().to_string();
        assert!(err.contains("past_key_values.3.key"), "{err}");
    }

    #[test]
    fn other_models_are_not_causal_lms() {
        let g = graph(vec![value("x", DType::F32, &["n", "4"])], vec![value("y", DType::F32, &["n", "4"])]);
        assert_eq!(detect(&g).unwrap(), None);
        // Token ids in, but a fixed sequence length: nothing to generate with.
        let g = graph(
            vec![value("input_ids", DType::I64, &["1", "8"])],
            vec![value("logits", DType::F32, &["1", "8", "512"])],
        );
        assert_eq!(detect(&g).unwrap(), None);
    }

    #[test]
    fn companion_ids_prefer_generation_config_and_accept_lists() {
        let c = Companions {
            config: Some(serde_json::json!({"eos_token_id": 1, "bos_token_id": 0, "max_position_embeddings": 8192})),
            generation_config: Some(serde_json::json!({"eos_token_id": [2, 7]})),
            tokenizer_config: Some(serde_json::json!({"chat_template": "{{ x }}", "eos_token": {"content": "</s>"}})),
            chat_template: None,
        };
        assert_eq!(c.ids("eos_token_id"), vec![2, 7]);
        assert_eq!(c.ids("bos_token_id"), vec![0]);
        assert_eq!(c.context_length(), Some(8192));
        assert_eq!(c.template().as_deref(), Some("{{ x }}"));
        assert_eq!(c.token_text("eos_token").as_deref(), Some("</s>"));
    }
}

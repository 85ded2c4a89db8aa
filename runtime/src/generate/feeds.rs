//! The input tensors of one forward pass of a causal LM, built by input name the way Hugging Face
//! exports expect them: token ids, an all-ones attention mask over past + new, positions
//! counting on from the past, and the KV cache (empty before the first pass).

use crate::model::Model;
use kiln_formats::generation::GenerationConfig;
use kiln_formats::program::ValueInfo;
use kiln_formats::{DType, Tensor};

/// What an input of a causal LM is fed with.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Feed {
    Ids,
    /// Ones over past + new positions.
    Mask,
    /// past..past+new, shape `[1, new]` (or `[new]` for a rank-1 input).
    Positions,
    /// Zeros shaped like the ids (BERT-style segment ids some exports keep).
    TokenTypes,
    /// Cache tensor `k` of [`GenerationConfig::kv`].
    Past(usize),
}

fn classify(name: &str, cfg: &GenerationConfig) -> Option<Feed> {
    if name == cfg.input_ids {
        return Some(Feed::Ids);
    }
    if let Some(k) = cfg.kv.iter().position(|p| p.past == name) {
        return Some(Feed::Past(k));
    }
    match name {
        "attention_mask" => Some(Feed::Mask),
        "position_ids" | "cache_position" => Some(Feed::Positions),
        "token_type_ids" => Some(Feed::TokenTypes),
        _ => None,
    }
}

/// One input: a tensor made for this pass, or the cache tensor at an index.
pub enum Fed {
    Owned(Tensor),
    Cache(usize),
}

/// Builders of a model's inputs.
pub struct Feeds;

impl Feeds {
    /// Fails naming an input generation does not know how to feed.
    pub fn check(model: &Model, cfg: &GenerationConfig) -> Result<(), String> {
        for name in model.input_names() {
            if classify(name, cfg).is_none() {
                return Err(format!(
                    "input '{name}' is not one a causal LM takes (input_ids, attention_mask, position_ids, past KV)"
                ));
            }
        }
        Ok(())
    }

    /// The inputs, in the model's order, for the last `new` of `tokens` after `cache` (the
    /// previous pass's presents by KV pair, `None` for pairs kept in place, or empty for the
    /// first pass). Cache tensors are referred to, not copied.
    pub fn build(
        model: &Model,
        cfg: &GenerationConfig,
        tokens: &[u32],
        new: usize,
        cache: &[Option<Tensor>],
    ) -> Result<Vec<Fed>, String> {
        let past = tokens.len() - new;
        let prog = model.program();
        prog.inputs
            .iter()
            .map(|&slot| {
                let info = &prog.values[slot as usize];
                let dtype = info.dtype().ok_or_else(|| format!("input '{}' has no dtype", info.name))?;
                let feed = classify(&info.name, cfg).ok_or_else(|| format!("cannot feed input '{}'", info.name))?;
                let ints = |values: Vec<i64>, shape: &[usize]| int_tensor(dtype, shape, values, &info.name);
                let tensor = match feed {
                    Feed::Ids => ints(tokens[past..].iter().map(|&t| t as i64).collect(), &[1, new]),
                    Feed::Mask => ints(vec![1; tokens.len()], &[1, tokens.len()]),
                    Feed::Positions => {
                        let shape: &[usize] = if info.dims.len() == 1 { &[new] } else { &[1, new] };
                        ints((past as i64..tokens.len() as i64).collect(), shape)
                    }
                    Feed::TokenTypes => ints(vec![0; new], &[1, new]),
                    Feed::Past(k) if matches!(cache.get(k), Some(Some(_))) => return Ok(Fed::Cache(k)),
                    Feed::Past(k) => empty_past(info, cfg.kv[k].axis, dtype),
                };
                tensor.map(Fed::Owned)
            })
            .collect()
    }
}

fn int_tensor(dtype: DType, shape: &[usize], values: Vec<i64>, name: &str) -> Result<Tensor, String> {
    match dtype {
        DType::I64 => Ok(Tensor::from_vec(shape, values)),
        DType::I32 => Ok(Tensor::from_vec(shape, values.into_iter().map(|v| v as i32).collect())),
        DType::Bool => Ok(Tensor::from_bools(shape, &values.iter().map(|&v| v != 0).collect::<Vec<_>>())),
        DType::F32 => Ok(Tensor::from_vec(shape, values.into_iter().map(|v| v as f32).collect())),
        other => Err(format!("input '{name}' is {other}; expected an integer type")),
    }
}

/// A cache tensor with no positions: the sequence axis 0, batch 1, other dims as declared.
fn empty_past(info: &ValueInfo, axis: usize, dtype: DType) -> Result<Tensor, String> {
    let shape: Vec<usize> = info
        .dims
        .iter()
        .enumerate()
        .map(|(a, d)| match (a, d.symbol.is_empty()) {
            (a, _) if a == axis => 0,
            (_, true) => d.value.max(0) as usize,
            (_, false) => 1,
        })
        .collect();
    Tensor::zeros(dtype, &shape).map_err(|e| format!("input '{}': {e}", info.name))
}

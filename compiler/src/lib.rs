//! kiln-compiler: ONNX import into a typed graph IR with symbolic shapes, optimisation passes,
//! and lowering to the program the runtime executes.

pub mod bundle;
pub mod causal_lm;
pub mod error;
pub mod import;
pub mod ir;
pub mod lower;
pub mod passes;
pub mod placement;
pub mod plan;

pub use error::CompileError;
pub use ir::Graph;
pub use lower::Lowered;

use kiln_formats::target::TargetLimits;
use kiln_runtime::ops::matmul::{half16, q8};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// What the user told the compiler about symbolic dims and the target.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    /// Dims fixed to one value (`--dim NAME=N`).
    pub fixed_dims: HashMap<String, i64>,
    /// Upper bounds of dims that stay symbolic (`--dim NAME=..MAX`).
    pub dim_bounds: BTreeMap<String, u64>,
    /// Every symbolic input dim must have a bound (true for bundles; `kiln run` on an .onnx file
    /// fixes the dims from the inputs instead).
    pub require_bounds: bool,
    /// The limits the memory plan must respect.
    pub target: TargetLimits,
    /// Causal LMs: most tokens (prompt + generated) a sequence may hold (`--max-context`).
    pub max_context: Option<u64>,
    /// Causal LMs: most prompt tokens one `prefill` call takes.
    pub prefill_max: Option<u64>,
    /// Causal LM entry points: the KV pairs to keep in place as states of this many positions.
    pub kv_cache: Option<(Vec<kiln_formats::generation::KvPair>, u64)>,
    /// How products' weights are stored (`--weights`).
    pub weights: passes::quantize::WeightFormat,
    /// CPU plans store the KV cache states only fused attention reads as f16 (`--kv-cache f16`).
    pub half_kv_cache: bool,
    /// CPU plans store weights in layouts of their own: f32 weights in the micro-kernel's panels
    /// (`kiln::MatMulPacked`), and the weights of products of one input side by side as one.
    /// Off when a bundle also holds a GPU plan, which reads the weights as the model has them
    /// (transposed): the targets then share one copy of each weight.
    pub pack_weights: bool,
    /// Most arena bytes one plan may ask the runtime to allocate (`--max-memory`); a larger plan
    /// is refused with both numbers. `None`: no limit.
    pub max_memory: Option<u64>,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            fixed_dims: HashMap::new(),
            dim_bounds: BTreeMap::new(),
            require_bounds: false,
            target: TargetLimits::cpu(),
            max_context: None,
            prefill_max: None,
            kv_cache: None,
            weights: passes::quantize::WeightFormat::F32,
            half_kv_cache: false,
            pack_weights: true,
            max_memory: None,
        }
    }
}

/// A compiled program, the constants it refers to, and its memory plan's report.
pub struct Compiled {
    pub program: kiln_formats::program::Program,
    pub weights: Vec<kiln_formats::SharedBytes>,
    pub plan: plan::PlanReport,
    /// Op counts of the model as imported and after optimisation.
    pub ops_before: BTreeMap<String, usize>,
    pub ops_after: BTreeMap<String, usize>,
    /// Which KV pairs were kept in place, for a causal LM entry point.
    pub kv_cache: Option<passes::kv_cache::KvCacheReport>,
    /// With `--weights q8|q4`: (weights quantized, products left in f32).
    pub quantized: Option<(usize, usize)>,
    /// For the GPU target: which steps run where.
    pub placement: Option<placement::PlacementReport>,
}

/// Reads an ONNX file (and its external data) into the IR, without optimising it.
pub fn import_file(path: &Path, opts: &CompileOptions) -> Result<Graph, CompileError> {
    let model = kiln_formats::onnx::load(path)?;
    import::import(model, &opts.fixed_dims)
}

/// Reads, optimises, lowers and plans an ONNX file.
pub fn compile_file(path: &Path, opts: &CompileOptions) -> Result<Compiled, CompileError> {
    compile_graph(import_file(path, opts)?, opts)
}

/// Optimises, lowers and plans an imported graph.
pub fn compile_graph(mut g: Graph, opts: &CompileOptions) -> Result<Compiled, CompileError> {
    if opts.require_bounds {
        check_bounds(&g, opts)?;
    }
    let ops_before = g.op_counts();
    passes::optimize(&mut g)?;
    let on_cpu = opts.target.name == "cpu";
    if on_cpu {
        passes::fuse_for_cpu(&mut g, opts.pack_weights);
    }
    let half_kv = opts.half_kv_cache && on_cpu;
    let kv_cache = opts
        .kv_cache
        .as_ref()
        .map(|(pairs, capacity)| passes::kv_cache::keep_in_place(&mut g, pairs, *capacity, half_kv));
    check_sizes(&g, opts)?;
    let limit = opts.target.largest_buffer();
    let mut splits = passes::split::split_oversized(&mut g, limit)?;
    let bound = |s: &str| opts.dim_bounds.get(s).map(|&b| (0, b as i64));
    let bytes = |v: &ir::Value| -> Option<u64> {
        let dims = v
            .shape
            .as_ref()?
            .iter()
            .map(|d| d.bounds(&bound).map(|(_, hi)| hi.max(0) as u64))
            .collect::<Option<Vec<_>>>()?;
        dims.iter().try_fold(v.dtype?.size() as u64, |acc, &d| acc.checked_mul(d))
    };
    splits.extend(passes::split::split_outputs(&mut g, limit, &bytes)?);
    // CPU plans of f32 weights store them in the micro-kernel's panels; the GPU reads them
    // transposed, and the other formats quantize the transposed rows.
    let pack_f32 = opts.pack_weights && on_cpu;
    let f32_weights = opts.weights == passes::quantize::WeightFormat::F32;
    passes::transposed_weight::pretranspose_or_pack(&mut g, pack_f32 && f32_weights);
    let quantized = match opts.weights {
        passes::quantize::WeightFormat::F32 => None,
        passes::quantize::WeightFormat::Q8 => Some(passes::quantize::quantize::<q8::Q8>(&mut g)),
        passes::quantize::WeightFormat::Q4 => Some(passes::quantize::q4_with_q8_head(&mut g)),
        passes::quantize::WeightFormat::F16 => Some(passes::quantize::quantize::<half16::F16>(&mut g)),
        passes::quantize::WeightFormat::BF16 => Some(passes::quantize::quantize::<half16::BF16>(&mut g)),
    };
    if pack_f32 && !f32_weights {
        // Weights the format cannot hold (k not a multiple of 32, values out of its range) stay
        // f32: packed, as in an f32 bundle, rather than read through the general product.
        passes::transposed_weight::pretranspose_or_pack(&mut g, true);
    }
    if on_cpu {
        passes::product_bias::fuse(&mut g);
        passes::product_residual::fuse(&mut g);
    }
    let ops_after = g.op_counts();
    let Lowered { mut program, weights } = lower::lower(&g, &opts.dim_bounds)?;
    let placement = (opts.target.name == "gpu").then(|| placement::place(&mut program));
    let mut plan = plan::plan(&mut program, &opts.target)?;
    check_memory(&plan, opts)?;
    plan.splits =
        splits.iter().map(|s| format!("{} ({} bytes) into {} column blocks", s.value, s.bytes, s.blocks)).collect();
    Ok(Compiled { program, weights, plan, ops_before, ops_after, kv_cache, quantized, placement })
}

/// Refuses a value whose largest byte size does not fit in 64 bits. The planner would otherwise
/// take it for a value sized at run time (its size is unknown to it), and compile a model no run
/// could ever hold.
fn check_sizes(g: &Graph, opts: &CompileOptions) -> Result<(), CompileError> {
    let bound = |s: &str| opts.dim_bounds.get(s).map(|&b| (0, b as i64));
    for v in &g.values {
        let (Some(shape), Some(dtype)) = (&v.shape, v.dtype) else { continue };
        let Some(dims) =
            shape.iter().map(|d| d.bounds(&bound).map(|(_, hi)| hi.max(0) as u64)).collect::<Option<Vec<_>>>()
        else {
            continue;
        };
        if dims.iter().try_fold(dtype.size() as u64, |acc, &d| acc.checked_mul(d)).is_none() {
            return Err(CompileError::Model(format!(
                "value '{}': {dtype} shape {dims:?} is more bytes than 64 bits can count (its byte size overflows)",
                v.name
            )));
        }
    }
    Ok(())
}

/// Refuses a plan whose arena exceeds `--max-memory`: a session of it could not be allocated, or
/// would take memory the user did not agree to give.
fn check_memory(plan: &plan::PlanReport, opts: &CompileOptions) -> Result<(), CompileError> {
    match opts.max_memory {
        Some(limit) if plan.arena_bytes > limit => Err(CompileError::TooLarge {
            what: format!("the memory plan (target {}) needs an arena of", plan.target),
            bytes: plan.arena_bytes,
            limit,
        }),
        _ => Ok(()),
    }
}

/// Fails naming every symbolic input dim without a bound, and the inputs it appears in.
pub fn check_bounds(g: &Graph, opts: &CompileOptions) -> Result<(), CompileError> {
    let mut missing: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for &i in &g.inputs {
        let v = &g.values[i];
        for d in v.shape.iter().flatten() {
            for s in d.symbols() {
                if !opts.dim_bounds.contains_key(&s) {
                    missing.entry(s).or_default().push(v.name.clone());
                }
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = missing.iter().map(|(s, ins)| format!("'{s}' (in {})", ins.join(", "))).collect();
    Err(CompileError::Options(format!(
        "symbolic dims without a bound: {}; pass --dim NAME=N to fix one or --dim NAME=..MAX to bound it",
        list.join(", ")
    )))
}

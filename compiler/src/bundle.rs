//! Compiling to a bundle: one program per entry point and target, weights deduplicated across
//! them and packed into 64-byte aligned slots of weight entries no larger than the target allows.

use crate::causal_lm::{self, Companions, EntrySpec, DEFAULT_CONTEXT_CAP, DEFAULT_MAX_CONTEXT, DEFAULT_PREFILL_MAX};
use crate::error::CompileError;
use crate::{check_bounds, compile_graph, import_file, CompileOptions, Compiled};
use kiln_formats::bundle::manifest::{EntryPoint, FormatVersion, Manifest, PlanSummary, Producer, Source, TensorSig};
use kiln_formats::bundle::{hex, write_bundle, BundleParts, WeightEntry, FORMAT_VERSION, TENSOR_ALIGN};
use kiln_formats::generation::{GenerationConfig, KvPair, GENERATION_ENTRY, TOKENIZER_ENTRY};
use kiln_formats::program::{Program, ProgramSet, ValueInfo, WeightRef};
use kiln_formats::target::TargetLimits;
use kiln_formats::SharedBytes;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Weight entries are capped at this size even when the target allows more, so no single entry
/// becomes unwieldy to map or checksum.
const MAX_WEIGHT_ENTRY: u64 = 1 << 30;

/// What a bundle compile produced, for the CLI to print.
pub struct BundleSummary {
    pub manifest: Manifest,
    /// One per entry point and target, in manifest order.
    pub compiled: Vec<CompiledEntry>,
    pub weight_bytes: u64,
    /// `generation.json`, when the model is a causal LM.
    pub generation: Option<GenerationConfig>,
    /// Choices the compiler made that the user should hear about (defaults taken, fallbacks).
    pub notes: Vec<String>,
}

/// One entry point's program for one target.
pub struct CompiledEntry {
    pub entry: String,
    pub target: String,
    pub compiled: Compiled,
}

/// The ONNX file and companion files of a model given as a file or an export folder.
pub struct ModelSource {
    pub onnx: PathBuf,
    pub tokenizer: Option<PathBuf>,
    pub tokenizer_config: Option<PathBuf>,
    pub chat_template: Option<PathBuf>,
    pub generation_config: Option<PathBuf>,
    pub config: Option<PathBuf>,
}

impl ModelSource {
    /// Resolves `path`: an `.onnx` file, or a folder holding `model.onnx` (optimum and
    /// transformers exports) and optionally `tokenizer.json`, `tokenizer_config.json`,
    /// `chat_template.jinja`, `generation_config.json`, `config.json`. For a file, the same
    /// companions are looked for beside it.
    pub fn resolve(path: &Path) -> Result<ModelSource, CompileError> {
        let (onnx, dir) = if path.is_dir() {
            let onnx = path.join("model.onnx");
            if !onnx.is_file() {
                return Err(CompileError::Options(format!("folder {} holds no model.onnx", path.display())));
            }
            (onnx, Some(path.to_path_buf()))
        } else {
            (path.to_path_buf(), path.parent().map(Path::to_path_buf))
        };
        let companion = |name: &str| dir.as_ref().map(|d| d.join(name)).filter(|p| p.is_file());
        Ok(ModelSource {
            onnx,
            tokenizer: companion("tokenizer.json"),
            tokenizer_config: companion("tokenizer_config.json"),
            chat_template: companion("chat_template.jinja"),
            generation_config: companion("generation_config.json"),
            config: companion("config.json"),
        })
    }

    fn companions(&self) -> Result<Companions, CompileError> {
        Companions::read(
            self.config.as_deref(),
            self.generation_config.as_deref(),
            self.tokenizer_config.as_deref(),
            self.chat_template.as_deref(),
        )
    }
}

/// The entry points to compile: `main` at the user's bounds for most models; `prefill` and
/// `decode` for a causal LM (plus `main` when the user bounded every input dim).
fn plan_entries(
    source: &ModelSource,
    graph: &crate::Graph,
    opts: &CompileOptions,
    notes: &mut Vec<String>,
) -> Result<(Vec<EntrySpec>, Option<GenerationConfig>), CompileError> {
    let main = EntrySpec { name: "main".into(), ..Default::default() };
    let Some(lm) = causal_lm::detect(graph)? else { return Ok((vec![main], None)) };
    let companions = source.companions()?;
    let max_context = match (opts.max_context, companions.context_length()) {
        (Some(n), _) => n,
        (None, Some(n)) if n > DEFAULT_CONTEXT_CAP => {
            notes.push(format!(
                "max context {DEFAULT_CONTEXT_CAP} of the model's {n} (pass --max-context to plan for more)"
            ));
            DEFAULT_CONTEXT_CAP
        }
        (None, Some(n)) => n,
        (None, None) => {
            notes.push(format!(
                "no config.json gives the model's context length: planned for {DEFAULT_MAX_CONTEXT} tokens (--max-context)"
            ));
            DEFAULT_MAX_CONTEXT
        }
    };
    if max_context < 2 {
        return Err(CompileError::Options(format!("--max-context {max_context} leaves no room to generate")));
    }
    let prefill_max = opts
        .prefill_max
        .or_else(|| opts.dim_bounds.get(&lm.sequence).copied())
        .unwrap_or(DEFAULT_PREFILL_MAX)
        .clamp(1, max_context);
    let mut entries = lm.entry_specs(max_context, prefill_max);
    // Generation's prompt pass reads only the last position's logits: `prefill_last` computes
    // just that row of the head, `prefill` keeps every row for callers that score text.
    match crate::passes::last_position::check(graph, &lm.logits) {
        Ok(()) => {
            let prefill = entries.iter().find(|e| e.name == "prefill").cloned().unwrap_or_default();
            let at = entries.iter().position(|e| e.name == "prefill").map_or(0, |i| i + 1);
            entries.insert(at, EntrySpec { name: "prefill_last".into(), last_position: true, ..prefill });
        }
        Err(reason) => {
            notes.push(format!("no prefill_last entry point ({reason}): prompts compute every position's logits"))
        }
    }
    if check_bounds(graph, opts).is_ok() {
        entries.insert(0, main);
    }
    notes.push(match lm.kv.len() {
        0 => format!(
            "causal LM without a KV cache: each token recomputes the whole sequence (up to {max_context} tokens)"
        ),
        n => format!(
            "causal LM: prefill takes up to {prefill_max} tokens, decode plans {n} cached tensors for {max_context} positions"
        ),
    });
    if source.tokenizer.is_none() {
        notes.push("no tokenizer.json (pass --tokenizer FILE): `kiln run --prompt` will refuse this bundle".into());
    }
    Ok((entries, Some(companions.generation_config(&lm, max_context, prefill_max))))
}

/// Compiles `source` for each entry point and target and writes the bundle to `out`.
pub fn compile_bundle(
    source: &ModelSource,
    opts: &CompileOptions,
    targets: &[TargetLimits],
    out: &Path,
) -> Result<BundleSummary, CompileError> {
    // One import serves every entry point and target: the model is parsed once and the programs
    // refer to the same constant bytes, which `pack_weights` then stores once.
    let graph = import_file(&source.onnx, opts)?;
    let mut notes = Vec::new();
    let (specs, generation) = plan_entries(source, &graph, opts, &mut notes)?;
    // Generation's entry points keep the cache in place; `main` keeps the exported signature
    // (past in, present out) for callers that run tensors.
    let mut kv_pairs = generation.as_ref().map(|g| g.kv.clone()).unwrap_or_default();
    let compile_all = |kv_pairs: &[KvPair], half_kv_cache: bool| -> Result<Vec<CompiledEntry>, CompileError> {
        let mut compiled = Vec::new();
        for spec in &specs {
            let mut g = graph.clone();
            g.fix_dims(&spec.fixed);
            if let (true, Some(gen)) = (spec.last_position, &generation) {
                crate::passes::last_position::restrict(&mut g, &gen.logits).map_err(CompileError::Options)?;
            }
            let mut dim_bounds = opts.dim_bounds.clone();
            dim_bounds.extend(spec.bounds.clone());
            for target in targets {
                let kv_cache = generation
                    .as_ref()
                    .filter(|_| spec.name != "main" && !kv_pairs.is_empty())
                    .map(|g| (kv_pairs.to_vec(), g.max_context));
                let topts = CompileOptions {
                    target: target.clone(),
                    require_bounds: true,
                    dim_bounds: dim_bounds.clone(),
                    kv_cache,
                    half_kv_cache,
                    // A GPU plan reads f32 weights transposed; both plans share that copy.
                    pack_weights: opts.pack_weights && targets.iter().all(|t| t.name == "cpu"),
                    ..opts.clone()
                };
                let c = compile_graph(g.clone(), &topts).map_err(|e| match &generation {
                    Some(_) => CompileError::Options(format!("entry point '{}': {e}", spec.name)),
                    None => e,
                })?;
                compiled.push(CompiledEntry { entry: spec.name.clone(), target: target.name.clone(), compiled: c });
            }
        }
        Ok(compiled)
    };
    let mut half_kv_cache = opts.half_kv_cache;
    let mut compiled = compile_all(&kv_pairs, half_kv_cache)?;
    // Prefill and decode append to one cache, so they must keep the same tensors in place: when
    // an entry point could not keep one the others kept, all copy it.
    let kept = |c: &CompiledEntry| c.compiled.program.states.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    let stateful: Vec<&CompiledEntry> = compiled.iter().filter(|c| c.compiled.kv_cache.is_some()).collect();
    if stateful.windows(2).any(|w| kept(w[0]) != kept(w[1])) {
        let (keep, drop): (Vec<KvPair>, Vec<KvPair>) =
            kv_pairs.into_iter().partition(|p| stateful.iter().all(|c| kept(c).contains(&p.past)));
        notes.extend(
            drop.iter()
                .map(|p| format!("KV cache copied for {}: not every entry point could keep it in place", p.present)),
        );
        kv_pairs = keep;
        compiled = compile_all(&kv_pairs, half_kv_cache)?;
    }
    // The same holds for the states' types, within one target (each target has its own cache).
    let types = |c: &CompiledEntry| c.compiled.program.states.iter().map(|s| s.dtype).collect::<Vec<_>>();
    let stateful: Vec<&CompiledEntry> = compiled.iter().filter(|c| c.compiled.kv_cache.is_some()).collect();
    let differ = stateful.iter().any(|a| stateful.iter().any(|b| a.target == b.target && types(a) != types(b)));
    if half_kv_cache && differ {
        notes.push("KV cache kept f32: not every entry point could read it as f16".into());
        half_kv_cache = false;
        compiled = compile_all(&kv_pairs, half_kv_cache)?;
    }
    notes.extend(kv_cache_notes(&compiled));
    if let Some((q, kept)) = compiled.first().and_then(|c| c.compiled.quantized) {
        notes.push(format!(
            "weights: {q} products read {} weights; {kept} kept f32 (not a 2-D weight of whole 32-blocks, or holding values the format cannot: non-finite, or beyond its half-float block parameters)",
            opts.weights.describe()
        ));
    }
    let cap = targets.iter().map(|t| t.largest_buffer()).min().unwrap_or(u64::MAX).min(MAX_WEIGHT_ENTRY);
    let mut programs: Vec<Program> = compiled.iter().map(|c| c.compiled.program.clone()).collect();
    let weights = pack_weights(&mut programs, compiled.iter().map(|c| c.compiled.weights.as_slice()).collect(), cap)?;
    let weight_bytes = weights.iter().map(|w| w.len).sum();

    let entry_points = compiled
        .iter()
        .enumerate()
        .map(|(i, ce)| {
            let c = &ce.compiled;
            EntryPoint {
                name: ce.entry.clone(),
                target: ce.target.clone(),
                program: i as u32,
                inputs: c.program.inputs.iter().map(|&s| signature(&c.program.values[s as usize])).collect(),
                outputs: c.program.outputs.iter().map(|&s| signature(&c.program.values[s as usize])).collect(),
                plan: PlanSummary {
                    alignment: c.plan.alignment,
                    arena_bytes: c.plan.arena_bytes,
                    lower_bound_bytes: c.plan.lower_bound_bytes,
                    buffers: c.plan.buffers.clone(),
                },
            }
        })
        .collect();
    let mut metadata = BTreeMap::new();
    metadata.insert("dim_bounds".into(), serde_json::to_value(&opts.dim_bounds).unwrap_or_default());
    metadata.insert("fixed_dims".into(), serde_json::to_value(&opts.fixed_dims).unwrap_or_default());
    if let Some(c) = compiled.first() {
        metadata.insert("ops".into(), serde_json::to_value(&c.compiled.ops_before).unwrap_or_default());
    }
    let manifest = Manifest {
        format: "kiln-bundle".into(),
        format_version: FormatVersion { ..FORMAT_VERSION },
        producer: Producer { name: "kiln".into(), version: env!("CARGO_PKG_VERSION").into() },
        source: Source {
            name: source.onnx.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            sha256: file_sha256(&source.onnx)?,
        },
        checksum_algorithm: "sha256".into(),
        entries: Vec::new(),
        entry_points,
        targets: targets.to_vec(),
        metadata,
    };
    let mut extra = Vec::new();
    if let Some(t) = &source.tokenizer {
        extra.push((TOKENIZER_ENTRY.to_string(), "tokenizer".to_string(), read(t)?));
    }
    if let Some(g) = &generation {
        let json = serde_json::to_vec_pretty(g).map_err(|e| CompileError::Model(format!("generation.json: {e}")))?;
        extra.push((GENERATION_ENTRY.to_string(), "generation".to_string(), json));
    }
    let manifest = write_bundle(out, BundleParts { manifest, programs: ProgramSet { programs }, weights, extra })?;
    Ok(BundleSummary { manifest, compiled, weight_bytes, generation, notes })
}

/// What became of the KV cache: kept in place, or copied each step and why (once per reason,
/// though every entry point and target reports it).
fn kv_cache_notes(compiled: &[CompiledEntry]) -> Vec<String> {
    let mut notes: Vec<String> = Vec::new();
    for ce in compiled {
        let Some(r) = &ce.compiled.kv_cache else { continue };
        let total = r.in_place + r.copied.len();
        let half = match r.half {
            0 => String::new(),
            n if n == r.in_place => " (f16)".to_string(),
            n => format!(" ({n} of them f16)"),
        };
        let mut lines = vec![match r.copied.len() {
            0 => format!("KV cache kept in place: {total} tensors{half}, each step writes only its new positions"),
            n => format!("KV cache: {} of {total} tensors kept in place; {n} copied every step (below)", r.in_place),
        }];
        lines.extend(r.copied.iter().map(|c| format!("KV cache copied for {c}")));
        for l in lines {
            if !notes.contains(&l) {
                notes.push(l);
            }
        }
    }
    notes
}

fn read(p: &Path) -> Result<Vec<u8>, CompileError> {
    std::fs::read(p).map_err(|e| CompileError::Options(format!("cannot read {}: {e}", p.display())))
}

fn file_sha256(p: &Path) -> Result<String, CompileError> {
    let f = std::fs::File::open(p).map_err(|e| CompileError::Options(format!("cannot read {}: {e}", p.display())))?;
    // SAFETY: read-only map, hashed and dropped here.
    let map = unsafe { memmap2::Mmap::map(&f) }
        .map_err(|e| CompileError::Options(format!("cannot map {}: {e}", p.display())))?;
    Ok(hex(&Sha256::digest(&map[..])))
}

/// The manifest's description of a program input or output.
pub fn signature(v: &ValueInfo) -> TensorSig {
    TensorSig::of(v)
}

/// Packs every program's constants into weight entries of at most `cap` bytes (a constant larger
/// than `cap` gets an entry of its own), storing identical contents once (the same weight, or
/// the same constant folded again for another target), and rewrites the programs' weight
/// references to (entry, offset).
pub fn pack_weights(
    programs: &mut [Program],
    weights: Vec<&[SharedBytes]>,
    cap: u64,
) -> Result<Vec<WeightEntry>, CompileError> {
    let mut entries: Vec<WeightEntry> = Vec::new();
    let mut placed: HashMap<(usize, u64), Vec<(SharedBytes, WeightRef)>> = HashMap::new();
    for (program, list) in programs.iter_mut().zip(weights) {
        for w in program.weights.iter_mut() {
            let bytes = list.get(w.entry as usize).ok_or_else(|| {
                CompileError::Model(format!("weight reference to constant {} of {}", w.entry, list.len()))
            })?;
            let key = (bytes.len(), content_hash(bytes.as_slice()));
            if let Some((_, r)) = placed.get(&key).into_iter().flatten().find(|(b, _)| b.as_slice() == bytes.as_slice())
            {
                *w = r.clone();
                continue;
            }
            let len = bytes.len() as u64;
            let fits = entries.last().is_some_and(|e| e.len.next_multiple_of(TENSOR_ALIGN) + len <= cap);
            if !fits {
                entries.push(WeightEntry::default());
            }
            let entry_index = entries.len() - 1;
            let e = entries.last_mut().expect("just ensured");
            let offset = e.len.next_multiple_of(TENSOR_ALIGN);
            e.parts.push((offset, bytes.clone()));
            e.len = offset + len;
            let r = WeightRef { entry: entry_index as u32, offset, len };
            placed.entry(key).or_default().push((bytes.clone(), r.clone()));
            *w = r;
        }
    }
    Ok(entries)
}

fn content_hash(bytes: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(bytes);
    h.finish()
}

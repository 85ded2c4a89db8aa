//! The KV cache kept in place: on every tiny KV model, generation with every cache tensor kept in
//! place, with none, and with half (the copying fallback beside the in-place path) gives the
//! reference ids; the loader refuses programs that would read a state's pitched layout wrongly;
//! a stateful entry point run on its own starts from an empty cache.

mod common;
use common::{fixture, generate_ids, greedy_reference};
use kiln_compiler::bundle::{compile_bundle, ModelSource};
use kiln_compiler::{causal_lm, compile_graph, import_file, CompileOptions};
use kiln_formats::bundle::OpenOptions;
use kiln_formats::generation::KvPair;
use kiln_formats::program::Program;
use kiln_formats::target::TargetLimits;
use kiln_formats::Tensor;
use kiln_runtime::bundle::LoadedBundle;
use kiln_runtime::generate::{GenerateOptions, LanguageModel};
use kiln_runtime::{Model, Session, TensorRef};
use std::path::Path;
use std::sync::Arc;

const KV_LMS: [&str; 4] = ["gpt2-ts-kv", "gpt2-dynamo-kv", "llama-ts-kv", "llama-dynamo-kv"];

fn reference(name: &str) -> (Vec<u32>, Vec<u32>) {
    greedy_reference(&fixture(name))
}

fn greedy(lm: &Arc<LanguageModel>, prompt: &[u32], n: usize) -> Vec<u32> {
    generate_ids(lm, prompt, &GenerateOptions { max_tokens: n, stop_at_eos: false, ..Default::default() }).0
}

/// The bundle's language model (every pair the compiler can keep in place kept).
fn bundled(name: &str, dir: &Path) -> (Arc<LanguageModel>, LoadedBundle) {
    let out = dir.join(format!("{name}.kiln"));
    compile_bundle(
        &ModelSource::resolve(&fixture(name)).unwrap(),
        &CompileOptions::default(),
        &[TargetLimits::cpu()],
        &out,
    )
    .unwrap();
    let loaded = LoadedBundle::open(&out, OpenOptions::default()).unwrap();
    (Arc::new(LanguageModel::from_bundle(&loaded, None).unwrap()), loaded)
}

/// `prefill` and `decode` compiled keeping only `in_place` of the KV pairs in place.
fn with_pairs(name: &str, like: &LanguageModel, in_place: &[KvPair]) -> Arc<LanguageModel> {
    let opts = CompileOptions::default();
    let graph = import_file(&fixture(name).join("model.onnx"), &opts).unwrap();
    let cfg = like.config().clone();
    let lm = causal_lm::detect(&graph).unwrap().unwrap();
    let mut models = Vec::new();
    for spec in lm.entry_specs(cfg.max_context, cfg.prefill_max) {
        let mut g = graph.clone();
        g.fix_dims(&spec.fixed);
        let kv_cache = (!in_place.is_empty()).then(|| (in_place.to_vec(), cfg.max_context));
        let opts = CompileOptions { dim_bounds: spec.bounds.clone(), require_bounds: true, kv_cache, ..opts.clone() };
        let c = compile_graph(g, &opts).unwrap();
        assert_eq!(c.program.states.len(), in_place.len(), "{name} {}", spec.name);
        models.push(Model::new(c.program, &c.weights).unwrap());
    }
    let decode = models.pop();
    Arc::new(LanguageModel::new(cfg, None, models.pop().unwrap(), decode).unwrap())
}

#[test]
fn in_place_copied_and_mixed_caches_generate_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    for name in KV_LMS {
        let (lm, _bundle) = bundled(name, dir.path());
        let pairs = lm.config().kv.clone();
        assert_eq!(lm.kv_in_place(), pairs.len(), "{name}: every cache tensor is kept in place");
        let (prompt, expected) = reference(name);
        assert_eq!(greedy(&lm, &prompt, expected.len()), expected, "{name}: in place");
        let copied = with_pairs(name, &lm, &[]);
        assert_eq!(greedy(&copied, &prompt, expected.len()), expected, "{name}: copied");
        let half: Vec<KvPair> = pairs.iter().step_by(2).cloned().collect();
        let mixed = with_pairs(name, &lm, &half);
        assert_eq!(greedy(&mixed, &prompt, expected.len()), expected, "{name}: half in place");
    }
}

/// On every KV export (GPT-2 and Llama, TorchScript and dynamo), CPU attention becomes one
/// `kiln::FusedAttention` step per layer, which reads both cache tensors in place: no scores
/// product or softmax is left.
#[test]
fn attention_is_one_step_per_layer_reading_the_cache_in_place() {
    let dir = tempfile::tempdir().unwrap();
    for name in KV_LMS {
        let (lm, loaded) = bundled(name, dir.path());
        let layers = lm.config().kv.len() / 2;
        for entry in ["prefill", "decode"] {
            let program = loaded.model(entry, None).unwrap().program().clone();
            let fused: Vec<_> = program.steps.iter().filter(|s| s.op == "FusedAttention").collect();
            assert_eq!(fused.len(), layers, "{name} {entry}");
            for step in fused {
                let reads = |i: usize| program.states.iter().any(|s| s.present == step.inputs[i]);
                assert!(reads(1) && reads(2), "{name} {entry}: k and v are the states");
            }
            let left: Vec<_> =
                program.steps.iter().filter(|s| s.op.contains("Softmax") || s.op == "MatMulTransB").collect();
            assert!(left.is_empty(), "{name} {entry}: {:?}", left.iter().map(|s| &s.op).collect::<Vec<_>>());
        }
    }
}

/// The decode program of a compiled tiny model, and its weights.
fn decode_program(dir: &Path) -> (Program, LoadedBundle) {
    let (_, loaded) = bundled("llama-dynamo-kv", dir);
    let model = loaded.model("decode", None).unwrap().clone();
    (model.program().clone(), loaded)
}

/// The loader's error for `p`, or `None` when it loads.
fn refusal(p: Program, loaded: &LoadedBundle) -> Option<String> {
    let entries = loaded.bundle.weight_entries().unwrap();
    Model::new(p, &entries).err().map(|e| e.to_string())
}

#[test]
fn the_loader_refuses_a_state_read_without_its_pitch() {
    let dir = tempfile::tempdir().unwrap();
    let (program, loaded) = decode_program(dir.path());
    assert!(!program.states.is_empty());
    assert_eq!(refusal(program.clone(), &loaded), None);

    // A reader that forgets the pitch would read the cache's unfilled rows as keys.
    let pitched = |a: &kiln_formats::program::Attribute| a.name.ends_with("_pitch");
    let mut p = program.clone();
    let step = p.steps.iter_mut().find(|s| s.attrs.iter().any(pitched)).unwrap();
    step.attrs.retain(|a| !pitched(a));
    let err = refusal(p, &loaded).expect("refused");
    assert!(err.contains("cannot read its pitched layout"), "{err}");

    // A state read where no pitch applies: fused attention's queries, and a plain op.
    for op in ["FusedAttention", "Add"] {
        let mut p = program.clone();
        let present = p.states[0].present;
        let step = p.steps.iter_mut().find(|s| s.op == op).unwrap();
        step.inputs[0] = present;
        let err = refusal(p, &loaded).expect("refused");
        assert!(err.contains("KV state"), "{op}: {err}");
    }

    // A capacity that disagrees with the append's.
    let mut p = program.clone();
    let axis = p.states[0].axis as usize;
    p.states[0].dims[axis] += 1;
    let err = refusal(p, &loaded).expect("refused");
    assert!(err.contains("state"), "{err}");

    // A state that is also a program output.
    let mut p = program;
    p.outputs.push(p.states[0].present);
    let err = refusal(p, &loaded).expect("refused");
    assert!(err.contains("neither an input nor an output"), "{err}");
}

/// Inputs of one token at position 0 for a causal LM program, by input name.
fn one_token(model: &Model, token: i64) -> Vec<Tensor> {
    model
        .input_names()
        .iter()
        .map(|name| match *name {
            "input_ids" => Tensor::from_vec(&[1, 1], vec![token]),
            "attention_mask" => Tensor::from_vec(&[1, 1], vec![1i64]),
            "position_ids" => Tensor::from_vec(&[1, 1], vec![0i64]),
            other => panic!("unexpected input {other}"),
        })
        .collect()
}

#[test]
fn a_stateful_entry_point_run_alone_starts_from_an_empty_cache() {
    let dir = tempfile::tempdir().unwrap();
    let (_, loaded) = bundled("llama-dynamo-kv", dir.path());
    let mut logits = Vec::new();
    for entry in ["prefill", "decode"] {
        let model = loaded.model(entry, None).unwrap().clone();
        assert!(model.has_state(), "{entry}");
        let mut session = Session::new(model.clone());
        let inputs = one_token(&model, 5);
        let refs: Vec<TensorRef> = inputs.iter().map(TensorRef::from_tensor).collect();
        let first = session.run(&refs).unwrap();
        // A second run is not a continuation: it starts from an empty cache again.
        let again = session.run(&refs).unwrap();
        assert_eq!(first[0].bytes(), again[0].bytes(), "{entry}");
        logits.push(first.into_iter().next().unwrap());
    }
    let (a, b) = (logits[0].as_slice::<f32>().unwrap(), logits[1].as_slice::<f32>().unwrap());
    let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-4, "prefill and decode of one token differ by {worst}");
}

/// `--kv-cache f16`: every state of the generation entry points is f16 (each tiny model's
/// attention is fused, so only fused attention reads the cache), and greedy generation still
/// gives the f32 reference's ids.
#[test]
fn an_f16_cache_generates_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    for name in KV_LMS {
        let out = dir.path().join(format!("{name}-f16-cache.kiln"));
        let opts = CompileOptions { half_kv_cache: true, ..Default::default() };
        let source = ModelSource::resolve(&fixture(name)).unwrap();
        let summary = compile_bundle(&source, &opts, &[TargetLimits::cpu()], &out).unwrap();
        let states: Vec<_> = summary.compiled.iter().flat_map(|c| c.compiled.program.states.iter()).collect();
        assert!(!states.is_empty(), "{name}: the cache is kept in place");
        let f16 = kiln_formats::DType::F16.onnx_code();
        assert!(states.iter().all(|s| s.dtype == f16), "{name}: every state is f16");
        let loaded = LoadedBundle::open(&out, OpenOptions::default()).unwrap();
        let lm = Arc::new(LanguageModel::from_bundle(&loaded, None).unwrap());
        let (prompt, expected) = reference(name);
        assert_eq!(greedy(&lm, &prompt, expected.len()), expected, "{name}: f16 cache");
    }
}

//! Many sessions of one loaded bundle, on 8 threads and more at once, give the same results as one
//! session alone: models are shared read-only and every session owns its arena. Runs and text
//! generation (greedy and seeded sampling) over one bundle at the same time, too.

mod common;
use common::{generate_ids, greedy_reference};
use kiln_compiler::bundle::{compile_bundle, ModelSource};
use kiln_compiler::CompileOptions;
use kiln_formats::bundle::OpenOptions;
use kiln_formats::npy;
use kiln_formats::target::TargetLimits;
use kiln_runtime::bundle::LoadedBundle;
use kiln_runtime::generate::{GenerateOptions, LanguageModel, Sampling};
use kiln_runtime::{Session, TensorRef};
use std::path::Path;
use std::sync::Arc;

#[test]
fn eight_threads_match_one() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama-dynamo");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.kiln");
    let mut opts = CompileOptions::default();
    opts.dim_bounds.insert("batch".into(), 1);
    opts.dim_bounds.insert("sequence".into(), 32);
    compile_bundle(&ModelSource::resolve(&fixture).unwrap(), &opts, &[TargetLimits::cpu()], &out).unwrap();
    let loaded = LoadedBundle::open(&out, OpenOptions::default()).unwrap();
    let model = loaded.model("main", None).unwrap().clone();
    let inputs = npy::read_npz(&fixture.join("inputs.npz")).unwrap();
    let ordered = |names: &[&str]| -> Vec<kiln_formats::Tensor> {
        names.iter().map(|n| inputs.iter().find(|(k, _)| k == n).unwrap().1.clone()).collect()
    };
    let tensors = ordered(&model.input_names());
    let refs: Vec<TensorRef> = tensors.iter().map(TensorRef::from_tensor).collect();
    let alone = Session::new(model.clone()).run(&refs).unwrap();

    std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let model = model.clone();
                let tensors = tensors.clone();
                s.spawn(move || {
                    let refs: Vec<TensorRef> = tensors.iter().map(TensorRef::from_tensor).collect();
                    let mut session = Session::new(model);
                    (0..5).map(|_| session.run(&refs).unwrap()).collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for outs in h.join().unwrap() {
                for (a, b) in outs.iter().zip(&alone) {
                    assert_eq!(a.bytes(), b.bytes(), "a concurrent run differs from the lone run");
                }
            }
        }
    });
}

fn generate(lm: &Arc<LanguageModel>, prompt: &[u32], sampling: Sampling, n: usize) -> Vec<u32> {
    generate_ids(lm, prompt, &GenerateOptions { max_tokens: n, sampling, stop_at_eos: false }).0
}

#[test]
fn runs_and_generations_on_ten_threads_match_one_at_a_time() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama-ts-kv");
    // Every input dim bounded, so the bundle has `main` (plain runs) beside `prefill` and `decode`.
    let mut opts = CompileOptions::default();
    let g = kiln_compiler::import_file(&fixture.join("model.onnx"), &opts).unwrap();
    for &i in &g.inputs {
        for d in g.values[i].shape.iter().flatten() {
            for s in d.symbols() {
                opts.dim_bounds.insert(s, 32);
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lm.kiln");
    compile_bundle(&ModelSource::resolve(&fixture).unwrap(), &opts, &[TargetLimits::cpu()], &out).unwrap();
    let loaded = LoadedBundle::open(&out, OpenOptions::default()).unwrap();
    let main = loaded.model("main", None).expect("every dim bounded: a main entry point").clone();
    let lm = Arc::new(LanguageModel::from_bundle(&loaded, None).unwrap());

    let inputs = npy::read_npz(&fixture.join("inputs.npz")).unwrap();
    let tensors: Vec<kiln_formats::Tensor> = main
        .input_names()
        .iter()
        .map(|n| inputs.iter().find(|(k, _)| k == n).unwrap_or_else(|| panic!("no input {n}")).1.clone())
        .collect();
    let run = |model: &Arc<kiln_runtime::Model>| {
        let refs: Vec<TensorRef> = tensors.iter().map(TensorRef::from_tensor).collect();
        Session::new(model.clone()).run(&refs).unwrap()
    };
    let (prompt, expected) = greedy_reference(&fixture);
    let sampled = Sampling { temperature: 0.8, top_k: 0, top_p: 0.9, seed: 7 };

    // One at a time first: the references every thread must reproduce.
    let alone_run = run(&main);
    let alone_greedy = generate(&lm, &prompt, Sampling::default(), 12);
    assert_eq!(alone_greedy, expected[..12], "greedy generation differs from the recorded reference");
    let alone_sampled = generate(&lm, &prompt[..4], sampled.clone(), 12);

    std::thread::scope(|s| {
        let handles: Vec<_> = (0..10)
            .map(|t| {
                let (main, lm, sampled) = (main.clone(), lm.clone(), sampled.clone());
                let (run, prompt) = (&run, &prompt);
                s.spawn(move || match t % 3 {
                    0 => (0..3).map(|_| Err(run(&main))).collect::<Vec<_>>(),
                    1 => (0..2).map(|_| Ok((0, generate(&lm, prompt, Sampling::default(), 12)))).collect(),
                    _ => (0..2).map(|_| Ok((1, generate(&lm, &prompt[..4], sampled.clone(), 12)))).collect(),
                })
            })
            .collect();
        for h in handles {
            for result in h.join().unwrap() {
                match result {
                    Err(outs) => {
                        for (a, b) in outs.iter().zip(&alone_run) {
                            assert_eq!(a.bytes(), b.bytes(), "a concurrent run differs from the lone run");
                        }
                    }
                    Ok((0, ids)) => assert_eq!(ids, alone_greedy, "a concurrent greedy generation differs"),
                    Ok((_, ids)) => assert_eq!(ids, alone_sampled, "a concurrent sampled generation differs"),
                }
            }
        }
    });
}

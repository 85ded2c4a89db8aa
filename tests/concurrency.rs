//! Many sessions of one loaded bundle, on 8 threads at once, give the same results as one session
//! alone: models are shared read-only and every session owns its arena.

mod common;
use kiln_compiler::bundle::{compile_bundle, ModelSource};
use kiln_compiler::CompileOptions;
use kiln_formats::bundle::OpenOptions;
use kiln_formats::npy;
use kiln_formats::target::TargetLimits;
use kiln_runtime::bundle::LoadedBundle;
use kiln_runtime::{Session, TensorRef};
use std::path::Path;

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

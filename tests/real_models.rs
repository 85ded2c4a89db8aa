//! Real architectures (GPT-2, Llama-style, BERT-style; TorchScript and dynamo exports, with and
//! without KV cache) exported by `examples/export/export.py` into `tests/fixtures/`: outputs match
//! onnxruntime's, memory plans are close to their lower bound, and splitting under a 64 KiB
//! buffer limit leaves the outputs bit-identical.

mod common;
use common::bounded_options;
use kiln_compiler::{compile_file, Compiled};
use kiln_formats::target::TargetLimits;
use kiln_formats::{npy, Tensor};
use kiln_runtime::{Model, Session, TensorRef};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn fixtures() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.join("model.onnx").is_file()).collect())
        .unwrap_or_default();
    dirs.sort();
    assert!(
        !dirs.is_empty(),
        "no fixtures under {}: run examples/export/export.py (see tests/fixtures/README.md)",
        root.display()
    );
    dirs
}

fn run(c: Compiled, inputs: &[(String, Tensor)]) -> Vec<Tensor> {
    let model = Model::new(c.program, &c.weights).unwrap();
    let refs: Vec<TensorRef> = model
        .input_names()
        .iter()
        .map(|n| {
            TensorRef::from_tensor(&inputs.iter().find(|(k, _)| k == n).unwrap_or_else(|| panic!("no input {n}")).1)
        })
        .collect();
    Session::new(model).run(&refs).unwrap()
}

#[test]
fn outputs_match_onnxruntime() {
    for dir in fixtures() {
        let inputs = npy::read_npz(&dir.join("inputs.npz")).unwrap();
        let expected = npy::read_npz(&dir.join("expected.npz")).unwrap();
        let c = compile_file(&dir.join("model.onnx"), &bounded_options(&dir, 128, TargetLimits::cpu()))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        // With every input dim bounded, every value has an arena slot: nothing is allocated per op.
        assert!(c.plan.unplanned.is_empty(), "{}: unplanned {:?}", dir.display(), c.plan.unplanned);
        let names: Vec<String> = c.program.outputs.iter().map(|&o| c.program.values[o as usize].name.clone()).collect();
        let outs = run(c, &inputs);
        for (name, got) in names.iter().zip(&outs) {
            let Some((_, exp)) = expected.iter().find(|(n, _)| n == name) else { continue };
            assert_eq!(got.shape, exp.shape, "{} {name}", dir.display());
            let worst = (0..exp.numel()).map(|i| (got.get_f64(i) - exp.get_f64(i)).abs()).fold(0.0, f64::max);
            assert!(worst <= 1e-4, "{} output {name}: max abs diff {worst}", dir.display());
            eprintln!("{}: {name} max abs diff {worst:.2e}", dir.file_name().unwrap().to_string_lossy());
        }
    }
}

#[test]
fn plans_are_close_to_the_lower_bound() {
    let mut table = BTreeMap::new();
    for dir in fixtures() {
        for seq in [1u64, 128, 1024] {
            let c = compile_file(&dir.join("model.onnx"), &bounded_options(&dir, seq, TargetLimits::cpu())).unwrap();
            let name = format!("{} seq<={seq}", dir.file_name().unwrap().to_string_lossy());
            println!(
                "plan {name}: arena {} lower bound {} ratio {:.4} ({})",
                c.plan.arena_bytes, c.plan.lower_bound_bytes, c.plan.ratio, c.plan.strategy
            );
            table.insert(name, c.plan.ratio);
        }
    }
    let bad: Vec<_> = table.iter().filter(|(_, &r)| r > 1.02).collect();
    assert!(bad.is_empty(), "plans over 1.02 × lower bound: {bad:?}");
}

#[test]
fn splitting_under_64kib_is_bit_identical() {
    for dir in fixtures() {
        let inputs = npy::read_npz(&dir.join("inputs.npz")).unwrap();
        let whole = compile_file(&dir.join("model.onnx"), &bounded_options(&dir, 16, TargetLimits::cpu())).unwrap();
        let small = TargetLimits::cpu().with_max_buffer(64 << 10);
        let split = compile_file(&dir.join("model.onnx"), &bounded_options(&dir, 16, small)).unwrap();
        assert!(
            split.program.buffers.iter().all(|&b| b <= 64 << 10),
            "{}: buffers {:?}",
            dir.display(),
            split.program.buffers
        );
        println!("{}: split {:?}", dir.display(), split.plan.splits);
        let (a, b) = (run(whole, &inputs), run(split, &inputs));
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.bytes(), y.bytes(), "{}: split outputs differ", dir.display());
        }
    }
}

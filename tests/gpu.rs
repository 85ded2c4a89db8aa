//! The GPU backend on the adapter wgpu finds (Mesa's lavapipe in CI, `KILN_REQUIRE_GPU=1` there,
//! so these tests fail rather than skip without one): the exported fixtures match the CPU and
//! onnxruntime within 1e-4, greedy generation (KV cache in place in device memory) equals the
//! CPU's, a table larger than the device's
//! binding limit runs split, and an op without a GPU kernel runs on CPU between GPU steps.

mod common;
use common::*;
use kiln_compiler::bundle::{compile_bundle, ModelSource};
use kiln_compiler::{compile_file, CompileOptions, Compiled};
use kiln_formats::bundle::{Bundle, OpenOptions};
use kiln_formats::target::TargetLimits;
use kiln_formats::{npy, Tensor};
use kiln_runtime::bundle::LoadedBundle;
use kiln_runtime::generate::{GenerateOptions, LanguageModel};
use kiln_runtime::{Model, Session, TensorRef};
use std::path::Path;
use std::sync::Arc;

fn run(model: Arc<Model>, inputs: &[(String, Tensor)]) -> Vec<Tensor> {
    let refs: Vec<TensorRef> = model
        .input_names()
        .iter()
        .map(|n| TensorRef::from_tensor(&inputs.iter().find(|(k, _)| k == n).unwrap().1))
        .collect();
    Session::new(model).run(&refs).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.shape, b.shape);
    (0..a.numel()).map(|i| (a.get_f64(i) - b.get_f64(i)).abs()).fold(0.0, f64::max)
}

fn output_names(c: &Compiled) -> Vec<String> {
    c.program.outputs.iter().map(|&o| c.program.values[o as usize].name.clone()).collect()
}

#[test]
fn fixtures_match_cpu_and_onnxruntime() {
    let Some(gpu) = open_gpu("fixtures") else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut dirs: Vec<_> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).collect();
    dirs.retain(|d| d.join("model.onnx").is_file());
    dirs.sort();
    assert!(dirs.len() >= 8, "fixtures missing under {}", root.display());
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let inputs = npy::read_npz(&dir.join("inputs.npz")).unwrap();
        let expected = npy::read_npz(&dir.join("expected.npz")).unwrap();
        let c = compile_file(&dir.join("model.onnx"), &bounded_options(&dir, 32, gpu.target_limits())).unwrap();
        let placed = c.placement.clone().expect("a GPU program reports its placement");
        let names = output_names(&c);
        let on_gpu = Model::new_on_gpu(c.program.clone(), &c.weights, gpu.clone()).unwrap();
        assert!(on_gpu.runs_on_gpu());
        let got = run(on_gpu, &inputs);
        let cpu = run(Model::new(c.program, &c.weights).unwrap(), &inputs);
        let fallback: Vec<String> = placed.cpu_ops.iter().map(|(op, (n, _))| format!("{op} x{n}")).collect();
        for ((out, g), c) in names.iter().zip(&got).zip(&cpu) {
            let vs_cpu = max_diff(g, c);
            assert!(vs_cpu <= 1e-4, "{name} {out}: GPU vs CPU max diff {vs_cpu}");
            let vs_ort = expected.iter().find(|(n, _)| n == out).map(|(_, e)| max_diff(g, e));
            assert!(vs_ort.is_none_or(|d| d <= 1e-4), "{name} {out}: GPU vs onnxruntime max diff {vs_ort:?}");
            eprintln!(
                "{name}: {out} GPU vs CPU {vs_cpu:.2e}, vs onnxruntime {}; {} steps on GPU, {} on CPU, fallback ops [{}]",
                vs_ort.map_or("-".into(), |d| format!("{d:.2e}")),
                placed.gpu_steps,
                placed.cpu_steps,
                fallback.join(", ")
            );
        }
    }
}

#[test]
fn greedy_generation_equals_the_cpu() {
    let Some(gpu) = open_gpu("generation") else { return };
    let dir = tempfile::tempdir().unwrap();
    for name in ["gpt2-dynamo-kv", "llama-ts-kv", "gpt2-ts"] {
        let out = dir.path().join(format!("{name}.kiln"));
        let targets = [TargetLimits::cpu(), gpu.target_limits()];
        compile_bundle(&ModelSource::resolve(&fixture(name)).unwrap(), &CompileOptions::default(), &targets, &out)
            .unwrap();
        let loaded =
            LoadedBundle::from_bundle_on(Bundle::open(&out, OpenOptions::default()).unwrap(), Some(gpu.clone()))
                .unwrap();
        let on_gpu = Arc::new(LanguageModel::from_bundle(&loaded, Some("gpu")).unwrap());
        let on_cpu = Arc::new(LanguageModel::from_bundle(&loaded, Some("cpu")).unwrap());
        assert!(on_gpu.prefill_model().runs_on_gpu() && !on_cpu.prefill_model().runs_on_gpu());
        // The KV cache stays in device memory, appended to in place, as on the CPU.
        assert_eq!(on_gpu.kv_in_place(), on_cpu.kv_in_place(), "{name}");
        let (prompt, reference) = greedy_reference(&fixture(name));
        let opts = GenerateOptions { max_tokens: 12, stop_at_eos: false, ..Default::default() };
        let (gpu_ids, _) = generate_ids(&on_gpu, &prompt, &opts);
        let (cpu_ids, _) = generate_ids(&on_cpu, &prompt, &opts);
        assert_eq!(gpu_ids, cpu_ids, "{name}: GPU and CPU greedy ids differ");
        assert_eq!(gpu_ids[..], reference[..12], "{name}: GPU greedy ids differ from the exporter's");
        eprintln!("{name}: 12 greedy tokens on the GPU equal the CPU's and the reference");
        if on_gpu.kv_in_place() > 0 {
            // A cache in host memory cannot serve the GPU program (nor the other way round).
            let host_cache = kiln_runtime::KvState::new(on_cpu.prefill_model());
            let ids = Tensor::from_vec(&[1, 1], vec![1i64]);
            let mut session = Session::new(on_gpu.prefill_model().clone());
            let inputs: Vec<TensorRef> =
                on_gpu.prefill_model().input_names().iter().map(|_| TensorRef::from_tensor(&ids)).collect();
            let err = session.run_with_state(&inputs, &mut { host_cache }).unwrap_err().to_string();
            assert!(err.contains("keeps its KV cache in GPU memory, this cache lives in host memory"), "{err}");
        }
    }
}

/// Gather from a table and a product with a head, both `vocab x hidden`, larger than `limit`.
fn big_lm(dir: &Path, vocab: i64, hidden: i64) -> std::path::PathBuf {
    let table: Vec<f32> = (0..vocab * hidden).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
    let head: Vec<f32> = (0..hidden * vocab).map(|i| ((i * 104729) % 997) as f32 / 997.0 - 0.5).collect();
    let m = model(
        vec![
            node("Gather", &["table", "ids"], &["h"]),
            node("Tanh", &["h"], &["t"]),
            node("MatMul", &["t", "head"], &["logits"]),
        ],
        vec![value_info("ids", 7, &["1", "4"])],
        vec![value_info("logits", 1, &["1", "4", &vocab.to_string()])],
        vec![f32_tensor("table", &[vocab, hidden], &table), f32_tensor("head", &[hidden, vocab], &head)],
    );
    let p = dir.join("big.onnx");
    save(&m, &p);
    p
}

#[test]
fn a_table_over_the_binding_limit_runs_split() {
    let Some(gpu) = open_gpu("split") else { return };
    let limits = gpu.target_limits();
    // Above the largest binding of the device (128 MiB on lavapipe and wgpu's defaults).
    let hidden = 1024;
    let vocab = (limits.largest_buffer() / (4 * hidden as u64) + 1000) as i64;
    if vocab * hidden * 4 > 1 << 31 {
        eprintln!("gpu test 'split' SKIPPED: this device binds {} bytes, too much to exceed here", limits.max_binding);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = big_lm(dir.path(), vocab, hidden);
    let c = compile_file(&path, &CompileOptions { target: limits.clone(), ..Default::default() }).unwrap();
    assert_eq!(c.plan.splits.len(), 2, "table and head both split: {:?}", c.plan.splits);
    let ids = Tensor::from_vec(&[1, 4], vec![0i64, vocab - 1, 17, vocab / 2]);
    let inputs = vec![("ids".to_string(), ids)];
    let got = run(Model::new_on_gpu(c.program, &c.weights, gpu.clone()).unwrap(), &inputs);
    let whole = compile_file(&path, &CompileOptions::default()).unwrap();
    let want = run(Model::new(whole.program, &whole.weights).unwrap(), &inputs);
    let d = max_diff(&got[0], &want[0]);
    assert!(d <= 1e-3, "split on GPU vs whole on CPU: max diff {d}");
    eprintln!(
        "{} x {hidden} f32 table ({} bytes > binding limit {}): {:?}; GPU vs CPU max diff {d:.2e}",
        vocab,
        vocab * hidden * 4,
        limits.max_binding,
        c.plan.splits
    );
}

#[test]
fn an_op_without_a_gpu_kernel_runs_on_cpu_between_gpu_steps() {
    let Some(gpu) = open_gpu("fallback") else { return };
    let dir = tempfile::tempdir().unwrap();
    let x: Vec<f32> = (0..3 * 17).map(|i| (i as f32 * 0.37).sin()).collect();
    let m = model(
        vec![node("Relu", &["x"], &["r"]), node("CumSum", &["r", "axis"], &["c"]), node("Exp", &["c"], &["y"])],
        vec![value_info("x", 1, &["3", "17"])],
        vec![value_info("y", 1, &["3", "17"])],
        vec![int64_tensor("axis", &[], &[1])],
    );
    let path = dir.path().join("fallback.onnx");
    save(&m, &path);
    let c = compile_file(&path, &CompileOptions { target: gpu.target_limits(), ..Default::default() }).unwrap();
    let placed = c.placement.clone().unwrap();
    assert_eq!(placed.cpu_ops.keys().collect::<Vec<_>>(), ["CumSum"], "{placed:?}");
    assert_eq!(placed.gpu_steps, 2);
    assert_eq!(placed.transfers, (2, 2), "x up, r down, c up, y down");
    let inputs = vec![("x".to_string(), Tensor::from_vec(&[3, 17], x))];
    let got = run(Model::new_on_gpu(c.program.clone(), &c.weights, gpu.clone()).unwrap(), &inputs);
    let want = run(Model::new(c.program, &c.weights).unwrap(), &inputs);
    let scale = (0..want[0].numel()).map(|i| want[0].get_f64(i).abs()).fold(1.0, f64::max);
    let d = max_diff(&got[0], &want[0]) / scale;
    assert!(d <= 1e-5, "max relative diff {d}");
    eprintln!("CumSum on CPU ({}) between GPU steps: max relative diff {d:.2e}", placed.cpu_ops["CumSum"].1);
}

#[test]
fn a_plan_the_device_cannot_bind_is_refused_by_name() {
    let Some(gpu) = open_gpu("limits") else { return };
    let dir = tempfile::tempdir().unwrap();
    // Rows of 33 floats: values of 4 x 33 x 4 bytes, so 4-byte alignment leaves odd offsets.
    let path = big_lm(dir.path(), 64, 33);
    // Offsets aligned to 4 bytes only: below every device's storage offset alignment.
    let loose = TargetLimits { alignment: 4, ..gpu.target_limits() };
    let c = compile_file(&path, &CompileOptions { target: loose, ..Default::default() }).unwrap();
    let err = Model::new_on_gpu(c.program, &c.weights, gpu.clone()).err().expect("refused").to_string();
    assert!(err.contains("not a multiple of this device's storage offset alignment"), "{err}");
}

#[test]
fn the_cli_runs_a_bundle_on_the_device_it_is_told() {
    let Some(_gpu) = open_gpu("cli") else { return };
    let dir = tempfile::tempdir().unwrap();
    let model = fixture("llama-dynamo-kv").join("model.onnx");
    let (all, cpu_only) = (dir.path().join("all.kiln"), dir.path().join("cpu.kiln"));
    for (out, target) in [(&all, "all"), (&cpu_only, "cpu")] {
        let o = run_kiln(&["compile", model.to_str().unwrap(), "-o", out.to_str().unwrap(), "--target", target]);
        assert!(o.status.success(), "{}", stderr(&o));
        if target == "all" {
            assert!(stderr(&o).contains("place[decode/gpu]:"), "{}", stderr(&o));
        }
    }
    let run = |bundle: &Path, device: &str| {
        run_kiln(&[
            "run",
            bundle.to_str().unwrap(),
            "--prompt-ids",
            "172,47,117",
            "--max-tokens",
            "8",
            "--ignore-eos",
            "--stats",
            "--device",
            device,
        ])
    };
    let (on_gpu, on_cpu) = (run(&all, "gpu"), run(&all, "cpu"));
    assert!(on_gpu.status.success() && on_cpu.status.success(), "{}{}", stderr(&on_gpu), stderr(&on_cpu));
    assert_eq!(on_gpu.stdout, on_cpu.stdout, "the same ids on both devices");
    assert!(stderr(&on_gpu).contains("device: gpu: "), "{}", stderr(&on_gpu));
    assert!(stderr(&on_cpu).contains("device: cpu"), "{}", stderr(&on_cpu));
    let auto = run(&cpu_only, "auto");
    assert!(auto.status.success() && stderr(&auto).contains("device: cpu"), "{}", stderr(&auto));
    let refused = run(&cpu_only, "gpu");
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("has no GPU plan: compile it with --target gpu"), "{}", stderr(&refused));
}

//! Bundles end to end: compile → load → run equals the in-memory program, alignment of every
//! entry and tensor, `check` pass and fail, `verify` on a corrupted bundle, and a compile killed
//! mid-write never leaving a partial bundle under the target name.

mod common;
use common::*;
use kiln_compiler::bundle::{compile_bundle, ModelSource};
use kiln_compiler::CompileOptions;
use kiln_formats::bundle::{Bundle, OpenOptions, TENSOR_ALIGN, WEIGHT_ENTRY_ALIGN};
use kiln_formats::npy;
use kiln_formats::target::TargetLimits;
use kiln_runtime::bundle::LoadedBundle;
use kiln_runtime::{Model, Session, TensorRef};

fn tiny() -> std::path::PathBuf {
    examples().join("tiny_mlp.onnx")
}

fn bounded() -> CompileOptions {
    let mut o = CompileOptions::default();
    o.dim_bounds.insert("batch".into(), 8);
    o
}

#[test]
fn round_trip_equals_in_memory_program() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.kiln");
    compile_bundle(&ModelSource::resolve(&tiny()).unwrap(), &bounded(), &[TargetLimits::cpu()], &out).unwrap();
    let inputs = npy::read_npz(&examples().join("tiny_mlp_input.npz")).unwrap();
    let x = TensorRef::from_tensor(&inputs[0].1);

    let loaded = LoadedBundle::open(&out, OpenOptions::default()).unwrap();
    let from_bundle = Session::new(loaded.model("main", Some("cpu")).unwrap().clone()).run(&[x]).unwrap();

    let c = kiln_compiler::compile_file(&tiny(), &bounded()).unwrap();
    let in_memory = Session::new(Model::new(c.program, &c.weights).unwrap()).run(&[x]).unwrap();
    for (a, b) in from_bundle.iter().zip(&in_memory) {
        assert_eq!(a.shape, b.shape);
        assert_eq!(a.bytes(), b.bytes(), "bundle and in-memory outputs differ");
    }
    let expected = npy::read_npz(&examples().join("tiny_mlp_expected.npz")).unwrap();
    for ((_, e), g) in expected.iter().zip(&from_bundle) {
        for i in 0..e.numel() {
            assert!((e.get_f64(i) - g.get_f64(i)).abs() < 1e-5, "element {i}: {} vs {}", g.get_f64(i), e.get_f64(i));
        }
    }
}

#[test]
fn entries_and_tensors_are_aligned() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.kiln");
    compile_bundle(&ModelSource::resolve(&tiny()).unwrap(), &bounded(), &[TargetLimits::cpu()], &out).unwrap();
    let b = Bundle::open(&out, OpenOptions::default()).unwrap();
    for e in b.manifest.entries.iter().filter(|e| e.kind == "weights") {
        assert_eq!(b.entry_range(&e.name).unwrap().start as u64 % WEIGHT_ENTRY_ALIGN, 0, "{}", e.name);
    }
    for p in b.programs().unwrap().programs {
        for w in p.weights {
            assert_eq!(w.offset % TENSOR_ALIGN, 0);
        }
    }
    // Any unzip tool can read it.
    let list = std::process::Command::new("python3").args(["-m", "zipfile", "-t", out.to_str().unwrap()]).output();
    if let Ok(o) = list {
        assert!(o.status.success(), "python zipfile -t: {}", String::from_utf8_lossy(&o.stderr));
    }
}

#[test]
fn check_passes_and_fails_with_the_worst_element() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.kiln");
    let o = run_kiln(&["compile", tiny().to_str().unwrap(), "-o", out.to_str().unwrap(), "--dim", "batch=..8"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let inputs = examples().join("tiny_mlp_input.npz");
    let expected = examples().join("tiny_mlp_expected.npz");
    let o = run_kiln(&[
        "check",
        out.to_str().unwrap(),
        "--inputs",
        inputs.to_str().unwrap(),
        "--expect",
        expected.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));

    let mut exp = npy::read_npz(&expected).unwrap();
    let t = &mut exp[0].1;
    let v = t.get_f64(5) as f32 + 0.5;
    t.bytes_mut()[20..24].copy_from_slice(&v.to_le_bytes());
    let bad = dir.path().join("bad.npz");
    npy::write_npz(&bad, &exp).unwrap();
    let o = run_kiln(&[
        "check",
        out.to_str().unwrap(),
        "--inputs",
        inputs.to_str().unwrap(),
        "--expect",
        bad.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("logits") && err.contains("index 5"), "{err}");
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["ok"], false);
}

#[test]
fn verify_names_the_corrupted_entry() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.kiln");
    let o = run_kiln(&["compile", tiny().to_str().unwrap(), "-o", out.to_str().unwrap(), "--dim", "batch=..8"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(run_kiln(&["verify", out.to_str().unwrap()]).status.success());
    let b = Bundle::open(&out, OpenOptions::default()).unwrap();
    let r = b.entry_range("weights/00000.bin").unwrap();
    drop(b);
    let mut bytes = std::fs::read(&out).unwrap();
    bytes[r.start + 3] ^= 1;
    std::fs::write(&out, &bytes).unwrap();
    let o = run_kiln(&["verify", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("weights/00000.bin") && err.contains("checksum"), "{err}");
    let o =
        run_kiln(&["run", out.to_str().unwrap(), "--inputs", examples().join("tiny_mlp_input.npz").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("checksum mismatch in entry 'weights/00000.bin'"), "{err}");
    assert!(o.stdout.is_empty(), "printed outputs of damaged weights: {}", String::from_utf8_lossy(&o.stdout));

    // In a program: the default open hashes weights in the background, so loading succeeds, and
    // every run withholds its outputs with the checksum error, naming the entry and its bytes.
    let loaded = LoadedBundle::open(&out, OpenOptions::default()).unwrap();
    assert!(loaded.bundle.weight_check().is_some());
    let inputs = npy::read_npz(&examples().join("tiny_mlp_input.npz")).unwrap();
    let mut session = Session::new(loaded.model("main", None).unwrap().clone());
    drop(loaded);
    for _ in 0..2 {
        let err = session.run(&[TensorRef::from_tensor(&inputs[0].1)]).unwrap_err().to_string();
        assert!(err.contains("'weights/00000.bin'") && err.contains(&format!("bytes {}..{}", r.start, r.end)), "{err}");
    }
    // Opened with every check up front, the same bundle is refused at open.
    let all = OpenOptions { weights_in_background: false, ..OpenOptions::default() };
    let err = LoadedBundle::open(&out, all).err().unwrap().to_string();
    assert!(err.contains("checksum mismatch in entry 'weights/00000.bin'"), "{err}");
}

#[test]
fn unbounded_dim_is_named_with_its_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.kiln");
    let o = run_kiln(&["compile", tiny().to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("'batch'") && err.contains("(in x)") && err.contains("--dim"), "{err}");
    assert!(!out.exists());
}

#[test]
fn killed_compile_never_leaves_a_partial_bundle() {
    let dir = tempfile::tempdir().unwrap();
    // A model with 48 MiB of weights, so writing takes a while.
    let n = 12 << 20;
    let w: Vec<f32> = (0..n).map(|i| (i % 97) as f32).collect();
    let m = model(
        vec![node("MatMul", &["x", "w"], &["y"])],
        vec![value_info("x", 1, &["1", "4096"])],
        vec![value_info("y", 1, &["1", "3072"])],
        vec![f32_tensor("w", &[4096, 3072], &w)],
    );
    let src = dir.path().join("big.onnx");
    save(&m, &src);
    let out = dir.path().join("big.kiln");
    let o = run_kiln(&["compile", src.to_str().unwrap(), "-o", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let good = std::fs::read(&out).unwrap();
    for delay_ms in [0u64, 5, 20, 50, 100, 150, 250, 400] {
        let mut child = std::process::Command::new(kiln())
            .args(["compile", src.to_str().unwrap(), "-o", out.to_str().unwrap()])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        // Old or new, but always a whole, valid bundle.
        Bundle::open(&out, OpenOptions::default()).unwrap_or_else(|e| panic!("after kill at {delay_ms} ms: {e}"));
        assert_eq!(std::fs::metadata(&out).unwrap().len(), good.len() as u64);
    }
}

#[test]
fn inspect_json_reports_the_plan_of_models_and_bundles() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.kiln");
    let o = run_kiln(&["compile", tiny().to_str().unwrap(), "-o", out.to_str().unwrap(), "--dim", "batch=..8"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for (what, args) in [
        ("bundle", vec!["inspect", out.to_str().unwrap(), "--json"]),
        ("onnx", vec!["inspect", tiny().to_str().unwrap(), "--dim", "batch=..8", "--json"]),
    ] {
        let o = run_kiln(&args);
        assert!(o.status.success(), "{what}: {}", stderr(&o));
        let json: serde_json::Value =
            serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{what}: stdout is not JSON: {e}"));
        let ep = &json["entry_points"][0];
        let arena = ep["arena_bytes"].as_u64().unwrap_or_else(|| panic!("{what}: no arena_bytes in {ep}"));
        let lower = ep["lower_bound_bytes"].as_u64().unwrap();
        let buffers: u64 = ep["buffers"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap()).sum();
        assert!(arena >= lower && lower > 0, "{what}: arena {arena}, lower bound {lower}");
        assert_eq!(arena, buffers, "{what}");
    }
}

#[test]
fn targets_share_one_copy_of_the_weights() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpt2-dynamo");
    let dir = tempfile::tempdir().unwrap();
    let mut opts = CompileOptions::default();
    opts.dim_bounds.insert("batch".into(), 1);
    opts.dim_bounds.insert("sequence".into(), 64);
    let src = ModelSource::resolve(&fixture).unwrap();
    let one = compile_bundle(&src, &opts, &[TargetLimits::cpu()], &dir.path().join("one.kiln")).unwrap();
    let both =
        compile_bundle(&src, &opts, &[TargetLimits::cpu(), TargetLimits::gpu_default()], &dir.path().join("both.kiln"))
            .unwrap();
    // main (every dim bounded), prefill and prefill_last (a causal LM), once per target.
    assert_eq!(one.compiled.len(), 3);
    assert_eq!(both.compiled.len(), 6);
    // The programs may keep different small constants (the CPU's fused attention takes its scale
    // as an attribute; the GPU's Mul keeps the constant), but never a second copy of a weight.
    assert!(
        both.weight_bytes <= one.weight_bytes + one.weight_bytes / 100,
        "{} bytes for two targets, {} for one",
        both.weight_bytes,
        one.weight_bytes
    );
}

/// `prefill_last` gives the last row of `prefill`'s logits, with or without a KV cache, for
/// heads tied to the embedding (GPT-2) or not (Llama).
#[test]
fn prefill_last_gives_the_last_row_of_prefill() {
    use kiln_formats::Tensor;
    for name in ["gpt2-dynamo-kv", "llama-ts-kv", "gpt2-ts"] {
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m.kiln");
        let opts = CompileOptions { max_context: Some(64), ..Default::default() };
        compile_bundle(&ModelSource::resolve(&fixture).unwrap(), &opts, &[TargetLimits::cpu()], &out).unwrap();
        let loaded = LoadedBundle::open(&out, OpenOptions::default()).unwrap();
        let ids = [5i64, 17, 3, 99, 42, 7, 1];
        let n = ids.len();
        let logits = |entry: &str| -> (Vec<usize>, Vec<f32>) {
            let model = loaded.model(entry, None).unwrap_or_else(|| panic!("{name}: no {entry}")).clone();
            let inputs: Vec<Tensor> = model
                .input_names()
                .iter()
                .map(|input| match *input {
                    "input_ids" => Tensor::from_vec(&[1, n], ids.to_vec()),
                    "attention_mask" => Tensor::from_vec(&[1, n], vec![1i64; n]),
                    "position_ids" => Tensor::from_vec(&[1, n], (0..n as i64).collect()),
                    other => panic!("{name}: unexpected input {other}"),
                })
                .collect();
            let refs: Vec<_> = inputs.iter().map(TensorRef::from_tensor).collect();
            let outputs = Session::new(model.clone()).run(&refs).unwrap();
            let li = model.output_names().iter().position(|o| *o == "logits").unwrap();
            (outputs[li].shape.clone(), outputs[li].as_slice::<f32>().unwrap().to_vec())
        };
        let ((all_shape, all), (last_shape, last)) = (logits("prefill"), logits("prefill_last"));
        let vocab = all_shape[2];
        assert_eq!(all_shape, [1, n, vocab], "{name}");
        assert_eq!(last_shape, [1, 1, vocab], "{name}");
        let want = &all[(n - 1) * vocab..];
        let diff = want.iter().zip(&last).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(diff <= 1e-5, "{name}: the last rows differ by {diff}");
    }
}

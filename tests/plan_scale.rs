//! Planning at scale, on paper: a synthetic decoder with Gemma-3-12B-like dimensions (24.5 GiB of
//! bf16 weights in a sparse file that occupies no disk) is planned for a GPU with 1 GiB buffers,
//! at a prefill shape and a decode shape, without reading its weights.

mod common;
use common::*;
use std::path::PathBuf;

/// The Python that has `onnx` (made by `scripts/setup-python.sh`; override with KILN_PYTHON).
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("KILN_PYTHON") {
        return p.into();
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let cache = std::env::var_os("KILN_CACHE").map(PathBuf::from).unwrap_or_else(|| home.join(".cache/kiln"));
    cache.join("py-onnx/bin/python")
}

#[test]
fn gemma_12b_like_plans_in_seconds_under_1gib_buffers() {
    let dir = tempfile::tempdir().unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/synthetic/gemma_like.py");
    let py = python();
    let gen = std::process::Command::new(&py)
        .args([script.to_str().unwrap(), "--out", dir.path().to_str().unwrap()])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}); run scripts/setup-python.sh or set KILN_PYTHON to a Python with onnx",
                py.display()
            )
        });
    assert!(gen.status.success(), "generator failed: {}", String::from_utf8_lossy(&gen.stderr));

    for (shape, dims) in [
        ("prefill", ["batch=1", "sequence=..2048", "past_sequence=0"]),
        ("decode", ["batch=1", "sequence=1", "past_sequence=..8191"]),
    ] {
        let started = std::time::Instant::now();
        let mut args = vec![
            "compile",
            dir.path().to_str().unwrap(),
            "--plan-only",
            "--target",
            "gpu",
            "--max-buffer",
            "1GiB",
            "--json",
        ];
        for d in &dims {
            args.extend(["--dim", d]);
        }
        let out = run_kiln(&args);
        let secs = started.elapsed().as_secs_f64();
        let err = stderr(&out);
        assert!(out.status.success(), "{shape}: {err}");
        eprintln!("{shape} ({secs:.2}s):\n{err}");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let plan = &json["plans"][0];
        let buffers: Vec<u64> = plan["buffers"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap()).collect();
        assert!(buffers.iter().all(|&b| b <= 1 << 30), "{shape}: buffers {buffers:?}");
        let splits = plan["splits"].as_array().unwrap();
        let split_names: Vec<&str> = splits.iter().map(|s| s.as_str().unwrap()).collect();
        assert!(split_names.iter().any(|s| s.starts_with("embed_tokens")), "{shape}: {split_names:?}");
        assert!(split_names.iter().any(|s| s.starts_with("lm_head")), "{shape}: {split_names:?}");
    }
}

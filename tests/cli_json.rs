//! Every command that reports something prints exactly one JSON object on stdout with `--json`,
//! and it matches the command's schema in docs/schema/ (documented in docs/cli-json.md).

mod common;

use common::{run_kiln, stderr};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn path(rel: &str) -> String {
    root().join(rel).to_str().unwrap().to_string()
}

fn validator(command: &str) -> jsonschema::Validator {
    let file = root().join(format!("docs/schema/{command}.schema.json"));
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    jsonschema::meta::validate(&schema).unwrap_or_else(|e| panic!("{} is not a valid schema: {e}", file.display()));
    jsonschema::validator_for(&schema).unwrap()
}

/// stdout of `o` as exactly one JSON object, checked against `command`'s schema.
fn checked(command: &str, what: &str, o: &Output) -> Value {
    let text = String::from_utf8(o.stdout.clone()).expect("stdout is UTF-8");
    assert_eq!(text.trim_end().lines().count(), 1, "{what}: stdout must be one line of JSON:\n{text}");
    let json: Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: stdout is not JSON ({e}):\n{text}"));
    assert!(json.is_object(), "{what}: not an object");
    assert_eq!(json["command"], command, "{what}");
    let v = validator(command);
    let errors: Vec<String> = v.iter_errors(&json).map(|e| format!("{} at {}", e, e.instance_path)).collect();
    assert!(
        errors.is_empty(),
        "{what}: output does not match docs/schema/{command}.schema.json:\n{}\n{json:#}",
        errors.join("\n")
    );
    json
}

fn ok(command: &str, what: &str, args: &[&str]) -> Value {
    let o = run_kiln(args);
    assert!(o.status.success(), "{what}: {}", stderr(&o));
    checked(command, what, &o)
}

fn compile(dir: &Path, name: &str, args: &[&str]) -> (PathBuf, Value) {
    let out = dir.join(name);
    let mut all = vec!["compile"];
    all.extend(args);
    all.extend(["-o", out.to_str().unwrap(), "--json"]);
    let json = ok("compile", name, &all);
    (out, json)
}

#[test]
fn schemas_reject_incomplete_reports() {
    let incomplete = serde_json::json!({"command": "verify", "ok": true});
    assert!(!validator("verify").is_valid(&incomplete));
    let extra = serde_json::json!({"command": "bench", "ok": true, "bundle": "b", "threads": 1, "tokens": 1,
        "kv_cache": "copied", "decode": [], "surprise": 1});
    assert!(!validator("bench").is_valid(&extra));
}

#[test]
fn every_report_matches_its_schema() {
    let dir = tempfile::tempdir().unwrap();
    let mlp = path("examples/models/tiny_mlp.onnx");
    let gpt2 = path("tests/fixtures/gpt2-ts/model.onnx");

    // inspect: ONNX models (with and without bounds, one per target) and a bundle.
    ok("inspect", "inspect mlp", &["inspect", &mlp, "--json"]);
    let j = ok(
        "inspect",
        "inspect gpt2",
        &["inspect", &gpt2, "--dim", "batch=1", "--dim", "sequence=..64", "--target", "all", "--json"],
    );
    assert_eq!(j["entry_points"].as_array().unwrap().len(), 2);

    // compile: a bundle, and --plan-only.
    let (bundle, j) = compile(dir.path(), "mlp.kiln", &[&mlp, "--dim", "batch=..4"]);
    assert_eq!(j["plans"][0]["entry"], "main");
    let j = ok(
        "compile",
        "plan-only",
        &["compile", &gpt2, "--dim", "batch=1", "--dim", "sequence=..64", "--plan-only", "--json"],
    );
    assert_eq!(j["plan_only"], true);
    let b = bundle.to_str().unwrap();
    let j = ok("inspect", "inspect bundle", &["inspect", b, "--json"]);
    assert_eq!(j["kind"], "bundle");

    // verify: a good bundle, and a corrupted one (still one JSON object, ok false, exit 1).
    assert_eq!(ok("verify", "verify", &["verify", b, "--json"])["ok"], true);
    let bad = dir.path().join("bad.kiln");
    let mut bytes = std::fs::read(&bundle).unwrap();
    let weights = j["entries"].as_array().unwrap().iter().find(|e| e["kind"] == "weights").unwrap();
    bytes[weights["offset"].as_u64().unwrap() as usize + 3] ^= 1;
    std::fs::write(&bad, bytes).unwrap();
    let o = run_kiln(&["verify", bad.to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(checked("verify", "verify corrupted", &o)["ok"], false);

    // check: outputs match, and a mismatch (ok false, exit 1).
    let inputs = path("examples/models/tiny_mlp_input.npz");
    let expect = path("examples/models/tiny_mlp_expected.npz");
    let j = ok("check", "check", &["check", b, "--inputs", &inputs, "--expect", &expect, "--json"]);
    assert_eq!(j["ok"], true);
    let mut wrong = kiln_formats::npy::read_npz(Path::new(&expect)).unwrap();
    let first = &mut wrong[0].1;
    *first = kiln_formats::Tensor::from_vec(&first.shape.clone(), vec![7.0f32; first.numel()]);
    let wrong_file = dir.path().join("wrong.npz");
    kiln_formats::npy::write_npz(&wrong_file, &wrong).unwrap();
    let o = run_kiln(&["check", b, "--inputs", &inputs, "--expect", wrong_file.to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(checked("check", "check mismatch", &o)["ok"], false);

    // bench: a causal LM bundle.
    let (lm, _) = compile(
        dir.path(),
        "gpt2-kv.kiln",
        &[&path("tests/fixtures/gpt2-ts-kv"), "--max-context", "32", "--prefill-max", "16"],
    );
    let args = ["--prompt-len", "8", "--gen", "4", "--repeats", "1", "--contexts", "4,8", "--tokens", "2", "--json"];
    let j = ok("bench", "bench", &[&["bench", lm.to_str().unwrap()][..], &args[..]].concat());
    assert_eq!(j["decode"].as_array().unwrap().len(), 2);
    assert!(j["decode_tokens_per_s"].as_f64().unwrap() > 0.0 && j["prefill_tokens_per_s"].as_f64().unwrap() > 0.0);
}

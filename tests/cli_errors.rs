//! The main error paths of the CLI end with a line that says what to do: the flag to pass, the
//! file to give, or the command to run.

mod common;

use common::{run_kiln, stderr};
use std::path::Path;

fn path(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel).to_str().unwrap().to_string()
}

/// Runs `args`, expects exit code 1, and returns the last line of stderr.
fn last_line(args: &[&str]) -> String {
    let o = run_kiln(args);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
    stderr(&o).lines().last().unwrap_or_default().to_string()
}

#[test]
fn errors_end_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let mlp = path("examples/models/tiny_mlp.onnx");
    let missing = dir.path().join("missing.onnx");
    let missing = missing.to_str().unwrap();

    let line = last_line(&["inspect", missing]);
    assert!(line.starts_with("hint: no such file: check the path"), "{line}");

    let line = last_line(&["verify", &mlp]);
    assert!(line.contains("kiln compile"), "not a bundle: {line}");

    let line = last_line(&["inspect", &path("README.md")]);
    assert!(line.starts_with("hint:") && line.contains(".onnx"), "not ONNX: {line}");

    let out = dir.path().join("m.kiln");
    let line = last_line(&["compile", &mlp, "-o", out.to_str().unwrap()]);
    assert!(line.contains("'batch'") && line.contains("pass --dim"), "unbounded dims: {line}");

    let line = last_line(&["compile", &mlp, "-o", dir.path().join("no/such/dir/m.kiln").to_str().unwrap()]);
    assert!(line.contains("pass another --output"), "{line}");

    let o = run_kiln(&["compile", &mlp, "-o", out.to_str().unwrap(), "--dim", "batch=..2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (inputs, expect) = (path("examples/models/tiny_mlp_input.npz"), path("examples/models/tiny_mlp_expected.npz"));
    let b = out.to_str().unwrap();
    let line = last_line(&["check", b, "--inputs", &inputs, "--expect", &expect, "--entry", "decode"]);
    assert!(line.contains("no entry point 'decode'") && line.contains("pass --entry with one of: main"), "{line}");

    let mut bytes = std::fs::read(&out).unwrap();
    bytes[16384 + 3] ^= 1; // the first weight entry starts 16 KiB in
    std::fs::write(&out, bytes).unwrap();
    let line = last_line(&["verify", b]);
    assert!(line.starts_with("hint:") && line.contains("recompile"), "damaged bundle: {line}");

    let line = last_line(&[
        "compile",
        &path("tests/fixtures/gpt2-ts"),
        "-o",
        b,
        "--dim",
        "batch=1",
        "--dim",
        "sequence=..8",
        "--max-buffer",
        "1KiB",
    ]);
    assert!(line.contains("--max-buffer"), "weight over the limit: {line}");
}

//! Bad input: every malformed model gets an error that names what is wrong and where, and exit 1.

mod common;
use common::*;

fn expect_error(path: &std::path::Path, needles: &[&str]) {
    let out = run_kiln(&["inspect", path.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "exit code for {}: {err}", path.display());
    for n in needles {
        assert!(err.contains(n), "error for {} should mention {n:?}: {err}", path.display());
    }
    assert!(!err.contains("panicked"), "{err}");
}

fn relu_model() -> onnx_protobuf::ModelProto {
    model(
        vec![node("Relu", &["x"], &["y"])],
        vec![value_info("x", 1, &["2"])],
        vec![value_info("y", 1, &["2"])],
        vec![],
    )
}

#[test]
fn truncated_and_non_onnx_files() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    save(&relu_model(), &p);
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    expect_error(&p, &["m.onnx", "not a valid ONNX model"]);
    std::fs::write(&p, b"GIF89a this is a picture").unwrap();
    expect_error(&p, &["not a valid ONNX model"]);
    expect_error(&dir.path().join("missing.onnx"), &["missing.onnx"]);
}

#[test]
fn cycle_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    let m = model(
        vec![node("Add", &["x", "b"], &["a"]), node("Relu", &["a"], &["b"])],
        vec![value_info("x", 1, &["2"])],
        vec![value_info("b", 1, &["2"])],
        vec![],
    );
    save(&m, &p);
    expect_error(&p, &["cycle"]);
}

#[test]
fn unknown_op_is_named_with_its_node() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    let m = model(
        vec![node("FrobnicateV9", &["x"], &["y"])],
        vec![value_info("x", 1, &["2"])],
        vec![value_info("y", 1, &["2"])],
        vec![],
    );
    save(&m, &p);
    let out = run_kiln(&["run", p.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("FrobnicateV9") && err.contains("FrobnicateV9_y"), "{err}");
}

#[test]
fn undefined_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    let m = model(vec![node("Relu", &["nowhere"], &["y"])], vec![], vec![value_info("y", 1, &["2"])], vec![]);
    save(&m, &p);
    expect_error(&p, &["nowhere", "Relu_y"]);
}

#[test]
fn negative_dim_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    let m = model(
        vec![node("Relu", &["x"], &["y"])],
        vec![value_info("x", 1, &["-3"])],
        vec![value_info("y", 1, &["2"])],
        vec![],
    );
    save(&m, &p);
    expect_error(&p, &["'x'", "negative"]);
}

#[test]
fn missing_and_short_external_data_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    let w = external_tensor("w", &[4], "weights.bin", 0, 16);
    let m = model(
        vec![node("Add", &["x", "w"], &["y"])],
        vec![value_info("x", 1, &["4"])],
        vec![value_info("y", 1, &["4"])],
        vec![w],
    );
    save(&m, &p);
    expect_error(&p, &["'w'", "weights.bin"]);
    std::fs::write(dir.path().join("weights.bin"), [0u8; 8]).unwrap();
    expect_error(&p, &["'w'", "0..16", "8 bytes"]);
    let w = external_tensor("w", &[4], "weights.bin", 1 << 40, 16);
    let m = model(
        vec![node("Add", &["x", "w"], &["y"])],
        vec![value_info("x", 1, &["4"])],
        vec![value_info("y", 1, &["4"])],
        vec![w],
    );
    save(&m, &p);
    expect_error(&p, &["'w'", "outside"]);
}

#[test]
fn dtype_mismatch_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    let m = model(
        vec![node("Add", &["x", "i"], &["y"])],
        vec![value_info("x", 1, &["2"]), value_info("i", 7, &["2"])],
        vec![value_info("y", 1, &["2"])],
        vec![],
    );
    save(&m, &p);
    let out = run_kiln(&["run", p.to_str().unwrap()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("Add_y"), "{err}");
}

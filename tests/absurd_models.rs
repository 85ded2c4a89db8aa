//! Absurd models: dims of 10^12, byte sizes that overflow u64, negative dims, cycles, a million
//! nodes, deeply nested attributes, short external data, an output nothing produces. Each is
//! refused by `kiln compile` (and `kiln inspect` where it plans) with a named error and exit 1,
//! under a 2 GiB address-space limit, so an allocation sized by the model would abort the run
//! instead of passing; no bundle is left behind.

mod common;
use common::*;
use onnx_protobuf::{attribute_proto::AttributeType, GraphProto, ModelProto};
use std::path::Path;
use std::process::Output;

/// Address space the CLI gets: far below what any of these models would need if kiln allocated
/// by their declared sizes, far above what it needs to refuse them.
const ADDRESS_SPACE_KIB: u64 = 2 << 20;

fn kiln_limited(args: &[&str]) -> Output {
    std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("ulimit -v {ADDRESS_SPACE_KIB} && exec \"$0\" \"$@\""))
        .arg(kiln())
        .args(args)
        .output()
        .expect("bash runs")
}

/// `kiln compile` (and `kiln inspect`) of `model` exit 1 naming every needle; no bundle written.
fn refused(m: &ModelProto, extra: &[&str], needles: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    save(m, &p);
    refused_file(&p, extra, needles)
}

fn refused_file(p: &Path, extra: &[&str], needles: &[&str]) -> String {
    let out = p.with_extension("kiln");
    let mut args = vec!["compile", p.to_str().unwrap(), "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = kiln_limited(&args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "status {:?} (None: killed by a signal): {err}", o.status);
    assert!(err.contains("error:") && !err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "the error should mention {n:?}: {err}");
    }
    assert!(!out.exists(), "a bundle was written: {err}");
    let leftovers: Vec<_> = std::fs::read_dir(p.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    err
}

fn relu(dims: &[&str]) -> ModelProto {
    model(vec![node("Relu", &["x"], &["y"])], vec![value_info("x", 1, dims)], vec![value_info("y", 1, dims)], vec![])
}

#[test]
fn a_plan_over_max_memory_is_refused_with_both_numbers() {
    // 10^12 floats: 4 TB per value, input and output live at once; the default limit is half the
    // machine's memory.
    let err = refused(&relu(&["1000000000000"]), &[], &["arena of 8000000000000 bytes", "--max-memory"]);
    assert!(err.contains("above the memory limit of"), "{err}");
    // An explicit limit, named back; the same model fits a larger one (planning only).
    refused(&relu(&["1024"]), &["--max-memory", "1KiB"], &["arena of 8192 bytes", "limit of 1024 bytes"]);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    save(&relu(&["1024"]), &p);
    let o = kiln_limited(&["compile", p.to_str().unwrap(), "--plan-only", "--max-memory", "8KiB"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // `kiln run` on an .onnx file plans and allocates at once: the same default limit applies.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    let m = model(
        vec![node("Expand", &["x", "shape"], &["y"])],
        vec![value_info("x", 1, &["1"])],
        vec![value_info("y", 1, &["1000000000000"])],
        vec![int64_tensor("shape", &[1], &[1_000_000_000_000])],
    );
    save(&m, &p);
    let npy = dir.path().join("x.npy");
    kiln_formats::npy::write_npy(&npy, &kiln_formats::Tensor::from_vec(&[1], vec![1f32])).unwrap();
    let o = kiln_limited(&["run", p.to_str().unwrap(), "--input", &format!("x={}", npy.display())]);
    assert_eq!(o.status.code(), Some(1), "status {:?}: {}", o.status, stderr(&o));
    assert!(
        stderr(&o).contains("needs an arena of 4000000000") && stderr(&o).contains("--max-memory"),
        "{}",
        stderr(&o)
    );
    let o = kiln_limited(&["compile", p.to_str().unwrap(), "--plan-only", "--max-memory", "lots"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("--max-memory"), "{}", stderr(&o));
}

#[test]
fn a_huge_constant_is_not_allocated_to_fold_it() {
    // ConstantOfShape of a constant shape: constant folding would run it now, at compile time.
    let m = model(
        vec![node("ConstantOfShape", &["shape"], &["c"]), node("Add", &["x", "c"], &["y"])],
        vec![value_info("x", 1, &["1"])],
        vec![value_info("y", 1, &["1000000000000"])],
        vec![int64_tensor("shape", &[1], &[1_000_000_000_000])],
    );
    refused(&m, &[], &["needs an arena of", "--max-memory"]);
}

#[test]
fn byte_sizes_that_overflow_are_named() {
    // 2^40 · 2^40 · 4 bytes does not fit in u64.
    refused(&relu(&["1099511627776", "1099511627776"]), &[], &["'x'", "overflow"]);
    // A constant whose dims overflow, with no data behind them.
    let m = model(
        vec![node("Add", &["x", "w"], &["y"])],
        vec![value_info("x", 1, &["2"])],
        vec![value_info("y", 1, &["2"])],
        vec![f32_tensor("w", &[1 << 40, 1 << 40], &[])],
    );
    refused(&m, &[], &["'w'", "overflow"]);
    // A constant of 10^12 elements that holds four bytes.
    let m = model(
        vec![node("Add", &["x", "w"], &["y"])],
        vec![value_info("x", 1, &["2"])],
        vec![value_info("y", 1, &["2"])],
        vec![f32_tensor("w", &[1_000_000_000_000], &[1.0])],
    );
    refused(&m, &[], &["'w'", "4 bytes"]);
}

#[test]
fn negative_dims_are_named() {
    refused(&relu(&["-3"]), &[], &["'x'", "negative"]);
    let m = model(
        vec![node("Add", &["x", "w"], &["y"])],
        vec![value_info("x", 1, &["2"])],
        vec![value_info("y", 1, &["2"])],
        vec![f32_tensor("w", &[-1], &[1.0])],
    );
    refused(&m, &[], &["'w'", "negative"]);
}

#[test]
fn a_cycle_is_named() {
    let m = model(
        vec![node("Add", &["x", "b"], &["a"]), node("Relu", &["a"], &["b"])],
        vec![value_info("x", 1, &["2"])],
        vec![value_info("b", 1, &["2"])],
        vec![],
    );
    refused(&m, &[], &["cycle"]);
}

#[test]
fn an_output_nothing_produces_is_named() {
    let m = model(
        vec![node("Relu", &["x"], &["y"])],
        vec![value_info("x", 1, &["2"])],
        vec![value_info("y", 1, &["2"]), value_info("ghost", 1, &["2"])],
        vec![],
    );
    refused(&m, &[], &["'ghost'"]);
}

#[test]
fn short_external_data_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    let m = model(
        vec![node("Add", &["x", "w"], &["y"])],
        vec![value_info("x", 1, &["4"])],
        vec![value_info("y", 1, &["4"])],
        vec![external_tensor("w", &[4], "w.bin", 0, 16)],
    );
    save(&m, &p);
    std::fs::write(dir.path().join("w.bin"), [0u8; 12]).unwrap();
    refused_file(&p, &[], &["'w'", "0..16", "12 bytes"]);
}

#[test]
fn deeply_nested_attributes_are_refused_without_exhausting_the_stack() {
    // An If whose then-branch holds an If whose then-branch holds an If ... 5000 deep, written as
    // raw protobuf (the generated types would recurse as deep to encode it as to decode it).
    let mut graph = Vec::new();
    for _ in 0..5000 {
        graph = if_around(&graph);
    }
    // ModelProto: ir_version = 1 (varint), graph = 7, opset_import = 8 { version = 2 }.
    let mut model = Vec::new();
    put_varint(&mut model, 1 << 3);
    put_varint(&mut model, 8);
    put_field(&mut model, 7, &graph);
    let mut opset = Vec::new();
    put_varint(&mut opset, 2 << 3);
    put_varint(&mut opset, 17);
    put_field(&mut model, 8, &opset);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.onnx");
    std::fs::write(&p, model).unwrap();
    refused_file(&p, &[], &["m.onnx", "not a valid ONNX model"]);
}

/// Protobuf: field `number`, wire type 2 (length-delimited), then `payload`.
fn put_field(out: &mut Vec<u8>, number: u32, payload: &[u8]) {
    put_varint(out, u64::from(number << 3 | 2));
    put_varint(out, payload.len() as u64);
    out.extend_from_slice(payload);
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A GraphProto holding one If node whose `then_branch` is `inner`.
fn if_around(inner: &[u8]) -> Vec<u8> {
    // AttributeProto: name = 1, g = 6, type = 20 (varint).
    let mut attr = Vec::new();
    put_field(&mut attr, 1, b"then_branch");
    put_field(&mut attr, 6, inner);
    put_varint(&mut attr, 20 << 3);
    put_varint(&mut attr, AttributeType::GRAPH as u64);
    // NodeProto: input = 1, output = 2, op_type = 4, attribute = 5.
    let mut node = Vec::new();
    put_field(&mut node, 1, b"c");
    put_field(&mut node, 2, b"o");
    put_field(&mut node, 4, b"If");
    put_field(&mut node, 5, &attr);
    // GraphProto: node = 1.
    let mut graph = Vec::new();
    put_field(&mut graph, 1, &node);
    graph
}

#[test]
fn a_million_nodes_are_refused_naming_the_count() {
    // A chain of a million Relus (35 MB of ONNX). kiln's planner is quadratic in the number of
    // values, so such a graph once planned for hours; it is now refused right after decoding.
    const N: usize = 1_000_000;
    let mut g = GraphProto::new();
    g.name = "chain".into();
    g.input.push(value_info("v0", 1, &["4"]));
    g.output.push(value_info(&format!("v{N}"), 1, &["4"]));
    for i in 0..N {
        let (a, b) = (format!("v{i}"), format!("v{}", i + 1));
        g.node.push(node("Relu", &[&a], &[&b]));
    }
    let mut m = relu(&["4"]);
    m.graph = Some(g).into();
    let started = std::time::Instant::now();
    refused(&m, &[], &["'chain'", "1000000 nodes", "at most 100000"]);
    assert!(started.elapsed().as_secs() < 60, "took {:?}", started.elapsed());
}

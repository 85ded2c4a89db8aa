//! Helpers shared by the end-to-end tests: a tiny ONNX builder and a way to run the CLI.
#![allow(dead_code)]

use onnx_protobuf::{
    tensor_proto::DataLocation, tensor_shape_proto, type_proto, GraphProto, Message, ModelProto, NodeProto,
    OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use std::path::{Path, PathBuf};
use std::process::Output;

/// Folder of a committed fixture model (`tests/fixtures/NAME`).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// (prompt ids, the greedy ids after them) that `examples/export/export.py` recorded in a
/// fixture's `greedy.json`.
pub fn greedy_reference(fixture: &Path) -> (Vec<u32>, Vec<u32>) {
    let text = std::fs::read_to_string(fixture.join("greedy.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ids = |k: &str| v[k].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
    (ids("prompt_ids"), ids("generated_ids"))
}

/// The ids a fresh generator of `lm` generates after `prompt`, and its stats.
pub fn generate_ids(
    lm: &std::sync::Arc<kiln_runtime::generate::LanguageModel>,
    prompt: &[u32],
    opts: &kiln_runtime::generate::GenerateOptions,
) -> (Vec<u32>, kiln_runtime::generate::GenerateStats) {
    let mut ids = Vec::new();
    let stats = lm
        .generator()
        .generate(prompt, opts, |id| {
            ids.push(id);
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    (ids, stats)
}

/// Path of the built `kiln` binary.
pub fn kiln() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kiln"))
}

/// Runs the CLI with `args` and returns its output.
pub fn run_kiln(args: &[&str]) -> Output {
    std::process::Command::new(kiln()).args(args).output().expect("kiln runs")
}

/// stderr of an output, as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A dim: a number, or a symbol when it parses as no number.
pub fn value_info(name: &str, elem: i32, dims: &[&str]) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    for d in dims {
        let mut dim = tensor_shape_proto::Dimension::new();
        dim.value = Some(match d.parse::<i64>() {
            Ok(v) => tensor_shape_proto::dimension::Value::DimValue(v),
            Err(_) => tensor_shape_proto::dimension::Value::DimParam(d.to_string()),
        });
        shape.dim.push(dim);
    }
    let mut tt = type_proto::Tensor::new();
    tt.elem_type = elem;
    tt.shape = Some(shape).into();
    let mut ty = TypeProto::new();
    ty.value = Some(type_proto::Value::TensorType(tt));
    let mut vi = ValueInfoProto::new();
    vi.name = name.into();
    vi.type_ = Some(ty).into();
    vi
}

pub fn node(op: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    let mut n = NodeProto::new();
    n.op_type = op.into();
    n.name = format!("{op}_{}", outputs.first().unwrap_or(&""));
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.output = outputs.iter().map(|s| s.to_string()).collect();
    n
}

pub fn f32_tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.data_type = 1;
    t.dims = dims.to_vec();
    t.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    t
}

pub fn int64_tensor(name: &str, dims: &[i64], values: &[i64]) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.data_type = 7;
    t.dims = dims.to_vec();
    t.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    t
}

/// A tensor whose data lives in `location` at `offset`.
pub fn external_tensor(name: &str, dims: &[i64], location: &str, offset: u64, length: u64) -> TensorProto {
    let mut t = TensorProto::new();
    t.name = name.into();
    t.data_type = 1;
    t.dims = dims.to_vec();
    t.data_location = DataLocation::EXTERNAL.into();
    for (k, v) in [("location", location.to_string()), ("offset", offset.to_string()), ("length", length.to_string())] {
        let mut e = StringStringEntryProto::new();
        e.key = k.into();
        e.value = v;
        t.external_data.push(e);
    }
    t
}

pub fn model(
    nodes: Vec<NodeProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    inits: Vec<TensorProto>,
) -> ModelProto {
    let mut g = GraphProto::new();
    g.name = "test".into();
    g.node = nodes;
    g.input = inputs;
    g.output = outputs;
    g.initializer = inits;
    let mut m = ModelProto::new();
    m.ir_version = 8;
    let mut op = OperatorSetIdProto::new();
    op.version = 17;
    m.opset_import.push(op);
    m.graph = Some(g).into();
    m
}

pub fn save(m: &ModelProto, path: &Path) {
    std::fs::write(path, m.write_to_bytes().unwrap()).unwrap();
}

/// The repository's example models folder.
pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/models")
}

/// Options bounding every symbolic input dim of the model in `dir` at `seq` (batch dims at 1).
pub fn bounded_options(
    dir: &Path,
    seq: u64,
    target: kiln_formats::target::TargetLimits,
) -> kiln_compiler::CompileOptions {
    let g = kiln_compiler::import_file(&dir.join("model.onnx"), &Default::default()).unwrap();
    let mut o = kiln_compiler::CompileOptions { target, ..Default::default() };
    for &i in &g.inputs {
        for d in g.values[i].shape.iter().flatten() {
            for s in d.symbols() {
                let bound = if s.contains("batch") { 1 } else { seq };
                o.dim_bounds.insert(s, bound);
            }
        }
    }
    o
}

/// The GPU for a GPU test, or `None` (with a note) when there is none and the run does not require
/// one; with `KILN_REQUIRE_GPU=1` (CI) a missing GPU fails the test instead of skipping it.
pub fn open_gpu(test: &str) -> Option<std::sync::Arc<kiln_runtime::gpu::Gpu>> {
    match kiln_runtime::gpu::Gpu::open() {
        Ok(g) => {
            eprintln!("gpu test '{test}' runs on {}", g.describe());
            Some(g)
        }
        Err(e) if std::env::var("KILN_REQUIRE_GPU").as_deref() == Ok("1") => {
            panic!("KILN_REQUIRE_GPU=1 but no GPU could be opened: {e}")
        }
        Err(e) => {
            eprintln!("gpu test '{test}' SKIPPED: {e}");
            None
        }
    }
}

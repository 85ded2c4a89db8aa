//! Which steps the GPU backend has kernels for. The compiler asks this to place each step, and the
//! runtime asks it again at load, so a program that places an op on the GPU without a kernel is
//! refused by name instead of reaching a dispatch. Compiled with or without the `gpu` feature:
//! placement does not need a device.

use kiln_formats::program::{AttrKind, Attribute, Device, Program, Step, NO_VALUE};
use kiln_formats::DType;

/// Elementwise ops of one f32 operand.
pub const UNARY: &[&str] = &[
    "Abs",
    "Ceil",
    "Cos",
    "Erf",
    "Exp",
    "Floor",
    "Gelu",
    "Log",
    "Neg",
    "Reciprocal",
    "Relu",
    "Sigmoid",
    "Sin",
    "Sqrt",
    "Tanh",
];

/// Elementwise ops of two broadcast f32 operands.
pub const BINARY: &[&str] = &["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"];

/// Ops that move 4-byte elements without arithmetic (one strided copy kernel serves them all).
pub const MOVEMENT: &[&str] = &["Transpose", "Slice", "Expand", "Concat", "Split", "Gather"];

/// Row-wise normalisations.
pub const NORM: &[&str] = &["Softmax", "LogSoftmax", "LayerNormalization", "RMSNormalization"];

/// Reductions over a run of adjacent axes.
pub const REDUCE: &[&str] = &["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"];

/// Products.
pub const PRODUCTS: &[&str] = &["MatMul", "Gemm"];

/// Moves between devices; the compiler inserts them where data crosses.
pub const TO_GPU: &str = "ToGpu";
/// See [`TO_GPU`].
pub const TO_CPU: &str = "ToCpu";

/// Every op with a GPU kernel (ONNX domain, plus `kiln::MatMul`/`MatMulTransB`), for reports.
pub fn ops() -> Vec<&'static str> {
    let mut v: Vec<&str> = [UNARY, BINARY, MOVEMENT, NORM, REDUCE, PRODUCTS].concat();
    v.extend(["Where", "Cast", "kiln::MatMulTransB", "kiln::KvAppend", "kiln::ToGpu"]);
    v.sort_unstable();
    v
}

/// Whether `step` can run on the GPU; the error says why not (no kernel for the op, or a dtype the
/// target cannot compute in). `dtype` gives a slot's element type.
pub fn check(step: &Step, dtype: &dyn Fn(u32) -> Option<DType>) -> Result<(), String> {
    let present: Vec<Option<DType>> =
        step.inputs.iter().map(|&i| if i == NO_VALUE { None } else { dtype(i) }).collect();
    let outs: Vec<Option<DType>> = step.outputs.iter().map(|&o| dtype(o)).collect();
    let attr = |name: &str| step.attrs.iter().find(|a| a.name == name);
    let all_f32 = |ds: &[Option<DType>]| ds.iter().flatten().all(|&d| d == DType::F32);
    let four_bytes = |d: Option<DType>| d.is_some_and(|d| d.size() == 4);
    let f32_only = |what: &str| -> Result<(), String> {
        match present.iter().chain(&outs).flatten().find(|&&d| d != DType::F32) {
            None => Ok(()),
            Some(d) => Err(format!("{what} on the GPU computes in f32 only, this step has {d}")),
        }
    };
    match (step.domain.as_str(), step.op.as_str()) {
        ("kiln", TO_GPU) => Ok(()),
        ("kiln", "MatMul" | "MatMulTransB") => f32_only("MatMul"),
        ("kiln", "KvAppend") => match present.get(1).copied().flatten() {
            Some(d) if d.size() == 4 => Ok(()),
            d => Err(format!("the GPU keeps 4-byte KV caches, this one is {d:?}")),
        },
        ("kiln", op) => Err(format!("no GPU kernel for kiln::{op}")),
        ("" | "ai.onnx", op) => {
            if UNARY.contains(&op) || BINARY.contains(&op) || PRODUCTS.contains(&op) || REDUCE.contains(&op) {
                if BINARY.contains(&op) && present.iter().flatten().count() != 2 {
                    return Err(format!("{op} with {} operands (the GPU kernel takes two)", present.len()));
                }
                if op == "Gemm" && step.opset < 7 {
                    return Err("Gemm before opset 7 (broadcast attribute)".into());
                }
                if attr("broadcast").is_some() {
                    return Err("opset < 7 axis broadcasting".into());
                }
                if REDUCE.contains(&op) && attr("noop_with_empty_axes").is_some_and(|a| a.i != 0) {
                    return Err("noop_with_empty_axes".into());
                }
                if REDUCE.contains(&op) {
                    // Input 1, when present, is the int64 axes list, read on CPU.
                    return f32_only_outputs(&outs).and(match present.first().copied().flatten() {
                        Some(DType::F32) => Ok(()),
                        d => Err(format!("{op} on the GPU computes in f32 only, this step has {d:?}")),
                    });
                }
                return f32_only(op);
            }
            if NORM.contains(&op) {
                if step.outputs.len() > 1 {
                    return Err(format!("{op} with its optional statistics outputs"));
                }
                return f32_only(op);
            }
            if MOVEMENT.contains(&op) {
                let data = present.first().copied().flatten();
                if !four_bytes(data) || !outs.iter().all(|&d| four_bytes(d)) {
                    return Err(format!(
                        "{op} moves 4-byte elements on the GPU, this step's data is {}",
                        data.map_or("absent".into(), |d| d.to_string())
                    ));
                }
                if op == "Gather" && !matches!(present.get(1).copied().flatten(), Some(DType::I64 | DType::I32)) {
                    return Err("Gather indices must be int64 or int32".into());
                }
                if op == "Split" && step.opset < 13 && attr("split").is_none() && present.len() > 1 {
                    return Err("Split before opset 13 with a split input".into());
                }
                return Ok(());
            }
            match op {
                "Where" => {
                    if present.first().copied().flatten() != Some(DType::Bool) || !all_f32(&present[1..]) {
                        return Err("Where on the GPU takes a bool condition and f32 values".into());
                    }
                    f32_only_outputs(&outs)
                }
                "Cast" => {
                    let to = attr("to").filter(|a| a.kind == AttrKind::Int as i32).map(|a: &Attribute| a.i);
                    match (present.first().copied().flatten(), to.and_then(|c| DType::from_onnx_code(c as i32))) {
                        (Some(DType::F32 | DType::I32 | DType::Bool), Some(DType::F32)) => Ok(()),
                        (from, to) => Err(format!(
                            "Cast from {} to {} (the GPU casts bool and int32 to f32)",
                            from.map_or("?".into(), |d| d.to_string()),
                            to.map_or("?".into(), |d| d.to_string())
                        )),
                    }
                }
                _ => Err(format!("no GPU kernel for {op}")),
            }
        }
        (domain, op) => Err(format!("no GPU kernel for {domain}::{op}")),
    }
}

fn f32_only_outputs(outs: &[Option<DType>]) -> Result<(), String> {
    match outs.iter().flatten().find(|&&d| d != DType::F32) {
        None => Ok(()),
        Some(d) => Err(format!("output is {d}, the GPU computes in f32 only")),
    }
}

/// Whether a step reads only its inputs' shapes (so it needs no transfer of their data).
pub fn reads_shapes_only(step: &Step) -> bool {
    matches!(step.domain.as_str(), "" | "ai.onnx") && matches!(step.op.as_str(), "Shape" | "Size")
}

/// Each slot's device: where the step that makes it runs (the caller's inputs and constants: CPU),
/// a KV state's past where its append runs. A view's slot has its own maker's device; the runtime
/// reads a view through its source's.
pub fn homes(p: &Program) -> Vec<Device> {
    let mut home = vec![Device::Cpu; p.values.len()];
    for step in &p.steps {
        let d = if step.on_gpu() { Device::Gpu } else { Device::Cpu };
        for &o in &step.outputs {
            if let Some(h) = home.get_mut(o as usize) {
                *h = d;
            }
        }
    }
    for st in &p.states {
        let (past, present) = (st.past as usize, st.present as usize);
        if past < home.len() && present < home.len() {
            home[past] = home[present];
        }
    }
    home
}

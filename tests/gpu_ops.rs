//! Every GPU kernel against the CPU kernels, op by op: one single-op model per case, compiled for
//! the GPU (the op under test must be placed there) and for the CPU, run on both, and compared
//! element by element on ragged shapes (sizes that are not multiples of the kernels' 16 x 16
//! tiles or 256-wide workgroups).
//!
//! Without a GPU adapter each test prints that it was skipped, unless `KILN_REQUIRE_GPU=1`, which
//! makes a missing GPU a failure. On Linux, Mesa's lavapipe serves as the adapter (set
//! `NODEVICE_SELECT=1` to silence its device-select layer); it is slow, so every case is small but
//! those of `large_grids`, which need more than 65535 workgroups.

mod common;

use common::{f32_tensor, int64_tensor, model, node, open_gpu, save, value_info};
use kiln_compiler::CompileOptions;
use kiln_formats::target::TargetLimits;
use kiln_formats::Tensor;
use kiln_runtime::gpu::Gpu;
use kiln_runtime::{Model, Session, TensorRef};
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::{AttributeProto, NodeProto, TensorProto, ValueInfoProto};
use std::sync::Arc;

// ONNX element types.
const F32: i32 = 1;
const I32: i32 = 6;
const I64: i32 = 7;
const BOOL: i32 = 9;

/// Relative + absolute tolerance: |gpu - cpu| <= TOL * (1 + |cpu|).
const TOL: f64 = 1e-4;

/// `n` deterministic pseudo-random values in `[lo, hi)`, different for each `seed`.
fn values(n: usize, seed: u32, lo: f32, hi: f32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let t = ((i as f64 + 1.0) * 12.9898 + f64::from(seed) * 78.233).sin() * 43758.5453;
            lo + (hi - lo) * (t - t.floor()) as f32
        })
        .collect()
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

fn f32_in(shape: &[usize], seed: u32, lo: f32, hi: f32) -> Tensor {
    Tensor::from_vec(shape, values(numel(shape), seed, lo, hi))
}

fn attr_int(name: &str, v: i64) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INT.into();
    a.i = v;
    a
}

fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::INTS.into();
    a.ints = v.to_vec();
    a
}

fn attr_float(name: &str, v: f32) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::FLOAT.into();
    a.f = v;
    a
}

fn attr_str(name: &str, v: &str) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = AttributeType::STRING.into();
    a.s = v.as_bytes().to_vec();
    a
}

fn with_attrs(mut n: NodeProto, attrs: Vec<AttributeProto>) -> NodeProto {
    n.attribute = attrs;
    n
}

/// A graph output: only its name is read by the importer, which infers type and shape.
fn output(name: &str) -> ValueInfoProto {
    let mut vi = ValueInfoProto::new();
    vi.name = name.into();
    vi
}

/// One single-op model, its inputs, and what must be true of its placement.
struct Case {
    label: String,
    opset: i64,
    nodes: Vec<NodeProto>,
    /// Graph inputs: name, ONNX element type, value.
    inputs: Vec<(String, i32, Tensor)>,
    inits: Vec<TensorProto>,
    outputs: Vec<String>,
    /// Ops that must all be placed on the GPU (matched by op type, any domain).
    gpu_ops: Vec<&'static str>,
    /// Ops that must be left on CPU (they must appear in the placement report's `cpu_ops`).
    cpu_ops: Vec<&'static str>,
}

impl Case {
    /// A case of one node `op` reading `inputs` (graph inputs, in order) and writing `out`.
    fn new(label: impl Into<String>, op: &'static str, inputs: Vec<(&str, i32, Tensor)>) -> Case {
        Case::with_node(label, op, inputs, &[], vec![])
    }

    /// Like [`Case::new`], the node also reading `extra` (initializers or "" for absent
    /// optional inputs) after the graph inputs, with `attrs`.
    fn with_node(
        label: impl Into<String>,
        op: &'static str,
        inputs: Vec<(&str, i32, Tensor)>,
        extra: &[&str],
        attrs: Vec<AttributeProto>,
    ) -> Case {
        let names: Vec<&str> = inputs.iter().map(|(n, _, _)| *n).chain(extra.iter().copied()).collect();
        Case {
            label: label.into(),
            opset: 17,
            nodes: vec![with_attrs(node(op, &names, &["out"]), attrs)],
            inputs: inputs.into_iter().map(|(n, e, t)| (n.to_string(), e, t)).collect(),
            inits: vec![],
            outputs: vec!["out".into()],
            gpu_ops: vec![op],
            cpu_ops: vec![],
        }
    }

    fn opset(mut self, v: i64) -> Case {
        self.opset = v;
        self
    }

    fn inits(mut self, inits: Vec<TensorProto>) -> Case {
        self.inits = inits;
        self
    }
}

/// Largest differences seen over a set of cases: (|gpu - cpu|, |gpu - cpu| / (1 + |cpu|)).
#[derive(Default, Clone, Copy)]
struct MaxDiff {
    abs: f64,
    scaled: f64,
}

impl MaxDiff {
    fn add(&mut self, d: MaxDiff) {
        self.abs = self.abs.max(d.abs);
        self.scaled = self.scaled.max(d.scaled);
    }
}

/// Fails the case with a message unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// Loads `c`'s program (onto `gpu` when given) and runs it on the case's inputs.
fn run(c: &kiln_compiler::Compiled, gpu: Option<Arc<Gpu>>, case: &Case) -> Result<Vec<Tensor>, String> {
    let on = if gpu.is_some() { "GPU" } else { "CPU" };
    let m = match gpu {
        Some(g) => Model::new_on_gpu(c.program.clone(), &c.weights, g),
        None => Model::new(c.program.clone(), &c.weights),
    }
    .map_err(|e| format!("loading the model for the {on}: {e}"))?;
    ensure!(m.runs_on_gpu() == (on == "GPU"), "the model loaded for the {on} runs_on_gpu() = {}", m.runs_on_gpu());
    let mut order: Vec<&Tensor> = Vec::new();
    for name in m.input_names() {
        let found = case.inputs.iter().find(|(n, _, _)| n == name).ok_or_else(|| format!("no input '{name}'"))?;
        order.push(&found.2);
    }
    let refs: Vec<TensorRef> = order.iter().map(|t| TensorRef::from_tensor(t)).collect();
    Session::new(m).run(&refs).map_err(|e| format!("running on the {on}: {e}"))
}

/// Runs `case` on the GPU and on the CPU and compares every output; returns the largest difference.
/// Writes `case`'s model and compiles it for `target`.
fn compile(case: &Case, target: TargetLimits) -> Result<kiln_compiler::Compiled, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("op.onnx");
    let inputs = case.inputs.iter().map(|(n, e, t)| {
        let dims: Vec<String> = t.shape.iter().map(|d| d.to_string()).collect();
        value_info(n, *e, &dims.iter().map(String::as_str).collect::<Vec<_>>())
    });
    let mut m = model(
        case.nodes.clone(),
        inputs.collect(),
        case.outputs.iter().map(|o| output(o)).collect(),
        case.inits.clone(),
    );
    m.opset_import[0].version = case.opset;
    save(&m, &path);
    let name = target.name.clone();
    kiln_compiler::compile_file(&path, &CompileOptions { target, ..Default::default() })
        .map_err(|e| format!("compiling for target {name}: {e}"))
}

/// Runs `case` on the GPU and on the CPU and compares every output; returns the largest difference.
fn check(gpu: &Arc<Gpu>, case: &Case) -> Result<MaxDiff, String> {
    let on_gpu = compile(case, gpu.target_limits())?;
    let report = on_gpu.placement.as_ref().ok_or("no placement report")?;
    let steps = &on_gpu.program.steps;
    for op in &case.gpu_ops {
        let mine: Vec<_> = steps.iter().filter(|s| s.op == *op).collect();
        ensure!(!mine.is_empty(), "no {op} step left after compiling (ops: {:?})", on_gpu.ops_after);
        ensure!(mine.iter().all(|s| s.on_gpu()), "{op} was not placed on the GPU: {:?}", report.cpu_ops);
        ensure!(
            !report.cpu_ops.keys().any(|k| k == op || k.ends_with(&format!("::{op}"))),
            "{op} in cpu_ops: {:?}",
            report.cpu_ops
        );
    }
    if !case.gpu_ops.is_empty() {
        ensure!(report.gpu_steps >= 1, "no step placed on the GPU");
    }
    for op in &case.cpu_ops {
        ensure!(report.cpu_ops.contains_key(*op), "{op} should be left on CPU, cpu_ops: {:?}", report.cpu_ops);
        ensure!(steps.iter().filter(|s| s.op == *op).all(|s| !s.on_gpu()), "{op} placed on the GPU");
    }
    let got = run(&on_gpu, Some(gpu.clone()), case)?;

    let on_cpu = compile(case, TargetLimits::cpu())?;
    let want = run(&on_cpu, None, case)?;

    ensure!(got.len() == want.len(), "{} outputs on the GPU, {} on the CPU", got.len(), want.len());
    let mut worst = MaxDiff::default();
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        ensure!(g.dtype == w.dtype, "output {k}: dtype {} on the GPU, {} on the CPU", g.dtype, w.dtype);
        ensure!(g.shape == w.shape, "output {k}: shape {:?} on the GPU, {:?} on the CPU", g.shape, w.shape);
        let mut bad = Vec::new();
        for i in 0..w.numel() {
            let (a, b) = (g.get_f64(i), w.get_f64(i));
            let d = (a - b).abs();
            if a == b || (a.is_nan() && b.is_nan()) {
                continue;
            }
            // An infinite value must be matched exactly (inf - x <= TOL * inf would let any x pass).
            if a.is_finite() && b.is_finite() && d <= TOL * (1.0 + b.abs()) {
                worst.add(MaxDiff { abs: d, scaled: d / (1.0 + b.abs()) });
            } else {
                bad.push(format!("[{i}] GPU {a} CPU {b}"));
            }
        }
        ensure!(
            bad.is_empty(),
            "output {k}: {} of {} elements differ: {}{}",
            bad.len(),
            w.numel(),
            bad[..bad.len().min(40)].join(", "),
            if bad.len() > 40 { ", ..." } else { "" }
        );
    }
    Ok(worst)
}

/// Runs every case (all of them, then reports every failure) and prints the largest difference.
fn check_all(test: &str, cases: Vec<Case>) {
    let Some(gpu) = open_gpu(test) else { return };
    // Per op (a label's first word).
    let mut worst: std::collections::BTreeMap<&str, MaxDiff> = Default::default();
    let mut failures = Vec::new();
    for case in &cases {
        match check(&gpu, case) {
            Ok(d) => worst.entry(case.label.split(' ').next().unwrap_or("")).or_default().add(d),
            Err(e) => failures.push(format!("{}: {e}", case.label)),
        }
    }
    println!("{test}: {} cases, {} failed", cases.len(), failures.len());
    for (op, d) in &worst {
        println!("  {op}: largest |GPU - CPU| {:.3e}, largest |GPU - CPU| / (1 + |CPU|) {:.3e}", d.abs, d.scaled);
    }
    assert!(
        failures.is_empty(),
        "{test}: {} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

fn dims(shape: &[usize]) -> String {
    format!("{shape:?}")
}

// ---------------------------------------------------------------------------------------------
// Elementwise

/// Ragged shapes for elementwise ops: a scalar, one element, odd rows, more than one 256-wide
/// workgroup.
const SHAPES: &[&[usize]] = &[&[], &[1], &[3, 17], &[2, 3, 65], &[5, 257]];

#[test]
fn unary() {
    // (op, opset, attributes, input range)
    let ops: Vec<(&'static str, i64, Vec<AttributeProto>, f32, f32)> = vec![
        ("Relu", 17, vec![], -5.0, 5.0),
        ("Sigmoid", 17, vec![], -30.0, 30.0),
        ("Tanh", 17, vec![], -60.0, 60.0),
        ("Erf", 17, vec![], -4.0, 4.0),
        ("Exp", 17, vec![], -20.0, 20.0),
        ("Log", 17, vec![], 1e-3, 100.0),
        ("Sqrt", 17, vec![], 0.0, 100.0),
        ("Neg", 17, vec![], -5.0, 5.0),
        ("Reciprocal", 17, vec![], -5.0, 5.0),
        ("Abs", 17, vec![], -5.0, 5.0),
        ("Gelu", 20, vec![], -8.0, 8.0),
        ("Gelu", 20, vec![attr_str("approximate", "none")], -8.0, 8.0),
        ("Gelu", 20, vec![attr_str("approximate", "tanh")], -8.0, 8.0),
        ("Sin", 17, vec![], -10.0, 10.0),
        ("Cos", 17, vec![], -10.0, 10.0),
        ("Floor", 17, vec![], -10.0, 10.0),
        ("Ceil", 17, vec![], -10.0, 10.0),
    ];
    let mut cases = Vec::new();
    for (o, (op, opset, attrs, lo, hi)) in ops.into_iter().enumerate() {
        let approx =
            attrs.first().map(|a| format!(" approximate={}", String::from_utf8_lossy(&a.s))).unwrap_or_default();
        for (s, shape) in SHAPES.iter().enumerate() {
            let x = f32_in(shape, (o * 10 + s) as u32, lo, hi);
            cases.push(
                Case::with_node(format!("{op}{approx} {}", dims(shape)), op, vec![("x", F32, x)], &[], attrs.clone())
                    .opset(opset),
            );
        }
    }
    // Tanh far out where exp overflows, and exact zeros and signs.
    let edge = vec![-1e4f32, -100.0, -45.0, -21.0, -20.5, -0.0, 0.0, 1e-6, 20.5, 21.0, 45.0, 100.0, 1e4];
    cases.push(Case::new("Tanh [13] edge values", "Tanh", vec![("x", F32, Tensor::from_vec(&[13], edge.clone()))]));
    cases.push(Case::new("Sigmoid [13] edge values", "Sigmoid", vec![("x", F32, Tensor::from_vec(&[13], edge))]));
    check_all("unary", cases);
}

#[test]
fn binary() {
    let pairs: &[(&[usize], &[usize])] = &[
        (&[3, 1, 17], &[5, 1]),
        (&[5, 1], &[3, 1, 17]),
        (&[3, 17], &[3, 17]),
        (&[2, 3, 65], &[65]),
        (&[1], &[33]),
        (&[257], &[]),
    ];
    let mut cases = Vec::new();
    for (o, op) in ["Add", "Sub", "Mul", "Div", "Max", "Min", "Pow"].into_iter().enumerate() {
        for (s, (a, b)) in pairs.iter().enumerate() {
            let seed = (o * 20 + s * 2) as u32;
            // Pow here: positive bases, any real exponent.
            let (lo, hi) = if op == "Pow" { (0.1, 3.0) } else { (-3.0, 3.0) };
            let x = f32_in(a, seed, lo, hi);
            let y = f32_in(b, seed + 1, -3.0, 3.0);
            cases.push(Case::new(format!("{op} {} {}", dims(a), dims(b)), op, vec![("a", F32, x), ("b", F32, y)]));
        }
    }
    // Pow: negative bases with integer exponents (odd, even, negative, zero).
    let base = f32_in(&[3, 1, 17], 7, -3.0, 3.0);
    let ints = Tensor::from_vec(&[5, 1], vec![-3.0f32, -2.0, 0.0, 3.0, 4.0]);
    cases.push(Case::new(
        "Pow [3,1,17] negative bases, integer exponents [5,1]",
        "Pow",
        vec![("a", F32, base.clone()), ("b", F32, ints)],
    ));
    // Pow by 2 and by 0.5 (a square root, NaN for negative bases on both devices), as scalars.
    for (label, e) in [("2", 2.0f32), ("0.5", 0.5), ("1", 1.0), ("-1", -1.0), ("1.5", 1.5)] {
        cases.push(Case::new(
            format!("Pow [3,1,17] mixed signs ^ {label} (shape [])"),
            "Pow",
            vec![("a", F32, base.clone()), ("b", F32, Tensor::from_vec(&[], vec![e]))],
        ));
        cases.push(Case::new(
            format!("Pow [33] mixed signs ^ {label} (shape [1])"),
            "Pow",
            vec![("a", F32, f32_in(&[33], 9, -3.0, 3.0)), ("b", F32, Tensor::from_vec(&[1], vec![e]))],
        ));
    }
    // Pow at small integer and half bases against every kind of exponent, and at zero bases against
    // exponents >= 0. Infinite and NaN operands are left out: WGSL lets an implementation assume
    // none occur (lavapipe's pow does not propagate NaN), so no kernel could promise powf there.
    let bases = vec![1.0f32, -1.0, 0.5, -0.5, 2.0, -2.0, 3.0, -3.0];
    let exps = vec![-3.0f32, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0, 2.5, -2.5, 4.0];
    cases.push(Case::new(
        "Pow [8,1] bases +-1, +-0.5, +-2, +-3 [12] exponents",
        "Pow",
        vec![("a", F32, Tensor::from_vec(&[8, 1], bases)), ("b", F32, Tensor::from_vec(&[12], exps))],
    ));
    cases.push(Case::new(
        "Pow [2,1] bases 0, -0 [6] exponents >= 0",
        "Pow",
        vec![
            ("a", F32, Tensor::from_vec(&[2, 1], vec![0.0f32, -0.0])),
            ("b", F32, Tensor::from_vec(&[6], vec![0.0f32, 0.5, 1.0, 2.0, 3.0, 2.5])),
        ],
    ));
    // One value as both operands (bound twice in one dispatch).
    for op in ["Add", "Mul", "Sub"] {
        let mut c = Case::new(format!("{op} x x, x [3,17]"), op, vec![("x", F32, f32_in(&[3, 17], 12, -3.0, 3.0))]);
        c.nodes[0].input = vec!["x".into(), "x".into()];
        cases.push(c);
    }
    check_all("binary", cases);
}

#[test]
fn where_bool_condition() {
    let bools = |shape: &[usize], seed: u32| {
        let v: Vec<bool> = values(numel(shape), seed, 0.0, 1.0).iter().map(|&u| u > 0.5).collect();
        Tensor::from_bools(shape, &v)
    };
    let shapes: &[(&[usize], &[usize], &[usize])] = &[
        (&[1, 17], &[3, 17], &[3, 1]),
        (&[3, 1, 17], &[5, 1], &[]),
        (&[33], &[33], &[33]),
        (&[2, 3, 65], &[1, 3, 1], &[65]),
    ];
    let mut cases: Vec<Case> = shapes
        .iter()
        .enumerate()
        .map(|(s, (c, x, y))| {
            Case::new(
                format!("Where cond {} x {} y {}", dims(c), dims(x), dims(y)),
                "Where",
                vec![
                    ("c", BOOL, bools(c, s as u32)),
                    ("x", F32, f32_in(x, 10 + s as u32, -3.0, 3.0)),
                    ("y", F32, f32_in(y, 20 + s as u32, -3.0, 3.0)),
                ],
            )
        })
        .collect();
    // A constant condition (a bool weight, one byte per element, uploaded at load).
    let mut cond = onnx_protobuf::TensorProto::new();
    cond.name = "c".into();
    cond.data_type = BOOL;
    cond.dims = vec![17];
    cond.raw_data = (0..17u8).map(|i| u8::from(i % 3 == 1)).collect();
    cases.push(
        Case::with_node(
            "Where weight cond [17] x [3,17] y [3,1]",
            "Where",
            vec![("x", F32, f32_in(&[3, 17], 30, -3.0, 3.0)), ("y", F32, f32_in(&[3, 1], 31, -3.0, 3.0))],
            &[],
            vec![],
        )
        .inits(vec![cond]),
    );
    cases.last_mut().unwrap().nodes[0].input = vec!["c".into(), "x".into(), "y".into()];
    check_all("where", cases);
}

#[test]
fn cast() {
    let to_f32 = || vec![attr_int("to", i64::from(F32))];
    let mut cases = Vec::new();
    for shape in [&[1usize][..], &[3, 17], &[2, 3, 65]] {
        let b: Vec<bool> = values(numel(shape), 3, 0.0, 1.0).iter().map(|&u| u > 0.4).collect();
        cases.push(Case::with_node(
            format!("Cast bool->f32 {}", dims(shape)),
            "Cast",
            vec![("x", BOOL, Tensor::from_bools(shape, &b))],
            &[],
            to_f32(),
        ));
        let mut ints: Vec<i32> = values(numel(shape), 4, -1e5, 1e5).iter().map(|&v| v as i32).collect();
        if ints.len() > 3 {
            ints[..4].copy_from_slice(&[i32::MIN, i32::MAX, -1, 16_777_217]);
        }
        cases.push(Case::with_node(
            format!("Cast int32->f32 {}", dims(shape)),
            "Cast",
            vec![("x", I32, Tensor::from_vec(shape, ints))],
            &[],
            to_f32(),
        ));
    }
    // int64 has no GPU cast: it stays on CPU, and says so.
    let longs: Vec<i64> = values(51, 5, -1e9, 1e9).iter().map(|&v| v as i64).collect();
    let mut c = Case::with_node(
        "Cast int64->f32 [3,17]",
        "Cast",
        vec![("x", I64, Tensor::from_vec(&[3, 17], longs))],
        &[],
        to_f32(),
    );
    c.gpu_ops = vec![];
    c.cpu_ops = vec!["Cast"];
    cases.push(c);
    check_all("cast", cases);
}

// ---------------------------------------------------------------------------------------------
// Products

#[test]
fn matmul() {
    let shapes: &[(&[usize], &[usize])] = &[
        (&[17, 33], &[33, 5]),
        (&[2, 1, 7, 9], &[3, 9, 4]),
        (&[3, 9, 4], &[2, 1, 4, 7]),
        (&[9], &[9, 4]),
        (&[3, 5, 9], &[9]),
        (&[9], &[9]),
        (&[1, 65], &[65, 257]),
        (&[1, 1], &[1, 1]),
        (&[19, 18], &[18, 21]),
        (&[3, 0], &[0, 5]),
    ];
    let mut cases: Vec<Case> = shapes
        .iter()
        .enumerate()
        .map(|(s, (a, b))| {
            Case::new(
                format!("MatMul {} x {}", dims(a), dims(b)),
                "MatMul",
                vec![
                    ("a", F32, f32_in(a, 2 * s as u32, -1.0, 1.0)),
                    ("b", F32, f32_in(b, 2 * s as u32 + 1, -1.0, 1.0)),
                ],
            )
        })
        .collect();
    // A weight operand (uploaded once at load).
    let w = values(33 * 5, 50, -1.0, 1.0);
    cases.push(
        Case::with_node(
            "MatMul [17,33] x weight [33,5]",
            "MatMul",
            vec![("a", F32, f32_in(&[17, 33], 51, -1.0, 1.0))],
            &["w"],
            vec![],
        )
        .inits(vec![f32_tensor("w", &[33, 5], &w)]),
    );
    // The compiler stores a constant B transposed and multiplies by it with kiln::MatMulTransB.
    cases.last_mut().unwrap().gpu_ops = vec!["MatMulTransB"];
    // MatMul(A, Transpose(B)) becomes kiln::MatMulTransB, which reads B with swapped strides.
    for (a, bt, perm) in [(&[17usize, 33][..], &[5usize, 33][..], &[1i64, 0][..]), (&[2, 7, 9], &[2, 5, 9], &[0, 2, 1])]
    {
        let mut c = Case::new(
            format!("MatMul {} x Transpose({}) (MatMulTransB)", dims(a), dims(bt)),
            "MatMul",
            vec![("a", F32, f32_in(a, 60, -1.0, 1.0)), ("bt", F32, f32_in(bt, 61, -1.0, 1.0))],
        );
        c.nodes = vec![
            with_attrs(node("Transpose", &["bt"], &["b"]), vec![attr_ints("perm", perm)]),
            node("MatMul", &["a", "b"], &["out"]),
        ];
        c.gpu_ops = vec!["MatMulTransB"];
        cases.push(c);
    }
    // A weight as A (not pretransposed: only B is).
    let wa = values(5 * 17, 52, -1.0, 1.0);
    cases.push(
        Case::with_node(
            "MatMul weight [5,17] x [17,3]",
            "MatMul",
            vec![("b", F32, f32_in(&[17, 3], 53, -1.0, 1.0))],
            &["wa"],
            vec![],
        )
        .inits(vec![f32_tensor("wa", &[5, 17], &wa)]),
    );
    // wa must come first.
    let last = cases.last_mut().unwrap();
    last.nodes[0].input = vec!["wa".into(), "b".into()];
    check_all("matmul", cases);
}

#[test]
fn gemm() {
    let (m, k, n) = (7usize, 33usize, 17usize);
    let mut cases = Vec::new();
    let mut seed = 0;
    for (ta, tb) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
        for c_shape in [None, Some(vec![n]), Some(vec![m, 1]), Some(vec![1, 1]), Some(vec![m, n]), Some(vec![])] {
            for (alpha, beta) in [(1.0f32, 1.0f32), (0.5, -2.0)] {
                seed += 3;
                let a_shape = if ta == 1 { [k, m] } else { [m, k] };
                let b_shape = if tb == 1 { [n, k] } else { [k, n] };
                let mut inputs = vec![
                    ("a", F32, f32_in(&a_shape, seed, -1.0, 1.0)),
                    ("b", F32, f32_in(&b_shape, seed + 1, -1.0, 1.0)),
                ];
                if let Some(cs) = &c_shape {
                    inputs.push(("c", F32, f32_in(cs, seed + 2, -1.0, 1.0)));
                }
                let label = format!(
                    "Gemm transA={ta} transB={tb} alpha={alpha} beta={beta} A {} B {} C {}",
                    dims(&a_shape),
                    dims(&b_shape),
                    c_shape.as_ref().map_or("absent".into(), |c| dims(c))
                );
                let attrs = vec![
                    attr_int("transA", ta),
                    attr_int("transB", tb),
                    attr_float("alpha", alpha),
                    attr_float("beta", beta),
                ];
                cases.push(Case::with_node(label, "Gemm", inputs, &[], attrs));
            }
        }
    }
    // Gemm with weight operands and bias, as exporters write linear layers (transB = 1).
    let w = values(n * k, 90, -1.0, 1.0);
    let bias = values(n, 91, -1.0, 1.0);
    cases.push(
        Case::with_node(
            "Gemm transB=1 A [7,33] weight B [17,33] weight C [17]",
            "Gemm",
            vec![("a", F32, f32_in(&[m, k], 92, -1.0, 1.0))],
            &["w", "bias"],
            vec![attr_int("transB", 1)],
        )
        .inits(vec![f32_tensor("w", &[n as i64, k as i64], &w), f32_tensor("bias", &[n as i64], &bias)]),
    );
    // A 1 x K row, the decode shape.
    cases.push(Case::with_node(
        "Gemm A [1,65] B [65,257] C absent",
        "Gemm",
        vec![("a", F32, f32_in(&[1, 65], 93, -1.0, 1.0)), ("b", F32, f32_in(&[65, 257], 94, -1.0, 1.0))],
        &[],
        vec![],
    ));
    check_all("gemm", cases);
}

// ---------------------------------------------------------------------------------------------
// Data movement

#[test]
fn transpose() {
    let cases: &[(&[usize], Option<&[i64]>)] = &[
        (&[2, 3, 17], Some(&[2, 0, 1])),
        (&[2, 3, 17], Some(&[1, 2, 0])),
        (&[3, 5, 17], None),
        (&[17, 33], None),
        (&[2, 3, 5, 7], Some(&[0, 2, 3, 1])),
        // Unit axes, with data moving (one that only moved unit axes would compile to a Reshape).
        (&[2, 65, 1], Some(&[2, 1, 0])),
    ];
    let cases = cases
        .iter()
        .enumerate()
        .map(|(s, (shape, perm))| {
            let attrs = perm.map(|p| vec![attr_ints("perm", p)]).unwrap_or_default();
            let label =
                format!("Transpose {} perm {}", dims(shape), perm.map_or("default".into(), |p| format!("{p:?}")));
            Case::with_node(label, "Transpose", vec![("x", F32, f32_in(shape, s as u32, -3.0, 3.0))], &[], attrs)
        })
        .collect();
    check_all("transpose", cases);
}

#[test]
fn slice() {
    // (input shape, starts, ends, axes, steps): opset 17 reads them from int64 initializers.
    type SliceCase = (&'static [usize], &'static [i64], &'static [i64], Option<&'static [i64]>, Option<&'static [i64]>);
    let cases: &[SliceCase] = &[
        (&[5, 17, 9], &[1, -14], &[4, -1], Some(&[0, 1]), Some(&[1, 2])),
        (&[5, 17, 9], &[-1], &[i64::MIN], Some(&[2]), Some(&[-1])),
        (&[5, 17, 9], &[-2, 15], &[-100, 0], Some(&[0, 1]), Some(&[-1, -2])),
        (&[5, 17, 9], &[2], &[9], Some(&[-1]), Some(&[3])),
        (&[5, 17, 9], &[0, 2], &[3, 10], None, None),
        (&[33], &[-17], &[i64::MAX], None, None),
        (&[3, 65], &[-1, 64], &[-2, 63], Some(&[0, 1]), Some(&[-1, -1])),
    ];
    let cases = cases
        .iter()
        .enumerate()
        .map(|(s, (shape, starts, ends, axes, steps))| {
            let label = format!("Slice {} starts {starts:?} ends {ends:?} axes {axes:?} steps {steps:?}", dims(shape));
            let n = starts.len() as i64;
            let mut inits = vec![int64_tensor("starts", &[n], starts), int64_tensor("ends", &[n], ends)];
            let mut extra = vec!["starts", "ends"];
            if let Some(a) = axes {
                inits.push(int64_tensor("axes", &[n], a));
                extra.push("axes");
            }
            if let Some(st) = steps {
                if axes.is_none() {
                    extra.push("");
                }
                inits.push(int64_tensor("steps", &[n], st));
                extra.push("steps");
            }
            Case::with_node(label, "Slice", vec![("x", F32, f32_in(shape, s as u32, -3.0, 3.0))], &extra, vec![])
                .inits(inits)
        })
        .collect();
    check_all("slice", cases);
}

#[test]
fn expand() {
    let cases: &[(&[usize], &[i64])] = &[
        (&[3, 1], &[2, 3, 5]),
        (&[1], &[17]),
        (&[3, 1, 17], &[2, 1, 5, 1]),
        (&[1, 65], &[3, 1]),
        (&[2, 1, 1, 7], &[2, 3, 5, 7]),
    ];
    let cases = cases
        .iter()
        .enumerate()
        .map(|(s, (shape, to))| {
            Case::with_node(
                format!("Expand {} to {to:?}", dims(shape)),
                "Expand",
                vec![("x", F32, f32_in(shape, s as u32, -3.0, 3.0))],
                &["shape"],
                vec![],
            )
            .inits(vec![int64_tensor("shape", &[to.len() as i64], to)])
        })
        .collect();
    check_all("expand", cases);
}

#[test]
fn concat() {
    let cases: &[(i64, &[&[usize]])] = &[
        (1, &[&[2, 3, 4], &[2, 0, 4], &[2, 5, 4]]),
        (1, &[&[2, 0, 4], &[2, 3, 4], &[2, 1, 4]]),
        (0, &[&[1, 17], &[3, 17], &[2, 17]]),
        (-1, &[&[3, 5, 1], &[3, 5, 16], &[3, 5, 17]]),
        (2, &[&[2, 3, 33], &[2, 3, 1]]),
    ];
    let names = ["a", "b", "c"];
    let mut cases: Vec<Case> = cases
        .iter()
        .enumerate()
        .map(|(s, (axis, shapes))| {
            let label =
                format!("Concat axis {axis} of {}", shapes.iter().map(|s| dims(s)).collect::<Vec<_>>().join(", "));
            let inputs = shapes
                .iter()
                .enumerate()
                .map(|(k, sh)| (names[k], F32, f32_in(sh, (10 * s + k) as u32, -3.0, 3.0)))
                .collect();
            Case::with_node(label, "Concat", inputs, &[], vec![attr_int("axis", *axis)])
        })
        .collect();
    // A weight piece between two inputs.
    let w = values(2 * 17, 40, -3.0, 3.0);
    cases.push(
        Case::with_node(
            "Concat axis 0 of [1,17], weight [2,17], [3,17]",
            "Concat",
            vec![("a", F32, f32_in(&[1, 17], 41, -3.0, 3.0)), ("c", F32, f32_in(&[3, 17], 42, -3.0, 3.0))],
            &[],
            vec![attr_int("axis", 0)],
        )
        .inits(vec![f32_tensor("w", &[2, 17], &w)]),
    );
    cases.last_mut().unwrap().nodes[0].input = vec!["a".into(), "w".into(), "c".into()];
    check_all("concat", cases);
}

#[test]
fn split() {
    let mut cases = Vec::new();
    // (input shape, axis, sizes given as an int64 input or equal parts, outputs)
    type SplitCase = (&'static [usize], i64, Option<&'static [i64]>, usize);
    let specs: &[SplitCase] = &[
        (&[3, 5, 7], 1, Some(&[2, 3]), 2),
        (&[3, 5, 7], -1, Some(&[1, 4, 2]), 3),
        (&[17, 3], 0, Some(&[16, 1]), 2),
        (&[2, 3, 6], -1, None, 3),
        (&[33, 2], 0, Some(&[0, 33]), 2),
    ];
    for (s, (shape, axis, sizes, parts)) in specs.iter().enumerate() {
        let outs: Vec<String> = (0..*parts).map(|k| format!("y{k}")).collect();
        let out_refs: Vec<&str> = outs.iter().map(String::as_str).collect();
        let inputs: Vec<&str> = if sizes.is_some() { vec!["x", "split"] } else { vec!["x"] };
        let mut c = Case::new(
            format!("Split {} axis {axis} sizes {sizes:?} into {parts}", dims(shape)),
            "Split",
            vec![("x", F32, f32_in(shape, s as u32, -3.0, 3.0))],
        );
        c.nodes = vec![with_attrs(node("Split", &inputs, &out_refs), vec![attr_int("axis", *axis)])];
        c.outputs = outs;
        if let Some(sz) = sizes {
            c.inits = vec![int64_tensor("split", &[sz.len() as i64], sz)];
        }
        cases.push(c);
    }
    check_all("split", cases);
}

#[test]
fn gather() {
    let mut cases = Vec::new();
    // (data shape, axis, index shape, indices): negative ones count from the end.
    type GatherCase = (&'static [usize], i64, &'static [usize], &'static [i64]);
    let specs: &[GatherCase] = &[
        (&[5, 17], 0, &[5], &[-1, 0, 3, -5, 2]),
        (&[5, 17], 1, &[2, 2], &[-1, 16, 0, -17]),
        (&[3, 7, 4], 1, &[3], &[-2, 1, 6]),
        (&[3, 7, 4], -1, &[1], &[-4]),
        (&[33, 9], 0, &[], &[-33]),
        (&[257, 3], 0, &[2, 3], &[256, -1, 0, 100, -257, 17]),
    ];
    for (s, (shape, axis, ishape, idx)) in specs.iter().enumerate() {
        let label = format!("Gather {} axis {axis} indices {} {idx:?}", dims(shape), dims(ishape));
        let data = ("x", F32, f32_in(shape, s as u32, -3.0, 3.0));
        let attrs = vec![attr_int("axis", *axis)];
        // Indices as an input (uploaded per run) and as an initializer (uploaded at load).
        cases.push(Case::with_node(
            format!("{label} (input)"),
            "Gather",
            vec![data.clone(), ("i", I64, Tensor::from_vec(ishape, idx.to_vec()))],
            &[],
            attrs.clone(),
        ));
        let ishape: Vec<i64> = ishape.iter().map(|&d| d as i64).collect();
        cases.push(
            Case::with_node(format!("{label} (initializer)"), "Gather", vec![data], &["i"], attrs)
                .inits(vec![int64_tensor("i", &ishape, idx)]),
        );
    }
    // int32 indices.
    cases.push(Case::with_node(
        "Gather [5,17] axis 1 int32 indices [4] [-1, 0, 16, -17]",
        "Gather",
        vec![("x", F32, f32_in(&[5, 17], 40, -3.0, 3.0)), ("i", I32, Tensor::from_vec(&[4], vec![-1i32, 0, 16, -17]))],
        &[],
        vec![attr_int("axis", 1)],
    ));
    // An embedding lookup: a weight table, the ids an input.
    let table = values(33 * 9, 45, -1.0, 1.0);
    let mut c = Case::with_node(
        "Gather weight [33,9] axis 0 ids [2,3] (embedding lookup)",
        "Gather",
        vec![("ids", I64, Tensor::from_vec(&[2, 3], vec![0i64, 32, 5, -1, 17, 1]))],
        &[],
        vec![],
    )
    .inits(vec![f32_tensor("table", &[33, 9], &table)]);
    c.nodes[0].input = vec!["table".into(), "ids".into()];
    cases.push(c);
    check_all("gather", cases);
}

// ---------------------------------------------------------------------------------------------
// Normalisations

#[test]
fn softmax() {
    // (op, opset, axis attribute, input shape)
    let specs: &[(&'static str, i64, Option<i64>, &[usize])] = &[
        ("Softmax", 17, Some(-1), &[2, 3, 17]),
        ("Softmax", 17, Some(1), &[2, 3, 17]),
        ("Softmax", 17, Some(0), &[2, 3, 17]),
        ("Softmax", 17, None, &[3, 513]),
        ("Softmax", 17, Some(-1), &[1, 1]),
        ("LogSoftmax", 17, Some(-1), &[2, 3, 17]),
        ("LogSoftmax", 17, Some(1), &[2, 3, 17]),
        ("LogSoftmax", 17, None, &[3, 257]),
        ("Softmax", 11, Some(1), &[2, 3, 17]),
        ("Softmax", 11, None, &[2, 3, 17]),
        ("Softmax", 11, Some(0), &[2, 3, 17]),
        ("Softmax", 11, Some(-1), &[2, 3, 17]),
        ("LogSoftmax", 11, Some(1), &[2, 3, 17]),
        ("Softmax", 17, Some(1), &[2, 300, 3]),
        ("Softmax", 11, Some(1), &[2, 3, 100]),
    ];
    let mut cases: Vec<Case> = specs
        .iter()
        .enumerate()
        .map(|(s, (op, opset, axis, shape))| {
            let attrs = axis.map(|a| vec![attr_int("axis", a)]).unwrap_or_default();
            let label = format!(
                "{op} opset {opset} axis {} on {}",
                axis.map_or("default".into(), |a| a.to_string()),
                dims(shape)
            );
            // A wide range: the row maximum must be subtracted for exp not to overflow.
            Case::with_node(label, op, vec![("x", F32, f32_in(shape, s as u32, -40.0, 40.0))], &[], attrs).opset(*opset)
        })
        .collect();
    // Attention masks as exporters write them: f32::MIN (torch.finfo(float32).min) at masked
    // positions, and a fully masked row, which must come out uniform, not NaN.
    for op in ["Softmax", "LogSoftmax"] {
        for len in [17usize, 300] {
            let mut x = values(3 * len, 300, -5.0, 5.0);
            for (i, v) in x.iter_mut().enumerate() {
                if i / len == 1 || (i % len) % 3 == 0 {
                    *v = f32::MIN;
                }
            }
            cases.push(Case::new(
                format!("{op} [3,{len}] masked with f32::MIN, row 1 fully"),
                op,
                vec![("x", F32, Tensor::from_vec(&[3, len], x))],
            ));
        }
    }
    check_all("softmax", cases);
}

#[test]
fn layer_normalization() {
    // (input shape, axis, with bias, epsilon)
    let specs: &[(&[usize], i64, bool, Option<f32>)] = &[
        (&[3, 257], -1, true, None),
        (&[3, 257], -1, false, None),
        (&[3, 257], 1, true, Some(1e-3)),
        (&[2, 3, 17], 1, true, None),
        (&[2, 3, 17], -1, false, Some(0.1)),
        (&[1, 600], -1, true, None),
        (&[3, 257], 0, true, None),
    ];
    let cases = specs
        .iter()
        .enumerate()
        .map(|(s, (shape, axis, bias, eps))| {
            let a = if *axis < 0 { shape.len() as i64 + axis } else { *axis } as usize;
            let norm: Vec<i64> = shape[a..].iter().map(|&d| d as i64).collect();
            let len = numel(&shape[a..]);
            let mut inits = vec![f32_tensor("scale", &norm, &values(len, 100 + s as u32, 0.5, 1.5))];
            let mut extra = vec!["scale"];
            if *bias {
                inits.push(f32_tensor("bias", &norm, &values(len, 200 + s as u32, -1.0, 1.0)));
                extra.push("bias");
            }
            let mut attrs = vec![attr_int("axis", *axis)];
            if let Some(e) = eps {
                attrs.push(attr_float("epsilon", *e));
            }
            let label = format!(
                "LayerNormalization {} axis {axis} {} epsilon {}",
                dims(shape),
                if *bias { "with bias" } else { "without bias" },
                eps.map_or("default".into(), |e| e.to_string())
            );
            // An offset mean, so the variance is not just the mean square.
            Case::with_node(
                label,
                "LayerNormalization",
                vec![("x", F32, f32_in(shape, s as u32, -1.0, 5.0))],
                &extra,
                attrs,
            )
            .inits(inits)
        })
        .collect();
    check_all("layer_normalization", cases);
}

// ---------------------------------------------------------------------------------------------
// Reductions

#[test]
fn reductions() {
    let shape: &[usize] = &[3, 17, 5];
    let mut cases = Vec::new();
    let mut seed = 0;
    for op in ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"] {
        for opset in [17, 18] {
            // ReduceSum takes its axes as an input since opset 13, the others since 18.
            let axes_input = op == "ReduceSum" || opset >= 18;
            for axes in [&[1i64][..], &[0, 2], &[-1], &[0, 1, 2]] {
                for keepdims in [0, 1] {
                    seed += 1;
                    let label = format!("{op} opset {opset} axes {axes:?} keepdims {keepdims} on {}", dims(shape));
                    let x = ("x", F32, f32_in(shape, seed, -3.0, 3.0));
                    let mut attrs = vec![attr_int("keepdims", keepdims)];
                    let c = if axes_input {
                        Case::with_node(label, op, vec![x], &["axes"], attrs).inits(vec![int64_tensor(
                            "axes",
                            &[axes.len() as i64],
                            axes,
                        )])
                    } else {
                        attrs.push(attr_ints("axes", axes));
                        Case::with_node(label, op, vec![x], &[], attrs)
                    };
                    cases.push(c.opset(opset));
                }
            }
            // No axes at all: every axis.
            seed += 1;
            cases.push(
                Case::new(
                    format!("{op} opset {opset} no axes on {}", dims(shape)),
                    op,
                    vec![("x", F32, f32_in(shape, seed, -3.0, 3.0))],
                )
                .opset(opset),
            );
        }
    }
    // A long reduction, past one workgroup's width.
    cases.push(
        Case::with_node(
            "ReduceSum opset 17 axes [1] keepdims 1 on [2,513]",
            "ReduceSum",
            vec![("x", F32, f32_in(&[2, 513], 77, -1.0, 1.0))],
            &["axes"],
            vec![],
        )
        .inits(vec![int64_tensor("axes", &[1], &[1])]),
    );
    // Every element f32::MIN or f32::MAX: the extremes are values, not just starting points.
    for (op, v) in [("ReduceMax", f32::MIN), ("ReduceMin", f32::MAX)] {
        cases.push(Case::with_node(
            format!("{op} opset 17 axes [1] of [3,17] all {v:e}"),
            op,
            vec![("x", F32, Tensor::from_vec(&[3, 17], vec![v; 51]))],
            &[],
            vec![attr_ints("axes", &[1])],
        ));
    }
    // Reducing an empty axis.
    for op in ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"] {
        cases.push(
            Case::with_node(
                format!("{op} opset 18 axes [1] of [3,0,5]"),
                op,
                vec![("x", F32, Tensor::from_vec(&[3, 0, 5], Vec::<f32>::new()))],
                &["axes"],
                vec![],
            )
            .inits(vec![int64_tensor("axes", &[1], &[1])])
            .opset(18),
        );
    }
    check_all("reductions", cases);
}

// ---------------------------------------------------------------------------------------------
// Launch grids past one side's 65535 workgroups

#[test]
fn large_grids() {
    // More than 65535 x 256 elements: the 1-D launch spreads over a second grid side.
    let n = 65_535 * 256 + 17;
    let cases = vec![
        Case::new(format!("Relu [{n}]"), "Relu", vec![("x", F32, f32_in(&[n], 1, -1.0, 1.0))]),
        // More than 65535 rows of one workgroup each.
        Case::new("Softmax [65537,3]", "Softmax", vec![("x", F32, f32_in(&[65_537, 3], 3, -5.0, 5.0))]),
        Case::with_node(
            "LayerNormalization [65537,3]",
            "LayerNormalization",
            vec![("x", F32, f32_in(&[65_537, 3], 4, -5.0, 5.0))],
            &["scale"],
            vec![],
        )
        .inits(vec![f32_tensor("scale", &[3], &[0.5, 1.0, 2.0])]),
    ];
    check_all("large_grids", cases);
}

// ---------------------------------------------------------------------------------------------
// Short chains: values passed between GPU steps, through views, and across devices

/// A case of several nodes; `inputs` are graph inputs, `outputs` the graph outputs.
fn chain(
    label: &str,
    nodes: Vec<NodeProto>,
    inputs: Vec<(&str, i32, Tensor)>,
    inits: Vec<TensorProto>,
    outputs: &[&str],
    gpu_ops: Vec<&'static str>,
) -> Case {
    Case {
        label: label.into(),
        opset: 17,
        nodes,
        inputs: inputs.into_iter().map(|(n, e, t)| (n.to_string(), e, t)).collect(),
        inits,
        outputs: outputs.iter().map(|o| o.to_string()).collect(),
        gpu_ops,
        cpu_ops: vec![],
    }
}

#[test]
fn chains() {
    let mut cases = Vec::new();
    // A GPU result read through a view (Reshape) by the next GPU step; an intermediate that is
    // also an output.
    cases.push(chain(
        "Relu -> Reshape -> Sigmoid, Relu's result also an output",
        vec![node("Relu", &["x"], &["r"]), node("Reshape", &["r", "shape"], &["v"]), node("Sigmoid", &["v"], &["out"])],
        vec![("x", F32, f32_in(&[3, 17], 1, -3.0, 3.0))],
        vec![int64_tensor("shape", &[2], &[17, 3])],
        &["out", "r"],
        vec!["Relu", "Sigmoid"],
    ));
    // Scaled dot-product attention with a mask, the way exporters write it.
    let mask: Vec<f32> = (0..5 * 7).map(|i| if i % 7 > i / 7 + 2 { f32::MIN } else { 0.0 }).collect();
    cases.push(chain(
        "attention: MatMul(q, Transpose(k)) * scale + mask -> Softmax -> MatMul v",
        vec![
            with_attrs(node("Transpose", &["k"], &["kt"]), vec![attr_ints("perm", &[0, 2, 1])]),
            node("MatMul", &["q", "kt"], &["s"]),
            node("Mul", &["s", "scale"], &["ss"]),
            node("Add", &["ss", "mask"], &["sm"]),
            with_attrs(node("Softmax", &["sm"], &["p"]), vec![attr_int("axis", -1)]),
            node("MatMul", &["p", "v"], &["out"]),
        ],
        vec![
            ("q", F32, f32_in(&[2, 5, 9], 2, -1.0, 1.0)),
            ("k", F32, f32_in(&[2, 7, 9], 3, -1.0, 1.0)),
            ("v", F32, f32_in(&[2, 7, 9], 4, -1.0, 1.0)),
        ],
        vec![f32_tensor("scale", &[], &[1.0 / 3.0]), f32_tensor("mask", &[5, 7], &mask)],
        &["out"],
        vec!["MatMulTransB", "Mul", "Add", "Softmax", "MatMul"],
    ));
    // A layer norm spelled out: reductions feeding broadcast arithmetic. `sd` is an output too,
    // so the variance part stays these ops rather than becoming an RMSNormalization of `d`.
    cases.push(chain(
        "ReduceMean -> Sub -> Pow 2 -> ReduceMean -> Add eps -> Sqrt -> Div",
        vec![
            with_attrs(node("ReduceMean", &["x"], &["mean"]), vec![attr_ints("axes", &[-1])]),
            node("Sub", &["x", "mean"], &["d"]),
            node("Pow", &["d", "two"], &["d2"]),
            with_attrs(node("ReduceMean", &["d2"], &["var"]), vec![attr_ints("axes", &[-1])]),
            node("Add", &["var", "eps"], &["ve"]),
            node("Sqrt", &["ve"], &["sd"]),
            node("Div", &["d", "sd"], &["out"]),
        ],
        vec![("x", F32, f32_in(&[3, 5, 33], 5, -2.0, 4.0))],
        vec![f32_tensor("two", &[], &[2.0]), f32_tensor("eps", &[], &[1e-5])],
        &["out", "sd"],
        vec!["ReduceMean", "Sub", "Pow", "Add", "Sqrt", "Div"],
    ));
    // An RMS norm spelled out, as Llama exports write it: compiled to one RMSNormalization.
    cases.push(chain(
        "Mul x x -> ReduceMean -> Add eps -> Sqrt -> Reciprocal -> Mul x -> Mul w (RMSNormalization)",
        vec![
            node("Mul", &["x", "x"], &["sq"]),
            with_attrs(node("ReduceMean", &["sq"], &["ms"]), vec![attr_ints("axes", &[-1])]),
            node("Add", &["ms", "eps"], &["ve"]),
            node("Sqrt", &["ve"], &["rms"]),
            node("Reciprocal", &["rms"], &["inv"]),
            node("Mul", &["x", "inv"], &["normed"]),
            node("Mul", &["normed", "w"], &["out"]),
        ],
        vec![("x", F32, f32_in(&[3, 5, 33], 6, -2.0, 4.0))],
        vec![f32_tensor("eps", &[], &[1e-5]), f32_tensor("w", &[33], &values(33, 7, -1.0, 1.0))],
        &["out"],
        vec!["RMSNormalization"],
    ));
    // Across devices and back: the int64 Cast runs on CPU between GPU steps.
    let mut c = chain(
        "Relu -> Cast int64 -> Cast f32 -> Add (CPU steps between GPU steps)",
        vec![
            node("Relu", &["x"], &["r"]),
            with_attrs(node("Cast", &["r"], &["ri"]), vec![attr_int("to", i64::from(I64))]),
            with_attrs(node("Cast", &["ri"], &["rf"]), vec![attr_int("to", i64::from(F32))]),
            node("Add", &["rf", "x"], &["out"]),
        ],
        vec![("x", F32, f32_in(&[3, 17], 6, -30.0, 30.0))],
        vec![],
        &["out"],
        vec!["Relu", "Add"],
    );
    c.cpu_ops = vec!["Cast"];
    cases.push(c);
    // Split pieces consumed by different GPU ops, then concatenated again.
    cases.push(chain(
        "Split -> Exp, Neg -> Concat",
        vec![
            with_attrs(node("Split", &["x", "sizes"], &["a", "b"]), vec![attr_int("axis", 1)]),
            node("Exp", &["a"], &["ea"]),
            node("Neg", &["b"], &["nb"]),
            with_attrs(node("Concat", &["nb", "ea"], &["out"]), vec![attr_int("axis", 1)]),
        ],
        vec![("x", F32, f32_in(&[3, 17, 5], 7, -3.0, 3.0))],
        vec![int64_tensor("sizes", &[2], &[5, 12])],
        &["out"],
        vec!["Split", "Exp", "Neg", "Concat"],
    ));
    check_all("chains", cases);
}

// ---------------------------------------------------------------------------------------------
// One device, many threads

/// Sessions of one device on several threads at once: each read-back waits for its own map
/// callback, which another thread's poll of the device may be the one to run (this failed now
/// and then before `GpuMemory::download` waited for it).
#[test]
fn one_device_many_threads() {
    let Some(gpu) = open_gpu("one_device_many_threads") else { return };
    let case = Case::new("Relu [3,17]", "Relu", vec![("x", F32, f32_in(&[3, 17], 1, -1.0, 1.0))]);
    let c = compile(&case, gpu.target_limits()).unwrap();
    let want = run(&c, None, &case).unwrap();
    let model = Model::new_on_gpu(c.program.clone(), &c.weights, gpu.clone()).unwrap();
    let x = TensorRef::from_tensor(&case.inputs[0].2);
    std::thread::scope(|s| {
        for t in 0..8 {
            let (model, want) = (model.clone(), &want);
            s.spawn(move || {
                let mut session = Session::new(model);
                for run in 0..200 {
                    match session.run(&[x]) {
                        Ok(got) => assert_eq!(got[0].bytes(), want[0].bytes(), "thread {t}, run {run}: wrong result"),
                        Err(e) => panic!("thread {t}, run {run}: {e}"),
                    }
                }
            });
        }
    });
}

//! The compiler's fusions on a Llama-style block fragment: RMS normalisations (weighted via
//! Reciprocal, unweighted via Pow and Div), a rotary embedding of a head tensor, a gated SiLU and
//! a scaled, masked softmax become one step each on CPU, compute what the ops they replace compute, and stay separate ops
//! for a GPU target, which has no kernels for the CPU-only fusions.

mod common;
use common::{f32_tensor, int64_tensor, model, node, save, value_info};
use kiln_compiler::{compile_file, CompileOptions};
use kiln_formats::target::TargetLimits;
use kiln_formats::Tensor;
use kiln_runtime::{Model, Session, TensorRef};
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::{AttributeProto, NodeProto};

const S: usize = 5;
const D: usize = 8;
const HEADS: usize = 2;
const HD: usize = D / HEADS;
const EPS: f32 = 1e-5;
const SCALE: f32 = 0.7;

fn with_attr(mut n: NodeProto, name: &str, ty: AttributeType, i: i64, ints: &[i64]) -> NodeProto {
    let mut a = AttributeProto::new();
    a.name = name.into();
    a.type_ = ty.into();
    a.i = i;
    a.ints = ints.to_vec();
    n.attribute.push(a);
    n
}

fn values(n: usize, seed: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|i| (((i + seed) * 37 % 101) as f32 - 50.0) * scale).collect()
}

/// x [1, s, D] → a = rms(x)·w, b = rms(x) (Pow/Div); q = rotary(heads of a); y = silu(a)·b.
fn block(dir: &std::path::Path) -> std::path::PathBuf {
    let mean =
        |input: &str, out: &str| with_attr(node("ReduceMean", &[input], &[out]), "axes", AttributeType::INTS, 0, &[-1]);
    let nodes = vec![
        node("Mul", &["x", "x"], &["sq"]),
        mean("sq", "ms"),
        node("Add", &["ms", "eps"], &["ms_eps"]),
        node("Sqrt", &["ms_eps"], &["root"]),
        node("Reciprocal", &["root"], &["inv"]),
        node("Mul", &["x", "inv"], &["normed"]),
        node("Mul", &["w", "normed"], &["a"]),
        node("Pow", &["x", "two"], &["sq2"]),
        mean("sq2", "ms2"),
        node("Add", &["eps", "ms2"], &["ms2_eps"]),
        node("Sqrt", &["ms2_eps"], &["root2"]),
        node("Div", &["x", "root2"], &["b"]),
        node("Reshape", &["a", "heads_shape"], &["a_heads"]),
        with_attr(node("Transpose", &["a_heads"], &["q"]), "perm", AttributeType::INTS, 0, &[0, 2, 1, 3]),
        node("Slice", &["q", "zero", "half", "last"], &["q1"]),
        node("Slice", &["q", "half", "big", "last"], &["q2"]),
        node("Neg", &["q2"], &["q2n"]),
        with_attr(node("Concat", &["q2n", "q1"], &["rot"]), "axis", AttributeType::INT, -1, &[]),
        node("Mul", &["q", "cos"], &["qc"]),
        node("Mul", &["rot", "sin"], &["rs"]),
        node("Add", &["qc", "rs"], &["q_rot"]),
        node("Sigmoid", &["a"], &["sig"]),
        node("Mul", &["a", "sig"], &["silu"]),
        node("Mul", &["silu", "b"], &["y"]),
        node("Mul", &["q_rot", "scale"], &["scaled"]),
        node("Add", &["scaled", "mask"], &["masked"]),
        node("Softmax", &["masked"], &["p"]),
    ];
    let m = model(
        nodes,
        vec![
            value_info("x", 1, &["1", "s", &D.to_string()]),
            value_info("cos", 1, &["1", "1", "s", &HD.to_string()]),
            value_info("sin", 1, &["1", "1", "s", &HD.to_string()]),
            value_info("mask", 1, &["1", "1", "s", &HD.to_string()]),
        ],
        vec![
            value_info("q_rot", 1, &["1", &HEADS.to_string(), "s", &HD.to_string()]),
            value_info("y", 1, &["1", "s", &D.to_string()]),
            value_info("p", 1, &["1", &HEADS.to_string(), "s", &HD.to_string()]),
        ],
        vec![
            f32_tensor("eps", &[], &[EPS]),
            f32_tensor("two", &[], &[2.0]),
            f32_tensor("scale", &[], &[SCALE]),
            f32_tensor("w", &[D as i64], &values(D, 3, 0.05)),
            int64_tensor("heads_shape", &[4], &[1, -1, HEADS as i64, HD as i64]),
            int64_tensor("zero", &[1], &[0]),
            int64_tensor("half", &[1], &[HD as i64 / 2]),
            int64_tensor("big", &[1], &[i64::MAX]),
            int64_tensor("last", &[1], &[-1]),
        ],
    );
    let path = dir.join("model.onnx");
    save(&m, &path);
    path
}

fn options(target: TargetLimits) -> CompileOptions {
    let mut o = CompileOptions { target, ..Default::default() };
    o.dim_bounds.insert("s".into(), 64);
    o
}

/// The block computed in f64 from its definition: (q_rot, y).
fn reference(x: &[f32], w: &[f32], cos: &[f32], sin: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let rms = |row: &[f32]| {
        let ms = row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / D as f64;
        1.0 / (ms + EPS as f64).sqrt()
    };
    let (mut a, mut b) = (vec![0f64; S * D], vec![0f64; S * D]);
    for s in 0..S {
        let row = &x[s * D..(s + 1) * D];
        let r = rms(row);
        for j in 0..D {
            b[s * D + j] = row[j] as f64 * r;
            a[s * D + j] = b[s * D + j] * w[j] as f64;
        }
    }
    let mut q = vec![0f64; HEADS * S * HD];
    let h = HD / 2;
    for head in 0..HEADS {
        for s in 0..S {
            for j in 0..HD {
                let at = |k: usize| a[s * D + head * HD + k];
                let rot = if j < h { -at(j + h) } else { at(j - h) };
                q[(head * S + s) * HD + j] = at(j) * cos[s * HD + j] as f64 + rot * sin[s * HD + j] as f64;
            }
        }
    }
    let y = a.iter().zip(&b).map(|(&v, &u)| v / (1.0 + (-v).exp()) * u).collect();
    (q, y)
}

fn close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g as f64 - w).abs() <= 1e-5 + 1e-5 * w.abs(), "{what}[{i}]: {g} vs {w}");
    }
}

#[test]
fn a_block_fuses_to_one_step_per_pattern_and_computes_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let path = block(dir.path());
    let compiled = compile_file(&path, &options(TargetLimits::cpu())).unwrap();
    let ops = &compiled.ops_after;
    assert_eq!(ops.get("RMSNormalization"), Some(&2), "{ops:?}");
    assert_eq!(ops.get("kiln::RotateHalf"), Some(&1), "{ops:?}");
    assert_eq!(ops.get("kiln::Silu"), Some(&1), "{ops:?}");
    assert_eq!(ops.get("kiln::ScaledSoftmax"), Some(&1), "{ops:?}");
    for gone in
        ["Sqrt", "Reciprocal", "Div", "Pow", "ReduceMean", "Neg", "Slice", "Concat", "Sigmoid", "Mul", "Add", "Softmax"]
    {
        assert!(!ops.contains_key(gone), "{gone} is left: {ops:?}");
    }

    let x = values(S * D, 0, 0.03);
    let w = values(D, 3, 0.05);
    // Halves of cos/sin differ: the fusion must not assume the usual duplicated frequencies.
    let cos: Vec<f32> = (0..S * HD).map(|i| (i as f32 * 0.37).cos()).collect();
    let sin: Vec<f32> = (0..S * HD).map(|i| (i as f32 * 0.23).sin()).collect();
    let model = Model::new(compiled.program.clone(), &compiled.weights).unwrap();
    // A causal-style mask: -inf above a diagonal, small offsets elsewhere.
    let mask: Vec<f32> =
        (0..S * HD).map(|i| if i % HD > i / HD + 1 { f32::NEG_INFINITY } else { 0.01 * i as f32 }).collect();
    let tensors = [
        Tensor::from_vec(&[1, S, D], x.clone()),
        Tensor::from_vec(&[1, 1, S, HD], cos.clone()),
        Tensor::from_vec(&[1, 1, S, HD], sin.clone()),
        Tensor::from_vec(&[1, 1, S, HD], mask.clone()),
    ];
    let inputs: Vec<TensorRef> = tensors.iter().map(TensorRef::from_tensor).collect();
    let out = Session::new(model).run(&inputs).unwrap();
    let (q, y) = reference(&x, &w, &cos, &sin);
    close(out[0].as_slice::<f32>().unwrap(), &q, "q_rot");
    close(out[1].as_slice::<f32>().unwrap(), &y, "y");
    let mut p = vec![0f64; q.len()];
    for (r, (qr, pr)) in q.chunks(HD).zip(p.chunks_mut(HD)).enumerate() {
        let s = r % S;
        let u: Vec<f64> = qr.iter().enumerate().map(|(j, v)| v * SCALE as f64 + mask[s * HD + j] as f64).collect();
        let m = u.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = u.iter().map(|v| (v - m).exp()).sum();
        for (o, v) in pr.iter_mut().zip(&u) {
            *o = (v - m).exp() / sum;
        }
    }
    close(out[2].as_slice::<f32>().unwrap(), &p, "p");
}

#[test]
fn a_gpu_program_keeps_the_ops_only_the_cpu_fuses() {
    let dir = tempfile::tempdir().unwrap();
    let path = block(dir.path());
    let compiled = compile_file(&path, &options(TargetLimits::gpu_default())).unwrap();
    let ops = &compiled.ops_after;
    assert_eq!(ops.get("RMSNormalization"), Some(&2), "the GPU has RMSNormalization: {ops:?}");
    assert!(!ops.keys().any(|k| k.starts_with("kiln::RotateHalf") || k.starts_with("kiln::Silu")), "{ops:?}");
    assert_eq!(ops.get("Sigmoid"), Some(&1), "{ops:?}");
    assert_eq!(ops.get("Softmax"), Some(&1), "{ops:?}");
}

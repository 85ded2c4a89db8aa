//! Linear layers as exporters write them (`Gemm` with `transB` and a bias, as torch does for
//! `nn.Linear` on 2-D input; `Gemm` without it, as for GPT-2's `Conv1D`; `MatMul` + `Add`) reach
//! the CPU's stored-weight products with their biases (and the residual connection after the
//! last) inside, in f32 (packed) and in every `--weights` format, and compute the layers. The last layer's depth (40) is not a multiple of the
//! formats' block of 32, so it stays f32, packed. Before, a transposed f32 weight, and an f32
//! weight left in a quantized bundle, were read through the general product, and every bias and the
//! residual were separate `Add`s.

mod common;
use common::{f32_tensor, model, node, save, value_info};
use kiln_compiler::passes::quantize::WeightFormat;
use kiln_compiler::{compile_file, CompileOptions};
use kiln_formats::target::TargetLimits;
use kiln_formats::Tensor;
use kiln_runtime::{Model, Session, TensorRef};
use onnx_protobuf::attribute_proto::AttributeType;
use onnx_protobuf::AttributeProto;

const D_IN: usize = 64;
const HIDDEN: usize = 96;
const D_OUT: usize = 40;

fn values(n: usize, seed: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|i| (((i + seed) * 37 % 101) as f32 - 50.0) * scale).collect()
}

/// The weights: w1 stored `HIDDEN × D_IN` (read transposed), w2 `HIDDEN × D_OUT`, w3 `D_OUT × D_OUT`.
struct Weights {
    w1: Vec<f32>,
    b1: Vec<f32>,
    w2: Vec<f32>,
    b2: Vec<f32>,
    w3: Vec<f32>,
    b3: Vec<f32>,
}

fn weights() -> Weights {
    Weights {
        w1: values(HIDDEN * D_IN, 1, 0.004),
        b1: values(HIDDEN, 2, 0.01),
        w2: values(HIDDEN * D_OUT, 3, 0.003),
        b2: values(D_OUT, 4, 0.02),
        w3: values(D_OUT * D_OUT, 5, 0.005),
        b3: values(D_OUT, 6, 0.03),
    }
}

/// z = relu(x · w1ᵀ + b1) · w2 + b2, y = z · w3 + b3 + z: three linears written three ways and
/// a residual connection.
fn mlp(dir: &std::path::Path, w: &Weights) -> std::path::PathBuf {
    let mut trans_b = AttributeProto::new();
    trans_b.name = "transB".into();
    trans_b.type_ = AttributeType::INT.into();
    trans_b.i = 1;
    let mut fc1 = node("Gemm", &["x", "w1", "b1"], &["h"]);
    fc1.attribute.push(trans_b);
    let nodes = vec![
        fc1,
        node("Relu", &["h"], &["r"]),
        node("Gemm", &["r", "w2", "b2"], &["z"]),
        node("MatMul", &["z", "w3"], &["p"]),
        node("Add", &["b3", "p"], &["q"]),
        node("Add", &["q", "z"], &["y"]),
    ];
    let m = model(
        nodes,
        vec![value_info("x", 1, &["m", &D_IN.to_string()])],
        vec![value_info("y", 1, &["m", &D_OUT.to_string()])],
        vec![
            f32_tensor("w1", &[HIDDEN as i64, D_IN as i64], &w.w1),
            f32_tensor("b1", &[HIDDEN as i64], &w.b1),
            f32_tensor("w2", &[HIDDEN as i64, D_OUT as i64], &w.w2),
            f32_tensor("b2", &[D_OUT as i64], &w.b2),
            f32_tensor("w3", &[D_OUT as i64, D_OUT as i64], &w.w3),
            f32_tensor("b3", &[D_OUT as i64], &w.b3),
        ],
    );
    let path = dir.join("mlp.onnx");
    save(&m, &path);
    path
}

fn reference(x: &[f32], w: &Weights) -> Vec<f64> {
    let rows = x.len() / D_IN;
    let mut y = Vec::with_capacity(rows * D_OUT);
    for xr in x.chunks(D_IN) {
        let h: Vec<f64> = (0..HIDDEN)
            .map(|j| {
                let s: f64 = (0..D_IN).map(|t| xr[t] as f64 * w.w1[j * D_IN + t] as f64).sum();
                (s + w.b1[j] as f64).max(0.0)
            })
            .collect();
        let z: Vec<f64> = (0..D_OUT)
            .map(|j| (0..HIDDEN).map(|t| h[t] * w.w2[t * D_OUT + j] as f64).sum::<f64>() + w.b2[j] as f64)
            .collect();
        y.extend(
            (0..D_OUT)
                .map(|j| (0..D_OUT).map(|t| z[t] * w.w3[t * D_OUT + j] as f64).sum::<f64>() + w.b3[j] as f64 + z[j]),
        );
    }
    y
}

#[test]
fn linears_take_their_biases_into_the_products_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let w = weights();
    let path = mlp(dir.path(), &w);
    let formats = [
        (WeightFormat::F32, "kiln::MatMulPacked", 1e-5),
        (WeightFormat::F16, "kiln::MatMulF16", 2e-3),
        (WeightFormat::BF16, "kiln::MatMulBF16", 2e-2),
        (WeightFormat::Q8, "kiln::MatMulQ8", 2e-2),
        (WeightFormat::Q4, "kiln::MatMulQ4", 1e-1),
    ];
    for (format, product, tolerance) in formats {
        let mut opts = CompileOptions { target: TargetLimits::cpu(), weights: format, ..Default::default() };
        opts.dim_bounds.insert("m".into(), 16);
        let compiled = compile_file(&path, &opts).unwrap();
        let ops = &compiled.ops_after;
        let products: usize = ops.iter().filter(|(op, _)| op.starts_with("kiln::MatMul")).map(|(_, n)| n).sum();
        assert_eq!(products, 3, "{format:?}: {ops:?}");
        let in_format = if format == WeightFormat::F32 { 3 } else { 2 };
        assert_eq!(ops.get(product), Some(&in_format), "{format:?}: {ops:?}");
        for gone in ["Gemm", "Add", "MatMul", "kiln::MatMulTransB"] {
            assert!(!ops.contains_key(gone), "{format:?}: a {gone} is left: {ops:?}");
        }
        let model = Model::new(compiled.program.clone(), &compiled.weights).unwrap();
        let mut session = Session::new(model);
        // Decode's one row, a few (the dot-product paths), many (the blocked products).
        for rows in [1, 3, 16] {
            let x = values(rows * D_IN, rows, 0.02);
            let tensor = Tensor::from_vec(&[rows, D_IN], x.clone());
            let out = session.run(&[TensorRef::from_tensor(&tensor)]).unwrap();
            let got = out[0].as_slice::<f32>().unwrap();
            let want = reference(&x, &w);
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            for (i, (&g, &e)) in got.iter().zip(&want).enumerate() {
                let ok = (g as f64 - e).abs() <= tolerance * (1.0 + scale);
                assert!(ok, "{format:?} rows {rows} [{i}]: {g} vs {e}");
            }
        }
    }
}

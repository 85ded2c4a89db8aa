//! `--weights q8|q4|f16|bf16`: the weights products read as `kiln::MatMulTransB(A, W)` (W a 2-D
//! f32 constant of `n` rows of `k`, `k` a multiple of 32) are stored in blocks of 32 (int8 with a
//! scale, or 4-bit with a scale and a minimum) and read by `kiln::MatMulQ8` / `MatMulQ4`: under a
//! third or a fifth of the bytes per decoded token; or as 16-bit floats (f16 or bf16, rounded to
//! nearest) read by `kiln::MatMulF16` / `MatMulBF16`: half the bytes, and far closer to f32.
//! Embedding tables read by `Gather`, norms, biases and products over activations stay f32.

use crate::ir::{Graph, Value};
use kiln_formats::bytes::ByteOwner;
use kiln_formats::{AlignedBuf, DType, Dim, SharedBytes};
use kiln_runtime::ops::matmul::quantized::{BlockFormat, BLOCK};
use kiln_runtime::ops::KILN_DOMAIN;
use std::sync::{Arc, OnceLock};

/// Weights a compile stores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightFormat {
    #[default]
    F32,
    /// int8 in blocks of 32, one half-float scale per block (llama.cpp's Q8_0).
    Q8,
    /// 4-bit in blocks of 32, one half-float scale and one half-float minimum per block (llama.cpp's
    /// Q4_1).
    Q4,
    /// IEEE half floats (11 significant bits, magnitudes up to 65504), the output head too.
    F16,
    /// bfloat16 (f32's range, 8 significant bits), the output head too.
    BF16,
}

impl WeightFormat {
    /// How the products' weights are stored, for the compile notes.
    pub fn describe(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::Q8 => "q8",
            WeightFormat::Q4 => "q4 (q8 for those making an output: the head)",
            WeightFormat::F16 => "f16",
            WeightFormat::BF16 => "bf16",
        }
    }
}

/// A weight quantized on first read (planning never reads weights).
struct Quantized<F> {
    src: SharedBytes,
    k: usize,
    copy: OnceLock<AlignedBuf>,
    format: std::marker::PhantomData<F>,
}

impl<F: BlockFormat> ByteOwner for Quantized<F> {
    fn bytes(&self) -> &[u8] {
        self.copy
            .get_or_init(|| {
                let rows: &[f32] = bytemuck::cast_slice(self.src.as_slice());
                let rb = F::row_bytes(self.k);
                let mut out = AlignedBuf::zeroed(rows.len() / self.k * rb);
                for (src, dst) in rows.chunks_exact(self.k).zip(out.as_mut_slice().chunks_exact_mut(rb)) {
                    F::quantize_row(src, dst);
                }
                out
            })
            .as_slice()
    }
}

/// Quantizes every eligible weight into format `F`; returns (quantized, f32 products left as
/// they are).
pub fn quantize<F: BlockFormat>(g: &mut Graph) -> (usize, usize) {
    quantize_where::<F>(g, &|_, _| true)
}

/// `--weights q4`: products that make a graph output (the output head, whose errors land
/// straight in the logits) take q8, the others q4. Returns (quantized, products left in f32).
pub fn q4_with_q8_head(g: &mut Graph) -> (usize, usize) {
    use kiln_runtime::ops::matmul::{q4::Q4, q8::Q8};
    let (head, _) = quantize_where::<Q8>(g, &|g, n| n.outputs.iter().any(|o| g.outputs.contains(o)));
    let (rest, kept) = quantize_where::<Q4>(g, &|_, _| true);
    (head + rest, kept)
}

fn quantize_where<F: BlockFormat>(g: &mut Graph, pick: &dyn Fn(&Graph, &crate::ir::Node) -> bool) -> (usize, usize) {
    let (mut done, mut kept) = (0, 0);
    for i in 0..g.nodes.len() {
        let n = &g.nodes[i];
        if n.domain != KILN_DOMAIN || n.op != "MatMulTransB" || n.attrs.iter().any(|a| a.name == "b_pitch") {
            continue;
        }
        if !pick(g, n) {
            continue;
        }
        let (Some(Some(a)), Some(Some(w))) = (n.inputs.first().copied(), n.inputs.get(1).copied()) else { continue };
        let wv = &g.values[w];
        let Some(bytes) = wv.constant.clone() else { continue };
        let shape = wv.known_shape();
        let eligible = match (&shape, wv.dtype, g.values[a].dtype) {
            (Some(s), Some(DType::F32), Some(DType::F32)) => {
                s.len() == 2
                    && s[1] % BLOCK == 0
                    && s[1] > 0
                    && bytes.len() == s[0] * s[1] * 4
                    && bytemuck::try_cast_slice(bytes.as_slice()).is_ok_and(F::fits)
            }
            _ => false,
        };
        if !eligible {
            kept += 1;
            continue;
        }
        let (rows, k) = (shape.as_ref().map_or(0, |s| s[0]), shape.as_ref().map_or(0, |s| s[1]));
        let len = rows * F::row_bytes(k);
        let owner = Quantized::<F> { src: bytes, k, copy: OnceLock::new(), format: std::marker::PhantomData };
        let id = g.add_value(Value {
            name: format!("{}.{}", wv.name, F::NAME),
            dtype: Some(DType::U8),
            shape: Some(vec![Dim::Known(rows as i64), Dim::Known(F::row_bytes(k) as i64)]),
            constant: Some(SharedBytes::lazy(Arc::new(owner), len)),
            sym_value: None,
        });
        let n = &mut g.nodes[i];
        n.op = F::OP.into();
        n.opset = F::VERSION;
        n.inputs[1] = Some(id);
        n.attrs = vec![kiln_formats::program::Attribute::int("k", k as i64)];
        done += 1;
    }
    (done, kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Node;

    use kiln_runtime::ops::matmul::{half16::BF16, half16::F16, q4::Q4, q8::Q8};

    #[test]
    fn transposed_f32_weights_become_q8_and_others_stay() {
        quantizes_the_eligible_weight::<Q8>();
    }

    #[test]
    fn transposed_f32_weights_become_q4_and_others_stay() {
        quantizes_the_eligible_weight::<Q4>();
    }

    #[test]
    fn transposed_f32_weights_become_f16_and_others_stay() {
        quantizes_the_eligible_weight::<F16>();
    }

    #[test]
    fn transposed_f32_weights_become_bf16_and_others_stay() {
        quantizes_the_eligible_weight::<BF16>();
    }

    fn quantizes_the_eligible_weight<F: BlockFormat>() {
        let f32v = |name: &str, dims: &[i64], constant: Option<SharedBytes>| Value {
            name: name.into(),
            dtype: Some(DType::F32),
            shape: Some(dims.iter().map(|&d| Dim::Known(d)).collect()),
            constant,
            sym_value: None,
        };
        let w: Vec<f32> = (0..3 * 64).map(|i| i as f32 * 0.01).collect();
        let odd: Vec<f32> = vec![1.0; 3 * 20];
        let mut g = Graph {
            values: vec![
                f32v("a", &[1, 64], None),
                f32v("w", &[3, 64], Some(SharedBytes::copy_from(bytemuck::cast_slice(&w)))),
                f32v("y", &[1, 3], None),
                f32v("b", &[1, 20], None),
                f32v("odd", &[3, 20], Some(SharedBytes::copy_from(bytemuck::cast_slice(&odd)))),
                f32v("z", &[1, 3], None),
            ],
            ..Default::default()
        };
        let product = |a, w, y| Node {
            name: "p".into(),
            op: "MatMulTransB".into(),
            domain: KILN_DOMAIN.into(),
            opset: 1,
            attrs: vec![],
            inputs: vec![Some(a), Some(w)],
            outputs: vec![y],
        };
        g.nodes = vec![product(0, 1, 2), product(3, 4, 5)];
        assert_eq!(quantize::<F>(&mut g), (1, 1), "k = 20 is not a whole number of blocks");
        let n = &g.nodes[0];
        assert_eq!((n.op.as_str(), n.opset), (F::OP, F::VERSION));
        let q = &g.values[n.inputs[1].unwrap()];
        assert_eq!(q.known_shape(), Some(vec![3, F::row_bytes(64)]));
        assert_eq!(q.constant.as_ref().unwrap().as_slice().len(), 3 * F::row_bytes(64));
        assert_eq!(g.nodes[1].op, "MatMulTransB");
    }

    /// q8's and q4's block parameters are half floats: a weight they cannot hold (here one value
    /// past their range, or a NaN) stays f32 rather than being stored wrong.
    #[test]
    fn weights_beyond_the_block_parameters_stay_f32() {
        for bad in [1.0e7_f32, f32::NAN, f32::INFINITY] {
            assert_eq!(quantize_with::<Q8>(bad), (1, 1), "q8 with {bad}");
            assert_eq!(quantize_with::<Q4>(bad), (1, 1), "q4 with {bad}");
        }
        assert_eq!(quantize_with::<Q8>(1.0e5), (2, 0), "q8 holds 1e5 (scale 787)");
        assert_eq!(quantize_with::<Q4>(1.0e5), (1, 1), "q4's minimum cannot hold -1e5");
    }

    /// f16 turns a weight past 65504 into infinity: such a product stays f32, as one holding a
    /// non-finite weight does in every format; bf16 holds f32's range.
    #[test]
    fn weights_beyond_f16_stay_f32() {
        for bad in [1.0e5_f32, f32::NAN, f32::INFINITY] {
            assert_eq!(quantize_with::<F16>(bad), (1, 1), "f16 with {bad}");
            assert_eq!(quantize_with::<BF16>(bad), if bad.is_finite() { (2, 0) } else { (1, 1) }, "bf16 with {bad}");
        }
        assert_eq!(quantize_with::<F16>(65504.0), (2, 0), "f16's largest");
    }

    /// Two products of k = 64, the second's weights holding `-value` once.
    fn quantize_with<F: BlockFormat>(value: f32) -> (usize, usize) {
        let weight = |name: &str, w: &[f32]| Value {
            name: name.into(),
            dtype: Some(DType::F32),
            shape: Some(vec![Dim::Known(2), Dim::Known(64)]),
            constant: Some(SharedBytes::copy_from(bytemuck::cast_slice(w))),
            sym_value: None,
        };
        let act = |name: &str, n: i64| Value {
            name: name.into(),
            dtype: Some(DType::F32),
            shape: Some(vec![Dim::Known(1), Dim::Known(n)]),
            constant: None,
            sym_value: None,
        };
        let good: Vec<f32> = (0..128).map(|i| i as f32 * 0.01).collect();
        let mut bad = good.clone();
        bad[77] = -value;
        let mut g = Graph {
            values: vec![act("a", 64), weight("w", &good), weight("v", &bad), act("y", 2), act("z", 2)],
            ..Default::default()
        };
        let product = |w, y| Node {
            name: "p".into(),
            op: "MatMulTransB".into(),
            domain: KILN_DOMAIN.into(),
            opset: 1,
            attrs: vec![],
            inputs: vec![Some(0), Some(w)],
            outputs: vec![y],
        };
        g.nodes = vec![product(1, 3), product(2, 4)];
        quantize::<F>(&mut g)
    }
}

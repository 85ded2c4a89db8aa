//! `MatMul(A, Transpose(B))`, where the transpose swaps B's last two axes, becomes
//! `kiln::MatMulTransB(A, B)`, which reads B in place with swapped strides. Exporters emit this
//! for output heads tied to the token embedding (one table, used by Gather and by the head) and
//! for attention scores (`Q · Kᵀ` over the whole KV cache); left alone, every forward pass would
//! copy the table, or the cache, just to transpose it.

use crate::ir::{Graph, Node, Value, ValueId};
use kiln_formats::bytes::ByteOwner;
use kiln_formats::{AlignedBuf, DType, Dim, SharedBytes};
use kiln_runtime::ops::matmul::packed;
use kiln_runtime::ops::KILN_DOMAIN;
use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

/// A 2-D constant stored transposed, made on first read (planning never reads weights).
struct Transposed {
    src: SharedBytes,
    rows: usize,
    cols: usize,
    elem: usize,
    copy: OnceLock<AlignedBuf>,
}

impl ByteOwner for Transposed {
    fn bytes(&self) -> &[u8] {
        self.copy
            .get_or_init(|| {
                let (r, c, e) = (self.rows, self.cols, self.elem);
                let mut out = AlignedBuf::zeroed(r * c * e);
                let (src, dst) = (self.src.as_slice(), out.as_mut_slice());
                // Tiles keep both sides' cache lines hot.
                const T: usize = 32;
                for i0 in (0..r).step_by(T) {
                    for j0 in (0..c).step_by(T) {
                        for i in i0..(i0 + T).min(r) {
                            for j in j0..(j0 + T).min(c) {
                                let (from, to) = ((i * c + j) * e, (j * r + i) * e);
                                dst[to..to + e].copy_from_slice(&src[from..from + e]);
                            }
                        }
                    }
                }
                out
            })
            .as_slice()
    }
}

/// A 2-D f32 constant `W` (`k × n`, or with `transposed` its `n × k` transpose) packed as
/// `kiln::MatMulPacked` reads it, made on first read.
struct Packed {
    src: SharedBytes,
    k: usize,
    n: usize,
    transposed: bool,
    copy: OnceLock<AlignedBuf>,
}

impl ByteOwner for Packed {
    fn bytes(&self) -> &[u8] {
        self.copy
            .get_or_init(|| {
                let (k, n) = (self.k, self.n);
                let mut out = AlignedBuf::zeroed(n.div_ceil(packed::PANEL) * k * packed::PANEL * 4);
                // ONNX constants need not be 4-aligned: such a weight is copied first.
                let stored: Cow<[f32]> = match bytemuck::try_cast_slice(self.src.as_slice()) {
                    Ok(w) => Cow::Borrowed(w),
                    Err(_) => Cow::Owned(bytemuck::pod_collect_to_vec(self.src.as_slice())),
                };
                let w = match self.transposed {
                    false => stored,
                    true => Cow::Owned((0..k * n).map(|i| stored[(i % n) * k + i / n]).collect()),
                };
                packed::pack(&w, k, n, bytemuck::cast_slice_mut(out.as_mut_slice()));
                out
            })
            .as_slice()
    }
}

/// (A, B) of a two-operand `MatMul` in the default domain.
fn matmul_operands(n: &Node) -> Option<(ValueId, ValueId)> {
    if n.op != "MatMul" || !matches!(n.domain.as_str(), "" | "ai.onnx") || n.inputs.len() != 2 {
        return None;
    }
    Some((n.inputs[0]?, n.inputs[1]?))
}

/// (A, Wᵀ) of a `kiln::MatMulTransB` over a matrix stored as is (not a KV cache read in place).
fn trans_b_operands(n: &Node) -> Option<(ValueId, ValueId)> {
    let plain = n.attrs.iter().all(|a| a.name != "b_pitch");
    if n.op != "MatMulTransB" || n.domain != KILN_DOMAIN || n.inputs.len() != 2 || !plain {
        return None;
    }
    Some((n.inputs[0]?, n.inputs[1]?))
}

/// Turns `n` into `kiln::MatMulTransB(a, b)`: `a · bᵀ` with `b` read in place.
fn into_trans_b(n: &mut Node, a: ValueId, b: ValueId) {
    n.op = "MatMulTransB".into();
    n.domain = KILN_DOMAIN.into();
    n.opset = 1;
    n.inputs = vec![Some(a), Some(b)];
}

/// `MatMul(A, W)` with a 2-D float constant `W` that nothing else reads becomes
/// `kiln::MatMulTransB(A, Wᵀ)` with `Wᵀ` stored in the bundle: one row of A times the weight is
/// then a dot product per output over contiguous memory, the layout decode (one token, every
/// weight read once) streams fastest. Returns how many weights were stored transposed.
pub fn pretranspose(g: &mut Graph) -> usize {
    pretranspose_or_pack(g, false)
}

/// [`pretranspose`], except that with `pack_f32` an f32 weight is stored instead in the
/// micro-kernel's column panels and read by `kiln::MatMulPacked` (attribute `n`, the weight's
/// columns): CPU plans of f32 weights, whose prefill then packs nothing. That includes a weight
/// a `kiln::MatMulTransB` reads (a `Gemm` with `transB`, or a `MatMul` of a `Transpose`) when
/// nothing else reads it: the tied head, which `Gather` reads too, keeps its one copy. Returns
/// how many weights were stored transposed or packed.
pub fn pretranspose_or_pack(g: &mut Graph, pack_f32: bool) -> usize {
    let mut readers = vec![0usize; g.values.len()];
    for n in &g.nodes {
        for v in n.inputs.iter().flatten() {
            readers[*v] += 1;
        }
    }
    for &o in &g.outputs {
        readers[o] += 1;
    }
    let mut done = 0;
    for i in 0..g.nodes.len() {
        let (a, w, transposed) = match (matmul_operands(&g.nodes[i]), trans_b_operands(&g.nodes[i])) {
            (Some((a, w)), _) => (a, w, false),
            (None, Some((a, wt))) if pack_f32 => (a, wt, true),
            _ => continue,
        };
        let wv = &g.values[w];
        let (Some(bytes), Some(dtype), Some(shape)) = (wv.constant.clone(), wv.dtype, wv.known_shape()) else {
            continue;
        };
        let a_rank = g.values[a].shape.as_ref().map_or(0, Vec::len);
        if readers[w] != 1 || shape.len() != 2 || !dtype.is_float() || a_rank < 2 {
            continue;
        }
        let (rows, cols) = (shape[0], shape[1]);
        if bytes.len() != rows * cols * dtype.size() {
            continue;
        }
        if pack_f32 && dtype == DType::F32 && g.values[a].dtype == Some(DType::F32) {
            let (k, n_cols) = if transposed { (cols, rows) } else { (rows, cols) };
            let panels = n_cols.div_ceil(packed::PANEL);
            let owner = Packed { src: bytes, k, n: n_cols, transposed, copy: OnceLock::new() };
            let id = g.values.len();
            g.values.push(Value {
                name: format!("{}.packed", wv.name),
                dtype: Some(dtype),
                shape: Some([panels, k, packed::PANEL].map(|d| Dim::Known(d as i64)).to_vec()),
                constant: Some(SharedBytes::lazy(Arc::new(owner), panels * k * packed::PANEL * 4)),
                sym_value: None,
            });
            let n = &mut g.nodes[i];
            n.op = packed::MATMUL_PACKED.into();
            n.domain = KILN_DOMAIN.into();
            n.opset = 1;
            n.inputs = vec![Some(a), Some(id)];
            n.attrs = vec![kiln_formats::program::Attribute::int("n", n_cols as i64)];
            done += 1;
            continue;
        }
        if transposed {
            continue;
        }
        let owner = Transposed { src: bytes, rows, cols, elem: dtype.size(), copy: OnceLock::new() };
        let id = g.values.len();
        g.values.push(Value {
            name: format!("{}.T", wv.name),
            dtype: Some(dtype),
            shape: Some(vec![Dim::Known(cols as i64), Dim::Known(rows as i64)]),
            constant: Some(SharedBytes::lazy(Arc::new(owner), rows * cols * dtype.size())),
            sym_value: None,
        });
        into_trans_b(&mut g.nodes[i], a, id);
        done += 1;
    }
    done
}

/// Rewrites every such MatMul; returns how many. Run after shape inference.
pub fn fuse(g: &mut Graph) -> usize {
    let mut producer: Vec<Option<usize>> = vec![None; g.values.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        for &o in &n.outputs {
            producer[o] = Some(i);
        }
    }
    let rank = |g: &Graph, v: ValueId| g.values[v].shape.as_ref().map(Vec::len);
    let mut fused = 0;
    for i in 0..g.nodes.len() {
        let Some((a, bt)) = matmul_operands(&g.nodes[i]) else { continue };
        let Some(t) = producer[bt].map(|p| &g.nodes[p]) else { continue };
        let Some(Some(w)) = t.inputs.first().copied() else { continue };
        let (Some(rw), Some(ra)) = (rank(g, w), rank(g, a)) else { continue };
        // The last two axes swapped, the rest in place (no perm: all reversed, the same for 2-D).
        let swapped: Vec<i64> =
            (0..rw as i64).map(|i| if i + 2 < rw as i64 { i } else { 2 * rw as i64 - 3 - i }).collect();
        let perm = t.attrs.iter().find(|a| a.name == "perm").map(|p| p.ints.clone());
        let swaps = perm.map_or(rw == 2, |p| p == swapped);
        if t.op != "Transpose" || !swaps || rw < 2 || ra < 2 {
            continue;
        }
        into_trans_b(&mut g.nodes[i], a, w);
        fused += 1;
    }
    fused
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_formats::DType;

    fn graph(w_rank: usize) -> Graph {
        let v = |name: &str, rank: usize| Value {
            name: name.into(),
            dtype: Some(DType::F32),
            shape: Some(vec![Dim::Known(4); rank]),
            ..Default::default()
        };
        let node = |op: &str, inputs: Vec<usize>, out: usize| Node {
            name: op.into(),
            op: op.into(),
            domain: String::new(),
            opset: 17,
            attrs: Vec::new(),
            inputs: inputs.into_iter().map(Some).collect(),
            outputs: vec![out],
        };
        Graph {
            values: vec![v("x", 3), v("w", w_rank), v("wt", w_rank), v("y", 3)],
            nodes: vec![node("Transpose", vec![1], 2), node("MatMul", vec![0, 2], 3)],
            inputs: vec![0],
            outputs: vec![3],
            ..Default::default()
        }
    }

    #[test]
    fn a_product_with_a_transposed_2d_weight_reads_it_in_place() {
        let mut g = graph(2);
        assert_eq!(fuse(&mut g), 1);
        let n = &g.nodes[1];
        assert_eq!((n.op.as_str(), n.domain.as_str()), ("MatMulTransB", KILN_DOMAIN));
        assert_eq!(n.inputs, vec![Some(0), Some(1)]);
        crate::passes::dce::eliminate(&mut g);
        assert_eq!(g.nodes.len(), 1, "the transpose is dead once its only reader is fused");
    }

    #[test]
    fn only_a_swap_of_the_last_two_axes_is_fused() {
        // No perm on a 3-D transpose reverses all axes: not a swap of the last two.
        let mut g = graph(3);
        assert_eq!(fuse(&mut g), 0);
        assert_eq!(g.nodes[1].op, "MatMul");
        let mut g = graph(3);
        g.nodes[0].attrs.push(kiln_formats::program::Attribute {
            name: "perm".into(),
            ints: vec![0, 2, 1],
            ..Default::default()
        });
        assert_eq!(fuse(&mut g), 1);
    }

    #[test]
    fn weights_read_only_by_a_product_are_stored_transposed() {
        let mut g = graph(2);
        // Make W a constant [2, 3] read only by the MatMul (no Transpose in between).
        let w: Vec<f32> = vec![1., 2., 3., 4., 5., 6.];
        g.values[1].shape = Some(vec![Dim::Known(2), Dim::Known(3)]);
        g.values[1].constant = Some(SharedBytes::copy_from(bytemuck::cast_slice(&w)));
        g.nodes.remove(0);
        g.nodes[0].inputs = vec![Some(0), Some(1)];
        assert_eq!(pretranspose(&mut g), 1);
        let n = &g.nodes[0];
        assert_eq!((n.op.as_str(), n.domain.as_str()), ("MatMulTransB", KILN_DOMAIN));
        let t = &g.values[n.inputs[1].unwrap()];
        assert_eq!(t.shape, Some(vec![Dim::Known(3), Dim::Known(2)]));
        let bytes = t.constant.as_ref().unwrap();
        let got: &[f32] = bytemuck::cast_slice(bytes.as_slice());
        assert_eq!(got, [1., 4., 2., 5., 3., 6.]);
    }

    #[test]
    fn f32_weights_for_the_cpu_are_stored_in_panels() {
        let mut g = graph(2);
        // W: k = 3 rows of n = 34 columns, so the second panel holds two columns and 30 zeros.
        let (k, n) = (3, 34);
        let w: Vec<f32> = (0..k * n).map(|i| i as f32).collect();
        g.values[1].shape = Some(vec![Dim::Known(k as i64), Dim::Known(n as i64)]);
        g.values[1].constant = Some(SharedBytes::copy_from(bytemuck::cast_slice(&w)));
        g.nodes.remove(0);
        g.nodes[0].inputs = vec![Some(0), Some(1)];
        assert_eq!(pretranspose_or_pack(&mut g, true), 1);
        assert_packed(&g, k, n, |kk, j| w[kk * n + j]);
    }

    /// The graph's one node reads W (`k × n`, `w(kk, j)`) from two panels, as `kiln::MatMulPacked`.
    fn assert_packed(g: &Graph, k: usize, n: usize, w: impl Fn(usize, usize) -> f32) {
        let node = &g.nodes[0];
        assert_eq!((node.op.as_str(), node.domain.as_str()), (packed::MATMUL_PACKED, KILN_DOMAIN));
        assert_eq!(node.attrs, vec![kiln_formats::program::Attribute::int("n", n as i64)]);
        let p = &g.values[node.inputs[1].unwrap()];
        assert_eq!(p.shape, Some(vec![Dim::Known(2), Dim::Known(k as i64), Dim::Known(32)]));
        let got: &[f32] = bytemuck::cast_slice(p.constant.as_ref().unwrap().as_slice());
        assert_eq!(got.len(), 2 * k * 32);
        for kk in 0..k {
            for j in 0..64 {
                let want = if j < n { w(kk, j) } else { 0.0 };
                assert_eq!(got[(j / 32) * k * 32 + kk * 32 + j % 32], want, "({kk}, {j})");
            }
        }
    }

    #[test]
    fn a_weight_read_transposed_is_packed_for_the_cpu_and_kept_otherwise() {
        // MatMulTransB(x, Wt) with Wt: n = 34 rows of k = 3 (a Gemm with transB).
        let (k, n) = (3, 34);
        let wt: Vec<f32> = (0..n * k).map(|i| i as f32).collect();
        let make = || {
            let mut g = graph(2);
            g.values[1].shape = Some(vec![Dim::Known(n as i64), Dim::Known(k as i64)]);
            g.values[1].constant = Some(SharedBytes::copy_from(bytemuck::cast_slice(&wt)));
            g.nodes.remove(0);
            into_trans_b(&mut g.nodes[0], 0, 1);
            g
        };
        let mut g = make();
        assert_eq!(pretranspose_or_pack(&mut g, false), 0, "quantized and GPU plans read it as it is");
        assert_eq!(g.nodes[0].op, "MatMulTransB");
        let mut g = make();
        assert_eq!(pretranspose_or_pack(&mut g, true), 1);
        assert_packed(&g, k, n, |kk, j| wt[j * k + kk]);
        // Read by something else too (the tied head's table, which Gather reads): kept.
        let mut g = make();
        g.outputs.push(1);
        assert_eq!(pretranspose_or_pack(&mut g, true), 0);
    }

    #[test]
    fn shared_weights_keep_their_layout() {
        let mut g = graph(2);
        g.values[1].constant = Some(SharedBytes::copy_from(&[0u8; 64]));
        g.nodes[0].inputs = vec![Some(1)];
        g.nodes[1].inputs = vec![Some(0), Some(1)]; // W read by the Transpose and the MatMul
        assert_eq!(pretranspose(&mut g), 0);
    }
}

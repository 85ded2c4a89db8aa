//! Products of one input by several constant weights become one product by the weights side by
//! side, then a `Split` of its columns: attention's q, k and v projections of the normed hidden
//! state, and a gated MLP's gate and up projections.
//!
//! At decode a product is a pass over its weight split across the threads and joined: three
//! small ones (SmolLM2's k and v weights are 576 × 192) pay the split, the join and the
//! quantization of their shared input three times, and each streams too little to reach the
//! memory's bandwidth. One product over the merged weight pays once; the `Split` copies a few
//! hundred numbers. CPU only: the GPU program keeps its products as they are.

use super::pattern;
use crate::ir::{Graph, Node, Value, ValueId};
use kiln_formats::bytes::ByteOwner;
use kiln_formats::program::Attribute;
use kiln_formats::{AlignedBuf, DType, Dim, SharedBytes};
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

/// Weights `[k, n_i]` side by side as one `[k, Σ n_i]`, made on first read (planning never reads
/// weights).
struct SideBySide {
    parts: Vec<(SharedBytes, usize)>,
    rows: usize,
    elem: usize,
    copy: OnceLock<AlignedBuf>,
}

impl ByteOwner for SideBySide {
    fn bytes(&self) -> &[u8] {
        self.copy
            .get_or_init(|| {
                let width: usize = self.parts.iter().map(|(_, n)| n * self.elem).sum();
                let mut out = AlignedBuf::zeroed(self.rows * width);
                let dst = out.as_mut_slice();
                let mut col = 0;
                for (src, n) in &self.parts {
                    let w = n * self.elem;
                    for (r, row) in src.as_slice().chunks_exact(w).enumerate() {
                        dst[r * width + col..r * width + col + w].copy_from_slice(row);
                    }
                    col += w;
                }
                out
            })
            .as_slice()
    }
}

/// A product `MatMul(a, w)` with a 2-D float constant `w` that only it reads.
struct Product {
    node: usize,
    w: ValueId,
    cols: usize,
}

/// Merges every group of two or more such products of one input with weights of one type and
/// depth; returns how many products were merged away. Run after shape inference, before the
/// weights are transposed, packed or quantized.
pub fn merge(g: &mut Graph) -> usize {
    let index = pattern::Index::new(g);
    let mut groups: BTreeMap<(ValueId, usize, DType), Vec<Product>> = BTreeMap::new();
    for (i, n) in g.nodes.iter().enumerate() {
        if n.op != "MatMul" || !pattern::is_default(n) || n.outputs.len() != 1 {
            continue;
        }
        let Some([a, w]) = pattern::inputs::<2>(n) else { continue };
        let wv = &g.values[w];
        let (Some(shape), Some(dtype), Some(bytes)) = (wv.known_shape(), wv.dtype, wv.constant.as_ref()) else {
            continue;
        };
        let a_shape = pattern::shape(g, a);
        let fits = shape.len() == 2
            && dtype.is_float()
            && g.values[a].dtype == Some(dtype)
            && bytes.len() == shape[0] * shape[1] * dtype.size()
            && index.readers(w) == 1
            && a_shape.is_some_and(|s| s.len() >= 2 && s.last() == Some(&Dim::Known(shape[0] as i64)));
        if fits && pattern::shape(g, n.outputs[0]).is_some() {
            groups.entry((a, shape[0], dtype)).or_default().push(Product { node: i, w, cols: shape[1] });
        }
    }
    let mut splits: BTreeMap<usize, Node> = BTreeMap::new();
    let mut dead = vec![false; g.nodes.len()];
    let mut merged = 0;
    for ((a, rows, dtype), products) in groups.into_iter().filter(|(_, p)| p.len() > 1) {
        let first = products[0].node;
        let name = g.nodes[first].name.clone();
        let total: usize = products.iter().map(|p| p.cols).sum();
        let parts = products.iter().map(|p| (g.values[p.w].constant.clone().expect("checked"), p.cols)).collect();
        let owner = SideBySide { parts, rows, elem: dtype.size(), copy: OnceLock::new() };
        let w = g.add_value(Value {
            name: format!("{name}/merged_weight"),
            dtype: Some(dtype),
            shape: Some(vec![Dim::Known(rows as i64), Dim::Known(total as i64)]),
            constant: Some(SharedBytes::lazy(Arc::new(owner), rows * total * dtype.size())),
            sym_value: None,
        });
        let mut y_shape = pattern::shape(g, g.nodes[first].outputs[0]).expect("checked").to_vec();
        *y_shape.last_mut().expect("rank ≥ 2") = Dim::Known(total as i64);
        let y = g.add_value(Value {
            name: format!("{name}/merged"),
            dtype: Some(dtype),
            shape: Some(y_shape),
            constant: None,
            sym_value: None,
        });
        let sizes: Vec<i64> = products.iter().map(|p| p.cols as i64).collect();
        let sizes = pattern::shape_const(g, format!("{name}/split_sizes"), &sizes);
        let outputs = products.iter().map(|p| g.nodes[p.node].outputs[0]).collect();
        splits.insert(
            first,
            Node {
                name: format!("{name}/split"),
                op: "Split".into(),
                domain: String::new(),
                opset: 13,
                attrs: vec![Attribute::int("axis", -1)],
                inputs: vec![Some(y), Some(sizes)],
                outputs,
            },
        );
        let n = &mut g.nodes[first];
        n.name = format!("{name}/merged");
        n.inputs = vec![Some(a), Some(w)];
        n.outputs = vec![y];
        for p in &products[1..] {
            dead[p.node] = true;
        }
        merged += products.len() - 1;
    }
    if merged == 0 {
        return 0;
    }
    let mut nodes = Vec::with_capacity(g.nodes.len());
    for (i, n) in std::mem::take(&mut g.nodes).into_iter().enumerate() {
        if !dead[i] {
            nodes.push(n);
        }
        nodes.extend(splits.remove(&i));
    }
    g.nodes = nodes;
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(g: &mut Graph, name: &str, dims: &[i64], constant: Option<Vec<f32>>) -> ValueId {
        g.add_value(Value {
            name: name.into(),
            dtype: Some(DType::F32),
            shape: Some(dims.iter().map(|&d| if d < 0 { Dim::sym("s") } else { Dim::Known(d) }).collect()),
            constant: constant.map(|c| SharedBytes::copy_from(bytemuck::cast_slice(&c))),
            sym_value: None,
        })
    }

    fn matmul(g: &mut Graph, name: &str, a: ValueId, w: ValueId, y: ValueId) {
        g.nodes.push(Node {
            name: name.into(),
            op: "MatMul".into(),
            domain: String::new(),
            opset: 17,
            attrs: vec![],
            inputs: vec![Some(a), Some(w)],
            outputs: vec![y],
        });
    }

    /// x `[1, s, 2]` times q `[2, 3]`, k `[2, 1]` and v `[2, 1]`, and times a weight of another
    /// depth, which stays alone.
    #[test]
    fn products_of_one_input_become_one_and_a_split() {
        let mut g = Graph::default();
        let x = value(&mut g, "x", &[1, -1, 2], None);
        let z = value(&mut g, "z", &[1, -1, 3], None);
        let wq = value(&mut g, "wq", &[2, 3], Some(vec![1., 2., 3., 4., 5., 6.]));
        let wk = value(&mut g, "wk", &[2, 1], Some(vec![7., 8.]));
        let wv = value(&mut g, "wv", &[2, 1], Some(vec![9., 10.]));
        let wz = value(&mut g, "wz", &[3, 1], Some(vec![0.; 3]));
        let [q, k, v, o] = ["q", "k", "v", "o"].map(|n| value(&mut g, n, &[1, -1, if n == "q" { 3 } else { 1 }], None));
        matmul(&mut g, "q_proj", x, wq, q);
        matmul(&mut g, "z_proj", z, wz, o);
        matmul(&mut g, "k_proj", x, wk, k);
        matmul(&mut g, "v_proj", x, wv, v);
        g.inputs = vec![x, z];
        g.outputs = vec![q, k, v, o];
        assert_eq!(merge(&mut g), 2);
        let ops: Vec<&str> = g.nodes.iter().map(|n| n.op.as_str()).collect();
        assert_eq!(ops, ["MatMul", "Split", "MatMul"], "merged, split right after, the other product");
        let split = &g.nodes[1];
        assert_eq!(split.outputs, [q, k, v]);
        let sizes = g.values[split.inputs[1].unwrap()].constant.as_ref().unwrap();
        assert_eq!(bytemuck::cast_slice::<u8, i64>(sizes.as_slice()), [3, 1, 1]);
        let w = g.values[g.nodes[0].inputs[1].unwrap()].constant.as_ref().unwrap();
        assert_eq!(bytemuck::pod_collect_to_vec::<u8, f32>(w.as_slice()), [1., 2., 3., 7., 9., 4., 5., 6., 8., 10.]);
        assert_eq!(g.values[g.nodes[0].outputs[0]].shape, Some(vec![Dim::Known(1), Dim::sym("s"), Dim::Known(5)]));
    }

    #[test]
    fn a_weight_read_elsewhere_is_not_merged() {
        let mut g = Graph::default();
        let x = value(&mut g, "x", &[1, 2], None);
        let w1 = value(&mut g, "w1", &[2, 2], Some(vec![0.; 4]));
        let w2 = value(&mut g, "w2", &[2, 2], Some(vec![0.; 4]));
        let [y1, y2] = ["y1", "y2"].map(|n| value(&mut g, n, &[1, 2], None));
        matmul(&mut g, "a", x, w1, y1);
        matmul(&mut g, "b", x, w2, y2);
        g.outputs = vec![y1, y2, w2];
        assert_eq!(merge(&mut g), 0);
    }
}

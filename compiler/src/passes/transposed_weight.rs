//! `MatMul(A, Transpose(B))`, where the transpose swaps B's last two axes, becomes
//! `kiln::MatMulTransB(A, B)`, which reads B in place with swapped strides. Exporters emit this
//! for output heads tied to the token embedding (one table, used by Gather and by the head) and
//! for attention scores (`Q · Kᵀ` over the whole KV cache); left alone, every forward pass would
//! copy the table, or the cache, just to transpose it.

use crate::ir::{Graph, ValueId};
use kiln_runtime::ops::KILN_DOMAIN;

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
        let n = &g.nodes[i];
        if n.op != "MatMul" || !matches!(n.domain.as_str(), "" | "ai.onnx") || n.inputs.len() != 2 {
            continue;
        }
        let (Some(a), Some(bt)) = (n.inputs[0], n.inputs[1]) else { continue };
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
        let n = &mut g.nodes[i];
        n.op = "MatMulTransB".into();
        n.domain = KILN_DOMAIN.into();
        n.opset = 1;
        n.inputs = vec![Some(a), Some(w)];
        fused += 1;
    }
    fused
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Node, Value};
    use kiln_formats::{DType, Dim};

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
}

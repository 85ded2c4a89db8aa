//! `Gemm(A, B, C)` with `alpha = beta = 1` and `A` not transposed becomes `MatMul(A, B)` (with
//! `transB`, `kiln::MatMulTransB(A, B)`) and then `Add(·, C)`: the same arithmetic, spelled as
//! the weight passes look for products.
//!
//! Both torch exporters write every linear of GPT-2 (transformers' `Conv1D`, `addmm` on the
//! flattened activations) as `Gemm`, as they do any `addmm`. Left as `Gemm`, those products
//! reached none of the weight passes: f32 weights were not packed into the kernel's panels,
//! `--weights q8|q4|f16|bf16` left them f32 (one of a real GPT-2 export's 49 products was
//! quantized), and decode ran them through the general product at half the speed. CPU-only
//! bundles only: the GPU backend has a Gemm kernel, and a GPU plan in the same bundle reads the
//! weight as the Gemm holds it, which the CPU plan then shares instead of storing it transposed.

use super::pattern;
use crate::ir::{Graph, Node, Value, ValueId};
use kiln_runtime::ops::KILN_DOMAIN;

/// The operands (A, B, C) and `transB` of a `Gemm` this pass rewrites.
fn plain_gemm(g: &Graph, n: &Node) -> Option<(ValueId, ValueId, Option<ValueId>, bool)> {
    if n.op != "Gemm" || !pattern::is_default(n) || n.outputs.len() != 1 || !(2..=3).contains(&n.inputs.len()) {
        return None;
    }
    let (a, b) = (n.inputs[0]?, n.inputs[1]?);
    let c = n.inputs.get(2).copied().flatten();
    let float = |v: ValueId| g.values[v].dtype.is_some_and(|d| d.is_float());
    let scaled =
        pattern::float_attr(n, "alpha", 1.0)? != 1.0 || (c.is_some() && pattern::float_attr(n, "beta", 1.0)? != 1.0);
    let trans_b = match (pattern::int_attr(n, "transA", 0)?, pattern::int_attr(n, "transB", 0)?) {
        (0, 0) => false,
        (0, 1) => true,
        _ => return None,
    };
    (!scaled && float(a) && float(b) && c.is_none_or(float)).then_some((a, b, c, trans_b))
}

/// Rewrites every such `Gemm`; returns how many. Run after shape inference: the new values take
/// their types and shapes from the Gemm's operands and output.
pub fn to_matmul(g: &mut Graph) -> usize {
    let found: Vec<(usize, ValueId, ValueId, Option<ValueId>, bool)> =
        g.nodes.iter().enumerate().filter_map(|(i, n)| plain_gemm(g, n).map(|(a, b, c, t)| (i, a, b, c, t))).collect();
    if found.is_empty() {
        return 0;
    }
    let mut replaced: Vec<Option<Vec<Node>>> = vec![None; g.nodes.len()];
    for &(i, a, b, c, trans_b) in &found {
        let gemm = &g.nodes[i];
        let (name, opset, y) = (gemm.name.clone(), gemm.opset, gemm.outputs[0]);
        // B read in place, transposed or not, as the weight passes after this one expect.
        let (op, domain, op_opset) = match trans_b {
            false => ("MatMul", "", opset),
            true => ("MatMulTransB", KILN_DOMAIN, 1),
        };
        let node = |op: &str, domain: &str, opset: i64, inputs: [ValueId; 2], out: ValueId| Node {
            name: format!("{name}/{op}"),
            op: op.into(),
            domain: domain.into(),
            opset,
            attrs: Vec::new(),
            inputs: inputs.map(Some).to_vec(),
            outputs: vec![out],
        };
        let Some(c) = c else {
            replaced[i] = Some(vec![node(op, domain, op_opset, [a, b], y)]);
            continue;
        };
        let yv = &g.values[y];
        let product = g.add_value(Value {
            name: format!("{}.product", yv.name),
            dtype: yv.dtype,
            shape: yv.shape.clone(),
            ..Default::default()
        });
        replaced[i] = Some(vec![node(op, domain, op_opset, [a, b], product), node("Add", "", opset, [product, c], y)]);
    }
    let old = std::mem::take(&mut g.nodes);
    for (n, with) in old.into_iter().zip(replaced) {
        match with {
            Some(nodes) => g.nodes.extend(nodes),
            None => g.nodes.push(n),
        }
    }
    found.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_formats::program::Attribute;
    use kiln_formats::{DType, Dim, SharedBytes};

    /// `y = Gemm(x [2, 4], w, c [3])` with `w` a constant [4, 3] (or [3, 4] with `transB`).
    fn graph(attrs: Vec<Attribute>, with_c: bool) -> Graph {
        let trans_b = attrs.iter().any(|a| a.name == "transB" && a.i == 1);
        let v = |name: &str, dims: &[i64]| Value {
            name: name.into(),
            dtype: Some(DType::F32),
            shape: Some(dims.iter().map(|&d| Dim::Known(d)).collect()),
            ..Default::default()
        };
        let mut w = v("w", if trans_b { &[3, 4] } else { &[4, 3] });
        w.constant = Some(SharedBytes::copy_from(bytemuck::cast_slice(&[0.5f32; 12])));
        let inputs = if with_c { vec![Some(0), Some(1), Some(2)] } else { vec![Some(0), Some(1)] };
        Graph {
            values: vec![v("x", &[2, 4]), w, v("c", &[3]), v("y", &[2, 3])],
            nodes: vec![Node {
                name: "fc".into(),
                op: "Gemm".into(),
                domain: String::new(),
                opset: 13,
                attrs,
                inputs,
                outputs: vec![3],
            }],
            inputs: vec![0, 2],
            outputs: vec![3],
            ..Default::default()
        }
    }

    fn ops(g: &Graph) -> Vec<&str> {
        g.nodes.iter().map(|n| n.op.as_str()).collect()
    }

    #[test]
    fn a_linear_becomes_a_product_and_a_bias_add() {
        let mut g = graph(vec![Attribute::float("alpha", 1.0)], true);
        assert_eq!(to_matmul(&mut g), 1);
        assert_eq!(ops(&g), ["MatMul", "Add"]);
        let (mm, add) = (&g.nodes[0], &g.nodes[1]);
        assert_eq!(mm.inputs, vec![Some(0), Some(1)]);
        let product = mm.outputs[0];
        assert_eq!(add.inputs, vec![Some(product), Some(2)]);
        assert_eq!(add.outputs, vec![3], "the Add makes the Gemm's output");
        assert_eq!(g.values[product].shape, g.values[3].shape);
        assert_eq!(g.values[product].dtype, Some(DType::F32));
    }

    #[test]
    fn a_transposed_weight_is_read_in_place_and_no_bias_means_no_add() {
        let mut g = graph(vec![Attribute::int("transB", 1)], false);
        assert_eq!(to_matmul(&mut g), 1);
        assert_eq!(ops(&g), ["MatMulTransB"]);
        let n = &g.nodes[0];
        assert_eq!((n.domain.as_str(), &n.inputs, &n.outputs), (KILN_DOMAIN, &vec![Some(0), Some(1)], &vec![3]));
    }

    #[test]
    fn scaled_or_transposed_a_gemms_stay() {
        for attrs in [
            vec![Attribute::float("alpha", 2.0)],
            vec![Attribute::float("beta", 0.5)],
            vec![Attribute::int("transA", 1)],
        ] {
            let mut g = graph(attrs.clone(), true);
            assert_eq!(to_matmul(&mut g), 0, "{attrs:?}");
            assert_eq!(ops(&g), ["Gemm"]);
        }
        // Without C, beta scales nothing.
        let mut g = graph(vec![Attribute::float("beta", 0.5)], false);
        assert_eq!(to_matmul(&mut g), 1);
    }
}

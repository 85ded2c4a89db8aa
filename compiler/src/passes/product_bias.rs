//! `Add(P, b)`, where P is made by a product over stored weights (`kiln::MatMulPacked` or a
//! quantized or 16-bit product) and read by nothing else, and b is a constant of one f32 value per
//! output column, becomes the product with b as its third input: the linear layers' bias, which
//! GPT-2-style models (and any `Gemm` with a C, or torch's `MatMul` + `Add`) apply after every
//! product. The product adds it to each output while the output is in cache, so decode loses one
//! step and one pass over the product per linear. Run after the weight passes (they make these
//! products) and only in CPU plans (the GPU backend reads neither product).

use super::pattern::{self, Index};
use crate::ir::{Graph, ValueId};
use kiln_formats::{DType, Dim};
use kiln_runtime::ops::matmul::half16::{BF16, F16};
use kiln_runtime::ops::matmul::quantized::BlockFormat;
use kiln_runtime::ops::matmul::{epilogue, packed, q4::Q4, q8::Q8};

/// Products whose kernels take a bias.
pub(crate) const PRODUCTS: [&str; 5] = [packed::MATMUL_PACKED, Q8::OP, Q4::OP, F16::OP, BF16::OP];

/// Folds every such bias into its product; returns how many.
pub fn fuse(g: &mut Graph) -> usize {
    let index = Index::new(g);
    let found: Vec<(usize, usize, ValueId)> = pattern::binary_nodes(g, "Add")
        .filter_map(|(add, [a, b])| {
            let (product, bias) = [(a, b), (b, a)].into_iter().find_map(|(p, b)| {
                let made_by = PRODUCTS.iter().find_map(|op| index.private_kiln(g, p, op))?;
                (made_by.inputs.len() == epilogue::BIAS && is_bias(g, b, p)).then(|| (index.producer(p), b))
            })?;
            Some((product?, add, bias))
        })
        .collect();
    let mut removed = vec![false; g.nodes.len()];
    for &(product, add, bias) in &found {
        let out = g.nodes[add].outputs[0];
        let n = &mut g.nodes[product];
        n.inputs.push(Some(bias));
        n.outputs[0] = out;
        removed[add] = true;
    }
    pattern::remove_nodes(g, &removed);
    found.len()
}

/// Whether `b` is an f32 constant of one value per column of the f32 product `p`, unit dims before
/// them, so adding it does not change the product's shape.
fn is_bias(g: &Graph, b: ValueId, p: ValueId) -> bool {
    let (bv, pv) = (&g.values[b], &g.values[p]);
    let (Some(bs), Some(ps)) = (pattern::shape(g, b), pattern::shape(g, p)) else { return false };
    let columns = match (bs.split_last(), ps.last()) {
        (Some((last, lead)), Some(n)) => last == n && n.known().is_some() && lead.iter().all(|d| *d == Dim::Known(1)),
        _ => false,
    };
    bv.constant.is_some()
        && bv.dtype == Some(DType::F32)
        && pv.dtype == Some(DType::F32)
        && columns
        && pattern::broadcasts_to(bs, ps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Node, Value};
    use kiln_formats::SharedBytes;
    use kiln_runtime::ops::KILN_DOMAIN;

    /// `y = Add(MatMulQ8(x [2, 4], w), c)` (c first when `swapped`), `c` of shape `c_dims`, a
    /// constant unless `c_is_input`.
    fn graph(c_dims: &[i64], c_is_input: bool, swapped: bool) -> Graph {
        let v = |name: &str, dtype: DType, dims: &[i64]| Value {
            name: name.into(),
            dtype: Some(dtype),
            shape: Some(dims.iter().map(|&d| Dim::Known(d)).collect()),
            ..Default::default()
        };
        let mut c = v("c", DType::F32, c_dims);
        let count = c_dims.iter().product::<i64>() as usize;
        if !c_is_input {
            c.constant = Some(SharedBytes::copy_from(bytemuck::cast_slice(&vec![0.5f32; count])));
        }
        let node = |op: &str, domain: &str, inputs: Vec<ValueId>, out: ValueId| Node {
            name: op.into(),
            op: op.into(),
            domain: domain.into(),
            opset: 1,
            attrs: Vec::new(),
            inputs: inputs.into_iter().map(Some).collect(),
            outputs: vec![out],
        };
        let add_inputs = if swapped { vec![2, 3] } else { vec![3, 2] };
        Graph {
            values: vec![
                v("x", DType::F32, &[2, 4]),
                v("w", DType::U8, &[3, 34]),
                c,
                v("p", DType::F32, &[2, 3]),
                v("y", DType::F32, &[2, 3]),
            ],
            nodes: vec![node(Q8::OP, KILN_DOMAIN, vec![0, 1], 3), node("Add", "", add_inputs, 4)],
            inputs: if c_is_input { vec![0, 2] } else { vec![0] },
            outputs: vec![4],
            ..Default::default()
        }
    }

    #[test]
    fn a_constant_bias_per_column_rides_in_the_product_on_either_side_of_the_add() {
        for (dims, swapped) in [(&[3][..], false), (&[3], true), (&[1, 3], false)] {
            let mut g = graph(dims, false, swapped);
            assert_eq!(fuse(&mut g), 1, "{dims:?}");
            assert_eq!(g.nodes.len(), 1);
            let n = &g.nodes[0];
            assert_eq!((n.op.as_str(), &n.inputs, &n.outputs), (Q8::OP, &vec![Some(0), Some(1), Some(2)], &vec![4]));
        }
    }

    #[test]
    fn other_adds_stay() {
        // Not one value per column; not a constant.
        for mut g in [graph(&[2, 3], false, false), graph(&[3], true, false), graph(&[2, 1], false, false)] {
            assert_eq!(fuse(&mut g), 0);
            assert_eq!(g.nodes.len(), 2);
        }
        // The product is also a graph output, so the Add cannot take it over.
        let mut g = graph(&[3], false, false);
        g.outputs.push(3);
        assert_eq!(fuse(&mut g), 0);
        // The product has a bias already: the Add stays.
        let mut g = graph(&[3], false, false);
        g.nodes[0].inputs.push(Some(2));
        assert_eq!(fuse(&mut g), 0);
    }
}

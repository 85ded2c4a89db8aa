//! `Add(P, R)`, where P is made by a product over stored weights (after [`super::product_bias`]:
//! with or without its bias), or by a `Reshape` of one that keeps the last axis, and R is any f32
//! value of P's shape made before the product, becomes the product with R as its residual input:
//! the residual connection after a transformer's attention output and MLP down projection (GPT-2
//! reshapes its 2-D products back to `[batch, sequence, hidden]` first). The product adds R to
//! each output after its bias, in cache, so decode loses one step per connection. A `Reshape`
//! that keeps the last axis keeps every element's place, so adding R before it is the same sum.
//! CPU plans only, after the weight passes (as the bias pass).

use super::pattern::{self, Index};
use super::product_bias::PRODUCTS;
use crate::ir::{Graph, ValueId};
use kiln_formats::DType;
use kiln_runtime::ops::matmul::epilogue;

/// A residual found: the product, the Reshape between (if any), the Add, and R.
struct Found {
    product: usize,
    reshape: Option<usize>,
    add: usize,
    residual: ValueId,
}

/// Folds every such residual into its product; returns how many.
pub fn fuse(g: &mut Graph) -> usize {
    let index = Index::new(g);
    let found: Vec<Found> = pattern::binary_nodes(g, "Add")
        .filter_map(|(add, [a, b])| [(a, b), (b, a)].into_iter().find_map(|(p, r)| matched(g, &index, add, p, r)))
        .collect();
    let mut removed = vec![false; g.nodes.len()];
    for f in &found {
        let out = g.nodes[f.add].outputs[0];
        let n = &mut g.nodes[f.product];
        n.inputs.resize(epilogue::RESIDUAL, None);
        n.inputs.push(Some(f.residual));
        let last = f.reshape.unwrap_or(f.product);
        g.nodes[last].outputs[0] = out;
        removed[f.add] = true;
    }
    pattern::remove_nodes(g, &removed);
    found.len()
}

/// The residual `r` added at `add` to `p`, when `p` is a product's output (or a last-axis-keeping
/// reshape of one) that only this Add reads.
fn matched(g: &Graph, index: &Index, add: usize, p: ValueId, r: ValueId) -> Option<Found> {
    let (product_out, reshape) = match index.private(g, p, "Reshape") {
        Some(n) => {
            let x = n.inputs.first().copied().flatten()?;
            let (from, to) = (pattern::shape(g, x)?, pattern::shape(g, p)?);
            let keeps_last = from.last().is_some_and(|d| d.known().is_some()) && from.last() == to.last();
            if !keeps_last {
                return None;
            }
            (x, Some(index.producer(p)?))
        }
        None => (p, None),
    };
    let product = index.producer(product_out)?;
    let n = PRODUCTS.iter().find_map(|op| index.private_kiln(g, product_out, op))?;
    let no_residual = n.inputs.len() <= epilogue::RESIDUAL;
    // R must exist when the product runs, which is earlier than the Add.
    let ready = index.producer(r).is_none_or(|at| at < product);
    // One dtype and shape: the Add broadcasts nothing. (R cannot be P: P has one reader.)
    let same = pattern::same_type(g, p, r) && g.values[p].dtype == Some(DType::F32);
    (no_residual && ready && same).then_some(Found { product, reshape, add, residual: r })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{test_node as node, Value};
    use kiln_formats::Dim;
    use kiln_runtime::ops::matmul::q8::Q8;
    use kiln_runtime::ops::matmul::quantized::BlockFormat;
    use kiln_runtime::ops::KILN_DOMAIN;

    fn value(name: &str, dims: &[i64]) -> Value {
        Value {
            name: name.into(),
            dtype: Some(DType::F32),
            shape: Some(dims.iter().map(|&d| Dim::Known(d)).collect()),
            ..Default::default()
        }
    }

    /// `y = Add(MatMulQ8(x [2, 4], w) → p [2, 3], r)` with r a graph input of shape `r_dims`.
    fn graph(r_dims: &[i64]) -> Graph {
        Graph {
            values: vec![
                value("x", &[2, 4]),
                value("w", &[3, 34]),
                value("r", r_dims),
                value("p", &[2, 3]),
                value("y", &[2, 3]),
            ],
            nodes: vec![node(Q8::OP, KILN_DOMAIN, &[0, 1], 3), node("Add", "", &[2, 3], 4)],
            inputs: vec![0, 2],
            outputs: vec![4],
            ..Default::default()
        }
    }

    #[test]
    fn a_residual_of_the_products_shape_rides_in_the_product_after_any_bias() {
        let mut g = graph(&[2, 3]);
        assert_eq!(fuse(&mut g), 1);
        assert_eq!(g.nodes.len(), 1);
        assert_eq!((&g.nodes[0].inputs, &g.nodes[0].outputs), (&vec![Some(0), Some(1), None, Some(2)], &vec![4]));
        let mut g = graph(&[2, 3]);
        let bias = g.add_value(value("b", &[3]));
        g.nodes[0].inputs.push(Some(bias));
        assert_eq!(fuse(&mut g), 1);
        assert_eq!(g.nodes[0].inputs, vec![Some(0), Some(1), Some(bias), Some(2)]);
    }

    #[test]
    fn a_residual_after_a_reshape_that_keeps_the_last_axis_is_added_before_it() {
        // p [2, 3] → Reshape → q [1, 2, 3]; y = q + r.
        let mut g = graph(&[1, 2, 3]);
        let shape = g.add_value(value("shape", &[3]));
        let q = g.add_value(value("q", &[1, 2, 3]));
        g.values[4].shape = g.values[q].shape.clone();
        g.nodes.insert(1, node("Reshape", "", &[3, shape], q));
        g.nodes[2].inputs = vec![Some(q), Some(2)];
        assert_eq!(fuse(&mut g), 1);
        assert_eq!(g.nodes.len(), 2);
        assert_eq!(g.nodes[0].inputs, vec![Some(0), Some(1), None, Some(2)]);
        assert_eq!((g.nodes[1].op.as_str(), &g.nodes[1].outputs), ("Reshape", &vec![4]));
        // A reshape that moves elements between rows of the product does not fuse.
        let mut g = graph(&[3, 2]);
        let q = g.add_value(value("q", &[3, 2]));
        g.values[4].shape = g.values[q].shape.clone();
        g.nodes.insert(1, node("Reshape", "", &[3, shape], q));
        g.nodes[2].inputs = vec![Some(q), Some(2)];
        assert_eq!(fuse(&mut g), 0);
    }

    #[test]
    fn other_adds_stay() {
        // A broadcast addend is not one value per output.
        let mut g = graph(&[3]);
        assert_eq!(fuse(&mut g), 0);
        // R made after the product: the product could not read it.
        let mut g = graph(&[2, 3]);
        let late = g.add_value(value("late", &[2, 3]));
        g.nodes.insert(1, node("Relu", "", &[2], late));
        g.nodes[2].inputs = vec![Some(3), Some(late)];
        assert_eq!(fuse(&mut g), 0);
        // The product's output read elsewhere too.
        let mut g = graph(&[2, 3]);
        g.outputs.push(3);
        assert_eq!(fuse(&mut g), 0);
    }
}

//! `Softmax(Add(Mul(x, c), mask))` over the last axis, with `c` a scalar constant (or `Div` by
//! it, or without the mask), becomes `kiln::ScaledSoftmax(x[, mask])`: attention's scale, causal
//! mask and softmax as one step and one pass over the scores instead of three. CPU only (the GPU
//! backend has no kernel for it).

use super::pattern::{self, Index};
use crate::ir::{Graph, Node, ValueId};
use kiln_formats::program::{AttrKind, Attribute};
use kiln_formats::DType;
use kiln_runtime::ops::norm::scaled_softmax::SCALED_SOFTMAX;
use kiln_runtime::ops::KILN_DOMAIN;

/// What a match folds into the softmax.
struct Match {
    node: usize,
    x: ValueId,
    scale: f32,
    divide: bool,
    mask: Option<ValueId>,
}

/// Fuses every such softmax whose intermediate values nothing else reads; returns how many.
/// Run after shape inference and constant folding.
pub fn fuse(g: &mut Graph) -> usize {
    let index = Index::new(g);
    let found: Vec<Match> = g.nodes.iter().enumerate().filter_map(|(i, n)| matched(g, &index, i, n)).collect();
    for m in &found {
        let n = &mut g.nodes[m.node];
        n.op = SCALED_SOFTMAX.into();
        n.domain = KILN_DOMAIN.into();
        n.opset = 1;
        n.attrs = vec![
            Attribute { name: "scale".into(), kind: AttrKind::Float as i32, f: m.scale, ..Default::default() },
            Attribute { name: "divide".into(), kind: AttrKind::Int as i32, i: m.divide as i64, ..Default::default() },
        ];
        n.inputs = std::iter::once(Some(m.x)).chain(m.mask.map(Some)).collect();
    }
    found.len()
}

fn matched(g: &Graph, index: &Index, i: usize, n: &Node) -> Option<Match> {
    if n.op != "Softmax" || !pattern::is_default(n) || n.outputs.len() != 1 {
        return None;
    }
    let [u] = pattern::inputs::<1>(n)?;
    let rank = pattern::shape(g, u)?.len();
    let axis = pattern::int_attr(n, "axis", if n.opset < 13 { 1 } else { -1 })?;
    let dtype = g.values[u].dtype?;
    // f64 scores would lose the scale's precision in the f32 attribute.
    if rank == 0 || !pattern::is_last_axis(axis, rank) || !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        return None;
    }
    let scaled = |v: ValueId| -> Option<(ValueId, f32, bool)> {
        let p = index.private(g, v, "Mul").or_else(|| index.private(g, v, "Div"))?;
        let [a, b] = pattern::inputs::<2>(p)?;
        let divide = p.op == "Div";
        let orders: &[(ValueId, ValueId)] = if divide { &[(a, b)] } else { &[(a, b), (b, a)] };
        orders.iter().find_map(|&(x, c)| {
            let c = pattern::scalar(g, c)? as f32;
            (c.is_finite() && pattern::same_type(g, x, v)).then_some((x, c, divide))
        })
    };
    let (x, scale, divide, mask) = match index.private(g, u, "Add") {
        Some(add) => {
            let [a, b] = pattern::inputs::<2>(add)?;
            [(a, b), (b, a)].into_iter().find_map(|(s, m)| {
                let (x, c, d) = scaled(s)?;
                let fits = g.values[m].dtype == Some(dtype) && matches!((pattern::shape(g, m), pattern::shape(g, x)), (Some(ms), Some(xs)) if pattern::broadcasts_to(ms, xs));
                (fits && pattern::same_type(g, s, u)).then_some((x, c, d, Some(m)))
            })?
        }
        None => {
            let (x, c, d) = scaled(u)?;
            (x, c, d, None)
        }
    };
    Some(Match { node: i, x, scale, divide, mask })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Value;
    use kiln_formats::{Dim, SharedBytes};

    fn graph(op: &str, mask_shape: &[i64]) -> Graph {
        let mut g = Graph::default();
        let dims = |v: &[i64]| v.iter().map(|&d| if d < 0 { Dim::sym("t") } else { Dim::Known(d) }).collect::<Vec<_>>();
        let mut val = |name: &str, shape: &[i64], c: Option<f32>| {
            g.add_value(Value {
                name: name.into(),
                dtype: Some(DType::F32),
                shape: Some(dims(shape)),
                constant: c.map(|c| SharedBytes::copy_from(&c.to_le_bytes())),
                sym_value: None,
            })
        };
        let x = val("x", &[1, 9, 1, -1], None);
        let c = val("c", &[], Some(0.125));
        let m = val("m", mask_shape, None);
        let [t, u, y] = ["t", "u", "y"].map(|n| val(n, &[1, 9, 1, -1], None));
        let node = |op: &str, inputs: &[ValueId], out| Node {
            name: op.into(),
            op: op.into(),
            domain: String::new(),
            opset: 17,
            attrs: Vec::new(),
            inputs: inputs.iter().map(|&i| Some(i)).collect(),
            outputs: vec![out],
        };
        g.nodes = vec![node(op, &[x, c], t), node("Add", &[m, t], u), node("Softmax", &[u], y)];
        g.inputs = vec![x, m];
        g.outputs = vec![y];
        g
    }

    #[test]
    fn scale_mask_and_softmax_become_one_step() {
        for (op, divide) in [("Mul", 0), ("Div", 1)] {
            let mut g = graph(op, &[1, 1, 1, -1]);
            assert_eq!(fuse(&mut g), 1);
            crate::passes::dce::eliminate(&mut g);
            assert_eq!(g.nodes.len(), 1);
            let n = &g.nodes[0];
            assert_eq!((n.op.as_str(), &n.inputs[..]), ("ScaledSoftmax", &[Some(0), Some(2)][..]));
            assert_eq!((n.attrs[0].f, n.attrs[1].i), (0.125, divide));
        }
    }

    #[test]
    fn a_mask_that_grows_the_scores_or_a_shared_value_stays() {
        let mut g = graph("Mul", &[2, 9, 1, -1]);
        assert_eq!(fuse(&mut g), 0);
        let mut g = graph("Mul", &[1, 1, 1, -1]);
        g.outputs.push(4); // the scaled scores are an output too
        assert_eq!(fuse(&mut g), 0);
    }
}

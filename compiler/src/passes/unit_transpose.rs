//! A `Transpose` that only moves axes of size 1 keeps every element where it was, so it becomes a
//! `Reshape`, which the planner makes a view: no copy, no pass over the data. Attention exports
//! swap the sequence and head axes of q, k, v and the attention output
//! (`[B, S, H, D] ↔ [B, H, S, D]`); at decode S is 1, and those four copies per layer go away.

use super::pattern;
use crate::ir::{Graph, ValueId};
use kiln_formats::Dim;

/// Rewrites every such transpose whose output shape is known well enough for a `Reshape`; returns
/// how many. Run after shape inference.
pub fn to_reshape(g: &mut Graph) -> usize {
    let mut done = 0;
    for i in 0..g.nodes.len() {
        let n = &g.nodes[i];
        if n.op != "Transpose" || !pattern::is_default(n) || n.outputs.len() != 1 {
            continue;
        }
        let Some([x]) = pattern::inputs::<1>(n) else { continue };
        let Some(target) = reshape_target(g, x, n.outputs[0], pattern::ints_attr(n, "perm")) else { continue };
        let name = format!("{}/unit_axes_shape", n.name);
        let shape = pattern::shape_const(g, name, &target);
        let opset = pattern::reshape_opset(g);
        let n = &mut g.nodes[i];
        n.op = "Reshape".into();
        n.opset = opset;
        n.attrs.clear();
        n.inputs = vec![Some(x), Some(shape)];
        done += 1;
    }
    done
}

/// The `Reshape` shape that does what transposing `x` by `perm` into `y` does, when the axes
/// larger than 1 keep their order: every known dim, and -1 for at most one unknown one.
fn reshape_target(g: &Graph, x: ValueId, y: ValueId, perm: Option<&[i64]>) -> Option<Vec<i64>> {
    let xs = pattern::shape(g, x)?;
    let ys = pattern::shape(g, y)?;
    let rank = xs.len();
    let perm: Vec<usize> = match perm {
        Some(p) => p.iter().map(|&a| usize::try_from(a).ok().filter(|&a| a < rank)).collect::<Option<_>>()?,
        None => (0..rank).rev().collect(),
    };
    if perm.len() != rank || ys.len() != rank {
        return None;
    }
    // The non-unit input axes, in the order the output visits them, must be increasing; an
    // unknown dim might be larger than 1, so it counts as moving.
    let moved: Vec<usize> = perm.iter().copied().filter(|&a| xs[a] != Dim::Known(1)).collect();
    if moved.windows(2).any(|w| w[0] > w[1]) {
        return None;
    }
    let mut unknown = 0;
    let target = ys
        .iter()
        .map(|d| {
            d.known().unwrap_or_else(|| {
                unknown += 1;
                -1
            })
        })
        .collect();
    (unknown <= 1).then_some(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Node;
    use crate::ir::Value;
    use kiln_formats::program::{AttrKind, Attribute};
    use kiln_formats::DType;

    fn graph(x: &[Dim], y: &[Dim], perm: &[i64]) -> Graph {
        let value = |name: &str, shape: &[Dim]| Value {
            name: name.into(),
            dtype: Some(DType::F32),
            shape: Some(shape.to_vec()),
            ..Default::default()
        };
        Graph {
            values: vec![value("x", x), value("y", y)],
            nodes: vec![Node {
                name: "t".into(),
                op: "Transpose".into(),
                domain: String::new(),
                opset: 17,
                attrs: vec![Attribute {
                    name: "perm".into(),
                    kind: AttrKind::Ints as i32,
                    ints: perm.to_vec(),
                    ..Default::default()
                }],
                inputs: vec![Some(0)],
                outputs: vec![1],
            }],
            inputs: vec![0],
            outputs: vec![1],
            ..Default::default()
        }
    }

    fn k(v: &[i64]) -> Vec<Dim> {
        v.iter().map(|&d| Dim::Known(d)).collect()
    }

    #[test]
    fn swapping_a_unit_axis_is_a_reshape() {
        let mut g = graph(&k(&[1, 1, 9, 64]), &k(&[1, 9, 1, 64]), &[0, 2, 1, 3]);
        assert_eq!(to_reshape(&mut g), 1);
        let n = &g.nodes[0];
        assert_eq!((n.op.as_str(), n.inputs[0]), ("Reshape", Some(0)));
        let target: &[i64] = bytemuck::cast_slice(g.values[n.inputs[1].unwrap()].constant.as_ref().unwrap().as_slice());
        assert_eq!(target, [1, 9, 1, 64]);
        // One unknown dim becomes -1.
        let past = Dim::sym("past");
        let mut g =
            graph(&[Dim::Known(1), Dim::Known(1), past.clone()], &[past, Dim::Known(1), Dim::Known(1)], &[2, 0, 1]);
        assert_eq!(to_reshape(&mut g), 1);
    }

    #[test]
    fn a_transpose_that_moves_data_stays() {
        let mut g = graph(&k(&[1, 4, 9, 64]), &k(&[1, 9, 4, 64]), &[0, 2, 1, 3]);
        assert_eq!(to_reshape(&mut g), 0);
        let s = Dim::sym("s");
        let mut g = graph(&[Dim::Known(1), s.clone(), Dim::Known(9)], &[Dim::Known(1), Dim::Known(9), s], &[0, 2, 1]);
        assert_eq!(to_reshape(&mut g), 0, "the sequence may be longer than 1");
        let mut g = graph(&k(&[2, 3]), &k(&[3, 2]), &[]);
        g.nodes[0].attrs.clear();
        assert_eq!(to_reshape(&mut g), 0, "the default perm reverses");
    }
}

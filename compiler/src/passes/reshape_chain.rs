//! `Reshape(Reshape(x))`, the inner one read nowhere else, becomes one `Reshape(x)` to the outer's
//! shape. Each Reshape is a view, but still a step the executor infers and dispatches; attention
//! exports chain two or three (split heads, swap a unit axis, merge heads), about 150 steps per
//! SmolLM2 decode token.

use super::pattern::{self, Index};
use crate::ir::{Graph, ValueId};

/// Collapses every chain whose outer shape is known but for at most one dim; returns how many
/// inner Reshapes were bypassed. Run after shape inference, before dead code elimination.
pub fn collapse(g: &mut Graph) -> usize {
    // Rewrites keep every node's outputs and the inner values' readers, so one index serves.
    let index = Index::new(g);
    let mut done = 0;
    for i in 0..g.nodes.len() {
        let n = &g.nodes[i];
        if n.op != "Reshape" || !pattern::is_default(n) || n.outputs.len() != 1 {
            continue;
        }
        let Some(inner) = n.inputs.first().copied().flatten() else { continue };
        let Some(p) = index.private(g, inner, "Reshape") else { continue };
        let Some(x) = p.inputs.first().copied().flatten() else { continue };
        let Some(target) = target(g, n.outputs[0]) else { continue };
        let name = format!("{}/collapsed_shape", n.name);
        let shape = pattern::shape_const(g, name, &target);
        let n = &mut g.nodes[i];
        n.inputs = vec![Some(x), Some(shape)];
        n.attrs.retain(|a| a.name != "allowzero");
        done += 1;
    }
    done
}

/// `y`'s shape as a Reshape target: known dims, and -1 for at most one unknown one. No zeros,
/// which a Reshape would read as "copy the input's dim".
fn target(g: &Graph, y: ValueId) -> Option<Vec<i64>> {
    let ys = pattern::shape(g, y)?;
    let mut unknown = 0;
    let dims: Vec<i64> = ys
        .iter()
        .map(|d| {
            d.known().unwrap_or_else(|| {
                unknown += 1;
                -1
            })
        })
        .collect();
    (unknown <= 1 && !dims.contains(&0)).then_some(dims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Node;
    use crate::ir::Value;
    use kiln_formats::{DType, Dim};

    fn graph(shapes: &[Vec<Dim>], outputs: &[ValueId]) -> Graph {
        let mut g = Graph::default();
        for (i, s) in shapes.iter().enumerate() {
            g.add_value(Value {
                name: format!("v{i}"),
                dtype: Some(DType::F32),
                shape: Some(s.clone()),
                ..Default::default()
            });
        }
        let target = g.add_value(Value { name: "t".into(), dtype: Some(DType::I64), ..Default::default() });
        for i in 1..shapes.len() {
            g.nodes.push(Node {
                name: format!("r{i}"),
                op: "Reshape".into(),
                domain: String::new(),
                opset: 14,
                attrs: Vec::new(),
                inputs: vec![Some(i - 1), Some(target)],
                outputs: vec![i],
            });
        }
        g.inputs = vec![0, target];
        g.outputs = outputs.to_vec();
        g
    }

    fn k(v: &[i64]) -> Vec<Dim> {
        v.iter().map(|&d| Dim::Known(d)).collect()
    }

    #[test]
    fn a_chain_becomes_one_reshape_of_the_first_input() {
        let s = Dim::sym("past");
        let mut g = graph(
            &[
                k(&[1, 9, 1, 64]),
                k(&[1, 1, 9, 64]),
                vec![Dim::Known(1), Dim::Known(1), Dim::Known(576)],
                vec![s.clone(), Dim::Known(576)],
            ],
            &[3],
        );
        g.values[0].shape = Some(vec![s, Dim::Known(576)]);
        assert_eq!(collapse(&mut g), 2);
        crate::passes::dce::eliminate(&mut g);
        assert_eq!(g.nodes.len(), 1);
        assert_eq!(g.nodes[0].inputs[0], Some(0));
        let target: &[i64] =
            bytemuck::cast_slice(g.values[g.nodes[0].inputs[1].unwrap()].constant.as_ref().unwrap().as_slice());
        assert_eq!(target, [-1, 576]);
    }

    #[test]
    fn a_shared_inner_reshape_or_an_unknown_shape_stays() {
        let mut g = graph(&[k(&[2, 3]), k(&[3, 2]), k(&[6])], &[2, 1]);
        assert_eq!(collapse(&mut g), 0, "the inner reshape is an output too");
        let (a, b) = (Dim::sym("a"), Dim::sym("b"));
        let mut g = graph(&[k(&[6]), k(&[2, 3]), vec![a, b]], &[2]);
        assert_eq!(collapse(&mut g), 0, "two unknown dims");
    }
}

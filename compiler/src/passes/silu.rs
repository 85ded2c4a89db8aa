//! `Mul(x, Sigmoid(x))` (SiLU) becomes `kiln::Silu(x)`, and a following `Mul(·, up)` of the same
//! shape (the gated unit of Llama-style MLPs) is folded in as `kiln::Silu(x, up)`: three steps
//! and two intermediate tensors become one step. CPU only (the GPU backend has no kernel for it).

use super::pattern::{self, Index};
use crate::ir::{Graph, Node, ValueId};
use kiln_formats::program::Attribute;
use kiln_runtime::ops::unary::silu::SILU;
use kiln_runtime::ops::KILN_DOMAIN;

/// A SiLU found in the graph, ending at node `end`.
struct Match {
    end: usize,
    x: ValueId,
    up: Option<ValueId>,
}

/// Fuses every SiLU whose sigmoid nothing else reads; returns how many.
pub fn fuse(g: &mut Graph) -> usize {
    let index = Index::new(g);
    let mut found: Vec<Match> = Vec::new();
    let mut silu_at = vec![None; g.values.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        let Some([a, b]) = is_mul(n) else { continue };
        let x = [(a, b), (b, a)]
            .into_iter()
            .find_map(|(x, s)| (index.private(g, s, "Sigmoid")?.inputs.first().copied()?? == x).then_some(x));
        if let Some(x) = x.filter(|&x| g.values[x].dtype.is_some_and(|d| d.is_float())) {
            silu_at[n.outputs[0]] = Some(found.len());
            found.push(Match { end: i, x, up: None });
        }
    }
    for (i, n) in g.nodes.iter().enumerate() {
        let Some([a, b]) = is_mul(n) else { continue };
        for (s, up) in [(a, b), (b, a)] {
            let Some(m) = silu_at[s] else { continue };
            let x = found[m].x;
            let same = |v: ValueId| g.values[v].dtype == g.values[x].dtype && pattern::same_type(g, v, x);
            if index.readers(s) == 1 && found[m].up.is_none() && up != s && same(up) && same(n.outputs[0]) {
                found[m].end = i;
                found[m].up = Some(up);
                break;
            }
        }
    }
    let count = found.len();
    for m in found {
        let n = &mut g.nodes[m.end];
        n.op = SILU.into();
        n.domain = KILN_DOMAIN.into();
        n.opset = 1;
        n.attrs.clear();
        n.inputs = std::iter::once(Some(m.x)).chain(m.up.map(Some)).collect();
    }
    count
}

/// A gated `kiln::Silu(x, up)` whose x and up are the two equal halves of one `Split` along the
/// last axis (the merged gate and up product of [`super::merge_products`]) reads the product's
/// output itself, attribute `halves` saying which half is x (1: the first, 2: the second). The
/// split's copy of the MLP's widest activation was 3% of a SmolLM2 prefill. Returns how many.
pub fn read_halves(g: &mut Graph) -> usize {
    let index = Index::new(g);
    let mut found = Vec::new();
    for (i, n) in g.nodes.iter().enumerate() {
        if n.op != SILU || n.domain != KILN_DOMAIN || !n.attrs.is_empty() {
            continue;
        }
        let Some([x, up]) = pattern::inputs::<2>(n) else { continue };
        let Some(split) = index.producer(x).filter(|&p| index.producer(up) == Some(p)).map(|p| &g.nodes[p]) else {
            continue;
        };
        if split.op != "Split" || !pattern::is_default(split) || split.outputs.len() != 2 || x == up {
            continue;
        }
        let Some(&Some(whole)) = split.inputs.first() else { continue };
        let Some(shape) = pattern::shape(g, whole) else { continue };
        let axis = pattern::int_attr(split, "axis", 0).unwrap_or(0);
        let width = shape.last().and_then(|d| d.known());
        let halves = match split.inputs.get(1).copied().flatten() {
            Some(sizes) => {
                pattern::ints(g, sizes).is_some_and(|s| s.len() == 2 && s[0] == s[1] && Some(2 * s[0]) == width)
            }
            None => match pattern::ints_attr(split, "split") {
                Some(s) => s.len() == 2 && s[0] == s[1] && Some(2 * s[0]) == width,
                None => width.is_some_and(|w| w % 2 == 0),
            },
        };
        let private = index.readers(x) == 1 && index.readers(up) == 1;
        if halves && private && pattern::is_last_axis(axis, shape.len()) {
            found.push((i, whole, if split.outputs[0] == x { 1 } else { 2 }));
        }
    }
    for &(i, whole, half) in &found {
        let n = &mut g.nodes[i];
        n.inputs = vec![Some(whole)];
        n.attrs = vec![Attribute::int("halves", half)];
    }
    found.len()
}

fn is_mul(n: &Node) -> Option<[ValueId; 2]> {
    (n.op == "Mul" && pattern::is_default(n) && n.outputs.len() == 1).then(|| pattern::inputs::<2>(n)).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Value;
    use kiln_formats::{DType, Dim};

    fn graph(ops: &[(&str, &[ValueId])], values: usize, outputs: &[ValueId]) -> Graph {
        let mut g = Graph::default();
        for i in 0..values {
            let shape = vec![Dim::sym("s"), Dim::Known(if i == 9 { 4 } else { 8 })];
            g.add_value(Value {
                name: format!("v{i}"),
                dtype: Some(DType::F32),
                shape: Some(shape),
                ..Default::default()
            });
        }
        for (k, (op, inputs)) in ops.iter().enumerate() {
            let inputs = inputs.iter().map(|&i| Some(i)).collect();
            g.nodes.push(Node {
                name: format!("n{k}"),
                op: op.to_string(),
                domain: String::new(),
                opset: 17,
                attrs: Vec::new(),
                inputs,
                outputs: vec![k + 2],
            });
        }
        g.inputs = vec![0, 1];
        g.outputs = outputs.to_vec();
        g
    }

    fn ops(g: &Graph) -> Vec<(&str, Vec<Option<ValueId>>)> {
        g.nodes.iter().map(|n| (n.op.as_str(), n.inputs.clone())).collect()
    }

    #[test]
    fn silu_and_the_gate_become_one_step() {
        // v2 = σ(v0); v3 = v0·v2; v4 = v3·v1
        let mut g = graph(&[("Sigmoid", &[0]), ("Mul", &[2, 0]), ("Mul", &[1, 3])], 5, &[4]);
        assert_eq!(fuse(&mut g), 1);
        crate::passes::dce::eliminate(&mut g);
        assert_eq!(ops(&g), [("Silu", vec![Some(0), Some(1)])]);
        assert_eq!(g.nodes[0].outputs, [4]);
    }

    #[test]
    fn a_gate_of_another_shape_or_a_shared_sigmoid_stays_apart() {
        // v9 is [s, 4]: a broadcast, not a gate.
        let mut g = graph(&[("Sigmoid", &[0]), ("Mul", &[0, 2]), ("Mul", &[3, 9])], 10, &[4]);
        assert_eq!(fuse(&mut g), 1);
        crate::passes::dce::eliminate(&mut g);
        assert_eq!(ops(&g), [("Silu", vec![Some(0)]), ("Mul", vec![Some(3), Some(9)])]);
        let mut g = graph(&[("Sigmoid", &[0]), ("Mul", &[0, 2])], 4, &[3, 2]);
        assert_eq!(fuse(&mut g), 0, "the sigmoid is an output too");
        let mut g = graph(&[("Sigmoid", &[1]), ("Mul", &[0, 2])], 4, &[3]);
        assert_eq!(fuse(&mut g), 0, "σ of another tensor");
    }

    #[test]
    fn a_gate_split_from_one_product_is_read_as_halves() {
        // v2 = [s, 16]; Split(v2, [8, 8]) -> v3, v4 ([s, 8] each); Silu(v4, v3) -> v5.
        let build = |sizes: &[i64], out_first: bool| {
            let mut g = Graph::default();
            for (i, w) in [8, 8, 16, 8, 8, 8].into_iter().enumerate() {
                g.add_value(Value {
                    name: format!("v{i}"),
                    dtype: Some(DType::F32),
                    shape: Some(vec![Dim::sym("s"), Dim::Known(w)]),
                    ..Default::default()
                });
            }
            let sizes = pattern::shape_const(&mut g, "sizes".into(), sizes);
            let node = |op: &str, domain: &str, inputs: Vec<ValueId>, outputs: Vec<ValueId>| Node {
                name: op.into(),
                op: op.into(),
                domain: domain.into(),
                opset: 13,
                attrs: if op == "Split" { vec![Attribute::int("axis", -1)] } else { Vec::new() },
                inputs: inputs.into_iter().map(Some).collect(),
                outputs,
            };
            g.nodes.push(node("Split", "", vec![2, sizes], vec![3, 4]));
            g.nodes.push(node(SILU, KILN_DOMAIN, vec![4, 3], vec![5]));
            g.inputs = vec![2];
            g.outputs = if out_first { vec![5, 3] } else { vec![5] };
            g
        };
        let mut g = build(&[8, 8], false);
        assert_eq!(read_halves(&mut g), 1);
        crate::passes::dce::eliminate(&mut g);
        assert_eq!(ops(&g), [("Silu", vec![Some(2)])]);
        assert_eq!(g.nodes[0].attrs, [Attribute::int("halves", 2)], "x is the second half");
        assert_eq!(read_halves(&mut build(&[6, 10], false)), 0, "unequal parts");
        assert_eq!(read_halves(&mut build(&[8, 8], true)), 0, "a half is read elsewhere too");
    }
}

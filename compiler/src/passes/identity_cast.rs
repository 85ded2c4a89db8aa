//! A `Cast` to the type its input already has changes nothing, yet it is a step and a copy.
//! TorchScript exports write them inside attention (`softmax(..., dtype=float32).to(q.dtype)` in
//! an f32 model) and RMS norms (`hidden.to(float32)`), where they also hide those patterns from
//! the fusions. Their readers read the input instead.

use super::pattern;
use crate::ir::{Graph, ValueId};
use kiln_formats::DType;

/// Bypasses every such cast; returns how many. A cast whose output is a graph output becomes an
/// `Identity` (a view), since the output value must still be made. Run after shape inference.
pub fn bypass(g: &mut Graph) -> usize {
    let found: Vec<(usize, ValueId, ValueId)> = g
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.op == "Cast" && pattern::is_default(n) && n.outputs.len() == 1)
        .filter_map(|(i, n)| {
            let [x] = pattern::inputs::<1>(n)?;
            let to = pattern::int_attr(n, "to", -1).and_then(|c| DType::from_onnx_code(c as i32))?;
            (Some(to) == g.values[x].dtype).then_some((i, x, n.outputs[0]))
        })
        .collect();
    // A bypassed cast still reads its input: it goes, so the readers' counts the fusions take
    // afterwards are right.
    let mut dead = vec![false; g.nodes.len()];
    // What a bypassed cast's output became, so a cast of a cast reads the first one's input.
    let mut now: Vec<ValueId> = (0..g.values.len()).collect();
    for &(i, x, y) in &found {
        let x = now[x];
        if g.outputs.contains(&y) {
            g.nodes[i].inputs[0] = Some(x);
            let n = &mut g.nodes[i];
            n.op = "Identity".into();
            n.attrs.clear();
            continue;
        }
        for input in g.nodes.iter_mut().flat_map(|n| n.inputs.iter_mut()) {
            if *input == Some(y) {
                *input = Some(x);
            }
        }
        now[y] = x;
        dead[i] = true;
    }
    super::pattern::remove_nodes(g, &dead);
    found.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Node, Value};
    use kiln_formats::program::Attribute;

    fn value(name: &str, dtype: DType) -> Value {
        Value { name: name.into(), dtype: Some(dtype), ..Default::default() }
    }

    fn cast(name: &str, x: usize, y: usize, to: DType) -> Node {
        Node {
            name: name.into(),
            op: "Cast".into(),
            opset: 19,
            attrs: vec![Attribute::int("to", to.onnx_code() as i64)],
            domain: String::new(),
            inputs: vec![Some(x)],
            outputs: vec![y],
        }
    }

    fn neg(x: usize, y: usize) -> Node {
        Node {
            name: format!("neg{y}"),
            op: "Neg".into(),
            domain: String::new(),
            opset: 19,
            attrs: vec![],
            inputs: vec![Some(x)],
            outputs: vec![y],
        }
    }

    #[test]
    fn a_cast_to_its_own_type_is_bypassed_and_a_real_one_kept() {
        // x:f32 -> Cast(f32) -> a -> Neg -> b -> Cast(f16) -> c -> Neg -> d
        let mut g = Graph {
            values: vec![
                value("x", DType::F32),
                value("a", DType::F32),
                value("b", DType::F32),
                value("c", DType::F16),
                value("d", DType::F16),
            ],
            nodes: vec![cast("same", 0, 1, DType::F32), neg(1, 2), cast("real", 2, 3, DType::F16), neg(3, 4)],
            inputs: vec![0],
            outputs: vec![4],
            ..Default::default()
        };
        assert_eq!(bypass(&mut g), 1);
        assert_eq!(g.nodes.len(), 3, "the bypassed cast is gone");
        assert_eq!(g.nodes[0].inputs, vec![Some(0)], "Neg reads x, not the cast");
        assert_eq!(g.nodes[1].op, "Cast", "the f16 cast stays");
        assert_eq!(g.nodes[2].inputs, vec![Some(3)]);
    }

    #[test]
    fn a_chain_of_such_casts_is_bypassed_whole() {
        // x -> Cast(f32) -> a -> Cast(f32) -> b -> Neg -> c
        let mut g = Graph {
            values: vec![
                value("x", DType::F32),
                value("a", DType::F32),
                value("b", DType::F32),
                value("c", DType::F32),
            ],
            nodes: vec![cast("one", 0, 1, DType::F32), cast("two", 1, 2, DType::F32), neg(2, 3)],
            inputs: vec![0],
            outputs: vec![3],
            ..Default::default()
        };
        assert_eq!(bypass(&mut g), 2);
        assert_eq!(g.nodes.len(), 1);
        assert_eq!(g.nodes[0].inputs, vec![Some(0)]);
    }

    #[test]
    fn a_cast_making_a_graph_output_becomes_an_identity() {
        let mut g = Graph {
            values: vec![value("x", DType::F32), value("y", DType::F32)],
            nodes: vec![cast("out", 0, 1, DType::F32)],
            inputs: vec![0],
            outputs: vec![1],
            ..Default::default()
        };
        assert_eq!(bypass(&mut g), 1);
        assert_eq!(g.nodes[0].op, "Identity");
        assert!(g.nodes[0].attrs.is_empty());
        assert_eq!(g.outputs, vec![1]);
    }
}

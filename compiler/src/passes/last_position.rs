//! Logits of the last position only, for generation's prompt pass (`prefill_last`): generation
//! reads one row of the prompt's logits, yet the output head is the widest product of a small
//! model (SmolLM2-135M: 49152 × 576, a fifth of all its multiply-adds per token). The head's
//! input is sliced to its last position before the product, as llama.cpp does for its prompts;
//! the `prefill` entry point keeps every position's logits for callers that score text.

use crate::ir::{Graph, Node, Value, ValueId};
use kiln_formats::{DType, Dim, SharedBytes};

/// Ops between the head's product and the logits that act on each position alone when their
/// other operand is a constant broadcast along the last axis (a bias, a scale, a soft cap).
const POSITIONWISE: &[&str] = &["Add", "Sub", "Mul", "Div", "Tanh", "Cast", "Identity"];

/// The head's product, its input, and the values from its output to the logits, whose shapes the
/// slice changes.
struct Head {
    product: usize,
    input: ValueId,
    chain: Vec<ValueId>,
    opset: i64,
}

/// Whether [`restrict`] applies to `g`: the reason it does not, if not.
pub fn check(g: &Graph, logits: &str) -> Result<(), String> {
    find(g, logits).map(|_| ())
}

/// Slices the input of the product that makes output `logits` (through position-wise ops) to the
/// last position; the logits become `[batch, 1, vocab]`. Errors, leaving `g` unchanged, when the
/// logits are not such a product of a weight (a constant, or computed from constants alone).
pub fn restrict(g: &mut Graph, logits: &str) -> Result<(), String> {
    let Head { product, input: a, chain, opset } = find(g, logits)?;
    let name = g.nodes[product].name.clone();
    let int64s = |g: &mut Graph, what: &str, x: i64| {
        g.add_value(Value {
            name: format!("{name}/last_position_{what}"),
            dtype: Some(DType::I64),
            shape: Some(vec![Dim::Known(1)]),
            constant: Some(SharedBytes::copy_from(&x.to_le_bytes())),
            sym_value: None,
        })
    };
    let (starts, ends, axes) = (int64s(g, "starts", -1), int64s(g, "ends", i64::MAX), int64s(g, "axes", -2));
    let last =
        g.add_value(Value { name: format!("{name}/last_position"), dtype: g.values[a].dtype, ..Default::default() });
    let slice = Node {
        name: format!("{name}/last_position"),
        op: "Slice".into(),
        domain: String::new(),
        opset,
        attrs: Vec::new(),
        inputs: vec![Some(a), Some(starts), Some(ends), Some(axes)],
        outputs: vec![last],
    };
    g.nodes[product].inputs[0] = Some(last);
    g.nodes.insert(product, slice);
    // Shapes declared by the export (sequence-long) no longer hold; inference redoes them.
    for v in chain {
        g.values[v].shape = None;
    }
    Ok(())
}

/// Walks back from output `logits` to the head's product.
fn find(g: &Graph, logits: &str) -> Result<Head, String> {
    let out = g.outputs.iter().copied().find(|&o| g.values[o].name == logits);
    let out = out.ok_or_else(|| format!("no output '{logits}'"))?;
    let opset = g.opsets.get("").copied().unwrap_or(0);
    if opset < 10 {
        return Err(format!("opset {opset} has Slice without inputs"));
    }
    let mut producer = vec![None; g.values.len()];
    let mut readers = vec![0usize; g.values.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        n.outputs.iter().for_each(|&o| producer[o] = Some(i));
        n.inputs.iter().flatten().for_each(|&v| readers[v] += 1);
    }
    g.outputs.iter().for_each(|&o| readers[o] += 1);
    let is_const = |v: ValueId| g.values[v].constant.is_some();
    // Weights, and what is computed from weights alone (a tied head's Transpose of the embedding).
    let mut fixed: Vec<bool> = g.values.iter().map(|v| v.constant.is_some()).collect();
    for n in &g.nodes {
        if !n.inputs.is_empty() && n.inputs.iter().flatten().all(|&i| fixed[i]) {
            n.outputs.iter().for_each(|&o| fixed[o] = true);
        }
    }
    // Walk back from the logits to the product, through position-wise ops nothing else reads.
    let (mut v, mut chain) = (out, vec![out]);
    let (product, a) = loop {
        let p = producer[v].ok_or_else(|| format!("'{}' is not made by a node", g.values[v].name))?;
        let n = &g.nodes[p];
        let default = n.domain.is_empty() || n.domain == "ai.onnx";
        let ins: Vec<ValueId> = n.inputs.iter().flatten().copied().collect();
        if default && n.op == "MatMul" && ins.len() == 2 {
            if !fixed[ins[1]] {
                return Err(format!("the head '{}' multiplies by a value computed from the inputs", n.name));
            }
            break (p, ins[0]);
        }
        let moving: Vec<ValueId> = ins.iter().copied().filter(|&i| !is_const(i)).collect();
        let narrow =
            ins.iter().filter(|&&i| is_const(i)).all(|&i| g.values[i].shape.as_ref().is_some_and(|s| s.len() <= 1));
        if !default || !POSITIONWISE.contains(&n.op.as_str()) || moving.len() != 1 || !narrow {
            return Err(format!("the logits come from {} node '{}', not from a product", n.op, n.name));
        }
        v = moving[0];
        if readers[v] != 1 {
            return Err(format!("'{}' has other readers", g.values[v].name));
        }
        chain.push(v);
    };
    Ok(Head { product, input: a, chain, opset })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_formats::program::Attribute;

    fn value(g: &mut Graph, name: &str, dims: &[i64], constant: bool) -> ValueId {
        let n: i64 = dims.iter().product();
        g.add_value(Value {
            name: name.into(),
            dtype: Some(DType::F32),
            shape: Some(dims.iter().map(|&d| Dim::Known(d)).collect()),
            constant: constant.then(|| SharedBytes::copy_from(&vec![0u8; n as usize * 4])),
            sym_value: None,
        })
    }

    fn node(op: &str, inputs: &[ValueId], out: ValueId) -> Node {
        Node {
            name: format!("{op}_{out}"),
            op: op.into(),
            domain: String::new(),
            opset: 17,
            attrs: Vec::<Attribute>::new(),
            inputs: inputs.iter().map(|&i| Some(i)).collect(),
            outputs: vec![out],
        }
    }

    /// hidden [1, 5, 4] → MatMul(W [4, 7]) → Add(bias [7]) → logits.
    fn head(bias_rank: usize) -> Graph {
        let mut g = Graph::default();
        g.opsets.insert(String::new(), 17);
        let h = value(&mut g, "hidden", &[1, 5, 4], false);
        let w = value(&mut g, "w", &[4, 7], true);
        let b = value(&mut g, "b", &[1, 5, 7][3 - bias_rank..], true);
        let p = value(&mut g, "p", &[1, 5, 7], false);
        let l = value(&mut g, "logits", &[1, 5, 7], false);
        g.inputs = vec![h];
        g.nodes = vec![node("MatMul", &[h, w], p), node("Add", &[p, b], l)];
        g.outputs = vec![l];
        g
    }

    #[test]
    fn the_head_reads_the_last_position_through_a_bias() {
        let mut g = head(1);
        restrict(&mut g, "logits").unwrap();
        let ops: Vec<&str> = g.nodes.iter().map(|n| n.op.as_str()).collect();
        assert_eq!(ops, ["Slice", "MatMul", "Add"]);
        assert_eq!(g.nodes[1].inputs[0], Some(g.nodes[0].outputs[0]));
        assert_eq!(g.nodes[0].inputs[0], Some(0), "the slice reads the hidden states");
        assert!(g.values[g.outputs[0]].shape.is_none(), "the declared shape is dropped for inference");
    }

    #[test]
    fn a_per_position_operand_or_another_op_is_refused_and_leaves_the_graph() {
        let mut g = head(3);
        let before = g.nodes.len();
        assert!(restrict(&mut g, "logits").unwrap_err().contains("Add"));
        assert_eq!(g.nodes.len(), before);
        let mut g = head(1);
        g.nodes[0].op = "Gemm".into();
        assert!(restrict(&mut g, "logits").is_err());
        assert!(restrict(&mut head(1), "nope").unwrap_err().contains("no output"));
    }
}

//! What the fusion passes ask of a graph while matching a subgraph: who makes a value, how many
//! readers it has, and the numbers a small constant holds.

use crate::ir::{Graph, Node, Value, ValueId};
use kiln_formats::{DType, Dim, SharedBytes};

/// Producer and reader counts of every value, taken once before a pass rewrites anything.
pub struct Index {
    producer: Vec<Option<usize>>,
    /// Nodes reading the value, plus one if it is a graph output.
    readers: Vec<usize>,
}

impl Index {
    /// Indexes `g` as it is now; rewrites that keep nodes' outputs and the matched values' readers
    /// leave it valid.
    pub fn new(g: &Graph) -> Index {
        let mut producer = vec![None; g.values.len()];
        let mut readers = vec![0; g.values.len()];
        for (i, n) in g.nodes.iter().enumerate() {
            for &o in &n.outputs {
                producer[o] = Some(i);
            }
            for &v in n.inputs.iter().flatten() {
                readers[v] += 1;
            }
        }
        for &o in &g.outputs {
            readers[o] += 1;
        }
        Index { producer, readers }
    }

    /// The node making `v` when it is a default-domain `op` with one output.
    pub fn made_by<'g>(&self, g: &'g Graph, v: ValueId, op: &str) -> Option<&'g Node> {
        let n = &g.nodes[self.producer[v]?];
        (n.op == op && is_default(n) && n.outputs.len() == 1).then_some(n)
    }

    /// The node making `v` when `v` is only read once, by the node being matched: a fused node
    /// may then drop it.
    pub fn private<'g>(&self, g: &'g Graph, v: ValueId, op: &str) -> Option<&'g Node> {
        (self.readers[v] == 1).then(|| self.made_by(g, v, op)).flatten()
    }

    /// [`Index::private`] for an op of the `kiln` domain (one made by an earlier fusion).
    pub fn private_kiln<'g>(&self, g: &'g Graph, v: ValueId, op: &str) -> Option<&'g Node> {
        let n = &g.nodes[self.producer[v]?];
        let ours = n.op == op && n.domain == kiln_runtime::ops::KILN_DOMAIN && n.outputs.len() == 1;
        (ours && self.readers[v] == 1).then_some(n)
    }

    /// The index of the node making `v`, if a node does.
    pub fn producer(&self, v: ValueId) -> Option<usize> {
        self.producer[v]
    }

    /// How many nodes (and graph outputs) read `v`.
    pub fn readers(&self, v: ValueId) -> usize {
        self.readers[v]
    }
}

/// The default-domain `op` nodes of one output and two present inputs: (index, [a, b]).
pub fn binary_nodes<'g>(g: &'g Graph, op: &'g str) -> impl Iterator<Item = (usize, [ValueId; 2])> + 'g {
    g.nodes
        .iter()
        .enumerate()
        .filter(move |(_, n)| n.op == op && is_default(n) && n.outputs.len() == 1)
        .filter_map(|(i, n)| Some((i, inputs::<2>(n)?)))
}

/// Removes the nodes whose index `removed` marks (a fused node took over their outputs).
pub fn remove_nodes(g: &mut Graph, removed: &[bool]) {
    let mut removed = removed.iter();
    g.nodes.retain(|_| !removed.next().copied().unwrap_or(false));
}

/// Whether `n` is in the default ONNX domain.
pub fn is_default(n: &Node) -> bool {
    matches!(n.domain.as_str(), "" | "ai.onnx")
}

/// The inputs of `n`, all present, when it has exactly `N`.
pub fn inputs<const N: usize>(n: &Node) -> Option<[ValueId; N]> {
    if n.inputs.len() != N {
        return None;
    }
    let mut out = [0; N];
    for (o, i) in out.iter_mut().zip(&n.inputs) {
        *o = (*i)?;
    }
    Some(out)
}

/// The one number a float constant of one element holds.
pub fn scalar(g: &Graph, v: ValueId) -> Option<f64> {
    let val = &g.values[v];
    let bytes = val.constant.as_ref()?.as_slice();
    let one = |n: usize| (bytes.len() == n).then_some(bytes);
    match val.dtype? {
        DType::F32 => Some(f32::from_le_bytes(one(4)?.try_into().ok()?) as f64),
        DType::F64 => Some(f64::from_le_bytes(one(8)?.try_into().ok()?)),
        DType::F16 => Some(half::f16::from_le_bytes(one(2)?.try_into().ok()?).to_f64()),
        DType::BF16 => Some(half::bf16::from_le_bytes(one(2)?.try_into().ok()?).to_f64()),
        _ => None,
    }
}

/// The elements of an integer value known at compile time: a constant, or shape arithmetic the
/// compiler followed to known numbers.
pub fn ints(g: &Graph, v: ValueId) -> Option<Vec<i64>> {
    let val = &g.values[v];
    if let Some(dims) = &val.sym_value {
        return dims.iter().map(Dim::known).collect();
    }
    let bytes = val.constant.as_ref()?.as_slice();
    match val.dtype? {
        DType::I64 => Some(bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()),
        DType::I32 => {
            Some(bytes.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64).collect())
        }
        _ => None,
    }
}

/// An integer attribute of `n`, or `default` when absent.
pub fn int_attr(n: &Node, name: &str, default: i64) -> Option<i64> {
    match n.attrs.iter().find(|a| a.name == name) {
        None => Some(default),
        Some(a) => (a.kind == kiln_formats::program::AttrKind::Int as i32).then_some(a.i),
    }
}

/// A float attribute of `n`, or `default` when absent; `None` when it is not a float.
pub fn float_attr(n: &Node, name: &str, default: f32) -> Option<f32> {
    match n.attrs.iter().find(|a| a.name == name) {
        None => Some(default),
        Some(a) => (a.kind == kiln_formats::program::AttrKind::Float as i32).then_some(a.f),
    }
}

/// An ints attribute of `n`, if present.
pub fn ints_attr<'n>(n: &'n Node, name: &str) -> Option<&'n [i64]> {
    let a = n.attrs.iter().find(|a| a.name == name)?;
    (a.kind == kiln_formats::program::AttrKind::Ints as i32).then_some(a.ints.as_slice())
}

/// The inferred shape of `v`.
pub fn shape(g: &Graph, v: ValueId) -> Option<&[Dim]> {
    g.values[v].shape.as_deref()
}

/// Whether `axis` of a rank-`rank` tensor is its last.
pub fn is_last_axis(axis: i64, rank: usize) -> bool {
    axis == -1 || axis == rank as i64 - 1
}

/// The operand of a commutative two-input `n` other than `v`, if `v` is one of them.
pub fn other_operand(n: &Node, v: ValueId) -> Option<ValueId> {
    let [a, b] = inputs::<2>(n)?;
    if a == v {
        Some(b)
    } else if b == v {
        Some(a)
    } else {
        None
    }
}

/// Whether `a` and `b` have one dtype and one inferred shape.
pub fn same_type(g: &Graph, a: ValueId, b: ValueId) -> bool {
    g.values[a].dtype == g.values[b].dtype && matches!((shape(g, a), shape(g, b)), (Some(p), Some(q)) if p == q)
}

/// Whether a value of shape `p` broadcasts to `x` without growing it: right-aligned, each of its
/// dims 1 or equal to x's.
pub fn broadcasts_to(p: &[Dim], x: &[Dim]) -> bool {
    p.len() <= x.len() && p.iter().rev().zip(x.iter().rev()).all(|(a, b)| *a == Dim::Known(1) || a == b)
}

/// A new constant 1-D int64 value holding `dims` (a Reshape's target shape, a Split's sizes).
pub fn shape_const(g: &mut Graph, name: String, dims: &[i64]) -> ValueId {
    let bytes: Vec<u8> = dims.iter().flat_map(|d| d.to_le_bytes()).collect();
    g.add_value(Value {
        name,
        dtype: Some(DType::I64),
        shape: Some(vec![Dim::Known(dims.len() as i64)]),
        constant: Some(SharedBytes::copy_from(&bytes)),
        sym_value: None,
    })
}

/// The opset of a `Reshape` a pass adds: the model's default-domain opset, but at least 14, the
/// version whose semantics (0 keeps the input's dim, -1 is inferred) the passes' targets assume.
pub fn reshape_opset(g: &Graph) -> i64 {
    g.opsets.get("").copied().unwrap_or(17).max(14)
}

/// A new `Reshape` node named `name` making `out` of `x`, to the shape constant `shape`.
pub fn reshape(g: &Graph, name: String, x: ValueId, shape: ValueId, out: ValueId) -> Node {
    Node {
        name,
        op: "Reshape".into(),
        domain: String::new(),
        opset: reshape_opset(g),
        attrs: Vec::new(),
        inputs: vec![Some(x), Some(shape)],
        outputs: vec![out],
    }
}

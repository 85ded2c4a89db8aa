//! The graph IR: typed values whose shapes may hold symbolic dims, nodes in topological order,
//! constants that refer to (usually memory-mapped) bytes, and the opset per domain.

use kiln_formats::program::Attribute;
use kiln_formats::{DType, Dim, SharedBytes};
use std::collections::BTreeMap;

/// Index of a value in [`Graph::values`].
pub type ValueId = usize;

/// A tensor-valued edge of the graph.
#[derive(Clone, Debug, Default)]
pub struct Value {
    pub name: String,
    /// Element type, once known (from the model or inference).
    pub dtype: Option<DType>,
    /// Shape, once known; dims may be symbolic.
    pub shape: Option<Vec<Dim>>,
    /// The bytes of a constant (initializer, Constant node or folded value).
    pub constant: Option<SharedBytes>,
    /// The elements of a small integer tensor as dims, when shape arithmetic could follow them
    /// (the output of `Shape`, and what Gather/Concat/Slice/... make of it).
    pub sym_value: Option<Vec<Dim>>,
}

impl Value {
    /// Shape with every dim known, as usize.
    pub fn known_shape(&self) -> Option<Vec<usize>> {
        self.shape.as_ref()?.iter().map(|d| d.known().and_then(|v| usize::try_from(v).ok())).collect()
    }
}

/// An operation.
#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub op: String,
    pub domain: String,
    /// Opset version of `domain` the model imports.
    pub opset: i64,
    pub attrs: Vec<Attribute>,
    /// `None` for an absent optional input.
    pub inputs: Vec<Option<ValueId>>,
    pub outputs: Vec<ValueId>,
}

/// For pass tests: a one-output node without attributes, named after its op.
#[cfg(test)]
pub(crate) fn test_node(op: &str, domain: &str, inputs: &[ValueId], out: ValueId) -> Node {
    Node {
        name: op.into(),
        op: op.into(),
        domain: domain.into(),
        opset: 17,
        attrs: Vec::new(),
        inputs: inputs.iter().copied().map(Some).collect(),
        outputs: vec![out],
    }
}

/// A model as a graph.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub name: String,
    pub values: Vec<Value>,
    /// Nodes in execution (topological) order.
    pub nodes: Vec<Node>,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
    /// Opset version per domain ("" is the default ONNX domain).
    pub opsets: BTreeMap<String, i64>,
    /// Graph outputs computed as pieces concatenated along an axis only when handed to the
    /// caller (outputs larger than the target's largest buffer): (output, pieces, axis).
    pub assembled: Vec<(ValueId, Vec<ValueId>, usize)>,
    /// KV cache tensors kept in place between runs (see [`crate::passes::kv_cache`]).
    pub states: Vec<crate::passes::kv_cache::KvState>,
}

impl Graph {
    /// Adds a value and returns its id.
    pub fn add_value(&mut self, v: Value) -> ValueId {
        self.values.push(v);
        self.values.len() - 1
    }

    /// Replaces symbolic dims by fixed values in every shape known so far (the inputs' before
    /// inference).
    pub fn fix_dims(&mut self, fixed: &std::collections::HashMap<String, i64>) {
        let subst = |s: &str| fixed.get(s).map(|&v| Dim::Known(v));
        for v in &mut self.values {
            if let Some(shape) = &mut v.shape {
                for d in shape.iter_mut() {
                    *d = d.substitute(&subst);
                }
            }
        }
    }

    /// Count of each op type, sorted by name.
    pub fn op_counts(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for n in &self.nodes {
            let key = if n.domain.is_empty() || n.domain == "ai.onnx" {
                n.op.clone()
            } else {
                format!("{}::{}", n.domain, n.op)
            };
            *m.entry(key).or_insert(0) += 1;
        }
        m
    }

    /// Total bytes held by constants still referenced by nodes or outputs.
    pub fn constant_bytes(&self) -> usize {
        self.values.iter().filter_map(|v| v.constant.as_ref()).map(SharedBytes::len).sum()
    }
}
